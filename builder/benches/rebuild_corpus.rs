//! Rebuilds real packages from their registries' own archives and reports
//! three rates per ecosystem: builds that succeed, builds that are
//! byte-identical between two builders, and builds whose contents (and
//! bytes) equal the registry's published artifact. See builder/README.md.
//!
//! `./scripts/bench-rebuild.sh [CORPUS]` (default `builder/benches/corpus.tsv`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/support/packages.rs"]
mod packages;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use builder::{BuildOutcome, Upstream};
use common::GitServer;
use packages::*;

#[derive(Default)]
struct Tally {
    tried: usize,
    built: usize,
    identical: usize,
    same_contents: usize,
    same_bytes: usize,
    failures: Vec<String>,
    /// Files whose contents differ from the registry's, a few per artifact.
    differences: Vec<String>,
}

/// name -> bytes of every regular file in a .tgz/.tar.gz/.crate, or a
/// .whl/.zip/.jar, with the top directory of tarballs kept.
fn contents(path: &Path) -> Option<BTreeMap<String, Vec<u8>>> {
    let name = path.file_name()?.to_string_lossy().into_owned();
    let mut files = BTreeMap::new();
    if name.ends_with(".whl") || name.ends_with(".zip") || name.ends_with(".jar") {
        let mut zip = zip::ZipArchive::new(std::fs::File::open(path).ok()?).ok()?;
        for i in 0..zip.len() {
            let mut f = zip.by_index(i).ok()?;
            if f.is_dir() {
                continue;
            }
            let mut data = Vec::new();
            f.read_to_end(&mut data).ok()?;
            files.insert(f.name().to_string(), data);
        }
    } else {
        let gz = flate2::read::GzDecoder::new(std::fs::File::open(path).ok()?);
        let mut tar = tar::Archive::new(gz);
        for e in tar.entries().ok()? {
            let mut e = e.ok()?;
            if !e.header().entry_type().is_file() {
                continue;
            }
            let p = e.path().ok()?.to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).ok()?;
            files.insert(p, data);
        }
    }
    Some(files)
}

/// Commits the tree at `src` as repository `name` of `git`, bytes as they
/// are, and returns its URL and commit.
fn commit_dir(git: &GitServer, name: &str, src: &Path) -> (String, String) {
    let dir = git.base.path().join(name);
    let run = |args: &[&str]| {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=Pyrsia Bench",
                "-c",
                "user.email=bench@pyrsia.invalid",
            ])
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    std::fs::create_dir_all(&dir).unwrap();
    assert!(Command::new("cp")
        .args(["-a", "--no-preserve=ownership"])
        .arg(format!("{}/.", src.display()))
        .arg(&dir)
        .status()
        .unwrap()
        .success());
    run(&["init", "-q", "-b", "main"]);
    run(&["add", "-A", "-f"]);
    run(&["commit", "-q", "-m", "registry archive"]);
    let commit = run(&["rev-parse", "HEAD"]);
    (format!("git://127.0.0.1:{}/{name}", git.port), commit)
}

fn unpack(archive: &Path) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    assert!(Command::new("tar")
        .arg("-xzf")
        .arg(archive)
        .arg("-C")
        .arg(tmp.path())
        .status()
        .unwrap()
        .success());
    let root = std::fs::read_dir(tmp.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    (tmp, root)
}

/// The PEP 517 requirements of an unpacked sdist.
fn build_requires(root: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(root.join("pyproject.toml")) else {
        return vec!["setuptools>=40.8.0".into()];
    };
    let doc: toml::Value = toml::from_str(&text).unwrap_or(toml::Value::Table(Default::default()));
    doc.get("build-system")
        .and_then(|b| b.get("requires"))
        .and_then(|r| r.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_else(|| vec!["setuptools>=40.8.0".into()])
}

/// Adds `requirements` and what they need, as wheels, to the local PyPI's
/// directory, through the machine's pip.
fn add_wheels(dir: &Path, requirements: &[String]) -> bool {
    Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "-q",
            "--only-binary",
            ":all:",
            "-d",
        ])
        .arg(dir)
        .args(requirements)
        .status()
        .is_ok_and(|s| s.success())
}

fn build_twice(
    spec: &builder::BuildSpec,
    upstreams: &[Upstream],
    tally: &mut Tally,
) -> Option<(BuildOutcome, BuildOutcome)> {
    let tmp = tempfile::tempdir().unwrap();
    let mut outcomes = Vec::new();
    for work in ["one", "two/deeper"] {
        let mut cfg = builder::BuilderConfig::new(tmp.path().join(work));
        cfg.limits.time = std::time::Duration::from_secs(600);
        cfg.limits.memory_bytes = 4 << 30;
        cfg.limits.disk_bytes = 2 << 30;
        cfg.upstreams = upstreams.to_vec();
        match builder::build(spec, &cfg) {
            Ok(o) => outcomes.push(o),
            Err(e) => {
                let log = e
                    .log_path()
                    .and_then(|p| std::fs::read_to_string(p).ok())
                    .unwrap_or_default();
                let last: Vec<&str> = log
                    .lines()
                    .rev()
                    .filter(|l| !l.trim().is_empty())
                    .take(2)
                    .collect();
                tally.failures.push(format!(
                    "{} {}: {e} [{}]",
                    spec.name,
                    spec.version,
                    last.join(" / ")
                ));
                return None;
            }
        }
    }
    // Keep the temp dir alive with the outcomes' directories: leak it.
    std::mem::forget(tmp);
    let b = outcomes.pop()?;
    let a = outcomes.pop()?;
    Some((a, b))
}

fn compare(a: &BuildOutcome, b: &BuildOutcome, published: &[PathBuf], tally: &mut Tally) {
    tally.built += 1;
    let digests = |o: &BuildOutcome| -> Vec<(String, String)> {
        o.outputs
            .iter()
            .map(|f| (f.name.clone(), sha256_hex(&f.path)))
            .collect()
    };
    if digests(a) == digests(b) {
        tally.identical += 1;
    }
    let mut same_contents = !published.is_empty();
    let mut same_bytes = !published.is_empty();
    for p in published {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let Some(ours) = a.outputs.iter().find(|o| o.name == name) else {
            same_contents = false;
            same_bytes = false;
            continue;
        };
        if sha256_hex(&ours.path) != sha256_hex(p) {
            same_bytes = false;
        }
        match (contents(&ours.path), contents(p)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(a), Some(b)) => {
                same_contents = false;
                let differ: Vec<&String> = a
                    .keys()
                    .chain(b.keys())
                    .filter(|k| a.get(*k) != b.get(*k))
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .take(4)
                    .collect();
                tally.differences.push(format!("{name}: {differ:?}"));
            }
            _ => same_contents = false,
        }
    }
    if same_contents {
        tally.same_contents += 1;
    }
    if same_bytes {
        tally.same_bytes += 1;
    }
}

fn main() {
    let corpus = std::env::args()
        .nth(1)
        .filter(|a| !a.starts_with("--"))
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/benches/corpus.tsv").to_string());
    let text = std::fs::read_to_string(&corpus).unwrap();
    let git = GitServer::start();
    let wheels = tempfile::tempdir().unwrap();
    let pypi = LocalUpstream::pypi(wheels.path());
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();

    for line in text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let [eco, name, version] = cols[..] else {
            panic!("bad corpus line {line:?}");
        };
        let tally = tallies.entry(eco.to_string()).or_default();
        tally.tried += 1;
        eprintln!("== {eco} {name} {version}");
        let (unpacked, published, upstreams) = match eco {
            "npm" => {
                let tgz = npm_tarball(name, version);
                (unpack(&tgz), vec![tgz], Vec::new())
            }
            "python" => {
                let Some(sdist) = pypi_download(name, version, false) else {
                    tally
                        .failures
                        .push(format!("{name} {version}: no sdist on the registry"));
                    continue;
                };
                let unpacked = unpack(&sdist);
                if !add_wheels(wheels.path(), &build_requires(&unpacked.1)) {
                    tally.failures.push(format!(
                        "{name} {version}: build requirements not available as wheels"
                    ));
                    continue;
                }
                let mut published = vec![sdist.clone()];
                published.extend(pypi_download(name, version, true));
                (
                    unpacked,
                    published,
                    vec![Upstream {
                        name: "pypi".into(),
                        url: pypi.url.clone(),
                    }],
                )
            }
            other => {
                tally.failures.push(format!(
                    "{name}: ecosystem {other} not in this benchmark yet"
                ));
                continue;
            }
        };
        let (url, commit) = commit_dir(&git, &format!("{eco}-{name}-{version}"), &unpacked.1);
        let spec = common::spec(eco, name, version, &url, &commit);
        if let Some((a, b)) = build_twice(&spec, &upstreams, tally) {
            compare(&a, &b, &published, tally);
        }
    }

    println!("| ecosystem | packages | build | identical between builders | same contents as the registry | byte-identical to the registry |");
    println!("|---|---|---|---|---|---|");
    for (eco, t) in &tallies {
        let pct = |n: usize| format!("{n} ({:.0} %)", 100.0 * n as f64 / t.tried.max(1) as f64);
        println!(
            "| {eco} | {} | {} | {} | {} | {} |",
            t.tried,
            pct(t.built),
            pct(t.identical),
            pct(t.same_contents),
            pct(t.same_bytes)
        );
    }
    for (eco, t) in &tallies {
        for f in &t.failures {
            println!("- {eco}: {f}");
        }
        for d in &t.differences {
            println!("- {eco}: differs from the registry in {d}");
        }
    }
}

/// The registry's sdist (`binary` false) or pure-Python wheel of
/// `name==version`, through the machine's pip.
fn pypi_download(name: &str, version: &str, binary: bool) -> Option<PathBuf> {
    let kind = if binary { "wheel" } else { "sdist" };
    let dir = std::env::temp_dir()
        .join("pyrsia-rebuild")
        .join(format!("{name}-{version}-{kind}"));
    std::fs::create_dir_all(&dir).unwrap();
    // Only the package itself from source: pip prepares an sdist's
    // metadata with its build backend, which it installs as wheels.
    let (format, which) = if binary {
        ("--only-binary", ":all:")
    } else {
        ("--no-binary", name)
    };
    let _ = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "-q", "-d"])
        .arg(&dir)
        .args([format, which])
        .arg(format!("{name}=={version}"))
        .stderr(std::process::Stdio::null())
        .status();
    let found = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let f = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if binary {
                f.ends_with("-none-any.whl")
            } else {
                f.ends_with(".tar.gz")
            }
        });
    found
}
