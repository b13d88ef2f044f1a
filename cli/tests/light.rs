//! The light client against a lying RPC node: a real proxy process
//! (`support/lying_rpc.py`) sits between the client and an honest validator
//! and rewrites what it forwards. Every forgery is refused with its own
//! error; the honest proxy passes; `pyrsia fetch` through a liar fetches
//! nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pyrsia_chain::crypto::sign_tx;
use pyrsia_chain::{BuildRequest, Digest, Keypair, TxBody, TxKind};
use pyrsia_ledger_client::light::{LightClient, LightConfig, LightError, LightStore, TrustAnchor};
use pyrsia_ledger_client::verified::{At, VerifiedLedger, VerifyError};
use support::{synthetic_request, Testnet};

/// Spawns `cmd` and returns it with the first line it prints.
fn spawn_and_read_line(cmd: &mut Command) -> (Child, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line)
}

/// The lying proxy, killed on drop.
struct Proxy {
    child: Child,
    url: String,
}

impl Proxy {
    fn start(upstream: &str, mode: &str, extra: &[&str]) -> Proxy {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/lying_rpc.py");
        let (child, line) = spawn_and_read_line(
            Command::new("python3")
                .arg(script)
                .args(["--upstream", upstream, "--mode", mode])
                .args(extra),
        );
        let port = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("proxy said {line:?}"));
        Proxy {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Commits `request` on `net`, signed by a fresh key.
async fn commit_request(net: &Testnet, request: BuildRequest) {
    let client = net.client(0).unwrap();
    let chain_id = client.chain_id().await.unwrap();
    let key = Keypair::generate();
    let tx = sign_tx(
        &key,
        &chain_id,
        TxBody {
            nonce: 1,
            kind: TxKind::RequestBuild(request),
        },
    );
    client.submit(&tx).await.unwrap();
}

/// A reader of `url` anchored at `net`'s genesis, with a fresh light store.
fn reader(net: &Testnet, url: &str, max_age: Duration) -> (tempfile::TempDir, VerifiedLedger) {
    let store = tempfile::tempdir().unwrap();
    let ledger = net.verified_via(url, store.path(), max_age).unwrap();
    (store, ledger)
}

const FRESH: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn every_forgery_is_refused_with_its_own_error() {
    let honest = Testnet::start(1).await.unwrap();
    // Same chain id, other validators: the attacker's own chain.
    let attacker = Testnet::start(1).await.unwrap();
    let node = honest.nodes[0].rpc_url.clone();
    let evil = attacker.nodes[0].rpc_url.clone();

    // The same request on both chains: records under the same key whose
    // values differ (requester, height), each with a valid proof of its own.
    let request = synthetic_request(1, "npm");
    let id = request.id();
    let other = synthetic_request(2, "npm");
    commit_request(&honest, request.clone()).await;
    commit_request(&honest, other.clone()).await;
    commit_request(&attacker, request).await;
    let path = format!("request/{id}");
    let other_path = format!("request/{}", other.id());

    // The honest proxy passes, and proves the record.
    let proxy = Proxy::start(&node, "honest", &[]);
    let (_s, mut ledger) = reader(&honest, &proxy.url, FRESH);
    let snapshot = ledger.snapshot(At::Latest).await.unwrap();
    let record = ledger.request(&snapshot, &id).await.unwrap().unwrap();
    assert_eq!(record.id, id);
    drop(proxy);

    // (a) another value under the same key, with a proof valid for another
    // state. Read at a height both chains have (the honest chain started
    // first, so it is ahead).
    let both = attacker.client(0).unwrap().latest_height().await.unwrap();
    let proxy = Proxy::start(&node, "value", &["--attacker", &evil]);
    let (_s, mut ledger) = reader(&honest, &proxy.url, FRESH);
    let snapshot = ledger.snapshot(At::Height(both)).await.unwrap();
    let err = ledger.get(&snapshot, &path).await.unwrap_err();
    assert!(
        matches!(err, VerifyError::Proof { .. }),
        "(a) changed value: {err}"
    );
    drop(proxy);

    // (b) forged headers, signed by keys outside the validator set.
    let proxy = Proxy::start(&node, "header", &["--attacker", &evil]);
    let (_s, mut ledger) = reader(&honest, &proxy.url, FRESH);
    let err = ledger.snapshot(At::Latest).await.unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Light(LightError::NotTheTrustedValidators { .. })
        ),
        "(b) forged header: {err}"
    );
    drop(proxy);

    // (c) a commit carrying too few signatures.
    let proxy = Proxy::start(&node, "unsigned", &[]);
    let (_s, mut ledger) = reader(&honest, &proxy.url, FRESH);
    let err = ledger.snapshot(At::Latest).await.unwrap_err();
    assert!(
        matches!(err, VerifyError::Light(LightError::TooFewSignatures { .. })),
        "(c) too few signatures: {err}"
    );
    drop(proxy);

    // (d) an old height served as the latest. Blocks come every 300 ms, so
    // 40 blocks behind is about 12 s, beyond a 4 s bound, while the honest
    // node's latest header is well inside it.
    honest
        .client(0)
        .unwrap()
        .wait_height(45, Duration::from_secs(120))
        .await
        .unwrap();
    let bound = Duration::from_secs(4);
    let (_s, mut ledger) = reader(&honest, &node, bound);
    ledger.snapshot(At::Latest).await.unwrap();
    let proxy = Proxy::start(&node, "stale", &["--lag", "40"]);
    let (_s, mut ledger) = reader(&honest, &proxy.url, bound);
    let err = ledger.snapshot(At::Latest).await.unwrap_err();
    assert!(matches!(err, VerifyError::Stale { .. }), "(d) stale: {err}");
    drop(proxy);

    // (e) the answer for another key.
    let proxy = Proxy::start(&node, "otherkey", &["--other-path", &other_path]);
    let (_s, mut ledger) = reader(&honest, &proxy.url, FRESH);
    let snapshot = ledger.snapshot(At::Latest).await.unwrap();
    let err = ledger.get(&snapshot, &path).await.unwrap_err();
    assert!(
        matches!(err, VerifyError::KeyMismatch { .. }),
        "(e) other key: {err}"
    );
    drop(proxy);

    // (f) another request's record passed off as the one asked for.
    let proxy = Proxy::start(&node, "relabel", &["--other-path", &other_path]);
    let (_s, mut ledger) = reader(&honest, &proxy.url, FRESH);
    let snapshot = ledger.snapshot(At::Latest).await.unwrap();
    let err = ledger.request(&snapshot, &id).await.unwrap_err();
    assert!(
        matches!(err, VerifyError::ProofOfOtherKey { .. }),
        "(f) relabelled record: {err}"
    );
    drop(proxy);

    // (g) a validator set that does not hash to the header's, at a height
    // whose validators both chains have.
    let both = attacker.client(0).unwrap().latest_height().await.unwrap() - 1;
    let proxy = Proxy::start(&node, "valset", &["--attacker", &evil]);
    let (_s, mut ledger) = reader(&honest, &proxy.url, FRESH);
    let err = ledger.snapshot(At::Height(both)).await.unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Light(LightError::ValidatorSetMismatch { .. })
        ),
        "(g) validator set: {err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fetch_and_verify_through_a_liar_get_nothing() {
    // The attacker's chain runs ahead of the honest one, so it can answer
    // for every honest height.
    let attacker = Testnet::start(1).await.unwrap();
    let honest = Testnet::start(1).await.unwrap();
    let request = synthetic_request(7, "npm");
    commit_request(&honest, request.clone()).await;
    let package = &request.package;
    let coords = [
        package.ecosystem.as_str(),
        package.name.as_str(),
        package.version.as_str(),
    ];

    // Honest: verified, and refused only for its trust level (no builder
    // attested it).
    let out = honest
        .pyrsia(&[&["verify"][..], &coords[..]].concat())
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["builds"][0]["request_id"], request.id().to_string());
    assert_eq!(json["builds"][0]["level"], "pending");

    // The attacker serves its own state, where the package does not exist:
    // the absence does not prove against the honest header.
    let proxy = Proxy::start(
        &honest.nodes[0].rpc_url,
        "value",
        &["--attacker", &attacker.nodes[0].rpc_url],
    );
    let out_dir = tempfile::tempdir().unwrap();
    let home = &honest.nodes[0].home;
    let run = |args: &[&str]| {
        Command::new(support::pyrsia_bin())
            .arg("--home")
            .arg(home)
            .args(["--node", &proxy.url])
            .args(args)
            .output()
            .unwrap()
    };
    let out_arg = out_dir.path().to_str().unwrap();
    let fetch = run(&[
        &["fetch"][..],
        &coords[..],
        &["-o", out_arg, "--min-trust", "pending"][..],
    ]
    .concat());
    assert!(!fetch.status.success());
    let stderr = String::from_utf8_lossy(&fetch.stderr);
    assert!(stderr.contains("verified app hash"), "{stderr}");
    assert_eq!(std::fs::read_dir(out_dir.path()).unwrap().count(), 0);

    let verify = run(&[&["verify"][..], &coords[..]].concat());
    assert_eq!(verify.status.code(), Some(4), "{verify:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn light_store_survives_a_restart_and_only_moves_forward() {
    let net = Testnet::start(1).await.unwrap();
    let url = net.nodes[0].rpc_url.clone();
    let store_dir = tempfile::tempdir().unwrap();
    let open = || net.verified_via(&url, store_dir.path(), FRESH).unwrap();

    let mut first = open();
    let s1 = first.snapshot(At::Latest).await.unwrap();
    let highest = first.light().highest_verified().unwrap().height().value();
    assert_eq!(highest, s1.height + 1);
    drop(first);

    // A restart starts from the stored header, not from genesis.
    let mut second = open();
    assert_eq!(
        second.light().highest_verified().unwrap().height().value(),
        highest
    );
    net.client(0)
        .unwrap()
        .wait_height(highest + 3, Duration::from_secs(60))
        .await
        .unwrap();
    let s2 = second.snapshot(At::Latest).await.unwrap();
    assert!(s2.height > s1.height);
    assert_eq!(second.light().headers_fetched(), 1);

    // Reading an older state verifies its header but never lowers the store.
    let top = second.light().highest_verified().unwrap().height().value();
    second.snapshot(At::Height(2)).await.unwrap();
    assert_eq!(
        second.light().highest_verified().unwrap().height().value(),
        top
    );
    drop(second);
    let third = open();
    assert_eq!(
        third.light().highest_verified().unwrap().height().value(),
        top
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn anchors_pinned_expired_and_foreign_are_handled() {
    let net = Testnet::start(1).await.unwrap();
    let url = net.nodes[0].rpc_url.clone();
    let genesis = TrustAnchor::from_genesis_file(&net.genesis()).unwrap();
    let client = |anchor: TrustAnchor, config: &LightConfig, dir: &Path| {
        let store = LightStore::open(dir.join("store.json"), &anchor).unwrap();
        LightClient::new(&url, anchor, config.options().unwrap(), store).unwrap()
    };

    // A header pinned by its hash anchors verification.
    net.client(0)
        .unwrap()
        .wait_height(4, Duration::from_secs(60))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut from_genesis = client(genesis.clone(), &LightConfig::default(), dir.path());
    let h3 = from_genesis.verify_to(3).await.unwrap();
    let pinned =
        TrustAnchor::parse_pinned(&format!("3:{}", h3.signed_header.header.hash())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut from_pin = client(pinned, &LightConfig::default(), dir.path());
    let latest = from_pin.latest_height().await.unwrap();
    from_pin.verify_to(latest).await.unwrap();

    // A pin whose hash is not the header's is refused.
    let wrong = TrustAnchor::parse_pinned(&format!("3:{}", Digest([9; 32]))).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = client(wrong, &LightConfig::default(), dir.path())
        .verify_to(latest)
        .await
        .unwrap_err();
    assert!(
        matches!(err, LightError::AnchorHashMismatch { .. }),
        "{err}"
    );

    // An anchor older than the trusting period is refused, not used.
    let short = LightConfig {
        trusting_period_secs: 1,
        ..LightConfig::default()
    };
    // Four more blocks of 300 ms: genesis is now more than a second old.
    net.client(0)
        .unwrap()
        .wait_height(latest + 4, Duration::from_secs(60))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = client(genesis.clone(), &short, dir.path())
        .verify_to(latest)
        .await
        .unwrap_err();
    assert!(matches!(err, LightError::Expired { .. }), "{err}");

    // A store built from one anchor is never read under another.
    let dir = tempfile::tempdir().unwrap();
    client(genesis, &LightConfig::default(), dir.path())
        .verify_to(2)
        .await
        .unwrap();
    let other =
        TrustAnchor::parse_pinned(&format!("3:{}", h3.signed_header.header.hash())).unwrap();
    let err = LightStore::open(dir.path().join("store.json"), &other).unwrap_err();
    assert!(matches!(err, LightError::OtherAnchor { .. }), "{err}");
}

/// `pyrsia light --listen 127.0.0.1:0` in front of `node`; killed on drop.
struct LightProxy {
    child: Child,
    url: String,
}

impl LightProxy {
    fn start(net: &Testnet, node: &str, home: &Path) -> LightProxy {
        std::fs::create_dir_all(home.join("config")).unwrap();
        std::fs::copy(net.genesis(), home.join("config/genesis.json")).unwrap();
        let (child, line) = spawn_and_read_line(
            Command::new(support::pyrsia_bin())
                .arg("--home")
                .arg(home)
                .args(["--node", node, "light", "--listen", "127.0.0.1:0"]),
        );
        let addr = line
            .trim()
            .rsplit_once("http://")
            .map(|(_, a)| a.to_owned())
            .unwrap_or_else(|| panic!("pyrsia light said {line:?}"));
        LightProxy {
            child,
            url: format!("http://{addr}"),
        }
    }
}

impl Drop for LightProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pyrsia_light_serves_verified_rpc_and_refuses_forgeries() {
    use tendermint_rpc::{Client, HttpClient, Paging};

    let honest = Testnet::start(1).await.unwrap();
    let request = synthetic_request(3, "npm");
    commit_request(&honest, request.clone()).await;
    let node = honest.nodes[0].rpc_url.clone();
    let home = tempfile::tempdir().unwrap();
    let light = LightProxy::start(&honest, &node, home.path());
    let rpc = |url: &str| {
        HttpClient::builder(url.parse().unwrap())
            .compat_mode(tendermint_rpc::client::CompatMode::V0_38)
            .build()
            .unwrap()
    };
    let client = rpc(&light.url);
    let path = format!("request/{}", request.id());

    let status = client.status().await.unwrap();
    let h = status.sync_info.latest_block_height;
    let commit = client.commit(h).await.unwrap();
    assert_eq!(
        commit.signed_header.header.hash(),
        status.sync_info.latest_block_hash
    );
    let direct = rpc(&node).commit(h).await.unwrap();
    assert_eq!(commit.signed_header.header, direct.signed_header.header);
    let validators = client.validators(h, Paging::All).await.unwrap();
    assert_eq!(validators.validators.len(), 1);
    let answer = client
        .abci_query(Some(path.clone()), vec![], None, true)
        .await
        .unwrap();
    assert_eq!(answer.log, "exists");
    assert_eq!(answer.key, path.as_bytes());
    // What it cannot verify, it refuses.
    assert!(client.block(h).await.is_err());
    drop(light);

    // In front of a node whose answers come from another chain, it refuses
    // the query rather than pass the forgery on.
    let attacker = Testnet::start(1).await.unwrap();
    commit_request(&attacker, request).await;
    let liar = Proxy::start(&node, "header", &["--attacker", &attacker.nodes[0].rpc_url]);
    let home = tempfile::tempdir().unwrap();
    let light = LightProxy::start(&honest, &liar.url, home.path());
    let err = rpc(&light.url)
        .abci_query(Some(path), vec![], None, true)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not the ones the trusted header"),
        "{err}"
    );
}
