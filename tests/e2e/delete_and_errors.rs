//! Scenario 5: deletes (pod, deployment, namespace with its contents, finalizers) and
//! the errors kubectl users meet: AlreadyExists, Invalid, Conflict, Unauthorized,
//! NotFound, Forbidden in a terminating namespace.

use crate::harness::{eventually, Cluster, DEADLINE};

const DOOMED_YAML: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: doomed
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: doomed
data:
  color: blue
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: held
  namespace: doomed
  finalizers:
  - e2e.wasmkube.dev/hold
data:
  x: "1"
---
apiVersion: v1
kind: Secret
metadata:
  name: s
  namespace: doomed
stringData:
  k: v
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: doomed
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
---
apiVersion: v1
kind: Pod
metadata:
  name: p
  namespace: doomed
spec:
  containers:
  - name: c
    image: ghcr.io/wasmkube/hello:v1
---
apiVersion: v1
kind: Pod
metadata:
  name: p2
  namespace: doomed
spec:
  containers:
  - name: c
    image: ghcr.io/wasmkube/hello:v1
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_remove_objects_and_errors_have_kubernetes_reasons() {
    let cluster = Cluster::start().await;
    cluster.create_stdin(DOOMED_YAML).await;

    // delete pod / deployment: kubectl waits until they are gone.
    let out = cluster
        .kubectl_ok(&["delete", "pod", "p", "-n", "doomed"])
        .await;
    assert_eq!(out.trim(), "pod \"p\" deleted");
    let err = cluster
        .kubectl_err(&["get", "pod", "p", "-n", "doomed"])
        .await;
    assert_eq!(
        err.trim(),
        "Error from server (NotFound): pods \"p\" not found"
    );
    let out = cluster
        .kubectl_ok(&["delete", "deployment", "web", "-n", "doomed"])
        .await;
    assert_eq!(out.trim(), "deployment.apps \"web\" deleted");
    let err = cluster
        .kubectl_err(&["get", "deploy", "web", "-n", "doomed"])
        .await;
    assert_eq!(
        err.trim(),
        "Error from server (NotFound): deployments.apps \"web\" not found"
    );
    let err = cluster
        .kubectl_err(&["delete", "pod", "p", "-n", "doomed"])
        .await;
    assert_eq!(
        err.trim(),
        "Error from server (NotFound): pods \"p\" not found"
    );
    // --ignore-not-found.
    cluster
        .kubectl_ok(&["delete", "pod", "p", "-n", "doomed", "--ignore-not-found"])
        .await;

    // deletecollection with a label selector removes exactly the selected objects.
    for (name, batch) in [("b1", "yes"), ("b2", "yes"), ("b3", "no")] {
        cluster
            .create_stdin(&format!(
                r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}","namespace":"default","labels":{{"batch":"{batch}"}}}}}}"#
            ))
            .await;
    }
    cluster
        .kubectl_ok(&[
            "delete",
            "--raw",
            "/api/v1/namespaces/default/configmaps?labelSelector=batch%3Dyes",
        ])
        .await;
    let left = cluster
        .kubectl_ok(&["get", "cm", "-n", "default", "-l", "batch", "-o", "name"])
        .await;
    assert_eq!(
        left.trim(),
        "configmap/b3",
        "after deletecollection batch=yes"
    );
    // `kubectl delete -l` (list, then one DELETE each) too.
    let out = cluster
        .kubectl_ok(&["delete", "cm", "-n", "default", "-l", "batch=no"])
        .await;
    assert_eq!(out.trim(), "configmap \"b3\" deleted");

    // create of an existing object.
    let dup = cluster
        .kubectl_stdin(
            &["create", "-f", "-"],
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"settings","namespace":"doomed"}}"#,
        )
        .await;
    assert!(!dup.success, "{dup}");
    assert!(
        dup.stderr.contains("Error from server (AlreadyExists)")
            && dup
                .stderr
                .contains("configmaps \"settings\" already exists"),
        "{dup}"
    );

    // Invalid: a bad name, a missing required field, an immutable field.
    let bad = cluster
        .kubectl_stdin(
            &["create", "-f", "-"],
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Bad_Name","namespace":"doomed"}}"#,
        )
        .await;
    assert!(!bad.success, "{bad}");
    assert!(
        bad.stderr.contains("The ConfigMap \"Bad_Name\" is invalid")
            && bad
                .stderr
                .contains("metadata.name: Invalid value: \"Bad_Name\""),
        "{bad}"
    );
    let no_containers = cluster
        .kubectl_stdin(
            &["create", "-f", "-"],
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"empty","namespace":"doomed"},"spec":{"containers":[]}}"#,
        )
        .await;
    assert!(!no_containers.success, "{no_containers}");
    assert!(
        no_containers
            .stderr
            .contains("The Pod \"empty\" is invalid")
            && no_containers
                .stderr
                .contains("spec.containers: Required value"),
        "{no_containers}"
    );
    let immutable = cluster
        .kubectl_err(&[
            "patch",
            "pod",
            "p2",
            "-n",
            "doomed",
            "--type=merge",
            "-p",
            r#"{"spec":{"restartPolicy":"Never"}}"#,
        ])
        .await;
    assert!(
        immutable.contains("The Pod \"p2\" is invalid") && immutable.contains("Forbidden"),
        "{immutable}"
    );

    // A stale PUT: replace with a copy whose resourceVersion is old.
    let old = cluster
        .kubectl_ok(&["get", "cm", "settings", "-n", "doomed", "-o", "json"])
        .await;
    let old_path = cluster.write_file("settings-old.json", &old);
    cluster
        .kubectl_ok(&["label", "cm", "settings", "-n", "doomed", "changed=yes"])
        .await;
    let old_arg = old_path.to_str().expect("utf-8 path");
    let err = cluster.kubectl_err(&["replace", "-f", old_arg]).await;
    assert!(
        err.contains("Error from server (Conflict)")
            && err.contains("Operation cannot be fulfilled on configmaps \"settings\"")
            && err.contains("the object has been modified"),
        "{err}"
    );
    // A fresh copy replaces fine.
    let fresh = cluster
        .kubectl_ok(&["get", "cm", "settings", "-n", "doomed", "-o", "json"])
        .await;
    let fresh_path =
        cluster.write_file("settings-fresh.json", fresh.replace("\"blue\"", "\"red\""));
    let out = cluster
        .kubectl_ok(&["replace", "-f", fresh_path.to_str().expect("utf-8 path")])
        .await;
    assert_eq!(out.trim(), "configmap/settings replaced");

    // Two replaces racing from the same resourceVersion: exactly one wins.
    let base = cluster
        .kubectl_ok(&["get", "cm", "settings", "-n", "doomed", "-o", "json"])
        .await;
    let a = cluster.write_file("race-a.json", base.replace("\"red\"", "\"race-a\""));
    let b = cluster.write_file("race-b.json", base.replace("\"red\"", "\"race-b\""));
    let args_a = ["replace", "-f", a.to_str().expect("utf-8 path")];
    let args_b = ["replace", "-f", b.to_str().expect("utf-8 path")];
    let (ra, rb) = tokio::join!(cluster.kubectl(&args_a), cluster.kubectl(&args_b));
    assert!(
        ra.success != rb.success,
        "exactly one of two racing replaces must win:\n{ra}\n{rb}"
    );
    let (winner, loser) = if ra.success {
        ("race-a", &rb)
    } else {
        ("race-b", &ra)
    };
    assert!(loser.stderr.contains("(Conflict)"), "{loser}");
    let color = cluster
        .kubectl_ok(&[
            "get",
            "cm",
            "settings",
            "-n",
            "doomed",
            "-o",
            "jsonpath={.data.color}",
        ])
        .await;
    assert_eq!(color, winner);

    check_authentication(&cluster).await;

    // Creating in a namespace that does not exist.
    let missing = cluster
        .kubectl_stdin(
            &["create", "-f", "-"],
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x","namespace":"nope"},"spec":{"containers":[{"name":"c","image":"i"}]}}"#,
        )
        .await;
    assert!(
        !missing.success
            && missing.stderr.contains("Error from server (NotFound)")
            && missing.stderr.contains("namespaces \"nope\" not found"),
        "{missing}"
    );

    check_namespace_deletion(&cluster).await;
    check_imperative_create_errors(&cluster).await;
}

/// The same errors through `kubectl create configmap`, which sends a protobuf body and
/// wraps the server's message in its own.
async fn check_imperative_create_errors(cluster: &Cluster) {
    cluster.create_configmap("default", "settings", &[]).await;
    let err = cluster
        .kubectl_err(&["create", "configmap", "settings", "-n", "default"])
        .await;
    assert_eq!(
        err.trim(),
        "error: failed to create configmap: configmaps \"settings\" already exists",
        "kubectl create configmap of an existing name"
    );
    let err = cluster
        .kubectl_err(&["create", "configmap", "Bad_Name", "-n", "default"])
        .await;
    assert!(
        err.contains("is invalid") && err.contains("metadata.name: Invalid value: \"Bad_Name\""),
        "{err}"
    );
    let err = cluster
        .kubectl_err(&["create", "configmap", "x", "-n", "nope"])
        .await;
    assert!(
        err.contains("namespaces \"nope\" not found"),
        "create in a missing namespace: {err}"
    );
}

/// A kubeconfig with a wrong token or no credential at all is refused with 401.
async fn check_authentication(cluster: &Cluster) {
    let token_path = cluster.kubeconfig_with_token("wrong-token.kubeconfig", Some("wrong"));
    let out = cluster
        .kubectl_as(&token_path, &["get", "pods"], None)
        .await;
    assert!(!out.success, "{out}");
    assert!(
        out.stderr
            .contains("error: You must be logged in to the server (Unauthorized)"),
        "{out}"
    );

    // No credential at all (curl: kubectl with an empty user prompts for a password),
    // and a wrong token: a 401 Status.
    for token in [None, Some("wrong")] {
        let (code, body) = cluster.curl_get("/api/v1/namespaces", token).await;
        assert_eq!(code, 401, "token {token:?}: {body}");
        let status: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("a 401 should carry a Status ({e}): {body}"));
        assert_eq!(status["kind"], "Status", "{status}");
        assert_eq!(status["reason"], "Unauthorized", "{status}");
        assert_eq!(status["code"], 401, "{status}");
    }
}

/// Deleting a namespace deletes its contents; finalizers hold objects (and so the
/// namespace) until removed; a terminating namespace refuses new objects.
async fn check_namespace_deletion(cluster: &Cluster) {
    let out = cluster
        .kubectl_ok(&["delete", "namespace", "doomed", "--wait=false"])
        .await;
    assert_eq!(out.trim(), "namespace \"doomed\" deleted");

    let ns = cluster.get_table(&["ns", "doomed"]).await;
    assert_eq!(ns.row("doomed").get("STATUS"), "Terminating", "{ns}");
    let late = cluster
        .kubectl_stdin(
            &["create", "-f", "-"],
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"late","namespace":"doomed"}}"#,
        )
        .await;
    assert!(!late.success, "{late}");
    assert!(
        late.stderr.contains("Error from server (Forbidden)")
            && late.stderr.contains("because it is being terminated"),
        "create in a terminating namespace: {late}"
    );

    // The contents go, except the object held by its finalizer, which gets a
    // deletionTimestamp.
    eventually(
        "the namespace's pods, configmaps and secrets to go",
        DEADLINE,
        async || {
            let pods = cluster
                .kubectl(&["get", "pods", "-n", "doomed", "-o", "name"])
                .await;
            let cms = cluster
                .kubectl(&["get", "cm", "-n", "doomed", "-o", "name"])
                .await;
            let secrets = cluster
                .kubectl(&["get", "secrets", "-n", "doomed", "-o", "name"])
                .await;
            let left = format!("{}{}{}", pods.stdout, cms.stdout, secrets.stdout);
            let left: Vec<&str> = left.lines().collect();
            if left == ["configmap/held"] {
                Ok(())
            } else {
                Err(format!("left: {left:?}"))
            }
        },
    )
    .await;
    let held = cluster.get_json(&["cm", "held", "-n", "doomed"]).await;
    assert!(
        held["metadata"]["deletionTimestamp"].is_string(),
        "a finalized object being deleted has a deletionTimestamp: {}",
        held["metadata"]
    );
    let ns = cluster.get_table(&["ns", "doomed"]).await;
    assert_eq!(
        ns.row("doomed").get("STATUS"),
        "Terminating",
        "held by the finalizer: {ns}"
    );

    // Removing the finalizer lets the object, then the namespace, go.
    cluster
        .kubectl_ok(&[
            "patch",
            "cm",
            "held",
            "-n",
            "doomed",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
        ])
        .await;
    eventually("namespace doomed to be gone", DEADLINE, async || {
        let out = cluster.kubectl(&["get", "ns", "doomed"]).await;
        if !out.success && out.stderr.contains("namespaces \"doomed\" not found") {
            Ok(())
        } else {
            Err(out.to_string())
        }
    })
    .await;
    let err = cluster
        .kubectl_err(&["get", "cm", "held", "-n", "doomed"])
        .await;
    assert!(err.contains("NotFound"), "{err}");

    // A plain `delete ns` waits until the namespace is gone.
    cluster.create_namespace("brief").await;
    cluster.create_configmap("brief", "c", &[]).await;
    let out = cluster
        .kubectl_ok(&["delete", "ns", "brief", "--timeout=30s"])
        .await;
    assert_eq!(out.trim(), "namespace \"brief\" deleted");
    let err = cluster.kubectl_err(&["get", "ns", "brief"]).await;
    assert_eq!(
        err.trim(),
        "Error from server (NotFound): namespaces \"brief\" not found"
    );
    let err = cluster
        .kubectl_err(&["get", "cm", "c", "-n", "brief"])
        .await;
    assert!(err.contains("NotFound"), "{err}");

    // The system namespaces are still there.
    let all = cluster.get_table(&["ns"]).await;
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        all.row(name);
    }

    // Checked last so a wording difference does not hide the behaviour above: the
    // message upstream prints for a create in a terminating namespace.
    assert!(
        late.stderr.contains(
            "configmaps \"late\" is forbidden: unable to create new content in namespace doomed because it is being terminated"
        ),
        "upstream wording for a create in a terminating namespace: {late}"
    );
}
