//! The randomness beacon that seeds builder selection.
//!
//! Every block's proposer must put a beacon first in its block: the output
//! of its VRF (schnorrkel, sr25519) over the chain id, the height and the
//! previous seed, with a proof. A VRF output is unique for a key and an
//! input, so the proposer cannot choose among outputs; it can only withhold
//! its block, and then the next round's proposer reveals another output.
//! The new seed is `sha256(previous seed || VRF output)`. A request's builders
//! are drawn from the seed of the block *after* the one that commits it, so
//! the proposer that includes a request does not know the seed that will
//! select for it.

use std::path::Path;

use borsh::{BorshDeserialize, BorshSerialize};
use schnorrkel::vrf::{VRFPreOut, VRFProof};
use schnorrkel::{signing_context, ExpansionMode, MiniSecretKey};
use sha2::{Digest as _, Sha256};

use crate::types::{encode, Digest};

/// Prefix of the beacon transaction; a signed transaction can never start
/// with it (its first 4 bytes would be a chain id length over 2^30).
pub const BEACON_MAGIC: &[u8] = b"pyrsia-beacon/1\0";
const CONTEXT: &[u8] = b"pyrsia-beacon";
const OUTPUT_CONTEXT: &[u8] = b"pyrsia-beacon-output";

/// A proposer's beacon for one height.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Beacon {
    pub height: u64,
    pub pre_output: [u8; 32],
    pub proof: [u8; 64],
}

impl Beacon {
    /// The transaction bytes of this beacon.
    pub fn to_tx(&self) -> Vec<u8> {
        let mut tx = BEACON_MAGIC.to_vec();
        tx.extend(encode(self));
        tx
    }

    /// A beacon transaction's beacon; `None` for anything else.
    pub fn from_tx(tx: &[u8]) -> Option<Beacon> {
        Beacon::try_from_slice(tx.strip_prefix(BEACON_MAGIC)?).ok()
    }
}

/// Whether `tx` claims to be a beacon (valid or not).
pub fn is_beacon_tx(tx: &[u8]) -> bool {
    tx.starts_with(BEACON_MAGIC)
}

/// What the VRF is evaluated on.
fn input(chain_id: &str, height: u64, seed: &Digest) -> Vec<u8> {
    encode(&(chain_id, height, seed))
}

/// The seed after a block whose beacon had VRF output `randomness`.
pub fn next_seed(seed: &Digest, randomness: &[u8; 32]) -> Digest {
    let mut h = Sha256::new();
    h.update(seed.0);
    h.update(randomness);
    Digest(h.finalize().into())
}

/// Checks `beacon` as `public`'s for `height` over `seed`; returns its
/// randomness.
pub fn verify(
    public: &[u8; 32],
    chain_id: &str,
    height: u64,
    seed: &Digest,
    beacon: &Beacon,
) -> Result<[u8; 32], BeaconError> {
    if beacon.height != height {
        return Err(BeaconError::Height {
            expected: height,
            got: beacon.height,
        });
    }
    let key =
        schnorrkel::PublicKey::from_bytes(public).map_err(|e| BeaconError::Key(e.to_string()))?;
    let pre_output =
        VRFPreOut::from_bytes(&beacon.pre_output).map_err(|e| BeaconError::Proof(e.to_string()))?;
    let proof =
        VRFProof::from_bytes(&beacon.proof).map_err(|e| BeaconError::Proof(e.to_string()))?;
    let context = signing_context(CONTEXT);
    let (inout, _) = key
        .vrf_verify(
            context.bytes(&input(chain_id, height, seed)),
            &pre_output,
            &proof,
        )
        .map_err(|e| BeaconError::Proof(e.to_string()))?;
    Ok(inout.make_bytes::<[u8; 32]>(OUTPUT_CONTEXT))
}

/// Whether `public` is a usable VRF public key (a valid point).
pub fn valid_public(public: &[u8; 32]) -> bool {
    schnorrkel::PublicKey::from_bytes(public).is_ok()
}

#[derive(Debug, thiserror::Error)]
pub enum BeaconError {
    #[error("beacon for height {got}, expected {expected}")]
    Height { expected: u64, got: u64 },
    #[error("bad beacon key: {0}")]
    Key(String),
    #[error("beacon proof does not verify: {0}")]
    Proof(String),
    #[error("beacon key file {path}: {reason}")]
    File { path: String, reason: String },
}

/// A validator's VRF key (a 32-byte secret seed).
pub struct BeaconKey {
    keypair: schnorrkel::Keypair,
    seed: [u8; 32],
}

impl std::fmt::Debug for BeaconKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BeaconKey({})", hex::encode(self.public()))
    }
}

impl BeaconKey {
    // `from_bytes` fails only on a length other than 32.
    #[allow(clippy::expect_used)]
    pub fn from_seed(seed: [u8; 32]) -> BeaconKey {
        let mini = MiniSecretKey::from_bytes(&seed).expect("any 32 bytes are a mini secret key");
        BeaconKey {
            keypair: mini.expand_to_keypair(ExpansionMode::Ed25519),
            seed,
        }
    }

    pub fn generate() -> BeaconKey {
        let mut seed = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
        BeaconKey::from_seed(seed)
    }

    pub fn public(&self) -> [u8; 32] {
        self.keypair.public.to_bytes()
    }

    /// This key's beacon for `height` over `seed`.
    pub fn beacon(&self, chain_id: &str, height: u64, seed: &Digest) -> Beacon {
        let context = signing_context(CONTEXT);
        let (inout, proof, _) = self
            .keypair
            .vrf_sign(context.bytes(&input(chain_id, height, seed)));
        Beacon {
            height,
            pre_output: inout.to_preout().to_bytes(),
            proof: proof.to_bytes(),
        }
    }

    /// Saves the secret seed as hex, readable by the owner only.
    pub fn save(&self, path: &Path) -> Result<(), BeaconError> {
        let err = |e: std::io::Error| BeaconError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let json = serde_json::json!({
            "public": hex::encode(self.public()),
            "secret": hex::encode(self.seed),
        });
        write_private(path, json.to_string().as_bytes()).map_err(err)
    }

    pub fn load(path: &Path) -> Result<BeaconKey, BeaconError> {
        let err = |reason: String| BeaconError::File {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        let secret = json["secret"]
            .as_str()
            .ok_or_else(|| err("no \"secret\"".into()))?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(secret, &mut seed).map_err(|e| err(format!("secret: {e}")))?;
        Ok(BeaconKey::from_seed(seed))
    }
}

/// Writes a new file readable by its owner only; never overwrites a key.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(path)?, bytes)
}
