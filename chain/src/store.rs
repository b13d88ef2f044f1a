//! The authenticated state: a Jellyfish Merkle tree whose nodes and versioned
//! values live in RocksDB. Version = block height (genesis state is version 0).
//!
//! A block's changes are hashed into a new root in memory (FinalizeBlock) and
//! written in one atomic RocksDB batch together with the committed height and
//! app hash (Commit), so a crash can never leave state and height out of step.

use std::path::Path;

use borsh::BorshDeserialize;
use jmt::storage::{LeafNode, Node, NodeKey, TreeReader, TreeUpdateBatch};
use jmt::{KeyHash, OwnedValue, Sha256Jmt, Version};
use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, DB};

const CF_NODES: &str = "jmt_nodes";
const CF_VALUES: &str = "jmt_values";
const CF_PREIMAGES: &str = "jmt_preimages";
const CF_META: &str = "meta";

const META_HEIGHT: &[u8] = b"height";
const META_APP_HASH: &[u8] = b"app_hash";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("state tree: {0}")]
    Tree(String),
    #[error("corrupt state record {what}: {reason}")]
    Corrupt { what: String, reason: String },
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

#[derive(Debug)]
pub struct Store {
    db: DB,
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
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Memtables of every column family together stay under this: RocksDB's
        // default is 64 MiB per family before a flush, and the soak showed
        // each app's memory climbing by that much (scripts/soak.sh).
        opts.set_db_write_buffer_size(MEMTABLE_BUDGET);
        let cfs = [CF_NODES, CF_VALUES, CF_PREIMAGES, CF_META]
            .into_iter()
            .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        Ok(Store {
            db: DB::open_cf_descriptors(&opts, path, cfs)?,
        })
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
        let mut it = self.db.raw_iterator_cf(self.cf(CF_VALUES)?);
        it.seek_for_prev(value_key(&key_hash, max_version));
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
        self.db.write(wb)?;
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
