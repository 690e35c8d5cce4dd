//! The listening side: tunnel connections from other nodes, and each stream on them
//! forwarded to an endpoint of this node.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Request, Response, StatusCode};
use rustls::ServerConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::TlsAcceptor;

use super::{h2_io, is_node_identity, keep_alive, read_frame, write_frame, Tunnel};
use crate::metrics::{inc, Held};
use crate::model::Protocol;
use crate::proxier::Shared;
use crate::{tcp, udp};

/// How long a request for an unknown endpoint waits for this node's slices to catch up.
pub(super) const LOCAL_ENDPOINT_WAIT: Duration = Duration::from_secs(2);

/// Accepts tunnel connections from other nodes, on every worker, until the proxy stops.
/// A connection's streams run on the worker that took the connection.
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
            let _open = Held::new(shared.metrics.tunnels_open_in.clone());
            let r = tokio::select! {
                _ = shared.stop.cancelled() => Ok(()),
                r = serve_connection(tcp, &acceptor, &shared) => r,
            };
            if let Err(e) = r {
                inc(&shared.metrics.tunnel_errors_in);
                tracing::debug!(%peer, error = %e, "tunnel connection from another node failed");
            }
        }
    });
}

/// Authenticates a peer and serves its streams until the connection ends.
async fn serve_connection(
    tcp: TcpStream,
    acceptor: &TlsAcceptor,
    shared: &Arc<Shared>,
) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    keep_alive(&tcp)?;
    let mut connection = tokio::time::timeout(super::HANDSHAKE_TIMEOUT, async {
        let tls = acceptor.accept(tcp).await?;
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
        h2::server::Builder::new()
            .initial_window_size(super::STREAM_WINDOW)
            .initial_connection_window_size(super::CONNECTION_WINDOW)
            .max_frame_size(super::MAX_FRAME)
            .max_concurrent_streams(super::MAX_STREAMS)
            .max_pending_accept_reset_streams(super::MAX_PENDING_RESETS)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(h2_io)
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "tunnel handshake timed out"))??;

    // Accepting also drives the connection: it must go on while streams run.
    while let Some(stream) = connection.accept().await {
        let (request, respond) = stream.map_err(h2_io)?;
        let shared = shared.clone();
        // Boxed, and before the task: opening (the request, the wait for the slices, the
        // connect) takes more room than relaying, and a task is as large as its largest
        // state for as long as its stream lives.
        let opening = Box::pin(open(request, respond, shared.clone()));
        tokio::spawn(async move {
            inc(&shared.metrics.tunnel_streams_in);
            let r = tokio::select! {
                _ = shared.stop.cancelled() => Ok(()),
                r = serve_stream(opening, &shared) => r,
            };
            if let Err(e) = r {
                inc(&shared.metrics.tunnel_errors_in);
                tracing::debug!(error = %e, "tunnel stream failed");
            }
        });
    }
    Ok(())
}

/// What a stream's request asks for.
struct Target {
    protocol: Protocol,
    addr: SocketAddr,
    source: Option<IpAddr>,
}

fn parse(request: &Request<RecvStream>) -> Option<Target> {
    let protocol = match request.uri().path() {
        super::TCP_PATH => Protocol::Tcp,
        super::UDP_PATH => Protocol::Udp,
        _ => return None,
    };
    let addr = request.uri().authority()?.as_str().parse().ok()?;
    let source = match request.headers().get(super::SOURCE_HEADER) {
        Some(v) => Some(v.to_str().ok()?.parse().ok()?),
        None => None,
    };
    Some(Target {
        protocol,
        addr,
        source,
    })
}

/// An answer that ends the stream.
fn refuse(respond: &mut SendResponse<Bytes>, status: StatusCode) -> io::Result<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    respond.send_response(response, true).map_err(h2_io)?;
    Ok(())
}

/// The `200` that opens the stream for data.
fn accept(respond: &mut SendResponse<Bytes>, body: RecvStream) -> io::Result<Tunnel> {
    let send = respond
        .send_response(Response::new(()), false)
        .map_err(h2_io)?;
    Ok(Tunnel::new(send, body))
}

/// A stream's far end, connected.
enum Opened {
    Tcp(Tunnel, TcpStream),
    Udp(Tunnel, UdpSocket),
}

/// Relays a stream once `opening` has connected it.
async fn serve_stream(
    opening: impl Future<Output = io::Result<Opened>>,
    shared: &Shared,
) -> io::Result<()> {
    match opening.await? {
        Opened::Tcp(tunnel, up) => {
            // The dialling node counts the bytes, per Service.
            let uncounted = AtomicU64::new(0);
            tunnel.relay_tcp(&up, &uncounted, &uncounted).await
        }
        Opened::Udp(tunnel, up) => {
            // Boxed too: larger than a TCP relay, and the rarer of the two.
            Box::pin(relay_datagrams(tunnel, up, shared.udp_idle_timeout)).await
        }
    }
}

/// Answers a stream's request: connected to the endpoint it names, or refused.
async fn open(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    shared: Arc<Shared>,
) -> io::Result<Opened> {
    let Some(Target {
        protocol,
        addr,
        source,
    }) = parse(&request)
    else {
        refuse(&mut respond, StatusCode::BAD_REQUEST)?;
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "not a tunnel request: {} {}",
                request.method(),
                request.uri()
            ),
        ));
    };
    if !is_local_endpoint(&shared, protocol, addr).await {
        refuse(&mut respond, StatusCode::NOT_FOUND)?;
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{addr}/{protocol} is not an endpoint on this node"),
        ));
    }
    let body = request.into_body();
    match protocol {
        // The client's address, when it is one of the peer's pods (loopback), is the one
        // the backend sees; `dial` takes nothing else.
        Protocol::Tcp => match tcp::dial(addr, source, shared.connect_timeout).await {
            Ok(up) => Ok(Opened::Tcp(accept(&mut respond, body)?, up)),
            Err(e) => {
                refuse(&mut respond, StatusCode::BAD_GATEWAY)?;
                Err(e)
            }
        },
        Protocol::Udp => {
            // Only a loopback source is taken from the peer: it names the client pod or
            // the ClusterIP, both of which this node can bind.
            let source = source.filter(|s| s.is_loopback());
            match udp::connect(addr, source, shared.node_ip) {
                Ok(up) => Ok(Opened::Udp(accept(&mut respond, body)?, up)),
                Err(e) => {
                    refuse(&mut respond, StatusCode::BAD_GATEWAY)?;
                    Err(e)
                }
            }
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
async fn relay_datagrams(tunnel: Tunnel, up: UdpSocket, idle: Duration) -> io::Result<()> {
    let (mut rd, mut wr) = tokio::io::split(tunnel);
    let last = std::sync::Mutex::new(tokio::time::Instant::now());
    let touch = || {
        if let Ok(mut l) = last.lock() {
            *l = tokio::time::Instant::now();
        }
    };
    // Buffers grow to the largest datagram seen: a session of small datagrams stays
    // small (a 64 KiB buffer each way per session added up over many sessions).
    let to_endpoint = async {
        let mut buf = Vec::new();
        loop {
            read_frame(&mut rd, &mut buf).await?;
            touch();
            up.send(&buf).await?;
        }
    };
    let to_dialler = async {
        let (mut datagram, mut frame) = (Vec::new(), Vec::new());
        loop {
            udp::recv_owned(&up, &mut datagram).await?;
            touch();
            write_frame(&mut wr, &mut frame, &datagram, true).await?;
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
    // The session's end reaches the dialler as the end of the stream.
    let _ = wr.shutdown().await;
    match r {
        // The dialler ended the session (it closed or dropped its end).
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
            ) =>
        {
            Ok(())
        }
        r => r,
    }
}
