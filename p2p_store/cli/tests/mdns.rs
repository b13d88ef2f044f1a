#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Same-LAN discovery by mDNS, with no bootstrap peer at all.
//!
//! libp2p's mDNS ignores loopback interfaces, so two nodes on 127.0.0.1 can
//! never find each other this way. The test builds its own LAN instead: two
//! network namespaces joined by a veth pair (10.231.0.0/24, multicast on),
//! one `pyrsia-store` process in each (`ip netns exec`). Nothing leaves
//! those namespaces; a Drop guard kills the processes and deletes the
//! namespaces (which destroys the veth pair), also when an assertion fails.
//! Needs root and iproute2; without them the test fails with the reason.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{eventually, make_file};

const EXE: &str = env!("CARGO_BIN_EXE_pyrsia-store");

/// Two namespaces `<tag>a`/`<tag>b` joined by `veth0` ↔ `veth0`.
struct Lan {
    ns: Vec<String>,
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in &self.ns {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` (iproute2 installed?): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

impl Lan {
    /// Creates the namespaces and the link. Panics with the reason when the
    /// environment cannot (not root, no iproute2, no netns support): this
    /// test must not pass by skipping.
    fn create() -> Lan {
        let tag = format!("pyrsia-mdns-{}", std::process::id());
        let mut lan = Lan { ns: Vec::new() };
        let r = (|| {
            for side in ["a", "b"] {
                let ns = format!("{tag}{side}");
                // A stale namespace of a crashed run with this pid.
                let _ = Command::new("ip")
                    .args(["netns", "del", &ns])
                    .stderr(Stdio::null())
                    .status();
                ip(&["netns", "add", &ns])?;
                lan.ns.push(ns.clone());
                ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            }
            let (a, b) = (lan.ns[0].clone(), lan.ns[1].clone());
            // Both ends are created directly inside the namespaces: nothing
            // appears in the host's namespace.
            ip(&[
                "link", "add", "veth0", "netns", &a, "type", "veth", "peer", "name", "veth0",
                "netns", &b,
            ])?;
            for (ns, addr) in [(&a, "10.231.0.1/24"), (&b, "10.231.0.2/24")] {
                ip(&["-n", ns, "addr", "add", addr, "dev", "veth0"])?;
                ip(&["-n", ns, "link", "set", "veth0", "multicast", "on", "up"])?;
            }
            Ok::<(), String>(())
        })();
        if let Err(e) = r {
            panic!(
                "the mDNS test needs its own network namespaces (root, iproute2, \
                 `ip netns` and veth support) and could not create them: {e}"
            );
        }
        lan
    }
}

/// A `pyrsia-store start` inside a namespace.
struct Proc {
    child: Child,
    ns: String,
    peer_id: String,
    api: String,
    token_file: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn in_ns(ns: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, EXE]);
    c.env("RUST_LOG", "warn");
    c
}

async fn spawn_store(
    ns: &str,
    dir: &Path,
    listen: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Proc {
    std::fs::create_dir_all(dir).unwrap();
    let ready = dir.join("ready.json");
    let child = in_ns(ns)
        .envs(env.iter().copied())
        // No --bootstrap: the nodes know nothing of each other.
        .args(["start", "--listen", listen, "--api", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.join("store"))
        .arg("--ready-file")
        .arg(&ready)
        .args(extra)
        .env("RUST_LOG", "info,libp2p_mdns=debug,libp2p_swarm=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let mut p = Proc {
        child,
        ns: ns.to_string(),
        peer_id: String::new(),
        api: String::new(),
        token_file: String::new(),
    };
    eventually(
        Duration::from_secs(60),
        &format!("pyrsia-store in {ns} to be ready"),
        || {
            if let Some(st) = p.child.try_wait().unwrap() {
                panic!("pyrsia-store in {ns} exited before it was ready: {st}");
            }
            let ready = ready.exists();
            async move { ready.then_some(()).ok_or("no ready file") }
        },
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&ready).unwrap()).unwrap();
    p.peer_id = v["peer_id"].as_str().unwrap().to_string();
    p.api = v["api"].as_str().unwrap().to_string();
    p.token_file = v["api_token_file"].as_str().unwrap().to_string();
    p
}

/// Runs a client subcommand of the binary inside the node's namespace
/// (its control API listens on the namespace's own 127.0.0.1).
fn client(p: &Proc, args: &[&str]) -> Output {
    in_ns(&p.ns)
        .args(args)
        .args(["--api", &p.api, "--token-file", &p.token_file])
        .output()
        .unwrap()
}

fn json_ok(out: &Output, what: &str) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {:?}", out.stdout))
}

fn status(p: &Proc) -> serde_json::Value {
    json_ok(&client(p, &["--json", "status"]), "status")
}

fn connected_peers(p: &Proc) -> Vec<String> {
    status(p)["connected_peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect()
}

/// Who each of two stores is connected to, while waiting for them to find
/// each other; its `Debug` (printed only if they never do) adds the tail of
/// both logs.
struct Strangers {
    a_sees: Vec<String>,
    b_sees: Vec<String>,
    logs: [PathBuf; 2],
}

impl std::fmt::Debug for Strangers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "A sees {:?}, B sees {:?}", self.a_sees, self.b_sees)?;
        for (who, path) in ["A", "B"].iter().zip(&self.logs) {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            writeln!(f, "--- {who}'s log ---")?;
            writeln!(f, "{}", lines[lines.len().saturating_sub(40)..].join("\n"))?;
        }
        Ok(())
    }
}

/// Waits until `a` and `b` are connected to each other; returns the wait.
async fn wait_found(a: &Proc, b: &Proc, logs: [PathBuf; 2], secs: u64) -> Duration {
    let t = Instant::now();
    eventually(
        Duration::from_secs(secs),
        "B and A to find each other by mDNS",
        || {
            let (a_sees, b_sees) = (connected_peers(a), connected_peers(b));
            let found = b_sees.contains(&a.peer_id) && a_sees.contains(&b.peer_id);
            let logs = logs.clone();
            async move {
                if found {
                    Ok(())
                } else {
                    Err(Strangers {
                        a_sees,
                        b_sees,
                        logs,
                    })
                }
            }
        },
    )
    .await;
    t.elapsed()
}

fn work_dir() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().to_path_buf();
    (t, p)
}

#[tokio::test]
async fn same_lan_peers_find_each_other_by_mdns_without_bootstrap_and_no_mdns_turns_it_off() {
    let lan = Lan::create();
    let (a_ns, b_ns) = (lan.ns[0].as_str(), lan.ns[1].as_str());
    let (_tmp, dir) = work_dir();

    // mDNS off on both sides (one by flag, one by environment): they must
    // stay strangers. They start first and stay up while an mDNS-on pair
    // on the same LAN finds each other (below): that pair's discovery is
    // the window in which these two would have met.
    let quiet_a = spawn_store(
        a_ns,
        &dir.join("quiet-a"),
        "/ip4/10.231.0.1/tcp/44001",
        &["--no-mdns"],
        &[],
    )
    .await;
    let quiet_b = spawn_store(
        b_ns,
        &dir.join("quiet-b"),
        "/ip4/10.231.0.2/tcp/44001",
        &[],
        &[("PYRSIA_STORE_NO_MDNS", "1")],
    )
    .await;
    assert_eq!(status(&quiet_a)["mdns"], false, "--no-mdns left mDNS on");
    assert_eq!(
        status(&quiet_b)["mdns"],
        false,
        "PYRSIA_STORE_NO_MDNS=1 left mDNS on"
    );

    // mDNS on (the default), no bootstrap, no dial: B must find A and fetch
    // what was put on A.
    let a = spawn_store(a_ns, &dir.join("a"), "/ip4/10.231.0.1/tcp/44000", &[], &[]).await;
    assert_eq!(status(&a)["mdns"], true, "mDNS is not on by default");
    let file = dir.join("artifact");
    make_file(&file, 3 * 1024 * 1024 + 12345, 7);
    let put = json_ok(
        &client(
            &a,
            &[
                "--json",
                "put",
                file.to_str().unwrap(),
                "--stripe-size",
                "1M",
            ],
        ),
        "put on A",
    );
    let b = spawn_store(b_ns, &dir.join("b"), "/ip4/10.231.0.2/tcp/44000", &[], &[]).await;
    let logs = [dir.join("a/stderr.log"), dir.join("b/stderr.log")];
    let took = wait_found(&a, &b, logs, 30).await;
    let (quiet_a_sees, quiet_b_sees) = (connected_peers(&quiet_a), connected_peers(&quiet_b));
    assert!(
        quiet_a_sees.is_empty() && quiet_b_sees.is_empty(),
        "nodes started with mDNS off and no bootstrap found peers while an \
         mDNS pair found each other in {took:?}: {quiet_a_sees:?}, {quiet_b_sees:?}"
    );
    assert!(
        !connected_peers(&a).contains(&quiet_a.peer_id)
            && !connected_peers(&b).contains(&quiet_b.peer_id),
        "an mDNS node found a node started with mDNS off"
    );
    drop((quiet_a, quiet_b));
    eprintln!("mDNS discovery took {took:?}");

    let out = dir.join("fetched");
    let res = json_ok(
        &client(
            &b,
            &[
                "--json",
                "fetch",
                "--sha256",
                put["sha256"].as_str().unwrap(),
                "--stripe-root",
                put["stripe_root"].as_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
            ],
        ),
        "fetch on B",
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&file).unwrap(),
        "fetched bytes differ"
    );
    assert_eq!(res["stripes_total"], 4);
    assert_eq!(res["stripes_fetched"], 4);
    assert!(
        res["per_peer"].get(&a.peer_id).is_some(),
        "stripes did not come from A: {res}"
    );
    drop((a, b));
    drop(lan);
}
