//! The light client's rules on recorded chains whose validator sets change
//! (generated and signed by tendermint-testgen), with no node involved.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use pyrsia_ledger_client::light::{LightClient, LightConfig, LightError, LightStore, TrustAnchor};
use tendermint::Time;
use tendermint_light_client_verifier::types::{LightBlock, ValidatorSet};
use tendermint_testgen::{validator::generate_validators, Generator, Header, Validator};

const CHAIN: &str = "recorded";

fn validators(ids: &[String]) -> Vec<Validator> {
    ids.iter()
        .map(|id| Validator::new(id).voting_power(10))
        .collect()
}

/// Heights 1..=`len`, header `h` signed by `set_at(h)` and naming
/// `set_at(h + 1)` as next, one second apart, the last one a second ago.
fn chain(len: u64, set_at: impl Fn(u64) -> Vec<String>) -> Vec<LightBlock> {
    let now = Time::now();
    (1..=len)
        .map(|h| {
            let vals = validators(&set_at(h));
            let next = validators(&set_at(h + 1));
            let time = now.checked_sub(Duration::from_secs(len + 1 - h)).unwrap();
            let header = Header::new(&vals)
                .height(h)
                .chain_id(CHAIN)
                .time(time)
                .next_validators(&next);
            let b = tendermint_testgen::LightBlock::new_default_with_header(header)
                .next_validators(&next)
                .generate()
                .unwrap();
            LightBlock::new(b.signed_header, b.validators, b.next_validators, b.provider)
        })
        .collect()
}

fn genesis(set: &[String], first: &LightBlock) -> TrustAnchor {
    TrustAnchor::Genesis {
        chain_id: CHAIN.parse().unwrap(),
        initial_height: 1,
        time: first.time(),
        validators: ValidatorSet::without_proposer(generate_validators(&validators(set)).unwrap()),
    }
}

fn client(
    blocks: Vec<LightBlock>,
    anchor: TrustAnchor,
    config: &LightConfig,
) -> (tempfile::TempDir, LightClient) {
    let dir = tempfile::tempdir().unwrap();
    let store = LightStore::open(dir.path().join("store.json"), &anchor).unwrap();
    let client = LightClient::recorded(blocks, anchor, config.options().unwrap(), store);
    (dir, client)
}

fn names(prefix: &str, range: std::ops::Range<u64>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test]
async fn a_complete_change_of_validators_is_crossed_where_the_old_set_handed_over() {
    // Set A signs 1..=8 and names set B as next at 8; B signs 9..=16.
    let set_at = |h: u64| {
        if h <= 8 {
            names("a", 0..4)
        } else {
            names("b", 0..4)
        }
    };
    let blocks = chain(16, set_at);
    let anchor = genesis(&set_at(1), &blocks[0]);
    let (_dir, mut light) = client(blocks, anchor, &LightConfig::default());

    let top = light.verify_to(16).await.unwrap();
    assert_eq!(top.height().value(), 16);
    // Genesis to 16 lacks trust (A did not sign 16); the midpoint 8 is
    // signed by A and names B, from which 16 verifies: two headers.
    assert_eq!(light.headers_fetched(), 2);
}

#[tokio::test]
async fn a_rolling_set_is_verified_by_bisection_in_few_headers() {
    // One validator of four replaced at every height: a skip of more than
    // two heights leaves too little of the trusted set among the signers.
    let blocks = chain(64, |h| names("v", h..h + 4));
    let anchor = genesis(&names("v", 1..5), &blocks[0]);
    let (_dir, mut light) = client(blocks, anchor, &LightConfig::default());

    light.verify_to(64).await.unwrap();
    let fetched = light.headers_fetched();
    assert!(
        fetched > 2,
        "a rolling set cannot be skipped across: {fetched}"
    );
    assert!(fetched < 64, "bisection must skip where it can: {fetched}");
}

#[tokio::test]
async fn a_set_the_trusted_header_did_not_name_is_refused() {
    // Header 8 names set B, but 9 is signed by C.
    let mut blocks = chain(9, |h| {
        if h <= 8 {
            names("a", 0..4)
        } else {
            names("b", 0..4)
        }
    });
    let forged = chain(9, |h| {
        if h <= 8 {
            names("a", 0..4)
        } else {
            names("c", 0..4)
        }
    });
    blocks[8] = forged[8].clone();
    let anchor = genesis(&names("a", 0..4), &blocks[0]);
    let (_dir, mut light) = client(blocks, anchor, &LightConfig::default());

    light.verify_to(8).await.unwrap();
    let err = light.verify_to(9).await.unwrap_err();
    assert!(
        matches!(
            err,
            LightError::NotTheTrustedValidators {
                height: 9,
                trusted: 8
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn an_anchor_older_than_the_trusting_period_is_refused() {
    let blocks = chain(16, |_| names("a", 0..4));
    let anchor = genesis(&names("a", 0..4), &blocks[0]);
    let config = LightConfig {
        trusting_period_secs: 5,
        ..LightConfig::default()
    };
    let (_dir, mut light) = client(blocks, anchor, &config);
    let err = light.verify_to(16).await.unwrap_err();
    assert!(
        matches!(err, LightError::Expired { height: 0, .. }),
        "{err}"
    );
}
