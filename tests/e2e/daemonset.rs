//! Issue 4, DaemonSet controller: one pod per eligible node — nodes without the
//! selected label or with an untolerated taint get none, a node that joins gets one,
//! and `set image` rolls the pods over one node at a time until `rollout status`
//! returns; each template is a ControllerRevision that `rollout history` lists and
//! `rollout undo` returns to. Hollow nodes play the kubelets (Leases, pods reported Running and Ready,
//! graceful deletions finished).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::harness::{eventually, Cluster, DEADLINE};
use crate::hollow::HollowNode;

const DAEMONSET: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
  namespace: default
spec:
  selector:
    matchLabels:
      app: agent
  template:
    metadata:
      labels:
        app: agent
    spec:
      nodeSelector:
        edge: "true"
      containers:
      - name: agent
        image: registry.local/agent:v1
"#;

/// The DaemonSet's live (not terminating) pods: node → images, from the pods'
/// `spec.nodeName` once bound, else `"<unbound>"`.
async fn pods_by_node(cluster: &Cluster) -> BTreeMap<String, Vec<(String, bool)>> {
    let list = cluster.get_json(&["pods", "-l", "app=agent"]).await;
    let mut out: BTreeMap<String, Vec<(String, bool)>> = BTreeMap::new();
    for pod in list["items"].as_array().into_iter().flatten() {
        if !pod["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let node = pod["spec"]["nodeName"].as_str().unwrap_or("<unbound>");
        let image = pod["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let ready = pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        out.entry(node.to_string())
            .or_default()
            .push((image, ready));
    }
    out
}

/// Waits until exactly `nodes` each run one ready pod of `image`.
async fn wait_placed(cluster: &Cluster, nodes: &[&str], image: &str) {
    eventually(
        "daemon pods on exactly the eligible nodes",
        DEADLINE,
        async || {
            let placed = pods_by_node(cluster).await;
            let ok = placed.len() == nodes.len()
                && nodes.iter().all(|n| {
                    placed
                        .get(*n)
                        .is_some_and(|p| p.len() == 1 && p[0].0.ends_with(image) && p[0].1)
                });
            if ok {
                Ok(())
            } else {
                Err(format!("{placed:?}"))
            }
        },
    )
    .await;
}

/// The REVISION column of `kubectl rollout history ds/agent`.
async fn revision_numbers(cluster: &Cluster) -> Vec<String> {
    let history = cluster
        .kubectl_ok(&["rollout", "history", "ds/agent"])
        .await;
    history
        .lines()
        .skip_while(|l| !l.starts_with("REVISION"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn daemonset_runs_on_eligible_nodes_and_rolls() {
    let cluster = Cluster::start().await;
    let mut nodes = Vec::new();
    for name in ["ds-1", "ds-2", "ds-3"] {
        nodes.push(HollowNode::start(&cluster, name, "4", "8Gi").await);
    }
    // ds-1 is eligible; ds-2 has the label but a taint the daemon does not tolerate;
    // ds-3 lacks the label.
    cluster
        .kubectl_ok(&["label", "node", "ds-1", "ds-2", "edge=true"])
        .await;
    cluster
        .kubectl_ok(&["taint", "node", "ds-2", "dedicated=infra:NoSchedule"])
        .await;

    cluster.create_stdin(DAEMONSET).await;
    wait_placed(&cluster, &["ds-1"], "v1").await;
    let out = cluster
        .kubectl_ok(&["rollout", "status", "ds/agent", "--timeout=60s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let ds = cluster.get_json(&["ds", "agent"]).await;
    let status = &ds["status"];
    assert_eq!(status["desiredNumberScheduled"], 1, "{status}");
    assert_eq!(status["currentNumberScheduled"], 1, "{status}");
    assert_eq!(status["numberMisscheduled"], 0, "{status}");

    // The pod is owned, labelled with its template's hash, and pinned by node affinity.
    let pods = cluster.get_json(&["pods", "-l", "app=agent"]).await;
    let pod = &pods["items"][0];
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "DaemonSet");
    assert_eq!(pod["metadata"]["ownerReferences"][0]["controller"], true);
    assert!(
        pod["metadata"]["labels"]["controller-revision-hash"].is_string(),
        "{pod:#}"
    );
    assert_eq!(
        pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0]["matchFields"][0]["values"][0],
        "ds-1"
    );

    // A matching node joins: a pod appears there.
    nodes.push(HollowNode::start(&cluster, "ds-4", "4", "8Gi").await);
    cluster
        .kubectl_ok(&["label", "node", "ds-4", "edge=true"])
        .await;
    wait_placed(&cluster, &["ds-1", "ds-4"], "v1").await;

    // Roll to v2: with maxUnavailable 1, at least one of the two nodes always has a
    // ready pod.
    cluster
        .kubectl_ok(&["set", "image", "ds/agent", "agent=registry.local/agent:v2"])
        .await;
    eventually("the v2 rollout", DEADLINE, async || {
        let placed = pods_by_node(&cluster).await;
        let serving = ["ds-1", "ds-4"]
            .iter()
            .filter(|n| placed.get(**n).is_some_and(|p| p.iter().any(|(_, r)| *r)))
            .count();
        assert!(serving >= 1, "more than maxUnavailable down: {placed:?}");
        let done = placed.len() == 2
            && placed
                .values()
                .all(|p| p.len() == 1 && p[0].0.ends_with("v2") && p[0].1);
        if done {
            Ok(())
        } else {
            Err(format!("{placed:?}"))
        }
    })
    .await;
    let out = cluster
        .kubectl_ok(&["rollout", "status", "ds/agent", "--timeout=60s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let ds = cluster.get_json(&["ds", "agent"]).await;
    let status: &Value = &ds["status"];
    assert_eq!(status["updatedNumberScheduled"], 2, "{status}");
    assert_eq!(status["numberAvailable"], 2, "{status}");
    assert_eq!(status["observedGeneration"], ds["metadata"]["generation"]);

    // Each template is a ControllerRevision, which `rollout history` lists and `rollout
    // undo` goes back to: the v1 template returns as revision 3.
    assert_eq!(revision_numbers(&cluster).await, vec!["1", "2"]);
    let v1 = cluster
        .kubectl_ok(&["rollout", "history", "ds/agent", "--revision=1"])
        .await;
    assert!(v1.contains("registry.local/agent:v1"), "{v1}");
    let table = cluster.kubectl_ok(&["get", "controllerrevisions"]).await;
    assert!(
        table.starts_with("NAME") && table.contains("CONTROLLER") && table.contains("REVISION"),
        "{table}"
    );
    assert_eq!(table.matches("daemonset.apps/agent").count(), 2, "{table}");
    let out = cluster.kubectl_ok(&["rollout", "undo", "ds/agent"]).await;
    assert!(out.contains("rolled back"), "{out}");
    wait_placed(&cluster, &["ds-1", "ds-4"], "v1").await;
    assert_eq!(revision_numbers(&cluster).await, vec!["2", "3"]);
    let pods = cluster.get_json(&["pods", "-l", "app=agent"]).await;
    let revisions = cluster.get_json(&["controllerrevisions"]).await;
    let newest = revisions["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["revision"] == 3)
        .expect("revision 3");
    for pod in pods["items"].as_array().into_iter().flatten() {
        if pod["metadata"]["deletionTimestamp"].is_null() {
            assert_eq!(
                pod["metadata"]["labels"]["controller-revision-hash"],
                newest["metadata"]["labels"]["controller-revision-hash"],
                "{pod:#}"
            );
        }
    }

    // The node loses its label: its pod goes.
    cluster
        .kubectl_ok(&["label", "node", "ds-4", "edge-"])
        .await;
    wait_placed(&cluster, &["ds-1"], "v1").await;

    let events = cluster
        .kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=agent",
        ])
        .await;
    assert!(events.contains("SuccessfulCreate"), "{events}");
    assert!(events.contains("SuccessfulDelete"), "{events}");

    // The revisions are the DaemonSet's: they go with it.
    cluster.kubectl_ok(&["delete", "ds", "agent"]).await;
    eventually("the revisions collected", DEADLINE, async || {
        let left = cluster.get_json(&["controllerrevisions"]).await;
        match left["items"].as_array().map(Vec::len) {
            Some(0) => Ok(()),
            _ => Err(left.to_string()),
        }
    })
    .await;
    for node in nodes {
        node.shutdown().await;
    }
}
