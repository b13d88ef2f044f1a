use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pyrsia_chain::store::History;
use pyrsia_chain::{Board, Keypair, Ledger, Params, PublicKey};
use pyrsia_genesis::{create_network, NetworkSpec, NodeConfig, CERTIFICATION_SECONDS};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};

use crate::keys::key_path;
use crate::services::{ServicePorts, Services};
use crate::Context;

#[derive(Args, Debug)]
pub struct AbciArgs {
    /// Listen address (default: abci_addr of HOME/config/pyrsia.toml, else 127.0.0.1:26658).
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// Ledger state directory (default: HOME/data/pyrsia-state).
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// How many of the latest heights' state stay readable for queries and
    /// proofs: a number, or `all` for an archive node. Older tree nodes and
    /// values are deleted as blocks commit.
    #[arg(long, env = "PYRSIA_STATE_HISTORY", default_value = "100000", value_parser = parse_history)]
    pub state_history: History,
}

fn parse_history(s: &str) -> Result<History, String> {
    if s == "all" {
        return Ok(History::All);
    }
    s.parse::<std::num::NonZeroU64>()
        .map(History::Last)
        .map_err(|e| format!("{s:?} is neither `all` nor a positive number of heights: {e}"))
}

#[derive(Args, Debug, Clone)]
pub struct CometArgs {
    /// The cometbft v0.38 executable.
    #[arg(long, env = "PYRSIA_COMETBFT", default_value = "cometbft")]
    pub cometbft: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Start cometbft and the ledger app for HOME; a HOME without a node
    /// becomes a single-validator devnet first. Ctrl-C stops both.
    Start {
        #[command(flatten)]
        comet: CometArgs,
        /// Run only the validator (cometbft and the ledger app), not the
        /// stores and builders of HOME/config/services.toml.
        #[arg(long)]
        validator_only: bool,
    },
    /// Run one store or builder of HOME/config/services.toml in the foreground.
    Service(crate::services::ServiceArgs),
    /// Create HOME as a new node of a running chain: its own keys, the
    /// chain's genesis file, the given peers. `node start` then block-syncs
    /// it from them; the board makes it a validator (`gov set-validator`).
    Init(JoinArgs),
    /// Print this home's validator keys (consensus key, address, beacon
    /// key): what the board's `gov set-validator` needs.
    ShowValidator,
}

/// A node joining a running chain.
#[derive(Args, Debug)]
pub struct JoinArgs {
    /// The chain's genesis.json (from any node of the chain).
    #[arg(long)]
    pub genesis: PathBuf,
    /// A node to sync from, NODE_ID@HOST:PORT (repeat, or comma-separate).
    #[arg(long = "peer", value_delimiter = ',', required = true)]
    pub peers: Vec<String>,
    #[arg(long)]
    pub moniker: Option<String>,
    /// p2p on BASE, RPC on BASE+1, ABCI on BASE+2.
    #[arg(long, default_value_t = 26656)]
    pub base_port: u16,
    /// The address p2p listens on; RPC and ABCI stay on 127.0.0.1.
    #[arg(long, default_value = "0.0.0.0")]
    pub p2p_host: String,
    /// HOST:PORT other nodes reach this one at (p2p.external_address).
    #[arg(long)]
    pub external_address: Option<String>,
    /// consensus.timeout_commit (the same as the chain's other validators).
    #[arg(long, default_value = "1s")]
    pub timeout_commit: String,
    #[command(flatten)]
    pub comet: CometArgs,
}

#[derive(Subcommand, Debug)]
pub enum DevnetCommand {
    /// Create validator homes DIR/node0..N-1, board and trusted-node keys.
    Init(Box<DevnetInitArgs>),
    /// Create DIR as a new node of FROM's chain on this host (free ports,
    /// FROM and its peers as peers); see `node init` for other hosts.
    Join {
        /// The new node's home.
        #[arg(long)]
        dir: PathBuf,
        /// A home of the running chain (its genesis and peers are copied).
        #[arg(long)]
        from: PathBuf,
        /// p2p on BASE, RPC on BASE+1, ABCI on BASE+2 (default: the first
        /// free run of three after FROM's ports, in steps of 10).
        #[arg(long)]
        base_port: Option<u16>,
        #[arg(long)]
        moniker: Option<String>,
        #[command(flatten)]
        comet: CometArgs,
    },
}

#[derive(Args, Debug)]
pub struct DevnetInitArgs {
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = 4)]
    validators: usize,
    /// Node i uses ports BASE+10i (p2p), +1 (RPC), +2 (ABCI); with
    /// --hosts, every node uses BASE, +1 and +2 on its own host.
    #[arg(long, default_value_t = 26656)]
    base_port: u16,
    /// Each validator's own host (IP addresses, one per validator,
    /// comma-separated), when they run on separate hosts or network
    /// namespaces; see testnet/netns-start.sh.
    #[arg(long, value_delimiter = ',')]
    hosts: Vec<std::net::IpAddr>,
    #[arg(long, default_value = "pyrsia-devnet")]
    chain_id: String,
    #[arg(long, default_value_t = 3)]
    board_members: usize,
    #[arg(long, default_value_t = 2)]
    threshold: u16,
    /// Trusted nodes certified at genesis (keys in DIR/trusted).
    #[arg(long, default_value_t = 2)]
    trusted_nodes: usize,
    /// consensus.timeout_commit of every validator.
    #[arg(long, default_value = "1s")]
    timeout_commit: String,
    /// Regular builders (each with its own key and store) run by node0.
    #[arg(long, default_value_t = 0)]
    builders: usize,
    /// Builders run by node0 with the trusted-node keys (at most --trusted-nodes).
    #[arg(long, default_value_t = 0)]
    trusted_builders: usize,
    /// Store i of node0 listens on libp2p port BASE+i (store 0 is the node's own).
    #[arg(long, default_value_t = 44000)]
    store_port_base: u16,
    /// Store i of node0 serves its control API on port BASE+i.
    #[arg(long, default_value_t = 7889)]
    store_api_base: u16,
    /// Where node0's gateway (registry front-ends, explorer) listens.
    #[arg(long, default_value = pyrsia_gateway::DEFAULT_LISTEN)]
    gateway_listen: std::net::SocketAddr,
    /// Ledger parameters at genesis: a JSON object; fields it omits keep
    /// their defaults.
    #[arg(long)]
    params: Option<PathBuf>,
    /// A builder key (hex) the board admits at genesis (repeatable),
    /// besides the --builders this command creates.
    #[arg(long = "admit-builder")]
    admit_builders: Vec<PublicKey>,
    #[command(flatten)]
    comet: CometArgs,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn new_keys(dir: &Path, prefix: &str, count: usize) -> Result<Vec<PublicKey>> {
    (0..count)
        .map(|i| {
            let key = Keypair::generate();
            key.save(&dir.join(format!("{prefix}{i}.json")))?;
            Ok(key.public())
        })
        .collect()
}

struct NetworkPlan<'a> {
    homes: Vec<PathBuf>,
    keys_dir: &'a Path,
    chain_id: &'a str,
    base_port: u16,
    hosts: Vec<std::net::IpAddr>,
    board_members: usize,
    threshold: u16,
    trusted_nodes: usize,
    /// Builder keys the board admits at genesis.
    builders: Vec<PublicKey>,
    params: Params,
    timeout_commit: &'a str,
    cometbft: &'a Path,
}

/// Creates the homes, the board and trusted-node keys, and each home's default key.
fn init_network(plan: NetworkPlan<'_>) -> Result<serde_json::Value> {
    let board = new_keys(&plan.keys_dir.join("board"), "member", plan.board_members)?;
    let trusted = new_keys(
        &plan.keys_dir.join("trusted"),
        "trusted",
        plan.trusted_nodes,
    )?;
    let spec = NetworkSpec {
        chain_id: plan.chain_id.to_owned(),
        base_port: plan.base_port,
        hosts: plan.hosts,
        board: Board {
            keys: board.clone(),
            threshold: plan.threshold,
        },
        trusted_nodes: trusted
            .iter()
            .map(|node| pyrsia_chain::GenesisTrustedNode {
                node: *node,
                valid_until: now_unix() + CERTIFICATION_SECONDS,
            })
            .collect(),
        builders: plan.builders,
        params: plan.params,
        timeout_commit: plan.timeout_commit.to_owned(),
        cometbft: plan.cometbft.to_owned(),
    };
    let nodes = create_network(&plan.homes, &spec)?;
    let mut summary = Vec::new();
    for node in &nodes {
        let path = key_path(&node.home, "default");
        if !path.exists() {
            Keypair::generate().save(&path)?;
        }
        summary.push(serde_json::json!({
            "home": node.home,
            "node_id": node.node_id,
            "rpc": node.config.rpc_url,
            "abci": node.config.abci_addr,
            "p2p_port": node.config.p2p_port,
        }));
    }
    Ok(serde_json::json!({
        "chain_id": plan.chain_id,
        "nodes": summary,
        "board": board,
        "threshold": plan.threshold,
        "board_keys": plan.keys_dir.join("board"),
        "trusted_nodes": trusted,
        "trusted_keys": plan.keys_dir.join("trusted"),
    }))
}

/// Creates the keys of `count` regular builders under HOME/builders; returns
/// their names, paths relative to HOME and public keys (for genesis).
fn new_builder_keys(home: &Path, count: usize) -> Result<Vec<(String, PathBuf, PublicKey)>> {
    (0..count)
        .map(|i| {
            let name = format!("regular{i}");
            let rel = PathBuf::from("builders").join(&name).join("key.json");
            let key = Keypair::generate();
            key.save(&home.join(&rel))?;
            Ok((name, rel, key.public()))
        })
        .collect()
}

/// Writes HOME/config/services.toml: the node's store, the `regular`
/// builders, and `trusted` builders using the first trusted-node keys
/// (copied into the home, so the node stays self-contained).
fn init_services(
    home: &Path,
    trusted_keys: &Path,
    regular: &[(String, PathBuf, PublicKey)],
    trusted: usize,
    ports: ServicePorts,
) -> Result<Services> {
    let mut keys: Vec<(String, PathBuf)> = regular
        .iter()
        .map(|(name, rel, _)| (name.clone(), rel.clone()))
        .collect();
    for i in 0..trusted {
        let name = format!("trusted{i}");
        let rel = PathBuf::from("builders").join(&name).join("key.json");
        let key = Keypair::load(&trusted_keys.join(format!("trusted{i}.json")))?;
        key.save(&home.join(&rel))?;
        keys.push((name, rel));
    }
    let services = Services::embedded(ports, &keys);
    services.save(home)?;
    Ok(services)
}

/// The first BASE after `after` (in steps of 10) with BASE..BASE+2 free on 127.0.0.1.
fn free_ports_after(after: u16) -> Result<u16> {
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let mut base = u32::from(after) + 10;
    while base + 2 <= u32::from(u16::MAX) {
        let b = base as u16;
        if free(b) && free(b + 1) && free(b + 2) {
            return Ok(b);
        }
        base += 10;
    }
    bail!("no three free ports after {after}")
}

/// Creates the joining node's home and its default key; prints what to do next.
fn join(ctx: &Context, home: &Path, spec: pyrsia_genesis::JoinSpec) -> Result<()> {
    let node = pyrsia_genesis::join_network(home, &spec)?;
    let path = key_path(home, "default");
    if !path.exists() {
        Keypair::generate().save(&path)?;
    }
    let keys = pyrsia_genesis::validator_keys(home)?;
    let summary = serde_json::json!({
        "home": node.home,
        "chain_id": node.config.chain_id,
        "node_id": node.node_id,
        "rpc": node.config.rpc_url,
        "abci": node.config.abci_addr,
        "p2p_port": node.config.p2p_port,
        "peers": spec.peers,
        "validator": keys,
    });
    ctx.print(&summary, || {
        format!(
            "created node {} of chain {} in {}\n  validator address {}\n  consensus key     {}\n  beacon key        {}\nstart it with `pyrsia --home {} node start --validator-only`; once it has caught up, the board adds it with `pyrsia gov set-validator --validator-pub-key {} --vrf-public {} --power 10 …`",
            node.config.moniker,
            node.config.chain_id,
            home.display(),
            keys.address,
            keys.pub_key,
            keys.vrf_public.map(|k| k.to_string()).unwrap_or_default(),
            home.display(),
            keys.pub_key,
            keys.vrf_public.map(|k| k.to_string()).unwrap_or_default(),
        )
    });
    Ok(())
}

fn moniker_of(home: &Path, given: Option<String>) -> String {
    given.unwrap_or_else(|| {
        home.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "pyrsia-node".into())
    })
}

pub fn run_devnet(ctx: &Context, cmd: DevnetCommand) -> Result<()> {
    match cmd {
        DevnetCommand::Join {
            dir,
            from,
            base_port,
            moniker,
            comet,
        } => {
            let from_cfg = NodeConfig::load(&from)
                .with_context(|| format!("{} is not a node home", from.display()))?;
            let from_id = pyrsia_genesis::node_id(&from)?;
            let (mut peers, timeout_commit) = pyrsia_genesis::home_peers(&from)?;
            peers.insert(0, format!("{from_id}@127.0.0.1:{}", from_cfg.p2p_port));
            let base_port = match base_port {
                Some(p) => p,
                None => free_ports_after(from_cfg.p2p_port)?,
            };
            let spec = pyrsia_genesis::JoinSpec {
                genesis: from.join("config").join("genesis.json"),
                peers,
                moniker: moniker_of(&dir, moniker),
                base_port,
                p2p_host: "127.0.0.1".into(),
                external_address: None,
                timeout_commit,
                cometbft: comet.cometbft,
            };
            join(ctx, &dir, spec)
        }
        DevnetCommand::Init(args) => devnet_init(ctx, *args),
    }
}

fn devnet_init(ctx: &Context, args: DevnetInitArgs) -> Result<()> {
    let DevnetInitArgs {
        dir,
        validators,
        base_port,
        hosts,
        chain_id,
        board_members,
        threshold,
        trusted_nodes,
        timeout_commit,
        builders,
        trusted_builders,
        store_port_base,
        store_api_base,
        gateway_listen,
        params,
        admit_builders,
        comet,
    } = args;
    let params: Params = match params {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a JSON object of ledger parameters",
                    path.display()
                )
            })?
        }
        None => Params::default(),
    };
    if trusted_builders > trusted_nodes {
        bail!("--trusted-builders {trusted_builders} exceeds --trusted-nodes {trusted_nodes}");
    }
    let node0 = dir.join("node0");
    let regular = new_builder_keys(&node0, builders)?;
    let mut summary = init_network(NetworkPlan {
        homes: (0..validators)
            .map(|i| dir.join(format!("node{i}")))
            .collect(),
        keys_dir: &dir,
        chain_id: &chain_id,
        base_port,
        hosts,
        board_members,
        threshold,
        trusted_nodes,
        builders: regular
            .iter()
            .map(|(_, _, key)| *key)
            .chain(admit_builders)
            .collect(),
        params,
        timeout_commit: &timeout_commit,
        cometbft: &comet.cometbft,
    })?;
    let services = init_services(
        &node0,
        &dir.join("trusted"),
        &regular,
        trusted_builders,
        ServicePorts {
            libp2p_base: store_port_base,
            api_base: store_api_base,
            gateway: gateway_listen,
        },
    )?;
    summary["services"] = serde_json::to_value(services.names())?;
    ctx.print(&summary, || {
        format!(
            "created {validators} validator homes in {} (chain {chain_id}); start each with `pyrsia --home {}/nodeI node start`",
            dir.display(),
            dir.display()
        )
    });
    Ok(())
}

pub async fn run_abci(ctx: &Context, args: AbciArgs) -> Result<()> {
    let addr = match args.addr {
        Some(a) => a,
        None => match NodeConfig::load(&ctx.home) {
            Ok(cfg) => cfg.abci_addr.parse().context("abci_addr in pyrsia.toml")?,
            Err(_) => "127.0.0.1:26658".parse()?,
        },
    };
    let db = args
        .db
        .unwrap_or_else(|| ctx.home.join("data").join("pyrsia-state"));
    let ledger = Ledger::open_with(&db, args.state_history)
        .with_context(|| format!("opening ledger state {}", db.display()))?;
    if let Some(c) = ledger.info() {
        tracing::info!(height = c.height, app_hash = %hex::encode(c.app_hash), "ledger state loaded");
    }
    let proposer = load_proposer(&ctx.home)?;
    if proposer.is_none() {
        tracing::info!("no beacon key in this home: this app never proposes a beacon");
    }
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("listening for CometBFT on {addr}"))?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = pyrsia_abci::serve(ledger, proposer, listener) => r?,
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        _ = term.recv() => tracing::info!("terminated"),
    }
    Ok(())
}

/// This validator's address (CometBFT's `priv_validator_key.json`) and its
/// beacon key (`config/beacon_key.json`), if the home holds both.
fn load_proposer(home: &Path) -> Result<Option<pyrsia_abci::Proposer>> {
    let beacon = home.join("config").join(pyrsia_genesis::BEACON_KEY_FILE);
    let validator = home.join("config").join("priv_validator_key.json");
    if !beacon.exists() || !validator.exists() {
        return Ok(None);
    }
    let key = pyrsia_chain::beacon::BeaconKey::load(&beacon)?;
    let address = pyrsia_genesis::validator_address(&validator)?;
    Ok(Some(pyrsia_abci::Proposer { address, key }))
}

fn log_file(home: &Path, name: &str) -> Result<std::fs::File> {
    let dir = home.join("logs");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(name);
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))
}

fn spawn_logged(mut cmd: Command, home: &Path, log: &str) -> Result<Child> {
    let out = log_file(home, log)?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true);
    Ok(cmd.spawn()?)
}

/// SIGTERM, then SIGKILL if the process is still there after `grace`.
async fn stop(child: &mut Child, name: &str, grace: Duration) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        tracing::warn!("{name} did not stop within {grace:?}; killing it");
        let _ = child.kill().await;
    }
}

pub async fn run_node(ctx: &Context, cmd: NodeCommand) -> Result<()> {
    let (comet, validator_only) = match cmd {
        NodeCommand::Start {
            comet,
            validator_only,
        } => (comet, validator_only),
        NodeCommand::Service(args) => return crate::services::run_service(ctx, args).await,
        NodeCommand::Init(args) => {
            let spec = pyrsia_genesis::JoinSpec {
                genesis: args.genesis,
                peers: args.peers,
                moniker: moniker_of(&ctx.home, args.moniker),
                base_port: args.base_port,
                p2p_host: args.p2p_host,
                external_address: args.external_address,
                timeout_commit: args.timeout_commit,
                cometbft: args.comet.cometbft,
            };
            return join(ctx, &ctx.home, spec);
        }
        NodeCommand::ShowValidator => {
            let keys = pyrsia_genesis::validator_keys(&ctx.home)?;
            ctx.print(&serde_json::to_value(&keys)?, || {
                format!(
                    "address    {}\npub_key    {}\nvrf_public {}",
                    keys.address,
                    keys.pub_key,
                    keys.vrf_public
                        .map(|k| k.to_string())
                        .unwrap_or_else(|| "(no beacon key)".into())
                )
            });
            return Ok(());
        }
    };
    let home = &ctx.home;
    if !NodeConfig::path(home).exists() {
        if home.join("config").join("genesis.json").exists() {
            bail!(
                "{} holds a CometBFT home without config/pyrsia.toml; create homes with `pyrsia devnet init`",
                home.display()
            );
        }
        eprintln!(
            "{} holds no node yet: creating a single-validator devnet there",
            home.display()
        );
        let regular = new_builder_keys(home, DEVNET_REGULAR_BUILDERS)?;
        init_network(NetworkPlan {
            homes: vec![home.clone()],
            keys_dir: home,
            chain_id: "pyrsia-devnet",
            base_port: 26656,
            hosts: Vec::new(),
            board_members: 3,
            threshold: 2,
            trusted_nodes: 2,
            builders: regular.iter().map(|(_, _, key)| *key).collect(),
            params: Params::default(),
            timeout_commit: "1s",
            cometbft: &comet.cometbft,
        })?;
        init_services(
            home,
            &home.join("trusted"),
            &regular,
            DEVNET_TRUSTED_BUILDERS,
            ServicePorts::default(),
        )?;
    }
    let cfg = NodeConfig::load(home)?;
    let services = if validator_only {
        Services::default()
    } else {
        Services::load(home)?
    };
    let exe = std::env::current_exe().context("locating the pyrsia executable")?;
    let mut abci_cmd = Command::new(&exe);
    abci_cmd.arg("--home").arg(home).arg("abci");
    let mut abci = spawn_logged(abci_cmd, home, "abci.log")?;
    let mut comet_cmd = Command::new(&comet.cometbft);
    comet_cmd.arg("start").arg("--home").arg(home);
    let mut cometbft = spawn_logged(comet_cmd, home, "cometbft.log").with_context(|| {
        format!(
            "starting {} (run ./scripts/setup.sh to install it)",
            comet.cometbft.display()
        )
    })?;
    let (stop_services, supervised) = supervise(&exe, home, &cfg.rpc_url, services.names());
    let summary = serde_json::json!({
        "chain_id": cfg.chain_id,
        "moniker": cfg.moniker,
        "rpc": cfg.rpc_url,
        "abci": cfg.abci_addr,
        "store_api": services.store("node").ok().map(|s| s.api_url()),
        "gateway": services.gateways.first().map(|g| format!("http://{}", g.listen)),
        "services": services.names(),
        "home": home,
        "logs": home.join("logs"),
    });
    ctx.print(&summary, || {
        let mut text = format!(
            "node {} of chain {} running\n  RPC  {}\n  ABCI {}",
            cfg.moniker, cfg.chain_id, cfg.rpc_url, cfg.abci_addr,
        );
        for s in &services.stores {
            text.push_str(&format!(
                "\n  store {:<9} API {}  libp2p {}",
                s.name,
                s.api_url(),
                s.listen
            ));
        }
        for b in &services.builders {
            text.push_str(&format!(
                "\n  builder {:<7} uploads to store {}",
                b.name, b.store
            ));
        }
        for g in &services.gateways {
            text.push_str(&format!(
                "\n  gateway {:<7} http://{}/ (npm /npm/, PyPI /pypi/simple/, Maven /maven/, OCI /v2/)",
                g.name, g.listen
            ));
        }
        text.push_str(&format!(
            "\n  logs {}\nCtrl-C stops it; the next start resumes from the same state.",
            home.join("logs").display()
        ));
        text
    });
    let mut term = signal(SignalKind::terminate())?;
    let reason = tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted".to_owned(),
        _ = term.recv() => "terminated".to_owned(),
        s = abci.wait() => format!("the ledger app exited ({s:?}); see logs/abci.log"),
        s = cometbft.wait() => format!("cometbft exited ({s:?}); see logs/cometbft.log"),
    };
    eprintln!("stopping: {reason}");
    let _ = stop_services.send(true);
    for task in supervised {
        let _ = task.await;
    }
    // CometBFT first, so it does not see the app vanish mid-block.
    stop(&mut cometbft, "cometbft", Duration::from_secs(10)).await;
    stop(&mut abci, "ledger app", Duration::from_secs(5)).await;
    Ok(())
}

const DEVNET_REGULAR_BUILDERS: usize = 3;
const DEVNET_TRUSTED_BUILDERS: usize = 2;

/// Runs each service as `pyrsia node service NAME`, restarting it (after a
/// pause) if it exits, until `true` is sent on the returned channel.
fn supervise(
    exe: &Path,
    home: &Path,
    rpc: &str,
    names: Vec<String>,
) -> (
    tokio::sync::watch::Sender<bool>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let tasks = names
        .into_iter()
        .map(|name| {
            let mut stop_rx = stop_rx.clone();
            let (exe, home, rpc) = (exe.to_owned(), home.to_owned(), rpc.to_owned());
            tokio::spawn(async move {
                let log = format!("{}.log", name.replace(':', "-"));
                loop {
                    let mut cmd = Command::new(&exe);
                    cmd.arg("--home").arg(&home).arg("--node").arg(&rpc);
                    cmd.args(["node", "service", &name]);
                    let mut child = match spawn_logged(cmd, &home, &log) {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::error!("starting {name}: {e:#}");
                            return;
                        }
                    };
                    tokio::select! {
                        status = child.wait() => {
                            tracing::warn!("{name} exited ({status:?}); restarting in 2s, see logs/{log}");
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                                _ = stop_rx.changed() => return,
                            }
                        }
                        _ = stop_rx.changed() => {
                            stop(&mut child, &name, Duration::from_secs(10)).await;
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    (stop_tx, tasks)
}
