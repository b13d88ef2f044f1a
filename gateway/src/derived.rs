//! What the registry front-ends say about an artifact besides its SHA-256:
//! other digests (npm's sha512 and sha1, Maven's sha1 and md5), an npm
//! tarball's `package.json`, a wheel's core metadata. All of it is computed
//! here from bytes the store verified against the ledger, once per artifact,
//! and kept on disk: an artifact's bytes never change, so neither does
//! anything derived from them.

use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use futures::StreamExt;
use md5::Md5;
use pyrsia_chain::Digest;
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::{Digest as _, Sha256, Sha512};
use tokio::io::AsyncWriteExt;

use crate::catalog::Artifact;
use crate::store::{stream, StoreClient, StoreError};

/// The largest `package.json` or `METADATA` read out of an archive.
const MAX_METADATA: u64 = 4 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Derived {
    pub sha256: Digest,
    /// Hex.
    pub sha1: String,
    /// Hex.
    pub md5: String,
    /// Hex.
    pub sha512: String,
    /// An npm tarball's `package.json`.
    pub package_json: Option<serde_json::Value>,
    /// Whether a wheel's `METADATA` was kept (as `<sha256>.metadata`).
    pub core_metadata: bool,
}

impl Derived {
    /// npm's `dist.integrity`.
    pub fn integrity(&self) -> String {
        let raw = hex::decode(&self.sha512).unwrap_or_default();
        format!(
            "sha512-{}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeriveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {name} from the store: {reason}")]
    Body { name: String, reason: String },
    #[error("the store returned bytes for {name} that are not the attested ones (sha256 {got}, size {size})")]
    NotAttested {
        name: String,
        got: Digest,
        size: u64,
    },
}

/// Which metadata to read out of the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Plain,
    NpmTarball,
    Wheel,
}

/// Derived data, on disk under one directory.
#[derive(Clone, Debug)]
pub struct DerivedCache {
    dir: PathBuf,
    store: StoreClient,
}

impl DerivedCache {
    pub fn new(dir: PathBuf, store: StoreClient) -> DerivedCache {
        DerivedCache { dir, store }
    }

    fn path(&self, sha: &Digest, ext: &str) -> PathBuf {
        self.dir.join(format!("{sha}.{ext}"))
    }

    /// The wheel's `METADATA`, if [`get`](Self::get) kept one.
    pub fn core_metadata(&self, sha: &Digest) -> Option<Vec<u8>> {
        std::fs::read(self.path(sha, "metadata")).ok()
    }

    /// What is derived from `artifact`, computed on first use.
    pub async fn get(&self, artifact: &Artifact, kind: Kind) -> Result<Derived, DeriveError> {
        if let Some(d) = self.cached(&artifact.sha256) {
            return Ok(d);
        }
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|source| DeriveError::Io {
                path: self.dir.clone(),
                source,
            })?;
        // Unique per call: concurrent requests may derive the same artifact.
        static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.path(
            &artifact.sha256,
            &format!("{}-{call}.part", std::process::id()),
        );
        let result = match self.download(artifact, &tmp).await {
            Ok(()) => self.record(&tmp, artifact.sha256, kind).await,
            Err(e) => Err(e),
        };
        let _ = tokio::fs::remove_file(&tmp).await;
        result
    }

    fn cached(&self, sha: &Digest) -> Option<Derived> {
        std::fs::read(self.path(sha, "json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Derived>(&b).ok())
    }

    /// Streams `artifact` from the store into `tmp`, checking it is the
    /// attested bytes.
    async fn download(&self, artifact: &Artifact, tmp: &Path) -> Result<(), DeriveError> {
        let io = |source| DeriveError::Io {
            path: tmp.to_owned(),
            source,
        };
        let mut body = stream(&self.store, artifact).await?;
        let mut out = tokio::fs::File::create(tmp).await.map_err(io)?;
        let mut hash = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| DeriveError::Body {
                name: artifact.name.clone(),
                reason: e.to_string(),
            })?;
            size += chunk.len() as u64;
            hash.update(&chunk);
            out.write_all(&chunk).await.map_err(io)?;
        }
        out.flush().await.map_err(io)?;
        let got = Digest(hash.finalize().into());
        if got != artifact.sha256 || size != artifact.size {
            return Err(DeriveError::NotAttested {
                name: artifact.name.clone(),
                got,
                size,
            });
        }
        Ok(())
    }

    /// Derives and keeps what `file` (whose SHA-256 the caller checked to be
    /// `sha256`) says: an import records its files this way as it stores
    /// them, so the first client after it needs no round trip to the store.
    pub async fn record(
        &self,
        file: &Path,
        sha256: Digest,
        kind: Kind,
    ) -> Result<Derived, DeriveError> {
        let path = file.to_owned();
        let computed = tokio::task::spawn_blocking(move || derive_file(&path, sha256, kind))
            .await
            .map_err(|e| DeriveError::Io {
                path: file.to_owned(),
                source: std::io::Error::other(e),
            })?;
        let (derived, metadata) = computed.map_err(|source| DeriveError::Io {
            path: file.to_owned(),
            source,
        })?;
        let io = |path: PathBuf| move |source| DeriveError::Io { path, source };
        std::fs::create_dir_all(&self.dir).map_err(io(self.dir.clone()))?;
        if let Some(m) = metadata {
            let p = self.path(&sha256, "metadata");
            write_atomic(&p, &m).map_err(io(p.clone()))?;
        }
        let p = self.path(&sha256, "json");
        let json = serde_json::to_vec(&derived).map_err(|e| DeriveError::Io {
            path: p.clone(),
            source: e.into(),
        })?;
        write_atomic(&p, &json).map_err(io(p.clone()))?;
        Ok(derived)
    }
}

/// Digests of `path` and the metadata `kind` says to read out of it.
fn derive_file(
    path: &Path,
    sha256: Digest,
    kind: Kind,
) -> std::io::Result<(Derived, Option<Vec<u8>>)> {
    let mut f = std::fs::File::open(path)?;
    let (mut s1, mut m5, mut s512) = (Sha1::new(), Md5::new(), Sha512::new());
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        s1.update(&buf[..n]);
        m5.update(&buf[..n]);
        s512.update(&buf[..n]);
    }
    let (package_json, metadata) = match kind {
        Kind::Plain => (None, None),
        Kind::NpmTarball => (npm_package_json(path), None),
        Kind::Wheel => (None, wheel_metadata(path)),
    };
    Ok((
        Derived {
            sha256,
            sha1: hex::encode(s1.finalize()),
            md5: hex::encode(m5.finalize()),
            sha512: hex::encode(s512.finalize()),
            package_json,
            core_metadata: metadata.is_some(),
        },
        metadata,
    ))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}

/// `package.json` at the root of an npm tarball (its one top directory,
/// whatever it is called, as npm reads it).
pub fn npm_package_json(path: &Path) -> Option<serde_json::Value> {
    let f = std::fs::File::open(path).ok()?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(f));
    for entry in archive.entries().ok()? {
        let entry = entry.ok()?;
        let p = entry.path().ok()?.into_owned();
        let parts: Vec<_> = p.components().collect();
        if parts.len() == 2 && p.file_name().is_some_and(|n| n == "package.json") {
            let mut text = String::new();
            entry.take(MAX_METADATA).read_to_string(&mut text).ok()?;
            return serde_json::from_str(&text).ok();
        }
    }
    None
}

/// A wheel's `*.dist-info/METADATA` (PEP 658 serves it as is).
pub fn wheel_metadata(path: &Path) -> Option<Vec<u8>> {
    let f = std::fs::File::open(path).ok()?;
    let mut zip = zip::ZipArchive::new(f).ok()?;
    let name = zip
        .file_names()
        .find(|n| {
            let mut parts = n.split('/');
            matches!(
                (parts.next(), parts.next(), parts.next()),
                (Some(dir), Some("METADATA"), None) if dir.ends_with(".dist-info")
            )
        })?
        .to_owned();
    let entry = zip.by_name(&name).ok()?;
    let mut out = Vec::new();
    entry.take(MAX_METADATA).read_to_end(&mut out).ok()?;
    Some(out)
}
