//! Helpers shared by the benchmark binaries (`benches/*.rs`, all `harness = false`).
//!
//! Each benchmark starts real processes (the built `wasmkube` binary, etcd, load tools),
//! reads their CPU and memory from /proc, and prints latency figures. This module holds
//! the one copy of what they all need for that: environment knobs and the temp dir,
//! latency [`Stats`] and throughput [`Rate`]s, /proc readings and a [`CpuMeter`], child
//! processes ([`Proc`], stopped with SIGTERM then SIGKILL), `perf record`, and starting
//! a `wasmkube server` and talking to it. Cargo does not take `common/mod.rs` for a
//! bench target of its own; each bench includes it with `mod common;`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, Command};

/// How long a started process gets to serve (write its kubeconfig, listen, …).
pub const START_DEADLINE: Duration = Duration::from_secs(120);
/// How long a process gets to exit after SIGTERM before it is killed.
pub const STOP_DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------
// Environment and the run's directory

/// A number from the environment; None if `name` is unset or blank.
pub fn env_number<T>(name: &str) -> Result<Option<T>>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map(Some)
            .with_context(|| format!("{name}={v:?} is not a number")),
        _ => Ok(None),
    }
}

/// A number from the environment, or `default` if `name` is unset or blank.
pub fn env_number_or<T>(name: &str, default: T) -> Result<T>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    Ok(env_number(name)?.unwrap_or(default))
}

/// Whether `name` is set to anything but the empty string.
pub fn env_flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// A comma-separated list from the environment (`default` if unset), trimmed.
pub fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// "DEBUG" or "release": debug figures mean little, so every report says which.
pub fn build() -> &'static str {
    if cfg!(debug_assertions) {
        "DEBUG"
    } else {
        "release"
    }
}

/// Runs `run` in a new temp dir named `prefix…`, which is removed afterwards unless
/// `keep` is set or the run failed (its process logs are what explains a failure).
pub async fn in_temp_dir<T>(
    prefix: &str,
    keep: bool,
    run: impl AsyncFnOnce(&Path) -> Result<T>,
) -> Result<T> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .context("create a temp dir")?;
    let result = run(dir.path()).await;
    if keep || result.is_err() {
        let kept = dir.keep();
        println!("logs kept in {}", kept.display());
    }
    result
}

// ---------------------------------------------------------------------------------
// Figures

/// Latency figures of one set of samples.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub count: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Stats {
    pub fn of(samples: &mut [Duration]) -> Stats {
        if samples.is_empty() {
            return Stats::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let idx = ((samples.len() as f64 * q).ceil() as usize).saturating_sub(1);
            samples[idx.min(samples.len() - 1)]
        };
        Stats {
            count: samples.len(),
            p50: at(0.50),
            p99: at(0.99),
            max: samples[samples.len() - 1],
        }
    }

    /// "p50 … ms, p99 … ms, max … ms (n=…)".
    pub fn ms(&self) -> String {
        format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n={})",
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            self.count
        )
    }

    /// "p50 … µs, p99 … µs, max … µs (n=…)".
    pub fn us(&self) -> String {
        format!(
            "p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs (n={})",
            us(self.p50),
            us(self.p99),
            us(self.max),
            self.count
        )
    }
}

/// A duration in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A duration in microseconds.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A throughput phase: operations per second and their latencies.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rate {
    pub per_sec: f64,
    pub wall: Duration,
    pub errors: usize,
    pub latency: Stats,
    /// Throughput of each tenth of the operations in completion order: a falling
    /// series means each operation gets slower as more objects exist.
    pub tenths: [f64; 10],
}

/// Runs `total` operations over `workers` tasks; `op(worker, index)` is one operation.
/// The first few errors are printed; the rest are only counted.
pub async fn run_concurrently<F, Fut>(total: usize, workers: usize, op: F) -> Rate
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let op = Arc::new(op);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(workers);
    for w in 0..workers {
        let next = next.clone();
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut finished = Vec::new();
            let mut errors = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t = Instant::now();
                match op(w, i).await {
                    Ok(()) => {
                        latencies.push(t.elapsed());
                        finished.push(started.elapsed());
                    }
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
            (latencies, finished, errors)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    let mut finished = Vec::with_capacity(total);
    let mut errors = Vec::new();
    for task in tasks {
        match task.await {
            Ok((l, f, e)) => {
                latencies.extend(l);
                finished.extend(f);
                errors.extend(e);
            }
            Err(e) => errors.push(format!("worker panicked: {e}")),
        }
    }
    let wall = started.elapsed();
    for e in errors.iter().take(5) {
        eprintln!("  error: {e}");
    }
    finished.sort_unstable();
    let mut tenths = [0.0; 10];
    for (k, tenth) in tenths.iter_mut().enumerate() {
        let from = finished.len() * k / 10;
        let to = finished.len() * (k + 1) / 10;
        if to > from {
            let begin = if from == 0 {
                Duration::ZERO
            } else {
                finished[from - 1]
            };
            let span = finished[to - 1].saturating_sub(begin).as_secs_f64();
            *tenth = (to - from) as f64 / span.max(1e-9);
        }
    }
    Rate {
        per_sec: latencies.len() as f64 / wall.as_secs_f64(),
        wall,
        errors: errors.len(),
        latency: Stats::of(&mut latencies),
        tenths,
    }
}

// ---------------------------------------------------------------------------------
// /proc readings

/// CPU seconds (user + system) a process (a pid, or `"self"`) has used so far, from
/// /proc/<pid>/stat; 0 if it cannot be read.
pub fn cpu_seconds(pid: impl std::fmt::Display) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after the name.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // USER_HZ is 100 on every Linux configuration we run on.
    (ticks(11) + ticks(12)) / 100.0
}

/// The 1-minute load average: other work on this shared 2-core machine skews figures.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().and_then(|f| f.parse().ok()))
        .unwrap_or(0.0)
}

/// The number of a `/proc/<pid>/status` field (`Threads:`, or kB for `VmRSS:`).
pub fn status_field(pid: u32, field: &str) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    line.split_whitespace()
        .nth(1)
        .with_context(|| format!("malformed {field} line"))?
        .parse()
        .with_context(|| format!("malformed {field} value"))
}

/// A `/proc/<pid>/status` field given in kB (`VmRSS:`, `VmHWM:`), in MiB.
pub fn status_mib(pid: u32, field: &str) -> Result<f64> {
    Ok(status_field(pid, field)? / 1024.0)
}

/// (VmRSS, VmHWM) in MiB.
pub fn rss_mib(pid: u32) -> Result<(f64, f64)> {
    Ok((status_mib(pid, "VmRSS:")?, status_mib(pid, "VmHWM:")?))
}

/// A process's (soft, hard) limit on open files, from /proc/<pid>/limits.
pub fn open_files_limit(pid: u32) -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut nums = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .filter_map(|n| n.parse::<u64>().ok());
    Some((nums.next()?, nums.next()?))
}

/// Whether a process with `pid` exists and has not exited (zombies have).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The direct children of `pid` (from every thread's `children` list).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Sends a signal (`TERM`, `KILL`, `INT`) with the `kill` program (no libc dependency
/// here).
pub fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// CPU used by the measured processes and this benchmark during one phase.
#[derive(Debug, Clone, Default)]
pub struct PhaseCpu {
    /// (name, CPU seconds) per measured process.
    pub processes: Vec<(String, f64)>,
    pub bench: f64,
    pub load_before: f64,
    pub load_after: f64,
}

impl PhaseCpu {
    /// The CPU seconds of the process measured as `name`; 0 if there was none.
    pub fn of(&self, name: &str) -> f64 {
        self.processes
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0.0, |(_, s)| *s)
    }

    /// Each process's CPU and its share per pod (`per` pods), this client's, and the
    /// load average before and after.
    pub fn describe(&self, per: usize) -> String {
        let per = per.max(1) as f64;
        let mut parts: Vec<String> = self
            .processes
            .iter()
            .map(|(n, s)| format!("{n} {s:.2} s ({:.2} ms/pod)", s * 1e3 / per))
            .collect();
        parts.push(format!(
            "this client {:.2} s ({:.2} ms/pod)",
            self.bench,
            self.bench * 1e3 / per
        ));
        format!(
            "{}; load {:.2} → {:.2}",
            parts.join(", "),
            self.load_before,
            self.load_after
        )
    }
}

/// Takes CPU readings at the start of a phase; [`CpuMeter::finish`] gives the phase's use.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    processes: Vec<(String, u32, f64)>,
    bench: f64,
    load: f64,
}

impl CpuMeter {
    /// Starts measuring the (name, pid) processes and this one.
    pub fn start(processes: &[(String, u32)]) -> CpuMeter {
        CpuMeter {
            processes: processes
                .iter()
                .map(|(n, p)| (n.clone(), *p, cpu_seconds(p)))
                .collect(),
            bench: cpu_seconds("self"),
            load: load_average(),
        }
    }

    pub fn finish(&self) -> PhaseCpu {
        PhaseCpu {
            processes: self
                .processes
                .iter()
                .map(|(n, p, s)| (n.clone(), cpu_seconds(p) - s))
                .collect(),
            bench: cpu_seconds("self") - self.bench,
            load_before: self.load,
            load_after: load_average(),
        }
    }
}

// ---------------------------------------------------------------------------------
// Processes

/// A child process of the benchmark with its log (stdout and stderr); stopped (TERM,
/// then KILL, then any children it left, such as the managed etcd of `wasmkube up` or
/// `wasmkube server`) when dropped.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    /// Held open so that a child that reads stdin (this benchmark's own binary in
    /// another role) sees EOF, and exits, if the benchmark dies.
    _stdin: Option<ChildStdin>,
    pub pid: u32,
    pub log: PathBuf,
    /// Children found once it served (see [`Proc::note_descendants`]).
    pub descendants: Vec<u32>,
}

impl Proc {
    /// Starts the built `wasmkube` binary with `args`, or the one `WASMKUBE_BENCH_BIN`
    /// names (an A/B against another build in the same invocation).
    pub fn wasmkube(name: &str, args: &[String], log: &Path) -> Result<Proc> {
        let program = std::env::var_os("WASMKUBE_BENCH_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_wasmkube")));
        Proc::spawn(name, &program, args, &[], log)
    }

    /// Starts `program` with `args` and the extra environment `envs`, its output to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(&str, String)],
        log: &Path,
    ) -> Result<Proc> {
        let file = std::fs::File::create(log)
            .with_context(|| format!("create the {name} log {}", log.display()))?;
        let file_err = file.try_clone().context("clone the log handle")?;
        let mut child = Command::new(program)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(file_err))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {name} ({})", program.display()))?;
        let pid = child.id().with_context(|| format!("{name} has no pid"))?;
        let stdin = child.stdin.take();
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
            _stdin: stdin,
            pid,
            log: log.to_path_buf(),
            descendants: Vec::new(),
        })
    }

    /// Fails with the log's tail if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{} exited ({status}); last log lines:\n{}",
                    self.name,
                    tail(&self.log, 40)
                );
            }
        }
        Ok(())
    }

    /// Records the process's children (a managed etcd), which [`Proc::stop`] and drop
    /// kill if the process left them behind.
    pub fn note_descendants(&mut self) {
        self.descendants = children_of(self.pid);
    }

    /// Polls `ready` until it holds, while the process runs, for [`START_DEADLINE`].
    pub async fn wait_ready(
        &mut self,
        what: &str,
        mut ready: impl AsyncFnMut() -> bool,
    ) -> Result<()> {
        let started = Instant::now();
        loop {
            if ready().await {
                return Ok(());
            }
            self.check_alive()?;
            if started.elapsed() > START_DEADLINE {
                bail!(
                    "{}: {what} not within {START_DEADLINE:?}; last log lines:\n{}",
                    self.name,
                    tail(&self.log, 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then SIGKILL after [`STOP_DEADLINE`]; then any recorded child still alive.
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            signal(self.pid, "TERM");
            if tokio::time::timeout(STOP_DEADLINE, child.wait())
                .await
                .is_err()
            {
                eprintln!(
                    "  {} ignored SIGTERM for {STOP_DEADLINE:?}; killing it",
                    self.name
                );
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
        self.kill_descendants();
    }

    fn kill_descendants(&self) {
        for pid in &self.descendants {
            if process_alive(*pid) {
                signal(*pid, "KILL");
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            // Not stopped explicitly (an error path): ask politely, so that the process
            // stops its own children, then make sure.
            signal(self.pid, "TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            while process_alive(self.pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.start_kill();
        }
        self.kill_descendants();
    }
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `perf record` attached to a process while it runs.
pub struct PerfRecording {
    child: Child,
}

impl PerfRecording {
    pub fn start(pid: u32, out: &Path) -> Result<PerfRecording> {
        let child = Command::new("perf")
            .args([
                "record",
                "-F",
                "199",
                "--call-graph",
                "dwarf,16384",
                "-p",
                &pid.to_string(),
                "-o",
            ])
            .arg(out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("start perf record")?;
        Ok(PerfRecording { child })
    }

    /// perf writes its file on SIGINT.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            signal(pid, "INT");
        }
        let _ = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// The cluster

/// Waits until `kubeconfig` is complete (the server writes it last), while `proc` runs.
pub async fn wait_kubeconfig(proc: &mut Proc, kubeconfig: &Path) -> Result<()> {
    proc.wait_ready(
        &format!("a complete {}", kubeconfig.display()),
        async || std::fs::read_to_string(kubeconfig).is_ok_and(|t| t.contains("current-context")),
    )
    .await
}

/// The client configuration of a kubeconfig file.
pub async fn kube_config(kubeconfig: &Path) -> Result<Config> {
    let kc = Kubeconfig::read_from(kubeconfig).context("read the kubeconfig")?;
    Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .context("load the kubeconfig")
}

/// A client of its own (its own connections) on `config`.
pub fn kube_client(config: &Config) -> Result<Client> {
    Client::try_from(config.clone()).context("build a kube client")
}

/// A `wasmkube server` started by [`start_server`], serving.
pub struct Server {
    pub proc: Proc,
    /// Its `--data-dir`: kubeconfig, join token, PKI.
    pub data_dir: PathBuf,
    pub config: Config,
}

impl Server {
    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.join("kubeconfig")
    }
}

/// Extra arguments for every `wasmkube server`/`up` a bench starts, from
/// `WASMKUBE_BENCH_SERVER_ARGS` (whitespace-separated), to compare settings such as
/// `--max-workload-requests-inflight 0` in one build.
pub fn server_args_from_env() -> Vec<String> {
    std::env::var("WASMKUBE_BENCH_SERVER_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Starts `wasmkube server` on 127.0.0.1 and a free port, its data in `dir/server` and
/// its log in `dir/server.log`, with `extra` arguments (`--etcd-servers URL`, or none
/// for an etcd it manages). Returns once its kubeconfig is complete, with the children
/// it started (that etcd) recorded.
pub async fn start_server(dir: &Path, extra: &[String]) -> Result<Server> {
    let data_dir = dir.join("server");
    std::fs::create_dir_all(&data_dir).context("create the server data dir")?;
    let mut args: Vec<String> = vec![
        "server".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--secure-port".into(),
        "0".into(),
        "--bind-address".into(),
        "127.0.0.1".into(),
    ];
    args.extend_from_slice(extra);
    args.extend(server_args_from_env());
    let mut proc = Proc::wasmkube("wasmkube server", &args, &dir.join("server.log"))?;
    println!(
        "  wasmkube server: pid {} (log {})",
        proc.pid,
        proc.log.display()
    );
    let kubeconfig = data_dir.join("kubeconfig");
    wait_kubeconfig(&mut proc, &kubeconfig).await?;
    proc.note_descendants();
    let config = kube_config(&kubeconfig).await?;
    Ok(Server {
        proc,
        data_dir,
        config,
    })
}

/// Creates namespace `name`.
pub async fn create_namespace(client: &Client, name: &str) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
    }))?;
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("create namespace {name}"))?;
    Ok(())
}

/// One `GET path` on a new connection (HTTP/1.0, closed after it) within `limit`: the
/// whole response.
pub async fn http_get(addr: SocketAddr, path: &str, limit: Duration) -> Result<String> {
    let get = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: bench\r\nConnection: close\r\n\r\n");
        stream
            .write_all(req.as_bytes())
            .await
            .with_context(|| format!("write to {addr}"))?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .with_context(|| format!("read from {addr}"))?;
        anyhow::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    tokio::time::timeout(limit, get)
        .await
        .map_err(|_| anyhow!("GET {addr}{path} timed out after {limit:?}"))?
}
