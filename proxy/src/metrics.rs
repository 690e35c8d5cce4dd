//! The proxy's counters and its small HTTP endpoint: `/metrics` in the Prometheus text
//! format (connections, bytes, datagrams, sessions and errors per service port, plus
//! listener and tunnel figures) and `/healthz` (200 once the first full view of the API
//! has been applied, 503 before).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::model::PortId;
use crate::proxier::Shared;

/// Counters of one service port (shared by its ClusterIP and NodePort frontends).
#[derive(Debug, Default)]
pub(crate) struct PortMetrics {
    pub connections: AtomicU64,
    pub active_connections: AtomicI64,
    pub bytes_to_endpoint: AtomicU64,
    pub bytes_to_client: AtomicU64,
    pub datagrams_to_endpoint: AtomicU64,
    pub datagrams_to_client: AtomicU64,
    pub udp_sessions: AtomicU64,
    pub active_udp_sessions: AtomicI64,
    /// Connections or datagrams that found no endpoint.
    pub no_endpoint: AtomicU64,
    /// Failed connect attempts (each retry counts).
    pub connect_errors: AtomicU64,
    /// Connections that ended with an I/O error rather than a close.
    pub stream_errors: AtomicU64,
    /// Datagrams that could not be sent on.
    pub datagram_errors: AtomicU64,
}

/// Adds one to a counter.
pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to a counter.
pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// A gauge held up while the value lives (an active connection or session).
pub(crate) struct GaugeGuard(Arc<PortMetrics>, fn(&PortMetrics) -> &AtomicI64);

impl GaugeGuard {
    pub(crate) fn new(m: Arc<PortMetrics>, gauge: fn(&PortMetrics) -> &AtomicI64) -> GaugeGuard {
        gauge(&m).fetch_add(1, Ordering::Relaxed);
        GaugeGuard(m, gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        (self.1)(&self.0).fetch_sub(1, Ordering::Relaxed);
    }
}

/// A proxy-wide gauge held up while the value lives (an open tunnel connection).
pub(crate) struct Held(Arc<AtomicI64>);

impl Held {
    pub(crate) fn new(gauge: Arc<AtomicI64>) -> Held {
        gauge.fetch_add(1, Ordering::Relaxed);
        Held(gauge)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every counter of the proxy.
#[derive(Default)]
pub(crate) struct Metrics {
    ports: Mutex<BTreeMap<PortId, Arc<PortMetrics>>>,
    /// Frontends currently listening.
    pub listening: AtomicI64,
    /// Failed attempts to open a frontend (address in use, not available, …).
    pub bind_errors: AtomicU64,
    /// Tunnel connections (TLS, HTTP/2) opened to other nodes / accepted from them.
    pub tunnels_out: AtomicU64,
    pub tunnels_in: AtomicU64,
    /// Tunnel connections open now, each way.
    pub tunnels_open_out: Arc<AtomicI64>,
    pub tunnels_open_in: Arc<AtomicI64>,
    /// Connections and UDP sessions carried through tunnels, as streams.
    pub tunnel_streams_out: AtomicU64,
    pub tunnel_streams_in: AtomicU64,
    /// Tunnel connections or streams that failed (handshake, refused target, connect).
    pub tunnel_errors_out: AtomicU64,
    pub tunnel_errors_in: AtomicU64,
    /// Times the proxier applied changes.
    pub syncs: AtomicU64,
}

impl Metrics {
    /// The counters of a service port, created on first use.
    pub(crate) fn port(&self, id: &PortId) -> Arc<PortMetrics> {
        let mut ports = lock(&self.ports);
        ports.entry(id.clone()).or_default().clone()
    }

    /// Drops the counters of ports that are gone.
    pub(crate) fn retain_ports(&self, keep: impl Fn(&PortId) -> bool) {
        lock(&self.ports).retain(|id, _| keep(id));
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        let ports: Vec<(PortId, Arc<PortMetrics>)> = lock(&self.ports)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut out = String::with_capacity(512 + ports.len() * 1024);
        for s in PORT_SERIES {
            s.header(&mut out);
            for (id, m) in &ports {
                let _ = write!(
                    out,
                    "wasmkube_proxy_{}{{namespace=\"{}\",service=\"{}\",port=\"{}\",protocol=\"{}\"",
                    s.name,
                    escape(&id.service.namespace),
                    escape(&id.service.name),
                    escape(&id.port),
                    id.protocol
                );
                if let Some((k, v)) = s.label {
                    let _ = write!(out, ",{k}=\"{v}\"");
                }
                let _ = writeln!(out, "}} {}", (s.get)(m));
            }
        }
        for s in GLOBAL_SERIES {
            s.header(&mut out);
            let value = (s.get)(self);
            match s.label {
                Some((k, v)) => {
                    let _ = writeln!(out, "wasmkube_proxy_{}{{{k}=\"{v}\"}} {value}", s.name);
                }
                None => {
                    let _ = writeln!(out, "wasmkube_proxy_{} {value}", s.name);
                }
            }
        }
        out
    }
}

/// One metric line per subject (a port, or the proxy): name, type, help (empty for
/// the second series of a family), an extra label and how to read the value.
struct Series<T> {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    label: Option<(&'static str, &'static str)>,
    get: fn(&T) -> i64,
}

impl<T> Series<T> {
    fn header(&self, out: &mut String) {
        if !self.help.is_empty() {
            let _ = writeln!(out, "# HELP wasmkube_proxy_{} {}", self.name, self.help);
            let _ = writeln!(out, "# TYPE wasmkube_proxy_{} {}", self.name, self.kind);
        }
    }
}

fn count(c: &AtomicU64) -> i64 {
    i64::try_from(c.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
}

const fn series<T>(
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    label: Option<(&'static str, &'static str)>,
    get: fn(&T) -> i64,
) -> Series<T> {
    Series {
        name,
        kind,
        help,
        label,
        get,
    }
}

const TO_ENDPOINT: Option<(&str, &str)> = Some(("direction", "to_endpoint"));
const TO_CLIENT: Option<(&str, &str)> = Some(("direction", "to_client"));

const PORT_SERIES: [Series<PortMetrics>; 12] = [
    series(
        "connections_total",
        "counter",
        "TCP connections accepted.",
        None,
        |m| count(&m.connections),
    ),
    series(
        "active_connections",
        "gauge",
        "TCP connections open now.",
        None,
        |m| m.active_connections.load(Ordering::Relaxed),
    ),
    series(
        "bytes_total",
        "counter",
        "Bytes forwarded.",
        TO_ENDPOINT,
        |m| count(&m.bytes_to_endpoint),
    ),
    series("bytes_total", "counter", "", TO_CLIENT, |m| {
        count(&m.bytes_to_client)
    }),
    series(
        "datagrams_total",
        "counter",
        "UDP datagrams forwarded.",
        TO_ENDPOINT,
        |m| count(&m.datagrams_to_endpoint),
    ),
    series("datagrams_total", "counter", "", TO_CLIENT, |m| {
        count(&m.datagrams_to_client)
    }),
    series(
        "udp_sessions_total",
        "counter",
        "UDP sessions opened.",
        None,
        |m| count(&m.udp_sessions),
    ),
    series(
        "active_udp_sessions",
        "gauge",
        "UDP sessions open now.",
        None,
        |m| m.active_udp_sessions.load(Ordering::Relaxed),
    ),
    series(
        "errors_total",
        "counter",
        "Errors by reason.",
        Some(("reason", "no_endpoint")),
        |m| count(&m.no_endpoint),
    ),
    series(
        "errors_total",
        "counter",
        "",
        Some(("reason", "connect")),
        |m| count(&m.connect_errors),
    ),
    series(
        "errors_total",
        "counter",
        "",
        Some(("reason", "stream")),
        |m| count(&m.stream_errors),
    ),
    series(
        "errors_total",
        "counter",
        "",
        Some(("reason", "datagram")),
        |m| count(&m.datagram_errors),
    ),
];

const OUT: Option<(&str, &str)> = Some(("direction", "out"));
const IN: Option<(&str, &str)> = Some(("direction", "in"));

const GLOBAL_SERIES: [Series<Metrics>; 11] = [
    series(
        "listeners",
        "gauge",
        "Service frontends listening now.",
        None,
        |m| m.listening.load(Ordering::Relaxed),
    ),
    series(
        "bind_errors_total",
        "counter",
        "Failed attempts to open a Service frontend.",
        None,
        |m| count(&m.bind_errors),
    ),
    series(
        "tunnels_total",
        "counter",
        "Node-to-node tunnel connections.",
        OUT,
        |m| count(&m.tunnels_out),
    ),
    series("tunnels_total", "counter", "", IN, |m| count(&m.tunnels_in)),
    series(
        "tunnel_connections",
        "gauge",
        "Node-to-node tunnel connections open now.",
        OUT,
        |m| m.tunnels_open_out.load(Ordering::Relaxed),
    ),
    series("tunnel_connections", "gauge", "", IN, |m| {
        m.tunnels_open_in.load(Ordering::Relaxed)
    }),
    series(
        "tunnel_streams_total",
        "counter",
        "Connections and UDP sessions carried through node-to-node tunnels.",
        OUT,
        |m| count(&m.tunnel_streams_out),
    ),
    series("tunnel_streams_total", "counter", "", IN, |m| {
        count(&m.tunnel_streams_in)
    }),
    series(
        "tunnel_errors_total",
        "counter",
        "Failed node-to-node tunnel connections and streams.",
        OUT,
        |m| count(&m.tunnel_errors_out),
    ),
    series("tunnel_errors_total", "counter", "", IN, |m| {
        count(&m.tunnel_errors_in)
    }),
    series(
        "syncs_total",
        "counter",
        "Times changes from the API were applied.",
        None,
        |m| count(&m.syncs),
    ),
];

/// A mutex's guard, also after a panic elsewhere poisoned it (the data is counters
/// and maps that stay consistent between calls).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A label value as the text format wants it.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `/healthz` and `/metrics` until the proxy stops.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let stop = shared.stop.clone();
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::warn!(error = %e, "the proxy's metrics endpoint failed");
    }
}

async fn healthz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if shared.is_synced() {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not synced with the API yet",
        )
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ObjectKey, Protocol};

    #[test]
    fn renders_per_port_series_with_escaped_labels() {
        let m = Metrics::default();
        let id = PortId {
            service: ObjectKey {
                namespace: "ns".into(),
                name: "we\"b".into(),
            },
            port: "http".into(),
            protocol: Protocol::Tcp,
        };
        let p = m.port(&id);
        inc(&p.connections);
        add(&p.bytes_to_client, 42);
        let text = m.render();
        assert!(
            text.contains(
                "wasmkube_proxy_connections_total{namespace=\"ns\",service=\"we\\\"b\",port=\"http\",protocol=\"TCP\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("direction=\"to_client\"} 42"), "{text}");
        assert!(text.contains("# TYPE wasmkube_proxy_bytes_total counter"));
        assert_eq!(text.matches("# TYPE wasmkube_proxy_bytes_total").count(), 1);
        m.retain_ports(|_| false);
        assert!(!m.render().contains("we\\\"b"));
    }
}
