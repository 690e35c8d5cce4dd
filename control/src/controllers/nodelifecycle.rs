//! The node lifecycle controller: notices nodes whose kubelet stopped heartbeating and
//! moves their pods elsewhere, as kube-controller-manager's node lifecycle controller
//! and its NoExecute taint manager do.
//!
//! A node's heartbeat is the `spec.renewTime` of its Lease in `kube-node-lease` (name =
//! node name); the Ready condition's `lastHeartbeatTime` and the node's creation time
//! count too, so a node that never had a Lease gets one grace period from registration.
//! When no heartbeat arrived within [`Config::grace_period`]:
//!
//! - every condition of the node turns `Unknown` (reason `NodeStatusUnknown`, "Kubelet
//!   stopped posting node status.") through `nodes/status`, with a `NodeNotReady` Event;
//! - the node gets the taints `node.kubernetes.io/unreachable` with effects NoSchedule
//!   and NoExecute (`timeAdded` set).
//!
//! When the Lease is renewed again the taints are removed; the kubelet sets Ready=True
//! itself, as upstream.
//!
//! NoExecute eviction applies to every NoExecute taint on a node: a pod bound to the node
//! that does not tolerate one is deleted at once; one whose tolerations carry
//! `tolerationSeconds` is deleted that many seconds after the taint's `timeAdded` (the
//! smallest over the taints); a toleration without `tolerationSeconds` keeps the pod
//! forever. Evictions are recorded on the pod (`TaintManagerEviction`, "Marking for
//! deletion Pod ns/name"). Pods are deleted with grace period 0: the node is gone and no
//! kubelet would finish a graceful deletion.
//!
//! **Default eviction delay.** Kubernetes gives every pod tolerations for
//! `node.kubernetes.io/not-ready` and `node.kubernetes.io/unreachable` with
//! `tolerationSeconds: 300` through the DefaultTolerationSeconds admission plugin. We
//! have no such admission step; instead a pod WITHOUT a toleration for those two taints is
//! evicted [`Config::eviction_timeout`] (default 300 s) after the taint was added. A pod
//! with its own toleration for them follows that toleration.
//!
//! **Configuration.** [`run`] takes a [`Config`]; both times come from `wasmkube server`
//! flags (`--node-monitor-grace-period-seconds`, `--pod-eviction-timeout-seconds`), which
//! the end-to-end tests shorten.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use serde_json::json;

use super::events::{EventType, Recorder};

/// The field manager and event source of this controller.
const MANAGER: &str = "node-lifecycle-controller";
/// The namespace holding node heartbeat Leases.
const LEASE_NAMESPACE: &str = "kube-node-lease";
/// The taint of a node whose kubelet stopped heartbeating.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
/// The taint of a node whose kubelet reports NotReady.
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
/// The reason and message of conditions this controller turns Unknown.
const UNKNOWN_REASON: &str = "NodeStatusUnknown";
const UNKNOWN_MESSAGE: &str = "Kubelet stopped posting node status.";
/// How often an unreachable node is looked at again (for its return and for pods due
/// for eviction), as upstream's node monitor period, but at most an eighth of the
/// grace period and never under this floor.
const RECHECK_MAX: Duration = Duration::from_secs(5);
const RECHECK_MIN: Duration = Duration::from_millis(500);

/// What can go wrong in one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("api call failed: {0}")]
    Api(#[from] kube::Error),
}

/// The controller's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// How long a node may go without a heartbeat before it is marked unreachable
    /// (kube-controller-manager's `--node-monitor-grace-period`, default 40 s).
    pub grace_period: Duration,
    /// How long pods without their own toleration for the not-ready/unreachable taints
    /// stay on such a node (what DefaultTolerationSeconds gives them upstream: 300 s).
    pub eviction_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grace_period: Duration::from_secs(40),
            eviction_timeout: Duration::from_secs(300),
        }
    }
}

struct Context {
    client: kube::Client,
    recorder: Recorder,
    config: Config,
    leases: Store<Lease>,
}

/// Runs the controller until the watch streams end.
pub async fn run(client: kube::Client, config: Config) {
    let nodes: Api<Node> = Api::all(client.clone());
    let lease_api: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let (leases, writer) = reflector::store();
    // Leases are read from a cache, not fetched: with many nodes each renewing every
    // few seconds, a read per heartbeat would cost the API server more than the nodes.
    let drive_leases = reflector::reflector(
        writer,
        watcher::watcher(lease_api, watcher::Config::default()),
    )
    .default_backoff()
    .for_each(|_| futures::future::ready(()));
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), MANAGER),
        client,
        config,
        leases: leases.clone(),
    });
    tracing::info!(
        grace_period_seconds = config.grace_period.as_secs(),
        eviction_timeout_seconds = config.eviction_timeout.as_secs(),
        "node lifecycle controller starting"
    );
    let controller = async move {
        // Until the Leases are known every node would look silent.
        if leases.wait_until_ready().await.is_err() {
            return;
        }
        Controller::new(nodes, watcher::Config::default())
            .run(reconcile, error_policy, ctx)
            .for_each(|res| async move {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "node lifecycle reconcile failed");
                }
            })
            .await;
    };
    futures::join!(drive_leases, controller);
}

fn error_policy(node: Arc<Node>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(node = %node.name_any(), error = %err, "reconciling node failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

fn millis(t: Timestamp) -> i64 {
    t.as_millisecond()
}

/// The latest sign of life of `node`, in Unix milliseconds: its Lease's renewTime, its
/// Ready condition's lastHeartbeatTime, or its creation.
fn last_heartbeat(node: &Node, lease: Option<&Lease>) -> i64 {
    let renewed = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| millis(t.0));
    let reported = ready_condition(node)
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| millis(t.0));
    let created = node
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| millis(t.0));
    [renewed, reported, created]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0)
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

fn taints(node: &Node) -> &[Taint] {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
}

fn is_unreachable_taint(t: &Taint) -> bool {
    t.key == UNREACHABLE_TAINT && (t.effect == "NoSchedule" || t.effect == "NoExecute")
}

/// The node's taints with both unreachable taints present (timeAdded = `now`), or `None`
/// when they already are.
fn with_unreachable_taints(current: &[Taint], now: Timestamp) -> Option<Vec<Taint>> {
    let mut out = current.to_vec();
    let mut changed = false;
    for effect in ["NoSchedule", "NoExecute"] {
        if !out
            .iter()
            .any(|t| t.key == UNREACHABLE_TAINT && t.effect == effect)
        {
            out.push(Taint {
                key: UNREACHABLE_TAINT.to_string(),
                effect: effect.to_string(),
                time_added: Some(Time(now)),
                value: None,
            });
            changed = true;
        }
    }
    changed.then_some(out)
}

/// The node's taints without the unreachable ones, or `None` when it has none.
fn without_unreachable_taints(current: &[Taint]) -> Option<Vec<Taint>> {
    current.iter().any(is_unreachable_taint).then(|| {
        current
            .iter()
            .filter(|t| !is_unreachable_taint(t))
            .cloned()
            .collect()
    })
}

/// Kubernetes' `Toleration.ToleratesTaint`.
fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty()) {
        if effect != taint.effect {
            return false;
        }
    }
    if let Some(key) = toleration.key.as_deref().filter(|k| !k.is_empty()) {
        if key != taint.key {
            return false;
        }
    }
    match toleration.operator.as_deref().unwrap_or("") {
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        "Exists" => true,
        _ => false,
    }
}

/// When (Unix milliseconds) a pod with `tolerations` is to be evicted from a node with
/// `taints`, or `None` if never. Mirrors the taint manager: an untolerated NoExecute
/// taint evicts at once, tolerated ones after the smallest `tolerationSeconds` counted
/// from the taint's `timeAdded` (a taint without one counts as added long ago). The
/// not-ready/unreachable taints without any toleration use `default_delay`, standing in
/// for DefaultTolerationSeconds.
fn eviction_time(
    taints: &[Taint],
    tolerations: &[Toleration],
    default_delay: Duration,
) -> Option<i64> {
    let mut when: Option<i64> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let added = taint.time_added.as_ref().map(|t| millis(t.0)).unwrap_or(0);
        let matching: Vec<&Toleration> =
            tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        let at = if matching.is_empty() {
            if taint.key == UNREACHABLE_TAINT || taint.key == NOT_READY_TAINT {
                added.saturating_add(default_delay.as_millis() as i64)
            } else {
                return Some(0);
            }
        } else {
            // Tolerated; a toleration without tolerationSeconds tolerates forever.
            match matching.iter().filter_map(|t| t.toleration_seconds).min() {
                Some(secs) if matching.iter().all(|t| t.toleration_seconds.is_some()) => {
                    added.saturating_add(secs.max(0).saturating_mul(1000))
                }
                _ => continue,
            }
        };
        when = Some(when.map_or(at, |w| w.min(at)));
    }
    when
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action, Error> {
    match sync_node(&node, &ctx).await {
        // Our view of the node was stale: look again at once with the fresh one.
        Err(Error::Api(kube::Error::Api(e))) if e.code == 409 => {
            Ok(Action::requeue(Duration::from_millis(200)))
        }
        other => other,
    }
}

async fn sync_node(node: &Node, ctx: &Context) -> Result<Action, Error> {
    let name = node.name_any();
    let lease = ctx
        .leases
        .get(&ObjectRef::new(&name).within(LEASE_NAMESPACE));
    let now = Timestamp::now();
    let grace_ms = ctx.config.grace_period.as_millis() as i64;
    let deadline = last_heartbeat(node, lease.as_deref()).saturating_add(grace_ms);
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let recheck = (ctx.config.grace_period / 8).clamp(RECHECK_MIN, RECHECK_MAX);

    let mut current = node.clone();
    let silent = millis(now) > deadline;
    if silent {
        current = mark_unknown(ctx, &nodes, current, now).await?;
        if let Some(taints) = with_unreachable_taints(taints(&current), now) {
            current = write_taints(&nodes, &current, taints).await?;
            tracing::info!(node = %name, "node unreachable: tainted");
        }
    } else if let Some(taints) = without_unreachable_taints(taints(&current)) {
        current = write_taints(&nodes, &current, taints).await?;
        tracing::info!(node = %name, "node heartbeats again: unreachable taints removed");
    }

    let mut next = if silent {
        recheck
    } else {
        // Look again just after the heartbeat would expire.
        Duration::from_millis((deadline - millis(now)) as u64 + 100)
    };
    if taints(&current).iter().any(|t| t.effect == "NoExecute") {
        if let Some(wait) = evict_pods(ctx, &current).await? {
            next = next.min(wait);
        }
        next = next.min(recheck.max(RECHECK_MAX));
    }
    Ok(Action::requeue(next))
}

/// Turns every condition of the node Unknown (unless already), through `nodes/status`.
async fn mark_unknown(
    ctx: &Context,
    nodes: &Api<Node>,
    node: Node,
    now: Timestamp,
) -> Result<Node, Error> {
    if ready_condition(&node).is_some_and(|c| c.status == "Unknown") {
        return Ok(node);
    }
    let name = node.name_any();
    let mut conditions = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    if !conditions.iter().any(|c| c.type_ == "Ready") {
        conditions.push(NodeCondition {
            type_: "Ready".into(),
            ..Default::default()
        });
    }
    for c in &mut conditions {
        if c.status != "Unknown" {
            c.last_transition_time = Some(Time(now));
        }
        c.status = "Unknown".into();
        c.reason = Some(UNKNOWN_REASON.into());
        c.message = Some(UNKNOWN_MESSAGE.into());
    }
    let patch = json!({
        "metadata": {"resourceVersion": node.metadata.resource_version},
        "status": {"conditions": conditions},
    });
    let updated = nodes
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    tracing::info!(node = %name, "node stopped heartbeating: Ready=Unknown");
    ctx.recorder
        .record(
            &node_reference(&updated),
            EventType::Normal,
            "NodeNotReady",
            &format!("Node {name} status is now: NodeNotReady"),
        )
        .await;
    Ok(updated)
}

/// A Node's event reference: Events about nodes live in `default`, as upstream's.
fn node_reference(node: &Node) -> k8s_openapi::api::core::v1::ObjectReference {
    let mut r = super::events::reference(node);
    r.namespace = None;
    // Upstream's node events carry the node name as uid.
    r.uid = Some(node.name_any());
    r
}

async fn write_taints(nodes: &Api<Node>, node: &Node, taints: Vec<Taint>) -> Result<Node, Error> {
    let patch = json!({
        "metadata": {"resourceVersion": node.metadata.resource_version},
        "spec": {"taints": taints},
    });
    Ok(nodes
        .patch(
            &node.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?)
}

/// Deletes the node's pods whose eviction time has come; returns how long until the next
/// one is due, if any is pending.
async fn evict_pods(ctx: &Context, node: &Node) -> Result<Option<Duration>, Error> {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let list = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={}", node.name_any())))
        .await?;
    let now = millis(Timestamp::now());
    let taints = taints(node);
    let mut next: Option<i64> = None;
    for pod in list.items {
        if pod.metadata.deletion_timestamp.is_some()
            && pod.metadata.deletion_grace_period_seconds == Some(0)
        {
            continue;
        }
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or_default();
        let Some(at) = eviction_time(taints, tolerations, ctx.config.eviction_timeout) else {
            continue;
        };
        if at > now {
            next = Some(next.map_or(at - now, |n| n.min(at - now)));
            continue;
        }
        let ns = pod.namespace().unwrap_or_default();
        let pod_name = pod.name_any();
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        match api
            .delete(&pod_name, &DeleteParams::default().grace_period(0))
            .await
        {
            Ok(_) => {
                tracing::info!(node = %node.name_any(), namespace = %ns, pod = %pod_name, "evicted pod");
                ctx.recorder
                    .record(
                        &super::events::reference(&pod),
                        EventType::Normal,
                        "TaintManagerEviction",
                        &format!("Marking for deletion Pod {ns}/{pod_name}"),
                    )
                    .await;
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(next.map(|ms| Duration::from_millis(ms as u64 + 50)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn taint(key: &str, effect: &str, added: Option<i64>) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            time_added: added.map(|s| Time(ts(s))),
            value: None,
        }
    }

    fn toleration(key: &str, effect: &str, seconds: Option<i64>) -> Toleration {
        Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some(effect.into()),
            toleration_seconds: seconds,
            value: None,
        }
    }

    #[test]
    fn unreachable_taints_are_added_once_and_removed() {
        let other = taint("dedicated", "NoSchedule", None);
        let added =
            with_unreachable_taints(std::slice::from_ref(&other), ts(100)).expect("taints added");
        assert_eq!(added.len(), 3);
        assert!(added
            .iter()
            .filter(|t| t.key == UNREACHABLE_TAINT)
            .all(|t| t.time_added == Some(Time(ts(100)))));
        assert_eq!(with_unreachable_taints(&added, ts(200)), None);
        assert_eq!(
            without_unreachable_taints(&added),
            Some(vec![other.clone()])
        );
        assert_eq!(without_unreachable_taints(&[other]), None);
    }

    #[test]
    fn eviction_follows_tolerations_and_the_default_delay() {
        let default = Duration::from_secs(300);
        let unreachable = [
            taint(UNREACHABLE_TAINT, "NoSchedule", Some(1000)),
            taint(UNREACHABLE_TAINT, "NoExecute", Some(1000)),
        ];
        // No toleration: the default delay stands in for DefaultTolerationSeconds.
        assert_eq!(eviction_time(&unreachable, &[], default), Some(1_300_000));
        // Its own tolerationSeconds wins.
        let t = [toleration(UNREACHABLE_TAINT, "NoExecute", Some(5))];
        assert_eq!(eviction_time(&unreachable, &t, default), Some(1_005_000));
        // Tolerated forever.
        let t = [toleration(UNREACHABLE_TAINT, "NoExecute", None)];
        assert_eq!(eviction_time(&unreachable, &t, default), None);
        // A NoSchedule toleration does not tolerate NoExecute.
        let t = [toleration(UNREACHABLE_TAINT, "NoSchedule", None)];
        assert_eq!(eviction_time(&unreachable, &t, default), Some(1_300_000));
        // Any other untolerated NoExecute taint evicts at once.
        let custom = [taint("maintenance", "NoExecute", Some(1000))];
        assert_eq!(eviction_time(&custom, &[], default), Some(0));
        // NoSchedule alone never evicts.
        assert_eq!(eviction_time(&unreachable[..1], &[], default), None);
    }

    #[test]
    fn heartbeat_is_the_latest_sign_of_life() {
        let mut node = Node::default();
        node.metadata.creation_timestamp = Some(Time(ts(10)));
        assert_eq!(last_heartbeat(&node, None), 10_000);
        let lease = Lease {
            spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
                renew_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                    ts(50),
                )),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(last_heartbeat(&node, Some(&lease)), 50_000);
    }

    #[test]
    fn config_defaults() {
        let c = Config::default();
        assert_eq!(c.grace_period, Duration::from_secs(40));
        assert_eq!(c.eviction_timeout, Duration::from_secs(300));
    }
}
