//! The ReplicaSet controller: keeps `spec.replicas` pods that match a ReplicaSet's
//! selector running, owned by it through a controller ownerReference.
//!
//! Each reconcile reads the pods the selector matches (a consistent list from the API,
//! so a burst of creates is never counted twice), adopts matching orphans, releases
//! owned pods that no longer match, creates what is missing in growing batches (1, 2,
//! 4, … as upstream's slow start, so a broken template fails fast), deletes the least
//! useful surplus first (unscheduled, then not ready, then newest), and writes status.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::events::{EventType, Recorder};
use crate::registry::selectors::LabelSelector;

/// What can go wrong in one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("api call failed: {0}")]
    Api(#[from] kube::Error),
    /// The ReplicaSet's selector cannot be used.
    #[error("invalid selector: {0}")]
    Selector(String),
}

/// The field manager and event source of this controller.
const MANAGER: &str = "replicaset-controller";
/// The largest batch of pod creates issued at once.
const MAX_BATCH: usize = 500;

struct Context {
    client: kube::Client,
    recorder: Recorder,
}

/// Runs the controller until the watch streams end.
pub async fn run(client: kube::Client) {
    let sets: Api<ReplicaSet> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), MANAGER),
        client,
    });
    Controller::new(sets, watcher::Config::default())
        .owns(pods, watcher::Config::default())
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "replicaset reconcile failed");
            }
        })
        .await;
}

fn error_policy(rs: Arc<ReplicaSet>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(
        namespace = rs.namespace().as_deref().unwrap_or(""),
        replicaset = %rs.name_any(),
        error = %err,
        "reconciling replicaset failed; retrying"
    );
    Action::requeue(Duration::from_secs(2))
}

/// The controller ownerReference of `pod`, if any.
fn controller_of(pod: &Pod) -> Option<&OwnerReference> {
    pod.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

fn is_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded") | Some("Failed")
        )
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Orders pods from least to most useful, as upstream deletes them: unscheduled before
/// scheduled, pending before running, not ready before ready, newer before older.
pub(crate) fn deletion_order(pods: &mut [Pod]) {
    pods.sort_by_key(|p| {
        let scheduled = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty());
        let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let created = p
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or(0);
        (scheduled, running, is_ready(p), std::cmp::Reverse(created))
    });
}

fn owner_reference(rs: &ReplicaSet) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        name: rs.name_any(),
        uid: rs.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A new pod from the ReplicaSet's template.
fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", rs.name_any())),
            namespace: rs.namespace(),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner_reference(rs)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    if rs.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = rs.namespace().unwrap_or_default();
    let name = rs.name_any();
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let spec = rs.spec.clone().unwrap_or_default();
    let selector_json = serde_json::to_value(&spec.selector).unwrap_or_default();
    let selector =
        LabelSelector::try_from_label_selector_json(&selector_json).map_err(Error::Selector)?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    // One consistent read of the namespace's pods: those the selector matches are ours
    // or orphans to adopt; ours that it no longer matches are released.
    let all = pods.list(&ListParams::default()).await?.items;
    let (matching, unmatched): (Vec<Pod>, Vec<Pod>) = all.into_iter().partition(|p| {
        let labels = serde_json::to_value(&p.metadata.labels).unwrap_or_default();
        selector.matches(labels.as_object().unwrap_or(&serde_json::Map::new()))
    });

    // Adopt matching orphans; everything that matches and names us is ours.
    let mut owned: Vec<Pod> = Vec::new();
    for pod in matching {
        match controller_of(&pod) {
            Some(r) if r.uid == uid => owned.push(pod),
            Some(_) => {}
            None if pod.metadata.deletion_timestamp.is_none() => {
                let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
                refs.push(owner_reference(&rs));
                let patch = json!({"metadata": {
                    "ownerReferences": refs,
                    "resourceVersion": pod.metadata.resource_version,
                }});
                match pods
                    .patch(
                        &pod.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                {
                    Ok(adopted) => owned.push(adopted),
                    // Someone else changed it first; the next reconcile sees the result.
                    Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            None => {}
        }
    }
    release_unmatched(&pods, &uid, unmatched).await?;

    let active: Vec<Pod> = owned.iter().filter(|p| is_active(p)).cloned().collect();
    let want = spec.replicas.unwrap_or(1).max(0) as usize;
    let reference = rs.object_ref(&());
    let mut current = active.len();
    if current < want {
        current += create_pods(&ctx, &rs, &pods, want - current, &reference).await;
    } else if current > want {
        let mut surplus = active.clone();
        deletion_order(&mut surplus);
        for pod in surplus.into_iter().take(current - want) {
            let pod_name = pod.name_any();
            match pods.delete(&pod_name, &DeleteParams::default()).await {
                Ok(_) => {
                    current -= 1;
                    ctx.recorder
                        .record(
                            &reference,
                            EventType::Normal,
                            "SuccessfulDelete",
                            &format!("Deleted pod: {pod_name}"),
                        )
                        .await;
                }
                Err(kube::Error::Api(e)) if e.code == 404 => current -= 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    let ready = active.iter().filter(|p| is_ready(p)).count() as i32;
    let labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let fully_labeled = active
        .iter()
        .filter(|p| {
            let have = p.metadata.labels.clone().unwrap_or_default();
            labels.iter().all(|(k, v)| have.get(k) == Some(v))
        })
        .count() as i32;
    let status = ReplicaSetStatus {
        replicas: current as i32,
        fully_labeled_replicas: Some(fully_labeled),
        ready_replicas: Some(ready),
        available_replicas: Some(ready),
        observed_generation: rs.metadata.generation,
        conditions: None,
        terminating_replicas: None,
    };
    let old = rs.status.clone().unwrap_or_default();
    if old.replicas != status.replicas
        || old.ready_replicas.unwrap_or(0) != ready
        || old.available_replicas.unwrap_or(0) != ready
        || old.fully_labeled_replicas.unwrap_or(0) != fully_labeled
        || old.observed_generation != status.observed_generation
    {
        let sets: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"status": status});
        sets.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    if current != want {
        // Creates or deletes failed part-way: try again soon.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    Ok(Action::await_change())
}

/// Removes our controller reference from pods that no longer match the selector
/// (someone relabelled them), so they leave the set instead of being counted.
async fn release_unmatched(pods: &Api<Pod>, uid: &str, unmatched: Vec<Pod>) -> Result<(), Error> {
    for pod in unmatched {
        if controller_of(&pod).is_none_or(|r| r.uid != uid) {
            continue;
        }
        let refs: Vec<&OwnerReference> = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .filter(|r| r.uid != uid)
            .collect();
        let patch = json!({"metadata": {
            "ownerReferences": refs,
            "resourceVersion": pod.metadata.resource_version,
        }});
        match pods
            .patch(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => tracing::info!(pod = %pod.name_any(), "released pod that no longer matches"),
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Creates up to `missing` pods in batches of 1, 2, 4, …; stops at the first batch with
/// a failure (as upstream's slow start). Returns how many were created.
async fn create_pods(
    ctx: &Context,
    rs: &ReplicaSet,
    pods: &Api<Pod>,
    missing: usize,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
) -> usize {
    let template = pod_from_template(rs);
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    let mut created = 0;
    let mut batch = 1;
    while created < missing {
        let n = batch.min(missing - created);
        let results =
            futures::future::join_all((0..n).map(|_| pods.create(&params, &template))).await;
        let mut failed = None;
        for r in results {
            match r {
                Ok(pod) => {
                    created += 1;
                    ctx.recorder
                        .record(
                            reference,
                            EventType::Normal,
                            "SuccessfulCreate",
                            &format!("Created pod: {}", pod.name_any()),
                        )
                        .await;
                }
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            ctx.recorder
                .record(
                    reference,
                    EventType::Warning,
                    "FailedCreate",
                    &format!("Error creating: {e}"),
                )
                .await;
            break;
        }
        batch = (batch * 2).min(MAX_BATCH);
    }
    created
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn pod(name: &str, node: Option<&str>, ready: bool, created: i64) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(Time(
                    k8s_openapi::jiff::Timestamp::from_second(created).unwrap(),
                )),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(String::from),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(if node.is_some() { "Running" } else { "Pending" }.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn least_useful_pods_go_first() {
        let mut pods = vec![
            pod("ready-old", Some("n1"), true, 100),
            pod("ready-new", Some("n1"), true, 200),
            pod("unready", Some("n1"), false, 50),
            pod("unscheduled", None, false, 10),
        ];
        deletion_order(&mut pods);
        let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
        assert_eq!(
            names,
            vec!["unscheduled", "unready", "ready-new", "ready-old"]
        );
    }

    #[test]
    fn pods_from_the_template_are_owned() {
        let rs: ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "ns", "uid": "u1"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "i"}]}}}
        }))
        .unwrap();
        let p = pod_from_template(&rs);
        assert_eq!(p.metadata.generate_name.as_deref(), Some("web-1-"));
        assert_eq!(p.metadata.labels.unwrap()["app"], "web");
        let r = &p.metadata.owner_references.unwrap()[0];
        assert_eq!((r.uid.as_str(), r.controller), ("u1", Some(true)));
    }
}
