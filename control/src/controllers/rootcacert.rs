//! The root-CA publisher: every namespace that is not being deleted has a ConfigMap
//! `kube-root-ca.crt` whose only key `ca.crt` is the cluster CA, as
//! kube-controller-manager's root-ca-cert-publisher keeps it. Pods read it through the
//! projected ServiceAccount volume to trust the API server. A deleted or edited
//! ConfigMap is put back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;

use crate::apiserver::admission::ROOT_CA_CONFIG_MAP;

/// What can go wrong while publishing the CA.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("api call failed: {0}")]
    Api(#[from] kube::Error),
}

/// The key holding the CA certificate.
pub const CA_KEY: &str = "ca.crt";
/// The annotation upstream sets on the ConfigMap, with upstream's text.
const DESCRIPTION_ANNOTATION: &str = "kubernetes.io/description";
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

struct Context {
    client: kube::Client,
    /// The cluster CA, PEM.
    root_ca: String,
}

/// Runs the publisher until the process ends; `root_ca` is the cluster CA (PEM).
pub async fn run(client: kube::Client, root_ca: String) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let config_maps: Api<ConfigMap> = Api::all(client.clone());
    // Only the published ConfigMap matters: watch just it to keep trigger traffic small.
    let ours = watcher::Config::default().fields(&format!("metadata.name={ROOT_CA_CONFIG_MAP}"));
    let ctx = Arc::new(Context { client, root_ca });
    Controller::new(namespaces, watcher::Config::default())
        .watches(config_maps, ours, |cm| {
            cm.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns))
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "root CA publishing failed");
            }
        })
        .await;
}

fn error_policy(ns: Arc<Namespace>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(namespace = %ns.name_any(), error = %err,
        "publishing the root CA failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

fn is_terminating(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
}

/// The data the ConfigMap must hold.
fn wanted_data(root_ca: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(CA_KEY.to_string(), root_ca.to_string())])
}

/// Whether `cm` is as published: exactly the CA as data, and the description.
fn is_current(cm: &ConfigMap, root_ca: &str) -> bool {
    cm.data.as_ref() == Some(&wanted_data(root_ca))
        && cm.binary_data.as_ref().is_none_or(BTreeMap::is_empty)
        && cm
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DESCRIPTION_ANNOTATION))
            .is_some_and(|d| !d.is_empty())
}

/// The ConfigMap as published in `ns`.
pub fn root_ca_config_map(ns: &str, root_ca: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(ROOT_CA_CONFIG_MAP.to_string()),
            namespace: Some(ns.to_string()),
            annotations: Some(BTreeMap::from([(
                DESCRIPTION_ANNOTATION.to_string(),
                DESCRIPTION.to_string(),
            )])),
            ..Default::default()
        },
        data: Some(wanted_data(root_ca)),
        ..Default::default()
    }
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    if is_terminating(&ns) {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &name);
    match api.get_opt(ROOT_CA_CONFIG_MAP).await? {
        None => {
            match api
                .create(
                    &PostParams::default(),
                    &root_ca_config_map(&name, &ctx.root_ca),
                )
                .await
            {
                Ok(_) => tracing::info!(namespace = %name, "published the root CA"),
                // Created meanwhile: look again.
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    return Ok(Action::requeue(Duration::from_millis(200)))
                }
                // The namespace started terminating or is gone.
                Err(kube::Error::Api(e)) if e.code == 403 || e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Some(cm) if is_current(&cm, &ctx.root_ca) => {}
        Some(mut cm) => {
            cm.data = Some(wanted_data(&ctx.root_ca));
            cm.binary_data = None;
            cm.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(DESCRIPTION_ANNOTATION.to_string(), DESCRIPTION.to_string());
            match api
                .replace(ROOT_CA_CONFIG_MAP, &PostParams::default(), &cm)
                .await
            {
                Ok(_) => tracing::info!(namespace = %name, "repaired the root CA ConfigMap"),
                // Changed or deleted meanwhile: the watch brings us back.
                Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
                    return Ok(Action::requeue(Duration::from_millis(200)))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n";

    #[test]
    fn published_config_map_is_current() {
        let cm = root_ca_config_map("team", CA);
        assert_eq!(cm.metadata.name.as_deref(), Some("kube-root-ca.crt"));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("team"));
        assert!(is_current(&cm, CA));
    }

    #[test]
    fn edits_make_it_stale() {
        let mut edited = root_ca_config_map("team", CA);
        edited.data = Some(BTreeMap::from([(CA_KEY.to_string(), "forged".to_string())]));
        assert!(!is_current(&edited, CA));

        let mut extra = root_ca_config_map("team", CA);
        if let Some(d) = extra.data.as_mut() {
            d.insert("other".into(), "x".into());
        }
        assert!(!is_current(&extra, CA));

        let mut bare = root_ca_config_map("team", CA);
        bare.metadata.annotations = None;
        assert!(!is_current(&bare, CA));
    }
}
