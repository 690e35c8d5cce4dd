//! API clients inside the API server's process.
//!
//! The controllers, the scheduler and, in `wasmkube up`, the node agent and its Service
//! proxy run in the API server's process. They stay API clients with identities of
//! their own: each request still meets authentication (the client certificate the
//! cluster CA issued to the component), priority and fairness, admission and the rest
//! of the handlers. Only the wire is skipped: a request is handed to the API's router
//! as a value, so neither end pays for TLS records, HTTP framing or a loopback socket
//! (a 500-pod burst on `up`, creation→Running p50: 103–114 ms over loopback TLS,
//! 59–68 ms in-process).
//!
//! Upgrades (exec, attach, port-forward) need a connection and are not available here;
//! in-process components do not make them.

use axum::Router;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tower::ServiceExt;

use super::PeerCertificate;

/// Why an in-process client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LocalClientError {
    #[error("the client certificate is not a PEM certificate: {0}")]
    Certificate(String),
}

/// Makes API clients that call the router of this process's API server directly.
#[derive(Clone)]
pub struct LocalApi {
    router: Router,
}

impl LocalApi {
    pub(crate) fn new(router: Router) -> LocalApi {
        LocalApi { router }
    }

    /// A client authenticated as the subject of `cert_pem`, a client certificate this
    /// cluster's CA issued (its key stays with the caller: in-process there is no
    /// handshake to prove it in, so only code of this process may call this).
    pub fn client(&self, cert_pem: &str) -> Result<kube::Client, LocalClientError> {
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| LocalClientError::Certificate(e.to_string()))?;
        let peer = PeerCertificate(Some(cert));
        let service =
            self.router
                .clone()
                .map_request(move |mut req: http::Request<kube::client::Body>| {
                    req.extensions_mut().insert(peer.clone());
                    req.map(axum::body::Body::new)
                });
        Ok(kube::Client::new(service, "default"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::authn::Authenticator;
    use crate::pki::Pki;
    use axum::extract::Request;
    use axum::routing::post;

    /// A router that answers with who the request's certificate says it is and what
    /// it sent, as the API's authentication would see them.
    fn echo_router() -> Router {
        Router::new().route(
            "/who",
            post(|req: Request| async move {
                let cert = req
                    .extensions()
                    .get::<PeerCertificate>()
                    .and_then(|p| p.0.clone());
                let user = Authenticator::new()
                    .authenticate(cert.as_ref(), None)
                    .map(|u| format!("{} {:?}", u.name, u.groups))
                    .unwrap_or_else(|e| format!("refused: {e}"));
                let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                    .await
                    .unwrap_or_default();
                format!("{user} sent {}", String::from_utf8_lossy(&body))
            }),
        )
    }

    #[tokio::test]
    async fn requests_reach_the_router_as_the_certificate_subject() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pki = Pki::load_or_create(tmp.path(), &[]).expect("pki");
        let (pem, _key) = pki
            .issue_client_cert("system:node:n1", &["system:nodes"])
            .expect("issue");
        let client = LocalApi::new(echo_router()).client(&pem).expect("client");
        let req = http::Request::post("/who")
            .body(b"hello".to_vec())
            .expect("request");
        let text = client.request_text(req).await.expect("answered");
        assert_eq!(
            text,
            "system:node:n1 [\"system:nodes\", \"system:authenticated\"] sent hello"
        );
        let err = LocalApi::new(echo_router())
            .client("not a certificate")
            .err()
            .expect("refused");
        assert!(err.to_string().contains("not a PEM certificate"), "{err}");
    }
}
