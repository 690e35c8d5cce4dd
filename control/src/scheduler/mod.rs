//! The scheduler: places pods on nodes, as kube-scheduler does, purely as an API client
//! (kube-rs watchers; it never touches storage).
//!
//! # Layout
//! - [`quantity`]: Kubernetes quantities as integers.
//! - [`requirements`]: what a pod asks of a node (requests, ports, owner, selectors,
//!   tolerations, its RuntimeClass merged in).
//! - [`cache`]: nodes with per-node aggregates of the pods placed on them, fed by the
//!   watches and by the scheduler's own (assumed) decisions.
//! - [`queue`]: pods waiting for a node; unschedulable ones wait for a cluster change.
//! - [`filter`]: which nodes may take a pod; [`diagnosis`]: why none did.
//! - [`score`]: which feasible node is best.
//! - [`bind`]: the writes — the binding, the Unschedulable condition, events.
//! - [`event_queue`]: Events written in the background, bindings first.
//!
//! # Flow
//! Three watches (nodes, all pods, RuntimeClasses) keep the cache and queue current.
//! One loop takes pods from the queue, filters and scores nodes in memory (no request
//! per pod), counts the pod on the chosen node at once ("assumes" it), and hands the
//! binding to a task; bindings run concurrently up to [`MAX_CONCURRENT_WRITES`]. In a
//! big cluster only a sample of the feasible nodes is scored
//! (`percentageOfNodesToScore`). Events are queued and written off this path
//! ([`event_queue`]).

mod bind;
mod cache;
mod diagnosis;
mod event_queue;
pub(crate) mod filter;
mod quantity;
mod queue;
mod requirements;
mod score;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::Api;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use crate::controllers::events::Recorder;
use cache::{Cache, NodeSpec};
use diagnosis::Diagnosis;
use event_queue::EventQueue;
use queue::Queue;
use requirements::{PodInfo, Requirements, RuntimeClassScheduling};

/// The `spec.schedulerName` this scheduler serves (an unset name means it too).
pub const SCHEDULER_NAME: &str = "default-scheduler";
/// Bindings and status reports in flight at once. A binding waits mostly for etcd's
/// commit, so throughput grows with concurrency: kube-scheduler binds each pod in a
/// goroutine of its own. The bound keeps a burst of thousands from opening as many
/// connections.
pub const MAX_CONCURRENT_WRITES: usize = 256;
/// How often an idle scheduler looks at unschedulable pods again.
const TICK: Duration = Duration::from_millis(200);

/// Everything the watches, the loop and the write tasks share.
struct Shared {
    /// One lock over cache and queue: a placement decision must see both at once, and
    /// every critical section is short and never awaits.
    state: Mutex<State>,
    /// Wakes the loop when pods become active or the cluster changes.
    wake: Notify,
    /// Bounds concurrent writes, so a burst of pods cannot open unbounded requests.
    writes: Arc<Semaphore>,
    client: kube::Client,
    events: Arc<EventQueue>,
}

#[derive(Default)]
struct State {
    cache: Cache,
    queue: Queue,
    runtime_classes: HashMap<String, Arc<RuntimeClassScheduling>>,
    /// Placement waits until both initial lists are in, or it would overcommit nodes.
    nodes_synced: bool,
    pods_synced: bool,
    /// Where the next node walk starts, so sampled walks cover all nodes in turn.
    next_start: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs the scheduler until the process ends.
pub async fn run(client: kube::Client, recorder: Arc<Recorder>) {
    let writes = Arc::new(Semaphore::new(MAX_CONCURRENT_WRITES));
    let in_flight = writes.clone();
    let (events, write_events) = EventQueue::new(recorder, move || {
        in_flight.available_permits() < MAX_CONCURRENT_WRITES
    });
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        wake: Notify::new(),
        writes,
        client,
        events,
    });
    tracing::info!(scheduler = SCHEDULER_NAME, "scheduler starting");
    tokio::join!(
        watch_nodes(shared.clone()),
        watch_pods(shared.clone()),
        watch_runtime_classes(shared.clone()),
        schedule_loop(shared),
        write_events,
    );
}

/// Objects seen since a (re)list started, to drop the ones that vanished meanwhile.
type Relist = Option<HashSet<String>>;

async fn watch_nodes(shared: Arc<Shared>) {
    let api: Api<Node> = Api::all(shared.client.clone());
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut relist: Relist = None;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(error = %e, "node watch failed; retrying");
                continue;
            }
        };
        let mut state = shared.lock();
        let changed = match event {
            Event::Init => {
                relist = Some(HashSet::new());
                false
            }
            Event::InitApply(node) | Event::Apply(node) => {
                let name = node.metadata.name.clone().unwrap_or_default();
                if let Some(seen) = relist.as_mut() {
                    seen.insert(name.clone());
                }
                state.cache.set_node(&name, NodeSpec::of(&node))
            }
            Event::Delete(node) => {
                state
                    .cache
                    .remove_node(node.metadata.name.as_deref().unwrap_or_default());
                false
            }
            Event::InitDone => {
                let seen = relist.take().unwrap_or_default();
                for name in state.cache.node_names() {
                    if !seen.contains(&name) {
                        state.cache.remove_node(&name);
                    }
                }
                state.nodes_synced = true;
                true
            }
        };
        if changed {
            state.queue.cluster_changed();
            drop(state);
            shared.wake.notify_one();
        }
    }
}

async fn watch_pods(shared: Arc<Shared>) {
    let api: Api<Pod> = Api::all(shared.client.clone());
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut relist: Relist = None;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(error = %e, "pod watch failed; retrying");
                continue;
            }
        };
        let wake = match event {
            Event::Init => {
                relist = Some(HashSet::new());
                false
            }
            Event::InitApply(pod) | Event::Apply(pod) => {
                if let (Some(seen), Some(uid)) = (relist.as_mut(), pod.metadata.uid.as_ref()) {
                    seen.insert(uid.clone());
                }
                observe_pod(&mut shared.lock(), pod)
            }
            Event::Delete(pod) => {
                let uid = pod.metadata.uid.unwrap_or_default();
                let mut state = shared.lock();
                state.queue.remove(&uid);
                let freed = state.cache.remove_pod(&uid);
                if freed {
                    state.queue.cluster_changed();
                }
                freed
            }
            Event::InitDone => {
                let seen = relist.take().unwrap_or_default();
                let mut state = shared.lock();
                if state.cache.retain_pods(|uid| seen.contains(uid)) {
                    state.queue.cluster_changed();
                }
                state.queue.retain(|uid| seen.contains(uid));
                state.pods_synced = true;
                true
            }
        };
        if wake {
            shared.wake.notify_one();
        }
    }
}

/// Applies one pod from the watch to the cache and queue. Returns whether the loop
/// should wake.
fn observe_pod(state: &mut State, pod: Pod) -> bool {
    let Some(uid) = pod.metadata.uid.clone() else {
        return false;
    };
    let spec = pod.spec.as_ref();
    let node = spec
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty());
    let terminal = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    if let Some(node) = node {
        state.queue.remove(&uid);
        let freed = if terminal {
            state.cache.remove_pod(&uid)
        } else {
            state
                .cache
                .observe_bound(&uid, &node, Arc::new(PodInfo::of(&pod)))
        };
        if freed {
            state.queue.cluster_changed();
        }
        return freed;
    }
    let ours = spec
        .and_then(|s| s.scheduler_name.as_deref())
        .is_none_or(|n| n.is_empty() || n == SCHEDULER_NAME);
    let gated = spec
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|g| !g.is_empty());
    let deleting = pod.metadata.deletion_timestamp.is_some();
    if !ours || gated || deleting || terminal {
        state.queue.remove(&uid);
        return false;
    }
    // A stale unbound version of a pod we just bound: the bound one follows.
    if state.cache.is_assumed(&uid) && state.queue.in_flight(&uid).is_none() {
        return false;
    }
    state.queue.upsert(&uid, Arc::new(pod))
}

async fn watch_runtime_classes(shared: Arc<Shared>) {
    let api: Api<RuntimeClass> = Api::all(shared.client.clone());
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut relist: Relist = None;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(error = %e, "RuntimeClass watch failed; retrying");
                continue;
            }
        };
        let mut state = shared.lock();
        match event {
            Event::Init => relist = Some(HashSet::new()),
            Event::InitApply(class) | Event::Apply(class) => {
                let name = class.metadata.name.clone().unwrap_or_default();
                if let Some(seen) = relist.as_mut() {
                    seen.insert(name.clone());
                }
                let scheduling = Arc::new(RuntimeClassScheduling::of(&class));
                state.runtime_classes.insert(name, scheduling);
            }
            Event::Delete(class) => {
                state
                    .runtime_classes
                    .remove(class.metadata.name.as_deref().unwrap_or_default());
                continue;
            }
            Event::InitDone => {
                let seen = relist.take().unwrap_or_default();
                state.runtime_classes.retain(|name, _| seen.contains(name));
            }
        }
        // A new or changed class may let waiting pods in.
        state.queue.cluster_changed();
        drop(state);
        shared.wake.notify_one();
    }
}

async fn schedule_loop(shared: Arc<Shared>) {
    let mut rng = StdRng::from_os_rng();
    let mut last_scan = Instant::now();
    let mut last_generation = 0;
    loop {
        let next = {
            let mut state = shared.lock();
            if !(state.nodes_synced && state.pods_synced) {
                None
            } else {
                let now = Instant::now();
                // Scanning for due pods is a pass over the queue: done on a change or a
                // tick, never per pod.
                let generation = state.queue.generation();
                if generation != last_generation || now.duration_since(last_scan) >= TICK {
                    state.queue.reactivate_due(now);
                    last_scan = now;
                    last_generation = generation;
                }
                state.queue.pop()
            }
        };
        match next {
            Some((uid, pod)) => schedule_one(&shared, &uid, &pod, &mut rng).await,
            None => {
                tokio::select! {
                    _ = shared.wake.notified() => {}
                    _ = tokio::time::sleep(TICK) => {}
                }
            }
        }
    }
}

/// What one scheduling attempt decided.
enum Decision {
    Bind(String),
    Unschedulable { message: String, report: bool },
}

async fn schedule_one(shared: &Arc<Shared>, uid: &str, pod: &Pod, rng: &mut StdRng) {
    let runtime_class = resolve_runtime_class(shared, pod).await;
    let (decision, pod) = {
        let mut state = shared.lock();
        let Some(pod) = state.queue.in_flight(uid) else {
            return;
        };
        let info = Arc::new(PodInfo::of(&pod));
        let nodes = state.cache.node_count();
        let outcome = match &runtime_class {
            Ok(class) => Requirements::of(
                &pod,
                info.clone(),
                class.as_ref().map(|(n, c)| (n.as_str(), c.as_ref())),
            )
            .map_err(|why| diagnosis::pre_filter_message(nodes, &why))
            .and_then(|reqs| find_node(&mut state, &reqs, rng)),
            Err(why) => Err(diagnosis::pre_filter_message(nodes, why)),
        };
        let decision = match outcome {
            Ok(node) => {
                state.cache.assume(uid, &node, info);
                Decision::Bind(node)
            }
            Err(message) => {
                let report = state.queue.unschedulable(uid, &message);
                Decision::Unschedulable { message, report }
            }
        };
        (decision, pod)
    };
    match decision {
        Decision::Bind(node) => {
            let Ok(permit) = shared.writes.clone().acquire_owned().await else {
                return;
            };
            let shared = shared.clone();
            let uid = uid.to_string();
            tokio::spawn(async move {
                finish_binding(&shared, &uid, &pod, &node).await;
                drop(permit);
            });
        }
        Decision::Unschedulable { message, report } => {
            tracing::debug!(
                namespace = pod.metadata.namespace.as_deref().unwrap_or(""),
                pod = pod.metadata.name.as_deref().unwrap_or(""),
                %message,
                "pod is unschedulable"
            );
            if !report {
                return;
            }
            let Ok(permit) = shared.writes.clone().acquire_owned().await else {
                return;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                bind::report_unschedulable(&shared.client, &shared.events, &pod, &message).await;
                drop(permit);
            });
        }
    }
}

/// The pod's RuntimeClass scheduling constraints: from the watched classes, else a GET
/// (the watch may lag a class created just before the pod). `Err` is the reason the
/// pod cannot be placed.
async fn resolve_runtime_class(
    shared: &Shared,
    pod: &Pod,
) -> Result<Option<(String, Arc<RuntimeClassScheduling>)>, String> {
    let Some(name) = pod
        .spec
        .as_ref()
        .and_then(|s| s.runtime_class_name.clone())
        .filter(|n| !n.is_empty())
    else {
        return Ok(None);
    };
    if let Some(class) = shared.lock().runtime_classes.get(&name).cloned() {
        return Ok(Some((name, class)));
    }
    let api: Api<RuntimeClass> = Api::all(shared.client.clone());
    match api.get_opt(&name).await {
        Ok(Some(class)) => {
            let scheduling = Arc::new(RuntimeClassScheduling::of(&class));
            shared
                .lock()
                .runtime_classes
                .insert(name.clone(), scheduling.clone());
            Ok(Some((name, scheduling)))
        }
        Ok(None) => Err(format!("RuntimeClass {name:?} not found")),
        Err(e) => Err(format!("getting RuntimeClass {name:?}: {e}")),
    }
}

/// How many feasible nodes to look for before scoring (upstream's adaptive
/// percentageOfNodesToScore): all of a small cluster, a shrinking share of a big one,
/// never fewer than 100.
fn feasible_nodes_to_find(nodes: usize) -> usize {
    const MIN: usize = 100;
    if nodes < MIN {
        return nodes;
    }
    let percent = 50usize.saturating_sub(nodes / 125).max(5);
    (nodes * percent / 100).max(MIN)
}

/// Filters nodes (round-robin from where the last walk stopped, until enough are
/// feasible), scores the feasible ones and picks the best. `Err` is the failure
/// message.
fn find_node(state: &mut State, reqs: &Requirements, rng: &mut StdRng) -> Result<String, String> {
    let State {
        cache, next_start, ..
    } = state;
    let node_count = cache.node_count();
    let nodes = cache.nodes();
    if node_count == 0 || nodes.is_empty() {
        return Err(diagnosis::NO_NODES.to_string());
    }
    let wanted = feasible_nodes_to_find(node_count);
    let start = *next_start % nodes.len();
    let mut feasible = Vec::with_capacity(wanted.min(nodes.len()));
    let mut diagnosis = Diagnosis::default();
    let mut processed = 0;
    for k in 0..nodes.len() {
        let i = (start + k) % nodes.len();
        processed += 1;
        let Some(spec) = nodes[i].spec.as_deref() else {
            continue;
        };
        match filter::filter(&nodes[i], spec, reqs) {
            Ok(()) => {
                feasible.push(i);
                if feasible.len() >= wanted {
                    break;
                }
            }
            Err(reasons) => diagnosis.reject(&reasons),
        }
    }
    *next_start = (start + processed) % nodes.len();
    if feasible.is_empty() {
        return Err(diagnosis.message(node_count, reqs.never_preempts));
    }
    let max_owned = reqs.info.owner.as_ref().map_or(0, |owner| {
        feasible
            .iter()
            .filter_map(|&i| nodes[i].owners.get(owner).copied())
            .max()
            .unwrap_or(0)
    });
    let scored: Vec<(usize, i64)> = feasible
        .iter()
        .filter_map(|&i| {
            let spec = nodes[i].spec.as_deref()?;
            Some((i, score::total(&nodes[i], spec, &reqs.info, max_owned)))
        })
        .collect();
    score::select(&scored, rng)
        .map(|i| nodes[i].name.clone())
        .ok_or_else(|| diagnosis.message(node_count, reqs.never_preempts))
}

/// Binds, then settles the queue and cache with the outcome.
async fn finish_binding(shared: &Shared, uid: &str, pod: &Pod, node: &str) {
    match bind::bind(&shared.client, pod, node).await {
        Ok(()) => {
            shared.lock().queue.remove(uid);
            bind::record_scheduled(&shared.events, pod, node);
        }
        Err(e) => {
            let message = format!("Binding rejected: {e}");
            tracing::warn!(
                namespace = pod.metadata.namespace.as_deref().unwrap_or(""),
                pod = pod.metadata.name.as_deref().unwrap_or(""),
                node,
                error = %e,
                "binding failed"
            );
            let retry = {
                let mut state = shared.lock();
                if state.cache.forget_assumed(uid) {
                    state.queue.cluster_changed();
                }
                match e {
                    bind::BindError::Moot(_) => {
                        state.queue.remove(uid);
                        false
                    }
                    bind::BindError::Failed(_) => state.queue.unschedulable(uid, &message),
                }
            };
            if retry {
                shared.events.record(
                    crate::controllers::events::reference(pod),
                    crate::controllers::events::EventType::Warning,
                    "FailedScheduling",
                    message,
                );
            }
            shared.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_clusters_are_sampled() {
        assert_eq!(feasible_nodes_to_find(3), 3);
        assert_eq!(feasible_nodes_to_find(100), 100);
        assert_eq!(feasible_nodes_to_find(1000), 420);
        assert_eq!(feasible_nodes_to_find(5000), 500);
        assert_eq!(feasible_nodes_to_find(200), 100);
    }
}
