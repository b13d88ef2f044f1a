//! Multi-peer download of one artifact.
//!
//! States: `Discovering` (providers from Kademlia and connected peers) →
//! `Manifest` (first manifest that verifies against the stripe root and the
//! count binding wins; a peer offering a bad one is left out) → `Stripes`
//! (a few requests in flight per peer, faster peers first, duplicates at the
//! tail, every stripe verified before it is written) → `Verifying` (whole-file
//! SHA-256) → `Done`. Each state fails with its own [`FetchError`] variant.
//! Memory is bounded by peers × in-flight requests × stripe size.
//!
//! Structure: [`state`] decides (a state machine without IO, time as an
//! input), [`driver`] does the IO it asks for, [`hasher`] verifies stripes
//! in order while computing the whole-file digest. The node is seen only
//! through [`Network`], which it implements; this module never names it.

mod driver;
mod hasher;
mod state;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::manifest::Digest;
use crate::protocol::{Request, RequestError, Response};
use crate::store::{Store, StoreError};

pub(crate) use state::Limits;
pub use state::{MANIFEST_GRACE, MAX_ACTIVE_PEERS};

/// Finished downloads kept for progress queries before they are forgotten.
const MAX_REMEMBERED_DOWNLOADS: usize = 1024;

/// What to fetch.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    pub sha256: Digest,
    pub stripe_root: Digest,
    /// Checked against the manifest when known (e.g. from the ledger).
    pub size: Option<u64>,
    /// Checked against the manifest when known.
    pub stripe_size: Option<u32>,
    /// Keep the artifact (never evict).
    pub pin: bool,
}

/// Why a download failed, by the state it failed in.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FetchError {
    /// Discovering: nobody offered the artifact.
    #[error("no provider of {sha256} found within {waited_secs}s")]
    NoProviders { sha256: String, waited_secs: u64 },
    /// Manifest: providers answered but none with a manifest matching the stripe root.
    #[error("no valid manifest from {tried} provider(s): {last}")]
    NoValidManifest { tried: usize, last: String },
    /// Manifest: the store already holds this sha256 with another stripe root.
    #[error("store conflict: {0}")]
    Conflict(String),
    /// Stripes: no progress for the stall timeout, and every peer that
    /// served this download sent bad data and was penalised.
    #[error("no honest peer: {missing} stripe(s) missing after {secs}s without progress; {penalised} peer(s) sent bad data and were penalised")]
    NoHonestPeer {
        missing: u64,
        penalised: usize,
        secs: u64,
    },
    /// Stripes: no progress for the stall timeout.
    #[error("stalled: {missing} stripe(s) missing, no peer delivered for {secs}s")]
    Stalled { missing: u64, secs: u64 },
    /// Verifying: every stripe matched but the whole file did not.
    #[error("whole-file check failed: {0}")]
    WholeFile(String),
    /// Local disk or quota.
    #[error("store: {0}")]
    Store(String),
    /// The node stopped.
    #[error("node stopped")]
    Stopped,
}

impl From<StoreError> for FetchError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::WholeFileMismatch { .. } => FetchError::WholeFile(e.to_string()),
            StoreError::RootConflict { .. } => FetchError::Conflict(e.to_string()),
            e => FetchError::Store(e.to_string()),
        }
    }
}

/// Download state, as shown to users.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Discovering,
    Manifest,
    Stripes,
    Verifying,
    Done,
    Failed,
}

/// Progress snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    pub sha256: String,
    pub stripe_root: String,
    pub phase: Phase,
    pub error: Option<String>,
    pub size: u64,
    pub stripe_size: u32,
    pub stripes_total: u64,
    pub stripes_done: u64,
    /// Stripes that were already verified on disk when the download (re)started.
    pub stripes_resumed: u64,
    /// Stripes received from the network and written.
    pub stripes_fetched: u64,
    pub bytes_fetched: u64,
    /// Peers currently serving stripes.
    pub peers: usize,
    /// Stripes written per peer.
    pub per_peer: BTreeMap<String, u64>,
    /// Peers dropped for bad data.
    pub bad_peers: Vec<String>,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone)]
struct Snapshot {
    progress: Progress,
    outcome: Option<Result<(), FetchError>>,
}

/// A running or finished download; clones watch the same download.
#[derive(Debug, Clone)]
pub struct DownloadHandle {
    rx: watch::Receiver<Snapshot>,
}

impl DownloadHandle {
    pub fn progress(&self) -> Progress {
        self.rx.borrow().progress.clone()
    }

    fn outcome(&self) -> Option<Result<(), FetchError>> {
        self.rx.borrow().outcome.clone()
    }

    /// Waits for the end of the download.
    pub async fn wait(&self) -> Result<Progress, FetchError> {
        let mut rx = self.rx.clone();
        loop {
            {
                let s = rx.borrow_and_update();
                if let Some(o) = &s.outcome {
                    return o.clone().map(|()| s.progress.clone());
                }
            }
            if rx.changed().await.is_err() {
                let s = rx.borrow();
                return match &s.outcome {
                    Some(o) => o.clone().map(|()| s.progress.clone()),
                    None => Err(FetchError::Stopped),
                };
            }
        }
    }

    /// Waits until `pred` holds on the progress (or the download ends).
    pub async fn wait_for(&self, mut pred: impl FnMut(&Progress) -> bool) -> Progress {
        let mut rx = self.rx.clone();
        loop {
            {
                let s = rx.borrow_and_update();
                if pred(&s.progress) || s.outcome.is_some() {
                    return s.progress.clone();
                }
            }
            if rx.changed().await.is_err() {
                return rx.borrow().progress.clone();
            }
        }
    }
}

/// The node stopped while a download waited on it.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
#[error("the node has stopped")]
pub(crate) struct NodeStopped;

/// What a download needs from the node: the narrow view that keeps this
/// module independent of `node` (which implements it).
#[async_trait::async_trait]
pub(crate) trait Network: Send + Sync + 'static {
    fn local_peer_id(&self) -> PeerId;
    fn connected_peers(&self) -> Vec<PeerId>;
    /// Whether the peer is excluded for bad data (sent to any download).
    fn is_banned(&self, peer: &PeerId) -> bool;
    /// Bans and disconnects a peer that sent provably bad data.
    fn penalise(&self, peer: PeerId, reason: &str);
    async fn request(&self, peer: PeerId, request: Request) -> Result<Response, RequestError>;
    async fn find_providers(&self, key: Digest) -> Result<HashSet<PeerId>, NodeStopped>;
    /// Announces that this node serves `key`.
    async fn provide(&self, key: Digest);
    async fn unprovide(&self, key: Digest);
}

/// The downloads of one node: running ones, and finished ones kept for
/// progress queries.
#[derive(Debug, Default)]
pub(crate) struct Downloads {
    by_digest: Mutex<HashMap<Digest, DownloadHandle>>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Downloads {
    /// Starts a download or joins the one already running for the same digest.
    pub(crate) fn start(
        &self,
        net: Arc<dyn Network>,
        store: Arc<Store>,
        limits: Limits,
        req: FetchRequest,
    ) -> DownloadHandle {
        let mut map = lock(&self.by_digest);
        let mut before = None;
        if let Some(h) = map.get(&req.sha256) {
            match h.outcome() {
                None if h.progress().stripe_root == hex::encode(req.stripe_root) => {
                    return h.clone()
                }
                // Another layout is being downloaded into the same object: this
                // one runs after it ends (and replaces its partial unless it
                // completed), rather than joining a download of a layout the
                // caller did not ask for.
                None => before = Some(h.clone()),
                Some(Ok(())) if store.has_complete(&req.sha256) => return h.clone(),
                _ => {}
            }
        }
        let progress = Progress {
            sha256: hex::encode(req.sha256),
            stripe_root: hex::encode(req.stripe_root),
            phase: Phase::Discovering,
            error: None,
            size: req.size.unwrap_or(0),
            stripe_size: req.stripe_size.unwrap_or(0),
            stripes_total: 0,
            stripes_done: 0,
            stripes_resumed: 0,
            stripes_fetched: 0,
            bytes_fetched: 0,
            peers: 0,
            per_peer: BTreeMap::new(),
            bad_peers: Vec::new(),
            elapsed_ms: 0,
        };
        let (tx, rx) = watch::channel(Snapshot {
            progress,
            outcome: None,
        });
        let h = DownloadHandle { rx };
        if map.len() >= MAX_REMEMBERED_DOWNLOADS {
            // Forget finished downloads (their progress was for pollers only).
            map.retain(|_, d| d.outcome().is_none());
        }
        map.insert(req.sha256, h.clone());
        drop(map);
        let task = tokio::spawn(async move {
            if let Some(b) = before {
                let _ = b.wait().await;
            }
            let sha = req.sha256;
            let mut d = driver::Downloader::new(net, store, limits, req, tx);
            let r = d.run().await;
            // A failed download keeps its verified stripes for a resume.
            if let Err(e) = &r {
                tracing::warn!(sha256 = %hex::encode(sha), error = %e, "download failed");
            }
            d.publish(Some(r));
        });
        let mut tasks = lock(&self.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task.abort_handle());
        h
    }

    /// A running or finished download of `sha256`.
    pub(crate) fn get(&self, sha256: &Digest) -> Option<DownloadHandle> {
        lock(&self.by_digest).get(sha256).cloned()
    }

    pub(crate) fn progress(&self) -> Vec<Progress> {
        lock(&self.by_digest)
            .values()
            .map(|d| d.progress())
            .collect()
    }

    /// Stops every running download; their verified stripes stay for a resume.
    pub(crate) fn abort_all(&self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}
