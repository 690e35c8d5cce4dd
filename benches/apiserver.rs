//! API server benchmark (issue 2, "Speed"): not a test, it prints figures next to the
//! goals and never fails on them.
//!
//! One run starts a real etcd and the real `wasmkube server` binary as a separate
//! process, then measures, in order:
//! 1. raw etcd puts through etcd-client (the baseline the create rate is compared with),
//!    with values as large as a stored pod;
//! 2. pod creates through kube-rs from 32 concurrent clients;
//! 3. listing every pod of the namespace (typed through kube-rs, raw JSON, raw Table);
//! 4. the server's RSS with all pods stored;
//! 5. how long one change takes to reach every one of many open watches.
//!
//! `cargo bench --bench apiserver` runs the full sizes; `--quick` runs small ones (for
//! debug builds). `--pods N`, `--watches N`, `--clients N` override the sizes, `--keep`
//! keeps the temp dir (server and etcd logs), `--perf FILE` records the server with
//! `perf record` during the create phase. `WASMKUBE_BENCH_SERVER_ARGS` adds arguments
//! to the server's command line (e.g. `--max-workload-requests-inflight 0`).

// Not every shared helper is used by this bench (the others need the rest).
#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::{Api, Client, Config};
use tokio::sync::mpsc;
use wasmkube_control::etcd_process::ManagedEtcd;

use common::{
    build, create_namespace, in_temp_dir, kube_client, load_average, ms, rss_mib, run_concurrently,
    start_server, CpuMeter, PerfRecording, PhaseCpu, Rate, Server, Stats,
};

/// The namespace every benchmark pod lives in.
const NAMESPACE: &str = "bench";
/// How long one watch round waits for the stragglers before counting them as missed.
const WATCH_ROUND_DEADLINE: Duration = Duration::from_secs(15);
/// Measured watch rounds (after one warm-up round).
const WATCH_ROUNDS: usize = 5;
/// Timed list repetitions (after one warm-up list).
const LIST_REPEATS: usize = 5;
/// How many watches are being opened at the same time (1,000 TLS handshakes at once
/// would measure the handshake storm, not the watch).
const WATCH_OPEN_PARALLELISM: usize = 50;
/// kube clients (each with its own connection pool) the watches are spread over.
const WATCH_CLIENTS: usize = 4;
/// The pod whose label the watch rounds change.
const WATCH_TARGET: &str = "bench-00000";

const ACCEPT_TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

/// Sizes and switches from the command line.
#[derive(Debug)]
struct Opts {
    pods: usize,
    watches: usize,
    clients: usize,
    keep: bool,
    perf: Option<PathBuf>,
}

impl Opts {
    /// Parses the arguments; anything unknown (cargo passes `--bench`) is ignored.
    fn parse() -> Result<Opts> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick");
        let mut opts = Opts {
            pods: if quick { 1_000 } else { 10_000 },
            watches: if quick { 200 } else { 1_000 },
            clients: 32,
            keep: false,
            perf: None,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .with_context(|| format!("{name} needs a value"))
                    .cloned()
            };
            match arg.as_str() {
                "--pods" => opts.pods = value("--pods")?.parse().context("--pods")?,
                "--watches" => opts.watches = value("--watches")?.parse().context("--watches")?,
                "--clients" => opts.clients = value("--clients")?.parse().context("--clients")?,
                "--perf" => opts.perf = Some(PathBuf::from(value("--perf")?)),
                "--keep" => opts.keep = true,
                _ => {}
            }
        }
        if opts.pods == 0 || opts.clients == 0 {
            bail!("--pods and --clients must be at least 1");
        }
        Ok(opts)
    }
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

/// A small but realistic pod: labels, annotations, one container with ports, env,
/// resources and a probe.
fn bench_pod(i: usize) -> Result<Pod> {
    let name = format!("bench-{i:05}");
    let value = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {"app": "bench", "tier": "backend", "shard": format!("s{}", i % 16)},
            "annotations": {"bench.wasmkube.io/index": i.to_string()}
        },
        "spec": {
            "containers": [{
                "name": "app",
                "image": "registry.example.com/bench/app:1.2.3",
                "args": ["--listen", ":8080", "--log-level", "info"],
                "ports": [{"name": "http", "containerPort": 8080}],
                "env": [
                    {"name": "MODE", "value": "bench"},
                    {"name": "INDEX", "value": i.to_string()}
                ],
                "resources": {
                    "requests": {"cpu": "100m", "memory": "64Mi"},
                    "limits": {"cpu": "500m", "memory": "128Mi"}
                },
                "readinessProbe": {
                    "httpGet": {"path": "/healthz", "port": 8080},
                    "periodSeconds": 5
                }
            }]
        }
    });
    serde_json::from_value(value).context("build the bench pod")
}

async fn raw_etcd_puts(
    etcd: &etcd_client::Client,
    total: usize,
    clients: usize,
    size: usize,
) -> Rate {
    let value = Arc::new(vec![b'x'; size]);
    let kvs: Vec<etcd_client::KvClient> = (0..clients).map(|_| etcd.kv_client()).collect();
    let kvs = Arc::new(kvs);
    run_concurrently(total, clients, move |w, i| {
        let mut kv = kvs[w].clone();
        let value = value.clone();
        async move {
            kv.put(format!("/bench-raw/{i:05}"), value.as_slice(), None)
                .await
                .context("etcd put")?;
            Ok(())
        }
    })
    .await
}

/// What a create costs etcd when done by hand: a read of the namespace key and a
/// create-if-absent transaction, the two calls the server makes per pod create.
/// `with_get: false` leaves the read out, to show what the transaction alone costs.
async fn raw_etcd_create_equivalents(
    etcd: &etcd_client::Client,
    total: usize,
    clients: usize,
    size: usize,
    with_get: bool,
) -> Rate {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    let value = Arc::new(vec![b'x'; size]);
    let kvs: Vec<etcd_client::KvClient> = (0..clients).map(|_| etcd.kv_client()).collect();
    let kvs = Arc::new(kvs);
    run_concurrently(total, clients, move |w, i| {
        let mut kv = kvs[w].clone();
        let value = value.clone();
        async move {
            if with_get {
                kv.get(format!("/registry/namespaces/{NAMESPACE}"), None)
                    .await
                    .context("etcd get")?;
            }
            let key = format!("/bench-raw2/{with_get}/{i:05}");
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.as_str(), value.as_slice(), None)]);
            kv.txn(txn).await.context("etcd txn")?;
            Ok(())
        }
    })
    .await
}

/// The server's etcd call counters (`etcd_request_duration_seconds_count`/`_sum`) by
/// operation, from /metrics.
async fn etcd_calls(client: &Client) -> Vec<(String, f64, f64)> {
    let Ok(req) = http::Request::get("/metrics").body(Vec::new()) else {
        return Vec::new();
    };
    let Ok(text) = client.request_text(req).await else {
        return Vec::new();
    };
    let mut calls: Vec<(String, f64, f64)> = Vec::new();
    for line in text.lines() {
        for (suffix, is_count) in [("_count{", true), ("_sum{", false)] {
            let Some(rest) = line.strip_prefix(&format!("etcd_request_duration_seconds{suffix}"))
            else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once(' ') else {
                continue;
            };
            let value: f64 = value.parse().unwrap_or(0.0);
            let op = labels.trim_end_matches('}').to_string();
            let entry = match calls.iter_mut().find(|c| c.0 == op) {
                Some(e) => e,
                None => {
                    calls.push((op, 0.0, 0.0));
                    let last = calls.len() - 1;
                    &mut calls[last]
                }
            };
            if is_count {
                entry.1 = value;
            } else {
                entry.2 = value;
            }
        }
    }
    calls
}

async fn pod_creates(config: &Config, total: usize, clients: usize) -> Result<Rate> {
    let mut apis = Vec::with_capacity(clients);
    for _ in 0..clients {
        let client = Client::try_from(config.clone()).context("build a kube client")?;
        apis.push(Api::<Pod>::namespaced(client, NAMESPACE));
    }
    let apis = Arc::new(apis);
    Ok(run_concurrently(total, clients, move |w, i| {
        let api = apis[w].clone();
        async move {
            let pod = bench_pod(i)?;
            api.create(&PostParams::default(), &pod)
                .await
                .with_context(|| format!("create pod {i}"))?;
            Ok(())
        }
    })
    .await)
}

/// Figures of the list phase.
#[derive(Debug, Default)]
struct ListFigures {
    typed: Duration,
    typed_min: Duration,
    typed_max: Duration,
    items: usize,
    raw_json: Duration,
    raw_json_bytes: usize,
    table: Duration,
    table_bytes: usize,
    resource_version: String,
}

async fn list_pods(client: &Client, expected: usize) -> Result<ListFigures> {
    let api = Api::<Pod>::namespaced(client.clone(), NAMESPACE);
    let path = format!("/api/v1/namespaces/{NAMESPACE}/pods");
    // Warm-up: connection, TLS, and whatever the server caches on first use.
    let first = api
        .list(&ListParams::default())
        .await
        .context("list pods")?;
    let mut figures = ListFigures {
        items: first.items.len(),
        resource_version: first.metadata.resource_version.clone().unwrap_or_default(),
        ..ListFigures::default()
    };
    if figures.items != expected {
        eprintln!(
            "  warning: the list returned {} pods, expected {expected}",
            figures.items
        );
    }
    let mut typed = Vec::new();
    for _ in 0..LIST_REPEATS {
        let t = Instant::now();
        let list = api
            .list(&ListParams::default())
            .await
            .context("list pods")?;
        typed.push(t.elapsed());
        figures.items = list.items.len();
    }
    figures.typed_min = typed.iter().copied().min().unwrap_or_default();
    figures.typed_max = typed.iter().copied().max().unwrap_or_default();
    figures.typed = median(&mut typed);

    let raw = |accept: &'static str| {
        let path = path.clone();
        async move {
            let mut times = Vec::new();
            let mut bytes = 0;
            for _ in 0..=LIST_REPEATS {
                let req = http::Request::get(&path)
                    .header(http::header::ACCEPT, accept)
                    .body(Vec::new())
                    .context("build a list request")?;
                let t = Instant::now();
                let text = client.request_text(req).await.context("raw list")?;
                times.push(t.elapsed());
                bytes = text.len();
            }
            // The first one was the warm-up.
            times.remove(0);
            Ok::<_, anyhow::Error>((median(&mut times), bytes))
        }
    };
    (figures.raw_json, figures.raw_json_bytes) = raw("application/json").await?;
    match raw(ACCEPT_TABLE).await {
        Ok((t, b)) => (figures.table, figures.table_bytes) = (t, b),
        Err(e) => eprintln!("  table list failed: {e:#}"),
    }
    Ok(figures)
}

/// What a watcher reports to the benchmark.
enum WatchReport {
    Ready,
    Saw { round: usize, at: Instant },
    Failed(String),
}

/// One watch round's figures.
#[derive(Debug, Default)]
struct WatchRound {
    received: usize,
    latency: Stats,
    change: Duration,
}

/// Figures of the watch phase.
#[derive(Debug, Default)]
struct WatchFigures {
    watchers: usize,
    ready: usize,
    open_time: Duration,
    rounds: Vec<WatchRound>,
    all: Stats,
    rss_mib: f64,
}

async fn watch_fanout(
    config: &Config,
    client: &Client,
    server: &Server,
    watchers: usize,
    resource_version: &str,
) -> Result<WatchFigures> {
    let mut figures = WatchFigures {
        watchers,
        ..WatchFigures::default()
    };
    if watchers == 0 {
        return Ok(figures);
    }
    let mut clients = Vec::new();
    for _ in 0..WATCH_CLIENTS {
        clients.push(Client::try_from(config.clone()).context("build a kube client")?);
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<WatchReport>();
    let opening = Arc::new(tokio::sync::Semaphore::new(WATCH_OPEN_PARALLELISM));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(watchers);
    for w in 0..watchers {
        let api = Api::<Pod>::namespaced(clients[w % WATCH_CLIENTS].clone(), NAMESPACE);
        let tx = tx.clone();
        let opening = opening.clone();
        let rv = resource_version.to_string();
        tasks.push(tokio::spawn(async move {
            let stream = {
                let _permit = opening.acquire().await;
                api.watch(&WatchParams::default().timeout(290), &rv).await
            };
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(WatchReport::Failed(format!("{e:#}")));
                    return;
                }
            };
            let _ = tx.send(WatchReport::Ready);
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(WatchEvent::Modified(pod)) => {
                        let at = Instant::now();
                        if pod.metadata.name.as_deref() != Some(WATCH_TARGET) {
                            continue;
                        }
                        let round = pod
                            .metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get("round"))
                            .and_then(|r| r.parse().ok());
                        if let Some(round) = round {
                            let _ = tx.send(WatchReport::Saw { round, at });
                        }
                    }
                    Ok(WatchEvent::Error(e)) => {
                        let _ = tx.send(WatchReport::Failed(format!("watch error event: {e:?}")));
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(WatchReport::Failed(format!("{e:#}")));
                        return;
                    }
                }
            }
        }));
    }
    drop(tx);

    // Wait until every watch is open (or failed).
    let mut failed = 0;
    while figures.ready + failed < watchers {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(WatchReport::Ready)) => figures.ready += 1,
            Ok(Some(WatchReport::Failed(e))) => {
                if failed < 5 {
                    eprintln!("  watch failed: {e}");
                }
                failed += 1;
            }
            Ok(Some(WatchReport::Saw { .. })) => {}
            Ok(None) | Err(_) => break,
        }
    }
    figures.open_time = started.elapsed();
    println!(
        "  {} of {watchers} watches open after {:.0} ms; RSS now {:.1} MiB",
        figures.ready,
        ms(figures.open_time),
        rss_mib(server.proc.pid).map(|r| r.0).unwrap_or(0.0)
    );

    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE);
    let mut all = Vec::new();
    // Round 0 is a warm-up.
    for round in 0..=WATCH_ROUNDS {
        let patch = serde_json::json!({"metadata": {"labels": {"round": round.to_string()}}});
        let t0 = Instant::now();
        pods.patch(WATCH_TARGET, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .context("patch the watch target")?;
        let change = t0.elapsed();
        let mut latencies = Vec::with_capacity(figures.ready);
        let deadline = tokio::time::Instant::now() + WATCH_ROUND_DEADLINE;
        while latencies.len() < figures.ready {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(WatchReport::Saw { round: r, at })) if r == round => {
                    latencies.push(at.duration_since(t0));
                }
                Ok(Some(WatchReport::Failed(e))) => eprintln!("  watch failed: {e}"),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        let received = latencies.len();
        if round > 0 {
            all.extend(latencies.iter().copied());
        }
        let stats = Stats::of(&mut latencies);
        println!(
            "  watch round {round}{}: {received}/{} received; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (patch took {:.1} ms)",
            if round == 0 { " (warm-up)" } else { "" },
            figures.ready,
            ms(stats.p50),
            ms(stats.p99),
            ms(stats.max),
            ms(change)
        );
        if round > 0 {
            figures.rounds.push(WatchRound {
                received,
                latency: stats,
                change,
            });
        }
    }
    figures.all = Stats::of(&mut all);
    figures.rss_mib = rss_mib(server.proc.pid).map(|r| r.0).unwrap_or(0.0);
    for task in tasks {
        task.abort();
    }
    Ok(figures)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let opts = Opts::parse()?;
    println!(
        "wasmkube API server benchmark: {} pods, {} concurrent clients, {} watches ({} build)",
        opts.pods,
        opts.clients,
        opts.watches,
        build()
    );
    in_temp_dir("wasmkube-bench-", opts.keep, async |dir| {
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
    let etcd_url = etcd.client_url();
    println!("etcd at {etcd_url}");
    let args: Vec<String> = vec![
        "--etcd-servers".into(),
        etcd_url.clone(),
        "--disable-controllers".into(),
        "--disable-scheduler".into(),
    ];
    let server = start_server(dir, &args).await?;
    let outcome = measure(opts, &etcd_url, etcd.pid(), &server).await;
    server.proc.stop().await;
    etcd.stop().await;
    outcome
}

async fn measure(
    opts: &Opts,
    etcd_url: &str,
    etcd_pid: Option<u32>,
    server: &Server,
) -> Result<()> {
    let config = server.config.clone();
    let client = kube_client(&config)?;
    let etcd = etcd_client::Client::connect([etcd_url], None)
        .await
        .context("connect to etcd")?;

    create_namespace(&client, NAMESPACE).await?;
    // The server runs without controllers, so nobody creates the namespace's `default`
    // ServiceAccount, which pod admission requires (as in Kubernetes).
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), NAMESPACE);
    let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}
    }))?;
    accounts
        .create(&PostParams::default(), &sa)
        .await
        .context("create the bench namespace's default ServiceAccount")?;
    let rss_idle = rss_mib(server.proc.pid)?.0;
    // etcd is a process of its own here, not a child of the server.
    let mut cpu_of = vec![("server".to_string(), server.proc.pid)];
    cpu_of.extend(etcd_pid.map(|p| ("etcd".to_string(), p)));

    // The raw baseline writes values as large as a stored pod: store one and look.
    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE);
    let mut probe = bench_pod(99_999)?;
    probe.metadata.name = Some("size-probe".into());
    pods.create(&PostParams::default(), &probe)
        .await
        .context("create the probe pod")?;
    let stored = etcd
        .kv_client()
        .get(format!("/registry/pods/{NAMESPACE}/size-probe"), None)
        .await
        .context("read the probe pod from etcd")?;
    let pod_size = match stored.kvs().first() {
        Some(kv) => kv.value().len(),
        None => {
            eprintln!("  warning: the probe pod is not at /registry/pods/{NAMESPACE}/size-probe; using 1 KiB values");
            1024
        }
    };
    pods.delete("size-probe", &DeleteParams::default().grace_period(0))
        .await
        .context("delete the probe pod")?;

    println!(
        "raw etcd puts: {} × {pod_size} B from {} tasks…",
        opts.pods, opts.clients
    );
    let meter = CpuMeter::start(&cpu_of);
    let raw = raw_etcd_puts(&etcd, opts.pods, opts.clients, pod_size).await;
    let raw_cpu = meter.finish();
    etcd.kv_client()
        .delete(
            "/bench-raw/",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .context("clean up the raw keys")?;
    println!("  {:.0}/s", raw.per_sec);
    println!(
        "raw etcd create-equivalents (get + txn): {} from {} tasks…",
        opts.pods, opts.clients
    );
    let meter = CpuMeter::start(&cpu_of);
    let raw_create =
        raw_etcd_create_equivalents(&etcd, opts.pods, opts.clients, pod_size, true).await;
    let raw_create_cpu = meter.finish();
    println!("  {:.0}/s", raw_create.per_sec);
    println!(
        "raw etcd create-if-absent txns alone: {} from {} tasks…",
        opts.pods, opts.clients
    );
    let meter = CpuMeter::start(&cpu_of);
    let raw_create_ser =
        raw_etcd_create_equivalents(&etcd, opts.pods, opts.clients, pod_size, false).await;
    let raw_create_ser_cpu = meter.finish();
    etcd.kv_client()
        .delete(
            "/bench-raw2/",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .context("clean up the raw keys")?;
    println!("  {:.0}/s", raw_create_ser.per_sec);
    let calls_before = etcd_calls(&client).await;

    println!("pod creates: {} from {} clients…", opts.pods, opts.clients);
    let perf = match &opts.perf {
        Some(out) => Some(PerfRecording::start(server.proc.pid, out)?),
        None => None,
    };
    let meter = CpuMeter::start(&cpu_of);
    let creates = pod_creates(&config, opts.pods, opts.clients).await?;
    let creates_cpu = meter.finish();
    if let Some(perf) = perf {
        perf.stop().await?;
    }
    println!("  {:.0}/s", creates.per_sec);
    let calls_after = etcd_calls(&client).await;
    let create_calls: Vec<(String, f64, f64)> = calls_after
        .iter()
        .map(|(op, n, sum)| {
            let (n0, s0) = calls_before
                .iter()
                .find(|c| &c.0 == op)
                .map(|c| (c.1, c.2))
                .unwrap_or((0.0, 0.0));
            (op.clone(), n - n0, sum - s0)
        })
        .filter(|c| c.1 > 0.0)
        .collect();
    let rss_after_creates = rss_mib(server.proc.pid)?.0;

    println!("list {} pods…", opts.pods);
    let meter = CpuMeter::start(&cpu_of);
    let list = list_pods(&client, opts.pods).await?;
    let list_cpu = meter.finish();
    let (rss_stored, hwm_stored) = rss_mib(server.proc.pid)?;

    println!("{} watches…", opts.watches);
    let meter = CpuMeter::start(&cpu_of);
    let watch = watch_fanout(
        &config,
        &client,
        server,
        opts.watches,
        &list.resource_version,
    )
    .await?;
    let watch_cpu = meter.finish();
    let (_, hwm_end) = rss_mib(server.proc.pid)?;

    print_report(
        opts,
        &Report {
            pod_size,
            raw,
            creates,
            list,
            watch,
            rss_idle,
            rss_after_creates,
            rss_stored,
            hwm_stored,
            hwm_end,
            raw_create,
            raw_create_ser,
            create_calls,
            cpu: [
                ("raw etcd puts", raw_cpu),
                ("raw get+txn", raw_create_cpu),
                ("raw txn only", raw_create_ser_cpu),
                ("pod creates", creates_cpu),
                ("lists", list_cpu),
                ("watches", watch_cpu),
            ],
        },
    );
    Ok(())
}

struct Report {
    pod_size: usize,
    raw: Rate,
    creates: Rate,
    list: ListFigures,
    watch: WatchFigures,
    rss_idle: f64,
    rss_after_creates: f64,
    rss_stored: f64,
    hwm_stored: f64,
    hwm_end: f64,
    raw_create: Rate,
    raw_create_ser: Rate,
    create_calls: Vec<(String, f64, f64)>,
    cpu: [(&'static str, PhaseCpu); 6],
}

fn print_report(opts: &Opts, r: &Report) {
    let build = if cfg!(debug_assertions) {
        " [DEBUG build: not representative]"
    } else {
        ""
    };
    println!();
    println!("==================== wasmkube API server benchmark{build} ====================");
    println!(
        "raw etcd puts:   {:.0}/s (p50 {:.1} ms, p99 {:.1} ms) — {} puts of {} B, {} tasks, {} errors",
        r.raw.per_sec,
        ms(r.raw.latency.p50),
        ms(r.raw.latency.p99),
        r.raw.latency.count,
        r.pod_size,
        opts.clients,
        r.raw.errors
    );
    println!(
        "pod creates:     {:.0}/s (p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms) — goal ≥1000/s, p99 ≤ 50 ms; {:.2}× raw etcd puts ({:.0}/s); {} pods in {:.1} s, {} errors",
        r.creates.per_sec,
        ms(r.creates.latency.p50),
        ms(r.creates.latency.p99),
        ms(r.creates.latency.max),
        r.creates.per_sec / r.raw.per_sec.max(f64::MIN_POSITIVE),
        r.raw.per_sec,
        r.creates.latency.count,
        r.creates.wall.as_secs_f64(),
        r.creates.errors
    );
    println!(
        "                 {:.2}× raw etcd get+txn pairs ({:.0}/s, p50 {:.1} ms, p99 {:.1} ms: the etcd calls one create makes, done directly)",
        r.creates.per_sec / r.raw_create.per_sec.max(f64::MIN_POSITIVE),
        r.raw_create.per_sec,
        ms(r.raw_create.latency.p50),
        ms(r.raw_create.latency.p99)
    );
    println!(
        "                 {:.2}× raw etcd create-if-absent txns alone ({:.0}/s, p50 {:.1} ms, p99 {:.1} ms)",
        r.creates.per_sec / r.raw_create_ser.per_sec.max(f64::MIN_POSITIVE),
        r.raw_create_ser.per_sec,
        ms(r.raw_create_ser.latency.p50),
        ms(r.raw_create_ser.latency.p99)
    );
    let n = r.creates.latency.count.max(1) as f64;
    let calls: Vec<String> = r
        .create_calls
        .iter()
        .map(|(op, count, sum)| {
            format!(
                "{op}: {:.2}/create, mean {:.1} ms",
                count / n,
                sum * 1e3 / count.max(1.0)
            )
        })
        .collect();
    println!(
        "                 server's etcd calls during creates: {}",
        calls.join("; ")
    );
    let tenths = |rate: &Rate| {
        rate.tenths
            .iter()
            .map(|t| format!("{t:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "                 creates/s by tenth of the run: {}",
        tenths(&r.creates)
    );
    println!(
        "                 raw puts/s by tenth of the run: {}",
        tenths(&r.raw)
    );
    println!(
        "list {} pods: {:.0} ms median of {LIST_REPEATS} via kube-rs Api::list (min {:.0}, max {:.0}; includes client-side decoding) — goal ≤ 300 ms",
        r.list.items,
        ms(r.list.typed),
        ms(r.list.typed_min),
        ms(r.list.typed_max)
    );
    println!(
        "                 raw JSON: {:.0} ms median ({:.1} MB); as Table: {:.0} ms median ({:.1} MB)",
        ms(r.list.raw_json),
        r.list.raw_json_bytes as f64 / 1e6,
        ms(r.list.table),
        r.list.table_bytes as f64 / 1e6
    );
    let w = &r.watch;
    let worst = w
        .rounds
        .iter()
        .map(|x| x.latency.max)
        .max()
        .unwrap_or_default();
    let missed: usize = w
        .rounds
        .iter()
        .map(|x| w.ready - x.received.min(w.ready))
        .sum();
    let mut maxes: Vec<Duration> = w.rounds.iter().map(|x| x.latency.max).collect();
    let patch_median = median(&mut w.rounds.iter().map(|x| x.change).collect::<Vec<_>>());
    println!(
        "watch fan-out:   {}/{} watches open (in {:.1} s); one change reached all: median-of-rounds max {:.1} ms, worst max {:.1} ms, p99 {:.1} ms, p50 {:.1} ms over {} deliveries in {} rounds, {} missed — goal all within 100 ms",
        w.ready,
        w.watchers,
        w.open_time.as_secs_f64(),
        ms(median(&mut maxes)),
        ms(worst),
        ms(w.all.p99),
        ms(w.all.p50),
        w.all.count,
        w.rounds.len(),
        missed
    );
    println!(
        "                 (the patch request itself: {:.1} ms median)",
        ms(patch_median)
    );
    println!(
        "server RSS:      {:.1} MiB with {} pods stored, after the lists (peak so far {:.1} MiB) — goal ≤ 150 MB",
        r.rss_stored, r.list.items, r.hwm_stored
    );
    println!(
        "                 idle {:.1} MiB; after creates {:.1} MiB; with {} watches open {:.1} MiB; peak over the run {:.1} MiB",
        r.rss_idle, r.rss_after_creates, w.ready, w.rss_mib, r.hwm_end
    );
    println!(
        "CPU seconds per phase (server / etcd / this client; 1-min load average before → after):"
    );
    for (name, cpu) in &r.cpu {
        println!(
            "                 {name:<14} {:>6.1} / {:>5.1} / {:>5.1}   load {:.2} → {:.2}",
            cpu.of("server"),
            cpu.of("etcd"),
            cpu.bench,
            cpu.load_before,
            cpu.load_after
        );
    }
    let per_create = |x: f64| x * 1e3 / r.creates.latency.count.max(1) as f64;
    let c = &r.cpu[3].1;
    println!(
        "                 per pod create: server {:.2} ms CPU, etcd {:.2} ms, client {:.2} ms (per raw put: etcd {:.2} ms)",
        per_create(c.of("server")),
        per_create(c.of("etcd")),
        per_create(c.bench),
        r.cpu[0].1.of("etcd") * 1e3 / r.raw.latency.count.max(1) as f64
    );
    println!("{}", "=".repeat(85));
}
