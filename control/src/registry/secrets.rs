//! Secret: the Secret strategy.
//!
//! `stringData` is write-only: it is merged into `data` (base64) when the object is
//! decoded and never stored, as Kubernetes does. Well-known types require their keys;
//! the type never changes after creation.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::configmaps::immutable_data_causes;
use super::table::{self, Column};
use super::validation::{self, Cause};
use super::{decode_as, ResourceDef, Strategy};

struct SecretStrategy;

/// Keys that a Secret of a well-known type must carry in `data`.
fn required_keys(ty: &str) -> &'static [&'static str] {
    match ty {
        "kubernetes.io/dockercfg" => &[".dockercfg"],
        "kubernetes.io/dockerconfigjson" => &[".dockerconfigjson"],
        "kubernetes.io/ssh-auth" => &["ssh-privatekey"],
        "kubernetes.io/tls" => &["tls.crt", "tls.key"],
        _ => &[],
    }
}

impl Strategy for SecretStrategy {
    fn decode(&self, obj: &Value) -> Result<Value, String> {
        decode_as::<k8s_openapi::api::core::v1::Secret>(obj)
    }

    fn default(&self, obj: &mut Value) {
        let Some(map) = obj.as_object_mut() else {
            return;
        };
        let ty_missing = map
            .get("type")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty);
        if ty_missing {
            map.insert("type".to_string(), json!("Opaque"));
        }
        let Some(string_data) = map.remove("stringData") else {
            return;
        };
        let Some(string_data) = string_data.as_object().filter(|m| !m.is_empty()) else {
            return;
        };
        let data = map.entry("data").or_insert_with(|| json!({}));
        if !data.is_object() {
            *data = json!({});
        }
        if let Some(data) = data.as_object_mut() {
            for (k, v) in string_data {
                let plain = v.as_str().unwrap_or("");
                let encoded = base64::engine::general_purpose::STANDARD.encode(plain);
                data.insert(k.clone(), json!(encoded));
            }
        }
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        let data = obj.get("data").and_then(Value::as_object);
        let mut total = 0usize;
        for (k, v) in data.into_iter().flatten() {
            for msg in validation::config_map_key(k) {
                causes.push(Cause::invalid(format!("data[{k}]"), k, msg));
            }
            total += v.as_str().map_or(0, |s| s.len() / 4 * 3);
        }
        if total > validation::MAX_DATA_SIZE {
            causes.push(Cause::too_long("data", validation::MAX_DATA_SIZE));
        }
        let ty = table::str_at(obj, "/type");
        let has = |k: &str| data.is_some_and(|d| d.contains_key(k));
        for key in required_keys(ty) {
            if !has(key) {
                causes.push(Cause::required(format!("data[{key}]")));
            }
        }
        match ty {
            "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
                causes.push(Cause::required("data[username]"));
                causes.push(Cause::required("data[password]"));
            }
            "kubernetes.io/service-account-token" => {
                let sa = obj
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get("kubernetes.io/service-account.name"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if sa.is_empty() {
                    causes.push(Cause::required(
                        "metadata.annotations[kubernetes.io/service-account.name]",
                    ));
                }
            }
            _ => {}
        }
        causes
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let mut causes = self.validate(new);
        causes.extend(validation::immutable("type", "/type", new, old));
        causes.extend(immutable_data_causes(new, old, &["data"]));
        causes
    }

    fn field_value(&self, obj: &Value, field: &str) -> Option<String> {
        match field {
            "type" => Some(table::str_at(obj, "/type").to_string()),
            _ => None,
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::name(),
            Column::new(
                "Type",
                "string",
                "Used to facilitate programmatic handling of secret data. More info: https://kubernetes.io/docs/concepts/configuration/secret/#secret-types",
            ),
            Column::new(
                "Data",
                "string",
                "Data contains the secret data. Each key must consist of alphanumeric characters, '-', '_' or '.'. The serialized form of the secret data is a base64 encoded string, representing the arbitrary (possibly non-string) data value here. Described in https://tools.ietf.org/html/rfc4648#section-4",
            ),
            Column::age(),
        ]
    }

    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        vec![
            json!(table::name_of(obj)),
            json!(table::str_at(obj, "/type")),
            json!(table::len_at(obj, "/data")),
            json!(table::age(obj, now)),
        ]
    }
}

pub(super) fn def() -> ResourceDef {
    ResourceDef {
        group: "",
        version: "v1",
        kind: "Secret",
        plural: "secrets",
        singular: "secret",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
        strategy: Box::new(SecretStrategy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2024-01-11T00:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    #[test]
    fn defaults_merge_string_data() {
        let s = SecretStrategy;
        let mut sec = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "creds", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "data": {"user": "YWRtaW4=", "pass": "b2xk"},
            "stringData": {"pass": "s3cret"}
        });
        s.default(&mut sec);
        assert_eq!(sec["type"], "Opaque");
        assert!(sec.get("stringData").is_none());
        assert_eq!(sec["data"]["pass"], "czNjcmV0");
        assert_eq!(sec["data"]["user"], "YWRtaW4=");
        assert!(s.decode(&sec).is_ok());
        assert!(s.validate(&sec).is_empty());
        assert_eq!(
            s.cells(&sec, now()),
            vec![json!("creds"), json!("Opaque"), json!(2), json!("10d")]
        );
        assert_eq!(s.field_value(&sec, "type").as_deref(), Some("Opaque"));
        assert_eq!(s.field_value(&sec, "data"), None);
    }

    #[test]
    fn string_data_only() {
        let mut sec = json!({"metadata": {"name": "x"}, "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": "c", "tls.key": "k"}});
        SecretStrategy.default(&mut sec);
        assert_eq!(sec["type"], "kubernetes.io/tls");
        assert_eq!(sec["data"], json!({"tls.crt": "Yw==", "tls.key": "aw=="}));
        assert!(SecretStrategy.validate(&sec).is_empty());
    }

    #[test]
    fn bad_base64_fails_decoding() {
        let sec = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"},
            "data": {"k": "not base64!"}});
        assert!(SecretStrategy.decode(&sec).is_err());
    }

    #[test]
    fn typed_secrets_need_their_keys() {
        let s = SecretStrategy;
        let fields =
            |v: Value| -> Vec<String> { s.validate(&v).into_iter().map(|c| c.field).collect() };
        assert_eq!(
            fields(json!({"type": "kubernetes.io/tls", "data": {"tls.crt": ""}})),
            vec!["data[tls.key]"]
        );
        assert_eq!(
            fields(json!({"type": "kubernetes.io/basic-auth"})),
            vec!["data[username]", "data[password]"]
        );
        assert!(
            fields(json!({"type": "kubernetes.io/basic-auth", "data": {"password": ""}}))
                .is_empty()
        );
        assert_eq!(
            fields(json!({"type": "kubernetes.io/service-account-token"})),
            vec!["metadata.annotations[kubernetes.io/service-account.name]"]
        );
        assert_eq!(fields(json!({"data": {"a b": ""}})), vec!["data[a b]"]);
    }

    #[test]
    fn type_is_immutable() {
        let s = SecretStrategy;
        let old = json!({"type": "Opaque", "data": {}});
        let new = json!({"type": "example.com/custom", "data": {}});
        let causes = s.validate_update(&new, &old);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "type");
        assert_eq!(
            causes[0].message,
            "Invalid value: \"example.com/custom\": field is immutable"
        );
        let frozen = json!({"type": "Opaque", "immutable": true, "data": {"a": "YQ=="}});
        let edited = json!({"type": "Opaque", "immutable": true, "data": {"a": "Yg=="}});
        assert_eq!(s.validate_update(&edited, &frozen)[0].field, "data");
    }
}
