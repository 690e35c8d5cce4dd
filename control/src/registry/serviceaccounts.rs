//! ServiceAccount: the ServiceAccount strategy.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::table::{self, Column};
use super::{decode_as, ResourceDef, Strategy, Subresource};

struct ServiceAccountStrategy;

impl Strategy for ServiceAccountStrategy {
    fn decode(&self, obj: &Value) -> Result<Value, String> {
        decode_as::<k8s_openapi::api::core::v1::ServiceAccount>(obj)
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::name(),
            Column::new(
                "Secrets",
                "string",
                "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use. Pods are only limited to this list if this service account has a \"kubernetes.io/enforce-mountable-secrets\" annotation set to \"true\". The \"kubernetes.io/enforce-mountable-secrets\" annotation is deprecated since v1.32. Prefer separate namespaces to isolate access to mounted secrets. This field should not be used to find auto-generated service account token secrets for use outside of pods. Instead, tokens can be requested directly using the TokenRequest API, or service account token secrets can be manually created. More info: https://kubernetes.io/docs/concepts/configuration/secret",
            ),
            Column::age(),
        ]
    }

    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        vec![
            json!(table::name_of(obj)),
            json!(table::len_at(obj, "/secrets")),
            json!(table::age(obj, now)),
        ]
    }
}

pub(super) fn def() -> ResourceDef {
    ResourceDef {
        group: "",
        version: "v1",
        kind: "ServiceAccount",
        plural: "serviceaccounts",
        singular: "serviceaccount",
        namespaced: true,
        short_names: &["sa"],
        categories: &[],
        subresources: &[Subresource::Token],
        strategy: Box::new(ServiceAccountStrategy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_count_secrets() {
        let s = ServiceAccountStrategy;
        let now = DateTime::parse_from_rfc3339("2024-01-01T00:03:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        let sa = json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "default", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "secrets": [{"name": "default-token"}]
        });
        assert!(s.decode(&sa).is_ok());
        assert_eq!(s.columns().len(), 3);
        assert_eq!(
            s.cells(&sa, now),
            vec![json!("default"), json!(1), json!("3m")]
        );
        assert_eq!(s.cells(&json!({}), now)[1], json!(0));
    }
}
