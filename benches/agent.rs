//! Node agent benchmark (issues 5 and 6, "Speed and size"): not a test, it prints
//! figures next to the goals and what they are compared with, and never fails on them.
//!
//! Six parts, each of which can be run alone (`WASMKUBE_BENCH_SECTIONS`):
//! 1. **burst**: the real `wasmkube up` binary (control plane + one agent, with its
//!    managed etcd). The module is cached by a warm-up pod first. Then, as the baseline,
//!    N creates of pods nobody schedules (the API round trip alone); then a burst of N
//!    long-running hello pods (`HELLO_SLEEP=inf`, restartPolicy Always) left to the
//!    scheduler, and another with `spec.nodeName` preset (no scheduling). Each pod's
//!    times come from this client's clock: request sent, create returned, first seen by
//!    a watch, first seen bound, first seen Running with its container running and
//!    Ready. The server's own request counters (/metrics) give the API calls per pod.
//! 2. **instance**: in this process through `wasmkube_runtime::wasm`: the first compile
//!    of a module, a load from the on-disk artifact by a new engine, and N instance
//!    runs (start to exit) of a module whose `_start` returns at once and of hello;
//!    then N sleeping hello instances at once (their start time and RSS: the wasm
//!    layer's share of a pod).
//! 3. **rss**: a `wasmkube server` (on an etcd this process manages) and a separate
//!    `wasmkube agent` process: VmRSS idle after registration, and after N hello pods
//!    run on it, with the memory regions (/proc/PID/smaps) that grew.
//! 4. **ready** (issue 6): on `wasmkube up`, with http-echo cached by a warm-up pod, a
//!    burst of N http-echo pods (`spec.nodeName` preset) with a readinessProbe (httpGet
//!    `/` on 8080, periodSeconds 1, no initial delay): creation → Ready (Ready=True, the
//!    container ready) per pod, from this client's clock; and, as the baseline in the
//!    same run, the same burst without a probe (creation → Running and Ready).
//! 5. **idle** (issue 6): on a separate `wasmkube agent` (as in rss), many idle
//!    http-echo pods at once: the agent's RSS before (module loaded by a warm-up pod,
//!    then deleted) and with them, the growth per pod, the regions that grew, open
//!    files, CPU while nothing changes, and whether a sample of the pods answers
//!    `GET /` on status.podIP:8080 as itself.
//! 6. **neighbours** (issue 6): on `wasmkube up`, one http-echo pod; sequential
//!    `GET /` to its podIP:8080 (a new connection each, and on one kept-alive
//!    connection) with no other pod (the baseline), next to four spinner pods with no
//!    limits, and next to four with `limits.cpu: 250m` each: p50/p99 per phase, the
//!    ratio to the baseline, and the `up` process's CPU (the spinners run inside it).
//!    Spinners are Running before the requests, and deleted (and gone) after.
//!
//! Every node gets `--max-pods` of at least its run's pods and a pod range
//! (`--node-cidr-mask-size`) that holds them: past a /24's 253 addresses pods would
//! share the node's address, where servers' ports collide.
//!
//! `cargo bench --bench agent` runs the full sizes in release mode; for a debug build
//! (which builds the debug `wasmkube` binary too),
//! `WASMKUBE_BENCH_PODS=20 WASMKUBE_BENCH_IDLE_PODS=50 WASMKUBE_BENCH_REQUESTS=200
//! cargo test --bench agent`.
//!
//! Environment knobs:
//! - `WASMKUBE_BENCH_PODS` (500): pods per burst (burst, ready) and for the RSS figure;
//! - `WASMKUBE_BENCH_IDLE_PODS` (1000; the issue aims for 5000): idle http-echo pods at
//!   once in the idle section (the agent's `--max-pods` follows);
//! - `WASMKUBE_BENCH_REQUESTS` (1000): sequential requests per variant and phase in the
//!   neighbours section;
//! - `WASMKUBE_BENCH_CLIENTS` (16): concurrent creating clients;
//! - `WASMKUBE_BENCH_INSTANCE_RUNS` (1000): timed instance runs per module;
//! - `WASMKUBE_BENCH_SECTIONS` (`instance,burst,rss,ready,idle,neighbours`): which parts
//!   run;
//! - `WASMKUBE_BENCH_TIMEOUT_SECS` (300): how long a burst may take to be all Running;
//! - `WASMKUBE_BENCH_SERVER_ARGS`: extra arguments for `wasmkube up` and `server` (e.g.
//!   `--max-workload-requests-inflight 0` to compare without flow control);
//! - `WASMKUBE_BENCH_IDLE_SECS` (5): how long an agent idles before its RSS is read;
//! - `WASMKUBE_BENCH_STEADY_SECS` (10): how long running pods are watched for the API
//!   requests and CPU they cost while nothing changes;
//! - `WASMKUBE_BENCH_KEEP` (unset): keep the temp dir (process logs);
//! - `WASMKUBE_BENCH_BIN` (unset): the `wasmkube` binary to start instead of this
//!   build's (an A/B against a saved build).

// Not every shared helper is used by this bench (the others need the rest).
#[allow(dead_code)]
mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wasmkube_control::etcd_process::ManagedEtcd;
use wasmkube_runtime::fetch::{ModuleStore, PullPolicy, StoreOptions};
use wasmkube_runtime::wasm::{EngineOptions, Exit, OutputSink, Program, RunSpec, WasmEngine};

use common::{
    build, create_namespace, env_flag, env_list, env_number_or, http_get, in_temp_dir, kube_client,
    kube_config, load_average, ms, open_files_limit, rss_mib, server_args_from_env, start_server,
    status_field, status_mib, us, wait_kubeconfig, CpuMeter, PhaseCpu, Proc, Server, Stats,
    START_DEADLINE,
};

/// The namespace every benchmark pod lives in.
const NAMESPACE: &str = "agent-bench";
/// The node of `wasmkube up`.
const UP_NODE: &str = "bench-node";
/// The node of the separate agent process.
const AGENT_NODE: &str = "bench-agent";
/// A scheduler nobody runs: the API baseline's pods stay unbound, so nothing but the
/// API server and etcd works on them.
const NO_SCHEDULER: &str = "bench-nobody";
/// How long deleting a run's pods (and the agent removing their files) may take.
const TEARDOWN_DEADLINE: Duration = Duration::from_secs(180);
/// Untimed instance runs before the timed ones (first touches of pool memory).
const INSTANCE_WARMUP_RUNS: usize = 20;
/// The engine's instance capacity, as the agent sizes it (`max_pods` 1000, × 2).
const ENGINE_INSTANCES: u32 = 2000;
/// Spinner pods next to the http-echo pod in the neighbours section (the issue's four).
const SPINNERS: usize = 4;
/// The spinners' `limits.cpu` in the neighbours section's last phase.
const SPINNER_CPU_LIMIT: &str = "250m";
/// Untimed requests before the timed ones (connection paths, the guest's first buffers).
const REQUEST_WARMUP: usize = 20;
/// How long one HTTP request to a pod may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the `up` process's CPU is read in each neighbours phase before the requests
/// (what the spinners, or nothing, take; too short a window is all /proc tick noise).
const CPU_WINDOW: Duration = Duration::from_secs(2);
/// How many of the idle pods are asked for a page.
const IDLE_HTTP_SAMPLE: usize = 100;
/// A pause for status writes and first log lines to settle before memory is read.
const SETTLE: Duration = Duration::from_secs(2);
/// RSS of k3s' agent, the figure the issue compares with.
const K3S_AGENT_RSS_MB: f64 = 275.0;

/// The smallest WASI command: a core module with no imports whose `_start` returns.
/// (type section: `() -> ()`; one function; export `_start`; body: `end`.)
const EXIT_AT_ONCE_WASM: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
    0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type section
    0x03, 0x02, 0x01, 0x00, // function section
    0x07, 0x0a, 0x01, 0x06, b'_', b's', b't', b'a', b'r', b't', 0x00, 0x00, // exports
    0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // code section
];

// ---------------------------------------------------------------------------------
// Options

/// Sizes and switches from the environment.
#[derive(Debug, Clone)]
struct Opts {
    pods: usize,
    clients: usize,
    instance_runs: usize,
    /// Idle http-echo pods at once on the separate agent (the `idle` section).
    idle_pods: usize,
    /// Sequential HTTP requests per variant and phase (the `neighbours` section).
    requests: usize,
    burst: bool,
    instance: bool,
    rss: bool,
    ready: bool,
    idle_http: bool,
    neighbours: bool,
    timeout: Duration,
    idle: Duration,
    steady: Duration,
    keep: bool,
}

impl Opts {
    fn from_env() -> Result<Opts> {
        let num = env_number_or::<usize>;
        let sections = env_list(
            "WASMKUBE_BENCH_SECTIONS",
            "instance,burst,rss,ready,idle,neighbours",
        );
        let has = |s: &str| sections.iter().any(|x| x == s);
        let opts = Opts {
            pods: num("WASMKUBE_BENCH_PODS", 500)?,
            clients: num("WASMKUBE_BENCH_CLIENTS", 16)?,
            instance_runs: num("WASMKUBE_BENCH_INSTANCE_RUNS", 1000)?,
            idle_pods: num("WASMKUBE_BENCH_IDLE_PODS", 1000)?,
            requests: num("WASMKUBE_BENCH_REQUESTS", 1000)?,
            burst: has("burst"),
            instance: has("instance"),
            rss: has("rss"),
            ready: has("ready"),
            idle_http: has("idle"),
            neighbours: has("neighbours"),
            timeout: Duration::from_secs(num("WASMKUBE_BENCH_TIMEOUT_SECS", 300)? as u64),
            idle: Duration::from_secs(num("WASMKUBE_BENCH_IDLE_SECS", 5)? as u64),
            steady: Duration::from_secs(num("WASMKUBE_BENCH_STEADY_SECS", 10)? as u64),
            keep: env_flag("WASMKUBE_BENCH_KEEP"),
        };
        if opts.pods == 0
            || opts.clients == 0
            || opts.instance_runs == 0
            || opts.idle_pods == 0
            || opts.requests == 0
        {
            bail!("WASMKUBE_BENCH_PODS, _CLIENTS, _INSTANCE_RUNS, _IDLE_PODS and _REQUESTS must be at least 1");
        }
        Ok(opts)
    }
}

// ---------------------------------------------------------------------------------
// /proc readings

/// A process's open file descriptors by kind (`socket`, `file`, `pipe`,
/// `anon_inode:[eventpoll]`…), most first; None if /proc does not show them.
fn open_fds(pid: u32) -> Option<Vec<(String, usize)>> {
    let mut kinds: HashMap<String, usize> = HashMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        // An fd closed between the listing and the readlink is simply not counted.
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        let kind = if target.starts_with('/') {
            "file".to_string()
        } else if let Some((kind, _)) = target.split_once(":[") {
            kind.to_string()
        } else {
            target.into_owned()
        };
        *kinds.entry(kind).or_default() += 1;
    }
    let mut kinds: Vec<(String, usize)> = kinds.into_iter().collect();
    kinds.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Some(kinds)
}

/// "1183 (socket 600, file 580, …)".
fn describe_fds(fds: &Option<Vec<(String, usize)>>) -> String {
    match fds {
        None => "?".to_string(),
        Some(kinds) => {
            let parts: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
            format!("{} ({})", fd_total(fds), parts.join(", "))
        }
    }
}

fn fd_total(fds: &Option<Vec<(String, usize)>>) -> usize {
    fds.as_ref().map_or(0, |k| k.iter().map(|(_, n)| n).sum())
}

/// A run of adjacent mappings of one process, anonymous or of one file. wasmtime's
/// pools (linear memories, tables, fiber stacks) are each one reservation that
/// permission changes split into many mappings; merged, each shows as one region.
#[derive(Debug, Clone)]
struct Region {
    start: u64,
    end: u64,
    rss_kib: u64,
    /// The file, `[heap]`/`[stack]`…, or empty for anonymous memory.
    name: String,
}

impl Region {
    fn describe(&self) -> String {
        let virt = (self.end - self.start) as f64;
        let size = if virt >= (1u64 << 40) as f64 {
            format!("{:.1} TiB", virt / (1u64 << 40) as f64)
        } else if virt >= (1u64 << 30) as f64 {
            format!("{:.1} GiB", virt / (1u64 << 30) as f64)
        } else {
            format!("{:.1} MiB", virt / (1u64 << 20) as f64)
        };
        let name = if self.name.is_empty() {
            "anonymous"
        } else {
            self.name.rsplit('/').next().unwrap_or(&self.name)
        };
        format!("{name} {size} at {:#x}", self.start)
    }
}

/// The process's memory as [`Region`]s, from /proc/<pid>/smaps.
fn regions(pid: u32) -> Result<Vec<Region>> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .with_context(|| format!("read /proc/{pid}/smaps"))?;
    let mut out: Vec<Region> = Vec::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if let Some((a, b)) = first.split_once('-') {
            let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16))
            else {
                continue;
            };
            // perms, offset, dev, inode, then the name (which may contain spaces).
            let name = words.skip(4).collect::<Vec<_>>().join(" ");
            match out.last_mut() {
                Some(last) if last.end == start && last.name == name => last.end = end,
                _ => out.push(Region {
                    start,
                    end,
                    rss_kib: 0,
                    name,
                }),
            }
        } else if first == "Rss:" {
            if let (Some(kb), Some(last)) = (
                words.next().and_then(|w| w.parse::<u64>().ok()),
                out.last_mut(),
            ) {
                last.rss_kib += kb;
            }
        }
    }
    Ok(out)
}

/// The regions whose RSS grew most from `before` to `after` (a region matched by its
/// start address), with their RSS then and now in KiB.
fn grown_regions(before: &[Region], after: &[Region], n: usize) -> Vec<(Region, u64, u64)> {
    let mut grown: Vec<(Region, u64, u64)> = after
        .iter()
        .map(|r| {
            let was = before
                .iter()
                .find(|b| b.start == r.start && b.name == r.name)
                .map_or(0, |b| b.rss_kib);
            (r.clone(), was, r.rss_kib)
        })
        .filter(|(_, was, now)| now > was)
        .collect();
    grown.sort_by_key(|(_, was, now)| std::cmp::Reverse(now - was));
    grown.truncate(n);
    grown
}

/// RSS in MiB of file-backed and anonymous regions.
fn rss_split(regions: &[Region]) -> (f64, f64) {
    let file: u64 = regions
        .iter()
        .filter(|r| r.name.starts_with('/'))
        .map(|r| r.rss_kib)
        .sum();
    let all: u64 = regions.iter().map(|r| r.rss_kib).sum();
    (file as f64 / 1024.0, (all - file) as f64 / 1024.0)
}

// ---------------------------------------------------------------------------------
// Processes

/// Polls until node `name` is Ready; returns how long that took.
async fn wait_node_ready(client: &Client, name: &str, proc: &mut Proc) -> Result<Duration> {
    let nodes: Api<Node> = Api::all(client.clone());
    let started = Instant::now();
    loop {
        if let Ok(Some(node)) = nodes.get_opt(name).await {
            let ready = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if ready {
                return Ok(started.elapsed());
            }
        }
        proc.check_alive()?;
        if started.elapsed() > START_DEADLINE {
            bail!("node {name} was not Ready within {START_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates the bench namespace and waits for its `default` ServiceAccount (made by the
/// controllers), which pod creates need.
async fn prepare_namespace(client: &Client) -> Result<()> {
    create_namespace(client, NAMESPACE).await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), NAMESPACE);
    let started = Instant::now();
    while accounts.get_opt("default").await?.is_none() {
        if started.elapsed() > START_DEADLINE {
            bail!("no default ServiceAccount in {NAMESPACE} within {START_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Clusters

/// The pods a node takes for a run of `pods` pods at once: the agent's default (1000),
/// or more.
fn max_pods_for(pods: usize) -> usize {
    pods.max(1000)
}

/// The `--node-cidr-mask-size` whose pod range holds `max_pods` pod IPs. The default /24
/// holds 253: past that a pod gets no IP of its own and shares the node's address, where
/// two servers' ports collide.
fn node_cidr_mask_for(max_pods: usize) -> u8 {
    let mut mask = 24u8;
    // A range's network, first and broadcast addresses are never handed out.
    while mask > 12 && (1usize << (32 - mask)) - 3 < max_pods {
        mask -= 1;
    }
    mask
}

/// Starts `wasmkube up` (data in `dir/up`, log `dir/up.log`) for one node, [`UP_NODE`],
/// taking `max_pods` pods. Returns the process and its data dir.
fn spawn_up(dir: &Path, max_pods: usize) -> Result<(Proc, PathBuf)> {
    let data_dir = dir.join("up");
    std::fs::create_dir_all(&data_dir).context("create the up data dir")?;
    let args: Vec<String> = vec![
        "up".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--node-name".into(),
        UP_NODE.into(),
        "--max-pods".into(),
        max_pods.to_string(),
        "--node-cidr-mask-size".into(),
        node_cidr_mask_for(max_pods).to_string(),
    ];
    let args: Vec<String> = args.into_iter().chain(server_args_from_env()).collect();
    let up = Proc::wasmkube("wasmkube up", &args, &dir.join("up.log"))?;
    println!("  wasmkube up: pid {} (log {})", up.pid, up.log.display());
    Ok((up, data_dir))
}

/// Waits until `up` serves, its node is Ready and the bench namespace exists. Returns
/// its client config and the processes whose CPU each phase reports (`up` and the etcd
/// it manages).
async fn connect_up(up: &mut Proc, data_dir: &Path) -> Result<(Config, Vec<(String, u32)>)> {
    let started = Instant::now();
    wait_kubeconfig(up, &data_dir.join("kubeconfig")).await?;
    up.note_descendants();
    let config = kube_config(&data_dir.join("kubeconfig")).await?;
    let client = kube_client(&config)?;
    wait_node_ready(&client, UP_NODE, up).await?;
    println!(
        "  node {UP_NODE} Ready {:.1} s after start",
        started.elapsed().as_secs_f64()
    );
    prepare_namespace(&client).await?;
    let mut cpu_of = vec![("wasmkube up".to_string(), up.pid)];
    for pid in &up.descendants {
        cpu_of.push((format!("etcd (pid {pid})"), *pid));
    }
    Ok((config, cpu_of))
}

/// A `wasmkube server` on an etcd this process manages, and a separate `wasmkube agent`
/// process joined to it as node [`AGENT_NODE`]: the agent's own figures (RSS, CPU,
/// open files) are not mixed with the control plane's.
struct SeparateAgent {
    etcd: ManagedEtcd,
    server: Proc,
    agent: Proc,
    agent_dir: PathBuf,
    config: Config,
    client: Client,
    max_pods: usize,
}

impl SeparateAgent {
    /// Starts the three; the agent may not have registered yet (see [`wait_node_ready`]).
    async fn start(dir: &Path, max_pods: usize) -> Result<SeparateAgent> {
        let etcd = ManagedEtcd::start(&dir.join("etcd"))
            .await
            .context("start etcd")?;
        let args: Vec<String> = vec![
            "--etcd-servers".into(),
            etcd.client_url(),
            "--node-cidr-mask-size".into(),
            node_cidr_mask_for(max_pods).to_string(),
        ];
        let Server {
            proc: server,
            data_dir: server_dir,
            config,
        } = start_server(dir, &args).await?;
        let client = kube_client(&config)?;
        let url = config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_string();
        let token = std::fs::read_to_string(server_dir.join("join-token"))
            .context("read the server's join token")?;
        let agent_dir = dir.join("agent");
        let args: Vec<String> = vec![
            "agent".into(),
            "--server".into(),
            url,
            "--token".into(),
            token.trim().to_string(),
            "--ca-cert".into(),
            server_dir.join("pki/ca.crt").display().to_string(),
            "--node-name".into(),
            AGENT_NODE.into(),
            "--data-dir".into(),
            agent_dir.display().to_string(),
            "--kubelet-port".into(),
            "0".into(),
            "--max-pods".into(),
            max_pods.to_string(),
        ];
        let agent = Proc::wasmkube("wasmkube agent", &args, &dir.join("agent.log"))?;
        println!(
            "  wasmkube agent: pid {} (log {})",
            agent.pid,
            agent.log.display()
        );
        Ok(SeparateAgent {
            etcd,
            server,
            agent,
            agent_dir,
            config,
            client,
            max_pods,
        })
    }

    /// The processes whose CPU each phase reports.
    fn cpu_of(&self) -> Vec<(String, u32)> {
        vec![
            ("agent".to_string(), self.agent.pid),
            ("server".to_string(), self.server.pid),
        ]
    }

    async fn stop(self) {
        self.agent.stop().await;
        self.server.stop().await;
        self.etcd.stop().await;
    }
}

// ---------------------------------------------------------------------------------
// Sample modules

/// The path of a sample module, building the samples if it is missing.
fn sample(name: &str) -> Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join(format!("samples/target/modules/{name}.wasm"));
    if path.exists() {
        return Ok(path);
    }
    println!("building the sample modules (scripts/build-samples.sh)…");
    let out = std::process::Command::new("bash")
        .arg(root.join("scripts/build-samples.sh"))
        .env("WASMKUBE_SAMPLES_INSTALL", "")
        .current_dir(root)
        .output()
        .context("run scripts/build-samples.sh")?;
    if !out.status.success() {
        bail!(
            "scripts/build-samples.sh failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if !path.exists() {
        bail!("no sample module {}", path.display());
    }
    Ok(path)
}

// ---------------------------------------------------------------------------------
// Part 2: instance starts in process

/// Guest output, counted and dropped.
#[derive(Default)]
struct CountingSink(AtomicUsize);

impl OutputSink for CountingSink {
    fn write(&self, bytes: &[u8]) {
        self.0.fetch_add(bytes.len(), Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
struct InstanceModule {
    name: String,
    size: u64,
    compile: Duration,
    from_disk: Duration,
    from_memory: Duration,
    runs: Stats,
    output_bytes_per_run: f64,
    failures: usize,
}

#[derive(Debug, Default)]
struct InstanceFigures {
    engine_new: Duration,
    pooling: bool,
    modules: Vec<InstanceModule>,
    sleeping: Option<SleepingFigures>,
}

/// Many long-running hello instances at once in this process.
#[derive(Debug, Default)]
struct SleepingFigures {
    instances: usize,
    /// Spawned → every instance has written its greeting.
    all_started: Duration,
    rss_before: f64,
    rss_running: f64,
    rss_after: f64,
}

/// Counts write calls: hello writes its greeting in one.
#[derive(Default)]
struct WriteCounter(AtomicUsize);

impl OutputSink for WriteCounter {
    fn write(&self, _bytes: &[u8]) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Starts `n` hello instances with `HELLO_SLEEP=inf` at once, waits until each has
/// printed, reads this process's RSS, then drops them all.
async fn sleeping_instances(hello: &Program, n: usize) -> Result<SleepingFigures> {
    let rss_before = status_mib(std::process::id(), "VmRSS:")?;
    let writes = Arc::new(WriteCounter::default());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let program = hello.clone();
        let writes = writes.clone();
        tasks.spawn(async move {
            let mut spec = RunSpec::new(vec![format!("hello-{i}")], writes.clone(), writes);
            spec.env = vec![("HELLO_SLEEP".into(), "inf".into())];
            program.run(spec, Default::default()).await
        });
    }
    let deadline = Instant::now() + START_DEADLINE;
    while writes.0.load(Ordering::Relaxed) < n {
        if let Some(Ok(exit)) = tasks.try_join_next() {
            bail!("a sleeping hello instance ended: {exit:?}");
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} sleeping instances printed within {START_DEADLINE:?}",
                writes.0.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let all_started = started.elapsed();
    let rss_running = status_mib(std::process::id(), "VmRSS:")?;
    tasks.shutdown().await;
    let rss_after = status_mib(std::process::id(), "VmRSS:")?;
    Ok(SleepingFigures {
        instances: n,
        all_started,
        rss_before,
        rss_running,
        rss_after,
    })
}

async fn instance_section(opts: &Opts, dir: &Path, hello: &Path) -> Result<InstanceFigures> {
    let empty_path = dir.join("exit-at-once.wasm");
    std::fs::write(&empty_path, EXIT_AT_ONCE_WASM).context("write the exit-at-once module")?;
    // The agent's own fetcher: it gives each module its real digest.
    let store = ModuleStore::new(dir.join("modules"), StoreOptions::default())
        .context("open a module store")?;
    let cache = dir.join("compiled");
    let mut figures = InstanceFigures::default();

    let started = Instant::now();
    let engine = WasmEngine::new(EngineOptions::new(&cache, ENGINE_INSTANCES))?;
    figures.engine_new = started.elapsed();
    figures.pooling = engine.pooling();
    let mut fetched = Vec::new();
    for (name, path) in [("exit-at-once", empty_path.as_path()), ("hello", hello)] {
        let image = format!("file://{}", path.display());
        let f = store
            .fetch(&image, PullPolicy::IfNotPresent, &[])
            .await
            .with_context(|| format!("fetch {image}"))?;
        let t = Instant::now();
        engine
            .load(&f.digest, &f.path)
            .await
            .with_context(|| format!("compile {name}"))?;
        let compile = t.elapsed();
        figures.modules.push(InstanceModule {
            name: name.to_string(),
            size: f.size,
            compile,
            ..InstanceModule::default()
        });
        fetched.push(f);
    }
    let stats = engine.stats();
    if stats.compiled != 2 {
        eprintln!(
            "  warning: the first engine compiled {} modules, not 2: {stats:?}",
            stats.compiled
        );
    }
    drop(engine);

    // A new engine with the same cache dir: what an agent restart sees.
    let engine = WasmEngine::new(EngineOptions::new(&cache, ENGINE_INSTANCES))?;
    let mut programs: Vec<Program> = Vec::new();
    for (m, f) in figures.modules.iter_mut().zip(&fetched) {
        let t = Instant::now();
        let program = engine.load(&f.digest, &f.path).await?;
        m.from_disk = t.elapsed();
        let t = Instant::now();
        engine.load(&f.digest, &f.path).await?;
        m.from_memory = t.elapsed();
        programs.push(program);
    }
    let stats = engine.stats();
    if stats.from_disk != 2 || stats.compiled != 0 {
        eprintln!("  warning: the second engine did not load both modules from disk: {stats:?}");
    }

    for (m, program) in figures.modules.iter_mut().zip(&programs) {
        let sink = Arc::new(CountingSink::default());
        let run = |sink: &Arc<CountingSink>| {
            let spec = RunSpec::new(vec![m.name.clone()], sink.clone(), sink.clone());
            // `Default` is a fresh CancellationToken (this crate does not name tokio-util).
            program.run(spec, Default::default())
        };
        for _ in 0..INSTANCE_WARMUP_RUNS {
            let exit = run(&sink).await;
            if exit != Exit::Exited(0) {
                bail!("{} did not exit 0 in a warm-up run: {exit:?}", m.name);
            }
        }
        sink.0.store(0, Ordering::Relaxed);
        let mut samples = Vec::with_capacity(opts.instance_runs);
        for _ in 0..opts.instance_runs {
            let t = Instant::now();
            let exit = run(&sink).await;
            let took = t.elapsed();
            if exit == Exit::Exited(0) {
                samples.push(took);
            } else {
                m.failures += 1;
            }
        }
        m.output_bytes_per_run = sink.0.load(Ordering::Relaxed) as f64 / opts.instance_runs as f64;
        m.runs = Stats::of(&mut samples);
        println!(
            "  {}: compile {:.1} ms, from disk {:.2} ms, from memory {:.0} µs; run {}",
            m.name,
            ms(m.compile),
            ms(m.from_disk),
            us(m.from_memory),
            m.runs.us()
        );
    }
    if let Some(hello) = programs.get(1) {
        let sleeping = sleeping_instances(hello, opts.pods).await?;
        println!(
            "  {} sleeping hello instances at once: all printed after {:.0} ms; RSS {:.1} → {:.1} MiB",
            sleeping.instances,
            ms(sleeping.all_started),
            sleeping.rss_before,
            sleeping.rss_running
        );
        figures.sleeping = Some(sleeping);
    }
    Ok(figures)
}

// ---------------------------------------------------------------------------------
// Bursts of pods

/// Where a burst's pods go.
#[derive(Debug, Clone)]
enum Placement {
    /// `spec.nodeName` unset: the scheduler binds them.
    Scheduler,
    /// `spec.nodeName` preset: no scheduling.
    Node(String),
    /// A scheduler nobody runs: the pods stay Pending and unbound (the API baseline).
    Nobody,
}

/// What a burst's pods run.
#[derive(Debug, Clone)]
enum PodTemplate {
    /// hello with `HELLO_SLEEP=inf`, restartPolicy Always: prints its greeting, sleeps.
    Hello { image: String },
    /// http-echo serving port 8080 on the pod IP, `POD_NAME` from a fieldRef; with
    /// `readiness_probe`, an httpGet probe of `/` on 8080 every second, no initial delay.
    HttpEcho {
        image: String,
        readiness_probe: bool,
    },
    /// spinner (a busy loop that never yields), with `limits.cpu` or none.
    Spinner {
        image: String,
        cpu_limit: Option<String>,
    },
}

impl PodTemplate {
    fn pod(&self, name: &str, run: &str, placement: &Placement) -> Result<Pod> {
        let container = match self {
            PodTemplate::Hello { image } => serde_json::json!({
                "name": "hello",
                "image": image,
                "env": [{"name": "HELLO_SLEEP", "value": "inf"}]
            }),
            PodTemplate::HttpEcho {
                image,
                readiness_probe,
            } => {
                // Not `echo`: argv[0] follows the container name, and http-echo's toolbox
                // would run its `echo` tool instead of the server.
                let mut c = serde_json::json!({
                    "name": "web",
                    "image": image,
                    "env": [{
                        "name": "POD_NAME",
                        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}
                    }]
                });
                if *readiness_probe {
                    c["readinessProbe"] = serde_json::json!({
                        "httpGet": {"path": "/", "port": 8080},
                        "initialDelaySeconds": 0,
                        "periodSeconds": 1
                    });
                }
                c
            }
            PodTemplate::Spinner { image, cpu_limit } => {
                let mut c = serde_json::json!({
                    "name": "spinner",
                    "image": image,
                    "env": [{
                        "name": "POD_NAME",
                        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}
                    }]
                });
                if let Some(cpu) = cpu_limit {
                    c["resources"] = serde_json::json!({"limits": {"cpu": cpu}});
                }
                c
            }
        };
        let mut spec = serde_json::json!({
            "restartPolicy": "Always",
            "containers": [container]
        });
        match placement {
            Placement::Scheduler => {}
            Placement::Node(node) => spec["nodeName"] = serde_json::json!(node),
            Placement::Nobody => spec["schedulerName"] = serde_json::json!(NO_SCHEDULER),
        }
        let value = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"bench-run": run}},
            "spec": spec
        });
        serde_json::from_value(value).context("build a pod")
    }
}

/// Client-clock instants of one pod.
#[derive(Debug, Clone, Copy, Default)]
struct PodTimes {
    sent: Option<Instant>,
    created: Option<Instant>,
    seen: Option<Instant>,
    bound: Option<Instant>,
    running: Option<Instant>,
}

/// Running, with its container running and ready, and the Ready condition True.
fn is_running(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status.container_statuses.as_ref().is_some_and(|cs| {
            !cs.is_empty()
                && cs
                    .iter()
                    .all(|c| c.ready && c.state.as_ref().is_some_and(|s| s.running.is_some()))
        })
        && status
            .conditions
            .as_ref()
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// What one burst measured.
#[derive(Debug, Clone, Default)]
struct BurstFigures {
    title: String,
    pods: usize,
    clients: usize,
    created: usize,
    create_errors: usize,
    running: usize,
    /// Request sent → create returned.
    create_latency: Stats,
    /// Create returned → first seen Running.
    to_running: Stats,
    /// Request sent → first seen Running.
    sent_to_running: Stats,
    /// Create returned → first seen bound (scheduler runs only).
    to_bound: Option<Stats>,
    /// First seen bound → first seen Running (scheduler runs only).
    bound_to_running: Option<Stats>,
    /// Pods seen Running before their create call returned (counted as 0 ms).
    running_before_created: usize,
    /// First request sent → last create returned.
    create_wall: Duration,
    /// First request sent → last pod Running.
    burst_wall: Duration,
    cpu: PhaseCpu,
    /// API requests the server served during the burst: (verb, resource, count, mean).
    api_calls: Vec<(String, String, f64, Duration)>,
}

impl BurstFigures {
    fn print(&self, goal: bool) {
        println!("  {}:", self.title);
        println!(
            "    {} pods from {} concurrent clients: {} created ({} errors), {} Running",
            self.pods, self.clients, self.created, self.create_errors, self.running
        );
        if self.running > 0 {
            println!(
                "    creation→Running: {}{}",
                self.to_running.ms(),
                if goal {
                    " — goal p50 ≤ 50 ms, p99 ≤ 250 ms"
                } else {
                    ""
                }
            );
            println!(
                "      (creation = when this client's create call returned; Running = first watch event with phase Running, the container running and ready, and Ready=True{})",
                if self.running_before_created > 0 {
                    format!(
                        "; {} pods were seen Running before their create returned, counted as 0",
                        self.running_before_created
                    )
                } else {
                    String::new()
                }
            );
            println!("    request sent→Running: {}", self.sent_to_running.ms());
            if let (Some(b), Some(r)) = (&self.to_bound, &self.bound_to_running) {
                println!("    of which creation→bound (scheduler): {}", b.ms());
                println!("            bound→Running (agent):       {}", r.ms());
            }
            println!(
                "    whole burst: {:.2} s from the first create sent to the last pod Running = {:.0} pods/s (the creates alone took {:.2} s = {:.0} creates/s)",
                self.burst_wall.as_secs_f64(),
                self.running as f64 / self.burst_wall.as_secs_f64().max(1e-9),
                self.create_wall.as_secs_f64(),
                self.created as f64 / self.create_wall.as_secs_f64().max(1e-9),
            );
        } else {
            println!(
                "    creates alone: {:.2} s = {:.0} creates/s",
                self.create_wall.as_secs_f64(),
                self.created as f64 / self.create_wall.as_secs_f64().max(1e-9)
            );
        }
        println!(
            "    API round trip of these creates (sent→returned): {}",
            self.create_latency.ms()
        );
        println!("    CPU: {}", self.cpu.describe(self.pods));
        if !self.api_calls.is_empty() {
            println!(
                "    API requests served during the burst, per pod (everyone's: this client, scheduler, agent, controllers):"
            );
            println!("      {}", describe_calls(&self.api_calls, self.pods));
        }
    }
}

/// "create events 4.00/pod (mean 3.1 ms); …", most frequent first.
fn describe_calls(calls: &[(String, String, f64, Duration)], pods: usize) -> String {
    let mut calls: Vec<&(String, String, f64, Duration)> = calls.iter().collect();
    calls.sort_by(|a, b| b.2.total_cmp(&a.2));
    calls
        .iter()
        .map(|(verb, resource, n, mean)| {
            format!(
                "{verb} {resource} {:.2}/pod (mean {:.1} ms)",
                n / pods.max(1) as f64,
                ms(*mean)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The server's request counters: (verb, resource) → (count, seconds in total), from
/// `apiserver_request_duration_seconds` in /metrics. Empty if /metrics cannot be read.
async fn request_counters(client: &Client) -> HashMap<(String, String), (f64, f64)> {
    let mut out: HashMap<(String, String), (f64, f64)> = HashMap::new();
    let Ok(req) = http::Request::get("/metrics").body(Vec::new()) else {
        return out;
    };
    let Ok(text) = client.request_text(req).await else {
        return out;
    };
    for line in text.lines() {
        for (suffix, is_count) in [("_count{", true), ("_sum{", false)] {
            let Some(rest) =
                line.strip_prefix(&format!("apiserver_request_duration_seconds{suffix}"))
            else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once(' ') else {
                continue;
            };
            let label = |name: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.trim_end_matches('}').strip_prefix(&format!("{name}=")))
                    .map(|v| v.trim_matches('"').to_string())
                    .unwrap_or_default()
            };
            let value: f64 = value.parse().unwrap_or(0.0);
            let entry = out.entry((label("verb"), label("resource"))).or_default();
            if is_count {
                entry.0 = value;
            } else {
                entry.1 = value;
            }
        }
    }
    out
}

/// What happened between two [`request_counters`] readings, leaving out watches.
fn calls_between(
    before: &HashMap<(String, String), (f64, f64)>,
    after: &HashMap<(String, String), (f64, f64)>,
) -> Vec<(String, String, f64, Duration)> {
    after
        .iter()
        .filter(|((verb, _), _)| verb != "watch")
        .filter_map(|((verb, resource), (n, sum))| {
            let (n0, s0) = before
                .get(&(verb.clone(), resource.clone()))
                .copied()
                .unwrap_or((0.0, 0.0));
            let count = n - n0;
            (count > 0.0).then(|| {
                let mean = Duration::from_secs_f64(((sum - s0) / count).max(0.0));
                (verb.clone(), resource.clone(), count, mean)
            })
        })
        .collect()
}

/// What a burst talks to, and what its pods run.
#[derive(Clone)]
struct Target {
    config: Config,
    template: PodTemplate,
    /// Processes whose CPU each phase reports.
    cpu_of: Vec<(String, u32)>,
    /// How long a burst may take to be all Running.
    timeout: Duration,
}

/// Creates `pods` pods of the target's template labelled `bench-run=<run>` from `clients` concurrent
/// clients while a watch records when each is seen, bound and Running; with
/// `wait_running`, waits (up to the target's timeout) until all are Running.
async fn burst(
    target: &Target,
    title: &str,
    run: &str,
    placement: Placement,
    pods: usize,
    clients: usize,
    wait_running: bool,
) -> Result<BurstFigures> {
    let timeout = target.timeout;
    let names: Vec<String> = (0..pods).map(|i| format!("{run}-{i:05}")).collect();
    let times: Arc<Mutex<HashMap<String, PodTimes>>> = Arc::new(Mutex::new(
        names
            .iter()
            .map(|n| (n.clone(), PodTimes::default()))
            .collect(),
    ));

    // The watch first: it must be open before the first create.
    let watch_client = kube_client(&target.config)?;
    let api: Api<Pod> = Api::namespaced(watch_client, NAMESPACE);
    let cfg = watcher::Config::default().labels(&format!("bench-run={run}"));
    let (running_tx, mut running_rx) = tokio::sync::watch::channel(0usize);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let watch_times = times.clone();
    let watch_task = tokio::spawn(async move {
        let mut stream = watcher(api, cfg).boxed();
        let mut ready_tx = Some(ready_tx);
        let mut running = 0usize;
        while let Some(event) = stream.next().await {
            let now = Instant::now();
            let pod = match event {
                Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => p,
                Ok(watcher::Event::InitDone) => {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                    continue;
                }
                Ok(_) => continue,
                Err(e) => {
                    eprintln!("  watch error: {e}");
                    continue;
                }
            };
            let Some(name) = pod.metadata.name.as_deref() else {
                continue;
            };
            let Ok(mut map) = watch_times.lock() else {
                return;
            };
            let Some(t) = map.get_mut(name) else { continue };
            t.seen.get_or_insert(now);
            if pod.spec.as_ref().is_some_and(|s| s.node_name.is_some()) {
                t.bound.get_or_insert(now);
            }
            if t.running.is_none() && is_running(&pod) {
                t.running = Some(now);
                running += 1;
                running_tx.send_replace(running);
            }
        }
    });
    let _abort_watch = AbortOnDrop(watch_task.abort_handle());
    tokio::time::timeout(START_DEADLINE, ready_rx)
        .await
        .context("the watch did not open")?
        .context("the watch ended before it opened")?;

    let mut apis = Vec::with_capacity(clients);
    for _ in 0..clients {
        let client = kube_client(&target.config)?;
        apis.push(Api::<Pod>::namespaced(client, NAMESPACE));
    }
    let metrics_client = kube_client(&target.config)?;
    let counters_before = request_counters(&metrics_client).await;
    let meter = CpuMeter::start(&target.cpu_of);
    let next = Arc::new(AtomicUsize::new(0));
    let names = Arc::new(names);
    let mut tasks = Vec::with_capacity(clients);
    for api in apis {
        let next = next.clone();
        let names = names.clone();
        let times = times.clone();
        let template = target.template.clone();
        let placement = placement.clone();
        let run = run.to_string();
        tasks.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(name) = names.get(i) else { break };
                let pod = match template.pod(name, &run, &placement) {
                    Ok(p) => p,
                    Err(e) => {
                        errors.push(format!("{e:#}"));
                        continue;
                    }
                };
                let sent = Instant::now();
                let result = api.create(&PostParams::default(), &pod).await;
                let created = Instant::now();
                match result {
                    Ok(_) => {
                        if let Ok(mut map) = times.lock() {
                            if let Some(t) = map.get_mut(name) {
                                t.sent = Some(sent);
                                t.created = Some(created);
                            }
                        }
                    }
                    Err(e) => errors.push(format!("{name}: {e}")),
                }
            }
            errors
        }));
    }
    let mut errors = Vec::new();
    for task in tasks {
        match task.await {
            Ok(e) => errors.extend(e),
            Err(e) => errors.push(format!("a creating client panicked: {e}")),
        }
    }
    for e in errors.iter().take(5) {
        eprintln!("  create error: {e}");
    }
    let created = pods - errors.len();

    let mut timed_out = false;
    if wait_running && created > 0 {
        let waited = tokio::time::timeout(timeout, running_rx.wait_for(|n| *n >= created))
            .await
            .is_ok();
        if !waited {
            timed_out = true;
            eprintln!(
                "  only {} of {created} pods Running after {timeout:?}; reporting those",
                *running_rx.borrow()
            );
        }
    }
    let cpu = meter.finish();
    let api_calls = calls_between(&counters_before, &request_counters(&metrics_client).await);

    let map = times
        .lock()
        .map_err(|_| anyhow::anyhow!("the timing table is poisoned"))?
        .clone();
    let mut fig = BurstFigures {
        title: title.to_string(),
        pods,
        clients,
        created,
        create_errors: errors.len(),
        cpu,
        api_calls,
        ..BurstFigures::default()
    };
    let first_sent = map.values().filter_map(|t| t.sent).min();
    let last_created = map.values().filter_map(|t| t.created).max();
    let last_running = map.values().filter_map(|t| t.running).max();
    if let (Some(a), Some(b)) = (first_sent, last_created) {
        fig.create_wall = b.duration_since(a);
    }
    if let (Some(a), Some(b)) = (first_sent, last_running) {
        fig.burst_wall = b.duration_since(a);
    }
    let (mut create_lat, mut to_running, mut sent_to_running, mut to_bound, mut bound_to_running) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for t in map.values() {
        let (Some(sent), Some(created)) = (t.sent, t.created) else {
            continue;
        };
        create_lat.push(created - sent);
        if let Some(running) = t.running {
            fig.running += 1;
            if running < created {
                fig.running_before_created += 1;
            }
            to_running.push(running.saturating_duration_since(created));
            sent_to_running.push(running.saturating_duration_since(sent));
            if let Some(bound) = t.bound {
                to_bound.push(bound.saturating_duration_since(created));
                bound_to_running.push(running.saturating_duration_since(bound));
            }
        }
    }
    fig.create_latency = Stats::of(&mut create_lat);
    fig.to_running = Stats::of(&mut to_running);
    fig.sent_to_running = Stats::of(&mut sent_to_running);
    if matches!(placement, Placement::Scheduler) {
        fig.to_bound = Some(Stats::of(&mut to_bound));
        fig.bound_to_running = Some(Stats::of(&mut bound_to_running));
    }
    if timed_out {
        fig.title.push_str(" [TIMED OUT: not all Running]");
    }
    Ok(fig)
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Deletes a run's pods (grace period 0) and waits until the API has none left and the
/// agent with data directory `agent_dir` has removed their pod directories (all but
/// `other_pods`, the pods of other runs still on the node). Returns how long the
/// agent-side cleanup took after the deletes were sent.
async fn teardown(
    config: &Config,
    run: &str,
    clients: usize,
    agent_dir: &Path,
    other_pods: usize,
) -> Result<Duration> {
    let client = kube_client(config)?;
    let api: Api<Pod> = Api::namespaced(client, NAMESPACE);
    let selector = format!("bench-run={run}");
    let names: Vec<String> = api
        .list(&ListParams::default().labels(&selector))
        .await
        .context("list the run's pods")?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    let started = Instant::now();
    let names = Arc::new(names);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let api = api.clone();
        let names = names.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(name) = names.get(i) else { break };
                if let Err(e) = api
                    .delete(name, &DeleteParams::default().grace_period(0))
                    .await
                {
                    if !matches!(&e, kube::Error::Api(s) if s.code == 404) {
                        eprintln!("  delete {name}: {e}");
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    loop {
        let left = api
            .list(&ListParams::default().labels(&selector))
            .await
            .context("list the run's pods")?
            .items
            .len();
        let dirs = pod_dirs_left(agent_dir);
        if left == 0 && dirs <= other_pods {
            return Ok(started.elapsed());
        }
        if started.elapsed() > TEARDOWN_DEADLINE {
            bail!(
                "after {TEARDOWN_DEADLINE:?}, {left} pods of run {run} still exist and the agent still has {dirs} pod directories"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The space the files under `dir` take (allocated blocks, directories included),
/// without following symlinks; 0 if it does not exist.
fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            total += allocated_bytes(&entry.path());
        }
    }
    total
}

/// The pods the agent with data directory `agent_dir` still has files for: directories
/// on disk (`pods/<uid>`) or on its tmpfs (`memory/pods/<uid>`).
fn pod_dirs_left(agent_dir: &Path) -> usize {
    let mut uids = std::collections::HashSet::new();
    for root in [agent_dir.join("pods"), agent_dir.join("memory/pods")] {
        if let Ok(entries) = std::fs::read_dir(root) {
            uids.extend(entries.flatten().map(|e| e.file_name()));
        }
    }
    uids.len()
}

// ---------------------------------------------------------------------------------
// Part 1: bursts on `wasmkube up`

struct BurstSection {
    warmup_to_running: Duration,
    api_baseline: BurstFigures,
    scheduled: BurstFigures,
    preset: BurstFigures,
    teardowns: Vec<(String, Duration)>,
    up_rss_idle: f64,
    up_rss_running: f64,
    up_hwm: f64,
}

async fn burst_section(opts: &Opts, dir: &Path, image: &str) -> Result<BurstSection> {
    let (mut up, data_dir) = spawn_up(dir, max_pods_for(opts.pods))?;
    let outcome = burst_measure(opts, &mut up, &data_dir, image).await;
    up.stop().await;
    outcome
}

async fn burst_measure(
    opts: &Opts,
    up: &mut Proc,
    data_dir: &Path,
    image: &str,
) -> Result<BurstSection> {
    let (config, cpu_of) = connect_up(up, data_dir).await?;
    let target = Target {
        config: config.clone(),
        template: PodTemplate::Hello {
            image: image.to_string(),
        },
        cpu_of,
        timeout: opts.timeout,
    };
    let agent_data = data_dir.join("agent");
    let mut teardowns = Vec::new();

    // Warm-up: the module fetched and compiled, every code path touched once.
    let warm = burst(
        &target,
        "warm-up",
        "warmup",
        Placement::Scheduler,
        1,
        1,
        true,
    )
    .await?;
    if warm.running != 1 {
        bail!(
            "the warm-up pod did not reach Running; see {}",
            up.log.display()
        );
    }
    println!(
        "  warm-up pod Running after {:.0} ms (includes the module's compile)",
        ms(warm.to_running.max)
    );
    teardown(&config, "warmup", 1, &agent_data, 0).await?;
    let up_rss_idle = rss_mib(up.pid)?.0;

    println!(
        "  API baseline: {} creates of pods nobody schedules…",
        opts.pods
    );
    let api_baseline = burst(
        &target,
        "API baseline: creates of unbound pods (schedulerName nobody runs)",
        "api",
        Placement::Nobody,
        opts.pods,
        opts.clients,
        false,
    )
    .await?;
    api_baseline.print(false);
    teardowns.push((
        "API baseline pods".to_string(),
        teardown(&config, "api", opts.clients, &agent_data, 0).await?,
    ));

    println!("  burst with the scheduler: {} pods…", opts.pods);
    let scheduled = burst(
        &target,
        "burst, bare pods bound by the scheduler (nodeName unset)",
        "sched",
        Placement::Scheduler,
        opts.pods,
        opts.clients,
        true,
    )
    .await?;
    scheduled.print(true);
    let up_rss_running = rss_mib(up.pid)?.0;
    teardowns.push((
        format!("{} running pods (scheduled)", scheduled.running),
        teardown(&config, "sched", opts.clients, &agent_data, 0).await?,
    ));

    println!("  burst with nodeName preset: {} pods…", opts.pods);
    let preset = burst(
        &target,
        "burst, pods with spec.nodeName preset (no scheduling)",
        "node",
        Placement::Node(UP_NODE.to_string()),
        opts.pods,
        opts.clients,
        true,
    )
    .await?;
    preset.print(true);
    teardowns.push((
        format!("{} running pods (preset)", preset.running),
        teardown(&config, "node", opts.clients, &agent_data, 0).await?,
    ));
    let up_hwm = rss_mib(up.pid)?.1;

    Ok(BurstSection {
        warmup_to_running: warm.to_running.max,
        api_baseline,
        scheduled,
        preset,
        teardowns,
        up_rss_idle,
        up_rss_running,
        up_hwm,
    })
}

// ---------------------------------------------------------------------------------
// Part 3: RSS of a separate agent

struct RssSection {
    max_pods: usize,
    registered_after: Duration,
    at_registration: f64,
    /// VmRSS each second of the idle wait.
    idle_series: Vec<f64>,
    idle: f64,
    idle_wait: Duration,
    /// (file-backed, anonymous) RSS in MiB, idle and with the pods.
    idle_split: (f64, f64),
    pods_split: (f64, f64),
    /// The regions that grew most with the pods: (region, KiB idle, KiB with pods).
    grown: Vec<(Region, u64, u64)>,
    pods: BurstFigures,
    with_pods: f64,
    hwm: f64,
    /// VmRSS once the pods were deleted again.
    after_delete: Option<f64>,
    server_rss: f64,
    /// The steady-state window with the pods running.
    steady_wall: Duration,
    steady_cpu: PhaseCpu,
    steady_calls: Vec<(String, String, f64, Duration)>,
}

async fn rss_section(opts: &Opts, dir: &Path, image: &str) -> Result<RssSection> {
    let mut cluster = SeparateAgent::start(dir, max_pods_for(opts.pods)).await?;
    let outcome = rss_with_agent(opts, &mut cluster, image).await;
    cluster.stop().await;
    outcome
}

async fn rss_with_agent(
    opts: &Opts,
    cluster: &mut SeparateAgent,
    image: &str,
) -> Result<RssSection> {
    let cpu_of = cluster.cpu_of();
    let max_pods = cluster.max_pods;
    let SeparateAgent {
        server,
        agent,
        agent_dir,
        config,
        client,
        ..
    } = cluster;
    let registered_after = wait_node_ready(client, AGENT_NODE, agent).await?;
    let at_registration = rss_mib(agent.pid)?.0;
    // Idle: nothing but the heartbeat (its Lease is renewed every 10 s). Sampled each
    // second to show whether it has settled.
    let idle_started = Instant::now();
    let mut idle_series = Vec::new();
    while idle_started.elapsed() < opts.idle {
        tokio::time::sleep(Duration::from_secs(1).min(opts.idle)).await;
        agent.check_alive()?;
        idle_series.push(rss_mib(agent.pid)?.0);
    }
    let idle = rss_mib(agent.pid)?.0;
    let idle_regions = regions(agent.pid)?;
    let idle_wait = idle_started.elapsed();
    println!(
        "  agent Ready {:.1} s after start; RSS {at_registration:.1} MiB then, {idle:.1} MiB after {:.0} s idle",
        registered_after.as_secs_f64(),
        idle_wait.as_secs_f64()
    );

    prepare_namespace(client).await?;
    let target = Target {
        config: config.clone(),
        template: PodTemplate::Hello {
            image: image.to_string(),
        },
        cpu_of,
        timeout: opts.timeout,
    };
    let pods = burst(
        &target,
        "pods on the separate agent (nodeName preset)",
        "rss",
        Placement::Node(AGENT_NODE.to_string()),
        opts.pods,
        opts.clients,
        true,
    )
    .await?;
    pods.print(false);
    // Let the status writes and first log lines settle before reading.
    tokio::time::sleep(Duration::from_secs(2)).await;
    agent.check_alive()?;
    let (with_pods, hwm) = rss_mib(agent.pid)?;
    let pods_regions = regions(agent.pid)?;
    // Steady state: the pods run and nothing changes; what does that cost?
    let metrics_client = kube_client(config)?;
    let before = request_counters(&metrics_client).await;
    let meter = CpuMeter::start(&target.cpu_of);
    let steady_started = Instant::now();
    tokio::time::sleep(opts.steady).await;
    let steady_cpu = meter.finish();
    let steady_wall = steady_started.elapsed();
    let steady_calls = calls_between(&before, &request_counters(&metrics_client).await);
    agent.check_alive()?;
    let server_rss = rss_mib(server.pid)?.0;
    let after_delete = match teardown(config, "rss", opts.clients, agent_dir, 0).await {
        Ok(_) => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            rss_mib(agent.pid).ok().map(|r| r.0)
        }
        Err(e) => {
            eprintln!("  teardown: {e:#}");
            None
        }
    };
    Ok(RssSection {
        max_pods,
        registered_after,
        at_registration,
        idle_series,
        idle,
        idle_wait,
        idle_split: rss_split(&idle_regions),
        pods_split: rss_split(&pods_regions),
        grown: grown_regions(&idle_regions, &pods_regions, 6),
        pods,
        with_pods,
        hwm,
        after_delete,
        server_rss,
        steady_wall,
        steady_cpu,
        steady_calls,
    })
}

// ---------------------------------------------------------------------------------
// HTTP to pods

/// A pod's status.podIP, once it has one.
async fn pod_ip(client: &Client, name: &str) -> Result<IpAddr> {
    let api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let started = Instant::now();
    loop {
        let pod = api
            .get(name)
            .await
            .with_context(|| format!("get pod {name}"))?;
        if let Some(ip) = pod.status.and_then(|s| s.pod_ip) {
            return ip
                .parse()
                .with_context(|| format!("pod {name} has an invalid podIP {ip:?}"));
        }
        if started.elapsed() > START_DEADLINE {
            bail!("pod {name} had no podIP within {START_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `addr` until it answers 200: Running says the instance started, not that its
/// server listens yet.
async fn wait_answers(addr: SocketAddr, proc: &mut Proc) -> Result<()> {
    let started = Instant::now();
    loop {
        let last = match http_get(addr, "/", REQUEST_TIMEOUT).await {
            Ok(r) if r.starts_with("HTTP/1.1 200") => return Ok(()),
            Ok(r) => format!("answered {:?}", r.lines().next().unwrap_or_default()),
            Err(e) => format!("{e:#}"),
        };
        proc.check_alive()?;
        if started.elapsed() > START_DEADLINE {
            bail!("{addr} did not answer 200 within {START_DEADLINE:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP/1.1 connection kept open for one request after another.
struct KeepAlive {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl KeepAlive {
    async fn connect(addr: SocketAddr) -> Result<KeepAlive> {
        let stream = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connect {addr} timed out after {REQUEST_TIMEOUT:?}"))?
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true).context("set TCP_NODELAY")?;
        Ok(KeepAlive {
            stream,
            buf: Vec::new(),
        })
    }

    /// One `GET /`: its status code, once the whole response is read.
    async fn get(&mut self) -> Result<u16> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.exchange())
            .await
            .map_err(|_| anyhow!("keep-alive GET timed out after {REQUEST_TIMEOUT:?}"))?
    }

    async fn exchange(&mut self) -> Result<u16> {
        self.stream
            .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            .await
            .context("write a request")?;
        // Each response is read to its end, so nothing of the next one is buffered.
        self.buf.clear();
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.read_some(&mut chunk).await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("a malformed status line: {head:?}"))?;
        let body_len: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .with_context(|| format!("a response without Content-Length: {head:?}"))?;
        while self.buf.len() < head_end + body_len {
            self.read_some(&mut chunk).await?;
        }
        Ok(status)
    }

    async fn read_some(&mut self, chunk: &mut [u8]) -> Result<()> {
        let n = self.stream.read(chunk).await.context("read a response")?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// Latencies of sequential requests to one server.
#[derive(Debug, Clone, Default)]
struct RequestFigures {
    /// A new connection per request (connect + request + response + close).
    fresh: Stats,
    fresh_failed: usize,
    /// One kept-alive connection (request + response).
    keep_alive: Stats,
    keep_alive_failed: usize,
    /// The first failure, if any.
    first_error: Option<String>,
}

impl RequestFigures {
    fn describe(&self) -> String {
        format!(
            "new connection each {}{}; keep-alive {}{}",
            self.fresh.ms(),
            failed(self.fresh_failed),
            self.keep_alive.ms(),
            failed(self.keep_alive_failed)
        )
    }
}

fn failed(n: usize) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" [{n} FAILED]")
    }
}

/// `n` sequential `GET /` to `addr` on new connections, then `n` on one kept-alive
/// connection (reopened after a failure). A failure is a figure, not an error.
async fn request_latencies(addr: SocketAddr, n: usize) -> RequestFigures {
    let mut figures = RequestFigures::default();
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        match http_get(addr, "/", REQUEST_TIMEOUT).await {
            Ok(r) if r.starts_with("HTTP/1.1 200") => samples.push(t.elapsed()),
            Ok(r) => {
                figures.fresh_failed += 1;
                figures.first_error.get_or_insert_with(|| {
                    format!("answered {:?}", r.lines().next().unwrap_or_default())
                });
            }
            Err(e) => {
                figures.fresh_failed += 1;
                figures.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    figures.fresh = Stats::of(&mut samples);

    let mut samples = Vec::with_capacity(n);
    let mut conn: Option<KeepAlive> = None;
    for _ in 0..n {
        if conn.is_none() {
            match KeepAlive::connect(addr).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    figures.keep_alive_failed += 1;
                    figures.first_error.get_or_insert_with(|| format!("{e:#}"));
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let t = Instant::now();
        match c.get().await {
            Ok(200) => samples.push(t.elapsed()),
            Ok(status) => {
                figures.keep_alive_failed += 1;
                figures
                    .first_error
                    .get_or_insert_with(|| format!("keep-alive GET answered {status}"));
            }
            Err(e) => {
                figures.keep_alive_failed += 1;
                figures.first_error.get_or_insert_with(|| format!("{e:#}"));
                conn = None;
            }
        }
    }
    figures.keep_alive = Stats::of(&mut samples);
    figures
}

// ---------------------------------------------------------------------------------
// Part 4: creation → Ready with a readiness probe

struct ReadySection {
    max_pods: usize,
    warmup_to_ready: Duration,
    /// http-echo without a probe: creation → Running and Ready.
    baseline: BurstFigures,
    /// http-echo with the readiness probe: creation → Ready.
    probed: BurstFigures,
    teardowns: Vec<(String, Duration)>,
}

async fn ready_section(opts: &Opts, dir: &Path, echo_image: &str) -> Result<ReadySection> {
    let max_pods = max_pods_for(opts.pods);
    let (mut up, data_dir) = spawn_up(dir, max_pods)?;
    let outcome = ready_measure(opts, &mut up, &data_dir, echo_image, max_pods).await;
    up.stop().await;
    outcome
}

async fn ready_measure(
    opts: &Opts,
    up: &mut Proc,
    data_dir: &Path,
    echo_image: &str,
    max_pods: usize,
) -> Result<ReadySection> {
    let (config, cpu_of) = connect_up(up, data_dir).await?;
    let echo = |readiness_probe: bool| Target {
        config: config.clone(),
        template: PodTemplate::HttpEcho {
            image: echo_image.to_string(),
            readiness_probe,
        },
        cpu_of: cpu_of.clone(),
        timeout: opts.timeout,
    };
    let node = || Placement::Node(UP_NODE.to_string());
    let agent_data = data_dir.join("agent");
    let mut teardowns = Vec::new();

    // Warm-up: http-echo fetched and compiled, the probe's code paths touched once.
    let warm = burst(&echo(true), "warm-up", "ready-warmup", node(), 1, 1, true).await?;
    if warm.running != 1 {
        bail!(
            "the warm-up http-echo pod did not become Ready; see {}",
            up.log.display()
        );
    }
    println!(
        "  warm-up http-echo pod Ready after {:.0} ms (includes the module's compile)",
        ms(warm.to_running.max)
    );
    teardown(&config, "ready-warmup", 1, &agent_data, 0).await?;

    println!("  baseline: {} http-echo pods without a probe…", opts.pods);
    let baseline = burst(
        &echo(false),
        "http-echo without a probe (baseline), nodeName preset: creation→Running+Ready",
        "echo-plain",
        node(),
        opts.pods,
        opts.clients,
        true,
    )
    .await?;
    baseline.print(false);
    teardowns.push((
        format!("{} http-echo pods without a probe", baseline.running),
        teardown(&config, "echo-plain", opts.clients, &agent_data, 0).await?,
    ));

    println!("  {} http-echo pods with a readiness probe…", opts.pods);
    let probed = burst(
        &echo(true),
        "http-echo with a readinessProbe, nodeName preset: creation→Ready",
        "echo-probe",
        node(),
        opts.pods,
        opts.clients,
        true,
    )
    .await?;
    probed.print(true);
    teardowns.push((
        format!("{} http-echo pods with a probe", probed.running),
        teardown(&config, "echo-probe", opts.clients, &agent_data, 0).await?,
    ));

    Ok(ReadySection {
        max_pods,
        warmup_to_ready: warm.to_running.max,
        baseline,
        probed,
        teardowns,
    })
}

// ---------------------------------------------------------------------------------
// Part 5: many idle http-echo pods on a separate agent

/// Whether a sample of running http-echo pods answer on their pod IPs.
#[derive(Debug, Clone, Default)]
struct HttpCheck {
    /// Pods of the run listed, and how many distinct podIPs they have.
    listed: usize,
    distinct_ips: usize,
    checked: usize,
    /// Answered 200 naming themselves (their POD_NAME).
    answered: usize,
    /// Answered, but not 200 or as another pod.
    wrong: usize,
    failed: usize,
    latency: Stats,
    first_error: Option<String>,
}

/// GETs `/` from up to `sample` of the run's pods, spread evenly over their names.
async fn http_check(client: &Client, run: &str, sample: usize) -> Result<HttpCheck> {
    let api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let mut pods: Vec<(String, Option<String>)> = api
        .list(&ListParams::default().labels(&format!("bench-run={run}")))
        .await
        .context("list the run's pods")?
        .items
        .into_iter()
        .map(|p| {
            (
                p.metadata.name.unwrap_or_default(),
                p.status.and_then(|s| s.pod_ip),
            )
        })
        .collect();
    pods.sort();
    let mut check = HttpCheck {
        listed: pods.len(),
        distinct_ips: pods
            .iter()
            .filter_map(|(_, ip)| ip.as_deref())
            .collect::<std::collections::HashSet<_>>()
            .len(),
        ..HttpCheck::default()
    };
    let step = (pods.len() / sample.max(1)).max(1);
    let mut latencies = Vec::new();
    for (name, ip) in pods.iter().step_by(step).take(sample) {
        check.checked += 1;
        let Some(ip) = ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok()) else {
            check.failed += 1;
            check
                .first_error
                .get_or_insert_with(|| format!("{name} has no podIP"));
            continue;
        };
        let t = Instant::now();
        match http_get(SocketAddr::new(ip, 8080), "/", REQUEST_TIMEOUT).await {
            Ok(r) if r.starts_with("HTTP/1.1 200") && r.contains(name.as_str()) => {
                latencies.push(t.elapsed());
                check.answered += 1;
            }
            Ok(r) => {
                check.wrong += 1;
                check.first_error.get_or_insert_with(|| {
                    format!(
                        "{name} at {ip}:8080 answered {:?} (not 200 naming itself)",
                        r.lines().next().unwrap_or_default()
                    )
                });
            }
            Err(e) => {
                check.failed += 1;
                check
                    .first_error
                    .get_or_insert_with(|| format!("{name}: {e:#}"));
            }
        }
    }
    check.latency = Stats::of(&mut latencies);
    Ok(check)
}

struct IdleSection {
    max_pods: usize,
    cidr_mask: u8,
    open_files_limit: Option<u64>,
    registered_after: Duration,
    /// VmRSS after registration and the idle wait.
    idle: f64,
    warmup_to_running: Duration,
    /// VmRSS once the warm-up pod ran and was deleted: the module is loaded.
    before: f64,
    before_split: (f64, f64),
    pods: BurstFigures,
    with_pods: f64,
    hwm: f64,
    with_split: (f64, f64),
    grown: Vec<(Region, u64, u64)>,
    fds_before: Option<Vec<(String, usize)>>,
    fds_with_pods: Option<Vec<(String, usize)>>,
    threads_with_pods: Option<f64>,
    /// Bytes the pods' memory-backed volumes take on the agent's tmpfs (not in RSS).
    volumes_on_tmpfs: u64,
    steady_wall: Duration,
    steady_cpu: PhaseCpu,
    http: HttpCheck,
    /// VmRSS after the sampled pods answered.
    after_http: f64,
    teardown: Option<Duration>,
    after_delete: Option<f64>,
}

async fn idle_section(opts: &Opts, dir: &Path, echo_image: &str) -> Result<IdleSection> {
    let mut cluster = SeparateAgent::start(dir, max_pods_for(opts.idle_pods)).await?;
    let outcome = idle_with_agent(opts, &mut cluster, echo_image).await;
    cluster.stop().await;
    outcome
}

async fn idle_with_agent(
    opts: &Opts,
    cluster: &mut SeparateAgent,
    echo_image: &str,
) -> Result<IdleSection> {
    let cpu_of = cluster.cpu_of();
    let max_pods = cluster.max_pods;
    let SeparateAgent {
        agent,
        agent_dir,
        config,
        client,
        ..
    } = cluster;
    let registered_after = wait_node_ready(client, AGENT_NODE, agent).await?;
    tokio::time::sleep(opts.idle).await;
    agent.check_alive()?;
    let idle = rss_mib(agent.pid)?.0;
    println!(
        "  agent Ready {:.1} s after start; RSS {idle:.1} MiB after {:.0} s idle",
        registered_after.as_secs_f64(),
        opts.idle.as_secs_f64()
    );
    prepare_namespace(client).await?;
    let target = Target {
        config: config.clone(),
        template: PodTemplate::HttpEcho {
            image: echo_image.to_string(),
            readiness_probe: false,
        },
        cpu_of,
        timeout: opts.timeout,
    };
    let node = || Placement::Node(AGENT_NODE.to_string());

    // Warm-up: the module fetched, compiled and loaded, so that the growth measured
    // next is the pods' alone.
    let warm = burst(&target, "warm-up", "idle-warmup", node(), 1, 1, true).await?;
    if warm.running != 1 {
        bail!(
            "the warm-up http-echo pod did not reach Running; see {}",
            agent.log.display()
        );
    }
    teardown(config, "idle-warmup", 1, agent_dir, 0).await?;
    tokio::time::sleep(SETTLE).await;
    agent.check_alive()?;
    let before = rss_mib(agent.pid)?.0;
    let before_regions = regions(agent.pid)?;
    let fds_before = open_fds(agent.pid);
    println!("  module loaded (warm-up pod run and deleted): RSS {before:.1} MiB");

    println!("  {} idle http-echo pods on the agent…", opts.idle_pods);
    let pods = burst(
        &target,
        "idle http-echo pods on the separate agent (nodeName preset)",
        "idle",
        node(),
        opts.idle_pods,
        opts.clients,
        true,
    )
    .await?;
    pods.print(false);
    tokio::time::sleep(SETTLE).await;
    agent.check_alive()?;
    let (with_pods, hwm) = rss_mib(agent.pid)?;
    let with_regions = regions(agent.pid)?;
    let fds_with_pods = open_fds(agent.pid);
    let threads_with_pods = status_field(agent.pid, "Threads:").ok();
    let volumes_on_tmpfs = allocated_bytes(&agent_dir.join("memory/pods"));
    println!(
        "  with {} pods Running: RSS {with_pods:.1} MiB (peak {hwm:.1} MiB)",
        pods.running
    );

    // Idle means idle: what do the running pods cost while nothing happens?
    let meter = CpuMeter::start(&target.cpu_of);
    let steady_started = Instant::now();
    tokio::time::sleep(opts.steady).await;
    let steady_cpu = meter.finish();
    let steady_wall = steady_started.elapsed();
    agent.check_alive()?;

    let http = http_check(client, "idle", IDLE_HTTP_SAMPLE).await?;
    println!(
        "  HTTP: {} of {} sampled pods answered as themselves ({} pods listed, {} distinct pod IPs)",
        http.answered, http.checked, http.listed, http.distinct_ips
    );
    if let Some(e) = &http.first_error {
        eprintln!("  first HTTP failure: {e}");
    }
    let after_http = rss_mib(agent.pid)?.0;

    let (teardown_took, after_delete) =
        match teardown(config, "idle", opts.clients, agent_dir, 0).await {
            Ok(took) => {
                tokio::time::sleep(SETTLE).await;
                (Some(took), rss_mib(agent.pid).ok().map(|r| r.0))
            }
            Err(e) => {
                eprintln!("  teardown: {e:#}");
                (None, None)
            }
        };
    Ok(IdleSection {
        max_pods,
        cidr_mask: node_cidr_mask_for(max_pods),
        open_files_limit: open_files_limit(agent.pid).map(|(soft, _)| soft),
        registered_after,
        idle,
        warmup_to_running: warm.to_running.max,
        before,
        before_split: rss_split(&before_regions),
        grown: grown_regions(&before_regions, &with_regions, 6),
        with_split: rss_split(&with_regions),
        pods,
        with_pods,
        hwm,
        fds_before,
        fds_with_pods,
        threads_with_pods,
        volumes_on_tmpfs,
        steady_wall,
        steady_cpu,
        http,
        after_http,
        teardown: teardown_took,
        after_delete,
    })
}

// ---------------------------------------------------------------------------------
// Part 6: an http-echo pod's latency next to spinners

struct NeighbourPhase {
    title: String,
    /// The spinners' start (none in the baseline).
    spinners: Option<BurstFigures>,
    requests: RequestFigures,
    /// The `up` process's CPU (the agent runs the spinners in its own threads), in
    /// cores: over [`CPU_WINDOW`] before the requests, and while they ran.
    up_cores_before: f64,
    up_cores_during: f64,
    /// How long the requests took.
    wall: Duration,
    teardown: Option<Duration>,
}

struct NeighboursSection {
    echo_ip: IpAddr,
    phases: Vec<NeighbourPhase>,
    /// Why the phases stopped early, if they did.
    stopped: Option<String>,
}

async fn neighbours_section(
    opts: &Opts,
    dir: &Path,
    echo_image: &str,
    spinner_image: &str,
) -> Result<NeighboursSection> {
    let (mut up, data_dir) = spawn_up(dir, max_pods_for(SPINNERS + 1))?;
    let outcome = neighbours_measure(opts, &mut up, &data_dir, echo_image, spinner_image).await;
    up.stop().await;
    outcome
}

async fn neighbours_measure(
    opts: &Opts,
    up: &mut Proc,
    data_dir: &Path,
    echo_image: &str,
    spinner_image: &str,
) -> Result<NeighboursSection> {
    let (config, cpu_of) = connect_up(up, data_dir).await?;
    let client = kube_client(&config)?;
    let target = |template: PodTemplate| Target {
        config: config.clone(),
        template,
        cpu_of: cpu_of.clone(),
        timeout: opts.timeout,
    };
    let node = || Placement::Node(UP_NODE.to_string());
    let agent_data = data_dir.join("agent");

    let echo_target = target(PodTemplate::HttpEcho {
        image: echo_image.to_string(),
        readiness_probe: false,
    });
    let echo = burst(
        &echo_target,
        "http-echo",
        "neighbour-echo",
        node(),
        1,
        1,
        true,
    )
    .await?;
    if echo.running != 1 {
        bail!(
            "the http-echo pod did not reach Running; see {}",
            up.log.display()
        );
    }
    let echo_ip = pod_ip(&client, "neighbour-echo-00000").await?;
    let addr = SocketAddr::new(echo_ip, 8080);
    wait_answers(addr, up).await?;
    for _ in 0..REQUEST_WARMUP {
        let _ = http_get(addr, "/", REQUEST_TIMEOUT).await;
    }
    println!("  http-echo answers on {addr}");

    let mut phases = Vec::new();
    let mut stopped = None;
    let plans: [(String, Option<Option<&str>>); 3] = [
        ("no other pods (baseline)".to_string(), None),
        (format!("{SPINNERS} spinners, no limits"), Some(None)),
        (
            format!("{SPINNERS} spinners, limits.cpu {SPINNER_CPU_LIMIT} each"),
            Some(Some(SPINNER_CPU_LIMIT)),
        ),
    ];
    for (i, (title, spinners)) in plans.into_iter().enumerate() {
        println!("  {title}: {} requests per variant…", opts.requests);
        let run = format!("spin-{i}");
        let spinner_figures = match spinners {
            None => None,
            Some(cpu_limit) => {
                let spinner_target = target(PodTemplate::Spinner {
                    image: spinner_image.to_string(),
                    cpu_limit: cpu_limit.map(str::to_string),
                });
                let f = burst(
                    &spinner_target,
                    &format!("{title}: the spinners' start"),
                    &run,
                    node(),
                    SPINNERS,
                    SPINNERS,
                    true,
                )
                .await?;
                Some(f)
            }
        };
        up.check_alive()?;
        let up_only = [("wasmkube up".to_string(), up.pid)];
        let cores = |meter: &CpuMeter, wall: Duration| {
            meter.finish().processes.first().map_or(0.0, |p| p.1) / wall.as_secs_f64().max(1e-9)
        };
        let meter = CpuMeter::start(&up_only);
        let started = Instant::now();
        tokio::time::sleep(CPU_WINDOW).await;
        let up_cores_before = cores(&meter, started.elapsed());
        let meter = CpuMeter::start(&up_only);
        let started = Instant::now();
        let requests = request_latencies(addr, opts.requests).await;
        let wall = started.elapsed();
        let up_cores_during = cores(&meter, wall);
        println!("    {}", requests.describe());
        if let Some(e) = &requests.first_error {
            eprintln!("    first request failure: {e}");
        }
        up.check_alive()?;
        let mut phase = NeighbourPhase {
            title,
            spinners: spinner_figures,
            requests,
            up_cores_before,
            up_cores_during,
            wall,
            teardown: None,
        };
        if phase.spinners.is_some() {
            match teardown(&config, &run, SPINNERS, &agent_data, 1).await {
                Ok(took) => phase.teardown = Some(took),
                Err(e) => {
                    // The next phase would share the node with these spinners.
                    eprintln!("  teardown of the spinners: {e:#}");
                    stopped = Some(format!(
                        "the spinners of \"{}\" were not removed: {e:#}",
                        phase.title
                    ));
                }
            }
        }
        phases.push(phase);
        if stopped.is_some() {
            break;
        }
    }
    if stopped.is_none() {
        if let Err(e) = teardown(&config, "neighbour-echo", 1, &agent_data, 0).await {
            eprintln!("  teardown of the http-echo pod: {e:#}");
        }
    }
    Ok(NeighboursSection {
        echo_ip,
        phases,
        stopped,
    })
}

// ---------------------------------------------------------------------------------
// Main

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let opts = Opts::from_env()?;
    println!(
        "wasmkube agent benchmark ({} build): {} pods per burst, {} concurrent clients, {} instance runs, {} idle pods, {} requests; sections:{}{}{}{}{}{}",
        build(),
        opts.pods,
        opts.clients,
        opts.instance_runs,
        opts.idle_pods,
        opts.requests,
        if opts.instance { " instance" } else { "" },
        if opts.burst { " burst" } else { "" },
        if opts.rss { " rss" } else { "" },
        if opts.ready { " ready" } else { "" },
        if opts.idle_http { " idle" } else { "" },
        if opts.neighbours { " neighbours" } else { "" },
    );
    println!(
        "{} CPUs; 1-minute load average before starting: {:.2}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    in_temp_dir("wasmkube-agent-bench-", opts.keep, async |dir| {
        run(&opts, dir).await
    })
    .await
}

async fn run(opts: &Opts, dir: &Path) -> Result<()> {
    let hello = sample("hello")?;
    let image = format!("file://{}", hello.display());

    let instance = if opts.instance {
        println!("instance starts in process (wasmkube_runtime::wasm)…");
        let d = dir.join("instance");
        std::fs::create_dir_all(&d)?;
        Some(instance_section(opts, &d, &hello).await?)
    } else {
        None
    };
    let bursts = if opts.burst {
        println!("pod start bursts on `wasmkube up`…");
        let d = dir.join("burst");
        std::fs::create_dir_all(&d)?;
        Some(burst_section(opts, &d, &image).await?)
    } else {
        None
    };
    let rss = if opts.rss {
        println!("agent RSS (`wasmkube server` + `wasmkube agent`)…");
        let d = dir.join("rss");
        std::fs::create_dir_all(&d)?;
        Some(rss_section(opts, &d, &image).await?)
    } else {
        None
    };
    let echo = if opts.ready || opts.idle_http || opts.neighbours {
        format!("file://{}", sample("http-echo")?.display())
    } else {
        String::new()
    };
    let ready = if opts.ready {
        println!(
            "creation→Ready bursts of http-echo pods with a readiness probe on `wasmkube up`…"
        );
        let d = dir.join("ready");
        std::fs::create_dir_all(&d)?;
        Some(ready_section(opts, &d, &echo).await?)
    } else {
        None
    };
    let idle = if opts.idle_http {
        println!(
            "{} idle http-echo pods (`wasmkube server` + `wasmkube agent`)…",
            opts.idle_pods
        );
        let d = dir.join("idle");
        std::fs::create_dir_all(&d)?;
        Some(idle_section(opts, &d, &echo).await?)
    } else {
        None
    };
    let neighbours = if opts.neighbours {
        println!("http-echo latency next to spinners on `wasmkube up`…");
        let spinner = format!("file://{}", sample("spinner")?.display());
        let d = dir.join("neighbours");
        std::fs::create_dir_all(&d)?;
        Some(neighbours_section(opts, &d, &echo, &spinner).await?)
    } else {
        None
    };
    print_report(
        opts,
        instance.as_ref(),
        bursts.as_ref(),
        rss.as_ref(),
        ready.as_ref(),
        idle.as_ref(),
        neighbours.as_ref(),
    );
    Ok(())
}

fn print_report(
    opts: &Opts,
    instance: Option<&InstanceFigures>,
    bursts: Option<&BurstSection>,
    rss: Option<&RssSection>,
    ready: Option<&ReadySection>,
    idle: Option<&IdleSection>,
    neighbours: Option<&NeighboursSection>,
) {
    let build = if cfg!(debug_assertions) {
        " [DEBUG build: not representative]"
    } else {
        ""
    };
    println!();
    println!("==================== wasmkube agent benchmark{build} ====================");
    println!(
        "1-minute load average at the end: {:.2} (2-core machine shared with other work)",
        load_average()
    );
    if let Some(b) = bursts {
        println!("--- 1. pod start burst: `wasmkube up` (control plane + agent + managed etcd, one node), hello with HELLO_SLEEP=inf, restartPolicy Always, module cached by a warm-up pod ({:.0} ms to Running, compile included)", ms(b.warmup_to_running));
        for f in [&b.scheduled, &b.preset] {
            println!(
                "{}: creation→Running {} — goal p50 ≤ 50 ms, p99 ≤ 250 ms (Kubernetes' SLO: p99 ≤ 5 s)",
                f.title,
                f.to_running.ms()
            );
            println!(
                "    {} of {} Running; burst {:.2} s (first create sent → last Running) = {:.0} pods/s; the same creates' API round trip: {}",
                f.running,
                f.pods,
                f.burst_wall.as_secs_f64(),
                f.running as f64 / f.burst_wall.as_secs_f64().max(1e-9),
                f.create_latency.ms()
            );
            if let (Some(bound), Some(agent)) = (&f.to_bound, &f.bound_to_running) {
                println!(
                    "    split: creation→bound p50 {:.1} / p99 {:.1} ms; bound→Running p50 {:.1} / p99 {:.1} ms",
                    ms(bound.p50),
                    ms(bound.p99),
                    ms(agent.p50),
                    ms(agent.p99)
                );
            }
            println!("    CPU: {}", f.cpu.describe(f.pods));
            println!(
                "    API requests per pod: {}",
                describe_calls(&f.api_calls, f.pods)
            );
        }
        let a = &b.api_baseline;
        println!(
            "API round trip alone (baseline; {} creates of pods nobody schedules, same clients): {}; {:.0} creates/s",
            a.pods,
            a.create_latency.ms(),
            a.created as f64 / a.create_wall.as_secs_f64().max(1e-9)
        );
        println!("    CPU: {}", a.cpu.describe(a.pods));
        let teardowns: Vec<String> = b
            .teardowns
            .iter()
            .map(|(what, d)| format!("{what} {:.1} s", d.as_secs_f64()))
            .collect();
        println!(
            "teardown (deletes with grace 0 until the agent removed every pod dir): {}",
            teardowns.join("; ")
        );
        println!(
            "`up` process RSS (server + agent in one): {:.1} MiB idle, {:.1} MiB with {} pods Running, peak {:.1} MiB",
            b.up_rss_idle, b.up_rss_running, b.scheduled.running, b.up_hwm
        );
    }
    if let Some(i) = instance {
        println!("--- 2. instance start from the compiled cache (in process, wasmkube_runtime::wasm; engine sized for {ENGINE_INSTANCES} instances as the agent's, pooling {}; WasmEngine::new {:.1} ms)", i.pooling, ms(i.engine_new));
        for m in &i.modules {
            println!(
                "{} ({} B): run start→exit {} — goal ≤ 1 ms ({} failed runs, {:.0} B output per run)",
                m.name,
                m.size,
                m.runs.us(),
                m.failures,
                m.output_bytes_per_run
            );
            println!(
                "    load: first compile {:.1} ms vs new engine from the on-disk artifact {:.2} ms vs in memory {:.0} µs",
                ms(m.compile),
                ms(m.from_disk),
                us(m.from_memory)
            );
        }
        if let Some(sl) = &i.sleeping {
            println!(
                "{} long-running hello instances started at once (HELLO_SLEEP=inf): all printed after {:.0} ms = {:.0} starts/s; this process's RSS {:.1} → {:.1} MiB = {:.1} KiB per instance (system allocator; {:.1} MiB once dropped) — the wasm layer's share of a pod",
                sl.instances,
                ms(sl.all_started),
                sl.instances as f64 / sl.all_started.as_secs_f64().max(1e-9),
                sl.rss_before,
                sl.rss_running,
                (sl.rss_running - sl.rss_before) * 1024.0 / sl.instances.max(1) as f64,
                sl.rss_after
            );
        }
    }
    if let Some(r) = rss {
        println!(
            "--- 3. agent RSS (separate `wasmkube agent` process, max-pods {})",
            r.max_pods
        );
        println!(
            "idle after registration: {:.1} MiB (after {:.0} s idle; {:.1} MiB when its Node turned Ready, {:.1} s after start) — goal ≤ 40 MB; k3s' agent ~{K3S_AGENT_RSS_MB:.0} MB",
            r.idle,
            r.idle_wait.as_secs_f64(),
            r.at_registration,
            r.registered_after.as_secs_f64()
        );
        let n = r.pods.running.max(1) as f64;
        println!(
            "with {} hello pods Running: {:.1} MiB (peak {:.1} MiB) → {:.1} KiB per pod over idle",
            r.pods.running,
            r.with_pods,
            r.hwm,
            (r.with_pods - r.idle) * 1024.0 / n
        );
        let series: Vec<String> = r.idle_series.iter().map(|m| format!("{m:.1}")).collect();
        println!(
            "    idle VmRSS each second after Ready: {} MiB; split file-backed / anonymous: idle {:.1} / {:.1} MiB, with pods {:.1} / {:.1} MiB",
            series.join(" "),
            r.idle_split.0,
            r.idle_split.1,
            r.pods_split.0,
            r.pods_split.1
        );
        println!("    regions that grew most with the pods (RSS idle → with pods):");
        for (region, was, now) in &r.grown {
            println!(
                "      {}: {:.1} → {:.1} MiB ({:.1} KiB per pod)",
                region.describe(),
                *was as f64 / 1024.0,
                *now as f64 / 1024.0,
                (now - was) as f64 / n
            );
        }
        let secs = r.steady_wall.as_secs_f64().max(1e-9);
        let total: f64 = r.steady_calls.iter().map(|c| c.2).sum();
        let mut calls: Vec<&(String, String, f64, Duration)> = r.steady_calls.iter().collect();
        calls.sort_by(|a, b| b.2.total_cmp(&a.2));
        let calls: Vec<String> = calls
            .iter()
            .map(|(verb, resource, count, _)| format!("{verb} {resource} {:.1}/s", count / secs))
            .collect();
        let cpu: Vec<String> = r
            .steady_cpu
            .processes
            .iter()
            .map(|(name, s)| format!("{name} {:.1}% of a core", s * 100.0 / secs))
            .collect();
        println!(
            "    steady state with {} pods Running ({:.0} s, nothing changing): {:.1} API requests/s ({}); CPU {}",
            r.pods.running,
            secs,
            total / secs,
            if calls.is_empty() { "none".to_string() } else { calls.join(", ") },
            cpu.join(", ")
        );
        if let Some(after) = r.after_delete {
            println!("    after deleting the pods again: {after:.1} MiB");
        }
        println!(
            "    those pods: creation→Running {}; the server's RSS then {:.1} MiB",
            r.pods.to_running.ms(),
            r.server_rss
        );
    }
    if let Some(r) = ready {
        println!("--- 4. creation→Ready with a readiness probe: `wasmkube up` (one node, max-pods {}), http-echo pods with spec.nodeName preset, module cached by a warm-up pod ({:.0} ms to Ready, compile included)", r.max_pods, ms(r.warmup_to_ready));
        for (f, what, goal) in [
            (
                &r.probed,
                "with a readinessProbe (httpGet / on 8080, periodSeconds 1, initialDelaySeconds 0): creation→Ready",
                " — goal p50 ≤ 50 ms, p99 ≤ 250 ms",
            ),
            (
                &r.baseline,
                "without a probe (baseline, same run): creation→Running+Ready",
                "",
            ),
        ] {
            println!("{what} {}{goal}", f.to_running.ms());
            println!(
                "    {} of {} Ready{}; burst {:.2} s (first create sent → last Ready) = {:.0} pods/s; the creates' API round trip: {}",
                f.running,
                f.pods,
                if f.title.contains("TIMED OUT") { " [TIMED OUT]" } else { "" },
                f.burst_wall.as_secs_f64(),
                f.running as f64 / f.burst_wall.as_secs_f64().max(1e-9),
                f.create_latency.ms()
            );
            println!("    CPU: {}", f.cpu.describe(f.pods));
            println!(
                "    API requests per pod: {}",
                describe_calls(&f.api_calls, f.pods)
            );
        }
        let delta = |a: Duration, b: Duration| ms(a) - ms(b);
        println!(
            "the probe's cost over the baseline: p50 {:+.1} ms, p99 {:+.1} ms",
            delta(r.probed.to_running.p50, r.baseline.to_running.p50),
            delta(r.probed.to_running.p99, r.baseline.to_running.p99)
        );
        let teardowns: Vec<String> = r
            .teardowns
            .iter()
            .map(|(what, d)| format!("{what} {:.1} s", d.as_secs_f64()))
            .collect();
        println!("teardown: {}", teardowns.join("; "));
    }
    if let Some(i) = idle {
        println!(
            "--- 5. idle http-echo pods at once on a separate `wasmkube agent` (max-pods {}, pod range /{}; open-files limit {})",
            i.max_pods,
            i.cidr_mask,
            i.open_files_limit
                .map_or("unknown".to_string(), |l| l.to_string())
        );
        let n = i.pods.running.max(1) as f64;
        let per_pod_kib = (i.with_pods - i.before) * 1024.0 / n;
        println!(
            "{} of {} pods Running{}: agent RSS {:.1} → {:.1} MiB (peak {:.1} MiB) = {:.1} KiB ({:.2} MiB) per pod — goal ≤ 2 MiB per pod (a container costs tens of MB)",
            i.pods.running,
            i.pods.pods,
            if i.pods.title.contains("TIMED OUT") { " [TIMED OUT]" } else { "" },
            i.before,
            i.with_pods,
            i.hwm,
            per_pod_kib,
            per_pod_kib / 1024.0
        );
        println!(
            "    plus the pods' memory-backed volumes (token, CA) on the agent's tmpfs, outside RSS: {:.1} MiB = {:.1} KiB per pod",
            i.volumes_on_tmpfs as f64 / (1024.0 * 1024.0),
            i.volumes_on_tmpfs as f64 / 1024.0 / n
        );
        println!(
            "    before = the module loaded (a warm-up pod run and deleted, {:.0} ms to Running); {:.1} MiB idle after registration ({:.1} s after start)",
            ms(i.warmup_to_running),
            i.idle,
            i.registered_after.as_secs_f64()
        );
        println!(
            "    split file-backed / anonymous: before {:.1} / {:.1} MiB, with pods {:.1} / {:.1} MiB; threads with pods {}",
            i.before_split.0,
            i.before_split.1,
            i.with_split.0,
            i.with_split.1,
            i.threads_with_pods.map_or("?".to_string(), |t| format!("{t:.0}"))
        );
        let (before, with) = (fd_total(&i.fds_before), fd_total(&i.fds_with_pods));
        let per_pod = with.saturating_sub(before) as f64 / n;
        println!(
            "    agent's open fds: {} before, {} with the pods = {per_pod:.1} per pod{}",
            describe_fds(&i.fds_before),
            describe_fds(&i.fds_with_pods),
            match i.open_files_limit {
                Some(limit) if per_pod > 0.0 => format!(
                    "; the open-files limit {limit} allows about {:.0} such pods",
                    (limit as f64 - before as f64) / per_pod
                ),
                _ => String::new(),
            }
        );
        println!("    regions that grew most with the pods (RSS before → with pods):");
        for (region, was, now) in &i.grown {
            println!(
                "      {}: {:.1} → {:.1} MiB ({:.1} KiB per pod)",
                region.describe(),
                *was as f64 / 1024.0,
                *now as f64 / 1024.0,
                (now - was) as f64 / n
            );
        }
        let h = &i.http;
        println!(
            "    HTTP: {} of {} sampled pods answered GET / on podIP:8080 as themselves ({}; {} answered wrongly, {} failed); {} distinct pod IPs among {} pods",
            h.answered,
            h.checked,
            h.latency.ms(),
            h.wrong,
            h.failed,
            h.distinct_ips,
            h.listed
        );
        if let Some(e) = &h.first_error {
            println!("      first failure: {e}");
        }
        let secs = i.steady_wall.as_secs_f64().max(1e-9);
        let cpu: Vec<String> = i
            .steady_cpu
            .processes
            .iter()
            .map(|(name, s)| format!("{name} {:.1}% of a core", s * 100.0 / secs))
            .collect();
        println!(
            "    steady state ({:.0} s, nothing changing): CPU {}",
            secs,
            cpu.join(", ")
        );
        println!(
            "    RSS after the sample answered: {:.1} MiB; after deleting the pods: {}",
            i.after_http,
            match (i.after_delete, i.teardown) {
                (Some(m), Some(d)) => format!("{m:.1} MiB (teardown {:.1} s)", d.as_secs_f64()),
                _ => "teardown failed".to_string(),
            }
        );
        println!(
            "    those pods: creation→Running {}; burst {:.2} s = {:.0} pods/s",
            i.pods.to_running.ms(),
            i.pods.burst_wall.as_secs_f64(),
            i.pods.running as f64 / i.pods.burst_wall.as_secs_f64().max(1e-9)
        );
    }
    if let Some(nb) = neighbours {
        println!(
            "--- 6. neighbours: `wasmkube up` (one node), one http-echo pod at {}:8080, {} sequential GET / per variant and phase",
            nb.echo_ip, opts.requests
        );
        let base = nb.phases.first().map(|p| p.requests.clone());
        for p in &nb.phases {
            let vs = |now: &Stats, then: &Stats| {
                format!(
                    "×{:.1} p50, ×{:.1} p99",
                    ms(now.p50) / ms(then.p50).max(1e-9),
                    ms(now.p99) / ms(then.p99).max(1e-9)
                )
            };
            println!("{}:", p.title);
            let ratio = |pick: fn(&RequestFigures) -> &Stats| match (&base, p.spinners.is_some()) {
                (Some(b), true) => format!(" ({} of the baseline)", vs(pick(&p.requests), pick(b))),
                _ => String::new(),
            };
            println!(
                "    new connection each: {}{}{}",
                p.requests.fresh.ms(),
                failed(p.requests.fresh_failed),
                ratio(|r| &r.fresh)
            );
            println!(
                "    keep-alive:          {}{}{}",
                p.requests.keep_alive.ms(),
                failed(p.requests.keep_alive_failed),
                ratio(|r| &r.keep_alive)
            );
            if let Some(e) = &p.requests.first_error {
                println!("    first failure: {e}");
            }
            println!(
                "    the `up` process (agent, spinners and all) used {:.0}% of a core over {:.0} s before the requests, {:.0}% while they ran ({:.1} s){}",
                p.up_cores_before * 100.0,
                CPU_WINDOW.as_secs_f64(),
                p.up_cores_during * 100.0,
                p.wall.as_secs_f64(),
                match &p.spinners {
                    Some(s) => format!(
                        "; the spinners: {} of {} Running, creation→Running {}{}",
                        s.running,
                        s.pods,
                        s.to_running.ms(),
                        p.teardown.map_or(String::new(), |d| format!(
                            ", removed in {:.1} s",
                            d.as_secs_f64()
                        ))
                    ),
                    None => String::new(),
                }
            );
        }
        println!("goal: the http-echo request keeps answering within a bound while spinners run (issue 6 compares it with none running); limits.cpu should bound the spinners' share");
        if let Some(why) = &nb.stopped {
            println!("STOPPED EARLY: {why}");
        }
    }
    println!(
        "(knobs: WASMKUBE_BENCH_PODS={}, WASMKUBE_BENCH_CLIENTS={}, WASMKUBE_BENCH_INSTANCE_RUNS={}, WASMKUBE_BENCH_IDLE_PODS={}, WASMKUBE_BENCH_REQUESTS={})",
        opts.pods, opts.clients, opts.instance_runs, opts.idle_pods, opts.requests
    );
    println!("{}", "=".repeat(80));
}
