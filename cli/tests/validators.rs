//! The validator set changes by governance on real cometbft: a node that
//! joins later block-syncs to the same state, the board adds it and it
//! signs, the board removes an original validator and its signatures stop,
//! and a light client anchored at genesis follows across both changes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use pyrsia_chain::{PublicKey, Validators};
use pyrsia_ledger_client::verified::At;
use support::validators::{power_at, signers_at, validators_at};
use support::{cometbft, Testnet};

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn a_joined_node_syncs_is_added_by_governance_and_a_removed_validator_stops_signing() {
    let mut net = Testnet::start(4).await.unwrap();
    let rpc0 = net.nodes[0].rpc_url.clone();
    // A light client from genesis, verifying through node 0 from the start.
    let light_dir = tempfile::tempdir().unwrap();
    let mut light = net
        .verified_via(&rpc0, light_dir.path(), Duration::from_secs(60))
        .unwrap();
    let snapshot = light.snapshot(At::Latest).await.unwrap();
    let genesis_set: Validators = light
        .get_decoded(&snapshot, "validators")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(genesis_set.validators.len(), 4);

    // A fifth node joins later and block-syncs to the same state.
    let home4 = net.dir.path().join("node4");
    let from = net.nodes[0].home.clone();
    let cometbft = cometbft();
    let joined = Testnet::pyrsia_bare_json(&[
        "devnet",
        "join",
        "--dir",
        home4.to_str().unwrap(),
        "--from",
        from.to_str().unwrap(),
        "--cometbft",
        cometbft.to_str().unwrap(),
    ])
    .unwrap();
    assert_eq!(joined["chain_id"], "pyrsia-test");
    assert_eq!(joined["peers"].as_array().unwrap().len(), 4);
    let addr4 = joined["validator"]["address"].as_str().unwrap().to_owned();
    let key4: PublicKey = joined["validator"]["pub_key"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let rpc4 = joined["rpc"].as_str().unwrap().to_owned();
    let behind = net.client(0).unwrap().latest_height().await.unwrap() + 2;
    let i4 = net.add_node(home4.clone(), rpc4.clone()).unwrap();
    net.client(i4)
        .unwrap()
        .wait_height(behind, WAIT)
        .await
        .unwrap();
    for h in [1, behind / 2 + 1, behind] {
        assert_eq!(
            net.client(i4).unwrap().block_app_hash(h).await.unwrap(),
            net.client(0).unwrap().block_app_hash(h).await.unwrap(),
            "app hash of height {h}"
        );
    }
    assert!(!validators_at(&rpc0, behind).unwrap().contains(&addr4));

    // The board adds it: CometBFT lists it, and it signs.
    let added = net.set_validator(&home4, 10).unwrap();
    let added_at = added["height"].as_u64().unwrap();
    let member = net
        .first_height(0, added_at, WAIT, "node 4 in /validators", |h| {
            Ok(validators_at(&rpc0, h)?.contains(&addr4))
        })
        .await
        .unwrap();
    assert_eq!(member, added_at + 2, "CometBFT applies updates at H+2");
    net.first_height(0, member, WAIT, "node 4 signs a commit", |h| {
        Ok(signers_at(&rpc0, h)?.contains(&addr4))
    })
    .await
    .unwrap();

    // The board removes node 3: it leaves the set and its signatures stop
    // counting, while the chain goes on committing.
    let home3 = net.nodes[3].home.clone();
    let addr3 = pyrsia_genesis::validator_keys(&home3).unwrap().address;
    let removed = net.set_validator(&home3, 0).unwrap();
    let removed_at = removed["height"].as_u64().unwrap();
    let gone = net
        .first_height(0, removed_at, WAIT, "node 3 out of /validators", |h| {
            Ok(!validators_at(&rpc0, h)?.contains(&addr3))
        })
        .await
        .unwrap();
    assert_eq!(gone, removed_at + 2);
    let later = gone + 4;
    net.client(0)
        .unwrap()
        .wait_height(later + 1, WAIT)
        .await
        .unwrap();
    let mut node4_signed = false;
    for h in gone..=later {
        let signers = signers_at(&rpc0, h).unwrap();
        assert!(!signers.contains(&addr3), "node 3 signed height {h}");
        assert!(signers.len() >= 3, "height {h}: {signers:?}");
        node4_signed |= signers.contains(&addr4);
    }
    assert!(node4_signed, "node 4 signed none of {gone}..={later}");
    let set = validators_at(&rpc4, later).unwrap();
    assert_eq!(set.len(), 4);
    assert!(set.contains(&addr4) && !set.contains(&addr3));

    // The light client follows across both changes and verifies state
    // after them; so does a fresh one from genesis through the new node.
    let snapshot = light.snapshot(At::Latest).await.unwrap();
    assert!(snapshot.height >= later);
    let ledger_set: Validators = light
        .get_decoded(&snapshot, "validators")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ledger_set.power_of(&key4), Some(10));
    assert_eq!(ledger_set.validators.len(), 4);
    let seq: u64 = light
        .get_decoded(&snapshot, "gov/seq")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seq, 2);
    let fresh_dir = tempfile::tempdir().unwrap();
    let mut fresh = net
        .verified_via(&rpc4, fresh_dir.path(), Duration::from_secs(60))
        .unwrap();
    let snapshot = fresh.snapshot(At::Latest).await.unwrap();
    let seq: u64 = fresh
        .get_decoded(&snapshot, "gov/seq")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seq, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn set_validator_refusals_reach_the_cli_with_their_codes() {
    let net = Testnet::start(1).await.unwrap();
    let home = net.nodes[0].home.clone();
    // The only validator cannot be removed.
    let out = net
        .pyrsia(&[
            "gov",
            "set-validator",
            "--validator-home",
            home.to_str().unwrap(),
            "--power",
            "0",
            "--board-key",
            net.board_key(0).to_str().unwrap(),
            "--board-key",
            net.board_key(1).to_str().unwrap(),
        ])
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("code {}", pyrsia_chain::code::VALIDATOR_SET)),
        "{stderr}"
    );
    // A key nobody has as a validator cannot be removed either.
    let stranger = pyrsia_chain::Keypair::generate().public().to_string();
    let out = net
        .pyrsia(&[
            "gov",
            "set-validator",
            "--validator-pub-key",
            &stranger,
            "--power",
            "0",
            "--board-key",
            net.board_key(0).to_str().unwrap(),
            "--board-key",
            net.board_key(1).to_str().unwrap(),
        ])
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("code {}", pyrsia_chain::code::UNKNOWN_VALIDATOR)),
        "{stderr}"
    );
    // `node init` on another host: the chain's genesis, its peers; a peer
    // that is not NODE_ID@HOST:PORT is refused before anything is written.
    let other = tempfile::tempdir().unwrap();
    let new_home = other.path().join("home");
    let genesis = net.genesis();
    let cometbft = cometbft();
    let init = |peer: &str| {
        std::process::Command::new(support::pyrsia_bin())
            .arg("--home")
            .arg(&new_home)
            .args(["--json", "node", "init", "--genesis"])
            .arg(&genesis)
            .args(["--peer", peer, "--base-port", "26000", "--cometbft"])
            .arg(&cometbft)
            .output()
            .unwrap()
    };
    let out = init("not-a-peer");
    assert!(!out.status.success());
    assert!(!new_home.join("config").exists());
    let peer = format!("{}@127.0.0.1:1", pyrsia_genesis::node_id(&home).unwrap());
    let out = init(&peer);
    assert!(out.status.success(), "{out:?}");
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["rpc"], "http://127.0.0.1:26001");
    assert_eq!(
        std::fs::read(new_home.join("config/genesis.json")).unwrap(),
        std::fs::read(&genesis).unwrap()
    );
    let config = std::fs::read_to_string(new_home.join("config/config.toml")).unwrap();
    assert!(config.contains(&format!("persistent_peers = \"{peer}\"")));
    assert!(config.contains("laddr = \"tcp://0.0.0.0:26000\""));
    assert!(pyrsia_genesis::validator_keys(&new_home)
        .unwrap()
        .vrf_public
        .is_some());
    // A home that holds a node is never overwritten.
    assert!(!init(&peer).status.success());

    let shown = net.pyrsia_json(&["node", "show-validator"]).unwrap();
    let keys = pyrsia_genesis::validator_keys(&home).unwrap();
    assert_eq!(shown["pub_key"], keys.pub_key.to_string());

    // Approval files signed apart, combined by anyone: the validator's
    // power changes two blocks after the action commits.
    let seq = net.pyrsia_json(&["query", "gov-seq"]).unwrap()["value"]
        .as_u64()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let approve = |member: usize| {
        let out = dir.path().join(format!("m{member}.json"));
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
                "set-validator",
                "--validator-pub-key",
                &keys.pub_key.to_string(),
                "--power",
                "20",
            ])
            .output()
            .unwrap();
        assert!(status.status.success(), "{status:?}");
        out.to_str().unwrap().to_owned()
    };
    let (a0, a1) = (approve(0), approve(2));
    let done = net.pyrsia_json(&["gov", "submit", &a0, &a1]).unwrap();
    let at = done["height"].as_u64().unwrap() + 2;
    let rpc = &net.nodes[0].rpc_url;
    net.client(0).unwrap().wait_height(at, WAIT).await.unwrap();
    assert_eq!(power_at(rpc, at, &keys.address).unwrap(), Some(20));
    assert_eq!(power_at(rpc, at - 1, &keys.address).unwrap(), Some(10));
}
