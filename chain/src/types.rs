//! Ledger data types: transactions, state records and parameters.
//!
//! Everything here is borsh-encoded on the wire and in state; borsh is
//! canonical (one encoding per value), which the signatures and the app hash
//! rely on. Serde is only for human/JSON output and genesis files.

use std::fmt;
use std::str::FromStr;

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// The canonical (borsh) bytes of `value`: the one way anything reaches
/// state, a signature or an id. Encoding into memory fails only for a
/// collection over 2^32 elements, which no value within the transaction and
/// state limits has; if it ever happened, the node must stop, not write or
/// sign empty bytes.
#[allow(clippy::expect_used)]
pub fn encode<T: BorshSerialize + ?Sized>(value: &T) -> Vec<u8> {
    borsh::to_vec(value).expect("borsh encoding into memory of a bounded value cannot fail")
}

/// A SHA-256 digest (artifact digests, request ids, stripe roots).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, BorshSerialize, BorshDeserialize,
)]
pub struct Digest(pub [u8; 32]);

/// An ed25519 public key: identifies signers, builders, trusted nodes and board members.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, BorshSerialize, BorshDeserialize,
)]
pub struct PublicKey(pub [u8; 32]);

/// A hex string that is not 32 bytes of hex.
#[derive(Debug, thiserror::Error)]
#[error("expected 64 hex characters, got {0:?}")]
pub struct BadHex(pub String);

fn parse_hex32(s: &str) -> Result<[u8; 32], BadHex> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|_| BadHex(s.to_owned()))?;
    Ok(out)
}

macro_rules! hex32 {
    ($t:ident) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($t), hex::encode(self.0))
            }
        }
        impl FromStr for $t {
            type Err = BadHex;
            fn from_str(s: &str) -> Result<Self, BadHex> {
                parse_hex32(s).map($t)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&hex::encode(self.0))
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
hex32!(Digest);
hex32!(PublicKey);
hex32!(VrfPublic);

/// A validator's sr25519 VRF public key, for the selection beacon
/// ([`crate::beacon`]).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, BorshSerialize, BorshDeserialize,
)]
pub struct VrfPublic(pub [u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }
}

/// Package coordinates.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    BorshSerialize,
    BorshDeserialize,
    Serialize,
    Deserialize,
)]
pub struct PackageId {
    pub ecosystem: String,
    pub name: String,
    pub version: String,
}

impl PackageId {
    /// State key of the package record.
    pub fn state_key(&self) -> String {
        crate::state_key::package(self)
    }
}

impl fmt::Display for PackageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}@{}", self.ecosystem, self.name, self.version)
    }
}

/// A public source at an exact commit.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct SourceRef {
    pub repo_url: String,
    pub commit: String,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct BuildRequest {
    pub package: PackageId,
    pub source: SourceRef,
    /// Recipe name (`script`, `npm`, `cargo`, `python`, …); interpreted by builders.
    pub recipe: String,
}

impl BuildRequest {
    /// The request id: SHA-256 of the canonical (borsh) request.
    pub fn id(&self) -> Digest {
        Digest::of(&encode(self))
    }
}

/// One built or imported file.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    BorshSerialize,
    BorshDeserialize,
    Serialize,
    Deserialize,
)]
pub struct Output {
    pub name: String,
    pub sha256: Digest,
    pub size: u64,
    pub stripe_size: u32,
    pub stripe_root: Digest,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct RegisterBuilder {
    /// libp2p peer id of the node's store sidecar.
    pub peer_id: String,
    pub ecosystems: Vec<String>,
}

/// A certified trusted node admits a builder key (within its sponsorship limit).
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct AdmitBuilder {
    pub builder: PublicKey,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Attest {
    pub request_id: Digest,
    pub outputs: Vec<Output>,
    /// Free-form description of the build environment (image, toolchain versions).
    pub build_env: String,
    pub log_digest: Digest,
    /// The builder's signed provenance (a DSSE envelope of an in-toto
    /// statement, `docs/protocol.md`), stored like an output so clients can
    /// fetch it. Never compared between attestations: each builder's differs.
    pub provenance: Option<Output>,
}

/// Why a build failed, as the builder that tried it classifies the failure.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// The repository could not be cloned.
    SourceUnreachable,
    /// The repository has no such commit.
    UnknownCommit,
    /// The request cannot be built as stated (commit id, ecosystem, name or version).
    BadRequest,
    /// The package's recipe (`pyrsia-build.toml`, manifest) is invalid.
    BadRecipe,
    /// Resolving or fetching the dependencies failed.
    Dependency,
    /// The build command exited with an error.
    BuildFailed,
    /// The build ran past the builder's time limit.
    TimedOut,
    /// A declared output was not produced.
    OutputMissing,
    /// An output does not match what the recipe declares.
    OutputMismatch,
    /// The builder's sandbox could not run the build.
    Sandbox,
    /// Anything else (an I/O error on the builder, …).
    Other,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::SourceUnreachable => "source_unreachable",
            FailureClass::UnknownCommit => "unknown_commit",
            FailureClass::BadRequest => "bad_request",
            FailureClass::BadRecipe => "bad_recipe",
            FailureClass::Dependency => "dependency",
            FailureClass::BuildFailed => "build_failed",
            FailureClass::TimedOut => "timed_out",
            FailureClass::OutputMissing => "output_missing",
            FailureClass::OutputMismatch => "output_mismatch",
            FailureClass::Sandbox => "sandbox",
            FailureClass::Other => "other",
        }
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A selected builder (or a certified trusted node) reports that it built
/// the request and the build failed: an answer, not an attestation.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct ReportFailure {
    pub request_id: Digest,
    pub reason: FailureClass,
    /// SHA-256 of the build log the builder stored, pinned; `None` if it
    /// could not store it (or the build never started).
    pub log_digest: Option<Digest>,
}

/// Binds a package name to its source repository (a certified trusted node,
/// for a name nobody has bound yet).
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct BindName {
    pub ecosystem: String,
    pub name: String,
    pub repo_url: String,
}

/// Who bound a name to its repository.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NameAuthority {
    /// A certified trusted node, with a `BindName` transaction.
    TrustedNode(PublicKey),
    /// The first build of the name that reached `trusted` (a certified
    /// trusted node attested it).
    TrustedBuild(Digest),
    /// The board, by governance (the only way to move a bound name).
    Board,
}

/// `name/{ecosystem}/{name}`: the one repository the name is built from.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct NameBinding {
    pub repo_url: String,
    pub bound_by: NameAuthority,
    pub height: u64,
}

/// `released/{ecosystem}/{name}/{version}`: the source of the first build of
/// these coordinates that reached `trusted`; no other commit may be built.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Release {
    pub source: SourceRef,
    pub request: Digest,
    pub height: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct TrustedImport {
    pub package: PackageId,
    pub outputs: Vec<Output>,
    /// Where the artifact was mirrored from (an established registry URL).
    pub upstream: String,
}

impl TrustedImport {
    /// Imports of the same package from the same upstream share one record, so
    /// that several trusted nodes vouching for it are compared with each other.
    pub fn record_id(&self) -> Digest {
        let canonical = (b"pyrsia-import", &self.package, &self.upstream);
        Digest::of(&encode(&canonical))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub enum GovAction {
    /// Certifies (or renews) a trusted node until `valid_until` (unix seconds, block time).
    CertifyTrustedNode {
        node: PublicKey,
        valid_until: u64,
    },
    /// Ends a certification. Attestations the node made at or after
    /// `incident_since_height` stop counting.
    RevokeTrustedNode {
        node: PublicKey,
        incident: String,
        incident_since_height: u64,
    },
    UpdateParams(Params),
    /// Binds a package name to a repository, or moves it to another one.
    BindName(BindName),
    /// Admits a builder key on the board's own authority (no sponsor limit).
    AdmitBuilder {
        builder: PublicKey,
    },
    /// Ends a builder's admission. Its regular attestations made at or after
    /// `since_height` stop counting.
    RemoveBuilder {
        builder: PublicKey,
        reason: String,
        since_height: u64,
    },
    /// Adds a validator, changes its voting power, or (power 0) removes it.
    /// CometBFT applies the change two blocks after the one that commits it.
    SetValidator {
        /// The validator's ed25519 consensus key (`priv_validator_key.json`).
        pub_key: PublicKey,
        /// Voting power: 0 removes the validator, otherwise
        /// `1..=MAX_VALIDATOR_POWER`.
        power: u64,
        /// Its beacon key (`beacon_key.json`): required to add a validator
        /// on a chain with beacon keys, refused on one without them and on
        /// a removal; an existing validator keeps its key (`None` or the same).
        vrf_public: Option<VrfPublic>,
    },
}

/// Most validators the set may hold.
pub const MAX_VALIDATORS: usize = 100;
/// Most voting power one validator may have; with [`MAX_VALIDATORS`] the
/// total stays far below CometBFT's limit (2^63 / 8).
pub const MAX_VALIDATOR_POWER: u64 = 1_000_000_000_000;

/// A validator's CometBFT address: the first 20 bytes of SHA-256 of its
/// ed25519 consensus key.
pub fn validator_address(pub_key: &PublicKey) -> Vec<u8> {
    Sha256::digest(pub_key.0)[..20].to_vec()
}

/// `validators`: the validator set as the ledger has sent it to CometBFT,
/// which uses it from two blocks after the last change.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
pub struct Validators {
    /// Each validator's consensus key and voting power, sorted by key.
    pub validators: Vec<(PublicKey, u64)>,
}

impl Validators {
    pub fn power_of(&self, pub_key: &PublicKey) -> Option<u64> {
        self.validators
            .binary_search_by(|(k, _)| k.cmp(pub_key))
            .ok()
            .map(|i| self.validators[i].1)
    }

    pub fn total_power(&self) -> u64 {
        self.validators
            .iter()
            .fold(0u64, |sum, (_, p)| sum.saturating_add(*p))
    }

    /// Sets `pub_key`'s power (0 removes it), keeping the order.
    pub fn set(&mut self, pub_key: PublicKey, power: u64) {
        match self.validators.binary_search_by(|(k, _)| k.cmp(&pub_key)) {
            Ok(i) if power == 0 => {
                self.validators.remove(i);
            }
            Ok(i) => self.validators[i].1 = power,
            Err(_) if power == 0 => {}
            Err(i) => self.validators.insert(i, (pub_key, power)),
        }
    }
}

/// One change of the validator set, as FinalizeBlock returns it to
/// CometBFT (power 0 removes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValidatorUpdate {
    pub pub_key: PublicKey,
    pub power: u64,
}

/// One board member's approval of a governance action.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Approval {
    pub board_key: PublicKey,
    #[serde(with = "sig_hex")]
    pub signature: [u8; 64],
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Governance {
    /// Must equal the ledger's governance sequence; approvals cannot be replayed.
    pub seq: u64,
    pub action: GovAction,
    pub approvals: Vec<Approval>,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub enum TxKind {
    RegisterBuilder(RegisterBuilder),
    RequestBuild(BuildRequest),
    Attest(Attest),
    TrustedImport(TrustedImport),
    Governance(Governance),
    BindName(BindName),
    AdmitBuilder(AdmitBuilder),
    ReportFailure(ReportFailure),
}

impl TxKind {
    pub fn name(&self) -> &'static str {
        match self {
            TxKind::RegisterBuilder(_) => "register_builder",
            TxKind::RequestBuild(_) => "request_build",
            TxKind::Attest(_) => "attest",
            TxKind::TrustedImport(_) => "trusted_import",
            TxKind::BindName(_) => "bind_name",
            TxKind::AdmitBuilder(_) => "admit_builder",
            TxKind::ReportFailure(_) => "report_failure",
            TxKind::Governance(g) => match g.action {
                GovAction::CertifyTrustedNode { .. } => "certify_trusted_node",
                GovAction::RevokeTrustedNode { .. } => "revoke_trusted_node",
                GovAction::UpdateParams(_) => "update_params",
                GovAction::BindName(_) => "gov_bind_name",
                GovAction::AdmitBuilder { .. } => "gov_admit_builder",
                GovAction::RemoveBuilder { .. } => "remove_builder",
                GovAction::SetValidator { .. } => "set_validator",
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct TxBody {
    /// Strictly greater than the signer's last committed nonce.
    pub nonce: u64,
    pub kind: TxKind,
}

/// The transaction envelope. `chain_id` travels in clear so that a tx for
/// another chain is rejected as such; it is also covered by the signature.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct SignedTx {
    pub chain_id: String,
    pub body: TxBody,
    pub signer: PublicKey,
    #[serde(with = "sig_hex")]
    pub signature: [u8; 64],
}

/// Integer thresholds only: no percentages, no floats in consensus. A
/// genesis file may omit any field; it then takes the default.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(default)]
pub struct Params {
    /// How many registered builders each request selects.
    pub builders_per_request: u16,
    /// How many selected regular builders must agree.
    pub quorum: u16,
    /// How many certified trusted nodes `Reproducible` needs besides the quorum.
    pub trusted_for_reproducible: u16,
    pub max_outputs: u16,
    /// Upper bound on any string field, in bytes.
    pub max_field_len: u32,
    /// Blocks a selected builder has to attest before it is replaced.
    pub attest_timeout_blocks: u32,
    /// Selection rounds (the first plus replacements) a request gets.
    pub max_attest_rounds: u16,
    /// Consecutive missed deadlines after which a builder leaves selection
    /// until it registers again.
    pub max_missed_deadlines: u16,
    /// Builders one certified trusted node may sponsor at a time.
    pub max_sponsored_builders: u16,
    /// Requests in their selection rounds at once, per signer, per package
    /// name and per ecosystem.
    pub max_open_per_signer: u16,
    pub max_open_per_package: u16,
    pub max_open_per_ecosystem: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            builders_per_request: 3,
            quorum: 2,
            trusted_for_reproducible: 2,
            max_outputs: 64,
            max_field_len: 1024,
            attest_timeout_blocks: 600,
            max_attest_rounds: 3,
            max_missed_deadlines: 3,
            max_sponsored_builders: 32,
            max_open_per_signer: 256,
            max_open_per_package: 8,
            max_open_per_ecosystem: 4096,
        }
    }
}

/// The governance board fixed at genesis.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Board {
    pub keys: Vec<PublicKey>,
    pub threshold: u16,
}

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    BorshSerialize,
    BorshDeserialize,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum TrustLevel {
    Pending,
    QuorumOnly,
    Trusted,
    Reproducible,
    Disputed,
}

impl TrustLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            TrustLevel::Pending => "pending",
            TrustLevel::QuorumOnly => "quorum_only",
            TrustLevel::Trusted => "trusted",
            TrustLevel::Reproducible => "reproducible",
            TrustLevel::Disputed => "disputed",
        }
    }
}

impl fmt::Display for TrustLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an attestation counts toward the trust level.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum AttesterRole {
    /// A selected regular builder.
    Regular,
    /// A trusted node certified at the attestation's height.
    Trusted,
    /// Recorded but not counted: a trusted node later revoked, or a builder
    /// later removed, for an incident covering it.
    Void,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct AttestationRecord {
    pub attester: PublicKey,
    pub role: AttesterRole,
    pub height: u64,
    pub outputs: Vec<Output>,
    pub build_env: String,
    pub log_digest: Digest,
    /// The attested provenance envelope, if the attester stored one.
    pub provenance: Option<Output>,
}

/// A builder's report that its build of the request failed. Never counted
/// toward a trust level.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct FailureRecord {
    pub builder: PublicKey,
    /// `Regular` (a selected builder) or `Trusted` (a certified trusted node).
    pub role: AttesterRole,
    pub height: u64,
    pub reason: FailureClass,
    pub log_digest: Option<Digest>,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub enum RequestOrigin {
    Build(BuildRequest),
    Import {
        package: PackageId,
        upstream: String,
    },
}

impl RequestOrigin {
    pub fn package(&self) -> &PackageId {
        match self {
            RequestOrigin::Build(r) => &r.package,
            RequestOrigin::Import { package, .. } => package,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct RequestRecord {
    pub id: Digest,
    pub origin: RequestOrigin,
    pub requester: PublicKey,
    pub height: u64,
    /// The builders whose attestations count as regular ones.
    pub selected: Vec<PublicKey>,
    pub attestations: Vec<AttestationRecord>,
    pub level: TrustLevel,
    /// Selection: the seed, how many draws it has used, and the builders
    /// that missed their deadline and were replaced.
    pub seed: Digest,
    pub draws: u32,
    pub replaced: Vec<PublicKey>,
    /// The current selection round (1 = the first).
    pub round: u16,
    /// The height at which the current round ends; `None` once the request
    /// has left its selection rounds.
    pub deadline: Option<u64>,
    /// Failed builds, at most one per builder ever selected (or certified
    /// trusted node); a builder that reports a failure never also attests.
    pub failures: Vec<FailureRecord>,
}

impl RequestRecord {
    /// A request or import as it is first recorded: no builders drawn yet,
    /// no attestations.
    pub fn new(
        id: Digest,
        origin: RequestOrigin,
        requester: PublicKey,
        height: u64,
    ) -> RequestRecord {
        RequestRecord {
            id,
            origin,
            requester,
            height,
            selected: Vec::new(),
            attestations: Vec::new(),
            level: TrustLevel::Pending,
            seed: Digest::default(),
            draws: 0,
            replaced: Vec::new(),
            round: 0,
            deadline: None,
            failures: Vec::new(),
        }
    }
}

#[derive(
    Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
pub struct PackageRecord {
    /// How many requests these coordinates have had; their ids are in
    /// pages of [`INDEX_PAGE`] at `package-requests/{page}/{eco}/{name}/{version}`,
    /// oldest first.
    pub request_count: u64,
}

/// `versions/{eco}/{name}`: the versions of a package name that have a
/// request or an import, in pages of [`INDEX_PAGE`] at
/// `version-list/{page}/{eco}/{name}`, first seen first.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
pub struct VersionsRecord {
    pub count: u64,
}

/// Ids per page of a paged index (`package-requests`, `artifact-requests`,
/// `attested`), so appending one costs O(1) whatever the history.
pub const INDEX_PAGE: u64 = 256;

/// The pages holding `count` entries of a paged index.
pub fn index_pages(count: u64) -> u64 {
    count.div_ceil(INDEX_PAGE)
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct StripeLayout {
    pub stripe_size: u32,
    pub stripe_root: Digest,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct ArtifactRecord {
    pub size: u64,
    /// The first [`MAX_LAYOUTS`] distinct stripe layouts attested for these bytes.
    pub layouts: Vec<StripeLayout>,
    /// How many requests attested these bytes; their ids are in pages at
    /// `artifact-requests/{page}/{sha256}`.
    pub request_count: u64,
}

/// Distinct stripe layouts an artifact record keeps.
pub const MAX_LAYOUTS: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct BuilderInfo {
    pub peer_id: String,
    /// The ecosystems it builds, sorted, each with its slot in
    /// `builder/{ecosystem}/{slot}`; empty while it is out of selection.
    pub ecosystems: Vec<String>,
    pub slots: Vec<u32>,
    pub registered_height: u64,
    /// Deadlines missed in a row (reset by an attestation).
    pub missed_deadlines: u16,
}

/// Who admitted a builder key.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sponsor {
    TrustedNode(PublicKey),
    Board,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Admission {
    pub sponsor: Sponsor,
    pub height: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Incident {
    pub description: String,
    pub since_height: u64,
    pub revoked_height: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Certification {
    pub valid_until: u64,
    pub certified_height: u64,
}

#[derive(
    Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
pub struct NodeRecord {
    /// Who admitted this key as a builder; `None` if never, or removed since.
    pub admission: Option<Admission>,
    pub builder: Option<BuilderInfo>,
    /// The builders this node sponsors (a certified trusted node's quota).
    pub sponsored: Vec<PublicKey>,
    /// The current certification; `None` if never certified or revoked since.
    pub certification: Option<Certification>,
    pub incidents: Vec<Incident>,
    /// How many requests this node attested (pages of `attested/{node}/{page}`).
    pub attestation_count: u64,
}

/// `void/queue`: attestations being voided, a bounded number of pages per
/// block, oldest job first.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct VoidJob {
    pub node: PublicKey,
    /// The role whose attestations stop counting (`Regular` or `Trusted`).
    pub role: AttesterRole,
    pub since_height: u64,
    pub next_page: u64,
    /// Pages of `attested/{node}/…` that existed when the job was queued.
    pub pages: u64,
}

impl NodeRecord {
    /// Whether the node's attestation at `block_time` counts as a trusted node's.
    pub fn is_certified_at(&self, block_time: u64) -> bool {
        self.certification
            .as_ref()
            .is_some_and(|c| block_time < c.valid_until)
    }
}

/// The ledger's initial state, carried as `app_state` in CometBFT's genesis.json.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenesisState {
    pub params: Params,
    pub board: Board,
    #[serde(default)]
    pub trusted_nodes: Vec<GenesisTrustedNode>,
    /// Builder keys admitted by the board at genesis.
    #[serde(default)]
    pub builders: Vec<PublicKey>,
    /// Each validator's VRF key for the selection beacon. Without any, the
    /// seed comes from block hashes, which a proposer can grind: for tests
    /// and single-operator networks only.
    #[serde(default)]
    pub beacon_keys: Vec<GenesisBeaconKey>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenesisBeaconKey {
    /// The validator's CometBFT address (hex, as in `priv_validator_key.json`).
    pub validator: String,
    /// Its sr25519 VRF public key (hex).
    pub vrf_public: String,
}

/// `beacon/keys`: which VRF key each validator address proposes with.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
pub struct BeaconKeys {
    /// Sorted by address.
    pub keys: Vec<(Vec<u8>, [u8; 32])>,
}

impl BeaconKeys {
    pub fn of(&self, address: &[u8]) -> Option<&[u8; 32]> {
        self.keys
            .binary_search_by(|(a, _)| a.as_slice().cmp(address))
            .ok()
            .map(|i| &self.keys[i].1)
    }

    /// Registers (or replaces) `address`'s key, keeping the order.
    pub fn set(&mut self, address: Vec<u8>, key: [u8; 32]) {
        match self
            .keys
            .binary_search_by(|(a, _)| a.as_slice().cmp(&address))
        {
            Ok(i) => self.keys[i].1 = key,
            Err(i) => self.keys.insert(i, (address, key)),
        }
    }

    pub fn remove(&mut self, address: &[u8]) {
        if let Ok(i) = self
            .keys
            .binary_search_by(|(a, _)| a.as_slice().cmp(address))
        {
            self.keys.remove(i);
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenesisTrustedNode {
    pub node: PublicKey,
    pub valid_until: u64,
}

mod sig_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(sig: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(sig))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let s = <String as Deserialize>::deserialize(d)?;
        let mut out = [0u8; 64];
        hex::decode_to_slice(&s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}
