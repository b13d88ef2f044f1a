//! Validator-set governance (`GovAction::SetValidator`) attacked against
//! the ledger: every rule refuses with its own code, FinalizeBlock hands
//! CometBFT exactly the block's net changes, and the beacon keys follow the
//! set with CometBFT's delay.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use pyrsia_chain::beacon::BeaconKey;
use pyrsia_chain::crypto::{approve, valid_public_key};
use pyrsia_chain::*;

mod common;
use common::{genesis, key, CHAIN};

/// Validator `i`'s consensus key (seeds 150..) and beacon key.
fn validator(i: u8) -> (Keypair, BeaconKey) {
    (key(150 + i), BeaconKey::from_seed([150 + i; 32]))
}

fn vrf(b: &BeaconKey) -> VrfPublic {
    VrfPublic(b.public())
}

struct Net {
    _dir: tempfile::TempDir,
    ledger: Ledger,
    height: u64,
    nonce: u64,
    seq: u64,
}

impl Net {
    /// Validators 0..n at power 10, each with its beacon key (or none, for
    /// a chain without beacon keys).
    fn new(n: u8, beacons: bool) -> Net {
        let mut g = genesis(10_000);
        let mut set = Vec::new();
        for i in 0..n {
            let (k, b) = validator(i);
            set.push((k.public(), 10));
            if beacons {
                g.beacon_keys.push(GenesisBeaconKey {
                    validator: hex::encode_upper(validator_address(&k.public())),
                    vrf_public: hex::encode(b.public()),
                });
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        ledger
            .init_chain_with_validators(CHAIN, &g, 1, &set)
            .unwrap();
        Net {
            _dir: dir,
            ledger,
            height: 0,
            nonce: 0,
            seq: 0,
        }
    }

    /// A governance transaction for sequence `seq`, approved by `members`.
    fn gov_tx(&mut self, seq: u64, action: &GovAction, members: &[u8]) -> Vec<u8> {
        let approvals = members
            .iter()
            .map(|m| approve(&key(*m), CHAIN, seq, action))
            .collect();
        self.nonce += 1;
        let kind = TxKind::Governance(Governance {
            seq,
            action: action.clone(),
            approvals,
        });
        borsh::to_vec(&sign_tx(
            &key(60),
            CHAIN,
            TxBody {
                nonce: self.nonce,
                kind,
            },
        ))
        .unwrap()
    }

    /// `actions` approved by the board's threshold, in one block.
    fn gov_block(&mut self, actions: &[GovAction]) -> BlockResult {
        let txs: Vec<Vec<u8>> = actions
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let seq = self.seq + i as u64;
                self.gov_tx(seq, a, &[200, 201])
            })
            .collect();
        let result = self.block(&[], &txs);
        self.seq += result.txs.iter().filter(|t| t.code == 0).count() as u64;
        result
    }

    /// One action approved by the board's threshold, as a block; its code.
    fn gov(&mut self, action: GovAction) -> (u32, Vec<ValidatorUpdate>) {
        let r = self.gov_block(&[action]);
        (r.txs[0].code, r.validator_updates)
    }

    fn block(&mut self, proposer: &[u8], txs: &[Vec<u8>]) -> BlockResult {
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

    fn get<T: borsh::BorshDeserialize>(&self, path: &str) -> Option<T> {
        let v = self.ledger.query(path, 0, false).unwrap().value;
        v.map(|v| borsh::from_slice(&v).unwrap())
    }

    fn validators(&self) -> Validators {
        self.get("validators").unwrap()
    }

    fn beacon_keys(&self) -> BeaconKeys {
        self.get("beacon/keys").unwrap_or_default()
    }
}

fn set(i: u8, power: u64, with_vrf: bool) -> GovAction {
    let (k, b) = validator(i);
    GovAction::SetValidator {
        pub_key: k.public(),
        power,
        vrf_public: with_vrf.then(|| vrf(&b)),
    }
}

fn update(i: u8, power: u64) -> ValidatorUpdate {
    ValidatorUpdate {
        pub_key: validator(i).0.public(),
        power,
    }
}

#[test]
fn genesis_loads_the_validators_and_refuses_a_set_the_beacon_keys_do_not_match() {
    let net = Net::new(4, true);
    let set = net.validators();
    assert_eq!(set.validators.len(), 4);
    assert_eq!(set.total_power(), 40);
    assert_eq!(net.beacon_keys().keys.len(), 4);

    // A validator without a beacon key on a chain with them could never
    // propose; a beacon key of a non-validator follows nobody.
    let mut g = genesis(10_000);
    for i in 0..2 {
        let (k, b) = validator(i);
        g.beacon_keys.push(GenesisBeaconKey {
            validator: hex::encode(validator_address(&k.public())),
            vrf_public: hex::encode(b.public()),
        });
    }
    let [v0, v1, v2] = [0, 1, 2].map(|i| validator(i).0.public());
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(dir.path()).unwrap();
    let mut refused = |set: &[(PublicKey, u64)], why: &str| {
        let err = ledger
            .init_chain_with_validators(CHAIN, &g, 1, set)
            .unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
    };
    refused(&[(v0, 10), (v2, 10)], "no beacon key");
    refused(&[(v1, 10)], "not a validator");
    refused(&[(v0, 0), (v1, 10)], "power 0");
    refused(&[(v0, MAX_VALIDATOR_POWER + 1), (v1, 10)], "power");
    refused(&[(v0, 10), (v0, 10), (v1, 10)], "twice");
    ledger
        .init_chain_with_validators(CHAIN, &g, 1, &[(v0, 10), (v1, 10)])
        .unwrap();
}

#[test]
fn below_threshold_strangers_and_replays_are_refused() {
    let mut net = Net::new(4, true);
    let action = set(4, 10, true);
    // One board member is below the threshold of two.
    let tx = net.gov_tx(0, &action, &[200]);
    let r = net.block(&[], &[tx]);
    assert_eq!(r.txs[0].code, code::BELOW_THRESHOLD);
    assert!(r.validator_updates.is_empty());
    // A key off the board (a validator's own, say) does not approve.
    let tx = net.gov_tx(0, &action, &[200, 150]);
    assert_eq!(net.block(&[], &[tx]).txs[0].code, code::BAD_APPROVAL);

    let tx = net.gov_tx(0, &action, &[200, 201]);
    let r = net.block(&[], std::slice::from_ref(&tx));
    assert_eq!(r.txs[0].code, 0);
    assert_eq!(r.validator_updates, vec![update(4, 10)]);
    // The same approvals again: the sequence has moved on.
    let replay = {
        let signed: SignedTx = borsh::from_slice(&tx).unwrap();
        let TxKind::Governance(g) = signed.body.kind else {
            unreachable!()
        };
        borsh::to_vec(&sign_tx(
            &key(61),
            CHAIN,
            TxBody {
                nonce: 1,
                kind: TxKind::Governance(g),
            },
        ))
        .unwrap()
    };
    let r = net.block(&[], &[replay]);
    assert_eq!(r.txs[0].code, code::GOV_SEQUENCE);
    assert!(r.validator_updates.is_empty());
    // Re-signed for the next sequence by one member only: still below.
    let tx = net.gov_tx(1, &set(0, 0, false), &[201]);
    assert_eq!(net.block(&[], &[tx]).txs[0].code, code::BELOW_THRESHOLD);
    assert_eq!(net.validators().validators.len(), 5);
}

#[test]
fn bad_power_keys_and_beacon_keys_are_refused() {
    let mut net = Net::new(4, true);
    let refused = |net: &mut Net, action: GovAction, want: u32| {
        let (code, updates) = net.gov(action.clone());
        assert_eq!(code, want, "{action:?}");
        assert!(updates.is_empty());
    };
    refused(
        &mut net,
        set(4, MAX_VALIDATOR_POWER + 1, true),
        code::INVALID_FIELD,
    );
    refused(&mut net, set(0, u64::MAX, false), code::INVALID_FIELD);
    let not_a_point = (0u8..=255)
        .map(|i| PublicKey([i; 32]))
        .find(|k| !valid_public_key(k))
        .unwrap();
    refused(
        &mut net,
        GovAction::SetValidator {
            pub_key: not_a_point,
            power: 10,
            vrf_public: Some(vrf(&validator(4).1)),
        },
        code::INVALID_FIELD,
    );
    // A new validator on a beacon chain needs its beacon key ...
    refused(&mut net, set(4, 10, false), code::INVALID_FIELD);
    // ... its own, not another validator's ...
    refused(
        &mut net,
        GovAction::SetValidator {
            pub_key: validator(4).0.public(),
            power: 10,
            vrf_public: Some(vrf(&validator(0).1)),
        },
        code::INVALID_FIELD,
    );
    // ... and a valid one.
    let not_a_vrf_point = (0u8..=255)
        .map(|i| [i; 32])
        .find(|k| !pyrsia_chain::beacon::valid_public(k))
        .unwrap();
    refused(
        &mut net,
        GovAction::SetValidator {
            pub_key: validator(4).0.public(),
            power: 10,
            vrf_public: Some(VrfPublic(not_a_vrf_point)),
        },
        code::INVALID_FIELD,
    );
    // A removal carries no beacon key; an existing validator keeps its own.
    refused(&mut net, set(0, 0, true), code::INVALID_FIELD);
    refused(
        &mut net,
        GovAction::SetValidator {
            pub_key: validator(0).0.public(),
            power: 20,
            vrf_public: Some(vrf(&validator(4).1)),
        },
        code::INVALID_FIELD,
    );
    assert_eq!(net.validators().total_power(), 40);
    assert_eq!(net.get::<u64>("gov/seq"), Some(0));

    // On a chain without beacon keys, a new validator may not bring one
    // (it would turn every other proposer's blocks invalid).
    let mut plain = Net::new(2, false);
    refused(&mut plain, set(2, 10, true), code::INVALID_FIELD);
    let (code, updates) = plain.gov(set(2, 10, false));
    assert_eq!(code, 0);
    assert_eq!(updates, vec![update(2, 10)]);
    assert!(plain.beacon_keys().keys.is_empty());
}

#[test]
fn removing_an_unknown_or_the_last_validator_is_refused() {
    let mut net = Net::new(2, true);
    let (code, _) = net.gov(set(7, 0, false));
    assert_eq!(code, code::UNKNOWN_VALIDATOR);
    let (code, updates) = net.gov(set(0, 0, false));
    assert_eq!(code, 0);
    assert_eq!(updates, vec![update(0, 0)]);
    // Removing it again: it is no longer a validator.
    let (code, _) = net.gov(set(0, 0, false));
    assert_eq!(code, code::UNKNOWN_VALIDATOR);
    let (code, updates) = net.gov(set(1, 0, false));
    assert_eq!(code, code::VALIDATOR_SET);
    assert!(updates.is_empty());
    assert_eq!(
        net.validators().validators,
        vec![(validator(1).0.public(), 10)]
    );

    // A chain initialised without its validator set cannot govern it.
    let mut g = common::Chain::new(genesis(10_000));
    assert_eq!(g.gov(set(0, 10, false)).code, code::VALIDATOR_SET);
}

#[test]
fn the_set_is_bounded() {
    let mut net = Net::new(1, false);
    let adds: Vec<GovAction> = (1..MAX_VALIDATORS as u8)
        .map(|i| GovAction::SetValidator {
            pub_key: key(i).public(),
            power: 1,
            vrf_public: None,
        })
        .collect();
    for chunk in adds.chunks(20) {
        let r = net.gov_block(chunk);
        assert!(r.txs.iter().all(|t| t.code == 0));
        assert_eq!(r.validator_updates.len(), chunk.len());
    }
    assert_eq!(net.validators().validators.len(), MAX_VALIDATORS);
    let (code, _) = net.gov(GovAction::SetValidator {
        pub_key: key(240).public(),
        power: 1,
        vrf_public: None,
    });
    assert_eq!(code, code::VALIDATOR_SET);
}

#[test]
fn finalize_block_emits_exactly_the_net_changes_of_the_block() {
    let mut net = Net::new(4, true);
    // Nothing changed: nothing sent.
    assert!(net.block(&[], &[]).validator_updates.is_empty());
    // Added, then re-weighted in the same block: one update, the last power.
    let r = net.gov_block(&[set(4, 10, true), set(4, 25, false)]);
    assert!(r.txs.iter().all(|t| t.code == 0), "{:?}", r.txs);
    assert_eq!(r.validator_updates, vec![update(4, 25)]);
    // Removed and added back at the same power: no net change, no update.
    let r = net.gov_block(&[set(1, 0, false), set(1, 10, true)]);
    assert!(r.txs.iter().all(|t| t.code == 0), "{:?}", r.txs);
    assert!(r.validator_updates.is_empty());
    // Two validators in one block, in key order.
    let r = net.gov_block(&[set(3, 0, false), set(2, 30, false)]);
    let mut want = vec![update(3, 0), update(2, 30)];
    want.sort_by_key(|u| u.pub_key);
    assert_eq!(r.validator_updates, want);
    // A refused action changes nothing.
    let r = net.gov_block(&[set(3, 0, false)]);
    assert_eq!(r.txs[0].code, code::UNKNOWN_VALIDATOR);
    assert!(r.validator_updates.is_empty());
    assert_eq!(net.validators().total_power(), 10 + 10 + 30 + 25);
}

#[test]
fn beacon_keys_follow_the_set_with_cometbfts_delay() {
    let mut net = Net::new(2, true);
    let (v0, b0) = validator(0);
    let (v1, b1) = validator(1);
    let (v2, b2) = validator(2);
    let a0 = validator_address(&v0.public());
    let a1 = validator_address(&v1.public());
    let a2 = validator_address(&v2.public());
    // Added at H: its key counts at once (it proposes from H+2 on).
    let r = net.gov_block(&[set(2, 10, true)]);
    assert_eq!(r.txs[0].code, 0);
    assert_eq!(net.beacon_keys().of(&a2), Some(&b2.public()));

    // Removed at H: CometBFT still lets it propose H+1, so its beacon still
    // counts for H+1 ...
    let r = net.gov_block(&[set(0, 0, false)]);
    assert_eq!(r.txs[0].code, 0);
    assert!(net.beacon_keys().of(&a0).is_some());
    let h1 = net.height + 1;
    let beacon = net.ledger.beacon_tx(&b0, h1).unwrap().unwrap();
    net.ledger.check_proposal(&[&beacon], &a0, h1).unwrap();
    net.block(&a0, &[beacon]);
    // ... and from H+2, when it has left the set, it no longer does.
    assert!(net.beacon_keys().of(&a0).is_none());
    assert!(net.get::<Vec<Vec<u8>>>("beacon/retiring").is_none());
    let h2 = net.height + 1;
    let beacon = net.ledger.beacon_tx(&b0, h2).unwrap();
    let refused = match beacon {
        Some(b) => net.ledger.check_proposal(&[&b], &a0, h2).is_err(),
        None => true,
    };
    assert!(refused, "a removed validator's beacon still counts");
    // The others' keep counting.
    let beacon = net.ledger.beacon_tx(&b1, h2).unwrap().unwrap();
    net.ledger.check_proposal(&[&beacon], &a1, h2).unwrap();
    net.block(&a1, &[beacon]);
    let h3 = net.height + 1;
    let beacon = net.ledger.beacon_tx(&b2, h3).unwrap().unwrap();
    net.ledger.check_proposal(&[&beacon], &a2, h3).unwrap();
    assert_eq!(net.beacon_keys().keys.len(), 2);
}

#[test]
fn the_same_actions_give_the_same_app_hashes_and_updates() {
    let run = || {
        let mut net = Net::new(3, true);
        let mut out = Vec::new();
        for actions in [
            vec![set(3, 10, true)],
            vec![],
            vec![set(0, 0, false), set(3, 40, false)],
            vec![],
            vec![set(0, 5, true)],
        ] {
            let r = net.gov_block(&actions);
            out.push((r.app_hash, r.validator_updates));
        }
        out
    };
    let (a, b) = (run(), run());
    assert_eq!(a, b);
    let changed: Vec<bool> = a.iter().map(|(_, u)| !u.is_empty()).collect();
    assert_eq!(changed, [true, false, true, false, true]);
}
