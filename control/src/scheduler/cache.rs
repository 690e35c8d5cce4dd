//! The scheduler's picture of the cluster: every node with the aggregates placement
//! needs (requested resources, pod count, host ports, pods per owner), fed by the node
//! and pod watches and by the scheduler's own decisions ("assumed" pods, counted the
//! moment a node is chosen so that the next pod sees them before the binding lands).

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Taint};

use super::requirements::{HostPort, PodInfo, Resources};

/// The parts of a Node object the filters and scores read.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    pub labels: std::collections::BTreeMap<String, String>,
    /// Only the NoSchedule and NoExecute taints: the ones that filter.
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub ready: bool,
    pub allocatable: Resources,
    pub allowed_pods: i64,
}

impl NodeSpec {
    pub fn of(node: &Node) -> NodeSpec {
        let spec = node.spec.as_ref();
        let status = node.status.as_ref();
        let allocatable = status.and_then(|s| s.allocatable.as_ref());
        NodeSpec {
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints: spec
                .and_then(|s| s.taints.as_ref())
                .into_iter()
                .flatten()
                .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
                .cloned()
                .collect(),
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            ready: status
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True"),
            allocatable: Resources::from_list(allocatable),
            allowed_pods: allocatable
                .and_then(|a| a.get("pods"))
                .and_then(|q| super::quantity::value(&q.0).ok())
                .unwrap_or(0),
        }
    }
}

/// One node: its spec (absent while pods name a node the watch has not shown) and the
/// sums over the pods placed on it.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub name: String,
    pub spec: Option<Arc<NodeSpec>>,
    pub requested: Resources,
    pub nonzero_requested: Resources,
    pub pods: i64,
    /// Claimed host ports, with how many pods claim each (the same port on different
    /// addresses can be claimed by several).
    pub host_ports: HashMap<HostPort, u32>,
    /// Pods per controller uid, for spreading.
    pub owners: HashMap<String, u32>,
}

impl NodeInfo {
    fn add_pod(&mut self, pod: &PodInfo) {
        self.requested = self.requested.add(pod.requests);
        self.nonzero_requested = self.nonzero_requested.add(pod.nonzero);
        self.pods += 1;
        for port in &pod.host_ports {
            *self.host_ports.entry(port.clone()).or_default() += 1;
        }
        if let Some(owner) = &pod.owner {
            *self.owners.entry(owner.clone()).or_default() += 1;
        }
    }

    fn remove_pod(&mut self, pod: &PodInfo) {
        self.requested = self.requested.sub(pod.requests);
        self.nonzero_requested = self.nonzero_requested.sub(pod.nonzero);
        self.pods -= 1;
        for port in &pod.host_ports {
            if let Some(count) = self.host_ports.get_mut(port) {
                *count -= 1;
                if *count == 0 {
                    self.host_ports.remove(port);
                }
            }
        }
        if let Some(owner) = &pod.owner {
            if let Some(count) = self.owners.get_mut(owner) {
                *count -= 1;
                if *count == 0 {
                    self.owners.remove(owner);
                }
            }
        }
    }

    /// Whether nothing refers to this entry any more.
    fn is_empty(&self) -> bool {
        self.spec.is_none() && self.pods == 0
    }

    /// Whether a claim of `wanted` collides with a port claimed here: same protocol and
    /// port, and the same address or either side listening on every address.
    pub fn port_in_use(&self, wanted: &HostPort) -> bool {
        if self.host_ports.is_empty() {
            return false;
        }
        self.host_ports.keys().any(|used| {
            used.port == wanted.port
                && used.protocol == wanted.protocol
                && (used.ip == wanted.ip || used.ip == "0.0.0.0" || wanted.ip == "0.0.0.0")
        })
    }
}

/// A pod counted on a node.
#[derive(Debug, Clone)]
struct Placed {
    node: String,
    info: Arc<PodInfo>,
    /// Chosen by us; the watch has not yet shown it bound.
    assumed: bool,
}

/// All nodes and the pods counted on them. Nodes live in a vector so that the
/// scheduler can walk them round-robin from any index.
#[derive(Debug, Default)]
pub struct Cache {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    pods: HashMap<String, Placed>,
    /// How many entries have a spec: the "N" of "0/N nodes are available".
    ready_specs: usize,
}

impl Cache {
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    pub fn node_count(&self) -> usize {
        self.ready_specs
    }

    #[cfg(test)]
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }

    fn entry(&mut self, name: &str) -> &mut NodeInfo {
        let i = match self.index.get(name) {
            Some(&i) => i,
            None => {
                self.nodes.push(NodeInfo {
                    name: name.to_string(),
                    ..Default::default()
                });
                self.index.insert(name.to_string(), self.nodes.len() - 1);
                self.nodes.len() - 1
            }
        };
        &mut self.nodes[i]
    }

    fn drop_if_empty(&mut self, name: &str) {
        let Some(&i) = self.index.get(name) else {
            return;
        };
        if !self.nodes[i].is_empty() {
            return;
        }
        self.index.remove(name);
        self.nodes.swap_remove(i);
        if let Some(moved) = self.nodes.get(i) {
            self.index.insert(moved.name.clone(), i);
        }
    }

    /// Adds or replaces a node's spec. Returns whether anything placement depends on
    /// changed (a new node, new labels, taints, allocatable, readiness…).
    pub fn set_node(&mut self, name: &str, spec: NodeSpec) -> bool {
        let entry = self.entry(name);
        if entry.spec.as_deref() == Some(&spec) {
            return false;
        }
        if entry.spec.is_none() {
            self.ready_specs += 1;
        }
        self.entry(name).spec = Some(Arc::new(spec));
        true
    }

    pub fn remove_node(&mut self, name: &str) {
        if let Some(&i) = self.index.get(name) {
            if self.nodes[i].spec.take().is_some() {
                self.ready_specs -= 1;
            }
        }
        self.drop_if_empty(name);
    }

    /// Names of the nodes that have a spec.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.spec.is_some())
            .map(|n| n.name.clone())
            .collect()
    }

    /// Counts the pod `uid` on `node` as chosen by us (before the binding is confirmed).
    pub fn assume(&mut self, uid: &str, node: &str, info: Arc<PodInfo>) {
        self.place(uid, node, info, true);
    }

    /// Records what the watch says: pod `uid` is bound to `node`. Returns whether
    /// resources were freed (the pod moved or shrank), which may help pending pods.
    pub fn observe_bound(&mut self, uid: &str, node: &str, info: Arc<PodInfo>) -> bool {
        if let Some(placed) = self.pods.get_mut(uid) {
            if placed.node == node && *placed.info == *info {
                placed.assumed = false;
                return false;
            }
        }
        let freed = self.pods.contains_key(uid);
        self.place(uid, node, info, false);
        freed
    }

    fn place(&mut self, uid: &str, node: &str, info: Arc<PodInfo>, assumed: bool) {
        self.remove_pod(uid);
        self.entry(node).add_pod(&info);
        self.pods.insert(
            uid.to_string(),
            Placed {
                node: node.to_string(),
                info,
                assumed,
            },
        );
    }

    /// Forgets a pod (deleted, finished, or its binding failed). Returns whether it was
    /// counted anywhere.
    pub fn remove_pod(&mut self, uid: &str) -> bool {
        let Some(placed) = self.pods.remove(uid) else {
            return false;
        };
        if let Some(&i) = self.index.get(&placed.node) {
            self.nodes[i].remove_pod(&placed.info);
        }
        self.drop_if_empty(&placed.node);
        true
    }

    /// Undoes [`Cache::assume`] unless the watch has confirmed the binding since.
    pub fn forget_assumed(&mut self, uid: &str) -> bool {
        if self.pods.get(uid).is_some_and(|p| p.assumed) {
            self.remove_pod(uid)
        } else {
            false
        }
    }

    /// Whether the pod is counted as bound by the watch (not merely assumed).
    pub fn is_assumed(&self, uid: &str) -> bool {
        self.pods.get(uid).is_some_and(|p| p.assumed)
    }

    /// After a relist: drops watch-observed pods that are gone (assumed ones stay until
    /// their binding resolves).
    pub fn retain_pods(&mut self, keep: impl Fn(&str) -> bool) -> bool {
        let gone: Vec<String> = self
            .pods
            .iter()
            .filter(|(uid, placed)| !placed.assumed && !keep(uid))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in &gone {
            self.remove_pod(uid);
        }
        !gone.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(cpu: i64, owner: Option<&str>) -> Arc<PodInfo> {
        Arc::new(PodInfo {
            requests: Resources {
                milli_cpu: cpu,
                ..Default::default()
            },
            nonzero: Resources {
                milli_cpu: cpu,
                ..Default::default()
            },
            host_ports: vec![],
            owner: owner.map(str::to_string),
        })
    }

    #[test]
    fn assumed_pods_are_counted_once_when_confirmed() {
        let mut cache = Cache::default();
        cache.assume("u1", "n1", info(100, Some("rs")));
        assert_eq!(cache.node("n1").map(|n| n.requested.milli_cpu), Some(100));
        assert!(!cache.observe_bound("u1", "n1", info(100, Some("rs"))));
        let node = cache.node("n1").expect("node entry");
        assert_eq!((node.requested.milli_cpu, node.pods), (100, 1));
        assert_eq!(node.owners.get("rs"), Some(&1));
        // Confirmed pods are not forgotten by a late binding failure.
        assert!(!cache.forget_assumed("u1"));
        assert!(cache.remove_pod("u1"));
        // Nothing refers to n1 any more.
        assert!(cache.node("n1").is_none());
    }

    #[test]
    fn node_changes_are_reported_only_when_relevant() {
        let mut cache = Cache::default();
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"},
            "status": {"allocatable": {"cpu": "2", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .expect("a valid node");
        assert!(cache.set_node("n1", NodeSpec::of(&node)));
        assert!(!cache.set_node("n1", NodeSpec::of(&node)));
        assert_eq!(cache.node_count(), 1);
        let spec = cache.node("n1").and_then(|n| n.spec.clone()).expect("spec");
        assert!(spec.ready);
        assert_eq!((spec.allocatable.milli_cpu, spec.allowed_pods), (2000, 110));
        cache.remove_node("n1");
        assert_eq!(cache.node_count(), 0);
    }
}
