//! ConfigMap: the ConfigMap strategy.
//!
//! Keys must be usable as file names when a ConfigMap is mounted, so they are checked
//! as Kubernetes checks them; a ConfigMap marked `immutable` keeps its data for good.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::table::{self, Column};
use super::validation::{self, Cause};
use super::{decode_as, ResourceDef, Strategy};

struct ConfigMapStrategy;

/// Causes for the `immutable` rules shared by ConfigMaps and Secrets: once `immutable`
/// is true it stays true and `fields` stay as they are.
pub(super) fn immutable_data_causes(new: &Value, old: &Value, fields: &[&str]) -> Vec<Cause> {
    let mut causes = Vec::new();
    if old.get("immutable").and_then(Value::as_bool) != Some(true) {
        return causes;
    }
    const DETAIL: &str = "field is immutable when `immutable` is set";
    if new.get("immutable").and_then(Value::as_bool) != Some(true) {
        causes.push(Cause::forbidden("immutable", DETAIL));
    }
    for f in fields {
        let n = new.get(*f).filter(|v| !v.is_null());
        let o = old.get(*f).filter(|v| !v.is_null());
        let empty = |v: Option<&Value>| v.and_then(Value::as_object).is_none_or(|m| m.is_empty());
        let same = n == o || (empty(n) && empty(o));
        if !same {
            causes.push(Cause::forbidden(*f, DETAIL));
        }
    }
    causes
}

impl Strategy for ConfigMapStrategy {
    fn decode(&self, obj: &Value) -> Result<Value, String> {
        decode_as::<k8s_openapi::api::core::v1::ConfigMap>(obj)
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        let data = obj.get("data").and_then(Value::as_object);
        let binary = obj.get("binaryData").and_then(Value::as_object);
        let mut total = 0usize;
        for (k, v) in data.into_iter().flatten() {
            for msg in validation::config_map_key(k) {
                causes.push(Cause::invalid(format!("data[{k}]"), k, msg));
            }
            total += v.as_str().map_or(0, str::len);
        }
        for (k, v) in binary.into_iter().flatten() {
            for msg in validation::config_map_key(k) {
                causes.push(Cause::invalid(format!("binaryData[{k}]"), k, msg));
            }
            if data.is_some_and(|d| d.contains_key(k)) {
                causes.push(Cause::invalid(
                    format!("binaryData[{k}]"),
                    k,
                    "duplicate of key present in data",
                ));
            }
            // Stored base64: the decoded size is three quarters of it.
            total += v.as_str().map_or(0, |s| s.len() / 4 * 3);
        }
        if total > validation::MAX_DATA_SIZE {
            causes.push(Cause::too_long("data", validation::MAX_DATA_SIZE));
        }
        causes
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let mut causes = self.validate(new);
        causes.extend(immutable_data_causes(new, old, &["data", "binaryData"]));
        causes
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::name(),
            Column::new(
                "Data",
                "string",
                "Data contains the configuration data. Each key must consist of alphanumeric characters, '-', '_' or '.'. Values with non-UTF-8 byte sequences must use the BinaryData field. The keys stored in Data must not overlap with the keys in the BinaryData field, this is enforced during validation process.",
            ),
            Column::age(),
        ]
    }

    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        let count = table::len_at(obj, "/data") + table::len_at(obj, "/binaryData");
        vec![
            json!(table::name_of(obj)),
            json!(count),
            json!(table::age(obj, now)),
        ]
    }
}

pub(super) fn def() -> ResourceDef {
    ResourceDef {
        group: "",
        version: "v1",
        kind: "ConfigMap",
        plural: "configmaps",
        singular: "configmap",
        namespaced: true,
        short_names: &["cm"],
        categories: &[],
        subresources: &[],
        strategy: Box::new(ConfigMapStrategy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2024-01-01T00:00:10Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    #[test]
    fn cells_count_both_maps() {
        let s = ConfigMapStrategy;
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cfg", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "data": {"a": "1", "b.txt": "2"},
            "binaryData": {"c.bin": "AAEC"}
        });
        assert!(s.decode(&cm).is_ok());
        assert!(s.validate(&cm).is_empty());
        assert_eq!(
            s.cells(&cm, now()),
            vec![json!("cfg"), json!(3), json!("10s")]
        );
        assert_eq!(
            s.cells(&json!({"metadata": {"name": "e"}}), now())[1],
            json!(0)
        );
    }

    #[test]
    fn keys_are_checked() {
        let s = ConfigMapStrategy;
        let cm =
            json!({"data": {"bad/key": "x", "..": "y", "ok": "z"}, "binaryData": {"ok": "AA=="}});
        let causes = s.validate(&cm);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, vec!["data[bad/key]", "data[..]", "binaryData[ok]"]);
        assert!(causes[0]
            .message
            .contains("a valid config key must consist of"));
        assert_eq!(causes[1].message, "Invalid value: \"..\": must not be '..'");
        assert!(causes[2]
            .message
            .contains("duplicate of key present in data"));
    }

    #[test]
    fn oversized_data_is_rejected() {
        let big = "x".repeat(validation::MAX_DATA_SIZE + 1);
        let causes = ConfigMapStrategy.validate(&json!({"data": {"k": big}}));
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].reason, "FieldValueTooLong");
    }

    #[test]
    fn immutable_configmaps_keep_their_data() {
        let s = ConfigMapStrategy;
        let old = json!({"immutable": true, "data": {"a": "1"}});
        assert!(s.validate_update(&old, &old).is_empty());
        let changed = json!({"immutable": true, "data": {"a": "2"}});
        let causes = s.validate_update(&changed, &old);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "data");
        assert_eq!(causes[0].reason, "FieldValueForbidden");
        let unset = json!({"immutable": false, "data": {"a": "1"}});
        assert_eq!(s.validate_update(&unset, &old)[0].field, "immutable");
        // A mutable ConfigMap may change freely and may become immutable.
        let mutable = json!({"data": {"a": "1"}});
        assert!(s.validate_update(&changed, &mutable).is_empty());
    }
}
