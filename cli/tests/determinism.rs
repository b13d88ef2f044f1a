//! Four validators on one host execute the same 1,000+ mixed transactions and
//! must report the same app hash at every height.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use pyrsia_chain::crypto::{approve, sign_tx};
use pyrsia_chain::{
    Attest, Digest, GovAction, Governance, Keypair, Output, Params, RegisterBuilder, RequestRecord,
    TxBody, TxKind,
};
use pyrsia_ledger_client::rpc::LedgerClient;
use support::{synthetic_request, ServicePlan, Testnet};
use tendermint::Hash;

struct Signer {
    key: Keypair,
    nonce: u64,
    node: usize,
}

impl Signer {
    fn new(key: Keypair, node: usize) -> Signer {
        Signer {
            key,
            nonce: 0,
            node,
        }
    }

    fn tx(&mut self, chain_id: &str, kind: TxKind) -> pyrsia_chain::SignedTx {
        self.nonce += 1;
        sign_tx(
            &self.key,
            chain_id,
            TxBody {
                nonce: self.nonce,
                kind,
            },
        )
    }
}

fn output(seed: u8) -> Output {
    Output {
        name: "lib.tgz".into(),
        sha256: Digest([seed; 32]),
        size: 4096,
        stripe_size: 1 << 20,
        stripe_root: Digest([seed ^ 0xff; 32]),
    }
}

async fn send_all(
    clients: &[LedgerClient],
    batch: Vec<(usize, pyrsia_chain::SignedTx)>,
) -> Vec<Hash> {
    let mut hashes = Vec::new();
    for (node, tx) in batch {
        hashes.push(clients[node].broadcast(&tx).await.unwrap());
    }
    hashes
}

async fn wait_all(
    client: &LedgerClient,
    hashes: &[Hash],
) -> Vec<pyrsia_ledger_client::rpc::CommittedTx> {
    let mut out = Vec::new();
    for h in hashes {
        let tx = client.wait_tx(*h, Duration::from_secs(120)).await.unwrap();
        assert_eq!(tx.code, 0, "tx {h} failed: {}", tx.log);
        out.push(tx);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn four_validators_agree_on_the_app_hash_at_every_height_under_1000_mixed_txs() {
    let builder_keys: Vec<Keypair> = (0..24)
        .map(|i| Keypair::from_seed([i as u8 + 1; 32]))
        .collect();
    let net = Testnet::start_planned(
        4,
        ServicePlan {
            admitted_builders: builder_keys.iter().map(Keypair::public).collect(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let clients: Vec<LedgerClient> = (0..4).map(|i| net.client(i).unwrap()).collect();
    let chain_id = clients[0].chain_id().await.unwrap();
    let mut total = 0;

    let mut builders: Vec<Signer> = builder_keys
        .into_iter()
        .enumerate()
        .map(|(i, key)| Signer::new(key, i % 4))
        .collect();
    let batch: Vec<_> = builders
        .iter_mut()
        .enumerate()
        .map(|(i, b)| {
            let tx = b.tx(
                &chain_id,
                TxKind::RegisterBuilder(RegisterBuilder {
                    peer_id: format!("peer{i}"),
                    ecosystems: vec!["npm".into(), "python".into()],
                }),
            );
            (b.node, tx)
        })
        .collect();
    total += batch.len();
    let hashes = send_all(&clients, batch).await;
    wait_all(&clients[0], &hashes).await;

    // Governance in the middle of the load: four builders per request.
    let board: Vec<Keypair> = (0..2)
        .map(|i| Keypair::load(&net.board_key(i)).unwrap())
        .collect();
    let action = GovAction::UpdateParams(Params {
        builders_per_request: 4,
        quorum: 3,
        ..Params::default()
    });
    let mut submitter = Signer::new(Keypair::from_seed([200; 32]), 1);
    let gov = submitter.tx(
        &chain_id,
        TxKind::Governance(Governance {
            seq: 0,
            approvals: board
                .iter()
                .map(|k| approve(k, &chain_id, 0, &action))
                .collect(),
            action,
        }),
    );
    total += 1;

    let mut requesters: Vec<Signer> = (0..5)
        .map(|i| Signer::new(Keypair::from_seed([100 + i as u8; 32]), i % 4))
        .collect();
    let mut batch = vec![(submitter.node, gov)];
    let mut ids = Vec::new();
    for i in 0..200 {
        let r = &mut requesters[i % 5];
        let request = synthetic_request(i, if i % 3 == 0 { "python" } else { "npm" });
        ids.push(request.id());
        batch.push((r.node, r.tx(&chain_id, TxKind::RequestBuild(request))));
    }
    total += batch.len() - 1;
    let hashes = send_all(&clients, batch).await;
    let committed = wait_all(&clients[0], &hashes).await;
    // Builders are drawn in the block after each request.
    let last = committed.iter().map(|t| t.height).max().unwrap();
    clients[0]
        .wait_height(last + 1, Duration::from_secs(60))
        .await
        .unwrap();

    // Every selected builder attests; every fifth request gets two
    // dissenting digests (a dispute), and the trusted nodes attest every fourth.
    let mut trusted: Vec<Signer> = (0..2)
        .map(|i| Signer::new(Keypair::load(&net.trusted_key(i)).unwrap(), 3 - i))
        .collect();
    let mut batch = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let record: RequestRecord = clients[0]
            .query_value(&format!("request/{id}"))
            .await
            .unwrap()
            .unwrap();
        for (k, selected) in record.selected.iter().enumerate() {
            let b = builders
                .iter_mut()
                .find(|b| b.key.public() == *selected)
                .unwrap();
            let seed = if n % 5 == 0 && k < 2 { 2 + k as u8 } else { 1 };
            let attest = Attest {
                request_id: *id,
                outputs: vec![output(seed)],
                build_env: "node-20".into(),
                log_digest: Digest([k as u8; 32]),
                provenance: None,
            };
            batch.push((b.node, b.tx(&chain_id, TxKind::Attest(attest))));
        }
        if n % 4 == 0 {
            for t in &mut trusted {
                let attest = Attest {
                    request_id: *id,
                    outputs: vec![output(1)],
                    build_env: "trusted".into(),
                    log_digest: Digest::default(),
                    provenance: None,
                };
                batch.push((t.node, t.tx(&chain_id, TxKind::Attest(attest))));
            }
        }
    }
    total += batch.len();
    let hashes = send_all(&clients, batch).await;
    let committed = wait_all(&clients[0], &hashes).await;
    assert!(total >= 1000, "only {total} transactions");
    assert!(committed
        .iter()
        .any(|t| t.attribute("trust_changed", "to") == Some("reproducible")));
    assert!(committed
        .iter()
        .any(|t| t.attribute("trust_changed", "to") == Some("disputed")));

    let last = clients[0].latest_height().await.unwrap();
    for c in &clients[1..] {
        c.wait_height(last, Duration::from_secs(60)).await.unwrap();
    }
    for h in 1..=last {
        let reference = clients[0].block_app_hash(h).await.unwrap();
        for (i, c) in clients.iter().enumerate().skip(1) {
            assert_eq!(
                c.block_app_hash(h).await.unwrap(),
                reference,
                "validator {i} disagrees at height {h}"
            );
        }
    }
}
