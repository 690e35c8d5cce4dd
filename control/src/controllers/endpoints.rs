//! The Endpoints controller: for every Service with a selector, keeps an Endpoints object
//! of the same name listing the selected pods — ready ones under `addresses`, the others
//! under `notReadyAddresses` — with the Service's ports, each `targetPort` resolved per
//! pod, grouped into subsets by port set as kube-controller-manager's endpoints
//! controller does (`RepackSubsets`).
//!
//! Endpoints have no ownerReference upstream, so when the Service goes this controller
//! deletes them itself (only those it labelled as its own, so that hand-made Endpoints
//! of a not-yet-created Service survive).
//!
//! The pod-matching helpers here (selector, port resolution, readiness, the pod → Service
//! trigger mapper) are shared with the EndpointSlice controller.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
    ServicePort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;

use super::events::{self, EventType, Recorder};
use super::shared_watch::SharedWatch;

/// What can go wrong while syncing a Service's Endpoints.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("api call failed: {0}")]
    Api(#[from] kube::Error),
    /// The Service has no namespace (the API server never sends one like that).
    #[error("service {0} has no namespace")]
    NoNamespace(String),
}

/// The label saying which controller manages an Endpoints object (Kubernetes 1.33).
pub const LABEL_MANAGED_BY: &str = "endpoints.kubernetes.io/managed-by";
/// Our value of [`LABEL_MANAGED_BY`], upstream's controller name.
pub const CONTROLLER_NAME: &str = "endpoint-controller";
/// Set on the endpoints of Services without a cluster IP.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Set when the Endpoints had to be cut to [`MAX_CAPACITY`] addresses.
pub const ANNOTATION_OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";
/// Upstream's limit on addresses in one Endpoints object.
pub const MAX_CAPACITY: usize = 1000;

struct Context {
    client: kube::Client,
    recorder: Recorder,
}

/// Runs the controller until the process ends.
pub async fn run(client: kube::Client, pods: SharedWatch<Pod>) {
    let services: Api<Service> = Api::all(client.clone());
    let endpoints: Api<Endpoints> = Api::all(client.clone());
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), "endpoint-controller"),
    });
    let controller = Controller::new(services.clone(), watcher::Config::default());
    let mapper = PodMapper::new(controller.store());
    controller
        // The main watch triggers on changes only; a Service's deletion reaches us here
        // and ends as "object not found", where its Endpoints are removed.
        .watches(services, watcher::Config::default(), |svc| {
            Some(ObjectRef::from_obj(&svc))
        })
        .watches_stream(pods.touched(), move |pod| mapper.map(&pod))
        .watches(endpoints, watcher::Config::default(), |ep| {
            ep.namespace()
                .map(|ns| ObjectRef::<Service>::new(&ep.name_any()).within(&ns))
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|res| {
            let client = client.clone();
            async move {
                match res {
                    Ok(_) => {}
                    Err(controller::Error::ObjectNotFound(obj)) => {
                        if let Some(ns) = obj.namespace.as_deref() {
                            if let Err(e) = delete_endpoints(&client, ns, &obj.name).await {
                                tracing::warn!(namespace = ns, service = %obj.name, error = %e,
                                    "deleting endpoints of a deleted service failed");
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "endpoints reconcile failed"),
                }
            }
        })
        .await;
}

fn error_policy(svc: Arc<Service>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(service = %svc.name_any(), namespace = svc.namespace().unwrap_or_default(),
        error = %err, "syncing endpoints failed; retrying");
    Action::requeue(Duration::from_secs(1))
}

async fn reconcile(cached: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = cached.name_any();
    let ns = cached
        .namespace()
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    // Read the Service fresh: the cache may still hold one that was just deleted, and
    // acting on it would resurrect its Endpoints.
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(svc) = services.get_opt(&name).await? else {
        delete_endpoints(&ctx.client, &ns, &name).await?;
        return Ok(Action::await_change());
    };
    let Some(selector) = service_selector(&svc) else {
        // Selector-less Services have hand-made Endpoints; not ours to touch.
        return Ok(Action::await_change());
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pods = pods
        .list(&ListParams::default().labels(&selector_string(selector)))
        .await?
        .items;
    let (subsets, truncated) = desired_subsets(&svc, &pods);
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
    let current = api.get_opt(&name).await?;
    let labels = desired_labels(&svc);
    let result = match current {
        None => {
            let mut annotations = BTreeMap::new();
            if truncated {
                annotations.insert(
                    ANNOTATION_OVER_CAPACITY.to_string(),
                    "truncated".to_string(),
                );
            }
            let ep = Endpoints {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    annotations: (!annotations.is_empty()).then_some(annotations),
                    ..Default::default()
                },
                subsets: (!subsets.is_empty()).then_some(subsets),
            };
            api.create(&PostParams::default(), &ep)
                .await
                .map(|_| "created")
        }
        Some(mut ep) => {
            let current_truncated = ep
                .annotations()
                .get(ANNOTATION_OVER_CAPACITY)
                .is_some_and(|v| v == "truncated");
            let same = normalized(ep.subsets.as_deref()) == normalized(Some(&subsets))
                && ep.metadata.labels.as_ref() == Some(&labels)
                && current_truncated == truncated;
            if same {
                return Ok(Action::await_change());
            }
            ep.metadata.labels = Some(labels);
            let annotations = ep.metadata.annotations.get_or_insert_with(BTreeMap::new);
            if truncated {
                annotations.insert(
                    ANNOTATION_OVER_CAPACITY.to_string(),
                    "truncated".to_string(),
                );
            } else {
                annotations.remove(ANNOTATION_OVER_CAPACITY);
            }
            ep.subsets = (!subsets.is_empty()).then_some(subsets);
            // resourceVersion from the read: a concurrent writer makes this a 409 and a retry.
            api.replace(&name, &PostParams::default(), &ep)
                .await
                .map(|_| "updated")
        }
    };
    match result {
        Ok(what) => {
            tracing::debug!(namespace = %ns, service = %name, what, "endpoints written");
            Ok(Action::await_change())
        }
        Err(e) => {
            if !is_conflict(&e) {
                let reason = "FailedToUpdateEndpoint";
                let msg = format!("Failed to update endpoint {ns}/{name}: {e}");
                ctx.recorder
                    .record(&events::reference(&svc), EventType::Warning, reason, &msg)
                    .await;
            }
            Err(e.into())
        }
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Deletes the Endpoints `ns/name` if this controller made them.
async fn delete_endpoints(client: &kube::Client, ns: &str, name: &str) -> Result<(), Error> {
    let api: Api<Endpoints> = Api::namespaced(client.clone(), ns);
    let Some(ep) = api.get_opt(name).await? else {
        return Ok(());
    };
    if ep.labels().get(LABEL_MANAGED_BY).map(String::as_str) != Some(CONTROLLER_NAME) {
        return Ok(());
    }
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: ep.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => {
            tracing::info!(
                namespace = ns,
                service = name,
                "deleted endpoints of a deleted service"
            );
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The Endpoints labels: the Service's, plus headless and managed-by.
fn desired_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.labels().clone();
    if is_headless(svc) {
        labels.insert(LABEL_HEADLESS.to_string(), String::new());
    } else {
        labels.remove(LABEL_HEADLESS);
    }
    labels.insert(LABEL_MANAGED_BY.to_string(), CONTROLLER_NAME.to_string());
    labels
}

/// Subsets with empty lists made absent, for comparing what we want with what is stored.
fn normalized(subsets: Option<&[EndpointSubset]>) -> Vec<EndpointSubset> {
    let none_if_empty = |v: Option<Vec<EndpointAddress>>| v.filter(|v| !v.is_empty());
    subsets
        .unwrap_or_default()
        .iter()
        .cloned()
        .map(|s| EndpointSubset {
            addresses: none_if_empty(s.addresses),
            not_ready_addresses: none_if_empty(s.not_ready_addresses),
            ports: s.ports.filter(|p| !p.is_empty()),
        })
        .collect()
}

/// The subsets the Service's Endpoints should have, given the pods its selector matches,
/// and whether they were cut to [`MAX_CAPACITY`] addresses.
pub fn desired_subsets(svc: &Service, pods: &[Pod]) -> (Vec<EndpointSubset>, bool) {
    let spec = svc.spec.clone().unwrap_or_default();
    let tolerate_unready = spec.publish_not_ready_addresses.unwrap_or(false);
    let ports = spec.ports.unwrap_or_default();
    let want_v6 = service_wants_ipv6(svc);
    // (address key, ready) → address and the ports it serves, as RepackSubsets builds.
    let mut by_address: BTreeMap<(String, String, bool), (EndpointAddress, BTreeSet<PortKey>)> =
        BTreeMap::new();
    for pod in pods {
        if !should_pod_be_in_endpoints(pod, tolerate_unready) {
            continue;
        }
        let Some(ip) = pod_ip(pod, want_v6) else {
            continue;
        };
        let ready = tolerate_unready || is_pod_ready(pod);
        if !ready && !should_unready_pod_be_listed(pod) {
            continue;
        }
        let address = endpoint_address(svc, pod, ip);
        let key = (
            address.ip.clone(),
            pod.metadata.uid.clone().unwrap_or_default(),
            ready,
        );
        if ports.is_empty() {
            // Headless Services without ports still list their pods, portless.
            if is_headless(svc) {
                by_address.entry(key).or_insert((address, BTreeSet::new()));
            }
            continue;
        }
        for sp in &ports {
            let Some(port) = find_port(pod, sp) else {
                tracing::debug!(pod = %pod.name_any(), port = ?sp.name, "pod lacks the service's target port");
                continue;
            };
            let entry = by_address
                .entry(key.clone())
                .or_insert_with(|| (address.clone(), BTreeSet::new()));
            entry.1.insert(PortKey::new(sp, port));
        }
    }
    // Group the addresses by the exact set of ports they serve.
    let mut groups: BTreeMap<Vec<PortKey>, (Vec<EndpointAddress>, Vec<EndpointAddress>)> =
        BTreeMap::new();
    for ((_, _, ready), (address, ports)) in by_address {
        if ports.is_empty() && !is_headless(svc) {
            continue;
        }
        let group = groups.entry(ports.into_iter().collect()).or_default();
        if ready {
            group.0.push(address);
        } else {
            group.1.push(address);
        }
    }
    let total: usize = groups.values().map(|(r, n)| r.len() + n.len()).sum();
    let truncated = total > MAX_CAPACITY;
    if truncated {
        // Keep ready addresses first, then as many not-ready ones as still fit.
        let mut room = MAX_CAPACITY;
        for (ready, _) in groups.values_mut() {
            ready.truncate(room);
            room -= ready.len();
        }
        for (_, not_ready) in groups.values_mut() {
            not_ready.truncate(room);
            room -= not_ready.len();
        }
    }
    let subsets = groups
        .into_iter()
        .filter(|(_, (r, n))| !r.is_empty() || !n.is_empty())
        .map(|(ports, (ready, not_ready))| EndpointSubset {
            addresses: (!ready.is_empty()).then_some(ready),
            not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
            ports: (!ports.is_empty()).then(|| ports.into_iter().map(PortKey::into_port).collect()),
        })
        .collect();
    (subsets, truncated)
}

/// One resolved port of a subset, ordered for grouping.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct PortKey {
    name: String,
    port: i32,
    protocol: String,
    app_protocol: Option<String>,
}

impl PortKey {
    fn new(sp: &ServicePort, port: i32) -> Self {
        PortKey {
            name: sp.name.clone().unwrap_or_default(),
            port,
            protocol: protocol_of(sp),
            app_protocol: sp.app_protocol.clone(),
        }
    }

    fn into_port(self) -> EndpointPort {
        EndpointPort {
            name: (!self.name.is_empty()).then_some(self.name),
            port: self.port,
            protocol: Some(self.protocol),
            app_protocol: self.app_protocol,
        }
    }
}

fn endpoint_address(svc: &Service, pod: &Pod, ip: String) -> EndpointAddress {
    let spec = pod.spec.as_ref();
    EndpointAddress {
        ip,
        hostname: hostname_for(pod, svc),
        node_name: spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty()),
        target_ref: Some(pod_reference(pod)),
    }
}

// ---- helpers shared with the EndpointSlice controller ----

/// The Service's selector, when it has a non-empty one (an empty selector is stored as
/// none upstream, so it selects nothing).
pub(crate) fn service_selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
}

/// A selector map as a label selector string (`a=b,c=d`).
pub(crate) fn selector_string(selector: &BTreeMap<String, String>) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether every key of `selector` is in `labels` with the same value.
pub(crate) fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether the Service has no cluster IP (`None`, or none allocated).
pub(crate) fn is_headless(svc: &Service) -> bool {
    let ip = svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref());
    matches!(ip, None | Some("") | Some("None"))
}

/// Whether the Service's primary IP family is IPv6.
pub(crate) fn service_wants_ipv6(svc: &Service) -> bool {
    let spec = svc.spec.as_ref();
    if let Some(family) = spec
        .and_then(|s| s.ip_families.as_ref())
        .and_then(|f| f.first())
    {
        return family == "IPv6";
    }
    spec.and_then(|s| s.cluster_ip.as_deref())
        .is_some_and(|ip| ip.contains(':'))
}

/// The pod's IP of the wanted family (from `podIPs`, else `podIP`).
pub(crate) fn pod_ip(pod: &Pod, v6: bool) -> Option<String> {
    let status = pod.status.as_ref()?;
    let mut candidates: Vec<&str> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .collect();
    if let Some(ip) = status.pod_ip.as_deref() {
        candidates.push(ip);
    }
    candidates
        .into_iter()
        .find(|ip| !ip.is_empty() && ip.contains(':') == v6)
        .map(str::to_string)
}

/// Succeeded or Failed: the pod will not run again.
pub(crate) fn is_pod_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Whether the pod's Ready condition is True.
pub(crate) fn is_pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Upstream's `ShouldPodBeInEndpoints`: not terminal, has an IP, and (unless
/// `include_terminating`) not being deleted.
pub(crate) fn should_pod_be_in_endpoints(pod: &Pod, include_terminating: bool) -> bool {
    if is_pod_terminal(pod) {
        return false;
    }
    let status = pod.status.as_ref();
    let has_ip = status.is_some_and(|s| {
        s.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty())
            || s.pod_ips.as_ref().is_some_and(|ips| !ips.is_empty())
    });
    if !has_ip {
        return false;
    }
    include_terminating || pod.metadata.deletion_timestamp.is_none()
}

/// Whether a not-ready pod still belongs under `notReadyAddresses`: not if its restart
/// policy means it has finished for good.
fn should_unready_pod_be_listed(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
        Some("Never") => !matches!(phase, Some("Failed" | "Succeeded")),
        Some("OnFailure") => phase != Some("Succeeded"),
        _ => true,
    }
}

/// The protocol of a service port (TCP by default).
pub(crate) fn protocol_of(sp: &ServicePort) -> String {
    sp.protocol.clone().unwrap_or_else(|| "TCP".to_string())
}

/// Resolves the service port's `targetPort` for one pod: a number as is (the service
/// port when unset), a name through the ports of the pod's containers (and sidecar init
/// containers) with the same protocol; `None` when the pod has no such named port.
pub(crate) fn find_port(pod: &Pod, sp: &ServicePort) -> Option<i32> {
    match &sp.target_port {
        None => Some(sp.port),
        Some(IntOrString::Int(0)) => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<i32>() {
                return Some(n);
            }
            let protocol = protocol_of(sp);
            let spec = pod.spec.as_ref()?;
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|p| p.container_port)
        }
    }
}

/// The pod's hostname when the Service is its subdomain (so DNS names resolve).
pub(crate) fn hostname_for(pod: &Pod, svc: &Service) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let hostname = spec.hostname.as_deref().filter(|h| !h.is_empty())?;
    let same_ns = pod.metadata.namespace == svc.metadata.namespace;
    (same_ns && spec.subdomain.as_deref() == svc.metadata.name.as_deref())
        .then(|| hostname.to_string())
}

/// `{kind: Pod, namespace, name, uid}`, as upstream's endpoints carry (no resourceVersion).
pub(crate) fn pod_reference(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".to_string()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

/// A pod's namespace and name.
type PodKey = (String, String);

/// Maps a changed pod to the Services whose selectors match it — now, and (for pods that
/// were serving) before, so a pod whose labels changed also leaves its old Services.
pub(crate) struct PodMapper {
    services: Store<Service>,
    /// Pods that may appear in some Service's endpoints → those Services.
    previous: Mutex<HashMap<PodKey, Vec<ObjectRef<Service>>>>,
}

impl PodMapper {
    pub(crate) fn new(services: Store<Service>) -> Arc<Self> {
        Arc::new(PodMapper {
            services,
            previous: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn map(&self, pod: &Pod) -> Vec<ObjectRef<Service>> {
        let ns = pod.namespace().unwrap_or_default();
        let labels = pod.labels();
        let mut refs: Vec<ObjectRef<Service>> = self
            .services
            .state()
            .iter()
            .filter(|svc| svc.namespace().as_deref() == Some(ns.as_str()))
            .filter(|svc| service_selector(svc).is_some_and(|sel| selector_matches(sel, labels)))
            .map(|svc| ObjectRef::from_obj(svc.as_ref()))
            .collect();
        let key = (ns, pod.name_any());
        // Only pods that can be listed need remembering: a pod that is not in any
        // endpoints cannot leave one; a terminating pod has already been reported to its
        // Services, so forgetting it then keeps this map from growing with deleted pods.
        let listed = should_pod_be_in_endpoints(pod, false);
        let old = {
            let mut previous = self.previous.lock().unwrap_or_else(|e| e.into_inner());
            if listed && !refs.is_empty() {
                previous.insert(key, refs.clone())
            } else {
                previous.remove(&key)
            }
        };
        for r in old.into_iter().flatten() {
            if !refs.contains(&r) {
                refs.push(r);
            }
        }
        refs
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn service(v: serde_json::Value) -> Service {
        serde_json::from_value(v).expect("valid service")
    }

    pub(crate) fn web_service() -> Service {
        service(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "svc-uid",
                         "labels": {"tier": "front"}},
            "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.10",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP",
                                "targetPort": "http"},
                               {"name": "metrics", "port": 9090, "protocol": "TCP",
                                "targetPort": 9100}]}
        }))
    }

    /// A pod of app=web; `http_port` None means it has no port named `http`.
    pub(crate) fn pod(name: &str, ip: &str, ready: bool, http_port: Option<i32>) -> Pod {
        let ports = match http_port {
            Some(p) => json!([{"name": "http", "containerPort": p}]),
            None => json!([{"name": "other", "containerPort": 1}]),
        };
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                         "labels": {"app": "web"}},
            "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "i",
                     "ports": ports}]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready",
                                       "status": if ready { "True" } else { "False" }}]}
        }))
        .expect("valid pod")
    }

    fn ips(addrs: &Option<Vec<EndpointAddress>>) -> Vec<&str> {
        addrs.iter().flatten().map(|a| a.ip.as_str()).collect()
    }

    #[test]
    fn ready_and_not_ready_pods_share_a_subset() {
        let pods = [
            pod("a", "10.0.0.1", true, Some(8080)),
            pod("b", "10.0.0.2", false, Some(8080)),
        ];
        let (subsets, truncated) = desired_subsets(&web_service(), &pods);
        assert!(!truncated);
        assert_eq!(subsets.len(), 1, "{subsets:?}");
        let s = &subsets[0];
        assert_eq!(ips(&s.addresses), ["10.0.0.1"]);
        assert_eq!(ips(&s.not_ready_addresses), ["10.0.0.2"]);
        let ports: Vec<(Option<&str>, i32)> = s
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.as_deref(), p.port))
            .collect();
        assert_eq!(ports, [(Some("http"), 8080), (Some("metrics"), 9100)]);
        let a = &s.addresses.as_ref().expect("addresses")[0];
        assert_eq!(a.node_name.as_deref(), Some("node-a"));
        let r = a.target_ref.as_ref().expect("targetRef");
        assert_eq!(r.kind.as_deref(), Some("Pod"));
        assert_eq!(r.name.as_deref(), Some("a"));
        assert_eq!(r.namespace.as_deref(), Some("default"));
        assert_eq!(r.uid.as_deref(), Some("uid-a"));
    }

    #[test]
    fn named_target_port_resolves_per_pod_and_groups_by_port_set() {
        let pods = [
            pod("a", "10.0.0.1", true, Some(8080)),
            pod("b", "10.0.0.2", true, Some(8081)),
            pod("c", "10.0.0.3", true, None),
        ];
        let (subsets, _) = desired_subsets(&web_service(), &pods);
        assert_eq!(subsets.len(), 3, "{subsets:?}");
        let find = |ip: &str| {
            subsets
                .iter()
                .find(|s| ips(&s.addresses) == [ip])
                .unwrap_or_else(|| panic!("no subset for {ip}: {subsets:?}"))
        };
        let ports =
            |s: &EndpointSubset| -> Vec<i32> { s.ports.iter().flatten().map(|p| p.port).collect() };
        assert_eq!(ports(find("10.0.0.1")), [8080, 9100]);
        assert_eq!(ports(find("10.0.0.2")), [8081, 9100]);
        // No port named http: only the numeric port's subset has it.
        assert_eq!(ports(find("10.0.0.3")), [9100]);
    }

    #[test]
    fn terminating_terminal_and_ipless_pods_are_left_out() {
        let mut terminating = pod("t", "10.0.0.1", true, Some(8080));
        terminating.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        let mut done = pod("d", "10.0.0.2", false, Some(8080));
        if let Some(s) = done.status.as_mut() {
            s.phase = Some("Succeeded".to_string());
        }
        let mut pending = pod("p", "", false, Some(8080));
        if let Some(s) = pending.status.as_mut() {
            s.pod_ip = None;
        }
        let ok = pod("ok", "10.0.0.9", true, Some(8080));
        let (subsets, _) = desired_subsets(&web_service(), &[terminating, done, pending, ok]);
        assert_eq!(subsets.len(), 1);
        assert_eq!(ips(&subsets[0].addresses), ["10.0.0.9"]);
        assert!(subsets[0].not_ready_addresses.is_none());
    }

    #[test]
    fn publish_not_ready_addresses_lists_everyone_as_ready() {
        let mut svc = web_service();
        if let Some(s) = svc.spec.as_mut() {
            s.publish_not_ready_addresses = Some(true);
        }
        let pods = [pod("b", "10.0.0.2", false, Some(8080))];
        let (subsets, _) = desired_subsets(&svc, &pods);
        assert_eq!(ips(&subsets[0].addresses), ["10.0.0.2"]);
    }

    #[test]
    fn no_pods_means_no_subsets_and_labels_follow_upstream() {
        let (subsets, _) = desired_subsets(&web_service(), &[]);
        assert!(subsets.is_empty());
        let labels = desired_labels(&web_service());
        assert_eq!(labels.get("tier").map(String::as_str), Some("front"));
        assert_eq!(
            labels.get(LABEL_MANAGED_BY).map(String::as_str),
            Some(CONTROLLER_NAME)
        );
        assert!(!labels.contains_key(LABEL_HEADLESS));
        let mut headless = web_service();
        if let Some(s) = headless.spec.as_mut() {
            s.cluster_ip = Some("None".to_string());
        }
        assert!(desired_labels(&headless).contains_key(LABEL_HEADLESS));
    }

    #[test]
    fn over_capacity_is_truncated() {
        let pods: Vec<Pod> = (0..1005)
            .map(|i| {
                pod(
                    &format!("p{i}"),
                    &format!("10.1.{}.{}", i / 250, i % 250),
                    true,
                    Some(8080),
                )
            })
            .collect();
        let (subsets, truncated) = desired_subsets(&web_service(), &pods);
        assert!(truncated);
        let n: usize = subsets
            .iter()
            .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
            .sum();
        assert_eq!(n, MAX_CAPACITY);
    }

    #[test]
    fn normalized_treats_empty_lists_as_absent() {
        let a = vec![EndpointSubset {
            addresses: Some(vec![]),
            not_ready_addresses: None,
            ports: Some(vec![]),
        }];
        let b = vec![EndpointSubset::default()];
        assert_eq!(normalized(Some(&a)), normalized(Some(&b)));
    }
}
