//! The proxier: the single writer of the proxy's state. It keeps the Services,
//! EndpointSlices and Nodes it is told about, and on [`Proxier::sync`] turns the
//! Services that changed into targets (endpoint snapshots) and frontends (listening
//! sockets), opening, re-targeting and closing listeners. Binds that fail are retried
//! with back-off ([`Proxier::retry_binds`]). Everything the data path needs is in
//! [`Shared`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::balancer::{Slot, Snapshot, Target};
use crate::metrics::{inc, Metrics};
use crate::model::{self, FrontendKey, NodeInfo, ObjectKey, Protocol, TargetKey};
use crate::workers::Workers;
use crate::{tcp, tunnel, udp, ProxyOptions};

/// The first retry of a failed bind comes this soon (a listener just closed by another
/// Service may still be going away); later ones back off to [`MAX_BIND_BACKOFF`].
const FIRST_BIND_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BIND_BACKOFF: Duration = Duration::from_secs(5);

/// The addresses this node's tunnel listener may forward to.
pub(crate) type LocalEndpoints = Arc<HashSet<(Protocol, SocketAddr)>>;

/// What the data path (listeners, connections, the tunnel) shares.
pub(crate) struct Shared {
    pub node_name: String,
    pub node_ip: IpAddr,
    pub connect_timeout: Duration,
    pub udp_idle_timeout: Duration,
    pub cluster_cidr: Option<IpNet>,
    pub dialer: tunnel::Dialer,
    /// The data path's threads: TCP frontends and the tunnel listener accept on them.
    pub workers: Workers,
    pub metrics: Metrics,
    /// Cancelled when the proxy stops: every listener and connection ends.
    pub stop: CancellationToken,
    /// This node's endpoints, for the tunnel listener; a watch so that a tunnel request
    /// that races the EndpointSlice update can wait for it.
    pub local_endpoints: watch::Sender<LocalEndpoints>,
    synced: AtomicBool,
}

impl Shared {
    pub(crate) fn new(
        options: &ProxyOptions,
        dialer: tunnel::Dialer,
        workers: Workers,
        stop: CancellationToken,
    ) -> Shared {
        Shared {
            node_name: options.node_name.clone(),
            node_ip: options.node_ip,
            connect_timeout: options.connect_timeout,
            udp_idle_timeout: options.udp_idle_timeout,
            cluster_cidr: options.cluster_cidr,
            dialer,
            workers,
            metrics: Metrics::default(),
            stop,
            local_endpoints: watch::channel(Arc::new(HashSet::new())).0,
            synced: AtomicBool::new(false),
        }
    }

    /// Whether a full view of the API has been applied.
    pub(crate) fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }
}

enum FrontendState {
    Open {
        slot: Arc<Slot>,
        stop: CancellationToken,
    },
    Failed {
        failures: u32,
        retry_at: Instant,
    },
}

struct Frontend {
    owner: ObjectKey,
    target: TargetKey,
    state: FrontendState,
}

/// Whether a bind failed because the address is not one of this node's: an external IP
/// or load balancer address that another node has. Not an error; the bind is retried
/// (with the usual backoff) in case the address comes.
fn not_here(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::AddrNotAvailable
}

/// See the module docs.
pub(crate) struct Proxier {
    shared: Arc<Shared>,
    services: HashMap<ObjectKey, Service>,
    slices: HashMap<ObjectKey, EndpointSlice>,
    /// Slice keys per Service key.
    slices_of: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    nodes: HashMap<String, NodeInfo>,
    local_by_slice: HashMap<ObjectKey, Vec<(Protocol, SocketAddr)>>,
    local_dirty: bool,
    dirty: BTreeSet<ObjectKey>,
    all_dirty: bool,
    targets: HashMap<TargetKey, Arc<Target>>,
    frontends: HashMap<FrontendKey, Frontend>,
    /// Frontends per owning Service.
    owned: HashMap<ObjectKey, Vec<FrontendKey>>,
    /// Services that want a frontend another Service still holds.
    waiting: HashMap<FrontendKey, ObjectKey>,
}

impl Proxier {
    pub(crate) fn new(shared: Arc<Shared>) -> Proxier {
        Proxier {
            shared,
            services: HashMap::new(),
            slices: HashMap::new(),
            slices_of: HashMap::new(),
            nodes: HashMap::new(),
            local_by_slice: HashMap::new(),
            local_dirty: false,
            dirty: BTreeSet::new(),
            all_dirty: false,
            targets: HashMap::new(),
            frontends: HashMap::new(),
            owned: HashMap::new(),
            waiting: HashMap::new(),
        }
    }

    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub(crate) fn apply_service(&mut self, svc: Service) {
        let key = ObjectKey::of(&svc.metadata);
        self.dirty.insert(key.clone());
        self.services.insert(key, svc);
    }

    pub(crate) fn delete_service(&mut self, key: &ObjectKey) {
        self.services.remove(key);
        self.dirty.insert(key.clone());
    }

    /// A re-list: the complete set of Services.
    pub(crate) fn replace_services(&mut self, all: Vec<Service>) {
        let fresh: HashMap<ObjectKey, Service> = all
            .into_iter()
            .map(|s| (ObjectKey::of(&s.metadata), s))
            .collect();
        self.dirty.extend(self.services.keys().cloned());
        self.dirty.extend(fresh.keys().cloned());
        self.services = fresh;
    }

    pub(crate) fn apply_slice(&mut self, slice: EndpointSlice) {
        let key = ObjectKey::of(&slice.metadata);
        self.remove_slice(&key);
        if let Some(svc) = model::slice_service(&slice) {
            self.dirty.insert(svc.clone());
            self.slices_of.entry(svc).or_default().insert(key.clone());
        }
        let local = model::local_endpoints(&slice, &self.shared.node_name);
        if !local.is_empty() {
            self.local_by_slice.insert(key.clone(), local);
            self.local_dirty = true;
        }
        self.slices.insert(key, slice);
    }

    pub(crate) fn delete_slice(&mut self, key: &ObjectKey) {
        self.remove_slice(key);
    }

    /// A re-list: the complete set of EndpointSlices.
    pub(crate) fn replace_slices(&mut self, all: Vec<EndpointSlice>) {
        let old: Vec<ObjectKey> = self.slices.keys().cloned().collect();
        for key in old {
            self.remove_slice(&key);
        }
        for s in all {
            self.apply_slice(s);
        }
    }

    fn remove_slice(&mut self, key: &ObjectKey) {
        if let Some(old) = self.slices.remove(key) {
            if let Some(svc) = model::slice_service(&old) {
                if let Some(set) = self.slices_of.get_mut(&svc) {
                    set.remove(key);
                    if set.is_empty() {
                        self.slices_of.remove(&svc);
                    }
                }
                self.dirty.insert(svc);
            }
        }
        if self.local_by_slice.remove(key).is_some() {
            self.local_dirty = true;
        }
    }

    pub(crate) fn apply_node(&mut self, node: &Node) {
        let Some(name) = node.metadata.name.clone() else {
            return;
        };
        let info = NodeInfo::of(node);
        if self.nodes.get(&name) != Some(&info) {
            self.nodes.insert(name, info);
            // Routes to that node's endpoints change; Services are few enough to redo.
            self.all_dirty = true;
        }
    }

    pub(crate) fn delete_node(&mut self, name: &str) {
        if self.nodes.remove(name).is_some() {
            self.all_dirty = true;
        }
    }

    /// A re-list: the complete set of Nodes.
    pub(crate) fn replace_nodes(&mut self, all: &[Node]) {
        let fresh: HashMap<String, NodeInfo> = all
            .iter()
            .filter_map(|n| Some((n.metadata.name.clone()?, NodeInfo::of(n))))
            .collect();
        if fresh != self.nodes {
            self.nodes = fresh;
            self.all_dirty = true;
        }
    }

    /// Marks the proxy healthy: a full view of the API has been applied.
    pub(crate) fn mark_synced(&self) {
        self.shared.synced.store(true, Ordering::Release);
    }

    /// Applies every change since the last sync.
    pub(crate) fn sync(&mut self) {
        if self.local_dirty {
            let set: HashSet<(Protocol, SocketAddr)> =
                self.local_by_slice.values().flatten().copied().collect();
            self.shared.local_endpoints.send_replace(Arc::new(set));
            self.local_dirty = false;
        }
        if std::mem::take(&mut self.all_dirty) {
            self.dirty.extend(self.services.keys().cloned());
            self.dirty.extend(self.owned.keys().cloned());
        }
        // A Service may wait for a frontend another one releases in this same sync: go
        // round again for those (bounded, so a conflict can never spin).
        for _ in 0..3 {
            let dirty = std::mem::take(&mut self.dirty);
            if dirty.is_empty() {
                break;
            }
            for key in dirty {
                self.sync_service(&key);
            }
        }
        inc(&self.shared.metrics.syncs);
    }

    fn sync_service(&mut self, key: &ObjectKey) {
        let shared = self.shared.clone();
        let desired = match self.services.get(key) {
            Some(svc) => {
                let slices = self.slices_of.get(key);
                let iter = slices
                    .into_iter()
                    .flatten()
                    .filter_map(|k| self.slices.get(k));
                model::desired(svc, iter, &self.nodes, &shared.node_name, shared.node_ip)
            }
            None => model::DesiredService::default(),
        };

        let mut wanted_targets = HashSet::new();
        for t in desired.targets {
            let target = self.targets.entry(t.key.clone()).or_insert_with(|| {
                Arc::new(Target::new(t.key.clone(), shared.metrics.port(&t.key.port)))
            });
            let next = Snapshot {
                endpoints: t.endpoints,
                affinity: t.affinity,
                source: t.source,
            };
            if target.update(next) {
                let snap = target.snapshot();
                tracing::debug!(
                    port = %t.key.port,
                    local_only = t.key.local_only,
                    endpoints = snap.endpoints.len(),
                    "endpoints changed"
                );
            }
            wanted_targets.insert(t.key);
        }

        let wanted: HashMap<FrontendKey, TargetKey> = desired.frontends.into_iter().collect();
        for fk in self.owned.remove(key).unwrap_or_default() {
            if !wanted.contains_key(&fk) {
                self.close(&fk);
            }
        }
        let mut owned = Vec::new();
        for (fk, tk) in wanted {
            match self.frontends.get_mut(&fk) {
                Some(f) if f.owner == *key => {
                    if f.target != tk {
                        if let (FrontendState::Open { slot, .. }, Some(t)) =
                            (&f.state, self.targets.get(&tk))
                        {
                            slot.set(t.clone());
                        }
                        f.target = tk;
                    }
                    owned.push(fk);
                }
                Some(f) => {
                    if self.waiting.insert(fk, key.clone()).is_none() {
                        tracing::warn!(frontend = %fk, service = %key, holder = %f.owner, "the address is held by another Service; waiting for it");
                    }
                }
                None => {
                    self.open(fk, tk, key.clone());
                    owned.push(fk);
                }
            }
        }
        if !owned.is_empty() {
            self.owned.insert(key.clone(), owned);
        }
        self.targets
            .retain(|k, _| k.port.service != *key || wanted_targets.contains(k));
        let targets = &self.targets;
        if !self.services.contains_key(key) || wanted_targets.is_empty() {
            shared
                .metrics
                .retain_ports(|id| id.service != *key || targets.keys().any(|t| t.port == *id));
        }
    }

    fn open(&mut self, fk: FrontendKey, tk: TargetKey, owner: ObjectKey) {
        let state = match self.bind(&fk, &tk) {
            Ok(state) => state,
            Err(e) if not_here(&e) => {
                tracing::info!(frontend = %fk, service = %owner, "not an address of this node; listening once it is one");
                FrontendState::Failed {
                    failures: 1,
                    retry_at: Instant::now() + FIRST_BIND_BACKOFF,
                }
            }
            Err(e) => {
                inc(&self.shared.metrics.bind_errors);
                tracing::warn!(frontend = %fk, service = %owner, error = %e, "cannot listen; will retry");
                FrontendState::Failed {
                    failures: 1,
                    retry_at: Instant::now() + FIRST_BIND_BACKOFF,
                }
            }
        };
        self.frontends.insert(
            fk,
            Frontend {
                owner,
                target: tk,
                state,
            },
        );
    }

    /// Opens the socket of a frontend and starts serving it.
    fn bind(&self, fk: &FrontendKey, tk: &TargetKey) -> std::io::Result<FrontendState> {
        let target = self
            .targets
            .get(tk)
            .cloned()
            .ok_or_else(|| std::io::Error::other("no target for the frontend"))?;
        let slot = Arc::new(Slot::new(target));
        let stop = self.shared.stop.child_token();
        match fk.protocol {
            Protocol::Tcp => {
                let listener = tcp::listen_socket(fk.addr)?;
                tcp::serve(listener, slot.clone(), self.shared.clone(), stop.clone());
            }
            Protocol::Udp => {
                let socket = udp::bind(fk.addr)?;
                tokio::spawn(udp::serve(
                    socket,
                    slot.clone(),
                    self.shared.clone(),
                    stop.clone(),
                ));
            }
        }
        self.shared
            .metrics
            .listening
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(frontend = %fk, port = %tk.port, "listening");
        Ok(FrontendState::Open { slot, stop })
    }

    fn close(&mut self, fk: &FrontendKey) {
        let Some(f) = self.frontends.remove(fk) else {
            return;
        };
        if let FrontendState::Open { stop, .. } = f.state {
            stop.cancel();
            self.shared
                .metrics
                .listening
                .fetch_sub(1, Ordering::Relaxed);
            tracing::info!(frontend = %fk, service = %f.owner, "closed");
        }
        if let Some(waiter) = self.waiting.remove(fk) {
            self.dirty.insert(waiter);
        }
    }

    /// When the next failed bind is due for a retry.
    pub(crate) fn next_retry(&self) -> Option<Instant> {
        self.frontends
            .values()
            .filter_map(|f| match f.state {
                FrontendState::Failed { retry_at, .. } => Some(retry_at),
                FrontendState::Open { .. } => None,
            })
            .min()
    }

    /// Retries the failed binds that are due.
    pub(crate) fn retry_binds(&mut self) {
        let now = Instant::now();
        let due: Vec<FrontendKey> = self
            .frontends
            .iter()
            .filter(|(_, f)| matches!(f.state, FrontendState::Failed { retry_at, .. } if retry_at <= now))
            .map(|(k, _)| *k)
            .collect();
        for fk in due {
            let Some(f) = self.frontends.get(&fk) else {
                continue;
            };
            let result = self.bind(&fk, &f.target);
            let Some(f) = self.frontends.get_mut(&fk) else {
                continue;
            };
            match result {
                Ok(state) => f.state = state,
                Err(e) => {
                    if !not_here(&e) {
                        inc(&self.shared.metrics.bind_errors);
                    }
                    if let FrontendState::Failed { failures, retry_at } = &mut f.state {
                        *failures += 1;
                        let backoff = FIRST_BIND_BACKOFF
                            .saturating_mul(1 << (*failures - 1).min(8))
                            .min(MAX_BIND_BACKOFF);
                        *retry_at = now + backoff;
                        // Repeats are expected while another agent holds the address.
                        tracing::debug!(frontend = %fk, failures = *failures, error = %e, "still cannot listen");
                    }
                }
            }
        }
    }

    /// The frontends currently listening (for tests and logs).
    #[cfg(test)]
    pub(crate) fn listening(&self) -> Vec<FrontendKey> {
        let mut v: Vec<FrontendKey> = self
            .frontends
            .iter()
            .filter(|(_, f)| matches!(f.state, FrontendState::Open { .. }))
            .map(|(k, _)| *k)
            .collect();
        v.sort();
        v
    }
}
