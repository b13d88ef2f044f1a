#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Stripe layouts a caller did not choose: a root nobody serves fails fast,
//! and a partial download left under another root is replaced by the next
//! download whose manifest verifies, never a permanent conflict.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use hyper::{Body, Method, StatusCode};
use p2p_store::download::MANIFEST_GRACE;
use p2p_store::manifest::parse_digest;
use p2p_store::{FetchError, FetchRequest, Phase, PutResult};
use support::*;

async fn put_file(p: &Proc, file: &Path, query: &str) -> PutResult {
    let (s, b) = http_as(
        Method::PUT,
        &format!("{}/artifacts?{query}", p.api),
        Body::from(std::fs::read(file).unwrap()),
        &[("authorization", &p.bearer())],
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    serde_json::from_slice(&b).unwrap()
}

fn request(put: &PutResult) -> FetchRequest {
    FetchRequest {
        sha256: parse_digest(&put.sha256).unwrap(),
        stripe_root: parse_digest(&put.stripe_root).unwrap(),
        size: Some(put.size),
        stripe_size: Some(put.stripe_size),
        pin: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_under_another_root_is_replaced_and_a_root_nobody_serves_fails_fast() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("artifact");
    make_file(&file, 8 * 1024 * 1024, 11);
    // One seeder holds the bytes in 4 KiB stripes and sends slowly (what a
    // builder attesting a tiny stripe size serves), the other in the
    // default 1 MiB stripes.
    let mut tiny = spawn_store(
        &tmp.path().join("tiny"),
        &["--upload-rate", "256K", "--stripe-size", "4K"],
    )
    .await;
    let usual = spawn_store(&tmp.path().join("usual"), &[]).await;
    let small = put_file(&tiny, &file, "").await;
    let big = put_file(&usual, &file, "").await;
    assert_eq!(small.sha256, big.sha256);
    assert_eq!(small.stripe_size, 4096);
    assert_ne!(small.stripe_root, big.stripe_root);

    let stall = Duration::from_secs(20);
    let c = start(&tmp.path().join("c"), &[], |cfg| {
        cfg.bootstrap = vec![tiny.addr.clone(), usual.addr.clone()];
        cfg.stall_timeout = stall;
    })
    .await;
    wait_connected_to(&c, &[&tiny, &usual]).await;

    // A root nobody serves: both providers show their own manifest, and
    // the download gives up after the grace, well before the stall timeout.
    let mut bogus = request(&big);
    bogus.stripe_root = [0x5a; 32];
    let t = Instant::now();
    let r = c.fetch(bogus).wait().await;
    assert!(
        matches!(r, Err(FetchError::NoValidManifest { .. })),
        "{r:?}"
    );
    assert!(
        t.elapsed() < MANIFEST_GRACE + Duration::from_secs(3) && MANIFEST_GRACE < stall,
        "took {:?}",
        t.elapsed()
    );
    assert!(c.store().list().is_empty(), "nothing kept for a bogus root");

    // The tiny layout starts; its only seeder dies mid-download.
    let h1 = c.fetch(request(&small));
    let mid = h1.wait_for(|p| p.stripes_done >= 8).await;
    assert_eq!(mid.phase, Phase::Stripes, "{mid:?}");
    assert!(
        mid.stripes_done < mid.stripes_total / 2,
        "too late: {mid:?}"
    );
    tiny.child.kill().unwrap();
    tiny.child.wait().unwrap();

    // The usual layout, asked for while the tiny one still runs, waits for
    // it to end and then replaces its partial.
    let h2 = c.fetch(request(&big));
    let r1 = tokio::time::timeout(stall * 3, h1.wait()).await.unwrap();
    assert!(matches!(r1, Err(FetchError::Stalled { .. })), "{r1:?}");
    let p2 = tokio::time::timeout(Duration::from_secs(60), h2.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p2.phase, Phase::Done);
    assert_eq!(p2.stripe_root, big.stripe_root);
    assert_eq!(p2.stripes_resumed, 0, "nothing of the other layout reused");
    assert_eq!(
        std::fs::read(data_path(&c, &big.sha256)).unwrap(),
        std::fs::read(&file).unwrap()
    );
    let listed = c.store().list();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let (m, root) = c
        .store()
        .manifest(&parse_digest(&big.sha256).unwrap())
        .unwrap();
    assert_eq!(hex::encode(root), big.stripe_root);
    assert_eq!(m.stripe_size, big.stripe_size);
    assert_eq!(
        c.store().used(),
        big.size,
        "the replaced partial's quota is freed"
    );

    // Complete, the bytes serve a request under any attested layout.
    let p3 = tokio::time::timeout(Duration::from_secs(10), c.fetch(request(&small)).wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p3.phase, Phase::Done);
    c.shutdown();
}
