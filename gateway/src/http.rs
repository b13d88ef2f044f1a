//! Responses shared by the front-ends.

use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Body, StatusCode};
use warp::reply::Response;

/// A JSON body `{"error": reason}` (npm prints `error` after the status),
/// and the reason in the status line too: pip and Maven print that.
pub fn json_error(status: StatusCode, reason: impl Into<String>) -> Response {
    let reason = reason.into();
    let body = serde_json::json!({ "error": reason });
    let mut r = typed(status, "application/json", body.to_string());
    set_reason(&mut r, &reason);
    r
}

/// A status line's reason phrase: `Forbidden: <why>` in printable ASCII.
pub fn set_reason(r: &mut Response, why: &str) {
    let canonical = r.status().canonical_reason().unwrap_or("Error");
    let phrase: Vec<u8> = format!("{canonical}: {why}")
        .bytes()
        .map(|b| if (0x20..0x7f).contains(&b) { b } else { b'?' })
        .take(400)
        .collect();
    if let Ok(p) = hyper::ext::ReasonPhrase::try_from(phrase) {
        r.extensions_mut().insert(p);
    }
}

pub fn typed(status: StatusCode, content_type: &str, body: impl Into<Body>) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

pub fn json(value: &serde_json::Value, content_type: &str) -> Response {
    typed(StatusCode::OK, content_type, value.to_string())
}

pub fn text(status: StatusCode, body: impl Into<String>) -> Response {
    typed(status, "text/plain; charset=utf-8", body.into())
}

/// A streamed artifact of a known length.
pub fn stream(body: Body, size: u64, content_type: &str) -> Response {
    let mut r = typed(StatusCode::OK, content_type, body);
    r.headers_mut().insert(CONTENT_LENGTH, size.into());
    r
}

pub fn set_header(r: &mut Response, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

/// A response without its body, for HEAD (headers kept, Content-Length too).
pub fn head_only(r: Response) -> Response {
    let (parts, _) = r.into_parts();
    Response::from_parts(parts, Body::empty())
}

/// `%XX` decoding of one path segment; `None` if it is not valid UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// HTML escaping for text and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Whether `accept` lists `media_type` (or a wildcard covering it).
pub fn accepts(accept: &str, media_type: &str) -> bool {
    let major = media_type.split('/').next().unwrap_or_default();
    accept.split(',').any(|part| {
        let t = part.split(';').next().unwrap_or_default().trim();
        t == media_type || t == "*/*" || t == format!("{major}/*")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_keeps_what_is_not_an_escape() {
        assert_eq!(
            percent_decode("@scope%2fname").as_deref(),
            Some("@scope/name")
        );
        assert_eq!(percent_decode("a%2Fb%40").as_deref(), Some("a/b@"));
        assert_eq!(percent_decode("100%").as_deref(), Some("100%"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn accept_matching() {
        let pacote = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*";
        assert!(accepts(pacote, "application/vnd.npm.install-v1+json"));
        assert!(accepts("text/*", "text/html"));
        assert!(!accepts("application/json", "text/html"));
    }
}
