//! Stripes, manifests and the stripe root.
//!
//! An artifact of `size` bytes is cut into `stripe_count(size, stripe_size)`
//! stripes. Every stripe is `stripe_size` bytes except the last, which holds
//! the remainder. A zero-byte artifact has exactly one empty stripe, so the
//! count is never zero. The manifest is the ordered list of stripe SHA-256
//! digests; `stripe_root` is the `merkle_light` root over it with SHA-256 and
//! RFC 6962 leaf/node prefixes (`0x00`, `0x01`). A manifest of one stripe has
//! root `sha256(0x00 || digest)` (the leaf hash; `merkle_light` refuses a
//! one-leaf tree). Because `merkle_light` repeats the last node on odd levels,
//! the count is always derived from `(size, stripe_size)` and a manifest of
//! any other length is rejected.

use std::hash::Hasher;

use merkle_light::hash::Algorithm;
use merkle_light::merkle::MerkleTree;
use sha2::{Digest as _, Sha256};

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// Smallest stripe size accepted (4 KiB).
pub const MIN_STRIPE_SIZE: u32 = 4 * 1024;
/// Largest stripe size accepted (16 MiB); bounds a stripe frame on the wire.
pub const MAX_STRIPE_SIZE: u32 = 16 * 1024 * 1024;
/// Default stripe size (1 MiB); see README.md "Stripe size".
pub const DEFAULT_STRIPE_SIZE: u32 = 1024 * 1024;
/// Largest number of stripes in one manifest; bounds a manifest frame (8 MiB of digests).
pub const MAX_STRIPES: u64 = 256 * 1024;

/// Errors about artifact geometry and manifests.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("stripe size {0} outside [{MIN_STRIPE_SIZE}, {MAX_STRIPE_SIZE}]")]
    BadStripeSize(u32),
    #[error("artifact of {size} bytes needs {count} stripes of {stripe_size}; the limit is {MAX_STRIPES}")]
    TooManyStripes {
        size: u64,
        stripe_size: u32,
        count: u64,
    },
    #[error("manifest has {got} stripes, size and stripe size require {expected}")]
    WrongStripeCount { expected: u64, got: u64 },
    #[error("manifest root {got} does not match the expected stripe root {expected}")]
    RootMismatch { expected: String, got: String },
    #[error("manifest says size {got}, expected {expected}")]
    SizeMismatch { expected: u64, got: u64 },
    #[error("manifest says stripe size {got}, expected {expected}")]
    StripeSizeMismatch { expected: u32, got: u32 },
}

/// SHA-256 for `merkle_light`.
#[derive(Default, Clone)]
pub struct MerkleSha256(Sha256);

impl std::fmt::Debug for MerkleSha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MerkleSha256")
    }
}

impl Hasher for MerkleSha256 {
    fn finish(&self) -> u64 {
        // merkle_light never calls finish on the algorithm; give a stable value anyway.
        let d = self.0.clone().finalize();
        u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl Algorithm<Digest> for MerkleSha256 {
    fn hash(&mut self) -> Digest {
        self.0.clone().finalize().into()
    }
}

/// Checks a stripe size against the accepted bounds.
pub fn check_stripe_size(stripe_size: u32) -> Result<(), ManifestError> {
    if !(MIN_STRIPE_SIZE..=MAX_STRIPE_SIZE).contains(&stripe_size) {
        return Err(ManifestError::BadStripeSize(stripe_size));
    }
    Ok(())
}

/// Number of stripes of an artifact: `max(1, ceil(size / stripe_size))`.
pub fn stripe_count(size: u64, stripe_size: u32) -> Result<u64, ManifestError> {
    check_stripe_size(stripe_size)?;
    let count = size.div_ceil(u64::from(stripe_size)).max(1);
    if count > MAX_STRIPES {
        return Err(ManifestError::TooManyStripes {
            size,
            stripe_size,
            count,
        });
    }
    Ok(count)
}

/// Byte length of stripe `index` (the caller ensures `index < count`).
pub fn stripe_len(size: u64, stripe_size: u32, index: u64) -> u64 {
    let start = index * u64::from(stripe_size);
    size.saturating_sub(start).min(u64::from(stripe_size))
}

/// SHA-256 of a byte slice.
pub fn sha256(data: &[u8]) -> Digest {
    Sha256::digest(data).into()
}

/// The stripe root over a list of stripe digests (non-empty).
pub fn stripe_root(digests: &[Digest]) -> Digest {
    match digests {
        [] => {
            let mut a = MerkleSha256::default();
            a.hash()
        }
        [one] => {
            let mut a = MerkleSha256::default();
            a.leaf(*one)
        }
        many => {
            let tree: MerkleTree<Digest, MerkleSha256> = MerkleTree::new(many.iter().copied());
            tree.root()
        }
    }
}

/// Ordered stripe digests of one artifact with its geometry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub size: u64,
    pub stripe_size: u32,
    pub digests: Vec<Digest>,
}

impl Manifest {
    /// Root over the digests.
    pub fn root(&self) -> Digest {
        stripe_root(&self.digests)
    }

    /// Number of stripes.
    pub fn count(&self) -> u64 {
        self.digests.len() as u64
    }

    /// Length of stripe `index`.
    pub fn stripe_len(&self, index: u64) -> u64 {
        stripe_len(self.size, self.stripe_size, index)
    }

    /// Verifies geometry, count binding and root; `expect_size`/`expect_stripe_size`
    /// are checked when the caller knows them (e.g. from the ledger).
    pub fn verify(
        &self,
        expected_root: &Digest,
        expect_size: Option<u64>,
        expect_stripe_size: Option<u32>,
    ) -> Result<(), ManifestError> {
        if let Some(s) = expect_size {
            if s != self.size {
                return Err(ManifestError::SizeMismatch {
                    expected: s,
                    got: self.size,
                });
            }
        }
        if let Some(s) = expect_stripe_size {
            if s != self.stripe_size {
                return Err(ManifestError::StripeSizeMismatch {
                    expected: s,
                    got: self.stripe_size,
                });
            }
        }
        let expected = stripe_count(self.size, self.stripe_size)?;
        if expected != self.count() {
            return Err(ManifestError::WrongStripeCount {
                expected,
                got: self.count(),
            });
        }
        let root = self.root();
        if &root != expected_root {
            return Err(ManifestError::RootMismatch {
                expected: hex::encode(expected_root),
                got: hex::encode(root),
            });
        }
        Ok(())
    }
}

/// Incremental builder: feed the artifact bytes in order, get the manifest and
/// whole-file digest. Memory is one stripe.
#[derive(Debug)]
pub struct ManifestBuilder {
    stripe_size: u32,
    whole: Sha256,
    stripe: Sha256,
    in_stripe: u64,
    size: u64,
    digests: Vec<Digest>,
}

impl ManifestBuilder {
    pub fn new(stripe_size: u32) -> Result<Self, ManifestError> {
        check_stripe_size(stripe_size)?;
        Ok(Self {
            stripe_size,
            whole: Sha256::new(),
            stripe: Sha256::new(),
            in_stripe: 0,
            size: 0,
            digests: Vec::new(),
        })
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.whole.update(data);
        self.size += data.len() as u64;
        while !data.is_empty() {
            let room = u64::from(self.stripe_size) - self.in_stripe;
            let take = room.min(data.len() as u64) as usize;
            let (head, tail) = data.split_at(take);
            self.stripe.update(head);
            self.in_stripe += take as u64;
            data = tail;
            if self.in_stripe == u64::from(self.stripe_size) {
                let done = std::mem::take(&mut self.stripe);
                self.digests.push(done.finalize().into());
                self.in_stripe = 0;
            }
        }
    }

    /// Bytes fed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Returns (whole-file sha256, manifest).
    pub fn finish(mut self) -> Result<(Digest, Manifest), ManifestError> {
        if self.in_stripe > 0 || self.digests.is_empty() {
            self.digests.push(self.stripe.finalize().into());
        }
        let m = Manifest {
            size: self.size,
            stripe_size: self.stripe_size,
            digests: self.digests,
        };
        let expected = stripe_count(m.size, m.stripe_size)?;
        if expected != m.count() {
            return Err(ManifestError::WrongStripeCount {
                expected,
                got: m.count(),
            });
        }
        Ok((self.whole.finalize().into(), m))
    }
}

/// Parses a 64-char hex digest.
pub fn parse_digest(s: &str) -> Option<Digest> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn counts() {
        assert_eq!(stripe_count(0, 4096).unwrap(), 1);
        assert_eq!(stripe_count(1, 4096).unwrap(), 1);
        assert_eq!(stripe_count(4096, 4096).unwrap(), 1);
        assert_eq!(stripe_count(4097, 4096).unwrap(), 2);
        assert!(stripe_count(1, 100).is_err());
        assert!(stripe_count(u64::MAX, 4096).is_err());
        assert_eq!(stripe_len(4097, 4096, 1), 1);
        assert_eq!(stripe_len(0, 4096, 0), 0);
    }

    #[test]
    fn duplicate_last_leaf_is_rejected_by_count_binding() {
        let a = sha256(b"a");
        let b = sha256(b"b");
        let c = sha256(b"c");
        let three = vec![a, b, c];
        let four = vec![a, b, c, c];
        // merkle_light's padding makes these share a root ...
        assert_eq!(stripe_root(&three), stripe_root(&four));
        // ... so the count must be bound to the size.
        let ss = 4096u32;
        let m = Manifest {
            size: 3 * 4096,
            stripe_size: ss,
            digests: four,
        };
        let root = stripe_root(&three);
        assert_eq!(
            m.verify(&root, None, None),
            Err(ManifestError::WrongStripeCount {
                expected: 3,
                got: 4
            })
        );
    }

    #[test]
    fn builder_matches_manual() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut b = ManifestBuilder::new(4096).unwrap();
        for chunk in data.chunks(777) {
            b.update(chunk);
        }
        let (whole, m) = b.finish().unwrap();
        assert_eq!(whole, sha256(&data));
        let manual: Vec<Digest> = data.chunks(4096).map(sha256).collect();
        assert_eq!(m.digests, manual);
        m.verify(&stripe_root(&manual), Some(10_000), Some(4096))
            .unwrap();
        // empty artifact: one empty stripe
        let (w, m) = ManifestBuilder::new(4096).unwrap().finish().unwrap();
        assert_eq!(w, sha256(b""));
        assert_eq!(m.digests, vec![sha256(b"")]);
        // one stripe root is the leaf hash, not the raw digest
        assert_ne!(m.root(), sha256(b""));
    }
}
