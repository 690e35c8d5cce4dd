//! The ReplicaSet controller: keeps `spec.replicas` pods that match a ReplicaSet's
//! selector running, owned by it through a controller ownerReference.
//!
//! # Design (kube-controller-manager's)
//! Two watches — ReplicaSets and all pods — keep an in-memory cache: the ReplicaSets,
//! and of every pod only what this controller reads ([`PodSummary`]). A pod change
//! that matters to a ReplicaSet's status or membership (labels, controller, readiness,
//! phase, deletion) queues the ReplicaSet that controls the pod, or for an orphan every
//! ReplicaSet of its namespace whose selector matches it; a binding or any other change
//! queues nothing. [`WORKERS`] workers take ReplicaSets from a de-duplicating queue
//! ([`WorkQueue`]: one reconcile per ReplicaSet at a time, at most one per
//! [`MIN_INTERVAL`]) and reconcile from the cache, so no reconcile lists pods.
//!
//! A reconcile adopts matching orphans, releases owned pods that no longer match,
//! creates what is missing in growing parallel batches (1, 2, 4, … up to
//! [`MAX_BATCH`], upstream's slow start, so a broken template fails fast), deletes
//! the least useful surplus first (unscheduled, then not running, not ready, newest),
//! in parallel, and writes status.
//!
//! Reading a cache needs *expectations*, as upstream has them: after creating or
//! deleting pods a ReplicaSet waits until the watch has shown every one of those changes
//! (or [`EXPECTATIONS_TTL`] passed) before it creates or deletes again, or a reconcile
//! racing the watch would count the same pods twice.
//!
//! Events go through upstream's spam filter: per ReplicaSet a burst of
//! [`EVENT_BURST`], then one per [`EVENT_REFILL`], so scaling to thousands does not
//! write thousands of `SuccessfulCreate` Events.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::events::{EventType, Recorder};
use super::shared_watch::SharedWatch;
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
/// Reconciles running at once (upstream's `--concurrent-replicaset-syncs`).
const WORKERS: usize = 5;
/// The largest batch of pod creates (or deletes) issued at once (upstream's
/// burstReplicas).
const MAX_BATCH: usize = 500;
/// The shortest time between two reconciles of one ReplicaSet: a storm of pod events
/// becomes one reconcile (and at most one status write) per interval.
const MIN_INTERVAL: Duration = Duration::from_millis(50);
/// How long creates or deletes the watch has not shown yet hold a ReplicaSet back.
/// Upstream waits 5 minutes; a lost watch event is the only way to reach it.
const EXPECTATIONS_TTL: Duration = Duration::from_secs(60);
/// When to look again at a ReplicaSet that is waiting for its expectations.
const EXPECTATIONS_RECHECK: Duration = Duration::from_secs(1);
/// How often a pod create is tried when its generated name is taken.
const NAME_ATTEMPTS: u32 = 8;
/// When to retry after a failed reconcile or failed creates/deletes.
const RETRY: Duration = Duration::from_secs(1);
/// Events about one ReplicaSet allowed at once (upstream's spam filter burst)…
const EVENT_BURST: f64 = 25.0;
/// …after which one more is allowed per this interval.
const EVENT_REFILL: Duration = Duration::from_secs(300);

/// A ReplicaSet by namespace and name: the unit of work.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    namespace: String,
    name: String,
}

/// A pod's controller, when it is a ReplicaSet.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Controlled {
    name: String,
    uid: String,
}

/// What the controller keeps of a pod.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PodSummary {
    name: String,
    uid: String,
    resource_version: Option<String>,
    labels: BTreeMap<String, String>,
    owner_references: Vec<OwnerReference>,
    deleting: bool,
    /// Succeeded or Failed.
    finished: bool,
    running: bool,
    ready: bool,
    scheduled: bool,
    /// creationTimestamp in seconds.
    created: i64,
}

impl PodSummary {
    pub(crate) fn of(pod: &Pod) -> PodSummary {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        PodSummary {
            name: pod.name_any(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            resource_version: pod.metadata.resource_version.clone(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            owner_references: pod.metadata.owner_references.clone().unwrap_or_default(),
            deleting: pod.metadata.deletion_timestamp.is_some(),
            finished: matches!(phase, Some("Succeeded" | "Failed")),
            running: phase == Some("Running"),
            ready: pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
            scheduled: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_some_and(|n| !n.is_empty()),
            created: pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second())
                .unwrap_or(0),
        }
    }

    /// The controller ownerReference, whatever its kind.
    fn controller(&self) -> Option<&OwnerReference> {
        self.owner_references
            .iter()
            .find(|r| r.controller == Some(true))
    }

    /// The controller, if it is a ReplicaSet.
    fn replicaset(&self) -> Option<Controlled> {
        self.controller()
            .filter(|r| r.kind == "ReplicaSet" && r.api_version.starts_with("apps/"))
            .map(|r| Controlled {
                name: r.name.clone(),
                uid: r.uid.clone(),
            })
    }

    fn is_active(&self) -> bool {
        !self.deleting && !self.finished
    }

    /// Whether a change from `self` to `new` can change a ReplicaSet's membership or
    /// status (a binding, for one, cannot).
    fn matters(&self, new: &PodSummary) -> bool {
        self.labels != new.labels
            || self.controller() != new.controller()
            || self.deleting != new.deleting
            || self.finished != new.finished
            || self.ready != new.ready
    }

    fn selected_by(&self, selector: &LabelSelector) -> bool {
        selector.matches_with(|k| self.labels.get(k).cloned())
    }
}

/// Orders pods from least to most useful, as upstream deletes them: unscheduled before
/// scheduled, pending before running, not ready before ready, newer before older.
pub(crate) fn deletion_order(pods: &mut [Arc<PodSummary>]) {
    pods.sort_by_key(|p| {
        (
            p.scheduled,
            p.running,
            p.ready,
            std::cmp::Reverse(p.created),
        )
    });
}

/// Creates and deletes issued for one ReplicaSet that the watch has not shown yet.
#[derive(Debug)]
struct Expectations {
    adds: i64,
    deletes: HashSet<String>,
    since: Instant,
}

/// The spam filter's token bucket for one ReplicaSet.
#[derive(Debug, Clone, Copy)]
struct EventBucket {
    tokens: f64,
    at: Instant,
}

/// Everything the watches have shown, and the expectations.
#[derive(Debug, Default)]
struct Cache {
    sets: HashMap<Key, Arc<ReplicaSet>>,
    /// Namespace → pod uid → summary.
    pods: HashMap<String, HashMap<String, Arc<PodSummary>>>,
    /// By ReplicaSet uid.
    expectations: HashMap<String, Expectations>,
    /// By ReplicaSet uid.
    events: HashMap<String, EventBucket>,
    sets_synced: bool,
    pods_synced: bool,
}

fn selector_of(rs: &ReplicaSet) -> Result<LabelSelector, Error> {
    let spec = rs.spec.as_ref().map(|s| &s.selector);
    let json = serde_json::to_value(spec).unwrap_or_default();
    LabelSelector::try_from_label_selector_json(&json).map_err(Error::Selector)
}

impl Cache {
    /// The ReplicaSets of `namespace` whose selector matches an orphan `pod`.
    fn sets_selecting(&self, namespace: &str, pod: &PodSummary) -> Vec<Key> {
        self.sets
            .iter()
            .filter(|(key, _)| key.namespace == namespace)
            .filter(|(_, rs)| selector_of(rs).is_ok_and(|s| pod.selected_by(&s)))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// A pod from the watch (new or changed). Returns the ReplicaSets to reconcile.
    fn pod_applied(&mut self, pod: &Pod) -> Vec<Key> {
        let Some(uid) = pod.metadata.uid.clone() else {
            return Vec::new();
        };
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let new = Arc::new(PodSummary::of(pod));
        let old = self
            .pods
            .entry(namespace.clone())
            .or_default()
            .insert(uid.clone(), new.clone());
        let key = |name: &str| Key {
            namespace: namespace.clone(),
            name: name.to_string(),
        };
        let owner = new.replicaset();
        // Only a pod without any controller may be adopted.
        let orphan = new.controller().is_none() && !new.deleting;
        let mut keys = Vec::new();
        match old {
            None => {
                if let Some(owner) = owner {
                    if new.deleting {
                        self.deletion_observed(&owner.uid, &uid);
                    } else {
                        self.creation_observed(&owner.uid);
                    }
                    keys.push(key(&owner.name));
                } else if orphan {
                    keys = self.sets_selecting(&namespace, &new);
                }
            }
            Some(old) => {
                if old.resource_version == new.resource_version || !old.matters(&new) {
                    return keys;
                }
                if new.deleting && !old.deleting {
                    if let Some(owner) = &owner {
                        self.deletion_observed(&owner.uid, &uid);
                    }
                }
                let old_owner = old.replicaset();
                if old_owner != owner {
                    if let Some(old_owner) = &old_owner {
                        keys.push(key(&old_owner.name));
                    }
                }
                match owner {
                    Some(owner) => keys.push(key(&owner.name)),
                    None if orphan => keys.extend(self.sets_selecting(&namespace, &new)),
                    None => {}
                }
            }
        }
        keys
    }

    /// A pod the watch says is gone. Returns the ReplicaSets to reconcile.
    fn pod_deleted(&mut self, namespace: &str, uid: &str) -> Vec<Key> {
        let Some(pods) = self.pods.get_mut(namespace) else {
            return Vec::new();
        };
        let Some(old) = pods.remove(uid) else {
            return Vec::new();
        };
        if pods.is_empty() {
            self.pods.remove(namespace);
        }
        match old.replicaset() {
            Some(owner) => {
                self.deletion_observed(&owner.uid, uid);
                vec![Key {
                    namespace: namespace.to_string(),
                    name: owner.name,
                }]
            }
            None => Vec::new(),
        }
    }

    fn expect_creations(&mut self, owner: &str, n: usize) {
        let e = self.expectation(owner);
        e.adds = e.adds.max(0) + n as i64;
        e.since = Instant::now();
    }

    fn creation_observed(&mut self, owner: &str) {
        if let Some(e) = self.expectations.get_mut(owner) {
            e.adds -= 1;
        }
    }

    fn expect_deletions(&mut self, owner: &str, pods: impl IntoIterator<Item = String>) {
        let e = self.expectation(owner);
        e.deletes.extend(pods);
        e.since = Instant::now();
    }

    fn deletion_observed(&mut self, owner: &str, pod: &str) {
        if let Some(e) = self.expectations.get_mut(owner) {
            e.deletes.remove(pod);
        }
    }

    fn expectation(&mut self, owner: &str) -> &mut Expectations {
        self.expectations
            .entry(owner.to_string())
            .or_insert_with(|| Expectations {
                adds: 0,
                deletes: HashSet::new(),
                since: Instant::now(),
            })
    }

    /// Whether the watch has shown everything this ReplicaSet asked for (or waiting
    /// has gone on for too long).
    fn satisfied(&self, owner: &str) -> bool {
        match self.expectations.get(owner) {
            None => true,
            Some(e) => {
                (e.adds <= 0 && e.deletes.is_empty()) || e.since.elapsed() >= EXPECTATIONS_TTL
            }
        }
    }

    /// Takes up to `wanted` event tokens of ReplicaSet `owner`; returns how many.
    fn take_event_tokens(&mut self, owner: &str, wanted: usize) -> usize {
        let now = Instant::now();
        let bucket = self.events.entry(owner.to_string()).or_insert(EventBucket {
            tokens: EVENT_BURST,
            at: now,
        });
        let refill =
            now.saturating_duration_since(bucket.at).as_secs_f64() / EVENT_REFILL.as_secs_f64();
        bucket.tokens = (bucket.tokens + refill).min(EVENT_BURST);
        bucket.at = now;
        let granted = (bucket.tokens.floor() as usize).min(wanted);
        bucket.tokens -= granted as f64;
        granted
    }

    fn forget_set(&mut self, uid: &str) {
        self.expectations.remove(uid);
        self.events.remove(uid);
    }
}

/// The queue of ReplicaSets to reconcile, as client-go's workqueue: a key is queued at
/// most once, never reconciled by two workers at once (a change during its reconcile
/// queues it again afterwards), and not started again within [`MIN_INTERVAL`] of its
/// last reconcile.
#[derive(Debug, Default)]
struct WorkQueue {
    state: Mutex<QueueState>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct QueueState {
    /// Workers take keys only once both watches have listed everything.
    started: bool,
    ready: VecDeque<Key>,
    /// Keys in `ready` or waiting out their interval.
    queued: HashSet<Key>,
    running: HashSet<Key>,
    /// Running keys that changed meanwhile.
    dirty: HashSet<Key>,
    last_done: HashMap<Key, Instant>,
}

impl WorkQueue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(self: &Arc<Self>, key: Key) {
        let mut state = self.lock();
        if state.running.contains(&key) {
            state.dirty.insert(key);
            return;
        }
        if !state.queued.insert(key.clone()) {
            return;
        }
        let due = state.last_done.get(&key).map(|t| *t + MIN_INTERVAL);
        match due {
            Some(due) if due > Instant::now() => {
                drop(state);
                let queue = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(due).await;
                    queue.make_ready(key);
                });
            }
            _ => {
                state.ready.push_back(key);
                drop(state);
                self.notify.notify_one();
            }
        }
    }

    fn make_ready(&self, key: Key) {
        let mut state = self.lock();
        if state.queued.contains(&key) {
            state.ready.push_back(key);
            drop(state);
            self.notify.notify_one();
        }
    }

    fn add_after(self: &Arc<Self>, key: Key, delay: Duration) {
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(key);
        });
    }

    /// Lets the workers start.
    fn start(&self) {
        self.lock().started = true;
        self.notify.notify_waiters();
    }

    /// The next key to reconcile; waits for one.
    async fn get(&self) -> Key {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before looking, so a start() in between is not missed.
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if state.started {
                    if let Some(key) = state.ready.pop_front() {
                        state.queued.remove(&key);
                        state.running.insert(key.clone());
                        return key;
                    }
                }
            }
            notified.await;
        }
    }

    /// The reconcile of `key` finished.
    fn done(self: &Arc<Self>, key: &Key) {
        let mut state = self.lock();
        state.running.remove(key);
        state.last_done.insert(key.clone(), Instant::now());
        let again = state.dirty.remove(key);
        drop(state);
        if again {
            self.add(key.clone());
        }
    }

    /// Drops what is remembered about a deleted ReplicaSet.
    fn forget(&self, key: &Key) {
        let mut state = self.lock();
        state.last_done.remove(key);
        state.dirty.remove(key);
    }
}

struct Shared {
    client: kube::Client,
    recorder: Recorder,
    cache: Mutex<Cache>,
    queue: Arc<WorkQueue>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn enqueue(&self, keys: Vec<Key>) {
        for key in keys {
            self.queue.add(key);
        }
    }

    /// Records events about ReplicaSet `uid`, as many as its spam filter allows, all at
    /// once.
    async fn record(
        &self,
        uid: &str,
        reference: &ObjectReference,
        event_type: EventType,
        reason: &str,
        messages: Vec<String>,
    ) {
        let granted = self.lock().take_event_tokens(uid, messages.len());
        if granted < messages.len() {
            tracing::debug!(
                replicaset = reference.name.as_deref().unwrap_or(""),
                reason,
                dropped = messages.len() - granted,
                "event spam filter dropped events"
            );
        }
        futures::future::join_all(
            messages
                .iter()
                .take(granted)
                .map(|m| self.recorder.record(reference, event_type, reason, m)),
        )
        .await;
    }
}

/// Runs the controller until the watch streams end.
pub async fn run(client: kube::Client, pods: SharedWatch<Pod>) {
    let shared = Arc::new(Shared {
        recorder: Recorder::new(client.clone(), MANAGER),
        client,
        cache: Mutex::new(Cache::default()),
        queue: Arc::new(WorkQueue::default()),
    });
    let workers = futures::future::join_all((0..WORKERS).map(|_| worker(shared.clone())));
    tokio::join!(
        watch_sets(shared.clone()),
        watch_pods(shared.clone(), pods),
        workers
    );
}

async fn worker(shared: Arc<Shared>) {
    loop {
        let key = shared.queue.get().await;
        let requeue = match reconcile(&shared, &key).await {
            Ok(requeue) => requeue,
            Err(e) => {
                tracing::warn!(
                    namespace = %key.namespace,
                    replicaset = %key.name,
                    error = %e,
                    "reconciling replicaset failed; retrying"
                );
                Some(RETRY)
            }
        };
        shared.queue.done(&key);
        if let Some(delay) = requeue {
            shared.queue.add_after(key, delay);
        }
    }
}

fn key_of(rs: &ReplicaSet) -> Key {
    Key {
        namespace: rs.namespace().unwrap_or_default(),
        name: rs.name_any(),
    }
}

async fn watch_sets(shared: Arc<Shared>) {
    let api: Api<ReplicaSet> = Api::all(shared.client.clone());
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut relist: Option<HashSet<Key>> = None;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(error = %e, "replicaset watch failed; retrying");
                continue;
            }
        };
        let mut cache = shared.lock();
        match event {
            Event::Init => relist = Some(HashSet::new()),
            Event::InitApply(rs) | Event::Apply(rs) => {
                let key = key_of(&rs);
                if let Some(seen) = relist.as_mut() {
                    seen.insert(key.clone());
                }
                let old = cache.sets.insert(key.clone(), Arc::new(rs));
                // A ReplicaSet recreated under the same name is another one.
                if let Some(old_uid) = old.and_then(|o| o.metadata.uid.clone()) {
                    if cache.sets[&key].metadata.uid.as_ref() != Some(&old_uid) {
                        cache.forget_set(&old_uid);
                    }
                }
                drop(cache);
                shared.queue.add(key);
            }
            Event::Delete(rs) => {
                let key = key_of(&rs);
                cache.sets.remove(&key);
                cache.forget_set(rs.metadata.uid.as_deref().unwrap_or_default());
                drop(cache);
                shared.queue.forget(&key);
            }
            Event::InitDone => {
                let seen = relist.take().unwrap_or_default();
                let gone: Vec<Key> = cache
                    .sets
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                for key in &gone {
                    if let Some(rs) = cache.sets.remove(key) {
                        cache.forget_set(rs.metadata.uid.as_deref().unwrap_or_default());
                    }
                }
                cache.sets_synced = true;
                let start = cache.pods_synced;
                drop(cache);
                for key in &gone {
                    shared.queue.forget(key);
                }
                if start {
                    shared.queue.start();
                }
            }
        }
    }
}

async fn watch_pods(shared: Arc<Shared>, pods: SharedWatch<Pod>) {
    let mut stream = Box::pin(pods.subscribe());
    let mut relist: Option<HashSet<String>> = None;
    while let Some(event) = stream.next().await {
        let mut cache = shared.lock();
        let keys = match event {
            Event::Init => {
                relist = Some(HashSet::new());
                Vec::new()
            }
            Event::InitApply(pod) | Event::Apply(pod) => {
                if let (Some(seen), Some(uid)) = (relist.as_mut(), pod.metadata.uid.as_ref()) {
                    seen.insert(uid.clone());
                }
                cache.pod_applied(&pod)
            }
            Event::Delete(pod) => cache.pod_deleted(
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.uid.as_deref().unwrap_or_default(),
            ),
            Event::InitDone => {
                let seen = relist.take().unwrap_or_default();
                let gone: Vec<(String, String)> = cache
                    .pods
                    .iter()
                    .flat_map(|(ns, pods)| {
                        pods.keys()
                            .filter(|uid| !seen.contains(*uid))
                            .map(move |uid| (ns.clone(), uid.clone()))
                    })
                    .collect();
                let mut keys = Vec::new();
                for (ns, uid) in gone {
                    keys.extend(cache.pod_deleted(&ns, &uid));
                }
                cache.pods_synced = true;
                if cache.sets_synced {
                    shared.queue.start();
                }
                keys
            }
        };
        drop(cache);
        shared.enqueue(keys);
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
            owner_references: Some(vec![super::controller_ref(rs)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// The pods of one ReplicaSet's namespace, sorted out by its selector.
#[derive(Debug, Default)]
struct Membership {
    /// Controlled by the ReplicaSet and selected.
    owned: Vec<Arc<PodSummary>>,
    /// Selected, not being deleted, and controlled by nobody.
    orphans: Vec<Arc<PodSummary>>,
    /// Controlled by the ReplicaSet but no longer selected.
    released: Vec<Arc<PodSummary>>,
}

fn membership(cache: &Cache, namespace: &str, uid: &str, selector: &LabelSelector) -> Membership {
    let mut m = Membership::default();
    for pod in cache
        .pods
        .get(namespace)
        .into_iter()
        .flat_map(|p| p.values())
    {
        let selected = pod.selected_by(selector);
        match pod.controller() {
            Some(r) if r.uid == uid => {
                if selected {
                    m.owned.push(pod.clone());
                } else {
                    m.released.push(pod.clone());
                }
            }
            None if selected && !pod.deleting => m.orphans.push(pod.clone()),
            _ => {}
        }
    }
    m
}

/// One reconcile from the cache. `Ok(Some(delay))` asks for another after `delay`.
async fn reconcile(shared: &Shared, key: &Key) -> Result<Option<Duration>, Error> {
    let (rs, mut members, satisfied) = {
        let cache = shared.lock();
        let Some(rs) = cache.sets.get(key).cloned() else {
            return Ok(None);
        };
        if rs.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let selector = selector_of(&rs)?;
        let uid = rs.metadata.uid.clone().unwrap_or_default();
        let members = membership(&cache, &key.namespace, &uid, &selector);
        (rs.clone(), members, cache.satisfied(&uid))
    };
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(shared.client.clone(), &key.namespace);

    let orphans = std::mem::take(&mut members.orphans);
    members.owned.extend(adopt(&pods, &rs, orphans).await?);
    release(&pods, &uid, &members.released).await?;

    let mut active: Vec<Arc<PodSummary>> = members
        .owned
        .iter()
        .filter(|p| p.is_active())
        .cloned()
        .collect();
    let spec = rs.spec.clone().unwrap_or_default();
    let want = spec.replicas.unwrap_or(1).max(0) as usize;
    let reference = rs.object_ref(&());
    let mut requeue = None;
    if !satisfied {
        // The watch has not shown our last creates/deletes yet: counting now would
        // count them twice. Their events queue us again; this is the backstop.
        requeue = Some(EXPECTATIONS_RECHECK);
    } else if active.len() < want {
        let missing = want - active.len();
        if create_pods(shared, &rs, &pods, missing, &reference).await < missing {
            requeue = Some(RETRY);
        }
    } else if active.len() > want {
        deletion_order(&mut active);
        let surplus: Vec<Arc<PodSummary>> =
            active.iter().take(active.len() - want).cloned().collect();
        if delete_pods(shared, &uid, &pods, &surplus, &reference).await < surplus.len() {
            requeue = Some(RETRY);
        }
    }

    // Status counts what the cache shows, as upstream's does: pods just created or
    // deleted are counted when the watch shows them, which queues another reconcile.
    let ready = active.iter().filter(|p| p.ready).count() as i32;
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let fully_labeled = active
        .iter()
        .filter(|p| {
            template_labels
                .iter()
                .all(|(k, v)| p.labels.get(k) == Some(v))
        })
        .count() as i32;
    let status = ReplicaSetStatus {
        replicas: active.len() as i32,
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
        let sets: Api<ReplicaSet> = Api::namespaced(shared.client.clone(), &key.namespace);
        let patch = json!({"status": status});
        match sets
            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            // Deleted meanwhile: its watch event cleans up.
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(requeue)
}

/// Makes `rs` the controller of matching orphans. Returns the adopted pods.
async fn adopt(
    pods: &Api<Pod>,
    rs: &ReplicaSet,
    orphans: Vec<Arc<PodSummary>>,
) -> Result<Vec<Arc<PodSummary>>, Error> {
    let mut adopted = Vec::new();
    for pod in orphans {
        let mut refs = pod.owner_references.clone();
        refs.push(super::controller_ref(rs));
        // The resourceVersion makes this a compare-and-swap: a pod someone else just
        // claimed is left alone.
        let patch = json!({"metadata": {
            "ownerReferences": refs,
            "resourceVersion": pod.resource_version,
        }});
        match pods
            .patch(&pod.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(pod) => adopted.push(Arc::new(PodSummary::of(&pod))),
            // Changed since the cache saw it — perhaps adopted by us in an earlier
            // reconcile the watch has not shown yet: then it counts as ours now.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let uid = rs.metadata.uid.as_deref().unwrap_or_default();
                if let Some(fresh) = pods.get_opt(&pod.name).await? {
                    let fresh = PodSummary::of(&fresh);
                    if fresh.controller().is_some_and(|r| r.uid == uid) && !fresh.deleting {
                        adopted.push(Arc::new(fresh));
                    }
                }
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(adopted)
}

/// Removes our controller reference from pods that no longer match the selector
/// (someone relabelled them), so they leave the set instead of being counted.
async fn release(pods: &Api<Pod>, uid: &str, released: &[Arc<PodSummary>]) -> Result<(), Error> {
    for pod in released {
        let refs: Vec<&OwnerReference> = pod
            .owner_references
            .iter()
            .filter(|r| r.uid != uid)
            .collect();
        let patch = json!({"metadata": {
            "ownerReferences": refs,
            "resourceVersion": pod.resource_version,
        }});
        match pods
            .patch(&pod.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => tracing::info!(pod = %pod.name, "released pod that no longer matches"),
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Creates up to `missing` pods in parallel batches of 1, 2, 4, … up to [`MAX_BATCH`];
/// stops after the first batch with a failure (upstream's slow start). Returns how many
/// were created.
async fn create_pods(
    shared: &Shared,
    rs: &ReplicaSet,
    pods: &Api<Pod>,
    missing: usize,
    reference: &ObjectReference,
) -> usize {
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let template = pod_from_template(rs);
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    let mut created = 0;
    let mut batch = 1;
    while created < missing {
        let n = batch.min(missing - created);
        shared.lock().expect_creations(&uid, n);
        let results =
            futures::future::join_all((0..n).map(|_| create_pod(pods, &params, &template))).await;
        let mut names = Vec::with_capacity(n);
        let mut failed = None;
        for result in results {
            match result {
                Ok(pod) => names.push(pod.name_any()),
                Err(e) => {
                    // No pod will show up for this one.
                    shared.lock().creation_observed(&uid);
                    failed = Some(e);
                }
            }
        }
        created += names.len();
        let messages = names
            .iter()
            .map(|name| format!("Created pod: {name}"))
            .collect();
        shared
            .record(
                &uid,
                reference,
                EventType::Normal,
                "SuccessfulCreate",
                messages,
            )
            .await;
        if let Some(e) = failed {
            tracing::warn!(
                namespace = reference.namespace.as_deref().unwrap_or(""),
                replicaset = reference.name.as_deref().unwrap_or(""),
                error = %e,
                "creating pods failed"
            );
            let message = format!("Error creating: {e}");
            shared
                .record(
                    &uid,
                    reference,
                    EventType::Warning,
                    "FailedCreate",
                    vec![message],
                )
                .await;
            break;
        }
        batch = (batch * 2).min(MAX_BATCH);
    }
    created
}

/// Creates one pod from `template` (which has a generateName). The server picks a
/// random five-character suffix, so among thousands of pods a name is taken now and
/// then (1 in 3,000 for the 5,000th pod); such a create is tried again with a new name,
/// as kube-apiserver itself does since 1.32.
async fn create_pod(
    pods: &Api<Pod>,
    params: &PostParams,
    template: &Pod,
) -> Result<Pod, kube::Error> {
    let mut attempts = 1;
    loop {
        match pods.create(params, template).await {
            Err(kube::Error::Api(e))
                if e.code == 409 && e.reason == "AlreadyExists" && attempts < NAME_ATTEMPTS =>
            {
                attempts += 1;
            }
            result => return result,
        }
    }
}

/// Deletes `victims` in parallel batches of up to [`MAX_BATCH`]. Returns how many are
/// gone (a pod already gone counts).
async fn delete_pods(
    shared: &Shared,
    uid: &str,
    pods: &Api<Pod>,
    victims: &[Arc<PodSummary>],
    reference: &ObjectReference,
) -> usize {
    shared
        .lock()
        .expect_deletions(uid, victims.iter().map(|v| v.uid.clone()));
    let params = DeleteParams::default();
    let mut deleted = 0;
    for chunk in victims.chunks(MAX_BATCH) {
        let results =
            futures::future::join_all(chunk.iter().map(|p| pods.delete(&p.name, &params))).await;
        let mut names = Vec::new();
        let mut failed = None;
        for (pod, result) in chunk.iter().zip(results) {
            match result {
                Ok(_) => {
                    deleted += 1;
                    names.push(pod.name.clone());
                }
                Err(e) => {
                    // No deletion will show up for this one (or it already has).
                    shared.lock().deletion_observed(uid, &pod.uid);
                    match e {
                        kube::Error::Api(status) if status.code == 404 => deleted += 1,
                        e => failed = Some(e),
                    }
                }
            }
        }
        let messages = names
            .iter()
            .map(|name| format!("Deleted pod: {name}"))
            .collect();
        shared
            .record(
                uid,
                reference,
                EventType::Normal,
                "SuccessfulDelete",
                messages,
            )
            .await;
        if let Some(e) = failed {
            tracing::warn!(
                namespace = reference.namespace.as_deref().unwrap_or(""),
                replicaset = reference.name.as_deref().unwrap_or(""),
                error = %e,
                "deleting pods failed"
            );
            let message = format!("Error deleting: {e}");
            shared
                .record(
                    uid,
                    reference,
                    EventType::Warning,
                    "FailedDelete",
                    vec![message],
                )
                .await;
            break;
        }
    }
    deleted
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
                uid: Some(format!("uid-{name}")),
                namespace: Some("ns".into()),
                resource_version: Some("1".into()),
                creation_timestamp: Some(Time(
                    k8s_openapi::jiff::Timestamp::from_second(created).unwrap(),
                )),
                labels: Some(BTreeMap::from([("app".into(), "web".into())])),
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

    fn owned(mut p: Pod, rs: &str) -> Pod {
        p.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: rs.into(),
            uid: format!("uid-{rs}"),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);
        p
    }

    fn replicaset(name: &str) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "i"}]}}}
        }))
        .unwrap()
    }

    fn key(name: &str) -> Key {
        Key {
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    #[test]
    fn least_useful_pods_go_first() {
        let mut pods: Vec<Arc<PodSummary>> = [
            pod("ready-old", Some("n1"), true, 100),
            pod("ready-new", Some("n1"), true, 200),
            pod("unready", Some("n1"), false, 50),
            pod("unscheduled", None, false, 10),
        ]
        .iter()
        .map(|p| Arc::new(PodSummary::of(p)))
        .collect();
        deletion_order(&mut pods);
        let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            vec!["unscheduled", "unready", "ready-new", "ready-old"]
        );
    }

    #[test]
    fn pods_from_the_template_are_owned() {
        let rs = replicaset("web-1");
        let p = pod_from_template(&rs);
        assert_eq!(p.metadata.generate_name.as_deref(), Some("web-1-"));
        assert_eq!(p.metadata.labels.unwrap()["app"], "web");
        let r = &p.metadata.owner_references.unwrap()[0];
        assert_eq!((r.uid.as_str(), r.controller), ("uid-web-1", Some(true)));
    }

    #[test]
    fn pod_events_queue_the_controller_or_the_selecting_sets() {
        let mut cache = Cache::default();
        cache.sets.insert(key("web"), Arc::new(replicaset("web")));
        // An orphan queues the sets that select it.
        assert_eq!(
            cache.pod_applied(&pod("stray", None, false, 1)),
            vec![key("web")]
        );
        // An owned pod queues its controller; a binding alone queues nothing.
        let p = owned(pod("p1", None, false, 1), "web");
        assert_eq!(cache.pod_applied(&p), vec![key("web")]);
        let mut bound = owned(pod("p1", Some("n1"), false, 1), "web");
        bound.status = p.status.clone();
        bound.metadata.resource_version = Some("2".into());
        assert!(cache.pod_applied(&bound).is_empty());
        // Readiness matters.
        let mut ready = owned(pod("p1", Some("n1"), true, 1), "web");
        ready.metadata.resource_version = Some("3".into());
        assert_eq!(cache.pod_applied(&ready), vec![key("web")]);
        // A pod taken over by another controller queues both.
        let mut moved = owned(pod("p1", Some("n1"), true, 1), "other");
        moved.metadata.resource_version = Some("4".into());
        assert_eq!(cache.pod_applied(&moved), vec![key("web"), key("other")]);
        assert_eq!(cache.pod_deleted("ns", "uid-p1"), vec![key("other")]);
        assert!(cache.pod_deleted("ns", "uid-p1").is_empty());
        // Pods controlled by something else than a ReplicaSet are not ours to queue.
        let mut ds = owned(pod("d1", None, false, 1), "web");
        if let Some(refs) = ds.metadata.owner_references.as_mut() {
            refs[0].kind = "DaemonSet".into();
        }
        assert!(cache.pod_applied(&ds).is_empty());
    }

    #[test]
    fn expectations_wait_for_the_watch() {
        let mut cache = Cache::default();
        assert!(cache.satisfied("uid-web"));
        cache.expect_creations("uid-web", 2);
        assert!(!cache.satisfied("uid-web"));
        cache.pod_applied(&owned(pod("a", None, false, 1), "web"));
        assert!(!cache.satisfied("uid-web"));
        cache.pod_applied(&owned(pod("b", None, false, 1), "web"));
        assert!(cache.satisfied("uid-web"));
        // A relist's repeat of a known pod is not a second creation.
        cache.expect_creations("uid-web", 1);
        cache.pod_applied(&owned(pod("a", None, false, 1), "web"));
        assert!(!cache.satisfied("uid-web"));
        cache.creation_observed("uid-web");

        cache.expect_deletions("uid-web", ["uid-a".to_string(), "uid-b".to_string()]);
        assert!(!cache.satisfied("uid-web"));
        // Graceful deletion (a deletionTimestamp) counts as observed.
        let mut deleting = owned(pod("a", None, false, 1), "web");
        deleting.metadata.resource_version = Some("2".into());
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        cache.pod_applied(&deleting);
        assert!(!cache.satisfied("uid-web"));
        cache.pod_deleted("ns", "uid-b");
        assert!(cache.satisfied("uid-web"));
    }

    #[test]
    fn the_spam_filter_allows_a_burst() {
        let mut cache = Cache::default();
        assert_eq!(cache.take_event_tokens("rs", 10), 10);
        assert_eq!(
            cache.take_event_tokens("rs", 100),
            EVENT_BURST as usize - 10
        );
        assert_eq!(cache.take_event_tokens("rs", 1), 0);
        assert_eq!(cache.take_event_tokens("other", 1), 1);
        cache.forget_set("rs");
        assert_eq!(cache.take_event_tokens("rs", 1), 1);
    }

    #[tokio::test]
    async fn the_queue_runs_a_key_once_at_a_time() {
        let queue = Arc::new(WorkQueue::default());
        queue.add(key("a"));
        queue.add(key("a"));
        queue.add(key("b"));
        queue.start();
        let first = queue.get().await;
        assert_eq!(first, key("a"));
        // Changed while running: queued again only when done.
        queue.add(key("a"));
        assert_eq!(queue.get().await, key("b"));
        assert!(queue.lock().ready.is_empty());
        queue.done(&first);
        queue.done(&key("b"));
        let again = tokio::time::timeout(Duration::from_secs(5), queue.get())
            .await
            .expect("a is queued again after its interval");
        assert_eq!(again, key("a"));
        queue.done(&again);
        assert!(queue.lock().ready.is_empty());
    }
}
