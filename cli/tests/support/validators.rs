//! The validator set as CometBFT reports it, and the board's
//! `gov set-validator`, for tests that change the set.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::Testnet;

fn rpc_get(url: &str) -> Result<serde_json::Value> {
    let text = ureq::get(url)
        .call()
        .with_context(|| format!("GET {url}"))?
        .into_string()?;
    serde_json::from_str(&text).with_context(|| format!("GET {url}: not JSON"))
}

fn addresses(json: &serde_json::Value, list: &str, field: &str) -> Result<Vec<String>> {
    let Some(entries) = json.pointer(list).and_then(|v| v.as_array()) else {
        bail!("no {list} in {json}");
    };
    Ok(entries
        .iter()
        .filter_map(|v| v[field].as_str())
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect())
}

/// The addresses (upper-case hex) of the validator set at `height`.
pub fn validators_at(rpc: &str, height: u64) -> Result<Vec<String>> {
    let json = rpc_get(&format!("{rpc}/validators?height={height}&per_page=100"))?;
    addresses(&json, "/result/validators", "address")
}

/// The addresses whose signatures the commit of `height` carries.
pub fn signers_at(rpc: &str, height: u64) -> Result<Vec<String>> {
    let json = rpc_get(&format!("{rpc}/commit?height={height}"))?;
    addresses(
        &json,
        "/result/signed_header/commit/signatures",
        "validator_address",
    )
}

/// The voting power of validator `address` at `height`, if it is in the set.
pub fn power_at(rpc: &str, height: u64, address: &str) -> Result<Option<u64>> {
    let json = rpc_get(&format!("{rpc}/validators?height={height}&per_page=100"))?;
    let Some(set) = json
        .pointer("/result/validators")
        .and_then(|v| v.as_array())
    else {
        bail!("no validators in {json}");
    };
    set.iter()
        .find(|v| v["address"] == address)
        .map(|v| {
            v["voting_power"]
                .as_str()
                .and_then(|p| p.parse().ok())
                .with_context(|| format!("voting power of {v}"))
        })
        .transpose()
}

impl Testnet {
    /// Follows node `i` block by block from `from` until `pred(height)`
    /// holds for a committed height, within `within`; returns that height.
    pub async fn first_height(
        &self,
        i: usize,
        from: u64,
        within: Duration,
        what: &str,
        mut pred: impl FnMut(u64) -> Result<bool>,
    ) -> Result<u64> {
        let client = self.client(i)?;
        let deadline = Instant::now() + within;
        let mut h = from;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // The commit of `h` is final once `h + 1` exists.
            client
                .wait_height(h + 1, left)
                .await
                .with_context(|| format!("no height from {from} on: {what}"))?;
            if pred(h)? {
                return Ok(h);
            }
            h += 1;
        }
    }

    /// The board (members 0 and 1) sets the power of the validator whose
    /// home is `home`; 0 removes it. Returns the command's JSON output.
    pub fn set_validator(&self, home: &Path, power: u64) -> Result<serde_json::Value> {
        let (b0, b1) = (self.board_key(0), self.board_key(1));
        self.pyrsia_json(&[
            "gov",
            "set-validator",
            "--validator-home",
            &home.to_string_lossy(),
            "--power",
            &power.to_string(),
            "--board-key",
            &b0.to_string_lossy(),
            "--board-key",
            &b1.to_string_lossy(),
        ])
    }
}
