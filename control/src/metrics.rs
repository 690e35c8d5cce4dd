//! Prometheus metrics for the control plane, rendered in the text exposition format.
//!
//! One process-wide registry, because the instrumented code (request handlers, the etcd
//! store, watch fan-out) is spread across modules that should not pass a handle around
//! for every counter. Label sets are small and bounded (verb, resource, code, operation),
//! so plain maps behind a mutex are enough.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, OnceLock};

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, value: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (i, bound) in BUCKETS.iter().enumerate() {
            if value <= *bound {
                self.counts[i] += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in BUCKETS.iter().enumerate() {
            let n = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Default)]
struct Registry {
    /// (verb, resource, code) → count
    requests: BTreeMap<(String, String, u16), u64>,
    /// (verb, resource) → latency
    request_latency: BTreeMap<(String, String), Histogram>,
    /// etcd operation → latency
    etcd_latency: BTreeMap<String, Histogram>,
}

static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
static OPEN_WATCHES: AtomicI64 = AtomicI64::new(0);

fn registry() -> &'static Mutex<Registry> {
    REGISTRY.get_or_init(|| Mutex::new(Registry::default()))
}

/// Records one finished API request.
pub fn observe_request(verb: &str, resource: &str, code: u16, seconds: f64) {
    let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
    *r.requests
        .entry((verb.to_string(), resource.to_string(), code))
        .or_default() += 1;
    r.request_latency
        .entry((verb.to_string(), resource.to_string()))
        .or_default()
        .observe(seconds);
}

/// Records the latency of one etcd request (`get`, `list`, `create`, `update`, …).
pub fn observe_etcd(operation: &str, seconds: f64) {
    let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
    r.etcd_latency
        .entry(operation.to_string())
        .or_default()
        .observe(seconds);
}

/// Counts an open watch for as long as the guard lives.
pub struct WatchGuard(());

impl WatchGuard {
    pub fn new() -> Self {
        OPEN_WATCHES.fetch_add(1, Ordering::Relaxed);
        WatchGuard(())
    }
}

impl Default for WatchGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        OPEN_WATCHES.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Renders every metric in the Prometheus text format.
pub fn render() -> String {
    let r = registry().lock().unwrap_or_else(|e| e.into_inner());
    let mut out = String::new();
    out.push_str(
        "# HELP apiserver_request_total Counter of API requests by verb, resource and HTTP code.\n",
    );
    out.push_str("# TYPE apiserver_request_total counter\n");
    for ((verb, resource, code), n) in &r.requests {
        let _ = writeln!(
            out,
            "apiserver_request_total{{verb=\"{verb}\",resource=\"{resource}\",code=\"{code}\"}} {n}"
        );
    }
    out.push_str(
        "# HELP apiserver_request_duration_seconds API request latency by verb and resource.\n",
    );
    out.push_str("# TYPE apiserver_request_duration_seconds histogram\n");
    for ((verb, resource), h) in &r.request_latency {
        h.render(
            &mut out,
            "apiserver_request_duration_seconds",
            &format!("verb=\"{verb}\",resource=\"{resource}\""),
        );
    }
    out.push_str("# HELP apiserver_longrunning_requests Number of open watch requests.\n");
    out.push_str("# TYPE apiserver_longrunning_requests gauge\n");
    let _ = writeln!(
        out,
        "apiserver_longrunning_requests{{verb=\"watch\"}} {}",
        OPEN_WATCHES.load(Ordering::Relaxed)
    );
    out.push_str("# HELP etcd_request_duration_seconds etcd request latency by operation.\n");
    out.push_str("# TYPE etcd_request_duration_seconds histogram\n");
    for (op, h) in &r.etcd_latency {
        h.render(
            &mut out,
            "etcd_request_duration_seconds",
            &format!("operation=\"{op}\""),
        );
    }
    out
}
