//! Transaction load for benches and soaks: lanes of signed transactions
//! sent in order, followed until every one is in a block (sent again when a
//! mempool dropped it), and synthetic attesters that make such lanes batch
//! after batch.

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

use super::{synthetic_request, Testnet};

/// At most one sender per builder key, so nonces stay in order.
pub const MAX_SENDERS: usize = 64;

/// How long without one of the run's transactions landing in a block before
/// the client sends the missing ones again, as a real client does: CometBFT
/// answers a broadcast with CheckTx's verdict even when its mempool then
/// drops the transaction for being full.
const RESUBMIT: Duration = Duration::from_secs(10);

/// Rounds of sending again in a row with nothing landing before what is
/// still missing counts as lost.
const MAX_RESUBMITS: u32 = 6;

/// What became of a run's transactions.
pub struct Outcome {
    /// Sent again because they had not landed after `RESUBMIT`.
    pub resubmitted: usize,
    /// In a block, whatever their result.
    pub committed: usize,
    /// In a block, but refused there by the rules: (tx, code, log).
    pub failed: Vec<(Vec<u8>, u32, String)>,
    /// In no block after `MAX_RESUBMITS` rounds of sending again.
    pub lost: Vec<Vec<u8>>,
    /// Committed txs per second, from the first send to the block holding the
    /// last of them.
    pub rate: f64,
}

/// Sends each lane's txs in order to its node, lanes concurrently, then
/// follows the blocks until every tx is in one, sending again what has not
/// landed after `RESUBMIT`, at most `MAX_RESUBMITS` times in a row.
pub async fn load(clients: &[LedgerClient], lanes: Vec<Vec<Vec<u8>>>) -> Result<Outcome> {
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
pub async fn explain(client: &LedgerClient, outcome: &Outcome) -> Result<()> {
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

/// Builder keys (admitted at genesis by the caller) that attest synthetic
/// requests, and a requester that opens them; each remembers its nonces, so
/// that batch after batch can be made on one chain.
#[derive(Debug)]
pub struct Attesters {
    builders: Vec<Keypair>,
    nonces: Vec<u64>,
    requester: Keypair,
    requester_nonce: u64,
    requests: usize,
}

impl Default for Attesters {
    fn default() -> Self {
        let builders = builder_keys();
        Attesters {
            nonces: vec![0; builders.len()],
            builders,
            requester: Keypair::from_seed([200; 32]),
            requester_nonce: 0,
            requests: 0,
        }
    }
}

/// The synthetic builders' keys, fixed so genesis can admit them.
pub fn builder_keys() -> Vec<Keypair> {
    (0..MAX_SENDERS as u8)
        .map(|i| Keypair::from_seed([i + 1; 32]))
        .collect()
}

impl Attesters {
    /// What genesis needs for them: their builder keys admitted, and one
    /// requester allowed to keep all its requests open.
    pub fn genesis() -> super::ServicePlan {
        super::ServicePlan {
            params: Some(serde_json::json!({
                "max_open_per_signer": u16::MAX,
                "max_open_per_ecosystem": u32::MAX,
                "max_open_per_package": u16::MAX,
            })),
            admitted_builders: builder_keys().iter().map(Keypair::public).collect(),
            ..Default::default()
        }
    }

    /// Registers the builders (the first time), opens requests, then signs
    /// one Attest per selected builder of ours per request: up to `count`
    /// txs (fewer when others' builders are selected too) in `senders`
    /// lanes by signer. Every tx of a batch must be committed
    /// before the next batch is made.
    pub async fn lanes(
        &mut self,
        net: &Testnet,
        count: usize,
        senders: usize,
    ) -> Result<Vec<Vec<Vec<u8>>>> {
        let client = net.client(0)?;
        let chain_id = client.chain_id().await?;
        let builders = &self.builders;
        let mut hashes = Vec::new();
        for (i, b) in builders.iter().enumerate() {
            if self.nonces[i] > 0 {
                continue;
            }
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
        for n in self.nonces.iter_mut().filter(|n| **n == 0) {
            *n = 1;
        }
        let requester = &self.requester;
        let mut ids = Vec::new();
        for _ in 0..count.div_ceil(3) {
            let i = self.requests;
            self.requests += 1;
            self.requester_nonce += 1;
            let request = synthetic_request(i, "npm");
            ids.push(request.id());
            let kind = TxKind::RequestBuild(request);
            hashes.push(
                client
                    .broadcast(&sign_tx(
                        requester,
                        &chain_id,
                        TxBody {
                            nonce: self.requester_nonce,
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
        let nonces = &mut self.nonces;
        let mut lanes = vec![Vec::new(); senders];
        let mut made = 0;
        'outer: for id in &ids {
            let record: RequestRecord = client
                .query_value(&format!("request/{id}"))
                .await?
                .context("request missing")?;
            for s in &record.selected {
                let Some(i) = builders.iter().position(|b| b.public() == *s) else {
                    continue; // another builder's job
                };
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
}
