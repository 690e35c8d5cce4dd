//! The dialling side: tunnel connections to other nodes, kept and reused, and streams
//! opened on them.
//!
//! One connection per peer node and per thread that asks: the proxy's worker threads
//! are single-threaded runtimes, so a worker's streams and the connection task that
//! carries them run on the same thread. A connection is dialled on first use and kept
//! until it fails or the proxy stops; the next request after a failure dials anew.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use super::{h2_io, keep_alive, Tunnel};
use crate::metrics::{inc, Metrics};
use crate::model::Protocol;

/// A tunnel connection ready for streams; `alive` goes false when it ends.
#[derive(Clone)]
struct Conn {
    requests: SendRequest<Bytes>,
    alive: Arc<AtomicBool>,
}

/// One peer and thread's connection, behind an async lock so that concurrent first
/// requests dial once.
type Slot = Arc<tokio::sync::Mutex<Option<Conn>>>;

/// Opens streams to other nodes.
pub(crate) struct Dialer {
    connector: TlsConnector,
    /// Ends the connection tasks when the proxy stops.
    stop: CancellationToken,
    conns: Mutex<HashMap<(SocketAddr, ThreadId), Slot>>,
}

impl Dialer {
    pub(crate) fn new(config: Arc<ClientConfig>, stop: CancellationToken) -> Dialer {
        Dialer {
            connector: TlsConnector::from(config),
            stop,
            conns: Mutex::new(HashMap::new()),
        }
    }

    /// A stream through the node at `via` to `target` (an endpoint on that node), ready
    /// for data; fails if the connection, the request or the far side's connect fails
    /// within `timeout` (`NotFound`: `via` does not run `target`). `source`: the address
    /// UDP datagrams should come from.
    pub(crate) async fn connect(
        &self,
        via: SocketAddr,
        protocol: Protocol,
        target: SocketAddr,
        source: Option<IpAddr>,
        timeout: Duration,
        metrics: &Metrics,
    ) -> io::Result<Tunnel> {
        inc(&metrics.tunnel_streams_out);
        let attempt = async {
            let conn = self.conn(via, metrics).await?;
            let mut requests = conn.requests.ready().await.map_err(h2_io)?;
            let (response, send) = requests
                .send_request(request(protocol, target, source)?, false)
                .map_err(h2_io)?;
            let response = response.await.map_err(h2_io)?;
            match response.status() {
                StatusCode::OK => Ok(Tunnel::new(send, response.into_body())),
                StatusCode::NOT_FOUND => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{via} does not run endpoint {target}"),
                )),
                StatusCode::BAD_GATEWAY => Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("endpoint {target} behind {via} refused or timed out"),
                )),
                status => Err(io::Error::other(format!(
                    "tunnel to {target} through {via} answered {status}"
                ))),
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

    /// This thread's live connection to `via`, dialled if there is none.
    async fn conn(&self, via: SocketAddr, metrics: &Metrics) -> io::Result<Conn> {
        let slot = {
            let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
            conns
                .entry((via, std::thread::current().id()))
                .or_default()
                .clone()
        };
        let mut slot = slot.lock().await;
        if let Some(conn) = slot.as_ref().filter(|c| c.alive.load(Ordering::Acquire)) {
            return Ok(conn.clone());
        }
        *slot = None;
        let conn = self.dial(via, metrics).await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    async fn dial(&self, via: SocketAddr, metrics: &Metrics) -> io::Result<Conn> {
        inc(&metrics.tunnels_out);
        let tcp = TcpStream::connect(via).await?;
        tcp.set_nodelay(true)?;
        keep_alive(&tcp)?;
        let tls = self
            .connector
            .connect(ServerName::IpAddress(via.ip().into()), tcp)
            .await?;
        let (requests, connection) = h2::client::Builder::new()
            .initial_window_size(super::STREAM_WINDOW)
            .initial_connection_window_size(super::CONNECTION_WINDOW)
            .max_frame_size(super::MAX_FRAME)
            .enable_push(false)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(h2_io)?;
        let alive = Arc::new(AtomicBool::new(true));
        let conn = Conn {
            requests,
            alive: alive.clone(),
        };
        let stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                r = connection => match r {
                    Ok(()) => tracing::debug!(%via, "tunnel connection closed"),
                    Err(e) => tracing::debug!(%via, error = %e, "tunnel connection failed"),
                },
            }
            alive.store(false, Ordering::Release);
        });
        Ok(conn)
    }
}

/// The request that opens a stream to `target`.
fn request(
    protocol: Protocol,
    target: SocketAddr,
    source: Option<IpAddr>,
) -> io::Result<Request<()>> {
    let path = match protocol {
        Protocol::Tcp => super::TCP_PATH,
        Protocol::Udp => super::UDP_PATH,
    };
    let uri = Uri::builder()
        .scheme("https")
        .authority(target.to_string())
        .path_and_query(path)
        .build()
        .map_err(io::Error::other)?;
    let mut request = Request::new(());
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri;
    if let Some(source) = source {
        let value = HeaderValue::from_str(&source.to_string()).map_err(io::Error::other)?;
        request.headers_mut().insert(super::SOURCE_HEADER, value);
    }
    Ok(request)
}
