//! Scenario 8: once the compactor has passed a resourceVersion, exact reads and watches
//! from it get 410 Expired, while reads of the current state keep working.

use serde_json::Value;

use crate::harness::{eventually, Cluster, Output, DEADLINE};

const LIST: &str = "/api/v1/namespaces/default/configmaps";

fn is_expired(out: &Output) -> bool {
    let text = format!("{}{}", out.stdout, out.stderr);
    !out.success && (text.contains("Expired") || text.contains("Gone") || text.contains("410"))
}

/// Names of the configmaps this test created in a list (other controllers may add
/// their own, such as kube-root-ca.crt).
fn names(list: &Value) -> Vec<String> {
    let mut out: Vec<String> = list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["metadata"]["name"].as_str())
                .filter(|n| *n == "first" || n.starts_with("later-"))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_resource_versions_expire_after_compaction() {
    let cluster = Cluster::builder()
        .args(&["--compaction-interval-seconds", "1"])
        .start()
        .await;

    cluster
        .create_configmap("default", "first", &[("n", "0")])
        .await;
    let list = cluster.raw(LIST).await;
    assert!(list.success, "{list}");
    let list: Value = serde_json::from_str(&list.stdout).expect("list JSON");
    let old_rv = list["metadata"]["resourceVersion"]
        .as_str()
        .expect("the list has a resourceVersion")
        .to_string();
    let exact = format!("{LIST}?resourceVersion={old_rv}&resourceVersionMatch=Exact");

    // Right away the exact read works and shows the state at that revision.
    let at_old = cluster.raw(&exact).await;
    assert!(
        at_old.success,
        "an exact read at the current revision: {at_old}"
    );
    let at_old: Value = serde_json::from_str(&at_old.stdout).expect("list JSON");
    assert_eq!(names(&at_old), ["first"], "{at_old}");

    for n in 1..=3 {
        cluster
            .create_configmap("default", &format!("later-{n}"), &[("n", "1")])
            .await;
    }
    cluster
        .kubectl_ok(&["label", "configmap", "first", "touched=yes"])
        .await;

    // Poll until compaction has passed the old revision: the exact read turns into 410.
    // Any other failure is a bug, not "not yet".
    let expired = eventually(
        "the exact read at the old revision to expire",
        DEADLINE,
        async || {
            let out = cluster.raw(&exact).await;
            if is_expired(&out) {
                Ok(out)
            } else if out.success {
                Err("still readable".to_string())
            } else {
                panic!("an exact read at a (possibly compacted) revision failed oddly:\n{out}")
            }
        },
    )
    .await;
    let text = expired.stderr.to_lowercase();
    assert!(
        text.contains("too old") || text.contains("expired") || text.contains("gone"),
        "the 410 should say the resource version is too old: {expired}"
    );
    assert!(!text.contains("internalerror"), "{expired}");

    // A watch from the compacted revision: 410, as the HTTP status or as an ERROR event
    // carrying a 410 Status — the history is gone, so the client must re-list.
    let watch = cluster
        .raw(&format!(
            "{LIST}?watch=true&resourceVersion={old_rv}&timeoutSeconds=3"
        ))
        .await;
    let expired_event = watch.success
        && watch
            .stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|ev| ev["type"] == "ERROR" && ev["object"]["code"] == 410);
    assert!(
        expired_event || is_expired(&watch),
        "a watch from compacted revision {old_rv} must get 410: {watch}"
    );

    // Reads of the current state, and NotOlderThan reads from the old revision, work.
    let current = cluster.raw(LIST).await;
    assert!(current.success, "{current}");
    let current: Value = serde_json::from_str(&current.stdout).expect("list JSON");
    assert_eq!(
        names(&current),
        ["first", "later-1", "later-2", "later-3"],
        "{current}"
    );
    let not_older = cluster
        .raw(&format!(
            "{LIST}?resourceVersion={old_rv}&resourceVersionMatch=NotOlderThan"
        ))
        .await;
    assert!(
        not_older.success,
        "NotOlderThan an old revision is served from newer state: {not_older}"
    );
    let table = cluster.get_table(&["cm"]).await;
    for name in ["first", "later-1", "later-2", "later-3"] {
        table.row(name);
    }
    // kubectl's own watch (list, then watch from the list's revision) is unaffected.
    let mut watch = cluster.spawn_kubectl(&["get", "cm", "-w", "--output-watch-events"]);
    watch.wait_for_row(&["ADDED", "later-3"]).await;
    cluster
        .create_configmap("default", "after-compaction", &[])
        .await;
    watch.wait_for_row(&["ADDED", "after-compaction"]).await;
}
