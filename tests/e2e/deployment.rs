//! Issue 4, Deployment controller: a Deployment's pods come through a ReplicaSet per
//! template; `set image` rolls out within maxSurge/maxUnavailable, `rollout status`
//! returns when done, `rollout undo` goes back, scaling follows.
//!
//! No kubelet runs yet, so the test plays one: a background task marks every pod
//! Running and Ready, as a node agent would report it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{eventually, Cluster, DEADLINE};

const DEPLOY: &str = r#"
apiVersion: apps/v1
kind: Deployment
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

/// Marks pods Running and Ready until `stop` is set.
fn spawn_fake_kubelet(cluster: Arc<Cluster>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let list = cluster.get_json(&["pods", "-l", "app=web"]).await;
            for pod in list["items"].as_array().into_iter().flatten() {
                let ready = pod["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                if ready || !pod["metadata"]["deletionTimestamp"].is_null() {
                    continue;
                }
                let name = pod["metadata"]["name"].as_str().unwrap_or_default();
                let patch = r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}]}}"#;
                let _ = cluster
                    .kubectl(&[
                        "patch",
                        "pod",
                        name,
                        "--subresource=status",
                        "--type=merge",
                        "-p",
                        patch,
                    ])
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

fn replica_sets(list: &Value) -> Vec<(String, i64, String)> {
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|rs| {
            (
                rs["spec"]["template"]["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                rs["spec"]["replicas"].as_i64().unwrap_or(0),
                rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn deployment_rolls_out_and_back() {
    let cluster = Arc::new(Cluster::start().await);
    let stop = Arc::new(AtomicBool::new(false));
    let kubelet = spawn_fake_kubelet(cluster.clone(), stop.clone());

    cluster.create_stdin(DEPLOY).await;
    let out = cluster
        .kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let d = cluster.get_json(&["deploy", "web"]).await;
    assert_eq!(d["status"]["availableReplicas"], 3, "{d:#}");

    // Roll out v2, watching the ReplicaSets: never more than replicas + maxSurge (3 + 1).
    cluster
        .kubectl_ok(&[
            "set",
            "image",
            "deployment/web",
            "web=registry.local/web:v2",
        ])
        .await;
    let done = eventually("the v2 rollout", DEADLINE, async || {
        let rs = replica_sets(&cluster.get_json(&["rs", "-l", "app=web"]).await);
        let total: i64 = rs.iter().map(|(_, n, _)| n).sum();
        assert!(total <= 4, "more than replicas + maxSurge: {rs:?}");
        let v2 = rs.iter().find(|(image, _, _)| image.ends_with("v2"));
        let v1 = rs.iter().find(|(image, _, _)| image.ends_with("v1"));
        match (v1, v2) {
            (Some((_, 0, _)), Some((_, 3, rev))) => Ok(rev.clone()),
            _ => Err(format!("{rs:?}")),
        }
    })
    .await;
    assert_eq!(done, "2");
    let out = cluster
        .kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");

    // Undo goes back to v1, which becomes revision 3.
    cluster
        .kubectl_ok(&["rollout", "undo", "deployment/web"])
        .await;
    eventually("the undo", DEADLINE, async || {
        let rs = replica_sets(&cluster.get_json(&["rs", "-l", "app=web"]).await);
        match rs.iter().find(|(image, _, _)| image.ends_with("v1")) {
            Some((_, 3, rev)) if rev == "3" => Ok(()),
            _ => Err(format!("{rs:?}")),
        }
    })
    .await;
    let d = cluster.get_json(&["deploy", "web"]).await;
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.local/web:v1"
    );

    // Scaling follows.
    cluster
        .kubectl_ok(&["scale", "deployment/web", "--replicas=5"])
        .await;
    eventually("5 available", DEADLINE, async || {
        let d = cluster.get_json(&["deploy", "web"]).await;
        if d["status"]["availableReplicas"] == 5 && d["status"]["updatedReplicas"] == 5 {
            Ok(())
        } else {
            Err(format!("{}", d["status"]))
        }
    })
    .await;
    let events = cluster
        .kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=web",
        ])
        .await;
    assert!(events.contains("ScalingReplicaSet"), "{events}");

    stop.store(true, Ordering::Relaxed);
    let _ = kubelet.await;
}
