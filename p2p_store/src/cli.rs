//! Command-line front-ends, wired into `pyrsia store …` / `pyrsia fetch …`
//! and the crate's own `pyrsia-store` binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use hyper::body::HttpBody;
use hyper::{Body, Method, StatusCode};
use libp2p::Multiaddr;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::api::DEFAULT_API_ADDR;
use crate::download::{Phase, Progress};
use crate::node::{Config, ConnectionLimits, Node};
use crate::providers::ProviderLimits;
use crate::store::DEFAULT_PARTIAL_TTL;

const DEFAULT_API_URL: &str = "http://127.0.0.1:7889";

/// Parses `123`, `4k`, `4KiB`, `10M`, `2G`, `1T` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        u => return Err(format!("unknown size unit {u:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} overflows"))
}

fn parse_stripe(s: &str) -> Result<u32, String> {
    let v = parse_size(s)?;
    let v = u32::try_from(v).map_err(|_| format!("stripe size {s:?} too large"))?;
    crate::manifest::check_stripe_size(v).map_err(|e| e.to_string())?;
    Ok(v)
}

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

/// The store directory used when none is given: `$PYRSIA_STORE_DIR`, else
/// `$HOME/.pyrsia/store` (the default node home's own store).
pub fn default_store_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PYRSIA_STORE_DIR") {
        return PathBuf::from(d);
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".pyrsia")
        .join("store")
}

/// The token a client sends: from `explicit` (a `--token-file` or
/// `PYRSIA_STORE_TOKEN_FILE`), which must be readable, else from the
/// default store's token file when there is one, else none (mutating calls
/// then get 401).
pub fn client_token(explicit: Option<&Path>) -> anyhow::Result<Option<String>> {
    if let Some(p) = explicit {
        return Ok(Some(crate::api::read_token(p)?));
    }
    let p = crate::api::token_path(&default_store_dir());
    if p.exists() {
        Ok(Some(crate::api::read_token(&p)?))
    } else {
        Ok(None)
    }
}

impl StartArgs {
    fn dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_store_dir)
    }

    /// Where the control API token is kept.
    pub fn token_file(&self) -> PathBuf {
        self.api_token_file
            .clone()
            .unwrap_or_else(|| crate::api::token_path(&self.dir()))
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
        let token = crate::api::load_or_create_token(&token_file)?;
        let node = Node::start(self.config()).await?;
        let (addr, server) = crate::api::bind(node.clone(), self.api, &token)?;
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
                let token = client_token(token_file.as_deref())?;
                let f = tokio::fs::File::open(&file)
                    .await
                    .with_context(|| format!("open {}", file.display()))?;
                let body =
                    Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024));
                let mut url = format!("{}/artifacts?pin={}", api.trim_end_matches('/'), !unpinned);
                if let Some(ss) = stripe_size {
                    url.push_str(&format!("&stripe_size={ss}"));
                }
                let (status, bytes) = http(Method::PUT, &url, body, token.as_deref()).await?;
                let v = expect_json(status, &bytes)?;
                if json {
                    println!("{v}");
                } else {
                    println!("sha256       {}", v["sha256"].as_str().unwrap_or_default());
                    println!("size         {}", v["size"]);
                    println!("stripe_size  {}", v["stripe_size"]);
                    println!(
                        "stripe_root  {}",
                        v["stripe_root"].as_str().unwrap_or_default()
                    );
                }
                Ok(())
            }
            StoreCommand::Status { json, api, .. } => {
                let url = format!("{}/status", api.trim_end_matches('/'));
                let (status, bytes) = http(Method::GET, &url, Body::empty(), None).await?;
                let v = expect_json(status, &bytes)?;
                if json {
                    println!("{v}");
                } else {
                    println!("peer id      {}", v["peer_id"].as_str().unwrap_or_default());
                    for a in v["listen_addrs"].as_array().into_iter().flatten() {
                        println!("listening    {}", a.as_str().unwrap_or_default());
                    }
                    println!(
                        "peers        {}",
                        v["connected_peers"].as_array().map_or(0, |a| a.len())
                    );
                    println!(
                        "mdns         {}",
                        if v["mdns"].as_bool() == Some(true) {
                            "on"
                        } else {
                            "off"
                        }
                    );
                    println!(
                        "disk         {} / {} bytes",
                        v["disk_used"], v["disk_quota"]
                    );
                    for a in v["artifacts"].as_array().into_iter().flatten() {
                        println!(
                            "artifact     {} {} bytes {}{}",
                            a["sha256"].as_str().unwrap_or_default(),
                            a["size"],
                            if a["complete"].as_bool() == Some(true) {
                                "complete"
                            } else {
                                "partial"
                            },
                            if a["pinned"].as_bool() == Some(true) {
                                " pinned"
                            } else {
                                ""
                            }
                        );
                    }
                }
                Ok(())
            }
        }
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
        let token = client_token(self.token_file.as_deref())?;
        self.run_with_token(token).await
    }

    /// Like [`FetchArgs::run`], with the token already found (`None`: send
    /// none; the store then refuses to start the download).
    pub async fn run_with_token(self, token: Option<String>) -> anyhow::Result<()> {
        let token = token.as_deref();
        let api = self.api.trim_end_matches('/');
        let mut q = format!("stripe_root={}&pin={}", self.stripe_root, self.pin);
        if let Some(s) = self.size {
            q.push_str(&format!("&size={s}"));
        }
        if let Some(s) = self.stripe_size {
            q.push_str(&format!("&stripe_size={s}"));
        }
        let start = Instant::now();
        let (status, bytes) = http(
            Method::POST,
            &format!("{api}/fetch/{}?{q}", self.sha256),
            Body::empty(),
            token,
        )
        .await?;
        expect_json(status, &bytes)?;
        let progress: Progress = loop {
            let (status, bytes) = http(
                Method::GET,
                &format!("{api}/fetch/{}", self.sha256),
                Body::empty(),
                None,
            )
            .await?;
            let v = expect_json(status, &bytes)?;
            let p: Progress = serde_json::from_value(v).context("progress")?;
            if !self.json {
                let el = start.elapsed().as_secs_f64().max(1e-3);
                let done = p.stripes_done.min(p.stripes_total);
                let pct = (done * 100).checked_div(p.stripes_total).unwrap_or(0);
                let bar = "#".repeat((pct / 4) as usize);
                eprint!(
                    "\r[{bar:<25}] {pct:>3}% {:>8.1} MiB  {:>7.1} MiB/s  {} peer(s)  {:?}   ",
                    p.bytes_fetched as f64 / 1048576.0,
                    p.bytes_fetched as f64 / 1048576.0 / el,
                    p.peers,
                    p.phase
                );
            }
            match p.phase {
                Phase::Done => break p,
                Phase::Failed => {
                    if !self.json {
                        eprintln!();
                    }
                    bail!("fetch failed: {}", p.error.unwrap_or_default());
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        if !self.json {
            eprintln!();
        }
        // Stream the verified bytes out, checking the digest once more.
        let url = format!("{api}/artifacts/{}?{q}", self.sha256);
        let client = hyper::Client::new();
        let req = hyper::Request::builder()
            .method(Method::GET)
            .uri(&url)
            .body(Body::empty())?;
        let mut resp = client
            .request(req)
            .await
            .with_context(|| format!("GET {url}"))?;
        if resp.status() != StatusCode::OK {
            let b = hyper::body::to_bytes(resp.into_body()).await?;
            bail!("GET {url}: {}", String::from_utf8_lossy(&b));
        }
        let part = self.output.with_extension("part");
        let mut out = tokio::fs::File::create(&part)
            .await
            .with_context(|| format!("create {}", part.display()))?;
        let mut h = Sha256::new();
        let mut n = 0u64;
        while let Some(chunk) = resp.body_mut().data().await {
            let chunk = chunk?;
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

async fn http(
    method: Method,
    url: &str,
    body: Body,
    token: Option<&str>,
) -> anyhow::Result<(StatusCode, bytes::Bytes)> {
    let client = hyper::Client::new();
    let mut req = hyper::Request::builder().method(method.clone()).uri(url);
    if let Some(t) = token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req.body(body)?;
    let resp = client
        .request(req)
        .await
        .with_context(|| format!("{method} {url} (is `pyrsia store start` running?)"))?;
    let status = resp.status();
    let bytes = hyper::body::to_bytes(resp.into_body()).await?;
    Ok((status, bytes))
}

fn expect_json(status: StatusCode, bytes: &[u8]) -> anyhow::Result<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        anyhow!(
            "HTTP {status}: not JSON ({e}): {}",
            String::from_utf8_lossy(bytes)
        )
    })?;
    if !status.is_success() {
        let hint = if status == StatusCode::UNAUTHORIZED {
            " (give the store's api-token file with --token-file or PYRSIA_STORE_TOKEN_FILE)"
        } else {
            ""
        };
        bail!(
            "HTTP {status}: {}{hint}",
            v["error"].as_str().unwrap_or("unknown error")
        );
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10").unwrap(), 10);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999999T").is_err());
        assert!(parse_stripe("1k").is_err());
        assert_eq!(parse_stripe("1M").unwrap(), 1 << 20);
    }
}
