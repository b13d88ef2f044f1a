//! The explorer: server-rendered pages over the same verified reads the
//! front-ends use. `/` shows the chain, its validators and recent requests;
//! `/-/package/ECO/NAME` a package's versions, builds and attesters;
//! `/-/search?q=` finds a name or an artifact digest; `/-/proof/KEY` is the
//! proof of any ledger key, checked against a verified header.

use std::fmt::Write as _;

use hyper::StatusCode;
use pyrsia_chain::{state_key, ArtifactRecord, AttesterRole, Digest, RequestRecord, TrustLevel};
use serde_json::json;
use warp::reply::Response;

use crate::catalog::{level_outputs, NameView};
use crate::http::{self, esc};
use crate::{Gateway, Req};

const RECENT_SHOWN: usize = 30;
const ECOSYSTEMS: &[&str] = &["npm", "python", "maven", "oci", "cargo"];

const STYLE: &str = "body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}\
header{background:#1d2330;color:#fff;padding:.8em 1.5em;display:flex;gap:2em;align-items:center}\
header a{color:#fff;text-decoration:none;font-weight:600}main{padding:1em 1.5em;max-width:70em}\
table{border-collapse:collapse;width:100%;background:#fff;margin:.5em 0 1.5em}\
td,th{border-bottom:1px solid #e3e6ea;padding:.35em .6em;text-align:left;vertical-align:top}\
th{background:#eef0f3;font-weight:600}code{font-size:13px;word-break:break-all}\
.badge{display:inline-block;padding:.05em .55em;border-radius:.8em;font-size:13px;font-weight:600;color:#fff}\
.reproducible{background:#1a7f37}.trusted{background:#0969da}.quorum_only{background:#9a6700}\
.pending{background:#6e7781}.disputed{background:#cf222e}.dissent{color:#cf222e;font-weight:600}\
form input{padding:.3em .5em;width:22em}";

fn page(title: &str, body: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t} · Pyrsia</title>\
<meta name=\"viewport\" content=\"width=device-width\"><style>{STYLE}</style></head><body>\
<header><a href=\"/\">Pyrsia explorer</a><form action=\"/-/search\"><input name=\"q\" \
placeholder=\"package name or sha256\" aria-label=\"search\"></form></header><main>{body}</main></body></html>\n",
        t = esc(title)
    );
    http::typed(StatusCode::OK, "text/html; charset=utf-8", html)
}

fn badge(level: TrustLevel) -> String {
    format!(
        "<span class=\"badge {l}\" data-level=\"{l}\">{l}</span>",
        l = level.as_str()
    )
}

fn role(r: AttesterRole) -> &'static str {
    match r {
        AttesterRole::Regular => "regular builder",
        AttesterRole::Trusted => "certified trusted node",
        AttesterRole::Void => "void (not counted)",
    }
}

fn short(s: &str) -> &str {
    &s[..s.len().min(16)]
}

pub async fn handle(gw: &Gateway, path: &str, req: &Req) -> Response {
    let result = match path {
        "/" => index(gw).await,
        "/-/search" => search(gw, &req.param("q").unwrap_or_default()).await,
        _ => {
            if let Some(rest) = path.strip_prefix("/-/package/") {
                match rest.split_once('/') {
                    Some((eco, name)) => match http::percent_decode(name) {
                        Some(name) => package(gw, eco, &name).await,
                        None => Err(http::text(StatusCode::BAD_REQUEST, "bad name")),
                    },
                    None => Err(http::text(StatusCode::NOT_FOUND, "no such page")),
                }
            } else if let Some(key) = path.strip_prefix("/-/proof/") {
                match http::percent_decode(key) {
                    Some(key) => proof(gw, &key).await,
                    None => Err(http::text(StatusCode::BAD_REQUEST, "bad key")),
                }
            } else {
                Err(http::text(StatusCode::NOT_FOUND, "no such page"))
            }
        }
    };
    result.unwrap_or_else(|r| r)
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    http::text(
        StatusCode::BAD_GATEWAY,
        format!("the ledger could not be read with proofs: {e}"),
    )
}

async fn index(gw: &Gateway) -> Result<Response, Response> {
    let snapshot = gw.catalog.snapshot().await.map_err(unavailable)?;
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>Chain <code>{}</code></h1><p>Verified height <strong id=\"height\">{}</strong> \
(app hash <code>{}</code>, <a href=\"/-/proof/params\">proof of the parameters</a>){}</p>",
        esc(&snapshot.chain_id),
        snapshot.height,
        hex::encode(&snapshot.app_hash),
        if gw.catalog.is_offline() {
            " — <strong>offline</strong>"
        } else {
            ""
        }
    );
    let validators = {
        let ledger = gw.catalog.ledger().await;
        ledger
            .light()
            .highest_verified()
            .map(|b| {
                b.validators
                    .validators()
                    .iter()
                    .map(|v| (v.address.to_string(), v.power.value()))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    body.push_str("<h2>Validators</h2><table id=\"validators\"><tr><th>address</th><th>voting power</th></tr>");
    for (address, power) in &validators {
        let _ = write!(
            body,
            "<tr><td><code>{}</code></td><td>{power}</td></tr>",
            esc(address)
        );
    }
    body.push_str("</table><h2>Recent requests</h2><table id=\"recent\"><tr><th>package</th><th>level</th><th>request</th><th>height</th></tr>");
    let ids = recent_ids(gw).await;
    let ledger = gw.catalog.ledger().await;
    for id in ids.into_iter().take(RECENT_SHOWN) {
        let Ok(Some(r)) = ledger.request(&snapshot, &id).await else {
            continue;
        };
        let p = r.origin.package();
        let _ = write!(
            body,
            "<tr class=\"request\" data-request=\"{id}\"><td><a href=\"/-/package/{eco}/{n}\">{pkg}</a></td><td>{}</td>\
<td><a href=\"/-/proof/request/{id}\"><code>{}</code></a></td><td>{}</td></tr>",
            badge(r.level),
            short(&id.to_string()),
            r.height,
            eco = esc(&p.ecosystem),
            n = esc(&p.name),
            pkg = esc(&p.to_string()),
        );
    }
    body.push_str("</table>");
    Ok(page("Pyrsia explorer", &body))
}

/// Request ids named by the newest requests and attestations, newest
/// first: the node's transaction index points at them; each is then read
/// with proofs.
async fn recent_ids(gw: &Gateway) -> Vec<Digest> {
    let mut events = Vec::new();
    for kind in ["build_requested", "attested"] {
        match gw
            .rpc
            .recent_events(kind, "request_id", RECENT_SHOWN as u8)
            .await
        {
            Ok(found) => events.extend(found),
            Err(e) => tracing::debug!(error = %e, "no recent events"),
        }
    }
    // Newest first across both kinds; the sort is stable.
    events.sort_by_key(|e| std::cmp::Reverse(e.height));
    let mut ids: Vec<Digest> = Vec::new();
    for e in events {
        if let Some(id) = e
            .attribute("request_id")
            .and_then(|s| s.parse::<Digest>().ok())
        {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}

fn package_body(view: &NameView) -> String {
    let mut body = format!(
        "<h1>{}:{}</h1><p>Verified at height {}. <a href=\"/-/proof/{}\">proof of its version list</a></p>",
        esc(&view.ecosystem),
        esc(&view.name),
        view.height,
        esc(&state_key::versions(&view.ecosystem, &view.name))
    );
    for v in &view.versions {
        let _ = write!(
            body,
            "<h2 class=\"version\">{} {}</h2>",
            esc(&v.version),
            match &v.served {
                Ok(_) => "<small>(served)</small>".to_owned(),
                Err(why) => format!("<small>(not served: {})</small>", esc(why)),
            }
        );
        for b in &v.builds {
            let _ = write!(
                body,
                "<table class=\"build\" data-request=\"{id}\"><tr><th colspan=\"4\">{} request <a href=\"/-/proof/request/{id}\"><code>{id}</code></a> — {}{}</th></tr>\
<tr><th>attester</th><th>role</th><th>height</th><th>outputs</th></tr>",
                badge(b.level),
                esc(&b.origin),
                if b.failures > 0 { format!(" — {} failed build(s)", b.failures) } else { String::new() },
                id = b.request_id,
            );
            for a in &b.attesters {
                let _ = write!(
                    body,
                    "<tr class=\"attester\"><td><code>{}</code></td><td class=\"role\">{}</td><td>{}</td><td>{}</td></tr>",
                    a.key,
                    role(a.role),
                    a.height,
                    if a.agrees { "as served".to_owned() } else { "<span class=\"dissent\">dissent: other outputs</span>".to_owned() }
                );
            }
            for o in &b.outputs {
                let _ = write!(
                    body,
                    "<tr class=\"output\"><td colspan=\"4\"><code>{}</code> {} bytes, sha256 <a href=\"/-/search?q={sha}\"><code>{sha}</code></a>, \
stripes of {} under root <code>{}</code> (<a href=\"/-/proof/artifact/{sha}\">providers' layouts, proven</a>)</td></tr>",
                    esc(&o.name),
                    o.size,
                    o.stripe_size,
                    o.stripe_root,
                    sha = o.sha256,
                );
            }
            body.push_str("</table>");
        }
    }
    body
}

async fn package(gw: &Gateway, eco: &str, name: &str) -> Result<Response, Response> {
    let view = gw.view(eco, name).await?;
    if view.versions.is_empty() {
        return Err(http::text(
            StatusCode::NOT_FOUND,
            format!("{eco}:{name} is not on the ledger"),
        ));
    }
    Ok(page(&format!("{eco}:{name}"), &package_body(&view)))
}

async fn search(gw: &Gateway, q: &str) -> Result<Response, Response> {
    let q = q.trim();
    let mut body = format!("<h1>Search: {}</h1>", esc(q));
    if let Ok(sha) = q.parse::<Digest>() {
        let snapshot = gw.catalog.snapshot().await.map_err(unavailable)?;
        let ledger = gw.catalog.ledger().await;
        let record: Option<ArtifactRecord> = ledger
            .get_decoded(&snapshot, &state_key::artifact(sha))
            .await
            .map_err(unavailable)?;
        let Some(record) = record else {
            // A request id, then.
            match ledger.request(&snapshot, &sha).await.map_err(unavailable)? {
                Some(r) => {
                    let _ = write!(body, "<ul>{}</ul>", request_item(&r));
                }
                None => body.push_str(
                    "<p>No artifact or request with this digest is on the ledger (proven absent).</p>",
                ),
            }
            return Ok(page("search", &body));
        };
        let ids: Vec<Digest> = ledger
            .get_decoded(&snapshot, &state_key::artifact_requests(sha, 0))
            .await
            .map_err(unavailable)?
            .unwrap_or_default();
        let _ = write!(
            body,
            "<p>{} bytes, attested by {} request(s):</p><ul>",
            record.size, record.request_count
        );
        for id in ids {
            if let Ok(Some(r)) = ledger.request(&snapshot, &id).await {
                body.push_str(&request_item(&r));
            }
        }
        body.push_str("</ul>");
        return Ok(page("search", &body));
    }
    let mut found = false;
    for eco in ECOSYSTEMS {
        if let Ok(view) = gw.catalog.name(eco, q).await {
            if !view.versions.is_empty() {
                found = true;
                let _ = write!(
                    body,
                    "<p><a href=\"/-/package/{eco}/{n}\">{eco}:{n}</a> — {} version(s)</p>",
                    view.versions.len(),
                    n = esc(q)
                );
            }
        }
    }
    if !found {
        body.push_str("<p>No package of this name in any ecosystem.</p>");
    }
    Ok(page("search", &body))
}

fn request_item(r: &RequestRecord) -> String {
    let p = r.origin.package();
    format!(
        "<li>{} <a href=\"/-/package/{}/{}\">{}</a> request <a href=\"/-/proof/request/{id}\"><code>{}</code></a> ({} output(s))</li>",
        badge(r.level),
        esc(&p.ecosystem),
        esc(&p.name),
        esc(&p.to_string()),
        short(&r.id.to_string()),
        level_outputs(r).len(),
        id = r.id
    )
}

async fn proof(gw: &Gateway, key: &str) -> Result<Response, Response> {
    let snapshot = gw.catalog.snapshot().await.map_err(unavailable)?;
    let ledger = gw.catalog.ledger().await;
    let answer = ledger.answer(&snapshot, key).await.map_err(unavailable)?;
    let ops: Vec<serde_json::Value> = answer
        .proof
        .iter()
        .flat_map(|p| p.ops.iter())
        .map(|op| json!({"type": op.field_type, "key": hex::encode(&op.key), "data": hex::encode(&op.data)}))
        .collect();
    let doc = json!({
        "key": key,
        "exists": answer.log == "exists",
        "value_hex": hex::encode(&answer.value),
        "height": snapshot.height,
        "app_hash": hex::encode(&snapshot.app_hash),
        "verified_header": snapshot.height + 1,
        "chain_id": snapshot.chain_id,
        "proof_ops": ops,
        "checked": "the value (or its absence) is proven against the app hash of a header the light client verified from the trust anchor",
    });
    Ok(http::json(&doc, "application/json"))
}

#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// [`handle`]'s parsing of an explorer path.
    pub fn path(path: &str) {
        if let Some(rest) = path.strip_prefix("/-/package/") {
            if let Some((_eco, name)) = rest.split_once('/') {
                let _ = http::percent_decode(name);
            }
        } else if let Some(key) = path.strip_prefix("/-/proof/") {
            let _ = http::percent_decode(key);
        }
    }

    /// The search box: a digest or a request id.
    pub fn search(q: &str) {
        let q = q.trim();
        let _ = esc(q);
        let _ = q.parse::<Digest>();
    }
}
