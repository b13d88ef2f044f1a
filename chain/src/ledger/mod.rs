//! The ledger state machine: checks and executes transactions against the
//! authenticated state, block by block. This module holds the block
//! lifecycle (InitChain, CheckTx, FinalizeBlock, Commit, Query) and the
//! checks every rule shares; the rules live in one file per transaction
//! family: `builds` (builders, requests, attestations, imports), `names`
//! (names and releases) and `governance`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use borsh::{BorshDeserialize, BorshSerialize};
use jmt::storage::TreeUpdateBatch;
use jmt::KeyHash;
use sha2::{Digest as _, Sha256};

use crate::beacon::{self, Beacon, BeaconKey};
use crate::crypto::{gov_sign_bytes, tx_sign_bytes, valid_public_key, verify, verify_batch};
use crate::error::TxError;
use crate::state_key;
use crate::store::{key_hash, Committed, History, Store, StoreError};
use crate::trust::{evaluate, select};
use crate::types::*;

mod builders;
mod builds;
mod governance;
mod names;
mod upkeep;
mod verified;

pub use upkeep::VOID_PAGES_PER_BLOCK;
use verified::VerifiedTxs;
pub use verified::{TxHash, VERIFIED_CAPACITY};

/// Largest transaction accepted, in bytes.
pub const MAX_TX_BYTES: usize = 64 * 1024;
/// How far past the signer's last nonce a transaction's nonce may be: gaps
/// let a client pipeline, but a nonce near `u64::MAX` would retire the key.
pub const MAX_NONCE_STEP: u64 = 1 << 20;
/// Stripe sizes and counts an attested output may declare: the store's own
/// limits (`p2p_store::manifest`), so every attested layout is downloadable.
pub const MIN_STRIPE_SIZE: u32 = 4 * 1024;
pub const MAX_STRIPE_SIZE: u32 = 16 * 1024 * 1024;
pub const MAX_STRIPES: u64 = 256 * 1024;
const META_CHAIN_ID: &[u8] = b"chain_id";
const META_BLOCK_TIME: &[u8] = b"block_time";

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the chain is not initialised (no InitChain yet)")]
    NotInitialised,
    #[error("this state belongs to chain {stored:?}, not {requested:?}")]
    OtherChain { stored: String, requested: String },
    #[error("invalid genesis: {0}")]
    Genesis(String),
    #[error("block {got} does not follow the committed height {committed}")]
    OutOfOrder { committed: u64, got: u64 },
    #[error("commit without a finalized block")]
    NothingToCommit,
    #[error("the block's upkeep failed, so the state breaks an invariant")]
    Upkeep(#[source] TxError),
    #[error("proposal refused: {0}")]
    Proposal(String),
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("unknown query path {0:?}; expected package/ECO/NAME/VERSION, package-requests/PAGE/ECO/NAME/VERSION, released/ECO/NAME/VERSION, artifact-requests/PAGE/SHA256, name/ECO/NAME, versions/ECO/NAME, version-list/PAGE/ECO/NAME, request/ID, artifact/SHA256, node/PUBKEY, nonce/PUBKEY, builders/ECO, builder/ECO/SLOT, open/signer/PUBKEY, open/package/ECO/NAME, open/ecosystem/ECO, void/queue, gov/seq, beacon/seed, beacon/keys, beacon/retiring, validators, params or board")]
    UnknownPath(String),
    #[error("height {asked} is not available (latest committed is {latest})")]
    Height { asked: u64, latest: u64 },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

impl From<StoreError> for QueryError {
    fn from(e: StoreError) -> Self {
        QueryError::Ledger(e.into())
    }
}

/// The block being executed, as CometBFT describes it.
#[derive(Clone, Debug)]
pub struct BlockInfo {
    pub height: u64,
    /// Block time, unix seconds (agreed by consensus, so deterministic).
    pub time: u64,
    pub hash: Vec<u8>,
    /// The proposer's validator address.
    pub proposer: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: &'static str,
    pub attributes: Vec<(&'static str, String)>,
}

#[derive(Clone, Debug)]
pub struct TxResult {
    pub code: u32,
    pub log: String,
    pub events: Vec<Event>,
}

impl TxResult {
    fn failed(e: &TxError) -> TxResult {
        TxResult {
            code: e.code(),
            log: e.to_string(),
            events: Vec::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct BlockResult {
    pub app_hash: [u8; 32],
    pub txs: Vec<TxResult>,
    /// Events of the block's upkeep (rounds ended, builders replaced).
    pub events: Vec<Event>,
    /// What the block changed in the validator set, by key, for CometBFT
    /// (power 0 removes); empty for most blocks.
    pub validator_updates: Vec<ValidatorUpdate>,
}

#[derive(Clone, Debug)]
pub struct QueryAnswer {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
    pub height: u64,
    pub proof: Option<ics23::CommitmentProof>,
}

struct Pending {
    committed: Committed,
    batch: TreeUpdateBatch,
    preimages: Vec<(KeyHash, Vec<u8>)>,
    time: u64,
}

type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

pub struct Ledger {
    store: Arc<Store>,
    chain_id: Option<String>,
    committed: Option<Committed>,
    /// What [`LedgerReader`]s see: updated only once a version is durable.
    published: Arc<Mutex<Option<Committed>>>,
    last_block_time: u64,
    pending: Option<Pending>,
    /// Nonces CheckTx admitted since the last commit, by signer. Cleared at
    /// each commit, when CometBFT rechecks what its mempool still holds.
    mempool_nonces: BTreeMap<PublicKey, BTreeSet<u64>>,
    /// Transactions whose signature CheckTx verified, so that FinalizeBlock
    /// need not verify them again (see the `verified` module for why this
    /// cannot change a block's result).
    verified: VerifiedTxs,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("chain_id", &self.chain_id)
            .field("committed", &self.committed)
            .finish_non_exhaustive()
    }
}

impl Ledger {
    pub fn open(path: &Path) -> Result<Ledger, LedgerError> {
        Self::open_with(path, History::All)
    }

    /// Opens the ledger keeping `history` versions of the state readable
    /// (queries and proofs at older heights are refused).
    pub fn open_with(path: &Path, history: History) -> Result<Ledger, LedgerError> {
        let store = Arc::new(Store::open_with(path, history)?);
        let committed = store.committed()?;
        let chain_id = store
            .meta(META_CHAIN_ID)?
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let last_block_time = store
            .meta(META_BLOCK_TIME)?
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        Ok(Ledger {
            store,
            chain_id,
            published: Arc::new(Mutex::new(committed.clone())),
            committed,
            last_block_time,
            pending: None,
            mempool_nonces: BTreeMap::new(),
            verified: VerifiedTxs::new(VERIFIED_CAPACITY),
        })
    }

    /// Sets how many verified transactions the ledger remembers between
    /// CheckTx and FinalizeBlock (0 remembers none). For tests and
    /// benchmarks; forgets what it remembered.
    #[doc(hidden)]
    pub fn set_verified_capacity(&mut self, capacity: usize) {
        self.verified = VerifiedTxs::new(capacity);
    }

    /// Last committed height and app hash; `(0, [])`-like before InitChain.
    pub fn info(&self) -> Option<&Committed> {
        self.committed.as_ref()
    }

    pub fn chain_id(&self) -> Option<&str> {
        self.chain_id.as_deref()
    }

    /// [`Ledger::init_chain_with_validators`] without a validator set in
    /// state: the chain cannot change its validators by governance.
    pub fn init_chain(
        &mut self,
        chain_id: &str,
        genesis: &GenesisState,
        initial_height: u64,
    ) -> Result<[u8; 32], LedgerError> {
        self.init_chain_with_validators(chain_id, genesis, initial_height, &[])
    }

    /// Writes the genesis state as version 0, with the validator set
    /// CometBFT's InitChain gives (ed25519 key, power). Idempotent for the
    /// same chain, because CometBFT repeats InitChain until block 1 is
    /// committed. With validators, every validator must have a beacon key
    /// and every beacon key must be a validator's, or the chain has none.
    pub fn init_chain_with_validators(
        &mut self,
        chain_id: &str,
        genesis: &GenesisState,
        initial_height: u64,
        validators: &[(PublicKey, u64)],
    ) -> Result<[u8; 32], LedgerError> {
        if let (Some(stored), Some(c)) = (&self.chain_id, &self.committed) {
            if stored != chain_id {
                return Err(LedgerError::OtherChain {
                    stored: stored.clone(),
                    requested: chain_id.to_owned(),
                });
            }
            return Ok(c.app_hash);
        }
        if initial_height > 1 {
            return Err(LedgerError::Genesis(format!(
                "initial_height {initial_height} is not supported; use 1"
            )));
        }
        governance::validate_params(&genesis.params)
            .map_err(|e| LedgerError::Genesis(e.to_string()))?;
        let board = &genesis.board;
        if board.threshold == 0 || usize::from(board.threshold) > board.keys.len() {
            return Err(LedgerError::Genesis(format!(
                "board threshold {} with {} keys",
                board.threshold,
                board.keys.len()
            )));
        }
        let mut writes = Writes::new();
        let mut put = |key: String, value: Vec<u8>| writes.insert(key.into_bytes(), Some(value));
        put(state_key::PARAMS.into(), encode(&genesis.params));
        put(state_key::BOARD.into(), encode(board));
        put(state_key::GOV_SEQ.into(), encode(&0u64));
        let mut beacon_keys = BeaconKeys::default();
        for k in &genesis.beacon_keys {
            let bad = |what: &str| LedgerError::Genesis(format!("beacon key {k:?}: {what}"));
            let address = hex::decode(&k.validator).map_err(|_| bad("validator is not hex"))?;
            let mut public = [0u8; 32];
            hex::decode_to_slice(&k.vrf_public, &mut public)
                .map_err(|_| bad("vrf_public is not 32 bytes of hex"))?;
            beacon_keys.keys.push((address, public));
        }
        beacon_keys.keys.sort();
        if beacon_keys.keys.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(LedgerError::Genesis(
                "two beacon keys for one validator".into(),
            ));
        }
        if !validators.is_empty() {
            let set = genesis_validators(validators, &beacon_keys)?;
            put(state_key::VALIDATORS.into(), encode(&set));
        }
        put(state_key::BEACON_KEYS.into(), encode(&beacon_keys));
        put(
            state_key::BEACON_SEED.into(),
            encode(&Digest::of(&encode(&("pyrsia-beacon-genesis", chain_id)))),
        );
        for b in &genesis.builders {
            if genesis.trusted_nodes.iter().any(|t| t.node == *b) {
                return Err(LedgerError::Genesis(format!(
                    "{b} is both a trusted node and a builder"
                )));
            }
            let record = NodeRecord {
                admission: Some(Admission {
                    sponsor: Sponsor::Board,
                    height: 0,
                }),
                ..NodeRecord::default()
            };
            put(state_key::node(*b), encode(&record));
        }
        for t in &genesis.trusted_nodes {
            let record = NodeRecord {
                certification: Some(Certification {
                    valid_until: t.valid_until,
                    certified_height: 0,
                }),
                ..NodeRecord::default()
            };
            put(state_key::node(t.node), encode(&record));
        }
        let genesis = self.hash_version(writes, 0, 0)?;
        self.store.commit(
            &genesis.committed,
            &genesis.batch,
            &genesis.preimages,
            &[(META_CHAIN_ID, chain_id.as_bytes().to_vec())],
        )?;
        self.chain_id = Some(chain_id.to_owned());
        let app_hash = genesis.committed.app_hash;
        self.publish(genesis.committed);
        Ok(app_hash)
    }

    /// Hashes `writes` into version `version` of the tree, in memory.
    fn hash_version(
        &self,
        writes: Writes,
        version: u64,
        time: u64,
    ) -> Result<Pending, LedgerError> {
        let preimages: Vec<_> = writes.keys().map(|k| (key_hash(k), k.clone())).collect();
        let (root, batch) = self
            .store
            .tree()
            .put_value_set(writes.into_iter().map(|(k, v)| (key_hash(&k), v)), version)
            .map_err(StoreError::from)?;
        Ok(Pending {
            committed: Committed {
                height: version,
                app_hash: root.0,
            },
            batch,
            preimages,
            time,
        })
    }

    /// Decodes and checks the size and chain id; not the signature.
    fn decode(&self, bytes: &[u8]) -> Result<SignedTx, TxError> {
        if bytes.len() > MAX_TX_BYTES {
            return Err(TxError::TooLarge {
                size: bytes.len(),
                limit: MAX_TX_BYTES,
            });
        }
        let tx = SignedTx::try_from_slice(bytes).map_err(|e| TxError::Decode(e.to_string()))?;
        let expected = self.chain_id.as_deref().unwrap_or_default();
        if tx.chain_id != expected {
            return Err(TxError::WrongChain {
                expected: expected.to_owned(),
                got: tx.chain_id,
            });
        }
        Ok(tx)
    }

    /// Mempool admission: every check execution would make, against the last
    /// committed state, without writing it. A `recheck` (CometBFT
    /// re-validating its mempool after a block) skips the signature: the bytes
    /// were verified when they entered, and only the state has changed.
    ///
    /// A new transaction's nonce must also extend what this mempool holds for
    /// its signer: at most one past the highest nonce admitted since the last
    /// commit, and not one already admitted. So nobody can park transactions
    /// that can never be proposed (a gap) in the mempool, while a nonce whose
    /// transaction CometBFT dropped after admitting it can be sent again.
    pub fn check_tx(&mut self, bytes: &[u8], recheck: bool) -> TxResult {
        let not_initialised =
            || TxResult::failed(&TxError::Store(StoreError::Tree("not initialised".into())));
        if self.committed.is_none() {
            return not_initialised();
        }
        let decoded = self.decode(bytes).and_then(|tx| {
            if recheck {
                Ok(tx)
            } else {
                self.verify_remembered(bytes, tx)
            }
        });
        let Some(committed) = &self.committed else {
            return not_initialised();
        };
        let outcome = decoded.and_then(|tx| {
            let admitted = self.mempool_nonces.get(&tx.signer);
            if !recheck {
                let last: u64 = self
                    .store
                    .get_decoded(state_key::nonce(tx.signer).as_bytes(), committed.height)?
                    .unwrap_or(0);
                let highest = admitted
                    .and_then(|a| a.last())
                    .map_or(last, |h| last.max(*h));
                let nonce = tx.body.nonce;
                if nonce > last
                    && (admitted.is_some_and(|a| a.contains(&nonce))
                        || nonce > highest.saturating_add(1))
                {
                    return Err(TxError::NonceNotNext {
                        expected: highest.saturating_add(1),
                        got: nonce,
                    });
                }
            }
            let mut block = Writes::new();
            let mut exec = Exec {
                store: &self.store,
                version: committed.height,
                block: &mut block,
                tx: Writes::new(),
                events: Vec::new(),
                height: committed.height + 1,
                time: self.last_block_time,
                chain_id: self.chain_id.as_deref().unwrap_or_default(),
            };
            exec.run(&tx)?;
            Ok(tx)
        });
        match outcome {
            Ok(tx) => {
                self.mempool_nonces
                    .entry(tx.signer)
                    .or_default()
                    .insert(tx.body.nonce);
                TxResult {
                    code: 0,
                    log: String::new(),
                    events: Vec::new(),
                }
            }
            Err(e) => TxResult::failed(&e),
        }
    }

    /// Verifies a decoded transaction's signature, unless these exact bytes
    /// verified before, and remembers a success for FinalizeBlock.
    fn verify_remembered(&mut self, bytes: &[u8], tx: SignedTx) -> Result<SignedTx, TxError> {
        let hash: TxHash = Sha256::digest(bytes).into();
        if self.verified.contains(&hash) {
            return Ok(tx);
        }
        if !verify(
            &tx.signer,
            &tx.signature,
            &tx_sign_bytes(&tx.chain_id, &tx.body),
        ) {
            return Err(TxError::BadSignature(tx.signer.to_string()));
        }
        self.verified.insert(hash);
        Ok(tx)
    }

    /// Verifies, as one batch, the signatures of transactions about to reach
    /// CheckTx, and remembers those that verify, so CheckTx skips them. Each
    /// verdict is the single-signature one ([`verify_batch`]), so this
    /// changes what CheckTx costs, never what it answers. The batch's
    /// coefficients come from the hashes of the whole signed transactions.
    pub fn verify_ahead<T: AsRef<[u8]>>(&mut self, txs: &[T]) {
        let mut seed = Sha256::new();
        let mut pending = Vec::new();
        for bytes in txs {
            let bytes = bytes.as_ref();
            let Ok(tx) = self.decode(bytes) else {
                continue;
            };
            let hash: TxHash = Sha256::digest(bytes).into();
            if self.verified.contains(&hash) {
                continue;
            }
            seed.update(hash);
            let msg = tx_sign_bytes(&tx.chain_id, &tx.body);
            pending.push((hash, tx.signer, tx.signature, msg));
        }
        // One signature gains nothing from a batch; CheckTx verifies it.
        if pending.len() < 2 {
            return;
        }
        let items: Vec<(PublicKey, [u8; 64], &[u8])> = pending
            .iter()
            .map(|(_, key, sig, msg)| (*key, *sig, msg.as_slice()))
            .collect();
        let verdicts = verify_batch(&items, seed.finalize().into());
        for ((hash, ..), verified) in pending.iter().zip(verdicts) {
            if verified {
                self.verified.insert(*hash);
            }
        }
    }

    /// Forgets which nonces CheckTx admitted, as a restart does (CometBFT's
    /// mempool starts empty). For harnesses that run CheckTx on inputs that
    /// must not see each other, such as the fuzz target.
    #[doc(hidden)]
    pub fn forget_admitted_nonces(&mut self) {
        self.mempool_nonces.clear();
    }

    /// Executes a block and computes the new app hash; nothing is written
    /// until [`Ledger::commit`].
    pub fn finalize_block<T: AsRef<[u8]>>(
        &mut self,
        block: &BlockInfo,
        txs: &[T],
    ) -> Result<BlockResult, LedgerError> {
        let committed = self.committed.as_ref().ok_or(LedgerError::NotInitialised)?;
        if block.height != committed.height + 1 {
            return Err(LedgerError::OutOfOrder {
                committed: committed.height,
                got: block.height,
            });
        }
        let version = committed.height;
        let chain_id = self.chain_id.clone().unwrap_or_default();
        let mut writes = Writes::new();
        let beacon_result = self.apply_beacon(block, txs, &mut writes)?;
        let txs = if beacon_result.is_some() {
            &txs[1..]
        } else {
            txs
        };
        let decoded: Vec<Result<SignedTx, TxError>> =
            txs.iter().map(|b| self.decode(b.as_ref())).collect();
        let hashes: Vec<TxHash> = txs
            .iter()
            .map(|tx| Sha256::digest(tx.as_ref()).into())
            .collect();
        // A transaction whose exact bytes this node's CheckTx verified is not
        // verified again; every other one is, in one batch.
        let remembered: Vec<bool> = decoded
            .iter()
            .zip(&hashes)
            .map(|(d, hash)| d.is_ok() && self.verified.take(hash))
            .collect();
        let sign_bytes: Vec<Option<Vec<u8>>> = decoded
            .iter()
            .zip(&remembered)
            .map(|(d, known)| match d {
                Ok(tx) if !known => Some(tx_sign_bytes(&tx.chain_id, &tx.body)),
                _ => None,
            })
            .collect();
        // The batch's coefficients come from the whole block, whatever this
        // node remembered; each verdict is the single-signature verdict
        // (ZIP-215 batch and single checks agree, and a failed batch falls
        // back to one by one).
        let mut seed = Sha256::new();
        seed.update(&block.hash);
        for hash in &hashes {
            seed.update(hash);
        }
        let items: Vec<(PublicKey, [u8; 64], &[u8])> = decoded
            .iter()
            .zip(&sign_bytes)
            .filter_map(|(d, m)| match (d, m) {
                (Ok(tx), Some(m)) => Some((tx.signer, tx.signature, m.as_slice())),
                _ => None,
            })
            .collect();
        let mut verdicts = verify_batch(&items, seed.finalize().into()).into_iter();

        let mut upkeep = Exec::new(&self.store, version, &mut writes, block, &chain_id);
        upkeep.retire_beacon_keys().map_err(LedgerError::Upkeep)?;
        upkeep.upkeep().map_err(LedgerError::Upkeep)?;
        let upkeep_writes = std::mem::take(&mut upkeep.tx);
        let upkeep_events = std::mem::take(&mut upkeep.events);
        writes.extend(upkeep_writes);
        let mut results = Vec::with_capacity(txs.len() + 1);
        results.extend(beacon_result);
        for (d, known) in decoded.into_iter().zip(remembered) {
            let outcome = match d {
                Err(e) => Err(e),
                Ok(tx) => {
                    if known || verdicts.next().unwrap_or(false) {
                        let mut exec =
                            Exec::new(&self.store, version, &mut writes, block, &chain_id);
                        exec.run(&tx)
                    } else {
                        Err(TxError::BadSignature(tx.signer.to_string()))
                    }
                }
            };
            results.push(match outcome {
                Ok(events) => TxResult {
                    code: 0,
                    log: String::new(),
                    events,
                },
                Err(TxError::Store(e)) => return Err(e.into()),
                Err(e) => TxResult::failed(&e),
            });
        }

        let validator_updates = self.validator_updates(version, &writes)?;
        let pending = self.hash_version(writes, block.height, block.time)?;
        let app_hash = pending.committed.app_hash;
        self.pending = Some(pending);
        Ok(BlockResult {
            app_hash,
            txs: results,
            events: upkeep_events,
            validator_updates,
        })
    }

    /// The difference between the validator set at `version` and the one
    /// `writes` leave: one update per changed key, in key order, so several
    /// actions on one validator in a block reach CometBFT as one update.
    fn validator_updates(
        &self,
        version: u64,
        writes: &Writes,
    ) -> Result<Vec<ValidatorUpdate>, LedgerError> {
        let Some(Some(bytes)) = writes.get(state_key::VALIDATORS.as_bytes()) else {
            return Ok(Vec::new());
        };
        let after = Validators::try_from_slice(bytes).map_err(|e| StoreError::Corrupt {
            what: state_key::VALIDATORS.into(),
            reason: e.to_string(),
        })?;
        let before: Validators = self
            .store
            .get_decoded(state_key::VALIDATORS.as_bytes(), version)?
            .unwrap_or_default();
        let before: BTreeMap<PublicKey, u64> = before.validators.into_iter().collect();
        let after: BTreeMap<PublicKey, u64> = after.validators.into_iter().collect();
        let mut updates = BTreeMap::new();
        for (key, power) in &before {
            if !after.contains_key(key) {
                updates.insert(*key, 0);
            } else if after.get(key) != Some(power) {
                updates.insert(*key, after.get(key).copied().unwrap_or(0));
            }
        }
        for (key, power) in &after {
            if !before.contains_key(key) {
                updates.insert(*key, *power);
            }
        }
        Ok(updates
            .into_iter()
            .map(|(pub_key, power)| ValidatorUpdate { pub_key, power })
            .collect())
    }

    /// Updates the seed from the block's beacon, if the block starts with
    /// one: returns its result, or `None` if the first transaction is not a
    /// beacon. ProcessProposal has refused any block whose beacon is missing
    /// or does not verify, so a beacon that fails here was accepted by more
    /// than 2/3 of the voting power: the seed then stays as it was, the same
    /// on every node.
    fn apply_beacon<T: AsRef<[u8]>>(
        &self,
        block: &BlockInfo,
        txs: &[T],
        writes: &mut Writes,
    ) -> Result<Option<TxResult>, LedgerError> {
        let version = self.info().ok_or(LedgerError::NotInitialised)?.height;
        let keys: BeaconKeys = self
            .store
            .get_decoded(state_key::BEACON_KEYS.as_bytes(), version)?
            .unwrap_or_default();
        let seed: Digest = self
            .store
            .get_decoded(state_key::BEACON_SEED.as_bytes(), version)?
            .unwrap_or_default();
        let first = txs.first().map(AsRef::as_ref);
        let (next, result) = match first.filter(|tx| beacon::is_beacon_tx(tx)) {
            Some(tx) => {
                let checked = self.check_beacon(&keys, &seed, block.height, &block.proposer, tx);
                let result = TxResult {
                    code: 0,
                    log: match &checked {
                        Ok(_) => "beacon".to_owned(),
                        Err(e) => format!("beacon ignored: {e}"),
                    },
                    events: Vec::new(),
                };
                let next = checked
                    .map(|r| beacon::next_seed(&seed, &r))
                    .unwrap_or(seed);
                (next, Some(result))
            }
            // A network without beacon keys: the block hash, which its
            // proposer can grind (see docs/protocol.md).
            None if keys.keys.is_empty() => {
                (beacon::next_seed(&seed, &Digest::of(&block.hash).0), None)
            }
            None => (seed, None),
        };
        writes.insert(
            state_key::BEACON_SEED.as_bytes().to_vec(),
            Some(encode(&next)),
        );
        Ok(result)
    }

    fn check_beacon(
        &self,
        keys: &BeaconKeys,
        seed: &Digest,
        height: u64,
        proposer: &[u8],
        tx: &[u8],
    ) -> Result<[u8; 32], String> {
        let beacon = Beacon::from_tx(tx).ok_or("undecodable beacon")?;
        let public = keys
            .of(proposer)
            .ok_or_else(|| format!("proposer {} has no beacon key", hex::encode(proposer)))?;
        let chain_id = self.chain_id.as_deref().unwrap_or_default();
        beacon::verify(public, chain_id, height, seed, &beacon).map_err(|e| e.to_string())
    }

    /// ProcessProposal: a block for `height` by `proposer` must start with
    /// the proposer's valid beacon when the chain has beacon keys, and no
    /// other transaction may be one.
    pub fn check_proposal<T: AsRef<[u8]>>(
        &self,
        txs: &[T],
        proposer: &[u8],
        height: u64,
    ) -> Result<(), LedgerError> {
        let version = self.info().ok_or(LedgerError::NotInitialised)?.height;
        let refuse = |why: String| Err(LedgerError::Proposal(why));
        if txs.iter().skip(1).any(|t| beacon::is_beacon_tx(t.as_ref())) {
            return refuse("a beacon that is not the first transaction".into());
        }
        let mut next = NextNonces::new(self)?;
        for t in txs.iter().filter(|t| !beacon::is_beacon_tx(t.as_ref())) {
            let tx = match self.decode(t.as_ref()) {
                Ok(tx) => tx,
                Err(e) => return refuse(format!("a transaction that cannot apply: {e}")),
            };
            let expected = next.get(tx.signer)?;
            if tx.body.nonce != expected {
                return refuse(format!(
                    "signer {}'s nonce {} where {expected} is next",
                    tx.signer, tx.body.nonce
                ));
            }
            next.set(tx.signer, expected.saturating_add(1));
        }
        let keys: BeaconKeys = self
            .store
            .get_decoded(state_key::BEACON_KEYS.as_bytes(), version)?
            .unwrap_or_default();
        let first = txs
            .first()
            .map(AsRef::as_ref)
            .filter(|t| beacon::is_beacon_tx(t));
        match (keys.keys.is_empty(), first) {
            (true, None) => Ok(()),
            (true, Some(_)) => refuse("a beacon on a chain without beacon keys".into()),
            (false, None) => refuse("no beacon".into()),
            (false, Some(tx)) => {
                let seed: Digest = self
                    .store
                    .get_decoded(state_key::BEACON_SEED.as_bytes(), version)?
                    .unwrap_or_default();
                self.check_beacon(&keys, &seed, height, proposer, tx)
                    .map(|_| ())
                    .or_else(refuse)
            }
        }
    }

    /// PrepareProposal's selection from the mempool: each signer's
    /// transactions in nonce order, starting right after its last committed
    /// nonce and stopping at the first gap. Gossip can deliver a signer's
    /// `n + 1` before `n`, and a full mempool can drop `n` after CheckTx
    /// accepted it; proposing `n + 1` then would make `n` stale for ever. A
    /// transaction held back stays in the mempool for a later block. Beacons,
    /// and what does not decode for this chain (CheckTx refuses it, so only a
    /// faulty mempool holds it), are left out.
    pub fn order_proposal<T: AsRef<[u8]>>(&self, txs: Vec<T>) -> Result<Vec<T>, LedgerError> {
        let mut next = NextNonces::new(self)?;
        let mut waiting: BTreeMap<PublicKey, BTreeMap<u64, T>> = BTreeMap::new();
        let mut ordered = Vec::with_capacity(txs.len());
        for bytes in txs {
            let Ok(tx) = self.decode(bytes.as_ref()) else {
                continue;
            };
            let expected = next.get(tx.signer)?;
            if tx.body.nonce < expected {
                continue;
            }
            if tx.body.nonce > expected {
                let held = waiting.entry(tx.signer).or_default();
                held.entry(tx.body.nonce).or_insert(bytes);
                continue;
            }
            ordered.push(bytes);
            let mut expected = expected.saturating_add(1);
            if let Some(held) = waiting.get_mut(&tx.signer) {
                while let Some(bytes) = held.remove(&expected) {
                    ordered.push(bytes);
                    expected = expected.saturating_add(1);
                }
            }
            next.set(tx.signer, expected);
        }
        Ok(ordered)
    }

    /// PrepareProposal: this validator's beacon transaction for `height`,
    /// or `None` if the chain has no beacon keys.
    pub fn beacon_tx(&self, key: &BeaconKey, height: u64) -> Result<Option<Vec<u8>>, LedgerError> {
        let version = self.info().ok_or(LedgerError::NotInitialised)?.height;
        let keys: BeaconKeys = self
            .store
            .get_decoded(state_key::BEACON_KEYS.as_bytes(), version)?
            .unwrap_or_default();
        if keys.keys.is_empty() {
            return Ok(None);
        }
        let seed: Digest = self
            .store
            .get_decoded(state_key::BEACON_SEED.as_bytes(), version)?
            .unwrap_or_default();
        let chain_id = self.chain_id.as_deref().unwrap_or_default();
        Ok(Some(key.beacon(chain_id, height, &seed).to_tx()))
    }

    /// Persists the finalized block atomically; returns the committed height.
    pub fn commit(&mut self) -> Result<u64, LedgerError> {
        let p = self.pending.take().ok_or(LedgerError::NothingToCommit)?;
        self.store.commit(
            &p.committed,
            &p.batch,
            &p.preimages,
            &[(META_BLOCK_TIME, p.time.to_be_bytes().to_vec())],
        )?;
        let height = p.committed.height;
        self.publish(p.committed);
        self.last_block_time = p.time;
        self.mempool_nonces.clear();
        Ok(height)
    }

    fn publish(&mut self, committed: Committed) {
        *self
            .published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(committed.clone());
        self.committed = Some(committed);
    }

    /// A read-only handle on the committed state, for queries.
    pub fn reader(&self) -> LedgerReader {
        LedgerReader {
            store: Arc::clone(&self.store),
            committed: Arc::clone(&self.published),
        }
    }

    /// Reads a state key at `height` (0 = latest committed), with an ICS23
    /// proof against that height's app hash if `prove`.
    pub fn query(&self, path: &str, height: u64, prove: bool) -> Result<QueryAnswer, QueryError> {
        self.reader().query(path, height, prove)
    }
}

/// Each signer's next nonce after the last committed state, read once per
/// signer and advanced as a proposal is assembled or checked.
struct NextNonces<'a> {
    ledger: &'a Ledger,
    version: u64,
    next: BTreeMap<PublicKey, u64>,
}

impl<'a> NextNonces<'a> {
    fn new(ledger: &'a Ledger) -> Result<Self, LedgerError> {
        Ok(NextNonces {
            ledger,
            version: ledger.info().ok_or(LedgerError::NotInitialised)?.height,
            next: BTreeMap::new(),
        })
    }

    fn get(&mut self, signer: PublicKey) -> Result<u64, LedgerError> {
        if let Some(n) = self.next.get(&signer) {
            return Ok(*n);
        }
        let last: u64 = self
            .ledger
            .store
            .get_decoded(state_key::nonce(signer).as_bytes(), self.version)?
            .unwrap_or(0);
        let next = last.saturating_add(1);
        self.next.insert(signer, next);
        Ok(next)
    }

    fn set(&mut self, signer: PublicKey, next: u64) {
        self.next.insert(signer, next);
    }
}

/// A cloneable, read-only handle on the committed versions of the state.
/// Versions are immutable once committed, so a query through it never waits
/// for (nor delays) the block being executed; it sees the state up to the
/// last commit.
#[derive(Clone)]
pub struct LedgerReader {
    store: Arc<Store>,
    committed: Arc<Mutex<Option<Committed>>>,
}

impl std::fmt::Debug for LedgerReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerReader")
            .field("committed", &self.info())
            .finish_non_exhaustive()
    }
}

impl LedgerReader {
    /// The last committed height and app hash.
    pub fn info(&self) -> Option<Committed> {
        self.committed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads a state key at `height` (0 = latest committed), with an ICS23
    /// proof against that height's app hash if `prove`.
    pub fn query(&self, path: &str, height: u64, prove: bool) -> Result<QueryAnswer, QueryError> {
        let latest = self.info().ok_or(LedgerError::NotInitialised)?.height;
        let key = normalise_query_path(path)?;
        let height = if height == 0 { latest } else { height };
        if height > latest {
            return Err(QueryError::Height {
                asked: height,
                latest,
            });
        }
        let (value, proof) = if prove {
            self.store.check_readable(height)?;
            let proved = self
                .store
                .tree()
                .get_with_ics23_proof(key.clone().into_bytes(), height);
            self.store.check_readable(height)?;
            let (value, proof) = proved.map_err(StoreError::from)?;
            (value, Some(proof))
        } else {
            (self.store.get(key.as_bytes(), height)?, None)
        };
        Ok(QueryAnswer {
            key: key.into_bytes(),
            value,
            height,
            proof,
        })
    }
}

/// The genesis validator set, checked against the same bounds governance
/// keeps, and against the beacon keys.
fn genesis_validators(
    validators: &[(PublicKey, u64)],
    beacon_keys: &BeaconKeys,
) -> Result<Validators, LedgerError> {
    let bad = |what: String| Err(LedgerError::Genesis(what));
    if validators.len() > MAX_VALIDATORS {
        return bad(format!(
            "{} validators, more than {MAX_VALIDATORS}",
            validators.len()
        ));
    }
    let mut set = Validators::default();
    for (key, power) in validators {
        if *power == 0 || *power > MAX_VALIDATOR_POWER {
            return bad(format!(
                "validator {key} has power {power}, not 1..={MAX_VALIDATOR_POWER}"
            ));
        }
        if !valid_public_key(key) {
            return bad(format!("validator {key} is not an ed25519 key"));
        }
        if set.power_of(key).is_some() {
            return bad(format!("validator {key} is listed twice"));
        }
        if !beacon_keys.keys.is_empty() && beacon_keys.of(&validator_address(key)).is_none() {
            return bad(format!("validator {key} has no beacon key"));
        }
        set.set(*key, *power);
    }
    let addresses: BTreeSet<Vec<u8>> = set
        .validators
        .iter()
        .map(|(k, _)| validator_address(k))
        .collect();
    if let Some((address, _)) = beacon_keys
        .keys
        .iter()
        .find(|(a, _)| !addresses.contains(a))
    {
        return bad(format!(
            "beacon key for {}, which is not a validator",
            hex::encode_upper(address)
        ));
    }
    Ok(set)
}

/// `{ecosystem}/{name}/{version}`, where the name may hold `/`.
fn package_path(rest: &str) -> Option<PackageId> {
    let (ecosystem, name_version) = rest.split_once('/')?;
    let (name, version) = name_version.rsplit_once('/')?;
    if ecosystem.is_empty() || name.is_empty() || version.is_empty() {
        return None;
    }
    Some(PackageId {
        ecosystem: ecosystem.to_owned(),
        name: name.to_owned(),
        version: version.to_owned(),
    })
}

/// Maps a query path to its state key, refusing anything else.
pub fn normalise_query_path(path: &str) -> Result<String, QueryError> {
    let path = path.trim_start_matches('/');
    let unknown = || QueryError::UnknownPath(path.to_owned());
    let (prefix, rest) = path.split_once('/').unwrap_or((path, ""));
    let digest = || rest.parse::<Digest>().map_err(|_| unknown());
    let key = || rest.parse::<PublicKey>().map_err(|_| unknown());
    match prefix {
        "params" if rest.is_empty() => Ok(state_key::PARAMS.to_owned()),
        "board" if rest.is_empty() => Ok(state_key::BOARD.to_owned()),
        "gov" if rest == "seq" => Ok(state_key::GOV_SEQ.to_owned()),
        "void" if rest == "queue" => Ok(state_key::VOID_QUEUE.to_owned()),
        "beacon" if rest == "seed" => Ok(state_key::BEACON_SEED.to_owned()),
        "beacon" if rest == "keys" => Ok(state_key::BEACON_KEYS.to_owned()),
        "beacon" if rest == "retiring" => Ok(state_key::BEACON_RETIRING.to_owned()),
        "validators" if rest.is_empty() => Ok(state_key::VALIDATORS.to_owned()),
        "open" => match rest.split_once('/').ok_or_else(unknown)? {
            ("signer", k) => Ok(state_key::open_by_signer(k.parse().map_err(|_| unknown())?)),
            ("ecosystem", eco) if !eco.is_empty() && !eco.contains('/') => {
                Ok(state_key::open_by_ecosystem(eco))
            }
            ("package", eco_name) => {
                let (eco, name) = eco_name.split_once('/').ok_or_else(unknown)?;
                if eco.is_empty() || name.is_empty() {
                    return Err(unknown());
                }
                Ok(state_key::open_by_package(eco, name))
            }
            _ => Err(unknown()),
        },
        "request" => Ok(state_key::request(digest()?)),
        "artifact" => Ok(state_key::artifact(digest()?)),
        "node" => Ok(state_key::node(key()?)),
        "builders" if !rest.is_empty() && !rest.contains('/') => Ok(state_key::builders(rest)),
        "builder" => {
            let (ecosystem, slot) = rest.split_once('/').ok_or_else(unknown)?;
            let slot: u32 = slot.parse().map_err(|_| unknown())?;
            Ok(state_key::builder_slot(ecosystem, slot))
        }
        "nonce" => Ok(state_key::nonce(key()?)),
        "package" | "released" => {
            let p = package_path(rest).ok_or_else(unknown)?;
            Ok(if prefix == "package" {
                state_key::package(&p)
            } else {
                state_key::released(&p)
            })
        }
        "package-requests" => {
            let (page, rest) = rest.split_once('/').ok_or_else(unknown)?;
            let page: u64 = page.parse().map_err(|_| unknown())?;
            let p = package_path(rest).ok_or_else(unknown)?;
            Ok(state_key::package_requests(&p, page))
        }
        "artifact-requests" => {
            let (page, sha) = rest.split_once('/').ok_or_else(unknown)?;
            let page: u64 = page.parse().map_err(|_| unknown())?;
            let sha: Digest = sha.parse().map_err(|_| unknown())?;
            Ok(state_key::artifact_requests(sha, page))
        }
        "version-list" => {
            let (page, rest) = rest.split_once('/').ok_or_else(unknown)?;
            let page: u64 = page.parse().map_err(|_| unknown())?;
            let (ecosystem, name) = rest.split_once('/').ok_or_else(unknown)?;
            if ecosystem.is_empty() || name.is_empty() {
                return Err(unknown());
            }
            Ok(state_key::version_list(ecosystem, name, page))
        }
        "name" | "versions" => {
            let (ecosystem, name) = rest.split_once('/').ok_or_else(unknown)?;
            if ecosystem.is_empty() || name.is_empty() {
                return Err(unknown());
            }
            Ok(if prefix == "name" {
                state_key::name(ecosystem, name)
            } else {
                state_key::versions(ecosystem, name)
            })
        }
        _ => Err(unknown()),
    }
}

/// Executes one transaction: reads see committed state, then this block's
/// earlier writes, then this transaction's own writes.
struct Exec<'a> {
    store: &'a Store,
    version: u64,
    block: &'a mut Writes,
    tx: Writes,
    events: Vec<Event>,
    height: u64,
    time: u64,
    chain_id: &'a str,
}

impl<'a> Exec<'a> {
    /// Executes against `version` plus this block's earlier `writes`.
    fn new(
        store: &'a Store,
        version: u64,
        writes: &'a mut Writes,
        block: &BlockInfo,
        chain_id: &'a str,
    ) -> Exec<'a> {
        Exec {
            store,
            version,
            block: writes,
            tx: Writes::new(),
            events: Vec::new(),
            height: block.height,
            time: block.time,
            chain_id,
        }
    }

    fn get<T: BorshDeserialize>(&self, key: &str) -> Result<Option<T>, TxError> {
        let k = key.as_bytes();
        let raw = match self.tx.get(k).or_else(|| self.block.get(k)) {
            Some(v) => v.clone(),
            None => self.store.get(k, self.version)?,
        };
        raw.map(|bytes| {
            T::try_from_slice(&bytes).map_err(|e| {
                TxError::Store(StoreError::Corrupt {
                    what: key.to_owned(),
                    reason: e.to_string(),
                })
            })
        })
        .transpose()
    }

    fn put<T: BorshSerialize>(&mut self, key: String, value: &T) {
        self.tx.insert(key.into_bytes(), Some(encode(value)));
    }

    fn delete(&mut self, key: String) {
        self.tx.insert(key.into_bytes(), None);
    }

    fn emit(&mut self, kind: &'static str, attributes: Vec<(&'static str, String)>) {
        self.events.push(Event { kind, attributes });
    }

    /// Refuses `signer` unless it is a certified trusted node at block time.
    fn require_trusted_node(&self, signer: PublicKey) -> Result<(), TxError> {
        let node: Option<NodeRecord> = self.get(&state_key::node(signer))?;
        if node.is_some_and(|n| n.is_certified_at(self.time)) {
            Ok(())
        } else {
            Err(TxError::NotTrustedNode(signer.to_string()))
        }
    }

    fn params(&self) -> Result<Params, TxError> {
        self.get(state_key::PARAMS)?.ok_or_else(|| {
            TxError::Store(StoreError::Corrupt {
                what: state_key::PARAMS.to_owned(),
                reason: "missing (genesis writes it)".into(),
            })
        })
    }

    /// Consumes the nonce (even if the rules then reject the transaction, so
    /// that a rejected transaction can never be replayed), then applies the
    /// rules; their writes land only if they all pass.
    fn run(&mut self, tx: &SignedTx) -> Result<Vec<Event>, TxError> {
        let nonce_key = state_key::nonce(tx.signer);
        let last: u64 = self.get(&nonce_key)?.unwrap_or(0);
        if tx.body.nonce <= last {
            return Err(TxError::StaleNonce {
                last,
                got: tx.body.nonce,
            });
        }
        if tx.body.nonce - last > MAX_NONCE_STEP {
            return Err(TxError::InvalidField(format!(
                "nonce {} jumps more than {MAX_NONCE_STEP} past the last one, {last}",
                tx.body.nonce
            )));
        }
        self.block
            .insert(nonce_key.into_bytes(), Some(encode(&tx.body.nonce)));
        let outcome = match &tx.body.kind {
            TxKind::RegisterBuilder(r) => self.register_builder(tx.signer, r),
            TxKind::RequestBuild(r) => self.request_build(tx.signer, r),
            TxKind::Attest(a) => self.attest(tx.signer, a),
            TxKind::TrustedImport(i) => self.trusted_import(tx.signer, i),
            TxKind::Governance(g) => self.governance(g),
            TxKind::BindName(b) => self.bind_name_by_trusted_node(tx.signer, b),
            TxKind::AdmitBuilder(a) => {
                self.require_trusted_node(tx.signer)?;
                self.admit_builder(a.builder, Sponsor::TrustedNode(tx.signer))
            }
            TxKind::ReportFailure(f) => self.report_failure(tx.signer, f),
        };
        outcome?;
        let writes = std::mem::take(&mut self.tx);
        self.block.extend(writes);
        Ok(std::mem::take(&mut self.events))
    }

    fn text(&self, field: &str, value: &str, max: u32) -> Result<(), TxError> {
        if value.is_empty() || value.len() > max as usize || value.chars().any(char::is_control) {
            return Err(TxError::InvalidField(format!(
                "{field} must be 1..={max} bytes without control characters"
            )));
        }
        Ok(())
    }

    fn ecosystem(&self, eco: &str) -> Result<(), TxError> {
        if eco.is_empty()
            || eco.len() > 32
            || !eco
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(TxError::InvalidField(format!(
                "ecosystem {eco:?} must be 1..=32 of [a-z0-9_-]"
            )));
        }
        Ok(())
    }

    fn package(&self, p: &PackageId, max: u32) -> Result<(), TxError> {
        self.ecosystem(&p.ecosystem)?;
        self.text("package.name", &p.name, max)?;
        self.text("package.version", &p.version, max)?;
        if p.version.contains('/') || p.name.starts_with('/') || p.name.ends_with('/') {
            return Err(TxError::InvalidField(
                "package.version may not contain '/', nor package.name start or end with it".into(),
            ));
        }
        Ok(())
    }

    fn outputs(&self, outputs: &[Output], params: &Params) -> Result<(), TxError> {
        if outputs.is_empty() || outputs.len() > usize::from(params.max_outputs) {
            return Err(TxError::InvalidField(format!(
                "outputs must number 1..={}",
                params.max_outputs
            )));
        }
        let mut names = std::collections::BTreeSet::new();
        for o in outputs {
            self.text("output.name", &o.name, params.max_field_len)?;
            if !names.insert(o.name.as_str()) {
                return Err(TxError::InvalidField(format!(
                    "duplicate output {:?}",
                    o.name
                )));
            }
            if !(MIN_STRIPE_SIZE..=MAX_STRIPE_SIZE).contains(&o.stripe_size) {
                return Err(TxError::InvalidField(format!(
                    "output.stripe_size {} outside [{MIN_STRIPE_SIZE}, {MAX_STRIPE_SIZE}]",
                    o.stripe_size
                )));
            }
            if o.size.div_ceil(u64::from(o.stripe_size)) > MAX_STRIPES {
                return Err(TxError::InvalidField(format!(
                    "output of {} bytes in stripes of {} exceeds {MAX_STRIPES} stripes",
                    o.size, o.stripe_size
                )));
            }
        }
        Ok(())
    }
}
