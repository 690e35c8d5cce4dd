//! Controllers that run inside the control plane. Each is an API client (kube-rs) of
//! the API server — exactly like kube-controller-manager, they never read etcd.
//!
//! - [`events`]: the Event recorder every controller reports through.
//! - [`namespace`]: empties a deleted namespace, then lets it go.
//! - [`replicaset`]: keeps `spec.replicas` pods per ReplicaSet.
//! - [`daemonset`]: one pod per eligible node, rolled out like a Deployment.
//! - [`deployment`]: rolls templates out through ReplicaSets (RollingUpdate, Recreate).
//! - [`job`]: runs Jobs' pods to completion (parallelism, completions, Indexed, back-off,
//!   deadlines, suspend, time to live).
//! - [`cronjob`]: a Job from each CronJob's template at its scheduled times.
//! - [`endpoints`]: Endpoints (ready and not-ready pod addresses) for selector Services.
//! - [`endpointslices`]: EndpointSlices for the same Services.
//! - [`serviceaccounts`]: a `default` ServiceAccount in every namespace.
//! - [`rootcacert`]: the `kube-root-ca.crt` ConfigMap (the cluster CA) in every namespace.
//! - [`tokens`]: legacy ServiceAccount token Secrets get their token, CA and namespace,
//!   and die with their ServiceAccount.
//! - [`nodelifecycle`]: marks nodes that stopped heartbeating and evicts their pods.
//! - [`nodeipam`]: a `spec.podCIDR` for every node.
//! - [`garbagecollector`]: ownerReference cascades (background, foreground, orphan).
//! - [`shared_watch`]: one pod watch shared by the controllers that follow pods.

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod endpointslices;
pub mod events;
pub mod garbagecollector;
pub mod history;
pub mod job;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod replicaset;
pub mod rootcacert;
pub mod serviceaccounts;
pub mod shared_watch;
pub mod tokens;

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use futures::FutureExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// A controller reference to `owner`, as Kubernetes' controllers write it: the owner's
/// foreground deletion waits for the dependent.
pub(crate) fn controller_ref<K>(owner: &K) -> OwnerReference
where
    K: kube::Resource<DynamicType = ()>,
{
    let meta = owner.meta();
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Builds an API client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("building the client configuration")?;
    kube::Client::try_from(config).context("building the API client")
}

/// What the controllers are told at start-up.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub node_lifecycle: nodelifecycle::Config,
    pub node_ipam: nodeipam::Config,
    /// The cluster CA (PEM) published in every namespace; empty: not published.
    pub root_ca_pem: String,
    /// Signs legacy ServiceAccount tokens; `None`: the token controller does not run.
    pub service_account_tokens: Option<Arc<crate::apiserver::tokens::TokenIssuer>>,
}

/// Every controller as one future, for a caller that decides when they run (the
/// leader election in `server.rs`); it never ends on its own.
pub async fn controllers(client: kube::Client, options: Options) {
    // One pod watch for the controllers that follow every pod (the API server
    // sends each event once, this process parses it once).
    let pods = shared_watch::SharedWatch::start(
        kube::Api::<k8s_openapi::api::core::v1::Pod>::all(client.clone()),
        kube::runtime::watcher::Config::default(),
    );
    let controllers = futures::future::join_all([
        namespace::run(client.clone()).boxed(),
        replicaset::run(client.clone(), pods.clone()).boxed(),
        deployment::run(client.clone()).boxed(),
        daemonset::run(client.clone(), pods.clone()).boxed(),
        job::run(client.clone(), pods.clone()).boxed(),
        cronjob::run(client.clone()).boxed(),
        endpoints::run(client.clone(), pods.clone()).boxed(),
        endpointslices::run(client.clone(), pods).boxed(),
        serviceaccounts::run(client.clone()).boxed(),
        garbagecollector::run(client.clone()).boxed(),
        nodelifecycle::run(client.clone(), options.node_lifecycle).boxed(),
        nodeipam::run(client.clone(), options.node_ipam).boxed(),
        root_ca_publisher(client.clone(), options.root_ca_pem.clone()).boxed(),
        token_controller(
            client.clone(),
            options.service_account_tokens,
            options.root_ca_pem,
        )
        .boxed(),
    ]);
    controllers.await;
}

async fn root_ca_publisher(client: kube::Client, root_ca: String) {
    if root_ca.is_empty() {
        return futures::future::pending().await;
    }
    rootcacert::run(client, root_ca).await
}

async fn token_controller(
    client: kube::Client,
    tokens: Option<Arc<crate::apiserver::tokens::TokenIssuer>>,
    root_ca: String,
) {
    match tokens {
        Some(tokens) => tokens::run(client, tokens, root_ca).await,
        None => futures::future::pending().await,
    }
}
