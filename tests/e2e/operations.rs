//! Scenario 9: the operational endpoints (`/healthz`, `/livez`, `/readyz`, `/version`,
//! `/metrics`) through `kubectl get --raw`, and `wasmkube up` running a cluster whose
//! managed etcd stops with it.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{check_prerequisites, eventually, processes_mentioning, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_version_and_metrics_endpoints() {
    let cluster = Cluster::builder()
        .token_auth_file("good-token,alice,alice-uid,\"system:masters\"\n")
        .start()
        .await;

    for path in ["/healthz", "/livez", "/readyz"] {
        let out = cluster.raw(path).await;
        assert!(out.success, "{path}: {out}");
        assert_eq!(out.stdout.trim(), "ok", "{path}: {out}");
    }

    let version = cluster.raw("/version").await;
    assert!(version.success, "{version}");
    let version: Value = serde_json::from_str(&version.stdout).expect("/version is JSON");
    assert_eq!(version["major"], "1", "{version}");
    assert_eq!(version["minor"], "33", "{version}");
    assert!(
        version["gitVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("v1.33.")),
        "{version}"
    );
    for field in ["platform", "goVersion", "buildDate", "gitCommit"] {
        assert!(
            version[field].is_string(),
            "/version lacks {field}: {version}"
        );
    }
    let kubectl_version = cluster.kubectl_ok(&["version", "-o", "json"]).await;
    let kubectl_version: Value = serde_json::from_str(&kubectl_version).expect("version JSON");
    assert_eq!(
        kubectl_version["serverVersion"]["minor"], "33",
        "{kubectl_version}"
    );

    // Some traffic so the request counter has LIST/GET/CREATE samples.
    cluster.kubectl_ok(&["get", "ns"]).await;
    cluster.kubectl_ok(&["get", "ns", "default"]).await;
    cluster.create_configmap("default", "m", &[]).await;
    let mut watch = cluster.spawn_kubectl(&["get", "pods", "-w"]);
    cluster
        .create_stdin(r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"m"},"spec":{"containers":[{"name":"c","image":"i:1"}]}}"#)
        .await;
    watch.wait_for_row(&["m"]).await;

    // Without credentials the API answers 401 (curl: kubectl would prompt).
    let (code, body) = cluster.curl_get("/api/v1/namespaces", None).await;
    assert_eq!(code, 401, "{body}");

    // A token from --token-auth-file authenticates; another does not.
    let good = cluster.kubeconfig_with_token("good.kubeconfig", Some("good-token"));
    let out = cluster
        .kubectl_as(&good, &["get", "ns", "default"], None)
        .await;
    assert!(out.success, "a static token should authenticate:\n{out}");
    let bad = cluster.kubeconfig_with_token("bad.kubeconfig", Some("good-token-not"));
    let out = cluster
        .kubectl_as(&bad, &["get", "ns", "default"], None)
        .await;
    assert!(out.stderr.contains("(Unauthorized)"), "{out}");

    // The kubeconfig is private, and the serving certificate is valid for localhost.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&cluster.kubeconfig)
        .expect("stat the kubeconfig")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "kubeconfig mode {:o}", mode & 0o777);
    let admin = std::fs::read_to_string(&cluster.kubeconfig).expect("read the kubeconfig");
    assert!(
        admin.contains("https://127.0.0.1:"),
        "the kubeconfig should point at https://127.0.0.1"
    );
    let localhost = cluster.write_file(
        "localhost.kubeconfig",
        admin.replace("https://127.0.0.1:", "https://localhost:"),
    );
    let out = cluster
        .kubectl_as(&localhost, &["get", "ns", "default"], None)
        .await;
    assert!(
        out.success,
        "TLS to https://localhost (a SAN of the serving cert):\n{out}"
    );

    let metrics = cluster.raw("/metrics").await;
    assert!(metrics.success, "{metrics}");
    let text = metrics.stdout;
    assert!(
        text.contains("# TYPE apiserver_request_total counter"),
        "no apiserver_request_total:\n{text}"
    );
    let has_sample = |verb: &str, resource: &str, code: &str| {
        text.lines().any(|l| {
            l.starts_with("apiserver_request_total{")
                && l.contains(&format!("verb=\"{verb}\""))
                && l.contains(&format!("resource=\"{resource}\""))
                && l.contains(&format!("code=\"{code}\""))
        })
    };
    // Labelled as upstream does: upper-case verbs, POST for creates.
    let totals: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .collect();
    let totals = totals.join("\n");
    assert!(
        has_sample("LIST", "namespaces", "200"),
        "no LIST namespaces 200 sample:\n{totals}"
    );
    assert!(
        has_sample("GET", "namespaces", "200"),
        "no GET namespaces 200 sample:\n{totals}"
    );
    assert!(
        has_sample("POST", "configmaps", "201"),
        "no POST configmaps 201 sample:\n{totals}"
    );
    assert!(
        text.contains("apiserver_request_duration_seconds_bucket{"),
        "no request latency histogram:\n{totals}"
    );
    // The open `get pods -w` counts as a WATCH request.
    assert!(
        text.lines()
            .any(|l| l.contains("verb=\"WATCH\"") && l.contains("resource=\"pods\"")),
        "no WATCH pods sample:\n{totals}"
    );
    drop(watch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_a_cluster_and_stops_its_etcd() {
    let mut cluster = Cluster::builder().up().start().await;
    let ns = cluster.get_table(&["ns"]).await;
    ns.row("default");
    cluster.create_configmap("default", "up-works", &[]).await;

    // The managed etcd keeps its data under the data dir.
    let etcd_dir = cluster.data_dir.join("etcd");
    assert!(
        etcd_dir.is_dir(),
        "managed etcd data should be in {}",
        etcd_dir.display()
    );
    let needle = cluster.data_dir.to_string_lossy().into_owned();
    let server_pid = cluster.server_pid().expect("the server runs");
    let children: Vec<u32> = processes_mentioning(&needle)
        .into_iter()
        .filter(|&p| p != server_pid)
        .collect();
    assert!(
        !children.is_empty(),
        "no managed etcd process mentions {needle}"
    );

    let status = cluster.stop_server().await;
    assert!(
        status.success(),
        "wasmkube up should exit cleanly on SIGTERM: {status}"
    );
    eventually(
        "the managed etcd to stop with the server",
        Duration::from_secs(15),
        async || {
            let left = processes_mentioning(&needle);
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("still running: {left:?}"))
            }
        },
    )
    .await;

    // Started again on the same data dir, the data is still there.
    cluster.start_server().await;
    let cms = cluster.get_table(&["cm"]).await;
    cms.row("up-works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_without_etcd_installed_names_the_package() {
    check_prerequisites();
    let dir = tempfile::tempdir().expect("temp dir");
    // A PATH without etcd on it.
    let empty = dir.path().join("empty-bin");
    std::fs::create_dir_all(&empty).expect("create a dir");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_wasmkube"))
        .args(["server", "--secure-port", "0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("PATH", &empty)
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("wasmkube server without etcd should exit promptly")
        .expect("run wasmkube");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it should fail: {stderr}");
    assert!(
        stderr.contains("etcd-server"),
        "the error should name the package to install (etcd-server): {stderr}"
    );
    assert!(
        !dir.path().join("data/kubeconfig").exists(),
        "no kubeconfig without a server"
    );
}
