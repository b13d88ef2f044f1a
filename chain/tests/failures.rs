//! Failed builds are answers on the ledger (`ReportFailure`, docs/protocol.md
//! *Failures*): only a selected builder or a certified trusted node may
//! report one, once, never beside its own attestation; failures never count
//! toward a trust level; a builder that reported misses no deadline, but is
//! replaced like a silent one while the request lacks a quorum. And the
//! provenance an attestation names is recorded, checked like an output, and
//! never compared (docs/protocol.md *Provenance*).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use pyrsia_chain::*;

mod common;
use common::{genesis, key, Chain};

fn register(c: &mut Chain, builder: u8) {
    let r = c.run(
        &key(builder),
        TxKind::RegisterBuilder(RegisterBuilder {
            peer_id: format!("peer{builder}"),
            ecosystems: vec!["npm".into()],
        }),
    );
    assert_eq!(r.code, 0, "{}", r.log);
}

fn npm_request(name: &str) -> BuildRequest {
    BuildRequest {
        package: PackageId {
            ecosystem: "npm".into(),
            name: name.into(),
            version: "1.0.0".into(),
        },
        source: SourceRef {
            repo_url: format!("https://example.org/{name}"),
            commit: format!("{:040x}", 1),
        },
        recipe: "npm".into(),
    }
}

fn output() -> Output {
    Output {
        name: "pkg.tgz".into(),
        sha256: Digest([7; 32]),
        size: 100,
        stripe_size: 4096,
        stripe_root: Digest([8; 32]),
    }
}

fn attest(id: Digest) -> TxKind {
    TxKind::Attest(Attest {
        request_id: id,
        outputs: vec![output()],
        build_env: "node 20".into(),
        log_digest: Digest::default(),
        provenance: None,
    })
}

fn fail(id: Digest, reason: FailureClass) -> TxKind {
    TxKind::ReportFailure(ReportFailure {
        request_id: id,
        reason,
        log_digest: Some(Digest([9; 32])),
    })
}

fn signer_of(builder: &PublicKey) -> Keypair {
    (1..100)
        .map(key)
        .find(|k| k.public() == *builder)
        .expect("builders are keys 1..100")
}

/// A chain with builders 1..=6 in selection for npm and one request whose
/// three builders are drawn; returns the request id and the selection.
fn requested(attest_timeout_blocks: u32) -> (Chain, Digest, Vec<PublicKey>) {
    let mut g = genesis(10_000);
    g.params.attest_timeout_blocks = attest_timeout_blocks;
    let mut c = Chain::new(g);
    for b in 1..=6 {
        register(&mut c, b);
    }
    let request = npm_request("left-pad");
    let id = request.id();
    assert_eq!(c.run(&key(50), TxKind::RequestBuild(request)).code, 0);
    c.idle();
    let selected = c.request(id).selected;
    assert_eq!(selected.len(), 3);
    (c, id, selected)
}

#[test]
fn only_a_selected_builder_or_a_trusted_node_reports_a_failure_once_and_never_beside_an_attestation(
) {
    let (mut c, id, selected) = requested(600);
    let outsider = (1..=6)
        .map(key)
        .find(|k| !selected.contains(&k.public()))
        .unwrap();
    assert_eq!(
        c.run(&outsider, fail(id, FailureClass::BuildFailed)).code,
        code::NOT_SELECTED
    );
    assert_eq!(
        c.run(&key(70), fail(id, FailureClass::BuildFailed)).code,
        code::NOT_SELECTED,
        "an unknown key"
    );
    assert_eq!(
        c.run(&key(1), fail(Digest([3; 32]), FailureClass::BuildFailed))
            .code,
        code::UNKNOWN_REQUEST
    );

    let failing = signer_of(&selected[0]);
    let result = c.run(&failing, fail(id, FailureClass::TimedOut));
    assert_eq!(result.code, 0, "{}", result.log);
    let event = result
        .events
        .iter()
        .find(|e| e.kind == "build_failed")
        .expect("a build_failed event");
    let attr = |k: &str| {
        event
            .attributes
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(attr("request_id"), Some(id.to_string()));
    assert_eq!(attr("builder"), Some(selected[0].to_string()));
    assert_eq!(attr("role").as_deref(), Some("regular"));
    assert_eq!(attr("reason").as_deref(), Some("timed_out"));
    assert_eq!(attr("log_digest"), Some(Digest([9; 32]).to_string()));

    // Once per builder, and never an attestation after it.
    assert_eq!(
        c.run(&failing, fail(id, FailureClass::BuildFailed)).code,
        code::DUPLICATE_FAILURE
    );
    assert_eq!(c.run(&failing, attest(id)).code, code::ANSWER_CONFLICT);
    // Nor a failure after an attestation.
    let attesting = signer_of(&selected[1]);
    assert_eq!(c.run(&attesting, attest(id)).code, 0);
    assert_eq!(
        c.run(&attesting, fail(id, FailureClass::BuildFailed)).code,
        code::ANSWER_CONFLICT
    );
    // A certified trusted node may report, as it may attest.
    let trusted = c.run(&key(100), fail(id, FailureClass::Dependency));
    assert_eq!(trusted.code, 0, "{}", trusted.log);

    let record = c.request(id);
    assert_eq!(record.failures.len(), 2);
    assert_eq!(record.failures[0].builder, selected[0]);
    assert_eq!(record.failures[0].role, AttesterRole::Regular);
    assert_eq!(record.failures[0].reason, FailureClass::TimedOut);
    assert_eq!(record.failures[1].role, AttesterRole::Trusted);
    assert_eq!(record.attestations.len(), 1);

    // An import was not built: nothing to fail.
    let import = TrustedImport {
        package: npm_request("imported").package,
        outputs: vec![output()],
        upstream: "https://registry.example.org".into(),
    };
    let import_id = import.record_id();
    assert_eq!(c.run(&key(100), TxKind::TrustedImport(import)).code, 0);
    assert_eq!(
        c.run(&key(101), fail(import_id, FailureClass::BuildFailed))
            .code,
        code::INVALID_FIELD
    );
}

#[test]
fn failures_never_count_toward_the_trust_level() {
    let (mut c, id, selected) = requested(600);
    // Every selected builder and both trusted nodes fail: nothing counts.
    for b in &selected {
        assert_eq!(
            c.run(&signer_of(b), fail(id, FailureClass::BuildFailed))
                .code,
            0
        );
    }
    for t in [100, 101] {
        assert_eq!(c.run(&key(t), fail(id, FailureClass::BuildFailed)).code, 0);
    }
    let record = c.request(id);
    assert_eq!(record.level, TrustLevel::Pending);
    assert_eq!(record.failures.len(), 5);

    // Beside agreeing attestations, a failure is neither support nor dissent.
    let (mut c, id, selected) = requested(600);
    assert_eq!(c.run(&signer_of(&selected[0]), attest(id)).code, 0);
    assert_eq!(c.run(&signer_of(&selected[1]), attest(id)).code, 0);
    assert_eq!(c.request(id).level, TrustLevel::QuorumOnly);
    assert_eq!(
        c.run(
            &signer_of(&selected[2]),
            fail(id, FailureClass::BuildFailed)
        )
        .code,
        0
    );
    assert_eq!(c.request(id).level, TrustLevel::QuorumOnly);
    assert_eq!(c.run(&key(100), attest(id)).code, 0);
    assert_eq!(c.run(&key(101), attest(id)).code, 0);
    assert_eq!(c.request(id).level, TrustLevel::Reproducible);
}

#[test]
fn a_builder_that_reported_a_failure_misses_no_deadline_but_is_replaced_like_a_silent_one() {
    let (mut c, id, selected) = requested(3);
    let selected_at = c.height;
    let (attester, failer, silent) = (selected[0], selected[1], selected[2]);
    assert_eq!(c.run(&signer_of(&attester), attest(id)).code, 0);
    assert_eq!(
        c.run(&signer_of(&failer), fail(id, FailureClass::BuildFailed))
            .code,
        0
    );
    let mut replaced = None;
    while c.height < selected_at + 3 {
        let block = c.idle();
        replaced = block
            .events
            .into_iter()
            .find(|e| e.kind == "builders_replaced")
            .or(replaced);
    }
    let event = replaced.expect("the request lacked a quorum, so both were replaced");
    let attr = |k: &str| {
        event
            .attributes
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(attr("missed"), silent.to_string());
    assert_eq!(attr("failed"), failer.to_string());

    let record = c.request(id);
    assert_eq!(record.round, 2);
    assert_eq!(record.replaced, vec![failer, silent]);
    assert_eq!(record.selected.len(), 3);
    assert!(!record.selected.contains(&failer));
    // The failure stays on the record; only the silent builder missed.
    assert_eq!(record.failures.len(), 1);
    assert_eq!(c.node(failer).builder.unwrap().missed_deadlines, 0);
    assert_eq!(c.node(silent).builder.unwrap().missed_deadlines, 1);
    // A replaced builder can answer no more.
    assert_eq!(
        c.run(&signer_of(&failer), fail(id, FailureClass::Other))
            .code,
        code::DUPLICATE_FAILURE
    );
    assert_eq!(
        c.run(&signer_of(&silent), fail(id, FailureClass::Other))
            .code,
        code::NOT_SELECTED
    );
}

#[test]
fn a_failure_report_is_an_answer_that_resets_missed_deadlines() {
    let mut g = genesis(10_000);
    g.params.attest_timeout_blocks = 1;
    g.params.max_attest_rounds = 1;
    let mut c = Chain::new(g);
    for b in 1..=3 {
        register(&mut c, b);
    }
    // Nobody answers the first request: every builder misses its deadline.
    assert_eq!(
        c.run(&key(50), TxKind::RequestBuild(npm_request("first")))
            .code,
        0
    );
    c.idle();
    c.idle();
    for b in 1..=3 {
        assert_eq!(c.node(key(b).public()).builder.unwrap().missed_deadlines, 1);
    }
    let second = npm_request("second");
    let id = second.id();
    assert_eq!(c.run(&key(50), TxKind::RequestBuild(second)).code, 0);
    assert_eq!(
        c.run(&key(1), fail(id, FailureClass::BuildFailed)).code,
        0,
        "builder 1 is selected: all three are"
    );
    assert_eq!(c.node(key(1).public()).builder.unwrap().missed_deadlines, 0);
}

#[test]
fn an_attested_provenance_is_recorded_but_never_compared() {
    let (mut c, id, selected) = requested(600);
    let with = |seed: u8| {
        TxKind::Attest(Attest {
            request_id: id,
            outputs: vec![output()],
            build_env: "node 20".into(),
            log_digest: Digest::default(),
            provenance: Some(Output {
                name: "provenance.intoto.jsonl".into(),
                sha256: Digest([seed; 32]),
                size: 900,
                stripe_size: 4096,
                stripe_root: Digest([seed.wrapping_add(1); 32]),
            }),
        })
    };
    // Each builder's provenance differs; their outputs agree.
    assert_eq!(c.run(&signer_of(&selected[0]), with(1)).code, 0);
    assert_eq!(c.run(&signer_of(&selected[1]), with(2)).code, 0);
    let record = c.request(id);
    assert_eq!(record.level, TrustLevel::QuorumOnly);
    assert_eq!(
        record.attestations[1].provenance.as_ref().unwrap().sha256,
        Digest([2; 32])
    );
    // A provenance is checked like an output.
    let bad = match with(3) {
        TxKind::Attest(mut a) => {
            a.provenance.as_mut().unwrap().stripe_size = 1;
            TxKind::Attest(a)
        }
        _ => unreachable!(),
    };
    assert_eq!(
        c.run(&signer_of(&selected[2]), bad).code,
        code::INVALID_FIELD
    );
}
