//! Issue 4, ReplicaSet controller: pods follow `spec.replicas`, owned by the
//! ReplicaSet; a deleted pod is replaced; a matching orphan is adopted; scaling down
//! removes unscheduled pods first; status counts what exists.

use serde_json::Value;

use crate::harness::{eventually, Cluster, DEADLINE};

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
