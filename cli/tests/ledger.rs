//! The ledger through its public interfaces (the `pyrsia` CLI and CometBFT's
//! RPC), on real cometbft validators beside real `pyrsia abci` processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use pyrsia_chain::crypto::{approve, sign_tx};
use pyrsia_chain::proof::verify_value;
use pyrsia_chain::{
    code, Attest, BuildRequest, Digest, GovAction, Governance, Keypair, Output, PackageId,
    RegisterBuilder, RequestRecord, SourceRef, TrustLevel, TxBody, TxKind,
};
use pyrsia_ledger_client::verified::At;
use support::Testnet;

fn output_arg(seed: u8) -> String {
    format!(
        "name=pkg.tgz,sha256={},size=1234,stripe-size=1048576,stripe-root={}",
        Digest([seed; 32]),
        Digest([seed.wrapping_add(1); 32])
    )
}

fn level_of(net: &Testnet, request: &str) -> String {
    let q = net.pyrsia_json(&["query", "request", request]).unwrap();
    q["value"]["level"].as_str().unwrap().to_owned()
}

/// Registers `n` builder keys `b0..` for npm through the CLI, each admitted
/// by trusted node 0 first; an unadmitted key is refused with its own code.
fn register_builders(net: &Testnet, n: usize) -> Vec<Keypair> {
    let trusted = net.trusted_key(0);
    (0..n)
        .map(|i| {
            let name = format!("b{i}");
            let key = net.new_key(&name).unwrap();
            let peer = format!("12D3KooWpeer{i}");
            let register = [
                "tx",
                "register-builder",
                "--key",
                &name,
                "--peer-id",
                &peer,
                "--ecosystem",
                "npm",
            ];
            if i == 0 {
                let refused = net.pyrsia(&register).unwrap();
                assert!(
                    !refused.status.success(),
                    "an unadmitted builder registered"
                );
                let stderr = String::from_utf8_lossy(&refused.stderr);
                assert!(
                    stderr.contains(&format!("code {}", code::NOT_ADMITTED)),
                    "{stderr}"
                );
            }
            net.pyrsia_json(&[
                "tx",
                "admit-builder",
                "--key-file",
                trusted.to_str().unwrap(),
                &key.public().to_string(),
            ])
            .unwrap();
            net.pyrsia_json(&register).unwrap();
            key
        })
        .collect()
}

/// `tx request-build` of npm left-pad `version` from `repo`, as "requester".
fn request_left_pad(net: &Testnet, version: &str, repo: &str) -> std::process::Output {
    net.new_key("requester").ok();
    net.pyrsia(&[
        "tx",
        "request-build",
        "--key",
        "requester",
        "--ecosystem",
        "npm",
        "--name",
        "left-pad",
        "--version",
        version,
        "--repo",
        repo,
        "--commit",
        "0123456789abcdef0123456789abcdef01234567",
    ])
    .unwrap()
}

fn request_build(net: &Testnet, version: &str) -> (String, Vec<String>) {
    let out = request_left_pad(net, version, "https://example.org/left-pad.git");
    assert!(out.status.success(), "{out:?}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = r["request_id"].as_str().unwrap().to_owned();
    let selected = r["selected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    (id, selected)
}

fn builder_name(builders: &[Keypair], pubkey: &str) -> String {
    let i = builders
        .iter()
        .position(|k| k.public().to_string() == pubkey)
        .unwrap();
    format!("b{i}")
}

fn attest(net: &Testnet, key_args: &[&str], request: &str, seed: u8) -> std::process::Output {
    let out = output_arg(seed);
    let mut args = vec!["tx", "attest"];
    args.extend_from_slice(key_args);
    args.extend_from_slice(&["--request", request, "--output", &out]);
    net.pyrsia(&args).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn trust_walks_pending_quorum_trusted_reproducible_and_every_tx_kind_commits() {
    let net = Testnet::start(1).await.unwrap();
    let builders = register_builders(&net, 3);
    let (request, selected) = request_build(&net, "1.0.0");
    assert_eq!(
        selected.len(),
        3,
        "all three registered builders are selected"
    );
    assert_eq!(level_of(&net, &request), "pending");

    let first = builder_name(&builders, &selected[0]);
    assert!(attest(&net, &["--key", &first], &request, 7)
        .status
        .success());
    assert_eq!(level_of(&net, &request), "pending");
    let second = builder_name(&builders, &selected[1]);
    assert!(attest(&net, &["--key", &second], &request, 7)
        .status
        .success());
    assert_eq!(level_of(&net, &request), "quorum_only");

    let t0 = net.trusted_key(0);
    let t1 = net.trusted_key(1);
    assert!(
        attest(&net, &["--key-file", t0.to_str().unwrap()], &request, 7)
            .status
            .success()
    );
    assert_eq!(level_of(&net, &request), "trusted");
    assert!(
        attest(&net, &["--key-file", t1.to_str().unwrap()], &request, 7)
            .status
            .success()
    );
    assert_eq!(level_of(&net, &request), "reproducible");

    // The trusted build bound left-pad to its repository: the same name from
    // another one is refused with its own code, and the ledger keeps one build.
    let hijack = request_left_pad(&net, "1.0.0", "https://example.net/impostor/left-pad.git");
    assert!(!hijack.status.success());
    let stderr = String::from_utf8_lossy(&hijack.stderr);
    assert!(stderr.contains("code 16"), "{stderr}");
    let name = net
        .pyrsia_json(&["query", "name", "npm", "left-pad"])
        .unwrap();
    assert_eq!(
        name["value"]["repo_url"],
        "https://example.org/left-pad.git"
    );
    let verified = net
        .pyrsia_json(&[
            "verify",
            "npm",
            "left-pad",
            "1.0.0",
            "--min-trust",
            "reproducible",
        ])
        .unwrap();
    assert_eq!(verified["builds"].as_array().unwrap().len(), 1);
    assert_eq!(verified["builds"][0]["request_id"], request.as_str());

    // The artifact and package records count the request, and their paged
    // indexes point back at it.
    let sha = Digest([7; 32]).to_string();
    let artifact = net.pyrsia_json(&["query", "artifact", &sha]).unwrap();
    assert_eq!(artifact["value"]["request_count"], 1);
    let page = net
        .pyrsia_json(&["query", "key", &format!("artifact-requests/0/{sha}")])
        .unwrap();
    assert_eq!(page["value"][0], request.as_str());
    let package = net
        .pyrsia_json(&["query", "package", "npm", "left-pad", "1.0.0"])
        .unwrap();
    assert_eq!(package["value"]["request_count"], 1);
    let page = net
        .pyrsia_json(&["query", "key", "package-requests/0/npm/left-pad/1.0.0"])
        .unwrap();
    assert_eq!(page["value"][0], request.as_str());
    assert!(package["verified_against_app_hash"].is_string());

    // Trusted import by a certified trusted node.
    let t0s = t0.to_str().unwrap();
    let import = net
        .pyrsia_json(&[
            "tx",
            "trusted-import",
            "--key-file",
            t0s,
            "--ecosystem",
            "npm",
            "--name",
            "is-odd",
            "--version",
            "3.0.1",
            "--upstream",
            "https://upstream.example",
            "--output",
            &output_arg(9),
        ])
        .unwrap();
    let import_id = import["request_id"].as_str().unwrap();
    assert_eq!(level_of(&net, import_id), "trusted");

    // Governance: certify a new trusted node, update params, revoke.
    let newcomer = net.new_key("newcomer").unwrap();
    let (m0, m1) = (net.board_key(0), net.board_key(1));
    let board = [
        "--board-key",
        m0.to_str().unwrap(),
        "--board-key",
        m1.to_str().unwrap(),
    ];
    let pk = newcomer.public().to_string();
    let mut certify = vec!["gov", "certify", &pk];
    certify.extend_from_slice(&board);
    net.pyrsia_json(&certify).unwrap();
    let node = net.pyrsia_json(&["query", "node", &pk]).unwrap();
    assert!(node["value"]["certification"].is_object());

    let mut params = vec![
        "gov",
        "params",
        "--builders-per-request",
        "4",
        "--quorum",
        "3",
    ];
    params.extend_from_slice(&board);
    net.pyrsia_json(&params).unwrap();
    let p = net.pyrsia_json(&["query", "params"]).unwrap();
    assert_eq!(p["value"]["builders_per_request"], 4);
    assert_eq!(p["value"]["quorum"], 3);

    // Revoking trusted node 1 for an incident covering its attestation drops
    // the request from reproducible back to trusted.
    let t1_pk = Keypair::load(&t1).unwrap().public().to_string();
    let mut revoke = vec![
        "gov",
        "revoke",
        &t1_pk,
        "--incident",
        "key leak",
        "--since-height",
        "1",
    ];
    revoke.extend_from_slice(&board);
    let revoked_at = net.pyrsia_json(&revoke).unwrap()["height"]
        .as_u64()
        .unwrap();
    // The voiding runs in the next block's upkeep.
    net.client(0)
        .unwrap()
        .wait_height(revoked_at + 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(level_of(&net, &request), "trusted");
    let revoked = net.pyrsia_json(&["query", "node", &t1_pk]).unwrap();
    assert!(revoked["value"]["certification"].is_null());
    assert_eq!(revoked["value"]["incidents"][0]["description"], "key leak");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_dissent_is_recorded_and_two_are_a_dispute() {
    let net = Testnet::start(1).await.unwrap();
    let builders = register_builders(&net, 3);
    let (request, selected) = request_build(&net, "2.0.0");
    let [a, b, c] = [0, 1, 2].map(|i| builder_name(&builders, &selected[i]));
    assert!(attest(&net, &["--key", &a], &request, 1).status.success());
    assert!(attest(&net, &["--key", &b], &request, 2).status.success());
    // Two lone results: no agreement yet, and no dispute.
    assert_eq!(level_of(&net, &request), "pending");
    // A trusted node agreeing with one side: it leads, the other is a dissent,
    // recorded and shown, and does not veto the build.
    let t0 = net.trusted_key(0);
    assert!(
        attest(&net, &["--key-file", t0.to_str().unwrap()], &request, 1)
            .status
            .success()
    );
    assert_eq!(level_of(&net, &request), "trusted");
    let verified = net
        .pyrsia_json(&["verify", "npm", "left-pad", "2.0.0"])
        .unwrap();
    let attesters = verified["builds"][0]["attesters"].as_array().unwrap();
    let dissents: Vec<bool> = attesters.iter().map(|a| a["dissent"] == true).collect();
    assert_eq!(dissents.iter().filter(|d| **d).count(), 1, "{verified}");
    // A second dissent makes it a dispute.
    assert!(attest(&net, &["--key", &c], &request, 3).status.success());
    assert_eq!(level_of(&net, &request), "disputed");
}

#[tokio::test(flavor = "multi_thread")]
async fn unselected_builder_attestation_is_refused_and_does_not_count() {
    let net = Testnet::start(1).await.unwrap();
    let builders = register_builders(&net, 5);
    let (request, selected) = request_build(&net, "3.0.0");
    assert_eq!(selected.len(), 3, "builders_per_request defaults to 3");
    let outsider = builders
        .iter()
        .position(|k| !selected.contains(&k.public().to_string()))
        .unwrap();
    let selected_one = builder_name(&builders, &selected[0]);
    assert!(attest(&net, &["--key", &selected_one], &request, 4)
        .status
        .success());
    let refused = attest(&net, &["--key", &format!("b{outsider}")], &request, 4);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&format!("code {}", code::NOT_SELECTED)) && stderr.contains("not selected"),
        "{stderr}"
    );
    // One selected attestation plus the refused one: still short of the quorum of 2.
    assert_eq!(level_of(&net, &request), "pending");
    let record: RequestRecord = net
        .client(0)
        .unwrap()
        .query_value(&format!("request/{request}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.attestations.len(), 1);
    assert_eq!(record.level, TrustLevel::Pending);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_transactions_are_rejected_each_with_its_own_code() {
    let net = Testnet::start(1).await.unwrap();
    let client = net.client(0).unwrap();
    let chain_id = client.chain_id().await.unwrap();
    let key = Keypair::generate();
    net.pyrsia_json(&[
        "tx",
        "admit-builder",
        "--key-file",
        net.trusted_key(0).to_str().unwrap(),
        &key.public().to_string(),
    ])
    .unwrap();
    let register = |nonce: u64, peer: &str| {
        sign_tx(
            &key,
            &chain_id,
            TxBody {
                nonce,
                kind: TxKind::RegisterBuilder(RegisterBuilder {
                    peer_id: peer.to_owned(),
                    ecosystems: vec!["cargo".into()],
                }),
            },
        )
    };
    let rejected_code = |r: Result<_, pyrsia_ledger_client::rpc::ClientError>| match r {
        Err(pyrsia_ledger_client::rpc::ClientError::Rejected { code, .. }) => code,
        other => panic!("expected a rejection, got {other:?}"),
    };

    let first = register(1, "peer-1");
    client.submit(&first).await.unwrap();
    // The same bytes again: CometBFT's cache or our nonce check refuses it.
    assert!(client.broadcast(&first).await.is_err());
    // A new transaction reusing the nonce: stale.
    assert_eq!(
        rejected_code(client.broadcast(&register(1, "peer-again")).await),
        code::STALE_NONCE
    );
    // Nothing refused entered the mempool, so 2 is still the next nonce:
    // a later one would leave a gap.
    assert_eq!(
        rejected_code(client.broadcast(&register(3, "peer-gap")).await),
        code::NONCE_NOT_NEXT
    );
    // Signed for another chain.
    let other_chain = sign_tx(&key, "another-chain", register(2, "peer-2").body);
    assert_eq!(
        rejected_code(client.broadcast(&other_chain).await),
        code::WRONG_CHAIN
    );
    // Signature of a different body.
    let mut forged = register(3, "peer-3");
    forged.body.nonce = 4;
    assert_eq!(
        rejected_code(client.broadcast(&forged).await),
        code::BAD_SIGNATURE
    );
    // Random bytes.
    let garbage: Vec<u8> = (0..97u8).map(|i| i.wrapping_mul(31) ^ 0x5a).collect();
    assert_eq!(
        rejected_code(client.broadcast_bytes(garbage).await),
        code::DECODE
    );
    // Governance with one approval where the board threshold is two.
    let member = Keypair::load(&net.board_key(0)).unwrap();
    let action = GovAction::CertifyTrustedNode {
        node: key.public(),
        valid_until: u64::MAX,
    };
    let gov = sign_tx(
        &key,
        &chain_id,
        TxBody {
            nonce: 2,
            kind: TxKind::Governance(Governance {
                seq: 0,
                approvals: vec![approve(&member, &chain_id, 0, &action)],
                action,
            }),
        },
    );
    assert_eq!(
        rejected_code(client.broadcast(&gov).await),
        code::BELOW_THRESHOLD
    );
    // An attestation for a request that does not exist.
    let orphan = sign_tx(
        &key,
        &chain_id,
        TxBody {
            nonce: 2,
            kind: TxKind::Attest(Attest {
                request_id: Digest([3; 32]),
                outputs: vec![Output {
                    name: "x".into(),
                    sha256: Digest([1; 32]),
                    size: 1,
                    stripe_size: 4096,
                    stripe_root: Digest([1; 32]),
                }],
                build_env: "env".into(),
                log_digest: Digest::default(),
                provenance: None,
            }),
        },
    );
    assert_eq!(
        rejected_code(client.broadcast(&orphan).await),
        code::UNKNOWN_REQUEST
    );
    // The node is still healthy and the first transaction's effect is there.
    let node: pyrsia_chain::NodeRecord = client
        .query_value(&format!("node/{}", key.public()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(node.builder.unwrap().peer_id, "peer-1");
}

#[tokio::test(flavor = "multi_thread")]
async fn query_proofs_verify_against_the_next_header_and_tampering_fails() {
    let net = Testnet::start(1).await.unwrap();
    let client = net.client(0).unwrap();
    let chain_id = client.chain_id().await.unwrap();
    let key = Keypair::generate();
    let request = BuildRequest {
        package: PackageId {
            ecosystem: "python".into(),
            name: "six".into(),
            version: "1.16.0".into(),
        },
        source: SourceRef {
            repo_url: "https://example.org/six.git".into(),
            commit: "abc".repeat(14)[..40].into(),
        },
        recipe: "python".into(),
    };
    let id = request.id();
    client
        .submit(&sign_tx(
            &key,
            &chain_id,
            TxBody {
                nonce: 1,
                kind: TxKind::RequestBuild(request),
            },
        ))
        .await
        .unwrap();

    let path = format!("request/{id}");
    let mut verified = net.verified(0).unwrap();
    let snapshot = verified.snapshot(At::Latest).await.unwrap();
    let value = verified
        .get(&snapshot, &path)
        .await
        .unwrap()
        .expect("request exists");
    let record: RequestRecord = borsh::from_slice(&value).unwrap();
    assert_eq!(record.id, id);

    // Re-check by hand: the same proof fails for a tampered value, and the
    // absence proof of a missing key verifies while a claimed value does not.
    let raw = client_proof(&net, &path, snapshot.height).await;
    verify_value(&snapshot.app_hash, path.as_bytes(), Some(&value), &raw).unwrap();
    let mut tampered = value.clone();
    tampered[40] ^= 1;
    assert!(verify_value(&snapshot.app_hash, path.as_bytes(), Some(&tampered), &raw).is_err());
    let mut wrong_root = snapshot.app_hash.clone();
    wrong_root[0] ^= 1;
    assert!(verify_value(&wrong_root, path.as_bytes(), Some(&value), &raw).is_err());

    let missing = format!("request/{}", Digest([0xee; 32]));
    assert!(verified.get(&snapshot, &missing).await.unwrap().is_none());
    let absence_proof = client_proof(&net, &missing, snapshot.height).await;
    assert!(verify_value(
        &snapshot.app_hash,
        missing.as_bytes(),
        Some(b"forged"),
        &absence_proof
    )
    .is_err());
}

/// The raw ICS23 proof of `path` at `height`, straight from the RPC.
async fn client_proof(net: &Testnet, path: &str, height: u64) -> ics23::CommitmentProof {
    use tendermint_rpc::{client::CompatMode, Client, HttpClient};
    let http = HttpClient::builder(net.nodes[0].rpc_url.parse().unwrap())
        .compat_mode(CompatMode::V0_38)
        .build()
        .unwrap();
    let answer = http
        .abci_query(
            Some(path.to_owned()),
            Vec::new(),
            Some(height.try_into().unwrap()),
            true,
        )
        .await
        .unwrap();
    let op = &answer.proof.unwrap().ops[0];
    pyrsia_chain::proof::decode_proof(&op.data).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_abci_app_mid_stream_loses_no_committed_tx() {
    let mut net = Testnet::start(1).await.unwrap();
    let client = net.client(0).unwrap();
    let chain_id = client.chain_id().await.unwrap();
    let key = Keypair::generate();
    let requests: Vec<BuildRequest> = (0..400)
        .map(|i| BuildRequest {
            package: PackageId {
                ecosystem: "cargo".into(),
                name: format!("serde{i}"),
                version: "1.0.0".into(),
            },
            source: SourceRef {
                repo_url: "https://example.org/serde.git".into(),
                commit: format!("{i:040x}"),
            },
            recipe: "cargo".into(),
        })
        .collect();

    // Stream transactions; kill -9 the app once some have committed.
    let mut hashes = Vec::new();
    let mut killed_at = None;
    for (i, r) in requests.iter().enumerate() {
        let tx = sign_tx(
            &key,
            &chain_id,
            TxBody {
                nonce: i as u64 + 1,
                kind: TxKind::RequestBuild(r.clone()),
            },
        );
        match client.broadcast(&tx).await {
            Ok(h) => hashes.push((i, h)),
            Err(_) => break,
        }
        if i == 150 {
            client
                .wait_tx(hashes[100].1, Duration::from_secs(30))
                .await
                .unwrap();
            killed_at = Some(client.latest_height().await.unwrap());
            net.kill_abci(0).unwrap();
        }
    }
    let killed_at = killed_at.expect("the kill happened while streaming");
    // CometBFT stops when its app connection drops; restart both.
    net.wait_cometbft_exit(0, Duration::from_secs(20)).unwrap();
    net.start_abci(0).unwrap();
    net.start_cometbft(0).unwrap();
    client
        .wait_height(killed_at + 3, Duration::from_secs(90))
        .await
        .unwrap();

    // Every transaction committed before the crash is still there.
    let mut committed_before = 0;
    for (i, hash) in &hashes {
        if let Ok(tx) = client.wait_tx(*hash, Duration::from_millis(1)).await {
            if tx.height <= killed_at {
                committed_before += 1;
                let path = format!("request/{}", requests[*i].id());
                let record: Option<RequestRecord> = client.query_value(&path).await.unwrap();
                assert!(
                    record.is_some(),
                    "{path} committed at {} is gone",
                    tx.height
                );
            }
        }
    }
    assert!(
        committed_before >= 101,
        "only {committed_before} committed before the kill"
    );
    // The chain goes on, and the restarted app's state proves against headers.
    // From a new signer: the streamed nonces may still be in the mempool.
    let next = sign_tx(
        &Keypair::from_seed([77; 32]),
        &chain_id,
        TxBody {
            nonce: 1,
            kind: TxKind::RequestBuild(BuildRequest {
                source: SourceRef {
                    repo_url: "https://example.org/serde.git".into(),
                    commit: "a".repeat(40),
                },
                ..requests[0].clone()
            }),
        },
    );
    client.submit(&next).await.unwrap();
    let mut verified = net.verified(0).unwrap();
    let snapshot = verified.snapshot(At::Latest).await.unwrap();
    assert!(verified.get(&snapshot, "params").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn governance_goes_through_approval_files_signed_by_separate_processes() {
    let net = Testnet::start(1).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let seq = net.pyrsia_json(&["query", "gov-seq"]).unwrap()["value"]
        .as_u64()
        .unwrap();
    // Each member signs on their own, with only their key and no node: the
    // approving process is given a node address nobody listens on.
    let approve = |member: usize, seq: u64, repo: &str| {
        let out = dir
            .path()
            .join(format!("m{member}-{seq}-{}.json", repo.len()));
        let status = std::process::Command::new(support::pyrsia_bin())
            .args([
                "--node",
                "http://127.0.0.1:9",
                "gov",
                "approve",
                "--board-key",
            ])
            .arg(net.board_key(member))
            .args(["--chain-id", "pyrsia-test", "--seq", &seq.to_string(), "-o"])
            .arg(&out)
            .args([
                "bind-name",
                "--ecosystem",
                "npm",
                "--name",
                "is-even",
                "--repo",
                repo,
            ])
            .output()
            .unwrap();
        assert!(status.status.success(), "{status:?}");
        out.to_str().unwrap().to_owned()
    };
    let repo = "https://example.org/is-even.git";
    let a0 = approve(0, seq, repo);
    let a1 = approve(1, seq, repo);

    // Approvals for a sequence the ledger is not at are refused before
    // anything is submitted.
    let stale = approve(1, seq + 5, repo);
    let out = net.pyrsia(&["gov", "submit", &a0, &stale]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not for one action"));
    let out = net.pyrsia(&["gov", "submit", &stale]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("approve again"));
    // Approvals of different actions do not combine.
    let other = approve(1, seq, "https://example.net/other.git");
    let out = net.pyrsia(&["gov", "submit", &a0, &other]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not for one action"));
    // One approval is below the board's threshold: the ledger refuses it.
    let out = net.pyrsia(&["gov", "submit", &a0]).unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("code {}", code::BELOW_THRESHOLD)),
        "{out:?}"
    );

    net.pyrsia_json(&["gov", "submit", &a0, &a1]).unwrap();
    let name = net
        .pyrsia_json(&["query", "name", "npm", "is-even"])
        .unwrap();
    assert_eq!(name["value"]["repo_url"], repo);
    assert_eq!(name["value"]["bound_by"], "board");
    let next = net.pyrsia_json(&["query", "gov-seq"]).unwrap()["value"]
        .as_u64()
        .unwrap();
    assert_eq!(next, seq + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_block_moves_the_seed_by_its_proposers_beacon() {
    let net = Testnet::start(1).await.unwrap();
    let client = net.client(0).unwrap();
    client
        .wait_height(4, Duration::from_secs(60))
        .await
        .unwrap();
    let keys: pyrsia_chain::BeaconKeys = client.query_value("beacon/keys").await.unwrap().unwrap();
    assert_eq!(
        keys.keys.len(),
        1,
        "devnet init lists the validator's VRF key"
    );
    let mut seeds = Vec::new();
    for h in 1..=3 {
        let (_, seed) = client.query_raw("beacon/seed", h).await.unwrap();
        seeds.push(seed.unwrap());
    }
    assert!(
        seeds[0] != seeds[1] && seeds[1] != seeds[2],
        "the seed moves every block"
    );
    // The validator accepts only its own valid beacon first in a block
    // (ProcessProposal), so a chain that commits is one whose every block
    // carried it; and a beacon sent as a transaction is refused.
    let beacon =
        pyrsia_chain::beacon::BeaconKey::generate().beacon("pyrsia-test", 9, &Digest([0; 32]));
    match client.broadcast_bytes(beacon.to_tx()).await {
        Err(pyrsia_ledger_client::rpc::ClientError::Rejected { code, .. }) => {
            assert_eq!(code, code::DECODE)
        }
        other => panic!("a beacon entered the mempool: {other:?}"),
    }
}

/// An app keeping 5 heights of state: queries and proofs at the latest
/// heights verify from genesis as before; an older height is refused with
/// the reason, never answered from a partly deleted tree.
#[tokio::test(flavor = "multi_thread")]
async fn a_pruning_node_proves_recent_state_and_refuses_pruned_heights() {
    let net = Testnet::start_full_plan(
        1,
        support::AppKind::Pyrsia,
        support::ServicePlan {
            state_history: Some("5".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let client = net.client(0).unwrap();
    let chain_id = client.chain_id().await.unwrap();
    let key = Keypair::generate();
    let first = client.latest_height().await.unwrap();
    let mut ids = Vec::new();
    for nonce in 1..=12 {
        let request = support::synthetic_request(nonce as usize, "npm");
        ids.push(request.id());
        let tx = sign_tx(
            &key,
            &chain_id,
            TxBody {
                nonce,
                kind: TxKind::RequestBuild(request),
            },
        );
        client.submit(&tx).await.unwrap();
    }
    let latest = client.latest_height().await.unwrap();
    assert!(latest >= first + 10, "{first}..{latest}");

    let mut verified = net.verified(0).unwrap();
    let snapshot = verified.snapshot(At::Latest).await.unwrap();
    for id in &ids {
        let record: RequestRecord = verified
            .get_decoded(&snapshot, &format!("request/{id}"))
            .await
            .unwrap()
            .expect("each request is on the ledger");
        assert_eq!(record.id, *id);
    }
    let old = client
        .query_raw(&format!("request/{}", ids[0]), first)
        .await
        .unwrap_err()
        .to_string();
    assert!(old.contains(&format!("version {first} is pruned")), "{old}");
}
