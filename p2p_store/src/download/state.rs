//! The download policy as a state machine without IO.
//!
//! [`DownloadState::apply`] takes one [`Event`] (an answer from a peer, a
//! stripe written or refused by verification, a tick) with the current time
//! as an input, and returns the [`Action`]s the driver
//! ([`super::driver`]) is to carry out: ask a peer for the manifest or a
//! stripe, verify and store a received stripe, penalise a peer, publish
//! progress, finish or fail. It never touches the network, the disk or the
//! clock, so every rule (peer scoring, endgame, overdue and head-of-line
//! duplication, penalties, stall detection) is tested here with time driven
//! by the test.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::{FetchError, FetchRequest, Phase, Progress};
use crate::manifest::Manifest;
use crate::protocol::{ErrorCode, RequestError};

/// At most this many peers serve one download at a time.
pub const MAX_ACTIVE_PEERS: usize = 16;
/// Manifest requests in flight at once.
const MAX_MANIFEST_REQUESTS: usize = 8;
/// How long a download keeps looking for a manifest matching its root once
/// a provider showed one that does not.
pub const MANIFEST_GRACE: Duration = Duration::from_secs(15);
/// Requests to one stripe at once in the endgame.
const MAX_DUPLICATES: usize = 2;
/// Failures after which a peer leaves the pool.
const MAX_PEER_FAILURES: u32 = 3;
/// A peer is not asked for the manifest again sooner than this.
const MANIFEST_REASK: Duration = Duration::from_secs(5);
/// A peer that answered the manifest request `Busy` is asked again after this.
const MANIFEST_REASK_BUSY: Duration = Duration::from_millis(500);
/// A peer still downloading itself is asked for a fresh have-bitmap at most this often.
const BITMAP_REFRESH: Duration = Duration::from_millis(900);
/// A peer that answered a stripe request `Busy` gets no request for this long.
const BUSY_BACKOFF: Duration = Duration::from_millis(200);
/// Discovery runs this often while peers serve, and faster while none does.
const DISCOVERY_EVERY: Duration = Duration::from_secs(3);
const DISCOVERY_EVERY_ALONE: Duration = Duration::from_secs(1);
/// A stripe's only request is overdue after this many times the usual
/// latency, and never before [`OVERDUE_MIN`].
const OVERDUE_LATENCIES: f64 = 4.0;
const OVERDUE_MIN: Duration = Duration::from_secs(2);
/// Assumed stripe latency, seconds, before one was measured.
const DEFAULT_LATENCY_SECS: f64 = 0.5;
/// While the in-order hasher is blocked ([`Event::HasherWaiting`]), the
/// stripe it waits on is late once its only request has taken this many
/// times its peer's usual latency ([`DEFAULT_LATENCY_SECS`] until measured),
/// and never before [`HEAD_LATE_MIN`].
const HEAD_LATE_LATENCIES: f64 = 2.0;
const HEAD_LATE_MIN: Duration = Duration::from_millis(200);

/// Bounds and timeouts of one download.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Stripe requests in flight per peer.
    pub(crate) inflight_per_peer: usize,
    /// No stripe written (or no manifest found) for this long fails the download.
    pub(crate) stall_timeout: Duration,
    /// See [`MANIFEST_GRACE`].
    pub(crate) manifest_grace: Duration,
}

/// What happened, as the driver tells the policy.
#[derive(Debug)]
pub(crate) enum Event {
    /// The download begins: look for providers.
    Start,
    /// A provider lookup ended with these peers (the node itself and
    /// banned peers already left out by the driver).
    ProvidersFound(Vec<PeerId>),
    /// The peers connected now, filtered like [`Event::ProvidersFound`].
    ConnectedPeers(Vec<PeerId>),
    ManifestAnswered {
        peer: PeerId,
        answer: ManifestAnswer,
    },
    /// The driver opened the partial for the manifest of
    /// [`Action::AdoptManifest`] (or for one found on disk at start);
    /// `local_have` tells which stripes are already verified on disk.
    ManifestAdopted {
        manifest: Arc<Manifest>,
        local_have: Vec<bool>,
    },
    StripeAnswered {
        peer: PeerId,
        index: u64,
        answer: StripeAnswer,
    },
    /// Stripe `index` from `peer` matched its digest and is written.
    StripeStored {
        peer: PeerId,
        index: u64,
        bytes: u64,
    },
    /// Stripe `index` from `peer` did not match its digest.
    StripeBad { peer: PeerId, index: u64 },
    /// Stripe `index` matched its digest at a length the manifest's
    /// geometry contradicts: the adopted manifest lied.
    StripeGeometryFalse { index: u64, error: String },
    /// The in-order hasher's window of later stripes is nearly full while
    /// it waits for stripe `waiting_on` (`Some`), or no longer is (`None`).
    /// The driver reports changes only.
    HasherWaiting { waiting_on: Option<u64> },
    /// Time passed (the driver ticks every 500 ms).
    Tick,
}

/// A peer's answer to a manifest request.
#[derive(Debug)]
pub(crate) enum ManifestAnswer {
    Manifest {
        manifest: Manifest,
        have: Vec<bool>,
        /// The node bans this peer (for bad data sent to any download).
        banned: bool,
    },
    Refused {
        code: ErrorCode,
        reason: String,
    },
    /// A stripe frame answered a manifest request.
    WrongKind,
    Failed(RequestError),
}

/// A peer's answer to a stripe request. The bytes stay with the driver.
#[derive(Debug)]
pub(crate) enum StripeAnswer {
    Stripe {
        /// The index the peer says it sent.
        index: u64,
        len: usize,
    },
    Refused {
        code: ErrorCode,
        reason: String,
    },
    /// A manifest frame answered a stripe request.
    WrongKind,
    Failed(RequestError),
}

/// What the driver is to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Start a provider lookup; its end comes back as [`Event::ProvidersFound`].
    LookUpProviders,
    /// Report the connected peers as [`Event::ConnectedPeers`].
    OfferConnectedPeers,
    RequestManifest {
        peer: PeerId,
    },
    /// Open the partial for this verified manifest, then report
    /// [`Event::ManifestAdopted`] before any other event.
    AdoptManifest {
        manifest: Manifest,
    },
    RequestStripe {
        peer: PeerId,
        index: u64,
    },
    /// Verify the stripe just received and write it if it matches; the
    /// verdict comes back as [`Event::StripeStored`] or [`Event::StripeBad`].
    VerifyAndStore {
        peer: PeerId,
        index: u64,
    },
    /// Stripe `index` is newly complete (for the whole-file digest and the
    /// early sync).
    StripeDone {
        index: u64,
    },
    /// Ban and disconnect the peer (it sent provably bad data).
    Penalise {
        peer: PeerId,
        reason: &'static str,
    },
    /// The adopted manifest lied: withdraw and remove the partial.
    DropPartial,
    PublishProgress,
    /// Every stripe is verified and written.
    Complete,
    Failed(FetchError),
}

#[derive(Debug)]
struct PeerState {
    inflight: usize,
    /// EWMA of bytes/s per request; `None` until the first stripe.
    rate: Option<f64>,
    /// Stripes this peer sent in answer to a request.
    answered: usize,
    /// EWMA of this peer's stripe request latency, seconds, left out its
    /// first `inflight_per_peer` answers (they came while its queue filled,
    /// faster than it serves once it is full).
    latency: Option<f64>,
    fails: u32,
    busy_until: Option<Instant>,
    have: Vec<bool>,
    nothave: HashSet<u64>,
}

impl PeerState {
    fn new(have: Vec<bool>) -> Self {
        Self {
            inflight: 0,
            rate: None,
            answered: 0,
            latency: None,
            fails: 0,
            busy_until: None,
            have,
            nothave: HashSet::new(),
        }
    }

    fn can_serve(&self, i: u64) -> bool {
        self.have.get(i as usize).copied().unwrap_or(false) && !self.nothave.contains(&i)
    }
}

#[derive(Debug, Default, Clone)]
struct StripeState {
    done: bool,
    verifying: bool,
    /// Outstanding requests: who was asked, and when.
    requests: Vec<(PeerId, Instant)>,
}

impl StripeState {
    fn open(&self) -> bool {
        !self.done && !self.verifying
    }

    fn duplicable_on(&self, peer: &PeerId) -> bool {
        self.open()
            && self.requests.len() < MAX_DUPLICATES
            && !self.requests.iter().any(|(p, _)| p == peer)
    }
}

/// The policy of one download; see the module documentation.
#[derive(Debug)]
pub(crate) struct DownloadState {
    req: FetchRequest,
    limits: Limits,
    started: Instant,
    phase: Phase,
    /// `Complete` or `Failed` was returned: later events are ignored.
    finished: bool,

    providers_inflight: bool,
    last_discovery: Option<Instant>,
    /// When each peer was last asked for the manifest.
    asked: HashMap<PeerId, Instant>,
    manifest_inflight: usize,
    manifest_tried: usize,
    last_manifest_error: String,
    /// When a provider first showed a manifest that does not verify
    /// against the requested root.
    first_rejected: Option<Instant>,
    /// The peer whose manifest is being adopted, with its bitmap and ban.
    adopting: Option<(PeerId, Vec<bool>, bool)>,

    manifest: Option<Arc<Manifest>>,
    /// The peer whose manifest was adopted.
    manifest_from: Option<PeerId>,
    stripes: Vec<StripeState>,
    /// Stripes neither done, verifying nor requested.
    missing: BTreeSet<u64>,
    /// Stripes whose only request is long overdue (a peer that froze
    /// without closing its connection): duplicated on other peers.
    overdue: BTreeSet<u64>,
    /// The stripe the in-order hasher waits on while its window is nearly
    /// full (see [`Event::HasherWaiting`]).
    hasher_waiting: Option<u64>,
    /// That stripe and the other outstanding stripes of its peer, once it
    /// is late there: duplicated on other peers before anything else.
    head_late: BTreeSet<u64>,
    peers: HashMap<PeerId, PeerState>,
    /// EWMA of stripe request latency, seconds.
    latency: Option<f64>,
    last_progress: Instant,

    done: u64,
    resumed: u64,
    fetched: u64,
    bytes: u64,
    per_peer: BTreeMap<String, u64>,
    bad_peers: Vec<String>,
}

impl DownloadState {
    pub(crate) fn new(req: FetchRequest, limits: Limits, now: Instant) -> Self {
        Self {
            req,
            limits,
            started: now,
            phase: Phase::Discovering,
            finished: false,
            providers_inflight: false,
            last_discovery: None,
            asked: HashMap::new(),
            manifest_inflight: 0,
            manifest_tried: 0,
            last_manifest_error: String::from("no answer"),
            first_rejected: None,
            adopting: None,
            manifest: None,
            manifest_from: None,
            stripes: Vec::new(),
            missing: BTreeSet::new(),
            overdue: BTreeSet::new(),
            hasher_waiting: None,
            head_late: BTreeSet::new(),
            peers: HashMap::new(),
            latency: None,
            last_progress: now,
            done: 0,
            resumed: 0,
            fetched: 0,
            bytes: 0,
            per_peer: BTreeMap::new(),
            bad_peers: Vec::new(),
        }
    }

    /// Progress as of `now` (phase as the policy sees it, no error).
    pub(crate) fn progress(&self, now: Instant) -> Progress {
        let m = self.manifest.as_deref();
        Progress {
            sha256: hex::encode(self.req.sha256),
            stripe_root: hex::encode(self.req.stripe_root),
            phase: self.phase,
            error: None,
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
            elapsed_ms: now.saturating_duration_since(self.started).as_millis() as u64,
        }
    }

    /// Applies one event at time `now`; returns what to do, in order.
    pub(crate) fn apply(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        match event {
            Event::Start => self.discover(now, &mut out),
            Event::ProvidersFound(peers) => {
                self.providers_inflight = false;
                self.offer_candidates(peers, now, &mut out);
            }
            Event::ConnectedPeers(peers) => self.offer_candidates(peers, now, &mut out),
            Event::ManifestAnswered { peer, answer } => {
                self.on_manifest(peer, answer, now, &mut out)
            }
            Event::ManifestAdopted {
                manifest,
                local_have,
            } => self.on_adopted(manifest, local_have, now, &mut out),
            Event::StripeAnswered {
                peer,
                index,
                answer,
            } => self.on_stripe(peer, index, answer, now, &mut out),
            Event::StripeStored { peer, index, bytes } => {
                if let Some(s) = self.stripes.get_mut(index as usize) {
                    s.verifying = false;
                    if !s.done {
                        s.done = true;
                        self.done += 1;
                        self.fetched += 1;
                        self.bytes += bytes;
                        *self.per_peer.entry(peer.to_string()).or_default() += 1;
                        self.last_progress = now;
                        out.push(Action::StripeDone { index });
                    }
                }
                out.push(Action::PublishProgress);
                self.refresh(index);
            }
            Event::StripeBad { peer, index } => {
                if let Some(s) = self.stripes.get_mut(index as usize) {
                    s.verifying = false;
                }
                self.penalise(peer, "stripe failed verification", &mut out);
                self.refresh(index);
            }
            Event::StripeGeometryFalse { index, error } => {
                if let Some(s) = self.stripes.get_mut(index as usize) {
                    s.verifying = false;
                }
                // The accepted manifest carried a false size or stripe
                // size: drop the partial, penalise its source, fail rather
                // than blame the honest senders of stripes.
                if let Some(src) = self.manifest_from {
                    self.penalise(src, "manifest with false geometry", &mut out);
                }
                out.push(Action::DropPartial);
                let tried = self.manifest_tried;
                self.fail(FetchError::NoValidManifest { tried, last: error }, &mut out);
            }
            Event::HasherWaiting { waiting_on } => self.hasher_waiting = waiting_on,
            Event::Tick => self.on_tick(now, &mut out),
        }
        if self.finished {
            return out;
        }
        if self
            .manifest
            .as_ref()
            .is_some_and(|m| self.done == m.count())
        {
            self.finished = true;
            out.push(Action::Complete);
            return out;
        }
        self.find_late_head(now);
        self.schedule(now, &mut out);
        out
    }

    fn fail(&mut self, error: FetchError, out: &mut Vec<Action>) {
        self.finished = true;
        out.push(Action::Failed(error));
    }

    /// Asks for providers and offers the manifest request to connected peers.
    fn discover(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.last_discovery = Some(now);
        if !self.providers_inflight {
            self.providers_inflight = true;
            out.push(Action::LookUpProviders);
        }
        out.push(Action::OfferConnectedPeers);
    }

    fn offer_candidates(&mut self, peers: Vec<PeerId>, now: Instant, out: &mut Vec<Action>) {
        for p in peers {
            if self.peers.contains_key(&p)
                || self.manifest_inflight >= MAX_MANIFEST_REQUESTS
                || self.peers.len() >= MAX_ACTIVE_PEERS
            {
                continue;
            }
            if self
                .asked
                .get(&p)
                .is_some_and(|t| now.saturating_duration_since(*t) < MANIFEST_REASK)
            {
                continue;
            }
            self.ask_manifest(p, now, out);
        }
    }

    fn ask_manifest(&mut self, peer: PeerId, now: Instant, out: &mut Vec<Action>) {
        self.asked.insert(peer, now);
        self.manifest_inflight += 1;
        if self.phase == Phase::Discovering {
            self.phase = Phase::Manifest;
        }
        out.push(Action::RequestManifest { peer });
    }

    fn on_manifest(
        &mut self,
        peer: PeerId,
        answer: ManifestAnswer,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.manifest_inflight = self.manifest_inflight.saturating_sub(1);
        self.manifest_tried += 1;
        match answer {
            ManifestAnswer::Manifest {
                manifest,
                have,
                banned,
            } => {
                if self.adopting.is_some() {
                    // The driver reports the adoption before any other
                    // event; should one slip in, the peer is asked again later.
                    return;
                }
                let verdict = match &self.manifest {
                    Some(known) if **known == manifest => Ok(()),
                    Some(_) => Err("manifest differs from the verified one".to_string()),
                    None => manifest
                        .verify(&self.req.stripe_root, self.req.size, self.req.stripe_size)
                        .map_err(|e| e.to_string()),
                };
                match verdict {
                    Ok(()) if self.manifest.is_none() => {
                        self.adopting = Some((peer, have, banned));
                        out.push(Action::AdoptManifest { manifest });
                    }
                    Ok(()) => self.peer_offers(peer, have, banned, out),
                    Err(reason) => {
                        // Not provably malicious (the requested root may be
                        // wrong): this peer just does not serve this download.
                        tracing::debug!(%peer, reason, "manifest rejected");
                        self.last_manifest_error = format!("{peer}: {reason}");
                        self.first_rejected.get_or_insert(now);
                        self.drop_peer(peer);
                    }
                }
            }
            ManifestAnswer::Refused { code, reason } => {
                self.last_manifest_error = format!("{peer}: {code:?} {reason}");
                if code == ErrorCode::Busy {
                    // Ask again soon rather than after the usual wait.
                    if let Some(t) = now.checked_sub(MANIFEST_REASK - MANIFEST_REASK_BUSY) {
                        self.asked.insert(peer, t);
                    }
                }
            }
            ManifestAnswer::WrongKind => {
                self.penalise(peer, "stripe sent for a manifest request", out);
            }
            ManifestAnswer::Failed(e) => {
                self.last_manifest_error = format!("{peer}: {e}");
            }
        }
    }

    /// A peer showed the adopted manifest with its have-bitmap: it joins
    /// the pool, or its bitmap is refreshed if it is in already.
    fn peer_offers(&mut self, peer: PeerId, have: Vec<bool>, banned: bool, out: &mut Vec<Action>) {
        let count = self.manifest.as_ref().map_or(0, |m| m.count());
        if have.len() as u64 != count {
            return;
        }
        if let Some(ps) = self.peers.get_mut(&peer) {
            ps.have = have;
            ps.nothave.clear();
        } else if self.peers.len() < MAX_ACTIVE_PEERS && !banned {
            self.peers.insert(peer, PeerState::new(have));
            out.push(Action::PublishProgress);
        }
    }

    fn on_adopted(
        &mut self,
        manifest: Arc<Manifest>,
        local_have: Vec<bool>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let count = manifest.count();
        let local_have = if local_have.len() as u64 == count {
            local_have
        } else {
            vec![false; count as usize]
        };
        self.stripes = local_have
            .iter()
            .map(|h| StripeState {
                done: *h,
                ..Default::default()
            })
            .collect();
        self.done = local_have.iter().filter(|h| **h).count() as u64;
        self.resumed = self.done;
        self.missing = (0..count).filter(|i| !local_have[*i as usize]).collect();
        self.manifest = Some(manifest);
        self.phase = Phase::Stripes;
        self.last_progress = now;
        out.push(Action::PublishProgress);
        if let Some((peer, have, banned)) = self.adopting.take() {
            self.manifest_from = Some(peer);
            self.peer_offers(peer, have, banned, out);
        }
    }

    fn on_stripe(
        &mut self,
        peer: PeerId,
        index: u64,
        answer: StripeAnswer,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let sent = self.answered(peer, index);
        let known = self.peers.contains_key(&peer);
        match answer {
            // From a dropped peer: discarded unseen.
            StripeAnswer::Stripe { .. } if !known => {}
            StripeAnswer::Stripe { index: got, .. } if got != index => {
                self.penalise(peer, "stripe index differs from the request", out);
            }
            StripeAnswer::Stripe { len, .. } => {
                if let Some(sent) = sent {
                    let el = now.saturating_duration_since(sent).as_secs_f64().max(1e-6);
                    let rate = len as f64 / el;
                    self.latency = Some(self.latency.map_or(el, |l| 0.8 * l + 0.2 * el));
                    if let Some(ps) = self.peers.get_mut(&peer) {
                        ps.rate = Some(ps.rate.map_or(rate, |old| 0.7 * old + 0.3 * rate));
                        ps.answered += 1;
                        if ps.answered > self.limits.inflight_per_peer {
                            ps.latency = Some(ps.latency.map_or(el, |l| 0.8 * l + 0.2 * el));
                        }
                    }
                }
                if let Some(ps) = self.peers.get_mut(&peer) {
                    ps.fails = 0;
                }
                if let Some(s) = self.stripes.get_mut(index as usize) {
                    if s.open() {
                        s.verifying = true;
                        out.push(Action::VerifyAndStore { peer, index });
                    }
                }
            }
            StripeAnswer::Refused { code, reason } => {
                tracing::debug!(%peer, index, ?code, reason, "stripe refused");
                match code {
                    ErrorCode::NotHave => {
                        if let Some(ps) = self.peers.get_mut(&peer) {
                            ps.nothave.insert(index);
                        }
                    }
                    ErrorCode::Busy => {
                        if let Some(ps) = self.peers.get_mut(&peer) {
                            ps.busy_until = Some(now + BUSY_BACKOFF);
                        }
                    }
                    ErrorCode::NotFound => self.drop_peer(peer),
                    ErrorCode::BadRequest | ErrorCode::Internal => self.peer_failed(peer, false),
                }
            }
            StripeAnswer::WrongKind => {
                self.penalise(peer, "manifest sent for a stripe request", out);
            }
            StripeAnswer::Failed(e) => {
                tracing::debug!(%peer, index, %e, "stripe request failed");
                // The peer is gone (or never spoke the protocol): no retry.
                let vanished = matches!(
                    e,
                    RequestError::ConnectionClosed
                        | RequestError::Dial
                        | RequestError::Unsupported
                        | RequestError::Stopped
                );
                self.peer_failed(peer, vanished);
            }
        }
        self.refresh(index);
    }

    fn on_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        let stall = self.limits.stall_timeout;
        // Providers answer with the layout they hold; when they show one
        // that does not match, the requested root is likely one nobody
        // serves (a bogus or unusual attested layout), and a caller with
        // other layouts to try should not wait the whole stall timeout.
        if self.manifest.is_none()
            && self.first_rejected.is_some_and(|t| {
                now.saturating_duration_since(t) >= self.limits.manifest_grace.min(stall)
            })
        {
            let error = FetchError::NoValidManifest {
                tried: self.manifest_tried,
                last: self.last_manifest_error.clone(),
            };
            return self.fail(error, out);
        }
        if now.saturating_duration_since(self.last_progress) >= stall {
            let error = self.stall_error();
            return self.fail(error, out);
        }
        self.refresh_partial_peers(now, out);
        self.find_overdue(now);
        let every = if self.peers.is_empty() {
            DISCOVERY_EVERY_ALONE
        } else {
            DISCOVERY_EVERY
        };
        let due = self
            .last_discovery
            .is_none_or(|t| now.saturating_duration_since(t) >= every);
        if due && self.peers.len() < MAX_ACTIVE_PEERS {
            self.discover(now, out);
        }
    }

    /// Why nothing happened for the stall timeout, by how far the download got.
    fn stall_error(&self) -> FetchError {
        let secs = self.limits.stall_timeout.as_secs();
        let Some(m) = &self.manifest else {
            if self.manifest_tried == 0 {
                return FetchError::NoProviders {
                    sha256: hex::encode(self.req.sha256),
                    waited_secs: secs,
                };
            }
            return FetchError::NoValidManifest {
                tried: self.manifest_tried,
                last: self.last_manifest_error.clone(),
            };
        };
        let missing = m.count() - self.done;
        if self.peers.is_empty() && !self.bad_peers.is_empty() {
            let penalised: HashSet<&String> = self.bad_peers.iter().collect();
            return FetchError::NoHonestPeer {
                missing,
                penalised: penalised.len(),
                secs,
            };
        }
        FetchError::Stalled { missing, secs }
    }

    /// Marks stripes whose single outstanding request has taken far longer
    /// than requests usually take, and demotes the peer holding them.
    fn find_overdue(&mut self, now: Instant) {
        let Some(m) = &self.manifest else {
            return;
        };
        let limit = Duration::from_secs_f64(
            OVERDUE_LATENCIES * self.latency.unwrap_or(DEFAULT_LATENCY_SECS),
        )
        .max(OVERDUE_MIN);
        self.overdue.clear();
        let mut slow = Vec::new();
        for (i, s) in self.stripes.iter().enumerate() {
            let [(peer, sent)] = s.requests.as_slice() else {
                continue;
            };
            if !s.open() {
                continue;
            }
            let el = now.saturating_duration_since(*sent);
            if el > limit {
                self.overdue.insert(i as u64);
                slow.push((*peer, m.stripe_len(i as u64) as f64 / el.as_secs_f64()));
            }
        }
        for (peer, rate) in slow {
            if let Some(ps) = self.peers.get_mut(&peer) {
                ps.rate = Some(ps.rate.map_or(rate, |old| old.min(rate)));
            }
        }
    }

    /// While the hasher is blocked on a stripe whose only request has taken
    /// far longer than its peer usually takes, marks that stripe and the
    /// peer's other outstanding ones (asked after it, they wait behind it)
    /// for duplication, and demotes the peer.
    fn find_late_head(&mut self, now: Instant) {
        let stripes = &self.stripes;
        self.head_late.retain(|i| {
            stripes
                .get(*i as usize)
                .is_some_and(|s| s.open() && s.requests.len() == 1)
        });
        let (Some(m), Some(head)) = (&self.manifest, self.hasher_waiting) else {
            return;
        };
        if self.head_late.contains(&head) {
            return;
        }
        let Some(s) = self.stripes.get(head as usize).filter(|s| s.open()) else {
            return;
        };
        let [(peer, sent)] = s.requests.as_slice() else {
            return;
        };
        let peer = *peer;
        let usual = self
            .peers
            .get(&peer)
            .and_then(|p| p.latency)
            .unwrap_or(DEFAULT_LATENCY_SECS);
        let limit = Duration::from_secs_f64(HEAD_LATE_LATENCIES * usual).max(HEAD_LATE_MIN);
        let el = now.saturating_duration_since(*sent);
        if el <= limit {
            return;
        }
        tracing::debug!(%peer, head, ms = el.as_millis() as u64, "hasher blocked on a late stripe");
        for (i, s) in self.stripes.iter().enumerate() {
            if s.open() && matches!(s.requests.as_slice(), [(p, _)] if *p == peer) {
                self.head_late.insert(i as u64);
            }
        }
        let rate = m.stripe_len(head) as f64 / el.as_secs_f64();
        if let Some(ps) = self.peers.get_mut(&peer) {
            ps.rate = Some(ps.rate.map_or(rate, |old| old.min(rate)));
        }
    }

    /// Re-asks peers that are themselves still downloading for their
    /// have-bitmap when some missing stripe has no peer that can serve it.
    fn refresh_partial_peers(&mut self, now: Instant, out: &mut Vec<Action>) {
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
                    .is_none_or(|t| now.saturating_duration_since(*t) >= BITMAP_REFRESH)
            })
            .collect();
        for peer in partial {
            self.ask_manifest(peer, now, out);
        }
    }

    fn penalise(&mut self, peer: PeerId, reason: &'static str, out: &mut Vec<Action>) {
        out.push(Action::Penalise { peer, reason });
        self.bad_peers.push(peer.to_string());
        self.drop_peer(peer);
    }

    fn drop_peer(&mut self, peer: PeerId) {
        if self.peers.remove(&peer).is_none() {
            return;
        }
        for i in 0..self.stripes.len() {
            let s = &mut self.stripes[i];
            if let Some(pos) = s.requests.iter().position(|(p, _)| *p == peer) {
                s.requests.swap_remove(pos);
                self.refresh(i as u64);
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

    /// Puts stripe `i` back among the missing if nothing covers it any more.
    fn refresh(&mut self, i: u64) {
        if let Some(s) = self.stripes.get(i as usize) {
            if s.open() && s.requests.is_empty() {
                self.missing.insert(i);
            } else {
                self.missing.remove(&i);
            }
        }
    }

    /// Removes `peer`'s request for `index` after its answer; returns when
    /// it was sent.
    fn answered(&mut self, peer: PeerId, index: u64) -> Option<Instant> {
        if let Some(ps) = self.peers.get_mut(&peer) {
            ps.inflight = ps.inflight.saturating_sub(1);
        }
        let s = self.stripes.get_mut(index as usize)?;
        let pos = s.requests.iter().position(|(p, _)| *p == peer)?;
        Some(s.requests.swap_remove(pos).1)
    }

    /// Fills every free request slot: faster peers choose first, each takes
    /// a late stripe that blocks the hasher, else a missing stripe it has,
    /// else an overdue one, else (endgame, nothing missing) duplicates an
    /// outstanding one.
    fn schedule(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.manifest.is_none() {
            return;
        }
        let max = self.limits.inflight_per_peer.max(1);
        // Peers not yet measured are tried early.
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
                let duplicable = |i: &u64| {
                    self.stripes
                        .get(*i as usize)
                        .is_some_and(|s| s.duplicable_on(peer))
                        && ps.can_serve(*i)
                };
                let pick = self
                    .head_late
                    .iter()
                    .copied()
                    .find(duplicable)
                    .or_else(|| self.missing.iter().copied().find(|i| ps.can_serve(*i)))
                    .or_else(|| {
                        // Overdue stripes go to another peer at once.
                        self.overdue.iter().copied().find(duplicable)
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
                                !s.requests.is_empty()
                                    && s.duplicable_on(peer)
                                    && ps.can_serve(*i as u64)
                            })
                            .map(|(i, _)| i as u64)
                    });
                let Some(index) = pick else {
                    continue;
                };
                self.request_stripe(*peer, index, now, out);
                sent_any = true;
            }
            if !sent_any {
                break;
            }
        }
    }

    fn request_stripe(&mut self, peer: PeerId, index: u64, now: Instant, out: &mut Vec<Action>) {
        if let Some(ps) = self.peers.get_mut(&peer) {
            ps.inflight += 1;
        }
        if let Some(s) = self.stripes.get_mut(index as usize) {
            s.requests.push((peer, now));
        }
        self.missing.remove(&index);
        self.overdue.remove(&index);
        self.head_late.remove(&index);
        out.push(Action::RequestStripe { peer, index });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::manifest::ManifestBuilder;
    use std::collections::VecDeque;

    const STRIPE: u32 = 4096;

    fn manifest(stripes: u64) -> Manifest {
        let mut b = ManifestBuilder::new(STRIPE).unwrap();
        b.update(&vec![7u8; (stripes * u64::from(STRIPE)) as usize]);
        b.finish().unwrap().1
    }

    fn limits(inflight_per_peer: usize) -> Limits {
        Limits {
            inflight_per_peer,
            stall_timeout: Duration::from_secs(60),
            manifest_grace: MANIFEST_GRACE,
        }
    }

    fn request_for(m: &Manifest) -> FetchRequest {
        FetchRequest {
            sha256: [1; 32],
            stripe_root: m.root(),
            size: Some(m.size),
            stripe_size: Some(m.stripe_size),
            pin: false,
        }
    }

    fn stripe_requests(actions: &[Action]) -> Vec<(PeerId, u64)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::RequestStripe { peer, index } => Some((*peer, *index)),
                _ => None,
            })
            .collect()
    }

    fn failure(actions: &[Action]) -> Option<&FetchError> {
        actions.iter().find_map(|a| match a {
            Action::Failed(e) => Some(e),
            _ => None,
        })
    }

    /// A download and the clock the test moves.
    struct Run {
        state: DownloadState,
        manifest: Manifest,
        t0: Instant,
        now: Instant,
    }

    impl Run {
        fn new(stripes: u64, inflight_per_peer: usize) -> Self {
            let manifest = manifest(stripes);
            let t0 = Instant::now();
            let state = DownloadState::new(request_for(&manifest), limits(inflight_per_peer), t0);
            Self {
                state,
                manifest,
                t0,
                now: t0,
            }
        }

        fn at_ms(&mut self, ms: u64) -> &mut Self {
            self.now = self.t0 + Duration::from_millis(ms);
            self
        }

        fn apply(&mut self, event: Event) -> Vec<Action> {
            self.state.apply(event, self.now)
        }

        fn manifest_from(&mut self, peer: PeerId, have: Vec<bool>) -> Vec<Action> {
            let answer = ManifestAnswer::Manifest {
                manifest: self.manifest.clone(),
                have,
                banned: false,
            };
            self.apply(Event::ManifestAnswered { peer, answer })
        }

        /// Starts, adopts the manifest of the first peer (as the driver
        /// does) and lets the others join; returns the stripe requests.
        fn with_peers(&mut self, peers: &[(PeerId, Vec<bool>)]) -> Vec<(PeerId, u64)> {
            let start = self.apply(Event::Start);
            assert_eq!(
                start,
                vec![Action::LookUpProviders, Action::OfferConnectedPeers]
            );
            let offered = self.apply(Event::ConnectedPeers(
                peers.iter().map(|(p, _)| *p).collect(),
            ));
            assert_eq!(stripe_requests(&offered), vec![]);
            assert_eq!(
                offered
                    .iter()
                    .filter(|a| matches!(a, Action::RequestManifest { .. }))
                    .count(),
                peers.len()
            );
            let mut requests = Vec::new();
            for (peer, have) in peers {
                let actions = self.manifest_from(*peer, have.clone());
                if let Some(Action::AdoptManifest { manifest }) = actions.first() {
                    let adopted = self.apply(Event::ManifestAdopted {
                        manifest: Arc::new(manifest.clone()),
                        local_have: vec![false; manifest.count() as usize],
                    });
                    requests.extend(stripe_requests(&adopted));
                } else {
                    requests.extend(stripe_requests(&actions));
                }
            }
            requests
        }

        fn stripe(&mut self, peer: PeerId, index: u64) -> Vec<Action> {
            let answer = StripeAnswer::Stripe {
                index,
                len: STRIPE as usize,
            };
            self.apply(Event::StripeAnswered {
                peer,
                index,
                answer,
            })
        }

        fn stored(&mut self, peer: PeerId, index: u64) -> Vec<Action> {
            self.apply(Event::StripeStored {
                peer,
                index,
                bytes: u64::from(STRIPE),
            })
        }

        /// A stripe answered, verified and written.
        fn delivered(&mut self, peer: PeerId, index: u64) -> Vec<Action> {
            let answered = self.stripe(peer, index);
            assert!(
                answered.contains(&Action::VerifyAndStore { peer, index }),
                "{answered:?}"
            );
            let mut actions = answered;
            actions.extend(self.stored(peer, index));
            actions
        }

        /// Answers every outstanding request in order, each 10 ms after
        /// the last, until none is left; returns whether the download completed.
        fn serve(&mut self, mut outstanding: VecDeque<(PeerId, u64)>) -> bool {
            let mut complete = false;
            while let Some((peer, index)) = outstanding.pop_front() {
                self.now += Duration::from_millis(10);
                let mut actions = self.stripe(peer, index);
                // A duplicate of a stripe already in is not verified again.
                if actions.contains(&Action::VerifyAndStore { peer, index }) {
                    actions.extend(self.stored(peer, index));
                }
                outstanding.extend(stripe_requests(&actions));
                complete |= actions.contains(&Action::Complete);
            }
            complete
        }

        fn failed(&mut self, peer: PeerId, index: u64, e: RequestError) -> Vec<Action> {
            self.apply(Event::StripeAnswered {
                peer,
                index,
                answer: StripeAnswer::Failed(e),
            })
        }
    }

    fn all(n: u64) -> Vec<bool> {
        vec![true; n as usize]
    }

    #[test]
    fn each_peer_gets_requests_up_to_its_bound_and_the_download_completes() {
        let mut run = Run::new(8, 2);
        let (a, b) = (PeerId::random(), PeerId::random());
        let first = run.with_peers(&[(a, all(8)), (b, all(8))]);
        // Peer a joined alone first and took its two; b took the next two.
        assert_eq!(first, vec![(a, 0), (a, 1), (b, 2), (b, 3)]);
        assert!(run.serve(first.into()));
        let p = run.state.progress(run.now);
        assert_eq!((p.stripes_done, p.stripes_fetched), (8, 8));
        assert_eq!(p.per_peer.values().sum::<u64>(), 8);
    }

    #[test]
    fn endgame_duplicates_outstanding_stripes_at_most_twice_and_the_first_copy_wins() {
        let mut run = Run::new(2, 2);
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let requests = run.with_peers(&[(a, all(2)), (b, all(2)), (c, all(2))]);
        // Nothing missing once a asked for both: b duplicates them, and no
        // stripe is asked of three peers, so c gets nothing.
        assert_eq!(requests, vec![(a, 0), (a, 1), (b, 0), (b, 1)]);
        // The first copy is verified; the duplicate arriving meanwhile is not.
        assert_eq!(
            run.stripe(b, 0),
            vec![Action::VerifyAndStore { peer: b, index: 0 }]
        );
        assert_eq!(stripe_requests(&run.stripe(a, 0)), vec![]);
        assert!(!run
            .stripe(a, 0)
            .contains(&Action::VerifyAndStore { peer: a, index: 0 }));
        run.stored(b, 0);
        let last = run.delivered(a, 1);
        assert!(last.contains(&Action::Complete), "{last:?}");
        // Finished: later answers change nothing.
        assert_eq!(run.stripe(b, 1), vec![]);
        assert_eq!(run.state.progress(run.now).per_peer.len(), 2);
        assert_eq!(
            run.state.progress(run.now).per_peer.get(&c.to_string()),
            None
        );
    }

    #[test]
    fn a_frozen_peers_overdue_stripe_goes_to_another_peer_and_its_rate_is_demoted() {
        let mut run = Run::new(4, 1);
        let (frozen, partial) = (PeerId::random(), PeerId::random());
        // `partial` holds only stripes 0 and 1, so it idles once they are asked.
        let requests =
            run.with_peers(&[(frozen, all(4)), (partial, vec![true, true, false, false])]);
        assert_eq!(requests, vec![(frozen, 0), (partial, 1)]);
        run.at_ms(50);
        let after = run.delivered(partial, 1);
        assert_eq!(stripe_requests(&after), vec![]);
        // Not overdue before max(2 s, 4 × latency).
        run.at_ms(1_500);
        assert_eq!(stripe_requests(&run.apply(Event::Tick)), vec![]);
        run.at_ms(2_500);
        let tick = run.apply(Event::Tick);
        assert_eq!(stripe_requests(&tick), vec![(partial, 0)]);
        let rate = run.state.peers[&frozen].rate.unwrap();
        assert!(
            rate < f64::from(STRIPE),
            "demoted to what it delivered: {rate}"
        );
        // The copy from the other peer wins; the frozen one's is not needed.
        run.at_ms(2_600);
        let got = run.delivered(partial, 0);
        assert!(got.contains(&Action::StripeDone { index: 0 }));
        assert!(run.state.stripes[0].done);
    }

    /// `peers` join with every stripe and answer `rounds` rounds of
    /// requests (two each, asked in peer order), one every 150 ms, so
    /// their latency is measured; returns the requests of the last round.
    fn rounds(run: &mut Run, peers: &[PeerId], rounds: u64) -> Vec<(PeerId, u64)> {
        let n = run.manifest.count();
        let mut asked = run.with_peers(&peers.iter().map(|p| (*p, all(n))).collect::<Vec<_>>());
        for r in 1..=rounds {
            run.at_ms(150 * r);
            let mut next = Vec::new();
            for (peer, index) in asked {
                next.extend(stripe_requests(&run.delivered(peer, index)));
            }
            asked = next;
        }
        asked
    }

    #[test]
    fn a_late_head_of_line_stripe_goes_to_another_peer_once_the_hasher_is_blocked() {
        let mut run = Run::new(32, 2);
        let (frozen, fast) = (PeerId::random(), PeerId::random());
        let asked = rounds(&mut run, &[frozen, fast], 2);
        assert_eq!(
            asked,
            vec![(frozen, 8), (frozen, 9), (fast, 10), (fast, 11)]
        );
        let usual = run.state.peers[&frozen].rate.unwrap();
        // The frozen peer answers no more; the hasher has 0–7 and waits on 8.
        run.at_ms(450);
        assert_eq!(stripe_requests(&run.delivered(fast, 10)), vec![(fast, 12)]);
        let blocked = run.apply(Event::HasherWaiting {
            waiting_on: Some(8),
        });
        assert_eq!(stripe_requests(&blocked), vec![]);
        // Not late before 2 × its usual 150 ms.
        run.at_ms(590);
        assert_eq!(stripe_requests(&run.delivered(fast, 11)), vec![(fast, 13)]);
        // Late at 610 ms, but the fast peer has no free slot yet.
        run.at_ms(610);
        assert_eq!(stripe_requests(&run.apply(Event::Tick)), vec![]);
        let demoted = run.state.peers[&frozen].rate.unwrap();
        assert!(demoted < usual / 2.0, "{demoted} vs {usual}");
        // Its first free slots take the head and the frozen peer's other
        // stripe (asked after it), ahead of the missing ones; 350 ms after
        // they were asked, not after the 2 s overdue rule.
        run.at_ms(650);
        assert_eq!(stripe_requests(&run.delivered(fast, 12)), vec![(fast, 8)]);
        assert_eq!(stripe_requests(&run.delivered(fast, 13)), vec![(fast, 9)]);
        run.at_ms(800);
        let got = run.delivered(fast, 8);
        assert!(got.contains(&Action::StripeDone { index: 8 }), "{got:?}");
        assert_eq!(stripe_requests(&got), vec![(fast, 14)]);
    }

    #[test]
    fn a_peer_whose_queue_is_still_filling_gets_the_default_latency() {
        let mut run = Run::new(32, 2);
        let (slow, fast) = (PeerId::random(), PeerId::random());
        // The first two answers of each peer came while its queue filled.
        let asked = rounds(&mut run, &[slow, fast], 1);
        assert_eq!(asked, vec![(slow, 4), (slow, 5), (fast, 6), (fast, 7)]);
        assert_eq!(run.state.peers[&slow].latency, None);
        run.at_ms(200);
        run.apply(Event::HasherWaiting {
            waiting_on: Some(4),
        });
        // Late only after 2 × the default 0.5 s, not 2 × those 150 ms.
        run.at_ms(1_100);
        assert_eq!(stripe_requests(&run.delivered(fast, 6)), vec![(fast, 8)]);
        run.at_ms(1_200);
        assert_eq!(stripe_requests(&run.delivered(fast, 7)), vec![(fast, 4)]);
    }

    #[test]
    fn a_late_stripe_is_not_duplicated_while_the_hasher_is_not_blocked() {
        let mut run = Run::new(64, 2);
        let (frozen, fast) = (PeerId::random(), PeerId::random());
        let asked = rounds(&mut run, &[frozen, fast], 2);
        assert_eq!(
            asked,
            vec![(frozen, 8), (frozen, 9), (fast, 10), (fast, 11)]
        );
        run.at_ms(450);
        run.apply(Event::HasherWaiting {
            waiting_on: Some(8),
        });
        // The window drained before the head was late.
        run.at_ms(550);
        run.apply(Event::HasherWaiting { waiting_on: None });
        // The fast peer keeps taking missing stripes; the frozen peer's
        // wait for the overdue rule (2 s after they were asked).
        let mut outstanding: VecDeque<(PeerId, u64)> = [(fast, 10), (fast, 11)].into();
        let mut ms = 550;
        while ms < 2_250 {
            ms += 50;
            let (peer, index) = outstanding.pop_front().unwrap();
            let asked = stripe_requests(&run.at_ms(ms).delivered(peer, index));
            assert!(asked.iter().all(|(_, i)| *i > 11), "at {ms} ms: {asked:?}");
            outstanding.extend(asked);
            let tick = run.apply(Event::Tick);
            assert_eq!(stripe_requests(&tick), vec![], "at {ms} ms");
        }
        assert!(run.state.head_late.is_empty());
        assert!(run.state.overdue.is_empty());
        // Only the overdue rule takes them up.
        run.at_ms(2_400).apply(Event::Tick);
        assert_eq!(run.state.overdue, [8, 9].into());
    }

    #[test]
    fn a_late_head_of_line_stripe_is_duplicated_at_most_once() {
        let mut run = Run::new(32, 2);
        let (frozen, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let asked = rounds(&mut run, &[frozen, b, c], 2);
        assert_eq!(
            asked,
            vec![
                (frozen, 12),
                (frozen, 13),
                (b, 14),
                (b, 15),
                (c, 16),
                (c, 17)
            ]
        );
        run.at_ms(450);
        run.apply(Event::HasherWaiting {
            waiting_on: Some(12),
        });
        run.at_ms(610);
        let mut asked = Vec::new();
        for (peer, index) in [(b, 14), (c, 16), (b, 15), (c, 17)] {
            asked.extend(stripe_requests(&run.delivered(peer, index)));
            // The driver reports again (say the hasher's state flickered).
            run.apply(Event::HasherWaiting { waiting_on: None });
            run.apply(Event::HasherWaiting {
                waiting_on: Some(12),
            });
        }
        assert_eq!(asked, vec![(b, 12), (c, 13), (b, 18), (c, 19)]);
        for s in [12, 13] {
            assert_eq!(run.state.stripes[s].requests.len(), 2, "stripe {s}");
        }
        // Both still late, both held by two peers: neither is asked a third time.
        run.at_ms(3_000);
        let tick = run.apply(Event::Tick);
        assert_eq!(stripe_requests(&tick), vec![]);
        let later = stripe_requests(&run.delivered(b, 18));
        assert_eq!(later, vec![(b, 20)]);
        assert!(run
            .delivered(b, 12)
            .contains(&Action::StripeDone { index: 12 }));
    }

    #[test]
    fn a_bad_stripe_penalises_its_sender_and_the_stripe_is_asked_of_another_peer() {
        let mut run = Run::new(2, 1);
        let (liar, honest) = (PeerId::random(), PeerId::random());
        let requests = run.with_peers(&[(liar, all(2)), (honest, all(2))]);
        assert_eq!(requests, vec![(liar, 0), (honest, 1)]);
        // Free again, the liar duplicates the last stripe (endgame).
        assert_eq!(
            run.stripe(liar, 0),
            vec![
                Action::VerifyAndStore {
                    peer: liar,
                    index: 0
                },
                Action::RequestStripe {
                    peer: liar,
                    index: 1
                }
            ]
        );
        let bad = run.apply(Event::StripeBad {
            peer: liar,
            index: 0,
        });
        assert_eq!(
            bad[0],
            Action::Penalise {
                peer: liar,
                reason: "stripe failed verification"
            }
        );
        // The liar left the pool; stripe 0 waits for the honest peer.
        assert!(!run.state.peers.contains_key(&liar));
        assert!(run.state.missing.contains(&0));
        let next = run.delivered(honest, 1);
        assert_eq!(stripe_requests(&next), vec![(honest, 0)]);
        assert!(run.delivered(honest, 0).contains(&Action::Complete));
        let p = run.state.progress(run.now);
        assert_eq!(p.bad_peers, vec![liar.to_string()]);
        assert_eq!(p.per_peer.get(&liar.to_string()), None);
        // A stripe index other than the one asked is penalised too.
        let mut run = Run::new(2, 1);
        let (wrong, _) = (PeerId::random(), ());
        run.with_peers(&[(wrong, all(2))]);
        let answer = StripeAnswer::Stripe {
            index: 1,
            len: STRIPE as usize,
        };
        let actions = run.apply(Event::StripeAnswered {
            peer: wrong,
            index: 0,
            answer,
        });
        assert_eq!(
            actions,
            vec![Action::Penalise {
                peer: wrong,
                reason: "stripe index differs from the request"
            }]
        );
    }

    #[test]
    fn a_peer_that_vanishes_mid_download_leaves_and_its_stripes_go_to_the_others() {
        let mut run = Run::new(6, 2);
        let (gone, stays) = (PeerId::random(), PeerId::random());
        let requests = run.with_peers(&[(gone, all(6)), (stays, all(6))]);
        assert_eq!(requests, vec![(gone, 0), (gone, 1), (stays, 2), (stays, 3)]);
        run.at_ms(100);
        // A timeout is a failure, not yet a reason to leave.
        let timeout = run.failed(gone, 0, RequestError::Timeout);
        assert_eq!(stripe_requests(&timeout), vec![(gone, 0)]);
        assert!(run.state.peers.contains_key(&gone));
        // A closed connection is: its other stripe goes back to the others.
        let closed = run.failed(gone, 1, RequestError::ConnectionClosed);
        assert_eq!(stripe_requests(&closed), vec![]);
        assert!(!run.state.peers.contains_key(&gone));
        assert!(run.state.missing.contains(&0) && run.state.missing.contains(&1));
        // A late answer from the peer that left is discarded unseen.
        let late = run.stripe(gone, 0);
        assert!(!late
            .iter()
            .any(|a| matches!(a, Action::VerifyAndStore { .. })));
        assert!(run.serve([(stays, 2), (stays, 3)].into()));
        let p = run.state.progress(run.now);
        assert_eq!(p.stripes_done, 6);
        assert_eq!(p.per_peer.get(&stays.to_string()), Some(&6));
    }

    #[test]
    fn three_timeouts_drop_a_peer() {
        let mut run = Run::new(4, 1);
        let slow = PeerId::random();
        assert_eq!(run.with_peers(&[(slow, all(4))]), vec![(slow, 0)]);
        assert_eq!(
            stripe_requests(&run.failed(slow, 0, RequestError::Timeout)),
            vec![(slow, 0)]
        );
        assert_eq!(
            stripe_requests(&run.failed(slow, 0, RequestError::Timeout)),
            vec![(slow, 0)]
        );
        assert_eq!(
            stripe_requests(&run.failed(slow, 0, RequestError::Timeout)),
            vec![]
        );
        assert_eq!(run.state.progress(run.now).peers, 0);
    }

    #[test]
    fn with_no_peer_the_download_fails_with_no_providers_after_the_stall_timeout() {
        let mut run = Run::new(4, 1);
        run.apply(Event::Start);
        run.apply(Event::ProvidersFound(vec![]));
        let mut rediscovered = 0;
        for s in 1..60 {
            let tick = run.at_ms(s * 1000).apply(Event::Tick);
            assert_eq!(failure(&tick), None, "at {s}s");
            // With nobody serving, discovery runs every second.
            rediscovered += usize::from(tick.contains(&Action::OfferConnectedPeers));
        }
        assert_eq!(rediscovered, 59);
        let tick = run.at_ms(60_000).apply(Event::Tick);
        assert_eq!(
            failure(&tick),
            Some(&FetchError::NoProviders {
                sha256: hex::encode([1u8; 32]),
                waited_secs: 60
            })
        );
        assert_eq!(run.at_ms(61_000).apply(Event::Tick), vec![]);
    }

    #[test]
    fn when_every_peer_sent_bad_data_the_download_fails_saying_so() {
        let mut run = Run::new(2, 1);
        let (a, b) = (PeerId::random(), PeerId::random());
        run.with_peers(&[(a, all(2)), (b, all(2))]);
        run.at_ms(10);
        run.stripe(a, 0);
        run.apply(Event::StripeBad { peer: a, index: 0 });
        run.stripe(b, 1);
        run.apply(Event::StripeBad { peer: b, index: 1 });
        assert_eq!(run.state.progress(run.now).peers, 0);
        // Banned peers are left out by the driver: discovery finds nobody.
        let tick = run.at_ms(59_000).apply(Event::Tick);
        assert_eq!(failure(&tick), None);
        let tick = run.at_ms(60_000).apply(Event::Tick);
        let error = failure(&tick).unwrap();
        assert_eq!(
            error,
            &FetchError::NoHonestPeer {
                missing: 2,
                penalised: 2,
                secs: 60
            }
        );
        assert!(
            error.to_string().contains("2 peer(s) sent bad data"),
            "{error}"
        );
    }

    #[test]
    fn peers_that_stop_delivering_without_bad_data_fail_as_stalled() {
        let mut run = Run::new(2, 1);
        let a = PeerId::random();
        run.with_peers(&[(a, all(2))]);
        run.at_ms(30_000);
        run.delivered(a, 0);
        // The stall clock restarts at each written stripe.
        assert_eq!(failure(&run.at_ms(89_000).apply(Event::Tick)), None);
        let tick = run.at_ms(90_000).apply(Event::Tick);
        assert_eq!(
            failure(&tick),
            Some(&FetchError::Stalled {
                missing: 1,
                secs: 60
            })
        );
    }

    #[test]
    fn a_manifest_for_another_root_fails_after_the_grace_and_its_peer_is_not_used() {
        let mut run = Run::new(2, 1);
        let other = manifest(3);
        let p = PeerId::random();
        run.apply(Event::Start);
        run.apply(Event::ConnectedPeers(vec![p]));
        let answer = ManifestAnswer::Manifest {
            manifest: other,
            have: all(3),
            banned: false,
        };
        let actions = run.apply(Event::ManifestAnswered { peer: p, answer });
        assert_eq!(actions, vec![]);
        assert_eq!(failure(&run.at_ms(14_900).apply(Event::Tick)), None);
        let tick = run.at_ms(15_000).apply(Event::Tick);
        assert!(
            matches!(
                failure(&tick),
                Some(FetchError::NoValidManifest { tried: 1, .. })
            ),
            "{tick:?}"
        );
    }

    #[test]
    fn a_banned_peer_with_the_right_manifest_gives_it_but_serves_no_stripe() {
        let mut run = Run::new(2, 1);
        let banned = PeerId::random();
        run.apply(Event::Start);
        run.apply(Event::ConnectedPeers(vec![banned]));
        let answer = ManifestAnswer::Manifest {
            manifest: run.manifest.clone(),
            have: all(2),
            banned: true,
        };
        let actions = run.apply(Event::ManifestAnswered {
            peer: banned,
            answer,
        });
        assert!(matches!(actions[..], [Action::AdoptManifest { .. }]));
        let adopted = run.apply(Event::ManifestAdopted {
            manifest: Arc::new(run.manifest.clone()),
            local_have: vec![true, false],
        });
        assert_eq!(stripe_requests(&adopted), vec![]);
        let p = run.state.progress(run.now);
        assert_eq!(
            (p.peers, p.stripes_resumed, p.phase),
            (0, 1, Phase::Stripes)
        );
    }
}
