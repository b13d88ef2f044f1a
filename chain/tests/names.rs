//! A package name belongs to one source, and a released version to one
//! commit: the hijacks of `docs/protocol.md` (*Names and releases*), tried
//! against the ledger block by block.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use pyrsia_chain::*;

mod common;
use common::{key, Chain};

const REAL: &str = "https://example.org/six";
const IMPOSTOR: &str = "https://example.net/not-six";

fn request(version: &str, repo: &str, commit: &str) -> BuildRequest {
    BuildRequest {
        package: PackageId {
            ecosystem: "python".into(),
            name: "six".into(),
            version: version.into(),
        },
        source: SourceRef {
            repo_url: repo.into(),
            // Short tags in the tests, full commit ids on the chain.
            commit: format!("{commit:0>40}"),
        },
        recipe: "python".into(),
    }
}

/// Requests `r` and has trusted node `node` attest it: the build is `trusted`.
fn trusted_build(c: &mut Chain, r: BuildRequest, node: u8) -> Digest {
    let id = r.id();
    let result = c.run(&key(50), TxKind::RequestBuild(r));
    assert_eq!(result.code, 0, "{}", result.log);
    let attest = TxKind::Attest(Attest {
        request_id: id,
        outputs: vec![Output {
            name: "six.whl".into(),
            sha256: Digest([1; 32]),
            size: 10,
            stripe_size: 4096,
            stripe_root: Digest([2; 32]),
        }],
        build_env: "e".into(),
        log_digest: Digest::default(),
        provenance: None,
    });
    let result = c.run(&key(node), attest);
    assert_eq!(result.code, 0, "{}", result.log);
    let record: RequestRecord = c.get(&format!("request/{id}")).unwrap();
    assert_eq!(record.level, TrustLevel::Trusted);
    id
}

#[test]
fn a_trusted_build_binds_its_name_and_releases_its_version() {
    let mut c = Chain::new(common::genesis(10_000));
    // Before any trusted build, anyone may request any source.
    let early = c.run(
        &key(51),
        TxKind::RequestBuild(request("0.9.0", IMPOSTOR, "bad")),
    );
    assert_eq!(early.code, 0, "{}", early.log);

    let id = trusted_build(&mut c, request("1.16.0", REAL, "c0ffee"), 100);
    let binding: NameBinding = c.get("name/python/six").unwrap();
    assert_eq!(binding.repo_url, REAL);
    assert_eq!(binding.bound_by, NameAuthority::TrustedBuild(id));
    let release: Release = c.get("released/python/six/1.16.0").unwrap();
    assert_eq!(release.source.commit, format!("{:0>40}", "c0ffee"));

    // The hijack: the same name from another repository.
    let hijack = c.run(
        &key(51),
        TxKind::RequestBuild(request("1.17.0", IMPOSTOR, "bad")),
    );
    assert_eq!(hijack.code, code::NAME_BOUND_ELSEWHERE, "{}", hijack.log);
    // A released version rebuilt from another commit of the right repository.
    let rewrite = c.run(
        &key(51),
        TxKind::RequestBuild(request("1.16.0", REAL, "d00d")),
    );
    assert_eq!(rewrite.code, code::VERSION_RELEASED, "{}", rewrite.log);
    // The same commit with another request, and a new version, are fine.
    let next = c.run(
        &key(51),
        TxKind::RequestBuild(request("1.17.0", REAL, "beef")),
    );
    assert_eq!(next.code, 0, "{}", next.log);
}

#[test]
fn the_recipe_must_be_the_ecosystems() {
    let mut c = Chain::new(common::genesis(10_000));
    let mut r = request("1.0.0", REAL, "c0ffee");
    r.recipe = "script".into();
    let result = c.run(&key(51), TxKind::RequestBuild(r));
    assert_eq!(result.code, code::RECIPE_MISMATCH, "{}", result.log);
    let mut r = request("1.0.0", REAL, "c0ffee");
    r.package.ecosystem = "rpm".into();
    r.recipe = "rpm".into();
    let result = c.run(&key(51), TxKind::RequestBuild(r));
    assert_eq!(result.code, code::INVALID_FIELD, "{}", result.log);
}

#[test]
fn trusted_nodes_bind_free_names_and_only_the_board_moves_them() {
    let mut c = Chain::new(common::genesis(10_000));
    let bind = |repo: &str| {
        TxKind::BindName(BindName {
            ecosystem: "python".into(),
            name: "six".into(),
            repo_url: repo.into(),
        })
    };
    assert_eq!(c.run(&key(50), bind(REAL)).code, code::NOT_TRUSTED_NODE);
    assert_eq!(c.run(&key(100), bind(REAL)).code, 0);
    assert_eq!(
        c.run(&key(101), bind(IMPOSTOR)).code,
        code::NAME_ALREADY_BOUND
    );
    let hijack = c.run(
        &key(51),
        TxKind::RequestBuild(request("1.0.0", IMPOSTOR, "e")),
    );
    assert_eq!(hijack.code, code::NAME_BOUND_ELSEWHERE);

    // The project moved: the board rebinds the name.
    let moved = c.gov(GovAction::BindName(BindName {
        ecosystem: "python".into(),
        name: "six".into(),
        repo_url: IMPOSTOR.into(),
    }));
    assert_eq!(moved.code, 0, "{}", moved.log);
    let binding: NameBinding = c.get("name/python/six").unwrap();
    assert_eq!(binding.bound_by, NameAuthority::Board);
    let old = c.run(&key(51), TxKind::RequestBuild(request("1.0.0", REAL, "e")));
    assert_eq!(old.code, code::NAME_BOUND_ELSEWHERE);
    let new = c.run(
        &key(51),
        TxKind::RequestBuild(request("1.0.0", IMPOSTOR, "e")),
    );
    assert_eq!(new.code, 0, "{}", new.log);
}

#[test]
fn revoking_the_node_whose_attestation_bound_a_name_frees_it() {
    let mut c = Chain::new(common::genesis(10_000));
    let since = c.height + 1;
    trusted_build(&mut c, request("1.0.0", IMPOSTOR, "bad"), 101);
    assert!(c.get::<NameBinding>("name/python/six").is_some());

    let revoked = c.gov(GovAction::RevokeTrustedNode {
        node: key(101).public(),
        incident: "attested an impostor".into(),
        incident_since_height: since,
    });
    assert_eq!(revoked.code, 0, "{}", revoked.log);
    c.idle();
    assert!(c.get::<NameBinding>("name/python/six").is_none());
    assert!(c.get::<Release>("released/python/six/1.0.0").is_none());
    trusted_build(&mut c, request("1.0.0", REAL, "c0ffee"), 100);
    let binding: NameBinding = c.get("name/python/six").unwrap();
    assert_eq!(binding.repo_url, REAL);
}
