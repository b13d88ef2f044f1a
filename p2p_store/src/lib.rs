//! Pyrsia store sidecar: a content-addressed stripe store, a libp2p node
//! that serves manifests and stripes, a multi-peer verified downloader and a
//! local control API. See README.md for the wire protocol and disk layout.

pub mod api;
mod bufpool;
pub mod cli;
pub mod client;
pub mod download;
pub mod limiter;
pub mod manifest;
pub mod node;
mod owner_only;
pub mod protocol;
pub mod providers;
pub mod store;
pub mod tls;
mod twin_sha;

pub use bufpool::StripeBuf;
pub use client::{ClientError, Layout, StoreClient};
pub use download::{DownloadHandle, FetchError, FetchRequest, Phase, Progress};
pub use manifest::{Digest, Manifest, DEFAULT_STRIPE_SIZE};
pub use node::{Config, ConnectionLimits, Node, NodeError, Status};
pub use providers::ProviderLimits;
pub use store::{PutResult, Store, StoreError};
