//! Local control API (warp). Binds 127.0.0.1:7889 by default.
//!
//! | method | path | what |
//! |---|---|---|
//! | PUT | `/artifacts?stripe_size=N&pin=true` | body = file bytes → `{sha256,size,stripe_size,stripe_root}` |
//! | GET | `/artifacts/{sha256}?stripe_root=R[&size=&stripe_size=&pin=]` | the bytes, fetched from the network when missing |
//! | POST | `/fetch/{sha256}?stripe_root=R[&size=&stripe_size=&pin=]` | start (or join) a download → 202 + progress |
//! | GET | `/fetch/{sha256}` | progress of a download |
//! | POST/DELETE | `/artifacts/{sha256}/pin` | pin / unpin |
//! | GET | `/status` | peer id, addresses, peers, disk, artifacts, downloads |
//!
//! Errors are JSON `{"error": reason}` with a 4xx for bad input.

// Handlers return ready error responses in `Err`; they are built once per request.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Buf;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::download::{FetchError, FetchRequest};
use crate::manifest::{self, parse_digest, ManifestBuilder};
use crate::node::Node;
use crate::store::StoreError;

/// Default API address.
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:7889";

/// API errors.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot bind the control API on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
}

#[derive(Debug, Deserialize)]
struct PutQuery {
    stripe_size: Option<u32>,
    pin: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct GetQuery {
    stripe_root: Option<String>,
    size: Option<u64>,
    stripe_size: Option<u32>,
    pin: Option<bool>,
}

fn json_err(status: StatusCode, reason: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": reason.into() });
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

fn store_status(e: &StoreError) -> StatusCode {
    match e {
        StoreError::QuotaExceeded { .. } => StatusCode::INSUFFICIENT_STORAGE,
        StoreError::NotFound(_) => StatusCode::NOT_FOUND,
        StoreError::RootConflict { .. } => StatusCode::CONFLICT,
        StoreError::Manifest(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn fetch_status(e: &FetchError) -> StatusCode {
    match e {
        FetchError::NoProviders { .. } => StatusCode::NOT_FOUND,
        FetchError::NoValidManifest { .. } | FetchError::WholeFile(_) => StatusCode::BAD_GATEWAY,
        FetchError::Conflict(_) => StatusCode::CONFLICT,
        FetchError::Stalled { .. } => StatusCode::GATEWAY_TIMEOUT,
        FetchError::Store(s) if s.contains("quota") => StatusCode::INSUFFICIENT_STORAGE,
        FetchError::Store(_) | FetchError::Stopped => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn parse_sha(s: &str) -> Result<manifest::Digest, Response> {
    parse_digest(s).ok_or_else(|| {
        json_err(
            StatusCode::BAD_REQUEST,
            "sha256 must be 64 hexadecimal characters",
        )
    })
}

fn fetch_request(sha: &str, q: &GetQuery) -> Result<FetchRequest, Response> {
    let sha256 = parse_sha(sha)?;
    let Some(root) = q.stripe_root.as_deref() else {
        return Err(json_err(
            StatusCode::BAD_REQUEST,
            "query parameter stripe_root is required",
        ));
    };
    let stripe_root = parse_digest(root).ok_or_else(|| {
        json_err(
            StatusCode::BAD_REQUEST,
            "stripe_root must be 64 hexadecimal characters",
        )
    })?;
    if let Some(ss) = q.stripe_size {
        manifest::check_stripe_size(ss)
            .map_err(|e| json_err(StatusCode::BAD_REQUEST, e.to_string()))?;
    }
    Ok(FetchRequest {
        sha256,
        stripe_root,
        size: q.size,
        stripe_size: q.stripe_size,
        pin: q.pin.unwrap_or(false),
    })
}

async fn put_artifact<S, B>(node: Node, q: PutQuery, body: S) -> Result<Response, Infallible>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    Ok(match put_inner(&node, q, body).await {
        Ok(r) => r,
        Err(r) => r,
    })
}

async fn put_inner<S, B>(node: &Node, q: PutQuery, mut body: S) -> Result<Response, Response>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let ss = q.stripe_size.unwrap_or(node.config().stripe_size);
    let mut mb =
        ManifestBuilder::new(ss).map_err(|e| json_err(StatusCode::BAD_REQUEST, e.to_string()))?;
    let store = node.store().clone();
    let tmp = store.tmp_path();
    let internal = |e: std::io::Error| json_err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let mut f = tokio::fs::File::create(&tmp).await.map_err(internal)?;
    let result: Result<(), Response> = async {
        while let Some(chunk) = body.next().await {
            let mut chunk =
                chunk.map_err(|e| json_err(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
            while chunk.has_remaining() {
                let c = chunk.chunk();
                let n = c.len();
                mb.update(c);
                f.write_all(c).await.map_err(internal)?;
                chunk.advance(n);
            }
            if mb.size() > store.quota() {
                return Err(json_err(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "artifact exceeds the store quota of {} bytes",
                        store.quota()
                    ),
                ));
            }
        }
        f.flush().await.map_err(internal)?;
        Ok(())
    }
    .await;
    drop(f);
    if let Err(r) = result {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(r);
    }
    let (whole, m) = mb
        .finish()
        .map_err(|e| json_err(StatusCode::BAD_REQUEST, e.to_string()))?;
    let pin = q.pin.unwrap_or(true);
    let st = store.clone();
    let tmp2 = tmp.clone();
    let r = tokio::task::spawn_blocking(move || st.commit_file(&tmp2, whole, m, pin))
        .await
        .map_err(|e| json_err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match r {
        Ok((put, evicted)) => {
            node.after_commit(&put, evicted).await;
            Ok(
                warp::reply::with_status(warp::reply::json(&put), StatusCode::CREATED)
                    .into_response(),
            )
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(json_err(store_status(&e), e.to_string()))
        }
    }
}

fn octet_response(body: hyper::Body, size: u64, sha: &manifest::Digest) -> Response {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        warp::http::header::CONTENT_TYPE,
        warp::http::HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(warp::http::header::CONTENT_LENGTH, size.into());
    if let Ok(v) = warp::http::HeaderValue::from_str(&hex::encode(sha)) {
        h.insert("x-sha256", v);
    }
    resp
}

async fn get_artifact(node: Node, sha: String, q: GetQuery) -> Result<Response, Infallible> {
    let req = match fetch_request(&sha, &q) {
        Ok(r) => r,
        Err(r) => return Ok(r),
    };
    if !node.store().is_complete(&req.sha256, &req.stripe_root) {
        return Ok(stream_while_fetching(node, req).await);
    }
    if req.pin {
        let _ = node.store().set_pinned(&req.sha256, true);
    }
    let (f, size) = match node.store().open_complete(&req.sha256, &req.stripe_root) {
        Ok(x) => x,
        Err(e) => return Ok(json_err(store_status(&e), e.to_string())),
    };
    let stream =
        tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(f), 256 * 1024);
    Ok(octet_response(
        hyper::Body::wrap_stream(stream),
        size,
        &req.sha256,
    ))
}

/// Streams an artifact while it downloads: each stripe goes out once it is
/// verified and on disk, in order; the last stripe only after the whole-file
/// SHA-256 matched, so a client never receives a complete body that fails
/// it (on failure the body is cut short with an error).
async fn stream_while_fetching(node: Node, req: FetchRequest) -> Response {
    let h = node.fetch(req.clone());
    // Headers need the size: wait for the verified manifest (or the end).
    let p = h
        .wait_for(|p| p.stripes_total > 0 && p.phase != crate::Phase::Discovering)
        .await;
    if p.phase == crate::Phase::Failed || p.stripes_total == 0 {
        return match h.wait().await {
            Err(e) => json_err(fetch_status(&e), e.to_string()),
            Ok(_) => json_err(
                StatusCode::INTERNAL_SERVER_ERROR,
                "download ended without a manifest",
            ),
        };
    }
    let (size, total) = (p.size, p.stripes_total);
    let sha = req.sha256;
    let stream = futures::stream::unfold(0u64, move |next| {
        let node = node.clone();
        let h = h.clone();
        async move {
            if next >= total {
                return None;
            }
            let last = next + 1 == total;
            loop {
                let ready = node.store().has_stripe(&sha, next)
                    && (!last || h.progress().phase == crate::Phase::Done);
                if ready {
                    let st = node.store().clone();
                    let r = tokio::task::spawn_blocking(move || st.read_stripe(&sha, next)).await;
                    return Some(match r {
                        Ok(Ok(d)) => (Ok(bytes::Bytes::from_owner(d)), next + 1),
                        Ok(Err(e)) => (Err(std::io::Error::other(e.to_string())), total),
                        Err(e) => (Err(std::io::Error::other(e.to_string())), total),
                    });
                }
                let p = h.progress();
                if p.phase == crate::Phase::Failed {
                    let reason = p.error.unwrap_or_default();
                    return Some((Err(std::io::Error::other(reason)), total));
                }
                let done = p.stripes_done;
                h.wait_for(|p| {
                    p.stripes_done != done
                        || matches!(p.phase, crate::Phase::Done | crate::Phase::Failed)
                })
                .await;
            }
        }
    });
    octet_response(hyper::Body::wrap_stream(stream), size, &sha)
}

async fn start_fetch(node: Node, sha: String, q: GetQuery) -> Result<Response, Infallible> {
    let req = match fetch_request(&sha, &q) {
        Ok(r) => r,
        Err(r) => return Ok(r),
    };
    let h = node.fetch(req);
    Ok(
        warp::reply::with_status(warp::reply::json(&h.progress()), StatusCode::ACCEPTED)
            .into_response(),
    )
}

async fn fetch_progress(node: Node, sha: String) -> Result<Response, Infallible> {
    let d = match parse_sha(&sha) {
        Ok(d) => d,
        Err(r) => return Ok(r),
    };
    Ok(match node.download(&d) {
        Some(h) => warp::reply::json(&h.progress()).into_response(),
        None => json_err(StatusCode::NOT_FOUND, "no download of this artifact"),
    })
}

async fn set_pin(node: Node, sha: String, pinned: bool) -> Result<Response, Infallible> {
    let d = match parse_sha(&sha) {
        Ok(d) => d,
        Err(r) => return Ok(r),
    };
    Ok(match node.store().set_pinned(&d, pinned) {
        Ok(()) => {
            warp::reply::json(&serde_json::json!({"sha256": sha, "pinned": pinned})).into_response()
        }
        Err(e) => json_err(store_status(&e), e.to_string()),
    })
}

async fn recover(r: Rejection) -> Result<Response, Infallible> {
    let resp = if r.is_not_found() {
        json_err(StatusCode::NOT_FOUND, "no such endpoint")
    } else if let Some(e) = r.find::<warp::reject::InvalidQuery>() {
        json_err(StatusCode::BAD_REQUEST, format!("bad query: {e}"))
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        // warp reports an unmatched path as "method not allowed" when a
        // route with another method was tried first.
        json_err(
            StatusCode::NOT_FOUND,
            "no such endpoint for this method and path",
        )
    } else if r.find::<warp::reject::PayloadTooLarge>().is_some() {
        json_err(StatusCode::PAYLOAD_TOO_LARGE, "payload too large")
    } else if let Some(e) = r.find::<warp::reject::InvalidHeader>() {
        json_err(StatusCode::BAD_REQUEST, e.to_string())
    } else if let Some(e) = r.find::<warp::reject::MissingHeader>() {
        json_err(StatusCode::BAD_REQUEST, e.to_string())
    } else {
        tracing::warn!(?r, "unhandled rejection");
        json_err(StatusCode::BAD_REQUEST, format!("bad request: {r:?}"))
    };
    Ok(resp)
}

/// All routes.
pub fn routes(node: Node) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let n = warp::any().map(move || node.clone());
    let put = warp::put()
        .and(warp::path("artifacts"))
        .and(warp::path::end())
        .and(n.clone())
        .and(warp::query::<PutQuery>())
        .and(warp::body::stream())
        .and_then(|node, q, body| put_artifact(node, q, Box::pin(body)));
    let get = warp::get()
        .and(warp::path!("artifacts" / String))
        .and(n.clone())
        .and(warp::query::<GetQuery>())
        .and_then(|sha, node, q| get_artifact(node, sha, q));
    let fetch = warp::post()
        .and(warp::path!("fetch" / String))
        .and(n.clone())
        .and(warp::query::<GetQuery>())
        .and_then(|sha, node, q| start_fetch(node, sha, q));
    let progress = warp::get()
        .and(warp::path!("fetch" / String))
        .and(n.clone())
        .and_then(|sha, node| fetch_progress(node, sha));
    let pin = warp::post()
        .and(warp::path!("artifacts" / String / "pin"))
        .and(n.clone())
        .and_then(|sha, node| set_pin(node, sha, true));
    let unpin = warp::delete()
        .and(warp::path!("artifacts" / String / "pin"))
        .and(n.clone())
        .and_then(|sha, node| set_pin(node, sha, false));
    let status = warp::get()
        .and(warp::path!("status"))
        .and(n)
        .map(|node: Node| warp::reply::json(&node.status()).into_response());
    put.or(get)
        .unify()
        .or(fetch)
        .unify()
        .or(progress)
        .unify()
        .or(pin)
        .unify()
        .or(unpin)
        .unify()
        .or(status)
        .unify()
        .recover(recover)
        .unify()
}

/// Binds the API; returns the bound address and the server future.
pub fn bind(
    node: Node,
    addr: SocketAddr,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()>), ApiError> {
    warp::serve(routes(node))
        .try_bind_ephemeral(addr)
        .map_err(|e| ApiError::Bind {
            addr,
            reason: e.to_string(),
        })
}
