//! The ledger state machine driven block by block, without consensus.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use pyrsia_chain::crypto::approve;
use pyrsia_chain::*;

mod common;
use common::{genesis, key};

const CHAIN: &str = "unit-chain";

struct Harness {
    _dir: tempfile::TempDir,
    ledger: Ledger,
    height: u64,
    nonces: std::collections::HashMap<PublicKey, u64>,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        ledger.init_chain(CHAIN, &genesis(10_000), 1).unwrap();
        Harness {
            _dir: dir,
            ledger,
            height: 0,
            nonces: Default::default(),
        }
    }

    fn tx(&mut self, signer: &Keypair, kind: TxKind) -> Vec<u8> {
        let nonce = self.nonces.entry(signer.public()).or_insert(0);
        *nonce += 1;
        borsh::to_vec(&sign_tx(
            signer,
            CHAIN,
            TxBody {
                nonce: *nonce,
                kind,
            },
        ))
        .unwrap()
    }

    fn block_at(&mut self, time: u64, txs: &[Vec<u8>]) -> BlockResult {
        self.height += 1;
        let info = BlockInfo {
            proposer: Vec::new(),
            height: self.height,
            time,
            hash: self.height.to_be_bytes().to_vec(),
        };
        let result = self.ledger.finalize_block(&info, txs).unwrap();
        self.ledger.commit().unwrap();
        result
    }

    fn block(&mut self, txs: &[Vec<u8>]) -> BlockResult {
        self.block_at(1_000, txs)
    }

    fn request(&self, id: &Digest) -> RequestRecord {
        let answer = self
            .ledger
            .query(&format!("request/{id}"), 0, false)
            .unwrap();
        borsh::from_slice(&answer.value.unwrap()).unwrap()
    }
}

fn output(seed: u8) -> Output {
    Output {
        name: "a.whl".into(),
        sha256: Digest([seed; 32]),
        size: 10,
        stripe_size: 4096,
        stripe_root: Digest([seed; 32]),
    }
}

fn attest(id: Digest, seed: u8) -> TxKind {
    TxKind::Attest(Attest {
        request_id: id,
        outputs: vec![output(seed)],
        build_env: "e".into(),
        log_digest: Digest::default(),
        provenance: None,
    })
}

fn build_request(version: &str) -> BuildRequest {
    BuildRequest {
        package: PackageId {
            ecosystem: "python".into(),
            name: "six".into(),
            version: version.into(),
        },
        source: SourceRef {
            repo_url: "https://example.org/six".into(),
            commit: "c0ffee".repeat(7)[..40].into(),
        },
        recipe: "python".into(),
    }
}

/// Registers builders 1..=3 and requests a build; returns its id and selection.
fn setup_request(h: &mut Harness) -> (Digest, Vec<PublicKey>) {
    let regs: Vec<_> = (1..=3)
        .map(|i| {
            h.tx(
                &key(i),
                TxKind::RegisterBuilder(RegisterBuilder {
                    peer_id: format!("p{i}"),
                    ecosystems: vec!["python".into()],
                }),
            )
        })
        .collect();
    h.block(&regs);
    let request = build_request("1.16.0");
    let id = request.id();
    let tx = h.tx(&key(50), TxKind::RequestBuild(request));
    let result = h.block(&[tx]);
    assert_eq!(result.txs[0].code, 0, "{}", result.txs[0].log);
    // The builders are drawn at the start of the next block.
    assert!(h.request(&id).selected.is_empty());
    h.block(&[]);
    let selected = h.request(&id).selected;
    assert_eq!(selected.len(), 3);
    (id, selected)
}

fn signer_of(selected: &PublicKey) -> Keypair {
    (1..=3).map(key).find(|k| k.public() == *selected).unwrap()
}

#[test]
fn replaying_the_same_blocks_gives_the_same_app_hashes() {
    let run = || {
        let mut h = Harness::new();
        let (id, selected) = setup_request(&mut h);
        let txs: Vec<_> = selected
            .iter()
            .map(|s| h.tx(&signer_of(s), attest(id, 1)))
            .collect();
        let last = h.block(&txs);
        (last.app_hash, h.request(&id).level)
    };
    let (a, level) = run();
    let (b, _) = run();
    assert_eq!(a, b);
    assert_eq!(level, TrustLevel::QuorumOnly);
}

#[test]
fn a_block_finalized_but_not_committed_is_replayed_to_the_same_hash_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let signer = key(9);
    let tx = borsh::to_vec(&sign_tx(
        &signer,
        CHAIN,
        TxBody {
            nonce: 1,
            kind: TxKind::RequestBuild(build_request("2")),
        },
    ))
    .unwrap();
    let block = BlockInfo {
        proposer: Vec::new(),
        height: 1,
        time: 5,
        hash: vec![1; 32],
    };
    let first_hash = {
        let mut ledger = Ledger::open(dir.path()).unwrap();
        ledger.init_chain(CHAIN, &genesis(10_000), 1).unwrap();
        ledger
            .finalize_block(&block, std::slice::from_ref(&tx))
            .unwrap()
            .app_hash
        // dropped here: the "crash" before Commit
    };
    let mut ledger = Ledger::open(dir.path()).unwrap();
    assert_eq!(
        ledger.info().unwrap().height,
        0,
        "nothing of block 1 persisted"
    );
    let replayed = ledger.finalize_block(&block, &[tx]).unwrap();
    assert_eq!(replayed.app_hash, first_hash);
    ledger.commit().unwrap();
    drop(ledger);
    let reopened = Ledger::open(dir.path()).unwrap();
    assert_eq!(reopened.info().unwrap().height, 1);
    assert_eq!(reopened.info().unwrap().app_hash, first_hash);
}

#[test]
fn check_tx_writes_nothing_and_init_chain_is_idempotent() {
    let mut h = Harness::new();
    let genesis_hash = h.ledger.info().unwrap().app_hash;
    let tx = h.tx(
        &key(1),
        TxKind::RegisterBuilder(RegisterBuilder {
            peer_id: "p".into(),
            ecosystems: vec!["npm".into()],
        }),
    );
    assert_eq!(h.ledger.check_tx(&tx, false).code, 0);
    assert_eq!(
        h.ledger.info().unwrap().app_hash,
        genesis_hash,
        "CheckTx wrote to the state"
    );
    assert_eq!(
        h.ledger.init_chain(CHAIN, &genesis(10_000), 1).unwrap(),
        genesis_hash
    );
    assert!(h.ledger.init_chain("other", &genesis(10_000), 1).is_err());
}

fn register(h: &mut Harness, signer: &Keypair) -> Vec<u8> {
    h.tx(
        signer,
        TxKind::RegisterBuilder(RegisterBuilder {
            peer_id: "p".into(),
            ecosystems: vec!["npm".into()],
        }),
    )
}

#[test]
fn check_tx_admits_each_nonce_once_and_no_gap() {
    let mut h = Harness::new();
    let signer = key(1);
    let (first, second, third) = (
        register(&mut h, &signer),
        register(&mut h, &signer),
        register(&mut h, &signer),
    );
    assert_eq!(h.ledger.check_tx(&first, false).code, 0);
    assert_eq!(h.ledger.check_tx(&first, false).code, code::NONCE_NOT_NEXT);
    let gap = h.ledger.check_tx(&third, false);
    assert_eq!(gap.code, code::NONCE_NOT_NEXT, "{}", gap.log);
    assert!(gap.log.contains("next nonce here is 2"), "{}", gap.log);
    assert_eq!(h.ledger.check_tx(&second, false).code, 0);
    assert_eq!(h.ledger.check_tx(&third, false).code, 0);
}

/// CometBFT answers CheckTx's verdict to the sender even when its mempool
/// then drops the transaction for being full: the sender's next nonce is
/// admitted and the dropped one must be accepted when it is sent again.
#[test]
fn a_nonce_dropped_after_admission_can_be_sent_again() {
    let mut h = Harness::new();
    let signer = key(1);
    let (first, second) = (register(&mut h, &signer), register(&mut h, &signer));
    assert_eq!(h.ledger.check_tx(&first, false).code, 0);
    assert_eq!(h.ledger.check_tx(&second, false).code, 0);
    // A block without them; the recheck finds only the second in the mempool.
    h.block(&[]);
    assert_eq!(h.ledger.check_tx(&second, true).code, 0);
    assert_eq!(h.ledger.check_tx(&first, false).code, 0);
    assert_eq!(h.ledger.check_tx(&second, false).code, code::NONCE_NOT_NEXT);
    // Once the first is committed, the mempool starts again from the state.
    let result = h.block(std::slice::from_ref(&first));
    assert_eq!(result.txs[0].code, 0);
    assert_eq!(h.ledger.check_tx(&first, false).code, code::STALE_NONCE);
    assert_eq!(h.ledger.check_tx(&second, false).code, 0);
}

/// Gossip delivers a signer's `n + 1` before `n`, or `n` never arrives:
/// the proposal puts each signer's transactions in nonce order and holds
/// back what follows a gap, so no transaction is made stale by a later one.
#[test]
fn proposals_order_each_signer_and_hold_back_gaps() {
    let mut h = Harness::new();
    let (a, b) = (key(1), key(2));
    let a1 = register(&mut h, &a);
    let a2 = register(&mut h, &a);
    let _a3 = register(&mut h, &a);
    let a4 = register(&mut h, &a);
    let b1 = register(&mut h, &b);
    let stale = {
        let old = register(&mut h, &key(3));
        h.block(std::slice::from_ref(&old));
        old
    };
    let ordered = h
        .ledger
        .order_proposal(vec![
            a2.clone(),
            stale.clone(),
            b"junk".to_vec(),
            a1.clone(),
            a4.clone(),
            b1.clone(),
        ])
        .unwrap();
    assert_eq!(ordered, vec![a1.clone(), a2.clone(), b1.clone()]);
    h.ledger
        .check_proposal(&ordered, &[], h.height + 1)
        .unwrap();

    // A proposer that does otherwise is refused, whoever it is.
    for (bad, why) in [
        (vec![a2.clone(), a1.clone()], "nonce 2 where 1 is next"),
        (vec![a1.clone(), a2.clone(), a4], "nonce 4 where 3 is next"),
        (vec![stale, b1.clone()], "where 2 is next"),
        (vec![b1, b"junk".to_vec()], "cannot apply"),
    ] {
        let err = h
            .ledger
            .check_proposal(&bad, &[], h.height + 1)
            .unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
    }
}

#[test]
fn a_failed_rule_still_consumes_the_nonce() {
    let mut h = Harness::new();
    let orphan = h.tx(&key(1), attest(Digest([9; 32]), 1));
    let result = h.block(std::slice::from_ref(&orphan));
    assert_eq!(result.txs[0].code, code::UNKNOWN_REQUEST);
    let result = h.block(&[orphan]);
    assert_eq!(result.txs[0].code, code::STALE_NONCE);
}

#[test]
fn lapsed_certification_no_longer_counts_as_trusted() {
    let mut h = Harness::new();
    let (id, _) = setup_request(&mut h);
    let tx = h.tx(&key(100), attest(id, 1));
    // Block time past valid_until (10_000): the node is neither trusted nor selected.
    let result = h.block_at(20_000, &[tx]);
    assert_eq!(
        result.txs[0].code,
        code::NOT_SELECTED,
        "{}",
        result.txs[0].log
    );
}

#[test]
fn revocation_voids_attestations_since_the_incident_and_lowers_the_level() {
    let mut h = Harness::new();
    let (id, selected) = setup_request(&mut h);
    let mut txs: Vec<_> = selected[..2]
        .iter()
        .map(|s| h.tx(&signer_of(s), attest(id, 1)))
        .collect();
    txs.push(h.tx(&key(100), attest(id, 1)));
    txs.push(h.tx(&key(101), attest(id, 1)));
    h.block(&txs);
    assert_eq!(h.request(&id).level, TrustLevel::Reproducible);
    let attested_at = h.height;

    let action = GovAction::RevokeTrustedNode {
        node: key(101).public(),
        incident: "stolen key".into(),
        incident_since_height: attested_at,
    };
    let gov = TxKind::Governance(Governance {
        seq: 0,
        approvals: vec![
            approve(&key(200), CHAIN, 0, &action),
            approve(&key(202), CHAIN, 0, &action),
        ],
        action,
    });
    let tx = h.tx(&key(60), gov);
    let result = h.block(&[tx]);
    assert_eq!(result.txs[0].code, 0, "{}", result.txs[0].log);
    // The voiding runs in the next block's upkeep, a bounded number of pages
    // per block.
    let upkeep = h.block(&[]);
    let changed = upkeep
        .events
        .iter()
        .find(|e| e.kind == "trust_changed")
        .unwrap();
    assert!(changed.attributes.contains(&("to", "trusted".to_owned())));
    let record = h.request(&id);
    assert_eq!(record.level, TrustLevel::Trusted);
    assert_eq!(
        record
            .attestations
            .iter()
            .filter(|a| a.role == AttesterRole::Void)
            .count(),
        1
    );
}

#[test]
fn governance_rejects_replayed_approvals_and_strangers() {
    let mut h = Harness::new();
    let action = GovAction::CertifyTrustedNode {
        node: key(97).public(),
        valid_until: 9,
    };
    let approvals = vec![
        approve(&key(200), CHAIN, 0, &action),
        approve(&key(201), CHAIN, 0, &action),
    ];
    let gov = |seq| {
        TxKind::Governance(Governance {
            seq,
            approvals: approvals.clone(),
            action: action.clone(),
        })
    };
    let first = h.tx(&key(61), gov(0));
    let again = h.tx(&key(61), gov(1));
    let result = h.block(&[first, again]);
    assert_eq!(result.txs[0].code, 0);
    // Approvals signed for sequence 0 do not verify for sequence 1.
    assert_eq!(result.txs[1].code, code::BAD_APPROVAL);
    let stranger = Governance {
        seq: 1,
        approvals: vec![approve(&key(9), CHAIN, 1, &action)],
        action: action.clone(),
    };
    let tx = h.tx(&key(61), TxKind::Governance(stranger));
    assert_eq!(h.block(&[tx]).txs[0].code, code::BAD_APPROVAL);
}

#[test]
fn malformed_inputs_get_codes_not_panics() {
    let mut h = Harness::new();
    let mut txs: Vec<Vec<u8>> = vec![vec![], vec![0xff; 10], vec![0; ledger::MAX_TX_BYTES + 1]];
    // A valid prefix with garbage appended.
    let mut trailing = h.tx(
        &key(1),
        TxKind::RegisterBuilder(RegisterBuilder {
            peer_id: "p".into(),
            ecosystems: vec!["npm".into()],
        }),
    );
    trailing.push(0);
    txs.push(trailing);
    // Bad field values.
    txs.push(h.tx(
        &key(2),
        TxKind::RegisterBuilder(RegisterBuilder {
            peer_id: "p".into(),
            ecosystems: vec!["NPM/../".into()],
        }),
    ));
    txs.push(h.tx(
        &key(3),
        TxKind::RequestBuild(BuildRequest {
            recipe: String::new(),
            ..build_request("1")
        }),
    ));
    let codes: Vec<u32> = h.block(&txs).txs.iter().map(|r| r.code).collect();
    assert_eq!(
        codes,
        vec![
            code::DECODE,
            code::DECODE,
            code::TOO_LARGE,
            code::DECODE,
            code::INVALID_FIELD,
            code::INVALID_FIELD
        ]
    );
    for path in ["", "request/zz", "package/npm", "../params", "nonce/12"] {
        assert!(h.ledger.query(path, 0, true).is_err(), "{path:?} accepted");
    }
}

#[test]
fn commits_stripes_and_nonces_are_bounded() {
    let mut h = Harness::new();
    let (id, selected) = setup_request(&mut h);
    let short_commit = |commit: &str| {
        let mut r = build_request("2.0.0");
        r.source.commit = commit.into();
        TxKind::RequestBuild(r)
    };
    let stripes = |stripe_size: u32, size: u64| {
        TxKind::Attest(Attest {
            request_id: id,
            outputs: vec![Output {
                stripe_size,
                size,
                ..output(1)
            }],
            build_env: "e".into(),
            log_digest: Digest::default(),
            provenance: None,
        })
    };
    let builder = signer_of(&selected[0]);
    let txs = vec![
        h.tx(&key(70), short_commit("c0ffee")),
        h.tx(&key(71), short_commit(&"C".repeat(40))),
        h.tx(&key(72), short_commit(&"0".repeat(64))),
        h.tx(&builder, stripes(1, 10)),
        h.tx(&builder, stripes(64 << 20, 10)),
        h.tx(&builder, stripes(4096, 4096 * (256 * 1024 + 1))),
    ];
    let codes: Vec<u32> = h.block(&txs).txs.iter().map(|r| r.code).collect();
    assert_eq!(
        codes,
        vec![
            code::INVALID_FIELD,
            code::INVALID_FIELD,
            code::OK,
            code::INVALID_FIELD,
            code::INVALID_FIELD,
            code::INVALID_FIELD
        ]
    );

    // A nonce may skip ahead, but not arbitrarily far.
    let register = TxKind::RegisterBuilder(RegisterBuilder {
        peer_id: "p".into(),
        ecosystems: vec!["npm".into()],
    });
    let far = |nonce| {
        borsh::to_vec(&sign_tx(
            &key(20),
            CHAIN,
            TxBody {
                nonce,
                kind: register.clone(),
            },
        ))
        .unwrap()
    };
    let codes: Vec<u32> = h
        .block(&[far(ledger::MAX_NONCE_STEP + 1), far(ledger::MAX_NONCE_STEP)])
        .txs
        .iter()
        .map(|r| r.code)
        .collect();
    assert_eq!(codes, vec![code::INVALID_FIELD, code::OK]);
}

/// The same transaction with one bit of its signature flipped: the body,
/// signer and nonce are those of `tx`.
fn with_bad_signature(tx: &[u8]) -> Vec<u8> {
    let mut signed: SignedTx = borsh::from_slice(tx).unwrap();
    signed.signature[0] ^= 1;
    borsh::to_vec(&signed).unwrap()
}

/// FinalizeBlock skips the signature of a transaction whose exact bytes
/// CheckTx verified. A forgery with the same body must not ride on it.
#[test]
fn a_verified_body_does_not_vouch_for_another_signature() {
    let mut h = Harness::new();
    let good = register(&mut h, &key(1));
    let forged = with_bad_signature(&good);
    assert_eq!(h.ledger.check_tx(&good, false).code, 0);
    assert_eq!(h.ledger.check_tx(&forged, false).code, code::BAD_SIGNATURE);
    let block = h.block(std::slice::from_ref(&forged));
    assert_eq!(
        block.txs[0].code,
        code::BAD_SIGNATURE,
        "{}",
        block.txs[0].log
    );
    // The forgery consumed nothing: the real one still applies.
    assert_eq!(h.block(&[good]).txs[0].code, 0);
}

/// A forgery that CheckTx refused is not remembered either, and a recheck
/// (which skips the signature) remembers nothing.
#[test]
fn refused_and_rechecked_transactions_are_not_remembered() {
    let mut h = Harness::new();
    let good = register(&mut h, &key(1));
    let forged = with_bad_signature(&good);
    assert_eq!(h.ledger.check_tx(&forged, false).code, code::BAD_SIGNATURE);
    h.ledger.check_tx(&forged, true);
    let block = h.block(&[forged]);
    assert_eq!(
        block.txs[0].code,
        code::BAD_SIGNATURE,
        "{}",
        block.txs[0].log
    );
}

/// A full cache forgets the oldest transaction and a disabled one holds
/// nothing; what is not remembered is verified in the block.
#[test]
fn a_full_or_disabled_cache_still_verifies() {
    for capacity in [0, 1] {
        let mut h = Harness::new();
        h.ledger.set_verified_capacity(capacity);
        let (a, b) = (register(&mut h, &key(1)), register(&mut h, &key(2)));
        assert_eq!(h.ledger.check_tx(&a, false).code, 0);
        assert_eq!(h.ledger.check_tx(&b, false).code, 0);
        let forged_a = with_bad_signature(&a);
        let forged_b = with_bad_signature(&b);
        let codes = |r: BlockResult| r.txs.iter().map(|t| t.code).collect::<Vec<_>>();
        assert_eq!(
            codes(h.block(&[forged_a, forged_b])),
            vec![code::BAD_SIGNATURE, code::BAD_SIGNATURE],
            "capacity {capacity}"
        );
        assert_eq!(codes(h.block(&[a, b])), vec![0, 0], "capacity {capacity}");
    }
}

/// Whatever each node's CheckTx saw, the same blocks give the same results
/// and app hashes: one ledger checked every transaction first (warm cache),
/// another none (cold), a third remembers only one at a time.
#[test]
fn remembered_signatures_do_not_change_results() {
    let run = |check: bool, capacity: usize| {
        let mut h = Harness::new();
        h.ledger.set_verified_capacity(capacity);
        let mut blocks = Vec::new();
        for round in 0..3u8 {
            let mut txs = Vec::new();
            for i in 1..=4u8 {
                let tx = register(&mut h, &key(40 + i));
                if check {
                    h.ledger.check_tx(&tx, false);
                }
                txs.push(if (i + round) % 3 == 0 {
                    with_bad_signature(&tx)
                } else {
                    tx
                });
            }
            let r = h.block(&txs);
            blocks.push((
                r.app_hash,
                r.txs
                    .iter()
                    .map(|t| (t.code, t.log.clone()))
                    .collect::<Vec<_>>(),
            ));
        }
        blocks
    };
    let cold = run(false, ledger::VERIFIED_CAPACITY);
    assert!(cold
        .iter()
        .flat_map(|(_, txs)| txs)
        .any(|(code, _)| *code == code::BAD_SIGNATURE));
    assert_eq!(run(true, ledger::VERIFIED_CAPACITY), cold);
    assert_eq!(run(true, 1), cold);
}

/// Signatures verified ahead as a batch give CheckTx and the block the
/// verdicts single verification gives. A forgery in the batch fails it, and
/// neither the forgery nor the undecodable bytes beside it are remembered.
#[test]
fn signatures_verified_ahead_in_a_batch_change_no_verdict() {
    let run = |ahead: bool| {
        let mut h = Harness::new();
        let txs: Vec<Vec<u8>> = (1..=6u8)
            .map(|i| {
                let tx = register(&mut h, &key(60 + i));
                if i % 3 == 0 {
                    with_bad_signature(&tx)
                } else {
                    tx
                }
            })
            .chain([b"not a transaction".to_vec()])
            .collect();
        if ahead {
            h.ledger.verify_ahead(&txs);
        }
        let checked: Vec<u32> = txs
            .iter()
            .map(|t| h.ledger.check_tx(t, false).code)
            .collect();
        let block = h.block(&txs);
        let in_block: Vec<u32> = block.txs.iter().map(|t| t.code).collect();
        (checked, in_block, block.app_hash)
    };
    let single = run(false);
    assert_eq!(
        single
            .0
            .iter()
            .filter(|&&c| c == code::BAD_SIGNATURE)
            .count(),
        2,
        "{:?}",
        single.0
    );
    assert_eq!(run(true), single);

    // Only the forgery is in the block: it is verified there, not waved through.
    let mut h = Harness::new();
    let good = register(&mut h, &key(70));
    let other = register(&mut h, &key(71));
    let forged = with_bad_signature(&good);
    h.ledger.verify_ahead(&[other, forged.clone()]);
    assert_eq!(h.block(&[forged]).txs[0].code, code::BAD_SIGNATURE);
}
