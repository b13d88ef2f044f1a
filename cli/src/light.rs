//! `pyrsia light`: a local verifying proxy. Tools that speak CometBFT RPC
//! point at it instead of at a node and get only answers the light client
//! verified from the trust anchor; what it cannot verify it refuses.
//!
//! Served (JSON-RPC over POST, or `GET /METHOD?…`): `abci_query`, `commit`,
//! `validators`, `status`, `health`. `status` reports the latest verified
//! header in `sync_info`; the rest of it (node info) is the node's claim.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::Args;
use pyrsia_ledger_client::verified::{At, VerifiedLedger, VerifyError};
use serde_json::{json, Value};
use tendermint::block::Height;
use tendermint_rpc::endpoint::{abci_query, commit, validators};
use tokio::sync::Mutex;
use warp::Filter;

use crate::Context;

#[derive(Args, Debug)]
pub struct LightArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8888")]
    pub listen: SocketAddr,
}

/// A JSON-RPC error: CometBFT's code for a server error, and what failed.
fn rpc_error(id: &Value, message: &str, data: String) -> Value {
    json!({"jsonrpc": "2.0", "id": id,
           "error": {"code": -32603, "message": message, "data": data}})
}

fn height_param(params: &Value) -> Result<Option<u64>, String> {
    match params.get("height") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => s
            .parse()
            .map(|h: u64| (h != 0).then_some(h))
            .map_err(|_| format!("height {s:?} is not a number")),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|h| (h != 0).then_some(h))
            .ok_or_else(|| format!("height {n} is not a block height")),
        Some(other) => Err(format!("height {other} is not a number")),
    }
}

async fn serve_method(
    ledger: &mut VerifiedLedger,
    method: &str,
    params: &Value,
) -> Result<Value, String> {
    let verify = |e: VerifyError| e.to_string();
    let height = height_param(params)?;
    match method {
        "health" => Ok(json!({})),
        "abci_query" => {
            let path = params
                .get("path")
                .and_then(Value::as_str)
                .ok_or("abci_query needs a path")?;
            let at = height.map_or(At::Latest, At::Height);
            let snapshot = ledger.snapshot(at).await.map_err(verify)?;
            let response = ledger.answer(&snapshot, path).await.map_err(verify)?;
            serde_json::to_value(abci_query::Response { response }).map_err(|e| e.to_string())
        }
        "commit" | "validators" => {
            let h = match height {
                Some(h) => h,
                None => ledger.snapshot(At::Latest).await.map_err(verify)?.height + 1,
            };
            let block = ledger
                .light_mut()
                .verify_to(h)
                .await
                .map_err(|e| e.to_string())?;
            let value = if method == "commit" {
                serde_json::to_value(commit::Response {
                    signed_header: block.signed_header,
                    canonical: true,
                })
            } else {
                let validators = block.validators.validators().clone();
                let total = i32::try_from(validators.len()).map_err(|e| e.to_string())?;
                let height = Height::try_from(h).map_err(|e| e.to_string())?;
                serde_json::to_value(validators::Response::new(height, validators, total))
            };
            value.map_err(|e| e.to_string())
        }
        "status" => {
            let snapshot = ledger.snapshot(At::Latest).await.map_err(verify)?;
            let header = ledger
                .light_mut()
                .verify_to(snapshot.height + 1)
                .await
                .map_err(|e| e.to_string())?;
            let mut status = ledger.light().status().await.map_err(|e| e.to_string())?;
            let h = &header.signed_header.header;
            status.sync_info.latest_block_height = h.height;
            status.sync_info.latest_block_hash = h.hash();
            status.sync_info.latest_app_hash = h.app_hash.clone();
            status.sync_info.latest_block_time = h.time;
            serde_json::to_value(status).map_err(|e| e.to_string())
        }
        other => Err(format!(
            "{other} is not served: pyrsia light answers only what it can verify (abci_query, commit, validators, status, health)"
        )),
    }
}

async fn handle(ledger: &Mutex<VerifiedLedger>, id: Value, method: &str, params: Value) -> Value {
    let mut ledger = ledger.lock().await;
    match serve_method(&mut ledger, method, &params).await {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(e) => {
            tracing::warn!(method, error = %e, "refused");
            rpc_error(&id, "not verified", e)
        }
    }
}

pub async fn run(ctx: &Context, args: LightArgs) -> Result<()> {
    let ledger = Arc::new(Mutex::new(ctx.verified_ledger()?));
    let post = {
        let ledger = ledger.clone();
        warp::post()
            .and(warp::body::content_length_limit(64 * 1024))
            .and(warp::body::json())
            .then(move |body: Value| {
                let ledger = ledger.clone();
                async move {
                    let id = body.get("id").cloned().unwrap_or(Value::Null);
                    let method = body
                        .get("method")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    let params = body.get("params").cloned().unwrap_or(Value::Null);
                    warp::reply::json(&handle(&ledger, id, &method, params).await)
                }
            })
    };
    let get = warp::get()
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::query::<HashMap<String, String>>())
        .then(move |method: String, query: HashMap<String, String>| {
            let ledger = ledger.clone();
            async move {
                // URI form quotes strings: path="request/…".
                let params: serde_json::Map<String, Value> = query
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v.trim_matches('"').to_owned())))
                    .collect();
                warp::reply::json(
                    &handle(&ledger, Value::from(-1), &method, Value::Object(params)).await,
                )
            }
        });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let local = listener.local_addr()?;
    ctx.print(
        &json!({"listening": local.to_string(), "node": ctx.node}),
        || {
            format!(
                "pyrsia light: verified RPC of {} on http://{local}",
                ctx.node
            )
        },
    );
    warp::serve(post.or(get))
        .run_incoming(tokio_stream_of(listener))
        .await;
    Ok(())
}

fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let next = listener.accept().await.map(|(stream, _)| stream);
        Some((next, listener))
    })
}
