//! Scenario 3: `kubectl get pods -w` prints rows as another kubectl creates, labels and
//! deletes a pod.

use crate::harness::Cluster;

fn pod_yaml(name: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"default","labels":{{"app":"watched"}}}},
            "spec":{{"containers":[{{"name":"c","image":"ghcr.io/wasmkube/hello:v1"}}]}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_prints_added_modified_deleted() {
    let cluster = Cluster::start().await;
    cluster.create_stdin(&pod_yaml("before")).await;

    let mut events = cluster.spawn_kubectl(&[
        "get",
        "pods",
        "-n",
        "default",
        "-w",
        "--output-watch-events",
    ]);
    let mut plain = cluster.spawn_kubectl(&["get", "pods", "-n", "default", "-w"]);
    let mut all = cluster.spawn_kubectl(&["get", "pods", "-A", "-w", "-l", "app=watched"]);

    // The initial list comes first: once it is printed, the watch continues from the
    // list's resourceVersion, so nothing after this point can be missed.
    let header = events
        .wait_for_line("the header", |l| l.starts_with("EVENT"))
        .await;
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        columns,
        ["EVENT", "NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "{header}"
    );
    events.wait_for_row(&["ADDED", "before"]).await;
    let plain_header = plain
        .wait_for_line("the header", |l| l.starts_with("NAME"))
        .await;
    let columns: Vec<&str> = plain_header.split_whitespace().collect();
    assert_eq!(
        columns,
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "{plain_header}"
    );
    plain.wait_for_row(&["before", "0/1", "Pending", "0"]).await;
    all.wait_for_row(&["default", "before"]).await;

    cluster.create_stdin(&pod_yaml("w1")).await;
    let added = events.wait_for_row(&["ADDED", "w1"]).await;
    let cells: Vec<&str> = added.split_whitespace().collect();
    assert_eq!(&cells[2..5], ["0/1", "Pending", "0"], "{added}");
    plain.wait_for_row(&["w1", "0/1", "Pending", "0"]).await;
    all.wait_for_row(&["default", "w1"]).await;

    let labeled = cluster
        .kubectl_ok(&["label", "pod", "w1", "-n", "default", "color=red"])
        .await;
    assert_eq!(labeled.trim(), "pod/w1 labeled");
    events.wait_for_row(&["MODIFIED", "w1"]).await;

    let deleted = cluster
        .kubectl_ok(&["delete", "pod", "w1", "-n", "default"])
        .await;
    assert_eq!(deleted.trim(), "pod \"w1\" deleted");
    events.wait_for_row(&["DELETED", "w1"]).await;

    // A pod in another namespace shows only in the -A watch.
    cluster.create_namespace("elsewhere").await;
    cluster
        .create_stdin(
            &pod_yaml("w2").replace("\"namespace\":\"default\"", "\"namespace\":\"elsewhere\""),
        )
        .await;
    all.wait_for_row(&["elsewhere", "w2"]).await;

    // A final pod in default proves the first watch is still alive and never saw w2.
    cluster.create_stdin(&pod_yaml("w3")).await;
    events.wait_for_row(&["ADDED", "w3"]).await;
    assert!(
        !events
            .seen
            .iter()
            .any(|l| l.split_whitespace().nth(1) == Some("w2")),
        "a watch on namespace default saw a pod of another namespace:\n{}",
        events.seen.join("\n")
    );
    // Watches stay open (kubectl exits when the server closes the stream).
    assert!(events.is_running() && plain.is_running() && all.is_running());

    // A raw watch from a list's resourceVersion misses nothing written after the list.
    // (`kubectl get -o json` prints a client-side List without the server's
    // resourceVersion, hence --raw.)
    let raw_list = cluster.raw("/api/v1/namespaces/default/pods").await;
    assert!(raw_list.success, "{raw_list}");
    let raw_list: serde_json::Value = serde_json::from_str(&raw_list.stdout).expect("list JSON");
    let rv = raw_list["metadata"]["resourceVersion"]
        .as_str()
        .expect("a list carries metadata.resourceVersion")
        .to_string();
    for name in ["r1", "r2", "r3"] {
        cluster.create_stdin(&pod_yaml(name)).await;
    }
    let path =
        format!("/api/v1/namespaces/default/pods?watch=true&resourceVersion={rv}&timeoutSeconds=3");
    let watched = cluster.raw(&path).await;
    assert!(watched.success, "{watched}");
    let names: Vec<(String, String)> = watched
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let ev: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("watch line {l:?} is not JSON: {e}"));
            (
                ev["type"].as_str().unwrap_or_default().to_string(),
                ev["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    let added: Vec<&str> = names
        .iter()
        .filter(|(t, _)| t == "ADDED")
        .map(|(_, n)| n.as_str())
        .collect();
    assert_eq!(
        added,
        ["r1", "r2", "r3"],
        "a watch from the list's resourceVersion {rv} must see exactly the later creates, in order:\n{}",
        watched.stdout
    );
}

/// What the garbage collector relies on: a metadata-only list and watch (`Accept:
/// …;as=PartialObjectMetadata`, kube-rs' `Api<PartialObjectMeta<K>>`) carry every
/// event, each with the object's metadata alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_only_watch_sees_every_event() {
    use futures::{StreamExt, TryStreamExt};
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, ListParams, WatchEvent, WatchParams};
    use kube::core::PartialObjectMeta;

    let cluster = Cluster::start().await;
    let client = cluster.node_client("metadata-watcher").await;
    let api: Api<PartialObjectMeta<Pod>> = Api::namespaced(client, "default");
    cluster.create_stdin(&pod_yaml("m0")).await;
    let list = api
        .list(&ListParams::default())
        .await
        .expect("metadata list");
    assert_eq!(list.types.kind, "PartialObjectMetadataList");
    let listed: Vec<_> = list.items.iter().map(|p| p.metadata.name.clone()).collect();
    assert_eq!(listed, [Some("m0".to_string())]);
    let rv = list
        .metadata
        .resource_version
        .expect("a list resourceVersion");
    let mut events = api
        .watch(&WatchParams::default().timeout(30), &rv)
        .await
        .expect("metadata watch")
        .boxed();

    cluster.create_stdin(&pod_yaml("m1")).await;
    cluster
        .kubectl_ok(&["label", "pod", "m1", "-n", "default", "color=red"])
        .await;
    cluster
        .kubectl_ok(&["delete", "pod", "m1", "-n", "default", "--wait=false"])
        .await;
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + crate::harness::DEADLINE;
    while !seen.iter().any(|s: &String| s.starts_with("DELETED m1")) {
        let next = tokio::time::timeout_at(deadline, events.try_next())
            .await
            .unwrap_or_else(|_| panic!("no DELETED event for m1 in time; saw {seen:?}"))
            .expect("watch stream")
            .unwrap_or_else(|| panic!("the watch ended; saw {seen:?}"));
        let (kind, obj) = match next {
            WatchEvent::Added(o) => ("ADDED", o),
            WatchEvent::Modified(o) => ("MODIFIED", o),
            WatchEvent::Deleted(o) => ("DELETED", o),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => panic!("watch error: {e:?}"),
        };
        assert_eq!(
            obj.types.as_ref().map(|t| t.kind.as_str()),
            Some("PartialObjectMetadata"),
            "{kind} carries metadata only"
        );
        let labels = obj.metadata.labels.clone().unwrap_or_default();
        seen.push(format!(
            "{kind} {} color={}",
            obj.metadata.name.unwrap_or_default(),
            labels.get("color").map_or("", String::as_str)
        ));
    }
    // The scheduler writes to both pods too (no node takes them): only m1's own
    // story is asserted, in order.
    let m1: Vec<&str> = seen
        .iter()
        .map(String::as_str)
        .filter(|s| s.contains(" m1 "))
        .collect();
    assert_eq!(m1.first(), Some(&"ADDED m1 color="), "{seen:?}");
    assert!(m1.contains(&"MODIFIED m1 color=red"), "{seen:?}");
    assert!(
        m1.last().is_some_and(|s| s.starts_with("DELETED m1")),
        "{seen:?}"
    );
}
