use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, Subcommand};
use pyrsia_chain::crypto::approve;
use pyrsia_chain::{
    sign_tx, Attest, BindName, BuildRequest, Digest, GovAction, Governance, Keypair, Output,
    PackageId, Params, PublicKey, RegisterBuilder, SourceRef, TrustedImport, TxBody, TxKind,
};

use crate::keys::KeyArgs;
use crate::Context;
use pyrsia_ledger_client::rpc::{CommittedTx, LedgerClient};
use pyrsia_ledger_client::verified::At;

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
    fn bind_name(self) -> BindName {
        BindName {
            ecosystem: self.ecosystem,
            name: self.name,
            repo_url: self.repo,
        }
    }
}

/// Board approvals: one key file per approving member.
#[derive(Args, Debug, Clone)]
pub struct BoardArgs {
    /// Key file of an approving board member (repeat for each).
    #[arg(long = "board-key", required = true)]
    pub board_keys: Vec<PathBuf>,
    /// The submitting key (any funded signer; pays the nonce).
    #[command(flatten)]
    pub key: KeyArgs,
}

#[derive(Subcommand, Debug)]
pub enum GovCommand {
    /// Certify (or renew) a trusted node.
    Certify {
        /// The trusted node's public key (hex).
        #[arg(value_name = "NODE")]
        trusted_node: PublicKey,
        /// Certification lasts this many days of block time.
        #[arg(long, default_value_t = 183)]
        days: u64,
        /// Explicit end of validity, unix seconds (overrides --days).
        #[arg(long)]
        valid_until: Option<u64>,
        #[command(flatten)]
        board: BoardArgs,
    },
    /// Revoke a trusted node after an incident.
    Revoke {
        /// The trusted node's public key (hex).
        #[arg(value_name = "NODE")]
        trusted_node: PublicKey,
        #[arg(long)]
        incident: String,
        /// Attestations from this height on stop counting.
        #[arg(long)]
        since_height: u64,
        #[command(flatten)]
        board: BoardArgs,
    },
    /// Bind a package name to a repository, or move it to another one.
    BindName {
        #[command(flatten)]
        name: NameArgs,
        #[command(flatten)]
        board: BoardArgs,
    },
    /// Replace the ledger parameters.
    Params {
        #[arg(long)]
        builders_per_request: u16,
        #[arg(long)]
        quorum: u16,
        #[arg(long, default_value_t = 2)]
        trusted_for_reproducible: u16,
        #[arg(long, default_value_t = 64)]
        max_outputs: u16,
        #[arg(long, default_value_t = 1024)]
        max_field_len: u32,
        #[command(flatten)]
        board: BoardArgs,
    },
}

async fn submit(ctx: &Context, key: &Keypair, kind: TxKind) -> Result<CommittedTx> {
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

fn report(ctx: &Context, what: &str, tx: &CommittedTx, extra: serde_json::Value) {
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
                report(
                    ctx,
                    &format!("build request {id}"),
                    &tx,
                    serde_json::json!({"request_id": id}),
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

pub async fn run_gov(ctx: &Context, cmd: GovCommand) -> Result<()> {
    let (action, board) = match cmd {
        GovCommand::Certify {
            trusted_node: node,
            days,
            valid_until,
            board,
        } => {
            let valid_until = match valid_until {
                Some(t) => t,
                None => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    now + days * 24 * 3600
                }
            };
            (GovAction::CertifyTrustedNode { node, valid_until }, board)
        }
        GovCommand::Revoke {
            trusted_node: node,
            incident,
            since_height,
            board,
        } => (
            GovAction::RevokeTrustedNode {
                node,
                incident,
                incident_since_height: since_height,
            },
            board,
        ),
        GovCommand::BindName { name, board } => (GovAction::BindName(name.bind_name()), board),
        GovCommand::Params {
            builders_per_request,
            quorum,
            trusted_for_reproducible,
            max_outputs,
            max_field_len,
            board,
        } => (
            GovAction::UpdateParams(Params {
                builders_per_request,
                quorum,
                trusted_for_reproducible,
                max_outputs,
                max_field_len,
            }),
            board,
        ),
    };
    // Board members sign over the chain id and sequence: both come from
    // verified state, so a lying node cannot make them approve an action for
    // another chain or a replayable sequence.
    let mut ledger = ctx.verified_ledger()?;
    let snapshot = ledger.snapshot(At::Latest).await?;
    let chain_id = snapshot.chain_id.clone();
    let seq: u64 = ledger.get_decoded(&snapshot, "gov/seq").await?.unwrap_or(0);
    let approvals = board
        .board_keys
        .iter()
        .map(|path| Keypair::load(path).map(|k| approve(&k, &chain_id, seq, &action)))
        .collect::<Result<Vec<_>, _>>()?;
    let key = board.key.load(&ctx.home)?;
    let kind = TxKind::Governance(Governance {
        seq,
        action,
        approvals,
    });
    let what = kind.name();
    let tx = submit(ctx, &key, kind).await?;
    report(ctx, what, &tx, serde_json::json!({"gov_seq": seq}));
    Ok(())
}
