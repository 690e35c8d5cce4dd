//! CronJob: the batch/v1 CronJob strategy.
//!
//! Defaults as upstream's `SetDefaults_CronJob` (concurrencyPolicy Allow, not
//! suspended, 3 successful and 1 failed Jobs kept) plus pod defaults in the Job
//! template. Validation: a schedule [`crate::cron`] can evaluate (no `TZ=`/`CRON_TZ=`
//! prefix, as upstream), `timeZone` UTC only — the node has no time-zone database to
//! evaluate others, and a schedule silently run in the wrong zone would be worse than a
//! refusal — a name short enough for the Jobs' names (52 characters), and the Job
//! template as a Job's spec. `kubectl get cronjobs` columns as upstream's printer.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::jobs::validate_job_spec;
use super::podspec::{self, int_at, nonnegative};
use super::table::{self, Column};
use super::validation::Cause;
use super::{decode_as, ResourceDef, Strategy, Subresource};
use crate::cron::Schedule;

/// The longest CronJob name: its Jobs are named `<name>-<minutes since the epoch>`.
const MAX_NAME: usize = 52;

struct CronJobStrategy;

impl Strategy for CronJobStrategy {
    fn decode(&self, obj: &Value) -> Result<Value, String> {
        decode_as::<k8s_openapi::api::batch::v1::CronJob>(obj)
    }

    fn default(&self, obj: &mut Value) {
        let Some(spec) = podspec::spec_mut(obj) else {
            return;
        };
        for (key, value) in [
            ("concurrencyPolicy", json!("Allow")),
            ("suspend", json!(false)),
            ("successfulJobsHistoryLimit", json!(3)),
            ("failedJobsHistoryLimit", json!(1)),
        ] {
            let unset = match spec.get(key) {
                None | Some(Value::Null) => true,
                Some(Value::String(s)) => s.is_empty(),
                _ => false,
            };
            if unset {
                spec.insert(key.into(), value);
            }
        }
        if let Some(template) = spec
            .get_mut("jobTemplate")
            .and_then(|t| t.get_mut("spec"))
            .and_then(Value::as_object_mut)
        {
            let pod = template.entry("template").or_insert_with(|| json!({}));
            podspec::default_pod_template(pod);
        }
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        if let Some(o) = obj.as_object_mut() {
            o.insert("status".into(), json!({}));
        }
    }

    fn validate_name(&self, name: &str) -> Option<String> {
        if let Some(e) = super::validation::dns1123_subdomain(name) {
            return Some(e);
        }
        (name.len() > MAX_NAME).then(|| format!("must be no more than {MAX_NAME} characters"))
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let empty = Map::new();
        let spec = obj.get("spec").and_then(Value::as_object).unwrap_or(&empty);
        let mut out = Vec::new();
        let schedule = podspec::str_at(spec, "schedule");
        if schedule.is_empty() {
            out.push(Cause::required("spec.schedule"));
        } else if schedule.contains("TZ") {
            out.push(Cause::invalid(
                "spec.schedule",
                schedule,
                "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
            ));
        } else if let Err(e) = Schedule::parse(schedule) {
            out.push(Cause::invalid("spec.schedule", schedule, e));
        }
        if let Some(tz) = spec.get("timeZone").and_then(Value::as_str) {
            if !matches!(tz, "UTC" | "Etc/UTC") {
                out.push(Cause::invalid(
                    "spec.timeZone",
                    tz,
                    "wasmkube evaluates schedules in UTC only (\"UTC\" or \"Etc/UTC\")",
                ));
            }
        }
        let policy = podspec::str_at(spec, "concurrencyPolicy");
        if !["Allow", "Forbid", "Replace"].contains(&policy) {
            out.push(Cause::not_supported(
                "spec.concurrencyPolicy",
                policy,
                &["Allow", "Forbid", "Replace"],
            ));
        }
        for field in [
            "startingDeadlineSeconds",
            "successfulJobsHistoryLimit",
            "failedJobsHistoryLimit",
        ] {
            if let Some(v) = int_at(spec, field) {
                nonnegative(&mut out, &format!("spec.{field}"), v);
            }
        }
        let job_spec = spec
            .get("jobTemplate")
            .and_then(|t| t.get("spec"))
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        out.extend(validate_job_spec(job_spec, "spec.jobTemplate.spec", false));
        out
    }

    fn tracks_generation(&self) -> bool {
        true
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::name(),
            Column::new(
                "Schedule",
                "string",
                "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron.",
            ),
            Column::new(
                "Timezone",
                "string",
                "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones.",
            ),
            Column::new(
                "Suspend",
                "boolean",
                "This flag tells the controller to suspend subsequent executions, it does not apply to already started executions.  Defaults to false.",
            ),
            Column::new("Active", "integer", "A list of pointers to currently running jobs."),
            Column::new(
                "Last Schedule",
                "string",
                "Information when was the last time the job was successfully scheduled.",
            ),
            Column::age(),
        ]
        .into_iter()
        .chain(podspec::template_columns(
            "A label query over pods that should match the pod count. Normally, the system sets this field for you. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors",
        ))
        .collect()
    }

    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        let (containers, images) =
            podspec::container_cells(obj.pointer("/spec/jobTemplate/spec/template/spec"));
        let last = match obj.pointer("/status/lastScheduleTime") {
            Some(t) if !t.is_null() => table::timestamp_age(Some(t), now),
            _ => "<none>".to_string(),
        };
        let suspend = obj.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true);
        vec![
            json!(table::name_of(obj)),
            json!(table::str_at(obj, "/spec/schedule")),
            json!(match table::str_at(obj, "/spec/timeZone") {
                "" => "<none>",
                tz => tz,
            }),
            json!(if suspend { "True" } else { "False" }),
            json!(table::len_at(obj, "/status/active")),
            json!(last),
            json!(table::age(obj, now)),
            json!(containers),
            json!(images),
            json!(podspec::format_label_selector(
                obj.pointer("/spec/jobTemplate/spec/selector")
            )),
        ]
    }
}

pub(super) fn def() -> ResourceDef {
    ResourceDef {
        group: "batch",
        version: "v1",
        kind: "CronJob",
        plural: "cronjobs",
        singular: "cronjob",
        namespaced: true,
        short_names: &["cj"],
        categories: &["all"],
        subresources: &[Subresource::Status],
        strategy: Box::new(CronJobStrategy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron_job(schedule: &str) -> Value {
        let mut c = json!({
            "apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "tick", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"schedule": schedule, "jobTemplate": {"spec": {"template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "tick", "image": "file:///tick.wasm"}],
            }}}}},
        });
        c = CronJobStrategy.decode(&c).unwrap();
        CronJobStrategy.default(&mut c);
        c
    }

    #[test]
    fn defaults_and_a_valid_schedule() {
        let c = cron_job("*/5 * * * *");
        assert_eq!(c["spec"]["concurrencyPolicy"], "Allow");
        assert_eq!(c["spec"]["successfulJobsHistoryLimit"], 3);
        assert_eq!(c["spec"]["failedJobsHistoryLimit"], 1);
        assert_eq!(c["spec"]["suspend"], false);
        assert!(
            CronJobStrategy.validate(&c).is_empty(),
            "{:?}",
            CronJobStrategy.validate(&c)
        );
    }

    #[test]
    fn bad_schedules_zones_policies_and_templates_are_named() {
        let mut c = cron_job("61 * * * *");
        c["spec"]["timeZone"] = json!("Europe/Paris");
        c["spec"]["concurrencyPolicy"] = json!("Sometimes");
        c["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
        let fields: Vec<String> = CronJobStrategy
            .validate(&c)
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(
            fields,
            vec![
                "spec.schedule",
                "spec.timeZone",
                "spec.concurrencyPolicy",
                "spec.jobTemplate.spec.template.spec.restartPolicy"
            ]
        );
        let tz = cron_job("CRON_TZ=UTC 0 * * * *");
        assert!(CronJobStrategy.validate(&tz)[0]
            .message
            .contains("use timeZone field"));
        assert!(CronJobStrategy.validate_name(&"a".repeat(53)).is_some());
        assert!(CronJobStrategy.validate_name(&"a".repeat(52)).is_none());
    }

    #[test]
    fn cells_follow_upstreams_printer() {
        let now = DateTime::parse_from_rfc3339("2024-01-01T00:10:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        let mut c = cron_job("*/5 * * * *");
        assert_eq!(
            CronJobStrategy.cells(&c, now)[..7],
            [
                json!("tick"),
                json!("*/5 * * * *"),
                json!("<none>"),
                json!("False"),
                json!(0),
                json!("<none>"),
                json!("10m")
            ]
        );
        c["status"] = json!({"lastScheduleTime": "2024-01-01T00:05:00Z",
                             "active": [{"kind": "Job", "name": "tick-1"}]});
        let cells = CronJobStrategy.cells(&c, now);
        assert_eq!(cells[4], json!(1));
        assert_eq!(cells[5], json!("5m"));
    }
}
