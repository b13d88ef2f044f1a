//! What the command-line front-ends share (no argument parser here: the
//! `pyrsia-store` binary and its clap arguments are the `pyrsia-store-cli`
//! crate, `p2p_store/cli/`).

use std::path::{Path, PathBuf};

use crate::api::ApiError;

/// Parses `123`, `4k`, `4KiB`, `10M`, `2G`, `1T` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        u => return Err(format!("unknown size unit {u:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} overflows"))
}

/// A stripe size: a [`parse_size`] the manifest accepts (4K..16M).
pub fn parse_stripe(s: &str) -> Result<u32, String> {
    let v = parse_size(s)?;
    let v = u32::try_from(v).map_err(|_| format!("stripe size {s:?} too large"))?;
    crate::manifest::check_stripe_size(v).map_err(|e| e.to_string())?;
    Ok(v)
}

/// The store directory used when none is given: `$PYRSIA_STORE_DIR`, else
/// `$HOME/.pyrsia/store` (the default node home's own store).
pub fn default_store_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PYRSIA_STORE_DIR") {
        return PathBuf::from(d);
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".pyrsia")
        .join("store")
}

/// The token file a client uses: `explicit` (a `--token-file` or
/// `PYRSIA_STORE_TOKEN_FILE`), else the default store's token file when
/// there is one, else none (mutating calls then get 401).
pub fn client_token_file(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    let p = crate::api::token_path(&default_store_dir());
    p.exists().then_some(p)
}

/// The token of [`client_token_file`], read (and checked) now.
pub fn client_token(explicit: Option<&Path>) -> Result<Option<String>, ApiError> {
    client_token_file(explicit)
        .map(|p| crate::api::read_token(&p))
        .transpose()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10").unwrap(), 10);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999999T").is_err());
        assert!(parse_stripe("1k").is_err());
        assert_eq!(parse_stripe("1M").unwrap(), 1 << 20);
    }
}
