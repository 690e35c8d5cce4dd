//! From API objects to what the proxy does: a Service, its EndpointSlices and the Nodes
//! become the frontends to listen on (ClusterIP:port, node address:nodePort, per
//! protocol) and, per service port, the endpoints behind them with the route to each
//! (direct, or through another node's tunnel). Pure functions, no I/O.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The annotation on a Node naming the port of its proxy's tunnel listener (on the
/// node's InternalIP).
pub const TUNNEL_PORT_ANNOTATION: &str = "proxy.wasmkube.io/tunnel-port";

/// The label that ties an EndpointSlice to its Service.
pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
const DEFAULT_AFFINITY_SECONDS: u64 = 10_800;

/// A transport protocol the proxy forwards (SCTP ports are ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// From a Kubernetes `protocol` field (absent means TCP).
    pub(crate) fn parse(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Service (or EndpointSlice) by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub(crate) fn of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Self {
        ObjectKey {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One port of one Service: what metrics are labelled with.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct PortId {
    pub service: ObjectKey,
    /// The service port's name ("" for a single unnamed port).
    pub port: String,
    pub protocol: Protocol,
}

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.service, self.port, self.protocol)
    }
}

/// The endpoints a frontend forwards to: a service port, restricted to this node's
/// endpoints for a `Local` traffic policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TargetKey {
    pub port: PortId,
    pub local_only: bool,
}

/// An address the proxy listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct FrontendKey {
    pub addr: SocketAddr,
    pub protocol: Protocol,
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.protocol)
    }
}

/// How an endpoint is reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Route {
    /// Connect to the endpoint itself (it runs on this node, or its node has no tunnel).
    Direct,
    /// Through the tunnel of the node it runs on, at `via` (InternalIP:tunnel port).
    Tunnel { node: String, via: SocketAddr },
}

/// One ready endpoint of a service port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Endpoint {
    pub addr: SocketAddr,
    pub route: Route,
}

/// What one target should look like.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DesiredTarget {
    pub key: TargetKey,
    pub endpoints: Vec<Endpoint>,
    /// ClientIP session affinity and its timeout.
    pub affinity: Option<Duration>,
    /// The Service's (first) ClusterIP, which UDP sessions send from.
    pub source: Option<IpAddr>,
}

/// Everything the proxy should do for one Service.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct DesiredService {
    pub targets: Vec<DesiredTarget>,
    pub frontends: Vec<(FrontendKey, TargetKey)>,
}

/// What the proxy needs to know about another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeInfo {
    /// InternalIP:tunnel port, when the node publishes a tunnel.
    pub tunnel: Option<SocketAddr>,
}

impl NodeInfo {
    pub(crate) fn of(node: &Node) -> NodeInfo {
        let ip = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .and_then(|a| a.address.parse::<IpAddr>().ok());
        let port = tunnel_port(node);
        NodeInfo {
            tunnel: ip.zip(port).map(|(ip, port)| SocketAddr::new(ip, port)),
        }
    }
}

/// The tunnel port a Node publishes, if any.
pub(crate) fn tunnel_port(node: &Node) -> Option<u16> {
    node.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TUNNEL_PORT_ANNOTATION))
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p != 0)
}

/// The Service an EndpointSlice belongs to.
pub(crate) fn slice_service(slice: &EndpointSlice) -> Option<ObjectKey> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(ObjectKey {
        namespace: slice.metadata.namespace.clone().unwrap_or_default(),
        name: name.clone(),
    })
}

/// The (protocol, address) pairs of every endpoint of `slice` on node `me`, whatever
/// its readiness: what the tunnel listener lets other nodes reach.
pub(crate) fn local_endpoints(slice: &EndpointSlice, me: &str) -> Vec<(Protocol, SocketAddr)> {
    if !is_ip_slice(slice) {
        return Vec::new();
    }
    let ports: Vec<(Protocol, u16)> = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let proto = Protocol::parse(p.protocol.as_deref())?;
            let port = u16::try_from(p.port?).ok()?;
            Some((proto, port))
        })
        .collect();
    let mut out = Vec::new();
    for e in &slice.endpoints {
        if e.node_name.as_deref() != Some(me) {
            continue;
        }
        for ip in e.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
            for &(proto, port) in &ports {
                out.push((proto, SocketAddr::new(ip, port)));
            }
        }
    }
    out
}

fn is_ip_slice(slice: &EndpointSlice) -> bool {
    matches!(slice.address_type.as_str(), "IPv4" | "IPv6")
}

/// The frontends and endpoints for `svc`, given its slices, the known nodes, this
/// node's name and address.
pub(crate) fn desired<'a>(
    svc: &Service,
    slices: impl Iterator<Item = &'a EndpointSlice> + Clone,
    nodes: &HashMap<String, NodeInfo>,
    me: &str,
    node_ip: IpAddr,
) -> DesiredService {
    let key = ObjectKey::of(&svc.metadata);
    let Some(spec) = svc.spec.as_ref() else {
        return DesiredService::default();
    };
    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    if type_ == "ExternalName" {
        return DesiredService::default();
    }
    let mut cluster_ips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .collect();
    cluster_ips.sort();
    cluster_ips.dedup();
    if cluster_ips.is_empty() {
        // Headless ("None"): clients use the endpoints themselves, as with kube-proxy,
        // whatever else the Service names.
        return DesiredService::default();
    }
    let node_ports = matches!(type_, "NodePort" | "LoadBalancer");
    let external_ips = external_addresses(svc, type_ == "LoadBalancer");
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        let secs = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .filter(|s| *s > 0)
            .unwrap_or(DEFAULT_AFFINITY_SECONDS);
        Duration::from_secs(secs)
    });

    let mut out = DesiredService::default();
    let mut target_keys = BTreeSet::new();
    for sp in spec.ports.iter().flatten() {
        let Some(protocol) = Protocol::parse(sp.protocol.as_deref()) else {
            continue;
        };
        let Ok(port) = u16::try_from(sp.port) else {
            continue;
        };
        let id = PortId {
            service: key.clone(),
            port: sp.name.clone().unwrap_or_default(),
            protocol,
        };
        let cluster = TargetKey {
            port: id.clone(),
            local_only: internal_local,
        };
        for ip in &cluster_ips {
            out.frontends.push((
                FrontendKey {
                    addr: SocketAddr::new(*ip, port),
                    protocol,
                },
                cluster.clone(),
            ));
            target_keys.insert(cluster.clone());
        }
        let node_port = sp
            .node_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0);
        let external = TargetKey {
            port: id.clone(),
            local_only: external_local,
        };
        let node_port = node_ports
            .then_some(node_port)
            .flatten()
            .map(|np| SocketAddr::new(node_ip, np));
        let external_fronts = node_port
            .into_iter()
            .chain(external_ips.iter().map(|ip| SocketAddr::new(*ip, port)));
        for addr in external_fronts {
            out.frontends
                .push((FrontendKey { addr, protocol }, external.clone()));
            target_keys.insert(external.clone());
        }
    }
    for tk in target_keys {
        let Some(sp) = spec.ports.iter().flatten().find(|sp| {
            sp.name.clone().unwrap_or_default() == tk.port.port
                && Protocol::parse(sp.protocol.as_deref()) == Some(tk.port.protocol)
        }) else {
            continue;
        };
        let endpoints = endpoints_for(
            sp,
            tk.port.protocol,
            slices.clone(),
            nodes,
            me,
            tk.local_only,
        );
        out.targets.push(DesiredTarget {
            key: tk,
            endpoints,
            affinity,
            source: cluster_ips.first().copied(),
        });
    }
    out
}

/// The addresses outside the cluster a Service is also served on at its ports, as
/// kube-proxy does: `spec.externalIPs` and, for a LoadBalancer, the IPs in
/// `status.loadBalancer.ingress`. Traffic to them is external (externalTrafficPolicy).
/// Only a node that has such an address can listen on it.
fn external_addresses(svc: &Service, load_balancer: bool) -> Vec<IpAddr> {
    let spec = svc
        .spec
        .iter()
        .flat_map(|s| s.external_ips.iter().flatten());
    let ingress = svc
        .status
        .iter()
        .filter(|_| load_balancer)
        .filter_map(|s| s.load_balancer.as_ref())
        .flat_map(|lb| lb.ingress.iter().flatten())
        .filter_map(|i| i.ip.as_ref());
    let mut ips: Vec<IpAddr> = spec
        .chain(ingress)
        .filter_map(|ip| ip.parse().ok())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// The endpoints of one service port: ready ones (`conditions.ready` not false); when
/// there is none, serving-and-terminating ones, as kube-proxy falls back to.
fn endpoints_for<'a>(
    sp: &ServicePort,
    protocol: Protocol,
    slices: impl Iterator<Item = &'a EndpointSlice>,
    nodes: &HashMap<String, NodeInfo>,
    me: &str,
    local_only: bool,
) -> Vec<Endpoint> {
    let name = sp.name.as_deref().unwrap_or("");
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in slices.filter(|s| is_ip_slice(s)) {
        // Slice ports carry the resolved number of the service port's (named or numeric)
        // targetPort, matched by the service port's name.
        let Some(port) = slice.ports.iter().flatten().find_map(|p| {
            let same = p.name.as_deref().unwrap_or("") == name
                && Protocol::parse(p.protocol.as_deref()) == Some(protocol);
            same.then_some(p.port)
                .flatten()
                .and_then(|p| u16::try_from(p).ok())
        }) else {
            continue;
        };
        for e in &slice.endpoints {
            let Some(ip) = e.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            let local = e.node_name.as_deref().is_none_or(|n| n == me);
            if local_only && !local {
                continue;
            }
            let route = match e.node_name.as_deref() {
                Some(n) if n != me => match nodes.get(n).and_then(|i| i.tunnel) {
                    Some(via) => Route::Tunnel {
                        node: n.to_string(),
                        via,
                    },
                    // Without a tunnel the pod IP may still be routable.
                    None => Route::Direct,
                },
                _ => Route::Direct,
            };
            let ep = Endpoint {
                addr: SocketAddr::new(ip, port),
                route,
            };
            let c = e.conditions.as_ref();
            let is_ready = c.and_then(|c| c.ready) != Some(false);
            if is_ready {
                ready.insert(ep);
            } else if c.and_then(|c| c.serving) == Some(true)
                && c.and_then(|c| c.terminating) == Some(true)
            {
                terminating.insert(ep);
            }
        }
    }
    let chosen = if ready.is_empty() { terminating } else { ready };
    chosen.into_iter().collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn service(v: serde_json::Value) -> Service {
        serde_json::from_value(v).expect("a valid Service")
    }

    pub(crate) fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).expect("a valid EndpointSlice")
    }

    fn web() -> Service {
        service(json!({
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {
                "type": "NodePort",
                "clusterIP": "127.96.0.10",
                "clusterIPs": ["127.96.0.10"],
                "ports": [
                    {"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080},
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}
                ],
                "sessionAffinity": "ClientIP"
            }
        }))
    }

    fn web_slice() -> EndpointSlice {
        slice(json!({
            "metadata": {"name": "web-abc", "namespace": "ns",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                      {"name": "dns", "port": 5353, "protocol": "UDP"}],
            "endpoints": [
                {"addresses": ["127.128.0.2"], "conditions": {"ready": true}, "nodeName": "a"},
                {"addresses": ["127.128.1.2"], "conditions": {"ready": true}, "nodeName": "b"},
                {"addresses": ["127.128.0.3"], "conditions": {"ready": false}, "nodeName": "a"},
                {"addresses": ["127.128.0.4"], "nodeName": "a"}
            ]
        }))
    }

    #[test]
    fn frontends_cover_cluster_ip_and_node_port_per_protocol() {
        let d = desired(
            &web(),
            [web_slice()].iter(),
            &HashMap::new(),
            "a",
            "10.0.0.1".parse().unwrap(),
        );
        let fronts: Vec<String> = d.frontends.iter().map(|(f, _)| f.to_string()).collect();
        assert_eq!(
            fronts,
            [
                "127.96.0.10:80/TCP",
                "10.0.0.1:30080/TCP",
                "127.96.0.10:53/UDP"
            ]
        );
        assert_eq!(d.targets.len(), 2);
        assert!(d
            .targets
            .iter()
            .all(|t| t.affinity == Some(Duration::from_secs(10_800))));
    }

    #[test]
    fn external_ips_and_load_balancer_ingress_are_external_frontends() {
        let mut svc = web();
        let spec = svc.spec.as_mut().unwrap();
        spec.external_ips = Some(vec!["192.0.2.7".into(), "not an ip".into()]);
        spec.external_traffic_policy = Some("Local".into());
        svc.status = Some(
            serde_json::from_value(json!({
                "loadBalancer": {"ingress": [{"ip": "198.51.100.9"}, {"hostname": "lb.example"}]}
            }))
            .unwrap(),
        );
        let fronts = |svc: &Service| {
            let d = desired(
                svc,
                [web_slice()].iter(),
                &HashMap::new(),
                "a",
                "10.0.0.1".parse().unwrap(),
            );
            d.frontends
                .iter()
                .map(|(f, t)| format!("{f} local={}", t.local_only))
                .collect::<Vec<_>>()
        };
        // A NodePort Service ignores its (stale) load balancer status.
        assert_eq!(
            fronts(&svc),
            [
                "127.96.0.10:80/TCP local=false",
                "10.0.0.1:30080/TCP local=true",
                "192.0.2.7:80/TCP local=true",
                "127.96.0.10:53/UDP local=false",
                "192.0.2.7:53/UDP local=true",
            ]
        );
        svc.spec.as_mut().unwrap().type_ = Some("LoadBalancer".into());
        assert_eq!(
            fronts(&svc),
            [
                "127.96.0.10:80/TCP local=false",
                "10.0.0.1:30080/TCP local=true",
                "192.0.2.7:80/TCP local=true",
                "198.51.100.9:80/TCP local=true",
                "127.96.0.10:53/UDP local=false",
                "192.0.2.7:53/UDP local=true",
                "198.51.100.9:53/UDP local=true",
            ]
        );
    }

    #[test]
    fn only_ready_endpoints_with_resolved_ports_and_routes() {
        let mut nodes = HashMap::new();
        nodes.insert(
            "b".to_string(),
            NodeInfo {
                tunnel: Some("10.0.0.2:4000".parse().unwrap()),
            },
        );
        let d = desired(
            &web(),
            [web_slice()].iter(),
            &nodes,
            "a",
            "10.0.0.1".parse().unwrap(),
        );
        let http = d
            .targets
            .iter()
            .find(|t| t.key.port.protocol == Protocol::Tcp)
            .unwrap();
        let eps: Vec<(String, Route)> = http
            .endpoints
            .iter()
            .map(|e| (e.addr.to_string(), e.route.clone()))
            .collect();
        assert_eq!(
            eps,
            [
                ("127.128.0.2:8080".to_string(), Route::Direct),
                ("127.128.0.4:8080".to_string(), Route::Direct),
                (
                    "127.128.1.2:8080".to_string(),
                    Route::Tunnel {
                        node: "b".into(),
                        via: "10.0.0.2:4000".parse().unwrap()
                    }
                ),
            ]
        );
        let dns = d
            .targets
            .iter()
            .find(|t| t.key.port.protocol == Protocol::Udp)
            .unwrap();
        assert!(dns.endpoints.iter().all(|e| e.addr.port() == 5353));
    }

    #[test]
    fn local_traffic_policy_keeps_this_nodes_endpoints() {
        let mut svc = web();
        svc.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
        let d = desired(
            &svc,
            [web_slice()].iter(),
            &HashMap::new(),
            "a",
            "10.0.0.1".parse().unwrap(),
        );
        let tcp: Vec<&DesiredTarget> = d
            .targets
            .iter()
            .filter(|t| t.key.port.protocol == Protocol::Tcp)
            .collect();
        assert_eq!(tcp.len(), 2);
        let external = tcp.iter().find(|t| t.key.local_only).unwrap();
        assert_eq!(external.endpoints.len(), 2);
        let cluster = tcp.iter().find(|t| !t.key.local_only).unwrap();
        assert_eq!(cluster.endpoints.len(), 3);
    }

    #[test]
    fn terminating_serving_endpoints_are_a_fallback() {
        let s = slice(json!({
            "metadata": {"name": "web-x", "namespace": "ns",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": ["127.128.0.9"],
                 "conditions": {"ready": false, "serving": true, "terminating": true}}
            ]
        }));
        let d = desired(
            &web(),
            [s].iter(),
            &HashMap::new(),
            "a",
            "10.0.0.1".parse().unwrap(),
        );
        let http = d
            .targets
            .iter()
            .find(|t| t.key.port.port == "http")
            .unwrap();
        assert_eq!(http.endpoints.len(), 1);
    }

    #[test]
    fn headless_and_external_name_services_get_no_frontends() {
        let headless = service(json!({
            "metadata": {"name": "h", "namespace": "ns"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}], "externalIPs": ["192.0.2.7"]}
        }));
        let ext = service(json!({
            "metadata": {"name": "e", "namespace": "ns"},
            "spec": {"type": "ExternalName", "externalName": "example.com"}
        }));
        for svc in [headless, ext] {
            let d = desired(
                &svc,
                std::iter::empty(),
                &HashMap::new(),
                "a",
                "10.0.0.1".parse().unwrap(),
            );
            assert!(d.frontends.is_empty());
        }
    }

    #[test]
    fn local_endpoints_list_every_port_of_this_nodes_endpoints() {
        let got = local_endpoints(&web_slice(), "a");
        assert_eq!(got.len(), 6);
        assert!(got.contains(&(Protocol::Udp, "127.128.0.3:5353".parse().unwrap())));
        assert!(!got.iter().any(|(_, a)| a.ip().to_string() == "127.128.1.2"));
    }
}
