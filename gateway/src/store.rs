//! The gateway's store sidecar client: the typed store-API client of
//! [`pyrsia_ledger_client::store`]. The gateway streams attested artifacts
//! through it, pinned (the store fetches missing stripes from peers and
//! checks each against the ledger's stripe root, and the whole file against
//! its SHA-256), and stores imported files.

use std::path::PathBuf;

use hyper::Body;
pub use pyrsia_ledger_client::store::{put_output, StoreClient, StoreError};

use crate::catalog::Artifact;

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

/// The bytes of `artifact`, pinned, fetched by the first of its attested
/// layouts that the store can start.
pub async fn stream(store: &StoreClient, artifact: &Artifact) -> Result<Body, StoreError> {
    pyrsia_ledger_client::store::stream_output_by(store, &artifact.output, &artifact.layouts, true)
        .await
}
