//! The maven recipe's dependency step with a real library: its sources and
//! pom taken from the registry by the ordinary `mvn` at test time, the
//! repository that an ordinary build of it fills served on 127.0.0.1 as the
//! `maven` upstream, fetched through the recording proxy, built offline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "support/packages.rs"]
mod packages;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use builder::BuildError;
use common::*;
use packages::{cache_dir, LocalUpstream};

/// A real library with one runtime dependency (slf4j-api), a parent pom,
/// and a build extension and plugins of its own.
const GROUP: &str = "org.slf4j";
const ARTIFACT: &str = "slf4j-simple";
const VERSION: &str = "1.7.36";
/// Its dependency, as the upstream lays it out.
const DEPENDENCY: &str = "org/slf4j/slf4j-api/1.7.36/slf4j-api-1.7.36.jar";

fn mvn(args: &[&str], dir: &Path) {
    let out = Command::new("mvn")
        .args(["-B", "-ntp"])
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mvn {args:?}:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `GROUP:ARTIFACT:VERSION:jar:<classifier>` (or `:pom`) through the
/// machine's Maven configuration, into a local repository kept between runs.
fn published(kind: &str) -> PathBuf {
    let repo = cache_dir("maven").join("published");
    let file = repo.join(format!(
        "{}/{ARTIFACT}/{VERSION}/{ARTIFACT}-{VERSION}{}",
        GROUP.replace('.', "/"),
        match kind {
            "pom" => ".pom",
            "sources" => "-sources.jar",
            _ => ".jar",
        }
    ));
    if !file.exists() {
        let coordinates = match kind {
            "pom" => format!("{GROUP}:{ARTIFACT}:{VERSION}:pom"),
            "sources" => format!("{GROUP}:{ARTIFACT}:{VERSION}:jar:sources"),
            _ => format!("{GROUP}:{ARTIFACT}:{VERSION}:jar"),
        };
        mvn(
            &[
                &format!("-Dmaven.repo.local={}", repo.display()),
                "dependency:get",
                &format!("-Dartifact={coordinates}"),
                "-Dtransitive=false",
            ],
            &cache_dir("maven"),
        );
        assert!(
            file.exists(),
            "{} missing after dependency:get",
            file.display()
        );
    }
    file
}

fn zip_entry(jar: &Path, name: &str) -> Vec<u8> {
    let mut archive = zip::ZipArchive::new(std::fs::File::open(jar).unwrap()).unwrap();
    let mut data = Vec::new();
    archive
        .by_name(name)
        .unwrap()
        .read_to_end(&mut data)
        .unwrap();
    data
}

/// The library as its developer's tree: `src/main/java` from the sources
/// jar, the published pom as `pom.xml`. Two things the sources jar and pom
/// leave out are put back: `src/main/resources/META-INF/MANIFEST.MF`, which
/// the parent's jar plugin merges (taken from the published jar, without
/// what the jar plugin writes itself), and, because the parent compiles for
/// Java 5 which today's JDKs refuse, `required.jdk.version` 1.8 in the pom.
fn project_files() -> Vec<(String, String, bool)> {
    let mut files = Vec::new();
    let sources = published("sources");
    let mut archive = zip::ZipArchive::new(std::fs::File::open(&sources).unwrap()).unwrap();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let name = entry.name().to_string();
        if name.ends_with(".java") {
            let mut text = String::new();
            entry.read_to_string(&mut text).unwrap();
            files.push((format!("src/main/java/{name}"), text, false));
        }
    }
    assert!(files.len() >= 5, "{files:?}");
    let manifest = String::from_utf8(zip_entry(&published("jar"), "META-INF/MANIFEST.MF")).unwrap();
    let manifest: String = manifest
        .lines()
        .filter(|l| {
            !["Manifest-Version:", "Build-Jdk-Spec:", "Created-By:"]
                .iter()
                .any(|p| l.starts_with(p))
                && !l.is_empty()
        })
        .map(|l| format!("{l}\n"))
        .collect();
    files.push((
        "src/main/resources/META-INF/MANIFEST.MF".into(),
        manifest,
        false,
    ));
    let pom = std::fs::read_to_string(published("pom")).unwrap();
    assert!(pom.contains("<artifactId>slf4j-parent</artifactId>"));
    let pom = pom.replacen(
        "<dependencies>",
        "<properties>\n    <required.jdk.version>1.8</required.jdk.version>\n  </properties>\n\n  <dependencies>",
        1,
    );
    files.push(("pom.xml".into(), pom, false));
    files
}

/// A Maven repository holding what building the project needs: the local
/// repository of an ordinary `mvn package` over it (machine's settings),
/// filled once and kept between runs.
fn upstream_repository(files: &[(String, String, bool)]) -> PathBuf {
    let repo = cache_dir("maven").join("upstream");
    let done = cache_dir("maven").join("upstream.complete");
    if !done.exists() {
        let project = tempfile::tempdir().unwrap();
        for (path, content, _) in files {
            let p = project.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        mvn(
            &[
                &format!("-Dmaven.repo.local={}", repo.display()),
                "-DskipTests",
                "package",
            ],
            project.path(),
        );
        std::fs::write(&done, "").unwrap();
    }
    repo
}

fn name() -> String {
    format!("{GROUP}:{ARTIFACT}")
}

#[test]
fn maven_dependencies_and_plugins_are_fetched_through_the_proxy_recorded_and_built_offline() {
    let files = project_files();
    let repo = upstream_repository(&files);
    let upstream = LocalUpstream::maven(&repo);

    let server = GitServer::start();
    let (url, commit) = server.repo_of(ARTIFACT, &files);
    let spec = spec("maven", &name(), VERSION, &url, &commit);

    let (_work, outcomes) = build_twice_with(&spec, &[registry("maven", &upstream.url)]);
    let names: Vec<&str> = outcomes[0]
        .outputs
        .iter()
        .map(|o| o.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["slf4j-simple-1.7.36.jar", "slf4j-simple-1.7.36.pom"]
    );
    // The jar holds the compiled library, the pom is the source's.
    let jar = &outcomes[0].outputs[0].path;
    assert!(!zip_entry(jar, "org/slf4j/impl/SimpleLogger.class").is_empty());
    assert!(String::from_utf8(zip_entry(jar, "META-INF/MANIFEST.MF"))
        .unwrap()
        .contains("Bundle-SymbolicName: slf4j.simple"));
    let pom = std::fs::read_to_string(&outcomes[0].outputs[1].path).unwrap();
    assert!(pom.contains("<artifactId>slf4j-simple</artifactId>"));

    // Maven downloads on several threads; the record is sorted, so the
    // same set is the same list.
    assert_eq!(
        outcomes[0].resolved_dependencies,
        outcomes[1].resolved_dependencies
    );
    let resolved = &outcomes[0].resolved_dependencies;
    let uris: Vec<&str> = resolved.iter().map(|d| d.uri.as_str()).collect();
    for expected in [
        format!("maven:/{DEPENDENCY}"),
        "maven:/org/slf4j/slf4j-parent/1.7.36/slf4j-parent-1.7.36.pom".to_string(),
        "maven:/org/apache/maven/plugins/maven-compiler-plugin/3.3/maven-compiler-plugin-3.3.jar"
            .to_string(),
        "maven:/org/apache/maven/plugins/maven-jar-plugin/3.2.0/maven-jar-plugin-3.2.0.jar"
            .to_string(),
    ] {
        assert!(
            uris.contains(&expected.as_str()),
            "{expected} not in {uris:#?}"
        );
    }
    // Every record is the upstream's file, byte for byte.
    for dep in resolved {
        let path = dep.uri.strip_prefix("maven:/").unwrap();
        let file = repo.join(path);
        assert_eq!(dep.sha256, sha256(&file), "{}", dep.uri);
        assert_eq!(
            dep.size,
            std::fs::metadata(&file).unwrap().len(),
            "{}",
            dep.uri
        );
    }
    let log = log_of(&outcomes[0]);
    assert!(
        log.contains(&format!("pyrsia: resolved maven:/{DEPENDENCY}")),
        "{log}"
    );
    assert!(log.contains("mvn -o "), "{log}");
    let env = &outcomes[0].build_env;
    assert!(
        !env.contains("java=unknown") && !env.contains("maven=unknown") && env.contains("maven=3."),
        "{env}"
    );
}

#[test]
fn a_maven_build_without_a_maven_upstream_fails_with_the_reason() {
    let files = project_files();
    let server = GitServer::start();
    let (url, commit) = server.repo_of(ARTIFACT, &files);
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let result = builder::build(
        &spec("maven", &name(), VERSION, &url, &commit),
        &config(tmp.path()),
    );
    match result {
        Err(e @ BuildError::DependencyFetch { .. }) => {
            let text = e.to_string();
            assert!(text.contains("`maven` upstream"), "{text}");
            assert!(
                read_log(&e).contains("`maven` upstream"),
                "{}",
                read_log(&e)
            );
        }
        other => panic!("expected DependencyFetch, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(60));
}
