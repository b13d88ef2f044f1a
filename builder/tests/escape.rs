//! Builds that try to break out of the sandbox or take the builder down.
//! Each attack runs for real inside a build; where the same attack succeeds
//! from the host, the test checks that first, so a pass means the sandbox
//! stopped it. After every attack the builder still builds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use builder::BuildError;
use common::*;

/// Runs one `sh` command line per probe; each prints `escaped` or `blocked`.
const PROBES: &str = r#"set +e
probe() { if sh -c "$2" >/dev/null 2>&1; then echo "$1 escaped"; else echo "$1 blocked"; fi; }
probe core_pattern 'cat /proc/sys/kernel/core_pattern > /build/tmp/cp && cat /build/tmp/cp > /proc/sys/kernel/core_pattern'
probe sysrq 'echo h > /proc/sysrq-trigger'
probe secret "cat \"$SECRET\""
probe nested_userns 'unshare --user true'
probe mount 'mkdir -p /build/tmp/m && mount -t tmpfs none /build/tmp/m'
probe tty '[ -e /dev/tty ]'
probe ptrace 'python3 -c "import ctypes,sys; sys.exit(ctypes.CDLL(None).ptrace(0, 0, 0, 0) != 0)"'
probe root '[ "$(id -u)" = 0 ]'
probe capabilities 'grep -q "^CapEff:.*[1-9a-f]" /proc/self/status'
# The tools the probes use are there: a probe is not "blocked" for want of them.
python3 -c '' && command -v unshare mount >/dev/null && echo "tools present"
"#;

/// The probes that must be attempted from the host first to show that they
/// work there (the test runs as root): the sandbox is what stops them.
const HOST_BASELINE: &[(&str, &str)] = &[
    (
        "core_pattern",
        "cat /proc/sys/kernel/core_pattern > $TMP/cp && cat $TMP/cp > /proc/sys/kernel/core_pattern",
    ),
    ("secret", "cat \"$SECRET\""),
    ("nested_userns", "unshare --user true"),
];

fn toml(command: &str, outputs: &[&str], toolchains: &[&str]) -> String {
    format!("command = [\"sh\", \"-c\", {command:?}]\noutputs = {outputs:?}\ntoolchains = {toolchains:?}\n")
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n")
}

/// A build that works: the builder is still fine after an attack.
fn assert_builds_still_work(server: &GitServer, work: &Path) {
    let (url, commit) = server.repo(
        &format!("fine-{}", std::process::id()),
        &[(
            "pyrsia-build.toml",
            &toml("mkdir out && echo ok > out/ok", &["out/ok"], &[]),
            false,
        )],
    );
    let out = builder::build(&spec("script", "fine", "1", &url, &commit), &config(work))
        .unwrap_or_else(|e| panic!("a plain build after the attack: {e}\n{}", read_log(&e)));
    assert_eq!(
        std::fs::read_to_string(&out.outputs[0].path).unwrap(),
        "ok\n"
    );
}

#[test]
fn escape_attempts_from_inside_a_build_are_blocked() {
    let tmp = tempfile::tempdir().unwrap();
    // Stands for the builder's key: a file of the builder's host, outside
    // every bind.
    let secret = tmp.path().join("node_key.json");
    std::fs::write(&secret, "{\"secret\": \"builder key\"}").unwrap();
    if is_root() {
        for (name, cmd) in HOST_BASELINE {
            let ok = std::process::Command::new("sh")
                .args(["-c", cmd])
                .env("SECRET", &secret)
                .env("TMP", tmp.path())
                .status()
                .unwrap()
                .success();
            assert!(
                ok,
                "{name} fails from the host too: the test would prove nothing"
            );
        }
    }

    let server = GitServer::start();
    let probes = PROBES.replace("$SECRET", &secret.to_string_lossy());
    let command = format!("mkdir -p out; {{ {probes}\n}} > out/report.txt");
    let (url, commit) = server.repo(
        "escape",
        &[(
            "pyrsia-build.toml",
            &toml(&command, &["out/report.txt"], &["python"]),
            false,
        )],
    );
    let out = builder::build(
        &spec("script", "escape", "1", &url, &commit),
        &config(&tmp.path().join("work")),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", read_log(&e)));
    let report = std::fs::read_to_string(&out.outputs[0].path).unwrap();
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), 10, "every probe ran: {report}");
    assert_eq!(lines[9], "tools present", "{report}");
    for line in &lines[..9] {
        assert!(line.ends_with(" blocked"), "{report}");
    }
    assert_builds_still_work(&server, &tmp.path().join("work"));
}

#[test]
fn a_fork_bomb_stops_at_the_process_limit() {
    let server = GitServer::start();
    // Each level forks two more until fork fails; then the shell reports
    // it and the build is killed at its time limit.
    let (url, commit) = server.repo(
        "forkbomb",
        &[(
            "pyrsia-build.toml",
            &toml("b() { b | b & }; b; sleep 600", &["never"], &[]),
            false,
        )],
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(&tmp.path().join("work"));
    cfg.limits.max_processes = 64;
    cfg.limits.time = Duration::from_secs(8);
    let started = Instant::now();
    let err = builder::build(&spec("script", "forkbomb", "1", &url, &commit), &cfg).unwrap_err();
    assert!(
        matches!(
            err,
            BuildError::TimedOut { .. } | BuildError::BuildFailed { .. }
        ),
        "{err}"
    );
    let log = read_log(&err);
    assert!(
        log.contains("fork") || log.contains("Resource temporarily unavailable"),
        "the bomb never hit the limit:\n{log}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_builds_still_work(&server, &tmp.path().join("work"));
}

#[test]
fn outputs_that_are_bombs_or_point_outside_fail_the_build_not_the_builder() {
    let server = GitServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    // (name, command, output, the reason a mismatch must give; None: the
    // output is never collected)
    let cases = [
        (
            "gzip-bomb",
            // 2 GiB of zeros in one tar entry: a few MiB compressed, more
            // than the 1 GiB an output may expand to.
            "mkdir out && truncate -s 2G zeros && tar -cf - zeros | gzip -1 > out/bomb.tar.gz",
            "out/bomb.tar.gz",
            Some("compression bomb"),
        ),
        (
            "link-out",
            "mkdir out pkg && ln -s /etc/passwd pkg/passwd && tar -czf out/links.tar.gz pkg",
            "out/links.tar.gz",
            Some("leaves the archive"),
        ),
        (
            "link-output",
            "mkdir out && ln -s /etc/passwd out/passwd",
            "out/passwd",
            None,
        ),
    ];
    // Normalised by the builder process, and inside the sandbox.
    let normalisers = [
        None,
        Some(vec![env!("CARGO_BIN_EXE_pyrsia-normalise").to_string()]),
    ];
    for normaliser in normalisers {
        for (name, command, output, reason) in &cases {
            let (url, commit) = server.repo(
                &format!("{name}-{}", normaliser.is_some()),
                &[("pyrsia-build.toml", &toml(command, &[output], &[]), false)],
            );
            let mut cfg = config(&work);
            cfg.limits.disk_bytes = 256 << 20;
            cfg.normaliser = normaliser.clone();
            match builder::build(&spec("script", name, "1", &url, &commit), &cfg) {
                Err(BuildError::OutputMismatch { reason: r, .. }) if reason.is_some() => {
                    assert!(r.contains(reason.unwrap_or_default()), "{name}: {r}")
                }
                // A symlink is not a regular file, so it is never collected.
                Err(BuildError::OutputMissing { .. }) if reason.is_none() => {}
                other => panic!("{name} ({normaliser:?}): {other:?}"),
            }
        }
    }
    assert_builds_still_work(&server, &work);
}

#[test]
fn failed_builds_leave_only_their_logs() {
    let server = GitServer::start();
    let (url, commit) = server.repo(
        "failing",
        &[(
            "pyrsia-build.toml",
            &toml(
                "head -c 4000000 /dev/urandom > junk; echo failing; exit 1",
                &["never"],
                &[],
            ),
            false,
        )],
    );
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    for _ in 0..50 {
        let err = builder::build(
            &spec("script", "failing", "1", &url, &commit),
            &config(&work),
        )
        .unwrap_err();
        assert!(matches!(err, BuildError::BuildFailed { .. }), "{err}");
        std::fs::remove_file(err.log_path().unwrap()).unwrap();
    }
    let left: Vec<_> = std::fs::read_dir(&work).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    for hierarchy in [
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup",
    ] {
        let Ok(dir) = std::fs::read_dir(hierarchy) else {
            continue;
        };
        let cgroups: Vec<String> = dir
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("pyrsia-build-failing"))
            .collect();
        assert!(
            cgroups.is_empty(),
            "cgroups left in {hierarchy}: {cgroups:?}"
        );
    }
}
