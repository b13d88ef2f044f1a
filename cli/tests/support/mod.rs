//! Harness for end-to-end tests and benches: real `cometbft` validators
//! beside real `pyrsia abci` processes, on 127.0.0.1 with free ports, in a
//! temp dir. Each test and bench target includes it as a module and uses a
//! part of it.
#![allow(dead_code)]

pub mod fixtures;
pub mod load;
pub mod netns;
pub mod validators;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use pyrsia_chain::Keypair;
use pyrsia_ledger_client::light::{LightClient, LightConfig, LightStore, TrustAnchor};
use pyrsia_ledger_client::rpc::LedgerClient;
use pyrsia_ledger_client::verified::VerifiedLedger;

/// Request number `i` of a synthetic load: package `pkg{i}` 1.0.0 of
/// `ecosystem`, from a made-up repository at a made-up commit (nothing builds
/// it; ledger tests and benches only need distinct, valid requests).
pub fn synthetic_request(i: usize, ecosystem: &str) -> pyrsia_chain::BuildRequest {
    pyrsia_chain::BuildRequest {
        package: pyrsia_chain::PackageId {
            ecosystem: ecosystem.into(),
            name: format!("pkg{i}"),
            version: "1.0.0".into(),
        },
        source: pyrsia_chain::SourceRef {
            repo_url: format!("https://example.org/pkg{i}.git"),
            commit: format!("{i:040x}"),
        },
        recipe: ecosystem.into(),
    }
}

/// What a condition of [`eventually`] observed: `Ok`/`Some` when it holds
/// (with the value to return), else the state seen, for the failure message.
pub trait Observed {
    type Value;
    fn held(self) -> std::result::Result<Self::Value, String>;
}

impl<T, S: std::fmt::Debug> Observed for std::result::Result<T, S> {
    type Value = T;
    fn held(self) -> std::result::Result<T, String> {
        self.map_err(|s| format!("{s:?}"))
    }
}

impl<T> Observed for Option<T> {
    type Value = T;
    fn held(self) -> std::result::Result<T, String> {
        self.ok_or_else(|| "None".to_owned())
    }
}

/// How often [`eventually`] looks again.
const POLL: Duration = Duration::from_millis(200);

/// Waits on state: runs `condition` every 200 ms until it holds (returns
/// `Ok`/`Some`) and returns its value; an error once `within` has passed,
/// naming `what` and the last state the condition returned.
pub async fn try_eventually<O, F>(
    within: Duration,
    what: &str,
    mut condition: impl FnMut() -> F,
) -> Result<O::Value>
where
    O: Observed,
    F: std::future::Future<Output = O>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match condition().await.held() {
            Ok(v) => return Ok(v),
            Err(last) if tokio::time::Instant::now() >= deadline => {
                bail!("timed out after {within:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// [`try_eventually`] for code outside the runtime: the same rule, with
/// the thread blocked between looks.
pub fn try_eventually_blocking<O: Observed>(
    within: Duration,
    what: &str,
    mut condition: impl FnMut() -> O,
) -> Result<O::Value> {
    let deadline = std::time::Instant::now() + within;
    loop {
        match condition().held() {
            Ok(v) => return Ok(v),
            Err(last) if std::time::Instant::now() >= deadline => {
                bail!("timed out after {within:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// [`try_eventually`], failing the test on timeout. The one polling loop of
/// these tests: nothing sleeps for a fixed time instead.
pub async fn eventually<O, F>(
    within: Duration,
    what: &str,
    condition: impl FnMut() -> F,
) -> O::Value
where
    O: Observed,
    F: std::future::Future<Output = O>,
{
    match try_eventually(within, what, condition).await {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

/// The repository root (this package lives in `cli/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// `cometbft`: `$PYRSIA_COMETBFT`, else the copy `scripts/setup.sh` installs.
pub fn cometbft() -> PathBuf {
    std::env::var_os("PYRSIA_COMETBFT")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".tools/bin/cometbft"))
}

/// The `pyrsia` binary cargo built for this test or bench target, in the
/// same profile.
pub fn pyrsia_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pyrsia"))
}

// Ports are picked below Linux's ephemeral range (32768 and up): a port
// found free there could be taken by any outgoing connection before the
// process that should listen on it binds it.

/// A base port such that BASE+10i .. BASE+10i+2 are free for `nodes` nodes.
fn free_base_port(nodes: usize) -> Result<u16> {
    let seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
    for attempt in 0..200u64 {
        let base = 20000 + ((seed.wrapping_mul(7919) + attempt * 104_729) % 1200) as u16 * 10;
        let all_free = (0..nodes as u16)
            .all(|i| (0..3).all(|k| TcpListener::bind(("127.0.0.1", base + 10 * i + k)).is_ok()));
        if all_free {
            return Ok(base);
        }
    }
    bail!("no free port range found")
}

/// The first of `count` consecutive free ports.
pub fn free_port_run(count: usize) -> Result<u16> {
    let seed = u64::from(std::process::id()).wrapping_mul(31)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
    for attempt in 0..200u64 {
        let base = 10000 + ((seed.wrapping_mul(6007) + attempt * 7_919) % 9_000) as u16;
        if (0..count as u16).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return Ok(base);
        }
    }
    bail!("no run of {count} free ports found")
}

#[derive(Debug)]
pub struct TestNode {
    pub home: PathBuf,
    pub rpc_url: String,
    abci: Option<Child>,
    comet: Option<Child>,
}

/// Which ABCI application the validators run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppKind {
    /// `pyrsia abci`, one process per validator.
    Pyrsia,
    /// CometBFT's built-in `kvstore`, as a baseline for benchmarks.
    Kvstore,
    /// The same `kvstore` as a process of its own behind the ABCI socket
    /// (`abci-cli kvstore`), as `pyrsia abci` is: the baseline that
    /// includes the socket transport's cost.
    KvstoreSocket,
}

impl AppKind {
    /// Whether the app is a process beside cometbft.
    fn is_process(self) -> bool {
        self != AppKind::Kvstore
    }
}

/// `abci-cli`, which `scripts/bench-testnet.sh` installs beside cometbft.
pub fn abci_cli() -> PathBuf {
    cometbft().with_file_name("abci-cli")
}

/// CPU seconds (user + system) process `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; it ends at the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("no ')' in /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after ')'.
    let ticks: f64 = fields
        .get(11..13)
        .context("short /proc/PID/stat")?
        .iter()
        .map(|f| f.parse::<f64>())
        .sum::<Result<f64, _>>()?;
    // USER_HZ is 100 on every Linux architecture this runs on.
    Ok(ticks / 100.0)
}

/// A running network; every process is killed when it is dropped.
#[derive(Debug)]
pub struct Testnet {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<TestNode>,
    pub app: AppKind,
    /// Node 0's stores and builders (`store:NAME`, `builder:NAME`) by name.
    services: std::collections::BTreeMap<String, Child>,
    /// The namespaces validator `i` runs in (host `i`), if not on this host.
    pub netns: Option<netns::Netns>,
    /// Each app's `--state-history`, if the plan set one.
    state_history: Option<String>,
}

/// Stores and builders node 0 runs beside its validator, and what genesis
/// holds besides the defaults.
#[derive(Clone, Debug, Default)]
pub struct ServicePlan {
    pub regular_builders: usize,
    pub trusted_builders: usize,
    /// `consensus.timeout_commit` (default 300ms).
    pub timeout_commit: Option<String>,
    /// Genesis ledger parameters (a JSON object; omitted fields default).
    pub params: Option<serde_json::Value>,
    /// Builder keys the board admits at genesis.
    pub admitted_builders: Vec<pyrsia_chain::PublicKey>,
    /// Each validator's own host (a network namespace); empty: all of them
    /// on 127.0.0.1.
    pub hosts: Vec<std::net::IpAddr>,
    /// Namespaces beyond the validators' own, for nodes that join later
    /// (host `validators + k`); only on the namespace layout.
    pub spare_hosts: usize,
    /// `pyrsia abci --state-history` (default: the binary's).
    pub state_history: Option<String>,
    /// Every node's `mempool.size` in transactions (default: CometBFT's 5,000).
    pub mempool_size: Option<usize>,
}

fn spawn(cmd: &mut Command, log: &Path) -> Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    Ok(cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()?)
}

/// `pyrsia devnet init` in `dir` on free ports, node 0 declaring `plan`'s
/// stores and builders; returns the base port (node i's RPC is BASE+10i+1).
pub fn devnet_init(
    dir: &Path,
    validators: usize,
    timeout_commit: &str,
    plan: &ServicePlan,
) -> Result<u16> {
    // On hosts of their own, nodes share the default ports.
    let base = if plan.hosts.is_empty() {
        free_base_port(validators)?
    } else {
        26656
    };
    let stores = 1 + plan.regular_builders + plan.trusted_builders;
    // Each store's libp2p and API ports, then node 0's gateway.
    let store_ports = free_port_run(stores * 2 + 1)?;
    let mut extra: Vec<String> = Vec::new();
    if let Some(params) = &plan.params {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("params.json");
        std::fs::write(&path, params.to_string())?;
        extra.push("--params".into());
        extra.push(path.display().to_string());
    }
    for key in &plan.admitted_builders {
        extra.push("--admit-builder".into());
        extra.push(key.to_string());
    }
    if !plan.hosts.is_empty() {
        extra.push("--hosts".into());
        extra.push(
            plan.hosts
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    let out = Command::new(pyrsia_bin())
        .args(["--json", "devnet", "init", "--dir"])
        .arg(dir)
        .args(["--validators", &validators.to_string()])
        .args(["--base-port", &base.to_string()])
        .args(["--chain-id", "pyrsia-test"])
        .args(["--timeout-commit", timeout_commit])
        .args(["--builders", &plan.regular_builders.to_string()])
        .args(["--trusted-builders", &plan.trusted_builders.to_string()])
        .args(["--store-port-base", &store_ports.to_string()])
        .args([
            "--store-api-base",
            &(store_ports + stores as u16).to_string(),
        ])
        .args([
            "--gateway-listen",
            &format!("127.0.0.1:{}", store_ports + 2 * stores as u16),
        ])
        .args(&extra)
        .arg("--cometbft")
        .arg(cometbft())
        .output()
        .context("running pyrsia devnet init")?;
    if !out.status.success() {
        bail!(
            "devnet init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(base)
}

impl Testnet {
    /// Creates `validators` homes with `pyrsia devnet init` and starts them.
    pub async fn start(validators: usize) -> Result<Testnet> {
        Self::start_with(validators, AppKind::Pyrsia, "300ms").await
    }

    pub async fn start_with(
        validators: usize,
        app: AppKind,
        timeout_commit: &str,
    ) -> Result<Testnet> {
        Self::start_full(
            validators,
            app,
            timeout_commit,
            ServicePlan::default(),
            None,
        )
        .await
    }

    /// One validator whose home also declares `plan`'s stores and builders;
    /// they are not started (see [`Testnet::start_services`]).
    pub async fn start_with_services(plan: ServicePlan) -> Result<Testnet> {
        Self::start_planned(1, plan).await
    }

    /// `validators` validators running `app`, with `plan`'s genesis.
    pub async fn start_full_plan(
        validators: usize,
        app: AppKind,
        plan: ServicePlan,
    ) -> Result<Testnet> {
        let timeout_commit = plan
            .timeout_commit
            .clone()
            .unwrap_or_else(|| "300ms".into());
        Self::start_full(validators, app, &timeout_commit, plan, None).await
    }

    /// `validators` validators with `plan`'s genesis and services.
    pub async fn start_planned(validators: usize, plan: ServicePlan) -> Result<Testnet> {
        let timeout_commit = plan
            .timeout_commit
            .clone()
            .unwrap_or_else(|| "300ms".into());
        Self::start_full(validators, AppKind::Pyrsia, &timeout_commit, plan, None).await
    }

    /// `validators` validators, each in a network namespace of its own
    /// (see [`netns::Netns`]), with `plan`'s genesis.
    pub async fn start_netns(validators: usize, plan: ServicePlan) -> Result<Testnet> {
        Self::start_netns_with(validators, AppKind::Pyrsia, plan).await
    }

    /// Like [`Testnet::start_netns`], running `app`.
    pub async fn start_netns_with(
        validators: usize,
        app: AppKind,
        mut plan: ServicePlan,
    ) -> Result<Testnet> {
        let net = netns::Netns::up(validators + plan.spare_hosts)?;
        plan.hosts = (0..validators).map(|i| net.host(i)).collect();
        let timeout_commit = plan
            .timeout_commit
            .clone()
            .unwrap_or_else(|| "300ms".into());
        Self::start_full(validators, app, &timeout_commit, plan, Some(net)).await
    }

    async fn start_full(
        validators: usize,
        app: AppKind,
        timeout_commit: &str,
        plan: ServicePlan,
        netns: Option<netns::Netns>,
    ) -> Result<Testnet> {
        let dir = tempfile::tempdir()?;
        let base = devnet_init(dir.path(), validators, timeout_commit, &plan)?;
        if let Some(size) = plan.mempool_size {
            for i in 0..validators {
                let config = dir.path().join(format!("node{i}/config/config.toml"));
                let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(&config)?.parse()?;
                doc["mempool"]["size"] = toml_edit::value(i64::try_from(size)?);
                std::fs::write(&config, doc.to_string())?;
            }
        }
        let nodes = (0..validators)
            .map(|i| {
                let rpc = match plan.hosts.get(i) {
                    Some(host) => std::net::SocketAddr::new(*host, base + 1),
                    None => ([127, 0, 0, 1], base + 10 * i as u16 + 1).into(),
                };
                TestNode {
                    home: dir.path().join(format!("node{i}")),
                    rpc_url: format!("http://{rpc}"),
                    abci: None,
                    comet: None,
                }
            })
            .collect();
        let mut net = Testnet {
            dir,
            nodes,
            app,
            services: Default::default(),
            netns,
            state_history: plan.state_history.clone(),
        };
        for i in 0..validators {
            if app.is_process() {
                net.start_abci(i)?;
            }
            net.start_cometbft(i)?;
        }
        for i in 0..validators {
            net.client(i)?
                .wait_height(1, Duration::from_secs(180))
                .await?;
        }
        Ok(net)
    }

    /// Starts node 0's service `name` (`store:NAME` or `builder:NAME`).
    pub fn start_service(&mut self, name: &str) -> Result<()> {
        let node = &self.nodes[0];
        let log = node
            .home
            .join("logs")
            .join(format!("{}.log", name.replace(':', "-")));
        std::fs::create_dir_all(node.home.join("logs"))?;
        let child = spawn(
            Command::new(pyrsia_bin())
                .arg("--home")
                .arg(&node.home)
                .args(["--node", &node.rpc_url, "node", "service", name]),
            &log,
        )?;
        self.services.insert(name.to_owned(), child);
        Ok(())
    }

    /// `kill -9` of a service.
    pub fn kill_service(&mut self, name: &str) -> Result<()> {
        if let Some(mut child) = self.services.remove(name) {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// The names of node 0's services, stores first.
    pub fn service_names(&self) -> Result<Vec<String>> {
        let text = std::fs::read_to_string(self.nodes[0].home.join("config/services.toml"))?;
        let doc: toml_edit::DocumentMut = text.parse()?;
        let names = |table: &str, prefix: &str| -> Vec<String> {
            doc.get(table)
                .and_then(|t| t.as_array_of_tables())
                .map(|a| {
                    a.iter()
                        .filter_map(|t| t.get("name")?.as_str().map(|n| format!("{prefix}:{n}")))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut all = names("store", "store");
        all.extend(names("builder", "builder"));
        Ok(all)
    }

    /// The control API URL of node 0's own store (the client's).
    #[allow(clippy::expect_used)] // test support: a broken devnet fails the test
    pub fn store_api(&self) -> String {
        let text = std::fs::read_to_string(self.nodes[0].home.join("config/services.toml"))
            .expect("devnet init wrote services.toml");
        let line = text
            .lines()
            .find(|l| l.starts_with("api"))
            .expect("services.toml names a store api");
        format!("http://{}", line.split('"').nth(1).unwrap_or_default())
    }

    /// The URL of node 0's gateway `main` (as `devnet init` declared it).
    #[allow(clippy::expect_used)] // test support: a broken devnet fails the test
    pub fn gateway_url(&self) -> String {
        let services: toml_edit::DocumentMut =
            std::fs::read_to_string(self.nodes[0].home.join("config/services.toml"))
                .expect("devnet init wrote services.toml")
                .parse()
                .expect("services.toml parses");
        let listen = services["gateway"]
            .as_array_of_tables()
            .and_then(|g| {
                g.iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("main"))
            })
            .and_then(|t| t.get("listen")?.as_str().map(str::to_owned))
            .expect("services.toml declares gateway main");
        format!("http://{listen}")
    }

    /// Request `id` as the ledger holds it now.
    #[allow(clippy::expect_used)] // test support: a missing request fails the test
    pub async fn request_record(&self, id: &str) -> pyrsia_chain::RequestRecord {
        self.client(0)
            .expect("a client of node 0")
            .query_value(&format!("request/{id}"))
            .await
            .expect("querying the request")
            .expect("the request is on the ledger")
    }

    /// `pyrsia provenance` of `fixture` into `dir`, through node 0's store.
    pub fn provenance(
        &self,
        fixture: &fixtures::Fixture,
        dir: &Path,
        extra: &[&str],
    ) -> Result<std::process::Output> {
        let api = self.store_api();
        let dir = dir.to_string_lossy();
        let mut args = vec![
            "provenance",
            fixture.ecosystem,
            &fixture.name,
            &fixture.version,
            "-o",
            &dir,
            "--api",
            &api,
        ];
        args.extend_from_slice(extra);
        self.pyrsia(&args)
    }

    /// Gives every builder of node 0 these dependency-step upstreams
    /// (before [`Testnet::start_services`]).
    pub fn set_builder_upstreams(&self, upstreams: &[(&str, &str)]) -> Result<()> {
        let path = self.nodes[0].home.join("config/services.toml");
        let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(&path)?.parse()?;
        let builders = doc
            .get_mut("builder")
            .and_then(|b| b.as_array_of_tables_mut())
            .context("services.toml has no [[builder]]")?;
        for b in builders.iter_mut() {
            let mut table = toml_edit::InlineTable::new();
            for (name, url) in upstreams {
                table.insert(*name, (*url).into());
            }
            b.insert("upstreams", toml_edit::value(table));
        }
        std::fs::write(&path, doc.to_string())?;
        Ok(())
    }

    /// Where builder `name` keeps its state and job log.
    pub fn builder_dir(&self, name: &str) -> PathBuf {
        self.nodes[0].home.join("builders").join(name).join("work")
    }

    /// Builder `name`'s public key.
    pub fn builder_key(&self, name: &str) -> Result<Keypair> {
        Self::load_key(
            &self.nodes[0]
                .home
                .join("builders")
                .join(name)
                .join("key.json"),
        )
    }

    /// The lines of builder `name`'s `jobs.jsonl`.
    pub fn builder_jobs(&self, name: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.builder_dir(name).join("jobs.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Starts every store, then every builder, and waits until each builder
    /// follows the ledger (its state file exists, after registration).
    pub async fn start_services(&mut self) -> Result<()> {
        for name in self.service_names()? {
            self.start_service(&name)?;
        }
        for name in self.service_names()? {
            if let Some(b) = name.strip_prefix("builder:") {
                self.wait_builder_ready(b).await?;
            }
        }
        Ok(())
    }

    pub async fn wait_builder_ready(&self, name: &str) -> Result<()> {
        let state = self.builder_dir(name).join("state.json");
        try_eventually(
            Duration::from_secs(120),
            &format!("builder {name} to follow the ledger (its state file)"),
            || async { state.exists().then_some(()).ok_or("no state file") },
        )
        .await
    }

    /// `program`, run on validator `i`'s host.
    pub fn on_host(&self, i: usize, program: PathBuf) -> Command {
        match &self.netns {
            Some(net) => net.command(i, program),
            None => Command::new(program),
        }
    }

    pub fn start_abci(&mut self, i: usize) -> Result<()> {
        let mut cmd = if self.app == AppKind::KvstoreSocket {
            let addr = pyrsia_genesis::NodeConfig::load(&self.nodes[i].home)?.abci_addr;
            let mut cmd = self.on_host(i, abci_cli());
            cmd.args(["kvstore", "--log_level", "error", "--address"])
                .arg(format!("tcp://{addr}"));
            cmd
        } else {
            let mut cmd = self.on_host(i, pyrsia_bin());
            cmd.arg("--home").arg(&self.nodes[i].home).arg("abci");
            if let Some(h) = &self.state_history {
                cmd.args(["--state-history", h]);
            }
            cmd
        };
        let node = &mut self.nodes[i];
        let child = spawn(&mut cmd, &node.home.join("abci.log"))?;
        node.abci = Some(child);
        Ok(())
    }

    pub fn start_cometbft(&mut self, i: usize) -> Result<()> {
        self.start_cometbft_from(i, self.on_host(i, cometbft()))
    }

    /// Starts node `i`'s cometbft as `cmd` (a build of it, with its
    /// environment), adding the arguments.
    pub fn start_cometbft_from(&mut self, i: usize, mut cmd: Command) -> Result<()> {
        let node = &mut self.nodes[i];
        cmd.arg("start").arg("--home").arg(&node.home);
        if self.app == AppKind::Kvstore {
            cmd.arg("--proxy_app=kvstore");
        }
        let child = spawn(&mut cmd, &node.home.join("cometbft.log"))?;
        node.comet = Some(child);
        Ok(())
    }

    /// Adds the node whose home `pyrsia devnet join` (or `node init`)
    /// created, and starts its ABCI app and cometbft; returns its index.
    pub fn add_node(&mut self, home: PathBuf, rpc_url: String) -> Result<usize> {
        self.nodes.push(TestNode {
            home,
            rpc_url,
            abci: None,
            comet: None,
        });
        let i = self.nodes.len() - 1;
        if self.app.is_process() {
            self.start_abci(i)?;
        }
        self.start_cometbft(i)?;
        Ok(i)
    }

    /// Runs `pyrsia --json ARGS…` with no home or node of its own; fails
    /// unless it succeeds, and parses its JSON output.
    pub fn pyrsia_bare_json(args: &[&str]) -> Result<serde_json::Value> {
        let out = Command::new(pyrsia_bin())
            .arg("--json")
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "pyrsia {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// CPU seconds used so far by the ABCI apps and by the cometbft
    /// processes, each summed over the nodes (an in-process app's share is
    /// in cometbft's).
    pub fn cpu_seconds(&self) -> Result<(f64, f64)> {
        let (mut app, mut comet) = (0.0, 0.0);
        for node in &self.nodes {
            if let Some(c) = &node.abci {
                app += cpu_seconds(c.id())?;
            }
            if let Some(c) = &node.comet {
                comet += cpu_seconds(c.id())?;
            }
        }
        Ok((app, comet))
    }

    /// Every running process of the testnet with its kind (`cometbft`,
    /// `abci`, `store`, `builder`) and pid.
    pub fn processes(&self) -> Vec<(&'static str, u32)> {
        let mut all = Vec::new();
        for node in &self.nodes {
            all.extend(node.abci.as_ref().map(|c| ("abci", c.id())));
            all.extend(node.comet.as_ref().map(|c| ("cometbft", c.id())));
        }
        for (name, child) in &self.services {
            let kind = if name.starts_with("store:") {
                "store"
            } else {
                "builder"
            };
            all.push((kind, child.id()));
        }
        all
    }

    /// Waits until every node has node 0's latest height, then checks that
    /// all returned the same app hash at every height up to it: one
    /// history. Returns that height.
    pub async fn assert_one_history(&self) -> Result<u64> {
        let clients: Vec<LedgerClient> = (0..self.nodes.len())
            .map(|i| self.client(i))
            .collect::<Result<_>>()?;
        let top = clients[0].latest_height().await?;
        for c in &clients[1..] {
            c.wait_height(top, Duration::from_secs(120)).await?;
        }
        for h in 1..=top {
            let first = clients[0].block_app_hash(h).await?;
            for (i, c) in clients.iter().enumerate().skip(1) {
                let other = c.block_app_hash(h).await?;
                if other != first {
                    bail!(
                        "height {h}: node 0 has app hash {}, node {i} has {}",
                        hex::encode(&first),
                        hex::encode(&other)
                    );
                }
            }
        }
        Ok(top)
    }

    /// `kill -9` of node `i`'s ABCI app.
    pub fn kill_abci(&mut self, i: usize) -> Result<()> {
        if let Some(mut child) = self.nodes[i].abci.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Waits for node `i`'s cometbft to exit on its own (it shuts down when
    /// its app connection drops, which can take longer than `within` on a
    /// busy machine); kills it if it is still running then. Returns whether
    /// it exited by itself.
    pub fn wait_cometbft_exit(&mut self, i: usize, within: Duration) -> Result<bool> {
        let Some(mut child) = self.nodes[i].comet.take() else {
            return Ok(true);
        };
        let exited = try_eventually_blocking(
            within,
            "cometbft to exit once its app is gone",
            || match child.try_wait() {
                Ok(Some(status)) => Ok(status),
                Ok(None) => Err("running".to_owned()),
                Err(e) => Err(e.to_string()),
            },
        );
        if exited.is_err() {
            child.kill()?;
            child.wait()?;
        }
        Ok(exited.is_ok())
    }

    /// `kill -9` of node `i`'s cometbft and ABCI app: its RPC is gone.
    pub fn stop_validator(&mut self, i: usize) -> Result<()> {
        for child in [self.nodes[i].comet.take(), self.nodes[i].abci.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Declares a gateway of node 0 (replacing one of the same name):
    /// `fields` are its services.toml keys besides `name`.
    pub fn set_gateway(&self, name: &str, fields: &[(&str, toml_edit::Value)]) -> Result<()> {
        let path = self.nodes[0].home.join("config/services.toml");
        let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(&path)?.parse()?;
        if doc.get("gateway").is_none() {
            doc.insert(
                "gateway",
                toml_edit::Item::ArrayOfTables(toml_edit::ArrayOfTables::new()),
            );
        }
        let gateways = doc
            .get_mut("gateway")
            .and_then(|b| b.as_array_of_tables_mut())
            .context("services.toml [[gateway]] is not an array of tables")?;
        gateways.retain(|t| t.get("name").and_then(|n| n.as_str()) != Some(name));
        let mut table = toml_edit::Table::new();
        table.insert("name", toml_edit::value(name));
        for (k, v) in fields {
            table.insert(k, toml_edit::Item::Value(v.clone()));
        }
        gateways.push(table);
        std::fs::write(&path, doc.to_string())?;
        Ok(())
    }

    /// The log of node 0's service `name`.
    pub fn service_log(&self, name: &str) -> String {
        std::fs::read_to_string(
            self.nodes[0]
                .home
                .join("logs")
                .join(format!("{}.log", name.replace(':', "-"))),
        )
        .unwrap_or_default()
    }

    pub fn client(&self, i: usize) -> Result<LedgerClient> {
        Ok(LedgerClient::new(&self.nodes[i].rpc_url)?)
    }

    /// The chain's genesis file (every node holds the same one).
    pub fn genesis(&self) -> PathBuf {
        self.nodes[0].home.join("config").join("genesis.json")
    }

    /// A verifying reader of node `url`, anchored at this chain's genesis,
    /// with its light store in `store_dir` and the given freshness bound.
    pub fn verified_via(
        &self,
        url: &str,
        store_dir: &Path,
        max_age: Duration,
    ) -> Result<VerifiedLedger> {
        let anchor = TrustAnchor::from_genesis_file(&self.genesis())?;
        let store = LightStore::open(store_dir.join("store.json"), &anchor)?;
        let light = LightClient::new(url, anchor, LightConfig::default().options()?, store)?;
        Ok(VerifiedLedger::new(LedgerClient::new(url)?, light, max_age))
    }

    /// A verifying reader of node `i`, with a light store of its own.
    pub fn verified(&self, i: usize) -> Result<VerifiedLedger> {
        let store_dir = self.dir.path().join(format!("light-client-{i}"));
        self.verified_via(&self.nodes[i].rpc_url, &store_dir, Duration::from_secs(60))
    }

    pub fn board_key(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join("board")
            .join(format!("member{i}.json"))
    }

    pub fn trusted_key(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join("trusted")
            .join(format!("trusted{i}.json"))
    }

    pub fn load_key(path: &Path) -> Result<Keypair> {
        Ok(Keypair::load(path)?)
    }

    /// A fresh key saved under node 0's home as `name`.
    pub fn new_key(&self, name: &str) -> Result<Keypair> {
        let key = Keypair::generate();
        key.save(&self.nodes[0].home.join("keys").join(format!("{name}.json")))?;
        Ok(key)
    }

    /// Runs `pyrsia --home node0 --node RPC0 --json ARGS…`.
    pub fn pyrsia(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new(pyrsia_bin())
            .arg("--home")
            .arg(&self.nodes[0].home)
            .args(["--node", &self.nodes[0].rpc_url, "--json"])
            .args(args)
            .output()?)
    }

    /// `tx request-build` of `fixture`, signed by key `requester` (created
    /// if missing), plus `extra` arguments (e.g. `--wait`).
    pub fn request_build(
        &self,
        fixture: &fixtures::Fixture,
        extra: &[&str],
    ) -> Result<serde_json::Value> {
        let key = self.nodes[0].home.join("keys").join("requester.json");
        if !key.exists() {
            self.new_key("requester")?;
        }
        let mut args = vec![
            "tx",
            "request-build",
            "--key",
            "requester",
            "--ecosystem",
            fixture.ecosystem,
            "--name",
            &fixture.name,
            "--version",
            &fixture.version,
            "--repo",
            &fixture.url,
            "--commit",
            &fixture.commit,
        ];
        args.extend_from_slice(extra);
        self.pyrsia_json(&args)
    }

    /// Like [`Testnet::pyrsia`], but fails unless the command succeeds, and
    /// parses its JSON output.
    pub fn pyrsia_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let out = self.pyrsia(args)?;
        if !out.status.success() {
            bail!(
                "pyrsia {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        // PYRSIA_KEEP_TESTNET=1 keeps the homes and logs of a failed test.
        if std::thread::panicking() && std::env::var_os("PYRSIA_KEEP_TESTNET").is_some() {
            if let Ok(fresh) = tempfile::TempDir::new() {
                eprintln!("keeping {}", self.dir.path().display());
                let _ = std::mem::replace(&mut self.dir, fresh).keep();
            }
        }
        for (_, mut child) in std::mem::take(&mut self.services) {
            let _ = child.kill();
            let _ = child.wait();
        }
        for node in &mut self.nodes {
            for child in [node.comet.take(), node.abci.take()].into_iter().flatten() {
                let mut child = child;
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
