//! `pyrsia tx request-build --wait`: a build request followed block by block
//! until its trust level is final, or until every selected builder has
//! answered (attested or reported a failure) without a quorum of
//! attestations: then it prints each builder's answer and fails.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use pyrsia_chain::{AttesterRole, Digest, Params, RequestRecord, TrustLevel};
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
    // The builders selected now (replaced ones leave), and who answered.
    let mut current: Vec<String> = Vec::new();
    let mut answered: Vec<String> = Vec::new();
    let mut failures = Vec::new();
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
        let answers_before = answered.len();
        for e in events
            .iter()
            .filter(|e| e.attribute("request_id") == Some(id_hex.as_str()))
        {
            match e.kind.as_str() {
                "builders_selected" | "builders_replaced" => {
                    let left: Vec<&str> = ["missed", "failed"]
                        .iter()
                        .filter_map(|k| e.attribute(k))
                        .flat_map(|v| v.split(','))
                        .collect();
                    current.retain(|b| !left.contains(&b.as_str()));
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
                    current.extend(picks.iter().cloned());
                    selected.extend(picks);
                }
                "attested" => {
                    let attester = e.attribute("attester").unwrap_or_default().to_owned();
                    let role = e.attribute("role").unwrap_or_default().to_owned();
                    if !ctx.json {
                        println!("  height {height}: attested by {attester} ({role})");
                    }
                    answered.push(attester.clone());
                    attestations.push(serde_json::json!({
                        "attester": attester, "role": role, "height": height
                    }));
                }
                "build_failed" => {
                    let builder = e.attribute("builder").unwrap_or_default().to_owned();
                    let role = e.attribute("role").unwrap_or_default().to_owned();
                    let reason = e.attribute("reason").unwrap_or_default().to_owned();
                    let log = e.attribute("log_digest").unwrap_or_default().to_owned();
                    if !ctx.json {
                        println!(
                            "  height {height}: build failed at {builder} ({role}): {reason}{}",
                            log_note(&log)
                        );
                    }
                    answered.push(builder.clone());
                    failures.push(serde_json::json!({
                        "builder": builder, "role": role, "reason": reason,
                        "log_digest": log, "height": height
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
        let all_answered = !current.is_empty() && current.iter().all(|b| answered.contains(b));
        // Checked when an answer arrives, not every block.
        let new_answer = answered.len() > answers_before;
        if new_answer && !is_final(&level) && all_answered && !failures.is_empty() {
            if let Some(record) = without_quorum(ctx, id, height).await? {
                return report_failed(ctx, &record, tx.height, height, &selected);
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

fn log_note(log_digest: &str) -> String {
    if log_digest.is_empty() {
        " (no log stored)".to_owned()
    } else {
        format!(" (log sha256 {log_digest})")
    }
}

/// The request's record at `height`, verified, if every builder selected
/// then has answered and the regular attestations fall short of the quorum:
/// this round can reach neither `quorum_only` nor `reproducible`.
async fn without_quorum(ctx: &Context, id: Digest, height: u64) -> Result<Option<RequestRecord>> {
    let mut verified = ctx.verified_ledger()?;
    let snapshot = verified.snapshot(At::Height(height)).await?;
    let record = verified
        .request(&snapshot, &id)
        .await?
        .ok_or_else(|| anyhow!("request {id} is proven absent at height {height}"))?;
    let params: Params = verified
        .get_decoded(&snapshot, "params")
        .await?
        .ok_or_else(|| anyhow!("the ledger has no params at height {height}"))?;
    let answered = |b: &pyrsia_chain::PublicKey| {
        record.attestations.iter().any(|a| a.attester == *b)
            || record.failures.iter().any(|f| f.builder == *b)
    };
    let regular = record
        .attestations
        .iter()
        .filter(|a| a.role == AttesterRole::Regular)
        .count();
    let done = !record.selected.is_empty()
        && record.selected.iter().all(answered)
        && !record.failures.is_empty()
        && regular < usize::from(params.quorum);
    Ok(done.then_some(record))
}

/// Prints every answer of a request whose selected builders all answered
/// without a quorum, from its verified record, and fails.
fn report_failed(
    ctx: &Context,
    record: &RequestRecord,
    request_height: u64,
    height: u64,
    selected: &[String],
) -> Result<()> {
    let id = record.id;
    let failures: Vec<serde_json::Value> = record
        .failures
        .iter()
        .map(|f| {
            serde_json::json!({
                "builder": f.builder,
                "role": format!("{:?}", f.role).to_lowercase(),
                "reason": f.reason,
                "log_digest": f.log_digest,
                "height": f.height,
            })
        })
        .collect();
    let attestations: Vec<serde_json::Value> = record
        .attestations
        .iter()
        .map(|a| {
            serde_json::json!({
                "attester": a.attester,
                "role": format!("{:?}", a.role).to_lowercase(),
                "height": a.height,
            })
        })
        .collect();
    ctx.print(
        &serde_json::json!({
            "verified": true,
            "request_id": id,
            "request_height": request_height,
            "level": record.level,
            "final": false,
            "failed": true,
            "height": height,
            "selected": selected,
            "attestations": attestations,
            "failures": failures,
        }),
        || {
            let mut text = format!(
                "request {id}: every selected builder answered at height {height} without a quorum; {} failed (verified):",
                record.failures.len()
            );
            for f in &record.failures {
                let log = f.log_digest.map(|d| d.to_string()).unwrap_or_default();
                text.push_str(&format!(
                    "\n  {} ({}): {}{}",
                    f.builder,
                    format!("{:?}", f.role).to_lowercase(),
                    f.reason,
                    log_note(&log)
                ));
            }
            for a in &record.attestations {
                text.push_str(&format!(
                    "\n  {} ({}): attested",
                    a.attester,
                    format!("{:?}", a.role).to_lowercase()
                ));
            }
            text
        },
    );
    bail!(
        "request {id}: {} builder(s) reported a failed build and no quorum attested",
        record.failures.len()
    )
}
