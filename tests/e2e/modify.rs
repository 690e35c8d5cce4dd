//! Scenario 4: `label`, `annotate`, `patch` (merge, strategic, JSON), `scale` and
//! `apply` change what `get` shows; a JSON patch whose `test` fails changes nothing.

use crate::harness::{rv_number, Cluster};

const OBJECTS: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: default
data:
  color: blue
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: 1
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
        image: ghcr.io/wasmkube/hello:v1
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Pod
metadata:
  name: p
  namespace: default
spec:
  containers:
  - name: c
    image: ghcr.io/wasmkube/hello:v1
"#;

async fn jsonpath(cluster: &Cluster, kind_name: &[&str], path: &str) -> String {
    let template = format!("jsonpath={path}");
    let mut args = vec!["get"];
    args.extend_from_slice(kind_name);
    args.extend_from_slice(&["-n", "default", "-o", &template]);
    cluster.kubectl_ok(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_annotate_patch_scale_apply_change_what_get_shows() {
    let cluster = Cluster::start().await;
    cluster.create_stdin(OBJECTS).await;

    // label / unlabel.
    let out = cluster
        .kubectl_ok(&["label", "pod", "p", "color=red", "env=test"])
        .await;
    assert_eq!(out.trim(), "pod/p labeled");
    let shown = cluster.get_table(&["pod", "p", "--show-labels"]).await;
    assert_eq!(
        shown.row("p").get("LABELS"),
        "color=red,env=test",
        "{shown}"
    );
    let overwrite = cluster
        .kubectl_err(&["label", "pod", "p", "color=blue"])
        .await;
    assert!(overwrite.contains("--overwrite is false"), "{overwrite}");
    cluster
        .kubectl_ok(&["label", "pod", "p", "color=blue", "--overwrite"])
        .await;
    cluster.kubectl_ok(&["label", "pod", "p", "env-"]).await;
    let shown = cluster.get_table(&["pod", "p", "--show-labels"]).await;
    assert_eq!(shown.row("p").get("LABELS"), "color=blue", "{shown}");
    let selected = cluster.get_table(&["pods", "-l", "color=blue"]).await;
    assert_eq!(selected.names(), ["p"], "{selected}");

    // Metadata changes do not bump a deployment's generation; spec changes do.
    let gen0 = jsonpath(&cluster, &["deploy", "web"], "{.metadata.generation}").await;
    assert_eq!(gen0, "1");
    let out = cluster
        .kubectl_ok(&["annotate", "deploy", "web", "note=hello world"])
        .await;
    assert_eq!(out.trim(), "deployment.apps/web annotated");
    assert_eq!(
        jsonpath(&cluster, &["deploy", "web"], "{.metadata.annotations.note}").await,
        "hello world"
    );
    cluster
        .kubectl_ok(&["label", "deploy", "web", "tier=front"])
        .await;
    assert_eq!(
        jsonpath(&cluster, &["deploy", "web"], "{.metadata.generation}").await,
        "1"
    );

    // scale: spec.replicas, the READY column, generation.
    let out = cluster
        .kubectl_ok(&["scale", "deployment", "web", "--replicas=3"])
        .await;
    assert_eq!(out.trim(), "deployment.apps/web scaled");
    assert_eq!(
        jsonpath(&cluster, &["deploy", "web"], "{.spec.replicas}").await,
        "3"
    );
    assert_eq!(
        jsonpath(&cluster, &["deploy", "web"], "{.metadata.generation}").await,
        "2"
    );
    let table = cluster.get_table(&["deploy", "web"]).await;
    assert_eq!(table.row("web").get("READY"), "0/3", "{table}");
    // --current-replicas goes through GET + PUT on /scale.
    cluster
        .kubectl_ok(&[
            "scale",
            "deployment",
            "web",
            "--current-replicas=3",
            "--replicas=4",
        ])
        .await;
    assert_eq!(
        jsonpath(&cluster, &["deploy", "web"], "{.spec.replicas}").await,
        "4"
    );
    let wrong = cluster
        .kubectl_err(&[
            "scale",
            "deployment",
            "web",
            "--current-replicas=1",
            "--replicas=5",
        ])
        .await;
    assert!(wrong.contains("replicas to be 1, was 4"), "{wrong}");
    assert_eq!(
        jsonpath(&cluster, &["deploy", "web"], "{.spec.replicas}").await,
        "4"
    );

    // patch --type=merge.
    let out = cluster
        .kubectl_ok(&[
            "patch",
            "cm",
            "settings",
            "--type=merge",
            "-p",
            r#"{"data":{"color":"green","size":"xl"}}"#,
        ])
        .await;
    assert_eq!(out.trim(), "configmap/settings patched");
    assert_eq!(
        jsonpath(&cluster, &["cm", "settings"], "{.data.color}").await,
        "green"
    );
    assert_eq!(
        jsonpath(&cluster, &["cm", "settings"], "{.data.size}").await,
        "xl"
    );
    // A patch that changes nothing is not written: kubectl says so and the RV stays.
    let before = cluster.get_json(&["cm", "settings"]).await;
    let out = cluster
        .kubectl_ok(&[
            "patch",
            "cm",
            "settings",
            "--type=merge",
            "-p",
            r#"{"data":{"color":"green"}}"#,
        ])
        .await;
    assert_eq!(out.trim(), "configmap/settings patched (no change)");
    let after = cluster.get_json(&["cm", "settings"]).await;
    assert_eq!(
        rv_number(&before),
        rv_number(&after),
        "a no-op patch changed the resourceVersion"
    );

    // Strategic merge (kubectl's default for built-in types): containers merge by name,
    // so the image and ports survive adding env.
    cluster
        .kubectl_ok(&[
            "patch",
            "deploy",
            "web",
            "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","env":[{"name":"MODE","value":"fast"}]}]}}}}"#,
        ])
        .await;
    let deploy = cluster.get_json(&["deploy", "web"]).await;
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["image"], "ghcr.io/wasmkube/hello:v1",
        "{container}"
    );
    assert_eq!(container["ports"][0]["containerPort"], 8080, "{container}");
    assert_eq!(container["env"][0]["value"], "fast", "{container}");
    // 1, +1 for each scale, +1 for this template change.
    assert_eq!(
        deploy["metadata"]["generation"], 4,
        "{}",
        deploy["metadata"]
    );
    // `set image` is a strategic merge patch too.
    cluster
        .kubectl_ok(&[
            "set",
            "image",
            "deployment/web",
            "web=ghcr.io/wasmkube/hello:v2",
        ])
        .await;
    assert_eq!(
        jsonpath(
            &cluster,
            &["deploy", "web"],
            "{.spec.template.spec.containers[0].image}"
        )
        .await,
        "ghcr.io/wasmkube/hello:v2"
    );

    // patch --type=json.
    cluster
        .kubectl_ok(&[
            "patch",
            "cm",
            "settings",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/data/extra","value":"x"}]"#,
        ])
        .await;
    assert_eq!(
        jsonpath(&cluster, &["cm", "settings"], "{.data.extra}").await,
        "x"
    );
    // A failing `test` op rejects the whole patch: nothing changes.
    let before = cluster.get_json(&["cm", "settings"]).await;
    let err = cluster
        .kubectl_err(&[
            "patch",
            "cm",
            "settings",
            "--type=json",
            "-p",
            r#"[{"op":"test","path":"/data/color","value":"purple"},{"op":"replace","path":"/data/color","value":"red"}]"#,
        ])
        .await;
    assert!(
        err.contains("The request is invalid") || err.contains("Error from server"),
        "{err}"
    );
    assert!(
        !err.contains("InternalError"),
        "a failed test op is a client error, not a 500: {err}"
    );
    let after = cluster.get_json(&["cm", "settings"]).await;
    assert_eq!(
        after["data"], before["data"],
        "the failed JSON patch changed the object"
    );
    assert_eq!(rv_number(&before), rv_number(&after));

    // apply: create, configure, unchanged; removing a field from the applied config
    // removes it from the object.
    let applied_v1 = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: applied
  namespace: default
data:
  a: "1"
  b: "2"
"#;
    let out = cluster.apply_stdin(applied_v1).await;
    assert_eq!(out.trim(), "configmap/applied created");
    let out = cluster.apply_stdin(applied_v1).await;
    assert_eq!(out.trim(), "configmap/applied unchanged");
    let out = cluster
        .apply_stdin(&applied_v1.replace("  b: \"2\"\n", "  c: \"3\"\n"))
        .await;
    assert_eq!(out.trim(), "configmap/applied configured");
    let cm = cluster.get_json(&["cm", "applied"]).await;
    assert_eq!(cm["data"], serde_json::json!({"a": "1", "c": "3"}), "{cm}");
    assert!(
        cm["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string(),
        "{cm}"
    );

    // Applying the deployment keeps fields set by others (replicas set by scale stays
    // when the applied config has none).
    let deploy_apply = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: applied
  namespace: default
spec:
  selector:
    matchLabels:
      app: applied
  template:
    metadata:
      labels:
        app: applied
    spec:
      containers:
      - name: main
        image: ghcr.io/wasmkube/hello:v1
        ports:
        - containerPort: 8080
"#;
    assert_eq!(
        cluster.apply_stdin(deploy_apply).await.trim(),
        "deployment.apps/applied created"
    );
    cluster
        .kubectl_ok(&["scale", "deploy", "applied", "--replicas=2"])
        .await;
    let out = cluster
        .apply_stdin(&deploy_apply.replace("hello:v1", "hello:v3"))
        .await;
    assert_eq!(out.trim(), "deployment.apps/applied configured");
    let d = cluster.get_json(&["deploy", "applied"]).await;
    assert_eq!(d["spec"]["replicas"], 2, "{}", d["spec"]);
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "ghcr.io/wasmkube/hello:v3", "{c}");
    assert_eq!(
        c["ports"][0]["containerPort"], 8080,
        "apply lost the ports: {c}"
    );
}
