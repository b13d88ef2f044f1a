//! The gateway with real clients (npm, pip, mvn, skopeo, headless
//! Chromium) on real processes: a validator, two stores, a certified trusted
//! node's gateway importing from a local upstream of real packages, and the
//! node's own gateway, which has no upstream and gets everything from its
//! peer; then, with the upstream, the peer and the validator gone, the same
//! installs from what the node's gateway verified and kept.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/gateway_env.rs"]
mod gateway_env;
#[path = "../../builder/tests/support/packages.rs"]
mod packages;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use gateway_env::{http_get, ok, run, wait_http, Clients, Upstream, NPM_DEPENDENCIES};
use support::{ServicePlan, Testnet};

fn gateway_fields(
    port: u16,
    store: &str,
    cache: &str,
    min_trust: &str,
) -> Vec<(&'static str, toml_edit::Value)> {
    vec![
        ("listen", format!("127.0.0.1:{port}").into()),
        ("store", store.into()),
        ("cache_dir", cache.into()),
        ("min_trust", min_trust.into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_clients_install_through_imports_from_peers_and_offline() {
    let upstream = Upstream::start(NPM_DEPENDENCIES, "gateway-tree-lock.json");
    // Short blocks: each import waits for its commit and the header after it.
    let mut net = Testnet::start_with_services(ServicePlan {
        trusted_builders: 1,
        timeout_commit: Some("100ms".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let ports = support::free_port_run(3).unwrap();
    let (node_gw, importer_gw, strict_gw) = (
        format!("http://127.0.0.1:{ports}"),
        format!("http://127.0.0.1:{}", ports + 1),
        format!("http://127.0.0.1:{}", ports + 2),
    );
    net.set_gateway("main", &gateway_fields(ports, "node", "gateway", "trusted"))
        .unwrap();
    let mut importer = gateway_fields(ports + 1, "trusted0", "gateway-importer", "trusted");
    importer.push(("key_file", "builders/trusted0/key.json".into()));
    let mut upstreams = toml_edit::InlineTable::new();
    for (name, path) in [
        ("npm", "/npm"),
        ("pypi", "/pypi"),
        ("maven", "/maven"),
        ("oci", ""),
    ] {
        upstreams.insert(name, format!("{}{path}", upstream.url).into());
    }
    importer.push(("upstreams", toml_edit::Value::InlineTable(upstreams)));
    net.set_gateway("importer", &importer).unwrap();
    net.set_gateway(
        "strict",
        &gateway_fields(ports + 2, "node", "gateway-strict", "reproducible"),
    )
    .unwrap();
    for s in [
        "store:node",
        "store:trusted0",
        "gateway:main",
        "gateway:importer",
        "gateway:strict",
    ] {
        net.start_service(s).unwrap();
    }
    for gw in [&node_gw, &importer_gw, &strict_gw] {
        wait_http(&format!("{gw}/v2/"));
    }
    let clients = Clients::new();

    // 1. Through the trusted node: every miss is imported from the upstream.
    let lockfile = clients.install_all(&importer_gw, None);
    let lock = std::fs::read(&lockfile).unwrap();
    let kept_lock = clients.dir.path().join("package-lock.json");
    std::fs::write(&kept_lock, &lock).unwrap();
    let lock_doc: serde_json::Value = serde_json::from_slice(&lock).unwrap();
    let packages = lock_doc["packages"].as_object().unwrap().len() - 1;
    assert!(packages >= 20, "{packages} packages in the tree");

    // The imports are on the ledger, trusted, attested by the trusted node.
    let mut verified = net.verified(0).unwrap();
    let yargs = pyrsia_chain::PackageId {
        ecosystem: "npm".into(),
        name: "yargs".into(),
        version: "17.7.2".into(),
    };
    let builds = verified
        .package_builds(&yargs, pyrsia_ledger_client::verified::At::Latest)
        .await
        .unwrap()
        .builds;
    assert_eq!(builds.len(), 1);
    assert_eq!(builds[0].level, pyrsia_chain::TrustLevel::Trusted);
    let trusted_key = net.builder_key("trusted0").unwrap().public();
    assert_eq!(builds[0].attestations[0].attester, trusted_key);

    // Versions are immutable: the upstream changes the bytes of an imported
    // version, and the gateway still describes and serves the imported ones.
    let (_, before) = http_get(&format!("{importer_gw}/npm/yargs"), "application/json");
    let before: serde_json::Value = serde_json::from_str(&before).unwrap();
    let integrity = before["versions"]["17.7.2"]["dist"]["integrity"].clone();
    let tarball = upstream.npm.join("yargs-17.7.2.tgz");
    let original = std::fs::read(&tarball).unwrap();
    {
        let (_tmp, root) = packages::unpack_root(&tarball);
        std::fs::write(root.join("README.md"), "changed upstream").unwrap();
        ok(
            "repacking",
            &run(Command::new("tar")
                .arg("-czf")
                .arg(&tarball)
                .arg("-C")
                .arg(root.parent().unwrap())
                .arg("package")),
        );
    }
    let (_, upstream_doc) = http_get(&format!("{}/npm/yargs", upstream.url), "application/json");
    let upstream_doc: serde_json::Value = serde_json::from_str(&upstream_doc).unwrap();
    assert_ne!(
        upstream_doc["versions"]["17.7.2"]["dist"]["integrity"],
        integrity
    );
    let (_, after) = http_get(&format!("{importer_gw}/npm/yargs"), "application/json");
    let after: serde_json::Value = serde_json::from_str(&after).unwrap();
    assert_eq!(after["versions"]["17.7.2"]["dist"]["integrity"], integrity);
    std::fs::write(&tarball, original).unwrap();

    // 2. Through the node's own gateway: no upstream, everything from its peer.
    clients.install_all(&node_gw, Some(&kept_lock));

    // 3. A gateway whose minimum is `reproducible` refuses the trusted
    // imports, and the client prints the level.
    let project = clients.fresh("strict");
    let cache = clients.fresh("strict-cache");
    let out = clients.npm(&project, &cache, &strict_gw, &["install", "yargs@17.7.2"]);
    assert!(!out.status.success());
    let printed = String::from_utf8_lossy(&out.stderr);
    assert!(
        printed.contains("403") && printed.contains("trusted") && printed.contains("reproducible"),
        "{printed}"
    );
    let out = clients.pip(
        &strict_gw,
        &[
            "download",
            "--no-deps",
            "-d",
            clients.fresh("strict-pip").to_str().unwrap(),
            "idna==3.7",
        ],
    );
    assert!(!out.status.success());
    let printed =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("403") && printed.contains("trusted") && printed.contains("reproducible"),
        "{printed}"
    );

    // 4. The explorer, in headless Chromium: the request, its level, its attester.
    let shots = std::env::var_os("PYRSIA_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| clients.dir.path().to_owned());
    std::fs::create_dir_all(&shots).unwrap();
    let dom = chromium_dom(
        &format!("{node_gw}/-/package/npm/yargs"),
        &shots.join("explorer-package.png"),
    );
    let id = builds[0].id.to_string();
    assert!(dom.contains(&format!("data-request=\"{id}\"")), "{dom}");
    assert!(dom.contains("data-level=\"trusted\""), "{dom}");
    assert!(
        dom.contains(&trusted_key.to_string()) && dom.contains("certified trusted node"),
        "{dom}"
    );
    let home = chromium_dom(&format!("{node_gw}/"), &shots.join("explorer.png"));
    assert!(
        home.contains("id=\"validators\"") && home.contains("class=\"request\""),
        "{home}"
    );
    let search = chromium_dom(
        &format!("{node_gw}/-/search?q=yargs"),
        &shots.join("explorer-search.png"),
    );
    assert!(search.contains("/-/package/npm/yargs"), "{search}");

    // 5. Offline: the upstream, the peer and the validator are gone.
    drop(upstream);
    for s in ["gateway:importer", "store:trusted0"] {
        net.kill_service(s).unwrap();
    }
    net.stop_validator(0).unwrap();
    clients.install_all(&node_gw, Some(&kept_lock));
    let log = net.service_log("gateway:main");
    assert!(
        log.contains("offline"),
        "the gateway's log does not say it is offline"
    );
}

/// The DOM of `url` after headless Chromium loaded it, and a screenshot.
fn chromium_dom(url: &str, screenshot: &Path) -> String {
    let profile = tempfile::tempdir().unwrap();
    let common = |cmd: &mut Command| {
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()));
    };
    let mut shot = Command::new("chromium");
    common(&mut shot);
    shot.arg(format!("--screenshot={}", screenshot.display()))
        .args(["--window-size=1280,900", url]);
    ok("chromium --screenshot", &run(&mut shot));
    assert!(screenshot.exists());
    let mut dump = Command::new("chromium");
    common(&mut dump);
    dump.args(["--dump-dom", url]);
    let out = run(&mut dump);
    ok("chromium --dump-dom", &out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}
