//! Filters: whether a pod may run on a node at all. Run in kube-scheduler's plugin
//! order (readiness, NodeUnschedulable, TaintToleration, NodeAffinity, NodePorts,
//! NodeResourcesFit), stopping at the first that fails, whose reasons then go into the
//! "0/N nodes are available" message.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelector, NodeSelectorRequirement, Taint, Toleration};

use super::cache::{NodeInfo, NodeSpec};
use super::requirements::Requirements;

/// Why a node was rejected, worded as kube-scheduler words it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    NotReady,
    Unschedulable,
    UntoleratedTaint { key: String, value: String },
    NodeAffinity,
    HostPorts,
    TooManyPods,
    Insufficient(&'static str),
}

impl Reason {
    pub fn message(&self) -> String {
        match self {
            Reason::NotReady => "node(s) were not ready".to_string(),
            Reason::Unschedulable => "node(s) were unschedulable".to_string(),
            Reason::UntoleratedTaint { key, value } => {
                format!("node(s) had untolerated taint {{{key}: {value}}}")
            }
            Reason::NodeAffinity => "node(s) didn't match Pod's node affinity/selector".to_string(),
            Reason::HostPorts => {
                "node(s) didn't have free ports for the requested pod ports".to_string()
            }
            Reason::TooManyPods => "Too many pods".to_string(),
            Reason::Insufficient(resource) => format!("Insufficient {resource}"),
        }
    }

    /// Whether evicting other pods could make the node fit (upstream's `Unschedulable`
    /// as opposed to `UnschedulableAndUnresolvable`).
    pub fn preemption_might_help(&self) -> bool {
        matches!(
            self,
            Reason::HostPorts | Reason::TooManyPods | Reason::Insufficient(_)
        )
    }
}

/// The taint every cordoned node implicitly has, for pods that tolerate cordons.
const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// Checks `reqs` against `node`. `Err` carries the failing filter's reasons.
pub fn filter(node: &NodeInfo, spec: &NodeSpec, reqs: &Requirements) -> Result<(), Vec<Reason>> {
    if !spec.ready {
        return Err(vec![Reason::NotReady]);
    }
    if spec.unschedulable {
        let cordon = Taint {
            key: UNSCHEDULABLE_TAINT.to_string(),
            effect: "NoSchedule".to_string(),
            ..Default::default()
        };
        if !reqs.tolerations.iter().any(|t| tolerates(t, &cordon)) {
            return Err(vec![Reason::Unschedulable]);
        }
    }
    if let Some(taint) = first_untolerated_taint(&spec.taints, &reqs.tolerations) {
        return Err(vec![Reason::UntoleratedTaint {
            key: taint.key.clone(),
            value: taint.value.clone().unwrap_or_default(),
        }]);
    }
    if !selector_matches(&reqs.node_selector, &spec.labels)
        || !reqs
            .required_affinity
            .as_ref()
            .is_none_or(|a| node_selector_matches(a, &node.name, &spec.labels))
    {
        return Err(vec![Reason::NodeAffinity]);
    }
    if reqs.info.host_ports.iter().any(|p| node.port_in_use(p)) {
        return Err(vec![Reason::HostPorts]);
    }
    let fit = resource_fit(node, spec, reqs);
    if fit.is_empty() {
        Ok(())
    } else {
        Err(fit)
    }
}

/// NodeResourcesFit: pod count, then each requested resource against what is left.
fn resource_fit(node: &NodeInfo, spec: &NodeSpec, reqs: &Requirements) -> Vec<Reason> {
    let mut reasons = Vec::new();
    if node.pods + 1 > spec.allowed_pods {
        reasons.push(Reason::TooManyPods);
    }
    let want = reqs.info.requests;
    let free = spec.allocatable.sub(node.requested);
    // A resource the pod does not request never fails, even on an overcommitted node.
    if want.milli_cpu > 0 && want.milli_cpu > free.milli_cpu {
        reasons.push(Reason::Insufficient("cpu"));
    }
    if want.memory > 0 && want.memory > free.memory {
        reasons.push(Reason::Insufficient("memory"));
    }
    if want.ephemeral_storage > 0 && want.ephemeral_storage > free.ephemeral_storage {
        reasons.push(Reason::Insufficient("ephemeral-storage"));
    }
    reasons
}

/// The first NoSchedule/NoExecute taint no toleration tolerates (the caller passes only
/// those effects).
pub fn first_untolerated_taint<'a>(
    taints: &'a [Taint],
    tolerations: &[Toleration],
) -> Option<&'a Taint> {
    taints
        .iter()
        .find(|taint| !tolerations.iter().any(|t| tolerates(t, taint)))
}

/// Kubernetes' `Toleration.ToleratesTaint`: the effect matches (or the toleration names
/// none), the key matches (or the toleration names none), and the operator agrees —
/// `Exists` with any value, `Equal` (the default) with the same value.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty()) {
        if effect != taint.effect {
            return false;
        }
    }
    if let Some(key) = toleration.key.as_deref().filter(|k| !k.is_empty()) {
        if key != taint.key {
            return false;
        }
    }
    match toleration.operator.as_deref().unwrap_or("") {
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        "Exists" => true,
        _ => false,
    }
}

/// `spec.nodeSelector`: every pair must be a label of the node.
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Required node affinity: the terms are ORed, the requirements inside a term ANDed; a
/// term with no requirements matches nothing.
pub fn node_selector_matches(
    selector: &NodeSelector,
    node_name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.node_selector_terms.iter().any(|term| {
        let expressions = term.match_expressions.as_deref().unwrap_or_default();
        let fields = term.match_fields.as_deref().unwrap_or_default();
        if expressions.is_empty() && fields.is_empty() {
            return false;
        }
        expressions
            .iter()
            .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
            && fields.iter().all(|r| {
                // metadata.name is the only field Kubernetes supports here.
                r.key == "metadata.name"
                    && matches!(r.operator.as_str(), "In" | "NotIn")
                    && requirement_matches(r, Some(node_name))
            })
    })
}

/// One `matchExpressions` entry against the label's value (`None`: no such label).
fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(value), [bound]) = (value, values) else {
                return false;
            };
            match (value.parse::<i64>(), bound.parse::<i64>()) {
                (Ok(v), Ok(b)) if req.operator == "Gt" => v > b,
                (Ok(v), Ok(b)) => v < b,
                _ => false,
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::scheduler::requirements::{HostPort, PodInfo, Resources};
    use k8s_openapi::api::core::v1::NodeSelectorTerm;

    fn toleration(key: &str, op: &str, value: &str, effect: &str) -> Toleration {
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Toleration {
            key: opt(key),
            operator: opt(op),
            value: opt(value),
            effect: opt(effect),
            toleration_seconds: None,
        }
    }

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: (!value.is_empty()).then(|| value.to_string()),
            effect: effect.into(),
            time_added: None,
        }
    }

    #[test]
    fn toleration_matching_follows_kubernetes() {
        let t = taint("dedicated", "gpu", "NoSchedule");
        assert!(tolerates(
            &toleration("dedicated", "Equal", "gpu", "NoSchedule"),
            &t
        ));
        assert!(
            tolerates(&toleration("dedicated", "", "gpu", ""), &t),
            "Equal is the default; no effect = all"
        );
        assert!(!tolerates(
            &toleration("dedicated", "Equal", "cpu", "NoSchedule"),
            &t
        ));
        assert!(tolerates(
            &toleration("dedicated", "Exists", "", "NoSchedule"),
            &t
        ));
        assert!(!tolerates(
            &toleration("dedicated", "Exists", "", "NoExecute"),
            &t
        ));
        assert!(!tolerates(&toleration("other", "Exists", "", ""), &t));
        assert!(
            tolerates(&toleration("", "Exists", "", ""), &t),
            "empty key + Exists tolerates all"
        );
        assert!(tolerates(&toleration("", "Exists", "", "NoSchedule"), &t));
        assert!(!tolerates(&toleration("", "Exists", "", "NoExecute"), &t));
        assert!(!tolerates(&toleration("dedicated", "Bogus", "gpu", ""), &t));
        // A taint without a value matches Equal with an empty value.
        assert!(tolerates(
            &toleration("k", "Equal", "", ""),
            &taint("k", "", "NoExecute")
        ));
        let taints = [taint("a", "1", "NoSchedule"), taint("b", "2", "NoExecute")];
        let found = first_untolerated_taint(&taints, &[toleration("a", "Exists", "", "")]);
        assert_eq!(found.map(|t| t.key.as_str()), Some("b"));
    }

    fn req(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn term(
        exprs: Vec<NodeSelectorRequirement>,
        fields: Vec<NodeSelectorRequirement>,
    ) -> NodeSelectorTerm {
        NodeSelectorTerm {
            match_expressions: Some(exprs),
            match_fields: Some(fields),
        }
    }

    #[test]
    fn node_affinity_operators() {
        let labels = BTreeMap::from([
            ("zone".to_string(), "a".to_string()),
            ("cores".to_string(), "8".to_string()),
        ]);
        let m = |terms: Vec<NodeSelectorTerm>| {
            node_selector_matches(
                &NodeSelector {
                    node_selector_terms: terms,
                },
                "n1",
                &labels,
            )
        };
        assert!(m(vec![term(vec![req("zone", "In", &["a", "b"])], vec![])]));
        assert!(!m(vec![term(vec![req("zone", "NotIn", &["a"])], vec![])]));
        assert!(m(vec![term(vec![req("disk", "NotIn", &["ssd"])], vec![])]));
        assert!(m(vec![term(vec![req("zone", "Exists", &[])], vec![])]));
        assert!(m(vec![term(
            vec![req("disk", "DoesNotExist", &[])],
            vec![]
        )]));
        assert!(m(vec![term(vec![req("cores", "Gt", &["4"])], vec![])]));
        assert!(!m(vec![term(vec![req("cores", "Lt", &["4"])], vec![])]));
        assert!(
            !m(vec![term(vec![req("zone", "Gt", &["4"])], vec![])]),
            "non-numeric label"
        );
        // ANDed within a term, ORed across terms.
        assert!(!m(vec![term(
            vec![req("zone", "In", &["a"]), req("cores", "Lt", &["2"])],
            vec![]
        )]));
        assert!(m(vec![
            term(vec![req("zone", "In", &["b"])], vec![]),
            term(vec![], vec![req("metadata.name", "In", &["n1"])]),
        ]));
        assert!(!m(vec![term(
            vec![],
            vec![req("metadata.name", "NotIn", &["n1"])]
        )]));
        assert!(
            !m(vec![term(vec![], vec![])]),
            "an empty term matches nothing"
        );
        assert!(!m(vec![]));
        assert!(selector_matches(
            &BTreeMap::from([("zone".into(), "a".into())]),
            &labels
        ));
        assert!(!selector_matches(
            &BTreeMap::from([("zone".into(), "b".into())]),
            &labels
        ));
    }

    fn spec(cpu: i64, memory: i64, pods: i64) -> NodeSpec {
        NodeSpec {
            labels: BTreeMap::new(),
            taints: vec![],
            unschedulable: false,
            ready: true,
            allocatable: Resources {
                milli_cpu: cpu,
                memory,
                ephemeral_storage: 0,
            },
            allowed_pods: pods,
        }
    }

    fn requirements(cpu: i64, memory: i64, ports: Vec<HostPort>) -> Requirements {
        Requirements {
            info: Arc::new(PodInfo {
                requests: Resources {
                    milli_cpu: cpu,
                    memory,
                    ephemeral_storage: 0,
                },
                host_ports: ports,
                ..Default::default()
            }),
            node_selector: BTreeMap::new(),
            required_affinity: None,
            tolerations: vec![],
            never_preempts: false,
        }
    }

    #[test]
    fn resource_fit_counts_what_is_already_requested() {
        let node = NodeInfo {
            name: "n1".into(),
            requested: Resources {
                milli_cpu: 1500,
                memory: 1 << 30,
                ephemeral_storage: 0,
            },
            pods: 1,
            ..Default::default()
        };
        let s = spec(2000, 2 << 30, 2);
        assert_eq!(
            filter(&node, &s, &requirements(500, 1 << 30, vec![])),
            Ok(())
        );
        assert_eq!(
            filter(&node, &s, &requirements(501, (1 << 30) + 1, vec![])),
            Err(vec![
                Reason::Insufficient("cpu"),
                Reason::Insufficient("memory")
            ])
        );
        // No requests: fits even a full node, as long as a pod slot is left.
        let full = NodeInfo {
            requested: Resources {
                milli_cpu: 5000,
                ..Default::default()
            },
            ..node.clone()
        };
        assert_eq!(filter(&full, &s, &requirements(0, 0, vec![])), Ok(()));
        let crowded = NodeInfo { pods: 2, ..node };
        assert_eq!(
            filter(&crowded, &s, &requirements(0, 0, vec![])),
            Err(vec![Reason::TooManyPods])
        );
    }

    #[test]
    fn host_ports_conflict_by_protocol_port_and_address() {
        let port = |ip: &str, port: i32, proto: &str| HostPort {
            protocol: proto.into(),
            ip: ip.into(),
            port,
        };
        let mut node = NodeInfo {
            name: "n1".into(),
            ..Default::default()
        };
        node.host_ports.insert(port("10.0.0.1", 80, "TCP"), 1);
        let s = spec(1000, 1 << 30, 10);
        let check = |p: HostPort| filter(&node, &s, &requirements(0, 0, vec![p]));
        assert_eq!(
            check(port("10.0.0.1", 80, "TCP")),
            Err(vec![Reason::HostPorts])
        );
        assert_eq!(
            check(port("0.0.0.0", 80, "TCP")),
            Err(vec![Reason::HostPorts])
        );
        assert_eq!(check(port("10.0.0.2", 80, "TCP")), Ok(()));
        assert_eq!(check(port("10.0.0.1", 80, "UDP")), Ok(()));
        assert_eq!(check(port("10.0.0.1", 81, "TCP")), Ok(()));
    }

    #[test]
    fn readiness_cordons_and_taints_come_first() {
        let node = NodeInfo::default();
        let mut s = spec(1000, 1 << 30, 10);
        s.ready = false;
        assert_eq!(
            filter(&node, &s, &requirements(0, 0, vec![])),
            Err(vec![Reason::NotReady])
        );
        s.ready = true;
        s.unschedulable = true;
        assert_eq!(
            filter(&node, &s, &requirements(0, 0, vec![])),
            Err(vec![Reason::Unschedulable])
        );
        let mut tolerant = requirements(0, 0, vec![]);
        tolerant.tolerations = vec![toleration(UNSCHEDULABLE_TAINT, "Exists", "", "NoSchedule")];
        assert_eq!(filter(&node, &s, &tolerant), Ok(()));
        s.unschedulable = false;
        s.taints = vec![taint("gpu", "true", "NoSchedule")];
        assert_eq!(
            filter(&node, &s, &requirements(0, 0, vec![])).map_err(|r| r[0].message()),
            Err("node(s) had untolerated taint {gpu: true}".to_string())
        );
    }
}
