//! Running a recipe in a fresh sandbox: new mount, pid, net, ipc and uts
//! namespaces, no capabilities, the host's toolchains read-only, and one
//! size-limited tmpfs at /build as the only writable place.
//!
//! Outputs leave the sandbox as a tar stream on its stdout (the build's own
//! stdout and stderr go to stderr, which becomes the log); nothing on the
//! host is writable from inside, and both streams are capped on the host.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Instant;

use crate::error::{BuildError, IoContext};
use crate::memory::MemoryLimit;
use crate::proc::{copy_capped, kill_group, spawn_group, wait_until, Waited};
use crate::recipe::{Collect, Recipe};
use crate::{Limits, SandboxKind};

/// Where the checkout is copied inside the sandbox and the build runs.
pub(crate) const SRC_DIR: &str = "/build/src";
/// The base PATH inside the sandbox, after the toolchain directories.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Host directories (or their symlinks) that make up the sandbox's system.
const SYSTEM_ROOTS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt",
];
/// The parts of the host's /etc a toolchain needs; the rest (keys, shadow,
/// tool configs with tokens) stays out.
const ETC_ENTRIES: &[&str] = &[
    "passwd",
    "group",
    "hosts",
    "nsswitch.conf",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "ssl",
    "ca-certificates",
];
/// Device nodes the unshare fallback binds in (bubblewrap makes its own).
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
/// The log is an artifact others download: a build cannot make it huge.
const LOG_CAP: u64 = 16 << 20;
const HOSTNAME: &str = "pyrsia-build";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Bubblewrap,
    Unshare,
}

impl Backend {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Backend::Bubblewrap => "bwrap",
            Backend::Unshare => "unshare",
        }
    }
}

/// Picks the sandbox implementation; Auto prefers bubblewrap.
pub(crate) fn detect(choice: SandboxKind) -> Result<(Backend, String), BuildError> {
    let probe = |prog: &str| -> Option<String> {
        let out = Command::new(prog)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Some(version_token(&text).unwrap_or("unknown").to_string())
    };
    let bwrap = || probe("bwrap").map(|v| (Backend::Bubblewrap, v));
    let unshare = || probe("unshare").map(|v| (Backend::Unshare, v));
    let found = match choice {
        SandboxKind::Auto => bwrap().or_else(unshare),
        SandboxKind::Bubblewrap => bwrap(),
        SandboxKind::Unshare => unshare(),
    };
    found.ok_or_else(|| {
        BuildError::Sandbox(format!(
            "no usable sandbox for {choice:?}: install bubblewrap (`apt-get install -y bubblewrap`) or util-linux's unshare"
        ))
    })
}

/// The first whitespace-separated token that contains a digit, without a
/// leading `v`; how most `--version` outputs carry the version.
pub(crate) fn version_token(text: &str) -> Option<&str> {
    text.split_whitespace()
        .find(|t| t.bytes().any(|b| b.is_ascii_digit()))
        .map(|t| t.trim_start_matches('v'))
}

/// What of the host the sandbox sees, all read-only at the same paths.
#[derive(Debug, Default)]
pub(crate) struct HostView {
    binds: Vec<PathBuf>,
    symlinks: Vec<(PathBuf, PathBuf)>,
    path_dirs: Vec<PathBuf>,
    pub rustup_home: Option<PathBuf>,
}

impl HostView {
    /// Discovers the system directories and where this host keeps node,
    /// cargo/rustup and python, so that they work inside unchanged.
    pub(crate) fn discover() -> HostView {
        let mut view = HostView::default();
        for root in SYSTEM_ROOTS {
            let p = Path::new(root);
            match fs::symlink_metadata(p) {
                Ok(m) if m.file_type().is_symlink() => {
                    if let Ok(target) = fs::read_link(p) {
                        view.symlinks.push((p.to_path_buf(), target));
                    }
                }
                Ok(m) if m.is_dir() => view.binds.push(p.to_path_buf()),
                _ => {}
            }
        }
        for entry in ETC_ENTRIES {
            let p = Path::new("/etc").join(entry);
            if p.exists() {
                view.binds.push(p);
            }
        }

        let home = std::env::var_os("HOME").map(PathBuf::from);
        // Only cargo's bin directory: CARGO_HOME also holds registry
        // credentials.
        if let Some(cargo) = which("cargo") {
            if let Some(bin) = cargo.parent() {
                view.add_tool_dir(bin, bin);
            }
            let rustup = std::env::var_os("RUSTUP_HOME")
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".rustup")))
                .filter(|p| p.is_dir());
            if let Some(rustup) = rustup {
                view.add_bind(&rustup);
                view.rustup_home = Some(rustup);
            }
        }
        // pyenv and similar put a shim on PATH that needs its manager; bind
        // the real installation instead.
        if let Some(prefix) = python_prefix() {
            view.add_tool_dir(&prefix.join("bin"), &prefix);
        }
        for tool in ["node", "npm"] {
            if let Some(bin) = which(tool).as_deref().and_then(Path::parent) {
                let prefix = bin.parent().unwrap_or(bin).to_path_buf();
                view.add_tool_dir(bin, &prefix);
            }
        }
        view
    }

    fn covered(&self, p: &Path) -> bool {
        let real = fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        self.binds
            .iter()
            .any(|b| p.starts_with(b) || real.starts_with(b))
    }

    fn add_bind(&mut self, p: &Path) {
        if !self.covered(p) {
            self.binds.push(p.to_path_buf());
        }
    }

    fn add_tool_dir(&mut self, bin: &Path, prefix: &Path) {
        self.add_bind(prefix);
        if !self.path_dirs.iter().any(|d| d == bin) {
            self.path_dirs.push(bin.to_path_buf());
        }
    }

    /// PATH inside the sandbox (and for the host-side version probes).
    pub(crate) fn path(&self) -> String {
        let mut parts: Vec<String> = self
            .path_dirs
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        parts.push(SYSTEM_PATH.to_string());
        parts.join(":")
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

fn python_prefix() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.base_prefix)"])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let prefix = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && prefix.join("bin").is_dir()).then_some(prefix)
}

/// One sandboxed run of a recipe.
#[derive(Debug)]
pub(crate) struct Job<'a> {
    /// Host directory for this build's control files.
    pub ctl_dir: &'a Path,
    /// Empty host directory the unshare fallback mounts its root on.
    pub root_dir: &'a Path,
    /// The normalised checkout, bound read-only and copied to /build/src.
    pub source: &'a Path,
    pub recipe: &'a Recipe,
    pub env: &'a [(String, String)],
    pub limits: &'a Limits,
    pub memory: &'a MemoryLimit,
    pub deadline: Instant,
    /// Receives the tar stream of collected outputs.
    pub outputs_tar: &'a Path,
}

#[derive(Debug)]
pub(crate) enum Ran {
    Exited {
        status: ExitStatus,
        /// The outputs stream was longer than the disk limit.
        outputs_truncated: bool,
    },
    TimedOut,
}

/// Runs `job` in `backend`, appending everything the build prints to `log`.
pub(crate) fn run(
    backend: Backend,
    view: &HostView,
    job: &Job<'_>,
    log: &File,
) -> Result<Ran, BuildError> {
    let run_sh = job.ctl_dir.join("run.sh");
    fs::write(&run_sh, wrapper_script(job.recipe)).context(|| "writing run.sh".to_string())?;

    let sandbox_argv = match backend {
        Backend::Bubblewrap => bwrap_argv(view, job),
        Backend::Unshare => {
            let setup = job.ctl_dir.join("setup.sh");
            fs::write(&setup, unshare_setup_script(view, job))
                .context(|| "writing setup.sh".to_string())?;
            vec![
                "unshare".to_string(),
                "--mount".to_string(),
                "--uts".to_string(),
                "--ipc".to_string(),
                "--pid".to_string(),
                "--net".to_string(),
                "--fork".to_string(),
                // Killing unshare (at the deadline) kills the namespace's
                // init, and with it every process of the build.
                "--kill-child".to_string(),
                "/bin/sh".to_string(),
                setup.to_string_lossy().into_owned(),
            ]
        }
    };
    let mut argv = job.memory.command_prefix();
    argv.extend(sandbox_argv);
    tracing::debug!(?argv, "starting sandbox");

    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", SYSTEM_PATH)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_group(&mut cmd).context(|| format!("starting {}", argv[0]))?;

    let outputs_thread = {
        let stdout = child.stdout.take();
        let mut file =
            File::create(job.outputs_tar).context(|| "creating outputs stream".to_string())?;
        let cap = job.limits.disk_bytes;
        std::thread::spawn(move || match stdout {
            Some(mut s) => copy_capped(&mut s, &mut file, cap),
            None => Ok((0, false)),
        })
    };
    let log_thread = {
        let stderr = child.stderr.take();
        let mut log = log
            .try_clone()
            .context(|| "cloning log handle".to_string())?;
        std::thread::spawn(move || {
            let res = match stderr {
                Some(mut s) => copy_capped(&mut s, &mut log, LOG_CAP),
                None => Ok((0, false)),
            };
            if let Ok((_, true)) = res {
                let _ = writeln!(log, "\npyrsia: log truncated at {LOG_CAP} bytes");
            }
            res
        })
    };

    let waited = wait_until(&mut child, job.deadline);
    if waited.is_err() {
        kill_group(&child);
    }
    // A cgroup also catches anything that left the process group.
    job.memory.release();
    let waited = waited.context(|| "waiting for the sandbox".to_string())?;

    let outputs = outputs_thread
        .join()
        .map_err(|_| BuildError::Sandbox("output reader panicked".to_string()))?
        .context(|| "reading the outputs stream".to_string())?;
    let _ = log_thread.join();

    Ok(match waited {
        Waited::Exited(status) => Ran::Exited {
            status,
            outputs_truncated: outputs.1,
        },
        Waited::TimedOut => Ran::TimedOut,
    })
}

/// Quotes `s` for a POSIX shell.
fn sq(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn sq_path(p: &Path) -> String {
    sq(&p.to_string_lossy())
}

/// The script that runs as the sandbox's main process: copy the source to
/// the fixed path, run the recipe with its stdout and stderr in the log,
/// then stream the collected outputs as tar on fd 3 (the sandbox's stdout).
fn wrapper_script(recipe: &Recipe) -> String {
    let command: Vec<String> = recipe.command.iter().map(|a| sq(a)).collect();
    let mut s = String::new();
    s.push_str("umask 022\nexec 3>&1 1>&2\n");
    s.push_str(
        "mkdir -p /build/src /build/home /build/tmp /build/pack /build/dist /build/target /build/.pyrsia-out || exit 120\n",
    );
    s.push_str("cp -a /pyrsia/source/. /build/src/ || { echo 'pyrsia: copying the source into the sandbox failed'; exit 121; }\n");
    s.push_str(&format!("cd {SRC_DIR} || exit 120\n"));
    s.push_str(&format!(
        "echo {}\n",
        sq(&format!("pyrsia: running {:?}", recipe.command))
    ));
    s.push_str(&format!("{} 3>&- </dev/null\n", command.join(" ")));
    s.push_str("status=$?\n");
    s.push_str("if [ \"$status\" -ne 0 ]; then echo \"pyrsia: build command exited with status $status\"; exit \"$status\"; fi\n");
    match &recipe.collect {
        Collect::Files(files) => {
            for f in files {
                let q = sq(f);
                s.push_str(&format!(
                    "if [ -f {q} ] && [ ! -L {q} ]; then cp -- {q} /build/.pyrsia-out/ || exit 122; else echo {}; fi\n",
                    sq(&format!("pyrsia: declared output {f} is missing or not a regular file"))
                ));
            }
        }
        Collect::Glob(pattern) => {
            s.push_str(&format!(
                "for f in {pattern}; do if [ -f \"$f\" ] && [ ! -L \"$f\" ]; then cp -- \"$f\" /build/.pyrsia-out/ || exit 122; fi; done\n"
            ));
        }
    }
    s.push_str("cd /build/.pyrsia-out && exec tar -cf - . >&3\n");
    s
}

fn bwrap_argv(view: &HostView, job: &Job<'_>) -> Vec<String> {
    let mut a: Vec<String> = [
        "bwrap",
        "--die-with-parent",
        "--new-session",
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--cap-drop",
        "ALL",
        "--hostname",
        HOSTNAME,
        "--clearenv",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut push = |args: &[&str]| a.extend(args.iter().map(|s| s.to_string()));
    for (link, target) in &view.symlinks {
        push(&[
            "--symlink",
            &target.to_string_lossy(),
            &link.to_string_lossy(),
        ]);
    }
    for p in &view.binds {
        let p = p.to_string_lossy();
        push(&["--ro-bind", &p, &p]);
    }
    let disk = job.limits.disk_bytes.to_string();
    push(&["--dev", "/dev", "--proc", "/proc"]);
    push(&["--size", &disk, "--tmpfs", "/build"]);
    push(&["--symlink", "/build/tmp", "/tmp"]);
    push(&["--ro-bind", &job.ctl_dir.to_string_lossy(), "/pyrsia/ctl"]);
    push(&["--ro-bind", &job.source.to_string_lossy(), "/pyrsia/source"]);
    for (k, v) in job.env {
        push(&["--setenv", k, v]);
    }
    push(&["--remount-ro", "/", "--chdir", "/build"]);
    push(&["/bin/sh", "/pyrsia/ctl/run.sh"]);
    a
}

/// The fallback: a shell script run by `unshare` in the new namespaces. It
/// assembles the same view as bubblewrap on a tmpfs, then chroots into it
/// and drops every capability (so the chroot cannot be left).
fn unshare_setup_script(view: &HostView, job: &Job<'_>) -> String {
    let root = sq_path(job.root_dir);
    let at = |p: &Path| format!("{root}{}", sq_path(p));
    let mut s = String::new();
    s.push_str("set -e\nmount --make-rprivate /\n");
    s.push_str(&format!(
        "mount -t tmpfs -o size=16m,mode=755 pyrsia-root {root}\n"
    ));
    for (link, target) in &view.symlinks {
        if let Some(parent) = link.parent() {
            s.push_str(&format!("mkdir -p {}\n", at(parent)));
        }
        s.push_str(&format!("ln -s {} {}\n", sq_path(target), at(link)));
    }
    let mut ro_bind = |host: &Path, inside: &Path| {
        let dst = at(inside);
        if host.is_dir() {
            s.push_str(&format!("mkdir -p {dst}\n"));
        } else {
            if let Some(parent) = inside.parent() {
                s.push_str(&format!("mkdir -p {}\n", at(parent)));
            }
            s.push_str(&format!("touch {dst}\n"));
        }
        s.push_str(&format!(
            "mount --rbind {} {dst}\nmount -o remount,bind,ro {dst}\n",
            sq_path(host)
        ));
    };
    for p in &view.binds {
        ro_bind(p, p);
    }
    ro_bind(job.ctl_dir, Path::new("/pyrsia/ctl"));
    ro_bind(job.source, Path::new("/pyrsia/source"));
    s.push_str(&format!("mkdir -p {root}/build {root}/proc {root}/dev\n"));
    s.push_str(&format!(
        "mount -t tmpfs -o size={},mode=755 pyrsia-build {root}/build\n",
        job.limits.disk_bytes
    ));
    s.push_str(&format!("mount -t proc proc {root}/proc\n"));
    for dev in DEVICES {
        s.push_str(&format!(
            "touch {root}/dev/{dev}\nmount --bind /dev/{dev} {root}/dev/{dev}\n"
        ));
    }
    s.push_str(&format!(
        "ln -s /proc/self/fd {root}/dev/fd\nln -s /proc/self/fd/0 {root}/dev/stdin\nln -s /proc/self/fd/1 {root}/dev/stdout\nln -s /proc/self/fd/2 {root}/dev/stderr\n"
    ));
    s.push_str(&format!("ln -s /build/tmp {root}/tmp\n"));
    s.push_str(&format!("hostname {HOSTNAME}\n"));
    s.push_str(&format!("mount -o remount,ro {root}\n"));
    let env: Vec<String> = job
        .env
        .iter()
        .map(|(k, v)| sq(&format!("{k}={v}")))
        .collect();
    s.push_str(&format!(
        "cd {root}\nexec chroot {root} /usr/bin/setpriv --no-new-privs --inh-caps=-all --bounding-set=-all -- /usr/bin/env -i {} /bin/sh -c 'cd /build && exec /bin/sh /pyrsia/ctl/run.sh'\n",
        env.join(" ")
    ));
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn quoting_survives_hostile_strings() {
        assert_eq!(sq("a'b"), r"'a'\''b'");
        assert_eq!(version_token("bubblewrap 0.8.0"), Some("0.8.0"));
        assert_eq!(version_token("v20.20.2\n"), Some("20.20.2"));
        assert_eq!(
            version_token("unshare from util-linux 2.38.1"),
            Some("2.38.1")
        );
    }
}
