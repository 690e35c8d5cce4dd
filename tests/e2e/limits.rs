//! Scenario 10: oversized requests get a clear 4xx, never a 500, and the server keeps
//! working afterwards.

use crate::harness::{Cluster, Output};

/// A 4xx as kubectl shows it: an error that is not an InternalError (500).
fn assert_client_error(what: &str, out: &Output, expected_any: &[&str]) {
    assert!(!out.success, "{what} should fail:\n{out}");
    assert!(
        !out.stderr.contains("InternalError") && !out.stderr.contains("Internal error"),
        "{what} must not be a 500:\n{out}"
    );
    assert!(
        expected_any.iter().any(|e| out.stderr.contains(e)),
        "{what} should say one of {expected_any:?}:\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_get_clear_client_errors() {
    let cluster = Cluster::start().await;

    // A 4 MiB JSON request body (over the 3 MiB limit): 413.
    let doc = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big-json"}},"data":{{"x":"{}"}}}}"#,
        "y".repeat(4 * 1024 * 1024)
    );
    let path = cluster.write_file("big.json", &doc);
    let out = cluster
        .kubectl(&["create", "-f", path.to_str().expect("utf-8 path")])
        .await;
    assert_client_error(
        "a 4 MiB create -f",
        &out,
        &[
            "RequestEntityTooLarge",
            "Request entity too large",
            "too large",
        ],
    );

    // A ~2 MiB ConfigMap: under the body limit, over what a ConfigMap may hold (1 MiB)
    // and over etcd's request limit (1.5 MiB).
    let doc = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"two"}},"data":{{"x":"{}"}}}}"#,
        "z".repeat(2 * 1024 * 1024)
    );
    let path = cluster.write_file("two.json", &doc);
    let out = cluster
        .kubectl(&["create", "-f", path.to_str().expect("utf-8 path")])
        .await;
    assert_client_error(
        "a 2 MiB configmap",
        &out,
        &["too long", "too large", "Too long", "Too large"],
    );

    // A ~2 MiB pod (nothing in pod validation limits an env value, so this reaches
    // etcd, which refuses requests over 1.5 MiB).
    let pod = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"huge"}},
            "spec":{{"containers":[{{"name":"c","image":"i:1","env":[{{"name":"BIG","value":"{}"}}]}}]}}}}"#,
        "p".repeat(2 * 1024 * 1024)
    );
    let path = cluster.write_file("huge-pod.json", &pod);
    let out = cluster
        .kubectl(&["create", "-f", path.to_str().expect("utf-8 path")])
        .await;
    assert_client_error(
        "a 2 MiB pod (too large for etcd)",
        &out,
        &[
            "RequestEntityTooLarge",
            "too large",
            "Too large",
            "too long",
        ],
    );
    let err = cluster.kubectl_err(&["get", "pod", "huge"]).await;
    assert!(err.contains("NotFound"), "{err}");

    // Well under the limits still works, and the server is healthy.
    cluster
        .create_configmap(
            "default",
            "half-mib",
            &[("ok.txt", &"o".repeat(512 * 1024))],
        )
        .await;
    let table = cluster.get_table(&["cm", "half-mib"]).await;
    assert_eq!(table.row("half-mib").get("DATA"), "1", "{table}");
    let ready = cluster.raw("/readyz").await;
    assert!(ready.success, "{ready}");

    // `kubectl create configmap --from-file` of 4 MiB (a protobuf body): 413 as well.
    let big = cluster.write_file("big.txt", "x".repeat(4 * 1024 * 1024));
    let from_file = format!("--from-file=big.txt={}", big.display());
    let out = cluster
        .kubectl(&["create", "configmap", "big", &from_file])
        .await;
    assert_client_error(
        "a 4 MiB kubectl create configmap",
        &out,
        &[
            "RequestEntityTooLarge",
            "Request entity too large",
            "too large",
        ],
    );
    let err = cluster.kubectl_err(&["get", "cm", "big"]).await;
    assert!(err.contains("NotFound"), "{err}");
}
