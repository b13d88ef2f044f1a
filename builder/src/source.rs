//! Fetching the exact commit to build, and making the checkout identical on
//! every builder (permissions, mtimes, no `.git`).
//!
//! git runs in a sandbox of its own: the host's network (it is the one step
//! that needs it), but everything else as in a build: an unprivileged uid,
//! read-only system, and a size-limited tmpfs it clones into. The checkout
//! leaves it as a tar stream, capped at the same size, and is unpacked here
//! with every entry checked to stay inside the destination.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};
use std::time::Instant;

use filetime::FileTime;

use crate::cgroup::BuildCgroup;
use crate::error::{BuildError, IoContext};
use crate::sandbox::{self, HostView, Job, Network, Ran, UserNamespace};
use crate::Limits;

/// URL schemes a build request may name. Local paths and `file://` would let
/// a requester publish whatever repository happens to be on the builder's
/// disk; `ext::` and friends run commands. Plain `http://` is refused: it
/// adds nothing over `git://`, whose use is safe only because the commit id
/// pins every byte; https is what sources should use.
const ALLOWED_SCHEMES: &[&str] = &["https://", "git://"];
/// The most entries a checkout may have.
const MAX_ENTRIES: u64 = 200_000;

#[derive(Debug)]
pub(crate) struct Checkout {
    /// Committer time of the built commit, seconds since the epoch; becomes
    /// SOURCE_DATE_EPOCH and every file's mtime.
    pub commit_time: i64,
}

/// A commit id as accepted by [`fetch`]: exactly 40 hex digits, lower-cased.
pub(crate) fn parse_commit(commit: &str) -> Result<String, BuildError> {
    if commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(commit.to_ascii_lowercase())
    } else {
        Err(BuildError::BadCommit {
            commit: commit.to_string(),
        })
    }
}

/// How the clone script reports what went wrong.
const EXIT_CLONE: i32 = 90;
const EXIT_NO_COMMIT: i32 = 91;
const EXIT_CHECKOUT: i32 = 92;

/// Runs git with no user or system config, no hooks, no prompts, and only
/// the allowed transports.
const CLONE_SCRIPT: &str = r#"g() { git -c core.hooksPath=/dev/null -c core.symlinks=true -c core.autocrlf=false -c core.fsmonitor=false -c advice.detachedHead=false -c protocol.allow=never -c protocol.https.allow=always -c protocol.git.allow=always "$@"; }
mkdir -p /build/home /build/tmp || exit 120
g clone --quiet --no-checkout --no-tags -- "$PYRSIA_URL" /build/src || exit 90
cd /build/src || exit 120
if ! g cat-file -e "$PYRSIA_COMMIT^{commit}" 2>/dev/null; then
  # Not reachable from any advertised ref; servers that allow fetching by
  # id can still provide it.
  g fetch --quiet --no-tags origin "$PYRSIA_COMMIT"
  g cat-file -e "$PYRSIA_COMMIT^{commit}" 2>/dev/null || exit 91
fi
g checkout --quiet --detach "$PYRSIA_COMMIT" || exit 92
[ "$(g rev-parse HEAD)" = "$PYRSIA_COMMIT" ] || { echo "pyrsia: HEAD is not $PYRSIA_COMMIT after checkout"; exit 92; }
g show -s --format=%ct HEAD > /build/commit-time || exit 92
# The build sees a plain tree: no history to leak into outputs, and no git
# metadata whose layout differs between git versions.
rm -rf .git || exit 120
cd /build && exec tar -cf - commit-time src >&3
"#;

/// Clones `url` at `commit` (already validated by [`parse_commit`]) in a
/// sandbox and unpacks the tree, normalised, into `dest`, which must not
/// exist. `scratch` is an empty directory for control files. git's output
/// goes to `log`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fetch(
    url: &str,
    commit: &str,
    dest: &Path,
    scratch: &Path,
    limits: &Limits,
    cgroup_name: &str,
    deadline: Instant,
    log: &mut File,
    log_path: &Path,
) -> Result<Checkout, BuildError> {
    let unreachable = |reason: String| BuildError::SourceUnreachable {
        url: url.to_string(),
        reason,
    };
    if !ALLOWED_SCHEMES.iter().any(|s| url.starts_with(s)) {
        return Err(unreachable(format!(
            "only {} URLs are accepted",
            ALLOWED_SCHEMES.join(", ")
        )));
    }
    let ctl = scratch.join("ctl");
    fs::create_dir_all(&ctl).context(|| format!("creating {}", ctl.display()))?;
    let stream = scratch.join("source.tar");
    let env: Vec<(String, String)> = [
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("HOME", "/build/home"),
        ("TMPDIR", "/build/tmp"),
        ("LC_ALL", "C"),
        ("GIT_CONFIG_NOSYSTEM", "1"),
        ("GIT_CONFIG_GLOBAL", "/dev/null"),
        ("GIT_TERMINAL_PROMPT", "0"),
        ("GIT_ASKPASS", "/bin/false"),
        ("PYRSIA_URL", url),
        ("PYRSIA_COMMIT", commit),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let cgroup = BuildCgroup::new(cgroup_name, limits.memory_bytes, limits.max_processes);
    let ns = UserNamespace::create(false)?;
    let job = Job {
        ctl_dir: &ctl,
        binds: Vec::new(),
        script: CLONE_SCRIPT.to_string(),
        env: &env,
        tmpfs_bytes: limits.source_bytes,
        network: Network::Host,
        ns: &ns,
        limits,
        cgroup: &cgroup,
        deadline,
        results: &stream,
        results_cap: limits.source_bytes,
    };
    let _ = writeln!(log, "pyrsia: fetching the source");
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    // What git said, for the error: the caller drops the log of a build
    // that never started.
    let git_said = || {
        let text = fs::read(log_path).unwrap_or_default();
        let start = usize::try_from(log_start).unwrap_or(0).min(text.len());
        let text = String::from_utf8_lossy(&text[start..]);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
        if tail.is_empty() {
            "no output".to_string()
        } else {
            tail.chars().take(600).collect()
        }
    };
    let ran = sandbox::run(&HostView::discover(&[]), &job, log)?;
    match ran {
        Ran::TimedOut => return Err(unreachable("fetching timed out".to_string())),
        Ran::Exited {
            results_truncated: true,
            ..
        } => {
            return Err(unreachable(format!(
                "the checkout is larger than {} bytes",
                limits.source_bytes
            )))
        }
        Ran::Exited { status, .. } if !status.success() => {
            return Err(match status.code() {
                Some(EXIT_CLONE) => unreachable(format!("git clone failed: {}", git_said())),
                Some(EXIT_NO_COMMIT) => BuildError::UnknownCommit {
                    url: url.to_string(),
                    commit: commit.to_string(),
                },
                Some(EXIT_CHECKOUT) => {
                    unreachable(format!("checkout of {commit} failed: {}", git_said()))
                }
                None => unreachable(
                    "git was killed (the memory or process limit is the usual cause)".to_string(),
                ),
                Some(_) => {
                    BuildError::Sandbox(format!("fetching the source: {status}: {}", git_said()))
                }
            })
        }
        Ran::Exited { .. } => {}
    }

    let unpacked = scratch.join("unpacked");
    let commit_time = unpack_checkout(&stream, &unpacked)
        .map_err(|reason| unreachable(format!("unreadable checkout: {reason}")))?;
    let _ = fs::remove_file(&stream);
    fs::rename(unpacked.join("src"), dest)
        .context(|| format!("moving the checkout to {}", dest.display()))?;
    let _ = fs::remove_dir_all(&unpacked);
    normalise_tree(dest, FileTime::from_unix_time(commit_time, 0))?;
    Ok(Checkout { commit_time })
}

/// Unpacks the clone sandbox's stream (`commit-time` and `src/…`) into
/// `dest` and returns the commit time. Every entry must be a plain relative
/// path, and tar's own checks keep links from writing outside `dest`.
fn unpack_checkout(stream: &Path, dest: &Path) -> Result<i64, String> {
    fs::create_dir_all(dest).map_err(|e| e.to_string())?;
    let mut archive = tar::Archive::new(File::open(stream).map_err(|e| e.to_string())?);
    let mut entries = 0u64;
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        entries += 1;
        if entries > MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} entries"));
        }
        let path = entry.path().map_err(|e| e.to_string())?.into_owned();
        let plain = path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        let top = path.components().next();
        let inside = matches!(top, Some(Component::Normal(n)) if n == "src" || n == "commit-time");
        if !plain || !inside {
            return Err(format!("unexpected entry {}", path.display()));
        }
        if !entry
            .unpack_in(dest)
            .map_err(|e| format!("{}: {e}", path.display()))?
        {
            return Err(format!("entry {} escapes the checkout", path.display()));
        }
    }
    let time =
        fs::read_to_string(dest.join("commit-time")).map_err(|e| format!("commit time: {e}"))?;
    time.trim()
        .parse()
        .map_err(|_| format!("unreadable commit time {:?}", time.trim()))
}

/// Gives every entry the commit's time and git's notion of permissions
/// (0755 when executable, else 0644), so nothing about this host's clone
/// (umask, clock) can reach the build.
fn normalise_tree(root: &Path, time: FileTime) -> Result<(), BuildError> {
    for entry in fs::read_dir(root).context(|| format!("reading {}", root.display()))? {
        let entry = entry.context(|| format!("reading {}", root.display()))?;
        let path = entry.path();
        let ty = entry
            .file_type()
            .context(|| format!("stat {}", path.display()))?;
        if ty.is_symlink() {
            filetime::set_symlink_file_times(&path, time, time)
                .context(|| format!("setting times of {}", path.display()))?;
            continue;
        }
        if ty.is_dir() {
            normalise_tree(&path, time)?;
            set_mode(&path, 0o755)?;
        } else {
            let mode = entry
                .metadata()
                .context(|| format!("stat {}", path.display()))?
                .permissions()
                .mode();
            set_mode(&path, if mode & 0o111 != 0 { 0o755 } else { 0o644 })?;
        }
        filetime::set_file_times(&path, time, time)
            .context(|| format!("setting times of {}", path.display()))?;
    }
    set_mode(root, 0o755)?;
    filetime::set_file_times(root, time, time)
        .context(|| format!("setting times of {}", root.display()))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), BuildError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .context(|| format!("chmod {}", path.display()))
}
