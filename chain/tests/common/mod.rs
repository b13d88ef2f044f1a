#![allow(dead_code)]
//! What the ledger tests share: deterministic keys and one genesis.

use pyrsia_chain::*;

/// Key `i`: builders admitted at genesis 1 to 30, other builders and
/// requesters up to 99, trusted nodes 100 and 101, the board 200 to 202.
pub fn key(i: u8) -> Keypair {
    Keypair::from_seed([i; 32])
}

/// Default parameters, a board of keys 200..=202 with threshold 2, and
/// trusted nodes 100 and 101 certified until `valid_until`, builders 1 to 30
/// admitted.
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
        builders: (1..=30).map(|i| key(i).public()).collect(),
        beacon_keys: Vec::new(),
    }
}

pub const CHAIN: &str = "test-chain";

/// A ledger in a temporary directory, one transaction per block (block
/// time 1,000, block hash the height); trusted nodes, builders and board of
/// [`genesis`].
pub struct Chain {
    _dir: tempfile::TempDir,
    pub ledger: Ledger,
    pub height: u64,
    nonces: std::collections::BTreeMap<PublicKey, u64>,
    gov_seq: u64,
}

#[allow(dead_code)]
impl Chain {
    pub fn new(genesis: GenesisState) -> Chain {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        ledger.init_chain(CHAIN, &genesis, 1).unwrap();
        Chain {
            _dir: dir,
            ledger,
            height: 0,
            nonces: Default::default(),
            gov_seq: 0,
        }
    }

    /// Signs `kind` with `signer`'s next nonce, as one block.
    pub fn run(&mut self, signer: &Keypair, kind: TxKind) -> TxResult {
        self.block_of(signer, kind).txs.remove(0)
    }

    /// Like [`Chain::run`], returning the whole block's result.
    pub fn block_of(&mut self, signer: &Keypair, kind: TxKind) -> BlockResult {
        let nonce = self.nonces.entry(signer.public()).or_insert(0);
        *nonce += 1;
        let tx = borsh::to_vec(&sign_tx(
            signer,
            CHAIN,
            TxBody {
                nonce: *nonce,
                kind,
            },
        ))
        .unwrap();
        self.block(&[tx])
    }

    pub fn block(&mut self, txs: &[Vec<u8>]) -> BlockResult {
        self.height += 1;
        let info = BlockInfo {
            proposer: Vec::new(),
            height: self.height,
            time: 1_000,
            hash: self.height.to_be_bytes().to_vec(),
        };
        let result = self.ledger.finalize_block(&info, txs).unwrap();
        self.ledger.commit().unwrap();
        result
    }

    /// A block without transactions: only the upkeep runs.
    pub fn idle(&mut self) -> BlockResult {
        self.block(&[])
    }

    /// A governance action approved by board members 200 and 201.
    pub fn gov(&mut self, action: GovAction) -> TxResult {
        let approvals = vec![
            crypto::approve(&key(200), CHAIN, self.gov_seq, &action),
            crypto::approve(&key(201), CHAIN, self.gov_seq, &action),
        ];
        let kind = TxKind::Governance(Governance {
            seq: self.gov_seq,
            action,
            approvals,
        });
        let result = self.run(&key(60), kind);
        if result.code == 0 {
            self.gov_seq += 1;
        }
        result
    }

    pub fn get<T: borsh::BorshDeserialize>(&self, path: &str) -> Option<T> {
        let answer = self.ledger.query(path, 0, false).unwrap();
        answer.value.map(|v| borsh::from_slice(&v).unwrap())
    }

    pub fn request(&self, id: Digest) -> RequestRecord {
        self.get(&format!("request/{id}")).unwrap()
    }

    pub fn node(&self, key: PublicKey) -> NodeRecord {
        self.get(&format!("node/{key}")).unwrap_or_default()
    }
}
