//! Client-side verification of query proofs.
//!
//! A query answered at height `H` proves a value against the app hash of
//! version `H`, which CometBFT records in the header of block `H + 1`.

use prost::Message;

/// The `ProofOp.type` of our proofs; `ProofOp.data` is a protobuf
/// `ics23.CommitmentProof` over the JMT (`jmt::ics23_spec()`).
pub const PROOF_OP_TYPE: &str = "jmt:ics23";

#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error("proof is not a valid ics23 CommitmentProof: {0}")]
    Decode(String),
    #[error("proof does not show {what} of key {key:?} under app hash {app_hash}")]
    Mismatch {
        what: &'static str,
        key: String,
        app_hash: String,
    },
}

pub fn encode_proof(proof: &ics23::CommitmentProof) -> Vec<u8> {
    proof.encode_to_vec()
}

pub fn decode_proof(bytes: &[u8]) -> Result<ics23::CommitmentProof, ProofError> {
    ics23::CommitmentProof::decode(bytes).map_err(|e| ProofError::Decode(e.to_string()))
}

/// Checks that `key` holds `value` (or, for `None`, holds nothing) in the
/// state whose root is `app_hash`.
pub fn verify_value(
    app_hash: &[u8],
    key: &[u8],
    value: Option<&[u8]>,
    proof: &ics23::CommitmentProof,
) -> Result<(), ProofError> {
    let spec = jmt::ics23_spec();
    let root = app_hash.to_vec();
    let (ok, what) = match value {
        Some(v) => (
            ics23::verify_membership::<ics23::HostFunctionsManager>(proof, &spec, &root, key, v),
            "membership",
        ),
        None => (
            ics23::verify_non_membership::<ics23::HostFunctionsManager>(proof, &spec, &root, key),
            "absence",
        ),
    };
    if ok {
        Ok(())
    } else {
        Err(ProofError::Mismatch {
            what,
            key: String::from_utf8_lossy(key).into_owned(),
            app_hash: hex::encode(app_hash),
        })
    }
}
