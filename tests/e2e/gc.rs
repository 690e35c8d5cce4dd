//! Issue 4, garbage collector: ownerReferences cascade. Deleting a Deployment removes
//! its ReplicaSets and pods (background); `--cascade=orphan` keeps the pods without
//! their owner reference; `--cascade=foreground` keeps the owner, with the
//! `foregroundDeletion` finalizer, until its blocking dependents are gone; an object
//! whose owner never existed is collected, one with another live owner only loses the
//! dangling reference.

use serde_json::{json, Value};

use crate::harness::{eventually, Cluster, DEADLINE};

fn deployment(name: &str) -> String {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "registry.local/web:v1"}]},
            },
        },
    })
    .to_string()
}

/// The items of `kubectl get <kind> -l app=<app>`.
async fn items(cluster: &Cluster, kind: &str, app: &str) -> Vec<Value> {
    let list = cluster.get_json(&[kind, "-l", &format!("app={app}")]).await;
    list["items"].as_array().cloned().unwrap_or_default()
}

async fn wait_for_count(cluster: &Cluster, kind: &str, app: &str, n: usize) -> Vec<Value> {
    eventually(&format!("{n} {kind} of app={app}"), DEADLINE, async || {
        let found = items(cluster, kind, app).await;
        if found.len() == n {
            Ok(found)
        } else {
            Err(format!("{} {kind}", found.len()))
        }
    })
    .await
}

async fn exists(cluster: &Cluster, kind: &str, name: &str) -> bool {
    let out = cluster.kubectl(&["get", kind, name, "-o", "name"]).await;
    if out.success {
        return true;
    }
    assert!(out.stderr.contains("NotFound"), "get {kind} {name}: {out}");
    false
}

#[tokio::test]
async fn background_cascade_and_dangling_owners() {
    let cluster = Cluster::start().await;
    cluster.create_stdin(&deployment("web")).await;
    wait_for_count(&cluster, "rs", "web", 1).await;
    wait_for_count(&cluster, "pods", "web", 2).await;

    // A ConfigMap owned by a Deployment uid that never existed, and one that also has a
    // live owner.
    let live = cluster.get_json(&["deployment", "web"]).await;
    let live_uid = live["metadata"]["uid"].as_str().unwrap().to_string();
    let ghost = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "ghost",
        "uid": "00000000-0000-0000-0000-00000000dead",
    });
    for (name, owners) in [
        ("orphaned", json!([ghost])),
        (
            "shared",
            json!([ghost, {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": live_uid}]),
        ),
    ] {
        let cm = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "default", "ownerReferences": owners},
        });
        cluster.create_stdin(&cm.to_string()).await;
    }
    eventually(
        "the ConfigMap with a missing owner is collected",
        DEADLINE,
        async || {
            if exists(&cluster, "configmap", "orphaned").await {
                Err("still there".into())
            } else {
                Ok(())
            }
        },
    )
    .await;
    eventually(
        "the shared ConfigMap loses its dangling reference",
        DEADLINE,
        async || {
            let cm = cluster.get_json(&["configmap", "shared"]).await;
            let refs = cm["metadata"]["ownerReferences"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if refs.len() == 1 && refs[0]["uid"] == live_uid.as_str() {
                Ok(())
            } else {
                Err(format!("ownerReferences {refs:?}"))
            }
        },
    )
    .await;

    // Background (kubectl's default): the Deployment goes at once, the rest after it.
    cluster.kubectl_ok(&["delete", "deployment", "web"]).await;
    wait_for_count(&cluster, "rs", "web", 0).await;
    wait_for_count(&cluster, "pods", "web", 0).await;
    eventually(
        "the ConfigMap it shared is collected",
        DEADLINE,
        async || {
            if exists(&cluster, "configmap", "shared").await {
                Err("still there".into())
            } else {
                Ok(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn orphan_and_foreground_cascades() {
    let cluster = Cluster::start().await;

    // Orphan: a standalone ReplicaSet (no Deployment would recreate and re-adopt).
    let rs = json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": "keep", "namespace": "default"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "keep"}},
            "template": {
                "metadata": {"labels": {"app": "keep"}},
                "spec": {"containers": [{"name": "c", "image": "registry.local/web:v1"}]},
            },
        },
    });
    cluster.create_stdin(&rs.to_string()).await;
    wait_for_count(&cluster, "pods", "keep", 2).await;
    // kubectl waits until the ReplicaSet is gone: the collector removed the finalizer.
    cluster
        .kubectl_ok(&["delete", "rs", "keep", "--cascade=orphan"])
        .await;
    assert!(!exists(&cluster, "rs", "keep").await);
    let pods = wait_for_count(&cluster, "pods", "keep", 2).await;
    for pod in &pods {
        assert!(
            pod["metadata"]["ownerReferences"].is_null(),
            "orphaned pod still owned: {pod}"
        );
        assert!(pod["metadata"]["deletionTimestamp"].is_null(), "{pod}");
    }

    // Foreground: a dependent holding a finalizer keeps the Deployment visible.
    cluster.create_stdin(&deployment("fg")).await;
    wait_for_count(&cluster, "pods", "fg", 2).await;
    let d = cluster.get_json(&["deployment", "fg"]).await;
    let uid = d["metadata"]["uid"].as_str().unwrap().to_string();
    let held = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "held",
            "namespace": "default",
            "finalizers": ["example.com/hold"],
            "ownerReferences": [{
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": "fg",
                "uid": uid,
                "blockOwnerDeletion": true,
            }],
        },
    });
    cluster.create_stdin(&held.to_string()).await;
    cluster
        .kubectl_ok(&[
            "delete",
            "deployment",
            "fg",
            "--cascade=foreground",
            "--wait=false",
        ])
        .await;
    let d = cluster.get_json(&["deployment", "fg"]).await;
    assert!(!d["metadata"]["deletionTimestamp"].is_null(), "{d}");
    assert!(
        d["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "foregroundDeletion")),
        "{d}"
    );
    // Its ReplicaSet and pods go, the held ConfigMap is marked, the Deployment stays.
    wait_for_count(&cluster, "pods", "fg", 0).await;
    wait_for_count(&cluster, "rs", "fg", 0).await;
    eventually(
        "the held ConfigMap is being deleted",
        DEADLINE,
        async || {
            let cm = cluster.get_json(&["configmap", "held"]).await;
            if cm["metadata"]["deletionTimestamp"].is_null() {
                Err("not deleting".into())
            } else {
                Ok(())
            }
        },
    )
    .await;
    assert!(exists(&cluster, "deployment", "fg").await);
    cluster
        .kubectl_ok(&[
            "patch",
            "configmap",
            "held",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
        ])
        .await;
    eventually("the Deployment is deleted last", DEADLINE, async || {
        if exists(&cluster, "deployment", "fg").await {
            Err("still there".into())
        } else {
            Ok(())
        }
    })
    .await;
    // The orphans were never touched.
    wait_for_count(&cluster, "pods", "keep", 2).await;
}
