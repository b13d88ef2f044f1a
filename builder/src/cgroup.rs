//! The resource limits of a sandbox: memory and process count.
//!
//! Memory: a cgroup when one can be created here (v2 with the memory
//! controller, else v1's memory hierarchy), otherwise RLIMIT_DATA.
//! RLIMIT_DATA rather than RLIMIT_AS: node (V8) and rustc reserve far more
//! address space than they ever touch, so an address-space limit breaks them;
//! RLIMIT_DATA counts only writable private mappings, close to what a build
//! really uses. It is per process, so a build with many processes can use
//! more in total; a cgroup has no such gap and also kills leftovers reliably.
//!
//! Processes: the pids controller (v2 in the same cgroup, else v1's pids
//! hierarchy), otherwise RLIMIT_NPROC, which counts the processes of the
//! sandbox's host uid: a fork bomb stops at the limit either way.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The cgroups (or rlimits) one build runs under.
#[derive(Debug)]
pub(crate) struct BuildCgroup {
    memory: Limit,
    pids: Limit,
}

#[derive(Debug)]
enum Limit {
    Cgroup { version: u8, dir: PathBuf },
    Rlimit,
}

impl BuildCgroup {
    /// Creates cgroups named `name` limited to `memory_bytes` and
    /// `max_processes`, falling back to rlimits. Never fails: the fallback
    /// always exists.
    pub(crate) fn new(name: &str, memory_bytes: u64, max_processes: u32) -> BuildCgroup {
        let v2 = cgroup_v2_parent();
        let memory = v2
            .as_deref()
            .and_then(|p| {
                make_v2(
                    p,
                    name,
                    "memory",
                    &[
                        ("memory.max", memory_bytes.to_string()),
                        ("memory.swap.max", "0".into()),
                    ],
                )
            })
            .map(|dir| Limit::Cgroup { version: 2, dir })
            .or_else(|| {
                cgroup_v1_parent("memory")
                    .and_then(|p| {
                        make_v1(
                            &p,
                            name,
                            &[
                                ("memory.limit_in_bytes", memory_bytes.to_string()),
                                ("memory.memsw.limit_in_bytes", memory_bytes.to_string()),
                            ],
                        )
                    })
                    .map(|dir| Limit::Cgroup { version: 1, dir })
            })
            .unwrap_or(Limit::Rlimit);
        let pids = match &memory {
            // v2: one cgroup carries both controllers.
            Limit::Cgroup { version: 2, dir }
                if write_limit(dir, "pids.max", &max_processes.to_string()) =>
            {
                Limit::Cgroup {
                    version: 2,
                    dir: dir.clone(),
                }
            }
            _ => cgroup_v1_parent("pids")
                .and_then(|p| make_v1(&p, name, &[("pids.max", max_processes.to_string())]))
                .map(|dir| Limit::Cgroup { version: 1, dir })
                .unwrap_or(Limit::Rlimit),
        };
        BuildCgroup { memory, pids }
    }

    /// For `build_env`, e.g. `cgroup2` or `cgroup1+rlimit`.
    pub(crate) fn describe(&self) -> String {
        let name = |l: &Limit| match l {
            Limit::Cgroup { version, .. } => format!("cgroup{version}"),
            Limit::Rlimit => "rlimit".to_string(),
        };
        let (m, p) = (name(&self.memory), name(&self.pids));
        if m == p {
            m
        } else {
            format!("{m}+{p}")
        }
    }

    /// The `cgroup.procs` files the sandbox's first process joins.
    pub(crate) fn procs_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.dirs().map(|d| d.join("cgroup.procs")).collect();
        files.dedup();
        files
    }

    /// `prlimit` options for the limits no cgroup carries.
    pub(crate) fn rlimits(&self, memory_bytes: u64, max_processes: u32) -> Vec<String> {
        let mut opts = Vec::new();
        if matches!(self.memory, Limit::Rlimit) {
            opts.push(format!("--data={memory_bytes}"));
        }
        if matches!(self.pids, Limit::Rlimit) {
            opts.push(format!("--nproc={max_processes}"));
        }
        opts
    }

    fn dirs(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.memory, &self.pids]
            .into_iter()
            .filter_map(|l| match l {
                Limit::Cgroup { dir, .. } => Some(dir),
                Limit::Rlimit => None,
            })
    }

    /// Kills whatever is still in the cgroups and removes them.
    pub(crate) fn release(&self) {
        for dir in self.dirs() {
            release_dir(dir);
        }
    }
}

impl Drop for BuildCgroup {
    fn drop(&mut self) {
        self.release();
    }
}

fn release_dir(dir: &Path) {
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

fn write_limit(dir: &Path, file: &str, value: &str) -> bool {
    fs::write(dir.join(file), value).is_ok()
}

/// Creates `parent/name` (or reuses it, for the second controller of v2)
/// when `controller` is enabled for children; the first limit must apply,
/// the others are best effort (swap accounting is often off).
fn make_v2(
    parent: &Path,
    name: &str,
    controller: &str,
    limits: &[(&str, String)],
) -> Option<PathBuf> {
    let controllers = fs::read_to_string(parent.join("cgroup.subtree_control")).ok()?;
    if !controllers.split_whitespace().any(|c| c == controller) {
        return None;
    }
    make_dir_with(parent.join(name), limits)
}

fn make_v1(parent: &Path, name: &str, limits: &[(&str, String)]) -> Option<PathBuf> {
    make_dir_with(parent.join(name), limits)
}

fn make_dir_with(dir: PathBuf, limits: &[(&str, String)]) -> Option<PathBuf> {
    fs::create_dir(&dir).ok()?;
    let mut limits = limits.iter();
    if let Some((file, value)) = limits.next() {
        if !write_limit(&dir, file, value) {
            let _ = fs::remove_dir(&dir);
            return None;
        }
    }
    for (file, value) in limits {
        let _ = write_limit(&dir, file, value);
    }
    Some(dir)
}

/// Our own cgroup v2 directory.
fn cgroup_v2_parent() -> Option<PathBuf> {
    let mount = mount_point(|fstype, _| fstype == "cgroup2")?;
    let own = own_cgroup(|controllers| controllers.is_empty())?;
    existing_under(&mount, &own)
}

/// Our own directory in the cgroup v1 hierarchy of `controller`.
fn cgroup_v1_parent(controller: &str) -> Option<PathBuf> {
    let mount =
        mount_point(|fstype, opts| fstype == "cgroup" && opts.split(',').any(|o| o == controller))?;
    let own = own_cgroup(|controllers| controllers.split(',').any(|c| c == controller))?;
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
