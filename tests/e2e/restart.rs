//! Scenario 7: state survives a server restart and an etcd restart, and
//! resourceVersions keep rising across both.

use serde_json::Value;

use crate::harness::{eventually, rv_number, signal, Cluster, DEADLINE};

const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: persist
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: persist
data:
  color: blue
---
apiVersion: v1
kind: Secret
metadata:
  name: creds
  namespace: persist
stringData:
  user: admin
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: persist
spec:
  selector:
    app: web
  ports:
  - port: 80
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: persist
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: ghcr.io/wasmkube/hello:v1
---
apiVersion: v1
kind: Pod
metadata:
  name: p
  namespace: persist
spec:
  containers:
  - name: c
    image: ghcr.io/wasmkube/hello:v1
"#;

const KINDS: [(&str, &str); 6] = [
    ("ns", "persist"),
    ("cm", "settings"),
    ("secret", "creds"),
    ("svc", "web"),
    ("deploy", "web"),
    ("pod", "p"),
];

/// uid and resourceVersion of every object in [`OBJECTS`].
async fn snapshot(cluster: &Cluster) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for (kind, name) in KINDS {
        let obj = cluster.get_json(&[kind, name, "-n", "persist"]).await;
        let uid = obj["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        out.push((uid, rv_number(&obj)));
    }
    out
}

fn uids(snap: &[(String, u64)]) -> Vec<&str> {
    snap.iter().map(|(u, _)| u.as_str()).collect()
}

fn max_rv(snap: &[(String, u64)]) -> u64 {
    snap.iter().map(|(_, rv)| *rv).max().unwrap_or(0)
}

async fn create_cm(cluster: &Cluster, name: &str) -> u64 {
    cluster
        .create_configmap("persist", name, &[("k", "v")])
        .await;
    let obj: Value = cluster.get_json(&["cm", name, "-n", "persist"]).await;
    rv_number(&obj)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_survive_a_server_restart() {
    let mut cluster = Cluster::builder().external_etcd().start().await;
    cluster.create_stdin(OBJECTS).await;
    let before = snapshot(&cluster).await;
    let cluster_ip = cluster
        .kubectl_ok(&[
            "get",
            "svc",
            "web",
            "-n",
            "persist",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .await;

    let first_kubeconfig = std::fs::read_to_string(&cluster.kubeconfig).expect("read kubeconfig");
    let status = cluster.stop_server().await;
    assert!(
        status.success(),
        "the server should exit cleanly on SIGTERM: {status}"
    );
    // The server is really gone: kubectl cannot reach it.
    let down = cluster
        .kubectl(&["get", "ns", "--request-timeout=5s"])
        .await;
    assert!(!down.success, "{down}");

    cluster.start_server().await;
    // The cluster CA is reused: the new kubeconfig trusts the same CA.
    let ca = |text: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with("certificate-authority-data:"))
            .map(str::to_string)
            .expect("certificate-authority-data")
    };
    let second_kubeconfig = std::fs::read_to_string(&cluster.kubeconfig).expect("read kubeconfig");
    assert_eq!(
        ca(&first_kubeconfig),
        ca(&second_kubeconfig),
        "a restart made a new CA"
    );
    let after = snapshot(&cluster).await;
    assert_eq!(
        uids(&after),
        uids(&before),
        "the same objects after the restart"
    );
    let same_ip = cluster
        .kubectl_ok(&[
            "get",
            "svc",
            "web",
            "-n",
            "persist",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .await;
    assert_eq!(same_ip, cluster_ip);
    let data = cluster
        .kubectl_ok(&[
            "get",
            "cm",
            "settings",
            "-n",
            "persist",
            "-o",
            "jsonpath={.data.color}",
        ])
        .await;
    assert_eq!(data, "blue");

    // New writes get higher resourceVersions than anything before the restart.
    let rv = create_cm(&cluster, "after-restart").await;
    assert!(
        rv > max_rv(&before),
        "new resourceVersion {rv} <= {} from before the restart",
        max_rv(&before)
    );
    cluster
        .kubectl_ok(&["label", "cm", "settings", "-n", "persist", "x=y"])
        .await;
    let relabeled = cluster.get_json(&["cm", "settings", "-n", "persist"]).await;
    assert!(rv_number(&relabeled) > rv);

    // The ClusterIP allocator remembers what was handed out before the restart.
    cluster
        .create_stdin(
            r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"web2","namespace":"persist"},
                "spec":{"ports":[{"port":80,"targetPort":8080}]}}"#,
        )
        .await;
    let ip2 = cluster
        .kubectl_ok(&[
            "get",
            "svc",
            "web2",
            "-n",
            "persist",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .await;
    assert!(ip2.starts_with("127.96."), "{ip2}");
    assert_ne!(
        ip2, cluster_ip,
        "a ClusterIP was handed out twice across a restart"
    );

    // The system namespaces are not recreated (same uid).
    let default_ns = cluster.get_json(&["ns", "default"]).await;
    let default_uid = default_ns["metadata"]["uid"].clone();
    cluster.stop_server().await;
    cluster.start_server().await;
    let default_again = cluster.get_json(&["ns", "default"]).await;
    assert_eq!(default_again["metadata"]["uid"], default_uid);
    let after_two = snapshot(&cluster).await;
    assert_eq!(uids(&after_two), uids(&before));
}

async fn readyz(cluster: &Cluster) -> crate::harness::Output {
    cluster
        .kubectl(&["get", "--raw", "/readyz", "--request-timeout=5s"])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_survive_an_etcd_restart() {
    let cluster = Cluster::builder().external_etcd().start().await;
    cluster.create_stdin(OBJECTS).await;
    let before = snapshot(&cluster).await;
    let ready = readyz(&cluster).await;
    assert!(ready.success && ready.stdout.trim() == "ok", "{ready}");

    // etcd frozen (SIGSTOP): unreachable without the supervisor restarting it.
    let pid = cluster.etcd().pid().expect("etcd runs");
    signal(pid, "STOP");
    let failing = eventually(
        "/readyz to fail while etcd is frozen",
        DEADLINE,
        async || {
            let out = readyz(&cluster).await;
            if out.success {
                Err(format!("still ready: {out}"))
            } else {
                Ok(out)
            }
        },
    )
    .await;
    signal(pid, "CONT");
    assert!(!failing.stderr.is_empty(), "{failing}");
    // Thawed, etcd answers again and so does /readyz.
    eventually("/readyz to pass once etcd is back", DEADLINE, async || {
        let out = readyz(&cluster).await;
        if out.success {
            Ok(())
        } else {
            Err(out.to_string())
        }
    })
    .await;

    // A real restart: the process goes away and comes back on the same port and data.
    cluster
        .etcd()
        .restart()
        .await
        .unwrap_or_else(|e| panic!("restarting etcd: {e}"));
    eventually("reads and writes to work after the etcd restart", DEADLINE, async || {
        let out = cluster
            .kubectl_stdin(
                &["create", "-f", "-"],
                r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"after-etcd","namespace":"persist"}}"#,
            )
            .await;
        if out.success || out.stderr.contains("AlreadyExists") || out.stderr.contains("already exists") {
            Ok(())
        } else {
            Err(out.to_string())
        }
    })
    .await;
    let after = snapshot(&cluster).await;
    assert_eq!(
        uids(&after),
        uids(&before),
        "the same objects after the etcd restart"
    );
    let created: Value = cluster
        .get_json(&["cm", "after-etcd", "-n", "persist"])
        .await;
    assert!(rv_number(&created) > max_rv(&before));
    let ready = readyz(&cluster).await;
    assert!(ready.success, "{ready}");

    // Watches started after the restart see new events (the watch cache recovered).
    let mut watch =
        cluster.spawn_kubectl(&["get", "cm", "-n", "persist", "-w", "--output-watch-events"]);
    watch.wait_for_row(&["ADDED", "after-etcd"]).await;
    let rv = create_cm(&cluster, "watched-after-etcd").await;
    watch.wait_for_row(&["ADDED", "watched-after-etcd"]).await;
    assert!(rv > rv_number(&created));
}
