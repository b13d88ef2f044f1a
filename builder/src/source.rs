//! Fetching the exact commit to build, and making the checkout identical on
//! every builder (permissions, mtimes, no `.git`).

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use filetime::FileTime;

use crate::error::{BuildError, IoContext};
use crate::proc::{run_captured, tail};

/// URL schemes a build request may name. Local paths and `file://` would let a
/// requester publish whatever repository happens to be on the builder's disk;
/// `ext::` and friends run commands.
const ALLOWED_SCHEMES: &[&str] = &["https://", "http://", "git://"];

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

/// Clones `url` into `dest`, checks out `commit` (already validated by
/// [`parse_commit`]), verifies HEAD, then removes `.git` and normalises the
/// tree. Git's stderr goes to `log`.
pub(crate) fn fetch(
    url: &str,
    commit: &str,
    dest: &Path,
    deadline: Instant,
    log: &mut fs::File,
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
    let home = dest.parent().unwrap_or(dest);

    let clone = git(home, log, deadline, |c| {
        c.args(["clone", "--quiet", "--no-checkout", "--no-tags", "--"])
            .arg(url)
            .arg(dest);
    })?;
    match clone {
        Some(out) if out.status.success() => {}
        Some(out) => return Err(unreachable(tail(&out.stderr))),
        None => return Err(unreachable("git clone timed out".to_string())),
    }

    let in_repo = |c: &mut Command| {
        c.arg("-C").arg(dest);
    };
    let has_commit = |log: &mut fs::File| -> Result<bool, BuildError> {
        let out = git(home, log, deadline, |c| {
            in_repo(c);
            c.args(["cat-file", "-e", &format!("{commit}^{{commit}}")]);
        })?;
        Ok(out.is_some_and(|o| o.status.success()))
    };
    if !has_commit(log)? {
        // Not reachable from any advertised ref; servers that allow fetching
        // by id (GitHub does) can still provide it.
        git(home, log, deadline, |c| {
            in_repo(c);
            c.args(["fetch", "--quiet", "--no-tags", "origin", commit]);
        })?;
        if !has_commit(log)? {
            return Err(BuildError::UnknownCommit {
                url: url.to_string(),
                commit: commit.to_string(),
            });
        }
    }

    let checkout = git(home, log, deadline, |c| {
        in_repo(c);
        c.args(["checkout", "--quiet", "--detach", commit]);
    })?;
    if !checkout.as_ref().is_some_and(|o| o.status.success()) {
        let why = checkout.map_or("timed out".to_string(), |o| tail(&o.stderr));
        return Err(unreachable(format!("checkout of {commit} failed: {why}")));
    }
    let head = git_stdout(home, log, deadline, dest, &["rev-parse", "HEAD"])?;
    if head != commit {
        return Err(unreachable(format!(
            "HEAD is {head} after checking out {commit}"
        )));
    }
    let time = git_stdout(
        home,
        log,
        deadline,
        dest,
        &["show", "-s", "--format=%ct", "HEAD"],
    )?;
    let commit_time: i64 = time
        .parse()
        .map_err(|_| unreachable(format!("unreadable commit time {time:?}")))?;

    // The build sees a plain tree: no history to leak into outputs, and no
    // git metadata whose layout differs between git versions.
    fs::remove_dir_all(dest.join(".git")).context(|| "removing .git".to_string())?;
    normalise_tree(dest, FileTime::from_unix_time(commit_time, 0))?;
    Ok(Checkout { commit_time })
}

/// Runs git with a clean environment and config: no user or system config,
/// no hooks, no prompts, and only network transports.
fn git(
    home: &Path,
    log: &mut fs::File,
    deadline: Instant,
    args: impl FnOnce(&mut Command),
) -> Result<Option<crate::proc::Captured>, BuildError> {
    let mut cmd = Command::new("git");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("LC_ALL", "C")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "/bin/false")
        .args([
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "core.symlinks=true",
            "-c",
            "core.autocrlf=false",
            "-c",
            "core.fsmonitor=false",
            "-c",
            "advice.detachedHead=false",
            "-c",
            "protocol.allow=never",
            "-c",
            "protocol.https.allow=always",
            "-c",
            "protocol.http.allow=always",
            "-c",
            "protocol.git.allow=always",
        ]);
    args(&mut cmd);
    let out = run_captured(&mut cmd, deadline).context(|| "running git".to_string())?;
    if let Some(out) = &out {
        if !out.stderr.is_empty() {
            let _ = log.write_all(out.stderr.as_bytes());
        }
    }
    Ok(out)
}

fn git_stdout(
    home: &Path,
    log: &mut fs::File,
    deadline: Instant,
    repo: &Path,
    args: &[&str],
) -> Result<String, BuildError> {
    let out = git(home, log, deadline, |c| {
        c.arg("-C").arg(repo).args(args);
    })?;
    match out {
        Some(o) if o.status.success() => Ok(o.stdout.trim().to_string()),
        Some(o) => Err(BuildError::Sandbox(format!(
            "git {} failed: {}",
            args.join(" "),
            tail(&o.stderr)
        ))),
        None => Err(BuildError::Sandbox(format!(
            "git {} timed out",
            args.join(" ")
        ))),
    }
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
