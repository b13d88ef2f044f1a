//! Which store sidecar a builder or a client talks to, and with which API
//! token ([`token_file`]). The calls themselves are the typed client of
//! [`pyrsia_ledger_client::store`].

use std::path::{Path, PathBuf};

use anyhow::Result;
use pyrsia_ledger_client::store::StoreClient;
pub use pyrsia_ledger_client::store::DEFAULT_API_URL;

/// Environment variable naming a store's API token file.
pub const TOKEN_FILE_ENV: &str = "PYRSIA_STORE_TOKEN_FILE";

/// The API token file of the store at `base`: `explicit` (a `--token-file`
/// flag), else `$PYRSIA_STORE_TOKEN_FILE`, else the token file of the store
/// that `HOME/config/services.toml` declares with that API address
/// (`<dir>/api-token`, `dir` relative to the home), else none.
pub fn token_file(home: &Path, base: &str, explicit: Option<&Path>) -> Result<Option<PathBuf>> {
    if let Some(p) = explicit {
        return Ok(Some(p.to_path_buf()));
    }
    if let Some(p) = std::env::var_os(TOKEN_FILE_ENV).filter(|p| !p.is_empty()) {
        return Ok(Some(PathBuf::from(p)));
    }
    let services = crate::services::Services::load(home)?;
    Ok(services
        .stores
        .iter()
        .find(|s| same_api(&s.api, base))
        .map(|s| p2p_store::api::token_path(&home.join(&s.dir))))
}

/// Whether a `services.toml` API address (`HOST:PORT`) and a URL name the
/// same local endpoint (loopback names count as one).
fn same_api(declared: &str, url: &str) -> bool {
    let authority = |s: &str| -> Option<(String, u16)> {
        let s = s.trim();
        let s = s
            .strip_prefix("http://")
            .or_else(|| s.strip_prefix("https://"))
            .unwrap_or(s);
        let s = s.split('/').next()?;
        let (host, port) = s.rsplit_once(':')?;
        let host = host
            .trim_matches(|c| c == '[' || c == ']')
            .to_ascii_lowercase();
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        let host = if loopback {
            "loopback".to_owned()
        } else {
            host
        };
        Some((host, port.parse().ok()?))
    };
    matches!((authority(declared), authority(url)), (Some(a), Some(b)) if a == b)
}

/// A client of the store at `base` with the token file [`token_file`]
/// finds for it (none found: a client that can only read).
pub fn for_home(home: &Path, base: &str, explicit: Option<&Path>) -> Result<StoreClient> {
    let client = StoreClient::new(base);
    Ok(match token_file(home, base, explicit)? {
        Some(path) => client.with_token_file(path),
        None => client,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_url_matches_the_store_declared_with_its_address() {
        assert!(same_api("127.0.0.1:7889", "http://127.0.0.1:7889"));
        assert!(same_api("127.0.0.1:7889", "http://localhost:7889/"));
        assert!(same_api("127.0.0.1:7889", "http://[::1]:7889"));
        assert!(!same_api("127.0.0.1:7889", "http://127.0.0.1:7890"));
        assert!(!same_api("127.0.0.1:7889", "http://10.0.0.2:7889"));
        assert!(same_api("10.0.0.2:7889", "http://10.0.0.2:7889"));
        assert!(!same_api("127.0.0.1:7889", "nonsense"));
    }

    #[test]
    fn the_token_file_is_the_flag_else_the_declared_stores() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join("config")).unwrap();
        std::fs::write(
            home.path().join("config/services.toml"),
            "[[store]]\nname = \"node\"\ndir = \"store\"\nlisten = \"/ip4/127.0.0.1/tcp/44000\"\napi = \"127.0.0.1:7889\"\n\n[[store]]\nname = \"b\"\ndir = \"builders/b/store\"\nlisten = \"/ip4/127.0.0.1/tcp/44001\"\napi = \"127.0.0.1:7890\"\n",
        )
        .unwrap();
        let flag = Path::new("/elsewhere/api-token");
        // The environment is the process's: only assert what it cannot change.
        assert_eq!(
            token_file(home.path(), "http://127.0.0.1:7890", Some(flag)).unwrap(),
            Some(flag.to_path_buf())
        );
        if std::env::var_os(TOKEN_FILE_ENV).is_none() {
            assert_eq!(
                token_file(home.path(), "http://127.0.0.1:7890", None).unwrap(),
                Some(home.path().join("builders/b/store/api-token"))
            );
            assert_eq!(
                token_file(home.path(), "http://localhost:7889", None).unwrap(),
                Some(home.path().join("store/api-token"))
            );
            assert_eq!(
                token_file(home.path(), "http://127.0.0.1:9999", None).unwrap(),
                None
            );
        }
    }
}
