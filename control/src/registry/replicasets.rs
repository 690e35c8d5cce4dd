//! ReplicaSet: the ReplicaSet strategy.
//!
//! One replica by default, a selector that must match the template and may not change,
//! the `status.replicas` field selector, and the `kubectl get replicasets` columns.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::podspec::{self, int_at, nonnegative};
use super::table::{self, Column};
use super::validation::Cause;
use super::{decode_as, ResourceDef, Strategy, Subresource};

struct ReplicaSetStrategy;

impl Strategy for ReplicaSetStrategy {
    fn decode(&self, obj: &Value) -> Result<Value, String> {
        decode_as::<k8s_openapi::api::apps::v1::ReplicaSet>(obj)
    }

    fn default(&self, obj: &mut Value) {
        let Some(spec) = podspec::spec_mut(obj) else {
            return;
        };
        if spec.get("replicas").is_none_or(Value::is_null) {
            spec.insert("replicas".into(), json!(1));
        }
        let template = spec.entry("template").or_insert_with(|| json!({}));
        podspec::default_pod_template(template);
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        if let Some(o) = obj.as_object_mut() {
            o.insert("status".into(), json!({"replicas": 0}));
        }
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let empty = Map::new();
        let spec = obj.get("spec").and_then(Value::as_object).unwrap_or(&empty);
        let mut out = Vec::new();
        nonnegative(
            &mut out,
            "spec.replicas",
            int_at(spec, "replicas").unwrap_or(0),
        );
        nonnegative(
            &mut out,
            "spec.minReadySeconds",
            int_at(spec, "minReadySeconds").unwrap_or(0),
        );
        // Upstream words the empty-selector message with "deployment" here too.
        out.extend(podspec::validate_workload_spec(
            spec,
            "deployment",
            "ReplicaSet",
        ));
        out
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let mut out = self.validate(new);
        out.extend(podspec::selector_immutable(new, old));
        out
    }

    fn tracks_generation(&self) -> bool {
        true
    }

    fn field_value(&self, obj: &Value, field: &str) -> Option<String> {
        match field {
            "status.replicas" => Some(
                obj.pointer("/status/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
                    .to_string(),
            ),
            _ => None,
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::name(),
            Column::new(
                "Desired",
                "integer",
                "Replicas is the number of desired pods. This is a pointer to distinguish between explicit zero and unspecified. Defaults to 1.",
            ),
            Column::new(
                "Current",
                "integer",
                "Replicas is the most recently observed number of non-terminating pods.",
            ),
            Column::new(
                "Ready",
                "integer",
                "The number of non-terminating pods targeted by this ReplicaSet with a Ready Condition.",
            ),
            Column::age(),
        ]
        .into_iter()
        .chain(podspec::template_columns("Selector is a label query over pods that should match the replica count."))
        .collect()
    }

    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        let int = |ptr: &str| obj.pointer(ptr).and_then(Value::as_i64).unwrap_or(0);
        let (containers, images) = podspec::container_cells(obj.pointer("/spec/template/spec"));
        vec![
            json!(table::name_of(obj)),
            json!(int("/spec/replicas")),
            json!(int("/status/replicas")),
            json!(int("/status/readyReplicas")),
            json!(table::age(obj, now)),
            json!(containers),
            json!(images),
            json!(podspec::format_label_selector(
                obj.pointer("/spec/selector")
            )),
        ]
    }
}

pub(super) fn def() -> ResourceDef {
    ResourceDef {
        group: "apps",
        version: "v1",
        kind: "ReplicaSet",
        plural: "replicasets",
        singular: "replicaset",
        namespaced: true,
        short_names: &["rs"],
        categories: &["all"],
        subresources: &[Subresource::Status, Subresource::Scale],
        strategy: Box::new(ReplicaSetStrategy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn minimal() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web-abc", "namespace": "default", "creationTimestamp": "2025-01-01T11:58:00Z"},
            "spec": {
                "selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b"}]}
                }
            }
        })
    }

    #[test]
    fn defaults_validation_and_immutable_selector() {
        let mut rs = minimal();
        ReplicaSetStrategy.default(&mut rs);
        assert_eq!(rs["spec"]["replicas"], 1);
        assert_eq!(
            rs["spec"]["template"]["spec"]["containers"][1]["imagePullPolicy"],
            "Always"
        );
        assert!(ReplicaSetStrategy.validate(&rs).is_empty());

        let mut bad = rs.clone();
        bad["spec"]["template"]["metadata"]["labels"] = json!({});
        let causes = ReplicaSetStrategy.validate(&bad);
        assert!(
            causes
                .iter()
                .any(|c| c.field == "spec.template.metadata.labels"),
            "{causes:?}"
        );

        let mut empty_sel = rs.clone();
        empty_sel["spec"]["selector"] = json!({});
        let causes = ReplicaSetStrategy.validate(&empty_sel);
        assert!(causes.iter().any(|c| {
            c.field == "spec.selector"
                && c.message
                    .ends_with("empty selector is invalid for deployment")
        }));

        let mut moved = rs.clone();
        moved["spec"]["selector"] = json!({"matchLabels": {"app": "web"}});
        let causes = ReplicaSetStrategy.validate_update(&moved, &rs);
        assert!(
            causes.iter().any(|c| c.field == "spec.selector"),
            "{causes:?}"
        );
    }

    #[test]
    fn cells_and_fields() {
        let mut rs = minimal();
        ReplicaSetStrategy.default(&mut rs);
        rs["status"] = json!({"replicas": 1, "readyReplicas": 1});
        let now = Utc
            .with_ymd_and_hms(2025, 1, 1, 12, 0, 0)
            .single()
            .unwrap_or_default();
        let cells = ReplicaSetStrategy.cells(&rs, now);
        assert_eq!(cells.len(), ReplicaSetStrategy.columns().len());
        assert_eq!(
            cells,
            vec![
                json!("web-abc"),
                json!(1),
                json!(1),
                json!(1),
                json!("2m"),
                json!("a,b"),
                json!("a:1,b"),
                json!("app in (web)"),
            ]
        );
        assert_eq!(
            ReplicaSetStrategy
                .field_value(&rs, "status.replicas")
                .as_deref(),
            Some("1")
        );
    }
}
