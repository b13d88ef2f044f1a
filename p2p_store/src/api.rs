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
//!
//! Two guards run before any route (see README, *Control API*):
//!
//! * **Host check** (DNS rebinding): a request whose `Host` is not a
//!   loopback name or address (`localhost`, `127.0.0.1`, `[::1]`, any port)
//!   or the IP the API is bound to gets 421 and a JSON error.
//! * **Bearer token** on every call that changes the store (PUT
//!   `/artifacts`, POST/DELETE `/artifacts/{sha}/pin`, POST `/fetch/{sha}`):
//!   `Authorization: Bearer <token>`, the 64 hex characters of the file
//!   `api-token` in the store directory (created 0600 on first start,
//!   [`load_or_create_token`]; clients read it with [`read_token`]).
//!   Missing or wrong: 401 and a JSON error. Reads stay open.

// Handlers return ready error responses in `Err`; they are built once per request.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Buf;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use std::sync::Mutex;
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

/// File name of the API token in the store directory.
pub const TOKEN_FILE_NAME: &str = "api-token";

/// Bytes of randomness in a token (written as twice as many hex characters).
const TOKEN_BYTES: usize = 32;

/// API errors.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot bind the control API on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("API token file {path}: {source}")]
    TokenIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("API token file {path} has mode {mode:04o}, which lets other users read or change it; run `chmod 600 {path}` (or delete it to make a new token)")]
    TokenPermissions { path: PathBuf, mode: u32 },
    #[error("API token file {path} is not a token ({reason}); delete it and restart the store to make a new one")]
    TokenInvalid { path: PathBuf, reason: String },
}

fn token_io(path: &Path) -> impl FnOnce(std::io::Error) -> ApiError + '_ {
    move |source| ApiError::TokenIo {
        path: path.to_path_buf(),
        source,
    }
}

/// The token file of a store directory: `<dir>/api-token`.
pub fn token_path(store_dir: &Path) -> PathBuf {
    store_dir.join(TOKEN_FILE_NAME)
}

/// Reads the token in `path` (64 hexadecimal characters, surrounding
/// whitespace ignored). What clients of the API use.
pub fn read_token(path: &Path) -> Result<String, ApiError> {
    let text = std::fs::read_to_string(path).map_err(token_io(path))?;
    let token = text.trim();
    if token.len() != 2 * TOKEN_BYTES || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::TokenInvalid {
            path: path.to_path_buf(),
            reason: format!("expected {} hexadecimal characters", 2 * TOKEN_BYTES),
        });
    }
    Ok(token.to_ascii_lowercase())
}

/// The store's token: the one in `path` if it exists (refused when its mode
/// lets group or others in), else a new one of 32 random bytes, written
/// with mode 0600 from the start (a temporary file created exclusively with
/// that mode, then hard-linked into place, so the file is never readable
/// by others nor seen half-written; of two stores racing, both end up with
/// the same token).
pub fn load_or_create_token(path: &Path) -> Result<String, ApiError> {
    match std::fs::metadata(path) {
        Ok(meta) => return existing_token(path, &meta),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(token_io(path)(e)),
    }
    let mut raw = [0u8; TOKEN_BYTES];
    rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut raw).map_err(|e| {
        ApiError::TokenIo {
            path: path.to_path_buf(),
            source: std::io::Error::other(format!("no randomness: {e}")),
        }
    })?;
    let token = hex::encode(raw);
    let created =
        crate::owner_only::create(path, format!("{token}\n").as_bytes()).map_err(token_io(path))?;
    match created {
        crate::owner_only::Created::Written => {
            tracing::info!(path = %path.display(), "created the control API token");
            Ok(token)
        }
        crate::owner_only::Created::Existed => {
            let meta = std::fs::metadata(path).map_err(token_io(path))?;
            existing_token(path, &meta)
        }
    }
}

fn existing_token(path: &Path, meta: &std::fs::Metadata) -> Result<String, ApiError> {
    if !meta.is_file() {
        return Err(ApiError::TokenInvalid {
            path: path.to_path_buf(),
            reason: "not a regular file".into(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(ApiError::TokenPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    read_token(path)
}

/// Equality of two byte strings in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// What guards the API: the token of mutating calls and the address bound.
#[derive(Debug, Clone)]
pub struct Guard {
    token: Arc<str>,
    bound: IpAddr,
}

impl Guard {
    pub fn new(token: impl Into<String>, bound: IpAddr) -> Self {
        Guard {
            token: Arc::from(token.into().to_ascii_lowercase()),
            bound,
        }
    }

    /// `None` if `Authorization` carries the token, else the 401 to send.
    fn check_token(&self, header: Option<&str>) -> Option<Response> {
        let reason = match header {
            None => "missing Authorization header: this call needs `Authorization: Bearer <token>`, the token being the contents of the store's api-token file",
            Some(h) => match h.trim().split_once(' ') {
                Some((scheme, given)) if scheme.eq_ignore_ascii_case("bearer") => {
                    let given = given.trim().to_ascii_lowercase();
                    if constant_time_eq(given.as_bytes(), self.token.as_bytes()) {
                        return None;
                    }
                    "wrong API token: it does not match the store's api-token file"
                }
                _ => "malformed Authorization header: expected `Bearer <token>`",
            },
        };
        let mut r = json_err(StatusCode::UNAUTHORIZED, reason);
        r.headers_mut().insert(
            warp::http::header::WWW_AUTHENTICATE,
            warp::http::HeaderValue::from_static("Bearer"),
        );
        Some(r)
    }

    /// `None` if `host` names this API without DNS (a loopback name or
    /// address, or the address bound), else the 421 to send.
    fn check_host(&self, host: Option<&warp::host::Authority>) -> Option<Response> {
        let Some(host) = host else {
            return Some(json_err(
                StatusCode::MISDIRECTED_REQUEST,
                "missing Host header: the control API only answers requests addressed to localhost, 127.0.0.1, [::1] or the address it is bound to",
            ));
        };
        if host_allowed(host.host(), self.bound) {
            return None;
        }
        Some(json_err(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "Host {:?} refused: the control API only answers requests addressed to localhost, 127.0.0.1, [::1] or the address it is bound to (DNS rebinding protection)",
                host.as_str()
            ),
        ))
    }
}

/// Whether a `Host` name (without port; IPv6 in brackets) is a loopback
/// name or address, or the address the API is bound to.
pub fn host_allowed(host: &str, bound: IpAddr) -> bool {
    let h = host.trim_end_matches('.');
    if h.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = h
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(h);
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback() || (ip == bound && !bound.is_unspecified()),
        Err(_) => false,
    }
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
        FetchError::NoValidManifest { .. }
        | FetchError::NoHonestPeer { .. }
        | FetchError::WholeFile(_) => StatusCode::BAD_GATEWAY,
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
    if !node.store().has_complete(&req.sha256) {
        return Ok(stream_while_fetching(node, req).await);
    }
    if req.pin {
        let _ = node.store().set_pinned(&req.sha256, true);
    }
    let (f, size) = match node.store().open_complete(&req.sha256) {
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

/// A guard's refusal, carried through warp's rejection to `recover`.
/// (A rejection must be `Sync`; the response is taken out once.)
struct Refused(Mutex<Option<Response>>);

impl std::fmt::Debug for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Refused")
    }
}

impl warp::reject::Reject for Refused {}

async fn recover(r: Rejection) -> Result<Response, Infallible> {
    if let Some(refused) = r.find::<Refused>() {
        let taken = refused.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(resp) = taken {
            return Ok(resp);
        }
    }
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

/// Extracts nothing when the token is right; rejects with the 401 otherwise.
fn token_check(guard: Guard) -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and_then(move |h: Option<String>| {
            let refusal = guard.check_token(h.as_deref());
            async move { refusal.map_or(Ok(()), |r| Err(refused(r))) }
        })
        .untuple_one()
}

/// Extracts nothing for an allowed Host; rejects with the 421 otherwise.
fn host_check(guard: Guard) -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::host::optional()
        .and_then(move |h: Option<warp::host::Authority>| {
            let refusal = guard.check_host(h.as_ref());
            async move { refusal.map_or(Ok(()), |r| Err(refused(r))) }
        })
        .untuple_one()
}

fn refused(response: Response) -> warp::Rejection {
    warp::reject::custom(Refused(Mutex::new(Some(response))))
}

/// All routes, behind the Host check; mutating ones behind the token.
pub fn routes(
    node: Node,
    guard: Guard,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let n = warp::any().map(move || node.clone());
    let auth = token_check(guard.clone());
    let host = host_check(guard);
    let put = warp::put()
        .and(warp::path("artifacts"))
        .and(warp::path::end())
        .and(auth.clone())
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
        .and(auth.clone())
        .and(n.clone())
        .and(warp::query::<GetQuery>())
        .and_then(|sha, node, q| start_fetch(node, sha, q));
    let progress = warp::get()
        .and(warp::path!("fetch" / String))
        .and(n.clone())
        .and_then(|sha, node| fetch_progress(node, sha));
    let pin = warp::post()
        .and(warp::path!("artifacts" / String / "pin"))
        .and(auth.clone())
        .and(n.clone())
        .and_then(|sha, node| set_pin(node, sha, true));
    let unpin = warp::delete()
        .and(warp::path!("artifacts" / String / "pin"))
        .and(auth)
        .and(n.clone())
        .and_then(|sha, node| set_pin(node, sha, false));
    let status = warp::get()
        .and(warp::path!("status"))
        .and(n)
        .map(|node: Node| warp::reply::json(&node.status()).into_response());
    host.and(
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
            .unify(),
    )
    .recover(recover)
    .unify()
}

/// Binds the API; returns the bound address and the server future.
/// Mutating calls need `token` (see [`load_or_create_token`]).
pub fn bind(
    node: Node,
    addr: SocketAddr,
    token: &str,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()>), ApiError> {
    warp::serve(routes(node, Guard::new(token, addr.ip())))
        .try_bind_ephemeral(addr)
        .map_err(|e| ApiError::Bind {
            addr,
            reason: e.to_string(),
        })
}

/// Entry points for the fuzz targets in `fuzz/` (not an API: no stability,
/// hidden from the docs).
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// The request would reach the node.
    pub const REACHED: u16 = 226;
    /// Not a request hyper passes on (bad method, target or header).
    pub const NOT_HTTP: u16 = 0;
    /// The API token the guard is built with.
    pub const TOKEN: &str = "00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff";

    /// The status the control API answers a request with before it reaches
    /// the node; [`REACHED`] when it would reach the node, [`NOT_HTTP`] when
    /// hyper would refuse it before the routes see it. The route table
    /// is [`routes`]' (same methods, paths, guards, query types and
    /// parsers, same `recover`), with each handler cut at its first use of
    /// the node, which needs a running store.
    pub async fn control_request(
        method: &str,
        path_and_query: &str,
        host: Option<&str>,
        authorization: Option<&str>,
    ) -> u16 {
        let Ok(method) = warp::http::Method::from_bytes(method.as_bytes()) else {
            return NOT_HTTP;
        };
        let guard = Guard::new(TOKEN, IpAddr::from([127, 0, 0, 1]));
        let auth = token_check(guard.clone());
        let host_check = super::host_check(guard);
        // What a handler does before it asks the node.
        let reached = || None::<u16>;
        let answered = |r: Response| Some(r.status().as_u16());
        let put = warp::put()
            .and(warp::path("artifacts"))
            .and(warp::path::end())
            .and(auth.clone())
            .and(warp::query::<PutQuery>())
            .map(move |q: PutQuery| {
                let ss = q.stripe_size.unwrap_or(crate::DEFAULT_STRIPE_SIZE);
                match ManifestBuilder::new(ss) {
                    Ok(_) => reached(),
                    Err(e) => answered(json_err(StatusCode::BAD_REQUEST, e.to_string())),
                }
            });
        let get = warp::get()
            .and(warp::path!("artifacts" / String))
            .and(warp::query::<GetQuery>())
            .map(move |sha: String, q: GetQuery| {
                fetch_request(&sha, &q).err().map(|r| r.status().as_u16())
            });
        let fetch = warp::post()
            .and(warp::path!("fetch" / String))
            .and(auth.clone())
            .and(warp::query::<GetQuery>())
            .map(move |sha: String, q: GetQuery| {
                fetch_request(&sha, &q).err().map(|r| r.status().as_u16())
            });
        let progress = warp::get()
            .and(warp::path!("fetch" / String))
            .map(|sha: String| parse_sha(&sha).err().map(|r| r.status().as_u16()));
        let pin = warp::post()
            .and(warp::path!("artifacts" / String / "pin"))
            .and(auth.clone())
            .map(|sha: String| parse_sha(&sha).err().map(|r| r.status().as_u16()));
        let unpin = warp::delete()
            .and(warp::path!("artifacts" / String / "pin"))
            .and(auth)
            .map(|sha: String| parse_sha(&sha).err().map(|r| r.status().as_u16()));
        let status = warp::get().and(warp::path!("status")).map(reached);
        let filter = host_check
            .and(
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
                    .unify(),
            )
            .map(|refused: Option<u16>| {
                // No route answers 226 (IM Used): it stands for "reached the node".
                let status = refused
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .unwrap_or(StatusCode::IM_USED);
                warp::reply::with_status("", status).into_response()
            })
            .recover(recover)
            .unify();
        // hyper refuses what does not parse before warp sees it, and the
        // test request builder panics on it: skip such inputs.
        if path_and_query.parse::<warp::http::Uri>().is_err() {
            return NOT_HTTP;
        }
        let mut req = warp::test::request()
            .method(method.as_str())
            .path(path_and_query);
        for (name, value) in [("host", host), ("authorization", authorization)] {
            if let Some(v) = value {
                if warp::http::HeaderValue::from_str(v).is_err() {
                    return NOT_HTTP;
                }
                req = req.header(name, v);
            }
        }
        req.reply(&filter).await.status().as_u16()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn loopback_names_and_the_bound_address_pass_the_host_check_and_nothing_else() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        for h in [
            "127.0.0.1",
            "localhost",
            "LOCALHOST",
            "localhost.",
            "[::1]",
            "127.0.0.2",
        ] {
            assert!(host_allowed(h, lo), "{h}");
        }
        for h in [
            "attacker.example",
            "localhost.attacker.example",
            "127.0.0.1.attacker.example",
            "10.0.0.5",
            "[::ffff:10.0.0.5]",
            "0.0.0.0",
            "",
        ] {
            assert!(!host_allowed(h, lo), "{h}");
        }
        let lan: IpAddr = "10.0.0.5".parse().unwrap();
        assert!(host_allowed("10.0.0.5", lan));
        assert!(!host_allowed("10.0.0.6", lan));
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        assert!(
            !host_allowed("0.0.0.0", any),
            "bound to all: only loopback names"
        );
        assert!(host_allowed("localhost", any));
    }

    #[test]
    fn token_comparison_is_exact() {
        assert!(constant_time_eq(b"abcd", b"abcd"));
        assert!(!constant_time_eq(b"abcd", b"abce"));
        assert!(!constant_time_eq(b"abcd", b"abc"));
        let g = Guard::new("ab".repeat(32), "127.0.0.1".parse().unwrap());
        assert!(g
            .check_token(Some(&format!("Bearer {}", "ab".repeat(32))))
            .is_none());
        assert!(g
            .check_token(Some(&format!("bearer {}", "AB".repeat(32))))
            .is_none());
        for bad in [
            None,
            Some("Bearer".to_owned()),
            Some(format!("Basic {}", "ab".repeat(32))),
            Some(format!("Bearer {}", "ac".repeat(32))),
            Some(format!("Bearer {}", "ab".repeat(31))),
        ] {
            let r = g.check_token(bad.as_deref()).expect("refused");
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{bad:?}");
        }
    }

    #[test]
    fn a_token_is_created_0600_reused_and_refused_when_others_may_read_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = token_path(dir.path());
        let t = load_or_create_token(&path).unwrap();
        assert_eq!(t.len(), 64);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create_token(&path).unwrap(), t, "reused");
        assert_eq!(read_token(&path).unwrap(), t);
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        for loose in [0o640, 0o604, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(loose)).unwrap();
            let err = load_or_create_token(&path).unwrap_err();
            assert!(matches!(err, ApiError::TokenPermissions { .. }), "{err}");
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "short\n").unwrap();
        let err = load_or_create_token(&path).unwrap_err();
        assert!(matches!(err, ApiError::TokenInvalid { .. }), "{err}");
    }
}
