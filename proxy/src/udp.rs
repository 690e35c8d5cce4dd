//! UDP frontends. One socket per ClusterIP:port (or node address:nodePort) receives
//! every client's datagrams; each client address gets a session with its own upstream
//! socket connected to the endpoint it was given (or a tunnel to the endpoint's node),
//! so replies can be told apart and are sent back from the service address to the
//! right client. The endpoint sees a client pod's datagrams come from that pod's
//! address, and other clients' from the ClusterIP. Sessions end after the idle timeout,
//! when their endpoint leaves the Service, or when the endpoint refuses (ICMP port
//! unreachable); the client's next datagram then opens a new one.
//!
//! The receive loop owns one 64 KiB buffer and the session table; reply tasks read into
//! a per-thread buffer, so forwarding allocates nothing per datagram on the direct
//! path.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ipnet::IpNet;
use socket2::{Domain, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::balancer::{Slot, Target};
use crate::metrics::{inc, GaugeGuard, PortMetrics};
use crate::model::{Protocol, Route};
use crate::proxier::Shared;
use crate::tunnel;

const MAX_DATAGRAM: usize = 64 * 1024;
/// Datagrams handled per wake-up before the loop looks at its timers again.
const BATCH: usize = 64;
/// Datagrams queued towards a tunnel that is still connecting or busy.
const TUNNEL_QUEUE: usize = 1024;
/// Socket buffers asked for (the kernel caps them at net.core.[rw]mem_max): room for
/// bursts at tens of thousands of datagrams per second.
const SOCKET_BUFFER: usize = 4 << 20;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; MAX_DATAGRAM].into_boxed_slice());
}

/// Milliseconds since the first call: a cheap clock sessions record activity with.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A frontend socket on `addr`. No SO_REUSEADDR: with it two proxies on one host could
/// both bind the address and silently split its traffic.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// A socket connected to `target`, bound to a specific source address (never the
/// wildcard, which would take the port from every pod IP on the node): `source` when
/// given and usable (the client pod's address or the Service's ClusterIP, which a pod's
/// egress policy lets it answer), else loopback for a loopback target, else the node's
/// address.
pub(crate) fn connect(
    target: SocketAddr,
    source: Option<IpAddr>,
    node_ip: IpAddr,
) -> io::Result<UdpSocket> {
    if let Some(s) = source.filter(|s| s.is_ipv4() == target.is_ipv4()) {
        if let Ok(sock) = connect_from(target, s) {
            return Ok(sock);
        }
    }
    let fallback = match (target.ip(), node_ip) {
        (IpAddr::V4(t), _) if t.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        (IpAddr::V6(t), _) if t.is_loopback() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => node_ip,
        (IpAddr::V4(_), _) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (IpAddr::V6(_), _) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    connect_from(target, fallback)
}

fn connect_from(target: SocketAddr, source: IpAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(target), Type::DGRAM, None)?;
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect(&target.into())?;
    UdpSocket::from_std(socket.into())
}

/// The address a session's datagrams reach the endpoint from: the client's own when it
/// is a pod (a loopback address in the cluster's pod range, which any node can bind and
/// the endpoint's egress lets it answer), else the Service's ClusterIP.
fn session_source(
    client: IpAddr,
    cluster_ip: Option<IpAddr>,
    pods: Option<&IpNet>,
) -> Option<IpAddr> {
    match pods {
        Some(pods) if client.is_loopback() && pods.contains(&client) => Some(client),
        _ => cluster_ip,
    }
}

/// What the receive loop and a session's task share.
struct SessionState {
    last_active: AtomicU64,
    /// Set by the session's task when its upstream failed.
    dead: AtomicBool,
}

impl SessionState {
    fn touch(&self) {
        self.last_active.store(now_ms(), Ordering::Relaxed);
    }
}

enum Upstream {
    Direct(Arc<UdpSocket>),
    Tunnel(mpsc::Sender<Bytes>),
}

struct Session {
    endpoint: SocketAddr,
    /// The target generation at which `endpoint` was last known to be in it.
    generation: u64,
    upstream: Upstream,
    state: Arc<SessionState>,
    task: JoinHandle<()>,
    _active: GaugeGuard,
}

impl Drop for Session {
    fn drop(&mut self) {
        // Ends the reply task, which closes the upstream socket or tunnel.
        self.task.abort();
    }
}

/// Serves one UDP frontend until `stop`.
pub(crate) async fn serve(
    socket: UdpSocket,
    slot: Arc<Slot>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let socket = Arc::new(socket);
    let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let idle = shared.udp_idle_timeout;
    let period = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut sweep = tokio::time::interval(period);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut target = slot.get();
    let mut slot_version = slot.version();
    loop {
        let (n, client) = tokio::select! {
            _ = stop.cancelled() => return,
            _ = sweep.tick() => {
                expire(&mut sessions, idle);
                continue;
            }
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "udp receive failed");
                    continue;
                }
            },
        };
        if slot.version() != slot_version {
            // The frontend now serves another target: its sessions are stale.
            slot_version = slot.version();
            target = slot.get();
            sessions.clear();
        }
        forward(&mut sessions, &target, &socket, &shared, client, &buf[..n]).await;
        for _ in 0..BATCH {
            match socket.try_recv_from(&mut buf) {
                Ok((n, client)) => {
                    forward(&mut sessions, &target, &socket, &shared, client, &buf[..n]).await
                }
                Err(_) => break,
            }
        }
    }
}

fn expire(sessions: &mut HashMap<SocketAddr, Session>, idle: Duration) {
    let now = now_ms();
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    sessions.retain(|_, s| {
        !s.state.dead.load(Ordering::Relaxed)
            && now.saturating_sub(s.state.last_active.load(Ordering::Relaxed)) < idle_ms
    });
}

async fn forward(
    sessions: &mut HashMap<SocketAddr, Session>,
    target: &Arc<Target>,
    frontend: &Arc<UdpSocket>,
    shared: &Arc<Shared>,
    client: SocketAddr,
    data: &[u8],
) {
    let m = &target.metrics;
    let generation = target.generation();
    let valid = match sessions.get_mut(&client) {
        Some(s) if s.state.dead.load(Ordering::Relaxed) => false,
        Some(s) if s.generation == generation => true,
        // Endpoints changed: keep the session only if its endpoint is still there.
        Some(s) if target.snapshot().contains(s.endpoint) => {
            s.generation = generation;
            true
        }
        Some(_) => false,
        None => false,
    };
    if !valid {
        sessions.remove(&client);
        match open(target, frontend, shared, client, generation) {
            Some(s) => {
                sessions.insert(client, s);
            }
            None => return,
        }
    }
    let Some(s) = sessions.get(&client) else {
        return;
    };
    s.state.touch();
    let sent = match &s.upstream {
        Upstream::Direct(up) => match up.send(data).await {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(endpoint = %s.endpoint, error = %e, "udp send failed");
                if e.kind() == io::ErrorKind::ConnectionRefused {
                    s.state.dead.store(true, Ordering::Relaxed);
                }
                false
            }
        },
        Upstream::Tunnel(tx) => match tx.try_send(Bytes::copy_from_slice(data)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => false,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                s.state.dead.store(true, Ordering::Relaxed);
                false
            }
        },
    };
    if sent {
        inc(&m.datagrams_to_endpoint);
    } else {
        inc(&m.datagram_errors);
    }
}

/// A new session for `client`, or None when there is no endpoint (or its socket could
/// not be made).
fn open(
    target: &Arc<Target>,
    frontend: &Arc<UdpSocket>,
    shared: &Arc<Shared>,
    client: SocketAddr,
    generation: u64,
) -> Option<Session> {
    let m = &target.metrics;
    let snap = target.snapshot();
    let Some(ep) = target.pick(&snap, client.ip(), &[]) else {
        inc(&m.no_endpoint);
        return None;
    };
    let state = Arc::new(SessionState {
        last_active: AtomicU64::new(now_ms()),
        dead: AtomicBool::new(false),
    });
    let source = session_source(client.ip(), snap.source, shared.cluster_cidr.as_ref());
    let (upstream, task) = match &ep.route {
        Route::Direct => {
            let up = match connect(ep.addr, source, shared.node_ip) {
                Ok(up) => Arc::new(up),
                Err(e) => {
                    inc(&m.connect_errors);
                    tracing::debug!(endpoint = %ep.addr, error = %e, "udp upstream socket failed");
                    return None;
                }
            };
            let task = tokio::spawn(reply(
                up.clone(),
                frontend.clone(),
                client,
                state.clone(),
                target.metrics.clone(),
            ));
            (Upstream::Direct(up), task)
        }
        Route::Tunnel { via, .. } => {
            let (tx, rx) = mpsc::channel(TUNNEL_QUEUE);
            let task = tokio::spawn(tunnel_session(
                shared.clone(),
                *via,
                ep.addr,
                source,
                rx,
                frontend.clone(),
                client,
                state.clone(),
                target.metrics.clone(),
            ));
            (Upstream::Tunnel(tx), task)
        }
    };
    target.remember(&snap, client.ip(), ep.addr);
    inc(&m.udp_sessions);
    Some(Session {
        endpoint: ep.addr,
        generation,
        upstream,
        state,
        task,
        _active: GaugeGuard::new(target.metrics.clone(), |m| &m.active_udp_sessions),
    })
}

/// Waits for a datagram on `sock` and puts it in `into` (cleared first). Received
/// through the thread's buffer, so the caller keeps only what its largest datagram
/// needs.
pub(crate) async fn recv_owned(sock: &UdpSocket, into: &mut Vec<u8>) -> io::Result<()> {
    loop {
        sock.readable().await?;
        match SCRATCH.with_borrow_mut(|buf| {
            let n = sock.try_recv(buf)?;
            into.clear();
            into.extend_from_slice(&buf[..n]);
            Ok::<(), io::Error>(())
        }) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

/// Endpoint → client: every reply goes out of the frontend socket, so it comes from
/// the service address.
async fn reply(
    up: Arc<UdpSocket>,
    frontend: Arc<UdpSocket>,
    client: SocketAddr,
    state: Arc<SessionState>,
    m: Arc<PortMetrics>,
) {
    loop {
        if up.readable().await.is_err() {
            break;
        }
        let step = SCRATCH.with_borrow_mut(|buf| match up.try_recv(buf) {
            Ok(n) => match frontend.try_send_to(&buf[..n], client) {
                Ok(_) => Ok(None),
                // The frontend's buffer is full: keep this one datagram and wait.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Some(buf[..n].to_vec())),
                Err(e) => {
                    tracing::debug!(%client, error = %e, "udp reply failed");
                    inc(&m.datagram_errors);
                    Ok(None)
                }
            }
            .map(|p| (true, p)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok((false, None)),
            Err(e) => Err(e),
        });
        match step {
            Ok((received, pending)) => {
                if let Some(p) = pending {
                    if frontend.send_to(&p, client).await.is_err() {
                        inc(&m.datagram_errors);
                        continue;
                    }
                }
                if received {
                    state.touch();
                    inc(&m.datagrams_to_client);
                }
            }
            Err(e) => {
                // Typically ECONNREFUSED: nothing listens at the endpoint any more.
                tracing::debug!(%client, error = %e, "udp upstream failed");
                break;
            }
        }
    }
    state.dead.store(true, Ordering::Relaxed);
}

/// A session whose endpoint is on another node: datagrams framed over a tunnel.
#[allow(clippy::too_many_arguments)]
async fn tunnel_session(
    shared: Arc<Shared>,
    via: SocketAddr,
    endpoint: SocketAddr,
    source: Option<IpAddr>,
    mut rx: mpsc::Receiver<Bytes>,
    frontend: Arc<UdpSocket>,
    client: SocketAddr,
    state: Arc<SessionState>,
    m: Arc<PortMetrics>,
) {
    let tls = match shared
        .dialer
        .connect(
            via,
            Protocol::Udp,
            endpoint,
            source,
            shared.connect_timeout,
            &shared.metrics,
        )
        .await
    {
        Ok(tls) => tls,
        Err(e) => {
            inc(&m.connect_errors);
            tracing::debug!(%via, %endpoint, error = %e, "udp tunnel failed");
            state.dead.store(true, Ordering::Relaxed);
            return;
        }
    };
    let (mut rd, mut wr) = tokio::io::split(tls);
    let to_endpoint = async {
        let mut frame = Vec::new();
        while let Some(d) = rx.recv().await {
            tunnel::write_frame(&mut wr, &mut frame, &d, rx.is_empty()).await?;
        }
        Ok::<(), io::Error>(())
    };
    let to_client = frames_to_client(&mut rd, &frontend, client, &state, &m);
    let r = tokio::select! {
        r = to_endpoint => r,
        r = to_client => r,
    };
    if let Err(e) = r {
        tracing::debug!(%via, %endpoint, error = %e, "udp tunnel ended");
    }
    state.dead.store(true, Ordering::Relaxed);
}

/// Tunnel → client, until the tunnel ends.
async fn frames_to_client(
    rd: &mut (impl tokio::io::AsyncRead + Unpin),
    frontend: &UdpSocket,
    client: SocketAddr,
    state: &SessionState,
    m: &PortMetrics,
) -> io::Result<()> {
    let mut buf = Vec::new();
    loop {
        tunnel::read_frame(rd, &mut buf).await?;
        state.touch();
        frontend.send_to(&buf, client).await?;
        inc(&m.datagrams_to_client);
    }
}
