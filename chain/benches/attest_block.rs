//! Executes blocks of 1,000 `Attest` transactions through the ledger (decode,
//! signature check, rules, state root, commit) and, in the same run, raw
//! ed25519 verification of the same signatures, one by one and in batches of
//! a block (the floor: the ledger verifies each block as a batch). Every
//! other block first goes through CheckTx, as on a validator whose mempool
//! saw the transactions: FinalizeBlock then skips the signatures CheckTx
//! verified. CheckTx's own rate is reported too.
//!
//! `cargo bench --workspace --bench attest_block` (BENCH_BLOCKS=N to change
//! how many measured blocks; default 5).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use pyrsia_chain::crypto::{tx_sign_bytes, verify, verify_batch};
use pyrsia_chain::*;

const CHAIN: &str = "bench-chain";
const BLOCK_TXS: usize = 1000;

fn key(i: u32) -> Keypair {
    let mut seed = [0u8; 32];
    seed[..4].copy_from_slice(&i.to_le_bytes());
    seed[31] = 1;
    Keypair::from_seed(seed)
}

struct Chain {
    ledger: Ledger,
    height: u64,
}

impl Chain {
    fn block(&mut self, txs: &[Vec<u8>]) -> BlockResult {
        self.height += 1;
        let info = BlockInfo {
            proposer: Vec::new(),
            height: self.height,
            time: 1,
            hash: self.height.to_be_bytes().to_vec(),
        };
        let r = self.ledger.finalize_block(&info, txs).unwrap();
        self.ledger.commit().unwrap();
        r
    }
}

fn signed(k: &Keypair, nonce: u64, kind: TxKind) -> SignedTx {
    sign_tx(k, CHAIN, TxBody { nonce, kind })
}

fn main() {
    let blocks: usize = std::env::var("BENCH_BLOCKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(dir.path()).unwrap();
    let genesis = GenesisState {
        params: Params {
            max_open_per_signer: u16::MAX,
            max_open_per_ecosystem: u32::MAX,
            ..Params::default()
        },
        board: Board {
            keys: vec![key(0).public()],
            threshold: 1,
        },
        trusted_nodes: vec![],
        builders: (1..=64).map(|i| key(i).public()).collect(),
        beacon_keys: Vec::new(),
    };
    ledger.init_chain(CHAIN, &genesis, 1).unwrap();
    let mut chain = Chain { ledger, height: 0 };

    // 64 builders; enough requests for `blocks` blocks of attestations.
    let builders: Vec<Keypair> = (1..=64).map(key).collect();
    let regs: Vec<Vec<u8>> = builders
        .iter()
        .map(|b| {
            let kind = TxKind::RegisterBuilder(RegisterBuilder {
                peer_id: "p".into(),
                ecosystems: vec!["npm".into()],
            });
            borsh::to_vec(&signed(b, 1, kind)).unwrap()
        })
        .collect();
    chain.block(&regs);
    let requester = key(1000);
    let per_request = usize::from(Params::default().builders_per_request);
    let needed = (blocks * BLOCK_TXS).div_ceil(per_request);
    let mut ids = Vec::new();
    for chunk in (0..needed).collect::<Vec<_>>().chunks(500) {
        let txs: Vec<Vec<u8>> = chunk
            .iter()
            .map(|&i| {
                let r = BuildRequest {
                    package: PackageId {
                        ecosystem: "npm".into(),
                        name: format!("pkg{i}"),
                        version: "1.0.0".into(),
                    },
                    source: SourceRef {
                        repo_url: format!("https://example.org/pkg{i}.git"),
                        commit: format!("{i:040x}"),
                    },
                    recipe: "npm".into(),
                };
                ids.push(r.id());
                borsh::to_vec(&signed(&requester, i as u64 + 1, TxKind::RequestBuild(r))).unwrap()
            })
            .collect();
        chain.block(&txs);
    }
    // The last requests' builders are drawn in the next block.
    chain.block(&[]);

    // Each selected builder attests each request.
    let mut nonces = vec![1u64; builders.len()];
    let mut attests: Vec<SignedTx> = Vec::new();
    for id in &ids {
        let answer = chain
            .ledger
            .query(&format!("request/{id}"), 0, false)
            .unwrap();
        let record: RequestRecord = borsh::from_slice(&answer.value.unwrap()).unwrap();
        for s in &record.selected {
            let i = builders.iter().position(|b| b.public() == *s).unwrap();
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
            attests.push(signed(&builders[i], nonces[i], kind));
        }
    }
    attests.truncate(blocks * BLOCK_TXS);

    // Baseline: verify the same signatures one by one.
    let messages: Vec<(PublicKey, [u8; 64], Vec<u8>)> = attests
        .iter()
        .map(|t| (t.signer, t.signature, tx_sign_bytes(&t.chain_id, &t.body)))
        .collect();
    let start = Instant::now();
    for (k, s, m) in &messages {
        assert!(verify(k, s, m));
    }
    let verify_rate = messages.len() as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for chunk in messages.chunks(BLOCK_TXS) {
        let items: Vec<(PublicKey, [u8; 64], &[u8])> = chunk
            .iter()
            .map(|(k, s, m)| (*k, *s, m.as_slice()))
            .collect();
        assert!(verify_batch(&items, [3; 32]).into_iter().all(|ok| ok));
    }
    let batch_rate = messages.len() as f64 / start.elapsed().as_secs_f64();

    let encoded: Vec<Vec<u8>> = attests.iter().map(|t| borsh::to_vec(t).unwrap()).collect();
    let mut block_secs = Vec::new();
    let mut warm_secs = Vec::new();
    let (mut check_secs, mut checked) = (0.0, 0usize);
    for (i, block) in encoded.chunks(BLOCK_TXS).enumerate() {
        let warm = i % 2 == 1;
        if warm {
            let start = Instant::now();
            for tx in block {
                let r = chain.ledger.check_tx(tx, false);
                assert_eq!(r.code, 0, "{}", r.log);
            }
            check_secs += start.elapsed().as_secs_f64();
            checked += block.len();
        }
        let start = Instant::now();
        let result = chain.block(block);
        let secs = start.elapsed().as_secs_f64();
        if warm {
            warm_secs.push((secs, block.len()));
        } else {
            block_secs.push((secs, block.len()));
        }
        assert!(
            result.txs.iter().all(|r| r.code == 0),
            "an attestation failed"
        );
    }
    let rate = |b: &[(f64, usize)]| {
        b.iter().map(|(_, n)| *n).sum::<usize>() as f64 / b.iter().map(|(s, _)| s).sum::<f64>()
    };
    let ledger_rate = rate(&block_secs);
    let warm_rate = rate(&warm_secs);
    let mut sorted: Vec<f64> = block_secs.iter().map(|(s, _)| *s).collect();
    sorted.sort_by(f64::total_cmp);
    let median_ms = sorted[sorted.len() / 2] * 1e3;

    println!(
        "attest_block: {} blocks of {BLOCK_TXS} Attest txs",
        block_secs.len() + warm_secs.len()
    );
    println!("  ledger (decode+sig+rules+root+commit): {ledger_rate:.0} tx/s, median block {median_ms:.1} ms");
    if !warm_secs.is_empty() {
        println!("  ledger after CheckTx (sigs remembered): {warm_rate:.0} tx/s");
        println!(
            "  CheckTx (decode+sig+rules, no write):   {:.0} tx/s",
            checked as f64 / check_secs
        );
    }
    println!("  ed25519 single verify:                  {verify_rate:.0} sig/s");
    println!("  ed25519 batch verify (1,000):           {batch_rate:.0} sig/s");
    println!(
        "  ratio ledger/single verify:             {:.2}",
        ledger_rate / verify_rate
    );
    println!(
        "  ratio ledger/batch verify (the floor):  {:.2}",
        ledger_rate / batch_rate
    );
}
