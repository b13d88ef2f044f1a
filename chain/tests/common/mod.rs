//! What the ledger tests share: deterministic keys and one genesis.

use pyrsia_chain::*;

/// Key `i`: builders and requesters below 100, trusted nodes 100 and 101,
/// the board 200 to 202.
pub fn key(i: u8) -> Keypair {
    Keypair::from_seed([i; 32])
}

/// Default parameters, a board of keys 200..=202 with threshold 2, and
/// trusted nodes 100 and 101 certified until `valid_until`.
pub fn genesis(valid_until: u64) -> GenesisState {
    GenesisState {
        params: Params::default(),
        board: Board {
            keys: (200..203).map(|i| key(i).public()).collect(),
            threshold: 2,
        },
        trusted_nodes: [100, 101]
            .map(|i| GenesisTrustedNode {
                node: key(i).public(),
                valid_until,
            })
            .to_vec(),
    }
}
