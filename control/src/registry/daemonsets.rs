//! DaemonSet: the DaemonSet strategy.
//!
//! apps/v1 defaults (a rolling update of one unavailable pod and no surge, ten
//! revisions), validation of the selector, template and update strategy, the immutable
//! selector, and the `kubectl get daemonsets` columns.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::podspec::{
    self, child, go_label_selector, int_at, invalid_raw, nonnegative, not_supported_raw, obj_at,
    str_at, Selector,
};
use super::table::{self, Column};
use super::validation::Cause;
use super::{decode_as, ResourceDef, Strategy, Subresource};

struct DaemonSetStrategy;

/// The annotation the apps/v1 API keeps the deprecated template generation in.
const TEMPLATE_GENERATION: &str = "deprecated.daemonset.template.generation";

impl Strategy for DaemonSetStrategy {
    fn decode(&self, obj: &Value) -> Result<Value, String> {
        decode_as::<k8s_openapi::api::apps::v1::DaemonSet>(obj)
    }

    fn default(&self, obj: &mut Value) {
        let Some(spec) = podspec::spec_mut(obj) else {
            return;
        };
        let strategy = spec.entry("updateStrategy").or_insert_with(|| json!({}));
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
                    if ru.get("maxUnavailable").is_none_or(Value::is_null) {
                        ru.insert("maxUnavailable".into(), json!(1));
                    }
                    if ru.get("maxSurge").is_none_or(Value::is_null) {
                        ru.insert("maxSurge".into(), json!(0));
                    }
                }
            }
        }
        if spec.get("revisionHistoryLimit").is_none_or(Value::is_null) {
            spec.insert("revisionHistoryLimit".into(), json!(10));
        }
        let template = spec.entry("template").or_insert_with(|| json!({}));
        podspec::default_pod_template(template);
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        let Some(o) = obj.as_object_mut() else { return };
        // These status counters are not omitempty upstream, so a new object shows them.
        o.insert(
            "status".into(),
            json!({
                "currentNumberScheduled": 0,
                "numberMisscheduled": 0,
                "desiredNumberScheduled": 0,
                "numberReady": 0,
            }),
        );
        let meta = o.entry("metadata").or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
            if annotations.is_null() {
                *annotations = json!({});
            }
            if let Some(a) = annotations.as_object_mut() {
                a.insert(TEMPLATE_GENERATION.into(), json!("1"));
            }
        }
    }

    /// A changed pod template bumps the template generation, as upstream's strategy
    /// does (apps/v1 keeps it in an annotation); the DaemonSet controller labels its pods
    /// with it.
    fn prepare_for_update(&self, new: &mut Value, old: &Value) {
        let old_generation = old
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(TEMPLATE_GENERATION))
            .and_then(Value::as_str)
            .and_then(|g| g.parse::<i64>().ok())
            .unwrap_or(1);
        // Compare defaulted templates: a client may send a sparse one.
        let mut wanted = new.pointer("/spec/template").cloned().unwrap_or(json!({}));
        podspec::default_pod_template(&mut wanted);
        let changed = Some(&wanted) != old.pointer("/spec/template");
        let generation = if changed {
            old_generation + 1
        } else {
            old_generation
        };
        let Some(o) = new.as_object_mut() else { return };
        let meta = o.entry("metadata").or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
            if annotations.is_null() {
                *annotations = json!({});
            }
            if let Some(a) = annotations.as_object_mut() {
                a.insert(TEMPLATE_GENERATION.into(), json!(generation.to_string()));
            }
        }
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let empty = Map::new();
        let spec = obj.get("spec").and_then(Value::as_object).unwrap_or(&empty);
        let mut out = Vec::new();
        let sel_value = spec.get("selector").filter(|v| !v.is_null());
        if let Some(sel) = sel_value.and_then(Value::as_object) {
            podspec::validate_label_selector(&mut out, sel, "spec.selector");
        }
        // Unlike Deployments, a missing selector is reported only as a mismatch.
        if let Ok(selector) = Selector::from_json(sel_value) {
            let labels = spec
                .get("template")
                .and_then(|t| t.pointer("/metadata/labels"))
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            if !selector.matches(&labels) {
                out.push(invalid_raw(
                    "spec.template.metadata.labels",
                    podspec::go_string_map(
                        spec.get("template")
                            .and_then(|t| t.pointer("/metadata/labels")),
                    ),
                    "`selector` does not match template `labels`",
                ));
            }
        }
        if let Some(sel) = sel_value.and_then(Value::as_object) {
            let no_labels = obj_at(sel, "matchLabels").is_none_or(Map::is_empty);
            let no_exprs = podspec::arr_at(sel, "matchExpressions").is_empty();
            if no_labels && no_exprs {
                out.push(invalid_raw(
                    "spec.selector",
                    go_label_selector(sel_value),
                    "empty selector is invalid for daemonset",
                ));
            }
        }
        let template = spec.get("template").cloned().unwrap_or_else(|| json!({}));
        out.extend(podspec::validate_pod_template(&template, "spec.template"));
        let tspec = template
            .get("spec")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let rp = str_at(&tspec, "restartPolicy");
        if rp != "Always" {
            out.push(Cause::not_supported(
                "spec.template.spec.restartPolicy",
                rp,
                &["Always"],
            ));
        }
        if tspec
            .get("activeDeadlineSeconds")
            .is_some_and(|v| !v.is_null())
        {
            out.push(Cause::forbidden(
                "spec.template.spec.activeDeadlineSeconds",
                "activeDeadlineSeconds in DaemonSet is not Supported",
            ));
        }
        nonnegative(
            &mut out,
            "spec.minReadySeconds",
            int_at(spec, "minReadySeconds").unwrap_or(0),
        );
        validate_update_strategy(&mut out, obj_at(spec, "updateStrategy"));
        if let Some(limit) = int_at(spec, "revisionHistoryLimit") {
            nonnegative(&mut out, "spec.revisionHistoryLimit", limit);
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
            Column::new(
                "Desired",
                "integer",
                "The total number of nodes that should be running the daemon pod (including nodes correctly running the daemon pod).",
            ),
            Column::new(
                "Current",
                "integer",
                "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod.",
            ),
            Column::new(
                "Ready",
                "integer",
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready.",
            ),
            Column::new(
                "Up-to-date",
                "integer",
                "The total number of nodes that are running updated daemon pod",
            ),
            Column::new(
                "Available",
                "integer",
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)",
            ),
            Column::new(
                "Node Selector",
                "string",
                "NodeSelector is a selector which must be true for the pod to fit on a node. Selector which must match a node's labels for the pod to be scheduled on that node.",
            ),
            Column::age(),
        ]
        .into_iter()
        .chain(podspec::template_columns("A label query over pods that are managed by the daemon set. Must match in order to be controlled."))
        .collect()
    }

    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        let int = |ptr: &str| obj.pointer(ptr).and_then(Value::as_i64).unwrap_or(0);
        let (containers, images) = podspec::container_cells(obj.pointer("/spec/template/spec"));
        vec![
            json!(table::name_of(obj)),
            json!(int("/status/desiredNumberScheduled")),
            json!(int("/status/currentNumberScheduled")),
            json!(int("/status/numberReady")),
            json!(int("/status/updatedNumberScheduled")),
            json!(int("/status/numberAvailable")),
            json!(podspec::format_labels(
                obj.pointer("/spec/template/spec/nodeSelector")
            )),
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
        kind: "DaemonSet",
        plural: "daemonsets",
        singular: "daemonset",
        namespaced: true,
        short_names: &["ds"],
        categories: &["all"],
        subresources: &[Subresource::Status],
        strategy: Box::new(DaemonSetStrategy),
    }
}

/// `ValidateDaemonSetUpdateStrategy`.
fn validate_update_strategy(out: &mut Vec<Cause>, strategy: Option<&Map<String, Value>>) {
    let empty = Map::new();
    let strategy = strategy.unwrap_or(&empty);
    let path = "spec.updateStrategy";
    match str_at(strategy, "type") {
        "OnDelete" => {}
        "RollingUpdate" => {
            let ru_path = child(path, "rollingUpdate");
            let Some(ru) = obj_at(strategy, "rollingUpdate") else {
                out.push(Cause::required(ru_path));
                return;
            };
            let unavailable = ru.get("maxUnavailable");
            let surge = ru.get("maxSurge");
            podspec::validate_int_or_percent(
                out,
                unavailable,
                &child(&ru_path, "maxUnavailable"),
                true,
            );
            podspec::validate_int_or_percent(out, surge, &child(&ru_path, "maxSurge"), true);
            let has_unavailable = podspec::int_or_percent_value(unavailable) != 0;
            let has_surge = podspec::int_or_percent_value(surge) != 0;
            if has_unavailable && has_surge {
                out.push(invalid_raw(
                    child(&ru_path, "maxSurge"),
                    surge.map(podspec::int_or_string_text).unwrap_or_default(),
                    "may not be set when maxUnavailable is non-zero",
                ));
            } else if !has_unavailable && !has_surge {
                out.push(podspec::required_with(
                    child(&ru_path, "maxUnavailable"),
                    "cannot be 0 when maxSurge is 0",
                ));
            }
        }
        other => out.push(not_supported_raw(
            path,
            &format!("apps.DaemonSetUpdateStrategy{{Type:{other:?}}}"),
            &["RollingUpdate", "OnDelete"],
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn minimal() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "agent", "namespace": "kube-system", "creationTimestamp": "2025-01-01T10:00:00Z"},
            "spec": {
                "selector": {"matchLabels": {"name": "agent"}},
                "template": {
                    "metadata": {"labels": {"name": "agent"}},
                    "spec": {
                        "nodeSelector": {"kubernetes.io/os": "linux"},
                        "containers": [{"name": "agent", "image": "agent:v1"}]
                    }
                }
            }
        })
    }

    #[test]
    fn defaults_and_create() {
        let mut ds = minimal();
        DaemonSetStrategy.default(&mut ds);
        assert_eq!(
            ds["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        );
        assert_eq!(ds["spec"]["revisionHistoryLimit"], 10);
        assert!(
            DaemonSetStrategy.validate(&ds).is_empty(),
            "{:?}",
            DaemonSetStrategy.validate(&ds)
        );
        DaemonSetStrategy.prepare_for_create(&mut ds);
        assert_eq!(ds["status"]["numberReady"], 0);
        assert_eq!(ds["metadata"]["annotations"][TEMPLATE_GENERATION], "1");
    }

    #[test]
    fn validation() {
        let mut ds = minimal();
        ds["spec"]["template"]["metadata"]["labels"] = json!({"name": "x"});
        ds["spec"]["updateStrategy"] =
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 0}});
        DaemonSetStrategy.default(&mut ds);
        let causes = DaemonSetStrategy.validate(&ds);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert!(
            fields.contains(&"spec.template.metadata.labels"),
            "{causes:?}"
        );
        assert!(
            fields.contains(&"spec.updateStrategy.rollingUpdate.maxUnavailable"),
            "{causes:?}"
        );

        let mut old = minimal();
        DaemonSetStrategy.default(&mut old);
        let mut new = old.clone();
        new["spec"]["selector"] = json!({"matchLabels": {"name": "agent", "x": "y"}});
        let causes = DaemonSetStrategy.validate_update(&new, &old);
        assert!(causes
            .iter()
            .any(|c| c.field == "spec.selector" && c.message.ends_with("field is immutable")));
    }

    #[test]
    fn cells() {
        let mut ds = minimal();
        DaemonSetStrategy.default(&mut ds);
        ds["status"] = json!({
            "desiredNumberScheduled": 2, "currentNumberScheduled": 2, "numberReady": 1,
            "updatedNumberScheduled": 2, "numberAvailable": 1
        });
        let now = Utc
            .with_ymd_and_hms(2025, 1, 1, 12, 0, 0)
            .single()
            .unwrap_or_default();
        let cells = DaemonSetStrategy.cells(&ds, now);
        assert_eq!(cells.len(), DaemonSetStrategy.columns().len());
        assert_eq!(
            cells,
            vec![
                json!("agent"),
                json!(2),
                json!(2),
                json!(1),
                json!(2),
                json!(1),
                json!("kubernetes.io/os=linux"),
                json!("120m"),
                json!("agent"),
                json!("agent:v1"),
                json!("name=agent"),
            ]
        );
    }

    #[test]
    fn template_changes_bump_the_template_generation() {
        let old = json!({
            "metadata": {"annotations": {TEMPLATE_GENERATION: "3"}},
            "spec": {"template": {"metadata": {"labels": {"app": "a"}},
                "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}
        });
        let mut defaulted = old.clone();
        podspec::default_pod_template(defaulted.pointer_mut("/spec/template").unwrap());
        let mut same = old.clone();
        same["metadata"] = json!({});
        DaemonSetStrategy.prepare_for_update(&mut same, &defaulted);
        assert_eq!(same["metadata"]["annotations"][TEMPLATE_GENERATION], "3");
        let mut changed = old.clone();
        changed["spec"]["template"]["spec"]["containers"][0]["image"] = json!("i:2");
        DaemonSetStrategy.prepare_for_update(&mut changed, &defaulted);
        assert_eq!(changed["metadata"]["annotations"][TEMPLATE_GENERATION], "4");
    }
}
