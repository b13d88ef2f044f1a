//! Source repositories for build tests, created in a temp dir and served by
//! `git daemon` on 127.0.0.1, so builders clone them by URL as they would a
//! public repository.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

/// A git daemon serving every repository under its root.
#[derive(Debug)]
pub struct GitServer {
    pub root: tempfile::TempDir,
    pub port: u16,
    daemon: Child,
}

/// A committed fixture: where to clone it and which commit to build.
#[derive(Clone, Debug)]
pub struct Fixture {
    pub ecosystem: &'static str,
    pub name: String,
    pub version: String,
    pub url: String,
    pub commit: String,
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=Pyrsia Test",
            "-c",
            "user.email=test@pyrsia.invalid",
        ])
        .args(args)
        .output()
        .with_context(|| format!("git {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl GitServer {
    pub fn start() -> Result<GitServer> {
        let root = tempfile::tempdir()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        // `git daemon` forks git-daemon and killing `git` would leave the
        // daemon behind: run the daemon itself, so Drop stops it.
        let exec_path = git(root.path(), &["--exec-path"])?;
        let daemon = Command::new(Path::new(&exec_path).join("git-daemon"))
            .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", root.path().display()))
            .arg(root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting git daemon")?;
        let server = GitServer { root, port, daemon };
        super::try_eventually_blocking(
            Duration::from_secs(20),
            &format!("git daemon to listen on 127.0.0.1:{port}"),
            || std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string()),
        )?;
        Ok(server)
    }

    /// Commits `files` as repository `repo` and returns the fixture.
    pub fn publish(
        &self,
        ecosystem: &'static str,
        name: &str,
        version: &str,
        files: &[(&str, String)],
    ) -> Result<Fixture> {
        let repo = format!("{ecosystem}-{name}-{version}.git");
        let dir = self.root.path().join(&repo);
        std::fs::create_dir_all(&dir)?;
        git(&dir, &["init", "-q", "-b", "main"])?;
        for (path, content) in files {
            let file = dir.join(path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&file, content)?;
        }
        git(&dir, &["add", "-A"])?;
        git(&dir, &["commit", "-q", "-m", "fixture"])?;
        let commit = git(&dir, &["rev-parse", "HEAD"])?;
        Ok(Fixture {
            ecosystem,
            name: name.to_owned(),
            version: version.to_owned(),
            url: format!("git://127.0.0.1:{}/{repo}", self.port),
            commit,
        })
    }

    /// A `script` package: a deterministic tar of `mib` MiB of generated data
    /// (several stripes, so a fetch can draw on several peers).
    pub fn script_package(&self, name: &str, version: &str, mib: usize) -> Result<Fixture> {
        let build = format!(
            "set -eu\nmkdir -p out\npython3 -c 'import hashlib,sys\nb=b\"\"\nh=b\"{name}\"\nwhile len(b)<{mib}*1048576:\n  h=hashlib.sha256(h).digest(); b+=h*32\nsys.stdout.buffer.write(b[:{mib}*1048576])' > data.bin\n\
             tar --sort=name --mtime=@$SOURCE_DATE_EPOCH --owner=0 --group=0 --numeric-owner -cf out/{name}-{version}.tar data.bin README\n"
        );
        self.publish(
            "script",
            name,
            version,
            &[
                (
                    "pyrsia-build.toml",
                    format!("command = [\"sh\", \"build.sh\"]\noutputs = [\"out/{name}-{version}.tar\"]\n"),
                ),
                ("build.sh", build),
                ("README", format!("{name} {version}\n")),
            ],
        )
    }

    /// A `script` package whose build runs `command` (a shell line) and
    /// outputs `out/result`.
    pub fn script_running(&self, name: &str, version: &str, command: &str) -> Result<Fixture> {
        self.publish(
            "script",
            name,
            version,
            &[
                (
                    "pyrsia-build.toml",
                    "command = [\"sh\", \"build.sh\"]\noutputs = [\"out/result\"]\n".to_owned(),
                ),
                ("build.sh", format!("set -eu\nmkdir -p out\n{command}\n")),
            ],
        )
    }

    pub fn npm_package(&self, name: &str, version: &str) -> Result<Fixture> {
        self.publish(
            "npm",
            name,
            version,
            &[
                (
                    "package.json",
                    format!(
                        "{{\n  \"name\": \"{name}\",\n  \"version\": \"{version}\",\n  \"main\": \"index.js\",\n  \"license\": \"MIT\"\n}}\n"
                    ),
                ),
                ("index.js", "module.exports = (a, b) => a + b;\n".to_owned()),
                ("README.md", format!("# {name}\n")),
            ],
        )
    }

    pub fn cargo_package(&self, name: &str, version: &str) -> Result<Fixture> {
        self.publish(
            "cargo",
            name,
            version,
            &[
                (
                    "Cargo.toml",
                    format!(
                        "[package]\nname = \"{name}\"\nversion = \"{version}\"\nedition = \"2021\"\nlicense = \"MIT\"\ndescription = \"fixture\"\n"
                    ),
                ),
                ("src/lib.rs", "pub fn add(a: u32, b: u32) -> u32 { a + b }\n".to_owned()),
            ],
        )
    }

    pub fn python_package(&self, name: &str, version: &str) -> Result<Fixture> {
        let module = name.replace('-', "_");
        self.publish(
            "python",
            name,
            version,
            &[
                (
                    "pyproject.toml",
                    format!(
                        "[build-system]\nrequires = [\"setuptools>=61\"]\nbuild-backend = \"setuptools.build_meta\"\n\n[project]\nname = \"{name}\"\nversion = \"{version}\"\ndescription = \"fixture\"\n"
                    ),
                ),
                (&format!("src/{module}/__init__.py"), "def add(a, b):\n    return a + b\n".to_owned()),
            ],
        )
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}
