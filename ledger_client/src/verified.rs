//! Ledger reads a user can act on: every value is proven against the app
//! hash of a header the light client verified, for the key that was asked
//! for, at the height that was asked for.
//!
//! A query answered at height `H` proves a value against the app hash of
//! version `H`, which CometBFT records in the header of block `H + 1`. A read
//! of "the latest" state takes the node's latest block `L`, waits for block
//! `L + 1`, verifies its header, refuses it if its time is older than the
//! freshness bound, and reads at `L`: what a committed transaction wrote is
//! in it. Several reads at one [`Snapshot`] share its one verified
//! header.

use std::path::Path;
use std::time::Duration;

use borsh::BorshDeserialize;
use pyrsia_chain::ledger::normalise_query_path;
use pyrsia_chain::proof::{decode_proof, verify_value, ProofError, PROOF_OP_TYPE};
use pyrsia_chain::{
    index_pages, state_key, Digest, PackageId, PackageRecord, RequestRecord, VersionsRecord,
};
use tendermint::Time;
use tendermint_rpc::endpoint::abci_query::AbciQuery;

use crate::light::{LightClient, LightConfig, LightError, TrustAnchor};
use crate::rpc::{ClientError, LedgerClient};

/// How long a read waits for the header that proves it.
const NEXT_HEADER_WAIT: Duration = Duration::from_secs(30);

/// Which state to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    /// The latest state, within the freshness bound.
    Latest,
    /// The state as of this height.
    Height(u64),
}

/// A verified state root: the app hash of version `height`, taken from the
/// verified header `height + 1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub chain_id: String,
    pub height: u64,
    pub app_hash: Vec<u8>,
    pub header_time: Time,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Light(#[from] LightError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{path:?} is not a ledger key: {reason}")]
    BadPath { path: String, reason: String },
    #[error("asked for key {asked:?}, the node answered for {answered:?}")]
    KeyMismatch { asked: String, answered: String },
    #[error("asked for {key:?} at height {asked}, the node answered at height {answered}")]
    HeightMismatch {
        key: String,
        asked: u64,
        answered: u64,
    },
    #[error("the header {height} proving the node's latest state is {age:?} old, more than the freshness bound of {max_age:?} (a stale or lagging node; --max-age sets the bound)")]
    Stale {
        height: u64,
        age: Duration,
        max_age: Duration,
    },
    #[error("the node has no state to read yet (latest height {0})")]
    NoState(u64),
    #[error("asked for key {asked:?}, the proof is of key {proven:?}")]
    ProofOfOtherKey { asked: String, proven: String },
    #[error("the answer for {0:?} carries no {PROOF_OP_TYPE} proof")]
    NoProof(String),
    #[error(
        "the answer for {key:?} does not match the verified app hash at height {height}: {source}"
    )]
    Proof {
        key: String,
        height: u64,
        source: ProofError,
    },
    #[error("{key:?} does not decode: {reason}")]
    Decode { key: String, reason: String },
    #[error("the ledger lists {key:?} but proves it absent")]
    Missing { key: String },
    #[error("{key:?} holds the record of {found}, not of {asked}")]
    RecordMismatch {
        key: String,
        asked: String,
        found: String,
    },
}

/// The ledger as a user may trust it: reads through one RPC node, verified
/// from the trust anchor.
#[derive(Debug)]
pub struct VerifiedLedger {
    ledger: LedgerClient,
    light: LightClient,
    max_age: Duration,
}

impl VerifiedLedger {
    pub fn new(ledger: LedgerClient, light: LightClient, max_age: Duration) -> VerifiedLedger {
        VerifiedLedger {
            ledger,
            light,
            max_age,
        }
    }

    /// The verified ledger a home configures (see [`LightClient::for_home`]);
    /// `max_age` overrides the configured freshness bound.
    pub fn for_home(
        url: &str,
        home: &Path,
        anchor: Option<TrustAnchor>,
        max_age: Option<Duration>,
    ) -> Result<VerifiedLedger, VerifyError> {
        let config = LightConfig::load(home)?;
        let max_age = max_age.unwrap_or(Duration::from_secs(config.max_age_secs));
        Ok(VerifiedLedger::new(
            LedgerClient::new(url)?,
            LightClient::for_home(url, home, &config, anchor)?,
            max_age,
        ))
    }

    pub fn light(&self) -> &LightClient {
        &self.light
    }

    pub fn light_mut(&mut self) -> &mut LightClient {
        &mut self.light
    }

    pub fn ledger(&self) -> &LedgerClient {
        &self.ledger
    }

    /// A verified state root to read at.
    pub async fn snapshot(&mut self, at: At) -> Result<Snapshot, VerifyError> {
        let height = match at {
            At::Latest => {
                let latest = self.light.latest_height().await?;
                if latest == 0 {
                    return Err(VerifyError::NoState(latest));
                }
                latest
            }
            At::Height(h) => h,
        };
        // Header h + 1 holds version h's app hash: wait for it, one block
        // at most when reading the latest state.
        self.ledger
            .wait_height(height + 1, NEXT_HEADER_WAIT)
            .await?;
        let header_height = height + 1;
        let header = self.light.verify_to(header_height).await?;
        let header_time = header.time();
        if at == At::Latest {
            // A header from the future (within the verified clock drift) is fresh.
            if let Ok(age) = Time::now().duration_since(header_time) {
                if age > self.max_age {
                    return Err(VerifyError::Stale {
                        height: header_height,
                        age,
                        max_age: self.max_age,
                    });
                }
            }
        }
        Ok(Snapshot {
            chain_id: header.signed_header.header.chain_id.to_string(),
            height,
            app_hash: header.signed_header.header.app_hash.as_bytes().to_vec(),
            header_time,
        })
    }

    /// The value at `path` in `snapshot`'s state; `None` is a proven absence.
    pub async fn get(
        &self,
        snapshot: &Snapshot,
        path: &str,
    ) -> Result<Option<Vec<u8>>, VerifyError> {
        let answer = self.answer(snapshot, path).await?;
        Ok((answer.log == "exists").then_some(answer.value))
    }

    /// The node's whole answer for `path` in `snapshot`'s state, once every
    /// check of [`get`](Self::get) has passed (for `pyrsia light`, which
    /// passes it on).
    pub async fn answer(&self, snapshot: &Snapshot, path: &str) -> Result<AbciQuery, VerifyError> {
        let key = normalise_query_path(path).map_err(|e| VerifyError::BadPath {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let answer = self.ledger.abci_query_proved(&key, snapshot.height).await?;
        if answer.key != key.as_bytes() {
            return Err(VerifyError::KeyMismatch {
                answered: String::from_utf8_lossy(&answer.key).into_owned(),
                asked: key,
            });
        }
        let answered = answer.height.value();
        if answered != snapshot.height {
            return Err(VerifyError::HeightMismatch {
                key,
                asked: snapshot.height,
                answered,
            });
        }
        let op = answer
            .proof
            .as_ref()
            .and_then(|p| p.ops.iter().find(|op| op.field_type == PROOF_OP_TYPE))
            .ok_or_else(|| VerifyError::NoProof(key.clone()))?;
        let proof_err = |source| VerifyError::Proof {
            key: key.clone(),
            height: snapshot.height,
            source,
        };
        let proof = decode_proof(&op.data).map_err(proof_err)?;
        // The node's "exists" is only a claim: absence needs a proof of
        // absence, and a value needs a proof of that value, under the key
        // that was asked for.
        let value = (answer.log == "exists").then_some(answer.value.as_slice());
        if let (Some(_), Some(ics23::commitment_proof::Proof::Exist(exist))) =
            (&value, &proof.proof)
        {
            if exist.key != key.as_bytes() {
                return Err(VerifyError::ProofOfOtherKey {
                    proven: String::from_utf8_lossy(&exist.key).into_owned(),
                    asked: key,
                });
            }
        }
        verify_value(&snapshot.app_hash, key.as_bytes(), value, &proof).map_err(proof_err)?;
        Ok(answer)
    }

    /// [`get`](Self::get), decoded.
    pub async fn get_decoded<T: BorshDeserialize>(
        &self,
        snapshot: &Snapshot,
        path: &str,
    ) -> Result<Option<T>, VerifyError> {
        self.get(snapshot, path)
            .await?
            .map(|bytes| {
                T::try_from_slice(&bytes).map_err(|e| VerifyError::Decode {
                    key: path.to_owned(),
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    /// The request record `id`, checked to be the record of `id`.
    pub async fn request(
        &self,
        snapshot: &Snapshot,
        id: &Digest,
    ) -> Result<Option<RequestRecord>, VerifyError> {
        let key = format!("request/{id}");
        let record: Option<RequestRecord> = self.get_decoded(snapshot, &key).await?;
        match record {
            Some(r) if r.id != *id => Err(VerifyError::RecordMismatch {
                key,
                asked: id.to_string(),
                found: r.id.to_string(),
            }),
            r => Ok(r),
        }
    }

    /// A package's builds, the package record and every request it lists
    /// read at one verified snapshot. No build is a proven absence.
    pub async fn package_builds(
        &mut self,
        package: &PackageId,
        at: At,
    ) -> Result<PackageBuilds, VerifyError> {
        let snapshot = self.snapshot(at).await?;
        let builds = self.builds_at(&snapshot, package).await?;
        Ok(PackageBuilds { snapshot, builds })
    }

    /// [`package_builds`](Self::package_builds) at a snapshot already taken.
    pub async fn builds_at(
        &self,
        snapshot: &Snapshot,
        package: &PackageId,
    ) -> Result<Vec<RequestRecord>, VerifyError> {
        let record: Option<PackageRecord> =
            self.get_decoded(snapshot, &package.state_key()).await?;
        let count = record.map(|r| r.request_count).unwrap_or(0);
        let mut ids = Vec::new();
        for page in 0..index_pages(count) {
            let key = state_key::package_requests(package, page);
            let page: Vec<Digest> = self
                .get_decoded(snapshot, &key)
                .await?
                .ok_or(VerifyError::Missing { key })?;
            ids.extend(page);
        }
        if ids.len() as u64 != count {
            return Err(VerifyError::Missing {
                key: format!(
                    "{} (lists {} of {count} requests)",
                    package.state_key(),
                    ids.len()
                ),
            });
        }
        let mut builds = Vec::new();
        for id in ids {
            let build = self
                .request(snapshot, &id)
                .await?
                .ok_or_else(|| VerifyError::Missing {
                    key: format!("request/{id}"),
                })?;
            builds.push(build);
        }
        Ok(builds)
    }

    /// The versions of `(ecosystem, name)` the ledger lists at `snapshot`,
    /// first seen first; none is a proven absence.
    pub async fn versions_at(
        &self,
        snapshot: &Snapshot,
        ecosystem: &str,
        name: &str,
    ) -> Result<Vec<String>, VerifyError> {
        let record: Option<VersionsRecord> = self
            .get_decoded(snapshot, &state_key::versions(ecosystem, name))
            .await?;
        let count = record.map(|r| r.count).unwrap_or(0);
        let mut versions = Vec::new();
        for page in 0..index_pages(count) {
            let key = state_key::version_list(ecosystem, name, page);
            let page: Vec<String> = self
                .get_decoded(snapshot, &key)
                .await?
                .ok_or(VerifyError::Missing { key })?;
            versions.extend(page);
        }
        if versions.len() as u64 != count {
            return Err(VerifyError::Missing {
                key: format!(
                    "{} (lists {} of {count} versions)",
                    state_key::versions(ecosystem, name),
                    versions.len()
                ),
            });
        }
        Ok(versions)
    }
}

/// What [`VerifiedLedger::package_builds`] read.
#[derive(Clone, Debug)]
pub struct PackageBuilds {
    pub snapshot: Snapshot,
    /// Oldest request first, as the ledger lists them.
    pub builds: Vec<RequestRecord>,
}
