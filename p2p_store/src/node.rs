//! The libp2p node: one task owns the swarm; everything else talks to it
//! through a bounded command channel.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::kad::{self, GetProvidersOk, QueryResult};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{behaviour::toggle::Toggle, NetworkBehaviour, SwarmEvent};
use libp2p::{
    connection_limits, identify, mdns, noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::download::{self, DownloadHandle, Downloads, FetchRequest, NodeStopped};
use crate::limiter::RateLimiter;
use crate::manifest::{Digest, DEFAULT_STRIPE_SIZE};
pub use crate::protocol::RequestError;
use crate::protocol::{ErrorCode, Request, Response, StoreCodec, PROTOCOL};
use crate::providers::{ProviderCounts, ProviderLimits, ProviderStats, ProviderStore};
use crate::store::{Store, StoreError};

/// Node configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Store directory (objects, node key).
    pub data_dir: PathBuf,
    /// libp2p listen addresses.
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start (`/ip4/…/tcp/…/p2p/<id>` or without `/p2p`).
    pub bootstrap: Vec<Multiaddr>,
    /// Disk quota in bytes.
    pub quota: u64,
    /// Discover peers on the LAN by mDNS.
    pub mdns: bool,
    /// Concurrent stripe uploads this node serves.
    pub max_uploads: usize,
    /// Upload cap in bytes per second (`None`: unlimited).
    pub upload_rate: Option<u64>,
    /// Stripe size for artifacts put on this node.
    pub stripe_size: u32,
    /// Stripe requests in flight per peer while downloading.
    pub inflight_per_peer: usize,
    /// Timeout of one request.
    pub request_timeout: Duration,
    /// A download with no progress for this long fails.
    pub stall_timeout: Duration,
    /// A partial download with no progress for this long is removed (and
    /// its reserved quota freed): checked when the node starts, then every
    /// `partial_ttl / 4` (at least every second, at most every 10 min).
    pub partial_ttl: Duration,
    /// Bounds on the Kademlia provider records other peers leave here.
    pub provider_limits: ProviderLimits,
    /// Bounds on connections from other peers.
    pub connection_limits: ConnectionLimits,
}

/// Bounds on the connections a node accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Established inbound connections, all peers together.
    pub max_inbound: u32,
    /// Inbound connections still in their handshake.
    pub max_pending_inbound: u32,
    /// Established connections with one peer, both directions.
    pub max_per_peer: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        // A store talks to the few dozen peers of a download or of the
        // downloads it serves; two connections per peer happen when both
        // sides dial at once, and a few more cover a redial racing a close.
        ConnectionLimits {
            max_inbound: 256,
            max_pending_inbound: 64,
            max_per_peer: 4,
        }
    }
}

impl Config {
    /// Defaults for a node storing under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen: vec!["/ip4/0.0.0.0/tcp/44000"
                .parse()
                .unwrap_or_else(|_| Multiaddr::empty())],
            bootstrap: Vec::new(),
            quota: 10 * 1024 * 1024 * 1024,
            mdns: true,
            max_uploads: 16,
            upload_rate: None,
            stripe_size: DEFAULT_STRIPE_SIZE,
            inflight_per_peer: 4,
            request_timeout: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(60),
            partial_ttl: crate::store::DEFAULT_PARTIAL_TTL,
            provider_limits: ProviderLimits::default(),
            connection_limits: ConnectionLimits::default(),
        }
    }
}

/// Node errors.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("node key {path}: {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: libp2p::identity::DecodingError,
    },
    #[error("node key {path}: {source}")]
    KeyIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("node key {path} has mode {mode:04o}, which lets other users read or change this node's identity; run `chmod 600 {path}`")]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("transport: {0}")]
    Transport(String),
    #[error("listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("the node has stopped")]
    Stopped,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    rr: request_response::Behaviour<StoreCodec>,
    kad: kad::Behaviour<ProviderStore>,
    identify: identify::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

enum Command {
    Request {
        peer: PeerId,
        request: Request,
        reply: oneshot::Sender<Result<Response, RequestError>>,
    },
    Respond {
        request_id: request_response::InboundRequestId,
        channel: ResponseChannel<Response>,
        response: Response,
        permit: Option<OwnedSemaphorePermit>,
    },
    Providers {
        key: Digest,
        reply: oneshot::Sender<HashSet<PeerId>>,
    },
    Provide {
        key: Digest,
    },
    Unprovide {
        key: Digest,
    },
    Dial {
        addr: Multiaddr,
    },
    Disconnect {
        peer: PeerId,
    },
}

#[derive(Debug, Default)]
struct NetState {
    listen: Vec<Multiaddr>,
    connected: HashMap<PeerId, usize>,
    penalties: HashMap<PeerId, (u32, Instant)>,
}

/// Counters exposed in the status.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Counters {
    pub stripes_served: u64,
    pub bytes_served: u64,
    pub uploads_refused_busy: u64,
    pub bad_requests: u64,
}

pub(crate) struct Shared {
    pub(crate) store: Arc<Store>,
    pub(crate) config: Config,
    pub(crate) peer_id: PeerId,
    /// mDNS discovery is running.
    mdns: bool,
    cmd: mpsc::Sender<Command>,
    net: Mutex<NetState>,
    counters: Mutex<Counters>,
    downloads: Downloads,
    upload_slots: Arc<Semaphore>,
    limiter: Option<Arc<RateLimiter>>,
    providers: Arc<ProviderStats>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Handle to a running node. Clones share the node.
#[derive(Clone)]
pub struct Node {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("peer_id", &self.shared.peer_id)
            .finish()
    }
}

/// Re-announcement of every stored artifact happens at most this often.
const REANNOUNCE_EVERY: Duration = Duration::from_secs(300);

/// How long a peer that sent bad data stays excluded.
pub const BAN_DURATION: Duration = Duration::from_secs(600);

/// Node status (also the control API's `/status`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub peer_id: String,
    pub listen_addrs: Vec<String>,
    pub connected_peers: Vec<String>,
    /// Whether mDNS discovery is running (off by `--no-mdns`/`Config::mdns`,
    /// or when the OS refused the multicast socket).
    pub mdns: bool,
    pub disk_used: u64,
    pub disk_quota: u64,
    pub artifacts: Vec<crate::store::ArtifactInfo>,
    pub penalised_peers: Vec<String>,
    pub counters: Counters,
    /// Kademlia provider records held: ours, other peers', and how many of
    /// theirs a bound refused.
    pub provider_records: ProviderCounts,
    pub downloads: Vec<download::Progress>,
}

/// The node's libp2p identity: the key in `path` if there is one (refused
/// when group or others may read or write it: whoever reads it can act as
/// this node's peer id, which a builder registers on the ledger), else a
/// new ed25519 key written 0600 from the first byte (created exclusively
/// under a temporary name with that mode, then hard-linked into place, so
/// it is never readable by others nor seen half-written).
fn load_or_create_key(path: &std::path::Path) -> Result<Keypair, NodeError> {
    use crate::owner_only::Created;
    let io = |source: std::io::Error| NodeError::KeyIo {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::metadata(path) {
        Ok(meta) => return existing_key(path, &meta),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let k = Keypair::generate_ed25519();
    let bytes = k.to_protobuf_encoding().map_err(|source| NodeError::Key {
        path: path.to_path_buf(),
        source,
    })?;
    match crate::owner_only::create(path, &bytes).map_err(io)? {
        Created::Written => {
            tracing::info!(path = %path.display(), "created the node's libp2p identity key");
            Ok(k)
        }
        Created::Existed => {
            let meta = std::fs::metadata(path).map_err(io)?;
            existing_key(path, &meta)
        }
    }
}

fn existing_key(path: &std::path::Path, meta: &std::fs::Metadata) -> Result<Keypair, NodeError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(NodeError::KeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let bytes = std::fs::read(path).map_err(|source| NodeError::KeyIo {
        path: path.to_path_buf(),
        source,
    })?;
    Keypair::from_protobuf_encoding(&bytes).map_err(|source| NodeError::Key {
        path: path.to_path_buf(),
        source,
    })
}

impl Node {
    /// Opens the store, starts the swarm, listens and dials bootstrap peers.
    /// Returns once every listen address is bound.
    pub async fn start(config: Config) -> Result<Node, NodeError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            NodeError::Store(StoreError::Io {
                path: config.data_dir.clone(),
                source: e,
            })
        })?;
        let key = load_or_create_key(&config.data_dir.join("node_key"))?;
        let dir = config.data_dir.clone();
        let quota = config.quota;
        let ttl = config.partial_ttl;
        let store = tokio::task::spawn_blocking(move || {
            let s = Store::open(dir, quota)?;
            // Stale partials go before anything is announced.
            s.expire_partials(std::time::SystemTime::now(), ttl);
            Ok::<_, StoreError>(s)
        })
        .await
        .map_err(|e| NodeError::Transport(e.to_string()))??;
        let store = Arc::new(store);
        let peer_id = key.public().to_peer_id();
        let timeout = config.request_timeout;
        let use_mdns = config.mdns;
        let max_streams = (config.max_uploads * 4).max(64);
        let provider_stats = Arc::new(ProviderStats::default());
        let (plimits, climits) = (config.provider_limits, config.connection_limits);
        let kad_stats = provider_stats.clone();
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                (crate::tls::Config::new, noise::Config::new),
                yamux::Config::default,
            )
            .map_err(|e| NodeError::Transport(e.to_string()))?
            .with_behaviour(|key| {
                let pid = key.public().to_peer_id();
                let rr = request_response::Behaviour::new(
                    [(PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(timeout)
                        .with_max_concurrent_streams(max_streams),
                );
                let mut kcfg = kad::Config::new(StreamProtocol::new("/pyrsia/kad/1"));
                kcfg.set_query_timeout(Duration::from_secs(20));
                let store = ProviderStore::new(pid, plimits, kad_stats);
                let mut kad = kad::Behaviour::with_config(pid, store, kcfg);
                kad.set_mode(Some(kad::Mode::Server));
                let identify = identify::Behaviour::new(identify::Config::new(
                    "/pyrsia/id/1".into(),
                    key.public(),
                ));
                let mdns = if use_mdns {
                    match mdns::tokio::Behaviour::new(mdns::Config::default(), pid) {
                        Ok(m) => Some(m),
                        Err(e) => {
                            tracing::warn!(%e, "mDNS unavailable");
                            None
                        }
                    }
                } else {
                    tracing::info!("mDNS discovery off");
                    None
                };
                let limits = connection_limits::Behaviour::new(
                    connection_limits::ConnectionLimits::default()
                        .with_max_established_incoming(Some(climits.max_inbound))
                        .with_max_pending_incoming(Some(climits.max_pending_inbound))
                        .with_max_established_per_peer(Some(climits.max_per_peer)),
                );
                Ok(Behaviour {
                    limits,
                    rr,
                    kad,
                    identify,
                    mdns: Toggle::from(mdns),
                })
            })
            .map_err(|e| NodeError::Transport(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
            .build();

        let mdns_on = swarm.behaviour().mdns.is_enabled();
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NodeError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
        }
        // Wait for the listeners to bind so callers can read the real ports.
        let mut listen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while listen.len() < config.listen.len() {
            let ev = tokio::time::timeout_at(deadline, swarm.select_next_some())
                .await
                .map_err(|_| NodeError::Transport("listeners did not bind".into()))?;
            match ev {
                SwarmEvent::NewListenAddr { address, .. } => listen.push(address),
                SwarmEvent::ListenerError { error, .. } => {
                    return Err(NodeError::Transport(error.to_string()))
                }
                SwarmEvent::ListenerClosed {
                    reason, addresses, ..
                } => {
                    return Err(NodeError::Listen {
                        addr: addresses.first().cloned().unwrap_or_else(Multiaddr::empty),
                        reason: format!("{reason:?}"),
                    })
                }
                _ => {}
            }
        }
        for addr in &config.bootstrap {
            if let Some(Protocol::P2p(pid)) = addr.iter().last() {
                let base: Multiaddr = addr
                    .iter()
                    .filter(|p| !matches!(p, Protocol::P2p(_)))
                    .collect();
                swarm.behaviour_mut().kad.add_address(&pid, base);
            }
            if let Err(e) = swarm.dial(addr.clone()) {
                tracing::warn!(%addr, %e, "bootstrap dial failed");
            }
        }
        // Re-announce everything stored (provider records do not survive a restart).
        for key in store.provided() {
            let _ = swarm
                .behaviour_mut()
                .kad
                .start_providing(kad::RecordKey::new(&key));
        }

        let (tx, rx) = mpsc::channel(256);
        let limiter = config
            .upload_rate
            .map(|r| Arc::new(RateLimiter::new(r, u64::from(config.stripe_size))));
        let shared = Arc::new(Shared {
            store,
            peer_id,
            mdns: mdns_on,
            cmd: tx,
            net: Mutex::new(NetState {
                listen,
                ..Default::default()
            }),
            counters: Mutex::new(Counters::default()),
            downloads: Downloads::default(),
            upload_slots: Arc::new(Semaphore::new(config.max_uploads.max(1))),
            limiter,
            providers: provider_stats,
            config,
            task: Mutex::new(None),
        });
        let weak = Arc::downgrade(&shared);
        let task = tokio::spawn(run_swarm(swarm, rx, weak));
        *lock(&shared.task) = Some(task);
        tracing::info!(%peer_id, "store node started");
        Ok(Node { shared })
    }

    /// Stops the swarm abruptly (connections drop). The store stays on disk.
    /// Downloads in progress stop too; their verified stripes stay for a resume.
    pub fn shutdown(&self) {
        if let Some(t) = lock(&self.shared.task).take() {
            t.abort();
        }
        self.shared.downloads.abort_all();
    }

    pub fn peer_id(&self) -> PeerId {
        self.shared.peer_id
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.shared.store
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Listen addresses, each with `/p2p/<peer id>` appended.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        lock(&self.shared.net)
            .listen
            .iter()
            .map(|a| a.clone().with(Protocol::P2p(self.shared.peer_id)))
            .collect()
    }

    pub fn connected_peers(&self) -> Vec<PeerId> {
        lock(&self.shared.net).connected.keys().copied().collect()
    }

    /// Records bad behaviour; the peer is excluded from downloads for [`BAN_DURATION`]
    /// and disconnected.
    pub fn penalise(&self, peer: PeerId, reason: &str) {
        tracing::warn!(%peer, reason, "peer penalised");
        {
            let mut net = lock(&self.shared.net);
            let e = net.penalties.entry(peer).or_insert((0, Instant::now()));
            e.0 += 1;
            e.1 = Instant::now();
        }
        let _ = self.shared.cmd.try_send(Command::Disconnect { peer });
    }

    /// Penalty count of a peer (0 if none).
    pub fn penalty(&self, peer: &PeerId) -> u32 {
        lock(&self.shared.net)
            .penalties
            .get(peer)
            .map_or(0, |p| p.0)
    }

    pub fn is_banned(&self, peer: &PeerId) -> bool {
        lock(&self.shared.net)
            .penalties
            .get(peer)
            .is_some_and(|(_, at)| at.elapsed() < BAN_DURATION)
    }

    async fn send(&self, c: Command) -> Result<(), NodeError> {
        self.shared
            .cmd
            .send(c)
            .await
            .map_err(|_| NodeError::Stopped)
    }

    /// Sends one request and waits for the answer.
    pub async fn request(&self, peer: PeerId, request: Request) -> Result<Response, RequestError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Request {
            peer,
            request,
            reply,
        })
        .await
        .map_err(|_| RequestError::Stopped)?;
        rx.await.map_err(|_| RequestError::Stopped)?
    }

    /// Kademlia provider lookup.
    pub async fn find_providers(&self, key: Digest) -> Result<HashSet<PeerId>, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Providers { key, reply }).await?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    pub(crate) async fn provide(&self, key: Digest) {
        let _ = self.send(Command::Provide { key }).await;
    }

    pub(crate) async fn unprovide(&self, key: Digest) {
        let _ = self.send(Command::Unprovide { key }).await;
    }

    /// Dials an address.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NodeError> {
        self.send(Command::Dial { addr }).await
    }

    /// Puts a local file into the store and announces it.
    pub async fn put_path(
        &self,
        path: PathBuf,
        stripe_size: Option<u32>,
        pinned: bool,
    ) -> Result<crate::store::PutResult, StoreError> {
        let store = self.shared.store.clone();
        let ss = stripe_size.unwrap_or(self.shared.config.stripe_size);
        let (r, evicted) = tokio::task::spawn_blocking(move || store.put_path(&path, ss, pinned))
            .await
            .map_err(|e| StoreError::Io {
                path: PathBuf::new(),
                source: std::io::Error::other(e.to_string()),
            })??;
        self.after_commit(&r, evicted).await;
        Ok(r)
    }

    pub(crate) async fn after_commit(&self, r: &crate::store::PutResult, evicted: Vec<Digest>) {
        for e in evicted {
            self.unprovide(e).await;
        }
        if let Some(d) = crate::manifest::parse_digest(&r.sha256) {
            self.provide(d).await;
        }
    }

    /// Downloads an artifact (or joins a running download of it).
    pub fn fetch(&self, req: FetchRequest) -> DownloadHandle {
        let config = &self.shared.config;
        let limits = download::Limits {
            inflight_per_peer: config.inflight_per_peer,
            stall_timeout: config.stall_timeout,
            manifest_grace: download::MANIFEST_GRACE,
        };
        let net: Arc<dyn download::Network> = Arc::new(self.clone());
        self.shared
            .downloads
            .start(net, self.shared.store.clone(), limits, req)
    }

    /// A running or finished download of `sha256`.
    pub fn download(&self, sha256: &Digest) -> Option<DownloadHandle> {
        self.shared.downloads.get(sha256)
    }

    /// Kademlia provider records held here.
    pub fn provider_records(&self) -> ProviderCounts {
        self.shared.providers.counts()
    }

    pub fn counters(&self) -> Counters {
        lock(&self.shared.counters).clone()
    }

    pub fn status(&self) -> Status {
        let (listen, connected, penal) = {
            let net = lock(&self.shared.net);
            (
                net.listen
                    .iter()
                    .map(|a| {
                        a.clone()
                            .with(Protocol::P2p(self.shared.peer_id))
                            .to_string()
                    })
                    .collect(),
                net.connected.keys().map(|p| p.to_string()).collect(),
                net.penalties.keys().map(|p| p.to_string()).collect(),
            )
        };
        let downloads = self.shared.downloads.progress();
        Status {
            peer_id: self.shared.peer_id.to_string(),
            listen_addrs: listen,
            connected_peers: connected,
            mdns: self.shared.mdns,
            disk_used: self.shared.store.used(),
            disk_quota: self.shared.store.quota(),
            artifacts: self.shared.store.list(),
            penalised_peers: penal,
            counters: self.counters(),
            provider_records: self.provider_records(),
            downloads,
        }
    }
}

/// The view of the node a download has.
#[async_trait::async_trait]
impl download::Network for Node {
    fn local_peer_id(&self) -> PeerId {
        self.peer_id()
    }

    fn connected_peers(&self) -> Vec<PeerId> {
        Node::connected_peers(self)
    }

    fn is_banned(&self, peer: &PeerId) -> bool {
        Node::is_banned(self, peer)
    }

    fn penalise(&self, peer: PeerId, reason: &str) {
        Node::penalise(self, peer, reason)
    }

    async fn request(&self, peer: PeerId, request: Request) -> Result<Response, RequestError> {
        Node::request(self, peer, request).await
    }

    async fn find_providers(&self, key: Digest) -> Result<HashSet<PeerId>, NodeStopped> {
        // The lookup fails only when the swarm task has ended.
        Node::find_providers(self, key)
            .await
            .map_err(|_| NodeStopped)
    }

    async fn provide(&self, key: Digest) {
        Node::provide(self, key).await
    }

    async fn unprovide(&self, key: Digest) {
        Node::unprovide(self, key).await
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Answers an inbound request. Manifests and refusals are answered at once;
/// a stripe takes an upload slot (or is refused `Busy`), is read off the
/// runtime, waits for the bandwidth cap, then goes back to the swarm.
fn handle_inbound(
    shared: &Arc<Shared>,
    request_id: request_response::InboundRequestId,
    request: Request,
    channel: ResponseChannel<Response>,
) -> Option<Command> {
    let store = &shared.store;
    match request {
        Request::Malformed(reason) => {
            lock(&shared.counters).bad_requests += 1;
            Some(Command::Respond {
                request_id,
                channel,
                response: Response::error(
                    ErrorCode::BadRequest,
                    format!("malformed request: {reason}"),
                ),
                permit: None,
            })
        }
        Request::Manifest { sha256 } => {
            let (resp, permit) = match (store.manifest(&sha256), store.have(&sha256)) {
                (Some((m, _)), Some(have)) => {
                    // A manifest can be megabytes: it takes an upload slot like a stripe.
                    match shared.upload_slots.clone().try_acquire_owned() {
                        Ok(p) => (
                            Response::Manifest {
                                manifest: (*m).clone(),
                                have,
                            },
                            Some(p),
                        ),
                        Err(_) => {
                            lock(&shared.counters).uploads_refused_busy += 1;
                            (Response::error(ErrorCode::Busy, "upload slots full"), None)
                        }
                    }
                }
                _ => (
                    Response::error(ErrorCode::NotFound, "artifact not stored here"),
                    None,
                ),
            };
            Some(Command::Respond {
                request_id,
                channel,
                response: resp,
                permit,
            })
        }
        Request::Stripe { sha256, index } => {
            let Some(have) = store.have(&sha256) else {
                return Some(Command::Respond {
                    request_id,
                    channel,
                    response: Response::error(ErrorCode::NotFound, "artifact not stored here"),
                    permit: None,
                });
            };
            match have.get(index as usize) {
                None => {
                    lock(&shared.counters).bad_requests += 1;
                    return Some(Command::Respond {
                        request_id,
                        channel,
                        response: Response::error(
                            ErrorCode::BadRequest,
                            format!("stripe {index} out of range ({} stripes)", have.len()),
                        ),
                        permit: None,
                    });
                }
                Some(false) => {
                    return Some(Command::Respond {
                        request_id,
                        channel,
                        response: Response::error(ErrorCode::NotHave, "stripe not yet here"),
                        permit: None,
                    })
                }
                Some(true) => {}
            }
            let Ok(permit) = shared.upload_slots.clone().try_acquire_owned() else {
                lock(&shared.counters).uploads_refused_busy += 1;
                return Some(Command::Respond {
                    request_id,
                    channel,
                    response: Response::error(ErrorCode::Busy, "upload slots full"),
                    permit: None,
                });
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let st = shared.store.clone();
                let read =
                    tokio::task::spawn_blocking(move || st.read_stripe(&sha256, index)).await;
                let response = match read {
                    Ok(Ok(data)) => {
                        if let Some(l) = &shared.limiter {
                            l.acquire(data.len() as u64).await;
                        }
                        let mut c = lock(&shared.counters);
                        c.stripes_served += 1;
                        c.bytes_served += data.len() as u64;
                        drop(c);
                        Response::Stripe { index, data }
                    }
                    Ok(Err(StoreError::NotFound(_))) => {
                        Response::error(ErrorCode::NotFound, "artifact not stored here")
                    }
                    Ok(Err(e)) => Response::error(ErrorCode::Internal, e.to_string()),
                    Err(e) => Response::error(ErrorCode::Internal, e.to_string()),
                };
                let _ = shared
                    .cmd
                    .send(Command::Respond {
                        request_id,
                        channel,
                        response,
                        permit: Some(permit),
                    })
                    .await;
            });
            None
        }
    }
}

/// How often partial downloads are checked against `ttl`.
fn sweep_period(ttl: Duration) -> Duration {
    (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(600))
}

async fn run_swarm(
    mut swarm: Swarm<Behaviour>,
    mut rx: mpsc::Receiver<Command>,
    shared: std::sync::Weak<Shared>,
) {
    let mut pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Response, RequestError>>> =
        HashMap::new();
    let mut provider_queries: HashMap<
        kad::QueryId,
        (HashSet<PeerId>, oneshot::Sender<HashSet<PeerId>>),
    > = HashMap::new();
    let mut upload_permits: HashMap<request_response::InboundRequestId, OwnedSemaphorePermit> =
        HashMap::new();
    let mut announce = tokio::time::interval(Duration::from_secs(5));
    announce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Announce again once new peers appear (records put while alone reach nobody).
    // The first time (records made while alone reached nobody) as soon as
    // peers appear, later at most every REANNOUNCE_EVERY when peers change;
    // Kademlia's own republication covers the rest.
    let mut peers_changed = false;
    let mut last_announce: Option<Instant> = None;
    let ttl = match shared.upgrade() {
        Some(sh) => sh.config.partial_ttl,
        None => return,
    };
    let mut expire = tokio::time::interval_at(
        tokio::time::Instant::now() + sweep_period(ttl),
        sweep_period(ttl),
    );
    expire.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = expire.tick() => {
                // Off the swarm loop: removing a large partial takes a while.
                let Some(sh) = shared.upgrade() else { break };
                let (store, cmd) = (sh.store.clone(), sh.cmd.clone());
                drop(sh);
                tokio::spawn(async move {
                    let removed = tokio::task::spawn_blocking(move || {
                        store.expire_partials(std::time::SystemTime::now(), ttl)
                    })
                    .await
                    .unwrap_or_default();
                    for key in removed {
                        let _ = cmd.send(Command::Unprovide { key }).await;
                    }
                });
            }
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                match cmd {
                    Command::Request { peer, request, reply } => {
                        let id = swarm.behaviour_mut().rr.send_request(&peer, request);
                        pending.insert(id, reply);
                    }
                    Command::Respond { request_id, channel, response, permit } => {
                        // Keep the upload slot until the response is on the wire.
                        if swarm.behaviour_mut().rr.send_response(channel, response).is_err() {
                            tracing::debug!("response channel closed before the response");
                        } else if let Some(p) = permit {
                            upload_permits.insert(request_id, p);
                        }
                    }
                    Command::Providers { key, reply } => {
                        let id = swarm.behaviour_mut().kad.get_providers(kad::RecordKey::new(&key));
                        provider_queries.insert(id, (HashSet::new(), reply));
                    }
                    Command::Provide { key } => {
                        if let Err(e) = swarm.behaviour_mut().kad.start_providing(kad::RecordKey::new(&key)) {
                            tracing::warn!(%e, "start_providing failed");
                        }
                    }
                    Command::Unprovide { key } => {
                        swarm.behaviour_mut().kad.stop_providing(&kad::RecordKey::new(&key));
                    }
                    Command::Dial { addr } => {
                        if let Err(e) = swarm.dial(addr.clone()) {
                            tracing::warn!(%addr, %e, "dial failed");
                        }
                    }
                    Command::Disconnect { peer } => {
                        let _ = swarm.disconnect_peer_id(peer);
                    }
                }
            }
            _ = announce.tick() => {
                // A LAN peer whose first dial failed would otherwise wait for
                // mDNS's next query (5 min): dial it again while its record lives.
                let lan: Vec<PeerId> = swarm
                    .behaviour()
                    .mdns
                    .as_ref()
                    .map(|m| m.discovered_nodes().copied().collect())
                    .unwrap_or_default();
                for peer in lan {
                    if !swarm.is_connected(&peer) {
                        let _ = swarm.dial(peer);
                    }
                }
                if peers_changed && last_announce.is_none_or(|t| t.elapsed() >= REANNOUNCE_EVERY) {
                    let Some(sh) = shared.upgrade() else { break };
                    for key in sh.store.provided() {
                        let _ = swarm.behaviour_mut().kad.start_providing(kad::RecordKey::new(&key));
                    }
                    peers_changed = false;
                    last_announce = Some(Instant::now());
                }
            }
            ev = swarm.select_next_some() => {
                let Some(sh) = shared.upgrade() else { break };
                match ev {
                    SwarmEvent::NewListenAddr { address, .. } => {
                        let mut net = lock(&sh.net);
                        if !net.listen.contains(&address) {
                            net.listen.push(address);
                        }
                    }
                    SwarmEvent::ExpiredListenAddr { address, .. } => {
                        lock(&sh.net).listen.retain(|a| a != &address);
                    }
                    SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                        *lock(&sh.net).connected.entry(peer_id).or_default() += 1;
                        if endpoint.is_dialer() {
                            swarm.behaviour_mut().kad.add_address(&peer_id, endpoint.get_remote_address().clone());
                        }
                    }
                    SwarmEvent::ConnectionClosed { peer_id, num_established, .. } => {
                        let mut net = lock(&sh.net);
                        if num_established == 0 {
                            net.connected.remove(&peer_id);
                        } else {
                            net.connected.insert(peer_id, num_established as usize);
                        }
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                        for a in info.listen_addrs {
                            if is_dialable(&a) {
                                swarm.behaviour_mut().kad.add_address(&peer_id, a);
                            }
                        }
                        peers_changed = true;
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
                        for (peer, addr) in list {
                            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                            if !swarm.is_connected(&peer) {
                                let _ = swarm.dial(addr);
                            }
                        }
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                        id,
                        result: QueryResult::GetProviders(res),
                        step,
                        ..
                    })) => {
                        if let Some((acc, _)) = provider_queries.get_mut(&id) {
                            if let Ok(GetProvidersOk::FoundProviders { providers, .. }) = res {
                                acc.extend(providers);
                            }
                        }
                        if step.last {
                            if let Some((acc, reply)) = provider_queries.remove(&id) {
                                let _ = reply.send(acc);
                            }
                        } else if provider_queries.get(&id).is_some_and(|(a, _)| !a.is_empty()) {
                            // Enough to start; the downloader asks again later.
                            if let Some((acc, reply)) = provider_queries.remove(&id) {
                                let _ = reply.send(acc);
                            }
                            if let Some(mut q) = swarm.behaviour_mut().kad.query_mut(&id) {
                                q.finish();
                            }
                        }
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Rr(ev)) => match ev {
                        request_response::Event::Message { message, .. } => match message {
                            request_response::Message::Request { request_id, request, channel } => {
                                if let Some(Command::Respond { channel, response, permit, .. }) =
                                    handle_inbound(&sh, request_id, request, channel)
                                {
                                    if swarm.behaviour_mut().rr.send_response(channel, response).is_ok() {
                                        if let Some(p) = permit {
                                            upload_permits.insert(request_id, p);
                                        }
                                    }
                                }
                            }
                            request_response::Message::Response { request_id, response } => {
                                if let Some(r) = pending.remove(&request_id) {
                                    let _ = r.send(Ok(response));
                                }
                            }
                        },
                        request_response::Event::OutboundFailure { request_id, error, peer, .. } => {
                            tracing::debug!(%peer, %error, "request failed");
                            if let Some(r) = pending.remove(&request_id) {
                                let _ = r.send(Err(error.into()));
                            }
                        }
                        request_response::Event::InboundFailure { request_id, error, peer, .. } => {
                            tracing::debug!(%peer, %error, "inbound request failed");
                            if matches!(error, request_response::InboundFailure::Io(_)) {
                                lock(&sh.counters).bad_requests += 1;
                            }
                            upload_permits.remove(&request_id);
                        }
                        request_response::Event::ResponseSent { request_id, .. } => {
                            upload_permits.remove(&request_id);
                        }
                    },
                    _ => {}
                }
            }
        }
    }
    tracing::info!("swarm task ended");
}

fn is_dialable(a: &Multiaddr) -> bool {
    !a.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}
