//! Creates Pyrsia chains: one CometBFT home per validator (distinct ports on
//! one host), a shared `genesis.json` whose `app_state` is the ledger's
//! [`GenesisState`], and a `pyrsia.toml` per home naming its ports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use pyrsia_chain::{Board, GenesisState, GenesisTrustedNode, Params};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use toml_edit::{value, DocumentMut};

#[derive(Debug, thiserror::Error)]
pub enum GenesisError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("running {command}: {reason}")]
    Cometbft { command: String, reason: String },
    #[error("{path}: {reason}")]
    Format { path: String, reason: String },
    #[error("invalid network spec: {0}")]
    Spec(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> GenesisError + '_ {
    move |source| GenesisError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn format_err(path: &Path, reason: impl ToString) -> GenesisError {
    GenesisError::Format {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// What chain to create.
#[derive(Clone, Debug)]
pub struct NetworkSpec {
    pub chain_id: String,
    /// Without `hosts`, node `i` listens on 127.0.0.1, p2p `base_port +
    /// 10 i`, RPC `+1`, ABCI `+2`. With them, every node uses p2p
    /// `base_port`, RPC `+1` and ABCI `+2` on its own host.
    pub base_port: u16,
    /// Node `i`'s address as the others reach it, one per node, when each
    /// runs on a host (or network namespace) of its own. Empty: one host.
    pub hosts: Vec<std::net::IpAddr>,
    pub board: Board,
    pub trusted_nodes: Vec<GenesisTrustedNode>,
    /// Builder keys the board admits at genesis.
    pub builders: Vec<pyrsia_chain::PublicKey>,
    pub params: Params,
    /// CometBFT's `consensus.timeout_commit`, e.g. `"1s"`.
    pub timeout_commit: String,
    pub cometbft: PathBuf,
}

/// The per-home settings the `pyrsia` binary reads (`config/pyrsia.toml`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    pub chain_id: String,
    pub moniker: String,
    /// Where the ABCI app listens and CometBFT connects.
    pub abci_addr: String,
    /// CometBFT RPC, as clients reach it.
    pub rpc_url: String,
    pub p2p_port: u16,
}

impl NodeConfig {
    pub fn path(home: &Path) -> PathBuf {
        home.join("config").join("pyrsia.toml")
    }

    pub fn load(home: &Path) -> Result<NodeConfig, GenesisError> {
        let path = Self::path(home);
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        toml_edit::de::from_str(&text).map_err(|e| format_err(&path, e))
    }

    fn save(&self, home: &Path) -> Result<(), GenesisError> {
        let path = Self::path(home);
        let text = toml_edit::ser::to_string_pretty(self).map_err(|e| format_err(&path, e))?;
        std::fs::write(&path, text).map_err(io_err(&path))
    }
}

#[derive(Clone, Debug)]
pub struct NodeHome {
    pub home: PathBuf,
    /// Where the other nodes reach it.
    pub host: IpAddr,
    pub node_id: String,
    pub config: NodeConfig,
}

fn run_cometbft(cometbft: &Path, args: &[&str]) -> Result<String, GenesisError> {
    let command = format!("{} {}", cometbft.display(), args.join(" "));
    let out = Command::new(cometbft)
        .args(args)
        .output()
        .map_err(|e| GenesisError::Cometbft {
            command: command.clone(),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(GenesisError::Cometbft {
            command,
            reason: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn read_json(path: &Path) -> Result<serde_json::Value, GenesisError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(|e| format_err(path, e))
}

/// A validator's beacon (VRF) key, beside CometBFT's keys in HOME/config.
pub const BEACON_KEY_FILE: &str = "beacon_key.json";

/// The validator address in CometBFT's `priv_validator_key.json`.
pub fn validator_address(path: &Path) -> Result<Vec<u8>, GenesisError> {
    let json = read_json(path)?;
    let address = json["address"]
        .as_str()
        .ok_or_else(|| format_err(path, "no address"))?;
    hex::decode(address).map_err(|e| format_err(path, e))
}

/// The node id CometBFT derives from `node_key.json`: hex of the first 20
/// bytes of SHA-256 of the ed25519 public key.
pub fn node_id(home: &Path) -> Result<String, GenesisError> {
    let path = home.join("config").join("node_key.json");
    let json = read_json(&path)?;
    let key = json["priv_key"]["value"]
        .as_str()
        .ok_or_else(|| format_err(&path, "no priv_key.value"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|e| format_err(&path, e))?;
    let public = bytes
        .get(32..64)
        .ok_or_else(|| format_err(&path, "priv_key is not 64 bytes"))?;
    Ok(hex::encode(&Sha256::digest(public)[..20]))
}

fn set_config(home: &Path, edit: impl FnOnce(&mut DocumentMut)) -> Result<(), GenesisError> {
    let path = home.join("config").join("config.toml");
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let mut doc: DocumentMut = text.parse().map_err(|e| format_err(&path, e))?;
    edit(&mut doc);
    std::fs::write(&path, doc.to_string()).map_err(io_err(&path))
}

/// Creates one validator home per path in `homes` (node `i` in `homes[i]`).
/// Refuses to touch a directory that already holds a node.
pub fn create_network(
    homes_at: &[PathBuf],
    spec: &NetworkSpec,
) -> Result<Vec<NodeHome>, GenesisError> {
    if homes_at.is_empty() {
        return Err(GenesisError::Spec("at least one validator".into()));
    }
    if spec.board.threshold == 0 || usize::from(spec.board.threshold) > spec.board.keys.len() {
        return Err(GenesisError::Spec(format!(
            "board threshold {} with {} board keys",
            spec.board.threshold,
            spec.board.keys.len()
        )));
    }
    if !spec.hosts.is_empty() && spec.hosts.len() != homes_at.len() {
        return Err(GenesisError::Spec(format!(
            "{} hosts for {} validators",
            spec.hosts.len(),
            homes_at.len()
        )));
    }
    let max_port = u32::from(spec.base_port) + 10 * homes_at.len() as u32;
    if max_port > u32::from(u16::MAX) {
        return Err(GenesisError::Spec("ports beyond 65535".into()));
    }
    let mut homes = Vec::new();
    let mut validators = Vec::new();
    let mut beacon_keys = Vec::new();
    for (i, home) in homes_at.iter().enumerate() {
        let home = home.clone();
        if home.join("config").join("genesis.json").exists() {
            return Err(GenesisError::Spec(format!(
                "{} already holds a node",
                home.display()
            )));
        }
        let home_str = home.display().to_string();
        run_cometbft(&spec.cometbft, &["init", "--home", &home_str])?;
        let key_path = home.join("config").join("priv_validator_key.json");
        let key = read_json(&key_path)?;
        let beacon = pyrsia_chain::beacon::BeaconKey::generate();
        let beacon_path = home.join("config").join(BEACON_KEY_FILE);
        beacon
            .save(&beacon_path)
            .map_err(|e| format_err(&beacon_path, e))?;
        beacon_keys.push(pyrsia_chain::GenesisBeaconKey {
            validator: key["address"]
                .as_str()
                .ok_or_else(|| format_err(&key_path, "no address"))?
                .to_owned(),
            vrf_public: hex::encode(beacon.public()),
        });
        validators.push(serde_json::json!({
            "address": key["address"],
            "pub_key": key["pub_key"],
            "power": "10",
            "name": format!("node{i}"),
        }));
        let (host, port) = match spec.hosts.get(i) {
            Some(host) => (*host, spec.base_port),
            None => (LOCALHOST, spec.base_port + 10 * i as u16),
        };
        homes.push(NodeHome {
            node_id: node_id(&home)?,
            config: NodeConfig {
                chain_id: spec.chain_id.clone(),
                moniker: format!("node{i}"),
                abci_addr: format!("127.0.0.1:{}", port + 2),
                rpc_url: format!("http://{}", SocketAddr::new(host, port + 1)),
                p2p_port: port,
            },
            host,
            home,
        });
    }

    let template_path = homes[0].home.join("config").join("genesis.json");
    let mut genesis = read_json(&template_path)?;
    let app_state = GenesisState {
        params: spec.params.clone(),
        board: spec.board.clone(),
        trusted_nodes: spec.trusted_nodes.clone(),
        builders: spec.builders.clone(),
        beacon_keys,
    };
    genesis["chain_id"] = spec.chain_id.clone().into();
    genesis["initial_height"] = "1".into();
    genesis["validators"] = validators.into();
    genesis["app_state"] =
        serde_json::to_value(&app_state).map_err(|e| format_err(&template_path, e))?;
    let genesis_text =
        serde_json::to_string_pretty(&genesis).map_err(|e| format_err(&template_path, e))?;

    for (i, node) in homes.iter().enumerate() {
        let path = node.home.join("config").join("genesis.json");
        std::fs::write(&path, &genesis_text).map_err(io_err(&path))?;
        let peers: Vec<String> = homes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| {
                format!(
                    "{}@{}",
                    p.node_id,
                    SocketAddr::new(p.host, p.config.p2p_port)
                )
            })
            .collect();
        // On a host of its own, a node listens on every interface, and tells
        // its peers the address they reach it at.
        let (listen, external) = if spec.hosts.is_empty() {
            (LOCALHOST, None)
        } else {
            (
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                Some(SocketAddr::new(node.host, node.config.p2p_port).to_string()),
            )
        };
        configure_home(
            &node.home,
            &node.config,
            &peers,
            &spec.timeout_commit,
            Listen {
                p2p: listen.to_string(),
                rpc: listen,
                external,
            },
        )?;
        node.config.save(&node.home)?;
    }
    Ok(homes)
}

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Where a node listens, and the p2p address it advertises.
struct Listen {
    p2p: String,
    rpc: IpAddr,
    external: Option<String>,
}
/// Writes a home's `config.toml`: its ports, peers and the settings every
/// Pyrsia node shares.
fn configure_home(
    home: &Path,
    cfg: &NodeConfig,
    peers: &[String],
    timeout_commit: &str,
    listen: Listen,
) -> Result<(), GenesisError> {
    set_config(home, |doc| {
        doc["moniker"] = value(cfg.moniker.clone());
        doc["proxy_app"] = value(format!("tcp://{}", cfg.abci_addr));
        doc["rpc"]["laddr"] = value(format!(
            "tcp://{}",
            SocketAddr::new(listen.rpc, cfg.p2p_port + 1)
        ));
        doc["p2p"]["laddr"] = value(format!("tcp://{}:{}", listen.p2p, cfg.p2p_port));
        if let Some(external) = &listen.external {
            doc["p2p"]["external_address"] = value(external.clone());
        }
        doc["p2p"]["persistent_peers"] = value(peers.join(","));
        doc["p2p"]["allow_duplicate_ip"] = value(true);
        doc["p2p"]["addr_book_strict"] = value(false);
        doc["consensus"]["timeout_commit"] = value(timeout_commit.to_owned());
        doc["instrumentation"]["prometheus"] = value(false);
        // Builders and clients follow blocks over the websocket.
        doc["rpc"]["max_subscription_clients"] = value(200);
        doc["rpc"]["timeout_broadcast_tx_commit"] = value("30s");
        // A transaction held back behind a gap in its signer's nonces
        // (docs/protocol.md) leaves the mempool after this many blocks.
        doc["mempool"]["ttl_num_blocks"] = value(MEMPOOL_TTL_BLOCKS);
    })
}

/// A node joining a running chain.
#[derive(Clone, Debug)]
pub struct JoinSpec {
    /// The chain's `genesis.json`, copied unchanged.
    pub genesis: PathBuf,
    /// `NODE_ID@HOST:PORT` of nodes already on the chain.
    pub peers: Vec<String>,
    pub moniker: String,
    /// p2p on `base_port`, RPC on `+1`, ABCI on `+2`.
    pub base_port: u16,
    /// The address p2p listens on (`0.0.0.0` on a real host); RPC and ABCI
    /// stay on 127.0.0.1.
    pub p2p_host: String,
    /// `p2p.external_address` to advertise, if any (`HOST:PORT`).
    pub external_address: Option<String>,
    pub timeout_commit: String,
    pub cometbft: PathBuf,
}

/// The public keys a validator is known by: its consensus key (and the
/// address CometBFT derives from it) and its beacon key, if the home has one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ValidatorKeys {
    /// Hex, as in `priv_validator_key.json`.
    pub address: String,
    pub pub_key: pyrsia_chain::PublicKey,
    pub vrf_public: Option<pyrsia_chain::VrfPublic>,
}

/// The public halves of HOME's validator key and beacon key.
pub fn validator_keys(home: &Path) -> Result<ValidatorKeys, GenesisError> {
    let path = home.join("config").join("priv_validator_key.json");
    let json = read_json(&path)?;
    let address = json["address"]
        .as_str()
        .ok_or_else(|| format_err(&path, "no address"))?
        .to_owned();
    if json["pub_key"]["type"].as_str() != Some("tendermint/PubKeyEd25519") {
        return Err(format_err(&path, "pub_key is not an ed25519 key"));
    }
    let value = json["pub_key"]["value"]
        .as_str()
        .ok_or_else(|| format_err(&path, "no pub_key.value"))?;
    let bytes: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|e| format_err(&path, e))?
        .try_into()
        .map_err(|_| format_err(&path, "pub_key is not 32 bytes"))?;
    let beacon = home.join("config").join(BEACON_KEY_FILE);
    let vrf_public = if beacon.exists() {
        let json = read_json(&beacon)?;
        let public = json["public"]
            .as_str()
            .ok_or_else(|| format_err(&beacon, "no \"public\""))?;
        Some(public.parse().map_err(|e| format_err(&beacon, e))?)
    } else {
        None
    };
    Ok(ValidatorKeys {
        address,
        pub_key: pyrsia_chain::PublicKey(bytes),
        vrf_public,
    })
}

/// The peers a home dials (`p2p.persistent_peers`) and its own p2p port.
pub fn home_peers(home: &Path) -> Result<(Vec<String>, String), GenesisError> {
    let path = home.join("config").join("config.toml");
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let doc: DocumentMut = text.parse().map_err(|e| format_err(&path, e))?;
    let peers = doc["p2p"]["persistent_peers"]
        .as_str()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    let timeout_commit = doc["consensus"]["timeout_commit"]
        .as_str()
        .unwrap_or("1s")
        .to_owned();
    Ok((peers, timeout_commit))
}

/// Creates a full-node home for a running chain: CometBFT's keys, a
/// beacon key, the chain's genesis unchanged, and the given peers. The node
/// block-syncs from its peers when started; it becomes a validator only when
/// governance adds its key (`GovAction::SetValidator`).
pub fn join_network(home: &Path, spec: &JoinSpec) -> Result<NodeHome, GenesisError> {
    if home.join("config").join("genesis.json").exists() {
        return Err(GenesisError::Spec(format!(
            "{} already holds a node",
            home.display()
        )));
    }
    if spec.peers.is_empty() {
        return Err(GenesisError::Spec(
            "at least one peer (NODE_ID@HOST:PORT) to sync from".into(),
        ));
    }
    if let Some(bad) = spec.peers.iter().find(|p| {
        p.split_once('@')
            .is_none_or(|(id, addr)| id.len() != 40 || !addr.contains(':'))
    }) {
        return Err(GenesisError::Spec(format!(
            "peer {bad:?} is not NODE_ID@HOST:PORT"
        )));
    }
    if u32::from(spec.base_port) + 2 > u32::from(u16::MAX) {
        return Err(GenesisError::Spec("ports beyond 65535".into()));
    }
    let genesis_text = std::fs::read_to_string(&spec.genesis).map_err(io_err(&spec.genesis))?;
    let genesis: serde_json::Value =
        serde_json::from_str(&genesis_text).map_err(|e| format_err(&spec.genesis, e))?;
    let chain_id = genesis["chain_id"]
        .as_str()
        .ok_or_else(|| format_err(&spec.genesis, "no chain_id"))?
        .to_owned();
    serde_json::from_value::<GenesisState>(genesis["app_state"].clone())
        .map_err(|e| format_err(&spec.genesis, format!("app_state: {e}")))?;
    run_cometbft(
        &spec.cometbft,
        &["init", "--home", &home.display().to_string()],
    )?;
    let path = home.join("config").join("genesis.json");
    std::fs::write(&path, &genesis_text).map_err(io_err(&path))?;
    let beacon = pyrsia_chain::beacon::BeaconKey::generate();
    let beacon_path = home.join("config").join(BEACON_KEY_FILE);
    beacon
        .save(&beacon_path)
        .map_err(|e| format_err(&beacon_path, e))?;
    let port = spec.base_port;
    let config = NodeConfig {
        chain_id,
        moniker: spec.moniker.clone(),
        abci_addr: format!("127.0.0.1:{}", port + 2),
        rpc_url: format!("http://127.0.0.1:{}", port + 1),
        p2p_port: port,
    };
    configure_home(
        home,
        &config,
        &spec.peers,
        &spec.timeout_commit,
        Listen {
            p2p: spec.p2p_host.clone(),
            rpc: LOCALHOST,
            external: spec.external_address.clone(),
        },
    )?;
    config.save(home)?;
    let host = spec
        .external_address
        .as_deref()
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .map_or(LOCALHOST, |a| a.ip());
    Ok(NodeHome {
        home: home.to_owned(),
        host,
        node_id: node_id(home)?,
        config,
    })
}

/// CometBFT's `mempool.ttl_num_blocks` in every validator's config.
pub const MEMPOOL_TTL_BLOCKS: i64 = 600;

/// Default validity of a certification: about half a year (183 days).
pub const CERTIFICATION_SECONDS: u64 = 183 * 24 * 3600;
