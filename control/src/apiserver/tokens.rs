//! ServiceAccount tokens: the claims Kubernetes puts in them, and the TokenRequest API
//! (`POST …/serviceaccounts/NAME/token`) that hands them out.
//!
//! Two kinds of token exist, as in Kubernetes:
//! - **bound** tokens (TokenRequest, projected volumes): issuer `--service-account-issuer`
//!   (`https://kubernetes.default.svc.cluster.local`), `sub`
//!   `system:serviceaccount:NS:NAME`, `aud`, `exp`/`iat`/`nbf`, `jti`, and a private
//!   `kubernetes.io` claim naming the namespace, the ServiceAccount (name and uid) and
//!   the pod or Secret the token is bound to. They die with the object they are bound to.
//! - **legacy** tokens, stored in Secrets of type `kubernetes.io/service-account-token` by
//!   the token controller: issuer `kubernetes/serviceaccount`, no expiry, and the
//!   `kubernetes.io/serviceaccount/*` claims. They die with their Secret.
//!
//! [`TokenIssuer`] signs both and checks what can be checked without the store
//! (signature, times, issuer, audience); the authenticator
//! ([`super::authn::ServiceAccountAuthenticator`]) adds the lookups.
//!
//! kubectl sends TokenRequests as protobuf, so the handler reads that encoding too (a
//! few fields, hence a small reader here rather than descriptors in [`super::protobuf`]).

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{TimeZone as _, Utc};
use serde_json::{json, Value};

use super::jwt::{self, JwtError, SigningKey};
use super::request::Query;
use super::status::{ApiError, ApiResult};
use super::ApiState;
use crate::registry::{Cause, ResourceDef};

/// The issuer of bound tokens unless `--service-account-issuer` says otherwise.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The issuer of legacy (Secret-based) tokens.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";
/// TokenRequest's default lifetime.
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// The shortest lifetime a TokenRequest may ask for (10 minutes).
pub const MIN_EXPIRATION_SECONDS: i64 = 600;
/// The longest lifetime a TokenRequest may ask for (2^32 seconds).
pub const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;
/// Pod-bound tokens asking for exactly this lifetime (what the projected volume asks
/// for) get [`EXTENDED_EXPIRATION_SECONDS`] instead, with a `warnafter` at the asked
/// time: upstream's safety net for workloads that do not reload their token.
pub const WARN_ONLY_EXPIRATION_SECONDS: i64 = super::admission::PROJECTED_TOKEN_EXPIRATION_SECONDS;
/// The extended lifetime of projected tokens (one year).
pub const EXTENDED_EXPIRATION_SECONDS: i64 = 365 * 24 * 60 * 60;
/// Clock skew tolerated on `exp` and `nbf` (go-jose's default leeway).
pub const LEEWAY_SECONDS: i64 = 60;

/// Prefix of every ServiceAccount user name.
pub const USER_PREFIX: &str = "system:serviceaccount:";
/// The group of every ServiceAccount; `system:serviceaccounts:NS` is added per namespace.
pub const ALL_SERVICE_ACCOUNTS_GROUP: &str = "system:serviceaccounts";

const PRIVATE_CLAIM: &str = "kubernetes.io";
const LEGACY_NAMESPACE: &str = "kubernetes.io/serviceaccount/namespace";
const LEGACY_SECRET_NAME: &str = "kubernetes.io/serviceaccount/secret.name";
const LEGACY_SA_NAME: &str = "kubernetes.io/serviceaccount/service-account.name";
const LEGACY_SA_UID: &str = "kubernetes.io/serviceaccount/service-account.uid";

/// The TokenRequest group, version and kind.
const GROUP: &str = "authentication.k8s.io";
const API_VERSION: &str = "authentication.k8s.io/v1";
const KIND: &str = "TokenRequest";

/// Why a token that looks like one of ours is not valid.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The signature (or the JWS structure) is wrong.
    #[error(transparent)]
    Jwt(#[from] JwtError),
    /// `exp` is in the past.
    #[error("service account token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("service account token is not valid yet")]
    NotYetValid,
    /// `aud` names none of the API server's audiences.
    #[error("token audiences {token:?} is invalid for the target audiences {api:?}")]
    WrongAudience {
        /// What the token says.
        token: Vec<String>,
        /// What the API server accepts.
        api: Vec<String>,
    },
    /// A claim the token must carry is missing or malformed.
    #[error("service account token lacks a valid {0} claim")]
    MissingClaim(&'static str),
    /// `sub` does not name the ServiceAccount the private claims name.
    #[error("service account token subject does not match its claims")]
    SubjectMismatch,
}

/// An object a token names: its name and uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub name: String,
    pub uid: String,
}

/// What a bound token is asked for.
#[derive(Debug, Clone)]
pub struct BoundTokenRequest {
    pub namespace: String,
    pub service_account: ObjectRef,
    /// The pod the token dies with, if any.
    pub pod: Option<ObjectRef>,
    /// The Secret the token dies with, if any.
    pub secret: Option<ObjectRef>,
    pub audiences: Vec<String>,
    /// Lifetime in seconds (what `exp` is set to).
    pub expiration_seconds: i64,
    /// `warnafter`, in seconds from now, for extended projected tokens.
    pub warn_after_seconds: Option<i64>,
    /// Issue time, Unix seconds.
    pub now: i64,
}

/// The claims of a valid token, before the store lookups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    pub namespace: String,
    pub service_account: ObjectRef,
    /// Bound tokens: the pod they are bound to.
    pub pod: Option<ObjectRef>,
    /// Bound tokens: the Secret they are bound to.
    pub secret: Option<ObjectRef>,
    /// Legacy tokens: the Secret holding them.
    pub legacy_secret: Option<String>,
    /// Bound tokens: the token id (`jti`).
    pub id: Option<String>,
    /// Bound tokens: when an extended token should have been replaced (Unix seconds).
    pub warn_after: Option<i64>,
}

/// Signs and checks ServiceAccount tokens.
pub struct TokenIssuer {
    key: Arc<SigningKey>,
    issuer: String,
    /// The audiences the API server itself answers to (kube-apiserver's
    /// `--api-audiences`, which defaults to the issuer).
    api_audiences: Vec<String>,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("issuer", &self.issuer)
            .field("key", &self.key)
            .finish()
    }
}

/// `system:serviceaccount:NS:NAME`.
pub fn user_name(namespace: &str, name: &str) -> String {
    format!("{USER_PREFIX}{namespace}:{name}")
}

/// The groups of a ServiceAccount in `namespace` (without `system:authenticated`).
pub fn groups(namespace: &str) -> Vec<String> {
    vec![
        ALL_SERVICE_ACCOUNTS_GROUP.to_string(),
        format!("{ALL_SERVICE_ACCOUNTS_GROUP}:{namespace}"),
    ]
}

impl TokenIssuer {
    /// Tokens signed with `key` for `issuer`, whose audience is also the API's.
    pub fn new(key: Arc<SigningKey>, issuer: impl Into<String>) -> Self {
        let issuer = issuer.into();
        TokenIssuer {
            key,
            api_audiences: vec![issuer.clone()],
            issuer,
        }
    }

    /// The `iss` of bound tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The audiences a token must name to be accepted by the API server.
    pub fn api_audiences(&self) -> &[String] {
        &self.api_audiences
    }

    /// Whether `iss` is one this issuer signs: its own or the legacy one. Tokens of
    /// other issuers are someone else's to judge.
    pub fn is_our_issuer(&self, iss: &str) -> bool {
        iss == self.issuer || iss == LEGACY_ISSUER
    }

    /// Signs a bound token. Returns the token and its id.
    pub fn bound_token(&self, req: &BoundTokenRequest) -> Result<(String, String), JwtError> {
        let id = uuid::Uuid::new_v4().to_string();
        let mut private = json!({
            "namespace": req.namespace,
            "serviceaccount": {"name": req.service_account.name, "uid": req.service_account.uid},
        });
        if let Some(pod) = &req.pod {
            private["pod"] = json!({"name": pod.name, "uid": pod.uid});
        }
        if let Some(secret) = &req.secret {
            private["secret"] = json!({"name": secret.name, "uid": secret.uid});
        }
        if let Some(after) = req.warn_after_seconds {
            private["warnafter"] = json!(req.now + after);
        }
        let claims = json!({
            "aud": req.audiences,
            "exp": req.now + req.expiration_seconds,
            "iat": req.now,
            "iss": self.issuer,
            "jti": id,
            PRIVATE_CLAIM: private,
            "nbf": req.now,
            "sub": user_name(&req.namespace, &req.service_account.name),
        });
        Ok((self.key.sign(&claims)?, id))
    }

    /// Signs a legacy token for the Secret `secret_name` of ServiceAccount
    /// `namespace/name` (uid `uid`).
    pub fn legacy_token(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        secret_name: &str,
    ) -> Result<String, JwtError> {
        let claims = json!({
            "iss": LEGACY_ISSUER,
            LEGACY_NAMESPACE: namespace,
            LEGACY_SECRET_NAME: secret_name,
            LEGACY_SA_NAME: name,
            LEGACY_SA_UID: uid,
            "sub": user_name(namespace, name),
        });
        self.key.sign(&claims)
    }

    /// Checks a token at Unix time `now`: `Ok(None)` when it is not a JWT of one of our
    /// issuers (another authenticator's business), `Err` when it is ours but invalid.
    pub fn validate(&self, token: &str, now: i64) -> Result<Option<TokenClaims>, TokenError> {
        let Some(unverified) = jwt::unverified_claims(token) else {
            return Ok(None);
        };
        let Some(iss) = unverified.get("iss").and_then(Value::as_str) else {
            return Ok(None);
        };
        if !self.is_our_issuer(iss) {
            return Ok(None);
        }
        let claims = self.key.verify(token)?;
        let legacy = claims.get("iss").and_then(Value::as_str) == Some(LEGACY_ISSUER);
        check_times(&claims, now, legacy)?;
        let parsed = if legacy {
            legacy_claims(&claims)?
        } else {
            self.check_audience(&claims)?;
            bound_claims(&claims)?
        };
        let subject = claims.get("sub").and_then(Value::as_str);
        if subject != Some(user_name(&parsed.namespace, &parsed.service_account.name).as_str()) {
            return Err(TokenError::SubjectMismatch);
        }
        Ok(Some(parsed))
    }

    fn check_audience(&self, claims: &Value) -> Result<(), TokenError> {
        let token: Vec<String> = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        };
        // A token without audiences is meant for the API server itself (upstream).
        if token.is_empty() || token.iter().any(|a| self.api_audiences.contains(a)) {
            return Ok(());
        }
        Err(TokenError::WrongAudience {
            token,
            api: self.api_audiences.clone(),
        })
    }
}

fn check_times(claims: &Value, now: i64, legacy: bool) -> Result<(), TokenError> {
    match claims.get("exp") {
        Some(exp) => {
            let exp = exp.as_i64().ok_or(TokenError::MissingClaim("exp"))?;
            if now > exp + LEEWAY_SECONDS {
                return Err(TokenError::Expired);
            }
        }
        // Legacy tokens never expire; bound ones always do.
        None if legacy => {}
        None => return Err(TokenError::MissingClaim("exp")),
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_i64().ok_or(TokenError::MissingClaim("nbf"))?;
        if now + LEEWAY_SECONDS < nbf {
            return Err(TokenError::NotYetValid);
        }
    }
    Ok(())
}

fn str_claim(v: &Value, claim: &'static str) -> Result<String, TokenError> {
    v.get(claim)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or(TokenError::MissingClaim(claim))
}

fn object_ref(v: &Value, claim: &'static str) -> Result<Option<ObjectRef>, TokenError> {
    match v.get(claim) {
        None | Some(Value::Null) => Ok(None),
        Some(r) => Ok(Some(ObjectRef {
            name: str_claim(r, "name").map_err(|_| TokenError::MissingClaim(claim))?,
            uid: str_claim(r, "uid").map_err(|_| TokenError::MissingClaim(claim))?,
        })),
    }
}

fn bound_claims(claims: &Value) -> Result<TokenClaims, TokenError> {
    let private = claims
        .get(PRIVATE_CLAIM)
        .filter(|p| p.is_object())
        .ok_or(TokenError::MissingClaim(PRIVATE_CLAIM))?;
    Ok(TokenClaims {
        namespace: str_claim(private, "namespace")?,
        service_account: object_ref(private, "serviceaccount")?
            .ok_or(TokenError::MissingClaim("serviceaccount"))?,
        pod: object_ref(private, "pod")?,
        secret: object_ref(private, "secret")?,
        legacy_secret: None,
        id: claims
            .get("jti")
            .and_then(Value::as_str)
            .map(str::to_string),
        warn_after: private.get("warnafter").and_then(Value::as_i64),
    })
}

fn legacy_claims(claims: &Value) -> Result<TokenClaims, TokenError> {
    Ok(TokenClaims {
        namespace: str_claim(claims, LEGACY_NAMESPACE)?,
        service_account: ObjectRef {
            name: str_claim(claims, LEGACY_SA_NAME)?,
            uid: str_claim(claims, LEGACY_SA_UID)?,
        },
        pod: None,
        secret: None,
        legacy_secret: Some(str_claim(claims, LEGACY_SECRET_NAME)?),
        id: None,
        warn_after: None,
    })
}

// --- The TokenRequest API -------------------------------------------------------------

/// Largest TokenRequest body read.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// `POST /api/v1/namespaces/NS/serviceaccounts/NAME/token`.
pub async fn token_request(
    state: &Arc<ApiState>,
    def: &Arc<ResourceDef>,
    ns: Option<&str>,
    name: &str,
    req: Request,
    _q: &Query,
    _dry_run: bool,
) -> ApiResult<Response> {
    let ns = ns.ok_or_else(ApiError::not_found_path)?;
    let is_protobuf = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|essence| essence.trim() == super::protobuf::MEDIA_TYPE);
    let body = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::too_large("the TokenRequest body is too large"))?;
    let mut request = if is_protobuf {
        decode_protobuf(&body).map_err(|e| {
            ApiError::bad_request(format!("the protobuf body could not be decoded: {e}"))
        })?
    } else if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice::<Value>(&body).map_err(|e| {
            ApiError::bad_request(format!(
                "the body of the request could not be decoded as JSON: {e}"
            ))
        })?
    };
    if !request.is_object() {
        return Err(ApiError::bad_request(
            "the TokenRequest must be a JSON object",
        ));
    }
    check_type(&request)?;
    for (field, want) in [("name", name), ("namespace", ns)] {
        match request
            .pointer(&format!("/metadata/{field}"))
            .and_then(Value::as_str)
        {
            Some(given) if !given.is_empty() && given != want => {
                let detail = if field == "name" {
                    "must match the service account name if specified"
                } else {
                    "must match the service account namespace if specified"
                };
                return Err(invalid(
                    name,
                    Cause::invalid(format!("metadata.{field}"), given, detail),
                ));
            }
            _ => {}
        }
    }

    let objects = &state.objects;
    let sa = super::admission::service_account(objects, ns, name)
        .await?
        .ok_or_else(|| ApiError::not_found(def, name))?;
    let sa_uid = sa
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();

    let spec = request.get("spec").cloned().unwrap_or_else(|| json!({}));
    let audiences: Vec<String> = match spec.get("audiences") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::bad_request("spec.audiences must be strings"))
            })
            .collect::<ApiResult<_>>()?,
        Some(_) => return Err(ApiError::bad_request("spec.audiences must be a list")),
    };
    let audiences = if audiences.is_empty() {
        state.tokens.api_audiences().to_vec()
    } else {
        audiences
    };
    let expiration = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_EXPIRATION_SECONDS,
        Some(v) => v
            .as_i64()
            .ok_or_else(|| ApiError::bad_request("spec.expirationSeconds must be an integer"))?,
    };
    if expiration < MIN_EXPIRATION_SECONDS {
        return Err(invalid(
            name,
            Cause::invalid_int(
                "spec.expirationSeconds",
                expiration,
                "may not specify a duration less than 10 minutes",
            ),
        ));
    }
    if expiration > MAX_EXPIRATION_SECONDS {
        return Err(invalid(
            name,
            Cause::invalid_int(
                "spec.expirationSeconds",
                expiration,
                "may not specify a duration larger than 2^32 seconds",
            ),
        ));
    }

    let bound = spec.get("boundObjectRef").filter(|b| !b.is_null());
    let (pod, secret) = match bound {
        None => (None, None),
        Some(bound) => bound_object(state, ns, name, bound).await?,
    };

    let now = Utc::now().timestamp();
    // Projected tokens live long, with a warning after the hour they asked for.
    let extend = pod.is_some()
        && expiration == WARN_ONLY_EXPIRATION_SECONDS
        && audiences.as_slice() == state.tokens.api_audiences();
    let (token, _id) = state
        .tokens
        .bound_token(&BoundTokenRequest {
            namespace: ns.to_string(),
            service_account: ObjectRef {
                name: name.to_string(),
                uid: sa_uid,
            },
            pod,
            secret,
            audiences: audiences.clone(),
            expiration_seconds: if extend {
                EXTENDED_EXPIRATION_SECONDS
            } else {
                expiration
            },
            warn_after_seconds: extend.then_some(expiration),
            now,
        })
        .map_err(|e| ApiError::internal(format!("signing the token: {e}")))?;
    let expires = Utc
        .timestamp_opt(now + expiration, 0)
        .single()
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    tracing::info!(
        namespace = ns,
        serviceaccount = name,
        expiration,
        bound = bound.is_some(),
        "issued a service account token"
    );

    let mut spec_out = json!({"audiences": audiences, "expirationSeconds": expiration});
    if let Some(b) = bound {
        spec_out["boundObjectRef"] = b.clone();
    }
    let mut metadata = request
        .get("metadata")
        .filter(|m| m.is_object())
        .cloned()
        .unwrap_or_else(|| json!({}));
    metadata["name"] = json!(name);
    metadata["namespace"] = json!(ns);
    if metadata.get("creationTimestamp").is_none() {
        metadata["creationTimestamp"] = Value::Null;
    }
    request["apiVersion"] = json!(API_VERSION);
    request["kind"] = json!(KIND);
    request["metadata"] = metadata;
    request["spec"] = spec_out;
    request["status"] = json!({"token": token, "expirationTimestamp": expires});
    let body = serde_json::to_vec(&request).unwrap_or_default();
    Ok((
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

fn check_type(request: &Value) -> ApiResult<()> {
    let field = |f: &str| {
        request
            .get(f)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    if let Some(kind) = field("kind") {
        if kind != KIND {
            return Err(ApiError::bad_request(format!(
                "the body names kind {kind:?}; expected {KIND}"
            )));
        }
    }
    if let Some(v) = field("apiVersion") {
        if v != API_VERSION {
            return Err(ApiError::bad_request(format!(
                "the body names apiVersion {v:?}; expected {API_VERSION}"
            )));
        }
    }
    Ok(())
}

/// 422 Invalid for a TokenRequest, worded as upstream.
fn invalid(name: &str, cause: Cause) -> ApiError {
    let message = format!(
        "{KIND}.{GROUP} {name:?} is invalid: {}: {}",
        cause.field, cause.message
    );
    let mut error = ApiError::new(422, "Invalid", message);
    error.details = Some(json!({"name": name, "group": GROUP, "kind": KIND, "causes": [cause]}));
    error
}

/// The pod or Secret a token is to be bound to: it must exist, match the uid given, and
/// (a pod) run as the ServiceAccount.
async fn bound_object(
    state: &ApiState,
    ns: &str,
    account: &str,
    bound: &Value,
) -> ApiResult<(Option<ObjectRef>, Option<ObjectRef>)> {
    let text = |f: &str| bound.get(f).and_then(Value::as_str).unwrap_or("");
    let (kind, api_version, name, uid) =
        (text("kind"), text("apiVersion"), text("name"), text("uid"));
    let plural = match (api_version, kind) {
        ("" | "v1", "Pod") => "pods",
        ("" | "v1", "Secret") => "secrets",
        _ => {
            // Printed as Go prints a GroupVersionKind: `group/version, Kind=kind`.
            let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
            return Err(ApiError::bad_request(format!(
                "cannot bind token to object of type {group}/{version}, Kind={kind}"
            )));
        }
    };
    if name.is_empty() {
        return Err(invalid(
            account,
            Cause::required("spec.boundObjectRef.name"),
        ));
    }
    let def = state
        .objects
        .registry
        .lookup("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not registered")))?;
    let obj = state.objects.get(&def, Some(ns), name).await?;
    if plural == "pods" {
        let runs_as = obj
            .pointer("/spec/serviceAccountName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if runs_as != account {
            return Err(ApiError::bad_request(format!(
                "cannot bind token for serviceaccount {account:?} to pod running with different serviceaccount name."
            )));
        }
    }
    let actual = obj
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !uid.is_empty() && uid != actual {
        return Err(ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {kind} {name:?}: the UID in the bound object reference ({uid}) does not match the UID in record. The object might have been deleted and then recreated"
            ),
        ));
    }
    let r = ObjectRef {
        name: name.to_string(),
        uid: actual.to_string(),
    };
    Ok(if plural == "pods" {
        (Some(r), None)
    } else {
        (None, Some(r))
    })
}

// --- Protobuf TokenRequest bodies -----------------------------------------------------

/// One field of a protobuf message.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    /// Fixed 32/64-bit values: no TokenRequest field has them; skipped.
    Fixed,
}

/// Reads the fields of one protobuf message in order.
struct Fields<'a> {
    buf: &'a [u8],
}

impl<'a> Fields<'a> {
    fn varint(&mut self) -> Result<u64, &'static str> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let (&byte, rest) = self.buf.split_first().ok_or("truncated varint")?;
            self.buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint too long")
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.buf.len() < n {
            return Err("truncated field");
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn next_field(&mut self) -> Result<Option<(u64, Field<'a>)>, &'static str> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "length overflow")?;
                Field::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Field::Fixed
            }
            _ => return Err("unsupported wire type"),
        };
        Ok(Some((key >> 3, value)))
    }
}

fn fields(buf: &[u8]) -> Fields<'_> {
    Fields { buf }
}

fn text(bytes: &[u8]) -> Result<String, &'static str> {
    String::from_utf8(bytes.to_vec()).map_err(|_| "a string field is not UTF-8")
}

/// A `k8s\0` + `runtime.Unknown` body holding an `authentication.k8s.io/v1` TokenRequest
/// (field numbers from upstream's `k8s.io/api/authentication/v1/generated.proto`), as
/// the JSON the handler reads.
fn decode_protobuf(body: &[u8]) -> Result<Value, &'static str> {
    let envelope = body
        .strip_prefix(super::protobuf::MAGIC)
        .ok_or("missing the k8s protobuf prefix")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    let mut it = fields(envelope);
    while let Some((n, f)) = it.next_field()? {
        match (n, f) {
            (1, Field::Bytes(type_meta)) => {
                let mut tm = fields(type_meta);
                while let Some((n, f)) = tm.next_field()? {
                    match (n, f) {
                        (1, Field::Bytes(b)) => api_version = text(b)?,
                        (2, Field::Bytes(b)) => kind = text(b)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(b)) => raw = b,
            (3 | 4, Field::Bytes(b)) if !b.is_empty() => {
                return Err("encoded or non-protobuf content is not supported")
            }
            _ => {}
        }
    }
    if kind != KIND || api_version != API_VERSION {
        return Err("the body is not an authentication.k8s.io/v1 TokenRequest");
    }
    let mut out = json!({"apiVersion": api_version, "kind": kind});
    let mut it = fields(raw);
    while let Some((n, f)) = it.next_field()? {
        match (n, f) {
            (1, Field::Bytes(meta)) => {
                let mut m = fields(meta);
                while let Some((n, f)) = m.next_field()? {
                    match (n, f) {
                        (1, Field::Bytes(b)) => out["metadata"]["name"] = json!(text(b)?),
                        (3, Field::Bytes(b)) => out["metadata"]["namespace"] = json!(text(b)?),
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(spec)) => out["spec"] = decode_spec(spec)?,
            _ => {}
        }
    }
    Ok(out)
}

fn decode_spec(buf: &[u8]) -> Result<Value, &'static str> {
    let mut spec = json!({});
    let mut audiences = Vec::new();
    let mut it = fields(buf);
    while let Some((n, f)) = it.next_field()? {
        match (n, f) {
            (1, Field::Bytes(b)) => audiences.push(Value::String(text(b)?)),
            (3, Field::Bytes(b)) => {
                let mut r = json!({});
                let mut rf = fields(b);
                while let Some((n, f)) = rf.next_field()? {
                    let key = match n {
                        1 => "kind",
                        2 => "apiVersion",
                        3 => "name",
                        4 => "uid",
                        _ => continue,
                    };
                    if let Field::Bytes(b) = f {
                        r[key] = json!(text(b)?);
                    }
                }
                spec["boundObjectRef"] = r;
            }
            // int64 on the wire as a two's complement varint.
            (4, Field::Varint(v)) => spec["expirationSeconds"] = json!(v as i64),
            _ => {}
        }
    }
    if !audiences.is_empty() {
        spec["audiences"] = Value::Array(audiences);
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn issuer() -> TokenIssuer {
        TokenIssuer::new(
            Arc::new(SigningKey::generate().expect("key")),
            DEFAULT_ISSUER,
        )
    }

    fn request(audiences: &[&str]) -> BoundTokenRequest {
        BoundTokenRequest {
            namespace: "team".into(),
            service_account: ObjectRef {
                name: "robot".into(),
                uid: "sa-uid".into(),
            },
            pod: Some(ObjectRef {
                name: "p".into(),
                uid: "pod-uid".into(),
            }),
            secret: None,
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            expiration_seconds: 3600,
            warn_after_seconds: None,
            now: NOW,
        }
    }

    #[test]
    fn bound_token_carries_kubernetes_claims() {
        let issuer = issuer();
        let (token, id) = issuer
            .bound_token(&request(&[DEFAULT_ISSUER]))
            .expect("sign");
        let claims = jwt::unverified_claims(&token).expect("claims");
        assert_eq!(claims["iss"], DEFAULT_ISSUER);
        assert_eq!(claims["sub"], "system:serviceaccount:team:robot");
        assert_eq!(claims["aud"], json!([DEFAULT_ISSUER]));
        assert_eq!(claims["exp"], NOW + 3600);
        assert_eq!(claims["iat"], NOW);
        assert_eq!(claims["nbf"], NOW);
        assert_eq!(claims["jti"], id.as_str());
        assert_eq!(
            claims["kubernetes.io"],
            json!({"namespace": "team", "serviceaccount": {"name": "robot", "uid": "sa-uid"},
                   "pod": {"name": "p", "uid": "pod-uid"}})
        );
        let parsed = issuer
            .validate(&token, NOW + 10)
            .expect("valid")
            .expect("ours");
        assert_eq!(parsed.namespace, "team");
        assert_eq!(parsed.service_account.uid, "sa-uid");
        assert_eq!(parsed.pod.map(|p| p.uid).as_deref(), Some("pod-uid"));
        assert_eq!(parsed.id, Some(id));
    }

    #[test]
    fn expiry_and_not_before_are_enforced_with_leeway() {
        let issuer = issuer();
        let (token, _) = issuer.bound_token(&request(&[])).expect("sign");
        assert!(issuer.validate(&token, NOW + 3600 + LEEWAY_SECONDS).is_ok());
        assert!(matches!(
            issuer.validate(&token, NOW + 3600 + LEEWAY_SECONDS + 1),
            Err(TokenError::Expired)
        ));
        assert!(issuer.validate(&token, NOW - LEEWAY_SECONDS).is_ok());
        assert!(matches!(
            issuer.validate(&token, NOW - LEEWAY_SECONDS - 1),
            Err(TokenError::NotYetValid)
        ));
    }

    #[test]
    fn audience_must_include_the_api() {
        let issuer = issuer();
        let (token, _) = issuer.bound_token(&request(&["vault"])).expect("sign");
        assert!(matches!(
            issuer.validate(&token, NOW),
            Err(TokenError::WrongAudience { .. })
        ));
        let (token, _) = issuer
            .bound_token(&request(&["vault", DEFAULT_ISSUER]))
            .expect("sign");
        assert!(issuer.validate(&token, NOW).is_ok());
    }

    #[test]
    fn tokens_of_other_issuers_or_keys() {
        let ours = issuer();
        // Another key with our issuer name: ours to judge, and refused.
        let (token, _) = issuer().bound_token(&request(&[])).expect("sign");
        assert!(matches!(
            ours.validate(&token, NOW),
            Err(TokenError::Jwt(JwtError::BadSignature))
        ));
        // Another issuer: not ours.
        let other = TokenIssuer::new(
            Arc::new(SigningKey::generate().expect("key")),
            "https://elsewhere",
        );
        let (token, _) = other.bound_token(&request(&[])).expect("sign");
        assert!(matches!(ours.validate(&token, NOW), Ok(None)));
        // Not a JWT at all.
        assert!(matches!(ours.validate("static-token", NOW), Ok(None)));
    }

    #[test]
    fn legacy_token_round_trips_without_expiry() {
        let issuer = issuer();
        let token = issuer
            .legacy_token("team", "robot", "sa-uid", "robot-token")
            .expect("sign");
        let claims = jwt::unverified_claims(&token).expect("claims");
        assert_eq!(claims["iss"], LEGACY_ISSUER);
        assert_eq!(
            claims["kubernetes.io/serviceaccount/secret.name"],
            "robot-token"
        );
        assert!(claims.get("exp").is_none());
        let parsed = issuer
            .validate(&token, NOW + 10 * EXTENDED_EXPIRATION_SECONDS)
            .expect("valid")
            .expect("ours");
        assert_eq!(parsed.legacy_secret.as_deref(), Some("robot-token"));
        assert_eq!(
            parsed.service_account,
            ObjectRef {
                name: "robot".into(),
                uid: "sa-uid".into()
            }
        );
    }

    #[test]
    fn warn_after_is_recorded_for_extended_tokens() {
        let issuer = issuer();
        let mut req = request(&[]);
        req.expiration_seconds = EXTENDED_EXPIRATION_SECONDS;
        req.warn_after_seconds = Some(WARN_ONLY_EXPIRATION_SECONDS);
        let (token, _) = issuer.bound_token(&req).expect("sign");
        let parsed = issuer
            .validate(&token, NOW + 7200)
            .expect("valid")
            .expect("ours");
        assert_eq!(parsed.warn_after, Some(NOW + WARN_ONLY_EXPIRATION_SECONDS));
    }

    #[test]
    fn decodes_kubectl_protobuf_token_request() {
        // What `kubectl create token default --duration 20m --audience foo
        // --bound-object-kind Pod --bound-object-name p1 --bound-object-uid abc` sends.
        let body: &[u8] = &[
            0x6b, 0x38, 0x73, 0x00, 0x0a, 0x28, 0x0a, 0x18, 0x61, 0x75, 0x74, 0x68, 0x65, 0x6e,
            0x74, 0x69, 0x63, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x2e, 0x6b, 0x38, 0x73, 0x2e, 0x69,
            0x6f, 0x2f, 0x76, 0x31, 0x12, 0x0c, 0x54, 0x6f, 0x6b, 0x65, 0x6e, 0x52, 0x65, 0x71,
            0x75, 0x65, 0x73, 0x74, 0x12, 0x36, 0x0a, 0x10, 0x0a, 0x00, 0x12, 0x00, 0x1a, 0x00,
            0x22, 0x00, 0x2a, 0x00, 0x32, 0x00, 0x38, 0x00, 0x42, 0x00, 0x12, 0x1c, 0x0a, 0x03,
            0x66, 0x6f, 0x6f, 0x1a, 0x12, 0x0a, 0x03, 0x50, 0x6f, 0x64, 0x12, 0x02, 0x76, 0x31,
            0x1a, 0x02, 0x70, 0x31, 0x22, 0x03, 0x61, 0x62, 0x63, 0x20, 0xb0, 0x09, 0x1a, 0x04,
            0x0a, 0x00, 0x12, 0x00, 0x1a, 0x00, 0x22, 0x00,
        ];
        let decoded = decode_protobuf(body).expect("decodes");
        assert_eq!(decoded["kind"], "TokenRequest");
        assert_eq!(decoded["metadata"]["name"], "");
        assert_eq!(
            decoded["spec"],
            json!({
                "audiences": ["foo"],
                "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p1", "uid": "abc"},
                "expirationSeconds": 1200,
            })
        );
        assert!(decode_protobuf(b"k8s\0\x0a").is_err());
        assert!(decode_protobuf(b"{}").is_err());
    }

    #[test]
    fn invalid_expiration_names_the_field() {
        let e = invalid(
            "default",
            Cause::invalid_int(
                "spec.expirationSeconds",
                60,
                "may not specify a duration less than 10 minutes",
            ),
        );
        assert_eq!(e.code, 422);
        assert_eq!(
            e.message,
            "TokenRequest.authentication.k8s.io \"default\" is invalid: spec.expirationSeconds: Invalid value: 60: may not specify a duration less than 10 minutes"
        );
    }
}
