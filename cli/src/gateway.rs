//! `pyrsia gateway`: the registry front-ends (npm, PyPI, Maven, OCI) and the
//! explorer, over the verified ledger and the local store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use clap::Args;
use pyrsia_chain::Keypair;

use crate::fetch::MinTrust;
use crate::Context;

#[derive(Args, Debug, Clone)]
pub struct GatewayArgs {
    /// Address the registry front-ends and the explorer listen on.
    #[arg(long, default_value = pyrsia_gateway::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Control API of the local store.
    #[arg(long, env = "PYRSIA_STORE_API", default_value = crate::store_api::DEFAULT_API_URL)]
    pub store_api: String,
    /// Nothing below this level is served.
    #[arg(long, value_enum, default_value_t = MinTrust::Trusted)]
    pub min_trust: MinTrust,
    /// Where verified views and derived digests are kept (default HOME/gateway).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Seconds a verified view of a package name is served before it is read again.
    #[arg(long, default_value_t = 30)]
    pub metadata_ttl: u64,
    /// An upstream registry to import from, NAME=URL (npm, pypi, pypi-files,
    /// maven, oci); repeatable. Needs --import-key.
    #[arg(long = "upstream", value_parser = parse_upstream)]
    pub upstreams: Vec<(String, String)>,
    /// Key file of a certified trusted node: signs the imports.
    #[arg(long)]
    pub import_key: Option<PathBuf>,
    /// The largest file an import downloads, in bytes.
    #[arg(long, default_value_t = 4 << 30)]
    pub max_import_bytes: u64,
    /// A host name clients may use besides loopback ones (Host header); repeatable.
    #[arg(long = "allow-host")]
    pub allowed_hosts: Vec<String>,
}

fn parse_upstream(s: &str) -> Result<(String, String), String> {
    let (name, url) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=URL"))?;
    const NAMES: &[&str] = &["npm", "pypi", "pypi-files", "maven", "oci"];
    if !NAMES.contains(&name) {
        return Err(format!(
            "upstream {name:?} is not one of {}",
            NAMES.join(", ")
        ));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("upstream {name} URL {url:?} is not http(s)"));
    }
    Ok((name.to_owned(), url.to_owned()))
}

pub async fn run(ctx: &Context, args: GatewayArgs) -> Result<()> {
    let import_key = args
        .import_key
        .as_ref()
        .map(|p| Keypair::load(p).with_context(|| format!("loading {}", p.display())))
        .transpose()?;
    if !args.upstreams.is_empty() && import_key.is_none() {
        return Err(anyhow!(
            "--upstream needs --import-key: only a certified trusted node imports"
        ));
    }
    let config = pyrsia_gateway::Config {
        min_trust: args.min_trust.level(),
        store_token_file: crate::store_api::token_file(&ctx.home, &args.store_api, None)?,
        store_api: args.store_api.clone(),
        cache_dir: args
            .cache_dir
            .clone()
            .unwrap_or_else(|| ctx.home.join("gateway")),
        metadata_ttl: Duration::from_secs(args.metadata_ttl),
        upstreams: args.upstreams.iter().cloned().collect(),
        import_key,
        max_import_bytes: args.max_import_bytes,
        allowed_hosts: args.allowed_hosts.clone(),
    };
    let ledger = ctx.verified_ledger()?;
    let gateway = Arc::new(pyrsia_gateway::Gateway::new(config, ledger));
    let (addr, server) = gateway.bind(args.listen)?;
    tracing::info!(%addr, min_trust = ?args.min_trust, imports = !args.upstreams.is_empty(), "gateway listening");
    ctx.print(
        &serde_json::json!({"listen": addr.to_string(), "min_trust": args.min_trust}),
        || {
            format!(
                "gateway on http://{addr}: npm http://{addr}/npm/ · PyPI http://{addr}/pypi/simple/ · Maven http://{addr}/maven/ · OCI {addr} · explorer http://{addr}/"
            )
        },
    );
    tokio::select! {
        _ = server => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
