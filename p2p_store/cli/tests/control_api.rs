#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The control API's guards, attacked through real `pyrsia-store` processes:
//! the bearer token on mutating calls, the Host check against DNS
//! rebinding, and the expiry of stale partial downloads.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use hyper::{Body, Method, StatusCode};
use support::*;

fn json(b: &[u8]) -> serde_json::Value {
    serde_json::from_slice(b).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(b)))
}

async fn status(p: &Proc) -> serde_json::Value {
    let (s, b) = http(Method::GET, &format!("{}/status", p.api), Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
    json(&b)
}

/// Objects on disk under a store directory.
fn objects(p: &Proc) -> usize {
    std::fs::read_dir(p.data_dir.join("objects"))
        .unwrap()
        .count()
}

/// The status and error text of a refused call.
fn refusal(s: StatusCode, b: &[u8]) -> (StatusCode, String) {
    (s, json(b)["error"].as_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_calls_need_the_token_and_reads_stay_open() {
    let tmp = tempfile::tempdir().unwrap();
    let store = spawn_store(&tmp.path().join("s"), &[]).await;

    // The token file: in the store directory, 0600, 64 hex characters.
    assert_eq!(store.token_file, store.data_dir.join("api-token"));
    let mode = std::fs::metadata(&store.token_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "token file mode {mode:o}");
    let token = store.token();
    assert_eq!(token.len(), 64);

    let file = tmp.path().join("artifact");
    make_file(&file, 300_000, 21);
    let data = std::fs::read(&file).unwrap();
    let put_url = format!("{}/artifacts?stripe_size=65536", store.api);

    // PUT without a token, with a wrong one, with another scheme: 401, a
    // JSON reason, and nothing stored.
    let wrong = format!("Bearer {}", "0".repeat(64));
    let basic = format!("Basic {token}");
    for (headers, reason) in [
        (vec![], "missing authorization"),
        (vec![("authorization", wrong.as_str())], "wrong api token"),
        (vec![("authorization", basic.as_str())], "malformed"),
    ] {
        let (s, b) = http_as(Method::PUT, &put_url, Body::from(data.clone()), &headers).await;
        let (s, msg) = refusal(s, &b);
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{headers:?}: {msg}");
        assert!(
            msg.to_lowercase().contains(reason),
            "{msg:?} lacks {reason:?}"
        );
        let st = status(&store).await;
        assert_eq!(
            st["artifacts"],
            serde_json::json!([]),
            "{headers:?} stored something"
        );
        assert_eq!(st["disk_used"], 0);
        assert_eq!(objects(&store), 0);
    }

    // The right token: stored.
    let bearer = store.bearer();
    let auth = [("authorization", bearer.as_str())];
    let (s, b) = http_as(Method::PUT, &put_url, Body::from(data.clone()), &auth).await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let put = json(&b);
    let sha = put["sha256"].as_str().unwrap().to_string();
    let root = put["stripe_root"].as_str().unwrap().to_string();
    assert_eq!(status(&store).await["artifacts"][0]["sha256"], sha);

    // Pin / unpin / start a download: 401 without the token, state unchanged.
    let pin_url = format!("{}/artifacts/{sha}/pin", store.api);
    let fetch_url = format!(
        "{}/fetch/{}?stripe_root={}",
        store.api,
        "ab".repeat(32),
        root
    );
    for (m, url) in [
        (Method::DELETE, &pin_url),
        (Method::POST, &pin_url),
        (Method::POST, &fetch_url),
    ] {
        for headers in [vec![], vec![("authorization", wrong.as_str())]] {
            let (s, b) = http_as(m.clone(), url, Body::empty(), &headers).await;
            let (s, msg) = refusal(s, &b);
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{m} {url} {headers:?}: {msg}");
        }
    }
    assert_eq!(status(&store).await["artifacts"][0]["pinned"], true);
    assert_eq!(status(&store).await["downloads"], serde_json::json!([]));
    // ... and they work with it.
    let (s, _) = http_as(Method::DELETE, &pin_url, Body::empty(), &auth).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(status(&store).await["artifacts"][0]["pinned"], false);
    let (s, _) = http_as(Method::POST, &pin_url, Body::empty(), &auth).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(status(&store).await["artifacts"][0]["pinned"], true);

    // Reads need no token: the bytes, the status, a download's progress.
    let (s, b) = http(
        Method::GET,
        &format!("{}/artifacts/{sha}?stripe_root={root}", store.api),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(b == data);
    let (s, b) = http(
        Method::GET,
        &format!("{}/fetch/{}", store.api, "cd".repeat(32)),
        Body::empty(),
    )
    .await;
    assert_eq!(refusal(s, &b).0, StatusCode::NOT_FOUND, "progress is open");

    // The CLI client: refused without the token (no default store in this
    // HOME), accepted with --token-file or PYRSIA_STORE_TOKEN_FILE.
    let file2 = tmp.path().join("artifact2");
    make_file(&file2, 5000, 22);
    let cli = |extra: &[&str], env: Option<&Path>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pyrsia-store"));
        c.args(["--json", "put"])
            .arg(&file2)
            .args(["--api", &store.api])
            .args(extra)
            .env("HOME", tmp.path())
            .env_remove("PYRSIA_STORE_DIR")
            .env_remove("PYRSIA_STORE_TOKEN_FILE");
        if let Some(p) = env {
            c.env("PYRSIA_STORE_TOKEN_FILE", p);
        }
        c.output().unwrap()
    };
    let o = cli(&[], None);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("401") && err.contains("--token-file"), "{err}");
    assert_eq!(
        status(&store).await["artifacts"].as_array().unwrap().len(),
        1
    );
    let tf = store.token_file.to_str().unwrap();
    let o = cli(&["--token-file", tf], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = cli(&[], Some(&store.token_file));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        status(&store).await["artifacts"].as_array().unwrap().len(),
        2
    );

    // A restart reuses the token.
    let dir = tmp.path().join("s");
    drop(store);
    let store = spawn_store(&dir, &[]).await;
    assert_eq!(store.token(), token);
    drop(store);

    // A token file others may read: the store refuses to start, naming it.
    let tf = dir.join("store").join("api-token");
    std::fs::set_permissions(&tf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_pyrsia-store"))
        .args(["start", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .args(["--api", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("store"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("api-token") && err.contains("0644") && err.contains("chmod 600"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_another_host_name_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = spawn_store(&tmp.path().join("s"), &[]).await;
    let port = store
        .api_authority()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let bearer = store.bearer();

    // What a page served from attacker.example, re-resolved to 127.0.0.1,
    // would send: refused before any route, token or not.
    for host in [
        "attacker.example".to_string(),
        format!("attacker.example:{port}"),
        format!("localhost.attacker.example:{port}"),
        format!("127.0.0.1.attacker.example:{port}"),
    ] {
        let (s, b) = http_as(
            Method::GET,
            &format!("{}/status", store.api),
            Body::empty(),
            &[("host", &host)],
        )
        .await;
        let (s, msg) = refusal(s, &b);
        assert_eq!(s, StatusCode::MISDIRECTED_REQUEST, "{host}: {msg}");
        assert!(msg.contains("Host") && msg.contains("rebinding"), "{msg}");
        let (s, b) = http_as(
            Method::PUT,
            &format!("{}/artifacts", store.api),
            Body::from("x"),
            &[("host", &host), ("authorization", &bearer)],
        )
        .await;
        assert_eq!(refusal(s, &b).0, StatusCode::MISDIRECTED_REQUEST, "{host}");
    }
    assert_eq!(status(&store).await["disk_used"], 0);
    assert_eq!(objects(&store), 0);

    // Loopback names and addresses work, with or without the port.
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        "127.0.0.1".to_string(),
    ] {
        let (s, b) = http_as(
            Method::GET,
            &format!("{}/status", store.api),
            Body::empty(),
            &[("host", &host)],
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{host}: {}", String::from_utf8_lossy(&b));
        assert_eq!(json(&b)["peer_id"], store.peer_id.to_string());
    }
    let (s, b) = http_as(
        Method::PUT,
        &format!("{}/artifacts", store.api),
        Body::from("x"),
        &[
            ("host", &format!("127.0.0.1:{port}")),
            ("authorization", &bearer),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
}

/// Starts a download of `put` on `client`, waits until at least one stripe
/// is on its disk, then kills `seeder` so the partial makes no more progress.
async fn leave_a_partial(client: &Proc, seeder: Proc, put: &serde_json::Value) {
    let sha = put["sha256"].as_str().unwrap();
    let url = format!(
        "{}/fetch/{sha}?stripe_root={}",
        client.api,
        put["stripe_root"].as_str().unwrap()
    );
    let (s, b) = http_as(
        Method::POST,
        &url,
        Body::empty(),
        &[("authorization", &client.bearer())],
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&b));
    let progress = format!("{}/fetch/{sha}", client.api);
    eventually(
        std::time::Duration::from_secs(60),
        "a first stripe",
        || async {
            let (_, b) = http(Method::GET, &progress, Body::empty()).await;
            let p = json(&b);
            assert_ne!(p["phase"], "done", "the download finished: {p}");
            assert_ne!(p["phase"], "failed", "{p}");
            if p["stripes_done"].as_u64().unwrap_or(0) >= 1 {
                Ok(())
            } else {
                Err(p)
            }
        },
    )
    .await;
    drop(seeder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_partial_download_is_removed_and_its_quota_freed() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("artifact");
    let size = 2 * 1024 * 1024;
    make_file(&file, size, 23);
    // A slow seeder: 64 KiB stripes at 128 KiB/s, 16 s for the whole file.
    let seed = |tmp: &Path| {
        let dir = tmp.join("seeder");
        async move { spawn_store(&dir, &["--upload-rate", "128K"]).await }
    };
    let seeder = seed(tmp.path()).await;
    let (s, b) = http_as(
        Method::PUT,
        &format!("{}/artifacts?stripe_size=65536", seeder.api),
        Body::from(std::fs::read(&file).unwrap()),
        &[("authorization", &seeder.bearer())],
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let put = json(&b);
    let sha = put["sha256"].as_str().unwrap().to_string();

    // 1. Checked on open: a partial whose last progress is two days old is
    // gone when the store starts (default TTL, 24 h).
    let cdir = tmp.path().join("c1");
    let client = spawn_store(&cdir, &["--bootstrap", &seeder.addr.to_string()]).await;
    leave_a_partial(&client, seeder, &put).await;
    let st = status(&client).await;
    assert_eq!(st["artifacts"][0]["complete"], false, "{st}");
    assert_eq!(st["disk_used"], size, "a partial reserves its full size");
    drop(client);
    let data = client_data(&cdir, &sha);
    let two_days_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(48 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&data)
        .unwrap()
        .set_modified(two_days_ago)
        .unwrap();
    let client = spawn_store(&cdir, &[]).await;
    let st = status(&client).await;
    assert_eq!(st["artifacts"], serde_json::json!([]), "{st}");
    assert_eq!(st["disk_used"], 0);
    assert!(!data.exists());
    drop(client);

    // 2. Checked while running: with --partial-ttl 3, a partial that stops
    // making progress (its only seeder killed) is removed within seconds.
    let seeder = seed(tmp.path()).await;
    let client = spawn_store(
        &tmp.path().join("c2"),
        &[
            "--bootstrap",
            &seeder.addr.to_string(),
            "--partial-ttl",
            "3",
        ],
    )
    .await;
    leave_a_partial(&client, seeder, &put).await;
    eventually(
        std::time::Duration::from_secs(60),
        "the stale partial to be removed",
        || async {
            let s = status(&client).await;
            if s["artifacts"] == serde_json::json!([]) && s["disk_used"] == 0 {
                Ok(())
            } else {
                Err(s)
            }
        },
    )
    .await;
    assert!(!client_data(&tmp.path().join("c2"), &sha).exists());
}

fn client_data(dir: &Path, sha: &str) -> std::path::PathBuf {
    dir.join("store").join("objects").join(sha).join("data")
}
