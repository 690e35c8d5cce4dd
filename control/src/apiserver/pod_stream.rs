//! `pods/exec` and `pods/portforward`: the API server's half of `kubectl exec` and
//! `kubectl port-forward`, relayed to the pod's node agent.
//!
//! The request is checked here (an upgrade, the pod bound to a node and not finished,
//! for exec the container chosen as for logs), then the same upgrade request goes to
//! the agent's kubelet API (`/exec/NS/POD/CONTAINER?…`, `/portForward/NS/POD?…`) with
//! the API server's kubelet-client identity. When the agent switches protocols, the
//! client gets the agent's 101 (its `Sec-WebSocket-Accept`, chosen subprotocol or
//! `X-Stream-Protocol-Version`) and the two upgraded connections are spliced: the
//! websocket or SPDY conversation itself is between the client and the agent. An agent
//! that refuses answers with a status and a message, which becomes the client's
//! `Status` — for kubectl's websocket attempt that is also what makes it retry over
//! SPDY, which gets the same answer.
//!
//! kube-apiserver instead terminates the client's websocket and speaks SPDY to the
//! kubelet; relaying the bytes keeps the API server out of the data path entirely.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderName, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::objects::Objects;
use super::pod_proxy::{
    agent_error, choose_container, connect_agent, pod_node, unreachable, AgentConnection,
    MAX_ERROR_BODY, RESPONSE_TIMEOUT,
};
use super::status::{ApiError, ApiResult};
use super::ApiState;
use crate::pki::Pki;

/// The header carrying SPDY's stream protocol negotiation.
const STREAM_PROTOCOL: HeaderName = HeaderName::from_static("x-stream-protocol-version");

/// Request headers the agent needs to answer the upgrade itself.
const FORWARDED_REQUEST_HEADERS: [HeaderName; 6] = [
    header::UPGRADE,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_PROTOCOL,
    header::SEC_WEBSOCKET_EXTENSIONS,
    STREAM_PROTOCOL,
];

/// Headers of the agent's 101 the client needs.
const FORWARDED_RESPONSE_HEADERS: [HeaderName; 6] = [
    header::UPGRADE,
    header::CONNECTION,
    header::SEC_WEBSOCKET_ACCEPT,
    header::SEC_WEBSOCKET_PROTOCOL,
    header::SEC_WEBSOCKET_EXTENSIONS,
    STREAM_PROTOCOL,
];

/// `GET|POST /api/v1/namespaces/NS/pods/NAME/exec`.
pub async fn exec(
    state: &Arc<ApiState>,
    ns: Option<&str>,
    name: &str,
    req: Request,
) -> ApiResult<Response> {
    let ns = ns.ok_or_else(|| ApiError::bad_request("pods/exec requires a namespace"))?;
    pod_exec(&state.objects, &state.pki, ns, name, req).await
}

/// `GET|POST /api/v1/namespaces/NS/pods/NAME/portforward`.
pub async fn port_forward(
    state: &Arc<ApiState>,
    ns: Option<&str>,
    name: &str,
    req: Request,
) -> ApiResult<Response> {
    let ns = ns.ok_or_else(|| ApiError::bad_request("pods/portforward requires a namespace"))?;
    pod_port_forward(&state.objects, &state.pki, ns, name, req).await
}

/// The query's pairs, repeated keys (`command`) kept in order.
fn query_pairs(req: &Request) -> Vec<(String, String)> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

async fn get_pod(objects: &Objects, ns: &str, name: &str) -> ApiResult<Value> {
    let pods = objects
        .registry
        .lookup("", "v1", "pods")
        .ok_or_else(|| ApiError::internal("the pods resource is not registered"))?;
    objects.get(&pods, Some(ns), name).await
}

/// A pod that has finished has nothing left to enter.
fn check_not_completed(pod: &Value, what: &str) -> ApiResult<()> {
    match pod.pointer("/status/phase").and_then(Value::as_str) {
        Some(phase @ ("Succeeded" | "Failed")) => Err(ApiError::bad_request(format!(
            "cannot {what} a container in a completed pod; current phase is {phase}"
        ))),
        _ => Ok(()),
    }
}

/// The whole of `pods/exec` on the object layer and the PKI.
pub async fn pod_exec(
    objects: &Objects,
    pki: &Pki,
    ns: &str,
    name: &str,
    req: Request,
) -> ApiResult<Response> {
    require_upgrade(&req)?;
    let pairs = query_pairs(&req);
    if !pairs.iter().any(|(k, _)| k == "command") {
        return Err(ApiError::bad_request("you must specify at least 1 command"));
    }
    let requested = pairs
        .iter()
        .rev()
        .find(|(k, v)| k == "container" && !v.is_empty())
        .map(|(_, v)| v.as_str());
    let pod = get_pod(objects, ns, name).await?;
    let container = choose_container(&pod, name, requested)?;
    check_not_completed(&pod, "exec into")?;
    let (node, host, port) = pod_node(objects, &pod, name).await?;
    let query = req.uri().query().unwrap_or("");
    let path = format!("/exec/{ns}/{name}/{container}?{query}");
    tracing::debug!(namespace = ns, pod = name, %container, %node, "relaying pods/exec");
    relay(pki, &node, &host, port, &path, req).await
}

/// The whole of `pods/portforward` on the object layer and the PKI.
pub async fn pod_port_forward(
    objects: &Objects,
    pki: &Pki,
    ns: &str,
    name: &str,
    req: Request,
) -> ApiResult<Response> {
    require_upgrade(&req)?;
    let pod = get_pod(objects, ns, name).await?;
    check_not_completed(&pod, "forward ports to")?;
    let (node, host, port) = pod_node(objects, &pod, name).await?;
    let path = match req.uri().query() {
        Some(q) if !q.is_empty() => format!("/portForward/{ns}/{name}?{q}"),
        _ => format!("/portForward/{ns}/{name}"),
    };
    tracing::debug!(namespace = ns, pod = name, %node, "relaying pods/portforward");
    relay(pki, &node, &host, port, &path, req).await
}

/// Streaming subresources work only over an upgraded connection (websocket or SPDY).
fn require_upgrade(req: &Request) -> ApiResult<()> {
    let upgrade = req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if upgrade {
        Ok(())
    } else {
        Err(ApiError::bad_request("Upgrade request required"))
    }
}

/// Sends the client's upgrade to the agent; on a 101 answers the client likewise and
/// splices the two connections, else returns the agent's refusal.
async fn relay(
    pki: &Pki,
    node: &str,
    host: &str,
    port: u16,
    path: &str,
    mut req: Request,
) -> ApiResult<Response> {
    let client_upgrade = hyper::upgrade::on(&mut req);
    let AgentConnection { stream, authority } = connect_agent(pki, host, port, node).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(node, &authority, e))?;
    let node_name = node.to_string();
    tokio::spawn(async move {
        if let Err(error) = conn.with_upgrades().await {
            tracing::debug!(node = %node_name, %error, "kubelet connection ended");
        }
    });
    // Websockets require GET; SPDY clients POST.
    let method = if req.method() == Method::POST {
        Method::POST
    } else {
        Method::GET
    };
    let mut forwarded = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, &authority)
        .header(header::USER_AGENT, "wasmkube-apiserver")
        .header(header::CONNECTION, "Upgrade");
    for name in FORWARDED_REQUEST_HEADERS {
        for value in req.headers().get_all(&name) {
            forwarded = forwarded.header(&name, value);
        }
    }
    let forwarded = forwarded
        .body(Empty::<Bytes>::new())
        .map_err(|e| ApiError::internal(format!("building the kubelet request: {e}")))?;
    let resp = tokio::time::timeout(RESPONSE_TIMEOUT, sender.send_request(forwarded))
        .await
        .map_err(|_| unreachable(node, &authority, "timed out waiting for an answer"))?
        .map_err(|e| unreachable(node, &authority, e))?;
    let status = resp.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let body = tokio::time::timeout(
            RESPONSE_TIMEOUT,
            http_body_util::Limited::new(resp.into_body(), MAX_ERROR_BODY).collect(),
        )
        .await;
        let message = match body {
            Ok(Ok(collected)) => String::from_utf8_lossy(&collected.to_bytes())
                .trim()
                .to_string(),
            _ => String::new(),
        };
        return Err(agent_error(status, message, node));
    }
    let mut answer = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for name in FORWARDED_RESPONSE_HEADERS {
        for value in resp.headers().get_all(&name) {
            answer = answer.header(&name, value);
        }
    }
    let agent_upgrade = hyper::upgrade::on(resp);
    let node_name = node.to_string();
    tokio::spawn(async move {
        let (client, agent) = match tokio::try_join!(client_upgrade, agent_upgrade) {
            Ok(both) => both,
            Err(error) => {
                tracing::debug!(node = %node_name, %error, "an upgrade failed");
                return;
            }
        };
        let (mut client, mut agent) = (TokioIo::new(client), TokioIo::new(agent));
        match tokio::io::copy_bidirectional(&mut client, &mut agent).await {
            Ok((up, down)) => {
                tracing::debug!(node = %node_name, bytes_to_agent = up, bytes_to_client = down, "stream ended")
            }
            Err(error) => tracing::debug!(node = %node_name, %error, "stream ended with an error"),
        }
    });
    answer
        .body(Body::empty())
        .map_err(|e| ApiError::internal(format!("building the response: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use hyper_util::rt::TokioExecutor;
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::TlsAcceptor;
    use tower::ServiceExt as _;

    use crate::apiserver::allocator::ServiceAllocator;
    use crate::registry::Registry;
    use crate::storage::Store;

    const PATIENCE: Duration = Duration::from_secs(10);

    /// A stand-in agent over TLS: `/exec/…` and `/portForward/…` switch to a protocol
    /// that first writes the request line and the offered protocol, then echoes in
    /// upper case; other paths are refused with 400 and a message.
    async fn fake_agent(pki: &Pki) -> u16 {
        let config = crate::apiserver::pod_proxy::agent_tls_config(pki);
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let router = axum::Router::new().fallback(|mut req: Request| async move {
            let path = req.uri().to_string();
            if !path.starts_with("/exec/ns/web/app?") && !path.starts_with("/portForward/ns/web") {
                return Response::builder()
                    .status(400)
                    .body(Body::from("the agent says no\n"))
                    .expect("response");
            }
            let offered = req
                .headers()
                .get(header::SEC_WEBSOCKET_PROTOCOL)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string();
            let hello = format!("{} {path} {offered}\n", req.method());
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut io = TokioIo::new(upgraded);
                let _ = io.write_all(hello.as_bytes()).await;
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let _ = io.write_all(&buf[..n].to_ascii_uppercase()).await;
                }
            });
            Response::builder()
                .status(101)
                .header(header::CONNECTION, "Upgrade")
                .header(header::UPGRADE, "websocket")
                .header(header::SEC_WEBSOCKET_ACCEPT, "accept-token")
                .header(header::SEC_WEBSOCKET_PROTOCOL, "v5.channel.k8s.io")
                .body(Body::empty())
                .expect("response")
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let router = router.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service =
                        router.map_request(|req: axum::extract::Request<hyper::body::Incoming>| {
                            req.map(Body::new)
                        });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(
                            TokioIo::new(tls),
                            TowerToHyperService::new(service),
                        )
                        .await;
                });
            }
        });
        port
    }

    /// The API server's side, served over plain TCP with upgrades: exec and
    /// portforward of pods in `ns`, errors as `code message`.
    async fn api(objects: Arc<Objects>, pki: Arc<Pki>) -> std::net::SocketAddr {
        let router = axum::Router::new().fallback(move |req: Request| {
            let (objects, pki) = (objects.clone(), pki.clone());
            async move {
                let path = req.uri().path().to_string();
                let name = path.split('/').nth(2).unwrap_or("").to_string();
                let result = if path.ends_with("/exec") {
                    pod_exec(&objects, &pki, "ns", &name, req).await
                } else {
                    pod_port_forward(&objects, &pki, "ns", &name, req).await
                };
                result.unwrap_or_else(|e| {
                    Response::builder()
                        .status(e.code)
                        .body(Body::from(format!("{} {}", e.reason, e.message)))
                        .expect("response")
                })
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let service = router.clone().map_request(
                    |req: axum::extract::Request<hyper::body::Incoming>| req.map(Body::new),
                );
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(
                            TokioIo::new(tcp),
                            TowerToHyperService::new(service),
                        )
                        .await;
                });
            }
        });
        addr
    }

    /// Sends `head`; returns the connection and everything read until `until` appears
    /// (or the connection ends).
    async fn exchange(addr: std::net::SocketAddr, head: &str, until: &str) -> (TcpStream, String) {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(head.as_bytes()).await.expect("write");
        let text = read_until(&mut tcp, until).await;
        (tcp, text)
    }

    async fn read_until(tcp: &mut TcpStream, until: &str) -> String {
        let mut got = Vec::new();
        let read = async {
            let mut buf = [0u8; 1024];
            while !String::from_utf8_lossy(&got).contains(until) {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        };
        tokio::time::timeout(PATIENCE, read).await.expect("in time");
        String::from_utf8_lossy(&got).into_owned()
    }

    async fn put(store: &Arc<dyn Store>, key: String, obj: Value) {
        store
            .create(&key, Bytes::from(serde_json::to_vec(&obj).expect("json")))
            .await
            .expect("create");
    }

    #[tokio::test]
    async fn upgrades_are_relayed_to_the_agent() {
        let etcd = crate::storage::etcd::tests::test_etcd().await;
        let store: Arc<dyn Store> = etcd.store.clone();
        let objects = Arc::new(Objects::new(
            store.clone(),
            Registry::builtin(),
            ServiceAllocator::new(
                store.clone(),
                "10.96.0.0/12".parse().expect("cidr"),
                (30000, 32767),
            ),
        ));
        let pki_dir = tempfile::tempdir().expect("temp dir");
        let pki = Arc::new(Pki::load_or_create(pki_dir.path(), &[]).expect("pki"));
        let agent_port = fake_agent(&pki).await;
        let pods = objects.registry.lookup("", "v1", "pods").expect("pods");
        let nodes = objects.registry.lookup("", "v1", "nodes").expect("nodes");
        for (name, node, phase, containers) in [
            (
                "web",
                "node1",
                "Running",
                json!([{"name": "app", "image": "x"}, {"name": "side", "image": "x"}]),
            ),
            (
                "done",
                "node1",
                "Succeeded",
                json!([{"name": "app", "image": "x"}]),
            ),
            (
                "idle",
                "",
                "Pending",
                json!([{"name": "app", "image": "x"}]),
            ),
        ] {
            put(
                &store,
                pods.key(Some("ns"), name),
                json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
                    "spec": {"nodeName": node, "containers": containers},
                    "status": {"phase": phase},
                }),
            )
            .await;
        }
        put(
            &store,
            nodes.key(None, "node1"),
            json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": "node1"},
                "status": {
                    "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                    "daemonEndpoints": {"kubeletEndpoint": {"Port": agent_port}}
                }
            }),
        )
        .await;
        let addr = api(objects, pki).await;
        let ws_head = |path: &str| {
            format!(
                "GET {path} HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Protocol: v5.channel.k8s.io, v4.channel.k8s.io\r\nAuthorization: Bearer secret\r\n\r\n"
            )
        };

        // exec: the agent's 101 and its headers reach the client, then bytes flow
        // both ways.
        let (mut tcp, got) = exchange(
            addr,
            &ws_head("/pods/web/exec?command=cat&command=%2Fdata%2Ff&container=app&stdout=true"),
            "\n",
        )
        .await;
        let got = if got.contains("v4.channel.k8s.io\n") {
            got
        } else {
            got + &read_until(&mut tcp, "v4.channel.k8s.io\n").await
        };
        assert!(got.starts_with("HTTP/1.1 101"), "{got}");
        let lower = got.to_ascii_lowercase();
        assert!(
            lower.contains("sec-websocket-accept: accept-token"),
            "{got}"
        );
        assert!(
            lower.contains("sec-websocket-protocol: v5.channel.k8s.io"),
            "{got}"
        );
        assert!(
            got.contains(
                "GET /exec/ns/web/app?command=cat&command=%2Fdata%2Ff&container=app&stdout=true v5.channel.k8s.io, v4.channel.k8s.io\n"
            ),
            "the agent got the request as sent: {got}"
        );
        tcp.write_all(b"through the relay").await.expect("write");
        assert!(read_until(&mut tcp, "THROUGH THE RELAY")
            .await
            .contains("THROUGH THE RELAY"));

        // port-forward over SPDY: POST is kept, and so is the query.
        let (mut tcp, got) = exchange(
            addr,
            "POST /pods/web/portforward?ports=80 HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\n\
             Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: portforward.k8s.io\r\nContent-Length: 0\r\n\r\n",
            "ports=80 -\n",
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 101"), "{got}");
        assert!(
            got.contains("POST /portForward/ns/web?ports=80 -\n"),
            "{got}"
        );
        tcp.write_all(b"spdy").await.expect("write");
        assert!(read_until(&mut tcp, "SPDY").await.contains("SPDY"));

        // Refusals, before and by the agent.
        for (path, expected) in [
            (
                "/pods/web/exec?command=ls&container=nope",
                "400 BadRequest container nope is not valid for pod web",
            ),
            (
                "/pods/web/exec?command=ls",
                "400 BadRequest a container name must be specified for pod web, choose one of: [app side]",
            ),
            (
                "/pods/web/exec?command=ls&container=side",
                "400 BadRequest the agent says no",
            ),
            (
                "/pods/web/exec?stdout=1&container=app",
                "400 BadRequest you must specify at least 1 command",
            ),
            (
                "/pods/done/exec?command=ls",
                "400 BadRequest cannot exec into a container in a completed pod; current phase is Succeeded",
            ),
            (
                "/pods/idle/portforward",
                "400 BadRequest pod idle does not have a host assigned",
            ),
            (
                "/pods/gone/portforward",
                "404 NotFound pods \"gone\" not found",
            ),
        ] {
            let mut tcp = TcpStream::connect(addr).await.expect("connect");
            let head = ws_head(path).replace("Connection: Upgrade", "Connection: Upgrade, close");
            tcp.write_all(head.as_bytes()).await.expect("write");
            let mut all = Vec::new();
            let _ = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut all)).await;
            let all = String::from_utf8_lossy(&all);
            let (code, message) = expected.split_once(' ').expect("code");
            assert!(all.starts_with(&format!("HTTP/1.1 {code}")), "{path}: {all}");
            assert!(all.ends_with(message), "{path}: {all}");
        }
        // Not an upgrade at all.
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(
            b"GET /pods/web/exec?command=ls HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("write");
        let mut all = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut all)).await;
        let all = String::from_utf8_lossy(&all);
        assert!(
            all.ends_with("BadRequest Upgrade request required"),
            "{all}"
        );
    }
}
