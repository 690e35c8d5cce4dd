//! One service port's endpoints as the frontends see them: a snapshot swapped in whole
//! by the proxier (so endpoint changes apply to the next connection), round-robin over
//! it, and `sessionAffinity: ClientIP` (a client IP sticks to its endpoint while it
//! keeps coming back within the timeout, as kube-proxy does).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::metrics::PortMetrics;
use crate::model::{Endpoint, TargetKey};

/// The endpoints at one moment.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Snapshot {
    pub endpoints: Vec<Endpoint>,
    pub affinity: Option<Duration>,
    /// The address UDP sessions send from (the Service's ClusterIP: pods may always
    /// answer there, while their egress policy may refuse the node's own addresses).
    pub source: Option<IpAddr>,
}

impl Snapshot {
    pub(crate) fn contains(&self, addr: SocketAddr) -> bool {
        self.endpoints.iter().any(|e| e.addr == addr)
    }
}

/// Where a client IP was last sent.
struct Sticky {
    endpoint: SocketAddr,
    last_used: Instant,
}

/// A service port (or its node-local half) with its endpoints.
pub(crate) struct Target {
    pub key: TargetKey,
    pub metrics: Arc<PortMetrics>,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Bumped on every snapshot swap, so UDP sessions can re-check their endpoint
    /// cheaply.
    generation: AtomicU64,
    next: AtomicUsize,
    sticky: Mutex<StickyTable>,
}

struct StickyTable {
    by_client: HashMap<IpAddr, Sticky>,
    last_sweep: Instant,
}

impl Target {
    pub(crate) fn new(key: TargetKey, metrics: Arc<PortMetrics>) -> Target {
        Target {
            key,
            metrics,
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            generation: AtomicU64::new(0),
            // Replicas of the proxy on different nodes start at different offsets.
            next: AtomicUsize::new(rand::random::<u16>() as usize),
            sticky: Mutex::new(StickyTable {
                by_client: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        match self.snapshot.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Installs new endpoints; returns whether anything changed.
    pub(crate) fn update(&self, next: Snapshot) -> bool {
        if *self.snapshot() == next {
            return false;
        }
        let affinity = next.affinity;
        let next = Arc::new(next);
        match self.snapshot.write() {
            Ok(mut s) => *s = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        if affinity.is_none() {
            self.sticky_table().by_client.clear();
        }
        true
    }

    /// The endpoint for a new connection or session from `client`, skipping `exclude`
    /// (endpoints that failed for this connection already).
    pub(crate) fn pick<'s>(
        &self,
        snap: &'s Snapshot,
        client: IpAddr,
        exclude: &[SocketAddr],
    ) -> Option<&'s Endpoint> {
        self.pick_at(snap, client, exclude, Instant::now())
    }

    fn pick_at<'s>(
        &self,
        snap: &'s Snapshot,
        client: IpAddr,
        exclude: &[SocketAddr],
        now: Instant,
    ) -> Option<&'s Endpoint> {
        if snap.endpoints.is_empty() {
            return None;
        }
        if let Some(timeout) = snap.affinity {
            let mut table = self.sticky_table();
            if let Some(s) = table.by_client.get_mut(&client) {
                if now.duration_since(s.last_used) < timeout && !exclude.contains(&s.endpoint) {
                    if let Some(ep) = snap.endpoints.iter().find(|e| e.addr == s.endpoint) {
                        s.last_used = now;
                        return Some(ep);
                    }
                }
            }
        }
        let n = snap.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &snap.endpoints[(start + i) % n])
            .find(|e| !exclude.contains(&e.addr))
    }

    /// Records that `client` was sent to `endpoint` (with affinity on).
    pub(crate) fn remember(&self, snap: &Snapshot, client: IpAddr, endpoint: SocketAddr) {
        let Some(timeout) = snap.affinity else {
            return;
        };
        let now = Instant::now();
        let mut table = self.sticky_table();
        table.by_client.insert(
            client,
            Sticky {
                endpoint,
                last_used: now,
            },
        );
        // Forget expired clients now and then, so the table follows the live ones.
        if now.duration_since(table.last_sweep) >= timeout.min(Duration::from_secs(60)) {
            table
                .by_client
                .retain(|_, s| now.duration_since(s.last_used) < timeout);
            table.last_sweep = now;
        }
    }

    /// Forgets `client`'s endpoint if it is `endpoint` (which just failed).
    pub(crate) fn forget(&self, client: IpAddr, endpoint: SocketAddr) {
        let mut table = self.sticky_table();
        if table.by_client.get(&client).map(|s| s.endpoint) == Some(endpoint) {
            table.by_client.remove(&client);
        }
    }

    fn sticky_table(&self) -> std::sync::MutexGuard<'_, StickyTable> {
        match self.sticky.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// A frontend's current target; the proxier swaps it when the frontend changes hands
/// (e.g. a Service's traffic policy changed) without closing the socket.
pub(crate) struct Slot {
    target: RwLock<Arc<Target>>,
    version: AtomicU64,
}

impl Slot {
    pub(crate) fn new(target: Arc<Target>) -> Slot {
        Slot {
            target: RwLock::new(target),
            version: AtomicU64::new(0),
        }
    }

    pub(crate) fn get(&self) -> Arc<Target> {
        match self.target.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub(crate) fn set(&self, target: Arc<Target>) {
        match self.target.write() {
            Ok(mut t) => *t = target,
            Err(poisoned) => *poisoned.into_inner() = target,
        }
        self.version.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ObjectKey, PortId, Protocol, Route};

    fn target() -> Target {
        let key = TargetKey {
            port: PortId {
                service: ObjectKey {
                    namespace: "ns".into(),
                    name: "s".into(),
                },
                port: String::new(),
                protocol: Protocol::Tcp,
            },
            local_only: false,
        };
        Target::new(key, Arc::new(PortMetrics::default()))
    }

    fn snapshot_of(endpoints: Vec<Endpoint>, affinity: Option<Duration>) -> Snapshot {
        Snapshot {
            endpoints,
            affinity,
            source: None,
        }
    }

    fn eps(n: u8) -> Vec<Endpoint> {
        (1..=n)
            .map(|i| Endpoint {
                addr: SocketAddr::from(([127, 0, 0, i], 80)),
                route: Route::Direct,
            })
            .collect()
    }

    #[test]
    fn round_robin_visits_every_endpoint_and_skips_excluded_ones() {
        let t = target();
        t.update(snapshot_of(eps(3), None));
        let snap = t.snapshot();
        let client = IpAddr::from([1, 2, 3, 4]);
        let mut seen: Vec<SocketAddr> = (0..3)
            .map(|_| t.pick(&snap, client, &[]).unwrap().addr)
            .collect();
        seen.sort();
        assert_eq!(seen, eps(3).iter().map(|e| e.addr).collect::<Vec<_>>());
        let all: Vec<SocketAddr> = eps(3).iter().map(|e| e.addr).collect();
        assert!(t.pick(&snap, client, &all).is_none());
        let only = t.pick(&snap, client, &all[..2]).unwrap();
        assert_eq!(only.addr, all[2]);
    }

    #[test]
    fn affinity_sticks_until_the_endpoint_goes_or_fails() {
        let t = target();
        t.update(snapshot_of(eps(3), Some(Duration::from_secs(60))));
        let snap = t.snapshot();
        let a = IpAddr::from([1, 1, 1, 1]);
        let first = t.pick(&snap, a, &[]).unwrap().addr;
        t.remember(&snap, a, first);
        for _ in 0..5 {
            assert_eq!(t.pick(&snap, a, &[]).unwrap().addr, first);
        }
        t.forget(a, first);
        // Round-robin again: over a few picks, another endpoint shows up.
        assert!((0..3).any(|_| t.pick(&snap, a, &[]).unwrap().addr != first));
        t.remember(&snap, a, first);
        let rest: Vec<Endpoint> = eps(3).into_iter().filter(|e| e.addr != first).collect();
        assert!(t.update(snapshot_of(rest, Some(Duration::from_secs(60)))));
        let snap = t.snapshot();
        assert_ne!(t.pick(&snap, a, &[]).unwrap().addr, first);
    }

    #[test]
    fn affinity_expires() {
        let t = target();
        t.update(snapshot_of(eps(2), Some(Duration::from_millis(1))));
        let snap = t.snapshot();
        let a = IpAddr::from([1, 1, 1, 1]);
        let first = t.pick(&snap, a, &[]).unwrap().addr;
        t.remember(&snap, a, first);
        // Expired: plain round-robin, which moves on from `first`.
        let later = Instant::now() + Duration::from_millis(5);
        let next = t.pick_at(&snap, a, &[], later).unwrap().addr;
        assert_ne!(next, first);
    }
}
