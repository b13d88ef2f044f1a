//! The few calls a builder and a client make to their local store sidecar.

use std::path::Path;

use anyhow::{anyhow, bail, Context as _, Result};
use hyper::{Body, Method, Request};
use pyrsia_chain::{Digest, Output};
use serde::Deserialize;

/// Where `pyrsia store start` serves its control API by default.
pub const DEFAULT_API_URL: &str = "http://127.0.0.1:7889";

#[derive(Debug, Deserialize)]
struct Stored {
    sha256: String,
    size: u64,
    stripe_size: u32,
    stripe_root: String,
}

#[derive(Debug, Deserialize)]
pub struct StoreStatus {
    pub peer_id: String,
}

#[derive(Debug, Clone)]
pub struct StoreApi {
    base: String,
}

impl StoreApi {
    pub fn new(base: &str) -> StoreApi {
        StoreApi {
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Body) -> Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        let req = Request::builder()
            .method(method.clone())
            .uri(&url)
            .body(body)?;
        let resp = hyper::Client::new()
            .request(req)
            .await
            .with_context(|| format!("{method} {url} (is the store running?)"))?;
        let status = resp.status();
        let bytes = hyper::body::to_bytes(resp.into_body()).await?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            anyhow!(
                "{method} {url}: HTTP {status}, not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })?;
        if !status.is_success() {
            bail!(
                "{method} {url}: HTTP {status}: {}",
                value["error"].as_str().unwrap_or("unknown error")
            );
        }
        Ok(value)
    }

    pub async fn status(&self) -> Result<StoreStatus> {
        let v = self.call(Method::GET, "/status", Body::empty()).await?;
        Ok(serde_json::from_value(v)?)
    }

    /// Stores `file`, pinned, and returns its ledger description under `name`.
    pub async fn put_pinned(&self, file: &Path, name: &str) -> Result<Output> {
        let f = tokio::fs::File::open(file)
            .await
            .with_context(|| format!("opening {}", file.display()))?;
        let body = Body::wrap_stream(tokio_util::io::ReaderStream::new(f));
        let v = self.call(Method::PUT, "/artifacts?pin=true", body).await?;
        let stored: Stored = serde_json::from_value(v)?;
        Ok(Output {
            name: name.to_owned(),
            sha256: stored.sha256.parse::<Digest>()?,
            size: stored.size,
            stripe_size: stored.stripe_size,
            stripe_root: stored.stripe_root.parse::<Digest>()?,
        })
    }

    /// The bytes of an attested artifact of at most `limit` bytes, from the
    /// local store or fetched from its peers (the store checks every stripe
    /// against the stripe root and the whole file against its SHA-256;
    /// this checks the SHA-256 once more).
    pub async fn get_small(&self, artifact: &Output, limit: u64) -> Result<Vec<u8>> {
        if artifact.size > limit {
            bail!(
                "{} is {} bytes, over the {limit} expected",
                artifact.name,
                artifact.size
            );
        }
        let url = format!(
            "{}/artifacts/{}?stripe_root={}&size={}&stripe_size={}",
            self.base, artifact.sha256, artifact.stripe_root, artifact.size, artifact.stripe_size
        );
        let req = Request::builder()
            .method(Method::GET)
            .uri(&url)
            .body(Body::empty())?;
        let resp = hyper::Client::new()
            .request(req)
            .await
            .with_context(|| format!("GET {url} (is the store running?)"))?;
        let status = resp.status();
        let bytes = hyper::body::to_bytes(resp.into_body()).await?;
        if !status.is_success() {
            bail!(
                "GET {url}: HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        if Digest::of(&bytes) != artifact.sha256 || bytes.len() as u64 != artifact.size {
            bail!(
                "GET {url}: the bytes received are not the attested {}",
                artifact.name
            );
        }
        Ok(bytes.to_vec())
    }
}
