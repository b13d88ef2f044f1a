//! Why a transaction is rejected. Each reason has its own stable, non-zero
//! ABCI code (see `docs/protocol.md`); the log is the `Display` text.

use crate::store::StoreError;
use crate::types::Digest;

/// Stable result codes, shared by CheckTx and FinalizeBlock.
pub mod code {
    pub const OK: u32 = 0;
    pub const DECODE: u32 = 1;
    pub const WRONG_CHAIN: u32 = 2;
    pub const BAD_SIGNATURE: u32 = 3;
    pub const STALE_NONCE: u32 = 4;
    pub const INVALID_FIELD: u32 = 5;
    pub const UNKNOWN_REQUEST: u32 = 6;
    pub const DUPLICATE_REQUEST: u32 = 7;
    pub const DUPLICATE_ATTESTATION: u32 = 8;
    pub const NOT_SELECTED: u32 = 9;
    pub const NOT_TRUSTED_NODE: u32 = 10;
    pub const BELOW_THRESHOLD: u32 = 11;
    pub const BAD_APPROVAL: u32 = 12;
    pub const GOV_SEQUENCE: u32 = 13;
    pub const UNKNOWN_NODE: u32 = 14;
    pub const TOO_LARGE: u32 = 15;
    pub const NAME_BOUND_ELSEWHERE: u32 = 16;
    pub const VERSION_RELEASED: u32 = 17;
    pub const RECIPE_MISMATCH: u32 = 18;
    pub const NAME_ALREADY_BOUND: u32 = 19;
    pub const NOT_ADMITTED: u32 = 20;
    pub const ROLE_CONFLICT: u32 = 21;
    pub const SPONSOR_LIMIT: u32 = 22;
    pub const TOO_MANY_OPEN: u32 = 23;
    pub const DUPLICATE_FAILURE: u32 = 24;
    pub const ANSWER_CONFLICT: u32 = 25;
    pub const NONCE_NOT_NEXT: u32 = 26;
    pub const UNKNOWN_VALIDATOR: u32 = 27;
    pub const VALIDATOR_SET: u32 = 28;
    pub const INTERNAL: u32 = 100;
}

#[derive(Debug, thiserror::Error)]
pub enum TxError {
    #[error("undecodable transaction: {0}")]
    Decode(String),
    #[error("transaction is for chain {got:?}, this is {expected:?}")]
    WrongChain { expected: String, got: String },
    #[error("signature does not verify for signer {0}")]
    BadSignature(String),
    #[error("stale nonce {got}: the signer's last committed nonce is {last}")]
    StaleNonce { last: u64, got: u64 },
    #[error("nonce {got} does not extend this node's mempool: the signer's next nonce here is {expected} (after its last committed nonce and those already admitted)")]
    NonceNotNext { expected: u64, got: u64 },
    #[error("invalid field: {0}")]
    InvalidField(String),
    #[error("no build request {0}")]
    UnknownRequest(Digest),
    #[error("build request {0} already exists")]
    DuplicateRequest(Digest),
    #[error("{attester} already attested request {request}")]
    DuplicateAttestation { attester: String, request: Digest },
    #[error(
        "{attester} was not selected for request {request} and is not a certified trusted node"
    )]
    NotSelected { attester: String, request: Digest },
    #[error("{0} is not a certified trusted node")]
    NotTrustedNode(String),
    #[error("governance action has {have} valid board approvals, needs {need}")]
    BelowThreshold { have: usize, need: usize },
    #[error("bad board approval: {0}")]
    BadApproval(String),
    #[error("governance sequence is {expected}, transaction carries {got}")]
    GovSequence { expected: u64, got: u64 },
    #[error("unknown node {0}")]
    UnknownNode(String),
    #[error("transaction of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("{package} is bound to {bound}, not {requested}; moving a name takes governance")]
    NameBoundElsewhere {
        package: String,
        bound: String,
        requested: String,
    },
    #[error("{package} is released from {released}; it cannot be built from {requested}")]
    VersionReleased {
        package: String,
        released: String,
        requested: String,
    },
    #[error("recipe {recipe:?} does not build ecosystem {ecosystem:?} (expected {expected:?})")]
    RecipeMismatch {
        ecosystem: String,
        recipe: String,
        expected: String,
    },
    #[error("{name} is already bound to {bound}; moving a name takes governance")]
    NameAlreadyBound { name: String, bound: String },
    #[error("{0} is not an admitted builder; a certified trusted node (`pyrsia tx admit-builder`) or the board must admit it first")]
    NotAdmitted(String),
    #[error("{key} is {is}; a key is never both a regular builder and a certified trusted node")]
    RoleConflict { key: String, is: &'static str },
    #[error("{sponsor} already sponsors {limit} builders, its limit")]
    SponsorLimit { sponsor: String, limit: u16 },
    #[error(
        "{scope} already has {limit} requests in their selection rounds; retry when one closes"
    )]
    TooManyOpen { scope: String, limit: u32 },
    #[error("{builder} already reported a failure of request {request}")]
    DuplicateFailure { builder: String, request: Digest },
    #[error("{builder} already {had} request {request}; a builder either attests a request or reports its failure, never both")]
    AnswerConflict {
        builder: String,
        request: Digest,
        had: &'static str,
    },
    #[error("{0} is not a validator")]
    UnknownValidator(String),
    #[error("validator set: {0}")]
    ValidatorSet(String),
    #[error("internal state error: {0}")]
    Store(#[from] StoreError),
}

impl TxError {
    pub fn code(&self) -> u32 {
        match self {
            TxError::Decode(_) => code::DECODE,
            TxError::WrongChain { .. } => code::WRONG_CHAIN,
            TxError::BadSignature(_) => code::BAD_SIGNATURE,
            TxError::StaleNonce { .. } => code::STALE_NONCE,
            TxError::NonceNotNext { .. } => code::NONCE_NOT_NEXT,
            TxError::InvalidField(_) => code::INVALID_FIELD,
            TxError::UnknownRequest(_) => code::UNKNOWN_REQUEST,
            TxError::DuplicateRequest(_) => code::DUPLICATE_REQUEST,
            TxError::DuplicateAttestation { .. } => code::DUPLICATE_ATTESTATION,
            TxError::NotSelected { .. } => code::NOT_SELECTED,
            TxError::NotTrustedNode(_) => code::NOT_TRUSTED_NODE,
            TxError::BelowThreshold { .. } => code::BELOW_THRESHOLD,
            TxError::BadApproval(_) => code::BAD_APPROVAL,
            TxError::GovSequence { .. } => code::GOV_SEQUENCE,
            TxError::UnknownNode(_) => code::UNKNOWN_NODE,
            TxError::TooLarge { .. } => code::TOO_LARGE,
            TxError::NameBoundElsewhere { .. } => code::NAME_BOUND_ELSEWHERE,
            TxError::VersionReleased { .. } => code::VERSION_RELEASED,
            TxError::RecipeMismatch { .. } => code::RECIPE_MISMATCH,
            TxError::NameAlreadyBound { .. } => code::NAME_ALREADY_BOUND,
            TxError::NotAdmitted(_) => code::NOT_ADMITTED,
            TxError::RoleConflict { .. } => code::ROLE_CONFLICT,
            TxError::SponsorLimit { .. } => code::SPONSOR_LIMIT,
            TxError::TooManyOpen { .. } => code::TOO_MANY_OPEN,
            TxError::DuplicateFailure { .. } => code::DUPLICATE_FAILURE,
            TxError::AnswerConflict { .. } => code::ANSWER_CONFLICT,
            TxError::UnknownValidator(_) => code::UNKNOWN_VALIDATOR,
            TxError::ValidatorSet(_) => code::VALIDATOR_SET,
            TxError::Store(_) => code::INTERNAL,
        }
    }
}
