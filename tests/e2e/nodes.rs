//! Issue 4, node lifecycle and node IPAM, with hollow nodes: every node gets its own pod
//! CIDR (a deleted node's is handed out again); a Deployment spreads over three nodes;
//! a node that stops renewing its Lease turns Ready=Unknown, gets the unreachable taints
//! and loses its pod to another node; when it heartbeats again the taints go away.
//!
//! The server runs with the grace period and the eviction delay shortened through
//! `--node-monitor-grace-period-seconds` and `--pod-eviction-timeout-seconds`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{eventually, Cluster, DEADLINE};
use crate::hollow::HollowNode;

/// Patience for things that wait out the (shortened) grace period and eviction delay.
const LIFECYCLE_DEADLINE: Duration = Duration::from_secs(60);

const DEPLOY: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: 3
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: registry.local/web:v1
        resources:
          requests:
            cpu: 100m
            memory: 64Mi
"#;

/// node name → podCIDR, once every node has one.
async fn pod_cidrs(cluster: &Cluster, names: &[&str]) -> BTreeMap<String, String> {
    eventually("every node to get a podCIDR", DEADLINE, async || {
        let nodes = cluster.get_json(&["nodes"]).await;
        let mut out = BTreeMap::new();
        for node in nodes["items"].as_array().into_iter().flatten() {
            let name = node["metadata"]["name"].as_str().unwrap_or_default();
            if !names.contains(&name) {
                continue;
            }
            let Some(cidr) = node["spec"]["podCIDR"].as_str() else {
                return Err(format!("{name} has no podCIDR yet"));
            };
            if node["spec"]["podCIDRs"] != serde_json::json!([cidr]) {
                return Err(format!("{name}: podCIDRs disagree with podCIDR: {node}"));
            }
            out.insert(name.to_string(), cidr.to_string());
        }
        if out.len() == names.len() {
            Ok(out)
        } else {
            Err(format!("only {out:?}"))
        }
    })
    .await
}

/// Whether `cidr` is a /22 inside 127.128.0.0/10.
fn in_cluster_cidr(cidr: &str) -> bool {
    let Some(addr) = cidr.strip_suffix("/22") else {
        return false;
    };
    let octets: Vec<u8> = addr.split('.').filter_map(|o| o.parse().ok()).collect();
    octets.len() == 4
        && octets[0] == 127
        && (128..192).contains(&octets[1])
        && octets[2].is_multiple_of(4)
        && octets[3] == 0
}

/// Whether `ip` lies in `cidr` (IPv4).
fn ip_in(ip: &str, cidr: &str) -> bool {
    let Some((net, prefix)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(ip), Ok(net), Ok(prefix)) = (
        ip.parse::<std::net::Ipv4Addr>(),
        net.parse::<std::net::Ipv4Addr>(),
        prefix.parse::<u32>(),
    ) else {
        return false;
    };
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

/// Pods of the Deployment that are not being deleted.
async fn web_pods(cluster: &Cluster) -> Vec<Value> {
    let list = cluster.get_json(&["pods", "-l", "app=web"]).await;
    list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect()
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn ready_condition(node: &Value) -> Value {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap_or(Value::Null)
}

fn unreachable_taints(node: &Value) -> Vec<Value> {
    node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["key"] == "node.kubernetes.io/unreachable")
        .cloned()
        .collect()
}

/// Waits until the Deployment has 3 available pods, all Ready, on 3 distinct nodes none
/// of which is `avoid`; returns pod name → node.
async fn wait_spread(cluster: &Cluster, avoid: Option<&str>) -> BTreeMap<String, String> {
    eventually("3 ready web pods", LIFECYCLE_DEADLINE, async || {
        let pods = web_pods(cluster).await;
        let placed: BTreeMap<String, String> = pods
            .iter()
            .filter(|p| is_ready(p))
            .filter_map(|p| {
                Some((
                    p["metadata"]["name"].as_str()?.to_string(),
                    p["spec"]["nodeName"].as_str()?.to_string(),
                ))
            })
            .collect();
        let deploy = cluster.get_json(&["deployment", "web"]).await;
        let available = deploy["status"]["availableReplicas"].as_i64().unwrap_or(0);
        if placed.len() == 3
            && available == 3
            && avoid.is_none_or(|a| placed.values().all(|n| n != a))
        {
            Ok(placed)
        } else {
            Err(format!("ready pods {placed:?}, available {available}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_node_is_tainted_and_its_pods_move() {
    let cluster = Cluster::builder()
        .args(&[
            "--node-monitor-grace-period-seconds",
            "3",
            "--pod-eviction-timeout-seconds",
            "2",
        ])
        .start()
        .await;
    let names = ["node-1", "node-2", "node-3"];
    let mut nodes = Vec::new();
    for name in names {
        nodes.push(HollowNode::start(&cluster, name, "4", "8Gi").await);
    }

    // IPAM: distinct /22s from the cluster CIDR.
    let cidrs = pod_cidrs(&cluster, &names).await;
    let distinct: BTreeSet<&String> = cidrs.values().collect();
    assert_eq!(distinct.len(), 3, "{cidrs:?}");
    assert!(cidrs.values().all(|c| in_cluster_cidr(c)), "{cidrs:?}");

    // A Deployment spreads one pod per node; each pod's IP is in its node's block.
    cluster.apply_stdin(DEPLOY).await;
    let placed = wait_spread(&cluster, None).await;
    let used: BTreeSet<&String> = placed.values().collect();
    assert_eq!(used.len(), 3, "one pod per node: {placed:?}");
    for pod in web_pods(&cluster).await {
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        let ip = pod["status"]["podIP"].as_str().unwrap_or_default();
        assert!(
            ip_in(ip, &cidrs[node]),
            "pod IP {ip} outside {node}'s {}",
            cidrs[node]
        );
        assert_eq!(pod["status"]["phase"], "Running", "{pod}");
    }

    // node-2 goes silent.
    let victim = &nodes[1];
    let victim_pod = placed
        .iter()
        .find(|(_, n)| *n == &victim.name)
        .map(|(p, _)| p.clone())
        .expect("a pod on node-2");
    victim.stop_heartbeats();
    eventually(
        "node-2 to turn Ready=Unknown and be tainted",
        LIFECYCLE_DEADLINE,
        async || {
            let node = cluster.get_json(&["node", "node-2"]).await;
            let ready = ready_condition(&node);
            let taints = unreachable_taints(&node);
            let effects: BTreeSet<&str> =
                taints.iter().filter_map(|t| t["effect"].as_str()).collect();
            if ready["status"] == "Unknown"
                && ready["reason"] == "NodeStatusUnknown"
                && ready["message"] == "Kubelet stopped posting node status."
                && effects == BTreeSet::from(["NoExecute", "NoSchedule"])
                && taints.iter().all(|t| t["timeAdded"].is_string())
            {
                Ok(())
            } else {
                Err(format!(
                    "ready condition {ready}, unreachable taints {taints:?}"
                ))
            }
        },
    )
    .await;
    let table = cluster.get_table(&["nodes"]).await;
    assert_eq!(table.row("node-2").get("STATUS"), "NotReady", "{table}");

    // Its pod is evicted and recreated on one of the other nodes.
    let moved = wait_spread(&cluster, Some("node-2")).await;
    assert!(!moved.contains_key(&victim_pod), "{moved:?}");
    let expected = format!("Marking for deletion Pod default/{victim_pod}");
    eventually("the TaintManagerEviction event", DEADLINE, async || {
        let events = cluster.get_json(&["events", "-n", "default"]).await;
        let found = events["items"].as_array().into_iter().flatten().any(|e| {
            e["reason"] == "TaintManagerEviction"
                && e["involvedObject"]["name"] == victim_pod.as_str()
                && e["message"] == expected.as_str()
        });
        if found {
            Ok(())
        } else {
            Err(format!("no eviction event for {victim_pod}"))
        }
    })
    .await;

    // Back again: the taints go away and the node is Ready.
    victim.resume_heartbeats();
    eventually(
        "node-2 to be untainted and Ready",
        LIFECYCLE_DEADLINE,
        async || {
            let node = cluster.get_json(&["node", "node-2"]).await;
            let ready = ready_condition(&node);
            let taints = unreachable_taints(&node);
            if ready["status"] == "True" && taints.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "ready condition {ready}, unreachable taints {taints:?}"
                ))
            }
        },
    )
    .await;

    // A deleted node's block is released: the next node gets it.
    let node_3 = nodes.pop().expect("node-3");
    let freed = cidrs["node-3"].clone();
    node_3.shutdown().await;
    let _node_4 = HollowNode::start(&cluster, "node-4", "4", "8Gi").await;
    let after = pod_cidrs(&cluster, &["node-1", "node-2", "node-4"]).await;
    assert_eq!(after["node-4"], freed, "{after:?}");
}
