//! The npm registry API: packuments (full and abbreviated) and tarballs.
//!
//! A version the ledger holds is described from its verified tarball alone
//! (its `package.json`, and digests of its bytes): no metadata from anyone
//! else reaches a client for it. On a node that imports, versions the
//! ledger does not have yet are listed from the upstream packument, and
//! imported when their tarball is asked for.

use std::collections::BTreeMap;

use hyper::StatusCode;
use pyrsia_chain::PackageId;
use serde_json::{json, Map, Value};
use warp::reply::Response;

use crate::derived::Kind;
use crate::http::{self, json_error};
use crate::import::{self, Fetched, ImportError};
use crate::{Gateway, Req};

const ABBREVIATED: &str = "application/vnd.npm.install-v1+json";

/// Fields of a version kept in abbreviated metadata.
const ABBREVIATED_FIELDS: &[&str] = &[
    "name",
    "version",
    "dependencies",
    "optionalDependencies",
    "devDependencies",
    "bundleDependencies",
    "bundledDependencies",
    "peerDependencies",
    "peerDependenciesMeta",
    "acceptDependencies",
    "bin",
    "directories",
    "dist",
    "engines",
    "cpu",
    "os",
    "libc",
    "deprecated",
    "funding",
    "license",
    "_hasShrinkwrap",
    "hasInstallScript",
];

pub async fn handle(gw: &Gateway, rest: &str, req: &Req, base: &str) -> Response {
    if rest.starts_with("-/") {
        // The registry's own endpoints (audit, search, ping): none here.
        return json_error(StatusCode::NOT_FOUND, "not served by this gateway");
    }
    if let Some((name, file)) = rest.split_once("/-/") {
        let Some(name) = package_name(name) else {
            return json_error(StatusCode::BAD_REQUEST, "bad package name");
        };
        return tarball(gw, &name, file).await;
    }
    let Some(name) = package_name(rest) else {
        return json_error(StatusCode::BAD_REQUEST, "bad package name");
    };
    let abbreviated = req
        .header("accept")
        .is_some_and(|a| a.contains(ABBREVIATED));
    packument(gw, &name, abbreviated, base).await
}

/// A package name from its path: `name`, `@scope%2fname` (one segment, as
/// npm sends it) or `@scope/name`.
fn package_name(raw: &str) -> Option<String> {
    let name = http::percent_decode(raw)?;
    let valid = |part: &str| {
        !part.is_empty()
            && !part.starts_with('.')
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    };
    let ok = match name.strip_prefix('@') {
        Some(scoped) => scoped
            .split_once('/')
            .is_some_and(|(s, n)| valid(s) && valid(n)),
        None => valid(&name),
    };
    (ok && name.len() <= 214).then_some(name)
}

/// The tarball file name npm expects for a version.
fn tarball_file(name: &str, version: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    format!("{base}-{version}.tgz")
}

fn tarball_url(base: &str, name: &str, version: &str) -> String {
    format!("{base}/npm/{name}/-/{}", tarball_file(name, version))
}

async fn packument(gw: &Gateway, name: &str, abbreviated: bool, base: &str) -> Response {
    let view = match gw.view("npm", name).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut versions: BTreeMap<String, Value> = BTreeMap::new();
    for (v, build) in view.servable() {
        let Some(tgz) = build.artifact(|o| o.name.ends_with(".tgz")) else {
            continue;
        };
        let derived = match gw.derived.get(&tgz, Kind::NpmTarball).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(name, version = %v.version, error = %e, "tarball unavailable; version left out");
                continue;
            }
        };
        let mut manifest = match derived.package_json.clone() {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        manifest.insert("name".into(), json!(name));
        manifest.insert("version".into(), json!(v.version));
        manifest.insert(
            "dist".into(),
            json!({
                "tarball": tarball_url(base, name, &v.version),
                "integrity": derived.integrity(),
                "shasum": derived.sha1,
            }),
        );
        versions.insert(v.version.clone(), Value::Object(manifest));
    }
    let mut tags: Map<String, Value> = Map::new();
    if let Some(importer) = &gw.importer {
        if let Some(upstream) = importer.upstream("npm") {
            match upstream_packument(gw, upstream, name).await {
                Ok(Some(doc)) => {
                    let known: Vec<&str> =
                        view.versions.iter().map(|v| v.version.as_str()).collect();
                    if let Some(Value::Object(up)) = doc.get("versions") {
                        for (version, entry) in up {
                            // A version on the ledger is described by its
                            // verified bytes only: versions are immutable.
                            if known.contains(&version.as_str()) {
                                continue;
                            }
                            let mut entry = entry.clone();
                            if let Some(dist) = entry.get_mut("dist").and_then(Value::as_object_mut)
                            {
                                dist.insert(
                                    "tarball".into(),
                                    json!(tarball_url(base, name, version)),
                                );
                            }
                            versions.insert(version.clone(), entry);
                        }
                    }
                    if let Some(Value::Object(t)) = doc.get("dist-tags") {
                        tags = t.clone();
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(name, error = %e, "upstream packument unavailable"),
            }
        }
    }
    if versions.is_empty() {
        return if view.versions.is_empty() {
            json_error(StatusCode::NOT_FOUND, format!("{name}: not found"))
        } else {
            json_error(StatusCode::FORBIDDEN, view.refusal(gw.catalog.min()))
        };
    }
    tags.retain(|_, v| v.as_str().is_some_and(|v| versions.contains_key(v)));
    if !tags.contains_key("latest") {
        if let Some(latest) = latest(versions.keys()) {
            tags.insert("latest".into(), json!(latest));
        }
    }
    if abbreviated {
        let versions: Map<String, Value> = versions
            .into_iter()
            .map(|(k, v)| (k, abbreviate(v)))
            .collect();
        let doc = json!({
            "name": name,
            "dist-tags": tags,
            "versions": versions,
        });
        http::json(&doc, ABBREVIATED)
    } else {
        let doc = json!({
            "name": name,
            "dist-tags": tags,
            "versions": versions,
        });
        http::json(&doc, "application/json")
    }
}

fn abbreviate(v: Value) -> Value {
    let Value::Object(mut m) = v else { return v };
    let install_script = m
        .get("scripts")
        .and_then(Value::as_object)
        .is_some_and(|s| {
            ["preinstall", "install", "postinstall"]
                .iter()
                .any(|k| s.contains_key(*k))
        });
    if install_script {
        m.insert("hasInstallScript".into(), json!(true));
    }
    m.retain(|k, _| ABBREVIATED_FIELDS.contains(&k.as_str()));
    Value::Object(m)
}

/// The highest release version (a pre-release only if there is nothing else).
fn latest<'a>(versions: impl Iterator<Item = &'a String>) -> Option<String> {
    let parsed: Vec<semver::Version> = versions.filter_map(|v| v.parse().ok()).collect();
    parsed
        .iter()
        .filter(|v| v.pre.is_empty())
        .max()
        .or_else(|| parsed.iter().max())
        .map(ToString::to_string)
}

async fn upstream_packument(
    gw: &Gateway,
    upstream: &str,
    name: &str,
) -> Result<Option<Value>, ImportError> {
    let Some(importer) = &gw.importer else {
        return Ok(None);
    };
    let url = format!("{upstream}/{}", name.replace('/', "%2f"));
    importer
        .get_json(&url, "application/json", "the packument")
        .await
}

async fn tarball(gw: &Gateway, name: &str, file: &str) -> Response {
    let base = name.rsplit('/').next().unwrap_or(name);
    let Some(version) = file
        .strip_prefix(base)
        .and_then(|f| f.strip_prefix('-'))
        .and_then(|f| f.strip_suffix(".tgz"))
    else {
        return json_error(
            StatusCode::NOT_FOUND,
            format!("{file}: not a tarball of {name}"),
        );
    };
    let mut view = match gw.view("npm", name).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if view.version(version).is_none() {
        match import(gw, name, version).await {
            Ok(height) => gw.catalog.invalidate("npm", name, height),
            Err(r) => return r,
        }
        view = match gw.view("npm", name).await {
            Ok(v) => v,
            Err(r) => return r,
        };
    }
    let Some(v) = view.version(version) else {
        return json_error(
            StatusCode::NOT_FOUND,
            format!("{name}@{version}: not found"),
        );
    };
    let Some(build) = v.build() else {
        let why = v.served.as_ref().err().cloned().unwrap_or_default();
        return json_error(
            StatusCode::FORBIDDEN,
            format!("{name}@{version} is refused: {why}"),
        );
    };
    let Some(tgz) = build.artifact(|o| o.name.ends_with(".tgz")) else {
        return json_error(
            StatusCode::NOT_FOUND,
            format!("{name}@{version} has no tarball"),
        );
    };
    match crate::store::stream(&gw.store, &tgz).await {
        Ok(body) => http::stream(body, tgz.size, "application/octet-stream"),
        Err(e) => json_error(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

/// Imports `name@version` from the upstream, if this node imports.
async fn import(gw: &Gateway, name: &str, version: &str) -> Result<u64, Response> {
    let package = PackageId {
        ecosystem: "npm".into(),
        name: name.to_owned(),
        version: version.to_owned(),
    };
    gw.import("npm", &package, |importer, upstream| async move {
        let missing = || ImportError::UpstreamMissing {
            url: format!("{upstream}/{name} (version {version})"),
        };
        let doc = upstream_packument(gw, upstream, name)
            .await?
            .ok_or_else(missing)?;
        let dist = doc
            .get("versions")
            .and_then(|v| v.get(version))
            .and_then(|v| v.get("dist"))
            .ok_or_else(missing)?;
        // The tarball comes from the configured upstream's usual path,
        // whatever URL the packument names: metadata never chooses where
        // this node connects.
        let url = format!("{upstream}/{name}/-/{}", tarball_file(name, version));
        let file = importer.download(&url).await?;
        match (
            dist.get("integrity").and_then(Value::as_str),
            dist.get("shasum").and_then(Value::as_str),
        ) {
            (Some(sri), _) => import::check_sri(sri, &file, &url)?,
            (None, Some(sha1)) => import::check_hex(sha1, &file.sha1, "the tarball", &url)?,
            (None, None) => {
                return Err(ImportError::Refused(format!(
                    "{url}: the upstream packument gives no integrity for {version}"
                )))
            }
        }
        Ok(vec![Fetched {
            name: tarball_file(name, version),
            file,
            kind: Kind::NpmTarball,
        }])
    })
    .await
    .map_err(|(status, message)| json_error(status, message))
}

#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// [`handle`]'s parsing of the path after `/npm/`.
    pub fn path(rest: &str, accept: &str) {
        if rest.starts_with("-/") {
            return;
        }
        let _ = accept.contains(ABBREVIATED);
        if let Some((name, file)) = rest.split_once("/-/") {
            if let Some(name) = package_name(name) {
                let _ = tarball_file(&name, file);
                let _ = tarball_url("http://localhost", &name, file);
            }
            return;
        }
        let _ = package_name(rest);
    }

    pub fn abbreviate(v: Value) -> Value {
        super::abbreviate(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_names_arrive_as_one_encoded_segment() {
        assert_eq!(
            package_name("@types%2fnode").as_deref(),
            Some("@types/node")
        );
        assert_eq!(
            package_name("@types%2Fnode").as_deref(),
            Some("@types/node")
        );
        assert_eq!(package_name("left-pad").as_deref(), Some("left-pad"));
        for bad in [
            "..",
            "a%2f..%2fb",
            "@scope",
            "@/x",
            "a b",
            "%00",
            ".hidden",
            "a/b",
        ] {
            assert_eq!(package_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn latest_prefers_releases() {
        let v: Vec<String> = ["1.0.0", "1.10.0", "1.9.0", "2.0.0-beta.1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(latest(v.iter()).as_deref(), Some("1.10.0"));
    }

    #[test]
    fn abbreviated_metadata_keeps_what_installs_need() {
        let v = json!({"name":"a","version":"1.0.0","readme":"long","scripts":{"postinstall":"x"},"dependencies":{"b":"^1"},"dist":{}});
        let a = abbreviate(v);
        assert_eq!(a["hasInstallScript"], json!(true));
        assert!(a.get("readme").is_none() && a.get("scripts").is_none());
        assert_eq!(a["dependencies"]["b"], json!("^1"));
    }
}
