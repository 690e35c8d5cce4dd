//! The agent's Node: registration with real capacity, labels, addresses and nodeInfo,
//! then the heartbeat — the node's Lease renewed every 10 s and its status (conditions,
//! heartbeat times) refreshed every minute, as the kubelet does since NodeLease.
//!
//! Only `metadata.labels` (ours) and `status` are written; `spec` belongs to others
//! (cordon, taints, podCIDR), so `kubectl cordon` and the node controllers are never
//! overwritten.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// The label a node carries for each runtime it offers; RuntimeClass `wasmtime` selects
/// nodes with `runtime.wasmkube.io/wasmtime=true`.
pub const RUNTIME_LABEL_PREFIX: &str = "runtime.wasmkube.io/";

/// How often the Lease is renewed (the kubelet's default).
pub const LEASE_RENEW_INTERVAL: Duration = Duration::from_secs(10);
/// The Lease duration the node claims (the kubelet's default).
const LEASE_DURATION_SECONDS: i32 = 40;
/// How often the status is refreshed when nothing changed.
const STATUS_INTERVAL: Duration = Duration::from_secs(60);

/// The facts a Node object is built from.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub ip: IpAddr,
    /// The agent's HTTPS port (container logs), published as the kubelet endpoint.
    pub kubelet_port: u16,
    pub max_pods: u32,
    /// Extra labels from the operator (`--node-labels`).
    pub labels: BTreeMap<String, String>,
}

/// Registers the node, or refreshes an existing registration.
pub async fn register(client: &Client, spec: &NodeSpec) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let labels = labels(spec);
    match nodes.get_opt(&spec.name).await? {
        None => {
            let node: Node = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": spec.name, "labels": labels},
                "status": status(spec),
            }))
            .map_err(kube::Error::SerdeError)?;
            match nodes.create(&PostParams::default(), &node).await {
                Ok(_) => tracing::info!(node = %spec.name, "registered the node"),
                // Another agent incarnation raced us: fall through to the update.
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        Some(_) => {
            tracing::info!(node = %spec.name, "the node is registered already; refreshing it")
        }
    }
    let patch = json!({"metadata": {"labels": labels}});
    nodes
        .patch(&spec.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    update_status(client, spec).await
}

/// Writes the node's status (capacity, conditions, heartbeat).
pub async fn update_status(client: &Client, spec: &NodeSpec) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = json!({"status": status(spec)});
    nodes
        .patch_status(&spec.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Renews the Lease every 10 s and the status every minute until `stop`.
pub async fn heartbeat(client: Client, spec: NodeSpec, stop: CancellationToken) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let mut lease_tick = tokio::time::interval(LEASE_RENEW_INTERVAL);
    let mut status_tick = tokio::time::interval(STATUS_INTERVAL);
    status_tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = lease_tick.tick() => {
                if let Err(e) = renew_lease(&client, &leases, &spec).await {
                    tracing::warn!(node = %spec.name, error = %e, "renewing the node lease");
                }
            }
            _ = status_tick.tick() => {
                if let Err(e) = update_status(&client, &spec).await {
                    tracing::warn!(node = %spec.name, error = %e, "updating the node status");
                }
            }
        }
    }
}

async fn renew_lease(
    client: &Client,
    leases: &Api<Lease>,
    spec: &NodeSpec,
) -> Result<(), kube::Error> {
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
    let patch = json!({"spec": {
        "holderIdentity": spec.name,
        "leaseDurationSeconds": LEASE_DURATION_SECONDS,
        "renewTime": now,
    }});
    match leases
        .patch(&spec.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            // The Lease is owned by the Node, so the garbage collector removes it with
            // the node, as the kubelet arranges.
            let node_uid = Api::<Node>::all(client.clone())
                .get(&spec.name)
                .await?
                .metadata
                .uid
                .unwrap_or_default();
            let lease: Lease = serde_json::from_value(json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {
                    "name": spec.name, "namespace": "kube-node-lease",
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": spec.name, "uid": node_uid}],
                },
                "spec": patch["spec"],
            }))
            .map_err(kube::Error::SerdeError)?;
            leases.create(&PostParams::default(), &lease).await?;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn labels(spec: &NodeSpec) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), spec.name.clone()),
        (
            "kubernetes.io/os".to_string(),
            std::env::consts::OS.to_string(),
        ),
        ("kubernetes.io/arch".to_string(), go_arch().to_string()),
        (
            "beta.kubernetes.io/os".to_string(),
            std::env::consts::OS.to_string(),
        ),
        ("beta.kubernetes.io/arch".to_string(), go_arch().to_string()),
        (
            format!("{RUNTIME_LABEL_PREFIX}wasmtime"),
            "true".to_string(),
        ),
    ]);
    labels.extend(spec.labels.clone());
    labels
}

/// Kubernetes names architectures as Go does.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn status(spec: &NodeSpec) -> Value {
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let memory_kib = meminfo_kib("MemTotal").unwrap_or(1024 * 1024);
    // What the agent itself needs (its API traffic, the epoch ticker, compiling) stays
    // out of allocatable, as the kubelet's system-reserved does; pods' CPU limits are
    // enforced by the throttle in wasm/cpu.rs, so what is allocatable is really theirs.
    let reserved_kib = 64 * 1024;
    let reserved_millicores = 100;
    let condition = |type_: &str, ok: bool, reason: &str, message: &str| {
        json!({
            "type": type_,
            "status": if ok { "True" } else { "False" },
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        })
    };
    json!({
        "capacity": {
            "cpu": cpus.to_string(),
            "memory": format!("{memory_kib}Ki"),
            "pods": spec.max_pods.to_string(),
        },
        "allocatable": {
            "cpu": format!("{}m", (cpus * 1000).saturating_sub(reserved_millicores).max(100)),
            "memory": format!("{}Ki", memory_kib.saturating_sub(reserved_kib)),
            "pods": spec.max_pods.to_string(),
        },
        "conditions": [
            condition("MemoryPressure", false, "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            condition("DiskPressure", false, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            condition("PIDPressure", false, "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            condition("Ready", true, "KubeletReady", "kubelet is posting ready status"),
        ],
        "addresses": [
            {"type": "InternalIP", "address": spec.ip.to_string()},
            {"type": "Hostname", "address": spec.name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": spec.kubelet_port}},
        "nodeInfo": {
            "machineID": read_trimmed("/etc/machine-id"),
            "systemUUID": read_trimmed("/sys/class/dmi/id/product_uuid"),
            "bootID": read_trimmed("/proc/sys/kernel/random/boot_id"),
            "kernelVersion": read_trimmed("/proc/sys/kernel/osrelease"),
            "osImage": os_image(),
            "containerRuntimeVersion": format!("wasmtime://{}", crate::wasm_version()),
            "kubeletVersion": crate::kubelet_version(),
            "kubeProxyVersion": "",
            "operatingSystem": std::env::consts::OS,
            "architecture": go_arch(),
        },
    })
}

fn meminfo_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| std::env::consts::OS.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> NodeSpec {
        NodeSpec {
            name: "edge-1".into(),
            ip: "127.0.0.1".parse().unwrap(),
            kubelet_port: 10250,
            max_pods: 1000,
            labels: BTreeMap::from([("zone".to_string(), "a".to_string())]),
        }
    }

    #[test]
    fn the_status_reports_real_capacity_and_ready() {
        let s = status(&spec());
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(s["capacity"]["cpu"], cpus.to_string());
        assert_eq!(s["allocatable"]["cpu"], format!("{}m", cpus * 1000 - 100));
        assert_eq!(s["capacity"]["pods"], "1000");
        assert!(s["capacity"]["memory"].as_str().unwrap().ends_with("Ki"));
        assert!(meminfo_kib("MemTotal").unwrap() > 0);
        let ready = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "True");
        assert_eq!(s["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250);
        assert!(s["nodeInfo"]["containerRuntimeVersion"]
            .as_str()
            .unwrap()
            .starts_with("wasmtime://"));
    }

    #[test]
    fn labels_name_the_host_os_arch_and_runtime() {
        let l = labels(&spec());
        assert_eq!(l["kubernetes.io/hostname"], "edge-1");
        assert_eq!(l["kubernetes.io/os"], "linux");
        assert_eq!(l["runtime.wasmkube.io/wasmtime"], "true");
        assert_eq!(l["zone"], "a");
    }
}
