//! `pyrsia fetch`: by digest, or by package coordinates looked up (with
//! proofs) on the ledger and refused below a minimum trust level.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use clap::{Args, ValueEnum};
use pyrsia_chain::{Output, PackageId, RequestRecord, TrustLevel};
use pyrsia_gateway::catalog::version_view;
use pyrsia_ledger_client::verified::At;

use crate::Context;

#[derive(Args, Debug)]
pub struct FetchCmd {
    /// ECOSYSTEM NAME VERSION: fetch every output of the package's best build
    /// on the ledger into the directory given by -o.
    #[arg(num_args = 0..=3, value_names = ["ECOSYSTEM", "NAME", "VERSION"])]
    pub package: Vec<String>,
    /// Fetch one artifact by whole-file SHA-256 instead (hex).
    #[arg(long, requires = "stripe_root", conflicts_with = "package")]
    pub sha256: Option<String>,
    /// Its stripe root (hex), as held by the ledger.
    #[arg(long, requires = "sha256")]
    pub stripe_root: Option<String>,
    /// Expected size in bytes (digest mode).
    #[arg(long, requires = "sha256")]
    pub size: Option<u64>,
    /// Expected stripe size (digest mode).
    #[arg(long, requires = "sha256")]
    pub stripe_size: Option<u32>,
    /// Output file (digest mode) or directory (package mode).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Keep what was fetched in the local store (never evicted).
    #[arg(long)]
    pub pin: bool,
    /// Refuse builds below this trust level (package mode).
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

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[value(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum MinTrust {
    Pending,
    QuorumOnly,
    Trusted,
    Reproducible,
}

impl MinTrust {
    pub fn level(self) -> TrustLevel {
        match self {
            MinTrust::Pending => TrustLevel::Pending,
            MinTrust::QuorumOnly => TrustLevel::QuorumOnly,
            MinTrust::Trusted => TrustLevel::Trusted,
            MinTrust::Reproducible => TrustLevel::Reproducible,
        }
    }
}

/// How far a level may be served; a disputed build never is.
pub fn served_as(level: TrustLevel) -> Option<MinTrust> {
    match level {
        TrustLevel::Disputed => None,
        TrustLevel::Pending => Some(MinTrust::Pending),
        TrustLevel::QuorumOnly => Some(MinTrust::QuorumOnly),
        TrustLevel::Trusted => Some(MinTrust::Trusted),
        TrustLevel::Reproducible => Some(MinTrust::Reproducible),
    }
}

pub async fn run(ctx: &Context, cmd: FetchCmd) -> Result<()> {
    match (&cmd.sha256, &cmd.stripe_root, cmd.package.len()) {
        (Some(sha256), Some(stripe_root), 0) => {
            let (sha256, stripe_root) = (sha256.clone(), stripe_root.clone());
            let (size, stripe_size, output) = (cmd.size, cmd.stripe_size, cmd.output.clone());
            fetch_one(ctx, &cmd, sha256, stripe_root, size, stripe_size, output).await
        }
        (None, None, 3) => fetch_package(ctx, &cmd).await,
        _ => bail!("give either ECOSYSTEM NAME VERSION, or --sha256 and --stripe-root"),
    }
}

async fn fetch_one(
    ctx: &Context,
    cmd: &FetchCmd,
    sha256: String,
    stripe_root: String,
    size: Option<u64>,
    stripe_size: Option<u32>,
    output: PathBuf,
) -> Result<()> {
    let store = crate::store_api::for_home(&ctx.home, &cmd.api, cmd.token_file.as_deref())?;
    store_cli::FetchArgs {
        sha256,
        stripe_root,
        size,
        stripe_size,
        output,
        pin: cmd.pin,
        json: ctx.json,
        api: cmd.api.clone(),
        token_file: None,
    }
    .run_with(&store)
    .await
}

/// The build to serve: the most trusted one, the latest among equals.
pub fn best(records: Vec<RequestRecord>) -> Option<RequestRecord> {
    // max_by_key keeps the last of equals: the ledger lists requests oldest first.
    records
        .into_iter()
        .max_by_key(|r| served_as(r.level).map_or(0, |t| t as u8 + 1))
}

/// An output name becomes a file name under the output directory; it comes
/// from the ledger, so anything but a plain file name is refused.
fn safe_name(name: &str) -> Result<&str> {
    let plain =
        !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0']);
    if plain {
        Ok(name)
    } else {
        bail!("output name {name:?} is not a plain file name")
    }
}

async fn fetch_package(ctx: &Context, cmd: &FetchCmd) -> Result<()> {
    let [ecosystem, name, version] = [&cmd.package[0], &cmd.package[1], &cmd.package[2]];
    let package = PackageId {
        ecosystem: ecosystem.clone(),
        name: name.clone(),
        version: version.clone(),
    };
    let builds = ctx
        .verified_ledger()?
        .package_builds(&package, At::Latest)
        .await
        .with_context(|| format!("reading {package} from the ledger"))?
        .builds;
    // The gateway's rule: the most trusted build at or above the minimum,
    // with the outputs its level stands for; builds that disagree are
    // refused together.
    let view = version_view(package.version.clone(), &builds, cmd.min_trust.level());
    let chosen = match (&view.served, view.build()) {
        (Ok(_), Some(b)) => b,
        (Err(why), _) => bail!(
            "refusing {package}: {why} (--min-trust); see `pyrsia verify {} {} {}`",
            package.ecosystem,
            package.name,
            package.version
        ),
        (Ok(_), None) => bail!("{package} has no build on the ledger"),
    };
    let outputs: &[Output] = &chosen.outputs;
    std::fs::create_dir_all(&cmd.output)
        .with_context(|| format!("creating {}", cmd.output.display()))?;
    if !ctx.json {
        eprintln!(
            "{package}: build {} is {} ({} attestation(s)); fetching {} output(s)",
            chosen.request_id,
            chosen.level,
            chosen.attesters.len(),
            outputs.len()
        );
    }
    for o in outputs {
        let file: PathBuf = Path::new(&cmd.output).join(safe_name(&o.name)?);
        let layouts = chosen
            .artifact(|x| x == o)
            .map_or_else(|| vec![(o.stripe_size, o.stripe_root)], |a| a.layouts);
        let mut failures = Vec::new();
        for &(stripe_size, stripe_root) in &layouts {
            let fetched = fetch_one(
                ctx,
                cmd,
                o.sha256.to_string(),
                stripe_root.to_string(),
                Some(o.size),
                Some(stripe_size),
                file.clone(),
            )
            .await;
            match fetched {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(
                        output = %o.name,
                        %stripe_root,
                        stripe_size,
                        error = %format!("{e:#}"),
                        "attested stripe layout failed; trying the next one"
                    );
                    failures.push(format!("{stripe_root} ({stripe_size} B stripes): {e:#}"));
                }
            }
        }
        if failures.len() == layouts.len() {
            bail!(
                "fetching {}: every attested stripe layout failed: {}",
                o.name,
                failures.join("; ")
            );
        }
    }
    ctx.print(
        &serde_json::json!({
            "package": package.to_string(),
            "request_id": chosen.request_id,
            "level": chosen.level,
            "outputs": outputs,
            "dir": cmd.output,
        }),
        || format!("{package} ({}) -> {}", chosen.level, cmd.output.display()),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disputed_builds_are_never_served() {
        assert_eq!(served_as(TrustLevel::Disputed), None);
        assert!(served_as(TrustLevel::Reproducible) > served_as(TrustLevel::Trusted));
        assert!(served_as(TrustLevel::Pending) < Some(MinTrust::Trusted));
    }

    #[test]
    fn the_ledger_accepts_only_stripe_layouts_the_store_can_download() {
        use p2p_store::manifest;
        use pyrsia_chain::ledger;
        assert_eq!(ledger::MIN_STRIPE_SIZE, manifest::MIN_STRIPE_SIZE);
        assert_eq!(ledger::MAX_STRIPE_SIZE, manifest::MAX_STRIPE_SIZE);
        assert_eq!(ledger::MAX_STRIPES, manifest::MAX_STRIPES);
    }

    #[test]
    fn output_names_cannot_escape_the_directory() {
        for bad in ["", ".", "..", "../x", "a/b", "/etc/passwd", "a\\b"] {
            assert!(safe_name(bad).is_err(), "{bad:?}");
        }
        assert!(safe_name("left-pad-1.3.0.tgz").is_ok());
    }
}
