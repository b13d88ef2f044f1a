//! Turns a state value into JSON for people and scripts, by its key's prefix.

use borsh::BorshDeserialize;
use serde::Serialize;

use crate::types::*;

#[derive(Debug, thiserror::Error)]
#[error("value under {key:?} does not decode: {reason}")]
pub struct RenderError {
    pub key: String,
    pub reason: String,
}

fn decode<T: BorshDeserialize + Serialize>(
    key: &str,
    bytes: &[u8],
) -> Result<serde_json::Value, RenderError> {
    let err = |reason: String| RenderError {
        key: key.to_owned(),
        reason,
    };
    let value = T::try_from_slice(bytes).map_err(|e| err(e.to_string()))?;
    serde_json::to_value(value).map_err(|e| err(e.to_string()))
}

/// Decodes the borsh value stored under `key`.
pub fn value_to_json(key: &str, bytes: &[u8]) -> Result<serde_json::Value, RenderError> {
    let prefix = key.split('/').next().unwrap_or_default();
    match prefix {
        "package" => decode::<PackageRecord>(key, bytes),
        "released" => decode::<Release>(key, bytes),
        "name" => decode::<NameBinding>(key, bytes),
        "request" => decode::<RequestRecord>(key, bytes),
        "artifact" => decode::<ArtifactRecord>(key, bytes),
        "node" => decode::<NodeRecord>(key, bytes),
        "params" => decode::<Params>(key, bytes),
        "board" => decode::<Board>(key, bytes),
        "nonce" | "gov" => decode::<u64>(key, bytes),
        "package-requests" | "artifact-requests" | "attested" | "deadline" => {
            decode::<Vec<Digest>>(key, bytes)
        }
        "builders" | "open" => decode::<u32>(key, bytes),
        "builder" => decode::<PublicKey>(key, bytes),
        "void" => decode::<Vec<VoidJob>>(key, bytes),
        "validators" => decode::<Validators>(key, bytes),
        "beacon" if key == crate::state_key::BEACON_KEYS => decode::<BeaconKeys>(key, bytes),
        "beacon" if key == crate::state_key::BEACON_SEED => decode::<Digest>(key, bytes),
        _ => Err(RenderError {
            key: key.to_owned(),
            reason: "no known record type".into(),
        }),
    }
}
