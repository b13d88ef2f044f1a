//! The client side of the Pyrsia ledger, shared by every role that talks to
//! it (the CLI, builders, the gateway): the RPC client, the block follower,
//! the light client that verifies what a node answers from a trust anchor
//! instead of believing it, and the typed client of the store sidecar's
//! control API ([`store`]).

pub mod follow;
pub mod light;
pub mod rpc;
pub mod store;
pub mod verified;
