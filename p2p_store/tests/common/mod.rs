#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]
//! Helpers for the integration tests: real nodes on 127.0.0.1 only.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hyper::{Body, Method, StatusCode};

use p2p_store::{Config, Node};

/// Deterministic pseudo-random file of `size` bytes.
pub fn make_file(path: &Path, size: u64, seed: u64) {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for c in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

pub fn config(dir: &Path) -> Config {
    let mut c = Config::new(dir);
    c.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    c.mdns = false;
    c.stall_timeout = Duration::from_secs(30);
    c.request_timeout = Duration::from_secs(20);
    c
}

pub async fn start(dir: &Path, bootstrap: &[&Node], tweak: impl FnOnce(&mut Config)) -> Node {
    let mut c = config(dir);
    for b in bootstrap {
        c.bootstrap.extend(b.listen_addrs());
    }
    tweak(&mut c);
    Node::start(c).await.unwrap()
}

/// Waits on state: runs `condition` every 50 ms until it returns `Ok`
/// (whose value is returned), failing the test with `what` and the last
/// `Err` state it saw once `within` has passed. The one polling loop of
/// these tests; nothing sleeps for a fixed time instead.
pub async fn eventually<T, S: std::fmt::Debug, F: std::future::Future<Output = Result<T, S>>>(
    within: Duration,
    what: &str,
    mut condition: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match condition().await {
            Ok(v) => return v,
            Err(last) => assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {within:?} waiting for {what}; last seen: {last:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`eventually`] for a synchronous condition.
pub async fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    eventually(Duration::from_secs(secs), what, || {
        let held = cond();
        async move {
            if held {
                Ok(())
            } else {
                Err("not yet")
            }
        }
    })
    .await
}

/// Waits until `a` is connected to every node in `others`.
pub async fn wait_connected(a: &Node, others: &[&Node]) {
    let ids: Vec<_> = others.iter().map(|n| n.peer_id()).collect();
    wait_until(20, "connections", || {
        let c = a.connected_peers();
        ids.iter().all(|i| c.contains(i))
    })
    .await;
}

pub fn data_path(node: &Node, sha: &str) -> PathBuf {
    node.store().root().join("objects").join(sha).join("data")
}

/// VmHWM (peak RSS) of this process in KiB.
pub fn peak_rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A `pyrsia-store start` process on 127.0.0.1, killed on drop.
pub struct Proc {
    pub child: Child,
    pub peer_id: libp2p::PeerId,
    pub addr: libp2p::Multiaddr,
    /// `http://127.0.0.1:PORT`
    pub api: String,
    /// The store's API token file, as its ready file names it.
    pub token_file: PathBuf,
    /// Its data directory.
    pub data_dir: PathBuf,
}

impl Proc {
    /// The token, read as any client reads it.
    pub fn token(&self) -> String {
        p2p_store::api::read_token(&self.token_file).unwrap()
    }

    /// `Bearer <token>`.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.token())
    }

    /// `127.0.0.1:PORT`
    pub fn api_authority(&self) -> String {
        self.api.trim_start_matches("http://").to_string()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `pyrsia-store start` with its data in `dir/store` and waits for
/// its ready file.
pub async fn spawn_store(dir: &Path, extra: &[&str]) -> Proc {
    std::fs::create_dir_all(dir).unwrap();
    let ready = dir.join("ready.json");
    let _ = std::fs::remove_file(&ready);
    let child = Command::new(env!("CARGO_BIN_EXE_pyrsia-store"))
        .args([
            "start",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--api",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.join("store"))
        .arg("--ready-file")
        .arg(&ready)
        .args(extra)
        .env("RUST_LOG", "warn")
        .env_remove("PYRSIA_STORE_TOKEN_FILE")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut p = Proc {
        child,
        peer_id: libp2p::PeerId::random(),
        addr: libp2p::Multiaddr::empty(),
        api: String::new(),
        token_file: PathBuf::new(),
        data_dir: dir.join("store"),
    };
    let mut exited = None;
    wait_until(60, "store process ready", || {
        exited = p.child.try_wait().unwrap();
        ready.exists() || exited.is_some()
    })
    .await;
    assert!(exited.is_none(), "the store exited: {exited:?}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&ready).unwrap()).unwrap();
    p.peer_id = v["peer_id"].as_str().unwrap().parse().unwrap();
    p.addr = v["listen_addrs"][0].as_str().unwrap().parse().unwrap();
    p.api = v["api"].as_str().unwrap().to_string();
    p.token_file = PathBuf::from(v["api_token_file"].as_str().unwrap());
    p
}

/// One request with extra headers; the status and the whole body.
pub async fn http_as(
    method: Method,
    url: &str,
    body: Body,
    headers: &[(&str, &str)],
) -> (StatusCode, bytes::Bytes) {
    let client = hyper::Client::new();
    let mut req = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client.request(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    (
        status,
        hyper::body::to_bytes(resp.into_body()).await.unwrap(),
    )
}

/// One request without extra headers.
pub async fn http(method: Method, url: &str, body: Body) -> (StatusCode, bytes::Bytes) {
    http_as(method, url, body, &[]).await
}
