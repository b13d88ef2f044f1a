//! The client side of the Pyrsia ledger, shared by every role that talks to
//! it (the CLI, builders, the gateway): the RPC client, the block follower,
//! and the light client that verifies what a node answers from a trust
//! anchor instead of believing it.

pub mod follow;
pub mod light;
pub mod rpc;
pub mod verified;
