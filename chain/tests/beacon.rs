//! Nobody picks the builders: a request's builders are drawn from the seed
//! of the block after it, and that seed is the next proposer's VRF output,
//! which it cannot choose. Each attack of `docs/protocol.md` (*Who picks
//! the builders*) tried against the ledger's proposal check and execution.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use pyrsia_chain::beacon::{next_seed, verify, Beacon, BeaconKey};
use pyrsia_chain::*;

mod common;
use common::{genesis, key, CHAIN};

const A: &[u8] = &[0xa; 20];
const B: &[u8] = &[0xb; 20];

struct Net {
    _dir: tempfile::TempDir,
    ledger: Ledger,
    height: u64,
    a: BeaconKey,
    b: BeaconKey,
}

impl Net {
    /// Validators A and B with beacon keys; builders 1..=6 registered for npm.
    fn new() -> Net {
        let (a, b) = (BeaconKey::from_seed([1; 32]), BeaconKey::from_seed([2; 32]));
        let mut g = genesis(10_000);
        g.beacon_keys = [(A, &a), (B, &b)]
            .iter()
            .map(|(address, k)| GenesisBeaconKey {
                validator: hex::encode_upper(address),
                vrf_public: hex::encode(k.public()),
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        ledger.init_chain(CHAIN, &g, 1).unwrap();
        let mut net = Net {
            _dir: dir,
            ledger,
            height: 0,
            a,
            b,
        };
        let regs: Vec<Vec<u8>> = (1..=6)
            .map(|i| {
                let kind = TxKind::RegisterBuilder(RegisterBuilder {
                    peer_id: format!("p{i}"),
                    ecosystems: vec!["npm".into()],
                });
                borsh::to_vec(&sign_tx(&key(i), CHAIN, TxBody { nonce: 1, kind })).unwrap()
            })
            .collect();
        net.propose(A, &regs);
        net
    }

    fn key_of(&self, proposer: &[u8]) -> &BeaconKey {
        if proposer == A {
            &self.a
        } else {
            &self.b
        }
    }

    /// What an honest proposer does: its beacon first, then `txs`; the
    /// proposal is checked as every validator checks it, then executed.
    fn propose(&mut self, proposer: &[u8], txs: &[Vec<u8>]) -> BlockResult {
        let height = self.height + 1;
        let beacon = self
            .ledger
            .beacon_tx(self.key_of(proposer), height)
            .unwrap()
            .unwrap();
        let mut block = vec![beacon];
        block.extend_from_slice(txs);
        self.ledger
            .check_proposal(&block, proposer, height)
            .unwrap();
        self.execute(proposer, &block)
    }

    fn execute(&mut self, proposer: &[u8], txs: &[Vec<u8>]) -> BlockResult {
        self.height += 1;
        let info = BlockInfo {
            height: self.height,
            time: 1_000,
            hash: vec![self.height as u8; 32],
            proposer: proposer.to_vec(),
        };
        let result = self.ledger.finalize_block(&info, txs).unwrap();
        self.ledger.commit().unwrap();
        result
    }

    fn seed(&self) -> Digest {
        let v = self.ledger.query("beacon/seed", 0, false).unwrap().value;
        borsh::from_slice(&v.unwrap()).unwrap()
    }

    fn request(&self, id: Digest) -> RequestRecord {
        let v = self
            .ledger
            .query(&format!("request/{id}"), 0, false)
            .unwrap()
            .value;
        borsh::from_slice(&v.unwrap()).unwrap()
    }
}

fn request(n: u32) -> Vec<u8> {
    let r = BuildRequest {
        package: PackageId {
            ecosystem: "npm".into(),
            name: format!("pkg{n}"),
            version: "1.0.0".into(),
        },
        source: SourceRef {
            repo_url: format!("https://example.org/pkg{n}"),
            commit: format!("{n:040x}"),
        },
        recipe: "npm".into(),
    };
    let nonce = u64::from(n) + 1;
    borsh::to_vec(&sign_tx(
        &key(50),
        CHAIN,
        TxBody {
            nonce,
            kind: TxKind::RequestBuild(r),
        },
    ))
    .unwrap()
}

fn request_id(n: u32) -> Digest {
    let tx: SignedTx = borsh::from_slice(&request(n)).unwrap();
    match tx.body.kind {
        TxKind::RequestBuild(r) => r.id(),
        _ => unreachable!(),
    }
}

#[test]
fn a_proposal_without_its_proposers_valid_beacon_is_refused() {
    let net = Net::new();
    let height = net.height + 1;
    let seed = net.seed();
    let honest = net.a.beacon(CHAIN, height, &seed);
    let check = |txs: &[Vec<u8>], proposer: &[u8]| net.ledger.check_proposal(txs, proposer, height);

    assert!(check(&[honest.to_tx(), request(0)], A).is_ok());
    // No beacon: the proposer would keep the old seed.
    assert!(check(&[request(0)], A).is_err());
    // Another validator's beacon, or one for another height or seed.
    assert!(check(&[net.b.beacon(CHAIN, height, &seed).to_tx()], A).is_err());
    assert!(check(&[net.a.beacon(CHAIN, height + 1, &seed).to_tx()], A).is_err());
    assert!(check(&[net.a.beacon(CHAIN, height, &Digest([9; 32])).to_tx()], A).is_err());
    // A chosen output with the honest proof.
    let mut forged = honest.clone();
    forged.pre_output[0] ^= 1;
    assert!(check(&[forged.to_tx()], A).is_err());
    // A proposer without a beacon key, or a second beacon later in the block.
    assert!(check(&[honest.to_tx()], &[0xc; 20]).is_err());
    assert!(check(&[honest.to_tx(), honest.to_tx()], A).is_err());
}

#[test]
fn the_proposer_cannot_choose_the_seed() {
    let net = Net::new();
    let height = net.height + 1;
    let seed = net.seed();
    // Proofs are randomised; the output is not.
    let one = net.a.beacon(CHAIN, height, &seed);
    let two = net.a.beacon(CHAIN, height, &seed);
    assert_ne!(one.proof, two.proof);
    let public = net.a.public();
    let r1 = verify(&public, CHAIN, height, &seed, &one).unwrap();
    let r2 = verify(&public, CHAIN, height, &seed, &two).unwrap();
    assert_eq!(r1, r2, "a VRF output is unique for a key and an input");
    // Another validator's output differs: withholding a block only hands
    // the draw to the next proposer.
    let other = verify(
        &net.b.public(),
        CHAIN,
        height,
        &seed,
        &net.b.beacon(CHAIN, height, &seed),
    );
    assert_ne!(other.unwrap(), r1);
    assert!(Beacon::from_tx(&one.to_tx()).is_some_and(|b| b == one));
}

#[test]
fn a_request_is_drawn_from_the_seed_of_the_next_proposers_beacon() {
    let mut net = Net::new();
    // A orders the request; it cannot know B's output for the next block.
    net.propose(A, &[request(0)]);
    let record = net.request(request_id(0));
    assert!(record.selected.is_empty() && record.deadline.is_none());
    let before = net.seed();
    let height = net.height + 1;
    let beacon = net.b.beacon(CHAIN, height, &before);
    let randomness = verify(&net.b.public(), CHAIN, height, &before, &beacon).unwrap();
    let result = net.propose(B, &[]);
    assert_eq!(net.seed(), next_seed(&before, &randomness));
    let record = net.request(request_id(0));
    assert_eq!(record.seed, net.seed());
    assert_eq!(record.selected.len(), 3);
    let event = result
        .events
        .iter()
        .find(|e| e.kind == "builders_selected")
        .unwrap();
    assert!(event
        .attributes
        .contains(&("request_id", request_id(0).to_string())));
}

#[test]
fn a_block_whose_beacon_fails_keeps_the_seed_on_every_node() {
    let mut net = Net::new();
    let before = net.seed();
    let height = net.height + 1;
    let mut forged = net.a.beacon(CHAIN, height, &before);
    forged.pre_output[0] ^= 1;
    // Only reachable if 2/3 accepted it; execution must still agree.
    let result = net.execute(A, &[forged.to_tx(), request(0)]);
    assert_eq!(result.txs.len(), 2);
    assert!(result.txs[0].log.contains("beacon ignored"));
    assert_eq!(result.txs[1].code, 0, "{}", result.txs[1].log);
    assert_eq!(net.seed(), before);
}
