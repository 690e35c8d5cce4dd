//! Job: the batch/v1 Job strategy.
//!
//! Defaults as upstream's `SetDefaults_Job` (completions and parallelism 1 when both are
//! unset, backoffLimit 6, NonIndexed, not suspended, the Job's labels from its template's
//! when it has none); on create, unless `manualSelector`, the selector is generated from
//! the Job's uid and the template gets the `job-name` and `controller-uid` labels (both
//! the `batch.kubernetes.io/` and the legacy keys), as `generateSelector` does.
//! Validation: non-negative counts, a template that matches the selector and restarts
//! `OnFailure` or `Never`, completions with Indexed; the selector, template, completions
//! and completion mode cannot change; the failure and success policies and per-index
//! back-off, which the Job controller here does not carry out, are refused rather than
//! ignored. `kubectl get jobs` columns as upstream's printer.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::podspec::{self, int_at, nonnegative, Selector};
use super::table::{self, Column};
use super::validation::{self, Cause};
use super::{decode_as, ResourceDef, Strategy, Subresource};

/// The labels a generated selector puts on the template.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
const LEGACY_JOB_NAME_LABEL: &str = "job-name";
const LEGACY_CONTROLLER_UID_LABEL: &str = "controller-uid";

struct JobStrategy;

impl Strategy for JobStrategy {
    fn decode(&self, obj: &Value) -> Result<Value, String> {
        decode_as::<k8s_openapi::api::batch::v1::Job>(obj)
    }

    fn default(&self, obj: &mut Value) {
        let template_labels = obj.pointer("/spec/template/metadata/labels").cloned();
        let Some(spec) = podspec::spec_mut(obj) else {
            return;
        };
        let unset = |spec: &Map<String, Value>, k: &str| spec.get(k).is_none_or(Value::is_null);
        if unset(spec, "completions") && unset(spec, "parallelism") {
            spec.insert("completions".into(), json!(1));
        }
        for (key, value) in [
            ("parallelism", json!(1)),
            ("backoffLimit", json!(6)),
            ("completionMode", json!("NonIndexed")),
            ("suspend", json!(false)),
            ("podReplacementPolicy", json!("TerminatingOrFailed")),
        ] {
            if unset(spec, key) {
                spec.insert(key.into(), value);
            }
        }
        let template = spec.entry("template").or_insert_with(|| json!({}));
        podspec::default_pod_template(template);
        let Some(labels) = template_labels.filter(|l| l.as_object().is_some_and(|m| !m.is_empty()))
        else {
            return;
        };
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            if meta
                .get("labels")
                .and_then(Value::as_object)
                .is_none_or(Map::is_empty)
            {
                meta.insert("labels".into(), labels);
            }
        }
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        if let Some(o) = obj.as_object_mut() {
            o.insert("status".into(), json!({}));
        }
        if obj.pointer("/spec/manualSelector") == Some(&json!(true)) {
            return;
        }
        let name = table::name_of(obj).to_string();
        let uid = table::str_at(obj, "/metadata/uid").to_string();
        let Some(spec) = podspec::spec_mut(obj) else {
            return;
        };
        let template = spec.entry("template").or_insert_with(|| json!({}));
        if let Some(t) = template.as_object_mut() {
            let meta = t.entry("metadata").or_insert_with(|| json!({}));
            if let Some(m) = meta.as_object_mut() {
                let labels = m.entry("labels").or_insert_with(|| json!({}));
                if let Some(l) = labels.as_object_mut() {
                    // Labels the user set stay: a conflict fails validation.
                    for (key, value) in [
                        (LEGACY_JOB_NAME_LABEL, &name),
                        (JOB_NAME_LABEL, &name),
                        (LEGACY_CONTROLLER_UID_LABEL, &uid),
                        (CONTROLLER_UID_LABEL, &uid),
                    ] {
                        l.entry(key).or_insert_with(|| json!(value));
                    }
                }
            }
        }
        let selector = spec.entry("selector").or_insert_with(|| json!({}));
        if let Some(s) = selector.as_object_mut() {
            let match_labels = s.entry("matchLabels").or_insert_with(|| json!({}));
            if let Some(m) = match_labels.as_object_mut() {
                m.entry(CONTROLLER_UID_LABEL).or_insert_with(|| json!(uid));
            }
        }
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let empty = Map::new();
        let spec = obj.get("spec").and_then(Value::as_object).unwrap_or(&empty);
        validate_job_spec(spec, "spec", true)
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let mut out = self.validate(new);
        out.extend(podspec::selector_immutable(new, old));
        for (field, pointer) in [
            ("spec.completions", "/spec/completions"),
            ("spec.completionMode", "/spec/completionMode"),
        ] {
            out.extend(validation::immutable(field, pointer, new, old));
        }
        if new.pointer("/spec/template") != old.pointer("/spec/template") {
            out.push(podspec::invalid_raw(
                "spec.template",
                "core.PodTemplateSpec{...}",
                "field is immutable",
            ));
        }
        out
    }

    fn tracks_generation(&self) -> bool {
        true
    }

    fn field_value(&self, obj: &Value, field: &str) -> Option<String> {
        match field {
            "status.successful" => Some(
                obj.pointer("/status/succeeded")
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
            Column::new("Status", "string", "Status of the job."),
            Column::new(
                "Completions",
                "string",
                "The completion status of the job: Succeeded/Desired.",
            ),
            Column::new("Duration", "string", "Time required to complete the job."),
            Column::age(),
        ]
        .into_iter()
        .chain(podspec::template_columns(
            "A label query over pods that should match the pod count. Normally, the system sets this field for you. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors",
        ))
        .collect()
    }

    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        let (containers, images) = podspec::container_cells(obj.pointer("/spec/template/spec"));
        vec![
            json!(table::name_of(obj)),
            json!(status_cell(obj)),
            json!(completions_cell(obj)),
            json!(duration_cell(obj, now)),
            json!(table::age(obj, now)),
            json!(containers),
            json!(images),
            json!(podspec::format_label_selector(
                obj.pointer("/spec/selector")
            )),
        ]
    }
}

/// A JobSpec at `path` (`spec`, or a CronJob's `spec.jobTemplate.spec`, whose selector
/// comes only when each Job is made).
pub(super) fn validate_job_spec(
    spec: &Map<String, Value>,
    path: &str,
    with_selector: bool,
) -> Vec<Cause> {
    let at = |field: &str| format!("{path}.{field}");
    let mut out = Vec::new();
    for field in [
        "parallelism",
        "completions",
        "backoffLimit",
        "ttlSecondsAfterFinished",
    ] {
        if let Some(v) = int_at(spec, field) {
            nonnegative(&mut out, &at(field), v);
        }
    }
    if let Some(v) = int_at(spec, "activeDeadlineSeconds") {
        if v <= 0 {
            out.push(Cause::invalid_int(
                at("activeDeadlineSeconds"),
                v,
                "must be greater than 0",
            ));
        }
    }
    // Policies the Job controller here does not carry out are refused rather than
    // accepted and ignored.
    for field in [
        "podFailurePolicy",
        "successPolicy",
        "backoffLimitPerIndex",
        "maxFailedIndexes",
    ] {
        if spec.get(field).is_some_and(|v| !v.is_null()) {
            out.push(Cause::forbidden(
                at(field),
                "not supported by wasmkube's Job controller",
            ));
        }
    }
    let mode = podspec::str_at(spec, "completionMode");
    match mode {
        "NonIndexed" | "" => {}
        "Indexed" => {
            if int_at(spec, "completions").is_none() {
                let mut c = Cause::required(at("completions"));
                c.message = "Required value: when completion mode is Indexed".into();
                out.push(c);
            }
        }
        other => out.push(Cause::not_supported(
            at("completionMode"),
            other,
            &["NonIndexed", "Indexed"],
        )),
    }
    let sel_value = spec.get("selector").filter(|v| !v.is_null());
    match sel_value.and_then(Value::as_object) {
        None if with_selector => out.push(Cause::required(at("selector"))),
        None => {}
        Some(sel) => podspec::validate_label_selector(&mut out, sel, &at("selector")),
    }
    let selector = match sel_value {
        // A job template's Jobs get their selector when they are made.
        None if !with_selector => Ok(Selector::Requirements(Vec::new())),
        _ => Selector::from_json(sel_value),
    };
    match selector {
        Err(_) => out.push(podspec::invalid_raw(
            at("selector"),
            podspec::go_label_selector(sel_value),
            "invalid label selector",
        )),
        Ok(selector) => out.extend(podspec::validate_selected_template(
            spec.get("template"),
            &selector,
            &at("template"),
            &["OnFailure", "Never"],
        )),
    }
    out
}

fn has_condition(obj: &Value, type_: &str) -> bool {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c["type"] == type_ && c["status"] == "True")
}

/// The STATUS column, in upstream's order of precedence.
fn status_cell(obj: &Value) -> &'static str {
    if has_condition(obj, "Complete") {
        "Complete"
    } else if has_condition(obj, "Failed") {
        "Failed"
    } else if obj.pointer("/metadata/deletionTimestamp").is_some() {
        "Terminating"
    } else if has_condition(obj, "Suspended") {
        "Suspended"
    } else if has_condition(obj, "FailureTarget") {
        "FailureTarget"
    } else if has_condition(obj, "SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    }
}

/// `1/3`, or `0/1 of 4` for a work queue with parallelism.
fn completions_cell(obj: &Value) -> String {
    let succeeded = obj
        .pointer("/status/succeeded")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let completions = obj.pointer("/spec/completions").and_then(Value::as_i64);
    let parallelism = obj.pointer("/spec/parallelism").and_then(Value::as_i64);
    match (completions, parallelism) {
        (Some(c), _) => format!("{succeeded}/{c}"),
        (None, Some(p)) if p > 1 => format!("{succeeded}/1 of {p}"),
        _ => format!("{succeeded}/1"),
    }
}

fn time_at(obj: &Value, pointer: &str) -> Option<DateTime<Utc>> {
    let text = obj.pointer(pointer)?.as_str()?;
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Running time so far, or from start to completion.
fn duration_cell(obj: &Value, now: DateTime<Utc>) -> String {
    let Some(start) = time_at(obj, "/status/startTime") else {
        return String::new();
    };
    let end = time_at(obj, "/status/completionTime").unwrap_or(now);
    table::human_duration(end - start)
}

pub(super) fn def() -> ResourceDef {
    ResourceDef {
        group: "batch",
        version: "v1",
        kind: "Job",
        plural: "jobs",
        singular: "job",
        namespaced: true,
        short_names: &[],
        categories: &["all"],
        subresources: &[Subresource::Status],
        strategy: Box::new(JobStrategy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Value {
        json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "pi", "uid": "u-1"},
            "spec": {"template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "pi", "image": "file:///pi.wasm"}],
            }}},
        })
    }

    fn created() -> Value {
        let mut j = JobStrategy.decode(&job()).unwrap();
        JobStrategy.default(&mut j);
        JobStrategy.prepare_for_create(&mut j);
        j
    }

    #[test]
    fn defaults_and_a_generated_selector() {
        let j = created();
        let spec = &j["spec"];
        assert_eq!(spec["completions"], 1);
        assert_eq!(spec["parallelism"], 1);
        assert_eq!(spec["backoffLimit"], 6);
        assert_eq!(spec["completionMode"], "NonIndexed");
        assert_eq!(spec["suspend"], false);
        assert_eq!(spec["selector"]["matchLabels"][CONTROLLER_UID_LABEL], "u-1");
        let labels = &spec["template"]["metadata"]["labels"];
        for (k, v) in [
            ("job-name", "pi"),
            (JOB_NAME_LABEL, "pi"),
            ("controller-uid", "u-1"),
            (CONTROLLER_UID_LABEL, "u-1"),
        ] {
            assert_eq!(labels[k], v, "{k}");
        }
        assert!(
            JobStrategy.validate(&j).is_empty(),
            "{:?}",
            JobStrategy.validate(&j)
        );
        // A work queue: parallelism without completions keeps completions unset.
        let mut q = job();
        q["spec"]["parallelism"] = json!(3);
        JobStrategy.default(&mut q);
        assert!(q["spec"].get("completions").is_none());
    }

    #[test]
    fn restart_policy_counts_and_indexed_completions_are_checked() {
        let mut j = created();
        j["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
        j["spec"]["backoffLimit"] = json!(-1);
        j["spec"]["activeDeadlineSeconds"] = json!(0);
        j["spec"]["completionMode"] = json!("Indexed");
        j["spec"].as_object_mut().unwrap().remove("completions");
        let causes = JobStrategy.validate(&j);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.backoffLimit",
                "spec.activeDeadlineSeconds",
                "spec.completions",
                "spec.template.spec.restartPolicy"
            ],
            "{causes:?}"
        );
        assert_eq!(
            causes[3].message,
            "Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""
        );
        let mut policy = created();
        policy["spec"]["podFailurePolicy"] = json!({"rules": []});
        let causes = JobStrategy.validate(&policy);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.podFailurePolicy");
    }

    #[test]
    fn the_template_and_selector_cannot_change() {
        let old = created();
        let mut new = old.clone();
        new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("file:///other.wasm");
        new["spec"]["completions"] = json!(5);
        let fields: Vec<String> = JobStrategy
            .validate_update(&new, &old)
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(fields, vec!["spec.completions", "spec.template"]);
        let mut resized = old.clone();
        resized["spec"]["parallelism"] = json!(4);
        assert!(JobStrategy.validate_update(&resized, &old).is_empty());
    }

    #[test]
    fn cells_follow_upstreams_printer() {
        let now = DateTime::parse_from_rfc3339("2024-01-01T00:01:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        let mut j = created();
        j["metadata"]["creationTimestamp"] = json!("2024-01-01T00:00:00Z");
        j["status"] = json!({"startTime": "2024-01-01T00:00:10Z", "succeeded": 0});
        let cells = JobStrategy.cells(&j, now);
        assert_eq!(
            cells[..5],
            [
                json!("pi"),
                json!("Running"),
                json!("0/1"),
                json!("50s"),
                json!("60s")
            ]
        );
        j["status"] = json!({
            "startTime": "2024-01-01T00:00:10Z", "completionTime": "2024-01-01T00:00:15Z",
            "succeeded": 1,
            "conditions": [{"type": "Complete", "status": "True"}],
        });
        let cells = JobStrategy.cells(&j, now);
        assert_eq!(cells[1..4], [json!("Complete"), json!("1/1"), json!("5s")]);
        let mut q = j.clone();
        q["spec"].as_object_mut().unwrap().remove("completions");
        q["spec"]["parallelism"] = json!(4);
        assert_eq!(completions_cell(&q), "1/1 of 4");
    }
}
