//! The dependency step with real packages: taken from the registry by the
//! ordinary client at test time, served by a local upstream on 127.0.0.1,
//! fetched through the recording proxy, then built offline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "support/packages.rs"]
mod packages;

use std::path::Path;
use std::process::Command;

use builder::BuildError;
use common::*;
use packages::*;

const PACKAGE: (&str, &str) = NPM_PACKAGE;
const DEPENDENCY: (&str, &str) = NPM_DEPENDENCY;

fn npm_config(work: &Path, upstream: &LocalUpstream) -> builder::BuilderConfig {
    let mut cfg = config(work);
    cfg.upstreams = vec![registry("npm", &upstream.url)];
    cfg
}

#[test]
fn npm_dependencies_are_fetched_through_the_proxy_recorded_and_built_offline() {
    let package = npm_tarball(PACKAGE.0, PACKAGE.1);
    let dependency = npm_tarball(DEPENDENCY.0, DEPENDENCY.1);
    let dir = upstream_dir(std::slice::from_ref(&dependency));
    let upstream = LocalUpstream::npm(dir.path());
    let files = npm_source_files(&package, &upstream.url);
    assert!(files.iter().any(|(n, _, _)| n == "package-lock.json"));

    let server = GitServer::start();
    let (url, commit) = server.repo_of("is-odd", &files);
    let spec = spec("npm", PACKAGE.0, PACKAGE.1, &url, &commit);

    let (_work, outcomes) = build_twice_with(&spec, &[registry("npm", &upstream.url)]);
    assert_eq!(outcomes[0].outputs[0].name, "is-odd-3.0.1.tgz");

    let resolved = &outcomes[0].resolved_dependencies;
    assert_eq!(resolved.len(), 1, "{resolved:?}");
    assert_eq!(resolved[0].uri, "npm:/is-number/-/is-number-6.0.0.tgz");
    assert_eq!(resolved[0].sha256, sha256(&dependency));
    assert_eq!(resolved, &outcomes[1].resolved_dependencies);
    let log = log_of(&outcomes[0]);
    assert!(log.contains("pyrsia: resolved npm:/is-number"), "{log}");
    assert!(log.contains("npm rebuild --offline"), "{log}");
}

#[test]
fn a_dependency_that_differs_from_the_lockfile_fails_the_build() {
    let package = npm_tarball(PACKAGE.0, PACKAGE.1);
    let dependency = npm_tarball(DEPENDENCY.0, DEPENDENCY.1);
    let honest = upstream_dir(std::slice::from_ref(&dependency));
    let upstream = LocalUpstream::npm(honest.path());
    let files = npm_source_files(&package, &upstream.url);
    drop(upstream);

    // The same name and version with other bytes: an extra file inside.
    let poisoned = tempfile::tempdir().unwrap();
    let unpacked = poisoned.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    assert!(Command::new("tar")
        .arg("-xzf")
        .arg(&dependency)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .unwrap()
        .success());
    std::fs::write(unpacked.join("package/postinstall.js"), "// evil\n").unwrap();
    let served = poisoned.path().join("served");
    std::fs::create_dir(&served).unwrap();
    assert!(Command::new("tar")
        .arg("-czf")
        .arg(served.join(dependency.file_name().unwrap()))
        .arg("-C")
        .arg(&unpacked)
        .arg("package")
        .status()
        .unwrap()
        .success());
    let upstream = LocalUpstream::npm(&served);

    let server = GitServer::start();
    let (url, commit) = server.repo_of("is-odd", &files);
    let tmp = tempfile::tempdir().unwrap();
    match builder::build(
        &spec("npm", PACKAGE.0, PACKAGE.1, &url, &commit),
        &npm_config(tmp.path(), &upstream),
    ) {
        Err(BuildError::DependencyMismatch { reason, .. }) => {
            assert!(reason.contains("EINTEGRITY"), "{reason}")
        }
        other => panic!("expected DependencyMismatch, got {other:?}"),
    }
}

#[test]
fn a_python_package_on_a_non_setuptools_backend_builds_with_its_recorded_backend() {
    // tomli's build backend is flit_core, which the host does not have.
    let sdist = pypi_file("tomli==2.0.1", false, "tomli-2.0.1.tar.gz");
    let backend = pypi_file("flit_core==3.9.0", true, "flit_core-3.9.0-py3-none-any.whl");
    let dir = upstream_dir(std::slice::from_ref(&backend));
    let upstream = LocalUpstream::pypi(dir.path());

    let files = sdist_files(&sdist);
    let server = GitServer::start();
    let (url, commit) = server.repo_of("tomli", &files);
    let spec = spec("python", "tomli", "2.0.1", &url, &commit);

    let (_work, outcomes) = build_twice_with(&spec, &[registry("pypi", &upstream.url)]);
    let names: Vec<&str> = outcomes[0]
        .outputs
        .iter()
        .map(|o| o.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["tomli-2.0.1-py3-none-any.whl", "tomli-2.0.1.tar.gz"]
    );
    let resolved = &outcomes[0].resolved_dependencies;
    assert_eq!(resolved.len(), 1, "{resolved:?}");
    assert_eq!(
        resolved[0].uri,
        "pypi:/files/flit_core-3.9.0-py3-none-any.whl"
    );
    assert_eq!(resolved[0].sha256, sha256(&backend));
}

/// A package names its build requirements, and a requirement can be a
/// direct URL (here a server of this host). The dependency step's network
/// holds only the proxy, so it reaches nothing else, and the build fails.
#[test]
fn the_dependency_step_reaches_nothing_but_the_proxy() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();

    let backend = pypi_file("flit_core==3.9.0", true, "flit_core-3.9.0-py3-none-any.whl");
    let dir = upstream_dir(std::slice::from_ref(&backend));
    let upstream = LocalUpstream::pypi(dir.path());
    let direct = format!("http://127.0.0.1:{port}/evil-1.0-py3-none-any.whl");
    let pyproject = format!(
        "[build-system]\nrequires = [\"flit_core==3.9.0\", \"evil @ {direct}\"]\nbuild-backend = \"flit_core.buildapi\"\n"
    );
    let server = GitServer::start();
    let (url, commit) = server.repo("reach-out", &[("pyproject.toml", &pyproject, false)]);
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.upstreams = vec![registry("pypi", &upstream.url)];
    let err = builder::build(&spec("python", "reach-out", "1.0", &url, &commit), &cfg).unwrap_err();
    let log = read_log(&err);
    assert!(
        matches!(err, BuildError::DependencyFetch { .. }),
        "{err}\n{log}"
    );
    assert!(
        log.contains(&direct),
        "pip never tried the direct URL:\n{log}"
    );
    // The host's listener was reachable all along, from the host.
    std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut reached = 0;
    while listener.accept().is_ok() {
        reached += 1;
    }
    assert_eq!(
        reached, 1,
        "only the test's own connection reached the host"
    );
}
