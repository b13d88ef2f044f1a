//! Golden app hashes: a fixed genesis and fixed blocks must give exactly the
//! app hashes and result codes recorded in `golden/blocks.txt`. Validators
//! running different builds of Pyrsia must agree on both (the result codes
//! feed CometBFT's results hash), so a change here forks a live network,
//! whether it comes from our rules, the state layout, or a dependency
//! (borsh, jmt, sha2, ed25519).
//!
//! A change that is meant to change them is a new protocol version: rewrite
//! the file with `PYRSIA_BLESS_GOLDEN=1 cargo test --workspace --test golden`
//! and say so in the commit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use pyrsia_chain::beacon::BeaconKey;
use pyrsia_chain::crypto::approve;
use pyrsia_chain::*;

mod common;
use common::{genesis, key};

const CHAIN: &str = "golden-chain";
const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/blocks.txt");

fn output(name: &str, seed: u8) -> Output {
    Output {
        name: name.into(),
        sha256: Digest([seed; 32]),
        size: 1000 + u64::from(seed),
        stripe_size: 1 << 20,
        stripe_root: Digest([seed.wrapping_add(1); 32]),
    }
}

fn request(name: &str, version: &str, repo: &str) -> BuildRequest {
    BuildRequest {
        package: PackageId {
            ecosystem: "npm".into(),
            name: name.into(),
            version: version.into(),
        },
        source: SourceRef {
            repo_url: repo.into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
        },
        recipe: "npm".into(),
    }
}

fn attest(id: Digest, seed: u8) -> TxKind {
    TxKind::Attest(Attest {
        request_id: id,
        outputs: vec![output("pkg.tgz", seed)],
        build_env: "node 20".into(),
        log_digest: Digest([9; 32]),
        provenance: None,
    })
}

/// An attestation that also names its provenance envelope.
fn with_provenance(kind: TxKind) -> TxKind {
    match kind {
        TxKind::Attest(a) => TxKind::Attest(Attest {
            provenance: Some(output("provenance.intoto.jsonl", 13)),
            ..a
        }),
        other => other,
    }
}

fn gov(seq: u64, action: GovAction) -> TxKind {
    TxKind::Governance(Governance {
        seq,
        approvals: vec![
            approve(&key(200), CHAIN, seq, &action),
            approve(&key(201), CHAIN, seq, &action),
        ],
        action,
    })
}

/// Each block's transactions: (signer seed, nonce, kind), after the
/// proposer's beacon. Builders 1..=4 are registered; which of them a request
/// selects depends on the next block's beacon, so
/// every registered builder attests and the unselected ones are refused:
/// the codes record that too. The last blocks admit and remove builders,
/// let the selected builders of a request report failures (the unselected
/// one is refused) and replace them at their deadline.
fn blocks() -> Vec<Vec<(u8, u64, TxKind)>> {
    let left_pad = request("left-pad", "1.3.0", "https://example.org/left-pad.git");
    let impostor = request("left-pad", "1.3.1", "https://example.net/left-pad.git");
    let id = left_pad.id();
    let silent = request("is-even", "1.0.0", "https://example.org/is-even.git");
    let silent_id = silent.id();
    let params = Params {
        attest_timeout_blocks: 3,
        ..Params::default()
    };
    vec![
        (1..=4)
            .map(|i| {
                let kind = TxKind::RegisterBuilder(RegisterBuilder {
                    peer_id: format!("peer{i}"),
                    ecosystems: vec!["npm".into()],
                });
                (i, 1, kind)
            })
            .chain([(60, 1, gov(0, GovAction::UpdateParams(params)))])
            .collect(),
        vec![(50, 1, TxKind::RequestBuild(left_pad))],
        (1..=4).map(|i| (i, 2, attest(id, 7))).collect(),
        vec![
            (100, 1, with_provenance(attest(id, 7))),
            (101, 1, attest(id, 7)),
        ],
        vec![
            (51, 1, TxKind::RequestBuild(impostor)),
            (
                100,
                2,
                TxKind::TrustedImport(TrustedImport {
                    package: PackageId {
                        ecosystem: "npm".into(),
                        name: "is-odd".into(),
                        version: "3.0.1".into(),
                    },
                    outputs: vec![output("is-odd-3.0.1.tgz", 11)],
                    upstream: "https://registry.invalid/is-odd".into(),
                }),
            ),
        ],
        vec![
            (
                60,
                2,
                gov(
                    1,
                    GovAction::BindName(BindName {
                        ecosystem: "npm".into(),
                        name: "is-even".into(),
                        repo_url: "https://example.org/is-even.git".into(),
                    }),
                ),
            ),
            (
                60,
                3,
                gov(
                    2,
                    GovAction::RevokeTrustedNode {
                        node: key(101).public(),
                        incident: "golden".into(),
                        incident_since_height: 4,
                    },
                ),
            ),
        ],
        vec![
            (
                100,
                3,
                TxKind::AdmitBuilder(AdmitBuilder {
                    builder: key(70).public(),
                }),
            ),
            (
                71,
                1,
                TxKind::RegisterBuilder(RegisterBuilder {
                    peer_id: "unadmitted".into(),
                    ecosystems: vec!["npm".into()],
                }),
            ),
        ],
        vec![
            (
                70,
                1,
                TxKind::RegisterBuilder(RegisterBuilder {
                    peer_id: "peer70".into(),
                    ecosystems: vec!["npm".into()],
                }),
            ),
            (
                60,
                4,
                gov(
                    3,
                    GovAction::RemoveBuilder {
                        builder: key(1).public(),
                        reason: "golden".into(),
                        since_height: 0,
                    },
                ),
            ),
        ],
        vec![(52, 1, TxKind::RequestBuild(silent))],
        // Every registered builder reports a failure: the selected ones are
        // recorded, the others refused.
        [(2, 3), (3, 3), (4, 3), (70, 2)]
            .map(|(b, nonce)| {
                let kind = TxKind::ReportFailure(ReportFailure {
                    request_id: silent_id,
                    reason: FailureClass::BuildFailed,
                    log_digest: Some(Digest([b; 32])),
                });
                (b, nonce, kind)
            })
            .to_vec(),
        vec![],
        vec![],
        // The deadline: the builders that reported are replaced.
        vec![],
    ]
}

/// One line per block: `height app_hash codes…`.
fn run() -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(dir.path()).unwrap();
    // Two validators with fixed beacon keys, proposing in turn: the VRF
    // outputs, and so the seeds and selections, are consensus too.
    let proposers: Vec<(Vec<u8>, BeaconKey)> = (1..=2u8)
        .map(|i| (vec![i; 20], BeaconKey::from_seed([i; 32])))
        .collect();
    let mut genesis = genesis(2_000_000_000);
    genesis.beacon_keys = proposers
        .iter()
        .map(|(address, k)| GenesisBeaconKey {
            validator: hex::encode(address),
            vrf_public: hex::encode(k.public()),
        })
        .collect();
    let genesis_hash = ledger.init_chain(CHAIN, &genesis, 1).unwrap();
    let mut lines = vec![format!("0 {}", hex::encode(genesis_hash))];
    for (i, txs) in blocks().into_iter().enumerate() {
        let height = i as u64 + 1;
        let (proposer, beacon_key) = &proposers[i % 2];
        let beacon = ledger.beacon_tx(beacon_key, height).unwrap().unwrap();
        let txs: Vec<Vec<u8>> = std::iter::once(beacon)
            .chain(txs.into_iter().map(|(signer, nonce, kind)| {
                borsh::to_vec(&sign_tx(&key(signer), CHAIN, TxBody { nonce, kind })).unwrap()
            }))
            .collect();
        ledger.check_proposal(&txs, proposer, height).unwrap();
        let info = BlockInfo {
            height,
            proposer: proposer.clone(),
            time: 1_700_000_000 + height,
            hash: pyrsia_chain::Digest::of(&height.to_be_bytes()).0.to_vec(),
        };
        let result = ledger.finalize_block(&info, &txs).unwrap();
        ledger.commit().unwrap();
        let codes: Vec<String> = result.txs.iter().map(|t| t.code.to_string()).collect();
        lines.push(format!(
            "{height} {} {}",
            hex::encode(result.app_hash),
            codes.join(" ")
        ));
    }
    lines
}

#[test]
fn fixed_blocks_give_the_recorded_app_hashes_and_codes() {
    let got = run();
    if std::env::var_os("PYRSIA_BLESS_GOLDEN").is_some() {
        std::fs::write(GOLDEN, got.join("\n") + "\n").unwrap();
        return;
    }
    let want = std::fs::read_to_string(GOLDEN).unwrap();
    let want: Vec<&str> = want.lines().collect();
    assert_eq!(
        got, want,
        "app hashes or result codes changed: this build would fork a live network (see this file's header)"
    );
}
