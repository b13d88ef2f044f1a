//! The ledger state machine: checks and executes transactions against the
//! authenticated state, block by block.

use std::collections::BTreeMap;
use std::path::Path;

use borsh::{BorshDeserialize, BorshSerialize};
use jmt::storage::TreeUpdateBatch;
use jmt::KeyHash;
use sha2::{Digest as _, Sha256};

use crate::crypto::{gov_sign_bytes, tx_sign_bytes, verify, verify_batch};
use crate::error::TxError;
use crate::state_key;
use crate::store::{key_hash, Committed, Store, StoreError};
use crate::trust::{evaluate, select_builders};
use crate::types::*;

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
/// Request ids per page of a trusted node's attestation index.
const ATTEST_PAGE: u64 = 256;
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
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("unknown query path {0:?}; expected package/ECO/NAME/VERSION, released/ECO/NAME/VERSION, name/ECO/NAME, request/ID, artifact/SHA256, node/PUBKEY, nonce/PUBKEY, gov/seq, params or board")]
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
    store: Store,
    chain_id: Option<String>,
    committed: Option<Committed>,
    last_block_time: u64,
    pending: Option<Pending>,
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
        let store = Store::open(path)?;
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
            committed,
            last_block_time,
            pending: None,
        })
    }

    /// Last committed height and app hash; `(0, [])`-like before InitChain.
    pub fn info(&self) -> Option<&Committed> {
        self.committed.as_ref()
    }

    pub fn chain_id(&self) -> Option<&str> {
        self.chain_id.as_deref()
    }

    /// Writes the genesis state as version 0. Idempotent for the same chain,
    /// because CometBFT repeats InitChain until block 1 is committed.
    pub fn init_chain(
        &mut self,
        chain_id: &str,
        genesis: &GenesisState,
        initial_height: u64,
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
        validate_params(&genesis.params).map_err(|e| LedgerError::Genesis(e.to_string()))?;
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
        self.committed = Some(genesis.committed);
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

    /// Decodes, checks the chain id, size and (if `check_signature`) the signature.
    fn decode(&self, bytes: &[u8], check_signature: bool) -> Result<SignedTx, TxError> {
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
        if check_signature
            && !verify(
                &tx.signer,
                &tx.signature,
                &tx_sign_bytes(&tx.chain_id, &tx.body),
            )
        {
            return Err(TxError::BadSignature(tx.signer.to_string()));
        }
        Ok(tx)
    }

    /// Mempool admission: every check execution would make, against the last
    /// committed state, without writing anything. A `recheck` (CometBFT
    /// re-validating its mempool after a block) skips the signature: the bytes
    /// were verified when they entered, and only the state has changed.
    pub fn check_tx(&self, bytes: &[u8], recheck: bool) -> TxResult {
        let Some(committed) = &self.committed else {
            return TxResult::failed(&TxError::Store(StoreError::Tree("not initialised".into())));
        };
        let outcome = self.decode(bytes, !recheck).and_then(|tx| {
            let mut block = Writes::new();
            let mut exec = Exec {
                store: &self.store,
                version: committed.height,
                block: &mut block,
                tx: Writes::new(),
                events: Vec::new(),
                height: committed.height + 1,
                time: self.last_block_time,
                block_hash: None,
                chain_id: self.chain_id.as_deref().unwrap_or_default(),
            };
            exec.run(&tx)
        });
        match outcome {
            Ok(_) => TxResult {
                code: 0,
                log: String::new(),
                events: Vec::new(),
            },
            Err(e) => TxResult::failed(&e),
        }
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
        let decoded: Vec<Result<SignedTx, TxError>> =
            txs.iter().map(|b| self.decode(b.as_ref(), false)).collect();

        let sign_bytes: Vec<Option<Vec<u8>>> = decoded
            .iter()
            .map(|d| {
                d.as_ref()
                    .ok()
                    .map(|tx| tx_sign_bytes(&tx.chain_id, &tx.body))
            })
            .collect();
        let mut seed = Sha256::new();
        seed.update(&block.hash);
        for tx in txs {
            seed.update(Sha256::digest(tx.as_ref()));
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

        let chain_id = self.chain_id.clone().unwrap_or_default();
        let mut writes = Writes::new();
        let mut results = Vec::with_capacity(txs.len());
        for d in decoded {
            let outcome = match d {
                Err(e) => Err(e),
                Ok(tx) => {
                    if verdicts.next().unwrap_or(false) {
                        let mut exec = Exec {
                            store: &self.store,
                            version,
                            block: &mut writes,
                            tx: Writes::new(),
                            events: Vec::new(),
                            height: block.height,
                            time: block.time,
                            block_hash: Some(&block.hash),
                            chain_id: &chain_id,
                        };
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

        let pending = self.hash_version(writes, block.height, block.time)?;
        let app_hash = pending.committed.app_hash;
        self.pending = Some(pending);
        Ok(BlockResult {
            app_hash,
            txs: results,
        })
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
        self.committed = Some(p.committed);
        self.last_block_time = p.time;
        Ok(height)
    }

    /// Reads a state key at `height` (0 = latest committed), with an ICS23
    /// proof against that height's app hash if `prove`.
    pub fn query(&self, path: &str, height: u64, prove: bool) -> Result<QueryAnswer, QueryError> {
        let latest = self
            .committed
            .as_ref()
            .ok_or(LedgerError::NotInitialised)?
            .height;
        let key = normalise_query_path(path)?;
        let height = if height == 0 { latest } else { height };
        if height > latest {
            return Err(QueryError::Height {
                asked: height,
                latest,
            });
        }
        let (value, proof) = if prove {
            let (value, proof) = self
                .store
                .tree()
                .get_with_ics23_proof(key.clone().into_bytes(), height)
                .map_err(StoreError::from)?;
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
        "request" => Ok(state_key::request(digest()?)),
        "artifact" => Ok(state_key::artifact(digest()?)),
        "node" => Ok(state_key::node(key()?)),
        "nonce" => Ok(state_key::nonce(key()?)),
        "package" | "released" => {
            let (ecosystem, name_version) = rest.split_once('/').ok_or_else(unknown)?;
            let (name, version) = name_version.rsplit_once('/').ok_or_else(unknown)?;
            if ecosystem.is_empty() || name.is_empty() || version.is_empty() {
                return Err(unknown());
            }
            let p = PackageId {
                ecosystem: ecosystem.to_owned(),
                name: name.to_owned(),
                version: version.to_owned(),
            };
            Ok(if prefix == "package" {
                state_key::package(&p)
            } else {
                state_key::released(&p)
            })
        }
        "name" => {
            let (ecosystem, name) = rest.split_once('/').ok_or_else(unknown)?;
            if ecosystem.is_empty() || name.is_empty() {
                return Err(unknown());
            }
            Ok(state_key::name(ecosystem, name))
        }
        _ => Err(unknown()),
    }
}

/// The one recipe that builds an ecosystem's packages.
fn recipe_for(ecosystem: &str) -> Result<&'static str, TxError> {
    match ecosystem {
        "cargo" => Ok("cargo"),
        "npm" => Ok("npm"),
        "python" => Ok("python"),
        "script" => Ok("script"),
        other => Err(TxError::InvalidField(format!(
            "no recipe builds ecosystem {other:?} (cargo, npm, python, script)"
        ))),
    }
}

fn validate_params(p: &Params) -> Result<(), TxError> {
    let bad = |what: &str| Err(TxError::InvalidField(format!("params: {what}")));
    if p.builders_per_request == 0 {
        return bad("builders_per_request must be at least 1");
    }
    if p.quorum == 0 || p.quorum > p.builders_per_request {
        return bad("quorum must be between 1 and builders_per_request");
    }
    if p.trusted_for_reproducible == 0 {
        return bad("trusted_for_reproducible must be at least 1");
    }
    if p.max_outputs == 0 {
        return bad("max_outputs must be at least 1");
    }
    if p.max_field_len < 64 {
        return bad("max_field_len must be at least 64");
    }
    Ok(())
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
    /// `None` in CheckTx, where no block exists yet.
    block_hash: Option<&'a [u8]>,
    chain_id: &'a str,
}

impl Exec<'_> {
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

    fn register_builder(&mut self, signer: PublicKey, r: &RegisterBuilder) -> Result<(), TxError> {
        let params = self.params()?;
        self.text("peer_id", &r.peer_id, params.max_field_len)?;
        if r.ecosystems.is_empty() || r.ecosystems.len() > 16 {
            return Err(TxError::InvalidField(
                "ecosystems must number 1..=16".into(),
            ));
        }
        let mut ecosystems = r.ecosystems.clone();
        ecosystems.sort();
        ecosystems.dedup();
        for eco in &ecosystems {
            self.ecosystem(eco)?;
        }
        let node_key = state_key::node(signer);
        let mut node: NodeRecord = self.get(&node_key)?.unwrap_or_default();
        let previous = node
            .builder
            .take()
            .map(|b| b.ecosystems)
            .unwrap_or_default();
        for eco in previous.iter().filter(|e| !ecosystems.contains(e)) {
            let key = state_key::builders(eco);
            let mut list: Vec<PublicKey> = self.get(&key)?.unwrap_or_default();
            list.retain(|b| *b != signer);
            self.put(key, &list);
        }
        for eco in &ecosystems {
            let key = state_key::builders(eco);
            let mut list: Vec<PublicKey> = self.get(&key)?.unwrap_or_default();
            if let Err(at) = list.binary_search(&signer) {
                list.insert(at, signer);
                self.put(key, &list);
            }
        }
        node.builder = Some(BuilderInfo {
            peer_id: r.peer_id.clone(),
            ecosystems: ecosystems.clone(),
            registered_height: self.height,
        });
        self.put(node_key, &node);
        self.emit(
            "builder_registered",
            vec![
                ("builder", signer.to_string()),
                ("ecosystems", ecosystems.join(",")),
            ],
        );
        Ok(())
    }

    fn add_to_package(&mut self, package: &PackageId, id: Digest) -> Result<(), TxError> {
        let key = state_key::package(package);
        let mut record: PackageRecord = self.get(&key)?.unwrap_or_default();
        record.requests.push(id);
        self.put(key, &record);
        Ok(())
    }

    fn request_build(&mut self, signer: PublicKey, r: &BuildRequest) -> Result<(), TxError> {
        let params = self.params()?;
        self.package(&r.package, params.max_field_len)?;
        self.text("source.repo_url", &r.source.repo_url, params.max_field_len)?;
        let commit = &r.source.commit;
        let hex_len = matches!(commit.len(), 40 | 64);
        if !hex_len
            || !commit
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(TxError::InvalidField(format!(
                "source.commit {commit:?} must be a full commit id: 40 or 64 lowercase hex"
            )));
        }
        self.text("recipe", &r.recipe, params.max_field_len)?;
        let expected = recipe_for(&r.package.ecosystem)?;
        if r.recipe != expected {
            return Err(TxError::RecipeMismatch {
                ecosystem: r.package.ecosystem.clone(),
                recipe: r.recipe.clone(),
                expected: expected.to_owned(),
            });
        }
        let name_key = state_key::name(&r.package.ecosystem, &r.package.name);
        if let Some(binding) = self.get::<NameBinding>(&name_key)? {
            if binding.repo_url != r.source.repo_url {
                return Err(TxError::NameBoundElsewhere {
                    package: r.package.to_string(),
                    bound: binding.repo_url,
                    requested: r.source.repo_url.clone(),
                });
            }
        }
        if let Some(release) = self.get::<Release>(&state_key::released(&r.package))? {
            if release.source != r.source {
                return Err(TxError::VersionReleased {
                    package: r.package.to_string(),
                    released: format!("{} at {}", release.source.repo_url, release.source.commit),
                    requested: format!("{} at {}", r.source.repo_url, r.source.commit),
                });
            }
        }
        let id = r.id();
        let key = state_key::request(id);
        if self.get::<RequestRecord>(&key)?.is_some() {
            return Err(TxError::DuplicateRequest(id));
        }
        let selected = match self.block_hash {
            Some(hash) => {
                let candidates: Vec<PublicKey> = self
                    .get(&state_key::builders(&r.package.ecosystem))?
                    .unwrap_or_default();
                select_builders(
                    hash,
                    &id,
                    &candidates,
                    usize::from(params.builders_per_request),
                )
            }
            None => Vec::new(),
        };
        let record = RequestRecord {
            id,
            origin: RequestOrigin::Build(r.clone()),
            requester: signer,
            height: self.height,
            selected: selected.clone(),
            attestations: Vec::new(),
            level: TrustLevel::Pending,
        };
        self.put(key, &record);
        self.add_to_package(&r.package, id)?;
        let selected: Vec<String> = selected.iter().map(ToString::to_string).collect();
        self.emit(
            "build_requested",
            vec![
                ("request_id", id.to_string()),
                ("ecosystem", r.package.ecosystem.clone()),
                ("package", r.package.to_string()),
                ("recipe", r.recipe.clone()),
                ("selected", selected.join(",")),
            ],
        );
        Ok(())
    }

    fn attest(&mut self, signer: PublicKey, a: &Attest) -> Result<(), TxError> {
        let params = self.params()?;
        self.outputs(&a.outputs, &params)?;
        self.text("build_env", &a.build_env, params.max_field_len)?;
        let key = state_key::request(a.request_id);
        let mut record: RequestRecord = self
            .get(&key)?
            .ok_or(TxError::UnknownRequest(a.request_id))?;
        if record.attestations.iter().any(|x| x.attester == signer) {
            return Err(TxError::DuplicateAttestation {
                attester: signer.to_string(),
                request: a.request_id,
            });
        }
        let node: Option<NodeRecord> = self.get(&state_key::node(signer))?;
        let role = if node.as_ref().is_some_and(|n| n.is_certified_at(self.time)) {
            AttesterRole::Trusted
        } else if matches!(record.origin, RequestOrigin::Build(_))
            && record.selected.contains(&signer)
        {
            AttesterRole::Regular
        } else if matches!(record.origin, RequestOrigin::Import { .. }) {
            return Err(TxError::NotTrustedNode(signer.to_string()));
        } else {
            return Err(TxError::NotSelected {
                attester: signer.to_string(),
                request: a.request_id,
            });
        };
        self.record_attestation(
            &mut record,
            AttestationRecord {
                attester: signer,
                role,
                height: self.height,
                outputs: a.outputs.clone(),
                build_env: a.build_env.clone(),
                log_digest: a.log_digest,
            },
            &params,
        )?;
        self.put(key, &record);
        Ok(())
    }

    fn trusted_import(&mut self, signer: PublicKey, i: &TrustedImport) -> Result<(), TxError> {
        let params = self.params()?;
        self.package(&i.package, params.max_field_len)?;
        self.outputs(&i.outputs, &params)?;
        self.text("upstream", &i.upstream, params.max_field_len)?;
        let node: Option<NodeRecord> = self.get(&state_key::node(signer))?;
        if !node.is_some_and(|n| n.is_certified_at(self.time)) {
            return Err(TxError::NotTrustedNode(signer.to_string()));
        }
        let id = i.record_id();
        let key = state_key::request(id);
        let mut record = match self.get::<RequestRecord>(&key)? {
            Some(r) => r,
            None => {
                self.add_to_package(&i.package, id)?;
                RequestRecord {
                    id,
                    origin: RequestOrigin::Import {
                        package: i.package.clone(),
                        upstream: i.upstream.clone(),
                    },
                    requester: signer,
                    height: self.height,
                    selected: Vec::new(),
                    attestations: Vec::new(),
                    level: TrustLevel::Pending,
                }
            }
        };
        if record.attestations.iter().any(|x| x.attester == signer) {
            return Err(TxError::DuplicateAttestation {
                attester: signer.to_string(),
                request: id,
            });
        }
        self.record_attestation(
            &mut record,
            AttestationRecord {
                attester: signer,
                role: AttesterRole::Trusted,
                height: self.height,
                outputs: i.outputs.clone(),
                build_env: format!("import from {}", i.upstream),
                log_digest: Digest::default(),
            },
            &params,
        )?;
        self.put(key, &record);
        Ok(())
    }

    /// Appends an attestation, indexes its artifacts (and, for trusted nodes,
    /// the request, so a later revocation can find it) and re-derives the level.
    fn record_attestation(
        &mut self,
        record: &mut RequestRecord,
        attestation: AttestationRecord,
        params: &Params,
    ) -> Result<(), TxError> {
        for o in &attestation.outputs {
            let key = state_key::artifact(o.sha256);
            let layout = StripeLayout {
                stripe_size: o.stripe_size,
                stripe_root: o.stripe_root,
            };
            let mut artifact = self.get::<ArtifactRecord>(&key)?.unwrap_or(ArtifactRecord {
                size: o.size,
                layouts: Vec::new(),
                requests: Vec::new(),
            });
            let new_layout = !artifact.layouts.contains(&layout);
            let new_request = !artifact.requests.contains(&record.id);
            if new_layout {
                artifact.layouts.push(layout);
            }
            if new_request {
                artifact.requests.push(record.id);
            }
            if new_layout || new_request {
                self.put(key, &artifact);
            }
        }
        if attestation.role == AttesterRole::Trusted {
            let node_key = state_key::node(attestation.attester);
            let mut node: NodeRecord = self.get(&node_key)?.unwrap_or_default();
            let page_key =
                state_key::attested(attestation.attester, node.attestation_count / ATTEST_PAGE);
            let mut page: Vec<Digest> = self.get(&page_key)?.unwrap_or_default();
            page.push(record.id);
            self.put(page_key, &page);
            node.attestation_count += 1;
            self.put(node_key, &node);
        }
        self.emit(
            "attested",
            vec![
                ("request_id", record.id.to_string()),
                ("attester", attestation.attester.to_string()),
                ("role", format!("{:?}", attestation.role).to_lowercase()),
            ],
        );
        record.attestations.push(attestation);
        self.set_level(record, evaluate(params, &record.attestations))
    }

    fn set_level(&mut self, record: &mut RequestRecord, level: TrustLevel) -> Result<(), TxError> {
        if level != record.level {
            self.settle_name_and_release(record, level)?;
            self.emit(
                "trust_changed",
                vec![
                    ("request_id", record.id.to_string()),
                    ("package", record.origin.package().to_string()),
                    ("from", record.level.to_string()),
                    ("to", level.to_string()),
                ],
            );
            record.level = level;
        }
        Ok(())
    }

    /// A build reaching `trusted` or above releases its coordinates from its
    /// source and binds an unbound name to its repository: a certified trusted
    /// node vouched for it. Falling below `trusted` again (a revocation)
    /// undoes what this request did, and nothing else.
    fn settle_name_and_release(
        &mut self,
        record: &RequestRecord,
        level: TrustLevel,
    ) -> Result<(), TxError> {
        let RequestOrigin::Build(request) = &record.origin else {
            return Ok(());
        };
        let established =
            |l: TrustLevel| matches!(l, TrustLevel::Trusted | TrustLevel::Reproducible);
        let release_key = state_key::released(&request.package);
        let name_key = state_key::name(&request.package.ecosystem, &request.package.name);
        match (established(record.level), established(level)) {
            (false, true) => {
                if self.get::<Release>(&release_key)?.is_none() {
                    let release = Release {
                        source: request.source.clone(),
                        request: record.id,
                        height: self.height,
                    };
                    self.put(release_key, &release);
                }
                if self.get::<NameBinding>(&name_key)?.is_none() {
                    let binding = NameBinding {
                        repo_url: request.source.repo_url.clone(),
                        bound_by: NameAuthority::TrustedBuild(record.id),
                        height: self.height,
                    };
                    self.put(name_key, &binding);
                    self.emit(
                        "name_bound",
                        vec![
                            ("ecosystem", request.package.ecosystem.clone()),
                            ("name", request.package.name.clone()),
                            ("repo_url", request.source.repo_url.clone()),
                        ],
                    );
                }
            }
            (true, false) => {
                if self
                    .get::<Release>(&release_key)?
                    .is_some_and(|r| r.request == record.id)
                {
                    self.delete(release_key);
                }
                if self
                    .get::<NameBinding>(&name_key)?
                    .is_some_and(|b| b.bound_by == NameAuthority::TrustedBuild(record.id))
                {
                    self.delete(name_key);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn name_fields(&self, b: &BindName) -> Result<(), TxError> {
        let params = self.params()?;
        self.ecosystem(&b.ecosystem)?;
        self.text("name", &b.name, params.max_field_len)?;
        self.text("repo_url", &b.repo_url, params.max_field_len)
    }

    fn bind_name(&mut self, b: &BindName, bound_by: NameAuthority) {
        let binding = NameBinding {
            repo_url: b.repo_url.clone(),
            bound_by,
            height: self.height,
        };
        self.put(state_key::name(&b.ecosystem, &b.name), &binding);
        self.emit(
            "name_bound",
            vec![
                ("ecosystem", b.ecosystem.clone()),
                ("name", b.name.clone()),
                ("repo_url", b.repo_url.clone()),
            ],
        );
    }

    /// A certified trusted node binds a name nobody has bound yet.
    fn bind_name_by_trusted_node(
        &mut self,
        signer: PublicKey,
        b: &BindName,
    ) -> Result<(), TxError> {
        self.name_fields(b)?;
        let node: Option<NodeRecord> = self.get(&state_key::node(signer))?;
        if !node.is_some_and(|n| n.is_certified_at(self.time)) {
            return Err(TxError::NotTrustedNode(signer.to_string()));
        }
        let key = state_key::name(&b.ecosystem, &b.name);
        if let Some(existing) = self.get::<NameBinding>(&key)? {
            if existing.repo_url != b.repo_url {
                return Err(TxError::NameAlreadyBound {
                    name: format!("{}:{}", b.ecosystem, b.name),
                    bound: existing.repo_url,
                });
            }
            return Ok(());
        }
        self.bind_name(b, NameAuthority::TrustedNode(signer));
        Ok(())
    }

    fn governance(&mut self, g: &Governance) -> Result<(), TxError> {
        let seq: u64 = self.get(state_key::GOV_SEQ)?.unwrap_or(0);
        if g.seq != seq {
            return Err(TxError::GovSequence {
                expected: seq,
                got: g.seq,
            });
        }
        let board: Board = self
            .get(state_key::BOARD)?
            .ok_or_else(|| TxError::BadApproval("no governance board in state".into()))?;
        let msg = gov_sign_bytes(self.chain_id, g.seq, &g.action);
        let mut approvers = std::collections::BTreeSet::new();
        for approval in &g.approvals {
            if !board.keys.contains(&approval.board_key) {
                return Err(TxError::BadApproval(format!(
                    "{} is not on the board",
                    approval.board_key
                )));
            }
            if !approvers.insert(approval.board_key) {
                return Err(TxError::BadApproval(format!(
                    "{} approved twice",
                    approval.board_key
                )));
            }
            if !verify(&approval.board_key, &approval.signature, &msg) {
                return Err(TxError::BadApproval(format!(
                    "signature of {} does not verify",
                    approval.board_key
                )));
            }
        }
        let need = usize::from(board.threshold);
        if approvers.len() < need {
            return Err(TxError::BelowThreshold {
                have: approvers.len(),
                need,
            });
        }
        match &g.action {
            GovAction::CertifyTrustedNode { node, valid_until } => {
                let key = state_key::node(*node);
                let mut record: NodeRecord = self.get(&key)?.unwrap_or_default();
                record.certification = Some(Certification {
                    valid_until: *valid_until,
                    certified_height: self.height,
                });
                self.put(key, &record);
                self.emit(
                    "trusted_node_certified",
                    vec![
                        ("node", node.to_string()),
                        ("valid_until", valid_until.to_string()),
                    ],
                );
            }
            GovAction::RevokeTrustedNode {
                node,
                incident,
                incident_since_height,
            } => self.revoke(*node, incident, *incident_since_height)?,
            GovAction::BindName(b) => {
                self.name_fields(b)?;
                self.bind_name(b, NameAuthority::Board);
            }
            GovAction::UpdateParams(p) => {
                validate_params(p)?;
                self.put(state_key::PARAMS.into(), p);
                self.emit("params_updated", vec![]);
            }
        }
        self.put(state_key::GOV_SEQ.into(), &(seq + 1));
        Ok(())
    }

    /// Ends the node's certification and voids its trusted attestations made
    /// at or after the incident's start, re-deriving those requests' levels.
    fn revoke(&mut self, node: PublicKey, incident: &str, since: u64) -> Result<(), TxError> {
        let params = self.params()?;
        self.text("incident", incident, params.max_field_len)?;
        let key = state_key::node(node);
        let mut record: NodeRecord = self
            .get(&key)?
            .ok_or_else(|| TxError::UnknownNode(node.to_string()))?;
        if since > self.height {
            return Err(TxError::InvalidField(
                "incident_since_height is in the future".into(),
            ));
        }
        record.certification = None;
        record.incidents.push(Incident {
            description: incident.to_owned(),
            since_height: since,
            revoked_height: self.height,
        });
        let pages = record.attestation_count.div_ceil(ATTEST_PAGE);
        self.put(key, &record);
        for page in 0..pages {
            let ids: Vec<Digest> = self
                .get(&state_key::attested(node, page))?
                .unwrap_or_default();
            for id in ids {
                let request_key = state_key::request(id);
                let Some(mut request) = self.get::<RequestRecord>(&request_key)? else {
                    continue;
                };
                let mut changed = false;
                for a in &mut request.attestations {
                    if a.attester == node && a.role == AttesterRole::Trusted && a.height >= since {
                        a.role = AttesterRole::Void;
                        changed = true;
                    }
                }
                if changed {
                    let level = evaluate(&params, &request.attestations);
                    self.set_level(&mut request, level)?;
                    self.put(request_key, &request);
                }
            }
        }
        self.emit(
            "trusted_node_revoked",
            vec![
                ("node", node.to_string()),
                ("incident_since_height", since.to_string()),
            ],
        );
        Ok(())
    }
}
