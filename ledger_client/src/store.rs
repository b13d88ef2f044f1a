//! The store-API client, on the ledger's terms: the typed client of a store
//! sidecar's control API ([`p2p_store::client`], answers in the store's own
//! types), and the calls that put and read artifacts as the ledger
//! describes them ([`Output`]).

use std::path::Path;

use hyper::Body;
use pyrsia_chain::{Digest, Output};

pub use p2p_store::client::{ClientError, Layout, StoreClient, DEFAULT_API_URL};
pub use p2p_store::{Progress, PutResult, Status};

/// A failed put or read of an attested artifact.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the store answered a {field} that is not a SHA-256: {value:?}")]
    BadDigest { field: &'static str, value: String },
    #[error("{name}: the bytes received are not the attested ones")]
    Mismatch { name: String },
    #[error("{name} is {size} bytes, over the {limit} expected")]
    TooLarge { name: String, size: u64, limit: u64 },
}

impl StoreError {
    /// The HTTP status the store answered with, if it answered with an error.
    pub fn status(&self) -> Option<hyper::StatusCode> {
        match self {
            StoreError::Client(c) => c.status(),
            _ => None,
        }
    }
}

/// The ledger's description of a put artifact, named `name`.
pub fn output_of(put: &PutResult, name: &str) -> Result<Output, StoreError> {
    let digest = |field: &'static str, value: &str| {
        value.parse::<Digest>().map_err(|_| StoreError::BadDigest {
            field,
            value: value.to_owned(),
        })
    };
    Ok(Output {
        name: name.to_owned(),
        sha256: digest("sha256", &put.sha256)?,
        size: put.size,
        stripe_size: put.stripe_size,
        stripe_root: digest("stripe_root", &put.stripe_root)?,
    })
}

/// Where the stripes of an attested artifact are found and checked.
pub fn layout_of(artifact: &Output, pin: bool) -> Layout {
    Layout {
        stripe_root: artifact.stripe_root.to_string(),
        size: Some(artifact.size),
        stripe_size: Some(artifact.stripe_size),
        pin,
    }
}

/// Stores `file`, pinned, and returns its ledger description as `name`.
pub async fn put_output(
    store: &StoreClient,
    file: &Path,
    name: &str,
) -> Result<Output, StoreError> {
    let put = store.put_file(file, true, None).await?;
    output_of(&put, name)
}

/// The bytes of an attested artifact as a stream, pinned in the local store
/// when `pin`. The store verifies each stripe before it releases it, and
/// cuts the body short on failure.
pub async fn stream_output(
    store: &StoreClient,
    artifact: &Output,
    pin: bool,
) -> Result<Body, StoreError> {
    Ok(store
        .artifact(&artifact.sha256.to_string(), &layout_of(artifact, pin))
        .await?)
}

/// The bytes of an attested artifact of at most `limit` bytes, checked once
/// more against its SHA-256 and size.
pub async fn read_output(
    store: &StoreClient,
    artifact: &Output,
    limit: u64,
) -> Result<Vec<u8>, StoreError> {
    if artifact.size > limit {
        return Err(StoreError::TooLarge {
            name: artifact.name.clone(),
            size: artifact.size,
            limit,
        });
    }
    let bytes = store
        .artifact_bytes(
            &artifact.sha256.to_string(),
            &layout_of(artifact, false),
            limit,
        )
        .await?;
    if Digest::of(&bytes) != artifact.sha256 || bytes.len() as u64 != artifact.size {
        return Err(StoreError::Mismatch {
            name: artifact.name.clone(),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_put_result_is_an_output_when_its_digests_parse() {
        let put = PutResult {
            sha256: "ab".repeat(32),
            size: 5,
            stripe_size: 4096,
            stripe_root: "cd".repeat(32),
        };
        let o = output_of(&put, "a.tgz").unwrap();
        assert_eq!(
            (o.sha256, o.stripe_root),
            (Digest([0xab; 32]), Digest([0xcd; 32]))
        );
        let l = layout_of(&o, true);
        assert_eq!(l.stripe_root, "cd".repeat(32));
        assert_eq!((l.size, l.stripe_size, l.pin), (Some(5), Some(4096), true));
        let bad = PutResult {
            sha256: "nope".into(),
            ..put
        };
        assert!(matches!(
            output_of(&bad, "a.tgz"),
            Err(StoreError::BadDigest {
                field: "sha256",
                ..
            })
        ));
    }
}
