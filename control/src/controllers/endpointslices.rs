//! The EndpointSlice controller: for every Service with a selector, keeps
//! `discovery.k8s.io/v1` EndpointSlices listing the selected pods with their conditions
//! (ready, serving, terminating), node and target reference, grouped by the set of ports
//! their named `targetPort`s resolve to, at most [`MAX_ENDPOINTS_PER_SLICE`] per slice.
//!
//! Slices are owned by their Service (controller ownerReference) and labelled
//! `kubernetes.io/service-name` and `endpointslice.kubernetes.io/managed-by`, as
//! kube-controller-manager's controller makes them. Like upstream it keeps endpoints in
//! the slice that already holds them, fills free room before creating slices, and writes
//! only the slices whose content changed. When the Service goes its slices are deleted
//! here as well, so that they do not depend on the garbage collector.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;

use super::endpoints::{
    find_port, hostname_for, is_pod_ready, pod_ip, pod_reference, protocol_of, selector_string,
    service_selector, service_wants_ipv6, should_pod_be_in_endpoints, PodMapper, LABEL_HEADLESS,
};
use super::events::{self, EventType, Recorder};
use super::shared_watch::SharedWatch;

/// What can go wrong while syncing a Service's EndpointSlices.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("api call failed: {0}")]
    Api(#[from] kube::Error),
    /// The Service has no namespace (the API server never sends one like that).
    #[error("service {0} has no namespace")]
    NoNamespace(String),
}

/// The label naming a slice's Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The label naming the controller that manages a slice.
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Our value of [`LABEL_MANAGED_BY`], upstream's.
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
/// Upstream's default `--max-endpoints-per-slice`.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

struct Context {
    client: kube::Client,
    recorder: Recorder,
}

/// Runs the controller until the process ends.
pub async fn run(client: kube::Client, pods: SharedWatch<Pod>) {
    let services: Api<Service> = Api::all(client.clone());
    let slices: Api<EndpointSlice> = Api::all(client.clone());
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), "endpointslice-controller"),
    });
    let controller = Controller::new(services.clone(), watcher::Config::default());
    let mapper = PodMapper::new(controller.store());
    let managed =
        watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={CONTROLLER_NAME}"));
    controller
        // A Service's deletion reaches us through this second watch and ends as "object
        // not found", where its slices are removed.
        .watches(services, watcher::Config::default(), |svc| {
            Some(ObjectRef::from_obj(&svc))
        })
        .watches_stream(pods.touched(), move |pod| mapper.map(&pod))
        // By label rather than owner, so slices of a deleted Service are found too.
        .watches(slices, managed, |slice| {
            let ns = slice.namespace()?;
            let svc = slice.labels().get(LABEL_SERVICE_NAME)?;
            Some(ObjectRef::<Service>::new(svc).within(&ns))
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|res| {
            let client = client.clone();
            async move {
                match res {
                    Ok(_) => {}
                    Err(controller::Error::ObjectNotFound(obj)) => {
                        if let Some(ns) = obj.namespace.as_deref() {
                            if let Err(e) = delete_slices(&client, ns, &obj.name).await {
                                tracing::warn!(namespace = ns, service = %obj.name, error = %e,
                                    "deleting endpoint slices of a deleted service failed");
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "endpointslice reconcile failed"),
                }
            }
        })
        .await;
}

fn error_policy(svc: Arc<Service>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(service = %svc.name_any(), namespace = svc.namespace().unwrap_or_default(),
        error = %err, "syncing endpoint slices failed; retrying");
    Action::requeue(Duration::from_secs(1))
}

fn managed_selector(service: &str) -> String {
    format!("{LABEL_SERVICE_NAME}={service},{LABEL_MANAGED_BY}={CONTROLLER_NAME}")
}

/// Deletes every slice this controller made for the Service `ns/name`.
async fn delete_slices(client: &kube::Client, ns: &str, name: &str) -> Result<(), Error> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let slices = api
        .list(&ListParams::default().labels(&managed_selector(name)))
        .await?;
    for slice in slices {
        delete_slice(&api, &slice.name_any()).await?;
    }
    Ok(())
}

async fn delete_slice(api: &Api<EndpointSlice>, name: &str) -> Result<(), kube::Error> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

async fn reconcile(cached: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = cached.name_any();
    let ns = cached
        .namespace()
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    // Read the Service fresh: the cache may still hold one that was just deleted.
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(svc) = services.get_opt(&name).await? else {
        delete_slices(&ctx.client, &ns, &name).await?;
        return Ok(Action::await_change());
    };
    let external = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName");
    let Some(selector) = service_selector(&svc).filter(|_| !external) else {
        return Ok(Action::await_change());
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pods = pods
        .list(&ListParams::default().labels(&selector_string(selector)))
        .await?
        .items;
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = api
        .list(&ListParams::default().labels(&managed_selector(&name)))
        .await?
        .items;
    let plan = plan(&svc, &pods, &existing);
    if plan.is_empty() {
        return Ok(Action::await_change());
    }
    tracing::debug!(namespace = %ns, service = %name, create = plan.create.len(),
        update = plan.update.len(), delete = plan.delete.len(), "writing endpoint slices");
    // Creates and updates before deletes, so consumers never see the endpoints vanish.
    let result = apply_plan(&api, plan).await;
    if let Err(e) = &result {
        if !matches!(e, kube::Error::Api(s) if s.code == 409) {
            let msg = format!("Error updating Endpoint Slices for Service {ns}/{name}: {e}");
            ctx.recorder
                .record(
                    &events::reference(&svc),
                    EventType::Warning,
                    "FailedToUpdateEndpointSlices",
                    &msg,
                )
                .await;
        }
    }
    result?;
    Ok(Action::await_change())
}

async fn apply_plan(api: &Api<EndpointSlice>, plan: Plan) -> Result<(), kube::Error> {
    for slice in &plan.create {
        api.create(&PostParams::default(), slice).await?;
    }
    for slice in &plan.update {
        // resourceVersion from the list: a concurrent writer makes this a 409 and a retry.
        api.replace(&slice.name_any(), &PostParams::default(), slice)
            .await?;
    }
    for name in &plan.delete {
        delete_slice(api, name).await?;
    }
    Ok(())
}

/// The writes that bring a Service's slices to the wanted state.
#[derive(Debug, Default)]
pub struct Plan {
    /// New slices (with `generateName`).
    pub create: Vec<EndpointSlice>,
    /// Changed slices, carrying the resourceVersion they were read at.
    pub update: Vec<EndpointSlice>,
    /// Names of slices to delete.
    pub delete: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }
}

/// A slice's port list, as a comparable key.
type PortsKey = Vec<(String, i32, String, Option<String>)>;

fn ports_key(ports: &[EndpointPort]) -> PortsKey {
    ports
        .iter()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.port.unwrap_or_default(),
                p.protocol.clone().unwrap_or_else(|| "TCP".to_string()),
                p.app_protocol.clone(),
            )
        })
        .collect()
}

/// What identifies one endpoint across syncs: its pod and address.
fn endpoint_key(ep: &Endpoint) -> (String, String) {
    let uid = ep
        .target_ref
        .as_ref()
        .and_then(|r| r.uid.clone().or_else(|| r.name.clone()))
        .unwrap_or_default();
    (uid, ep.addresses.first().cloned().unwrap_or_default())
}

/// The slice's endpoints for one pod, as upstream's `podToEndpoint`.
pub fn pod_to_endpoint(svc: &Service, pod: &Pod, ip: String) -> Endpoint {
    let publish = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let serving = publish || is_pod_ready(pod);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    // Never ready while terminating, unless not-ready addresses are published anyway.
    let ready = publish || (serving && !terminating);
    Endpoint {
        addresses: vec![ip],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        hostname: hostname_for(pod, svc),
        node_name: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty()),
        target_ref: Some(pod_reference(pod)),
        ..Default::default()
    }
}

/// The pod's ports for the Service: each service port whose target the pod resolves, in
/// the Service's order.
fn endpoint_ports(svc: &Service, pod: &Pod) -> Vec<EndpointPort> {
    svc.spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter_map(|sp| {
            find_port(pod, sp).map(|port| EndpointPort {
                name: Some(sp.name.clone().unwrap_or_default()),
                port: Some(port),
                protocol: Some(protocol_of(sp)),
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect()
}

/// The wanted endpoints, grouped by port set (groups and endpoints in a stable order).
pub fn desired_endpoints(
    svc: &Service,
    pods: &[Pod],
) -> BTreeMap<PortsKey, (Vec<EndpointPort>, Vec<Endpoint>)> {
    let v6 = service_wants_ipv6(svc);
    let mut sorted: Vec<&Pod> = pods.iter().collect();
    sorted.sort_by_key(|p| p.metadata.name.clone());
    let mut groups: BTreeMap<PortsKey, (Vec<EndpointPort>, Vec<Endpoint>)> = BTreeMap::new();
    for pod in sorted {
        if !should_pod_be_in_endpoints(pod, true) {
            continue;
        }
        let Some(ip) = pod_ip(pod, v6) else {
            continue;
        };
        let ports = endpoint_ports(svc, pod);
        let key = ports_key(&ports);
        groups
            .entry(key)
            .or_insert_with(|| (ports, Vec::new()))
            .1
            .push(pod_to_endpoint(svc, pod, ip));
    }
    groups
}

/// The labels of the Service's slices: the Service's own, minus the reserved ones, plus
/// headless, service-name and managed-by.
fn desired_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.labels().clone();
    labels.remove(LABEL_SERVICE_NAME);
    labels.remove(LABEL_MANAGED_BY);
    let cluster_ip = svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref());
    if cluster_ip == Some("None") {
        labels.insert(LABEL_HEADLESS.to_string(), String::new());
    } else {
        labels.remove(LABEL_HEADLESS);
    }
    labels.insert(LABEL_SERVICE_NAME.to_string(), svc.name_any());
    labels.insert(LABEL_MANAGED_BY.to_string(), CONTROLLER_NAME.to_string());
    labels
}

fn owned_by(slice: &EndpointSlice, svc: &Service) -> bool {
    let uid = svc.metadata.uid.as_deref().unwrap_or_default();
    slice
        .owner_references()
        .iter()
        .any(|o| o.kind == "Service" && o.uid == uid && o.controller == Some(true))
}

fn new_slice(svc: &Service, address_type: &str, ports: Vec<EndpointPort>) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", svc.name_any())),
            namespace: svc.namespace(),
            labels: Some(desired_labels(svc)),
            owner_references: Some(vec![super::controller_ref(svc)]),
            ..Default::default()
        },
        address_type: address_type.to_string(),
        endpoints: Vec::new(),
        ports: (!ports.is_empty()).then_some(ports),
    }
}

/// Whether two slices differ in anything this controller manages.
fn differs(a: &EndpointSlice, b: &EndpointSlice) -> bool {
    let ports = |s: &EndpointSlice| ports_key(s.ports.as_deref().unwrap_or_default());
    a.metadata.labels != b.metadata.labels
        || a.metadata.owner_references != b.metadata.owner_references
        || a.address_type != b.address_type
        || ports(a) != ports(b)
        || a.endpoints != b.endpoints
}

/// Computes the writes that make `existing` (the slices labelled for this Service and
/// managed by us) hold exactly the endpoints of `pods`.
pub fn plan(svc: &Service, pods: &[Pod], existing: &[EndpointSlice]) -> Plan {
    let mut plan = plan_without_reuse(svc, pods, existing);
    let address_type = address_type(svc);
    // A slice to create and one of ours to delete become one update, as upstream does,
    // so that consumers see fewer objects come and go.
    let mut i = 0;
    while i < plan.delete.len() && !plan.create.is_empty() {
        let reusable = existing
            .iter()
            .find(|s| s.name_any() == plan.delete[i])
            .filter(|s| owned_by(s, svc) && s.address_type == address_type);
        match (reusable, plan.create.pop()) {
            (Some(old), Some(new)) => {
                let mut s = old.clone();
                s.metadata.labels = new.metadata.labels;
                s.metadata.owner_references = new.metadata.owner_references;
                s.ports = new.ports;
                s.endpoints = new.endpoints;
                plan.update.push(s);
                plan.delete.remove(i);
            }
            (None, Some(new)) => {
                plan.create.push(new);
                i += 1;
            }
            (_, None) => break,
        }
    }
    plan
}

fn address_type(svc: &Service) -> &'static str {
    if service_wants_ipv6(svc) {
        "IPv6"
    } else {
        "IPv4"
    }
}

/// [`plan`] before pairing creates with deletes.
fn plan_without_reuse(svc: &Service, pods: &[Pod], existing: &[EndpointSlice]) -> Plan {
    let address_type = address_type(svc);
    let mut plan = Plan::default();
    // Slices of an earlier Service of this name, or of another address family, go.
    let mut mine: Vec<&EndpointSlice> = Vec::new();
    for slice in existing {
        if owned_by(slice, svc) && slice.address_type == address_type {
            mine.push(slice);
        } else {
            plan.delete.push(slice.name_any());
        }
    }
    mine.sort_by_key(|s| s.name_any());
    let desired = desired_endpoints(svc, pods);
    let labels = desired_labels(svc);
    let owners = vec![super::controller_ref(svc)];
    let refreshed = |slice: &EndpointSlice, endpoints: Vec<Endpoint>, ports: &[EndpointPort]| {
        let mut s = slice.clone();
        s.metadata.labels = Some(labels.clone());
        s.metadata.owner_references = Some(owners.clone());
        s.ports = (!ports.is_empty()).then(|| ports.to_vec());
        s.endpoints = endpoints;
        s
    };

    if desired.is_empty() {
        // No endpoints: one placeholder slice without ports, as upstream keeps.
        let keep = mine.iter().position(|s| s.endpoints.is_empty());
        for (i, slice) in mine.iter().enumerate() {
            if Some(i) == keep {
                let wanted = refreshed(slice, Vec::new(), &[]);
                if differs(slice, &wanted) {
                    plan.update.push(wanted);
                }
            } else {
                plan.delete.push(slice.name_any());
            }
        }
        if keep.is_none() {
            plan.create.push(new_slice(svc, address_type, Vec::new()));
        }
        return plan;
    }

    let mut by_ports: HashMap<PortsKey, Vec<&EndpointSlice>> = HashMap::new();
    for slice in mine {
        by_ports
            .entry(ports_key(slice.ports.as_deref().unwrap_or_default()))
            .or_default()
            .push(slice);
    }
    for (key, (ports, endpoints)) in desired {
        let slices = by_ports.remove(&key).unwrap_or_default();
        let wanted: HashMap<(String, String), &Endpoint> =
            endpoints.iter().map(|e| (endpoint_key(e), e)).collect();
        let mut placed: HashSet<(String, String)> = HashSet::new();
        // Endpoints stay in the slice that holds them (updated in place).
        let mut contents: Vec<Vec<Endpoint>> = slices
            .iter()
            .map(|slice| {
                slice
                    .endpoints
                    .iter()
                    .filter_map(|e| {
                        let k = endpoint_key(e);
                        let w = wanted.get(&k)?;
                        placed.insert(k).then(|| (*w).clone())
                    })
                    .take(MAX_ENDPOINTS_PER_SLICE)
                    .collect()
            })
            .collect();
        // New endpoints fill free room first, then new slices.
        let mut fresh = endpoints
            .iter()
            .filter(|e| !placed.contains(&endpoint_key(e)))
            .cloned()
            .peekable();
        for c in contents.iter_mut() {
            while c.len() < MAX_ENDPOINTS_PER_SLICE {
                match fresh.next() {
                    Some(e) => c.push(e),
                    None => break,
                }
            }
        }
        for (slice, c) in slices.iter().zip(contents) {
            if c.is_empty() {
                plan.delete.push(slice.name_any());
                continue;
            }
            let wanted = refreshed(slice, c, &ports);
            if differs(slice, &wanted) {
                plan.update.push(wanted);
            }
        }
        while fresh.peek().is_some() {
            let mut slice = new_slice(svc, address_type, ports.clone());
            slice.endpoints = fresh.by_ref().take(MAX_ENDPOINTS_PER_SLICE).collect();
            plan.create.push(slice);
        }
    }
    // Port sets no pod has any more.
    for slices in by_ports.into_values() {
        plan.delete.extend(slices.into_iter().map(|s| s.name_any()));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::endpoints::tests::{pod, web_service};

    fn ready(e: &Endpoint) -> bool {
        e.conditions.as_ref().and_then(|c| c.ready) == Some(true)
    }

    /// Applies a plan to a simulated store, naming created slices.
    fn apply(mut existing: Vec<EndpointSlice>, plan: Plan) -> Vec<EndpointSlice> {
        existing.retain(|s| !plan.delete.contains(&s.name_any()));
        for u in plan.update {
            let i = existing
                .iter()
                .position(|s| s.name_any() == u.name_any())
                .expect("updated slice exists");
            existing[i] = u;
        }
        for (i, mut c) in plan.create.into_iter().enumerate() {
            c.metadata.name = Some(format!("web-gen{}-{i}", existing.len()));
            existing.push(c);
        }
        existing
    }

    #[test]
    fn slices_carry_conditions_ports_and_metadata() {
        let mut not_ready = pod("b", "10.0.0.2", false, Some(8080));
        not_ready.metadata.deletion_timestamp = None;
        let mut terminating = pod("c", "10.0.0.3", true, Some(8080));
        terminating.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        let pods = [
            pod("a", "10.0.0.1", true, Some(8080)),
            not_ready,
            terminating,
        ];
        let svc = web_service();
        let plan = plan(&svc, &pods, &[]);
        assert!(plan.update.is_empty() && plan.delete.is_empty());
        assert_eq!(plan.create.len(), 1);
        let s = &plan.create[0];
        assert_eq!(s.address_type, "IPv4");
        assert_eq!(s.metadata.generate_name.as_deref(), Some("web-"));
        let labels = s.metadata.labels.as_ref().expect("labels");
        assert_eq!(labels[LABEL_SERVICE_NAME], "web");
        assert_eq!(labels[LABEL_MANAGED_BY], CONTROLLER_NAME);
        assert_eq!(labels["tier"], "front");
        let owner = &s.metadata.owner_references.as_ref().expect("owners")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Service", "svc-uid")
        );
        assert_eq!(owner.controller, Some(true));
        let ports: Vec<(Option<&str>, Option<i32>)> = s
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.as_deref(), p.port))
            .collect();
        assert_eq!(
            ports,
            [(Some("http"), Some(8080)), (Some("metrics"), Some(9100))]
        );
        let by_ip = |ip: &str| {
            s.endpoints
                .iter()
                .find(|e| e.addresses == [ip])
                .unwrap_or_else(|| panic!("no endpoint {ip}"))
        };
        let a = by_ip("10.0.0.1");
        assert!(ready(a));
        assert_eq!(a.node_name.as_deref(), Some("node-a"));
        assert_eq!(
            a.target_ref.as_ref().and_then(|r| r.name.as_deref()),
            Some("a")
        );
        assert!(!ready(by_ip("10.0.0.2")));
        let c = by_ip("10.0.0.3").conditions.clone().expect("conditions");
        assert_eq!(
            (c.ready, c.serving, c.terminating),
            (Some(false), Some(true), Some(true))
        );
    }

    #[test]
    fn named_ports_split_slices_by_port_set() {
        let pods = [
            pod("a", "10.0.0.1", true, Some(8080)),
            pod("b", "10.0.0.2", true, Some(8081)),
            pod("c", "10.0.0.3", true, None),
        ];
        let plan = plan(&web_service(), &pods, &[]);
        assert_eq!(plan.create.len(), 3);
        let mut sets: Vec<Vec<i32>> = plan
            .create
            .iter()
            .map(|s| s.ports.iter().flatten().filter_map(|p| p.port).collect())
            .collect();
        sets.sort();
        assert_eq!(sets, [vec![8080, 9100], vec![8081, 9100], vec![9100]]);
    }

    #[test]
    fn at_most_a_hundred_endpoints_per_slice_and_stable_when_unchanged() {
        let svc = web_service();
        let mut pods: Vec<Pod> = (0..250)
            .map(|i| {
                pod(
                    &format!("p{i:03}"),
                    &format!("10.2.{}.{}", i / 200, i % 200),
                    true,
                    Some(8080),
                )
            })
            .collect();
        let first = plan(&svc, &pods, &[]);
        assert_eq!(first.create.len(), 3);
        assert!(first
            .create
            .iter()
            .all(|s| s.endpoints.len() <= MAX_ENDPOINTS_PER_SLICE));
        let store = apply(Vec::new(), first);
        // Nothing changed: nothing to write.
        assert!(plan(&svc, &pods, &store).is_empty());

        // One pod goes: only its slice is updated.
        pods.retain(|p| p.metadata.name.as_deref() != Some("p007"));
        let second = plan(&svc, &pods, &store);
        assert!(second.create.is_empty() && second.delete.is_empty());
        assert_eq!(second.update.len(), 1);
        let store = apply(store, second);
        let total: usize = store.iter().map(|s| s.endpoints.len()).sum();
        assert_eq!(total, 249);

        // A new pod fills the free room instead of making a slice.
        pods.push(pod("q", "10.3.0.1", true, Some(8080)));
        let third = plan(&svc, &pods, &store);
        assert!(third.create.is_empty() && third.delete.is_empty());
        assert_eq!(third.update.len(), 1);
    }

    #[test]
    fn no_pods_keep_one_placeholder_and_strangers_go() {
        let svc = web_service();
        let first = plan(&svc, &[], &[]);
        assert_eq!(first.create.len(), 1);
        assert!(first.create[0].endpoints.is_empty());
        assert!(first.create[0].ports.is_none());
        let store = apply(Vec::new(), first);
        assert!(plan(&svc, &[], &store).is_empty());

        // A slice owned by an earlier Service of the same name is deleted.
        let mut stale = store[0].clone();
        stale.metadata.name = Some("web-old".to_string());
        if let Some(o) = stale.metadata.owner_references.as_mut() {
            o[0].uid = "old-uid".to_string();
        }
        let mut with_stale = store.clone();
        with_stale.push(stale);
        let p = plan(&svc, &[pod("a", "10.0.0.1", true, Some(8080))], &with_stale);
        assert!(p.delete.contains(&"web-old".to_string()), "{p:?}");
        // The placeholder has other ports: it is reused for the new port set rather
        // than deleted next to a new slice.
        assert!(p.create.is_empty(), "{p:?}");
        assert_eq!(p.delete, ["web-old"]);
        assert_eq!(p.update.len(), 1);
        assert_eq!(p.update[0].name_any(), store[0].name_any());
        assert_eq!(p.update[0].endpoints.len(), 1);
    }
}
