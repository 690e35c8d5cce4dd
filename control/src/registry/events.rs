//! Event: the core/v1 Event strategy.
//!
//! core/v1 keeps the lenient legacy rules: event names only need to be usable in a URL
//! (recorders generate `<object>.<hex>` names), `type` is neither defaulted nor
//! required, and an event about a namespaced object must live in that object's
//! namespace. `kubectl describe` finds events through the `involvedObject.*` field
//! selectors.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::table::{self, Column};
use super::validation::{self, Cause};
use super::{decode_as, ResourceDef, Strategy};

struct EventStrategy;

/// `source.component`, else `reportingComponent`, then `, host` (or the reporting
/// instance) when there is one — as kubectl prints the Source column.
fn format_source(obj: &Value) -> String {
    let first = |a: &str, b: &str| {
        let x = table::str_at(obj, a);
        if x.is_empty() {
            table::str_at(obj, b).to_string()
        } else {
            x.to_string()
        }
    };
    let component = first("/source/component", "/reportingComponent");
    let instance = first("/source/host", "/reportingInstance");
    if instance.is_empty() {
        component
    } else {
        format!("{component}, {instance}")
    }
}

fn present(obj: &Value, pointer: &str) -> bool {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
}

impl Strategy for EventStrategy {
    fn decode(&self, obj: &Value) -> Result<Value, String> {
        decode_as::<k8s_openapi::api::core::v1::Event>(obj)
    }

    fn validate_name(&self, name: &str) -> Option<String> {
        validation::path_segment_name(name)
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        // The event's own namespace comes from the request path; without it there is
        // nothing to compare against.
        let Some(ns) = obj.pointer("/metadata/namespace").and_then(Value::as_str) else {
            return causes;
        };
        let involved_ns = table::str_at(obj, "/involvedObject/namespace");
        let mismatch = if present(obj, "/eventTime") {
            involved_ns.is_empty() && ns != "default" && ns != "kube-system"
        } else if involved_ns.is_empty() {
            !ns.is_empty() && ns != "default"
        } else {
            ns != involved_ns
        };
        if mismatch {
            causes.push(Cause::invalid(
                "involvedObject.namespace",
                involved_ns,
                "does not match event.namespace",
            ));
        }
        if present(obj, "/eventTime") {
            // Events in the newer style must say who reported them and what happened.
            for (ptr, field) in [
                ("/reportingComponent", "reportingComponent"),
                ("/reportingInstance", "reportingInstance"),
                ("/action", "action"),
                ("/reason", "reason"),
            ] {
                if !present(obj, ptr) {
                    causes.push(Cause::required(field));
                }
            }
        }
        causes
    }

    fn field_value(&self, obj: &Value, field: &str) -> Option<String> {
        let ptr = match field {
            "involvedObject.kind" => "/involvedObject/kind",
            "involvedObject.namespace" => "/involvedObject/namespace",
            "involvedObject.name" => "/involvedObject/name",
            "involvedObject.uid" => "/involvedObject/uid",
            "involvedObject.apiVersion" => "/involvedObject/apiVersion",
            "involvedObject.resourceVersion" => "/involvedObject/resourceVersion",
            "involvedObject.fieldPath" => "/involvedObject/fieldPath",
            "reason" => "/reason",
            "reportingComponent" => "/reportingComponent",
            "type" => "/type",
            "source" => {
                let component = table::str_at(obj, "/source/component");
                return Some(if component.is_empty() {
                    table::str_at(obj, "/reportingComponent").to_string()
                } else {
                    component.to_string()
                });
            }
            _ => return None,
        };
        Some(table::str_at(obj, ptr).to_string())
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new(
                "Last Seen",
                "string",
                "The time at which the most recent occurrence of this event was recorded.",
            ),
            Column::new(
                "Type",
                "string",
                "Type of this event (Normal, Warning), new types could be added in the future",
            ),
            Column::new(
                "Reason",
                "string",
                "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
            ),
            Column::new("Object", "string", "The object that this event is about."),
            Column::wide(
                "Subobject",
                "string",
                "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement, such as desiredState.manifest.containers[2]. For example, if the object reference is to a container within a pod, this would take on a value like: \"spec.containers{name}\" (where \"name\" refers to the name of the container that triggered the event) or if no container name is specified \"spec.containers[2]\" (container with index 2 in this pod). This syntax is chosen only to have some well-defined way of referencing a part of an object.",
            ),
            Column::wide(
                "Source",
                "string",
                "The component reporting this event. Should be a short machine understandable string.",
            ),
            Column::new(
                "Message",
                "string",
                "A human-readable description of the status of this operation.",
            ),
            Column::wide(
                "First Seen",
                "string",
                "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)",
            ),
            Column::wide(
                "Count",
                "string",
                "The number of times this event has occurred.",
            ),
            Column {
                priority: 1,
                ..Column::name()
            },
        ]
    }

    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        let first_seen = if obj.get("firstTimestamp").is_some_and(|v| !v.is_null()) {
            table::timestamp_age(obj.get("firstTimestamp"), now)
        } else {
            table::timestamp_age(obj.get("eventTime"), now)
        };
        let mut last_seen = if obj.get("lastTimestamp").is_some_and(|v| !v.is_null()) {
            table::timestamp_age(obj.get("lastTimestamp"), now)
        } else {
            first_seen.clone()
        };
        let mut count = obj.get("count").and_then(Value::as_i64).unwrap_or(0);
        if let Some(series) = obj.get("series").filter(|s| s.is_object()) {
            last_seen = table::timestamp_age(series.get("lastObservedTime"), now);
            count = series.get("count").and_then(Value::as_i64).unwrap_or(0);
        } else if count == 0 {
            // Singleton events of the newer API carry no count.
            count = 1;
        }
        let kind = table::str_at(obj, "/involvedObject/kind").to_lowercase();
        let name = table::str_at(obj, "/involvedObject/name");
        let target = if name.is_empty() {
            kind
        } else {
            format!("{kind}/{name}")
        };
        vec![
            json!(last_seen),
            json!(table::str_at(obj, "/type")),
            json!(table::str_at(obj, "/reason")),
            json!(target),
            json!(table::str_at(obj, "/involvedObject/fieldPath")),
            json!(format_source(obj)),
            json!(table::str_at(obj, "/message").trim()),
            json!(first_seen),
            json!(count),
            json!(table::name_of(obj)),
        ]
    }
}

pub(super) fn def() -> ResourceDef {
    ResourceDef {
        group: "",
        version: "v1",
        kind: "Event",
        plural: "events",
        singular: "event",
        namespaced: true,
        short_names: &["ev"],
        categories: &[],
        subresources: &[],
        strategy: Box::new(EventStrategy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2024-01-01T00:10:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    fn event() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "web-1.17a2b3c4d5e6f708", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "namespace": "default", "name": "web-1",
                               "uid": "u-1", "apiVersion": "v1", "fieldPath": "spec.containers{app}"},
            "reason": "Pulled", "message": "  Image pulled  \n", "type": "Normal",
            "source": {"component": "kubelet", "host": "node-1"},
            "firstTimestamp": "2024-01-01T00:00:00Z", "lastTimestamp": "2024-01-01T00:08:00Z",
            "count": 3
        })
    }

    #[test]
    fn cells_match_kubectl() {
        let s = EventStrategy;
        let ev = event();
        assert!(s.decode(&ev).is_ok());
        let cols: Vec<&str> = s.columns().iter().map(|c| c.name).collect();
        assert_eq!(
            cols,
            vec![
                "Last Seen",
                "Type",
                "Reason",
                "Object",
                "Subobject",
                "Source",
                "Message",
                "First Seen",
                "Count",
                "Name"
            ]
        );
        let shown: Vec<&str> = s
            .columns()
            .iter()
            .filter(|c| c.priority == 0)
            .map(|c| c.name)
            .collect();
        assert_eq!(
            shown,
            vec!["Last Seen", "Type", "Reason", "Object", "Message"]
        );
        assert_eq!(
            s.cells(&ev, now()),
            vec![
                json!("2m"),
                json!("Normal"),
                json!("Pulled"),
                json!("pod/web-1"),
                json!("spec.containers{app}"),
                json!("kubelet, node-1"),
                json!("Image pulled"),
                json!("10m"),
                json!(3),
                json!("web-1.17a2b3c4d5e6f708"),
            ]
        );
    }

    #[test]
    fn new_style_event_cells() {
        let ev = json!({
            "metadata": {"name": "e"},
            "involvedObject": {"kind": "Node"},
            "eventTime": "2024-01-01T00:09:00.123456Z",
            "series": {"count": 7, "lastObservedTime": "2024-01-01T00:09:50.000000Z"},
            "reportingComponent": "wasmkube-scheduler", "reportingInstance": "host-a"
        });
        let cells = EventStrategy.cells(&ev, now());
        assert_eq!(cells[0], json!("10s"));
        assert_eq!(cells[3], json!("node"));
        assert_eq!(cells[5], json!("wasmkube-scheduler, host-a"));
        assert_eq!(cells[7], json!("59s"));
        assert_eq!(cells[8], json!(7));
        let bare = EventStrategy.cells(&json!({}), now());
        assert_eq!(bare[0], json!("<unknown>"));
        assert_eq!(bare[8], json!(1));
    }

    #[test]
    fn field_selectors() {
        let s = EventStrategy;
        let ev = event();
        for (field, want) in [
            ("involvedObject.kind", "Pod"),
            ("involvedObject.namespace", "default"),
            ("involvedObject.name", "web-1"),
            ("involvedObject.uid", "u-1"),
            ("involvedObject.apiVersion", "v1"),
            ("involvedObject.resourceVersion", ""),
            ("involvedObject.fieldPath", "spec.containers{app}"),
            ("reason", "Pulled"),
            ("reportingComponent", ""),
            ("source", "kubelet"),
            ("type", "Normal"),
        ] {
            assert_eq!(s.field_value(&ev, field).as_deref(), Some(want), "{field}");
        }
        assert_eq!(s.field_value(&ev, "message"), None);
        let reported = json!({"reportingComponent": "ctrl"});
        assert_eq!(s.field_value(&reported, "source").as_deref(), Some("ctrl"));
    }

    #[test]
    fn validation() {
        let s = EventStrategy;
        assert!(s.validate(&event()).is_empty());
        let mut elsewhere = event();
        elsewhere["metadata"]["namespace"] = json!("other");
        let causes = s.validate(&elsewhere);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "involvedObject.namespace");
        // Events about cluster-scoped objects go to "default".
        let node_event = json!({"metadata": {"namespace": "default"}, "involvedObject": {"kind": "Node", "name": "n1"}});
        assert!(s.validate(&node_event).is_empty());
        let new_style = json!({"metadata": {"namespace": "default"}, "involvedObject": {"namespace": "default"},
            "eventTime": "2024-01-01T00:00:00.000000Z", "reason": "X"});
        let fields: Vec<String> = s
            .validate(&new_style)
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(
            fields,
            vec!["reportingComponent", "reportingInstance", "action"]
        );
    }

    #[test]
    fn names_only_need_to_be_path_segments() {
        let s = EventStrategy;
        assert!(s.validate_name("web-1.17a2b3c4d5e6f708").is_none());
        assert!(s.validate_name("Mixed_Case:ok").is_none());
        assert!(s.validate_name("a/b").is_some());
        assert!(s.validate_name("..").is_some());
    }
}
