//! What builders say about their builds, on the whole loop (real cometbft,
//! stores, builders, `git daemon` sources): a build that fails everywhere
//! ends `request-build --wait` with each builder's reason, and a build that
//! succeeds carries each attester's signed provenance, which
//! `pyrsia provenance` collects and a third-party DSSE implementation
//! (securesystemslib, from PyPI) verifies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pyrsia_chain::Digest;
use support::fixtures::{Fixture, GitServer};
use support::{eventually, repo_root, ServicePlan, Testnet};

fn request_args<'a>(f: &'a Fixture, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "tx",
        "request-build",
        "--key",
        "requester",
        "--ecosystem",
        f.ecosystem,
        "--name",
        &f.name,
        "--version",
        &f.version,
        "--repo",
        &f.url,
        "--commit",
        &f.commit,
    ];
    args.extend_from_slice(extra);
    args
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_that_fails_in_every_builder_ends_wait_promptly_with_each_builders_reason() {
    let git = GitServer::start().unwrap();
    let mut net = Testnet::start_with_services(ServicePlan {
        regular_builders: 3,
        trusted_builders: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    net.start_services().await.unwrap();
    net.new_key("requester").unwrap();
    let f = git
        .script_running("broken", "1.0.0", "echo 'compiling broken'; exit 1")
        .unwrap();

    let started = Instant::now();
    let out = net
        .pyrsia(&request_args(&f, &["--wait", "--timeout", "600"]))
        .unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "--wait succeeded: {stderr}");
    // The builds take seconds; the round's deadline is 600 blocks away.
    assert!(
        elapsed < Duration::from_secs(240),
        "--wait took {elapsed:?}"
    );
    assert!(stderr.contains("failed build"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(report["verified"], true, "{report}");
    assert_eq!(report["failed"], true, "{report}");
    let failures = report["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 3, "{report}");
    let id = report["request_id"].as_str().unwrap().to_owned();

    // Each failure names its builder, the reason, and the digest of the log
    // the builder kept and stored.
    let r = net.request_record(&id).await;
    assert!(r.attestations.is_empty());
    assert_eq!(r.level.as_str(), "pending");
    for name in net
        .service_names()
        .unwrap()
        .iter()
        .filter_map(|n| n.strip_prefix("builder:"))
    {
        let key = net.builder_key(name).unwrap().public();
        let reported = failures
            .iter()
            .find(|f| f["builder"] == key.to_string())
            .unwrap_or_else(|| panic!("no failure of {name} in {report}"));
        assert_eq!(reported["reason"], "build_failed", "{reported}");
        assert_eq!(reported["role"], "regular", "{reported}");
        let log = std::fs::read(net.builder_dir(name).join(format!("logs/{id}.log"))).unwrap();
        assert!(String::from_utf8_lossy(&log).contains("compiling broken"));
        assert_eq!(reported["log_digest"], Digest::of(&log).to_string());
    }
    // `pyrsia verify` shows them too, proven.
    let out = net
        .pyrsia(&["verify", f.ecosystem, &f.name, &f.version])
        .unwrap();
    let verified: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let shown = verified["builds"][0]["failures"].as_array().unwrap();
    assert_eq!(shown.len(), 3, "{verified}");
    assert!(shown.iter().all(|f| f["reason"] == "build_failed"));
}

/// The venv `scripts/python-tools.sh` makes (it installs it if missing).
fn python_with_securesystemslib() -> PathBuf {
    let root = repo_root();
    let python = root.join(".tools/venv/bin/python");
    let ready = Command::new(&python)
        .args(["-c", "import securesystemslib.dsse"])
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        let status = Command::new("bash")
            .arg(root.join("scripts/python-tools.sh"))
            .status()
            .unwrap();
        assert!(status.success(), "scripts/python-tools.sh failed");
    }
    python
}

/// Verifies `file` with securesystemslib's DSSE implementation against
/// `key` and checks its in-toto statement; `expect` is the subjects as
/// `{name: sha256}`. Returns the script's output on failure.
fn third_party_verify(file: &Path, key: &str, expect: &serde_json::Value) -> Result<(), String> {
    const SCRIPT: &str = r#"
import json, sys
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey
path, key, expect = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
lines = [l for l in open(path, encoding="utf-8").read().splitlines() if l.strip()]
assert len(lines) == 1, f"{len(lines)} envelopes"
envelope = Envelope.from_dict(json.loads(lines[0]))
assert envelope.payload_type == "application/vnd.in-toto+json", envelope.payload_type
public = SSlibKey(key, "ed25519", "ed25519", {"public": key})
envelope.verify([public], 1)
statement = json.loads(envelope.payload)
assert statement["_type"] == "https://in-toto.io/Statement/v1", statement["_type"]
assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
subjects = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
assert subjects == expect, (subjects, expect)
predicate = statement["predicate"]
assert predicate["runDetails"]["builder"]["id"] == "pyrsia:builder:" + key
deps = predicate["buildDefinition"]["resolvedDependencies"]
assert "gitCommit" in deps[0]["digest"], deps
print("verified")
"#;
    let out = Command::new(python_with_securesystemslib())
        .args(["-c", SCRIPT])
        .arg(file)
        .arg(key)
        .arg(expect.to_string())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && text.contains("verified") {
        Ok(())
    } else {
        Err(text)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_attester_signs_provenance_that_pyrsia_provenance_collects_and_securesystemslib_verifies(
) {
    // Installed before the network starts, so its time is not the test's.
    python_with_securesystemslib();
    let git = GitServer::start().unwrap();
    let mut net = Testnet::start_with_services(ServicePlan {
        regular_builders: 3,
        trusted_builders: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    net.start_services().await.unwrap();
    let f = git
        .script_running("signed", "1.0.0", "echo signed > out/result")
        .unwrap();
    let id = net.request_build(&f, &[]).unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = eventually(
        Duration::from_secs(300),
        "all 3 builders to attest",
        || async {
            let r = net.request_record(&id).await;
            if r.attestations.len() == 3 {
                Ok(r)
            } else {
                Err(r.attestations)
            }
        },
    )
    .await;
    assert_eq!(r.level.as_str(), "quorum_only");
    assert!(r.attestations.iter().all(|a| a.provenance.is_some()));

    let dir = net.dir.path().join("provenance");
    let out = net
        .provenance(&f, &dir, &["--min-trust", "quorum_only"])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expect: serde_json::Value = r.attestations[0]
        .outputs
        .iter()
        .map(|o| (o.name.clone(), serde_json::json!(o.sha256.to_string())))
        .collect::<serde_json::Map<_, _>>()
        .into();
    for a in &r.attestations {
        let file = dir.join(format!("{}.intoto.jsonl", a.attester));
        let bytes = std::fs::read(&file).unwrap();
        // The bytes are the ones the attestation names.
        assert_eq!(
            Digest::of(&bytes),
            a.provenance.as_ref().unwrap().sha256,
            "{}",
            file.display()
        );
        third_party_verify(&file, &a.attester.to_string(), &expect)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }

    // The third-party check is a real one: another key, or one changed
    // subject digest, fails it.
    let first = &r.attestations[0];
    let file = dir.join(format!("{}.intoto.jsonl", first.attester));
    let other = r.attestations[1].attester.to_string();
    assert!(third_party_verify(&file, &other, &expect).is_err());
    let mut envelope: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload = b64.decode(envelope["payload"].as_str().unwrap()).unwrap();
    let mut statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    statement["subject"][0]["digest"]["sha256"] = serde_json::json!("00".repeat(32));
    envelope["payload"] = serde_json::json!(b64.encode(statement.to_string()));
    let forged = dir.join("forged.intoto.jsonl");
    std::fs::write(&forged, envelope.to_string()).unwrap();
    let tampered_expect = serde_json::json!({ first.outputs[0].name.clone(): "00".repeat(32) });
    let err = third_party_verify(&forged, &first.attester.to_string(), &tampered_expect)
        .expect_err("a changed statement must not verify");
    assert!(
        err.contains("Verification") || err.contains("signature"),
        "{err}"
    );
}
