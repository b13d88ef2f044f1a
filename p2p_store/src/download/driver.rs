//! The IO around [`DownloadState`]: network requests, stripe verification
//! and writes, early syncs, the whole-file check and progress. Every
//! decision is the policy's; this loop feeds it what happened and carries
//! out what it returns.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use libp2p::PeerId;
use tokio::sync::watch;

use super::hasher::{Checked, InOrderHasher, ToHasher, HASH_AHEAD_BYTES};
use super::state::{Action, DownloadState, Event, Limits, ManifestAnswer, StripeAnswer};
use super::{FetchError, FetchRequest, Network, NodeStopped, Phase, Snapshot};
use crate::bufpool::StripeBuf;
use crate::manifest::Manifest;
use crate::protocol::{Request, RequestError, Response};
use crate::store::{Begin, Store, StoreError};

/// Verified bytes written through the page cache since the last early
/// `fdatasync` that trigger the next one: the disk writes overlap the
/// transfer instead of all waiting for the sync that completes the download.
const SYNC_EVERY: u64 = 64 << 20;
/// How often the policy is told that time passed.
const TICK: Duration = Duration::from_millis(500);
/// Unverified bytes held by the in-order hasher from which it counts as
/// blocked on the stripe it waits for ([`Event::HasherWaiting`]): half its
/// window, so the policy can act before later stripes spill to disk.
const HASHER_BLOCKED_BYTES: usize = HASH_AHEAD_BYTES / 2;

/// An IO operation that finished.
enum Completion {
    Providers(Result<HashSet<PeerId>, NodeStopped>),
    Manifest {
        peer: PeerId,
        res: Result<Response, RequestError>,
    },
    Stripe {
        peer: PeerId,
        index: u64,
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

/// Stripe bytes that came with the event being applied, for the action
/// that uses them.
enum Payload {
    None,
    /// Received, not yet verified: for [`Action::VerifyAndStore`].
    Received(StripeBuf),
    /// Verified and written: for [`Action::StripeDone`].
    Stored {
        data: Option<StripeBuf>,
        bytes: u64,
        hashed: bool,
    },
}

/// Whether the actions just carried out ended the stripe phase.
enum Flow {
    Continue,
    Complete,
}

pub(super) struct Downloader {
    net: Arc<dyn Network>,
    store: Arc<Store>,
    req: FetchRequest,
    tx: watch::Sender<Snapshot>,
    state: DownloadState,
    /// `Verifying` once every stripe is in (the policy's phase before).
    verifying: bool,
    ios: FuturesUnordered<BoxFuture<'static, Completion>>,
    hasher: Option<InOrderHasher>,
    /// Bytes of unverified stripes handed to the hasher and not yet answered.
    hasher_held: usize,
    /// What the policy was last told the hasher waits on.
    hasher_waiting: Option<u64>,
    /// Bytes written since the last early sync was started.
    unsynced: u64,
    syncing: bool,
}

impl Downloader {
    pub(super) fn new(
        net: Arc<dyn Network>,
        store: Arc<Store>,
        limits: Limits,
        req: FetchRequest,
        tx: watch::Sender<Snapshot>,
    ) -> Self {
        Self {
            net,
            store,
            state: DownloadState::new(req.clone(), limits, Instant::now()),
            req,
            tx,
            verifying: false,
            ios: FuturesUnordered::new(),
            hasher: None,
            hasher_held: 0,
            hasher_waiting: None,
            unsynced: 0,
            syncing: false,
        }
    }

    pub(super) fn publish(&self, outcome: Option<Result<(), FetchError>>) {
        let mut progress = self.state.progress(Instant::now());
        progress.phase = match &outcome {
            Some(Ok(())) => Phase::Done,
            Some(Err(_)) => Phase::Failed,
            None if self.verifying => Phase::Verifying,
            None => progress.phase,
        };
        progress.error = outcome
            .as_ref()
            .and_then(|o| o.as_ref().err())
            .map(|e| e.to_string());
        self.tx.send_replace(Snapshot { progress, outcome });
    }

    pub(super) async fn run(&mut self) -> Result<(), FetchError> {
        let sha = self.req.sha256;
        // Complete under any root: the whole file already matched its SHA-256.
        if self.store.has_complete(&sha) {
            if let Some((m, _)) = self.store.manifest(&sha) {
                let local_have = vec![true; m.count() as usize];
                // Only for the progress counts: there is nothing to do.
                let _ = self.state.apply(
                    Event::ManifestAdopted {
                        manifest: m,
                        local_have,
                    },
                    Instant::now(),
                );
            }
            if self.req.pin {
                self.store.set_pinned(&sha, true)?;
            }
            return Ok(());
        }
        let started = Instant::now();
        // A partial left from before (e.g. a restart) gives us the manifest
        // at once. One under another root stays until a manifest for this
        // root is verified, and is then replaced (`Store::begin_partial`).
        let mut first = VecDeque::new();
        if let Some((m, root)) = self.store.manifest(&sha) {
            if root == self.req.stripe_root
                && m.verify(&root, self.req.size, self.req.stripe_size).is_ok()
            {
                first.push_back(Action::AdoptManifest {
                    manifest: (*m).clone(),
                });
            }
        }
        first.extend(self.state.apply(Event::Start, Instant::now()));
        let mut flow = self.perform(first, Payload::None).await?;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while let Flow::Continue = flow {
            flow = tokio::select! {
                io = self.ios.next(), if !self.ios.is_empty() => match io {
                    Some(io) => self.complete(io).await?,
                    None => Flow::Continue,
                },
                _ = tick.tick() => {
                    let actions = self.state.apply(Event::Tick, Instant::now());
                    self.perform(actions.into(), Payload::None).await?
                }
            };
            if let (Flow::Continue, Some(event)) = (&flow, self.hasher_change()) {
                let actions = self.state.apply(event, Instant::now());
                flow = self.perform(actions.into(), Payload::None).await?;
            }
        }
        self.verifying = true;
        self.publish(None);
        let stripes_ms = started.elapsed().as_millis() as u64;
        let digest = match self.hasher.take() {
            Some(h) => {
                drop(h.tx);
                h.done.await.ok().flatten()
            }
            None => None,
        };
        let hashed_ms = started.elapsed().as_millis() as u64;
        let store = self.store.clone();
        let r = tokio::task::spawn_blocking(move || store.finish_partial_with(&sha, digest))
            .await
            .map_err(|e| FetchError::Store(e.to_string()))?;
        if let Err(e) = r {
            self.net.unprovide(sha).await;
            return Err(e.into());
        }
        self.net.provide(sha).await;
        let progress = self.state.progress(Instant::now());
        tracing::info!(
            sha256 = %hex::encode(sha),
            fetched = progress.stripes_fetched,
            resumed = progress.stripes_resumed,
            stripes_ms,
            hashed_ms,
            ms = started.elapsed().as_millis() as u64,
            "download complete"
        );
        Ok(())
    }

    /// Feeds a finished IO operation to the policy and carries out its answer.
    async fn complete(&mut self, io: Completion) -> Result<Flow, FetchError> {
        let now = Instant::now();
        let (event, payload) = match io {
            Completion::Synced(r) => {
                self.syncing = false;
                if let Err(e) = r {
                    // The sync that completes the download reports it for real.
                    tracing::debug!(%e, "early sync failed");
                }
                return Ok(Flow::Continue);
            }
            Completion::Providers(Err(NodeStopped)) => return Err(FetchError::Stopped),
            Completion::Providers(Ok(peers)) => {
                (Event::ProvidersFound(self.eligible(peers)), Payload::None)
            }
            Completion::Manifest { peer, res } => {
                let answer = match res {
                    Ok(Response::Manifest { manifest, have }) => ManifestAnswer::Manifest {
                        manifest,
                        have,
                        banned: self.net.is_banned(&peer),
                    },
                    Ok(Response::Error { code, reason }) => {
                        ManifestAnswer::Refused { code, reason }
                    }
                    Ok(Response::Stripe { .. }) => ManifestAnswer::WrongKind,
                    Err(RequestError::Stopped) => return Err(FetchError::Stopped),
                    Err(e) => ManifestAnswer::Failed(e),
                };
                (Event::ManifestAnswered { peer, answer }, Payload::None)
            }
            Completion::Stripe { peer, index, res } => {
                let (answer, payload) = match res {
                    Ok(Response::Stripe { index: got, data }) => (
                        StripeAnswer::Stripe {
                            index: got,
                            len: data.len(),
                        },
                        Payload::Received(data),
                    ),
                    Ok(Response::Error { code, reason }) => {
                        (StripeAnswer::Refused { code, reason }, Payload::None)
                    }
                    Ok(Response::Manifest { .. }) => (StripeAnswer::WrongKind, Payload::None),
                    Err(RequestError::Stopped) => return Err(FetchError::Stopped),
                    Err(e) => (StripeAnswer::Failed(e), Payload::None),
                };
                let event = Event::StripeAnswered {
                    peer,
                    index,
                    answer,
                };
                (event, payload)
            }
            Completion::Stored {
                peer,
                index,
                bytes,
                res,
                data,
                hashed,
            } => {
                if hashed {
                    self.hasher_held -= bytes as usize;
                }
                match res {
                    Ok(_) => (
                        Event::StripeStored { peer, index, bytes },
                        Payload::Stored {
                            data,
                            bytes,
                            hashed,
                        },
                    ),
                    Err(StoreError::BadStripe { .. }) => {
                        (Event::StripeBad { peer, index }, Payload::None)
                    }
                    Err(e @ StoreError::GeometryMismatch { .. }) => {
                        let error = e.to_string();
                        (Event::StripeGeometryFalse { index, error }, Payload::None)
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let actions = self.state.apply(event, now);
        self.perform(actions.into(), payload).await
    }

    /// Carries out the policy's actions in order, with the follow-up
    /// actions of events they report at once.
    async fn perform(
        &mut self,
        mut actions: VecDeque<Action>,
        mut payload: Payload,
    ) -> Result<Flow, FetchError> {
        while let Some(action) = actions.pop_front() {
            match action {
                Action::LookUpProviders => {
                    let net = self.net.clone();
                    let key = self.req.sha256;
                    self.ios.push(
                        async move { Completion::Providers(net.find_providers(key).await) }.boxed(),
                    );
                }
                Action::OfferConnectedPeers => {
                    let peers = self.eligible(self.net.connected_peers());
                    let event = Event::ConnectedPeers(peers);
                    actions.extend(self.state.apply(event, Instant::now()));
                }
                Action::RequestManifest { peer } => {
                    let net = self.net.clone();
                    let sha256 = self.req.sha256;
                    self.ios.push(
                        async move {
                            let res = net.request(peer, Request::Manifest { sha256 }).await;
                            Completion::Manifest { peer, res }
                        }
                        .boxed(),
                    );
                }
                Action::AdoptManifest { manifest } => {
                    let event = self.adopt_manifest(manifest).await?;
                    actions.extend(self.state.apply(event, Instant::now()));
                }
                Action::RequestStripe { peer, index } => {
                    let net = self.net.clone();
                    let sha256 = self.req.sha256;
                    self.ios.push(
                        async move {
                            let res = net.request(peer, Request::Stripe { sha256, index }).await;
                            Completion::Stripe { peer, index, res }
                        }
                        .boxed(),
                    );
                }
                Action::VerifyAndStore { peer, index } => {
                    if let Payload::Received(data) = std::mem::replace(&mut payload, Payload::None)
                    {
                        self.verify_and_store(peer, index, data).await;
                    }
                }
                Action::StripeDone { index } => {
                    if let Payload::Stored {
                        data,
                        bytes,
                        hashed,
                    } = std::mem::replace(&mut payload, Payload::None)
                    {
                        self.stripe_done(index, data, bytes, hashed).await;
                    }
                }
                Action::Penalise { peer, reason } => self.net.penalise(peer, reason),
                Action::DropPartial => {
                    self.net.unprovide(self.req.sha256).await;
                    self.store.remove(&self.req.sha256);
                }
                Action::PublishProgress => self.publish(None),
                Action::Complete => return Ok(Flow::Complete),
                Action::Failed(e) => return Err(e),
            }
        }
        Ok(Flow::Continue)
    }

    /// The hasher's state for the policy when it changed: the stripe it
    /// waits on while it holds [`HASHER_BLOCKED_BYTES`] or more of later ones.
    fn hasher_change(&mut self) -> Option<Event> {
        let waiting = match &self.hasher {
            Some(h) if self.hasher_held >= HASHER_BLOCKED_BYTES => {
                Some(h.next.load(Ordering::Relaxed))
            }
            _ => None,
        };
        if waiting == self.hasher_waiting {
            return None;
        }
        self.hasher_waiting = waiting;
        Some(Event::HasherWaiting {
            waiting_on: waiting,
        })
    }

    /// Peers worth offering to the policy: not this node, not banned.
    fn eligible(&self, peers: impl IntoIterator<Item = PeerId>) -> Vec<PeerId> {
        let me = self.net.local_peer_id();
        peers
            .into_iter()
            .filter(|p| *p != me && !self.net.is_banned(p))
            .collect()
    }

    /// Opens the partial for a verified manifest and starts the hasher
    /// over the stripes already on disk.
    async fn adopt_manifest(&mut self, m: Manifest) -> Result<Event, FetchError> {
        let store = self.store.clone();
        let (sha, root, pin) = (self.req.sha256, self.req.stripe_root, self.req.pin);
        let m = Arc::new(m);
        let for_store = (*m).clone();
        let (begin, evicted) =
            tokio::task::spawn_blocking(move || store.begin_partial(sha, root, for_store, pin))
                .await
                .map_err(|e| FetchError::Store(e.to_string()))??;
        for e in evicted {
            self.net.unprovide(e).await;
        }
        let n = m.count() as usize;
        let local_have = match begin {
            Begin::Complete => vec![true; n],
            Begin::Partial { .. } => self.store.have(&sha).unwrap_or_else(|| vec![false; n]),
        };
        let hasher = InOrderHasher::start(self.store.clone(), sha, m.clone());
        for (i, _) in local_have.iter().enumerate().filter(|(_, h)| **h) {
            let _ = hasher
                .tx
                .send(ToHasher::Verified {
                    index: i as u64,
                    data: None,
                })
                .await;
        }
        self.hasher = Some(hasher);
        // Serve what we have (and will have) while downloading.
        self.net.provide(sha).await;
        Ok(Event::ManifestAdopted {
            manifest: m,
            local_have,
        })
    }

    /// A newly complete stripe feeds the whole-file digest (unless the
    /// hasher verified it) and counts toward the next early sync.
    async fn stripe_done(&mut self, index: u64, data: Option<StripeBuf>, bytes: u64, hashed: bool) {
        if !hashed {
            if let Some(h) = &self.hasher {
                let _ = h.tx.send(ToHasher::Verified { index, data }).await;
            }
        }
        // Direct writes are on the device already; only page-cache writes
        // want the early writeback.
        if !self.store.writes_direct(&self.req.sha256) {
            self.unsynced += bytes;
            self.maybe_sync();
        }
    }

    /// Starts an early `fdatasync` of the partial once enough is written.
    fn maybe_sync(&mut self) {
        if self.syncing || self.unsynced < SYNC_EVERY {
            return;
        }
        self.syncing = true;
        self.unsynced = 0;
        let store = self.store.clone();
        let sha = self.req.sha256;
        self.ios.push(
            async move {
                let r = tokio::task::spawn_blocking(move || store.sync_partial(&sha))
                    .await
                    .unwrap_or(Ok(()));
                Completion::Synced(r)
            }
            .boxed(),
        );
    }

    /// Verifies a received stripe and writes it: in the in-order hasher
    /// while it has room (one pass for both digests), otherwise alone on a
    /// blocking thread. Either way a [`Completion::Stored`] follows.
    async fn verify_and_store(&mut self, peer: PeerId, index: u64, data: StripeBuf) {
        let store = self.store.clone();
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
            Completion::Stored {
                peer,
                index,
                bytes,
                res,
                data,
                hashed,
            }
        };
        self.ios.push(fut.boxed());
    }
}
