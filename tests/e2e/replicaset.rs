//! Issue 4, ReplicaSet controller: pods follow `spec.replicas`, owned by the
//! ReplicaSet; a deleted pod is replaced; a matching orphan is adopted; scaling down
//! removes unscheduled pods first; status counts what exists. A burst of 1,000 replicas
//! over three hollow nodes converges (all Running and Ready), and scaling to zero
//! removes them all.

use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::Value;

use crate::harness::{eventually, Cluster, DEADLINE};
use crate::hollow::HollowNode;

const RS: &str = r#"
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: web
  namespace: default
spec:
  replicas: 3
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
        image: registry.local/web:v1
"#;

/// The pods of `app=web` that the ReplicaSet controls and that are not being deleted.
async fn owned_pods(cluster: &Cluster, uid: &str) -> Vec<Value> {
    let list = cluster.get_json(&["pods", "-l", "app=web"]).await;
    list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| {
            p["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["uid"] == uid && r["controller"] == true)
        })
        .collect()
}

async fn wait_for_count(cluster: &Cluster, uid: &str, n: usize) -> Vec<Value> {
    eventually(&format!("{n} owned pods"), DEADLINE, async || {
        let pods = owned_pods(cluster, uid).await;
        if pods.len() == n {
            Ok(pods)
        } else {
            Err(format!("{} owned pods", pods.len()))
        }
    })
    .await
}

#[tokio::test]
async fn replicaset_keeps_its_pods() {
    let cluster = Cluster::start().await;
    // An orphan that matches the selector, created first: it is adopted, not doubled.
    cluster
        .kubectl_ok(&[
            "run",
            "stray",
            "--image=registry.local/web:v1",
            "-l",
            "app=web",
        ])
        .await;
    cluster.create_stdin(RS).await;
    let rs = cluster.get_json(&["rs", "web"]).await;
    let uid = rs["metadata"]["uid"].as_str().unwrap().to_string();

    let pods = wait_for_count(&cluster, &uid, 3).await;
    assert!(
        pods.iter().any(|p| p["metadata"]["name"] == "stray"),
        "the orphan is adopted"
    );

    // Status follows.
    eventually("status.replicas = 3", DEADLINE, async || {
        let rs = cluster.get_json(&["rs", "web"]).await;
        if rs["status"]["replicas"] == 3 && rs["status"]["observedGeneration"] == 1 {
            Ok(())
        } else {
            Err(format!("status {}", rs["status"]))
        }
    })
    .await;

    // A deleted pod is replaced.
    let victim = pods[0]["metadata"]["name"].as_str().unwrap().to_string();
    cluster.kubectl_ok(&["delete", "pod", &victim]).await;
    let pods = wait_for_count(&cluster, &uid, 3).await;
    assert!(pods
        .iter()
        .all(|p| p["metadata"]["name"] != victim.as_str()));

    // Scale up and down through the scale subresource.
    cluster
        .kubectl_ok(&["scale", "rs", "web", "--replicas=5"])
        .await;
    wait_for_count(&cluster, &uid, 5).await;
    cluster
        .kubectl_ok(&["scale", "rs", "web", "--replicas=1"])
        .await;
    wait_for_count(&cluster, &uid, 1).await;

    // Events tell what the controller did.
    let events = cluster
        .kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=web",
        ])
        .await;
    assert!(events.contains("SuccessfulCreate"), "{events}");
    assert!(events.contains("SuccessfulDelete"), "{events}");

    // A relabelled pod leaves the set and is replaced.
    let pods = owned_pods(&cluster, &uid).await;
    let leaver = pods[0]["metadata"]["name"].as_str().unwrap().to_string();
    cluster
        .kubectl_ok(&["label", "pod", &leaver, "app=elsewhere", "--overwrite"])
        .await;
    let pods = wait_for_count(&cluster, &uid, 1).await;
    assert_ne!(pods[0]["metadata"]["name"], leaver.as_str());
    let released = cluster.get_json(&["pod", &leaver]).await;
    assert!(
        released["metadata"]["ownerReferences"]
            .as_array()
            .is_none_or(|r| r.is_empty()),
        "{released:#}"
    );
}

/// Replicas of the burst scenario.
const BURST: usize = 1_000;
/// Patience for the burst: a debug build on a small machine shared with other tests
/// writes a few thousand objects (pods, bindings, statuses, deletions) here.
const BURST_DEADLINE: Duration = Duration::from_secs(600);

const BURST_RS: &str = r#"
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: burst
  namespace: default
spec:
  replicas: 1000
  selector:
    matchLabels:
      app: burst
  template:
    metadata:
      labels:
        app: burst
    spec:
      containers:
      - name: app
        image: registry.local/burst:v1
"#;

/// (status.replicas, readyReplicas, availableReplicas) of a ReplicaSet.
async fn replica_counts(sets: &Api<ReplicaSet>, name: &str) -> Result<(i32, i32, i32), String> {
    let rs = sets
        .get(name)
        .await
        .map_err(|e| format!("get rs {name}: {e}"))?;
    let status = rs.status.unwrap_or_default();
    Ok((
        status.replicas,
        status.ready_replicas.unwrap_or(0),
        status.available_replicas.unwrap_or(0),
    ))
}

#[tokio::test]
async fn a_thousand_replicas_converge_and_scale_to_zero() {
    // /22 pod CIDRs: a node's ~330 pods need more addresses than a /24 has.
    let cluster = Cluster::builder()
        .args(&["--node-cidr-mask-size", "22"])
        .start()
        .await;
    let mut nodes = Vec::new();
    for name in ["burst-1", "burst-2", "burst-3"] {
        nodes.push(HollowNode::start_with_pods(&cluster, name, "8", "32Gi", 500).await);
    }
    let client = wasmkube_control::controllers::client_from_kubeconfig(&cluster.kubeconfig)
        .await
        .expect("a client");
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let selected = ListParams::default().labels("app=burst");

    cluster.create_stdin(BURST_RS).await;
    let n = BURST as i32;
    eventually(
        "1,000 replicas ready and available",
        BURST_DEADLINE,
        async || match replica_counts(&sets, "burst").await? {
            (r, ready, available) if r == n && ready == n && available == n => Ok(()),
            counts => Err(format!("(replicas, ready, available) = {counts:?}")),
        },
    )
    .await;
    let list = pods.list(&selected).await.expect("list the burst pods");
    let running = list
        .items
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .count();
    assert_eq!(
        (list.items.len(), running),
        (BURST, BURST),
        "(pods, Running pods)"
    );
    let mut per_node = std::collections::BTreeMap::<String, usize>::new();
    for pod in &list.items {
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        *per_node.entry(node.unwrap_or_default()).or_default() += 1;
    }
    assert_eq!(
        per_node.len(),
        3,
        "spread over the three nodes: {per_node:?}"
    );

    cluster
        .kubectl_ok(&["scale", "rs", "burst", "--replicas=0"])
        .await;
    eventually("every burst pod gone", BURST_DEADLINE, async || {
        let left = pods
            .list_metadata(&selected)
            .await
            .map_err(|e| format!("list: {e}"))?
            .items
            .len();
        let counts = replica_counts(&sets, "burst").await?;
        if left == 0 && counts == (0, 0, 0) {
            Ok(())
        } else {
            Err(format!(
                "{left} pods left; (replicas, ready, available) = {counts:?}"
            ))
        }
    })
    .await;
    drop(nodes);
}
