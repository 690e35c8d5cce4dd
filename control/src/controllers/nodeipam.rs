//! Node IPAM: gives every Node without `spec.podCIDR` a block of pod addresses from the
//! cluster CIDR (`spec.podCIDR` and `spec.podCIDRs`), as kube-controller-manager's range
//! allocator does with `--allocate-node-cidrs`.
//!
//! The used set is derived, on each allocation, from the podCIDRs of all nodes in the
//! controller's node cache plus the blocks this controller handed out that the cache has
//! not shown yet; allocations are serialized, so two nodes never get the same block.
//! Deleting a node releases its block implicitly (it stops being in the used set). The
//! write carries the node's resourceVersion: if the node changed meanwhile the write
//! fails with 409 and the allocation is retried on the fresh node.
//!
//! The default cluster CIDR is 127.128.0.0/10 (pod addresses live in 127.0.0.0/8, see
//! DESIGN.md) cut into /22 blocks (1,021 pod addresses: an agent's default max-pods); `wasmkube server --cluster-cidr` and
//! `--node-cidr-mask-size` change them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;

use super::events::{EventType, Recorder};

/// The field manager and event source of this controller.
const MANAGER: &str = "node-ipam-controller";
/// How many times one allocation is retried after write conflicts.
const CONFLICT_RETRIES: usize = 5;

/// What can go wrong in one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("api call failed: {0}")]
    Api(#[from] kube::Error),
    /// The node kept changing under every attempt.
    #[error("node {0} kept changing while allocating its pod CIDR")]
    Conflicts(String),
}

/// The controller's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// The range all node blocks come from (`--cluster-cidr`).
    pub cluster_cidr: IpNet,
    /// The prefix length of each node's block (`--node-cidr-mask-size`).
    pub node_mask_size: u8,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cluster_cidr: IpNet::V4(
                ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(127, 128, 0, 0), 10)
                    .unwrap_or_default(),
            ),
            node_mask_size: 22,
        }
    }
}

struct Context {
    client: kube::Client,
    recorder: Recorder,
    config: Config,
    nodes: Store<Node>,
    /// Serializes allocations; holds blocks written but maybe not yet in `nodes`, by
    /// node name.
    pending: tokio::sync::Mutex<HashMap<String, IpNet>>,
}

/// Runs the controller until the watch stream ends.
pub async fn run(client: kube::Client, config: Config) {
    let api: Api<Node> = Api::all(client.clone());
    let controller = Controller::new(api, watcher::Config::default());
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), MANAGER),
        client,
        config,
        nodes: controller.store(),
        pending: tokio::sync::Mutex::new(HashMap::new()),
    });
    tracing::info!(cluster_cidr = %config.cluster_cidr, mask_size = config.node_mask_size, "node IPAM starting");
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "node ipam reconcile failed");
            }
        })
        .await;
}

fn error_policy(node: Arc<Node>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(node = %node.name_any(), error = %err, "allocating pod CIDR failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

fn pod_cidrs(node: &Node) -> Vec<IpNet> {
    let Some(spec) = node.spec.as_ref() else {
        return Vec::new();
    };
    spec.pod_cidr
        .iter()
        .chain(spec.pod_cidrs.iter().flatten())
        .filter_map(|c| c.parse::<IpNet>().ok())
        .map(|c| c.trunc())
        .collect()
}

fn has_pod_cidr(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_deref())
        .is_some_and(|c| !c.is_empty())
}

/// The first block of `mask` bits in `cluster` that overlaps nothing in `used`.
fn first_free(cluster: IpNet, mask: u8, used: &[IpNet]) -> Option<IpNet> {
    // Blocks of our own size are the common case: an exact lookup; anything else (set
    // by hand) is checked for overlap.
    let same: HashSet<IpNet> = used
        .iter()
        .filter(|u| u.prefix_len() == mask)
        .copied()
        .collect();
    let other: Vec<IpNet> = used
        .iter()
        .filter(|u| u.prefix_len() != mask)
        .copied()
        .collect();
    cluster.subnets(mask).ok()?.find(|candidate| {
        !same.contains(candidate)
            && !other
                .iter()
                .any(|u| u.contains(&candidate.network()) || candidate.contains(&u.network()))
    })
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action, Error> {
    if has_pod_cidr(&node) || node.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = node.name_any();
    let api: Api<Node> = Api::all(ctx.client.clone());
    let mut pending = ctx.pending.lock().await;
    let mut current = (*node).clone();
    for _ in 0..CONFLICT_RETRIES {
        // Forget pending blocks the cache now shows (or whose node is gone).
        let cached = ctx.nodes.state();
        let by_name: HashMap<String, &Arc<Node>> =
            cached.iter().map(|n| (n.name_any(), n)).collect();
        pending.retain(|n, _| by_name.get(n).is_some_and(|node| !has_pod_cidr(node)));
        let mut used: Vec<IpNet> = cached.iter().flat_map(|n| pod_cidrs(n)).collect();
        used.extend(pending.values().copied());

        let Some(cidr) = first_free(ctx.config.cluster_cidr, ctx.config.node_mask_size, &used)
        else {
            tracing::warn!(node = %name, cluster_cidr = %ctx.config.cluster_cidr, "no pod CIDR left");
            ctx.recorder
                .record(
                    &current_reference(&current),
                    EventType::Normal,
                    "CIDRNotAvailable",
                    &format!("Node {name} status is now: CIDRNotAvailable"),
                )
                .await;
            return Ok(Action::requeue(Duration::from_secs(30)));
        };
        let patch = json!({
            "metadata": {"resourceVersion": current.metadata.resource_version},
            "spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]},
        });
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                pending.insert(name.clone(), cidr);
                tracing::info!(node = %name, pod_cidr = %cidr, "allocated pod CIDR");
                return Ok(Action::await_change());
            }
            Err(kube::Error::Api(e)) if e.code == 409 => match api.get_opt(&name).await? {
                Some(fresh) if has_pod_cidr(&fresh) => return Ok(Action::await_change()),
                Some(fresh) => current = fresh,
                None => return Ok(Action::await_change()),
            },
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Action::await_change()),
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Conflicts(name))
}

fn current_reference(node: &Node) -> k8s_openapi::api::core::v1::ObjectReference {
    let mut r = super::events::reference(node);
    r.namespace = None;
    r.uid = Some(node.name_any());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn allocates_the_first_free_block() {
        let cluster = Config::default().cluster_cidr;
        assert_eq!(first_free(cluster, 24, &[]), Some(net("127.128.0.0/24")));
        let used = [net("127.128.0.0/24"), net("127.128.2.0/24")];
        assert_eq!(first_free(cluster, 24, &used), Some(net("127.128.1.0/24")));
        // A hand-set larger block covers several of ours.
        let used = [net("127.128.0.0/23")];
        assert_eq!(first_free(cluster, 24, &used), Some(net("127.128.2.0/24")));
    }

    #[test]
    fn exhaustion_is_none() {
        let cluster = net("10.0.0.0/23");
        let used = [net("10.0.0.0/24"), net("10.0.1.0/24")];
        assert_eq!(first_free(cluster, 24, &used), None);
        assert_eq!(first_free(cluster, 22, &[]), None);
    }

    #[test]
    fn reads_both_cidr_fields() {
        let mut node = Node::default();
        assert!(pod_cidrs(&node).is_empty());
        node.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
            pod_cidr: Some("10.1.0.0/24".into()),
            pod_cidrs: Some(vec!["10.1.0.0/24".into(), "fd00::/64".into()]),
            ..Default::default()
        });
        assert!(has_pod_cidr(&node));
        assert_eq!(pod_cidrs(&node).len(), 3);
    }
}
