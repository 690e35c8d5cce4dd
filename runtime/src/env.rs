//! A container's environment, resolved the way the kubelet does it.
//!
//! Precedence, lowest first: the service variables the agent passes in, then `envFrom`
//! (ConfigMaps and Secrets, with `prefix`; keys that are not valid variable names are
//! skipped), then `env` (literal values with `$(VAR)` expansion against the variables
//! defined so far, or `valueFrom`). A later definition of a name replaces the value but
//! keeps the name's first position, so the result is deterministic. Nothing from the
//! agent's own environment is ever included.
//!
//! Errors for missing objects and keys read like the kubelet's, so the agent can show
//! them as the `CreateContainerConfigError` message.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};

use crate::volumes::downward::{self, DownwardError};
use crate::volumes::{ObjectSource, SourceError};

/// What the node knows about itself and the pod, beyond the pod object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeFacts {
    /// `spec.nodeName`'s value on this node.
    pub node_name: String,
    /// The node's primary IP (`status.hostIP`, `status.hostIPs`).
    pub host_ip: String,
    /// The pod's IP (`status.podIP`, `status.podIPs`); empty when not yet known.
    pub pod_ip: String,
}

/// Why a container's environment cannot be built (the container then waits with
/// `CreateContainerConfigError`).
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// A non-optional ConfigMap does not exist.
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    /// A non-optional Secret does not exist.
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    /// A non-optional configMapKeyRef names a missing key.
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKeyNotFound {
        /// The key.
        key: String,
        /// The pod's namespace.
        namespace: String,
        /// The ConfigMap.
        name: String,
    },
    /// A non-optional secretKeyRef names a missing key.
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKeyNotFound {
        /// The key.
        key: String,
        /// The pod's namespace.
        namespace: String,
        /// The Secret.
        name: String,
    },
    /// A fieldRef or resourceFieldRef cannot be rendered.
    #[error(transparent)]
    Downward(#[from] DownwardError),
    /// Reading an object from the API failed.
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// A resolved environment plus what was dropped on the way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedEnv {
    /// The variables, in first-definition order.
    pub vars: Vec<(String, String)>,
    /// For each envFrom source with keys that are not valid variable names, a message
    /// like the kubelet's `InvalidEnvironmentVariableNames` event.
    pub skipped: Vec<String>,
}

/// The environment of `container` in `pod` (see the module docs for the order).
pub async fn container_env<S: ObjectSource>(
    source: &S,
    pod: &Pod,
    container: &Container,
    node: &NodeFacts,
    service_env: &[(String, String)],
) -> Result<Vec<(String, String)>, EnvError> {
    Ok(
        resolve_container_env(source, pod, container, node, service_env)
            .await?
            .vars,
    )
}

/// [`container_env`], also reporting the envFrom keys skipped as invalid names.
pub async fn resolve_container_env<S: ObjectSource>(
    source: &S,
    pod: &Pod,
    container: &Container,
    node: &NodeFacts,
    service_env: &[(String, String)],
) -> Result<ResolvedEnv, EnvError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut objects = ObjectCache::new(source, namespace);
    let mut env = OrderedEnv::default();
    let mut skipped = Vec::new();
    for (k, v) in service_env {
        env.set(k.clone(), v.clone());
    }

    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or("");
        let (kind, name, entries) = if let Some(cm_ref) = &from.config_map_ref {
            let Some(cm) = objects
                .config_map(&cm_ref.name, cm_ref.optional.unwrap_or(false))
                .await?
            else {
                continue;
            };
            let entries: Vec<(String, String)> =
                cm.data.clone().unwrap_or_default().into_iter().collect();
            ("configMap", cm_ref.name.clone(), entries)
        } else if let Some(secret_ref) = &from.secret_ref {
            let Some(secret) = objects
                .secret(&secret_ref.name, secret_ref.optional.unwrap_or(false))
                .await?
            else {
                continue;
            };
            ("secret", secret_ref.name.clone(), secret_entries(secret))
        } else {
            continue;
        };
        let mut invalid = Vec::new();
        for (key, value) in entries {
            let name = format!("{prefix}{key}");
            if is_env_var_name(&name) {
                env.set(name, value);
            } else {
                invalid.push(name);
            }
        }
        if !invalid.is_empty() {
            invalid.sort();
            let message = format!(
                "Keys [{}] from the EnvFrom {kind} {namespace}/{name} were skipped since they are considered invalid environment variable names.",
                invalid.join(", ")
            );
            tracing::warn!(container = %container.name, %message, "skipped envFrom keys");
            skipped.push(message);
        }
    }

    for var in container.env.iter().flatten() {
        let value = if let Some(value) = var.value.as_deref().filter(|v| !v.is_empty()) {
            expand(value, &env.vars)
        } else if let Some(from) = &var.value_from {
            let resolved = if let Some(sel) = &from.config_map_key_ref {
                let optional = sel.optional.unwrap_or(false);
                match objects.config_map(&sel.name, optional).await? {
                    None => None,
                    Some(cm) => match cm.data.as_ref().and_then(|d| d.get(&sel.key)) {
                        Some(v) => Some(v.clone()),
                        None if optional => None,
                        None => {
                            return Err(EnvError::ConfigMapKeyNotFound {
                                key: sel.key.clone(),
                                namespace: namespace.into(),
                                name: sel.name.clone(),
                            })
                        }
                    },
                }
            } else if let Some(sel) = &from.secret_key_ref {
                let optional = sel.optional.unwrap_or(false);
                match objects.secret(&sel.name, optional).await? {
                    None => None,
                    Some(secret) => match secret_value(secret, &sel.key) {
                        Some(v) => Some(v),
                        None if optional => None,
                        None => {
                            return Err(EnvError::SecretKeyNotFound {
                                key: sel.key.clone(),
                                namespace: namespace.into(),
                                name: sel.name.clone(),
                            })
                        }
                    },
                }
            } else if let Some(field) = &from.field_ref {
                Some(pod_field(pod, &field.field_path, node)?)
            } else if let Some(resource) = &from.resource_field_ref {
                let target = match resource.container_name.as_deref().filter(|n| !n.is_empty()) {
                    Some(name) => downward::find_container(pod, name)
                        .ok_or_else(|| DownwardError::ContainerNotFound(name.into()))?,
                    None => container,
                };
                Some(downward::resource_value(
                    target,
                    &resource.resource,
                    resource.divisor.as_ref(),
                    downward::node_allocatable(),
                )?)
            } else {
                Some(String::new())
            };
            // An optional reference to a missing object or key leaves the variable unset.
            let Some(resolved) = resolved else { continue };
            resolved
        } else {
            String::new()
        };
        env.set(var.name.clone(), value);
    }
    Ok(ResolvedEnv {
        vars: env.vars,
        skipped,
    })
}

/// A pod field for a `fieldRef` env var: the downward API's metadata fields plus
/// `spec.nodeName`, `spec.serviceAccountName`, `status.hostIP(s)`, `status.podIP(s)`.
pub fn pod_field(pod: &Pod, path: &str, node: &NodeFacts) -> Result<String, DownwardError> {
    let status = pod.status.as_ref();
    let pod_ip = || {
        if node.pod_ip.is_empty() {
            status.and_then(|s| s.pod_ip.clone()).unwrap_or_default()
        } else {
            node.pod_ip.clone()
        }
    };
    let host_ip = || {
        if node.host_ip.is_empty() {
            status.and_then(|s| s.host_ip.clone()).unwrap_or_default()
        } else {
            node.host_ip.clone()
        }
    };
    match path {
        "spec.nodeName" => Ok(pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| node.node_name.clone())),
        "spec.serviceAccountName" => Ok(pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default()),
        "status.podIP" => Ok(pod_ip()),
        "status.hostIP" => Ok(host_ip()),
        "status.podIPs" => {
            let listed: Vec<String> = status
                .and_then(|s| s.pod_ips.as_ref())
                .map(|ips| ips.iter().map(|ip| ip.ip.clone()).collect())
                .unwrap_or_default();
            Ok(joined_ips(pod_ip(), listed))
        }
        "status.hostIPs" => {
            let listed: Vec<String> = status
                .and_then(|s| s.host_ips.as_ref())
                .map(|ips| ips.iter().map(|ip| ip.ip.clone()).collect())
                .unwrap_or_default();
            Ok(joined_ips(host_ip(), listed))
        }
        _ => downward::metadata_field(pod, path),
    }
}

/// The primary IP first, then the other listed ones, comma-separated.
fn joined_ips(primary: String, listed: Vec<String>) -> String {
    let mut ips = Vec::new();
    if !primary.is_empty() {
        ips.push(primary);
    }
    for ip in listed {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    ips.join(",")
}

/// Kubernetes' environment variable name rule: `[-._a-zA-Z][-._a-zA-Z0-9]*`.
/// The Service variables the kubelet gives a pod in `namespace` (its "service links"):
/// for every Service of the namespace with a ClusterIP (when `enable_service_links`, the
/// pod spec's default) and always for `default/kubernetes`, `<NAME>_SERVICE_HOST`,
/// `<NAME>_SERVICE_PORT`, `<NAME>_SERVICE_PORT_<PORT_NAME>` and the Docker-link style
/// `<NAME>_PORT`, `<NAME>_PORT_<P>_<PROTO>[_PROTO|_PORT|_ADDR]`, with `NAME` the
/// Service's name upper-cased and `-` made `_`. Sorted by Service name.
pub fn service_links<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    namespace: &str,
    enable_service_links: bool,
) -> Vec<(String, String)> {
    let mut chosen: BTreeMap<String, &Service> = BTreeMap::new();
    for svc in services {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let ip = spec.cluster_ip.as_deref().unwrap_or_default();
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let name = svc.metadata.name.clone().unwrap_or_default();
        let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
        if ns == "default" && name == "kubernetes" {
            chosen.entry(name).or_insert(svc);
        } else if ns == namespace && enable_service_links {
            chosen.insert(name, svc);
        }
    }
    let mut vars = Vec::new();
    for (name, svc) in chosen {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let ip = spec.cluster_ip.clone().unwrap_or_default();
        let prefix = name.to_uppercase().replace('-', "_");
        let ports = spec.ports.as_deref().unwrap_or_default();
        let Some(first) = ports.first() else {
            continue;
        };
        vars.push((format!("{prefix}_SERVICE_HOST"), ip.clone()));
        vars.push((format!("{prefix}_SERVICE_PORT"), first.port.to_string()));
        for p in ports {
            if let Some(port_name) = p.name.as_deref().filter(|n| !n.is_empty()) {
                let port_name = port_name.to_uppercase().replace('-', "_");
                vars.push((
                    format!("{prefix}_SERVICE_PORT_{port_name}"),
                    p.port.to_string(),
                ));
            }
        }
        let proto = |p: &k8s_openapi::api::core::v1::ServicePort| {
            p.protocol.as_deref().unwrap_or("TCP").to_string()
        };
        vars.push((
            format!("{prefix}_PORT"),
            format!("{}://{ip}:{}", proto(first).to_lowercase(), first.port),
        ));
        for p in ports {
            let upper = proto(p).to_uppercase();
            let lower = upper.to_lowercase();
            let base = format!("{prefix}_PORT_{}_{upper}", p.port);
            vars.push((base.clone(), format!("{lower}://{ip}:{}", p.port)));
            vars.push((format!("{base}_PROTO"), lower));
            vars.push((format!("{base}_PORT"), p.port.to_string()));
            vars.push((format!("{base}_ADDR"), ip.clone()));
        }
    }
    vars
}

pub fn is_env_var_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let Some(first) = bytes.next() else {
        return false;
    };
    let ok = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_';
    (first.is_ascii_alphabetic() || matches!(first, b'-' | b'.' | b'_')) && bytes.all(ok)
}

fn secret_entries(secret: &Secret) -> Vec<(String, String)> {
    let mut entries: BTreeMap<String, String> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    entries.extend(secret.string_data.clone().unwrap_or_default());
    entries.into_iter().collect()
}

fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key).cloned())
        .or_else(|| {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        })
}

/// Name → value with first-definition order kept.
#[derive(Default)]
struct OrderedEnv {
    vars: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl OrderedEnv {
    fn set(&mut self, name: String, value: String) {
        match self.index.get(&name) {
            Some(&i) => self.vars[i].1 = value,
            None => {
                self.index.insert(name.clone(), self.vars.len());
                self.vars.push((name, value));
            }
        }
    }
}

/// Fetches each referenced object once per resolution, remembering absences.
struct ObjectCache<'a, S> {
    source: &'a S,
    namespace: &'a str,
    config_maps: HashMap<String, Option<ConfigMap>>,
    secrets: HashMap<String, Option<Secret>>,
}

impl<'a, S: ObjectSource> ObjectCache<'a, S> {
    fn new(source: &'a S, namespace: &'a str) -> Self {
        Self {
            source,
            namespace,
            config_maps: HashMap::new(),
            secrets: HashMap::new(),
        }
    }

    /// The ConfigMap, `None` if it is missing and `optional`, an error if missing and not.
    async fn config_map(
        &mut self,
        name: &str,
        optional: bool,
    ) -> Result<Option<&ConfigMap>, EnvError> {
        if !self.config_maps.contains_key(name) {
            let fetched = self.source.config_map(self.namespace, name).await?;
            self.config_maps.insert(name.to_string(), fetched);
        }
        match self.config_maps.get(name).and_then(Option::as_ref) {
            Some(cm) => Ok(Some(cm)),
            None if optional => Ok(None),
            None => Err(EnvError::ConfigMapNotFound(name.into())),
        }
    }

    /// The Secret, `None` if it is missing and `optional`, an error if missing and not.
    async fn secret(&mut self, name: &str, optional: bool) -> Result<Option<&Secret>, EnvError> {
        if !self.secrets.contains_key(name) {
            let fetched = self.source.secret(self.namespace, name).await?;
            self.secrets.insert(name.to_string(), fetched);
        }
        match self.secrets.get(name).and_then(Option::as_ref) {
            Some(secret) => Ok(Some(secret)),
            None if optional => Ok(None),
            None => Err(EnvError::SecretNotFound(name.into())),
        }
    }
}

/// Expands `$(VAR)` references in `s` against `env` (the last definition of a name
/// wins), as Kubernetes does for env values, command and args: `$$` is a literal `$`,
/// a reference to an undefined variable is left as written, and an unterminated `$(`
/// is kept literally.
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    expand_with(s, |name| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    })
}

/// [`expand`] with a lookup function; `None` leaves `$(name)` as written.
pub fn expand_with(s: &str, mut lookup: impl FnMut(&str) -> Option<String>) -> String {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < bytes.len() {
        if bytes[cursor] == b'$' && cursor + 1 < bytes.len() {
            out.push_str(&s[checkpoint..cursor]);
            let rest = &s[cursor + 1..];
            // `advance` counts the bytes consumed after the `$`.
            let advance = match bytes[cursor + 1] {
                b'$' => {
                    out.push('$');
                    1
                }
                b'(' => match rest.find(')') {
                    Some(close) => {
                        let name = &rest[1..close];
                        match lookup(name) {
                            Some(value) => out.push_str(&value),
                            None => {
                                out.push_str("$(");
                                out.push_str(name);
                                out.push(')');
                            }
                        }
                        close + 1
                    }
                    None => {
                        out.push_str("$(");
                        1
                    }
                },
                _ => {
                    // A lone `$`: keep it and let the next character be copied as text.
                    out.push('$');
                    0
                }
            };
            cursor += 1 + advance;
            checkpoint = cursor;
        } else {
            cursor += 1;
        }
    }
    out.push_str(&s[checkpoint..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_links_as_the_kubelet_writes_them() {
        let svc = |ns: &str, name: &str, ip: &str, ports: serde_json::Value| -> Service {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": ns},
                "spec": {"clusterIP": ip, "ports": ports}
            }))
            .unwrap()
        };
        let services = [
            svc(
                "demo",
                "echo-web",
                "127.96.0.7",
                serde_json::json!([
                    {"name": "http", "port": 80, "protocol": "TCP"},
                    {"name": "dns-udp", "port": 53, "protocol": "UDP"}
                ]),
            ),
            svc(
                "demo",
                "headless",
                "None",
                serde_json::json!([{"port": 80}]),
            ),
            svc(
                "other",
                "elsewhere",
                "127.96.0.9",
                serde_json::json!([{"port": 80}]),
            ),
            svc(
                "default",
                "kubernetes",
                "127.96.0.1",
                serde_json::json!([{"name": "https", "port": 443}]),
            ),
        ];
        let vars: BTreeMap<String, String> =
            service_links(&services, "demo", true).into_iter().collect();
        assert_eq!(vars["ECHO_WEB_SERVICE_HOST"], "127.96.0.7");
        assert_eq!(vars["ECHO_WEB_SERVICE_PORT"], "80");
        assert_eq!(vars["ECHO_WEB_SERVICE_PORT_HTTP"], "80");
        assert_eq!(vars["ECHO_WEB_SERVICE_PORT_DNS_UDP"], "53");
        assert_eq!(vars["ECHO_WEB_PORT"], "tcp://127.96.0.7:80");
        assert_eq!(vars["ECHO_WEB_PORT_53_UDP"], "udp://127.96.0.7:53");
        assert_eq!(vars["ECHO_WEB_PORT_53_UDP_PROTO"], "udp");
        assert_eq!(vars["ECHO_WEB_PORT_80_TCP_ADDR"], "127.96.0.7");
        assert_eq!(vars["ECHO_WEB_PORT_80_TCP_PORT"], "80");
        assert_eq!(vars["KUBERNETES_SERVICE_HOST"], "127.96.0.1");
        assert_eq!(vars["KUBERNETES_SERVICE_PORT_HTTPS"], "443");
        assert!(!vars
            .keys()
            .any(|k| k.starts_with("HEADLESS") || k.starts_with("ELSEWHERE")));
        // enableServiceLinks: false keeps only the API server's.
        let vars = service_links(&services, "demo", false);
        assert!(
            vars.iter().all(|(k, _)| k.starts_with("KUBERNETES_")),
            "{vars:?}"
        );
    }
    use crate::volumes::source::fake::FakeSource;
    use k8s_openapi::api::core::v1::{
        ConfigMapEnvSource, ConfigMapKeySelector, EnvFromSource, EnvVar, EnvVarSource,
        ObjectFieldSelector, PodSpec, PodStatus, ResourceFieldSelector, ResourceRequirements,
        SecretEnvSource, SecretKeySelector,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use kube::api::ObjectMeta;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let env = vars(&[("A", "a"), ("B", "b"), ("A", "a2"), ("EMPTY", "")]);
        assert_eq!(expand("$(A)-$(B)", &env), "a2-b");
        assert_eq!(expand("$$(A)", &env), "$(A)");
        assert_eq!(expand("$$$(A)", &env), "$a2");
        assert_eq!(expand("$(MISSING)", &env), "$(MISSING)");
        assert_eq!(expand("x$(EMPTY)y", &env), "xy");
        assert_eq!(expand("$(A", &env), "$(A");
        assert_eq!(expand("cost: $5", &env), "cost: $5");
        assert_eq!(expand("trailing $", &env), "trailing $");
        assert_eq!(expand("$", &env), "$");
        assert_eq!(expand("$$", &env), "$");
        assert_eq!(expand("ünïcødé $(B) ✓", &env), "ünïcødé b ✓");
        assert_eq!(expand("$é", &env), "$é");
        assert_eq!(expand("$()", &env), "$()");
        assert_eq!(expand("$(A)$(A)", &env), "a2a2");
    }

    #[test]
    fn env_var_names() {
        for good in ["A", "_x", "a.b-c", "-lead", ".dot", "X1"] {
            assert!(is_env_var_name(good), "{good}");
        }
        for bad in ["", "1A", "a b", "a=b", "ü"] {
            assert!(!is_env_var_name(bad), "{bad}");
        }
    }

    fn pod(containers: Vec<Container>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("prod".into()),
                uid: Some("uid-1".into()),
                labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                annotations: Some(BTreeMap::from([("note".into(), "hi".into())])),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers,
                node_name: Some("node-a".into()),
                service_account_name: Some("builder".into()),
                ..PodSpec::default()
            }),
            status: Some(PodStatus::default()),
        }
    }

    fn literal(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        }
    }

    fn from(name: &str, source: EnvVarSource) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(source),
        }
    }

    fn field(path: &str) -> EnvVarSource {
        EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: path.into(),
            }),
            ..EnvVarSource::default()
        }
    }

    fn cm_key(name: &str, key: &str, optional: bool) -> EnvVarSource {
        EnvVarSource {
            config_map_key_ref: Some(ConfigMapKeySelector {
                name: name.into(),
                key: key.into(),
                optional: Some(optional),
            }),
            ..EnvVarSource::default()
        }
    }

    fn secret_key(name: &str, key: &str, optional: bool) -> EnvVarSource {
        EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: name.into(),
                key: key.into(),
                optional: Some(optional),
            }),
            ..EnvVarSource::default()
        }
    }

    fn node() -> NodeFacts {
        NodeFacts {
            node_name: "node-a".into(),
            host_ip: "10.0.0.1".into(),
            pod_ip: "127.130.0.5".into(),
        }
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn full_resolution_in_kubernetes_order() {
        let source = FakeSource::default();
        source.put_config_map(
            "prod",
            "cfg",
            &[("MODE", "fast"), ("bad key", "x"), ("1NUM", "y")],
        );
        source.put_secret("prod", "creds", &[("PASSWORD", b"s3cret"), ("TOKEN", b"t")]);
        let container = Container {
            name: "app".into(),
            resources: Some(ResourceRequirements {
                requests: Some(BTreeMap::from([("memory".into(), Quantity("64Mi".into()))])),
                ..ResourceRequirements::default()
            }),
            env_from: Some(vec![
                EnvFromSource {
                    config_map_ref: Some(ConfigMapEnvSource {
                        name: "cfg".into(),
                        optional: None,
                    }),
                    prefix: None,
                    secret_ref: None,
                },
                EnvFromSource {
                    config_map_ref: None,
                    prefix: Some("S_".into()),
                    secret_ref: Some(SecretEnvSource {
                        name: "creds".into(),
                        optional: None,
                    }),
                },
                EnvFromSource {
                    config_map_ref: Some(ConfigMapEnvSource {
                        name: "absent".into(),
                        optional: Some(true),
                    }),
                    prefix: None,
                    secret_ref: None,
                },
            ]),
            env: Some(vec![
                literal("GREETING", "hello $(POD) in $(MODE) $$(MODE) $(LATER)"),
                from("POD", field("metadata.name")),
                literal("LATER", "later"),
                literal("SVC_HOST", "overridden"),
                from("NS", field("metadata.namespace")),
                from("UID", field("metadata.uid")),
                from("APP", field("metadata.labels['app']")),
                from("NOTE", field("metadata.annotations['note']")),
                from("NODE", field("spec.nodeName")),
                from("SA", field("spec.serviceAccountName")),
                from("POD_IP", field("status.podIP")),
                from("POD_IPS", field("status.podIPs")),
                from("HOST_IP", field("status.hostIP")),
                from("HOST_IPS", field("status.hostIPs")),
                from("CM_MODE", cm_key("cfg", "MODE", false)),
                from("OPT_MISSING_KEY", cm_key("cfg", "nope", true)),
                from("OPT_MISSING_CM", cm_key("absent", "x", true)),
                from("PW", secret_key("creds", "PASSWORD", false)),
                from(
                    "MEM_MI",
                    EnvVarSource {
                        resource_field_ref: Some(ResourceFieldSelector {
                            container_name: None,
                            divisor: Some(Quantity("1Mi".into())),
                            resource: "requests.memory".into(),
                        }),
                        ..EnvVarSource::default()
                    },
                ),
                EnvVar {
                    name: "EMPTY".into(),
                    value: None,
                    value_from: None,
                },
            ]),
            ..Container::default()
        };
        let pod = pod(vec![container.clone()]);
        let service_env = vars(&[("SVC_HOST", "10.96.0.10"), ("SVC_PORT", "80")]);
        let resolved = run(resolve_container_env(
            &source,
            &pod,
            &container,
            &node(),
            &service_env,
        ))
        .expect("resolve");
        let expected = vars(&[
            ("SVC_HOST", "overridden"),
            ("SVC_PORT", "80"),
            ("MODE", "fast"),
            ("S_PASSWORD", "s3cret"),
            ("S_TOKEN", "t"),
            ("GREETING", "hello $(POD) in fast $(MODE) $(LATER)"),
            ("POD", "web"),
            ("LATER", "later"),
            ("NS", "prod"),
            ("UID", "uid-1"),
            ("APP", "web"),
            ("NOTE", "hi"),
            ("NODE", "node-a"),
            ("SA", "builder"),
            ("POD_IP", "127.130.0.5"),
            ("POD_IPS", "127.130.0.5"),
            ("HOST_IP", "10.0.0.1"),
            ("HOST_IPS", "10.0.0.1"),
            ("CM_MODE", "fast"),
            ("PW", "s3cret"),
            ("MEM_MI", "64"),
            ("EMPTY", ""),
        ]);
        assert_eq!(resolved.vars, expected);
        assert_eq!(resolved.skipped.len(), 1);
        assert!(
            resolved.skipped[0].contains("[1NUM, bad key]"),
            "{:?}",
            resolved.skipped
        );
    }

    #[test]
    fn missing_references_fail_with_kubelet_messages() {
        let source = FakeSource::default();
        source.put_config_map("prod", "cfg", &[("A", "1")]);
        source.put_secret("prod", "creds", &[("A", b"1")]);
        let cases: Vec<(EnvVar, &str)> = vec![
            (
                from("X", cm_key("nope", "A", false)),
                "configmap \"nope\" not found",
            ),
            (
                from("X", cm_key("cfg", "B", false)),
                "couldn't find key B in ConfigMap prod/cfg",
            ),
            (
                from("X", secret_key("gone", "A", false)),
                "secret \"gone\" not found",
            ),
            (
                from("X", secret_key("creds", "B", false)),
                "couldn't find key B in Secret prod/creds",
            ),
            (
                from("X", field("spec.bogus")),
                "unsupported fieldPath: spec.bogus",
            ),
        ];
        for (var, message) in cases {
            let container = Container {
                name: "app".into(),
                env: Some(vec![var]),
                ..Container::default()
            };
            let pod = pod(vec![container.clone()]);
            let err =
                run(container_env(&source, &pod, &container, &node(), &[])).expect_err("must fail");
            assert_eq!(err.to_string(), message);
        }

        let container = Container {
            name: "app".into(),
            env_from: Some(vec![EnvFromSource {
                config_map_ref: None,
                prefix: None,
                secret_ref: Some(SecretEnvSource {
                    name: "gone".into(),
                    optional: Some(false),
                }),
            }]),
            ..Container::default()
        };
        let pod = pod(vec![container.clone()]);
        let err = run(container_env(&source, &pod, &container, &node(), &[])).expect_err("fails");
        assert_eq!(err.to_string(), "secret \"gone\" not found");
    }

    #[test]
    fn resource_refs_can_name_another_container() {
        let source = FakeSource::default();
        let sidecar = Container {
            name: "sidecar".into(),
            resources: Some(ResourceRequirements {
                requests: Some(BTreeMap::from([("cpu".into(), Quantity("250m".into()))])),
                ..ResourceRequirements::default()
            }),
            ..Container::default()
        };
        let app = Container {
            name: "app".into(),
            env: Some(vec![from(
                "SIDECAR_CPU",
                EnvVarSource {
                    resource_field_ref: Some(ResourceFieldSelector {
                        container_name: Some("sidecar".into()),
                        divisor: Some(Quantity("1m".into())),
                        resource: "requests.cpu".into(),
                    }),
                    ..EnvVarSource::default()
                },
            )]),
            ..Container::default()
        };
        let pod = pod(vec![app.clone(), sidecar]);
        let env = run(container_env(&source, &pod, &app, &node(), &[])).expect("env");
        assert_eq!(env, vars(&[("SIDECAR_CPU", "250")]));
    }
}
