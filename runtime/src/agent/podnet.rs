//! Pod IPs: each pod on this node gets an address of its own from the node's
//! `spec.podCIDR`.
//!
//! Pod addresses live in 127.0.0.0/8 (the node IPAM controller hands each node a /22 of
//! 127.128.0.0/10): Linux routes all of 127/8 to `lo`, so any of them can be bound
//! without configuring an interface, and the execution layer makes a guest's binds to
//! `0.0.0.0` land on its pod's address (see `crate::wasm`). The range's network address
//! and first address are never handed out (the first is where a gateway would be), nor
//! is the broadcast address.
//!
//! Allocations live in memory; across agent restarts they are rebuilt from the pods
//! themselves: before the first allocation, every pod bound to this node that already
//! reports a status.podIP inside the range claims it again, so it keeps its address and
//! no new pod gets it. Addresses are handed out round-robin, so a released address is
//! reused as late as possible.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::ListParams;
use kube::{Api, Client};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

/// How long to wait for the node IPAM controller to give the node a podCIDR before
/// falling back to [`default_range`].
const POD_CIDR_WAIT: Duration = Duration::from_secs(5);

/// Why an address could not be handed out, or a CIDR not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodNetError {
    /// Every usable address of the range belongs to a live pod.
    #[error("no free pod IP left in {0}")]
    Exhausted(Ipv4Range),
    /// The text is not an IPv4 CIDR such as `127.128.0.0/24`.
    #[error("invalid IPv4 CIDR {0:?}")]
    InvalidCidr(String),
}

/// An IPv4 network: address and prefix length, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Range {
    network: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Range {
    /// The network of `addr` with `prefix` bits (host bits are cleared).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, PodNetError> {
        if prefix > 32 {
            return Err(PodNetError::InvalidCidr(format!("{addr}/{prefix}")));
        }
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        Ok(Self {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }

    /// `a.b.c.d/n`.
    pub fn parse(cidr: &str) -> Result<Self, PodNetError> {
        let invalid = || PodNetError::InvalidCidr(cidr.to_owned());
        let (addr, prefix) = cidr.trim().split_once('/').ok_or_else(invalid)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| invalid())?;
        let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
        Self::new(addr, prefix).map_err(|_| invalid())
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies inside the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(ip) => Self::new(ip, self.prefix).is_ok_and(|r| r == *self),
            IpAddr::V6(_) => false,
        }
    }

    /// Offsets from the network address that may be handed out: not the network, not
    /// the first address, not the broadcast.
    fn usable(&self) -> std::ops::Range<u64> {
        let size = 1u64 << (32 - u32::from(self.prefix));
        2..size.saturating_sub(1).max(2)
    }

    fn at(&self, offset: u64) -> Ipv4Addr {
        // Offsets stay below the range's size, so they fit in the host bits.
        Ipv4Addr::from(u32::from(self.network).wrapping_add(offset as u32))
    }

    fn offset(&self, ip: Ipv4Addr) -> u64 {
        u64::from(u32::from(ip).wrapping_sub(u32::from(self.network)))
    }
}

impl std::fmt::Display for Ipv4Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The range a node without a podCIDR uses: a /22 of 127.200.0.0/14 chosen by a hash of
/// the node name, so that nodes sharing a host rarely collide (they may: that is why the
/// IPAM controller's podCIDR is preferred).
pub fn default_range(node_name: &str) -> Ipv4Range {
    let block = u32::from(Sha256::digest(node_name.as_bytes())[0]);
    Ipv4Range {
        network: Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 200, 0, 0)) + (block << 10)),
        prefix: 22,
    }
}

/// The pod IPs of one node's range: which pod holds which address.
#[derive(Debug)]
pub struct PodNet {
    range: Ipv4Range,
    inner: Mutex<Allocations>,
}

#[derive(Debug, Default)]
struct Allocations {
    by_uid: HashMap<String, Ipv4Addr>,
    used: HashSet<Ipv4Addr>,
    /// Where the round-robin search starts.
    next: u64,
}

impl PodNet {
    pub fn new(range: Ipv4Range) -> Self {
        Self {
            range,
            inner: Mutex::new(Allocations {
                next: range.usable().start,
                ..Allocations::default()
            }),
        }
    }

    pub fn range(&self) -> Ipv4Range {
        self.range
    }

    /// The address of pod `uid`: the one it holds already; else `recorded` (its
    /// status.podIP from before an agent restart) when that is a usable address of the
    /// range no other pod holds; else the next free one.
    pub fn claim(&self, uid: &str, recorded: Option<IpAddr>) -> Result<IpAddr, PodNetError> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ip) = inner.by_uid.get(uid) {
            return Ok(IpAddr::V4(*ip));
        }
        let usable = self.range.usable();
        if let Some(IpAddr::V4(ip)) = recorded {
            if self.range.contains(IpAddr::V4(ip))
                && usable.contains(&self.range.offset(ip))
                && !inner.used.contains(&ip)
            {
                inner.used.insert(ip);
                inner.by_uid.insert(uid.to_owned(), ip);
                return Ok(IpAddr::V4(ip));
            }
        }
        let count = usable.end - usable.start;
        for step in 0..count {
            let offset = usable.start + (inner.next - usable.start + step) % count;
            let ip = self.range.at(offset);
            if inner.used.insert(ip) {
                inner.by_uid.insert(uid.to_owned(), ip);
                inner.next = usable.start + (offset + 1 - usable.start) % count;
                return Ok(IpAddr::V4(ip));
            }
        }
        Err(PodNetError::Exhausted(self.range))
    }

    /// Frees pod `uid`'s address (nothing if it holds none).
    pub fn release(&self, uid: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ip) = inner.by_uid.remove(uid) {
            inner.used.remove(&ip);
        }
    }

    /// The address pod `uid` holds.
    pub fn get(&self, uid: &str) -> Option<IpAddr> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.by_uid.get(uid).map(|ip| IpAddr::V4(*ip))
    }

    /// How many addresses are handed out.
    pub fn allocated(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.by_uid.len()
    }
}

/// The node's [`PodNet`], set up on first use: the range is read from the Node (waiting
/// a little for the IPAM controller), then the addresses pods on this node already report
/// are claimed again.
#[derive(Debug, Default)]
pub struct NodePodNet {
    cell: OnceCell<PodNet>,
}

impl NodePodNet {
    pub fn new() -> Self {
        Self::default()
    }

    /// The node's pod IPs; the first call sets them up.
    pub async fn get(&self, client: &Client, node_name: &str) -> &PodNet {
        self.cell
            .get_or_init(|| async {
                let range = node_range(client, node_name).await;
                let net = PodNet::new(range);
                reclaim(&net, client, node_name).await;
                net
            })
            .await
    }
}

/// The node's podCIDR, polled for until [`POD_CIDR_WAIT`]; else [`default_range`].
async fn node_range(client: &Client, node_name: &str) -> Ipv4Range {
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + POD_CIDR_WAIT;
    loop {
        match nodes.get_opt(node_name).await {
            Ok(Some(node)) => {
                let spec = node.spec.unwrap_or_default();
                let cidrs = spec
                    .pod_cidr
                    .into_iter()
                    .chain(spec.pod_cidrs.into_iter().flatten());
                for cidr in cidrs {
                    match Ipv4Range::parse(&cidr) {
                        Ok(range) => {
                            tracing::info!(node = %node_name, pod_cidr = %range, "pod network range");
                            return range;
                        }
                        Err(error) => {
                            tracing::debug!(node = %node_name, %error, "skipping a podCIDR")
                        }
                    }
                }
            }
            Ok(None) => {}
            Err(error) => tracing::debug!(node = %node_name, %error, "reading the node"),
        }
        if tokio::time::Instant::now() >= deadline {
            let range = default_range(node_name);
            tracing::warn!(
                node = %node_name,
                pod_cidr = %range,
                "the node has no IPv4 podCIDR; using a default pod range"
            );
            return range;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Claims again the addresses that live pods on this node report (after an agent
/// restart), so that none of them goes to a new pod.
async fn reclaim(net: &PodNet, client: &Client, node_name: &str) {
    let pods: Api<Pod> = Api::all(client.clone());
    let params = ListParams::default().fields(&format!("spec.nodeName={node_name}"));
    let list = match pods.list(&params).await {
        Ok(list) => list,
        Err(error) => {
            tracing::warn!(node = %node_name, %error, "listing pods to reclaim their IPs");
            return;
        }
    };
    for pod in list.items {
        let (Some(uid), Some(status)) = (pod.metadata.uid.as_deref(), pod.status.as_ref()) else {
            continue;
        };
        if matches!(status.phase.as_deref(), Some("Succeeded") | Some("Failed")) {
            continue;
        }
        let recorded = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok());
        if let Some(ip) = recorded.filter(|ip| net.range().contains(*ip)) {
            if let Err(error) = net.claim(uid, Some(ip)) {
                tracing::warn!(node = %node_name, %uid, %error, "reclaiming a pod IP");
            }
        }
    }
    tracing::debug!(node = %node_name, reclaimed = net.allocated(), "pod IPs reclaimed");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_contain() {
        let r = Ipv4Range::parse("127.128.3.7/24").unwrap();
        assert_eq!(r.to_string(), "127.128.3.0/24");
        assert!(r.contains(ip("127.128.3.255")));
        assert!(!r.contains(ip("127.128.4.1")));
        assert!(!r.contains(ip("::1")));
        for bad in ["127.0.0.0", "127.0.0.0/33", "x/24", "::1/64"] {
            assert!(Ipv4Range::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_skip_network_and_first_and_are_unique() {
        let net = PodNet::new(Ipv4Range::parse("127.128.0.0/24").unwrap());
        let a = net.claim("a", None).unwrap();
        let b = net.claim("b", None).unwrap();
        assert_eq!(a, ip("127.128.0.2"));
        assert_eq!(b, ip("127.128.0.3"));
        // Claiming again gives the same address.
        assert_eq!(net.claim("a", None).unwrap(), a);
        assert_eq!(net.get("b"), Some(b));
    }

    #[test]
    fn recorded_addresses_are_kept_unless_taken_or_outside() {
        let net = PodNet::new(Ipv4Range::parse("127.128.0.0/24").unwrap());
        assert_eq!(
            net.claim("old", Some(ip("127.128.0.9"))).unwrap(),
            ip("127.128.0.9")
        );
        // Taken by another pod: a fresh one.
        assert_eq!(
            net.claim("dup", Some(ip("127.128.0.9"))).unwrap(),
            ip("127.128.0.2")
        );
        // Outside the range, or the reserved ones: a fresh one.
        assert_eq!(
            net.claim("out", Some(ip("127.0.0.1"))).unwrap(),
            ip("127.128.0.3")
        );
        assert_eq!(
            net.claim("gw", Some(ip("127.128.0.1"))).unwrap(),
            ip("127.128.0.4")
        );
        assert_eq!(net.allocated(), 4);
    }

    #[test]
    fn released_addresses_come_back_and_exhaustion_is_an_error() {
        // A /29: offsets 2..7 are usable (5 addresses).
        let net = PodNet::new(Ipv4Range::parse("127.128.0.0/29").unwrap());
        for uid in ["a", "b", "c", "d", "e"] {
            net.claim(uid, None).unwrap();
        }
        assert!(matches!(
            net.claim("f", None),
            Err(PodNetError::Exhausted(_))
        ));
        net.release("c");
        assert_eq!(net.get("c"), None);
        assert_eq!(net.claim("f", None).unwrap(), ip("127.128.0.4"));
        // Round-robin: after a release, the next search starts after the last handed out.
        net.release("a");
        net.release("b");
        assert_eq!(net.claim("g", None).unwrap(), ip("127.128.0.2"));
        assert_eq!(net.claim("h", None).unwrap(), ip("127.128.0.3"));
    }

    #[test]
    fn default_ranges_are_stable_per_node() {
        let r = default_range("node-1");
        assert_eq!(r, default_range("node-1"));
        assert_eq!(r.prefix(), 22);
        assert!((200..204).contains(&r.network().octets()[1]), "{r}");
    }
}
