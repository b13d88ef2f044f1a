//! Fixture repositories served by a real `git daemon` on 127.0.0.1.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use builder::{BuildOutcome, BuildSpec, BuilderConfig, Limits};
use sha2::{Digest, Sha256};

/// A `git daemon` exporting every repository under its temp dir.
pub struct GitServer {
    pub base: tempfile::TempDir,
    pub port: u16,
    daemon: Child,
}

impl GitServer {
    pub fn start() -> GitServer {
        let base = tempfile::tempdir().unwrap();
        let port = free_port();
        // `git daemon` forks git-daemon and killing `git` would leave the
        // daemon behind: run the daemon itself, so Drop stops it.
        let exec_path = Command::new("git").arg("--exec-path").output().unwrap();
        let exec_path = String::from_utf8(exec_path.stdout).unwrap();
        let daemon = Command::new(std::path::Path::new(exec_path.trim()).join("git-daemon"))
            .arg("--reuseaddr")
            .arg("--export-all")
            .arg("--informative-errors")
            .arg(format!("--base-path={}", base.path().display()))
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(base.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon");
        let until = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "git daemon did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        GitServer { base, port, daemon }
    }

    /// [`GitServer::repo`] for owned file lists.
    pub fn repo_of(&self, name: &str, files: &[(String, String, bool)]) -> (String, String) {
        let refs: Vec<(&str, &str, bool)> = files
            .iter()
            .map(|(n, c, x)| (n.as_str(), c.as_str(), *x))
            .collect();
        self.repo(name, &refs)
    }

    /// Creates repository `name` with `files` (path, content, executable) in
    /// one commit dated `date` and returns its URL and commit id.
    pub fn repo(&self, name: &str, files: &[(&str, &str, bool)]) -> (String, String) {
        let dir = self.base.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        git(&dir, &["init", "-q", "-b", "main"]);
        for (path, content, exec) in files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, content).unwrap();
            if *exec {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        git(&dir, &["add", "-A"]);
        git(&dir, &["commit", "-q", "-m", "fixture"]);
        let commit = git(&dir, &["rev-parse", "HEAD"]);
        (format!("git://127.0.0.1:{}/{name}", self.port), commit)
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Fixture")
        .env("GIT_AUTHOR_EMAIL", "fixture@example.invalid")
        .env("GIT_COMMITTER_NAME", "Fixture")
        .env("GIT_COMMITTER_EMAIL", "fixture@example.invalid")
        .env("GIT_AUTHOR_DATE", "2024-03-01T12:00:00Z")
        .env("GIT_COMMITTER_DATE", "2024-03-01T12:00:00Z")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn spec(ecosystem: &str, name: &str, version: &str, url: &str, commit: &str) -> BuildSpec {
    BuildSpec {
        ecosystem: ecosystem.to_string(),
        name: name.to_string(),
        version: version.to_string(),
        repo_url: url.to_string(),
        commit: commit.to_string(),
        recipe: ecosystem.to_string(),
    }
}

pub fn config(work_dir: &Path) -> BuilderConfig {
    BuilderConfig {
        work_dir: work_dir.to_path_buf(),
        limits: Limits {
            time: Duration::from_secs(300),
            memory_bytes: 2 << 30,
            disk_bytes: 512 << 20,
            max_processes: 512,
            source_bytes: 64 << 20,
        },
        upstreams: Vec::new(),
        normaliser: None,
    }
}

pub fn sha256(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// (name, sha256) of every output.
pub fn digests(outcome: &BuildOutcome) -> Vec<(String, String)> {
    outcome
        .outputs
        .iter()
        .map(|o| (o.name.clone(), sha256(&o.path)))
        .collect()
}

pub fn log_of(outcome: &BuildOutcome) -> String {
    std::fs::read_to_string(&outcome.log_path).unwrap_or_default()
}

/// Builds `spec` twice with `upstreams` for the dependency step, in work
/// directories at different depths, asserts identical outputs and returns
/// both outcomes, with the directory that holds them.
pub fn build_twice_with(
    spec: &BuildSpec,
    upstreams: &[builder::Upstream],
) -> (tempfile::TempDir, [BuildOutcome; 2]) {
    let tmp = tempfile::tempdir().unwrap();
    let build = |work: &str| {
        let mut cfg = config(&tmp.path().join(work));
        cfg.upstreams = upstreams.to_vec();
        builder::build(spec, &cfg).unwrap_or_else(|e| panic!("{e}\n{}", read_log(&e)))
    };
    let both = [build("a"), build("b/deeper")];
    assert_eq!(
        digests(&both[0]),
        digests(&both[1]),
        "builds differ\n--- first log\n{}\n--- second log\n{}",
        log_of(&both[0]),
        log_of(&both[1])
    );
    (tmp, both)
}

/// One upstream, for [`build_twice_with`].
pub fn registry(name: &str, url: &str) -> builder::Upstream {
    builder::Upstream {
        name: name.to_string(),
        url: url.to_string(),
    }
}

/// Builds `spec` twice, in work directories at different depths and at
/// clone times at least a second apart, and asserts identical outputs.
pub fn build_twice_identical(spec: &BuildSpec) -> Vec<(String, String)> {
    let tmp = tempfile::tempdir().unwrap();
    let first_dir = tmp.path().join("a");
    let second_dir: PathBuf = tmp.path().join("second").join("deeper-work-dir");
    let first = builder::build(spec, &config(&first_dir))
        .unwrap_or_else(|e| panic!("first build of {}: {e}\n{}", spec.name, read_log(&e)));
    std::thread::sleep(Duration::from_millis(1100));
    let second = builder::build(spec, &config(&second_dir))
        .unwrap_or_else(|e| panic!("second build of {}: {e}\n{}", spec.name, read_log(&e)));
    let (a, b) = (digests(&first), digests(&second));
    assert_eq!(
        a,
        b,
        "builds differ\n--- first log\n{}\n--- second log\n{}",
        log_of(&first),
        log_of(&second)
    );
    assert_ne!(first.build_dir(), second.build_dir());
    assert!(first.build_env.contains("sandbox="), "{}", first.build_env);
    a
}

pub fn read_log(e: &builder::BuildError) -> String {
    e.log_path()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default()
}
