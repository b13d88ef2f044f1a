//! `pyrsia provenance ECOSYSTEM NAME VERSION -o DIR`: the signed provenance
//! of a package's build, one DSSE envelope per attester, each checked
//! against the ledger before it is written: the record is proven from the
//! trust anchor, the envelope's bytes are the ones the attestation names
//! (SHA-256), its signature is the attester's key, and its statement's
//! subjects are the outputs the attester attested.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Args;
use pyrsia_chain::{AttestationRecord, AttesterRole, Digest, PackageId};
use pyrsia_ledger_client::verified::At;
use pyrsia_provenance::Envelope;

use crate::fetch::{best, served_as, MinTrust};
use crate::Context;
use pyrsia_ledger_client::store::{read_output, StoreClient};

/// Largest provenance envelope fetched (a statement lists outputs and
/// dependencies; megabytes would be an attack, not provenance).
pub const MAX_ENVELOPE_BYTES: u64 = 4 << 20;

#[derive(Args, Debug)]
pub struct ProvenanceCmd {
    pub ecosystem: String,
    pub name: String,
    pub version: String,
    /// Directory to write `<builder key>.intoto.jsonl` files into.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Refuse builds below this trust level (the build is chosen as `fetch` chooses it).
    #[arg(long, value_enum, default_value_t = MinTrust::Trusted)]
    pub min_trust: MinTrust,
    /// Control API of the local store.
    #[arg(long, env = "PYRSIA_STORE_API", default_value = crate::store_api::DEFAULT_API_URL)]
    pub api: String,
    /// The local store's API token file (default: that of the store
    /// HOME/config/services.toml declares at --api).
    #[arg(long, env = "PYRSIA_STORE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// Fetches and checks one attester's envelope; returns its bytes.
async fn checked_envelope(store: &StoreClient, a: &AttestationRecord) -> Result<Option<Vec<u8>>> {
    let Some(p) = &a.provenance else {
        return Ok(None);
    };
    let bytes = read_output(store, p, MAX_ENVELOPE_BYTES).await?;
    check_envelope(&bytes, a)?;
    Ok(Some(bytes))
}

/// Whether `bytes` are the envelope attestation `a` names, signed by its
/// attester, stating exactly the outputs it attested.
fn check_envelope(bytes: &[u8], a: &AttestationRecord) -> Result<()> {
    let p = a
        .provenance
        .as_ref()
        .ok_or_else(|| anyhow!("the attestation names no provenance"))?;
    if Digest::of(bytes) != p.sha256 || bytes.len() as u64 != p.size {
        bail!("the envelope's bytes are not the attested ones");
    }
    let envelope = Envelope::from_json(bytes)?;
    let statement = envelope.verify(&a.attester.0)?;
    let mut attested: Vec<(String, String)> = a
        .outputs
        .iter()
        .map(|o| (o.name.clone(), o.sha256.to_string()))
        .collect();
    attested.sort();
    if statement.subjects() != attested {
        bail!(
            "its subjects {:?} are not the outputs it attested {:?}",
            statement.subjects(),
            attested
        );
    }
    Ok(())
}

pub async fn run(ctx: &Context, cmd: ProvenanceCmd) -> Result<()> {
    let package = PackageId {
        ecosystem: cmd.ecosystem.clone(),
        name: cmd.name.clone(),
        version: cmd.version.clone(),
    };
    let builds = ctx
        .verified_ledger()?
        .package_builds(&package, At::Latest)
        .await
        .with_context(|| format!("reading {package} from the ledger"))?
        .builds;
    let build = best(builds).ok_or_else(|| anyhow!("{package} has no build on the ledger"))?;
    if served_as(build.level).is_none_or(|l| l < cmd.min_trust) {
        bail!(
            "refusing {package}: its best build {} is {}, below the minimum (--min-trust)",
            build.id,
            build.level
        );
    }
    std::fs::create_dir_all(&cmd.output)
        .with_context(|| format!("creating {}", cmd.output.display()))?;
    let store = crate::store_api::for_home(&ctx.home, &cmd.api, cmd.token_file.as_deref())?;
    let mut written = Vec::new();
    let mut missing = Vec::new();
    let mut refused = Vec::new();
    for a in build
        .attestations
        .iter()
        .filter(|a| a.role != AttesterRole::Void)
    {
        match checked_envelope(&store, a).await {
            Ok(Some(bytes)) => {
                let file = cmd.output.join(format!("{}.intoto.jsonl", a.attester));
                std::fs::write(&file, &bytes)
                    .with_context(|| format!("writing {}", file.display()))?;
                written.push(serde_json::json!({
                    "attester": a.attester,
                    "role": format!("{:?}", a.role).to_lowercase(),
                    "file": file,
                }));
            }
            Ok(None) => missing.push(a.attester),
            Err(e) => refused.push((a.attester, format!("{e:#}"))),
        }
    }
    ctx.print(
        &serde_json::json!({
            "package": package.to_string(),
            "request_id": build.id,
            "level": build.level,
            "verified": written,
            "without_provenance": missing,
            "refused": refused.iter().map(|(k, e)| serde_json::json!({"attester": k, "error": e})).collect::<Vec<_>>(),
        }),
        || {
            let mut text = format!(
                "{package}: build {} ({}): {} provenance envelope(s) verified -> {}",
                build.id,
                build.level,
                written.len(),
                cmd.output.display()
            );
            for k in &missing {
                text.push_str(&format!("\n  {k}: attested no provenance"));
            }
            for (k, e) in &refused {
                text.push_str(&format!("\n  {k}: REFUSED: {e}"));
            }
            text
        },
    );
    if !refused.is_empty() {
        bail!(
            "{} attester(s)' provenance did not verify against the ledger",
            refused.len()
        );
    }
    if written.is_empty() {
        bail!("no attester of build {} stored a provenance", build.id);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use pyrsia_chain::{Keypair, Output};
    use pyrsia_provenance::{Artifact, BuildFacts, ExternalParameters, Statement};

    fn output(name: &str, seed: u8) -> Output {
        Output {
            name: name.into(),
            sha256: Digest([seed; 32]),
            size: 10,
            stripe_size: 4096,
            stripe_root: Digest([seed; 32]),
        }
    }

    /// An envelope signed by `signer` stating `outputs`.
    fn envelope(signer: &Keypair, outputs: &[Output]) -> Vec<u8> {
        let facts = BuildFacts {
            request_id: "00".repeat(32),
            parameters: ExternalParameters {
                ecosystem: "script".into(),
                name: "x".into(),
                version: "1".into(),
                repo_url: "git://127.0.0.1/x.git".into(),
                commit: "ab".repeat(20),
                recipe: "script".into(),
            },
            build_env: "test".into(),
            builder_key: signer.public().0,
            outputs: outputs
                .iter()
                .map(|o| Artifact {
                    name: o.name.clone(),
                    sha256: o.sha256.to_string(),
                })
                .collect(),
            dependencies: Vec::new(),
            log: Artifact {
                name: "build.log".into(),
                sha256: "11".repeat(32),
            },
        };
        Envelope::sign(&Statement::new(&facts), &signer.public().0, |m| {
            signer.sign(m)
        })
        .to_json_line()
    }

    /// `attester`'s attestation of `outputs`, naming `bytes` as its provenance.
    fn attestation(attester: &Keypair, outputs: Vec<Output>, bytes: &[u8]) -> AttestationRecord {
        AttestationRecord {
            attester: attester.public(),
            role: AttesterRole::Regular,
            height: 1,
            outputs,
            build_env: "test".into(),
            log_digest: Digest::default(),
            provenance: Some(Output {
                name: "provenance.intoto.jsonl".into(),
                sha256: Digest::of(bytes),
                size: bytes.len() as u64,
                stripe_size: 4096,
                stripe_root: Digest::default(),
            }),
        }
    }

    #[test]
    fn only_the_attesters_envelope_of_its_attested_outputs_passes() {
        let builder = Keypair::from_seed([1; 32]);
        let other = Keypair::from_seed([2; 32]);
        let outputs = vec![output("a.tgz", 7)];
        let good = envelope(&builder, &outputs);
        check_envelope(&good, &attestation(&builder, outputs.clone(), &good)).unwrap();

        // Signed by someone else, even if the ledger names its bytes.
        let forged = envelope(&other, &outputs);
        assert!(check_envelope(&forged, &attestation(&builder, outputs.clone(), &forged)).is_err());
        // Other subjects than the attested outputs.
        let lying = envelope(&builder, &[output("a.tgz", 8)]);
        assert!(check_envelope(&lying, &attestation(&builder, outputs.clone(), &lying)).is_err());
        // Bytes the attestation does not name (an altered envelope).
        let attested = attestation(&builder, outputs.clone(), &good);
        let mut altered = good.clone();
        altered.insert(altered.len() - 1, b' ');
        assert!(check_envelope(&altered, &attested).is_err());
    }
}
