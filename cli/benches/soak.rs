//! Soak: mixed load for `SOAK_SECONDS` (default 600) on four validators in
//! network namespaces with 50 ms round trips, node 0's stores and builders
//! running: synthetic build requests and attestations in batches, verified
//! light-client queries, and real builds of script packages fetched again
//! and again through the node's store. Every 15 s it samples each process
//! kind's resident memory and disk use; at the end it prints their growth
//! per 1,000 attestations after a warm-up, and fails if a transaction was
//! lost or two nodes' app hashes differ at any height.
//!
//! Run with `./scripts/soak.sh` (root, for the namespaces).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use pyrsia_chain::Digest;
use pyrsia_ledger_client::rpc::LedgerClient;
use pyrsia_ledger_client::verified::At;
use support::fixtures::GitServer;
use support::load::{load, Attesters};
use support::{ServicePlan, Testnet};

const SAMPLE_EVERY: Duration = Duration::from_secs(15);
/// Attestations per batch; each batch is committed before the next.
const BATCH: usize = 600;
/// Samples before this many attestations are the warm-up.
const WARM_UP: usize = 1000;

#[derive(Debug, Default)]
struct Sample {
    attestations: usize,
    rss: BTreeMap<&'static str, u64>,
    disk: BTreeMap<&'static str, u64>,
}

fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS")?
        .parse::<u64>()?;
    Ok(kb * 1024)
}

/// Bytes in files under `path` (0 if it does not exist).
fn disk_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => disk_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

fn sample(net: &Testnet, attestations: usize) -> Result<Sample> {
    let mut s = Sample {
        attestations,
        ..Sample::default()
    };
    for (kind, pid) in net.processes() {
        *s.rss.entry(kind).or_default() += rss_bytes(pid)?;
    }
    for node in &net.nodes {
        let data = node.home.join("data");
        let app = disk_bytes(&data.join("pyrsia-state"));
        *s.disk.entry("abci").or_default() += app;
        *s.disk.entry("cometbft").or_default() += disk_bytes(&data).saturating_sub(app);
    }
    let home = &net.nodes[0].home;
    let mut stores = disk_bytes(&home.join("store"));
    let mut builders = 0;
    for b in std::fs::read_dir(home.join("builders"))?.flatten() {
        stores += disk_bytes(&b.path().join("store"));
        builders += disk_bytes(&b.path().join("work"));
    }
    s.disk.insert("store", stores);
    s.disk.insert("builder", builders);
    Ok(s)
}

/// Reads while the load runs: verified queries of the real packages'
/// requests, and fetches of those that are built.
struct Readers {
    stop: Arc<AtomicBool>,
    queries: Arc<AtomicUsize>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Result<()>>,
}

fn start_readers(net: &Testnet, packages: Vec<(Digest, [String; 3])>) -> Result<Readers> {
    let stop = Arc::new(AtomicBool::new(false));
    let queries = Arc::new(AtomicUsize::new(0));
    let fetches = Arc::new(AtomicUsize::new(0));
    let mut verified = net.verified(1)?;
    let home = net.nodes[0].home.clone();
    let node = net.nodes[0].rpc_url.clone();
    let api = net.store_api();
    let out = net.dir.path().join("fetched");
    let (s, q, f) = (stop.clone(), queries.clone(), fetches.clone());
    let task = tokio::spawn(async move {
        let mut round = 0usize;
        while !s.load(Ordering::Relaxed) {
            round += 1;
            let snapshot = verified.snapshot(At::Latest).await?;
            for (id, [eco, name, version]) in &packages {
                let record = verified
                    .request(&snapshot, id)
                    .await?
                    .context("a requested package has no record")?;
                q.fetch_add(1, Ordering::Relaxed);
                if !round.is_multiple_of(10)
                    || !["trusted", "reproducible"].contains(&record.level.as_str())
                {
                    continue;
                }
                let _ = std::fs::remove_dir_all(&out);
                let args = [
                    "fetch",
                    eco,
                    name,
                    version,
                    "-o",
                    &out.to_string_lossy(),
                    "--api",
                    &api,
                ];
                let status = tokio::process::Command::new(support::pyrsia_bin())
                    .arg("--home")
                    .arg(&home)
                    .args(["--node", &node, "--json"])
                    .args(args)
                    .output()
                    .await?;
                if !status.status.success() {
                    bail!(
                        "fetching {name}: {}",
                        String::from_utf8_lossy(&status.stderr)
                    );
                }
                f.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    });
    Ok(Readers {
        stop,
        queries,
        fetches,
        task,
    })
}

fn mib(b: f64) -> f64 {
    b / (1024.0 * 1024.0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let plan = ServicePlan {
        regular_builders: 3,
        trusted_builders: 2,
        timeout_commit: Some("1s".into()),
        ..Attesters::genesis()
    };
    let mut net = Testnet::start_netns(4, plan).await?;
    net.netns
        .as_ref()
        .context("a namespaced testnet has its namespaces")?
        .delay(25.0, 2.0, 0.0)?;
    net.start_services().await?;

    let git = GitServer::start()?;
    let mut packages = Vec::new();
    for i in 0..3 {
        let f = git.script_package(&format!("soak{i}"), "1.0.0", 4)?;
        let r = net.request_build(&f, &[])?;
        let id: Digest = r["request_id"]
            .as_str()
            .context("request-build printed no request_id")?
            .parse()?;
        packages.push((
            id,
            [f.ecosystem.to_owned(), f.name.clone(), f.version.clone()],
        ));
    }
    let readers = start_readers(&net, packages)?;

    let clients: Vec<LedgerClient> = (0..4).map(|i| net.client(i)).collect::<Result<_>>()?;
    let mut attesters = Attesters::default();
    let started = Instant::now();
    let mut samples = vec![sample(&net, 0)?];
    let mut last_sample = Instant::now();
    let (mut attestations, mut batches) = (0, 0);
    while started.elapsed() < Duration::from_secs(seconds) {
        let lanes = attesters.lanes(&net, BATCH, 32).await?;
        let outcome = load(&clients, lanes).await?;
        if !outcome.lost.is_empty() || !outcome.failed.is_empty() {
            bail!(
                "batch {batches}: {} lost, {} refused in their block",
                outcome.lost.len(),
                outcome.failed.len()
            );
        }
        attestations += outcome.committed;
        batches += 1;
        if last_sample.elapsed() >= SAMPLE_EVERY {
            samples.push(sample(&net, attestations)?);
            last_sample = Instant::now();
        }
        if readers.task.is_finished() {
            break;
        }
    }
    samples.push(sample(&net, attestations)?);
    readers.stop.store(true, Ordering::Relaxed);
    readers.task.await??;

    let top = net.assert_one_history().await?;

    let from = samples
        .iter()
        .find(|s| s.attestations >= WARM_UP)
        .context("the soak ended before the warm-up")?;
    let to = samples.last().context("no sample")?;
    let per_k = |a: u64, b: u64| {
        1000.0 * (b as f64 - a as f64) / (to.attestations - from.attestations).max(1) as f64
    };
    println!(
        "soak: {:.0} s, 4 validators in namespaces (50 ms round trips), 3 regular + 2 trusted builders with stores",
        started.elapsed().as_secs_f64()
    );
    println!(
        "  {attestations} attestations in {batches} batches committed, none lost or refused; {} verified queries, {} fetches; app hashes identical at all {top} heights",
        readers.queries.load(Ordering::Relaxed),
        readers.fetches.load(Ordering::Relaxed)
    );
    println!(
        "  growth per 1,000 attestations, from {} to {} attestations (all processes of a kind summed):",
        from.attestations, to.attestations
    );
    for kind in ["cometbft", "abci", "store", "builder"] {
        let rss = (
            from.rss.get(kind).copied().unwrap_or(0),
            to.rss.get(kind).copied().unwrap_or(0),
        );
        let disk = (
            from.disk.get(kind).copied().unwrap_or(0),
            to.disk.get(kind).copied().unwrap_or(0),
        );
        println!(
            "    {kind:<9} RSS {:>7.1} -> {:>7.1} MiB ({:+.2} MiB per 1k)   disk {:>7.1} -> {:>7.1} MiB ({:+.2} MiB per 1k)",
            mib(rss.0 as f64),
            mib(rss.1 as f64),
            mib(per_k(rss.0, rss.1)),
            mib(disk.0 as f64),
            mib(disk.1 as f64),
            mib(per_k(disk.0, disk.1)),
        );
    }
    Ok(())
}
