//! Kademlia's record store for the node: provider records only, with the
//! records other peers put here bounded and kept apart from our own.
//!
//! Any peer may send `ADD_PROVIDER` for any key, and libp2p's `MemoryStore`
//! shares one key budget between its own records and everyone else's, so a
//! peer flooding records could both grow the node's memory and push out the
//! records that make our own artifacts findable. Here our own records live
//! in their own map (bounded by what our store holds), and remote ones are
//! capped in total, per key, per providing peer and in addresses, and must
//! be keyed by exactly a SHA-256 digest, the only key the store provides.

use std::borrow::Cow;
use std::collections::{hash_map, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::kad::store::{Error, RecordStore, Result};
use libp2p::kad::{ProviderRecord, Record, RecordKey};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

/// Length of every provider key: an artifact's SHA-256.
pub const PROVIDER_KEY_LEN: usize = 32;

/// Bounds on the provider records other peers may leave here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderLimits {
    /// Remote provider records in total.
    pub max_records: usize,
    /// Remote providers kept for one key.
    pub max_per_key: usize,
    /// Remote records one providing peer may hold here.
    pub max_per_peer: usize,
    /// Addresses kept per remote record (extra ones are dropped).
    pub max_addrs: usize,
}

impl Default for ProviderLimits {
    fn default() -> Self {
        // 65 536 records of at most 8 addresses stay within a few tens of
        // MiB; 20 providers per key is Kademlia's replication factor, more
        // than a download uses (16 peers); one peer legitimately provides
        // what its store holds, a few thousand artifacts.
        ProviderLimits {
            max_records: 65_536,
            max_per_key: 20,
            max_per_peer: 4_096,
            max_addrs: 8,
        }
    }
}

/// Counts read by `/status` while the swarm task owns the store.
#[derive(Debug, Default)]
pub struct ProviderStats {
    local: AtomicU64,
    remote: AtomicU64,
    refused: AtomicU64,
}

/// Provider record counts (`/status` `provider_records`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProviderCounts {
    /// Keys this node provides itself.
    pub local: u64,
    /// Records other peers put here.
    pub remote: u64,
    /// Remote records refused by a bound (wrong key length, a full key, a
    /// full peer, a full store).
    pub refused: u64,
}

impl ProviderStats {
    pub fn counts(&self) -> ProviderCounts {
        ProviderCounts {
            local: self.local.load(Ordering::Relaxed),
            remote: self.remote.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

/// Why a remote record was not kept; also what the unit tests check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    KeyLength,
    KeyFull,
    PeerFull,
    StoreFull,
}

/// How often a full store looks for expired records before refusing: a
/// sweep is O(records), and a flood would otherwise pay it per message.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The node's Kademlia record store.
#[derive(Debug)]
pub struct ProviderStore {
    local_id: PeerId,
    limits: ProviderLimits,
    /// Our own records, one per key.
    local: HashMap<RecordKey, ProviderRecord>,
    remote: HashMap<RecordKey, Vec<ProviderRecord>>,
    remote_total: usize,
    per_peer: HashMap<PeerId, usize>,
    last_sweep: Option<Instant>,
    stats: Arc<ProviderStats>,
}

impl ProviderStore {
    pub fn new(local_id: PeerId, limits: ProviderLimits, stats: Arc<ProviderStats>) -> Self {
        ProviderStore {
            local_id,
            limits,
            local: HashMap::new(),
            remote: HashMap::new(),
            remote_total: 0,
            per_peer: HashMap::new(),
            last_sweep: None,
            stats,
        }
    }

    fn publish(&self) {
        self.stats
            .local
            .store(self.local.len() as u64, Ordering::Relaxed);
        self.stats
            .remote
            .store(self.remote_total as u64, Ordering::Relaxed);
    }

    /// Keeps or refuses a record another peer announced, as of `now`.
    pub fn add_remote(
        &mut self,
        mut record: ProviderRecord,
        now: Instant,
    ) -> std::result::Result<(), Refusal> {
        if record.key.as_ref().len() != PROVIDER_KEY_LEN {
            return Err(Refusal::KeyLength);
        }
        record.addresses.truncate(self.limits.max_addrs);
        // An update of a record already here costs nothing new.
        if let Some(list) = self.remote.get_mut(&record.key) {
            if let Some(p) = list.iter_mut().find(|p| p.provider == record.provider) {
                *p = record;
                return Ok(());
            }
        }
        let full = |s: &Self| -> Option<Refusal> {
            if s.remote.get(&record.key).map_or(0, Vec::len) >= s.limits.max_per_key {
                Some(Refusal::KeyFull)
            } else if s.per_peer.get(&record.provider).copied().unwrap_or(0)
                >= s.limits.max_per_peer
            {
                Some(Refusal::PeerFull)
            } else if s.remote_total >= s.limits.max_records {
                Some(Refusal::StoreFull)
            } else {
                None
            }
        };
        if full(self).is_some()
            && self
                .last_sweep
                .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY)
        {
            self.sweep(now);
        }
        if let Some(r) = full(self) {
            return Err(r);
        }
        *self.per_peer.entry(record.provider).or_default() += 1;
        self.remote_total += 1;
        self.remote
            .entry(record.key.clone())
            .or_default()
            .push(record);
        self.publish();
        Ok(())
    }

    /// Drops expired remote records.
    pub fn sweep(&mut self, now: Instant) {
        self.last_sweep = Some(now);
        let per_peer = &mut self.per_peer;
        let mut removed = 0;
        self.remote.retain(|_, list| {
            list.retain(|p| {
                let keep = !p.is_expired(now);
                if !keep {
                    removed += 1;
                    if let hash_map::Entry::Occupied(mut e) = per_peer.entry(p.provider) {
                        *e.get_mut() -= 1;
                        if *e.get() == 0 {
                            e.remove();
                        }
                    }
                }
                keep
            });
            !list.is_empty()
        });
        self.remote_total -= removed;
        self.publish();
    }

    fn remove_remote(&mut self, key: &RecordKey, provider: &PeerId) {
        let hash_map::Entry::Occupied(mut e) = self.remote.entry(key.clone()) else {
            return;
        };
        let before = e.get().len();
        e.get_mut().retain(|p| &p.provider != provider);
        if e.get().len() < before {
            self.remote_total -= 1;
            if let hash_map::Entry::Occupied(mut c) = self.per_peer.entry(*provider) {
                *c.get_mut() -= 1;
                if *c.get() == 0 {
                    c.remove();
                }
            }
        }
        if e.get().is_empty() {
            e.remove();
        }
    }
}

impl RecordStore for ProviderStore {
    type RecordsIter<'a> = std::iter::Empty<Cow<'a, Record>>;
    type ProvidedIter<'a> = std::iter::Map<
        hash_map::Values<'a, RecordKey, ProviderRecord>,
        fn(&'a ProviderRecord) -> Cow<'a, ProviderRecord>,
    >;

    fn get(&self, _k: &RecordKey) -> Option<Cow<'_, Record>> {
        None
    }

    /// The store uses provider records only; a value record from a peer
    /// would be memory it never reads.
    fn put(&mut self, _r: Record) -> Result<()> {
        Err(Error::MaxRecords)
    }

    fn remove(&mut self, _k: &RecordKey) {}

    fn records(&self) -> Self::RecordsIter<'_> {
        std::iter::empty()
    }

    fn add_provider(&mut self, record: ProviderRecord) -> Result<()> {
        if record.provider == self.local_id {
            // Ours: bounded by what our own store holds, never by others.
            self.local.insert(record.key.clone(), record);
            self.publish();
            return Ok(());
        }
        match self.add_remote(record, Instant::now()) {
            Ok(()) => Ok(()),
            Err(why) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(?why, "remote provider record refused");
                Err(Error::MaxProvidedKeys)
            }
        }
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        let mut all: Vec<ProviderRecord> = self.local.get(key).cloned().into_iter().collect();
        if let Some(list) = self.remote.get(key) {
            all.extend(list.iter().cloned());
        }
        all
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.local.values().map(Cow::Borrowed)
    }

    fn remove_provider(&mut self, key: &RecordKey, provider: &PeerId) {
        if provider == &self.local_id {
            self.local.remove(key);
        } else {
            self.remove_remote(key, provider);
        }
        self.publish();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(i: u32) -> RecordKey {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        RecordKey::new(&k)
    }

    fn rec(k: RecordKey, p: PeerId, addrs: usize, expires: Option<Instant>) -> ProviderRecord {
        ProviderRecord {
            key: k,
            provider: p,
            expires,
            addresses: (0..addrs)
                .map(|i| format!("/ip4/10.0.0.1/tcp/{}", 1000 + i).parse().unwrap())
                .collect(),
        }
    }

    fn store(limits: ProviderLimits) -> (ProviderStore, PeerId, Arc<ProviderStats>) {
        let me = PeerId::random();
        let stats = Arc::new(ProviderStats::default());
        (ProviderStore::new(me, limits, stats.clone()), me, stats)
    }

    const SMALL: ProviderLimits = ProviderLimits {
        max_records: 10,
        max_per_key: 3,
        max_per_peer: 4,
        max_addrs: 2,
    };

    #[test]
    fn remote_records_respect_every_bound() {
        let (mut s, _, _) = store(SMALL);
        let now = Instant::now();
        let bad = RecordKey::new(&[1u8; 31]);
        assert_eq!(
            s.add_remote(rec(bad, PeerId::random(), 1, None), now),
            Err(Refusal::KeyLength)
        );
        let long = RecordKey::new(&[1u8; 33]);
        assert_eq!(
            s.add_remote(rec(long, PeerId::random(), 1, None), now),
            Err(Refusal::KeyLength)
        );
        // Per key.
        for _ in 0..3 {
            s.add_remote(rec(key(0), PeerId::random(), 1, None), now)
                .unwrap();
        }
        assert_eq!(
            s.add_remote(rec(key(0), PeerId::random(), 1, None), now),
            Err(Refusal::KeyFull)
        );
        // Per peer.
        let flooder = PeerId::random();
        for i in 1..=4 {
            s.add_remote(rec(key(i), flooder, 1, None), now).unwrap();
        }
        assert_eq!(
            s.add_remote(rec(key(5), flooder, 1, None), now),
            Err(Refusal::PeerFull)
        );
        // An update of a record already held is always accepted.
        s.add_remote(rec(key(4), flooder, 5, None), now).unwrap();
        assert_eq!(
            s.providers(&key(4))[0].addresses.len(),
            2,
            "addresses capped"
        );
        // In total.
        for i in 10..13 {
            s.add_remote(rec(key(i), PeerId::random(), 1, None), now)
                .unwrap();
        }
        assert_eq!(s.remote_total, 10);
        assert_eq!(
            s.add_remote(rec(key(20), PeerId::random(), 1, None), now),
            Err(Refusal::StoreFull)
        );
    }

    #[test]
    fn a_full_store_makes_room_from_expired_records_only() {
        let (mut s, _, stats) = store(SMALL);
        let t0 = Instant::now();
        let soon = Some(t0 + Duration::from_secs(5));
        for i in 0..10 {
            s.add_remote(rec(key(i), PeerId::random(), 1, soon), t0)
                .unwrap();
        }
        assert_eq!(
            s.add_remote(rec(key(50), PeerId::random(), 1, None), t0),
            Err(Refusal::StoreFull)
        );
        let later = t0 + Duration::from_secs(6);
        s.add_remote(rec(key(50), PeerId::random(), 1, None), later)
            .unwrap();
        assert_eq!(s.remote_total, 1);
        assert_eq!(stats.counts().remote, 1);
        assert!(s.per_peer.values().all(|&n| n == 1) && s.per_peer.len() == 1);
    }

    #[test]
    fn remote_flooding_never_touches_our_own_records() {
        let (mut s, me, stats) = store(SMALL);
        for i in 0..100 {
            let _ = s.add_provider(rec(key(i), PeerId::random(), 1, None));
        }
        // Our records go in whatever the remote ones occupy.
        for i in 0..100 {
            s.add_provider(rec(key(i), me, 1, None)).unwrap();
        }
        assert_eq!(s.provided().count(), 100);
        assert!(s.providers(&key(0)).iter().any(|p| p.provider == me));
        let c = stats.counts();
        assert_eq!((c.local, c.remote, c.refused), (100, 10, 90));
        s.remove_provider(&key(0), &me);
        assert_eq!(s.provided().count(), 99);
        // Value records are never kept.
        assert!(s.put(Record::new(key(1), vec![1, 2, 3])).is_err());
        assert!(s.get(&key(1)).is_none());
    }

    #[test]
    fn removing_a_remote_record_frees_its_slots() {
        let (mut s, _, _) = store(SMALL);
        let p = PeerId::random();
        for i in 0..4 {
            s.add_remote(rec(key(i), p, 1, None), Instant::now())
                .unwrap();
        }
        s.remove_provider(&key(0), &p);
        assert_eq!(s.remote_total, 3);
        s.add_remote(rec(key(9), p, 1, None), Instant::now())
            .unwrap();
        assert!(s.providers(&key(0)).is_empty());
    }
}
