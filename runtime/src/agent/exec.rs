//! `kubectl exec` on the node: `/exec/{namespace}/{pod}/{container}?command=…` upgraded
//! to a websocket speaking the Kubernetes channel protocol (`v5.channel.k8s.io`, or
//! `v4.channel.k8s.io` without the stdin close signal).
//!
//! The command runs as another instance of the container's module in the pod's sandbox
//! (see `sandbox`): argv is the command as given, so `kubectl exec P -- cat /data/f`
//! starts the module with `["cat", "/data/f"]`.
//!
//! Every binary message starts with its channel: 0 stdin (client → agent), 1 stdout,
//! 2 stderr, 3 the final `Status` (JSON), 4 terminal resizes (ignored: there is no
//! terminal), and in v5 255 "close", whose payload names the channel the client is done
//! with (`[255, 0]`: end of stdin). After the instance ends the agent sends the
//! remaining output, the Status on channel 3, and closes the websocket, which is how
//! the client learns the exit code (`NonZeroExitCode` with an `ExitCode` cause).
//!
//! Errors found before the upgrade (bad query, pod or container not here or not
//! running) are plain-text answers with a status code, which the API server turns into
//! `Status` objects.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::agent::sandbox::{ContainerSandbox, ExecIo, SandboxError, Sandboxes};
use crate::wasm::{Exit, OutputBudget, OutputSink};

/// The channel protocol with the stdin close signal (kubectl ≥ 1.30).
pub const PROTOCOL_V5: &str = "v5.channel.k8s.io";
/// The channel protocol with a Status on the error channel.
pub const PROTOCOL_V4: &str = "v4.channel.k8s.io";

/// Channel numbers (the first byte of every binary message).
pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5: "I am done with the channel in the payload".
pub const CLOSE: u8 = 255;

/// Output is sent in messages of at most this many bytes.
const MAX_MESSAGE: usize = 32 * 1024;
/// How long the client gets to answer our close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Stdin buffered between the websocket and the guest.
const STDIN_BUFFER: usize = 64 * 1024;
/// Guest output a session holds for a client that reads slower than the guest writes;
/// beyond it the guest's writes wait.
const OUTPUT_BUFFER: usize = 1024 * 1024;

/// What `/exec` was asked to do (kubelet's remotecommand options).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOptions {
    /// argv, command first.
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// Accepted but without effect: a wasm guest has no terminal.
    pub tty: bool,
}

impl ExecOptions {
    /// Reads the query the API server forwards: repeated `command`, and the streams
    /// either as the API names them (`stdin`, `stdout`, `stderr`) or as kube-apiserver
    /// sends them to a kubelet (`input`, `output`, `error`). The error is the message
    /// for a 400.
    pub fn parse(query: &str) -> Result<ExecOptions, String> {
        let pairs = query_pairs(query)?;
        let flag = |names: &[&str]| {
            pairs
                .iter()
                .filter(|(k, _)| names.contains(&k.as_str()))
                .any(|(_, v)| is_true(v))
        };
        let command: Vec<String> = pairs
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.clone())
            .collect();
        let tty = flag(&["tty"]);
        let opts = ExecOptions {
            stdin: flag(&["stdin", "input"]),
            stdout: flag(&["stdout", "output"]),
            // With a terminal, stderr is merged into stdout.
            stderr: flag(&["stderr", "error"]) && !tty,
            tty,
            command,
        };
        if opts.command.is_empty() {
            return Err("you must specify at least 1 command".into());
        }
        if !opts.stdin && !opts.stdout && !opts.stderr {
            return Err("you must specify at least 1 of stdin, stdout, stderr".into());
        }
        Ok(opts)
    }
}

/// The `key=value` pairs of a query string, repeated keys kept in order.
pub(crate) fn query_pairs(query: &str) -> Result<Vec<(String, String)>, String> {
    let uri: axum::http::Uri = format!("/?{query}")
        .parse()
        .map_err(|e| format!("invalid query {query:?}: {e}"))?;
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| format!("invalid query {query:?}: {e}"))
}

/// A query boolean: `1`, `t`, `true` (any case).
fn is_true(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "1" | "t" | "true")
}

/// The routes `/exec/{namespace}/{pod}/{container}` (GET and POST, as the kubelet).
pub fn router(sandboxes: Arc<Sandboxes>) -> Router {
    Router::new()
        .route(
            "/exec/{namespace}/{pod}/{container}",
            get(exec_handler).post(exec_handler),
        )
        .with_state(sandboxes)
}

fn text(code: StatusCode, message: impl Into<String>) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain")],
        message.into() + "\n",
    )
        .into_response()
}

/// The status code for a sandbox that could not be found.
pub(crate) fn sandbox_error(e: &SandboxError) -> Response {
    let code = match e {
        SandboxError::PodNotFound { .. } => StatusCode::NOT_FOUND,
        SandboxError::ContainerNotFound { .. } | SandboxError::NotRunning { .. } => {
            StatusCode::BAD_REQUEST
        }
    };
    text(code, e.to_string())
}

async fn exec_handler(
    State(sandboxes): State<Arc<Sandboxes>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Response {
    let opts = match ExecOptions::parse(query.as_deref().unwrap_or("")) {
        Ok(o) => o,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    let sandbox = match sandboxes.find(&namespace, &pod, Some(&container)) {
        Ok(s) => s,
        Err(e) => return sandbox_error(&e),
    };
    let websocket = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !websocket {
        return text(
            StatusCode::BAD_REQUEST,
            format!("exec is served over websockets only ({PROTOCOL_V5}, {PROTOCOL_V4}), not SPDY"),
        );
    }
    let (mut parts, _body) = req.into_parts();
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws,
        Err(rejection) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("exec: a bad websocket upgrade: {rejection}"),
            )
        }
    };
    let ws = ws.protocols([PROTOCOL_V5, PROTOCOL_V4]);
    let v5 = match ws.selected_protocol().and_then(|p| p.to_str().ok()) {
        Some(PROTOCOL_V5) => true,
        Some(_) => false,
        None => {
            return text(
                StatusCode::BAD_REQUEST,
                format!(
                    "none of the offered websocket subprotocols is supported; exec speaks {PROTOCOL_V5} and {PROTOCOL_V4}"
                ),
            )
        }
    };
    tracing::info!(%namespace, %pod, %container, command = ?opts.command, stdin = opts.stdin, v5, "exec");
    ws.on_upgrade(move |socket| async move {
        let code = session(socket, sandbox, opts, v5).await;
        tracing::info!(%namespace, %pod, %container, exit_code = ?code, "exec ended");
    })
}

/// Hands a guest's output to the session as channel messages. What is queued and not
/// yet sent is bounded by the session's [`OutputBudget`]: the guest waits beyond it.
struct ChannelSink {
    channel: u8,
    /// `None` when the client did not ask for this stream: the output is dropped.
    tx: Option<mpsc::UnboundedSender<Bytes>>,
    budget: OutputBudget,
}

impl OutputSink for ChannelSink {
    fn write(&self, bytes: &[u8]) {
        let Some(tx) = &self.tx else { return };
        for chunk in bytes.chunks(MAX_MESSAGE) {
            let _ = tx.send(framed(self.channel, chunk));
        }
    }

    fn budget(&self) -> Option<&OutputBudget> {
        // Dropped output needs no bound.
        self.tx.as_ref().map(|_| &self.budget)
    }
}

/// Waits for room for one stdin chunk; `None` once there is no stdin or the guest
/// closed it.
async fn room_for_stdin(tx: &Option<mpsc::Sender<Bytes>>) -> Option<mpsc::OwnedPermit<Bytes>> {
    tx.clone()?.reserve_owned().await.ok()
}

/// `channel` followed by `data`.
pub fn framed(channel: u8, data: &[u8]) -> Bytes {
    let mut m = Vec::with_capacity(data.len() + 1);
    m.push(channel);
    m.extend_from_slice(data);
    Bytes::from(m)
}

/// Runs the command for one websocket; returns the exit code, or `None` when the client
/// left first (the instance is then cancelled: nobody else owns it).
async fn session(
    socket: WebSocket,
    sandbox: ContainerSandbox,
    opts: ExecOptions,
    v5: bool,
) -> Option<i32> {
    let (mut to_client, mut from_client) = socket.split();
    // Unbounded as a channel, bounded in bytes by the budget the sinks spend and this
    // loop refunds as it sends.
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Bytes>();
    let budget = OutputBudget::new(OUTPUT_BUFFER);
    let sink = |channel: u8, wanted: bool| -> Arc<dyn OutputSink> {
        Arc::new(ChannelSink {
            channel,
            tx: wanted.then(|| out_tx.clone()),
            budget: budget.clone(),
        })
    };
    let stdout = sink(STDOUT, opts.stdout);
    let stderr = sink(STDERR, opts.stderr);
    drop(out_tx);

    // Stdin: websocket messages → a channel → a pipe the guest reads; dropping the
    // sender is end of input. A chunk the channel has no room for waits in `pending`
    // while this loop stops reading the client but keeps sending output: a guest
    // blocked on a full output budget must not wait on its own stdin (`cat` of a large
    // input), as a process's pipes are drained independently.
    let (mut stdin_tx, stdin_reader) = if opts.stdin {
        let (reader, mut writer) = tokio::io::duplex(STDIN_BUFFER);
        let (tx, mut rx) = mpsc::channel::<Bytes>(16);
        tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                if writer.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            let _ = writer.shutdown().await;
        });
        (
            Some(tx),
            Some(Box::new(reader) as Box<dyn AsyncRead + Send + Sync + Unpin>),
        )
    } else {
        (None, None)
    };

    let cancel = CancellationToken::new();
    let io = ExecIo {
        stdin: stdin_reader,
        stdout,
        stderr,
    };
    let run = sandbox.exec(opts.command.clone(), io, cancel.clone());
    tokio::pin!(run);
    let mut client_open = true;
    let mut pending: Option<Bytes> = None;
    let exit = loop {
        tokio::select! {
            exit = &mut run => break exit,
            Some(message) = out_rx.recv() => {
                let len = message.len() - 1;
                if to_client.send(Message::Binary(message)).await.is_err() {
                    cancel.cancel();
                    client_open = false;
                }
                budget.refund(len);
            }
            permit = room_for_stdin(&stdin_tx), if pending.is_some() => match permit {
                Some(permit) => {
                    permit.send(pending.take().unwrap_or_default());
                }
                // The guest closed its stdin.
                None => {
                    stdin_tx = None;
                    pending = None;
                }
            },
            message = from_client.next(), if client_open && pending.is_none() => match message {
                Some(Ok(Message::Binary(data))) => match data.first() {
                    Some(&STDIN) if stdin_tx.is_some() && data.len() > 1 => {
                        pending = Some(data.slice(1..));
                    }
                    Some(&CLOSE) if v5 && data.get(1) == Some(&STDIN) => stdin_tx = None,
                    // Resizes mean nothing without a terminal; other channels are the
                    // agent's to write.
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    client_open = false;
                    cancel.cancel();
                }
                Some(Ok(_)) => {}
            },
        }
    };
    drop(stdin_tx);
    if !client_open {
        return None;
    }
    // Everything the guest wrote is queued by the time it has exited.
    while let Ok(message) = out_rx.try_recv() {
        if to_client.send(Message::Binary(message)).await.is_err() {
            return None;
        }
    }
    if let (Exit::Trapped(why) | Exit::OutOfMemory(why), true) = (&exit, opts.stderr) {
        let line = format!("{why}\n");
        let _ = to_client
            .send(Message::Binary(framed(STDERR, line.as_bytes())))
            .await;
    }
    let status = exit_status(&opts.command, &exit);
    let _ = to_client
        .send(Message::Binary(framed(
            ERROR,
            status.to_string().as_bytes(),
        )))
        .await;
    let _ = to_client
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "".into(),
        })))
        .await;
    // Wait (briefly) for the client's close, completing the closing handshake.
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(message)) = from_client.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    Some(exit.exit_code())
}

/// The exit code as a process status byte: a guest may exit with any 32-bit code, the
/// client expects 0..=255; a code whose low byte is 0 must not read as success.
fn status_byte(code: i32) -> u8 {
    match (code & 0xff) as u8 {
        0 if code != 0 => 255,
        b => b,
    }
}

/// Go's `%v` of a string slice, as kubelet messages show commands: `[sh -c exit 3]`.
fn go_list(argv: &[String]) -> String {
    format!("[{}]", argv.join(" "))
}

/// The `Status` sent on the error channel when the command has ended.
pub fn exit_status(argv: &[String], exit: &Exit) -> Value {
    match exit {
        Exit::Exited(0) => json!({"metadata": {}, "status": "Success"}),
        Exit::Failed(why) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("error executing command {}: {why}", go_list(argv)),
            "reason": "InternalError",
        }),
        other => {
            let code = status_byte(other.exit_code());
            json!({
                "metadata": {},
                "status": "Failure",
                "message": format!(
                    "command terminated with non-zero exit code: error executing command {}, exit code {code}",
                    go_list(argv)
                ),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            })
        }
    }
}

/// Test helpers shared with the port-forward tests: serving a router over plain TCP
/// with upgrades, and a minimal websocket client (masked frames out, plain frames in).
#[cfg(test)]
pub(crate) mod test_support {
    use std::net::SocketAddr;

    use axum::Router;
    use bytes::{Buf, BytesMut};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tower::ServiceExt as _;

    /// Serves `router` on a free loopback port (HTTP/1.1 with upgrades, no TLS).
    pub async fn serve(router: Router) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let service = router.clone().map_request(
                    |req: axum::extract::Request<hyper::body::Incoming>| {
                        req.map(axum::body::Body::new)
                    },
                );
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(
                            TokioIo::new(tcp),
                            TowerToHyperService::new(service),
                        )
                        .await;
                });
            }
        });
        addr
    }

    /// Sends `head` (a request without its final blank line) and reads the response
    /// head; returns the connection, the head and any bytes read past it.
    pub async fn request(addr: SocketAddr, head: &str) -> (TcpStream, String, BytesMut) {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(format!("{head}\r\n").as_bytes())
            .await
            .expect("write");
        let mut buf = BytesMut::new();
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
                buf.advance(end + 4);
                return (tcp, head, buf);
            }
            let n = tcp.read_buf(&mut buf).await.expect("read");
            assert!(n > 0, "connection closed before a response: {buf:?}");
        }
    }

    /// A plain `GET path`: the response head and body.
    pub async fn get(addr: SocketAddr, path: &str) -> (String, String) {
        let (mut tcp, head, mut body) = request(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n"),
        )
        .await;
        let mut rest = Vec::new();
        let _ = tcp.read_to_end(&mut rest).await;
        body.extend_from_slice(&rest);
        (head, String::from_utf8_lossy(&body).into_owned())
    }

    /// One masked client frame.
    pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    /// A websocket client connection.
    pub struct WsClient {
        pub tcp: TcpStream,
        buf: BytesMut,
    }

    impl WsClient {
        /// Upgrades `GET path` offering `protocols`; returns the client (when the
        /// answer is 101) and the response head.
        pub async fn connect(
            addr: SocketAddr,
            path: &str,
            protocols: &[&str],
        ) -> (Option<WsClient>, String) {
            let head = format!(
                "GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Protocol: {}\r\n",
                protocols.join(", ")
            );
            let (tcp, head, buf) = request(addr, &head).await;
            if head.starts_with("HTTP/1.1 101") {
                (Some(WsClient { tcp, buf }), head)
            } else {
                (None, head)
            }
        }

        /// Sends one masked frame.
        pub async fn send(&mut self, opcode: u8, payload: &[u8]) {
            self.tcp
                .write_all(&frame(opcode, payload))
                .await
                .expect("send a frame");
        }

        /// A second handle on the connection, to write frames (see [`frame`]) while
        /// [`WsClient::next`] reads.
        pub fn writer(&self) -> TcpStream {
            use std::os::fd::AsFd;
            let fd = self.tcp.as_fd().try_clone_to_owned().expect("dup");
            let std = std::net::TcpStream::from(fd);
            std.set_nonblocking(true).expect("nonblocking");
            TcpStream::from_std(std).expect("register")
        }

        pub async fn send_binary(&mut self, payload: &[u8]) {
            self.send(2, payload).await
        }

        /// The next frame (opcode, payload), or `None` at end of stream.
        pub async fn next(&mut self) -> Option<(u8, Vec<u8>)> {
            loop {
                if let Some(frame) = self.parse() {
                    return Some(frame);
                }
                match self.tcp.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        }

        fn parse(&mut self) -> Option<(u8, Vec<u8>)> {
            let b = &self.buf;
            if b.len() < 2 {
                return None;
            }
            let opcode = b[0] & 0x0f;
            let (len, at) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => (
                    u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")) as usize,
                    10,
                ),
                126 | 127 => return None,
                n => (n as usize, 2),
            };
            if b.len() < at + len {
                return None;
            }
            self.buf.advance(at);
            let payload = self.buf.split_to(len).to_vec();
            Some((opcode, payload))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::WsClient;
    use super::*;

    use tokio::io::AsyncReadExt as _;

    use crate::wasm::{EngineOptions, WasmEngine};

    /// Copies stdin to stdout, writes "to stderr\n" to stderr, and exits 3 if it read
    /// anything (0 otherwise).
    const CAT_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "to stderr\n")
  (func (export "_start")
    (local $total i32)
    (block $done
      (loop $copy
        (i32.store (i32.const 0) (i32.const 1024))
        (i32.store (i32.const 4) (i32.const 4096))
        (br_if $done (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
        (br_if $done (i32.eqz (i32.load (i32.const 8))))
        (local.set $total (i32.add (local.get $total) (i32.load (i32.const 8))))
        (i32.store (i32.const 4) (i32.load (i32.const 8)))
        (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 12)))
        (br $copy)))
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 10))
    (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 12)))
    (if (local.get $total) (then (call $proc_exit (i32.const 3))))))"#;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_come_from_the_query() {
        let o = ExecOptions::parse(
            "command=sh&command=-c&command=exit%203&container=app&stdin=true&stdout=1&stderr=true",
        )
        .expect("valid");
        assert_eq!(o.command, argv(&["sh", "-c", "exit 3"]));
        assert!(o.stdin && o.stdout && o.stderr && !o.tty);
        // kube-apiserver's names for the kubelet, and a terminal merging stderr.
        let o = ExecOptions::parse("command=ls&input=1&output=1&error=1&tty=1").expect("valid");
        assert!(o.stdin && o.stdout && !o.stderr && o.tty);
        assert_eq!(
            ExecOptions::parse("stdout=true").expect_err("no command"),
            "you must specify at least 1 command"
        );
        assert_eq!(
            ExecOptions::parse("command=ls&stdin=false").expect_err("no stream"),
            "you must specify at least 1 of stdin, stdout, stderr"
        );
    }

    #[test]
    fn statuses_carry_the_exit_code() {
        let cmd = argv(&["sh", "-c", "exit 3"]);
        assert_eq!(
            exit_status(&cmd, &Exit::Exited(0)).to_string(),
            r#"{"metadata":{},"status":"Success"}"#
        );
        let s = exit_status(&cmd, &Exit::Exited(3));
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(
            s["details"]["causes"],
            json!([{"reason": "ExitCode", "message": "3"}])
        );
        assert_eq!(
            s["message"],
            "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
        );
        let s = exit_status(&cmd, &Exit::Trapped("unreachable".into()));
        assert_eq!(s["details"]["causes"][0]["message"], "134");
        assert_eq!(
            exit_status(&cmd, &Exit::Exited(256))["details"]["causes"][0]["message"],
            "255"
        );
        let s = exit_status(&cmd, &Exit::Failed("no such volume".into()));
        assert_eq!(s["reason"], "InternalError");
        assert_eq!(
            s["message"],
            "error executing command [sh -c exit 3]: no such volume"
        );
        assert_eq!(framed(STDOUT, b"hi")[..], b"\x01hi"[..]);
    }

    /// A node's sandboxes with pod `ns/p`, container `app` running `CAT_WAT`.
    async fn sandboxes(dir: &std::path::Path) -> Arc<Sandboxes> {
        let engine = WasmEngine::new(EngineOptions::new(dir.join("compiled"), 8)).expect("engine");
        let path = dir.join("cat.wat");
        std::fs::write(&path, CAT_WAT).expect("write");
        let program = engine.load("sha256:cat", &path).await.expect("load");
        let sandboxes = Arc::new(Sandboxes::default());
        sandboxes.add_pod(
            "uid-1",
            "ns",
            "p",
            None,
            ["app".to_string(), "idle".to_string()],
        );
        sandboxes.set_container(
            "uid-1",
            "app",
            Some(ContainerSandbox {
                program,
                argv: argv(&["app"]),
                env: Vec::new(),
                preopens: Vec::new(),
                memory_limit: None,
                cpu_limit_millis: None,
                pod_ip: None,
                egress: Default::default(),
                names: None,
            }),
        );
        sandboxes
    }

    /// Reads messages until the websocket closes: (stdout, stderr, status).
    async fn collect(ws: &mut WsClient) -> (String, String, Value) {
        let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), Value::Null);
        let read = async {
            while let Some((opcode, payload)) = ws.next().await {
                match (opcode, payload.first()) {
                    (2, Some(&STDOUT)) => out.extend_from_slice(&payload[1..]),
                    (2, Some(&STDERR)) => err.extend_from_slice(&payload[1..]),
                    (2, Some(&ERROR)) => {
                        status = serde_json::from_slice(&payload[1..]).expect("a JSON status")
                    }
                    (8, _) => {
                        ws.send(8, &payload).await;
                        break;
                    }
                    other => panic!("unexpected frame {other:?}"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .expect("the session ends in time");
        (
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
            status,
        )
    }

    #[tokio::test]
    async fn exec_streams_stdio_and_reports_the_exit_code() {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr = test_support::serve(router(sandboxes(dir.path()).await)).await;

        // No stdin: the module reads nothing and exits 0.
        let (ws, head) = WsClient::connect(
            addr,
            "/exec/ns/p/app?command=cat&stdout=true&stderr=true",
            &[PROTOCOL_V5, PROTOCOL_V4],
        )
        .await;
        let mut ws = ws.unwrap_or_else(|| panic!("no upgrade: {head}"));
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-protocol: v5.channel.k8s.io"),
            "{head}"
        );
        let (out, err, status) = collect(&mut ws).await;
        assert_eq!((out.as_str(), err.as_str()), ("", "to stderr\n"));
        assert_eq!(status, json!({"metadata": {}, "status": "Success"}));

        // Piped stdin, closed with v5's close message: echoed, and exit code 3.
        let (ws, head) = WsClient::connect(
            addr,
            "/exec/ns/p/app?command=cat&stdin=true&stdout=true",
            &[PROTOCOL_V5],
        )
        .await;
        let mut ws = ws.unwrap_or_else(|| panic!("no upgrade: {head}"));
        ws.send_binary(b"\x00hello ").await;
        ws.send_binary(b"\x00world\n").await;
        ws.send_binary(b"\x04{\"Width\":80,\"Height\":24}").await;
        ws.send_binary(&[CLOSE, STDIN]).await;
        let (out, err, status) = collect(&mut ws).await;
        assert_eq!(out, "hello world\n");
        assert_eq!(err, "", "stderr was not asked for");
        assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
        assert_eq!(status["details"]["causes"][0]["message"], "3");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn output_beyond_the_buffer_streams_while_stdin_still_arrives() {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr = test_support::serve(router(sandboxes(dir.path()).await)).await;
        let (ws, head) = WsClient::connect(
            addr,
            "/exec/ns/p/app?command=cat&stdin=true&stdout=true",
            &[PROTOCOL_V5],
        )
        .await;
        let mut ws = ws.unwrap_or_else(|| panic!("no upgrade: {head}"));
        // 3 MiB through `cat`: its output passes the session's output buffer three
        // times over while the client is still sending input, as `kubectl exec -i`
        // piping a large file does.
        let input: Vec<u8> = (0..3 << 20).map(|i| b'a' + (i % 26) as u8).collect();
        let mut frames: Vec<u8> = input
            .chunks(32 * 1024)
            .flat_map(|c| test_support::frame(2, &[&[STDIN], c].concat()))
            .collect();
        frames.extend(test_support::frame(2, &[CLOSE, STDIN]));
        let mut writer = ws.writer();
        let send = tokio::spawn(async move { writer.write_all(&frames).await });
        let (out, _, status) = collect(&mut ws).await;
        send.await.expect("sender").expect("input sent");
        assert_eq!(out.len(), input.len());
        assert!(
            out.as_bytes() == input.as_slice(),
            "output differs from input"
        );
        assert_eq!(status["details"]["causes"][0]["message"], "3");
    }

    #[tokio::test]
    async fn errors_before_the_upgrade_are_plain_answers() {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr = test_support::serve(router(sandboxes(dir.path()).await)).await;
        for (path, code, message) in [
            (
                "/exec/ns/p/nope?command=ls&stdout=1",
                "400",
                "container nope is not valid for pod p",
            ),
            (
                "/exec/ns/p/idle?command=ls&stdout=1",
                "400",
                "container idle in pod p is not running",
            ),
            (
                "/exec/ns/gone/app?command=ls&stdout=1",
                "404",
                "pod ns/gone is not running on this node",
            ),
            (
                "/exec/ns/p/app?stdout=1",
                "400",
                "you must specify at least 1 command",
            ),
        ] {
            let (ws, head) = WsClient::connect(addr, path, &[PROTOCOL_V5]).await;
            assert!(ws.is_none(), "{path}: {head}");
            assert!(
                head.starts_with(&format!("HTTP/1.1 {code}")),
                "{path}: {head}"
            );
            let (_, body) = test_support::get(addr, path).await;
            assert_eq!(body.trim(), message, "{path}");
        }
        // Only the channel protocols are spoken.
        let (ws, head) = WsClient::connect(
            addr,
            "/exec/ns/p/app?command=ls&stdout=1",
            &["base64.channel.k8s.io"],
        )
        .await;
        assert!(ws.is_none() && head.starts_with("HTTP/1.1 400"), "{head}");
        // Without a websocket (SPDY) there is a clear refusal.
        let (mut tcp, head, mut body) = test_support::request(
            addr,
            "POST /exec/ns/p/app?command=ls&stdout=1 HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, close\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
        let mut rest = Vec::new();
        let _ = tcp.read_to_end(&mut rest).await;
        body.extend_from_slice(&rest);
        assert_eq!(
            String::from_utf8_lossy(&body).trim(),
            "exec is served over websockets only (v5.channel.k8s.io, v4.channel.k8s.io), not SPDY"
        );
    }
}
