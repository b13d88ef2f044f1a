//! The recording proxy: the dependency step's only network.
//!
//! It listens on 127.0.0.1 inside the fetch sandbox's own network namespace
//! (the socket is made there, then served from the builder's side), and
//! answers `GET`/`HEAD /<upstream>/<path>` by fetching `<path>` from that
//! configured upstream registry. Nothing else is reachable: no other host,
//! no other method, no CONNECT. Every artifact it passes on is hashed and
//! recorded; those records become the build's resolved dependencies.
//!
//! Registry documents name their files by absolute URL (npm's tarballs,
//! PyPI's file links, the cargo index's `dl`), so in text responses every
//! upstream's base URL is rewritten to the proxy's, keeping the client on
//! the proxy.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::{ResolvedDependency, Upstream};

/// Files whose bytes a build consumes, as opposed to index documents that
/// change whenever the registry publishes (and so differ between builders).
const ARTIFACT_SUFFIXES: &[&str] = &[
    ".tgz",
    ".tar.gz",
    ".tar.bz2",
    ".whl",
    ".zip",
    ".crate",
    ".jar",
    ".pom",
    ".gem",
    "/download",
];
/// Text documents are buffered to be rewritten; nothing legitimate is larger.
const MAX_DOCUMENT: u64 = 64 << 20;
const MAX_REQUEST_HEAD: usize = 64 << 10;
const MAX_CONNECTIONS: usize = 32;
const IO_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Default)]
struct Record {
    by_uri: BTreeMap<String, ResolvedDependency>,
    /// Why the step must fail even if the client succeeded.
    failure: Option<String>,
}

#[derive(Debug)]
struct Shared {
    upstreams: Vec<Upstream>,
    base: String,
    agent: ureq::Agent,
    record: Mutex<Record>,
    bytes: AtomicU64,
    cap: u64,
    active: AtomicUsize,
    stop: AtomicBool,
}

#[derive(Debug)]
pub(crate) struct RecordingProxy {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl RecordingProxy {
    /// Serves `listener` (already bound in the sandbox's namespace) until
    /// [`RecordingProxy::finish`]. At most `cap` bytes pass in total.
    pub(crate) fn start(
        listener: TcpListener,
        upstreams: &[Upstream],
        cap: u64,
    ) -> std::io::Result<RecordingProxy> {
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            upstreams: upstreams.to_vec(),
            base: format!("http://127.0.0.1:{port}"),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(30))
                .timeout_read(IO_TIMEOUT)
                .redirects(0)
                .build(),
            record: Mutex::new(Record::default()),
            bytes: AtomicU64::new(0),
            cap,
            active: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let accept = {
            let shared = shared.clone();
            std::thread::spawn(move || accept_loop(&listener, &shared))
        };
        Ok(RecordingProxy {
            shared,
            accept: Some(accept),
        })
    }

    /// The URL of `upstream` through the proxy, as the sandbox sees it.
    pub(crate) fn url_of(&self, upstream: &str) -> String {
        format!("{}/{upstream}/", self.shared.base)
    }

    /// Stops serving and returns what passed, sorted by URI (clients fetch
    /// in parallel, so the order of arrival varies), or why the step must
    /// fail.
    pub(crate) fn finish(mut self) -> Result<Vec<ResolvedDependency>, String> {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        while self.shared.active.load(Ordering::SeqCst) > 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut record = self
            .shared
            .record
            .lock()
            .map_err(|_| "proxy record poisoned".to_string())?;
        if let Some(why) = record.failure.take() {
            return Err(why);
        }
        Ok(std::mem::take(&mut record.by_uri).into_values().collect())
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((conn, _)) => {
                if shared.active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    shared.active.fetch_sub(1, Ordering::SeqCst);
                    let _ = respond(&mut &conn, 503, "text/plain", b"too many connections");
                    continue;
                }
                let shared = shared.clone();
                std::thread::spawn(move || {
                    if let Err(e) = serve(conn, &shared) {
                        tracing::debug!("proxy connection: {e}");
                    }
                    shared.active.fetch_sub(1, Ordering::SeqCst);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                tracing::warn!("proxy accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

struct Request {
    head_only: bool,
    target: String,
    accept: Option<String>,
}

fn read_request(conn: &TcpStream) -> std::io::Result<Option<Request>> {
    let mut reader = BufReader::new(conn.take(MAX_REQUEST_HEAD as u64));
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Ok(None);
    };
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Ok(None),
    };
    let target = target.to_string();
    let mut accept = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("accept") {
                accept = Some(value.trim().to_string());
            }
        }
    }
    Ok(Some(Request {
        head_only,
        target,
        accept,
    }))
}

fn respond(
    conn: &mut impl Write,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    write!(
        conn,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    )?;
    conn.write_all(body)?;
    conn.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "Status",
    }
}

fn serve(mut conn: TcpStream, shared: &Shared) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    let Some(req) = read_request(&conn)? else {
        return respond(&mut conn, 405, "text/plain", b"only GET and HEAD");
    };
    let Some((upstream, path)) = route(&shared.upstreams, &req.target) else {
        return respond(&mut conn, 404, "text/plain", b"no such upstream");
    };
    let url = format!("{}/{path}", upstream.url.trim_end_matches('/'));
    let mut call = if req.head_only {
        shared.agent.head(&url)
    } else {
        shared.agent.get(&url)
    };
    call = call.set("Accept-Encoding", "identity");
    if let Some(accept) = &req.accept {
        call = call.set("Accept", accept);
    }
    let resp = match call.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => {
            return respond(&mut conn, 502, "text/plain", e.to_string().as_bytes());
        }
    };
    let status = resp.status();
    let content_type = resp.content_type().to_string();
    if req.head_only || status != 200 {
        let mut body = Vec::new();
        resp.into_reader()
            .take(MAX_DOCUMENT)
            .read_to_end(&mut body)?;
        return respond(&mut conn, status, &content_type, &body);
    }
    let uri = format!(
        "{}:/{}",
        upstream.name,
        path.split('?').next().unwrap_or(path)
    );
    let is_artifact = ARTIFACT_SUFFIXES.iter().any(|s| uri.ends_with(s));
    let is_text = ["json", "html", "xml", "text"]
        .iter()
        .any(|t| content_type.contains(t));
    let declared_len = resp
        .header("Content-Length")
        .and_then(|v| v.parse::<u64>().ok());
    let mut reader = resp.into_reader();

    if is_text || declared_len.is_none() {
        // Buffered: rewritten if text, and sent with a length either way.
        let mut body = Vec::new();
        (&mut reader)
            .take(MAX_DOCUMENT + 1)
            .read_to_end(&mut body)?;
        if body.len() as u64 > MAX_DOCUMENT {
            return respond(&mut conn, 502, "text/plain", b"upstream document too large");
        }
        if !shared.charge(body.len() as u64) {
            return respond(
                &mut conn,
                507,
                "text/plain",
                b"dependency step over its size limit",
            );
        }
        if is_artifact {
            shared.record(&uri, Sha256::digest(&body).into(), body.len() as u64);
        }
        let body = if is_text { shared.rewrite(&body) } else { body };
        return respond(&mut conn, 200, &content_type, &body);
    }

    let len = declared_len.unwrap_or(0);
    if !shared.charge(len) {
        return respond(
            &mut conn,
            507,
            "text/plain",
            b"dependency step over its size limit",
        );
    }
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut sent = 0u64;
    let mut limited = reader.take(len);
    loop {
        let n = limited.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        conn.write_all(&buf[..n])?;
        sent += n as u64;
    }
    conn.flush()?;
    if sent == len && is_artifact {
        shared.record(&uri, hasher.finalize().into(), len);
    }
    Ok(())
}

/// `/<upstream>/<path>` to the configured upstream and `<path>`; refuses
/// `..` so that a path cannot climb above the upstream's base.
fn route<'a>(upstreams: &'a [Upstream], target: &'a str) -> Option<(&'a Upstream, &'a str)> {
    let rest = target.strip_prefix('/')?;
    let (name, path) = rest.split_once('/')?;
    let upstream = upstreams.iter().find(|u| u.name == name)?;
    let clean = path.split('?').next().unwrap_or(path);
    if clean
        .split('/')
        .any(|seg| seg == ".." || seg == "." || seg.contains('\\'))
        || clean.to_ascii_lowercase().contains("%2e%2e")
    {
        return None;
    }
    Some((upstream, path))
}

impl Shared {
    fn charge(&self, n: u64) -> bool {
        let total = self.bytes.fetch_add(n, Ordering::SeqCst) + n;
        if total > self.cap {
            if let Ok(mut r) = self.record.lock() {
                r.failure.get_or_insert_with(|| {
                    format!("the dependency step fetched more than {} bytes", self.cap)
                });
            }
            return false;
        }
        true
    }

    fn record(&self, uri: &str, sha256: [u8; 32], size: u64) {
        let Ok(mut r) = self.record.lock() else {
            return;
        };
        let dep = ResolvedDependency {
            uri: uri.to_string(),
            sha256: hex::encode(sha256),
            size,
        };
        match r.by_uri.get(uri) {
            Some(seen) if seen.sha256 != dep.sha256 => {
                // The same file twice with different bytes: the registry
                // changed it under us, so the record would be ambiguous.
                r.failure
                    .get_or_insert_with(|| format!("{uri} changed while the dependency step ran"));
            }
            Some(_) => {}
            None => {
                r.by_uri.insert(uri.to_string(), dep);
            }
        }
    }

    fn rewrite(&self, body: &[u8]) -> Vec<u8> {
        let Ok(text) = std::str::from_utf8(body) else {
            return body.to_vec();
        };
        let mut text = text.to_string();
        for u in &self.upstreams {
            let from = u.url.trim_end_matches('/');
            text = text.replace(from, &format!("{}/{}", self.base, u.name));
        }
        text.into_bytes()
    }
}

/// Binds a listener on 127.0.0.1 inside the network namespace at `netns`
/// (a `/proc/PID/ns/net`), from a thread of its own that enters the
/// namespace and leaves again: the socket stays in the sandbox's namespace,
/// the builder's threads stay in the host's.
pub(crate) fn listen_in(netns: &Path) -> std::io::Result<TcpListener> {
    let netns = netns.to_path_buf();
    std::thread::spawn(move || {
        use nix::sched::{setns, CloneFlags};
        let own = std::fs::File::open("/proc/thread-self/ns/net")?;
        let target = std::fs::File::open(&netns)?;
        setns(&target, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        // A child of this thread starts in its namespace.
        let up = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()?;
        let listener = if up.success() {
            TcpListener::bind("127.0.0.1:0")
        } else {
            Err(std::io::Error::other("`ip link set lo up` failed"))
        };
        setns(&own, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        listener
    })
    .join()
    .map_err(|_| std::io::Error::other("listener thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_stay_below_their_upstream() {
        let ups = vec![Upstream {
            name: "npm".into(),
            url: "http://127.0.0.1:1/reg".into(),
        }];
        assert!(route(&ups, "/npm/left-pad/-/left-pad-1.3.0.tgz").is_some());
        for bad in [
            "/npm/../etc/passwd",
            "/npm/a/%2e%2e/b",
            "/pypi/x",
            "http://elsewhere/npm/x",
            "/npm",
        ] {
            assert!(route(&ups, bad).is_none(), "{bad}");
        }
    }
}
