//! Builds a package from an exact git commit in a fresh sandbox and returns
//! its normalised output files and build log. See `docs/builder.md`.
//!
//! ```no_run
//! # use builder::*;
//! let spec = BuildSpec {
//!     ecosystem: "npm".into(),
//!     name: "left-pad".into(),
//!     version: "1.3.0".into(),
//!     repo_url: "https://github.com/left-pad/left-pad".into(),
//!     commit: "2fca6157a3a5f3e7e3b5a7fc7eba4e8b6d4e5f60".into(),
//!     recipe: "npm".into(),
//! };
//! let outcome = build(&spec, &BuilderConfig::new("/var/lib/pyrsia/builds"))?;
//! # Ok::<(), BuildError>(())
//! ```

mod cgroup;
mod error;
mod normalize;
mod proc;
mod proxy;
mod recipe;
mod sandbox;
mod seccomp;
mod source;

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

pub use error::BuildError;

/// Entry points for the fuzz targets in `fuzz/` (not an API: no stability,
/// hidden from the docs). They call the same code the builder runs.
#[doc(hidden)]
pub mod fuzzing {
    use std::path::Path;

    /// [`normalise`](crate::normalize) of `raw` (an output named `name`)
    /// into `dest`, with the given unpack limits (the fuzzer uses small ones
    /// so that a bomb fails fast instead of allocating 1 GiB).
    pub fn normalise(
        raw: &Path,
        name: &str,
        dest: &Path,
        epoch: i64,
        max_bytes: u64,
        max_entries: usize,
    ) -> Result<(), String> {
        let limits = crate::normalize::UnpackLimits {
            bytes: max_bytes,
            entries: max_entries,
        };
        crate::normalize::normalise(raw, name, dest, epoch, limits)
    }

    /// `name` and `version` of an npm tarball, as the builder reads them.
    pub fn npm_name_version(tgz: &Path) -> Result<(String, String), String> {
        crate::normalize::npm_name_version(tgz)
    }
}

use cgroup::BuildCgroup;
use error::IoContext;
use recipe::{Collect, Kind};
use sandbox::{HostView, Job, Network, Ran, UserNamespace};

/// What to build: a package version from a repository at an exact commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    pub ecosystem: String,
    pub name: String,
    pub version: String,
    /// An `https://` or `git://` URL.
    pub repo_url: String,
    /// The full 40-hex-digit commit id.
    pub commit: String,
    /// One of [`supported_ecosystems`]; for now equal to the ecosystem.
    pub recipe: String,
}

/// Resource limits of one build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time for the whole build, clone included.
    pub time: Duration,
    /// Memory of the sandbox (a cgroup limit, or RLIMIT_DATA per process
    /// where no cgroup can be created).
    pub memory_bytes: u64,
    /// Size of the sandbox's only writable filesystem (source copy, caches,
    /// build products), and the cap on the outputs taken out of it.
    pub disk_bytes: u64,
    /// The most processes and threads the sandbox may have at once.
    pub max_processes: u32,
    /// The most the source checkout may take, in the clone sandbox's tmpfs
    /// and on the builder's disk.
    pub source_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            time: Duration::from_secs(30 * 60),
            memory_bytes: 4 << 30,
            disk_bytes: 4 << 30,
            max_processes: 4096,
            source_bytes: 1 << 30,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuilderConfig {
    /// Where per-build directories are created. A build's directory is
    /// removed when its [`BuildOutcome`] is dropped, or before [`build`]
    /// returns an error; only the log, next to it, is left for the caller.
    pub work_dir: PathBuf,
    pub limits: Limits,
    /// The registries the dependency step may fetch from. A recipe whose
    /// registry is not here builds offline, with what the source ships.
    pub upstreams: Vec<Upstream>,
    /// A command that runs [`normalise_dir`] as `COMMAND… EPOCH IN OUT`
    /// (its first element an executable file). Given, outputs are
    /// normalised inside the build's sandbox, so that an archive built to
    /// exhaust memory or disk costs the sandbox, not the builder; otherwise
    /// the builder process normalises them, with the same limits.
    pub normaliser: Option<Vec<String>>,
}

/// The exit status of a sandbox whose normaliser refused an output; its
/// reason is the log's last `pyrsia: cannot normalise NAME: REASON` line.
const NORMALISE_FAILED: i32 = 124;
const NORMALISE_FAILED_PREFIX: &str = "pyrsia: cannot normalise ";

/// What a normaliser command does with its arguments `EPOCH IN OUT`:
/// [`normalise_dir`], a refusal on stderr as the build reports it. Returns
/// the exit status.
pub fn normalise_command(args: &[String]) -> i32 {
    let [epoch, input, output] = args else {
        eprintln!("usage: EPOCH IN OUT");
        return 2;
    };
    let Ok(epoch) = epoch.parse::<i64>() else {
        eprintln!("EPOCH {epoch:?} is not a number");
        return 2;
    };
    match normalise_dir(Path::new(input), Path::new(output), epoch) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{NORMALISE_FAILED_PREFIX}{e}");
            1
        }
    }
}

/// Normalises every top-level file of `raw_dir` into `out_dir` (see
/// `docs/builder.md`): what a [`BuilderConfig::normaliser`] runs inside the
/// sandbox. The error is `NAME: REASON` for the first file refused.
pub fn normalise_dir(raw_dir: &Path, out_dir: &Path, epoch: i64) -> Result<(), String> {
    let mut names: Vec<String> = fs::read_dir(raw_dir)
        .map_err(|e| format!("{}: {e}", raw_dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    fs::create_dir_all(out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    for name in names {
        normalize::normalise(
            &raw_dir.join(&name),
            &name,
            &out_dir.join(&name),
            epoch,
            normalize::UNPACK_LIMITS,
        )
        .map_err(|reason| format!("{name}: {reason}"))?;
    }
    Ok(())
}

/// A package registry the dependency step may reach, by the name recipes
/// use for it: `npm`, `crates` (a sparse index) and `crates-dl` (where its
/// `dl` points), `pypi` (a PEP 503 simple index) and `pypi-files` (where
/// its links point), `maven` (a repository layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub name: String,
    /// Base URL, e.g. `http://127.0.0.1:4873`; `https://` for real ones.
    pub url: String,
}

impl BuilderConfig {
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        BuilderConfig {
            work_dir: work_dir.into(),
            limits: Limits::default(),
            upstreams: Vec::new(),
            normaliser: None,
        }
    }
}

/// One normalised output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    /// The file name, e.g. `left-pad-1.3.0.tgz`.
    pub name: String,
    pub path: PathBuf,
}

#[derive(Debug)]
pub struct BuildOutcome {
    /// Sorted by name; inside the build directory, so valid until the
    /// outcome is dropped.
    pub outputs: Vec<OutputFile>,
    /// Outside the build directory: the caller removes or keeps it.
    pub log_path: PathBuf,
    /// Sandbox, limit mechanisms and tool versions, e.g.
    /// `sandbox=bwrap bwrap=0.8.0 limits=cgroup1 builder=0.1.0 node=20.20.2 npm=11.19.1`.
    pub build_env: String,
    /// Every file the dependency step fetched, sorted by URI.
    pub resolved_dependencies: Vec<ResolvedDependency>,
    pub duration: Duration,
    dir: tempfile::TempDir,
}

impl BuildOutcome {
    /// The build's directory, removed with the outcome.
    pub fn build_dir(&self) -> &Path {
        self.dir.path()
    }
}

/// One file a build's dependency step fetched from a configured registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedDependency {
    /// Where it was fetched from, as the registry names it, e.g.
    /// `npm:/left-pad/-/left-pad-1.3.0.tgz`: the configured upstream's name,
    /// then the path below it (so no registry host is recorded).
    pub uri: String,
    /// Lower-case hex SHA-256 of the bytes fetched.
    pub sha256: String,
    pub size: u64,
}

/// The recipes this builder knows.
pub fn supported_ecosystems() -> &'static [&'static str] {
    recipe::NAMES
}

/// Checks that this host can run builds: bubblewrap is installed and can
/// start a sandbox in a user namespace. Returns bubblewrap's version. A
/// builder should call it once at start; [`build`] checks it again.
pub fn check_sandbox() -> Result<String, BuildError> {
    sandbox::check()
}

/// Fetches, builds and normalises `spec`. Blocking; takes up to
/// `cfg.limits.time` plus a little cleanup.
pub fn build(spec: &BuildSpec, cfg: &BuilderConfig) -> Result<BuildOutcome, BuildError> {
    let mut log_path = None;
    let result = build_logged(spec, cfg, &mut log_path);
    if let (Err(e), Some(log)) = (&result, &log_path) {
        // An error that does not point at the log carries what it said;
        // the log is not left behind for nobody to remove.
        if e.log_path().is_none() {
            let _ = fs::remove_file(log);
        }
    }
    result
}

fn build_logged(
    spec: &BuildSpec,
    cfg: &BuilderConfig,
    log_path_out: &mut Option<PathBuf>,
) -> Result<BuildOutcome, BuildError> {
    let started = Instant::now();
    let deadline = started + cfg.limits.time;
    let commit = source::parse_commit(&spec.commit)?;
    let kind = Kind::parse(&spec.recipe)?;
    if !recipe::NAMES.contains(&spec.ecosystem.as_str()) {
        return Err(BuildError::UnsupportedEcosystem {
            name: spec.ecosystem.clone(),
        });
    }
    check_spec_field("name", &spec.name)?;
    check_spec_field("version", &spec.version)?;
    let bwrap_version = sandbox::check()?;

    fs::create_dir_all(&cfg.work_dir).context(|| format!("creating {}", cfg.work_dir.display()))?;
    // Removed on every way out, unless moved into the outcome.
    let dir = tempfile::Builder::new()
        .prefix(&format!("build-{}-", file_name_safe(&spec.name)))
        .tempdir_in(&cfg.work_dir)
        .context(|| format!("creating a build directory in {}", cfg.work_dir.display()))?;
    let dir_name = dir
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "build".to_string());
    let dirs = BuildDirs::create(dir.path())?;
    let log_path = cfg.work_dir.join(format!("{dir_name}.log"));
    let mut log = File::create(&log_path).context(|| format!("creating {}", log_path.display()))?;
    *log_path_out = Some(log_path.clone());
    let _ = writeln!(
        log,
        "pyrsia build: {} {} {} (recipe {})\nsource: {} at {commit}",
        spec.ecosystem, spec.name, spec.version, spec.recipe, spec.repo_url
    );

    let checkout = source::fetch(
        &spec.repo_url,
        &commit,
        &dirs.src,
        &dirs.fetch,
        &cfg.limits,
        &format!("pyrsia-{dir_name}-fetch"),
        deadline,
        &mut log,
        &log_path,
    )?;
    let recipe = recipe::resolve(kind, &dirs.src)?;
    let view = HostView::discover(&recipe.toolchains);
    let deps = match &recipe.fetch {
        Some(fetch) if fetch.available(&cfg.upstreams) => Some(fetch_dependencies(
            spec,
            fetch,
            &cfg.upstreams,
            &view,
            &dirs,
            &cfg.limits,
            &format!("pyrsia-{dir_name}-deps"),
            checkout.commit_time,
            deadline,
            &mut log,
            &log_path,
        )?),
        Some(fetch) if fetch.required => {
            let missing = fetch.missing(&cfg.upstreams);
            let reason = format!(
                "the {} recipe cannot build without its dependency step, which needs the {} upstream{} (pyrsia builder --upstream {}=URL)",
                spec.recipe,
                missing
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                if missing.len() == 1 { "" } else { "s" },
                missing.first().copied().unwrap_or("NAME"),
            );
            let _ = writeln!(log, "pyrsia: {reason}");
            return Err(BuildError::DependencyFetch { reason, log_path });
        }
        _ => None,
    };
    let cgroup = BuildCgroup::new(
        &format!("pyrsia-{dir_name}"),
        cfg.limits.memory_bytes,
        cfg.limits.max_processes,
    );

    let mut env = base_env(&view, spec, checkout.commit_time);
    env.extend(recipe.env.iter().cloned());
    let build_env = describe_env(
        &bwrap_version,
        &cgroup.describe(),
        &recipe,
        &view,
        &env,
        dir.path(),
        deadline,
    );
    let _ = writeln!(
        log,
        "build env: {build_env}\nSOURCE_DATE_EPOCH={}\n",
        checkout.commit_time
    );
    tracing::info!(name = %spec.name, version = %spec.version, %build_env, "building");

    let outputs_tar = dirs.ctl.join("outputs.tar");
    let ns = UserNamespace::create(false)?;
    let deps_tar = dirs.fetch.join("deps.tar");
    let mut binds = vec![(dirs.src.as_path(), "/pyrsia/source")];
    if deps.is_some() {
        binds.push((deps_tar.as_path(), "/pyrsia/deps.tar"));
    }
    let normaliser = cfg.normaliser.as_ref().and_then(|argv| argv.split_first());
    if let Some((program, _)) = normaliser {
        binds.push((Path::new(program), recipe::NORMALISER));
    }
    let job = Job {
        ctl_dir: &dirs.ctl,
        binds,
        script: recipe::build_script(&recipe, deps.is_some(), normaliser.map(|(_, args)| args)),
        env: &env,
        tmpfs_bytes: cfg.limits.disk_bytes,
        network: Network::None,
        ns: &ns,
        limits: &cfg.limits,
        cgroup: &cgroup,
        deadline,
        results: &outputs_tar,
        results_cap: cfg.limits.disk_bytes,
    };
    let ran = sandbox::run(&view, &job, &log)?;
    match ran {
        Ran::TimedOut => {
            let _ = writeln!(
                log,
                "\npyrsia: killed the sandbox at the time limit of {}s",
                cfg.limits.time.as_secs()
            );
            return Err(BuildError::TimedOut {
                limit: cfg.limits.time,
                log_path,
            });
        }
        Ran::Exited { status, .. }
            if normaliser.is_some() && status.code() == Some(NORMALISE_FAILED) =>
        {
            let text = fs::read_to_string(&log_path).unwrap_or_default();
            let refused = text
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix(NORMALISE_FAILED_PREFIX))
                .unwrap_or("?: the normaliser failed without a reason");
            let (name, reason) = refused.split_once(": ").unwrap_or((refused, ""));
            return Err(BuildError::OutputMismatch {
                name: name.to_string(),
                reason: format!("cannot normalise: {reason}"),
                log_path,
            });
        }
        Ran::Exited { status, .. } if !status.success() => {
            return Err(BuildError::BuildFailed {
                status: describe_status(status),
                log_path,
            });
        }
        Ran::Exited {
            results_truncated: true,
            ..
        } => {
            return Err(BuildError::BuildFailed {
                status: format!(
                    "outputs exceed the disk limit of {} bytes",
                    cfg.limits.disk_bytes
                ),
                log_path,
            });
        }
        Ran::Exited { .. } => {}
    }
    // The source copy is in the sandbox's tmpfs; the host's can go now.
    let _ = fs::remove_dir_all(&dirs.src);

    let raw_names = unpack_outputs(&outputs_tar, &dirs.raw)
        .map_err(|reason| BuildError::Sandbox(format!("reading the outputs stream: {reason}")))?;
    let _ = fs::remove_file(&outputs_tar);
    let missing = |name: String| BuildError::OutputMissing {
        name,
        log_path: log_path.clone(),
    };
    match &recipe.collect {
        Collect::Files(files) => {
            for f in files {
                let name = recipe::output_file_name(f).unwrap_or_else(|| f.clone());
                if !raw_names.contains(&name) {
                    return Err(missing(f.clone()));
                }
            }
        }
        Collect::Glob(pattern) => {
            if raw_names.is_empty() {
                return Err(missing(pattern.to_string()));
            }
        }
    }

    let mut outputs = Vec::with_capacity(raw_names.len());
    for name in raw_names {
        let path = dirs.out.join(&name);
        let raw = dirs.raw.join(&name);
        if normaliser.is_some() {
            // Normalised in the sandbox already.
            fs::rename(&raw, &path).context(|| format!("moving {name}"))?;
        } else {
            normalize::normalise(
                &raw,
                &name,
                &path,
                checkout.commit_time,
                normalize::UNPACK_LIMITS,
            )
            .map_err(|reason| BuildError::OutputMismatch {
                name: name.clone(),
                reason: format!("cannot normalise: {reason}"),
                log_path: log_path.clone(),
            })?;
        }
        outputs.push(OutputFile { name, path });
    }
    outputs.sort_by(|a, b| a.name.cmp(&b.name));
    recipe::check_outputs(kind, &spec.name, &spec.version, &outputs).map_err(
        |(name, reason)| BuildError::OutputMismatch {
            name,
            reason,
            log_path: log_path.clone(),
        },
    )?;
    let _ = fs::remove_dir_all(&dirs.raw);
    for o in &outputs {
        let size = fs::metadata(&o.path).map(|m| m.len()).unwrap_or(0);
        let _ = writeln!(log, "pyrsia: output {} ({size} bytes)", o.name);
    }

    Ok(BuildOutcome {
        outputs,
        log_path,
        build_env,
        resolved_dependencies: deps.unwrap_or_default(),
        duration: started.elapsed(),
        dir,
    })
}

/// The dependency step: the recipe's fetch command in a sandbox whose only
/// network is a [`proxy::RecordingProxy`] to the configured upstreams. What
/// it leaves under /build (caches, a generated lockfile) goes to the build
/// as `fetch/deps.tar`; what passed the proxy is returned.
#[allow(clippy::too_many_arguments)]
fn fetch_dependencies(
    spec: &BuildSpec,
    fetch: &recipe::Fetch,
    upstreams: &[Upstream],
    view: &HostView,
    dirs: &BuildDirs,
    limits: &Limits,
    cgroup_name: &str,
    commit_time: i64,
    deadline: Instant,
    log: &mut File,
    log_path: &Path,
) -> Result<Vec<ResolvedDependency>, BuildError> {
    let failed = |reason: String| BuildError::DependencyFetch {
        reason,
        log_path: log_path.to_path_buf(),
    };
    let ns = UserNamespace::create(true)?;
    let listener = proxy::listen_in(&ns.netns_path())
        .map_err(|e| BuildError::Sandbox(format!("recording proxy: {e}")))?;
    let proxy = proxy::RecordingProxy::start(listener, upstreams, limits.disk_bytes)
        .map_err(|e| BuildError::Sandbox(format!("recording proxy: {e}")))?;
    let mut env = base_env(view, spec, commit_time);
    env.extend(fetch.env(&|name| proxy.url_of(name)));
    let ctl = dirs.fetch.join("deps-ctl");
    fs::create_dir_all(&ctl).context(|| format!("creating {}", ctl.display()))?;
    let cgroup = BuildCgroup::new(cgroup_name, limits.memory_bytes, limits.max_processes);
    let deps_tar = dirs.fetch.join("deps.tar");
    let job = Job {
        ctl_dir: &ctl,
        binds: vec![(dirs.src.as_path(), "/pyrsia/source")],
        script: recipe::fetch_script(fetch),
        env: &env,
        tmpfs_bytes: limits.disk_bytes,
        network: Network::OfNamespace,
        ns: &ns,
        limits,
        cgroup: &cgroup,
        deadline,
        results: &deps_tar,
        results_cap: limits.disk_bytes,
    };
    let _ = writeln!(log, "pyrsia: dependency step: {}", fetch.command);
    tracing::info!(name = %spec.name, "fetching dependencies");
    let ran = sandbox::run(view, &job, log);
    let record = proxy.finish();
    drop(ns);
    let resolved = match ran? {
        Ran::TimedOut => {
            return Err(BuildError::TimedOut {
                limit: limits.time,
                log_path: log_path.to_path_buf(),
            })
        }
        Ran::Exited {
            results_truncated: true,
            ..
        } => {
            return Err(failed(format!(
                "the dependencies exceed the disk limit of {} bytes",
                limits.disk_bytes
            )))
        }
        Ran::Exited { status, .. } if !status.success() => {
            let text = fs::read_to_string(log_path).unwrap_or_default();
            return Err(match recipe::integrity_failure(&text) {
                Some(line) => BuildError::DependencyMismatch {
                    reason: line,
                    log_path: log_path.to_path_buf(),
                },
                None => failed(format!(
                    "the fetch command failed: {}",
                    describe_status(status)
                )),
            });
        }
        Ran::Exited { .. } => record.map_err(failed)?,
    };
    for dep in &resolved {
        let _ = writeln!(
            log,
            "pyrsia: resolved {} sha256:{} ({} bytes)",
            dep.uri, dep.sha256, dep.size
        );
    }
    Ok(resolved)
}

#[derive(Debug)]
struct BuildDirs {
    /// The checkout.
    src: PathBuf,
    /// The clone sandbox's control files and stream.
    fetch: PathBuf,
    /// The build sandbox's control files and outputs stream.
    ctl: PathBuf,
    raw: PathBuf,
    out: PathBuf,
}

impl BuildDirs {
    fn create(base: &Path) -> Result<BuildDirs, BuildError> {
        let dirs = BuildDirs {
            src: base.join("src"),
            fetch: base.join("fetch"),
            ctl: base.join("ctl"),
            raw: base.join("raw"),
            out: base.join("out"),
        };
        for d in [&dirs.fetch, &dirs.ctl, &dirs.raw, &dirs.out] {
            fs::create_dir(d).context(|| format!("creating {}", d.display()))?;
        }
        Ok(dirs)
    }
}

fn check_spec_field(what: &str, value: &str) -> Result<(), BuildError> {
    if value.is_empty() || value.len() > 214 || value.chars().any(|c| c.is_control()) {
        return Err(BuildError::BadSpec {
            reason: format!("{what} {value:?} must be 1..=214 printable characters"),
        });
    }
    Ok(())
}

fn file_name_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect()
}

/// The environment every sandbox of a build (the dependency step's too)
/// starts from; recipes add to it. With rustup's home, so that its `cargo`
/// proxy finds the default toolchain.
fn base_env(view: &HostView, spec: &BuildSpec, commit_time: i64) -> Vec<(String, String)> {
    let rustup = view
        .rustup_home
        .as_ref()
        .map(|r| ("RUSTUP_HOME", r.to_string_lossy().into_owned()));
    [
        ("PYRSIA_PACKAGE_NAME", spec.name.clone()),
        ("PYRSIA_PACKAGE_VERSION", spec.version.clone()),
        ("PATH", view.path()),
        ("HOME", "/build/home".to_string()),
        ("TMPDIR", "/build/tmp".to_string()),
        ("USER", "builder".to_string()),
        ("SOURCE_DATE_EPOCH", commit_time.to_string()),
        ("TZ", "UTC".to_string()),
        ("LC_ALL", "C".to_string()),
        ("LANG", "C".to_string()),
    ]
    .into_iter()
    .chain(rustup)
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// `build_env`: how and with what this build ran. Tool versions are probed
/// on the host with the sandbox's PATH (the same binaries the build sees),
/// from the build directory so that nothing in the source is consulted.
fn describe_env(
    bwrap_version: &str,
    limits: &str,
    recipe: &recipe::Recipe,
    view: &HostView,
    env: &[(String, String)],
    cwd: &Path,
    deadline: Instant,
) -> String {
    let mut parts = vec![
        "sandbox=bwrap".to_string(),
        format!("bwrap={bwrap_version}"),
        format!("limits={limits}"),
        format!("builder={}", env!("CARGO_PKG_VERSION")),
    ];
    let probe_deadline = deadline.min(Instant::now() + Duration::from_secs(30));
    for probe in recipe.probes {
        let mut cmd = Command::new(probe.argv[0]);
        cmd.args(&probe.argv[1..])
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("PATH", view.path())
            .env("HOME", cwd)
            .current_dir(cwd);
        let out = match proc::run_captured(&mut cmd, probe_deadline) {
            Ok(Some(out)) if out.status.success() => out.stdout,
            _ => {
                if !probe.label.is_empty() {
                    parts.push(format!("{}=unknown", probe.label));
                }
                continue;
            }
        };
        if probe.label.is_empty() {
            parts.push(out.trim().to_string());
        } else {
            let v = sandbox::version_token(&out).unwrap_or("unknown");
            parts.push(format!("{}={v}", probe.label));
        }
    }
    parts.join(" ")
}

fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(137), _) | (_, Some(9)) => {
            "killed (SIGKILL; the memory limit is the usual cause)".to_string()
        }
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "unknown exit status".to_string(),
    }
}

/// Extracts the outputs stream written by the sandbox: plain files at the
/// top level only. Returns their names.
fn unpack_outputs(tar_path: &Path, dest: &Path) -> Result<Vec<String>, String> {
    let file = File::open(tar_path).map_err(|e| e.to_string())?;
    let mut archive = tar::Archive::new(file);
    let mut names = Vec::new();
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let path = entry.path().map_err(|e| e.to_string())?.into_owned();
        let parts: Vec<Component<'_>> = path
            .components()
            .filter(|c| !matches!(c, Component::CurDir))
            .collect();
        let ty = entry.header().entry_type();
        if parts.is_empty() && ty.is_dir() {
            continue;
        }
        let name = match parts.as_slice() {
            [Component::Normal(n)] if ty.is_file() => n.to_string_lossy().into_owned(),
            _ => return Err(format!("unexpected entry {}", path.display())),
        };
        let mut out = File::create(dest.join(&name)).map_err(|e| e.to_string())?;
        std::io::copy(&mut entry, &mut out).map_err(|e| e.to_string())?;
        names.push(name);
    }
    names.sort();
    Ok(names)
}
