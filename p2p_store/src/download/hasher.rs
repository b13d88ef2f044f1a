//! The in-order whole-file hasher: stripes are verified against the
//! manifest and hashed into the whole-file SHA-256 in one pass, on a
//! blocking thread, while the download runs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::bufpool::StripeBuf;
use crate::manifest::{Digest, Manifest};
use crate::store::{Store, StoreError};
use crate::twin_sha::Sha256State;

/// Whole-file SHA-256 computed while the download runs, on a blocking
/// thread that takes stripes in order. A stripe still to be verified
/// ([`ToHasher::Unverified`]) is checked here when its turn comes, its own
/// digest and the whole-file digest computed in one pass
/// ([`Sha256State::update_and_digest`]); one verified elsewhere
/// ([`ToHasher::Verified`]) only feeds the whole-file digest. Stripes that
/// complete ahead of their turn are held in memory: unverified ones up to
/// [`HASH_AHEAD_BYTES`] (the downloader routes the rest to be verified
/// alone), verified ones up to the same bound, beyond which they are re-read
/// from disk when their turn comes. Bounded channel: back-pressure.
pub(super) struct InOrderHasher {
    pub(super) tx: tokio::sync::mpsc::Sender<ToHasher>,
    pub(super) done: tokio::task::JoinHandle<Option<Digest>>,
    /// The stripe the hasher takes next (the one it waits on if it waits).
    pub(super) next: Arc<AtomicU64>,
}

pub(super) enum ToHasher {
    Verified {
        index: u64,
        data: Option<StripeBuf>,
    },
    Unverified {
        index: u64,
        data: StripeBuf,
        reply: tokio::sync::oneshot::Sender<Checked>,
    },
}

/// The hasher's verdict on an unverified stripe.
pub(super) enum Checked {
    /// The bytes match the manifest: to be written.
    Good(StripeBuf),
    Bad(StoreError),
    /// Already hashed in: this copy is not needed.
    Duplicate,
}

enum Held {
    Verified(Option<StripeBuf>),
    Unverified(StripeBuf, tokio::sync::oneshot::Sender<Checked>),
}

/// Out-of-order stripes the whole-file hasher holds in memory, of each kind.
pub(super) const HASH_AHEAD_BYTES: usize = 24 << 20;

impl InOrderHasher {
    pub(super) fn start(store: Arc<Store>, sha: Digest, manifest: Arc<Manifest>) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<ToHasher>(8);
        let next_shared = Arc::new(AtomicU64::new(0));
        let next_seen = next_shared.clone();
        let done = tokio::task::spawn_blocking(move || {
            let count = manifest.count();
            let mut whole = Sha256State::default();
            let mut next = 0u64;
            let mut ahead: BTreeMap<u64, Held> = BTreeMap::new();
            let mut held_verified = 0usize;
            while let Some(msg) = rx.blocking_recv() {
                match msg {
                    ToHasher::Verified { index, .. } if index < next => {}
                    ToHasher::Verified { index, data } => {
                        let data = match data {
                            Some(d)
                                if index != next && held_verified + d.len() > HASH_AHEAD_BYTES =>
                            {
                                None
                            }
                            d => d,
                        };
                        held_verified += data.as_ref().map_or(0, |d| d.len());
                        ahead.insert(index, Held::Verified(data));
                    }
                    ToHasher::Unverified { index, data, reply } => {
                        if index < next || ahead.contains_key(&index) {
                            let _ = reply.send(Checked::Duplicate);
                        } else {
                            ahead.insert(index, Held::Unverified(data, reply));
                        }
                    }
                }
                while let Some(held) = ahead.remove(&next) {
                    match held {
                        Held::Verified(Some(d)) => {
                            held_verified -= d.len();
                            whole.update(&d);
                        }
                        Held::Verified(None) => match store.read_stripe(&sha, next) {
                            Ok(d) => whole.update(&d),
                            Err(_) => return None,
                        },
                        Held::Unverified(d, reply) => match check(&manifest, next, &mut whole, d) {
                            Checked::Good(d) => {
                                let _ = reply.send(Checked::Good(d));
                            }
                            verdict => {
                                // `next` stays: another copy is on its way.
                                let _ = reply.send(verdict);
                                break;
                            }
                        },
                    }
                    next += 1;
                    next_shared.store(next, Ordering::Relaxed);
                }
            }
            (next == count).then(|| whole.finalize())
        });
        Self {
            tx,
            done,
            next: next_seen,
        }
    }
}

/// Checks stripe `index` against the manifest, advancing `whole` over it
/// only if it matches.
fn check(manifest: &Manifest, index: u64, whole: &mut Sha256State, data: StripeBuf) -> Checked {
    let expected = manifest.digests[index as usize];
    let len = manifest.stripe_len(index);
    if data.len() as u64 != len {
        let verdict = if crate::manifest::sha256(&data) == expected {
            // The right bytes at a length the manifest's geometry contradicts.
            StoreError::GeometryMismatch {
                index,
                expected: len,
                got: data.len() as u64,
            }
        } else {
            StoreError::BadStripe { index }
        };
        return Checked::Bad(verdict);
    }
    let mut advanced = whole.clone();
    if advanced.update_and_digest(&data) == expected {
        *whole = advanced;
        Checked::Good(data)
    } else {
        Checked::Bad(StoreError::BadStripe { index })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_in_order_check_advances_the_whole_file_digest_only_over_good_stripes() {
        let data: Vec<u8> = (0..2 * 4096 + 10u32)
            .map(|i| (i * 13 % 256) as u8)
            .collect();
        let mut b = crate::manifest::ManifestBuilder::new(4096).unwrap();
        b.update(&data);
        let (whole_sha, m) = b.finish().unwrap();
        let mut whole = Sha256State::default();

        let mut bad = StripeBuf::from(&data[..4096]);
        bad.as_mut_slice()[7] ^= 1;
        assert!(matches!(
            check(&m, 0, &mut whole, bad),
            Checked::Bad(StoreError::BadStripe { index: 0 })
        ));
        // The right bytes of stripe 0 cut short: they match no digest.
        assert!(matches!(
            check(&m, 0, &mut whole, StripeBuf::from(&data[..4000])),
            Checked::Bad(StoreError::BadStripe { index: 0 })
        ));
        for (i, chunk) in data.chunks(4096).enumerate() {
            assert!(matches!(
                check(&m, i as u64, &mut whole, StripeBuf::from(chunk)),
                Checked::Good(d) if d.as_slice() == chunk
            ));
        }
        assert_eq!(whole.finalize(), whole_sha);
    }

    #[test]
    fn right_bytes_at_a_length_the_manifest_contradicts_are_a_geometry_mismatch() {
        let data = vec![9u8; 4096 + 100];
        let mut b = crate::manifest::ManifestBuilder::new(4096).unwrap();
        b.update(&data);
        let (_, mut m) = b.finish().unwrap();
        // A manifest whose last digest is that of 50 bytes, while its size
        // says the last stripe holds 100.
        m.digests[1] = crate::manifest::sha256(&data[4096..4146]);
        let mut whole = Sha256State::default();
        assert!(matches!(
            check(&m, 0, &mut whole, StripeBuf::from(&data[..4096])),
            Checked::Good(_)
        ));
        assert!(matches!(
            check(&m, 1, &mut whole, StripeBuf::from(&data[4096..4146])),
            Checked::Bad(StoreError::GeometryMismatch {
                index: 1,
                expected: 100,
                got: 50
            })
        ));
    }
}
