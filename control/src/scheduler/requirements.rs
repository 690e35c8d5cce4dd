//! What a pod asks of a node, computed once per pod version: its resource requests
//! (for fitting and, with defaults for unset requests, for scoring), host ports, owner,
//! and — with its RuntimeClass merged in as the RuntimeClass admission plugin does —
//! the node selector, required node affinity and tolerations the filters check.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, NodeSelector, Pod, Toleration};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::quantity;

/// CPU assumed for a container without a request when scoring (upstream's
/// `DefaultMilliCPURequest`), so that request-less pods still spread.
const DEFAULT_MILLI_CPU: i64 = 100;
/// Memory assumed likewise (upstream's `DefaultMemoryRequest`, 200 MiB).
const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

/// The resources the scheduler fits, in milli-CPU and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
}

impl Resources {
    /// Reads cpu, memory and ephemeral-storage from a resource list; malformed
    /// quantities (which validation rejects anyway) count as zero.
    pub fn from_list(list: Option<&BTreeMap<String, Quantity>>) -> Resources {
        let Some(list) = list else {
            return Resources::default();
        };
        let get = |name: &str, parse: fn(&str) -> Result<i64, quantity::QuantityError>| {
            list.get(name)
                .map(|q| {
                    parse(&q.0).unwrap_or_else(|e| {
                        tracing::debug!(resource = name, error = %e, "ignoring a malformed quantity");
                        0
                    })
                })
                .unwrap_or(0)
        };
        Resources {
            milli_cpu: get("cpu", quantity::milli_value),
            memory: get("memory", quantity::value),
            ephemeral_storage: get("ephemeral-storage", quantity::value),
        }
    }

    pub fn add(self, other: Resources) -> Resources {
        Resources {
            milli_cpu: self.milli_cpu.saturating_add(other.milli_cpu),
            memory: self.memory.saturating_add(other.memory),
            ephemeral_storage: self
                .ephemeral_storage
                .saturating_add(other.ephemeral_storage),
        }
    }

    pub fn sub(self, other: Resources) -> Resources {
        Resources {
            milli_cpu: self.milli_cpu.saturating_sub(other.milli_cpu),
            memory: self.memory.saturating_sub(other.memory),
            ephemeral_storage: self
                .ephemeral_storage
                .saturating_sub(other.ephemeral_storage),
        }
    }

    pub fn max(self, other: Resources) -> Resources {
        Resources {
            milli_cpu: self.milli_cpu.max(other.milli_cpu),
            memory: self.memory.max(other.memory),
            ephemeral_storage: self.ephemeral_storage.max(other.ephemeral_storage),
        }
    }
}

/// A host port a pod claims on its node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    pub protocol: String,
    /// `0.0.0.0` when the pod did not name one: every address.
    pub ip: String,
    pub port: i32,
}

/// The node-independent facts about a pod that placement and accounting need.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodInfo {
    /// What the pod reserves (containers summed, init containers maxed, overhead added).
    pub requests: Resources,
    /// The same with defaults for unset cpu/memory requests, for scoring only.
    pub nonzero: Resources,
    pub host_ports: Vec<HostPort>,
    /// The uid of the pod's controller (ownerReference with controller=true).
    pub owner: Option<String>,
}

impl PodInfo {
    pub fn of(pod: &Pod) -> PodInfo {
        let Some(spec) = pod.spec.as_ref() else {
            return PodInfo::default();
        };
        let init = spec.init_containers.as_deref().unwrap_or_default();
        let requests = pod_requests(&spec.containers, init, false)
            .add(Resources::from_list(spec.overhead.as_ref()));
        let nonzero = pod_requests(&spec.containers, init, true)
            .add(Resources::from_list(spec.overhead.as_ref()));
        let host_ports = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let port = p.host_port.filter(|p| *p > 0)?;
                Some(HostPort {
                    protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_string()),
                    ip: p
                        .host_ip
                        .clone()
                        .filter(|ip| !ip.is_empty())
                        .unwrap_or_else(|| "0.0.0.0".to_string()),
                    port,
                })
            })
            .collect();
        let owner = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone());
        PodInfo {
            requests,
            nonzero,
            host_ports,
            owner,
        }
    }
}

/// One container's requests; a limit stands in for a missing request (API defaulting
/// copies limits into requests), and `nonzero` fills in the scoring defaults.
fn container_requests(container: &Container, nonzero: bool) -> Resources {
    let resources = container.resources.as_ref();
    let requests = Resources::from_list(resources.and_then(|r| r.requests.as_ref()));
    let limits = Resources::from_list(resources.and_then(|r| r.limits.as_ref()));
    let has = |name: &str| {
        resources.is_some_and(|r| {
            r.requests.as_ref().is_some_and(|l| l.contains_key(name))
                || r.limits.as_ref().is_some_and(|l| l.contains_key(name))
        })
    };
    let pick = |req: i64, lim: i64| if req == 0 { lim } else { req };
    let mut out = Resources {
        milli_cpu: pick(requests.milli_cpu, limits.milli_cpu),
        memory: pick(requests.memory, limits.memory),
        ephemeral_storage: pick(requests.ephemeral_storage, limits.ephemeral_storage),
    };
    if nonzero {
        if !has("cpu") {
            out.milli_cpu = DEFAULT_MILLI_CPU;
        }
        if !has("memory") {
            out.memory = DEFAULT_MEMORY;
        }
    }
    out
}

/// The pod's effective requests as upstream's `PodRequests` computes them: app
/// containers and sidecars (restartable init containers) summed; each regular init
/// container runs alone next to the sidecars started before it, so the pod needs the
/// maximum of those moments and the steady state.
fn pod_requests(containers: &[Container], init: &[Container], nonzero: bool) -> Resources {
    let apps = containers.iter().fold(Resources::default(), |acc, c| {
        acc.add(container_requests(c, nonzero))
    });
    let mut sidecars = Resources::default();
    let mut init_peak = Resources::default();
    for container in init {
        let req = container_requests(container, nonzero);
        if container.restart_policy.as_deref() == Some("Always") {
            sidecars = sidecars.add(req);
            init_peak = init_peak.max(sidecars);
        } else {
            init_peak = init_peak.max(req.add(sidecars));
        }
    }
    apps.add(sidecars).max(init_peak)
}

/// The scheduling part of a RuntimeClass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeClassScheduling {
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
}

impl RuntimeClassScheduling {
    pub fn of(class: &RuntimeClass) -> RuntimeClassScheduling {
        let scheduling = class.scheduling.as_ref();
        RuntimeClassScheduling {
            node_selector: scheduling
                .and_then(|s| s.node_selector.clone())
                .unwrap_or_default(),
            tolerations: scheduling
                .and_then(|s| s.tolerations.clone())
                .unwrap_or_default(),
        }
    }
}

/// Everything the filters check for one pod.
#[derive(Debug, Clone)]
pub struct Requirements {
    pub info: Arc<PodInfo>,
    pub node_selector: BTreeMap<String, String>,
    pub required_affinity: Option<NodeSelector>,
    pub tolerations: Vec<Toleration>,
    /// `preemptionPolicy: Never`, which changes the failure message.
    pub never_preempts: bool,
}

impl Requirements {
    /// The pod's requirements with its RuntimeClass's merged in. A selector key both
    /// set with different values is an error (the admission plugin rejects such pods).
    pub fn of(
        pod: &Pod,
        info: Arc<PodInfo>,
        runtime_class: Option<(&str, &RuntimeClassScheduling)>,
    ) -> Result<Requirements, String> {
        let spec = pod.spec.as_ref();
        let mut node_selector = spec
            .and_then(|s| s.node_selector.clone())
            .unwrap_or_default();
        let mut tolerations = spec.and_then(|s| s.tolerations.clone()).unwrap_or_default();
        if let Some((name, class)) = runtime_class {
            for (key, value) in &class.node_selector {
                match node_selector.get(key) {
                    Some(existing) if existing != value => {
                        return Err(format!(
                            "conflict: runtimeClass.scheduling.nodeSelector[{key}] = {value}; \
                             pod.spec.nodeSelector[{key}] = {existing} (RuntimeClass {name:?})"
                        ));
                    }
                    _ => {
                        node_selector.insert(key.clone(), value.clone());
                    }
                }
            }
            for toleration in &class.tolerations {
                if !tolerations.contains(toleration) {
                    tolerations.push(toleration.clone());
                }
            }
        }
        Ok(Requirements {
            info,
            node_selector,
            required_affinity: spec
                .and_then(|s| s.affinity.as_ref())
                .and_then(|a| a.node_affinity.as_ref())
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .clone()
                }),
            tolerations,
            never_preempts: spec.and_then(|s| s.preemption_policy.as_deref()) == Some("Never"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec}))
            .expect("a valid pod")
    }

    #[test]
    fn requests_sum_containers_and_max_init_containers() {
        let p = pod(json!({
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}},
                {"name": "b", "resources": {"requests": {"cpu": "200m"}, "limits": {"memory": "64Mi"}}},
            ],
            "initContainers": [
                {"name": "big-init", "resources": {"requests": {"cpu": "1", "memory": "10Mi"}}},
            ],
            "overhead": {"memory": "1Mi"},
        }));
        let info = PodInfo::of(&p);
        assert_eq!(info.requests.milli_cpu, 1000);
        assert_eq!(info.requests.memory, (192 + 1) * 1024 * 1024);
    }

    #[test]
    fn sidecars_add_to_the_steady_state() {
        let p = pod(json!({
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "100m"}}}],
            "initContainers": [
                {"name": "sidecar", "restartPolicy": "Always", "resources": {"requests": {"cpu": "50m"}}},
                {"name": "init", "resources": {"requests": {"cpu": "120m"}}},
            ],
        }));
        // The init container runs next to the sidecar: 170m beats 150m.
        assert_eq!(PodInfo::of(&p).requests.milli_cpu, 170);
    }

    #[test]
    fn scoring_requests_default_unset_values() {
        let p = pod(
            json!({"containers": [{"name": "a"}, {"name": "b", "resources": {"requests": {"cpu": "0"}}}]}),
        );
        let info = PodInfo::of(&p);
        assert_eq!(info.requests, Resources::default());
        assert_eq!(info.nonzero.milli_cpu, DEFAULT_MILLI_CPU);
        assert_eq!(info.nonzero.memory, 2 * DEFAULT_MEMORY);
    }

    #[test]
    fn runtime_class_merges_selector_and_tolerations() {
        let p = pod(json!({
            "containers": [{"name": "a"}],
            "nodeSelector": {"zone": "a"},
            "tolerations": [{"key": "k", "operator": "Exists"}],
        }));
        let class = RuntimeClassScheduling {
            node_selector: BTreeMap::from([("engine".to_string(), "wasm".to_string())]),
            tolerations: vec![
                Toleration {
                    key: Some("k".into()),
                    operator: Some("Exists".into()),
                    ..Default::default()
                },
                Toleration {
                    key: Some("wasm".into()),
                    operator: Some("Exists".into()),
                    ..Default::default()
                },
            ],
        };
        let info = Arc::new(PodInfo::of(&p));
        let reqs = Requirements::of(&p, info.clone(), Some(("wasm", &class))).expect("no conflict");
        assert_eq!(reqs.node_selector.len(), 2);
        assert_eq!(reqs.tolerations.len(), 2);

        let conflicting = RuntimeClassScheduling {
            node_selector: BTreeMap::from([("zone".to_string(), "b".to_string())]),
            tolerations: vec![],
        };
        let err = Requirements::of(&p, info, Some(("wasm", &conflicting))).expect_err("conflict");
        assert!(err.contains("nodeSelector[zone]"), "{err}");
    }
}
