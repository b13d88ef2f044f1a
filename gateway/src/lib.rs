//! The gateway: registry front-ends that unchanged package managers use as
//! their registry (npm under `/npm/`, PyPI's simple API under
//! `/pypi/simple/`, a Maven repository under `/maven/`, the OCI distribution
//! pull API under `/v2/`), and the explorer page at `/`.
//!
//! It serves only what the light client verified at or above the node's
//! minimum trust level, streamed from the local store (which fetches
//! stripes from peers and checks them against the ledger's digests). With
//! upstream registries configured and a certified trusted node's key, it
//! imports what the ledger lacks (`TrustedImport`). What it verified once it
//! keeps on disk, so installs keep working when the ledger, the peers and
//! the upstreams are gone. `docs/gateway.md` has the rules and who could
//! break them.

pub mod catalog;
pub mod derived;
mod explorer;
pub mod http;
pub mod import;
mod maven;
mod npm;
mod oci;
mod pypi;
pub mod store;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::{HeaderMap, Method, StatusCode};
use pyrsia_chain::{Keypair, PackageId, TrustLevel};
use pyrsia_ledger_client::rpc::LedgerClient;
use pyrsia_ledger_client::verified::VerifiedLedger;
use warp::reply::Response;
use warp::Filter;

use crate::catalog::{Catalog, CatalogError};
use crate::derived::DerivedCache;
use crate::import::Importer;
use crate::store::StoreClient;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7888";

/// What `pyrsia gateway` is configured with.
#[derive(Debug)]
pub struct Config {
    /// Nothing below this level is served.
    pub min_trust: TrustLevel,
    pub store_api: String,
    /// The store's API token file (imports store files).
    pub store_token_file: Option<PathBuf>,
    /// Verified views, derived digests and import scratch space.
    pub cache_dir: PathBuf,
    /// How long a verified view of a name is served before it is read again.
    pub metadata_ttl: Duration,
    /// Registries to import from, by front-end (`npm`, `pypi`, `pypi-files`,
    /// `maven`, `oci`); imports need `import_key` too.
    pub upstreams: BTreeMap<String, String>,
    /// A certified trusted node's key, which signs `TrustedImport`.
    pub import_key: Option<Keypair>,
    /// The largest file an import downloads.
    pub max_import_bytes: u64,
    /// Host names besides loopback ones that requests may name (Host header).
    pub allowed_hosts: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot listen on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
}

/// The gateway's state, shared by every request.
#[derive(Debug)]
pub struct Gateway {
    catalog: Catalog,
    store: StoreClient,
    derived: DerivedCache,
    importer: Option<Importer>,
    rpc: LedgerClient,
    allowed_hosts: Vec<String>,
    cache_dir: PathBuf,
}

impl Gateway {
    pub fn new(config: Config, ledger: VerifiedLedger) -> Gateway {
        let store = crate::store::client(&config.store_api, config.store_token_file.clone());
        let rpc = ledger.ledger().clone();
        let importer = match (config.import_key, config.upstreams.is_empty()) {
            (Some(key), false) => Some(Importer::new(
                config.upstreams,
                key,
                rpc.clone(),
                store.clone(),
                config.cache_dir.join("import"),
                config.max_import_bytes,
            )),
            _ => None,
        };
        Gateway {
            catalog: Catalog::new(
                ledger,
                config.cache_dir.join("views"),
                config.metadata_ttl,
                config.min_trust,
            ),
            derived: DerivedCache::new(config.cache_dir.join("derived"), store.clone()),
            store,
            importer,
            rpc,
            allowed_hosts: config.allowed_hosts,
            cache_dir: config.cache_dir,
        }
    }

    /// Binds `addr`; returns the bound address and the server future.
    pub fn bind(
        self: Arc<Self>,
        addr: SocketAddr,
    ) -> Result<(SocketAddr, impl std::future::Future<Output = ()>), GatewayError> {
        let gw = warp::any().map(move || self.clone());
        let routes = warp::method()
            .and(warp::path::full())
            .and(warp::header::headers_cloned())
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .and(gw)
            .and_then(
                |method: Method,
                 path: warp::path::FullPath,
                 headers: HeaderMap,
                 query: String,
                 gw: Arc<Gateway>| async move {
                    let req = Req {
                        method,
                        path: path.as_str().to_owned(),
                        query,
                        headers,
                    };
                    Ok::<_, Infallible>(gw.handle(req).await)
                },
            );
        warp::serve(routes)
            .try_bind_ephemeral(addr)
            .map_err(|e| GatewayError::Bind {
                addr,
                reason: e.to_string(),
            })
    }

    async fn handle(&self, req: Req) -> Response {
        let started = std::time::Instant::now();
        let response = self.route(&req).await;
        tracing::debug!(
            method = %req.method,
            path = %req.path,
            status = response.status().as_u16(),
            ms = started.elapsed().as_millis() as u64,
            "request"
        );
        response
    }

    async fn route(&self, req: &Req) -> Response {
        let Some(host) = req.host().filter(|h| self.host_allowed(h)) else {
            return http::json_error(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "Host {:?} is not a name of this gateway (loopback names only, or its configured allowed hosts)",
                    req.host().unwrap_or_default()
                ),
            );
        };
        if req.method != Method::GET && req.method != Method::HEAD {
            return http::json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "the gateway is read-only: GET and HEAD only",
            );
        }
        let base = format!("http://{host}");
        let path = req.path.as_str();
        let response = if let Some(rest) = path.strip_prefix("/npm/") {
            npm::handle(self, rest, req, &base).await
        } else if let Some(rest) = path.strip_prefix("/pypi/") {
            pypi::handle(self, rest, req).await
        } else if let Some(rest) = path.strip_prefix("/maven/") {
            maven::handle(self, rest, req).await
        } else if path == "/v2" || path.starts_with("/v2/") {
            oci::handle(self, &path[3..], req).await
        } else {
            explorer::handle(self, path, req).await
        };
        if req.method == Method::HEAD {
            http::head_only(response)
        } else {
            response
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        host_allowed(host, &self.allowed_hosts)
    }

    /// Imports `package` from upstream `upstream` (`npm`, `pypi`, …), once
    /// per package: `fetch` downloads and checks its files, this stores and
    /// records them and keeps what clients will ask about them. Returns the
    /// height of the commit, or the status and message to answer with (404
    /// when this node does not import, or the upstream has no such thing).
    async fn import<'a, F, Fut>(
        &'a self,
        upstream: &str,
        package: &PackageId,
        fetch: F,
    ) -> Result<u64, (StatusCode, String)>
    where
        F: FnOnce(&'a Importer, &'a str) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<import::Fetched>, import::ImportError>>,
    {
        let not_found = || (StatusCode::NOT_FOUND, format!("{package}: not found"));
        let importer = self.importer.as_ref().ok_or_else(not_found)?;
        let url = importer.upstream(upstream).ok_or_else(not_found)?;
        let _running = match importer.begin(package).await {
            import::Begin::Done(height) => return Ok(height),
            import::Begin::Go(guard) => guard,
        };
        let result = async {
            let files = fetch(importer, url).await?;
            let named: Vec<(String, &std::path::Path)> = files
                .iter()
                .map(|f| (f.name.clone(), f.file.path.as_path()))
                .collect();
            let height = importer.record(package, url, &named).await?;
            for f in &files {
                let sha = pyrsia_chain::Digest(f.file.sha256);
                if let Err(e) = self.derived.record(&f.file.path, sha, f.kind).await {
                    tracing::warn!(error = %e, "cannot keep derived digests of an import");
                }
            }
            Ok(height)
        }
        .await;
        result.map_err(|e: import::ImportError| {
            tracing::warn!(%package, error = %e, "import failed");
            let status = match e {
                import::ImportError::UpstreamMissing { .. } => StatusCode::NOT_FOUND,
                _ => StatusCode::BAD_GATEWAY,
            };
            (status, format!("importing {package}: {e}"))
        })
    }

    /// A name's verified view, or the response that says why there is none.
    async fn view(&self, ecosystem: &str, name: &str) -> Result<catalog::NameView, Response> {
        self.catalog.name(ecosystem, name).await.map_err(|e| {
            let status = match e {
                CatalogError::Offline { .. } => StatusCode::SERVICE_UNAVAILABLE,
                CatalogError::Ledger { .. } => StatusCode::BAD_GATEWAY,
            };
            tracing::warn!(error = %e, "no verified view");
            http::json_error(status, e.to_string())
        })
    }
}

/// Whether a `Host` header names this gateway: a loopback name or address
/// (port optional, IPv6 in brackets) or one of `allowed` (DNS rebinding
/// protection).
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(n, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                n
            } else {
                host
            }
        }),
    };
    let loopback = name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    loopback || allowed.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// One request, as the front-ends see it (the path still percent-encoded).
#[derive(Debug)]
pub struct Req {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn host(&self) -> Option<&str> {
        self.header("host")
    }

    /// A query parameter, decoded.
    pub fn param(&self, key: &str) -> Option<String> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == key).then(|| http::percent_decode(&v.replace('+', " ")).unwrap_or_default())
        })
    }
}

/// Entry points for the fuzz targets in `fuzz/` (not an API: no stability,
/// hidden from the docs). Each runs the parsers a front-end applies to a
/// request's path, query and headers, in the order its handler does, up to
/// the point where the handler asks the ledger or the store.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// The Host check, the query parameters and every front-end's path
    /// parsing for one request.
    pub fn request(path: &str, query: &str, host: &str, accept: &str, range: &str) {
        let _ = host_allowed(host, &["pyrsia.example".to_owned()]);
        let mut headers = HeaderMap::new();
        for (name, value) in [("host", host), ("accept", accept), ("range", range)] {
            if let Ok(v) = hyper::header::HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        }
        let req = Req {
            method: Method::GET,
            path: path.to_owned(),
            query: query.to_owned(),
            headers,
        };
        let _ = req.host();
        explorer::fuzzing::search(&req.param("q").unwrap_or_default());
        if let Some(rest) = path.strip_prefix("/npm/") {
            npm::fuzzing::path(rest, accept);
        } else if let Some(rest) = path.strip_prefix("/pypi/") {
            pypi::fuzzing::path(rest, accept);
        } else if let Some(rest) = path.strip_prefix("/maven/") {
            maven::fuzzing::path(rest);
        } else if path == "/v2" || path.starts_with("/v2/") {
            oci::fuzzing::path(&path[3..], range);
        } else {
            explorer::fuzzing::path(path);
        }
    }

    /// What the front-ends parse from upstream or stored documents: a
    /// PyPI link against its page, a POM's packaging and Maven metadata,
    /// an OCI manifest's media type, an npm packument's abbreviation.
    pub fn documents(page: &str, text: &str) {
        let _ = pypi::fuzzing::resolve(page, text);
        let _ = maven::fuzzing::document(text);
        let _ = oci::fuzzing::media_type(text.as_bytes());
        if let Ok(v) = serde_json::from_str(text) {
            let _ = npm::fuzzing::abbreviate(v);
        }
    }
}
