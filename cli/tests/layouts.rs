//! `pyrsia fetch` and the gateway against attested stripe layouts they
//! cannot use: a certified trusted node attests the right bytes in 4 KiB
//! stripes nobody serves, a selected builder attests them under a bogus
//! stripe root, and only the other builder's layout is what the stores
//! hold. The package is still fetched, through that layout, on real
//! cometbft, `pyrsia abci`, store and gateway processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use pyrsia_chain::Digest;
use support::{eventually, ServicePlan, Testnet};

/// Registers builder keys `b0`, `b1` for npm, each admitted by trusted node 0.
fn register_builders(net: &Testnet) -> Vec<String> {
    let trusted = net.trusted_key(0);
    (0..2)
        .map(|i| {
            let name = format!("b{i}");
            let key = net.new_key(&name).unwrap();
            net.pyrsia_json(&[
                "tx",
                "admit-builder",
                "--key-file",
                trusted.to_str().unwrap(),
                &key.public().to_string(),
            ])
            .unwrap();
            net.pyrsia_json(&[
                "tx",
                "register-builder",
                "--key",
                &name,
                "--peer-id",
                &format!("12D3KooWpeer{i}"),
                "--ecosystem",
                "npm",
            ])
            .unwrap();
            key.public().to_string()
        })
        .collect()
}

async fn wait_ready(net: &Testnet, store_dir: &str) -> serde_json::Value {
    let ready = net.nodes[0].home.join(store_dir).join("ready.json");
    eventually(
        Duration::from_secs(120),
        &format!("store {store_dir} to be ready"),
        || async {
            let bytes = std::fs::read(&ready).map_err(|e| e.to_string())?;
            serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| e.to_string())
        },
    )
    .await
}

fn output(name: &str, sha: &str, size: u64, stripe_size: u32, root: &str) -> String {
    format!("name={name},sha256={sha},size={size},stripe-size={stripe_size},stripe-root={root}")
}

/// A package whose build three attesters describe by three layouts, of
/// which only a regular builder's is held by a store.
struct ThreeLayouts {
    net: Testnet,
    dir: tempfile::TempDir,
    bytes: Vec<u8>,
    /// The store's answer to the put of the bytes.
    put: serde_json::Value,
}

async fn three_layouts() -> ThreeLayouts {
    let mut net = Testnet::start_with_services(ServicePlan {
        regular_builders: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    net.start_service("store:node").unwrap();
    net.start_service("store:regular0").unwrap();
    wait_ready(&net, "store").await;
    let seeder = wait_ready(&net, "builders/regular0/store").await;

    // The bytes, held by the regular0 store in its default 1 MiB stripes.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("left-pad-1.0.0.tgz");
    let bytes: Vec<u8> = (0..3 * 1024 * 1024 + 123u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&file, &bytes).unwrap();
    let put = net
        .pyrsia_json(&[
            "store",
            "put",
            file.to_str().unwrap(),
            "--api",
            seeder["api"].as_str().unwrap(),
            "--token-file",
            seeder["api_token_file"].as_str().unwrap(),
        ])
        .unwrap();
    let (sha, size) = (
        put["sha256"].as_str().unwrap().to_owned(),
        put["size"].as_u64().unwrap(),
    );
    let good = output(
        "left-pad-1.0.0.tgz",
        &sha,
        size,
        put["stripe_size"].as_u64().unwrap() as u32,
        put["stripe_root"].as_str().unwrap(),
    );
    // The same bytes in 4 KiB stripes: a true layout, within the ledger's
    // bounds, that no store holds.
    let mut b = p2p_store::manifest::ManifestBuilder::new(4096).unwrap();
    b.update(&bytes);
    let (_, tiny) = b.finish().unwrap();
    let tiny = output(
        "left-pad-1.0.0.tgz",
        &sha,
        size,
        4096,
        &Digest(tiny.root()).to_string(),
    );
    let bogus = output(
        "left-pad-1.0.0.tgz",
        &sha,
        size,
        1 << 20,
        &Digest([0x5a; 32]).to_string(),
    );

    let builders = register_builders(&net);
    net.new_key("requester").unwrap();
    let req = net
        .pyrsia_json(&[
            "tx",
            "request-build",
            "--key",
            "requester",
            "--ecosystem",
            "npm",
            "--name",
            "left-pad",
            "--version",
            "1.0.0",
            "--repo",
            "https://example.org/left-pad.git",
            "--commit",
            "0123456789abcdef0123456789abcdef01234567",
        ])
        .unwrap();
    let request = req["request_id"].as_str().unwrap().to_owned();
    let selected: Vec<String> = req["selected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(selected.len(), 2, "{req}");
    let key_of = |pk: &str| format!("b{}", builders.iter().position(|b| b == pk).unwrap());
    let attest = |key: &[&str], out: &str| {
        let mut args = vec!["tx", "attest"];
        args.extend_from_slice(key);
        args.extend_from_slice(&["--request", &request, "--output", out]);
        net.pyrsia_json(&args).unwrap();
    };
    // The first selected builder attests a bogus root, the second the
    // layout the stores hold, the trusted node the tiny one.
    attest(&["--key", &key_of(&selected[0])], &bogus);
    attest(&["--key", &key_of(&selected[1])], &good);
    let trusted = net.trusted_key(0);
    attest(&["--key-file", trusted.to_str().unwrap()], &tiny);
    let record = net.request_record(&request).await;
    assert_eq!(record.level, pyrsia_chain::TrustLevel::Trusted);
    ThreeLayouts {
        net,
        dir,
        bytes,
        put,
    }
}

/// The layouts were tried trusted first, as `log` shows: the tiny one, then
/// the bogus root, then the one that worked.
fn assert_tried_trusted_first(log: &str) {
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("attested stripe layout failed"))
        .collect();
    assert_eq!(failed.len(), 2, "{log}");
    assert!(failed[0].contains("stripe_size=4096"), "{log}");
    assert!(
        failed[1].contains(&format!("stripe_root={}", Digest([0x5a; 32]))),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fetch_tries_every_attested_layout_trusted_first_and_survives_bogus_ones() {
    let ThreeLayouts {
        net,
        dir,
        bytes,
        put,
    } = three_layouts().await;
    let out_dir = dir.path().join("fetched");
    let api = net.store_api();
    let fetched = net
        .pyrsia(&[
            "fetch",
            "npm",
            "left-pad",
            "1.0.0",
            "-o",
            out_dir.to_str().unwrap(),
            "--api",
            &api,
        ])
        .unwrap();
    let stderr = String::from_utf8_lossy(&fetched.stderr);
    assert!(fetched.status.success(), "{stderr}");
    assert_eq!(
        std::fs::read(out_dir.join("left-pad-1.0.0.tgz")).unwrap(),
        bytes
    );
    assert_tried_trusted_first(&stderr);

    // The node's store keeps the bytes under the layout that worked, and
    // a second fetch is served from it at once.
    let status: serde_json::Value = net
        .pyrsia_json(&["store", "status", "--api", &api])
        .unwrap();
    let arts = status["artifacts"].as_array().unwrap();
    assert_eq!(arts.len(), 1, "{status}");
    assert_eq!(arts[0]["stripe_root"], put["stripe_root"]);
    let again = dir.path().join("again");
    let second = net
        .pyrsia(&[
            "fetch",
            "npm",
            "left-pad",
            "1.0.0",
            "-o",
            again.to_str().unwrap(),
            "--api",
            &api,
        ])
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    assert!(
        !stderr.contains("attested stripe layout failed"),
        "the complete bytes serve the first layout tried: {stderr}"
    );
    assert_eq!(
        std::fs::read(again.join("left-pad-1.0.0.tgz")).unwrap(),
        bytes
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_serves_through_the_first_attested_layout_that_works() {
    let ThreeLayouts {
        mut net,
        bytes,
        put,
        ..
    } = three_layouts().await;
    net.start_service("gateway:main").unwrap();
    let gw = net.gateway_url();
    eventually(Duration::from_secs(60), "the gateway to answer", || async {
        ureq::get(&format!("{gw}/"))
            .call()
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await;
    let resp = ureq::get(&format!("{gw}/npm/left-pad/-/left-pad-1.0.0.tgz"))
        .call()
        .unwrap();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut body).unwrap();
    assert_eq!(body, bytes);
    assert_tried_trusted_first(&net.service_log("gateway:main"));
    // The node's store holds the bytes under the layout that worked.
    let status: serde_json::Value = net
        .pyrsia_json(&["store", "status", "--api", &net.store_api()])
        .unwrap();
    assert_eq!(status["artifacts"][0]["stripe_root"], put["stripe_root"]);
}
