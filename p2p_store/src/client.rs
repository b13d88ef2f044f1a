//! The typed client of a store's control API (see [`crate::api`]): the one
//! every caller uses (`pyrsia-store` and `pyrsia` commands, builders, the
//! gateway). Answers decode into the store's own types ([`PutResult`],
//! [`Status`], [`Progress`]); failures are [`ClientError`]s that carry the
//! HTTP status and the store's `{"error": …}` message.
//!
//! Calls that change the store (put, fetch, pin) carry the API token as
//! `Authorization: Bearer …`; reads send none, so a missing token file never
//! fails them. A token file is read (with [`crate::api::read_token`]) at each
//! call: a client may be made before its store created the file. The `Host`
//! header is the URL's authority, which the API accepts for loopback names
//! and the address it is bound to (DNS rebinding guard).

use std::path::{Path, PathBuf};

use hyper::body::HttpBody as _;
use hyper::client::HttpConnector;
use hyper::{Body, Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::api::ApiError;
use crate::download::Progress;
use crate::node::Status;
use crate::store::PutResult;

/// Where `pyrsia-store start` serves its control API by default.
pub const DEFAULT_API_URL: &str = "http://127.0.0.1:7889";

/// A failed call to the control API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{method} {url}: {source} (is the store running?)")]
    Unreachable {
        method: Method,
        url: String,
        #[source]
        source: hyper::Error,
    },
    /// The store answered with an error status; `message` is its
    /// `{"error": …}` (or the raw body when that is not JSON).
    #[error("{method} {url}: HTTP {status}: {message}{}", hint(*.status, *.had_token))]
    Status {
        method: Method,
        url: String,
        status: StatusCode,
        message: String,
        /// Whether the call carried a token (for the 401 hint).
        had_token: bool,
    },
    #[error("{method} {url}: the store's answer does not parse: {reason}")]
    Answer {
        method: Method,
        url: String,
        reason: String,
    },
    #[error("{method} {url}: reading the answer: {source}")]
    Body {
        method: Method,
        url: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{url}: the answer is over the {limit} bytes expected")]
    TooLarge { url: String, limit: u64 },
    #[error("the store's API token: {0}")]
    Token(#[from] ApiError),
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("building a request to {url}: {reason}")]
    Request { url: String, reason: String },
}

fn hint(status: StatusCode, had_token: bool) -> &'static str {
    match (status, had_token) {
        (StatusCode::UNAUTHORIZED, false) => {
            " (no API token found for this store: give its api-token file with --token-file or PYRSIA_STORE_TOKEN_FILE)"
        }
        _ => "",
    }
}

impl ClientError {
    /// The HTTP status the store answered with, if it answered with an error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Where an artifact's stripes are to be found and checked: the query of
/// `GET /artifacts/{sha256}` and `POST /fetch/{sha256}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// Stripe root (hex), as the ledger holds it.
    pub stripe_root: String,
    /// Expected size, when known.
    pub size: Option<u64>,
    /// Expected stripe size, when known.
    pub stripe_size: Option<u32>,
    /// Keep the artifact in the store (never evicted).
    pub pin: bool,
}

impl Layout {
    fn query(&self) -> String {
        let mut q = format!("stripe_root={}&pin={}", self.stripe_root, self.pin);
        if let Some(s) = self.size {
            q.push_str(&format!("&size={s}"));
        }
        if let Some(s) = self.stripe_size {
            q.push_str(&format!("&stripe_size={s}"));
        }
        q
    }
}

#[derive(Debug, Clone)]
enum Token {
    None,
    Value(String),
    /// Read when a call is made.
    File(PathBuf),
}

/// A client of one store's control API.
#[derive(Debug, Clone)]
pub struct StoreClient {
    base: String,
    token: Token,
    http: hyper::Client<HttpConnector>,
}

impl StoreClient {
    /// A client of the API at `base` (e.g. `http://127.0.0.1:7889`) without
    /// a token: reads only (calls that change the store get 401).
    pub fn new(base: &str) -> StoreClient {
        StoreClient {
            base: base.trim_end_matches('/').to_owned(),
            token: Token::None,
            http: hyper::Client::new(),
        }
    }

    /// Sends `token` with every call that changes the store.
    pub fn with_token(mut self, token: impl Into<String>) -> StoreClient {
        self.token = Token::Value(token.into());
        self
    }

    /// Sends the token in `path` (read at each call that changes the store).
    pub fn with_token_file(mut self, path: impl Into<PathBuf>) -> StoreClient {
        self.token = Token::File(path.into());
        self
    }

    /// The API's base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, url: &str, body: Body) -> Result<Request<Body>, ClientError> {
        let mut b = Request::builder().method(method.clone()).uri(url);
        if method != Method::GET {
            let token = match &self.token {
                Token::None => None,
                Token::Value(t) => Some(t.clone()),
                Token::File(path) => Some(crate::api::read_token(path)?),
            };
            if let Some(t) = token {
                b = b.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
            }
        }
        b.body(body).map_err(|e| ClientError::Request {
            url: url.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Sends a call; an error status becomes [`ClientError::Status`] with
    /// the store's message.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Body,
    ) -> Result<(String, Response<Body>), ClientError> {
        let url = format!("{}{path}", self.base);
        let req = self.request(method.clone(), &url, body)?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|source| ClientError::Unreachable {
                method: method.clone(),
                url: url.clone(),
                source,
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok((url, resp));
        }
        // An error body is small JSON; read at most 64 KiB of it.
        let bytes = read_limited(resp.into_body(), 64 * 1024)
            .await
            .unwrap_or_default();
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        Err(ClientError::Status {
            method,
            url,
            status,
            message,
            had_token: !matches!(self.token, Token::None),
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Body,
    ) -> Result<T, ClientError> {
        let (url, resp) = self.send(method.clone(), path, body).await?;
        let bytes = hyper::body::to_bytes(resp.into_body())
            .await
            .map_err(|source| ClientError::Body {
                method: method.clone(),
                url: url.clone(),
                source,
            })?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Answer {
            method,
            url,
            reason: e.to_string(),
        })
    }

    /// `GET /status`.
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.call(Method::GET, "/status", Body::empty()).await
    }

    /// `PUT /artifacts`: stores `body`; `stripe_size` `None` is the node's.
    pub async fn put(
        &self,
        body: Body,
        pin: bool,
        stripe_size: Option<u32>,
    ) -> Result<PutResult, ClientError> {
        let mut path = format!("/artifacts?pin={pin}");
        if let Some(ss) = stripe_size {
            path.push_str(&format!("&stripe_size={ss}"));
        }
        self.call(Method::PUT, &path, body).await
    }

    /// [`StoreClient::put`] of a file, streamed.
    pub async fn put_file(
        &self,
        file: &Path,
        pin: bool,
        stripe_size: Option<u32>,
    ) -> Result<PutResult, ClientError> {
        let f = tokio::fs::File::open(file)
            .await
            .map_err(|source| ClientError::Io {
                path: file.to_path_buf(),
                source,
            })?;
        let body = Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024));
        self.put(body, pin, stripe_size).await
    }

    /// `POST /fetch/{sha256}`: starts (or joins) a download.
    pub async fn start_fetch(
        &self,
        sha256: &str,
        layout: &Layout,
    ) -> Result<Progress, ClientError> {
        let path = format!("/fetch/{sha256}?{}", layout.query());
        self.call(Method::POST, &path, Body::empty()).await
    }

    /// `GET /fetch/{sha256}`: the progress of a download.
    pub async fn fetch_progress(&self, sha256: &str) -> Result<Progress, ClientError> {
        self.call(Method::GET, &format!("/fetch/{sha256}"), Body::empty())
            .await
    }

    /// `POST` / `DELETE /artifacts/{sha256}/pin`.
    pub async fn set_pin(&self, sha256: &str, pin: bool) -> Result<(), ClientError> {
        let method = if pin { Method::POST } else { Method::DELETE };
        let path = format!("/artifacts/{sha256}/pin");
        let (url, resp) = self.send(method.clone(), &path, Body::empty()).await?;
        read_limited(resp.into_body(), 64 * 1024)
            .await
            .map(drop)
            .map_err(|e| match e {
                Limited::Http(source) => ClientError::Body {
                    method,
                    url: url.clone(),
                    source,
                },
                Limited::Over => ClientError::TooLarge {
                    url: url.clone(),
                    limit: 64 * 1024,
                },
            })
    }

    /// `GET /artifacts/{sha256}`: the artifact's bytes as a stream, from the
    /// local store or fetched from peers (the store checks every stripe
    /// against the stripe root and the whole file against its SHA-256, and
    /// cuts the body short on failure).
    pub async fn artifact(&self, sha256: &str, layout: &Layout) -> Result<Body, ClientError> {
        let path = format!("/artifacts/{sha256}?{}", layout.query());
        Ok(self
            .send(Method::GET, &path, Body::empty())
            .await?
            .1
            .into_body())
    }

    /// [`StoreClient::artifact`] read into memory, refused past `limit` bytes.
    pub async fn artifact_bytes(
        &self,
        sha256: &str,
        layout: &Layout,
        limit: u64,
    ) -> Result<Vec<u8>, ClientError> {
        let path = format!("/artifacts/{sha256}?{}", layout.query());
        let (url, resp) = self.send(Method::GET, &path, Body::empty()).await?;
        read_limited(resp.into_body(), limit)
            .await
            .map_err(|e| match e {
                Limited::Http(source) => ClientError::Body {
                    method: Method::GET,
                    url,
                    source,
                },
                Limited::Over => ClientError::TooLarge { url, limit },
            })
    }
}

enum Limited {
    Http(hyper::Error),
    Over,
}

async fn read_limited(mut body: Body, limit: u64) -> Result<Vec<u8>, Limited> {
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(Limited::Http)?;
        if (out.len() + chunk.len()) as u64 > limit {
            return Err(Limited::Over);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layout_is_a_query() {
        let l = Layout {
            stripe_root: "ab".into(),
            size: Some(10),
            stripe_size: Some(4096),
            pin: true,
        };
        assert_eq!(
            l.query(),
            "stripe_root=ab&pin=true&size=10&stripe_size=4096"
        );
        let l = Layout {
            stripe_root: "ab".into(),
            ..Layout::default()
        };
        assert_eq!(l.query(), "stripe_root=ab&pin=false");
    }

    #[test]
    fn a_401_without_a_token_says_where_one_comes_from() {
        let e = ClientError::Status {
            method: Method::PUT,
            url: "http://127.0.0.1:1/artifacts".into(),
            status: StatusCode::UNAUTHORIZED,
            message: "missing bearer token".into(),
            had_token: false,
        };
        assert_eq!(e.status(), Some(StatusCode::UNAUTHORIZED));
        let text = e.to_string();
        assert!(text.contains("401") && text.contains("missing bearer token"));
        assert!(text.contains("--token-file"), "{text}");
    }
}
