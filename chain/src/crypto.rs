//! Keys, signing bytes and signature checks: ed25519 under the ZIP-215 rules
//! (ed25519-zebra on curve25519-dalek 4, whose AVX2 backend is picked at run
//! time), so single and batch verification agree on every input. These are
//! the rules ed25519-consensus applied before; `tests/signatures.rs` checks
//! that both accept the same signatures.

use std::path::Path;

use ed25519_zebra::{batch, Signature, SigningKey, VerificationKey, VerificationKeyBytes};
use rand_core::{OsRng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::types::{encode, Approval, GovAction, PublicKey, SignedTx, TxBody};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading key file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("key file {path} is not a pyrsia key: {reason}")]
    Format { path: String, reason: String },
}

/// An ed25519 signing key with its public half.
#[derive(Clone)]
pub struct Keypair {
    signing: SigningKey,
}

impl std::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keypair({})", self.public())
    }
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    public_key: PublicKey,
    secret_key: String,
}

impl Keypair {
    pub fn generate() -> Keypair {
        Keypair {
            signing: SigningKey::new(OsRng),
        }
    }

    /// A key derived from a seed: for tests and benchmarks only.
    pub fn from_seed(seed: [u8; 32]) -> Keypair {
        Keypair {
            signing: SigningKey::from(seed),
        }
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing.verification_key().into())
    }

    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }

    pub fn secret_bytes(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    pub fn load(path: &Path) -> Result<Keypair, KeyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: shown.clone(),
            source,
        })?;
        let format = |reason: String| KeyError::Format {
            path: shown.clone(),
            reason,
        };
        let file: KeyFile = serde_json::from_str(&text).map_err(|e| format(e.to_string()))?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(file.secret_key.trim(), &mut seed)
            .map_err(|_| format("secret_key is not 64 hex characters".into()))?;
        let key = Keypair::from_seed(seed);
        if key.public() != file.public_key {
            return Err(format("public_key does not match secret_key".into()));
        }
        Ok(key)
    }

    /// Writes the key with owner-only permissions; refuses to overwrite.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let shown = path.display().to_string();
        let io = |source| KeyError::Io {
            path: shown.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = KeyFile {
            public_key: self.public(),
            secret_key: hex::encode(self.secret_bytes()),
        };
        let text = serde_json::to_string_pretty(&file).unwrap_or_default();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(path).map_err(io)?;
        std::io::Write::write_all(&mut f, text.as_bytes()).map_err(io)
    }
}

/// What a transaction signature covers: `borsh(chain_id) || borsh(body)`.
pub fn tx_sign_bytes(chain_id: &str, body: &TxBody) -> Vec<u8> {
    let mut out = encode(chain_id);
    out.extend(encode(body));
    out
}

/// What a board approval covers: the domain tag, chain, sequence and action.
pub fn gov_sign_bytes(chain_id: &str, seq: u64, action: &GovAction) -> Vec<u8> {
    encode(&(b"pyrsia-gov", chain_id, seq, action))
}

pub fn sign_tx(key: &Keypair, chain_id: &str, body: TxBody) -> SignedTx {
    let signature = key.sign(&tx_sign_bytes(chain_id, &body));
    SignedTx {
        chain_id: chain_id.to_owned(),
        body,
        signer: key.public(),
        signature,
    }
}

pub fn approve(key: &Keypair, chain_id: &str, seq: u64, action: &GovAction) -> Approval {
    Approval {
        board_key: key.public(),
        signature: key.sign(&gov_sign_bytes(chain_id, seq, action)),
    }
}

/// Whether `key` is a usable ed25519 public key (a point on the curve), as
/// a validator's consensus key must be to ever sign.
pub fn valid_public_key(key: &PublicKey) -> bool {
    VerificationKey::try_from(key.0).is_ok()
}

pub fn verify(key: &PublicKey, sig: &[u8; 64], msg: &[u8]) -> bool {
    VerificationKey::try_from(key.0)
        .and_then(|vk| vk.verify(&Signature::from_bytes(sig), msg))
        .is_ok()
}

/// Verifies many signatures at once. The random coefficients of the batch
/// equation come from a seed the caller derives from the batch's contents
/// (Fiat–Shamir), so no source of randomness is needed. The crate groups
/// the queue by key in a `HashMap`, so which coefficient meets which
/// signature varies between processes; that does not matter, because the
/// verdict does not depend on the coefficients except with probability
/// about 2^-128 (a batch with an invalid signature passing). On failure,
/// falls back to checking one by one, so each verdict is the single one.
pub fn verify_batch(items: &[(PublicKey, [u8; 64], &[u8])], seed: [u8; 32]) -> Vec<bool> {
    let mut verifier = batch::Verifier::new();
    for (key, sig, msg) in items {
        verifier.queue((
            VerificationKeyBytes::from(key.0),
            Signature::from_bytes(sig),
            *msg,
        ));
    }
    if verifier
        .verify(rand_chacha::ChaCha20Rng::from_seed(seed))
        .is_ok()
    {
        return vec![true; items.len()];
    }
    items
        .iter()
        .map(|(key, sig, msg)| verify(key, sig, msg))
        .collect()
}
