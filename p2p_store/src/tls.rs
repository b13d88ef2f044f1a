//! libp2p's TLS handshake (`/tls/1.0.0`, the libp2p TLS 1.3 specification)
//! with the AEAD chosen for the CPU it runs on.
//!
//! Bulk stripes spend most of a connection's CPU in its cipher. libp2p's
//! noise handshake fixes ChaCha20-Poly1305, and libp2p-tls puts it first
//! too; on a CPU with AES instructions AES-128-GCM costs a fraction of that
//! (on the loopback benchmark the cipher went from about a fifth of all CPU
//! to under a tenth). This upgrade speaks the same protocol as libp2p-tls and
//! reuses its certificates (a self-signed certificate carrying the libp2p
//! identity key's signature); only the order of the TLS 1.3 cipher suites
//! differs, and the listener applies its own order, so a stock libp2p-tls
//! peer gets AES-GCM in either role. The swarm offers it before noise, which
//! stays for peers without TLS.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncWrite, FutureExt as _};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p::identity::Keypair;
use libp2p::tls::certificate;
use libp2p::PeerId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::ring::cipher_suite::{
    TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    CertificateError, CommonState, DigitallySignedStruct, DistinguishedName, SignatureScheme,
    SupportedCipherSuite,
};

pub use futures_rustls::TlsStream;

/// The ALPN the libp2p TLS specification requires.
const ALPN: &[u8] = b"libp2p";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generating the TLS certificate: {0}")]
    Certificate(#[from] certificate::GenError),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("TLS handshake: {0}")]
    Handshake(std::io::Error),
    #[error("peer presented {0} certificates; libp2p TLS needs exactly one")]
    CertificateCount(usize),
    #[error("peer certificate: {0}")]
    BadCertificate(#[from] certificate::ParseError),
}

/// The security upgrade: a client and a server configuration sharing one
/// certificate for the node's identity.
#[derive(Clone, Debug)]
pub struct Config {
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
}

/// AES-GCM first where the CPU has AES and carry-less multiply
/// instructions; ChaCha20-Poly1305 first elsewhere, where it is the faster.
fn cipher_suites() -> Vec<SupportedCipherSuite> {
    let aes = [TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384];
    let chacha = [TLS13_CHACHA20_POLY1305_SHA256];
    if aes_is_fast() {
        aes.into_iter().chain(chacha).collect()
    } else {
        chacha.into_iter().chain(aes).collect()
    }
}

fn aes_is_fast() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("aes")
        && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(target_arch = "aarch64")]
    return std::arch::is_aarch64_feature_detected!("aes")
        && std::arch::is_aarch64_feature_detected!("pmull");
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    false
}

impl Config {
    pub fn new(identity: &Keypair) -> Result<Self, TlsError> {
        let (cert, key) = certificate::generate(identity)?;
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites = cipher_suites();
        let provider = Arc::new(provider);
        let versions = &[&rustls::version::TLS13];
        let verifier = Arc::new(PeerCertificateVerifier);
        // A resolver, not `with_single_cert`: rustls's own certificate check
        // there rejects the libp2p extension, which is marked critical.
        let own = Arc::new(SingleCertAndKey::from(CertifiedKey::new(
            vec![cert],
            rustls::crypto::ring::sign::any_ecdsa_type(&key)?,
        )));

        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_cert_resolver(own.clone());
        client.alpn_protocols = vec![ALPN.to_vec()];

        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(own);
        server.alpn_protocols = vec![ALPN.to_vec()];
        // Our order, not the client's: a stock libp2p-tls client lists
        // ChaCha20-Poly1305 first whatever its CPU.
        server.ignore_client_order = true;

        Ok(Self {
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }
}

impl UpgradeInfo for Config {
    type Info = &'static str;
    type InfoIter = std::iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once("/tls/1.0.0")
    }
}

impl<C> InboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, TlsStream<Buffered<C>>);
    type Error = TlsError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            let stream = futures_rustls::TlsAcceptor::from(self.server)
                .accept(buffered(socket))
                .await
                .map_err(TlsError::Handshake)?;
            let peer = session(stream.get_ref().1)?;
            Ok((peer, stream.into()))
        }
        .boxed()
    }
}

impl<C> OutboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, TlsStream<Buffered<C>>);
    type Error = TlsError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            // The specification forbids a server name indication; rustls
            // sends none for an IP address.
            let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
            let stream = futures_rustls::TlsConnector::from(self.client)
                .connect(name, buffered(socket))
                .await
                .map_err(TlsError::Handshake)?;
            // The swarm compares this with the peer id it dialed.
            let peer = session(stream.get_ref().1)?;
            Ok((peer, stream.into()))
        }
        .boxed()
    }
}

/// The socket under TLS, buffered both ways. yamux writes a frame's 12-byte
/// header and its body as two writes, and rustls sends each write at once:
/// unbuffered, the loopback benchmark made 145 `writev`s per MiB and its
/// reads returned 12 KiB each; buffered, 76 sends and 22 reads per MiB.
/// yamux flushes whenever it has no frame ready, so nothing waits here.
pub type Buffered<C> = futures::io::BufReader<futures::io::BufWriter<C>>;

/// Size of each socket buffer.
const SOCKET_BUFFER: usize = 64 * 1024;

fn buffered<C: AsyncRead + AsyncWrite>(socket: C) -> Buffered<C> {
    futures::io::BufReader::with_capacity(
        SOCKET_BUFFER,
        futures::io::BufWriter::with_capacity(SOCKET_BUFFER, socket),
    )
}

/// The peer id of an established session's peer.
fn session(state: &CommonState) -> Result<PeerId, TlsError> {
    let peer = match state.peer_certificates() {
        Some([cert]) => certificate::parse(cert)?.peer_id(),
        other => return Err(TlsError::CertificateCount(other.map_or(0, <[_]>::len))),
    };
    tracing::debug!(%peer, cipher = ?state.negotiated_cipher_suite().map(|s| s.suite()), "TLS session");
    Ok(peer)
}

/// What the libp2p TLS specification asks of either side's certificate:
/// exactly one, self-signed, within its validity, carrying a valid libp2p
/// extension (all checked by [`certificate::parse`]); and handshake
/// signatures made with its key.
#[derive(Debug)]
struct PeerCertificateVerifier;

impl PeerCertificateVerifier {
    fn check(
        end_entity: &CertificateDer,
        intermediates: &[CertificateDer],
    ) -> Result<(), rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(TlsError::CertificateCount(
                    1 + intermediates.len(),
                ))),
            )));
        }
        certificate::parse(end_entity).map_err(bad_certificate)?;
        Ok(())
    }

    fn signature(
        message: &[u8],
        cert: &CertificateDer,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        certificate::parse(cert)
            .map_err(bad_certificate)?
            .verify_signature(dss.scheme, message, dss.signature())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature))?;
        Ok(HandshakeSignatureValid::assertion())
    }

    fn schemes() -> Vec<SignatureScheme> {
        vec![
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ED25519,
            SignatureScheme::RSA_PSS_SHA512,
            SignatureScheme::RSA_PSS_SHA384,
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PKCS1_SHA512,
            SignatureScheme::RSA_PKCS1_SHA384,
            SignatureScheme::RSA_PKCS1_SHA256,
        ]
    }
}

fn bad_certificate(e: certificate::ParseError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
}

/// Only TLS 1.3 is configured, so TLS 1.2 signatures never verify.
fn no_tls12() -> rustls::Error {
    rustls::Error::General("libp2p TLS is TLS 1.3 only".into())
}

impl ServerCertVerifier for PeerCertificateVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer,
        intermediates: &[CertificateDer],
        _: &ServerName,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Self::check(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Self::schemes()
    }
}

impl ClientCertVerifier for PeerCertificateVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer,
        intermediates: &[CertificateDer],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Self::check(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Self::schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use futures::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_util::compat::{Compat, TokioAsyncReadCompatExt as _};

    type Socket = Compat<tokio::net::TcpStream>;

    async fn socket_pair() -> (Socket, Socket) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (dialer, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
        (dialer.unwrap().compat(), accepted.unwrap().0.compat())
    }

    fn expected_suite() -> rustls::CipherSuite {
        if aes_is_fast() {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        } else {
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        }
    }

    fn suite<C>(s: &TlsStream<C>) -> rustls::CipherSuite {
        s.get_ref().1.negotiated_cipher_suite().unwrap().suite()
    }

    /// Handshakes `dialer` against `listener` over TCP, checks that each
    /// side learns the other's peer id and that bytes cross, and returns
    /// the cipher suite they agreed on.
    async fn handshake<D, DIo, L, LIo>(
        dialer: (D, PeerId),
        listener: (L, PeerId),
    ) -> rustls::CipherSuite
    where
        D: OutboundConnectionUpgrade<Socket, Output = (PeerId, TlsStream<DIo>)>
            + UpgradeInfo<Info = &'static str>,
        D::Error: std::fmt::Debug,
        DIo: AsyncRead + AsyncWrite + Unpin,
        L: InboundConnectionUpgrade<Socket, Output = (PeerId, TlsStream<LIo>)>
            + UpgradeInfo<Info = &'static str>,
        L::Error: std::fmt::Debug,
        LIo: AsyncRead + AsyncWrite + Unpin,
    {
        let (a, b) = socket_pair().await;
        let (out, inb) = tokio::join!(
            dialer.0.upgrade_outbound(a, "/tls/1.0.0"),
            listener.0.upgrade_inbound(b, "/tls/1.0.0"),
        );
        let (seen_by_dialer, mut out) = out.unwrap();
        let (seen_by_listener, mut inb) = inb.unwrap();
        assert_eq!(seen_by_dialer, listener.1);
        assert_eq!(seen_by_listener, dialer.1);
        assert_eq!(suite(&out), suite(&inb));
        // A small frame that must not wait in a buffer once flushed, then
        // one larger than the socket buffers.
        for len in [6, 3 * SOCKET_BUFFER + 5] {
            let sent: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut got = vec![0u8; len];
            let (w, r) = tokio::join!(
                async {
                    out.write_all(&sent).await?;
                    out.flush().await
                },
                inb.read_exact(&mut got),
            );
            w.unwrap();
            r.unwrap();
            assert_eq!(got, sent);
        }
        suite(&out)
    }

    fn identity() -> (Keypair, PeerId) {
        let k = Keypair::generate_ed25519();
        let id = k.public().to_peer_id();
        (k, id)
    }

    #[tokio::test]
    async fn two_pyrsia_nodes_agree_on_the_cipher_this_cpu_runs_fastest() {
        let (a, a_id) = identity();
        let (b, b_id) = identity();
        let suite = handshake(
            (Config::new(&a).unwrap(), a_id),
            (Config::new(&b).unwrap(), b_id),
        )
        .await;
        assert_eq!(suite, expected_suite());
    }

    #[tokio::test]
    async fn a_stock_libp2p_tls_peer_interoperates_and_gets_our_cipher_in_either_role() {
        let (ours, our_id) = identity();
        let (stock, stock_id) = identity();
        let dialing_stock = handshake(
            (Config::new(&ours).unwrap(), our_id),
            (libp2p::tls::Config::new(&stock).unwrap(), stock_id),
        )
        .await;
        let dialed_by_stock = handshake(
            (libp2p::tls::Config::new(&stock).unwrap(), stock_id),
            (Config::new(&ours).unwrap(), our_id),
        )
        .await;
        assert_eq!(dialing_stock, expected_suite());
        assert_eq!(dialed_by_stock, expected_suite());
    }

    #[tokio::test]
    async fn a_peer_that_is_not_speaking_tls_gets_an_error() {
        let (k, _) = identity();
        let (mut a, b) = socket_pair().await;
        let (_, inb) = tokio::join!(
            async {
                a.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
                    .await
                    .unwrap();
                a.close().await.unwrap();
            },
            Config::new(&k).unwrap().upgrade_inbound(b, "/tls/1.0.0"),
        );
        assert!(
            matches!(inb, Err(TlsError::Handshake(_))),
            "{:?}",
            inb.err()
        );
    }

    /// A certificate and key of the right type that carry no libp2p identity.
    fn plain_certificate() -> Arc<SingleCertAndKey> {
        let plain = rcgen::generate_simple_self_signed(vec!["peer".into()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(plain.key_pair.serialize_der().into());
        Arc::new(SingleCertAndKey::from(CertifiedKey::new(
            vec![plain.cert.der().clone()],
            rustls::crypto::ring::sign::any_ecdsa_type(&key).unwrap(),
        )))
    }

    #[tokio::test]
    async fn a_certificate_without_a_libp2p_identity_is_refused_in_either_role() {
        let (k, _) = identity();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions = &[&rustls::version::TLS13];
        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PeerCertificateVerifier))
            .with_client_cert_resolver(plain_certificate());
        client.alpn_protocols = vec![ALPN.to_vec()];
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(plain_certificate());
        server.alpn_protocols = vec![ALPN.to_vec()];

        let (a, b) = socket_pair().await;
        let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
        let (_, ours) = tokio::join!(
            futures_rustls::TlsConnector::from(Arc::new(client)).connect(name, a),
            Config::new(&k).unwrap().upgrade_inbound(b, "/tls/1.0.0"),
        );
        assert!(
            matches!(ours, Err(TlsError::Handshake(_))),
            "{:?}",
            ours.err()
        );

        let (a, b) = socket_pair().await;
        let (ours, _) = tokio::join!(
            Config::new(&k).unwrap().upgrade_outbound(a, "/tls/1.0.0"),
            futures_rustls::TlsAcceptor::from(Arc::new(server)).accept(b),
        );
        assert!(
            matches!(ours, Err(TlsError::Handshake(_))),
            "{:?}",
            ours.err()
        );
    }
}
