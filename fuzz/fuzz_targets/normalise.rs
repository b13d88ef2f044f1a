//! The builder's output normalisation: an archive a build produced (so
//! anything the package's build script chose to write) re-packed into its
//! canonical form, under unpack limits.
//!
//! An input is `format u8 | epoch i64 LE | archive bytes`; `format` picks
//! the output's name, hence how it is read (tar.gz, tar, zip, wheel, jar,
//! crate, or a file copied as is). Invariants: no panic; the limits hold
//! (the output is never larger than the limit allows); normalising the
//! normalised output again gives the same bytes; an npm tarball's
//! `package.json` is read without panicking.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 8] = [
    "p-1.0.tgz",
    "p-1.0.tar.gz",
    "p-1.0.tar",
    "p-1.0-py3-none-any.whl",
    "p-1.0.zip",
    "p-1.0.jar",
    "p-1.0.crate",
    "p-1.0.pom",
];
/// Small limits, so that a bomb fails in microseconds, not after 1 GiB.
const MAX_BYTES: u64 = 1 << 20;
const MAX_ENTRIES: usize = 256;

/// One scratch directory per process (tmpfs when there is one).
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = std::path::Path::new("/dev/shm");
        let dir = if base.is_dir() {
            tempfile::tempdir_in(base)
        } else {
            tempfile::tempdir()
        }
        .expect("scratch dir");
        // Kept for the life of the process; libFuzzer exits without unwinding.
        dir.keep()
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let name = NAMES[usize::from(data[0]) % NAMES.len()];
    let epoch = i64::from_le_bytes(data[1..9].try_into().unwrap_or_default());
    let dir = scratch();
    let (raw, out, again) = (dir.join("raw"), dir.join("out"), dir.join("again"));
    std::fs::write(&raw, &data[9..]).expect("write input");
    let first = builder::fuzzing::normalise(&raw, name, &out, epoch, MAX_BYTES, MAX_ENTRIES);
    if name.ends_with(".tgz") {
        let _ = builder::fuzzing::npm_name_version(&raw);
    }
    if first.is_err() {
        return;
    }
    let normal = std::fs::read(&out).expect("read output");
    builder::fuzzing::normalise(&out, name, &again, epoch, MAX_BYTES, MAX_ENTRIES)
        .expect("the normal form does not normalise");
    let twice = std::fs::read(&again).expect("read output");
    assert!(normal == twice, "normalising is not idempotent for {name}");
});
