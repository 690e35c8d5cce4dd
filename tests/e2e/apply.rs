//! Issue 3: `kubectl apply` (client- and server-side), `diff`, server dry run, field
//! validation, `edit`, `replace`, `set image|env` and `rollout restart` behave as on
//! Kubernetes.

use serde_json::{json, Value};

use crate::harness::Cluster;

const DEPLOY_V1: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
  namespace: default
spec:
  replicas: 2
  selector:
    matchLabels:
      app: shop
  template:
    metadata:
      labels:
        app: shop
    spec:
      containers:
      - name: api
        image: registry.local/api:v1
        ports:
        - containerPort: 8080
        env:
        - name: MODE
          value: prod
        - name: DEBUG
          value: "false"
      - name: sidecar
        image: registry.local/sidecar:v1
        ports:
        - containerPort: 9000
        env:
        - name: LEVEL
          value: info
"#;

/// V1 with the DEBUG env var removed, the api image changed and a port added.
const DEPLOY_V2: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
  namespace: default
spec:
  replicas: 2
  selector:
    matchLabels:
      app: shop
  template:
    metadata:
      labels:
        app: shop
    spec:
      containers:
      - name: api
        image: registry.local/api:v2
        ports:
        - containerPort: 8080
        - containerPort: 8443
        env:
        - name: MODE
          value: prod
      - name: sidecar
        image: registry.local/sidecar:v1
        ports:
        - containerPort: 9000
        env:
        - name: LEVEL
          value: info
"#;

fn containers(deploy: &Value) -> Vec<Value> {
    deploy["spec"]["template"]["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn ports(c: &Value) -> Vec<i64> {
    c["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["containerPort"].as_i64())
        .collect()
}

fn env(c: &Value) -> Vec<(String, String)> {
    c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or_default().to_string(),
                e["value"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn client_side_apply_diff_and_dry_run() {
    let cluster = Cluster::start().await;
    let f1 = cluster.write_file("shop-v1.yaml", DEPLOY_V1);
    let f2 = cluster.write_file("shop-v2.yaml", DEPLOY_V2);
    let f1 = f1.to_str().unwrap();
    let f2 = f2.to_str().unwrap();

    let out = cluster.kubectl_ok(&["apply", "-f", f1]).await;
    assert!(out.contains("deployment.apps/shop created"), "{out}");
    let out = cluster.kubectl_ok(&["apply", "-f", f1]).await;
    assert!(out.contains("deployment.apps/shop unchanged"), "{out}");

    // diff shows the pending change and exits 1.
    let diff = cluster.kubectl(&["diff", "-f", f2]).await;
    assert_eq!(diff.code, Some(1), "kubectl diff of a change: {diff}");
    assert!(diff.stdout.contains("registry.local/api:v2"), "{diff}");
    assert!(diff.stdout.contains("DEBUG"), "{diff}");

    // A server-side dry run changes nothing.
    let before = cluster.get_json(&["deploy", "shop"]).await;
    let out = cluster
        .kubectl_ok(&["apply", "--dry-run=server", "-f", f2])
        .await;
    assert!(out.contains("(server dry run)"), "{out}");
    let after = cluster.get_json(&["deploy", "shop"]).await;
    assert_eq!(
        before["metadata"]["resourceVersion"], after["metadata"]["resourceVersion"],
        "a dry run must not write"
    );
    assert_eq!(containers(&after)[0]["image"], "registry.local/api:v1");

    // The real re-apply: exactly the intended object.
    let out = cluster.kubectl_ok(&["apply", "-f", f2]).await;
    assert!(out.contains("deployment.apps/shop configured"), "{out}");
    let d = cluster.get_json(&["deploy", "shop"]).await;
    let cs = containers(&d);
    assert_eq!(cs.len(), 2, "{d:#}");
    assert_eq!(cs[0]["name"], "api");
    assert_eq!(cs[0]["image"], "registry.local/api:v2");
    assert_eq!(ports(&cs[0]), vec![8080, 8443]);
    assert_eq!(env(&cs[0]), vec![("MODE".to_string(), "prod".to_string())]);
    assert_eq!(cs[1]["name"], "sidecar");
    assert_eq!(cs[1]["image"], "registry.local/sidecar:v1");
    assert_eq!(ports(&cs[1]), vec![9000]);
    assert_eq!(env(&cs[1]), vec![("LEVEL".to_string(), "info".to_string())]);
    assert_eq!(d["metadata"]["generation"], 2, "one spec change, one bump");

    // Nothing pending any more.
    let diff = cluster.kubectl(&["diff", "-f", f2]).await;
    assert_eq!(diff.code, Some(0), "kubectl diff after apply: {diff}");
    let out = cluster.kubectl_ok(&["apply", "-f", f2]).await;
    assert!(out.contains("deployment.apps/shop unchanged"), "{out}");
}

#[tokio::test]
async fn unknown_fields_are_refused_or_dropped() {
    let cluster = Cluster::start().await;
    let typo = r#"
apiVersion: v1
kind: Pod
metadata:
  name: typo
spec:
  contianers:
  - name: a
    image: a.wasm
  containers:
  - name: a
    image: a.wasm
"#;
    let path = cluster.write_file("typo.yaml", typo);
    let path = path.to_str().unwrap();
    let err = cluster.kubectl_err(&["create", "-f", path]).await;
    assert!(
        err.contains("strict decoding error") && err.contains(r#"unknown field "spec.contianers""#),
        "{err}"
    );
    let out = cluster
        .kubectl_ok(&["create", "--validate=false", "-f", path])
        .await;
    assert!(out.contains("pod/typo created"), "{out}");
    let pod = cluster.get_json(&["pod", "typo"]).await;
    assert!(pod["spec"].get("contianers").is_none(), "{pod:#}");
    assert_eq!(pod["spec"]["containers"][0]["name"], "a");
}

#[tokio::test]
async fn edit_replace_set_and_rollout_restart() {
    let cluster = Cluster::start().await;
    let f1 = cluster.write_file("shop-v1.yaml", DEPLOY_V1);
    cluster
        .kubectl_ok(&["create", "-f", f1.to_str().unwrap()])
        .await;

    // kubectl edit: the "editor" rewrites the replica count in the file it is given.
    let out = cluster
        .kubectl_env(
            &[("KUBE_EDITOR", "sed -i s/replicas:\\ 2/replicas:\\ 5/")],
            &["edit", "deployment", "shop"],
        )
        .await;
    assert!(out.success, "kubectl edit: {out}");
    let d = cluster.get_json(&["deploy", "shop"]).await;
    assert_eq!(d["spec"]["replicas"], 5, "{out}");

    cluster
        .kubectl_ok(&[
            "set",
            "image",
            "deployment/shop",
            "api=registry.local/api:v3",
        ])
        .await;
    cluster
        .kubectl_ok(&[
            "set",
            "env",
            "deployment/shop",
            "-c",
            "sidecar",
            "COLOR=blue",
        ])
        .await;
    cluster
        .kubectl_ok(&["rollout", "restart", "deployment/shop"])
        .await;
    let d = cluster.get_json(&["deploy", "shop"]).await;
    let cs = containers(&d);
    assert_eq!(cs[0]["image"], "registry.local/api:v3");
    assert_eq!(
        cs[0]["env"].as_array().map(Vec::len),
        Some(2),
        "api env untouched"
    );
    assert!(
        env(&cs[1]).contains(&("COLOR".to_string(), "blue".to_string())),
        "{:#}",
        cs[1]
    );
    assert!(
        d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string(),
        "{d:#}"
    );

    // Patches reach the status and scale subresources too. (A Service's status: no
    // controller writes it, unlike a Deployment's.)
    cluster
        .kubectl_ok(&["create", "service", "clusterip", "lb", "--tcp=80:8080"])
        .await;
    cluster
        .kubectl_ok(&[
            "patch",
            "service",
            "lb",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"loadBalancer":{"ingress":[{"ip":"127.0.0.9"}]}}}"#,
        ])
        .await;
    let svc = cluster.get_json(&["svc", "lb"]).await;
    assert_eq!(
        svc["status"]["loadBalancer"]["ingress"][0]["ip"], "127.0.0.9",
        "{svc:#}"
    );
    cluster
        .kubectl_ok(&[
            "patch",
            "deployment",
            "shop",
            "--subresource=scale",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/replicas","value":4}]"#,
        ])
        .await;
    let d = cluster.get_json(&["deploy", "shop"]).await;
    assert_eq!(d["spec"]["replicas"], 4, "{d:#}");

    // A server-side dry-run delete deletes nothing.
    let out = cluster
        .kubectl_ok(&["delete", "deployment", "shop", "--dry-run=server"])
        .await;
    assert!(out.contains("(server dry run)"), "{out}");
    cluster.kubectl_ok(&["get", "deployment", "shop"]).await;

    // replace with the current object works; with the original (stale) one it conflicts.
    // The deployment controller may still be writing status from the scale above, so the
    // current object is read again when a replace loses that race, as a user would.
    let mut attempts = 0;
    let fresh = loop {
        let mut current = cluster.get_json(&["deploy", "shop"]).await;
        current["spec"]["replicas"] = json!(1);
        let fresh = cluster.write_file("fresh.json", current.to_string());
        let out = cluster
            .kubectl(&["replace", "-f", fresh.to_str().unwrap()])
            .await;
        attempts += 1;
        if out.success {
            break fresh;
        }
        assert!(
            attempts < 10 && out.stderr.contains("the object has been modified"),
            "replace with the current object failed:\n{out}"
        );
    };
    let err = cluster
        .kubectl_err(&["replace", "-f", fresh.to_str().unwrap()])
        .await;
    assert!(
        err.contains("Conflict") || err.contains("the object has been modified"),
        "{err}"
    );
}

#[tokio::test]
async fn server_side_apply_tracks_field_managers() {
    let cluster = Cluster::start().await;
    let cm = |value: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shared\n  namespace: default\ndata:\n  color: {value}\n"
        )
    };
    let a = cluster.write_file("a.yaml", cm("blue"));
    let b = cluster.write_file("b.yaml", cm("red"));
    let out = cluster
        .kubectl_ok(&[
            "apply",
            "--server-side",
            "--field-manager=alice",
            "-f",
            a.to_str().unwrap(),
        ])
        .await;
    assert!(out.contains("configmap/shared serverside-applied"), "{out}");

    // bob applies an overlapping field with another value: a conflict naming both.
    let err = cluster
        .kubectl_err(&[
            "apply",
            "--server-side",
            "--field-manager=bob",
            "-f",
            b.to_str().unwrap(),
        ])
        .await;
    assert!(err.contains("conflict"), "{err}");
    assert!(err.contains(".data.color"), "{err}");
    assert!(err.contains("alice"), "{err}");

    // --force-conflicts takes the field over.
    cluster
        .kubectl_ok(&[
            "apply",
            "--server-side",
            "--field-manager=bob",
            "--force-conflicts",
            "-f",
            b.to_str().unwrap(),
        ])
        .await;
    let obj = cluster
        .get_json(&["cm", "shared", "--show-managed-fields"])
        .await;
    assert_eq!(obj["data"]["color"], "red");
    let managers: Vec<&str> = obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["fieldsV1"]["f:data"]["f:color"].is_object())
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert_eq!(managers, vec!["bob"], "{obj:#}");

    // A field dropped by its only manager is removed.
    let only_size = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shared\n  namespace: default\ndata:\n  size: L\n";
    let c = cluster.write_file("c.yaml", only_size);
    cluster
        .kubectl_ok(&[
            "apply",
            "--server-side",
            "--field-manager=bob",
            "-f",
            c.to_str().unwrap(),
        ])
        .await;
    let obj = cluster.get_json(&["cm", "shared"]).await;
    assert_eq!(obj["data"], json!({"size": "L"}), "{obj:#}");
}
