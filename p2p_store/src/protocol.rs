//! Wire protocol `/pyrsia/store/1`: one request and one response per stream
//! (libp2p request-response). Every frame is bounded; see README.md.
//!
//! Request (whole stream, at most [`MAX_REQUEST`] bytes):
//! - `0x01 | sha256[32]`                      manifest request
//! - `0x02 | sha256[32] | index u64 BE`       stripe request
//!
//! Response:
//! - `0x10 | size u64 | stripe_size u32 | count u32 | digests[32*count] | have bitmap[ceil(count/8)]`
//! - `0x11 | index u64 BE | len u32 BE | bytes[len]`  stripe (len at most MAX_STRIPE_SIZE)
//! - `0x1f | code u8 | utf-8 reason`          error (reason at most 1 KiB)

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

use crate::bufpool::StripeBuf;
use crate::manifest::{Digest, Manifest, MAX_STRIPES, MAX_STRIPE_SIZE};

/// Protocol id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/pyrsia/store/1");
/// Largest request frame.
pub const MAX_REQUEST: usize = 64;
/// Largest error reason.
pub const MAX_REASON: usize = 1024;
/// Largest manifest frame.
pub const MAX_MANIFEST_FRAME: usize =
    17 + 32 * MAX_STRIPES as usize + (MAX_STRIPES as usize).div_ceil(8);
/// Largest stripe frame.
pub const MAX_STRIPE_FRAME: usize = STRIPE_HEADER + MAX_STRIPE_SIZE as usize;
/// Tag, index and length of a stripe frame.
const STRIPE_HEADER: usize = 13;
/// Largest response frame of any kind.
pub const MAX_RESPONSE: usize = if MAX_MANIFEST_FRAME > MAX_STRIPE_FRAME {
    MAX_MANIFEST_FRAME
} else {
    MAX_STRIPE_FRAME
};

/// A request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Manifest {
        sha256: Digest,
    },
    Stripe {
        sha256: Digest,
        index: u64,
    },
    /// A frame that did not decode (never sent; answered with `BadRequest`).
    Malformed(String),
}

/// Error codes in an error response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorCode {
    /// The peer does not have the artifact.
    NotFound = 1,
    /// The peer has the artifact but not (yet) this stripe.
    NotHave = 2,
    /// Upload slots are full; try elsewhere or later.
    Busy = 3,
    /// The request was malformed or out of range.
    BadRequest = 4,
    /// The peer failed internally.
    Internal = 5,
}

impl ErrorCode {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::NotFound,
            2 => Self::NotHave,
            3 => Self::Busy,
            4 => Self::BadRequest,
            5 => Self::Internal,
            _ => return None,
        })
    }
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Manifest {
        manifest: Manifest,
        /// Stripes the responder has now (all true for a complete artifact).
        have: Vec<bool>,
    },
    Stripe {
        index: u64,
        data: StripeBuf,
    },
    Error {
        code: ErrorCode,
        reason: String,
    },
}

/// Decoding errors (mapped to `io::ErrorKind::InvalidData` on the stream).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty frame")]
    Empty,
    #[error("frame exceeds {0} bytes")]
    TooLarge(usize),
    #[error("unknown frame tag {0:#04x}")]
    UnknownTag(u8),
    #[error("frame length {got} wrong for its kind (expected {expected})")]
    BadLength { expected: String, got: usize },
    #[error("manifest declares {0} stripes, above the limit")]
    TooManyStripes(u64),
    #[error("unknown error code {0}")]
    UnknownCode(u8),
    #[error("error reason not utf-8")]
    BadReason,
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

fn digest(b: &[u8]) -> Digest {
    let mut d = [0u8; 32];
    d.copy_from_slice(&b[..32]);
    d
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::Manifest { sha256 } => {
                let mut v = vec![0x01];
                v.extend_from_slice(sha256);
                v
            }
            Request::Stripe { sha256, index } => {
                let mut v = vec![0x02];
                v.extend_from_slice(sha256);
                v.extend_from_slice(&index.to_be_bytes());
                v
            }
            Request::Malformed(_) => vec![0xff],
        }
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let (&tag, rest) = b.split_first().ok_or(DecodeError::Empty)?;
        match tag {
            0x01 if rest.len() == 32 => Ok(Request::Manifest {
                sha256: digest(rest),
            }),
            0x02 if rest.len() == 40 => Ok(Request::Stripe {
                sha256: digest(rest),
                index: be_u64(&rest[32..]),
            }),
            0x01 | 0x02 => Err(DecodeError::BadLength {
                expected: if tag == 1 { "33" } else { "41" }.into(),
                got: b.len(),
            }),
            t => Err(DecodeError::UnknownTag(t)),
        }
    }
}

impl Response {
    pub fn error(code: ErrorCode, reason: impl Into<String>) -> Self {
        let mut reason: String = reason.into();
        if reason.len() > MAX_REASON {
            let mut cut = MAX_REASON;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        Response::Error { code, reason }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            Response::Manifest { manifest, have } => {
                let n = manifest.digests.len();
                let mut v = Vec::with_capacity(17 + 32 * n + n.div_ceil(8));
                v.push(0x10);
                v.extend_from_slice(&manifest.size.to_be_bytes());
                v.extend_from_slice(&manifest.stripe_size.to_be_bytes());
                v.extend_from_slice(&(n as u32).to_be_bytes());
                for d in &manifest.digests {
                    v.extend_from_slice(d);
                }
                let mut bits = vec![0u8; n.div_ceil(8)];
                for (i, h) in have.iter().take(n).enumerate() {
                    if *h {
                        bits[i / 8] |= 1 << (i % 8);
                    }
                }
                v.extend_from_slice(&bits);
                v
            }
            Response::Stripe { index, data } => {
                let mut v = stripe_header(*index, data.len()).to_vec();
                v.extend_from_slice(data);
                v
            }
            Response::Error { code, reason } => {
                let mut v = vec![0x1f, *code as u8];
                v.extend_from_slice(reason.as_bytes());
                v
            }
        }
    }

    pub fn decode(b: Vec<u8>) -> Result<Self, DecodeError> {
        let tag = *b.first().ok_or(DecodeError::Empty)?;
        match tag {
            0x10 => {
                if b.len() < 17 {
                    return Err(DecodeError::BadLength {
                        expected: ">= 17".into(),
                        got: b.len(),
                    });
                }
                let size = be_u64(&b[1..]);
                let stripe_size = be_u32(&b[9..]);
                let count = u64::from(be_u32(&b[13..]));
                if count > MAX_STRIPES {
                    return Err(DecodeError::TooManyStripes(count));
                }
                let n = count as usize;
                let expected = 17 + 32 * n + n.div_ceil(8);
                if b.len() != expected {
                    return Err(DecodeError::BadLength {
                        expected: expected.to_string(),
                        got: b.len(),
                    });
                }
                let digests = b[17..17 + 32 * n].chunks_exact(32).map(digest).collect();
                let bits = &b[17 + 32 * n..];
                let have = (0..n).map(|i| bits[i / 8] & (1 << (i % 8)) != 0).collect();
                Ok(Response::Manifest {
                    manifest: Manifest {
                        size,
                        stripe_size,
                        digests,
                    },
                    have,
                })
            }
            0x11 => {
                if b.len() < STRIPE_HEADER || b.len() > MAX_STRIPE_FRAME {
                    return Err(DecodeError::BadLength {
                        expected: format!("{STRIPE_HEADER}..={MAX_STRIPE_FRAME}"),
                        got: b.len(),
                    });
                }
                let index = be_u64(&b[1..]);
                let len = be_u32(&b[9..]) as usize;
                if b.len() != STRIPE_HEADER + len {
                    return Err(DecodeError::BadLength {
                        expected: (STRIPE_HEADER + len).to_string(),
                        got: b.len(),
                    });
                }
                Ok(Response::Stripe {
                    index,
                    data: StripeBuf::from(&b[STRIPE_HEADER..]),
                })
            }
            0x1f => {
                if b.len() < 2 || b.len() > 2 + MAX_REASON {
                    return Err(DecodeError::BadLength {
                        expected: format!("2..={}", 2 + MAX_REASON),
                        got: b.len(),
                    });
                }
                let code = ErrorCode::from_u8(b[1]).ok_or(DecodeError::UnknownCode(b[1]))?;
                let reason =
                    String::from_utf8(b[2..].to_vec()).map_err(|_| DecodeError::BadReason)?;
                Ok(Response::Error { code, reason })
            }
            t => Err(DecodeError::UnknownTag(t)),
        }
    }
}

fn stripe_header(index: u64, len: usize) -> [u8; STRIPE_HEADER] {
    let mut h = [0u8; STRIPE_HEADER];
    h[0] = 0x11;
    h[1..9].copy_from_slice(&index.to_be_bytes());
    h[9..13].copy_from_slice(&(len as u32).to_be_bytes());
    h
}

/// Reads a whole stream, failing once it exceeds `limit` bytes.
pub async fn read_bounded<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    limit: usize,
    initial: usize,
) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(initial.min(limit));
    io.take(limit as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            DecodeError::TooLarge(limit),
        ));
    }
    Ok(buf)
}

fn invalid(e: DecodeError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The request-response codec.
#[derive(Debug, Clone, Default)]
pub struct StoreCodec;

#[async_trait::async_trait]
impl libp2p::request_response::Codec for StoreCodec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        // Oversized frames reset the stream; undecodable ones get a BadRequest answer.
        let b = read_bounded(io, MAX_REQUEST, MAX_REQUEST).await?;
        Ok(Request::decode(&b).unwrap_or_else(|e| Request::Malformed(e.to_string())))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut tag = [0u8; 1];
        io.read_exact(&mut tag).await?;
        if tag[0] == 0x11 {
            // Stripe: the length comes first, so the buffer is allocated once
            // at its exact (bounded) size, aligned, and the bytes are never
            // moved: the hasher and the direct write take them where they land.
            let mut h = [0u8; STRIPE_HEADER - 1];
            io.read_exact(&mut h).await?;
            let index = be_u64(&h);
            let len = be_u32(&h[8..]);
            if len > MAX_STRIPE_SIZE {
                return Err(invalid(DecodeError::TooLarge(MAX_STRIPE_SIZE as usize)));
            }
            // A recycled buffer (no zero-fill, no fresh pages), overwritten
            // in full before anyone sees it; a short frame is an error and
            // the buffer is dropped.
            let mut data = StripeBuf::take(len as usize);
            let mut got = 0;
            while got < data.len() {
                match io.read(&mut data.as_mut_slice()[got..]).await? {
                    0 => {
                        return Err(invalid(DecodeError::BadLength {
                            expected: len.to_string(),
                            got,
                        }))
                    }
                    n => got += n,
                }
            }
            let mut extra = [0u8; 1];
            if io.read(&mut extra).await? != 0 {
                return Err(invalid(DecodeError::TooLarge(STRIPE_HEADER + len as usize)));
            }
            return Ok(Response::Stripe { index, data });
        }
        let mut b = read_bounded(io, MAX_RESPONSE - 1, 1024).await?;
        b.insert(0, tag[0]);
        Response::decode(b).map_err(invalid)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        r: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&r.encode()).await?;
        io.flush().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        r: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        if let Response::Stripe { index, data } = r {
            // Header then the stripe's own buffer: no copy of the bytes.
            io.write_all(&stripe_header(index, data.len())).await?;
            io.write_all(&data).await?;
        } else {
            io.write_all(&r.encode()).await?;
        }
        io.flush().await
    }
}

/// A raw codec speaking arbitrary bytes on the store protocol; for tests
/// that send malformed frames.
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct RawCodec;

#[async_trait::async_trait]
impl libp2p::request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_bounded(io, MAX_RESPONSE, 1024).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_bounded(io, MAX_RESPONSE, 1024).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        r: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&r).await?;
        io.flush().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        r: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&r).await?;
        io.flush().await
    }
}

/// Failure of one outbound request.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("dial failed")]
    Dial,
    #[error("timed out")]
    Timeout,
    #[error("connection closed")]
    ConnectionClosed,
    #[error("peer does not speak the store protocol")]
    Unsupported,
    #[error("stream error: {0}")]
    Io(String),
    #[error("node stopped")]
    Stopped,
}

impl From<libp2p::request_response::OutboundFailure> for RequestError {
    fn from(e: libp2p::request_response::OutboundFailure) -> Self {
        use libp2p::request_response::OutboundFailure as F;
        match e {
            F::DialFailure => Self::Dial,
            F::Timeout => Self::Timeout,
            F::ConnectionClosed => Self::ConnectionClosed,
            F::UnsupportedProtocols => Self::Unsupported,
            F::Io(e) => Self::Io(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn roundtrip_and_garbage() {
        let r = Request::Stripe {
            sha256: [7; 32],
            index: 9,
        };
        let st = Response::Stripe {
            index: 3,
            data: StripeBuf::from(&[5u8; 100][..]),
        };
        assert_eq!(Response::decode(st.encode()).unwrap(), st);
        let mut short = st.encode();
        short.pop();
        assert!(Response::decode(short).is_err());
        assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        let m = Response::Manifest {
            manifest: Manifest {
                size: 10,
                stripe_size: 4096,
                digests: vec![[1; 32]; 9],
            },
            have: vec![true, false, true, false, false, false, false, false, true],
        };
        assert_eq!(Response::decode(m.encode()).unwrap(), m);
        let e = Response::error(ErrorCode::Busy, "x".repeat(5000));
        let d = Response::decode(e.encode()).unwrap();
        assert!(
            matches!(d, Response::Error { code: ErrorCode::Busy, ref reason } if reason.len() == MAX_REASON)
        );
        for g in [&[][..], &[0x01], &[0x02, 1, 2], &[0xff; 41], &[0x01; 34]] {
            assert!(Request::decode(g).is_err());
        }
        for g in [vec![], vec![0x10, 0, 0], vec![0x1f, 99], vec![0x11], {
            let mut v = vec![0x10; 17];
            v[13..17].copy_from_slice(&u32::MAX.to_be_bytes());
            v
        }] {
            assert!(Response::decode(g).is_err());
        }
    }
}
