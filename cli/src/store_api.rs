//! The few calls a builder and a client make to their local store sidecar.
//!
//! Calls that change the store (put) carry its API token
//! (`Authorization: Bearer …`, see `p2p_store/README.md`). Where the token
//! comes from: [`token_file`].

use std::path::{Path, PathBuf};

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

/// Environment variable naming a store's API token file.
pub const TOKEN_FILE_ENV: &str = "PYRSIA_STORE_TOKEN_FILE";

/// The API token file of the store at `base`: `explicit` (a `--token-file`
/// flag), else `$PYRSIA_STORE_TOKEN_FILE`, else the token file of the store
/// that `HOME/config/services.toml` declares with that API address
/// (`<dir>/api-token`, `dir` relative to the home), else none.
pub fn token_file(home: &Path, base: &str, explicit: Option<&Path>) -> Result<Option<PathBuf>> {
    if let Some(p) = explicit {
        return Ok(Some(p.to_path_buf()));
    }
    if let Some(p) = std::env::var_os(TOKEN_FILE_ENV).filter(|p| !p.is_empty()) {
        return Ok(Some(PathBuf::from(p)));
    }
    let services = crate::services::Services::load(home)?;
    Ok(services
        .stores
        .iter()
        .find(|s| same_api(&s.api, base))
        .map(|s| p2p_store::api::token_path(&home.join(&s.dir))))
}

/// Whether a `services.toml` API address (`HOST:PORT`) and a URL name the
/// same local endpoint (loopback names count as one).
fn same_api(declared: &str, url: &str) -> bool {
    let authority = |s: &str| -> Option<(String, u16)> {
        let s = s.trim();
        let s = s
            .strip_prefix("http://")
            .or_else(|| s.strip_prefix("https://"))
            .unwrap_or(s);
        let s = s.split('/').next()?;
        let (host, port) = s.rsplit_once(':')?;
        let host = host
            .trim_matches(|c| c == '[' || c == ']')
            .to_ascii_lowercase();
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        let host = if loopback {
            "loopback".to_owned()
        } else {
            host
        };
        Some((host, port.parse().ok()?))
    };
    matches!((authority(declared), authority(url)), (Some(a), Some(b)) if a == b)
}

#[derive(Debug, Clone)]
enum Token {
    None,
    /// Read when a call is made: a builder may start before its store has
    /// created the file.
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct StoreApi {
    base: String,
    token: Token,
}

impl StoreApi {
    /// A client without a token: reads only (a put gets 401).
    pub fn new(base: &str) -> StoreApi {
        StoreApi {
            base: base.trim_end_matches('/').to_owned(),
            token: Token::None,
        }
    }

    /// Sends the token in `path` (read at each call) with every call.
    pub fn with_token_file(mut self, path: PathBuf) -> StoreApi {
        self.token = Token::File(path);
        self
    }

    /// A client of the store at `base` with the token file [`token_file`]
    /// finds for it (none found: a client that can only read).
    pub fn for_home(home: &Path, base: &str, explicit: Option<&Path>) -> Result<StoreApi> {
        let api = StoreApi::new(base);
        Ok(match token_file(home, base, explicit)? {
            Some(path) => api.with_token_file(path),
            None => api,
        })
    }

    /// A request; calls that change the store carry the token (reads are
    /// open, so a missing token file never fails them).
    fn request(&self, method: Method, url: &str) -> Result<hyper::http::request::Builder> {
        let mutating = method != Method::GET;
        let req = Request::builder().method(method).uri(url);
        if !mutating {
            return Ok(req);
        }
        let token = match &self.token {
            Token::None => return Ok(req),
            Token::File(path) => p2p_store::api::read_token(path)?,
        };
        Ok(req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}")))
    }

    async fn call(&self, method: Method, path: &str, body: Body) -> Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        let req = self.request(method.clone(), &url)?.body(body)?;
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
            let hint = match (status, &self.token) {
                (hyper::StatusCode::UNAUTHORIZED, Token::None) => " (no API token found for this store: give its api-token file with --token-file or PYRSIA_STORE_TOKEN_FILE, or declare the store in HOME/config/services.toml)",
                _ => "",
            };
            bail!(
                "{method} {url}: HTTP {status}: {}{hint}",
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
        let req = self.request(Method::GET, &url)?.body(Body::empty())?;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_url_matches_the_store_declared_with_its_address() {
        assert!(same_api("127.0.0.1:7889", "http://127.0.0.1:7889"));
        assert!(same_api("127.0.0.1:7889", "http://localhost:7889/"));
        assert!(same_api("127.0.0.1:7889", "http://[::1]:7889"));
        assert!(!same_api("127.0.0.1:7889", "http://127.0.0.1:7890"));
        assert!(!same_api("127.0.0.1:7889", "http://10.0.0.2:7889"));
        assert!(same_api("10.0.0.2:7889", "http://10.0.0.2:7889"));
        assert!(!same_api("127.0.0.1:7889", "nonsense"));
    }

    #[test]
    fn the_token_file_is_the_flag_else_the_declared_stores() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join("config")).unwrap();
        std::fs::write(
            home.path().join("config/services.toml"),
            "[[store]]\nname = \"node\"\ndir = \"store\"\nlisten = \"/ip4/127.0.0.1/tcp/44000\"\napi = \"127.0.0.1:7889\"\n\n[[store]]\nname = \"b\"\ndir = \"builders/b/store\"\nlisten = \"/ip4/127.0.0.1/tcp/44001\"\napi = \"127.0.0.1:7890\"\n",
        )
        .unwrap();
        let flag = Path::new("/elsewhere/api-token");
        // The environment is the process's: only assert what it cannot change.
        assert_eq!(
            token_file(home.path(), "http://127.0.0.1:7890", Some(flag)).unwrap(),
            Some(flag.to_path_buf())
        );
        if std::env::var_os(TOKEN_FILE_ENV).is_none() {
            assert_eq!(
                token_file(home.path(), "http://127.0.0.1:7890", None).unwrap(),
                Some(home.path().join("builders/b/store/api-token"))
            );
            assert_eq!(
                token_file(home.path(), "http://localhost:7889", None).unwrap(),
                Some(home.path().join("store/api-token"))
            );
            assert_eq!(
                token_file(home.path(), "http://127.0.0.1:9999", None).unwrap(),
                None
            );
        }
    }
}
