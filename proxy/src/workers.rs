//! The data path's threads: forwarding runs on a few threads of its own, each a
//! single-threaded tokio runtime, instead of on the runtime of the process the proxy
//! lives in (the agent's, busy with pods).
//!
//! Every TCP listener (Service frontends and the tunnel) is registered with every
//! worker's reactor; whichever worker gets to a new connection first accepts it and
//! hands it to the worker with the fewest connections (itself on a tie; without the
//! hand-over a burst of connections lands mostly on whichever worker is awake). The
//! connection stays on that worker until it ends, as HAProxy's threads keep theirs.
//! Nothing about a connection crosses threads afterwards: on a work-stealing runtime
//! each message of a forwarded request woke another thread now and then (an eventfd
//! write, a futex), and the scheduler's bookkeeping ran per poll — together about 15% of
//! the proxy's CPU per keep-alive request on a 2-core machine (`cargo bench --bench
//! proxy`). Sharing the listener, rather than a listener per worker (SO_REUSEPORT),
//! costs no extra file descriptor per frontend and lets no other process join the port.
//!
//! The control side (watches, the proxier, UDP, `/metrics`) stays on the caller's
//! runtime.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::SockRef;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// Pause after accept fails (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The data path's threads.
#[derive(Clone)]
pub(crate) struct Workers {
    inner: Arc<Inner>,
}

struct Inner {
    handles: Vec<Handle>,
    /// Connections running on each worker.
    active: Vec<AtomicUsize>,
}

impl Workers {
    /// Starts `threads` workers (at least one); they run until `stop`. The future
    /// resolves once every worker thread has ended.
    pub(crate) fn start(
        threads: usize,
        stop: &CancellationToken,
    ) -> io::Result<(Workers, impl Future<Output = ()> + Send + 'static)> {
        let mut handles = Vec::new();
        let mut done = Vec::new();
        for i in 0..threads.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            let (tx, rx) = tokio::sync::oneshot::channel();
            done.push(rx);
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("proxy-worker-{i}"))
                .spawn(move || {
                    rt.block_on(stop.cancelled());
                    // Dropping the runtime ends the connections still on it.
                    drop(rt);
                    let _ = tx.send(());
                })?;
        }
        let finished = async move {
            for rx in done {
                let _ = rx.await;
            }
        };
        let active = handles.iter().map(|_| AtomicUsize::new(0)).collect();
        let inner = Arc::new(Inner { handles, active });
        Ok((Workers { inner }, finished))
    }

    /// Accepts connections on `listener` on every worker until `stop`, and runs
    /// `serve(connection, peer)` for each on the worker with the fewest connections
    /// (the one that accepted it when that is among them).
    pub(crate) fn serve<F, Fut>(
        &self,
        listener: std::net::TcpListener,
        stop: CancellationToken,
        serve: F,
    ) where
        F: Fn(TcpStream, SocketAddr) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = Arc::new(listener);
        for (i, h) in self.inner.handles.iter().enumerate() {
            h.spawn(accept_loop(
                i,
                self.clone(),
                listener.clone(),
                stop.clone(),
                serve.clone(),
            ));
        }
    }

    /// The worker a connection accepted on worker `me` should run on: the least busy,
    /// preferring `me` (no hand-over) on a tie.
    fn pick(&self, me: usize) -> usize {
        let load = |i: usize| self.inner.active[i].load(Ordering::Relaxed);
        let mut best = me;
        for i in 0..self.inner.active.len() {
            if load(i) < load(best) {
                best = i;
            }
        }
        best
    }

    /// Runs `serve` for `conn` on worker `at` (`me` is the current one).
    fn run<F, Fut>(
        &self,
        me: usize,
        at: usize,
        conn: std::net::TcpStream,
        peer: SocketAddr,
        serve: F,
    ) where
        F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.inner.active[at].fetch_add(1, Ordering::Relaxed);
        // Made before the task, so a task dropped unpolled (its worker stopping) still
        // counts the connection off.
        let done = ActiveGuard {
            workers: self.clone(),
            at,
        };
        let task = async move {
            let _done = done;
            // Registered with the reactor of the worker it runs on.
            match TcpStream::from_std(conn) {
                Ok(conn) => serve(conn, peer).await,
                Err(e) => tracing::warn!(%peer, error = %e, "cannot register a connection"),
            }
        };
        if at == me {
            tokio::spawn(task);
        } else {
            self.inner.handles[at].spawn(task);
        }
    }
}

/// Counts a connection off its worker when it ends.
struct ActiveGuard {
    workers: Workers,
    at: usize,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.workers.inner.active[self.at].fetch_sub(1, Ordering::Relaxed);
    }
}

async fn accept_loop<F, Fut>(
    me: usize,
    workers: Workers,
    listener: Arc<std::net::TcpListener>,
    stop: CancellationToken,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    // SAFETY: the AsyncFd owns an Arc of the listener, so the descriptor it registers
    // stays open (and is not replaced) for as long as the AsyncFd lives.
    let registered = unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) };
    let fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch a listener on a proxy worker");
            return;
        }
    };
    // Out of descriptors, every accept fails until a connection closes: one warning per
    // spell of failures, not one per retry.
    let mut failing = false;
    loop {
        let mut guard = tokio::select! {
            _ = stop.cancelled() => return,
            r = fd.readable() => match r {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(error = %e, "listener readiness failed");
                    return;
                }
            },
        };
        // Another worker may have taken the connection: WouldBlock clears the readiness.
        // accept4 makes the socket non-blocking in the same system call.
        let Ok(accepted) = guard.try_io(|l| {
            SockRef::from(&**l.get_ref()).accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
        }) else {
            continue;
        };
        match accepted.and_then(|(socket, addr)| {
            let peer = addr
                .as_socket()
                .ok_or_else(|| io::Error::other("a connection from a non-IP address"))?;
            Ok((std::net::TcpStream::from(socket), peer))
        }) {
            Ok((conn, peer)) => {
                failing = false;
                let at = workers.pick(me);
                workers.run(me, at, conn, peer, serve.clone());
            }
            Err(e) => {
                if failing {
                    tracing::debug!(error = %e, "accept failed again");
                } else {
                    let retry_ms = ACCEPT_ERROR_PAUSE.as_millis() as u64;
                    tracing::warn!(error = %e, retry_ms, "accept failed; retrying");
                }
                failing = true;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn connections_are_spread_over_the_workers_and_stay_there() {
        let stop = CancellationToken::new();
        let (workers, finished) = Workers::start(2, &stop).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let record = seen.clone();
        let held = stop.clone();
        workers.serve(listener, stop.clone(), move |conn, _peer| {
            let record = record.clone();
            let held = held.clone();
            async move {
                let name = std::thread::current().name().unwrap_or("?").to_string();
                record.lock().unwrap().push(name);
                // Held open until the workers stop, so each counts as running.
                held.cancelled().await;
                drop(conn);
            }
        });
        let mut clients = Vec::new();
        for i in 1..=4 {
            clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while seen.lock().unwrap().len() < i {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "connection {i} not served"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let mut names = seen.lock().unwrap().clone();
        names.sort();
        assert_eq!(
            names,
            [
                "proxy-worker-0",
                "proxy-worker-0",
                "proxy-worker-1",
                "proxy-worker-1"
            ]
        );
        assert_eq!(
            workers
                .inner
                .active
                .iter()
                .map(|a| a.load(Ordering::Relaxed))
                .collect::<Vec<_>>(),
            [2, 2]
        );
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), finished)
            .await
            .expect("the worker threads end once stopped");
        assert!(workers
            .inner
            .active
            .iter()
            .all(|a| a.load(Ordering::Relaxed) == 0));
    }
}
