//! Verified reads against the plain query they replace, on a 4-validator
//! testnet on this host after `BENCH_BLOCKS` blocks (default 10000,
//! `timeout_commit` 10ms so they come quickly):
//! - a package record verified from the genesis anchor with an empty light
//!   store (cold), and how many headers that fetched;
//! - the same read from the warm store, median of `BENCH_ROUNDS` (default 21),
//!   of the latest state (which waits for the next block, whose header proves
//!   it) and of a committed height (no wait);
//! - the plain unverified `abci_query` of the same key, median, same run.
//!
//! Run with `./scripts/bench-light.sh` (release build).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use pyrsia_chain::crypto::sign_tx;
use pyrsia_chain::{Keypair, TxBody, TxKind};
use pyrsia_ledger_client::verified::{At, VerifiedLedger};
use support::{synthetic_request, AppKind, Testnet};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// A verified read at `at`: `At::Latest` includes waiting for the next block
/// (whose header proves the latest state); a committed height does not.
async fn verified_read(ledger: &mut VerifiedLedger, path: &str, at: At) -> Result<Duration> {
    let start = Instant::now();
    let snapshot = ledger.snapshot(at).await?;
    ledger
        .get(&snapshot, path)
        .await?
        .context("the package record exists")?;
    Ok(start.elapsed())
}

#[tokio::main]
async fn main() -> Result<()> {
    let blocks = env_or("BENCH_BLOCKS", 10_000);
    let rounds = env_or("BENCH_ROUNDS", 21).max(1) as usize;
    let net = Testnet::start_with(4, AppKind::Pyrsia, "10ms").await?;
    let client = net.client(0)?;

    let request = synthetic_request(0, "npm");
    let path = request.package.state_key();
    let chain_id = client.chain_id().await?;
    let tx = sign_tx(
        &Keypair::generate(),
        &chain_id,
        TxBody {
            nonce: 1,
            kind: TxKind::RequestBuild(request),
        },
    );
    client.submit(&tx).await?;
    eprintln!("light_verify: waiting for {blocks} blocks");
    client
        .wait_height(blocks, Duration::from_secs(blocks.max(600)))
        .await?;

    let store = tempfile::tempdir()?;
    let mut ledger =
        net.verified_via(&net.nodes[0].rpc_url, store.path(), Duration::from_secs(60))?;
    let cold = verified_read(&mut ledger, &path, At::Latest).await?;
    let cold_headers = ledger.light().headers_fetched();
    let height = ledger
        .light()
        .highest_verified()
        .map(|b| b.height().value())
        .unwrap_or(0);

    let mut warm = Vec::with_capacity(rounds);
    let mut committed = Vec::with_capacity(rounds);
    let mut plain = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        warm.push(verified_read(&mut ledger, &path, At::Latest).await?);
        let latest = client.latest_height().await?;
        committed.push(verified_read(&mut ledger, &path, At::Height(latest - 1)).await?);
        let start = Instant::now();
        client.query_raw(&path, 0).await?.1.context("record")?;
        plain.push(start.elapsed());
    }
    let (warm, committed, plain) = (median(warm), median(committed), median(plain));
    println!("light_verify: 4 validators on one host, header {height}");
    println!(
        "  cold verify from genesis: {:.1} ms, {cold_headers} header(s) fetched",
        cold.as_secs_f64() * 1e3
    );
    println!(
        "  warm verify:              {:.1} ms (median of {rounds}; goal < 50 ms)",
        warm.as_secs_f64() * 1e3
    );
    println!(
        "  warm verify at a committed height (no wait for a block): {:.1} ms (median of {rounds})",
        committed.as_secs_f64() * 1e3
    );
    println!(
        "  plain abci_query:         {:.1} ms (median of {rounds})",
        plain.as_secs_f64() * 1e3
    );
    println!(
        "  ratios to plain: warm latest {:.1}, warm at a committed height {:.1}",
        warm.as_secs_f64() / plain.as_secs_f64(),
        committed.as_secs_f64() / plain.as_secs_f64()
    );
    Ok(())
}
