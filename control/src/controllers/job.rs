//! The Job controller: runs a Job's pods to completion, as kube-controller-manager's.
//!
//! Each reconcile reads the Job afresh (counting builds on the status the previous
//! reconcile wrote, which the watch cache may not show yet) and lists the pods it
//! controls (narrowed on the server by the controller-uid label). Pods
//! carry the `batch.kubernetes.io/job-tracking` finalizer from their creation, so none
//! is gone before it is counted: a pod that finished (Succeeded; Failed, or deleted
//! before succeeding) is first recorded in `status.uncountedTerminatedPods`, then its
//! finalizer is removed, then it moves into `succeeded`/`failed` — upstream's three
//! steps, each written before the next, so a crash in between neither loses nor doubles
//! a count. A pod whose Job is gone loses the finalizer too ([`release_orphans`]).
//!
//! Then, in upstream's order: a suspended Job has its pods deleted (Suspended=True);
//! failures beyond `backoffLimit` (counting container restarts under OnFailure) or
//! `activeDeadlineSeconds` passed fail it (FailureTarget and Failed, active pods
//! deleted); enough successes complete it (SuccessCriteriaMet and Complete,
//! `completionTime`); otherwise it runs `min(parallelism, completions − succeeded)` pods
//! (a work queue without completions stops starting pods after the first success),
//! waiting 10 s doubling to 6 min after failures. Indexed Jobs give each pod a
//! completion index (annotation and label `batch.kubernetes.io/job-completion-index`,
//! `JOB_COMPLETION_INDEX`, hostname `<job>-<index>`) and are complete when every index
//! succeeded (`status.completedIndexes`). `ttlSecondsAfterFinished` deletes a finished
//! Job (and, through the garbage collector, its pods).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher::{self, Event};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::events::{EventType, Recorder};
use super::shared_watch::SharedWatch;
use crate::registry::selectors::LabelSelector;

/// What can go wrong in one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("api call failed: {0}")]
    Api(#[from] kube::Error),
    /// The Job's selector cannot be used.
    #[error("invalid selector: {0}")]
    Selector(String),
}

/// The field manager and event source of this controller.
const MANAGER: &str = "job-controller";
/// Keeps a Job's pod until the Job has counted it.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// A pod's completion index in an Indexed Job (annotation and label).
pub const INDEX_KEY: &str = "batch.kubernetes.io/job-completion-index";
/// The first wait before pods are created again after a failure…
const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// …doubling per failure up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(360);

struct Context {
    client: kube::Client,
    recorder: Recorder,
    /// When each running Job (by uid) last saw a pod fail: new pods wait out the
    /// back-off. Forgotten once the Job finishes or goes.
    last_failure: Mutex<HashMap<String, DateTime<Utc>>>,
}

/// Runs the controller until the watch streams end.
pub async fn run(client: kube::Client, pods: SharedWatch<Pod>) {
    let jobs: Api<Job> = Api::all(client.clone());
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), MANAGER),
        client,
        last_failure: Mutex::new(HashMap::new()),
    });
    let controller = Controller::new(jobs, watcher::Config::default());
    let store = controller.store();
    let orphans = release_orphans(ctx.clone(), pods.clone(), store);
    let jobs = controller
        .owns_stream(pods.touched())
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "job reconcile failed");
            }
        });
    futures::join!(jobs, orphans);
}

fn error_policy(job: Arc<Job>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(
        namespace = job.namespace().as_deref().unwrap_or(""),
        job = %job.name_any(),
        error = %err,
        "reconciling job failed; retrying"
    );
    Action::requeue(Duration::from_secs(2))
}

/// Removes the tracking finalizer from pods whose Job is gone (deleted with its pods
/// left to the garbage collector, or orphaned), which would otherwise stay forever.
async fn release_orphans(ctx: Arc<Context>, pods: SharedWatch<Pod>, jobs: Store<Job>) {
    let events = pods.subscribe();
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        let pods = match event {
            Event::Apply(p) | Event::InitApply(p) => vec![p],
            _ => continue,
        };
        for pod in pods {
            if !has_finalizer(&pod) || pod.metadata.deletion_timestamp.is_none() {
                continue;
            }
            let Some(owner) = job_owner(&pod) else {
                continue;
            };
            let ns = pod.namespace().unwrap_or_default();
            let cached = jobs.state().into_iter().any(|j| {
                j.metadata.uid.as_deref() == Some(owner.uid.as_str())
                    && j.metadata.deletion_timestamp.is_none()
            });
            if cached {
                continue;
            }
            // The cache may lag: ask before letting go.
            let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
            let live = match api.get_opt(&owner.name).await {
                Ok(j) => j.filter(|j| j.metadata.uid.as_deref() == Some(owner.uid.as_str())),
                Err(e) => {
                    tracing::debug!(namespace = %ns, pod = %pod.name_any(), error = %e, "looking up a pod's job");
                    continue;
                }
            };
            if live.is_some_and(|j| j.metadata.deletion_timestamp.is_none()) {
                continue;
            }
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
            if let Err(e) = remove_finalizer(&pods, &pod).await {
                tracing::debug!(namespace = %ns, pod = %pod.name_any(), error = %e, "releasing an orphaned job pod");
            }
        }
    }
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER.to_string()),
        ..Default::default()
    }
}

fn job_owner(pod: &Pod) -> Option<&OwnerReference> {
    pod.owner_references()
        .iter()
        .find(|r| r.controller == Some(true) && r.kind == "Job" && r.api_version == "batch/v1")
}

fn has_finalizer(pod: &Pod) -> bool {
    pod.finalizers().iter().any(|f| f == TRACKING_FINALIZER)
}

/// Takes the tracking finalizer off `pod` (a JSON patch that tests it is still where
/// it was, so another finalizer's change is never overwritten).
async fn remove_finalizer(api: &Api<Pod>, pod: &Pod) -> Result<(), kube::Error> {
    let Some(at) = pod
        .finalizers()
        .iter()
        .position(|f| f == TRACKING_FINALIZER)
    else {
        return Ok(());
    };
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": format!("/metadata/finalizers/{at}"), "value": TRACKING_FINALIZER},
        {"op": "remove", "path": format!("/metadata/finalizers/{at}")},
    ]))
    .expect("a valid JSON patch");
    match api
        .patch(&pod.name_any(), &patch_params(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// How a pod ended for its Job: `Some(true)` succeeded, `Some(false)` failed (or was
/// deleted before succeeding, upstream's rule), `None` still active.
pub(crate) fn outcome(pod: &Pod) -> Option<bool> {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Succeeded") => Some(true),
        Some("Failed") => Some(false),
        _ if pod.metadata.deletion_timestamp.is_some() => Some(false),
        _ => None,
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn index_of(pod: &Pod) -> Option<i32> {
    pod.annotations().get(INDEX_KEY)?.parse().ok()
}

/// `0-2,4`: completed indexes as upstream writes them.
pub(crate) fn format_indexes(indexes: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut run: Option<(i32, i32)> = None;
    for &i in indexes {
        run = match run {
            Some((start, end)) if i == end + 1 => Some((start, i)),
            Some((start, end)) => {
                out.push(range_text(start, end));
                Some((i, i))
            }
            None => Some((i, i)),
        };
    }
    if let Some((start, end)) = run {
        out.push(range_text(start, end));
    }
    out.join(",")
}

fn range_text(start: i32, end: i32) -> String {
    if start == end {
        start.to_string()
    } else {
        format!("{start}-{end}")
    }
}

/// The indexes in `text` (`0-2,4`); what does not parse is skipped.
pub(crate) fn parse_indexes(text: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

/// How long new pods wait after the latest of `failed` failures.
pub(crate) fn backoff(failed: i32) -> Duration {
    if failed <= 0 {
        return Duration::ZERO;
    }
    let doublings = (failed - 1).min(10) as u32;
    (BACKOFF_BASE * 2u32.pow(doublings)).min(BACKOFF_MAX)
}

/// How many pods a NonIndexed Job should have running.
pub(crate) fn want_active(
    completions: Option<i32>,
    parallelism: i32,
    succeeded: i32,
    active: i32,
) -> i32 {
    match completions {
        Some(c) => (c - succeeded).min(parallelism).max(0),
        // A work queue: once one pod succeeded, the rest finish on their own.
        None if succeeded > 0 => active,
        None => parallelism,
    }
}

/// Sets condition `type_` (keeping its transition time when its status is unchanged).
fn set_condition(
    conditions: &mut Vec<JobCondition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: &Time,
) {
    let status = if status { "True" } else { "False" };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Some(now.clone());
            }
            c.status = status.into();
            c.reason = Some(reason.into());
            c.message = Some(message.into());
            c.last_probe_time = Some(now.clone());
        }
        None => conditions.push(JobCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_probe_time: Some(now.clone()),
            last_transition_time: Some(now.clone()),
        }),
    }
}

fn condition_true(status: &JobStatus, type_: &str) -> Option<DateTime<Utc>> {
    status.conditions.iter().flatten().find_map(|c| {
        (c.type_ == type_ && c.status == "True").then(|| {
            c.last_transition_time
                .as_ref()
                .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0))
                .unwrap_or_else(Utc::now)
        })
    })
}

/// A new pod of `job`, for completion index `index` in an Indexed Job.
fn pod_for(job: &Job, index: Option<i32>) -> Pod {
    let spec = job.spec.clone().unwrap_or_default();
    let meta = spec.template.metadata.unwrap_or_default();
    let mut pod_spec = spec.template.spec.unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    let name = job.name_any();
    let mut generate_name = format!("{name}-");
    if let Some(i) = index {
        labels.insert(INDEX_KEY.into(), i.to_string());
        annotations.insert(INDEX_KEY.into(), i.to_string());
        generate_name = format!("{name}-{i}-");
        if pod_spec.hostname.is_none() {
            pod_spec.hostname = Some(format!("{name}-{i}"));
        }
        let env = EnvVar {
            name: "JOB_COMPLETION_INDEX".into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: None,
                    field_path: format!("metadata.annotations['{INDEX_KEY}']"),
                }),
                ..Default::default()
            }),
        };
        for c in pod_spec
            .init_containers
            .iter_mut()
            .flatten()
            .chain(pod_spec.containers.iter_mut())
        {
            let vars = c.env.get_or_insert_with(Vec::new);
            if !vars.iter().any(|v| v.name == env.name) {
                vars.push(env.clone());
            }
        }
    }
    let mut finalizers = meta.finalizers.unwrap_or_default();
    finalizers.push(TRACKING_FINALIZER.into());
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            namespace: job.namespace(),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            finalizers: Some(finalizers),
            owner_references: Some(vec![super::controller_ref(job)]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

async fn reconcile(cached: Arc<Job>, ctx: Arc<Context>) -> Result<Action, Error> {
    // The status is read fresh: counting goes by what the last reconcile wrote, and the
    // watch may not have delivered that yet (a stale `succeeded` would run a pod again).
    let cached_ns = cached.namespace().unwrap_or_default();
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &cached_ns);
    let job = match api.get_opt(&cached.name_any()).await? {
        Some(j) if j.metadata.uid == cached.metadata.uid => j,
        _ => {
            if let Ok(mut last) = ctx.last_failure.lock() {
                last.remove(cached.metadata.uid.as_deref().unwrap_or_default());
            }
            return Ok(Action::await_change());
        }
    };
    let spec = job.spec.clone().unwrap_or_default();
    // Deleting, or another controller's to run (`spec.managedBy`).
    let managed_here = spec
        .managed_by
        .as_deref()
        .is_none_or(|m| m == "kubernetes.io/job-controller");
    if job.metadata.deletion_timestamp.is_some() || !managed_here {
        if let Ok(mut last) = ctx.last_failure.lock() {
            last.remove(job.metadata.uid.as_deref().unwrap_or_default());
        }
        return Ok(Action::await_change());
    }
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let selector_json = serde_json::to_value(&spec.selector).unwrap_or_default();
    let selector =
        LabelSelector::try_from_label_selector_json(&selector_json).map_err(Error::Selector)?;
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let reference = job.object_ref(&());
    let now = Utc::now();
    let now_time = Time(k8s_openapi::jiff::Timestamp::now());

    // The server narrows the list by the selector's equality terms (the generated
    // controller-uid label), so a reconcile reads this Job's pods, not the namespace's.
    let by_labels: Vec<String> = spec
        .selector
        .as_ref()
        .and_then(|s| s.match_labels.as_ref())
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let owned: Vec<Pod> = pods_api
        .list(&ListParams::default().labels(&by_labels.join(",")))
        .await?
        .items
        .into_iter()
        .filter(|p| {
            let ours = p
                .owner_references()
                .iter()
                .any(|r| r.controller == Some(true) && r.uid == uid);
            ours && selector.matches_with(|k| p.labels().get(k).cloned())
        })
        .collect();
    let old_status = job.status.clone().unwrap_or_default();
    let mut status = old_status.clone();
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let mut completed = parse_indexes(status.completed_indexes.as_deref().unwrap_or(""));

    // Step 1: record finished pods still held by the finalizer.
    let uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
    let mut new_succeeded: Vec<String> = uncounted.succeeded.clone().unwrap_or_default();
    let mut new_failed: Vec<String> = uncounted.failed.clone().unwrap_or_default();
    let mut recorded = false;
    for p in owned.iter().filter(|p| has_finalizer(p)) {
        let Some(ok) = outcome(p) else { continue };
        let pod_uid = p.metadata.uid.clone().unwrap_or_default();
        if new_succeeded.contains(&pod_uid) || new_failed.contains(&pod_uid) {
            continue;
        }
        recorded = true;
        if ok {
            new_succeeded.push(pod_uid);
            if let Some(i) = index_of(p).filter(|_| indexed) {
                completed.insert(i);
            }
        } else {
            new_failed.push(pod_uid);
            if let Ok(mut last) = ctx.last_failure.lock() {
                last.insert(uid.clone(), now);
            }
        }
    }
    if recorded {
        let mut patch = json!({"status": {"uncountedTerminatedPods": {
            "succeeded": new_succeeded, "failed": new_failed,
        }}});
        if indexed {
            patch["status"]["completedIndexes"] = json!(format_indexes(&completed));
        }
        jobs.patch_status(&name, &patch_params(), &Patch::Merge(&patch))
            .await
            .map_err(Error::from)?;
        status.completed_indexes = indexed.then(|| format_indexes(&completed));
    }

    // Step 2: let the recorded pods go.
    let held: HashSet<&String> = new_succeeded.iter().chain(new_failed.iter()).collect();
    for p in owned.iter().filter(|p| has_finalizer(p)) {
        if p.metadata.uid.as_ref().is_some_and(|u| held.contains(u)) {
            remove_finalizer(&pods_api, p).await?;
        }
    }

    // Step 3: count them.
    let mut succeeded = status.succeeded.unwrap_or(0) + new_succeeded.len() as i32;
    let failed = status.failed.unwrap_or(0) + new_failed.len() as i32;
    if indexed {
        succeeded = completed.len() as i32;
    }
    // Zero counts and empty lists as the API prints them (Go's omitempty), so that a
    // status read back compares equal and an unchanged Job is not written again.
    status.uncounted_terminated_pods = Some(UncountedTerminatedPods::default());
    status.succeeded = (succeeded > 0).then_some(succeeded);
    status.failed = (failed > 0).then_some(failed);

    let active: Vec<&Pod> = owned.iter().filter(|p| outcome(p).is_none()).collect();
    status.ready = Some(active.iter().filter(|p| is_ready(p)).count() as i32);
    status.terminating = Some(
        owned
            .iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_some()
                    && !matches!(
                        p.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Succeeded" | "Failed")
                    )
            })
            .count() as i32,
    );
    let mut conditions = status.conditions.clone().unwrap_or_default();
    let finished = condition_true(&status, "Complete").or(condition_true(&status, "Failed"));
    let mut deletes: Vec<&Pod> = Vec::new();
    let mut creates: Vec<Option<i32>> = Vec::new();
    let mut requeue: Option<Duration> = None;

    if let Some(finished_at) = finished {
        // Only bookkeeping is left, and the time to live.
        deletes = active.clone();
        if let Ok(mut last) = ctx.last_failure.lock() {
            last.remove(&uid);
        }
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            let due = finished_at + chrono::TimeDelta::seconds(i64::from(ttl));
            if now >= due {
                let params = DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Background),
                    ..Default::default()
                };
                match jobs.delete(&name, &params).await {
                    Ok(_) => {
                        tracing::info!(namespace = %ns, job = %name, "deleted finished job: its time to live ran out")
                    }
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
                return Ok(Action::await_change());
            }
            requeue = Some((due - now).to_std().unwrap_or_default());
        }
    } else if spec.suspend == Some(true) {
        deletes = active.clone();
        if condition_true(&status, "Suspended").is_none() {
            set_condition(
                &mut conditions,
                "Suspended",
                true,
                "JobSuspended",
                "Job suspended",
                &now_time,
            );
            ctx.recorder
                .record(&reference, EventType::Normal, "Suspended", "Job suspended")
                .await;
        }
        // The deadline counts from the resume.
        status.start_time = None;
    } else {
        if condition_true(&status, "Suspended").is_some() {
            set_condition(
                &mut conditions,
                "Suspended",
                false,
                "JobResumed",
                "Job resumed",
                &now_time,
            );
            ctx.recorder
                .record(&reference, EventType::Normal, "Resumed", "Job resumed")
                .await;
        }
        let start = match &status.start_time {
            Some(t) => DateTime::from_timestamp(t.0.as_second(), 0).unwrap_or(now),
            None => {
                status.start_time = Some(now_time.clone());
                now
            }
        };
        let on_failure = spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            == Some("OnFailure");
        let restarts: i32 = if on_failure {
            active
                .iter()
                .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
                .flatten()
                .map(|c| c.restart_count)
                .sum()
        } else {
            0
        };
        let deadline = spec
            .active_deadline_seconds
            .map(|d| start + chrono::TimeDelta::seconds(d));
        let failure = if failed + restarts > spec.backoff_limit.unwrap_or(6) {
            Some((
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            ))
        } else if deadline.is_some_and(|d| now >= d) {
            Some((
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            ))
        } else {
            None
        };
        let completions = spec.completions;
        let parallelism = spec.parallelism.unwrap_or(1);
        let complete = match (indexed, completions) {
            (true, Some(c)) => completed.len() as i32 >= c,
            (_, Some(c)) => succeeded >= c,
            (_, None) => succeeded > 0 && active.is_empty(),
        };
        if let Some((reason, message)) = failure {
            deletes = active.clone();
            set_condition(
                &mut conditions,
                "FailureTarget",
                true,
                reason,
                message,
                &now_time,
            );
            set_condition(&mut conditions, "Failed", true, reason, message, &now_time);
            tracing::info!(namespace = %ns, job = %name, reason, "job failed");
            ctx.recorder
                .record(&reference, EventType::Warning, reason, message)
                .await;
        } else if complete {
            deletes = active.clone();
            let message = "Reached expected number of succeeded pods";
            set_condition(
                &mut conditions,
                "SuccessCriteriaMet",
                true,
                "CompletionsReached",
                message,
                &now_time,
            );
            set_condition(
                &mut conditions,
                "Complete",
                true,
                "CompletionsReached",
                message,
                &now_time,
            );
            status.completion_time = Some(now_time.clone());
            tracing::info!(namespace = %ns, job = %name, succeeded, "job completed");
            ctx.recorder
                .record(&reference, EventType::Normal, "Completed", "Job completed")
                .await;
            if let Some(ttl) = spec.ttl_seconds_after_finished {
                requeue = Some(Duration::from_secs(ttl.max(0) as u64));
            }
        } else {
            if indexed {
                let c = completions.unwrap_or(0);
                let mut running: HashSet<i32> = HashSet::new();
                for p in &active {
                    match index_of(p) {
                        // A second pod for one index, or one for a done index, goes.
                        Some(i) if !completed.contains(&i) && running.insert(i) => {}
                        _ => deletes.push(p),
                    }
                }
                let room = (parallelism - running.len() as i32).max(0) as usize;
                creates = (0..c)
                    .filter(|i| !completed.contains(i) && !running.contains(i))
                    .take(room)
                    .map(Some)
                    .collect();
            } else {
                let want = want_active(completions, parallelism, succeeded, active.len() as i32);
                let have = active.len() as i32;
                if have > want {
                    // The least useful first: not ready, then the newest.
                    let mut surplus = active.clone();
                    surplus.sort_by_key(|p| {
                        (
                            is_ready(p),
                            std::cmp::Reverse(p.metadata.creation_timestamp.clone().map(|t| t.0)),
                        )
                    });
                    deletes = surplus.into_iter().take((have - want) as usize).collect();
                } else {
                    creates = vec![None; (want - have) as usize];
                }
            }
            if !creates.is_empty() && failed > 0 {
                let last = ctx
                    .last_failure
                    .lock()
                    .ok()
                    .and_then(|l| l.get(&uid).copied());
                if let Some(last) = last {
                    let ready_at =
                        last + chrono::TimeDelta::from_std(backoff(failed)).unwrap_or_default();
                    if now < ready_at {
                        requeue = Some((ready_at - now).to_std().unwrap_or_default());
                        creates.clear();
                    }
                }
            }
            if let Some(d) = deadline {
                let left = (d - now).to_std().unwrap_or_default();
                requeue = Some(requeue.map_or(left, |r| r.min(left)));
            }
        }
    }

    let mut incomplete = false;
    for pod in &deletes {
        match pods_api
            .delete(&pod.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => {
                ctx.recorder
                    .record(
                        &reference,
                        EventType::Normal,
                        "SuccessfulDelete",
                        &format!("Deleted pod: {}", pod.name_any()),
                    )
                    .await;
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                tracing::warn!(namespace = %ns, job = %name, pod = %pod.name_any(), error = %e, "deleting a job pod failed");
                incomplete = true;
            }
        }
    }
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    let made = creates.iter().map(|index| {
        let pod = pod_for(&job, *index);
        let pods_api = pods_api.clone();
        let params = params.clone();
        async move { pods_api.create(&params, &pod).await }
    });
    let mut created = 0;
    for result in futures::future::join_all(made).await {
        match result {
            Ok(pod) => {
                created += 1;
                ctx.recorder
                    .record(
                        &reference,
                        EventType::Normal,
                        "SuccessfulCreate",
                        &format!("Created pod: {}", pod.name_any()),
                    )
                    .await;
            }
            Err(e) => {
                incomplete = true;
                ctx.recorder
                    .record(
                        &reference,
                        EventType::Warning,
                        "FailedCreate",
                        &format!("Error creating: {e}"),
                    )
                    .await;
            }
        }
    }
    let deleted_active = deletes.iter().filter(|p| outcome(p).is_none()).count() as i32;
    let now_active = active.len() as i32 - deleted_active + created;
    status.active = (now_active > 0).then_some(now_active);
    status.conditions = (!conditions.is_empty()).then_some(conditions);
    if indexed {
        status.completed_indexes = Some(format_indexes(&completed));
    }
    if status != old_status {
        let mut body = serde_json::to_value(&status).unwrap_or_default();
        // Cleared fields must be written as null to go away in a merge patch; zero
        // counts and empty lists are left out, as Go's omitempty prints them.
        for field in ["startTime", "completionTime"] {
            if body.get(field).is_none() {
                body[field] = serde_json::Value::Null;
            }
        }
        for field in ["active", "succeeded", "failed"] {
            if body.get(field).is_none() {
                body[field] = serde_json::Value::Null;
            }
        }
        for list in ["succeeded", "failed"] {
            body["uncountedTerminatedPods"][list] = serde_json::Value::Null;
        }
        jobs.patch_status(
            &name,
            &patch_params(),
            &Patch::Merge(&json!({"status": body})),
        )
        .await?;
    }
    if incomplete {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    Ok(match requeue {
        Some(d) => Action::requeue(d + Duration::from_millis(100)),
        None => Action::await_change(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_round_trip_as_ranges() {
        let set: BTreeSet<i32> = [0, 1, 2, 4, 6, 7].into();
        assert_eq!(format_indexes(&set), "0-2,4,6-7");
        assert_eq!(parse_indexes("0-2,4,6-7"), set);
        assert_eq!(format_indexes(&BTreeSet::new()), "");
        assert!(parse_indexes("").is_empty());
    }

    #[test]
    fn active_pods_wanted() {
        assert_eq!(want_active(Some(5), 2, 0, 0), 2);
        assert_eq!(want_active(Some(5), 2, 4, 1), 1, "one completion left");
        assert_eq!(want_active(Some(5), 2, 5, 1), 0);
        assert_eq!(want_active(None, 3, 0, 0), 3, "a work queue");
        assert_eq!(want_active(None, 3, 1, 2), 2, "after a success no new pods");
    }

    #[test]
    fn failures_back_off_ten_seconds_doubling_to_six_minutes() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(3), Duration::from_secs(40));
        assert_eq!(backoff(30), Duration::from_secs(360));
    }

    fn pod(phase: &str, deleting: bool) -> Pod {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"}, "status": {"phase": phase},
        }))
        .unwrap();
        if deleting {
            p.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        }
        p
    }

    #[test]
    fn outcomes_follow_phase_and_deletion() {
        assert_eq!(outcome(&pod("Succeeded", false)), Some(true));
        assert_eq!(outcome(&pod("Succeeded", true)), Some(true));
        assert_eq!(outcome(&pod("Failed", false)), Some(false));
        assert_eq!(
            outcome(&pod("Running", true)),
            Some(false),
            "deleted before succeeding"
        );
        assert_eq!(outcome(&pod("Running", false)), None);
    }

    #[test]
    fn indexed_pods_carry_their_index() {
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "work", "namespace": "ns", "uid": "u1"},
            "spec": {"template": {
                "metadata": {"labels": {"app": "w"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]},
            }},
        }))
        .unwrap();
        let p = pod_for(&job, Some(3));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("work-3-"));
        assert_eq!(
            p.annotations().get(INDEX_KEY).map(String::as_str),
            Some("3")
        );
        assert_eq!(p.labels().get(INDEX_KEY).map(String::as_str), Some("3"));
        assert_eq!(p.labels().get("app").map(String::as_str), Some("w"));
        assert_eq!(p.finalizers(), [TRACKING_FINALIZER.to_string()]);
        let spec = p.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("work-3"));
        let env = &spec.containers[0].env.as_ref().unwrap()[0];
        assert_eq!(env.name, "JOB_COMPLETION_INDEX");
        let plain = pod_for(&job, None);
        assert_eq!(plain.metadata.generate_name.as_deref(), Some("work-"));
        assert!(plain.spec.unwrap().containers[0].env.is_none());
    }
}
