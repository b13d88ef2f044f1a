//! Re-packing archives so that only their contents decide their bytes:
//! sorted entries, one timestamp (SOURCE_DATE_EPOCH), root ownership without
//! names, canonical permissions, and a gzip header without time or name.
//!
//! The bytes also depend on this crate's deflate implementation and level,
//! which is why `build_env` records the builder's version.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::{Compression, GzBuilder};
use tar::EntryType;
use zip::write::SimpleFileOptions;
use zip::CompressionMethod;

const GZIP_LEVEL: u32 = 9;
const ZIP_LEVEL: i64 = 9;
/// gzip's "unknown" OS byte: the header must not say which OS built it.
const GZIP_OS_UNKNOWN: u8 = 255;

/// What unpacking one output may take. The entries are held in memory to be
/// sorted, outside the sandbox, so a compression bomb built by the package
/// must fail the build with a reason, not exhaust the builder's memory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UnpackLimits {
    pub bytes: u64,
    pub entries: usize,
}

pub(crate) const UNPACK_LIMITS: UnpackLimits = UnpackLimits {
    bytes: 1 << 30,
    entries: 200_000,
};

/// Counts what an archive expands to against [`UnpackLimits`].
struct Budget {
    limits: UnpackLimits,
    bytes: u64,
    entries: usize,
}

impl Budget {
    fn new(limits: UnpackLimits) -> Budget {
        Budget {
            limits,
            bytes: 0,
            entries: 0,
        }
    }

    fn entry(&mut self) -> Result<(), String> {
        self.entries += 1;
        if self.entries > self.limits.entries {
            return Err(format!(
                "the archive holds more than {} entries",
                self.limits.entries
            ));
        }
        Ok(())
    }

    /// Reads one entry's data, stopping one byte past the budget left.
    fn read(&mut self, r: impl Read, what: &str) -> Result<Vec<u8>, String> {
        let left = self.limits.bytes - self.bytes;
        let mut data = Vec::new();
        r.take(left + 1)
            .read_to_end(&mut data)
            .map_err(|e| format!("{what}: {e}"))?;
        self.bytes += data.len() as u64;
        if self.bytes > self.limits.bytes {
            return Err(format!(
                "the archive expands beyond {} bytes (a compression bomb?)",
                self.limits.bytes
            ));
        }
        Ok(data)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    TarGz,
    Tar,
    Zip,
    Opaque,
}

fn format_of(name: &str) -> Format {
    if name.ends_with(".tar.gz") || name.ends_with(".tgz") || name.ends_with(".crate") {
        Format::TarGz
    } else if name.ends_with(".tar") {
        Format::Tar
    } else if name.ends_with(".whl") || name.ends_with(".zip") || name.ends_with(".jar") {
        Format::Zip
    } else {
        Format::Opaque
    }
}

/// Writes the normalised form of `raw` (an output named `name`) to `dest`.
/// Files in formats we do not know are copied unchanged.
pub(crate) fn normalise(
    raw: &Path,
    name: &str,
    dest: &Path,
    epoch: i64,
    limits: UnpackLimits,
) -> Result<(), String> {
    let mut budget = Budget::new(limits);
    match format_of(name) {
        Format::TarGz => {
            let entries = read_tar(GzDecoder::new(open(raw)?), &mut budget)?;
            let out = create(dest)?;
            let gz = GzBuilder::new()
                .mtime(0)
                .operating_system(GZIP_OS_UNKNOWN)
                .write(out, Compression::new(GZIP_LEVEL));
            let gz = write_tar(gz, entries, epoch)?;
            let mut out = gz.finish().map_err(|e| format!("gzip: {e}"))?;
            out.flush().map_err(|e| e.to_string())
        }
        Format::Tar => {
            let entries = read_tar(open(raw)?, &mut budget)?;
            let mut out = write_tar(create(dest)?, entries, epoch)?;
            out.flush().map_err(|e| e.to_string())
        }
        Format::Zip => repack_zip(raw, dest, epoch, &mut budget),
        Format::Opaque => std::fs::copy(raw, dest)
            .map(|_| ())
            .map_err(|e| format!("copying: {e}")),
    }
}

fn open(path: &Path) -> Result<BufReader<File>, String> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|e| format!("opening {}: {e}", path.display()))
}

/// Refuses an absolute path or one with `..`: whoever unpacks the
/// published archive must not be led outside its directory.
fn check_inside(what: &str, path: &Path) -> Result<(), String> {
    use std::path::Component;
    let plain = path
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if plain && !path.as_os_str().is_empty() {
        Ok(())
    } else {
        Err(format!("{what} {} leaves the archive", path.display()))
    }
}

fn create(path: &Path) -> Result<BufWriter<File>, String> {
    File::create(path)
        .map(BufWriter::new)
        .map_err(|e| format!("creating {}: {e}", path.display()))
}

#[derive(Debug)]
enum TarItem {
    File { executable: bool, data: Vec<u8> },
    Dir,
    Symlink(PathBuf),
}

fn read_tar(r: impl Read, budget: &mut Budget) -> Result<Vec<(PathBuf, TarItem)>, String> {
    let mut archive = tar::Archive::new(r);
    let mut items = Vec::new();
    for entry in archive.entries().map_err(|e| format!("tar: {e}"))? {
        let mut entry = entry.map_err(|e| format!("tar: {e}"))?;
        budget.entry()?;
        let path = entry
            .path()
            .map_err(|e| format!("tar entry path: {e}"))?
            .into_owned();
        check_inside("entry", &path)?;
        let ty = entry.header().entry_type();
        let item = match ty {
            EntryType::Regular | EntryType::Continuous => {
                let mode = entry
                    .header()
                    .mode()
                    .map_err(|e| format!("tar mode: {e}"))?;
                let data = budget.read(&mut entry, "tar data")?;
                TarItem::File {
                    executable: mode & 0o111 != 0,
                    data,
                }
            }
            EntryType::Directory => TarItem::Dir,
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| format!("tar link: {e}"))?
                    .ok_or_else(|| format!("symlink {} without target", path.display()))?
                    .into_owned();
                check_inside(&format!("target of symlink {}", path.display()), &target)?;
                TarItem::Symlink(target)
            }
            // Archive-wide metadata (pax global headers) carries no content.
            EntryType::XGlobalHeader => continue,
            other => {
                return Err(format!(
                    "tar entry {} has unsupported type {other:?}",
                    path.display()
                ))
            }
        };
        items.push((path, item));
    }
    Ok(items)
}

fn write_tar<W: Write>(w: W, mut items: Vec<(PathBuf, TarItem)>, epoch: i64) -> Result<W, String> {
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let mtime = u64::try_from(epoch).unwrap_or(0);
    let mut builder = tar::Builder::new(w);
    for (path, item) in items {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        let res = match item {
            TarItem::File { executable, data } => {
                h.set_entry_type(EntryType::Regular);
                h.set_mode(if executable { 0o755 } else { 0o644 });
                h.set_size(data.len() as u64);
                builder.append_data(&mut h, &path, data.as_slice())
            }
            TarItem::Dir => {
                h.set_entry_type(EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                builder.append_data(&mut h, &path, std::io::empty())
            }
            TarItem::Symlink(target) => {
                h.set_entry_type(EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                builder.append_link(&mut h, &path, &target)
            }
        };
        res.map_err(|e| format!("writing tar entry {}: {e}", path.display()))?;
    }
    builder
        .into_inner()
        .map_err(|e| format!("finishing tar: {e}"))
}

fn repack_zip(raw: &Path, dest: &Path, epoch: i64, budget: &mut Budget) -> Result<(), String> {
    let mut zin = zip::ZipArchive::new(open(raw)?).map_err(|e| format!("zip: {e}"))?;
    let mut items = Vec::with_capacity(zin.len());
    for i in 0..zin.len() {
        budget.entry()?;
        let mut f = zin.by_index(i).map_err(|e| format!("zip entry {i}: {e}"))?;
        let name = f.name().to_string();
        check_inside("entry", Path::new(&name))?;
        if f.is_symlink() {
            return Err(format!("zip entry {name} is a symlink"));
        }
        let is_dir = f.is_dir();
        let executable = f.unix_mode().is_some_and(|m| m & 0o111 != 0);
        let data = if is_dir {
            Vec::new()
        } else {
            budget.read(&mut f, &format!("zip entry {name}"))?
        };
        items.push((name, is_dir, executable, data));
    }
    items.sort_by(|a, b| a.0.cmp(&b.0));

    let time = dos_time(epoch)?;
    let mut zout = zip::ZipWriter::new(create(dest)?);
    for (name, is_dir, executable, data) in items {
        let opts = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Deflated)
            .compression_level(Some(ZIP_LEVEL))
            .last_modified_time(time)
            .unix_permissions(if is_dir || executable { 0o755 } else { 0o644 });
        if is_dir {
            zout.add_directory(name.as_str(), opts)
                .map_err(|e| format!("zip dir {name}: {e}"))?;
        } else {
            zout.start_file(name.as_str(), opts)
                .map_err(|e| format!("zip entry {name}: {e}"))?;
            zout.write_all(&data)
                .map_err(|e| format!("zip entry {name}: {e}"))?;
        }
    }
    let mut out = zout.finish().map_err(|e| format!("finishing zip: {e}"))?;
    out.flush().map_err(|e| e.to_string())
}

/// SOURCE_DATE_EPOCH as a zip (MS-DOS) timestamp, clamped to the range the
/// format can hold (1980..=2107), UTC.
fn dos_time(epoch: i64) -> Result<zip::DateTime, String> {
    const MIN: i64 = 315_532_800; // 1980-01-01T00:00:00Z
    const MAX: i64 = 4_354_819_198; // 2107-12-31T23:59:58Z
    let t = epoch.clamp(MIN, MAX);
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let field = |v: i64| u8::try_from(v).map_err(|_| format!("bad date field {v}"));
    zip::DateTime::from_date_and_time(
        u16::try_from(y).map_err(|_| format!("bad year {y}"))?,
        field(m)?,
        field(d)?,
        field(secs / 3600)?,
        field(secs % 3600 / 60)?,
        field(secs % 60)?,
    )
    .map_err(|e| format!("zip time: {e}"))
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `name` and `version` from `package/package.json` inside an npm tarball.
pub(crate) fn npm_name_version(tgz: &Path) -> Result<(String, String), String> {
    let mut archive = tar::Archive::new(GzDecoder::new(open(tgz)?));
    for entry in archive.entries().map_err(|e| format!("tar: {e}"))? {
        let entry = entry.map_err(|e| format!("tar: {e}"))?;
        let is_manifest = entry
            .path()
            .map_err(|e| format!("tar entry path: {e}"))?
            .as_ref()
            == Path::new("package/package.json");
        if !is_manifest {
            continue;
        }
        let mut text = Vec::new();
        entry
            .take(4 << 20)
            .read_to_end(&mut text)
            .map_err(|e| format!("reading package.json: {e}"))?;
        let json: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| format!("package.json: {e}"))?;
        let field = |k: &str| {
            json.get(k)
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or_else(|| format!("package.json has no string {k:?}"))
        };
        return Ok((field("name")?, field("version")?));
    }
    Err("no package/package.json in the tarball".to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn tar_gz_repack_ignores_input_order_times_and_owners() {
        let dir = tempfile::tempdir().unwrap();
        let make = |name: &str, order: &[(&str, u64)], owner: u64| {
            let path = dir.path().join(name);
            let gz =
                flate2::write::GzEncoder::new(File::create(&path).unwrap(), Compression::fast());
            let mut b = tar::Builder::new(gz);
            for (p, mtime) in order {
                let mut h = tar::Header::new_ustar();
                h.set_size(2);
                h.set_mode(0o664);
                h.set_mtime(*mtime);
                h.set_uid(owner);
                h.set_username("someone").unwrap();
                b.append_data(&mut h, p, &b"hi"[..]).unwrap();
            }
            b.into_inner().unwrap().finish().unwrap();
            path
        };
        let a = make("a.tgz", &[("p/b", 5), ("p/a", 7)], 1000);
        let b = make("b.tgz", &[("p/a", 9), ("p/b", 1)], 0);
        let (na, nb) = (dir.path().join("na.tgz"), dir.path().join("nb.tgz"));
        normalise(&a, "a.tgz", &na, 1_700_000_000, UNPACK_LIMITS).unwrap();
        normalise(&b, "b.tgz", &nb, 1_700_000_000, UNPACK_LIMITS).unwrap();
        assert_eq!(std::fs::read(&na).unwrap(), std::fs::read(&nb).unwrap());
    }

    const SMALL: UnpackLimits = UnpackLimits {
        bytes: 1 << 20,
        entries: 100,
    };

    /// A tarball whose one file is `size` zero bytes: about 1/1000 of it compressed.
    fn zeros_tgz(path: &Path, size: u64) {
        let gz = flate2::write::GzEncoder::new(File::create(path).unwrap(), Compression::best());
        let mut b = tar::Builder::new(gz);
        let mut h = tar::Header::new_ustar();
        h.set_size(size);
        h.set_mode(0o644);
        b.append_data(&mut h, "package/zeros", std::io::repeat(0).take(size))
            .unwrap();
        b.into_inner().unwrap().finish().unwrap();
    }

    #[test]
    fn a_compression_bomb_fails_with_a_reason_instead_of_filling_memory() {
        let dir = tempfile::tempdir().unwrap();
        let bomb = dir.path().join("bomb.tgz");
        zeros_tgz(&bomb, 64 << 20);
        assert!(std::fs::metadata(&bomb).unwrap().len() < 1 << 20);
        let err = normalise(&bomb, "bomb.tgz", &dir.path().join("out.tgz"), 0, SMALL).unwrap_err();
        assert!(err.contains("compression bomb"), "{err}");

        let fine = dir.path().join("fine.tgz");
        zeros_tgz(&fine, 512 << 10);
        normalise(
            &fine,
            "fine.tgz",
            &dir.path().join("fine-out.tgz"),
            0,
            SMALL,
        )
        .unwrap();
    }

    /// tar's builder refuses to write such paths, so they go in raw.
    fn tgz_with_raw(path: &Path, name: &[u8], link: Option<&[u8]>) {
        let gz = flate2::write::GzEncoder::new(File::create(path).unwrap(), Compression::fast());
        let mut b = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_mode(0o644);
        h.set_size(0);
        if let Some(target) = link {
            h.set_entry_type(EntryType::Symlink);
            h.as_old_mut().linkname[..target.len()].copy_from_slice(target);
        }
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
        b.into_inner().unwrap().finish().unwrap();
    }

    #[test]
    fn entries_and_links_that_leave_the_archive_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&[u8], Option<&[u8]>); 4] = [
            (b"package/link", Some(b"/etc/passwd")),
            (b"package/link", Some(b"../../outside")),
            (b"../escape", None),
            (b"/abs", None),
        ];
        for (name, link) in cases {
            let bad = dir.path().join("bad.tgz");
            tgz_with_raw(&bad, name, link);
            let err = normalise(&bad, "bad.tgz", &dir.path().join("out.tgz"), 0, SMALL)
                .expect_err("refused");
            assert!(err.contains("leaves the archive"), "{err}");
        }
        let fine = dir.path().join("fine.tgz");
        tgz_with_raw(&fine, b"package/link", Some(b"sibling"));
        normalise(&fine, "fine.tgz", &dir.path().join("out.tgz"), 0, SMALL).unwrap();
    }

    #[test]
    fn archives_with_too_many_entries_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("many.zip");
        let mut z = zip::ZipWriter::new(File::create(&path).unwrap());
        for i in 0..=SMALL.entries {
            z.start_file(format!("f{i}"), SimpleFileOptions::default())
                .unwrap();
        }
        z.finish().unwrap();
        let err = normalise(&path, "many.zip", &dir.path().join("out.zip"), 0, SMALL).unwrap_err();
        assert!(err.contains("more than 100 entries"), "{err}");
    }
}
