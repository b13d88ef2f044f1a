//! Committed `Attest` txs/s on a 4-validator testnet on this host, and, in the
//! same run, the same load of equal-sized txs against CometBFT's built-in
//! `kvstore` app on an identically configured testnet. Prints both and the ratio.
//!
//! Run with `./scripts/bench-testnet.sh` (release build). `BENCH_TXS` sets the
//! load (default 3000), `BENCH_TIMEOUT_COMMIT` the block interval (default 1s),
//! `BENCH_SENDERS` the concurrent senders (default 64, one per signer).
//!
//! Each sender waits for CheckTx before its next tx. CometBFT's socket ABCI
//! client flushes queued CheckTx requests on a 20 ms throttle
//! (`flushThrottleMS` in abci/client/socket_client.go), while `kvstore` runs
//! in-process without one: with few senders the figure measures that latency,
//! not the network's capacity. Every signer's txs stay in one sender, in nonce order.

#[path = "../tests/support/mod.rs"]
mod support;

use anyhow::{Context as _, Result};
use pyrsia_ledger_client::rpc::LedgerClient;
use support::load::{explain, load, Attesters, Outcome, MAX_SENDERS};
use support::{AppKind, ServicePlan, Testnet};

/// What the nodes' CometBFT logs say about the mempool (at `mempool:debug`,
/// e.g. `CMT_LOG_LEVEL=mempool:debug,*:info`): transactions turned away by
/// a full mempool, from gossip or after CheckTx accepted them (CometBFT logs
/// both the same way; the sender of the second was told it was accepted),
/// and transactions a recheck removed.
fn mempool_drops(net: &Testnet) -> (usize, usize) {
    let (mut full, mut rechecked_out) = (0, 0);
    for node in &net.nodes {
        let log = std::fs::read_to_string(node.home.join("cometbft.log")).unwrap_or_default();
        for line in log.lines() {
            if line.contains("mempool is full") {
                full += 1;
            } else if line.contains("tx is no longer valid") {
                rechecked_out += 1;
            }
        }
    }
    (full, rechecked_out)
}

/// CPU milliseconds per committed tx during the load, summed over the
/// nodes: (ABCI apps, cometbft processes).
fn cpu_per_tx(net: &Testnet, before: (f64, f64), outcome: &Outcome) -> Result<(f64, f64)> {
    let after = net.cpu_seconds()?;
    let per_tx = |a: f64, b: f64| 1000.0 * (a - b) / outcome.committed.max(1) as f64;
    Ok((per_tx(after.0, before.0), per_tx(after.1, before.1)))
}

fn report(name: &str, outcome: &Outcome, tx_size: usize, (app_ms, comet_ms): (f64, f64)) {
    println!(
        "  {name:<15} {} txs of {tx_size} B committed ({} refused in the block), {} lost, {} sent again, {:.0} tx/s; CPU per tx over 4 nodes: app {app_ms:.2} ms, cometbft {comet_ms:.2} ms",
        outcome.committed,
        outcome.failed.len(),
        outcome.lost.len(),
        outcome.resubmitted,
        outcome.rate
    );
}

/// Four validators running `app`, on this host or, with `netns`, each in a
/// network namespace with 50 ms round trips.
async fn start_testnet(
    app: AppKind,
    plan: ServicePlan,
    timeout_commit: &str,
    mempool_size: usize,
    netns: bool,
) -> Result<Testnet> {
    let plan = ServicePlan {
        timeout_commit: Some(timeout_commit.to_owned()),
        mempool_size: Some(mempool_size),
        ..plan
    };
    if !netns {
        return Testnet::start_full_plan(4, app, plan).await;
    }
    let net = Testnet::start_netns_with(4, app, plan).await?;
    net.netns
        .as_ref()
        .context("a namespaced testnet has its namespaces")?
        .delay(25.0, 2.0, 0.0)?;
    Ok(net)
}

#[tokio::main]
async fn main() -> Result<()> {
    let count: usize = std::env::var("BENCH_TXS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let timeout_commit = std::env::var("BENCH_TIMEOUT_COMMIT").unwrap_or_else(|_| "1s".into());
    let senders: usize = std::env::var("BENCH_SENDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MAX_SENDERS)
        .clamp(1, MAX_SENDERS);

    let netns = std::env::var_os("BENCH_NETNS").is_some_and(|v| v == "1");
    // The bench's builders are admitted at genesis, and one requester may
    // keep all its requests open.
    // Every mempool holds the whole run. A full one drops transactions
    // CheckTx accepted, and the client's resend after 10 s quiet would then
    // decide the rate instead of the apps.
    let mempool_size = count.max(5000);
    let start = |app, plan| start_testnet(app, plan, &timeout_commit, mempool_size, netns);
    let mut net = start(
        AppKind::Pyrsia,
        ServicePlan {
            ..Attesters::genesis()
        },
    )
    .await?;
    let lanes = Attesters::default().lanes(&net, count, senders).await?;
    let tx_size = lanes.iter().flatten().map(Vec::len).max().unwrap_or(0);
    let clients: Vec<LedgerClient> = (0..4).map(|i| net.client(i)).collect::<Result<_>>()?;
    let cpu_before = net.cpu_seconds()?;
    let pyrsia = load(&clients, lanes).await?;
    let pyrsia_cpu = cpu_per_tx(&net, cpu_before, &pyrsia)?;
    explain(&clients[0], &pyrsia).await?;
    let (full, rechecked_out) = mempool_drops(&net);
    println!("  pyrsia mempools: {full} txs turned away by a full mempool (gossip or after CheckTx), {rechecked_out} removed by recheck (logged at mempool:debug)");
    if !pyrsia.lost.is_empty() || !pyrsia.failed.is_empty() {
        // The nodes' logs say where each lost transaction went.
        let kept = std::mem::replace(&mut net.dir, tempfile::TempDir::new()?).keep();
        println!("  kept the testnet's homes and logs in {}", kept.display());
    }
    drop(net);

    let mut baselines = Vec::new();
    for app in [AppKind::Kvstore, AppKind::KvstoreSocket] {
        let kv = start(app, ServicePlan::default()).await?;
        let clients: Vec<LedgerClient> = (0..4).map(|i| kv.client(i)).collect::<Result<_>>()?;
        let mut lanes = vec![Vec::new(); senders];
        for i in 0..count {
            let mut tx = format!("key{i:08}=").into_bytes();
            tx.resize(tx_size, b'v');
            lanes[i % senders].push(tx);
        }
        let cpu_before = kv.cpu_seconds()?;
        let outcome = load(&clients, lanes).await?;
        let cpu = cpu_per_tx(&kv, cpu_before, &outcome)?;
        baselines.push((app, outcome, cpu));
    }

    let layout = if netns {
        "in network namespaces, 50 ms round trips"
    } else {
        "on one host"
    };
    println!("testnet_bench: 4 validators {layout}, timeout_commit {timeout_commit}, {senders} concurrent senders");
    report("pyrsia Attest:", &pyrsia, tx_size, pyrsia_cpu);
    for (app, outcome, cpu) in &baselines {
        let name = match app {
            AppKind::KvstoreSocket => "kvstore socket:",
            _ => "kvstore:",
        };
        report(name, outcome, tx_size, *cpu);
    }
    for (app, outcome, _) in &baselines {
        let name = match app {
            AppKind::KvstoreSocket => "kvstore over the ABCI socket",
            _ => "in-process kvstore",
        };
        println!(
            "  ratio pyrsia / {name}: {:.2} (goal >= 0.8)",
            pyrsia.rate / outcome.rate
        );
    }
    let kvstore_lost = baselines.iter().any(|(_, o, _)| !o.lost.is_empty());
    anyhow::ensure!(
        pyrsia.lost.is_empty() && pyrsia.failed.is_empty() && !kvstore_lost,
        "transactions were lost or refused"
    );
    Ok(())
}
