//! The gateway's calls to its local store sidecar: stream an attested
//! artifact (the store fetches missing stripes from peers and checks each
//! against the ledger's stripe root, and the whole file against its
//! SHA-256), and store an imported file.

use std::path::{Path, PathBuf};

use hyper::{Body, Method, Request, StatusCode};
use pyrsia_chain::{Digest, Output};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{method} {url}: {source} (is the store running?)")]
    Unreachable {
        method: Method,
        url: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{method} {url}: HTTP {status}: {body}")]
    Status {
        method: Method,
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("{url}: the store's answer does not parse: {reason}")]
    Answer { url: String, reason: String },
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("building a request to {url}: {reason}")]
    Request { url: String, reason: String },
}

#[derive(Debug, Deserialize)]
struct Stored {
    sha256: Digest,
    size: u64,
    stripe_size: u32,
    stripe_root: Digest,
}

/// A client of one store's control API.
#[derive(Clone, Debug)]
pub struct StoreClient {
    base: String,
    /// The store's API token file, read on each call that changes the
    /// store (the store may create it after the gateway started).
    token_file: Option<PathBuf>,
    http: hyper::Client<hyper::client::HttpConnector>,
}

impl StoreClient {
    pub fn new(base: &str, token_file: Option<PathBuf>) -> StoreClient {
        StoreClient {
            base: base.trim_end_matches('/').to_owned(),
            token_file,
            http: hyper::Client::new(),
        }
    }

    fn request(&self, method: Method, url: &str, body: Body) -> Result<Request<Body>, StoreError> {
        let mut b = Request::builder().method(method.clone()).uri(url);
        if let (true, Some(path)) = (method != Method::GET, &self.token_file) {
            let token = std::fs::read_to_string(path).map_err(|source| StoreError::Io {
                path: path.display().to_string(),
                source,
            })?;
            b = b.header("authorization", format!("Bearer {}", token.trim()));
        }
        b.body(body).map_err(|e| StoreError::Request {
            url: url.to_owned(),
            reason: e.to_string(),
        })
    }

    async fn send(
        &self,
        method: Method,
        url: String,
        body: Body,
    ) -> Result<hyper::Response<Body>, StoreError> {
        let req = self.request(method.clone(), &url, body)?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|source| StoreError::Unreachable {
                method: method.clone(),
                url: url.clone(),
                source,
            })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let bytes = hyper::body::to_bytes(resp.into_body())
            .await
            .unwrap_or_default();
        Err(StoreError::Status {
            method,
            url,
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    /// The artifact's bytes as a stream, pinned in the local store so that
    /// what was installed stays for offline use. The store verifies before
    /// it releases each stripe, and cuts the body short on failure.
    pub async fn stream(&self, artifact: &Output) -> Result<Body, StoreError> {
        let url = format!(
            "{}/artifacts/{}?stripe_root={}&size={}&stripe_size={}&pin=true",
            self.base, artifact.sha256, artifact.stripe_root, artifact.size, artifact.stripe_size
        );
        Ok(self
            .send(Method::GET, url, Body::empty())
            .await?
            .into_body())
    }

    /// Stores `file`, pinned, and returns its ledger description as `name`.
    pub async fn put(&self, file: &Path, name: &str) -> Result<Output, StoreError> {
        let f = tokio::fs::File::open(file)
            .await
            .map_err(|source| StoreError::Io {
                path: file.display().to_string(),
                source,
            })?;
        let body = Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024));
        let url = format!("{}/artifacts?pin=true", self.base);
        let resp = self.send(Method::PUT, url.clone(), body).await?;
        let bytes =
            hyper::body::to_bytes(resp.into_body())
                .await
                .map_err(|e| StoreError::Answer {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
        let s: Stored = serde_json::from_slice(&bytes).map_err(|e| StoreError::Answer {
            url,
            reason: e.to_string(),
        })?;
        Ok(Output {
            name: name.to_owned(),
            sha256: s.sha256,
            size: s.size,
            stripe_size: s.stripe_size,
            stripe_root: s.stripe_root,
        })
    }
}
