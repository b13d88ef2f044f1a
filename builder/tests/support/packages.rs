//! Real packages for tests: fetched at test time by the ordinary clients
//! (npm, pip) through the machine's own configuration, cached under
//! `$HOME/.cache/pyrsia-test-packages`, and served by local registries on
//! 127.0.0.1 (`npm_upstream.py`, `pypi_upstream.py` next to this file).
//! Shared by the builder's tests and the CLI's end-to-end tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

/// Unpacks a `.tgz`/`.tar.gz`/`.crate` whose entries share one top
/// directory; returns the temporary directory and that top directory.
pub fn unpack_root(archive: &Path) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    assert!(Command::new("tar")
        .arg("-xzf")
        .arg(archive)
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
    (tmp, root)
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
    let (tmp, pkg) = unpack_root(tarball);
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
    let (_tmp, root) = unpack_root(sdist);
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

/// A real crate with one normal dependency, which has none of its own;
/// neither has dev-dependencies.
pub const CRATE_PACKAGE: (&str, &str) = ("form_urlencoded", "1.2.2");
pub const CRATE_DEPENDENCY: (&str, &str) = ("percent-encoding", "2.3.2");

/// The .crate files of the package and its dependency, as `cargo fetch`
/// over a throwaway project gets them through the machine's configuration
/// (a throwaway CARGO_HOME, kept between runs).
pub fn crate_files() -> Vec<PathBuf> {
    let home = cache_dir("cargo").join("home");
    fetch_crates(&home, &[CRATE_PACKAGE, CRATE_DEPENDENCY]).unwrap()
}

/// Where `cargo` keeps the .crate `file` it downloaded into `home`.
pub fn cached_crate(home: &Path, file: &str) -> Option<PathBuf> {
    let registries = std::fs::read_dir(home.join("registry/cache")).ok()?;
    registries
        .flatten()
        .map(|e| e.path().join(file))
        .find(|p| p.is_file())
}

/// Every .crate `cargo` downloaded into `home`.
pub fn cached_crates(home: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    for registry in std::fs::read_dir(home.join("registry/cache"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for f in std::fs::read_dir(registry.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if f.path().extension().is_some_and(|e| e == "crate") {
                all.push(f.path());
            }
        }
    }
    all.sort();
    all
}

/// `cargo fetch` in `dir` with CARGO_HOME `home`, through the machine's
/// configuration otherwise; the last lines of its error if it fails.
pub fn cargo_fetch(home: &Path, dir: &Path) -> Result<(), String> {
    let out = Command::new("cargo")
        .arg("fetch")
        .current_dir(dir)
        .env("CARGO_HOME", home)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = err.lines().rev().take(3).collect();
    Err(format!("cargo fetch: {}", tail.join(" / ")))
}

/// The .crate files of `crates` (exact versions), through `cargo fetch` over
/// a throwaway project with CARGO_HOME `home`, kept between runs.
pub fn fetch_crates(home: &Path, crates: &[(&str, &str)]) -> Result<Vec<PathBuf>, String> {
    let find = || -> Option<Vec<PathBuf>> {
        crates
            .iter()
            .map(|(n, v)| cached_crate(home, &format!("{n}-{v}.crate")))
            .collect()
    };
    if let Some(found) = find() {
        return Ok(found);
    }
    let probe = tempfile::tempdir().unwrap();
    let project = probe.path();
    std::fs::create_dir_all(project.join("src")).unwrap();
    std::fs::write(project.join("src/lib.rs"), "").unwrap();
    let deps: String = crates
        .iter()
        .map(|(n, v)| format!("{n} = \"={v}\"\n"))
        .collect();
    std::fs::write(
        project.join("Cargo.toml"),
        format!(
            "[package]\nname = \"probe\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n[dependencies]\n{deps}"
        ),
    )
    .unwrap();
    cargo_fetch(home, project)?;
    find().ok_or_else(|| "cargo fetch left no .crate files".to_string())
}

/// What `cargo package` writes into a .crate itself and refuses to find in
/// a source.
pub const CARGO_PACKAGE_WRITES: [&str; 2] = ["Cargo.toml.orig", ".cargo_vcs_info.json"];

/// The package's published .crate as a source tree: its (normalised)
/// Cargo.toml, sources and licence files, with or without the Cargo.lock it
/// ships. Without what `cargo package` writes itself (`Cargo.toml.orig`,
/// `.cargo_vcs_info.json`), which it refuses to find in a source.
pub fn crate_source_files(krate: &Path, with_lock: bool) -> Vec<(String, String, bool)> {
    let (_tmp, root) = unpack_root(krate);
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if path.is_dir() {
                stack.push(path);
            } else if !CARGO_PACKAGE_WRITES.contains(&rel.as_str())
                && (with_lock || rel != "Cargo.lock")
            {
                files.push((rel, std::fs::read_to_string(&path).unwrap(), false));
            }
        }
    }
    files.sort();
    files
}

/// A real library with one runtime dependency (slf4j-api), a parent pom,
/// and a build extension and plugins of its own.
pub const MAVEN_GROUP: &str = "org.slf4j";
pub const MAVEN_ARTIFACT: &str = "slf4j-simple";
pub const MAVEN_VERSION: &str = "1.7.36";
/// Its dependency, as the upstream lays it out.
pub const MAVEN_DEPENDENCY: &str = "org/slf4j/slf4j-api/1.7.36/slf4j-api-1.7.36.jar";

fn mvn(args: &[&str], dir: &Path) {
    if let Err(e) = mvn_try(args, dir) {
        panic!("{e}");
    }
}

/// `mvn -B -ntp ARGS` in `dir` through the machine's Maven configuration;
/// its `[ERROR]` lines (at most three) if it fails.
pub fn mvn_try(args: &[&str], dir: &Path) -> Result<(), String> {
    let out = Command::new("mvn")
        .args(["-B", "-ntp"])
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let errors: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("[ERROR]") && l.len() > 8)
        .take(2)
        .map(|l| l.chars().take(300).collect())
        .collect();
    let goals: Vec<&str> = args
        .iter()
        .copied()
        .filter(|a| !a.starts_with("-D"))
        .collect();
    Err(format!("mvn {}: {}", goals.join(" "), errors.join(" / ")))
}

/// `MAVEN_GROUP:MAVEN_ARTIFACT:MAVEN_VERSION:jar:<classifier>` (or `:pom`) through the
/// machine's Maven configuration, into a local repository kept between runs.
fn maven_published(kind: &str) -> PathBuf {
    maven_artifact(MAVEN_GROUP, MAVEN_ARTIFACT, MAVEN_VERSION, kind).unwrap()
}

/// `GROUP:ARTIFACT:VERSION` as `kind` `jar`, `pom` or `sources` (the
/// sources jar), through `mvn dependency:get` with the machine's Maven
/// configuration, into a local repository kept between runs.
pub fn maven_artifact(
    group: &str,
    artifact: &str,
    version: &str,
    kind: &str,
) -> Result<PathBuf, String> {
    let repo = cache_dir("maven").join("published");
    let file = repo.join(format!(
        "{}/{artifact}/{version}/{artifact}-{version}{}",
        group.replace('.', "/"),
        match kind {
            "pom" => ".pom",
            "sources" => "-sources.jar",
            _ => ".jar",
        }
    ));
    if !file.exists() {
        let coordinates = match kind {
            "pom" => format!("{group}:{artifact}:{version}:pom"),
            "sources" => format!("{group}:{artifact}:{version}:jar:sources"),
            _ => format!("{group}:{artifact}:{version}:jar"),
        };
        mvn_try(
            &[
                &format!("-Dmaven.repo.local={}", repo.display()),
                "dependency:get",
                &format!("-Dartifact={coordinates}"),
                "-Dtransitive=false",
            ],
            &cache_dir("maven"),
        )?;
        if !file.exists() {
            return Err(format!("{} missing after dependency:get", file.display()));
        }
    }
    Ok(file)
}

pub fn zip_entry(jar: &Path, name: &str) -> Vec<u8> {
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
pub fn maven_project_files() -> Vec<(String, String, bool)> {
    let mut files = Vec::new();
    let sources = maven_published("sources");
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
    let manifest =
        String::from_utf8(zip_entry(&maven_published("jar"), "META-INF/MANIFEST.MF")).unwrap();
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
    let pom = std::fs::read_to_string(maven_published("pom")).unwrap();
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
pub fn maven_upstream_repository(files: &[(String, String, bool)]) -> PathBuf {
    let repo = cache_dir("maven").join("upstream");
    let done = cache_dir("maven").join("upstream.complete");
    if !done.exists() {
        let project = tempfile::tempdir().unwrap();
        for (path, content, _) in files {
            let p = project.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        fill_maven_repository(project.path(), &repo).unwrap();
        std::fs::write(&done, "").unwrap();
    }
    repo
}

/// Adds to the Maven repository `repo` what building the project in `dir`
/// needs: an ordinary `mvn -DskipTests package` (machine's settings) with
/// `repo` as its local repository.
pub fn fill_maven_repository(dir: &Path, repo: &Path) -> Result<(), String> {
    mvn_try(
        &[
            &format!("-Dmaven.repo.local={}", repo.display()),
            "-DskipTests",
            "package",
        ],
        dir,
    )
}

pub fn maven_name() -> String {
    format!("{MAVEN_GROUP}:{MAVEN_ARTIFACT}")
}
