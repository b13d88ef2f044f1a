//! The emulator refuses settings it cannot honour before touching any queue.
//! (Also, because this package has an integration test, `cargo test
//! --workspace` builds the `pyrsia-linkem` binary that the namespace tests in
//! `cli/tests/faults.rs` run.)

#![allow(clippy::expect_used)] // a test: failing to run the binary fails it

use std::process::Command;

fn linkem(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pyrsia-linkem"))
        .args(args)
        .output()
        .expect("running pyrsia-linkem")
}

#[test]
fn impossible_settings_are_refused_with_the_reason() {
    for args in [
        ["--queue", "7", "--loss-pct=150", "--delay-ms=1"],
        ["--queue", "7", "--delay-ms=-1", "--loss-pct=0"],
        ["--queue", "7", "--jitter-ms=-5", "--loss-pct=0"],
    ] {
        let out = linkem(&args);
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("delay and jitter must be >= 0 and loss within 0..=100"),
            "{args:?}: {err}"
        );
    }
}
