//! Controllers that run inside the control plane. Each is an API client (kube-rs) of
//! the API server — exactly like kube-controller-manager, they never read etcd.
//!
//! - [`events`]: the Event recorder every controller reports through.
//! - [`namespace`]: empties a deleted namespace, then lets it go.

pub mod events;
pub mod namespace;

use std::path::Path;

use anyhow::{Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Builds an API client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("building the client configuration")?;
    kube::Client::try_from(config).context("building the API client")
}

/// Starts every controller; they stop when `shutdown` turns true.
pub fn spawn_all(client: kube::Client, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        tokio::select! {
            _ = namespace::run(client) => {}
            _ = shutdown.changed() => {}
        }
    })
}
