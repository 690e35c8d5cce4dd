//! Container probes (startup, liveness, readiness) and lifecycle hooks (postStart,
//! preStop), run the way the kubelet runs them.
//!
//! A run of a container that has probes or hooks is watched by [`supervise`], a future
//! the pod worker polls next to the instance itself: it runs the postStart hook, then
//! one tokio task per probe. A probe's action is an HTTP GET, a TCP connect, a gRPC
//! health check, or `exec`: the container's module run again in the container's
//! sandbox (same volumes, environment and address) with the probe's command as argv,
//! exit 0 meaning success.
//!
//! - **Startup** holds the other two back: until it succeeds, liveness and readiness do
//!   not run and the container is not `started`.
//! - **Readiness** sets the container's `ready` (false until its first success), which
//!   the pod's Ready condition follows.
//! - **Liveness** (and a startup probe that gives up) kills the container: `Killing`
//!   event, preStop hook within the grace period, then the instance is cancelled and
//!   the worker restarts it as restartPolicy says.
//!
//! A probe's result changes only after `successThreshold` successes or
//! `failureThreshold` failures in a row ([`Streak`]). Every counted failure is an
//! `Unhealthy` warning, as the kubelet records them, but a probe that keeps failing
//! records at most a few (see [`EVENT_BURST`]) so a broken pod does not flood the API
//! with event writes.
//!
//! Timing: with `initialDelaySeconds` 0 a probe runs as soon as the container starts,
//! then every `periodSeconds`. A server inside a guest needs a few milliseconds to bind
//! its port, so during the first second ([`FAST_WINDOW`]) failures before any success
//! are not counted and the probe retries within milliseconds: a pod with a readiness
//! probe is Ready moments after its server listens, not a period later.
//!
//! Results reach the pod status through a [`ProbeSink`] (the worker's coalesced
//! status state): a probe costs no API call unless its result changes.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, LifecycleHandler, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::events::EventType;
use super::sandbox::{ContainerSandbox, ExecIo};
use crate::wasm::{Exit, OutputSink};

/// `periodSeconds` when the probe has none.
const DEFAULT_PERIOD_SECONDS: i32 = 10;
/// `timeoutSeconds` when the probe has none.
const DEFAULT_TIMEOUT_SECONDS: i32 = 1;
/// `successThreshold` when the probe has none.
const DEFAULT_SUCCESS_THRESHOLD: i32 = 1;
/// `failureThreshold` when the probe has none.
const DEFAULT_FAILURE_THRESHOLD: i32 = 3;
/// `terminationGracePeriodSeconds` when the pod has none.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Output of an exec probe or hook kept for its event message (the kubelet's limit).
const MAX_OUTPUT: usize = 10 * 1024;
/// How much of an HTTP probe's response body is read (the rest is dropped with the
/// connection).
const MAX_BODY: usize = 10 * 1024;
/// After a probe first runs, failures before its first success are not counted for
/// this long: the guest's server is most likely still binding.
const FAST_WINDOW: Duration = Duration::from_secs(1);
/// The first quick retry within [`FAST_WINDOW`]; retries double from here.
const FAST_FIRST_RETRY: Duration = Duration::from_millis(2);
/// The longest quick retry within [`FAST_WINDOW`].
const FAST_MAX_RETRY: Duration = Duration::from_millis(50);
/// `Unhealthy` events one probe may record in a burst…
const EVENT_BURST: u32 = 5;
/// …and how often it earns another one.
const EVENT_REFILL: Duration = Duration::from_secs(10);

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    /// As events name it: `Liveness probe failed: …`.
    pub fn title(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }
}

/// Why a probe or hook cannot be run as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// A named port the container does not declare.
    #[error("couldn't find port: {port} in container {container}")]
    UnknownPort { port: String, container: String },
    /// A port number outside 1–65535.
    #[error("invalid port number: {0}")]
    InvalidPort(i64),
    /// Neither exec, httpGet, tcpSocket nor grpc (nor sleep, for a hook).
    #[error("missing probe handler")]
    NoHandler,
    /// A handler kind the kubelet does not run in lifecycle hooks (tcpSocket).
    #[error("invalid handler: {0} is not supported in lifecycle hooks")]
    UnsupportedHook(&'static str),
    /// An httpGet scheme other than HTTP or HTTPS.
    #[error("unsupported scheme {0:?}")]
    Scheme(String),
    /// An exec action without a command.
    #[error("exec handler has no command")]
    NoCommand,
}

/// An HTTP GET, from a probe's or hook's `httpGet`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGet {
    /// `None`: the pod's IP.
    pub host: Option<String>,
    pub port: u16,
    /// Starts with `/`.
    pub path: String,
    pub https: bool,
    /// `httpHeaders`, in order; a `Host` or `User-Agent` here replaces the default.
    pub headers: Vec<(String, String)>,
}

/// What a probe or hook does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    HttpGet(HttpGet),
    TcpSocket {
        /// `None`: the pod's IP.
        host: Option<String>,
        port: u16,
    },
    /// The gRPC health checking protocol (`grpc.health.v1.Health/Check`) on the pod IP.
    Grpc {
        port: u16,
        service: String,
    },
    /// The container's module run again with this argv.
    Exec {
        command: Vec<String>,
    },
    /// Hooks only: wait this long.
    Sleep(Duration),
}

impl Action {
    /// A probe's action; named ports are resolved against the container's ports.
    pub fn of_probe(p: &Probe, c: &Container) -> Result<Action, ProbeError> {
        if let Some(e) = &p.exec {
            return exec_action(e.command.as_deref());
        }
        if let Some(h) = &p.http_get {
            return http_get_action(h, c).map(Action::HttpGet);
        }
        if let Some(t) = &p.tcp_socket {
            return Ok(Action::TcpSocket {
                host: t.host.clone().filter(|h| !h.is_empty()),
                port: resolve_port(&t.port, c)?,
            });
        }
        if let Some(g) = &p.grpc {
            return Ok(Action::Grpc {
                port: port_number(i64::from(g.port))?,
                service: g.service.clone().unwrap_or_default(),
            });
        }
        Err(ProbeError::NoHandler)
    }

    /// A lifecycle hook's action.
    pub fn of_hook(h: &LifecycleHandler, c: &Container) -> Result<Action, ProbeError> {
        if let Some(e) = &h.exec {
            return exec_action(e.command.as_deref());
        }
        if let Some(g) = &h.http_get {
            return http_get_action(g, c).map(Action::HttpGet);
        }
        if let Some(s) = &h.sleep {
            return Ok(Action::Sleep(Duration::from_secs(
                u64::try_from(s.seconds).unwrap_or(0),
            )));
        }
        if h.tcp_socket.is_some() {
            return Err(ProbeError::UnsupportedHook("tcpSocket"));
        }
        Err(ProbeError::NoHandler)
    }
}

fn exec_action(command: Option<&[String]>) -> Result<Action, ProbeError> {
    match command {
        Some(cmd) if !cmd.is_empty() => Ok(Action::Exec {
            command: cmd.to_vec(),
        }),
        _ => Err(ProbeError::NoCommand),
    }
}

fn http_get_action(h: &HTTPGetAction, c: &Container) -> Result<HttpGet, ProbeError> {
    let https = match h.scheme.as_deref() {
        None | Some("") | Some("HTTP") => false,
        Some("HTTPS") => true,
        Some(other) => return Err(ProbeError::Scheme(other.to_string())),
    };
    let path = h.path.clone().unwrap_or_default();
    let path = if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    };
    Ok(HttpGet {
        host: h.host.clone().filter(|h| !h.is_empty()),
        port: resolve_port(&h.port, c)?,
        path,
        https,
        headers: h
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect(),
    })
}

/// A port number, or the name of one of the container's ports (a number written as a
/// string also works, as in the kubelet).
fn resolve_port(port: &IntOrString, c: &Container) -> Result<u16, ProbeError> {
    let n = match port {
        IntOrString::Int(n) => i64::from(*n),
        IntOrString::String(name) => {
            let named = c
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()));
            match named {
                Some(p) => i64::from(p.container_port),
                None => name.parse().map_err(|_| ProbeError::UnknownPort {
                    port: name.clone(),
                    container: c.name.clone(),
                })?,
            }
        }
    };
    port_number(n)
}

fn port_number(n: i64) -> Result<u16, ProbeError> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p > 0)
        .ok_or(ProbeError::InvalidPort(n))
}

/// One probe with its parameters, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    pub kind: ProbeKind,
    /// An error here is reported by each attempt ("probe errored") and changes nothing.
    pub action: Result<Action, ProbeError>,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    /// The probe's own `terminationGracePeriodSeconds`, for the preStop hook of a
    /// container it kills.
    pub termination_grace: Option<Duration>,
}

impl ProbeSpec {
    /// The probe with the API's defaults for unset (or zero) fields. Liveness and startup
    /// probes always need just one success, as the API requires.
    pub fn new(kind: ProbeKind, p: &Probe, c: &Container) -> ProbeSpec {
        let positive = |v: Option<i32>, default: i32| -> u32 {
            u32::try_from(v.filter(|v| *v > 0).unwrap_or(default)).unwrap_or(1)
        };
        let success_threshold = match kind {
            ProbeKind::Readiness => positive(p.success_threshold, DEFAULT_SUCCESS_THRESHOLD),
            ProbeKind::Liveness | ProbeKind::Startup => 1,
        };
        ProbeSpec {
            kind,
            action: Action::of_probe(p, c),
            initial_delay: Duration::from_secs(
                u64::try_from(p.initial_delay_seconds.unwrap_or(0)).unwrap_or(0),
            ),
            period: Duration::from_secs(u64::from(positive(
                p.period_seconds,
                DEFAULT_PERIOD_SECONDS,
            ))),
            timeout: Duration::from_secs(u64::from(positive(
                p.timeout_seconds,
                DEFAULT_TIMEOUT_SECONDS,
            ))),
            success_threshold,
            failure_threshold: positive(p.failure_threshold, DEFAULT_FAILURE_THRESHOLD),
            termination_grace: p
                .termination_grace_period_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs),
        }
    }

    /// The container's probes, startup first.
    pub fn of_container(c: &Container) -> Vec<ProbeSpec> {
        [
            (ProbeKind::Startup, &c.startup_probe),
            (ProbeKind::Liveness, &c.liveness_probe),
            (ProbeKind::Readiness, &c.readiness_probe),
        ]
        .into_iter()
        .filter_map(|(kind, p)| p.as_ref().map(|p| ProbeSpec::new(kind, p, c)))
        .collect()
    }
}

/// Consecutive results of one probe, counted as the kubelet counts them: the probe's
/// result becomes success after `successThreshold` successes in a row, failure after
/// `failureThreshold` failures in a row, and stays otherwise.
#[derive(Debug, Clone)]
pub struct Streak {
    success_threshold: u32,
    failure_threshold: u32,
    last: Option<bool>,
    run: u32,
}

impl Streak {
    pub fn new(success_threshold: u32, failure_threshold: u32) -> Streak {
        Streak {
            success_threshold: success_threshold.max(1),
            failure_threshold: failure_threshold.max(1),
            last: None,
            run: 0,
        }
    }

    /// Counts one attempt; the probe's result if this streak reached its threshold.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if self.last == Some(ok) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(ok);
            self.run = 1;
        }
        let threshold = if ok {
            self.success_threshold
        } else {
            self.failure_threshold
        };
        (self.run >= threshold).then_some(ok)
    }
}

/// How one attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Failed, with what the kubelet would say about it.
    Failure(String),
    /// Could not be attempted (a port name the container lacks…): reported, but the
    /// probe's result stays what it was, as with the kubelet's probe errors.
    Error(String),
}

/// What probes and hooks act on: the pod's address, and the running container's
/// sandbox for exec actions.
#[derive(Clone)]
pub struct Target {
    /// Where httpGet and tcpSocket go without a `host`, and where gRPC always goes.
    pub pod_ip: IpAddr,
    pub sandbox: Option<ContainerSandbox>,
}

impl Target {
    /// Runs a probe's action once, within `timeout`.
    pub async fn check(&self, action: &Action, timeout: Duration) -> Outcome {
        match action {
            Action::HttpGet(h) => http_probe(self.pod_ip, h, timeout).await,
            Action::TcpSocket { host, port } => {
                tcp_probe(host.as_deref(), self.pod_ip, *port, timeout).await
            }
            Action::Grpc { port, service } => {
                grpc_probe(self.pod_ip, *port, service, timeout).await
            }
            Action::Exec { command } => self.exec_probe(command, timeout).await,
            Action::Sleep(d) => {
                tokio::time::sleep(*d).await;
                Outcome::Success
            }
        }
    }

    async fn exec_probe(&self, command: &[String], timeout: Duration) -> Outcome {
        let run = async {
            match tokio::time::timeout(timeout, self.exec(command)).await {
                Ok(result) => result,
                Err(_) => Err(ExecFailure::TimedOut),
            }
        };
        match run.await {
            Ok(_) => Outcome::Success,
            Err(ExecFailure::NotRunning) => {
                Outcome::Error("the container is not running".to_string())
            }
            Err(ExecFailure::Start(m)) => Outcome::Error(m),
            Err(ExecFailure::TimedOut) => {
                Outcome::Failure(format!("command {:?} timed out", command.join(" ")))
            }
            Err(ExecFailure::Exit { output, exit }) => {
                if output.is_empty() {
                    Outcome::Failure(describe_exit(command, &exit))
                } else {
                    Outcome::Failure(output)
                }
            }
        }
    }

    /// Runs `command` in the container's sandbox to its end; its output on success.
    async fn exec(&self, command: &[String]) -> Result<String, ExecFailure> {
        let sandbox = self.sandbox.as_ref().ok_or(ExecFailure::NotRunning)?;
        let output = Arc::new(Capture::default());
        let io = ExecIo {
            stdin: None,
            stdout: output.clone(),
            stderr: output.clone(),
        };
        // Dropping this future (a timeout, the container stopping) drops the instance.
        let exit = sandbox
            .exec(command.to_vec(), io, CancellationToken::new())
            .await;
        let text = output.text();
        match exit {
            Exit::Exited(0) => Ok(text),
            Exit::Failed(m) => Err(ExecFailure::Start(m)),
            exit => Err(ExecFailure::Exit { output: text, exit }),
        }
    }
}

/// Why an exec action did not succeed.
enum ExecFailure {
    NotRunning,
    Start(String),
    TimedOut,
    Exit { output: String, exit: Exit },
}

fn describe_exit(command: &[String], exit: &Exit) -> String {
    let cmd = command.join(" ");
    match exit {
        Exit::Exited(code) => format!("command '{cmd}' exited with {code}"),
        Exit::Trapped(m) => format!("command '{cmd}' trapped: {m}"),
        Exit::OutOfMemory(m) => format!("command '{cmd}' ran out of memory: {m}"),
        Exit::Cancelled => format!("command '{cmd}' was cancelled"),
        Exit::Failed(m) => format!("command '{cmd}' could not start: {m}"),
    }
}

/// Output of an exec action, combined and cut at [`MAX_OUTPUT`].
#[derive(Default)]
struct Capture(Mutex<Vec<u8>>);

impl OutputSink for Capture {
    fn write(&self, bytes: &[u8]) {
        let mut buf = match self.0.lock() {
            Ok(b) => b,
            Err(p) => p.into_inner(),
        };
        let room = MAX_OUTPUT.saturating_sub(buf.len());
        buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

impl Capture {
    fn text(&self) -> String {
        let buf = match self.0.lock() {
            Ok(b) => b,
            Err(p) => p.into_inner(),
        };
        String::from_utf8_lossy(&buf).trim_end().to_string()
    }
}

/// `host:port`, with brackets around an IPv6 address.
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// An I/O error as Go words it (`connection refused`), which is what users of probe
/// messages know.
fn io_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

async fn tcp_probe(host: Option<&str>, pod_ip: IpAddr, port: u16, timeout: Duration) -> Outcome {
    let host = host.map_or_else(|| pod_ip.to_string(), str::to_string);
    let addr = join_host_port(&host, port);
    match tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port))).await {
        // The connection closes as it is dropped: a connect is the whole check.
        Ok(Ok(_)) => Outcome::Success,
        Ok(Err(e)) => Outcome::Failure(format!("dial tcp {addr}: connect: {}", io_text(&e))),
        Err(_) => Outcome::Failure(format!("dial tcp {addr}: i/o timeout")),
    }
}

async fn http_probe(pod_ip: IpAddr, h: &HttpGet, timeout: Duration) -> Outcome {
    let (host, url) = http_url(pod_ip, h);
    let user_agent = format!("kube-probe/{}", kube_minor());
    match tokio::time::timeout(timeout, http_get(&host, h, &user_agent)).await {
        Err(_) => Outcome::Failure(format!(
            "Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
        Ok(Err(e)) => Outcome::Failure(format!("Get {url:?}: {e}")),
        Ok(Ok(status)) if (200..400).contains(&status) => Outcome::Success,
        Ok(Ok(status)) => Outcome::Failure(format!("HTTP probe failed with statuscode: {status}")),
    }
}

fn http_url(pod_ip: IpAddr, h: &HttpGet) -> (String, String) {
    let host = h.host.clone().unwrap_or_else(|| pod_ip.to_string());
    let scheme = if h.https { "https" } else { "http" };
    let url = format!("{scheme}://{}{}", join_host_port(&host, h.port), h.path);
    (host, url)
}

/// `1.33`, from the kubelet version the node reports.
fn kube_minor() -> &'static str {
    static MINOR: OnceLock<String> = OnceLock::new();
    MINOR.get_or_init(|| {
        let v = crate::kubelet_version();
        let v = v.trim_start_matches('v');
        v.split('.').take(2).collect::<Vec<_>>().join(".")
    })
}

/// One GET with `Connection: close`; the response status. The body is read (up to
/// [`MAX_BODY`]) so the server sees a client that listened.
async fn http_get(host: &str, h: &HttpGet, user_agent: &str) -> Result<u16, String> {
    let addr = join_host_port(host, h.port);
    let stream = TcpStream::connect((host, h.port))
        .await
        .map_err(|e| format!("dial tcp {addr}: connect: {}", io_text(&e)))?;
    let _ = stream.set_nodelay(true);
    let mut req = http::Request::get(h.path.as_str())
        .header(http::header::HOST, addr.as_str())
        .header(http::header::USER_AGENT, user_agent)
        .header(http::header::ACCEPT, "*/*")
        .header(http::header::CONNECTION, "close");
    for (name, value) in &h.headers {
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) else {
            continue;
        };
        if let Some(headers) = req.headers_mut() {
            // A header the probe sets replaces the default of the same name.
            if [
                http::header::HOST,
                http::header::USER_AGENT,
                http::header::ACCEPT,
            ]
            .contains(&name)
            {
                headers.remove(&name);
            }
            headers.append(name, value);
        }
    }
    let req = req.body(FrameBody::empty()).map_err(|e| e.to_string())?;
    if h.https {
        let connector = tls_connector()?;
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| format!("invalid server name {host:?}: {e}"))?;
        let tls = connector
            .connect(name, stream)
            .await
            .map_err(|e| format!("tls: {}", io_text(&e)))?;
        send_http1(TokioIo::new(tls), req).await
    } else {
        send_http1(TokioIo::new(stream), req).await
    }
}

async fn send_http1<T>(io: T, req: http::Request<FrameBody>) -> Result<u16, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut read = 0;
        while read < MAX_BODY {
            match next_frame(&mut body).await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
                Some(Err(_)) | None => break,
            }
        }
        Ok::<u16, String>(status)
    };
    tokio::pin!(conn, exchange);
    tokio::select! {
        biased;
        r = &mut exchange => r,
        c = &mut conn => match c {
            // The connection ended (Connection: close) with the response delivered.
            Ok(()) => exchange.await,
            Err(e) => Err(e.to_string()),
        },
    }
}

async fn next_frame(body: &mut Incoming) -> Option<Result<Frame<Bytes>, hyper::Error>> {
    std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
}

/// A request or response body given as its frames.
#[derive(Default)]
struct FrameBody(VecDeque<Frame<Bytes>>);

impl FrameBody {
    fn empty() -> FrameBody {
        FrameBody::default()
    }

    fn data(bytes: Bytes) -> FrameBody {
        FrameBody(VecDeque::from([Frame::data(bytes)]))
    }
}

impl Body for FrameBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

/// TLS for HTTPS probes: like the kubelet, the server's certificate is not verified
/// (a probe asks "are you up", not "who are you").
fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        Ok(Arc::new(config))
    });
    config.clone().map(tokio_rustls::TlsConnector::from)
}

/// Accepts any server certificate; signatures are still checked, so the handshake is
/// a real one.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Go's way of writing a whole number of seconds (`1s`).
fn go_seconds(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

/// `grpc.health.v1.HealthCheckResponse.ServingStatus` names.
fn serving_status_name(status: u64) -> &'static str {
    match status {
        0 => "UNKNOWN",
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "UNKNOWN",
    }
}

/// gRPC status code names, as `rpc error: code = …` shows them.
fn grpc_code_name(code: u32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}

/// The gRPC health check, over HTTP/2 without TLS as the kubelet does it.
async fn grpc_probe(pod_ip: IpAddr, port: u16, service: &str, timeout: Duration) -> Outcome {
    let addr = join_host_port(&pod_ip.to_string(), port);
    let deadline = Instant::now() + timeout;
    let stream = match tokio::time::timeout(timeout, TcpStream::connect((pod_ip, port))).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Outcome::Failure(format!(
                "timeout: failed to connect service {addr:?} within {}: {}",
                go_seconds(timeout),
                io_text(&e)
            ))
        }
        Err(_) => {
            return Outcome::Failure(format!(
                "timeout: failed to connect service {addr:?} within {}",
                go_seconds(timeout)
            ))
        }
    };
    let _ = stream.set_nodelay(true);
    match tokio::time::timeout_at(deadline, grpc_check(stream, &addr, service)).await {
        Err(_) => Outcome::Failure(format!(
            "timeout: health rpc did not complete within {}",
            go_seconds(timeout)
        )),
        Ok(Err(GrpcFailure::Status { code: 12, message })) => Outcome::Failure(format!(
            "this server does not implement the grpc health protocol (grpc.health.v1.Health): {message}"
        )),
        Ok(Err(GrpcFailure::Status { code, message })) => Outcome::Failure(format!(
            "error: health rpc probe failed: rpc error: code = {} desc = {message}",
            grpc_code_name(code)
        )),
        Ok(Err(GrpcFailure::Transport(e))) => {
            Outcome::Failure(format!("error: health rpc probe failed: {e}"))
        }
        Ok(Ok(1)) => Outcome::Success,
        Ok(Ok(status)) => Outcome::Failure(format!(
            "service unhealthy (responded with {:?})",
            serving_status_name(status)
        )),
    }
}

/// Why a gRPC health check did not give a status.
enum GrpcFailure {
    /// The RPC failed with this gRPC status.
    Status { code: u32, message: String },
    /// HTTP/2 or framing trouble.
    Transport(String),
}

/// `Check(service)`; the response's serving status.
async fn grpc_check(stream: TcpStream, addr: &str, service: &str) -> Result<u64, GrpcFailure> {
    let transport = |e: hyper::Error| GrpcFailure::Transport(e.to_string());
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(transport)?;
    // HealthCheckRequest { string service = 1; } in a length-prefixed gRPC message.
    let mut message = Vec::new();
    if !service.is_empty() {
        message.push(0x0a);
        put_varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let req = http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header(
            http::header::USER_AGENT,
            format!("kube-probe/{}", kube_minor()),
        )
        .body(FrameBody::data(Bytes::from(framed)))
        .map_err(|e| GrpcFailure::Transport(e.to_string()))?;
    let exchange = async {
        let resp = sender.send_request(req).await.map_err(transport)?;
        let (parts, mut body) = resp.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(GrpcFailure::Status {
                code: 2,
                message: format!(
                    "unexpected HTTP status code received from server: {}",
                    parts.status.as_u16()
                ),
            });
        }
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(frame) = next_frame(&mut body).await {
            let frame = frame.map_err(transport)?;
            match frame.into_data() {
                Ok(d) if data.len() < MAX_BODY => data.extend_from_slice(&d),
                Ok(_) => {}
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        // A failed RPC may send its status in the headers alone ("trailers-only").
        let status_of = |h: &http::HeaderMap| {
            h.get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok())
                .map(|code| {
                    let message = h
                        .get("grpc-message")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    (code, message)
                })
        };
        let status = trailers
            .as_ref()
            .and_then(status_of)
            .or_else(|| status_of(&parts.headers));
        match status {
            Some((0, _)) => {}
            Some((code, message)) => return Err(GrpcFailure::Status { code, message }),
            None => {
                return Err(GrpcFailure::Status {
                    code: 13,
                    message: "server closed the stream without sending trailers".into(),
                })
            }
        }
        parse_health_response(&data).ok_or_else(|| {
            GrpcFailure::Transport("malformed HealthCheckResponse message".to_string())
        })
    };
    tokio::pin!(conn, exchange);
    tokio::select! {
        biased;
        r = &mut exchange => r,
        c = &mut conn => match c {
            Ok(()) => exchange.await,
            Err(e) => Err(transport(e)),
        },
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The `status` (field 1) of a length-prefixed `HealthCheckResponse`; fields it does
/// not know are skipped, a missing status is UNKNOWN (0).
fn parse_health_response(data: &[u8]) -> Option<u64> {
    let (&flag, rest) = data.split_first()?;
    if flag != 0 || rest.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let msg = rest.get(4..4 + len)?;
    let mut pos = 0;
    let mut status = 0;
    while pos < msg.len() {
        let key = get_varint(msg, &mut pos)?;
        match key & 7 {
            0 => {
                let v = get_varint(msg, &mut pos)?;
                if key >> 3 == 1 {
                    status = v;
                }
            }
            1 => pos += 8,
            2 => {
                let n = usize::try_from(get_varint(msg, &mut pos)?).ok()?;
                pos = pos.checked_add(n)?;
            }
            5 => pos += 4,
            _ => return None,
        }
    }
    (pos == msg.len()).then_some(status)
}

/// Where a container run's probe results and events go.
pub trait ProbeSink: Send + Sync + 'static {
    /// The readiness probe's result changed.
    fn set_ready(&self, ready: bool);
    /// The startup probe succeeded: the container is started (and ready, unless it
    /// has a readiness probe).
    fn set_started(&self);
    /// An event about the container.
    fn event(&self, kind: EventType, reason: &str, message: &str);
}

/// Why a container run was killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillCause {
    Liveness,
    Startup,
    PostStartHook,
}

impl KillCause {
    /// The `Killing` event's message.
    fn message(self, container: &str) -> String {
        match self {
            KillCause::Liveness => {
                format!("Container {container} failed liveness probe, will be restarted")
            }
            KillCause::Startup => {
                format!("Container {container} failed startup probe, will be restarted")
            }
            KillCause::PostStartHook => {
                format!("Container {container} failed its postStart hook, will be restarted")
            }
        }
    }
}

/// Runs a lifecycle hook once. `Err` is the message the kubelet puts in its
/// FailedPostStartHook/FailedPreStopHook event. An httpGet hook succeeds on any HTTP
/// response (the kubelet does not look at its status); no timeout of its own: the
/// caller bounds it.
pub async fn run_hook(
    handler: &LifecycleHandler,
    container: &Container,
    target: &Target,
    pod_ref: &str,
) -> Result<(), String> {
    let action = Action::of_hook(handler, container).map_err(|e| {
        format!(
            "Lifecycle hook for Container {:?} in Pod {pod_ref:?} failed - error: {e}",
            container.name
        )
    })?;
    match action {
        Action::Exec { command } => match target.exec(&command).await {
            Ok(_) => Ok(()),
            Err(failure) => {
                let (error, output) = match failure {
                    ExecFailure::NotRunning => {
                        ("the container is not running".to_string(), String::new())
                    }
                    ExecFailure::Start(m) => (m, String::new()),
                    ExecFailure::TimedOut => (
                        format!("command '{}' timed out", command.join(" ")),
                        String::new(),
                    ),
                    ExecFailure::Exit { output, exit } => (describe_exit(&command, &exit), output),
                };
                Err(format!(
                    "Exec lifecycle hook ([{}]) for Container {:?} in Pod {pod_ref:?} failed - error: {error}, message: {output:?}",
                    command.join(" "),
                    container.name
                ))
            }
        },
        Action::HttpGet(h) => {
            let (host, url) = http_url(target.pod_ip, &h);
            let user_agent = format!("kube-lifecycle/{}", kube_minor());
            match http_get(&host, &h, &user_agent).await {
                Ok(_) => Ok(()),
                Err(e) => Err(format!(
                    "HTTP lifecycle hook ({}) for Container {:?} in Pod {pod_ref:?} failed - error: Get {url:?}: {e}",
                    h.path, container.name
                )),
            }
        }
        Action::Sleep(d) => {
            tokio::time::sleep(d).await;
            Ok(())
        }
        Action::TcpSocket { .. } | Action::Grpc { .. } => Err(format!(
            "Lifecycle hook for Container {:?} in Pod {pod_ref:?} failed - error: {}",
            container.name,
            ProbeError::UnsupportedHook("tcpSocket")
        )),
    }
}

/// Runs the container's preStop hook (if it has one) within `grace`. `Err` is the
/// FailedPreStopHook message; a hook still running when `grace` ends is abandoned
/// without an error, as the kubelet does.
pub async fn pre_stop(
    container: &Container,
    target: &Target,
    pod_ref: &str,
    grace: Duration,
) -> Result<(), String> {
    let Some(handler) = container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
    else {
        return Ok(());
    };
    match tokio::time::timeout(grace, run_hook(handler, container, target, pod_ref)).await {
        Ok(result) => result,
        Err(_) => {
            tracing::info!(container = %container.name, pod = pod_ref, grace_s = grace.as_secs(), "preStop hook did not complete within the grace period");
            Ok(())
        }
    }
}

/// The pod's grace period for stopping containers: `deletionGracePeriodSeconds` of a
/// pod being deleted, else `terminationGracePeriodSeconds`, else 30 s.
pub fn termination_grace(pod: &Pod) -> Duration {
    pod.metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .map_or(DEFAULT_GRACE, |s| {
            Duration::from_secs(u64::try_from(s).unwrap_or(0))
        })
}

/// Whether a container needs [`supervise`]: it has a probe or a postStart hook. (A
/// preStop hook alone matters only when the pod is deleted, see [`pre_stop`].)
pub fn needs_supervision(c: &Container) -> bool {
    c.startup_probe.is_some()
        || c.liveness_probe.is_some()
        || c.readiness_probe.is_some()
        || c.lifecycle.as_ref().is_some_and(|l| l.post_start.is_some())
}

/// One container run, as its probes and hooks see it.
pub struct RunProbes {
    pub container: Container,
    /// `name_namespace(uid)`, for hook messages.
    pub pod_ref: String,
    pub target: Target,
    /// The pod's grace period for a preStop hook before a kill.
    pub grace: Duration,
    /// When the instance started (`initialDelaySeconds` counts from here).
    pub started_at: Instant,
    /// Counts the guest's TCP listens (see `RunSpec::listens`): a quick retry goes as
    /// soon as the guest starts listening, not when its timer fires.
    pub listens: Option<watch::Receiver<u64>>,
}

/// Attempts of one probe: production runs the action against the target; tests
/// script outcomes.
pub type Check = Arc<dyn Fn(Duration) -> BoxFuture<'static, Outcome> + Send + Sync>;

fn check_for(target: &Target, action: &Result<Action, ProbeError>) -> Check {
    let shared = Arc::new((target.clone(), action.clone()));
    Arc::new(move |timeout| {
        let shared = shared.clone();
        Box::pin(async move {
            match &shared.1 {
                Ok(action) => shared.0.check(action, timeout).await,
                Err(e) => Outcome::Error(e.to_string()),
            }
        })
    })
}

/// Watches one container run: runs its postStart hook, then its probes, each in a
/// task of its own. Returns only when the run must die (a liveness or startup probe
/// gave up, or postStart failed) — after the `Killing` event and the preStop hook,
/// with `instance` cancelled. Dropping the future stops every probe (the run ended).
pub async fn supervise(
    run: RunProbes,
    sink: Arc<dyn ProbeSink>,
    instance: CancellationToken,
) -> KillCause {
    let checks: Vec<(ProbeSpec, Check)> = ProbeSpec::of_container(&run.container)
        .into_iter()
        .map(|spec| {
            let check = check_for(&run.target, &spec.action);
            (spec, check)
        })
        .collect();
    supervise_with(run, checks, sink, instance).await
}

/// [`supervise`] with the probes' attempts given.
async fn supervise_with(
    run: RunProbes,
    checks: Vec<(ProbeSpec, Check)>,
    sink: Arc<dyn ProbeSink>,
    instance: CancellationToken,
) -> KillCause {
    let c = &run.container;
    if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
        if let Err(message) = run_hook(hook, c, &run.target, &run.pod_ref).await {
            sink.event(EventType::Warning, "FailedPostStartHook", &message);
            kill(&run, &*sink, KillCause::PostStartHook, None, &instance).await;
            return KillCause::PostStartHook;
        }
    }
    if checks.is_empty() {
        return std::future::pending().await;
    }
    let has_startup = checks.iter().any(|(s, _)| s.kind == ProbeKind::Startup);
    let (started_tx, started_rx) = watch::channel(!has_startup);
    let mut tasks = JoinSet::new();
    for (spec, check) in checks {
        tasks.spawn(probe_loop(
            spec,
            check,
            sink.clone(),
            run.started_at,
            started_rx.clone(),
            run.listens.clone(),
        ));
    }
    let (cause, grace) = loop {
        match tasks.join_next().await {
            // Every probe is done (a startup probe that succeeded, nothing else):
            // nothing can kill this run any more.
            None => return std::future::pending().await,
            Some(Ok(ProbeEnd::Started)) => {
                sink.set_started();
                let _ = started_tx.send(true);
            }
            Some(Ok(ProbeEnd::Kill(kind, grace))) => {
                let cause = if kind == ProbeKind::Startup {
                    KillCause::Startup
                } else {
                    KillCause::Liveness
                };
                break (cause, grace);
            }
            Some(Err(e)) => {
                tracing::warn!(container = %c.name, pod = %run.pod_ref, error = %e, "a probe task ended abnormally")
            }
        }
    };
    // Probes are on hold while the container is killed: a new run starts new ones.
    tasks.abort_all();
    kill(&run, &*sink, cause, grace, &instance).await;
    cause
}

/// `Killing`, preStop within the grace period, then the instance is cancelled.
async fn kill(
    run: &RunProbes,
    sink: &dyn ProbeSink,
    cause: KillCause,
    probe_grace: Option<Duration>,
    instance: &CancellationToken,
) {
    let c = &run.container;
    tracing::info!(container = %c.name, pod = %run.pod_ref, ?cause, "killing the container");
    sink.event(EventType::Normal, "Killing", &cause.message(&c.name));
    let grace = probe_grace.unwrap_or(run.grace);
    if let Err(message) = pre_stop(c, &run.target, &run.pod_ref, grace).await {
        sink.event(EventType::Warning, "FailedPreStopHook", &message);
    }
    instance.cancel();
}

/// How a probe's loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeEnd {
    /// The startup probe succeeded.
    Started,
    /// This probe says the container must be killed (with the probe's own grace
    /// period, if it has one).
    Kill(ProbeKind, Option<Duration>),
}

/// A small token bucket for one probe's `Unhealthy` events.
struct EventBudget {
    tokens: u32,
    refilled: Instant,
}

impl EventBudget {
    fn new(now: Instant) -> EventBudget {
        EventBudget {
            tokens: EVENT_BURST,
            refilled: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        while self.tokens < EVENT_BURST && now.duration_since(self.refilled) >= EVENT_REFILL {
            self.tokens += 1;
            self.refilled += EVENT_REFILL;
        }
        if self.tokens == EVENT_BURST {
            self.refilled = now;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// One probe, attempt after attempt, until it decides something only the supervisor
/// can act on (started, or kill). Readiness changes go straight to the sink.
async fn probe_loop(
    spec: ProbeSpec,
    check: Check,
    sink: Arc<dyn ProbeSink>,
    run_started: Instant,
    mut started: watch::Receiver<bool>,
    mut listens: Option<watch::Receiver<u64>>,
) -> ProbeEnd {
    let kind = spec.kind;
    if kind != ProbeKind::Startup && started.wait_for(|s| *s).await.is_err() {
        // The supervisor is gone: so is the run.
        return std::future::pending().await;
    }
    tokio::time::sleep_until(run_started + spec.initial_delay).await;
    let first = Instant::now();
    let fast_until = first + FAST_WINDOW;
    // Quick retries last until a result counts or the window closes.
    let mut fast_retry = Some(FAST_FIRST_RETRY);
    let mut streak = Streak::new(spec.success_threshold, spec.failure_threshold);
    let mut budget = EventBudget::new(first);
    let mut reported: Option<bool> = None;
    loop {
        let attempt = Instant::now();
        let outcome = check(spec.timeout).await;
        let now = Instant::now();
        let counted = match outcome {
            Outcome::Success => Some(true),
            Outcome::Failure(_) if fast_retry.is_some() && now < fast_until => None,
            Outcome::Failure(message) => {
                if budget.take(now) {
                    sink.event(
                        EventType::Warning,
                        "Unhealthy",
                        &format!("{} probe failed: {message}", kind.title()),
                    );
                }
                Some(false)
            }
            Outcome::Error(message) => {
                fast_retry = None;
                if budget.take(now) {
                    sink.event(
                        EventType::Warning,
                        "Unhealthy",
                        &format!("{} probe errored: {message}", kind.title()),
                    );
                }
                None
            }
        };
        if let Some(ok) = counted {
            fast_retry = None;
            match (kind, streak.record(ok)) {
                (ProbeKind::Readiness, Some(ready)) if reported != Some(ready) => {
                    reported = Some(ready);
                    sink.set_ready(ready);
                }
                (ProbeKind::Startup, Some(true)) => return ProbeEnd::Started,
                (ProbeKind::Liveness | ProbeKind::Startup, Some(false)) => {
                    return ProbeEnd::Kill(kind, spec.termination_grace)
                }
                _ => {}
            }
        }
        match fast_retry {
            Some(delay) if now + delay < fast_until => {
                fast_retry = Some((delay * 2).min(FAST_MAX_RETRY));
                quick_retry_wait(delay, listens.as_mut()).await;
            }
            _ => {
                fast_retry = None;
                // Periods count from each attempt's start, as the kubelet's ticker.
                tokio::time::sleep_until((attempt + spec.period).max(now)).await;
            }
        }
    }
}

/// Waits for a quick retry: `delay`, or less if the guest starts listening meanwhile
/// (or did since the last look) — its server is most likely what the probe waits for.
async fn quick_retry_wait(delay: Duration, listens: Option<&mut watch::Receiver<u64>>) {
    let Some(listens) = listens else {
        return tokio::time::sleep(delay).await;
    };
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        changed = listens.changed() => match changed {
            // The listen call is under way in the guest's task: let it finish.
            Ok(()) => tokio::task::yield_now().await,
            // The run is over; the timer is all there is.
            Err(_) => tokio::time::sleep(delay).await,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn container(v: serde_json::Value) -> Container {
        serde_json::from_value(v).expect("a container")
    }

    fn probe(v: serde_json::Value) -> Probe {
        serde_json::from_value(v).expect("a probe")
    }

    #[derive(Default)]
    struct Recorded {
        ready: Vec<bool>,
        started: usize,
        events: Vec<(EventType, String, String)>,
    }

    /// A sink that remembers everything.
    #[derive(Default)]
    struct TestSink(Mutex<Recorded>);

    impl ProbeSink for TestSink {
        fn set_ready(&self, ready: bool) {
            self.0.lock().unwrap().ready.push(ready);
        }
        fn set_started(&self) {
            self.0.lock().unwrap().started += 1;
        }
        fn event(&self, kind: EventType, reason: &str, message: &str) {
            self.0
                .lock()
                .unwrap()
                .events
                .push((kind, reason.to_string(), message.to_string()));
        }
    }

    impl TestSink {
        fn ready(&self) -> Vec<bool> {
            self.0.lock().unwrap().ready.clone()
        }
        fn started(&self) -> usize {
            self.0.lock().unwrap().started
        }
        fn reasons(&self) -> Vec<String> {
            self.0
                .lock()
                .unwrap()
                .events
                .iter()
                .map(|e| e.1.clone())
                .collect()
        }
        fn messages(&self, reason: &str) -> Vec<String> {
            self.0
                .lock()
                .unwrap()
                .events
                .iter()
                .filter(|e| e.1 == reason)
                .map(|e| e.2.clone())
                .collect()
        }
    }

    /// Attempts whose outcomes a test switches, counting attempts.
    #[derive(Default)]
    struct Script {
        ok: std::sync::atomic::AtomicBool,
        attempts: std::sync::atomic::AtomicUsize,
    }

    impl Script {
        fn set(&self, ok: bool) {
            self.ok.store(ok, std::sync::atomic::Ordering::SeqCst);
        }
        fn attempts(&self) -> usize {
            self.attempts.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    fn scripted(script: &Arc<Script>) -> Check {
        let script = script.clone();
        Arc::new(move |_timeout| {
            script
                .attempts
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let ok = script.ok.load(std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                if ok {
                    Outcome::Success
                } else {
                    Outcome::Failure("scripted failure".into())
                }
            })
        })
    }

    /// A probe with a short period (real time: tests take a second or two).
    fn spec(kind: ProbeKind, success: u32, failure: u32) -> ProbeSpec {
        ProbeSpec {
            kind,
            action: Err(ProbeError::NoHandler),
            initial_delay: Duration::ZERO,
            period: Duration::from_millis(20),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
            termination_grace: None,
        }
    }

    fn run_probes(c: Container) -> RunProbes {
        RunProbes {
            container: c,
            pod_ref: "p_default(uid)".into(),
            target: Target {
                pod_ip: IpAddr::from([127, 0, 0, 1]),
                sandbox: None,
            },
            grace: Duration::from_secs(30),
            started_at: Instant::now(),
            listens: None,
        }
    }

    #[tokio::test]
    async fn a_quick_retry_goes_when_the_guest_listens() {
        let (tx, mut rx) = watch::channel(0u64);
        let begun = std::time::Instant::now();
        let wait = tokio::spawn(async move {
            quick_retry_wait(Duration::from_secs(30), Some(&mut rx)).await;
            rx
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send_modify(|n| *n += 1);
        let mut rx = tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("the listen cut the 30 s wait short")
            .expect("joins");
        assert!(begun.elapsed() < Duration::from_secs(10));
        // A listen that happened while nobody waited is not lost either.
        tx.send_modify(|n| *n += 1);
        tokio::time::timeout(
            Duration::from_secs(10),
            quick_retry_wait(Duration::from_secs(30), Some(&mut rx)),
        )
        .await
        .expect("an earlier listen counts");
        // With nothing to watch, the timer is all there is.
        let begun = Instant::now();
        quick_retry_wait(Duration::from_millis(30), None).await;
        assert!(begun.elapsed() >= Duration::from_millis(30));
    }

    /// Polls `cond` until it holds, for at most 10 s.
    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "never happened: {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[test]
    fn probe_parameters_default_as_in_the_api() {
        let c =
            container(json!({"name": "web", "ports": [{"name": "http", "containerPort": 8080}]}));
        let p = probe(json!({"httpGet": {"port": "http", "path": "ready"}}));
        let s = ProbeSpec::new(ProbeKind::Readiness, &p, &c);
        assert_eq!(s.initial_delay, Duration::ZERO);
        assert_eq!(s.period, Duration::from_secs(10));
        assert_eq!(s.timeout, Duration::from_secs(1));
        assert_eq!((s.success_threshold, s.failure_threshold), (1, 3));
        assert_eq!(s.termination_grace, None);
        assert_eq!(
            s.action,
            Ok(Action::HttpGet(HttpGet {
                host: None,
                port: 8080,
                path: "/ready".into(),
                https: false,
                headers: vec![],
            }))
        );

        let p = probe(json!({
            "tcpSocket": {"port": 9000}, "initialDelaySeconds": 2, "periodSeconds": 0,
            "timeoutSeconds": 5, "successThreshold": 4, "failureThreshold": 1,
            "terminationGracePeriodSeconds": 7
        }));
        let s = ProbeSpec::new(ProbeKind::Liveness, &p, &c);
        assert_eq!(s.initial_delay, Duration::from_secs(2));
        assert_eq!(s.period, Duration::from_secs(10), "0 is unset");
        assert_eq!(s.timeout, Duration::from_secs(5));
        assert_eq!(s.success_threshold, 1, "liveness needs one success");
        assert_eq!(s.failure_threshold, 1);
        assert_eq!(s.termination_grace, Some(Duration::from_secs(7)));
        assert_eq!(
            s.action,
            Ok(Action::TcpSocket {
                host: None,
                port: 9000
            })
        );
    }

    #[test]
    fn ports_and_handlers_are_checked() {
        let c =
            container(json!({"name": "web", "ports": [{"name": "http", "containerPort": 8080}]}));
        let action = |v| Action::of_probe(&probe(v), &c);
        assert_eq!(
            action(json!({"tcpSocket": {"port": "metrics"}})),
            Err(ProbeError::UnknownPort {
                port: "metrics".into(),
                container: "web".into()
            })
        );
        assert_eq!(
            action(json!({"tcpSocket": {"port": "8081"}})),
            Ok(Action::TcpSocket {
                host: None,
                port: 8081
            })
        );
        assert_eq!(
            action(json!({"tcpSocket": {"port": 70000}})),
            Err(ProbeError::InvalidPort(70000))
        );
        assert_eq!(action(json!({})), Err(ProbeError::NoHandler));
        assert_eq!(
            action(json!({"exec": {"command": []}})),
            Err(ProbeError::NoCommand)
        );
        assert_eq!(
            action(json!({"grpc": {"port": 9090}})),
            Ok(Action::Grpc {
                port: 9090,
                service: String::new()
            })
        );
        assert_eq!(
            action(json!({"httpGet": {"port": 80, "scheme": "FTP"}})),
            Err(ProbeError::Scheme("FTP".into()))
        );
        let hook: LifecycleHandler =
            serde_json::from_value(json!({"tcpSocket": {"port": 80}})).unwrap();
        assert_eq!(
            Action::of_hook(&hook, &c),
            Err(ProbeError::UnsupportedHook("tcpSocket"))
        );
        let hook: LifecycleHandler =
            serde_json::from_value(json!({"sleep": {"seconds": 3}})).unwrap();
        assert_eq!(
            Action::of_hook(&hook, &c),
            Ok(Action::Sleep(Duration::from_secs(3)))
        );
    }

    #[test]
    fn results_change_only_at_their_thresholds() {
        let mut s = Streak::new(2, 3);
        assert_eq!(s.record(true), None);
        assert_eq!(s.record(true), Some(true));
        assert_eq!(s.record(true), Some(true));
        assert_eq!(s.record(false), None);
        assert_eq!(s.record(false), None);
        assert_eq!(s.record(true), None, "a success breaks the failure streak");
        assert_eq!(s.record(false), None);
        assert_eq!(s.record(false), None);
        assert_eq!(s.record(false), Some(false));
        let mut s = Streak::new(1, 1);
        assert_eq!(s.record(false), Some(false));
        assert_eq!(s.record(true), Some(true));
    }

    #[test]
    fn event_budget_allows_a_burst_then_one_per_refill() {
        let t0 = Instant::now();
        let mut b = EventBudget::new(t0);
        for _ in 0..EVENT_BURST {
            assert!(b.take(t0));
        }
        assert!(!b.take(t0 + Duration::from_secs(1)));
        assert!(b.take(t0 + EVENT_REFILL));
        assert!(!b.take(t0 + EVENT_REFILL + Duration::from_secs(1)));
    }

    #[test]
    fn grace_comes_from_the_deletion_then_the_spec() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"}, "spec": {"containers": [], "terminationGracePeriodSeconds": 5}
        }))
        .unwrap();
        assert_eq!(termination_grace(&pod), Duration::from_secs(5));
        let mut deleting = pod.clone();
        deleting.metadata.deletion_grace_period_seconds = Some(0);
        assert_eq!(termination_grace(&deleting), Duration::ZERO);
        assert_eq!(termination_grace(&Pod::default()), DEFAULT_GRACE);
    }

    #[test]
    fn health_responses_parse() {
        // status SERVING, plus an unknown string field 2.
        let msg = [0x08, 0x01, 0x12, 0x01, b'x'];
        let mut framed = vec![0, 0, 0, 0, msg.len() as u8];
        framed.extend_from_slice(&msg);
        assert_eq!(parse_health_response(&framed), Some(1));
        assert_eq!(parse_health_response(&[0, 0, 0, 0, 0]), Some(0));
        assert_eq!(parse_health_response(&[0, 0, 0, 0, 3, 0x08]), None);
        let mut v = Vec::new();
        put_varint(&mut v, 300);
        let mut pos = 0;
        assert_eq!(get_varint(&v, &mut pos), Some(300));
    }

    #[tokio::test]
    async fn readiness_follows_the_probe_after_quick_first_attempts() {
        let script = Arc::new(Script::default());
        let sink = Arc::new(TestSink::default());
        let c = container(json!({"name": "web"}));
        let run = run_probes(c);
        let checks = vec![(spec(ProbeKind::Readiness, 1, 1), scripted(&script))];
        let sup = tokio::spawn(supervise_with(
            run,
            checks,
            sink.clone(),
            CancellationToken::new(),
        ));
        // Still binding: quick retries, not counted, no events.
        until("a few quick attempts", || script.attempts() >= 4).await;
        assert!(sink.ready().is_empty());
        assert!(sink.reasons().is_empty(), "{:?}", sink.reasons());
        let before = Instant::now();
        script.set(true);
        until("ready", || sink.ready() == vec![true]).await;
        assert!(
            before.elapsed() < FAST_WINDOW,
            "ready only after {:?}",
            before.elapsed()
        );
        script.set(false);
        until("unready", || sink.ready() == vec![true, false]).await;
        assert_eq!(
            sink.messages("Unhealthy"),
            vec!["Readiness probe failed: scripted failure".to_string()]
        );
        script.set(true);
        until("ready again", || sink.ready().len() == 3).await;
        assert!(!sup.is_finished(), "readiness never kills");
        sup.abort();
    }

    #[tokio::test]
    async fn liveness_kills_after_failure_threshold() {
        let script = Arc::new(Script::default());
        script.set(true);
        let sink = Arc::new(TestSink::default());
        let run = run_probes(container(json!({"name": "web"})));
        let instance = CancellationToken::new();
        let checks = vec![(spec(ProbeKind::Liveness, 1, 3), scripted(&script))];
        let sup = tokio::spawn(supervise_with(run, checks, sink.clone(), instance.clone()));
        until("a first success", || script.attempts() >= 2).await;
        script.set(false);
        let failing_from = script.attempts();
        let cause = sup.await.unwrap();
        assert_eq!(cause, KillCause::Liveness);
        assert!(instance.is_cancelled());
        assert_eq!(script.attempts() - failing_from, 3);
        assert_eq!(sink.messages("Unhealthy").len(), 3);
        assert_eq!(
            sink.messages("Killing"),
            vec!["Container web failed liveness probe, will be restarted".to_string()]
        );
    }

    #[tokio::test]
    async fn startup_holds_back_liveness_and_readiness() {
        let startup = Arc::new(Script::default());
        let liveness = Arc::new(Script::default());
        liveness.set(true);
        let readiness = Arc::new(Script::default());
        readiness.set(true);
        let sink = Arc::new(TestSink::default());
        let run = run_probes(container(json!({"name": "web"})));
        let checks = vec![
            (spec(ProbeKind::Startup, 1, 30), scripted(&startup)),
            (spec(ProbeKind::Liveness, 1, 3), scripted(&liveness)),
            (spec(ProbeKind::Readiness, 1, 3), scripted(&readiness)),
        ];
        let sup = tokio::spawn(supervise_with(
            run,
            checks,
            sink.clone(),
            CancellationToken::new(),
        ));
        until("startup attempts past the quick window", || {
            startup.attempts() >= 15
        })
        .await;
        assert_eq!(liveness.attempts(), 0);
        assert_eq!(readiness.attempts(), 0);
        assert_eq!(sink.started(), 0);
        assert!(sink.ready().is_empty());
        startup.set(true);
        until("started and ready", || {
            sink.started() == 1 && sink.ready() == vec![true]
        })
        .await;
        until("liveness running", || liveness.attempts() >= 2).await;
        let n = startup.attempts();
        let m = liveness.attempts();
        until("more liveness attempts", || liveness.attempts() >= m + 5).await;
        assert_eq!(
            startup.attempts(),
            n,
            "a started container's startup probe stops"
        );
        assert!(!sup.is_finished());
        sup.abort();
    }

    #[tokio::test]
    async fn a_failing_startup_probe_kills() {
        let startup = Arc::new(Script::default());
        let sink = Arc::new(TestSink::default());
        let run = run_probes(container(json!({"name": "web"})));
        let checks = vec![(spec(ProbeKind::Startup, 1, 2), scripted(&startup))];
        let cause = supervise_with(run, checks, sink.clone(), CancellationToken::new()).await;
        assert_eq!(cause, KillCause::Startup);
        assert_eq!(sink.started(), 0);
        assert_eq!(
            sink.messages("Killing"),
            vec!["Container web failed startup probe, will be restarted".to_string()]
        );
    }

    /// A raw HTTP server answering each connection with `status`; sends each request
    /// head it read.
    async fn http_server(status: u16) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
                    let body = "hello";
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        (port, rx)
    }

    fn local() -> IpAddr {
        IpAddr::from([127, 0, 0, 1])
    }

    fn get(port: u16, path: &str) -> Action {
        Action::HttpGet(HttpGet {
            host: None,
            port,
            path: path.into(),
            https: false,
            headers: vec![],
        })
    }

    /// A port nothing listens on.
    async fn closed_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn http_get_succeeds_on_2xx_and_3xx_and_fails_otherwise() {
        let target = Target {
            pod_ip: local(),
            sandbox: None,
        };
        let t = Duration::from_secs(2);
        let (ok, mut heads) = http_server(200).await;
        assert_eq!(target.check(&get(ok, "/ready"), t).await, Outcome::Success);
        let head = heads.recv().await.unwrap();
        assert!(head.starts_with("GET /ready HTTP/1.1\r\n"), "{head}");
        assert!(head.contains(&format!("host: 127.0.0.1:{ok}")), "{head}");
        assert!(head.contains("user-agent: kube-probe/1.33"), "{head}");
        let (redirect, _) = http_server(302).await;
        assert_eq!(target.check(&get(redirect, "/"), t).await, Outcome::Success);
        let (unavailable, _) = http_server(503).await;
        assert_eq!(
            target.check(&get(unavailable, "/"), t).await,
            Outcome::Failure("HTTP probe failed with statuscode: 503".into())
        );
        let closed = closed_port().await;
        assert_eq!(
            target.check(&get(closed, "/healthz"), t).await,
            Outcome::Failure(format!(
                "Get \"http://127.0.0.1:{closed}/healthz\": dial tcp 127.0.0.1:{closed}: connect: connection refused"
            ))
        );
        // Headers from the probe, a Host among them, replace the defaults.
        let action = Action::HttpGet(HttpGet {
            host: Some("127.0.0.1".into()),
            port: ok,
            path: "/x".into(),
            https: false,
            headers: vec![
                ("Host".into(), "example.test".into()),
                ("X-Probe".into(), "yes".into()),
            ],
        });
        assert_eq!(target.check(&action, t).await, Outcome::Success);
        let head = heads.recv().await.unwrap();
        assert!(head.contains("host: example.test\r\n"), "{head}");
        assert!(!head.contains(&format!(":{ok}\r\n")), "{head}");
        assert!(head.contains("x-probe: yes"), "{head}");
    }

    #[tokio::test]
    async fn http_get_times_out() {
        // Accepts and never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let target = Target {
            pod_ip: local(),
            sandbox: None,
        };
        let outcome = target
            .check(&get(port, "/"), Duration::from_millis(200))
            .await;
        let Outcome::Failure(m) = outcome else {
            panic!("{outcome:?}")
        };
        assert!(m.contains("context deadline exceeded"), "{m}");
        holder.abort();
    }

    #[tokio::test]
    async fn https_get_accepts_any_certificate() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(s).await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = tls.read(&mut buf).await.unwrap();
            tls.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let _ = tls.shutdown().await;
        });
        let target = Target {
            pod_ip: local(),
            sandbox: None,
        };
        let action = Action::HttpGet(HttpGet {
            host: None,
            port,
            path: "/".into(),
            https: true,
            headers: vec![],
        });
        assert_eq!(
            target.check(&action, Duration::from_secs(5)).await,
            Outcome::Success
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn tcp_socket_connects_or_fails() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Target {
            pod_ip: local(),
            sandbox: None,
        };
        let t = Duration::from_secs(1);
        let action = Action::TcpSocket { host: None, port };
        assert_eq!(target.check(&action, t).await, Outcome::Success);
        drop(listener);
        assert_eq!(
            target.check(&action, t).await,
            Outcome::Failure(format!(
                "dial tcp 127.0.0.1:{port}: connect: connection refused"
            ))
        );
    }

    /// An HTTP/2 server answering the health check with `status` for service "",
    /// and Unimplemented (trailers-only) for any other service.
    async fn grpc_server(status: u8) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let service =
                    hyper::service::service_fn(move |req: http::Request<Incoming>| async move {
                        let mut body = req.into_body();
                        let mut data = Vec::new();
                        while let Some(Ok(frame)) = next_frame(&mut body).await {
                            if let Ok(d) = frame.into_data() {
                                data.extend_from_slice(&d);
                            }
                        }
                        let resp =
                            http::Response::builder().header("content-type", "application/grpc");
                        if data.len() > 5 {
                            let resp = resp
                                .header("grpc-status", "12")
                                .header("grpc-message", "unknown service")
                                .body(FrameBody::empty())
                                .unwrap();
                            return Ok::<_, Infallible>(resp);
                        }
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        let body = FrameBody(VecDeque::from([
                            Frame::data(Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status])),
                            Frame::trailers(trailers),
                        ]));
                        Ok(resp.body(body).unwrap())
                    });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), service)
                        .await;
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn grpc_health_checks() {
        let target = Target {
            pod_ip: local(),
            sandbox: None,
        };
        let t = Duration::from_secs(2);
        let serving = grpc_server(1).await;
        let check = |port, service: &str| Action::Grpc {
            port,
            service: service.into(),
        };
        assert_eq!(target.check(&check(serving, ""), t).await, Outcome::Success);
        assert_eq!(
            target.check(&check(serving, "other"), t).await,
            Outcome::Failure("this server does not implement the grpc health protocol (grpc.health.v1.Health): unknown service".into())
        );
        let not_serving = grpc_server(2).await;
        assert_eq!(
            target.check(&check(not_serving, ""), t).await,
            Outcome::Failure("service unhealthy (responded with \"NOT_SERVING\")".into())
        );
        let closed = closed_port().await;
        let Outcome::Failure(m) = target.check(&check(closed, ""), t).await else {
            panic!("a closed port cannot be healthy")
        };
        assert!(m.starts_with("timeout: failed to connect service"), "{m}");
    }

    #[tokio::test]
    async fn a_failing_post_start_hook_kills_the_run() {
        let closed = closed_port().await;
        let c = container(json!({
            "name": "web",
            "lifecycle": {"postStart": {"httpGet": {"port": closed, "path": "/started"}}},
        }));
        assert!(needs_supervision(&c));
        let sink = Arc::new(TestSink::default());
        let instance = CancellationToken::new();
        let cause = supervise(run_probes(c), sink.clone(), instance.clone()).await;
        assert_eq!(cause, KillCause::PostStartHook);
        assert!(instance.is_cancelled());
        assert_eq!(sink.reasons(), vec!["FailedPostStartHook", "Killing"]);
        let m = &sink.messages("FailedPostStartHook")[0];
        assert!(
            m.starts_with("HTTP lifecycle hook (/started) for Container \"web\" in Pod \"p_default(uid)\" failed - error: Get"),
            "{m}"
        );
    }

    #[tokio::test]
    async fn a_post_start_hook_that_answers_lets_probes_run() {
        let (port, mut heads) = http_server(500).await;
        let c = container(json!({
            "name": "web",
            "lifecycle": {"postStart": {"httpGet": {"port": port, "path": "/hook"}}},
            "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 1},
        }));
        let sink = Arc::new(TestSink::default());
        let instance = CancellationToken::new();
        let sup = tokio::spawn(supervise(run_probes(c), sink.clone(), instance.clone()));
        let head = heads.recv().await.unwrap();
        assert!(head.contains("user-agent: kube-lifecycle/1.33"), "{head}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sink.ready() != vec![true] {
            assert!(std::time::Instant::now() < deadline, "never ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            !instance.is_cancelled(),
            "any HTTP answer is a hook success"
        );
        sup.abort();
    }

    /// The `hello` sample module (`scripts/build-samples.sh` builds it if missing).
    fn hello_module() -> std::path::PathBuf {
        static BUILT: OnceLock<std::path::PathBuf> = OnceLock::new();
        BUILT
            .get_or_init(|| {
                let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
                let path = root.join("samples/target/modules/hello.wasm");
                if !path.is_file() {
                    let status = std::process::Command::new("bash")
                        .arg(root.join("scripts/build-samples.sh"))
                        .env("WASMKUBE_SAMPLES_INSTALL", "")
                        .status()
                        .expect("cannot run scripts/build-samples.sh");
                    assert!(status.success(), "scripts/build-samples.sh failed");
                }
                path
            })
            .clone()
    }

    #[tokio::test]
    async fn exec_probes_and_hooks_run_the_module_in_its_sandbox() {
        use crate::wasm::{EngineOptions, Preopen, WasmEngine};
        let dir = tempfile::tempdir().unwrap();
        let engine = WasmEngine::new(EngineOptions::new(dir.path().join("compiled"), 8)).unwrap();
        let program = engine
            .load("sha256:probes-hello", &hello_module())
            .await
            .unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let sandbox = ContainerSandbox {
            program,
            argv: vec!["hello".into()],
            env: vec![],
            preopens: vec![Preopen {
                host: data.clone(),
                guest: "/data".into(),
                read_only: false,
            }],
            memory_limit: None,
            cpu_limit_millis: None,
            pod_ip: None,
            egress: Default::default(),
            names: None,
        };
        let target = Target {
            pod_ip: local(),
            sandbox: Some(sandbox),
        };
        let t = Duration::from_secs(10);
        let exec = |argv: &[&str]| Action::Exec {
            command: argv.iter().map(|a| a.to_string()).collect(),
        };
        let test_ready = exec(&["test", "-f", "/data/ready"]);
        assert_eq!(
            target.check(&test_ready, t).await,
            Outcome::Failure("command 'test -f /data/ready' exited with 1".into())
        );
        std::fs::write(data.join("ready"), "").unwrap();
        assert_eq!(target.check(&test_ready, t).await, Outcome::Success);
        // What the command printed is the failure's message.
        let Outcome::Failure(m) = target.check(&exec(&["cat", "/data/missing"]), t).await else {
            panic!("cat of a missing file succeeded")
        };
        assert!(m.starts_with("cat: "), "{m}");
        assert_eq!(
            target
                .check(&exec(&["sleep", "inf"]), Duration::from_millis(300))
                .await,
            Outcome::Failure("command \"sleep inf\" timed out".into())
        );
        let no_sandbox = Target {
            pod_ip: local(),
            sandbox: None,
        };
        assert!(matches!(
            no_sandbox.check(&test_ready, t).await,
            Outcome::Error(_)
        ));

        let c = container(json!({"name": "app"}));
        let hook = |argv: &[&str]| -> LifecycleHandler {
            serde_json::from_value(json!({"exec": {"command": argv}})).unwrap()
        };
        run_hook(
            &hook(&["write", "/data/hook", "hi"]),
            &c,
            &target,
            "p_ns(u)",
        )
        .await
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(data.join("hook")).unwrap().trim(),
            "hi"
        );
        let err = run_hook(&hook(&["false"]), &c, &target, "p_ns(u)")
            .await
            .unwrap_err();
        assert_eq!(
            err,
            "Exec lifecycle hook ([false]) for Container \"app\" in Pod \"p_ns(u)\" failed - error: command 'false' exited with 1, message: \"\""
        );
        // preStop is bounded by the grace period, and a hook that overruns it is no
        // error.
        let c = container(json!({
            "name": "app",
            "lifecycle": {"preStop": {"exec": {"command": ["sleep", "inf"]}}},
        }));
        let started = Instant::now();
        pre_stop(&c, &target, "p_ns(u)", Duration::from_millis(300))
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
