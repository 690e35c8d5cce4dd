//! Where the objects a pod references come from: ConfigMaps, Secrets and
//! ServiceAccount tokens.
//!
//! Volumes and environments read them through [`ObjectSource`] rather than a
//! `kube::Client` directly, so their logic can be unit-tested against an in-memory
//! source; the agent passes its `kube::Client`, which implements the trait.

use std::future::Future;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::api::PostParams;
use kube::Api;

/// Failure to read an object from the API (other than "not found", which is `Ok(None)`).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The API server answered with an error or could not be reached.
    #[error(transparent)]
    Api(#[from] kube::Error),
    /// Anything else a non-kube source reports (used by test sources).
    #[error("{0}")]
    Other(String),
}

/// What a projected `serviceAccountToken` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpec {
    /// Namespace of the pod and its ServiceAccount.
    pub namespace: String,
    /// The pod's ServiceAccount (`spec.serviceAccountName`, default `default`).
    pub service_account: String,
    /// Requested audiences; empty means the API server's default audiences.
    pub audiences: Vec<String>,
    /// Requested lifetime in seconds.
    pub expiration_seconds: i64,
    /// The pod the token is bound to (it dies with the pod).
    pub pod_name: String,
    /// UID of that pod.
    pub pod_uid: String,
}

/// A token issued by the TokenRequest API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The bearer token itself.
    pub token: String,
    /// When the API server says it expires.
    pub expires_at: SystemTime,
}

/// Read access to the objects a pod's volumes and environment reference.
pub trait ObjectSource: Send + Sync {
    /// The ConfigMap `namespace/name`, or `None` when it does not exist.
    fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<ConfigMap>, SourceError>> + Send;

    /// The Secret `namespace/name`, or `None` when it does not exist.
    fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<Secret>, SourceError>> + Send;

    /// A fresh ServiceAccount token bound to the pod (TokenRequest API).
    fn service_account_token(
        &self,
        spec: &TokenSpec,
    ) -> impl Future<Output = Result<IssuedToken, SourceError>> + Send;
}

impl ObjectSource for kube::Client {
    async fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ConfigMap>, SourceError> {
        Ok(Api::<ConfigMap>::namespaced(self.clone(), namespace)
            .get_opt(name)
            .await?)
    }

    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, SourceError> {
        Ok(Api::<Secret>::namespaced(self.clone(), namespace)
            .get_opt(name)
            .await?)
    }

    async fn service_account_token(&self, spec: &TokenSpec) -> Result<IssuedToken, SourceError> {
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: spec.audiences.clone(),
                expiration_seconds: Some(spec.expiration_seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(spec.pod_name.clone()),
                    uid: Some(spec.pod_uid.clone()),
                }),
            },
            ..TokenRequest::default()
        };
        let issued = Api::<ServiceAccount>::namespaced(self.clone(), &spec.namespace)
            .create_token_request(&spec.service_account, &PostParams::default(), &request)
            .await?;
        let status = issued.status.ok_or_else(|| {
            SourceError::Other("the TokenRequest response carries no status".into())
        })?;
        Ok(IssuedToken {
            token: status.token,
            expires_at: timestamp_to_system_time(&status.expiration_timestamp.0),
        })
    }
}

/// Converts an API timestamp; times before the epoch (never issued in practice) clamp to it.
fn timestamp_to_system_time(ts: &k8s_openapi::jiff::Timestamp) -> SystemTime {
    let secs = ts.as_second();
    if secs <= 0 {
        return SystemTime::UNIX_EPOCH;
    }
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
}

#[cfg(test)]
mod tests {
    //! The kube-backed source against a small HTTP stand-in for the API server, checking
    //! the requests it sends and how it reads the answers.

    use std::sync::{Arc, Mutex};

    use axum::body::Bytes;
    use axum::http::{Method, StatusCode, Uri};
    use axum::response::IntoResponse;
    use serde_json::json;

    use super::*;

    type Seen = Arc<Mutex<Vec<(Method, String, String)>>>;

    async fn api(seen: Seen, method: Method, uri: Uri, body: Bytes) -> axum::response::Response {
        let path = uri.path().to_string();
        seen.lock().expect("lock").push((
            method.clone(),
            path.clone(),
            String::from_utf8_lossy(&body).into_owned(),
        ));
        let not_found = |what: &str| {
            (
                StatusCode::NOT_FOUND,
                axum::Json(json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure", "reason": "NotFound", "code": 404,
                    "message": format!("{what} not found"),
                })),
            )
                .into_response()
        };
        match (method, path.as_str()) {
            (Method::GET, "/api/v1/namespaces/prod/configmaps/cfg") => axum::Json(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "cfg", "namespace": "prod"},
                "data": {"k": "v"},
            }))
            .into_response(),
            (Method::GET, "/api/v1/namespaces/prod/secrets/creds") => axum::Json(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "creds", "namespace": "prod"},
                "data": {"password": "czNjcmV0"},
            }))
            .into_response(),
            (Method::POST, "/api/v1/namespaces/prod/serviceaccounts/builder/token") => (
                StatusCode::CREATED,
                axum::Json(json!({
                    "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                    "metadata": {"name": "builder", "namespace": "prod"},
                    "spec": {"audiences": ["vault"]},
                    "status": {"token": "jwt", "expirationTimestamp": "2030-01-01T00:00:00Z"},
                })),
            )
                .into_response(),
            _ => not_found("object"),
        }
    }

    #[tokio::test]
    async fn kube_client_source_speaks_the_api() {
        let seen: Seen = Arc::default();
        let router = {
            let seen = seen.clone();
            axum::Router::new().fallback(move |method: Method, uri: Uri, body: Bytes| {
                api(seen.clone(), method, uri, body)
            })
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move { axum::serve(listener, router).await });

        let url: http::Uri = format!("http://{addr}").parse().expect("url");
        let client = kube::Client::try_from(kube::Config::new(url)).expect("client");

        let cm = client.config_map("prod", "cfg").await.expect("get cm");
        assert_eq!(
            cm.and_then(|c| c.data)
                .and_then(|d| d.get("k").cloned())
                .as_deref(),
            Some("v")
        );
        assert!(client
            .config_map("prod", "missing")
            .await
            .expect("not found is not an error")
            .is_none());
        let secret = client.secret("prod", "creds").await.expect("get secret");
        let password = secret
            .and_then(|s| s.data)
            .and_then(|d| d.get("password").cloned())
            .map(|b| b.0);
        assert_eq!(password.as_deref(), Some(&b"s3cret"[..]), "base64-decoded");

        let issued = client
            .service_account_token(&TokenSpec {
                namespace: "prod".into(),
                service_account: "builder".into(),
                audiences: vec!["vault".into()],
                expiration_seconds: 600,
                pod_name: "web".into(),
                pod_uid: "uid-1".into(),
            })
            .await
            .expect("token");
        assert_eq!(issued.token, "jwt");
        assert_eq!(
            issued.expires_at,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000)
        );

        let requests = seen.lock().expect("lock").clone();
        let (_, _, body) = requests
            .iter()
            .find(|(m, _, _)| m == Method::POST)
            .expect("token request sent");
        let body: serde_json::Value = serde_json::from_str(body).expect("json body");
        assert_eq!(
            body["spec"],
            json!({
                "audiences": ["vault"],
                "expirationSeconds": 600,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "web", "uid": "uid-1"},
            })
        );
        server.abort();
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! An in-memory [`ObjectSource`] for unit tests.

    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::time::{Duration, SystemTime};

    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use k8s_openapi::ByteString;
    use kube::api::ObjectMeta;

    use super::{IssuedToken, ObjectSource, SourceError, TokenSpec};

    /// Objects keyed by `namespace/name`, plus a log of token requests.
    #[derive(Default)]
    pub struct FakeSource {
        pub config_maps: Mutex<BTreeMap<String, ConfigMap>>,
        pub secrets: Mutex<BTreeMap<String, Secret>>,
        pub token_requests: Mutex<Vec<TokenSpec>>,
        /// Lifetime of issued tokens (default: the requested one).
        pub token_lifetime: Mutex<Option<Duration>>,
    }

    impl FakeSource {
        pub fn put_config_map(&self, ns: &str, name: &str, data: &[(&str, &str)]) {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some(ns.into()),
                    ..ObjectMeta::default()
                },
                data: Some(
                    data.iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ConfigMap::default()
            };
            self.config_maps
                .lock()
                .expect("fake lock")
                .insert(format!("{ns}/{name}"), cm);
        }

        pub fn put_secret(&self, ns: &str, name: &str, data: &[(&str, &[u8])]) {
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some(ns.into()),
                    ..ObjectMeta::default()
                },
                data: Some(
                    data.iter()
                        .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                        .collect(),
                ),
                ..Secret::default()
            };
            self.secrets
                .lock()
                .expect("fake lock")
                .insert(format!("{ns}/{name}"), secret);
        }

        pub fn token_request_count(&self) -> usize {
            self.token_requests.lock().expect("fake lock").len()
        }
    }

    impl ObjectSource for FakeSource {
        async fn config_map(
            &self,
            namespace: &str,
            name: &str,
        ) -> Result<Option<ConfigMap>, SourceError> {
            Ok(self
                .config_maps
                .lock()
                .expect("fake lock")
                .get(&format!("{namespace}/{name}"))
                .cloned())
        }

        async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, SourceError> {
            Ok(self
                .secrets
                .lock()
                .expect("fake lock")
                .get(&format!("{namespace}/{name}"))
                .cloned())
        }

        async fn service_account_token(
            &self,
            spec: &TokenSpec,
        ) -> Result<IssuedToken, SourceError> {
            let mut log = self.token_requests.lock().expect("fake lock");
            log.push(spec.clone());
            let lifetime = self
                .token_lifetime
                .lock()
                .expect("fake lock")
                .unwrap_or(Duration::from_secs(spec.expiration_seconds.unsigned_abs()));
            Ok(IssuedToken {
                token: format!(
                    "token-{}-{}-{}",
                    spec.service_account,
                    spec.pod_name,
                    log.len()
                ),
                expires_at: SystemTime::now() + lifetime,
            })
        }
    }
}
