//! The stores and builders a node runs beside its validator, declared in
//! `HOME/config/services.toml`. `pyrsia node start` supervises them all;
//! `pyrsia node service NAME` runs one, so an operator (or a test) can run,
//! stop and restart each on its own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::Context;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Services {
    #[serde(default, rename = "store")]
    pub stores: Vec<StoreService>,
    #[serde(default, rename = "builder")]
    pub builders: Vec<BuilderService>,
    #[serde(default, rename = "gateway")]
    pub gateways: Vec<GatewayService>,
}

/// A gateway: registry front-ends over a store. Paths are relative to the
/// node home.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GatewayService {
    pub name: String,
    pub listen: String,
    /// The store it serves from (and imports into).
    pub store: String,
    #[serde(default = "default_min_trust")]
    pub min_trust: crate::fetch::MinTrust,
    pub cache_dir: PathBuf,
    /// Seconds a verified view of a package name is served before it is read again.
    #[serde(default = "default_metadata_ttl")]
    pub metadata_ttl: u64,
    /// A certified trusted node's key file: with `upstreams`, it imports.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Registries to import from, NAME = URL.
    #[serde(default)]
    pub upstreams: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

fn default_min_trust() -> crate::fetch::MinTrust {
    crate::fetch::MinTrust::Trusted
}

fn default_metadata_ttl() -> u64 {
    30
}

/// A store sidecar. Paths are relative to the node home.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoreService {
    pub name: String,
    pub dir: PathBuf,
    pub listen: String,
    pub api: String,
    /// Name of the store this one bootstraps from (its peer id is read from
    /// that store's ready file).
    #[serde(default)]
    pub bootstrap: Option<String>,
    #[serde(default = "default_quota")]
    pub quota: String,
    /// Upload cap per second (e.g. "20M"); unlimited when absent.
    #[serde(default)]
    pub upload_rate: Option<String>,
    #[serde(default = "default_max_uploads")]
    pub max_uploads: usize,
    /// Same-LAN discovery; off in the embedded devnet, whose stores bootstrap.
    #[serde(default)]
    pub mdns: bool,
    /// Established inbound libp2p connections (default 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_inbound_connections: Option<u32>,
    /// Established libp2p connections with one peer (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_peer: Option<u32>,
    /// Kademlia provider records kept for other peers (default 65 536).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_provider_records: Option<usize>,
}

fn default_quota() -> String {
    "10G".to_owned()
}

fn default_max_uploads() -> usize {
    16
}

/// A builder and the store it uploads to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BuilderService {
    pub name: String,
    pub key_file: PathBuf,
    pub store: String,
    pub work_dir: PathBuf,
    #[serde(default)]
    pub ecosystems: Vec<String>,
    /// Seconds one build may take.
    #[serde(default = "default_build_timeout")]
    pub build_timeout: u64,
    #[serde(default = "default_max_builds")]
    pub max_builds: usize,
    #[serde(default = "default_build_memory")]
    pub build_memory: String,
    #[serde(default = "default_build_disk")]
    pub build_disk: String,
    /// Registries the dependency step may fetch from, NAME = URL.
    #[serde(default)]
    pub upstreams: std::collections::BTreeMap<String, String>,
}

fn default_build_timeout() -> u64 {
    900
}

fn default_max_builds() -> usize {
    1
}

fn default_build_memory() -> String {
    "4G".to_owned()
}

fn default_build_disk() -> String {
    "8G".to_owned()
}

fn size(key: &str, text: &str) -> Result<u64> {
    p2p_store::cli::parse_size(text).map_err(|e| anyhow!("{key} = {text:?}: {e}"))
}

/// Ports of the embedded services: store `i` listens on `libp2p_base + i`
/// and serves its API on `api_base + i`; store 0 is the node's own.
#[derive(Clone, Copy, Debug)]
pub struct ServicePorts {
    pub libp2p_base: u16,
    pub api_base: u16,
    /// The node's gateway.
    pub gateway: std::net::SocketAddr,
}

impl Default for ServicePorts {
    fn default() -> Self {
        ServicePorts {
            libp2p_base: 44000,
            api_base: 7889,
            gateway: std::net::SocketAddr::from(([127, 0, 0, 1], 7888)),
        }
    }
}

impl Services {
    pub fn path(home: &Path) -> PathBuf {
        home.join("config").join("services.toml")
    }

    pub fn load(home: &Path) -> Result<Services> {
        let path = Self::path(home);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml_edit::de::from_str(&text)
                .with_context(|| format!("reading {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Services::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self, home: &Path) -> Result<()> {
        let path = Self::path(home);
        let text = toml_edit::ser::to_string_pretty(self)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// The node's own store plus, for each builder key, a builder with its
    /// own store. `builder_keys` are (name, key file relative to home).
    pub fn embedded(ports: ServicePorts, builder_keys: &[(String, PathBuf)]) -> Services {
        let store = |i: u16, name: &str, dir: PathBuf, bootstrap: Option<String>| StoreService {
            name: name.to_owned(),
            dir,
            listen: format!("/ip4/127.0.0.1/tcp/{}", ports.libp2p_base + i),
            api: format!("127.0.0.1:{}", ports.api_base + i),
            bootstrap,
            quota: default_quota(),
            upload_rate: None,
            max_uploads: default_max_uploads(),
            mdns: false,
            max_inbound_connections: None,
            max_connections_per_peer: None,
            max_provider_records: None,
        };
        let mut stores = vec![store(0, "node", PathBuf::from("store"), None)];
        let mut builders = Vec::new();
        for (i, (name, key_file)) in builder_keys.iter().enumerate() {
            let dir = PathBuf::from("builders").join(name);
            let port = u16::try_from(i + 1).unwrap_or(u16::MAX);
            stores.push(store(
                port,
                name,
                dir.join("store"),
                Some("node".to_owned()),
            ));
            builders.push(BuilderService {
                name: name.clone(),
                key_file: key_file.clone(),
                store: name.clone(),
                work_dir: dir.join("work"),
                ecosystems: Vec::new(),
                build_timeout: default_build_timeout(),
                max_builds: default_max_builds(),
                build_memory: default_build_memory(),
                build_disk: default_build_disk(),
                upstreams: Default::default(),
            });
        }
        let gateways = vec![GatewayService {
            name: "main".to_owned(),
            listen: ports.gateway.to_string(),
            store: "node".to_owned(),
            min_trust: default_min_trust(),
            cache_dir: PathBuf::from("gateway"),
            metadata_ttl: default_metadata_ttl(),
            key_file: None,
            upstreams: Default::default(),
            allowed_hosts: Vec::new(),
        }];
        Services {
            stores,
            builders,
            gateways,
        }
    }

    pub fn store(&self, name: &str) -> Result<&StoreService> {
        self.stores
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| anyhow!("no store named {name:?} in services.toml"))
    }

    /// Every service name, stores first: the order to start them in.
    pub fn names(&self) -> Vec<String> {
        self.stores
            .iter()
            .map(|s| format!("store:{}", s.name))
            .chain(self.builders.iter().map(|b| format!("builder:{}", b.name)))
            .chain(self.gateways.iter().map(|g| format!("gateway:{}", g.name)))
            .collect()
    }
}

impl StoreService {
    fn ready_file(&self, home: &Path) -> PathBuf {
        home.join(&self.dir).join("ready.json")
    }

    pub fn api_url(&self) -> String {
        format!("http://{}", self.api)
    }
}

#[derive(Args, Debug)]
pub struct ServiceArgs {
    /// `store:NAME`, `builder:NAME` or `gateway:NAME`, as in HOME/config/services.toml.
    pub name: String,
}

/// Runs one service in this process until Ctrl-C / SIGTERM.
pub async fn run_service(ctx: &Context, args: ServiceArgs) -> Result<()> {
    let services = Services::load(&ctx.home)?;
    let home = &ctx.home;
    match args.name.split_once(':') {
        Some(("store", name)) => {
            let s = services.store(name)?;
            let mut bootstrap = Vec::new();
            if let Some(from) = &s.bootstrap {
                bootstrap.push(bootstrap_addr(home, services.store(from)?).await?);
            }
            let ready = s.ready_file(home);
            let _ = std::fs::remove_file(&ready);
            let conns = p2p_store::ConnectionLimits::default();
            let providers = p2p_store::ProviderLimits::default();
            let start = store_cli::StartArgs {
                data_dir: Some(home.join(&s.dir)),
                listen: vec![s.listen.parse().context("store listen address")?],
                api: s.api.parse().context("store api address")?,
                bootstrap,
                quota: size("quota", &s.quota)?,
                upload_rate: s
                    .upload_rate
                    .as_deref()
                    .map(|r| size("upload_rate", r))
                    .transpose()?,
                max_uploads: s.max_uploads,
                stripe_size: 1 << 20,
                inflight_per_peer: 4,
                no_mdns: !s.mdns,
                ready_file: Some(ready),
                api_token_file: None,
                partial_ttl: p2p_store::store::DEFAULT_PARTIAL_TTL.as_secs(),
                max_inbound_connections: s.max_inbound_connections.unwrap_or(conns.max_inbound),
                max_pending_connections: conns.max_pending_inbound,
                max_connections_per_peer: s.max_connections_per_peer.unwrap_or(conns.max_per_peer),
                max_provider_records: s.max_provider_records.unwrap_or(providers.max_records),
                max_providers_per_key: providers.max_per_key,
                max_provider_records_per_peer: providers.max_per_peer,
            };
            start.run().await
        }
        Some(("builder", name)) => {
            let b = services
                .builders
                .iter()
                .find(|b| b.name == name)
                .ok_or_else(|| anyhow!("no builder named {name:?} in services.toml"))?;
            let store = services.store(&b.store)?;
            let args = crate::builder::BuilderArgs {
                key: crate::keys::KeyArgs {
                    key: "default".to_owned(),
                    key_file: Some(home.join(&b.key_file)),
                },
                store_api: store.api_url(),
                ecosystems: b.ecosystems.clone(),
                work_dir: Some(home.join(&b.work_dir)),
                max_builds: b.max_builds,
                build_timeout: b.build_timeout,
                build_memory: size("build_memory", &b.build_memory)?,
                build_disk: size("build_disk", &b.build_disk)?,
                upstreams: b
                    .upstreams
                    .iter()
                    .map(|(name, url)| builder::Upstream {
                        name: name.clone(),
                        url: url.clone(),
                    })
                    .collect(),
            };
            crate::builder::run(ctx, args).await
        }
        Some(("gateway", name)) => {
            let g = services
                .gateways
                .iter()
                .find(|g| g.name == name)
                .ok_or_else(|| anyhow!("no gateway named {name:?} in services.toml"))?;
            let args = crate::gateway::GatewayArgs {
                listen: g.listen.parse().context("gateway listen address")?,
                store_api: services.store(&g.store)?.api_url(),
                min_trust: g.min_trust,
                cache_dir: Some(home.join(&g.cache_dir)),
                metadata_ttl: g.metadata_ttl,
                upstreams: g.upstreams.clone().into_iter().collect(),
                import_key: g.key_file.as_ref().map(|k| home.join(k)),
                max_import_bytes: 4 << 30,
                allowed_hosts: g.allowed_hosts.clone(),
            };
            crate::gateway::run(ctx, args).await
        }
        _ => bail!(
            "service {:?} is not store:NAME, builder:NAME or gateway:NAME (known: {})",
            args.name,
            services.names().join(", ")
        ),
    }
}

/// `/ip4/…/tcp/…/p2p/PEER` of a store, once it has written its ready file.
async fn bootstrap_addr(home: &Path, s: &StoreService) -> Result<libp2p::Multiaddr> {
    let ready = s.ready_file(home);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let peer_id = loop {
        if let Ok(bytes) = std::fs::read(&ready) {
            let v: serde_json::Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", ready.display()))?;
            if let Some(p) = v["peer_id"].as_str() {
                break p.to_owned();
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "store {:?} did not become ready ({} missing)",
                s.name,
                ready.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    format!("{}/p2p/{peer_id}", s.listen)
        .parse()
        .with_context(|| format!("bootstrap address of store {:?}", s.name))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_embedded_layout_survives_a_round_trip_through_services_toml() {
        let keys = [(
            "regular0".to_owned(),
            PathBuf::from("builders/regular0/key.json"),
        )];
        let services = Services::embedded(ServicePorts::default(), &keys);
        let text = toml_edit::ser::to_string_pretty(&services).unwrap();
        let back: Services = toml_edit::de::from_str(&text).unwrap();
        assert_eq!(
            back.names(),
            [
                "store:node",
                "store:regular0",
                "builder:regular0",
                "gateway:main"
            ]
        );
        assert_eq!(back.store("regular0").unwrap().api, "127.0.0.1:7890");
        assert_eq!(
            back.store("regular0").unwrap().bootstrap.as_deref(),
            Some("node")
        );
    }

    #[test]
    fn omitted_limits_take_their_defaults_and_bad_sizes_are_named() {
        let text = r#"
[[builder]]
name = "b"
key_file = "k.json"
store = "s"
work_dir = "w"
build_memory = "lots"
"#;
        let services: Services = toml_edit::de::from_str(text).unwrap();
        let b = &services.builders[0];
        assert_eq!((b.build_timeout, b.max_builds), (900, 1));
        assert_eq!(size("build_disk", &b.build_disk).unwrap(), 8 << 30);
        let err = size("build_memory", &b.build_memory)
            .unwrap_err()
            .to_string();
        assert!(err.contains("build_memory = \"lots\""), "{err}");
    }
}
