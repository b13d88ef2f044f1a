use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, Subcommand};
use pyrsia_chain::{
    sign_tx, AdmitBuilder, Attest, BindName, BuildRequest, Digest, Keypair, Output, PackageId,
    RegisterBuilder, SourceRef, TrustedImport, TxBody, TxKind,
};

use crate::keys::KeyArgs;
use crate::Context;
use pyrsia_ledger_client::rpc::{CommittedTx, LedgerClient};

#[derive(Args, Debug, Clone)]
pub struct PackageArgs {
    #[arg(long)]
    pub ecosystem: String,
    #[arg(long)]
    pub name: String,
    #[arg(long = "version")]
    pub package_version: String,
}

impl PackageArgs {
    fn id(&self) -> PackageId {
        PackageId {
            ecosystem: self.ecosystem.clone(),
            name: self.name.clone(),
            version: self.package_version.clone(),
        }
    }
}

/// `name=FILE,sha256=HEX,size=N,stripe-size=N,stripe-root=HEX`
fn parse_output(s: &str) -> Result<Output> {
    let mut name = None;
    let mut sha256 = None;
    let mut size = None;
    let mut stripe_size = None;
    let mut stripe_root = None;
    for part in s.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| anyhow!("output field {part:?} is not key=value"))?;
        match k {
            "name" => name = Some(v.to_owned()),
            "sha256" => sha256 = Some(v.parse::<Digest>()?),
            "size" => size = Some(v.parse::<u64>().context("size")?),
            "stripe-size" => stripe_size = Some(v.parse::<u32>().context("stripe-size")?),
            "stripe-root" => stripe_root = Some(v.parse::<Digest>()?),
            other => bail!("unknown output field {other:?}"),
        }
    }
    let missing = |f: &str| anyhow!("output {s:?} lacks {f}");
    Ok(Output {
        name: name.ok_or_else(|| missing("name"))?,
        sha256: sha256.ok_or_else(|| missing("sha256"))?,
        size: size.ok_or_else(|| missing("size"))?,
        stripe_size: stripe_size.ok_or_else(|| missing("stripe-size"))?,
        stripe_root: stripe_root.ok_or_else(|| missing("stripe-root"))?,
    })
}

#[derive(Subcommand, Debug)]
pub enum TxCommand {
    /// Register this key as a regular builder.
    RegisterBuilder {
        #[command(flatten)]
        key: KeyArgs,
        /// libp2p peer id of this node's store.
        #[arg(long)]
        peer_id: String,
        /// Ecosystems this builder builds (repeatable).
        #[arg(long = "ecosystem", required = true)]
        ecosystems: Vec<String>,
    },
    /// As a certified trusted node, admit a builder key (it then registers
    /// itself with `register-builder`).
    AdmitBuilder {
        #[command(flatten)]
        key: KeyArgs,
        /// The builder's public key (hex).
        builder: pyrsia_chain::PublicKey,
    },
    /// Request a build of a package from a public source at an exact commit.
    RequestBuild {
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        package: PackageArgs,
        #[arg(long)]
        repo: String,
        #[arg(long)]
        commit: String,
        /// Build recipe (default: the ecosystem's own).
        #[arg(long)]
        recipe: Option<String>,
        /// Follow the request until its trust level is final (reproducible or
        /// disputed): selected builders, attestations, level changes.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 900, requires = "wait")]
        timeout: u64,
    },
    /// Attest the outputs of a build this node was selected for.
    Attest {
        #[command(flatten)]
        key: KeyArgs,
        /// Request id (hex).
        #[arg(long)]
        request: Digest,
        /// `name=F,sha256=H,size=N,stripe-size=N,stripe-root=H` (repeatable).
        #[arg(long = "output", required = true, value_parser = parse_output)]
        outputs: Vec<Output>,
        #[arg(long, default_value = "unspecified")]
        build_env: String,
        #[arg(long, default_value_t = Digest::default())]
        log_digest: Digest,
    },
    /// As a certified trusted node, vouch for an artifact mirrored from upstream.
    TrustedImport {
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        package: PackageArgs,
        #[arg(long)]
        upstream: String,
        #[arg(long = "output", required = true, value_parser = parse_output)]
        outputs: Vec<Output>,
    },
    /// As a certified trusted node, bind a package name nobody has bound yet
    /// to its source repository.
    BindName {
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        name: NameArgs,
    },
}

/// A package name and the repository it is built from.
#[derive(Args, Debug, Clone)]
pub struct NameArgs {
    #[arg(long)]
    pub ecosystem: String,
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub repo: String,
}

impl NameArgs {
    pub fn bind_name(self) -> BindName {
        BindName {
            ecosystem: self.ecosystem,
            name: self.name,
            repo_url: self.repo,
        }
    }
}

pub async fn submit(ctx: &Context, key: &Keypair, kind: TxKind) -> Result<CommittedTx> {
    let client = LedgerClient::new(&ctx.node)?;
    let chain_id = client.chain_id().await?;
    let nonce = client.next_nonce(&key.public()).await?;
    let name = kind.name();
    let tx = sign_tx(key, &chain_id, TxBody { nonce, kind });
    let committed = client
        .submit(&tx)
        .await
        .with_context(|| format!("{name} transaction"))?;
    Ok(committed)
}

/// The builders drawn for request `id`, committed at `height`: the ledger
/// draws them at the start of the next block, from that block's beacon.
pub async fn selection(ctx: &Context, id: Digest, height: u64) -> Result<Vec<String>> {
    let client = LedgerClient::new(&ctx.node)?;
    client
        .wait_height(height + 1, Duration::from_secs(120))
        .await
        .context("waiting for the block that selects the builders")?;
    let id = id.to_string();
    // CometBFT reports a height before it has stored its results.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let events = loop {
        match client.block_events(height + 1).await {
            Ok(events) => break events,
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    Ok(events
        .iter()
        .find(|e| e.kind == "builders_selected" && e.attribute("request_id") == Some(id.as_str()))
        .and_then(|e| e.attribute("selected"))
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect())
}

pub fn report(ctx: &Context, what: &str, tx: &CommittedTx, extra: serde_json::Value) {
    let mut json = serde_json::to_value(tx).unwrap_or_default();
    if let (Some(obj), serde_json::Value::Object(more)) = (json.as_object_mut(), extra) {
        obj.extend(more);
    }
    ctx.print(&json, || {
        let mut text = format!("{what}: committed at height {} (tx {})", tx.height, tx.hash);
        for (kind, attrs) in &tx.events {
            let attrs: Vec<String> = attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            text.push_str(&format!("\n  {kind}: {}", attrs.join(" ")));
        }
        text
    });
}

pub async fn run_tx(ctx: &Context, cmd: TxCommand) -> Result<()> {
    match cmd {
        TxCommand::RegisterBuilder {
            key,
            peer_id,
            ecosystems,
        } => {
            let key = key.load(&ctx.home)?;
            let tx = submit(
                ctx,
                &key,
                TxKind::RegisterBuilder(RegisterBuilder {
                    peer_id,
                    ecosystems,
                }),
            )
            .await?;
            report(
                ctx,
                "builder registered",
                &tx,
                serde_json::json!({"builder": key.public()}),
            );
        }
        TxCommand::AdmitBuilder { key, builder } => {
            let key = key.load(&ctx.home)?;
            let tx = submit(ctx, &key, TxKind::AdmitBuilder(AdmitBuilder { builder })).await?;
            report(
                ctx,
                "builder admitted",
                &tx,
                serde_json::json!({"builder": builder, "sponsor": key.public()}),
            );
        }
        TxCommand::RequestBuild {
            key,
            package,
            repo,
            commit,
            recipe,
            wait,
            timeout,
        } => {
            let key = key.load(&ctx.home)?;
            let recipe = recipe.unwrap_or_else(|| package.ecosystem.clone());
            let request = BuildRequest {
                package: package.id(),
                source: SourceRef {
                    repo_url: repo,
                    commit,
                },
                recipe,
            };
            let id = request.id();
            let tx = submit(ctx, &key, TxKind::RequestBuild(request)).await?;
            if wait {
                crate::progress::follow_request(ctx, id, &tx, Duration::from_secs(timeout)).await?;
            } else {
                let selected = selection(ctx, id, tx.height).await?;
                if !ctx.json {
                    println!(
                        "selected builders ({}): {}",
                        selected.len(),
                        selected.join(" ")
                    );
                }
                report(
                    ctx,
                    &format!("build request {id}"),
                    &tx,
                    serde_json::json!({"request_id": id, "selected": selected}),
                );
            }
        }
        TxCommand::Attest {
            key,
            request,
            outputs,
            build_env,
            log_digest,
        } => {
            let key = key.load(&ctx.home)?;
            let attest = Attest {
                request_id: request,
                outputs,
                build_env,
                log_digest,
                provenance: None,
            };
            let tx = submit(ctx, &key, TxKind::Attest(attest)).await?;
            report(ctx, "attestation", &tx, serde_json::json!({}));
        }
        TxCommand::TrustedImport {
            key,
            package,
            upstream,
            outputs,
        } => {
            let key = key.load(&ctx.home)?;
            let import = TrustedImport {
                package: package.id(),
                outputs,
                upstream,
            };
            let id = import.record_id();
            let tx = submit(ctx, &key, TxKind::TrustedImport(import)).await?;
            report(
                ctx,
                &format!("import {id}"),
                &tx,
                serde_json::json!({"request_id": id}),
            );
        }
        TxCommand::BindName { key, name } => {
            let key = key.load(&ctx.home)?;
            let tx = submit(ctx, &key, TxKind::BindName(name.bind_name())).await?;
            report(ctx, "name bound", &tx, serde_json::json!({}));
        }
    }
    Ok(())
}
