use anyhow::Result;
use clap::{Args, Subcommand};
use pyrsia_chain::render::value_to_json;
use pyrsia_chain::{Digest, PublicKey};

use crate::Context;
use pyrsia_ledger_client::rpc::LedgerClient;
use pyrsia_ledger_client::verified::At;

#[derive(Args, Debug, Clone)]
pub struct QueryOpts {
    /// Print what the node says without verifying it (for debugging a node;
    /// never act on it).
    #[arg(long)]
    pub unverified: bool,
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
    /// The repository a package name is bound to, and who bound it.
    Name {
        ecosystem: String,
        name: String,
        #[command(flatten)]
        opts: QueryOpts,
    },
    /// The source a package version is released from.
    Released {
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
    /// The governance sequence the next governance action must carry.
    GovSeq {
        #[command(flatten)]
        opts: QueryOpts,
    },
    /// The ledger parameters.
    Params {
        #[command(flatten)]
        opts: QueryOpts,
    },
    /// Any state key, e.g. `package-requests/0/npm/left-pad/1.3.0`,
    /// `builders/npm` or `void/queue` (see docs/protocol.md, State).
    Key {
        path: String,
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
        QueryCommand::Name {
            ecosystem,
            name,
            opts,
        } => (format!("name/{ecosystem}/{name}"), opts),
        QueryCommand::Released {
            ecosystem,
            name,
            version,
            opts,
        } => (format!("released/{ecosystem}/{name}/{version}"), opts),
        QueryCommand::Artifact { sha256, opts } => (format!("artifact/{sha256}"), opts),
        QueryCommand::Node { pubkey, opts } => (format!("node/{pubkey}"), opts),
        QueryCommand::Params { opts } => ("params".to_owned(), opts),
        QueryCommand::GovSeq { opts } => ("gov/seq".to_owned(), opts),
        QueryCommand::Key { path, opts } => (path, opts),
    };
    let (height, value, verified) = if opts.unverified {
        let client = LedgerClient::new(&ctx.node)?;
        let (height, value) = client.query_raw(&path, opts.height).await?;
        (height, value, None)
    } else {
        let mut ledger = ctx.verified_ledger()?;
        let at = match opts.height {
            0 => At::Latest,
            h => At::Height(h),
        };
        let snapshot = ledger.snapshot(at).await?;
        let value = ledger.get(&snapshot, &path).await?;
        (snapshot.height, value, Some(hex::encode(snapshot.app_hash)))
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
        "verified": verified.is_some(),
    });
    ctx.print(&json, || {
        let mut text = match &decoded {
            Some(v) => serde_json::to_string_pretty(v).unwrap_or_default(),
            None => format!("{path}: not found"),
        };
        text.push_str(&format!("\n(state at height {height}"));
        if let Some(hash) = &verified {
            text.push_str(&format!(
                ", proven against app hash {hash} in header {}, verified from the trust anchor",
                height + 1
            ));
        } else {
            text.push_str(", UNVERIFIED: as the node claims it");
        }
        text.push(')');
        text
    });
    if decoded.is_none() {
        std::process::exit(2);
    }
    Ok(())
}
