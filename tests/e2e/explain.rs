//! Issue 3: `/openapi/v3` and `/openapi/v2` serve real schemas, so `kubectl explain`
//! prints upstream's field docs and types, while `--validate=strict` keeps leaving
//! validation to the server.

use serde_json::Value;

use crate::harness::Cluster;

#[tokio::test]
async fn explain_prints_field_docs_and_types() {
    let cluster = Cluster::start().await;

    let containers = cluster
        .kubectl_ok(&["explain", "pod.spec.containers"])
        .await;
    for want in [
        "KIND:       Pod",
        "VERSION:    v1",
        "FIELD: containers <[]Container>",
        "List of containers belonging to the pod.",
        "image\t<string>",
        "Container image name.",
        "ports\t<[]ContainerPort>",
        "resources\t<ResourceRequirements>",
        "name\t<string> -required-",
    ] {
        assert!(
            containers.contains(want),
            "explain pod.spec.containers lacks {want:?}:\n{containers}"
        );
    }

    let strategy = cluster
        .kubectl_ok(&["explain", "deployment.spec.strategy"])
        .await;
    for want in [
        "GROUP:      apps",
        "KIND:       Deployment",
        "FIELD: strategy <DeploymentStrategy>",
        "The deployment strategy to use to replace existing pods with new ones.",
        "rollingUpdate\t<RollingUpdateDeployment>",
        "Rolling update config params. Present only if DeploymentStrategyType =",
        "type\t<string>",
    ] {
        assert!(
            strategy.contains(want),
            "explain deployment.spec.strategy lacks {want:?}:\n{strategy}"
        );
    }

    let recursive = cluster
        .kubectl_ok(&["explain", "deployment.spec.strategy", "--recursive"])
        .await;
    assert!(
        recursive.contains("    maxSurge\t<IntOrString>")
            && recursive.contains("    maxUnavailable\t<IntOrString>"),
        "{recursive}"
    );

    // Whole kinds, cluster-scoped ones and the other groups resolve too.
    let svc = cluster.kubectl_ok(&["explain", "svc", "--recursive"]).await;
    assert!(svc.contains("KIND:       Service"), "{svc}");
    // As upstream, `metadata` is not marked required.
    assert!(svc.contains("  metadata\t<ObjectMeta>\n"), "{svc}");
    assert!(svc.contains("    clusterIP\t<string>"), "{svc}");
    let lease = cluster.kubectl_ok(&["explain", "lease.spec"]).await;
    assert!(lease.contains("GROUP:      coordination.k8s.io"), "{lease}");
    assert!(lease.contains("holderIdentity\t<string>"), "{lease}");
    let node = cluster
        .kubectl_ok(&["explain", "node.status.capacity"])
        .await;
    assert!(node.contains("<map[string]Quantity>"), "{node}");
    for kind in [
        "namespace",
        "configmap",
        "secret",
        "serviceaccount",
        "event",
        "endpoints",
        "replicaset",
        "daemonset",
        "endpointslice",
        "runtimeclass",
    ] {
        let out = cluster.kubectl_ok(&["explain", kind]).await;
        assert!(
            out.contains("DESCRIPTION:") && out.contains("FIELDS:"),
            "{kind}: {out}"
        );
    }

    let err = cluster
        .kubectl_err(&["explain", "pod.spec.contianers"])
        .await;
    assert!(err.contains("field \"contianers\" does not exist"), "{err}");
}

#[tokio::test]
async fn openapi_documents_and_strict_validation() {
    let cluster = Cluster::start().await;

    let index: Value =
        serde_json::from_str(&cluster.kubectl_ok(&["get", "--raw", "/openapi/v3"]).await)
            .expect("v3 index is JSON");
    let url = index["paths"]["apis/apps/v1"]["serverRelativeURL"]
        .as_str()
        .expect("apps/v1 in the index")
        .to_string();
    assert!(url.starts_with("/openapi/v3/apis/apps/v1?hash="), "{url}");
    let apps: Value = serde_json::from_str(&cluster.kubectl_ok(&["get", "--raw", &url]).await)
        .expect("apps/v1 document is JSON");
    assert_eq!(apps["openapi"], "3.0.0");
    let deployment = &apps["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
    assert_eq!(
        deployment["x-kubernetes-group-version-kind"][0]["kind"],
        "Deployment"
    );

    // Swagger 2.0 for clients that take JSON (kubectl itself asks for protobuf).
    let v2: Value =
        serde_json::from_str(&cluster.kubectl_ok(&["get", "--raw", "/openapi/v2"]).await)
            .expect("v2 is JSON");
    assert_eq!(v2["swagger"], "2.0");
    assert!(
        v2["definitions"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"].is_object()
    );

    // Strict validation still reaches the server, which names the misspelled field.
    let bad = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: typo
data:
  a: b
dtaa:
  c: d
"#;
    let path = cluster.write_file("typo.yaml", bad);
    let path = path.to_str().expect("utf-8 path");
    let err = cluster.kubectl_err(&["create", "-f", path]).await;
    assert!(err.contains("unknown field \"dtaa\""), "{err}");
    let ok = cluster
        .kubectl_ok(&["create", "-f", path, "--validate=false"])
        .await;
    assert!(ok.contains("configmap/typo created"), "{ok}");

    // Client-side apply computes its patch from kubectl's own metadata (the documents do
    // not offer strategic merge), so a re-apply prints no OpenAPI warnings.
    let deploy = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: x.wasm
        ports:
        - containerPort: 80
"#;
    cluster.apply_stdin(deploy).await;
    let out = cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &deploy.replace("replicas: 1", "replicas: 2"),
        )
        .await;
    assert!(out.success, "{out}");
    assert!(!out.stderr.contains("openapi"), "{out}");
}
