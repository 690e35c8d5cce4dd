//! Test helpers: a real OCI registry (Debian's `docker-registry`, distribution 2.8) run as
//! a child process on a free loopback port, and a small web server for URL modules.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A wasm core module that differs from others by a custom section named `name`.
pub(crate) fn module(name: &str) -> Vec<u8> {
    assert!(name.len() < 127, "name too long for a one-byte LEB128 size");
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    m.push(0); // custom section
    m.push(name.len() as u8 + 1);
    m.push(name.len() as u8);
    m.extend_from_slice(name.as_bytes());
    m
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A registry process, killed on drop.
pub(crate) struct TestRegistry {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// `127.0.0.1:<port>`.
    pub addr: String,
}

impl TestRegistry {
    /// A registry without authentication.
    pub async fn start() -> TestRegistry {
        TestRegistry::start_with(None).await
    }

    /// A registry requiring HTTP basic auth, with one `user:bcrypt-hash` htpasswd line.
    pub async fn start_with_htpasswd(line: &str) -> TestRegistry {
        TestRegistry::start_with(Some(line)).await
    }

    async fn start_with(htpasswd: Option<&str>) -> TestRegistry {
        let mut dir = tempfile::tempdir().expect("registry temp dir");
        // A freed port can be taken by someone else before the registry binds it: retry.
        for _attempt in 0..5 {
            let port = free_port();
            let config = registry_config(&dir, port, htpasswd);
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config).expect("write registry config");
            let log_path = dir.path().join(format!("registry-{port}.log"));
            let log = std::fs::File::create(&log_path).expect("registry log");
            let child = Command::new(REGISTRY_BIN)
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log"))
                .stderr(log)
                .spawn()
                .expect("start docker-registry (apt-get install docker-registry)");
            let mut registry = TestRegistry {
                child: Some(child),
                dir,
                addr: format!("127.0.0.1:{port}"),
            };
            if registry.wait_ready(&log_path).await {
                return registry;
            }
            registry.stop();
            dir = std::mem::replace(&mut registry.dir, tempfile::tempdir().expect("tempdir"));
        }
        panic!("docker-registry did not start after 5 attempts");
    }

    /// Polls `GET /v2/` until it answers (200, or 401 with auth), or the process exits.
    async fn wait_ready(&mut self, log_path: &PathBuf) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let log = std::fs::read_to_string(log_path).unwrap_or_default();
                    eprintln!("docker-registry exited with {status}: {log}");
                    return false;
                }
            }
            if let Some(status) = http_status(&self.addr, "/v2/").await {
                if status == 200 || status == 401 {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let log = std::fs::read_to_string(log_path).unwrap_or_default();
        panic!(
            "docker-registry at {} not ready within 20 s: {log}",
            self.addr
        );
    }

    /// Kills the registry (its data stays until drop).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn registry_config(dir: &tempfile::TempDir, port: u16, htpasswd: Option<&str>) -> String {
    let root = dir.path().join("data");
    let mut config = format!(
        "version: 0.1\n\
         log:\n  level: warn\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n\
         http:\n  addr: 127.0.0.1:{port}\n  secret: wasmkube-test-secret\n",
        root.display()
    );
    if let Some(line) = htpasswd {
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, format!("{line}\n")).expect("write htpasswd");
        config.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: wasmkube-test\n    path: {}\n",
            path.display()
        ));
    }
    config
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The status code of a plain HTTP/1.0 GET, or None if nothing answers.
async fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// A web server serving in-memory files, counting requests; stopped on drop.
pub(crate) struct TestWeb {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    hits: Arc<AtomicUsize>,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct WebState {
    hits: Arc<AtomicUsize>,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
}

impl TestWeb {
    pub async fn start() -> TestWeb {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind web server");
        let addr = listener.local_addr().expect("web addr");
        let state = WebState {
            hits: Arc::new(AtomicUsize::new(0)),
            files: Arc::new(Mutex::new(HashMap::new())),
        };
        let app = axum::Router::new()
            .fallback(serve_file)
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestWeb {
            base: format!("http://{addr}"),
            hits: state.hits,
            files: state.files,
            task,
        }
    }

    /// Serves `bytes` at `path` (e.g. "/m.wasm").
    pub fn put(&self, path: &str, bytes: &[u8]) {
        self.files
            .lock()
            .expect("files lock")
            .insert(path.to_string(), bytes.to_vec());
    }

    /// How many requests were served so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for TestWeb {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_file(
    axum::extract::State(state): axum::extract::State<WebState>,
    uri: axum::http::Uri,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    state.hits.fetch_add(1, Ordering::SeqCst);
    let body = state
        .files
        .lock()
        .expect("files lock")
        .get(uri.path())
        .cloned();
    match body {
        Some(bytes) => bytes.into_response(),
        None => (axum::http::StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}
