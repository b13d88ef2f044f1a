//! Which signed transactions this node has already seen verify.
//!
//! CheckTx verifies a transaction's signature when it enters the mempool;
//! the same bytes then come back in a block, and FinalizeBlock would verify
//! them again. This cache remembers, by SHA-256 of the whole signed
//! transaction (chain id, body, signer and signature, exactly as received),
//! that the signature verified, so FinalizeBlock verifies only what this
//! node has not.
//!
//! Why it cannot change a block's result: whether a signature verifies is a
//! pure function of the transaction's bytes (ZIP-215 rules, no state, no
//! randomness), so "these exact bytes verified before" gives the answer
//! verification would give. The key covers the signature too, so bytes
//! with the same body and a different (bad) signature are another key and
//! are verified. Only successes are stored, so a miss always means "verify
//! now", and the cache can forget anything at any time: a full cache evicts
//! the oldest entry, and a node whose cache is cold (just restarted, or that
//! never saw the transaction in its mempool) verifies everything and reaches
//! the same verdicts. Nothing iterates the set, so its order feeds nothing.

use std::collections::{BTreeSet, VecDeque};

/// Entries kept: comfortably more than a mempool holds (CometBFT's default
/// is 5,000 transactions), at 32 bytes of key twice (set and queue) each.
pub const VERIFIED_CAPACITY: usize = 1 << 16;

/// SHA-256 of a whole signed transaction.
pub type TxHash = [u8; 32];

#[derive(Debug)]
pub(crate) struct VerifiedTxs {
    capacity: usize,
    set: BTreeSet<TxHash>,
    /// Insertion order, oldest first, for eviction. May hold hashes already
    /// removed from `set` (taken by a block); they are skipped when popped.
    order: VecDeque<TxHash>,
}

impl VerifiedTxs {
    pub(crate) fn new(capacity: usize) -> VerifiedTxs {
        VerifiedTxs {
            capacity,
            set: BTreeSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Records that the transaction hashing to `hash` has a valid signature.
    pub(crate) fn insert(&mut self, hash: TxHash) {
        if self.capacity == 0 || !self.set.insert(hash) {
            return;
        }
        self.order.push_back(hash);
        while self.set.len() > self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.set.remove(&old);
                }
                None => break,
            }
        }
        // Hashes taken by blocks leave stale queue entries; drop them when
        // they outnumber the live ones, so the queue stays bounded too.
        if self.order.len() > 2 * self.capacity {
            let set = &self.set;
            self.order.retain(|h| set.contains(h));
        }
    }

    /// Whether the transaction hashing to `hash` was recorded as verified.
    pub(crate) fn contains(&self, hash: &TxHash) -> bool {
        self.set.contains(hash)
    }

    /// Whether the transaction hashing to `hash` was recorded as verified;
    /// forgets it either way, since a block has now consumed it.
    pub(crate) fn take(&mut self, hash: &TxHash) -> bool {
        self.set.remove(hash)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.set.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u32) -> TxHash {
        let mut out = [0u8; 32];
        out[..4].copy_from_slice(&i.to_be_bytes());
        out
    }

    #[test]
    fn bounded_and_evicts_oldest() {
        let mut c = VerifiedTxs::new(3);
        for i in 0..5 {
            c.insert(h(i));
        }
        assert_eq!(c.len(), 3);
        assert!(!c.take(&h(0)));
        assert!(!c.take(&h(1)));
        assert!(c.take(&h(4)));
        assert!(!c.take(&h(4)), "taken once");
    }

    #[test]
    fn queue_stays_bounded_when_blocks_take_entries() {
        let mut c = VerifiedTxs::new(4);
        for i in 0..1000 {
            c.insert(h(i));
            assert!(c.take(&h(i)));
            assert!(c.order.len() <= 8);
        }
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn zero_capacity_stores_nothing() {
        let mut c = VerifiedTxs::new(0);
        c.insert(h(1));
        assert!(!c.take(&h(1)));
    }
}
