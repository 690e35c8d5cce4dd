//! The proxy's view of the API: watchers on Services, EndpointSlices and Nodes (all
//! namespaces) feed the [`Proxier`]; once each has listed everything the first time,
//! every change is applied as it arrives. Also keeps this node's tunnel port published
//! on its Node object.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::model::{self, ObjectKey, SERVICE_NAME_LABEL, TUNNEL_PORT_ANNOTATION};
use crate::proxier::Proxier;

/// What to publish on this node's Node object.
pub(crate) struct Publish {
    pub node_name: String,
    pub tunnel_port: u16,
}

/// The state of one watcher's events: whether its first list finished, and the
/// objects of a re-list in progress (applied at once when it completes).
struct Feed<K> {
    listed: bool,
    relist: Option<Vec<K>>,
}

impl<K> Feed<K> {
    fn new() -> Self {
        Feed {
            listed: false,
            relist: None,
        }
    }

    /// Folds one event, handing what it changes to `apply`.
    fn step(&mut self, event: Event<K>, apply: impl FnOnce(Change<K>)) {
        match event {
            Event::Init => self.relist = Some(Vec::new()),
            Event::InitApply(obj) => match self.relist.as_mut() {
                Some(buf) => buf.push(obj),
                None => apply(Change::Apply(obj)),
            },
            Event::InitDone => {
                self.listed = true;
                apply(Change::Replace(self.relist.take().unwrap_or_default()));
            }
            Event::Apply(obj) => apply(Change::Apply(obj)),
            Event::Delete(obj) => apply(Change::Delete(obj)),
        }
    }
}

enum Change<K> {
    Apply(K),
    Delete(K),
    Replace(Vec<K>),
}

fn stream<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, config).default_backoff()
}

/// Runs until `stop`: watches, applies, retries binds, publishes the tunnel port.
pub(crate) async fn run(
    client: Client,
    mut proxier: Proxier,
    publish: Publish,
    stop: CancellationToken,
) {
    let republish = std::sync::Arc::new(Notify::new());
    let publisher = tokio::spawn(publish_tunnel_port(
        client.clone(),
        publish.node_name.clone(),
        publish.tunnel_port,
        republish.clone(),
        stop.clone(),
    ));
    republish.notify_one();

    let mut services = Box::pin(stream(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    ));
    let mut slices = Box::pin(stream(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default().labels(SERVICE_NAME_LABEL),
    ));
    let mut nodes = Box::pin(stream(Api::<Node>::all(client), watcher::Config::default()));
    let mut svc_feed = Feed::<Service>::new();
    let mut slice_feed = Feed::<EndpointSlice>::new();
    let mut node_feed = Feed::<Node>::new();
    let mut synced = false;

    loop {
        let retry_at = proxier.next_retry();
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = retry => proxier.retry_binds(),
            Some(ev) = services.next() => match ev {
                Ok(ev) => svc_feed.step(ev, |c| match c {
                    Change::Apply(s) => proxier.apply_service(s),
                    Change::Delete(s) => proxier.delete_service(&ObjectKey::of(&s.metadata)),
                    Change::Replace(all) => proxier.replace_services(all),
                }),
                Err(e) => tracing::warn!(error = %e, "watching Services"),
            },
            Some(ev) = slices.next() => match ev {
                Ok(ev) => slice_feed.step(ev, |c| match c {
                    Change::Apply(s) => proxier.apply_slice(s),
                    Change::Delete(s) => proxier.delete_slice(&ObjectKey::of(&s.metadata)),
                    Change::Replace(all) => proxier.replace_slices(all),
                }),
                Err(e) => tracing::warn!(error = %e, "watching EndpointSlices"),
            },
            Some(ev) = nodes.next() => match ev {
                Ok(ev) => node_feed.step(ev, |c| {
                    let own = |n: &Node| n.metadata.name.as_deref() == Some(publish.node_name.as_str());
                    match c {
                        Change::Apply(n) => {
                            if own(&n) && model::tunnel_port(&n) != Some(publish.tunnel_port) {
                                republish.notify_one();
                            }
                            proxier.apply_node(&n);
                        }
                        Change::Delete(n) => {
                            if let Some(name) = n.metadata.name.as_deref() {
                                proxier.delete_node(name);
                            }
                        }
                        Change::Replace(all) => {
                            if all.iter().any(|n| own(n) && model::tunnel_port(n) != Some(publish.tunnel_port)) {
                                republish.notify_one();
                            }
                            proxier.replace_nodes(&all);
                        }
                    }
                }),
                Err(e) => tracing::warn!(error = %e, "watching Nodes"),
            },
        }
        // Listeners open only once the first lists are all in, so a starting proxy never
        // answers for a Service whose endpoints it has not seen yet.
        if svc_feed.listed && slice_feed.listed && node_feed.listed {
            proxier.sync();
            if !synced {
                synced = true;
                proxier.mark_synced();
                tracing::info!("service proxy synced with the API");
            }
        }
    }
    let _ = publisher.await;
}

/// Sets the tunnel-port annotation on this node's Node whenever asked (at start, and
/// when the Node shows another value, e.g. after being recreated), retrying with
/// back-off until it sticks.
async fn publish_tunnel_port(
    client: Client,
    node: String,
    port: u16,
    wanted: std::sync::Arc<Notify>,
    stop: CancellationToken,
) {
    let nodes: Api<Node> = Api::all(client);
    let annotations: BTreeMap<&str, String> = [(TUNNEL_PORT_ANNOTATION, port.to_string())]
        .into_iter()
        .collect();
    let patch = json!({"metadata": {"annotations": annotations}});
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wanted.notified() => {}
        }
        let mut backoff = Duration::from_millis(500);
        loop {
            match nodes
                .patch(&node, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(%node, port, "published the proxy's tunnel port");
                    break;
                }
                Err(e) => {
                    tracing::warn!(%node, error = %e, "publishing the tunnel port; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}
