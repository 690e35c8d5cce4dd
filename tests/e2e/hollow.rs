//! Hollow nodes: simulated kubelets that are nothing but API clients, as Kubernetes'
//! kubemark uses. A [`HollowNode`] registers a Node (capacity, allocatable, Ready=True),
//! renews its Lease in `kube-node-lease` every second, and reports the pods bound to it
//! Running and Ready with an address from its `spec.podCIDR`; it finishes their graceful
//! deletion as a kubelet would (delete with grace 0 once they carry a
//! deletionTimestamp). It runs as a background task until [`HollowNode::shutdown`] or
//! drop; [`HollowNode::stop_heartbeats`] makes it go silent (no Lease renewals, no
//! status, no pod work) while staying registered, as an unreachable node does.
//!
//! Like a kubelet it polls nothing: one watch of its pods (field selector
//! `spec.nodeName=<name>`) and one of its own Node (`metadata.name=<name>`, for the
//! podCIDR and the Ready condition the node lifecycle controller may have changed).
//! Pods are worked on when their events arrive, several at once; what failed is retried
//! on the next heartbeat.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::ResourceExt;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::harness::Cluster;

/// The namespace of node heartbeat Leases.
const LEASE_NAMESPACE: &str = "kube-node-lease";
/// How often a hollow node heartbeats (and retries pod work that failed).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// The address hollow nodes (and so their pods' hostIP) report.
const HOST_IP: &str = "127.0.0.1";
/// Pod status reports or deletions in flight at once per node.
const POD_WORK_CONCURRENCY: usize = 16;
/// The pod capacity of [`HollowNode::start`] (the kubelet's default).
const DEFAULT_MAX_PODS: u32 = 110;

/// One simulated node; see the module docs.
pub struct HollowNode {
    pub name: String,
    client: kube::Client,
    heartbeats: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

impl HollowNode {
    /// Registers node `name` with `cpu`/`memory` capacity (and 110 pods) and starts its
    /// agent.
    pub async fn start(cluster: &Cluster, name: &str, cpu: &str, memory: &str) -> HollowNode {
        HollowNode::start_with_pods(cluster, name, cpu, memory, DEFAULT_MAX_PODS).await
    }

    /// [`HollowNode::start`] with room for `max_pods` pods.
    pub async fn start_with_pods(
        cluster: &Cluster,
        name: &str,
        cpu: &str,
        memory: &str,
        max_pods: u32,
    ) -> HollowNode {
        // A node's own credential, as an agent has: its traffic is node traffic.
        let client = cluster.node_client(name).await;
        let nodes: Api<Node> = Api::all(client.clone());
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            }},
        }))
        .expect("a Node object");
        let node = nodes
            .create(&PostParams::default(), &node)
            .await
            .unwrap_or_else(|e| panic!("registering hollow node {name}: {e}"));
        let resources = json!({"cpu": cpu, "memory": memory, "pods": max_pods.to_string()});
        let now = Time(Timestamp::now());
        let status = json!({"status": {
            "capacity": resources,
            "allocatable": resources,
            "addresses": [
                {"type": "InternalIP", "address": HOST_IP},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [ready_condition(&now)],
            "nodeInfo": {
                "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "hollow://0",
                "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "v1.33.0-hollow",
                "machineID": "", "operatingSystem": "linux", "osImage": "hollow", "systemUUID": "",
            },
        }});
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap_or_else(|e| panic!("reporting hollow node {name} status: {e}"));

        let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(LEASE_NAMESPACE.to_string()),
                owner_references: Some(vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: name.to_string(),
                    uid: node.metadata.uid.clone().unwrap_or_default(),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(name.to_string()),
                lease_duration_seconds: Some(40),
                renew_time: Some(MicroTime(Timestamp::now())),
                ..Default::default()
            }),
        };
        leases
            .create(&PostParams::default(), &lease)
            .await
            .unwrap_or_else(|e| panic!("creating hollow node {name}'s lease: {e}"));

        let heartbeats = Arc::new(AtomicBool::new(true));
        let agent = Agent {
            name: name.to_string(),
            client: client.clone(),
            heartbeats: heartbeats.clone(),
            node: None,
            pod_cidr: None,
            ips: HashMap::new(),
            used_ips: HashSet::new(),
            next_host: 0,
            pending: HashMap::new(),
            reported: HashSet::new(),
        };
        HollowNode {
            name: name.to_string(),
            client,
            heartbeats,
            task: Some(tokio::spawn(agent.run())),
        }
    }

    /// Goes silent: no more Lease renewals, node status or pod work; the Node stays.
    pub fn stop_heartbeats(&self) {
        self.heartbeats.store(false, Ordering::SeqCst);
    }

    /// Comes back after [`HollowNode::stop_heartbeats`].
    pub fn resume_heartbeats(&self) {
        self.heartbeats.store(true, Ordering::SeqCst);
    }

    /// Stops the agent and deregisters: deletes the Node and its Lease.
    pub async fn shutdown(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        if let Err(e) = nodes.delete(&self.name, &DeleteParams::default()).await {
            panic!("deleting hollow node {}: {e}", self.name);
        }
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), LEASE_NAMESPACE);
        // The Lease may already be gone (garbage-collected through its owner).
        let _ = leases.delete(&self.name, &DeleteParams::default()).await;
    }
}

impl Drop for HollowNode {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn ready_condition(now: &Time) -> serde_json::Value {
    json!({
        "type": "Ready", "status": "True", "reason": "KubeletReady",
        "message": "kubelet is posting ready status",
        "lastHeartbeatTime": now, "lastTransitionTime": now,
    })
}

/// What a hollow node does about one pod.
enum PodWork {
    /// Finish a graceful deletion.
    Delete,
    /// Report it Running with this address.
    Start(IpAddr),
}

/// The background half of a [`HollowNode`].
struct Agent {
    name: String,
    client: kube::Client,
    heartbeats: Arc<AtomicBool>,
    /// The Node as its watch last showed it.
    node: Option<Node>,
    /// The node's podCIDR as (network address, prefix length); IPv4 only.
    pod_cidr: Option<(u32, u32)>,
    /// Pod uid → its address.
    ips: HashMap<String, IpAddr>,
    used_ips: HashSet<IpAddr>,
    /// The next host number to hand out in the pod CIDR.
    next_host: usize,
    /// Pods with work to do (or to look at), by uid: the latest version seen.
    pending: HashMap<String, Arc<Pod>>,
    /// Pods already reported Running, by uid.
    reported: HashSet<String>,
}

impl Agent {
    async fn run(mut self) {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let config = watcher::Config::default().fields(&format!("spec.nodeName={}", self.name));
        let pod_events = watcher::watcher(pods, config).default_backoff();
        let nodes: Api<Node> = Api::all(self.client.clone());
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let node_events = watcher::watcher(nodes, config).default_backoff();
        let mut pod_events = std::pin::pin!(pod_events);
        let mut node_events = std::pin::pin!(node_events);
        let mut relist: Option<HashSet<String>> = None;
        let mut tick = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if self.heartbeats.load(Ordering::SeqCst) {
                        self.heartbeat().await;
                    }
                }
                event = pod_events.next() => match event {
                    None => return,
                    Some(Ok(event)) => self.pod_event(event, &mut relist),
                    Some(Err(e)) => eprintln!("hollow node {}: pod watch: {e}", self.name),
                },
                event = node_events.next() => match event {
                    None => return,
                    Some(Ok(Event::Apply(node) | Event::InitApply(node))) => self.node_seen(node),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => eprintln!("hollow node {}: node watch: {e}", self.name),
                },
            }
            if self.heartbeats.load(Ordering::SeqCst) {
                self.sync_pods().await;
            }
        }
    }

    fn node_seen(&mut self, node: Node) {
        if self.pod_cidr.is_none() {
            self.pod_cidr = node
                .spec
                .as_ref()
                .and_then(|s| s.pod_cidr.as_deref())
                .and_then(parse_v4_cidr);
        }
        self.node = Some(node);
    }

    fn pod_event(&mut self, event: Event<Pod>, relist: &mut Option<HashSet<String>>) {
        match event {
            Event::Init => *relist = Some(HashSet::new()),
            Event::InitApply(pod) | Event::Apply(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if let Some(seen) = relist.as_mut() {
                    seen.insert(uid.clone());
                }
                self.pending.insert(uid, Arc::new(pod));
            }
            Event::Delete(pod) => self.forget(pod.metadata.uid.as_deref().unwrap_or_default()),
            Event::InitDone => {
                let seen = relist.take().unwrap_or_default();
                let gone: Vec<String> = self
                    .ips
                    .keys()
                    .chain(self.reported.iter())
                    .chain(self.pending.keys())
                    .filter(|uid| !seen.contains(*uid))
                    .cloned()
                    .collect();
                for uid in gone {
                    self.forget(&uid);
                }
            }
        }
    }

    fn forget(&mut self, uid: &str) {
        self.pending.remove(uid);
        self.reported.remove(uid);
        if let Some(ip) = self.ips.remove(uid) {
            self.used_ips.remove(&ip);
        }
    }

    /// Renews the Lease and makes sure the node says Ready=True (the node lifecycle
    /// controller turns it Unknown while we are silent).
    async fn heartbeat(&mut self) {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), LEASE_NAMESPACE);
        let renew = json!({"spec": {"renewTime": MicroTime(Timestamp::now())}});
        if let Err(e) = leases
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&renew))
            .await
        {
            eprintln!("hollow node {}: renewing the lease: {e}", self.name);
        }
        let Some(node) = &self.node else {
            // The node watch has not shown it yet.
            return;
        };
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if !ready {
            let now = Time(Timestamp::now());
            let patch = json!({"status": {"conditions": [ready_condition(&now)]}});
            let nodes: Api<Node> = Api::all(self.client.clone());
            match nodes
                .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                // Seen as Ready until the watch says otherwise, so that the next
                // heartbeat does not repeat the patch before the watch catches up.
                Ok(node) => self.node = Some(node),
                Err(e) => eprintln!("hollow node {}: reporting Ready: {e}", self.name),
            }
        }
    }

    /// Does what a kubelet would with each pending pod — finish its deletion, or start
    /// it — several at once. Pods whose work failed stay pending.
    async fn sync_pods(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut work = Vec::new();
        let uids: Vec<String> = self.pending.keys().cloned().collect();
        for uid in uids {
            let Some(pod) = self.pending.get(&uid).cloned() else {
                continue;
            };
            if pod.metadata.deletion_timestamp.is_some() {
                work.push((uid, pod, PodWork::Delete));
            } else if self.reported.contains(&uid) {
                self.pending.remove(&uid);
            } else if let Some(ip) = self.address_for(&uid) {
                work.push((uid, pod, PodWork::Start(ip)));
            }
            // Otherwise there is no podCIDR yet: the pod waits for the node watch.
        }
        let client = &self.client;
        let name = self.name.as_str();
        let results: Vec<(String, PodWork, bool)> = futures::stream::iter(work)
            .map(|(uid, pod, what)| async move {
                let done = match &what {
                    PodWork::Delete => finish_deletion(client, name, &pod).await,
                    PodWork::Start(ip) => report_running(client, name, &pod, *ip).await,
                };
                (uid, what, done)
            })
            .buffer_unordered(POD_WORK_CONCURRENCY)
            .collect()
            .await;
        for (uid, what, done) in results {
            if !done {
                continue;
            }
            self.pending.remove(&uid);
            match what {
                PodWork::Start(_) => {
                    self.reported.insert(uid);
                }
                PodWork::Delete => {
                    if let Some(ip) = self.ips.remove(&uid) {
                        self.used_ips.remove(&ip);
                    }
                }
            }
        }
    }

    /// The pod's address in the node's podCIDR (the first host is left for a gateway).
    fn address_for(&mut self, uid: &str) -> Option<IpAddr> {
        if let Some(ip) = self.ips.get(uid) {
            return Some(*ip);
        }
        let (network, prefix) = self.pod_cidr?;
        // Hosts 2 ..= size-2: not the network, the gateway or the broadcast address.
        let size = 1u64 << (32 - prefix.min(30));
        let hosts = size.saturating_sub(3).max(1);
        let ip = (0..hosts)
            .map(|i| (self.next_host as u64 + i) % hosts + 2)
            .map(|h| IpAddr::V4(Ipv4Addr::from(network.wrapping_add(h as u32))))
            .find(|ip| !self.used_ips.contains(ip))?;
        self.next_host += 1;
        self.ips.insert(uid.to_string(), ip);
        self.used_ips.insert(ip);
        Some(ip)
    }
}

/// Deletes a pod that carries a deletionTimestamp with grace 0. Returns whether there
/// is nothing left to do.
async fn finish_deletion(client: &kube::Client, node: &str, pod: &Pod) -> bool {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&pod.name_any(), &params).await {
        Ok(_) => true,
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => true,
        Err(e) => {
            eprintln!("hollow node {node}: deleting {}: {e}", pod.name_any());
            false
        }
    }
}

/// Reports a pod Running and Ready at `ip`. Returns whether there is nothing left to do.
async fn report_running(client: &kube::Client, node: &str, pod: &Pod, ip: IpAddr) -> bool {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let now = Time(Timestamp::now());
    let conditions: Vec<serde_json::Value> = [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ]
    .iter()
    .map(|t| json!({"type": t, "status": "True", "lastTransitionTime": now}))
    .collect();
    let containers: Vec<serde_json::Value> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "image": c.image.clone().unwrap_or_default(),
                "imageID": "",
                "ready": true,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": now}},
            })
        })
        .collect();
    let patch = json!({"status": {
        "phase": "Running",
        "hostIP": HOST_IP,
        "hostIPs": [{"ip": HOST_IP}],
        "podIP": ip.to_string(),
        "podIPs": [{"ip": ip.to_string()}],
        "startTime": now,
        "conditions": conditions,
        "containerStatuses": containers,
    }});
    match api
        .patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => true,
        Err(kube::Error::Api(e)) if e.code == 404 => true,
        Err(e) => {
            eprintln!("hollow node {node}: reporting {}: {e}", pod.name_any());
            false
        }
    }
}

/// `a.b.c.d/len` → (network address, len).
fn parse_v4_cidr(cidr: &str) -> Option<(u32, u32)> {
    let (addr, len) = cidr.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let len: u32 = len.parse().ok().filter(|l| *l <= 32)?;
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    Some((u32::from(addr) & mask, len))
}
