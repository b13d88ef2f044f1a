//! The ledger at scale, through `chain` directly (no consensus): grows the
//! state to STATE_REQUESTS requests (default 100,000) with five regular
//! attestations each, plus one trusted node attesting REVOKE_ATTESTATIONS
//! (default 10,000) of them outside the measured blocks, then reports
//! - the median execution time of a 1,000-transaction block (requests and
//!   attestations) at 1 k requests and at full size, and their ratio;
//! - disk bytes per attestation;
//! - proved-query latency at full size;
//! - revoking the trusted node: blocks taken and the slowest block, against
//!   the 1,000-transaction block.
//!
//! `cargo bench --workspace --bench state_scale`; see `chain/README.md`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use pyrsia_chain::crypto::approve;
use pyrsia_chain::*;

const CHAIN: &str = "scale-chain";
/// Requests per block; each brings five attestations two blocks later.
const REQUESTS_PER_BLOCK: usize = 166;
const ATTESTERS: usize = 5;
const BUILDERS: u32 = 64;
/// The trusted node attests requests from this one on, past the blocks
/// measured at 1 k requests.
const TRUSTED_FROM: usize = 6_000;
/// Blocks measured at each size: compactions make single blocks noisy.
const SAMPLED_BLOCKS: usize = 20;

fn key(i: u32) -> Keypair {
    let mut seed = [0u8; 32];
    seed[..4].copy_from_slice(&i.to_le_bytes());
    seed[31] = 2;
    Keypair::from_seed(seed)
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Chain {
    ledger: Ledger,
    height: u64,
    nonces: std::collections::HashMap<PublicKey, u64>,
}

impl Chain {
    fn tx(&mut self, k: &Keypair, kind: TxKind) -> Vec<u8> {
        let nonce = self.nonces.entry(k.public()).or_insert(0);
        *nonce += 1;
        borsh::to_vec(&sign_tx(
            k,
            CHAIN,
            TxBody {
                nonce: *nonce,
                kind,
            },
        ))
        .unwrap()
    }

    /// Executes and commits a block; returns its execution time in seconds.
    fn block(&mut self, txs: &[Vec<u8>]) -> (f64, BlockResult) {
        self.height += 1;
        let info = BlockInfo {
            proposer: Vec::new(),
            height: self.height,
            time: 1,
            hash: self.height.to_be_bytes().to_vec(),
        };
        let start = Instant::now();
        let r = self.ledger.finalize_block(&info, txs).unwrap();
        self.ledger.commit().unwrap();
        let secs = start.elapsed().as_secs_f64();
        assert!(
            r.txs.iter().all(|t| t.code == 0),
            "{:?}",
            r.txs.iter().find(|t| t.code != 0)
        );
        (secs, r)
    }

    fn get<T: borsh::BorshDeserialize>(&self, path: &str) -> T {
        let answer = self.ledger.query(path, 0, false).unwrap();
        borsh::from_slice(&answer.value.unwrap()).unwrap()
    }
}

fn request(i: usize) -> BuildRequest {
    BuildRequest {
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
    }
}

fn attest(id: Digest, i: usize) -> TxKind {
    let mut sha = [0u8; 32];
    sha[..8].copy_from_slice(&(i as u64).to_le_bytes());
    TxKind::Attest(Attest {
        request_id: id,
        outputs: vec![Output {
            name: "pkg.tgz".into(),
            sha256: Digest(sha),
            size: 12_345,
            stripe_size: 1 << 20,
            stripe_root: Digest([8; 32]),
        }],
        build_env: "node-20.11 npm-10".into(),
        log_digest: Digest([9; 32]),
        provenance: None,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Compacts every column family of the closed store at `path` fully, as
/// RocksDB's own compactions would in time, so rows deleted by pruning
/// leave the disk.
fn compact(path: &std::path::Path) {
    let opts = rocksdb::Options::default();
    let cfs = rocksdb::DB::list_cf(&opts, path).unwrap();
    let db = rocksdb::DB::open_cf(&opts, path, &cfs).unwrap();
    for name in &cfs {
        let cf = db.cf_handle(name).unwrap();
        db.compact_range_cf(&cf, None::<&[u8]>, None::<&[u8]>);
    }
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                dir_bytes(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

fn main() {
    let total = env("STATE_REQUESTS", 100_000);
    let revoke_count = env("REVOKE_ATTESTATIONS", 10_000)
        .min(total.saturating_sub(TRUSTED_FROM + SAMPLED_BLOCKS * REQUESTS_PER_BLOCK));
    let dir = tempfile::tempdir().unwrap();
    // STATE_HISTORY=N keeps N heights of the tree (pyrsia abci's default
    // is 100000); unset, every version, as an archive node.
    let history = match std::env::var("STATE_HISTORY") {
        Ok(n) => pyrsia_chain::store::History::Last(
            n.parse().expect("STATE_HISTORY is a positive number"),
        ),
        Err(_) => pyrsia_chain::store::History::All,
    };
    let mut ledger = Ledger::open_with(dir.path(), history).unwrap();
    let trusted = key(10_000);
    let genesis = GenesisState {
        params: Params {
            builders_per_request: ATTESTERS as u16,
            quorum: 3,
            max_open_per_signer: u16::MAX,
            max_open_per_package: u16::MAX,
            max_open_per_ecosystem: u32::MAX,
            ..Params::default()
        },
        board: Board {
            keys: vec![key(0).public()],
            threshold: 1,
        },
        trusted_nodes: vec![GenesisTrustedNode {
            node: trusted.public(),
            valid_until: u64::MAX,
        }],
        builders: (1..=BUILDERS).map(|i| key(i).public()).collect(),
        beacon_keys: Vec::new(),
    };
    ledger.init_chain(CHAIN, &genesis, 1).unwrap();
    let mut chain = Chain {
        ledger,
        height: 0,
        nonces: Default::default(),
    };
    let builders: Vec<Keypair> = (1..=BUILDERS).map(key).collect();
    let regs: Vec<Vec<u8>> = builders
        .iter()
        .map(|b| {
            let kind = TxKind::RegisterBuilder(RegisterBuilder {
                peer_id: "p".into(),
                ecosystems: vec!["npm".into()],
            });
            chain.tx(b, kind)
        })
        .collect();
    chain.block(&regs);
    let requesters: Vec<Keypair> = (20_000..20_016).map(key).collect();

    let mut made = 0;
    let mut attestations = 0u64;
    // Requests of each block, attested two blocks later: their builders are
    // drawn at the start of the next block.
    let mut batches: std::collections::VecDeque<Vec<(usize, Digest)>> = Default::default();
    let mut at_1k = Vec::new();
    let mut at_full = Vec::new();
    let started = Instant::now();
    while made < total || !batches.is_empty() {
        let mut txs = Vec::with_capacity(1000);
        let due = if batches.len() >= 2 || made == total {
            batches.pop_front().unwrap_or_default()
        } else {
            Vec::new()
        };
        for (i, id) in due {
            let record: RequestRecord = chain.get(&format!("request/{id}"));
            for s in &record.selected {
                let b = &builders[builders.iter().position(|b| b.public() == *s).unwrap()];
                txs.push(chain.tx(b, attest(id, i)));
                attestations += 1;
            }
            if (TRUSTED_FROM..TRUSTED_FROM + revoke_count).contains(&i) {
                txs.push(chain.tx(&trusted, attest(id, i)));
                attestations += 1;
            }
        }
        let n = REQUESTS_PER_BLOCK.min(total - made);
        let mut batch = Vec::with_capacity(n);
        for i in made..made + n {
            let r = request(i);
            batch.push((i, r.id()));
            let requester = &requesters[i % requesters.len()];
            txs.push(chain.tx(requester, TxKind::RequestBuild(r)));
        }
        made += n;
        if n > 0 {
            batches.push_back(batch);
        }
        let (secs, _) = chain.block(&txs);
        if txs.len() >= 990 {
            if (1_000..1_000 + SAMPLED_BLOCKS * REQUESTS_PER_BLOCK).contains(&made) {
                at_1k.push(secs);
            }
            if made + SAMPLED_BLOCKS * REQUESTS_PER_BLOCK >= total && made < total {
                at_full.push(secs);
            }
        }
        if made % 50_000 < REQUESTS_PER_BLOCK && n > 0 {
            eprintln!(
                "  {made} requests, {attestations} attestations, {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    let block_1k = median(at_1k);
    let block_full = median(at_full);
    let bytes = dir_bytes(dir.path());

    let probe = 1_000usize;
    let start = Instant::now();
    for i in 0..probe {
        let id = request((i * 7_919) % total).id();
        let a = chain
            .ledger
            .query(&format!("request/{id}"), 0, true)
            .unwrap();
        assert!(a.value.is_some() && a.proof.is_some());
    }
    let query_ms = start.elapsed().as_secs_f64() * 1e3 / probe as f64;

    let action = GovAction::RevokeTrustedNode {
        node: trusted.public(),
        incident: "bench".into(),
        incident_since_height: 0,
    };
    let gov = TxKind::Governance(Governance {
        seq: 0,
        approvals: vec![approve(&key(0), CHAIN, 0, &action)],
        action,
    });
    let tx = chain.tx(&key(0), gov);
    let (revoke_secs, _) = chain.block(&[tx]);
    let mut void_blocks = Vec::new();
    let start = Instant::now();
    loop {
        let queue = chain
            .ledger
            .query("void/queue", 0, false)
            .unwrap()
            .value
            .is_some();
        if !queue {
            break;
        }
        void_blocks.push(chain.block(&[]).0);
    }
    let void_total = start.elapsed().as_secs_f64();
    let void_max = void_blocks.iter().copied().fold(0.0, f64::max);
    let node: NodeRecord = chain.get(&format!("node/{}", trusted.public()));

    drop(chain);
    compact(dir.path());
    let compacted = dir_bytes(dir.path());

    println!("state_scale: {total} requests, {attestations} attestations, history {history:?}");
    println!(
        "  1,000-tx block (median of {SAMPLED_BLOCKS}) at 1 k requests: {:.1} ms; at {total}: {:.1} ms; ratio {:.2} (goal <= 2)",
        block_1k * 1e3,
        block_full * 1e3,
        block_full / block_1k
    );
    println!(
        "  disk: {} bytes, {:.0} bytes per attestation",
        bytes,
        bytes as f64 / attestations as f64
    );
    println!(
        "  disk after a full compaction: {} bytes, {:.0} bytes per attestation",
        compacted,
        compacted as f64 / attestations as f64
    );
    println!("  proved query of request/ID: {query_ms:.3} ms");
    println!(
        "  revoking a node with {} attestations: the revocation block {:.1} ms, then {} upkeep blocks ({:.1} ms in all, slowest {:.1} ms = {:.2} of a 1,000-tx block)",
        node.attestation_count,
        revoke_secs * 1e3,
        void_blocks.len(),
        void_total * 1e3,
        void_max * 1e3,
        void_max / block_full
    );
}
