//! A managed etcd child process.
//!
//! `wasmkube server` without `--etcd-servers` (and every storage test) needs a real etcd.
//! [`ManagedEtcd`] runs the `etcd` binary from PATH on free loopback ports with its data
//! in a given directory, waits until it serves linearizable reads, and supervises it: if
//! the child dies on its own it is started again on the same ports and data directory,
//! so clients (which reconnect by themselves) carry on. etcd's own output goes to
//! `<data_dir>/etcd.log`, never to our terminal.
//!
//! The child is killed when [`ManagedEtcd::stop`] is called, when the `ManagedEtcd` is
//! dropped, or when the runtime running its supervisor shuts down (`kill_on_drop`). A
//! parent killed with SIGKILL leaves the child behind: there is no portable
//! parent-death signal without libc.

use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The binary looked up on PATH.
const ETCD_BINARY: &str = "etcd";
/// How long a fresh (or restarted) etcd gets to answer a linearizable read.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// How often readiness is probed while starting.
const READY_POLL: Duration = Duration::from_millis(100);
/// How many port pairs a first start tries before giving up (another process may grab a
/// port between our probe bind and etcd's bind).
const PORT_ATTEMPTS: usize = 5;
/// Back-off bounds between restarts of a child that keeps dying.
const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(200);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Why a managed etcd could not be started or restarted.
#[derive(Debug, thiserror::Error)]
pub enum EtcdProcessError {
    /// There is no `etcd` binary on PATH.
    #[error("etcd not found on PATH: install it with \"apt-get install etcd-server\"")]
    NotInstalled,
    /// The data directory or the log file could not be created.
    #[error("cannot prepare etcd data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No free loopback port could be found.
    #[error("cannot find a free loopback port for etcd: {0}")]
    Ports(#[source] std::io::Error),
    /// The process could not be spawned.
    #[error("cannot start etcd: {0}")]
    Spawn(#[source] std::io::Error),
    /// etcd exited while starting.
    #[error("etcd exited while starting ({status}); see {log}: {tail}")]
    Exited {
        status: String,
        log: PathBuf,
        tail: String,
    },
    /// etcd did not answer in time.
    #[error("etcd did not become ready within {waited:?}; see {log}")]
    NotReady { waited: Duration, log: PathBuf },
    /// The supervisor task is gone (the runtime is shutting down).
    #[error("the etcd supervisor has stopped")]
    SupervisorGone,
}

/// How to run etcd: fixed once the first start has found its ports.
#[derive(Debug, Clone)]
struct Spec {
    binary: OsString,
    data_dir: PathBuf,
    log_path: PathBuf,
    client_port: u16,
    peer_port: u16,
}

impl Spec {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// Spawns the child; output is appended to the log so restarts keep the history.
    fn spawn(&self) -> Result<Child, EtcdProcessError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|source| EtcdProcessError::DataDir {
                path: self.log_path.clone(),
                source,
            })?;
        let log_err = log
            .try_clone()
            .map_err(|source| EtcdProcessError::DataDir {
                path: self.log_path.clone(),
                source,
            })?;
        let client = self.client_url();
        let peer = self.peer_url();
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--name")
            .arg("default")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("default={peer}"))
            .arg("--logger=zap")
            .arg("--log-level=error")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true);
        match cmd.spawn() {
            Ok(child) => Ok(child),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(EtcdProcessError::NotInstalled)
            }
            Err(e) => Err(EtcdProcessError::Spawn(e)),
        }
    }

    /// Polls until etcd serves a linearizable read, or the child exits, or the deadline.
    async fn wait_ready(&self, child: &mut Child) -> Result<(), EtcdProcessError> {
        let started = Instant::now();
        let url = self.client_url();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(self.exited(status));
            }
            if probe(&url).await {
                return Ok(());
            }
            if started.elapsed() >= READY_DEADLINE {
                return Err(EtcdProcessError::NotReady {
                    waited: READY_DEADLINE,
                    log: self.log_path.clone(),
                });
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    fn exited(&self, status: ExitStatus) -> EtcdProcessError {
        let mut tail = log_tail(&self.log_path);
        if tail.is_empty() {
            // etcd that cannot write its WAL cannot write its log either: a full disk
            // shows up as a silent exit, so say how much room there is.
            if let Some(free) = free_bytes(&self.data_dir) {
                tail = format!(
                    "the log is empty; the disk holding {} has {} MiB free",
                    self.data_dir.display(),
                    free >> 20
                );
            }
        }
        EtcdProcessError::Exited {
            status: status.to_string(),
            log: self.log_path.clone(),
            tail,
        }
    }

    /// Spawns and waits until ready; the child is killed if it never gets ready.
    async fn start(&self) -> Result<Child, EtcdProcessError> {
        let mut child = self.spawn()?;
        match self.wait_ready(&mut child).await {
            Ok(()) => Ok(child),
            Err(e) => {
                let _ = child.kill().await;
                Err(e)
            }
        }
    }
}

/// One linearizable read, bounded by a short timeout.
async fn probe(url: &str) -> bool {
    let attempt = async {
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(1));
        let mut client = etcd_client::Client::connect([url], Some(opts)).await.ok()?;
        let opts = etcd_client::GetOptions::new().with_count_only();
        client.get("/health", Some(opts)).await.ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Some(_))
    )
}

/// The last lines of etcd's log, to explain a failed start.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(5);
    lines[start..].join(" | ")
}

/// Bytes available to unprivileged writers on the filesystem holding `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: c_path is NUL-terminated and outlives the call; stat is written by statvfs
    // and only read after it reports success.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let stat = unsafe { stat.assume_init() };
    // The fields are 32 bits wide on 32-bit edge devices.
    #[allow(clippy::unnecessary_cast)]
    let free = stat.f_bavail as u64 * stat.f_frsize as u64;
    Some(free)
}

/// Two distinct free loopback ports (both listeners are held at once so they differ).
fn free_ports() -> Result<(u16, u16), EtcdProcessError> {
    let a = TcpListener::bind("127.0.0.1:0").map_err(EtcdProcessError::Ports)?;
    let b = TcpListener::bind("127.0.0.1:0").map_err(EtcdProcessError::Ports)?;
    let pa = a.local_addr().map_err(EtcdProcessError::Ports)?.port();
    let pb = b.local_addr().map_err(EtcdProcessError::Ports)?.port();
    Ok((pa, pb))
}

/// Requests from the handle to the supervisor, which owns the child.
enum Request {
    Restart(oneshot::Sender<Result<(), EtcdProcessError>>),
    Stop(oneshot::Sender<()>),
}

/// A supervised etcd child process on loopback ports.
pub struct ManagedEtcd {
    spec: Spec,
    /// Commands to the supervisor; dropping it makes the supervisor kill etcd and exit.
    commands: mpsc::Sender<Request>,
    supervisor: Option<JoinHandle<()>>,
    /// The current child's pid (0 while none runs), for tests that kill it behind our back.
    pid: Arc<AtomicU32>,
}

impl ManagedEtcd {
    /// Starts etcd from PATH with its data in `data_dir` and waits until it serves.
    pub async fn start(data_dir: &Path) -> Result<ManagedEtcd, EtcdProcessError> {
        Self::start_with_binary(OsStr::new(ETCD_BINARY), data_dir).await
    }

    /// Like [`start`](Self::start) with another binary, so tests can simulate a missing
    /// etcd without touching the process-wide PATH.
    async fn start_with_binary(
        binary: &OsStr,
        data_dir: &Path,
    ) -> Result<ManagedEtcd, EtcdProcessError> {
        std::fs::create_dir_all(data_dir).map_err(|source| EtcdProcessError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let mut last_err = None;
        for attempt in 1..=PORT_ATTEMPTS {
            let (client_port, peer_port) = free_ports()?;
            let spec = Spec {
                binary: binary.to_os_string(),
                data_dir: data_dir.to_path_buf(),
                log_path: data_dir.join("etcd.log"),
                client_port,
                peer_port,
            };
            match spec.start().await {
                Ok(child) => {
                    tracing::info!(
                        client_url = %spec.client_url(),
                        data_dir = %data_dir.display(),
                        pid = child.id().unwrap_or(0),
                        "managed etcd started"
                    );
                    return Ok(Self::supervise(spec, child));
                }
                // A port taken between our probe and etcd's bind makes etcd exit: retry
                // on other ports. Anything else is not going to get better.
                Err(e @ EtcdProcessError::Exited { .. }) => {
                    tracing::warn!(attempt, error = %e, "managed etcd failed to start, retrying on other ports");
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or(EtcdProcessError::SupervisorGone))
    }

    fn supervise(spec: Spec, child: Child) -> ManagedEtcd {
        let (tx, rx) = mpsc::channel(4);
        let pid = Arc::new(AtomicU32::new(child.id().unwrap_or(0)));
        let supervisor = tokio::spawn(supervisor(spec.clone(), child, rx, pid.clone()));
        ManagedEtcd {
            spec,
            commands: tx,
            supervisor: Some(supervisor),
            pid,
        }
    }

    /// The URL clients connect to, e.g. `http://127.0.0.1:34567`.
    pub fn client_url(&self) -> String {
        self.spec.client_url()
    }

    /// Where etcd's output goes.
    pub fn log_path(&self) -> &Path {
        &self.spec.log_path
    }

    /// The pid of the running child, if one runs.
    pub fn pid(&self) -> Option<u32> {
        match self.pid.load(Ordering::SeqCst) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// Stops etcd and starts it again on the same ports and data, waiting until it serves.
    pub async fn restart(&self) -> Result<(), EtcdProcessError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Request::Restart(tx))
            .await
            .map_err(|_| EtcdProcessError::SupervisorGone)?;
        rx.await.map_err(|_| EtcdProcessError::SupervisorGone)?
    }

    /// Kills etcd and waits for it to exit.
    pub async fn stop(mut self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Request::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
        if let Some(task) = self.supervisor.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ManagedEtcd {
    fn drop(&mut self) {
        // Dropping `commands` already tells the supervisor to stop; aborting as well makes
        // sure the child (kill_on_drop) goes even if the supervisor is mid-restart.
        if let Some(task) = self.supervisor.take() {
            task.abort();
        }
    }
}

/// What woke the supervisor up.
enum Wake {
    Exited(String),
    RetryDue,
    Command(Option<Request>),
}

/// Owns the child: restarts it when it dies unexpectedly, obeys restart/stop commands.
async fn supervisor(
    spec: Spec,
    child: Child,
    mut commands: mpsc::Receiver<Request>,
    pid: Arc<AtomicU32>,
) {
    let mut child = Some(child);
    let mut started_at = Instant::now();
    let mut backoff = RESTART_BACKOFF_MIN;
    loop {
        let wake = match child.as_mut() {
            Some(running) => tokio::select! {
                status = running.wait() => Wake::Exited(match status {
                    Ok(s) => s.to_string(),
                    Err(e) => e.to_string(),
                }),
                cmd = commands.recv() => Wake::Command(cmd),
            },
            None => tokio::select! {
                _ = tokio::time::sleep(backoff) => Wake::RetryDue,
                cmd = commands.recv() => Wake::Command(cmd),
            },
        };
        match wake {
            Wake::Exited(status) => {
                child = None;
                pid.store(0, Ordering::SeqCst);
                // A child that ran for a while gets a quick restart; one that keeps dying
                // right after start waits longer and longer.
                if started_at.elapsed() > RESTART_BACKOFF_MAX * 3 {
                    backoff = RESTART_BACKOFF_MIN;
                }
                tracing::warn!(
                    %status,
                    log = %spec.log_path.display(),
                    retry_in = ?backoff,
                    "managed etcd exited unexpectedly, restarting it"
                );
            }
            Wake::RetryDue => match spec.spawn() {
                Ok(c) => {
                    let id = c.id().unwrap_or(0);
                    pid.store(id, Ordering::SeqCst);
                    child = Some(c);
                    started_at = Instant::now();
                    backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
                    tracing::info!(pid = id, "managed etcd restarted");
                }
                Err(e) => {
                    backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
                    tracing::error!(error = %e, retry_in = ?backoff, "cannot restart managed etcd");
                }
            },
            Wake::Command(Some(Request::Restart(reply))) => {
                if let Some(mut old) = child.take() {
                    let _ = old.kill().await;
                }
                pid.store(0, Ordering::SeqCst);
                match spec.start().await {
                    Ok(c) => {
                        let id = c.id().unwrap_or(0);
                        pid.store(id, Ordering::SeqCst);
                        child = Some(c);
                        started_at = Instant::now();
                        backoff = RESTART_BACKOFF_MIN;
                        tracing::info!(pid = id, "managed etcd restarted on request");
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) => {
                        // Left down: the retry path keeps trying after the back-off.
                        tracing::error!(error = %e, "managed etcd failed to restart");
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Wake::Command(stop) => {
                if let Some(mut old) = child.take() {
                    let _ = old.kill().await;
                }
                pid.store(0, Ordering::SeqCst);
                tracing::info!("managed etcd stopped");
                if let Some(Request::Stop(reply)) = stop {
                    let _ = reply.send(());
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(url: &str, key: &str) -> Option<(Vec<u8>, i64)> {
        let mut client = etcd_client::Client::connect([url], None).await.ok()?;
        let resp = client.get(key, None).await.ok()?;
        let rev = resp.header()?.revision();
        resp.kvs().first().map(|kv| (kv.value().to_vec(), rev))
    }

    #[tokio::test]
    async fn missing_binary_names_the_package() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = ManagedEtcd::start_with_binary(
            OsStr::new("/nonexistent/wasmkube-test/etcd"),
            dir.path(),
        )
        .await
        .err()
        .expect("start must fail");
        assert!(matches!(err, EtcdProcessError::NotInstalled), "{err:?}");
        assert_eq!(
            err.to_string(),
            "etcd not found on PATH: install it with \"apt-get install etcd-server\""
        );
    }

    #[tokio::test]
    async fn a_silent_exit_reports_the_free_disk_space() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        // Stands in for an etcd that dies before it can log, as on a full disk.
        let fake = dir.path().join("etcd");
        std::fs::write(&fake, "#!/bin/sh\nexit 1\n").expect("write fake etcd");
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let err = ManagedEtcd::start_with_binary(fake.as_os_str(), &dir.path().join("data"))
            .await
            .err()
            .expect("start must fail");
        let text = err.to_string();
        assert!(matches!(err, EtcdProcessError::Exited { .. }), "{err:?}");
        assert!(
            text.contains("the log is empty; the disk holding"),
            "{text}"
        );
        assert!(text.contains("MiB free"), "{text}");
    }

    #[tokio::test]
    async fn restart_keeps_data_and_ports() {
        let dir = tempfile::tempdir().expect("tempdir");
        let etcd = ManagedEtcd::start(dir.path()).await.expect("start etcd");
        let url = etcd.client_url();
        let mut client = etcd_client::Client::connect([&url], None)
            .await
            .expect("connect");
        let put = client.put("/k", "v1", None).await.expect("put");
        let rev_before = put.header().expect("header").revision();
        let pid_before = etcd.pid();

        etcd.restart().await.expect("restart");
        assert_ne!(etcd.pid(), pid_before);
        assert_eq!(etcd.client_url(), url);
        let (value, rev_after) = get(&url, "/k").await.expect("key survives restart");
        assert_eq!(value, b"v1");
        assert!(rev_after >= rev_before);
        assert!(dir.path().join("etcd.log").exists());
        etcd.stop().await;
        assert!(
            get(&url, "/k").await.is_none(),
            "etcd still answers after stop"
        );
    }

    #[tokio::test]
    async fn a_new_start_on_the_same_data_dir_keeps_data() {
        // What a restart of `wasmkube server` does: new ports, same data.
        let dir = tempfile::tempdir().expect("tempdir");
        let etcd = ManagedEtcd::start(dir.path()).await.expect("start etcd");
        let url = etcd.client_url();
        let mut client = etcd_client::Client::connect([&url], None)
            .await
            .expect("connect");
        let put = client.put("/k", "v1", None).await.expect("put");
        let rev = put.header().expect("header").revision();
        etcd.stop().await;

        let etcd = ManagedEtcd::start(dir.path()).await.expect("start again");
        let (value, rev_after) = get(&etcd.client_url(), "/k").await.expect("key survives");
        assert_eq!(value, b"v1");
        assert!(rev_after >= rev);
        let mut client = etcd_client::Client::connect([etcd.client_url()], None)
            .await
            .expect("connect");
        let put = client
            .put("/k", "v2", None)
            .await
            .expect("write after restart");
        assert!(put.header().expect("header").revision() > rev);
        etcd.stop().await;
    }

    #[tokio::test]
    async fn supervisor_restarts_a_killed_child() {
        let dir = tempfile::tempdir().expect("tempdir");
        let etcd = ManagedEtcd::start(dir.path()).await.expect("start etcd");
        let url = etcd.client_url();
        let mut client = etcd_client::Client::connect([&url], None)
            .await
            .expect("connect");
        client.put("/k", "v1", None).await.expect("put");
        let pid = etcd.pid().expect("running");
        let status = std::process::Command::new("kill")
            .arg("-9")
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success());

        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if matches!(etcd.pid(), Some(p) if p != pid) {
                if let Some((value, _)) = get(&url, "/k").await {
                    assert_eq!(value, b"v1");
                    break;
                }
            }
            assert!(Instant::now() < deadline, "etcd was not restarted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        etcd.stop().await;
    }
}
