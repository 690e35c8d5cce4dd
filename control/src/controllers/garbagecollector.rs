//! The garbage collector: carries out ownerReference cascades, as kube-controller-manager's
//! garbage collector does.
//!
//! Watches of every resource that can be listed, watched and deleted (found through
//! discovery, refreshed periodically so new kinds are picked up) feed a graph of
//! ownerReferences: uid → object, owner uid → dependents. Changes to the graph put object
//! uids on a work queue; a worker then looks at the object as it is *now* (a GET, so a
//! stale watch never causes a deletion) and:
//!
//! - an object whose owners are all gone (deleted, or the uid referenced never existed —
//!   checked with a GET by name and uid) is deleted; if some owner is still alive, only
//!   the dangling references are removed;
//! - an object being deleted with the `orphan` finalizer has the reference to it removed
//!   from all its dependents, then loses the finalizer;
//! - an object being deleted with the `foregroundDeletion` finalizer has its dependents
//!   deleted (in the foreground themselves when they have dependents of their own), and
//!   loses the finalizer once no dependent with `blockOwnerDeletion` remains.
//!
//! The worker only starts once every watch has listed its objects, so an owner that is
//! merely not seen yet is never taken for a missing one. Events and core Events are not
//! watched, as upstream ignores them (they are many, and never own anything).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::api::{
    Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::core::ApiResource;
use kube::discovery::{verbs, Discovery, Scope};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::json;
use tokio::sync::{mpsc, Semaphore};

use super::events::{EventType, Recorder};

/// The finalizer that makes the collector orphan an object's dependents.
pub const FINALIZER_ORPHAN: &str = "orphan";
/// The finalizer that makes the collector delete an object's dependents first.
pub const FINALIZER_FOREGROUND: &str = "foregroundDeletion";
/// The field manager and event source of the collector.
const MANAGER: &str = "garbage-collector";
/// How many objects are processed at once.
const WORKERS: usize = 8;
/// How long the worker waits for every watch to list before starting anyway.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);
/// How often discovery is re-run to find new resources.
const REDISCOVER_EVERY: Duration = Duration::from_secs(30);
/// How many confirmed-absent owner uids are remembered.
const MAX_ABSENT: usize = 10_000;

/// What can go wrong while processing one object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("api call failed: {0}")]
    Api(#[from] kube::Error),
    /// An object kept changing under a read-modify-write.
    #[error("{0} kept changing; giving up for now")]
    Contended(String),
}

/// What the graph knows about one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
    pub owners: Vec<OwnerReference>,
    pub deleting: bool,
    pub orphan_finalizer: bool,
    pub foreground_finalizer: bool,
}

impl Node {
    /// The node for an object of `api_version`/`kind`; `None` without a name or uid.
    pub fn from_meta(api_version: &str, kind: &str, meta: &ObjectMeta) -> Option<Node> {
        let has = |f: &str| {
            meta.finalizers
                .as_ref()
                .is_some_and(|fs| fs.iter().any(|x| x == f))
        };
        Some(Node {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
            namespace: meta.namespace.clone(),
            name: meta.name.clone()?,
            uid: meta.uid.clone()?,
            owners: meta.owner_references.clone().unwrap_or_default(),
            deleting: meta.deletion_timestamp.is_some(),
            orphan_finalizer: has(FINALIZER_ORPHAN),
            foreground_finalizer: has(FINALIZER_FOREGROUND),
        })
    }

    /// Being deleted and waiting for the collector (either finalizer).
    fn awaits_collector(&self) -> bool {
        self.deleting && (self.orphan_finalizer || self.foreground_finalizer)
    }

    /// Being deleted in the foreground: dependents go first.
    fn deleting_dependents(&self) -> bool {
        self.deleting && self.foreground_finalizer
    }

    fn reference(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some(self.api_version.clone()),
            kind: Some(self.kind.clone()),
            name: Some(self.name.clone()),
            namespace: self.namespace.clone(),
            uid: Some(self.uid.clone()),
            ..Default::default()
        }
    }
}

/// The ownership graph: every watched object and who depends on whom.
#[derive(Debug, Default)]
pub struct Graph {
    nodes: HashMap<String, Node>,
    /// Owner uid → uids of the objects that reference it (whether or not the owner is
    /// known: a missing owner's dependents are what the collector looks for).
    dependents: HashMap<String, HashSet<String>>,
    synced: bool,
}

impl Graph {
    pub fn node(&self, uid: &str) -> Option<&Node> {
        self.nodes.get(uid)
    }

    /// The objects that reference `uid` as an owner.
    pub fn dependents_of(&self, uid: &str) -> Vec<Node> {
        self.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| self.nodes.get(d))
            .cloned()
            .collect()
    }

    /// The dependents of `uid` whose reference to it has `blockOwnerDeletion: true`:
    /// those a foreground deletion of `uid` waits for.
    pub fn blocking_dependents(&self, uid: &str) -> Vec<Node> {
        self.dependents_of(uid)
            .into_iter()
            .filter(|d| {
                d.owners
                    .iter()
                    .any(|r| r.uid == uid && r.block_owner_deletion == Some(true))
            })
            .collect()
    }

    /// Records an added or changed object; returns the uids to process.
    pub fn upsert(&mut self, node: Node) -> Vec<String> {
        let mut work = Vec::new();
        let old = self.nodes.remove(&node.uid);
        let old_owners: Vec<String> = old
            .iter()
            .flat_map(|o| o.owners.iter().map(|r| r.uid.clone()))
            .collect();
        for owner in &old_owners {
            self.unlink(owner, &node.uid);
        }
        for r in &node.owners {
            self.dependents
                .entry(r.uid.clone())
                .or_default()
                .insert(node.uid.clone());
        }
        if node.awaits_collector() {
            work.push(node.uid.clone());
        }
        let newly_foreground =
            node.deleting_dependents() && !old.as_ref().is_some_and(Node::deleting_dependents);
        if newly_foreground {
            work.extend(
                self.dependents
                    .get(&node.uid)
                    .into_iter()
                    .flatten()
                    .cloned(),
            );
        }
        // A changed reference may unblock an owner waiting on its dependents, and a new
        // dependent of such an owner must go too.
        for owner in old_owners.iter().chain(node.owners.iter().map(|r| &r.uid)) {
            match self.nodes.get(owner) {
                Some(o) if o.awaits_collector() => {
                    work.push(owner.clone());
                    if o.deleting_dependents() {
                        work.push(node.uid.clone());
                    }
                }
                Some(_) => {}
                // Not seen: perhaps gone. Checked against the API once the graph is full.
                None if self.synced => work.push(node.uid.clone()),
                None => {}
            }
        }
        self.nodes.insert(node.uid.clone(), node);
        dedup(work)
    }

    /// Records a deleted object; returns the uids to process.
    pub fn remove(&mut self, uid: &str) -> Vec<String> {
        let mut work = Vec::new();
        let Some(node) = self.nodes.remove(uid) else {
            return work;
        };
        for r in &node.owners {
            self.unlink(&r.uid, uid);
            if self.nodes.get(&r.uid).is_some_and(Node::awaits_collector) {
                work.push(r.uid.clone());
            }
        }
        // Its dependents may now have no owner left.
        work.extend(self.dependents.get(uid).into_iter().flatten().cloned());
        dedup(work)
    }

    /// After a relist of `api_version`/`kind`: objects of it that the list did not return
    /// were deleted meanwhile. Returns the uids to process.
    pub fn retain_listed(
        &mut self,
        api_version: &str,
        kind: &str,
        listed: &HashSet<String>,
    ) -> Vec<String> {
        let gone: Vec<String> = self
            .nodes
            .values()
            .filter(|n| n.api_version == api_version && n.kind == kind && !listed.contains(&n.uid))
            .map(|n| n.uid.clone())
            .collect();
        let mut work = Vec::new();
        for uid in gone {
            work.extend(self.remove(&uid));
        }
        dedup(work)
    }

    /// Every watch has listed: from now on a missing owner is worth checking. Returns
    /// what needs processing in the graph as it stands.
    pub fn mark_synced(&mut self) -> Vec<String> {
        self.synced = true;
        let mut work = Vec::new();
        for node in self.nodes.values() {
            if node.awaits_collector() {
                work.push(node.uid.clone());
            }
            let needs_check = node
                .owners
                .iter()
                .any(|r| self.nodes.get(&r.uid).is_none_or(Node::deleting_dependents));
            if needs_check {
                work.push(node.uid.clone());
            }
        }
        dedup(work)
    }

    fn unlink(&mut self, owner: &str, dependent: &str) {
        if let Some(set) = self.dependents.get_mut(owner) {
            set.remove(dependent);
            if set.is_empty() {
                self.dependents.remove(owner);
            }
        }
    }
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    v.retain(|x| seen.insert(x.clone()));
    v
}

/// How one owner of an object stands, checked against the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerState {
    /// It exists and is not waiting for its dependents to go.
    Solid,
    /// It does not exist (or another object now has its name).
    Dangling,
    /// It is being deleted in the foreground.
    WaitingForDependents,
}

/// What to do with an object that is not being deleted, given its owners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Nothing,
    /// Remove the references to these owner uids; a live owner keeps the object.
    RemoveOwnerRefs(Vec<String>),
    /// Delete the object with this propagation.
    Delete(Propagation),
}

/// The propagation policy of a delete the collector issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Foreground,
    Orphan,
}

impl From<Propagation> for PropagationPolicy {
    fn from(p: Propagation) -> Self {
        match p {
            Propagation::Background => PropagationPolicy::Background,
            Propagation::Foreground => PropagationPolicy::Foreground,
            Propagation::Orphan => PropagationPolicy::Orphan,
        }
    }
}

/// Upstream's `attemptToDeleteItem` decision. `owners` are (owner uid, state);
/// `has_dependents` says whether anything references the object; the finalizers already
/// on it choose the policy when nothing else does.
pub fn plan(owners: &[(String, OwnerState)], has_dependents: bool, node: &Node) -> Plan {
    let not_solid: Vec<String> = owners
        .iter()
        .filter(|(_, s)| *s != OwnerState::Solid)
        .map(|(u, _)| u.clone())
        .collect();
    if not_solid.is_empty() {
        return Plan::Nothing;
    }
    if owners.iter().any(|(_, s)| *s == OwnerState::Solid) {
        return Plan::RemoveOwnerRefs(not_solid);
    }
    let waiting = owners
        .iter()
        .any(|(_, s)| *s == OwnerState::WaitingForDependents);
    if waiting && has_dependents {
        // An owner waits for this object, which must first wait for its own dependents.
        return Plan::Delete(Propagation::Foreground);
    }
    Plan::Delete(if node.orphan_finalizer {
        Propagation::Orphan
    } else if node.foreground_finalizer {
        Propagation::Foreground
    } else {
        Propagation::Background
    })
}

/// How to reach one resource, by apiVersion and kind.
#[derive(Debug, Clone)]
struct Resource {
    ar: ApiResource,
    namespaced: bool,
}

/// A deduplicating work queue of uids: a uid queued while it is being processed is
/// processed again afterwards, never twice at once.
struct Queue {
    tx: mpsc::UnboundedSender<String>,
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    queued: HashSet<String>,
    running: HashSet<String>,
    again: HashSet<String>,
    failures: HashMap<String, u32>,
}

impl Queue {
    fn add(&self, uid: String) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.running.contains(&uid) {
            st.again.insert(uid);
            return;
        }
        if st.queued.insert(uid.clone()) {
            // The receiver lives as long as the collector; a send error means shutdown.
            let _ = self.tx.send(uid);
        }
    }

    fn add_all(&self, uids: Vec<String>) {
        for uid in uids {
            self.add(uid);
        }
    }

    /// Takes `uid` off the queue to process it; false if it is already being processed
    /// (it will be processed again when that finishes).
    fn start(&self, uid: &str) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.queued.remove(uid);
        if st.running.contains(uid) {
            st.again.insert(uid.to_string());
            return false;
        }
        st.running.insert(uid.to_string());
        true
    }

    /// Marks `uid` done; returns the back-off before a retry when it failed.
    fn finish(&self, uid: &str, failed: bool) -> Option<Duration> {
        let again = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.running.remove(uid);
            let again = st.again.remove(uid);
            if failed {
                let n = st.failures.entry(uid.to_string()).or_insert(0);
                *n = (*n + 1).min(8);
                let pause = Duration::from_millis(250) * 2u32.pow(*n - 1);
                return Some(pause.min(Duration::from_secs(30)));
            }
            st.failures.remove(uid);
            again
        };
        if again {
            self.add(uid.to_string());
        }
        None
    }
}

struct Collector {
    client: kube::Client,
    graph: Mutex<Graph>,
    queue: Queue,
    /// (apiVersion, kind) → resource, for every version discovery lists.
    resources: RwLock<HashMap<(String, String), Resource>>,
    /// Owner uids confirmed not to exist (uids are never reused).
    absent: Mutex<HashSet<String>>,
    recorder: Recorder,
}

/// What the graph builder hears from discovery and the watches.
enum Change {
    /// The resources the first sync waits for (sent once, before their watches start).
    Expect(Vec<(String, String)>),
    /// One event of the watch of `api_version`/`kind`.
    Watch {
        api_version: String,
        kind: String,
        event: Box<watcher::Event<GraphMeta>>,
    },
}

/// Runs the collector until its client's API server goes away for good.
pub async fn run(client: kube::Client) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let gc = Arc::new(Collector {
        recorder: Recorder::new(client.clone(), MANAGER),
        client,
        graph: Mutex::new(Graph::default()),
        queue: Queue {
            tx,
            state: Mutex::new(QueueState::default()),
        },
        resources: RwLock::new(HashMap::new()),
        absent: Mutex::new(HashSet::new()),
    });
    let (changes_tx, changes_rx) = mpsc::channel::<Change>(4096);
    let (synced_tx, mut synced_rx) = tokio::sync::watch::channel(false);

    let discover = tokio::spawn(discover_loop(gc.clone(), changes_tx));
    let build = tokio::spawn(build_graph(gc.clone(), changes_rx, synced_tx));

    // Nothing is decided before the graph is complete.
    let _ = synced_rx.wait_for(|s| *s).await;
    tracing::info!("garbage collector synced; processing");
    let permits = Arc::new(Semaphore::new(WORKERS));
    while let Some(uid) = rx.recv().await {
        if !gc.queue.start(&uid) {
            continue;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let gc = gc.clone();
        tokio::spawn(async move {
            let result = gc.process(&uid).await;
            drop(permit);
            if let Err(e) = &result {
                tracing::warn!(uid = %uid, error = %e, "garbage collection failed; retrying");
            }
            if let Some(pause) = gc.queue.finish(&uid, result.is_err()) {
                tokio::time::sleep(pause).await;
                gc.queue.add(uid);
            }
        });
    }
    discover.abort();
    build.abort();
}

/// Discovers resources, starts a watch for each new watchable one, and repeats.
async fn discover_loop(gc: Arc<Collector>, changes: mpsc::Sender<Change>) {
    let mut watched: HashSet<(String, String)> = HashSet::new();
    let mut first = true;
    loop {
        match Discovery::new(gc.client.clone()).run().await {
            Ok(discovery) => {
                let mut all = HashMap::new();
                let mut to_watch = Vec::new();
                for group in discovery.groups() {
                    for version in group.versions() {
                        for (ar, caps) in group.versioned_resources(version) {
                            if ar.plural.contains('/') {
                                continue;
                            }
                            all.insert(
                                (ar.api_version.clone(), ar.kind.clone()),
                                Resource {
                                    ar,
                                    namespaced: caps.scope == Scope::Namespaced,
                                },
                            );
                        }
                    }
                    for (ar, caps) in group.recommended_resources() {
                        let watchable = [verbs::LIST, verbs::WATCH, verbs::DELETE]
                            .iter()
                            .all(|v| caps.supports_operation(v));
                        if watchable && !ar.plural.contains('/') && ar.plural != "events" {
                            to_watch.push(ar);
                        }
                    }
                }
                if let Ok(mut r) = gc.resources.write() {
                    *r = all;
                }
                let new: Vec<ApiResource> = to_watch
                    .into_iter()
                    .filter(|ar| watched.insert((ar.api_version.clone(), ar.kind.clone())))
                    .collect();
                if first {
                    let names = new
                        .iter()
                        .map(|ar| (ar.api_version.clone(), ar.kind.clone()))
                        .collect();
                    if changes.send(Change::Expect(names)).await.is_err() {
                        return;
                    }
                    first = false;
                }
                for ar in new {
                    tracing::debug!(resource = %ar.plural, api_version = %ar.api_version, "garbage collector watching");
                    tokio::spawn(watch_resource(gc.client.clone(), ar, changes.clone()));
                }
            }
            Err(e) => tracing::warn!(error = %e, "garbage collector discovery failed"),
        }
        tokio::time::sleep(if first {
            Duration::from_secs(1)
        } else {
            REDISCOVER_EVERY
        })
        .await;
    }
}

/// Forwards one resource's watch events to the graph builder. The graph needs only
/// metadata, so the watch asks for PartialObjectMetadata, as kube-controller-manager's
/// metadata informers do: every pod change would otherwise be decoded whole here.
async fn watch_resource(client: kube::Client, ar: ApiResource, changes: mpsc::Sender<Change>) {
    let api: Api<GraphMeta> = Api::all_with(client, &ar);
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(event) => {
                let change = Change::Watch {
                    api_version: ar.api_version.clone(),
                    kind: ar.kind.clone(),
                    event: Box::new(event),
                };
                if changes.send(change).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(resource = %ar.plural, error = %e, "garbage collector watch error")
            }
        }
    }
}

/// An object's PartialObjectMetadata as the graph reads it: the identity, owners,
/// finalizers and deletion mark. The rest of the metadata — managedFields, labels,
/// annotations, most of what a metadata event carries — is skipped while decoding, not
/// built (with every pod change going through this watch, it was most of its cost).
#[derive(Clone, Debug, Default)]
struct GraphMeta {
    metadata: ObjectMeta,
}

impl<'de> serde::Deserialize<'de> for GraphMeta {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        struct Object {
            #[serde(default)]
            metadata: Metadata,
        }
        #[derive(serde::Deserialize, Default)]
        #[serde(rename_all = "camelCase", default)]
        struct Metadata {
            name: Option<String>,
            namespace: Option<String>,
            uid: Option<String>,
            resource_version: Option<String>,
            owner_references: Option<Vec<OwnerReference>>,
            finalizers: Option<Vec<String>>,
            deletion_timestamp: Option<Time>,
        }
        let m = Object::deserialize(d)?.metadata;
        Ok(GraphMeta {
            metadata: ObjectMeta {
                name: m.name,
                namespace: m.namespace,
                uid: m.uid,
                resource_version: m.resource_version,
                owner_references: m.owner_references,
                finalizers: m.finalizers,
                deletion_timestamp: m.deletion_timestamp,
                ..ObjectMeta::default()
            },
        })
    }
}

impl kube::Resource for GraphMeta {
    type DynamicType = ApiResource;
    type Scope = kube::core::DynamicResourceScope;

    /// Requests ask for PartialObjectMetadata, as for `PartialObjectMeta<K>`.
    fn metadata_api() -> bool {
        true
    }

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }

    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }

    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }

    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Applies watch events to the graph and queues what they make worth processing; flips
/// `synced` once every resource has been listed (or after [`SYNC_TIMEOUT`]).
async fn build_graph(
    gc: Arc<Collector>,
    mut changes: mpsc::Receiver<Change>,
    synced: tokio::sync::watch::Sender<bool>,
) {
    let mut expected: Option<HashSet<(String, String)>> = None;
    let mut listed_once: HashSet<(String, String)> = HashSet::new();
    // The uids of each resource's relist in progress.
    let mut relists: HashMap<(String, String), HashSet<String>> = HashMap::new();
    let deadline = tokio::time::sleep(SYNC_TIMEOUT);
    tokio::pin!(deadline);
    loop {
        let change = tokio::select! {
            c = changes.recv() => match c {
                Some(c) => c,
                None => return,
            },
            _ = &mut deadline, if !*synced.borrow() => {
                tracing::warn!(
                    waiting_for = ?expected.as_ref().map(|e| e.difference(&listed_once).count()),
                    "not every watch has listed yet; garbage collecting anyway"
                );
                let work = lock(&gc.graph).mark_synced();
                gc.queue.add_all(work);
                let _ = synced.send(true);
                continue;
            }
        };
        let work = match change {
            Change::Expect(names) => {
                expected = Some(names.into_iter().collect());
                Vec::new()
            }
            Change::Watch {
                api_version,
                kind,
                event,
            } => {
                let key = (api_version, kind);
                match *event {
                    watcher::Event::Init => {
                        relists.insert(key, HashSet::new());
                        Vec::new()
                    }
                    watcher::Event::InitApply(obj) => {
                        let node = Node::from_meta(&key.0, &key.1, &obj.metadata);
                        match node {
                            Some(node) => {
                                relists.entry(key).or_default().insert(node.uid.clone());
                                lock(&gc.graph).upsert(node)
                            }
                            None => Vec::new(),
                        }
                    }
                    watcher::Event::InitDone => {
                        let listed = relists.remove(&key).unwrap_or_default();
                        let work = lock(&gc.graph).retain_listed(&key.0, &key.1, &listed);
                        listed_once.insert(key);
                        work
                    }
                    watcher::Event::Apply(obj) => {
                        match Node::from_meta(&key.0, &key.1, &obj.metadata) {
                            Some(node) => lock(&gc.graph).upsert(node),
                            None => Vec::new(),
                        }
                    }
                    watcher::Event::Delete(obj) => match obj.metadata.uid.as_deref() {
                        Some(uid) => lock(&gc.graph).remove(uid),
                        None => Vec::new(),
                    },
                }
            }
        };
        gc.queue.add_all(work);
        let all_listed = expected
            .as_ref()
            .is_some_and(|e| e.iter().all(|k| listed_once.contains(k)));
        if all_listed && !*synced.borrow() {
            let work = lock(&gc.graph).mark_synced();
            gc.queue.add_all(work);
            let _ = synced.send(true);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Collector {
    fn resource(&self, api_version: &str, kind: &str) -> Option<Resource> {
        let resources = self.resources.read().unwrap_or_else(|e| e.into_inner());
        resources
            .get(&(api_version.to_string(), kind.to_string()))
            .cloned()
    }

    fn api(&self, res: &Resource, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace.filter(|_| res.namespaced) {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &res.ar),
            None => Api::all_with(self.client.clone(), &res.ar),
        }
    }

    /// The live object behind `node`, if it still exists with the same uid.
    async fn latest(
        &self,
        node: &Node,
    ) -> Result<Option<(Api<DynamicObject>, DynamicObject)>, Error> {
        let Some(res) = self.resource(&node.api_version, &node.kind) else {
            return Ok(None);
        };
        let api = self.api(&res, node.namespace.as_deref());
        match api.get_opt(&node.name).await? {
            Some(obj) if obj.metadata.uid.as_deref() == Some(node.uid.as_str()) => {
                Ok(Some((api, obj)))
            }
            _ => Ok(None),
        }
    }

    /// Processes one object: see the module docs.
    async fn process(&self, uid: &str) -> Result<(), Error> {
        let Some(node) = lock(&self.graph).node(uid).cloned() else {
            return Ok(());
        };
        let result = self.process_node(&node).await;
        if let Err(e) = &result {
            self.recorder
                .record(
                    &node.reference(),
                    EventType::Warning,
                    "GarbageCollectionFailed",
                    &e.to_string(),
                )
                .await;
        }
        result
    }

    async fn process_node(&self, node: &Node) -> Result<(), Error> {
        let Some((api, latest)) = self.latest(node).await? else {
            // Gone already: its deletion event updates the graph.
            return Ok(());
        };
        let live = Node::from_meta(&node.api_version, &node.kind, &latest.metadata)
            .unwrap_or_else(|| node.clone());
        if live.deleting {
            if live.orphan_finalizer {
                return self.orphan_dependents(&api, &live).await;
            }
            if live.foreground_finalizer {
                return self.delete_dependents_first(&api, &live).await;
            }
            return Ok(());
        }
        if live.owners.is_empty() {
            return Ok(());
        }
        let mut states = Vec::with_capacity(live.owners.len());
        for r in &live.owners {
            states.push((r.uid.clone(), self.owner_state(r, &live).await?));
        }
        let has_dependents = !lock(&self.graph).dependents_of(&live.uid).is_empty();
        match plan(&states, has_dependents, &live) {
            Plan::Nothing => Ok(()),
            Plan::RemoveOwnerRefs(uids) => {
                tracing::info!(kind = %live.kind, namespace = live.namespace.as_deref().unwrap_or(""), name = %live.name, owners = ?uids, "removing references to owners that are gone");
                self.remove_owner_refs(&live, &uids).await
            }
            Plan::Delete(policy) => {
                tracing::info!(kind = %live.kind, namespace = live.namespace.as_deref().unwrap_or(""), name = %live.name, ?policy, "deleting object whose owners are gone");
                let params = DeleteParams {
                    propagation_policy: Some(policy.into()),
                    preconditions: Some(Preconditions {
                        uid: Some(live.uid.clone()),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                match api.delete(&live.name, &params).await {
                    Ok(_) => Ok(()),
                    // Gone, or replaced by another object of that name.
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Whether the owner `r` of `dependent` exists, checked against the API.
    async fn owner_state(&self, r: &OwnerReference, dependent: &Node) -> Result<OwnerState, Error> {
        if lock(&self.absent).contains(&r.uid) {
            return Ok(OwnerState::Dangling);
        }
        let Some(res) = self.resource(&r.api_version, &r.kind) else {
            // An unknown kind is never taken for a missing owner: deleting on a
            // discovery hiccup would be irreversible.
            tracing::debug!(api_version = %r.api_version, kind = %r.kind, "owner kind not served");
            return Ok(OwnerState::Solid);
        };
        if res.namespaced && dependent.namespace.is_none() {
            // A cluster-scoped object cannot be owned by a namespaced one.
            self.recorder
                .record(
                    &dependent.reference(),
                    EventType::Warning,
                    "OwnerRefInvalidNamespace",
                    &format!(
                        "ownerRef [{}, namespace: , name: {}, uid: {}] does not exist in namespace \"\"",
                        r.kind, r.name, r.uid
                    ),
                )
                .await;
            return Ok(OwnerState::Dangling);
        }
        let api = self.api(&res, dependent.namespace.as_deref());
        match api.get_opt(&r.name).await? {
            Some(owner) if owner.metadata.uid.as_deref() == Some(r.uid.as_str()) => {
                let deleting_dependents = owner.metadata.deletion_timestamp.is_some()
                    && owner
                        .metadata
                        .finalizers
                        .as_ref()
                        .is_some_and(|f| f.iter().any(|x| x == FINALIZER_FOREGROUND));
                Ok(if deleting_dependents {
                    OwnerState::WaitingForDependents
                } else {
                    OwnerState::Solid
                })
            }
            _ => {
                let mut absent = lock(&self.absent);
                if absent.len() >= MAX_ABSENT {
                    absent.clear();
                }
                absent.insert(r.uid.clone());
                Ok(OwnerState::Dangling)
            }
        }
    }

    /// `orphan`: every dependent loses its reference to `owner`, then the finalizer goes.
    async fn orphan_dependents(&self, api: &Api<DynamicObject>, owner: &Node) -> Result<(), Error> {
        let dependents = lock(&self.graph).dependents_of(&owner.uid);
        for d in &dependents {
            self.remove_owner_refs(d, std::slice::from_ref(&owner.uid))
                .await?;
        }
        tracing::info!(kind = %owner.kind, namespace = owner.namespace.as_deref().unwrap_or(""), name = %owner.name, orphaned = dependents.len(), "dependents orphaned");
        self.remove_finalizer(api, owner, FINALIZER_ORPHAN).await
    }

    /// `foregroundDeletion`: dependents are deleted (by their own processing, queued
    /// here); the finalizer goes once none that blocks its owner remains.
    async fn delete_dependents_first(
        &self,
        api: &Api<DynamicObject>,
        owner: &Node,
    ) -> Result<(), Error> {
        let (blocking, waiting) = {
            let graph = lock(&self.graph);
            let waiting: Vec<String> = graph
                .dependents_of(&owner.uid)
                .into_iter()
                .filter(|d| !d.deleting)
                .map(|d| d.uid)
                .collect();
            (graph.blocking_dependents(&owner.uid).len(), waiting)
        };
        if blocking == 0 {
            tracing::info!(kind = %owner.kind, namespace = owner.namespace.as_deref().unwrap_or(""), name = %owner.name, "dependents gone; finishing foreground deletion");
            return self
                .remove_finalizer(api, owner, FINALIZER_FOREGROUND)
                .await;
        }
        self.queue.add_all(waiting);
        Ok(())
    }

    /// Removes the references to `owners` from `node` (a read-modify-write with the
    /// resourceVersion as precondition, retried on conflict).
    async fn remove_owner_refs(&self, node: &Node, owners: &[String]) -> Result<(), Error> {
        let Some(res) = self.resource(&node.api_version, &node.kind) else {
            return Ok(());
        };
        let api = self.api(&res, node.namespace.as_deref());
        for _ in 0..5 {
            let Some(obj) = api.get_opt(&node.name).await? else {
                return Ok(());
            };
            if obj.metadata.uid.as_deref() != Some(node.uid.as_str()) {
                return Ok(());
            }
            let refs = obj.metadata.owner_references.clone().unwrap_or_default();
            let kept: Vec<&OwnerReference> =
                refs.iter().filter(|r| !owners.contains(&r.uid)).collect();
            if kept.len() == refs.len() {
                return Ok(());
            }
            let patch = json!({"metadata": {
                "ownerReferences": if kept.is_empty() { json!(null) } else { json!(kept) },
                "resourceVersion": obj.metadata.resource_version,
            }});
            match api
                .patch(&node.name, &patch_params(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Contended(format!("{} {}", node.kind, node.name)))
    }

    /// Removes `finalizer` from the live `owner` (the API server then deletes it when no
    /// finalizer is left).
    async fn remove_finalizer(
        &self,
        api: &Api<DynamicObject>,
        owner: &Node,
        finalizer: &str,
    ) -> Result<(), Error> {
        for _ in 0..5 {
            let Some(obj) = api.get_opt(&owner.name).await? else {
                return Ok(());
            };
            if obj.metadata.uid.as_deref() != Some(owner.uid.as_str()) {
                return Ok(());
            }
            let finalizers = obj.metadata.finalizers.clone().unwrap_or_default();
            if !finalizers.iter().any(|f| f == finalizer) {
                return Ok(());
            }
            let kept: Vec<&String> = finalizers.iter().filter(|f| *f != finalizer).collect();
            let patch = json!({"metadata": {
                "finalizers": if kept.is_empty() { json!(null) } else { json!(kept) },
                "resourceVersion": obj.metadata.resource_version,
            }});
            match api
                .patch(&owner.name, &patch_params(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Contended(format!("{} {}", owner.kind, owner.name)))
    }
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER.to_string()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_metadata_keeps_what_the_graph_reads() {
        use kube::Resource as _;
        let text = json!({
            "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": {
                "name": "web-1", "namespace": "prod", "uid": "u1", "resourceVersion": "42",
                "labels": {"app": "web"}, "annotations": {"a": "b"},
                "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "web", "uid": "rs1", "controller": true}],
                "finalizers": ["foregroundDeletion"],
                "deletionTimestamp": "2025-01-01T00:00:00Z",
            }
        });
        let m: GraphMeta = serde_json::from_value(text).expect("decodes");
        assert!(GraphMeta::metadata_api(), "requests ask for metadata only");
        let node = Node::from_meta("v1", "Pod", m.meta()).expect("a node");
        assert_eq!((node.name.as_str(), node.uid.as_str()), ("web-1", "u1"));
        assert_eq!(node.namespace.as_deref(), Some("prod"));
        assert_eq!(node.owners.len(), 1);
        assert_eq!(node.owners[0].uid, "rs1");
        assert!(node.deleting_dependents());
        assert_eq!(m.metadata.resource_version.as_deref(), Some("42"));
        assert!(m.metadata.managed_fields.is_none() && m.metadata.labels.is_none());
        let bare: GraphMeta = serde_json::from_value(json!({"kind": "X"})).expect("decodes");
        assert!(Node::from_meta("v1", "X", &bare.metadata).is_none());
    }

    fn owner_ref(uid: &str, block: bool) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: format!("rs-{uid}"),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(block),
        }
    }

    fn node(uid: &str, owners: Vec<OwnerReference>) -> Node {
        Node {
            api_version: "v1".into(),
            kind: "Pod".into(),
            namespace: Some("default".into()),
            name: format!("pod-{uid}"),
            uid: uid.into(),
            owners,
            deleting: false,
            orphan_finalizer: false,
            foreground_finalizer: false,
        }
    }

    fn owner(uid: &str) -> Node {
        Node {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: format!("rs-{uid}"),
            ..node(uid, vec![])
        }
    }

    #[test]
    fn dependents_follow_owner_references() {
        let mut g = Graph::default();
        g.upsert(owner("o"));
        g.upsert(node("a", vec![owner_ref("o", true)]));
        g.upsert(node("b", vec![owner_ref("o", false)]));
        let mut deps: Vec<String> = g.dependents_of("o").into_iter().map(|n| n.uid).collect();
        deps.sort();
        assert_eq!(deps, ["a", "b"]);
        assert_eq!(g.blocking_dependents("o").len(), 1);
        // Dropping the reference unlinks it.
        g.upsert(node("a", vec![]));
        assert_eq!(g.dependents_of("o").len(), 1);
        assert!(g.blocking_dependents("o").is_empty());
    }

    #[test]
    fn deleting_an_owner_queues_its_dependents() {
        let mut g = Graph::default();
        g.mark_synced();
        g.upsert(owner("o"));
        assert!(g.upsert(node("a", vec![owner_ref("o", true)])).is_empty());
        assert_eq!(g.remove("o"), ["a"]);
        // The dependents stay indexed under the missing owner.
        assert_eq!(g.dependents_of("o").len(), 1);
    }

    #[test]
    fn unknown_owner_is_checked_only_once_synced() {
        let mut g = Graph::default();
        assert!(g
            .upsert(node("a", vec![owner_ref("ghost", false)]))
            .is_empty());
        assert_eq!(g.mark_synced(), ["a"]);
        assert_eq!(g.upsert(node("b", vec![owner_ref("ghost", false)])), ["b"]);
    }

    #[test]
    fn foreground_owner_queues_itself_and_dependents() {
        let mut g = Graph::default();
        g.mark_synced();
        g.upsert(owner("o"));
        g.upsert(node("a", vec![owner_ref("o", true)]));
        let mut deleting = owner("o");
        deleting.deleting = true;
        deleting.foreground_finalizer = true;
        let mut work = g.upsert(deleting);
        work.sort();
        assert_eq!(work, ["a", "o"]);
        // The dependent's deletion brings the owner back to check for the finalizer.
        assert_eq!(g.remove("a"), ["o"]);
        assert!(g.blocking_dependents("o").is_empty());
    }

    #[test]
    fn orphan_owner_is_queued() {
        let mut g = Graph::default();
        g.mark_synced();
        let mut o = owner("o");
        o.deleting = true;
        o.orphan_finalizer = true;
        assert_eq!(g.upsert(o), ["o"]);
    }

    #[test]
    fn relist_removes_what_is_gone() {
        let mut g = Graph::default();
        g.mark_synced();
        g.upsert(owner("o"));
        g.upsert(node("a", vec![owner_ref("o", true)]));
        let listed: HashSet<String> = HashSet::new();
        assert_eq!(g.retain_listed("apps/v1", "ReplicaSet", &listed), ["a"]);
        assert!(g.node("o").is_none());
        assert!(g.node("a").is_some());
    }

    #[test]
    fn plan_follows_upstream() {
        use OwnerState::*;
        let n = node("a", vec![]);
        let s = |v: &[(&str, OwnerState)]| -> Vec<(String, OwnerState)> {
            v.iter().map(|(u, s)| (u.to_string(), *s)).collect()
        };
        assert_eq!(plan(&s(&[("o", Solid)]), false, &n), Plan::Nothing);
        assert_eq!(plan(&[], false, &n), Plan::Nothing);
        assert_eq!(
            plan(&s(&[("o", Dangling)]), false, &n),
            Plan::Delete(Propagation::Background)
        );
        assert_eq!(
            plan(
                &s(&[("o", Solid), ("p", Dangling), ("q", WaitingForDependents)]),
                true,
                &n
            ),
            Plan::RemoveOwnerRefs(vec!["p".into(), "q".into()])
        );
        assert_eq!(
            plan(&s(&[("o", WaitingForDependents)]), true, &n),
            Plan::Delete(Propagation::Foreground)
        );
        assert_eq!(
            plan(&s(&[("o", WaitingForDependents)]), false, &n),
            Plan::Delete(Propagation::Background)
        );
        let mut orphaning = n.clone();
        orphaning.orphan_finalizer = true;
        assert_eq!(
            plan(&s(&[("o", Dangling)]), false, &orphaning),
            Plan::Delete(Propagation::Orphan)
        );
    }

    #[test]
    fn queue_never_runs_a_uid_twice_at_once() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let q = Queue {
            tx,
            state: Mutex::new(QueueState::default()),
        };
        q.add("a".into());
        q.add("a".into());
        assert_eq!(rx.try_recv().ok().as_deref(), Some("a"));
        assert!(rx.try_recv().is_err());
        assert!(q.start("a"));
        q.add("a".into());
        assert!(rx.try_recv().is_err(), "queued again only once finished");
        assert_eq!(q.finish("a", false), None);
        assert_eq!(rx.try_recv().ok().as_deref(), Some("a"));
        assert!(q.start("a"));
        assert!(q.finish("a", true).is_some());
    }
}
