//! The gateway's store sidecar client: the typed store-API client of
//! [`pyrsia_ledger_client::store`]. The gateway streams attested artifacts
//! through it, pinned (the store fetches missing stripes from peers and
//! checks each against the ledger's stripe root, and the whole file against
//! its SHA-256), and stores imported files.

use std::path::PathBuf;

pub use pyrsia_ledger_client::store::{put_output, stream_output, StoreClient, StoreError};

/// A client of the store at `base`, sending the token in `token_file` (read
/// at each call that changes the store: the store may create it after the
/// gateway started).
pub fn client(base: &str, token_file: Option<PathBuf>) -> StoreClient {
    let c = StoreClient::new(base);
    match token_file {
        Some(p) => c.with_token_file(p),
        None => c,
    }
}
