//! Validators on separate hosts, simulated: each in a network namespace of
//! its own, routed through this host (`testnet/netns.sh`), with the link
//! emulator's latency between them when asked. Needs root.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context as _, Result};

use super::repo_root;

/// A set of namespaces; deleted, with whatever still runs inside, on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    subnet: String,
}

fn script() -> PathBuf {
    repo_root().join("testnet").join("netns.sh")
}

fn netns_sh(args: &[&str]) -> Result<String> {
    let out = Command::new(script())
        .args(args)
        .output()
        .with_context(|| format!("running testnet/netns.sh {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "testnet/netns.sh {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl Netns {
    /// `hosts` namespaces, no latency yet.
    pub fn up(hosts: usize) -> Result<Netns> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t{:05x}{}",
            std::process::id() & 0xf_ffff,
            NEXT.fetch_add(1, Ordering::Relaxed) % 10
        );
        // A leftover of a killed run of the same name goes first.
        netns_sh(&["down", &name])?;
        let subnet = netns_sh(&["subnet", &name])?;
        let net = Netns { name, subnet };
        netns_sh(&["up", &net.name, &hosts.to_string()])?;
        Ok(net)
    }

    /// Host `i`'s address.
    #[allow(clippy::expect_used)] // netns.sh prints a dotted /24 prefix
    pub fn host(&self, i: usize) -> IpAddr {
        format!("{}.{}", self.subnet, i + 1)
            .parse()
            .expect("netns.sh subnet is an IPv4 /24 prefix")
    }

    /// `program` to be run in host `i`'s namespace.
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &format!("{}-v{i}", self.name)])
            .arg(program);
        cmd
    }

    /// Every packet between two hosts is delayed by `delay_ms` ± `jitter_ms`
    /// one way, and `loss_pct` percent are dropped.
    pub fn delay(&self, delay_ms: f64, jitter_ms: f64, loss_pct: f64) -> Result<()> {
        let linkem = super::pyrsia_bin().with_file_name("pyrsia-linkem");
        if !linkem.exists() {
            bail!(
                "{} is missing: build it with `cargo build -p pyrsia-linkem`",
                linkem.display()
            );
        }
        netns_sh(&[
            "delay",
            &self.name,
            &linkem.to_string_lossy(),
            &delay_ms.to_string(),
            &jitter_ms.to_string(),
            &loss_pct.to_string(),
        ])?;
        Ok(())
    }

    /// Drops all traffic between the hosts of `a` and those of `b`.
    pub fn partition(&self, a: &[usize], b: &[usize]) -> Result<()> {
        let list = |s: &[usize]| {
            s.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        netns_sh(&["partition", &self.name, &list(a), &list(b)])?;
        Ok(())
    }

    pub fn heal(&self) -> Result<()> {
        netns_sh(&["heal", &self.name])?;
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = netns_sh(&["down", &self.name]) {
            eprintln!("{e:#}");
        }
    }
}
