//! Scheduling benchmark (issue 4, "Speed"): not a test, it prints figures next to the
//! goals and never fails on them.
//!
//! One run starts a real etcd and the real `wasmkube server` binary (with its scheduler
//! and controllers) as separate processes, then:
//! 1. registers hollow nodes: Node objects, Ready with capacity and allocatable, and
//!    their Leases in `kube-node-lease`, renewed every [`LEASE_RENEW_INTERVAL`] by a
//!    few tasks for the whole run (no pod work: nothing here reports pods Running).
//!    They authenticate as a node (one joined with the cluster's join token, group
//!    `system:nodes`), as real agents do, so the server's flow control treats their
//!    traffic as node traffic;
//! 2. measures the baseline the scheduling figures are read against: raw pod creates
//!    and raw `pods/binding` posts from the bench itself, as many in flight as the
//!    scheduler allows itself ([`MAX_CONCURRENT_WRITES`]), on pods whose
//!    `schedulerName` the scheduler ignores;
//! 3. creates one Deployment and watches its pods: when each was first seen and when
//!    it was first seen with `spec.nodeName`, until all are bound.
//!
//! `cargo bench --bench scheduler` runs 1,000 nodes and 5,000 replicas. Smaller runs
//! (for debug builds: `cargo test --bench scheduler`): `--quick`, or `--nodes N`,
//! `--pods N`, `--baseline-pods N`, or the environment variables
//! `SCHED_BENCH_NODES`, `SCHED_BENCH_PODS`, `SCHED_BENCH_BASELINE_PODS`. `--keep` keeps
//! the temp dir (server and etcd logs); `--perf FILE` records the server with `perf
//! record` during the measured phase.

// Not every shared helper is used by this bench (the others need the rest).
#[allow(dead_code)]
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::mpsc;
use wasmkube_control::etcd_process::ManagedEtcd;
use wasmkube_control::scheduler::MAX_CONCURRENT_WRITES;

use common::{
    build, create_namespace, env_number, in_temp_dir, kube_client, load_average, ms,
    run_concurrently, start_server, status_mib, CpuMeter, PerfRecording, PhaseCpu, Rate, Server,
    Stats,
};

/// The namespace of the measured Deployment.
const NAMESPACE: &str = "sched-bench";
/// The namespace of the baseline's pods.
const BASELINE_NAMESPACE: &str = "sched-baseline";
/// Where node Leases live.
const LEASE_NAMESPACE: &str = "kube-node-lease";
/// A `schedulerName` nobody serves: the baseline's pods are left to the bench.
const BASELINE_SCHEDULER: &str = "bench-baseline";
/// How often each node's Lease is renewed (the kubelet's default; the node lifecycle
/// controller's grace period is 40 s).
const LEASE_RENEW_INTERVAL: Duration = Duration::from_secs(10);
/// Tasks renewing Leases, each for its share of the nodes.
const LEASE_RENEWERS: usize = 4;
/// Renewals one renewer task has in flight at most.
const RENEWALS_IN_FLIGHT: usize = 16;
/// Requests in flight while registering nodes.
const REGISTER_CONCURRENCY: usize = 32;
/// kube clients (connection pools) a concurrent phase spreads its requests over.
const CLIENTS: usize = 4;
/// How long the cluster gets to settle after registration (every node has a podCIDR).
const SETTLE_DEADLINE: Duration = Duration::from_secs(180);

/// Sizes and switches from the command line and the environment.
#[derive(Debug)]
struct Opts {
    nodes: usize,
    pods: usize,
    baseline_pods: usize,
    /// How long the Deployment's pods get to be bound before the run reports what it has.
    deadline: Duration,
    keep: bool,
    /// Records the server with `perf record` during the measured phase.
    perf: Option<PathBuf>,
}

impl Opts {
    /// Parses the arguments (anything unknown, such as cargo's `--bench`, is ignored),
    /// then lets the environment override them.
    fn parse() -> Result<Opts> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick");
        let mut opts = Opts {
            nodes: if quick { 100 } else { 1_000 },
            pods: if quick { 500 } else { 5_000 },
            baseline_pods: 0,
            deadline: Duration::from_secs(300),
            keep: false,
            perf: None,
        };
        let mut baseline = None;
        let number = |name: &str, value: Option<&String>| -> Result<usize> {
            value
                .with_context(|| format!("{name} needs a value"))?
                .parse()
                .with_context(|| format!("{name} must be a number"))
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--nodes" => opts.nodes = number("--nodes", it.next())?,
                "--pods" => opts.pods = number("--pods", it.next())?,
                "--baseline-pods" => baseline = Some(number("--baseline-pods", it.next())?),
                "--deadline-seconds" => {
                    opts.deadline =
                        Duration::from_secs(number("--deadline-seconds", it.next())? as u64)
                }
                "--keep" => opts.keep = true,
                "--perf" => {
                    opts.perf = Some(PathBuf::from(
                        it.next().context("--perf needs a file name")?,
                    ))
                }
                _ => {}
            }
        }
        if let Some(n) = env_number("SCHED_BENCH_NODES")? {
            opts.nodes = n;
        }
        if let Some(n) = env_number("SCHED_BENCH_PODS")? {
            opts.pods = n;
        }
        if let Some(n) = env_number("SCHED_BENCH_BASELINE_PODS")? {
            baseline = Some(n);
        }
        // As many as the measured Deployment, by default: the same number of writes.
        opts.baseline_pods = baseline.unwrap_or(opts.pods);
        if opts.nodes == 0 || opts.pods == 0 {
            bail!("--nodes and --pods must be at least 1");
        }
        Ok(opts)
    }
}

/// The server's request counters (`apiserver_request_total`) summed over codes, by
/// "VERB resource", from /metrics.
async fn request_counts(client: &Client) -> HashMap<String, f64> {
    let mut counts = HashMap::new();
    let Ok(req) = http::Request::get("/metrics").body(Vec::new()) else {
        return counts;
    };
    let Ok(text) = client.request_text(req).await else {
        return counts;
    };
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once(' ') else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('}').trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let key = format!("{} {}", label("verb"), label("resource"));
        *counts.entry(key).or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    counts
}

/// The counters that grew between two readings, largest first.
fn request_mix(before: &HashMap<String, f64>, after: &HashMap<String, f64>) -> Vec<(String, f64)> {
    let mut mix: Vec<(String, f64)> = after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, n)| *n > 0.0)
        .collect();
    mix.sort_by(|a, b| b.1.total_cmp(&a.1));
    mix
}

fn node_name(i: usize) -> String {
    format!("hollow-{i:04}")
}

/// A Node as a kubelet registers it: labels, capacity = allocatable, Ready.
fn hollow_node(name: &str) -> Result<Node> {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
        }},
    }))
    .context("build a hollow Node")
}

fn hollow_node_status(name: &str) -> serde_json::Value {
    let resources = json!({"cpu": "8", "memory": "32Gi", "pods": "110"});
    let now = Timestamp::now().to_string();
    json!({"status": {
        "capacity": resources,
        "allocatable": resources,
        "addresses": [
            {"type": "InternalIP", "address": "127.0.0.1"},
            {"type": "Hostname", "address": name},
        ],
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "kubelet is posting ready status",
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        }],
        "nodeInfo": {
            "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "hollow://0",
            "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "v1.33.0-hollow",
            "machineID": "", "operatingSystem": "linux", "osImage": "hollow", "systemUUID": "",
        },
    }})
}

fn node_lease(name: &str) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(LEASE_NAMESPACE.to_string()),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
            holder_identity: Some(name.to_string()),
            lease_duration_seconds: Some(40),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..Default::default()
        }),
    }
}

/// The pod template of the measured Deployment (and of the baseline's pods): one
/// container with requests, limits, a port and a probe, as a real workload has.
fn pod_template(app: &str) -> serde_json::Value {
    json!({
        "metadata": {"labels": {"app": app}},
        "spec": {"containers": [{
            "name": "app",
            "image": "registry.example.com/bench/app:1.2.3",
            "ports": [{"name": "http", "containerPort": 8080}],
            "resources": {
                "requests": {"cpu": "100m", "memory": "64Mi"},
                "limits": {"cpu": "500m", "memory": "128Mi"}
            },
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}}
        }]}
    })
}

/// Lease renewal counters shared by the renewer tasks.
struct Renewals {
    started: Instant,
    done: AtomicUsize,
    errors: AtomicUsize,
    /// Per node: when its Lease was last renewed, in ms since `started`.
    last_ms: Vec<AtomicU64>,
    /// The longest time between two renewals of one Lease, in ms.
    longest_gap_ms: AtomicU64,
}

impl Renewals {
    fn new(nodes: usize) -> Renewals {
        Renewals {
            started: Instant::now(),
            done: AtomicUsize::new(0),
            errors: AtomicUsize::new(0),
            last_ms: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
            longest_gap_ms: AtomicU64::new(0),
        }
    }

    fn renewed(&self, node: usize) {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_ms[node].swap(now, Ordering::Relaxed);
        self.longest_gap_ms
            .fetch_max(now.saturating_sub(last), Ordering::Relaxed);
        self.done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Renews every node's Lease each [`LEASE_RENEW_INTERVAL`], spread evenly over the
/// interval, from [`LEASE_RENEWERS`] tasks: what 1,000 kubelets' heartbeats cost the
/// server, without 1,000 tasks. A renewal does not wait for the previous one (a slow
/// server must not slow the heartbeats down, as it does not slow kubelets), up to
/// [`RENEWALS_IN_FLIGHT`] per task.
fn spawn_lease_renewers(
    clients: &[Client],
    nodes: usize,
    renewals: Arc<Renewals>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..LEASE_RENEWERS)
        .map(|r| {
            let leases: Api<Lease> =
                Api::namespaced(clients[r % clients.len()].clone(), LEASE_NAMESPACE);
            let mine: Vec<usize> = (r..nodes).step_by(LEASE_RENEWERS).collect();
            let renewals = renewals.clone();
            tokio::spawn(async move {
                if mine.is_empty() {
                    return;
                }
                let in_flight = Arc::new(tokio::sync::Semaphore::new(RENEWALS_IN_FLIGHT));
                let mut tick = tokio::time::interval(LEASE_RENEW_INTERVAL / mine.len() as u32);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                for &node in mine.iter().cycle() {
                    tick.tick().await;
                    let Ok(permit) = in_flight.clone().acquire_owned().await else {
                        return;
                    };
                    let leases = leases.clone();
                    let renewals = renewals.clone();
                    tokio::spawn(async move {
                        let patch = json!({"spec": {"renewTime": MicroTime(Timestamp::now())}});
                        match leases
                            .patch(
                                &node_name(node),
                                &PatchParams::default(),
                                &Patch::Merge(&patch),
                            )
                            .await
                        {
                            Ok(_) => renewals.renewed(node),
                            Err(_) => {
                                renewals.errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        drop(permit);
                    });
                }
            })
        })
        .collect()
}

/// What registering the nodes took.
struct Registration {
    rate: Rate,
    settled: Duration,
}

/// Registers the hollow nodes (Node, its status, its Lease) and waits until every node
/// has a podCIDR, so that the controllers' reaction to the registrations is over
/// before anything is measured.
async fn register_nodes(clients: &[Client], nodes: usize) -> Result<Registration> {
    let apis: Arc<Vec<(Api<Node>, Api<Lease>)>> = Arc::new(
        clients
            .iter()
            .map(|c| {
                (
                    Api::all(c.clone()),
                    Api::namespaced(c.clone(), LEASE_NAMESPACE),
                )
            })
            .collect(),
    );
    let rate = run_concurrently(nodes, REGISTER_CONCURRENCY, move |w, i| {
        let apis = apis.clone();
        async move {
            let (nodes, leases) = &apis[w % apis.len()];
            let name = node_name(i);
            nodes
                .create(&PostParams::default(), &hollow_node(&name)?)
                .await
                .with_context(|| format!("create node {name}"))?;
            nodes
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(&hollow_node_status(&name)),
                )
                .await
                .with_context(|| format!("report node {name} Ready"))?;
            leases
                .create(&PostParams::default(), &node_lease(&name))
                .await
                .with_context(|| format!("create the lease of {name}"))?;
            Ok(())
        }
    })
    .await;
    if rate.errors > 0 {
        bail!("{} of {nodes} nodes failed to register", rate.errors);
    }
    let started = Instant::now();
    let api: Api<Node> = Api::all(clients[0].clone());
    loop {
        let list = api
            .list(&ListParams::default())
            .await
            .context("list nodes")?;
        let with_cidr = list
            .items
            .iter()
            .filter(|n| n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_some())
            .count();
        if with_cidr >= nodes {
            break;
        }
        if started.elapsed() > SETTLE_DEADLINE {
            eprintln!("  warning: only {with_cidr} of {nodes} nodes got a podCIDR; going on");
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(Registration {
        rate,
        settled: started.elapsed(),
    })
}

/// The write ceiling: pod creates, then bindings of those pods, at the scheduler's
/// concurrency, on pods the scheduler ignores.
struct Baseline {
    creates: Rate,
    binds: Rate,
    cleanup: Duration,
}

async fn baseline(clients: &[Client], pods: usize, nodes: usize) -> Result<Baseline> {
    let apis: Arc<Vec<Api<Pod>>> = Arc::new(
        clients
            .iter()
            .map(|c| Api::namespaced(c.clone(), BASELINE_NAMESPACE))
            .collect(),
    );
    let mut template = pod_template("baseline");
    template["spec"]["schedulerName"] = json!(BASELINE_SCHEDULER);
    let template = Arc::new(template);
    let creates = {
        let apis = apis.clone();
        run_concurrently(pods, MAX_CONCURRENT_WRITES, move |w, i| {
            let api = apis[w % apis.len()].clone();
            let template = template.clone();
            async move {
                let mut pod = (*template).clone();
                pod["metadata"]["name"] = json!(format!("baseline-{i:05}"));
                let pod: Pod = serde_json::from_value(pod).context("build a baseline pod")?;
                api.create(&PostParams::default(), &pod)
                    .await
                    .with_context(|| format!("create baseline pod {i}"))?;
                Ok(())
            }
        })
        .await
    };
    let binds = {
        let apis = apis.clone();
        run_concurrently(pods, MAX_CONCURRENT_WRITES, move |w, i| {
            let api = apis[w % apis.len()].clone();
            async move {
                let name = format!("baseline-{i:05}");
                let binding = Binding {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(BASELINE_NAMESPACE.to_string()),
                        ..Default::default()
                    },
                    target: ObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Node".into()),
                        name: Some(node_name(i % nodes)),
                        ..Default::default()
                    },
                };
                api.create_subresource::<_, serde_json::Value>(
                    "binding",
                    &name,
                    &PostParams::default(),
                    &binding,
                )
                .await
                .with_context(|| format!("bind baseline pod {i}"))?;
                Ok(())
            }
        })
        .await
    };
    // Out of the way before the measured phase: gone at once (grace 0), all in one call.
    let started = Instant::now();
    let api: Api<Pod> = Api::namespaced(clients[0].clone(), BASELINE_NAMESPACE);
    api.delete_collection(
        &DeleteParams::default().grace_period(0),
        &ListParams::default(),
    )
    .await
    .context("delete the baseline pods")?;
    loop {
        let left = api
            .list_metadata(&ListParams::default().limit(1))
            .await
            .context("list baseline pods")?;
        if left.items.is_empty() {
            break;
        }
        if started.elapsed() > SETTLE_DEADLINE {
            eprintln!("  warning: baseline pods are still there; going on");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Baseline {
        creates,
        binds,
        cleanup: started.elapsed(),
    })
}

/// One pod as the bench's watch saw it.
#[derive(Debug, Clone)]
struct Seen {
    /// First seen at all (normally its ADDED event), since the Deployment's create.
    added: Duration,
    /// First seen with `spec.nodeName`.
    bound: Option<Duration>,
    node: String,
}

/// What the watch saw of the measured Deployment's pods.
#[derive(Default)]
struct Observed {
    pods: HashMap<String, Seen>,
    bound: usize,
}

/// Figures of the measured phase.
struct Scheduling {
    /// The Deployment create call itself.
    create_call: Duration,
    pods: Vec<Seen>,
    /// From the Deployment create to the last pod seen bound (if all were).
    all_bound: Option<Duration>,
    /// Progress samples: (time, pods seen, pods bound).
    timeline: Vec<(Duration, usize, usize)>,
}

async fn schedule_deployment(
    client: &Client,
    replicas: usize,
    deadline: Duration,
) -> Result<Scheduling> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let observed = Arc::new(Mutex::new(Observed::default()));
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(1);
    let origin = Arc::new(Mutex::new(None::<Instant>));
    let watch = {
        let observed = observed.clone();
        let origin = origin.clone();
        tokio::spawn(async move {
            let stream = watcher(pods, watcher::Config::default()).default_backoff();
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                let now = Instant::now();
                let event = match event {
                    Ok(event) => event,
                    Err(e) => {
                        eprintln!("  pod watch: {e}");
                        continue;
                    }
                };
                let pod = match event {
                    watcher::Event::InitDone => {
                        let _ = ready_tx.try_send(());
                        continue;
                    }
                    watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => pod,
                    watcher::Event::Init | watcher::Event::Delete(_) => continue,
                };
                let Some(start) = *origin.lock().unwrap_or_else(|e| e.into_inner()) else {
                    continue;
                };
                let at = now.saturating_duration_since(start);
                let Some(uid) = pod.metadata.uid.clone() else {
                    continue;
                };
                let node = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .filter(|n| !n.is_empty());
                let mut observed = observed.lock().unwrap_or_else(|e| e.into_inner());
                let Observed { pods, bound } = &mut *observed;
                let seen = pods.entry(uid).or_insert_with(|| Seen {
                    added: at,
                    bound: None,
                    node: String::new(),
                });
                if let (None, Some(node)) = (seen.bound, node) {
                    seen.bound = Some(at);
                    seen.node = node;
                    *bound += 1;
                }
            }
        })
    };
    ready_rx
        .recv()
        .await
        .context("the pod watch ended before its initial list")?;

    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "sched-bench", "namespace": NAMESPACE},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "sched-bench"}},
            "template": pod_template("sched-bench"),
        }
    }))
    .context("build the Deployment")?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let t0 = Instant::now();
    *origin.lock().unwrap_or_else(|e| e.into_inner()) = Some(t0);
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .context("create the Deployment")?;
    let create_call = t0.elapsed();

    let mut timeline = Vec::new();
    let mut last_print = Instant::now();
    let mut all_bound = None;
    loop {
        let (seen, bound, last_bind) = {
            let observed = observed.lock().unwrap_or_else(|e| e.into_inner());
            let last = observed.pods.values().filter_map(|s| s.bound).max();
            (observed.pods.len(), observed.bound, last)
        };
        let elapsed = t0.elapsed();
        if bound >= replicas {
            all_bound = last_bind;
            timeline.push((elapsed, seen, bound));
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            println!(
                "  {:>5.1} s: {seen} pods seen, {bound} bound",
                elapsed.as_secs_f64()
            );
            timeline.push((elapsed, seen, bound));
            last_print = Instant::now();
        }
        if elapsed > deadline {
            eprintln!("  deadline of {deadline:?} passed with {bound}/{replicas} pods bound");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watch.abort();
    let pods = observed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pods
        .values()
        .cloned()
        .collect();
    Ok(Scheduling {
        create_call,
        pods,
        all_bound,
        timeline,
    })
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let opts = Opts::parse()?;
    println!(
        "wasmkube scheduling benchmark: {} hollow nodes, a Deployment of {} replicas, baseline of {} pods ({} build)",
        opts.nodes,
        opts.pods,
        opts.baseline_pods,
        build()
    );
    in_temp_dir("wasmkube-sched-bench-", opts.keep, async |dir| {
        run(&opts, dir).await
    })
    .await
}

async fn run(opts: &Opts, dir: &Path) -> Result<()> {
    println!(
        "1-minute load average before starting: {:.2}",
        load_average()
    );
    let etcd = ManagedEtcd::start(&dir.join("etcd"))
        .await
        .context("start etcd")?;
    let server = start_server(dir, &["--etcd-servers".into(), etcd.client_url()]).await?;
    let outcome = measure(opts, etcd.pid(), &server, dir).await;
    server.proc.stop().await;
    etcd.stop().await;
    outcome
}

/// API clients authenticated as one node, joined with the server's join token: the
/// hollow nodes' credential.
async fn node_clients(server: &Server, dir: &Path) -> Result<Vec<Client>> {
    let token = std::fs::read_to_string(server.data_dir.join("join-token"))
        .context("read the join token")?;
    let url = server.config.cluster_url.to_string();
    let creds = wasmkube_runtime::agent::bootstrap::credentials(
        &dir.join("hollow-node"),
        url.trim_end_matches('/'),
        "hollow-fleet",
        &[std::net::IpAddr::from([127, 0, 0, 1])],
        Some(token.trim()),
        Some(&server.data_dir.join("pki/ca.crt")),
    )
    .await
    .context("join as the hollow nodes' node")?;
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(creds.client().await?);
    }
    Ok(clients)
}

async fn measure(opts: &Opts, etcd_pid: Option<u32>, server: &Server, dir: &Path) -> Result<()> {
    let clients: Vec<Client> = (0..CLIENTS)
        .map(|_| kube_client(&server.config))
        .collect::<Result<_>>()?;
    let node_clients = node_clients(server, dir).await?;
    for name in [NAMESPACE, BASELINE_NAMESPACE] {
        create_namespace(&clients[0], name).await?;
    }
    // etcd is a process of its own here, not a child of the server.
    let server_pid = server.proc.pid;
    let mut cpu_of = vec![("server".to_string(), server_pid)];
    cpu_of.extend(etcd_pid.map(|p| ("etcd".to_string(), p)));

    println!("registering {} hollow nodes…", opts.nodes);
    let meter = CpuMeter::start(&cpu_of);
    let registration = register_nodes(&node_clients, opts.nodes).await?;
    let register_cpu = meter.finish();
    println!(
        "  {:.0} nodes/s; every node has a podCIDR {:.1} s later",
        registration.rate.per_sec,
        registration.settled.as_secs_f64()
    );
    let renewals = Arc::new(Renewals::new(opts.nodes));
    let renewers = spawn_lease_renewers(&node_clients, opts.nodes, renewals.clone());

    println!(
        "baseline: {} pod creates, then their bindings, {MAX_CONCURRENT_WRITES} in flight…",
        opts.baseline_pods
    );
    let meter = CpuMeter::start(&cpu_of);
    let base = if opts.baseline_pods > 0 {
        Some(baseline(&clients, opts.baseline_pods, opts.nodes).await?)
    } else {
        None
    };
    let baseline_cpu = meter.finish();
    if let Some(b) = &base {
        println!(
            "  creates {:.0}/s, binds {:.0}/s (cleanup {:.1} s)",
            b.creates.per_sec,
            b.binds.per_sec,
            b.cleanup.as_secs_f64()
        );
    }

    println!("Deployment of {} replicas…", opts.pods);
    let requests_before = request_counts(&clients[1 % CLIENTS]).await;
    let perf = match &opts.perf {
        Some(out) => Some(PerfRecording::start(server_pid, out)?),
        None => None,
    };
    let meter = CpuMeter::start(&cpu_of);
    let scheduling = schedule_deployment(&clients[0], opts.pods, opts.deadline).await?;
    let scheduling_cpu = meter.finish();
    if let Some(perf) = perf {
        perf.stop().await?;
    }
    let requests = request_mix(
        &requests_before,
        &request_counts(&clients[1 % CLIENTS]).await,
    );
    let renew_rate =
        renewals.done.load(Ordering::Relaxed) as f64 / renewals.started.elapsed().as_secs_f64();
    for task in renewers {
        task.abort();
    }

    print_report(
        opts,
        &Report {
            registration,
            baseline: base,
            scheduling,
            renewals: &renewals,
            renew_rate,
            requests,
            rss: status_mib(server_pid, "VmRSS:").unwrap_or(0.0),
            cpu: [
                ("register nodes", register_cpu),
                ("baseline", baseline_cpu),
                ("scheduling", scheduling_cpu),
            ],
        },
    );
    Ok(())
}

struct Report<'a> {
    registration: Registration,
    baseline: Option<Baseline>,
    scheduling: Scheduling,
    renewals: &'a Renewals,
    renew_rate: f64,
    /// Requests the server answered during the measured phase.
    requests: Vec<(String, f64)>,
    rss: f64,
    cpu: [(&'static str, PhaseCpu); 3],
}

/// The time by which `q` of the sorted `times` had happened.
fn quantile(times: &[Duration], q: f64) -> Duration {
    if times.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((times.len() as f64 * q).ceil() as usize).saturating_sub(1);
    times[idx.min(times.len() - 1)]
}

fn print_report(opts: &Opts, r: &Report<'_>) {
    let build = if cfg!(debug_assertions) {
        " [DEBUG build: not representative]"
    } else {
        ""
    };
    let s = &r.scheduling;
    let mut added: Vec<Duration> = s.pods.iter().map(|p| p.added).collect();
    added.sort_unstable();
    let mut bound: Vec<Duration> = s.pods.iter().filter_map(|p| p.bound).collect();
    bound.sort_unstable();
    let mut latency: Vec<Duration> = s
        .pods
        .iter()
        .filter_map(|p| p.bound.map(|b| b.saturating_sub(p.added)))
        .collect();
    let latency = Stats::of(&mut latency);
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for p in s.pods.iter().filter(|p| p.bound.is_some()) {
        *per_node.entry(p.node.as_str()).or_default() += 1;
    }
    let mut spread: Vec<usize> = per_node.values().copied().collect();
    spread.sort_unstable();

    println!();
    println!("==================== wasmkube scheduling benchmark{build} ====================");
    println!(
        "nodes:           {} hollow nodes registered at {:.0}/s (node + status + lease; {} errors), settled {:.1} s later",
        opts.nodes,
        r.registration.rate.per_sec,
        r.registration.rate.errors,
        r.registration.settled.as_secs_f64()
    );
    println!(
        "                 leases renewed every {} s by {LEASE_RENEWERS} tasks: {:.0} renewals/s during the run, {} errors, longest gap between two renewals of a lease {:.1} s (grace period 40 s)",
        LEASE_RENEW_INTERVAL.as_secs(),
        r.renew_rate,
        r.renewals.errors.load(Ordering::Relaxed),
        r.renewals.longest_gap_ms.load(Ordering::Relaxed) as f64 / 1000.0
    );
    match &r.baseline {
        Some(b) => {
            let pair = 1.0
                / (1.0 / b.creates.per_sec.max(f64::MIN_POSITIVE)
                    + 1.0 / b.binds.per_sec.max(f64::MIN_POSITIVE));
            println!(
                "baseline:        raw pod creates {:.0}/s (p50 {:.1} ms, p99 {:.1} ms, {} errors); raw bindings {:.0}/s (p50 {:.1} ms, p99 {:.1} ms, {} errors)",
                b.creates.per_sec,
                ms(b.creates.latency.p50),
                ms(b.creates.latency.p99),
                b.creates.errors,
                b.binds.per_sec,
                ms(b.binds.latency.p50),
                ms(b.binds.latency.p99),
                b.binds.errors
            );
            println!(
                "                 {} pods each, {MAX_CONCURRENT_WRITES} requests in flight (the scheduler's limit); create + bind back to back: {pair:.0} pods/s — the API's ceiling for create-then-schedule",
                b.creates.latency.count
            );
        }
        None => println!("baseline:        skipped (--baseline-pods 0)"),
    }
    let total = opts.pods;
    println!(
        "deployment:      {} replicas; {} pods seen, {} bound (Deployment create call {:.1} ms)",
        total,
        s.pods.len(),
        bound.len(),
        ms(s.create_call)
    );
    match s.all_bound {
        Some(t) => println!(
            "                 all {total} bound {:.2} s after the Deployment create — goal ≤ 10 s",
            t.as_secs_f64()
        ),
        None => println!(
            "                 NOT all bound: {}/{total} within the {} s deadline — goal all within 10 s",
            bound.len(),
            opts.deadline.as_secs()
        ),
    }
    let end = s.all_bound.or(bound.last().copied()).unwrap_or_default();
    let overall = bound.len() as f64 / end.as_secs_f64().max(1e-9);
    let (b10, b90) = (quantile(&bound, 0.10), quantile(&bound, 0.90));
    let steady = (bound.len() as f64 * 0.8) / b90.saturating_sub(b10).as_secs_f64().max(1e-9);
    let vs = |rate: f64| match &r.baseline {
        Some(b) if b.binds.per_sec > 0.0 => {
            format!(" ({:.2}× the raw binding rate)", rate / b.binds.per_sec)
        }
        _ => String::new(),
    };
    println!(
        "throughput:      {overall:.0} pods/s from the Deployment create to the last binding{}; {steady:.0} pods/s between the 10th and 90th percentile bindings — goal ≥ 1000 pods/s (kube-scheduler ~300)",
        vs(overall)
    );
    println!(
        "creation→bound:  p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} pods (pod first seen by this watch → first seen with spec.nodeName)",
        ms(latency.p50),
        ms(latency.p99),
        ms(latency.max),
        latency.count
    );
    let (a0, a50, a100) = (
        added.first().copied().unwrap_or_default(),
        quantile(&added, 0.5),
        added.last().copied().unwrap_or_default(),
    );
    println!(
        "pod creation:    first pod seen {:.2} s after the Deployment create, half by {:.2} s, last at {:.2} s ({:.0} pods/s by the ReplicaSet controller)",
        a0.as_secs_f64(),
        a50.as_secs_f64(),
        a100.as_secs_f64(),
        added.len() as f64 / a100.saturating_sub(a0).as_secs_f64().max(1e-9)
    );
    if !spread.is_empty() {
        println!(
            "placement:       {} nodes used; pods per node min {}, median {}, max {}",
            spread.len(),
            spread[0],
            spread[spread.len() / 2],
            spread[spread.len() - 1]
        );
    }
    let timeline: Vec<String> = s
        .timeline
        .iter()
        .map(|(t, seen, bound)| format!("{:.0}s {seen}/{bound}", t.as_secs_f64()))
        .collect();
    println!("timeline:        (seen/bound) {}", timeline.join(", "));
    let mix: Vec<String> = r
        .requests
        .iter()
        .take(12)
        .map(|(k, n)| format!("{k} {n:.0}"))
        .collect();
    println!(
        "requests:        during the measured phase: {}",
        mix.join(", ")
    );
    println!("server RSS:      {:.1} MiB at the end", r.rss);
    println!(
        "CPU seconds per phase (server / etcd / this client; 1-min load average before → after):"
    );
    for (name, cpu) in &r.cpu {
        println!(
            "                 {name:<15} {:>6.1} / {:>5.1} / {:>5.1}   load {:.2} → {:.2}",
            cpu.of("server"),
            cpu.of("etcd"),
            cpu.bench,
            cpu.load_before,
            cpu.load_after
        );
    }
    let c = &r.cpu[2].1;
    println!(
        "                 per scheduled pod: server {:.2} ms CPU, etcd {:.2} ms",
        c.of("server") * 1e3 / total as f64,
        c.of("etcd") * 1e3 / total as f64
    );
    println!("{}", "=".repeat(85));
}
