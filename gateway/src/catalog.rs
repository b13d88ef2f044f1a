//! What the gateway may serve: a package name's versions and, for each, the
//! build to serve, read with proofs through the light client, and kept on
//! disk so that what was verified once is served again when the ledger is
//! out of reach.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pyrsia_chain::{AttesterRole, Digest, Output, PackageId, PublicKey, RequestRecord, TrustLevel};
use pyrsia_ledger_client::light::LightError;
use pyrsia_ledger_client::rpc::ClientError;
use pyrsia_ledger_client::store::attested_layouts;
use pyrsia_ledger_client::verified::{At, Snapshot, VerifiedLedger, VerifyError};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tokio::sync::RwLock;

/// How a build ranks for serving; a disputed build is never served.
pub fn rank(level: TrustLevel) -> Option<u8> {
    match level {
        TrustLevel::Disputed => None,
        TrustLevel::Pending => Some(0),
        TrustLevel::QuorumOnly => Some(1),
        TrustLevel::Trusted => Some(2),
        TrustLevel::Reproducible => Some(3),
    }
}

/// Whether `level` may be served under the minimum `min`.
pub fn meets(level: TrustLevel, min: TrustLevel) -> bool {
    match (rank(level), rank(min)) {
        (Some(l), Some(m)) => l >= m,
        _ => false,
    }
}

/// One attester of a build, as the explorer and the refusals show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attester {
    pub key: PublicKey,
    pub role: AttesterRole,
    pub height: u64,
    /// Whether its outputs are the ones served (false: a dissent).
    pub agrees: bool,
}

/// One build (request or import) of a version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildView {
    pub request_id: Digest,
    pub level: TrustLevel,
    /// `import from URL` or `build of REPO@COMMIT`.
    pub origin: String,
    pub attesters: Vec<Attester>,
    /// The outputs its level stands for (empty before any attestation).
    pub outputs: Vec<Output>,
    /// Each output's attested stripe layouts, by output name, in the order
    /// to try them (views cached before layouts were kept have none: the
    /// output's own layout is then the only one).
    #[serde(default)]
    pub layouts: BTreeMap<String, Vec<(u32, Digest)>>,
    pub failures: usize,
}

impl BuildView {
    /// The first output that `pred` picks, with its layouts.
    pub fn artifact(&self, pred: impl Fn(&Output) -> bool) -> Option<Artifact> {
        let output = self.outputs.iter().find(|o| pred(o))?.clone();
        let layouts = match self.layouts.get(&output.name) {
            Some(l) if !l.is_empty() => l.clone(),
            _ => vec![(output.stripe_size, output.stripe_root)],
        };
        Some(Artifact { output, layouts })
    }
}

/// An output to serve, and the attested stripe layouts to fetch it by, most
/// trusted attester's first: one attester's bogus layout must cost a try,
/// not the package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    pub output: Output,
    pub layouts: Vec<(u32, Digest)>,
}

impl std::ops::Deref for Artifact {
    type Target = Output;
    fn deref(&self) -> &Output {
        &self.output
    }
}

/// A version and the build the gateway serves for it, if any.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionView {
    pub version: String,
    pub builds: Vec<BuildView>,
    /// The index in `builds` of the build served, or why none is.
    pub served: Result<usize, String>,
}

impl VersionView {
    /// The build served, if this version may be served.
    pub fn build(&self) -> Option<&BuildView> {
        self.served.as_ref().ok().map(|&i| &self.builds[i])
    }

    /// The served output named `name`.
    pub fn artifact(&self, name: &str) -> Option<Artifact> {
        self.build()?.artifact(|o| o.name == name)
    }
}

/// A package name as the ledger held it at `height`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameView {
    pub ecosystem: String,
    pub name: String,
    pub height: u64,
    pub versions: Vec<VersionView>,
}

impl NameView {
    pub fn version(&self, version: &str) -> Option<&VersionView> {
        self.versions.iter().find(|v| v.version == version)
    }

    /// The servable versions.
    pub fn servable(&self) -> impl Iterator<Item = (&VersionView, &BuildView)> {
        self.versions.iter().filter_map(|v| Some((v, v.build()?)))
    }

    /// Why nothing of this name is served: each version and its level.
    pub fn refusal(&self, min: TrustLevel) -> String {
        if self.versions.is_empty() {
            return format!(
                "{}:{} has no build or import on the ledger",
                self.ecosystem, self.name
            );
        }
        let each: Vec<String> = self
            .versions
            .iter()
            .map(|v| match &v.served {
                Ok(_) => format!("{} is servable", v.version),
                Err(why) => format!("{}: {why}", v.version),
            })
            .collect();
        format!(
            "{}:{} has no version at or above the minimum trust level {min} ({})",
            self.ecosystem,
            self.name,
            each.join("; ")
        )
    }
}

/// The outputs a build's level stands for: a certified trusted node's if it
/// has one (a trusted build is trusted for its outputs), else the first
/// counted regular attester's.
pub fn level_outputs(record: &RequestRecord) -> Vec<Output> {
    let counted = || {
        record
            .attestations
            .iter()
            .filter(|a| a.role != AttesterRole::Void)
    };
    counted()
        .find(|a| a.role == AttesterRole::Trusted)
        .or_else(|| counted().next())
        .map(|a| a.outputs.clone())
        .unwrap_or_default()
}

fn digests(outputs: &[Output]) -> Vec<(&str, Digest)> {
    let mut d: Vec<_> = outputs
        .iter()
        .map(|o| (o.name.as_str(), o.sha256))
        .collect();
    d.sort();
    d
}

fn build_view(record: &RequestRecord) -> BuildView {
    let outputs = level_outputs(record);
    let served = digests(&outputs);
    let origin = match &record.origin {
        pyrsia_chain::RequestOrigin::Build(r) => {
            format!("build of {}@{}", r.source.repo_url, r.source.commit)
        }
        pyrsia_chain::RequestOrigin::Import { upstream, .. } => format!("import from {upstream}"),
    };
    BuildView {
        request_id: record.id,
        level: record.level,
        origin,
        attesters: record
            .attestations
            .iter()
            .map(|a| Attester {
                key: a.attester,
                role: a.role,
                height: a.height,
                agrees: digests(&a.outputs) == served,
            })
            .collect(),
        layouts: outputs
            .iter()
            .map(|o| (o.name.clone(), attested_layouts(record, o)))
            .collect(),
        outputs,
        failures: record.failures.len(),
    }
}

/// The version's view: its builds, and the one to serve. Builds at or above
/// `min` that attest different bytes are refused together: the gateway never
/// picks one of two answers.
pub fn version_view(version: String, records: &[RequestRecord], min: TrustLevel) -> VersionView {
    let builds: Vec<BuildView> = records.iter().map(build_view).collect();
    let candidates: Vec<usize> = (0..builds.len())
        .filter(|&i| meets(builds[i].level, min) && !builds[i].outputs.is_empty())
        .collect();
    let served = match candidates.as_slice() {
        [] => Err(
            match builds
                .iter()
                .filter_map(|b| rank(b.level).map(|_| b.level))
                .max_by_key(|l| rank(*l))
            {
                Some(best) => {
                    format!("its best build is {best}, below the minimum trust level {min}")
                }
                None if builds.is_empty() => "no build".to_owned(),
                None => "every build is disputed".to_owned(),
            },
        ),
        [first, rest @ ..] => {
            let wanted = digests(&builds[*first].outputs);
            if rest.iter().any(|&i| digests(&builds[i].outputs) != wanted) {
                Err(format!(
                    "its builds at or above {min} disagree on their outputs ({})",
                    candidates
                        .iter()
                        .map(|&i| builds[i].request_id.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            } else {
                // The most trusted build; the latest among equals.
                let best = candidates
                    .iter()
                    .copied()
                    .max_by_key(|&i| (rank(builds[i].level), i))
                    .unwrap_or(*first);
                Ok(best)
            }
        }
    };
    VersionView {
        version,
        builds,
        served,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("reading {what} from the ledger: {source}")]
    Ledger {
        what: String,
        #[source]
        source: VerifyError,
    },
    #[error("the ledger is out of reach ({reason}) and {what} was never verified here")]
    Offline { what: String, reason: String },
}

/// Verified name views, cached in memory for `ttl` and on disk for offline
/// use.
#[derive(Debug)]
pub struct Catalog {
    ledger: RwLock<VerifiedLedger>,
    snapshot: Mutex<Option<(Instant, Snapshot)>>,
    views: Mutex<BTreeMap<(String, String), (Instant, NameView)>>,
    dir: PathBuf,
    ttl: Duration,
    min: TrustLevel,
    offline: Mutex<bool>,
}

impl Catalog {
    /// `dir` keeps the verified views (one JSON file per name).
    pub fn new(ledger: VerifiedLedger, dir: PathBuf, ttl: Duration, min: TrustLevel) -> Catalog {
        Catalog {
            ledger: RwLock::new(ledger),
            snapshot: Mutex::new(None),
            views: Mutex::new(BTreeMap::new()),
            dir,
            ttl,
            min,
            offline: Mutex::new(false),
        }
    }

    pub fn min(&self) -> TrustLevel {
        self.min
    }

    /// Whether the last ledger read failed (the gateway serves what it
    /// verified before).
    pub fn is_offline(&self) -> bool {
        self.offline.lock().map(|o| *o).unwrap_or(false)
    }

    fn set_offline(&self, offline: bool, reason: &str) {
        if let Ok(mut o) = self.offline.lock() {
            if *o != offline {
                if offline {
                    tracing::warn!(
                        reason,
                        "offline: the ledger is out of reach; serving what was verified before"
                    );
                } else {
                    tracing::info!("online: the ledger answers again");
                }
            }
            *o = offline;
        }
    }

    fn file(&self, ecosystem: &str, name: &str) -> PathBuf {
        let id = hex::encode(sha2::Sha256::digest(
            format!("{ecosystem}\0{name}").as_bytes(),
        ));
        self.dir.join(format!("{id}.json"))
    }

    /// Forgets the cached view of a name, so that the next read sees the
    /// state at `height` or later (after this node imported into it).
    pub fn invalidate(&self, ecosystem: &str, name: &str, height: u64) {
        if let Ok(mut views) = self.views.lock() {
            views.remove(&(ecosystem.to_owned(), name.to_owned()));
        }
        if let Ok(mut s) = self.snapshot.lock() {
            if s.as_ref().is_some_and(|(_, snap)| snap.height < height) {
                *s = None;
            }
        }
    }

    /// A verified snapshot no older than the view TTL.
    pub async fn snapshot(&self) -> Result<Snapshot, VerifyError> {
        if let Ok(s) = self.snapshot.lock() {
            if let Some((at, snap)) = s.as_ref() {
                if at.elapsed() < self.ttl.min(Duration::from_secs(2)) {
                    return Ok(snap.clone());
                }
            }
        }
        let snap = self.ledger.write().await.snapshot(At::Latest).await?;
        if let Ok(mut s) = self.snapshot.lock() {
            *s = Some((Instant::now(), snap.clone()));
        }
        Ok(snap)
    }

    /// Runs `read` against the verified ledger at `snapshot`.
    pub async fn ledger(&self) -> tokio::sync::RwLockReadGuard<'_, VerifiedLedger> {
        self.ledger.read().await
    }

    /// The name's view: from memory if younger than the TTL, else read with
    /// proofs; if the ledger cannot be read, the last view verified here.
    pub async fn name(&self, ecosystem: &str, name: &str) -> Result<NameView, CatalogError> {
        let key = (ecosystem.to_owned(), name.to_owned());
        if let Ok(views) = self.views.lock() {
            if let Some((at, view)) = views.get(&key) {
                if at.elapsed() < self.ttl {
                    return Ok(view.clone());
                }
            }
        }
        match self.read(ecosystem, name).await {
            Ok(view) => {
                self.set_offline(false, "");
                self.remember(&key, &view);
                Ok(view)
            }
            Err(source) => {
                let what = format!("{ecosystem}:{name}");
                let reason = source.to_string();
                if !unreachable(&source) {
                    return Err(CatalogError::Ledger { what, source });
                }
                self.set_offline(true, &reason);
                let view = std::fs::read(self.file(ecosystem, name))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<NameView>(&b).ok())
                    .filter(|v| v.ecosystem == ecosystem && v.name == name)
                    .ok_or(CatalogError::Offline { what, reason })?;
                tracing::info!(
                    ecosystem,
                    name,
                    height = view.height,
                    "offline: serving the view verified at this height"
                );
                Ok(view)
            }
        }
    }

    fn remember(&self, key: &(String, String), view: &NameView) {
        if let Ok(mut views) = self.views.lock() {
            views.insert(key.clone(), (Instant::now(), view.clone()));
        }
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let path = self.file(&view.ecosystem, &view.name);
            static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp = path.with_extension(format!("tmp{n}"));
            std::fs::write(&tmp, serde_json::to_vec(view)?)?;
            std::fs::rename(tmp, path)
        };
        if let Err(e) = write() {
            tracing::warn!(error = %e, "cannot keep a verified view for offline use");
        }
    }

    async fn read(&self, ecosystem: &str, name: &str) -> Result<NameView, VerifyError> {
        let snapshot = self.snapshot().await?;
        let ledger = self.ledger.read().await;
        let versions = ledger.versions_at(&snapshot, ecosystem, name).await?;
        let mut views = Vec::with_capacity(versions.len());
        for version in versions {
            let package = PackageId {
                ecosystem: ecosystem.to_owned(),
                name: name.to_owned(),
                version: version.clone(),
            };
            let builds = ledger.builds_at(&snapshot, &package).await?;
            views.push(version_view(version, &builds, self.min));
        }
        Ok(NameView {
            ecosystem: ecosystem.to_owned(),
            name: name.to_owned(),
            height: snapshot.height,
            versions: views,
        })
    }
}

/// Whether a read failed because no node answered (as opposed to a node
/// that answered wrongly, which is never a reason to serve old state
/// silently: it is logged and refused).
fn unreachable(e: &VerifyError) -> bool {
    matches!(
        e,
        VerifyError::Client(ClientError::Rpc { .. } | ClientError::Timeout(..))
            | VerifyError::Stale { .. }
            | VerifyError::Light(LightError::Rpc { .. })
    )
}

#[cfg(test)]
#[allow(clippy::expect_used)] // a failed expectation fails the test
mod tests {
    use super::*;
    use pyrsia_chain::{AttestationRecord, RequestOrigin};

    fn output(sha: u8) -> Output {
        Output {
            name: "a.tgz".into(),
            sha256: Digest([sha; 32]),
            size: 1,
            stripe_size: 1,
            stripe_root: Digest([sha; 32]),
        }
    }

    fn record(id: u8, level: TrustLevel, attestations: &[(AttesterRole, u8)]) -> RequestRecord {
        let origin = RequestOrigin::Import {
            package: PackageId {
                ecosystem: "npm".into(),
                name: "a".into(),
                version: "1".into(),
            },
            upstream: "u".into(),
        };
        RequestRecord {
            attestations: attestations
                .iter()
                .enumerate()
                .map(|(i, (role, sha))| AttestationRecord {
                    attester: PublicKey([i as u8; 32]),
                    role: *role,
                    height: 1,
                    outputs: vec![output(*sha)],
                    build_env: String::new(),
                    log_digest: Digest::default(),
                    provenance: None,
                })
                .collect(),
            level,
            ..RequestRecord::new(Digest([id; 32]), origin, Default::default(), 1)
        }
    }

    #[test]
    fn a_trusted_build_serves_the_trusted_nodes_outputs_and_shows_the_dissent() {
        use AttesterRole::*;
        let r = record(
            1,
            TrustLevel::Trusted,
            &[(Regular, 9), (Trusted, 7), (Void, 5)],
        );
        let v = version_view("1".into(), &[r], TrustLevel::Trusted);
        let b = v.build().expect("servable");
        assert_eq!(b.outputs, vec![output(7)]);
        let agrees: Vec<bool> = b.attesters.iter().map(|a| a.agrees).collect();
        assert_eq!(agrees, [false, true, false]);
    }

    #[test]
    fn below_the_minimum_the_refusal_names_the_level() {
        let r = record(1, TrustLevel::QuorumOnly, &[(AttesterRole::Regular, 7)]);
        let v = version_view("1".into(), &[r], TrustLevel::Trusted);
        let why = v.served.expect_err("refused");
        assert!(
            why.contains("quorum_only") && why.contains("trusted"),
            "{why}"
        );
    }

    #[test]
    fn disputed_builds_are_never_served_and_disagreeing_ones_are_refused_together() {
        use AttesterRole::*;
        let disputed = record(1, TrustLevel::Disputed, &[(Trusted, 7)]);
        let v = version_view("1".into(), &[disputed], TrustLevel::Pending);
        assert!(v.build().is_none());
        let a = record(1, TrustLevel::Trusted, &[(Trusted, 7)]);
        let b = record(2, TrustLevel::Reproducible, &[(Trusted, 8)]);
        let v = version_view("1".into(), &[a.clone(), b], TrustLevel::Trusted);
        assert!(v.served.expect_err("refused").contains("disagree"));
        // Agreeing builds: the most trusted one is served.
        let c = record(3, TrustLevel::Reproducible, &[(Trusted, 7)]);
        let v = version_view("1".into(), &[a, c], TrustLevel::Trusted);
        assert_eq!(v.build().map(|b| b.request_id), Some(Digest([3; 32])));
    }
}
