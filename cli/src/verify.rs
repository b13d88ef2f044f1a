//! `pyrsia verify`: a package's builds, levels and attesters proven from the
//! trust anchor alone, and local files matched against attested outputs.
//!
//! Exit codes: 0 verified (at or above --min-trust, every FILE matching);
//! 2 no build on the ledger (a proven absence); 3 verified but below
//! --min-trust; 4 forged or mismatching answer, or a FILE matching no
//! attested output; 5 the node could not be reached; 1 anything else.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::Args;
use pyrsia_chain::{AttesterRole, Digest, PackageId, Params, RequestRecord};
use pyrsia_ledger_client::light::LightError;
use pyrsia_ledger_client::rpc::ClientError;
use pyrsia_ledger_client::verified::{At, PackageBuilds, VerifyError};
use sha2::{Digest as _, Sha256};

use crate::fetch::{served_as, MinTrust};
use crate::Context;

pub const EXIT_NOT_FOUND: i32 = 2;
pub const EXIT_BELOW_MIN_TRUST: i32 = 3;
pub const EXIT_MISMATCH: i32 = 4;
pub const EXIT_NETWORK: i32 = 5;

#[derive(Args, Debug)]
pub struct VerifyCmd {
    pub ecosystem: String,
    pub name: String,
    pub version: String,
    /// Local files to match against the builds' attested outputs.
    pub files: Vec<PathBuf>,
    /// The level a build (and a file's build) must reach.
    #[arg(long, value_enum, default_value_t = MinTrust::Trusted)]
    pub min_trust: MinTrust,
}

/// How a failed verification exits.
fn exit_code(e: &VerifyError) -> i32 {
    match e {
        VerifyError::Light(LightError::Rpc { .. })
        | VerifyError::Client(ClientError::Rpc { .. } | ClientError::Timeout(..)) => EXIT_NETWORK,
        VerifyError::Light(
            LightError::Io { .. }
            | LightError::Config { .. }
            | LightError::BadAnchor(_)
            | LightError::OtherAnchor { .. }
            | LightError::Expired { .. },
        )
        | VerifyError::BadPath { .. } => 1,
        _ => EXIT_MISMATCH,
    }
}

fn sha256_file(path: &Path) -> Result<Digest> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Digest(hasher.finalize().into()))
}

fn role_name(role: AttesterRole) -> &'static str {
    match role {
        AttesterRole::Regular => "regular",
        AttesterRole::Trusted => "trusted",
        AttesterRole::Void => "void",
    }
}

/// The attesters whose outputs differ from the build's leading result.
fn dissent_of(params: &Params, build: &RequestRecord) -> Vec<pyrsia_chain::PublicKey> {
    pyrsia_chain::trust::dissenters(params, &build.attestations)
        .into_iter()
        .map(|a| a.attester)
        .collect()
}

fn meets(build: &RequestRecord, min: MinTrust) -> bool {
    served_as(build.level).is_some_and(|level| level >= min)
}

/// A local file and the build outputs it matched.
struct FileMatch {
    path: PathBuf,
    sha256: Digest,
    /// (request id, output name, whether that build meets --min-trust)
    matches: Vec<(Digest, String, bool)>,
}

fn match_files(
    files: &[PathBuf],
    builds: &[RequestRecord],
    min: MinTrust,
) -> Result<Vec<FileMatch>> {
    files
        .iter()
        .map(|path| {
            let sha256 = sha256_file(path)?;
            let matches = builds
                .iter()
                .flat_map(|b| {
                    b.attestations
                        .iter()
                        .filter(|a| a.role != AttesterRole::Void)
                        .flat_map(|a| a.outputs.iter())
                        .filter(|o| o.sha256 == sha256)
                        .map(|o| (b.id, o.name.clone(), meets(b, min)))
                })
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            Ok(FileMatch {
                path: path.clone(),
                sha256,
                matches,
            })
        })
        .collect()
}

pub async fn run(ctx: &Context, cmd: VerifyCmd) -> Result<()> {
    let package = PackageId {
        ecosystem: cmd.ecosystem.clone(),
        name: cmd.name.clone(),
        version: cmd.version.clone(),
    };
    let read = async {
        let mut ledger = ctx.verified_ledger()?;
        let builds = ledger.package_builds(&package, At::Latest).await?;
        let params: Params = ledger
            .get_decoded(&builds.snapshot, "params")
            .await?
            .ok_or_else(|| VerifyError::Missing {
                key: "params".into(),
            })?;
        Ok::<_, VerifyError>((builds, params))
    };
    let (PackageBuilds { snapshot, builds }, params) = match read.await {
        Ok(read) => read,
        Err(e) => {
            let code = exit_code(&e);
            eprintln!("error: verifying {package}: {e}");
            std::process::exit(code);
        }
    };
    let files = match_files(&cmd.files, &builds, cmd.min_trust)?;

    let any_meets = builds.iter().any(|b| meets(b, cmd.min_trust));
    let files_ok = files.iter().all(|f| f.matches.iter().any(|m| m.2));
    let files_match_something = files.iter().all(|f| !f.matches.is_empty());
    let code = if builds.is_empty() {
        EXIT_NOT_FOUND
    } else if !files_match_something {
        EXIT_MISMATCH
    } else if !any_meets || !files_ok {
        EXIT_BELOW_MIN_TRUST
    } else {
        0
    };

    let json = serde_json::json!({
        "package": package.to_string(),
        "chain_id": snapshot.chain_id,
        "height": snapshot.height,
        "app_hash": hex::encode(&snapshot.app_hash),
        "builds": builds.iter().map(|b| (b, dissent_of(&params, b))).map(|(b, dissent)| serde_json::json!({
            "request_id": b.id,
            "level": b.level,
            "meets_min_trust": meets(b, cmd.min_trust),
            "attesters": b.attestations.iter().map(|a| serde_json::json!({
                "attester": a.attester,
                "role": role_name(a.role),
                "height": a.height,
                "outputs": a.outputs,
                "dissent": dissent.contains(&a.attester),
                "provenance": a.provenance.as_ref().map(|p| p.sha256),
            })).collect::<Vec<_>>(),
            "failures": b.failures.iter().map(|f| serde_json::json!({
                "builder": f.builder,
                "role": role_name(f.role),
                "height": f.height,
                "reason": f.reason,
                "log_digest": f.log_digest,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "files": files.iter().map(|f| serde_json::json!({
            "path": f.path,
            "sha256": f.sha256,
            "matches": f.matches.iter().map(|(id, name, ok)| serde_json::json!({
                "request_id": id, "output": name, "meets_min_trust": ok,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "exit_code": code,
    });
    ctx.print(&json, || {
        let mut text = format!(
            "{package}: {} build(s), proven at height {} of chain {} (header {}, from the trust anchor)",
            builds.len(),
            snapshot.height,
            snapshot.chain_id,
            snapshot.height + 1
        );
        for b in &builds {
            text.push_str(&format!("\n  build {}: {}", b.id, b.level));
            let dissent = dissent_of(&params, b);
            for a in &b.attestations {
                text.push_str(&format!(
                    "\n    {:<7} {} at height {}{}",
                    role_name(a.role),
                    a.attester,
                    a.height,
                    if dissent.contains(&a.attester) {
                        "  DISSENT: attests other outputs"
                    } else {
                        ""
                    }
                ));
            }
            for f in &b.failures {
                text.push_str(&format!(
                    "\n    {:<7} {} at height {}  FAILED: {}",
                    role_name(f.role),
                    f.builder,
                    f.height,
                    f.reason
                ));
            }
        }
        for f in &files {
            match f.matches.first() {
                Some((id, name, _)) => text.push_str(&format!(
                    "\n  {}: matches {name} of build {id}",
                    f.path.display()
                )),
                None => text.push_str(&format!(
                    "\n  {}: sha256 {} matches no attested output",
                    f.path.display(),
                    f.sha256
                )),
            }
        }
        text
    });
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}
