//! Multi-peer download of one artifact.
//!
//! States: `Discovering` (providers from Kademlia and connected peers) →
//! `Manifest` (first manifest that verifies against the stripe root and the
//! count binding wins; a peer offering a bad one is penalised) → `Stripes`
//! (a few requests in flight per peer, faster peers first, duplicates at the
//! tail, every stripe verified before it is written) → `Verifying` (whole-file
//! SHA-256) → `Done`. Each state fails with its own [`FetchError`] variant.
//! Memory is bounded by peers × in-flight requests × stripe size.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::bufpool::StripeBuf;
use crate::manifest::{Digest, Manifest};
use crate::node::{lock, Node, NodeError, RequestError};
use crate::protocol::{ErrorCode, Request, Response};
use crate::store::{Begin, StoreError};
use crate::twin_sha::Sha256State;

/// At most this many peers serve one download at a time.
pub const MAX_ACTIVE_PEERS: usize = 16;
/// Finished downloads kept for progress queries before they are forgotten.
const MAX_REMEMBERED_DOWNLOADS: usize = 1024;
/// Manifest requests in flight at once.
const MAX_MANIFEST_REQUESTS: usize = 8;

/// How long a download keeps looking for a manifest matching its root once
/// a provider showed one that does not.
pub const MANIFEST_GRACE: Duration = Duration::from_secs(15);
/// Requests to one stripe at once in the endgame.
const MAX_DUPLICATES: usize = 2;
/// Failures after which a peer leaves the pool.
const MAX_PEER_FAILURES: u32 = 3;

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

/// Starts a download or joins the one already running for the same digest.
pub(crate) fn start(node: Node, req: FetchRequest) -> DownloadHandle {
    let mut map = lock(&node.shared.downloads);
    let mut before = None;
    if let Some(h) = map.get(&req.sha256) {
        match h.outcome() {
            None if h.progress().stripe_root == hex::encode(req.stripe_root) => return h.clone(),
            // Another layout is being downloaded into the same object: this
            // one runs after it ends (and replaces its partial unless it
            // completed), rather than joining a download of a layout the
            // caller did not ask for.
            None => before = Some(h.clone()),
            Some(Ok(())) if node.store().has_complete(&req.sha256) => return h.clone(),
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
    let sha = req.sha256;
    let task_node = node.clone();
    let task = tokio::spawn(async move {
        let node = task_node;
        if let Some(b) = before {
            let _ = b.wait().await;
        }
        let mut d = Downloader::new(node.clone(), req, tx);
        let r = d.run().await;
        // A failed download keeps its verified stripes for a resume.
        if let Err(e) = &r {
            tracing::warn!(sha256 = %hex::encode(sha), error = %e, "download failed");
        }
        d.publish(Some(r));
    });
    let mut tasks = lock(&node.shared.download_tasks);
    tasks.retain(|t| !t.is_finished());
    tasks.push(task.abort_handle());
    h
}

#[derive(Debug)]
struct PeerState {
    inflight: usize,
    /// EWMA of bytes/s per request; `None` until the first stripe.
    rate: Option<f64>,
    fails: u32,
    busy_until: Option<Instant>,
    have: Vec<bool>,
    nothave: HashSet<u64>,
}

impl PeerState {
    fn can_serve(&self, i: u64) -> bool {
        self.have.get(i as usize).copied().unwrap_or(false) && !self.nothave.contains(&i)
    }
}

#[derive(Debug, Default, Clone)]
struct StripeState {
    done: bool,
    verifying: bool,
    requesters: Vec<PeerId>,
    /// When the oldest outstanding request for this stripe went out.
    first_sent: Option<Instant>,
}

enum Event {
    Providers(Result<HashSet<PeerId>, NodeError>),
    Manifest {
        peer: PeerId,
        res: Result<Response, RequestError>,
    },
    Stripe {
        peer: PeerId,
        index: u64,
        sent: Instant,
        res: Result<Response, RequestError>,
    },
    Stored {
        peer: PeerId,
        index: u64,
        bytes: u64,
        res: Result<bool, StoreError>,
        data: Option<StripeBuf>,
        /// Verified by the in-order hasher, which has hashed it in already.
        hashed: bool,
    },
    /// An early `fdatasync` of the partial finished.
    Synced(Result<(), StoreError>),
}

/// Verified bytes written through the page cache since the last early
/// `fdatasync` that trigger the next one: the disk writes overlap the
/// transfer instead of all waiting for the sync that completes the download.
const SYNC_EVERY: u64 = 64 << 20;

/// Whole-file SHA-256 computed while the download runs, on a blocking
/// thread that takes stripes in order. A stripe still to be verified
/// ([`ToHasher::Unverified`]) is checked here when its turn comes, its own
/// digest and the whole-file digest computed in one pass
/// ([`Sha256State::update_and_digest`]); one verified elsewhere
/// ([`ToHasher::Verified`]) only feeds the whole-file digest. Stripes that
/// complete ahead of their turn are held in memory: unverified ones up to
/// [`HASH_AHEAD_BYTES`] (the downloader routes the rest to be verified
/// alone), verified ones up to the same bound, beyond which they are re-read
/// from disk when their turn comes. Bounded channel: back-pressure.
struct InOrderHasher {
    tx: tokio::sync::mpsc::Sender<ToHasher>,
    done: tokio::task::JoinHandle<Option<Digest>>,
}

enum ToHasher {
    Verified {
        index: u64,
        data: Option<StripeBuf>,
    },
    Unverified {
        index: u64,
        data: StripeBuf,
        reply: tokio::sync::oneshot::Sender<Checked>,
    },
}

/// The hasher's verdict on an unverified stripe.
enum Checked {
    /// The bytes match the manifest: to be written.
    Good(StripeBuf),
    Bad(StoreError),
    /// Already hashed in: this copy is not needed.
    Duplicate,
}

enum Held {
    Verified(Option<StripeBuf>),
    Unverified(StripeBuf, tokio::sync::oneshot::Sender<Checked>),
}

/// Out-of-order stripes the whole-file hasher holds in memory, of each kind.
const HASH_AHEAD_BYTES: usize = 24 << 20;

impl InOrderHasher {
    fn start(store: Arc<crate::store::Store>, sha: Digest, manifest: Arc<Manifest>) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<ToHasher>(8);
        let done = tokio::task::spawn_blocking(move || {
            let count = manifest.count();
            let mut whole = Sha256State::default();
            let mut next = 0u64;
            let mut ahead: BTreeMap<u64, Held> = BTreeMap::new();
            let mut held_verified = 0usize;
            while let Some(msg) = rx.blocking_recv() {
                match msg {
                    ToHasher::Verified { index, .. } if index < next => {}
                    ToHasher::Verified { index, data } => {
                        let data = match data {
                            Some(d)
                                if index != next && held_verified + d.len() > HASH_AHEAD_BYTES =>
                            {
                                None
                            }
                            d => d,
                        };
                        held_verified += data.as_ref().map_or(0, |d| d.len());
                        ahead.insert(index, Held::Verified(data));
                    }
                    ToHasher::Unverified { index, data, reply } => {
                        if index < next || ahead.contains_key(&index) {
                            let _ = reply.send(Checked::Duplicate);
                        } else {
                            ahead.insert(index, Held::Unverified(data, reply));
                        }
                    }
                }
                while let Some(held) = ahead.remove(&next) {
                    match held {
                        Held::Verified(Some(d)) => {
                            held_verified -= d.len();
                            whole.update(&d);
                        }
                        Held::Verified(None) => match store.read_stripe(&sha, next) {
                            Ok(d) => whole.update(&d),
                            Err(_) => return None,
                        },
                        Held::Unverified(d, reply) => match check(&manifest, next, &mut whole, d) {
                            Checked::Good(d) => {
                                let _ = reply.send(Checked::Good(d));
                            }
                            verdict => {
                                // `next` stays: another copy is on its way.
                                let _ = reply.send(verdict);
                                break;
                            }
                        },
                    }
                    next += 1;
                }
            }
            (next == count).then(|| whole.finalize())
        });
        Self { tx, done }
    }
}

/// Checks stripe `index` against the manifest, advancing `whole` over it
/// only if it matches.
fn check(manifest: &Manifest, index: u64, whole: &mut Sha256State, data: StripeBuf) -> Checked {
    let expected = manifest.digests[index as usize];
    let len = manifest.stripe_len(index);
    if data.len() as u64 != len {
        let verdict = if crate::manifest::sha256(&data) == expected {
            // The right bytes at a length the manifest's geometry contradicts.
            StoreError::GeometryMismatch {
                index,
                expected: len,
                got: data.len() as u64,
            }
        } else {
            StoreError::BadStripe { index }
        };
        return Checked::Bad(verdict);
    }
    let mut advanced = whole.clone();
    if advanced.update_and_digest(&data) == expected {
        *whole = advanced;
        Checked::Good(data)
    } else {
        Checked::Bad(StoreError::BadStripe { index })
    }
}

struct Downloader {
    node: Node,
    req: FetchRequest,
    tx: watch::Sender<Snapshot>,
    started: Instant,
    manifest: Option<Arc<Manifest>>,
    stripes: Vec<StripeState>,
    missing: BTreeSet<u64>,
    done: u64,
    resumed: u64,
    fetched: u64,
    bytes: u64,
    per_peer: BTreeMap<String, u64>,
    bad_peers: Vec<String>,
    peers: HashMap<PeerId, PeerState>,
    asked: HashMap<PeerId, Instant>,
    manifest_inflight: usize,
    manifest_tried: usize,
    last_manifest_error: String,
    /// When a provider first showed a manifest that does not verify
    /// against the requested root.
    first_rejected: Option<Instant>,
    providers_inflight: bool,
    last_discovery: Option<Instant>,
    last_progress: Instant,
    phase: Phase,
    events: FuturesUnordered<BoxFuture<'static, Event>>,
    hasher: Option<InOrderHasher>,
    /// Bytes of unverified stripes handed to the hasher and not yet answered.
    hasher_held: usize,
    /// The peer whose manifest was adopted.
    manifest_from: Option<PeerId>,
    /// EWMA of stripe request latency, seconds.
    latency: Option<f64>,
    /// Stripes whose only request is long overdue (a peer that froze
    /// without closing its connection): duplicated on other peers.
    overdue: BTreeSet<u64>,
    /// Bytes written since the last early sync was started.
    unsynced: u64,
    syncing: bool,
}

impl Downloader {
    fn new(node: Node, req: FetchRequest, tx: watch::Sender<Snapshot>) -> Self {
        Self {
            node,
            req,
            tx,
            started: Instant::now(),
            manifest: None,
            stripes: Vec::new(),
            missing: BTreeSet::new(),
            done: 0,
            resumed: 0,
            fetched: 0,
            bytes: 0,
            per_peer: BTreeMap::new(),
            bad_peers: Vec::new(),
            peers: HashMap::new(),
            asked: HashMap::new(),
            manifest_inflight: 0,
            manifest_tried: 0,
            last_manifest_error: String::from("no answer"),
            first_rejected: None,
            providers_inflight: false,
            last_discovery: None,
            last_progress: Instant::now(),
            phase: Phase::Discovering,
            events: FuturesUnordered::new(),
            hasher: None,
            hasher_held: 0,
            manifest_from: None,
            latency: None,
            overdue: BTreeSet::new(),
            unsynced: 0,
            syncing: false,
        }
    }

    /// Starts an early `fdatasync` of the partial once enough is written.
    fn maybe_sync(&mut self) {
        if self.syncing || self.unsynced < SYNC_EVERY {
            return;
        }
        self.syncing = true;
        self.unsynced = 0;
        let store = self.node.store().clone();
        let sha = self.req.sha256;
        self.events.push(
            async move {
                let r = tokio::task::spawn_blocking(move || store.sync_partial(&sha))
                    .await
                    .unwrap_or(Ok(()));
                Event::Synced(r)
            }
            .boxed(),
        );
    }

    fn publish(&self, outcome: Option<Result<(), FetchError>>) {
        let m = self.manifest.as_deref();
        let phase = match &outcome {
            Some(Ok(())) => Phase::Done,
            Some(Err(_)) => Phase::Failed,
            None => self.phase,
        };
        let progress = Progress {
            sha256: hex::encode(self.req.sha256),
            stripe_root: hex::encode(self.req.stripe_root),
            phase,
            error: outcome
                .as_ref()
                .and_then(|o| o.as_ref().err())
                .map(|e| e.to_string()),
            size: m.map_or(self.req.size.unwrap_or(0), |m| m.size),
            stripe_size: m.map_or(self.req.stripe_size.unwrap_or(0), |m| m.stripe_size),
            stripes_total: m.map_or(0, |m| m.count()),
            stripes_done: self.done,
            stripes_resumed: self.resumed,
            stripes_fetched: self.fetched,
            bytes_fetched: self.bytes,
            peers: self.peers.len(),
            per_peer: self.per_peer.clone(),
            bad_peers: self.bad_peers.clone(),
            elapsed_ms: self.started.elapsed().as_millis() as u64,
        };
        self.tx.send_replace(Snapshot { progress, outcome });
    }

    async fn run(&mut self) -> Result<(), FetchError> {
        let store = self.node.store().clone();
        // Complete under any root: the whole file already matched its SHA-256.
        if store.has_complete(&self.req.sha256) {
            if let Some((m, _)) = store.manifest(&self.req.sha256) {
                self.done = m.count();
                self.resumed = m.count();
                self.manifest = Some(m);
            }
            if self.req.pin {
                store.set_pinned(&self.req.sha256, true)?;
            }
            return Ok(());
        }
        // A partial left from before (e.g. a restart) gives us the manifest
        // at once. One under another root stays until a manifest for this
        // root is verified, and is then replaced (`Store::begin_partial`).
        if let Some((m, root)) = store.manifest(&self.req.sha256) {
            if root == self.req.stripe_root
                && m.verify(&root, self.req.size, self.req.stripe_size).is_ok()
            {
                self.adopt_manifest((*m).clone()).await?;
            }
        }
        self.discover();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some(m) = &self.manifest {
                if self.done == m.count() {
                    break;
                }
            }
            self.schedule();
            tokio::select! {
                ev = self.events.next(), if !self.events.is_empty() => {
                    if let Some(ev) = ev {
                        self.handle(ev).await?;
                    }
                }
                _ = tick.tick() => {
                    self.on_tick()?;
                }
            }
        }
        self.phase = Phase::Verifying;
        self.publish(None);
        let stripes_ms = self.started.elapsed().as_millis() as u64;
        let sha = self.req.sha256;
        let digest = match self.hasher.take() {
            Some(h) => {
                drop(h.tx);
                h.done.await.ok().flatten()
            }
            None => None,
        };
        let hashed_ms = self.started.elapsed().as_millis() as u64;
        let st = store.clone();
        let r = tokio::task::spawn_blocking(move || st.finish_partial_with(&sha, digest))
            .await
            .map_err(|e| FetchError::Store(e.to_string()))?;
        if let Err(e) = r {
            self.node.unprovide(sha).await;
            return Err(e.into());
        }
        self.node.provide(sha).await;
        tracing::info!(
            sha256 = %hex::encode(sha),
            fetched = self.fetched,
            resumed = self.resumed,
            stripes_ms,
            hashed_ms,
            ms = self.started.elapsed().as_millis() as u64,
            "download complete"
        );
        Ok(())
    }

    fn on_tick(&mut self) -> Result<(), FetchError> {
        let stall = self.node.config().stall_timeout;
        // Providers answer with the layout they hold; when they show one
        // that does not match, the requested root is likely one nobody
        // serves (a bogus or unusual attested layout), and a caller with
        // other layouts to try should not wait the whole stall timeout.
        if self.manifest.is_none()
            && self
                .first_rejected
                .is_some_and(|t| t.elapsed() >= MANIFEST_GRACE.min(stall))
        {
            return Err(FetchError::NoValidManifest {
                tried: self.manifest_tried,
                last: self.last_manifest_error.clone(),
            });
        }
        if self.last_progress.elapsed() >= stall {
            if self.manifest.is_none() {
                if self.manifest_tried == 0 {
                    return Err(FetchError::NoProviders {
                        sha256: hex::encode(self.req.sha256),
                        waited_secs: stall.as_secs(),
                    });
                }
                return Err(FetchError::NoValidManifest {
                    tried: self.manifest_tried,
                    last: self.last_manifest_error.clone(),
                });
            }
            return Err(FetchError::Stalled {
                missing: self.manifest.as_ref().map_or(0, |m| m.count()) - self.done,
                secs: stall.as_secs(),
            });
        }
        self.refresh_partial_peers();
        self.find_overdue();
        let usable = self.peers.len();
        let due = self
            .last_discovery
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(if usable == 0 { 1 } else { 3 }));
        if due && usable < MAX_ACTIVE_PEERS {
            self.discover();
        }
        Ok(())
    }

    /// Marks stripes whose single outstanding request has taken far longer
    /// than requests usually take, and demotes the peer holding them.
    fn find_overdue(&mut self) {
        let Some(m) = self.manifest.clone() else {
            return;
        };
        let limit = Duration::from_secs_f64((4.0 * self.latency.unwrap_or(0.5)).max(2.0));
        self.overdue.clear();
        let mut slow = Vec::new();
        for (i, s) in self.stripes.iter().enumerate() {
            if s.done || s.verifying || s.requesters.len() != 1 {
                continue;
            }
            if let Some(t) = s.first_sent {
                let el = t.elapsed();
                if el > limit {
                    self.overdue.insert(i as u64);
                    slow.push((
                        s.requesters[0],
                        m.stripe_len(i as u64) as f64 / el.as_secs_f64(),
                    ));
                }
            }
        }
        for (peer, r) in slow {
            if let Some(ps) = self.peers.get_mut(&peer) {
                ps.rate = Some(ps.rate.map_or(r, |old| old.min(r)));
            }
        }
    }

    /// Re-asks peers that are themselves still downloading for their
    /// have-bitmap when some missing stripe has no peer that can serve it.
    fn refresh_partial_peers(&mut self) {
        if self.manifest.is_none() || self.manifest_inflight >= MAX_MANIFEST_REQUESTS {
            return;
        }
        let starved = self
            .missing
            .iter()
            .any(|i| !self.peers.values().any(|p| p.can_serve(*i)));
        if !starved {
            return;
        }
        let partial: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.have.iter().any(|h| !h) || !p.nothave.is_empty())
            .map(|(id, _)| *id)
            .filter(|id| {
                self.asked
                    .get(id)
                    .is_none_or(|t| t.elapsed() >= Duration::from_millis(900))
            })
            .collect();
        for peer in partial {
            self.ask_manifest(peer);
        }
    }

    fn ask_manifest(&mut self, p: PeerId) {
        self.asked.insert(p, Instant::now());
        self.manifest_inflight += 1;
        if self.phase == Phase::Discovering {
            self.phase = Phase::Manifest;
        }
        let node = self.node.clone();
        let sha256 = self.req.sha256;
        self.events.push(
            async move {
                let res = node.request(p, Request::Manifest { sha256 }).await;
                Event::Manifest { peer: p, res }
            }
            .boxed(),
        );
    }

    /// Asks Kademlia for providers and offers the manifest request to
    /// connected peers not asked recently.
    fn discover(&mut self) {
        self.last_discovery = Some(Instant::now());
        if !self.providers_inflight {
            self.providers_inflight = true;
            let node = self.node.clone();
            let key = self.req.sha256;
            self.events
                .push(async move { Event::Providers(node.find_providers(key).await) }.boxed());
        }
        let connected = self.node.connected_peers();
        self.offer_candidates(connected);
    }

    fn offer_candidates(&mut self, peers: impl IntoIterator<Item = PeerId>) {
        for p in peers {
            if p == self.node.peer_id()
                || self.peers.contains_key(&p)
                || self.node.is_banned(&p)
                || self.manifest_inflight >= MAX_MANIFEST_REQUESTS
                || self.peers.len() >= MAX_ACTIVE_PEERS
            {
                continue;
            }
            if self
                .asked
                .get(&p)
                .is_some_and(|t| t.elapsed() < Duration::from_secs(5))
            {
                continue;
            }
            self.ask_manifest(p);
        }
    }

    fn penalise(&mut self, peer: PeerId, reason: &str) {
        self.node.penalise(peer, reason);
        self.bad_peers.push(peer.to_string());
        self.drop_peer(peer);
    }

    fn drop_peer(&mut self, peer: PeerId) {
        if self.peers.remove(&peer).is_some() {
            for i in 0..self.stripes.len() {
                let s = &mut self.stripes[i];
                if let Some(pos) = s.requesters.iter().position(|p| *p == peer) {
                    s.requesters.swap_remove(pos);
                    self.refresh(i as u64);
                }
            }
        }
    }

    fn refresh(&mut self, i: u64) {
        if let Some(s) = self.stripes.get(i as usize) {
            if !s.done && !s.verifying && s.requesters.is_empty() {
                self.missing.insert(i);
            } else {
                self.missing.remove(&i);
            }
        }
    }

    async fn adopt_manifest(&mut self, m: Manifest) -> Result<(), FetchError> {
        let store = self.node.store().clone();
        let (begin, evicted) = {
            let (sha, root, m2, pin) = (
                self.req.sha256,
                self.req.stripe_root,
                m.clone(),
                self.req.pin,
            );
            tokio::task::spawn_blocking(move || store.begin_partial(sha, root, m2, pin))
                .await
                .map_err(|e| FetchError::Store(e.to_string()))??
        };
        for e in evicted {
            self.node.unprovide(e).await;
        }
        let n = m.count();
        let have = match begin {
            Begin::Complete => vec![true; n as usize],
            Begin::Partial { .. } => self
                .node
                .store()
                .have(&self.req.sha256)
                .unwrap_or_else(|| vec![false; n as usize]),
        };
        self.stripes = have
            .iter()
            .map(|h| StripeState {
                done: *h,
                ..Default::default()
            })
            .collect();
        self.done = have.iter().filter(|h| **h).count() as u64;
        self.resumed = self.done;
        self.missing = (0..n).filter(|i| !have[*i as usize]).collect();
        let m = Arc::new(m);
        let hasher = InOrderHasher::start(self.node.store().clone(), self.req.sha256, m.clone());
        for i in (0..n).filter(|i| have[*i as usize]) {
            let _ = hasher
                .tx
                .send(ToHasher::Verified {
                    index: i,
                    data: None,
                })
                .await;
        }
        self.hasher = Some(hasher);
        self.manifest = Some(m);
        self.phase = Phase::Stripes;
        self.last_progress = Instant::now();
        // Serve what we have (and will have) while downloading.
        self.node.provide(self.req.sha256).await;
        self.publish(None);
        Ok(())
    }

    fn schedule(&mut self) {
        let Some(m) = self.manifest.clone() else {
            return;
        };
        let max = self.node.config().inflight_per_peer.max(1);
        let now = Instant::now();
        // Faster peers choose first; peers not yet measured are tried early.
        let mut order: Vec<(PeerId, f64)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.busy_until.is_none_or(|t| t <= now))
            .map(|(id, p)| (*id, p.rate.unwrap_or(f64::MAX)))
            .collect();
        order.sort_by(|a, b| b.1.total_cmp(&a.1));
        loop {
            let mut sent_any = false;
            for (peer, _) in &order {
                let Some(ps) = self.peers.get(peer) else {
                    continue;
                };
                if ps.inflight >= max {
                    continue;
                }
                let pick = self
                    .missing
                    .iter()
                    .copied()
                    .find(|i| ps.can_serve(*i))
                    .or_else(|| {
                        // Overdue stripes go to another peer at once.
                        self.overdue.iter().copied().find(|i| {
                            self.stripes.get(*i as usize).is_some_and(|s| {
                                !s.done
                                    && !s.verifying
                                    && s.requesters.len() < MAX_DUPLICATES
                                    && !s.requesters.contains(peer)
                            }) && ps.can_serve(*i)
                        })
                    })
                    .or_else(|| {
                        if !self.missing.is_empty() {
                            return None;
                        }
                        // Endgame: everything left is requested; duplicate the
                        // oldest outstanding stripes on free peers.
                        self.stripes
                            .iter()
                            .enumerate()
                            .find(|(i, s)| {
                                !s.done
                                    && !s.verifying
                                    && !s.requesters.is_empty()
                                    && s.requesters.len() < MAX_DUPLICATES
                                    && !s.requesters.contains(peer)
                                    && ps.can_serve(*i as u64)
                            })
                            .map(|(i, _)| i as u64)
                    });
                let Some(i) = pick else {
                    continue;
                };
                self.send_stripe(*peer, i, &m);
                sent_any = true;
            }
            if !sent_any {
                break;
            }
        }
    }

    fn send_stripe(&mut self, peer: PeerId, index: u64, _m: &Manifest) {
        if let Some(ps) = self.peers.get_mut(&peer) {
            ps.inflight += 1;
        }
        if let Some(s) = self.stripes.get_mut(index as usize) {
            if s.requesters.is_empty() {
                s.first_sent = Some(Instant::now());
            }
            s.requesters.push(peer);
        }
        self.missing.remove(&index);
        self.overdue.remove(&index);
        let node = self.node.clone();
        let sha256 = self.req.sha256;
        self.events.push(
            async move {
                let sent = Instant::now();
                let res = node.request(peer, Request::Stripe { sha256, index }).await;
                Event::Stripe {
                    peer,
                    index,
                    sent,
                    res,
                }
            }
            .boxed(),
        );
    }

    /// Removes `peer` as a requester of `index` after its answer.
    fn answered(&mut self, peer: PeerId, index: u64) {
        if let Some(ps) = self.peers.get_mut(&peer) {
            ps.inflight = ps.inflight.saturating_sub(1);
        }
        if let Some(s) = self.stripes.get_mut(index as usize) {
            if let Some(pos) = s.requesters.iter().position(|p| *p == peer) {
                s.requesters.swap_remove(pos);
            }
        }
    }

    fn peer_failed(&mut self, peer: PeerId, fatal: bool) {
        let drop = match self.peers.get_mut(&peer) {
            Some(ps) => {
                ps.fails += 1;
                fatal || ps.fails >= MAX_PEER_FAILURES
            }
            None => false,
        };
        if drop {
            tracing::debug!(%peer, "peer leaves the download pool");
            self.drop_peer(peer);
        }
    }

    /// Verifies a received stripe and writes it: in the in-order hasher
    /// while it has room (one pass for both digests), otherwise alone on a
    /// blocking thread. Either way an [`Event::Stored`] follows.
    async fn verify_and_store(&mut self, peer: PeerId, index: u64, data: StripeBuf) {
        let store = self.node.store().clone();
        let sha = self.req.sha256;
        let bytes = data.len() as u64;
        enum Route {
            Hasher(tokio::sync::oneshot::Receiver<Checked>),
            Alone(StripeBuf),
        }
        let route = match &self.hasher {
            Some(h) if self.hasher_held + data.len() <= HASH_AHEAD_BYTES => {
                let (reply, verdict) = tokio::sync::oneshot::channel();
                match h.tx.send(ToHasher::Unverified { index, data, reply }).await {
                    Ok(()) => {
                        self.hasher_held += bytes as usize;
                        Route::Hasher(verdict)
                    }
                    // The hasher has stopped: verify alone.
                    Err(e) => match e.0 {
                        ToHasher::Unverified { data, .. } => Route::Alone(data),
                        ToHasher::Verified { .. } => return,
                    },
                }
            }
            _ => Route::Alone(data),
        };
        let stopped = || StoreError::Io {
            path: Default::default(),
            source: std::io::Error::other("stripe verification stopped"),
        };
        let hashed = matches!(route, Route::Hasher(_));
        let fut = async move {
            let (res, data) = match route {
                Route::Hasher(verdict) => match verdict.await {
                    Ok(Checked::Good(d)) => tokio::task::spawn_blocking(move || {
                        (store.write_checked(&sha, index, &d), None)
                    })
                    .await
                    .unwrap_or_else(|_| (Err(stopped()), None)),
                    Ok(Checked::Bad(e)) => (Err(e), None),
                    Ok(Checked::Duplicate) => (Ok(false), None),
                    Err(_) => (Err(stopped()), None),
                },
                Route::Alone(d) => tokio::task::spawn_blocking(move || {
                    (store.write_stripe(&sha, index, &d), Some(d))
                })
                .await
                .unwrap_or_else(|_| (Err(stopped()), None)),
            };
            Event::Stored {
                peer,
                index,
                bytes,
                res,
                data,
                hashed,
            }
        };
        self.events.push(fut.boxed());
    }

    async fn handle(&mut self, ev: Event) -> Result<(), FetchError> {
        match ev {
            Event::Synced(r) => {
                self.syncing = false;
                if let Err(e) = r {
                    // The sync that completes the download reports it for real.
                    tracing::debug!(%e, "early sync failed");
                }
            }
            Event::Providers(res) => {
                self.providers_inflight = false;
                match res {
                    Ok(set) => self.offer_candidates(set),
                    Err(NodeError::Stopped) => return Err(FetchError::Stopped),
                    Err(e) => tracing::debug!(%e, "provider lookup failed"),
                }
            }
            Event::Manifest { peer, res } => {
                self.manifest_inflight = self.manifest_inflight.saturating_sub(1);
                self.manifest_tried += 1;
                match res {
                    Ok(Response::Manifest { manifest, have }) => {
                        let ok = match &self.manifest {
                            Some(known) => {
                                if **known == manifest {
                                    Ok(())
                                } else {
                                    Err("manifest differs from the verified one".to_string())
                                }
                            }
                            None => manifest
                                .verify(&self.req.stripe_root, self.req.size, self.req.stripe_size)
                                .map_err(|e| e.to_string()),
                        };
                        match ok {
                            Ok(()) => {
                                if self.manifest.is_none() {
                                    self.manifest_from = Some(peer);
                                    self.adopt_manifest(manifest).await?;
                                }
                                let n = self.manifest.as_ref().map_or(0, |m| m.count());
                                if let Some(ps) = self.peers.get_mut(&peer) {
                                    // A refresh of a partial peer's bitmap.
                                    if have.len() as u64 == n {
                                        ps.have = have;
                                        ps.nothave.clear();
                                    }
                                } else if have.len() as u64 == n
                                    && self.peers.len() < MAX_ACTIVE_PEERS
                                    && !self.node.is_banned(&peer)
                                {
                                    self.peers.insert(
                                        peer,
                                        PeerState {
                                            inflight: 0,
                                            rate: None,
                                            fails: 0,
                                            busy_until: None,
                                            have,
                                            nothave: HashSet::new(),
                                        },
                                    );
                                    self.publish(None);
                                }
                            }
                            Err(reason) => {
                                // Not provably malicious (the requested root may be
                                // wrong): this peer just does not serve this download.
                                tracing::debug!(%peer, reason, "manifest rejected");
                                self.last_manifest_error = format!("{peer}: {reason}");
                                self.first_rejected.get_or_insert_with(Instant::now);
                                self.drop_peer(peer);
                            }
                        }
                    }
                    Ok(Response::Error { code, reason }) => {
                        self.last_manifest_error = format!("{peer}: {code:?} {reason}");
                        if code == ErrorCode::Busy {
                            // Ask again soon rather than after the usual 5 s.
                            if let Some(t) = Instant::now().checked_sub(Duration::from_millis(4500))
                            {
                                self.asked.insert(peer, t);
                            }
                        }
                    }
                    Ok(Response::Stripe { .. }) => {
                        self.penalise(peer, "stripe sent for a manifest request");
                    }
                    Err(RequestError::Stopped) => return Err(FetchError::Stopped),
                    Err(e) => {
                        self.last_manifest_error = format!("{peer}: {e}");
                    }
                }
            }
            Event::Stripe {
                peer,
                index,
                sent,
                res,
            } => {
                self.answered(peer, index);
                let known = self.peers.contains_key(&peer);
                match res {
                    Ok(Response::Stripe { index: got, data }) => {
                        if !known {
                            // From a dropped peer: discard unseen.
                        } else if got != index {
                            self.penalise(peer, "stripe index differs from the request");
                        } else {
                            let el = sent.elapsed().as_secs_f64().max(1e-6);
                            let r = data.len() as f64 / el;
                            self.latency = Some(self.latency.map_or(el, |l| 0.8 * l + 0.2 * el));
                            if let Some(ps) = self.peers.get_mut(&peer) {
                                ps.fails = 0;
                                ps.rate = Some(ps.rate.map_or(r, |old| 0.7 * old + 0.3 * r));
                            }
                            let s = &mut self.stripes[index as usize];
                            if !s.done && !s.verifying {
                                s.verifying = true;
                                self.verify_and_store(peer, index, data).await;
                            }
                        }
                    }
                    Ok(Response::Error { code, reason }) => {
                        tracing::debug!(%peer, index, ?code, reason, "stripe refused");
                        match code {
                            ErrorCode::NotHave => {
                                if let Some(ps) = self.peers.get_mut(&peer) {
                                    ps.nothave.insert(index);
                                }
                            }
                            ErrorCode::Busy => {
                                if let Some(ps) = self.peers.get_mut(&peer) {
                                    ps.busy_until =
                                        Some(Instant::now() + Duration::from_millis(200));
                                }
                            }
                            ErrorCode::NotFound => self.drop_peer(peer),
                            ErrorCode::BadRequest | ErrorCode::Internal => {
                                self.peer_failed(peer, false)
                            }
                        }
                    }
                    Ok(Response::Manifest { .. }) => {
                        self.penalise(peer, "manifest sent for a stripe request");
                    }
                    Err(RequestError::Stopped) => return Err(FetchError::Stopped),
                    Err(e) => {
                        tracing::debug!(%peer, index, %e, "stripe request failed");
                        let fatal = matches!(
                            e,
                            RequestError::ConnectionClosed
                                | RequestError::Dial
                                | RequestError::Unsupported
                        );
                        self.peer_failed(peer, fatal);
                    }
                }
                self.refresh(index);
            }
            Event::Stored {
                peer,
                index,
                bytes,
                res,
                data,
                hashed,
            } => {
                if let Some(s) = self.stripes.get_mut(index as usize) {
                    s.verifying = false;
                }
                if hashed {
                    self.hasher_held -= bytes as usize;
                }
                match res {
                    Ok(_) => {
                        let mut newly = false;
                        if let Some(s) = self.stripes.get_mut(index as usize) {
                            if !s.done {
                                s.done = true;
                                newly = true;
                                self.done += 1;
                                self.fetched += 1;
                                self.bytes += bytes;
                                *self.per_peer.entry(peer.to_string()).or_default() += 1;
                                self.last_progress = Instant::now();
                            }
                        }
                        if newly {
                            if !hashed {
                                if let Some(h) = &self.hasher {
                                    let _ = h.tx.send(ToHasher::Verified { index, data }).await;
                                }
                            }
                            // Direct writes are on the device already; only
                            // page-cache writes want the early writeback.
                            if !self.node.store().writes_direct(&self.req.sha256) {
                                self.unsynced += bytes;
                                self.maybe_sync();
                            }
                        }
                        self.publish(None);
                    }
                    Err(StoreError::BadStripe { .. }) => {
                        self.penalise(peer, "stripe failed verification");
                    }
                    Err(e @ StoreError::GeometryMismatch { .. }) => {
                        // The accepted manifest carried a false size or stripe
                        // size: drop the partial, penalise its source, fail.
                        if let Some(src) = self.manifest_from {
                            self.penalise(src, "manifest with false geometry");
                        }
                        self.node.unprovide(self.req.sha256).await;
                        self.node.store().remove(&self.req.sha256);
                        return Err(FetchError::NoValidManifest {
                            tried: self.manifest_tried,
                            last: e.to_string(),
                        });
                    }
                    Err(e) => return Err(e.into()),
                }
                self.refresh(index);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_in_order_check_advances_the_whole_file_digest_only_over_good_stripes() {
        let data: Vec<u8> = (0..2 * 4096 + 10u32)
            .map(|i| (i * 13 % 256) as u8)
            .collect();
        let mut b = crate::manifest::ManifestBuilder::new(4096).unwrap();
        b.update(&data);
        let (whole_sha, m) = b.finish().unwrap();
        let mut whole = Sha256State::default();

        let mut bad = StripeBuf::from(&data[..4096]);
        bad.as_mut_slice()[7] ^= 1;
        assert!(matches!(
            check(&m, 0, &mut whole, bad),
            Checked::Bad(StoreError::BadStripe { index: 0 })
        ));
        // The right bytes of stripe 0 cut short: they match no digest.
        assert!(matches!(
            check(&m, 0, &mut whole, StripeBuf::from(&data[..4000])),
            Checked::Bad(StoreError::BadStripe { index: 0 })
        ));
        for (i, chunk) in data.chunks(4096).enumerate() {
            assert!(matches!(
                check(&m, i as u64, &mut whole, StripeBuf::from(chunk)),
                Checked::Good(d) if d.as_slice() == chunk
            ));
        }
        assert_eq!(whole.finalize(), whole_sha);
    }

    #[test]
    fn right_bytes_at_a_length_the_manifest_contradicts_are_a_geometry_mismatch() {
        let data = vec![9u8; 4096 + 100];
        let mut b = crate::manifest::ManifestBuilder::new(4096).unwrap();
        b.update(&data);
        let (_, mut m) = b.finish().unwrap();
        // A manifest whose last digest is that of 50 bytes, while its size
        // says the last stripe holds 100.
        m.digests[1] = crate::manifest::sha256(&data[4096..4146]);
        let mut whole = Sha256State::default();
        assert!(matches!(
            check(&m, 0, &mut whole, StripeBuf::from(&data[..4096])),
            Checked::Good(_)
        ));
        assert!(matches!(
            check(&m, 1, &mut whole, StripeBuf::from(&data[4096..4146])),
            Checked::Bad(StoreError::GeometryMismatch {
                index: 1,
                expected: 100,
                got: 50
            })
        ));
    }
}
