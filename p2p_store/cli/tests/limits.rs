#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The swarm's bounds against real peers: a `pyrsia-store` process is
//! flooded with provider records and connections by raw libp2p peers
//! speaking the store's Kademlia protocol, and keeps serving its own
//! artifacts; its identity key is 0600 and a looser one is refused.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use futures::StreamExt;
use hyper::{Body, Method};
use libp2p::kad::{self, store::MemoryStore, store::MemoryStoreConfig};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm};
use p2p_store::manifest::parse_digest;
use p2p_store::FetchRequest;
use support::*;
use tokio::sync::mpsc;

/// A raw peer: Kademlia on the store's protocol name, noise, no store.
fn raw_peer() -> Swarm<kad::Behaviour<MemoryStore>> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|key| {
            let pid = key.public().to_peer_id();
            let store = MemoryStore::with_config(
                pid,
                MemoryStoreConfig {
                    max_provided_keys: 1 << 20,
                    ..Default::default()
                },
            );
            let mut k = kad::Behaviour::with_config(
                pid,
                store,
                kad::Config::new(StreamProtocol::new("/pyrsia/kad/1")),
            );
            k.set_mode(Some(kad::Mode::Server));
            k
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build()
}

fn without_p2p(a: &Multiaddr) -> Multiaddr {
    a.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

async fn status(p: &Proc) -> serde_json::Value {
    let (code, body) = http(Method::GET, &format!("{}/status", p.api), Body::empty()).await;
    assert!(code.is_success(), "{code}");
    serde_json::from_slice(&body).unwrap()
}

/// Waits until the victim's `/status` satisfies `cond`; returns it.
async fn until_status(
    p: &Proc,
    secs: u64,
    what: &str,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    eventually(Duration::from_secs(secs), what, || async {
        let s = status(p).await;
        if cond(&s) {
            Ok(s)
        } else {
            Err(s["provider_records"].clone())
        }
    })
    .await
}

fn counts(s: &serde_json::Value) -> (u64, u64, u64) {
    let r = &s["provider_records"];
    (
        r["local"].as_u64().unwrap(),
        r["remote"].as_u64().unwrap(),
        r["refused"].as_u64().unwrap(),
    )
}

/// Announces every key in `keys` to the victim as a provider, driving the
/// swarm in the background; returns the swarm's task.
fn flood(victim: &Proc, keys: Vec<Vec<u8>>) -> tokio::task::JoinHandle<()> {
    let mut s = raw_peer();
    // Attacker-chosen addresses travel in every record.
    for i in 0..20 {
        s.add_external_address(format!("/ip4/10.9.{i}.1/tcp/4000").parse().unwrap());
    }
    s.behaviour_mut()
        .add_address(&victim.peer_id, without_p2p(&victim.addr));
    s.dial(victim.addr.clone()).unwrap();
    for k in keys {
        s.behaviour_mut()
            .start_providing(kad::RecordKey::new(&k))
            .unwrap();
    }
    tokio::spawn(async move {
        loop {
            s.select_next_some().await;
        }
    })
}

fn keys(seed: u8, n: u32, len: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut k = vec![seed; len];
            k[..4].copy_from_slice(&i.to_be_bytes());
            k
        })
        .collect()
}

async fn put(p: &Proc, file: &std::path::Path) -> p2p_store::PutResult {
    let (code, body) = http_as(
        Method::PUT,
        &format!("{}/artifacts", p.api),
        Body::from(std::fs::read(file).unwrap()),
        &[("authorization", &p.bearer())],
    )
    .await;
    assert!(
        code.is_success(),
        "{code} {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_record_flood_stays_within_bounds_and_our_own_records_still_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let victim = spawn_store(
        &tmp.path().join("victim"),
        &[
            "--max-provider-records",
            "300",
            "--max-provider-records-per-peer",
            "200",
        ],
    )
    .await;
    let before = tmp.path().join("before");
    make_file(&before, 300_000, 1);
    let first = put(&victim, &before).await;
    until_status(&victim, 20, "the victim's own record", |s| counts(s).0 == 1).await;

    // One peer: 500 digest-sized keys and 50 keys one byte short.
    let mut a_keys = keys(0xa1, 500, 32);
    a_keys.extend(keys(0xa2, 50, 31));
    let a = flood(&victim, a_keys);
    let s = until_status(&victim, 120, "the first flood", |s| {
        let c = counts(s);
        c.1 + c.2 >= 550
    })
    .await;
    assert_eq!(
        (counts(&s).1, counts(&s).2),
        (200, 350),
        "one peer keeps at most 200; the 31-byte keys are refused"
    );

    // A second peer: the total bound stops it at 300.
    let b = flood(&victim, keys(0xb1, 500, 32));
    let s = until_status(&victim, 120, "the second flood", |s| {
        let c = counts(s);
        c.1 + c.2 >= 1050
    })
    .await;
    assert_eq!(
        (counts(&s).1, counts(&s).2),
        (300, 750),
        "the total bound holds"
    );

    // The victim still announces what it stores, however full.
    let after = tmp.path().join("after");
    make_file(&after, 300_000, 2);
    let second = put(&victim, &after).await;
    // The record is added by the swarm after `put` answers.
    let s = until_status(&victim, 20, "both own records", |s| counts(s).0 == 2).await;
    assert_eq!(counts(&s).1, 300);

    // A fresh node that knows only the victim finds it by Kademlia as the
    // provider of both artifacts and fetches the second.
    let node = start(&tmp.path().join("client"), &[], |c| {
        c.bootstrap = vec![victim.addr.clone()];
    })
    .await;
    for put in [&first, &second] {
        let sha = parse_digest(&put.sha256).unwrap();
        let found = node.find_providers(sha).await.unwrap();
        assert!(
            found.contains(&victim.peer_id),
            "the victim is not found as a provider of {}: {found:?}",
            put.sha256
        );
    }
    let h = node.fetch(FetchRequest {
        sha256: parse_digest(&second.sha256).unwrap(),
        stripe_root: parse_digest(&second.stripe_root).unwrap(),
        size: Some(second.size),
        stripe_size: Some(second.stripe_size),
        pin: false,
    });
    tokio::time::timeout(Duration::from_secs(60), h.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        std::fs::read(data_path(&node, &second.sha256)).unwrap(),
        std::fs::read(&after).unwrap()
    );
    a.abort();
    b.abort();
    node.shutdown();
}

/// Dials the victim and reports every connection event about it.
fn connector(
    victim: &Proc,
    again: mpsc::Receiver<()>,
) -> (PeerId, mpsc::UnboundedReceiver<&'static str>) {
    let mut s = raw_peer();
    let id = *s.local_peer_id();
    let (tx, rx) = mpsc::unbounded_channel();
    let (vid, vaddr) = (victim.peer_id, without_p2p(&victim.addr));
    let dial = move |s: &mut Swarm<kad::Behaviour<MemoryStore>>| {
        // Always: a second connection to a peer we are connected to.
        let opts = DialOpts::peer_id(vid)
            .addresses(vec![vaddr.clone()])
            .condition(PeerCondition::Always)
            .build();
        s.dial(opts).unwrap();
    };
    dial(&mut s);
    let mut again = again;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(()) = again.recv() => dial(&mut s),
                ev = s.select_next_some() => {
                    let what = match ev {
                        SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == vid => "up",
                        SwarmEvent::ConnectionClosed { peer_id, .. } if peer_id == vid => "down",
                        SwarmEvent::OutgoingConnectionError { .. } => "refused",
                        _ => continue,
                    };
                    if tx.send(what).is_err() {
                        break;
                    }
                }
            }
        }
    });
    (id, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<&'static str>) -> &'static str {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("no connection event within 20 s")
        .expect("connector ended")
}

async fn connected(victim: &Proc) -> Vec<String> {
    status(victim).await["connected_peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn inbound_connections_are_bounded_in_total_and_per_peer() {
    let tmp = tempfile::tempdir().unwrap();
    let victim = spawn_store(
        &tmp.path().join("victim"),
        &[
            "--max-inbound-connections",
            "2",
            "--max-connections-per-peer",
            "1",
        ],
    )
    .await;
    let (tx1, again1) = mpsc::channel(1);
    let (id1, mut ev1) = connector(&victim, again1);
    assert_eq!(next(&mut ev1).await, "up");
    let (_tx2, again2) = mpsc::channel(1);
    let (id2, mut ev2) = connector(&victim, again2);
    assert_eq!(next(&mut ev2).await, "up");
    let want = [id1.to_string(), id2.to_string()];
    until_status(&victim, 20, "both peers connected", |s| {
        let c = s["connected_peers"].to_string();
        want.iter().all(|w| c.contains(w))
    })
    .await;

    // A third peer: over the total, its connection is closed at once.
    let (_tx3, again3) = mpsc::channel(1);
    let (id3, mut ev3) = connector(&victim, again3);
    let mut e = next(&mut ev3).await;
    if e == "up" {
        e = next(&mut ev3).await;
    }
    assert!(e == "down" || e == "refused", "{e}");
    // A second connection of the first peer: over the per-peer bound.
    tx1.send(()).await.unwrap();
    let e = next(&mut ev1).await;
    let e = if e == "up" { next(&mut ev1).await } else { e };
    assert!(e == "down" || e == "refused", "{e}");
    let now = connected(&victim).await;
    assert!(!now.contains(&id3.to_string()), "{now:?}");
    assert!(
        now.contains(&id1.to_string()),
        "the first connection stays: {now:?}"
    );
    assert_eq!(now.len(), 2, "{now:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_identity_key_is_0600_and_a_looser_one_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let p = spawn_store(&dir, &[]).await;
    let key = p.data_dir.join("node_key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let id = p.peer_id;
    drop(p);
    // A restart keeps the identity.
    let p = spawn_store(&dir, &[]).await;
    assert_eq!(p.peer_id, id);
    drop(p);
    for loose in [0o644, 0o640, 0o604, 0o660] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(loose)).unwrap();
        let out = start_command(&dir)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(!out.status.success(), "started with a {loose:o} key");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&key.display().to_string())
                && err.contains(&format!("{loose:04o}"))
                && err.contains("chmod 600"),
            "{err}"
        );
    }
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let p = spawn_store(&dir, &[]).await;
    assert_eq!(p.peer_id, id);
}
