//! http-echo: an HTTP/1.1 server for WASI preview 2 (wasm32-wasip2, `std::net`).
//!
//! Listens on `0.0.0.0:$PORT` (default 8080) and answers:
//! - `/healthz`: 200 `ok` (500 while the file named by `UNHEALTHY_FILE` exists);
//! - `/ready`: 200 while the file named by `READY_FILE` exists, else 503 — tests flip
//!   readiness by writing into a shared volume; always 200 when `READY_FILE` is unset;
//! - `/status/NNN`: that status;
//! - anything else: 200 with the pod's name (`POD_NAME`, else `HOSTNAME`) and an echo of
//!   the method, path, headers and body.
//!
//! One line per request goes to stdout. Connections are served from one thread (a
//! preview 2 guest has none to spare) by a `poll` loop, so an idle keep-alive client or
//! a slow one never holds up the others; an idle connection closes after
//! `KEEPALIVE_TIMEOUT_MS` (default 15000) and a request must arrive whole within
//! `REQUEST_TIMEOUT_MS` (default 10000) of its first byte.

mod http;
mod poll;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use http::{Parsed, Settings};

/// Connections beyond this wait in the listen backlog until others close.
const MAX_CONNECTIONS: usize = 512;

struct Conn {
    stream: TcpStream,
    peer: String,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    /// Close once `outbuf` is written.
    closing: bool,
    /// When the connection is dropped if nothing completes before.
    deadline: Instant,
    /// When the first byte of the request now being buffered arrived.
    request_started: Option<Instant>,
}

struct Server {
    listener: TcpListener,
    conns: Vec<Conn>,
    settings: Settings,
    keepalive: Duration,
    request_timeout: Duration,
}

fn main() {
    toolbox::run_tool_if_invoked();

    let port = toolbox::env_u64("PORT", 8080);
    let Ok(port) = u16::try_from(port) else {
        eprintln!("PORT={port} is not a port number");
        toolbox::exit(2);
    };
    let settings = Settings {
        pod: toolbox::pod_name(),
        ready_file: std::env::var("READY_FILE").ok().filter(|s| !s.is_empty()),
        unhealthy_file: std::env::var("UNHEALTHY_FILE")
            .ok()
            .filter(|s| !s.is_empty()),
    };
    let addr = SocketAddr::from(([0, 0, 0, 0], port));
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("http-echo: bind {addr}: {e}");
            toolbox::exit(1);
        }
    };
    if let Err(e) = listener.set_nonblocking(true) {
        eprintln!("http-echo: making the listener non-blocking: {e}");
        toolbox::exit(1);
    }
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| addr.to_string());
    println!(
        "{} http-echo pod={} listening on {local}",
        toolbox::timestamp(),
        settings.pod
    );
    let mut server = Server {
        listener,
        conns: Vec::new(),
        settings,
        keepalive: Duration::from_millis(toolbox::env_u64("KEEPALIVE_TIMEOUT_MS", 15_000)),
        request_timeout: Duration::from_millis(toolbox::env_u64("REQUEST_TIMEOUT_MS", 10_000)),
    };
    loop {
        if let Err(e) = server.turn() {
            eprintln!("http-echo: {e}");
            toolbox::exit(1);
        }
    }
}

impl Server {
    /// Waits for something to do, then does it: accept, read and answer, write, expire.
    fn turn(&mut self) -> io::Result<()> {
        let accepting = self.conns.len() < MAX_CONNECTIONS;
        let mut fds = Vec::with_capacity(self.conns.len() + 1);
        for c in &self.conns {
            fds.push(poll::PollFd::new(
                c.stream.as_raw_fd(),
                !c.outbuf.is_empty(),
            ));
        }
        if accepting {
            fds.push(poll::PollFd::new(self.listener.as_raw_fd(), false));
        }
        let now = Instant::now();
        let timeout = self
            .conns
            .iter()
            .map(|c| c.deadline.saturating_duration_since(now))
            .min()
            .map(|d| i32::try_from(d.as_millis() + 1).unwrap_or(i32::MAX))
            .unwrap_or(-1);
        poll::wait(&mut fds, timeout)?;

        let now = Instant::now();
        let mut keep = Vec::with_capacity(self.conns.len());
        for (mut conn, fd) in std::mem::take(&mut self.conns).into_iter().zip(&fds) {
            let ready = fd.readable() || fd.writable() || fd.broken();
            let alive = (!ready || self.serve(&mut conn, now)) && conn.deadline > now;
            if alive {
                keep.push(conn);
            } else if conn.request_started.is_some() && conn.deadline <= now {
                // A request that never finished arriving: say so before closing.
                let resp = http::Response {
                    status: 408,
                    body: "request timeout\n".to_string(),
                };
                let _ =
                    conn.stream
                        .write_all(&http::serialize(&resp, &self.settings.pod, false, true));
            }
        }
        self.conns = keep;
        if accepting && fds.last().is_some_and(|f| f.readable() || f.broken()) {
            self.accept(now);
        }
        Ok(())
    }

    fn accept(&mut self, now: Instant) {
        while self.conns.len() < MAX_CONNECTIONS {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    if let Err(e) = stream.set_nonblocking(true) {
                        eprintln!("http-echo: {peer}: {e}");
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    self.conns.push(Conn {
                        stream,
                        peer: peer.to_string(),
                        inbuf: Vec::new(),
                        outbuf: Vec::new(),
                        closing: false,
                        deadline: now + self.keepalive,
                        request_started: None,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // A connection reset before accept, or out of descriptors: log it
                    // and let the next turn retry rather than die.
                    eprintln!("http-echo: accept: {e}");
                    return;
                }
            }
        }
    }

    /// Reads what arrived, answers every complete request, writes what it can. Returns
    /// whether the connection stays open.
    fn serve(&self, conn: &mut Conn, now: Instant) -> bool {
        let mut eof = false;
        let mut buf = [0u8; 8192];
        loop {
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    if conn.inbuf.is_empty() {
                        conn.request_started = Some(now);
                    }
                    conn.inbuf.extend_from_slice(&buf[..n]);
                    if conn.inbuf.len() > http::MAX_HEAD + http::MAX_BODY {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        while !conn.closing {
            match http::parse(&conn.inbuf) {
                Parsed::Partial => break,
                Parsed::Complete(req, used) => {
                    conn.inbuf.drain(..used);
                    conn.request_started = (!conn.inbuf.is_empty()).then_some(now);
                    let resp = http::respond(&req, &conn.peer, &self.settings);
                    conn.closing = !req.keep_alive();
                    let bytes = http::serialize(
                        &resp,
                        &self.settings.pod,
                        req.method == "HEAD",
                        conn.closing,
                    );
                    log(&conn.peer, &req, resp.status);
                    conn.outbuf.extend_from_slice(&bytes);
                }
                Parsed::Invalid(status, why) => {
                    let resp = http::Response {
                        status,
                        body: format!("{why}\n"),
                    };
                    println!(
                        "{} {} invalid request: {status} {why}",
                        toolbox::timestamp(),
                        conn.peer
                    );
                    conn.outbuf.extend_from_slice(&http::serialize(
                        &resp,
                        &self.settings.pod,
                        false,
                        true,
                    ));
                    conn.inbuf.clear();
                    conn.request_started = None;
                    conn.closing = true;
                }
            }
        }
        if eof {
            // The client is done sending; answer what it asked, then close.
            conn.closing = true;
            conn.inbuf.clear();
            conn.request_started = None;
        }
        while !conn.outbuf.is_empty() {
            match conn.stream.write(&conn.outbuf) {
                Ok(0) => return false,
                Ok(n) => {
                    conn.outbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        if conn.outbuf.is_empty() && conn.closing {
            let _ = conn.stream.flush();
            let _ = conn.stream.shutdown(std::net::Shutdown::Write);
            return false;
        }
        conn.deadline = match conn.request_started {
            Some(start) => start + self.request_timeout,
            None => now + self.keepalive,
        };
        true
    }
}

/// One line per request, like a web server's access log.
fn log(peer: &str, req: &http::Request, status: u16) {
    println!(
        "{} {peer} \"{} {} {}\" {status} \"{}\"",
        toolbox::timestamp(),
        req.method,
        req.target,
        req.version,
        req.header("user-agent").unwrap_or("-"),
    );
}
