//! Library half of the `pyrsia` binary: the ledger RPC client, shared with tests and benchmarks.

pub mod rpc;
