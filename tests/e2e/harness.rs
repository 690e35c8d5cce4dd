//! The end-to-end harness: a [`Cluster`] is a real `wasmkube` process (with a managed or
//! an external etcd) in its own temp dir on a free port, driven by the real kubectl the
//! way a user would drive it. Everything a test asserts on is what kubectl printed.
//!
//! Nothing here sleeps for a fixed time: [`eventually`] polls a condition with a
//! deadline, and [`Cluster::start`] polls for the kubeconfig the server writes once it
//! serves. When a test panics, the cluster's Drop prints the tail of the server log.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::Instant;
use wasmkube_control::etcd_process::ManagedEtcd;

/// How long a server gets to write its kubeconfig.
pub const START_DEADLINE: Duration = Duration::from_secs(60);
/// The default patience of [`eventually`] and of watch readers.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// No single kubectl invocation may take longer than this.
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(90);
/// How many server log lines a failure report shows.
const LOG_TAIL_LINES: usize = 60;

/// What a finished kubectl (or any other) command left behind.
#[derive(Debug, Clone)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    pub success: bool,
    pub code: Option<i32>,
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit code {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Which subcommand runs the control plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `wasmkube server --secure-port 0 ...`
    Server,
    /// `wasmkube up` (picks a free port itself).
    Up,
}

/// How to start a [`Cluster`].
#[derive(Clone, Debug)]
pub struct ClusterBuilder {
    mode: Mode,
    external_etcd: bool,
    extra_args: Vec<String>,
    token_file: Option<String>,
}

impl ClusterBuilder {
    /// Writes `csv` (lines `token,user,uid,"group1,group2"`) to a file in the cluster's
    /// temp dir and passes it as `--token-auth-file`.
    pub fn token_auth_file(mut self, csv: &str) -> Self {
        self.token_file = Some(csv.to_string());
        self
    }

    /// Runs etcd from the test (a [`ManagedEtcd`]) and passes `--etcd-servers`, so the
    /// test can restart etcd and the server independently.
    pub fn external_etcd(mut self) -> Self {
        self.external_etcd = true;
        self
    }

    /// Runs `wasmkube up` instead of `wasmkube server`.
    pub fn up(mut self) -> Self {
        self.mode = Mode::Up;
        self
    }

    /// Adds arguments to the server's command line.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.extra_args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    pub async fn start(self) -> Cluster {
        check_prerequisites();
        let dir = tempfile::Builder::new()
            .prefix("wasmkube-e2e-")
            .tempdir()
            .expect("create a temp dir");
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).expect("create the data dir");
        let mut builder = self;
        // Every cluster on this host shares the loopback network: give each its own pod
        // and Service ranges, or the first pods (and ClusterIPs) of two clusters would
        // get the same addresses and fight over their ports.
        let (pods, services) = address_ranges();
        if !builder.extra_args.iter().any(|a| a == "--cluster-cidr") {
            builder.extra_args.push("--cluster-cidr".to_string());
            builder.extra_args.push(pods);
        }
        if !builder.extra_args.iter().any(|a| a == "--service-cidr") {
            builder.extra_args.push("--service-cidr".to_string());
            builder.extra_args.push(services);
        }
        if let Some(csv) = builder.token_file.take() {
            let path = dir.path().join("tokens.csv");
            std::fs::write(&path, csv).expect("write the token file");
            builder.extra_args.push("--token-auth-file".to_string());
            builder.extra_args.push(path.to_string_lossy().into_owned());
        }
        let etcd = if builder.external_etcd {
            let etcd_dir = dir.path().join("external-etcd");
            Some(
                ManagedEtcd::start(&etcd_dir)
                    .await
                    .unwrap_or_else(|e| panic!("starting the test's etcd: {e}")),
            )
        } else {
            None
        };
        let mut cluster = Cluster {
            kubeconfig: data_dir.join("kubeconfig"),
            cache_dir: dir.path().join("kubecache"),
            log_path: dir.path().join("server.log"),
            data_dir,
            dir,
            server: None,
            etcd,
            builder,
        };
        cluster.start_server().await;
        cluster
    }
}

/// A pod range (a /16 of the default 127.128.0.0/10: 64 nodes with /22 blocks) and a
/// Service range (a /24 of the default 127.96.0.0/16) of their own for the next cluster
/// of this test process; the process id spreads concurrent test processes apart.
fn address_ranges() -> (String, String) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let base = std::process::id().wrapping_mul(37);
    let pods = (base.wrapping_add(n)) % 64;
    let services = (base.wrapping_add(n)) % 256;
    (
        format!("127.{}.0.0/16", 128 + pods),
        format!("127.96.{services}.0/24"),
    )
}

/// A running cluster: the `wasmkube` process, its data dir and (optionally) the etcd
/// the test started for it. Dropping it stops both.
pub struct Cluster {
    dir: TempDir,
    /// The server's `--data-dir`.
    pub data_dir: PathBuf,
    /// The admin kubeconfig the server wrote.
    pub kubeconfig: PathBuf,
    cache_dir: PathBuf,
    log_path: PathBuf,
    server: Option<Child>,
    etcd: Option<ManagedEtcd>,
    builder: ClusterBuilder,
}

impl Cluster {
    /// A cluster with default settings: `wasmkube server` managing its own etcd.
    pub async fn start() -> Cluster {
        Cluster::builder().start().await
    }

    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            mode: Mode::Server,
            external_etcd: false,
            extra_args: Vec::new(),
            token_file: None,
        }
    }

    /// The etcd the test started (only with [`ClusterBuilder::external_etcd`]).
    pub fn etcd(&self) -> &ManagedEtcd {
        self.etcd
            .as_ref()
            .expect("this cluster was not started with external_etcd()")
    }

    /// A path inside the cluster's temp dir (for files a test writes).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `contents` to a file in the temp dir and returns its path.
    pub fn write_file(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// Starts (or restarts) the server process and waits for its kubeconfig.
    pub async fn start_server(&mut self) {
        assert!(self.server.is_none(), "the server is already running");
        // A restart picks a new port and rewrites the kubeconfig: remove the old one so
        // its appearance means the new process serves.
        let _ = std::fs::remove_file(&self.kubeconfig);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open the server log");
        let log_err = log.try_clone().expect("clone the server log handle");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wasmkube"));
        match self.builder.mode {
            Mode::Server => {
                cmd.arg("server")
                    .arg("--data-dir")
                    .arg(&self.data_dir)
                    .args(["--secure-port", "0", "--bind-address", "127.0.0.1"]);
                if let Some(etcd) = &self.etcd {
                    cmd.arg("--etcd-servers").arg(etcd.client_url());
                }
            }
            Mode::Up => {
                cmd.arg("up").arg("--data-dir").arg(&self.data_dir);
            }
        }
        cmd.args(&self.builder.extra_args)
            .env("RUST_BACKTRACE", "1")
            // Plain text in the log file (no ANSI colours).
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true);
        let child = cmd.spawn().expect("spawn the wasmkube binary");
        self.server = Some(child);

        let started = Instant::now();
        loop {
            if is_complete_kubeconfig(&self.kubeconfig) {
                return;
            }
            if let Some(child) = self.server.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.server = None;
                    panic!(
                        "wasmkube exited ({status}) before writing {}\n{}",
                        self.kubeconfig.display(),
                        self.log_tail()
                    );
                }
            }
            if started.elapsed() > START_DEADLINE {
                panic!(
                    "wasmkube did not write {} within {START_DEADLINE:?}\n{}",
                    self.kubeconfig.display(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server with SIGTERM and returns how it exited.
    pub async fn stop_server(&mut self) -> ExitStatus {
        let mut child = self.server.take().expect("the server is not running");
        if let Some(pid) = child.id() {
            signal(pid, "TERM");
        }
        match tokio::time::timeout(DEADLINE, child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => panic!("waiting for the server: {e}"),
            Err(_) => {
                let _ = child.start_kill();
                panic!(
                    "the server did not exit within {DEADLINE:?} of SIGTERM\n{}",
                    self.log_tail()
                );
            }
        }
    }

    /// The server's process id while it runs.
    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().and_then(|c| c.id())
    }

    /// Starts another `wasmkube server` against this cluster's external etcd, with its
    /// own data dir (holding a copy of the first server's PKI, so both share the cluster
    /// CA as control-plane replicas do), port and log, and waits for its kubeconfig.
    pub async fn start_second_server(&self) -> SecondServer {
        let etcd = self
            .etcd
            .as_ref()
            .expect("a second server needs external_etcd()");
        let n = unique();
        let data_dir = self.dir.path().join(format!("data-second-{n}"));
        let pki = data_dir.join("pki");
        std::fs::create_dir_all(&pki).expect("create the second data dir");
        let first_pki = self.data_dir.join("pki");
        for entry in std::fs::read_dir(&first_pki).expect("read the first server's PKI") {
            let entry = entry.expect("read a PKI entry");
            if entry.path().is_file() {
                std::fs::copy(entry.path(), pki.join(entry.file_name())).expect("copy a PKI file");
            }
        }
        let log_path = self.dir.path().join(format!("server-second-{n}.log"));
        let log = std::fs::File::create(&log_path).expect("create the second server log");
        let log_err = log.try_clone().expect("clone the second server log handle");
        let child = Command::new(env!("CARGO_BIN_EXE_wasmkube"))
            .arg("server")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--secure-port", "0", "--bind-address", "127.0.0.1"])
            .arg("--etcd-servers")
            .arg(etcd.client_url())
            .args(&self.builder.extra_args)
            .env("RUST_BACKTRACE", "1")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the second wasmkube");
        let mut second = SecondServer {
            kubeconfig: data_dir.join("kubeconfig"),
            log_path,
            child,
        };
        let started = Instant::now();
        while !is_complete_kubeconfig(&second.kubeconfig) {
            if let Ok(Some(status)) = second.child.try_wait() {
                panic!(
                    "the second wasmkube exited ({status}) before serving\n{}",
                    second.log_tail()
                );
            }
            if started.elapsed() > START_DEADLINE {
                panic!(
                    "the second wasmkube did not serve within {START_DEADLINE:?}\n{}",
                    second.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        second
    }

    /// An API client authenticated as node `node` (group `system:nodes`), joined with
    /// the cluster's join token as an agent joins.
    pub async fn node_client(&self, node: &str) -> kube::Client {
        let token =
            std::fs::read_to_string(self.data_dir.join("join-token")).expect("read the join token");
        let creds = wasmkube_runtime::agent::bootstrap::credentials(
            &self.path(&format!("node-credentials-{node}")),
            &self.server_url(),
            node,
            &[std::net::IpAddr::from([127, 0, 0, 1])],
            Some(token.trim()),
            Some(&self.data_dir.join("pki/ca.crt")),
        )
        .await
        .unwrap_or_else(|e| panic!("join as node {node}: {e}"));
        creds
            .client()
            .await
            .unwrap_or_else(|e| panic!("a client for node {node}: {e:#}"))
    }

    /// The server URL from the kubeconfig.
    pub fn server_url(&self) -> String {
        let text = std::fs::read_to_string(&self.kubeconfig).expect("read the kubeconfig");
        text.lines()
            .find_map(|l| l.trim().strip_prefix("server:"))
            .map(|s| s.trim().trim_matches('"').to_string())
            .expect("the kubeconfig names a server")
    }

    /// Writes a copy of the admin kubeconfig whose user has `token` instead of the
    /// client certificate (`None`: no credential at all) and returns its path.
    pub fn kubeconfig_with_token(&self, file_name: &str, token: Option<&str>) -> PathBuf {
        let admin = std::fs::read_to_string(&self.kubeconfig).expect("read the kubeconfig");
        let mut out = String::new();
        let mut had_cert = false;
        for line in admin.lines() {
            let t = line.trim_start();
            if t.starts_with("client-certificate-data:") || t.starts_with("client-key-data:") {
                had_cert = true;
                continue;
            }
            if t == "user:" && token.is_none() {
                out.push_str(&line.replace("user:", "user: {}"));
                out.push('\n');
                continue;
            }
            out.push_str(line);
            out.push('\n');
            if t == "user:" {
                if let Some(token) = token {
                    out.push_str(&format!("    token: \"{token}\"\n"));
                }
            }
        }
        assert!(
            had_cert,
            "the admin kubeconfig should carry client-certificate-data and client-key-data"
        );
        self.write_file(file_name, out)
    }

    /// A GET with curl and no client certificate (`-k`: this checks authentication, not
    /// the serving certificate), optionally with a bearer token. Returns the HTTP status
    /// and the body.
    pub async fn curl_get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let url = format!("{}{path}", self.server_url());
        let mut args = vec!["-sk", "-w", "\n%{http_code}", "--max-time", "20"];
        let header;
        if let Some(token) = token {
            header = format!("Authorization: Bearer {token}");
            args.extend_from_slice(&["-H", &header]);
        }
        args.push(&url);
        let out = self.run("curl", &args).await;
        assert!(out.success, "curl {url}: {out}");
        let (body, code) = out.stdout.rsplit_once('\n').unwrap_or(("", &out.stdout));
        let code = code
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("curl printed no status code ({e}): {out}"));
        (code, body.to_string())
    }

    /// The last lines of the server log (and of the external etcd's, if any).
    pub fn log_tail(&self) -> String {
        let mut out = format!(
            "--- last {LOG_TAIL_LINES} lines of {} ---\n{}",
            self.log_path.display(),
            tail(&self.log_path, LOG_TAIL_LINES)
        );
        if let Some(etcd) = &self.etcd {
            out.push_str(&format!(
                "\n--- last 10 lines of {} ---\n{}",
                etcd.log_path().display(),
                tail(etcd.log_path(), 10)
            ));
        }
        out
    }

    fn kubectl_command(&self, kubeconfig: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache_dir)
            .args(args)
            .env_remove("KUBECONFIG")
            // kubectl may want to write under $HOME (e.g. ~/.kube); keep it in the temp dir.
            .env("HOME", self.dir.path())
            .kill_on_drop(true);
        cmd
    }

    /// Runs kubectl with the admin kubeconfig.
    pub async fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_as(&self.kubeconfig, args, None).await
    }

    /// Runs kubectl with `input` on its stdin.
    pub async fn kubectl_stdin(&self, args: &[&str], input: &str) -> Output {
        self.kubectl_as(&self.kubeconfig, args, Some(input)).await
    }

    /// Runs kubectl with another kubeconfig.
    pub async fn kubectl_as(
        &self,
        kubeconfig: &Path,
        args: &[&str],
        input: Option<&str>,
    ) -> Output {
        let mut cmd = self.kubectl_command(kubeconfig, args);
        cmd.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn kubectl");
        if let Some(input) = input {
            let mut stdin = child.stdin.take().expect("kubectl stdin");
            let input = input.to_string();
            // Written concurrently so a large input cannot deadlock against the pipes.
            tokio::spawn(async move {
                let _ = stdin.write_all(input.as_bytes()).await;
            });
        }
        match tokio::time::timeout(KUBECTL_TIMEOUT, child.wait_with_output()).await {
            Ok(Ok(out)) => Output {
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                success: out.status.success(),
                code: out.status.code(),
            },
            Ok(Err(e)) => panic!("running kubectl {args:?}: {e}"),
            Err(_) => panic!(
                "kubectl {args:?} did not finish within {KUBECTL_TIMEOUT:?}\n{}",
                self.log_tail()
            ),
        }
    }

    /// Runs kubectl with extra environment variables (e.g. `KUBE_EDITOR` for `edit`).
    pub async fn kubectl_env(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        let mut cmd = self.kubectl_command(&self.kubeconfig, args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().expect("spawn kubectl");
        match tokio::time::timeout(KUBECTL_TIMEOUT, child.wait_with_output()).await {
            Ok(Ok(out)) => Output {
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                success: out.status.success(),
                code: out.status.code(),
            },
            Ok(Err(e)) => panic!("running kubectl {args:?}: {e}"),
            Err(_) => panic!("kubectl {args:?} did not finish within {KUBECTL_TIMEOUT:?}"),
        }
    }

    /// Runs kubectl, panics (with its stderr and the server log) unless it succeeds, and
    /// returns its stdout.
    pub async fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        self.expect_ok(args, out)
    }

    /// Runs kubectl expecting it to fail; returns its stderr.
    pub async fn kubectl_err(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        self.expect_err(args, out)
    }

    fn expect_ok(&self, args: &[&str], out: Output) -> String {
        if !out.success {
            panic!("kubectl {args:?} failed:\n{out}\n{}", self.log_tail());
        }
        out.stdout
    }

    fn expect_err(&self, args: &[&str], out: Output) -> String {
        if out.success {
            panic!("kubectl {args:?} succeeded but should have failed:\n{out}");
        }
        out.stderr
    }

    /// `kubectl create -f -` with `yaml`; returns stdout.
    pub async fn create_stdin(&self, yaml: &str) -> String {
        let args = ["create", "-f", "-"];
        let out = self.kubectl_stdin(&args, yaml).await;
        self.expect_ok(&args, out)
    }

    /// `kubectl apply -f -` with `yaml`; returns stdout.
    pub async fn apply_stdin(&self, yaml: &str) -> String {
        let args = ["apply", "-f", "-"];
        let out = self.kubectl_stdin(&args, yaml).await;
        self.expect_ok(&args, out)
    }

    /// Creates a ConfigMap with `kubectl create -f -` (a JSON body, unlike `kubectl
    /// create configmap`, which sends protobuf).
    pub async fn create_configmap(
        &self,
        namespace: &str,
        name: &str,
        data: &[(&str, &str)],
    ) -> String {
        let data: serde_json::Map<String, serde_json::Value> = data
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        let doc = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace},
            "data": data,
        });
        self.create_stdin(&doc.to_string()).await
    }

    /// Creates a Namespace with `kubectl create -f -` (JSON).
    pub async fn create_namespace(&self, name: &str) -> String {
        let doc = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        self.create_stdin(&doc.to_string()).await
    }

    /// `kubectl get ARGS -o json`, parsed.
    pub async fn get_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let stdout = self.kubectl_ok(&all).await;
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("kubectl {all:?} printed invalid JSON ({e}):\n{stdout}"))
    }

    /// `kubectl get ARGS` parsed as one table (see [`Table`]).
    pub async fn get_table(&self, args: &[&str]) -> Table {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        let stdout = self.kubectl_ok(&all).await;
        let mut tables = Table::parse_all(&stdout);
        assert_eq!(
            tables.len(),
            1,
            "kubectl {all:?} printed {} tables:\n{stdout}",
            tables.len()
        );
        tables.remove(0)
    }

    /// `kubectl get --raw PATH`.
    pub async fn raw(&self, path: &str) -> Output {
        self.kubectl(&["get", "--raw", path]).await
    }

    /// Starts a long-running kubectl (e.g. `get pods -w`) whose stdout is read line by line.
    pub fn spawn_kubectl(&self, args: &[&str]) -> Streaming {
        let stderr_path = self.path(&format!("kubectl-stream-{}.stderr", unique()));
        let stderr = std::fs::File::create(&stderr_path).expect("create a stderr file");
        let mut cmd = self.kubectl_command(&self.kubeconfig, args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let mut child = cmd.spawn().expect("spawn kubectl");
        let stdout = child.stdout.take().expect("kubectl stdout");
        Streaming {
            args: args.iter().map(|s| s.to_string()).collect(),
            child,
            lines: BufReader::new(stdout).lines(),
            seen: Vec::new(),
            stderr_path,
        }
    }

    /// Runs a program (not kubectl) to completion, e.g. python3.
    pub async fn run(&self, program: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        match tokio::time::timeout(KUBECTL_TIMEOUT, child.wait_with_output()).await {
            Ok(Ok(out)) => Output {
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                success: out.status.success(),
                code: out.status.code(),
            },
            Ok(Err(e)) => panic!("running {program}: {e}"),
            Err(_) => panic!(
                "{program} {args:?} did not finish within {KUBECTL_TIMEOUT:?}\n{}",
                self.log_tail()
            ),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
        if let Some(mut child) = self.server.take() {
            // SIGTERM first so the server stops its managed etcd child; SIGKILL would
            // leave that etcd behind.
            if let Some(pid) = child.id() {
                signal(pid, "TERM");
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while std::time::Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = child.start_kill();
        }
        // The external etcd (if any) is killed by ManagedEtcd's own Drop.
    }
}

/// Another control-plane process of a [`Cluster`] (see
/// [`Cluster::start_second_server`]); killed with SIGKILL when dropped.
pub struct SecondServer {
    /// Its admin kubeconfig (same CA as the first server's).
    pub kubeconfig: PathBuf,
    pub log_path: PathBuf,
    child: Child,
}

impl SecondServer {
    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        format!(
            "--- last {LOG_TAIL_LINES} lines of {} ---\n{}",
            self.log_path.display(),
            tail(&self.log_path, LOG_TAIL_LINES)
        )
    }
}

/// A long-running kubectl whose output is read line by line.
pub struct Streaming {
    args: Vec<String>,
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// Every line read so far, for failure messages.
    pub seen: Vec<String>,
    stderr_path: PathBuf,
}

impl Streaming {
    /// Reads lines until one satisfies `pred` and returns it; panics at the deadline or
    /// if kubectl exits first.
    pub async fn wait_for_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let next = tokio::time::timeout_at(deadline, self.lines.next_line()).await;
            match next {
                Ok(Ok(Some(line))) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Ok(Ok(None)) => panic!(
                    "kubectl {:?} exited before printing {what}; it printed:\n{}\nstderr:\n{}",
                    self.args,
                    self.seen.join("\n"),
                    std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
                ),
                Ok(Err(e)) => panic!("reading kubectl {:?}: {e}", self.args),
                Err(_) => panic!(
                    "kubectl {:?} did not print {what} within {DEADLINE:?}; it printed:\n{}\nstderr:\n{}",
                    self.args,
                    self.seen.join("\n"),
                    std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
                ),
            }
        }
    }

    /// Waits for a watch line whose whitespace-separated words start with `words`
    /// (e.g. `["ADDED", "w1"]`).
    pub async fn wait_for_row(&mut self, words: &[&str]) -> String {
        let what = format!("a row starting with {words:?}");
        self.wait_for_line(&what, |line| {
            let got: Vec<&str> = line.split_whitespace().collect();
            got.len() >= words.len() && got[..words.len()] == *words
        })
        .await
    }

    /// Whether kubectl is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A table as kubectl prints it: a header line and rows aligned under it. Cells are cut
/// at the columns where the header names start, so cells containing spaces and headers
/// such as `NOMINATED NODE` come out whole.
#[derive(Debug, Clone)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
    text: String,
}

impl Table {
    /// Parses kubectl's output, which holds one table per resource type separated by
    /// blank lines (`get pods,svc`).
    pub fn parse_all(text: &str) -> Vec<Table> {
        let mut tables = Vec::new();
        let mut block: Vec<&str> = Vec::new();
        for line in text.lines().chain(std::iter::once("")) {
            if line.trim().is_empty() {
                if !block.is_empty() {
                    tables.push(Table::parse_block(&block));
                    block.clear();
                }
            } else {
                block.push(line);
            }
        }
        tables
    }

    fn parse_block(lines: &[&str]) -> Table {
        let header: Vec<char> = lines[0].chars().collect();
        // A column starts at a non-space preceded by the line start or by 2+ spaces.
        let mut starts = Vec::new();
        for i in 0..header.len() {
            if header[i] == ' ' {
                continue;
            }
            let at_start = i == 0;
            let after_gap = i >= 2 && header[i - 1] == ' ' && header[i - 2] == ' ';
            if at_start || after_gap {
                starts.push(i);
            }
        }
        let cut = |line: &str| -> Vec<String> {
            let chars: Vec<char> = line.chars().collect();
            starts
                .iter()
                .enumerate()
                .map(|(n, &from)| {
                    let to = starts
                        .get(n + 1)
                        .copied()
                        .unwrap_or(chars.len())
                        .min(chars.len());
                    let from = from.min(chars.len());
                    chars[from..to]
                        .iter()
                        .collect::<String>()
                        .trim()
                        .to_string()
                })
                .collect()
        };
        Table {
            headers: cut(lines[0]),
            rows: lines[1..].iter().map(|l| cut(l)).collect(),
            text: lines.join("\n"),
        }
    }

    /// The index of column `name`; panics if absent.
    pub fn col(&self, name: &str) -> usize {
        self.headers
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no column {name:?} in:\n{}", self.text))
    }

    /// The first column of every row.
    pub fn names(&self) -> Vec<String> {
        self.rows.iter().map(|r| r[0].clone()).collect()
    }

    /// The row whose first column is `name`; panics if absent.
    pub fn row(&self, name: &str) -> Row<'_> {
        let cells = self
            .rows
            .iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("no row {name:?} in:\n{}", self.text));
        Row { table: self, cells }
    }

    /// Asserts the header is exactly `expected`.
    pub fn assert_headers(&self, expected: &[&str]) {
        assert_eq!(self.headers, expected, "columns of:\n{}", self.text);
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One row of a [`Table`], indexed by column name.
pub struct Row<'a> {
    table: &'a Table,
    cells: &'a [String],
}

impl Row<'_> {
    pub fn get(&self, column: &str) -> &str {
        &self.cells[self.table.col(column)]
    }
}

/// Polls `f` until it returns `Ok`, with growing pauses, and panics with the last error
/// after `deadline`.
pub async fn eventually<T>(
    what: &str,
    deadline: Duration,
    mut f: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let started = Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if started.elapsed() >= deadline => {
                panic!("timed out after {deadline:?} waiting for {what}; last attempt: {e}")
            }
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
        }
    }
}

/// One HTTP/1.1 `GET path` on a fresh connection to `addr` (`Connection: close`); the
/// whole response, or what went wrong (nothing may take longer than 10 s).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<String, String> {
    let get = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut response = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut response)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok(String::from_utf8_lossy(&response).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), get)
        .await
        .map_err(|_| format!("GET {addr}{path} timed out"))?
}

/// Whether a kubectl AGE cell looks like one (`0s`, `5m3s`, `2d`).
pub fn is_age(cell: &str) -> bool {
    !cell.is_empty()
        && cell.chars().next().is_some_and(|c| c.is_ascii_digit())
        && cell
            .chars()
            .all(|c| c.is_ascii_digit() || "smhdy".contains(c))
}

/// A resourceVersion as a number (ours are etcd revisions).
pub fn rv_number(obj: &serde_json::Value) -> u64 {
    let rv = obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_else(|| panic!("no metadata.resourceVersion in {obj}"));
    rv.parse()
        .unwrap_or_else(|e| panic!("resourceVersion {rv:?} is not a number: {e}"))
}

/// Fails early, with the package to install, if a program the tests need is missing.
pub fn check_prerequisites() {
    for (program, package) in [
        ("etcd", "etcd-server (apt-get install etcd-server)"),
        (
            "kubectl",
            "kubectl (apt-get install kubectl, from the Google Cloud apt repository)",
        ),
        ("curl", "curl (apt-get install curl)"),
    ] {
        if find_on_path(program).is_none() {
            panic!("`{program}` is not on PATH: the end-to-end tests need it; install the package {package}");
        }
    }
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Sends a signal (`TERM`, `STOP`, `CONT`, `KILL`) with the `kill` program.
pub fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
    if let Err(e) = status {
        eprintln!("kill -{name} {pid}: {e}");
    }
}

/// Whether a process with `pid` exists.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Zombies (state Z) have exited.
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Pids of processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && process_alive(pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

fn is_complete_kubeconfig(path: &Path) -> bool {
    // The server writes it atomically; still, only trust a file that names its context.
    std::fs::read_to_string(path).is_ok_and(|t| t.contains("current-context"))
}

fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read: {e})"),
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
