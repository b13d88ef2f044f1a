#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]
//! Helpers for the integration tests: real nodes on 127.0.0.1 only.

use std::io::Write;
use std::path::{Path, PathBuf};
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
