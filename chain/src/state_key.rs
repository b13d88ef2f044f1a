//! Every state key, built in one place. The layout is part of the protocol
//! (queries name these keys, proofs bind them): see `docs/protocol.md`.

use std::fmt::Display;

use crate::types::{Digest, PackageId, PublicKey};

pub const PARAMS: &str = "params";
pub const BOARD: &str = "board";
pub const GOV_SEQ: &str = "gov/seq";
/// `beacon/keys`: the validators' VRF keys ([`crate::types::BeaconKeys`]).
pub const BEACON_KEYS: &str = "beacon/keys";
/// `beacon/seed`: the selection seed after the last block.
pub const BEACON_SEED: &str = "beacon/seed";
/// `validators`: the validator set ([`crate::types::Validators`]).
pub const VALIDATORS: &str = "validators";
/// `beacon/retiring`: the addresses of validators removed in the last block,
/// whose beacon keys leave `beacon/keys` at the start of the next block,
/// when CometBFT stops letting them propose.
pub const BEACON_RETIRING: &str = "beacon/retiring";
/// `void/queue`: the pending [`crate::types::VoidJob`]s.
pub const VOID_QUEUE: &str = "void/queue";

/// `request/{id}`: a build request or trusted import, its attestations and level.
pub fn request(id: Digest) -> String {
    format!("request/{id}")
}

/// `artifact/{sha256}`: an artifact's size, stripe layouts and requests.
pub fn artifact(sha256: Digest) -> String {
    format!("artifact/{sha256}")
}

/// `node/{pubkey}`: builder registration, certification, incidents.
pub fn node(key: PublicKey) -> String {
    format!("node/{key}")
}

/// `nonce/{pubkey}`: the signer's last committed nonce.
pub fn nonce(key: PublicKey) -> String {
    format!("nonce/{key}")
}

/// `builders/{ecosystem}`: how many builders are in selection (`u32`).
pub fn builders(ecosystem: &str) -> String {
    format!("builders/{ecosystem}")
}

/// `builder/{ecosystem}/{slot}`: the builder in slot `0..count`, so that a
/// draw reads one key whatever the number of builders.
pub fn builder_slot(ecosystem: &str, slot: u32) -> String {
    format!("builder/{ecosystem}/{slot}")
}

/// `select/{height}`: the requests whose builders are drawn at `height`.
pub fn select(height: u64) -> String {
    format!("select/{height}")
}

/// `deadline/{height}`: the requests whose selection round ends at `height`.
pub fn deadline(height: u64) -> String {
    format!("deadline/{height}")
}

/// `open/signer/{pubkey}`: the signer's requests in their selection rounds.
pub fn open_by_signer(key: PublicKey) -> String {
    format!("open/signer/{key}")
}

/// `open/package/{ecosystem}/{name}`: open requests of a package name.
pub fn open_by_package(ecosystem: &str, name: &str) -> String {
    format!("open/package/{ecosystem}/{name}")
}

/// `open/ecosystem/{ecosystem}`: open requests of an ecosystem.
pub fn open_by_ecosystem(ecosystem: &str) -> String {
    format!("open/ecosystem/{ecosystem}")
}

/// `package/{ecosystem}/{name}/{version}`: the requests of these coordinates.
pub fn package(p: &PackageId) -> String {
    format!("package/{}/{}/{}", p.ecosystem, p.name, p.version)
}

/// `package-requests/{page}/{ecosystem}/{name}/{version}`: a page of the
/// coordinates' request ids (the page comes first because names may hold `/`).
pub fn package_requests(p: &PackageId, page: u64) -> String {
    format!(
        "package-requests/{page}/{}/{}/{}",
        p.ecosystem, p.name, p.version
    )
}

/// `artifact-requests/{page}/{sha256}`: a page of the requests that attested
/// these bytes.
pub fn artifact_requests(sha256: Digest, page: u64) -> String {
    format!("artifact-requests/{page}/{sha256}")
}

/// `versions/{ecosystem}/{name}`: how many versions of a package name the
/// ledger has ([`crate::types::VersionsRecord`]).
pub fn versions(ecosystem: &str, name: &str) -> String {
    format!("versions/{ecosystem}/{name}")
}

/// `version-list/{page}/{ecosystem}/{name}`: a page of a name's versions, in
/// the order of their first request or import (the page comes first because
/// names may hold `/`).
pub fn version_list(ecosystem: &str, name: &str, page: u64) -> String {
    format!("version-list/{page}/{ecosystem}/{name}")
}

/// `released/{ecosystem}/{name}/{version}`: the source these coordinates are
/// released from.
pub fn released(p: &PackageId) -> String {
    format!("released/{}/{}/{}", p.ecosystem, p.name, p.version)
}

/// `name/{ecosystem}/{name}`: the repository a package name is bound to.
pub fn name(ecosystem: &str, name: &str) -> String {
    format!("name/{ecosystem}/{name}")
}

/// `attested/{node}/{page}`: the requests a node attested, paged.
pub fn attested(node: PublicKey, page: impl Display) -> String {
    format!("attested/{node}/{page}")
}
