//! The `pyrsia-store` binary (same code as `pyrsia store …` / `pyrsia fetch`).

use clap::Parser;
use store_cli::{FetchArgs, StoreCommand};

#[derive(Debug, Parser)]
#[command(name = "pyrsia-store", about = "Pyrsia store sidecar")]
struct Cli {
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    #[command(flatten)]
    Store(StoreCommand),
    /// Fetch an artifact through the local store.
    Fetch(FetchArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Store(c) => c.with_json(cli.json).run().await,
        Cmd::Fetch(f) => f.with_json(cli.json).run().await,
    }
}
