//! A stripe layout is one attester's word, and the ledger cannot check it
//! against bytes it never sees; it can keep every layout within what the
//! store can download (docs/protocol.md, *Transactions*): a stripe size of
//! 4 KiB to 16 MiB and at most 262 144 stripes, for a `TrustedImport` as for
//! an `Attest` (tests/ledger.rs covers those).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use pyrsia_chain::ledger::{MAX_STRIPES, MAX_STRIPE_SIZE, MIN_STRIPE_SIZE};
use pyrsia_chain::*;

mod common;
use common::{genesis, key, Chain};

fn import(version: &str, stripe_size: u32, size: u64) -> TxKind {
    TxKind::TrustedImport(TrustedImport {
        package: PackageId {
            ecosystem: "npm".into(),
            name: "imported".into(),
            version: version.into(),
        },
        outputs: vec![Output {
            name: "pkg.tgz".into(),
            sha256: Digest([7; 32]),
            size,
            stripe_size,
            stripe_root: Digest([8; 32]),
        }],
        upstream: "https://registry.example.org".into(),
    })
}

#[test]
fn a_trusted_import_carries_only_layouts_the_store_can_download() {
    let mut c = Chain::new(genesis(10_000));
    let cases = [
        ("1.0.0", MIN_STRIPE_SIZE - 1, 100, code::INVALID_FIELD),
        ("1.0.1", 1, 100, code::INVALID_FIELD),
        ("1.0.2", MAX_STRIPE_SIZE + 1, 100, code::INVALID_FIELD),
        ("1.0.3", u32::MAX, 100, code::INVALID_FIELD),
        (
            "1.0.4",
            MIN_STRIPE_SIZE,
            u64::from(MIN_STRIPE_SIZE) * (MAX_STRIPES + 1),
            code::INVALID_FIELD,
        ),
        ("2.0.0", MIN_STRIPE_SIZE, 100, code::OK),
        ("2.0.1", MAX_STRIPE_SIZE, 100, code::OK),
        (
            "2.0.2",
            MIN_STRIPE_SIZE,
            u64::from(MIN_STRIPE_SIZE) * MAX_STRIPES,
            code::OK,
        ),
    ];
    for (version, stripe_size, size, want) in cases {
        let r = c.run(&key(100), import(version, stripe_size, size));
        assert_eq!(
            r.code, want,
            "{version}: stripe {stripe_size}, size {size}: {}",
            r.log
        );
        if want == code::INVALID_FIELD {
            assert!(r.log.contains("stripe"), "{}", r.log);
        }
    }
}
