//! Pyrsia's ledger logic: deterministic, and the only place consensus rules live.
//!
//! - [`types`]: transactions and state records (borsh);
//! - [`crypto`]: keys, signing bytes, single and batch verification;
//! - [`trust`]: trust evaluation and builder selection (pure);
//! - [`ledger`]: the state machine over the authenticated [`store`];
//! - [`proof`]: client-side verification of query proofs.

pub mod beacon;
pub mod crypto;
pub mod error;
pub mod ledger;
pub mod proof;
pub mod render;
pub mod state_key;
pub mod store;
pub mod trust;
pub mod types;

pub use crypto::{sign_tx, Keypair};
pub use error::{code, TxError};
pub use ledger::{
    BlockInfo, BlockResult, Event, Ledger, LedgerError, LedgerReader, QueryAnswer, QueryError,
    TxResult,
};
pub use types::*;
