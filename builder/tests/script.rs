//! The `script` recipe, the sandbox's isolation and limits, and source errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use builder::BuildError;
use common::*;

const SCRIPT_TOML: &str = r#"command = ["sh", "build.sh"]
outputs = ["out/hello.tar.gz", "out/stat.txt", "out/env.txt"]
"#;

/// Output depends on the checkout's mtimes and permissions, the environment
/// and the fixed build path, all of which the builder must pin.
const SCRIPT_BUILD: &str = r#"set -e
mkdir -p out
tar -czf out/hello.tar.gz README data
stat -c '%Y %a %n' README data data/* > out/stat.txt
{ pwd; echo "$SOURCE_DATE_EPOCH $TZ $LC_ALL $HOME"; umask; id -u; hostname; } > out/env.txt
"#;

fn script_repo(server: &GitServer, name: &str) -> (String, String) {
    server.repo(
        name,
        &[
            ("pyrsia-build.toml", SCRIPT_TOML, false),
            ("build.sh", SCRIPT_BUILD, false),
            ("README", "hello\n", false),
            ("data/run.sh", "echo run\n", true),
            ("data/a.txt", "a\n", false),
        ],
    )
}

#[test]
fn script_builds_are_reproducible() {
    let server = GitServer::start();
    let (url, commit) = script_repo(&server, "hello");
    let spec = spec("script", "hello", "1.0.0", &url, &commit);

    let built = build_twice_identical(&spec);
    let names: Vec<&str> = built.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["env.txt", "hello.tar.gz", "stat.txt"]);

    // Normalised inside the sandbox: the same bytes.
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.normaliser = Some(vec![env!("CARGO_BIN_EXE_pyrsia-normalise").to_string()]);
    let inside = builder::build(&spec, &cfg).unwrap_or_else(|e| panic!("{e}\n{}", read_log(&e)));
    assert_eq!(digests(&inside), built);

    let tmp = tempfile::tempdir().unwrap();
    let out = builder::build(&spec, &config(tmp.path())).unwrap();
    let env = std::fs::read_to_string(&out.outputs[0].path).unwrap();
    let commit_time = 1_709_294_400; // 2024-03-01T12:00:00Z, the fixture's commit date
    assert_eq!(
        env,
        format!("/build/src\n{commit_time} UTC C /build/home\n0022\n1000\npyrsia-build\n")
    );
    let stat = std::fs::read_to_string(&out.outputs[2].path).unwrap();
    assert!(
        stat.starts_with(&format!("{commit_time} 644 README\n")),
        "{stat}"
    );
    assert!(
        stat.contains(&format!("{commit_time} 755 data/run.sh\n")),
        "{stat}"
    );
}

#[test]
fn outputs_that_embed_the_time_differ() {
    let server = GitServer::start();
    let (url, commit) = server.repo(
        "clock",
        &[
            (
                "pyrsia-build.toml",
                "command = [\"sh\", \"-c\", \"mkdir out && date +%s%N > out/now && head -c 16 /dev/urandom >> out/now\"]\noutputs = [\"out/now\"]\n",
                false,
            ),
        ],
    );
    let spec = spec("script", "clock", "1", &url, &commit);
    let tmp = tempfile::tempdir().unwrap();
    let a = builder::build(&spec, &config(&tmp.path().join("a"))).unwrap();
    let b = builder::build(&spec, &config(&tmp.path().join("b"))).unwrap();
    assert_eq!(a.outputs[0].name, "now");
    assert_ne!(sha256(&a.outputs[0].path), sha256(&b.outputs[0].path));
}

#[test]
fn the_build_cannot_reach_the_network() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 16];
            let _ = conn.read(&mut buf);
        }
    });
    let connect = format!(
        "import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3).close(); print('connected')"
    );

    // The same command reaches the listener from the host, so a failure in
    // the sandbox is the sandbox's doing.
    let host = Command::new("python3")
        .args(["-c", &connect])
        .output()
        .unwrap();
    assert!(
        host.status.success(),
        "{}",
        String::from_utf8_lossy(&host.stderr)
    );

    let server = GitServer::start();
    let toml = format!("command = [\"python3\", \"-c\", {connect:?}]\noutputs = [\"never\"]\ntoolchains = [\"python\"]\n");
    let (url, commit) = server.repo("net", &[("pyrsia-build.toml", &toml, false)]);
    let spec = spec("script", "net", "1", &url, &commit);
    let tmp = tempfile::tempdir().unwrap();
    match builder::build(&spec, &config(tmp.path())) {
        Err(BuildError::BuildFailed { log_path, .. }) => {
            let log = std::fs::read_to_string(log_path).unwrap();
            assert!(!log.contains("\nconnected"), "{log}");
            assert!(log.contains("Error"), "{log}");
        }
        other => panic!("expected BuildFailed, got {other:?}"),
    }
}

#[test]
fn a_build_past_its_time_limit_is_killed() {
    let server = GitServer::start();
    let (url, commit) = server.repo(
        "sleepy",
        &[
            (
                "pyrsia-build.toml",
                "command = [\"sh\", \"-c\", \"echo started; sleep 4242 & sleep 4243\"]\noutputs = [\"never\"]\n",
                false,
            ),
        ],
    );
    let spec = spec("script", "sleepy", "1", &url, &commit);
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.limits.time = Duration::from_secs(4);
    let started = std::time::Instant::now();
    match builder::build(&spec, &cfg) {
        Err(BuildError::TimedOut { limit, log_path }) => {
            assert_eq!(limit, Duration::from_secs(4));
            let log = std::fs::read_to_string(log_path).unwrap();
            assert!(log.contains("started"), "{log}");
        }
        other => panic!("expected TimedOut, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(15));
    let survivors = processes_with_arg("4242").len() + processes_with_arg("4243").len();
    assert_eq!(survivors, 0, "build processes outlived the sandbox");
}

fn processes_with_arg(arg: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            if args.first().is_some_and(|a| a.ends_with(b"sleep")) && args.contains(&arg.as_bytes())
            {
                found.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
    }
    found
}

#[test]
fn source_problems_are_reported_precisely() {
    let server = GitServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let (url, commit) = script_repo(&server, "real");

    let missing = format!("git://127.0.0.1:{}/no-such-repo", server.port);
    let e = builder::build(&spec("script", "x", "1", &missing, &commit), &cfg).unwrap_err();
    // git's own words are in the error.
    assert!(
        matches!(&e, BuildError::SourceUnreachable { reason, .. } if reason.contains("fatal")),
        "{e}"
    );

    let closed = format!("git://127.0.0.1:{}/real", free_port());
    let e = builder::build(&spec("script", "x", "1", &closed, &commit), &cfg).unwrap_err();
    assert!(matches!(e, BuildError::SourceUnreachable { .. }), "{e}");

    let local = server.base.path().join("real").display().to_string();
    let e = builder::build(&spec("script", "x", "1", &local, &commit), &cfg).unwrap_err();
    assert!(
        matches!(&e, BuildError::SourceUnreachable { reason, .. } if reason.contains("URLs are accepted")),
        "{e}"
    );

    let unknown = "0123456789abcdef0123456789abcdef01234567";
    let e = builder::build(&spec("script", "x", "1", &url, unknown), &cfg).unwrap_err();
    assert!(
        matches!(&e, BuildError::UnknownCommit { commit, .. } if commit == unknown),
        "{e}"
    );

    let e = builder::build(&spec("script", "x", "1", &url, &commit[..12]), &cfg).unwrap_err();
    assert!(matches!(e, BuildError::BadCommit { .. }), "{e}");

    let mut s = spec("script", "x", "1", &url, &commit);
    s.recipe = "gradle".into();
    let e = builder::build(&s, &cfg).unwrap_err();
    assert!(matches!(e, BuildError::UnsupportedEcosystem { .. }), "{e}");

    // Nothing is left behind for these errors: no directory, no log.
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn bad_recipe_files_are_refused() {
    let server = GitServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    type Files<'a> = &'a [(&'a str, &'a str, bool)];
    let cases: &[(&str, Files<'_>, &str)] = &[
        ("no-file", &[("README", "x", false)], "missing"),
        (
            "not-toml",
            &[("pyrsia-build.toml", "command = [sh", false)],
            "",
        ),
        (
            "escapes",
            &[(
                "pyrsia-build.toml",
                "command = [\"true\"]\noutputs = [\"../x\"]\n",
                false,
            )],
            "..",
        ),
        (
            "absolute",
            &[(
                "pyrsia-build.toml",
                "command = [\"true\"]\noutputs = [\"/etc/passwd\"]\n",
                false,
            )],
            "relative",
        ),
        (
            "no-command",
            &[(
                "pyrsia-build.toml",
                "command = []\noutputs = [\"x\"]\n",
                false,
            )],
            "command",
        ),
        (
            "unknown-key",
            &[(
                "pyrsia-build.toml",
                "command = [\"true\"]\noutputs = [\"x\"]\nnetwork = true\n",
                false,
            )],
            "network",
        ),
    ];
    for (name, files, needle) in cases {
        let (url, commit) = server.repo(name, files);
        match builder::build(&spec("script", name, "1", &url, &commit), &cfg) {
            Err(BuildError::BadRecipe { reason }) => {
                assert!(reason.contains(needle), "{name}: {reason}")
            }
            other => panic!("{name}: expected BadRecipe, got {other:?}"),
        }
    }
}

#[test]
fn failures_keep_their_log() {
    let server = GitServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());

    let (url, commit) = server.repo(
        "fails",
        &[(
            "pyrsia-build.toml",
            "command = [\"sh\", \"-c\", \"echo compiling; echo broken >&2; exit 3\"]\noutputs = [\"x\"]\n",
            false,
        )],
    );
    match builder::build(&spec("script", "fails", "1", &url, &commit), &cfg) {
        Err(BuildError::BuildFailed { status, log_path }) => {
            assert_eq!(status, "exit status 3");
            let log = std::fs::read_to_string(log_path).unwrap();
            assert!(log.contains("compiling\nbroken\n"), "{log}");
        }
        other => panic!("expected BuildFailed, got {other:?}"),
    }

    let (url, commit) = server.repo(
        "forgets",
        &[(
            "pyrsia-build.toml",
            "command = [\"sh\", \"-c\", \"mkdir out; echo a > out/a\"]\noutputs = [\"out/a\", \"out/b\"]\n",
            false,
        )],
    );
    match builder::build(&spec("script", "forgets", "1", &url, &commit), &cfg) {
        Err(BuildError::OutputMissing { name, log_path }) => {
            assert_eq!(name, "out/b");
            assert!(log_path.exists());
        }
        other => panic!("expected OutputMissing, got {other:?}"),
    }
}

#[test]
fn the_disk_limit_bounds_the_build() {
    let server = GitServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.limits.disk_bytes = 8 << 20;
    let (url, commit) = server.repo(
        "big",
        &[(
            "pyrsia-build.toml",
            "command = [\"sh\", \"-c\", \"head -c 20000000 /dev/zero > big\"]\noutputs = [\"big\"]\n",
            false,
        )],
    );
    match builder::build(&spec("script", "big", "1", &url, &commit), &cfg) {
        Err(BuildError::BuildFailed { log_path, .. }) => {
            let log = std::fs::read_to_string(log_path).unwrap();
            assert!(log.contains("No space left on device"), "{log}");
        }
        other => panic!("expected BuildFailed, got {other:?}"),
    }
}

#[test]
fn the_memory_limit_stops_a_greedy_build() {
    let server = GitServer::start();
    let (url, commit) = server.repo(
        "greedy",
        &[(
            "pyrsia-build.toml",
            "command = [\"python3\", \"-c\", \"b = bytearray(768 << 20); b[::4096] = b'x' * len(b[::4096]); print('allocated')\"]\noutputs = [\"x\"]\ntoolchains = [\"python\"]\n",
            false,
        )],
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.limits.memory_bytes = 256 << 20;
    match builder::build(&spec("script", "greedy", "1", &url, &commit), &cfg) {
        Err(BuildError::BuildFailed { log_path, .. }) => {
            let log = std::fs::read_to_string(log_path).unwrap();
            assert!(!log.contains("\nallocated"), "{log}");
        }
        other => panic!("expected BuildFailed, got {other:?}"),
    }
}
