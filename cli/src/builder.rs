//! `pyrsia builder start`: follow the ledger, rebuild the requests this node
//! was selected for (every request in its ecosystems when its key is a
//! certified trusted node), put the outputs, the log and a signed provenance
//! envelope into the local store, pinned, and attest their digests. A build
//! that fails is reported on the ledger with its reason and its stored log.
//!
//! Progress survives restarts: `state.json` holds the next block to read and
//! the requests taken but not finished, so a builder killed mid-build catches
//! up on restart. Every finished job appends a line to `jobs.jsonl`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use clap::Args;
use pyrsia_chain::{
    sign_tx, Attest, Digest, FailureClass, Keypair, NodeRecord, PublicKey, RegisterBuilder,
    ReportFailure, RequestOrigin, RequestRecord, TxBody, TxKind,
};
use pyrsia_ledger_client::follow::Follower;
use pyrsia_ledger_client::rpc::{ClientError, LedgerClient, LedgerEvent};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Mutex};

use crate::keys::KeyArgs;
use crate::Context;
use pyrsia_ledger_client::store::{put_output, StoreClient};

#[derive(Args, Debug, Clone)]
pub struct BuilderArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    /// Control API of this builder's store sidecar.
    #[arg(
        long,
        env = "PYRSIA_STORE_API",
        default_value = crate::store_api::DEFAULT_API_URL
    )]
    pub store_api: String,
    /// Ecosystems to build (default: every one this binary has a recipe for).
    #[arg(long = "ecosystem", value_delimiter = ',')]
    pub ecosystems: Vec<String>,
    /// Work directory: state, job log, build sandboxes (default HOME/builder).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Builds run at the same time.
    #[arg(long, default_value_t = 1)]
    pub max_builds: usize,
    /// Wall-clock limit of one build, in seconds.
    #[arg(long, default_value_t = 900)]
    pub build_timeout: u64,
    /// Memory limit of one build (e.g. 4G).
    #[arg(long, default_value = "4G", value_parser = p2p_store::cli::parse_size)]
    pub build_memory: u64,
    /// Disk limit of one build (e.g. 8G).
    #[arg(long, default_value = "8G", value_parser = p2p_store::cli::parse_size)]
    pub build_disk: u64,
    /// A registry the dependency step may fetch from, as NAME=URL (names:
    /// npm, crates, crates-dl, pypi, pypi-files, maven). Repeatable. A
    /// recipe whose registry is missing builds offline.
    #[arg(long = "upstream", env = "PYRSIA_BUILD_UPSTREAMS", value_delimiter = ',', value_parser = parse_upstream)]
    pub upstreams: Vec<builder::Upstream>,
}

fn parse_upstream(s: &str) -> Result<builder::Upstream, String> {
    let (name, url) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=URL"))?;
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(format!("upstream {name}: {url:?} is not an http(s) URL"));
    }
    Ok(builder::Upstream {
        name: name.to_string(),
        url: url.to_string(),
    })
}

/// What a builder remembers across restarts.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    next_height: u64,
    /// Requests taken from the ledger whose job has not finished.
    pending: BTreeSet<Digest>,
    /// How often each pending job was started: a job that kills the builder
    /// (and so never finishes) is resumed on restart only so many times.
    #[serde(default)]
    starts: std::collections::BTreeMap<Digest, u32>,
}

/// A job started this often without finishing is dropped.
const MAX_JOB_STARTS: u32 = 3;

struct StateFile {
    path: PathBuf,
    state: State,
}

impl StateFile {
    fn load(path: PathBuf) -> Result<Option<StateFile>> {
        match std::fs::read(&path) {
            Ok(bytes) => {
                let state = serde_json::from_slice(&bytes)
                    .with_context(|| format!("reading {}", path.display()))?;
                Ok(Some(StateFile { path, state }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Write-then-rename, so a crash leaves either the old or the new state.
    fn save(&self) -> Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.state)?)?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

/// One line of `jobs.jsonl`.
#[derive(Debug, Serialize)]
struct JobReport<'a> {
    request_id: Digest,
    package: String,
    outcome: &'a str,
    error: Option<String>,
    /// The build alone, in its sandbox.
    build_secs: Option<f64>,
    /// Everything: ledger reads, build, uploads, attestation.
    job_secs: f64,
    outputs: Vec<pyrsia_chain::Output>,
    log: Option<PathBuf>,
}

struct Shared {
    ledger: LedgerClient,
    store: StoreClient,
    key: Keypair,
    chain_id: String,
    work_dir: PathBuf,
    limits: builder::Limits,
    upstreams: Vec<builder::Upstream>,
    /// This binary's `builder normalise`, run inside each build's sandbox.
    normaliser: Option<Vec<String>>,
    state: Mutex<StateFile>,
    /// One transaction at a time, so nonces never race.
    submit: Mutex<()>,
}

pub async fn run(ctx: &Context, args: BuilderArgs) -> Result<()> {
    let key = args.key.load(&ctx.home)?;
    let me = key.public();
    let work_dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| ctx.home.join("builder"));
    let bwrap = builder::check_sandbox().context("this host cannot run build sandboxes")?;
    tracing::info!(%bwrap, "build sandbox available");
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;
    let ecosystems = if args.ecosystems.is_empty() {
        builder::supported_ecosystems()
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    } else {
        for e in &args.ecosystems {
            if !builder::supported_ecosystems().contains(&e.as_str()) {
                anyhow::bail!(
                    "no recipe for ecosystem {e:?}; supported: {}",
                    builder::supported_ecosystems().join(", ")
                );
            }
        }
        args.ecosystems.clone()
    };
    let ledger = LedgerClient::new(&ctx.node)?;
    // The token of the store services.toml declares at this address (or
    // PYRSIA_STORE_TOKEN_FILE): the builder puts its outputs.
    let store = crate::store_api::for_home(&ctx.home, &args.store_api, None)?;
    let chain_id = retry_until_up("ledger", || ledger.chain_id()).await;
    let peer_id = retry_until_up("store", || store.status()).await.peer_id;

    let node: Option<NodeRecord> = ledger.query_value(&format!("node/{me}")).await?;
    let trusted = node.as_ref().is_some_and(|n| n.is_certified_at(now_unix()));
    let shared = Arc::new(Shared {
        ledger: ledger.clone(),
        store,
        key,
        chain_id,
        work_dir: work_dir.clone(),
        limits: builder::Limits {
            time: Duration::from_secs(args.build_timeout),
            memory_bytes: args.build_memory,
            disk_bytes: args.build_disk,
            ..builder::Limits::default()
        },
        upstreams: args.upstreams.clone(),
        normaliser: Some(vec![
            std::env::current_exe()
                .context("finding this binary, to normalise outputs in the sandbox")?
                .to_string_lossy()
                .into_owned(),
            "builder".into(),
            "normalise".into(),
        ]),
        state: Mutex::new(StateFile {
            path: work_dir.join("state.json"),
            state: State::default(),
        }),
        submit: Mutex::new(()),
    });

    let start_height = if trusted {
        ledger.latest_height().await? + 1
    } else {
        register(&shared, node.as_ref(), &peer_id, &ecosystems).await?
    };
    let state = match StateFile::load(work_dir.join("state.json"))? {
        Some(saved) => saved,
        None => StateFile {
            path: work_dir.join("state.json"),
            state: State {
                next_height: start_height,
                pending: BTreeSet::new(),
                starts: Default::default(),
            },
        },
    };
    let resume: Vec<Digest> = state.state.pending.iter().copied().collect();
    let mut follower = Follower::new(ledger, state.state.next_height);
    state.save()?;
    *shared.state.lock().await = state;
    tracing::info!(
        builder = %me,
        mode = if trusted { "trusted" } else { "regular" },
        ecosystems = %ecosystems.join(","),
        from_height = follower.next_height(),
        resuming = resume.len(),
        "builder started"
    );

    // Bounded: when every worker is busy the follower stops reading blocks.
    let (jobs, queue) = mpsc::channel::<Digest>(args.max_builds.max(1));
    let queue = Arc::new(Mutex::new(queue));
    for _ in 0..args.max_builds.max(1) {
        let shared = shared.clone();
        let queue = queue.clone();
        tokio::spawn(async move {
            loop {
                let next = queue.lock().await.recv().await;
                let Some(id) = next else { break };
                run_job(&shared, id).await;
            }
        });
    }
    for id in resume {
        jobs.send(id).await?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let block = tokio::select! {
            b = follower.next_block() => b,
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        };
        let (height, events) = match block {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("reading block {}: {e}", follower.next_height());
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mine: Vec<Digest> = events
            .iter()
            .filter(|e| is_for_me(e, &me, trusted, &ecosystems))
            .filter_map(|e| e.attribute("request_id")?.parse().ok())
            .collect();
        {
            let mut state = shared.state.lock().await;
            state.state.pending.extend(mine.iter().copied());
            state.state.next_height = height + 1;
            state.save()?;
        }
        for id in mine {
            tracing::info!(request = %id, height, "selected");
            jobs.send(id).await?;
        }
    }
    tracing::info!("builder stopping");
    Ok(())
}

/// A request this builder should build: any request of its ecosystems for
/// a trusted node; for a regular builder, one it was selected for, first or
/// as a replacement.
fn is_for_me(e: &LedgerEvent, me: &PublicKey, trusted: bool, ecosystems: &[String]) -> bool {
    match e.kind.as_str() {
        "build_requested" if trusted => {}
        "builders_selected" | "builders_replaced" if !trusted => {}
        _ => return false,
    }
    if trusted {
        return e
            .attribute("ecosystem")
            .is_some_and(|eco| ecosystems.iter().any(|x| x == eco));
    }
    let me = me.to_string();
    e.attribute("selected")
        .is_some_and(|s| s.split(',').any(|k| k == me))
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn retry_until_up<T, E, F, Fut>(what: &str, mut call: F) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut warned = false;
    loop {
        match call().await {
            Ok(v) => return v,
            Err(e) => {
                if !warned {
                    tracing::info!("waiting for the {what}: {e}");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Registers (or re-registers with new ecosystems, or after missed deadlines
/// took it out of selection) and returns the height from which this builder
/// can have been selected.
async fn register(
    shared: &Shared,
    node: Option<&NodeRecord>,
    peer_id: &str,
    ecosystems: &[String],
) -> Result<u64> {
    if let Some(info) = node.and_then(|n| n.builder.as_ref()) {
        let mut have = info.ecosystems.clone();
        let mut want = ecosystems.to_vec();
        have.sort();
        want.sort();
        if info.peer_id == peer_id && have == want && !info.slots.is_empty() {
            return Ok(info.registered_height);
        }
    }
    let committed = submit(
        shared,
        TxKind::RegisterBuilder(RegisterBuilder {
            peer_id: peer_id.to_owned(),
            ecosystems: ecosystems.to_vec(),
        }),
    )
    .await
    .context("registering as a builder")?;
    tracing::info!(height = committed, "registered as a builder");
    Ok(committed)
}

/// Signs with the next nonce and waits for the commit; returns its height.
/// A node that cannot be reached, or a commit not seen in time, is retried
/// a few times; a rejection is final.
async fn submit(shared: &Shared, kind: TxKind) -> Result<u64, ClientError> {
    let _one_at_a_time = shared.submit.lock().await;
    let mut attempt = 0;
    loop {
        let result = async {
            let nonce = shared.ledger.next_nonce(&shared.key.public()).await?;
            let tx = sign_tx(
                &shared.key,
                &shared.chain_id,
                TxBody {
                    nonce,
                    kind: kind.clone(),
                },
            );
            Ok(shared.ledger.submit(&tx).await?.height)
        }
        .await;
        match result {
            Err(e @ (ClientError::Rpc { .. } | ClientError::Timeout(..))) if attempt < RETRIES => {
                attempt += 1;
                tracing::warn!(
                    "{} transaction: {e}; retrying ({attempt}/{RETRIES})",
                    kind.name()
                );
                tokio::time::sleep(Duration::from_secs(2 << attempt)).await;
            }
            other => return other,
        }
    }
}

/// How often a transient failure (ledger or store unreachable) is retried.
const RETRIES: u32 = 3;

async fn run_job(shared: &Shared, id: Digest) {
    let started = Instant::now();
    let starts = {
        let mut state = shared.state.lock().await;
        let n = state.state.starts.entry(id).or_insert(0);
        *n += 1;
        let n = *n;
        if let Err(e) = state.save() {
            tracing::warn!("saving builder state: {e:#}");
        }
        n
    };
    if starts > MAX_JOB_STARTS {
        let why = format!(
            "dropped: started {} times without finishing (the builder stopped during it each time)",
            starts - 1
        );
        tracing::error!(request = %id, "{why}");
        finish_job(
            shared,
            id,
            JobReport {
                request_id: id,
                package: String::new(),
                outcome: "dropped",
                error: Some(why),
                build_secs: None,
                job_secs: 0.0,
                outputs: Vec::new(),
                log: None,
            },
        )
        .await;
        return;
    }
    let record = shared
        .ledger
        .query_value::<RequestRecord>(&format!("request/{id}"))
        .await
        .map_err(anyhow::Error::from)
        .and_then(|r| r.ok_or_else(|| anyhow!("request {id} is not on the ledger")));
    let package = record
        .as_ref()
        .map(|r| r.origin.package().to_string())
        .unwrap_or_default();
    let result = match record {
        Ok(record) => build_and_attest(shared, record).await,
        Err(e) => Err(e),
    };
    let (outcome, error, outputs, log, build_secs) = match result {
        Ok(done) => (done.outcome, None, done.outputs, done.log, done.build_secs),
        Err(e) => {
            tracing::warn!(request = %id, "build failed: {e:#}");
            ("failed", Some(format!("{e:#}")), Vec::new(), None, None)
        }
    };
    let report = JobReport {
        request_id: id,
        package,
        outcome,
        error,
        build_secs,
        job_secs: started.elapsed().as_secs_f64(),
        outputs,
        log,
    };
    finish_job(shared, id, report).await;
}

/// Records the job's end in `jobs.jsonl` and takes it out of the state.
async fn finish_job(shared: &Shared, id: Digest, report: JobReport<'_>) {
    if let Err(e) = append_report(&shared.work_dir, &report) {
        tracing::warn!("writing jobs.jsonl: {e}");
    }
    let mut state = shared.state.lock().await;
    state.state.pending.remove(&id);
    state.state.starts.remove(&id);
    if let Err(e) = state.save() {
        tracing::warn!("saving builder state: {e:#}");
    }
}

fn append_report(dir: &Path, report: &JobReport<'_>) -> Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("jobs.jsonl"))?;
    writeln!(f, "{}", serde_json::to_string(report)?)?;
    Ok(())
}

struct Done {
    outcome: &'static str,
    build_secs: Option<f64>,
    outputs: Vec<pyrsia_chain::Output>,
    log: Option<PathBuf>,
}

async fn build_and_attest(shared: &Shared, record: RequestRecord) -> Result<Done> {
    let me = shared.key.public();
    let id = record.id;
    let answered = if record.attestations.iter().any(|a| a.attester == me) {
        Some("already_attested")
    } else if record.failures.iter().any(|f| f.builder == me) {
        Some("already_reported")
    } else {
        None
    };
    if let Some(outcome) = answered {
        return Ok(Done {
            outcome,
            build_secs: None,
            outputs: Vec::new(),
            log: None,
        });
    }
    let RequestOrigin::Build(request) = &record.origin else {
        anyhow::bail!("request {id} is an import, not a build");
    };
    let spec = builder::BuildSpec {
        ecosystem: request.package.ecosystem.clone(),
        name: request.package.name.clone(),
        version: request.package.version.clone(),
        repo_url: request.source.repo_url.clone(),
        commit: request.source.commit.clone(),
        recipe: request.recipe.clone(),
    };
    let config = builder::BuilderConfig {
        work_dir: shared.work_dir.join("builds"),
        limits: shared.limits.clone(),
        upstreams: shared.upstreams.clone(),
        normaliser: shared.normaliser.clone(),
    };
    tracing::info!(request = %id, package = %request.package, "building");
    let built = tokio::task::spawn_blocking(move || builder::build(&spec, &config))
        .await
        .context("build task")?;
    let built = match built {
        Ok(b) => b,
        Err(e) => {
            report_failure(shared, id, &e).await;
            return Err(e.into());
        }
    };
    let uploaded = upload(shared, &built).await;
    let log = keep_log(&shared.work_dir, id, &built.log_path);
    let (outputs, log_digest) = uploaded?;
    let provenance = store_provenance(shared, request, id, &built, &outputs, log_digest)
        .await
        .context("storing the provenance")?;
    let attest = Attest {
        request_id: id,
        outputs: outputs.clone(),
        build_env: built.build_env.clone(),
        log_digest,
        provenance: Some(provenance),
    };
    match submit(shared, TxKind::Attest(attest)).await {
        Ok(height) => {
            tracing::info!(request = %id, height, secs = built.duration.as_secs_f64(), "attested");
        }
        // A retry after a commit we did not see in time.
        Err(ClientError::Rejected { code, .. })
            if code == pyrsia_chain::code::DUPLICATE_ATTESTATION =>
        {
            tracing::info!(request = %id, "attestation already committed");
        }
        Err(e) => return Err(e.into()),
    }
    Ok(Done {
        outcome: "attested",
        build_secs: Some(built.duration.as_secs_f64()),
        outputs,
        log,
    })
}

/// The failure class the ledger records for a build error.
fn failure_class(e: &builder::BuildError) -> FailureClass {
    use builder::BuildError as E;
    match e {
        E::SourceUnreachable { .. } => FailureClass::SourceUnreachable,
        E::UnknownCommit { .. } => FailureClass::UnknownCommit,
        E::BadCommit { .. } | E::UnsupportedEcosystem { .. } | E::BadSpec { .. } => {
            FailureClass::BadRequest
        }
        E::BadRecipe { .. } => FailureClass::BadRecipe,
        E::DependencyFetch { .. } | E::DependencyMismatch { .. } => FailureClass::Dependency,
        E::BuildFailed { .. } => FailureClass::BuildFailed,
        E::TimedOut { .. } => FailureClass::TimedOut,
        E::OutputMissing { .. } => FailureClass::OutputMissing,
        E::OutputMismatch { .. } => FailureClass::OutputMismatch,
        E::Sandbox(_) => FailureClass::Sandbox,
        E::Io { .. } => FailureClass::Other,
    }
}

/// Keeps the failed build's log (in `logs/` and pinned in the store, when
/// it can) and reports the failure on the ledger. Best effort: the job
/// fails with the build error whatever happens here.
async fn report_failure(shared: &Shared, id: Digest, e: &builder::BuildError) {
    let mut log_digest = None;
    if let Some(log) = e.log_path() {
        let kept = keep_log(&shared.work_dir, id, log);
        // The kept copy outlives the build directory.
        let path = kept.as_deref().unwrap_or(log);
        match put_output(&shared.store, path, "build.log").await {
            Ok(stored) => log_digest = Some(stored.sha256),
            Err(err) => tracing::warn!(request = %id, "storing the failed build's log: {err:#}"),
        }
    }
    let reason = failure_class(e);
    let report = ReportFailure {
        request_id: id,
        reason,
        log_digest,
    };
    match submit(shared, TxKind::ReportFailure(report)).await {
        Ok(height) => tracing::info!(request = %id, height, %reason, "reported the failure"),
        Err(ClientError::Rejected { code, .. })
            if code == pyrsia_chain::code::DUPLICATE_FAILURE =>
        {
            tracing::info!(request = %id, "failure report already committed");
        }
        Err(err) => tracing::warn!(request = %id, "reporting the failure: {err}"),
    }
}

/// Writes this build's signed provenance to `provenance/REQUEST.intoto.jsonl`
/// and puts it into the store, pinned; returns its ledger description.
async fn store_provenance(
    shared: &Shared,
    request: &pyrsia_chain::BuildRequest,
    id: Digest,
    built: &builder::BuildOutcome,
    outputs: &[pyrsia_chain::Output],
    log_digest: Digest,
) -> Result<pyrsia_chain::Output> {
    use pyrsia_provenance::{Artifact, BuildFacts, Dependency, Envelope, ExternalParameters};
    let public = shared.key.public().0;
    let facts = BuildFacts {
        request_id: id.to_string(),
        parameters: ExternalParameters {
            ecosystem: request.package.ecosystem.clone(),
            name: request.package.name.clone(),
            version: request.package.version.clone(),
            repo_url: request.source.repo_url.clone(),
            commit: request.source.commit.clone(),
            recipe: request.recipe.clone(),
        },
        build_env: built.build_env.clone(),
        builder_key: public,
        outputs: outputs
            .iter()
            .map(|o| Artifact {
                name: o.name.clone(),
                sha256: o.sha256.to_string(),
            })
            .collect(),
        dependencies: built
            .resolved_dependencies
            .iter()
            .map(|d| Dependency {
                uri: d.uri.clone(),
                sha256: d.sha256.clone(),
                size: d.size,
            })
            .collect(),
        log: Artifact {
            name: "build.log".to_owned(),
            sha256: log_digest.to_string(),
        },
    };
    let statement = pyrsia_provenance::Statement::new(&facts);
    let envelope = Envelope::sign(&statement, &public, |m| shared.key.sign(m));
    let dir = shared.work_dir.join("provenance");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{id}.intoto.jsonl"));
    std::fs::write(&path, envelope.to_json_line())
        .with_context(|| format!("writing {}", path.display()))?;
    let mut attempt = 0;
    loop {
        match put_output(&shared.store, &path, PROVENANCE_NAME).await {
            Err(e) if attempt < RETRIES => {
                attempt += 1;
                tracing::warn!("storing the provenance: {e:#}; retrying ({attempt}/{RETRIES})");
                tokio::time::sleep(Duration::from_secs(2 << attempt)).await;
            }
            other => return Ok(other?),
        }
    }
}

/// The name a provenance envelope is attested under.
pub const PROVENANCE_NAME: &str = "provenance.intoto.jsonl";

/// Puts every output and the log into the store, pinned.
async fn upload(
    shared: &Shared,
    built: &builder::BuildOutcome,
) -> Result<(Vec<pyrsia_chain::Output>, Digest)> {
    let mut attempt = 0;
    loop {
        let result = async {
            let mut outputs = Vec::with_capacity(built.outputs.len());
            for file in &built.outputs {
                outputs.push(put_output(&shared.store, &file.path, &file.name).await?);
            }
            let log = put_output(&shared.store, &built.log_path, "build.log").await?;
            anyhow::Ok((outputs, log.sha256))
        }
        .await;
        match result {
            Err(e) if attempt < RETRIES => {
                attempt += 1;
                tracing::warn!("uploading to the store: {e:#}; retrying ({attempt}/{RETRIES})");
                tokio::time::sleep(Duration::from_secs(2 << attempt)).await;
            }
            other => return other,
        }
    }
}

/// How many build logs `logs/` keeps; the oldest go first.
const KEPT_LOGS: usize = 256;

/// Moves a build log to `logs/REQUEST.log`, where operators look for it,
/// and drops the oldest logs beyond [`KEPT_LOGS`].
fn keep_log(work_dir: &Path, id: Digest, log: &Path) -> Option<PathBuf> {
    let dir = work_dir.join("logs");
    let kept = dir.join(format!("{id}.log"));
    let moved = std::fs::create_dir_all(&dir).and_then(|()| std::fs::rename(log, &kept));
    if let Err(e) = moved {
        tracing::warn!("keeping build log {}: {e}", log.display());
        let _ = std::fs::remove_file(log);
        return None;
    }
    if let Err(e) = prune_logs(&dir) {
        tracing::warn!("pruning {}: {e}", dir.display());
    }
    Some(kept)
}

fn prune_logs(dir: &Path) -> std::io::Result<()> {
    let mut logs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        logs.push((entry.metadata()?.modified()?, entry.path()));
    }
    if logs.len() > KEPT_LOGS {
        logs.sort();
        for (_, path) in &logs[..logs.len() - KEPT_LOGS] {
            std::fs::remove_file(path)?;
        }
    }
    Ok(())
}
