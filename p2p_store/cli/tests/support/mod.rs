#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]
//! Helpers for the tests of the `pyrsia-store` binary: the store crate's
//! test helpers (`p2p_store/tests/common`), and store processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

#[path = "../../../tests/common/mod.rs"]
mod common;
pub use common::*;

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

/// `pyrsia-store start` on loopback ports of the system's choosing, without
/// mDNS, its data in `dir/store`.
pub fn start_command(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pyrsia-store"));
    cmd.args([
        "start",
        "--no-mdns",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--api",
        "127.0.0.1:0",
    ])
    .arg("--data-dir")
    .arg(dir.join("store"));
    cmd
}

/// Starts `pyrsia-store start` with its data in `dir/store` and waits for
/// its ready file.
pub async fn spawn_store(dir: &Path, extra: &[&str]) -> Proc {
    std::fs::create_dir_all(dir).unwrap();
    let ready = dir.join("ready.json");
    let _ = std::fs::remove_file(&ready);
    let child = start_command(dir)
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

/// Waits until `node` is connected to every store process of `procs`.
pub async fn wait_connected_to(node: &p2p_store::Node, procs: &[&Proc]) {
    wait_until(20, "connections", || {
        let connected = node.connected_peers();
        procs.iter().all(|p| connected.contains(&p.peer_id))
    })
    .await;
}

/// The unpinned fetch of what a store's put answered.
pub fn fetch_request(put: &p2p_store::PutResult) -> p2p_store::FetchRequest {
    p2p_store::FetchRequest {
        sha256: p2p_store::manifest::parse_digest(&put.sha256).unwrap(),
        stripe_root: p2p_store::manifest::parse_digest(&put.stripe_root).unwrap(),
        size: Some(put.size),
        stripe_size: Some(put.stripe_size),
        pin: false,
    }
}
