//! The gateway with real clients (npm, pip, mvn, skopeo, headless
//! Chromium) on real processes: a validator, two stores, a certified trusted
//! node's gateway importing from a local upstream of real packages, and the
//! node's own gateway, which has no upstream and gets everything from its
//! peer; then, with the upstream, the peer and the validator gone, the same
//! installs from what the node's gateway verified and kept.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../builder/tests/support/packages.rs"]
mod packages;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{ServicePlan, Testnet};

/// Direct dependencies of the npm project: a tree of 27 packages, three of
/// them scoped, two names at two versions.
const NPM_DEPENDENCIES: &[(&str, &str)] = &[("yargs", "17.7.2"), ("@babel/code-frame", "7.24.7")];
const PYPI_FILES: &[(&str, bool, &str)] = &[
    ("six==1.16.0", true, "six-1.16.0-py2.py3-none-any.whl"),
    ("six==1.16.0", false, "six-1.16.0.tar.gz"),
    ("idna==3.7", true, "idna-3.7-py3-none-any.whl"),
];
const OCI_IMAGE: (&str, &str) = ("test/hello", "1.0");
const DEPENDENCY_PLUGIN: &str = "org.apache.maven.plugins:maven-dependency-plugin:2.8:get";

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap()
}

fn ok(what: &str, out: &Output) {
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

/// Every package of the project's tree, as `npm pack` files through the
/// machine's npm configuration (kept between runs).
fn npm_tree() -> Vec<PathBuf> {
    let cache = packages::cache_dir("npm");
    let lock = cache.join("gateway-tree-lock.json");
    if !lock.exists() {
        let dir = tempfile::tempdir().unwrap();
        write_npm_project(dir.path());
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

fn write_npm_project(dir: &Path) {
    let deps: serde_json::Map<String, serde_json::Value> = NPM_DEPENDENCIES
        .iter()
        .map(|(n, v)| ((*n).to_owned(), serde_json::json!(v)))
        .collect();
    let manifest = serde_json::json!({"name": "gateway-test", "version": "1.0.0", "private": true, "dependencies": deps});
    std::fs::write(dir.join("package.json"), manifest.to_string()).unwrap();
}

/// The local upstream: npm, PyPI, Maven and OCI from directories.
struct Upstream {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
    npm: PathBuf,
}

impl Upstream {
    fn start() -> Upstream {
        let dir = tempfile::tempdir().unwrap();
        let npm = dir.path().join("npm");
        let pypi = dir.path().join("pypi");
        let oci = dir.path().join("oci");
        for d in [&npm, &pypi, &oci] {
            std::fs::create_dir_all(d).unwrap();
        }
        for f in npm_tree() {
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
                .args([OCI_IMAGE.0, OCI_IMAGE.1])),
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
        let until = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(&port_file) {
                break p;
            }
            assert!(Instant::now() < until, "the upstream did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
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

fn http_get(url: &str, accept: &str) -> (u16, String) {
    match ureq::get(url).set("accept", accept).call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

fn wait_http(url: &str) {
    let until = Instant::now() + Duration::from_secs(120);
    while ureq::get(url).call().is_err() {
        assert!(Instant::now() < until, "{url} did not answer");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The clients, each in its own fresh directory and cache.
struct Clients {
    dir: tempfile::TempDir,
}

impl Clients {
    fn new() -> Clients {
        Clients {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn fresh(&self, name: &str) -> PathBuf {
        let d = self.dir.path().join(name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn npm(&self, dir: &Path, cache: &Path, registry: &str, args: &[&str]) -> Output {
        run(Command::new("npm")
            .args(args)
            .arg(format!("--registry={registry}/npm/"))
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

    fn pip(&self, gateway: &str, args: &[&str]) -> Output {
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

    fn mvn(&self, dir: &Path, gateway: &str, repo: &Path, args: &[&str]) -> Output {
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

    fn skopeo(&self, gateway: &str, dest: &Path) -> Output {
        let host = gateway.trim_start_matches("http://");
        run(Command::new("skopeo")
            .args(["copy", "--all", "--src-tls-verify=false"])
            .arg(format!("docker://{host}/{}:{}", OCI_IMAGE.0, OCI_IMAGE.1))
            .arg(format!("oci:{}:{}", dest.display(), OCI_IMAGE.1)))
    }

    /// Every client's install through `gateway`, each from nothing.
    fn install_all(&self, gateway: &str, lockfile: Option<&Path>) -> PathBuf {
        // npm: install resolves the tree; ci installs a lockfile exactly.
        let project = self.fresh("npm-project");
        write_npm_project(&project);
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

fn gateway_fields(
    port: u16,
    store: &str,
    cache: &str,
    min_trust: &str,
) -> Vec<(&'static str, toml_edit::Value)> {
    vec![
        ("listen", format!("127.0.0.1:{port}").into()),
        ("store", store.into()),
        ("cache_dir", cache.into()),
        ("min_trust", min_trust.into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_clients_install_through_imports_from_peers_and_offline() {
    let upstream = Upstream::start();
    let mut net = Testnet::start_with_services(ServicePlan {
        trusted_builders: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let ports = support::free_port_run(3).unwrap();
    let (node_gw, importer_gw, strict_gw) = (
        format!("http://127.0.0.1:{ports}"),
        format!("http://127.0.0.1:{}", ports + 1),
        format!("http://127.0.0.1:{}", ports + 2),
    );
    net.set_gateway("main", &gateway_fields(ports, "node", "gateway", "trusted"))
        .unwrap();
    let mut importer = gateway_fields(ports + 1, "trusted0", "gateway-importer", "trusted");
    importer.push(("key_file", "builders/trusted0/key.json".into()));
    let mut upstreams = toml_edit::InlineTable::new();
    for (name, path) in [
        ("npm", "/npm"),
        ("pypi", "/pypi"),
        ("maven", "/maven"),
        ("oci", ""),
    ] {
        upstreams.insert(name, format!("{}{path}", upstream.url).into());
    }
    importer.push(("upstreams", toml_edit::Value::InlineTable(upstreams)));
    net.set_gateway("importer", &importer).unwrap();
    net.set_gateway(
        "strict",
        &gateway_fields(ports + 2, "node", "gateway-strict", "reproducible"),
    )
    .unwrap();
    for s in [
        "store:node",
        "store:trusted0",
        "gateway:main",
        "gateway:importer",
        "gateway:strict",
    ] {
        net.start_service(s).unwrap();
    }
    for gw in [&node_gw, &importer_gw, &strict_gw] {
        wait_http(&format!("{gw}/v2/"));
    }
    let clients = Clients::new();

    // 1. Through the trusted node: every miss is imported from the upstream.
    let lockfile = clients.install_all(&importer_gw, None);
    let lock = std::fs::read(&lockfile).unwrap();
    let kept_lock = clients.dir.path().join("package-lock.json");
    std::fs::write(&kept_lock, &lock).unwrap();
    let lock_doc: serde_json::Value = serde_json::from_slice(&lock).unwrap();
    let packages = lock_doc["packages"].as_object().unwrap().len() - 1;
    assert!(packages >= 20, "{packages} packages in the tree");

    // The imports are on the ledger, trusted, attested by the trusted node.
    let mut verified = net.verified(0).unwrap();
    let yargs = pyrsia_chain::PackageId {
        ecosystem: "npm".into(),
        name: "yargs".into(),
        version: "17.7.2".into(),
    };
    let builds = verified
        .package_builds(&yargs, pyrsia_ledger_client::verified::At::Latest)
        .await
        .unwrap()
        .builds;
    assert_eq!(builds.len(), 1);
    assert_eq!(builds[0].level, pyrsia_chain::TrustLevel::Trusted);
    let trusted_key = net.builder_key("trusted0").unwrap().public();
    assert_eq!(builds[0].attestations[0].attester, trusted_key);

    // Versions are immutable: the upstream changes the bytes of an imported
    // version, and the gateway still describes and serves the imported ones.
    let (_, before) = http_get(&format!("{importer_gw}/npm/yargs"), "application/json");
    let before: serde_json::Value = serde_json::from_str(&before).unwrap();
    let integrity = before["versions"]["17.7.2"]["dist"]["integrity"].clone();
    let tarball = upstream.npm.join("yargs-17.7.2.tgz");
    let original = std::fs::read(&tarball).unwrap();
    {
        let (_tmp, root) = packages::unpack_root(&tarball);
        std::fs::write(root.join("README.md"), "changed upstream").unwrap();
        ok(
            "repacking",
            &run(Command::new("tar")
                .arg("-czf")
                .arg(&tarball)
                .arg("-C")
                .arg(root.parent().unwrap())
                .arg("package")),
        );
    }
    let (_, upstream_doc) = http_get(&format!("{}/npm/yargs", upstream.url), "application/json");
    let upstream_doc: serde_json::Value = serde_json::from_str(&upstream_doc).unwrap();
    assert_ne!(
        upstream_doc["versions"]["17.7.2"]["dist"]["integrity"],
        integrity
    );
    let (_, after) = http_get(&format!("{importer_gw}/npm/yargs"), "application/json");
    let after: serde_json::Value = serde_json::from_str(&after).unwrap();
    assert_eq!(after["versions"]["17.7.2"]["dist"]["integrity"], integrity);
    std::fs::write(&tarball, original).unwrap();

    // 2. Through the node's own gateway: no upstream, everything from its peer.
    clients.install_all(&node_gw, Some(&kept_lock));

    // 3. A gateway whose minimum is `reproducible` refuses the trusted
    // imports, and the client prints the level.
    let project = clients.fresh("strict");
    let cache = clients.fresh("strict-cache");
    let out = clients.npm(&project, &cache, &strict_gw, &["install", "yargs@17.7.2"]);
    assert!(!out.status.success());
    let printed = String::from_utf8_lossy(&out.stderr);
    assert!(
        printed.contains("403") && printed.contains("trusted") && printed.contains("reproducible"),
        "{printed}"
    );
    let out = clients.pip(
        &strict_gw,
        &[
            "download",
            "--no-deps",
            "-d",
            clients.fresh("strict-pip").to_str().unwrap(),
            "idna==3.7",
        ],
    );
    assert!(!out.status.success());
    let printed =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("403"), "{printed}");

    // 4. The explorer, in headless Chromium: the request, its level, its attester.
    let shots = std::env::var_os("PYRSIA_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| clients.dir.path().to_owned());
    std::fs::create_dir_all(&shots).unwrap();
    let dom = chromium_dom(
        &format!("{node_gw}/-/package/npm/yargs"),
        &shots.join("explorer-package.png"),
    );
    let id = builds[0].id.to_string();
    assert!(dom.contains(&format!("data-request=\"{id}\"")), "{dom}");
    assert!(dom.contains("data-level=\"trusted\""), "{dom}");
    assert!(
        dom.contains(&trusted_key.to_string()) && dom.contains("certified trusted node"),
        "{dom}"
    );
    let home = chromium_dom(&format!("{node_gw}/"), &shots.join("explorer.png"));
    assert!(
        home.contains("id=\"validators\"") && home.contains("class=\"request\""),
        "{home}"
    );
    let search = chromium_dom(
        &format!("{node_gw}/-/search?q=yargs"),
        &shots.join("explorer-search.png"),
    );
    assert!(search.contains("/-/package/npm/yargs"), "{search}");

    // 5. Offline: the upstream, the peer and the validator are gone.
    drop(upstream);
    for s in ["gateway:importer", "store:trusted0"] {
        net.kill_service(s).unwrap();
    }
    net.stop_validator(0).unwrap();
    clients.install_all(&node_gw, Some(&kept_lock));
    let log = net.service_log("gateway:main");
    assert!(
        log.contains("offline"),
        "the gateway's log does not say it is offline"
    );
}

/// The DOM of `url` after headless Chromium loaded it, and a screenshot.
fn chromium_dom(url: &str, screenshot: &Path) -> String {
    let profile = tempfile::tempdir().unwrap();
    let common = |cmd: &mut Command| {
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()));
    };
    let mut shot = Command::new("chromium");
    common(&mut shot);
    shot.arg(format!("--screenshot={}", screenshot.display()))
        .args(["--window-size=1280,900", url]);
    ok("chromium --screenshot", &run(&mut shot));
    assert!(screenshot.exists());
    let mut dump = Command::new("chromium");
    common(&mut dump);
    dump.args(["--dump-dom", url]);
    let out = run(&mut dump);
    ok("chromium --dump-dom", &out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}
