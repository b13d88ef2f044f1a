//! Pull-through import on a certified trusted node: a version the ledger
//! does not have is fetched from the configured upstream registry, checked
//! against the upstream's own integrity data, stored, and recorded with a
//! `TrustedImport` signed by this node. Other nodes then get it from peers.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pyrsia_chain::{sign_tx, Keypair, Output, PackageId, TrustedImport, TxBody, TxKind};
use pyrsia_ledger_client::rpc::{ClientError, LedgerClient};
use sha2::Digest as _;
use tokio::sync::Mutex;

use crate::store::{put_output, StoreClient, StoreError};

/// The largest upstream metadata document read (packuments of popular
/// packages run to tens of MiB).
pub const MAX_METADATA_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("upstream {url}: {reason}")]
    Upstream { url: String, reason: String },
    #[error("upstream {url}: not found")]
    UpstreamMissing { url: String },
    #[error("upstream {url} is over the limit of {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("{what} from {url} does not match the upstream's own integrity data: expected {expected}, got {got}")]
    Integrity {
        what: String,
        url: String,
        expected: String,
        got: String,
    },
    #[error("{0}")]
    Refused(String),
    #[error("storing {name}: {source}")]
    Store {
        name: String,
        #[source]
        source: StoreError,
    },
    #[error("recording the import of {package}: {source}")]
    Ledger {
        package: String,
        #[source]
        source: ClientError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A file downloaded from upstream into the import directory; removed when
/// dropped.
#[derive(Debug)]
pub struct Downloaded {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: [u8; 32],
    pub sha512: [u8; 64],
    pub sha1: [u8; 20],
}

impl Drop for Downloaded {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A checked file an import records: its output name, the file, and
/// what the front-end derives from it.
#[derive(Debug)]
pub struct Fetched {
    pub name: String,
    pub file: Downloaded,
    pub kind: crate::derived::Kind,
}

/// See [`Importer::begin`].
#[derive(Debug)]
pub enum Begin {
    Done(u64),
    Go(tokio::sync::OwnedMutexGuard<()>),
}

/// The upstream registries this node imports from, and its signing key.
#[derive(Debug)]
pub struct Importer {
    upstreams: BTreeMap<String, String>,
    key: Keypair,
    ledger: LedgerClient,
    store: StoreClient,
    dir: PathBuf,
    max_bytes: u64,
    /// Held while a transaction is signed and broadcast, so that nonces
    /// reach the mempool in order.
    nonce: Mutex<u64>,
    /// One import per package at a time; later callers find it done.
    running: Mutex<BTreeMap<PackageId, Arc<Mutex<()>>>>,
    /// What this node imported, with the height of its commit.
    imported: std::sync::Mutex<BTreeMap<PackageId, u64>>,
    agent: ureq::Agent,
}

impl Importer {
    pub fn new(
        upstreams: BTreeMap<String, String>,
        key: Keypair,
        ledger: LedgerClient,
        store: StoreClient,
        dir: PathBuf,
        max_bytes: u64,
    ) -> Importer {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(Duration::from_secs(60))
            .redirects(0)
            .build();
        Importer {
            upstreams: upstreams
                .into_iter()
                .map(|(k, v)| (k, v.trim_end_matches('/').to_owned()))
                .collect(),
            key,
            ledger,
            store,
            dir,
            max_bytes,
            nonce: Mutex::new(0),
            running: Mutex::new(BTreeMap::new()),
            imported: std::sync::Mutex::new(BTreeMap::new()),
            agent,
        }
    }

    /// The base URL of upstream `name` (`npm`, `pypi`, `pypi-files`, `maven`, `oci`).
    pub fn upstream(&self, name: &str) -> Option<&str> {
        self.upstreams.get(name).map(String::as_str)
    }

    /// Whether `url` lies under one of the configured upstreams: the only
    /// URLs an import fetches, whatever upstream metadata points to.
    pub fn allowed(&self, url: &str) -> bool {
        self.upstreams.values().any(|base| {
            url.strip_prefix(base.as_str())
                .is_some_and(|r| r.starts_with('/'))
        })
    }

    /// GET `url` (under a configured upstream) into memory, at most `limit`
    /// bytes; `None` on 404. Returns the body and the named response headers.
    pub async fn get_small(
        &self,
        url: &str,
        accept: &str,
        limit: u64,
        headers: &[&str],
    ) -> Result<Option<(Vec<u8>, Vec<Option<String>>)>, ImportError> {
        self.check_allowed(url)?;
        let agent = self.agent.clone();
        let (url, accept) = (url.to_owned(), accept.to_owned());
        let names: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            let resp = match agent.get(&url).set("accept", &accept).call() {
                Ok(r) => r,
                Err(ureq::Error::Status(404, _)) => return Ok(None),
                Err(e) => {
                    return Err(ImportError::Upstream {
                        url,
                        reason: e.to_string(),
                    })
                }
            };
            let values = names
                .iter()
                .map(|n| resp.header(n).map(str::to_owned))
                .collect();
            let mut body = Vec::new();
            resp.into_reader()
                .take(limit + 1)
                .read_to_end(&mut body)
                .map_err(|e| ImportError::Upstream {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
            if body.len() as u64 > limit {
                return Err(ImportError::TooLarge { url, limit });
            }
            Ok(Some((body, values)))
        })
        .await
        .map_err(|e| ImportError::Refused(format!("upstream fetch task: {e}")))?
    }

    /// A JSON document from upstream (`None` on 404); `what` names it in
    /// errors.
    pub async fn get_json(
        &self,
        url: &str,
        accept: &str,
        what: &str,
    ) -> Result<Option<serde_json::Value>, ImportError> {
        let Some((body, _)) = self.get_small(url, accept, MAX_METADATA_BYTES, &[]).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| ImportError::Upstream {
                url: url.to_owned(),
                reason: format!("{what} is not JSON: {e}"),
            })
    }

    fn check_allowed(&self, url: &str) -> Result<(), ImportError> {
        if self.allowed(url) {
            Ok(())
        } else {
            Err(ImportError::Refused(format!(
                "{url} is not under a configured upstream registry; it is not fetched"
            )))
        }
    }

    /// Downloads `url` (under a configured upstream) to a file, hashing it.
    pub async fn download(&self, url: &str) -> Result<Downloaded, ImportError> {
        self.check_allowed(url)?;
        std::fs::create_dir_all(&self.dir).map_err(|source| ImportError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let path = self.dir.join(format!(
            "{}.part",
            hex::encode(sha2::Sha256::digest(url.as_bytes()))
        ));
        let agent = self.agent.clone();
        let url = url.to_owned();
        let limit = self.max_bytes;
        tokio::task::spawn_blocking(move || {
            let upstream_err = |reason: String| ImportError::Upstream {
                url: url.clone(),
                reason,
            };
            let resp = match agent.get(&url).call() {
                Ok(r) => r,
                Err(ureq::Error::Status(404, _)) => {
                    return Err(ImportError::UpstreamMissing { url: url.clone() })
                }
                Err(e) => return Err(upstream_err(e.to_string())),
            };
            let io = |source| ImportError::Io {
                path: path.clone(),
                source,
            };
            let mut file = std::fs::File::create(&path).map_err(io)?;
            // Dropped on any error below, which removes the file.
            let mut downloaded = Downloaded {
                path: path.clone(),
                size: 0,
                sha256: [0; 32],
                sha512: [0; 64],
                sha1: [0; 20],
            };
            let mut reader = resp.into_reader().take(limit + 1);
            let (mut s256, mut s512, mut s1) =
                (sha2::Sha256::new(), sha2::Sha512::new(), sha1::Sha1::new());
            let mut buf = vec![0u8; 256 * 1024];
            let mut size = 0u64;
            loop {
                let n = reader
                    .read(&mut buf)
                    .map_err(|e| upstream_err(e.to_string()))?;
                if n == 0 {
                    break;
                }
                size += n as u64;
                if size > limit {
                    return Err(ImportError::TooLarge { url, limit });
                }
                s256.update(&buf[..n]);
                s512.update(&buf[..n]);
                s1.update(&buf[..n]);
                std::io::Write::write_all(&mut file, &buf[..n]).map_err(io)?;
            }
            file.sync_all().map_err(io)?;
            downloaded.size = size;
            downloaded.sha256 = s256.finalize().into();
            downloaded.sha512 = s512.finalize().into();
            downloaded.sha1 = s1.finalize().into();
            Ok(downloaded)
        })
        .await
        .map_err(|e| ImportError::Refused(format!("upstream download task: {e}")))?
    }

    /// Keeps `bytes` (fetched and checked in memory, as OCI manifests are)
    /// as a file to record.
    pub fn keep(&self, bytes: &[u8]) -> Result<Downloaded, ImportError> {
        let sha256: [u8; 32] = sha2::Sha256::digest(bytes).into();
        let path = self.dir.join(format!("{}.kept", hex::encode(sha256)));
        std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&path, bytes))
            .map_err(|source| ImportError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(Downloaded {
            path,
            size: bytes.len() as u64,
            sha256,
            sha512: sha2::Sha512::digest(bytes).into(),
            sha1: sha1::Sha1::digest(bytes).into(),
        })
    }

    /// Starts importing `package`: `Done` if this node already did, else
    /// the package's lock, held until the import ends.
    pub async fn begin(&self, package: &PackageId) -> Begin {
        let guard = self.lock(package).await;
        match self.imported(package) {
            Some(height) => Begin::Done(height),
            None => Begin::Go(guard),
        }
    }

    /// Holds the package's import lock: a second request for it waits for
    /// the first and then finds the import on the ledger.
    pub async fn lock(&self, package: &PackageId) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut running = self.running.lock().await;
            // Locks nobody else holds are dropped as the map is used.
            running.retain(|_, l| Arc::strong_count(l) > 1);
            running.entry(package.clone()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// The height at which this node's import of `package` was committed.
    pub fn imported(&self, package: &PackageId) -> Option<u64> {
        self.imported.lock().ok()?.get(package).copied()
    }

    /// Stores the checked files and records the import; returns the height
    /// of its commit.
    pub async fn record(
        &self,
        package: &PackageId,
        upstream: &str,
        files: &[(String, &Path)],
    ) -> Result<u64, ImportError> {
        let started = std::time::Instant::now();
        let mut outputs: Vec<Output> = Vec::with_capacity(files.len());
        for (name, path) in files {
            let out = put_output(&self.store, path, name)
                .await
                .map_err(|source| ImportError::Store {
                    name: name.clone(),
                    source,
                })?;
            outputs.push(out);
        }
        let upstream = upstream.to_owned();
        let kind = TxKind::TrustedImport(TrustedImport {
            package: package.clone(),
            outputs,
            upstream,
        });
        let ledger_err = |source| ImportError::Ledger {
            package: package.to_string(),
            source,
        };
        let stored = started.elapsed();
        let hash = {
            let mut next = self.nonce.lock().await;
            let committed = self
                .ledger
                .next_nonce(&self.key.public())
                .await
                .map_err(ledger_err)?;
            let nonce = committed.max(*next);
            let chain_id = self.ledger.chain_id().await.map_err(ledger_err)?;
            let tx = sign_tx(&self.key, &chain_id, TxBody { nonce, kind });
            let hash = self.ledger.broadcast(&tx).await.map_err(ledger_err)?;
            *next = nonce + 1;
            hash
        };
        let committed = self.ledger.wait_tx(hash, Duration::from_secs(60)).await;
        let committed = match committed {
            Ok(c) => c,
            Err(e) => {
                // The mempool may have dropped it after admitting it: the next
                // import starts again from the committed nonce, filling the gap
                // instead of queueing behind it (docs/protocol.md).
                *self.nonce.lock().await = 0;
                return Err(ledger_err(e));
            }
        };
        if committed.code != 0 {
            return Err(ledger_err(ClientError::Rejected {
                code: committed.code,
                log: committed.log,
            }));
        }
        tracing::info!(
            %package,
            height = committed.height,
            store_ms = stored.as_millis() as u64,
            commit_ms = (started.elapsed() - stored).as_millis() as u64,
            "imported from upstream"
        );
        if let Ok(mut imported) = self.imported.lock() {
            imported.insert(package.clone(), committed.height);
        }
        Ok(committed.height)
    }
}

/// An SRI string (`sha512-…`, `sha1-…`) checked against a download.
pub fn check_sri(sri: &str, d: &Downloaded, url: &str) -> Result<(), ImportError> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    // The strongest algorithm listed decides, as npm's ssri does.
    let mut best: Option<(u8, &str, String)> = None;
    for part in sri.split_whitespace() {
        let Some((alg, value)) = part.split_once('-') else {
            continue;
        };
        let value = value.split('?').next().unwrap_or_default();
        let (rank, got) = match alg {
            "sha512" => (3, b64.encode(d.sha512)),
            "sha256" => (2, b64.encode(d.sha256)),
            "sha1" => (1, b64.encode(d.sha1)),
            _ => continue,
        };
        if best.as_ref().is_none_or(|(r, _, _)| rank > *r) {
            best = Some((rank, value, got));
        }
    }
    match best {
        Some((_, expected, got)) if expected == got => Ok(()),
        Some((_, expected, got)) => Err(ImportError::Integrity {
            what: "the tarball".into(),
            url: url.to_owned(),
            expected: expected.to_owned(),
            got,
        }),
        None => Err(ImportError::Refused(format!(
            "{url}: the upstream gives no integrity value this node can check ({sri:?})"
        ))),
    }
}

/// A hex digest from upstream metadata checked against a download.
pub fn check_hex(expected: &str, got: &[u8], what: &str, url: &str) -> Result<(), ImportError> {
    let expected = expected.trim().to_ascii_lowercase();
    let got = hex::encode(got);
    if expected == got {
        Ok(())
    } else {
        Err(ImportError::Integrity {
            what: what.to_owned(),
            url: url.to_owned(),
            expected,
            got,
        })
    }
}
