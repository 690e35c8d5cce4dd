//! Issue 6's `kubectl exec` and `kubectl port-forward`, with the real kubectl through
//! the API server to `wasmkube up`'s agent: exec runs the container's module again
//! with the command as argv (the samples' toolbox answers `cat`, `sh -c`, …), and
//! port-forward reaches http-echo's port.

use serde_json::Value;

use crate::agents::{sample_image, up_node};
use crate::harness::{eventually, Cluster, DEADLINE};

/// Waits until every container of pod `name` runs.
async fn wait_running(cluster: &Cluster, name: &str) -> Value {
    eventually(&format!("pod {name} to run"), DEADLINE, async || {
        let pod = cluster.get_json(&["pod", name]).await;
        let statuses = pod["status"]["containerStatuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let all_running =
            !statuses.is_empty() && statuses.iter().all(|c| c["state"]["running"].is_object());
        if pod["status"]["phase"] == "Running" && all_running {
            Ok(pod)
        } else {
            Err(format!("status: {}", pod["status"]))
        }
    })
    .await
}

/// A writer (appending lines to an emptyDir) and a reader of the same volume, with a
/// ConfigMap mounted too. Both are WASI preview 1 modules, which keep exact exit codes.
fn exec_pod() -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: exec-demo
spec:
  containers:
  - name: writer
    image: {writer}
    env:
    - name: DATA_DIR
      value: /data
    - name: INTERVAL_MS
      value: "200"
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    volumeMounts:
    - name: shared
      mountPath: /data
    - name: config
      mountPath: /config
  - name: reader
    image: {reader}
    env:
    - name: DATA_DIR
      value: /data
    volumeMounts:
    - name: shared
      mountPath: /data
      readOnly: true
  volumes:
  - name: shared
    emptyDir: {{}}
  - name: config
    configMap:
      name: exec-config
"#,
        writer = sample_image("writer"),
        reader = sample_image("reader"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_commands_in_the_pods_sandbox() {
    let cluster = Cluster::builder().up().start().await;
    up_node(&cluster).await;
    cluster
        .create_configmap(
            "default",
            "exec-config",
            &[("greeting", "hello from a configMap\n")],
        )
        .await;
    cluster.create_stdin(&exec_pod()).await;
    wait_running(&cluster, "exec-demo").await;

    // A file of a configMap volume, printed by the container's module run as `cat`.
    let out = cluster
        .kubectl_ok(&[
            "exec",
            "exec-demo",
            "-c",
            "writer",
            "--",
            "cat",
            "/config/greeting",
        ])
        .await;
    assert_eq!(out, "hello from a configMap\n");

    // What the writer container wrote to the emptyDir, read from the other container.
    let shared = eventually(
        "the writer's lines in the shared volume",
        DEADLINE,
        async || {
            let out = cluster
                .kubectl(&[
                    "exec",
                    "exec-demo",
                    "-c",
                    "reader",
                    "--",
                    "cat",
                    "/data/shared.txt",
                ])
                .await;
            if out.success && out.stdout.contains("exec-demo") {
                Ok(out.stdout)
            } else {
                Err(out.to_string())
            }
        },
    )
    .await;
    assert!(
        shared.lines().next().is_some_and(|l| l.starts_with("1 ")),
        "{shared}"
    );

    // The exit code comes back faithfully, stderr separately from stdout.
    let out = cluster
        .kubectl(&[
            "exec",
            "exec-demo",
            "-c",
            "writer",
            "--",
            "sh",
            "-c",
            "exit 3",
        ])
        .await;
    assert_eq!(out.code, Some(3), "{out}");
    assert!(out.stderr.contains("exit code 3"), "{out}");
    let out = cluster
        .kubectl(&[
            "exec",
            "exec-demo",
            "-c",
            "writer",
            "--",
            "cat",
            "/no/such/file",
        ])
        .await;
    assert_eq!(out.code, Some(1), "{out}");
    assert_eq!(out.stdout, "", "{out}");
    assert!(out.stderr.contains("/no/such/file"), "{out}");

    // Piped stdin reaches the command, and its end is the command's end of input.
    let input = "piped input\nsecond line\n";
    let out = cluster
        .kubectl_stdin(
            &["exec", "-i", "exec-demo", "-c", "writer", "--", "cat"],
            input,
        )
        .await;
    assert!(out.success, "{out}");
    assert_eq!(out.stdout, input);

    // An unknown container is named in the error.
    let out = cluster
        .kubectl(&["exec", "exec-demo", "-c", "nope", "--", "ls"])
        .await;
    assert!(!out.success, "{out}");
    assert!(out.stderr.contains("nope"), "{out}");
}

/// One GET of `/hello` at 127.0.0.1:`port`; the whole response.
async fn http_get(port: u16) -> Result<String, String> {
    crate::harness::http_get(std::net::SocketAddr::from(([127, 0, 0, 1], port)), "/hello").await
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_reaches_the_pods_port() {
    let cluster = Cluster::builder().up().start().await;
    let node = up_node(&cluster).await;
    cluster
        .create_stdin(&format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: pf-echo
spec:
  nodeName: {node}
  containers:
  - name: web
    image: {image}
    env:
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
"#,
            image = sample_image("http-echo")
        ))
        .await;
    wait_running(&cluster, "pf-echo").await;

    let local = free_port();
    let mapping = format!("{local}:8080");
    let mut forward = cluster.spawn_kubectl(&["port-forward", "pod/pf-echo", &mapping]);
    forward
        .wait_for_line("kubectl's Forwarding line", |l| {
            l.contains(&format!("Forwarding from 127.0.0.1:{local} -> 8080"))
        })
        .await;
    // The server may still be starting to listen when the container is Running.
    let page = eventually(
        "http-echo's page through the forward",
        DEADLINE,
        async || {
            let response = http_get(local).await?;
            if response.starts_with("HTTP/1.1 200") {
                Ok(response)
            } else {
                Err(format!("response: {response:?}"))
            }
        },
    )
    .await;
    assert!(page.contains("pf-echo"), "{page}");
    assert!(page.contains("/hello"), "{page}");
    // More connections over the same port-forward session.
    for _ in 0..3 {
        let again = http_get(local).await.expect("another GET");
        assert!(
            again.starts_with("HTTP/1.1 200") && again.contains("pf-echo"),
            "{again}"
        );
    }
    assert!(forward.is_running(), "kubectl port-forward exited");
}
