use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pyrsia_chain::{Board, Keypair, Ledger, Params, PublicKey};
use pyrsia_genesis::{create_network, NetworkSpec, NodeConfig, CERTIFICATION_SECONDS};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};

use crate::keys::key_path;
use crate::Context;

#[derive(Args, Debug)]
pub struct AbciArgs {
    /// Listen address (default: abci_addr of HOME/config/pyrsia.toml, else 127.0.0.1:26658).
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// Ledger state directory (default: HOME/data/pyrsia-state).
    #[arg(long)]
    pub db: Option<PathBuf>,
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
    },
}

#[derive(Subcommand, Debug)]
pub enum DevnetCommand {
    /// Create validator homes DIR/node0..N-1, board and trusted-node keys.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 4)]
        validators: usize,
        /// Node i uses ports BASE+10i (p2p), +1 (RPC), +2 (ABCI).
        #[arg(long, default_value_t = 26656)]
        base_port: u16,
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
        #[command(flatten)]
        comet: CometArgs,
    },
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
    board_members: usize,
    threshold: u16,
    trusted_nodes: usize,
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
        params: Params::default(),
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

pub fn run_devnet(ctx: &Context, cmd: DevnetCommand) -> Result<()> {
    let DevnetCommand::Init {
        dir,
        validators,
        base_port,
        chain_id,
        board_members,
        threshold,
        trusted_nodes,
        timeout_commit,
        comet,
    } = cmd;
    let summary = init_network(NetworkPlan {
        homes: (0..validators)
            .map(|i| dir.join(format!("node{i}")))
            .collect(),
        keys_dir: &dir,
        chain_id: &chain_id,
        base_port,
        board_members,
        threshold,
        trusted_nodes,
        timeout_commit: &timeout_commit,
        cometbft: &comet.cometbft,
    })?;
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
    let ledger =
        Ledger::open(&db).with_context(|| format!("opening ledger state {}", db.display()))?;
    if let Some(c) = ledger.info() {
        tracing::info!(height = c.height, app_hash = %hex::encode(c.app_hash), "ledger state loaded");
    }
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = pyrsia_abci::serve(ledger, addr) => r?,
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        _ = term.recv() => tracing::info!("terminated"),
    }
    Ok(())
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
    let NodeCommand::Start { comet } = cmd;
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
        init_network(NetworkPlan {
            homes: vec![home.clone()],
            keys_dir: home,
            chain_id: "pyrsia-devnet",
            base_port: 26656,
            board_members: 3,
            threshold: 2,
            trusted_nodes: 2,
            timeout_commit: "1s",
            cometbft: &comet.cometbft,
        })?;
    }
    let cfg = NodeConfig::load(home)?;
    let exe = std::env::current_exe().context("locating the pyrsia executable")?;
    let mut abci_cmd = Command::new(exe);
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
    let summary = serde_json::json!({
        "chain_id": cfg.chain_id,
        "moniker": cfg.moniker,
        "rpc": cfg.rpc_url,
        "abci": cfg.abci_addr,
        "home": home,
        "logs": home.join("logs"),
    });
    ctx.print(&summary, || {
        format!(
            "node {} of chain {} running\n  RPC  {}\n  ABCI {}\n  logs {}\nCtrl-C stops it; the next start resumes from the same state.",
            cfg.moniker,
            cfg.chain_id,
            cfg.rpc_url,
            cfg.abci_addr,
            home.join("logs").display()
        )
    });
    let mut term = signal(SignalKind::terminate())?;
    let reason = tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted".to_owned(),
        _ = term.recv() => "terminated".to_owned(),
        s = abci.wait() => format!("the ledger app exited ({s:?}); see logs/abci.log"),
        s = cometbft.wait() => format!("cometbft exited ({s:?}); see logs/cometbft.log"),
    };
    eprintln!("stopping: {reason}");
    // CometBFT first, so it does not see the app vanish mid-block.
    stop(&mut cometbft, "cometbft", Duration::from_secs(10)).await;
    stop(&mut abci, "ledger app", Duration::from_secs(5)).await;
    Ok(())
}
