//! The ServiceAccount controller: every namespace that is not being deleted has a
//! `default` ServiceAccount, created when the namespace appears and again whenever
//! someone deletes it, as kube-controller-manager's serviceaccount controller does.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;

/// What can go wrong while ensuring a namespace's default ServiceAccount.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("api call failed: {0}")]
    Api(#[from] kube::Error),
}

/// The ServiceAccount every namespace gets.
pub const DEFAULT_NAME: &str = "default";

struct Context {
    client: kube::Client,
}

/// Runs the controller until the process ends.
pub async fn run(client: kube::Client) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let accounts: Api<ServiceAccount> = Api::all(client.clone());
    // Only the default account matters; watching just it keeps the trigger traffic small.
    let default_only = watcher::Config::default().fields(&format!("metadata.name={DEFAULT_NAME}"));
    let ctx = Arc::new(Context { client });
    Controller::new(namespaces, watcher::Config::default())
        .watches(accounts, default_only, |sa| {
            sa.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns))
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "serviceaccount reconcile failed");
            }
        })
        .await;
}

fn error_policy(ns: Arc<Namespace>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(namespace = %ns.name_any(), error = %err,
        "creating the default service account failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Whether the namespace is on its way out (no new objects may be made in it).
fn is_terminating(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
}

/// The default ServiceAccount of namespace `ns`.
pub fn default_account(ns: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: ObjectMeta {
            name: Some(DEFAULT_NAME.to_string()),
            namespace: Some(ns.to_string()),
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    if is_terminating(&ns) {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &name);
    if api.get_opt(DEFAULT_NAME).await?.is_some() {
        return Ok(Action::await_change());
    }
    match api
        .create(&PostParams::default(), &default_account(&name))
        .await
    {
        Ok(_) => {
            tracing::info!(namespace = %name, "created the default service account");
            Ok(Action::await_change())
        }
        // Created meanwhile, or the namespace started terminating: both fine.
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 403 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn terminating_namespaces_get_no_account() {
        let active: Namespace = serde_json::from_value(
            json!({"metadata": {"name": "a"}, "status": {"phase": "Active"}}),
        )
        .expect("namespace");
        let terminating: Namespace = serde_json::from_value(
            json!({"metadata": {"name": "b"}, "status": {"phase": "Terminating"}}),
        )
        .expect("namespace");
        let deleted: Namespace = serde_json::from_value(
            json!({"metadata": {"name": "c", "deletionTimestamp": "2024-01-01T00:00:00Z"}}),
        )
        .expect("namespace");
        assert!(!is_terminating(&active));
        assert!(is_terminating(&terminating));
        assert!(is_terminating(&deleted));
    }

    #[test]
    fn default_account_is_named_default_in_its_namespace() {
        let sa = default_account("team-a");
        assert_eq!(sa.metadata.name.as_deref(), Some("default"));
        assert_eq!(sa.metadata.namespace.as_deref(), Some("team-a"));
    }
}
