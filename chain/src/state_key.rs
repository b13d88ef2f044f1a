//! Every state key, built in one place. The layout is part of the protocol
//! (queries name these keys, proofs bind them): see `docs/protocol.md`.

use std::fmt::Display;

use crate::types::{Digest, PackageId, PublicKey};

pub const PARAMS: &str = "params";
pub const BOARD: &str = "board";
pub const GOV_SEQ: &str = "gov/seq";

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

/// `builders/{ecosystem}`: registered builders, sorted.
pub fn builders(ecosystem: &str) -> String {
    format!("builders/{ecosystem}")
}

/// `package/{ecosystem}/{name}/{version}`: the requests of these coordinates.
pub fn package(p: &PackageId) -> String {
    format!("package/{}/{}/{}", p.ecosystem, p.name, p.version)
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

/// `attested/{node}/{page}`: the requests a trusted node attested, paged.
pub fn attested(node: PublicKey, page: impl Display) -> String {
    format!("attested/{node}/{page}")
}
