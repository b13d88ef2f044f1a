use anyhow::Result;
use clap::{Args, Subcommand};
use pyrsia_chain::render::value_to_json;
use pyrsia_chain::{Digest, PublicKey};

use crate::Context;
use pyrsia_cli::rpc::LedgerClient;

#[derive(Args, Debug, Clone)]
pub struct QueryOpts {
    /// Verify the answer with its proof against the next block's app hash.
    #[arg(long)]
    pub prove: bool,
    /// Read the state as of this height (0 = latest).
    #[arg(long, default_value_t = 0)]
    pub height: u64,
}

#[derive(Subcommand, Debug)]
pub enum QueryCommand {
    /// A build request (or trusted import) and its trust level.
    Request {
        id: Digest,
        #[command(flatten)]
        opts: QueryOpts,
    },
    /// The requests recorded for a package version.
    Package {
        ecosystem: String,
        name: String,
        version: String,
        #[command(flatten)]
        opts: QueryOpts,
    },
    /// What the ledger knows of an artifact digest.
    Artifact {
        sha256: Digest,
        #[command(flatten)]
        opts: QueryOpts,
    },
    /// A node: builder registration, certification, incidents.
    Node {
        pubkey: PublicKey,
        #[command(flatten)]
        opts: QueryOpts,
    },
    /// The ledger parameters.
    Params {
        #[command(flatten)]
        opts: QueryOpts,
    },
}

pub async fn run(ctx: &Context, cmd: QueryCommand) -> Result<()> {
    let (path, opts) = match cmd {
        QueryCommand::Request { id, opts } => (format!("request/{id}"), opts),
        QueryCommand::Package {
            ecosystem,
            name,
            version,
            opts,
        } => (format!("package/{ecosystem}/{name}/{version}"), opts),
        QueryCommand::Artifact { sha256, opts } => (format!("artifact/{sha256}"), opts),
        QueryCommand::Node { pubkey, opts } => (format!("node/{pubkey}"), opts),
        QueryCommand::Params { opts } => ("params".to_owned(), opts),
    };
    let client = LedgerClient::new(&ctx.node)?;
    let (height, value, verified) = if opts.prove {
        let v = client.query_verified(&path, opts.height).await?;
        (v.height, v.value, Some(hex::encode(v.app_hash)))
    } else {
        let (height, value) = client.query_raw(&path, opts.height).await?;
        (height, value, None)
    };
    let decoded = value
        .as_deref()
        .map(|bytes| value_to_json(&path, bytes))
        .transpose()?;
    let json = serde_json::json!({
        "path": path,
        "height": height,
        "value": decoded,
        "verified_against_app_hash": verified,
    });
    ctx.print(&json, || {
        let mut text = match &decoded {
            Some(v) => serde_json::to_string_pretty(v).unwrap_or_default(),
            None => format!("{path}: not found"),
        };
        text.push_str(&format!("\n(state at height {height}"));
        if let Some(hash) = &verified {
            text.push_str(&format!(
                ", proof verified against app hash {hash} in header {}",
                height + 1
            ));
        }
        text.push(')');
        text
    });
    if decoded.is_none() {
        std::process::exit(2);
    }
    Ok(())
}
