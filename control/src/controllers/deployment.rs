//! The Deployment controller: rolls a Deployment's pod template out through
//! ReplicaSets, one per template revision, as kube-controller-manager does.
//!
//! Each reconcile finds the Deployment's ReplicaSets (adopting matching orphans), the
//! one whose template is the Deployment's ("new", created when missing with the next
//! `deployment.kubernetes.io/revision`), and moves replicas from the old ones to it:
//! RollingUpdate keeps at most `replicas + maxSurge` pods and at least `replicas -
//! maxUnavailable` available ones; Recreate empties the old ReplicaSets before the new
//! one grows. A paused Deployment only scales. Old ReplicaSets beyond
//! `revisionHistoryLimit` are deleted once empty; status and the Available /
//! Progressing conditions are what `kubectl rollout status` reads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector as SelectorSpec, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::{json, Value};

use super::events::{EventType, Recorder};
use crate::registry::selectors::LabelSelector;

/// What can go wrong in one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("api call failed: {0}")]
    Api(#[from] kube::Error),
    /// The Deployment's selector cannot be used.
    #[error("invalid selector: {0}")]
    Selector(String),
}

const MANAGER: &str = "deployment-controller";
const REVISION: &str = "deployment.kubernetes.io/revision";
const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const HASH_LABEL: &str = "pod-template-hash";

struct Context {
    client: kube::Client,
    recorder: Recorder,
}

/// Runs the controller until the watch streams end.
pub async fn run(client: kube::Client) {
    let deployments: Api<Deployment> = Api::all(client.clone());
    let sets: Api<ReplicaSet> = Api::all(client.clone());
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), MANAGER),
        client,
    });
    Controller::new(deployments, watcher::Config::default())
        .owns(sets, watcher::Config::default())
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "deployment reconcile failed");
            }
        })
        .await;
}

fn error_policy(d: Arc<Deployment>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(
        namespace = d.namespace().as_deref().unwrap_or(""),
        deployment = %d.name_any(),
        error = %err,
        "reconciling deployment failed; retrying"
    );
    Action::requeue(Duration::from_secs(2))
}

/// The pod-template-hash of a template: FNV-1a over its JSON, rendered with
/// Kubernetes' "safe" alphabet (no vowels, no look-alike characters).
pub(crate) fn template_hash(template: &PodTemplateSpec) -> String {
    let text = serde_json::to_string(template).unwrap_or_default();
    let mut h: u32 = 0x811c9dc5;
    for b in text.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|b| ALPHABET[(b as usize) % ALPHABET.len()] as char)
        .collect()
}

/// A template without the pod-template-hash label, for comparing a ReplicaSet's
/// template with the Deployment's.
fn without_hash(template: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = template.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(HASH_LABEL);
        if labels.is_empty() {
            if let Some(m) = t.metadata.as_mut() {
                m.labels = None;
            }
        }
    }
    t
}

fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

/// Resolves an int-or-percent against `total`, rounding up (surge) or down.
pub(crate) fn resolve(v: Option<&IntOrString>, total: i32, round_up: bool, default: &str) -> i32 {
    let v = v
        .cloned()
        .unwrap_or(IntOrString::String(default.to_string()));
    match v {
        IntOrString::Int(n) => n,
        IntOrString::String(s) => {
            let pct: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
            let exact = pct * total as f64 / 100.0;
            if round_up {
                exact.ceil() as i32
            } else {
                exact.floor() as i32
            }
        }
    }
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = d.namespace().unwrap_or_default();
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let spec = d.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let selector_json = serde_json::to_value(&spec.selector).unwrap_or_default();
    let selector =
        LabelSelector::try_from_label_selector_json(&selector_json).map_err(Error::Selector)?;
    let sets: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let reference = d.object_ref(&());

    // Ours, plus matching orphans adopted.
    let mut owned = Vec::new();
    for rs in sets
        .list(&ListParams::default().labels(&selector.to_string()))
        .await?
        .items
    {
        let controller = rs
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true))
            .cloned();
        match controller {
            Some(r) if r.uid == uid => owned.push(rs),
            Some(_) => {}
            None if rs.metadata.deletion_timestamp.is_none() => {
                let patch = json!({"metadata": {
                    "ownerReferences": [super::controller_ref(&*d)],
                    "resourceVersion": rs.metadata.resource_version,
                }});
                if let Ok(adopted) = sets
                    .patch(
                        &rs.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                {
                    owned.push(adopted);
                }
            }
            None => {}
        }
    }
    owned.sort_by_key(revision_of);

    let template = spec.template.clone();
    let new_pos = owned.iter().position(|rs| {
        rs.spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .map(without_hash)
            .as_ref()
            == Some(&without_hash(&template))
    });
    let max_revision = owned.iter().map(revision_of).max().unwrap_or(0);
    let paused = spec.paused.unwrap_or(false);

    let mut new_rs = match new_pos {
        Some(p) => {
            let rs = owned.remove(p);
            if revision_of(&rs) < max_revision && !paused {
                // A rollback to an older template: it becomes the newest revision.
                let patch = json!({"metadata": {"annotations": {REVISION: (max_revision + 1).to_string()}}});
                sets.patch(
                    &rs.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?
            } else {
                rs
            }
        }
        None if paused => {
            // No rollout while paused; only scaling of what exists.
            let total: i32 = owned.iter().map(spec_replicas).sum();
            if let Some(newest) = owned.last() {
                if total != replicas {
                    scale(&ctx, &sets, newest, replicas, &reference).await?;
                }
            }
            update_status(&ctx, &d, &owned, None).await?;
            return Ok(Action::await_change());
        }
        None => create_new_rs(&ctx, &d, &sets, max_revision + 1, &reference).await?,
    };
    let old: Vec<ReplicaSet> = owned;

    // The Deployment carries its current revision too, as upstream's does (`kubectl
    // rollout undo` patches that annotation and relies on it being there).
    let revision = revision_of(&new_rs).to_string();
    if d.annotations().get(REVISION) != Some(&revision) {
        let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"metadata": {"annotations": {REVISION: revision}}});
        deployments
            .patch(
                &d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
    }

    let strategy = spec.strategy.clone().unwrap_or_default();
    let recreate = strategy.type_.as_deref() == Some("Recreate");
    let mut changed = false;
    let mut old_after = old.clone();
    if paused {
        // Scale only.
        if old.iter().all(|rs| spec_replicas(rs) == 0) && spec_replicas(&new_rs) != replicas {
            new_rs = scale(&ctx, &sets, &new_rs, replicas, &reference).await?;
            changed = true;
        }
    } else if recreate {
        let old_active: i32 = old.iter().map(spec_replicas).sum();
        let old_pods: i32 = old
            .iter()
            .map(|rs| rs.status.as_ref().map(|s| s.replicas).unwrap_or(0))
            .sum();
        if old_active > 0 {
            for rs in old.iter().filter(|rs| spec_replicas(rs) > 0) {
                scale(&ctx, &sets, rs, 0, &reference).await?;
            }
            changed = true;
        } else if old_pods == 0 && spec_replicas(&new_rs) != replicas {
            new_rs = scale(&ctx, &sets, &new_rs, replicas, &reference).await?;
            changed = true;
        }
    } else {
        let ru = strategy.rolling_update.clone().unwrap_or_default();
        let max_surge = resolve(ru.max_surge.as_ref(), replicas, true, "25%");
        let mut max_unavailable = resolve(ru.max_unavailable.as_ref(), replicas, false, "25%");
        if max_surge == 0 && max_unavailable == 0 {
            max_unavailable = 1;
        }
        // Scale the new ReplicaSet up as far as the surge allows.
        let all_total: i32 = old.iter().map(spec_replicas).sum::<i32>() + spec_replicas(&new_rs);
        let new_target = if old.iter().all(|rs| spec_replicas(rs) == 0) {
            replicas
        } else {
            let room = (replicas + max_surge - all_total).max(0);
            (spec_replicas(&new_rs) + room).min(replicas)
        };
        if new_target != spec_replicas(&new_rs) {
            new_rs = scale(&ctx, &sets, &new_rs, new_target, &reference).await?;
            changed = true;
        }
        // Scale old ones down as far as availability allows, oldest first: first
        // replicas that are not available anyway, then available ones above the minimum.
        let mut old = old.clone();
        let all_total: i32 = old.iter().map(spec_replicas).sum::<i32>() + spec_replicas(&new_rs);
        let min_available = replicas - max_unavailable;
        let new_unavailable = (spec_replicas(&new_rs) - available(&new_rs)).max(0);
        let mut max_scaled_down = all_total - min_available - new_unavailable;
        if max_scaled_down > 0 {
            for rs in old.iter_mut() {
                if max_scaled_down <= 0 {
                    break;
                }
                let unhealthy = (spec_replicas(rs) - available(rs)).max(0);
                let down = unhealthy.min(max_scaled_down);
                if down > 0 {
                    *rs = scale(&ctx, &sets, rs, spec_replicas(rs) - down, &reference).await?;
                    max_scaled_down -= down;
                    changed = true;
                }
            }
            let available_total: i32 = old.iter().map(available).sum::<i32>() + available(&new_rs);
            let mut to_remove = (available_total - min_available).max(0);
            for rs in old.iter_mut() {
                if to_remove == 0 {
                    break;
                }
                let down = spec_replicas(rs).min(to_remove);
                if down > 0 {
                    *rs = scale(&ctx, &sets, rs, spec_replicas(rs) - down, &reference).await?;
                    to_remove -= down;
                    changed = true;
                }
            }
        }
        old_after = old;
    }

    cleanup_history(&sets, &old_after, spec.revision_history_limit.unwrap_or(10)).await?;
    let all: Vec<ReplicaSet> = old_after
        .iter()
        .cloned()
        .chain(std::iter::once(new_rs.clone()))
        .collect();
    update_status(&ctx, &d, &all, Some(&new_rs)).await?;
    if changed {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    // Progress depends on pods becoming available, which the ReplicaSet watch reports;
    // the periodic requeue checks the progress deadline.
    Ok(Action::requeue(Duration::from_secs(10)))
}

async fn create_new_rs(
    ctx: &Context,
    d: &Deployment,
    sets: &Api<ReplicaSet>,
    revision: i64,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
) -> Result<ReplicaSet, Error> {
    let spec = d.spec.clone().unwrap_or_default();
    let hash = template_hash(&spec.template);
    let mut template = spec.template.clone();
    let meta = template.metadata.get_or_insert_with(Default::default);
    meta.labels
        .get_or_insert_with(Default::default)
        .insert(HASH_LABEL.into(), hash.clone());
    let mut selector: SelectorSpec = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(Default::default)
        .insert(HASH_LABEL.into(), hash.clone());
    let replicas = spec.replicas.unwrap_or(1);
    let surge = resolve(
        spec.strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref())
            .and_then(|r| r.max_surge.as_ref()),
        replicas,
        true,
        "25%",
    );
    let mut annotations: BTreeMap<String, String> = d
        .annotations()
        .iter()
        .filter(|(k, _)| !k.starts_with("kubectl.kubernetes.io/last-applied"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    annotations.insert(REVISION.into(), revision.to_string());
    annotations.insert(DESIRED.into(), replicas.to_string());
    annotations.insert(MAX_REPLICAS.into(), (replicas + surge).to_string());
    let rs = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{}-{hash}", d.name_any())),
            namespace: d.namespace(),
            labels: meta.labels.clone(),
            annotations: Some(annotations),
            owner_references: Some(vec![super::controller_ref(d)]),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::apps::v1::ReplicaSetSpec {
            replicas: Some(0),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    };
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    match sets.create(&params, &rs).await {
        Ok(created) => {
            ctx.recorder
                .record(
                    reference,
                    EventType::Normal,
                    "ScalingReplicaSet",
                    &format!("Created new replica set {:?}", created.name_any()),
                )
                .await;
            Ok(created)
        }
        // Created by an earlier reconcile whose answer we lost: use it.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(sets.get(&rs.name_any()).await?),
        Err(e) => Err(e.into()),
    }
}

async fn scale(
    ctx: &Context,
    sets: &Api<ReplicaSet>,
    rs: &ReplicaSet,
    to: i32,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
) -> Result<ReplicaSet, Error> {
    let from = spec_replicas(rs);
    let patch = json!({"spec": {"replicas": to}});
    let scaled = sets
        .patch(
            &rs.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    let verb = if to > from { "up" } else { "down" };
    ctx.recorder
        .record(
            reference,
            EventType::Normal,
            "ScalingReplicaSet",
            &format!(
                "Scaled {verb} replica set {} from {from} to {to}",
                rs.name_any()
            ),
        )
        .await;
    Ok(scaled)
}

/// Deletes empty old ReplicaSets beyond the history limit, oldest first.
async fn cleanup_history(
    sets: &Api<ReplicaSet>,
    old: &[ReplicaSet],
    limit: i32,
) -> Result<(), Error> {
    let empty: Vec<&ReplicaSet> = old
        .iter()
        .filter(|rs| {
            spec_replicas(rs) == 0 && rs.status.as_ref().map(|s| s.replicas).unwrap_or(0) == 0
        })
        .collect();
    let excess = empty.len().saturating_sub(limit.max(0) as usize);
    for rs in empty.into_iter().take(excess) {
        match sets.delete(&rs.name_any(), &DeleteParams::default()).await {
            Ok(_) => {
                tracing::info!(replicaset = %rs.name_any(), "deleted old replica set beyond history limit")
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: &str,
    old: Option<&Value>,
) -> Value {
    // lastTransitionTime only moves when the status does.
    let transition = old
        .filter(|c| c["status"] == status)
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(now));
    let update = old
        .filter(|c| c["status"] == status && c["reason"] == reason)
        .and_then(|c| c.get("lastUpdateTime").cloned())
        .unwrap_or_else(|| json!(now));
    json!({
        "type": type_, "status": status, "reason": reason, "message": message,
        "lastTransitionTime": transition, "lastUpdateTime": update,
    })
}

async fn update_status(
    ctx: &Context,
    d: &Deployment,
    all: &[ReplicaSet],
    new_rs: Option<&ReplicaSet>,
) -> Result<(), Error> {
    let spec = d.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1);
    let st = |rs: &ReplicaSet| rs.status.clone().unwrap_or_default();
    let total: i32 = all.iter().map(|rs| st(rs).replicas).sum();
    let ready: i32 = all
        .iter()
        .map(|rs| st(rs).ready_replicas.unwrap_or(0))
        .sum();
    let avail: i32 = all.iter().map(available).sum();
    let updated = new_rs.map(|rs| st(rs).replicas).unwrap_or(0);
    let max_unavailable = resolve(
        spec.strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref())
            .and_then(|r| r.max_unavailable.as_ref()),
        replicas,
        false,
        "25%",
    );
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let old_status = serde_json::to_value(&d.status).unwrap_or_default();
    let old_cond = |t: &str| {
        old_status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == t))
            .cloned()
    };
    let available_cond = if avail >= replicas - max_unavailable {
        condition(
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
            &now,
            old_cond("Available").as_ref(),
        )
    } else {
        condition(
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
            &now,
            old_cond("Available").as_ref(),
        )
    };
    let new_name = new_rs.map(|rs| rs.name_any()).unwrap_or_default();
    let complete = updated == replicas && total == replicas && avail >= replicas;
    let old_progress = old_cond("Progressing");
    let deadline = spec.progress_deadline_seconds.unwrap_or(600) as i64;
    let stalled = !complete
        && old_progress
            .as_ref()
            .filter(|c| c["status"] == "True")
            .and_then(|c| c["lastUpdateTime"].as_str())
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .is_some_and(|t| {
                (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds() > deadline
            });
    let progressing = if spec.paused.unwrap_or(false) {
        condition(
            "Progressing",
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused",
            &now,
            old_progress.as_ref(),
        )
    } else if complete {
        condition(
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            &format!("ReplicaSet {new_name:?} has successfully progressed."),
            &now,
            old_progress.as_ref(),
        )
    } else if stalled
        || old_progress
            .as_ref()
            .is_some_and(|c| c["reason"] == "ProgressDeadlineExceeded")
    {
        condition(
            "Progressing",
            "False",
            "ProgressDeadlineExceeded",
            &format!("ReplicaSet {new_name:?} has timed out progressing."),
            &now,
            old_progress.as_ref(),
        )
    } else {
        // Progress made (or a rollout started): the deadline counts from now.
        let progressed = old_status["updatedReplicas"].as_i64() != Some(updated as i64)
            || old_status["availableReplicas"].as_i64() != Some(avail as i64);
        let prev = if progressed {
            None
        } else {
            old_progress.as_ref()
        };
        condition(
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            &format!("ReplicaSet {new_name:?} is progressing."),
            &now,
            prev,
        )
    };
    let status = json!({
        "observedGeneration": d.metadata.generation,
        "replicas": total,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": avail,
        "unavailableReplicas": (total.max(replicas) - avail).max(0),
        "conditions": [available_cond, progressing],
    });
    let strip_times = |v: &Value| {
        let mut v = v.clone();
        if let Some(cs) = v["conditions"].as_array_mut() {
            for c in cs {
                if let Some(m) = c.as_object_mut() {
                    m.remove("lastUpdateTime");
                    m.remove("lastTransitionTime");
                }
            }
        }
        v
    };
    let mut comparable_old = old_status.clone();
    if let Some(m) = comparable_old.as_object_mut() {
        m.retain(|k, _| status.get(k).is_some());
    }
    if strip_times(&comparable_old) == strip_times(&status) {
        return Ok(());
    }
    let api: Api<Deployment> =
        Api::namespaced(ctx.client.clone(), &d.namespace().unwrap_or_default());
    api.patch_status(
        &d.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": status})),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_like_kubernetes() {
        let pct = |s: &str| IntOrString::String(s.into());
        assert_eq!(resolve(Some(&pct("25%")), 10, true, "25%"), 3);
        assert_eq!(resolve(Some(&pct("25%")), 10, false, "25%"), 2);
        assert_eq!(resolve(Some(&IntOrString::Int(2)), 10, true, "25%"), 2);
        assert_eq!(resolve(None, 4, true, "25%"), 1);
        assert_eq!(resolve(None, 3, false, "25%"), 0);
    }

    #[test]
    fn template_hash_is_stable_and_ignores_its_own_label() {
        let t: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "i:1"}]}
        }))
        .unwrap();
        let h = template_hash(&t);
        assert_eq!(h, template_hash(&t));
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        let mut labelled = t.clone();
        labelled
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(HASH_LABEL.into(), h.clone());
        assert_eq!(without_hash(&labelled), t);
        let mut changed = t.clone();
        changed.spec.as_mut().unwrap().containers[0].image = Some("i:2".into());
        assert_ne!(template_hash(&changed), h);
    }
}
