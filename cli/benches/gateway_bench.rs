//! The gateway against a peer proxy, in the same run:
//! - `npm ci` of a real tree of at least 50 packages with a warm cache,
//!   through the node's gateway (everything in its store, views verified)
//!   and through Verdaccio 6.8 (everything in its storage), each from an
//!   empty `node_modules` and npm cache, rounds alternating;
//! - one 1 GiB OCI blob through the gateway against the same bytes straight
//!   from the store's control API.
//!
//! Run with `./scripts/bench-gateway.sh`; `BENCH_ROUNDS` sets the rounds
//! (default 5).

#[path = "../tests/support/gateway_env.rs"]
mod gateway_env;
#[path = "../../builder/tests/support/packages.rs"]
mod packages;
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Child, Command};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use gateway_env::{ok, wait_http, write_npm_project, Clients, Upstream, OCI_IMAGE};
use support::{ServicePlan, Testnet};

/// express 4.19.2: 71 packages.
const TREE: &[(&str, &str)] = &[("express", "4.19.2")];
const BIG_LAYER: u64 = 1 << 30;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Verdaccio 6.8 (installed once through the machine's npm configuration)
/// proxying `uplink`.
fn verdaccio(dir: &Path, uplink: &str, port: u16) -> Result<Child> {
    let install = packages::cache_dir("verdaccio");
    let bin = install.join("node_modules/.bin/verdaccio");
    if !bin.exists() {
        // verdaccio asks for node-fetch by the dist-tag `cjs`, which not
        // every registry mirror serves; 2.7.0 is the version it names.
        std::fs::write(
            install.join("package.json"),
            r#"{"private":true,"dependencies":{"verdaccio":"6.8.0"},"overrides":{"node-fetch":"2.7.0"}}"#,
        )?;
        ok(
            "npm install verdaccio",
            &gateway_env::run(
                Command::new("npm")
                    .args(["install", "--no-audit", "--no-fund"])
                    .current_dir(&install),
            ),
        );
    }
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "storage: {}\nuplinks:\n  up:\n    url: {uplink}/npm/\n    maxage: 30m\n    timeout: 120s\n    max_fails: 1000\npackages:\n  '**':\n    access: $all\n    proxy: up\nlog: {{ type: stdout, format: pretty, level: info }}\n",
            dir.join("storage").display()
        ),
    )?;
    let log = std::fs::File::create(dir.join("verdaccio.log"))?;
    Ok(Command::new(bin)
        .arg("--config")
        .arg(&config)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?)
}

/// Seconds of `npm ci` of `lock` through the npm registry at `registry`
/// (its full URL), from nothing.
fn npm_ci(clients: &Clients, registry: &str, lock: &Path) -> Result<f64> {
    let project = clients.fresh("bench-project");
    write_npm_project(&project, TREE);
    std::fs::copy(lock, project.join("package-lock.json"))?;
    let cache = clients.fresh("bench-cache");
    let started = Instant::now();
    let out = clients.npm_registry(&project, &cache, registry, &["ci"]);
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "npm ci through {registry}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(secs)
}

/// Seconds to read `url` to the end, and its length.
fn read_all(url: &str) -> Result<(f64, u64)> {
    let started = Instant::now();
    let resp = ureq::get(url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    let n = std::io::copy(&mut resp.into_reader(), &mut std::io::sink())?;
    Ok((started.elapsed().as_secs_f64(), n))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let upstream = Upstream::start_with(TREE, "bench-express-lock.json", BIG_LAYER);
    let mut net = Testnet::start_with_services(ServicePlan {
        trusted_builders: 1,
        timeout_commit: Some("100ms".into()),
        ..Default::default()
    })
    .await?;
    let ports = support::free_port_run(3)?;
    let (node_gw, importer_gw) = (
        format!("http://127.0.0.1:{ports}"),
        format!("http://127.0.0.1:{}", ports + 1),
    );
    let field = |k: &'static str, v: &str| (k, toml_edit::Value::from(v));
    net.set_gateway(
        "main",
        &[
            field("listen", &format!("127.0.0.1:{ports}")),
            field("store", "node"),
            field("cache_dir", "gateway"),
        ],
    )?;
    let mut upstreams = toml_edit::InlineTable::new();
    upstreams.insert("npm", format!("{}/npm", upstream.url).into());
    upstreams.insert("oci", upstream.url.clone().into());
    net.set_gateway(
        "importer",
        &[
            field("listen", &format!("127.0.0.1:{}", ports + 1)),
            field("store", "trusted0"),
            field("cache_dir", "gateway-importer"),
            field("key_file", "builders/trusted0/key.json"),
            ("upstreams", toml_edit::Value::InlineTable(upstreams)),
        ],
    )?;
    for s in [
        "store:node",
        "store:trusted0",
        "gateway:main",
        "gateway:importer",
    ] {
        net.start_service(s)?;
    }
    wait_http(&format!("{node_gw}/v2/"));
    wait_http(&format!("{importer_gw}/v2/"));
    let clients = Clients::new();

    // Import the tree, then warm the node's gateway and Verdaccio.
    let project = clients.fresh("import");
    write_npm_project(&project, TREE);
    let cache = clients.fresh("import-cache");
    ok(
        "npm install (import)",
        &clients.npm(&project, &cache, &importer_gw, &["install"]),
    );
    let lock = clients.dir.path().join("package-lock.json");
    std::fs::copy(project.join("package-lock.json"), &lock)?;
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&lock)?)?;
    let packages = doc["packages"].as_object().map_or(0, |p| p.len() - 1);
    let verdaccio_port = support::free_port_run(1)?;
    let verdaccio_dir = tempfile::tempdir()?;
    let mut proxy = verdaccio(verdaccio_dir.path(), &upstream.url, verdaccio_port)?;
    let verdaccio_url = format!("http://127.0.0.1:{verdaccio_port}");
    wait_http(&format!("{verdaccio_url}/-/ping"));
    // The lockfile as a Verdaccio user has it: resolved at Verdaccio's root.
    let verdaccio_lock = clients.dir.path().join("verdaccio-lock.json");
    std::fs::write(
        &verdaccio_lock,
        std::fs::read_to_string(&lock)?
            .replace(&format!("{importer_gw}/npm/"), &format!("{verdaccio_url}/")),
    )?;
    let verdaccio_log = verdaccio_dir.path().join("verdaccio.log");
    let through_verdaccio = || {
        npm_ci(&clients, &format!("{verdaccio_url}/"), &verdaccio_lock).with_context(|| {
            let log = std::fs::read_to_string(&verdaccio_log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            format!(
                "verdaccio's log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
    };
    let gateway_registry = format!("{node_gw}/npm/");
    npm_ci(&clients, &gateway_registry, &lock)?;
    through_verdaccio()?;

    let (mut gateway, mut peer) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        gateway.push(npm_ci(&clients, &gateway_registry, &lock)?);
        peer.push(through_verdaccio()?);
    }
    let _ = proxy.kill();
    let (g, v) = (median(gateway.clone()), median(peer.clone()));
    println!(
        "npm ci of {packages} packages (express {}), warm caches, {rounds} rounds",
        TREE[0].1
    );
    println!("  gateway   median {g:.2} s  {gateway:.2?}");
    println!("  verdaccio median {v:.2} s  {peer:.2?}");
    println!("  ratio gateway/verdaccio {:.2} (goal <= 1.00)", g / v);

    // One 1 GiB blob: import the image, warm the node's store, then read it
    // through the gateway and straight from the store.
    let image = clients.fresh("oci");
    ok(
        "skopeo copy (import)",
        &clients.skopeo(&importer_gw, &image),
    );
    ok(
        "skopeo copy (warm)",
        &clients.skopeo(&node_gw, &clients.fresh("oci2")),
    );
    let mut verified = net.verified(0)?;
    let package = pyrsia_chain::PackageId {
        ecosystem: "oci".into(),
        name: OCI_IMAGE.0.into(),
        version: OCI_IMAGE.1.into(),
    };
    let builds = verified
        .package_builds(&package, pyrsia_ledger_client::verified::At::Latest)
        .await?
        .builds;
    let out = builds
        .first()
        .and_then(|b| b.attestations.first())
        .and_then(|a| a.outputs.iter().max_by_key(|o| o.size))
        .context("the image's outputs on the ledger")?
        .clone();
    anyhow::ensure!(
        out.size == BIG_LAYER,
        "the largest output is {} bytes, not the 1 GiB layer",
        out.size
    );
    let big = out.sha256.to_string();
    let direct = format!(
        "{}/artifacts/{}?stripe_root={}&size={}&stripe_size={}",
        net.store_api(),
        out.sha256,
        out.stripe_root,
        out.size,
        out.stripe_size
    );
    let through = format!("{node_gw}/v2/{}/blobs/sha256:{big}", OCI_IMAGE.0);
    let (mut via_gateway, mut via_store) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let (t, n) = read_all(&through)?;
        anyhow::ensure!(n == BIG_LAYER, "gateway sent {n} bytes");
        via_gateway.push(BIG_LAYER as f64 / t / 1e6);
        let (t, n) = read_all(&direct)?;
        anyhow::ensure!(n == BIG_LAYER, "store sent {n} bytes");
        via_store.push(BIG_LAYER as f64 / t / 1e6);
    }
    let (g, s) = (median(via_gateway), median(via_store));
    println!("1 GiB OCI blob from the local store, 3 rounds");
    println!("  through the gateway median {g:.0} MB/s");
    println!("  store API directly  median {s:.0} MB/s");
    println!("  ratio gateway/store {:.2}", g / s);
    drop(upstream);
    Ok(())
}
