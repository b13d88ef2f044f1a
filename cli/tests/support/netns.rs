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

/// The CometBFT version `scripts/setup.sh` installs.
const COMETBFT_VERSION: &str = "v0.38.25";

/// A build of the pinned CometBFT whose wall clock (`types/time.Now`, which
/// stamps votes and proposals) runs `PYRSIA_CLOCK_SKEW` (a Go duration,
/// e.g. `30s` or `-30s`) off the host's. Real clocks in network namespaces
/// cannot differ, and Go reads the clock without libc, so the skew is built
/// into a copy of CometBFT's source; nothing else of it changes.
pub fn skewed_cometbft() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("pyrsia-cometbft-skewed-{COMETBFT_VERSION}"));
    let bin = dir.join("cometbft");
    if bin.exists() {
        return Ok(bin);
    }
    let modcache = Command::new("go").args(["env", "GOMODCACHE"]).output()?;
    let module = PathBuf::from(String::from_utf8_lossy(&modcache.stdout).trim())
        .join(format!("github.com/cometbft/cometbft@{COMETBFT_VERSION}"));
    let source = dir.join("src");
    let _ = std::fs::remove_dir_all(&source);
    std::fs::create_dir_all(&dir)?;
    run(Command::new("cp").arg("-r").arg(&module).arg(&source))
        .with_context(|| format!("copying {} (scripts/setup.sh fetches it)", module.display()))?;
    run(Command::new("chmod").arg("-R").arg("u+w").arg(&source))?;
    let file = source.join("types/time/time.go");
    let original = std::fs::read_to_string(&file)?;
    let now = "return Canonical(time.Now())";
    if !original.contains(now) {
        bail!("{} no longer has `{now}`", file.display());
    }
    let patched = original
        .replace(now, "return Canonical(time.Now().Add(pyrsiaClockSkew))")
        .replacen("import (", "import (\n\t\"os\"", 1)
        + r#"
var pyrsiaClockSkew = func() time.Duration {
	d, err := time.ParseDuration(os.Getenv("PYRSIA_CLOCK_SKEW"))
	if err != nil {
		return 0
	}
	return d
}()
"#;
    std::fs::write(&file, patched)?;
    run(Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg("./cmd/cometbft")
        .current_dir(&source)
        .env("GOFLAGS", "-mod=mod"))
    .context("building the skewed cometbft")?;
    std::fs::remove_dir_all(&source)?;
    Ok(bin)
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("{:?}: {}", cmd, String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
