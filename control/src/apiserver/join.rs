//! Node join: how a node agent turns the cluster's join token into its own credential.
//!
//! `wasmkube server` keeps a join token in `<data-dir>/join-token` (the format of
//! Kubernetes bootstrap tokens, `[a-z0-9]{6}.[a-z0-9]{16}`). It authenticates as
//! `system:bootstrap:<id>` in the group `system:bootstrappers`, and such a caller may do
//! one thing: `POST /wasmkube/v1/join` with the node's name and addresses. The answer
//! carries a client certificate for `system:node:<name>` (group `system:nodes`), the
//! serving certificate the agent presents to the API server (for logs), and the cluster
//! CA. Kubernetes does the same through CertificateSigningRequests and a signer; one
//! call is enough here because the API server itself is the signer.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::authn::{UserInfo, AUTHENTICATED_GROUP};
use super::status::{ApiError, ApiResult};
use super::ApiState;
use crate::registry::validation;

/// The path agents post to.
pub const JOIN_PATH: &str = "/wasmkube/v1/join";
/// The group every join-token caller is in.
pub const BOOTSTRAPPERS_GROUP: &str = "system:bootstrappers";
/// The group every node credential is in.
pub const NODES_GROUP: &str = "system:nodes";

/// What an agent asks for.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRequest {
    /// The Node name the agent registers as.
    pub node_name: String,
    /// The addresses (IPs or DNS names) its serving certificate must cover.
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// The credentials handed back, all PEM.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinResponse {
    pub ca_certificate: String,
    pub client_certificate: String,
    pub client_key: String,
    pub serving_certificate: String,
    pub serving_key: String,
}

/// The join token stored in `data_dir/join-token`, created on first start.
pub fn load_or_create_token(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join("join-token");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let token = existing.trim().to_string();
        if parse_token(&token).is_some() {
            return Ok(token);
        }
        tracing::warn!(path = %path.display(), "the join token file is malformed; replacing it");
    }
    let token = format!("{}.{}", random_lower(6), random_lower(16));
    let tmp = path.with_extension("tmp");
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        writeln!(f, "{token}")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(token)
}

/// The identity a join token authenticates as.
pub fn token_user(token: &str) -> Option<UserInfo> {
    let (id, _) = parse_token(token)?;
    Some(UserInfo {
        name: format!("system:bootstrap:{id}"),
        uid: String::new(),
        groups: vec![
            BOOTSTRAPPERS_GROUP.to_string(),
            AUTHENTICATED_GROUP.to_string(),
        ],
    })
}

fn parse_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

fn random_lower(n: usize) -> String {
    use rand::Rng as _;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// `POST /wasmkube/v1/join`.
pub async fn join(State(state): State<Arc<ApiState>>, req: Request) -> Response {
    match issue(&state, req).await {
        Ok(resp) => (StatusCode::OK, axum::Json(resp)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn issue(state: &ApiState, req: Request) -> ApiResult<JoinResponse> {
    let user = req
        .extensions()
        .get::<UserInfo>()
        .cloned()
        .ok_or_else(ApiError::unauthorized)?;
    let allowed = user
        .groups
        .iter()
        .any(|g| g == BOOTSTRAPPERS_GROUP || g == "system:masters");
    if !allowed {
        return Err(ApiError::forbidden(format!(
            "user {:?} cannot join nodes: only the join token (group {BOOTSTRAPPERS_GROUP}) may",
            user.name
        )));
    }
    let body = axum::body::to_bytes(req.into_body(), 64 * 1024)
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the join request: {e}")))?;
    let join: JoinRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the join request is malformed: {e}")))?;
    if let Some(reason) = validation::dns1123_subdomain(&join.node_name) {
        return Err(ApiError::new(
            422,
            "Invalid",
            format!("nodeName: Invalid value: {:?}: {reason}", join.node_name),
        ));
    }
    let mut names = join.addresses.clone();
    names.push(join.node_name.clone());
    let pki = &state.pki;
    let user_name = format!("system:node:{}", join.node_name);
    let (client_certificate, client_key) = pki
        .issue_client_cert(&user_name, &[NODES_GROUP])
        .map_err(|e| ApiError::internal(format!("issuing the node credential: {e}")))?;
    let (serving_certificate, serving_key) = pki
        .issue_node_serving_cert(&join.node_name, &names)
        .map_err(|e| {
        ApiError::internal(format!("issuing the node serving certificate: {e}"))
    })?;
    tracing::info!(node = %join.node_name, by = %user.name, "node joined");
    Ok(JoinResponse {
        ca_certificate: pki.ca_cert_pem().to_string(),
        client_certificate,
        client_key,
        serving_certificate,
        serving_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_bootstrap_format_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let t = load_or_create_token(dir.path()).unwrap();
        assert!(parse_token(&t).is_some(), "{t}");
        assert_eq!(load_or_create_token(dir.path()).unwrap(), t);
        let user = token_user(&t).unwrap();
        assert_eq!(user.name, format!("system:bootstrap:{}", &t[..6]));
        assert!(user.groups.iter().any(|g| g == BOOTSTRAPPERS_GROUP));
    }

    #[test]
    fn malformed_tokens_are_not_join_tokens() {
        for bad in [
            "",
            "abc.def",
            "ABCDEF.0123456789abcdef",
            "abcdef0123456789abcdef",
        ] {
            assert!(token_user(bad).is_none(), "{bad}");
        }
    }
}
