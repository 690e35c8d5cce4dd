//! TCP frontends: accept, pick an endpoint (affinity, then round-robin), connect with a
//! timeout and retry another endpoint when a connect fails, then copy both ways with
//! half-close until both sides are done. With no endpoint the client is reset at once.
//!
//! The backend sees the client's address, as it would without a proxy in between: a
//! client on a loopback address (a pod: pod IPs are addresses of the node's loopback,
//! and a pod's sockets are bound to its IP) is connected onward *from* that address.
//! Other clients (a NodePort reached from another host) arrive from the address the
//! kernel picks, as before.
//!
//! The copy between two plain sockets reads into a per-thread 64 KiB buffer and writes
//! straight on, so an idle connection holds no buffer at all (10,000 idle connections
//! cost only their sockets); only data the receiver cannot take yet is kept, in a
//! buffer that lives until it is written. A direction carrying bulk data moves it with
//! splice(2) instead (`splice.rs`), without copying it through the proxy.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

use crate::balancer::{Slot, Target};
use crate::metrics::{add, inc, GaugeGuard, PortMetrics};
use crate::model::{Protocol, Route};
use crate::proxier::Shared;
use crate::splice::{self, Pipe};
use crate::tunnel::Tunnel;

/// Connect attempts per connection (each on another endpoint).
const MAX_ATTEMPTS: usize = 3;
const BUFFER_SIZE: usize = 64 * 1024;
/// A read of at least this much means the direction carries bulk data. Not the whole
/// buffer: on loopback (MTU 64 KiB) a segment is a little under 64 KiB, so reads keeping
/// up with a fast sender rarely fill it.
const BULK_START: usize = 32 * 1024;
/// A bulk direction that finds less than this waiting goes back to plain reads.
const BULK_MIN: usize = 16 * 1024;

thread_local! {
    /// The buffer every plain-socket copy on this thread reads into.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; BUFFER_SIZE].into_boxed_slice());
}

/// A non-blocking listening socket on `addr` (SO_REUSEADDR, so a restarted proxy can
/// listen again while old connections linger in TIME_WAIT).
pub(crate) fn listen_socket(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// [`listen_socket`] on the current runtime.
pub(crate) fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::from_std(listen_socket(addr)?)
}

/// Accepts connections on one frontend, on every worker, until `stop`.
pub(crate) fn serve(
    listener: std::net::TcpListener,
    slot: Arc<Slot>,
    shared: Arc<Shared>,
    stop: tokio_util::sync::CancellationToken,
) {
    let workers_shared = shared.clone();
    shared.workers.serve(listener, stop, move |conn, peer| {
        handle(conn, peer, slot.get(), workers_shared.clone())
    });
}

/// What a connection is forwarded over.
pub(crate) enum Upstream {
    Plain(TcpStream),
    Tunnel(Tunnel),
}

async fn handle(client: TcpStream, peer: SocketAddr, target: Arc<Target>, shared: Arc<Shared>) {
    let m = target.metrics.clone();
    inc(&m.connections);
    let _active = GaugeGuard::new(m.clone(), |m| &m.active_connections);
    let _ = client.set_nodelay(true);
    // Boxed: connecting (a tunnel stream's TLS and HTTP/2 state included) takes 3.5 KiB
    // of future, relaying 1 KiB, and a task is as large as its largest state; an idle
    // connection should not carry the connect's size for its whole life.
    let connecting = Box::pin(connect(&target, peer.ip(), &shared));
    let upstream = tokio::select! {
        _ = shared.stop.cancelled() => return,
        u = connecting => u,
    };
    let Some((upstream, endpoint)) = upstream else {
        reset(&client);
        return;
    };
    let result = tokio::select! {
        _ = shared.stop.cancelled() => return,
        r = relay(client, upstream, &m) => r,
    };
    if let Err(e) = result {
        inc(&m.stream_errors);
        tracing::debug!(port = %target.key.port, %peer, %endpoint, error = %e, "connection ended with an error");
    }
}

/// Connects to an endpoint for a client, trying up to [`MAX_ATTEMPTS`] endpoints.
/// `None` when there is no endpoint or every attempt failed.
async fn connect(
    target: &Target,
    client: IpAddr,
    shared: &Shared,
) -> Option<(Upstream, SocketAddr)> {
    let snap = target.snapshot();
    let m = &target.metrics;
    if snap.endpoints.is_empty() {
        inc(&m.no_endpoint);
        return None;
    }
    let mut failed: Vec<SocketAddr> = Vec::new();
    for _ in 0..MAX_ATTEMPTS.min(snap.endpoints.len()) {
        let ep = target.pick(&snap, client, &failed)?;
        let attempt = match &ep.route {
            Route::Direct => dial(ep.addr, Some(client), shared.connect_timeout)
                .await
                .map(Upstream::Plain),
            Route::Tunnel { via, .. } => shared
                .dialer
                .connect(
                    *via,
                    Protocol::Tcp,
                    ep.addr,
                    Some(client).filter(IpAddr::is_loopback),
                    shared.connect_timeout,
                    &shared.metrics,
                )
                .await
                .map(Upstream::Tunnel),
        };
        match attempt {
            Ok(up) => {
                target.remember(&snap, client, ep.addr);
                return Some((up, ep.addr));
            }
            Err(e) => {
                inc(&m.connect_errors);
                tracing::debug!(port = %target.key.port, endpoint = %ep.addr, route = ?ep.route, error = %e, "connect failed");
                target.forget(client, ep.addr);
                failed.push(ep.addr);
            }
        }
    }
    None
}

/// A plain TCP connection to `addr`, with Nagle off, from `client` when that is a
/// loopback address of `addr`'s family (so the backend sees the client's address);
/// from the address the kernel picks otherwise, or when `client` cannot be bound.
pub(crate) async fn dial(
    addr: SocketAddr,
    client: Option<IpAddr>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let from = client.filter(|c| c.is_loopback() && c.is_ipv4() == addr.is_ipv4());
    let connecting = async {
        match from.map(bound_to) {
            Some(Ok(socket)) => socket.connect(addr).await,
            Some(Err(e)) => {
                tracing::debug!(client = ?from, error = %e, "cannot connect from the client's address");
                TcpStream::connect(addr).await
            }
            None => TcpStream::connect(addr).await,
        }
    };
    let stream = tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A socket bound to `ip` whose port is left to connect(2) to choose: with the port
/// chosen at bind, every connection from one address would take a port of its own from
/// one range for all destinations; at connect, ports are only unique per destination,
/// as for an unbound socket (IP_BIND_ADDRESS_NO_PORT).
fn bound_to(ip: IpAddr) -> io::Result<tokio::net::TcpSocket> {
    let socket = match ip {
        IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    let on: libc::c_int = 1;
    // SAFETY: the descriptor is the socket's own, and the option value is a c_int of
    // the length given.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    socket.bind(SocketAddr::new(ip, 0))?;
    Ok(socket)
}

/// Closes `stream` with a RST rather than a FIN: the client learns at once that there
/// is nothing behind the address.
pub(crate) fn reset(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

async fn relay(client: TcpStream, upstream: Upstream, m: &PortMetrics) -> io::Result<()> {
    match upstream {
        Upstream::Plain(up) => {
            let ended = Ended::default();
            let r = tokio::try_join!(
                pump(&client, &up, &m.bytes_to_endpoint, &ended),
                pump(&up, &client, &m.bytes_to_client, &ended)
            );
            if r.is_err() {
                // Pass the failure on as a reset to whichever side is still there.
                reset(&client);
                reset(&up);
            }
            r.map(|_| ())
        }
        Upstream::Tunnel(tunnel) => {
            tunnel
                .relay_tcp(&client, &m.bytes_to_endpoint, &m.bytes_to_client)
                .await
        }
    }
}

/// One read from `from` into `buf`. A read that does not fill the buffer has drained
/// the socket (epoll is edge-triggered), so the socket's readiness is cleared at once,
/// as tokio's own `poll_read` does: the next wait goes straight to the reactor instead
/// of costing a read that would only say `WouldBlock` — one system call less per
/// message, which is most of a small request's cost.
fn read_draining(from: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    use std::io::Read as _;
    let mut got = 0;
    let result = from.try_io(tokio::io::Interest::READABLE, || {
        let n = (&*SockRef::from(from)).read(buf)?;
        got = n;
        if n > 0 && n < buf.len() {
            // Data, and the socket is drained: report WouldBlock so the readiness goes.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match result {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        other => other,
    }
}

/// One read from `from` for a consumer that keeps the bytes (a tunnel stream): through
/// this thread's buffer, then copied out at the size read, so a waiting connection holds
/// no buffer. `None` at the end of the stream; `WouldBlock` when nothing was waiting.
pub(crate) fn read_owned(from: &TcpStream) -> io::Result<Option<bytes::Bytes>> {
    SCRATCH.with_borrow_mut(|buf| match read_draining(from, buf)? {
        0 => Ok(None),
        n => Ok(Some(bytes::Bytes::copy_from_slice(&buf[..n]))),
    })
}

/// Whether one direction of a relay has ended. The first to end passes its half-close
/// on (the other keeps flowing); the second need not: both sockets are closed right
/// after, and a close sends the FIN (nothing is left unread on either socket then, which
/// would make it a reset). That saves a system call per connection, whose cost is the
/// same FIN's work done twice over on loopback.
#[derive(Default)]
struct Ended(std::sync::atomic::AtomicBool);

impl Ended {
    fn end(&self, to: &TcpStream) -> io::Result<()> {
        if self.0.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        pass_half_close(to)
    }
}

/// Copies `from` → `to` until `from` ends, then passes the half-close on (`ended`).
///
/// Small messages are read and written (cheapest for request/response traffic); once a
/// read brings [`BULK_START`] bytes the direction is carrying bulk data and moves it
/// with splice instead, until a step finds less than [`BULK_MIN`] bytes waiting.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    bytes: &AtomicU64,
    ended: &Ended,
) -> io::Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    let mut bulk = false;
    loop {
        if bulk {
            from.readable().await?;
            let Ok(pipe) = Pipe::take() else {
                // No pipe (out of file descriptors): copy instead.
                bulk = false;
                continue;
            };
            match splice_step(from, to, pipe).await? {
                None => return ended.end(to),
                Some(n) => {
                    add(bytes, n as u64);
                    bulk = n == 0 || n >= BULK_MIN;
                }
            }
            continue;
        }
        from.readable().await?;
        let step = SCRATCH.with_borrow_mut(|buf| -> io::Result<Option<usize>> {
            let n = match read_draining(from, buf) {
                Ok(0) => return Ok(None),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Some(0)),
                Err(e) => return Err(e),
            };
            let mut off = 0;
            while off < n {
                match to.try_write(&buf[off..n]) {
                    Ok(w) => off += w,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            if off < n {
                pending.extend_from_slice(&buf[off..n]);
            }
            Ok(Some(n))
        })?;
        let Some(n) = step else {
            return ended.end(to);
        };
        add(bytes, n as u64);
        bulk = n >= BULK_START;
        if !pending.is_empty() {
            let mut off = 0;
            while off < pending.len() {
                to.writable().await?;
                match to.try_write(&pending[off..]) {
                    Ok(w) => off += w,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
            // Give the memory back: an idle connection holds no buffer.
            pending = Vec::new();
        }
    }
}

/// The end of one direction: shut down the other socket's write side.
pub(crate) fn pass_half_close(to: &TcpStream) -> io::Result<()> {
    match SockRef::from(to).shutdown(Shutdown::Write) {
        Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
        _ => Ok(()),
    }
}

/// Moves what `from` has received (up to a pipe's worth) into `to` through `pipe`:
/// `None` at the end of the stream, else how many bytes moved (0 when `from` had
/// nothing after all).
async fn splice_step(
    from: &TcpStream,
    to: &TcpStream,
    mut pipe: Pipe,
) -> io::Result<Option<usize>> {
    let n = match from.try_io(tokio::io::Interest::READABLE, || {
        pipe.fill(from.as_raw_fd(), splice::PIPE_SIZE)
    }) {
        Ok(0) => {
            pipe.give_back();
            return Ok(None);
        }
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            pipe.give_back();
            return Ok(Some(0));
        }
        Err(e) => return Err(e),
    };
    while pipe.len() > 0 {
        match to.try_io(tokio::io::Interest::WRITABLE, || pipe.drain(to.as_raw_fd())) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
            Err(e) => return Err(e),
        }
    }
    pipe.give_back();
    Ok(Some(n))
}
