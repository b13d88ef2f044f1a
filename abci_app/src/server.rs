//! The ABCI socket server: one thread per CometBFT connection, blocking IO.
//!
//! Each connection thread decodes a request, answers it in place, and
//! appends the response to its output; the output goes to the socket in one
//! write when CometBFT asks for a Flush, or before the thread would block
//! reading. Consensus, mempool and snapshot requests take the one [`App`]
//! behind a mutex, so they run one at a time, each connection's in arrival
//! order. Info and Query read the committed versions without it, so a large
//! proved query never delays FinalizeBlock.
//!
//! What has arrived is answered together, so the signatures of a run of
//! CheckTx requests are verified as one batch
//! ([`pyrsia_chain::Ledger::verify_ahead`]).
//!
//! Why not tower-abci's async server, where one task owns the app: it hands
//! each request over on its own, so nothing can be batched, and writes each
//! answer with a socket write of its own (`testnet/README.md`, *Throughput*).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use prost::Message;
use pyrsia_chain::LedgerReader;
use tendermint::abci::request::CheckTxKind;
use tendermint::v0_38::abci::{response, Request, Response};
use tendermint_proto::v0_38::abci as pb;
use tokio::sync::mpsc;

use crate::{info, query, AbciError, App};

/// The largest request frame taken: CometBFT's largest block (100 MiB)
/// with room for the rest of a FinalizeBlock request.
const MAX_FRAME: usize = 128 << 20;
/// CometBFT opens four connections; a few more allow a restart to overlap
/// the old ones closing.
const MAX_CONNECTIONS: usize = 16;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 << 10;
/// Requests already read that are answered together.
const MAX_BATCH: usize = 256;
/// Responses are written early once this many bytes wait.
const WRITE_BATCH: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("request frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    FrameTooLarge(u64),
    #[error("request length prefix is not a varint")]
    BadLength,
    #[error("request is not an ABCI 2.0 message: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("encoding a response: {0}")]
    Encode(#[from] prost::EncodeError),
    #[error("request is not a valid ABCI 2.0 request: {0}")]
    Invalid(#[from] tendermint::Error),
    /// The app failed a consensus request: it cannot go on.
    #[error(transparent)]
    Fatal(AbciError),
}

/// What every connection thread shares.
struct Shared {
    app: Mutex<App>,
    reader: LedgerReader,
    connections: AtomicUsize,
    /// The first fatal failure ends [`crate::serve`].
    fatal: mpsc::Sender<AbciError>,
}

/// Accepts CometBFT's connections on `listener` on a thread of its own.
/// A fatal failure of any connection is sent to `fatal`.
pub(crate) fn spawn(
    listener: TcpListener,
    app: App,
    fatal: mpsc::Sender<AbciError>,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared {
        reader: app.ledger.reader(),
        app: Mutex::new(app),
        connections: AtomicUsize::new(0),
        fatal,
    });
    std::thread::Builder::new()
        .name("abci-accept".into())
        .spawn(move || accept(listener, shared))?;
    Ok(())
}

fn accept(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin on it.
                tracing::warn!(error = %e, "accepting an ABCI connection");
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        let peer = stream.peer_addr().ok();
        if shared.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            shared.connections.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(
                ?peer,
                limit = MAX_CONNECTIONS,
                "refused an ABCI connection over the limit"
            );
            let _ = stream.shutdown(Shutdown::Both);
            continue;
        }
        let conn = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("abci-conn".into())
            .spawn(move || {
                tracing::debug!(?peer, "ABCI connection opened");
                let outcome = Connection::new(stream).and_then(|c| c.run(&conn));
                conn.connections.fetch_sub(1, Ordering::SeqCst);
                match outcome {
                    Ok(()) => tracing::info!(?peer, "ABCI connection closed"),
                    Err(ConnectionError::Fatal(e)) => {
                        let _ = conn.fatal.try_send(e);
                    }
                    Err(e) => tracing::warn!(?peer, error = %e, "ABCI connection dropped"),
                }
            });
        if let Err(e) = spawned {
            shared.connections.fetch_sub(1, Ordering::SeqCst);
            let _ = shared.fatal.try_send(AbciError::Thread(e));
            return;
        }
    }
}

struct Connection {
    stream: TcpStream,
    /// Bytes read and not yet decoded.
    input: BytesMut,
    /// What one read from the socket fills.
    chunk: Box<[u8]>,
    /// Encoded responses not yet written.
    output: Vec<u8>,
}

impl Connection {
    fn new(stream: TcpStream) -> Result<Connection, ConnectionError> {
        // Responses are batched here; Nagle would only delay the last one.
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            input: BytesMut::with_capacity(READ_CHUNK),
            chunk: vec![0u8; READ_CHUNK].into_boxed_slice(),
            output: Vec::with_capacity(WRITE_BATCH),
        })
    }

    fn run(mut self, shared: &Shared) -> Result<(), ConnectionError> {
        while let Some(frame) = self.next_frame()? {
            // What else has arrived is answered with it, so that the
            // signatures of a run of CheckTx are verified as one batch.
            let mut requests = vec![decode(frame)?];
            while requests.len() < MAX_BATCH {
                match self.take_frame()? {
                    Some(frame) => requests.push(decode(frame)?),
                    None => break,
                }
            }
            verify_ahead(shared, &requests)?;
            for request in requests {
                let flush = matches!(request, Request::Flush);
                pb::Response::from(answer(shared, request)?)
                    .encode_length_delimited(&mut self.output)?;
                if flush || self.output.len() >= WRITE_BATCH {
                    self.flush()?;
                }
            }
        }
        self.flush()
    }

    /// The next whole request frame, or `None` when CometBFT closed the
    /// connection between frames.
    fn next_frame(&mut self) -> Result<Option<Bytes>, ConnectionError> {
        loop {
            if let Some(frame) = self.take_frame()? {
                return Ok(Some(frame));
            }
            // About to wait for CometBFT: it gets every answer so far first.
            self.flush()?;
            let n = match self.stream.read(&mut self.chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return if self.input.is_empty() {
                    Ok(None)
                } else {
                    Err(std::io::Error::from(ErrorKind::UnexpectedEof).into())
                };
            }
            self.input.extend_from_slice(&self.chunk[..n]);
        }
    }

    /// Splits one frame (an unsigned varint length, then the message) off
    /// the input, if it is all there.
    fn take_frame(&mut self) -> Result<Option<Bytes>, ConnectionError> {
        let mut head = &self.input[..];
        let len = match prost::encoding::decode_varint(&mut head) {
            Ok(len) => len,
            // A varint is at most 10 bytes; fewer may be a prefix still coming.
            Err(_) if self.input.len() < 10 => return Ok(None),
            Err(_) => return Err(ConnectionError::BadLength),
        };
        let body = usize::try_from(len)
            .ok()
            .filter(|&l| l <= MAX_FRAME)
            .ok_or(ConnectionError::FrameTooLarge(len))?;
        let prefix = self.input.len() - head.len();
        if head.len() < body {
            // Not reserved ahead: the length is CometBFT's claim, not yet bytes.
            return Ok(None);
        }
        self.input.advance(prefix);
        Ok(Some(self.input.split_to(body).freeze()))
    }

    fn flush(&mut self) -> Result<(), ConnectionError> {
        if !self.output.is_empty() {
            self.stream.write_all(&self.output)?;
            self.output.clear();
        }
        Ok(())
    }
}

fn decode(frame: Bytes) -> Result<Request, ConnectionError> {
    Ok(Request::try_from(pb::Request::decode(frame)?)?)
}

/// Batch-verifies the signatures of the new transactions among `requests`
/// ([`pyrsia_chain::Ledger::verify_ahead`]).
fn verify_ahead(shared: &Shared, requests: &[Request]) -> Result<(), ConnectionError> {
    let txs: Vec<&[u8]> = requests
        .iter()
        .filter_map(|r| match r {
            Request::CheckTx(c) if c.kind == CheckTxKind::New => Some(c.tx.as_ref()),
            _ => None,
        })
        .collect();
    if txs.len() > 1 {
        lock(shared)?.ledger.verify_ahead(&txs);
    }
    Ok(())
}

fn lock(shared: &Shared) -> Result<std::sync::MutexGuard<'_, App>, ConnectionError> {
    shared.app.lock().map_err(|_| {
        ConnectionError::Fatal(AbciError::Server(
            "a thread panicked while it held the ledger".into(),
        ))
    })
}

fn answer(shared: &Shared, request: Request) -> Result<Response, ConnectionError> {
    Ok(match request {
        Request::Flush => Response::Flush,
        Request::Info(_) => Response::Info(info(&shared.reader)),
        Request::Query(q) => Response::Query(query(&shared.reader, q)),
        Request::Echo(e) => Response::Echo(response::Echo { message: e.message }),
        other => {
            lock(shared)?.handle(other).map_err(|e| {
                // CometBFT cannot go on without this answer, and neither can
                // the app: the handshake on restart replays what is missing.
                tracing::error!(error = %e, "ABCI request failed");
                ConnectionError::Fatal(AbciError::Request(e))
            })?
        }
    })
}
