//! `pyrsia tx request-build --wait`: a build request followed block by block
//! until its trust level is final.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use pyrsia_chain::{Digest, TrustLevel};
use pyrsia_ledger_client::follow::Follower;
use pyrsia_ledger_client::rpc::{CommittedTx, LedgerClient};
use pyrsia_ledger_client::verified::At;

use crate::Context;

fn is_final(level: &str) -> bool {
    level == TrustLevel::Reproducible.as_str() || level == TrustLevel::Disputed.as_str()
}

pub async fn follow_request(
    ctx: &Context,
    id: Digest,
    tx: &CommittedTx,
    timeout: Duration,
) -> Result<()> {
    let id_hex = id.to_string();
    let mut selected: Vec<String> = Vec::new();
    if !ctx.json {
        println!("build request {id_hex} committed at height {}", tx.height);
    }
    let ledger = LedgerClient::new(&ctx.node)?;
    let mut follower = Follower::new(ledger, tx.height + 1);
    let mut level = TrustLevel::Pending.as_str().to_owned();
    let mut attestations = Vec::new();
    let mut final_height = tx.height;
    let deadline = tokio::time::Instant::now() + timeout;
    while !is_final(&level) {
        let block = tokio::time::timeout_at(deadline, follower.next_block()).await;
        let Ok(block) = block else {
            if ctx.json {
                println!(
                    "{}",
                    serde_json::json!({"request_id": id_hex, "level": level, "final": false,
                        "selected": selected, "attestations": attestations})
                );
            }
            bail!("timed out after {timeout:?} with request {id_hex} at level {level}");
        };
        let (height, events) = block?;
        for e in events
            .iter()
            .filter(|e| e.attribute("request_id") == Some(id_hex.as_str()))
        {
            match e.kind.as_str() {
                "builders_selected" | "builders_replaced" => {
                    let picks: Vec<String> = e
                        .attribute("selected")
                        .unwrap_or_default()
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect();
                    if !ctx.json {
                        println!(
                            "  height {height}: {} ({}):",
                            e.kind.replace('_', " "),
                            picks.len()
                        );
                        for b in &picks {
                            println!("    {b}");
                        }
                    }
                    selected.extend(picks);
                }
                "attested" => {
                    let attester = e.attribute("attester").unwrap_or_default().to_owned();
                    let role = e.attribute("role").unwrap_or_default().to_owned();
                    if !ctx.json {
                        println!("  height {height}: attested by {attester} ({role})");
                    }
                    attestations.push(serde_json::json!({
                        "attester": attester, "role": role, "height": height
                    }));
                }
                "trust_changed" => {
                    level = e.attribute("to").unwrap_or_default().to_owned();
                    final_height = height;
                    if !ctx.json {
                        println!("  height {height}: level {level}");
                    }
                }
                _ => {}
            }
        }
    }
    // The events above came from one node; the level reported is the one
    // the record proves at the height it became final.
    let mut verified = ctx.verified_ledger()?;
    let snapshot = verified.snapshot(At::Height(final_height)).await?;
    let record = verified
        .request(&snapshot, &id)
        .await?
        .ok_or_else(|| anyhow!("request {id_hex} is proven absent at height {final_height}"))?;
    if record.level.as_str() != level {
        bail!(
            "the node's events put request {id_hex} at {level}, but its verified record is {} at height {final_height}",
            record.level
        );
    }
    ctx.print(
        &serde_json::json!({
            "verified": true,
            "request_id": id_hex,
            "request_height": tx.height,
            "level": level,
            "final": true,
            "final_height": final_height,
            "blocks": final_height - tx.height,
            "selected": selected,
            "attestations": attestations,
        }),
        || {
            format!(
                "request {id_hex}: {level} at height {final_height} ({} blocks after the request; verified)",
                final_height - tx.height
            )
        },
    );
    Ok(())
}
