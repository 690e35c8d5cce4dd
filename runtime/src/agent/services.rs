//! The cluster's Services as the agent knows them: a reflector kept by one watch, read
//! when a container starts to give it the Service variables (`<NAME>_SERVICE_HOST` …)
//! as the kubelet does.

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt as _};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

/// A read handle on the Services cache.
#[derive(Clone)]
pub struct Services {
    store: Store<Service>,
}

impl Services {
    /// Starts watching every namespace's Services until `stop`.
    pub fn start(client: Client, stop: CancellationToken) -> Services {
        let (store, writer) = reflector::store();
        let api: Api<Service> = Api::all(client);
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff()
            .for_each(|event| async move {
                if let Err(e) = event {
                    tracing::debug!(error = %e, "watching Services");
                }
            });
        tokio::spawn(async move {
            tokio::select! {
                _ = stream => {}
                _ = stop.cancelled() => {}
            }
        });
        Services { store }
    }

    /// The Service variables for a container of `pod`. Before the first list has
    /// arrived there are none: the kubelet waits for its Service informer to sync, so
    /// this waits up to a few seconds for it.
    pub async fn env_for(&self, pod: &Pod) -> Vec<(String, String)> {
        if tokio::time::timeout(
            std::time::Duration::from_secs(5),
            self.store.wait_until_ready(),
        )
        .await
        .is_err()
        {
            tracing::warn!(
                namespace = pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod = pod.metadata.name.as_deref().unwrap_or_default(),
                "the Service list has not arrived; starting without Service variables"
            );
        }
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let links = pod
            .spec
            .as_ref()
            .and_then(|s| s.enable_service_links)
            .unwrap_or(true);
        let services = self.store.state();
        crate::env::service_links(services.iter().map(|s| s.as_ref()), namespace, links)
    }
}
