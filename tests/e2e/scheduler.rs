//! Issue 4, the scheduler: pods spread over nodes, nodeSelector and taints are
//! respected, and a pod too big for every node stays Pending with kube-scheduler's
//! explanation until a big enough node arrives.
//!
//! Until `wasmkube server` runs the scheduler itself, the test runs it in-process as an
//! API client of the cluster (which is all it ever is).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::harness::{eventually, Cluster, DEADLINE};

/// Registers a Ready node with `cpu`/`memory` allocatable and `labels`.
async fn add_node(cluster: &Cluster, name: &str, cpu: &str, memory: &str, labels: Value) {
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
    });
    cluster.create_stdin(&node.to_string()).await;
    let resources = json!({"cpu": cpu, "memory": memory, "pods": "110"});
    let status = json!({"status": {
        "capacity": resources,
        "allocatable": resources,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
    }});
    cluster
        .kubectl_ok(&[
            "patch",
            "node",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ])
        .await;
}

/// Creates a pod with one container requesting `cpu`/`memory`, plus `extra` spec fields.
async fn add_pod(cluster: &Cluster, name: &str, cpu: &str, memory: &str, extra: Value) {
    let mut spec = json!({
        "containers": [{
            "name": "app",
            "image": "example.com/app:1",
            "resources": {"requests": {"cpu": cpu, "memory": memory}},
        }],
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    });
    cluster.create_stdin(&pod.to_string()).await;
}

/// Waits until every named pod is bound; returns pod → node.
async fn wait_bound(cluster: &Cluster, names: &[&str]) -> BTreeMap<String, String> {
    eventually("pods to be bound", DEADLINE, async || {
        let pods = cluster.get_json(&["pods", "-n", "default"]).await;
        let placed: BTreeMap<String, String> = pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p["metadata"]["name"].as_str()?.to_string(),
                    p["spec"]["nodeName"].as_str()?.to_string(),
                ))
            })
            .filter(|(name, _)| names.contains(&name.as_str()))
            .collect();
        if placed.len() == names.len() {
            Ok(placed)
        } else {
            Err(format!("bound so far: {placed:?}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_places_pods_and_explains_unschedulable_ones() {
    // `wasmkube server` runs the scheduler.
    let cluster = Cluster::start().await;

    for (name, labels) in [
        ("node-1", json!({"disk": "ssd"})),
        ("node-2", json!({"disk": "hdd"})),
        ("node-3", json!({"disk": "hdd"})),
    ] {
        add_node(&cluster, name, "4", "4Gi", labels).await;
    }

    // Equal nodes, equal pods: least-requested scoring spreads them two per node.
    let spread: Vec<String> = (1..=6).map(|i| format!("spread-{i}")).collect();
    for name in &spread {
        add_pod(&cluster, name, "500m", "256Mi", json!({})).await;
    }
    let names: Vec<&str> = spread.iter().map(String::as_str).collect();
    let placed = wait_bound(&cluster, &names).await;
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for node in placed.values() {
        *per_node.entry(node.as_str()).or_default() += 1;
    }
    assert_eq!(
        per_node,
        BTreeMap::from([("node-1", 2), ("node-2", 2), ("node-3", 2)]),
        "{placed:?}"
    );
    // The binding set PodScheduled=True, and the scheduler said so in an Event.
    let pod = cluster.get_json(&["pod", "spread-1"]).await;
    let scheduled = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "PodScheduled");
    assert_eq!(
        scheduled.map(|c| c["status"].clone()),
        Some(json!("True")),
        "{pod}"
    );
    let node = &placed["spread-1"];
    let expected = format!("Successfully assigned default/spread-1 to {node}");
    eventually("the Scheduled event", DEADLINE, async || {
        let events = cluster.get_json(&["events", "-n", "default"]).await;
        let found = events["items"].as_array().into_iter().flatten().any(|e| {
            e["reason"] == "Scheduled"
                && e["involvedObject"]["name"] == "spread-1"
                && e["message"] == expected.as_str()
        });
        if found {
            Ok(())
        } else {
            Err(format!("no Scheduled event for spread-1 in {events}"))
        }
    })
    .await;

    // nodeSelector: only node-1 has an SSD.
    add_pod(
        &cluster,
        "wants-ssd",
        "100m",
        "64Mi",
        json!({"nodeSelector": {"disk": "ssd"}}),
    )
    .await;
    assert_eq!(
        wait_bound(&cluster, &["wants-ssd"]).await["wants-ssd"],
        "node-1"
    );

    // Taints: node-2 and node-3 are dedicated; a pod without the toleration avoids them,
    // one with it may use them.
    for node in ["node-2", "node-3"] {
        let taint = json!({"spec": {"taints": [
            {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
        ]}});
        cluster
            .kubectl_ok(&[
                "patch",
                "node",
                node,
                "--type=merge",
                "-p",
                &taint.to_string(),
            ])
            .await;
    }
    for i in 1..=3 {
        add_pod(&cluster, &format!("plain-{i}"), "100m", "64Mi", json!({})).await;
    }
    let plain = wait_bound(&cluster, &["plain-1", "plain-2", "plain-3"]).await;
    assert!(plain.values().all(|n| n == "node-1"), "{plain:?}");
    add_pod(
        &cluster,
        "tolerant",
        "100m",
        "64Mi",
        json!({
            "nodeSelector": {"kubernetes.io/hostname-alias": "gpu"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
        }),
    )
    .await;
    cluster
        .kubectl_ok(&[
            "label",
            "node",
            "node-3",
            "kubernetes.io/hostname-alias=gpu",
        ])
        .await;
    assert_eq!(
        wait_bound(&cluster, &["tolerant"]).await["tolerant"],
        "node-3"
    );

    // RuntimeClass: its nodeSelector and tolerations apply as if the pod had them (the
    // hdd nodes are the tainted ones); a missing RuntimeClass is explained.
    let class = json!({
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {"name": "gpu-wasm"},
        "handler": "wasmtime",
        "scheduling": {
            "nodeSelector": {"disk": "hdd"},
            "tolerations": [{"key": "dedicated", "operator": "Exists"}],
        },
    });
    cluster.create_stdin(&class.to_string()).await;
    add_pod(
        &cluster,
        "runs-wasm",
        "100m",
        "64Mi",
        json!({"runtimeClassName": "gpu-wasm"}),
    )
    .await;
    let node = wait_bound(&cluster, &["runs-wasm"]).await["runs-wasm"].clone();
    assert!(node == "node-2" || node == "node-3", "runs-wasm on {node}");
    add_pod(
        &cluster,
        "no-class",
        "100m",
        "64Mi",
        json!({"runtimeClassName": "nope"}),
    )
    .await;
    eventually("the missing RuntimeClass explained", DEADLINE, async || {
        let pod = cluster.get_json(&["pod", "no-class"]).await;
        let said = pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| {
                c["reason"] == "Unschedulable"
                    && c["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("RuntimeClass \"nope\" not found"))
            });
        if said {
            Ok(())
        } else {
            Err(format!("{pod}"))
        }
    })
    .await;
    cluster.kubectl_ok(&["delete", "pod", "no-class"]).await;

    // Too big for every node: Pending, with kube-scheduler's explanation on the pod and
    // in an Event.
    add_pod(&cluster, "big", "100m", "8Gi", json!({})).await;
    let expected = "0/3 nodes are available: 1 Insufficient memory, 2 node(s) had untolerated \
                    taint {dedicated: gpu}. preemption: 0/3 nodes are available: 1 No \
                    preemption victims found for incoming pod, 2 Preemption is not helpful for \
                    scheduling.";
    eventually("the FailedScheduling event", DEADLINE, async || {
        let events = cluster.get_json(&["events", "-n", "default"]).await;
        let messages: Vec<&str> = events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["reason"] == "FailedScheduling" && e["involvedObject"]["name"] == "big")
            .filter_map(|e| e["message"].as_str())
            .collect();
        if messages.contains(&expected) {
            Ok(())
        } else {
            Err(format!("FailedScheduling messages for big: {messages:?}"))
        }
    })
    .await;
    let pod = eventually("PodScheduled=False on big", DEADLINE, async || {
        let pod = cluster.get_json(&["pod", "big"]).await;
        let unschedulable = pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| {
                c["type"] == "PodScheduled"
                    && c["status"] == "False"
                    && c["reason"] == "Unschedulable"
                    && c["message"] == expected
            });
        if unschedulable {
            Ok(pod)
        } else {
            Err(format!("{pod}"))
        }
    })
    .await;
    assert!(pod["spec"]["nodeName"].is_null(), "{pod}");
    let table = cluster.get_table(&["pod", "big"]).await;
    assert_eq!(table.row("big").get("STATUS"), "Pending", "{table}");

    // A big enough node arrives: the pod is scheduled there.
    add_node(&cluster, "node-big", "8", "16Gi", json!({})).await;
    assert_eq!(wait_bound(&cluster, &["big"]).await["big"], "node-big");
}
