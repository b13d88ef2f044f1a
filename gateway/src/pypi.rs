//! PyPI's simple API: PEP 503 HTML and PEP 691 JSON, chosen by `Accept`,
//! with PEP 658/714 core metadata for wheels.
//!
//! Files are served at `/pypi/files/<project>/<filename>`. A file the ledger
//! holds is listed with the SHA-256 the ledger attests; on a node that
//! imports, files of versions the ledger lacks are listed from the upstream
//! and imported, a whole version at once, when one of them is asked for.

use std::collections::BTreeMap;

use hyper::StatusCode;
use pyrsia_chain::PackageId;
use serde_json::{json, Value};
use warp::reply::Response;

use crate::catalog::rank;
use crate::derived::Kind;
use crate::http::{self, esc, json_error};
use crate::import::{self, Fetched, ImportError};
use crate::{Gateway, Req};

/// The ledger's name for Python packages (builds and imports alike).
const ECOSYSTEM: &str = "python";
const JSON_V1: &str = "application/vnd.pypi.simple.v1+json";
const HTML_V1: &str = "application/vnd.pypi.simple.v1+html";

/// At most this many files of one version are imported together.
const MAX_FILES_PER_VERSION: usize = 32;

/// PEP 503 normalisation.
pub fn normalise(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// The version in a distribution file name (wheel or sdist).
fn file_version(filename: &str) -> Option<String> {
    if let Some(stem) = filename.strip_suffix(".whl") {
        return stem.split('-').nth(1).map(str::to_owned);
    }
    let stem = [".tar.gz", ".zip", ".tar.bz2"]
        .iter()
        .find_map(|ext| filename.strip_suffix(ext))?;
    stem.rsplit_once('-').map(|(_, v)| v.to_owned())
}

fn plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+!".contains(&b))
}

pub async fn handle(gw: &Gateway, rest: &str, req: &Req) -> Response {
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        ["simple", ""] | ["simple"] => http::typed(
            StatusCode::OK,
            "text/html",
            "<!DOCTYPE html><html><body></body></html>",
        ),
        ["simple", project, ""] | ["simple", project] => {
            let Some(project) = http::percent_decode(project) else {
                return json_error(StatusCode::BAD_REQUEST, "bad project name");
            };
            let normal = normalise(&project);
            if normal.is_empty() || !plain_file_name(&normal) {
                return json_error(StatusCode::BAD_REQUEST, "bad project name");
            }
            if normal != project || segments.len() == 2 {
                let mut r = http::text(StatusCode::MOVED_PERMANENTLY, "");
                http::set_header(&mut r, "location", &format!("/pypi/simple/{normal}/"));
                return r;
            }
            project_page(gw, &normal, req).await
        }
        ["files", project, filename] => {
            let (Some(project), Some(filename)) = (
                http::percent_decode(project),
                http::percent_decode(filename),
            ) else {
                return json_error(StatusCode::BAD_REQUEST, "bad path");
            };
            if !plain_file_name(&filename) || normalise(&project) != project {
                return json_error(StatusCode::BAD_REQUEST, "bad file name");
            }
            file(gw, &project, &filename).await
        }
        _ => json_error(StatusCode::NOT_FOUND, "not a PyPI simple API path"),
    }
}

/// One file as the simple API lists it.
struct Listed {
    filename: String,
    sha256: String,
    core_metadata: bool,
    requires_python: Option<String>,
}

async fn project_page(gw: &Gateway, project: &str, req: &Req) -> Response {
    let view = match gw.view(ECOSYSTEM, project).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut files: BTreeMap<String, Listed> = BTreeMap::new();
    let mut versions: Vec<String> = Vec::new();
    for (v, build) in view.servable() {
        versions.push(v.version.clone());
        for o in &build.outputs {
            if file_version(&o.name).is_none() {
                continue;
            }
            files.insert(
                o.name.clone(),
                Listed {
                    filename: o.name.clone(),
                    sha256: o.sha256.to_string(),
                    core_metadata: o.name.ends_with(".whl"),
                    requires_python: None,
                },
            );
        }
    }
    if let Some(up) = gw.importer.as_ref().and_then(|i| i.upstream("pypi")) {
        match upstream_listing(gw, up, project).await {
            Ok(Some(doc)) => {
                let known: Vec<&str> = view.versions.iter().map(|v| v.version.as_str()).collect();
                for f in doc
                    .get("files")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let (Some(name), Some(sha)) = (
                        f.get("filename").and_then(Value::as_str),
                        f.pointer("/hashes/sha256").and_then(Value::as_str),
                    ) else {
                        continue;
                    };
                    let Some(version) = file_version(name) else {
                        continue;
                    };
                    // A version on the ledger is listed from the ledger only.
                    if known.contains(&version.as_str()) || !plain_file_name(name) {
                        continue;
                    }
                    if f.get("yanked").is_some_and(|y| y != &json!(false)) {
                        continue;
                    }
                    if !versions.contains(&version) {
                        versions.push(version);
                    }
                    files.insert(
                        name.to_owned(),
                        Listed {
                            filename: name.to_owned(),
                            sha256: sha.to_owned(),
                            core_metadata: false,
                            requires_python: f
                                .get("requires-python")
                                .and_then(Value::as_str)
                                .map(str::to_owned),
                        },
                    );
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(project, error = %e, "upstream listing unavailable"),
        }
    }
    if files.is_empty() {
        if view.versions.is_empty() {
            return json_error(StatusCode::NOT_FOUND, format!("{project}: not found"));
        }
        // Nothing may be served: list what the ledger has, so that the
        // client asks for a file and prints the refusal, which names the
        // level (pip says nothing about a refused index page).
        for v in &view.versions {
            let best = v
                .builds
                .iter()
                .filter(|b| !b.outputs.is_empty())
                .max_by_key(|b| rank(b.level));
            for o in best.into_iter().flat_map(|b| b.outputs.iter()) {
                if file_version(&o.name).is_some() {
                    files.insert(
                        o.name.clone(),
                        Listed {
                            filename: o.name.clone(),
                            sha256: o.sha256.to_string(),
                            core_metadata: false,
                            requires_python: None,
                        },
                    );
                }
            }
            versions.push(v.version.clone());
        }
        if files.is_empty() {
            return json_error(StatusCode::FORBIDDEN, view.refusal(gw.catalog.min()));
        }
    }
    let mut r = if prefers_json(req.header("accept").unwrap_or("text/html")) {
        let files: Vec<Value> = files
            .values()
            .map(|f| {
                let mut v = json!({
                    "filename": f.filename,
                    "url": format!("/pypi/files/{project}/{}", f.filename),
                    "hashes": {"sha256": f.sha256},
                });
                if f.core_metadata {
                    v["core-metadata"] = json!(true);
                }
                if let Some(rp) = &f.requires_python {
                    v["requires-python"] = json!(rp);
                }
                v
            })
            .collect();
        http::json(
            &json!({
                "meta": {"api-version": "1.1"},
                "name": project,
                "versions": versions,
                "files": files,
            }),
            JSON_V1,
        )
    } else {
        let mut html = format!(
            "<!DOCTYPE html>\n<html><head><meta name=\"pypi:repository-version\" content=\"1.1\"><title>Links for {p}</title></head><body><h1>Links for {p}</h1>\n",
            p = esc(project)
        );
        for f in files.values() {
            html.push_str(&format!(
                "<a href=\"/pypi/files/{}/{}#sha256={}\"{}{}>{}</a><br>\n",
                esc(project),
                esc(&f.filename),
                esc(&f.sha256),
                if f.core_metadata {
                    " data-core-metadata=\"true\" data-dist-info-metadata=\"true\""
                } else {
                    ""
                },
                f.requires_python
                    .as_deref()
                    .map(|rp| format!(" data-requires-python=\"{}\"", esc(rp)))
                    .unwrap_or_default(),
                esc(&f.filename)
            ));
        }
        html.push_str("</body></html>\n");
        http::typed(StatusCode::OK, HTML_V1, html)
    };
    http::set_header(&mut r, "vary", "Accept");
    r
}

async fn upstream_listing(
    gw: &Gateway,
    upstream: &str,
    project: &str,
) -> Result<Option<Value>, ImportError> {
    let Some(importer) = &gw.importer else {
        return Ok(None);
    };
    let url = format!("{upstream}/simple/{project}/");
    importer
        .get_json(&url, JSON_V1, "the PEP 691 listing")
        .await
}

async fn file(gw: &Gateway, project: &str, filename: &str) -> Response {
    let (filename, metadata) = match filename.strip_suffix(".metadata") {
        Some(f) => (f, true),
        None => (filename, false),
    };
    let Some(version) = file_version(filename) else {
        return json_error(
            StatusCode::NOT_FOUND,
            format!("{filename}: not a distribution file"),
        );
    };
    let mut view = match gw.view(ECOSYSTEM, project).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if view.version(&version).is_none() && !metadata {
        match import(gw, project, &version).await {
            Ok(height) => gw.catalog.invalidate(ECOSYSTEM, project, height),
            Err(r) => return r,
        }
        view = match gw.view(ECOSYSTEM, project).await {
            Ok(v) => v,
            Err(r) => return r,
        };
    }
    let Some(v) = view.version(&version) else {
        return json_error(StatusCode::NOT_FOUND, format!("{filename}: not found"));
    };
    let Some(build) = v.build() else {
        let why = v.served.as_ref().err().cloned().unwrap_or_default();
        return json_error(
            StatusCode::FORBIDDEN,
            format!("{project} {version} is refused: {why}"),
        );
    };
    let Some(out) = build.artifact(|o| o.name == filename) else {
        return json_error(StatusCode::NOT_FOUND, format!("{filename}: not found"));
    };
    if metadata {
        if !filename.ends_with(".whl") {
            return json_error(
                StatusCode::NOT_FOUND,
                "core metadata is served for wheels only",
            );
        }
        if let Err(e) = gw.derived.get(&out, Kind::Wheel).await {
            return json_error(StatusCode::BAD_GATEWAY, e.to_string());
        }
        return match gw.derived.core_metadata(&out.sha256) {
            Some(m) => http::typed(StatusCode::OK, "text/plain; charset=utf-8", m),
            None => json_error(StatusCode::NOT_FOUND, format!("{filename} has no METADATA")),
        };
    }
    match crate::store::stream(&gw.store, &out).await {
        Ok(body) => http::stream(body, out.size, "application/octet-stream"),
        Err(e) => json_error(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

/// Whether `Accept` ranks PEP 691 JSON at least as high as any HTML form.
fn prefers_json(accept: &str) -> bool {
    let q = |wanted: &[&str]| {
        accept
            .split(',')
            .filter_map(|part| {
                let mut it = part.split(';');
                let t = it.next()?.trim();
                wanted.contains(&t).then(|| {
                    it.find_map(|p| p.trim().strip_prefix("q=")?.parse::<f32>().ok())
                        .unwrap_or(1.0)
                })
            })
            .fold(None, |a: Option<f32>, b| Some(a.map_or(b, |a| a.max(b))))
    };
    match (q(&[JSON_V1]), q(&[HTML_V1, "text/html"])) {
        (Some(j), Some(h)) => j >= h,
        (Some(_), None) => true,
        _ => false,
    }
}

/// Imports every file of `project` `version` the upstream lists (at most
/// [`MAX_FILES_PER_VERSION`]), each checked against the upstream's SHA-256.
async fn import(gw: &Gateway, project: &str, version: &str) -> Result<u64, Response> {
    let package = PackageId {
        ecosystem: ECOSYSTEM.into(),
        name: project.to_owned(),
        version: version.to_owned(),
    };
    gw.import("pypi", &package, |importer, upstream| async move {
        let listing_url = format!("{upstream}/simple/{project}/");
        let missing = || ImportError::UpstreamMissing {
            url: format!("{listing_url} (version {version})"),
        };
        let doc = upstream_listing(gw, upstream, project)
            .await?
            .ok_or_else(missing)?;
        let mut wanted: Vec<(String, String, String)> = Vec::new();
        for f in doc.get("files").and_then(Value::as_array).into_iter().flatten() {
            let (Some(name), Some(url), Some(sha)) = (
                f.get("filename").and_then(Value::as_str),
                f.get("url").and_then(Value::as_str),
                f.pointer("/hashes/sha256").and_then(Value::as_str),
            ) else {
                continue;
            };
            if file_version(name).as_deref() == Some(version) && plain_file_name(name) {
                wanted.push((name.to_owned(), resolve(&listing_url, url), sha.to_owned()));
            }
        }
        if wanted.is_empty() {
            return Err(missing());
        }
        if wanted.len() > MAX_FILES_PER_VERSION {
            return Err(ImportError::Refused(format!(
                "{project} {version} has {} files upstream, over the {MAX_FILES_PER_VERSION} one import takes",
                wanted.len()
            )));
        }
        let mut files = Vec::with_capacity(wanted.len());
        for (name, url, sha) in wanted {
            let file = importer.download(&url).await?;
            import::check_hex(&sha, &file.sha256, &name, &url)?;
            let kind = if name.ends_with(".whl") {
                Kind::Wheel
            } else {
                Kind::Plain
            };
            files.push(Fetched { name, file, kind });
        }
        Ok(files)
    })
    .await
    .map_err(|(status, message)| json_error(status, message))
}

/// `href` resolved against the page it is on (absolute, host-relative or
/// relative; the fragment dropped).
fn resolve(page: &str, href: &str) -> String {
    let href = href.split('#').next().unwrap_or_default();
    if href.contains("://") {
        return href.to_owned();
    }
    let origin_end = page
        .find("://")
        .and_then(|i| page[i + 3..].find('/').map(|j| i + 3 + j))
        .unwrap_or(page.len());
    if href.starts_with('/') {
        return format!("{}{href}", &page[..origin_end]);
    }
    let dir = page.rsplit_once('/').map_or(page, |(d, _)| d);
    // A page without a path (`http://host`, or a scheme-less upstream such
    // as `host:8080`) has its last `/` inside the origin, if at all: its
    // directory is the root.
    let mut parts: Vec<&str> = dir
        .get(origin_end..)
        .unwrap_or_default()
        .split('/')
        .collect();
    for seg in href.split('/') {
        match seg {
            ".." => {
                if parts.len() > 1 {
                    parts.pop();
                }
            }
            "." => {}
            s => parts.push(s),
        }
    }
    format!("{}{}", &page[..origin_end], parts.join("/"))
}

#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// [`handle`]'s parsing of the path after `/pypi/`, and the Accept
    /// negotiation of a project page.
    pub fn path(rest: &str, accept: &str) {
        let _ = prefers_json(accept);
        let segments: Vec<&str> = rest.split('/').collect();
        match segments.as_slice() {
            ["simple", project, ""] | ["simple", project] => {
                if let Some(project) = http::percent_decode(project) {
                    let normal = normalise(&project);
                    let _ = normal.is_empty() || !plain_file_name(&normal);
                }
            }
            ["files", project, filename] => {
                if let (Some(project), Some(filename)) = (
                    http::percent_decode(project),
                    http::percent_decode(filename),
                ) {
                    if plain_file_name(&filename) && normalise(&project) == project {
                        let _ = file_version(&filename);
                    }
                }
            }
            _ => {}
        }
    }

    pub fn resolve(page: &str, href: &str) -> String {
        super::resolve(page, href)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalise_as_pep_503_says() {
        assert_eq!(normalise("Friendly-Bard"), "friendly-bard");
        assert_eq!(normalise("FRIENDLY._-BARD"), "friendly-bard");
        assert_eq!(normalise("zope.interface"), "zope-interface");
    }

    #[test]
    fn versions_come_from_file_names() {
        assert_eq!(
            file_version("six-1.16.0-py2.py3-none-any.whl").as_deref(),
            Some("1.16.0")
        );
        assert_eq!(file_version("six-1.16.0.tar.gz").as_deref(), Some("1.16.0"));
        assert_eq!(
            file_version("zope.interface-6.0.tar.gz").as_deref(),
            Some("6.0")
        );
        assert_eq!(file_version("README"), None);
    }

    #[test]
    fn json_is_chosen_by_accept() {
        let pip = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01";
        assert!(prefers_json(pip));
        assert!(!prefers_json("text/html"));
        assert!(!prefers_json(
            "application/vnd.pypi.simple.v1+json; q=0.1, text/html"
        ));
    }

    #[test]
    fn links_resolve_against_their_page() {
        let page = "http://127.0.0.1:9/simple/six/";
        assert_eq!(
            resolve(page, "../../files/a.whl#sha256=00"),
            "http://127.0.0.1:9/files/a.whl"
        );
        assert_eq!(
            resolve(page, "/files/a.whl"),
            "http://127.0.0.1:9/files/a.whl"
        );
        assert_eq!(resolve(page, "http://x/y"), "http://x/y");
    }

    /// fuzz/artifacts/http_paths/crash-fd5c76eb036fea57946cc0979966e45de4159b74:
    /// a page whose last `/` comes before the end of its origin sliced out
    /// of bounds.
    #[test]
    fn fuzz_crash_fd5c76eb_resolve_against_a_page_without_a_path() {
        let input = "GET\n/v2/a/b/blobs/sha256:2d71fbac32f5c8530fb1903cGE6b04401627ca9fbac32f5c8530fb1903cc4dT\n/-/package/npm/%40scope%2Fname%b022587c4db022\nbytes=-10\n";
        let f: Vec<&str> = input
            .splitn(7, '\n')
            .chain(std::iter::repeat(""))
            .take(7)
            .collect();
        let (path, query) = f[1].split_once('?').unwrap_or((f[1], ""));
        crate::fuzzing::request(path, query, f[2], f[4], "");
        crate::fuzzing::documents(f[2], f[6]);
        assert_eq!(
            resolve("/-/package/npm/%40scope", ""),
            "/-/package/npm/%40scope/"
        );
        assert_eq!(resolve("http://host", "a.whl"), "http://host/a.whl");
        assert_eq!(
            resolve("localhost:8080/simple/six/", "../../files/a.whl"),
            "localhost:8080/simple/six//files/a.whl"
        );
    }
}
