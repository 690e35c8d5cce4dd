//! Issue 6's probes and hooks, seen through the real kubectl: readiness flips READY as
//! the test toggles the probe's target file, a failing liveness probe restarts the
//! container (Unhealthy and Killing events, RESTARTS rising), exec probes run the
//! container's module (the samples' toolbox `test -f`), a startup probe holds
//! readiness back, and postStart/preStop hooks run at start and at deletion.
//!
//! The probe targets are files in a hostPath volume the test writes on the host.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::agents::{sample_image, up_node};
use crate::harness::{eventually, Cluster, DEADLINE};

/// Long enough for a liveness kill (a few failed periods) and the restart (the first
/// one is at once), on a loaded machine.
const RESTART_DEADLINE: Duration = Duration::from_secs(90);

/// A `wasmkube up` cluster (the harness gives it pod and Service ranges of its own).
async fn cluster() -> Cluster {
    Cluster::builder().up().start().await
}

/// A directory for a pod's hostPath volume.
fn data_dir(cluster: &Cluster, name: &str) -> PathBuf {
    let dir = cluster.path(name);
    std::fs::create_dir_all(&dir).expect("create the hostPath directory");
    dir
}

fn touch(dir: &Path, file: &str) {
    std::fs::write(dir.join(file), b"").expect("write a probe file");
}

fn remove(dir: &Path, file: &str) {
    std::fs::remove_file(dir.join(file)).expect("remove a probe file");
}

async fn pod_json(cluster: &Cluster, name: &str) -> Value {
    cluster.get_json(&["pod", name]).await
}

/// The READY column of `kubectl get pod NAME`.
async fn ready_column(cluster: &Cluster, name: &str) -> String {
    let table = cluster.get_table(&["pod", name]).await;
    table.row(name).get("READY").to_string()
}

async fn wait_ready_column(cluster: &Cluster, name: &str, want: &str) {
    eventually(
        &format!("pod {name} to show READY {want}"),
        DEADLINE,
        async || {
            let got = ready_column(cluster, name).await;
            if got == want {
                Ok(())
            } else {
                Err(format!("READY {got}"))
            }
        },
    )
    .await;
}

fn condition<'a>(pod: &'a Value, type_: &str) -> &'a Value {
    pod["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .map_or(&Value::Null, |c| &c["status"])
}

/// Waits until `kubectl describe pod NAME` mentions every one of `needles`.
async fn wait_describe(cluster: &Cluster, name: &str, needles: &[&str]) -> String {
    eventually(
        &format!("describe pod {name} to mention {needles:?}"),
        DEADLINE,
        async || {
            let text = cluster.kubectl_ok(&["describe", "pod", name]).await;
            match needles.iter().find(|n| !text.contains(**n)) {
                None => Ok(text),
                Some(missing) => Err(format!("no {missing:?} in:\n{text}")),
            }
        },
    )
    .await
}

async fn wait_running(cluster: &Cluster, name: &str) -> Value {
    eventually(&format!("pod {name} to run"), DEADLINE, async || {
        let pod = pod_json(cluster, name).await;
        if pod["status"]["containerStatuses"][0]["state"]["running"].is_object() {
            Ok(pod)
        } else {
            Err(format!("status: {}", pod["status"]))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_readiness_flips_ready_and_liveness_restarts() {
    let cluster = cluster().await;
    up_node(&cluster).await;
    let dir = data_dir(&cluster, "echo-data");
    cluster
        .create_stdin(&format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: echo
spec:
  containers:
  - name: web
    image: {image}
    ports:
    - name: http
      containerPort: 8080
    env:
    - {{name: READY_FILE, value: /data/ready}}
    - {{name: UNHEALTHY_FILE, value: /data/unhealthy}}
    readinessProbe:
      httpGet: {{path: /ready, port: http}}
      periodSeconds: 1
      failureThreshold: 1
    livenessProbe:
      httpGet: {{path: /healthz, port: 8080}}
      periodSeconds: 1
      failureThreshold: 2
    volumeMounts:
    - {{name: data, mountPath: /data}}
  volumes:
  - name: data
    hostPath: {{path: {dir}, type: Directory}}
"#,
            image = sample_image("http-echo"),
            dir = dir.display(),
        ))
        .await;

    // Running, serving, but /ready says 503 while the file is missing.
    wait_running(&cluster, "echo").await;
    wait_describe(
        &cluster,
        "echo",
        &["Readiness probe failed: HTTP probe failed with statuscode: 503"],
    )
    .await;
    assert_eq!(ready_column(&cluster, "echo").await, "0/1");
    let pod = pod_json(&cluster, "echo").await;
    assert_eq!(condition(&pod, "Ready"), "False", "{}", pod["status"]);
    assert_eq!(condition(&pod, "ContainersReady"), "False");
    assert_eq!(pod["status"]["containerStatuses"][0]["ready"], false);
    assert_eq!(pod["status"]["containerStatuses"][0]["started"], true);

    touch(&dir, "ready");
    wait_ready_column(&cluster, "echo", "1/1").await;
    let pod = pod_json(&cluster, "echo").await;
    assert_eq!(condition(&pod, "Ready"), "True", "{}", pod["status"]);
    assert_eq!(condition(&pod, "ContainersReady"), "True");

    remove(&dir, "ready");
    wait_ready_column(&cluster, "echo", "0/1").await;
    touch(&dir, "ready");
    wait_ready_column(&cluster, "echo", "1/1").await;
    assert_eq!(
        pod_json(&cluster, "echo").await["status"]["containerStatuses"][0]["restartCount"],
        0,
        "a failing readiness probe never restarts"
    );

    // /healthz answers 500: two failures in a row and the container is killed.
    touch(&dir, "unhealthy");
    let describe = wait_describe(
        &cluster,
        "echo",
        &[
            "Liveness probe failed: HTTP probe failed with statuscode: 500",
            "Container web failed liveness probe, will be restarted",
        ],
    )
    .await;
    assert!(describe.contains("Unhealthy"), "{describe}");
    assert!(describe.contains("Killing"), "{describe}");
    remove(&dir, "unhealthy");
    let pod = eventually(
        "the killed container to run again",
        RESTART_DEADLINE,
        async || {
            let pod = pod_json(&cluster, "echo").await;
            let st = &pod["status"]["containerStatuses"][0];
            if st["restartCount"].as_i64().unwrap_or(0) >= 1 && st["state"]["running"].is_object() {
                Ok(pod)
            } else {
                Err(format!("status: {st}"))
            }
        },
    )
    .await;
    let last = &pod["status"]["containerStatuses"][0]["lastState"]["terminated"];
    if last["exitCode"] != 137 {
        let previous = cluster.kubectl(&["logs", "echo", "--previous"]).await;
        let describe = cluster.kubectl(&["describe", "pod", "echo"]).await;
        panic!(
            "the killed run should show 137: {last}\nprevious run's log:\n{previous}\n{describe}"
        );
    }
    assert_eq!(last["reason"], "Error", "{last}");
    let table = cluster.get_table(&["pod", "echo"]).await;
    let restarts = table.row("echo").get("RESTARTS").to_string();
    assert!(restarts.starts_with('1'), "RESTARTS {restarts}");
    // The new run is probed afresh: ready again once /ready answers.
    wait_ready_column(&cluster, "echo", "1/1").await;
    let events = cluster
        .kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=echo,reason=Killing",
        ])
        .await;
    assert!(
        events.contains("failed liveness probe, will be restarted"),
        "{events}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_probes_startup_gate_and_hooks() {
    let cluster = cluster().await;
    up_node(&cluster).await;
    let dir = data_dir(&cluster, "hello-data");
    // Ready from the start as far as the readiness probe goes; the startup probe
    // holds it back until /data/started exists.
    touch(&dir, "ready");
    cluster
        .create_stdin(&format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: gated
spec:
  terminationGracePeriodSeconds: 20
  containers:
  - name: app
    image: {image}
    args: ["--serve-forever"]
    startupProbe:
      exec: {{command: ["test", "-f", "/data/started"]}}
      periodSeconds: 1
      failureThreshold: 600
    readinessProbe:
      exec: {{command: ["test", "-f", "/data/ready"]}}
      periodSeconds: 1
      failureThreshold: 1
    lifecycle:
      postStart:
        exec: {{command: ["write", "/data/post-start", "hello from postStart"]}}
      preStop:
        exec: {{command: ["write", "/data/pre-stop", "goodbye from preStop"]}}
    volumeMounts:
    - {{name: data, mountPath: /data}}
  volumes:
  - name: data
    hostPath: {{path: {dir}, type: Directory}}
"#,
            image = sample_image("hello"),
            dir = dir.display(),
        ))
        .await;

    wait_running(&cluster, "gated").await;
    // The startup probe's failures are reported; meanwhile the container is neither
    // started nor ready, though its readiness target exists.
    wait_describe(
        &cluster,
        "gated",
        &["Startup probe failed: command 'test -f /data/started' exited with 1"],
    )
    .await;
    let pod = pod_json(&cluster, "gated").await;
    let st = &pod["status"]["containerStatuses"][0];
    assert_eq!(st["started"], false, "{st}");
    assert_eq!(st["ready"], false, "{st}");
    assert_eq!(ready_column(&cluster, "gated").await, "0/1");
    // postStart ran inside the container's sandbox, on its volume.
    let post_start = std::fs::read_to_string(dir.join("post-start")).unwrap_or_default();
    assert_eq!(post_start.trim(), "hello from postStart");

    touch(&dir, "started");
    wait_ready_column(&cluster, "gated", "1/1").await;
    let pod = pod_json(&cluster, "gated").await;
    assert_eq!(pod["status"]["containerStatuses"][0]["started"], true);
    assert_eq!(condition(&pod, "Ready"), "True");

    // The exec readiness probe follows its file.
    remove(&dir, "ready");
    wait_ready_column(&cluster, "gated", "0/1").await;
    wait_describe(
        &cluster,
        "gated",
        &["Readiness probe failed: command 'test -f /data/ready' exited with 1"],
    )
    .await;
    touch(&dir, "ready");
    wait_ready_column(&cluster, "gated", "1/1").await;

    // Deleting the pod runs preStop in the container first.
    cluster
        .kubectl_ok(&["delete", "pod", "gated", "--wait=true", "--timeout=60s"])
        .await;
    let pre_stop = std::fs::read_to_string(dir.join("pre-stop")).unwrap_or_default();
    assert_eq!(pre_stop.trim(), "goodbye from preStop");
}
