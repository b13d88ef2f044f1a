#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Multi-node behaviour on 127.0.0.1.

mod common;

use std::os::unix::fs::FileExt;
use std::time::Duration;

use common::*;
use p2p_store::manifest::parse_digest;
use p2p_store::{FetchRequest, Phase};

fn req(put: &p2p_store::PutResult) -> FetchRequest {
    FetchRequest {
        sha256: parse_digest(&put.sha256).unwrap(),
        stripe_root: parse_digest(&put.stripe_root).unwrap(),
        size: Some(put.size),
        stripe_size: Some(put.stripe_size),
        pin: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_nodes_artifact_on_two_fetched_by_third_from_both() {
    let tmp = tempfile::tempdir().unwrap();
    let a = start(&tmp.path().join("a"), &[], |_| {}).await;
    let b = start(&tmp.path().join("b"), &[&a], |_| {}).await;
    let c = start(&tmp.path().join("c"), &[&a, &b], |_| {}).await;
    let d = start(&tmp.path().join("d"), &[&a, &b, &c], |_| {}).await;
    wait_connected(&c, &[&a, &b, &d]).await;

    let file = tmp.path().join("artifact");
    make_file(&file, 12 * 1024 * 1024 + 12345, 1);
    let pa = a
        .put_path(file.clone(), Some(256 * 1024), true)
        .await
        .unwrap();
    let pb = b
        .put_path(file.clone(), Some(256 * 1024), true)
        .await
        .unwrap();
    assert_eq!(pa, pb);

    let p = c.fetch(req(&pa)).wait().await.unwrap();
    assert_eq!(p.phase, Phase::Done);
    assert_eq!(p.stripes_fetched, p.stripes_total);
    let from_a = p
        .per_peer
        .get(&a.peer_id().to_string())
        .copied()
        .unwrap_or(0);
    let from_b = p
        .per_peer
        .get(&b.peer_id().to_string())
        .copied()
        .unwrap_or(0);
    assert!(
        from_a > 0 && from_b > 0,
        "stripes per peer: {:?}",
        p.per_peer
    );
    assert!(!p.per_peer.contains_key(&d.peer_id().to_string()));
    assert_eq!(
        std::fs::read(data_path(&c, &pa.sha256)).unwrap(),
        std::fs::read(&file).unwrap()
    );

    // The fourth node finds all three providers through Kademlia.
    let sha = parse_digest(&pa.sha256).unwrap();
    let want = [a.peer_id(), b.peer_id(), c.peer_id()];
    eventually(Duration::from_secs(30), "all three providers", || async {
        let got = d.find_providers(sha).await.unwrap();
        if want.iter().all(|w| got.contains(w)) {
            Ok(())
        } else {
            Err(got)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_peer_is_penalised_and_no_bad_byte_is_cached() {
    let tmp = tempfile::tempdir().unwrap();
    // The honest peer is capped, so the download cannot finish on it alone
    // before the bad peer is asked.
    let honest = start(&tmp.path().join("h"), &[], |c| {
        c.upload_rate = Some(2 * 1024 * 1024)
    })
    .await;
    let bad = start(&tmp.path().join("b"), &[&honest], |_| {}).await;
    let file = tmp.path().join("artifact");
    make_file(&file, 4 * 1024 * 1024, 2);
    let put = honest
        .put_path(file.clone(), Some(64 * 1024), true)
        .await
        .unwrap();
    bad.put_path(file.clone(), Some(64 * 1024), true)
        .await
        .unwrap();
    // Tamper with every stripe of the bad peer's copy on disk.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(data_path(&bad, &put.sha256))
        .unwrap();
    for i in 0..64u64 {
        f.write_all_at(b"EVIL", i * 64 * 1024 + 100).unwrap();
    }
    drop(f);

    let c = start(&tmp.path().join("c"), &[&honest, &bad], |_| {}).await;
    wait_connected(&c, &[&honest, &bad]).await;
    let p = c.fetch(req(&put)).wait().await.unwrap();
    assert_eq!(p.phase, Phase::Done);
    assert!(
        bad.counters().stripes_served > 0,
        "the bad peer was never asked"
    );
    assert!(c.penalty(&bad.peer_id()) >= 1, "bad peer not penalised");
    assert!(c.is_banned(&bad.peer_id()));
    assert!(p.bad_peers.contains(&bad.peer_id().to_string()));
    assert!(!p.per_peer.contains_key(&bad.peer_id().to_string()));
    let cached = std::fs::read(data_path(&c, &put.sha256)).unwrap();
    assert!(cached == std::fs::read(&file).unwrap(), "cache differs");
    assert!(!cached.windows(4).any(|w| w == b"EVIL"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_still_provides_and_resumes_without_refetching() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("artifact");
    make_file(&file, 6 * 1024 * 1024, 3);
    // Seeder with an upload cap so the download can be interrupted midway.
    let a = start(&tmp.path().join("a"), &[], |c| {
        c.upload_rate = Some(3 * 1024 * 1024)
    })
    .await;
    let put = a
        .put_path(file.clone(), Some(128 * 1024), true)
        .await
        .unwrap();
    let sha = parse_digest(&put.sha256).unwrap();

    // 1. The seeder restarts and still provides: a fresh node finds it by Kademlia.
    a.shutdown();
    drop(a);
    let a = start(&tmp.path().join("a"), &[], |c| {
        c.upload_rate = Some(3 * 1024 * 1024)
    })
    .await;
    let b = start(&tmp.path().join("b"), &[&a], |_| {}).await;
    eventually(
        Duration::from_secs(20),
        "the restarted node as a provider",
        || async {
            let got = b.find_providers(sha).await.unwrap();
            if got.contains(&a.peer_id()) {
                Ok(())
            } else {
                Err(got)
            }
        },
    )
    .await;

    // 2. An interrupted download resumes from its verified stripes.
    let cdir = tmp.path().join("c");
    let c = start(&cdir, &[&a], |_| {}).await;
    wait_connected(&c, &[&a]).await;
    let h = c.fetch(req(&put));
    let mid = h.wait_for(|p| p.stripes_done >= 16).await;
    assert!(
        mid.stripes_done < mid.stripes_total,
        "finished too fast to interrupt"
    );
    c.shutdown();
    drop(h);
    drop(c);

    let c = start(&cdir, &[&a], |_| {}).await;
    let have_now = c.store().have(&sha).unwrap().iter().filter(|x| **x).count() as u64;
    assert!(
        have_now >= mid.stripes_done,
        "verified stripes lost: {have_now} < {}",
        mid.stripes_done
    );
    wait_connected(&c, &[&a]).await;
    let p = c.fetch(req(&put)).wait().await.unwrap();
    assert_eq!(p.stripes_resumed, have_now);
    assert_eq!(p.stripes_fetched, p.stripes_total - have_now);
    assert_eq!(
        std::fs::read(data_path(&c, &put.sha256)).unwrap(),
        std::fs::read(&file).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_wire_requests_get_errors_never_a_panic() {
    use futures::StreamExt;
    use libp2p::request_response::{self, Message, ProtocolSupport};
    use libp2p::swarm::SwarmEvent;
    use p2p_store::protocol::{ErrorCode, RawCodec, Request, Response, PROTOCOL};

    let tmp = tempfile::tempdir().unwrap();
    let a = start(&tmp.path().join("a"), &[], |_| {}).await;
    let file = tmp.path().join("artifact");
    make_file(&file, 100_000, 4);
    let put = a.put_path(file, Some(16 * 1024), true).await.unwrap();
    let sha = parse_digest(&put.sha256).unwrap();

    let mut raw = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| {
            request_response::Behaviour::<RawCodec>::new(
                [(PROTOCOL, ProtocolSupport::Outbound)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
            )
        })
        .unwrap()
        .build();
    let addr = a.listen_addrs()[0].clone();
    raw.dial(addr).unwrap();

    let mut oversized = vec![0x01];
    oversized.extend(vec![0u8; 200]);
    let mut bad_index = Request::Stripe {
        sha256: sha,
        index: 0,
    }
    .encode();
    bad_index[33..].copy_from_slice(&u64::MAX.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("unknown tag", vec![0x7f; 33]),
        ("truncated", vec![0x02, 1, 2, 3]),
        ("oversized", oversized),
        (
            "unknown artifact",
            Request::Manifest { sha256: [9; 32] }.encode(),
        ),
        ("stripe index out of range", bad_index),
        ("valid manifest", Request::Manifest { sha256: sha }.encode()),
    ];
    for (name, bytes) in cases {
        let id = raw.behaviour_mut().send_request(&a.peer_id(), bytes);
        let outcome = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                match raw.select_next_some().await {
                    SwarmEvent::Behaviour(request_response::Event::Message {
                        message:
                            Message::Response {
                                request_id,
                                response,
                            },
                        ..
                    }) if request_id == id => return Ok(response),
                    SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                        request_id,
                        error,
                        ..
                    }) if request_id == id => return Err(error.to_string()),
                    _ => {}
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{name}: no answer"));
        match name {
            "unknown artifact" => assert!(matches!(
                Response::decode(outcome.unwrap()).unwrap(),
                Response::Error {
                    code: ErrorCode::NotFound,
                    ..
                }
            )),
            "stripe index out of range" => assert!(matches!(
                Response::decode(outcome.unwrap()).unwrap(),
                Response::Error {
                    code: ErrorCode::BadRequest,
                    ..
                }
            )),
            "valid manifest" => assert!(matches!(
                Response::decode(outcome.unwrap()).unwrap(),
                Response::Manifest { .. }
            )),
            // Above the frame bound: the stream is reset without reading on.
            "oversized" => assert!(
                outcome.as_ref().is_err() || outcome.as_ref().is_ok_and(|b| b.is_empty()),
                "{name}: unexpected answer {outcome:?}"
            ),
            // Undecodable frames get a BadRequest answer.
            _ => assert!(
                matches!(
                    Response::decode(outcome.clone().unwrap()).unwrap(),
                    Response::Error {
                        code: ErrorCode::BadRequest,
                        ..
                    }
                ),
                "{name}: {outcome:?}"
            ),
        }
    }
    assert!(a.counters().bad_requests >= 1);
    // Still serving normally.
    let b = start(&tmp.path().join("b"), &[&a], |_| {}).await;
    wait_connected(&b, &[&a]).await;
    b.fetch(req(&put)).wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_verified_stripes_while_still_downloading() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("artifact");
    make_file(&file, 6 * 1024 * 1024, 8);
    let a = start(&tmp.path().join("a"), &[], |c| {
        c.upload_rate = Some(2 * 1024 * 1024)
    })
    .await;
    let put = a
        .put_path(file.clone(), Some(64 * 1024), true)
        .await
        .unwrap();
    let c = start(&tmp.path().join("c"), &[&a], |_| {}).await;
    wait_connected(&c, &[&a]).await;
    let hc = c.fetch(req(&put));
    hc.wait_for(|p| p.stripes_done >= 8).await;
    // D knows only C, which is still downloading.
    let d = start(&tmp.path().join("d"), &[&c], |_| {}).await;
    wait_connected(&d, &[&c]).await;
    let hd = d.fetch(req(&put));
    wait_until(30, "C serving D", || c.counters().stripes_served > 0).await;
    assert_ne!(
        hc.progress().phase,
        Phase::Done,
        "C finished before serving"
    );
    let pd = hd.wait().await.unwrap();
    assert!(
        pd.per_peer
            .get(&c.peer_id().to_string())
            .copied()
            .unwrap_or(0)
            > 0
    );
    hc.wait().await.unwrap();
    assert_eq!(
        std::fs::read(data_path(&d, &put.sha256)).unwrap(),
        std::fs::read(&file).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_slots_and_bandwidth_cap_are_enforced() {
    use p2p_store::protocol::{ErrorCode, Request, Response};
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("artifact");
    make_file(&file, 2 * 1024 * 1024, 9);
    // One upload slot, 512 KiB/s, bursts of one 64 KiB stripe.
    let a = start(&tmp.path().join("a"), &[], |c| {
        c.max_uploads = 1;
        c.upload_rate = Some(512 * 1024);
        c.stripe_size = 64 * 1024;
    })
    .await;
    let put = a
        .put_path(file.clone(), Some(64 * 1024), true)
        .await
        .unwrap();
    let sha = parse_digest(&put.sha256).unwrap();
    let b = start(&tmp.path().join("b"), &[&a], |_| {}).await;
    wait_connected(&b, &[&a]).await;

    // Use up the burst, so the next upload must wait ~125 ms for tokens
    // while holding the only slot.
    let first = b
        .request(
            a.peer_id(),
            Request::Stripe {
                sha256: sha,
                index: 0,
            },
        )
        .await;
    assert!(matches!(first, Ok(Response::Stripe { .. })));
    // Several stripe requests at once: the single slot serves one, the rest are refused Busy.
    let reqs = (0..4u64).map(|i| {
        b.request(
            a.peer_id(),
            Request::Stripe {
                sha256: sha,
                index: i,
            },
        )
    });
    let answers = futures::future::join_all(reqs).await;
    let served = answers
        .iter()
        .filter(|r| matches!(r, Ok(Response::Stripe { .. })))
        .count();
    let busy = answers
        .iter()
        .filter(|r| {
            matches!(
                r,
                Ok(Response::Error {
                    code: ErrorCode::Busy,
                    ..
                })
            )
        })
        .count();
    assert!(served >= 1 && busy >= 1, "{served} served, {busy} busy");
    assert!(a.counters().uploads_refused_busy >= 1);

    // The whole artifact cannot arrive faster than the cap allows
    // (2 MiB at 512 KiB/s with a 64 KiB burst: at least ~3.9 s).
    let t = std::time::Instant::now();
    let p = b.fetch(req(&put)).wait().await.unwrap();
    let el = t.elapsed();
    assert_eq!(p.phase, Phase::Done);
    assert!(
        el >= Duration::from_millis(3500),
        "capped upload took only {el:?}"
    );
}
