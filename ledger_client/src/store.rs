//! The store-API client, on the ledger's terms: the typed client of a store
//! sidecar's control API ([`p2p_store::client`], answers in the store's own
//! types), and the calls that put and read artifacts as the ledger
//! describes them ([`Output`]).

use std::path::Path;

use hyper::Body;
use pyrsia_chain::{AttesterRole, Digest, Output, RequestRecord};

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
    #[error("{name}: every one of the {tried} attested stripe layouts failed; the last: {last}")]
    EveryLayoutFailed {
        name: String,
        tried: usize,
        #[source]
        last: Box<StoreError>,
    },
}

impl StoreError {
    /// The HTTP status the store answered with, if it answered with an error.
    pub fn status(&self) -> Option<hyper::StatusCode> {
        match self {
            StoreError::Client(c) => c.status(),
            StoreError::EveryLayoutFailed { last, .. } => last.status(),
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

/// The stripe layouts to download `output` by: one per counted attester
/// that attested the same bytes (name, SHA-256, size), certified trusted
/// nodes first, then regular builders, each in attestation order, without
/// repeats. A layout is one attester's word (the ledger checks only its
/// bounds), so a bogus root or an unusable stripe size from one of them must
/// only cost a try, never the package.
pub fn attested_layouts(record: &RequestRecord, output: &Output) -> Vec<(u32, Digest)> {
    let mut out: Vec<(u32, Digest)> = Vec::new();
    let mut add = |l: (u32, Digest)| {
        if !out.contains(&l) {
            out.push(l);
        }
    };
    for role in [AttesterRole::Trusted, AttesterRole::Regular] {
        for a in record.attestations.iter().filter(|a| a.role == role) {
            for o in &a.outputs {
                if o.name == output.name && o.sha256 == output.sha256 && o.size == output.size {
                    add((o.stripe_size, o.stripe_root));
                }
            }
        }
    }
    add((output.stripe_size, output.stripe_root));
    out
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

/// [`stream_output`] by each of `layouts` (stripe size, stripe root) in
/// turn, until the store starts a body: it answers only once a manifest
/// under that root is verified, so a layout no peer serves, or one that
/// cannot be used, costs a try and not the artifact. A failure after the
/// body started is the caller's (the store cuts the body short).
pub async fn stream_output_by(
    store: &StoreClient,
    artifact: &Output,
    layouts: &[(u32, Digest)],
    pin: bool,
) -> Result<Body, StoreError> {
    let mut last = None;
    for &(stripe_size, stripe_root) in layouts {
        let by = Output {
            stripe_size,
            stripe_root,
            ..artifact.clone()
        };
        match stream_output(store, &by, pin).await {
            Ok(body) => return Ok(body),
            Err(e) => {
                tracing::warn!(
                    output = %artifact.name,
                    %stripe_root,
                    stripe_size,
                    error = %e,
                    "attested stripe layout failed; trying the next one"
                );
                last = Some(e);
            }
        }
    }
    match last {
        None => stream_output(store, artifact, pin).await,
        Some(last) => Err(StoreError::EveryLayoutFailed {
            name: artifact.name.clone(),
            tried: layouts.len(),
            last: Box::new(last),
        }),
    }
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

    #[test]
    fn every_counted_layout_of_the_same_bytes_is_tried_trusted_first() {
        use pyrsia_chain::{AttestationRecord, PackageId, PublicKey, RequestOrigin};
        let out = |name: &str, sha: u8, size: u64, stripe_size: u32, root: u8| Output {
            name: name.into(),
            sha256: Digest([sha; 32]),
            size,
            stripe_size,
            stripe_root: Digest([root; 32]),
        };
        let attest = |i: u8, role: AttesterRole, outputs: Vec<Output>| AttestationRecord {
            attester: PublicKey([i; 32]),
            role,
            height: 1,
            outputs,
            build_env: String::new(),
            log_digest: Digest::default(),
            provenance: None,
        };
        let origin = RequestOrigin::Import {
            package: PackageId {
                ecosystem: "npm".into(),
                name: "a".into(),
                version: "1".into(),
            },
            upstream: "u".into(),
        };
        let record = RequestRecord {
            attestations: vec![
                attest(1, AttesterRole::Regular, vec![out("a.tgz", 7, 10, 4096, 1)]),
                // Revoked: not counted, its layout not tried.
                attest(2, AttesterRole::Void, vec![out("a.tgz", 7, 10, 4096, 2)]),
                attest(
                    3,
                    AttesterRole::Trusted,
                    vec![out("a.tgz", 7, 10, 1 << 20, 3)],
                ),
                // Other bytes, another name, another size: not these bytes.
                attest(4, AttesterRole::Regular, vec![out("a.tgz", 8, 10, 4096, 4)]),
                attest(5, AttesterRole::Regular, vec![out("b.tgz", 7, 10, 4096, 5)]),
                attest(6, AttesterRole::Regular, vec![out("a.tgz", 7, 11, 4096, 6)]),
                // The same layout twice is tried once.
                attest(7, AttesterRole::Regular, vec![out("a.tgz", 7, 10, 4096, 1)]),
                attest(8, AttesterRole::Regular, vec![out("a.tgz", 7, 10, 8192, 9)]),
                attest(
                    9,
                    AttesterRole::Trusted,
                    vec![out("a.tgz", 7, 10, 4096, 10)],
                ),
            ],
            ..RequestRecord::new(Digest([1; 32]), origin, PublicKey::default(), 1)
        };
        let served = out("a.tgz", 7, 10, 1 << 20, 3);
        let roots: Vec<(u32, u8)> = attested_layouts(&record, &served)
            .into_iter()
            .map(|(s, r)| (s, r.0[0]))
            .collect();
        assert_eq!(roots, vec![(1 << 20, 3), (4096, 10), (4096, 1), (8192, 9)]);
    }
}
