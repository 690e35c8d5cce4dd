//! The node-to-node tunnel: how a proxy reaches an endpoint that runs on another node
//! (pod IPs are node-local).
//!
//! A proxy keeps one tunnel connection per other node and per thread that forwards
//! (TLS 1.3, then HTTP/2), to that node's tunnel listener at its InternalIP and the
//! port it publishes on its Node ([`crate::TUNNEL_PORT_ANNOTATION`]); every forwarded
//! TCP connection or UDP session is one HTTP/2 stream on it. So a node holds one file
//! descriptor per peer and thread however many connections cross, and a new connection
//! costs one round trip (the stream's request and answer) instead of a TCP and TLS
//! handshake. Both sides authenticate with the certificates the cluster CA issued at
//! join: the listener presents the node's serving certificate (checked against the CA
//! and the IP dialled), the dialler its `system:node:<name>` client certificate
//! (checked against the CA and for the `system:nodes` group). ALPN `wasmkube-tunnel/2`.
//!
//! A stream is a `POST` whose `:authority` is the endpoint (`10.0.0.5:8080`,
//! `[fd00::5]:53`) and whose `:path` is `/tcp` or `/udp`. The header `wasmkube-source`
//! names the address the far side connects or sends from, taken only when it is a
//! loopback address: for TCP the client's, when that is loopback (a pod's IP: so the
//! backend sees the pod that called, as on the client's own node); for UDP the Service's
//! ClusterIP (a pod's egress policy lets it answer there, it may refuse the node's own
//! addresses).
//! The answer: `200` connected, `404` not an endpoint of this node, `502` the endpoint
//! refused or timed out, `400` a malformed request. After a `200`, TCP is the byte
//! stream both ways in DATA frames: a FIN is END_STREAM (half-close), a reset is
//! RST_STREAM. UDP is framed inside the stream: each datagram as a u16 BE length and the
//! payload, both ways, until either side closes or the session idles out.
//!
//! Flow control is HTTP/2's, per stream and per connection: a stream may have
//! [`STREAM_WINDOW`] bytes in flight, the connection [`CONNECTION_WINDOW`]; the receiver
//! gives window back only once the bytes are written to the socket, so a slow reader
//! holds back its own stream and never makes the proxy buffer without bound. (The price
//! of multiplexing: enough stalled readers to fill the connection window,
//! 128 at 256 KiB each, would hold back the other streams too.)
//!
//! The listener forwards only to addresses that EndpointSlices place on its own node
//! (so the tunnel cannot reach host daemons); a request racing the slice update waits
//! up to [`listen::LOCAL_ENDPOINT_WAIT`] for it.

mod dial;
mod listen;
mod stream;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::{ProxyError, TunnelCredentials};

pub(crate) use dial::Dialer;
pub(crate) use listen::serve;
pub(crate) use stream::{read_frame, write_frame, Tunnel};

const ALPN: &[u8] = b"wasmkube-tunnel/2";
/// The header naming the address a stream's far side connects (TCP) or sends (UDP) from.
const SOURCE_HEADER: &str = "wasmkube-source";
const TCP_PATH: &str = "/tcp";
const UDP_PATH: &str = "/udp";
/// Bytes a stream may have in flight before its receiver has written them on.
const STREAM_WINDOW: u32 = 256 * 1024;
/// Bytes all the streams of a connection may have in flight together.
const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;
/// The largest DATA frame: a 64 KiB read goes out as one frame.
const MAX_FRAME: u32 = 64 * 1024;
/// Streams one connection may carry at once (a connection per peer and thread).
const MAX_STREAMS: u32 = 1 << 16;
/// Streams reset before the listener took them that it keeps track of: connects that
/// time out on the dialler's side are cancelled this way, and h2's default (20) would
/// end the whole connection over a burst of them.
const MAX_PENDING_RESETS: usize = 1024;
/// How long a peer gets for the TLS and HTTP/2 handshakes.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keep-alive on tunnel connections: a peer that vanished without a FIN is noticed
/// (and its streams reset) within about a minute, as an idle tunnel is the rule.
const KEEPALIVE_TIME: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;

/// Keep-alive on a tunnel connection's socket.
fn keep_alive(tcp: &tokio::net::TcpStream) -> io::Result<()> {
    let ka = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_TIME)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    socket2::SockRef::from(tcp).set_tcp_keepalive(&ka)
}

/// An HTTP/2 error as an I/O error: a reset or GOAWAY from the peer is a reset
/// connection to whoever reads or writes the stream.
fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("tunnel I/O error"));
    }
    let kind = if e.is_reset() || e.is_go_away() {
        io::ErrorKind::ConnectionReset
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, e)
}

/// The two TLS configurations built from the node's credentials.
pub(crate) struct Tls {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

impl Tls {
    pub(crate) fn new(creds: &TunnelCredentials) -> Result<Tls, ProxyError> {
        let bad =
            |what: &str, e: &dyn std::fmt::Display| ProxyError::Credentials(format!("{what}: {e}"));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for ca in certs(&creds.ca_pem, "the CA certificate")? {
            roots.add(ca).map_err(|e| bad("the CA certificate", &e))?;
        }
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| bad("the client verifier", &e))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| bad("TLS versions", &e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                certs(&creds.serving_cert_pem, "the serving certificate")?,
                key(&creds.serving_key_pem, "the serving key")?,
            )
            .map_err(|e| bad("the serving certificate", &e))?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| bad("TLS versions", &e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(
                certs(&creds.client_cert_pem, "the client certificate")?,
                key(&creds.client_key_pem, "the client key")?,
            )
            .map_err(|e| bad("the client certificate", &e))?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Tls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

fn certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, ProxyError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| ProxyError::Credentials(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(ProxyError::Credentials(format!(
            "{what}: no certificate in PEM"
        )));
    }
    Ok(certs)
}

fn key(pem: &str, what: &str) -> Result<rustls::pki_types::PrivateKeyDer<'static>, ProxyError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| ProxyError::Credentials(format!("{what}: {e}")))?
        .ok_or_else(|| ProxyError::Credentials(format!("{what}: no key in PEM")))
}

/// Whether a (CA-verified) client certificate is a node's: its subject carries the
/// organisation `system:nodes`. The CA only signs what the API server issues, so a
/// match of the encoded attribute (OID 2.5.4.10, a UTF8String or PrintableString) is
/// enough to tell nodes from the other identities it signs (admins, controllers).
fn is_node_identity(cert: &CertificateDer<'_>) -> bool {
    const ORG_OID: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x0a];
    const GROUP: &[u8] = b"system:nodes";
    let der = cert.as_ref();
    der.windows(ORG_OID.len() + 2 + GROUP.len()).any(|w| {
        w[..5] == ORG_OID
            && (w[5] == 0x0c || w[5] == 0x13)
            && usize::from(w[6]) == GROUP.len()
            && &w[7..] == GROUP
    })
}
