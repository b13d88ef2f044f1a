//! The ABCI socket server against a client that speaks the wire format
//! itself: pipelined requests, hostile frames, too many connections, and a
//! failed consensus request.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use prost::Message;
use pyrsia_abci::AbciError;
use pyrsia_chain::Ledger;
use tendermint_proto::v0_38::abci as pb;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(30);

struct Server {
    addr: std::net::SocketAddr,
    serving: JoinHandle<Result<(), AbciError>>,
    _dir: tempfile::TempDir,
}

fn start() -> Result<Server> {
    let dir = tempfile::tempdir()?;
    let ledger = Ledger::open(&dir.path().join("state"))?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let serving = tokio::spawn(pyrsia_abci::serve(ledger, None, listener));
    Ok(Server {
        addr,
        serving,
        _dir: dir,
    })
}

fn connect(addr: std::net::SocketAddr) -> Result<TcpStream> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(WAIT))?;
    Ok(stream)
}

fn request(value: pb::request::Value) -> Vec<u8> {
    pb::Request { value: Some(value) }.encode_length_delimited_to_vec()
}

fn echo(message: &str) -> Vec<u8> {
    request(pb::request::Value::Echo(pb::RequestEcho {
        message: message.into(),
    }))
}

fn flush() -> Vec<u8> {
    request(pb::request::Value::Flush(pb::RequestFlush {}))
}

/// Reads one length-prefixed response; `None` when the server closed the
/// connection first.
fn read_response(stream: &mut TcpStream) -> Result<Option<pb::Response>> {
    let mut len: u64 = 0;
    for shift in (0..64).step_by(7) {
        let mut byte = [0u8];
        match stream.read(&mut byte) {
            Ok(0) if shift == 0 => return Ok(None),
            Err(e) if shift == 0 && e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Ok(None)
            }
            Ok(0) => bail!("the server closed the connection inside a length prefix"),
            Ok(_) => {}
            Err(e) => return Err(e).context("reading a response length"),
        }
        len |= u64::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            let mut body = vec![0u8; usize::try_from(len)?];
            stream.read_exact(&mut body)?;
            return Ok(Some(pb::Response::decode(body.as_slice())?));
        }
    }
    bail!("response length is not a varint")
}

fn expect_echo(stream: &mut TcpStream, message: &str) -> Result<()> {
    match read_response(stream)?.and_then(|r| r.value) {
        Some(pb::response::Value::Echo(e)) if e.message == message => Ok(()),
        other => bail!("expected echo {message:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_are_answered_in_order_with_every_answer_before_the_flush() -> Result<()>
{
    let server = start()?;
    let mut stream = connect(server.addr)?;
    let mut batch = echo("first");
    batch.extend(request(
        pb::request::Value::Info(pb::RequestInfo::default()),
    ));
    batch.extend(request(pb::request::Value::CheckTx(pb::RequestCheckTx {
        tx: b"not a pyrsia transaction".to_vec().into(),
        r#type: pb::CheckTxType::New as i32,
    })));
    batch.extend(echo("last"));
    batch.extend(flush());
    // Written a byte at a time, so frames arrive split at every offset.
    for byte in &batch {
        stream.write_all(std::slice::from_ref(byte))?;
    }

    expect_echo(&mut stream, "first")?;
    match read_response(&mut stream)?.and_then(|r| r.value) {
        Some(pb::response::Value::Info(i)) => assert_eq!(i.data, "pyrsia"),
        other => bail!("expected info, got {other:?}"),
    }
    match read_response(&mut stream)?.and_then(|r| r.value) {
        Some(pb::response::Value::CheckTx(c)) => {
            assert_ne!(c.code, 0, "garbage passed CheckTx: {c:?}")
        }
        other => bail!("expected check_tx, got {other:?}"),
    }
    expect_echo(&mut stream, "last")?;
    match read_response(&mut stream)?.and_then(|r| r.value) {
        Some(pb::response::Value::Flush(_)) => {}
        other => bail!("expected flush, got {other:?}"),
    }
    assert!(!server.serving.is_finished());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_frame_closes_only_its_own_connection() -> Result<()> {
    let server = start()?;
    let mut honest = connect(server.addr)?;
    let hostile_frames: [Vec<u8>; 3] = [
        // A length of 2^40 bytes: refused before anything is read or reserved.
        {
            let mut f = Vec::new();
            prost::encoding::encode_varint(1 << 40, &mut f);
            f
        },
        // Eleven continuation bytes: no varint.
        vec![0xff; 11],
        // A well-framed body that is not a request.
        {
            let mut f = Vec::new();
            prost::encoding::encode_varint(3, &mut f);
            f.extend([0xff, 0xff, 0xff]);
            f
        },
    ];
    for frame in hostile_frames {
        let mut hostile = connect(server.addr)?;
        hostile.write_all(&frame)?;
        assert!(
            read_response(&mut hostile)?.is_none(),
            "the server answered {frame:?}"
        );
        honest.write_all(&echo("still here"))?;
        honest.write_all(&flush())?;
        expect_echo(&mut honest, "still here")?;
        read_response(&mut honest)?;
    }
    assert!(!server.serving.is_finished());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_limit_are_refused_until_one_closes() -> Result<()> {
    let server = start()?;
    let mut open = Vec::new();
    for i in 0..16 {
        let mut c = connect(server.addr)?;
        // Answered, so the server counts it before the next one connects.
        c.write_all(&echo(&i.to_string()))?;
        expect_echo(&mut c, &i.to_string())?;
        open.push(c);
    }
    let mut refused = connect(server.addr)?;
    // The write may already fail if the refusal arrived first.
    let _ = refused.write_all(&echo("one too many"));
    assert!(read_response(&mut refused)?.is_none());

    drop(open.pop());
    let accepted = tokio::time::timeout(WAIT, async {
        loop {
            let mut c = connect(server.addr)?;
            let _ = c.write_all(&echo("room again"));
            if read_response(&mut c)?.is_some() {
                return Ok::<_, anyhow::Error>(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    accepted.context("no connection was accepted after one closed")??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_consensus_request_stops_the_server_with_its_error() -> Result<()> {
    let server = start()?;
    let mut consensus = connect(server.addr)?;
    // Commit with nothing finalized: the ledger refuses, and nothing the app
    // could answer would let CometBFT go on.
    consensus.write_all(&request(pb::request::Value::Commit(pb::RequestCommit {})))?;
    consensus.write_all(&flush())?;
    let ended = tokio::time::timeout(WAIT, server.serving)
        .await
        .context("the server went on after a failed Commit")??;
    match ended {
        Err(AbciError::Request(e)) => {
            let text = e.to_string();
            assert!(
                text.contains("commit without a finalized block"),
                "unexpected error: {text}"
            );
        }
        other => bail!("expected the Commit's failure, got {other:?}"),
    }
    Ok(())
}
