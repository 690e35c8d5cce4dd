//! The agent's own credentials: obtained once with the cluster's join token, then kept
//! under `<data-dir>/` and reused on every restart.
//!
//! Joining is one HTTPS call to the API server (`POST /wasmkube/v1/join`, authenticated
//! by the join token, the server verified against the cluster CA the operator passes).
//! The answer is a client certificate for `system:node:<name>`, written into
//! `<data-dir>/kubeconfig` for everything the agent does through the API, and the
//! serving certificate the agent's own HTTPS endpoint (container logs) presents.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Why the agent has no credentials.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// Neither stored credentials nor a join token.
    #[error("the node has no credentials yet: pass the cluster's join token (--token, from the server's <data-dir>/join-token) and its CA certificate (--ca-cert)")]
    NoToken,
    /// A join needs the CA to verify the server with.
    #[error(
        "joining needs the cluster CA certificate (--ca-cert, the server's <data-dir>/pki/ca.crt)"
    )]
    NoCa,
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The join call failed.
    #[error("joining the cluster at {server}: {message}")]
    Join { server: String, message: String },
}

/// Everything the agent needs to talk to the API server and to serve.
#[derive(Clone)]
pub struct Credentials {
    /// A kubeconfig with the node's client certificate.
    pub kubeconfig: PathBuf,
    pub ca_pem: String,
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys stay out of logs.
        f.debug_struct("Credentials")
            .field("kubeconfig", &self.kubeconfig)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// An API client authenticated as the node, multiplexing over one HTTP/2
    /// connection (see `api_client.rs`).
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        use anyhow::Context as _;
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .context("reading the node kubeconfig")?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .context("loading the node kubeconfig")?;
        super::api_client::multiplexed(&config).context("building the API client")
    }

    /// The node's client certificate and key (PEM), from its kubeconfig: what it
    /// presents to its peers (the Service proxies' tunnels).
    pub fn client_pem(&self) -> anyhow::Result<(String, String)> {
        use anyhow::Context as _;
        let text = std::fs::read_to_string(&self.kubeconfig)
            .with_context(|| format!("reading {}", self.kubeconfig.display()))?;
        let config: serde_json::Value =
            serde_json::from_str(&text).context("parsing the node kubeconfig")?;
        let field = |name: &str| -> anyhow::Result<String> {
            let b64 = config["users"][0]["user"][name]
                .as_str()
                .with_context(|| format!("the node kubeconfig has no {name}"))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .with_context(|| format!("the node kubeconfig's {name}"))?;
            String::from_utf8(bytes).with_context(|| format!("the node kubeconfig's {name}"))
        };
        Ok((field("client-certificate-data")?, field("client-key-data")?))
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JoinRequest<'a> {
    node_name: &'a str,
    addresses: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JoinResponse {
    ca_certificate: String,
    client_certificate: String,
    client_key: String,
    serving_certificate: String,
    serving_key: String,
}

const KUBECONFIG: &str = "kubeconfig";
const CA: &str = "pki/ca.crt";
const SERVING_CERT: &str = "pki/agent.crt";
const SERVING_KEY: &str = "pki/agent.key";

/// Where the join call goes, relative to the server URL.
const JOIN_PATH: &str = "/wasmkube/v1/join";

/// Loads the node's credentials from `dir`, joining the cluster first if there are
/// none (or if they were issued for another server or node name).
pub async fn credentials(
    dir: &Path,
    server: &str,
    node_name: &str,
    addresses: &[IpAddr],
    join_token: Option<&str>,
    ca_file: Option<&Path>,
) -> Result<Credentials, BootstrapError> {
    if let Some(c) = stored(dir, server, node_name) {
        return Ok(c);
    }
    let token = join_token.ok_or(BootstrapError::NoToken)?;
    let ca_path = ca_file.ok_or(BootstrapError::NoCa)?;
    let ca_pem = read(ca_path)?;
    let join_err = |message: String| BootstrapError::Join {
        server: server.to_string(),
        message,
    };
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes())
        .map_err(|e| join_err(format!("the CA certificate {}: {e}", ca_path.display())))?;
    // reqwest is built without a provider of its own; callers other than the agent
    // (tests, benches) may not have installed the process-wide one yet.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .tls_certs_only([ca])
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| join_err(format!("building the HTTPS client: {e}")))?;
    let mut names: Vec<String> = addresses.iter().map(IpAddr::to_string).collect();
    names.push("localhost".into());
    let resp = client
        .post(format!("{}{JOIN_PATH}", server.trim_end_matches('/')))
        .bearer_auth(token)
        .json(&JoinRequest {
            node_name,
            addresses: names,
        })
        .send()
        .await
        .map_err(|e| join_err(error_chain(&e)))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| join_err(e.to_string()))?;
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return Err(join_err(format!("{status}: {message}")));
    }
    let joined: JoinResponse =
        serde_json::from_slice(&body).map_err(|e| join_err(format!("unreadable answer: {e}")))?;
    write(&dir.join(CA), &joined.ca_certificate, 0o644)?;
    write(&dir.join(SERVING_CERT), &joined.serving_certificate, 0o644)?;
    write(&dir.join(SERVING_KEY), &joined.serving_key, 0o600)?;
    let kubeconfig = kubeconfig(
        server,
        node_name,
        &joined.ca_certificate,
        &joined.client_certificate,
        &joined.client_key,
    );
    let path = dir.join(KUBECONFIG);
    write(&path, &kubeconfig, 0o600)?;
    tracing::info!(node = node_name, server, "joined the cluster");
    Ok(Credentials {
        kubeconfig: path,
        ca_pem: joined.ca_certificate,
        serving_cert_pem: joined.serving_certificate,
        serving_key_pem: joined.serving_key,
    })
}

/// Credentials from an earlier join, if they are for this server and node.
fn stored(dir: &Path, server: &str, node_name: &str) -> Option<Credentials> {
    let path = dir.join(KUBECONFIG);
    let text = std::fs::read_to_string(&path).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    let same_server = config["clusters"][0]["cluster"]["server"].as_str() == Some(server);
    let same_node =
        config["users"][0]["name"].as_str() == Some(&format!("system:node:{node_name}"));
    if !(same_server && same_node) {
        tracing::info!(path = %path.display(), "stored credentials are for another server or node; joining again");
        return None;
    }
    Some(Credentials {
        kubeconfig: path,
        ca_pem: std::fs::read_to_string(dir.join(CA)).ok()?,
        serving_cert_pem: std::fs::read_to_string(dir.join(SERVING_CERT)).ok()?,
        serving_key_pem: std::fs::read_to_string(dir.join(SERVING_KEY)).ok()?,
    })
}

/// A kubeconfig (JSON, which every kubeconfig reader accepts) with embedded certificates.
fn kubeconfig(server: &str, node: &str, ca: &str, cert: &str, key: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let user = format!("system:node:{node}");
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "wasmkube", "cluster": {"server": server, "certificate-authority-data": b64(ca)}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)}}],
        "contexts": [{"name": "node", "context": {"cluster": "wasmkube", "user": user}}],
        "current-context": "node",
    });
    serde_json::to_string_pretty(&config).unwrap_or_default()
}

fn read(path: &Path) -> Result<String, BootstrapError> {
    std::fs::read_to_string(path).map_err(|source| BootstrapError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<(), BootstrapError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| BootstrapError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// An error with its causes, since reqwest's Display hides the interesting part.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_credentials_are_reused_only_for_the_same_server_and_node() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(&d.join(CA), "ca", 0o644).unwrap();
        write(&d.join(SERVING_CERT), "cert", 0o644).unwrap();
        write(&d.join(SERVING_KEY), "key", 0o600).unwrap();
        write(
            &d.join(KUBECONFIG),
            &kubeconfig("https://127.0.0.1:1", "n1", "ca", "c", "k"),
            0o600,
        )
        .unwrap();
        assert!(stored(d, "https://127.0.0.1:1", "n1").is_some());
        assert!(stored(d, "https://127.0.0.1:2", "n1").is_none());
        assert!(stored(d, "https://127.0.0.1:1", "n2").is_none());
    }

    #[tokio::test]
    async fn without_a_token_the_error_says_what_to_pass() {
        let dir = tempfile::tempdir().unwrap();
        let err = credentials(dir.path(), "https://127.0.0.1:1", "n", &[], None, None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("--token"), "{err}");
    }
}
