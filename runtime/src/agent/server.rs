//! The agent's HTTPS endpoint (the kubelet's port): container logs, `exec` and
//! `port-forward` for the API server.
//!
//! Only the control plane may call it: a client must present a certificate of the
//! cluster CA for the API server's kubelet-client identity (CN
//! `kube-apiserver-kubelet-client`) or a cluster admin (group `system:masters`). Node
//! credentials, which the same CA issues, are refused, so one node cannot read
//! another's pods.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// Why the endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A certificate or key in the node's credentials is unusable.
    #[error("the node's serving credentials: {0}")]
    Credentials(String),
    /// The TLS configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// The CN the API server's kubelet-client certificate carries.
pub const APISERVER_CLIENT_CN: &str = "kube-apiserver-kubelet-client";

/// A TLS server configuration that requires a client certificate of the cluster CA.
pub fn tls_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<rustls::ServerConfig, ServeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in certs(ca_pem)? {
        roots
            .add(ca)
            .map_err(|e| ServeError::Credentials(format!("the CA certificate: {e}")))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| ServeError::Credentials(format!("the client verifier: {e}")))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| ServeError::Credentials(format!("the serving key: {e}")))?
        .ok_or_else(|| ServeError::Credentials("the serving key file holds no key".into()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert_pem)?, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, ServeError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| ServeError::Credentials(format!("a certificate: {e}")))?;
    if certs.is_empty() {
        return Err(ServeError::Credentials("no certificate in PEM".into()));
    }
    Ok(certs)
}

/// Whether a (CA-verified) client certificate belongs to the control plane.
fn is_control_plane(cert: &CertificateDer<'_>) -> bool {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return false;
    };
    let subject = parsed.subject();
    let cn_ok = subject
        .iter_common_name()
        .any(|cn| cn.as_str().ok() == Some(APISERVER_CLIENT_CN));
    let admin = subject
        .iter_organization()
        .any(|o| o.as_str().ok() == Some("system:masters"));
    cn_ok || admin
}

/// Everything the endpoint serves: container logs, and (through the pods' sandboxes)
/// exec and port-forward.
pub fn router(
    logs: Arc<crate::logs::LogStore>,
    sandboxes: Arc<super::sandbox::Sandboxes>,
) -> Router {
    crate::logs::http::router(logs)
        .merge(super::exec::router(sandboxes.clone()))
        .merge(super::portforward::router(sandboxes))
}

/// Serves `router` over TLS on `listener` until `stop`.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    router: Router,
    stop: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        let (tcp, peer): (_, SocketAddr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let allowed = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .is_some_and(is_control_plane);
            let service =
                router.map_request(move |req: axum::extract::Request<hyper::body::Incoming>| {
                    req.map(axum::body::Body::new)
                });
            let forbidden = Router::new().fallback(|| async {
                (
                    http::StatusCode::FORBIDDEN,
                    "only the API server may call the node agent\n",
                )
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let result = if allowed {
                tokio::select! {
                    r = builder.serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(service)) => r,
                    _ = stop.cancelled() => Ok(()),
                }
            } else {
                let service = forbidden.map_request(
                    move |req: axum::extract::Request<hyper::body::Incoming>| {
                        req.map(axum::body::Body::new)
                    },
                );
                builder
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(service))
                    .await
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
