//! The Maven repository layout under `/maven/`: artifacts with `.sha1`,
//! `.md5`, `.sha256` and `.sha512` sidecars computed from verified bytes,
//! and `maven-metadata.xml` at artifact level from the versions the ledger
//! lists. The ledger names a Maven package `groupId:artifactId`.
//!
//! Group-level metadata (plugin prefixes) names no artifact bytes; a node
//! that imports passes the upstream's through and keeps it for offline use.

use hyper::StatusCode;
use md5::Md5;
use pyrsia_chain::PackageId;
use sha1::Sha1;
use sha2::{Digest as _, Sha256, Sha512};
use warp::reply::Response;

use crate::catalog::{Artifact, NameView};
use crate::derived::Kind;
use crate::http::{self, json_error};
use crate::import::{self, Fetched, ImportError};
use crate::{Gateway, Req};

const CHECKSUMS: &[&str] = &["sha1", "md5", "sha256", "sha512"];

fn segment_ok(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b))
}

pub async fn handle(gw: &Gateway, rest: &str, _req: &Req) -> Response {
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.len() < 3 || !segments.iter().all(|s| segment_ok(s)) {
        return json_error(StatusCode::NOT_FOUND, "not a Maven repository path");
    }
    let file = segments[segments.len() - 1];
    let (file_base, checksum) = match file.rsplit_once('.') {
        Some((b, ext)) if CHECKSUMS.contains(&ext) => (b, Some(ext)),
        _ => (file, None),
    };
    if file_base == "maven-metadata.xml" {
        let dirs = &segments[..segments.len() - 1];
        return metadata(gw, dirs, checksum).await;
    }
    if segments.len() < 4 {
        return json_error(StatusCode::NOT_FOUND, "not a Maven artifact path");
    }
    let n = segments.len();
    let (version, artifact) = (segments[n - 2], segments[n - 3]);
    let group = segments[..n - 3].join(".");
    if !file_base.starts_with(&format!("{artifact}-{version}")) {
        return json_error(
            StatusCode::NOT_FOUND,
            format!("{file} is not a file of {artifact} {version}"),
        );
    }
    artifact_file(gw, &group, artifact, version, file_base, checksum, rest).await
}

/// The classifier of a file of `artifact` `version` (`a-1.0-tests.jar`:
/// `tests`). The ledger names a classified artifact
/// `groupId:artifactId:classifier`, so that it can be imported after the
/// version's main artifact.
fn classifier<'a>(artifact: &str, version: &str, file: &'a str) -> Option<&'a str> {
    let rest = file
        .strip_prefix(artifact)?
        .strip_prefix('-')?
        .strip_prefix(version)?;
    let c = rest.strip_prefix('-')?;
    c.split('.').next().filter(|c| !c.is_empty())
}

fn checksum_of(bytes: &[u8], alg: &str) -> String {
    match alg {
        "sha1" => hex::encode(Sha1::digest(bytes)),
        "md5" => hex::encode(Md5::digest(bytes)),
        "sha256" => hex::encode(Sha256::digest(bytes)),
        _ => hex::encode(Sha512::digest(bytes)),
    }
}

async fn artifact_file(
    gw: &Gateway,
    group: &str,
    artifact: &str,
    version: &str,
    file: &str,
    checksum: Option<&str>,
    path: &str,
) -> Response {
    let name = match classifier(artifact, version, file) {
        Some(c) => format!("{group}:{artifact}:{c}"),
        None => format!("{group}:{artifact}"),
    };
    let mut view = match gw.view("maven", &name).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if view.version(version).is_none() {
        match import(gw, &name, artifact, version, file, path).await {
            Ok(height) => gw.catalog.invalidate("maven", &name, height),
            Err(r) => return r,
        }
        view = match gw.view("maven", &name).await {
            Ok(v) => v,
            Err(r) => return r,
        };
    }
    let Some(v) = view.version(version) else {
        return json_error(
            StatusCode::NOT_FOUND,
            format!("{name}:{version}: not found"),
        );
    };
    let Some(build) = v.build() else {
        let why = v.served.as_ref().err().cloned().unwrap_or_default();
        return json_error(
            StatusCode::FORBIDDEN,
            format!("{name}:{version} is refused: {why}"),
        );
    };
    let Some(out) = build.artifact(|o| o.name == file) else {
        return json_error(
            StatusCode::NOT_FOUND,
            format!("{file}: not among {name}:{version}'s files"),
        );
    };
    serve(gw, &out, checksum).await
}

async fn serve(gw: &Gateway, out: &Artifact, checksum: Option<&str>) -> Response {
    match checksum {
        Some("sha256") => http::text(StatusCode::OK, out.sha256.to_string()),
        Some(alg) => match gw.derived.get(out, Kind::Plain).await {
            Ok(d) => http::text(
                StatusCode::OK,
                match alg {
                    "sha1" => d.sha1,
                    "md5" => d.md5,
                    _ => d.sha512,
                },
            ),
            Err(e) => json_error(StatusCode::BAD_GATEWAY, e.to_string()),
        },
        None => {
            let kind = if out.name.ends_with(".pom") {
                "text/xml"
            } else {
                "application/java-archive"
            };
            match crate::store::stream(&gw.store, out).await {
                Ok(body) => http::stream(body, out.size, kind),
                Err(e) => json_error(StatusCode::BAD_GATEWAY, e.to_string()),
            }
        }
    }
}

fn metadata_xml(group: &str, artifact: &str, versions: &[String]) -> String {
    let release = versions
        .iter()
        .filter(|v| !v.ends_with("-SNAPSHOT"))
        .max_by(|a, b| compare_versions(a, b))
        .cloned()
        .unwrap_or_default();
    let latest = versions
        .iter()
        .max_by(|a, b| compare_versions(a, b))
        .cloned()
        .unwrap_or_default();
    let mut sorted = versions.to_vec();
    sorted.sort_by(|a, b| compare_versions(a, b));
    let list: String = sorted
        .iter()
        .map(|v| format!("      <version>{}</version>\n", http::esc(v)))
        .collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<metadata>\n  <groupId>{}</groupId>\n  <artifactId>{}</artifactId>\n  <versioning>\n    <latest>{}</latest>\n    <release>{}</release>\n    <versions>\n{list}    </versions>\n  </versioning>\n</metadata>\n",
        http::esc(group),
        http::esc(artifact),
        http::esc(&latest),
        http::esc(&release)
    )
}

/// Maven-ish version order: numeric parts compared as numbers.
fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |s: &str| -> Vec<(u64, String)> {
        s.split(['.', '-'])
            .map(|p| (p.parse::<u64>().unwrap_or(0), p.to_owned()))
            .collect()
    };
    parts(a).cmp(&parts(b))
}

async fn metadata(gw: &Gateway, dirs: &[&str], checksum: Option<&str>) -> Response {
    let (group_dirs, artifact) = dirs.split_at(dirs.len() - 1);
    let (group, artifact) = (group_dirs.join("."), artifact[0]);
    let name = format!("{group}:{artifact}");
    let view = match gw.view("maven", &name).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut versions: Vec<String> = servable_versions(&view);
    let upstream_path = format!("{}/maven-metadata.xml", dirs.join("/"));
    let upstream = upstream_metadata(gw, &upstream_path).await;
    if let Some(xml) = &upstream {
        for v in xml_values(xml, "version") {
            // A version on the ledger below the minimum is not offered.
            if view.version(&v).is_none() && !versions.contains(&v) {
                versions.push(v);
            }
        }
    }
    let body = if !versions.is_empty() {
        metadata_xml(&group, artifact, &versions)
    } else if let Some(xml) = upstream.or_else(|| cached_metadata(gw, &upstream_path)) {
        // Group-level metadata (plugin prefixes): no artifact bytes in it.
        xml
    } else if view.versions.is_empty() {
        return json_error(
            StatusCode::NOT_FOUND,
            format!("{}: not found", dirs.join("/")),
        );
    } else {
        return json_error(StatusCode::FORBIDDEN, view.refusal(gw.catalog.min()));
    };
    match checksum {
        Some(alg) => http::text(StatusCode::OK, checksum_of(body.as_bytes(), alg)),
        None => http::typed(StatusCode::OK, "text/xml", body),
    }
}

fn servable_versions(view: &NameView) -> Vec<String> {
    view.servable().map(|(v, _)| v.version.clone()).collect()
}

fn cache_file(gw: &Gateway, path: &str) -> std::path::PathBuf {
    gw.cache_dir
        .join("maven-metadata")
        .join(hex::encode(Sha256::digest(path.as_bytes())))
}

fn cached_metadata(gw: &Gateway, path: &str) -> Option<String> {
    std::fs::read_to_string(cache_file(gw, path)).ok()
}

/// The upstream's `maven-metadata.xml` at `path`, kept on disk.
async fn upstream_metadata(gw: &Gateway, path: &str) -> Option<String> {
    let importer = gw.importer.as_ref()?;
    let url = format!("{}/{path}", importer.upstream("maven")?);
    match importer.get_small(&url, "*/*", 8 << 20, &[]).await {
        Ok(Some((body, _))) => {
            let text = String::from_utf8(body).ok()?;
            let file = cache_file(gw, path);
            if let Some(dir) = file.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = std::fs::write(file, &text);
            Some(text)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(url, error = %e, "upstream metadata unavailable");
            None
        }
    }
}

/// The text of every `<tag>` element (flat; enough for metadata and the
/// few POM fields read here).
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(after[..j].trim().to_owned());
        rest = &after[j + close.len()..];
    }
    out
}

/// The POM's own `<packaging>` (not a parent's or a plugin's).
fn packaging(pom: &str) -> String {
    let own = match pom.find("</parent>") {
        Some(i) => &pom[i..],
        None => pom,
    };
    let own = own.split("<build>").next().unwrap_or(own);
    let own = own.split("<profiles>").next().unwrap_or(own);
    xml_values(own, "packaging")
        .into_iter()
        .next()
        .unwrap_or_else(|| "jar".to_owned())
}

/// Imports `name` (`group:artifact`, or `group:artifact:classifier`)
/// `version`: a classified file alone; else the POM, the main artifact by
/// the POM's packaging, a jar if there is one, and the file asked for; each
/// checked against the upstream's `.sha1`.
async fn import(
    gw: &Gateway,
    name: &str,
    artifact: &str,
    version: &str,
    file: &str,
    path: &str,
) -> Result<u64, Response> {
    let package = PackageId {
        ecosystem: "maven".into(),
        name: name.to_owned(),
        version: version.to_owned(),
    };
    let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
    gw.import("maven", &package, |importer, upstream| async move {
        let fetch = |n: String| async move {
            let url = format!("{upstream}/{dir}/{n}");
            let file = checked_download(importer, &url, &n).await?;
            Ok::<_, ImportError>(Fetched {
                name: n,
                file,
                kind: Kind::Plain,
            })
        };
        if classifier(artifact, version, file).is_some() {
            return Ok(vec![fetch(file.to_owned()).await?]);
        }
        let pom_name = format!("{artifact}-{version}.pom");
        let pom_url = format!("{upstream}/{dir}/{pom_name}");
        let (pom, _) = importer
            .get_small(&pom_url, "*/*", 16 << 20, &[])
            .await?
            .ok_or(ImportError::UpstreamMissing { url: pom_url })?;
        // The main artifact by the POM's packaging, and a jar in any case:
        // POMs that say `pom` over a published jar exist (velocity 1.5).
        let main_ext = match packaging(&String::from_utf8_lossy(&pom)).as_str() {
            "war" => "war",
            "ear" => "ear",
            "aar" => "aar",
            _ => "jar",
        };
        let mut names = vec![pom_name.clone()];
        for ext in [main_ext, "jar"] {
            names.push(format!("{artifact}-{version}.{ext}"));
        }
        names.push(file.to_owned());
        names.sort();
        names.dedup();
        let mut files = Vec::new();
        for n in names {
            let required = n == file || n == pom_name;
            match fetch(n).await {
                Ok(f) => files.push(f),
                // A main artifact the upstream does not have (a `pom`
                // project's jar, …) is left out.
                Err(ImportError::UpstreamMissing { .. }) if !required => {}
                Err(e) => return Err(e),
            }
        }
        Ok(files)
    })
    .await
    .map_err(|(status, message)| json_error(status, message))
}

/// Downloads `url` and checks it against the upstream's `.sha1`.
async fn checked_download(
    importer: &crate::import::Importer,
    url: &str,
    name: &str,
) -> Result<crate::import::Downloaded, ImportError> {
    let d = importer.download(url).await?;
    let sha1_url = format!("{url}.sha1");
    let (expected, _) = importer
        .get_small(&sha1_url, "*/*", 1024, &[])
        .await?
        .ok_or_else(|| {
            ImportError::Refused(format!(
                "{url}: the upstream has no .sha1 to check it against"
            ))
        })?;
    let expected = String::from_utf8_lossy(&expected);
    let expected = expected.split_whitespace().next().unwrap_or_default();
    import::check_hex(expected, &d.sha1, name, url)?;
    Ok(d)
}

#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// [`handle`]'s parsing of the path after `/maven/`.
    pub fn path(rest: &str) {
        let segments: Vec<&str> = rest.split('/').collect();
        if segments.len() < 3 || !segments.iter().all(|s| segment_ok(s)) {
            return;
        }
        let file = segments[segments.len() - 1];
        let (file_base, checksum) = match file.rsplit_once('.') {
            Some((b, ext)) if CHECKSUMS.contains(&ext) => (b, Some(ext)),
            _ => (file, None),
        };
        if file_base == "maven-metadata.xml" {
            let dirs = &segments[..segments.len() - 1];
            let (group_dirs, artifact) = dirs.split_at(dirs.len() - 1);
            let _ = (group_dirs.join("."), artifact[0], checksum);
            return;
        }
        if segments.len() < 4 {
            return;
        }
        let n = segments.len();
        let (version, artifact) = (segments[n - 2], segments[n - 3]);
        let group = segments[..n - 3].join(".");
        if file_base.starts_with(&format!("{artifact}-{version}")) {
            let _ = classifier(artifact, version, file_base);
            let _ = metadata_xml(&group, artifact, &[version.to_owned()]);
        }
    }

    /// What is read from upstream POMs and metadata.
    pub fn document(xml: &str) -> String {
        let mut versions = xml_values(xml, "version");
        versions.sort_by(|a, b| compare_versions(a, b));
        metadata_xml(&packaging(xml), "a", &versions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifiers_are_read_from_file_names() {
        assert_eq!(classifier("a", "1.0", "a-1.0-tests.jar"), Some("tests"));
        assert_eq!(classifier("a", "1.0", "a-1.0.jar"), None);
        assert_eq!(classifier("a", "1.0", "a-1.0.pom"), None);
        assert_eq!(
            classifier("a", "1.0-rc", "a-1.0-rc-sources.jar"),
            Some("sources")
        );
    }

    #[test]
    fn packaging_is_the_poms_own() {
        let pom = "<project><parent><packaging>pom</packaging></parent><packaging>maven-plugin</packaging><build><plugins><plugin><packaging>x</packaging></plugin></plugins></build></project>";
        assert_eq!(packaging(pom), "maven-plugin");
        assert_eq!(packaging("<project></project>"), "jar");
    }

    #[test]
    fn metadata_lists_versions_in_order() {
        let xml = metadata_xml(
            "org.x",
            "a",
            &["1.10".into(), "1.9".into(), "2.0-SNAPSHOT".into()],
        );
        assert!(xml.contains("<release>1.10</release>"), "{xml}");
        assert!(xml.contains("<latest>2.0-SNAPSHOT</latest>"));
        assert_eq!(xml_values(&xml, "version"), ["1.9", "1.10", "2.0-SNAPSHOT"]);
    }
}
