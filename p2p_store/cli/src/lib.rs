//! The store sidecar's command line: `pyrsia-store …` (this crate's binary)
//! and `pyrsia store …` / `pyrsia fetch …` (the `pyrsia` binary). Every call
//! to a running store goes through [`p2p_store::client::StoreClient`].

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hyper::body::HttpBody;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use libp2p::Multiaddr;
use p2p_store::api::DEFAULT_API_ADDR;
use p2p_store::cli::{client_token_file, default_store_dir, parse_size, parse_stripe};
use p2p_store::client::{Layout, StoreClient, DEFAULT_API_URL};
use p2p_store::download::{Phase, Progress};
use p2p_store::node::{Config, ConnectionLimits, Node};
use p2p_store::providers::ProviderLimits;
use p2p_store::store::DEFAULT_PARTIAL_TTL;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

/// Arguments of `store start`.
#[derive(Debug, Clone, clap::Args)]
pub struct StartArgs {
    /// Store directory (objects and node key). Default: $HOME/.pyrsia/store.
    #[arg(long, env = "PYRSIA_STORE_DIR")]
    pub data_dir: Option<PathBuf>,
    /// libp2p listen address (repeatable).
    #[arg(long, default_value = "/ip4/0.0.0.0/tcp/44000")]
    pub listen: Vec<Multiaddr>,
    /// Control API address.
    #[arg(long, default_value = DEFAULT_API_ADDR)]
    pub api: SocketAddr,
    /// Bootstrap peer, e.g. /ip4/10.0.0.2/tcp/44000/p2p/12D3… (repeatable).
    #[arg(long)]
    pub bootstrap: Vec<Multiaddr>,
    /// Disk quota (e.g. 50G).
    #[arg(long, default_value = "10G", value_parser = parse_size)]
    pub quota: u64,
    /// Upload cap per second (e.g. 20M); unlimited when absent.
    #[arg(long, value_parser = parse_size)]
    pub upload_rate: Option<u64>,
    /// Concurrent stripe uploads served.
    #[arg(long, default_value_t = 16)]
    pub max_uploads: usize,
    /// Stripe size for artifacts put on this node (4K..16M).
    #[arg(long, default_value = "1M", value_parser = parse_stripe)]
    pub stripe_size: u32,
    /// Stripe requests in flight per peer when downloading.
    #[arg(long, default_value_t = 4)]
    pub inflight_per_peer: usize,
    /// Disable mDNS discovery of peers on the local network (no multicast is
    /// sent or answered; peers then come only from --bootstrap and Kademlia).
    /// Also PYRSIA_STORE_NO_MDNS=1 (or true/yes/on; 0/false/no/off keep it on).
    #[arg(long, env = "PYRSIA_STORE_NO_MDNS", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_mdns: bool,
    /// Write {peer_id, listen_addrs, api, api_token_file} as JSON here once ready.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// File holding the control API's bearer token (created, mode 0600, on
    /// first start; refused if group or others may read it).
    /// Default: DATA_DIR/api-token.
    #[arg(long)]
    pub api_token_file: Option<PathBuf>,
    /// Seconds a partial download may go without progress before it is
    /// removed and its reserved quota freed.
    #[arg(long, default_value_t = DEFAULT_PARTIAL_TTL.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub partial_ttl: u64,
    /// Established inbound libp2p connections accepted, all peers together.
    #[arg(long, default_value_t = ConnectionLimits::default().max_inbound, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_inbound_connections: u32,
    /// Inbound libp2p connections accepted while still in their handshake.
    #[arg(long, default_value_t = ConnectionLimits::default().max_pending_inbound, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pending_connections: u32,
    /// Established libp2p connections with one peer (both directions).
    #[arg(long, default_value_t = ConnectionLimits::default().max_per_peer, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_peer: u32,
    /// Kademlia provider records kept for other peers, in total (our own
    /// are kept apart and not counted).
    #[arg(long, default_value_t = ProviderLimits::default().max_records)]
    pub max_provider_records: usize,
    /// Other peers' provider records kept for one artifact.
    #[arg(long, default_value_t = ProviderLimits::default().max_per_key)]
    pub max_providers_per_key: usize,
    /// Provider records kept for one other peer.
    #[arg(long, default_value_t = ProviderLimits::default().max_per_peer)]
    pub max_provider_records_per_peer: usize,
}

impl StartArgs {
    fn dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_store_dir)
    }

    /// Where the control API token is kept.
    pub fn token_file(&self) -> PathBuf {
        self.api_token_file
            .clone()
            .unwrap_or_else(|| p2p_store::api::token_path(&self.dir()))
    }

    /// Node configuration from the arguments.
    pub fn config(&self) -> Config {
        let mut c = Config::new(self.dir());
        c.listen = self.listen.clone();
        c.bootstrap = self.bootstrap.clone();
        c.quota = self.quota;
        c.mdns = !self.no_mdns;
        c.max_uploads = self.max_uploads;
        c.upload_rate = self.upload_rate;
        c.stripe_size = self.stripe_size;
        c.inflight_per_peer = self.inflight_per_peer;
        c.partial_ttl = Duration::from_secs(self.partial_ttl);
        c.connection_limits = ConnectionLimits {
            max_inbound: self.max_inbound_connections,
            max_pending_inbound: self.max_pending_connections,
            max_per_peer: self.max_connections_per_peer,
        };
        c.provider_limits = ProviderLimits {
            max_records: self.max_provider_records,
            max_per_key: self.max_providers_per_key,
            max_per_peer: self.max_provider_records_per_peer,
            ..ProviderLimits::default()
        };
        c
    }

    /// Runs the store node and its API until Ctrl-C / SIGTERM.
    pub async fn run(self) -> anyhow::Result<()> {
        let dir = self.dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let token_file = self.token_file();
        let token = p2p_store::api::load_or_create_token(&token_file)?;
        let node = Node::start(self.config()).await?;
        let (addr, server) = p2p_store::api::bind(node.clone(), self.api, &token)?;
        let listen: Vec<String> = node.listen_addrs().iter().map(|a| a.to_string()).collect();
        tracing::info!(peer_id = %node.peer_id(), api = %addr, ?listen, "store ready");
        if let Some(p) = &self.ready_file {
            let j = serde_json::json!({
                "peer_id": node.peer_id().to_string(),
                "listen_addrs": listen,
                "api": format!("http://{addr}"),
                "api_token_file": token_file.display().to_string(),
            });
            let tmp = p.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec(&j)?)?;
            std::fs::rename(&tmp, p)?;
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = server => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        node.shutdown();
        Ok(())
    }
}

/// `pyrsia store …`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum StoreCommand {
    /// Run the store sidecar (libp2p node + control API).
    Start(StartArgs),
    /// Put a file into the local store (via the control API).
    Put {
        /// File to put.
        file: PathBuf,
        /// Stripe size (default: the node's).
        #[arg(long, value_parser = parse_stripe)]
        stripe_size: Option<u32>,
        /// Allow eviction (by default a put artifact is pinned).
        #[arg(long)]
        unpinned: bool,
        /// Machine-readable output (the binary's global `--json`).
        #[arg(skip)]
        json: bool,
        /// Control API URL.
        #[arg(long, default_value = DEFAULT_API_URL, env = "PYRSIA_STORE_API")]
        api: String,
        /// The store's API token file (default: the default store
        /// directory's api-token, see README).
        #[arg(long, env = "PYRSIA_STORE_TOKEN_FILE")]
        token_file: Option<PathBuf>,
    },
    /// Show the store's status.
    Status {
        #[arg(skip)]
        json: bool,
        #[arg(long, default_value = DEFAULT_API_URL, env = "PYRSIA_STORE_API")]
        api: String,
        /// Accepted for symmetry with `put`; status needs no token.
        #[arg(long, env = "PYRSIA_STORE_TOKEN_FILE")]
        token_file: Option<PathBuf>,
    },
}

impl StoreCommand {
    /// Sets machine-readable output; the `--json` flag belongs to the binary.
    pub fn with_json(mut self, on: bool) -> Self {
        if let StoreCommand::Put { json, .. } | StoreCommand::Status { json, .. } = &mut self {
            *json = on;
        }
        self
    }

    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            StoreCommand::Start(a) => a.run().await,
            StoreCommand::Put {
                file,
                stripe_size,
                unpinned,
                json,
                api,
                token_file,
            } => {
                let put = client(&api, token_file.as_deref())
                    .put_file(&file, !unpinned, stripe_size)
                    .await?;
                if json {
                    println!("{}", serde_json::to_string(&put)?);
                } else {
                    println!("sha256       {}", put.sha256);
                    println!("size         {}", put.size);
                    println!("stripe_size  {}", put.stripe_size);
                    println!("stripe_root  {}", put.stripe_root);
                }
                Ok(())
            }
            StoreCommand::Status { json, api, .. } => {
                let s = StoreClient::new(&api).status().await?;
                if json {
                    println!("{}", serde_json::to_string(&s)?);
                } else {
                    println!("peer id      {}", s.peer_id);
                    for a in &s.listen_addrs {
                        println!("listening    {a}");
                    }
                    println!("peers        {}", s.connected_peers.len());
                    println!("mdns         {}", if s.mdns { "on" } else { "off" });
                    println!("disk         {} / {} bytes", s.disk_used, s.disk_quota);
                    for a in &s.artifacts {
                        println!(
                            "artifact     {} {} bytes {}{}",
                            a.sha256,
                            a.size,
                            if a.complete { "complete" } else { "partial" },
                            if a.pinned { " pinned" } else { "" }
                        );
                    }
                }
                Ok(())
            }
        }
    }
}

/// A client of the API at `api` with the token file `explicit`, else the
/// default store's (see [`client_token_file`]).
fn client(api: &str, explicit: Option<&std::path::Path>) -> StoreClient {
    let c = StoreClient::new(api);
    match client_token_file(explicit) {
        Some(p) => c.with_token_file(p),
        None => c,
    }
}

/// `pyrsia fetch …`
#[derive(Debug, Clone, clap::Args)]
pub struct FetchArgs {
    /// Whole-file SHA-256 (hex).
    #[arg(long)]
    pub sha256: String,
    /// Stripe root (hex), as held by the ledger.
    #[arg(long)]
    pub stripe_root: String,
    /// Expected size in bytes, when known.
    #[arg(long)]
    pub size: Option<u64>,
    /// Expected stripe size, when known.
    #[arg(long, value_parser = parse_stripe)]
    pub stripe_size: Option<u32>,
    /// Output file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Keep the artifact in the store (never evicted).
    #[arg(long)]
    pub pin: bool,
    /// Machine-readable output, no progress bar (the binary's global `--json`).
    #[arg(skip)]
    pub json: bool,
    /// Control API URL of the local store.
    #[arg(long, default_value = DEFAULT_API_URL, env = "PYRSIA_STORE_API")]
    pub api: String,
    /// The store's API token file (default: the default store
    /// directory's api-token, see README).
    #[arg(long, env = "PYRSIA_STORE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl FetchArgs {
    /// Sets machine-readable output; the `--json` flag belongs to the binary.
    pub fn with_json(mut self, on: bool) -> Self {
        self.json = on;
        self
    }

    pub async fn run(self) -> anyhow::Result<()> {
        let store = client(&self.api, self.token_file.as_deref());
        self.run_with(&store).await
    }

    /// Like [`FetchArgs::run`], through `store` (its API and token; `api`
    /// and `token_file` are not read).
    pub async fn run_with(self, store: &StoreClient) -> anyhow::Result<()> {
        let layout = Layout {
            stripe_root: self.stripe_root.clone(),
            size: self.size,
            stripe_size: self.stripe_size,
            pin: self.pin,
        };
        let start = Instant::now();
        store.start_fetch(&self.sha256, &layout).await?;
        let bar = progress_bar(self.json);
        let progress: Progress = loop {
            let p = store.fetch_progress(&self.sha256).await?;
            show(&bar, &p);
            match p.phase {
                Phase::Done => break p,
                Phase::Failed => {
                    bar.abandon();
                    bail!("fetch failed: {}", p.error.unwrap_or_default());
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        bar.finish_and_clear();
        // Stream the verified bytes out, checking the digest once more.
        let mut body = store.artifact(&self.sha256, &layout).await?;
        let part = self.output.with_extension("part");
        let mut out = tokio::fs::File::create(&part)
            .await
            .with_context(|| format!("create {}", part.display()))?;
        let mut h = Sha256::new();
        let mut n = 0u64;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.context("reading the artifact from the store")?;
            h.update(&chunk);
            n += chunk.len() as u64;
            out.write_all(&chunk).await?;
        }
        out.flush().await?;
        drop(out);
        let got = hex::encode(h.finalize());
        if !got.eq_ignore_ascii_case(&self.sha256) {
            let _ = tokio::fs::remove_file(&part).await;
            bail!(
                "sha256 of the received file is {got}, expected {}",
                self.sha256
            );
        }
        tokio::fs::rename(&part, &self.output).await?;
        let el = start.elapsed();
        if self.json {
            println!(
                "{}",
                serde_json::json!({
                    "sha256": got,
                    "size": n,
                    "output": self.output.display().to_string(),
                    "elapsed_ms": el.as_millis() as u64,
                    "stripes_total": progress.stripes_total,
                    "stripes_fetched": progress.stripes_fetched,
                    "stripes_resumed": progress.stripes_resumed,
                    "per_peer": progress.per_peer,
                    "bad_peers": progress.bad_peers,
                })
            );
        } else {
            println!(
                "{} bytes -> {} in {:.2}s ({} stripes from {} peer(s), {} already local)",
                n,
                self.output.display(),
                el.as_secs_f64(),
                progress.stripes_fetched,
                progress.per_peer.len(),
                progress.stripes_resumed
            );
        }
        Ok(())
    }
}

/// A download's progress bar (bytes, rate, peers, ETA) on stderr, drawn
/// only when stderr is a terminal and the output is not `--json`.
pub fn progress_bar(json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "[{bar:25}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
    ) {
        bar.set_style(style.progress_chars("#>-"));
    }
    bar
}

/// Moves `bar` to `p`: the bytes verified so far (resumed stripes
/// included) of the artifact's size, the peers serving and the phase.
pub fn show(bar: &ProgressBar, p: &Progress) {
    bar.set_length(p.size);
    let done = p
        .stripes_done
        .min(p.stripes_total)
        .saturating_mul(u64::from(p.stripe_size))
        .min(p.size);
    bar.set_position(done);
    bar.set_message(format!("{} peer(s) {:?}", p.peers, p.phase));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_counts_verified_bytes_up_to_the_size() {
        let bar = ProgressBar::hidden();
        let mut p = Progress {
            sha256: String::new(),
            stripe_root: String::new(),
            phase: Phase::Stripes,
            error: None,
            size: 10_000,
            stripe_size: 4096,
            stripes_total: 3,
            stripes_done: 2,
            stripes_resumed: 1,
            stripes_fetched: 1,
            bytes_fetched: 4096,
            peers: 2,
            per_peer: Default::default(),
            bad_peers: Vec::new(),
            elapsed_ms: 0,
        };
        show(&bar, &p);
        assert_eq!((bar.position(), bar.length()), (8192, Some(10_000)));
        p.stripes_done = 3;
        show(&bar, &p);
        assert_eq!(bar.position(), 10_000);
        assert_eq!(bar.message(), "2 peer(s) Stripes");
    }
}
