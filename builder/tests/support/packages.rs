//! Real packages for tests: fetched at test time by the ordinary clients
//! (npm, pip) through the machine's own configuration, cached under
//! `$HOME/.cache/pyrsia-test-packages`, and served by local registries on
//! 127.0.0.1 (`npm_upstream.py`, `pypi_upstream.py` next to this file).
//! Shared by the builder's tests and the CLI's end-to-end tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A real npm package with a runtime dependency, and that dependency.
pub const NPM_PACKAGE: (&str, &str) = ("is-odd", "3.0.1");
pub const NPM_DEPENDENCY: (&str, &str) = ("is-number", "6.0.0");

/// `$HOME/.cache/pyrsia-test-packages/KIND`, created.
pub fn cache_dir(kind: &str) -> PathBuf {
    let dir = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache/pyrsia-test-packages")
        .join(kind);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `npm pack NAME@VERSION` through the machine's npm configuration, kept
/// between runs.
pub fn npm_tarball(name: &str, version: &str) -> PathBuf {
    let cache = cache_dir("npm");
    let file = cache.join(format!("{name}-{version}.tgz"));
    if !file.exists() {
        let out = Command::new("npm")
            .args(["pack", &format!("{name}@{version}"), "--silent"])
            .current_dir(&cache)
            .output()
            .unwrap();
        assert!(
            out.status.success() && file.exists(),
            "npm pack {name}@{version}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    file
}

/// A registry of `builder/tests/support/` serving the files in `dir`.
pub struct LocalUpstream {
    child: Child,
    pub url: String,
    _ports: tempfile::TempDir,
}

impl LocalUpstream {
    pub fn npm(dir: &Path) -> LocalUpstream {
        LocalUpstream::start("npm_upstream.py", dir)
    }

    pub fn pypi(dir: &Path) -> LocalUpstream {
        LocalUpstream::start("pypi_upstream.py", dir)
    }

    pub fn crates(dir: &Path) -> LocalUpstream {
        LocalUpstream::start("crates_upstream.py", dir)
    }

    /// A Maven repository: the files below `dir` as they are.
    pub fn maven(dir: &Path) -> LocalUpstream {
        LocalUpstream::start("static_upstream.py", dir)
    }

    fn start(script: &str, dir: &Path) -> LocalUpstream {
        // Next to the served directory, not in it: a static upstream would
        // serve it.
        let ports = tempfile::tempdir().unwrap();
        let port_file = ports.path().join("port");
        let script = Path::new(file!())
            .parent()
            .map(|d| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(d))
            .unwrap()
            .join(script);
        let child = Command::new("python3")
            .arg(&script)
            .arg(dir)
            .arg(&port_file)
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(&port_file) {
                break p;
            }
            assert!(Instant::now() < until, "{} did not start", script.display());
            std::thread::sleep(Duration::from_millis(20));
        };
        LocalUpstream {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _ports: ports,
        }
    }
}

impl Drop for LocalUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory holding copies of `files`, for an upstream to serve.
pub fn upstream_dir(tarballs: &[PathBuf]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for t in tarballs {
        std::fs::copy(t, dir.path().join(t.file_name().unwrap())).unwrap();
    }
    dir
}

/// The package's published tarball as a source tree, with the lockfile its
/// developer would commit: `npm install --package-lock-only` against the
/// upstream. Its devDependencies (a test runner's whole tree) are dropped,
/// so that the upstream needs to serve only the runtime dependency.
pub fn npm_source_files(tarball: &Path, registry: &str) -> Vec<(String, String, bool)> {
    let tmp = tempfile::tempdir().unwrap();
    let ok = Command::new("tar")
        .args(["-xzf"])
        .arg(tarball)
        .arg("-C")
        .arg(tmp.path())
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let pkg = tmp.path().join("package");
    let manifest_path = pkg.join("package.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    manifest.as_object_mut().unwrap().remove("devDependencies");
    std::fs::write(
        &manifest_path,
        serde_json::to_string_pretty(&manifest).unwrap() + "\n",
    )
    .unwrap();
    let out = Command::new("npm")
        .args([
            "install",
            "--package-lock-only",
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
            "--registry",
            registry,
        ])
        .current_dir(&pkg)
        .env("npm_config_cache", tmp.path().join("cache"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "npm install --package-lock-only: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&pkg).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            files.push((name, std::fs::read_to_string(&path).unwrap(), false));
        }
    }
    files
}

/// `pip download` of one file, through the machine's pip configuration,
/// kept between runs.
pub fn pypi_file(requirement: &str, binary: bool, file: &str) -> PathBuf {
    let cache = cache_dir("pypi");
    let path = cache.join(file);
    if !path.exists() {
        let format = if binary {
            "--only-binary"
        } else {
            "--no-binary"
        };
        let out = Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "-q",
                format,
                ":all:",
                "-d",
            ])
            .arg(&cache)
            .arg(requirement)
            .output()
            .unwrap();
        assert!(
            out.status.success() && path.exists(),
            "pip download {requirement}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    path
}

/// An sdist's files, as its repository would hold them.
pub fn sdist_files(sdist: &Path) -> Vec<(String, String, bool)> {
    let tmp = tempfile::tempdir().unwrap();
    assert!(Command::new("tar")
        .arg("-xzf")
        .arg(sdist)
        .arg("-C")
        .arg(tmp.path())
        .status()
        .unwrap()
        .success());
    let root = std::fs::read_dir(tmp.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                files.push((rel, std::fs::read_to_string(&path).unwrap(), false));
            }
        }
    }
    files
}

/// Lower-case hex SHA-256 of a file.
pub fn sha256_hex(path: &Path) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}
