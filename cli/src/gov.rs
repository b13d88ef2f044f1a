//! `pyrsia gov`: governance actions approved by the board.
//!
//! The safe way is one approval file per board member, each signed on that
//! member's own machine (`gov approve`, which needs no network: it names the
//! chain id and governance sequence explicitly), then combined by anyone
//! (`gov submit`). No process ever holds more than one board key. The
//! one-step form (`gov certify … --board-key A --board-key B`) signs with
//! every key it is given, for devnets.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use pyrsia_chain::crypto::{approve, gov_sign_bytes, verify};
use pyrsia_chain::{
    Approval, GovAction, Governance, Keypair, Params, PublicKey, TxKind, VrfPublic,
};
use pyrsia_ledger_client::verified::At;
use serde::{Deserialize, Serialize};

use crate::keys::KeyArgs;
use crate::tx::{report, submit, NameArgs};
use crate::Context;

#[derive(Subcommand, Debug)]
pub enum GovCommand {
    /// Sign one board member's approval of an action into a file.
    Approve {
        /// The board member's key file.
        #[arg(long)]
        board_key: PathBuf,
        /// The chain the approval is for.
        #[arg(long)]
        chain_id: String,
        /// The governance sequence it is for: the ledger's current one
        /// (`pyrsia query gov-seq`).
        #[arg(long)]
        seq: u64,
        /// Where to write the approval.
        #[arg(short, long)]
        output: PathBuf,
        #[command(subcommand)]
        action: ActionCmd,
    },
    /// Combine approval files and submit the action.
    Submit {
        /// Approval files, one per board member.
        #[arg(required = true)]
        approvals: Vec<PathBuf>,
        /// The submitting key (any signer; pays the nonce).
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Sign with every --board-key given here and submit, in one step.
    #[command(flatten)]
    OneStep(OneStepCmd),
}

/// The one-step forms: an action and the board keys that approve it.
#[derive(Subcommand, Debug)]
pub enum OneStepCmd {
    /// Certify (or renew) a trusted node.
    Certify {
        #[command(flatten)]
        args: CertifyArgs,
        #[command(flatten)]
        board: BoardArgs,
    },
    /// Revoke a trusted node after an incident.
    Revoke {
        #[command(flatten)]
        args: RevokeArgs,
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
        #[command(flatten)]
        args: ParamsArgs,
        #[command(flatten)]
        board: BoardArgs,
    },
    /// Admit a builder key on the board's authority.
    AdmitBuilder {
        #[command(flatten)]
        args: AdmitBuilderArgs,
        #[command(flatten)]
        board: BoardArgs,
    },
    /// Remove a builder; its attestations from --since-height on stop counting.
    RemoveBuilder {
        #[command(flatten)]
        args: RemoveBuilderArgs,
        #[command(flatten)]
        board: BoardArgs,
    },
    /// Add a validator, change its voting power, or remove it (--power 0).
    SetValidator {
        #[command(flatten)]
        args: SetValidatorArgs,
        #[command(flatten)]
        board: BoardArgs,
    },
}

/// An action, as `gov approve` signs it.
#[derive(Subcommand, Debug)]
pub enum ActionCmd {
    /// Certify (or renew) a trusted node.
    Certify(CertifyArgs),
    /// Revoke a trusted node after an incident.
    Revoke(RevokeArgs),
    /// Bind a package name to a repository, or move it to another one.
    BindName(NameArgs),
    /// Replace the ledger parameters.
    Params(ParamsArgs),
    /// Admit a builder key on the board's authority.
    AdmitBuilder(AdmitBuilderArgs),
    /// Remove a builder; its attestations from --since-height on stop counting.
    RemoveBuilder(RemoveBuilderArgs),
    /// Add a validator, change its voting power, or remove it (--power 0).
    SetValidator(SetValidatorArgs),
}

/// The validator and its power: its keys from its node's home
/// (`--validator-home`), or given explicitly.
#[derive(Args, Debug, Clone)]
pub struct SetValidatorArgs {
    /// The validator node's home: its consensus key from
    /// config/priv_validator_key.json, its beacon key from
    /// config/beacon_key.json (only the public halves are read).
    #[arg(long, conflicts_with = "validator_pub_key")]
    validator_home: Option<PathBuf>,
    /// The validator's ed25519 consensus public key: hex, or base64 as in
    /// `priv_validator_key.json` and `cometbft show-validator`.
    #[arg(long = "validator-pub-key", value_name = "KEY")]
    validator_pub_key: Option<String>,
    /// Its beacon (VRF) public key, hex: needed to add a validator to a
    /// chain with beacon keys (`public` in its config/beacon_key.json).
    #[arg(long, value_name = "HEX")]
    vrf_public: Option<VrfPublic>,
    /// Voting power: 0 removes the validator.
    #[arg(long)]
    power: u64,
}

impl SetValidatorArgs {
    fn action(self) -> Result<GovAction> {
        let (pub_key, home_vrf) = match (&self.validator_home, &self.validator_pub_key) {
            (Some(home), _) => {
                let keys = pyrsia_genesis::validator_keys(home)?;
                (keys.pub_key, keys.vrf_public)
            }
            (None, Some(text)) => (parse_consensus_key(text)?, None),
            (None, None) => bail!("give --validator-home or --validator-pub-key"),
        };
        // A removal carries no beacon key; an addition takes the home's
        // unless one is given.
        let vrf_public = if self.power == 0 {
            None
        } else {
            self.vrf_public.or(home_vrf)
        };
        Ok(GovAction::SetValidator {
            pub_key,
            power: self.power,
            vrf_public,
        })
    }
}

/// An ed25519 consensus public key given as hex or base64.
pub fn parse_consensus_key(text: &str) -> Result<PublicKey> {
    let text = text.trim();
    if let Ok(key) = text.parse::<PublicKey>() {
        return Ok(key);
    }
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .with_context(|| format!("{text:?} is neither 64 hex characters nor base64"))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| anyhow::anyhow!("an ed25519 key is 32 bytes, not {}", b.len()))?;
    Ok(PublicKey(bytes))
}

#[derive(Args, Debug, Clone)]
pub struct AdmitBuilderArgs {
    /// The builder's public key (hex).
    #[arg(value_name = "BUILDER")]
    builder: PublicKey,
}

#[derive(Args, Debug, Clone)]
pub struct RemoveBuilderArgs {
    /// The builder's public key (hex).
    #[arg(value_name = "BUILDER")]
    builder: PublicKey,
    #[arg(long)]
    reason: String,
    /// Attestations from this height on stop counting.
    #[arg(long)]
    since_height: u64,
}

/// Board approvals: one key file per approving member.
#[derive(Args, Debug, Clone)]
pub struct BoardArgs {
    /// Key file of an approving board member (repeat for each).
    #[arg(long = "board-key", required = true)]
    pub board_keys: Vec<PathBuf>,
    /// The submitting key (any signer; pays the nonce).
    #[command(flatten)]
    pub key: KeyArgs,
}

#[derive(Args, Debug, Clone)]
pub struct CertifyArgs {
    /// The trusted node's public key (hex).
    #[arg(value_name = "NODE")]
    trusted_node: PublicKey,
    /// Certification lasts this many days from now (block time).
    #[arg(long, default_value_t = 183)]
    days: u64,
    /// Explicit end of validity, unix seconds (overrides --days).
    #[arg(long)]
    valid_until: Option<u64>,
}

#[derive(Args, Debug, Clone)]
pub struct RevokeArgs {
    /// The trusted node's public key (hex).
    #[arg(value_name = "NODE")]
    trusted_node: PublicKey,
    #[arg(long)]
    incident: String,
    /// Attestations from this height on stop counting.
    #[arg(long)]
    since_height: u64,
}

#[derive(Args, Debug, Clone)]
pub struct ParamsArgs {
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
    #[arg(long, default_value_t = Params::default().attest_timeout_blocks)]
    attest_timeout_blocks: u32,
    #[arg(long, default_value_t = Params::default().max_attest_rounds)]
    max_attest_rounds: u16,
    #[arg(long, default_value_t = Params::default().max_missed_deadlines)]
    max_missed_deadlines: u16,
    #[arg(long, default_value_t = Params::default().max_sponsored_builders)]
    max_sponsored_builders: u16,
    #[arg(long, default_value_t = Params::default().max_open_per_signer)]
    max_open_per_signer: u16,
    #[arg(long, default_value_t = Params::default().max_open_per_package)]
    max_open_per_package: u16,
    #[arg(long, default_value_t = Params::default().max_open_per_ecosystem)]
    max_open_per_ecosystem: u32,
}

impl ActionCmd {
    fn action(self) -> Result<GovAction> {
        Ok(match self {
            ActionCmd::Certify(a) => {
                let valid_until = match a.valid_until {
                    Some(t) => t,
                    None => {
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .context("the local clock is before 1970: give --valid-until")?
                            .as_secs();
                        now + a.days * 24 * 3600
                    }
                };
                GovAction::CertifyTrustedNode {
                    node: a.trusted_node,
                    valid_until,
                }
            }
            ActionCmd::Revoke(a) => GovAction::RevokeTrustedNode {
                node: a.trusted_node,
                incident: a.incident,
                incident_since_height: a.since_height,
            },
            ActionCmd::BindName(n) => GovAction::BindName(n.bind_name()),
            ActionCmd::Params(p) => GovAction::UpdateParams(Params {
                builders_per_request: p.builders_per_request,
                quorum: p.quorum,
                trusted_for_reproducible: p.trusted_for_reproducible,
                max_outputs: p.max_outputs,
                max_field_len: p.max_field_len,
                attest_timeout_blocks: p.attest_timeout_blocks,
                max_attest_rounds: p.max_attest_rounds,
                max_missed_deadlines: p.max_missed_deadlines,
                max_sponsored_builders: p.max_sponsored_builders,
                max_open_per_signer: p.max_open_per_signer,
                max_open_per_package: p.max_open_per_package,
                max_open_per_ecosystem: p.max_open_per_ecosystem,
            }),
            ActionCmd::AdmitBuilder(a) => GovAction::AdmitBuilder { builder: a.builder },
            ActionCmd::RemoveBuilder(a) => GovAction::RemoveBuilder {
                builder: a.builder,
                reason: a.reason,
                since_height: a.since_height,
            },
            ActionCmd::SetValidator(a) => a.action()?,
        })
    }
}

impl OneStepCmd {
    fn split(self) -> (ActionCmd, BoardArgs) {
        match self {
            OneStepCmd::Certify { args, board } => (ActionCmd::Certify(args), board),
            OneStepCmd::Revoke { args, board } => (ActionCmd::Revoke(args), board),
            OneStepCmd::BindName { name, board } => (ActionCmd::BindName(name), board),
            OneStepCmd::Params { args, board } => (ActionCmd::Params(args), board),
            OneStepCmd::AdmitBuilder { args, board } => (ActionCmd::AdmitBuilder(args), board),
            OneStepCmd::RemoveBuilder { args, board } => (ActionCmd::RemoveBuilder(args), board),
            OneStepCmd::SetValidator { args, board } => (ActionCmd::SetValidator(args), board),
        }
    }
}

/// One board member's signed approval, as a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalFile {
    pub chain_id: String,
    pub seq: u64,
    pub action: GovAction,
    pub approval: Approval,
}

impl ApprovalFile {
    fn load(path: &Path) -> Result<ApprovalFile> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: ApprovalFile = serde_json::from_str(&text)
            .with_context(|| format!("{} is not an approval file", path.display()))?;
        let msg = gov_sign_bytes(&file.chain_id, file.seq, &file.action);
        if !verify(&file.approval.board_key, &file.approval.signature, &msg) {
            bail!(
                "{}: the signature of {} does not verify for this chain, sequence and action",
                path.display(),
                file.approval.board_key
            );
        }
        Ok(file)
    }
}

/// The chain id and governance sequence as verified state has them.
async fn verified_chain_and_seq(ctx: &Context) -> Result<(String, u64)> {
    let mut ledger = ctx.verified_ledger()?;
    let snapshot = ledger.snapshot(At::Latest).await?;
    let seq: u64 = ledger
        .get_decoded(&snapshot, pyrsia_chain::state_key::GOV_SEQ)
        .await?
        .unwrap_or(0);
    Ok((snapshot.chain_id, seq))
}

async fn submit_governance(
    ctx: &Context,
    key: &KeyArgs,
    seq: u64,
    action: GovAction,
    approvals: Vec<Approval>,
) -> Result<()> {
    let key = key.load(&ctx.home)?;
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

pub async fn run(ctx: &Context, cmd: GovCommand) -> Result<()> {
    match cmd {
        GovCommand::Approve {
            board_key,
            chain_id,
            seq,
            output,
            action,
        } => {
            let member = Keypair::load(&board_key)
                .with_context(|| format!("loading board key {}", board_key.display()))?;
            let action = action.action()?;
            let file = ApprovalFile {
                approval: approve(&member, &chain_id, seq, &action),
                chain_id,
                seq,
                action,
            };
            let text = serde_json::to_string_pretty(&file)?;
            std::fs::write(&output, text)
                .with_context(|| format!("writing {}", output.display()))?;
            ctx.print(
                &serde_json::json!({"approval": output, "board_key": member.public()}),
                || format!("{} approved, in {}", member.public(), output.display()),
            );
            Ok(())
        }
        GovCommand::Submit { approvals, key } => {
            let files = approvals
                .iter()
                .map(|p| ApprovalFile::load(p))
                .collect::<Result<Vec<_>>>()?;
            let Some(first) = files.first() else {
                bail!("no approval files");
            };
            if let Some(other) = files.iter().find(|f| {
                (&f.chain_id, f.seq, &f.action) != (&first.chain_id, first.seq, &first.action)
            }) {
                bail!(
                    "the approvals are not for one action: {} approved chain {} sequence {} {:?}, {} approved chain {} sequence {} {:?}",
                    first.approval.board_key, first.chain_id, first.seq, first.action,
                    other.approval.board_key, other.chain_id, other.seq, other.action
                );
            }
            let (chain_id, seq) = verified_chain_and_seq(ctx).await?;
            if chain_id != first.chain_id || seq != first.seq {
                bail!(
                    "the approvals are for chain {} sequence {}, the ledger is chain {chain_id} at sequence {seq}: approve again",
                    first.chain_id,
                    first.seq
                );
            }
            let (seq, action) = (first.seq, first.action.clone());
            let approvals = files.into_iter().map(|f| f.approval).collect();
            submit_governance(ctx, &key, seq, action, approvals).await
        }
        GovCommand::OneStep(cmd) => {
            let (action, board) = cmd.split();
            let action = action.action()?;
            let (chain_id, seq) = verified_chain_and_seq(ctx).await?;
            let approvals = board
                .board_keys
                .iter()
                .map(|path| Keypair::load(path).map(|k| approve(&k, &chain_id, seq, &action)))
                .collect::<Result<Vec<_>, _>>()?;
            submit_governance(ctx, &board.key, seq, action, approvals).await
        }
    }
}
