//! Mutating admission on create: today Kubernetes' ServiceAccount admission plugin for
//! pods.
//!
//! Every new pod runs as a ServiceAccount: `spec.serviceAccountName` (and its deprecated
//! alias `spec.serviceAccount`) default to `default`, and the account must exist, else
//! the create is forbidden with upstream's message. Unless `automountServiceAccountToken`
//! is false on the pod (or, when the pod does not say, on the account), the pod gets
//! upstream's projected volume `kube-api-access-<random>` — a bound token (3607 s), the
//! cluster CA from the `kube-root-ca.crt` ConfigMap and the namespace from the downward
//! API — mounted read-only at `/var/run/secrets/kubernetes.io/serviceaccount` in every
//! container and init container that does not mount something there already. A pod
//! without image pull secrets inherits the account's.
//!
//! The `default` account of a new namespace is made by a controller a moment after the
//! namespace; a pod created in between would be refused, so for `default` in a young
//! namespace the lookup is retried for a bounded time (upstream retries it too, ten
//! times). Lookups read the in-memory [`Lister`](super::lister::Lister) first and etcd
//! on a miss.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng as _;
use serde_json::{json, Map, Value};

use super::lister::Lookup;
use super::objects::Objects;
use super::status::{ApiError, ApiResult};
use crate::registry::ResourceDef;

/// The ServiceAccount a pod runs as when it names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// Where the token volume is mounted in containers.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Prefix of the token volume's name; a random suffix follows.
pub const TOKEN_VOLUME_PREFIX: &str = "kube-api-access-";
/// The ConfigMap with the cluster CA, published in every namespace.
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";
/// Lifetime the projected token asks for: upstream's 3607 s, one hour and a marker that
/// lets the API server recognise (and extend) these tokens.
pub const PROJECTED_TOKEN_EXPIRATION_SECONDS: i64 = 3607;
/// Marks pods mirrored from a node's static manifests, which admission leaves alone.
const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// A namespace this young may still be waiting for its `default` ServiceAccount.
const YOUNG_NAMESPACE: Duration = Duration::from_secs(60);
/// How long a pod create waits for the `default` ServiceAccount of a young namespace.
const DEFAULT_ACCOUNT_WAIT: Duration = Duration::from_secs(10);
/// Pause between lookups while waiting.
const DEFAULT_ACCOUNT_POLL: Duration = Duration::from_millis(100);

/// The ServiceAccount lister's feed, for [`Objects::spawn_background`].
pub fn run_service_account_lister(objects: &Objects) -> impl Future<Output = ()> + Send + 'static {
    let feed = service_accounts_def(objects).map(|def| {
        let cache = objects.cache(&def);
        objects
            .service_accounts
            .clone()
            .run(objects.store.clone(), cache, def.key_prefix())
    });
    async move {
        if let Some(feed) = feed {
            feed.await;
        }
    }
}

fn service_accounts_def(objects: &Objects) -> Option<Arc<ResourceDef>> {
    objects.registry.lookup("", "v1", "serviceaccounts")
}

/// The ServiceAccount `ns/name`: from the lister, else from etcd. `None` if it does not
/// exist.
pub async fn service_account(
    objects: &Objects,
    ns: &str,
    name: &str,
) -> ApiResult<Option<Arc<Value>>> {
    let def = service_accounts_def(objects)
        .ok_or_else(|| ApiError::internal("serviceaccounts are not registered"))?;
    let key = def.key(Some(ns), name);
    if let Lookup::Found(sa) = objects.service_accounts.lookup(&key) {
        return Ok(Some(sa));
    }
    match objects.get(&def, Some(ns), name).await {
        Ok(sa) => Ok(Some(Arc::new(sa))),
        Err(e) if e.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

/// Runs the mutating admission plugins for a create of `obj` (already defaulted).
pub async fn admit_create(
    objects: &Objects,
    def: &ResourceDef,
    ns: Option<&str>,
    obj: &mut Value,
) -> ApiResult<()> {
    match (def.group, def.plural, ns) {
        ("", "pods", Some(ns)) => {
            // NamespaceLifecycle comes first in Kubernetes' admission chain: a missing or
            // terminating namespace is reported as such, not as a missing account.
            objects
                .check_namespace_open(def, ns, &pod_name(obj))
                .await?;
            admit_pod(objects, def, ns, obj).await
        }
        _ => Ok(()),
    }
}

/// The ServiceAccount plugin for one new pod.
async fn admit_pod(
    objects: &Objects,
    def: &ResourceDef,
    ns: &str,
    pod: &mut Value,
) -> ApiResult<()> {
    if pod
        .pointer(&format!(
            "/metadata/annotations/{}",
            MIRROR_POD_ANNOTATION.replace('/', "~1")
        ))
        .is_some()
    {
        return Ok(());
    }
    // A spec that is not an object is left for validation to refuse.
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let account = match spec.get("serviceAccountName").and_then(Value::as_str) {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => DEFAULT_SERVICE_ACCOUNT.to_string(),
    };
    spec.insert("serviceAccountName".into(), json!(account));
    spec.insert("serviceAccount".into(), json!(account));

    let Some(sa) = find_service_account(objects, ns, &account).await? else {
        let name = pod_name(pod);
        return Err(ApiError::forbidden(format!(
            "{} {name:?} is forbidden: error looking up service account {ns}/{account}: serviceaccount {account:?} not found",
            def.group_resource()
        )));
    };
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    if should_automount(spec, &sa) {
        mount_service_account_token(spec);
    }
    let has_pull_secrets = spec
        .get("imagePullSecrets")
        .and_then(Value::as_array)
        .is_some_and(|s| !s.is_empty());
    if !has_pull_secrets {
        if let Some(secrets) = sa.get("imagePullSecrets").and_then(Value::as_array) {
            let refs: Vec<Value> = secrets
                .iter()
                .filter_map(|s| s.get("name").and_then(Value::as_str))
                .map(|name| json!({"name": name}))
                .collect();
            if !refs.is_empty() {
                spec.insert("imagePullSecrets".into(), Value::Array(refs));
            }
        }
    }
    Ok(())
}

/// The name admission errors use: the name, else the generateName prefix (upstream's
/// wording for objects whose name is not generated yet).
fn pod_name(pod: &Value) -> String {
    let meta = |f: &str| {
        pod.pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    meta("name")
        .or_else(|| meta("generateName"))
        .unwrap_or_else(|| "Unknown".to_string())
}

/// Looks the account up; for `default` in a young namespace, keeps looking for a while.
async fn find_service_account(
    objects: &Objects,
    ns: &str,
    name: &str,
) -> ApiResult<Option<Arc<Value>>> {
    if let Some(sa) = service_account(objects, ns, name).await? {
        return Ok(Some(sa));
    }
    if name != DEFAULT_SERVICE_ACCOUNT || !namespace_is_young(objects, ns).await {
        return Ok(None);
    }
    let deadline = tokio::time::Instant::now() + DEFAULT_ACCOUNT_WAIT;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(DEFAULT_ACCOUNT_POLL).await;
        if let Some(sa) = service_account(objects, ns, name).await? {
            return Ok(Some(sa));
        }
    }
    tracing::info!(
        namespace = ns,
        "no default service account appeared in time"
    );
    Ok(None)
}

async fn namespace_is_young(objects: &Objects, ns: &str) -> bool {
    let Some(def) = objects.registry.lookup("", "v1", "namespaces") else {
        return false;
    };
    let Ok(namespace) = objects.get(&def, None, ns).await else {
        return false;
    };
    namespace
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .is_some_and(|created| {
            let age = Utc::now().signed_duration_since(created.with_timezone(&Utc));
            age.to_std().map_or(true, |age| age < YOUNG_NAMESPACE)
        })
}

/// The pod's own `automountServiceAccountToken` wins; else the account's; else true.
fn should_automount(spec: &Map<String, Value>, sa: &Value) -> bool {
    spec.get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| {
            sa.get("automountServiceAccountToken")
                .and_then(Value::as_bool)
        })
        .unwrap_or(true)
}

/// Adds the token volume and its mounts, as upstream's `mountServiceAccountToken`.
fn mount_service_account_token(spec: &mut Map<String, Value>) {
    let volume_names: Vec<String> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter_map(|v| v.get("name").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    // A pod that already has a token volume (say, copied from another pod) keeps it.
    let existing = volume_names
        .iter()
        .find(|n| n.starts_with(TOKEN_VOLUME_PREFIX))
        .cloned();
    let volume_name = existing.clone().unwrap_or_else(|| loop {
        let candidate = format!("{TOKEN_VOLUME_PREFIX}{}", random_suffix());
        if !volume_names.contains(&candidate) {
            break candidate;
        }
    });
    let mount = json!({"name": volume_name, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH});
    let mut mounted = false;
    for list in ["initContainers", "containers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for container in containers.iter_mut().filter_map(Value::as_object_mut) {
            let mounts = container
                .entry("volumeMounts")
                .or_insert_with(|| Value::Array(Vec::new()));
            if !mounts.is_array() {
                *mounts = Value::Array(Vec::new());
            }
            let Some(mounts) = mounts.as_array_mut() else {
                continue;
            };
            let taken = mounts
                .iter()
                .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(TOKEN_MOUNT_PATH));
            if !taken {
                mounts.push(mount.clone());
                mounted = true;
            }
        }
    }
    if mounted && existing.is_none() {
        let volumes = spec
            .entry("volumes")
            .or_insert_with(|| Value::Array(Vec::new()));
        if !volumes.is_array() {
            *volumes = Value::Array(Vec::new());
        }
        if let Some(volumes) = volumes.as_array_mut() {
            volumes.push(token_volume(&volume_name));
        }
    }
}

/// The projected volume, written out with the defaults Kubernetes shows.
fn token_volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "sources": [
                {"serviceAccountToken": {
                    "expirationSeconds": PROJECTED_TOKEN_EXPIRATION_SECONDS,
                    "path": "token",
                }},
                {"configMap": {
                    "name": ROOT_CA_CONFIG_MAP,
                    "items": [{"key": "ca.crt", "path": "ca.crt"}],
                }},
                {"downwardAPI": {
                    "items": [{
                        "path": "namespace",
                        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                    }],
                }},
            ],
            "defaultMode": 420,
        },
    })
}

/// Five characters from the alphabet of Kubernetes' name generator.
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::apiserver::allocator::ServiceAllocator;
    use crate::apiserver::objects::{DeleteOptions, Ownership};
    use crate::registry::Registry;
    use crate::storage::etcd::tests::{test_etcd, TestEtcd};
    use crate::storage::Store;

    /// An object layer on a real etcd with the system namespaces, its background tasks
    /// running (aborted when the handle drops with the test).
    pub(crate) struct TestObjects {
        pub objects: Arc<Objects>,
        _background: tokio::task::JoinHandle<()>,
        _etcd: TestEtcd,
    }

    impl Drop for TestObjects {
        fn drop(&mut self) {
            self._background.abort();
        }
    }

    pub(crate) async fn test_objects() -> TestObjects {
        let etcd = test_etcd().await;
        let store: Arc<dyn Store> = etcd.store.clone();
        let cidr = "127.96.0.0/16".parse().expect("cidr");
        let allocator = ServiceAllocator::new(store.clone(), cidr, (30000, 32767));
        let objects = Arc::new(Objects::new(store, Registry::builtin(), allocator));
        objects
            .ensure_system_namespaces()
            .await
            .expect("system namespaces");
        let background = objects.spawn_background();
        TestObjects {
            objects,
            _background: background,
            _etcd: etcd,
        }
    }

    /// Creates `obj` (a core/v1 object of resource `plural`) in `default`.
    pub(crate) async fn create(objects: &Objects, plural: &str, obj: Value) -> ApiResult<Value> {
        let def = objects
            .registry
            .lookup("", "v1", plural)
            .expect("registered");
        objects
            .create(&def, Some("default"), obj, false, Ownership::Update("test"))
            .await
    }

    pub(crate) async fn delete(objects: &Objects, plural: &str, name: &str) {
        let def = objects
            .registry
            .lookup("", "v1", plural)
            .expect("registered");
        objects
            .delete(
                &def,
                Some("default"),
                name,
                &DeleteOptions::default(),
                false,
            )
            .await
            .expect("delete");
    }

    fn pod(account: Option<&str>) -> Value {
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "app.wasm"}]},
        });
        if let Some(a) = account {
            pod["spec"]["serviceAccountName"] = json!(a);
        }
        pod
    }

    #[tokio::test]
    async fn pod_create_runs_the_service_account_plugin() {
        let t = test_objects().await;
        let objects = &t.objects;
        let err = create(objects, "pods", pod(Some("ghost")))
            .await
            .expect_err("missing account");
        assert_eq!(err.code, 403);
        assert_eq!(
            err.message,
            "pods \"p\" is forbidden: error looking up service account default/ghost: serviceaccount \"ghost\" not found"
        );

        // A missing namespace is reported before the missing account.
        let pods = objects.registry.lookup("", "v1", "pods").expect("pods");
        let err = objects
            .create(
                &pods,
                Some("nope"),
                pod(None),
                false,
                Ownership::Update("test"),
            )
            .await
            .expect_err("missing namespace");
        assert_eq!(
            (err.code, err.message.as_str()),
            (404, "namespaces \"nope\" not found")
        );

        let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "robot"},
                        "imagePullSecrets": [{"name": "registry"}]});
        create(objects, "serviceaccounts", sa)
            .await
            .expect("account");
        let created = create(objects, "pods", pod(Some("robot")))
            .await
            .expect("pod");
        let spec = &created["spec"];
        assert_eq!(spec["serviceAccount"], "robot");
        assert_eq!(spec["imagePullSecrets"], json!([{"name": "registry"}]));
        let volume = spec["volumes"][0]["name"].as_str().expect("token volume");
        assert!(volume.starts_with(TOKEN_VOLUME_PREFIX));
        assert_eq!(spec["containers"][0]["volumeMounts"][0]["name"], volume);

        // `default` is waited for in a young namespace, and appears meanwhile.
        let objects2 = objects.clone();
        let waiting = tokio::spawn(async move {
            let mut p = pod(None);
            p["metadata"]["name"] = json!("q");
            create(&objects2, "pods", p).await
        });
        let sa =
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}});
        create(objects, "serviceaccounts", sa)
            .await
            .expect("default account");
        let created = waiting.await.expect("join").expect("pod q");
        assert_eq!(created["spec"]["serviceAccountName"], "default");
    }

    fn spec(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn token_volume_is_mounted_in_every_container_once() {
        let mut s = spec(json!({
            "initContainers": [{"name": "init", "image": "i"}],
            "containers": [
                {"name": "a", "image": "a"},
                {"name": "b", "image": "b", "volumeMounts": [
                    {"name": "mine", "mountPath": TOKEN_MOUNT_PATH}
                ]},
            ],
            "volumes": [{"name": "mine", "emptyDir": {}}],
        }));
        mount_service_account_token(&mut s);
        let volumes = s["volumes"].as_array().expect("volumes");
        assert_eq!(volumes.len(), 2);
        let name = volumes[1]["name"].as_str().expect("name");
        assert!(
            name.starts_with(TOKEN_VOLUME_PREFIX) && name.len() == TOKEN_VOLUME_PREFIX.len() + 5
        );
        let sources = &volumes[1]["projected"]["sources"];
        assert_eq!(sources[0]["serviceAccountToken"]["expirationSeconds"], 3607);
        assert_eq!(sources[0]["serviceAccountToken"]["path"], "token");
        assert_eq!(sources[1]["configMap"]["name"], ROOT_CA_CONFIG_MAP);
        assert_eq!(
            sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
            "metadata.namespace"
        );
        assert_eq!(volumes[1]["projected"]["defaultMode"], 420);
        let expected = json!([{"name": name, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH}]);
        assert_eq!(s["initContainers"][0]["volumeMounts"], expected);
        assert_eq!(s["containers"][0]["volumeMounts"], expected);
        // The container that mounts its own volume there keeps it.
        assert_eq!(
            s["containers"][1]["volumeMounts"].as_array().map(Vec::len),
            Some(1)
        );
    }

    #[test]
    fn no_volume_when_every_container_mounts_the_path_itself() {
        let mut s = spec(json!({
            "containers": [{"name": "a", "image": "a", "volumeMounts": [
                {"name": "own", "mountPath": TOKEN_MOUNT_PATH}
            ]}],
        }));
        mount_service_account_token(&mut s);
        assert!(s.get("volumes").is_none());
    }

    #[test]
    fn existing_token_volume_is_reused() {
        let mut s = spec(json!({
            "containers": [{"name": "a", "image": "a"}],
            "volumes": [{"name": "kube-api-access-abcde", "emptyDir": {}}],
        }));
        mount_service_account_token(&mut s);
        assert_eq!(s["volumes"].as_array().map(Vec::len), Some(1));
        assert_eq!(
            s["containers"][0]["volumeMounts"][0]["name"],
            "kube-api-access-abcde"
        );
    }

    #[test]
    fn automount_follows_pod_then_account() {
        let sa_off = json!({"automountServiceAccountToken": false});
        let sa_unset = json!({});
        assert!(should_automount(&spec(json!({})), &sa_unset));
        assert!(!should_automount(&spec(json!({})), &sa_off));
        assert!(should_automount(
            &spec(json!({"automountServiceAccountToken": true})),
            &sa_off
        ));
        assert!(!should_automount(
            &spec(json!({"automountServiceAccountToken": false})),
            &sa_unset
        ));
    }

    #[test]
    fn error_name_falls_back_to_generate_name() {
        assert_eq!(pod_name(&json!({"metadata": {"name": "p"}})), "p");
        assert_eq!(
            pod_name(&json!({"metadata": {"generateName": "web-"}})),
            "web-"
        );
        assert_eq!(pod_name(&json!({})), "Unknown");
    }
}
