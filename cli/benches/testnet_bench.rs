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

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use pyrsia_chain::crypto::sign_tx;
use pyrsia_chain::{
    Attest, Digest, Keypair, Output, RegisterBuilder, RequestRecord, SignedTx, TxBody, TxKind,
};
use pyrsia_ledger_client::rpc::LedgerClient;
use support::{synthetic_request, AppKind, ServicePlan, Testnet};

/// At most one sender per builder key, so nonces stay in order.
const MAX_SENDERS: usize = 64;

/// Sends each lane's txs in order to its node, lanes concurrently; returns
/// the committed rate measured from the first send to the block that holds
/// the last of them.
async fn load(clients: &[LedgerClient], lanes: Vec<Vec<Vec<u8>>>) -> Result<(usize, f64)> {
    let total: usize = lanes.iter().map(Vec::len).sum();
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
                        Err(pyrsia_ledger_client::rpc::ClientError::Rejected { code, log }) => {
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
    let mut height = start_height;
    let deadline = Instant::now() + Duration::from_secs(600);
    while committed < total {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {committed}/{total} committed"
        );
        if clients[0].latest_height().await? > height {
            height += 1;
            committed += clients[0].block_tx_count(height).await?;
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok((
        committed,
        committed as f64 / started.elapsed().as_secs_f64(),
    ))
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

    // The bench's builders are admitted at genesis, and one requester may
    // keep all its requests open.
    let net = Testnet::start_planned(
        4,
        ServicePlan {
            timeout_commit: Some(timeout_commit.clone()),
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
    let (pyrsia_n, pyrsia_rate) = load(&clients, lanes).await?;
    drop(net);

    let kv = Testnet::start_with(4, AppKind::Kvstore, &timeout_commit).await?;
    let clients: Vec<LedgerClient> = (0..4).map(|i| kv.client(i)).collect::<Result<_>>()?;
    let mut lanes = vec![Vec::new(); senders];
    for i in 0..count {
        let mut tx = format!("key{i:08}=").into_bytes();
        tx.resize(tx_size, b'v');
        lanes[i % senders].push(tx);
    }
    let (kv_n, kv_rate) = load(&clients, lanes).await?;

    println!("testnet_bench: 4 validators on one host, timeout_commit {timeout_commit}, {senders} concurrent senders");
    println!("  pyrsia Attest:  {pyrsia_n} txs of {tx_size} B committed, {pyrsia_rate:.0} tx/s");
    println!("  kvstore:        {kv_n} txs of {tx_size} B committed, {kv_rate:.0} tx/s");
    println!(
        "  ratio pyrsia/kvstore: {:.2} (goal >= 0.8)",
        pyrsia_rate / kv_rate
    );
    Ok(())
}
