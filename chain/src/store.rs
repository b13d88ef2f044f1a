//! The authenticated state: a Jellyfish Merkle tree whose nodes and versioned
//! values live in RocksDB. Version = block height (genesis state is version 0).
//!
//! A block's changes are hashed into a new root in memory (FinalizeBlock) and
//! written in one atomic RocksDB batch together with the committed height and
//! app hash (Commit), so a crash can never leave state and height out of step.
//!
//! With a [`History`] bound, the same batch deletes the tree nodes and values
//! that no version still in the window reads: each commit records what it
//! replaces, keyed by the version from which it is stale, and the oldest
//! records are deleted once that version leaves the window. Pruning changes
//! no root and no app hash: it only makes old versions unreadable, and a
//! read below the window is refused, never answered from partial data.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use borsh::BorshDeserialize;
use jmt::storage::{LeafNode, Node, NodeKey, TreeReader, TreeUpdateBatch};
use jmt::{KeyHash, OwnedValue, Sha256Jmt, Version};
use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, DB};

const CF_NODES: &str = "jmt_nodes";
const CF_VALUES: &str = "jmt_values";
const CF_PREIMAGES: &str = "jmt_preimages";
const CF_META: &str = "meta";
/// What each version made stale: `since (8 BE) | kind | key of the node or value`.
const CF_STALE: &str = "jmt_stale";
const STALE_NODE: u8 = 0;
const STALE_VALUE: u8 = 1;
/// At most this many stale records are deleted per commit, so that a store
/// that turns pruning on late catches up over several blocks instead of one
/// huge batch.
const MAX_PRUNED_PER_COMMIT: usize = 20_000;

const META_HEIGHT: &[u8] = b"height";
const META_APP_HASH: &[u8] = b"app_hash";
const META_OLDEST: &[u8] = b"oldest_readable";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("state tree: {0}")]
    Tree(String),
    #[error("corrupt state record {what}: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("version {asked} is pruned: this node keeps versions from {oldest} on")]
    Pruned { asked: Version, oldest: Version },
}

impl From<anyhow::Error> for StoreError {
    fn from(e: anyhow::Error) -> Self {
        StoreError::Tree(format!("{e:#}"))
    }
}

/// Metadata committed atomically with each version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub height: u64,
    pub app_hash: [u8; 32],
}

/// How many versions of the state a store keeps readable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum History {
    /// Every version since genesis.
    All,
    /// The latest this many (at least 1).
    Last(std::num::NonZeroU64),
}

#[derive(Debug)]
pub struct Store {
    db: DB,
    history: History,
    /// The oldest version still readable.
    oldest: AtomicU64,
}

fn stale_key(since: Version, kind: u8, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + key.len());
    k.extend_from_slice(&since.to_be_bytes());
    k.push(kind);
    k.extend_from_slice(key);
    k
}

pub fn key_hash(key: &[u8]) -> KeyHash {
    KeyHash::with::<sha2::Sha256>(key)
}

fn value_key(key_hash: &KeyHash, version: Version) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(&key_hash.0);
    k[32..].copy_from_slice(&version.to_be_bytes());
    k
}

/// Bytes of memtables across all column families before RocksDB flushes.
const MEMTABLE_BUDGET: usize = 16 << 20;

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Self::open_with(path, History::All)
    }

    /// Opens the store keeping `history` readable from the next commit on.
    pub fn open_with(path: &Path, history: History) -> Result<Store, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Memtables of every column family together stay under this: RocksDB's
        // default is 64 MiB per family before a flush, and the soak showed
        // each app's memory climbing by that much (scripts/soak.sh).
        opts.set_db_write_buffer_size(MEMTABLE_BUDGET);
        let cfs = [CF_NODES, CF_VALUES, CF_PREIMAGES, CF_META, CF_STALE]
            .into_iter()
            .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let store = Store {
            db: DB::open_cf_descriptors(&opts, path, cfs)?,
            history,
            oldest: AtomicU64::new(0),
        };
        if let Some(b) = store.meta(META_OLDEST)? {
            let oldest = b
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt {
                    what: "meta".into(),
                    reason: "oldest readable version".into(),
                })?;
            store.oldest.store(oldest, Ordering::SeqCst);
        }
        Ok(store)
    }

    /// The oldest version still readable (0 when nothing was pruned).
    pub fn oldest_readable(&self) -> Version {
        self.oldest.load(Ordering::SeqCst)
    }

    /// Fails unless `version` is still readable. A read of an old version
    /// checks before and after: pruning raises the bound before it deletes,
    /// so a read that raced a prune is refused rather than answered from
    /// what was left.
    pub fn check_readable(&self, version: Version) -> Result<(), StoreError> {
        let oldest = self.oldest_readable();
        if version < oldest {
            return Err(StoreError::Pruned {
                asked: version,
                oldest,
            });
        }
        Ok(())
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| StoreError::Tree(format!("column family {name} missing")))
    }

    pub fn tree(&self) -> Sha256Jmt<'_, Store> {
        Sha256Jmt::new(self)
    }

    /// The last committed version and its root, if any version was committed.
    pub fn committed(&self) -> Result<Option<Committed>, StoreError> {
        let meta = self.cf(CF_META)?;
        let height = self.db.get_cf(meta, META_HEIGHT)?;
        let hash = self.db.get_cf(meta, META_APP_HASH)?;
        match (height, hash) {
            (Some(h), Some(a)) => {
                let corrupt = |reason: &str| StoreError::Corrupt {
                    what: "meta".into(),
                    reason: reason.into(),
                };
                let height = u64::from_be_bytes(h.try_into().map_err(|_| corrupt("height"))?);
                let app_hash = a.try_into().map_err(|_| corrupt("app hash"))?;
                Ok(Some(Committed { height, app_hash }))
            }
            _ => Ok(None),
        }
    }

    /// Reads an unauthenticated metadata entry (chain id, last block time).
    pub fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(CF_META)?, key)?)
    }

    /// The value of `key` as of `version`, straight from the versioned values
    /// (no tree walk: the tree holds the same value hashes).
    pub fn get(&self, key: &[u8], version: Version) -> Result<Option<Vec<u8>>, StoreError> {
        self.value_at(version, key_hash(key))
    }

    pub fn get_decoded<T: BorshDeserialize>(
        &self,
        key: &[u8],
        version: Version,
    ) -> Result<Option<T>, StoreError> {
        self.get(key, version)?
            .map(|bytes| {
                T::try_from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                    what: String::from_utf8_lossy(key).into_owned(),
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    fn value_at(
        &self,
        max_version: Version,
        key_hash: KeyHash,
    ) -> Result<Option<OwnedValue>, StoreError> {
        self.check_readable(max_version)?;
        let mut it = self.db.raw_iterator_cf(self.cf(CF_VALUES)?);
        it.seek_for_prev(value_key(&key_hash, max_version));
        self.check_readable(max_version)?;
        match (it.key(), it.value()) {
            (Some(k), Some(v)) if k.starts_with(&key_hash.0) => {
                Option::<Vec<u8>>::try_from_slice(v).map_err(|e| StoreError::Corrupt {
                    what: "versioned value".into(),
                    reason: e.to_string(),
                })
            }
            _ => {
                it.status()?;
                Ok(None)
            }
        }
    }

    /// Atomically writes a version: tree nodes, values, key preimages and the
    /// committed height/app hash, plus any unauthenticated metadata.
    pub fn commit(
        &self,
        committed: &Committed,
        batch: &TreeUpdateBatch,
        preimages: &[(KeyHash, Vec<u8>)],
        meta: &[(&[u8], Vec<u8>)],
    ) -> Result<(), StoreError> {
        let mut wb = WriteBatch::default();
        let nodes = self.cf(CF_NODES)?;
        for (node_key, node) in batch.node_batch.nodes() {
            wb.put_cf(
                nodes,
                crate::types::encode(node_key),
                crate::types::encode(node),
            );
        }
        let values = self.cf(CF_VALUES)?;
        for ((version, key_hash), value) in batch.node_batch.values() {
            wb.put_cf(
                values,
                value_key(key_hash, *version),
                crate::types::encode(value),
            );
        }
        let pre = self.cf(CF_PREIMAGES)?;
        for (key_hash, key) in preimages {
            wb.put_cf(pre, key_hash.0, key);
        }
        let meta_cf = self.cf(CF_META)?;
        for (k, v) in meta {
            wb.put_cf(meta_cf, k, v);
        }
        wb.put_cf(meta_cf, META_HEIGHT, committed.height.to_be_bytes());
        wb.put_cf(meta_cf, META_APP_HASH, committed.app_hash);
        if let History::Last(keep) = self.history {
            self.record_stale(&mut wb, batch)?;
            let oldest = committed.height.saturating_sub(keep.get() - 1);
            self.prune(&mut wb, oldest)?;
            wb.put_cf(meta_cf, META_OLDEST, oldest.to_be_bytes());
            self.oldest.fetch_max(oldest, Ordering::SeqCst);
        }
        self.db.write(wb)?;
        Ok(())
    }

    /// Records what `batch` replaces: the nodes the tree reports stale, each
    /// key's previous value, and deletion markers.
    fn record_stale(&self, wb: &mut WriteBatch, batch: &TreeUpdateBatch) -> Result<(), StoreError> {
        let stale = self.cf(CF_STALE)?;
        for s in &batch.stale_node_index_batch {
            let node = crate::types::encode(&s.node_key);
            wb.put_cf(
                stale,
                stale_key(s.stale_since_version, STALE_NODE, &node),
                [],
            );
        }
        let values = self.cf(CF_VALUES)?;
        let mut it = self.db.raw_iterator_cf(values);
        for ((version, key_hash), value) in batch.node_batch.values() {
            // A deletion's marker is stale from its own version: once that
            // leaves the window, no readable version has the key, and with
            // the value before it gone too, a read finds nothing.
            if value.is_none() {
                let marker = value_key(key_hash, *version);
                wb.put_cf(stale, stale_key(*version, STALE_VALUE, &marker), []);
            }
            let Some(before) = version.checked_sub(1) else {
                continue;
            };
            it.seek_for_prev(value_key(key_hash, before));
            match it.key() {
                Some(k) if k.starts_with(&key_hash.0) => {
                    wb.put_cf(stale, stale_key(*version, STALE_VALUE, k), []);
                }
                _ => it.status()?,
            }
        }
        Ok(())
    }

    /// Deletes what became stale at or before `oldest`: no version from
    /// `oldest` on reads it.
    fn prune(&self, wb: &mut WriteBatch, oldest: Version) -> Result<(), StoreError> {
        let (stale, nodes, values) = (self.cf(CF_STALE)?, self.cf(CF_NODES)?, self.cf(CF_VALUES)?);
        let mut it = self.db.raw_iterator_cf(stale);
        it.seek_to_first();
        let mut pruned = 0;
        while let Some(k) = it.key() {
            let corrupt = || StoreError::Corrupt {
                what: "stale index".into(),
                reason: format!("key {}", hex::encode(k)),
            };
            let since = k
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(corrupt)?;
            if since > oldest || pruned == MAX_PRUNED_PER_COMMIT {
                break;
            }
            match k.get(8) {
                Some(&STALE_NODE) => wb.delete_cf(nodes, &k[9..]),
                Some(&STALE_VALUE) => wb.delete_cf(values, &k[9..]),
                _ => return Err(corrupt()),
            }
            wb.delete_cf(stale, k);
            pruned += 1;
            it.next();
        }
        it.status()?;
        Ok(())
    }
}

impl TreeReader for Store {
    fn get_node_option(&self, node_key: &NodeKey) -> anyhow::Result<Option<Node>> {
        let cf = self.cf(CF_NODES)?;
        match self.db.get_pinned_cf(cf, borsh::to_vec(node_key)?)? {
            Some(bytes) => Ok(Some(Node::try_from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    fn get_value_option(
        &self,
        max_version: Version,
        key_hash: KeyHash,
    ) -> anyhow::Result<Option<OwnedValue>> {
        Ok(self.value_at(max_version, key_hash)?)
    }

    fn get_rightmost_leaf(&self) -> anyhow::Result<Option<(NodeKey, LeafNode)>> {
        anyhow::bail!("state restore from snapshots is not supported")
    }
}

impl jmt::storage::HasPreimage for Store {
    fn preimage(&self, key_hash: KeyHash) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(CF_PREIMAGES)?, key_hash.0)?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::num::NonZeroU64;

    /// Rows in column family `name`.
    fn rows(store: &Store, name: &str) -> usize {
        let mut it = store.db.raw_iterator_cf(store.cf(name).unwrap());
        it.seek_to_first();
        let mut n = 0;
        while it.valid() {
            n += 1;
            it.next();
        }
        n
    }

    fn value(key: usize, version: Version) -> Vec<u8> {
        format!("value of {key} at {version}").into_bytes()
    }

    /// Version `v` rewrites keys `v % 10`, `(v + 3) % 10` and adds key
    /// `100 + v`, deleting key `100 + v - 5`: overwrites, inserts and
    /// deletions, as blocks do.
    fn commit_version(store: &Store, v: Version) -> [u8; 32] {
        let mut writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = vec![
            (format!("k{}", v % 10).into_bytes(), Some(value(0, v))),
            (format!("k{}", (v + 3) % 10).into_bytes(), Some(value(3, v))),
            (format!("k{}", 100 + v).into_bytes(), Some(value(100, v))),
        ];
        if v >= 5 {
            writes.push((format!("k{}", 100 + v - 5).into_bytes(), None));
        }
        let preimages: Vec<_> = writes
            .iter()
            .map(|(k, _)| (key_hash(k), k.clone()))
            .collect();
        let (root, batch) = store
            .tree()
            .put_value_set(writes.into_iter().map(|(k, v)| (key_hash(&k), v)), v)
            .unwrap();
        let committed = Committed {
            height: v,
            app_hash: root.0,
        };
        store.commit(&committed, &batch, &preimages, &[]).unwrap();
        root.0
    }

    #[test]
    fn pruning_keeps_the_window_readable_the_roots_unchanged_and_the_rows_bounded() {
        let (all_dir, pruned_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let all = Store::open(all_dir.path()).unwrap();
        let keep = NonZeroU64::new(4).unwrap();
        let pruned = Store::open_with(pruned_dir.path(), History::Last(keep)).unwrap();
        let mut rows_at_50 = 0;
        for v in 0..200 {
            assert_eq!(
                commit_version(&all, v),
                commit_version(&pruned, v),
                "root of {v}"
            );
            if v == 50 {
                rows_at_50 = rows(&pruned, CF_NODES) + rows(&pruned, CF_VALUES);
            }
        }
        // Without pruning the rows grow with every version; with it they
        // stay where they were 150 versions earlier.
        let kept = rows(&pruned, CF_NODES) + rows(&pruned, CF_VALUES);
        let everything = rows(&all, CF_NODES) + rows(&all, CF_VALUES);
        assert!(kept <= rows_at_50 + 10, "{kept} rows, {rows_at_50} at 50");
        assert!(everything > 4 * kept, "{everything} rows against {kept}");

        // Every version in the window reads and proves exactly what the
        // unpruned store does.
        assert_eq!(pruned.oldest_readable(), 196);
        for v in 196..200 {
            for key in ["k0", "k3", "k5", "k9", "k199", "k193", "k150"] {
                let expected = all.get(key.as_bytes(), v).unwrap();
                assert_eq!(
                    pruned.get(key.as_bytes(), v).unwrap(),
                    expected,
                    "{key}@{v}"
                );
                let (proved, _) = pruned
                    .tree()
                    .get_with_ics23_proof(key.as_bytes().to_vec(), v)
                    .unwrap();
                assert_eq!(proved, expected, "{key}@{v}, proved");
            }
        }
        // Below it, a read is refused, never answered from what is left.
        for v in [0, 100, 195] {
            assert!(matches!(
                pruned.get(b"k0", v),
                Err(StoreError::Pruned { asked, oldest: 196 }) if asked == v
            ));
        }

        // The bound survives a restart, and the next commit prunes on.
        drop(pruned);
        let reopened = Store::open_with(pruned_dir.path(), History::Last(keep)).unwrap();
        assert_eq!(reopened.oldest_readable(), 196);
        assert_eq!(commit_version(&reopened, 200), commit_version(&all, 200));
        assert_eq!(reopened.oldest_readable(), 197);
        assert!(reopened.get(b"k0", 196).is_err());
        assert_eq!(
            reopened.get(b"k3", 200).unwrap(),
            all.get(b"k3", 200).unwrap()
        );
    }
}
