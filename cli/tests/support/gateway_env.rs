//! The gateway tests' environment, shared by `cli/tests/gateway.rs` and the
//! gateway benchmark: a local upstream of real packages and the real
//! clients, each run from nothing.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::{packages, support};

/// Direct dependencies of the test's npm project: a tree of 27 packages,
/// three of them scoped, two names at two versions.
pub const NPM_DEPENDENCIES: &[(&str, &str)] =
    &[("yargs", "17.7.2"), ("@babel/code-frame", "7.24.7")];
pub const PYPI_FILES: &[(&str, bool, &str)] = &[
    ("six==1.16.0", true, "six-1.16.0-py2.py3-none-any.whl"),
    ("six==1.16.0", false, "six-1.16.0.tar.gz"),
    ("idna==3.7", true, "idna-3.7-py3-none-any.whl"),
];
pub const OCI_IMAGE: (&str, &str) = ("test/hello", "1.0");
pub const DEPENDENCY_PLUGIN: &str = "org.apache.maven.plugins:maven-dependency-plugin:2.8:get";

pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap()
}

pub fn ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Every package of the tree of a project with `deps`, as `npm pack` files
/// through the machine's npm configuration (kept between runs, the
/// lockfile as `lock_name`).
pub fn npm_tree(deps: &[(&str, &str)], lock_name: &str) -> Vec<PathBuf> {
    let cache = packages::cache_dir("npm");
    let lock = cache.join(lock_name);
    if !lock.exists() {
        let dir = tempfile::tempdir().unwrap();
        write_npm_project(dir.path(), deps);
        ok(
            "npm install --package-lock-only",
            &run(Command::new("npm")
                .args([
                    "install",
                    "--package-lock-only",
                    "--ignore-scripts",
                    "--no-audit",
                    "--no-fund",
                ])
                .current_dir(dir.path())),
        );
        std::fs::copy(dir.path().join("package-lock.json"), &lock).unwrap();
    }
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&lock).unwrap()).unwrap();
    let mut files = Vec::new();
    for (path, entry) in doc["packages"].as_object().unwrap() {
        let Some(at) = path.rfind("node_modules/") else {
            continue;
        };
        let name = &path[at + "node_modules/".len()..];
        let version = entry["version"].as_str().unwrap();
        let file = cache.join(format!(
            "{}-{version}.tgz",
            name.trim_start_matches('@').replace('/', "-")
        ));
        if !file.exists() {
            ok(
                "npm pack",
                &run(Command::new("npm")
                    .args(["pack", &format!("{name}@{version}"), "--silent"])
                    .current_dir(&cache)),
            );
        }
        assert!(file.exists(), "{}", file.display());
        if !files.contains(&file) {
            files.push(file);
        }
    }
    files
}

pub fn write_npm_project(dir: &Path, deps: &[(&str, &str)]) {
    let deps: serde_json::Map<String, serde_json::Value> = deps
        .iter()
        .map(|(n, v)| ((*n).to_owned(), serde_json::json!(v)))
        .collect();
    let manifest = serde_json::json!({"name": "gateway-test", "version": "1.0.0", "private": true, "dependencies": deps});
    std::fs::write(dir.join("package.json"), manifest.to_string()).unwrap();
}

/// The local upstream: npm, PyPI, Maven and OCI from directories.
pub struct Upstream {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
    pub npm: PathBuf,
}

impl Upstream {
    /// Serves the tree of an npm project with `npm_deps`, and the PyPI,
    /// Maven and OCI packages the test installs.
    pub fn start(npm_deps: &[(&str, &str)], lock_name: &str) -> Upstream {
        Upstream::start_with(npm_deps, lock_name, 0)
    }

    /// [`Upstream::start`], the image's amd64 platform with one more layer
    /// of `big_layer` random bytes if it is not 0.
    pub fn start_with(npm_deps: &[(&str, &str)], lock_name: &str, big_layer: u64) -> Upstream {
        let dir = tempfile::tempdir().unwrap();
        let npm = dir.path().join("npm");
        let pypi = dir.path().join("pypi");
        let oci = dir.path().join("oci");
        for d in [&npm, &pypi, &oci] {
            std::fs::create_dir_all(d).unwrap();
        }
        for f in npm_tree(npm_deps, lock_name) {
            std::fs::copy(&f, npm.join(f.file_name().unwrap())).unwrap();
        }
        for (req, binary, file) in PYPI_FILES {
            std::fs::copy(packages::pypi_file(req, *binary, file), pypi.join(file)).unwrap();
        }
        // What building the Maven project and `dependency:get` need, as the
        // machine's Maven fetched it into local repositories.
        let project = packages::maven_project_files();
        let maven = [
            packages::maven_upstream_repository(&project),
            packages::cache_dir("maven").join("published"),
        ];
        assert!(maven[1]
            .join("org/apache/maven/plugins/maven-dependency-plugin/2.8")
            .is_dir());
        let script = support::repo_root().join("cli/tests/support/gateway_upstream.py");
        ok(
            "making the OCI image",
            &run(Command::new("python3")
                .arg(&script)
                .arg("make-oci")
                .arg(&oci)
                .args([OCI_IMAGE.0, OCI_IMAGE.1, &big_layer.to_string()])),
        );
        let config = dir.path().join("config.json");
        std::fs::write(
            &config,
            serde_json::json!({"npm": npm, "pypi": pypi, "maven": maven, "oci": oci}).to_string(),
        )
        .unwrap();
        let port_file = dir.path().join("port");
        let child = Command::new("python3")
            .arg(&script)
            .arg(&config)
            .arg(&port_file)
            .spawn()
            .unwrap();
        let port = support::try_eventually_blocking(
            Duration::from_secs(20),
            "the upstream to write its port",
            || std::fs::read_to_string(&port_file).map_err(|e| e.to_string()),
        )
        .unwrap();
        Upstream {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
            npm,
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http_get(url: &str, accept: &str) -> (u16, String) {
    match ureq::get(url).set("accept", accept).call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

pub fn wait_http(url: &str) {
    support::try_eventually_blocking(
        Duration::from_secs(120),
        &format!("{url} to answer"),
        || ureq::get(url).call().map(drop).map_err(|e| e.to_string()),
    )
    .unwrap();
}

/// The clients, each in its own fresh directory and cache.
pub struct Clients {
    pub dir: tempfile::TempDir,
}

impl Clients {
    pub fn new() -> Clients {
        Clients {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn fresh(&self, name: &str) -> PathBuf {
        let d = self.dir.path().join(name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// npm with the gateway at `registry` (its npm front-end is `/npm/`).
    pub fn npm(&self, dir: &Path, cache: &Path, registry: &str, args: &[&str]) -> Output {
        self.npm_registry(dir, cache, &format!("{registry}/npm/"), args)
    }

    /// npm with `registry` as its full registry URL.
    pub fn npm_registry(&self, dir: &Path, cache: &Path, registry: &str, args: &[&str]) -> Output {
        run(Command::new("npm")
            .args(args)
            .arg(format!("--registry={registry}"))
            .arg(format!("--cache={}", cache.display()))
            .args([
                "--no-audit",
                "--no-fund",
                "--ignore-scripts",
                "--fetch-retries=0",
                "--replace-registry-host=always",
            ])
            .current_dir(dir))
    }

    pub fn pip(&self, gateway: &str, args: &[&str]) -> Output {
        run(Command::new("python3")
            .args(["-m", "pip"])
            .args(args)
            .args([
                "--no-cache-dir",
                "--disable-pip-version-check",
                "--retries",
                "0",
                "--index-url",
            ])
            .arg(format!("{gateway}/pypi/simple/")))
    }

    pub fn mvn(&self, dir: &Path, gateway: &str, repo: &Path, args: &[&str]) -> Output {
        let settings = dir.join("settings.xml");
        std::fs::write(
            &settings,
            format!(
                "<settings><mirrors><mirror><id>pyrsia</id><mirrorOf>*</mirrorOf><url>{gateway}/maven/</url></mirror></mirrors></settings>"
            ),
        )
        .unwrap();
        run(Command::new("mvn")
            .args(["-B", "-ntp", "-s"])
            .arg(&settings)
            .arg(format!("-Dmaven.repo.local={}", repo.display()))
            .args(args)
            .current_dir(dir))
    }

    pub fn skopeo(&self, gateway: &str, dest: &Path) -> Output {
        let host = gateway.trim_start_matches("http://");
        run(Command::new("skopeo")
            .args(["copy", "--all", "--src-tls-verify=false"])
            .arg(format!("docker://{host}/{}:{}", OCI_IMAGE.0, OCI_IMAGE.1))
            .arg(format!("oci:{}:{}", dest.display(), OCI_IMAGE.1)))
    }

    /// Every client's install through `gateway`, each from nothing.
    pub fn install_all(&self, gateway: &str, lockfile: Option<&Path>) -> PathBuf {
        // npm: install resolves the tree; ci installs a lockfile exactly.
        let project = self.fresh("npm-project");
        write_npm_project(&project, NPM_DEPENDENCIES);
        let cache = self.fresh("npm-cache");
        match lockfile {
            None => ok(
                "npm install",
                &self.npm(&project, &cache, gateway, &["install"]),
            ),
            Some(lock) => {
                std::fs::copy(lock, project.join("package-lock.json")).unwrap();
                ok("npm ci", &self.npm(&project, &cache, gateway, &["ci"]));
            }
        }
        let installed = std::fs::read_dir(project.join("node_modules"))
            .unwrap()
            .count();
        assert!(installed >= 20, "{installed} entries in node_modules");
        assert!(project
            .join("node_modules/@babel/code-frame/package.json")
            .exists());

        // pip: wheels installed, an sdist and a wheel downloaded.
        let target = self.fresh("pip-target");
        ok(
            "pip install",
            &self.pip(
                gateway,
                &[
                    "install",
                    "--target",
                    target.to_str().unwrap(),
                    "six==1.16.0",
                    "idna==3.7",
                ],
            ),
        );
        assert!(target.join("six.py").exists() && target.join("idna").is_dir());
        let downloads = self.fresh("pip-download");
        ok(
            "pip download (sdist)",
            &self.pip(
                gateway,
                &[
                    "download",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    "--no-build-isolation",
                    "-d",
                    downloads.to_str().unwrap(),
                    "six==1.16.0",
                ],
            ),
        );
        ok(
            "pip download (wheel)",
            &self.pip(
                gateway,
                &[
                    "download",
                    "--no-deps",
                    "-d",
                    downloads.to_str().unwrap(),
                    "idna==3.7",
                ],
            ),
        );
        assert!(
            downloads.join("six-1.16.0.tar.gz").exists()
                && downloads.join("idna-3.7-py3-none-any.whl").exists()
        );

        // Maven: dependency:get, and a project built through a mirror.
        let mvn_dir = self.fresh("mvn");
        let repo = self.fresh("m2");
        ok(
            "mvn dependency:get",
            &self.mvn(
                &mvn_dir,
                gateway,
                &repo,
                &[
                    DEPENDENCY_PLUGIN,
                    "-Dartifact=org.slf4j:slf4j-api:1.7.36",
                    "-Dtransitive=false",
                ],
            ),
        );
        assert!(repo
            .join("org/slf4j/slf4j-api/1.7.36/slf4j-api-1.7.36.jar")
            .exists());
        let build = self.fresh("mvn-project");
        for (path, content, _) in packages::maven_project_files() {
            let p = build.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        ok(
            "mvn package",
            &self.mvn(&build, gateway, &repo, &["-DskipTests", "package"]),
        );
        assert!(build.join("target/slf4j-simple-1.7.36.jar").exists());

        // OCI: a two-platform image index, copied whole.
        let image = self.fresh("oci-image");
        ok("skopeo copy", &self.skopeo(gateway, &image));
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(image.join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"].as_array().map(Vec::len), Some(1));
        let blobs = std::fs::read_dir(image.join("blobs/sha256"))
            .unwrap()
            .count();
        assert_eq!(blobs, 8, "index, 2 manifests, 2 configs, 3 layers");
        project.join("package-lock.json")
    }
}
