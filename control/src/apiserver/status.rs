//! API errors as Kubernetes `Status` objects.
//!
//! Every failure the API answers with is an [`ApiError`], rendered as a `meta/v1 Status`
//! with the reason and code kubectl and client libraries switch on.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::registry::{Cause, ResourceDef};
use crate::storage;

/// An API error: a Kubernetes Status with a failure reason.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    /// `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, `BadRequest`, …
    pub reason: &'static str,
    pub message: String,
    /// The Status `details` (name, group, kind, causes), if any.
    pub details: Option<Value>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    fn resource_details(def: &ResourceDef, name: &str) -> Value {
        let mut d = json!({"name": name, "kind": def.plural});
        if !def.group.is_empty() {
            d["group"] = json!(def.group);
        }
        d
    }

    /// 429: the server is busy; the client should retry after `retry_after` seconds.
    pub fn too_many_requests(retry_after: u32) -> Self {
        ApiError::new(
            429,
            "TooManyRequests",
            "Too many requests, please try again later.",
        )
        .with_details(json!({"retryAfterSeconds": retry_after}))
    }

    pub fn not_found(def: &ResourceDef, name: &str) -> Self {
        ApiError::new(
            404,
            "NotFound",
            format!("{} {:?} not found", def.group_resource(), name),
        )
        .with_details(Self::resource_details(def, name))
    }

    /// NotFound for a resource known only by its group-qualified name (e.g. a namespace
    /// that must exist before objects are created in it).
    pub fn not_found_named(group_resource: &str, name: &str) -> Self {
        ApiError::new(
            404,
            "NotFound",
            format!("{group_resource} {name:?} not found"),
        )
        .with_details(json!({"name": name, "kind": group_resource}))
    }

    pub fn already_exists(def: &ResourceDef, name: &str) -> Self {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} {:?} already exists", def.group_resource(), name),
        )
        .with_details(Self::resource_details(def, name))
    }

    pub fn conflict(def: &ResourceDef, name: &str) -> Self {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {:?}: the object has been modified; please apply your changes to the latest version and try again",
                def.group_resource(),
                name
            ),
        )
        .with_details(Self::resource_details(def, name))
    }

    pub fn conflict_msg(def: &ResourceDef, name: &str, why: &str) -> Self {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {:?}: {}",
                def.group_resource(),
                name,
                why
            ),
        )
        .with_details(Self::resource_details(def, name))
    }

    /// 422 Invalid, worded as Kubernetes does: `Pod "x" is invalid: spec.containers[0].image: Required value`.
    pub fn invalid(def: &ResourceDef, name: &str, causes: Vec<Cause>) -> Self {
        let parts: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let summary = if parts.len() == 1 {
            parts[0].clone()
        } else {
            format!("[{}]", parts.join(", "))
        };
        let mut details = json!({"name": name, "kind": def.kind, "causes": causes});
        if !def.group.is_empty() {
            details["group"] = json!(def.group);
        }
        ApiError::new(
            422,
            "Invalid",
            format!("{} {:?} is invalid: {}", def.kind, name, summary),
        )
        .with_details(details)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn unauthorized() -> Self {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(403, "Forbidden", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        ApiError::new(405, "MethodNotAllowed", message)
    }

    pub fn not_acceptable(message: impl Into<String>) -> Self {
        ApiError::new(406, "NotAcceptable", message)
    }

    pub fn expired(message: impl Into<String>) -> Self {
        ApiError::new(410, "Expired", message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        ApiError::new(413, "RequestEntityTooLarge", message)
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/merge-patch+json, application/json-patch+json, application/strategic-merge-patch+json (got {content_type:?})"),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(503, "ServiceUnavailable", message)
    }

    pub fn not_found_path() -> Self {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// The Status object.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }

    /// Maps a storage error on `def`/`name` to the Status a client expects.
    pub fn from_storage(err: storage::Error, def: &ResourceDef, name: &str) -> Self {
        match err {
            storage::Error::NotFound { .. } => ApiError::not_found(def, name),
            storage::Error::AlreadyExists { .. } => ApiError::already_exists(def, name),
            storage::Error::Conflict { .. } => ApiError::conflict(def, name),
            other => ApiError::from(other),
        }
    }
}

impl From<storage::Error> for ApiError {
    fn from(err: storage::Error) -> Self {
        match err {
            storage::Error::NotFound { key } => {
                ApiError::new(404, "NotFound", format!("{key} not found"))
            }
            storage::Error::AlreadyExists { key } => {
                ApiError::new(409, "AlreadyExists", format!("{key} already exists"))
            }
            storage::Error::Conflict { key, .. } => ApiError::new(
                409,
                "Conflict",
                format!("Operation cannot be fulfilled on {key}: the object has been modified; please apply your changes to the latest version and try again"),
            ),
            storage::Error::Compacted {
                requested,
                compacted,
            } => ApiError::expired(format!(
                "too old resource version: {requested} ({compacted})"
            )),
            storage::Error::TooLarge { size, limit, .. } => ApiError::too_large(format!(
                "Request entity too large: the object is {size} bytes, more than the storage limit of {limit} bytes"
            )),
            storage::Error::Unavailable(msg) => {
                ApiError::unavailable(format!("storage is unavailable: {msg}"))
            }
            storage::Error::Internal(msg) => ApiError::internal(msg),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.to_status()).unwrap_or_default();
        (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}
