//! Running a script in a fresh bubblewrap sandbox.
//!
//! Every sandbox gets new user, mount, pid, ipc, uts and (unless it clones
//! the source) network namespaces. Its user namespace is made here, before
//! bubblewrap starts, and maps the build's uid 1000 to an unprivileged host
//! uid: `nobody` when the builder runs as root, else the builder's own uid.
//! So a build is never host root, not even for files it can see, and has no
//! capability anywhere. On top of that: a seccomp filter (see [`crate::seccomp`]),
//! the host's system directories and the recipe's toolchains read-only, a
//! /proc whose host-wide knobs are masked or read-only, a /dev with only the
//! harmless devices, and one size-limited tmpfs at /build as the only
//! writable place.
//!
//! Results leave the sandbox as a stream on its stdout (the script's own
//! output goes to stderr, which becomes the log); nothing on the host is
//! writable from inside, and both streams are capped on the host.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::unistd::{getegid, geteuid};

use crate::cgroup::BuildCgroup;
use crate::error::{BuildError, IoContext};
use crate::proc::{copy_capped, kill_group, spawn_group, wait_until, Waited};
use crate::seccomp;
use crate::Limits;

/// The build's uid and gid inside its user namespace.
const INNER_ID: u32 = 1000;
/// The host uid and gid builds map to when the builder runs as root.
const NOBODY: u32 = 65534;
/// The base PATH inside the sandbox, after the toolchain directories.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Host directories (or their symlinks) that make up the sandbox's system.
/// Not /opt or /srv: hosts keep unrelated software and data there.
const SYSTEM_ROOTS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];
/// The parts of the host's /etc a toolchain needs; the rest (keys, shadow,
/// tool configs with tokens) stays out. passwd and group are our own.
const ETC_ENTRIES: &[&str] = &[
    "hosts",
    "resolv.conf",
    "nsswitch.conf",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "ssl",
    "ca-certificates",
    "java-17-openjdk",
    "java-21-openjdk",
    "maven",
];
const PASSWD: &str = "root:x:0:0:root:/root:/usr/sbin/nologin\n\
builder:x:1000:1000:pyrsia build:/build/home:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nbuilder:x:1000:\nnogroup:x:65534:\n";
/// Device nodes a build gets: no tty, no disks, nothing that reaches the host.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom"];
/// /proc entries that describe or control the host rather than the sandbox:
/// hidden behind /dev/null.
const PROC_HIDDEN: &[&str] = &[
    "sysrq-trigger",
    "kcore",
    "keys",
    "timer_list",
    "sched_debug",
    "latency_stats",
    "kallsyms",
];
/// /proc directories of host-wide settings: read-only (bound over
/// themselves; they are not mounts of their own to remount).
const PROC_READ_ONLY: &[&str] = &["sys", "bus", "fs", "irq"];
/// The log is an artifact others download: a build cannot make it huge.
const LOG_CAP: u64 = 16 << 20;
const HOSTNAME: &str = "pyrsia-build";
/// The sandbox's first command: become the build's uid and gid with no
/// capabilities at all and no way to gain any. (bubblewrap's own `--uid`
/// cannot be used with a namespace in which root is mapped: it switches the
/// uid first and then lacks the capability to switch the gid.)
const DROP_TO_BUILDER: &[&str] = &[
    "setpriv",
    "--reuid=1000",
    "--regid=1000",
    "--clear-groups",
    "--inh-caps=-all",
    "--ambient-caps=-all",
    "--bounding-set=-all",
    "--no-new-privs",
    "--",
];
/// The fds the wrapper opens the seccomp program and user namespace on
/// (single digits: dash redirects no others).
const SECCOMP_FD: &str = "5";
const USERNS_FD: &str = "6";

/// bubblewrap's version, after checking that it can start a sandbox in a
/// user namespace of ours here. Refuses to go on otherwise: there is no
/// weaker fallback.
pub(crate) fn check() -> Result<String, BuildError> {
    let version = Command::new("bwrap")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            version_token(&String::from_utf8_lossy(&o.stdout))
                .unwrap_or("unknown")
                .to_string()
        })
        .ok_or_else(|| {
            BuildError::Sandbox(
                "bubblewrap is not installed: `apt-get install -y bubblewrap`".to_string(),
            )
        })?;
    let ns = UserNamespace::create(false)?;
    let mut probe = Command::new("bwrap");
    probe
        .args(["--userns", USERNS_FD, "--ro-bind", "/", "/"])
        .args(["--unshare-pid", "--unshare-net"])
        .args(DROP_TO_BUILDER)
        .arg("true");
    let out = with_fds(&probe, None, &ns)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context(|| "running bwrap".to_string())?;
    if !out.status.success() {
        return Err(BuildError::Sandbox(format!(
            "bubblewrap cannot start a sandbox in a user namespace here: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(version)
}

/// The first whitespace-separated token that contains a digit, without a
/// leading `v`; how most `--version` outputs carry the version.
pub(crate) fn version_token(text: &str) -> Option<&str> {
    text.split_whitespace()
        .find(|t| t.bytes().any(|b| b.is_ascii_digit()))
        .map(|t| t.trim_start_matches('v'))
}

/// A user namespace mapping [`INNER_ID`] to an unprivileged host id, held
/// open by a process of its own until dropped. bubblewrap joins it with
/// `--userns`: only a process outside can write a mapping to another uid.
/// The holder is `cat` reading a pipe from us, so it also ends when the
/// builder dies without dropping it (a `kill -9`).
#[derive(Debug)]
pub(crate) struct UserNamespace {
    holder: Child,
}

impl UserNamespace {
    /// With `with_net`, also a network namespace owned by it, with its
    /// loopback up: the fetch sandbox's, where the recording proxy listens.
    pub(crate) fn create(with_net: bool) -> Result<UserNamespace, BuildError> {
        let failed = |what: String| BuildError::Sandbox(format!("user namespace: {what}"));
        let root = geteuid().is_root();
        let (uid, gid) = if root {
            (NOBODY, NOBODY)
        } else {
            (geteuid().as_raw(), getegid().as_raw())
        };
        let holder = Command::new("unshare")
            .arg("--user")
            .args(with_net.then_some("--net"))
            .args(["--", "cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| failed(format!("starting unshare: {e}")))?;
        let ns = UserNamespace { holder };
        let proc = PathBuf::from(format!("/proc/{}", ns.holder.id()));
        let own = fs::read_link("/proc/self/ns/user").map_err(|e| failed(e.to_string()))?;
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            match fs::read_link(proc.join("ns/user")) {
                Ok(link) if link != own => break,
                Ok(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(2)),
                Ok(_) => return Err(failed("unshare --user did not create one".to_string())),
                Err(e) => return Err(failed(format!("unshare --user exited: {e}"))),
            }
        }
        let write = |file: &str, text: String| {
            fs::write(proc.join(file), text).map_err(|e| failed(format!("writing {file}: {e}")))
        };
        let map = if root {
            // bubblewrap sets the sandbox up as the namespace's root before
            // it switches to the build's uid: with host root mapped, it can
            // bind toolchains from below /root. The build itself can never
            // become uid 0: it has no capabilities, and no_new_privs and
            // nosuid mounts make setuid binaries inert.
            format!("0 0 1\n{INNER_ID} {uid} 1\n")
        } else {
            // Required before an unprivileged gid_map.
            write("setgroups", "deny".to_string())?;
            format!("{INNER_ID} {uid} 1\n")
        };
        write("uid_map", map.clone())?;
        write(
            "gid_map",
            map.replace(&format!(" {uid} "), &format!(" {gid} ")),
        )?;
        Ok(ns)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/user", self.holder.id()))
    }

    /// The network namespace (the host's unless made `with_net`).
    pub(crate) fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.holder.id()))
    }
}

impl Drop for UserNamespace {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Wraps `cmd` so that it starts with the seccomp program (when given) and
/// the user namespace open on [`SECCOMP_FD`] and [`USERNS_FD`].
fn with_fds(cmd: &Command, seccomp: Option<&Path>, ns: &UserNamespace) -> Command {
    let mut wrapped = Command::new("/bin/sh");
    wrapped.arg("-c");
    match seccomp {
        Some(_) => wrapped.arg(format!(
            "s=$1 u=$2; shift 2; exec \"$@\" {SECCOMP_FD}<\"$s\" {USERNS_FD}<\"$u\""
        )),
        None => wrapped.arg(format!("u=$2; shift 2; exec \"$@\" {USERNS_FD}<\"$u\"")),
    };
    wrapped
        .arg("sh")
        .arg(seccomp.unwrap_or(Path::new("-")))
        .arg(ns.path())
        .arg(cmd.get_program())
        .args(cmd.get_args());
    wrapped
}

/// What of the host a sandbox sees, all read-only at the same paths.
#[derive(Debug, Default)]
pub(crate) struct HostView {
    binds: Vec<PathBuf>,
    symlinks: Vec<(PathBuf, PathBuf)>,
    path_dirs: Vec<PathBuf>,
    pub rustup_home: Option<PathBuf>,
}

/// The toolchains a recipe may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Toolchain {
    Rust,
    Python,
    Node,
    Java,
}

impl Toolchain {
    pub(crate) fn parse(name: &str) -> Option<Toolchain> {
        match name {
            "rust" => Some(Toolchain::Rust),
            "python" => Some(Toolchain::Python),
            "node" => Some(Toolchain::Node),
            "java" => Some(Toolchain::Java),
            _ => None,
        }
    }
}

impl HostView {
    /// The system directories, plus where this host keeps each of
    /// `toolchains`, so that they work inside unchanged. Never a home
    /// directory or anything above one.
    pub(crate) fn discover(toolchains: &[Toolchain]) -> HostView {
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
        for toolchain in toolchains {
            match toolchain {
                Toolchain::Rust => {
                    // Only cargo's bin directory: CARGO_HOME also holds
                    // registry credentials.
                    if let Some(bin) = which("cargo").as_deref().and_then(Path::parent) {
                        view.add_tool_dir(bin, bin);
                    }
                    let rustup = std::env::var_os("RUSTUP_HOME")
                        .map(PathBuf::from)
                        .or_else(|| home.as_ref().map(|h| h.join(".rustup")))
                        .filter(|p| p.is_dir());
                    if let Some(rustup) = rustup {
                        if view.add_bind(&rustup) {
                            view.rustup_home = Some(rustup);
                        }
                    }
                }
                // pyenv and similar put a shim on PATH that needs its
                // manager; bind the real installation instead.
                Toolchain::Python => {
                    if let Some(prefix) = python_prefix() {
                        view.add_tool_dir(&prefix.join("bin"), &prefix);
                    }
                }
                Toolchain::Node => view.add_tools_of(&["node", "npm"]),
                Toolchain::Java => view.add_tools_of(&["java", "mvn"]),
            }
        }
        view
    }

    /// Binds the installation each of `tools` resolves to (through
    /// symlinks such as /usr/bin/mvn -> /usr/share/maven/bin/mvn).
    fn add_tools_of(&mut self, tools: &[&str]) {
        for tool in tools {
            let Some(found) = which(tool) else { continue };
            if let Some(bin) = found.parent() {
                let prefix = bin.parent().unwrap_or(bin).to_path_buf();
                self.add_tool_dir(bin, &prefix);
            }
            if let Ok(real) = fs::canonicalize(&found) {
                if let Some(prefix) = real.parent().and_then(Path::parent) {
                    self.add_bind(prefix);
                }
            }
        }
    }

    fn covered(&self, p: &Path) -> bool {
        let real = fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        self.binds
            .iter()
            .any(|b| p.starts_with(b) || real.starts_with(b))
    }

    /// Adds `p` unless a bind already covers it. Refuses a home directory
    /// or any directory containing one: keys live there.
    fn add_bind(&mut self, p: &Path) -> bool {
        if is_or_contains_a_home(p) {
            tracing::warn!(path = %p.display(), "not binding a home directory into the sandbox");
            return false;
        }
        if !self.covered(p) {
            self.binds.push(p.to_path_buf());
        }
        true
    }

    fn add_tool_dir(&mut self, bin: &Path, prefix: &Path) {
        if self.add_bind(prefix) && !self.path_dirs.iter().any(|d| d == bin) {
            self.path_dirs.push(bin.to_path_buf());
        }
    }

    /// The directories above the binds that no bind provides, outermost
    /// first.
    fn bind_parents(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for bind in &self.binds {
            let mut ancestors: Vec<&Path> = bind
                .ancestors()
                .skip(1)
                .filter(|a| a.parent().is_some())
                .collect();
            ancestors.reverse();
            for a in ancestors {
                let provided = self.binds.iter().any(|b| a.starts_with(b))
                    || self.symlinks.iter().any(|(l, _)| a.starts_with(l));
                if !provided && !dirs.iter().any(|d| d == a) {
                    dirs.push(a.to_path_buf());
                }
            }
        }
        dirs
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

fn is_or_contains_a_home(p: &Path) -> bool {
    let real = fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let homes = ["/root", "/home"]
        .into_iter()
        .map(PathBuf::from)
        .chain(std::env::var_os("HOME").map(PathBuf::from));
    homes
        .into_iter()
        .any(|h| h.starts_with(&real) || h.starts_with(p))
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

/// One sandboxed run.
#[derive(Debug)]
pub(crate) struct Job<'a> {
    /// Host directory for this run's control files, visible read-only at
    /// /pyrsia/ctl.
    pub ctl_dir: &'a Path,
    /// Extra read-only binds: (host path, path inside).
    pub binds: Vec<(&'a Path, &'a str)>,
    /// The shell script the sandbox runs; fd 3 is the results stream.
    pub script: String,
    pub env: &'a [(String, String)],
    /// Size of the tmpfs at /build.
    pub tmpfs_bytes: u64,
    pub network: Network,
    /// The namespaces to run in; the network one is used with
    /// [`Network::OfNamespace`].
    pub ns: &'a UserNamespace,
    pub limits: &'a Limits,
    pub cgroup: &'a BuildCgroup,
    pub deadline: Instant,
    /// Receives the results stream, up to `results_cap` bytes.
    pub results: &'a Path,
    pub results_cap: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Network {
    /// A network namespace of its own with only a loopback: builds.
    None,
    /// The host's: the source clone, which runs nothing of the package.
    Host,
    /// The job's namespace's: the dependency step, whose loopback holds
    /// the recording proxy and nothing else.
    OfNamespace,
}

#[derive(Debug)]
pub(crate) enum Ran {
    Exited {
        status: ExitStatus,
        /// The results stream was longer than its cap.
        results_truncated: bool,
    },
    TimedOut,
}

/// Runs `job`, appending everything it prints to `log`.
pub(crate) fn run(view: &HostView, job: &Job<'_>, log: &File) -> Result<Ran, BuildError> {
    let write_ctl = |name: &str, data: &[u8]| {
        let path = job.ctl_dir.join(name);
        fs::write(&path, data).context(|| format!("writing {name}"))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
            .context(|| format!("chmod {name}"))?;
        Ok::<PathBuf, BuildError>(path)
    };
    write_ctl("run.sh", wrapper_script(&job.script).as_bytes())?;
    write_ctl("passwd", PASSWD.as_bytes())?;
    write_ctl("group", GROUP.as_bytes())?;
    let filter = write_ctl("seccomp.bpf", &seccomp::filter_bytes())?;
    fs::set_permissions(job.ctl_dir, fs::Permissions::from_mode(0o755))
        .context(|| "chmod ctl".to_string())?;

    let mut bwrap = if job.network == Network::OfNamespace {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", job.ns.netns_path().display()))
            .arg("--")
            .arg("bwrap");
        c
    } else {
        Command::new("bwrap")
    };
    bwrap.args(bwrap_args(view, job));
    let cmd = with_fds(&bwrap, Some(&filter), job.ns);
    // Joins the cgroups, then applies the rlimits no cgroup carries.
    let mut argv: Vec<String> = vec![
        "/bin/sh".into(),
        "-c".into(),
        r#"n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n-1)); done; exec "$@""#.into(),
        "sh".into(),
    ];
    let procs = job.cgroup.procs_files();
    argv.push(procs.len().to_string());
    argv.extend(procs.iter().map(|p| p.to_string_lossy().into_owned()));
    let rlimits = job
        .cgroup
        .rlimits(job.limits.memory_bytes, job.limits.max_processes);
    if !rlimits.is_empty() {
        argv.push("prlimit".into());
        argv.extend(rlimits);
        argv.push("--".into());
    }
    argv.push(cmd.get_program().to_string_lossy().into_owned());
    argv.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    tracing::debug!(?argv, "starting sandbox");

    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", SYSTEM_PATH)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_group(&mut cmd).context(|| "starting bwrap".to_string())?;

    let results_thread = {
        let stdout = child.stdout.take();
        let mut file = File::create(job.results).context(|| "creating results".to_string())?;
        let cap = job.results_cap;
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
    // The cgroup also catches anything that left the process group.
    job.cgroup.release();
    let waited = waited.context(|| "waiting for the sandbox".to_string())?;
    let results = results_thread
        .join()
        .map_err(|_| BuildError::Sandbox("results reader panicked".to_string()))?
        .context(|| "reading the results stream".to_string())?;
    let _ = log_thread.join();

    Ok(match waited {
        Waited::Exited(status) => Ran::Exited {
            status,
            results_truncated: results.1,
        },
        Waited::TimedOut => Ran::TimedOut,
    })
}

/// Quotes `s` for a POSIX shell.
pub(crate) fn sq(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The sandbox's main process: results on fd 3 (the sandbox's stdout),
/// everything else to stderr, the log.
fn wrapper_script(script: &str) -> String {
    format!("umask 022\nexec 3>&1 1>&2 </dev/null\ncd /build || exit 120\n{script}")
}

fn bwrap_args(view: &HostView, job: &Job<'_>) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |args: &[&str]| a.extend(args.iter().map(|s| s.to_string()));
    push(&[
        "--userns",
        USERNS_FD,
        "--seccomp",
        SECCOMP_FD,
        "--die-with-parent",
        "--new-session",
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        HOSTNAME,
        "--clearenv",
    ]);
    if job.network == Network::None {
        push(&["--unshare-net"]);
    }
    for (link, target) in &view.symlinks {
        push(&[
            "--symlink",
            &target.to_string_lossy(),
            &link.to_string_lossy(),
        ]);
    }
    // bubblewrap would give mount points below /root the host's 0700.
    for dir in view.bind_parents() {
        push(&["--perms", "0755", "--dir", &dir.to_string_lossy()]);
    }
    for p in &view.binds {
        let p = p.to_string_lossy();
        push(&["--ro-bind", &p, &p]);
    }
    let ctl = job.ctl_dir.to_string_lossy();
    push(&["--ro-bind", &format!("{ctl}/passwd"), "/etc/passwd"]);
    push(&["--ro-bind", &format!("{ctl}/group"), "/etc/group"]);
    push(&["--tmpfs", "/dev"]);
    for dev in DEVICES {
        let p = format!("/dev/{dev}");
        push(&["--dev-bind", &p, &p]);
    }
    for (fd, name) in ["stdin", "stdout", "stderr"].iter().enumerate() {
        push(&[
            "--symlink",
            &format!("/proc/self/fd/{fd}"),
            &format!("/dev/{name}"),
        ]);
    }
    push(&[
        "--symlink",
        "/proc/self/fd",
        "/dev/fd",
        "--tmpfs",
        "/dev/shm",
    ]);
    push(&["--proc", "/proc"]);
    for entry in PROC_HIDDEN {
        if Path::new("/proc").join(entry).exists() {
            push(&["--ro-bind", "/dev/null", &format!("/proc/{entry}")]);
        }
    }
    for dir in PROC_READ_ONLY {
        if Path::new("/proc").join(dir).is_dir() {
            let p = format!("/proc/{dir}");
            push(&["--ro-bind", &p, &p]);
        }
    }
    let size = job.tmpfs_bytes.to_string();
    push(&["--perms", "0777", "--size", &size, "--tmpfs", "/build"]);
    push(&["--symlink", "/build/tmp", "/tmp"]);
    push(&["--perms", "0755", "--dir", "/pyrsia"]);
    push(&["--ro-bind", &ctl, "/pyrsia/ctl"]);
    for (host, inside) in &job.binds {
        push(&["--ro-bind", &host.to_string_lossy(), inside]);
    }
    for (k, v) in job.env {
        push(&["--setenv", k, v]);
    }
    push(&["--remount-ro", "/", "--chdir", "/build"]);
    push(DROP_TO_BUILDER);
    push(&["/bin/sh", "/pyrsia/ctl/run.sh"]);
    a
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
    }

    #[test]
    fn home_directories_are_never_bound() {
        assert!(is_or_contains_a_home(Path::new("/")));
        assert!(is_or_contains_a_home(Path::new("/root")));
        assert!(is_or_contains_a_home(Path::new("/home")));
        assert!(!is_or_contains_a_home(Path::new("/usr")));
    }
}
