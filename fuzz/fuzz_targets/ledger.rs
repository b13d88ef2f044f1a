//! Transactions against a live ledger: the real `pyrsia_chain::Ledger` (the
//! state machine the ABCI app drives) over RocksDB in a temporary
//! directory, with builders registered and a build request whose builders
//! are already drawn, so attestations reach the trust rules.
//!
//! An input is a list of records `tag u8 | len u16 LE | payload[len]`:
//! - tag even: `payload` is the transaction's bytes, as a peer could send;
//! - tag odd: `payload` is a borsh `TxBody`, signed here by genesis key
//!   `KEYS[tag / 2 % KEYS.len()]` (governance approvals re-signed by the
//!   board), so mutations get past the signature check.
//!
//! Every transaction goes through `check_tx` (fresh and recheck), then the
//! whole list through `finalize_block` for the next height, twice. Nothing
//! is committed, so every input sees the same state. Invariants: no panic,
//! `finalize_block` succeeds with one result per transaction, and the same
//! block gives the same results and app hash. The input is also tried as
//! an ABCI Query path.
//!
//! With `PYRSIA_FUZZ_WRITE_SEEDS=DIR`, writes seed inputs to DIR first.
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use pyrsia_chain::crypto::approve;
use pyrsia_chain::*;

const CHAIN: &str = "fuzz-chain";
/// Builders 1–3 (registered), 4 (admitted, unregistered), a requester,
/// trusted nodes 100–101, board 200–201.
const KEYS: [u8; 9] = [1, 2, 3, 4, 50, 100, 101, 200, 201];

fn key(i: u8) -> Keypair {
    Keypair::from_seed([i; 32])
}

struct Live {
    _dir: tempfile::TempDir,
    ledger: Ledger,
    block: BlockInfo,
}

fn genesis() -> GenesisState {
    GenesisState {
        params: Params::default(),
        board: Board {
            keys: (200..203).map(|i| key(i).public()).collect(),
            threshold: 2,
        },
        trusted_nodes: [100, 101]
            .map(|i| GenesisTrustedNode {
                node: key(i).public(),
                valid_until: u64::MAX,
            })
            .to_vec(),
        builders: (1..=30).map(|i| key(i).public()).collect(),
        beacon_keys: Vec::new(),
    }
}

fn request() -> BuildRequest {
    BuildRequest {
        package: PackageId {
            ecosystem: "python".into(),
            name: "six".into(),
            version: "1.16.0".into(),
        },
        source: SourceRef {
            repo_url: "https://example.org/six".into(),
            commit: "c0ffee".repeat(7)[..40].into(),
        },
        recipe: "python".into(),
    }
}

fn signed(signer: &Keypair, nonce: u64, kind: TxKind) -> Vec<u8> {
    borsh::to_vec(&sign_tx(signer, CHAIN, TxBody { nonce, kind })).unwrap_or_default()
}

fn block(height: u64) -> BlockInfo {
    BlockInfo {
        height,
        time: 1_000 * height,
        hash: vec![height as u8; 32],
        proposer: Vec::new(),
    }
}

fn open() -> Live {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut ledger = Ledger::open(dir.path()).expect("open ledger");
    ledger.init_chain(CHAIN, &genesis(), 1).expect("init chain");
    // Block 1: builders 1–3 register, 50 requests a build; block 2 draws
    // the builders. Fuzzed blocks are height 3 on top.
    let mut txs: Vec<Vec<u8>> = (1..=3)
        .map(|i| {
            signed(
                &key(i),
                1,
                TxKind::RegisterBuilder(RegisterBuilder {
                    peer_id: format!("p{i}"),
                    ecosystems: vec!["python".into()],
                }),
            )
        })
        .collect();
    txs.push(signed(&key(50), 1, TxKind::RequestBuild(request())));
    for (h, txs) in [(1, txs), (2, Vec::new())] {
        let r = ledger.finalize_block(&block(h), &txs).expect("setup block");
        assert!(r.txs.iter().all(|t| t.code == 0), "setup: {:?}", r.txs);
        ledger.commit().expect("commit");
    }
    Live {
        _dir: dir,
        ledger,
        block: block(3),
    }
}

fn output(name: &str, seed: u8) -> Output {
    Output {
        name: name.into(),
        sha256: Digest([seed; 32]),
        size: 10,
        stripe_size: 4096,
        stripe_root: Digest([seed ^ 0xff; 32]),
    }
}

/// Seed inputs: each kind of transaction, valid, from the right signer.
fn seeds() -> Vec<Vec<(u8, Vec<u8>)>> {
    let id = request().id();
    let body = |nonce, kind| borsh::to_vec(&TxBody { nonce, kind }).unwrap_or_default();
    let tag = |k: u8| KEYS.iter().position(|&x| x == k).unwrap_or(0) as u8 * 2 + 1;
    let attest = |seed| {
        TxKind::Attest(Attest {
            request_id: id,
            outputs: vec![output("six-1.16.0.tar.gz", seed)],
            build_env: "e".into(),
            log_digest: Digest::default(),
            provenance: None,
        })
    };
    let action = GovAction::RevokeTrustedNode {
        node: key(101).public(),
        incident: "stolen key".into(),
        incident_since_height: 1,
    };
    vec![
        vec![(tag(1), body(2, attest(7)))],
        vec![
            (tag(1), body(2, attest(7))),
            (tag(2), body(2, attest(7))),
            (tag(100), body(1, attest(7))),
            (tag(101), body(1, attest(7))),
        ],
        vec![(tag(3), body(2, attest(8))), (tag(2), body(2, attest(7)))],
        vec![(
            tag(4),
            body(
                1,
                TxKind::RegisterBuilder(RegisterBuilder {
                    peer_id: "p4".into(),
                    ecosystems: vec!["npm".into()],
                }),
            ),
        )],
        vec![(tag(50), body(2, TxKind::RequestBuild(request())))],
        vec![(
            tag(1),
            body(
                2,
                TxKind::ReportFailure(ReportFailure {
                    request_id: id,
                    reason: FailureClass::SourceUnreachable,
                    log_digest: None,
                }),
            ),
        )],
        vec![(
            tag(100),
            body(
                1,
                TxKind::BindName(BindName {
                    ecosystem: "npm".into(),
                    name: "left-pad".into(),
                    repo_url: "https://example.org/left-pad".into(),
                }),
            ),
        )],
        vec![(
            tag(100),
            body(
                1,
                TxKind::AdmitBuilder(AdmitBuilder {
                    builder: key(77).public(),
                }),
            ),
        )],
        vec![(
            tag(100),
            body(
                1,
                TxKind::TrustedImport(TrustedImport {
                    package: PackageId {
                        ecosystem: "npm".into(),
                        name: "left-pad".into(),
                        version: "1.3.0".into(),
                    },
                    outputs: vec![output("left-pad-1.3.0.tgz", 9)],
                    upstream: "https://upstream.example".into(),
                }),
            ),
        )],
        vec![(
            tag(50),
            body(
                2,
                TxKind::Governance(Governance {
                    seq: 0,
                    action,
                    approvals: Vec::new(),
                }),
            ),
        )],
        vec![(0, signed(&key(50), 2, TxKind::RequestBuild(request())))],
    ]
}

fn encode_input(records: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, payload) in records {
        out.push(*tag);
        out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        out.extend_from_slice(payload);
    }
    out
}

fn live() -> &'static Mutex<Live> {
    static LIVE: OnceLock<Mutex<Live>> = OnceLock::new();
    LIVE.get_or_init(|| {
        if let Some(dir) = std::env::var_os("PYRSIA_FUZZ_WRITE_SEEDS") {
            for (i, s) in seeds().iter().enumerate() {
                let path = std::path::Path::new(&dir).join(format!("seed-{i:02}"));
                std::fs::write(path, encode_input(s)).expect("write seed");
            }
        }
        Mutex::new(open())
    })
}

/// `PYRSIA_FUZZ_DEBUG` set: print each transaction's result (to check seeds).
fn debug() -> bool {
    static DEBUG: OnceLock<bool> = OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("PYRSIA_FUZZ_DEBUG").is_some())
}

/// The transactions an input stands for.
fn transactions(mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut txs = Vec::new();
    while let [tag, lo, hi, rest @ ..] = data {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(rest.len());
        let (payload, tail) = rest.split_at(len);
        data = tail;
        if tag % 2 == 0 {
            txs.push(payload.to_vec());
            continue;
        }
        let Ok(mut body) = borsh::from_slice::<TxBody>(payload) else {
            txs.push(payload.to_vec());
            continue;
        };
        if let TxKind::Governance(g) = &mut body.kind {
            g.approvals = [200, 201]
                .map(|k| approve(&key(k), CHAIN, g.seq, &g.action))
                .to_vec();
        }
        let signer = key(KEYS[usize::from(tag / 2) % KEYS.len()]);
        txs.push(borsh::to_vec(&sign_tx(&signer, CHAIN, body)).unwrap_or_default());
    }
    txs
}

fuzz_target!(|data: &[u8]| {
    let mut live = live().lock().unwrap_or_else(|e| e.into_inner());
    let txs = transactions(data);
    live.ledger.forget_admitted_nonces();
    for tx in &txs {
        let fresh = live.ledger.check_tx(tx, false);
        let recheck = live.ledger.check_tx(tx, true);
        // A recheck skips only the signature.
        if fresh.code == 0 {
            assert_eq!(recheck.code, 0, "recheck refused what check admitted");
        }
    }
    let block = live.block.clone();
    let first = live
        .ledger
        .finalize_block(&block, &txs)
        .expect("finalize_block failed on a fuzzed block");
    assert_eq!(first.txs.len(), txs.len(), "one result per transaction");
    if debug() {
        for t in &first.txs {
            eprintln!("code {} {}", t.code, t.log);
        }
    }
    let again = live
        .ledger
        .finalize_block(&block, &txs)
        .expect("finalize_block failed the second time");
    assert_eq!(first.app_hash, again.app_hash, "non-deterministic app hash");
    let codes = |r: &BlockResult| r.txs.iter().map(|t| t.code).collect::<Vec<_>>();
    assert_eq!(codes(&first), codes(&again), "non-deterministic results");
    // The same bytes as an ABCI Query path (RPC `abci_query`), proved or not.
    let path = String::from_utf8_lossy(data);
    let _ = live
        .ledger
        .query(&path, 0, data.first().is_some_and(|b| b % 2 == 1));
});
