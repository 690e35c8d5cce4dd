//! Authentication of API requests: who is calling.
//!
//! Three credentials are understood, as in Kubernetes:
//! - a client certificate, already verified against the cluster CA during the TLS
//!   handshake: the subject's CN is the user name and each O is a group;
//! - a bearer token (`Authorization: Bearer <token>`) known to the [`Authenticator`],
//!   added at run time or read from a static token file in Kubernetes' format;
//! - a bearer token that is a ServiceAccount JWT we signed
//!   ([`ServiceAccountAuthenticator`]): user `system:serviceaccount:NS:NAME` in the
//!   groups `system:serviceaccounts` and `system:serviceaccounts:NS`, valid only while
//!   the ServiceAccount (and the pod or Secret the token is bound to, or the Secret a
//!   legacy token is stored in) still exists with the uid the token names.
//!
//! Like kube-apiserver's union authenticator, a request is accepted if any credential
//! it carries authenticates it; the certificate is tried first, then static tokens, then
//! ServiceAccount tokens. Every authenticated user is also in the group
//! `system:authenticated`.
//!
//! `POST /apis/authentication.k8s.io/v1/selfsubjectreviews` ([`self_subject_review`],
//! `kubectl auth whoami`) tells callers who they are.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::objects::Objects;
use super::tokens::TokenIssuer;

/// The group every authenticated user belongs to.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";

/// The identity of an authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// The user name (a certificate's CN, a token's user column).
    pub name: String,
    /// A unique id; empty for certificate users, as in Kubernetes.
    pub uid: String,
    /// The groups, including `system:authenticated` once authenticated.
    pub groups: Vec<String>,
}

/// Why a request could not be authenticated, or a token file not loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthnError {
    /// The request carried no credential at all (or none of a kind understood here).
    #[error("no credentials provided")]
    Unauthenticated,
    /// The bearer token is not known.
    #[error("invalid bearer token")]
    InvalidToken,
    /// The bearer token is a ServiceAccount token of ours that is no longer (or never
    /// was) valid.
    #[error("invalid service account token: {0}")]
    InvalidServiceAccountToken(String),
    /// The client certificate could not be read.
    #[error("invalid client certificate: {0}")]
    InvalidCertificate(String),
    /// The token file could not be read.
    #[error("cannot read token file {path}")]
    TokenFileIo {
        /// The token file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A line of the token file is malformed.
    #[error("{path}:{line}: {reason}")]
    TokenFileLine {
        /// The token file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// Extra attributes of a user (`authentication.kubernetes.io/pod-name`, …), attached to
/// a request next to its [`UserInfo`] when there are any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserExtra(pub BTreeMap<String, Vec<String>>);

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub user: UserInfo,
    pub extra: UserExtra,
}

/// Checks request credentials. Shared by all connections (`Send + Sync`); tokens can be
/// added while serving.
#[derive(Debug, Default)]
pub struct Authenticator {
    /// Token and user pairs. A list scanned in full with a constant-time comparison,
    /// so response timing does not tell how much of a guessed token was right. The
    /// number of static tokens is small; a lock, because tokens are added at run time.
    tokens: RwLock<Vec<(Vec<u8>, UserInfo)>>,
    /// ServiceAccount tokens, when the server signs any.
    service_accounts: Option<ServiceAccountAuthenticator>,
}

impl Authenticator {
    /// An authenticator knowing no tokens (client certificates still work).
    pub fn new() -> Self {
        Self::default()
    }

    /// Also accepts the ServiceAccount tokens `service_accounts` checks.
    pub fn with_service_accounts(mut self, service_accounts: ServiceAccountAuthenticator) -> Self {
        self.service_accounts = Some(service_accounts);
        self
    }

    /// Authenticates a request by every credential kind: [`Authenticator::authenticate`]
    /// first, then, for a bearer token it does not know, ServiceAccount tokens.
    pub async fn authenticate_request(
        &self,
        client_cert: Option<&CertificateDer<'_>>,
        authorization: Option<&str>,
    ) -> Result<Authenticated, AuthnError> {
        match self.authenticate(client_cert, authorization) {
            Ok(user) => Ok(Authenticated {
                user,
                extra: UserExtra::default(),
            }),
            Err(AuthnError::InvalidToken) => {
                let (Some(sa), Some(token)) =
                    (&self.service_accounts, authorization.and_then(bearer_token))
                else {
                    return Err(AuthnError::InvalidToken);
                };
                match sa.authenticate(token).await? {
                    Some(mut found) => {
                        found.user = with_authenticated_group(found.user);
                        Ok(found)
                    }
                    None => Err(AuthnError::InvalidToken),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Accepts `token` as `user` from now on, replacing an earlier user of that token.
    pub fn add_token(&self, token: &str, user: UserInfo) {
        let mut tokens = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        match tokens
            .iter_mut()
            .find(|(known, _)| constant_time_eq(known, token.as_bytes()))
        {
            Some(entry) => entry.1 = user,
            None => tokens.push((token.as_bytes().to_vec(), user)),
        }
    }

    /// Reads a Kubernetes static token file (`token,user,uid,"group1,group2"` per line,
    /// the groups optional; blank lines and `#` comments skipped) and adds its tokens.
    /// Nothing is added if any line is malformed. A token repeated in the file keeps its
    /// first user, as kube-apiserver does. Returns the number of tokens added.
    pub fn load_token_file(&self, path: &Path) -> Result<usize, AuthnError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthnError::TokenFileIo {
            path: path.to_path_buf(),
            source,
        })?;
        let mut entries: Vec<(String, UserInfo)> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: String| AuthnError::TokenFileLine {
                path: path.to_path_buf(),
                line: index + 1,
                reason,
            };
            let (token, user) = parse_token_line(line).map_err(bad)?;
            if entries.iter().any(|(known, _)| *known == token) {
                tracing::warn!(path = %path.display(), line = index + 1, "duplicate token in token file; keeping the first");
                continue;
            }
            entries.push((token, user));
        }
        let count = entries.len();
        for (token, user) in entries {
            self.add_token(&token, user);
        }
        tracing::info!(path = %path.display(), tokens = count, "loaded static tokens");
        Ok(count)
    }

    /// Authenticates a request from its verified client certificate (if the TLS
    /// handshake produced one) and its `Authorization` header (if any).
    ///
    /// `client_cert` must only be a certificate the TLS layer verified against the
    /// cluster CA: it is trusted here without further checks.
    pub fn authenticate(
        &self,
        client_cert: Option<&CertificateDer<'_>>,
        authorization: Option<&str>,
    ) -> Result<UserInfo, AuthnError> {
        let cert_error = match client_cert.map(user_from_certificate) {
            Some(Ok(Some(user))) => return Ok(with_authenticated_group(user)),
            Some(Err(error)) => Some(error),
            Some(Ok(None)) | None => None,
        };
        if let Some(token) = authorization.and_then(bearer_token) {
            return self
                .lookup_token(token)
                .map(with_authenticated_group)
                .ok_or(AuthnError::InvalidToken);
        }
        Err(cert_error.unwrap_or(AuthnError::Unauthenticated))
    }

    fn lookup_token(&self, token: &str) -> Option<UserInfo> {
        let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        let mut found = None;
        // No early exit: every entry is compared whatever matched.
        for (known, user) in tokens.iter() {
            if constant_time_eq(known, token.as_bytes()) {
                found = Some(user);
            }
        }
        found.cloned()
    }
}

/// A new random bearer token: 32 bytes from the OS-seeded CSPRNG, base64url (43 chars).
pub fn generate_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The token of an `Authorization: Bearer <token>` header; `None` for other schemes or
/// an empty token, which kube-apiserver likewise treats as "no token".
fn bearer_token(header: &str) -> Option<&str> {
    let header = header.trim();
    let (scheme, token) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

/// The user a certificate names, or `None` if it names none (no CN), which Kubernetes
/// treats as "not this authenticator" rather than an error.
fn user_from_certificate(cert: &CertificateDer<'_>) -> Result<Option<UserInfo>, AuthnError> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| AuthnError::InvalidCertificate(e.to_string()))?;
    let subject = parsed.subject();
    let Some(cn) = subject.iter_common_name().next() else {
        return Ok(None);
    };
    let name = cn
        .as_str()
        .map_err(|e| AuthnError::InvalidCertificate(format!("common name: {e}")))?;
    if name.is_empty() {
        return Ok(None);
    }
    let groups = subject
        .iter_organization()
        .map(|o| {
            o.as_str()
                .map(str::to_string)
                .map_err(|e| AuthnError::InvalidCertificate(format!("organization: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(UserInfo {
        name: name.to_string(),
        uid: String::new(),
        groups,
    }))
}

fn with_authenticated_group(mut user: UserInfo) -> UserInfo {
    if !user.groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
        user.groups.push(AUTHENTICATED_GROUP.to_string());
    }
    user
}

/// Compares without an early exit on the first differing byte. The length is not
/// hidden; generated tokens all have the same length anyway.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One token file record: `token,user,uid[,groups]`.
fn parse_token_line(line: &str) -> Result<(String, UserInfo), String> {
    let fields = split_csv_record(line)?;
    if fields.len() < 3 {
        return Err(format!(
            "expected at least 3 columns (token, user name, user uid), found {}",
            fields.len()
        ));
    }
    let token = fields[0].trim();
    if token.is_empty() {
        return Err("empty token".to_string());
    }
    let name = fields[1].trim();
    if name.is_empty() {
        return Err("empty user name".to_string());
    }
    let groups = fields
        .get(3)
        .map(|g| {
            g.split(',')
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Ok((
        token.to_string(),
        UserInfo {
            name: name.to_string(),
            uid: fields[2].trim().to_string(),
            groups,
        },
    ))
}

/// Splits one CSV record (RFC 4180 quoting: `"a,b"`, `""` for a quote inside quotes).
fn split_csv_record(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("unterminated quoted field".to_string()),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(c) => return Err(format!("unexpected {c:?} after a quoted field")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err("bare quote in an unquoted field".to_string()),
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

// --- ServiceAccount tokens ------------------------------------------------------------

/// Extra keys Kubernetes attaches to ServiceAccount users.
const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
const EXTRA_CREDENTIAL_ID: &str = "authentication.kubernetes.io/credential-id";

/// Authenticates ServiceAccount tokens: the [`TokenIssuer`] checks signature, times and
/// audience; this adds the lookups that make a token die with its objects. The
/// ServiceAccount comes from the in-memory lister (etcd on a miss), pods and Secrets
/// from etcd.
pub struct ServiceAccountAuthenticator {
    tokens: Arc<TokenIssuer>,
    objects: Arc<Objects>,
}

impl std::fmt::Debug for ServiceAccountAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountAuthenticator")
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

impl ServiceAccountAuthenticator {
    pub fn new(tokens: Arc<TokenIssuer>, objects: Arc<Objects>) -> Self {
        ServiceAccountAuthenticator { tokens, objects }
    }

    /// `Ok(None)` when `token` is not a ServiceAccount token of ours; `Err` when it is
    /// but is invalid or its objects are gone.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Authenticated>, AuthnError> {
        let invalid = |reason: String| AuthnError::InvalidServiceAccountToken(reason);
        let now = chrono::Utc::now().timestamp();
        let Some(claims) = self
            .tokens
            .validate(token, now)
            .map_err(|e| invalid(e.to_string()))?
        else {
            return Ok(None);
        };
        let ns = claims.namespace.as_str();
        let sa = &claims.service_account;
        let account = super::admission::service_account(&self.objects, ns, &sa.name)
            .await
            .map_err(|e| invalid(e.message))?
            .ok_or_else(|| invalid(format!("service account {ns}/{} has been deleted", sa.name)))?;
        check_live(&account, &sa.uid, now)
            .map_err(|why| invalid(format!("service account {ns}/{}: {why}", sa.name)))?;

        let mut extra = BTreeMap::new();
        if let Some(secret_name) = &claims.legacy_secret {
            let secret = self.live("secrets", ns, secret_name).await?;
            if is_deleting_since(&secret, now) {
                return Err(invalid(format!(
                    "token secret {ns}/{secret_name} has been invalidated"
                )));
            }
            let stored = secret
                .pointer("/data/token")
                .and_then(Value::as_str)
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
            if stored.as_deref() != Some(token.as_bytes()) {
                return Err(invalid(format!(
                    "token does not match the copy in secret {ns}/{secret_name}"
                )));
            }
        }
        if let Some(pod) = &claims.pod {
            let live = self.live("pods", ns, &pod.name).await?;
            check_live(&live, &pod.uid, now)
                .map_err(|why| invalid(format!("pod {ns}/{}: {why}", pod.name)))?;
            extra.insert(EXTRA_POD_NAME.to_string(), vec![pod.name.clone()]);
            extra.insert(EXTRA_POD_UID.to_string(), vec![pod.uid.clone()]);
        }
        if let Some(secret) = &claims.secret {
            let live = self.live("secrets", ns, &secret.name).await?;
            check_live(&live, &secret.uid, now)
                .map_err(|why| invalid(format!("secret {ns}/{}: {why}", secret.name)))?;
        }
        if let Some(id) = &claims.id {
            extra.insert(EXTRA_CREDENTIAL_ID.to_string(), vec![format!("JTI={id}")]);
        }
        if claims.warn_after.is_some_and(|w| w < now) {
            tracing::debug!(namespace = ns, serviceaccount = %sa.name,
                "a stale projected token was used after its refresh time");
        }
        Ok(Some(Authenticated {
            user: UserInfo {
                name: super::tokens::user_name(ns, &sa.name),
                uid: sa.uid.clone(),
                groups: super::tokens::groups(ns),
            },
            extra: UserExtra(extra),
        }))
    }

    /// A pod or Secret, read from etcd; its absence invalidates the token.
    async fn live(&self, plural: &str, ns: &str, name: &str) -> Result<Value, AuthnError> {
        let invalid = |reason: String| AuthnError::InvalidServiceAccountToken(reason);
        let def = self
            .objects
            .registry
            .lookup("", "v1", plural)
            .ok_or_else(|| invalid(format!("{plural} are not registered")))?;
        match self.objects.get(&def, Some(ns), name).await {
            Ok(obj) => Ok(obj),
            Err(e) if e.code == 404 => {
                Err(invalid(format!("{plural} {ns}/{name} has been deleted")))
            }
            Err(e) => Err(invalid(e.message)),
        }
    }
}

/// The object still is the one the token names: same uid, not deleted for longer than
/// the leeway.
fn check_live(obj: &Value, uid: &str, now: i64) -> Result<(), String> {
    let actual = obj
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("");
    if actual != uid {
        return Err(format!("uid ({actual}) does not match the token's ({uid})"));
    }
    if is_deleting_since(obj, now) {
        return Err("it is being deleted".to_string());
    }
    Ok(())
}

/// Whether the object's deletion started more than the leeway ago (upstream's grace for
/// requests racing a deletion).
fn is_deleting_since(obj: &Value, now: i64) -> bool {
    obj.pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .is_some_and(|t| t.timestamp() < now - super::tokens::LEEWAY_SECONDS)
}

/// `POST /apis/authentication.k8s.io/v1/selfsubjectreviews`: the caller's own identity.
pub async fn self_subject_review(req: Request) -> Response {
    let Some(user) = req.extensions().get::<UserInfo>().cloned() else {
        return super::status::ApiError::unauthorized().into_response();
    };
    let extra = req
        .extensions()
        .get::<UserExtra>()
        .cloned()
        .unwrap_or_default();
    let mut info = json!({"username": user.name, "groups": user.groups});
    if !user.uid.is_empty() {
        info["uid"] = json!(user.uid);
    }
    if !extra.0.is_empty() {
        info["extra"] = json!(extra.0);
    }
    let review = json!({
        "kind": "SelfSubjectReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "status": {"userInfo": info},
    });
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(&review).unwrap_or_default(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::Pki;

    fn user(name: &str, uid: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.into(),
            uid: uid.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn cert_der(pem: &str) -> CertificateDer<'static> {
        rustls_pemfile::certs(&mut pem.as_bytes())
            .next()
            .expect("one certificate")
            .expect("valid pem")
    }

    #[test]
    fn token_authenticates_and_adds_authenticated_group() {
        let authn = Authenticator::new();
        authn.add_token("s3cret", user("alice", "u1", &["devs"]));
        let got = authn
            .authenticate(None, Some("Bearer s3cret"))
            .expect("known token");
        assert_eq!(got, user("alice", "u1", &["devs", AUTHENTICATED_GROUP]));
        // The scheme is case-insensitive, as in Kubernetes.
        assert!(authn.authenticate(None, Some("bearer s3cret")).is_ok());
    }

    #[test]
    fn wrong_or_missing_token_is_refused() {
        let authn = Authenticator::new();
        authn.add_token("s3cret", user("alice", "u1", &[]));
        assert!(matches!(
            authn.authenticate(None, Some("Bearer s3creT")),
            Err(AuthnError::InvalidToken)
        ));
        assert!(matches!(
            authn.authenticate(None, Some("Bearer s3cret-longer")),
            Err(AuthnError::InvalidToken)
        ));
        assert!(matches!(
            authn.authenticate(None, None),
            Err(AuthnError::Unauthenticated)
        ));
        assert!(matches!(
            authn.authenticate(None, Some("Basic YWxpY2U6cHc=")),
            Err(AuthnError::Unauthenticated)
        ));
        assert!(matches!(
            authn.authenticate(None, Some("Bearer ")),
            Err(AuthnError::Unauthenticated)
        ));
    }

    #[test]
    fn add_token_replaces_the_user_of_a_known_token() {
        let authn = Authenticator::new();
        authn.add_token("t", user("old", "", &[]));
        authn.add_token("t", user("new", "", &[]));
        let got = authn.authenticate(None, Some("Bearer t")).expect("token");
        assert_eq!(got.name, "new");
    }

    #[test]
    fn client_cert_maps_cn_to_user_and_o_to_groups() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pki = Pki::load_or_create(tmp.path(), &[]).expect("pki");
        let (pem, _) = pki
            .issue_client_cert("system:node:n1", &["system:nodes", "extra"])
            .expect("issue");
        let der = cert_der(&pem);
        let got = Authenticator::new()
            .authenticate(Some(&der), None)
            .expect("cert user");
        assert_eq!(
            got,
            user(
                "system:node:n1",
                "",
                &["system:nodes", "extra", AUTHENTICATED_GROUP]
            )
        );

        let (pem, _) = pki.issue_client_cert("solo", &[]).expect("issue");
        let got = Authenticator::new()
            .authenticate(Some(&cert_der(&pem)), None)
            .expect("cert user");
        assert_eq!(got, user("solo", "", &[AUTHENTICATED_GROUP]));
    }

    #[test]
    fn either_credential_is_enough() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pki = Pki::load_or_create(tmp.path(), &[]).expect("pki");
        let (pem, _) = pki.issue_client_cert("certuser", &[]).expect("issue");
        let der = cert_der(&pem);
        let authn = Authenticator::new();
        authn.add_token("good", user("tokenuser", "", &[]));

        // A valid certificate wins even next to an unknown token (union semantics).
        let got = authn
            .authenticate(Some(&der), Some("Bearer bad"))
            .expect("cert");
        assert_eq!(got.name, "certuser");
        // A certificate naming no user falls through to the token.
        let garbage = CertificateDer::from(vec![0x30, 0x00]);
        assert!(matches!(
            authn.authenticate(Some(&garbage), None),
            Err(AuthnError::InvalidCertificate(_))
        ));
        let got = authn
            .authenticate(Some(&garbage), Some("Bearer good"))
            .expect("token");
        assert_eq!(got.name, "tokenuser");
        assert!(matches!(
            authn.authenticate(Some(&garbage), Some("Bearer bad")),
            Err(AuthnError::InvalidToken)
        ));
    }

    #[test]
    fn token_file_is_parsed_like_kubernetes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("tokens.csv");
        std::fs::write(
            &path,
            "# static tokens\n\
             \n\
             tok1,admin,uid-1,\"system:masters,devs\"\n\
             tok2,bob,uid-2\n\
             \"tok,3\",carol,uid-3,\"quote\"\"d\"\n\
             tok1,dup,uid-9\n",
        )
        .expect("write");
        let authn = Authenticator::new();
        assert_eq!(authn.load_token_file(&path).expect("load"), 3);
        assert_eq!(
            authn.authenticate(None, Some("Bearer tok1")).expect("tok1"),
            user(
                "admin",
                "uid-1",
                &["system:masters", "devs", AUTHENTICATED_GROUP]
            )
        );
        assert_eq!(
            authn.authenticate(None, Some("Bearer tok2")).expect("tok2"),
            user("bob", "uid-2", &[AUTHENTICATED_GROUP])
        );
        assert_eq!(
            authn
                .authenticate(None, Some("Bearer tok,3"))
                .expect("tok,3"),
            user("carol", "uid-3", &["quote\"d", AUTHENTICATED_GROUP])
        );
    }

    #[test]
    fn bad_token_file_lines_are_errors_naming_the_line() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cases = [
            ("good,u,1\nonly,two\n", 2),
            ("# c\n\n,user,uid\n", 3),
            ("tok,,uid\n", 1),
            ("tok,user,uid,\"unterminated\n", 1),
            ("tok,us\"er,uid\n", 1),
            ("tok,user,uid,\"g\"x\n", 1),
        ];
        for (text, line) in cases {
            let path = tmp.path().join("tokens.csv");
            std::fs::write(&path, text).expect("write");
            let authn = Authenticator::new();
            match authn.load_token_file(&path) {
                Err(AuthnError::TokenFileLine { line: got, .. }) => {
                    assert_eq!(got, line, "{text:?}")
                }
                other => panic!("{text:?}: expected a line error, got {other:?}"),
            }
            // Nothing from a bad file is accepted.
            assert!(authn.authenticate(None, Some("Bearer good")).is_err());
        }
        let err = Authenticator::new()
            .load_token_file(&tmp.path().join("missing.csv"))
            .expect_err("missing file");
        assert!(matches!(err, AuthnError::TokenFileIo { .. }));
    }

    #[test]
    fn generated_tokens_are_long_url_safe_and_distinct() {
        let a = generate_token();
        let b = generate_token();
        assert!(a.len() >= 32, "{a}");
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
            "{a}"
        );
        assert_ne!(a, b);
    }

    #[test]
    fn authenticator_is_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Authenticator>();
    }
}

#[cfg(test)]
mod service_account_tests {
    use super::*;
    use crate::apiserver::admission::tests::{create, delete, test_objects};
    use crate::apiserver::jwt::SigningKey;
    use crate::apiserver::tokens::{BoundTokenRequest, ObjectRef, DEFAULT_ISSUER};

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    fn request(sa_uid: &str, pod: Option<ObjectRef>) -> BoundTokenRequest {
        BoundTokenRequest {
            namespace: "default".into(),
            service_account: ObjectRef {
                name: "robot".into(),
                uid: sa_uid.into(),
            },
            pod,
            secret: None,
            audiences: vec![DEFAULT_ISSUER.into()],
            expiration_seconds: 3600,
            warn_after_seconds: None,
            now: chrono::Utc::now().timestamp(),
        }
    }

    fn uid(obj: &Value) -> String {
        obj["metadata"]["uid"].as_str().expect("uid").to_string()
    }

    #[tokio::test]
    async fn service_account_tokens_live_as_long_as_their_objects() {
        let t = test_objects().await;
        let objects = t.objects.clone();
        let tokens = Arc::new(TokenIssuer::new(
            Arc::new(SigningKey::generate().expect("key")),
            DEFAULT_ISSUER,
        ));
        let authn = Authenticator::new().with_service_accounts(ServiceAccountAuthenticator::new(
            tokens.clone(),
            objects.clone(),
        ));
        let sa = create(
            &objects,
            "serviceaccounts",
            json!({"metadata": {"name": "robot"}}),
        )
        .await
        .expect("account");
        let pod = json!({"metadata": {"name": "p"}, "spec": {"serviceAccountName": "robot",
            "containers": [{"name": "c", "image": "app.wasm"}]}});
        let pod = create(&objects, "pods", pod).await.expect("pod");

        // A plain token: the account's user and groups.
        let (token, _) = tokens.bound_token(&request(&uid(&sa), None)).expect("sign");
        let got = authn
            .authenticate_request(None, Some(&bearer(&token)))
            .await
            .expect("valid token");
        assert_eq!(got.user.name, "system:serviceaccount:default:robot");
        assert_eq!(got.user.uid, uid(&sa));
        assert_eq!(
            got.user.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:default",
                AUTHENTICATED_GROUP
            ]
        );

        // A token naming another uid of the account is refused.
        let (stale, _) = tokens.bound_token(&request("old-uid", None)).expect("sign");
        assert!(matches!(
            authn
                .authenticate_request(None, Some(&bearer(&stale)))
                .await,
            Err(AuthnError::InvalidServiceAccountToken(_))
        ));

        // Pod-bound: extra names the pod; gone with the pod.
        let bound_pod = ObjectRef {
            name: "p".into(),
            uid: uid(&pod),
        };
        let (bound, id) = tokens
            .bound_token(&request(&uid(&sa), Some(bound_pod)))
            .expect("sign");
        let got = authn
            .authenticate_request(None, Some(&bearer(&bound)))
            .await
            .expect("bound token");
        assert_eq!(got.extra.0[EXTRA_POD_NAME], ["p"]);
        assert_eq!(got.extra.0[EXTRA_CREDENTIAL_ID], [format!("JTI={id}")]);
        delete(&objects, "pods", "p").await;
        assert!(authn
            .authenticate_request(None, Some(&bearer(&bound)))
            .await
            .is_err());

        // Legacy: valid while its Secret holds exactly it.
        let legacy = tokens
            .legacy_token("default", "robot", &uid(&sa), "robot-token")
            .expect("sign");
        let encoded = base64::engine::general_purpose::STANDARD.encode(&legacy);
        let secret = json!({"metadata": {"name": "robot-token", "annotations": {
                "kubernetes.io/service-account.name": "robot"}},
            "type": "kubernetes.io/service-account-token", "data": {"token": encoded}});
        create(&objects, "secrets", secret).await.expect("secret");
        assert!(authn
            .authenticate_request(None, Some(&bearer(&legacy)))
            .await
            .is_ok());
        delete(&objects, "secrets", "robot-token").await;
        assert!(authn
            .authenticate_request(None, Some(&bearer(&legacy)))
            .await
            .is_err());

        // Deleting the account ends its tokens (the lister may lag; etcd decides then).
        delete(&objects, "serviceaccounts", "robot").await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match authn
                .authenticate_request(None, Some(&bearer(&token)))
                .await
            {
                Err(AuthnError::InvalidServiceAccountToken(_)) => break,
                other => assert!(
                    tokio::time::Instant::now() < deadline,
                    "still accepted: {other:?}"
                ),
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }

        // Tokens that are not JWTs of ours stay unknown bearer tokens.
        assert!(matches!(
            authn.authenticate_request(None, Some("Bearer abc")).await,
            Err(AuthnError::InvalidToken)
        ));
    }
}
