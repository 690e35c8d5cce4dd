//! The legacy token controller (kube-controller-manager's "tokens" controller): a Secret
//! of type `kubernetes.io/service-account-token` annotated with
//! `kubernetes.io/service-account.name` gets a signed legacy token (`data.token`), the
//! cluster CA (`data.ca.crt`), its namespace (`data.namespace`) and the account's uid
//! (annotation `kubernetes.io/service-account.uid`). Such a Secret dies with its
//! ServiceAccount: when the account is gone, or was recreated under the same name (a
//! different uid), the Secret is deleted.
//!
//! Like upstream's controller, this one holds the signing key (through
//! [`TokenIssuer`]) rather than asking the API server to sign.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;

use crate::apiserver::jwt::JwtError;
use crate::apiserver::tokens::TokenIssuer;

/// What can go wrong while filling a token Secret.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("api call failed: {0}")]
    Api(#[from] kube::Error),
    /// Signing the token failed.
    #[error("signing the token failed: {0}")]
    Sign(#[from] JwtError),
}

/// The Secret type this controller fills.
pub const TOKEN_SECRET_TYPE: &str = "kubernetes.io/service-account-token";
/// Names the ServiceAccount a token Secret belongs to.
pub const ACCOUNT_NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
/// The uid of that ServiceAccount, set by this controller.
pub const ACCOUNT_UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";
/// The data keys of a filled token Secret.
pub const TOKEN_KEY: &str = "token";
pub const CA_KEY: &str = "ca.crt";
pub const NAMESPACE_KEY: &str = "namespace";

struct Context {
    client: kube::Client,
    tokens: Arc<TokenIssuer>,
    /// The cluster CA, PEM.
    root_ca: String,
}

/// Runs the controller until the process ends.
pub async fn run(client: kube::Client, tokens: Arc<TokenIssuer>, root_ca: String) {
    let secrets: Api<Secret> = Api::all(client.clone());
    let accounts: Api<ServiceAccount> = Api::all(client.clone());
    let token_secrets = watcher::Config::default().fields(&format!("type={TOKEN_SECRET_TYPE}"));
    let controller = Controller::new(secrets, token_secrets);
    // An account's change (above all its deletion) concerns the Secrets naming it.
    let known = controller.store();
    let ctx = Arc::new(Context {
        client,
        tokens,
        root_ca,
    });
    controller
        .watches(accounts, watcher::Config::default(), move |sa| {
            let ns = sa.namespace();
            let name = sa.name_any();
            known
                .state()
                .into_iter()
                .filter(|s| s.namespace() == ns && account_name(s) == Some(name.as_str()))
                .map(|s| ObjectRef::from_obj(&*s))
                .collect::<Vec<_>>()
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "token secret reconcile failed");
            }
        })
        .await;
}

fn error_policy(secret: Arc<Secret>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(namespace = secret.namespace().unwrap_or_default(), secret = %secret.name_any(),
        error = %err, "filling the token secret failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

fn annotation<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

fn account_name(secret: &Secret) -> Option<&str> {
    annotation(secret, ACCOUNT_NAME_ANNOTATION)
}

/// Whether `sa` is the account `secret` belongs to: the name matches, and so does the
/// uid once the Secret records one.
fn belongs_to(secret: &Secret, sa: &ServiceAccount) -> bool {
    account_name(secret) == sa.metadata.name.as_deref()
        && annotation(secret, ACCOUNT_UID_ANNOTATION)
            .is_none_or(|uid| Some(uid) == sa.metadata.uid.as_deref())
}

fn data<'a>(secret: &'a Secret, key: &str) -> &'a [u8] {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map_or(&[], |b| b.0.as_slice())
}

/// Whether the Secret lacks something this controller fills in.
fn needs_fill(secret: &Secret, root_ca: &str) -> bool {
    data(secret, TOKEN_KEY).is_empty()
        || data(secret, NAMESPACE_KEY).is_empty()
        || (!root_ca.is_empty() && data(secret, CA_KEY) != root_ca.as_bytes())
        || annotation(secret, ACCOUNT_UID_ANNOTATION).is_none()
}

/// Fills `secret` (the live copy) for `sa`: what is missing, as upstream's
/// `generateTokenIfNeeded` (an existing token is kept).
fn fill(
    secret: &mut Secret,
    sa: &ServiceAccount,
    tokens: &TokenIssuer,
    root_ca: &str,
) -> Result<(), Error> {
    let ns = secret.namespace().unwrap_or_default();
    let secret_name = secret.name_any();
    let sa_name = sa.name_any();
    let sa_uid = sa.metadata.uid.clone().unwrap_or_default();
    let needs_token = data(secret, TOKEN_KEY).is_empty();
    let token = if needs_token {
        Some(tokens.legacy_token(&ns, &sa_name, &sa_uid, &secret_name)?)
    } else {
        None
    };
    let d = secret.data.get_or_insert_with(BTreeMap::new);
    if !root_ca.is_empty() {
        d.insert(CA_KEY.into(), ByteString(root_ca.as_bytes().to_vec()));
    }
    if d.get(NAMESPACE_KEY).is_none_or(|v| v.0.is_empty()) {
        d.insert(NAMESPACE_KEY.into(), ByteString(ns.into_bytes()));
    }
    if let Some(token) = token {
        d.insert(TOKEN_KEY.into(), ByteString(token.into_bytes()));
    }
    let a = secret
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new);
    a.insert(ACCOUNT_NAME_ANNOTATION.into(), sa_name);
    a.insert(ACCOUNT_UID_ANNOTATION.into(), sa_uid);
    Ok(())
}

async fn reconcile(secret: Arc<Secret>, ctx: Arc<Context>) -> Result<Action, Error> {
    if secret.type_.as_deref() != Some(TOKEN_SECRET_TYPE)
        || secret.metadata.deletion_timestamp.is_some()
    {
        return Ok(Action::await_change());
    }
    let Some(sa_name) = account_name(&secret) else {
        return Ok(Action::await_change());
    };
    let ns = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    let accounts: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let account = accounts
        .get_opt(sa_name)
        .await?
        .filter(|sa| belongs_to(&secret, sa));
    let Some(sa) = account else {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: secret.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match secrets.delete(&name, &params).await {
            Ok(_) => {
                tracing::info!(namespace = %ns, secret = %name, serviceaccount = sa_name,
                    "deleted the token secret of a deleted service account")
            }
            // Gone already, or replaced by a new Secret of that name.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(Action::await_change());
    };
    if !needs_fill(&secret, &ctx.root_ca) {
        return Ok(Action::await_change());
    }
    // The cached copy may be stale: fill the live one, written with its resourceVersion.
    let Some(mut live) = secrets.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    if !needs_fill(&live, &ctx.root_ca) {
        return Ok(Action::await_change());
    }
    fill(&mut live, &sa, &ctx.tokens, &ctx.root_ca)?;
    match secrets.replace(&name, &PostParams::default(), &live).await {
        Ok(_) => {
            tracing::info!(namespace = %ns, secret = %name, serviceaccount = sa_name,
                "filled the token secret");
            Ok(Action::await_change())
        }
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
            Ok(Action::requeue(Duration::from_millis(200)))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::jwt::SigningKey;
    use serde_json::json;

    fn secret(annotations: serde_json::Value) -> Secret {
        serde_json::from_value(json!({
            "metadata": {"name": "robot-token", "namespace": "team", "uid": "s-uid",
                         "annotations": annotations},
            "type": TOKEN_SECRET_TYPE,
        }))
        .expect("secret")
    }

    fn account(uid: &str) -> ServiceAccount {
        serde_json::from_value(
            json!({"metadata": {"name": "robot", "namespace": "team", "uid": uid}}),
        )
        .expect("sa")
    }

    #[test]
    fn secret_belongs_to_the_named_account_with_its_uid() {
        let unbound = secret(json!({ACCOUNT_NAME_ANNOTATION: "robot"}));
        assert!(belongs_to(&unbound, &account("a")));
        let bound = secret(json!({ACCOUNT_NAME_ANNOTATION: "robot", ACCOUNT_UID_ANNOTATION: "a"}));
        assert!(belongs_to(&bound, &account("a")));
        // Recreated under the same name: not the same account any more.
        assert!(!belongs_to(&bound, &account("b")));
        let other = secret(json!({ACCOUNT_NAME_ANNOTATION: "someone"}));
        assert!(!belongs_to(&other, &account("a")));
    }

    #[test]
    fn fill_adds_token_ca_namespace_and_uid_once() {
        let tokens = Arc::new(TokenIssuer::new(
            Arc::new(SigningKey::generate().expect("key")),
            crate::apiserver::tokens::DEFAULT_ISSUER,
        ));
        let mut s = secret(json!({ACCOUNT_NAME_ANNOTATION: "robot"}));
        assert!(needs_fill(&s, "CA"));
        fill(&mut s, &account("a"), &tokens, "CA").expect("fill");
        assert!(!needs_fill(&s, "CA"));
        assert_eq!(data(&s, CA_KEY), b"CA");
        assert_eq!(data(&s, NAMESPACE_KEY), b"team");
        assert_eq!(annotation(&s, ACCOUNT_UID_ANNOTATION), Some("a"));
        let token = String::from_utf8(data(&s, TOKEN_KEY).to_vec()).expect("utf8");
        let claims = tokens.validate(&token, 0).expect("valid").expect("ours");
        assert_eq!(claims.legacy_secret.as_deref(), Some("robot-token"));
        assert_eq!(claims.service_account.uid, "a");

        // A changed CA is refreshed; the token stays.
        let mut changed = s.clone();
        assert!(needs_fill(&changed, "CA2"));
        fill(&mut changed, &account("a"), &tokens, "CA2").expect("fill");
        assert_eq!(data(&changed, CA_KEY), b"CA2");
        assert_eq!(data(&changed, TOKEN_KEY), token.as_bytes());
    }
}
