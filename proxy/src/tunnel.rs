//! The node-to-node tunnel: how a proxy reaches an endpoint that runs on another node
//! (pod IPs are node-local).
//!
//! One TLS 1.3 connection per forwarded TCP connection or UDP session, from this
//! proxy to the other node's tunnel listener at its InternalIP and the port it
//! publishes on its Node ([`crate::TUNNEL_PORT_ANNOTATION`]). Both sides authenticate
//! with the certificates the cluster CA issued at join: the listener presents the
//! node's serving certificate (checked against the CA and the IP dialled), the dialler
//! its `system:node:<name>` client certificate (checked against the CA and for the
//! `system:nodes` group). Sessions are resumed from rustls' cache, so a repeat
//! connection costs one round trip more than a plain connect.
//!
//! After the handshake the dialler sends a header and the listener answers one byte:
//!
//! ```text
//! "WKT1" | protocol (6 = TCP, 17 = UDP) | family (4 | 6) | address (4 | 16 bytes) | port (u16 BE)
//!        | source family (0 = none | 4 | 6) | source address (0 | 4 | 16 bytes)
//! ← 0 connected | 1 not an endpoint of this node | 2 the endpoint refused / timed out
//! ```
//!
//! The source is the Service's ClusterIP: UDP sessions send from it, since a pod's
//! egress policy lets it answer there (it may refuse the node's own addresses).
//!
//! The listener forwards only to addresses that EndpointSlices place on its own node
//! (so the tunnel cannot reach host daemons); a request racing the slice update waits
//! up to [`LOCAL_ENDPOINT_WAIT`] for it. Then TCP is a plain byte stream (half-close
//! travels as TLS close_notify + FIN), and UDP is framed: each datagram as a u16 BE
//! length and the payload, both ways, until either side closes or the session idles
//! out.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::metrics::{inc, Metrics};
use crate::model::Protocol;
use crate::proxier::Shared;
use crate::{tcp, udp, ProxyError, TunnelCredentials};

const MAGIC: &[u8; 4] = b"WKT1";
const ALPN: &[u8] = b"wasmkube-tunnel/1";
const STATUS_OK: u8 = 0;
const STATUS_NOT_LOCAL: u8 = 1;
const STATUS_CONNECT_FAILED: u8 = 2;
/// How long a peer gets for the TLS handshake and the header.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request for an unknown endpoint waits for this node's slices to catch up.
const LOCAL_ENDPOINT_WAIT: Duration = Duration::from_secs(2);
const MAX_DATAGRAM: usize = 64 * 1024;
const COPY_BUFFER: usize = 16 * 1024;

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

/// The header naming what the tunnel should connect to (and from where).
fn encode_header(protocol: Protocol, target: SocketAddr, source: Option<IpAddr>) -> Vec<u8> {
    let mut h = Vec::with_capacity(48);
    h.extend_from_slice(MAGIC);
    h.push(match protocol {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
    });
    let push_ip = |h: &mut Vec<u8>, ip: IpAddr| match ip {
        IpAddr::V4(ip) => {
            h.push(4);
            h.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            h.push(6);
            h.extend_from_slice(&ip.octets());
        }
    };
    push_ip(&mut h, target.ip());
    h.extend_from_slice(&target.port().to_be_bytes());
    match source {
        Some(ip) => push_ip(&mut h, ip),
        None => h.push(0),
    }
    h
}

/// A family byte then that many address bytes (`None` for family 0 when allowed).
async fn read_ip(r: &mut (impl AsyncRead + Unpin), optional: bool) -> io::Result<Option<IpAddr>> {
    let mut family = [0u8; 1];
    r.read_exact(&mut family).await?;
    match family[0] {
        0 if optional => Ok(None),
        4 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).await?;
            Ok(Some(IpAddr::from(b)))
        }
        6 => {
            let mut b = [0u8; 16];
            r.read_exact(&mut b).await?;
            Ok(Some(IpAddr::from(b)))
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "unknown address family in the tunnel header",
        )),
    }
}

/// What a tunnel header asks for.
struct Request {
    protocol: Protocol,
    target: SocketAddr,
    source: Option<IpAddr>,
}

async fn read_header(r: &mut (impl AsyncRead + Unpin)) -> io::Result<Request> {
    let invalid = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let mut head = [0u8; 5];
    r.read_exact(&mut head).await?;
    if &head[..4] != MAGIC {
        return Err(invalid("not a wasmkube tunnel header"));
    }
    let protocol = match head[4] {
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        _ => return Err(invalid("unknown protocol in the tunnel header")),
    };
    let ip = read_ip(r, false)
        .await?
        .ok_or_else(|| invalid("no target address in the tunnel header"))?;
    let mut port = [0u8; 2];
    r.read_exact(&mut port).await?;
    let source = read_ip(r, true).await?;
    Ok(Request {
        protocol,
        target: SocketAddr::new(ip, u16::from_be_bytes(port)),
        source,
    })
}

/// Writes one datagram as a frame (`frame` is scratch space reused between calls, so
/// that a datagram is one write and one TLS record); flushes when `flush`.
pub(crate) async fn write_frame(
    w: &mut (impl AsyncWrite + Unpin),
    frame: &mut Vec<u8>,
    datagram: &[u8],
    flush: bool,
) -> io::Result<()> {
    let len = u16::try_from(datagram.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "datagram too large"))?;
    frame.clear();
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(datagram);
    w.write_all(frame).await?;
    if flush {
        w.flush().await?;
    }
    Ok(())
}

/// Reads one frame into `buf` (at least 64 KiB) and returns the datagram's length.
pub(crate) async fn read_frame(
    r: &mut (impl AsyncRead + Unpin),
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await?;
    let n = usize::from(u16::from_be_bytes(len));
    let dst = buf.get_mut(..n).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "frame larger than the buffer")
    })?;
    r.read_exact(dst).await?;
    Ok(n)
}

/// Opens tunnels to other nodes.
pub(crate) struct Dialer {
    connector: TlsConnector,
}

impl Dialer {
    pub(crate) fn new(config: Arc<ClientConfig>) -> Dialer {
        Dialer {
            connector: TlsConnector::from(config),
        }
    }

    /// A tunnel through the node at `via` to `target` (an endpoint on that node), ready
    /// for data; fails if the handshake, the header or the far side's connect fails
    /// within `timeout`. `source`: the address UDP datagrams should come from.
    pub(crate) async fn connect(
        &self,
        via: SocketAddr,
        protocol: Protocol,
        target: SocketAddr,
        source: Option<IpAddr>,
        timeout: Duration,
        metrics: &Metrics,
    ) -> io::Result<TlsStream<TcpStream>> {
        inc(&metrics.tunnels_out);
        let attempt = async {
            let tcp = TcpStream::connect(via).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::IpAddress(via.ip().into());
            let mut tls = self.connector.connect(name, tcp).await?;
            tls.write_all(&encode_header(protocol, target, source))
                .await?;
            tls.flush().await?;
            let mut status = [0u8; 1];
            tls.read_exact(&mut status).await?;
            match status[0] {
                STATUS_OK => Ok(tls),
                STATUS_NOT_LOCAL => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{via} does not run endpoint {target}"),
                )),
                _ => Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("endpoint {target} behind {via} refused or timed out"),
                )),
            }
        };
        let r = match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("tunnel to {target} through {via} timed out"),
            )),
        };
        if r.is_err() {
            inc(&metrics.tunnel_errors_out);
        }
        r
    }
}

/// Accepts tunnels from other nodes, on every worker, until the proxy stops.
pub(crate) fn serve(
    listener: std::net::TcpListener,
    config: Arc<ServerConfig>,
    shared: Arc<Shared>,
) {
    let acceptor = TlsAcceptor::from(config);
    let stop = shared.stop.clone();
    let workers_shared = shared.clone();
    shared.workers.serve(listener, stop, move |tcp, peer| {
        let acceptor = acceptor.clone();
        let shared = workers_shared.clone();
        async move {
            inc(&shared.metrics.tunnels_in);
            let r = tokio::select! {
                _ = shared.stop.cancelled() => Ok(()),
                r = serve_one(tcp, &acceptor, &shared) => r,
            };
            if let Err(e) = r {
                inc(&shared.metrics.tunnel_errors_in);
                tracing::debug!(%peer, error = %e, "tunnel from another node failed");
            }
        }
    });
}

async fn serve_one(tcp: TcpStream, acceptor: &TlsAcceptor, shared: &Shared) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    let (
        mut tls,
        Request {
            protocol,
            target,
            source,
        },
    ) = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let mut tls = acceptor.accept(tcp).await?;
        let is_node = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .is_some_and(is_node_identity);
        if !is_node {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the peer's certificate is not a node's",
            ));
        }
        let request = read_header(&mut tls).await?;
        Ok((tls, request))
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "tunnel handshake timed out"))??;

    if !is_local_endpoint(shared, protocol, target).await {
        tls.write_all(&[STATUS_NOT_LOCAL]).await?;
        tls.shutdown().await?;
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{target}/{protocol} is not an endpoint on this node"),
        ));
    }
    match protocol {
        Protocol::Tcp => {
            let mut up = match tcp::dial(target, shared.connect_timeout).await {
                Ok(up) => up,
                Err(e) => {
                    tls.write_all(&[STATUS_CONNECT_FAILED]).await?;
                    tls.shutdown().await?;
                    return Err(e);
                }
            };
            tls.write_all(&[STATUS_OK]).await?;
            tls.flush().await?;
            tokio::io::copy_bidirectional_with_sizes(&mut tls, &mut up, COPY_BUFFER, COPY_BUFFER)
                .await?;
            Ok(())
        }
        Protocol::Udp => {
            // Only a loopback source is taken from the peer: it names our ClusterIP.
            let source = source.filter(|s| s.is_loopback());
            let up = match udp::connect(target, source, shared.node_ip) {
                Ok(up) => up,
                Err(e) => {
                    tls.write_all(&[STATUS_CONNECT_FAILED]).await?;
                    tls.shutdown().await?;
                    return Err(e);
                }
            };
            tls.write_all(&[STATUS_OK]).await?;
            tls.flush().await?;
            relay_datagrams(tls, up, shared.udp_idle_timeout).await
        }
    }
}

/// Whether `target` is an endpoint on this node, waiting briefly for this node's view
/// of the EndpointSlices to catch up with the dialler's.
async fn is_local_endpoint(shared: &Shared, protocol: Protocol, target: SocketAddr) -> bool {
    let mut rx = shared.local_endpoints.subscribe();
    let deadline = tokio::time::Instant::now() + LOCAL_ENDPOINT_WAIT;
    loop {
        if rx.borrow_and_update().contains(&(protocol, target)) {
            return true;
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            _ => return false,
        }
    }
}

/// The far end of a UDP session: frames ↔ datagrams on a socket connected to the
/// endpoint, until the dialler closes or nothing moves for `idle`.
async fn relay_datagrams(
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    up: UdpSocket,
    idle: Duration,
) -> io::Result<()> {
    let (mut rd, mut wr) = tokio::io::split(tls);
    let last = std::sync::Mutex::new(tokio::time::Instant::now());
    let touch = || {
        if let Ok(mut l) = last.lock() {
            *l = tokio::time::Instant::now();
        }
    };
    let to_endpoint = async {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let n = read_frame(&mut rd, &mut buf).await?;
            touch();
            up.send(&buf[..n]).await?;
        }
    };
    let to_dialler = async {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut frame = Vec::with_capacity(2 + MAX_DATAGRAM);
        loop {
            let n = up.recv(&mut buf).await?;
            touch();
            write_frame(&mut wr, &mut frame, &buf[..n], true).await?;
        }
    };
    let idle_out = async {
        loop {
            let since = last
                .lock()
                .map(|l| *l)
                .unwrap_or_else(|_| tokio::time::Instant::now());
            let deadline = since + idle;
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    let r: io::Result<()> = tokio::select! {
        r = to_endpoint => r,
        r = to_dialler => r,
        _ = idle_out => Ok(()),
    };
    match r {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(()),
        r => r,
    }
}
