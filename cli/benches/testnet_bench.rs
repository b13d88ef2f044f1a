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

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use pyrsia_chain::code::NONCE_NOT_NEXT;
use pyrsia_chain::crypto::sign_tx;
use pyrsia_chain::{
    Attest, Digest, Keypair, Output, RegisterBuilder, RequestRecord, SignedTx, TxBody, TxKind,
};
use pyrsia_ledger_client::rpc::{ClientError, LedgerClient};
use sha2::{Digest as _, Sha256};
use support::{synthetic_request, AppKind, ServicePlan, Testnet};

/// At most one sender per builder key, so nonces stay in order.
const MAX_SENDERS: usize = 64;

/// How long without one of the run's transactions landing in a block before
/// the client sends the missing ones again, as a real client does: CometBFT
/// answers a broadcast with CheckTx's verdict even when its mempool then
/// drops the transaction for being full.
const RESUBMIT: Duration = Duration::from_secs(10);

/// Rounds of sending again in a row with nothing landing before what is
/// still missing counts as lost.
const MAX_RESUBMITS: u32 = 6;

/// What became of a run's transactions.
struct Outcome {
    /// Sent again because they had not landed after `RESUBMIT`.
    resubmitted: usize,
    /// In a block, whatever their result.
    committed: usize,
    /// In a block, but refused there by the rules: (tx, code, log).
    failed: Vec<(Vec<u8>, u32, String)>,
    /// In no block after `MAX_RESUBMITS` rounds of sending again.
    lost: Vec<Vec<u8>>,
    /// Committed txs per second, from the first send to the block holding the
    /// last of them.
    rate: f64,
}

/// Sends each lane's txs in order to its node, lanes concurrently, then
/// follows the blocks until every tx is in one, sending again what has not
/// landed after `RESUBMIT`, at most `MAX_RESUBMITS` times in a row.
async fn load(clients: &[LedgerClient], lanes: Vec<Vec<Vec<u8>>>) -> Result<Outcome> {
    let mut pending: HashSet<Vec<u8>> = lanes.iter().flatten().cloned().collect();
    let sent = lanes.clone();
    let start_height = clients[0].latest_height().await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (lane, txs) in lanes.into_iter().enumerate() {
        let client = clients[lane % clients.len()].clone();
        tasks.push(tokio::spawn(async move {
            for tx in txs {
                // A full mempool answers with an error: back off and retry.
                loop {
                    match client.broadcast_bytes(tx.clone()).await {
                        Ok(_) => break,
                        // An earlier nonce of this signer left the mempool
                        // (dropped when full): this one is sent again after it
                        // once the blocks show both missing.
                        Err(ClientError::Rejected { code, .. }) if code == NONCE_NOT_NEXT => break,
                        Err(ClientError::Rejected { code, log }) => {
                            anyhow::bail!("tx rejected by CheckTx (code {code}): {log}")
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let mut committed = 0;
    let mut failed = Vec::new();
    let mut height = start_height;
    let mut finished = started.elapsed();
    // Since the last landing or the last round of sending again.
    let mut quiet_since = Instant::now();
    let (mut resubmitted, mut fruitless_rounds) = (0, 0);
    while !pending.is_empty() {
        if clients[0].latest_height().await? > height {
            // The block store reports a height before its results are saved.
            let Ok(txs) = clients[0].block_txs(height + 1).await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            height += 1;
            for tx in txs {
                if pending.remove(&tx.bytes) {
                    committed += 1;
                    quiet_since = Instant::now();
                    fruitless_rounds = 0;
                    finished = started.elapsed();
                    if tx.code != 0 {
                        failed.push((tx.bytes, tx.code, tx.log));
                    }
                }
            }
        } else if quiet_since.elapsed() >= RESUBMIT {
            if fruitless_rounds == MAX_RESUBMITS {
                break;
            }
            resubmitted += resubmit(clients, &sent, &pending).await?;
            fruitless_rounds += 1;
            quiet_since = Instant::now();
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(Outcome {
        resubmitted,
        committed,
        failed,
        lost: pending.into_iter().collect(),
        rate: committed as f64 / finished.as_secs_f64(),
    })
}

/// Sends each lane's still pending txs again, in order, to its node, lanes
/// concurrently; returns how many. A refusal or "already in the mempool" is
/// not an error here: a tx that never lands is reported as lost.
async fn resubmit(
    clients: &[LedgerClient],
    lanes: &[Vec<Vec<u8>>],
    pending: &HashSet<Vec<u8>>,
) -> Result<usize> {
    let mut tasks = Vec::new();
    for (lane, txs) in lanes.iter().enumerate() {
        let client = clients[lane % clients.len()].clone();
        let txs: Vec<Vec<u8>> = txs
            .iter()
            .filter(|tx| pending.contains(*tx))
            .cloned()
            .collect();
        tasks.push(tokio::spawn(async move {
            for tx in &txs {
                let _ = client.broadcast_bytes(tx.clone()).await;
            }
            txs.len()
        }));
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await?;
    }
    Ok(sent)
}

/// One line per tx that was lost or failed: its signer, nonce and kind, and
/// the signer's last committed nonce.
async fn explain(client: &LedgerClient, outcome: &Outcome) -> Result<()> {
    let lost = outcome.lost.iter().map(|tx| (tx, "lost".to_owned()));
    let failed = outcome
        .failed
        .iter()
        .map(|(tx, code, log)| (tx, format!("failed (code {code}): {log}")));
    for (bytes, fate) in lost.chain(failed).take(50) {
        let tx: SignedTx = borsh::from_slice(bytes)?;
        let last: Option<u64> = client.query_value(&format!("nonce/{}", tx.signer)).await?;
        println!(
            "    {fate}: tx {} signer {} nonce {} (last committed nonce {last:?})",
            hex::encode_upper(Sha256::digest(bytes)),
            tx.signer,
            tx.body.nonce
        );
    }
    Ok(())
}

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

fn builder_keys() -> Vec<Keypair> {
    (0..MAX_SENDERS as u8)
        .map(|i| Keypair::from_seed([i + 1; 32]))
        .collect()
}

/// Registers builders and requests, then signs one Attest per selected
/// builder per request: `count` txs in lanes by signer.
async fn attest_lanes(net: &Testnet, count: usize, senders: usize) -> Result<Vec<Vec<Vec<u8>>>> {
    let client = net.client(0)?;
    let chain_id = client.chain_id().await?;
    let builders = builder_keys();
    let mut hashes = Vec::new();
    for (i, b) in builders.iter().enumerate() {
        let kind = TxKind::RegisterBuilder(RegisterBuilder {
            peer_id: format!("peer{i}"),
            ecosystems: vec!["npm".into()],
        });
        hashes.push(
            client
                .broadcast(&sign_tx(b, &chain_id, TxBody { nonce: 1, kind }))
                .await?,
        );
    }
    for h in hashes.drain(..) {
        client.wait_tx(h, Duration::from_secs(60)).await?;
    }
    let requester = Keypair::from_seed([200; 32]);
    let mut ids = Vec::new();
    for i in 0..count.div_ceil(3) {
        let request = synthetic_request(i, "npm");
        ids.push(request.id());
        let kind = TxKind::RequestBuild(request);
        hashes.push(
            client
                .broadcast(&sign_tx(
                    &requester,
                    &chain_id,
                    TxBody {
                        nonce: i as u64 + 1,
                        kind,
                    },
                ))
                .await?,
        );
    }
    let mut last = 0;
    for h in hashes.drain(..) {
        last = last.max(client.wait_tx(h, Duration::from_secs(120)).await?.height);
    }
    // Builders are drawn in the block after each request.
    client
        .wait_height(last + 1, Duration::from_secs(60))
        .await?;
    let mut nonces = vec![1u64; builders.len()];
    let mut lanes = vec![Vec::new(); senders];
    let mut made = 0;
    'outer: for id in &ids {
        let record: RequestRecord = client
            .query_value(&format!("request/{id}"))
            .await?
            .context("request missing")?;
        for s in &record.selected {
            let i = builders
                .iter()
                .position(|b| b.public() == *s)
                .context("unknown builder")?;
            nonces[i] += 1;
            let kind = TxKind::Attest(Attest {
                request_id: *id,
                outputs: vec![Output {
                    name: "pkg.tgz".into(),
                    sha256: Digest([7; 32]),
                    size: 12_345,
                    stripe_size: 1 << 20,
                    stripe_root: Digest([8; 32]),
                }],
                build_env: "node-20.11 npm-10".into(),
                log_digest: Digest([9; 32]),
                provenance: None,
            });
            let tx: SignedTx = sign_tx(
                &builders[i],
                &chain_id,
                TxBody {
                    nonce: nonces[i],
                    kind,
                },
            );
            lanes[i % senders].push(borsh::to_vec(&tx)?);
            made += 1;
            if made == count {
                break 'outer;
            }
        }
    }
    Ok(lanes)
}

/// Four validators running `app`, on this host or, with `netns`, each in a
/// network namespace with 50 ms round trips.
async fn start_testnet(
    app: AppKind,
    plan: ServicePlan,
    timeout_commit: &str,
    netns: bool,
) -> Result<Testnet> {
    let plan = ServicePlan {
        timeout_commit: Some(timeout_commit.to_owned()),
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
    let start = |app, plan| start_testnet(app, plan, &timeout_commit, netns);
    let mut net = start(
        AppKind::Pyrsia,
        ServicePlan {
            params: Some(serde_json::json!({
                "max_open_per_signer": u16::MAX,
                "max_open_per_ecosystem": u32::MAX,
                "max_open_per_package": u16::MAX,
            })),
            admitted_builders: builder_keys().iter().map(Keypair::public).collect(),
            ..Default::default()
        },
    )
    .await?;
    let lanes = attest_lanes(&net, count, senders).await?;
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
