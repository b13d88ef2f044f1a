//! The memory limit of a sandbox: a cgroup when one can be created here
//! (v2 with the memory controller, else v1's memory hierarchy), otherwise
//! RLIMIT_DATA.
//!
//! RLIMIT_DATA rather than RLIMIT_AS: node (V8) and rustc reserve far more
//! address space than they ever touch, so an address-space limit breaks them;
//! RLIMIT_DATA counts only writable private mappings, close to what a build
//! really uses. It is per process, so a build with many processes can use
//! more in total; a cgroup has no such gap and also kills leftovers reliably.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[derive(Debug)]
pub(crate) enum MemoryLimit {
    Cgroup { version: u8, dir: PathBuf },
    Rlimit { bytes: u64 },
}

impl MemoryLimit {
    /// Creates a cgroup named `name` limited to `bytes`, or falls back to an
    /// rlimit. Never fails: the fallback always exists.
    pub(crate) fn new(name: &str, bytes: u64) -> MemoryLimit {
        if let Some(dir) = cgroup_v2_parent().and_then(|p| make_v2(&p, name, bytes)) {
            return MemoryLimit::Cgroup { version: 2, dir };
        }
        if let Some(dir) = cgroup_v1_parent().and_then(|p| make_v1(&p, name, bytes)) {
            return MemoryLimit::Cgroup { version: 1, dir };
        }
        MemoryLimit::Rlimit { bytes }
    }

    pub(crate) fn describe(&self) -> &'static str {
        match self {
            MemoryLimit::Cgroup { version: 2, .. } => "cgroup2",
            MemoryLimit::Cgroup { .. } => "cgroup1",
            MemoryLimit::Rlimit { .. } => "rlimit",
        }
    }

    /// Prefix for the sandbox command line that applies the limit before the
    /// sandbox starts, so that every process in it inherits the limit.
    pub(crate) fn command_prefix(&self) -> Vec<String> {
        match self {
            MemoryLimit::Cgroup { dir, .. } => vec![
                "/bin/sh".to_string(),
                "-c".to_string(),
                r#"echo $$ > "$1" && shift && exec "$@""#.to_string(),
                "sh".to_string(),
                dir.join("cgroup.procs").to_string_lossy().into_owned(),
            ],
            MemoryLimit::Rlimit { bytes } => vec![
                "prlimit".to_string(),
                format!("--data={bytes}"),
                "--".to_string(),
            ],
        }
    }

    /// Kills whatever is still in the cgroup and removes it.
    pub(crate) fn release(&self) {
        let MemoryLimit::Cgroup { dir, .. } = self else {
            return;
        };
        if !dir.exists() {
            return;
        }
        let give_up = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            let mut any = false;
            for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                any = true;
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            if (!any && fs::remove_dir(dir).is_ok()) || Instant::now() > give_up {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if dir.exists() {
            tracing::warn!(cgroup = %dir.display(), "could not remove the build's cgroup");
        }
    }
}

fn make_v2(parent: &Path, name: &str, bytes: u64) -> Option<PathBuf> {
    let controllers = fs::read_to_string(parent.join("cgroup.subtree_control")).ok()?;
    if !controllers.split_whitespace().any(|c| c == "memory") {
        return None;
    }
    let dir = parent.join(name);
    fs::create_dir(&dir).ok()?;
    if fs::write(dir.join("memory.max"), bytes.to_string()).is_err() {
        let _ = fs::remove_dir(&dir);
        return None;
    }
    // Swap would let a build exceed the limit while thrashing the host.
    let _ = fs::write(dir.join("memory.swap.max"), "0");
    Some(dir)
}

fn make_v1(parent: &Path, name: &str, bytes: u64) -> Option<PathBuf> {
    let dir = parent.join(name);
    fs::create_dir(&dir).ok()?;
    if fs::write(dir.join("memory.limit_in_bytes"), bytes.to_string()).is_err() {
        let _ = fs::remove_dir(&dir);
        return None;
    }
    let _ = fs::write(dir.join("memory.memsw.limit_in_bytes"), bytes.to_string());
    Some(dir)
}

/// Our own cgroup v2 directory.
fn cgroup_v2_parent() -> Option<PathBuf> {
    let mount = mount_point(|fstype, _| fstype == "cgroup2")?;
    let own = own_cgroup(|controllers| controllers.is_empty())?;
    existing_under(&mount, &own)
}

/// Our own directory in the cgroup v1 memory hierarchy.
fn cgroup_v1_parent() -> Option<PathBuf> {
    let mount =
        mount_point(|fstype, opts| fstype == "cgroup" && opts.split(',').any(|o| o == "memory"))?;
    let own = own_cgroup(|controllers| controllers.split(',').any(|c| c == "memory"))?;
    existing_under(&mount, &own)
}

/// `mount/own`, or `mount` itself when a cgroup namespace hides our path.
fn existing_under(mount: &Path, own: &str) -> Option<PathBuf> {
    let candidate = mount.join(own.trim_start_matches('/'));
    if candidate.is_dir() {
        Some(candidate)
    } else if mount.is_dir() {
        Some(mount.to_path_buf())
    } else {
        None
    }
}

/// The path in /proc/self/cgroup of the hierarchy whose controller list
/// satisfies `pick`.
fn own_cgroup(pick: impl Fn(&str) -> bool) -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let _id = parts.next()?;
        let controllers = parts.next()?;
        let path = parts.next()?;
        pick(controllers).then(|| path.to_string())
    })
}

/// The first mount point in /proc/self/mountinfo whose filesystem type and
/// super options satisfy `pick`.
fn mount_point(pick: impl Fn(&str, &str) -> bool) -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount = left.split(' ').nth(4)?;
        let mut right = right.split(' ');
        let fstype = right.next()?;
        let _source = right.next()?;
        let opts = right.next().unwrap_or("");
        pick(fstype, opts).then(|| PathBuf::from(mount))
    })
}
