//! The network under faults: four validators, each in a network namespace of
//! its own (`testnet/netns.sh`, routed through this host, 50 ms round trips
//! from the link emulator), under a steady transaction load, while
//! validators are killed, partitioned, starved of disk, given a skewed
//! clock, or removed and added by governance. Each test checks that commits
//! stop or go on as BFT says, that no transaction a client saw accepted is
//! lost once the client resends it, and that every node holds one history
//! (the same app hash at every height). Needs root, for the namespaces.
//!
//! Asserting that nothing commits needs a window of time: it is
//! `STALL_WINDOW`, many block intervals and consensus rounds long.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use pyrsia_chain::code::{NONCE_NOT_NEXT, STALE_NONCE};
use pyrsia_chain::crypto::sign_tx;
use pyrsia_chain::{Keypair, PublicKey, TxBody, TxKind, Validators};
use pyrsia_ledger_client::rpc::{ClientError, LedgerClient};
use pyrsia_ledger_client::verified::At;
use support::validators::{signers_at, validators_at};
use support::{netns::skewed_cometbft, synthetic_request, ServicePlan, Testnet};
use tendermint_rpc::Client as _;

/// The namespaced testnets run one at a time: each is eight processes on a
/// small machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long the chain must stay still to count as halted.
const STALL_WINDOW: Duration = Duration::from_secs(8);

/// Four validators in namespaces with a 50 ms round trip between any two.
async fn four_hosts() -> Result<Testnet> {
    four_hosts_and_spares(0).await
}

/// [`four_hosts`], plus `spare` empty hosts for nodes that join later.
async fn four_hosts_and_spares(spare: usize) -> Result<Testnet> {
    let plan = ServicePlan {
        spare_hosts: spare,
        // The load opens many requests no one builds.
        params: Some(serde_json::json!({
            "max_open_per_signer": 60000,
            "max_open_per_ecosystem": 1000000,
        })),
        ..ServicePlan::default()
    };
    let net = Testnet::start_netns(4, plan)
        .await
        .context("starting 4 validators in network namespaces (needs root)")?;
    net.netns
        .as_ref()
        .context("a namespaced testnet has its namespaces")?
        .delay(25.0, 2.0, 0.0)?;
    Ok(net)
}

/// Clients sending build requests, each from its own key, to whichever
/// validator answers, as a careful client does: it resends from its last
/// committed nonce when a node refuses a gap or stops answering.
struct Load {
    stop: Arc<AtomicBool>,
    lanes: Vec<tokio::task::JoinHandle<Result<u64>>>,
}

/// How far a lane runs ahead of its committed nonce.
const WINDOW: u64 = 20;
/// Without a commit for this long, a lane resends what is not committed.
const RESEND_AFTER: Duration = Duration::from_secs(5);

impl Load {
    fn start(net: &Testnet, lanes: usize) -> Result<Load> {
        let clients: Vec<LedgerClient> = (0..net.nodes.len())
            .map(|i| net.client(i))
            .collect::<Result<_>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let lanes = (0..lanes)
            .map(|lane| {
                let clients = clients.clone();
                let stop = stop.clone();
                tokio::spawn(async move { run_lane(lane, clients, stop).await })
            })
            .collect();
        Ok(Load { stop, lanes })
    }

    /// Stops sending new transactions, waits until every one a lane sent is
    /// committed, and returns how many were.
    async fn finish(self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        for lane in self.lanes {
            total += lane.await??;
        }
        Ok(total)
    }
}

fn lane_tx(key: &Keypair, chain_id: &str, lane: usize, nonce: u64) -> Result<Vec<u8>> {
    let kind = TxKind::RequestBuild(synthetic_request(lane * 1_000_000 + nonce as usize, "npm"));
    Ok(borsh::to_vec(&sign_tx(
        key,
        chain_id,
        TxBody { nonce, kind },
    ))?)
}

/// Returns the number of transactions committed once `stop` is set and all
/// that were sent are in blocks.
async fn run_lane(lane: usize, clients: Vec<LedgerClient>, stop: Arc<AtomicBool>) -> Result<u64> {
    let key = Keypair::from_seed([100 + lane as u8; 32]);
    let signer = key.public();
    let mut node = lane % clients.len();
    let mut chain_id = None;
    // The highest nonce sent, and the last time the committed one moved.
    let (mut sent, mut committed, mut moved) = (0u64, 0u64, Instant::now());
    let mut final_nonce = None;
    let mut deadline = None;
    loop {
        let client = &clients[node];
        let next = match client.next_nonce(&signer).await {
            Ok(next) => next,
            Err(_) => {
                node = (node + 1) % clients.len();
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if next - 1 > committed {
            committed = next - 1;
            moved = Instant::now();
        }
        if stop.load(Ordering::Relaxed) && final_nonce.is_none() {
            final_nonce = Some(sent);
            deadline = Some(Instant::now() + Duration::from_secs(120));
        }
        if let Some(last) = final_nonce {
            if committed >= last {
                return Ok(committed);
            }
            if deadline.is_some_and(|d| Instant::now() > d) {
                bail!(
                    "lane {lane}: only nonces up to {committed} of {last} committed within 120 s"
                );
            }
        }
        if moved.elapsed() > RESEND_AFTER && sent > committed {
            // What was sent beyond the committed nonce may have left every
            // mempool (a killed node's, or a full one's): send it again.
            sent = committed;
            moved = Instant::now();
        }
        let cap = final_nonce.unwrap_or(u64::MAX).min(committed + WINDOW);
        if sent >= cap {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let chain = match &chain_id {
            Some(c) => c,
            None => match client.chain_id().await {
                Ok(c) => chain_id.insert(c),
                Err(_) => continue,
            },
        };
        let nonce = sent.max(committed) + 1;
        match client
            .broadcast_bytes(lane_tx(&key, chain, lane, nonce)?)
            .await
        {
            Ok(_) => sent = nonce,
            // This node's mempool lacks an earlier nonce, or it was just
            // committed: start again from the committed one.
            Err(ClientError::Rejected { code, .. })
                if code == NONCE_NOT_NEXT || code == STALE_NONCE =>
            {
                sent = committed;
                node = (node + 1) % clients.len();
            }
            Err(ClientError::Rejected { code, log }) => {
                bail!("lane {lane}: nonce {nonce} refused by CheckTx (code {code}): {log}")
            }
            // The node is down, or already holds it: try another.
            Err(_) => node = (node + 1) % clients.len(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn height(net: &Testnet, i: usize) -> Result<u64> {
    Ok(net.client(i)?.latest_height().await?)
}

/// Waits until each of `nodes` is at `target` or beyond.
async fn wait_heights(net: &Testnet, nodes: &[usize], target: u64, within: Duration) -> Result<()> {
    for &i in nodes {
        net.client(i)?
            .wait_height(target, within)
            .await
            .with_context(|| format!("node {i} reaching height {target}"))?;
    }
    Ok(())
}

/// Asserts that `nodes` stay at one height for `STALL_WINDOW`; returns it.
async fn assert_halted(net: &Testnet, nodes: &[usize]) -> Result<u64> {
    // A height in flight when the fault began may still complete.
    let settle = Instant::now() + Duration::from_secs(30);
    let mut before = max_height(net, nodes).await?;
    loop {
        tokio::time::sleep(STALL_WINDOW).await;
        let after = max_height(net, nodes).await?;
        if after == before {
            return Ok(after);
        }
        if Instant::now() > settle {
            bail!("nodes {nodes:?} still commit: height {before} became {after}");
        }
        before = after;
    }
}

async fn max_height(net: &Testnet, nodes: &[usize]) -> Result<u64> {
    let mut max = 0;
    for &i in nodes {
        max = max.max(height(net, i).await?);
    }
    Ok(max)
}

/// Ends the load, then checks that every node holds the same history.
async fn settle(net: &Testnet, load: Load) -> Result<u64> {
    let committed = load.finish().await?;
    net.assert_one_history().await?;
    Ok(committed)
}

#[tokio::test(flavor = "multi_thread")]
async fn one_of_four_killed_the_chain_commits_and_it_catches_up() -> Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut net = four_hosts().await?;
    let load = Load::start(&net, 4)?;
    let start = height(&net, 0).await?;
    wait_heights(&net, &[0], start + 3, Duration::from_secs(60)).await?;

    net.stop_validator(3)?;
    let down_at = max_height(&net, &[0, 1, 2]).await?;
    // Three of four hold more than two thirds of the power.
    wait_heights(&net, &[0, 1, 2], down_at + 10, Duration::from_secs(120)).await?;

    net.start_abci(3)?;
    net.start_cometbft(3)?;
    let now = max_height(&net, &[0, 1, 2]).await?;
    wait_heights(&net, &[3], now, Duration::from_secs(120)).await?;
    let committed = settle(&net, load).await?;
    assert!(committed > 0, "the load committed nothing");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_of_four_killed_nothing_commits_nor_forks_until_one_returns() -> Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut net = four_hosts().await?;
    let load = Load::start(&net, 4)?;
    let start = height(&net, 0).await?;
    wait_heights(&net, &[0], start + 3, Duration::from_secs(60)).await?;

    net.stop_validator(2)?;
    net.stop_validator(3)?;
    let halted = assert_halted(&net, &[0, 1]).await?;

    net.start_abci(2)?;
    net.start_cometbft(2)?;
    wait_heights(&net, &[0, 1, 2], halted + 5, Duration::from_secs(120)).await?;

    net.start_abci(3)?;
    net.start_cometbft(3)?;
    settle(&net, load).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_two_partition_halts_both_sides_and_heals_into_one_history() -> Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let net = four_hosts().await?;
    let load = Load::start(&net, 4)?;
    let start = height(&net, 0).await?;
    wait_heights(&net, &[0], start + 3, Duration::from_secs(60)).await?;

    let netns = net.netns.as_ref().context("namespaced")?;
    netns.partition(&[0, 1], &[2, 3])?;
    let left = assert_halted(&net, &[0, 1]).await?;
    let right = assert_halted(&net, &[2, 3]).await?;

    netns.heal()?;
    wait_heights(
        &net,
        &[0, 1, 2, 3],
        left.max(right) + 5,
        Duration::from_secs(180),
    )
    .await?;
    settle(&net, load).await?;
    Ok(())
}

/// A filesystem of `bytes` mounted over a directory, its contents moved in;
/// unmounted on drop.
struct SmallDisk {
    dir: std::path::PathBuf,
}

impl SmallDisk {
    fn mount_over(dir: &std::path::Path, bytes: u64) -> Result<SmallDisk> {
        let aside = dir.with_extension("before-mount");
        std::fs::rename(dir, &aside)?;
        std::fs::create_dir(dir)?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .status()?;
        if !status.success() {
            bail!("mounting a tmpfs over {} (needs root)", dir.display());
        }
        let disk = SmallDisk {
            dir: dir.to_owned(),
        };
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(aside.join("."))
            .arg(dir)
            .status()?;
        if !status.success() {
            bail!("copying {} onto the small disk", aside.display());
        }
        std::fs::remove_dir_all(&aside)?;
        Ok(disk)
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> Result<()> {
        use std::io::Write as _;
        let mut f = std::fs::File::create(self.dir.join("filler"))?;
        let chunk = vec![0u8; 1 << 20];
        loop {
            if let Err(e) = f.write_all(&chunk) {
                if e.kind() == std::io::ErrorKind::StorageFull {
                    return Ok(());
                }
                return Err(e.into());
            }
        }
    }

    fn free(&self) -> Result<()> {
        Ok(std::fs::remove_file(self.dir.join("filler"))?)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

fn mentions_full_disk(net: &Testnet, i: usize) -> bool {
    ["abci.log", "cometbft.log"].iter().any(|log| {
        std::fs::read_to_string(net.nodes[i].home.join(log))
            .unwrap_or_default()
            .to_lowercase()
            .contains("no space left on device")
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_stops_one_validator_cleanly_and_it_catches_up_once_freed() -> Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut net = four_hosts().await?;
    let load = Load::start(&net, 4)?;
    net.stop_validator(3)?;
    let disk = SmallDisk::mount_over(&net.nodes[3].home.join("data"), 256 << 20)?;
    net.start_abci(3)?;
    net.start_cometbft(3)?;
    let now = max_height(&net, &[0, 1, 2]).await?;
    wait_heights(&net, &[3], now + 2, Duration::from_secs(120)).await?;

    disk.fill()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !mentions_full_disk(&net, 3) {
        if Instant::now() > deadline {
            bail!("node 3 logged no full-disk error within 120 s of its disk filling");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stuck = height(&net, 3).await.unwrap_or(0);
    // The others go on without it.
    wait_heights(&net, &[0, 1, 2], stuck + 10, Duration::from_secs(120)).await?;
    if let Ok(h) = height(&net, 3).await {
        assert!(
            h <= stuck + 1,
            "node 3 went on committing on a full disk: {stuck} -> {h}"
        );
    }

    net.stop_validator(3)?;
    disk.free()?;
    net.start_abci(3)?;
    net.start_cometbft(3)?;
    let now = max_height(&net, &[0, 1, 2]).await?;
    wait_heights(&net, &[3], now, Duration::from_secs(120)).await?;
    settle(&net, load).await?;
    Ok(())
}

/// Node `i`'s validator address, as commits name it.
fn validator_address(net: &Testnet, i: usize) -> Result<Vec<u8>> {
    Ok(pyrsia_genesis::validator_address(
        &net.nodes[i].home.join("config/priv_validator_key.json"),
    )?)
}

/// How far node `i`'s vote timestamps are from the time of the block they
/// commit, in seconds, in the commits of heights `first..=last` that hold
/// its vote.
async fn vote_offsets(net: &Testnet, i: usize, first: u64, last: u64) -> Result<Vec<f64>> {
    let address = validator_address(net, i)?;
    let http = tendermint_rpc::HttpClient::new(net.nodes[0].rpc_url.as_str())?;
    let mut offsets = Vec::new();
    for h in first..=last {
        let commit = http.commit(tendermint::block::Height::try_from(h)?).await?;
        let block_time = commit.signed_header.header.time;
        for sig in &commit.signed_header.commit.signatures {
            if let tendermint::block::CommitSig::BlockIdFlagCommit {
                validator_address,
                timestamp,
                ..
            } = sig
            {
                if validator_address.as_bytes() == address.as_slice() {
                    let nanos =
                        timestamp.unix_timestamp_nanos() - block_time.unix_timestamp_nanos();
                    offsets.push(nanos as f64 / 1e9);
                }
            }
        }
    }
    Ok(offsets)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_validator_thirty_seconds_off_neither_stops_the_chain_nor_moves_block_time() -> Result<()>
{
    let _turn = ONE_AT_A_TIME.lock().await;
    let skewed = skewed_cometbft()?;
    let mut net = four_hosts().await?;
    let load = Load::start(&net, 4)?;
    for skew in [30.0, -30.0] {
        net.stop_validator(3)?;
        let mut cmd = net.on_host(3, skewed.clone());
        cmd.env("PYRSIA_CLOCK_SKEW", format!("{skew}s"));
        net.start_abci(3)?;
        net.start_cometbft_from(3, cmd)?;
        let from = max_height(&net, &[0, 1, 2]).await?;
        wait_heights(&net, &[0, 1, 2, 3], from + 10, Duration::from_secs(120)).await?;

        // Node 3 votes (once it has caught up), with its clock's time. A
        // clock behind is clamped by BFT time's rule: a vote is at least 1 ms
        // after the block it is for.
        let deadline = Instant::now() + Duration::from_secs(120);
        let (offsets, last) = loop {
            let last = height(&net, 0).await?;
            let offsets = vote_offsets(&net, 3, from + 2, last).await?;
            if offsets.len() >= 3 {
                break (offsets, last);
            }
            if Instant::now() > deadline {
                bail!(
                    "node 3 signed {} of blocks {}..={last}",
                    offsets.len(),
                    from + 2
                );
            }
            net.client(0)?
                .wait_height(last + 1, Duration::from_secs(30))
                .await?;
        };
        let skewed_votes = offsets
            .iter()
            .filter(|&&o| {
                if skew > 0.0 {
                    (o - skew).abs() < 5.0
                } else {
                    (o - 0.001).abs() < 0.0005
                }
            })
            .count();
        assert!(
            skewed_votes == offsets.len(),
            "node 3's votes do not show its clock {skew} s off: offsets {offsets:?}"
        );
        // ...but the block time, the power-weighted median of the votes,
        // stays with the others' clocks.
        let block_time = net.client(0)?.block_time(last).await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs_f64();
        assert!(
            (now - block_time).abs() < 10.0,
            "block {last}'s time is {:.1} s from the host's clock with node 3 {skew} s off",
            block_time - now
        );
    }
    settle(&net, load).await?;
    Ok(())
}

/// Creates a node of the chain on spare host `host` with `pyrsia node init`,
/// peered with every validator, its RPC open to this host, and starts it.
/// Returns its index and what `node init` printed.
fn join_on_host(net: &mut Testnet, host: usize) -> Result<(usize, serde_json::Value)> {
    let netns = net.netns.as_ref().context("namespaced")?;
    let addr = netns.host(host);
    let peers = (0..net.nodes.len())
        .map(|i| {
            let id = pyrsia_genesis::node_id(&net.nodes[i].home)?;
            Ok(format!("{id}@{}:26656", netns.host(i)))
        })
        .collect::<Result<Vec<_>>>()?
        .join(",");
    let home = net.dir.path().join(format!("node{host}"));
    let joined = Testnet::pyrsia_bare_json(&[
        "--home",
        &home.to_string_lossy(),
        "node",
        "init",
        "--genesis",
        &net.genesis().to_string_lossy(),
        "--peer",
        &peers,
        "--external-address",
        &format!("{addr}:26656"),
        "--timeout-commit",
        "300ms",
        "--cometbft",
        &support::cometbft().to_string_lossy(),
    ])?;
    // RPC stays on the node's own loopback by default; the test reads it
    // from outside the namespace.
    let config = home.join("config/config.toml");
    let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(&config)?.parse()?;
    doc["rpc"]["laddr"] = toml_edit::value(format!("tcp://{addr}:26657"));
    std::fs::write(&config, doc.to_string())?;
    let i = net.add_node(home, format!("http://{addr}:26657"))?;
    Ok((i, joined))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_validator_added_and_one_removed_by_governance_under_load_and_a_light_client_follows(
) -> Result<()> {
    const WAIT: Duration = Duration::from_secs(120);
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut net = four_hosts_and_spares(1).await?;
    let load = Load::start(&net, 4)?;
    let rpc0 = net.nodes[0].rpc_url.clone();
    let light_dir = tempfile::tempdir()?;
    let mut light = net.verified_via(&rpc0, light_dir.path(), Duration::from_secs(60))?;
    light.snapshot(At::Latest).await?;

    // A fifth host joins and block-syncs.
    let (new, joined) = join_on_host(&mut net, 4)?;
    let key_new: PublicKey = joined["validator"]["pub_key"]
        .as_str()
        .context("node init prints the validator key")?
        .parse()?;
    let addr_new = pyrsia_genesis::validator_keys(&net.nodes[new].home)?.address;
    let now = height(&net, 0).await?;
    wait_heights(&net, &[new], now, WAIT).await?;

    // The board removes node 3, which keeps running.
    let addr3 = pyrsia_genesis::validator_keys(&net.nodes[3].home)?.address;
    let removed_at = net.set_validator(&net.nodes[3].home, 0)?["height"]
        .as_u64()
        .context("set-validator prints its height")?;
    let gone = net
        .first_height(0, removed_at, WAIT, "node 3 out of /validators", |h| {
            Ok(!validators_at(&rpc0, h)?.contains(&addr3))
        })
        .await?;
    assert_eq!(gone, removed_at + 2, "CometBFT applies updates at H+2");
    wait_heights(&net, &[0], gone + 4, WAIT).await?;
    for h in gone..gone + 3 {
        let signers = signers_at(&rpc0, h)?;
        assert!(!signers.contains(&addr3), "removed node 3 signed {h}");
    }
    // Its votes no longer count: with node 1 down, nodes 0, 2 and 3 would
    // hold three quarters of the old set's power, but hold only two thirds
    // of the new one's, and nothing commits.
    net.stop_validator(1)?;
    let halted = assert_halted(&net, &[0, 2, 3]).await?;
    net.start_abci(1)?;
    net.start_cometbft(1)?;
    wait_heights(&net, &[0, 1, 2], halted + 3, WAIT).await?;

    // The board adds the new node: it signs, and its vote counts: with
    // node 2 down, nodes 0, 1 and it hold three quarters of the power.
    let added_at = net.set_validator(&net.nodes[new].home, 10)?["height"]
        .as_u64()
        .context("set-validator prints its height")?;
    let member = net
        .first_height(0, added_at, WAIT, "the new node in /validators", |h| {
            Ok(validators_at(&rpc0, h)?.contains(&addr_new))
        })
        .await?;
    assert_eq!(member, added_at + 2, "CometBFT applies updates at H+2");
    net.first_height(0, member, WAIT, "the new node signs a commit", |h| {
        Ok(signers_at(&rpc0, h)?.contains(&addr_new))
    })
    .await?;
    net.stop_validator(2)?;
    let down_at = max_height(&net, &[0, 1, new]).await?;
    wait_heights(&net, &[0, 1, new], down_at + 5, WAIT).await?;
    net.start_abci(2)?;
    net.start_cometbft(2)?;
    let committed = settle(&net, load).await?;
    assert!(committed > 0, "the load committed nothing");

    // The light client anchored at genesis follows across both changes; so
    // does a fresh one through the new node.
    let top = height(&net, 0).await?;
    for (name, ledger) in [
        ("the genesis-anchored light client", &mut light),
        (
            "a fresh light client via the new node",
            &mut net.verified_via(
                &net.nodes[new].rpc_url,
                &net.dir.path().join("light-new"),
                Duration::from_secs(60),
            )?,
        ),
    ] {
        let snapshot = ledger.snapshot(At::Latest).await?;
        assert!(snapshot.height >= top, "{name} is at {}", snapshot.height);
        let set: Validators = ledger
            .get_decoded(&snapshot, "validators")
            .await?
            .context("the ledger holds the validator set")?;
        assert_eq!(set.power_of(&key_new), Some(10), "{name}");
        assert_eq!(set.validators.len(), 4, "{name}");
    }
    Ok(())
}
