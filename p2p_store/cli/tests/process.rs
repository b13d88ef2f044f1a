#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Process-level behaviour: the `pyrsia-store` binary and its control API.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hyper::{Body, Method, StatusCode};
use p2p_store::{Phase, PutResult};
use support::*;

async fn put_file(p: &Proc, file: &Path, query: &str) -> (StatusCode, serde_json::Value) {
    let data = tokio::fs::read(file).await.unwrap();
    let (s, b) = http_as(
        Method::PUT,
        &format!("{}/artifacts?{query}", p.api),
        Body::from(data),
        &[("authorization", &p.bearer())],
    )
    .await;
    (s, serde_json::from_slice(&b).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_killed_mid_download_completes_from_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("artifact");
    make_file(&file, 8 * 1024 * 1024, 5);
    // Two seeders in their own processes, each capped at 2 MiB/s.
    let mut p1 = spawn_store(&tmp.path().join("p1"), &["--upload-rate", "2M"]).await;
    let p2 = spawn_store(&tmp.path().join("p2"), &["--upload-rate", "2M"]).await;
    let (s, v) = put_file(&p1, &file, "stripe_size=131072").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v2) = put_file(&p2, &file, "stripe_size=131072").await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(v, v2);
    let put: PutResult = serde_json::from_value(v).unwrap();

    let c = {
        let mut cfg = config(&tmp.path().join("c"));
        cfg.bootstrap = vec![p1.addr.clone(), p2.addr.clone()];
        p2p_store::Node::start(cfg).await.unwrap()
    };
    wait_connected_to(&c, &[&p1, &p2]).await;
    let h = c.fetch(fetch_request(&put));
    let p1id = p1.peer_id.to_string();
    let mid = h
        .wait_for(|p| p.per_peer.get(&p1id).copied().unwrap_or(0) >= 4)
        .await;
    assert!(
        mid.stripes_done < mid.stripes_total / 2,
        "too late to kill: {mid:?}"
    );
    p1.child.kill().unwrap(); // SIGKILL mid-download
    p1.child.wait().unwrap();
    let p = tokio::time::timeout(Duration::from_secs(60), h.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.phase, Phase::Done);
    let from_p2 = p
        .per_peer
        .get(&p2.peer_id.to_string())
        .copied()
        .unwrap_or(0);
    assert!(from_p2 > p.stripes_total / 2, "{:?}", p.per_peer);
    assert_eq!(
        std::fs::read(data_path(&c, &put.sha256)).unwrap(),
        std::fs::read(&file).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api_put_get_status_and_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let seeder = spawn_store(&tmp.path().join("s"), &[]).await;
    let file = tmp.path().join("artifact");
    make_file(&file, 3 * 1024 * 1024 + 7, 6);
    let (s, v) = put_file(&seeder, &file, "").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let put: PutResult = serde_json::from_value(v).unwrap();
    assert_eq!(put.size, 3 * 1024 * 1024 + 7);
    assert_eq!(put.stripe_size, p2p_store::DEFAULT_STRIPE_SIZE);

    // A second node fetches over the network through its API (GET streams the bytes).
    let client = spawn_store(
        &tmp.path().join("c"),
        &["--bootstrap", &seeder.addr.to_string()],
    )
    .await;
    let url = format!(
        "{}/artifacts/{}?stripe_root={}&size={}",
        client.api, put.sha256, put.stripe_root, put.size
    );
    let (s, body) = http(Method::GET, &url, Body::empty()).await;
    assert_eq!(
        s,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&body[..body.len().min(200)])
    );
    assert!(body == std::fs::read(&file).unwrap());

    let (s, b) = http(
        Method::GET,
        &format!("{}/status", client.api),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let st: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(st["peer_id"], client.peer_id.to_string());
    assert!(st["connected_peers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p == &serde_json::json!(seeder.peer_id.to_string())));
    assert!(st["disk_used"].as_u64().unwrap() >= put.size);
    assert!(st["disk_quota"].as_u64().unwrap() > 0);
    assert!(!st["listen_addrs"].as_array().unwrap().is_empty());
    assert_eq!(st["artifacts"][0]["sha256"], put.sha256);
    assert_eq!(st["artifacts"][0]["complete"], true);

    // Bad input: clear 4xx with a reason, and the server keeps working.
    let api = &client.api;
    let cases: Vec<(Method, String, Body, StatusCode, &str)> = vec![
        (
            Method::GET,
            format!("{api}/artifacts/{}", put.sha256),
            Body::empty(),
            StatusCode::BAD_REQUEST,
            "stripe_root",
        ),
        (
            Method::GET,
            format!("{api}/artifacts/xyz?stripe_root={}", put.stripe_root),
            Body::empty(),
            StatusCode::BAD_REQUEST,
            "sha256",
        ),
        (
            Method::GET,
            format!("{api}/artifacts/{}?stripe_root=00", put.sha256),
            Body::empty(),
            StatusCode::BAD_REQUEST,
            "stripe_root",
        ),
        (
            Method::GET,
            format!(
                "{api}/artifacts/{}?stripe_root={}&size=abc",
                put.sha256, put.stripe_root
            ),
            Body::empty(),
            StatusCode::BAD_REQUEST,
            "query",
        ),
        (
            Method::GET,
            format!(
                "{api}/artifacts/{}?stripe_root={}&stripe_size=3",
                put.sha256, put.stripe_root
            ),
            Body::empty(),
            StatusCode::BAD_REQUEST,
            "stripe size",
        ),
        (
            Method::PUT,
            format!("{api}/artifacts?stripe_size=12"),
            Body::from("x"),
            StatusCode::BAD_REQUEST,
            "stripe size",
        ),
        (
            Method::PUT,
            format!("{api}/artifacts?pin=maybe"),
            Body::from("x"),
            StatusCode::BAD_REQUEST,
            "query",
        ),
        (
            Method::GET,
            format!("{api}/nope"),
            Body::empty(),
            StatusCode::NOT_FOUND,
            "endpoint",
        ),
        (
            Method::GET,
            format!("{api}/fetch/{}", "ab".repeat(32)),
            Body::empty(),
            StatusCode::NOT_FOUND,
            "download",
        ),
    ];
    let bearer = client.bearer();
    for (m, url, body, want, reason) in cases {
        let (s, b) = http_as(m.clone(), &url, body, &[("authorization", &bearer)]).await;
        let v: serde_json::Value = serde_json::from_slice(&b)
            .unwrap_or_else(|_| panic!("{m} {url}: not JSON: {}", String::from_utf8_lossy(&b)));
        let msg = v["error"].as_str().unwrap_or_default().to_lowercase();
        assert_eq!(s, want, "{m} {url}: {msg}");
        assert!(
            msg.contains(reason),
            "{m} {url}: reason {msg:?} lacks {reason:?}"
        );
    }
    let (s, _) = http(Method::GET, &format!("{api}/status"), Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
    // Complete, the bytes passed their whole-file SHA-256: they serve a
    // request naming another stripe root (another attester's layout).
    let (s, b) = http(
        Method::GET,
        &format!(
            "{api}/artifacts/{}?stripe_root={}",
            put.sha256,
            "11".repeat(32)
        ),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(b == std::fs::read(&file).unwrap());

    // The CLI: `fetch --json -o FILE` through the client's API, and `status --json`.
    let out = tmp.path().join("fetched");
    let o = Command::new(env!("CARGO_BIN_EXE_pyrsia-store"))
        .args(["fetch", "--json", "--api", api, "--sha256", &put.sha256])
        .arg("--token-file")
        .arg(&client.token_file)
        .args(["--stripe-root", &put.stripe_root, "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["sha256"], put.sha256);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&file).unwrap());
    let o = Command::new(env!("CARGO_BIN_EXE_pyrsia-store"))
        .args(["status", "--json", "--api", api])
        .output()
        .unwrap();
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["peer_id"], client.peer_id.to_string());
    // A wrong digest is refused with a reason and a non-zero exit.
    let o = Command::new(env!("CARGO_BIN_EXE_pyrsia-store"))
        .args([
            "fetch",
            "--api",
            api,
            "--sha256",
            "zz",
            "--stripe-root",
            &put.stripe_root,
            "-o",
        ])
        .arg(tmp.path().join("x"))
        .arg("--token-file")
        .arg(&client.token_file)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("sha256"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_provider_does_not_hold_up_the_download() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("artifact");
    make_file(&file, 8 * 1024 * 1024, 11);
    let p1 = spawn_store(&tmp.path().join("p1"), &["--upload-rate", "2M"]).await;
    let p2 = spawn_store(&tmp.path().join("p2"), &["--upload-rate", "2M"]).await;
    let (s, v) = put_file(&p1, &file, "stripe_size=131072").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    put_file(&p2, &file, "stripe_size=131072").await;
    let put: PutResult = serde_json::from_value(v).unwrap();
    let c = {
        let mut cfg = config(&tmp.path().join("c"));
        cfg.bootstrap = vec![p1.addr.clone(), p2.addr.clone()];
        // Far longer than the test may take: only overdue detection can save it.
        cfg.request_timeout = Duration::from_secs(300);
        cfg.stall_timeout = Duration::from_secs(300);
        p2p_store::Node::start(cfg).await.unwrap()
    };
    wait_connected_to(&c, &[&p1, &p2]).await;
    let h = c.fetch(fetch_request(&put));
    let p1id = p1.peer_id.to_string();
    h.wait_for(|p| p.per_peer.get(&p1id).copied().unwrap_or(0) >= 4)
        .await;
    // SIGSTOP: the connection stays open, the peer just stops answering.
    let st = Command::new("kill")
        .args(["-STOP", &p1.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let p = tokio::time::timeout(Duration::from_secs(45), h.wait())
        .await
        .expect("download held up by a frozen peer")
        .unwrap();
    assert_eq!(p.phase, Phase::Done);
    assert_eq!(
        std::fs::read(data_path(&c, &put.sha256)).unwrap(),
        std::fs::read(&file).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_get_streams_verified_stripes_while_downloading() {
    use hyper::body::HttpBody;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("artifact");
    make_file(&file, 4 * 1024 * 1024, 12);
    let seeder = spawn_store(&tmp.path().join("s"), &["--upload-rate", "1M"]).await;
    let (s, v) = put_file(&seeder, &file, "stripe_size=65536").await;
    assert_eq!(s, StatusCode::CREATED);
    let put: PutResult = serde_json::from_value(v).unwrap();
    let client = spawn_store(
        &tmp.path().join("c"),
        &["--bootstrap", &seeder.addr.to_string()],
    )
    .await;
    let url = format!(
        "{}/artifacts/{}?stripe_root={}",
        client.api, put.sha256, put.stripe_root
    );
    let req = hyper::Request::get(&url).body(Body::empty()).unwrap();
    let mut resp = hyper::Client::new().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-length"].to_str().unwrap(),
        put.size.to_string()
    );
    let first = resp.body_mut().data().await.unwrap().unwrap();
    assert!(!first.is_empty());
    // The first bytes arrived while the node is still downloading.
    let (_, b) = http(
        Method::GET,
        &format!("{}/fetch/{}", client.api, put.sha256),
        Body::empty(),
    )
    .await;
    let prog: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_ne!(prog["phase"], "done", "{prog}");
    let mut body = first.to_vec();
    while let Some(c) = resp.body_mut().data().await {
        body.extend_from_slice(&c.unwrap());
    }
    assert!(body == std::fs::read(&file).unwrap());
}
