//! Harness pieces for the node agent: real `wasmkube agent` processes joined to a test
//! cluster, the sample modules (built by scripts/build-samples.sh on first use), and a
//! real OCI registry (Debian's docker-registry) on a free port.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::harness::{signal, Cluster, DEADLINE, START_DEADLINE};

/// The directory the sample modules are built into.
pub fn samples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/target/modules")
}

/// The path of a sample module, building the samples once per test process if any is
/// missing (scripts/test.sh builds them up front; this keeps `cargo test` alone working).
pub fn sample(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let path = samples_dir().join(format!("{name}.wasm"));
    if path.exists() {
        return path;
    }
    let built = BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = std::process::Command::new("bash")
            .arg(root.join("scripts/build-samples.sh"))
            .env("WASMKUBE_SAMPLES_INSTALL", "")
            .current_dir(root)
            .output()
            .map_err(|e| format!("running scripts/build-samples.sh: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "scripts/build-samples.sh failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
    assert!(path.exists(), "no sample module {}", path.display());
    path
}

/// `file://` image reference of a sample.
/// A manifest from samples/ with its module paths pointing at the built samples.
pub fn manifest(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("samples")
        .join(rel);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    // Build (once) so every module the manifest names exists.
    sample("hello");
    text.replace(
        "file:///opt/wasmkube/samples/",
        &format!("file://{}/", samples_dir().display()),
    )
}

pub fn sample_image(name: &str) -> String {
    format!("file://{}", sample(name).display())
}

/// A `wasmkube agent` process joined to a cluster; killed when dropped.
pub struct AgentProcess {
    pub node_name: String,
    pub data_dir: PathBuf,
    log_path: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl AgentProcess {
    /// Starts an agent for node `node_name` with its own data dir in the cluster's temp
    /// dir, joining with the server's join token, and waits until its Node is Ready.
    pub async fn start(cluster: &Cluster, node_name: &str) -> AgentProcess {
        let data_dir = cluster.path(&format!("agent-{node_name}"));
        let token = std::fs::read_to_string(cluster.data_dir.join("join-token"))
            .expect("the server writes its join token");
        let args = vec![
            "agent".to_string(),
            "--server".into(),
            cluster.server_url(),
            "--token".into(),
            token.trim().to_string(),
            "--ca-cert".into(),
            cluster.data_dir.join("pki/ca.crt").display().to_string(),
            "--node-name".into(),
            node_name.into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--kubelet-port".into(),
            "0".into(),
        ];
        let mut agent = AgentProcess {
            node_name: node_name.to_string(),
            log_path: cluster.path(&format!("agent-{node_name}.log")),
            data_dir,
            args,
            child: None,
        };
        agent.spawn();
        wait_node_ready(cluster, node_name, &agent).await;
        agent
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open the agent log");
        let log_err = log.try_clone().expect("clone the agent log handle");
        let child = Command::new(env!("CARGO_BIN_EXE_wasmkube"))
            .args(&self.args)
            .env("RUST_BACKTRACE", "1")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn wasmkube agent");
        self.child = Some(child);
    }

    /// Kills the agent with SIGKILL (no clean shutdown) and waits for it to be gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(DEADLINE, child.wait()).await;
        }
    }

    /// Stops the agent with SIGTERM (a clean shutdown: instances stopped, final
    /// statuses written) and waits for it to exit.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                signal(pid, "TERM");
            }
            if tokio::time::timeout(DEADLINE, child.wait()).await.is_err() {
                let _ = child.start_kill();
                panic!(
                    "the agent did not exit within {DEADLINE:?} of SIGTERM\n{}",
                    self.log_tail()
                );
            }
        }
    }

    /// Starts the agent again with the same data dir (its stored credential; the join
    /// token is passed again but not needed).
    pub async fn restart(&mut self, cluster: &Cluster) {
        assert!(self.child.is_none(), "the agent still runs");
        self.spawn();
        wait_node_ready(cluster, &self.node_name.clone(), self).await;
    }

    /// The agent process' id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(60);
        format!(
            "--- last agent log lines ({}) ---\n{}",
            self.log_path.display(),
            lines[from..].join("\n")
        )
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                signal(pid, "KILL");
            }
            let _ = child.start_kill();
        }
    }
}

async fn wait_node_ready(cluster: &Cluster, node: &str, agent: &AgentProcess) {
    let started = Instant::now();
    loop {
        let out = cluster
            .kubectl(&[
                "get",
                "node",
                node,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .await;
        if out.success && out.stdout.trim() == "True" {
            return;
        }
        assert!(
            started.elapsed() < START_DEADLINE,
            "node {node} did not become Ready within {START_DEADLINE:?}\n{}",
            agent.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the node of `wasmkube up` (named by the host) is Ready; returns its name.
pub async fn up_node(cluster: &Cluster) -> String {
    let started = Instant::now();
    loop {
        let out = cluster
            .kubectl(&[
                "get",
                "nodes",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
            ])
            .await;
        if let Some(name) = out.stdout.lines().find_map(|l| {
            let (n, s) = l.split_once(' ')?;
            (s.trim() == "True").then(|| n.to_string())
        }) {
            return name;
        }
        assert!(
            started.elapsed() < START_DEADLINE,
            "the node of `wasmkube up` did not become Ready\n{}",
            cluster.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A docker-registry (distribution) process on a free loopback port; killed on drop.
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub host: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub async fn start() -> Registry {
        let dir = tempfile::tempdir().expect("registry temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .expect("write the registry config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn docker-registry (apt-get install docker-registry)");
        let host = format!("127.0.0.1:{port}");
        let started = Instant::now();
        while tokio::net::TcpStream::connect(&host).await.is_err() {
            assert!(
                started.elapsed() < START_DEADLINE,
                "docker-registry did not listen on {host}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Registry {
            host,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Runs `wasmkube push FILE REF` and returns what it printed (`REF@sha256:…`).
pub async fn push(file: &Path, reference: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_wasmkube"))
        .arg("push")
        .arg(file)
        .arg(reference)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run wasmkube push");
    assert!(
        out.status.success(),
        "wasmkube push {} {reference} failed:\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
