//! Lease: the Lease strategy.
//!
//! Leases back node heartbeats (`kube-node-lease`) and leader election; the strategy
//! checks the numbers a lease holder and its watchers compute with.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::table::{self, Column};
use super::validation::Cause;
use super::{decode_as, ResourceDef, Strategy};

struct LeaseStrategy;

impl Strategy for LeaseStrategy {
    fn decode(&self, obj: &Value) -> Result<Value, String> {
        decode_as::<k8s_openapi::api::coordination::v1::Lease>(obj)
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        if let Some(d) = obj
            .pointer("/spec/leaseDurationSeconds")
            .and_then(Value::as_i64)
        {
            if d <= 0 {
                causes.push(Cause::invalid_int(
                    "spec.leaseDurationSeconds",
                    d,
                    "must be greater than 0",
                ));
            }
        }
        if let Some(t) = obj
            .pointer("/spec/leaseTransitions")
            .and_then(Value::as_i64)
        {
            if t < 0 {
                causes.push(Cause::invalid_int(
                    "spec.leaseTransitions",
                    t,
                    "must be greater than or equal to 0",
                ));
            }
        }
        causes
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::name(),
            Column::new(
                "Holder",
                "string",
                "holderIdentity contains the identity of the holder of a current lease. If Coordinated Leader Election is used, the holder identity must be equal to the elected LeaseCandidate.metadata.name field.",
            ),
            Column::age(),
        ]
    }

    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        vec![
            json!(table::name_of(obj)),
            json!(table::str_at(obj, "/spec/holderIdentity")),
            json!(table::age(obj, now)),
        ]
    }
}

pub(super) fn def() -> ResourceDef {
    ResourceDef {
        group: "coordination.k8s.io",
        version: "v1",
        kind: "Lease",
        plural: "leases",
        singular: "lease",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
        strategy: Box::new(LeaseStrategy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_show_holder() {
        let s = LeaseStrategy;
        let now = DateTime::parse_from_rfc3339("2024-01-01T00:00:05Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "node-1", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"holderIdentity": "node-1", "leaseDurationSeconds": 40,
                     "renewTime": "2024-01-01T00:00:04.000000Z"}
        });
        assert!(s.decode(&lease).is_ok());
        assert!(s.validate(&lease).is_empty());
        assert_eq!(
            s.cells(&lease, now),
            vec![json!("node-1"), json!("node-1"), json!("5s")]
        );
        assert_eq!(
            s.cells(&json!({"metadata": {"name": "x"}}), now)[1],
            json!("")
        );
    }

    #[test]
    fn numbers_are_checked() {
        let causes = LeaseStrategy
            .validate(&json!({"spec": {"leaseDurationSeconds": 0, "leaseTransitions": -1}}));
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            vec!["spec.leaseDurationSeconds", "spec.leaseTransitions"]
        );
        assert_eq!(
            causes[0].message,
            "Invalid value: 0: must be greater than 0"
        );
    }
}
