//! Scenario 1: a fresh cluster has the four system namespaces, and kubectl's discovery
//! (`api-resources`, `api-versions`) sees the resources of issue 2.

use crate::harness::{is_age, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_cluster_lists_system_namespaces_and_resources() {
    let cluster = Cluster::start().await;

    // No polling: the kubeconfig appears only once the server serves, and the system
    // namespaces must exist by then.
    let ns = cluster.get_table(&["ns"]).await;
    ns.assert_headers(&["NAME", "STATUS", "AGE"]);
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let row = ns.row(name);
        assert_eq!(row.get("STATUS"), "Active", "namespace {name}:\n{ns}");
        assert!(is_age(row.get("AGE")), "namespace {name} AGE:\n{ns}");
    }

    // `get ns NAME` and `-o name`.
    let one = cluster.get_table(&["ns", "kube-system"]).await;
    assert_eq!(one.names(), ["kube-system"]);
    let names = cluster
        .kubectl_ok(&["get", "namespaces", "-o", "name"])
        .await;
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(
            names.lines().any(|l| l == format!("namespace/{name}")),
            "{names}"
        );
    }

    // Namespaces carry the kubernetes.io/metadata.name label, as upstream sets it.
    let labels = cluster.get_table(&["ns", "default", "--show-labels"]).await;
    assert!(
        labels
            .row("default")
            .get("LABELS")
            .contains("kubernetes.io/metadata.name=default"),
        "{labels}"
    );

    // Discovery: the resources of issue 2 with their short names and groups.
    let resources = cluster.kubectl_ok(&["api-resources"]).await;
    let table = crate::harness::Table::parse_all(&resources).remove(0);
    table.assert_headers(&["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]);
    let expected = [
        ("namespaces", "ns", "v1", "false", "Namespace"),
        ("pods", "po", "v1", "true", "Pod"),
        ("nodes", "no", "v1", "false", "Node"),
        ("services", "svc", "v1", "true", "Service"),
        ("endpoints", "ep", "v1", "true", "Endpoints"),
        ("configmaps", "cm", "v1", "true", "ConfigMap"),
        ("secrets", "", "v1", "true", "Secret"),
        ("serviceaccounts", "sa", "v1", "true", "ServiceAccount"),
        ("events", "ev", "v1", "true", "Event"),
        ("deployments", "deploy", "apps/v1", "true", "Deployment"),
        ("replicasets", "rs", "apps/v1", "true", "ReplicaSet"),
        ("daemonsets", "ds", "apps/v1", "true", "DaemonSet"),
        (
            "endpointslices",
            "",
            "discovery.k8s.io/v1",
            "true",
            "EndpointSlice",
        ),
        ("leases", "", "coordination.k8s.io/v1", "true", "Lease"),
        (
            "runtimeclasses",
            "",
            "node.k8s.io/v1",
            "false",
            "RuntimeClass",
        ),
    ];
    for (name, short, version, namespaced, kind) in expected {
        let found = table.rows.iter().any(|r| {
            r[0] == name && r[1] == short && r[2] == version && r[3] == namespaced && r[4] == kind
        });
        assert!(
            found,
            "api-resources has no row {name} {short} {version} {namespaced} {kind}:\n{table}"
        );
    }

    let versions = cluster.kubectl_ok(&["api-versions"]).await;
    for gv in [
        "v1",
        "apps/v1",
        "discovery.k8s.io/v1",
        "coordination.k8s.io/v1",
        "node.k8s.io/v1",
    ] {
        assert!(
            versions.lines().any(|l| l == gv),
            "api-versions lacks {gv}:\n{versions}"
        );
    }
}
