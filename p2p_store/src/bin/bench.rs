//! Benchmarks of the store (not a test). See README.md "Benchmarks".
//!
//! `loopback`: one artifact fetched from k seeder processes on 127.0.0.1 vs
//! `curl` of the same file from a plain HTTP server on 127.0.0.1, same run.
//! `netns` (root): seeders in their own network namespaces, each behind a
//! veth whose egress is capped with tc tbf; aggregate rate / (k × cap).

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
        /// One-way delay added on each seeder's uplink (netem), ms.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn make_file(path: &Path, size: u64) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for c in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
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
            "{} not found: build with `cargo build --release -p pyrsia-p2p-store --bins`",
            p.display()
        );
    }
    Ok(p)
}

struct Seeder {
    child: Child,
    addr: libp2p::Multiaddr,
    api: String,
    netns: Option<String>,
}

impl Drop for Seeder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        if Instant::now() > deadline {
            bail!("seeder did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&ready)?)?;
    Ok(Seeder {
        child,
        addr: v["listen_addrs"][0].as_str().context("addr")?.parse()?,
        api: v["api"].as_str().context("api")?.to_string(),
        netns: netns.map(str::to_string),
    })
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
        .output()?;
    if !out.status.success() {
        bail!("put failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Starts a downloader, connects to `seeders`, fetches; returns seconds.
async fn fetch_from(
    dir: &Path,
    seeders: &[&Seeder],
    put: &PutResult,
    inflight: usize,
) -> anyhow::Result<(f64, p2p_store::Progress)> {
    let _ = std::fs::remove_dir_all(dir);
    let mut cfg = Config::new(dir);
    cfg.listen = vec!["/ip4/0.0.0.0/tcp/0".parse()?];
    cfg.mdns = false;
    cfg.quota = 1 << 40;
    cfg.inflight_per_peer = inflight;
    cfg.bootstrap = seeders.iter().map(|s| s.addr.clone()).collect();
    let node = Node::start(cfg).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.connected_peers().len() < seeders.len() {
        if Instant::now() > deadline {
            bail!(
                "downloader connected to {} of {}",
                node.connected_peers().len(),
                seeders.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = Instant::now();
    let p = node
        .fetch(FetchRequest {
            sha256: parse_digest(&put.sha256).context("sha")?,
            stripe_root: parse_digest(&put.stripe_root).context("root")?,
            size: Some(put.size),
            stripe_size: Some(put.stripe_size),
            pin: false,
        })
        .wait()
        .await?;
    let secs = t.elapsed().as_secs_f64();
    node.shutdown();
    drop(node);
    let _ = std::fs::remove_dir_all(dir);
    Ok((secs, p))
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

fn setup_netns(n: usize, cap_mbit: u64, delay_ms: u64) -> anyhow::Result<Netns> {
    let tag = std::process::id() % 1000;
    let mut made = Netns(Vec::new());
    for i in 0..n {
        let ns = format!("pyb{tag}s{i}");
        let host = format!("pyb{tag}h{i}");
        let peer = format!("pyb{tag}n{i}");
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
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
            .concat())?;
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
    let nss = setup_netns(nmax, cap_mbit, delay_ms)?;
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
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
    }
}
