//! `pods/log`: the API server's half of `kubectl logs`, proxied to the pod's node agent.
//!
//! As kube-apiserver does, the request is checked here — the query (`PodLogOptions`),
//! the container (defaulted when the pod has one, or from the
//! `kubectl.kubernetes.io/default-container` annotation), the pod bound to a node — and
//! then forwarded to the agent's kubelet API, `GET https://NODE:PORT/containerLogs/NS/
//! POD/CONTAINER?…`. The agent's answer streams back unchanged; its errors come back as
//! `Status` objects.
//!
//! What the kubelet decides from the container's status (a container still waiting
//! has no logs; `previous` needs a terminated run) is decided here from the pod's
//! `status`, because the agent serves files and knows no statuses. One consequence:
//! while a container waits in CrashLoopBackOff, its last run is the newest one on disk,
//! so `previous` asks the agent for the current run — as the kubelet, which then reads
//! `lastState.terminated`.
//!
//! The API server reaches agents with a client certificate of the cluster CA for
//! `kube-apiserver-kubelet-client` in `system:masters` (issued once per CA), and trusts
//! only the cluster CA for the agents' serving certificates, which cover the addresses
//! a node reports.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::objects::Objects;
use super::request::Query;
use super::status::{ApiError, ApiResult};
use super::ApiState;
use crate::pki::Pki;
use crate::registry::Cause;

/// The client identity the API server presents to node agents (kubeadm's name for it).
pub const KUBELET_CLIENT_CN: &str = "kube-apiserver-kubelet-client";
/// The group of that identity.
pub const KUBELET_CLIENT_GROUP: &str = "system:masters";
/// The annotation naming the container `kubectl logs` and `exec` default to.
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";
/// The kubelet port used when a node does not publish one.
const DEFAULT_KUBELET_PORT: u16 = 10250;
/// Time to connect to an agent and finish the TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for an agent to start answering (the body of a follow then streams unbounded).
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of an agent's error answer is kept as the Status message.
pub(crate) const MAX_ERROR_BODY: usize = 4096;

/// `GET /api/v1/namespaces/NS/pods/NAME/log`.
pub async fn log(
    state: &Arc<ApiState>,
    ns: Option<&str>,
    name: &str,
    q: &Query,
) -> ApiResult<Response> {
    let ns = ns.ok_or_else(|| ApiError::bad_request("pods/log requires a namespace"))?;
    pod_log(&state.objects, &state.pki, ns, name, q).await
}

/// The whole of `pods/log` on the object layer and the PKI (what [`log`] needs of its
/// state).
pub async fn pod_log(
    objects: &Objects,
    pki: &Pki,
    ns: &str,
    name: &str,
    q: &Query,
) -> ApiResult<Response> {
    let mut opts = LogQuery::parse(q, name)?;
    let pods = objects
        .registry
        .lookup("", "v1", "pods")
        .ok_or_else(|| ApiError::internal("the pods resource is not registered"))?;
    let pod = objects.get(&pods, Some(ns), name).await?;
    let container = choose_container(&pod, name, opts.container.as_deref())?;
    opts.previous = run_to_read(&pod, name, &container, opts.previous)?;
    let (node_name, host, port) = pod_node(objects, &pod, name).await?;
    let path = format!(
        "/containerLogs/{}/{}/{}?{}",
        ns,
        name,
        container,
        opts.kubelet_query()
    );
    tracing::debug!(namespace = ns, pod = name, %container, node = %node_name, %host, port, follow = opts.follow, "proxying pods/log");
    fetch(pki, &host, port, &path, &node_name).await
}

/// The query of `pods/log`, validated as Kubernetes' `PodLogOptions`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogQuery {
    pub container: Option<String>,
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<i64>,
    pub since_seconds: Option<i64>,
    /// RFC 3339, checked.
    pub since_time: Option<String>,
    pub limit_bytes: Option<i64>,
}

impl LogQuery {
    /// Reads and validates the query: malformed values are 400 BadRequest, values out of
    /// range a 422 Invalid `PodLogOptions` naming the field.
    pub fn parse(q: &Query, pod: &str) -> ApiResult<LogQuery> {
        let int = |key: &str| -> ApiResult<Option<i64>> {
            match q.non_empty(key) {
                None => Ok(None),
                Some(v) => v.parse::<i64>().map(Some).map_err(|_| {
                    ApiError::bad_request(format!(
                        "invalid value for {key}: {v:?} is not an integer"
                    ))
                }),
            }
        };
        let since_time = match q.non_empty("sinceTime") {
            None => None,
            Some(v) => {
                chrono::DateTime::parse_from_rfc3339(v).map_err(|e| {
                    ApiError::bad_request(format!("invalid value for sinceTime: {v:?}: {e}"))
                })?;
                Some(v.to_string())
            }
        };
        let opts = LogQuery {
            container: q.non_empty("container").map(str::to_string),
            follow: go_bool(q.get("follow")),
            previous: go_bool(q.get("previous")),
            timestamps: go_bool(q.get("timestamps")),
            tail_lines: int("tailLines")?,
            since_seconds: int("sinceSeconds")?,
            since_time,
            limit_bytes: int("limitBytes")?,
        };
        let causes = opts.validate();
        if causes.is_empty() {
            return Ok(opts);
        }
        let summary: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let summary = match summary.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        let mut err = ApiError::new(
            422,
            "Invalid",
            format!("PodLogOptions {pod:?} is invalid: {summary}"),
        );
        err.details = Some(json!({"name": pod, "kind": "PodLogOptions", "causes": causes}));
        Err(err)
    }

    /// Upstream's `ValidatePodLogOptions`.
    fn validate(&self) -> Vec<Cause> {
        let mut causes = Vec::new();
        if let Some(n) = self.tail_lines.filter(|n| *n < 0) {
            causes.push(Cause::invalid_int(
                "tailLines",
                n,
                "must be greater than or equal to 0",
            ));
        }
        if let Some(n) = self.limit_bytes.filter(|n| *n < 1) {
            causes.push(Cause::invalid_int(
                "limitBytes",
                n,
                "must be greater than 0",
            ));
        }
        match (self.since_seconds, &self.since_time) {
            (Some(_), Some(_)) => causes.push(Cause::forbidden(
                "sinceSeconds",
                "at most one of `sinceTime` or `sinceSeconds` may be specified",
            )),
            (Some(n), None) if n < 1 => causes.push(Cause::invalid_int(
                "sinceSeconds",
                n,
                "must be greater than 0",
            )),
            _ => {}
        }
        causes
    }

    /// The agent's query string (the container travels in the path).
    pub fn kubelet_query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (key, on) in [
            ("follow", self.follow),
            ("previous", self.previous),
            ("timestamps", self.timestamps),
        ] {
            if on {
                q.append_pair(key, "true");
            }
        }
        for (key, value) in [
            ("tailLines", self.tail_lines),
            ("sinceSeconds", self.since_seconds),
            ("limitBytes", self.limit_bytes),
        ] {
            if let Some(v) = value {
                q.append_pair(key, &v.to_string());
            }
        }
        if let Some(t) = &self.since_time {
            q.append_pair("sinceTime", t);
        }
        q.finish()
    }
}

/// A query boolean as apimachinery converts it: present and not `0`/`false` is true.
fn go_bool(v: Option<&str>) -> bool {
    match v {
        None => false,
        Some(v) => v != "0" && !v.eq_ignore_ascii_case("false"),
    }
}

fn container_names<'a>(pod: &'a Value, list: &str) -> Vec<&'a str> {
    pod.pointer(&format!("/spec/{list}"))
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default()
}

/// The container whose logs are read: the one asked for (any container of the pod,
/// init and ephemeral ones included), else the annotated default, else the only one.
pub fn choose_container(pod: &Value, pod_name: &str, requested: Option<&str>) -> ApiResult<String> {
    let containers = container_names(pod, "containers");
    let init = container_names(pod, "initContainers");
    let ephemeral = container_names(pod, "ephemeralContainers");
    let exists = |c: &str| containers.contains(&c) || init.contains(&c) || ephemeral.contains(&c);
    if let Some(c) = requested.filter(|c| !c.is_empty()) {
        if exists(c) {
            return Ok(c.to_string());
        }
        return Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {pod_name}"
        )));
    }
    let annotated = pod
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(DEFAULT_CONTAINER_ANNOTATION))
        .and_then(Value::as_str)
        .filter(|c| exists(c));
    if let Some(c) = annotated {
        return Ok(c.to_string());
    }
    match containers.as_slice() {
        [only] => Ok(only.to_string()),
        [] => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {pod_name}"
        ))),
        many => {
            let mut message = format!(
                "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                many.join(" ")
            );
            if !init.is_empty() {
                message.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            if !ephemeral.is_empty() {
                message.push_str(&format!(
                    " or one of the ephemeral containers: [{}]",
                    ephemeral.join(" ")
                ));
            }
            Err(ApiError::bad_request(message))
        }
    }
}

/// What the kubelet checks against the container's status before reading logs.
/// Returns the `previous` to send the agent. Without a status for the container (the
/// agent has not reported yet) the request goes through and the agent's files decide.
pub fn run_to_read(
    pod: &Value,
    pod_name: &str,
    container: &str,
    previous: bool,
) -> ApiResult<bool> {
    let status = [
        "containerStatuses",
        "initContainerStatuses",
        "ephemeralContainerStatuses",
    ]
    .iter()
    .filter_map(|list| {
        pod.pointer(&format!("/status/{list}"))
            .and_then(Value::as_array)
    })
    .flatten()
    .find(|s| s.get("name").and_then(Value::as_str) == Some(container));
    let Some(status) = status else {
        return Ok(previous);
    };
    let state = |key: &str| {
        status
            .pointer(&format!("/state/{key}"))
            .filter(|v| v.is_object())
    };
    let last_terminated = status
        .pointer("/lastState/terminated")
        .is_some_and(Value::is_object);
    let waiting = state("waiting");
    let active = state("running").is_some() || state("terminated").is_some();
    if previous {
        if !last_terminated {
            return Err(ApiError::bad_request(format!(
                "previous terminated container \"{container}\" in pod \"{pod_name}\" not found"
            )));
        }
        // Waiting to restart: the run in lastState is the newest one on the node.
        return Ok(active);
    }
    if active || last_terminated {
        return Ok(false);
    }
    let why = match waiting
        .and_then(|w| w.get("reason"))
        .and_then(Value::as_str)
    {
        Some("ErrImagePull") => ": image can't be pulled".to_string(),
        Some("ImagePullBackOff") => ": trying and failing to pull image".to_string(),
        Some(reason) if !reason.is_empty() => format!(": {reason}"),
        _ => " - no logs yet".to_string(),
    };
    Err(ApiError::bad_request(format!(
        "container \"{container}\" in pod \"{pod_name}\" is waiting to start{why}"
    )))
}

/// Where a node's agent listens: its InternalIP (else Hostname, InternalDNS, ExternalIP,
/// ExternalDNS) and `daemonEndpoints.kubeletEndpoint.Port`.
pub fn node_endpoint(node: &Value, node_name: &str) -> ApiResult<(String, u16)> {
    let addresses = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let host = [
        "InternalIP",
        "Hostname",
        "InternalDNS",
        "ExternalIP",
        "ExternalDNS",
    ]
    .iter()
    .find_map(|kind| {
        addresses.iter().find_map(|a| {
            (a.get("type").and_then(Value::as_str) == Some(kind))
                .then(|| a.get("address").and_then(Value::as_str))
                .flatten()
                .filter(|s| !s.is_empty())
        })
    })
    .ok_or_else(|| {
        ApiError::internal(format!(
            "node {node_name:?} has no address to reach its agent at"
        ))
    })?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .filter(|p| *p > 0)
        .map(|p| {
            u16::try_from(p).map_err(|_| {
                ApiError::internal(format!(
                    "node {node_name:?} publishes an invalid kubelet port {p}"
                ))
            })
        })
        .transpose()?
        .unwrap_or(DEFAULT_KUBELET_PORT);
    Ok((host.to_string(), port))
}

/// The TLS client configuration for agents, built once per cluster CA (a process may
/// run more than one API server in tests, each with its own CA).
fn kubelet_tls(pki: &Pki) -> ApiResult<Arc<rustls::ClientConfig>> {
    static CONFIGS: OnceLock<Mutex<HashMap<Vec<u8>, Arc<rustls::ClientConfig>>>> = OnceLock::new();
    let configs = CONFIGS.get_or_init(|| Mutex::new(HashMap::new()));
    let ca = pki.ca_cert_der().as_ref().to_vec();
    let mut configs = configs.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(config) = configs.get(&ca) {
        return Ok(config.clone());
    }
    let config = Arc::new(build_kubelet_tls(pki).map_err(|e| {
        ApiError::internal(format!("preparing the kubelet client credentials: {e}"))
    })?);
    configs.insert(ca, config.clone());
    Ok(config)
}

fn build_kubelet_tls(pki: &Pki) -> Result<rustls::ClientConfig, String> {
    let (cert_pem, key_pem) = pki
        .issue_client_cert(KUBELET_CLIENT_CN, &[KUBELET_CLIENT_GROUP])
        .map_err(|e| e.to_string())?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the client certificate: {e}"))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| format!("the client key: {e}"))?
        .ok_or("the client key PEM holds no key")?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(pki.ca_cert_der().clone())
        .map_err(|e| format!("the cluster CA: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| format!("the client certificate: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A TLS connection to a node's agent, made with the API server's kubelet-client
/// identity.
pub(crate) struct AgentConnection {
    pub stream: tokio_rustls::client::TlsStream<TcpStream>,
    /// `host:port` (IPv6 hosts bracketed), for the `Host` header and messages.
    pub authority: String,
}

/// The 503 for an agent that cannot be reached.
pub(crate) fn unreachable(node: &str, authority: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::unavailable(format!(
        "cannot reach the agent of node {node:?} at https://{authority}: {why}"
    ))
}

/// Connects to the agent of `node` at `host:port`.
pub(crate) async fn connect_agent(
    pki: &Pki,
    host: &str,
    port: u16,
    node: &str,
) -> ApiResult<AgentConnection> {
    let tls = kubelet_tls(pki)?;
    let authority = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        _ => format!("{host}:{port}"),
    };
    let server_name = ServerName::try_from(host.to_string())
        .map_err(|e| unreachable(node, &authority, format!("invalid address: {e}")))?;
    let connect = async {
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| unreachable(node, &authority, e))?;
        let _ = tcp.set_nodelay(true);
        TlsConnector::from(tls)
            .connect(server_name, tcp)
            .await
            .map_err(|e| unreachable(node, &authority, format!("TLS: {e}")))
    };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| unreachable(node, &authority, "timed out connecting"))??;
    Ok(AgentConnection { stream, authority })
}

/// The node a pod is bound to and where its agent listens: (node name, host, port).
pub(crate) async fn pod_node(
    objects: &Objects,
    pod: &Value,
    pod_name: &str,
) -> ApiResult<(String, String, u16)> {
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(format!("pod {pod_name} does not have a host assigned"))
        })?;
    let nodes = objects
        .registry
        .lookup("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("the nodes resource is not registered"))?;
    let node = objects.get(&nodes, None, node_name).await?;
    let (host, port) = node_endpoint(&node, node_name)?;
    Ok((node_name.to_string(), host, port))
}

/// Sends `GET path` to the agent at `host:port` and streams its answer back.
async fn fetch(pki: &Pki, host: &str, port: u16, path: &str, node: &str) -> ApiResult<Response> {
    let AgentConnection { stream, authority } = connect_agent(pki, host, port, node).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(node, &authority, e))?;
    let node_name = node.to_string();
    // The connection ends with the response body: when the agent finishes, or when the
    // client goes away and the body is dropped.
    tokio::spawn(async move {
        if let Err(error) = conn.await {
            tracing::debug!(node = %node_name, %error, "kubelet connection ended");
        }
    });
    let req = Request::get(path)
        .header(header::HOST, &authority)
        .header(header::USER_AGENT, "wasmkube-apiserver")
        .body(Empty::<Bytes>::new())
        .map_err(|e| ApiError::internal(format!("building the kubelet request: {e}")))?;
    let resp = tokio::time::timeout(RESPONSE_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| unreachable(node, &authority, "timed out waiting for an answer"))?
        .map_err(|e| unreachable(node, &authority, e))?;
    let status = resp.status();
    if status.is_success() {
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .cloned()
            .unwrap_or_else(|| header::HeaderValue::from_static("text/plain"));
        return Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::new(resp.into_body()))
            .map_err(|e| ApiError::internal(format!("building the response: {e}")));
    }
    let body = tokio::time::timeout(
        CONNECT_TIMEOUT,
        http_body_util::Limited::new(resp.into_body(), MAX_ERROR_BODY).collect(),
    )
    .await;
    let message = match body {
        Ok(Ok(collected)) => String::from_utf8_lossy(&collected.to_bytes())
            .trim()
            .to_string(),
        _ => String::new(),
    };
    Err(agent_error(status, message, node))
}

/// An agent's failure as the Status the client sees.
pub(crate) fn agent_error(status: StatusCode, message: String, node: &str) -> ApiError {
    let message = if message.is_empty() {
        format!("the agent of node {node:?} answered {status}")
    } else {
        message
    };
    match status.as_u16() {
        400 => ApiError::bad_request(message),
        404 => ApiError::new(404, "NotFound", message),
        // The agent refused our credentials: a cluster problem, not the caller's.
        401 | 403 => ApiError::internal(format!(
            "the agent of node {node:?} refused the API server: {message}"
        )),
        code if (400..500).contains(&code) => ApiError::new(code, "BadRequest", message),
        503 => ApiError::unavailable(message),
        _ => ApiError::internal(message),
    }
}

/// The TLS configuration of a stand-in agent in tests: a serving certificate of the
/// cluster CA for 127.0.0.1 and a required client certificate of the same CA.
#[cfg(test)]
pub(crate) fn agent_tls_config(pki: &Pki) -> rustls::ServerConfig {
    let (cert_pem, key_pem) = pki
        .issue_node_serving_cert("node1", &["127.0.0.1".to_string()])
        .expect("serving cert");
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("certs");
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .expect("key")
        .expect("a key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_cert_der().clone()).expect("ca");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("verifier");
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .expect("server config")
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::convert::Infallible;

    use futures::StreamExt;
    use hyper_util::rt::TokioExecutor;
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;
    use tokio_rustls::TlsAcceptor;

    use crate::apiserver::allocator::ServiceAllocator;
    use crate::registry::Registry;
    use crate::storage::Store;

    const PATIENCE: Duration = Duration::from_secs(10);

    fn query(raw: &str) -> Query {
        Query::parse(Some(raw))
    }

    fn pod(spec: Value, status: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "ns"}, "spec": spec, "status": status})
    }

    #[test]
    fn query_is_validated_like_pod_log_options() {
        let q = LogQuery::parse(
            &query("container=app&follow=true&previous=0&timestamps=1&tailLines=5&sinceSeconds=10&limitBytes=100&pretty=true"),
            "web",
        )
        .expect("valid");
        assert_eq!(q.container.as_deref(), Some("app"));
        assert!(q.follow && q.timestamps && !q.previous);
        assert_eq!(
            q.kubelet_query(),
            "follow=true&timestamps=true&tailLines=5&sinceSeconds=10&limitBytes=100"
        );
        let q = LogQuery::parse(
            &query("sinceTime=2026-11-27T11:00:00%2B01:00&previous=False"),
            "web",
        )
        .expect("valid");
        assert!(!q.previous);
        assert_eq!(
            q.kubelet_query(),
            "sinceTime=2026-11-27T11%3A00%3A00%2B01%3A00"
        );
        assert_eq!(
            LogQuery::parse(&query(""), "web").expect("valid"),
            LogQuery::default()
        );

        let err = LogQuery::parse(&query("tailLines=-1"), "web").expect_err("negative");
        assert_eq!(err.code, 422);
        assert_eq!(
            err.message,
            "PodLogOptions \"web\" is invalid: tailLines: Invalid value: -1: must be greater than or equal to 0"
        );
        assert_eq!(
            err.details.as_ref().expect("details")["causes"][0]["field"],
            "tailLines"
        );
        let err = LogQuery::parse(&query("sinceSeconds=0&limitBytes=0"), "web").expect_err("zero");
        assert_eq!(
            err.message,
            "PodLogOptions \"web\" is invalid: [limitBytes: Invalid value: 0: must be greater than 0, sinceSeconds: Invalid value: 0: must be greater than 0]"
        );
        let err = LogQuery::parse(
            &query("sinceSeconds=5&sinceTime=2026-11-27T11:00:00Z"),
            "web",
        )
        .expect_err("both");
        assert_eq!(err.code, 422);
        assert!(err.message.contains("sinceSeconds: Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified"), "{}", err.message);
        for bad in ["tailLines=x", "sinceTime=yesterday", "limitBytes=1.5"] {
            let err = LogQuery::parse(&query(bad), "web").expect_err(bad);
            assert_eq!((err.code, err.reason), (400, "BadRequest"), "{bad}");
        }
    }

    #[test]
    fn container_choice() {
        let one = pod(json!({"containers": [{"name": "app"}]}), json!({}));
        assert_eq!(
            choose_container(&one, "web", None).expect("only one"),
            "app"
        );
        assert_eq!(
            choose_container(&one, "web", Some("")).expect("only one"),
            "app"
        );
        let err = choose_container(&one, "web", Some("db")).expect_err("unknown");
        assert_eq!(
            (err.code, err.message.as_str()),
            (400, "container db is not valid for pod web")
        );

        let mut many = pod(
            json!({
                "initContainers": [{"name": "setup"}],
                "containers": [{"name": "app"}, {"name": "sidecar"}],
                "ephemeralContainers": [{"name": "debug"}]
            }),
            json!({}),
        );
        let err = choose_container(&many, "web", None).expect_err("ambiguous");
        assert_eq!(
            err.message,
            "a container name must be specified for pod web, choose one of: [app sidecar] or one of the init containers: [setup] or one of the ephemeral containers: [debug]"
        );
        for c in ["setup", "sidecar", "debug"] {
            assert_eq!(choose_container(&many, "web", Some(c)).expect("exists"), c);
        }
        many["metadata"]["annotations"] = json!({DEFAULT_CONTAINER_ANNOTATION: "sidecar"});
        assert_eq!(
            choose_container(&many, "web", None).expect("annotated"),
            "sidecar"
        );
        many["metadata"]["annotations"] = json!({DEFAULT_CONTAINER_ANNOTATION: "gone"});
        assert!(choose_container(&many, "web", None).is_err());
        let none = pod(json!({"containers": []}), json!({}));
        assert_eq!(
            choose_container(&none, "web", None)
                .expect_err("none")
                .message,
            "a container name must be specified for pod web"
        );
    }

    #[test]
    fn container_status_decides_the_run() {
        let with = |status: Value| {
            pod(
                json!({"containers": [{"name": "app"}]}),
                json!({"containerStatuses": [status]}),
            )
        };
        let running = with(json!({"name": "app", "state": {"running": {}}, "lastState": {}}));
        assert!(!run_to_read(&running, "web", "app", false).expect("current"));
        let err = run_to_read(&running, "web", "app", true).expect_err("no previous run");
        assert_eq!(
            (err.code, err.message.as_str()),
            (
                400,
                "previous terminated container \"app\" in pod \"web\" not found"
            )
        );

        let restarted = with(
            json!({"name": "app", "state": {"running": {}}, "lastState": {"terminated": {"exitCode": 1}}}),
        );
        assert!(run_to_read(&restarted, "web", "app", true).expect("previous"));

        let backoff = with(
            json!({"name": "app", "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"exitCode": 1}}}),
        );
        assert!(!run_to_read(&backoff, "web", "app", true).expect("the last run is the newest"));
        assert!(!run_to_read(&backoff, "web", "app", false).expect("the last run"));

        let creating =
            with(json!({"name": "app", "state": {"waiting": {"reason": "ContainerCreating"}}}));
        assert_eq!(
            run_to_read(&creating, "web", "app", false)
                .expect_err("waiting")
                .message,
            "container \"app\" in pod \"web\" is waiting to start: ContainerCreating"
        );
        let pulling =
            with(json!({"name": "app", "state": {"waiting": {"reason": "ImagePullBackOff"}}}));
        assert_eq!(
            run_to_read(&pulling, "web", "app", false).expect_err("waiting").message,
            "container \"app\" in pod \"web\" is waiting to start: trying and failing to pull image"
        );
        let unknown = with(json!({"name": "app", "state": {}}));
        assert!(run_to_read(&unknown, "web", "app", false).is_err());

        let done = with(json!({"name": "app", "state": {"terminated": {"exitCode": 0}}}));
        assert!(!run_to_read(&done, "web", "app", false).expect("completed"));
        // Nothing reported yet: the agent decides.
        let fresh = pod(json!({"containers": [{"name": "app"}]}), json!({}));
        assert!(run_to_read(&fresh, "web", "app", true).expect("passes"));
    }

    #[test]
    fn node_addresses() {
        let node = json!({"status": {
            "addresses": [
                {"type": "Hostname", "address": "edge-1"},
                {"type": "InternalIP", "address": "10.0.0.7"}
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10350}}
        }});
        assert_eq!(
            node_endpoint(&node, "edge-1").expect("ok"),
            ("10.0.0.7".to_string(), 10350)
        );
        let node = json!({"status": {"addresses": [{"type": "Hostname", "address": "edge-1"}]}});
        assert_eq!(
            node_endpoint(&node, "edge-1").expect("ok"),
            ("edge-1".to_string(), 10250)
        );
        let err = node_endpoint(&json!({"status": {}}), "edge-1").expect_err("no address");
        assert!(err.message.contains("\"edge-1\""), "{}", err.message);
    }

    #[test]
    fn agent_errors() {
        let e = agent_error(
            StatusCode::NOT_FOUND,
            "container \"x\" has no logs".into(),
            "n1",
        );
        assert_eq!(
            (e.code, e.reason, e.message.as_str()),
            (404, "NotFound", "container \"x\" has no logs")
        );
        let e = agent_error(StatusCode::BAD_REQUEST, "bad".into(), "n1");
        assert_eq!((e.code, e.reason), (400, "BadRequest"));
        let e = agent_error(StatusCode::FORBIDDEN, "no".into(), "n1");
        assert_eq!(e.code, 500);
        let e = agent_error(StatusCode::BAD_GATEWAY, String::new(), "n1");
        assert_eq!(e.code, 500);
        assert!(e.message.contains("\"n1\""), "{}", e.message);
    }

    /// A stand-in for a node agent: the kubelet API over TLS, requiring a client
    /// certificate of the cluster CA. Each log request gets the next channel of `feeds`:
    /// what the test sends on it is the body.
    struct FakeAgent {
        port: u16,
        feeds: mpsc::Receiver<mpsc::Sender<String>>,
        client_names: Arc<Mutex<Vec<String>>>,
    }

    async fn fake_agent(pki: &Pki) -> FakeAgent {
        let config = agent_tls_config(pki);
        let acceptor = TlsAcceptor::from(Arc::new(config));

        let (feed_tx, feeds) = mpsc::channel::<mpsc::Sender<String>>(16);
        let router = axum::Router::new().route(
            "/containerLogs/{ns}/{pod}/{container}",
            axum::routing::get(
                move |axum::extract::Path((ns, pod, container)): axum::extract::Path<(String, String, String)>,
                      axum::extract::RawQuery(q): axum::extract::RawQuery| {
                    let feed_tx = feed_tx.clone();
                    async move {
                        if container != "app" {
                            return Response::builder()
                                .status(404)
                                .body(Body::from(format!("container \"{container}\" in pod \"{pod}\" has no logs on this node")))
                                .expect("response");
                        }
                        let (tx, rx) = mpsc::channel::<String>(16);
                        let first = format!("{ns}/{pod}/{container}?{}\n", q.unwrap_or_default());
                        tx.send(first).await.expect("send");
                        feed_tx.send(tx).await.expect("feed");
                        let body = tokio_stream::wrappers::ReceiverStream::new(rx)
                            .map(|s| Ok::<_, Infallible>(Bytes::from(s)));
                        Response::builder()
                            .header(header::CONTENT_TYPE, "text/plain")
                            .body(Body::from_stream(body))
                            .expect("response")
                    }
                },
            ),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let client_names = Arc::new(Mutex::new(Vec::new()));
        let names = client_names.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let router = router.clone();
                let names = names.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if let Some(cert) = tls.get_ref().1.peer_certificates().and_then(|c| c.first())
                    {
                        let (_, parsed) =
                            x509_parser::parse_x509_certificate(cert.as_ref()).expect("x509");
                        names
                            .lock()
                            .expect("lock")
                            .push(parsed.subject().to_string());
                    }
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(router))
                        .await;
                });
            }
        });
        FakeAgent {
            port,
            feeds,
            client_names,
        }
    }

    async fn put(store: &Arc<dyn Store>, key: String, obj: Value) {
        store
            .create(&key, Bytes::from(serde_json::to_vec(&obj).expect("json")))
            .await
            .expect("create");
    }

    #[tokio::test]
    async fn proxies_to_the_agent_and_streams() {
        let etcd = crate::storage::etcd::tests::test_etcd().await;
        let store: Arc<dyn Store> = etcd.store.clone();
        let objects = Objects::new(
            store.clone(),
            Registry::builtin(),
            ServiceAllocator::new(
                store.clone(),
                "10.96.0.0/12".parse().expect("cidr"),
                (30000, 32767),
            ),
        );
        let pki_dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::load_or_create(pki_dir.path(), &[]).expect("pki");
        let mut agent = fake_agent(&pki).await;
        // A port nobody listens on.
        let dead_port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };

        let pods = objects.registry.lookup("", "v1", "pods").expect("pods");
        let nodes = objects.registry.lookup("", "v1", "nodes").expect("nodes");
        let two = json!([{"name": "app", "image": "x"}, {"name": "sidecar", "image": "x"}]);
        for (name, node) in [("web", "node1"), ("idle", ""), ("lost", "dead")] {
            put(
                &store,
                pods.key(Some("ns"), name),
                json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
                    "spec": {"nodeName": node, "containers": two},
                }),
            )
            .await;
        }
        for (name, port) in [("node1", agent.port), ("dead", dead_port)] {
            put(&store, nodes.key(None, name), json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name},
                "status": {
                    "addresses": [{"type": "Hostname", "address": "no-such-host.invalid"}, {"type": "InternalIP", "address": "127.0.0.1"}],
                    "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}
                }
            }))
            .await;
        }

        let resp = pod_log(
            &objects,
            &pki,
            "ns",
            "web",
            &query("container=app&follow=true&tailLines=3"),
        )
        .await
        .expect("proxied");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/plain");
        let mut body = resp.into_body().into_data_stream();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        async fn next(
            body: &mut axum::body::BodyDataStream,
            deadline: tokio::time::Instant,
        ) -> String {
            let chunk = tokio::time::timeout_at(deadline, body.next())
                .await
                .expect("in time")
                .expect("not ended")
                .expect("chunk");
            String::from_utf8(chunk.to_vec()).expect("utf-8")
        }
        assert_eq!(
            next(&mut body, deadline).await,
            "ns/web/app?follow=true&tailLines=3\n"
        );
        let feed = tokio::time::timeout_at(deadline, agent.feeds.recv())
            .await
            .expect("in time")
            .expect("a feed");
        feed.send("a line written later\n".into())
            .await
            .expect("send");
        assert_eq!(next(&mut body, deadline).await, "a line written later\n");
        // The client goes away: the agent's stream is dropped too.
        drop(body);
        tokio::time::timeout_at(deadline, feed.closed())
            .await
            .expect("the agent's stream is closed when the client leaves");
        let names = agent.client_names.lock().expect("lock").clone();
        assert_eq!(names.len(), 1, "one connection: {names:?}");
        assert!(
            names[0].contains("CN=kube-apiserver-kubelet-client")
                && names[0].contains("O=system:masters"),
            "{names:?}"
        );

        let err = pod_log(&objects, &pki, "ns", "web", &query("container=sidecar"))
            .await
            .expect_err("the agent has no logs");
        assert_eq!((err.code, err.reason), (404, "NotFound"));
        assert_eq!(
            err.message,
            "container \"sidecar\" in pod \"web\" has no logs on this node"
        );

        let err = pod_log(&objects, &pki, "ns", "web", &query(""))
            .await
            .expect_err("ambiguous");
        assert_eq!(err.code, 400);
        let err = pod_log(&objects, &pki, "ns", "idle", &query("container=app"))
            .await
            .expect_err("not scheduled");
        assert_eq!(
            (err.code, err.message.as_str()),
            (400, "pod idle does not have a host assigned")
        );
        let err = pod_log(&objects, &pki, "ns", "lost", &query("container=app"))
            .await
            .expect_err("unreachable");
        assert_eq!(err.code, 503);
        assert!(err.message.contains("node \"dead\""), "{}", err.message);
        let err = pod_log(&objects, &pki, "ns", "nope", &query(""))
            .await
            .expect_err("no pod");
        assert_eq!(
            (err.code, err.message.as_str()),
            (404, "pods \"nope\" not found")
        );
    }
}
