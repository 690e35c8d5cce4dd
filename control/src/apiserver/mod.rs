//! The Kubernetes HTTP API over HTTPS.
//!
//! - [`request`]: parsing API paths and query parameters.
//! - [`handlers`]: the HTTP handlers for `/api` and `/apis`.
//! - [`objects`]: Kubernetes object semantics (create, update, patch, delete, list) on
//!   the store — the generic registry.
//! - [`watch`]: the watch event stream.
//! - [`output`]: content negotiation; JSON, Table and PartialObjectMetadata encodings.
//! - [`discovery`]: `/api`, `/apis`, aggregated discovery, `/version`.
//! - [`openapi`]: `/openapi/v3` and `/openapi/v2`: the schemas of every served kind
//!   (kubectl's validation and `kubectl explain`).
//! - [`patch`]: merge, JSON and strategic merge patches.
//! - [`fieldmanager`]: managedFields and server-side apply.
//! - [`duplicates`]: duplicate keys in request bodies, for fieldValidation.
//! - [`protobuf`]: protobuf request bodies (what kubectl's `create` generators send).
//! - [`allocator`]: Service ClusterIPs and NodePorts.
//! - [`namespace_lifecycle`]: which namespaces accept new objects, kept in memory.
//! - [`authn`]: bearer tokens, ServiceAccount tokens and client certificates.
//! - [`jwt`]: ES256 JSON Web Tokens and the ServiceAccount signing key.
//! - [`tokens`]: ServiceAccount token claims and the TokenRequest API.
//! - [`admission`]: mutating admission on create (the ServiceAccount plugin for pods).
//! - [`lister`]: in-memory copies of a resource (ServiceAccounts) from its watch cache.
//! - [`status`]: errors as Kubernetes Status objects.
//! - [`serve`]: the TLS listener.

pub mod admission;
pub mod allocator;
pub mod authn;
pub mod discovery;
pub mod duplicates;
pub mod fieldmanager;
pub mod flowcontrol;
pub mod handlers;
pub mod join;
pub mod jwt;
pub mod kubernetes_service;
pub mod last_written;
pub mod lister;
pub mod local;
pub mod namespace_lifecycle;
pub mod objects;
pub mod openapi;
pub mod output;
pub mod patch;
pub mod pod_proxy;
pub mod pod_stream;
pub mod protobuf;
pub mod request;
pub mod serve;
pub mod status;
pub mod tokens;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use authn::Authenticator;
use objects::Objects;
use status::ApiError;

/// Shared state of the API server.
pub struct ApiState {
    pub objects: Arc<Objects>,
    pub authenticator: Arc<Authenticator>,
    /// `host:port` clients reach us at, reported by `/api`.
    pub server_address: String,
    /// How often watches that asked for bookmarks get one.
    pub bookmark_interval: Duration,
    /// The cluster PKI: signs what the API server hands out and authenticates it to
    /// node agents.
    pub pki: Arc<crate::pki::Pki>,
    /// Signs ServiceAccount tokens (TokenRequest) and checks them.
    pub tokens: Arc<tokens::TokenIssuer>,
    /// Seats and queues of the priority levels.
    pub flow: flowcontrol::FlowControl,
}

/// The client certificate a TLS connection presented, attached to each of its requests.
#[derive(Clone, Default)]
pub struct PeerCertificate(pub Option<rustls::pki_types::CertificateDer<'static>>);

/// Paths anyone may read without credentials (Kubernetes' `system:public-info-viewer`).
fn is_public(path: &str) -> bool {
    matches!(path, "/healthz" | "/livez" | "/readyz" | "/version")
        || path.starts_with("/healthz/")
        || path.starts_with("/livez/")
        || path.starts_with("/readyz/")
}

async fn authenticate(
    State(state): State<Arc<ApiState>>,
    mut req: Request,
    next: Next,
) -> Response {
    if is_public(req.uri().path()) {
        return next.run(req).await;
    }
    let cert = req
        .extensions()
        .get::<PeerCertificate>()
        .and_then(|p| p.0.clone());
    let authz = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    match state
        .authenticator
        .authenticate_request(cert.as_ref(), authz.as_deref())
        .await
    {
        Ok(authn::Authenticated { user, extra }) => {
            req.extensions_mut().insert(user);
            if !extra.0.is_empty() {
                req.extensions_mut().insert(extra);
            }
            next.run(req).await
        }
        Err(e) => {
            tracing::debug!(path = %req.uri().path(), error = %e, "unauthenticated request");
            ApiError::unauthorized().into_response()
        }
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<Arc<ApiState>>) -> Response {
    let probe = tokio::time::timeout(
        Duration::from_secs(2),
        state.objects.store.current_revision(),
    )
    .await;
    match probe {
        Ok(Ok(_)) => (StatusCode::OK, "ok").into_response(),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("[-]etcd failed: {e}\nreadyz check failed"),
        )
            .into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "[-]etcd failed: timed out\nreadyz check failed".to_string(),
        )
            .into_response(),
    }
}

async fn version() -> Response {
    axum::Json(discovery::version()).into_response()
}

async fn metrics_text(State(state): State<Arc<ApiState>>) -> Response {
    let mut text = crate::metrics::render();
    text.push_str(&state.flow.render_metrics());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The API's router: health, metrics, version, OpenAPI, and everything under `/api(s)`.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(healthz))
        .route("/readyz", get(readyz))
        .route("/version", get(version))
        .route("/metrics", get(metrics_text))
        .route("/openapi/v3", get(openapi::serve_v3_index))
        .route("/openapi/v3/{*path}", get(openapi::serve_v3_document))
        .route("/openapi/v2", get(openapi::serve_v2))
        .route(join::JOIN_PATH, axum::routing::post(join::join))
        .route(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            axum::routing::post(authn::self_subject_review),
        )
        .fallback(handlers::api)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}
