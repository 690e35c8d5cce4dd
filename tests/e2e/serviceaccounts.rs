//! Issue 4, ServiceAccounts and their tokens, as a user meets them with kubectl:
//! `kubectl create token` hands out a signed JWT that kubectl can then use (with no
//! client certificate) as `system:serviceaccount:NS:NAME`; a tampered token, a token for
//! another audience and a token whose ServiceAccount or pod is gone get 401. New pods run
//! as `default` with the projected token volume mounted; every namespace has
//! `kube-root-ca.crt`; a legacy token Secret gets filled and dies with its account; and a
//! token from one control plane is accepted by another sharing its etcd and PKI.

use std::path::{Path, PathBuf};

use k8s_openapi::ByteString;
use serde_json::{json, Value};

use crate::harness::{eventually, Cluster, DEADLINE};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const UNAUTHORIZED: &str = "error: You must be logged in to the server (Unauthorized)";

/// base64url (no padding, as in JWTs) → bytes, through k8s-openapi's base64 `ByteString`.
fn b64url_decode(text: &str) -> Vec<u8> {
    let mut std_b64: String = text
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    while !std_b64.len().is_multiple_of(4) {
        std_b64.push('=');
    }
    serde_json::from_value::<ByteString>(Value::String(std_b64))
        .unwrap_or_else(|e| panic!("{text:?} is not base64url: {e}"))
        .0
}

/// bytes → base64url without padding.
fn b64url_encode(bytes: &[u8]) -> String {
    let std_b64 = serde_json::to_value(ByteString(bytes.to_vec())).expect("encode");
    std_b64
        .as_str()
        .expect("a string")
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect()
}

/// The claims of a JWT (not verified: that is the server's job).
fn claims(token: &str) -> Value {
    let payload = token
        .split('.')
        .nth(1)
        .unwrap_or_else(|| panic!("not a JWT: {token:?}"));
    serde_json::from_slice(&b64url_decode(payload)).expect("the payload is JSON")
}

/// `kubectl create token ARGS`, trimmed.
async fn create_token(cluster: &Cluster, args: &[&str]) -> String {
    let mut all = vec!["create", "token"];
    all.extend_from_slice(args);
    let token = cluster.kubectl_ok(&all).await.trim().to_string();
    assert_eq!(token.split('.').count(), 3, "not a JWT: {token:?}");
    token
}

/// A kubeconfig naming the cluster (and trusting its CA) with no credential at all:
/// every request below authenticates only through `--token`.
fn credential_free_kubeconfig(cluster: &Cluster) -> PathBuf {
    cluster.kubeconfig_with_token("no-credentials.kubeconfig", None)
}

/// kubectl with `--token` and nothing else to authenticate with.
async fn kubectl_with_token(
    cluster: &Cluster,
    kubeconfig: &Path,
    token: &str,
    args: &[&str],
) -> crate::harness::Output {
    let flag = format!("--token={token}");
    let mut all = vec![flag.as_str()];
    all.extend_from_slice(args);
    cluster.kubectl_as(kubeconfig, &all, None).await
}

/// `kubectl auth whoami -o json` as the token's user: (username, groups, extra).
async fn whoami(cluster: &Cluster, kubeconfig: &Path, token: &str) -> Value {
    let out = kubectl_with_token(
        cluster,
        kubeconfig,
        token,
        &["auth", "whoami", "-o", "json"],
    )
    .await;
    assert!(out.success, "kubectl auth whoami with a token:\n{out}");
    let review: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("whoami printed invalid JSON ({e}):\n{out}"));
    assert_eq!(review["kind"], "SelfSubjectReview", "{review}");
    review["status"]["userInfo"].clone()
}

/// Asserts that kubectl with this token is refused with 401.
async fn assert_unauthorized(cluster: &Cluster, kubeconfig: &Path, token: &str, what: &str) {
    let out = kubectl_with_token(cluster, kubeconfig, token, &["get", "pods"]).await;
    assert!(!out.success, "{what}: should be refused:\n{out}");
    assert!(out.stderr.contains(UNAUTHORIZED), "{what}:\n{out}");
}

/// Waits until the controller has made the namespace's `default` ServiceAccount.
async fn wait_for_default_account(cluster: &Cluster, ns: &str) {
    eventually(
        &format!("the default ServiceAccount in {ns}"),
        DEADLINE,
        async || {
            let out = cluster.kubectl(&["get", "sa", "default", "-n", ns]).await;
            if out.success {
                Ok(())
            } else {
                Err(out.to_string())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_token_authenticates_as_the_service_account() {
    let cluster = Cluster::start().await;
    let nocreds = credential_free_kubeconfig(&cluster);
    cluster
        .kubectl_ok(&["create", "serviceaccount", "robot"])
        .await;
    let sa_uid = cluster
        .kubectl_ok(&["get", "sa", "robot", "-o", "jsonpath={.metadata.uid}"])
        .await;

    // The token carries Kubernetes' claims.
    let token = create_token(&cluster, &["robot"]).await;
    let c = claims(&token);
    assert_eq!(c["iss"], ISSUER, "{c}");
    assert_eq!(c["sub"], "system:serviceaccount:default:robot", "{c}");
    assert_eq!(c["aud"], json!([ISSUER]), "{c}");
    assert_eq!(c["kubernetes.io"]["namespace"], "default", "{c}");
    assert_eq!(c["kubernetes.io"]["serviceaccount"]["name"], "robot", "{c}");
    assert_eq!(
        c["kubernetes.io"]["serviceaccount"]["uid"],
        sa_uid.as_str(),
        "{c}"
    );
    let lifetime = |c: &Value| c["exp"].as_i64().unwrap_or(0) - c["iat"].as_i64().unwrap_or(0);
    assert_eq!(lifetime(&c), 3600, "default lifetime: {c}");
    assert_eq!(c["nbf"], c["iat"], "{c}");
    assert!(c["jti"].as_str().is_some_and(|j| !j.is_empty()), "{c}");

    // --duration and --audience are honoured; too short a duration names the field.
    let short = create_token(&cluster, &["robot", "--duration", "20m"]).await;
    assert_eq!(lifetime(&claims(&short)), 1200);
    let err = cluster
        .kubectl_err(&["create", "token", "robot", "--duration", "1m"])
        .await;
    assert!(
        err.contains("spec.expirationSeconds: Invalid value: 60: may not specify a duration less than 10 minutes"),
        "{err}"
    );
    let err = cluster.kubectl_err(&["create", "token", "ghost"]).await;
    assert!(err.contains("serviceaccounts \"ghost\" not found"), "{err}");

    // kubectl with only the token lists pods and knows who it is.
    let out = kubectl_with_token(&cluster, &nocreds, &token, &["get", "pods"]).await;
    assert!(
        out.success,
        "listing pods with a ServiceAccount token:\n{out}"
    );
    let user = whoami(&cluster, &nocreds, &token).await;
    assert_eq!(
        user["username"], "system:serviceaccount:default:robot",
        "{user}"
    );
    assert_eq!(user["uid"], sa_uid.as_str(), "{user}");
    assert_eq!(
        user["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:default",
            "system:authenticated"
        ]),
        "{user}"
    );

    // A token whose payload was changed (signature kept) is refused; so is one for
    // another audience.
    let parts: Vec<&str> = token.split('.').collect();
    let mut forged = claims(&token);
    forged["sub"] = json!("system:serviceaccount:kube-system:default");
    forged["kubernetes.io"]["namespace"] = json!("kube-system");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64url_encode(forged.to_string().as_bytes()),
        parts[2]
    );
    assert_unauthorized(&cluster, &nocreds, &tampered, "a tampered token").await;
    let elsewhere = create_token(&cluster, &["robot", "--audience", "https://vault.example"]).await;
    assert_unauthorized(
        &cluster,
        &nocreds,
        &elsewhere,
        "a token for another audience",
    )
    .await;

    // A pod-bound token works while the pod exists.
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "worker"},
        "spec": {"serviceAccountName": "robot", "containers": [{"name": "c", "image": "app.wasm"}]},
    });
    cluster.create_stdin(&pod.to_string()).await;
    let pod_uid = cluster
        .kubectl_ok(&["get", "pod", "worker", "-o", "jsonpath={.metadata.uid}"])
        .await;
    let bound = create_token(
        &cluster,
        &[
            "robot",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "worker",
            "--bound-object-uid",
            &pod_uid,
        ],
    )
    .await;
    assert_eq!(
        claims(&bound)["kubernetes.io"]["pod"],
        json!({"name": "worker", "uid": pod_uid})
    );
    let user = whoami(&cluster, &nocreds, &bound).await;
    assert_eq!(
        user["extra"]["authentication.kubernetes.io/pod-name"],
        json!(["worker"]),
        "{user}"
    );
    let err = cluster
        .kubectl_err(&[
            "create",
            "token",
            "robot",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "worker",
            "--bound-object-uid",
            "not-its-uid",
        ])
        .await;
    assert!(err.contains("does not match the UID in record"), "{err}");
    let err = cluster
        .kubectl_err(&[
            "create",
            "token",
            "robot",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "nobody",
        ])
        .await;
    assert!(err.contains("pods \"nobody\" not found"), "{err}");
    cluster
        .kubectl_ok(&["delete", "pod", "worker", "--wait=false"])
        .await;
    eventually("the pod-bound token to be refused", DEADLINE, async || {
        let out = kubectl_with_token(&cluster, &nocreds, &bound, &["get", "pods"]).await;
        if out.stderr.contains(UNAUTHORIZED) {
            Ok(())
        } else {
            Err(out.to_string())
        }
    })
    .await;

    // Deleting the ServiceAccount invalidates its tokens, even recreated under its name.
    cluster
        .kubectl_ok(&["delete", "serviceaccount", "robot"])
        .await;
    cluster
        .kubectl_ok(&["create", "serviceaccount", "robot"])
        .await;
    eventually(
        "the token of the deleted account to be refused",
        DEADLINE,
        async || {
            let out = kubectl_with_token(&cluster, &nocreds, &token, &["get", "pods"]).await;
            if out.stderr.contains(UNAUTHORIZED) {
                Ok(())
            } else {
                Err(out.to_string())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_as_a_service_account_with_the_token_volume() {
    let cluster = Cluster::start().await;

    // A pod in a namespace created a moment ago: admission waits for `default`.
    cluster.kubectl_ok(&["create", "namespace", "team"]).await;
    cluster
        .kubectl_ok(&["run", "web", "-n", "team", "--image=app.wasm"])
        .await;
    let pod = cluster.get_json(&["pod", "web", "-n", "team"]).await;
    let spec = &pod["spec"];
    assert_eq!(spec["serviceAccountName"], "default", "{spec}");
    assert_eq!(spec["serviceAccount"], "default", "{spec}");
    let volumes = spec["volumes"].as_array().expect("volumes");
    assert_eq!(volumes.len(), 1, "{spec}");
    let volume = &volumes[0];
    let name = volume["name"].as_str().expect("a volume name");
    assert!(
        name.len() == "kube-api-access-".len() + 5 && name.starts_with("kube-api-access-"),
        "{name}"
    );
    assert_eq!(
        volume["projected"],
        json!({
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace",
                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        }),
        "{volume}"
    );
    assert_eq!(
        spec["containers"][0]["volumeMounts"],
        json!([{"name": name, "mountPath": MOUNT_PATH, "readOnly": true}]),
        "{spec}"
    );

    // automountServiceAccountToken: false on the pod, or on its account, means no volume.
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "quiet", "namespace": "team"},
        "spec": {"automountServiceAccountToken": false,
                 "containers": [{"name": "c", "image": "app.wasm"}]},
    });
    cluster.create_stdin(&pod.to_string()).await;
    let quiet = cluster.get_json(&["pod", "quiet", "-n", "team"]).await;
    assert!(quiet["spec"].get("volumes").is_none(), "{quiet}");
    assert!(
        quiet["spec"]["containers"][0].get("volumeMounts").is_none(),
        "{quiet}"
    );
    let account = json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "silent", "namespace": "team"},
        "automountServiceAccountToken": false,
    });
    cluster.create_stdin(&account.to_string()).await;
    cluster
        .kubectl_ok(&[
            "run",
            "mute",
            "-n",
            "team",
            "--image=app.wasm",
            "--overrides",
            r#"{"spec":{"serviceAccountName":"silent"}}"#,
        ])
        .await;
    let mute = cluster.get_json(&["pod", "mute", "-n", "team"]).await;
    assert_eq!(mute["spec"]["serviceAccountName"], "silent", "{mute}");
    assert!(mute["spec"].get("volumes").is_none(), "{mute}");

    // A pod naming an account that does not exist is forbidden.
    let err = cluster
        .kubectl_err(&[
            "run",
            "lost",
            "-n",
            "team",
            "--image=app.wasm",
            "--overrides",
            r#"{"spec":{"serviceAccountName":"ghost"}}"#,
        ])
        .await;
    assert!(
        err.contains("pods \"lost\" is forbidden: error looking up service account team/ghost: serviceaccount \"ghost\" not found"),
        "{err}"
    );

    // Pods of a Deployment get the volume too (the ReplicaSet controller creates them).
    cluster
        .kubectl_ok(&[
            "create",
            "deployment",
            "api",
            "-n",
            "team",
            "--image=app.wasm",
        ])
        .await;
    let pods = eventually("the Deployment's pod", DEADLINE, async || {
        let list = cluster
            .get_json(&["pods", "-n", "team", "-l", "app=api"])
            .await;
        match list["items"].as_array() {
            Some(items) if !items.is_empty() => Ok(items.clone()),
            _ => Err(list.to_string()),
        }
    })
    .await;
    let mounts = &pods[0]["spec"]["containers"][0]["volumeMounts"];
    assert_eq!(mounts[0]["mountPath"], MOUNT_PATH, "{}", pods[0]);

    // Every namespace gets kube-root-ca.crt with the cluster CA; deleting or editing
    // it is undone.
    let ca = std::fs::read_to_string(cluster.data_dir.join("pki/ca.crt")).expect("read ca.crt");
    let root_ca = async |what: &str| {
        eventually(what, DEADLINE, async || {
            let out = cluster
                .kubectl(&[
                    "get",
                    "configmap",
                    "kube-root-ca.crt",
                    "-n",
                    "team",
                    "-o",
                    "json",
                ])
                .await;
            if !out.success {
                return Err(out.to_string());
            }
            let cm: Value = serde_json::from_str(&out.stdout).map_err(|e| e.to_string())?;
            if cm["data"] == json!({"ca.crt": ca}) {
                Ok(())
            } else {
                Err(cm.to_string())
            }
        })
        .await
    };
    root_ca("kube-root-ca.crt in a new namespace").await;
    cluster
        .kubectl_ok(&["delete", "configmap", "kube-root-ca.crt", "-n", "team"])
        .await;
    root_ca("kube-root-ca.crt to be recreated").await;
    cluster
        .kubectl_ok(&[
            "patch",
            "configmap",
            "kube-root-ca.crt",
            "-n",
            "team",
            "-p",
            r#"{"data":{"ca.crt":"forged","extra":"x"}}"#,
        ])
        .await;
    root_ca("kube-root-ca.crt to be repaired").await;
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        cluster
            .kubectl_ok(&["get", "configmap", "kube-root-ca.crt", "-n", ns])
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_token_secret_is_filled_and_dies_with_its_account() {
    let cluster = Cluster::start().await;
    let nocreds = credential_free_kubeconfig(&cluster);
    cluster
        .kubectl_ok(&["create", "serviceaccount", "bot"])
        .await;
    let sa_uid = cluster
        .kubectl_ok(&["get", "sa", "bot", "-o", "jsonpath={.metadata.uid}"])
        .await;
    cluster
        .apply_stdin(
            r#"
apiVersion: v1
kind: Secret
metadata:
  name: bot-token
  annotations:
    kubernetes.io/service-account.name: bot
type: kubernetes.io/service-account-token
"#,
        )
        .await;
    let secret = eventually("the token Secret to be filled", DEADLINE, async || {
        let s = cluster.get_json(&["secret", "bot-token"]).await;
        if s["data"]["token"].is_string() {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    })
    .await;
    let field = |key: &str| {
        let b64 = secret["data"][key].as_str().unwrap_or_default().to_string();
        let bytes = serde_json::from_value::<ByteString>(Value::String(b64))
            .expect("base64")
            .0;
        String::from_utf8(bytes).expect("utf-8")
    };
    let ca = std::fs::read_to_string(cluster.data_dir.join("pki/ca.crt")).expect("read ca.crt");
    assert_eq!(field("ca.crt"), ca);
    assert_eq!(field("namespace"), "default");
    assert_eq!(
        secret["metadata"]["annotations"]["kubernetes.io/service-account.uid"],
        sa_uid.as_str(),
        "{secret}"
    );
    let token = field("token");
    let c = claims(&token);
    assert_eq!(c["iss"], "kubernetes/serviceaccount", "{c}");
    assert_eq!(
        c["kubernetes.io/serviceaccount/secret.name"], "bot-token",
        "{c}"
    );
    assert!(c.get("exp").is_none(), "legacy tokens do not expire: {c}");

    let user = whoami(&cluster, &nocreds, &token).await;
    assert_eq!(
        user["username"], "system:serviceaccount:default:bot",
        "{user}"
    );

    // Deleting the account deletes the Secret, and its token stops working.
    cluster
        .kubectl_ok(&["delete", "serviceaccount", "bot"])
        .await;
    eventually("the token Secret to be deleted", DEADLINE, async || {
        let out = cluster.kubectl(&["get", "secret", "bot-token"]).await;
        if !out.success && out.stderr.contains("NotFound") {
            Ok(())
        } else {
            Err(out.to_string())
        }
    })
    .await;
    assert_unauthorized(&cluster, &nocreds, &token, "the token of a deleted Secret").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_one_control_plane_works_on_another() {
    let cluster = Cluster::builder().external_etcd().start().await;
    wait_for_default_account(&cluster, "default").await;
    let second = cluster.start_second_server().await;
    let second_url = std::fs::read_to_string(&second.kubeconfig)
        .expect("read the second kubeconfig")
        .lines()
        .find_map(|l| l.trim().strip_prefix("server:"))
        .map(|s| s.trim().trim_matches('"').to_string())
        .expect("the second kubeconfig names its server");
    let nocreds = credential_free_kubeconfig(&cluster);
    let token = create_token(&cluster, &["default"]).await;
    let server_flag = format!("--server={second_url}");
    let out = kubectl_with_token(
        &cluster,
        &nocreds,
        &token,
        &[&server_flag, "get", "sa", "default"],
    )
    .await;
    assert!(
        out.success,
        "the second control plane should accept the first one's token:\n{out}\n{}",
        second.log_tail()
    );
}
