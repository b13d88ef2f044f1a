//! Benchmarks of the store (not a test). See README.md "Benchmarks".
//!
//! `loopback`: one artifact fetched from k seeder processes on 127.0.0.1 vs
//! `curl` of the same file from a plain HTTP server on 127.0.0.1, same run.
//! `netns` (root): seeders in their own network namespaces, each behind a
//! veth whose egress is capped with tc tbf; aggregate rate / (k × cap).
//! `hetero` (root): seeders capped at different rates (50, 100, 400 Mbit/s);
//! aggregate rate / sum of the caps.
//! `stall` (root): capped seeders, one of which is SIGSTOPped mid-transfer,
//! against the same download from the others alone, alternated.
//! `small`: 1 000 artifacts of 10 KiB fetched one after another from k
//! seeders on 127.0.0.1 vs one `curl` fetching the same files one after
//! another over a keep-alive connection, alternated.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use p2p_store::cli::parse_size;
use p2p_store::manifest::parse_digest;
use p2p_store::{Config, FetchRequest, Node, PutResult};

#[derive(Debug, Parser)]
#[command(name = "pyrsia-store-bench")]
struct Cli {
    #[command(subcommand)]
    cmd: Bench,
}

#[derive(Debug, clap::Subcommand)]
enum Bench {
    /// Loopback fetch from k seeders vs curl from a plain HTTP server.
    Loopback {
        #[arg(long, default_value = "1G", value_parser = parse_size)]
        size: u64,
        #[arg(long, default_value_t = 2)]
        seeders: usize,
        #[arg(long, default_value = "1M", value_parser = parse_size)]
        stripe_size: u64,
        /// Stripe requests in flight per peer.
        #[arg(long, default_value_t = 4)]
        inflight: usize,
        /// Store and curl fetches, alternated; the median ratio is reported.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Work directory (needs about (seeders + 3) × size of disk).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Capped seeders in network namespaces (needs root, iproute2, tc).
    Netns {
        #[arg(long, default_value = "256M", value_parser = parse_size)]
        size: u64,
        /// Uplink cap of each seeder, Mbit/s.
        #[arg(long, default_value_t = 200)]
        cap_mbit: u64,
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        seeders: Vec<usize>,
        #[arg(long, value_delimiter = ',', default_value = "256K,1M,4M", value_parser = parse_size)]
        stripe_sizes: Vec<u64>,
        /// One-way delay added on each seeder's uplink (netem), ms. 0 (the
        /// default) adds no netem qdisc; anything else needs `sch_netem`.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Seeders with different uplink caps in network namespaces (root):
    /// aggregate rate / sum of the caps.
    Hetero {
        #[arg(long, default_value = "256M", value_parser = parse_size)]
        size: u64,
        /// Uplink cap of each seeder, Mbit/s (one seeder per entry).
        #[arg(long, value_delimiter = ',', default_value = "50,100,400")]
        caps_mbit: Vec<u64>,
        #[arg(long, default_value = "1M", value_parser = parse_size)]
        stripe_size: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Capped seeders in network namespaces (root), the last of which is
    /// SIGSTOPped mid-transfer; against the same download from the others
    /// alone, alternated.
    Stall {
        #[arg(long, default_value = "256M", value_parser = parse_size)]
        size: u64,
        /// Seeders in all, the staller included (at least 2).
        #[arg(long, default_value_t = 3)]
        seeders: usize,
        /// Uplink cap of each seeder, Mbit/s.
        #[arg(long, default_value_t = 200)]
        cap_mbit: u64,
        /// The staller is stopped once this fraction of the artifact is in.
        #[arg(long, default_value_t = 0.25)]
        stall_at: f64,
        #[arg(long, default_value = "1M", value_parser = parse_size)]
        stripe_size: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Many small artifacts fetched one after another from k seeders on
    /// 127.0.0.1 vs one sequential keep-alive `curl` of the same files.
    Small {
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value = "10K", value_parser = parse_size)]
        size: u64,
        #[arg(long, default_value_t = 3)]
        seeders: usize,
        #[arg(long, default_value = "1M", value_parser = parse_size)]
        stripe_size: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// How long one big fetch may take before the bench gives up.
const FETCH_TIMEOUT: Duration = Duration::from_secs(600);
/// How long one small-artifact fetch may take.
const SMALL_FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Fills `buf` with xorshift64 output from state `x` (never 0).
fn fill_pseudo(buf: &mut [u8], x: &mut u64) {
    for c in buf.chunks_mut(8) {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
}

fn make_file(path: &Path, size: u64) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        fill_pseudo(&mut buf, &mut x);
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

/// Writes and deletes `size` bytes of scratch. Run before every timed
/// transfer: in this VM, page-cache pages the guest freed a moment ago are
/// backed by host memory while long-idle free pages are not, and a writer
/// that must fault fresh pages in ran up to 2× slower. Without it, `curl`
/// after a store fetch (which bypasses the page cache) was penalised.
fn warm_free_pages(dir: &Path, size: u64) -> anyhow::Result<()> {
    let scratch = dir.join("scratch");
    let mut f = std::fs::File::create(&scratch)?;
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..size.div_ceil(chunk.len() as u64) {
        f.write_all(&chunk)?;
    }
    drop(f);
    std::fs::remove_file(&scratch)?;
    Ok(())
}

fn store_exe() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let p = me.parent().context("exe dir")?.join("pyrsia-store");
    if !p.exists() {
        bail!(
            "{} not found: build with `cargo build --release -p pyrsia-store-cli`",
            p.display()
        );
    }
    Ok(p)
}

struct Seeder {
    child: Child,
    addr: libp2p::Multiaddr,
    api: String,
    /// The control API's bearer token file (put, pin and fetch need it).
    token_file: PathBuf,
    peer_id: String,
    netns: Option<String>,
}

impl Seeder {
    /// Stripes this seeder delivered in a download.
    fn stripes_in(&self, p: &p2p_store::Progress) -> u64 {
        p.per_peer.get(&self.peer_id).copied().unwrap_or(0)
    }

    /// Sends SIGSTOP (`stop`) or SIGCONT to the seeder process.
    fn signal(&self, stop: bool) -> anyhow::Result<()> {
        let sig = if stop { "-STOP" } else { "-CONT" };
        sh(&["kill", sig, &self.child.id().to_string()])
    }
}

impl Drop for Seeder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed when dropped, unless taken out.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn in_ns(netns: Option<&str>, exe: &Path) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(exe);
            c
        }
        None => Command::new(exe),
    }
}

async fn spawn_seeder(dir: &Path, listen: &str, netns: Option<&str>) -> anyhow::Result<Seeder> {
    std::fs::create_dir_all(dir)?;
    let ready = dir.join("ready.json");
    let _ = std::fs::remove_file(&ready);
    let child = in_ns(netns, &store_exe()?)
        .args([
            "start",
            "--no-mdns",
            "--listen",
            listen,
            "--api",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.join("store"))
        .arg("--ready-file")
        .arg(&ready)
        .args(["--quota", "1T", "--max-uploads", "32"])
        // The bench's own RUST_LOG, else warnings without Kademlia's "no
        // known peers" (the seeders know none until the downloader comes).
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,libp2p_kad=error".into()),
        )
        .stdout(Stdio::null())
        .spawn()?;
    let mut child = KillOnDrop(Some(child));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        if Instant::now() > deadline {
            bail!("seeder did not start within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The ready file is written whole (temp file, then rename).
    let child = child.0.take().context("seeder process")?;
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&ready)?)?;
    let mut seeder = Seeder {
        child,
        addr: "/ip4/127.0.0.1/tcp/1".parse()?,
        api: String::new(),
        token_file: PathBuf::new(),
        peer_id: String::new(),
        netns: netns.map(str::to_string),
    };
    // From here on the process is killed by Seeder's Drop on any error.
    seeder.addr = v["listen_addrs"][0]
        .as_str()
        .context("ready file: listen_addrs")?
        .parse()?;
    seeder.peer_id = v["peer_id"]
        .as_str()
        .context("ready file: peer_id")?
        .to_string();
    seeder.api = v["api"].as_str().context("ready file: api")?.to_string();
    seeder.token_file = v["api_token_file"]
        .as_str()
        .context("ready file: api_token_file")?
        .into();
    Ok(seeder)
}

fn seeder_put(s: &Seeder, file: &Path, stripe_size: u64) -> anyhow::Result<PutResult> {
    let out = in_ns(s.netns.as_deref(), &store_exe()?)
        .arg("put")
        .arg(file)
        .args([
            "--json",
            "--api",
            &s.api,
            "--stripe-size",
            &stripe_size.to_string(),
        ])
        .arg("--token-file")
        .arg(&s.token_file)
        .output()?;
    if !out.status.success() {
        bail!("put failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Puts `data` on a seeder over its control API (127.0.0.1, host
/// namespace), with the bearer token from its token file.
async fn api_put(s: &Seeder, data: Vec<u8>, stripe_size: u64) -> anyhow::Result<PutResult> {
    let token = p2p_store::api::read_token(&s.token_file)?;
    let req = hyper::Request::put(format!(
        "{}/artifacts?stripe_size={stripe_size}&pin=true",
        s.api
    ))
    .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
    .body(hyper::Body::from(data))?;
    let resp = tokio::time::timeout(Duration::from_secs(30), hyper::Client::new().request(req))
        .await
        .context("put timed out")??;
    let status = resp.status();
    let body = hyper::body::to_bytes(resp.into_body()).await?;
    if status != hyper::StatusCode::CREATED {
        bail!("put: HTTP {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(serde_json::from_slice(&body)?)
}

fn fetch_request(put: &PutResult) -> anyhow::Result<FetchRequest> {
    Ok(FetchRequest {
        sha256: parse_digest(&put.sha256).context("sha")?,
        stripe_root: parse_digest(&put.stripe_root).context("root")?,
        size: Some(put.size),
        stripe_size: Some(put.stripe_size),
        pin: false,
    })
}

/// A downloader node in this process, its store removed when dropped.
struct Downloader {
    node: Node,
    dir: PathBuf,
}

impl Drop for Downloader {
    fn drop(&mut self) {
        self.node.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts a downloader with an empty store and waits (≤ 20 s) until it is
/// connected to every one of `seeders`.
async fn start_downloader(
    dir: &Path,
    seeders: &[&Seeder],
    inflight: usize,
) -> anyhow::Result<Downloader> {
    let _ = std::fs::remove_dir_all(dir);
    let mut cfg = Config::new(dir);
    cfg.listen = vec!["/ip4/0.0.0.0/tcp/0".parse()?];
    cfg.mdns = false;
    cfg.quota = 1 << 40;
    cfg.inflight_per_peer = inflight;
    cfg.bootstrap = seeders.iter().map(|s| s.addr.clone()).collect();
    let d = Downloader {
        node: Node::start(cfg).await?,
        dir: dir.to_path_buf(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.node.connected_peers().len() < seeders.len() {
        if Instant::now() > deadline {
            bail!(
                "downloader connected to {} of {}",
                d.node.connected_peers().len(),
                seeders.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(d)
}

/// Starts a downloader, connects to `seeders`, fetches; returns seconds.
async fn fetch_from(
    dir: &Path,
    seeders: &[&Seeder],
    put: &PutResult,
    inflight: usize,
) -> anyhow::Result<(f64, p2p_store::Progress)> {
    let d = start_downloader(dir, seeders, inflight).await?;
    let t = Instant::now();
    let p = tokio::time::timeout(FETCH_TIMEOUT, d.node.fetch(fetch_request(put)?).wait())
        .await
        .context("fetch timed out")??;
    Ok((t.elapsed().as_secs_f64(), p))
}

async fn serve_file(path: PathBuf) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use warp::Filter;
    let route = warp::path("file").and_then(move || {
        let path = path.clone();
        async move {
            let f = tokio::fs::File::open(&path)
                .await
                .map_err(|_| warp::reject::not_found())?;
            let len = f
                .metadata()
                .await
                .map_err(|_| warp::reject::not_found())?
                .len();
            let body = hyper::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
                f,
                256 * 1024,
            ));
            let mut r = warp::reply::Response::new(body);
            r.headers_mut()
                .insert(warp::http::header::CONTENT_LENGTH, len.into());
            Ok::<_, warp::Rejection>(r)
        }
    });
    let (addr, fut) = warp::serve(route).try_bind_ephemeral(([127, 0, 0, 1], 0))?;
    Ok((addr, tokio::spawn(fut)))
}

fn mib_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1048576.0 / secs
}

/// The bench's scratch directory (gigabytes of artifact copies), removed
/// however the bench ends, also on an error.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create(path: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }
}

impl std::ops::Deref for WorkDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn loopback(
    size: u64,
    k: usize,
    ss: u64,
    inflight: usize,
    rounds: usize,
    dir: PathBuf,
) -> anyhow::Result<()> {
    let work = WorkDir::create(dir.join(format!("pyrsia-bench-{}", std::process::id())))?;
    let file = work.join("artifact");
    eprintln!("writing {} MiB test file…", size >> 20);
    make_file(&file, size)?;
    let mut seeders = Vec::new();
    for i in 0..k {
        let s = spawn_seeder(
            &work.join(format!("seeder{i}")),
            "/ip4/127.0.0.1/tcp/0",
            None,
        )
        .await?;
        seeder_put(&s, &file, ss)?;
        seeders.push(s);
    }
    let put = seeder_put(&seeders[0], &file, ss)?;
    let refs: Vec<&Seeder> = seeders.iter().collect();
    let (addr, server) = serve_file(file.clone()).await?;
    let out = work.join("curl.out");
    // The two sides alternate, so that a burst of load from elsewhere on the
    // machine lands on both; the median ratio is the figure.
    let mut ratios = Vec::with_capacity(rounds);
    for round in 1..=rounds.max(1) {
        warm_free_pages(&work, size)?;
        eprintln!("round {round}: fetching from {k} seeder(s)…");
        let (secs, p) = fetch_from(&work.join("downloader"), &refs, &put, inflight).await?;
        let store_rate = mib_s(size, secs);
        warm_free_pages(&work, size)?;
        let t = Instant::now();
        let st = Command::new("curl")
            .args(["-s", "-o"])
            .arg(&out)
            .arg(format!("http://{addr}/file"))
            .status()?;
        let curl_secs = t.elapsed().as_secs_f64();
        if !st.success() || std::fs::metadata(&out)?.len() != size {
            bail!("curl failed");
        }
        std::fs::remove_file(&out)?;
        let curl_rate = mib_s(size, curl_secs);
        let ratio = store_rate / curl_rate;
        ratios.push(ratio);
        println!(
            "loopback round {round} size={}MiB seeders={k} stripe={}KiB inflight={inflight}: store {:.1} MiB/s ({:.2}s, stripes/peer {:?}), curl {:.1} MiB/s ({:.2}s), ratio {:.2}",
            size >> 20,
            ss >> 10,
            store_rate,
            secs,
            p.per_peer.values().collect::<Vec<_>>(),
            curl_rate,
            curl_secs,
            ratio
        );
    }
    server.abort();
    drop(seeders);
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    println!(
        "loopback median ratio {median:.2} over {} rounds",
        sorted.len()
    );
    println!(
        "{}",
        serde_json::json!({"bench": "loopback", "size": size, "seeders": k, "stripe_size": ss,
            "inflight": inflight, "ratios": ratios, "median_ratio": median})
    );
    Ok(())
}

fn sh(args: &[&str]) -> anyhow::Result<()> {
    let st = Command::new(args[0]).args(&args[1..]).status()?;
    if !st.success() {
        bail!("`{}` failed", args.join(" "));
    }
    Ok(())
}

struct Netns(Vec<String>);

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// One namespace per entry of `caps_mbit` (seeder i at 10.203.i.2, the host
/// end at 10.203.i.1), its uplink capped at that rate. Deleted on drop.
fn setup_netns(caps_mbit: &[u64], delay_ms: u64) -> anyhow::Result<Netns> {
    let tag = std::process::id() % 1000;
    let mut made = Netns(Vec::new());
    for (i, &cap_mbit) in caps_mbit.iter().enumerate() {
        let ns = format!("pyb{tag}s{i}");
        let host = format!("pyb{tag}h{i}");
        let peer = format!("pyb{tag}n{i}");
        // A namespace left by an earlier bench with the same pid tag.
        let _ = Command::new("ip")
            .args(["netns", "del", &ns])
            .stderr(Stdio::null())
            .status();
        sh(&["ip", "netns", "add", &ns])?;
        made.0.push(ns.clone());
        sh(&[
            "ip", "link", "add", &host, "type", "veth", "peer", "name", &peer,
        ])?;
        sh(&["ip", "link", "set", &peer, "netns", &ns])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("10.203.{i}.1/24"),
            "dev",
            &host,
        ])?;
        sh(&["ip", "link", "set", &host, "up"])?;
        let ex = |a: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", ns.as_str()];
            v.extend_from_slice(a);
            sh(&v)
        };
        ex(&[
            "ip",
            "addr",
            "add",
            &format!("10.203.{i}.2/24"),
            "dev",
            &peer,
        ])?;
        ex(&["ip", "link", "set", &peer, "up"])?;
        ex(&["ip", "link", "set", "lo", "up"])?;
        // The seeder's uplink: egress of its veth end, token bucket at the cap
        // (behind a netem delay when asked).
        let rate = format!("{cap_mbit}mbit");
        let tbf = [
            "tbf",
            "rate",
            rate.as_str(),
            "burst",
            "256kb",
            "latency",
            "100ms",
        ];
        if delay_ms > 0 {
            let delay = format!("{delay_ms}ms");
            let netem = [
                "tc",
                "qdisc",
                "add",
                "dev",
                peer.as_str(),
                "root",
                "handle",
                "1:",
            ];
            ex(&[
                &netem[..],
                &["netem", "delay", delay.as_str(), "limit", "100000"],
            ]
            .concat())
            .context("--delay-ms needs the sch_netem kernel module; use --delay-ms 0")?;
            let child = [
                "tc",
                "qdisc",
                "add",
                "dev",
                peer.as_str(),
                "parent",
                "1:",
                "handle",
                "2:",
            ];
            ex(&[&child[..], &tbf[..]].concat())?;
        } else {
            let root = ["tc", "qdisc", "add", "dev", peer.as_str(), "root"];
            ex(&[&root[..], &tbf[..]].concat())?;
        }
    }
    Ok(made)
}

async fn netns(
    size: u64,
    cap_mbit: u64,
    ks: Vec<usize>,
    sss: Vec<u64>,
    delay_ms: u64,
    dir: PathBuf,
) -> anyhow::Result<()> {
    let nmax = ks.iter().copied().max().unwrap_or(1);
    let work = WorkDir::create(dir.join(format!("pyrsia-bench-ns-{}", std::process::id())))?;
    let file = work.join("artifact");
    make_file(&file, size)?;
    let nss = setup_netns(&vec![cap_mbit; nmax], delay_ms)?;
    let mut seeders = Vec::new();
    for (i, ns) in nss.0.iter().enumerate() {
        seeders.push(
            spawn_seeder(
                &work.join(format!("seeder{i}")),
                &format!("/ip4/10.203.{i}.2/tcp/44000"),
                Some(ns),
            )
            .await?,
        );
    }
    let cap_bytes = cap_mbit as f64 * 1e6 / 8.0;
    let mut rows = Vec::new();
    for &ss in &sss {
        let mut put = None;
        for s in &seeders {
            put = Some(seeder_put(s, &file, ss)?);
        }
        let put = put.context("no seeders")?;
        for &k in &ks {
            let refs: Vec<&Seeder> = seeders.iter().take(k).collect();
            let (secs, p) = fetch_from(&work.join("downloader"), &refs, &put, 4).await?;
            let rate = size as f64 / secs;
            let ratio = rate / (k as f64 * cap_bytes);
            println!(
                "netns cap={cap_mbit}Mbit/s delay={delay_ms}ms stripe={}KiB k={k}: {:.2} MB/s in {:.2}s, ratio {:.3} (stripes/peer {:?})",
                ss >> 10,
                rate / 1e6,
                secs,
                ratio,
                p.per_peer.values().collect::<Vec<_>>()
            );
            rows.push(
                serde_json::json!({"stripe_size": ss, "k": k, "mb_s": rate / 1e6, "ratio": ratio}),
            );
        }
    }
    drop(seeders);
    drop(nss);
    println!(
        "{}",
        serde_json::json!({"bench": "netns", "size": size, "cap_mbit": cap_mbit, "delay_ms": delay_ms, "rows": rows})
    );
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let i = ((s.len() - 1) as f64 * p).round() as usize;
    s[i.min(s.len() - 1)]
}

/// Seeders in namespaces, one per cap, each holding `file` (stripe size
/// `ss`). Drop order: the seeders (declared last) go before the namespaces.
async fn netns_seeders(
    work: &Path,
    file: &Path,
    caps_mbit: &[u64],
    ss: u64,
) -> anyhow::Result<(Netns, Vec<Seeder>, PutResult)> {
    let nss = setup_netns(caps_mbit, 0)?;
    let mut seeders = Vec::new();
    let mut put = None;
    for (i, ns) in nss.0.iter().enumerate() {
        let s = spawn_seeder(
            &work.join(format!("seeder{i}")),
            &format!("/ip4/10.203.{i}.2/tcp/44000"),
            Some(ns),
        )
        .await?;
        put = Some(seeder_put(&s, file, ss)?);
        seeders.push(s);
    }
    Ok((nss, seeders, put.context("no seeders")?))
}

async fn hetero(
    size: u64,
    caps_mbit: Vec<u64>,
    ss: u64,
    rounds: usize,
    dir: PathBuf,
) -> anyhow::Result<()> {
    if caps_mbit.is_empty() || caps_mbit.contains(&0) {
        bail!("--caps-mbit needs at least one cap, none 0");
    }
    let work = WorkDir::create(dir.join(format!("pyrsia-bench-het-{}", std::process::id())))?;
    let file = work.join("artifact");
    make_file(&file, size)?;
    let (nss, seeders, put) = netns_seeders(&work, &file, &caps_mbit, ss).await?;
    let refs: Vec<&Seeder> = seeders.iter().collect();
    let sum_mbit: u64 = caps_mbit.iter().sum();
    let sum_bytes = sum_mbit as f64 * 1e6 / 8.0;
    let mut ratios = Vec::new();
    for round in 1..=rounds.max(1) {
        let d = start_downloader(&work.join("downloader"), &refs, 4).await?;
        let t = Instant::now();
        let p = tokio::time::timeout(FETCH_TIMEOUT, d.node.fetch(fetch_request(&put)?).wait())
            .await
            .context("fetch timed out")??;
        let secs = t.elapsed().as_secs_f64();
        // Stripes per seeder, in the order of the caps.
        let shares: Vec<u64> = seeders.iter().map(|s| s.stripes_in(&p)).collect();
        drop(d);
        let rate = size as f64 / secs;
        let ratio = rate / sum_bytes;
        ratios.push(ratio);
        println!(
            "hetero round {round} caps={caps_mbit:?}Mbit/s (sum {sum_mbit}) size={}MiB stripe={}KiB: {:.2} MB/s in {:.2}s, ratio to sum of caps {:.3} (stripes per seeder {shares:?})",
            size >> 20,
            ss >> 10,
            rate / 1e6,
            secs,
            ratio,
        );
    }
    let med = median(&ratios);
    println!("hetero median ratio {med:.3} over {} rounds", ratios.len());
    drop(seeders);
    drop(nss);
    println!(
        "{}",
        serde_json::json!({"bench": "hetero", "size": size, "caps_mbit": caps_mbit, "stripe_size": ss,
            "ratios": ratios, "median_ratio": med})
    );
    Ok(())
}
/// SIGCONTs a stopped seeder when dropped (also on an error).
struct ContOnDrop<'a>(&'a Seeder);

impl Drop for ContOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.signal(false);
    }
}

/// Times of one download: all of it, and when its last stripe was stored
/// (the rest is the whole-file check's tail), and, with a staller, when it
/// was stopped and how many bytes were in by then.
struct Timed {
    secs: f64,
    last_stripe: f64,
    stop: Option<(f64, u64)>,
    progress: p2p_store::Progress,
}

/// One download from `seeders` through a fresh downloader. With `stall_at`,
/// the last seeder is SIGSTOPped once that fraction of the artifact is in
/// and SIGCONTed after the download.
async fn fetch_timed(
    dir: &Path,
    seeders: &[&Seeder],
    put: &PutResult,
    stall_at: Option<f64>,
) -> anyhow::Result<Timed> {
    let d = start_downloader(dir, seeders, 4).await?;
    let h = d.node.fetch(fetch_request(put)?);
    let t = Instant::now();
    let mut stop = None;
    let mut _cont = None;
    if let Some(frac) = stall_at {
        let staller = *seeders.last().context("no seeders")?;
        let threshold = (put.size as f64 * frac) as u64;
        let at = tokio::time::timeout(FETCH_TIMEOUT, h.wait_for(|p| p.bytes_fetched >= threshold))
            .await
            .context("download never reached the stall point")?;
        staller.signal(true)?;
        _cont = Some(ContOnDrop(staller));
        stop = Some((t.elapsed().as_secs_f64(), at.bytes_fetched));
    }
    tokio::time::timeout(
        FETCH_TIMEOUT,
        h.wait_for(|p| p.stripes_total > 0 && p.stripes_done >= p.stripes_total),
    )
    .await
    .context("fetch timed out")?;
    let last_stripe = t.elapsed().as_secs_f64();
    let progress = tokio::time::timeout(FETCH_TIMEOUT, h.wait())
        .await
        .context("fetch timed out")??;
    Ok(Timed {
        secs: t.elapsed().as_secs_f64(),
        last_stripe,
        stop,
        progress,
    })
}

#[allow(clippy::too_many_arguments)]
async fn stall(
    size: u64,
    k: usize,
    cap_mbit: u64,
    stall_at: f64,
    ss: u64,
    rounds: usize,
    dir: PathBuf,
) -> anyhow::Result<()> {
    if k < 2 || cap_mbit == 0 || !(0.0..1.0).contains(&stall_at) {
        bail!("stall needs --seeders ≥ 2, --cap-mbit > 0 and 0 ≤ --stall-at < 1");
    }
    let work = WorkDir::create(dir.join(format!("pyrsia-bench-stall-{}", std::process::id())))?;
    let file = work.join("artifact");
    make_file(&file, size)?;
    let (nss, seeders, put) = netns_seeders(&work, &file, &vec![cap_mbit; k], ss).await?;
    let all: Vec<&Seeder> = seeders.iter().collect();
    let good = &all[..k - 1];
    let staller = all[k - 1];
    let (mut raw, mut costs) = (Vec::new(), Vec::new());
    for round in 1..=rounds.max(1) {
        // Alternate which side goes first, so drift lands on both.
        let mut base = None;
        let mut stalled = None;
        for side in 0..2 {
            let dl = work.join("downloader");
            if (side + round) % 2 == 1 {
                base = Some(fetch_timed(&dl, good, &put, None).await?);
            } else {
                stalled = Some(fetch_timed(&dl, &all, &put, Some(stall_at)).await?);
            }
        }
        let base = base.context("baseline")?;
        let st = stalled.context("stalled")?;
        let (t_base, t_stall) = (base.secs, st.secs);
        let (t_stop, b_stop) = st.stop.context("no stop")?;
        // What the stalled download would take if the stop cost nothing:
        // the bytes in at the stop, then the rest at the baseline's rate.
        let expected = t_stop + (size - b_stop.min(size)) as f64 * t_base / size as f64;
        let cost = t_stall / expected - 1.0;
        raw.push(t_stall / t_base);
        costs.push(cost);
        println!(
            "stall round {round} size={}MiB cap={cap_mbit}Mbit/s stripe={}KiB: {} seeders {t_base:.2}s (last stripe {:.2}s); {k} seeders, the last stopped at {t_stop:.2}s ({:.0}% in, it sent {} stripes) {t_stall:.2}s (last stripe {:.2}s); ratio {:.3}, expected {expected:.2}s, stall cost {:+.1}%",
            size >> 20,
            ss >> 10,
            k - 1,
            base.last_stripe,
            100.0 * b_stop as f64 / size as f64,
            staller.stripes_in(&st.progress),
            st.last_stripe,
            t_stall / t_base,
            100.0 * cost,
        );
    }
    let (mr, mc) = (median(&raw), median(&costs));
    println!(
        "stall median: time ratio {mr:.3} (with staller / without), stall cost {:+.1}% over {} rounds",
        100.0 * mc,
        raw.len()
    );
    drop(seeders);
    drop(nss);
    println!(
        "{}",
        serde_json::json!({"bench": "stall", "size": size, "seeders": k, "cap_mbit": cap_mbit,
            "stall_at": stall_at, "stripe_size": ss, "time_ratios": raw, "costs": costs,
            "median_time_ratio": mr, "median_cost": mc})
    );
    Ok(())
}

async fn serve_dir(dir: PathBuf) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use warp::Filter;
    let route = warp::path("f").and(warp::fs::dir(dir));
    let (addr, fut) = warp::serve(route).try_bind_ephemeral(([127, 0, 0, 1], 0))?;
    Ok((addr, tokio::spawn(fut)))
}

/// One `curl` fetching every file of `names` in turn over one keep-alive
/// connection; returns (wall seconds, per-transfer seconds).
async fn curl_sequential(
    addr: SocketAddr,
    names: &[String],
    out: &Path,
    size: u64,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out)?;
    let mut cfg = String::new();
    for n in names {
        cfg.push_str(&format!(
            "url = \"http://{addr}/f/{n}\"\noutput = \"{}\"\n",
            out.join(n).display()
        ));
    }
    let cfg_path = out.with_extension("curlrc");
    std::fs::write(&cfg_path, cfg)?;
    let t = Instant::now();
    let child = tokio::process::Command::new("curl")
        .args([
            "-s",
            "--fail",
            "--max-time",
            "30",
            "-w",
            "%{time_total}\\n",
            "-K",
        ])
        .arg(&cfg_path)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let o = tokio::time::timeout(
        Duration::from_secs(30 + names.len() as u64),
        child.wait_with_output(),
    )
    .await
    .context("curl timed out")??;
    let wall = t.elapsed().as_secs_f64();
    if !o.status.success() {
        bail!("curl failed: {}", o.status);
    }
    let times: Vec<f64> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .context("curl -w output")?;
    if times.len() != names.len() {
        bail!("curl reported {} transfers of {}", times.len(), names.len());
    }
    for n in names {
        if std::fs::metadata(out.join(n))?.len() != size {
            bail!("curl: {n} has the wrong size");
        }
    }
    std::fs::remove_dir_all(out)?;
    let _ = std::fs::remove_file(&cfg_path);
    Ok((wall, times))
}

/// Fetches every artifact of `puts` in turn through a fresh downloader;
/// returns (wall seconds, per-fetch seconds, stripes per seeder).
async fn store_sequential(
    dir: &Path,
    seeders: &[&Seeder],
    puts: &[PutResult],
) -> anyhow::Result<(f64, Vec<f64>, Vec<u64>)> {
    let d = start_downloader(dir, seeders, 4).await?;
    let mut times = Vec::with_capacity(puts.len());
    let mut shares = vec![0u64; seeders.len()];
    let t = Instant::now();
    for put in puts {
        let t1 = Instant::now();
        let p = tokio::time::timeout(
            SMALL_FETCH_TIMEOUT,
            d.node.fetch(fetch_request(put)?).wait(),
        )
        .await
        .context("small fetch timed out")??;
        times.push(t1.elapsed().as_secs_f64());
        for (n, s) in shares.iter_mut().zip(seeders) {
            *n += s.stripes_in(&p);
        }
    }
    Ok((t.elapsed().as_secs_f64(), times, shares))
}

async fn small(
    count: usize,
    size: u64,
    k: usize,
    ss: u64,
    rounds: usize,
    dir: PathBuf,
) -> anyhow::Result<()> {
    if count == 0 || count > 100_000 || size > 16 << 20 {
        bail!("small: 1 ≤ --count ≤ 100000 and --size ≤ 16M");
    }
    let work = WorkDir::create(dir.join(format!("pyrsia-bench-small-{}", std::process::id())))?;
    let files = work.join("files");
    std::fs::create_dir_all(&files)?;
    let mut seeders = Vec::new();
    for i in 0..k {
        seeders.push(
            spawn_seeder(
                &work.join(format!("seeder{i}")),
                "/ip4/127.0.0.1/tcp/0",
                None,
            )
            .await?,
        );
    }
    eprintln!("putting {count} artifacts of {size} bytes on {k} seeder(s)…");
    let mut puts = Vec::with_capacity(count);
    let mut names = Vec::with_capacity(count);
    for i in 0..count {
        let mut data = vec![0u8; size as usize];
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ ((i as u64 + 1) << 1);
        fill_pseudo(&mut data, &mut x);
        let name = format!("a{i:06}");
        std::fs::write(files.join(&name), &data)?;
        let mut put = None;
        for s in &seeders {
            put = Some(api_put(s, data.clone(), ss).await?);
        }
        puts.push(put.context("no seeders")?);
        names.push(name);
    }
    let refs: Vec<&Seeder> = seeders.iter().collect();
    let (addr, server) = serve_dir(files.clone()).await?;
    let (mut med_ratios, mut mean_ratios) = (Vec::new(), Vec::new());
    for round in 1..=rounds.max(1) {
        let mut store = None;
        let mut curl = None;
        for side in 0..2 {
            if (side + round) % 2 == 1 {
                store = Some(store_sequential(&work.join("downloader"), &refs, &puts).await?);
            } else {
                curl = Some(curl_sequential(addr, &names, &work.join("curl.out"), size).await?);
            }
        }
        let (s_wall, s_times, shares) = store.context("store")?;
        let (c_wall, c_times) = curl.context("curl")?;
        let n = count as f64;
        let (s_med, c_med) = (median(&s_times), median(&c_times));
        med_ratios.push(s_med / c_med);
        mean_ratios.push(s_wall / c_wall);
        println!(
            "small round {round} {count}×{}B from {k} seeders, stripe={}KiB: store per artifact median {:.2} ms, p99 {:.2} ms, mean {:.2} ms (stripes per seeder {shares:?}); curl median {:.3} ms, p99 {:.3} ms, mean {:.3} ms; ratio store/curl median {:.1}, mean {:.1}",
            size,
            ss >> 10,
            1e3 * s_med,
            1e3 * percentile(&s_times, 0.99),
            1e3 * s_wall / n,
            1e3 * c_med,
            1e3 * percentile(&c_times, 0.99),
            1e3 * c_wall / n,
            s_med / c_med,
            s_wall / c_wall,
        );
    }
    server.abort();
    drop(seeders);
    let (mm, mw) = (median(&med_ratios), median(&mean_ratios));
    println!(
        "small median over {} rounds: store/curl per-artifact latency {mm:.1} (medians), {mw:.1} (means)",
        med_ratios.len()
    );
    println!(
        "{}",
        serde_json::json!({"bench": "small", "count": count, "size": size, "seeders": k,
            "stripe_size": ss, "median_latency_ratios": med_ratios, "mean_latency_ratios": mean_ratios,
            "median_of_median_ratios": mm, "median_of_mean_ratios": mw})
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let work = async {
        match Cli::parse().cmd {
            Bench::Loopback {
                size,
                seeders,
                stripe_size,
                inflight,
                rounds,
                dir,
            } => {
                loopback(
                    size,
                    seeders.max(1),
                    stripe_size,
                    inflight.max(1),
                    rounds,
                    dir.unwrap_or_else(std::env::temp_dir),
                )
                .await
            }
            Bench::Netns {
                size,
                cap_mbit,
                seeders,
                stripe_sizes,
                delay_ms,
                dir,
            } => {
                netns(
                    size,
                    cap_mbit,
                    seeders,
                    stripe_sizes,
                    delay_ms,
                    dir.unwrap_or_else(std::env::temp_dir),
                )
                .await
            }
            Bench::Hetero {
                size,
                caps_mbit,
                stripe_size,
                rounds,
                dir,
            } => {
                hetero(
                    size,
                    caps_mbit,
                    stripe_size,
                    rounds,
                    dir.unwrap_or_else(std::env::temp_dir),
                )
                .await
            }
            Bench::Stall {
                size,
                seeders,
                cap_mbit,
                stall_at,
                stripe_size,
                rounds,
                dir,
            } => {
                stall(
                    size,
                    seeders,
                    cap_mbit,
                    stall_at,
                    stripe_size,
                    rounds,
                    dir.unwrap_or_else(std::env::temp_dir),
                )
                .await
            }
            Bench::Small {
                count,
                size,
                seeders,
                stripe_size,
                rounds,
                dir,
            } => {
                small(
                    count,
                    size,
                    seeders.max(1),
                    stripe_size,
                    rounds,
                    dir.unwrap_or_else(std::env::temp_dir),
                )
                .await
            }
        }
    };
    // On SIGINT or SIGTERM the bench future is dropped, so its guards kill
    // the seeders and delete the namespaces and the work directory.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        _ = term.recv() => bail!("terminated"),
    }
}
