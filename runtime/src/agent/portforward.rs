//! `kubectl port-forward` on the node: `/portForward/{namespace}/{pod}` connects
//! clients to TCP ports on the pod's address (pod IPs are addresses of this host, so
//! the agent dials them directly).
//!
//! Three transports, one per client generation:
//!
//! - **SPDY over a websocket** (subprotocol `SPDY/3.1+portforward.k8s.io`, kubectl ≥
//!   1.31): the binary messages concatenate to a SPDY/3.1 byte stream;
//! - **SPDY** (`Upgrade: SPDY/3.1`, `X-Stream-Protocol-Version: portforward.k8s.io`),
//!   what kubectl falls back to, and older kubectls speak;
//! - **the channel protocol** (`v4.channel.k8s.io`/`v5.channel.k8s.io` with
//!   `?ports=…`, the Python client): port *i* gets data channel 2i and error channel
//!   2i+1, each announced by a first message of the channel byte and the port as a
//!   little-endian u16; one connection per port.
//!
//! Over SPDY, the client opens two streams per forwarded connection, both carrying
//! `port` and `requestID`: `streamType: error` then `streamType: data`. Each gets a
//! SYN_REPLY at once (the client waits for it). Data frames carry the connection's
//! bytes, FIN half-closes; a failure is written as text on the error stream. When the
//! pod side ends, the data stream is FINished and so is the error stream — a FIN, never
//! a reset: the client reads the error stream to its end and takes a reset as an error.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::exec::{framed, query_pairs, sandbox_error, CLOSE, PROTOCOL_V4, PROTOCOL_V5};
use super::spdy::{self, Decoder, Encoder, Frame, FLAG_FIN};
use crate::agent::sandbox::Sandboxes;

/// The websocket subprotocol that tunnels SPDY.
pub const SPDY_TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// The stream protocol negotiated in `X-Stream-Protocol-Version`.
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";
/// The `Upgrade` token of plain SPDY.
pub const SPDY_UPGRADE: &str = "SPDY/3.1";
/// The header naming the stream protocols (client: offered, server: chosen).
pub const STREAM_PROTOCOL_HEADER: &str = "x-stream-protocol-version";

/// Time to connect to a port of the pod.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing transport waits for its peer before dropping the connection.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Bytes read from a pod connection per frame.
const READ_CHUNK: usize = 32 * 1024;

/// The pod a session forwards to.
#[derive(Debug, Clone)]
pub struct Target {
    pub namespace: String,
    pub pod: String,
    pub ip: IpAddr,
}

/// The route `/portForward/{namespace}/{pod}` (GET and POST, as the kubelet).
pub fn router(sandboxes: Arc<Sandboxes>) -> Router {
    Router::new()
        .route(
            "/portForward/{namespace}/{pod}",
            get(port_forward).post(port_forward),
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

fn header_has(headers: &HeaderMap, name: impl header::AsHeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(token))
}

/// The ports of the channel protocol's `ports` query (repeated or comma-separated).
fn parse_ports(query: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for (key, value) in query_pairs(query)? {
        if key != "ports" {
            continue;
        }
        for p in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match p.parse::<u16>() {
                Ok(port) if port > 0 => ports.push(port),
                _ => return Err(format!("invalid port {p:?}")),
            }
        }
    }
    if ports.is_empty() {
        return Err("query parameter \"ports\" is required".into());
    }
    Ok(ports)
}

async fn port_forward(
    State(sandboxes): State<Arc<Sandboxes>>,
    Path((namespace, pod)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    mut req: Request,
) -> Response {
    let ip = match sandboxes.pod_ip(&namespace, &pod) {
        // A pod without an address of its own shares the node's.
        Ok(ip) => ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        Err(e) => return sandbox_error(&e),
    };
    let target = Target { namespace, pod, ip };
    let headers = req.headers().clone();
    if header_has(&headers, header::UPGRADE, "websocket") {
        let (mut parts, _body) = req.into_parts();
        let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(ws) => ws,
            Err(rejection) => return text(StatusCode::BAD_REQUEST, rejection.to_string()),
        };
        let ws = ws.protocols([SPDY_TUNNEL_PROTOCOL, PROTOCOL_V5, PROTOCOL_V4]);
        let chosen = ws
            .selected_protocol()
            .and_then(|p| p.to_str().ok())
            .map(str::to_string);
        tracing::info!(namespace = %target.namespace, pod = %target.pod, protocol = ?chosen, "port-forward");
        return match chosen.as_deref() {
            Some(SPDY_TUNNEL_PROTOCOL) => ws.on_upgrade(move |socket| tunnel(socket, target)),
            Some(protocol) => {
                let v5 = protocol == PROTOCOL_V5;
                match parse_ports(query.as_deref().unwrap_or("")) {
                    Ok(ports) => {
                        ws.on_upgrade(move |socket| channels(socket, target, ports, v5))
                    }
                    Err(message) => text(StatusCode::BAD_REQUEST, message),
                }
            }
            None => text(
                StatusCode::BAD_REQUEST,
                format!(
                    "none of the offered websocket subprotocols is supported; port-forward speaks {SPDY_TUNNEL_PROTOCOL}, {PROTOCOL_V5} and {PROTOCOL_V4}"
                ),
            ),
        };
    }
    if header_has(&headers, header::UPGRADE, SPDY_UPGRADE) {
        // As httpstream's handshake: no offer at all is the legacy protocol; an offer
        // without ours cannot be served.
        let offered: Vec<&str> = headers
            .get_all(STREAM_PROTOCOL_HEADER)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        if !offered.is_empty() && !offered.contains(&PORT_FORWARD_PROTOCOL) {
            return text(
                StatusCode::FORBIDDEN,
                format!(
                    "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts [\"{PORT_FORWARD_PROTOCOL}\"]"
                ),
            );
        }
        let on_upgrade = hyper::upgrade::on(&mut req);
        tracing::info!(namespace = %target.namespace, pod = %target.pod, protocol = SPDY_UPGRADE, "port-forward");
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => raw_spdy(TokioIo::new(upgraded), target).await,
                Err(error) => tracing::debug!(%error, "the SPDY upgrade failed"),
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, SPDY_UPGRADE)
            .header(
                STREAM_PROTOCOL_HEADER,
                HeaderValue::from_static(PORT_FORWARD_PROTOCOL),
            )
            .body(axum::body::Body::empty())
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "building the answer"));
    }
    text(
        StatusCode::BAD_REQUEST,
        format!(
            "port-forward needs an upgrade: a websocket ({SPDY_TUNNEL_PROTOCOL}) or {SPDY_UPGRADE}"
        ),
    )
}

/// SPDY tunnelled in websocket binary messages.
async fn tunnel(socket: WebSocket, target: Target) {
    let (mut sink, mut stream) = socket.split();
    let (in_tx, in_rx) = mpsc::channel::<Bytes>(16);
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(64);
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            let data = match message {
                Message::Binary(data) => data,
                Message::Close(_) => return,
                _ => continue,
            };
            if in_tx.send(data).await.is_err() {
                return;
            }
        }
    });
    let writer = async move {
        while let Some(data) = out_rx.recv().await {
            if sink.send(Message::Binary(data)).await.is_err() {
                return;
            }
        }
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: "".into(),
            })))
            .await;
    };
    tokio::join!(serve_spdy(in_rx, out_tx, target), writer);
    finish_reader(reader).await;
}

/// SPDY on an upgraded connection.
async fn raw_spdy<IO>(io: IO, target: Target)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (in_tx, in_rx) = mpsc::channel::<Bytes>(16);
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(64);
    let reader = tokio::spawn(async move {
        loop {
            let mut buf = BytesMut::with_capacity(READ_CHUNK);
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if in_tx.send(buf.freeze()).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let writer = async move {
        while let Some(data) = out_rx.recv().await {
            if wr.write_all(&data).await.is_err() || wr.flush().await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    };
    tokio::join!(serve_spdy(in_rx, out_tx, target), writer);
    finish_reader(reader).await;
}

/// Lets a transport's reader see the peer's close, but not forever.
async fn finish_reader(mut reader: tokio::task::JoinHandle<()>) {
    if tokio::time::timeout(CLOSE_GRACE, &mut reader)
        .await
        .is_err()
    {
        reader.abort();
    }
}

/// A forwarded connection's data stream, as the session sees it.
struct DataStream {
    /// Client bytes for the pod; `None` once the client half-closed.
    to_pod: Option<mpsc::Sender<Bytes>>,
    /// Ends the connection (the client reset the stream).
    stop: CancellationToken,
}

/// One SPDY connection's state.
struct Session {
    target: Target,
    /// Frames to send; the writer task owns the header compressor, so frames are
    /// encoded in the order they are queued.
    frames: mpsc::Sender<Frame>,
    /// Stops every forwarded connection when the SPDY connection ends.
    stop: CancellationToken,
    /// Error streams waiting for their data stream, by request id.
    error_streams: HashMap<String, u32>,
    data_streams: HashMap<u32, DataStream>,
    /// Forwarded connections report here when they end, so their entries go.
    done_tx: mpsc::UnboundedSender<u32>,
    done_rx: mpsc::UnboundedReceiver<u32>,
    /// After GOAWAY no new streams are accepted.
    going_away: bool,
}

/// Serves one SPDY port-forward connection: `inbound` yields the client's bytes as
/// they arrive (closed: the client is gone), `outbound` takes bytes to send (dropped
/// when the session is over).
pub async fn serve_spdy(
    mut inbound: mpsc::Receiver<Bytes>,
    outbound: mpsc::Sender<Bytes>,
    target: Target,
) {
    let (frames, frame_rx) = mpsc::channel::<Frame>(64);
    let writer = tokio::spawn(write_frames(frame_rx, outbound));
    let stop = CancellationToken::new();
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let mut session = Session {
        target,
        frames,
        stop: stop.clone(),
        error_streams: HashMap::new(),
        data_streams: HashMap::new(),
        done_tx,
        done_rx,
        going_away: false,
    };
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::new();
    'read: while let Some(chunk) = inbound.recv().await {
        buf.extend_from_slice(&chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => session.handle(frame).await,
                Ok(None) => break,
                Err(error) => {
                    tracing::info!(namespace = %session.target.namespace, pod = %session.target.pod, %error, "port-forward: bad SPDY from the client");
                    let _ = session
                        .frames
                        .send(Frame::GoAway {
                            last_good_stream_id: 0,
                            status: 1,
                        })
                        .await;
                    break 'read;
                }
            }
        }
    }
    // The client is gone: so is every connection it had.
    stop.cancel();
    drop(session);
    let _ = writer.await;
}

/// Encodes queued frames onto `outbound`, in order.
async fn write_frames(mut frames: mpsc::Receiver<Frame>, outbound: mpsc::Sender<Bytes>) {
    let mut encoder = Encoder::new();
    while let Some(frame) = frames.recv().await {
        let mut out = BytesMut::new();
        if let Err(error) = encoder.encode(&frame, &mut out) {
            tracing::warn!(%error, "port-forward: cannot encode a SPDY frame");
            return;
        }
        if outbound.send(out.freeze()).await.is_err() {
            return;
        }
    }
}

impl Session {
    async fn send(&self, frame: Frame) {
        let _ = self.frames.send(frame).await;
    }

    async fn handle(&mut self, frame: Frame) {
        while let Ok(id) = self.done_rx.try_recv() {
            self.data_streams.remove(&id);
        }
        match frame {
            Frame::SynStream {
                stream_id, headers, ..
            } => self.open(stream_id, &headers).await,
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                let Some(stream) = self.data_streams.get_mut(&stream_id) else {
                    // The error stream's half-close, or a stream already gone.
                    return;
                };
                if !data.is_empty() {
                    if let Some(tx) = &stream.to_pod {
                        if tx.send(data).await.is_err() {
                            stream.to_pod = None;
                        }
                    }
                }
                if flags & FLAG_FIN != 0 {
                    stream.to_pod = None;
                }
            }
            Frame::RstStream { stream_id, .. } => {
                if let Some(stream) = self.data_streams.remove(&stream_id) {
                    stream.stop.cancel();
                }
            }
            Frame::Ping { id } => self.send(Frame::Ping { id }).await,
            Frame::GoAway { .. } => self.going_away = true,
            Frame::SynReply { .. }
            | Frame::Headers { .. }
            | Frame::Settings { .. }
            | Frame::WindowUpdate { .. }
            | Frame::Unknown { .. } => {}
        }
    }

    /// A SYN_STREAM: replied to at once, then paired up by request id.
    async fn open(&mut self, stream_id: u32, headers: &spdy::Headers) {
        if self.going_away {
            self.send(Frame::RstStream {
                stream_id,
                status: spdy::RST_REFUSED_STREAM,
            })
            .await;
            return;
        }
        self.send(Frame::SynReply {
            stream_id,
            flags: 0,
            headers: Vec::new(),
        })
        .await;
        let kind = spdy::header(headers, "streamtype").unwrap_or("");
        // Clients before request ids paired an error stream with the data stream
        // opened right after it (the next odd id).
        let request_id = |for_data: bool| {
            spdy::header(headers, "requestid")
                .map(str::to_string)
                .unwrap_or_else(|| {
                    let id = if for_data {
                        stream_id.saturating_sub(2)
                    } else {
                        stream_id
                    };
                    format!("stream-{id}")
                })
        };
        match kind {
            "error" => {
                self.error_streams.insert(request_id(false), stream_id);
            }
            "data" => {
                let error_stream = self.error_streams.remove(&request_id(true));
                let port = spdy::header(headers, "port").unwrap_or("");
                let port = match port.parse::<u16>() {
                    Ok(p) if p > 0 => p,
                    _ => {
                        let message = format!("invalid port {port:?}");
                        self.fail(stream_id, error_stream, message).await;
                        return;
                    }
                };
                let (to_pod, from_client) = mpsc::channel(16);
                let stop = self.stop.child_token();
                self.data_streams.insert(
                    stream_id,
                    DataStream {
                        to_pod: Some(to_pod),
                        stop: stop.clone(),
                    },
                );
                let conn = Connection {
                    target: self.target.clone(),
                    port,
                    data_stream: stream_id,
                    error_stream,
                    frames: self.frames.clone(),
                };
                let done = self.done_tx.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = conn.run(from_client) => {}
                        _ = stop.cancelled() => {}
                    }
                    let _ = done.send(stream_id);
                });
            }
            other => {
                tracing::debug!(stream_type = other, "port-forward: unknown stream type");
                self.send(Frame::RstStream {
                    stream_id,
                    status: spdy::RST_PROTOCOL_ERROR,
                })
                .await;
            }
        }
    }

    /// Reports `message` on the error stream and ends both streams.
    async fn fail(&self, data_stream: u32, error_stream: Option<u32>, message: String) {
        report(&self.frames, data_stream, error_stream, message).await
    }
}

async fn report(
    frames: &mpsc::Sender<Frame>,
    data_stream: u32,
    error_stream: Option<u32>,
    message: String,
) {
    if let Some(id) = error_stream {
        let _ = frames
            .send(Frame::Data {
                stream_id: id,
                flags: 0,
                data: Bytes::from(message),
            })
            .await;
        let _ = frames.send(fin(id)).await;
    }
    let _ = frames.send(fin(data_stream)).await;
}

fn fin(stream_id: u32) -> Frame {
    Frame::Data {
        stream_id,
        flags: FLAG_FIN,
        data: Bytes::new(),
    }
}

/// One forwarded connection over SPDY.
struct Connection {
    target: Target,
    port: u16,
    data_stream: u32,
    error_stream: Option<u32>,
    frames: mpsc::Sender<Frame>,
}

impl Connection {
    async fn run(self, mut from_client: mpsc::Receiver<Bytes>) {
        let tcp = match dial(&self.target, self.port).await {
            Ok(tcp) => tcp,
            Err(message) => {
                report(&self.frames, self.data_stream, self.error_stream, message).await;
                return;
            }
        };
        let (mut rd, mut wr) = tcp.into_split();
        let up = async {
            while let Some(chunk) = from_client.recv().await {
                if wr.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            // The client half-closed: so do we, towards the pod.
            let _ = wr.shutdown().await;
        };
        let down = async {
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let frame = Frame::Data {
                            stream_id: self.data_stream,
                            flags: 0,
                            data: Bytes::copy_from_slice(&buf[..n]),
                        };
                        if self.frames.send(frame).await.is_err() {
                            return;
                        }
                    }
                }
            }
            // The pod is done: the client closes its end once both streams are
            // finished, so the error stream is finished now rather than when the
            // client's side ends (which waits for that).
            let _ = self.frames.send(fin(self.data_stream)).await;
            if let Some(id) = self.error_stream {
                let _ = self.frames.send(fin(id)).await;
            }
        };
        tokio::join!(up, down);
    }
}

/// Connects to `port` on the pod; the error is the message for the client.
async fn dial(target: &Target, port: u16) -> Result<TcpStream, String> {
    let addr = SocketAddr::new(target.ip, port);
    let result = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await;
    let why = match result {
        Ok(Ok(tcp)) => {
            let _ = tcp.set_nodelay(true);
            return Ok(tcp);
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_string(),
    };
    tracing::info!(namespace = %target.namespace, pod = %target.pod, %addr, %why, "port-forward: cannot connect");
    Err(format!(
        "error forwarding port {port} to pod {}/{}: failed to connect to {addr}: {why}",
        target.namespace, target.pod
    ))
}

/// The channel protocol: one connection per requested port, for the websocket's life.
async fn channels(socket: WebSocket, target: Target, ports: Vec<u16>, v5: bool) {
    let (mut sink, mut stream) = socket.split();
    // Each channel starts with the port it carries.
    for (i, port) in ports.iter().enumerate() {
        for channel in [2 * i, 2 * i + 1] {
            let mut first = vec![channel as u8];
            first.extend_from_slice(&port.to_le_bytes());
            if sink
                .send(Message::Binary(Bytes::from(first)))
                .await
                .is_err()
            {
                return;
            }
        }
    }
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(64);
    let mut to_pod: Vec<Option<mpsc::Sender<Bytes>>> = Vec::new();
    for (i, &port) in ports.iter().enumerate() {
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        to_pod.push(Some(tx));
        tokio::spawn(channel_connection(
            target.clone(),
            port,
            (2 * i) as u8,
            rx,
            out_tx.clone(),
        ));
    }
    drop(out_tx);
    loop {
        tokio::select! {
            message = out_rx.recv() => match message {
                Some(message) => {
                    if sink.send(Message::Binary(message)).await.is_err() {
                        return;
                    }
                }
                // Every connection has ended.
                None => break,
            },
            message = stream.next() => match message {
                Some(Ok(Message::Binary(data))) => match data.first().copied() {
                    Some(CLOSE) if v5 => {
                        if let Some(&channel) = data.get(1) {
                            if let Some(slot) = to_pod.get_mut(usize::from(channel) / 2) {
                                *slot = None;
                            }
                        }
                    }
                    Some(channel) if channel % 2 == 0 => {
                        if let Some(Some(tx)) = to_pod.get(usize::from(channel) / 2) {
                            let _ = tx.send(data.slice(1..)).await;
                        }
                    }
                    _ => {}
                },
                // The client left: dropping the senders ends the connections.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "".into(),
        })))
        .await;
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(message)) = stream.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// One port of the channel protocol: pod bytes go out on `data_channel`, failures on
/// the channel after it.
async fn channel_connection(
    target: Target,
    port: u16,
    data_channel: u8,
    mut from_client: mpsc::Receiver<Bytes>,
    out: mpsc::Sender<Bytes>,
) {
    let tcp = match dial(&target, port).await {
        Ok(tcp) => tcp,
        Err(message) => {
            let _ = out.send(framed(data_channel + 1, message.as_bytes())).await;
            return;
        }
    };
    let (mut rd, mut wr) = tcp.into_split();
    let up = async {
        while let Some(chunk) = from_client.recv().await {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if out.send(framed(data_channel, &buf[..n])).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    // The pod's side ending ends the connection: the protocol has no half-close to
    // tell the client about.
    tokio::select! {
        _ = async { tokio::join!(up, std::future::pending::<()>()) } => {}
        _ = down => {}
    }
}

#[cfg(test)]
mod tests {
    use super::super::exec::test_support::{self, WsClient};
    use super::*;

    use tokio::net::TcpListener;

    /// A TCP server on 127.0.0.1 that answers each connection with `greeting`, then
    /// echoes what it reads in upper case until the client half-closes.
    async fn echo_server(greeting: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = tcp.write_all(greeting.as_bytes()).await;
                    let mut buf = [0u8; 1024];
                    loop {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                let upper = buf[..n].to_ascii_uppercase();
                                if tcp.write_all(&upper).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = tcp.write_all(b"bye").await;
                });
            }
        });
        port
    }

    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    }

    async fn agent() -> std::net::SocketAddr {
        let sandboxes = Arc::new(Sandboxes::default());
        sandboxes.add_pod(
            "uid-1",
            "ns",
            "web",
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            ["app".to_string()],
        );
        test_support::serve(router(sandboxes)).await
    }

    /// A SPDY client on a byte stream: sends frames, reads frames.
    struct SpdyClient<R, W> {
        rd: R,
        wr: W,
        encoder: Encoder,
        decoder: Decoder,
        buf: BytesMut,
    }

    impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> SpdyClient<R, W> {
        fn new(rd: R, wr: W, buf: BytesMut) -> Self {
            SpdyClient {
                rd,
                wr,
                encoder: Encoder::new(),
                decoder: Decoder::new(),
                buf,
            }
        }

        async fn send(&mut self, frame: Frame) {
            let mut out = BytesMut::new();
            self.encoder.encode(&frame, &mut out).expect("encode");
            self.wr.write_all(&out).await.expect("write");
        }

        async fn next(&mut self) -> Option<Frame> {
            let read = async {
                loop {
                    if let Some(f) = self.decoder.decode(&mut self.buf).expect("valid SPDY") {
                        return Some(f);
                    }
                    match self.rd.read_buf(&mut self.buf).await {
                        Ok(0) | Err(_) => return None,
                        Ok(_) => {}
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(10), read)
                .await
                .expect("a frame in time")
        }
    }

    fn stream_headers(kind: &str, port: u16, request: u32) -> spdy::Headers {
        vec![
            ("streamtype".into(), kind.into()),
            ("port".into(), port.to_string()),
            ("requestid".into(), request.to_string()),
        ]
    }

    fn syn(stream_id: u32, headers: spdy::Headers) -> Frame {
        Frame::SynStream {
            stream_id,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers,
        }
    }

    /// Runs kubectl's exchange for one connection: error + data streams, `send` on the
    /// data stream then FIN; returns (data bytes, error text) once both are finished.
    async fn forward_one<R, W>(
        c: &mut SpdyClient<R, W>,
        first_stream: u32,
        port: u16,
        send: &[u8],
    ) -> (String, String)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let (error_id, data_id) = (first_stream, first_stream + 2);
        c.send(syn(error_id, stream_headers("error", port, first_stream)))
            .await;
        c.send(fin(error_id)).await;
        c.send(syn(data_id, stream_headers("data", port, first_stream)))
            .await;
        let (mut replies, mut data, mut error) = (0, Vec::new(), Vec::new());
        let (mut data_done, mut error_done, mut sent) = (false, false, false);
        c.send(Frame::Ping { id: 7 }).await;
        let mut ponged = false;
        while !(data_done && error_done && ponged) {
            match c.next().await.expect("the agent keeps the connection") {
                Frame::SynReply { stream_id, .. } => {
                    assert!(stream_id == error_id || stream_id == data_id);
                    replies += 1;
                    if replies == 2 && !sent {
                        sent = true;
                        c.send(Frame::Data {
                            stream_id: data_id,
                            flags: 0,
                            data: Bytes::copy_from_slice(send),
                        })
                        .await;
                        c.send(fin(data_id)).await;
                    }
                }
                Frame::Data {
                    stream_id,
                    flags,
                    data: bytes,
                } => {
                    let (buf, done) = if stream_id == data_id {
                        (&mut data, &mut data_done)
                    } else {
                        assert_eq!(stream_id, error_id);
                        (&mut error, &mut error_done)
                    };
                    buf.extend_from_slice(&bytes);
                    *done |= flags & FLAG_FIN != 0;
                }
                Frame::Ping { id } => {
                    assert_eq!(id, 7);
                    ponged = true;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(replies, 2);
        (
            String::from_utf8_lossy(&data).into_owned(),
            String::from_utf8_lossy(&error).into_owned(),
        )
    }

    #[tokio::test]
    async fn spdy_upgrade_forwards_connections() {
        let addr = agent().await;
        let port = echo_server("hello\n").await;
        let (tcp, head, rest) = test_support::request(
            addr,
            "POST /portForward/ns/web HTTP/1.1\r\nHost: agent\r\nConnection: Upgrade\r\n\
             Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: portforward.k8s.io\r\nContent-Length: 0\r\n",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("x-stream-protocol-version: portforward.k8s.io"),
            "{head}"
        );
        let (rd, wr) = tcp.into_split();
        let mut c = SpdyClient::new(rd, wr, rest);
        let (data, error) = forward_one(&mut c, 1, port, b"abc").await;
        assert_eq!((data.as_str(), error.as_str()), ("hello\nABCbye", ""));
        // A second connection on the same session, then one to a closed port.
        let (data, _) = forward_one(&mut c, 5, port, b"x").await;
        assert_eq!(data, "hello\nXbye");
        let closed = free_port();
        let (data, error) = forward_one(&mut c, 9, closed, b"").await;
        assert_eq!(data, "");
        assert!(
            error.starts_with(&format!(
                "error forwarding port {closed} to pod ns/web: failed to connect to 127.0.0.1:{closed}"
            )),
            "{error}"
        );
        // An unknown stream type is reset after its reply.
        c.send(syn(13, vec![("streamtype".into(), "bogus".into())]))
            .await;
        assert!(matches!(
            c.next().await,
            Some(Frame::SynReply { stream_id: 13, .. })
        ));
        assert_eq!(
            c.next().await,
            Some(Frame::RstStream {
                stream_id: 13,
                status: spdy::RST_PROTOCOL_ERROR
            })
        );
    }

    /// The websocket tunnel: SPDY bytes in binary messages, split anywhere.
    #[tokio::test]
    async fn spdy_over_websocket_forwards_connections() {
        let addr = agent().await;
        let port = echo_server("hi ").await;
        let (ws, head) =
            WsClient::connect(addr, "/portForward/ns/web", &[SPDY_TUNNEL_PROTOCOL]).await;
        let mut ws = ws.unwrap_or_else(|| panic!("no upgrade: {head}"));
        assert!(
            head.contains("SPDY/3.1+portforward.k8s.io"),
            "the protocol is echoed: {head}"
        );
        // A duplex pipe turns the message stream into the byte stream SPDY expects.
        let (client_side, mut bridge) = tokio::io::duplex(64 * 1024);
        let (rd, wr) = tokio::io::split(client_side);
        let mut c = SpdyClient::new(rd, wr, BytesMut::new());
        let pump = async {
            let mut buf = vec![0u8; 4096];
            loop {
                tokio::select! {
                    n = bridge.read(&mut buf) => match n {
                        Ok(0) | Err(_) => return,
                        // Odd-sized pieces: frames need not align with messages.
                        Ok(n) => for piece in buf[..n].chunks(7) { ws.send_binary(piece).await },
                    },
                    frame = ws.next() => match frame {
                        Some((2, payload)) => {
                            if bridge.write_all(&payload).await.is_err() { return }
                        }
                        _ => return,
                    },
                }
            }
        };
        let client = async move {
            let got = forward_one(&mut c, 1, port, b"there").await;
            drop(c);
            got
        };
        let (got, _) = tokio::join!(client, pump);
        assert_eq!(got, ("hi THEREbye".to_string(), String::new()));
    }

    /// The Python client's protocol: channel 0 data, 1 error, each announced first.
    #[tokio::test]
    async fn channel_protocol_forwards_each_port() {
        let addr = agent().await;
        let port = echo_server("ready ").await;
        let closed = free_port();
        let path = format!("/portForward/ns/web?ports={port}&ports={closed}");
        let (ws, head) = WsClient::connect(addr, &path, &[PROTOCOL_V4]).await;
        let mut ws = ws.unwrap_or_else(|| panic!("no upgrade: {head}"));
        let mut announced = Vec::new();
        for _ in 0..4 {
            let (opcode, payload) = ws.next().await.expect("an announcement");
            assert_eq!(opcode, 2);
            announced.push(payload);
        }
        let le = |p: u16| p.to_le_bytes();
        assert_eq!(
            announced,
            vec![
                vec![0, le(port)[0], le(port)[1]],
                vec![1, le(port)[0], le(port)[1]],
                vec![2, le(closed)[0], le(closed)[1]],
                vec![3, le(closed)[0], le(closed)[1]],
            ]
        );
        ws.send_binary(b"\x00ping").await;
        let (mut data, mut error) = (Vec::new(), String::new());
        let read = async {
            while let Some((opcode, payload)) = ws.next().await {
                match (opcode, payload.first()) {
                    (2, Some(0)) => data.extend_from_slice(&payload[1..]),
                    (2, Some(3)) => error.push_str(&String::from_utf8_lossy(&payload[1..])),
                    (8, _) => break,
                    other => panic!("unexpected {other:?}"),
                }
                if data.ends_with(b"PING") && !error.is_empty() {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("in time");
        assert_eq!(String::from_utf8_lossy(&data), "ready PING");
        assert!(
            error.contains(&format!("failed to connect to 127.0.0.1:{closed}")),
            "{error}"
        );
    }

    #[tokio::test]
    async fn refusals_are_plain_answers() {
        let addr = agent().await;
        let (head, body) = test_support::get(addr, "/portForward/ns/web").await;
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
        assert!(body.contains("port-forward needs an upgrade"), "{body}");
        let (head, body) = test_support::get(addr, "/portForward/ns/other").await;
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
        assert_eq!(body.trim(), "pod ns/other is not running on this node");
        let (_, head, _) = test_support::request(
            addr,
            "POST /portForward/ns/web HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n\
             Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
        let (ws, head) = WsClient::connect(addr, "/portForward/ns/web", &[PROTOCOL_V4]).await;
        assert!(
            ws.is_none() && head.starts_with("HTTP/1.1 400"),
            "no ports: {head}"
        );
    }
}
