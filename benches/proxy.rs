//! Service proxy benchmark (issue 7, "Speed"): not a test, it prints figures next to the
//! goals and what they are compared with, and never fails on them.
//!
//! Side by side in one run, against the same backends on loopback, each row is measured
//! on three paths: a **direct** connection to the backend, through **our proxy**
//! (wasmkube-proxy, at the Service's ClusterIP), and through **HAProxy** (Debian's
//! `haproxy` in TCP mode, its config written to the temp dir, on free ports of
//! 127.0.0.1) as the userspace reference.
//!
//! The setup is the real thing minus pods: a `wasmkube server` (the built binary, with
//! its managed etcd); a node whose proxy runs in a child process of this benchmark
//! (this binary again, started with `WASMKUBE_PROXY_BENCH_ROLE=proxy`, calling
//! `wasmkube_proxy::start` with node credentials from a throwaway CA — the tunnel is
//! unused on one node — and the same multi-threaded runtime and allocator as the
//! `wasmkube` binary), so its CPU and RSS are its own and the load generators never share
//! its process; and one selector-less Service whose EndpointSlice (written here, ready,
//! on the proxy's node) points at the backends on 127.192.0.10, an address of the
//! cluster's pod range (the server gets pod and Service ranges of its own, 127.192.0.0/16
//! and 127.97.0.0/16, away from the defaults other clusters on the host use). The
//! backends and load generators are separate processes too:
//! `iperf3 -s`, nginx (one worker) serving a 1 KiB file, and an echo server (this binary
//! with `WASMKUBE_PROXY_BENCH_ROLE=echo`, one thread).
//!
//! Rows (`WASMKUBE_PROXY_BENCH_ROWS`, comma-separated):
//! - `tcp`: iperf3 bulk TCP, 1 and 4 streams (Gbit/s received);
//! - `udp`: iperf3 UDP at 50,000 datagrams/s of 1,000 bytes (loss %; HAProxy has no UDP
//!   proxying). Both iperf3 ends get 2 MiB socket buffers (`-w 2M`): with the default
//!   208 KiB the receiver drops a few percent of the paced bursts even on the direct
//!   path, which would hide the proxy's own loss;
//! - `http`: wrk against nginx's 1 KiB file, with keep-alive and with a new connection
//!   per request (`Connection: close`): req/s, p50 and p99, each the median of
//!   `_ROUNDS` runs per path taken in turns (one run's ratio to HAProxy swings by ±10%
//!   on this machine, more than the difference between the two proxies);
//! - `latency`: one pinned connection, 64-byte ping-pong with the echo server: RTT p50
//!   and p99 per path and what the proxies add to the direct RTT, twice: the client a
//!   blocking socket on a thread of this process, then a process of its own (this
//!   binary with `WASMKUBE_PROXY_BENCH_ROLE=ping`, one thread). The round trips are
//!   split over `_LATENCY_TURNS` connections per path, the paths taking turns: the
//!   scheduler places the client, the proxy and the echo server anew for each
//!   connection, and that placement moves a connection's RTT by more than either
//!   proxy's work does;
//! - `idle`: many concurrent idle connections through our proxy (and HAProxy): each
//!   opened with one echoed byte, held idle, then checked with another; how many
//!   stayed open, and the proxy's RSS and open files with them. Each proxied
//!   connection takes two file descriptors in the proxy: where the open-files hard
//!   limit is 20,000, as on this machine, 10,000 cannot all fit;
//! - `services`: the proxy's RSS with many Services of one endpoint each (created
//!   through the API, read once the proxy listens on all of them, then deleted; twice:
//!   the second round tells memory kept for reuse from a leak). It runs before the idle
//!   row, whose connections need the listeners' file descriptors.
//!
//! - `across`: the idle row across two nodes: a second Node (InternalIP 127.0.0.2) with
//!   its own proxy child, and a NodePort Service whose only endpoint (the echo server)
//!   is on it; the client connects to the first proxy's NodePort, so every connection
//!   crosses the tunnel. Held connections and both proxies' open files and RSS, the open
//!   rate, and — direct against across, in the same row — a pinned ping-pong's RTT and
//!   one iperf3 bulk stream (with both proxies' CPU).
//!
//! They run in the order latency, tcp, udp, http, services, idle, across. Each row also notes
//! the CPU the proxy (and HAProxy) used while it ran. The machine has 2 cores: the load
//! generator, the backend and the proxy compete for them (on the direct path only the
//! first two), so a proxy that needs less CPU leaves more to the others.
//!
//! A figure behind HAProxy's gets the verdict `noise` rather than `MISS` when the run did
//! not settle which proxy is ahead: taken over several rounds (the http row's runs, the
//! latency row's turns), each proxy's median round lies within the other's middle half
//! of rounds (within all of them for fewer than 4 rounds).
//!
//! `cargo bench --bench proxy` runs the full sizes in release mode (`scripts/bench.sh
//! proxy` installs haproxy, iperf3, wrk and nginx first); a missing tool skips its rows.
//! A debug run (debug `wasmkube` and a debug proxy: the figures mean nothing):
//! `WASMKUBE_PROXY_BENCH_SECONDS=1 WASMKUBE_PROXY_BENCH_ROUND_TRIPS=2000
//! WASMKUBE_PROXY_BENCH_IDLE_CONNECTIONS=500 WASMKUBE_PROXY_BENCH_IDLE_SECS=1
//! WASMKUBE_PROXY_BENCH_SERVICES=50 cargo test --bench proxy`.
//!
//! Environment knobs:
//! - `WASMKUBE_PROXY_BENCH_ROWS` (`tcp,udp,http,latency,idle,services,across`): which
//!   rows run;
//! - `WASMKUBE_PROXY_BENCH_SECONDS` (3): length of each iperf3 and wrk run;
//! - `WASMKUBE_PROXY_BENCH_UDP_RATE` (50000): UDP datagrams per second;
//! - `WASMKUBE_PROXY_BENCH_WRK_CONNECTIONS` (32) and `_WRK_THREADS` (1): wrk's `-c`, `-t`;
//! - `WASMKUBE_PROXY_BENCH_ROUNDS` (3): wrk runs per path and mode in the http row;
//! - `WASMKUBE_PROXY_BENCH_LATENCY_TURNS` (12): connections per path the latency row's
//!   round trips are split into;
//! - `WASMKUBE_PROXY_BENCH_ROUND_TRIPS` (20000): timed ping-pongs per path;
//! - `WASMKUBE_PROXY_BENCH_PROXY_THREADS` (unset: one per CPU): the proxy children's
//!   forwarding threads;
//! - `WASMKUBE_PROXY_BENCH_IDLE_CONNECTIONS` (10000) and `_IDLE_SECS` (5): how many idle
//!   connections (idle and across rows), held for how long;
//! - `WASMKUBE_PROXY_BENCH_SERVICES` (1000): Services for the RSS row;
//! - `WASMKUBE_BENCH_KEEP` (unset): keep the temp dir (configs and process logs).

// Not every shared helper is used by this bench (the others need the rest).
#[allow(dead_code)]
mod common;

use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

use common::{
    build, cpu_seconds, env_flag, env_list, env_number_or, http_get, in_temp_dir, kube_client,
    kube_config, load_average, open_files_limit, start_server, status_mib, us, Proc, Stats,
};

// The same allocator as the `wasmkube` binary, so the proxy's RSS and speed are its own.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Selects what this process is: the benchmark (unset), or one of its children.
const ROLE_ENV: &str = "WASMKUBE_PROXY_BENCH_ROLE";
/// The proxy child's settings.
const KUBECONFIG_ENV: &str = "WASMKUBE_PROXY_BENCH_KUBECONFIG";
const NODE_ENV: &str = "WASMKUBE_PROXY_BENCH_NODE";
const CREDENTIALS_ENV: &str = "WASMKUBE_PROXY_BENCH_CREDENTIALS";
const METRICS_ENV: &str = "WASMKUBE_PROXY_BENCH_METRICS";
/// The echo child's listening address.
/// The proxy child's node address (127.0.0.1 unless set).
const NODE_IP_ENV: &str = "WASMKUBE_PROXY_BENCH_NODE_IP";
const LISTEN_ENV: &str = "WASMKUBE_PROXY_BENCH_LISTEN";

/// The cluster's pod and Service ranges: outside the defaults (127.128.0.0/10,
/// 127.96.0.0/16), which `wasmkube up` and the end-to-end tests on the same host use, so
/// that no other cluster's proxy holds our ClusterIPs or pod addresses.
const CLUSTER_CIDR: &str = "127.192.0.0/16";
const SERVICE_CIDR: &str = "127.97.0.0/16";
/// Where the backends listen: an address of the pod range, as a pod's would be.
const BACKEND_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 192, 0, 10));
/// Where HAProxy listens.
const HAPROXY_IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// The proxy's node.
const NODE: &str = "proxy-bench-node";
/// The second node of the `across` row, and its address.
const FAR_NODE: &str = "proxy-bench-far-node";
const FAR_NODE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// The `across` row's Service (NodePort; its endpoint on [`FAR_NODE`]).
const FAR_SERVICE: &str = "far";
const NAMESPACE: &str = "proxy-bench";
/// The Service every row but `services` goes through, and its ports.
const SERVICE: &str = "bench";
const ECHO_PORT: u16 = 7007;
const IPERF_PORT: u16 = 5201;
const HTTP_PORT: u16 = 8080;
/// The port of each Service of the `services` row.
const SCALE_PORT: u16 = 9000;
/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// How long one connect, echo or small request may take.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The size of the file nginx serves.
const HTTP_BODY: usize = 1024;
/// The UDP payload (with the rate: 400 Mbit/s at 50,000 datagrams/s).
const UDP_DATAGRAM: u64 = 1000;
/// The socket buffers iperf3 asks for on both ends in the UDP row.
const UDP_WINDOW: &str = "2M";
/// The ping-pong message of the latency row.
const PING_SIZE: usize = 64;
/// Untimed round trips before the timed ones.
const PING_WARMUP: usize = 500;
/// The verdict of a figure behind HAProxy's where the rounds left it open which proxy
/// is ahead (see [`Line::unsettled`]).
const NOISE: &str = "noise";
/// The echo server's listen backlog (as the proxy's listeners).
const ECHO_BACKLOG: u32 = 4096;
/// Connections opened at once in the idle row.
const IDLE_OPEN_CONCURRENCY: usize = 256;
/// Services (and their slices) created at once in the services row.
const CREATE_CONCURRENCY: usize = 16;
/// A pause before a process's RSS is read, for freed memory and late work to settle.
const SETTLE: Duration = Duration::from_secs(2);
/// The goals of issue 7.
const GOAL_UDP_LOSS_PERCENT: f64 = 0.2;
const GOAL_IDLE_CONNECTIONS: f64 = 10_000.0;

// ---------------------------------------------------------------------------------
// Options

/// Sizes and switches from the environment.
#[derive(Debug, Clone)]
struct Opts {
    seconds: u64,
    udp_rate: u64,
    wrk_connections: usize,
    wrk_threads: usize,
    rounds: usize,
    latency_turns: usize,
    round_trips: usize,
    idle_connections: usize,
    idle: Duration,
    services: usize,
    tcp: bool,
    udp: bool,
    http: bool,
    latency: bool,
    idle_row: bool,
    across_row: bool,
    services_row: bool,
    keep: bool,
}

impl Opts {
    fn from_env() -> Result<Opts> {
        let num = env_number_or::<u64>;
        let rows = env_list(
            "WASMKUBE_PROXY_BENCH_ROWS",
            "tcp,udp,http,latency,idle,services,across",
        );
        let has = |s: &str| rows.iter().any(|x| x == s);
        let opts = Opts {
            seconds: num("WASMKUBE_PROXY_BENCH_SECONDS", 3)?,
            udp_rate: num("WASMKUBE_PROXY_BENCH_UDP_RATE", 50_000)?,
            wrk_connections: num("WASMKUBE_PROXY_BENCH_WRK_CONNECTIONS", 32)? as usize,
            wrk_threads: num("WASMKUBE_PROXY_BENCH_WRK_THREADS", 1)? as usize,
            rounds: num("WASMKUBE_PROXY_BENCH_ROUNDS", 3)? as usize,
            latency_turns: num("WASMKUBE_PROXY_BENCH_LATENCY_TURNS", 12)? as usize,
            round_trips: num("WASMKUBE_PROXY_BENCH_ROUND_TRIPS", 20_000)? as usize,
            idle_connections: num("WASMKUBE_PROXY_BENCH_IDLE_CONNECTIONS", 10_000)? as usize,
            idle: Duration::from_secs(num("WASMKUBE_PROXY_BENCH_IDLE_SECS", 5)?),
            services: num("WASMKUBE_PROXY_BENCH_SERVICES", 1000)? as usize,
            tcp: has("tcp"),
            udp: has("udp"),
            http: has("http"),
            latency: has("latency"),
            idle_row: has("idle"),
            across_row: has("across"),
            services_row: has("services"),
            keep: env_flag("WASMKUBE_BENCH_KEEP"),
        };
        if opts.seconds == 0
            || opts.udp_rate == 0
            || opts.wrk_connections == 0
            || opts.wrk_threads == 0
            || opts.rounds == 0
            || opts.latency_turns == 0
            || opts.round_trips == 0
            || opts.idle_connections == 0
            || opts.services == 0
        {
            bail!("the WASMKUBE_PROXY_BENCH_ sizes must be at least 1");
        }
        if opts.wrk_connections < opts.wrk_threads {
            bail!("WASMKUBE_PROXY_BENCH_WRK_CONNECTIONS must be at least _WRK_THREADS");
        }
        Ok(opts)
    }

    fn rows(&self) -> String {
        let rows: Vec<&str> = [
            (self.tcp, "tcp"),
            (self.udp, "udp"),
            (self.http, "http"),
            (self.latency, "latency"),
            (self.idle_row, "idle"),
            (self.services_row, "services"),
            (self.across_row, "across"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect();
        rows.join(",")
    }
}

// ---------------------------------------------------------------------------------
// Figures and the report

/// The three ways a row reaches its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Direct,
    Proxy,
    Haproxy,
}

const VIAS: [Via; 3] = [Via::Direct, Via::Proxy, Via::Haproxy];

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Proxy => "proxy",
            Via::Haproxy => "HAProxy",
        }
    }

    fn index(self) -> usize {
        match self {
            Via::Direct => 0,
            Via::Proxy => 1,
            Via::Haproxy => 2,
        }
    }
}

/// Where one backend is reached on each path.
#[derive(Debug, Clone, Copy)]
struct Route {
    direct: SocketAddr,
    proxy: SocketAddr,
    haproxy: Option<SocketAddr>,
}

impl Route {
    fn get(&self, via: Via) -> Option<SocketAddr> {
        match via {
            Via::Direct => Some(self.direct),
            Via::Proxy => Some(self.proxy),
            Via::Haproxy => self.haproxy,
        }
    }
}

/// One figure on one path.
#[derive(Debug, Clone)]
enum Cell {
    Value(f64),
    Failed,
    /// Not measured on this path, and why.
    Absent(&'static str),
}

impl Cell {
    fn value(&self) -> Option<f64> {
        match self {
            Cell::Value(v) => Some(*v),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

/// What a line is held to (always about our proxy's figure).
#[derive(Debug, Clone, Copy)]
enum Goal {
    /// At least HAProxy's figure (higher or lower, as the line is better).
    NoWorseThanHaproxy,
    AtMost(f64),
    AtLeast(f64),
    /// No goal: a figure to report.
    Report,
}

/// One line of the table: a figure on each path.
#[derive(Debug, Clone)]
struct Line {
    name: String,
    unit: &'static str,
    decimals: usize,
    better: Better,
    cells: [Cell; 3],
    /// Where the figure is taken over several rounds, how a path's rounds spread:
    /// a figure behind HAProxy's by less than that is noise, not a miss.
    spread: [Option<Spread>; 3],
    goal: Goal,
}

impl Line {
    fn new(name: impl Into<String>, unit: &'static str, decimals: usize, better: Better) -> Line {
        Line {
            name: name.into(),
            unit,
            decimals,
            better,
            cells: [
                Cell::Absent("not run"),
                Cell::Absent("not run"),
                Cell::Absent("not run"),
            ],
            spread: [None; 3],
            goal: Goal::NoWorseThanHaproxy,
        }
    }

    fn goal(mut self, goal: Goal) -> Line {
        self.goal = goal;
        self
    }

    fn set(&mut self, via: Via, cell: Cell) {
        self.cells[via.index()] = cell;
    }

    fn get(&self, via: Via) -> &Cell {
        &self.cells[via.index()]
    }

    /// A path's figure as the median of its rounds (at least one), with their spread.
    fn set_median(&mut self, via: Via, rounds: &[f64]) {
        let mut v = rounds.to_vec();
        v.sort_by(f64::total_cmp);
        self.set(via, Cell::Value(v[v.len() / 2]));
        self.set_spread(via, rounds);
    }

    /// Records how a path's per-round figures spread (two rounds at least).
    fn set_spread(&mut self, via: Via, rounds: &[f64]) {
        self.spread[via.index()] = Spread::of(rounds);
    }

    /// Whether the run left it open which proxy is ahead: each one's median round lies
    /// within the other's middle rounds.
    fn unsettled(&self) -> bool {
        match (
            self.spread[Via::Proxy.index()],
            self.spread[Via::Haproxy.index()],
        ) {
            (Some(p), Some(h)) => p.holds(h.median) && h.holds(p.median),
            _ => false,
        }
    }

    fn ratio(&self, to: Via) -> String {
        match (self.get(Via::Proxy).value(), self.get(to).value()) {
            (Some(p), Some(o)) if o != 0.0 => format!("×{:.2}", p / o),
            _ => "—".to_string(),
        }
    }

    fn goal_text(&self) -> String {
        match self.goal {
            Goal::NoWorseThanHaproxy => match self.better {
                Better::Higher => "≥ HAProxy".to_string(),
                Better::Lower => "≤ HAProxy".to_string(),
            },
            Goal::AtMost(x) => format!("≤ {x} {}", self.unit),
            Goal::AtLeast(x) => format!("≥ {x:.0} {}", self.unit),
            Goal::Report => "(report)".to_string(),
        }
    }

    fn verdict(&self) -> &'static str {
        let ok = |b: bool| if b { "ok" } else { "MISS" };
        let proxy = self.get(Via::Proxy).value();
        match (self.goal, proxy) {
            (Goal::Report, _) => "—",
            (_, None) => "n/a",
            (Goal::NoWorseThanHaproxy, Some(p)) => match self.get(Via::Haproxy).value() {
                Some(h) => {
                    let met = match self.better {
                        Better::Higher => p >= h,
                        Better::Lower => p <= h,
                    };
                    if !met && self.unsettled() {
                        NOISE
                    } else {
                        ok(met)
                    }
                }
                None => "n/a",
            },
            (Goal::AtMost(x), Some(p)) => ok(p <= x),
            (Goal::AtLeast(x), Some(p)) => ok(p >= x),
        }
    }

    fn cell_text(&self, via: Via) -> String {
        match self.get(via) {
            Cell::Value(v) => format!("{v:.*}", self.decimals),
            Cell::Failed => "FAILED".to_string(),
            Cell::Absent(why) => why.to_string(),
        }
    }
}

/// How one path's rounds of a figure spread: their median, and the middle half of
/// them (all of them when there are fewer than 4).
#[derive(Debug, Clone, Copy)]
struct Spread {
    low: f64,
    median: f64,
    high: f64,
}

impl Spread {
    /// None for fewer than two rounds.
    fn of(rounds: &[f64]) -> Option<Spread> {
        if rounds.len() < 2 {
            return None;
        }
        let mut v = rounds.to_vec();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        let (low, high) = if v.len() < 4 {
            (at(0.0), at(1.0))
        } else {
            (at(0.25), at(0.75))
        };
        Some(Spread {
            low,
            median: v[v.len() / 2],
            high,
        })
    }

    fn holds(&self, x: f64) -> bool {
        self.low <= x && x <= self.high
    }
}

/// A group of lines measured together, with notes (CPU, errors, settings).
#[derive(Debug, Default)]
struct Section {
    title: String,
    lines: Vec<Line>,
    notes: Vec<String>,
}

impl Section {
    fn new(title: impl Into<String>) -> Section {
        Section {
            title: title.into(),
            ..Section::default()
        }
    }

    /// Records a failure in a cell and its reason in the notes.
    fn failure(&mut self, line: usize, via: Via, e: &anyhow::Error) {
        let what = format!("{}, {}: {e:#}", self.lines[line].name, via.name());
        self.lines[line].set(via, Cell::Failed);
        self.notes.push(format!("FAILED {what}"));
    }
}

fn print_report(opts: &Opts, header: &[String], sections: &[Section]) {
    let build = if cfg!(debug_assertions) {
        " [DEBUG build: not representative]"
    } else {
        ""
    };
    println!();
    println!("==================== wasmkube Service proxy benchmark{build} ====================");
    for h in header {
        println!("{h}");
    }
    println!(
        "1-minute load average at the end: {:.2} (2-core machine shared with other work)",
        load_average()
    );
    println!(
        "goals (issue 7): at least HAProxy's figures on every row; added p99 no worse than HAProxy's; UDP loss ≤ {GOAL_UDP_LOSS_PERCENT}% at 50k datagrams/s; 10,000 idle connections held; RSS with 1,000 Services reported"
    );
    let (mut met, mut missed, mut noise) = (0, 0, 0);
    for s in sections {
        println!("--- {}", s.title);
        println!(
            "    {:<40} {:>10} {:>10} {:>10} {:>8} {:>8}  {:<16} verdict",
            "", "direct", "proxy", "HAProxy", "/direct", "/HAProxy", "goal"
        );
        for l in &s.lines {
            let verdict = l.verdict();
            match verdict {
                "ok" => met += 1,
                "MISS" => missed += 1,
                NOISE => noise += 1,
                _ => {}
            }
            let name = if l.unit.is_empty() {
                l.name.clone()
            } else {
                format!("{} ({})", l.name, l.unit)
            };
            println!(
                "    {:<40} {:>10} {:>10} {:>10} {:>8} {:>8}  {:<16} {}",
                name,
                l.cell_text(Via::Direct),
                l.cell_text(Via::Proxy),
                l.cell_text(Via::Haproxy),
                l.ratio(Via::Direct),
                l.ratio(Via::Haproxy),
                l.goal_text(),
                verdict
            );
        }
        for n in &s.notes {
            println!("    · {n}");
        }
    }
    println!(
        "goals met: {met}, behind within the rounds' spread ({NOISE}): {noise}, missed: {missed} (a MISS is a figure to look at, not a failure)"
    );
    println!(
        "(knobs: WASMKUBE_PROXY_BENCH_ROWS={}, _SECONDS={}, _UDP_RATE={}, _WRK_CONNECTIONS={}, _WRK_THREADS={}, _ROUNDS={}, _LATENCY_TURNS={}, _ROUND_TRIPS={}, _IDLE_CONNECTIONS={}, _IDLE_SECS={}, _SERVICES={})",
        opts.rows(),
        opts.seconds,
        opts.udp_rate,
        opts.wrk_connections,
        opts.wrk_threads,
        opts.rounds,
        opts.latency_turns,
        opts.round_trips,
        opts.idle_connections,
        opts.idle.as_secs(),
        opts.services
    );
    println!("{}", "=".repeat(80));
}

// ---------------------------------------------------------------------------------
// /proc readings

/// VmRSS in MiB; NaN (shown as such in the report) if it cannot be read.
fn rss_or_nan(pid: u32) -> f64 {
    status_mib(pid, "VmRSS:").unwrap_or(f64::NAN)
}

/// How many file descriptors a process has open.
fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

// ---------------------------------------------------------------------------------
// Processes

/// "N warnings or errors (first: …)" from a tracing log.
fn log_summary(name: &str, log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    match bad.first() {
        None => format!("{name} log ({}): no warnings", log.display()),
        Some(first) => format!(
            "{name} log ({}): {} warnings or errors, the first: {}",
            log.display(),
            bad.len(),
            first.trim()
        ),
    }
}

/// A program on PATH, or in the sbin directories (haproxy and nginx live there, and
/// they are not on every user's PATH).
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The external tools the rows use.
struct Tools {
    iperf3: Option<PathBuf>,
    wrk: Option<PathBuf>,
    nginx: Option<PathBuf>,
    haproxy: Option<PathBuf>,
}

impl Tools {
    fn find() -> Tools {
        Tools {
            iperf3: find_tool("iperf3"),
            wrk: find_tool("wrk"),
            nginx: find_tool("nginx"),
            haproxy: find_tool("haproxy"),
        }
    }

    fn describe(&self) -> String {
        let one = |name: &str, p: &Option<PathBuf>| match p {
            Some(p) => format!("{name} {}", p.display()),
            None => format!("{name} MISSING"),
        };
        [
            one("iperf3", &self.iperf3),
            one("wrk", &self.wrk),
            one("nginx", &self.nginx),
            one("haproxy", &self.haproxy),
        ]
        .join(", ")
    }
}

/// A free port on `ip` (the listener is closed again: a small race, fine here).
fn free_port(ip: IpAddr) -> Result<u16> {
    let l = std::net::TcpListener::bind((ip, 0)).with_context(|| format!("bind {ip}:0"))?;
    Ok(l.local_addr()?.port())
}

/// A port free on `ip` for both TCP and UDP (iperf3 uses one number for both).
fn free_port_tcp_udp(ip: IpAddr) -> Result<u16> {
    for _ in 0..50 {
        let l = std::net::TcpListener::bind((ip, 0)).with_context(|| format!("bind {ip}:0"))?;
        let port = l.local_addr()?.port();
        if std::net::UdpSocket::bind((ip, port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port free for both TCP and UDP on {ip}")
}

// ---------------------------------------------------------------------------------
// Small clients

/// The sum of a Prometheus metric's samples (every label set) in `text`.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Connects to an echo server and has one byte echoed: the path works end to end.
async fn echo_connect(addr: SocketAddr) -> Result<TcpStream> {
    let open = async {
        let mut s = TcpStream::connect(addr).await.context("connect")?;
        s.set_nodelay(true).context("nodelay")?;
        s.write_all(&[1]).await.context("write")?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.context("read the echo")?;
        anyhow::Ok(s)
    };
    tokio::time::timeout(IO_TIMEOUT, open)
        .await
        .map_err(|_| anyhow!("no echo within {IO_TIMEOUT:?}"))?
}

/// Another echoed byte on an open connection: it is still there.
async fn echo_again(s: &mut TcpStream) -> Result<()> {
    let check = async {
        s.write_all(&[2]).await.context("write")?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.context("read the echo")?;
        anyhow::Ok(())
    };
    tokio::time::timeout(IO_TIMEOUT, check)
        .await
        .map_err(|_| anyhow!("no echo within {IO_TIMEOUT:?}"))?
}

/// `warmup + n` ping-pongs of [`PING_SIZE`] bytes on one blocking connection; the
/// round-trip times of the last `n`.
fn ping_pong(addr: SocketAddr, warmup: usize, n: usize) -> Result<Vec<Duration>> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .with_context(|| format!("connect {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let msg = [0x5au8; PING_SIZE];
    let mut buf = [0u8; PING_SIZE];
    let mut samples = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let t = Instant::now();
        s.write_all(&msg).context("write")?;
        s.read_exact(&mut buf).context("read the echo")?;
        if i >= warmup {
            samples.push(t.elapsed());
        }
    }
    Ok(samples)
}

/// The ping-pong child: `ping_pong(ADDR, WARMUP, N)` from its arguments, each
/// round-trip time on a line of stdout in nanoseconds.
fn ping_role() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, warmup, n] = args.as_slice() else {
        bail!("the ping role takes ADDR WARMUP N");
    };
    let samples = ping_pong(
        addr.parse().context("ADDR")?,
        warmup.parse().context("WARMUP")?,
        n.parse().context("N")?,
    )?;
    let mut out = std::io::stdout().lock();
    for d in samples {
        writeln!(out, "{}", d.as_nanos())?;
    }
    Ok(())
}

/// Where the latency row's ping-pong client runs.
#[derive(Debug, Clone, Copy)]
enum Pinger {
    /// A thread of this benchmark's process (a multi-threaded tokio runtime, idle).
    Thread,
    /// A single-threaded process of its own, as a client in another pod would be.
    Process,
}

impl Pinger {
    /// `warmup + n` ping-pongs with `addr`; the last `n` round-trip times.
    async fn ping_pong(self, addr: SocketAddr, warmup: usize, n: usize) -> Result<Vec<Duration>> {
        match self {
            Pinger::Thread => tokio::task::spawn_blocking(move || ping_pong(addr, warmup, n))
                .await
                .map_err(|e| anyhow!("the ping-pong thread: {e}"))?,
            Pinger::Process => {
                let this = std::env::current_exe().context("find this benchmark's binary")?;
                let mut child = Command::new(this);
                child
                    .args([addr.to_string(), warmup.to_string(), n.to_string()])
                    .env(ROLE_ENV, "ping");
                // A round trip takes well under a millisecond; each read gives up after
                // IO_TIMEOUT anyway.
                let limit = IO_TIMEOUT + Duration::from_millis((warmup + n) as u64);
                run_command(child, limit)
                    .await?
                    .lines()
                    .map(|l| {
                        Ok(Duration::from_nanos(
                            l.parse().context("a round-trip time")?,
                        ))
                    })
                    .collect()
            }
        }
    }
}

/// Runs a program to completion within `limit`; its stdout, or an error with its
/// stderr.
async fn run_tool(program: &Path, args: &[String], limit: Duration) -> Result<String> {
    let mut command = Command::new(program);
    command.args(args);
    run_command(command, limit).await
}

/// Runs `command` (stdin empty) to completion within `limit`; its stdout, or an error
/// with its stderr.
async fn run_command(mut command: Command, limit: Duration) -> Result<String> {
    let program = command
        .as_std()
        .get_program()
        .to_string_lossy()
        .into_owned();
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {program}"))?;
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| anyhow!("{program} took over {limit:?}"))??;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // iperf3 -J reports its errors in the JSON on stdout.
        let why = serde_json::from_str::<serde_json::Value>(&stdout)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| stderr.trim().to_string());
        bail!("{program} failed ({}): {why}", out.status);
    }
    Ok(stdout)
}

/// Runs `f` and measures the CPU `pid` used meanwhile, in cores.
async fn with_cpu<T>(pid: Option<u32>, f: impl Future<Output = T>) -> (T, Option<f64>) {
    let before = pid.map(cpu_seconds);
    let started = Instant::now();
    let r = f.await;
    let wall = started.elapsed().as_secs_f64().max(1e-9);
    let cores = pid.zip(before).map(|(p, b)| (cpu_seconds(p) - b) / wall);
    (r, cores)
}

/// Each path's mean of the cores measured over its rounds (None when none was).
fn mean_cores(rounds: &[Vec<f64>; 3]) -> Vec<(Via, Option<f64>)> {
    VIAS.iter()
        .map(|&via| {
            let c = &rounds[via.index()];
            let mean = (!c.is_empty()).then(|| c.iter().sum::<f64>() / c.len() as f64);
            (via, mean)
        })
        .collect()
}

fn cores_note(cpu: &[(Via, Option<f64>)]) -> String {
    let parts: Vec<String> = cpu
        .iter()
        .filter_map(|(via, c)| c.map(|c| format!("{} {c:.2}", via.name())))
        .collect();
    parts.join(", ")
}

// ---------------------------------------------------------------------------------
// Children of this binary

fn main() -> Result<()> {
    // As the agent does at start (the proxy runs in it): many connections need many
    // file descriptors. Children inherit the raised limit.
    let _ = wasmkube_runtime::agent::rlimit::raise_open_files();
    match std::env::var(ROLE_ENV).as_deref() {
        Ok("proxy") => return proxy_role(),
        Ok("echo") => return echo_role(),
        Ok("ping") => return ping_role(),
        Ok(other) => bail!("unknown {ROLE_ENV}={other:?}"),
        Err(_) => {}
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(bench_main())
}

fn env_var(name: &str) -> Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set"))
}

/// Resolves when the benchmark is done with this child: SIGTERM, or EOF on stdin (the
/// benchmark exited without stopping it).
async fn parent_done() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    // A plain thread, not the runtime's blocking pool: the runtime would wait for it on
    // shutdown, and a read from stdin never ends by itself.
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        let _ = tx.send(());
    });
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = rx => {}
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The proxy child: `wasmkube_proxy::start` for [`NODE`] on the runtime the `wasmkube`
/// binary uses, until the benchmark is done with it.
fn proxy_role() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let kubeconfig = PathBuf::from(env_var(KUBECONFIG_ENV)?);
    let node = env_var(NODE_ENV)?;
    let creds = PathBuf::from(env_var(CREDENTIALS_ENV)?);
    let metrics: SocketAddr = env_var(METRICS_ENV)?
        .parse()
        .context("the metrics address")?;
    let read = |f: &str| {
        std::fs::read_to_string(creds.join(f))
            .with_context(|| format!("read {}", creds.join(f).display()))
    };
    let tls = wasmkube_proxy::TunnelCredentials {
        ca_pem: read("ca.crt")?,
        serving_cert_pem: read("serving.crt")?,
        serving_key_pem: read("serving.key")?,
        client_cert_pem: read("client.crt")?,
        client_key_pem: read("client.key")?,
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async move {
            let config = kube_config(&kubeconfig).await?;
            // The agent's client: one multiplexed connection, as the proxy shares it there.
            let client = wasmkube_runtime::agent::api_client::multiplexed(&config)
                .context("build the node's API client")?;
            let node_ip = match std::env::var(NODE_IP_ENV) {
                Ok(ip) => ip.parse().context("the node address")?,
                Err(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            };
            let mut options = wasmkube_proxy::ProxyOptions::new(node, node_ip, tls);
            options.metrics_addr = Some(metrics);
            if let Ok(t) = std::env::var("WASMKUBE_PROXY_BENCH_PROXY_THREADS") {
                options.threads = t.parse().context("WASMKUBE_PROXY_BENCH_PROXY_THREADS")?;
            }
            // `start` takes a tokio-util CancellationToken, a crate this package does not
            // name: the token's type is inferred from the call.
            let stop = Default::default();
            let proxy = wasmkube_proxy::start(client, options, Clone::clone(&stop))
                .await
                .context("start the proxy")?;
            parent_done().await;
            stop.cancel();
            if tokio::time::timeout(Duration::from_secs(10), proxy.wait())
                .await
                .is_err()
            {
                eprintln!("the proxy did not stop within 10 s");
            }
            anyhow::Ok(())
        })
}

/// The echo child: echoes every byte on every connection, on one thread.
fn echo_role() -> Result<()> {
    let addr: SocketAddr = env_var(LISTEN_ENV)?.parse().context("the listen address")?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async move {
            // The backlog of the proxy's listeners, not std's 128: the idle row opens
            // connections faster than one thread accepts them.
            let socket = tokio::net::TcpSocket::new_v4().context("a socket")?;
            socket.set_reuseaddr(true).context("SO_REUSEADDR")?;
            socket.bind(addr).with_context(|| format!("bind {addr}"))?;
            let listener = socket
                .listen(ECHO_BACKLOG)
                .with_context(|| format!("listen on {addr}"))?;
            let serve = async {
                loop {
                    match listener.accept().await {
                        Ok((s, _)) => {
                            let _ = s.set_nodelay(true);
                            tokio::spawn(echo(s));
                        }
                        Err(e) => {
                            eprintln!("accept: {e}");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            };
            tokio::select! {
                _ = serve => {}
                _ = parent_done() => {}
            }
            anyhow::Ok(())
        })
}

async fn echo(mut s: TcpStream) {
    let mut buf = [0u8; 1024];
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if s.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------
// Setup

fn object<T: k8s_openapi::serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T> {
    serde_json::from_value(v).context("build an API object")
}

/// `wasmkube server` with its managed etcd, the bench namespace and the proxy's Node; the
/// server, its client and kubeconfig once it serves.
async fn start_cluster(dir: &Path) -> Result<(Proc, Client, PathBuf)> {
    let args: Vec<String> = vec![
        "--cluster-cidr".into(),
        CLUSTER_CIDR.into(),
        "--service-cidr".into(),
        SERVICE_CIDR.into(),
    ];
    let server = start_server(dir, &args).await?;
    let kubeconfig = server.kubeconfig();
    let client = kube_client(&server.config)?;
    let mut server = server.proc;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = object(json!({"metadata": {"name": NAMESPACE}}))?;
    let mut last = String::new();
    server
        .wait_ready("the bench namespace created", async || {
            match namespaces.create(&PostParams::default(), &ns).await {
                Ok(_) => true,
                Err(kube::Error::Api(e)) if e.code == 409 => true,
                Err(e) => {
                    last = e.to_string();
                    false
                }
            }
        })
        .await
        .with_context(|| format!("last error: {last}"))?;
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = object(json!({
        "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
    }))?;
    nodes
        .create(&PostParams::default(), &node)
        .await
        .context("create the proxy's Node")?;
    Ok((server, client, kubeconfig))
}

/// A node's credentials from a throwaway CA (one per run, shared by both nodes; the
/// tunnel is their only use), written where the proxy child reads them.
fn write_credentials(dir: &Path, node: &str, ip: IpAddr) -> Result<PathBuf> {
    let pki = wasmkube_control::pki::Pki::load_or_create(&dir.join("node-ca"), &[])
        .context("create a throwaway CA")?;
    let (serving_cert, serving_key) = pki
        .issue_node_serving_cert(node, &[ip.to_string()])
        .context("issue the node's serving certificate")?;
    let (client_cert, client_key) = pki
        .issue_client_cert(&format!("system:node:{node}"), &["system:nodes"])
        .context("issue the node's client certificate")?;
    let out = dir.join(format!("credentials-{node}"));
    std::fs::create_dir_all(&out)?;
    for (file, text) in [
        ("ca.crt", pki.ca_cert_pem()),
        ("serving.crt", serving_cert.as_str()),
        ("serving.key", serving_key.as_str()),
        ("client.crt", client_cert.as_str()),
        ("client.key", client_key.as_str()),
    ] {
        std::fs::write(out.join(file), text).with_context(|| format!("write {file}"))?;
    }
    Ok(out)
}

/// The backends on [`BACKEND_IP`] and the processes serving them.
struct Backends {
    echo: SocketAddr,
    echo_proc: Proc,
    /// TCP and UDP on one port.
    iperf: Option<(SocketAddr, Proc)>,
    /// nginx serving `/1k`.
    http: Option<(SocketAddr, Proc)>,
}

impl Backends {
    async fn start(dir: &Path, tools: &Tools, want_iperf: bool, want_http: bool) -> Result<Self> {
        let this = std::env::current_exe().context("find this benchmark's binary")?;
        let echo = SocketAddr::new(BACKEND_IP, free_port(BACKEND_IP)?);
        let mut echo_proc = Proc::spawn(
            "echo server",
            &this,
            &[],
            &[(ROLE_ENV, "echo".into()), (LISTEN_ENV, echo.to_string())],
            &dir.join("echo.log"),
        )?;
        echo_proc
            .wait_ready("echoing", async || echo_connect(echo).await.is_ok())
            .await?;

        let iperf = match (&tools.iperf3, want_iperf) {
            (Some(iperf3), true) => {
                let addr = SocketAddr::new(BACKEND_IP, free_port_tcp_udp(BACKEND_IP)?);
                let args: Vec<String> = [
                    "-s",
                    "-B",
                    &BACKEND_IP.to_string(),
                    "-p",
                    &addr.port().to_string(),
                    "--forceflush",
                ]
                .map(String::from)
                .to_vec();
                let log = dir.join("iperf3-server.log");
                let mut p = Proc::spawn("iperf3 server", iperf3, &args, &[], &log)?;
                p.wait_ready("listening", async || {
                    std::fs::read_to_string(&log).is_ok_and(|t| t.contains("Server listening"))
                })
                .await?;
                Some((addr, p))
            }
            _ => None,
        };

        let http = match (&tools.nginx, &tools.wrk, want_http) {
            (Some(nginx), Some(_), true) => {
                let addr = SocketAddr::new(BACKEND_IP, free_port(BACKEND_IP)?);
                let p = start_nginx(dir, nginx, addr).await?;
                Some((addr, p))
            }
            _ => None,
        };
        Ok(Backends {
            echo,
            echo_proc,
            iperf,
            http,
        })
    }

    async fn stop(self) {
        if let Some((_, p)) = self.http {
            p.stop().await;
        }
        if let Some((_, p)) = self.iperf {
            p.stop().await;
        }
        self.echo_proc.stop().await;
    }
}

/// nginx (one worker, in the foreground) serving a 1 KiB file at `/1k` on `addr`.
async fn start_nginx(dir: &Path, nginx: &Path, addr: SocketAddr) -> Result<Proc> {
    let root = dir.join("nginx");
    let www = root.join("www");
    std::fs::create_dir_all(&www).context("create nginx's dirs")?;
    // Run as root, nginx's workers run as nobody: they must reach the file.
    for d in [dir, root.as_path(), www.as_path()] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", d.display()))?;
    }
    let body: Vec<u8> = (0..HTTP_BODY).map(|i| b'a' + (i % 26) as u8).collect();
    std::fs::write(www.join("1k"), body).context("write the 1 KiB file")?;
    let r = root.display();
    let conf = format!(
        "worker_processes 1;
pid {r}/nginx.pid;
error_log {r}/error.log warn;
daemon off;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  client_body_temp_path {r}/body;
  proxy_temp_path {r}/proxy;
  fastcgi_temp_path {r}/fastcgi;
  uwsgi_temp_path {r}/uwsgi;
  scgi_temp_path {r}/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 3600s;
  server {{
    listen {addr};
    root {www};
  }}
}}
",
        www = www.display()
    );
    let conf_path = root.join("nginx.conf");
    std::fs::write(&conf_path, conf).context("write nginx.conf")?;
    let args: Vec<String> = vec![
        "-p".into(),
        root.display().to_string(),
        "-c".into(),
        conf_path.display().to_string(),
        "-e".into(),
        root.join("error.log").display().to_string(),
    ];
    let mut p = Proc::spawn("nginx", nginx, &args, &[], &dir.join("nginx.log"))?;
    p.wait_ready("serving /1k", async || {
        http_get(addr, "/1k", IO_TIMEOUT)
            .await
            .is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
    })
    .await?;
    p.note_descendants();
    Ok(p)
}

/// HAProxy in TCP mode with one frontend per backend, on free ports of [`HAPROXY_IP`].
/// Returns the process and each backend's frontend.
async fn start_haproxy(
    dir: &Path,
    haproxy: &Path,
    backends: &[(&str, SocketAddr)],
) -> Result<(Proc, HashMap<String, SocketAddr>)> {
    let mut conf = String::from(
        "global
  # Defaults otherwise: threads = CPUs, maxconn from the open-files limit.
  log stderr format raw local0 warning
defaults
  mode tcp
  log global
  timeout connect 5s
  timeout client 1h
  timeout server 1h
",
    );
    let mut frontends = HashMap::new();
    for (name, backend) in backends {
        let front = SocketAddr::new(HAPROXY_IP, free_port(HAPROXY_IP)?);
        conf.push_str(&format!(
            "listen {name}\n  bind {front}\n  server {name} {backend}\n"
        ));
        frontends.insert(name.to_string(), front);
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf).context("write haproxy.cfg")?;
    let args: Vec<String> = vec!["-f".into(), path.display().to_string(), "-db".into()];
    let mut p = Proc::spawn("haproxy", haproxy, &args, &[], &dir.join("haproxy.log"))?;
    let echo = frontends.get("echo").copied().context("no echo frontend")?;
    p.wait_ready("forwarding", async || echo_connect(echo).await.is_ok())
        .await?;
    Ok((p, frontends))
}

/// Creates the bench Service (no selector) and its EndpointSlice: one ready endpoint
/// on [`BACKEND_IP`] on the proxy's node. Returns the ClusterIP.
async fn create_bench_service(client: &Client, backends: &Backends) -> Result<IpAddr> {
    let mut ports = vec![("echo", "TCP", ECHO_PORT, backends.echo.port())];
    if let Some((addr, _)) = &backends.iperf {
        ports.push(("iperf", "TCP", IPERF_PORT, addr.port()));
        ports.push(("iperf-udp", "UDP", IPERF_PORT, addr.port()));
    }
    if let Some((addr, _)) = &backends.http {
        ports.push(("http", "TCP", HTTP_PORT, addr.port()));
    }
    let svc_ports: Vec<serde_json::Value> = ports
        .iter()
        .map(|(name, proto, port, target)| {
            json!({"name": name, "protocol": proto, "port": port, "targetPort": target})
        })
        .collect();
    let slice_ports: Vec<serde_json::Value> = ports
        .iter()
        .map(|(name, proto, _, target)| json!({"name": name, "protocol": proto, "port": target}))
        .collect();
    let svc =
        create_service_with_endpoint(client, SERVICE, "ClusterIP", NODE, svc_ports, slice_ports)
            .await?;
    cluster_ip_of(&svc)
}

/// A selector-less Service of `type` and the EndpointSlice naming its one endpoint,
/// [`BACKEND_IP`] on `node`; the Service as created.
async fn create_service_with_endpoint(
    client: &Client,
    name: &str,
    type_: &str,
    node: &str,
    svc_ports: Vec<serde_json::Value>,
    slice_ports: Vec<serde_json::Value>,
) -> Result<Service> {
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let svc: Service = object(json!({
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"type": type_, "ports": svc_ports},
    }))?;
    let created = services
        .create(&PostParams::default(), &svc)
        .await
        .with_context(|| format!("create Service {name}"))?;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let slice: EndpointSlice = object(json!({
        "metadata": {
            "name": format!("{name}-bench"),
            "namespace": NAMESPACE,
            "labels": {SERVICE_NAME_LABEL: name},
        },
        "addressType": "IPv4",
        "ports": slice_ports,
        "endpoints": [{
            "addresses": [BACKEND_IP.to_string()],
            "conditions": {"ready": true},
            "nodeName": node,
        }],
    }))?;
    slices
        .create(&PostParams::default(), &slice)
        .await
        .with_context(|| format!("create the EndpointSlice of {name}"))?;
    Ok(created)
}

/// A Service's ClusterIP.
fn cluster_ip_of(svc: &Service) -> Result<IpAddr> {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
        .context("the Service got no ClusterIP")
}

/// The proxy child of `node` (at `node_ip`), with its `/metrics` address, once a
/// connection to `through` is echoed.
async fn start_proxy(
    dir: &Path,
    kubeconfig: &Path,
    (node, node_ip, credentials): (&str, IpAddr, &Path),
    through: SocketAddr,
) -> Result<(Proc, SocketAddr)> {
    let this = std::env::current_exe().context("find this benchmark's binary")?;
    let metrics = SocketAddr::new(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        free_port(IpAddr::V4(Ipv4Addr::LOCALHOST))?,
    );
    let mut p = Proc::spawn(
        "proxy",
        &this,
        &[],
        &[
            (ROLE_ENV, "proxy".into()),
            (KUBECONFIG_ENV, kubeconfig.display().to_string()),
            (NODE_ENV, node.into()),
            (NODE_IP_ENV, node_ip.to_string()),
            (CREDENTIALS_ENV, credentials.display().to_string()),
            (METRICS_ENV, metrics.to_string()),
        ],
        &dir.join(format!("proxy-{node}.log")),
    )?;
    p.wait_ready("forwarding to the echo server", async || {
        echo_connect(through).await.is_ok()
    })
    .await?;
    Ok((p, metrics))
}

// ---------------------------------------------------------------------------------
// Main

async fn bench_main() -> Result<()> {
    let opts = Opts::from_env()?;
    let tools = Tools::find();
    let mut header = vec![
        format!(
            "wasmkube Service proxy benchmark ({} build); rows: {}",
            build(),
            opts.rows()
        ),
        format!(
            "{} CPUs; 1-minute load average before starting: {:.2}; open-files limit {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            load_average(),
            open_files_limit(std::process::id())
                .map_or("?".to_string(), |(s, h)| format!("{s} (hard {h})"))
        ),
        format!("tools: {}", tools.describe()),
    ];
    if let Some(h) = &tools.haproxy {
        if let Ok(v) = run_tool(h, &["-v".to_string()], IO_TIMEOUT).await {
            header.push(v.lines().next().unwrap_or_default().to_string());
        }
    }
    for h in &header {
        println!("{h}");
    }
    let (sections, notes) = in_temp_dir("wasmkube-proxy-bench-", opts.keep, async |dir| {
        run(&opts, &tools, dir).await
    })
    .await?;
    header.extend(notes);
    print_report(&opts, &header, &sections);
    Ok(())
}

/// Everything the rows use.
struct Setup {
    client: Client,
    echo: Route,
    iperf: Option<Route>,
    http: Option<Route>,
    proxy_pid: u32,
    haproxy_pid: Option<u32>,
    metrics: SocketAddr,
    backend_echo: SocketAddr,
    echo_pid: u32,
    iperf3: Option<PathBuf>,
    wrk: Option<PathBuf>,
}

impl Setup {
    /// The process in the middle of a path, whose CPU a row reports.
    fn middle(&self, via: Via) -> Option<u32> {
        match via {
            Via::Direct => None,
            Via::Proxy => Some(self.proxy_pid),
            Via::Haproxy => self.haproxy_pid,
        }
    }
}

async fn run(opts: &Opts, tools: &Tools, dir: &Path) -> Result<(Vec<Section>, Vec<String>)> {
    println!("starting `wasmkube server`, the backends, the proxy and HAProxy…");
    let (server, client, kubeconfig) = start_cluster(dir).await?;
    let credentials = write_credentials(dir, NODE, IpAddr::V4(Ipv4Addr::LOCALHOST))?;
    let want_iperf = opts.tcp || opts.udp || opts.across_row;
    let backends = Backends::start(dir, tools, want_iperf, opts.http).await?;
    let cluster_ip = create_bench_service(&client, &backends).await?;
    let (proxy, metrics) = start_proxy(
        dir,
        &kubeconfig,
        (NODE, IpAddr::V4(Ipv4Addr::LOCALHOST), &credentials),
        SocketAddr::new(cluster_ip, ECHO_PORT),
    )
    .await?;
    println!(
        "  Service {NAMESPACE}/{SERVICE} at {cluster_ip}; proxy pid {} (log {}), metrics on {metrics}",
        proxy.pid,
        proxy.log.display()
    );
    let haproxy = match &tools.haproxy {
        Some(h) => {
            let mut list = vec![("echo", backends.echo)];
            if let Some((a, _)) = &backends.iperf {
                list.push(("iperf", *a));
            }
            if let Some((a, _)) = &backends.http {
                list.push(("http", *a));
            }
            let (p, fronts) = start_haproxy(dir, h, &list).await?;
            println!("  haproxy pid {} (log {})", p.pid, p.log.display());
            Some((p, fronts))
        }
        None => None,
    };
    let front = |name: &str| haproxy.as_ref().and_then(|(_, f)| f.get(name).copied());
    let setup = Setup {
        client,
        echo: Route {
            direct: backends.echo,
            proxy: SocketAddr::new(cluster_ip, ECHO_PORT),
            haproxy: front("echo"),
        },
        iperf: backends.iperf.as_ref().map(|(a, _)| Route {
            direct: *a,
            proxy: SocketAddr::new(cluster_ip, IPERF_PORT),
            haproxy: front("iperf"),
        }),
        http: backends.http.as_ref().map(|(a, _)| Route {
            direct: *a,
            proxy: SocketAddr::new(cluster_ip, HTTP_PORT),
            haproxy: front("http"),
        }),
        proxy_pid: proxy.pid,
        haproxy_pid: haproxy.as_ref().map(|(p, _)| p.pid),
        metrics,
        backend_echo: backends.echo,
        echo_pid: backends.echo_proc.pid,
        iperf3: tools.iperf3.clone(),
        wrk: tools.wrk.clone(),
    };
    let mut notes = vec![format!(
        "proxy: a child process (wasmkube_proxy::start on a multi-threaded runtime, forwarding on one thread per CPU; mimalloc), RSS {:.1} MiB after start with the bench Service; backends on {BACKEND_IP}: echo {}, iperf3 {}, nginx {}",
        rss_or_nan(proxy.pid),
        backends.echo,
        backends.iperf.as_ref().map_or("—".into(), |(a, _)| a.to_string()),
        backends.http.as_ref().map_or("—".into(), |(a, _)| a.to_string()),
    )];
    if let Some((_, f)) = &haproxy {
        let mut fronts: Vec<String> = f.iter().map(|(k, v)| format!("{k} {v}")).collect();
        fronts.sort();
        notes.push(format!("HAProxy frontends: {}", fronts.join(", ")));
    }

    let mut rows = rows(opts, &setup).await;
    // Last, as it adds a node and a proxy the other rows must not see.
    if opts.across_row {
        println!(
            "across: {} idle connections through two nodes' proxies and their tunnel…",
            opts.idle_connections
        );
        rows.push(across_row(opts, &setup, dir, &kubeconfig).await);
    }
    notes.push(log_summary("proxy", &proxy.log));

    if let Some((p, _)) = haproxy {
        p.stop().await;
    }
    proxy.stop().await;
    backends.stop().await;
    server.stop().await;
    Ok((rows, notes))
}

async fn rows(opts: &Opts, setup: &Setup) -> Vec<Section> {
    let mut sections = Vec::new();
    if opts.latency {
        println!("latency: one pinned connection, ping-pong…");
        sections.push(latency_row(opts, setup, Pinger::Thread).await);
        sections.push(latency_row(opts, setup, Pinger::Process).await);
    }
    if opts.tcp {
        println!("tcp: iperf3 bulk TCP…");
        sections.push(tcp_row(opts, setup).await);
    }
    if opts.udp {
        println!("udp: iperf3 at {} datagrams/s…", opts.udp_rate);
        sections.push(udp_row(opts, setup).await);
    }
    if opts.http {
        println!("http: wrk against nginx…");
        sections.push(http_row(opts, setup).await);
    }
    if opts.services_row {
        println!("services: the proxy's RSS with {} Services…", opts.services);
        sections.push(services_row(opts, setup).await);
    }
    // Last: the allocator keeps some of what 10,000 connections took, which would blur
    // the Services' RSS.
    if opts.idle_row {
        println!(
            "idle: {} idle connections through the proxy and HAProxy…",
            opts.idle_connections
        );
        sections.push(idle_row(opts, setup).await);
    }
    sections
}

// ---------------------------------------------------------------------------------
// Rows

async fn latency_row(opts: &Opts, setup: &Setup, pinger: Pinger) -> Section {
    let turns = opts.latency_turns;
    let per_turn = opts.round_trips.div_ceil(turns);
    let from = match pinger {
        Pinger::Thread => "a thread of this benchmark",
        Pinger::Process => "a process of its own",
    };
    let mut s = Section::new(format!(
        "one pinned connection from {from}: {}-byte ping-pong with the echo server, {} round trips per path in {} turns (a connection each, the paths in turn), each after {PING_WARMUP} untimed",
        PING_SIZE,
        per_turn * turns,
        turns
    ));
    s.lines.push(Line::new("RTT p50", "µs", 1, Better::Lower));
    s.lines.push(Line::new("RTT p99", "µs", 1, Better::Lower));
    s.lines
        .push(Line::new("added to direct, p50", "µs", 1, Better::Lower));
    s.lines
        .push(Line::new("added to direct, p99", "µs", 1, Better::Lower));
    // The paths take turns, a share of the round trips each, so a drift in the
    // machine's load reaches all of them alike; the percentiles are over all of a path's
    // round trips. Where the scheduler places the three parties differs from connection
    // to connection (on a VM a wake-up across CPUs costs ~20 µs), so each turn is a new
    // connection and the turns' own figures give the spread.
    let mut samples: [Vec<Duration>; 3] = Default::default();
    let mut by_turn: Vec<[Option<Stats>; 3]> = Vec::new();
    let mut cpu: [Vec<f64>; 3] = Default::default();
    let mut failed: [Option<anyhow::Error>; 3] = Default::default();
    for _ in 0..turns {
        let mut turn: [Option<Stats>; 3] = [None; 3];
        for via in VIAS {
            let Some(addr) = setup.echo.get(via) else {
                continue;
            };
            if failed[via.index()].is_some() {
                continue;
            }
            let (r, cores) = with_cpu(
                setup.middle(via),
                pinger.ping_pong(addr, PING_WARMUP, per_turn),
            )
            .await;
            cpu[via.index()].extend(cores);
            match r {
                Ok(mut got) => {
                    samples[via.index()].extend_from_slice(&got);
                    turn[via.index()] = Some(Stats::of(&mut got));
                }
                Err(e) => failed[via.index()] = Some(e),
            }
        }
        by_turn.push(turn);
    }
    // One figure per turn (p50 or p99 of a path), and per turn what a path added to
    // the direct connection's figure of the same turn.
    let each = |via: Via, f: fn(&Stats) -> f64| -> Vec<f64> {
        by_turn
            .iter()
            .filter_map(|t| t[via.index()].as_ref().map(f))
            .collect()
    };
    let added = |via: Via, f: fn(&Stats) -> f64| -> Vec<f64> {
        by_turn
            .iter()
            .filter_map(|t| Some(f(t[via.index()].as_ref()?) - f(t[0].as_ref()?)))
            .collect()
    };
    let p50 = |st: &Stats| us(st.p50);
    let p99 = |st: &Stats| us(st.p99);
    let mut stats: [Option<Stats>; 3] = [None; 3];
    for via in VIAS {
        let i = via.index();
        if setup.echo.get(via).is_none() {
            for l in 0..4 {
                s.lines[l].set(via, Cell::Absent("no HAProxy"));
            }
        } else if let Some(e) = &failed[i] {
            s.failure(0, via, e);
            s.lines[1].set(via, Cell::Failed);
        } else {
            let st = Stats::of(&mut samples[i]);
            s.lines[0].set(via, Cell::Value(us(st.p50)));
            s.lines[0].set_spread(via, &each(via, p50));
            s.lines[1].set(via, Cell::Value(us(st.p99)));
            s.lines[1].set_spread(via, &each(via, p99));
            stats[i] = Some(st);
        }
    }
    let cpu = mean_cores(&cpu);
    for l in 2..4 {
        s.lines[l].set(Via::Direct, Cell::Absent("—"));
    }
    if let Some(direct) = stats[0] {
        for via in [Via::Proxy, Via::Haproxy] {
            if let Some(st) = stats[via.index()] {
                s.lines[2].set(via, Cell::Value(us(st.p50) - us(direct.p50)));
                s.lines[2].set_spread(via, &added(via, p50));
                s.lines[3].set(via, Cell::Value(us(st.p99) - us(direct.p99)));
                s.lines[3].set_spread(via, &added(via, p99));
            }
        }
    }
    let ranges: Vec<String> = VIAS
        .iter()
        .filter_map(|&v| {
            let mut p = each(v, p50);
            p.sort_by(f64::total_cmp);
            let (lo, hi) = (p.first()?, p.last()?);
            let mid = p[p.len() / 2];
            Some(format!("{} {lo:.0}–{hi:.0} (median {mid:.0})", v.name()))
        })
        .collect();
    s.notes
        .push(format!("RTT p50 of the turns, µs: {}", ranges.join(", ")));
    let maxes: Vec<String> = VIAS
        .iter()
        .filter_map(|v| {
            stats[v.index()].map(|st| format!("{} {:.0} µs (n={})", v.name(), us(st.max), st.count))
        })
        .collect();
    s.notes.push(format!("max RTT: {}", maxes.join(", ")));
    s.notes.push(format!(
        "CPU of the process in the middle while the round trips ran (cores, mean of the turns): {}; the echo server is a child process with one thread",
        cores_note(&cpu)
    ));
    s
}

/// An iperf3 client's arguments for a TCP test to `to`: JSON out, 5 s to connect.
fn iperf3_tcp_args(to: SocketAddr, seconds: u64, streams: usize) -> Vec<String> {
    let args = [
        "-c".to_string(),
        to.ip().to_string(),
        "-p".into(),
        to.port().to_string(),
        "-t".into(),
        seconds.to_string(),
        "-P".into(),
        streams.to_string(),
        "-J".into(),
        "--connect-timeout".into(),
        "5000".into(),
    ];
    args.to_vec()
}

/// Parses iperf3's JSON: the received rate (bit/s) of a TCP test.
fn iperf3_tcp_rate(json: &str) -> Result<f64> {
    let v: serde_json::Value = serde_json::from_str(json).context("iperf3's JSON")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no end.sum_received.bits_per_second in iperf3's JSON")
}

async fn tcp_row(opts: &Opts, setup: &Setup) -> Section {
    let mut s = Section::new(format!(
        "bulk TCP: iperf3 -t {} (client → server), received rate",
        opts.seconds
    ));
    let (Some(route), Some(iperf3)) = (setup.iperf, &setup.iperf3) else {
        s.notes.push("skipped: iperf3 is not installed".into());
        return s;
    };
    for (i, streams) in [1usize, 4].into_iter().enumerate() {
        let name = if streams == 1 {
            "1 stream".to_string()
        } else {
            format!("{streams} streams")
        };
        s.lines
            .push(Line::new(name.clone(), "Gbit/s", 2, Better::Higher));
        let mut cpu = Vec::new();
        for via in VIAS {
            let Some(addr) = route.get(via) else {
                s.lines[i].set(via, Cell::Absent("no HAProxy"));
                continue;
            };
            let args = iperf3_tcp_args(addr, opts.seconds, streams);
            let limit = Duration::from_secs(opts.seconds + 60);
            let (r, cores) = with_cpu(setup.middle(via), run_tool(iperf3, &args, limit)).await;
            cpu.push((via, cores));
            match r.and_then(|out| iperf3_tcp_rate(&out)) {
                Ok(bps) => s.lines[i].set(via, Cell::Value(bps / 1e9)),
                Err(e) => s.failure(i, via, &e),
            }
        }
        s.notes.push(format!(
            "{name}: CPU in the middle (cores) {}",
            cores_note(&cpu)
        ));
    }
    s.notes.push(
        "issue 7: on this 2-core machine HAProxy reaches about 0.6–0.75 of direct for bulk TCP"
            .into(),
    );
    s
}

/// iperf3's UDP figures.
struct UdpFigures {
    lost_percent: f64,
    packets: u64,
    lost: u64,
    seconds: f64,
}

fn iperf3_udp(json: &str) -> Result<UdpFigures> {
    let v: serde_json::Value = serde_json::from_str(json).context("iperf3's JSON")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let sum = &v["end"]["sum"];
    Ok(UdpFigures {
        lost_percent: sum["lost_percent"]
            .as_f64()
            .context("no end.sum.lost_percent in iperf3's JSON")?,
        packets: sum["packets"].as_u64().unwrap_or(0),
        lost: sum["lost_packets"].as_u64().unwrap_or(0),
        seconds: sum["seconds"].as_f64().unwrap_or(0.0),
    })
}

async fn udp_row(opts: &Opts, setup: &Setup) -> Section {
    let mut s = Section::new(format!(
        "UDP: iperf3 -u at {} datagrams/s of {UDP_DATAGRAM} B for {} s (-w {UDP_WINDOW}), loss",
        opts.udp_rate, opts.seconds
    ));
    let (Some(route), Some(iperf3)) = (setup.iperf, &setup.iperf3) else {
        s.notes.push("skipped: iperf3 is not installed".into());
        return s;
    };
    s.lines.push(
        Line::new("datagrams lost", "%", 3, Better::Lower)
            .goal(Goal::AtMost(GOAL_UDP_LOSS_PERCENT)),
    );
    s.lines[0].set(Via::Haproxy, Cell::Absent("no UDP"));
    let mut cpu = Vec::new();
    let mut details = Vec::new();
    for via in [Via::Direct, Via::Proxy] {
        let addr = route.get(via).unwrap_or(route.direct);
        let bits = opts.udp_rate * UDP_DATAGRAM * 8;
        let args: Vec<String> = vec![
            "-c".into(),
            addr.ip().to_string(),
            "-p".into(),
            addr.port().to_string(),
            "-u".into(),
            "-b".into(),
            bits.to_string(),
            "-l".into(),
            UDP_DATAGRAM.to_string(),
            "-w".into(),
            UDP_WINDOW.into(),
            "-t".into(),
            opts.seconds.to_string(),
            "-J".into(),
            "--connect-timeout".into(),
            "5000".into(),
        ];
        let limit = Duration::from_secs(opts.seconds + 60);
        let (r, cores) = with_cpu(setup.middle(via), run_tool(iperf3, &args, limit)).await;
        cpu.push((via, cores));
        match r.and_then(|out| iperf3_udp(&out)) {
            Ok(f) => {
                s.lines[0].set(via, Cell::Value(f.lost_percent));
                details.push(format!(
                    "{} {} of {} lost, {:.0} datagrams/s sent",
                    via.name(),
                    f.lost,
                    f.packets,
                    f.packets as f64 / f.seconds.max(1e-9)
                ));
            }
            Err(e) => s.failure(0, via, &e),
        }
    }
    s.notes.push(details.join("; "));
    s.notes.push(format!(
        "CPU of the proxy (cores): {}; HAProxy does not proxy UDP",
        cores_note(&cpu)
    ));
    s
}

/// wrk's figures.
struct WrkFigures {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    requests: u64,
    errors: Option<String>,
    non_2xx: u64,
}

/// A wrk latency ("95.00us", "1.20ms", "2.00s", "1.00m") in µs.
fn wrk_duration_us(s: &str) -> Option<f64> {
    let (num, scale) = if let Some(v) = s.strip_suffix("us") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1e3)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1e6)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 6e7)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|n| n * scale)
}

fn parse_wrk(out: &str) -> Result<WrkFigures> {
    let mut rps = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut requests = 0;
    let mut errors = None;
    let mut non_2xx = 0;
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if let Some(v) = line.strip_prefix("50%") {
            p50 = wrk_duration_us(v.trim());
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = wrk_duration_us(v.trim());
        } else if line.starts_with("Socket errors:") {
            errors = Some(line.to_string());
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = v.trim().parse().unwrap_or(0);
        } else if line.contains(" requests in ") {
            requests = line
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    Ok(WrkFigures {
        rps: rps.with_context(|| format!("no Requests/sec in wrk's output:\n{out}"))?,
        p50_us: p50.context("no 50% latency in wrk's output")?,
        p99_us: p99.context("no 99% latency in wrk's output")?,
        requests,
        errors,
        non_2xx,
    })
}

async fn http_row(opts: &Opts, setup: &Setup) -> Section {
    let mut s = Section::new(format!(
        "HTTP: wrk -t{} -c{} -d{}s --latency against nginx (1 worker) serving {HTTP_BODY} B; \
         median of {} rounds",
        opts.wrk_threads, opts.wrk_connections, opts.seconds, opts.rounds
    ));
    let (Some(route), Some(wrk)) = (setup.http, &setup.wrk) else {
        s.notes
            .push("skipped: wrk or nginx is not installed".into());
        return s;
    };
    for (k, close) in [false, true].into_iter().enumerate() {
        let mode = if close {
            "new connection each"
        } else {
            "keep-alive"
        };
        let base = k * 3;
        s.lines.push(Line::new(
            format!("{mode}: requests/s"),
            "req/s",
            0,
            Better::Higher,
        ));
        s.lines
            .push(Line::new(format!("{mode}: p50"), "µs", 0, Better::Lower));
        s.lines
            .push(Line::new(format!("{mode}: p99"), "µs", 0, Better::Lower));
        // The paths take turns round by round, so a drift in the machine's load
        // (other work, thermal) reaches all of them alike.
        let mut runs: [Vec<WrkFigures>; 3] = Default::default();
        let mut cpu: [Vec<f64>; 3] = Default::default();
        let mut failed: [Option<anyhow::Error>; 3] = Default::default();
        let mut problems = Vec::new();
        for _ in 0..opts.rounds {
            for via in VIAS {
                let Some(addr) = route.get(via) else {
                    continue;
                };
                let mut args: Vec<String> = vec![
                    format!("-t{}", opts.wrk_threads),
                    format!("-c{}", opts.wrk_connections),
                    format!("-d{}s", opts.seconds),
                    "--latency".into(),
                ];
                if close {
                    args.push("-H".into());
                    args.push("Connection: close".into());
                }
                args.push(format!("http://{addr}/1k"));
                let limit = Duration::from_secs(opts.seconds + 60);
                let (r, cores) = with_cpu(setup.middle(via), run_tool(wrk, &args, limit)).await;
                cpu[via.index()].extend(cores);
                match r.and_then(|out| parse_wrk(&out)) {
                    Ok(f) => {
                        if let Some(e) = &f.errors {
                            problems.push(format!("{} {e}", via.name()));
                        }
                        if f.non_2xx > 0 {
                            problems.push(format!(
                                "{} {} of {} responses not 2xx",
                                via.name(),
                                f.non_2xx,
                                f.requests
                            ));
                        }
                        runs[via.index()].push(f);
                    }
                    Err(e) => {
                        failed[via.index()].get_or_insert(e);
                    }
                }
            }
        }
        let mut per_round = Vec::new();
        for via in VIAS {
            let i = via.index();
            if route.get(via).is_none() {
                for l in base..base + 3 {
                    s.lines[l].set(via, Cell::Absent("no HAProxy"));
                }
                continue;
            }
            if let Some(e) = &failed[i] {
                s.failure(base, via, e);
                if runs[i].is_empty() {
                    for l in base + 1..base + 3 {
                        s.lines[l].set(via, Cell::Failed);
                    }
                    continue;
                }
            }
            let of = |get: fn(&WrkFigures) -> f64| runs[i].iter().map(get).collect::<Vec<_>>();
            s.lines[base].set_median(via, &of(|f| f.rps));
            s.lines[base + 1].set_median(via, &of(|f| f.p50_us));
            s.lines[base + 2].set_median(via, &of(|f| f.p99_us));
            let rps: Vec<String> = runs[i].iter().map(|f| format!("{:.0}", f.rps)).collect();
            per_round.push(format!("{} {}", via.name(), rps.join("/")));
        }
        let cores = mean_cores(&cpu);
        s.notes.push(format!(
            "{mode}: requests/s per round: {}; CPU in the middle (cores, mean) {}{}",
            per_round.join(", "),
            cores_note(&cores),
            if problems.is_empty() {
                String::new()
            } else {
                format!("; {}", problems.join("; "))
            }
        ));
    }
    s
}

/// What holding many idle connections on one path gave.
struct IdleFigures {
    opened: usize,
    held: usize,
    open_wall: Duration,
    first_error: Option<String>,
    /// The middle processes' RSS (MiB) and open files before and with the connections.
    before: Vec<Usage>,
    with: Vec<Usage>,
}

/// A process's RSS (MiB) and open files.
#[derive(Clone, Copy)]
struct Usage {
    rss: f64,
    fds: Option<usize>,
}

impl Usage {
    fn of(pid: u32) -> Usage {
        Usage {
            rss: rss_or_nan(pid),
            fds: open_fds(pid),
        }
    }
}

async fn hold_idle(
    addr: SocketAddr,
    n: usize,
    idle: Duration,
    pids: &[u32],
    echo_pid: u32,
) -> IdleFigures {
    let before: Vec<Usage> = pids.iter().map(|&p| Usage::of(p)).collect();
    let echo_fds_before = open_fds(echo_pid);
    let started = Instant::now();
    let results: Vec<Result<TcpStream>> = futures::stream::iter(0..n)
        .map(|_| echo_connect(addr))
        .buffer_unordered(IDLE_OPEN_CONCURRENCY)
        .collect()
        .await;
    let open_wall = started.elapsed();
    let mut first_error = None;
    let mut conns = Vec::with_capacity(n);
    for r in results {
        match r {
            Ok(c) => conns.push(c),
            Err(e) => {
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let opened = conns.len();
    tokio::time::sleep(idle).await;
    let with: Vec<Usage> = pids.iter().map(|&p| Usage::of(p)).collect();
    let checks: Vec<Result<()>> = futures::stream::iter(conns.iter_mut())
        .map(echo_again)
        .buffer_unordered(IDLE_OPEN_CONCURRENCY)
        .collect()
        .await;
    let mut held = 0;
    for r in checks {
        match r {
            Ok(()) => held += 1,
            Err(e) => {
                first_error.get_or_insert_with(|| format!("after the idle time: {e:#}"));
            }
        }
    }
    drop(conns);
    // Let the middle process and the echo server close their sides before the next
    // path is measured.
    let deadline = Instant::now() + Duration::from_secs(30);
    let waits = pids
        .iter()
        .zip(before.iter().map(|u| u.fds))
        .chain([(&echo_pid, echo_fds_before)]);
    for (&pid, before) in waits {
        let Some(before) = before else {
            continue;
        };
        while open_fds(pid).is_some_and(|f| f > before + 16) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    IdleFigures {
        opened,
        held,
        open_wall,
        first_error,
        before,
        with,
    }
}

async fn idle_row(opts: &Opts, setup: &Setup) -> Section {
    let n = opts.idle_connections;
    let mut s = Section::new(format!(
        "{n} concurrent idle connections to the echo server (each: one echoed byte, {} s idle, another echoed byte)",
        opts.idle.as_secs()
    ));
    s.lines.push(
        Line::new("connections held", "", 0, Better::Higher)
            .goal(Goal::AtLeast(GOAL_IDLE_CONNECTIONS)),
    );
    s.lines
        .push(Line::new("RSS with them", "MiB", 1, Better::Lower).goal(Goal::Report));
    s.lines
        .push(Line::new("RSS per connection", "KiB", 2, Better::Lower).goal(Goal::Report));
    for l in 1..3 {
        s.lines[l].set(Via::Direct, Cell::Absent("—"));
    }
    for via in VIAS {
        let Some(addr) = setup.echo.get(via) else {
            for l in 0..3 {
                s.lines[l].set(via, Cell::Absent("no HAProxy"));
            }
            continue;
        };
        let pid = setup.middle(via);
        let f = hold_idle(addr, n, opts.idle, pid.as_slice(), setup.echo_pid).await;
        s.lines[0].set(via, Cell::Value(f.held as f64));
        let (before, with) = (f.before.first(), f.with.first());
        if let (Some(before), Some(with)) = (before, with) {
            s.lines[1].set(via, Cell::Value(with.rss));
            s.lines[2].set(
                via,
                Cell::Value((with.rss - before.rss) * 1024.0 / f.held.max(1) as f64),
            );
        }
        // Each proxied connection takes two descriptors: what fits beside those open.
        let limit = match (pid.and_then(open_files_limit), before.and_then(|u| u.fds)) {
            (Some((soft, _)), Some(before)) => format!(
                "; open-files limit {soft}: room for {} connections",
                soft.saturating_sub(before as u64) / 2
            ),
            _ => String::new(),
        };
        s.notes.push(format!(
            "{}: {} of {n} opened in {:.1} s, {} still open after the idle time{}{}{}",
            via.name(),
            f.opened,
            f.open_wall.as_secs_f64(),
            f.held,
            match (before, before.and_then(|u| u.fds), with.and_then(|u| u.fds)) {
                (Some(u), Some(a), Some(b)) =>
                    format!("; its RSS {:.1} MiB before, open files {a} → {b}", u.rss),
                _ => String::new(),
            },
            limit,
            f.first_error
                .map_or(String::new(), |e| format!("; first failure: {e}"))
        ));
    }
    s.notes.push(
        "a proxied connection takes 2 file descriptors in the proxy (client side and upstream): holding 10,000 needs an open-files limit above 20,000 (the agent raises its soft limit to the hard one, and as root to the kernel's maximum where it may)".into(),
    );
    s
}

/// Idle connections across two nodes: the client connects to the NodePort of the bench
/// node's proxy, whose Service's only endpoint runs on a second node, so that every
/// connection is a stream in the tunnel between the two proxies. A proxy holds a
/// descriptor per connection on its side (client or endpoint) and one or two for the
/// tunnel, where a same-node connection takes two in one proxy.
async fn across_row(opts: &Opts, setup: &Setup, dir: &Path, kubeconfig: &Path) -> Section {
    let n = opts.idle_connections;
    let mut s = Section::new(format!(
        "{n} concurrent idle connections across two nodes: client → NodePort of the proxy of node 1 → tunnel → proxy of node 2 ({FAR_NODE_IP}) → echo server (each: one echoed byte, {} s idle, another echoed byte)",
        opts.idle.as_secs()
    ));
    s.lines.push(
        Line::new("connections held", "", 0, Better::Higher)
            .goal(Goal::AtLeast(GOAL_IDLE_CONNECTIONS)),
    );
    for name in ["node 1 proxy: open files", "node 2 proxy: open files"] {
        s.lines
            .push(Line::new(name, "", 0, Better::Lower).goal(Goal::Report));
    }
    s.lines.push(
        Line::new("RSS per connection, both proxies", "KiB", 2, Better::Lower).goal(Goal::Report),
    );
    s.lines.push(
        Line::new(
            format!("opened per second, {IDLE_OPEN_CONCURRENCY} at a time"),
            "",
            0,
            Better::Higher,
        )
        .goal(Goal::Report),
    );
    s.lines
        .push(Line::new("ping-pong RTT p50", "µs", 1, Better::Lower).goal(Goal::Report));
    s.lines
        .push(Line::new("ping-pong RTT p99", "µs", 1, Better::Lower).goal(Goal::Report));
    for (i, l) in s.lines.iter_mut().enumerate() {
        if i < 5 {
            l.set(Via::Direct, Cell::Absent("—"));
        }
        l.set(Via::Haproxy, Cell::Absent("—"));
    }
    s.lines
        .push(Line::new("bulk TCP, 1 stream", "Gbit/s", 2, Better::Higher).goal(Goal::Report));
    s.lines[7].set(Via::Haproxy, Cell::Absent("—"));
    let Across {
        far_proxy,
        echo: addr,
        iperf,
    } = match across_setup(setup, dir, kubeconfig).await {
        Ok(x) => x,
        Err(e) => {
            for l in &mut s.lines {
                l.set(Via::Proxy, Cell::Failed);
            }
            s.notes.push(format!("setup failed: {e:#}"));
            return s;
        }
    };
    // One pinned connection's round trips, direct and across, before the idle ones.
    for (via, to) in [(Via::Direct, setup.backend_echo), (Via::Proxy, addr)] {
        let trips = opts.round_trips;
        let r = tokio::task::spawn_blocking(move || ping_pong(to, PING_WARMUP, trips))
            .await
            .map_err(|e| anyhow!("the ping-pong thread: {e}"))
            .and_then(|r| r);
        match r {
            Ok(mut samples) => {
                let st = Stats::of(&mut samples);
                s.lines[5].set(via, Cell::Value(us(st.p50)));
                s.lines[6].set(via, Cell::Value(us(st.p99)));
            }
            Err(e) => {
                s.failure(5, via, &e);
                s.lines[6].set(via, Cell::Failed);
            }
        }
    }
    // One bulk stream, direct and across, with both proxies' CPU.
    let mut cpu = Vec::new();
    match (&setup.iperf3, setup.iperf, iperf) {
        (Some(iperf3), Some(route), Some(across)) => {
            for (via, to) in [(Via::Direct, route.direct), (Via::Proxy, across)] {
                let args = iperf3_tcp_args(to, opts.seconds, 1);
                let limit = Duration::from_secs(opts.seconds + 60);
                let middle = (via == Via::Proxy).then_some(far_proxy.pid);
                let ((r, near), far) = with_cpu(
                    middle,
                    with_cpu(
                        (via == Via::Proxy).then_some(setup.proxy_pid),
                        run_tool(iperf3, &args, limit),
                    ),
                )
                .await;
                if via == Via::Proxy {
                    cpu.push(format!(
                        "node 1's proxy {}, node 2's {}",
                        near.map_or("?".into(), |c| format!("{c:.2}")),
                        far.map_or("?".into(), |c| format!("{c:.2}"))
                    ));
                }
                match r.and_then(|out| iperf3_tcp_rate(&out)) {
                    Ok(bps) => s.lines[7].set(via, Cell::Value(bps / 1e9)),
                    Err(e) => s.failure(7, via, &e),
                }
            }
        }
        _ => {
            s.lines[7].set(Via::Direct, Cell::Absent("no iperf3"));
            s.lines[7].set(Via::Proxy, Cell::Absent("no iperf3"));
        }
    }
    let pids = [setup.proxy_pid, far_proxy.pid];
    let f = hold_idle(addr, n, opts.idle, &pids, setup.echo_pid).await;
    s.lines[4].set(
        Via::Proxy,
        Cell::Value(f.opened as f64 / f.open_wall.as_secs_f64().max(1e-9)),
    );
    s.lines[0].set(Via::Proxy, Cell::Value(f.held as f64));
    for (i, with) in f.with.iter().enumerate() {
        if let Some(fds) = with.fds {
            s.lines[1 + i].set(Via::Proxy, Cell::Value(fds as f64));
        }
    }
    let grown: f64 = f
        .with
        .iter()
        .zip(&f.before)
        .map(|(w, b)| w.rss - b.rss)
        .sum();
    s.lines[3].set(
        Via::Proxy,
        Cell::Value(grown * 1024.0 / f.held.max(1) as f64),
    );
    let tunnels = match http_get(setup.metrics, "/metrics", IO_TIMEOUT).await {
        Ok(text) => format!(
            "{}",
            metric_sum(&text, "wasmkube_proxy_tunnels_total{direction=\"out\"}")
        ),
        Err(e) => format!("? ({e:#})"),
    };
    let usage = |i: usize| match (f.before.get(i), f.with.get(i)) {
        (Some(b), Some(w)) => format!(
            "RSS {:.1} → {:.1} MiB, open files {} → {}",
            b.rss,
            w.rss,
            b.fds.map_or("?".into(), |x| x.to_string()),
            w.fds.map_or("?".into(), |x| x.to_string())
        ),
        _ => "?".into(),
    };
    s.notes.push(format!(
        "{} of {n} opened in {:.1} s, {} still open after the idle time; node 1's proxy: {}; node 2's: {}; tunnel connections node 1 opened: {tunnels}{}",
        f.opened,
        f.open_wall.as_secs_f64(),
        f.held,
        usage(0),
        usage(1),
        f.first_error
            .map_or(String::new(), |e| format!("; first failure: {e}"))
    ));
    if !cpu.is_empty() {
        s.notes
            .push(format!("bulk TCP across: CPU (cores) {}", cpu.join("; ")));
    }
    s.notes.push(log_summary("node 2's proxy", &far_proxy.log));
    far_proxy.stop().await;
    s
}

/// The second node (its Node with an InternalIP, its proxy child) and a NodePort
/// Service whose endpoint runs there: the far proxy and the NodePort on node 1.
/// What the `across` row reaches on node 1: the far proxy, the echo and (with iperf3)
/// the iperf3 NodePorts.
struct Across {
    far_proxy: Proc,
    echo: SocketAddr,
    iperf: Option<SocketAddr>,
}

async fn across_setup(setup: &Setup, dir: &Path, kubeconfig: &Path) -> Result<Across> {
    let nodes: Api<Node> = Api::all(setup.client.clone());
    let node: Node = object(json!({
        "metadata": {"name": FAR_NODE, "labels": {"kubernetes.io/hostname": FAR_NODE}},
    }))?;
    nodes
        .create(&PostParams::default(), &node)
        .await
        .context("create the second Node")?;
    let address = json!({"status": {"addresses": [
        {"type": "InternalIP", "address": FAR_NODE_IP.to_string()}
    ]}});
    nodes
        .patch_status(FAR_NODE, &PatchParams::default(), &Patch::Merge(address))
        .await
        .context("set the second Node's address")?;
    let credentials = write_credentials(dir, FAR_NODE, FAR_NODE_IP)?;
    let mut ports = vec![("echo", ECHO_PORT, setup.backend_echo.port())];
    if let Some(iperf) = &setup.iperf {
        ports.push(("iperf", IPERF_PORT, iperf.direct.port()));
    }
    let svc = create_service_with_endpoint(
        &setup.client,
        FAR_SERVICE,
        "NodePort",
        FAR_NODE,
        ports
            .iter()
            .map(|(name, port, target)| json!({"name": name, "protocol": "TCP", "port": port, "targetPort": target}))
            .collect(),
        ports
            .iter()
            .map(|(name, _, target)| json!({"name": name, "protocol": "TCP", "port": target}))
            .collect(),
    )
    .await?;
    let node_port = |name: &str| -> Result<SocketAddr> {
        let port = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .and_then(|ps| ps.iter().find(|p| p.name.as_deref() == Some(name)))
            .and_then(|p| p.node_port)
            .with_context(|| format!("port {name} got no nodePort"))?;
        let port = u16::try_from(port).context("nodePort")?;
        Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
    };
    let addr = node_port("echo")?;
    let iperf = match setup.iperf {
        Some(_) => Some(node_port("iperf")?),
        None => None,
    };
    let (mut proxy, _) =
        start_proxy(dir, kubeconfig, (FAR_NODE, FAR_NODE_IP, &credentials), addr).await?;
    // Until node 1's proxy has seen node 2's tunnel port it reaches the endpoint
    // directly (the pod range is routable on one host): wait for a tunnelled one.
    let tunnelled = async || {
        let Ok(text) = http_get(setup.metrics, "/metrics", IO_TIMEOUT).await else {
            return 0.0;
        };
        metric_sum(
            &text,
            "wasmkube_proxy_tunnel_streams_total{direction=\"out\"}",
        )
    };
    let before = tunnelled().await;
    proxy
        .wait_ready("tunnelling from node 1", async || {
            echo_connect(addr).await.is_ok() && tunnelled().await > before
        })
        .await?;
    println!(
        "  node 2's proxy pid {} (log {}); node 1's NodePort {addr}",
        proxy.pid,
        proxy.log.display()
    );
    Ok(Across {
        far_proxy: proxy,
        echo: addr,
        iperf,
    })
}

async fn services_row(opts: &Opts, setup: &Setup) -> Section {
    let n = opts.services;
    let mut s = Section::new(format!(
        "the proxy's RSS with {n} Services (ClusterIP, one TCP port, one endpoint each) besides the bench Service; created, deleted, and created and deleted once more"
    ));
    s.lines
        .push(Line::new("Services listened on", "", 0, Better::Higher).goal(Goal::Report));
    s.lines
        .push(Line::new("RSS before", "MiB", 1, Better::Lower).goal(Goal::Report));
    s.lines.push(
        Line::new(format!("RSS with {n} Services"), "MiB", 1, Better::Lower).goal(Goal::Report),
    );
    s.lines
        .push(Line::new("RSS per Service", "KiB", 1, Better::Lower).goal(Goal::Report));
    s.lines
        .push(Line::new("RSS per Service, 2nd round", "KiB", 1, Better::Lower).goal(Goal::Report));
    for l in &mut s.lines {
        l.set(Via::Direct, Cell::Absent("—"));
        l.set(Via::Haproxy, Cell::Absent("—"));
    }
    for round in 0..2 {
        let f = match services_measure(n, setup).await {
            Ok(f) => f,
            Err(e) => {
                s.failure(if round == 0 { 2 } else { 4 }, Via::Proxy, &e);
                break;
            }
        };
        let per_service = (f.rss_with - f.rss_before) * 1024.0 / n as f64;
        if round == 0 {
            s.lines[0].set(Via::Proxy, Cell::Value(f.listening as f64));
            s.lines[1].set(Via::Proxy, Cell::Value(f.rss_before));
            s.lines[2].set(Via::Proxy, Cell::Value(f.rss_with));
            s.lines[3].set(Via::Proxy, Cell::Value(per_service));
        } else {
            s.lines[4].set(Via::Proxy, Cell::Value(per_service));
        }
        s.notes.push(format!(
            "round {}: {n} Services + EndpointSlices created in {:.1} s ({CREATE_CONCURRENCY} at once); the proxy listened on {} of them {:.1} s after the first create; RSS {:.1} → {:.1} MiB (peak so far {:.1} MiB); {} of {} sampled ClusterIPs forwarded to the echo server{}",
            round + 1,
            f.create_wall.as_secs_f64(),
            f.listening,
            f.to_listening.as_secs_f64(),
            f.rss_before,
            f.rss_with,
            f.hwm,
            f.sample_ok,
            f.sampled,
            f.sample_error
                .map_or(String::new(), |e| format!(" (first failure: {e})"))
        ));
        match f.teardown {
            Ok((d, rss)) => s.notes.push(format!(
                "round {}: deleted: listeners closed {:.1} s after the first delete; RSS then {rss:.1} MiB",
                round + 1,
                d.as_secs_f64()
            )),
            Err(e) => {
                s.notes
                    .push(format!("round {}: deleting them failed: {e}", round + 1));
                break;
            }
        }
    }
    s.notes.push(
        "RSS is read 2 s after the proxy listens on them all; the 2nd round shows what a Service costs once the memory the first round freed is kept for reuse (the allocator and the runtime's I/O slabs hold on to it, so RSS stays up after a delete): growth there would be a leak".into(),
    );
    s
}

struct ServicesFigures {
    listening: usize,
    rss_before: f64,
    rss_with: f64,
    hwm: f64,
    create_wall: Duration,
    to_listening: Duration,
    sampled: usize,
    sample_ok: usize,
    sample_error: Option<String>,
    /// How long deleting them took until the proxy closed their listeners, and its RSS
    /// then; or why that failed.
    teardown: Result<(Duration, f64), String>,
}

async fn listeners(metrics: SocketAddr) -> Result<f64> {
    let text = http_get(metrics, "/metrics", IO_TIMEOUT).await?;
    Ok(metric_sum(&text, "wasmkube_proxy_listeners"))
}

async fn services_measure(n: usize, setup: &Setup) -> Result<ServicesFigures> {
    let pid = setup.proxy_pid;
    let base = listeners(setup.metrics).await?;
    let rss_before = rss_or_nan(pid);
    let started = Instant::now();
    let backend_port = setup.backend_echo.port();
    let results: Vec<Result<IpAddr>> = futures::stream::iter(0..n)
        .map(|i| {
            let client = setup.client.clone();
            async move {
                let svc = create_service_with_endpoint(
                    &client,
                    &format!("scale-{i}"),
                    "ClusterIP",
                    NODE,
                    vec![json!({"name": "echo", "protocol": "TCP", "port": SCALE_PORT})],
                    vec![json!({"name": "echo", "protocol": "TCP", "port": backend_port})],
                )
                .await?;
                cluster_ip_of(&svc)
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .collect()
        .await;
    let create_wall = started.elapsed();
    let ips: Vec<IpAddr> = results.into_iter().collect::<Result<_>>()?;
    let deadline = Duration::from_secs(120).max(Duration::from_millis(300) * n as u32);
    let mut listening = 0.0;
    loop {
        if let Ok(l) = listeners(setup.metrics).await {
            listening = l - base;
            if listening >= n as f64 {
                break;
            }
        }
        if started.elapsed() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let to_listening = started.elapsed();
    tokio::time::sleep(SETTLE).await;
    let rss_with = rss_or_nan(pid);
    let hwm = status_mib(pid, "VmHWM:").unwrap_or(f64::NAN);
    let step = (ips.len() / 20).max(1);
    let sample: Vec<IpAddr> = ips.iter().step_by(step).copied().collect();
    let mut sample_ok = 0;
    let mut sample_error = None;
    for ip in &sample {
        match echo_connect(SocketAddr::new(*ip, SCALE_PORT)).await {
            Ok(_) => sample_ok += 1,
            Err(e) => {
                sample_error.get_or_insert_with(|| format!("{ip}:{SCALE_PORT}: {e:#}"));
            }
        }
    }
    let teardown = delete_scale_services(n, setup, base)
        .await
        .map(|d| (d, rss_or_nan(pid)))
        .map_err(|e| format!("{e:#}"));
    Ok(ServicesFigures {
        listening: listening.max(0.0) as usize,
        rss_before,
        rss_with,
        hwm,
        create_wall,
        to_listening,
        sampled: sample.len(),
        sample_ok,
        sample_error,
        teardown,
    })
}

/// Deletes the services row's Services and slices and waits until the proxy listens on
/// `base` frontends again (their listeners are file descriptors the idle row needs).
async fn delete_scale_services(n: usize, setup: &Setup, base: f64) -> Result<Duration> {
    let started = Instant::now();
    let services: Api<Service> = Api::namespaced(setup.client.clone(), NAMESPACE);
    let slices: Api<EndpointSlice> = Api::namespaced(setup.client.clone(), NAMESPACE);
    let results: Vec<Result<()>> = futures::stream::iter(0..n)
        .map(|i| {
            let (services, slices) = (services.clone(), slices.clone());
            async move {
                let name = format!("scale-{i}");
                let dp = kube::api::DeleteParams::default();
                services
                    .delete(&name, &dp)
                    .await
                    .with_context(|| format!("delete Service {name}"))?;
                slices
                    .delete(&format!("{name}-bench"), &dp)
                    .await
                    .with_context(|| format!("delete the EndpointSlice of {name}"))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    let deadline = Duration::from_secs(120);
    loop {
        if listeners(setup.metrics).await.is_ok_and(|l| l <= base) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > deadline {
            bail!("the proxy still listens for deleted Services after {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
