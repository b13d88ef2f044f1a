//! The maven recipe's dependency step with a real library: its sources and
//! pom taken from the registry by the ordinary `mvn` at test time, the
//! repository that an ordinary build of it fills served on 127.0.0.1 as the
//! `maven` upstream, fetched through the recording proxy, built offline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "support/packages.rs"]
mod packages;

use std::time::{Duration, Instant};

use builder::BuildError;
use common::*;
use packages::*;

#[test]
fn maven_dependencies_and_plugins_are_fetched_through_the_proxy_recorded_and_built_offline() {
    let files = maven_project_files();
    let repo = maven_upstream_repository(&files);
    let upstream = LocalUpstream::maven(&repo);

    let server = GitServer::start();
    let (url, commit) = server.repo_of(MAVEN_ARTIFACT, &files);
    let spec = spec("maven", &maven_name(), MAVEN_VERSION, &url, &commit);

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
        format!("maven:/{MAVEN_DEPENDENCY}"),
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
        log.contains(&format!("pyrsia: resolved maven:/{MAVEN_DEPENDENCY}")),
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
    let files = maven_project_files();
    let server = GitServer::start();
    let (url, commit) = server.repo_of(MAVEN_ARTIFACT, &files);
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let result = builder::build(
        &spec("maven", &maven_name(), MAVEN_VERSION, &url, &commit),
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
