//! Rebuilds real packages from their registries' own archives and reports
//! three rates per ecosystem: builds that succeed, builds that are
//! byte-identical between two builders, and builds whose contents (and
//! bytes) equal the registry's published artifact. See builder/README.md.
//!
//! `./scripts/bench-rebuild.sh [CORPUS]` (default `builder/benches/corpus.tsv`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/support/packages.rs"]
mod packages;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use builder::{BuildOutcome, Upstream};
use common::GitServer;
use packages::*;

#[derive(Default)]
struct Tally {
    tried: usize,
    built: usize,
    identical: usize,
    same_contents: usize,
    same_bytes: usize,
    failures: Vec<String>,
    /// Files whose contents differ from the registry's, a few per artifact.
    differences: Vec<String>,
}

/// name -> bytes of every regular file in a .tgz/.tar.gz/.crate, or a
/// .whl/.zip/.jar, with the top directory of tarballs kept.
fn contents(path: &Path) -> Option<BTreeMap<String, Vec<u8>>> {
    let name = path.file_name()?.to_string_lossy().into_owned();
    let mut files = BTreeMap::new();
    if name.ends_with(".whl") || name.ends_with(".zip") || name.ends_with(".jar") {
        let mut zip = zip::ZipArchive::new(std::fs::File::open(path).ok()?).ok()?;
        for i in 0..zip.len() {
            let mut f = zip.by_index(i).ok()?;
            if f.is_dir() {
                continue;
            }
            let mut data = Vec::new();
            f.read_to_end(&mut data).ok()?;
            files.insert(f.name().to_string(), data);
        }
    } else {
        let gz = flate2::read::GzDecoder::new(std::fs::File::open(path).ok()?);
        let mut tar = tar::Archive::new(gz);
        for e in tar.entries().ok()? {
            let mut e = e.ok()?;
            if !e.header().entry_type().is_file() {
                continue;
            }
            let p = e.path().ok()?.to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).ok()?;
            files.insert(p, data);
        }
    }
    Some(files)
}

/// Commits the tree at `src` as repository `name` of `git`, bytes as they
/// are, and returns its URL and commit.
fn commit_dir(git: &GitServer, name: &str, src: &Path) -> (String, String) {
    let dir = git.base.path().join(name);
    let run = |args: &[&str]| {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=Pyrsia Bench",
                "-c",
                "user.email=bench@pyrsia.invalid",
            ])
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    std::fs::create_dir_all(&dir).unwrap();
    assert!(Command::new("cp")
        .args(["-a", "--no-preserve=ownership"])
        .arg(format!("{}/.", src.display()))
        .arg(&dir)
        .status()
        .unwrap()
        .success());
    run(&["init", "-q", "-b", "main"]);
    run(&["add", "-A", "-f"]);
    run(&["commit", "-q", "-m", "registry archive"]);
    let commit = run(&["rev-parse", "HEAD"]);
    (format!("git://127.0.0.1:{}/{name}", git.port), commit)
}

/// The PEP 517 requirements of an unpacked sdist.
fn build_requires(root: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(root.join("pyproject.toml")) else {
        return vec!["setuptools>=40.8.0".into()];
    };
    let doc: toml::Value = toml::from_str(&text).unwrap_or(toml::Value::Table(Default::default()));
    doc.get("build-system")
        .and_then(|b| b.get("requires"))
        .and_then(|r| r.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_else(|| vec!["setuptools>=40.8.0".into()])
}

/// Adds `requirements` and what they need, as wheels, to the local PyPI's
/// directory, through the machine's pip.
fn add_wheels(dir: &Path, requirements: &[String]) -> bool {
    Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "-q",
            "--only-binary",
            ":all:",
            "-d",
        ])
        .arg(dir)
        .args(requirements)
        .status()
        .is_ok_and(|s| s.success())
}

fn build_twice(
    spec: &builder::BuildSpec,
    upstreams: &[Upstream],
    tally: &mut Tally,
) -> Option<(BuildOutcome, BuildOutcome)> {
    let tmp = tempfile::tempdir().unwrap();
    let mut outcomes = Vec::new();
    for work in ["one", "two/deeper"] {
        let mut cfg = builder::BuilderConfig::new(tmp.path().join(work));
        cfg.limits.time = std::time::Duration::from_secs(600);
        cfg.limits.memory_bytes = 4 << 30;
        cfg.limits.disk_bytes = 2 << 30;
        cfg.upstreams = upstreams.to_vec();
        match builder::build(spec, &cfg) {
            Ok(o) => outcomes.push(o),
            Err(e) => {
                let log = e
                    .log_path()
                    .and_then(|p| std::fs::read_to_string(p).ok())
                    .unwrap_or_default();
                let last: Vec<&str> = log
                    .lines()
                    .rev()
                    .filter(|l| !l.trim().is_empty())
                    .take(2)
                    .collect();
                tally.failures.push(format!(
                    "{} {}: {e} [{}]",
                    spec.name,
                    spec.version,
                    last.join(" / ")
                ));
                return None;
            }
        }
    }
    // Keep the temp dir alive with the outcomes' directories: leak it.
    std::mem::forget(tmp);
    let b = outcomes.pop()?;
    let a = outcomes.pop()?;
    Some((a, b))
}

fn compare(a: &BuildOutcome, b: &BuildOutcome, published: &[PathBuf], tally: &mut Tally) {
    tally.built += 1;
    let digests = |o: &BuildOutcome| -> Vec<(String, String)> {
        o.outputs
            .iter()
            .map(|f| (f.name.clone(), sha256_hex(&f.path)))
            .collect()
    };
    if digests(a) == digests(b) {
        tally.identical += 1;
    }
    let mut same_contents = !published.is_empty();
    let mut same_bytes = !published.is_empty();
    for p in published {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let Some(ours) = a.outputs.iter().find(|o| o.name == name) else {
            same_contents = false;
            same_bytes = false;
            continue;
        };
        if sha256_hex(&ours.path) != sha256_hex(p) {
            same_bytes = false;
        }
        match (contents(&ours.path), contents(p)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(a), Some(b)) => {
                same_contents = false;
                // Only in ours, only in the registry's, in both but other
                // bytes: a few of each.
                let few =
                    |keys: Vec<&String>| keys.into_iter().take(4).cloned().collect::<Vec<String>>();
                let ours_only = few(a.keys().filter(|k| !b.contains_key(*k)).collect());
                let theirs_only = few(b.keys().filter(|k| !a.contains_key(*k)).collect());
                let changed = few(a
                    .keys()
                    .filter(|k| b.get(*k).is_some_and(|v| v != &a[*k]))
                    .collect());
                tally.differences.push(format!(
                    "{name}: only ours {ours_only:?}, only the registry's {theirs_only:?}, other bytes {changed:?}"
                ));
            }
            _ => same_contents = false,
        }
    }
    if same_contents {
        tally.same_contents += 1;
    }
    if same_bytes {
        tally.same_bytes += 1;
    }
}

fn main() {
    let corpus = std::env::args()
        .nth(1)
        .filter(|a| !a.starts_with("--"))
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/benches/corpus.tsv").to_string());
    let text = std::fs::read_to_string(&corpus).unwrap();
    // Only fetch the packages and fill the caches (the Maven upstream), for
    // example beside a run over another part of the corpus: no builds.
    let prepare_only = std::env::var_os("PYRSIA_BENCH_PREPARE_ONLY").is_some();
    let git = GitServer::start();
    let wheels = tempfile::tempdir().unwrap();
    let pypi = LocalUpstream::pypi(wheels.path());
    // One throwaway CARGO_HOME gathers every crate's .crate and what its
    // dependency step needs; one index serves them all.
    let cargo_home = cache_dir("cargo").join("bench-home");
    let crates_dir = tempfile::tempdir().unwrap();
    let crates = LocalUpstream::crates(crates_dir.path());
    // One repository holds what ordinary builds of every Maven project
    // fetched.
    let maven_repo = cache_dir("maven").join("bench-upstream");
    std::fs::create_dir_all(&maven_repo).unwrap();
    let maven = LocalUpstream::maven(&maven_repo);
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();

    for line in text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let [eco, name, version] = cols[..] else {
            panic!("bad corpus line {line:?}");
        };
        let tally = tallies.entry(eco.to_string()).or_default();
        tally.tried += 1;
        eprintln!("== {eco} {name} {version}");
        let (unpacked, published, upstreams) = match eco {
            "npm" => {
                let tgz = npm_tarball(name, version);
                (unpack_root(&tgz), vec![tgz], Vec::new())
            }
            "python" => {
                let Some(sdist) = pypi_download(name, version, false) else {
                    tally
                        .failures
                        .push(format!("{name} {version}: no sdist on the registry"));
                    continue;
                };
                let unpacked = unpack_root(&sdist);
                if !add_wheels(wheels.path(), &build_requires(&unpacked.1)) {
                    tally.failures.push(format!(
                        "{name} {version}: build requirements not available as wheels"
                    ));
                    continue;
                }
                let mut published = vec![sdist.clone()];
                published.extend(pypi_download(name, version, true));
                (
                    unpacked,
                    published,
                    vec![Upstream {
                        name: "pypi".into(),
                        url: pypi.url.clone(),
                    }],
                )
            }
            "cargo" => {
                let prepared =
                    prepare_crate(&cargo_home, name, version).and_then(|(krate, tree)| {
                        cargo_fetch(&cargo_home, tree.path())
                            .map_err(|e| format!("dependencies not fetched: {e}"))?;
                        Ok(krate)
                    });
                let krate = match prepared {
                    Ok(k) => k,
                    Err(e) => {
                        tally.failures.push(format!("{name} {version}: {e}"));
                        continue;
                    }
                };
                for c in cached_crates(&cargo_home) {
                    let to = crates_dir.path().join(c.file_name().unwrap());
                    if !to.exists() {
                        std::fs::copy(&c, to).unwrap();
                    }
                }
                let unpacked = unpack_root(&krate);
                for f in CARGO_PACKAGE_WRITES {
                    let _ = std::fs::remove_file(unpacked.1.join(f));
                }
                (
                    unpacked,
                    vec![krate],
                    vec![Upstream {
                        name: "crates".into(),
                        url: crates.url.clone(),
                    }],
                )
            }
            "maven" => match maven_project(&maven_repo, name, version) {
                Ok((project, jar)) => {
                    let root = project.path().to_path_buf();
                    (
                        (project, root),
                        vec![jar],
                        vec![Upstream {
                            name: "maven".into(),
                            url: maven.url.clone(),
                        }],
                    )
                }
                Err(e) => {
                    tally.failures.push(format!("{name} {version}: {e}"));
                    continue;
                }
            },
            other => {
                tally.failures.push(format!(
                    "{name}: ecosystem {other} not in this benchmark yet"
                ));
                continue;
            }
        };
        if prepare_only {
            continue;
        }
        let (url, commit) = commit_dir(&git, &format!("{eco}-{name}-{version}"), &unpacked.1);
        let spec = common::spec(eco, name, version, &url, &commit);
        if let Some((a, b)) = build_twice(&spec, &upstreams, tally) {
            compare(&a, &b, &published, tally);
        }
    }

    println!("| ecosystem | packages | build | identical between builders | same contents as the registry | byte-identical to the registry |");
    println!("|---|---|---|---|---|---|");
    for (eco, t) in &tallies {
        let pct = |n: usize| format!("{n} ({:.0} %)", 100.0 * n as f64 / t.tried.max(1) as f64);
        println!(
            "| {eco} | {} | {} | {} | {} | {} |",
            t.tried,
            pct(t.built),
            pct(t.identical),
            pct(t.same_contents),
            pct(t.same_bytes)
        );
    }
    for (eco, t) in &tallies {
        for f in &t.failures {
            println!("- {eco}: {f}");
        }
        for d in &t.differences {
            println!("- {eco}: differs from the registry in {d}");
        }
    }
}

/// The registry's .crate of `name` `version` and a scratch copy of its
/// tree (without what `cargo package` writes itself), in which `cargo
/// fetch` gets what its lockfile, or a lockfile generated with its
/// dev-dependencies, needs.
fn prepare_crate(
    home: &Path,
    name: &str,
    version: &str,
) -> Result<(PathBuf, tempfile::TempDir), String> {
    let krate = fetch_crates(home, &[(name, version)])
        .map_err(|e| format!("not on the registry: {e}"))?
        .remove(0);
    let (tmp, root) = unpack_root(&krate);
    for f in CARGO_PACKAGE_WRITES {
        let _ = std::fs::remove_file(root.join(f));
    }
    let scratch = tempfile::tempdir().unwrap();
    assert!(Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", root.display()))
        .arg(scratch.path())
        .status()
        .unwrap()
        .success());
    drop(tmp);
    Ok((krate, scratch))
}

/// The Maven library `group:artifact` `version` as its developer's tree:
/// `pom.xml` the published pom, `src/main/java` the sources jar's `.java`
/// files and `src/main/resources` its other files (without the
/// `META-INF/MANIFEST.MF` and `META-INF/maven/` that the source plugin
/// writes itself). Adds what an ordinary `mvn package` of it fetches to
/// `repo` (once; a failure is kept too). Returns the tree and the
/// published jar.
fn maven_project(
    repo: &Path,
    name: &str,
    version: &str,
) -> Result<(tempfile::TempDir, PathBuf), String> {
    let (group, artifact) = name
        .split_once(':')
        .ok_or_else(|| "a maven name is groupId:artifactId".to_string())?;
    let get = |kind| {
        maven_artifact(group, artifact, version, kind)
            .map_err(|e| format!("no {kind} on the registry: {e}"))
    };
    let (jar, pom, sources) = (get("jar")?, get("pom")?, get("sources")?);
    let project = tempfile::tempdir().unwrap();
    std::fs::copy(&pom, project.path().join("pom.xml")).unwrap();
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&sources).unwrap())
        .map_err(|e| format!("sources jar: {e}"))?;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).unwrap();
        let entry_name = entry.name().to_string();
        if entry.is_dir()
            || entry_name == "META-INF/MANIFEST.MF"
            || entry_name.starts_with("META-INF/maven/")
            || entry_name.contains("..")
        {
            continue;
        }
        let dir = if entry_name.ends_with(".java") {
            "src/main/java"
        } else {
            "src/main/resources"
        };
        let to = project.path().join(dir).join(&entry_name);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        std::fs::write(to, data).unwrap();
    }
    let marks = cache_dir("maven").join("bench-upstream.marks");
    std::fs::create_dir_all(&marks).unwrap();
    let mark = marks.join(format!("{name}-{version}"));
    match std::fs::read_to_string(&mark) {
        Ok(reason) if reason.is_empty() => {}
        Ok(reason) => return Err(reason),
        Err(_) => {
            // Built in a copy: `mvn package` leaves `target/` behind.
            let scratch = tempfile::tempdir().unwrap();
            assert!(Command::new("cp")
                .arg("-a")
                .arg(format!("{}/.", project.path().display()))
                .arg(scratch.path())
                .status()
                .unwrap()
                .success());
            let reason = fill_maven_repository(scratch.path(), repo)
                .err()
                .map(|e| format!("an ordinary build fails on the host too: {e}"))
                .unwrap_or_default();
            std::fs::write(&mark, &reason).unwrap();
            if !reason.is_empty() {
                return Err(reason);
            }
        }
    }
    Ok((project, jar))
}

/// The registry's sdist (`binary` false) or pure-Python wheel of
/// `name==version`, through the machine's pip.
fn pypi_download(name: &str, version: &str, binary: bool) -> Option<PathBuf> {
    let kind = if binary { "wheel" } else { "sdist" };
    let dir = std::env::temp_dir()
        .join("pyrsia-rebuild")
        .join(format!("{name}-{version}-{kind}"));
    std::fs::create_dir_all(&dir).unwrap();
    // Only the package itself from source: pip prepares an sdist's
    // metadata with its build backend, which it installs as wheels.
    let (format, which) = if binary {
        ("--only-binary", ":all:")
    } else {
        ("--no-binary", name)
    };
    let _ = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "-q", "-d"])
        .arg(&dir)
        .args([format, which])
        .arg(format!("{name}=={version}"))
        .stderr(std::process::Stdio::null())
        .status();
    let found = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let f = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if binary {
                f.ends_with("-none-any.whl")
            } else {
                f.ends_with(".tar.gz")
            }
        });
    found
}
