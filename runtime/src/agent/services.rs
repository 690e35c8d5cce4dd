//! The cluster's Services as the agent knows them: reflectors kept by watches on the
//! Services and on the EndpointSlices of headless Services, read when a container
//! starts to give it the Service variables (`<NAME>_SERVICE_HOST` …) as the kubelet
//! does, and on every name lookup of a pod (see `dns.rs`).

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt as _};
use kube::{Api, Client, Resource};
use tokio_util::sync::CancellationToken;

/// The label the EndpointSlice controller puts on a headless Service's slices.
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// The label naming a slice's Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A read handle on the Services cache.
#[derive(Clone)]
pub struct Services {
    store: Store<Service>,
    headless: Store<EndpointSlice>,
}

impl Services {
    /// Starts watching every namespace's Services, and the EndpointSlices of headless
    /// ones, until `stop`.
    pub fn start(client: Client, stop: CancellationToken) -> Services {
        let store = reflect::<Service>(Api::all(client.clone()), None, stop.clone());
        let headless = reflect::<EndpointSlice>(Api::all(client), Some(HEADLESS_LABEL), stop);
        Services { store, headless }
    }

    /// A cache holding just these objects, for tests.
    #[cfg(test)]
    pub(crate) fn of(services: Vec<Service>, headless: Vec<EndpointSlice>) -> Services {
        let (store, mut writer) = reflector::store();
        for s in services {
            writer.apply_watcher_event(&watcher::Event::Apply(s));
        }
        let (slices, mut slice_writer) = reflector::store();
        for s in headless {
            slice_writer.apply_watcher_event(&watcher::Event::Apply(s));
        }
        Services {
            store,
            headless: slices,
        }
    }

    /// The Service `namespace/name`, if known.
    pub fn get(&self, namespace: &str, name: &str) -> Option<std::sync::Arc<Service>> {
        self.store.get(&ObjectRef::new(name).within(namespace))
    }

    /// The EndpointSlices of the headless Service `namespace/name`.
    pub fn headless_slices(
        &self,
        namespace: &str,
        name: &str,
    ) -> Vec<std::sync::Arc<EndpointSlice>> {
        self.headless
            .state()
            .into_iter()
            .filter(|s| {
                s.metadata.namespace.as_deref() == Some(namespace)
                    && s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(SERVICE_NAME_LABEL))
                        .is_some_and(|n| n == name)
            })
            .collect()
    }

    /// The Service variables for a container of `pod`. Before the first list has
    /// arrived there are none: the kubelet waits for its Service informer to sync, so
    /// this waits up to a few seconds for it (and for the headless slices', which the
    /// container's name lookups read).
    pub async fn env_for(&self, pod: &Pod) -> Vec<(String, String)> {
        let synced = async {
            let _ = self.store.wait_until_ready().await;
            let _ = self.headless.wait_until_ready().await;
        };
        if tokio::time::timeout(std::time::Duration::from_secs(5), synced)
            .await
            .is_err()
        {
            tracing::warn!(
                namespace = pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod = pod.metadata.name.as_deref().unwrap_or_default(),
                "the Service lists have not arrived; starting without Service variables"
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

/// A cache of `api`'s objects (those with label `label`, when given), kept until `stop`.
fn reflect<K>(api: Api<K>, label: Option<&str>, stop: CancellationToken) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
    K: serde::de::DeserializeOwned,
{
    let (store, writer) = reflector::store();
    let mut config = watcher::Config::default();
    if let Some(label) = label {
        config = config.labels(label);
    }
    let kind = K::kind(&());
    let stream = reflector::reflector(writer, watcher(api, config))
        .default_backoff()
        .for_each(move |event| {
            let kind = kind.clone();
            async move {
                if let Err(e) = event {
                    tracing::debug!(%kind, error = %e, "watching");
                }
            }
        });
    tokio::spawn(async move {
        tokio::select! {
            _ = stream => {}
            _ = stop.cancelled() => {}
        }
    });
    store
}
