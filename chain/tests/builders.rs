//! Builders are admitted, not free; selected builders that stay silent are
//! replaced; requests are capped; revocations are bounded per block. Each
//! rule of `docs/protocol.md` (*Builders*, *Liveness*, *Bounded work*) tried
//! as an attacker would, against the ledger block by block.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use pyrsia_chain::*;

mod common;
use common::{genesis, key, Chain};

fn with_params(edit: impl FnOnce(&mut Params)) -> GenesisState {
    let mut g = genesis(10_000);
    edit(&mut g.params);
    g
}

fn register(c: &mut Chain, builder: u8) -> TxResult {
    c.run(
        &key(builder),
        TxKind::RegisterBuilder(RegisterBuilder {
            peer_id: format!("peer{builder}"),
            ecosystems: vec!["npm".into()],
        }),
    )
}

fn admit(c: &mut Chain, sponsor: u8, builder: u8) -> TxResult {
    c.run(
        &key(sponsor),
        TxKind::AdmitBuilder(AdmitBuilder {
            builder: key(builder).public(),
        }),
    )
}

fn npm_request(name: &str, commit: u32) -> BuildRequest {
    BuildRequest {
        package: PackageId {
            ecosystem: "npm".into(),
            name: name.into(),
            version: "1.0.0".into(),
        },
        source: SourceRef {
            repo_url: format!("https://example.org/{name}"),
            commit: format!("{commit:040x}"),
        },
        recipe: "npm".into(),
    }
}

fn attest(id: Digest) -> TxKind {
    TxKind::Attest(Attest {
        request_id: id,
        outputs: vec![Output {
            name: "pkg.tgz".into(),
            sha256: Digest([7; 32]),
            size: 100,
            stripe_size: 4096,
            stripe_root: Digest([8; 32]),
        }],
        build_env: "node 20".into(),
        log_digest: Digest::default(),
        provenance: None,
    })
}

fn sign(k: &Keypair, nonce: u64, kind: TxKind) -> Vec<u8> {
    borsh::to_vec(&sign_tx(k, common::CHAIN, TxBody { nonce, kind })).unwrap()
}

/// One block of `requests`, each signed by `requester` with nonces 1, 2, ….
fn request_all(c: &mut Chain, requester: &Keypair, requests: &[BuildRequest]) {
    let txs: Vec<Vec<u8>> = requests
        .iter()
        .zip(1..)
        .map(|(r, n)| sign(requester, n, TxKind::RequestBuild(r.clone())))
        .collect();
    assert!(c.block(&txs).txs.iter().all(|r| r.code == 0));
}

fn signer_of(builder: &PublicKey) -> Keypair {
    (1..100)
        .map(key)
        .find(|k| k.public() == *builder)
        .expect("builders are keys 1..100")
}

fn builders_in_selection(c: &Chain) -> u32 {
    c.get("builders/npm").unwrap_or(0)
}

#[test]
fn an_unsponsored_builder_is_refused_and_each_sponsor_has_a_limit() {
    let mut c = Chain::new(with_params(|p| p.max_sponsored_builders = 2));
    assert_eq!(register(&mut c, 70).code, code::NOT_ADMITTED);
    assert_eq!(admit(&mut c, 5, 70).code, code::NOT_TRUSTED_NODE);
    assert_eq!(admit(&mut c, 100, 70).code, 0);
    assert_eq!(admit(&mut c, 100, 70).code, code::INVALID_FIELD);
    assert_eq!(admit(&mut c, 100, 71).code, 0);
    assert_eq!(admit(&mut c, 100, 72).code, code::SPONSOR_LIMIT);
    // Another trusted node, or the board, may still admit.
    assert_eq!(admit(&mut c, 101, 72).code, 0);
    let board = c.gov(GovAction::AdmitBuilder {
        builder: key(73).public(),
    });
    assert_eq!(board.code, 0, "{}", board.log);
    for b in [70, 71, 72, 73] {
        assert_eq!(register(&mut c, b).code, 0);
    }
    assert_eq!(builders_in_selection(&c), 4);
    assert_eq!(c.node(key(100).public()).sponsored.len(), 2);
}

#[test]
fn a_key_is_never_both_a_regular_builder_and_a_trusted_node() {
    let mut c = Chain::new(genesis(10_000));
    // A trusted node can neither register nor be admitted as a builder.
    assert_eq!(register(&mut c, 100).code, code::ROLE_CONFLICT);
    assert_eq!(admit(&mut c, 101, 100).code, code::ROLE_CONFLICT);
    // An admitted builder cannot be certified while it is one.
    let certify = c.gov(GovAction::CertifyTrustedNode {
        node: key(1).public(),
        valid_until: 10_000,
    });
    assert_eq!(certify.code, code::ROLE_CONFLICT, "{}", certify.log);
}

#[test]
fn a_removed_builders_attestations_stop_counting() {
    let mut c = Chain::new(genesis(10_000));
    for b in 1..=3 {
        assert_eq!(register(&mut c, b).code, 0);
    }
    let first = npm_request("left-pad", 1);
    let id = first.id();
    assert_eq!(c.run(&key(50), TxKind::RequestBuild(first)).code, 0);
    c.idle();
    let selected = c.request(id).selected;
    assert_eq!(selected.len(), 3);
    for b in &selected[..2] {
        assert_eq!(c.run(&signer_of(b), attest(id)).code, 0);
    }
    assert_eq!(c.request(id).level, TrustLevel::QuorumOnly);

    let removed = selected[0];
    let result = c.gov(GovAction::RemoveBuilder {
        builder: removed,
        reason: "attested a build it never ran".into(),
        since_height: 0,
    });
    assert_eq!(result.code, 0, "{}", result.log);
    assert_eq!(builders_in_selection(&c), 2);
    let node = c.node(removed);
    assert!(node.admission.is_none() && node.builder.is_none());
    // The voiding runs in the next block's upkeep.
    c.idle();
    let record = c.request(id);
    assert_eq!(record.level, TrustLevel::Pending);
    let voided = record
        .attestations
        .iter()
        .find(|a| a.attester == removed)
        .unwrap();
    assert_eq!(voided.role, AttesterRole::Void);

    // It can no longer attest, even where it was selected, nor register.
    let second = npm_request("is-odd", 2);
    let second_id = second.id();
    assert_eq!(c.run(&key(50), TxKind::RequestBuild(second)).code, 0);
    c.idle();
    assert_eq!(c.request(second_id).selected.len(), 2);
    assert!(!c.request(second_id).selected.contains(&removed));
    assert_eq!(
        c.run(&signer_of(&removed), attest(id)).code,
        code::DUPLICATE_ATTESTATION
    );
    assert_eq!(
        c.run(&signer_of(&removed), attest(second_id)).code,
        code::NOT_SELECTED
    );
    let index = (1..=3).find(|b| key(*b).public() == removed).unwrap();
    assert_eq!(register(&mut c, index).code, code::NOT_ADMITTED);
}

#[test]
fn selected_builders_that_never_attest_are_replaced_and_the_request_still_reaches_reproducible() {
    let mut c = Chain::new(with_params(|p| p.attest_timeout_blocks = 3));
    for b in 1..=6 {
        assert_eq!(register(&mut c, b).code, 0);
    }
    let request = npm_request("left-pad", 1);
    let id = request.id();
    assert_eq!(c.run(&key(50), TxKind::RequestBuild(request)).code, 0);
    c.idle();
    let selected_at = c.height;
    let first = c.request(id).selected;
    assert_eq!(first.len(), 3);
    let honest = first[0];
    assert_eq!(c.run(&signer_of(&honest), attest(id)).code, 0);

    // The other two stay silent until the deadline.
    let mut replaced_event = None;
    while c.height < selected_at + 3 {
        let block = c.idle();
        replaced_event = block
            .events
            .into_iter()
            .find(|e| e.kind == "builders_replaced")
            .or(replaced_event);
    }
    let event = replaced_event.expect("the silent builders were replaced at the deadline");
    let record = c.request(id);
    assert_eq!(record.round, 2);
    assert_eq!(record.replaced, first[1..].to_vec());
    assert_eq!(record.selected.len(), 3);
    assert!(record.selected.contains(&honest));
    let replacements: Vec<PublicKey> = record
        .selected
        .iter()
        .filter(|s| **s != honest)
        .copied()
        .collect();
    assert!(replacements.iter().all(|r| !first.contains(r)));
    let listed = event
        .attributes
        .iter()
        .find(|(k, _)| *k == "selected")
        .unwrap();
    assert!(replacements
        .iter()
        .all(|r| listed.1.contains(&r.to_string())));
    for b in &first[1..] {
        assert_eq!(c.node(*b).builder.unwrap().missed_deadlines, 1);
    }

    // A late attestation of a replaced builder is refused.
    assert_eq!(
        c.run(&signer_of(&first[1]), attest(id)).code,
        code::NOT_SELECTED
    );
    for r in &replacements {
        assert_eq!(c.run(&signer_of(r), attest(id)).code, 0);
    }
    for t in [100, 101] {
        assert_eq!(c.run(&key(t), attest(id)).code, 0);
    }
    assert_eq!(c.request(id).level, TrustLevel::Reproducible);
}

#[test]
fn builders_that_keep_missing_leave_selection_until_they_register_again() {
    let mut c = Chain::new(with_params(|p| {
        p.attest_timeout_blocks = 1;
        p.max_attest_rounds = 1;
        p.max_missed_deadlines = 2;
    }));
    for b in 1..=3 {
        assert_eq!(register(&mut c, b).code, 0);
    }
    let mut idle_events = 0;
    for n in 0..2 {
        let r = npm_request("left-pad", n);
        let block = c.block_of(&key(50), TxKind::RequestBuild(r));
        assert_eq!(block.txs[0].code, 0);
        // Drawn in the next block, missed in the one after.
        for _ in 0..2 {
            idle_events += c
                .idle()
                .events
                .iter()
                .filter(|e| e.kind == "builder_idle")
                .count();
        }
    }
    assert_eq!(idle_events, 3);
    assert_eq!(builders_in_selection(&c), 0);
    let r = npm_request("left-pad", 9);
    let id = r.id();
    assert_eq!(c.run(&key(50), TxKind::RequestBuild(r)).code, 0);
    c.idle();
    assert!(c.request(id).selected.is_empty());
    assert_eq!(register(&mut c, 1).code, 0);
    assert_eq!(builders_in_selection(&c), 1);
}

#[test]
fn a_flood_of_requests_from_fresh_keys_is_capped_until_rounds_end() {
    let mut c = Chain::new(with_params(|p| {
        p.attest_timeout_blocks = 20;
        p.max_attest_rounds = 1;
        p.max_open_per_signer = 2;
        p.max_open_per_package = 3;
        p.max_open_per_ecosystem = 5;
    }));
    // One key: two open requests.
    assert_eq!(
        c.run(&key(40), TxKind::RequestBuild(npm_request("a", 1)))
            .code,
        0
    );
    assert_eq!(
        c.run(&key(40), TxKind::RequestBuild(npm_request("b", 1)))
            .code,
        0
    );
    assert_eq!(
        c.run(&key(40), TxKind::RequestBuild(npm_request("c", 1)))
            .code,
        code::TOO_MANY_OPEN
    );
    // Fresh keys, one package name: three.
    let mut fresh = 41u8..;
    let mut flood = |c: &mut Chain, name: &str, commit: u32| {
        let k = key(fresh.next().unwrap());
        c.run(&k, TxKind::RequestBuild(npm_request(name, commit)))
            .code
    };
    assert_eq!(flood(&mut c, "a", 2), 0);
    assert_eq!(flood(&mut c, "a", 3), 0);
    assert_eq!(flood(&mut c, "a", 4), code::TOO_MANY_OPEN);
    // Fresh keys, fresh names: the ecosystem holds five.
    assert_eq!(flood(&mut c, "d", 1), 0);
    assert_eq!(flood(&mut c, "e", 1), code::TOO_MANY_OPEN);
    // Rounds end, the requests close, and the slots are free again.
    for _ in 0..22 {
        c.idle();
    }
    assert_eq!(c.get::<u32>("open/ecosystem/npm"), None);
    assert_eq!(flood(&mut c, "e", 1), 0);
    assert_eq!(c.get::<u32>("open/ecosystem/npm"), Some(1));
}

#[test]
fn a_large_revocation_voids_a_bounded_number_of_pages_per_block() {
    const REQUESTS: u32 = 1_100;
    let mut c = Chain::new(with_params(|p| {
        p.max_open_per_signer = u16::MAX;
        p.max_open_per_package = u16::MAX;
        p.max_open_per_ecosystem = u32::MAX;
    }));
    let requester = key(50);
    let trusted = key(100);
    let requests: Vec<BuildRequest> = (0..REQUESTS)
        .map(|i| npm_request(&format!("p{i}"), i))
        .collect();
    request_all(&mut c, &requester, &requests);
    let txs: Vec<Vec<u8>> = requests
        .iter()
        .zip(1..)
        .map(|(r, n)| sign(&trusted, n, attest(r.id())))
        .collect();
    assert!(c.block(&txs).txs.iter().all(|r| r.code == 0));
    assert_eq!(
        c.node(trusted.public()).attestation_count,
        u64::from(REQUESTS)
    );

    let revoked = c.gov(GovAction::RevokeTrustedNode {
        node: trusted.public(),
        incident: "key leak".into(),
        incident_since_height: 0,
    });
    assert_eq!(revoked.code, 0, "{}", revoked.log);
    let per_block = (ledger::VOID_PAGES_PER_BLOCK * 256) as usize;
    let mut lowered = 0;
    let mut blocks = 0;
    while c.get::<Vec<VoidJob>>("void/queue").is_some() || blocks == 0 {
        let changed = c
            .idle()
            .events
            .iter()
            .filter(|e| e.kind == "trust_changed")
            .count();
        assert!(
            changed <= per_block,
            "{changed} requests re-derived in one block"
        );
        lowered += changed;
        blocks += 1;
        assert!(blocks <= 10, "the revocation never finished");
    }
    assert_eq!(lowered, REQUESTS as usize);
    assert_eq!(blocks, (REQUESTS as usize).div_ceil(per_block));
    for r in &requests {
        assert_eq!(c.request(r.id()).level, TrustLevel::Pending);
    }
}

#[test]
fn package_and_artifact_indexes_are_paged() {
    const REQUESTS: u32 = 300;
    let mut c = Chain::new(with_params(|p| {
        p.max_open_per_signer = u16::MAX;
        p.max_open_per_package = u16::MAX;
    }));
    let requester = key(50);
    let trusted = key(100);
    // One version requested from 300 commits (nobody attests a release).
    let requests: Vec<BuildRequest> = (0..REQUESTS).map(|i| npm_request("left-pad", i)).collect();
    request_all(&mut c, &requester, &requests);
    let record: PackageRecord = c.get("package/npm/left-pad/1.0.0").unwrap();
    assert_eq!(record.request_count, u64::from(REQUESTS));
    let first: Vec<Digest> = c.get("package-requests/0/npm/left-pad/1.0.0").unwrap();
    let second: Vec<Digest> = c.get("package-requests/1/npm/left-pad/1.0.0").unwrap();
    assert_eq!(first.len(), INDEX_PAGE as usize);
    let listed: Vec<Digest> = first.into_iter().chain(second).collect();
    let ids: Vec<Digest> = requests.iter().map(BuildRequest::id).collect();
    assert_eq!(listed, ids, "every request, oldest first");
    // 300 requests of one version list it once under its name.
    let versions: VersionsRecord = c.get("versions/npm/left-pad").unwrap();
    assert_eq!(versions.count, 1);

    // A name's versions are paged too, first seen first.
    let many: Vec<BuildRequest> = (0..300u32)
        .map(|i| {
            let mut r = npm_request("@scope/many", 0);
            r.package.version = format!("1.0.{i}");
            r
        })
        .collect();
    request_all(&mut c, &key(51), &many);
    let versions: VersionsRecord = c.get("versions/npm/@scope/many").unwrap();
    assert_eq!(versions.count, 300);
    let first: Vec<String> = c.get("version-list/0/npm/@scope/many").unwrap();
    let second: Vec<String> = c.get("version-list/1/npm/@scope/many").unwrap();
    assert_eq!(first.len(), INDEX_PAGE as usize);
    let listed: Vec<String> = first.into_iter().chain(second).collect();
    let wanted: Vec<String> = many.iter().map(|r| r.package.version.clone()).collect();
    assert_eq!(listed, wanted);

    // The same bytes attested for two requests, twice each: indexed once per request.
    let (a, b) = (ids[0], ids[1]);
    let txs = vec![sign(&trusted, 1, attest(a)), sign(&trusted, 2, attest(b))];
    assert!(c.block(&txs).txs.iter().all(|r| r.code == 0));
    let txs = vec![sign(&key(101), 1, attest(a)), sign(&key(101), 2, attest(b))];
    assert!(c.block(&txs).txs.iter().all(|r| r.code == 0));
    let sha = Digest([7; 32]);
    let artifact: ArtifactRecord = c.get(&format!("artifact/{sha}")).unwrap();
    assert_eq!(artifact.request_count, 2);
    let page: Vec<Digest> = c.get(&format!("artifact-requests/0/{sha}")).unwrap();
    assert_eq!(page, vec![a, b]);
}
