//! The DaemonSet controller: one pod of a DaemonSet on every eligible node — on edge
//! fleets this is how an agent reaches every device.
//!
//! A node is eligible when it matches the template's `nodeSelector` and required node
//! affinity and the pod (with the tolerations upstream adds to every daemon pod)
//! tolerates its NoSchedule/NoExecute taints; the matching is the scheduler's own
//! (`scheduler::filter`). As upstream since 1.12, a daemon pod is created unbound with
//! a required node affinity `metadata.name In [node]`, and the scheduler binds it.
//!
//! Each reconcile reads the nodes and the namespace's pods once and computes a [`Plan`]
//! from that snapshot, as kube-controller-manager's `manage` + `rollingUpdate` do:
//! create where a pod is missing, delete from nodes that stopped being eligible (or
//! went away), delete failed pods and duplicates, and — for RollingUpdate — replace pods
//! of an old template within maxUnavailable/maxSurge. Status carries the counters
//! `kubectl rollout status ds/X` reads.
//!
//! Every template the DaemonSet has had is recorded as a ControllerRevision
//! ([`super::history`]); a pod's `controller-revision-hash` label names the revision it
//! was made from, which is how old pods are told from updated ones, and what
//! `kubectl rollout history/undo ds/X` work from.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodTemplateSpec, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::deployment::{resolve, template_hash};
use super::events::{EventType, Recorder};
use super::history::{self, Current, HASH_LABEL};
use super::shared_watch::SharedWatch;
use crate::registry::selectors::LabelSelector;
use crate::scheduler::filter;

/// What can go wrong in one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("api call failed: {0}")]
    Api(#[from] kube::Error),
    /// The DaemonSet's selector cannot be used.
    #[error("invalid selector: {0}")]
    Selector(String),
    /// The revision for the current template cannot be written: an object of its name
    /// records another template or belongs to another owner.
    #[error("controller revision {0} exists and is not this daemonset's record of its template")]
    RevisionTaken(String),
}

/// The field manager and event source of this controller.
const MANAGER: &str = "daemonset-controller";
/// The label holding the DaemonSet's template generation at the pod's creation.
const GENERATION_LABEL: &str = "pod-template-generation";
/// The annotation the apps/v1 API keeps the template generation in.
const TEMPLATE_GENERATION: &str = "deprecated.daemonset.template.generation";

struct Context {
    client: kube::Client,
    recorder: Recorder,
}

/// Runs the controller until the watch streams end.
pub async fn run(client: kube::Client, pods: SharedWatch<Pod>) {
    let sets: Api<DaemonSet> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let revisions: Api<ControllerRevision> = Api::all(client.clone());
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), MANAGER),
        client,
    });
    let controller = Controller::new(sets, watcher::Config::default());
    let store = controller.store();
    controller
        .owns_stream(pods.touched())
        .owns(revisions, watcher::Config::default())
        // Any node change can change where every DaemonSet should run.
        .watches(nodes, watcher::Config::default(), move |_node: Node| {
            store
                .state()
                .iter()
                .map(|ds| ObjectRef::from_obj(ds.as_ref()))
                .collect::<Vec<_>>()
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "daemonset reconcile failed");
            }
        })
        .await;
}

fn error_policy(ds: Arc<DaemonSet>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(
        namespace = ds.namespace().as_deref().unwrap_or(""),
        daemonset = %ds.name_any(),
        error = %err,
        "reconciling daemonset failed; retrying"
    );
    Action::requeue(Duration::from_secs(2))
}

fn toleration(key: &str, effect: &str) -> Toleration {
    Toleration {
        key: Some(key.to_string()),
        operator: Some("Exists".to_string()),
        effect: Some(effect.to_string()),
        ..Default::default()
    }
}

/// The template with the tolerations upstream gives every daemon pod
/// (`AddOrUpdateDaemonPodTolerations`): daemons keep running on not-ready and
/// unreachable nodes and are placed on nodes under pressure or cordoned;
/// network-unavailable only for host-network pods, which do not need the pod network.
pub(crate) fn with_daemon_tolerations(template: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = template.clone();
    let spec = t.spec.get_or_insert_with(Default::default);
    let mut wanted = vec![
        toleration("node.kubernetes.io/not-ready", "NoExecute"),
        toleration("node.kubernetes.io/unreachable", "NoExecute"),
        toleration("node.kubernetes.io/disk-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/memory-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/pid-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        wanted.push(toleration(
            "node.kubernetes.io/network-unavailable",
            "NoSchedule",
        ));
    }
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for w in wanted {
        // A user's toleration for the same key and effect wins, as upstream's
        // AddOrUpdateTolerationInPodSpec keeps an equal one.
        if !tolerations
            .iter()
            .any(|t| t.key == w.key && t.effect == w.effect)
        {
            tolerations.push(w);
        }
    }
    t
}

/// Whether a daemon pod should run on `node` (create one if missing) and whether an
/// existing one may continue running there — upstream's `NodeShouldRunDaemonPod`. A
/// NoSchedule taint added after the fact keeps the pod; only NoExecute evicts it.
/// `template` must already carry the daemon tolerations.
pub(crate) fn should_run(node: &Node, template: &PodTemplateSpec) -> (bool, bool) {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let spec = template.spec.clone().unwrap_or_default();
    if spec
        .node_name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && n != name)
    {
        return (false, false);
    }
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let selector = spec.node_selector.clone().unwrap_or_default();
    let affinity = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    if !filter::selector_matches(&selector, &labels)
        || !affinity.is_none_or(|a| filter::node_selector_matches(a, name, &labels))
    {
        return (false, false);
    }
    let tolerations = spec.tolerations.unwrap_or_default();
    let taints: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let hard: Vec<Taint> = taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .cloned()
        .collect();
    if filter::first_untolerated_taint(&hard, &tolerations).is_none() {
        return (true, true);
    }
    let no_execute: Vec<Taint> = taints
        .into_iter()
        .filter(|t| t.effect == "NoExecute")
        .collect();
    (
        false,
        filter::first_untolerated_taint(&no_execute, &tolerations).is_none(),
    )
}

/// The node a daemon pod is for: `spec.nodeName` once bound, else the single
/// `metadata.name In [node]` of its required node affinity (upstream's
/// `GetTargetNodeName`).
pub(crate) fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        return Some(n.to_string());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms.iter().find_map(|t| {
        t.match_fields.as_ref()?.iter().find_map(|r| {
            match (r.key.as_str(), r.operator.as_str(), r.values.as_deref()) {
                ("metadata.name", "In", Some([node])) => Some(node.clone()),
                _ => None,
            }
        })
    })
}

/// Replaces the required node affinity with `metadata.name In [node]` (upstream's
/// `ReplaceDaemonSetPodNodeNameNodeAffinity`): the controller has already checked the
/// template's own terms against this node.
fn pin_to_node(affinity: Option<Affinity>, node: &str) -> Affinity {
    let mut affinity = affinity.unwrap_or_default();
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    node_affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".to_string(),
                operator: "In".to_string(),
                values: Some(vec![node.to_string()]),
            }]),
        }],
    });
    affinity
}

/// The DaemonSet's template generation (the label value of its pods).
fn template_generation(ds: &DaemonSet) -> String {
    ds.annotations()
        .get(TEMPLATE_GENERATION)
        .cloned()
        .unwrap_or_else(|| ds.metadata.generation.unwrap_or(1).to_string())
}

/// A new daemon pod for `node`, from `template` (which carries the daemon tolerations).
fn pod_for_node(ds: &DaemonSet, template: &PodTemplateSpec, hash: &str, node: &str) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(HASH_LABEL.to_string(), hash.to_string());
    labels.insert(GENERATION_LABEL.to_string(), template_generation(ds));
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.affinity = Some(pin_to_node(spec.affinity.take(), node));
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", ds.name_any())),
            namespace: ds.namespace(),
            labels: Some(labels),
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![super::controller_ref(ds)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// When the pod turned Ready, if it is.
fn ready_since(pod: &Pod) -> Option<Option<Timestamp>> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| c.last_transition_time.as_ref().map(|t| t.0))
}

/// Ready for at least `min_ready` seconds (upstream's `IsPodAvailable`).
fn is_available(pod: &Pod, min_ready: i64, now: Timestamp) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready <= 0 => true,
        Some(None) => false,
        Some(Some(since)) => since.as_second() + min_ready <= now.as_second(),
    }
}

fn is_updated(pod: &Pod, hash: &str) -> bool {
    pod.labels().get(HASH_LABEL).map(String::as_str) == Some(hash)
}

/// Oldest first, bound before unbound (upstream's `podByCreationTimestampAndPhase`).
fn oldest_first(pods: &mut [&Pod]) {
    pods.sort_by_key(|p| {
        let unbound = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_none_or(str::is_empty);
        let created = p
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or(0);
        (unbound, created, p.metadata.name.clone())
    });
}

/// Where the DaemonSet should and may run, per node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeFit {
    pub name: String,
    pub should_run: bool,
    pub should_continue: bool,
}

/// The update strategy, resolved against the desired number of pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Update {
    OnDelete,
    Rolling {
        max_surge: i32,
        max_unavailable: i32,
    },
}

/// What one reconcile does: create a pod on each of `create_on`, delete `delete`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub create_on: Vec<String>,
    pub delete: Vec<String>,
}

impl Plan {
    fn delete(&mut self, pod: &Pod) {
        let name = pod.name_any();
        if !self.delete.contains(&name) {
            self.delete.push(name);
        }
    }
}

/// The DaemonSet's pods grouped by the node they are for (`""`: none).
fn by_node(pods: &[Pod]) -> BTreeMap<String, Vec<&Pod>> {
    let mut out: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for p in pods {
        out.entry(target_node(p).unwrap_or_default())
            .or_default()
            .push(p);
    }
    out
}

/// Computes the creates and deletes for one snapshot: upstream's `manage`
/// (`podsShouldBeOnNode`) followed by `rollingUpdate`.
pub(crate) fn plan(
    nodes: &[NodeFit],
    pods: &[Pod],
    hash: &str,
    update: Update,
    min_ready: i64,
    now: Timestamp,
) -> Plan {
    let mut plan = Plan::default();
    let mut grouped = by_node(pods);
    let surge = matches!(update, Update::Rolling { max_surge, .. } if max_surge > 0);
    for node in nodes {
        let on_node = grouped.remove(&node.name).unwrap_or_default();
        if node.should_run && on_node.is_empty() {
            plan.create_on.push(node.name.clone());
        } else if node.should_continue {
            let mut running: Vec<&Pod> = Vec::new();
            for p in on_node.iter().copied().filter(|p| !terminating(p)) {
                // A failed (or finished) daemon is deleted; the next pass recreates it.
                if matches!(phase(p), "Failed" | "Succeeded") {
                    plan.delete(p);
                } else {
                    running.push(p);
                }
            }
            oldest_first(&mut running);
            if !surge {
                for p in running.iter().skip(1) {
                    plan.delete(p);
                }
                continue;
            }
            // With surge, an old and a new pod coexist only while the old one is
            // ready and the new one not yet available; everything else goes.
            let mut oldest_new = None;
            let mut oldest_old = None;
            for p in running {
                let slot = if is_updated(p, hash) {
                    &mut oldest_new
                } else {
                    &mut oldest_old
                };
                if slot.is_none() {
                    *slot = Some(p);
                } else {
                    plan.delete(p);
                }
            }
            if let (Some(new), Some(old)) = (oldest_new, oldest_old) {
                if !is_ready(old) || is_available(new, min_ready, now) {
                    plan.delete(old);
                }
            }
        } else {
            for p in on_node.into_iter().filter(|p| !terminating(p)) {
                plan.delete(p);
            }
        }
    }
    // Pods for nodes that are gone (or that name no node at all).
    for p in grouped.into_values().flatten().filter(|p| !terminating(p)) {
        plan.delete(p);
    }
    // As upstream (whose expectations skip the rolling update until the manage pass's
    // writes are observed), replace nothing while the manage pass changes something: a
    // node whose pod is being recreated is not yet counted as unavailable.
    if !plan.create_on.is_empty() || !plan.delete.is_empty() {
        return plan;
    }
    if let Update::Rolling {
        max_surge,
        max_unavailable,
    } = update
    {
        rolling_update(
            &mut plan,
            nodes,
            pods,
            hash,
            (max_surge, max_unavailable),
            min_ready,
            now,
        );
    }
    plan
}

/// The new and the old pod on a node, ignoring terminating ones; `None` when there are
/// several of either (the manage pass cleans those up first).
fn updated_and_old<'a>(pods: &[&'a Pod], hash: &str) -> Option<(Option<&'a Pod>, Option<&'a Pod>)> {
    let (mut new, mut old) = (None, None);
    for p in pods.iter().copied().filter(|p| !terminating(p)) {
        let slot = if is_updated(p, hash) {
            &mut new
        } else {
            &mut old
        };
        if slot.is_some() {
            return None;
        }
        *slot = Some(p);
    }
    Some((new, old))
}

/// Upstream's `rollingUpdate`. Without surge: old pods are deleted (the manage pass then
/// creates their replacements) while fewer than maxUnavailable nodes are unavailable,
/// old pods that are unavailable anyway first and for free. With surge: new pods are
/// created next to available old ones, at most maxSurge at a time, and the old pod goes
/// once its replacement is available.
fn rolling_update(
    plan: &mut Plan,
    nodes: &[NodeFit],
    pods: &[Pod],
    hash: &str,
    (max_surge, max_unavailable): (i32, i32),
    min_ready: i64,
    now: Timestamp,
) {
    let grouped = by_node(pods);
    let eligible = nodes
        .iter()
        .filter(|n| n.should_continue)
        .filter_map(|n| Some((n.name.as_str(), grouped.get(&n.name)?)));
    if max_surge == 0 {
        let mut unavailable = 0;
        let mut replace_now: Vec<&Pod> = Vec::new();
        let mut candidates: Vec<&Pod> = Vec::new();
        for (_, on_node) in eligible {
            match updated_and_old(on_node, hash) {
                None | Some((None, None)) | Some((Some(_), Some(_))) => unavailable += 1,
                Some((Some(new), None)) => {
                    if !is_available(new, min_ready, now) {
                        unavailable += 1;
                    }
                }
                Some((None, Some(old))) => {
                    if !is_available(old, min_ready, now) {
                        replace_now.push(old);
                    } else if unavailable < max_unavailable {
                        candidates.push(old);
                    }
                }
            }
        }
        let room = (max_unavailable - unavailable).max(0) as usize;
        for p in replace_now
            .into_iter()
            .chain(candidates.into_iter().take(room))
        {
            plan.delete(p);
        }
        return;
    }
    let mut surged = 0;
    let mut replace_now: Vec<&str> = Vec::new();
    let mut candidates: Vec<&str> = Vec::new();
    for (node, on_node) in eligible {
        match updated_and_old(on_node, hash) {
            None => surged += 1,
            Some((_, None)) => {}
            Some((None, Some(old))) => {
                if !is_available(old, min_ready, now) {
                    replace_now.push(node);
                } else if surged < max_surge {
                    candidates.push(node);
                }
            }
            Some((Some(new), Some(old))) => {
                if is_available(new, min_ready, now) {
                    plan.delete(old);
                } else {
                    surged += 1;
                }
            }
        }
    }
    let room = (max_surge - surged).max(0) as usize;
    for node in replace_now
        .into_iter()
        .chain(candidates.into_iter().take(room))
    {
        if !plan.create_on.iter().any(|n| n == node) {
            plan.create_on.push(node.to_string());
        }
    }
}

/// The status counters, as upstream's `updateDaemonSetStatus` counts them: per node
/// that should run a pod, the oldest of its pods decides ready/available/updated.
pub(crate) fn counts(
    nodes: &[NodeFit],
    pods: &[Pod],
    hash: &str,
    min_ready: i64,
    now: Timestamp,
) -> DaemonSetStatus {
    // Pods that are both deleted and finished no longer count anywhere.
    let live: Vec<Pod> = pods
        .iter()
        .filter(|p| !(terminating(p) && matches!(phase(p), "Failed" | "Succeeded")))
        .cloned()
        .collect();
    let grouped = by_node(&live);
    let mut s = DaemonSetStatus::default();
    let (mut available, mut updated) = (0, 0);
    for node in nodes {
        let mut on_node = grouped.get(&node.name).cloned().unwrap_or_default();
        if !node.should_run {
            if !on_node.is_empty() {
                s.number_misscheduled += 1;
            }
            continue;
        }
        s.desired_number_scheduled += 1;
        oldest_first(&mut on_node);
        let Some(pod) = on_node.first() else {
            continue;
        };
        s.current_number_scheduled += 1;
        if is_ready(pod) {
            s.number_ready += 1;
            if is_available(pod, min_ready, now) {
                available += 1;
            }
        }
        if is_updated(pod, hash) {
            updated += 1;
        }
    }
    s.number_available = Some(available);
    s.number_unavailable = Some(s.desired_number_scheduled - available);
    s.updated_number_scheduled = Some(updated);
    s
}

/// The update strategy of `ds` resolved against `desired` pods (percentages round up;
/// both zero means one unavailable, as upstream's `updatedDesiredNodeCounts`).
fn update_of(ds: &DaemonSet, desired: i32) -> Update {
    let strategy = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.clone())
        .unwrap_or_default();
    if strategy.type_.as_deref() == Some("OnDelete") {
        return Update::OnDelete;
    }
    let ru = strategy.rolling_update.unwrap_or_default();
    let max_surge = resolve(ru.max_surge.as_ref(), desired, true, "0").max(0);
    let mut max_unavailable = resolve(ru.max_unavailable.as_ref(), desired, true, "1").max(0);
    if max_surge == 0 && max_unavailable == 0 {
        max_unavailable = 1;
    }
    Update::Rolling {
        max_surge,
        max_unavailable,
    }
}

/// Makes sure a ControllerRevision records `template` and is the newest; returns the
/// revision's hash (the pods' label), its name, and every revision the DaemonSet owns
/// (orphans its selector matches are adopted, as upstream's ControllerRefManager does).
async fn current_revision(
    ds: &DaemonSet,
    template: &PodTemplateSpec,
    selector: &LabelSelector,
    api: &Api<ControllerRevision>,
) -> Result<(String, String, Vec<ControllerRevision>), Error> {
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let mut owned = Vec::new();
    for mut r in api.list(&ListParams::default()).await?.items {
        let controller = r
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone());
        match controller {
            Some(owner) if owner == uid => owned.push(r),
            Some(_) => {}
            None if r.metadata.deletion_timestamp.is_none()
                && labels_match(selector, r.labels()) =>
            {
                let mut refs = r.owner_references().to_vec();
                refs.push(super::controller_ref(ds));
                let patch = json!({"metadata": {
                    "ownerReferences": refs,
                    "resourceVersion": r.metadata.resource_version,
                }});
                r = api
                    .patch(
                        &r.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await?;
                tracing::info!(namespace = ds.namespace().as_deref().unwrap_or(""), daemonset = %ds.name_any(), revision = %r.name_any(), "adopted controller revision");
                owned.push(r);
            }
            None => {}
        }
    }
    let data = history::template_patch(template);
    let (name, hash, renumber) = match history::current(&owned, &data) {
        Current::Existing {
            name,
            hash,
            renumber,
        } => (
            name,
            hash.unwrap_or_else(|| template_hash(template)),
            renumber,
        ),
        Current::New { revision } => {
            let hash = template_hash(template);
            let name = history::revision_name(&ds.name_any(), &hash);
            let record = ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: ds.namespace(),
                    labels: Some(history::revision_labels(template, &hash)),
                    annotations: ds.metadata.annotations.clone(),
                    owner_references: Some(vec![super::controller_ref(ds)]),
                    ..Default::default()
                },
                data: Some(RawExtension(data.clone())),
                revision,
            };
            let params = PostParams {
                field_manager: Some(MANAGER.into()),
                ..Default::default()
            };
            match api.create(&params, &record).await {
                Ok(created) => {
                    tracing::info!(namespace = ds.namespace().as_deref().unwrap_or(""), daemonset = %ds.name_any(), revision = %name, number = revision, "recorded controller revision");
                    owned.push(created);
                    return Ok((hash, name, owned));
                }
                // Ours already, written after the list was taken.
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    let existing = api.get(&name).await?;
                    let ours = existing
                        .owner_references()
                        .iter()
                        .any(|o| o.controller == Some(true) && o.uid == uid);
                    if !ours || existing.data.as_ref().map(|d| &d.0) != Some(&data) {
                        return Err(Error::RevisionTaken(name));
                    }
                    owned.retain(|r| r.metadata.name.as_deref() != Some(name.as_str()));
                    let newest = owned.iter().map(|r| r.revision).max().unwrap_or(0);
                    let renumber = (existing.revision <= newest).then_some(newest + 1);
                    owned.push(existing);
                    (name, hash, renumber)
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    if let Some(revision) = renumber {
        let patch = json!({"revision": revision});
        let renumbered = api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        tracing::info!(namespace = ds.namespace().as_deref().unwrap_or(""), daemonset = %ds.name_any(), revision = %name, number = revision, "controller revision is current again");
        for r in owned.iter_mut() {
            if r.metadata.name.as_deref() == Some(name.as_str()) {
                *r = renumbered.clone();
            }
        }
    }
    Ok((hash, name, owned))
}

fn labels_match(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    selector.matches_with(|k| labels.get(k).cloned())
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let spec = ds.spec.clone().unwrap_or_default();
    let selector_json = serde_json::to_value(&spec.selector).unwrap_or_default();
    let selector =
        LabelSelector::try_from_label_selector_json(&selector_json).map_err(Error::Selector)?;
    let template = with_daemon_tolerations(&spec.template);
    let revisions: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let (hash, current_revision, owned_revisions) =
        current_revision(&ds, &spec.template, &selector, &revisions).await?;
    let min_ready = i64::from(spec.min_ready_seconds.unwrap_or(0));

    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let fits: Vec<NodeFit> = nodes
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|n| {
            let (should_run, should_continue) = should_run(n, &template);
            NodeFit {
                name: n.name_any(),
                should_run,
                should_continue,
            }
        })
        .collect();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let owned: Vec<Pod> = pods
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| {
            let ours = p
                .owner_references()
                .iter()
                .any(|r| r.controller == Some(true) && r.uid == uid);
            ours && labels_match(&selector, p.labels())
        })
        .collect();

    let desired = fits.iter().filter(|n| n.should_run).count() as i32;
    let update = update_of(&ds, desired);
    let now = Timestamp::now();
    let todo = plan(&fits, &owned, &hash, update, min_ready, now);
    let reference = ds.object_ref(&());
    let mut incomplete = false;

    for pod_name in &todo.delete {
        match pods.delete(pod_name, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::info!(daemonset = %name, pod = %pod_name, "deleted daemon pod");
                ctx.recorder
                    .record(
                        &reference,
                        EventType::Normal,
                        "SuccessfulDelete",
                        &format!("Deleted pod: {pod_name}"),
                    )
                    .await;
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                tracing::warn!(daemonset = %name, pod = %pod_name, error = %e, "deleting daemon pod failed");
                incomplete = true;
            }
        }
    }
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    let creates = todo.create_on.iter().map(|node| {
        let pod = pod_for_node(&ds, &template, &hash, node);
        let pods = pods.clone();
        let params = params.clone();
        async move { (node, pods.create(&params, &pod).await) }
    });
    for (node, result) in futures::future::join_all(creates).await {
        match result {
            Ok(pod) => {
                tracing::info!(daemonset = %name, pod = %pod.name_any(), node = %node, "created daemon pod");
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

    // Status from the snapshot with this pass's deletes applied; creates show up in
    // the reconcile their watch events trigger.
    let remaining: Vec<Pod> = owned
        .into_iter()
        .filter(|p| !todo.delete.contains(&p.name_any()))
        .collect();
    let live: HashSet<String> = remaining
        .iter()
        .filter_map(|p| p.labels().get(HASH_LABEL).cloned())
        .collect();
    let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    for old in history::excess(&owned_revisions, &current_revision, &live, limit) {
        match revisions.delete(&old, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::info!(namespace = %ns, daemonset = %name, revision = %old, "deleted old controller revision")
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }

    let mut status = counts(&fits, &remaining, &hash, min_ready, now);
    status.observed_generation = ds.metadata.generation;
    let old = ds.status.clone().unwrap_or_default();
    let changed = (
        old.desired_number_scheduled,
        old.current_number_scheduled,
        old.number_misscheduled,
        old.number_ready,
        old.number_available.unwrap_or(0),
        old.number_unavailable.unwrap_or(0),
        old.updated_number_scheduled.unwrap_or(0),
        old.observed_generation,
    ) != (
        status.desired_number_scheduled,
        status.current_number_scheduled,
        status.number_misscheduled,
        status.number_ready,
        status.number_available.unwrap_or(0),
        status.number_unavailable.unwrap_or(0),
        status.updated_number_scheduled.unwrap_or(0),
        status.observed_generation,
    );
    if changed {
        let sets: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"status": {
            "desiredNumberScheduled": status.desired_number_scheduled,
            "currentNumberScheduled": status.current_number_scheduled,
            "numberMisscheduled": status.number_misscheduled,
            "numberReady": status.number_ready,
            "numberAvailable": status.number_available,
            "numberUnavailable": status.number_unavailable,
            "updatedNumberScheduled": status.updated_number_scheduled,
            "observedGeneration": status.observed_generation,
        }});
        sets.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    if incomplete {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    if min_ready > 0 && status.number_ready > status.number_available.unwrap_or(0) {
        // Nothing will notify us when a ready pod becomes available.
        return Ok(Action::requeue(Duration::from_secs(
            min_ready.min(30) as u64
        )));
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn node(name: &str, labels: serde_json::Value, taints: serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints},
        }))
        .unwrap()
    }

    fn template(spec: serde_json::Value) -> PodTemplateSpec {
        let mut spec = spec;
        spec["containers"] = json!([{"name": "agent", "image": "agent:1"}]);
        with_daemon_tolerations(
            &serde_json::from_value(json!({
                "metadata": {"labels": {"app": "agent"}},
                "spec": spec,
            }))
            .unwrap(),
        )
    }

    #[test]
    fn eligibility_follows_selector_affinity_and_taints() {
        let t = template(json!({"nodeSelector": {"edge": "true"}}));
        let edge = json!({"edge": "true"});
        assert_eq!(
            should_run(&node("a", edge.clone(), json!([])), &t),
            (true, true)
        );
        assert_eq!(
            should_run(&node("b", json!({}), json!([])), &t),
            (false, false),
            "missing label"
        );
        assert_eq!(
            should_run(
                &node(
                    "c",
                    edge.clone(),
                    json!([{"key": "gpu", "effect": "NoSchedule"}])
                ),
                &t
            ),
            (false, true),
            "NoSchedule: no new pod, an existing one stays"
        );
        assert_eq!(
            should_run(
                &node(
                    "d",
                    edge.clone(),
                    json!([{"key": "gpu", "effect": "NoExecute"}])
                ),
                &t
            ),
            (false, false)
        );
        assert_eq!(
            should_run(
                &node(
                    "e",
                    edge.clone(),
                    json!([{"key": "gpu", "effect": "PreferNoSchedule"}])
                ),
                &t
            ),
            (true, true)
        );
        // The automatic tolerations: cordoned, not-ready and unreachable nodes still run
        // daemons.
        for (key, effect) in [
            ("node.kubernetes.io/unschedulable", "NoSchedule"),
            ("node.kubernetes.io/not-ready", "NoExecute"),
            ("node.kubernetes.io/unreachable", "NoExecute"),
            ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ] {
            let n = node("f", edge.clone(), json!([{"key": key, "effect": effect}]));
            assert_eq!(should_run(&n, &t), (true, true), "{key}");
        }
        // network-unavailable is tolerated only by host-network daemons.
        let net =
            json!([{"key": "node.kubernetes.io/network-unavailable", "effect": "NoSchedule"}]);
        assert!(!should_run(&node("g", edge.clone(), net.clone()), &t).0);
        let host = template(json!({"nodeSelector": {"edge": "true"}, "hostNetwork": true}));
        assert_eq!(
            should_run(&node("g", edge.clone(), net), &host),
            (true, true)
        );

        // Required node affinity, and a user toleration.
        let t = template(json!({
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "zone", "operator": "In", "values": ["x"]}]}]}}},
            "tolerations": [{"key": "gpu", "operator": "Exists"}],
        }));
        let gpu = json!([{"key": "gpu", "value": "1", "effect": "NoExecute"}]);
        assert_eq!(
            should_run(&node("h", json!({"zone": "x"}), gpu), &t),
            (true, true)
        );
        assert_eq!(
            should_run(&node("i", json!({"zone": "y"}), json!([])), &t),
            (false, false)
        );
        // A template naming another node.
        let t = template(json!({"nodeName": "other"}));
        assert_eq!(
            should_run(&node("j", json!({}), json!([])), &t),
            (false, false)
        );
    }

    #[test]
    fn daemon_pods_are_pinned_owned_and_labelled() {
        let ds: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "agent", "namespace": "ns", "uid": "u1", "generation": 2,
                "annotations": {TEMPLATE_GENERATION: "2"}},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                "template": {"metadata": {"labels": {"app": "agent"}},
                    "spec": {"containers": [{"name": "c", "image": "i"}],
                        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [{"matchExpressions": [
                                {"key": "zone", "operator": "Exists"}]}]}}}}}}
        }))
        .unwrap();
        let t = with_daemon_tolerations(&ds.spec.as_ref().unwrap().template);
        let p = pod_for_node(&ds, &t, "h1", "n7");
        assert_eq!(target_node(&p).as_deref(), Some("n7"));
        assert!(
            p.spec.as_ref().unwrap().node_name.is_none(),
            "the scheduler binds"
        );
        let labels = p.metadata.labels.clone().unwrap();
        assert_eq!(labels[HASH_LABEL], "h1");
        assert_eq!(labels[GENERATION_LABEL], "2");
        assert_eq!(labels["app"], "agent");
        let r = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (r.kind.as_str(), r.uid.as_str(), r.controller),
            ("DaemonSet", "u1", Some(true))
        );
        assert_eq!(p.metadata.generate_name.as_deref(), Some("agent-"));
        let tolerations = p.spec.unwrap().tolerations.unwrap();
        assert_eq!(tolerations.len(), 6);
    }

    fn fit(name: &str) -> NodeFit {
        NodeFit {
            name: name.into(),
            should_run: true,
            should_continue: true,
        }
    }

    /// A pod for `node`: bound, with template `hash`, ready or not.
    fn pod(name: &str, node: &str, hash: &str, ready: bool, created: i64) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {HASH_LABEL: hash},
                "creationTimestamp": Time(Timestamp::from_second(created).unwrap())},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" },
                 "lastTransitionTime": Time(Timestamp::from_second(created).unwrap())}]},
        }))
        .unwrap()
    }

    fn now() -> Timestamp {
        Timestamp::from_second(10_000).unwrap()
    }

    const ROLLING: Update = Update::Rolling {
        max_surge: 0,
        max_unavailable: 1,
    };

    #[test]
    fn manage_creates_deletes_and_replaces_failed() {
        let nodes = vec![
            fit("a"),
            fit("b"),
            NodeFit {
                name: "c".into(),
                should_run: false,
                should_continue: false,
            },
            NodeFit {
                name: "d".into(),
                should_run: false,
                should_continue: true,
            },
        ];
        let mut failed = pod("b1", "b", "h", false, 1);
        failed.status.as_mut().unwrap().phase = Some("Failed".into());
        let pods = vec![
            failed,
            pod("c1", "c", "h", true, 1),
            pod("d1", "d", "h", true, 1),
            pod("gone1", "gone", "h", true, 1),
        ];
        let p = plan(&nodes, &pods, "h", ROLLING, 0, now());
        assert_eq!(p.create_on, vec!["a"]);
        assert_eq!(p.delete, vec!["b1", "c1", "gone1"]);

        // Duplicates on one node: the oldest stays.
        let pods = vec![
            pod("a2", "a", "h", true, 2),
            pod("a1", "a", "h", true, 1),
            pod("b1", "b", "h", true, 1),
        ];
        let p = plan(&nodes, &pods, "h", Update::OnDelete, 0, now());
        assert_eq!(
            p,
            Plan {
                create_on: vec![],
                delete: vec!["a2".into()]
            }
        );

        // A terminating pod still occupies its node: no replacement until it is gone.
        let mut leaving = pod("a1", "a", "old", true, 1);
        leaving.metadata.deletion_timestamp = Some(Time(now()));
        let p = plan(&[fit("a")], &[leaving], "h", ROLLING, 0, now());
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn rolling_update_without_surge_deletes_within_max_unavailable() {
        let nodes = vec![fit("a"), fit("b"), fit("c")];
        let old = |n: &str| pod(&format!("{n}-old"), n, "old", true, 1);
        let pods = vec![old("a"), old("b"), old("c")];
        let p = plan(&nodes, &pods, "new", ROLLING, 0, now());
        assert_eq!(p.delete.len(), 1, "one at a time: {p:?}");
        assert!(p.create_on.is_empty());
        let two = Update::Rolling {
            max_surge: 0,
            max_unavailable: 2,
        };
        assert_eq!(plan(&nodes, &pods, "new", two, 0, now()).delete.len(), 2);

        // One node replaced but its new pod not ready yet: nothing more goes.
        let pods = vec![pod("a-new", "a", "new", false, 5), old("b"), old("c")];
        assert_eq!(
            plan(&nodes, &pods, "new", ROLLING, 0, now()),
            Plan::default()
        );
        // Once it is ready, the next one.
        let pods = vec![pod("a-new", "a", "new", true, 5), old("b"), old("c")];
        assert_eq!(
            plan(&nodes, &pods, "new", ROLLING, 0, now()).delete,
            vec!["b-old"]
        );
        // ...unless minReadySeconds has not passed since the new one turned ready.
        let pods = vec![pod("a-new", "a", "new", true, 9_990), old("b"), old("c")];
        assert_eq!(
            plan(&nodes, &pods, "new", ROLLING, 30, now()),
            Plan::default()
        );
        assert_eq!(
            plan(&nodes, &pods, "new", ROLLING, 5, now()).delete.len(),
            1
        );
        // While a node's replacement is being created, nothing else is replaced.
        let pods = vec![old("b"), old("c")];
        assert_eq!(
            plan(&nodes, &pods, "new", ROLLING, 0, now()),
            Plan {
                create_on: vec!["a".into()],
                delete: vec![]
            }
        );
        // A node whose old pod is terminating counts as unavailable.
        let mut leaving = old("a");
        leaving.metadata.deletion_timestamp = Some(Time(now()));
        let pods = vec![leaving, old("b"), old("c")];
        assert_eq!(
            plan(&nodes, &pods, "new", ROLLING, 0, now()),
            Plan::default()
        );
        // Unavailable old pods are replaced regardless of the budget.
        let pods = vec![
            pod("a-new", "a", "new", false, 5),
            pod("b-old", "b", "old", false, 1),
            old("c"),
        ];
        assert_eq!(
            plan(&nodes, &pods, "new", ROLLING, 0, now()).delete,
            vec!["b-old"]
        );
        // OnDelete never replaces.
        let pods = vec![old("a"), old("b"), old("c")];
        assert_eq!(
            plan(&nodes, &pods, "new", Update::OnDelete, 0, now()),
            Plan::default()
        );
    }

    #[test]
    fn rolling_update_with_surge_creates_first() {
        let nodes = vec![fit("a"), fit("b"), fit("c")];
        let surge = Update::Rolling {
            max_surge: 1,
            max_unavailable: 0,
        };
        let old = |n: &str| pod(&format!("{n}-old"), n, "old", true, 1);
        let p = plan(
            &nodes,
            &[old("a"), old("b"), old("c")],
            "new",
            surge,
            0,
            now(),
        );
        assert_eq!(p.create_on.len(), 1, "{p:?}");
        assert!(p.delete.is_empty());
        // The surged pod is not ready: wait; the old one keeps serving.
        let pods = vec![
            old("a"),
            pod("a-new", "a", "new", false, 5),
            old("b"),
            old("c"),
        ];
        assert_eq!(plan(&nodes, &pods, "new", surge, 0, now()), Plan::default());
        // Available: the old one goes; once that is seen, the next node surges.
        let pods = vec![
            old("a"),
            pod("a-new", "a", "new", true, 5),
            old("b"),
            old("c"),
        ];
        let p = plan(&nodes, &pods, "new", surge, 0, now());
        assert_eq!(
            p,
            Plan {
                create_on: vec![],
                delete: vec!["a-old".into()]
            }
        );
        let pods = vec![pod("a-new", "a", "new", true, 5), old("b"), old("c")];
        let p = plan(&nodes, &pods, "new", surge, 0, now());
        assert_eq!(p.create_on.len(), 1);
        assert_ne!(p.create_on[0], "a");
    }

    #[test]
    fn status_counts_what_rollout_status_reads() {
        let nodes = vec![
            fit("a"),
            fit("b"),
            fit("c"),
            NodeFit {
                name: "x".into(),
                should_run: false,
                should_continue: false,
            },
        ];
        let pods = vec![
            pod("a1", "a", "new", true, 2),
            pod("b1", "b", "old", true, 1),
            pod("x1", "x", "new", true, 1),
        ];
        let s = counts(&nodes, &pods, "new", 0, now());
        assert_eq!(s.desired_number_scheduled, 3);
        assert_eq!(s.current_number_scheduled, 2);
        assert_eq!(s.number_misscheduled, 1);
        assert_eq!(s.number_ready, 2);
        assert_eq!(s.number_available, Some(2));
        assert_eq!(s.number_unavailable, Some(1));
        assert_eq!(s.updated_number_scheduled, Some(1));
    }

    #[test]
    fn strategy_resolution() {
        let ds = |strategy: serde_json::Value| -> DaemonSet {
            serde_json::from_value(json!({"metadata": {"name": "d"},
                "spec": {"selector": {}, "template": {}, "updateStrategy": strategy}}))
            .unwrap()
        };
        assert_eq!(
            update_of(&ds(json!({"type": "OnDelete"})), 5),
            Update::OnDelete
        );
        assert_eq!(
            update_of(&ds(json!({"type": "RollingUpdate"})), 5),
            Update::Rolling {
                max_surge: 0,
                max_unavailable: 1
            }
        );
        assert_eq!(
            update_of(
                &ds(json!({"type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": "30%", "maxSurge": "10%"}})),
                5
            ),
            Update::Rolling {
                max_surge: 1,
                max_unavailable: 2
            },
            "percentages round up"
        );
        assert_eq!(
            update_of(
                &ds(json!({"type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 0}})),
                5
            ),
            Update::Rolling {
                max_surge: 0,
                max_unavailable: 1
            }
        );
    }
}
