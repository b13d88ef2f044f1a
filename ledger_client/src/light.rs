//! A light client: headers verified from a trust anchor (a chain's genesis or
//! a pinned header), never taken from the RPC node that serves them.
//!
//! Verification skips ahead (bisection) while the trusted validators still
//! hold at least the trust threshold of the new header's signatures, and
//! steps header by header across validator-set changes. Verified headers
//! are kept in a [`LightStore`] under the home, which only moves forward, so
//! a later query verifies from where the last one stopped. See
//! `docs/protocol.md` (light client) for the security model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tendermint::block::Height;
use tendermint::{chain, Hash, Time};
use tendermint_light_client_verifier::errors::VerificationErrorDetail;
use tendermint_light_client_verifier::options::Options;
use tendermint_light_client_verifier::types::{
    LightBlock, PeerId, TrustThreshold, TrustedBlockState, ValidatorSet,
};
use tendermint_light_client_verifier::{ProdVerifier, Verdict, Verifier};
use tendermint_rpc::client::CompatMode;
use tendermint_rpc::{Client, HttpClient, Paging};

/// How many verified headers the store keeps (the highest ones).
const STORED_HEADERS: usize = 32;
/// How many headers one verification may fetch: bisection needs about
/// log2(distance) per validator-set change, so only a node feeding headers
/// that never verify reaches this.
const MAX_HEADERS_PER_VERIFICATION: usize = 4096;

/// Settings of `HOME/config/light.toml`; every key is optional.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LightConfig {
    /// The chain's genesis file (relative paths are under the home).
    pub genesis: PathBuf,
    /// A pinned trust anchor `HEIGHT:HASH` (the header's hash, hex); when
    /// set it replaces the genesis anchor.
    pub anchor: Option<String>,
    /// How long a verified header may serve to skip ahead from.
    pub trusting_period_secs: u64,
    /// The share of a trusted validator set that must have signed a header
    /// to skip to it, as `N/D` (at least 1/3, at most 1).
    pub trust_threshold: String,
    /// How far a header's time may be ahead of the local clock.
    pub clock_drift_secs: u64,
    /// How old the header of a "latest" answer may be.
    pub max_age_secs: u64,
}

impl Default for LightConfig {
    fn default() -> Self {
        LightConfig {
            genesis: PathBuf::from("config/genesis.json"),
            anchor: None,
            trusting_period_secs: 14 * 24 * 3600,
            trust_threshold: "1/3".into(),
            clock_drift_secs: 10,
            max_age_secs: 60,
        }
    }
}

impl LightConfig {
    pub fn path(home: &Path) -> PathBuf {
        home.join("config").join("light.toml")
    }

    /// `HOME/config/light.toml`, or the defaults if there is none.
    pub fn load(home: &Path) -> Result<LightConfig, LightError> {
        let path = Self::path(home);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml_edit::de::from_str(&text).map_err(|e| LightError::Config {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LightConfig::default()),
            Err(e) => Err(LightError::Io { path, source: e }),
        }
    }

    pub fn options(&self) -> Result<Options, LightError> {
        let bad = |reason: String| LightError::Config {
            path: PathBuf::from("light.toml"),
            reason,
        };
        let (n, d) = self
            .trust_threshold
            .split_once('/')
            .and_then(|(n, d)| Some((n.trim().parse().ok()?, d.trim().parse().ok()?)))
            .ok_or_else(|| {
                bad(format!(
                    "trust_threshold {:?} is not N/D",
                    self.trust_threshold
                ))
            })?;
        let trust_threshold = TrustThreshold::new(n, d)
            .map_err(|e| bad(format!("trust_threshold {n}/{d}: {}", e.detail())))?;
        Ok(Options {
            trust_threshold,
            trusting_period: Duration::from_secs(self.trusting_period_secs),
            clock_drift: Duration::from_secs(self.clock_drift_secs),
        })
    }

    /// The anchor this configuration names: the pinned header if set, else
    /// the genesis file.
    pub fn anchor(&self, home: &Path) -> Result<TrustAnchor, LightError> {
        match &self.anchor {
            Some(pinned) => TrustAnchor::parse_pinned(pinned),
            None => TrustAnchor::from_genesis_file(&home.join(&self.genesis)),
        }
    }
}

/// What the light client trusts without verifying it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustAnchor {
    /// A chain's genesis: its id, first height and initial validators.
    Genesis {
        chain_id: chain::Id,
        initial_height: u64,
        time: Time,
        validators: ValidatorSet,
    },
    /// A header known by its hash, from a source the operator trusts.
    Header { height: u64, hash: Hash },
}

impl TrustAnchor {
    pub fn from_genesis_file(path: &Path) -> Result<TrustAnchor, LightError> {
        let text = std::fs::read_to_string(path).map_err(|source| LightError::Io {
            path: path.to_owned(),
            source,
        })?;
        let genesis: tendermint::Genesis<serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| LightError::Config {
                path: path.to_owned(),
                reason: format!("not a CometBFT genesis file: {e}"),
            })?;
        let initial_height = u64::try_from(genesis.initial_height)
            .ok()
            .filter(|h| *h >= 1)
            .ok_or_else(|| LightError::Config {
                path: path.to_owned(),
                reason: format!("initial_height {} is not positive", genesis.initial_height),
            })?;
        if genesis.validators.is_empty() {
            return Err(LightError::Config {
                path: path.to_owned(),
                reason: "names no validators: pin a header instead (light.toml `anchor`)".into(),
            });
        }
        Ok(TrustAnchor::Genesis {
            chain_id: genesis.chain_id,
            initial_height,
            time: genesis.genesis_time,
            validators: ValidatorSet::without_proposer(genesis.validators),
        })
    }

    /// `HEIGHT:HASH`, the hash in hex.
    pub fn parse_pinned(text: &str) -> Result<TrustAnchor, LightError> {
        let bad = || LightError::BadAnchor(text.to_owned());
        let (height, hash) = text.split_once(':').ok_or_else(bad)?;
        let height: u64 = height.trim().parse().map_err(|_| bad())?;
        let hash = Hash::from_hex_upper(
            tendermint::hash::Algorithm::Sha256,
            &hash.trim().to_ascii_uppercase(),
        )
        .map_err(|_| bad())?;
        if height == 0 {
            return Err(bad());
        }
        Ok(TrustAnchor::Header { height, hash })
    }

    /// Names the anchor in the light store, so a store built from another
    /// anchor is never used.
    fn id(&self) -> String {
        match self {
            TrustAnchor::Genesis {
                chain_id,
                initial_height,
                validators,
                ..
            } => format!("genesis:{chain_id}:{initial_height}:{}", validators.hash()),
            TrustAnchor::Header { height, hash } => format!("header:{height}:{hash}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LightError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("trust anchor {0:?} is not HEIGHT:HASH (a positive height and a SHA-256 header hash in hex)")]
    BadAnchor(String),
    #[error("node RPC {url}: {reason}")]
    Rpc { url: String, reason: String },
    #[error("the light store {path} was built from another trust anchor ({stored}); remove it to start again from {configured}")]
    OtherAnchor {
        path: PathBuf,
        stored: String,
        configured: String,
    },
    #[error("header {height} hashes to {got}, not to the pinned anchor {expected}")]
    AnchorHashMismatch {
        height: u64,
        expected: Hash,
        got: Hash,
    },
    #[error("the newest trusted header (height {height}, {time}) is older than the trusting period of {period:?}: pin a recent header you got from a source you trust (light.toml `anchor`, or --trust-anchor HEIGHT:HASH)")]
    Expired {
        height: u64,
        time: Time,
        period: Duration,
    },
    #[error("header {height}: the validator set served for it does not hash to the header's validators_hash")]
    ValidatorSetMismatch { height: u64 },
    #[error("header {height}: its validators are not the ones the trusted header {trusted} named as next (forged header or chain)")]
    NotTheTrustedValidators { height: u64, trusted: u64 },
    #[error("header {height}: signed by too little voting power ({detail})")]
    TooFewSignatures { height: u64, detail: String },
    #[error("header {height}: a commit signature does not verify ({detail})")]
    BadSignature { height: u64, detail: String },
    #[error("header {height}: its commit is for another block ({detail})")]
    CommitMismatch { height: u64, detail: String },
    #[error("header {height} is for chain {got}, not {expected}")]
    ChainIdMismatch {
        height: u64,
        expected: String,
        got: String,
    },
    #[error("header {height}: {detail}")]
    Invalid { height: u64, detail: String },
    #[error("header {height} lies below the trust anchor at {anchor}")]
    BelowAnchor { height: u64, anchor: u64 },
    #[error("the node served header {got} when asked for {asked}")]
    WrongHeight { asked: u64, got: u64 },
}

impl LightError {
    fn from_detail(height: u64, trusted: u64, detail: VerificationErrorDetail) -> LightError {
        let text = detail.to_string();
        match detail {
            VerificationErrorDetail::InvalidValidatorSet(_) => {
                LightError::ValidatorSetMismatch { height }
            }
            VerificationErrorDetail::InvalidNextValidatorSet(_) => {
                LightError::NotTheTrustedValidators { height, trusted }
            }
            VerificationErrorDetail::InsufficientSignersOverlap(_)
            | VerificationErrorDetail::NotEnoughTrust(_)
            | VerificationErrorDetail::NoSignatureForCommit(_)
            | VerificationErrorDetail::MismatchPreCommitLength(_) => LightError::TooFewSignatures {
                height,
                detail: text,
            },
            VerificationErrorDetail::InvalidSignature(_)
            | VerificationErrorDetail::FaultySigner(_) => LightError::BadSignature {
                height,
                detail: text,
            },
            VerificationErrorDetail::InvalidCommitValue(_) => LightError::CommitMismatch {
                height,
                detail: text,
            },
            VerificationErrorDetail::ChainIdMismatch(e) => LightError::ChainIdMismatch {
                height,
                expected: e.expected,
                got: e.got,
            },
            _ => LightError::Invalid {
                height,
                detail: text,
            },
        }
    }
}

/// Verified headers, persisted as JSON under the home. The highest height it
/// holds never goes down.
#[derive(Debug)]
pub struct LightStore {
    path: PathBuf,
    state: StoredState,
    /// Whether `state` holds headers not yet written.
    dirty: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StoredState {
    anchor: String,
    blocks: BTreeMap<u64, LightBlock>,
}

impl LightStore {
    /// The store for `anchor` at `path` (`HOME/light/store.json`).
    pub fn open(path: PathBuf, anchor: &TrustAnchor) -> Result<LightStore, LightError> {
        let state = match std::fs::read(&path) {
            Ok(bytes) => {
                let state: StoredState =
                    serde_json::from_slice(&bytes).map_err(|e| LightError::Config {
                        path: path.clone(),
                        reason: format!("light store does not parse: {e}"),
                    })?;
                if state.anchor != anchor.id() {
                    return Err(LightError::OtherAnchor {
                        path,
                        stored: state.anchor,
                        configured: anchor.id(),
                    });
                }
                state
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StoredState {
                anchor: anchor.id(),
                blocks: BTreeMap::new(),
            },
            Err(source) => return Err(LightError::Io { path, source }),
        };
        Ok(LightStore {
            path,
            state,
            dirty: false,
        })
    }

    pub fn path_in(home: &Path) -> PathBuf {
        home.join("light").join("store.json")
    }

    pub fn highest(&self) -> Option<&LightBlock> {
        self.state.blocks.values().next_back()
    }

    fn at_or_below(&self, height: u64) -> Option<&LightBlock> {
        self.state
            .blocks
            .range(..=height)
            .next_back()
            .map(|(_, b)| b)
    }

    fn insert(&mut self, block: LightBlock) {
        self.dirty = true;
        self.state.blocks.insert(block.height().value(), block);
        while self.state.blocks.len() > STORED_HEADERS {
            self.state.blocks.pop_first();
        }
    }

    /// Writes new headers, atomically (temp file, then rename).
    fn save(&mut self) -> Result<(), LightError> {
        if !self.dirty {
            return Ok(());
        }
        let io = |source| LightError::Io {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let bytes = serde_json::to_vec(&self.state).map_err(|e| io(std::io::Error::other(e)))?;
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        self.dirty = false;
        Ok(())
    }
}

/// Where light blocks come from.
#[derive(Debug)]
enum Source {
    /// A node's CometBFT RPC.
    Rpc { url: String, http: HttpClient },
    /// Blocks recorded earlier (a bundle verified offline).
    Recorded(BTreeMap<u64, LightBlock>),
}

/// Verifies headers served by one RPC node against a trust anchor.
#[derive(Debug)]
pub struct LightClient {
    source: Source,
    anchor: TrustAnchor,
    options: Options,
    store: LightStore,
    /// Light blocks fetched but not (yet) verified, by height.
    fetched: BTreeMap<u64, LightBlock>,
    headers_fetched: u64,
}

/// What one verification step concluded.
enum Step {
    Verified,
    /// Too few trusted validators signed: verify this height first.
    VerifyFirst(u64),
}

/// Where a verification starts from: the anchor itself, or a verified header.
enum Trusted<'a> {
    Genesis {
        chain_id: &'a chain::Id,
        height: Height,
        time: Time,
        validators: &'a ValidatorSet,
    },
    Block(&'a LightBlock),
}

impl Trusted<'_> {
    fn height(&self) -> u64 {
        match self {
            Trusted::Genesis { height, .. } => height.value(),
            Trusted::Block(b) => b.height().value(),
        }
    }

    fn time(&self) -> Time {
        match self {
            Trusted::Genesis { time, .. } => *time,
            Trusted::Block(b) => b.time(),
        }
    }

    fn state(&self) -> TrustedBlockState<'_> {
        match self {
            Trusted::Genesis {
                chain_id,
                height,
                time,
                validators,
            } => TrustedBlockState {
                chain_id,
                header_time: *time,
                height: *height,
                next_validators: validators,
                next_validators_hash: validators.hash(),
            },
            Trusted::Block(b) => b.as_trusted_state(),
        }
    }
}

impl LightClient {
    pub fn new(
        url: &str,
        anchor: TrustAnchor,
        options: Options,
        store: LightStore,
    ) -> Result<LightClient, LightError> {
        let rpc = |reason: String| LightError::Rpc {
            url: url.to_owned(),
            reason,
        };
        let parsed = url
            .parse()
            .map_err(|e: tendermint_rpc::Error| rpc(e.detail().to_string()))?;
        let http = HttpClient::builder(parsed)
            .compat_mode(CompatMode::V0_38)
            .build()
            .map_err(|e| rpc(e.detail().to_string()))?;
        Ok(LightClient {
            source: Source::Rpc {
                url: url.to_owned(),
                http,
            },
            anchor,
            options,
            store,
            fetched: BTreeMap::new(),
            headers_fetched: 0,
        })
    }

    /// A client that verifies recorded light blocks instead of asking a
    /// node: the same rules, with no network.
    pub fn recorded(
        blocks: impl IntoIterator<Item = LightBlock>,
        anchor: TrustAnchor,
        options: Options,
        store: LightStore,
    ) -> LightClient {
        LightClient {
            source: Source::Recorded(
                blocks
                    .into_iter()
                    .map(|b| (b.height().value(), b))
                    .collect(),
            ),
            anchor,
            options,
            store,
            fetched: BTreeMap::new(),
            headers_fetched: 0,
        }
    }

    /// The client a home configures: `config` (its `config/light.toml`, see
    /// [`LightConfig::load`]), its anchor, and the store in `HOME/light/`.
    /// `anchor` overrides the configured one.
    pub fn for_home(
        url: &str,
        home: &Path,
        config: &LightConfig,
        anchor: Option<TrustAnchor>,
    ) -> Result<LightClient, LightError> {
        let anchor = match anchor {
            Some(a) => a,
            None => config.anchor(home)?,
        };
        let store = LightStore::open(LightStore::path_in(home), &anchor)?;
        LightClient::new(url, anchor, config.options()?, store)
    }

    /// Light blocks fetched from the node so far (for benchmarks and tests).
    pub fn headers_fetched(&self) -> u64 {
        self.headers_fetched
    }

    /// The highest header verified so far, in this run or an earlier one.
    pub fn highest_verified(&self) -> Option<&LightBlock> {
        self.store.highest()
    }

    fn rpc(&self) -> Result<(&str, &HttpClient), LightError> {
        match &self.source {
            Source::Rpc { url, http } => Ok((url, http)),
            Source::Recorded(_) => Err(LightError::Rpc {
                url: "recorded blocks".into(),
                reason: "no node to ask".into(),
            }),
        }
    }

    fn anchor_height(&self) -> u64 {
        match &self.anchor {
            TrustAnchor::Genesis { initial_height, .. } => initial_height - 1,
            TrustAnchor::Header { height, .. } => *height,
        }
    }

    /// The height of the node's latest block, as the node claims it (an
    /// untrusted hint: what is verified is the header at that height).
    pub async fn latest_height(&self) -> Result<u64, LightError> {
        if let Source::Recorded(blocks) = &self.source {
            return Ok(blocks.keys().next_back().copied().unwrap_or(0));
        }
        Ok(self.status().await?.sync_info.latest_block_height.value())
    }

    /// The node's status, unverified.
    pub async fn status(&self) -> Result<tendermint_rpc::endpoint::status::Response, LightError> {
        let (url, http) = self.rpc()?;
        http.status().await.map_err(|e| rpc_err(url, e))
    }

    async fn fetch(&mut self, height: u64) -> Result<LightBlock, LightError> {
        if let Some(b) = self.fetched.get(&height) {
            return Ok(b.clone());
        }
        let block = match &self.source {
            Source::Recorded(blocks) => blocks.get(&height).cloned().ok_or(LightError::Rpc {
                url: "recorded blocks".into(),
                reason: format!("no header {height}"),
            })?,
            Source::Rpc { url, http } => fetch_light_block(url, http, height).await?,
        };
        let got = block.height().value();
        if got != height {
            return Err(LightError::WrongHeight { asked: height, got });
        }
        self.headers_fetched += 1;
        self.fetched.insert(height, block.clone());
        Ok(block)
    }

    /// The verified header at `height`: from the store, or verified from the
    /// highest stored header below it (or the anchor), skipping where the
    /// trusted validators allow it and bisecting where they do not.
    pub async fn verify_to(&mut self, height: u64) -> Result<LightBlock, LightError> {
        let anchor_height = self.anchor_height();
        if height <= anchor_height {
            return Err(LightError::BelowAnchor {
                height,
                anchor: anchor_height,
            });
        }
        if let Some(b) = self.store.state.blocks.get(&height) {
            return Ok(b.clone());
        }
        if self.store.at_or_below(height).is_none() {
            if let TrustAnchor::Header { height: h, hash } = self.anchor.clone() {
                self.trust_pinned(h, hash).await?;
            }
        }
        let result = self.bisect(height).await;
        // Headers verified before a failure are still verified: keep them.
        let saved = self.store.save();
        self.fetched.clear();
        let block = result?;
        saved?;
        Ok(block)
    }

    /// Verifies `height` from the highest trusted header below it, first
    /// verifying midpoints wherever the trusted validators are too few
    /// among the signers.
    async fn bisect(&mut self, height: u64) -> Result<LightBlock, LightError> {
        let now = Time::now();
        let mut pending = vec![height];
        while let Some(&target) = pending.last() {
            if self.fetched.len() >= MAX_HEADERS_PER_VERIFICATION {
                return Err(LightError::Invalid {
                    height,
                    detail: format!(
                        "not verified after {MAX_HEADERS_PER_VERIFICATION} headers; the node keeps serving headers that do not verify"
                    ),
                });
            }
            let untrusted = self.fetch(target).await?;
            match self.check(&untrusted, now)? {
                Step::Verified => {
                    self.store.insert(untrusted);
                    pending.pop();
                }
                Step::VerifyFirst(pivot) => pending.push(pivot),
            }
        }
        self.store
            .state
            .blocks
            .get(&height)
            .cloned()
            .ok_or(LightError::Invalid {
                height,
                detail: "verified header missing from the light store".into(),
            })
    }

    /// One verification step, with no IO: may `untrusted` be trusted on the
    /// strength of the highest trusted header below it, at time `now`?
    fn check(&self, untrusted: &LightBlock, now: Time) -> Result<Step, LightError> {
        let target = untrusted.height().value();
        let trusted = self.trusted_below(target)?;
        let trusted_height = trusted.height();
        let verdict = ProdVerifier::default().verify_update_header(
            untrusted.as_untrusted_state(),
            trusted.state(),
            &self.options,
            now,
        );
        match verdict {
            Verdict::Success => Ok(Step::Verified),
            Verdict::NotEnoughTrust(_) if target > trusted_height + 1 => Ok(Step::VerifyFirst(
                trusted_height + (target - trusted_height) / 2,
            )),
            Verdict::NotEnoughTrust(tally) => Err(LightError::TooFewSignatures {
                height: target,
                detail: tally.to_string(),
            }),
            Verdict::Invalid(VerificationErrorDetail::NotWithinTrustPeriod(_)) => {
                Err(LightError::Expired {
                    height: trusted_height,
                    time: trusted.time(),
                    period: self.options.trusting_period,
                })
            }
            Verdict::Invalid(detail) => {
                Err(LightError::from_detail(target, trusted_height, detail))
            }
        }
    }

    /// The highest stored header below `height`, else the genesis anchor.
    fn trusted_below(&self, height: u64) -> Result<Trusted<'_>, LightError> {
        if let Some(b) = self.store.at_or_below(height - 1) {
            return Ok(Trusted::Block(b));
        }
        match &self.anchor {
            TrustAnchor::Genesis {
                chain_id,
                initial_height,
                time,
                validators,
            } => Ok(Trusted::Genesis {
                chain_id,
                height: to_height(initial_height - 1)?,
                // Block 1 carries the genesis time; the verifier wants the
                // trusted time strictly earlier.
                time: time.checked_sub(Duration::from_nanos(1)).ok_or_else(|| {
                    LightError::Invalid {
                        height,
                        detail: "genesis time out of range".into(),
                    }
                })?,
                validators,
            }),
            TrustAnchor::Header { height: pinned, .. } => Err(LightError::Invalid {
                height,
                detail: format!("no verified header between the pinned anchor {pinned} and it"),
            }),
        }
    }

    /// Trusts the pinned header: it must hash to the pinned hash and carry
    /// the signatures of more than 2/3 of its own validators.
    async fn trust_pinned(&mut self, height: u64, hash: Hash) -> Result<(), LightError> {
        let block = self.fetch(height).await?;
        let got = block.signed_header.header.hash();
        if got != hash {
            return Err(LightError::AnchorHashMismatch {
                height,
                expected: hash,
                got,
            });
        }
        let verifier = ProdVerifier::default();
        let state = block.as_untrusted_state();
        for verdict in [
            verifier.verify_validator_sets(&state),
            verifier.verify_commit(&state),
        ] {
            match verdict {
                Verdict::Success => {}
                Verdict::NotEnoughTrust(tally) => {
                    return Err(LightError::TooFewSignatures {
                        height,
                        detail: tally.to_string(),
                    })
                }
                Verdict::Invalid(detail) => {
                    return Err(LightError::from_detail(height, height, detail))
                }
            }
        }
        // A header from the future is not expired; clock drift is checked
        // against the headers verified from it.
        let expired = matches!(
            Time::now().duration_since(block.time()),
            Ok(age) if age > self.options.trusting_period
        );
        if expired {
            return Err(LightError::Expired {
                height,
                time: block.time(),
                period: self.options.trusting_period,
            });
        }
        self.store.insert(block);
        self.store.save()
    }
}

fn to_height(height: u64) -> Result<Height, LightError> {
    Height::try_from(height).map_err(|e| LightError::Invalid {
        height,
        detail: e.detail().to_string(),
    })
}

fn rpc_err(url: &str, e: tendermint_rpc::Error) -> LightError {
    LightError::Rpc {
        url: url.to_owned(),
        reason: crate::rpc::rpc_reason(&e),
    }
}

/// Header `height` with its commit, its validators and the next ones.
async fn fetch_light_block(
    url: &str,
    http: &HttpClient,
    height: u64,
) -> Result<LightBlock, LightError> {
    let h = to_height(height)?;
    let next = to_height(height + 1)?;
    let commit = http.commit(h).await.map_err(|e| rpc_err(url, e))?;
    let validators = http
        .validators(h, Paging::All)
        .await
        .map_err(|e| rpc_err(url, e))?;
    let next_validators = http
        .validators(next, Paging::All)
        .await
        .map_err(|e| rpc_err(url, e))?;
    Ok(LightBlock::new(
        commit.signed_header,
        ValidatorSet::without_proposer(validators.validators),
        ValidatorSet::without_proposer(next_validators.validators),
        PeerId::new([0; 20]),
    ))
}
