//! Trust evaluation and builder selection: pure functions of their inputs.

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

use crate::types::{
    AttestationRecord, AttesterRole, Digest, Output, Params, PublicKey, TrustLevel,
};

/// What two attestations must agree on: every output's name, digest and size.
/// Stripe layouts may differ between honest builders and are not compared.
fn agreement_key(outputs: &[Output]) -> Vec<(&str, &Digest, u64)> {
    let mut key: Vec<_> = outputs
        .iter()
        .map(|o| (o.name.as_str(), &o.sha256, o.size))
        .collect();
    key.sort();
    key
}

/// How many counted attestations may disagree with the leading result
/// before the request is disputed: one dissent is recorded and shown, but
/// neither vetoes a build nor helps it.
pub const TOLERATED_DISSENT: usize = 1;

/// The level one agreeing group of attestations reaches on its own.
fn group_level(params: &Params, regular: usize, trusted: usize) -> TrustLevel {
    let quorum = regular >= usize::from(params.quorum.max(1));
    let trusted_for_reproducible = usize::from(params.trusted_for_reproducible.max(1));
    match (quorum, trusted) {
        (true, t) if t >= trusted_for_reproducible => TrustLevel::Reproducible,
        (_, t) if t >= 1 => TrustLevel::Trusted,
        (true, _) => TrustLevel::QuorumOnly,
        _ => TrustLevel::Pending,
    }
}

type AgreementKey<'a> = Vec<(&'a str, &'a Digest, u64)>;

/// The counted attestations grouped by what they attest, each group with the
/// level it reaches on its own and its size, the leading group first.
fn ranked_groups<'a>(
    params: &Params,
    attestations: &'a [AttestationRecord],
) -> Vec<(TrustLevel, usize, AgreementKey<'a>)> {
    let mut groups: BTreeMap<AgreementKey<'a>, (usize, usize)> = BTreeMap::new();
    for a in attestations {
        match a.role {
            AttesterRole::Regular => groups.entry(agreement_key(&a.outputs)).or_default().0 += 1,
            AttesterRole::Trusted => groups.entry(agreement_key(&a.outputs)).or_default().1 += 1,
            AttesterRole::Void => {}
        }
    }
    let mut ranked: Vec<_> = groups
        .into_iter()
        .map(|(key, (regular, trusted))| {
            (
                group_level(params, regular, trusted),
                regular + trusted,
                key,
            )
        })
        .collect();
    // Largest, then highest level; the key only makes the order total.
    ranked.sort_unstable_by(|a, b| (b.1, b.0, &a.2).cmp(&(a.1, a.0, &b.2)));
    ranked
}

/// Derives a request's trust level from its attestations.
///
/// Only counted attestations matter (selected regular builders, certified
/// trusted nodes); their order does not. They are grouped by the outputs
/// they attest. The leading group is the largest (then the one reaching the
/// highest level on its own); the attestations outside it are dissent. More than
/// [`TOLERATED_DISSENT`] of them make the request `disputed`. Two groups
/// tied for the lead are no agreement yet: `pending`.
pub fn evaluate(params: &Params, attestations: &[AttestationRecord]) -> TrustLevel {
    let ranked = ranked_groups(params, attestations);
    let Some((level, support, _)) = ranked.first() else {
        return TrustLevel::Pending;
    };
    let counted: usize = ranked.iter().map(|g| g.1).sum();
    if counted - support > TOLERATED_DISSENT {
        TrustLevel::Disputed
    } else if ranked
        .get(1)
        .is_some_and(|next| (next.0, next.1) == (*level, *support))
    {
        TrustLevel::Pending
    } else {
        *level
    }
}

/// The counted attestations outside the leading group of [`evaluate`]:
/// what clients show as dissent.
pub fn dissenters<'a>(
    params: &Params,
    attestations: &'a [AttestationRecord],
) -> Vec<&'a AttestationRecord> {
    let ranked = ranked_groups(params, attestations);
    let Some((_, _, leader)) = ranked.first() else {
        return Vec::new();
    };
    attestations
        .iter()
        .filter(|a| a.role != AttesterRole::Void && agreement_key(&a.outputs) != *leader)
        .collect()
}

/// How many draws one pick may take before giving up: a pick only misses
/// when it lands on a builder already chosen or excluded, so with `n`
/// builders and `m` of them unavailable a pick fails with probability
/// `(m/n)^64`.
pub const MAX_DRAWS_PER_PICK: u32 = 64;

/// Draw number `draw` of a request's selection: a slot in `0..count`.
/// The modulo bias is below 2^-32 for any `count` under 2^32.
pub fn draw_slot(seed: &Digest, request_id: &Digest, draw: u32, count: u32) -> u32 {
    let mut h = Sha256::new();
    h.update(seed.0);
    h.update(request_id.0);
    h.update(draw.to_be_bytes());
    let h: [u8; 32] = h.finalize().into();
    let mut first = [0u8; 8];
    first.copy_from_slice(&h[..8]);
    // Below `count`, so the cast keeps every bit.
    (u64::from_be_bytes(first) % u64::from(count.max(1))) as u32
}

/// Picks up to `want` distinct builders not in `excluded`, continuing the
/// request's sequence of draws at `first_draw` over `count` slots, whose
/// occupants `slot` reads. Returns the picks, in draw order, and the number
/// of the next unused draw. The same state gives the same picks on every
/// node, and each pick reads one slot however many builders there are.
pub fn select<E>(
    seed: &Digest,
    request_id: &Digest,
    first_draw: u32,
    count: u32,
    want: usize,
    excluded: &[PublicKey],
    mut slot: impl FnMut(u32) -> Result<PublicKey, E>,
) -> Result<(Vec<PublicKey>, u32), E> {
    let mut picked: Vec<PublicKey> = Vec::with_capacity(want);
    let mut draw = first_draw;
    if count == 0 {
        return Ok((picked, draw));
    }
    while picked.len() < want {
        let mut found = false;
        for _ in 0..MAX_DRAWS_PER_PICK {
            let builder = slot(draw_slot(seed, request_id, draw, count))?;
            draw = draw.saturating_add(1);
            if !picked.contains(&builder) && !excluded.contains(&builder) {
                picked.push(builder);
                found = true;
                break;
            }
        }
        if !found {
            break;
        }
    }
    Ok((picked, draw))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn output(seed: u8) -> Output {
        Output {
            name: "pkg.tgz".into(),
            sha256: Digest([seed; 32]),
            size: 100,
            stripe_size: 1 << 20,
            stripe_root: Digest([seed; 32]),
        }
    }

    fn attestation(who: u8, role: AttesterRole, seed: u8) -> AttestationRecord {
        AttestationRecord {
            attester: PublicKey([who; 32]),
            role,
            height: 1,
            outputs: vec![output(seed)],
            build_env: String::new(),
            log_digest: Digest::default(),
            provenance: None,
        }
    }

    fn params() -> Params {
        Params {
            quorum: 2,
            trusted_for_reproducible: 2,
            ..Params::default()
        }
    }

    #[test]
    fn levels_walk_pending_quorum_trusted_reproducible() {
        let p = params();
        let mut atts = vec![attestation(1, AttesterRole::Regular, 7)];
        assert_eq!(evaluate(&p, &atts), TrustLevel::Pending);
        atts.push(attestation(2, AttesterRole::Regular, 7));
        assert_eq!(evaluate(&p, &atts), TrustLevel::QuorumOnly);
        atts.push(attestation(3, AttesterRole::Trusted, 7));
        assert_eq!(evaluate(&p, &atts), TrustLevel::Trusted);
        atts.push(attestation(4, AttesterRole::Trusted, 7));
        assert_eq!(evaluate(&p, &atts), TrustLevel::Reproducible);
    }

    #[test]
    fn one_trusted_node_is_trusted_without_quorum() {
        let atts = vec![attestation(3, AttesterRole::Trusted, 7)];
        assert_eq!(evaluate(&params(), &atts), TrustLevel::Trusted);
    }

    #[test]
    fn one_dissent_is_tolerated_and_two_are_a_dispute() {
        let p = params();
        // Two lone results: no agreement yet.
        let mut atts = vec![
            attestation(1, AttesterRole::Regular, 7),
            attestation(2, AttesterRole::Regular, 8),
        ];
        assert_eq!(evaluate(&p, &atts), TrustLevel::Pending);
        // A third attester agreeing with one side: it leads, one dissent.
        atts.push(attestation(3, AttesterRole::Regular, 7));
        assert_eq!(evaluate(&p, &atts), TrustLevel::QuorumOnly);
        assert_eq!(dissenters(&p, &atts).len(), 1);
        // A second dissent is a dispute.
        atts.push(attestation(4, AttesterRole::Trusted, 9));
        assert_eq!(evaluate(&p, &atts), TrustLevel::Disputed);
    }

    #[test]
    fn a_reproducible_build_survives_one_dissenting_trusted_node() {
        let p = params();
        let mut atts = vec![
            attestation(1, AttesterRole::Regular, 7),
            attestation(2, AttesterRole::Regular, 7),
            attestation(3, AttesterRole::Trusted, 7),
            attestation(4, AttesterRole::Trusted, 7),
        ];
        atts.push(attestation(5, AttesterRole::Trusted, 8));
        assert_eq!(evaluate(&p, &atts), TrustLevel::Reproducible);
        let dissent = dissenters(&p, &atts);
        assert_eq!(dissent.len(), 1);
        assert_eq!(dissent[0].attester, PublicKey([5; 32]));
    }

    #[test]
    fn void_attestations_neither_count_nor_dispute() {
        let atts = vec![
            attestation(1, AttesterRole::Regular, 7),
            attestation(3, AttesterRole::Void, 9),
        ];
        assert_eq!(evaluate(&params(), &atts), TrustLevel::Pending);
    }

    #[test]
    fn different_stripe_layouts_of_the_same_bytes_agree() {
        let mut other = attestation(2, AttesterRole::Regular, 7);
        other.outputs[0].stripe_size = 4 << 20;
        other.outputs[0].stripe_root = Digest([1; 32]);
        let atts = vec![attestation(1, AttesterRole::Regular, 7), other];
        assert_eq!(evaluate(&params(), &atts), TrustLevel::QuorumOnly);
    }

    fn pick(
        seed: u8,
        builders: &[PublicKey],
        first: u32,
        want: usize,
        excluded: &[PublicKey],
    ) -> (Vec<PublicKey>, u32) {
        let count = u32::try_from(builders.len()).unwrap();
        select(
            &Digest([seed; 32]),
            &Digest([1; 32]),
            first,
            count,
            want,
            excluded,
            |s| Ok::<_, ()>(builders[s as usize]),
        )
        .unwrap()
    }

    #[test]
    fn selection_takes_at_most_count_distinct_builders() {
        let builders: Vec<_> = (0..10u8).map(|i| PublicKey([i; 32])).collect();
        assert_eq!(pick(0, &builders, 0, 3, &[]).0.len(), 3);
        assert_eq!(pick(0, &builders[..2], 0, 3, &[]).0.len(), 2);
        assert!(pick(0, &[], 0, 3, &[]).0.is_empty());
    }

    #[test]
    fn selection_depends_on_the_seed() {
        let builders: Vec<_> = (0..32u8).map(|i| PublicKey([i; 32])).collect();
        let distinct: std::collections::BTreeSet<_> =
            (0..16u8).map(|b| pick(b, &builders, 0, 3, &[]).0).collect();
        assert!(distinct.len() > 1, "selection ignored the seed");
    }

    #[test]
    fn replacements_continue_the_draws_and_skip_the_excluded() {
        let builders: Vec<_> = (0..8u8).map(|i| PublicKey([i; 32])).collect();
        let (first, next) = pick(3, &builders, 0, 3, &[]);
        let (again, _) = pick(3, &builders, 0, 3, &[]);
        assert_eq!(first, again, "the same state must give the same picks");
        let (more, _) = pick(3, &builders, next, 5, &first);
        assert_eq!(more.len(), 5);
        assert!(more.iter().all(|b| !first.contains(b)));
    }

    fn role() -> impl Strategy<Value = AttesterRole> {
        prop_oneof![
            Just(AttesterRole::Regular),
            Just(AttesterRole::Trusted),
            Just(AttesterRole::Void)
        ]
    }

    proptest! {
        #[test]
        fn attestation_order_does_not_change_the_level(
            specs in proptest::collection::vec((role(), 0u8..3), 0..8),
            quorum in 1u16..4,
            trusted in 1u16..3,
            rotate in 0usize..8,
        ) {
            let p = Params { quorum, trusted_for_reproducible: trusted, ..Params::default() };
            let atts: Vec<_> = specs.iter().enumerate()
                .map(|(i, (r, seed))| attestation(i as u8, *r, *seed)).collect();
            let mut reversed = atts.clone();
            reversed.reverse();
            let mut rotated = atts.clone();
            if !rotated.is_empty() { let n = rotate % rotated.len(); rotated.rotate_left(n); }
            let level = evaluate(&p, &atts);
            prop_assert_eq!(level, evaluate(&p, &reversed));
            prop_assert_eq!(level, evaluate(&p, &rotated));
        }

        #[test]
        fn selection_is_distinct_and_avoids_the_excluded(
            n in 0u8..20, want in 0usize..6, seed in any::<u8>(), excluded in 0u8..20,
        ) {
            let builders: Vec<_> = (0..n).map(|i| PublicKey([i; 32])).collect();
            let excluded: Vec<_> = (0..excluded.min(n)).map(|i| PublicKey([i; 32])).collect();
            let (picked, _) = pick(seed, &builders, 0, want, &excluded);
            let distinct: std::collections::BTreeSet<_> = picked.iter().collect();
            prop_assert_eq!(distinct.len(), picked.len());
            prop_assert!(picked.iter().all(|b| !excluded.contains(b)));
            prop_assert!(picked.len() <= want.min(builders.len() - excluded.len()));
        }

        #[test]
        fn one_dissenting_attestation_neither_disputes_nor_raises_an_agreed_build(
            specs in proptest::collection::vec(role(), 2..8),
            dissent in role(),
            dissent_seed in 8u8..10,
        ) {
            let p = params();
            let atts: Vec<_> = specs.iter().enumerate()
                .map(|(i, r)| attestation(i as u8, *r, 7)).collect();
            let agreed = atts.iter().filter(|a| a.role != AttesterRole::Void).count();
            prop_assume!(agreed >= 2);
            let before = evaluate(&p, &atts);
            let mut more = atts.clone();
            more.push(attestation(100, dissent, dissent_seed));
            prop_assert_eq!(evaluate(&p, &more), before);
        }

        #[test]
        fn a_dissent_never_makes_a_build_reproducible(
            specs in proptest::collection::vec((role(), 7u8..10), 0..8),
            dissent in role(),
        ) {
            let p = params();
            let atts: Vec<_> = specs.iter().enumerate()
                .map(|(i, (r, seed))| attestation(i as u8, *r, *seed)).collect();
            let before = evaluate(&p, &atts);
            let mut more = atts.clone();
            more.push(attestation(100, dissent, 42));
            let after = evaluate(&p, &more);
            prop_assert!(after != TrustLevel::Reproducible || before == TrustLevel::Reproducible);
        }

        #[test]
        fn adding_agreeing_attestations_never_lowers_the_level(
            specs in proptest::collection::vec(role(), 0..6), extra in role(),
        ) {
            let p = params();
            let atts: Vec<_> = specs.iter().enumerate()
                .map(|(i, r)| attestation(i as u8, *r, 7)).collect();
            let before = evaluate(&p, &atts);
            let mut more = atts.clone();
            more.push(attestation(100, extra, 7));
            prop_assert!(evaluate(&p, &more) >= before);
        }
    }
}
