//! The chain's signature checks (ed25519-zebra, ZIP-215) accept exactly the
//! signatures ed25519-consensus, which the chain used before, accepts: on
//! ordinary signatures, forgeries, and the edge cases where ed25519
//! implementations disagree (small-order and mixed-order points,
//! non-canonical point encodings, non-canonical scalars). Keys and
//! signatures made from a seed are the same too, so key files still work.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
use curve25519_dalek::edwards::CompressedEdwardsY;
use pyrsia_chain::crypto::{verify, verify_batch};
use pyrsia_chain::{Keypair, PublicKey};

fn consensus_verify(key: &[u8; 32], sig: &[u8; 64], msg: &[u8]) -> bool {
    ed25519_consensus::VerificationKey::try_from(*key)
        .and_then(|vk| vk.verify(&ed25519_consensus::Signature::from(*sig), msg))
        .is_ok()
}

/// `p + y` for small `y`, little-endian: a non-canonical encoding of `y`.
fn non_canonical(y: u8, sign: bool) -> [u8; 32] {
    // p = 2^255 - 19
    let mut out = [0xffu8; 32];
    out[0] = 0xed;
    out[31] = 0x7f;
    let (low, carry) = out[0].overflowing_add(y);
    out[0] = low;
    assert!(!carry, "y < 19 keeps p + y below 2^255");
    if sign {
        out[31] |= 0x80;
    }
    out
}

/// Point encodings where implementations differ, plus ordinary keys.
fn encodings() -> Vec<[u8; 32]> {
    let mut out: Vec<[u8; 32]> = EIGHT_TORSION
        .iter()
        .map(|p| p.compress().to_bytes())
        .collect();
    for y in 0..19 {
        out.push(non_canonical(y, false));
        out.push(non_canonical(y, true));
    }
    for y in [0u8, 1] {
        let mut e = [0u8; 32];
        e[0] = y;
        e[31] |= 0x80; // "negative zero" x
        out.push(e);
    }
    for seed in 1..=3u8 {
        let key = Keypair::from_seed([seed; 32]).public().0;
        out.push(key);
        // The key plus a torsion point: mixed order.
        let point = CompressedEdwardsY(key).decompress().unwrap();
        out.push((point + EIGHT_TORSION[1]).compress().to_bytes());
    }
    out.push(ED25519_BASEPOINT_POINT.compress().to_bytes());
    out
}

/// Scalars: small, around the group order `l`, and with the top bit set.
fn scalars() -> Vec<[u8; 32]> {
    let l: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut l_minus_1 = l;
    l_minus_1[0] -= 1;
    let mut l_plus_1 = l;
    l_plus_1[0] += 1;
    let mut one = [0u8; 32];
    one[0] = 1;
    let mut high = [0u8; 32];
    high[31] = 0x80;
    vec![[0; 32], one, l_minus_1, l, l_plus_1, high, [0xff; 32]]
}

#[test]
fn edge_cases_get_the_same_verdicts() {
    let msg = b"pyrsia edge case";
    let points = encodings();
    let mut accepted = 0;
    let mut cases = 0;
    for a in &points {
        for r in &points {
            for s in scalars() {
                let mut sig = [0u8; 64];
                sig[..32].copy_from_slice(r);
                sig[32..].copy_from_slice(&s);
                let ours = verify(&PublicKey(*a), &sig, msg);
                assert_eq!(
                    ours,
                    consensus_verify(a, &sig, msg),
                    "A {} sig {}",
                    hex::encode(a),
                    hex::encode(sig)
                );
                cases += 1;
                accepted += usize::from(ours);
            }
        }
    }
    // The small-order cases with s = 0 are valid under ZIP-215.
    assert!(accepted >= 64, "{accepted} of {cases} accepted");
}

#[test]
fn keys_signatures_and_forgeries_agree() {
    let mut items = Vec::new();
    for seed in 0..64u8 {
        let ours = Keypair::from_seed([seed; 32]);
        let theirs = ed25519_consensus::SigningKey::from([seed; 32]);
        assert_eq!(ours.public().0, theirs.verification_key().to_bytes());
        let msg = vec![seed; usize::from(seed) * 7];
        let sig = ours.sign(&msg);
        assert_eq!(sig, theirs.sign(&msg).to_bytes());
        let mut forged = sig;
        forged[usize::from(seed) % 64] ^= 1 << (seed % 8);
        let mut other_msg = msg.clone();
        other_msg.push(0);
        for (sig, msg) in [(sig, msg.clone()), (forged, msg), (sig, other_msg)] {
            let verdict = verify(&ours.public(), &sig, &msg);
            assert_eq!(verdict, consensus_verify(&ours.public().0, &sig, &msg));
            items.push((ours.public(), sig, msg, verdict));
        }
    }
    let batch: Vec<(PublicKey, [u8; 64], &[u8])> = items
        .iter()
        .map(|(k, s, m, _)| (*k, *s, m.as_slice()))
        .collect();
    let expected: Vec<bool> = items.iter().map(|(.., v)| *v).collect();
    assert!(expected.contains(&false) && expected.contains(&true));
    assert_eq!(verify_batch(&batch, [7; 32]), expected);
    let valid: Vec<_> = batch
        .iter()
        .zip(&expected)
        .filter(|(_, v)| **v)
        .map(|(i, _)| *i)
        .collect();
    assert!(verify_batch(&valid, [8; 32]).iter().all(|v| *v));
}
