//! The cargo recipe's dependency step with real crates: taken from the
//! registry by the ordinary `cargo` at test time, served by a local sparse
//! index on 127.0.0.1, fetched through the recording proxy, built offline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "support/packages.rs"]
mod packages;

use std::process::Command;

use builder::BuildError;
use common::*;
use packages::*;

/// Builds the package twice through the dependency step and checks that the
/// outputs agree and the dependency was recorded as the upstream served it.
fn builds_identically_through_the_index(with_lock: bool) {
    let crates = crate_files();
    let served = tempfile::tempdir().unwrap();
    for c in &crates {
        std::fs::copy(c, served.path().join(c.file_name().unwrap())).unwrap();
    }
    let upstream = LocalUpstream::crates(served.path());
    let files = crate_source_files(&crates[0], with_lock);
    assert!(files.iter().any(|(n, _, _)| n == "src/lib.rs"), "{files:?}");
    assert_eq!(
        files.iter().any(|(n, _, _)| n == "Cargo.lock"),
        with_lock,
        "{files:?}"
    );

    let server = GitServer::start();
    let (url, commit) = server.repo_of(CRATE_PACKAGE.0, &files);
    let spec = spec("cargo", CRATE_PACKAGE.0, CRATE_PACKAGE.1, &url, &commit);

    let (_work, outcomes) = build_twice_with(&spec, &[registry("crates", &upstream.url)]);
    let names: Vec<&str> = outcomes[0]
        .outputs
        .iter()
        .map(|o| o.name.as_str())
        .collect();
    assert_eq!(
        names,
        [format!("{}-{}.crate", CRATE_PACKAGE.0, CRATE_PACKAGE.1)]
    );

    let resolved = &outcomes[0].resolved_dependencies;
    assert_eq!(resolved, &outcomes[1].resolved_dependencies);
    assert_eq!(resolved.len(), 1, "{resolved:?}");
    assert_eq!(
        resolved[0].uri,
        format!(
            "crates:/crates/{}/{}/download",
            CRATE_DEPENDENCY.0, CRATE_DEPENDENCY.1
        )
    );
    assert_eq!(resolved[0].sha256, sha256(&crates[1]));
    assert_eq!(
        resolved[0].size,
        std::fs::metadata(&crates[1]).unwrap().len()
    );

    // The package holds the source and a lockfile pinning what was fetched.
    let unpacked = tempfile::tempdir().unwrap();
    assert!(Command::new("tar")
        .arg("-xzf")
        .arg(&outcomes[0].outputs[0].path)
        .arg("-C")
        .arg(unpacked.path())
        .status()
        .unwrap()
        .success());
    let root = unpacked
        .path()
        .join(format!("{}-{}", CRATE_PACKAGE.0, CRATE_PACKAGE.1));
    assert!(root.join("src/lib.rs").is_file());
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap();
    assert!(
        lock.contains(&format!(
            "name = \"{}\"\nversion = \"{}\"",
            CRATE_DEPENDENCY.0, CRATE_DEPENDENCY.1
        )) && lock.contains(&format!("checksum = \"{}\"", sha256(&crates[1]))),
        "{lock}"
    );
    let log = log_of(&outcomes[0]);
    assert!(
        log.contains(&format!(
            "pyrsia: resolved crates:/crates/{}/{}/download",
            CRATE_DEPENDENCY.0, CRATE_DEPENDENCY.1
        )),
        "{log}"
    );
    assert!(log.contains("cargo package --offline"), "{log}");
    if !with_lock {
        assert!(log.contains("cargo generate-lockfile"), "{log}");
    }
}

#[test]
fn a_crate_without_a_lockfile_gets_one_and_builds_identically_through_the_index() {
    builds_identically_through_the_index(false);
}

#[test]
fn a_crate_with_its_lockfile_builds_identically_through_the_index() {
    builds_identically_through_the_index(true);
}

#[test]
fn a_dependency_that_differs_from_the_lockfile_fails_the_build() {
    let crates = crate_files();
    // The dependency's name and version with other bytes: an extra file.
    let poisoned = tempfile::tempdir().unwrap();
    let unpacked = poisoned.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    assert!(Command::new("tar")
        .arg("-xzf")
        .arg(&crates[1])
        .arg("-C")
        .arg(&unpacked)
        .status()
        .unwrap()
        .success());
    let top = format!("{}-{}", CRATE_DEPENDENCY.0, CRATE_DEPENDENCY.1);
    std::fs::write(unpacked.join(&top).join("build.rs"), "fn main() {}\n").unwrap();
    let served = poisoned.path().join("served");
    std::fs::create_dir(&served).unwrap();
    assert!(Command::new("tar")
        .arg("-czf")
        .arg(served.join(crates[1].file_name().unwrap()))
        .arg("-C")
        .arg(&unpacked)
        .arg(&top)
        .status()
        .unwrap()
        .success());
    assert_ne!(
        sha256(&served.join(crates[1].file_name().unwrap())),
        sha256(&crates[1])
    );
    let upstream = LocalUpstream::crates(&served);

    let files = crate_source_files(&crates[0], true);
    let server = GitServer::start();
    let (url, commit) = server.repo_of(CRATE_PACKAGE.0, &files);
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.upstreams = vec![registry("crates", &upstream.url)];
    match builder::build(
        &spec("cargo", CRATE_PACKAGE.0, CRATE_PACKAGE.1, &url, &commit),
        &cfg,
    ) {
        Err(BuildError::DependencyMismatch { reason, .. }) => {
            assert!(reason.contains(CRATE_DEPENDENCY.0), "{reason}")
        }
        other => panic!("expected DependencyMismatch, got {other:?}"),
    }
}
