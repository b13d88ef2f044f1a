//! Overhead of the network around a build: from the block that commits a
//! `RequestBuild` to the block where it is `reproducible`, minus the slowest
//! attesting builder's own build time — in seconds and in blocks — on a
//! devnet like the embedded one (one validator, `timeout_commit` 1s, 3
//! regular and 2 trusted builders, each with its own store).
//!
//! Run with `./scripts/bench-build-overhead.sh`; `BENCH_BUILDS` sets how many
//! builds (default 5), one after another.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use pyrsia_chain::RequestRecord;
use support::fixtures::GitServer;
use support::{ServicePlan, Testnet};

#[tokio::main]
async fn main() -> Result<()> {
    let builds: usize = std::env::var("BENCH_BUILDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let git = GitServer::start()?;
    let mut net = Testnet::start_with_services(ServicePlan {
        regular_builders: 3,
        trusted_builders: 2,
        timeout_commit: Some("1s".into()),
        ..Default::default()
    })
    .await?;
    net.start_services().await?;
    let client = net.client(0)?;
    let builders: Vec<String> = net
        .service_names()?
        .into_iter()
        .filter_map(|n| n.strip_prefix("builder:").map(str::to_owned))
        .collect();
    let keys: Vec<(String, pyrsia_chain::PublicKey)> = builders
        .iter()
        .map(|b| Ok((b.clone(), net.builder_key(b)?.public())))
        .collect::<Result<_>>()?;
    let mut rows = Vec::new();
    for i in 0..builds {
        let f = git.script_package("bench", &format!("1.0.{i}"), 2)?;
        let r = net.request_build(&f, &["--wait", "--timeout", "600"])?;
        if r["level"] != "reproducible" {
            bail!("build {i} ended {}", r["level"]);
        }
        let id = r["request_id"].as_str().context("request_id")?.to_owned();
        let requested = r["request_height"].as_u64().context("request_height")?;
        let reproducible = r["final_height"].as_u64().context("final_height")?;
        let seconds = client.block_time(reproducible).await? - client.block_time(requested).await?;
        // Jobs are logged just after the attestation commits; give them a moment.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let record: RequestRecord = client
            .query_value(&format!("request/{id}"))
            .await?
            .context("request record")?;
        // The builds that made it reproducible: attested by that height.
        let counted: Vec<_> = record
            .attestations
            .iter()
            .filter(|a| a.height <= reproducible)
            .map(|a| a.attester)
            .collect();
        let mut slowest: f64 = 0.0;
        for (name, key) in &keys {
            if !counted.contains(key) {
                continue;
            }
            let secs = net
                .builder_jobs(name)
                .iter()
                .filter(|j| j["request_id"] == id.as_str())
                .find_map(|j| j["build_secs"].as_f64())
                .with_context(|| format!("{name} attested {id} but logged no build"))?;
            slowest = slowest.max(secs);
        }
        let attestations = counted.len();
        rows.push((reproducible - requested, seconds, slowest, attestations));
    }
    let interval = {
        let h = client.latest_height().await?;
        let span = h.min(20);
        (client.block_time(h).await? - client.block_time(h - span).await?) / span as f64
    };
    println!("build  blocks  seconds  slowest_build_s  overhead_s  overhead_blocks  counted_attestations");
    let mut worst_blocks: f64 = 0.0;
    let mut sum = 0.0;
    for (i, (blocks, secs, slowest, att)) in rows.iter().enumerate() {
        let overhead = secs - slowest;
        let overhead_blocks = overhead / interval;
        worst_blocks = worst_blocks.max(overhead_blocks);
        sum += overhead;
        println!(
            "{i:>5}  {blocks:>6}  {secs:>7.2}  {slowest:>15.2}  {overhead:>10.2}  {overhead_blocks:>15.2}  {att:>20}"
        );
    }
    println!(
        "mean block interval {interval:.2}s; mean overhead {:.2}s; worst overhead {worst_blocks:.2} blocks (goal <= 3)",
        sum / rows.len().max(1) as f64
    );
    Ok(())
}
