//! Namespace: the Namespace strategy.
//!
//! A namespace is born Active with the `kubernetes` finalizer in `spec.finalizers`, which
//! the namespace controller removes once the namespace's contents are gone. Every
//! namespace carries the immutable `kubernetes.io/metadata.name` label so that selectors
//! (network policies, admission) can pick namespaces by name.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::table::{self, Column};
use super::validation::{self, Cause};
use super::{decode_as, ResourceDef, Strategy, Subresource};

/// The label every namespace carries with its own name.
pub const METADATA_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The finalizer that keeps a namespace until its contents are deleted.
pub const KUBERNETES_FINALIZER: &str = "kubernetes";

/// Finalizer names that need no `domain/` prefix.
const STANDARD_FINALIZERS: &[&str] = &[KUBERNETES_FINALIZER, "orphan", "foregroundDeletion"];

struct NamespaceStrategy;

/// Sets the name label; Kubernetes overwrites whatever a client put there.
fn set_name_label(obj: &mut Value) {
    let Some(name) = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
    else {
        return;
    };
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let labels = meta.entry("labels").or_insert_with(|| json!({}));
    if !labels.is_object() {
        *labels = json!({});
    }
    if let Some(labels) = labels.as_object_mut() {
        labels.insert(METADATA_NAME_LABEL.to_string(), json!(name));
    }
}

impl Strategy for NamespaceStrategy {
    fn decode(&self, obj: &Value) -> Result<Value, String> {
        decode_as::<k8s_openapi::api::core::v1::Namespace>(obj)
    }

    fn default(&self, obj: &mut Value) {
        set_name_label(obj);
        let Some(map) = obj.as_object_mut() else {
            return;
        };
        let status = map.entry("status").or_insert_with(|| json!({}));
        if let Some(status) = status.as_object_mut() {
            let phase_missing = status
                .get("phase")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty);
            if phase_missing {
                status.insert("phase".to_string(), json!("Active"));
            }
        }
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        set_name_label(obj);
        let Some(map) = obj.as_object_mut() else {
            return;
        };
        map.insert("status".to_string(), json!({"phase": "Active"}));
        let spec = map.entry("spec").or_insert_with(|| json!({}));
        if !spec.is_object() {
            *spec = json!({});
        }
        let Some(spec) = spec.as_object_mut() else {
            return;
        };
        let finalizers = spec.entry("finalizers").or_insert_with(|| json!([]));
        if !finalizers.is_array() {
            *finalizers = json!([]);
        }
        if let Some(list) = finalizers.as_array_mut() {
            if !list.iter().any(|f| f == KUBERNETES_FINALIZER) {
                list.push(json!(KUBERNETES_FINALIZER));
            }
        }
    }

    fn validate_name(&self, name: &str) -> Option<String> {
        validation::dns1123_label(name)
    }

    /// `spec.finalizers` only change through `namespaces/<name>/finalize`.
    fn prepare_for_update(&self, new: &mut Value, old: &Value) {
        let finalizers = old
            .pointer("/spec/finalizers")
            .cloned()
            .unwrap_or_else(|| json!([]));
        if !new.get("spec").is_some_and(Value::is_object) {
            new["spec"] = json!({});
        }
        new["spec"]["finalizers"] = finalizers;
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        let finalizers = obj
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (i, f) in finalizers.iter().enumerate() {
            let f = f.as_str().unwrap_or("");
            let path = format!("spec.finalizers[{i}]");
            let msgs = validation::qualified_name(f);
            if !msgs.is_empty() {
                for msg in msgs {
                    causes.push(Cause::invalid(&path, f, msg));
                }
            } else if !f.contains('/') && !STANDARD_FINALIZERS.contains(&f) {
                causes.push(Cause::invalid(
                    &path,
                    f,
                    "name is neither a standard finalizer name nor is it fully qualified",
                ));
            }
        }
        let phase = table::str_at(obj, "/status/phase");
        if !phase.is_empty() && phase != "Active" && phase != "Terminating" {
            causes.push(Cause::not_supported(
                "status.phase",
                phase,
                &["Active", "Terminating"],
            ));
        }
        causes
    }

    fn field_value(&self, obj: &Value, field: &str) -> Option<String> {
        match field {
            "status.phase" => Some(table::str_at(obj, "/status/phase").to_string()),
            // A legacy alias upstream still accepts for namespaces.
            "name" => Some(table::name_of(obj).to_string()),
            _ => None,
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::name(),
            Column::new("Status", "string", "The status of the namespace"),
            Column::age(),
        ]
    }

    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        vec![
            json!(table::name_of(obj)),
            json!(table::str_at(obj, "/status/phase")),
            json!(table::age(obj, now)),
        ]
    }
}

pub(super) fn def() -> ResourceDef {
    ResourceDef {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        singular: "namespace",
        namespaced: false,
        short_names: &["ns"],
        categories: &[],
        subresources: &[Subresource::Status, Subresource::Finalize],
        strategy: Box::new(NamespaceStrategy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2024-01-01T01:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    #[test]
    fn create_defaults() {
        let s = NamespaceStrategy;
        let mut ns = json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "team-a", "labels": {"kubernetes.io/metadata.name": "spoofed"}},
            "spec": {"finalizers": ["example.com/keep"]},
            "status": {"phase": "Terminating"}
        });
        s.default(&mut ns);
        s.prepare_for_create(&mut ns);
        assert_eq!(ns["metadata"]["labels"][METADATA_NAME_LABEL], "team-a");
        assert_eq!(ns["status"], json!({"phase": "Active"}));
        assert_eq!(
            ns["spec"]["finalizers"],
            json!(["example.com/keep", "kubernetes"])
        );
        assert!(s.validate(&ns).is_empty());
        assert!(s.decode(&ns).is_ok());

        let mut bare = json!({"metadata": {"name": "b"}});
        s.default(&mut bare);
        s.prepare_for_create(&mut bare);
        assert_eq!(bare["spec"]["finalizers"], json!(["kubernetes"]));
        assert_eq!(
            bare["metadata"]["labels"],
            json!({METADATA_NAME_LABEL: "b"})
        );
    }

    #[test]
    fn default_keeps_phase() {
        let mut ns = json!({"metadata": {"name": "x"}, "status": {"phase": "Terminating"}});
        NamespaceStrategy.default(&mut ns);
        assert_eq!(ns["status"]["phase"], "Terminating");
        let mut ns = json!({"metadata": {"name": "x"}});
        NamespaceStrategy.default(&mut ns);
        assert_eq!(ns["status"]["phase"], "Active");
    }

    #[test]
    fn names_are_dns_labels() {
        let s = NamespaceStrategy;
        assert!(s.validate_name("kube-system").is_none());
        assert!(s.validate_name("a.b").is_some());
        assert!(s.validate_name("UPPER").is_some());
    }

    #[test]
    fn finalizer_names() {
        let s = NamespaceStrategy;
        let ns = json!({"metadata": {"name": "x"}, "spec": {"finalizers": ["kubernetes", "custom", "bad name/x"]}});
        let causes = s.validate(&ns);
        assert_eq!(causes.len(), 2, "{causes:?}");
        assert_eq!(causes[0].field, "spec.finalizers[1]");
        assert!(causes[0]
            .message
            .contains("neither a standard finalizer name"));
        assert_eq!(causes[1].field, "spec.finalizers[2]");
    }

    #[test]
    fn table_and_fields() {
        let s = NamespaceStrategy;
        let ns = json!({
            "metadata": {"name": "default", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "status": {"phase": "Active"}
        });
        assert_eq!(s.columns().len(), 3);
        assert_eq!(
            s.cells(&ns, now()),
            vec![json!("default"), json!("Active"), json!("60m")]
        );
        assert_eq!(
            s.field_value(&ns, "status.phase").as_deref(),
            Some("Active")
        );
        assert_eq!(s.field_value(&ns, "name").as_deref(), Some("default"));
        assert_eq!(s.field_value(&ns, "spec.x"), None);
    }
}
