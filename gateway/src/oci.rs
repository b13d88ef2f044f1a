//! The OCI distribution spec v1.1 pull API under `/v2/`.
//!
//! The ledger names an image `oci` / repository / tag. Its outputs are the
//! manifest the tag points to, named `manifest`, and every manifest and blob
//! it references, each named by its digest (`sha256:<hex>`). Every byte is
//! served unchanged, so digests hold end to end.

use hyper::StatusCode;
use pyrsia_chain::{Digest, PackageId};
use serde_json::{json, Value};
use warp::reply::Response;

use crate::catalog::{Artifact, NameView};
use crate::derived::Kind;
use crate::http::{self, accepts};
use crate::import::{Fetched, ImportError};
use crate::{Gateway, Req};

const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
/// The tag's manifest on the ledger.
const ROOT: &str = "manifest";
const MAX_MANIFEST: u64 = 4 << 20;

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({"errors": [{"code": code, "message": message.into(), "detail": {}}]});
    http::typed(status, "application/json", body.to_string())
}

fn repository_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        })
}

fn reference_ok(r: &str) -> bool {
    parse_digest(r).is_some()
        || (!r.is_empty()
            && r.len() <= 128
            && r.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
            && r.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
}

fn parse_digest(r: &str) -> Option<Digest> {
    r.strip_prefix("sha256:")?.parse().ok()
}

fn blob_name(d: &Digest) -> String {
    format!("sha256:{d}")
}

pub async fn handle(gw: &Gateway, rest: &str, req: &Req) -> Response {
    let mut r = route(gw, rest, req).await;
    http::set_header(&mut r, "docker-distribution-api-version", "registry/2.0");
    r
}

async fn route(gw: &Gateway, rest: &str, req: &Req) -> Response {
    if rest.is_empty() || rest == "/" {
        return http::typed(StatusCode::OK, "application/json", "{}");
    }
    let rest = rest.trim_start_matches('/');
    let (name, kind, reference) = if let Some((n, r)) = rest.rsplit_once("/manifests/") {
        (n, "manifests", r)
    } else if let Some((n, r)) = rest.rsplit_once("/blobs/") {
        (n, "blobs", r)
    } else if let Some(n) = rest.strip_suffix("/tags/list") {
        (n, "tags", "")
    } else {
        return error(
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
            "not an OCI pull API path",
        );
    };
    if !repository_ok(name) {
        return error(
            StatusCode::NOT_FOUND,
            "NAME_INVALID",
            format!("invalid repository name {name:?}"),
        );
    }
    match kind {
        "tags" => tags(gw, name).await,
        "manifests" if reference_ok(reference) => manifest(gw, name, reference, req).await,
        "blobs" => match parse_digest(reference) {
            Some(d) => blob(gw, name, d, req).await,
            None => error(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                "blobs are addressed by sha256 digest",
            ),
        },
        _ => error(
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
            "invalid reference",
        ),
    }
}

async fn view(gw: &Gateway, name: &str) -> Result<NameView, Response> {
    gw.view("oci", name).await
}

async fn tags(gw: &Gateway, name: &str) -> Response {
    let v = match view(gw, name).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let tags: Vec<&str> = v
        .servable()
        .map(|(v, _)| v.version.as_str())
        .filter(|t| parse_digest(t).is_none())
        .collect();
    if tags.is_empty() {
        return error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            format!("{name}: no servable tag"),
        );
    }
    http::json(&json!({"name": name, "tags": tags}), "application/json")
}

/// A servable output with this digest among the repository's builds.
fn find(view: &NameView, d: &Digest) -> Option<Artifact> {
    view.servable()
        .find_map(|(_, b)| b.artifact(|o| o.sha256 == *d))
}

async fn read_small(gw: &Gateway, out: &Artifact) -> Result<Vec<u8>, Response> {
    use futures::StreamExt;
    if out.size > MAX_MANIFEST {
        return Err(error(
            StatusCode::NOT_FOUND,
            "MANIFEST_INVALID",
            "manifest too large",
        ));
    }
    let mut body = crate::store::stream(&gw.store, out)
        .await
        .map_err(|e| error(StatusCode::BAD_GATEWAY, "UNAVAILABLE", e.to_string()))?;
    let mut bytes = Vec::with_capacity(out.size as usize);
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|e| error(StatusCode::BAD_GATEWAY, "UNAVAILABLE", e.to_string()))?;
        bytes.extend_from_slice(&chunk);
    }
    if Digest::of(&bytes) != out.sha256 {
        return Err(error(
            StatusCode::BAD_GATEWAY,
            "UNAVAILABLE",
            "the store returned other bytes",
        ));
    }
    Ok(bytes)
}

/// A manifest's media type: its `mediaType`, else inferred from its shape.
fn media_type(bytes: &[u8]) -> String {
    let v: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    if let Some(t) = v.get("mediaType").and_then(Value::as_str) {
        return t.to_owned();
    }
    if v.get("manifests").is_some() {
        INDEX_TYPES[0].to_owned()
    } else {
        MANIFEST_TYPES[0].to_owned()
    }
}

async fn manifest(gw: &Gateway, name: &str, reference: &str, req: &Req) -> Response {
    let mut v = match view(gw, name).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let by_digest = parse_digest(reference);
    let present = match by_digest {
        Some(d) => v.versions.iter().any(|ver| {
            ver.builds
                .iter()
                .any(|b| b.outputs.iter().any(|o| o.sha256 == d))
        }),
        None => v.version(reference).is_some(),
    };
    if !present {
        match import(gw, name, reference).await {
            Ok(height) => gw.catalog.invalidate("oci", name, height),
            Err(r) => return r,
        }
        v = match view(gw, name).await {
            Ok(v) => v,
            Err(r) => return r,
        };
    }
    let out = match by_digest {
        Some(d) => find(&v, &d),
        None => v.version(reference).and_then(|ver| ver.artifact(ROOT)),
    };
    let Some(out) = out else {
        let refused = match by_digest {
            Some(_) => None,
            None => v
                .version(reference)
                .and_then(|ver| ver.served.as_ref().err().cloned()),
        };
        return match refused {
            Some(why) => error(
                StatusCode::FORBIDDEN,
                "DENIED",
                format!("{name}:{reference} is refused: {why}"),
            ),
            None => error(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                format!("{name}:{reference}: manifest unknown"),
            ),
        };
    };
    let bytes = match read_small(gw, &out).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mt = media_type(&bytes);
    if let Some(accept) = req.header("accept") {
        let listed: Vec<&str> = req
            .headers
            .get_all("accept")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let joined = listed.join(",");
        if !accept.is_empty() && !accepts(&joined, &mt) {
            return error(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                format!("{name}:{reference} is a {mt}, which the request does not accept"),
            );
        }
    }
    let size = bytes.len() as u64;
    let mut r = http::stream(bytes.into(), size, &mt);
    http::set_header(&mut r, "docker-content-digest", &blob_name(&out.sha256));
    r
}

async fn blob(gw: &Gateway, name: &str, d: Digest, req: &Req) -> Response {
    let v = match view(gw, name).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(out) = find(&v, &d) else {
        return error(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            format!("{name}: blob {} unknown", blob_name(&d)),
        );
    };
    let range = req.header("range").and_then(|r| parse_range(r, out.size));
    let body = match crate::store::stream(&gw.store, &out).await {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_GATEWAY, "UNAVAILABLE", e.to_string()),
    };
    let mut r = match range {
        Some(Ok((start, end))) => {
            let mut r = http::stream(
                slice(body, start, end - start + 1),
                end - start + 1,
                "application/octet-stream",
            );
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            http::set_header(
                &mut r,
                "content-range",
                &format!("bytes {start}-{end}/{}", out.size),
            );
            r
        }
        Some(Err(())) => {
            let mut r = error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "BLOB_UNKNOWN",
                "range not satisfiable",
            );
            http::set_header(&mut r, "content-range", &format!("bytes */{}", out.size));
            return r;
        }
        None => http::stream(body, out.size, "application/octet-stream"),
    };
    http::set_header(&mut r, "docker-content-digest", &blob_name(&d));
    http::set_header(&mut r, "accept-ranges", "bytes");
    r
}

/// One `bytes=a-b` / `bytes=a-` / `bytes=-n` range within `size`.
fn parse_range(header: &str, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None; // several ranges: the whole body, as the spec allows
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (size.saturating_sub(n), size.checked_sub(1)?)
        }
        (a, "") => (a.parse().ok()?, size.checked_sub(1)?),
        (a, b) => (
            a.parse().ok()?,
            b.parse::<u64>().ok()?.min(size.checked_sub(1)?),
        ),
    };
    Some(if start <= end && start < size {
        Ok((start, end))
    } else {
        Err(())
    })
}

/// `len` bytes of `body` from `start`.
fn slice(body: hyper::Body, start: u64, len: u64) -> hyper::Body {
    use futures::StreamExt;
    let stream = body
        .scan((0u64, start, len), |(pos, start, left), chunk| {
            let out = chunk.map(|c| {
                let begin = start.saturating_sub(*pos).min(c.len() as u64) as usize;
                let end = (begin as u64 + *left).min(c.len() as u64) as usize;
                *pos += c.len() as u64;
                let piece = c.slice(begin..end);
                *left -= piece.len() as u64;
                piece
            });
            let done = *left == 0 && out.as_ref().is_ok_and(|p| p.is_empty());
            futures::future::ready((!done).then_some(out))
        })
        .filter(|c| futures::future::ready(c.as_ref().map_or(true, |b| !b.is_empty())));
    hyper::Body::wrap_stream(stream)
}

/// Imports `name:reference` from the upstream: the manifest, every manifest
/// an index names, and every config and layer, each checked against its
/// digest.
async fn import(gw: &Gateway, name: &str, reference: &str) -> Result<u64, Response> {
    let package = PackageId {
        ecosystem: "oci".into(),
        name: name.to_owned(),
        version: reference.to_owned(),
    };
    gw.import("oci", &package, |importer, upstream| async move {
        let accept = [INDEX_TYPES, MANIFEST_TYPES].concat().join(", ");
        let get_manifest = |reference: String| {
            let url = format!("{upstream}/v2/{name}/manifests/{reference}");
            let accept = accept.clone();
            async move {
                let (bytes, headers) = importer
                    .get_small(&url, &accept, MAX_MANIFEST, &["docker-content-digest"])
                    .await?
                    .ok_or(ImportError::UpstreamMissing { url: url.clone() })?;
                let got = Digest::of(&bytes);
                let claimed = parse_digest(&reference).or_else(|| {
                    headers
                        .first()
                        .cloned()
                        .flatten()
                        .and_then(|h| parse_digest(&h))
                });
                match claimed {
                    Some(d) if d != got => Err(ImportError::Integrity {
                        what: "the manifest".into(),
                        url,
                        expected: blob_name(&d),
                        got: blob_name(&got),
                    }),
                    Some(_) => Ok((got, bytes)),
                    None => Err(ImportError::Refused(format!(
                        "{url}: the upstream names no digest for this manifest"
                    ))),
                }
            }
        };
        let (root_digest, root) = get_manifest(reference.to_owned()).await?;
        let mut manifests: Vec<(Digest, Vec<u8>)> = vec![(root_digest, root)];
        let index: Value = serde_json::from_slice(&manifests[0].1).unwrap_or(Value::Null);
        for child in index
            .get("manifests")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let d = child
                .get("digest")
                .and_then(Value::as_str)
                .and_then(parse_digest)
                .ok_or_else(|| {
                    ImportError::Refused("an index entry has no sha256 digest".into())
                })?;
            manifests.push(get_manifest(blob_name(&d)).await?);
        }
        let mut blobs: Vec<Digest> = Vec::new();
        for (_, bytes) in &manifests {
            let m: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
            let refs = m.get("config").into_iter().chain(
                m.get("layers")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten(),
            );
            for r in refs {
                let d = r
                    .get("digest")
                    .and_then(Value::as_str)
                    .and_then(parse_digest)
                    .ok_or_else(|| {
                        ImportError::Refused(
                            "a manifest names a blob without a sha256 digest".into(),
                        )
                    })?;
                if !blobs.contains(&d) {
                    blobs.push(d);
                }
            }
        }
        let mut files: Vec<Fetched> = Vec::new();
        for (i, (d, bytes)) in manifests.iter().enumerate() {
            let name = if i == 0 {
                ROOT.to_owned()
            } else {
                blob_name(d)
            };
            if !files.iter().any(|f| f.name == name) {
                files.push(Fetched {
                    name,
                    file: importer.keep(bytes)?,
                    kind: Kind::Plain,
                });
            }
        }
        for d in &blobs {
            let url = format!("{upstream}/v2/{name}/blobs/{}", blob_name(d));
            let file = importer.download(&url).await?;
            if file.sha256 != d.0 {
                return Err(ImportError::Integrity {
                    what: "a blob".into(),
                    url,
                    expected: blob_name(d),
                    got: blob_name(&Digest(file.sha256)),
                });
            }
            if !files.iter().any(|f| f.name == blob_name(d)) {
                files.push(Fetched {
                    name: blob_name(d),
                    file,
                    kind: Kind::Plain,
                });
            }
        }
        Ok(files)
    })
    .await
    .map_err(|(status, message)| {
        let code = if status == StatusCode::NOT_FOUND {
            "MANIFEST_UNKNOWN"
        } else {
            "UNAVAILABLE"
        };
        error(status, code, message)
    })
}

#[cfg(test)]
#[allow(clippy::expect_used)] // a failed expectation fails the test
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=95-200", 100), Some(Ok((95, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }

    #[test]
    fn names_and_references() {
        assert!(repository_ok("library/alpine"));
        assert!(
            !repository_ok("Library/alpine") && !repository_ok("a//b") && !repository_ok("../x")
        );
        assert!(reference_ok("latest") && reference_ok(&format!("sha256:{}", "a".repeat(64))));
        assert!(!reference_ok("-x") && !reference_ok("a/b"));
    }

    #[tokio::test]
    async fn a_slice_of_a_chunked_body() {
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
            vec![Ok("hello ".into()), Ok("wide ".into()), Ok("world".into())];
        let body = hyper::Body::wrap_stream(futures::stream::iter(chunks));
        let got = hyper::body::to_bytes(slice(body, 3, 9))
            .await
            .expect("in memory");
        assert_eq!(&got[..], b"lo wide w");
    }
}

#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// [`route`]'s parsing of the path after `/v2`, and a blob's Range.
    pub fn path(rest: &str, range: &str) {
        if rest.is_empty() || rest == "/" {
            return;
        }
        let rest = rest.trim_start_matches('/');
        let (name, reference) = if let Some((n, r)) = rest.rsplit_once("/manifests/") {
            (n, r)
        } else if let Some((n, r)) = rest.rsplit_once("/blobs/") {
            (n, r)
        } else if let Some(n) = rest.strip_suffix("/tags/list") {
            (n, "")
        } else {
            return;
        };
        if repository_ok(name) {
            let _ = reference_ok(reference);
            if let Some(d) = parse_digest(reference) {
                let _ = blob_name(&d);
            }
        }
        for size in [0, 1, 1000, u64::MAX] {
            let _ = parse_range(range, size);
        }
    }

    pub fn media_type(bytes: &[u8]) -> String {
        super::media_type(bytes)
    }
}
