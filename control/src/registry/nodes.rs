//! Node: the Node strategy.
//!
//! Nodes are registered by the agent and mostly written through `nodes/status`; the
//! strategy checks taints (the scheduler relies on their shape) and renders the
//! `kubectl get nodes` table.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::table::{self, Column};
use super::validation::{self, Cause};
use super::{decode_as, ResourceDef, Strategy, Subresource};

/// Labels `node-role.kubernetes.io/<role>` name a node's roles.
const ROLE_LABEL_PREFIX: &str = "node-role.kubernetes.io/";
/// The older label whose value names a node's role.
const ROLE_LABEL: &str = "kubernetes.io/role";

const TAINT_EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];

struct NodeStrategy;

/// `Ready`, `NotReady` or `Unknown` from the Ready condition, plus
/// `SchedulingDisabled` for a cordoned node.
fn node_status(obj: &Value) -> String {
    let ready = obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        });
    let mut parts = vec![match ready {
        Some(c) if c.get("status").and_then(Value::as_str) == Some("True") => "Ready",
        Some(_) => "NotReady",
        None => "Unknown",
    }];
    if obj.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        parts.push("SchedulingDisabled");
    }
    parts.join(",")
}

/// The roles from `node-role.kubernetes.io/<role>` keys and the `kubernetes.io/role`
/// value, sorted, or `<none>`.
fn node_roles(obj: &Value) -> String {
    let mut roles = BTreeSet::new();
    if let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if let Some(role) = k.strip_prefix(ROLE_LABEL_PREFIX) {
                if !role.is_empty() {
                    roles.insert(role.to_string());
                }
            } else if k == ROLE_LABEL {
                if let Some(v) = v.as_str().filter(|v| !v.is_empty()) {
                    roles.insert(v.to_string());
                }
            }
        }
    }
    if roles.is_empty() {
        "<none>".to_string()
    } else {
        roles.into_iter().collect::<Vec<_>>().join(",")
    }
}

/// The first address of `kind` (`InternalIP`, `ExternalIP`), or `<none>`.
fn node_address(obj: &Value, kind: &str) -> String {
    obj.pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|addrs| {
            addrs
                .iter()
                .find(|a| a.get("type").and_then(Value::as_str) == Some(kind))
        })
        .and_then(|a| a.get("address").and_then(Value::as_str))
        .unwrap_or("<none>")
        .to_string()
}

fn or_unknown(s: &str) -> String {
    if s.is_empty() {
        "<unknown>".to_string()
    } else {
        s.to_string()
    }
}

impl Strategy for NodeStrategy {
    fn decode(&self, obj: &Value) -> Result<Value, String> {
        decode_as::<k8s_openapi::api::core::v1::Node>(obj)
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        let taints = obj
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut seen = BTreeSet::new();
        for (i, t) in taints.iter().enumerate() {
            let path = format!("spec.taints[{i}]");
            let key = table::str_at(t, "/key");
            let value = table::str_at(t, "/value");
            let effect = table::str_at(t, "/effect");
            if key.is_empty() {
                causes.push(Cause::required(format!("{path}.key")));
            } else {
                for msg in validation::qualified_name(key) {
                    causes.push(Cause::invalid(format!("{path}.key"), key, msg));
                }
            }
            for msg in validation::label_value(value) {
                causes.push(Cause::invalid(format!("{path}.value"), value, msg));
            }
            if effect.is_empty() {
                causes.push(Cause::required(format!("{path}.effect")));
            } else if !TAINT_EFFECTS.contains(&effect) {
                causes.push(Cause::not_supported(
                    format!("{path}.effect"),
                    effect,
                    TAINT_EFFECTS,
                ));
            }
            if !seen.insert((key.to_string(), effect.to_string())) {
                causes.push(Cause::duplicate(path, &format!("{key}:{effect}")));
            }
        }
        causes
    }

    fn field_value(&self, obj: &Value, field: &str) -> Option<String> {
        match field {
            "spec.unschedulable" => Some(
                obj.pointer("/spec/unschedulable")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                    .to_string(),
            ),
            _ => None,
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::name(),
            Column::new("Status", "string", "The status of the node"),
            Column::new("Roles", "string", "The roles of the node"),
            Column::age(),
            Column::new("Version", "string", "Kubelet Version reported by the node."),
            Column::wide("Internal-IP", "string", NODE_ADDRESSES_DOC),
            Column::wide("External-IP", "string", NODE_ADDRESSES_DOC),
            Column::wide(
                "OS-Image",
                "string",
                "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
            ),
            Column::wide(
                "Kernel-Version",
                "string",
                "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
            ),
            Column::wide(
                "Container-Runtime",
                "string",
                "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
            ),
        ]
    }

    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        vec![
            json!(table::name_of(obj)),
            json!(node_status(obj)),
            json!(node_roles(obj)),
            json!(table::age(obj, now)),
            json!(table::str_at(obj, "/status/nodeInfo/kubeletVersion")),
            json!(node_address(obj, "InternalIP")),
            json!(node_address(obj, "ExternalIP")),
            json!(or_unknown(table::str_at(obj, "/status/nodeInfo/osImage"))),
            json!(or_unknown(table::str_at(
                obj,
                "/status/nodeInfo/kernelVersion"
            ))),
            json!(or_unknown(table::str_at(
                obj,
                "/status/nodeInfo/containerRuntimeVersion"
            ))),
        ]
    }
}

const NODE_ADDRESSES_DOC: &str = "List of addresses reachable to the node. Queried from cloud provider, if available. More info: https://kubernetes.io/docs/reference/node/node-status/#addresses Note: This field is declared as mergeable, but the merge key is not sufficiently unique, which can cause data corruption when it is merged. Callers should instead use a full-replacement patch. See https://pr.k8s.io/79391 for an example. Consumers should assume that addresses can change during the lifetime of a Node. However, there are some exceptions where this may not be possible, such as Pods that inherit a Node's address in its own status or consumers of the downward API (status.hostIP).";

pub(super) fn def() -> ResourceDef {
    ResourceDef {
        group: "",
        version: "v1",
        kind: "Node",
        plural: "nodes",
        singular: "node",
        namespaced: false,
        short_names: &["no"],
        categories: &[],
        subresources: &[Subresource::Status],
        strategy: Box::new(NodeStrategy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2024-01-03T00:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    fn node() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": "n1",
                "creationTimestamp": "2024-01-01T00:00:00Z",
                "labels": {
                    "node-role.kubernetes.io/control-plane": "",
                    "node-role.kubernetes.io/": "",
                    "kubernetes.io/role": "worker",
                    "kubernetes.io/hostname": "n1"
                }
            },
            "spec": {"unschedulable": true},
            "status": {
                "conditions": [
                    {"type": "MemoryPressure", "status": "False"},
                    {"type": "Ready", "status": "True"}
                ],
                "addresses": [
                    {"type": "Hostname", "address": "n1"},
                    {"type": "InternalIP", "address": "10.0.0.5"}
                ],
                "nodeInfo": {
                    "kubeletVersion": "v1.33.0-wasmkube",
                    "osImage": "Debian GNU/Linux 12 (bookworm)",
                    "kernelVersion": "6.1.0",
                    "containerRuntimeVersion": "",
                    "architecture": "amd64", "bootID": "", "machineID": "",
                    "kubeProxyVersion": "", "operatingSystem": "linux", "systemUUID": ""
                }
            }
        })
    }

    #[test]
    fn cells_match_kubectl() {
        let s = NodeStrategy;
        let n = node();
        assert!(s.decode(&n).is_ok());
        let cells = s.cells(&n, now());
        assert_eq!(cells.len(), s.columns().len());
        assert_eq!(
            cells,
            vec![
                json!("n1"),
                json!("Ready,SchedulingDisabled"),
                json!("control-plane,worker"),
                json!("2d"),
                json!("v1.33.0-wasmkube"),
                json!("10.0.0.5"),
                json!("<none>"),
                json!("Debian GNU/Linux 12 (bookworm)"),
                json!("6.1.0"),
                json!("<unknown>"),
            ]
        );
        let wide: Vec<&str> = s
            .columns()
            .iter()
            .filter(|c| c.priority == 1)
            .map(|c| c.name)
            .collect();
        assert_eq!(
            wide,
            vec![
                "Internal-IP",
                "External-IP",
                "OS-Image",
                "Kernel-Version",
                "Container-Runtime"
            ]
        );
    }

    #[test]
    fn status_variants() {
        let bare = json!({"metadata": {"name": "n"}});
        assert_eq!(node_status(&bare), "Unknown");
        assert_eq!(node_roles(&bare), "<none>");
        let not_ready = json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}});
        assert_eq!(node_status(&not_ready), "NotReady");
    }

    #[test]
    fn unschedulable_field() {
        let s = NodeStrategy;
        assert_eq!(
            s.field_value(&node(), "spec.unschedulable").as_deref(),
            Some("true")
        );
        assert_eq!(
            s.field_value(&json!({}), "spec.unschedulable").as_deref(),
            Some("false")
        );
        assert_eq!(s.field_value(&node(), "status.phase"), None);
    }

    #[test]
    fn taints_are_checked() {
        let s = NodeStrategy;
        let n = json!({"spec": {"taints": [
            {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
            {"key": "dedicated", "value": "x", "effect": "NoSchedule"},
            {"key": "", "effect": "Sometimes"}
        ]}});
        let causes = s.validate(&n);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.taints[1]",
                "spec.taints[2].key",
                "spec.taints[2].effect"
            ]
        );
        assert_eq!(causes[2].reason, "FieldValueNotSupported");
    }
}
