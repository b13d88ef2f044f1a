//! `pyrsia node start` as an operator runs it: one command supervising the
//! validator, the stores and the builders of `config/services.toml`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pyrsia_chain::RequestRecord;
use pyrsia_ledger_client::rpc::LedgerClient;
use support::fixtures::GitServer;
use support::{cometbft, devnet_init, eventually, pyrsia_bin, ServicePlan};

/// Processes whose command line mentions `needle` (the test's temp dir).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(cmdline);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn node_start_runs_the_whole_network_and_ctrl_c_stops_every_process() {
    let dir = tempfile::tempdir().unwrap();
    let plan = ServicePlan {
        regular_builders: 2,
        trusted_builders: 2,
        ..Default::default()
    };
    let base = devnet_init(dir.path(), 1, "300ms", &plan).unwrap();
    let home = dir.path().join("node0");
    let rpc = format!("http://127.0.0.1:{}", base + 1);
    let mut node = Command::new(pyrsia_bin())
        .arg("--home")
        .arg(&home)
        .args(["node", "start", "--cometbft"])
        .arg(cometbft())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let ledger = LedgerClient::new(&rpc).unwrap();
    ledger
        .wait_height(1, Duration::from_secs(180))
        .await
        .unwrap();
    for b in ["regular0", "regular1", "trusted0", "trusted1"] {
        let state = home.join("builders").join(b).join("work/state.json");
        eventually(
            Duration::from_secs(120),
            &format!("builder {b} to start following (its state file)"),
            || async { state.exists().then_some(()) },
        )
        .await;
    }

    let git = GitServer::start().unwrap();
    let f = git.npm_package("supervised", "1.0.0").unwrap();
    Command::new(pyrsia_bin())
        .arg("--home")
        .arg(&home)
        .args(["keys", "new", "--name", "requester"])
        .output()
        .unwrap();
    let out = Command::new(pyrsia_bin())
        .arg("--home")
        .arg(&home)
        .args([
            "--node",
            &rpc,
            "--json",
            "tx",
            "request-build",
            "--key",
            "requester",
        ])
        .args([
            "--ecosystem",
            "npm",
            "--name",
            &f.name,
            "--version",
            &f.version,
        ])
        .args([
            "--repo",
            &f.url,
            "--commit",
            &f.commit,
            "--wait",
            "--timeout",
            "300",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let waited: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(waited["level"], "reproducible", "{waited}");
    let id = waited["request_id"].as_str().unwrap();
    let record: RequestRecord = ledger
        .query_value(&format!("request/{id}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.attestations.len(), 4);

    let pid = Pid::from_raw(i32::try_from(node.id()).unwrap());
    kill(pid, Signal::SIGINT).unwrap();
    let exited = eventually(
        Duration::from_secs(60),
        "node start to exit on Ctrl-C",
        || {
            let status = node.try_wait().unwrap();
            async move { status }
        },
    )
    .await;
    assert!(
        exited.success(),
        "node start exited with {exited} on Ctrl-C"
    );
    let needle = dir.path().to_string_lossy().into_owned();
    let left = processes_mentioning(&needle);
    assert!(left.is_empty(), "still running after Ctrl-C: {left:#?}");
}
