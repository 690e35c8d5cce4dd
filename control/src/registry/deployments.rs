//! Deployment: the Deployment strategy.
//!
//! apps/v1 defaults (one replica, a 25%/25% rolling update, ten revisions, a 600 s
//! progress deadline), validation of the selector, template and strategy, the immutable
//! selector, and the `kubectl get deployments` columns.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::podspec::{
    self, child, int_at, invalid_raw, nonnegative, not_supported_raw, obj_at, str_at,
    validate_int_or_percent, Selector,
};
use super::table::{self, Column};
use super::validation::Cause;
use super::{decode_as, ResourceDef, Strategy, Subresource};

struct DeploymentStrategy;

impl Strategy for DeploymentStrategy {
    fn decode(&self, obj: &Value) -> Result<Value, String> {
        decode_as::<k8s_openapi::api::apps::v1::Deployment>(obj)
    }

    fn default(&self, obj: &mut Value) {
        let Some(spec) = podspec::spec_mut(obj) else {
            return;
        };
        if spec.get("replicas").is_none_or(Value::is_null) {
            spec.insert("replicas".into(), json!(1));
        }
        let strategy = spec.entry("strategy").or_insert_with(|| json!({}));
        if !strategy.is_object() {
            *strategy = json!({});
        }
        if let Some(strategy) = strategy.as_object_mut() {
            if str_at(strategy, "type").is_empty() {
                strategy.insert("type".into(), json!("RollingUpdate"));
            }
            if str_at(strategy, "type") == "RollingUpdate" {
                let ru = strategy.entry("rollingUpdate").or_insert_with(|| json!({}));
                if !ru.is_object() {
                    *ru = json!({});
                }
                if let Some(ru) = ru.as_object_mut() {
                    for field in ["maxUnavailable", "maxSurge"] {
                        if ru.get(field).is_none_or(Value::is_null) {
                            ru.insert(field.into(), json!("25%"));
                        }
                    }
                }
            }
        }
        if spec.get("revisionHistoryLimit").is_none_or(Value::is_null) {
            spec.insert("revisionHistoryLimit".into(), json!(10));
        }
        if spec
            .get("progressDeadlineSeconds")
            .is_none_or(Value::is_null)
        {
            spec.insert("progressDeadlineSeconds".into(), json!(600));
        }
        let template = spec.entry("template").or_insert_with(|| json!({}));
        podspec::default_pod_template(template);
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        if let Some(o) = obj.as_object_mut() {
            o.insert("status".into(), json!({}));
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
        out.extend(podspec::validate_workload_spec(
            spec,
            "deployment",
            "ReplicaSet",
        ));
        validate_strategy(&mut out, obj_at(spec, "strategy"));
        let min_ready = int_at(spec, "minReadySeconds").unwrap_or(0);
        nonnegative(&mut out, "spec.minReadySeconds", min_ready);
        if let Some(limit) = int_at(spec, "revisionHistoryLimit") {
            nonnegative(&mut out, "spec.revisionHistoryLimit", limit);
        }
        if let Some(deadline) = int_at(spec, "progressDeadlineSeconds") {
            nonnegative(&mut out, "spec.progressDeadlineSeconds", deadline);
            if deadline <= min_ready {
                out.push(invalid_raw(
                    "spec.progressDeadlineSeconds",
                    deadline,
                    "must be greater than minReadySeconds",
                ));
            }
        }
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

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::name(),
            Column::new("Ready", "string", "Number of the pod with ready state"),
            Column::new(
                "Up-to-date",
                "string",
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            Column::new(
                "Available",
                "string",
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            Column::age(),
        ]
        .into_iter()
        .chain(podspec::template_columns("Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment."))
        .collect()
    }

    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        let int = |ptr: &str| obj.pointer(ptr).and_then(Value::as_i64).unwrap_or(0);
        let (containers, images) = podspec::container_cells(obj.pointer("/spec/template/spec"));
        let selector = match Selector::from_json(obj.pointer("/spec/selector")) {
            Ok(s) => s.to_query(),
            Err(_) => "<invalid>".to_string(),
        };
        vec![
            json!(table::name_of(obj)),
            json!(format!(
                "{}/{}",
                int("/status/readyReplicas"),
                int("/spec/replicas")
            )),
            json!(int("/status/updatedReplicas")),
            json!(int("/status/availableReplicas")),
            json!(table::age(obj, now)),
            json!(containers),
            json!(images),
            json!(selector),
        ]
    }
}

pub(super) fn def() -> ResourceDef {
    ResourceDef {
        group: "apps",
        version: "v1",
        kind: "Deployment",
        plural: "deployments",
        singular: "deployment",
        namespaced: true,
        short_names: &["deploy"],
        categories: &["all"],
        subresources: &[Subresource::Status, Subresource::Scale],
        strategy: Box::new(DeploymentStrategy),
    }
}

/// `ValidateDeploymentStrategy`.
fn validate_strategy(out: &mut Vec<Cause>, strategy: Option<&Map<String, Value>>) {
    let empty = Map::new();
    let strategy = strategy.unwrap_or(&empty);
    let ru = strategy.get("rollingUpdate").filter(|v| !v.is_null());
    let path = "spec.strategy";
    match str_at(strategy, "type") {
        "Recreate" => {
            if ru.is_some() {
                out.push(Cause::forbidden(
                    child(path, "rollingUpdate"),
                    "may not be specified when strategy `type` is 'Recreate'",
                ));
            }
        }
        "RollingUpdate" => match ru.and_then(Value::as_object) {
            None => out.push(podspec::required_with(
                child(path, "rollingUpdate"),
                "this should be defaulted and never be nil",
            )),
            Some(ru) => {
                let ru_path = child(path, "rollingUpdate");
                let unavailable = ru.get("maxUnavailable");
                let surge = ru.get("maxSurge");
                let un_path = child(&ru_path, "maxUnavailable");
                validate_int_or_percent(out, unavailable, &un_path, false);
                validate_int_or_percent(out, surge, &child(&ru_path, "maxSurge"), false);
                if podspec::int_or_percent_value(unavailable) == 0
                    && podspec::int_or_percent_value(surge) == 0
                {
                    out.push(invalid_raw(
                        &un_path,
                        unavailable
                            .map(podspec::int_or_string_text)
                            .unwrap_or_default(),
                        "may not be 0 when `maxSurge` is 0",
                    ));
                }
                if let Some(Value::String(s)) = unavailable {
                    if podspec::int_or_percent_value(unavailable) > 100 && s.ends_with('%') {
                        out.push(invalid_raw(&un_path, s, "must not be greater than 100%"));
                    }
                }
            }
        },
        other => out.push(not_supported_raw(
            path,
            &format!(
                "apps.DeploymentStrategy{{Type:{other:?}, RollingUpdate:{}}}",
                if ru.is_some() {
                    "&apps.RollingUpdateDeployment{...}"
                } else {
                    "(*apps.RollingUpdateDeployment)(nil)"
                }
            ),
            &["Recreate", "RollingUpdate"],
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn minimal() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "creationTimestamp": "2025-01-01T11:00:00Z"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}]}
                }
            }
        })
    }

    fn defaulted(mut d: Value) -> Value {
        DeploymentStrategy.default(&mut d);
        d
    }

    #[test]
    fn defaults_applied_to_a_minimal_deployment() {
        let d = defaulted(minimal());
        let spec = &d["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(
            spec["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        assert_eq!(spec["revisionHistoryLimit"], 10);
        assert_eq!(spec["progressDeadlineSeconds"], 600);
        let tspec = &spec["template"]["spec"];
        assert_eq!(tspec["restartPolicy"], "Always");
        assert_eq!(tspec["containers"][0]["imagePullPolicy"], "IfNotPresent");
        assert!(tspec.get("enableServiceLinks").is_none());
        assert!(
            DeploymentStrategy.validate(&d).is_empty(),
            "{:?}",
            DeploymentStrategy.validate(&d)
        );
        let mut created = d.clone();
        created["status"] = json!({"replicas": 3});
        DeploymentStrategy.prepare_for_create(&mut created);
        assert_eq!(created["status"], json!({}));
    }

    #[test]
    fn selector_must_match_template_labels() {
        let mut d = minimal();
        d["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
        let causes = DeploymentStrategy.validate(&defaulted(d));
        let c = causes
            .iter()
            .find(|c| c.field == "spec.template.metadata.labels");
        assert_eq!(
            c.map(|c| c.message.as_str()),
            Some(
                "Invalid value: map[string]string{\"app\":\"other\"}: `selector` does not match template `labels`"
            )
        );

        let mut no_sel = minimal();
        if let Some(s) = no_sel["spec"].as_object_mut() {
            s.remove("selector");
        }
        let causes = DeploymentStrategy.validate(&defaulted(no_sel));
        assert!(causes
            .iter()
            .any(|c| c.field == "spec.selector" && c.message == "Required value"));
    }

    #[test]
    fn replicas_strategy_and_template_rules() {
        let mut d = minimal();
        d["spec"]["replicas"] = json!(-1);
        d["spec"]["strategy"] = json!({"type": "Sideways"});
        d["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("");
        let causes = DeploymentStrategy.validate(&defaulted(d));
        let msg = |f: &str| {
            causes
                .iter()
                .find(|c| c.field == f)
                .map(|c| c.message.clone())
        };
        assert_eq!(
            msg("spec.replicas").as_deref(),
            Some("Invalid value: -1: must be greater than or equal to 0")
        );
        assert!(msg("spec.strategy")
            .is_some_and(|m| m.ends_with("supported values: \"Recreate\", \"RollingUpdate\"")));
        assert_eq!(
            msg("spec.template.spec.restartPolicy").as_deref(),
            Some("Unsupported value: \"Never\": supported values: \"Always\"")
        );
        assert_eq!(
            msg("spec.template.spec.containers[0].image").as_deref(),
            Some("Required value")
        );

        let mut zero = minimal();
        zero["spec"]["strategy"] =
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 0}});
        let causes = DeploymentStrategy.validate(&defaulted(zero));
        assert!(causes
            .iter()
            .any(|c| c.field == "spec.strategy.rollingUpdate.maxUnavailable"));
    }

    #[test]
    fn selector_is_immutable() {
        let old = defaulted(minimal());
        let mut new = old.clone();
        new["spec"]["selector"] = json!({"matchLabels": {"app": "web2"}});
        new["spec"]["template"]["metadata"]["labels"] = json!({"app": "web2"});
        let causes = DeploymentStrategy.validate_update(&new, &old);
        let c = causes.iter().find(|c| c.field == "spec.selector");
        assert!(
            c.is_some_and(|c| c.message.ends_with(": field is immutable")),
            "{causes:?}"
        );
        let mut scaled = old.clone();
        scaled["spec"]["replicas"] = json!(5);
        assert!(DeploymentStrategy.validate_update(&scaled, &old).is_empty());
    }

    #[test]
    fn cells() {
        let mut d = defaulted(minimal());
        d["spec"]["replicas"] = json!(3);
        d["status"] = json!({"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2});
        let now = Utc
            .with_ymd_and_hms(2025, 1, 1, 12, 0, 0)
            .single()
            .unwrap_or_default();
        let cells = DeploymentStrategy.cells(&d, now);
        assert_eq!(cells.len(), DeploymentStrategy.columns().len());
        assert_eq!(
            cells,
            vec![
                json!("web"),
                json!("2/3"),
                json!(3),
                json!(2),
                json!("60m"),
                json!("nginx"),
                json!("nginx:1.27"),
                json!("app=web"),
            ]
        );
    }
}
