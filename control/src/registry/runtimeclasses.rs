//! RuntimeClass: the RuntimeClass strategy.
//!
//! A RuntimeClass names the runtime handler (for wasmkube: the engine, such as the
//! wasm engine or Docker) that pods selecting it run under. The handler is a DNS label
//! and cannot change, since running pods were started with it.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::table::{self, Column};
use super::validation::{self, Cause};
use super::{decode_as, ResourceDef, Strategy};

struct RuntimeClassStrategy;

impl Strategy for RuntimeClassStrategy {
    fn decode(&self, obj: &Value) -> Result<Value, String> {
        decode_as::<k8s_openapi::api::node::v1::RuntimeClass>(obj)
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        let handler = table::str_at(obj, "/handler");
        if handler.is_empty() {
            causes.push(Cause::required("handler"));
        } else if let Some(msg) = validation::dns1123_label(handler) {
            causes.push(Cause::invalid("handler", handler, msg));
        }
        causes.extend(validation::validate_labels(
            obj.pointer("/scheduling/nodeSelector"),
            "scheduling.nodeSelector",
        ));
        causes
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let mut causes = self.validate(new);
        causes.extend(validation::immutable("handler", "/handler", new, old));
        causes
    }

    fn columns(&self) -> Vec<Column> {
        // Upstream takes this description from ObjectMeta, which has no `handler`
        // field, so it is empty there too.
        vec![
            Column::name(),
            Column::new("Handler", "string", ""),
            Column::age(),
        ]
    }

    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        vec![
            json!(table::name_of(obj)),
            json!(table::str_at(obj, "/handler")),
            json!(table::age(obj, now)),
        ]
    }
}

pub(super) fn def() -> ResourceDef {
    ResourceDef {
        group: "node.k8s.io",
        version: "v1",
        kind: "RuntimeClass",
        plural: "runtimeclasses",
        singular: "runtimeclass",
        namespaced: false,
        short_names: &[],
        categories: &[],
        subresources: &[],
        strategy: Box::new(RuntimeClassStrategy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_rules() {
        let s = RuntimeClassStrategy;
        let rc = json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
            "metadata": {"name": "wasm"}, "handler": "wasmtime"});
        assert!(s.decode(&rc).is_ok());
        assert!(s.validate(&rc).is_empty());
        let missing = s.validate(&json!({"metadata": {"name": "x"}}));
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].field, "handler");
        assert_eq!(missing[0].reason, "FieldValueRequired");
        let bad = s.validate(&json!({"handler": "Wasm_Time"}));
        assert_eq!(bad[0].reason, "FieldValueInvalid");
        let changed = s.validate_update(&json!({"handler": "docker"}), &rc);
        assert_eq!(changed.len(), 1);
        assert_eq!(
            changed[0].message,
            "Invalid value: \"docker\": field is immutable"
        );
        let selector =
            s.validate(&json!({"handler": "h", "scheduling": {"nodeSelector": {"a b": "c"}}}));
        assert_eq!(selector[0].field, "scheduling.nodeSelector");
    }

    #[test]
    fn cells() {
        let now = DateTime::parse_from_rfc3339("2024-01-01T00:00:01Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        let rc = json!({"metadata": {"name": "wasm", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "handler": "wasmtime"});
        assert_eq!(
            RuntimeClassStrategy.cells(&rc, now),
            vec![json!("wasm"), json!("wasmtime"), json!("1s")]
        );
    }
}
