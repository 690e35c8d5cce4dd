//! The CronJob controller: makes a Job from a CronJob's template at each scheduled
//! time, as kube-controller-manager's (its v2 controller).
//!
//! A reconcile lists the CronJob's Jobs (controlled by it), records the running ones
//! in `status.active` and the latest success in `status.lastSuccessfulTime`, deletes
//! finished Jobs beyond `successfulJobsHistoryLimit`/`failedJobsHistoryLimit` (oldest
//! first), then — unless suspended — finds the most recent scheduled time since
//! `status.lastScheduleTime` (or the CronJob's creation) that has passed. That run is
//! skipped when later than `startingDeadlineSeconds`, or (concurrencyPolicy Forbid)
//! while a Job still runs; with Replace the running Jobs are deleted first. The Job is
//! named `<cronjob>-<scheduled minutes since the epoch>`, so a run is made once even
//! if two reconciles race. Earlier missed times are not made up for, as upstream. The
//! next reconcile is queued for the next scheduled time.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::events::{EventType, Recorder};
use crate::cron::Schedule;

/// What can go wrong in one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("api call failed: {0}")]
    Api(#[from] kube::Error),
}

/// The field manager and event source of this controller.
const MANAGER: &str = "cronjob-controller";
/// The annotation holding the time a Job was scheduled for.
pub const SCHEDULED_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// More missed runs than this are reported (and not counted further), as upstream.
const MAX_MISSED: usize = 100;

struct Context {
    client: kube::Client,
    recorder: Recorder,
}

/// Runs the controller until the watch streams end.
pub async fn run(client: kube::Client) {
    let cron_jobs: Api<CronJob> = Api::all(client.clone());
    let jobs: Api<Job> = Api::all(client.clone());
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), MANAGER),
        client,
    });
    Controller::new(cron_jobs, watcher::Config::default())
        .owns(jobs, watcher::Config::default())
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "cronjob reconcile failed");
            }
        })
        .await;
}

fn error_policy(cj: Arc<CronJob>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(
        namespace = cj.namespace().as_deref().unwrap_or(""),
        cronjob = %cj.name_any(),
        error = %err,
        "reconciling cronjob failed; retrying"
    );
    Action::requeue(Duration::from_secs(2))
}

fn to_utc(t: &Time) -> DateTime<Utc> {
    DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

fn to_time(t: DateTime<Utc>) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(t.timestamp()).unwrap_or_default())
}

/// How a Job ended: `Some(true)` Complete, `Some(false)` Failed, `None` still running.
fn finished(job: &Job) -> Option<bool> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .find_map(|c| match (c.type_.as_str(), c.status.as_str()) {
            ("Complete", "True") => Some(true),
            ("Failed", "True") => Some(false),
            _ => None,
        })
}

/// The latest scheduled time in `(since, now]`, how many there were, and the first one
/// after `now`. Walks every scheduled time in between: a minutely schedule after a
/// month down is 43,200 cheap steps, once.
pub(crate) fn due(
    schedule: &Schedule,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (Option<DateTime<Utc>>, usize, Option<DateTime<Utc>>) {
    let mut latest = None;
    let mut count = 0;
    let mut t = schedule.next_after(since);
    while let Some(at) = t.filter(|at| *at <= now) {
        latest = Some(at);
        count += 1;
        t = schedule.next_after(at);
    }
    (latest, count, t)
}

/// The Job for the run scheduled at `at`.
fn job_for(cj: &CronJob, at: DateTime<Utc>) -> Job {
    let spec = cj.spec.clone().unwrap_or_default();
    let template = spec.job_template;
    let meta = template.metadata.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(
        SCHEDULED_ANNOTATION.into(),
        at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    Job {
        metadata: ObjectMeta {
            name: Some(format!("{}-{}", cj.name_any(), at.timestamp() / 60)),
            namespace: cj.namespace(),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![super::controller_ref(cj)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// Deletes `job` and, in the background, its pods.
async fn delete_job(
    ctx: &Context,
    api: &Api<Job>,
    cron_job: &ObjectReference,
    job: &Job,
) -> Result<(), Error> {
    let background = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    match api.delete(&job.name_any(), &background).await {
        Ok(_) => {
            ctx.recorder
                .record(
                    cron_job,
                    EventType::Normal,
                    "SuccessfulDelete",
                    &format!("Deleted job {}", job.name_any()),
                )
                .await;
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn job_reference(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        field_path: None,
    }
}

async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = cj.namespace().unwrap_or_default();
    let name = cj.name_any();
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let spec = cj.spec.clone().unwrap_or_default();
    let reference = cj.object_ref(&());
    let now = Utc::now();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let mut jobs: Vec<Job> = jobs_api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|j| {
            j.owner_references()
                .iter()
                .any(|r| r.controller == Some(true) && r.uid == uid)
                && j.metadata.deletion_timestamp.is_none()
        })
        .collect();
    jobs.sort_by_key(|j| j.metadata.creation_timestamp.clone().map(|t| t.0));

    let old = cj.status.clone().unwrap_or_default();
    let mut last_success = old.last_successful_time.as_ref().map(to_utc);
    for job in &jobs {
        if finished(job) == Some(true) {
            let done = job
                .status
                .as_ref()
                .and_then(|s| s.completion_time.as_ref())
                .map(to_utc);
            if done > last_success {
                last_success = done;
            }
        }
    }

    // History: the oldest finished Jobs beyond the limits go, with their pods.
    for (outcome, limit) in [
        (true, spec.successful_jobs_history_limit.unwrap_or(3)),
        (false, spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let done: Vec<&Job> = jobs
            .iter()
            .filter(|j| finished(j) == Some(outcome))
            .collect();
        let excess = done.len().saturating_sub(limit.max(0) as usize);
        for job in &done[..excess] {
            delete_job(&ctx, &jobs_api, &reference, job).await?;
        }
    }
    let mut active: Vec<Job> = jobs.into_iter().filter(|j| finished(j).is_none()).collect();

    let mut last_schedule = old.last_schedule_time.as_ref().map(to_utc);
    let mut requeue = None;
    if spec.suspend != Some(true) {
        match Schedule::parse(&spec.schedule) {
            Err(e) => {
                // Validation refuses such schedules; one stored earlier is reported.
                ctx.recorder
                    .record(
                        &reference,
                        EventType::Warning,
                        "UnparseableSchedule",
                        &format!("unparseable schedule: {:?} : {e}", spec.schedule),
                    )
                    .await;
            }
            Ok(schedule) => {
                let since = last_schedule
                    .or_else(|| cj.metadata.creation_timestamp.as_ref().map(to_utc))
                    .unwrap_or(now);
                let (latest, missed, next) = due(&schedule, since, now);
                if missed > MAX_MISSED {
                    ctx.recorder
                        .record(&reference, EventType::Warning, "TooManyMissedTimes", &format!("too many missed start times: {missed}. Set or decrease .spec.startingDeadlineSeconds or check clock skew"))
                        .await;
                }
                requeue = next.map(|n| (n - now).to_std().unwrap_or_default());
                if let Some(at) = latest {
                    let too_late = spec
                        .starting_deadline_seconds
                        .is_some_and(|d| at + chrono::TimeDelta::seconds(d) < now);
                    let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
                    if too_late {
                        ctx.recorder
                            .record(
                                &reference,
                                EventType::Warning,
                                "MissSchedule",
                                &format!(
                                    "Missed scheduled time to start a job: {}",
                                    at.to_rfc3339()
                                ),
                            )
                            .await;
                    } else if policy == "Forbid" && !active.is_empty() {
                        // Tried again when the running Job ends (its watch event) or at
                        // the next scheduled time; the missed run stays due until then.
                        tracing::debug!(namespace = %ns, cronjob = %name, "a job still runs; skipping this run (Forbid)");
                    } else {
                        if policy == "Replace" {
                            for job in active.drain(..) {
                                delete_job(&ctx, &jobs_api, &reference, &job).await?;
                            }
                        }
                        let job = job_for(&cj, at);
                        let params = PostParams {
                            field_manager: Some(MANAGER.into()),
                            ..Default::default()
                        };
                        match jobs_api.create(&params, &job).await {
                            Ok(made) => {
                                tracing::info!(namespace = %ns, cronjob = %name, job = %made.name_any(), scheduled = %at, "created job");
                                ctx.recorder
                                    .record(
                                        &reference,
                                        EventType::Normal,
                                        "SuccessfulCreate",
                                        &format!("Created job {}", made.name_any()),
                                    )
                                    .await;
                                active.push(made);
                            }
                            // Made by an earlier reconcile whose status write was lost.
                            Err(kube::Error::Api(e)) if e.code == 409 => {}
                            Err(e) => {
                                ctx.recorder
                                    .record(
                                        &reference,
                                        EventType::Warning,
                                        "FailedCreate",
                                        &format!("Error creating job: {e}"),
                                    )
                                    .await;
                                return Err(e.into());
                            }
                        }
                        last_schedule = Some(at);
                    }
                }
            }
        }
    }

    let refs: Vec<ObjectReference> = active.iter().map(job_reference).collect();
    let status = json!({
        "active": if refs.is_empty() { serde_json::Value::Null } else { json!(refs) },
        "lastScheduleTime": last_schedule.map(to_time),
        "lastSuccessfulTime": last_success.map(to_time),
    });
    let unchanged = old
        .active
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|r| &r.uid)
        .collect::<Vec<_>>()
        == refs.iter().map(|r| &r.uid).collect::<Vec<_>>()
        && old.last_schedule_time.as_ref().map(to_utc) == last_schedule
        && old.last_successful_time.as_ref().map(to_utc) == last_success;
    if !unchanged {
        let api: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        api.patch_status(&name, &params, &Patch::Merge(&json!({"status": status})))
            .await?;
    }
    Ok(match requeue {
        Some(d) => Action::requeue(d + Duration::from_millis(200)),
        None => Action::await_change(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_latest_due_run_and_the_next() {
        let every5 = Schedule::parse("*/5 * * * *").unwrap();
        let (latest, missed, next) = due(
            &every5,
            at("2024-01-01T10:00:00Z"),
            at("2024-01-01T10:12:00Z"),
        );
        assert_eq!(latest, Some(at("2024-01-01T10:10:00Z")));
        assert_eq!(missed, 2);
        assert_eq!(next, Some(at("2024-01-01T10:15:00Z")));
        let (latest, missed, _) = due(
            &every5,
            at("2024-01-01T10:10:00Z"),
            at("2024-01-01T10:12:00Z"),
        );
        assert_eq!(
            (latest, missed),
            (None, 0),
            "nothing new since the last run"
        );
    }

    #[test]
    fn a_long_outage_counts_as_too_many_missed_runs_and_still_runs_the_latest() {
        let minutely = Schedule::parse("* * * * *").unwrap();
        let (latest, missed, next) = due(
            &minutely,
            at("2024-01-01T00:00:00Z"),
            at("2024-01-02T00:00:30Z"),
        );
        assert_eq!(missed, 1440);
        assert_eq!(latest, Some(at("2024-01-02T00:00:00Z")));
        assert_eq!(next, Some(at("2024-01-02T00:01:00Z")));
        let hourly = Schedule::parse("0 * * * *").unwrap();
        let (latest, missed, _) = due(
            &hourly,
            at("2024-01-01T00:00:00Z"),
            at("2024-01-10T05:30:00Z"),
        );
        assert_eq!(missed, 9 * 24 + 5);
        assert_eq!(latest, Some(at("2024-01-10T05:00:00Z")));
    }

    #[test]
    fn jobs_are_named_by_their_scheduled_minute() {
        let cj: CronJob = serde_json::from_value(json!({
            "metadata": {"name": "tick", "namespace": "ns", "uid": "u1"},
            "spec": {"schedule": "* * * * *", "jobTemplate": {
                "metadata": {"labels": {"app": "tick"}},
                "spec": {"template": {"spec": {"restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "i"}]}}},
            }},
        }))
        .unwrap();
        let job = job_for(&cj, at("2024-01-01T00:01:00Z"));
        assert_eq!(job.name_any(), format!("tick-{}", 1704067260 / 60));
        assert_eq!(job.labels().get("app").map(String::as_str), Some("tick"));
        assert_eq!(
            job.annotations()
                .get(SCHEDULED_ANNOTATION)
                .map(String::as_str),
            Some("2024-01-01T00:01:00Z")
        );
        assert_eq!(job.owner_references()[0].kind, "CronJob");
    }
}
