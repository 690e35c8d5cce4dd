//! ControllerRevision: the ControllerRevision strategy.
//!
//! A ControllerRevision is an immutable snapshot of a controller's template (for a
//! DaemonSet, a strategic merge patch that replaces `spec.template`), numbered by
//! `revision`. The DaemonSet controller writes them; `kubectl rollout history` lists them
//! and `kubectl rollout undo` patches a DaemonSet with one's `data`.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::table::{self, Column};
use super::validation::{self, Cause};
use super::{decode_as, ResourceDef, Strategy};

struct ControllerRevisionStrategy;

impl Strategy for ControllerRevisionStrategy {
    fn decode(&self, obj: &Value) -> Result<Value, String> {
        decode_as::<k8s_openapi::api::apps::v1::ControllerRevision>(obj)
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        if obj.get("data").is_none_or(Value::is_null) {
            let mut cause = Cause::required("data");
            cause.message = "Required value: data is mandatory".to_string();
            causes.push(cause);
        }
        match obj.get("revision").and_then(Value::as_i64) {
            Some(r) if r < 0 => causes.push(Cause::invalid_int(
                "revision",
                r,
                "must be greater than or equal to 0",
            )),
            _ => {}
        }
        causes
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let mut causes = self.validate(new);
        causes.extend(validation::immutable("data", "/data", new, old));
        causes
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::name(),
            Column::new("Controller", "string", "Controller of the object"),
            Column::new(
                "Revision",
                "string",
                "Revision indicates the revision of the state represented by Data.",
            ),
            Column::age(),
        ]
    }

    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        vec![
            json!(table::name_of(obj)),
            json!(controller_of(obj)),
            json!(obj.get("revision").and_then(Value::as_i64).unwrap_or(0)),
            json!(table::age(obj, now)),
        ]
    }
}

/// `daemonset.apps/web`: the controlling owner as upstream's printer names it, or
/// `<none>`.
fn controller_of(obj: &Value) -> String {
    let owner = obj
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .and_then(|refs| {
            refs.iter()
                .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
        });
    let Some(owner) = owner else {
        return "<none>".to_string();
    };
    let kind = table::str_at(owner, "/kind").to_lowercase();
    let name = table::str_at(owner, "/name");
    match table::str_at(owner, "/apiVersion").split_once('/') {
        Some((group, _)) => format!("{kind}.{group}/{name}"),
        None => format!("{kind}/{name}"),
    }
}

pub(super) fn def() -> ResourceDef {
    ResourceDef {
        group: "apps",
        version: "v1",
        kind: "ControllerRevision",
        plural: "controllerrevisions",
        singular: "controllerrevision",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
        strategy: Box::new(ControllerRevisionStrategy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revision() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "ControllerRevision",
            "metadata": {"name": "web-5d9c7b", "creationTimestamp": "2024-01-01T00:00:00Z",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet",
                    "name": "web", "uid": "u1", "controller": true}]},
            "data": {"spec": {"template": {"$patch": "replace",
                "spec": {"containers": [{"name": "c", "image": "file:///m.wasm"}]}}}},
            "revision": 3
        })
    }

    #[test]
    fn data_survives_decoding_whole() {
        let r = revision();
        let decoded = ControllerRevisionStrategy.decode(&r).unwrap();
        assert_eq!(decoded["data"], r["data"]);
        assert!(super::super::unknown_fields(&r, &decoded).is_empty());
    }

    #[test]
    fn cells_name_the_controller_and_revision() {
        let now = DateTime::parse_from_rfc3339("2024-01-01T00:01:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        let s = ControllerRevisionStrategy;
        assert_eq!(
            s.cells(&revision(), now),
            vec![
                json!("web-5d9c7b"),
                json!("daemonset.apps/web"),
                json!(3),
                json!("60s")
            ]
        );
        let orphan = json!({"metadata": {"name": "x"}, "revision": 1});
        assert_eq!(s.cells(&orphan, now)[1], json!("<none>"));
    }

    #[test]
    fn data_is_required_and_immutable_and_revision_not_negative() {
        let s = ControllerRevisionStrategy;
        assert!(s.validate(&revision()).is_empty());
        let causes = s.validate(&json!({"metadata": {"name": "x"}, "revision": -1}));
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, vec!["data", "revision"]);
        assert_eq!(causes[0].message, "Required value: data is mandatory");

        let mut changed = revision();
        changed["data"] = json!({"spec": {}});
        let causes = s.validate_update(&changed, &revision());
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "data");
        let mut renumbered = revision();
        renumbered["revision"] = json!(7);
        assert!(s.validate_update(&renumbered, &revision()).is_empty());
    }
}
