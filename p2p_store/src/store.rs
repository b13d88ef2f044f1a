//! Content-addressed disk store of striped artifacts.
//!
//! Layout under the store root:
//!
//! ```text
//! node_key                 libp2p identity (protobuf-encoded ed25519 keypair)
//! tmp/                     uploads being hashed (cleared on start)
//! objects/<sha256>/data    the artifact bytes (sparse while partial)
//! objects/<sha256>/manifest  stripe digests, 32 bytes each, in order
//! objects/<sha256>/meta.json size, stripe size, stripe root, pinned, complete, last access
//! ```
//!
//! Metadata is written to a temporary file and renamed. A complete artifact's
//! data is synced before its meta says `complete`. On open, a partial
//! artifact's stripes are re-hashed against its manifest, so a download
//! resumes from exactly the stripes that verify.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::bufpool::{StripeBuf, DIRECT_ALIGN};
use crate::manifest::{self, sha256, Digest, Manifest, ManifestError};

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad metadata in {path}: {reason}")]
    BadMeta { path: PathBuf, reason: String },
    #[error("artifact {0} not in store")]
    NotFound(String),
    #[error("stripe {index} of {sha256} not present")]
    StripeMissing { sha256: String, index: u64 },
    #[error("stripe {index} out of range (artifact has {count})")]
    StripeOutOfRange { index: u64, count: u64 },
    #[error("stripe {index} does not match its manifest digest")]
    BadStripe { index: u64 },
    #[error("stripe {index} matches its digest but is {got} bytes where the manifest's geometry says {expected}")]
    GeometryMismatch { index: u64, expected: u64, got: u64 },
    #[error("whole-file sha256 mismatch: expected {expected}, got {got}")]
    WholeFileMismatch { expected: String, got: String },
    #[error("quota exceeded: need {need} bytes, {used} of {quota} used and nothing evictable")]
    QuotaExceeded { need: u64, used: u64, quota: u64 },
    #[error("artifact {sha256} is stored with stripe root {stored}, not {requested}")]
    RootConflict {
        sha256: String,
        stored: String,
        requested: String,
    },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    sha256: String,
    size: u64,
    stripe_size: u32,
    stripe_root: String,
    pinned: bool,
    complete: bool,
    last_access: u64,
}

#[derive(Debug)]
struct Entry {
    sha256: Digest,
    root: Digest,
    manifest: Arc<Manifest>,
    pinned: bool,
    complete: bool,
    last_access: u64,
    have: Vec<bool>,
    have_count: u64,
    file: Arc<File>,
    /// The same data file opened with `O_DIRECT`, while the artifact is a
    /// partial download on a filesystem that allows it.
    direct: Option<Arc<File>>,
    /// When a partial last made progress (begun, resumed, or a stripe
    /// written); after a restart, the data file's modification time.
    progress_at: SystemTime,
}

/// Default time a partial download may go without progress before it is
/// removed: 24 hours.
pub const DEFAULT_PARTIAL_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Whether a partial download whose last progress was at `last_progress`
/// has expired at `now` under `ttl`. A last progress in the future (a clock
/// set back) never expires it.
pub fn partial_expired(last_progress: SystemTime, now: SystemTime, ttl: Duration) -> bool {
    now.duration_since(last_progress)
        .is_ok_and(|idle| idle >= ttl)
}

/// Public summary of one stored artifact.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactInfo {
    pub sha256: String,
    pub size: u64,
    pub stripe_size: u32,
    pub stripe_root: String,
    pub pinned: bool,
    pub complete: bool,
    pub stripes: u64,
    pub stripes_present: u64,
    pub last_access: u64,
}

/// What `put` returns.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PutResult {
    pub sha256: String,
    pub size: u64,
    pub stripe_size: u32,
    pub stripe_root: String,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Digest, Entry>,
    used: u64,
    clock: u64,
}

/// The store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    quota: u64,
    inner: Mutex<Inner>,
    /// Held while a verified stripe is written: one writer at a time
    /// (concurrent buffered writes to one file only spin on the inode lock).
    writer: Mutex<()>,
}

/// Stripes are written to the page cache in pieces of this size (a copy
/// that stays in the CPU caches; measurably faster than one 1 MiB+ write).
const WRITE_CHUNK: usize = 256 * 1024;

/// Opens `path` for direct writes, or `None` where `O_DIRECT` is refused
/// (the store then writes through the page cache).
///
/// Downloaded stripes go to disk with `O_DIRECT` where the filesystem allows
/// it: on the loopback benchmark the copy into the page cache cost the
/// downloader more CPU than a SHA-256 pass over the same bytes, while the
/// device took the DMA at 2 GB/s. Offsets, lengths and memory of direct
/// writes are multiples of `DIRECT_ALIGN`; an unaligned tail is written
/// buffered.
fn open_direct(path: &Path) -> Option<Arc<File>> {
    use std::os::unix::fs::OpenOptionsExt as _;
    match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => Some(Arc::new(f)),
        Err(err) => {
            tracing::debug!(path = %path.display(), %err, "O_DIRECT unavailable; buffered writes");
            None
        }
    }
}

/// Outcome of `begin_partial`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// The artifact is already complete.
    Complete,
    /// A partial entry exists or was created; `have` stripes already verified.
    Partial { have: u64 },
}

impl Store {
    /// Opens (or creates) a store at `root` with a `quota` in bytes.
    pub fn open(root: impl Into<PathBuf>, quota: u64) -> Result<Self, StoreError> {
        let root = root.into();
        let objects = root.join("objects");
        fs::create_dir_all(&objects).map_err(io_err(&objects))?;
        let tmp = root.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let mut inner = Inner::default();
        let dir = fs::read_dir(&objects).map_err(io_err(&objects))?;
        for ent in dir {
            let ent = ent.map_err(io_err(&objects))?;
            let path = ent.path();
            match load_entry(&path) {
                Ok(e) => {
                    inner.clock = inner.clock.max(e.last_access);
                    inner.used += e.manifest.size;
                    inner.entries.insert(e.sha256, e);
                }
                Err(err) => {
                    tracing::warn!(path = %path.display(), %err, "dropping unreadable artifact");
                    let _ = fs::remove_dir_all(&path);
                }
            }
        }
        tracing::info!(
            root = %root.display(),
            artifacts = inner.entries.len(),
            used = inner.used,
            quota,
            "store opened"
        );
        Ok(Self {
            root,
            quota,
            inner: Mutex::new(inner),
            writer: Mutex::new(()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked mid-update of
        // in-memory bookkeeping; the on-disk state is authoritative.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Store root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Quota in bytes.
    pub fn quota(&self) -> u64 {
        self.quota
    }

    /// Bytes reserved by stored artifacts (complete and partial).
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    /// A fresh temporary path for an upload.
    pub fn tmp_path(&self) -> PathBuf {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("upload-{}-{n}", std::process::id()))
    }

    fn obj_dir(&self, sha: &Digest) -> PathBuf {
        self.root.join("objects").join(hex::encode(sha))
    }

    /// Frees space for `need` more bytes by evicting complete artifacts:
    /// unpinned ones first, least recently used first, and only when none is
    /// left the least recently used pinned one. Pins rank what stays; they
    /// cannot make the quota unkeepable (a builder pins every output it
    /// makes, and junk requests would otherwise fill its disk for good).
    /// Returns the evicted digests.
    fn reserve(&self, inner: &mut Inner, need: u64) -> Result<Vec<Digest>, StoreError> {
        let mut evicted = Vec::new();
        if need > self.quota {
            return Err(StoreError::QuotaExceeded {
                need,
                used: inner.used,
                quota: self.quota,
            });
        }
        while inner.used + need > self.quota {
            let victim = inner
                .entries
                .values()
                .filter(|e| e.complete)
                .min_by_key(|e| (e.pinned, e.last_access))
                .map(|e| e.sha256);
            let Some(v) = victim else {
                return Err(StoreError::QuotaExceeded {
                    need,
                    used: inner.used,
                    quota: self.quota,
                });
            };
            if let Some(e) = inner.entries.remove(&v) {
                inner.used -= e.manifest.size;
                let dir = self.obj_dir(&v);
                if let Err(err) = fs::remove_dir_all(&dir) {
                    tracing::warn!(dir = %dir.display(), %err, "evict: remove failed");
                }
                if e.pinned {
                    tracing::warn!(sha256 = %hex::encode(v), size = e.manifest.size, "evicted a pinned artifact: the quota holds nothing else");
                } else {
                    tracing::info!(sha256 = %hex::encode(v), size = e.manifest.size, "evicted");
                }
                evicted.push(v);
            }
        }
        Ok(evicted)
    }

    /// Adds a fully written and hashed file (moved from `tmp`) as a complete
    /// artifact. Returns the put result and any evicted digests.
    pub fn commit_file(
        &self,
        tmp: &Path,
        whole: Digest,
        manifest: Manifest,
        pinned: bool,
    ) -> Result<(PutResult, Vec<Digest>), StoreError> {
        let root = manifest.root();
        let result = PutResult {
            sha256: hex::encode(whole),
            size: manifest.size,
            stripe_size: manifest.stripe_size,
            stripe_root: hex::encode(root),
        };
        let mut inner = self.lock();
        inner.clock += 1;
        let clock = inner.clock;
        if let Some(e) = inner.entries.get_mut(&whole) {
            if e.complete && e.root == root {
                let _ = fs::remove_file(tmp);
                e.pinned |= pinned;
                e.last_access = clock;
                let meta = meta_of(e);
                drop(inner);
                write_meta(&self.obj_dir(&whole), &meta)?;
                return Ok((result, Vec::new()));
            }
        }
        // Replace any partial or differently-striped copy.
        if let Some(old) = inner.entries.remove(&whole) {
            inner.used -= old.manifest.size;
            let _ = fs::remove_dir_all(self.obj_dir(&whole));
        }
        let evicted = match self.reserve(&mut inner, manifest.size) {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_file(tmp);
                return Err(e);
            }
        };
        let dir = self.obj_dir(&whole);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let data = dir.join("data");
        fs::rename(tmp, &data).map_err(io_err(&data))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&data)
            .map_err(io_err(&data))?;
        file.sync_data().map_err(io_err(&data))?;
        write_manifest(&dir, &manifest)?;
        let count = manifest.count();
        let entry = Entry {
            sha256: whole,
            root,
            manifest: Arc::new(manifest),
            pinned,
            complete: true,
            last_access: clock,
            have: vec![true; count as usize],
            have_count: count,
            file: Arc::new(file),
            direct: None,
            progress_at: SystemTime::now(),
        };
        write_meta(&dir, &meta_of(&entry))?;
        inner.used += entry.manifest.size;
        inner.entries.insert(whole, entry);
        Ok((result, evicted))
    }

    /// Hashes and stores a local file (copying it). Used by tests and the bench.
    pub fn put_path(
        &self,
        src: &Path,
        stripe_size: u32,
        pinned: bool,
    ) -> Result<(PutResult, Vec<Digest>), StoreError> {
        let mut input = File::open(src).map_err(io_err(src))?;
        let tmp = self.tmp_path();
        let mut out = File::create(&tmp).map_err(io_err(&tmp))?;
        let mut b = manifest::ManifestBuilder::new(stripe_size)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = input.read(&mut buf).map_err(io_err(src))?;
            if n == 0 {
                break;
            }
            b.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io_err(&tmp))?;
        }
        drop(out);
        let (whole, m) = b.finish()?;
        self.commit_file(&tmp, whole, m, pinned)
    }

    /// Creates (or resumes) a partial artifact for download. The manifest
    /// must already be verified by the caller against the stripe root.
    pub fn begin_partial(
        &self,
        sha: Digest,
        root: Digest,
        manifest: Manifest,
        pinned: bool,
    ) -> Result<(Begin, Vec<Digest>), StoreError> {
        let mut inner = self.lock();
        inner.clock += 1;
        let clock = inner.clock;
        let mut pinned = pinned;
        let other_partial = inner
            .entries
            .get(&sha)
            .filter(|e| e.root != root && !e.complete)
            .map(|e| e.root);
        if let Some(old_root) = other_partial {
            // The caller verified this manifest against `root`; the partial
            // under another root came from a layout that may be bogus (one
            // attester's word), and keeping it would block every later
            // download of these bytes. Its stripes cannot serve the new
            // layout, so it goes.
            if let Some(old) = inner.entries.remove(&sha) {
                inner.used -= old.manifest.size;
                pinned |= old.pinned;
            }
            let dir = self.obj_dir(&sha);
            fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
            tracing::info!(
                sha256 = %hex::encode(sha),
                old_root = %hex::encode(old_root),
                new_root = %hex::encode(root),
                "replaced a partial download made under another stripe root"
            );
        }
        if let Some(e) = inner.entries.get_mut(&sha) {
            if e.root != root {
                return Err(StoreError::RootConflict {
                    sha256: hex::encode(sha),
                    stored: hex::encode(e.root),
                    requested: hex::encode(root),
                });
            }
            e.pinned |= pinned;
            e.last_access = clock;
            let r = if e.complete {
                Begin::Complete
            } else {
                Begin::Partial { have: e.have_count }
            };
            if !e.complete {
                // A resume is progress; the mtime carries it over a restart.
                e.progress_at = SystemTime::now();
                if let Err(err) = e.file.set_modified(e.progress_at) {
                    tracing::debug!(%err, "could not touch a resumed partial");
                }
            }
            return Ok((r, Vec::new()));
        }
        let evicted = self.reserve(&mut inner, manifest.size)?;
        let dir = self.obj_dir(&sha);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let data = dir.join("data");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&data)
            .map_err(io_err(&data))?;
        file.set_len(manifest.size).map_err(io_err(&data))?;
        write_manifest(&dir, &manifest)?;
        let count = manifest.count() as usize;
        let entry = Entry {
            sha256: sha,
            root,
            manifest: Arc::new(manifest),
            pinned,
            complete: false,
            last_access: clock,
            have: vec![false; count],
            have_count: 0,
            file: Arc::new(file),
            direct: open_direct(&data),
            progress_at: SystemTime::now(),
        };
        write_meta(&dir, &meta_of(&entry))?;
        inner.used += entry.manifest.size;
        inner.entries.insert(sha, entry);
        Ok((Begin::Partial { have: 0 }, evicted))
    }

    /// Verifies `data` against the manifest digest of stripe `index` and,
    /// only if it matches, writes it. Blocking: call from a blocking context.
    pub fn write_stripe(&self, sha: &Digest, index: u64, data: &[u8]) -> Result<bool, StoreError> {
        let manifest = self
            .manifest(sha)
            .map(|(m, _)| m)
            .ok_or_else(|| StoreError::NotFound(hex::encode(sha)))?;
        let Some(expected) = manifest.digests.get(index as usize) else {
            return Err(StoreError::StripeOutOfRange {
                index,
                count: manifest.count(),
            });
        };
        if &sha256(data) != expected {
            return Err(StoreError::BadStripe { index });
        }
        self.write_checked(sha, index, data)
    }

    /// Writes stripe `index` whose bytes the caller has already hashed to
    /// the manifest's digest. Blocking.
    pub(crate) fn write_checked(
        &self,
        sha: &Digest,
        index: u64,
        data: &[u8],
    ) -> Result<bool, StoreError> {
        let (file, direct, manifest) = {
            let inner = self.lock();
            let e = inner
                .entries
                .get(sha)
                .ok_or_else(|| StoreError::NotFound(hex::encode(sha)))?;
            if index >= e.manifest.count() {
                return Err(StoreError::StripeOutOfRange {
                    index,
                    count: e.manifest.count(),
                });
            }
            if e.have[index as usize] {
                return Ok(false);
            }
            (e.file.clone(), e.direct.clone(), e.manifest.clone())
        };
        let len = manifest.stripe_len(index);
        if data.len() as u64 != len {
            // The right bytes, but the manifest's size/stripe size put a
            // different length here: the manifest lied, not the sender.
            return Err(StoreError::GeometryMismatch {
                index,
                expected: len,
                got: data.len() as u64,
            });
        }
        let off = index * u64::from(manifest.stripe_size);
        let path = self.obj_dir(sha).join("data");
        {
            let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            let mut direct_len = 0;
            if let Some(direct) = direct.filter(|_| off.is_multiple_of(DIRECT_ALIGN as u64)) {
                let n = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
                if n > 0 {
                    // Stripes received off the wire come aligned; other
                    // bytes are copied to aligned memory first.
                    let staged = (!data.as_ptr().addr().is_multiple_of(DIRECT_ALIGN))
                        .then(|| StripeBuf::from(&data[..n]));
                    let buf = staged.as_deref().unwrap_or(&data[..n]);
                    match direct.write_all_at(buf, off) {
                        Ok(()) => direct_len = n,
                        // The filesystem opened the file direct but refuses
                        // the write: buffered from now on.
                        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                            tracing::debug!(path = %path.display(), %err, "O_DIRECT write refused");
                            if let Some(e) = self.lock().entries.get_mut(sha) {
                                e.direct = None;
                            }
                        }
                        Err(err) => return Err(io_err(&path)(err)),
                    }
                }
            }
            let mut at = off + direct_len as u64;
            for piece in data[direct_len..].chunks(WRITE_CHUNK) {
                file.write_all_at(piece, at).map_err(io_err(&path))?;
                at += piece.len() as u64;
            }
        }
        let mut inner = self.lock();
        if let Some(e) = inner.entries.get_mut(sha) {
            if !e.have[index as usize] {
                e.have[index as usize] = true;
                e.have_count += 1;
                e.progress_at = SystemTime::now();
            }
        }
        Ok(true)
    }

    /// Whether the partial `sha` is written with `O_DIRECT`.
    pub(crate) fn writes_direct(&self, sha: &Digest) -> bool {
        self.lock()
            .entries
            .get(sha)
            .is_some_and(|e| e.direct.is_some())
    }

    /// Reads stripe `index` if present (complete or verified partial).
    /// Blocking. The bytes are not re-hashed here: the downloader verifies.
    pub fn read_stripe(&self, sha: &Digest, index: u64) -> Result<StripeBuf, StoreError> {
        let (file, off, len) = {
            let mut inner = self.lock();
            let clock = inner.clock;
            let e = inner
                .entries
                .get_mut(sha)
                .ok_or_else(|| StoreError::NotFound(hex::encode(sha)))?;
            if index >= e.manifest.count() {
                return Err(StoreError::StripeOutOfRange {
                    index,
                    count: e.manifest.count(),
                });
            }
            if !e.have[index as usize] {
                return Err(StoreError::StripeMissing {
                    sha256: hex::encode(sha),
                    index,
                });
            }
            e.last_access = e.last_access.max(clock);
            (
                e.file.clone(),
                index * u64::from(e.manifest.stripe_size),
                e.manifest.stripe_len(index),
            )
        };
        // A recycled buffer: `read_exact_at` overwrites all of it (or fails).
        let mut buf = StripeBuf::take(len as usize);
        let path = self.obj_dir(sha).join("data");
        file.read_exact_at(buf.as_mut_slice(), off)
            .map_err(io_err(&path))?;
        Ok(buf)
    }

    /// Starts writing a partial artifact's verified stripes to disk and waits
    /// for it (`fdatasync`), so that the sync which completes the download
    /// has only the tail left. Blocking; a no-op for unknown artifacts.
    pub fn sync_partial(&self, sha: &Digest) -> Result<(), StoreError> {
        let file = match self.lock().entries.get(sha) {
            Some(e) if !e.complete => e.file.clone(),
            _ => return Ok(()),
        };
        file.sync_data()
            .map_err(io_err(&self.obj_dir(sha).join("data")))
    }

    /// The manifest and root of a stored (complete or partial) artifact.
    pub fn manifest(&self, sha: &Digest) -> Option<(Arc<Manifest>, Digest)> {
        let inner = self.lock();
        inner.entries.get(sha).map(|e| (e.manifest.clone(), e.root))
    }

    /// Whether stripe `index` is present and verified.
    pub fn has_stripe(&self, sha: &Digest, index: u64) -> bool {
        self.lock()
            .entries
            .get(sha)
            .and_then(|e| e.have.get(index as usize).copied())
            .unwrap_or(false)
    }

    /// Which stripes are present.
    pub fn have(&self, sha: &Digest) -> Option<Vec<bool>> {
        self.lock().entries.get(sha).map(|e| e.have.clone())
    }

    /// Whether the artifact is complete with this root.
    /// Whether the artifact is complete here, under any stripe root.
    pub fn has_complete(&self, sha: &Digest) -> bool {
        self.lock().entries.get(sha).is_some_and(|e| e.complete)
    }

    pub fn is_complete(&self, sha: &Digest, root: &Digest) -> bool {
        self.lock()
            .entries
            .get(sha)
            .is_some_and(|e| e.complete && &e.root == root)
    }

    /// Re-hashes the whole file; on success marks it complete (synced),
    /// on mismatch removes the artifact. Blocking.
    pub fn finish_partial(&self, sha: &Digest) -> Result<(), StoreError> {
        self.finish_partial_with(sha, None)
    }

    /// Like [`Store::finish_partial`], with the whole-file digest already
    /// computed over the verified stripes in order (`None`: read and hash).
    pub fn finish_partial_with(
        &self,
        sha: &Digest,
        digest: Option<Digest>,
    ) -> Result<(), StoreError> {
        let (file, size, all) = {
            let inner = self.lock();
            let e = inner
                .entries
                .get(sha)
                .ok_or_else(|| StoreError::NotFound(hex::encode(sha)))?;
            if e.complete {
                return Ok(());
            }
            (
                e.file.clone(),
                e.manifest.size,
                e.have_count == e.manifest.count(),
            )
        };
        if !all {
            return Err(StoreError::StripeMissing {
                sha256: hex::encode(sha),
                index: 0,
            });
        }
        let path = self.obj_dir(sha).join("data");
        let got: Digest = match digest {
            Some(d) => d,
            None => {
                let mut h = Sha256::new();
                let mut buf = vec![0u8; 1 << 20];
                let mut off = 0u64;
                while off < size {
                    let n = (size - off).min(buf.len() as u64) as usize;
                    file.read_exact_at(&mut buf[..n], off)
                        .map_err(io_err(&path))?;
                    h.update(&buf[..n]);
                    off += n as u64;
                }
                h.finalize().into()
            }
        };
        if &got != sha {
            self.remove(sha);
            return Err(StoreError::WholeFileMismatch {
                expected: hex::encode(sha),
                got: hex::encode(got),
            });
        }
        file.sync_data().map_err(io_err(&path))?;
        let meta = {
            let mut inner = self.lock();
            inner.clock += 1;
            let clock = inner.clock;
            let Some(e) = inner.entries.get_mut(sha) else {
                return Err(StoreError::NotFound(hex::encode(sha)));
            };
            e.complete = true;
            e.direct = None;
            e.last_access = clock;
            meta_of(e)
        };
        write_meta(&self.obj_dir(sha), &meta)
    }

    /// A complete artifact's data, marking it recently used. Whatever stripe
    /// root it is stored under: a complete artifact passed the whole-file
    /// SHA-256 check, so its bytes are the ones asked for, and a root is
    /// only a layout to download by.
    pub fn open_complete(&self, sha: &Digest) -> Result<(File, u64), StoreError> {
        let meta = {
            let mut inner = self.lock();
            inner.clock += 1;
            let clock = inner.clock;
            let e = inner
                .entries
                .get_mut(sha)
                .filter(|e| e.complete)
                .ok_or_else(|| StoreError::NotFound(hex::encode(sha)))?;
            e.last_access = clock;
            meta_of(e)
        };
        let dir = self.obj_dir(sha);
        write_meta(&dir, &meta)?;
        let path = dir.join("data");
        let f = File::open(&path).map_err(io_err(&path))?;
        Ok((f, meta.size))
    }

    /// Pins or unpins an artifact.
    pub fn set_pinned(&self, sha: &Digest, pinned: bool) -> Result<(), StoreError> {
        let meta = {
            let mut inner = self.lock();
            let e = inner
                .entries
                .get_mut(sha)
                .ok_or_else(|| StoreError::NotFound(hex::encode(sha)))?;
            e.pinned = pinned;
            meta_of(e)
        };
        write_meta(&self.obj_dir(sha), &meta)
    }

    /// Removes an artifact (complete or partial).
    pub fn remove(&self, sha: &Digest) -> bool {
        let mut inner = self.lock();
        if let Some(e) = inner.entries.remove(sha) {
            inner.used -= e.manifest.size;
            let _ = fs::remove_dir_all(self.obj_dir(sha));
            true
        } else {
            false
        }
    }

    /// Removes every partial download that made no progress for `ttl` as of
    /// `now` (see [`partial_expired`]), freeing the quota it reserved.
    /// Complete artifacts are never touched. Returns the removed digests.
    pub fn expire_partials(&self, now: SystemTime, ttl: Duration) -> Vec<Digest> {
        let mut inner = self.lock();
        let expired: Vec<Digest> = inner
            .entries
            .values()
            .filter(|e| !e.complete && partial_expired(e.progress_at, now, ttl))
            .map(|e| e.sha256)
            .collect();
        for sha in &expired {
            if let Some(e) = inner.entries.remove(sha) {
                inner.used -= e.manifest.size;
                let dir = self.obj_dir(sha);
                if let Err(err) = fs::remove_dir_all(&dir) {
                    tracing::warn!(dir = %dir.display(), %err, "expire: remove failed");
                }
                tracing::info!(
                    sha256 = %hex::encode(sha),
                    size = e.manifest.size,
                    stripes_present = e.have_count,
                    ttl_secs = ttl.as_secs(),
                    "removed a partial download that made no progress within the TTL"
                );
            }
        }
        expired
    }

    /// Digests of everything this node can serve at least partly.
    pub fn provided(&self) -> Vec<Digest> {
        self.lock().entries.keys().copied().collect()
    }

    /// Summaries of all artifacts.
    pub fn list(&self) -> Vec<ArtifactInfo> {
        let inner = self.lock();
        let mut v: Vec<ArtifactInfo> = inner
            .entries
            .values()
            .map(|e| ArtifactInfo {
                sha256: hex::encode(e.sha256),
                size: e.manifest.size,
                stripe_size: e.manifest.stripe_size,
                stripe_root: hex::encode(e.root),
                pinned: e.pinned,
                complete: e.complete,
                stripes: e.manifest.count(),
                stripes_present: e.have_count,
                last_access: e.last_access,
            })
            .collect();
        v.sort_by(|a, b| a.sha256.cmp(&b.sha256));
        v
    }
}

fn meta_of(e: &Entry) -> Meta {
    Meta {
        sha256: hex::encode(e.sha256),
        size: e.manifest.size,
        stripe_size: e.manifest.stripe_size,
        stripe_root: hex::encode(e.root),
        pinned: e.pinned,
        complete: e.complete,
        last_access: e.last_access,
    }
}

fn write_meta(dir: &Path, meta: &Meta) -> Result<(), StoreError> {
    let tmp = dir.join("meta.json.tmp");
    let dst = dir.join("meta.json");
    let bytes = serde_json::to_vec_pretty(meta).map_err(|e| StoreError::BadMeta {
        path: dst.clone(),
        reason: e.to_string(),
    })?;
    fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    fs::rename(&tmp, &dst).map_err(io_err(&dst))
}

fn write_manifest(dir: &Path, m: &Manifest) -> Result<(), StoreError> {
    let tmp = dir.join("manifest.tmp");
    let dst = dir.join("manifest");
    let mut buf = Vec::with_capacity(m.digests.len() * 32);
    for d in &m.digests {
        buf.extend_from_slice(d);
    }
    fs::write(&tmp, buf).map_err(io_err(&tmp))?;
    fs::rename(&tmp, &dst).map_err(io_err(&dst))
}

fn bad(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::BadMeta {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn load_entry(dir: &Path) -> Result<Entry, StoreError> {
    let meta_path = dir.join("meta.json");
    let raw = fs::read(&meta_path).map_err(io_err(&meta_path))?;
    let meta: Meta = serde_json::from_slice(&raw).map_err(|e| bad(&meta_path, e.to_string()))?;
    let sha = manifest::parse_digest(&meta.sha256).ok_or_else(|| bad(&meta_path, "sha256"))?;
    let root =
        manifest::parse_digest(&meta.stripe_root).ok_or_else(|| bad(&meta_path, "stripe_root"))?;
    if dir.file_name().and_then(|n| n.to_str()) != Some(meta.sha256.as_str()) {
        return Err(bad(&meta_path, "directory name differs from sha256"));
    }
    let man_path = dir.join("manifest");
    let raw = fs::read(&man_path).map_err(io_err(&man_path))?;
    if raw.len() % 32 != 0 {
        return Err(bad(&man_path, "length not a multiple of 32"));
    }
    let digests: Vec<Digest> = raw
        .chunks_exact(32)
        .map(|c| {
            let mut d = [0u8; 32];
            d.copy_from_slice(c);
            d
        })
        .collect();
    let m = Manifest {
        size: meta.size,
        stripe_size: meta.stripe_size,
        digests,
    };
    m.verify(&root, None, None)?;
    let data = dir.join("data");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&data)
        .map_err(io_err(&data))?;
    let fmeta = file.metadata().map_err(io_err(&data))?;
    let len = fmeta.len();
    // Every verified stripe written updates the data file's mtime.
    let progress_at = fmeta.modified().unwrap_or_else(|_| SystemTime::now());
    if len != m.size {
        return Err(bad(&data, format!("length {len}, expected {}", m.size)));
    }
    let count = m.count() as usize;
    let (have, have_count) = if meta.complete {
        (vec![true; count], count as u64)
    } else {
        // Resume: keep exactly the stripes that verify.
        let mut have = vec![false; count];
        let mut n = 0u64;
        let mut buf = vec![0u8; m.stripe_size as usize];
        for (i, h) in have.iter_mut().enumerate() {
            let len = m.stripe_len(i as u64) as usize;
            let off = i as u64 * u64::from(m.stripe_size);
            file.read_exact_at(&mut buf[..len], off)
                .map_err(io_err(&data))?;
            if sha256(&buf[..len]) == m.digests[i] {
                *h = true;
                n += 1;
            }
        }
        (have, n)
    };
    Ok(Entry {
        sha256: sha,
        root,
        manifest: Arc::new(m),
        pinned: meta.pinned,
        complete: meta.complete,
        last_access: meta.last_access,
        have,
        have_count,
        file: Arc::new(file),
        direct: if meta.complete {
            None
        } else {
            open_direct(&data)
        },
        progress_at,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn put_bytes(s: &Store, data: &[u8], pinned: bool) -> PutResult {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, data).unwrap();
        s.put_path(&p, 4096, pinned).unwrap().0
    }

    #[test]
    fn quota_evicts_lru_unpinned_first_and_pinned_last() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 40_000).unwrap();
        let a = put_bytes(&s, &[1u8; 10_000], true);
        let b = put_bytes(&s, &[2u8; 10_000], false);
        let c = put_bytes(&s, &[3u8; 10_000], false);
        // touch b so c is the least recently used unpinned one
        let bd = manifest::parse_digest(&b.sha256).unwrap();
        s.open_complete(&bd).unwrap();
        let d = put_bytes(&s, &[4u8; 15_000], false);
        let names: Vec<String> = s.list().into_iter().map(|i| i.sha256).collect();
        assert!(names.contains(&a.sha256), "pinned evicted");
        assert!(names.contains(&b.sha256), "recently used evicted");
        assert!(!names.contains(&c.sha256), "LRU not evicted");
        assert!(names.contains(&d.sha256));
        assert!(s.used() <= 40_000);
        // Evicting everything unpinned cannot make room: the pinned one goes
        // too, rather than the store refusing everything from now on.
        let dir2 = tempfile::tempdir().unwrap();
        let p = dir2.path().join("big");
        fs::write(&p, vec![5u8; 35_000]).unwrap();
        let big = s.put_path(&p, 4096, true).unwrap().0;
        let names: Vec<String> = s.list().into_iter().map(|i| i.sha256).collect();
        assert_eq!(names, std::slice::from_ref(&big.sha256));
        assert!(s.used() <= 40_000);
        // Only what exceeds the quota itself is refused.
        fs::write(&p, vec![6u8; 40_001]).unwrap();
        let err = s.put_path(&p, 4096, false).unwrap_err();
        assert!(matches!(err, StoreError::QuotaExceeded { .. }), "{err}");
        assert!(s
            .list()
            .into_iter()
            .any(|i| i.sha256 == big.sha256 && i.pinned));
    }

    #[test]
    fn right_bytes_under_a_false_geometry_are_not_blamed_on_the_sender() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![3u8; 2 * 4096 + 100];
        let mut b = manifest::ManifestBuilder::new(4096).unwrap();
        b.update(&data);
        let (whole, mut m) = b.finish().unwrap();
        let root = m.root();
        m.size += 1; // same stripe count, same root: a lying manifest
        let s = Store::open(dir.path(), 1 << 30).unwrap();
        s.begin_partial(whole, root, m, false).unwrap();
        assert!(matches!(
            s.write_stripe(&whole, 2, &data[2 * 4096..]),
            Err(StoreError::GeometryMismatch {
                index: 2,
                expected: 101,
                got: 100
            })
        ));
        assert!(matches!(
            s.write_stripe(&whole, 2, &[0u8; 101]),
            Err(StoreError::BadStripe { index: 2 })
        ));
    }

    #[test]
    fn partial_resumes_from_verified_stripes_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..5 * 4096u32).map(|i| (i * 7 % 256) as u8).collect();
        let mut b = manifest::ManifestBuilder::new(4096).unwrap();
        b.update(&data);
        let (whole, m) = b.finish().unwrap();
        let root = m.root();
        {
            let s = Store::open(dir.path(), 1 << 30).unwrap();
            s.begin_partial(whole, root, m.clone(), false).unwrap();
            assert!(s.write_stripe(&whole, 0, &data[..4096]).unwrap());
            assert!(s
                .write_stripe(&whole, 3, &data[3 * 4096..4 * 4096])
                .unwrap());
            // a bad stripe never reaches the disk
            let bad = vec![0u8; 4096];
            assert!(matches!(
                s.write_stripe(&whole, 1, &bad),
                Err(StoreError::BadStripe { index: 1 })
            ));
            assert!(s.read_stripe(&whole, 1).is_err());
        }
        let s = Store::open(dir.path(), 1 << 30).unwrap();
        let have = s.have(&whole).unwrap();
        assert_eq!(have, vec![true, false, false, true, false]);
        let (r, _) = s.begin_partial(whole, root, m, false).unwrap();
        assert_eq!(r, Begin::Partial { have: 2 });
        for i in [1u64, 2, 4] {
            let st = (i * 4096) as usize;
            s.write_stripe(&whole, i, &data[st..st + 4096]).unwrap();
        }
        s.finish_partial(&whole).unwrap();
        assert!(s.is_complete(&whole, &root));
        drop(s);
        let s = Store::open(dir.path(), 1 << 30).unwrap();
        assert!(s.is_complete(&whole, &root));
        assert_eq!(
            s.read_stripe(&whole, 2).unwrap().as_slice(),
            &data[2 * 4096..3 * 4096]
        );
    }

    #[test]
    fn a_partial_expires_only_after_ttl_without_progress() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ttl = Duration::from_secs(24 * 3600);
        assert!(!partial_expired(t0, t0, ttl));
        assert!(!partial_expired(t0, t0 + ttl - Duration::from_secs(1), ttl));
        assert!(partial_expired(t0, t0 + ttl, ttl));
        assert!(partial_expired(t0, t0 + 3 * ttl, ttl));
        // Last progress after "now" (the clock went back): kept.
        assert!(!partial_expired(t0 + ttl, t0, ttl));
    }

    #[test]
    fn expire_partials_frees_the_quota_of_stale_partials_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 1 << 30).unwrap();
        let complete = put_bytes(&s, &[9u8; 10_000], false);
        let data: Vec<u8> = (0..5 * 4096u32).map(|i| (i * 13 % 256) as u8).collect();
        let mut b = manifest::ManifestBuilder::new(4096).unwrap();
        b.update(&data);
        let (whole, m) = b.finish().unwrap();
        s.begin_partial(whole, m.root(), m, false).unwrap();
        s.write_stripe(&whole, 0, &data[..4096]).unwrap();
        assert_eq!(s.used(), 10_000 + data.len() as u64);
        let ttl = Duration::from_secs(3600);
        let now = SystemTime::now();
        // Fresh progress: nothing goes, even with an hour's TTL.
        assert!(s.expire_partials(now, ttl).is_empty());
        // An hour later without progress: the partial goes, the complete stays.
        let later = now + ttl + Duration::from_secs(5);
        assert_eq!(s.expire_partials(later, ttl), vec![whole]);
        assert_eq!(s.used(), 10_000);
        assert!(s.have(&whole).is_none());
        assert!(!s.obj_dir(&whole).exists());
        let names: Vec<String> = s.list().into_iter().map(|i| i.sha256).collect();
        assert_eq!(names, vec![complete.sha256]);
        // Complete artifacts never expire.
        assert!(s.expire_partials(later + 100 * ttl, ttl).is_empty());
    }

    #[test]
    fn a_reopened_store_takes_a_partials_last_progress_from_its_data_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![7u8; 3 * 4096];
        let mut b = manifest::ManifestBuilder::new(4096).unwrap();
        b.update(&data);
        let (whole, m) = b.finish().unwrap();
        {
            let s = Store::open(dir.path(), 1 << 30).unwrap();
            s.begin_partial(whole, m.root(), m, false).unwrap();
            s.write_stripe(&whole, 1, &data[..4096]).unwrap();
        }
        let two_days_ago = SystemTime::now() - Duration::from_secs(48 * 3600);
        let data_file = dir
            .path()
            .join("objects")
            .join(hex::encode(whole))
            .join("data");
        File::options()
            .write(true)
            .open(&data_file)
            .unwrap()
            .set_modified(two_days_ago)
            .unwrap();
        let s = Store::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(s.used(), data.len() as u64);
        let removed = s.expire_partials(SystemTime::now(), DEFAULT_PARTIAL_TTL);
        assert_eq!(removed, vec![whole]);
        assert_eq!(s.used(), 0);
    }

    /// Three 16 KiB stripes and a 1000-byte tail, with what each write
    /// path leaves in the data file.
    fn unaligned_artifact() -> (Vec<u8>, Digest, Manifest) {
        let data: Vec<u8> = (0..3 * 16384 + 1000u32)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let mut b = manifest::ManifestBuilder::new(16384).unwrap();
        b.update(&data);
        let (whole, m) = b.finish().unwrap();
        (data, whole, m)
    }

    /// Even stripes come from aligned memory (written without a copy), odd
    /// ones from wherever the `Vec` put them.
    fn download_out_of_order(s: &Store, data: &[u8], whole: Digest, m: &Manifest) {
        for i in [3u64, 1, 0, 2] {
            let st = (i * 16384) as usize;
            let end = (st + 16384).min(data.len());
            if i % 2 == 0 {
                let a = StripeBuf::from(&data[st..end]);
                assert!(s.write_stripe(&whole, i, &a).unwrap());
            } else {
                assert!(s.write_stripe(&whole, i, &data[st..end]).unwrap());
            }
            assert_eq!(s.read_stripe(&whole, i).unwrap().as_slice(), &data[st..end]);
        }
        assert_eq!(s.have(&whole).unwrap(), vec![true; m.count() as usize]);
        // `None`: the whole file is read back from disk and hashed.
        s.finish_partial(&whole).unwrap();
    }

    #[test]
    fn direct_writes_read_back_identical_including_an_unaligned_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (data, whole, m) = unaligned_artifact();
        let root = m.root();
        let s = Store::open(dir.path(), 1 << 30).unwrap();
        s.begin_partial(whole, root, m.clone(), false).unwrap();
        assert!(
            s.lock().entries[&whole].direct.is_some(),
            "the test directory's filesystem refused O_DIRECT"
        );
        download_out_of_order(&s, &data, whole, &m);
        assert!(s.lock().entries[&whole].direct.is_none());
        let (mut f, size) = s.open_complete(&whole).unwrap();
        let mut got = Vec::new();
        f.read_to_end(&mut got).unwrap();
        assert_eq!(size, data.len() as u64);
        assert_eq!(got, data);
    }

    #[test]
    fn buffered_writes_where_o_direct_is_unavailable_give_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let (data, whole, m) = unaligned_artifact();
        let root = m.root();
        let s = Store::open(dir.path(), 1 << 30).unwrap();
        s.begin_partial(whole, root, m.clone(), false).unwrap();
        s.lock().entries.get_mut(&whole).unwrap().direct = None;
        download_out_of_order(&s, &data, whole, &m);
        assert_eq!(fs::read(s.obj_dir(&whole).join("data")).unwrap(), data);
    }
}
