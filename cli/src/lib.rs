//! Library half of the `pyrsia` binary: the ledger RPC client and the block
//! follower, shared with tests and benchmarks.

pub mod follow;
pub mod rpc;
