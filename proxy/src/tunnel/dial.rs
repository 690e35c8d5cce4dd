//! The dialling side: tunnel connections to other nodes, kept and reused, and streams
//! opened on them.
//!
//! One connection per peer node and per thread that asks: the proxy's worker threads
//! are single-threaded runtimes, so a worker's streams and the connection task that
//! carries them run on the same thread. A connection is dialled on first use and kept
//! until it fails, it has carried no stream for the idle timeout, or the proxy stops;
//! the next request after that dials anew. A connection that ends leaves the pool, so
//! peers that are gone cost nothing.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
use crate::metrics::{inc, lock, Held, Metrics};
use crate::model::Protocol;

/// A tunnel connection ready for streams.
#[derive(Clone)]
struct Conn {
    requests: SendRequest<Bytes>,
    use_: Arc<Use>,
}

/// What the pool knows of a connection's use.
#[derive(Debug, Default)]
struct Use {
    /// Set when the connection ends or is retired: no new streams on it.
    retired: AtomicBool,
    /// Streams open on it now.
    streams: AtomicUsize,
    /// Whether it was handed out since the idle check last looked.
    touched: AtomicBool,
}

/// Held by a [`Tunnel`] while its stream is open: the connection is in use.
#[derive(Debug)]
pub(super) struct StreamUse(Arc<Use>);

impl StreamUse {
    fn new(use_: &Arc<Use>) -> StreamUse {
        use_.streams.fetch_add(1, Ordering::AcqRel);
        StreamUse(use_.clone())
    }
}

impl Drop for StreamUse {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One peer and thread's connection, behind an async lock so that concurrent first
/// requests dial once.
type Slot = Arc<tokio::sync::Mutex<Option<Conn>>>;
type Key = (SocketAddr, ThreadId);
type Pool = Arc<Mutex<HashMap<Key, Slot>>>;

/// Opens streams to other nodes.
pub(crate) struct Dialer {
    connector: TlsConnector,
    /// A connection without streams for this long is closed.
    idle_timeout: Duration,
    /// Ends the connection tasks when the proxy stops.
    stop: CancellationToken,
    pool: Pool,
}

impl Dialer {
    pub(crate) fn new(
        config: Arc<ClientConfig>,
        idle_timeout: Duration,
        stop: CancellationToken,
    ) -> Dialer {
        Dialer {
            connector: TlsConnector::from(config),
            idle_timeout,
            stop,
            pool: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A stream through the node at `via` to `target` (an endpoint on that node), ready
    /// for data; fails if the connection, the request or the far side's connect fails
    /// within `timeout` (`NotFound`: `via` does not run `target`). `source`: the address
    /// the far side should connect (TCP: the client's) or send (UDP: the client pod's or
    /// the ClusterIP) from.
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
            let in_use = StreamUse::new(&conn.use_);
            let mut requests = conn.requests.ready().await.map_err(h2_io)?;
            let (response, send) = requests
                .send_request(request(protocol, target, source)?, false)
                .map_err(h2_io)?;
            let response = response.await.map_err(h2_io)?;
            match response.status() {
                StatusCode::OK => Ok(Tunnel::new(send, response.into_body()).in_use(in_use)),
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
        let key = (via, std::thread::current().id());
        let slot = lock(&self.pool).entry(key).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some(conn) = slot
            .as_ref()
            .filter(|c| !c.use_.retired.load(Ordering::Acquire))
        {
            conn.use_.touched.store(true, Ordering::Release);
            return Ok(conn.clone());
        }
        *slot = None;
        let conn = self.dial(key, metrics).await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    async fn dial(&self, key: Key, metrics: &Metrics) -> io::Result<Conn> {
        let via = key.0;
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
        let conn = Conn {
            requests,
            use_: Arc::new(Use {
                touched: AtomicBool::new(true),
                ..Use::default()
            }),
        };
        let use_ = conn.use_.clone();
        let (pool, stop, idle) = (self.pool.clone(), self.stop.clone(), self.idle_timeout);
        let open = Held::new(metrics.tunnels_open_out.clone());
        tokio::spawn(async move {
            let _open = open;
            let mut connection = std::pin::pin!(connection);
            let ended = |r: Result<(), h2::Error>| match r {
                Ok(()) => tracing::debug!(%via, "tunnel connection closed"),
                Err(e) => tracing::debug!(%via, error = %e, "tunnel connection failed"),
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                r = &mut connection => ended(r),
                _ = idle_for(&use_, idle) => {
                    tracing::debug!(%via, "closing an idle tunnel connection");
                    retire(&pool, key, &use_).await;
                    // With the pool's handle gone h2 says goodbye (GOAWAY) once no
                    // stream is left, including one that raced the retirement.
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        r = connection => ended(r),
                    }
                    return;
                }
            }
            retire(&pool, key, &use_).await;
        });
        Ok(conn)
    }
}

/// Resolves once the connection has carried no stream for `idle`: checked every `idle`,
/// so it closes between one and two idle timeouts after its last stream.
async fn idle_for(use_: &Use, idle: Duration) {
    let mut ticks = tokio::time::interval(idle);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let touched = use_.touched.swap(false, Ordering::AcqRel);
        if !touched && use_.streams.load(Ordering::Acquire) == 0 {
            return;
        }
    }
}

/// Takes a connection out of the pool: no new streams go to it, the pool lets go of it
/// (so h2 closes it once its streams are done), and its key leaves the pool unless a
/// newer connection or a request is there.
async fn retire(pool: &Pool, key: Key, use_: &Arc<Use>) {
    use_.retired.store(true, Ordering::Release);
    let Some(slot) = lock(pool).get(&key).cloned() else {
        return;
    };
    {
        // Waits for a request that is dialling here, which replaces the connection.
        let mut conn = slot.lock().await;
        if conn.as_ref().is_some_and(|c| Arc::ptr_eq(&c.use_, use_)) {
            *conn = None;
        }
    }
    let mut pool = lock(pool);
    // Requests take the slot under the pool's lock: with only the pool and us holding it,
    // and nothing in it, nobody can be using it.
    let unused = pool.get(&key).is_some_and(|s| {
        Arc::ptr_eq(s, &slot)
            && Arc::strong_count(s) == 2
            && s.try_lock().is_ok_and(|c| c.is_none())
    });
    if unused {
        pool.remove(&key);
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
