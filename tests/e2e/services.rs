//! Issue 7's Service proxy, as a user sees it: requests to a ClusterIP spread over the
//! ready replicas and follow scaling, NodePorts answer on the node address and external
//! IPs on theirs, UDP echoes through a Service (the backend seeing a calling pod as
//! itself), pods find Services by DNS name, a deleted Service stops listening, and a Service whose pods run only on
//! another node is reached through that node's proxy (and follows the pods when they
//! move).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::agents::{sample_image, up_node, AgentProcess};
use crate::harness::{eventually, Cluster, DEADLINE};

/// Pods start (module compile included) and controllers catch up within this.
const SLOW: Duration = Duration::from_secs(90);

/// A `wasmkube up` cluster (the harness gives it pod and Service ranges of its own).
fn isolated() -> crate::harness::ClusterBuilder {
    Cluster::builder().up()
}

/// A Deployment of http-echo (`replicas`, optionally pinned by a node selector) and a
/// ClusterIP Service `name` on port 80 with the named targetPort `http`.
fn echo_app(name: &str, replicas: u32, node: Option<&str>) -> String {
    let selector = node
        .map(|n| format!("      nodeSelector:\n        kubernetes.io/hostname: {n}\n"))
        .unwrap_or_default();
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
{selector}      containers:
      - name: web
        image: {image}
        ports:
        - {{name: http, containerPort: 8080}}
        env:
        - name: POD_NAME
          valueFrom:
            fieldRef: {{fieldPath: metadata.name}}
---
apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  selector: {{app: {name}}}
  ports:
  - {{name: web, port: 80, targetPort: http}}
"#,
        image = sample_image("http-echo")
    )
}

/// One `GET /` on a fresh connection; the pod that answered (`X-Pod-Name`).
async fn pod_behind(addr: SocketAddr) -> Result<String, String> {
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut response = Vec::new();
        s.read_to_end(&mut response)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&response).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix("X-Pod-Name: "))
            .map(|p| p.trim().to_string())
            .ok_or_else(|| format!("no X-Pod-Name in {text:?}"))
    };
    tokio::time::timeout(Duration::from_secs(5), get)
        .await
        .map_err(|_| format!("GET {addr} timed out"))?
}

/// Names of the ready, not-terminating pods with label app=`app` (and their nodes).
/// Waits until exactly `n` pods of `app` are Ready; their names.
async fn ready_pods(cluster: &Cluster, app: &str, n: usize) -> BTreeSet<String> {
    eventually(&format!("{n} {app} pods to be ready"), SLOW, async || {
        let pods = running_pods(cluster, app).await;
        if pods.len() == n {
            Ok(pods.into_iter().map(|(name, _)| name).collect())
        } else {
            Err(format!("ready: {pods:?}"))
        }
    })
    .await
}

async fn running_pods(cluster: &Cluster, app: &str) -> Vec<(String, String)> {
    let list = cluster
        .get_json(&["pods", "-l", &format!("app={app}")])
        .await;
    let mut pods: Vec<(String, String)> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| {
            p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .filter_map(|p| {
            Some((
                p["metadata"]["name"].as_str()?.to_string(),
                p["spec"]["nodeName"].as_str()?.to_string(),
            ))
        })
        .collect();
    pods.sort();
    pods
}

async fn cluster_ip(cluster: &Cluster, svc: &str) -> IpAddr {
    let s = cluster.get_json(&["service", svc]).await;
    s["spec"]["clusterIP"]
        .as_str()
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("service {svc} has no ClusterIP: {s}"))
}

/// Waits until requests to `addr` have been answered by exactly the pods `app` runs
/// now, `want` of them (each seen at least once, no other pod answering in a row of
/// answers after the last change of the pod set).
async fn answered_by_all(
    cluster: &Cluster,
    app: &str,
    addr: SocketAddr,
    want: usize,
) -> BTreeSet<String> {
    eventually(
        &format!("{want} pods of {app} to answer through {addr}"),
        SLOW,
        async || {
            let pods: BTreeSet<String> = running_pods(cluster, app)
                .await
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            if pods.len() != want {
                return Err(format!("ready pods: {pods:?}"));
            }
            let mut seen = BTreeSet::new();
            for _ in 0..(want * 4) {
                let pod = pod_behind(addr).await?;
                if !pods.contains(&pod) {
                    return Err(format!("answered by {pod}, not one of {pods:?}"));
                }
                seen.insert(pod);
            }
            if seen == pods {
                Ok(seen)
            } else {
                Err(format!("answered by {seen:?} of {pods:?}"))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_ip_spreads_over_the_replicas_follows_scaling_and_node_ports_answer() {
    let cluster = isolated().start().await;
    let node = up_node(&cluster).await;
    cluster.apply_stdin(&echo_app("echo", 3, None)).await;
    let vip = cluster_ip(&cluster, "echo").await;
    let addr = SocketAddr::new(vip, 80);

    let three = answered_by_all(&cluster, "echo", addr, 3).await;
    assert_eq!(three.len(), 3);

    cluster
        .kubectl_ok(&["scale", "deployment/echo", "--replicas=5"])
        .await;
    let five = answered_by_all(&cluster, "echo", addr, 5).await;
    assert!(
        three.is_subset(&five),
        "{three:?} should still answer: {five:?}"
    );

    cluster
        .kubectl_ok(&["scale", "deployment/echo", "--replicas=1"])
        .await;
    let one = answered_by_all(&cluster, "echo", addr, 1).await;
    assert!(one.is_subset(&five), "{one:?} should be one of {five:?}");

    cluster
        .kubectl_ok(&["scale", "deployment/echo", "--replicas=3"])
        .await;
    answered_by_all(&cluster, "echo", addr, 3).await;

    // A NodePort Service (numeric targetPort) answers on the node's address.
    cluster
        .apply_stdin(
            r#"apiVersion: v1
kind: Service
metadata:
  name: echo-np
spec:
  type: NodePort
  selector: {app: echo}
  ports:
  - {port: 8081, targetPort: 8080}
"#,
        )
        .await;
    let np = cluster.get_json(&["service", "echo-np"]).await;
    let node_port = np["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("no nodePort: {np}"));
    let n = cluster.get_json(&["node", &node]).await;
    let node_ip: IpAddr = n["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
        .and_then(|a| a["address"].as_str())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no InternalIP: {}", n["status"]));
    answered_by_all(&cluster, "echo", SocketAddr::new(node_ip, node_port), 3).await;

    // An external IP the node has (any loopback address here) serves the Service port.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let external = IpAddr::from([
        127,
        250,
        (std::process::id() % 250) as u8,
        1 + (nanos % 250) as u8,
    ]);
    cluster
        .kubectl_ok(&[
            "patch",
            "service",
            "echo-np",
            "-p",
            &format!(r#"{{"spec":{{"externalIPs":["{external}"]}}}}"#),
        ])
        .await;
    answered_by_all(&cluster, "echo", SocketAddr::new(external, 8081), 3).await;

    // Deleting a Service closes its listener.
    cluster.kubectl_ok(&["delete", "service", "echo"]).await;
    eventually("the ClusterIP listener to close", DEADLINE, async || {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            other => Err(format!("connect: {other:?}")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_echo_answers_through_a_service() {
    let cluster = isolated().start().await;
    up_node(&cluster).await;
    cluster
        .apply_stdin(&format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: udp-echo
spec:
  replicas: 2
  selector:
    matchLabels: {{app: udp-echo}}
  template:
    metadata:
      labels: {{app: udp-echo}}
    spec:
      containers:
      - name: udp-echo
        image: {image}
        ports:
        - {{name: udp, containerPort: 9090, protocol: UDP}}
        env:
        - {{name: ECHO_PREFIX, value: "true"}}
        - name: POD_NAME
          valueFrom:
            fieldRef: {{fieldPath: metadata.name}}
---
apiVersion: v1
kind: Service
metadata:
  name: udp-echo
spec:
  selector: {{app: udp-echo}}
  ports:
  - {{name: udp, protocol: UDP, port: 9090, targetPort: udp}}
"#,
            image = sample_image("udp-echo")
        ))
        .await;
    let service = SocketAddr::new(cluster_ip(&cluster, "udp-echo").await, 9090);
    let pods = ready_pods(&cluster, "udp-echo", 2).await;

    // Two clients, each with its own session: each gets its own answers, from the
    // service address, by one of the pods.
    let clients = [
        tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap(),
    ];
    for (i, c) in clients.iter().enumerate() {
        for round in 0..3 {
            let msg = format!("client-{i}-round-{round}");
            let (reply, from) = udp_ask(c, service, &msg).await;
            assert_eq!(
                from, service,
                "the answer must come from the service address"
            );
            let (pod, echoed) = reply
                .split_once(": ")
                .unwrap_or_else(|| panic!("no pod prefix in {reply:?}"));
            assert!(pods.contains(pod), "{pod} is not one of {pods:?}");
            assert_eq!(echoed, msg);
        }
    }
    // A process on the node is sent on from the ClusterIP, which pods may answer.
    let answered_by = |reply: &str| reply.split_once(": ").map(|(p, _)| p.to_string());
    let (reply, _) = udp_ask(&clients[0], service, "host-probe").await;
    let pod = answered_by(&reply).expect("a pod prefix");
    assert_logged(&cluster, &pod, &format!("{}:", service.ip()), 10).await;

    // A pod calling the Service is seen by the backend as itself, as on Kubernetes.
    let caller = pods.first().unwrap();
    let caller_ip = cluster
        .kubectl_ok(&["get", "pod", caller, "-o", "jsonpath={.status.podIP}"])
        .await;
    let reply = cluster
        .kubectl_ok(&[
            "exec",
            caller,
            "--",
            "udp",
            &service.to_string(),
            "from-a-pod",
        ])
        .await;
    let pod = answered_by(reply.trim()).unwrap_or_else(|| panic!("no pod prefix in {reply:?}"));
    assert_eq!(reply.trim(), format!("{pod}: from-a-pod"));
    assert_logged(&cluster, &pod, &format!("{caller_ip}:"), 10).await;
}

/// Sends `msg` from `c` to `service` until its echo comes back (a late answer to an
/// earlier datagram is skipped); the answer and where it came from.
async fn udp_ask(
    c: &tokio::net::UdpSocket,
    service: SocketAddr,
    msg: &str,
) -> (String, SocketAddr) {
    eventually(&format!("an echo of {msg}"), SLOW, async || {
        c.send_to(msg.as_bytes(), service)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut buf = [0u8; 2048];
        loop {
            let (n, from) = tokio::time::timeout(Duration::from_millis(500), c.recv_from(&mut buf))
                .await
                .map_err(|_| "no answer yet".to_string())?
                .map_err(|e| format!("recv: {e}"))?;
            let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
            if reply.ends_with(msg) {
                return Ok((reply, from));
            }
        }
    })
    .await
}

/// Waits for udp-echo pod `pod` to log a datagram of `bytes` bytes from a sender whose
/// address starts with `from`.
async fn assert_logged(cluster: &Cluster, pod: &str, from: &str, bytes: usize) {
    let line = format!(" {from}");
    let size = format!(" {bytes} bytes echoed");
    eventually(
        &format!("{pod} to log a datagram from {from}"),
        SLOW,
        async || {
            let logs = cluster.kubectl_ok(&["logs", pod]).await;
            logs.lines()
                .any(|l| l.contains(&line) && l.ends_with(&size))
                .then_some(())
                .ok_or(logs)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_find_services_by_name() {
    let cluster = isolated().start().await;
    up_node(&cluster).await;
    cluster.apply_stdin(&echo_app("echo", 2, None)).await;
    cluster
        .apply_stdin(
            r#"apiVersion: v1
kind: Service
metadata:
  name: echo-pods
spec:
  clusterIP: None
  selector: {app: echo}
  ports:
  - {name: http, port: 8080}
"#,
        )
        .await;
    let pods = ready_pods(&cluster, "echo", 2).await;
    let caller = pods.first().unwrap().clone();
    // `get` in a pod, through the pod's own name lookup; the answering pod's name.
    let get = async |url: &str| {
        let out = cluster.kubectl(&["exec", &caller, "--", "get", url]).await;
        if !out.success {
            return Err(out.to_string());
        }
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix("pod: "))
            .map(str::to_string)
            .ok_or_else(|| out.to_string())
    };
    for url in [
        "http://echo/",
        "http://echo.default/",
        "http://echo.default.svc/",
        "http://echo.default.svc.cluster.local/",
        // A headless Service: its name is its ready pods' addresses.
        "http://echo-pods:8080/",
    ] {
        let pod = eventually(&format!("{url} to answer in a pod"), SLOW, async || {
            get(url).await
        })
        .await;
        assert!(pods.contains(&pod), "{url}: {pod} is not one of {pods:?}");
    }
    // A name the cluster does not have fails in the pod, as the resolver says.
    let out = cluster
        .kubectl(&[
            "exec",
            &caller,
            "--",
            "get",
            "http://nope.default.svc.cluster.local/",
        ])
        .await;
    assert!(!out.success, "{out}");
    assert!(out.stderr.contains("get:"), "{out}");
}

/// The proxy metrics of the `up` process (it was started with --proxy-metrics-port).
async fn metrics(port: u16) -> Result<String, String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect to the metrics port: {e}"))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    Ok(out)
}

fn metric(text: &str, line_prefix: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Two nodes on one host: the `up` node holds the ClusterIP (it saw the Service first;
/// the second node's proxy finds the address taken and keeps retrying), the pods run
/// only on the second node, so every request crosses the tunnel. Then the pods move to
/// the `up` node and traffic follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_reaches_pods_on_another_node_through_its_proxy() {
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let cluster = isolated()
        .args(&["--proxy-metrics-port", &metrics_port.to_string()])
        .start()
        .await;
    let node_a = up_node(&cluster).await;
    cluster
        .apply_stdin(&echo_app("far", 2, Some("node-b")))
        .await;
    let addr = SocketAddr::new(cluster_ip(&cluster, "far").await, 80);
    // Node a's proxy listens (no endpoint yet: accepted, then reset).
    eventually(
        "node a's proxy to listen on the ClusterIP",
        DEADLINE,
        async || {
            tokio::net::TcpStream::connect(addr)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    )
    .await;

    let _node_b = AgentProcess::start(&cluster, "node-b").await;
    let on_b = answered_by_all(&cluster, "far", addr, 2).await;
    let pods = running_pods(&cluster, "far").await;
    assert!(pods.iter().all(|(_, n)| n == "node-b"), "{pods:?}");
    let served = "wasmkube_proxy_connections_total{namespace=\"default\",service=\"far\",port=\"web\",protocol=\"TCP\"} ";
    let text = eventually("node a's proxy metrics", DEADLINE, async || {
        metrics(metrics_port).await
    })
    .await;
    assert!(
        metric(&text, served) > 0,
        "node a's proxy served nothing:\n{text}"
    );
    assert!(
        metric(&text, "wasmkube_proxy_tunnels_total{direction=\"out\"} ") > 0,
        "node a opened no tunnel:\n{text}"
    );

    // The pods move to node a: traffic follows.
    pods_follow_to(&cluster, &node_a, addr, &on_b).await;
}

/// A network namespace joined to the host's by a veth pair, as a second machine: its
/// own loopback (so its pod IPs are unreachable from the host) and its own address.
/// Deleted (with the veth pair) on drop.
struct Netns {
    name: String,
    host_if: String,
    host_ip: std::net::Ipv4Addr,
    ns_ip: std::net::Ipv4Addr,
}

impl Netns {
    /// None when this process may not create namespaces (not root, no `ip`).
    fn create() -> Option<Netns> {
        use std::hash::{BuildHasher, Hasher};
        let r = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let tag = format!("{:05}", r % 100_000);
        let third = (r >> 20) % 250 + 1;
        let ns = Netns {
            name: format!("wkpx-{tag}"),
            host_if: format!("wkpx{tag}h"),
            host_ip: std::net::Ipv4Addr::new(10, 213, third as u8, 1),
            ns_ip: std::net::Ipv4Addr::new(10, 213, third as u8, 2),
        };
        let ns_if = format!("wkpx{tag}n");
        let host_cidr = format!("{}/30", ns.host_ip);
        let ns_cidr = format!("{}/30", ns.ns_ip);
        let steps: [&[&str]; 8] = [
            &["netns", "add", &ns.name],
            &[
                "link",
                "add",
                &ns.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &ns_if,
            ],
            &["link", "set", &ns_if, "netns", &ns.name],
            &["addr", "add", &host_cidr, "dev", &ns.host_if],
            &["link", "set", &ns.host_if, "up"],
            &["-n", &ns.name, "addr", "add", &ns_cidr, "dev", &ns_if],
            &["-n", &ns.name, "link", "set", &ns_if, "up"],
            &["-n", &ns.name, "link", "set", "lo", "up"],
        ];
        for args in steps {
            let ok = std::process::Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("ip {args:?} failed: cannot build a second network namespace");
                return None;
            }
        }
        Some(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for args in [
            vec!["netns", "del", &self.name],
            vec!["link", "del", &self.host_if],
        ] {
            let _ = std::process::Command::new("ip")
                .args(&args)
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// `wasmkube agent` run inside a [`Netns`]; killed on drop.
struct NetnsAgent {
    child: tokio::process::Child,
    log_path: std::path::PathBuf,
}

impl NetnsAgent {
    async fn start(cluster: &Cluster, ns: &Netns, node_name: &str) -> NetnsAgent {
        let token = std::fs::read_to_string(cluster.data_dir.join("join-token"))
            .expect("the server writes its join token");
        let log_path = cluster.path(&format!("agent-{node_name}.log"));
        let log = std::fs::File::create(&log_path).expect("create the agent log");
        let log_err = log.try_clone().expect("clone the agent log handle");
        let child = tokio::process::Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(env!("CARGO_BIN_EXE_wasmkube"))
            .args([
                "agent",
                "--server",
                &cluster.server_url(),
                "--token",
                token.trim(),
            ])
            .arg("--ca-cert")
            .arg(cluster.data_dir.join("pki/ca.crt"))
            .args(["--node-name", node_name, "--node-ip", &ns.ns_ip.to_string()])
            .args(["--kubelet-port", "0", "--data-dir"])
            .arg(cluster.path(&format!("agent-{node_name}")))
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn ip netns exec wasmkube agent");
        let agent = NetnsAgent { child, log_path };
        eventually(&format!("node {node_name} to be Ready"), SLOW, async || {
            let out = cluster
                .kubectl(&[
                    "get",
                    "node",
                    node_name,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ])
                .await;
            if out.success && out.stdout.trim() == "True" {
                Ok(())
            } else {
                Err(format!("{out}\n{}", agent.log_tail()))
            }
        })
        .await;
        agent
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for NetnsAgent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- the namespaced agent's log ---\n{}", self.log_tail());
        }
        let _ = self.child.start_kill();
    }
}

/// Issue 7's two-node check: node b runs in its own network namespace (own loopback,
/// own address on a veth), so its pod IPs cannot be reached from node a at all. A
/// client on node a reaches b's pods through the Service — a's proxy tunnels to b's
/// proxy over b's address — and follows them when they move to node a.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_in_separate_network_namespaces_reach_each_others_pods() {
    let Some(ns) = Netns::create() else {
        // CI runs as root with iproute2 (scripts/deps.sh installs it): there the check
        // must run, never pass by skipping.
        assert!(
            std::env::var_os("CI").is_none(),
            "creating network namespaces failed under CI (needs root and iproute2)"
        );
        eprintln!("skipped: creating network namespaces needs root and iproute2");
        return;
    };
    let host_ip = ns.host_ip.to_string();
    let cluster = isolated()
        .args(&["--bind-address", &host_ip, "--tls-san", &host_ip])
        .start()
        .await;
    let node_a = up_node(&cluster).await;
    cluster
        .apply_stdin(&echo_app("far", 2, Some("node-b")))
        .await;
    let addr = SocketAddr::new(cluster_ip(&cluster, "far").await, 80);
    let _node_b = NetnsAgent::start(&cluster, &ns, "node-b").await;

    let on_b = answered_by_all(&cluster, "far", addr, 2).await;
    let pods = cluster.get_json(&["pods", "-l", "app=far"]).await;
    for p in pods["items"].as_array().into_iter().flatten() {
        assert_eq!(p["spec"]["nodeName"], "node-b");
        // From node a, node b's pod IPs lead nowhere: only the tunnel gets there.
        let ip: IpAddr = p["status"]["podIP"]
            .as_str()
            .and_then(|ip| ip.parse().ok())
            .unwrap_or_else(|| panic!("no podIP: {}", p["status"]));
        assert!(
            pod_behind(SocketAddr::new(ip, 8080)).await.is_err(),
            "{ip} answered on node a"
        );
    }

    pods_follow_to(&cluster, &node_a, addr, &on_b).await;
}

/// The http-echo Deployment `flaky`: ready while `/data/<pod name>` exists (a hostPath
/// the test writes), behind the Service `flaky` on port 80.
fn flaky_app(dir: &std::path::Path) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: flaky
spec:
  replicas: 3
  selector:
    matchLabels: {{app: flaky}}
  template:
    metadata:
      labels: {{app: flaky}}
    spec:
      volumes:
      - name: data
        hostPath: {{path: {dir}}}
      containers:
      - name: web
        image: {image}
        ports:
        - {{name: http, containerPort: 8080}}
        env:
        - name: POD_NAME
          valueFrom:
            fieldRef: {{fieldPath: metadata.name}}
        - {{name: READY_FILE, value: "/data/$(POD_NAME)"}}
        volumeMounts:
        - {{name: data, mountPath: /data}}
        readinessProbe:
          httpGet: {{path: /ready, port: http}}
          periodSeconds: 1
          failureThreshold: 1
        # A wasm guest gets no SIGTERM to finish its requests with: as for any app that
        # does not drain, the hook keeps it serving while its endpoint is withdrawn.
        lifecycle:
          preStop:
            sleep: {{seconds: 1}}
---
apiVersion: v1
kind: Service
metadata:
  name: flaky
spec:
  selector: {{app: flaky}}
  ports:
  - {{name: web, port: 80, targetPort: http}}
"#,
        dir = dir.display(),
        image = sample_image("http-echo")
    )
}

/// Pins the `far` Deployment's pods to `node` and checks that the Service at `addr`
/// follows them: both new pods answer, none of the old ones (`before`) does.
async fn pods_follow_to(
    cluster: &Cluster,
    node: &str,
    addr: SocketAddr,
    before: &BTreeSet<String>,
) {
    cluster
        .kubectl_ok(&[
            "patch",
            "deployment",
            "far",
            "--type=merge",
            "-p",
            &format!(
                r#"{{"spec":{{"template":{{"spec":{{"nodeSelector":{{"kubernetes.io/hostname":"{node}"}}}}}}}}}}"#
            ),
        ])
        .await;
    let moved = eventually(&format!("the pods to move to {node}"), SLOW, async || {
        let pods = running_pods(cluster, "far").await;
        if pods.len() == 2 && pods.iter().all(|(_, n)| n == node) {
            Ok(pods)
        } else {
            Err(format!("ready: {pods:?}"))
        }
    })
    .await;
    let answered = answered_by_all(cluster, "far", addr, 2).await;
    assert!(
        answered.is_disjoint(before),
        "{answered:?} vs the old {before:?}"
    );
    assert_eq!(
        answered,
        moved.into_iter().map(|(n, _)| n).collect::<BTreeSet<_>>()
    );
}

/// Names of the pods of `app` that are not being deleted, ready or not.
async fn live_pods(cluster: &Cluster, app: &str) -> Vec<String> {
    let list = cluster
        .get_json(&["pods", "-l", &format!("app={app}")])
        .await;
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect()
}

/// Readiness steers traffic: a replica failing its probe stops getting requests and gets
/// them again when it recovers; a backend deleted mid-traffic (with a preStop sleep, as
/// an app that cannot drain needs) makes no request hang or fail; and a pod reaches the
/// Service through the variables the agent gave it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_deleted_backends_steer_traffic_and_pods_use_service_variables() {
    let cluster = isolated().start().await;
    let node = up_node(&cluster).await;
    let dir = cluster.path("ready");
    std::fs::create_dir_all(&dir).expect("create the readiness dir");
    cluster.apply_stdin(&flaky_app(&dir)).await;
    let pods = eventually("3 flaky pods", DEADLINE, async || {
        let pods = live_pods(&cluster, "flaky").await;
        if pods.len() == 3 {
            Ok(pods)
        } else {
            Err(format!("pods: {pods:?}"))
        }
    })
    .await;
    for pod in &pods {
        std::fs::write(dir.join(pod), "ok").expect("write a ready file");
    }
    let vip = cluster_ip(&cluster, "flaky").await;
    let addr = SocketAddr::new(vip, 80);
    answered_by_all(&cluster, "flaky", addr, 3).await;

    // One replica fails readiness: only the other two answer; back when it recovers.
    std::fs::remove_file(dir.join(&pods[0])).expect("remove a ready file");
    let two = answered_by_all(&cluster, "flaky", addr, 2).await;
    assert!(!two.contains(&pods[0]), "{} is not ready: {two:?}", pods[0]);
    std::fs::write(dir.join(&pods[0]), "ok").expect("write a ready file");
    answered_by_all(&cluster, "flaky", addr, 3).await;

    // A backend deleted while requests flow: none hangs, none fails.
    let victim = pods[1].clone();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let load = tokio::spawn({
        let sent = sent.clone();
        async move {
            let mut outcomes = Vec::new();
            let started = std::time::Instant::now();
            while started.elapsed() < Duration::from_secs(6) {
                outcomes.push(pod_behind(addr).await);
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            outcomes
        }
    });
    eventually("requests to flow", DEADLINE, async || {
        match sent.load(std::sync::atomic::Ordering::Relaxed) {
            n if n >= 5 => Ok(()),
            n => Err(format!("{n} requests so far")),
        }
    })
    .await;
    cluster
        .kubectl_ok(&["delete", "pod", &victim, "--wait=false"])
        .await;
    let outcomes = load.await.expect("the load task");
    let failures: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed while {victim} went away: {failures:?}",
        failures.len(),
        outcomes.len()
    );
    let tail: Vec<&String> = outcomes.iter().rev().take(10).flatten().collect();
    assert!(
        !tail.iter().any(|p| **p == victim),
        "the deleted {victim} still answered at the end: {tail:?}"
    );

    // A pod calls the Service by the address in its environment.
    cluster
        .create_stdin(&format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: caller
spec:
  nodeName: {node}
  restartPolicy: Never
  containers:
  - name: get
    image: {image}
    command: ["get", "http://$(FLAKY_SERVICE_HOST):$(FLAKY_SERVICE_PORT)/"]
"#,
            image = sample_image("http-echo")
        ))
        .await;
    eventually("the caller to finish", SLOW, async || {
        let p = cluster.get_json(&["pod", "caller"]).await;
        match p["status"]["phase"].as_str() {
            Some("Succeeded") => Ok(()),
            Some("Failed") => Ok(()),
            _ => Err(format!("status: {}", p["status"])),
        }
    })
    .await;
    let log = cluster.kubectl_ok(&["logs", "caller"]).await;
    let caller = cluster.get_json(&["pod", "caller"]).await;
    assert_eq!(caller["status"]["phase"], "Succeeded", "{log}");
    assert!(log.contains("pod: flaky-"), "{log}");
    // The backend saw the calling pod's address, not the proxy's.
    let caller_ip = caller["status"]["podIP"]
        .as_str()
        .expect("the caller's podIP");
    assert!(log.contains(&format!("from: {caller_ip}:")), "{log}");
}
