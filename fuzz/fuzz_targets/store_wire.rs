//! The store's wire frames (`/pyrsia/store/1` requests and responses, read
//! through the bounded stream reader) and manifests: geometry, the stripe
//! root, verification, and the incremental builder.
//!
//! Invariants: no panic; whatever decodes re-encodes to a frame that
//! decodes to the same value; a manifest verifies against its own root iff
//! its stripe count fits its geometry; a built manifest verifies.
#![no_main]

use futures::executor::block_on;
use libfuzzer_sys::fuzz_target;
use p2p_store::manifest::{self, Manifest, ManifestBuilder, MAX_STRIPES};
use p2p_store::protocol::{read_bounded, Request, Response, MAX_REQUEST};

fn check_manifest(m: &Manifest, expected_root: &[u8]) {
    let root = m.root();
    let fits = manifest::stripe_count(m.size, m.stripe_size).ok() == Some(m.count());
    assert_eq!(m.verify(&root, None, None).is_ok(), fits);
    if let Ok(other) = <[u8; 32]>::try_from(expected_root) {
        if other != root {
            assert!(m.verify(&other, None, None).is_err());
        }
    }
    assert!(m.verify(&root, Some(m.size ^ 1), None).is_err());
    for i in 0..m.count().min(64) {
        assert!(m.stripe_len(i) <= u64::from(m.stripe_size));
    }
}

fuzz_target!(|data: &[u8]| {
    let (&selector, rest) = match data.split_first() {
        Some(x) => x,
        None => return,
    };
    match selector % 4 {
        0 => {
            let frame = block_on(read_bounded(
                &mut futures::io::Cursor::new(rest),
                MAX_REQUEST,
                64,
            ));
            if let Ok(r) = Request::decode(rest) {
                assert!(frame.is_ok());
                assert_eq!(Request::decode(&r.encode()).as_ref(), Ok(&r));
            }
        }
        1 => {
            if let Ok(r) = Response::decode(rest.to_vec()) {
                assert_eq!(Response::decode(r.encode()).as_ref(), Ok(&r));
                if let Response::Manifest { manifest, have } = &r {
                    assert_eq!(have.len(), manifest.digests.len());
                    assert!(manifest.count() <= MAX_STRIPES);
                    check_manifest(manifest, rest.get(..32).unwrap_or_default());
                }
            }
        }
        2 => {
            // size u64 | stripe_size u32 | digests...
            if rest.len() < 12 {
                return;
            }
            let size = u64::from_be_bytes(rest[..8].try_into().unwrap_or_default());
            let stripe_size = u32::from_be_bytes(rest[8..12].try_into().unwrap_or_default());
            let digests = rest[12..]
                .chunks_exact(32)
                .map(|c| <[u8; 32]>::try_from(c).unwrap_or_default())
                .collect();
            let m = Manifest {
                size,
                stripe_size,
                digests,
            };
            check_manifest(&m, &rest[12..]);
            let _ = manifest::stripe_count(size, stripe_size);
        }
        _ => {
            let text = String::from_utf8_lossy(rest);
            if let Some(d) = manifest::parse_digest(&text) {
                assert!(text.eq_ignore_ascii_case(&hex_of(&d)));
            }
            // A small stripe size so that short inputs span several stripes.
            let stripe_size = manifest::MIN_STRIPE_SIZE << (rest.len() % 3);
            if let Ok(mut b) = ManifestBuilder::new(stripe_size) {
                for chunk in rest.chunks(1 + rest.len() / 3) {
                    b.update(chunk);
                }
                // Stretch the input over more than one stripe.
                b.update(&vec![0xa5; rest.len() * 5]);
                let size = b.size();
                match b.finish() {
                    Ok((_whole, m)) => {
                        assert_eq!(m.size, size);
                        assert!(m.verify(&m.root(), Some(size), Some(stripe_size)).is_ok());
                    }
                    Err(e) => panic!("builder refused its own input: {e}"),
                }
            }
        }
    }
});

fn hex_of(d: &[u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}
