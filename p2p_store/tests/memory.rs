#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A 1 GiB artifact is fetched with bounded memory. Its own test binary, so
//! the process's peak RSS belongs to this test alone.

mod common;

use common::*;
use p2p_store::manifest::parse_digest;
use p2p_store::FetchRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_fetch_keeps_peak_rss_far_below_artifact_size() {
    const SIZE: u64 = 1 << 30;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("artifact");
    make_file(&file, SIZE, 7);
    let seeder = start(&tmp.path().join("s"), &[], |_| {}).await;
    let put = seeder.put_path(file.clone(), None, true).await.unwrap();
    std::fs::remove_file(&file).unwrap();
    let c = start(&tmp.path().join("c"), &[&seeder], |_| {}).await;
    wait_connected(&c, &[&seeder]).await;

    // Reset the peak-RSS mark (Linux: "5" clears VmHWM), then fetch.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = peak_rss_kib();
    let p = c
        .fetch(FetchRequest {
            sha256: parse_digest(&put.sha256).unwrap(),
            stripe_root: parse_digest(&put.stripe_root).unwrap(),
            size: Some(SIZE),
            stripe_size: None,
            pin: false,
        })
        .wait()
        .await
        .unwrap();
    assert_eq!(p.bytes_fetched, SIZE);
    let peak = peak_rss_kib();
    eprintln!(
        "1 GiB fetch: {} ms, peak RSS {} MiB (before {} MiB), seeder and downloader in this process",
        p.elapsed_ms,
        peak / 1024,
        before / 1024
    );
    // Both nodes live in this process; still far below the artifact's 1024 MiB.
    assert!(peak < 256 * 1024, "peak RSS {} MiB", peak / 1024);
    assert!(c.store().is_complete(
        &parse_digest(&put.sha256).unwrap(),
        &parse_digest(&put.stripe_root).unwrap()
    ));
}
