//! Path, query and header parsing of the store's control API and of the
//! gateway's front-ends (npm, PyPI, Maven, OCI, explorer), and the upstream
//! documents the gateway reads (PyPI links, POMs, OCI manifests,
//! packuments).
//!
//! An input is newline-separated fields: method, path with query, Host,
//! Authorization, Accept, Range, then the rest as a document. Invariants:
//! no panic, and the control API never lets a request reach the node with
//! a Host it must refuse or a mutating call without the token.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("tokio runtime")
    })
}

use p2p_store::api::fuzzing::{REACHED, TOKEN};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut fields = text.splitn(7, '\n');
    let mut next = || fields.next().unwrap_or_default();
    let (method, target, host, auth, accept, range) =
        (next(), next(), next(), next(), next(), next());
    let document = next();
    let empty_none = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let (host_h, auth_h) = (empty_none(host), empty_none(auth));

    let status = runtime().block_on(p2p_store::api::fuzzing::control_request(
        method,
        target,
        host_h.as_deref(),
        auth_h.as_deref(),
    ));
    if status == REACHED {
        // Reached the node: the authority (an absolute-form target's, else
        // the Host header's, as warp reads it) names it without DNS, and a
        // mutating method carries the token.
        let authority = target
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.authority().cloned())
            .or_else(|| {
                host_h
                    .as_deref()
                    .and_then(|h| h.parse::<http::uri::Authority>().ok())
            });
        let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
        assert!(
            authority.is_some_and(|a| p2p_store::api::host_allowed(a.host(), loopback)),
            "reached the node with Host {host_h:?}"
        );
        if method != "GET" {
            let given = auth_h.as_deref().unwrap_or_default().trim();
            let token = given
                .split_once(' ')
                .map(|(_, t)| t.trim())
                .unwrap_or_default();
            assert!(
                token.eq_ignore_ascii_case(TOKEN),
                "{method} reached the node without the token"
            );
        }
    }

    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    pyrsia_gateway::fuzzing::request(path, query, host, accept, range);
    pyrsia_gateway::fuzzing::documents(host, document);
});
