//! Issue 5's scenarios: pods run as WASI modules by real node agents (`wasmkube up`'s
//! in-process agent, and `wasmkube agent` processes), driven with the real kubectl.

use std::time::Duration;

use serde_json::Value;

use crate::agents::{
    manifest, push, sample, sample_image, samples_dir, up_node, AgentProcess, Registry,
};
use crate::harness::{eventually, Cluster, DEADLINE};

/// Crash loops and pulls back off for 10 s, then 20 s: scenarios that wait for a
/// second restart need this much.
const SLOW: Duration = Duration::from_secs(90);

/// A sample manifest with its images pointing at the freshly built modules.
async fn pod_json(cluster: &Cluster, ns: &str, name: &str) -> Value {
    cluster.get_json(&["-n", ns, "pod", name]).await
}

async fn wait_phase(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    phase: &str,
    deadline: Duration,
) -> Value {
    eventually(
        &format!("pod {ns}/{name} to be {phase}"),
        deadline,
        async || {
            let pod = pod_json(cluster, ns, name).await;
            if pod["status"]["phase"] == phase {
                Ok(pod)
            } else {
                Err(format!("status: {}", pod["status"]))
            }
        },
    )
    .await
}

fn container_status<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_hello_to_completed_with_logs_and_events() {
    // A node address of its own: the logs below reach the agent there, since its
    // endpoint listens on the node address only.
    let cluster = Cluster::builder()
        .up()
        .args(&["--node-ip", "127.0.0.7"])
        .start()
        .await;
    let node = up_node(&cluster).await;

    // The node is real: capacity from the machine, the runtime label, nodeInfo.
    let n = cluster.get_json(&["node", &node]).await;
    assert_eq!(
        n["status"]["addresses"][0],
        serde_json::json!({"type": "InternalIP", "address": "127.0.0.7"})
    );
    assert_eq!(
        n["metadata"]["labels"]["runtime.wasmkube.io/wasmtime"],
        "true"
    );
    assert_eq!(n["metadata"]["labels"]["kubernetes.io/os"], "linux");
    let cpus = std::thread::available_parallelism()
        .unwrap()
        .get()
        .to_string();
    assert_eq!(n["status"]["capacity"]["cpu"], cpus.as_str());
    assert!(n["status"]["nodeInfo"]["containerRuntimeVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with("wasmtime://")));
    let rc = cluster.get_json(&["runtimeclass", "wasmtime"]).await;
    assert_eq!(rc["handler"], "wasmtime");

    // hello (preview 1) with args and env; hello-p2 (a component) through RuntimeClass.
    cluster
        .apply_stdin(&format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: hello}}
spec:
  restartPolicy: Never
  containers:
  - name: hello
    image: {}
    args: ["--greet", "$(HELLO_WHO)"]
    env:
    - {{name: HELLO_WHO, value: kubectl}}
---
apiVersion: v1
kind: Pod
metadata: {{name: hello-p2}}
spec:
  restartPolicy: Never
  runtimeClassName: wasmtime
  containers:
  - name: hello
    image: {}
"#,
            sample_image("hello"),
            sample_image("hello-p2")
        ))
        .await;
    let pod = wait_phase(&cluster, "default", "hello", "Succeeded", DEADLINE).await;
    let st = container_status(&pod, "hello");
    assert_eq!(st["state"]["terminated"]["reason"], "Completed", "{st}");
    assert_eq!(st["state"]["terminated"]["exitCode"], 0);
    assert!(
        st["imageID"]
            .as_str()
            .is_some_and(|i| i.contains("sha256:")),
        "{st}"
    );
    assert_eq!(pod["status"]["hostIP"], "127.0.0.7");
    let table = cluster.get_table(&["pod", "hello"]).await;
    assert_eq!(table.row("hello").get("STATUS"), "Completed");

    let logs = cluster.kubectl_ok(&["logs", "hello"]).await;
    assert!(logs.contains("hello from wasmkube"), "{logs}");
    assert!(
        logs.contains("--greet") && logs.contains("kubectl"),
        "{logs}"
    );
    assert!(logs.contains("HELLO_WHO=kubectl"), "{logs}");

    let describe = cluster.kubectl_ok(&["describe", "pod", "hello"]).await;
    for reason in ["Scheduled", "Pulled", "Created", "Started"] {
        assert!(describe.contains(reason), "no {reason} event:\n{describe}");
    }

    wait_phase(&cluster, "default", "hello-p2", "Succeeded", DEADLINE).await;
    let logs = cluster.kubectl_ok(&["logs", "hello-p2"]).await;
    assert!(logs.contains("hello from wasmkube"), "{logs}");

    // `kubectl drain` cordons the node and deletes its pods (through a protobuf
    // DeleteOptions body); their replacements wait until `uncordon`.
    cluster
        .apply_stdin(&manifest("hello/long-running.yaml"))
        .await;
    let running = async || {
        let pods = cluster.get_json(&["pods", "-l", "app=hello-forever"]).await;
        let items = pods["items"].as_array().cloned().unwrap_or_default();
        let n = items
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .count();
        (items.len(), n)
    };
    eventually(
        "the Deployment's pods to run",
        DEADLINE,
        async || match running().await {
            (total, n) if total > 0 && n == total => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    cluster
        .kubectl_ok(&[
            "drain",
            &node,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=60s",
        ])
        .await;
    let pending = cluster.get_json(&["pods", "-l", "app=hello-forever"]).await;
    assert!(
        pending["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["spec"]["nodeName"].is_null()),
        "replacements must not land on a cordoned node: {pending}"
    );
    cluster.kubectl_ok(&["uncordon", &node]).await;
    eventually(
        "the replacements to run after uncordon",
        DEADLINE,
        async || match running().await {
            (total, n) if total > 0 && n == total => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_and_trapping_modules_are_reported() {
    let cluster = Cluster::builder().up().start().await;
    up_node(&cluster).await;
    cluster.apply_stdin(&manifest("crasher/pod.yaml")).await;
    cluster
        .apply_stdin(&format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: trapper}}
spec:
  restartPolicy: Never
  containers:
  - name: crasher
    image: {}
    args: ["--panic"]
"#,
            sample_image("crasher")
        ))
        .await;

    // A guest panic is a trap: Error with the trap in the message, and an Event.
    let pod = wait_phase(&cluster, "default", "trapper", "Failed", DEADLINE).await;
    let t = &container_status(&pod, "crasher")["state"]["terminated"];
    assert_eq!(t["reason"], "Error", "{t}");
    assert!(t["message"].as_str().is_some_and(|m| !m.is_empty()), "{t}");

    // The crasher exits 3 again and again: CrashLoopBackOff, restartCount rising, the
    // last exit code kept.
    let crash_name = "crasher";
    let mut saw_backoff = false;
    eventually("the crasher to restart twice", SLOW, async || {
        let pod = pod_json(&cluster, "default", crash_name).await;
        let st = container_status(&pod, "crasher");
        if st["state"]["waiting"]["reason"] == "CrashLoopBackOff" {
            saw_backoff = true;
        }
        let restarts = st["restartCount"].as_i64().unwrap_or(0);
        let last = &st["lastState"]["terminated"];
        if restarts >= 2 && last["exitCode"] == 3 && saw_backoff {
            Ok(())
        } else {
            Err(format!("backoff seen: {saw_backoff}; status: {st}"))
        }
    })
    .await;
    let describe = cluster.kubectl_ok(&["describe", "pod", crash_name]).await;
    assert!(describe.contains("BackOff"), "{describe}");
    let previous = cluster.kubectl(&["logs", crash_name, "--previous"]).await;
    assert!(previous.success, "{}", previous.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_modules_show_a_clear_status_and_event() {
    let cluster = Cluster::builder().up().start().await;
    up_node(&cluster).await;
    let text_file = cluster.write_file("not-wasm.wasm", "this is plain text, not a module\n");
    // An HTTP server for pinned URLs.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut http = tokio::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(samples_dir())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 -m http.server");
    let hello = std::fs::read(sample("hello")).unwrap();
    let digest = {
        let out = std::process::Command::new("sha256sum")
            .arg(sample("hello"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    assert!(!hello.is_empty());
    let wrong = "0".repeat(64);
    let url = format!("http://127.0.0.1:{port}/hello.wasm");
    let pods = [
        ("missing", "file:///nonexistent/module.wasm".to_string()),
        ("not-wasm", format!("file://{}", text_file.display())),
        ("wrong-digest", format!("{url}@sha256:{wrong}")),
        ("pinned", format!("{url}@sha256:{digest}")),
    ];
    for (name, image) in &pods {
        cluster
            .apply_stdin(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  restartPolicy: Never\n  containers:\n  - name: app\n    image: {image}\n"
            ))
            .await;
    }
    for (name, needle) in [
        ("missing", "nonexistent"),
        ("not-wasm", "not a wasm module"),
        ("wrong-digest", wrong.as_str()),
    ] {
        eventually(&format!("{name} to explain itself"), DEADLINE, async || {
            let pod = pod_json(&cluster, "default", name).await;
            let w = &container_status(&pod, "app")["state"]["waiting"];
            let reason = w["reason"].as_str().unwrap_or_default();
            let message = w["message"].as_str().unwrap_or_default();
            let ok = matches!(reason, "ErrImagePull" | "ImagePullBackOff");
            if ok && (message.contains(needle) || reason == "ImagePullBackOff") {
                Ok(())
            } else {
                Err(format!("waiting: {w}"))
            }
        })
        .await;
        let describe = cluster.kubectl_ok(&["describe", "pod", name]).await;
        assert!(
            describe.contains("Failed") && describe.contains(needle),
            "{name}: no Failed event naming {needle:?}:\n{describe}"
        );
    }
    wait_phase(&cluster, "default", "pinned", "Succeeded", DEADLINE).await;
    let _ = http.start_kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_env_and_log_streaming() {
    let cluster = Cluster::builder().up().start().await;
    up_node(&cluster).await;
    cluster.apply_stdin(&manifest("writer/pod.yaml")).await;
    cluster
        .apply_stdin(&manifest("config-reader/pod.yaml"))
        .await;
    wait_phase(&cluster, "default", "writer-reader", "Running", DEADLINE).await;

    // The reader sees the writer's lines through the shared emptyDir.
    eventually(
        "the reader to see the writer's lines",
        DEADLINE,
        async || {
            let logs = cluster
                .kubectl(&["logs", "writer-reader", "-c", "reader"])
                .await;
            if logs.stdout.contains("read: 2 ") {
                Ok(())
            } else {
                Err(format!("reader logs: {}{}", logs.stdout, logs.stderr))
            }
        },
    )
    .await;

    // kubectl logs -f streams lines as they are written.
    let mut follow =
        cluster.spawn_kubectl(&["logs", "-f", "writer-reader", "-c", "reader", "--tail=1"]);
    let first = follow
        .wait_for_line("a first line", |l| l.starts_with("read: "))
        .await;
    let n: u64 = first
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    follow
        .wait_for_line("a later line", |l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|m| m >= n + 2)
        })
        .await;
    drop(follow);
    let stamped = cluster
        .kubectl_ok(&[
            "logs",
            "writer-reader",
            "-c",
            "writer",
            "--timestamps",
            "--tail=2",
        ])
        .await;
    let lines: Vec<&str> = stamped.lines().collect();
    assert!(lines.len() <= 2, "{stamped}");
    assert!(stamped.starts_with("20"), "timestamps expected:\n{stamped}");
    // kubectl picks the first container itself and says so.
    let out = cluster
        .kubectl(&["logs", "writer-reader", "--tail=1"])
        .await;
    assert!(
        out.stderr.contains("Defaulted container \"writer\""),
        "{}",
        out.stderr
    );
    let err = cluster
        .kubectl_err(&["logs", "writer-reader", "-c", "nope"])
        .await;
    assert!(err.contains("nope"), "{err}");

    // config-reader: env from values, configMap/secret refs and fieldRefs; files from the
    // configMap and secret volumes.
    wait_phase(&cluster, "default", "config-reader", "Succeeded", DEADLINE).await;
    let logs = cluster.kubectl_ok(&["logs", "config-reader"]).await;
    for needle in [
        "PLAIN_VALUE=set in the manifest",
        "GREETING=hello from a configMap",
        "PASSWORD=s3cret-value",
        "POD_NAME=config-reader",
        "CFG_greeting=hello from a configMap",
        "s3cret-value",
        "\"replicas\": 3",
    ] {
        assert!(logs.contains(needle), "no {needle:?} in:\n{logs}");
    }
    assert!(
        !logs.contains("HOME="),
        "the host environment leaked:\n{logs}"
    );

    // A configMap change reaches the mounted file of a running pod.
    cluster
        .apply_stdin(&manifest("config-reader/watch-pod.yaml"))
        .await;
    let name = "config-watcher";
    wait_phase(&cluster, "default", name, "Running", DEADLINE).await;
    cluster
        .kubectl_ok(&[
            "patch",
            "configmap",
            "config-reader",
            "--type=merge",
            "-p",
            r#"{"data":{"greeting":"updated greeting"}}"#,
        ])
        .await;
    eventually(
        "the update to reach the mounted file",
        DEADLINE,
        async || {
            let logs = cluster.kubectl(&["logs", name]).await;
            if logs.stdout.contains("updated greeting") {
                Ok(())
            } else {
                Err(logs.stdout)
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_pull_from_an_oci_registry_by_tag_and_digest() {
    let registry = Registry::start().await;
    let reference = format!("{}/samples/hello:v1", registry.host);
    let pushed = push(&sample("hello"), &reference).await;
    let digest = pushed
        .rsplit_once('@')
        .map(|(_, d)| d.to_string())
        .expect("REF@DIGEST");
    assert!(digest.starts_with("sha256:"), "{pushed}");

    let cluster = Cluster::builder().up().start().await;
    up_node(&cluster).await;
    let by_digest = format!("{}/samples/hello@{digest}", registry.host);
    for (name, image) in [
        ("by-tag", reference.as_str()),
        ("by-digest", by_digest.as_str()),
    ] {
        cluster
            .apply_stdin(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  restartPolicy: Never\n  containers:\n  - name: app\n    image: {image}\n"
            ))
            .await;
    }
    for name in ["by-tag", "by-digest"] {
        let pod = wait_phase(&cluster, "default", name, "Succeeded", DEADLINE).await;
        let image_id = container_status(&pod, "app")["imageID"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            image_id.contains(&digest),
            "{name}: imageID {image_id} lacks {digest}"
        );
        let logs = cluster.kubectl_ok(&["logs", name]).await;
        assert!(logs.contains("hello from wasmkube"), "{logs}");
    }
    // A tag that does not exist is ErrImagePull naming it.
    cluster
        .apply_stdin(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: no-tag}}\nspec:\n  containers:\n  - name: app\n    image: {}/samples/hello:nope\n",
            registry.host
        ))
        .await;
    eventually("the missing tag to be reported", DEADLINE, async || {
        let pod = pod_json(&cluster, "default", "no-tag").await;
        let w = &container_status(&pod, "app")["state"]["waiting"];
        if matches!(
            w["reason"].as_str(),
            Some("ErrImagePull" | "ImagePullBackOff")
        ) {
            Ok(())
        } else {
            Err(format!("{w}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_run_pods_and_a_restarted_agent_runs_each_once() {
    let cluster = Cluster::start().await;
    let a = AgentProcess::start(&cluster, "edge-a").await;
    let mut b = AgentProcess::start(&cluster, "edge-b").await;
    for (name, node) in [("on-a", "edge-a"), ("on-b", "edge-b")] {
        cluster
            .apply_stdin(&format!(
                r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  containers:
  - name: writer
    image: {}
    env:
    - {{name: INTERVAL_MS, value: "200"}}
    - {{name: POD_NAME, value: {name}}}
    volumeMounts:
    - {{name: data, mountPath: /data}}
  volumes:
  - name: data
    emptyDir: {{}}
"#,
                sample_image("writer")
            ))
            .await;
    }
    for name in ["on-a", "on-b"] {
        wait_phase(&cluster, "default", name, "Running", DEADLINE).await;
    }
    // Logs come from each pod's own node.
    for name in ["on-a", "on-b"] {
        eventually(&format!("logs of {name}"), DEADLINE, async || {
            let logs = cluster.kubectl(&["logs", name]).await;
            if logs.success && !logs.stdout.is_empty() {
                Ok(())
            } else {
                Err(logs.stderr)
            }
        })
        .await;
    }

    // Each agent (its pods' watches, its Service proxy's, its status updates) talks to
    // the API server over a single multiplexed connection.
    let port = cluster
        .server_url()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .expect("a port in the server URL");
    for agent in [&a, &b] {
        let pid = agent.pid().expect("the agent runs");
        let conns = eventually("the agent's API connections", DEADLINE, async || {
            let out = cluster
                .run(
                    "ss",
                    &["-Htnp", "state", "established", &format!("dport = :{port}")],
                )
                .await;
            let mine = out
                .stdout
                .lines()
                .filter(|l| l.contains(&format!("pid={pid},")))
                .count();
            (mine > 0).then_some(mine).ok_or(out.to_string())
        })
        .await;
        assert_eq!(conns, 1, "agent pid {pid}");
    }

    // Kill agent b outright and start it again: the pod runs again, exactly once.
    let uid = pod_json(&cluster, "default", "on-b").await["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let before = container_status(&pod_json(&cluster, "default", "on-b").await, "writer")
        ["restartCount"]
        .as_i64()
        .unwrap_or(0);
    b.kill().await;
    b.restart(&cluster).await;
    eventually("on-b to run again", DEADLINE, async || {
        let pod = pod_json(&cluster, "default", "on-b").await;
        let st = container_status(&pod, "writer");
        if st["state"]["running"].is_object() && st["restartCount"].as_i64().unwrap_or(0) > before {
            Ok(())
        } else {
            Err(format!("{st}"))
        }
    })
    .await;
    let shared = b
        .data_dir
        .join("pods")
        .join(&uid)
        .join("volumes/data/shared.txt");
    // One writer only: the counters written after the restart rise by one each.
    eventually("a single writer after the restart", DEADLINE, async || {
        let text =
            std::fs::read_to_string(&shared).map_err(|e| format!("{}: {e}", shared.display()))?;
        let counters: Vec<u64> = text
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        let restart_at = counters
            .windows(2)
            .rposition(|w| w[1] <= w[0])
            .map(|i| i + 1);
        let Some(start) = restart_at else {
            return Err(format!("no restart seen in {counters:?}"));
        };
        let after = &counters[start..];
        if after.len() >= 10 && after.windows(2).all(|w| w[1] == w[0] + 1) {
            Ok(())
        } else {
            Err(format!("after the restart: {after:?}"))
        }
    })
    .await;

    // Deleting a pod stops its instance and removes its files on the node.
    let uid_a = pod_json(&cluster, "default", "on-a").await["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let pod_dir = a.data_dir.join("pods").join(&uid_a);
    assert!(pod_dir.is_dir(), "{} should exist", pod_dir.display());
    // Its token volume is memory-backed, as the kubelet's: on the agent's tmpfs
    // directory (DATA_DIR/memory leads there), never in the pod's directory on disk.
    let memory_dir = a.data_dir.join("memory");
    let tmpfs_dir = std::fs::read_link(&memory_dir)
        .unwrap_or_else(|e| panic!("{} should lead to /dev/shm: {e}", memory_dir.display()));
    assert!(tmpfs_dir.starts_with("/dev/shm"), "{}", tmpfs_dir.display());
    let pod_memory_dir = memory_dir.join("pods").join(&uid_a);
    let token_volumes = |dir: &std::path::Path| -> Vec<std::path::PathBuf> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("kube-api-access-")
            })
            .map(|e| e.path())
            .collect()
    };
    let in_memory = token_volumes(&pod_memory_dir);
    assert!(
        in_memory.len() == 1 && in_memory[0].join("token").is_file(),
        "the token volume in {}: {in_memory:?}",
        pod_memory_dir.display()
    );
    assert!(token_volumes(&pod_dir.join("volumes")).is_empty());
    cluster
        .kubectl_ok(&["delete", "pod", "on-a", "--wait=true"])
        .await;
    assert!(!pod_dir.exists(), "{} should be gone", pod_dir.display());
    assert!(
        !pod_memory_dir.exists(),
        "{} should be gone",
        pod_memory_dir.display()
    );
    let logs_dir = a.data_dir.join("logs");
    let left: Vec<String> = std::fs::read_dir(&logs_dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !left.iter().any(|n| n.contains(&uid_a)),
        "logs of the deleted pod remain: {left:?}"
    );
}
