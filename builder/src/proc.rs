//! Running host commands with a deadline, killing their whole process group
//! when it passes.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

const POLL: Duration = Duration::from_millis(25);

#[derive(Debug)]
pub(crate) struct Captured {
    pub status: ExitStatus,
    pub stdout: String,
}

#[derive(Debug)]
pub(crate) enum Waited {
    Exited(ExitStatus),
    TimedOut,
}

/// Spawns `cmd` as the leader of a new process group, so that a timeout can
/// kill everything it started (git's remote helpers, the sandbox wrapper).
pub(crate) fn spawn_group(cmd: &mut Command) -> std::io::Result<Child> {
    cmd.process_group(0).spawn()
}

/// Waits for `child` until `deadline`; past it, SIGKILLs the child's process
/// group and reaps the child.
pub(crate) fn wait_until(child: &mut Child, deadline: Instant) -> std::io::Result<Waited> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Waited::Exited(status));
        }
        if Instant::now() >= deadline {
            kill_group(child);
            child.wait()?;
            return Ok(Waited::TimedOut);
        }
        std::thread::sleep(POLL);
    }
}

pub(crate) fn kill_group(child: &Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // ESRCH only means the group already exited.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Runs `cmd` to completion (or the deadline) with stdout captured.
/// Returns None on timeout.
pub(crate) fn run_captured(
    cmd: &mut Command,
    deadline: Instant,
) -> std::io::Result<Option<Captured>> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = spawn_group(cmd)?;
    let stdout = child.stdout.take().map(read_to_string_thread);
    let waited = wait_until(&mut child, deadline)?;
    let stdout = stdout.map(join_string).unwrap_or_default();
    match waited {
        Waited::Exited(status) => Ok(Some(Captured { status, stdout })),
        Waited::TimedOut => Ok(None),
    }
}

fn read_to_string_thread<R: Read + Send + 'static>(mut r: R) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        // Version strings are small; cap them anyway.
        let _ = copy_capped(&mut r, &mut buf, 1 << 20);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn join_string(h: JoinHandle<String>) -> String {
    h.join().unwrap_or_default()
}

/// Copies `r` into `w` until EOF, writing at most `cap` bytes and draining the
/// rest (so the writer on the other end never blocks). Returns the bytes
/// written and whether anything was dropped.
pub(crate) fn copy_capped(
    r: &mut impl Read,
    w: &mut impl Write,
    cap: u64,
) -> std::io::Result<(u64, bool)> {
    let mut buf = [0u8; 64 * 1024];
    let mut written = 0u64;
    let mut dropped = false;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let room = cap.saturating_sub(written);
        let take = usize::try_from(room).unwrap_or(usize::MAX).min(n);
        if take > 0 {
            w.write_all(&buf[..take])?;
            written += take as u64;
        }
        if take < n {
            dropped = true;
        }
    }
    w.flush()?;
    Ok((written, dropped))
}
