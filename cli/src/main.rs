//! `pyrsia`: one binary for every role of a Pyrsia node.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use pyrsia_ledger_client::light::TrustAnchor;
use pyrsia_ledger_client::verified::{VerifiedLedger, VerifyError};

mod builder;
mod fetch;
mod gateway;
mod gov;
mod keys;
mod light;
mod node;
mod progress;
mod provenance;
mod query;
mod services;
mod store_api;
mod tx;
mod verify;

#[derive(Parser, Debug)]
#[command(
    name = "pyrsia",
    version,
    about = "Pyrsia: a decentralized, verifiable package network"
)]
pub struct Cli {
    /// Node home: keys, CometBFT config and data, ledger state.
    #[arg(long, global = true, env = "PYRSIA_HOME", default_value_os_t = default_home())]
    pub home: PathBuf,
    /// CometBFT RPC endpoint of the node to talk to.
    #[arg(
        long,
        global = true,
        env = "PYRSIA_NODE",
        default_value = "http://127.0.0.1:26657"
    )]
    pub node: String,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    /// Trust anchor HEIGHT:HASH (a header hash, hex) for verified reads,
    /// instead of the home's config/light.toml or config/genesis.json.
    #[arg(long, global = true, env = "PYRSIA_TRUST_ANCHOR")]
    pub trust_anchor: Option<String>,
    /// How old, in seconds, the header of a verified "latest" read may be
    /// (default: config/light.toml max_age_secs, else 60).
    #[arg(long, global = true, value_name = "SECS")]
    pub max_age: Option<u64>,
    #[command(subcommand)]
    pub command: Command,
}

fn default_home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".pyrsia")
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Manage signing keys (HOME/keys/NAME.json).
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Run the ABCI ledger app alone (CometBFT connects to it).
    Abci(node::AbciArgs),
    /// Run a node.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Create validator homes for a network on one host.
    #[command(subcommand)]
    Devnet(node::DevnetCommand),
    /// Submit a transaction and wait until it is committed.
    #[command(subcommand)]
    Tx(tx::TxCommand),
    /// Submit a governance action with board members' approvals.
    #[command(subcommand)]
    Gov(gov::GovCommand),
    /// Read ledger state, verified from the trust anchor.
    #[command(subcommand)]
    Query(query::QueryCommand),
    /// Prove a package's builds, their trust levels and attesters from the
    /// trust anchor alone, and optionally that local files match them.
    Verify(verify::VerifyCmd),
    /// Serve CometBFT RPC locally with every answer verified from the trust
    /// anchor (abci_query, commit, validators, status); refuse the rest.
    Light(light::LightArgs),
    /// The artifact store sidecar: striped, verified distribution over libp2p.
    #[command(subcommand)]
    Store(store_cli::StoreCommand),
    /// The builder role: rebuild selected requests in sandboxes and attest.
    #[command(subcommand)]
    Builder(BuilderCommand),
    /// Download a package's verified outputs (or one artifact by digest)
    /// through the local store, from several peers at once.
    Fetch(fetch::FetchCmd),
    /// Serve the registry front-ends (npm, PyPI, Maven, OCI) and the
    /// explorer, from verified ledger state and the local store.
    Gateway(gateway::GatewayArgs),
    /// Collect the signed provenance (DSSE envelopes of in-toto SLSA
    /// statements) of a package's build, each verified against the ledger.
    Provenance(provenance::ProvenanceCmd),
}

#[derive(Subcommand, Debug)]
pub enum BuilderCommand {
    /// Register if needed, follow the ledger and build what this node is selected for.
    Start(builder::BuilderArgs),
    /// EPOCH IN OUT: normalise a build's outputs (run inside the sandbox).
    #[command(hide = true)]
    Normalise { args: Vec<String> },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

#[tokio::main]
async fn main() {
    init_tracing();
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    let ctx = Context {
        home: cli.home,
        node: cli.node,
        json: cli.json,
        trust_anchor: cli.trust_anchor,
        max_age: cli.max_age.map(Duration::from_secs),
    };
    match cli.command {
        Command::Keys(c) => keys::run(&ctx, c),
        Command::Abci(a) => node::run_abci(&ctx, a).await,
        Command::Node(c) => node::run_node(&ctx, c).await,
        Command::Devnet(c) => node::run_devnet(&ctx, c),
        Command::Tx(c) => tx::run_tx(&ctx, c).await,
        Command::Gov(c) => gov::run(&ctx, c).await,
        Command::Query(c) => query::run(&ctx, c).await,
        Command::Store(c) => c.with_json(ctx.json).run().await,
        Command::Builder(BuilderCommand::Start(a)) => builder::run(&ctx, a).await,
        Command::Builder(BuilderCommand::Normalise { args }) => {
            std::process::exit(::builder::normalise_command(&args))
        }
        Command::Fetch(c) => fetch::run(&ctx, c).await,
        Command::Gateway(a) => gateway::run(&ctx, a).await,
        Command::Verify(c) => verify::run(&ctx, c).await,
        Command::Provenance(c) => provenance::run(&ctx, c).await,
        Command::Light(a) => light::run(&ctx, a).await,
    }
}

/// Global options every command sees.
#[derive(Debug, Clone)]
pub struct Context {
    pub home: PathBuf,
    pub node: String,
    pub json: bool,
    pub trust_anchor: Option<String>,
    pub max_age: Option<Duration>,
}

impl Context {
    /// The node's answers, verified from the trust anchor this home (or
    /// --trust-anchor) configures.
    pub fn verified_ledger(&self) -> Result<VerifiedLedger, VerifyError> {
        let anchor = self
            .trust_anchor
            .as_deref()
            .map(TrustAnchor::parse_pinned)
            .transpose()?;
        VerifiedLedger::for_home(&self.node, &self.home, anchor, self.max_age)
    }

    /// Prints `value` as JSON with `--json`, else the human text.
    pub fn print(&self, value: &serde_json::Value, human: impl FnOnce() -> String) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        } else {
            println!("{}", human());
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn argument_names_do_not_collide_across_subcommands() {
        super::Cli::command().debug_assert();
    }
}
