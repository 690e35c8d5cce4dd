//! HTTP handlers for everything under `/api` and `/apis`: they read the request (path,
//! query, body, Accept) and call the generic object layer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::discovery;
use super::objects::{
    with_resource_version, ApplyOptions, DeleteOptions, ListParams, Ownership, UpdateTarget, Write,
};
use super::output::{self, Format};
use super::patch::{self, PatchType};
use super::protobuf::{self, ProtobufError};
use super::request::{parse_path, Query, ResourcePath, Target};
use super::status::{ApiError, ApiResult};
use super::watch::{self, WatchRequest};
use super::ApiState;
use crate::metrics;
use crate::registry::selectors::{FieldSelector, LabelSelector};
use crate::registry::{Projection, ResourceDef, Subresource};

/// Largest request body accepted, as in Kubernetes (3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

fn json_response(code: StatusCode, value: &Value) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The entry point for every API path.
pub async fn api(State(state): State<Arc<ApiState>>, req: Request) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let target = parse_path(req.uri().path());
    let (verb, resource) = describe(&method, &target, req.uri().query());
    // The seat is held until the response is built; a long-running request holds none.
    let seat = match req.extensions().get::<super::authn::UserInfo>() {
        Some(user) if !is_long_running(&verb, &target) => match state.flow.admit(user).await {
            Ok(seat) => Some(seat),
            Err(_) => {
                let response = too_many_requests();
                metrics::observe_request(
                    &verb,
                    &resource,
                    response.status().as_u16(),
                    started.elapsed().as_secs_f64(),
                );
                return response;
            }
        },
        _ => None,
    };
    let response = match target {
        None => ApiError::not_found_path().into_response(),
        Some(t) => match dispatch(state, t, req).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        },
    };
    drop(seat);
    metrics::observe_request(
        &verb,
        &resource,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// Requests that stream for as long as the client likes, which hold no seat (as in
/// Kubernetes): watches, and logs, exec, attach, port-forward and proxy.
fn is_long_running(verb: &str, target: &Option<Target>) -> bool {
    if verb == "WATCH" {
        return true;
    }
    let Some(Target::Resource(rp)) = target else {
        return false;
    };
    matches!(
        rp.subresource.as_deref(),
        Some("log" | "exec" | "attach" | "portforward" | "proxy")
    )
}

/// 429 for a request that did not get a seat; kubectl and client-go retry after the
/// `Retry-After` seconds.
fn too_many_requests() -> Response {
    let seconds = super::flowcontrol::RETRY_AFTER_SECONDS;
    let mut response = ApiError::too_many_requests(seconds).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
    response
}

/// (verb, resource) labels for metrics, as kube-apiserver reports them: the HTTP method,
/// except that reads are GET, LIST or WATCH.
fn describe(method: &Method, target: &Option<Target>, query: Option<&str>) -> (String, String) {
    let Some(Target::Resource(rp)) = target else {
        return (method.as_str().to_string(), String::new());
    };
    let verb = match (method, rp.name.is_some()) {
        (&Method::GET, _) if Query::parse(query).flag("watch") => "WATCH".to_string(),
        (&Method::GET, false) => "LIST".to_string(),
        (m, _) => m.as_str().to_string(),
    };
    let resource = match &rp.subresource {
        Some(s) => format!("{}/{}", rp.resource, s),
        None => rp.resource.clone(),
    };
    (verb, resource)
}

async fn dispatch(state: Arc<ApiState>, target: Target, req: Request) -> ApiResult<Response> {
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    match target {
        Target::CoreVersions => {
            if output::wants_aggregated_discovery(accept.as_deref()) {
                return Ok(aggregated(discovery::aggregated(
                    &state.objects.registry,
                    true,
                )));
            }
            Ok(json_response(
                StatusCode::OK,
                &discovery::core_versions(&state.server_address),
            ))
        }
        Target::Groups => {
            if output::wants_aggregated_discovery(accept.as_deref()) {
                return Ok(aggregated(discovery::aggregated(
                    &state.objects.registry,
                    false,
                )));
            }
            Ok(json_response(
                StatusCode::OK,
                &discovery::groups(&state.objects.registry),
            ))
        }
        Target::Group(g) => discovery::group(&state.objects.registry, &g)
            .map(|v| json_response(StatusCode::OK, &v))
            .ok_or_else(ApiError::not_found_path),
        Target::Resources { group, version } => {
            discovery::resource_list(&state.objects.registry, &group, &version)
                .map(|v| json_response(StatusCode::OK, &v))
                .ok_or_else(ApiError::not_found_path)
        }
        Target::Resource(rp) => resource(state, rp, req, accept).await,
    }
}

fn aggregated(value: Value) -> Response {
    let body = serde_json::to_vec(&value).unwrap_or_default();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, discovery::AGGREGATED_CONTENT_TYPE)],
        body,
    )
        .into_response()
}

async fn read_body(req: Request) -> ApiResult<(HeaderMap, Bytes)> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::too_large("Request entity too large: limit is 3145728"))?;
    Ok((parts.headers, bytes))
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Parses a JSON body; clients such as the Python one send no Content-Type at all, so
/// anything that is not a known non-JSON type is read as JSON.
fn parse_json_body(headers: &HeaderMap, body: &Bytes) -> ApiResult<Value> {
    let ct = content_type(headers);
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence == protobuf::MEDIA_TYPE {
        // kubectl's imperative `create` commands send protobuf and never retry as JSON.
        return protobuf::decode(body).map_err(|e| match e {
            ProtobufError::UnsupportedKind { .. }
            | ProtobufError::UnsupportedContentEncoding(_)
            | ProtobufError::UnsupportedContentType(_) => {
                ApiError::new(415, "UnsupportedMediaType", e.to_string())
            }
            other => {
                ApiError::bad_request(format!("the protobuf body could not be decoded: {other}"))
            }
        });
    }
    if essence == "application/yaml" {
        return Err(ApiError::unsupported_media_type(&ct));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body of the request could not be decoded as JSON: {e}"
        ))
    })
}

fn list_params(q: &Query) -> ApiResult<ListParams> {
    let labels = q
        .non_empty("labelSelector")
        .map(LabelSelector::parse)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
    let fields = q
        .non_empty("fieldSelector")
        .map(FieldSelector::parse)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let limit = q
        .non_empty("limit")
        .map(|l| l.parse::<i64>())
        .transpose()
        .map_err(|_| ApiError::bad_request("limit must be an integer"))?;
    Ok(ListParams {
        labels,
        fields,
        limit,
        continue_token: q.non_empty("continue").map(String::from),
        resource_version: q.get("resourceVersion").map(String::from),
        exact: q.get("resourceVersionMatch") == Some("Exact"),
    })
}

/// Rejects field selectors on fields the kind does not index, as Kubernetes does.
fn check_fields(def: &ResourceDef, params: &ListParams) -> ApiResult<()> {
    let Some(fs) = &params.fields else {
        return Ok(());
    };
    let probe = json!({"metadata": {}});
    for f in fs.fields() {
        let generic = f == "metadata.name" || (f == "metadata.namespace" && def.namespaced);
        if !generic && def.strategy.field_value(&probe, f).is_none() && !supports_field(def, f) {
            return Err(ApiError::bad_request(format!(
                "field label not supported: {f}"
            )));
        }
    }
    Ok(())
}

/// A field is supported when the kind answers for it on some object; probing with an
/// empty object is not enough for kinds that answer `None` for absent values, so ask
/// with a skeleton that has every common section.
fn supports_field(def: &ResourceDef, field: &str) -> bool {
    let skeleton = json!({
        "metadata": {"name": "", "namespace": ""},
        "spec": {}, "status": {}, "involvedObject": {}, "source": {}, "type": "",
    });
    def.strategy.field_value(&skeleton, field).is_some()
}

/// How the request wants unknown fields handled (`?fieldValidation=`); Warn when unset,
/// as in Kubernetes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

fn field_validation(q: &Query) -> ApiResult<FieldValidation> {
    match q.get("fieldValidation") {
        None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
        Some("Ignore") => Ok(FieldValidation::Ignore),
        Some("Strict") => Ok(FieldValidation::Strict),
        Some(other) => Err(ApiError::bad_request(format!(
            "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
        ))),
    }
}

/// Reports fields `obj` has that its kind does not: an error under Strict, warnings
/// under Warn. Decode errors are left to the object layer, which words them.
fn check_unknown_fields(
    def: &ResourceDef,
    obj: &Value,
    mode: FieldValidation,
    warnings: &mut Vec<String>,
) -> ApiResult<()> {
    if mode == FieldValidation::Ignore {
        return Ok(());
    }
    let Ok(known) = def.strategy.decode(obj) else {
        return Ok(());
    };
    let unknown: Vec<String> = crate::registry::unknown_fields(obj, &known)
        .into_iter()
        .map(|f| format!("unknown field {f:?}"))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    if mode == FieldValidation::Strict {
        return Err(ApiError::bad_request(format!(
            "{} in version {:?} cannot be handled as a {}: strict decoding error: {}",
            def.kind,
            def.version,
            def.kind,
            unknown.join(", ")
        )));
    }
    for w in unknown {
        if !warnings.contains(&w) {
            warnings.push(w);
        }
    }
    Ok(())
}

/// Reports keys a JSON body repeats: an error under Strict, warnings under Warn.
fn check_duplicate_fields(
    def: &ResourceDef,
    body: &[u8],
    mode: FieldValidation,
    warnings: &mut Vec<String>,
) -> ApiResult<()> {
    if mode == FieldValidation::Ignore {
        return Ok(());
    }
    let dups: Vec<String> = super::duplicates::duplicate_fields(body)
        .into_iter()
        .map(|f| format!("duplicate field {f:?}"))
        .collect();
    if dups.is_empty() {
        return Ok(());
    }
    if mode == FieldValidation::Strict {
        return Err(ApiError::bad_request(format!(
            "{} in version {:?} cannot be handled as a {}: strict decoding error: {}",
            def.kind,
            def.version,
            def.kind,
            dups.join(", ")
        )));
    }
    warnings.extend(dups);
    Ok(())
}

/// A JSON response carrying `Warning` headers (kubectl prints them as `Warning: …`).
fn with_warnings(mut response: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - {:?}", w);
        if let Ok(v) = header::HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
    response
}

/// The field manager a write is recorded for: `?fieldManager=`, else the client's
/// User-Agent up to its first `/`, as Kubernetes derives it.
fn field_manager(q: &Query, headers: &HeaderMap) -> String {
    if let Some(m) = q.non_empty("fieldManager") {
        return m.chars().take(128).collect();
    }
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown")
        .chars()
        .take(128)
        .collect()
}

fn dry_run(q: &Query) -> ApiResult<bool> {
    match q.get("dryRun") {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "unsupported dry run option {other:?}: supported values: \"All\""
        ))),
    }
}

async fn resource(
    state: Arc<ApiState>,
    rp: ResourcePath,
    req: Request,
    accept: Option<String>,
) -> ApiResult<Response> {
    let def = state
        .objects
        .registry
        .lookup(&rp.group, &rp.version, &rp.resource)
        .ok_or_else(ApiError::not_found_path)?;
    if def.namespaced != rp.namespace.is_some() && !(def.namespaced && rp.name.is_none()) {
        return Err(ApiError::not_found_path());
    }
    if !def.namespaced && rp.namespace.is_some() {
        return Err(ApiError::not_found_path());
    }
    let q = Query::parse(req.uri().query());
    let format = output::negotiate(accept.as_deref(), &q)?;
    let ns = rp.namespace.as_deref();
    let objects = state.objects.clone();
    let method = req.method().clone();
    let manager = field_manager(&q, req.headers());

    if let Some(sub) = rp.subresource.as_deref() {
        let name = rp.name.as_deref().unwrap_or("");
        let sub = Subresource::parse(sub)
            .filter(|s| def.has(*s))
            .ok_or_else(ApiError::not_found_path)?;
        return subresource(state, &def, ns, name, sub, method, req, &q).await;
    }

    match (method, rp.name.as_deref()) {
        (Method::GET, None) => {
            let params = list_params(&q)?;
            check_fields(&def, &params)?;
            if q.flag("watch") {
                let timeout = q
                    .non_empty("timeoutSeconds")
                    .and_then(|t| t.parse::<u64>().ok())
                    .map(Duration::from_secs);
                let stream = watch::start(
                    objects,
                    WatchRequest {
                        def: def.clone(),
                        namespace: rp.namespace.clone(),
                        params,
                        format,
                        bookmarks: q.flag("allowWatchBookmarks"),
                        timeout,
                        bookmark_interval: state.bookmark_interval,
                    },
                )
                .await?;
                return Ok((
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    Body::from_stream(stream),
                )
                    .into_response());
            }
            if format == Format::Json && params.labels.is_none() && params.fields.is_none() {
                let (items, meta) = objects.list_raw(&def, ns, &params).await?;
                return Ok(raw_list_response(&def, items, &meta));
            }
            match format {
                Format::Json => {
                    // Selectors need the decoded objects, the response only their text.
                    let (items, meta) = objects
                        .list_stored(&def, ns, &params, &Projection::All, |kv, o| {
                            with_resource_version(&kv.value, kv.mod_revision)
                                .unwrap_or_else(|| serde_json::to_vec(o).unwrap_or_default())
                        })
                        .await?;
                    Ok(raw_list_response(&def, items.join(&b','), &meta))
                }
                Format::Table(include) => {
                    let now = chrono::Utc::now();
                    // Rows are rendered to text as they are made: a decoded row of a
                    // 10,000-pod Table holds several times its text in memory.
                    let fields = def.strategy.cell_fields();
                    let (rows, meta) = objects
                        .list_stored(&def, ns, &params, fields, |kv, o| {
                            output::table_row_text(&def, kv, o, include, now)
                        })
                        .await?;
                    Ok(joined_response(
                        output::table_of_rows(&def, Vec::new(), meta),
                        "rows",
                        rows.join(&b','),
                    ))
                }
                Format::PartialMetadata => {
                    let (items, meta) = objects
                        .list_stored(&def, ns, &params, &output::METADATA_FIELDS, |kv, o| {
                            output::partial_metadata_text(kv, o)
                        })
                        .await?;
                    Ok(joined_response(
                        output::partial_metadata_list(Vec::new(), meta),
                        "items",
                        items.join(&b','),
                    ))
                }
            }
        }
        (Method::GET, Some(name)) => {
            let obj = objects.get(&def, ns, name).await?;
            Ok(json_response(
                StatusCode::OK,
                &output::object(&def, obj, format),
            ))
        }
        (Method::POST, None) => {
            let dry = dry_run(&q)?;
            let validation = field_validation(&q)?;
            let (headers, body) = read_body(req).await?;
            let obj = parse_json_body(&headers, &body)?;
            let mut warnings = Vec::new();
            if !content_type(&headers).starts_with(protobuf::MEDIA_TYPE) {
                check_duplicate_fields(&def, &body, validation, &mut warnings)?;
            }
            check_unknown_fields(&def, &obj, validation, &mut warnings)?;
            let created = objects
                .create(&def, ns, obj, dry, Ownership::Update(&manager))
                .await?;
            let response =
                json_response(StatusCode::CREATED, &output::object(&def, created, format));
            Ok(with_warnings(response, &warnings))
        }
        (Method::PUT, Some(name)) => {
            let dry = dry_run(&q)?;
            let validation = field_validation(&q)?;
            let (headers, body) = read_body(req).await?;
            let obj = parse_json_body(&headers, &body)?;
            let mut warnings = Vec::new();
            if !content_type(&headers).starts_with(protobuf::MEDIA_TYPE) {
                check_duplicate_fields(&def, &body, validation, &mut warnings)?;
            }
            check_unknown_fields(&def, &obj, validation, &mut warnings)?;
            let updated = objects
                .update(
                    &def,
                    ns,
                    name,
                    obj,
                    Write {
                        target: UpdateTarget::Main,
                        owner: Ownership::Update(&manager),
                        dry_run: dry,
                    },
                )
                .await?;
            let response = json_response(StatusCode::OK, &output::object(&def, updated, format));
            Ok(with_warnings(response, &warnings))
        }
        (Method::PATCH, Some(name)) => {
            let dry = dry_run(&q)?;
            let validation = field_validation(&q)?;
            let (headers, body) = read_body(req).await?;
            if content_type(&headers).starts_with(APPLY_PATCH) {
                return server_side_apply(
                    &objects,
                    &def,
                    ns,
                    name,
                    &body,
                    &q,
                    dry,
                    validation,
                    format,
                    UpdateTarget::Main,
                )
                .await;
            }
            let mut warnings = Vec::new();
            let patched = patch_object(
                &objects,
                &def,
                ns,
                name,
                &headers,
                &body,
                UpdateTarget::Main,
                dry,
                validation,
                &mut warnings,
                &manager,
            )
            .await?;
            let response = json_response(StatusCode::OK, &output::object(&def, patched, format));
            Ok(with_warnings(response, &warnings))
        }
        (Method::DELETE, Some(name)) => {
            let dry = dry_run(&q)?;
            let (headers, body) = read_body(req).await?;
            let opts = delete_options(&headers, &body, &q)?;
            // kubectl sends dry run in the DeleteOptions body, not the query.
            let dry = dry
                || opts
                    .dry_run
                    .as_ref()
                    .is_some_and(|d| d.iter().any(|v| v == "All"));
            let (obj, gone) = objects.delete(&def, ns, name, &opts, dry).await?;
            Ok(delete_response(&def, obj, gone, format))
        }
        (Method::DELETE, None) => {
            let dry = dry_run(&q)?;
            let params = list_params(&q)?;
            check_fields(&def, &params)?;
            let (headers, body) = read_body(req).await?;
            let opts = delete_options(&headers, &body, &q)?;
            // kubectl sends dry run in the DeleteOptions body, not the query.
            let dry = dry
                || opts
                    .dry_run
                    .as_ref()
                    .is_some_and(|d| d.iter().any(|v| v == "All"));
            let (items, meta) = objects
                .delete_collection(&def, ns, &params, &opts, dry)
                .await?;
            Ok(json_response(
                StatusCode::OK,
                &output::list(&def, items, meta, format),
            ))
        }
        (m, _) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({m})"
        ))),
    }
}

/// The Content-Type of a server-side apply (its body is YAML or JSON).
const APPLY_PATCH: &str = "application/apply-patch+yaml";

/// `PATCH` with `application/apply-patch+yaml`: server-side apply.
#[allow(clippy::too_many_arguments)]
async fn server_side_apply(
    objects: &super::objects::Objects,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    body: &Bytes,
    q: &Query,
    dry: bool,
    validation: FieldValidation,
    format: Format,
    target: UpdateTarget,
) -> ApiResult<Response> {
    let Some(manager) = q.non_empty("fieldManager") else {
        return Err(ApiError::new(
            422,
            "Invalid",
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        ));
    };
    let force = match q.get("force") {
        None | Some("") | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "force: Invalid value: {other:?}: must be true or false"
            )))
        }
    };
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("the apply configuration is not UTF-8"))?;
    let config: Value = serde_saphyr::from_str(text)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    if !config.is_object() {
        return Err(ApiError::bad_request(
            "the apply configuration must be an object",
        ));
    }
    let mut warnings = Vec::new();
    check_unknown_fields(def, &config, validation, &mut warnings)?;
    let (obj, created) = objects
        .apply(
            def,
            ns,
            name,
            config,
            ApplyOptions {
                manager,
                force,
                target,
                dry_run: dry,
            },
        )
        .await?;
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(with_warnings(
        json_response(code, &output::object(def, obj, format)),
        &warnings,
    ))
}

/// A JSON list assembled from items that are already JSON text.
fn raw_list_response(def: &ResourceDef, joined_items: Vec<u8>, meta: &Value) -> Response {
    let head = json!({"kind": def.list_kind(), "apiVersion": def.api_version(), "metadata": meta});
    joined_response(head, "items", joined_items)
}

/// `envelope` (a JSON object) with `field` set to the array whose comma-joined elements
/// are `joined`; the elements go out as their own chunk rather than being copied into
/// one more buffer.
fn joined_response(mut envelope: Value, field: &str, joined: Vec<u8>) -> Response {
    if let Some(m) = envelope.as_object_mut() {
        m.remove(field);
    }
    let mut head = serde_json::to_vec(&envelope).unwrap_or_default();
    // `head` is `{...}`: reopen it to append the array.
    head.pop();
    if head.len() > 1 {
        head.push(b',');
    }
    head.extend_from_slice(format!("{field:?}:[").as_bytes());
    let chunks: [Result<Bytes, std::convert::Infallible>; 3] = [
        Ok(Bytes::from(head)),
        Ok(Bytes::from(joined)),
        Ok(Bytes::from_static(b"]}")),
    ];
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(futures::stream::iter(chunks)),
    )
        .into_response()
}

/// Kubernetes answers an immediate delete of most kinds with a Success Status, of pods
/// with the pod; a pending (finalizers, grace period) delete with the object.
fn delete_response(def: &ResourceDef, obj: Value, gone: bool, format: Format) -> Response {
    if gone && !(def.group.is_empty() && def.plural == "pods") {
        let mut details = json!({
            "name": obj.pointer("/metadata/name").cloned().unwrap_or(Value::Null),
            "kind": def.plural,
            "uid": obj.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
        });
        if !def.group.is_empty() {
            details["group"] = json!(def.group);
        }
        let status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": details,
        });
        return json_response(StatusCode::OK, &status);
    }
    json_response(StatusCode::OK, &output::object(def, obj, format))
}

fn delete_options(headers: &HeaderMap, body: &Bytes, q: &Query) -> ApiResult<DeleteOptions> {
    let mut opts = if body.iter().all(u8::is_ascii_whitespace) {
        DeleteOptions::default()
    } else {
        let v = parse_json_body(headers, body)?;
        serde_json::from_value::<DeleteOptions>(v)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    if let Some(g) = q.non_empty("gracePeriodSeconds") {
        opts.grace_period_seconds = Some(
            g.parse()
                .map_err(|_| ApiError::bad_request("gracePeriodSeconds must be an integer"))?,
        );
    }
    if let Some(p) = q.non_empty("propagationPolicy") {
        opts.propagation_policy = Some(p.to_string());
    }
    if let Some(p) = &opts.propagation_policy {
        if !matches!(p.as_str(), "Orphan" | "Background" | "Foreground") {
            return Err(ApiError::bad_request(format!(
                "propagationPolicy: Unsupported value: {p:?}: supported values: \"Background\", \"Foreground\", \"Orphan\""
            )));
        }
    }
    Ok(opts)
}

#[allow(clippy::too_many_arguments)]
async fn patch_object(
    objects: &super::objects::Objects,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
    target: UpdateTarget,
    dry: bool,
    validation: FieldValidation,
    warnings: &mut Vec<String>,
    manager: &str,
) -> ApiResult<Value> {
    let ct = content_type(headers);
    let kind =
        PatchType::from_content_type(&ct).ok_or_else(|| ApiError::unsupported_media_type(&ct))?;
    let patch: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the patch could not be decoded as JSON: {e}"))
    })?;
    check_duplicate_fields(def, body, validation, warnings)?;
    objects
        .guaranteed_update(
            def,
            ns,
            name,
            Write {
                target,
                owner: Ownership::Update(manager),
                dry_run: dry,
            },
            |old| {
                let mut new = patch::apply(
                    old,
                    &patch,
                    kind,
                    crate::registry::schema::root(def.group, def.version, def.kind),
                )?;
                check_unknown_fields(def, &new, validation, warnings)?;
                // A patch that carries a resourceVersion is a precondition; one without is
                // applied to whatever is current.
                let want = new
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .map(String::from);
                let have = old
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str);
                if let Some(w) = want {
                    if Some(w.as_str()) != have {
                        return Err(ApiError::conflict(def, name));
                    }
                }
                if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
                Ok(new)
            },
        )
        .await
}

#[allow(clippy::too_many_arguments)]
async fn subresource(
    state: Arc<ApiState>,
    def: &Arc<ResourceDef>,
    ns: Option<&str>,
    name: &str,
    sub: Subresource,
    method: Method,
    req: Request,
    q: &Query,
) -> ApiResult<Response> {
    let objects = &state.objects;
    let dry = dry_run(q)?;
    let manager = field_manager(q, req.headers());
    match (sub, method) {
        (Subresource::Status, Method::GET) => {
            let obj = objects.get(def, ns, name).await?;
            Ok(json_response(StatusCode::OK, &obj))
        }
        (Subresource::Status, Method::PUT) | (Subresource::Finalize, Method::PUT) => {
            let target = if sub == Subresource::Status {
                UpdateTarget::Status
            } else {
                UpdateTarget::Finalize
            };
            let (headers, body) = read_body(req).await?;
            let obj = parse_json_body(&headers, &body)?;
            let updated = objects
                .update(
                    def,
                    ns,
                    name,
                    obj,
                    Write {
                        target,
                        owner: Ownership::Update(&manager),
                        dry_run: dry,
                    },
                )
                .await?;
            Ok(json_response(StatusCode::OK, &updated))
        }
        (Subresource::Status, Method::PATCH) => {
            let validation = field_validation(q)?;
            let (headers, body) = read_body(req).await?;
            if content_type(&headers).starts_with(APPLY_PATCH) {
                return server_side_apply(
                    objects,
                    def,
                    ns,
                    name,
                    &body,
                    q,
                    dry,
                    validation,
                    Format::Json,
                    UpdateTarget::Status,
                )
                .await;
            }
            let mut warnings = Vec::new();
            let patched = patch_object(
                objects,
                def,
                ns,
                name,
                &headers,
                &body,
                UpdateTarget::Status,
                dry,
                validation,
                &mut warnings,
                &manager,
            )
            .await?;
            Ok(with_warnings(
                json_response(StatusCode::OK, &patched),
                &warnings,
            ))
        }
        (Subresource::Scale, Method::GET) => {
            let obj = objects.get(def, ns, name).await?;
            Ok(json_response(StatusCode::OK, &scale_of(&obj)))
        }
        (Subresource::Scale, Method::PUT) | (Subresource::Scale, Method::PATCH) => {
            let is_patch = req.method() == Method::PATCH;
            let (headers, body) = read_body(req).await?;
            let input: Value = if is_patch {
                Value::Null
            } else {
                parse_json_body(&headers, &body)?
            };
            let patch_kind = if is_patch {
                let ct = content_type(&headers);
                Some(
                    PatchType::from_content_type(&ct)
                        .ok_or_else(|| ApiError::unsupported_media_type(&ct))?,
                )
            } else {
                None
            };
            let patch_body: Value = if is_patch {
                serde_json::from_slice(&body).map_err(|e| {
                    ApiError::bad_request(format!("the patch could not be decoded as JSON: {e}"))
                })?
            } else {
                Value::Null
            };
            let updated = objects
                .guaranteed_update(def, ns, name, Write {
                    target: UpdateTarget::Main,
                    owner: Ownership::Update(&manager),
                    dry_run: dry,
                }, |old| {
                    let current = scale_of(old);
                    let wanted = match patch_kind {
                        Some(k) => patch::apply(&current, &patch_body, k, crate::registry::schema::root("autoscaling", "v1", "Scale"))?,
                        None => input.clone(),
                    };
                    if let Some(rv) = wanted.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
                        if !rv.is_empty() && Some(rv) != old.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
                            return Err(ApiError::conflict(def, name));
                        }
                    }
                    let replicas = wanted
                        .pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(0);
                    if replicas < 0 {
                        return Err(ApiError::new(422, "Invalid", format!(
                            "Scale.autoscaling {name:?} is invalid: spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0"
                        )));
                    }
                    let mut new = old.clone();
                    new["spec"]["replicas"] = json!(replicas);
                    Ok(new)
                })
                .await?;
            Ok(json_response(StatusCode::OK, &scale_of(&updated)))
        }
        (Subresource::Binding, Method::POST) => {
            let (headers, body) = read_body(req).await?;
            let binding = parse_json_body(&headers, &body)?;
            let node = binding
                .pointer("/target/name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| ApiError::bad_request("binding target name is required"))?
                .to_string();
            objects.bind_pod(def, ns, name, &node, dry).await?;
            let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201});
            Ok(json_response(StatusCode::CREATED, &status))
        }
        (Subresource::Token, Method::POST) => {
            super::tokens::token_request(&state, def, ns, name, req, q, dry).await
        }
        (Subresource::Log, Method::GET) => super::pod_proxy::log(&state, ns, name, q).await,
        (Subresource::Exec, Method::GET | Method::POST) => {
            super::pod_stream::exec(&state, ns, name, req).await
        }
        (Subresource::PortForward, Method::GET | Method::POST) => {
            super::pod_stream::port_forward(&state, ns, name, req).await
        }
        (_, m) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({m})"
        ))),
    }
}

/// The `autoscaling/v1` Scale view of a Deployment or ReplicaSet.
fn scale_of(obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector")
        .and_then(|s| LabelSelector::try_from_label_selector_json(s).ok())
        .map(|s| s.to_string())
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": obj.pointer("/metadata/name"),
            "namespace": obj.pointer("/metadata/namespace"),
            "uid": obj.pointer("/metadata/uid"),
            "resourceVersion": obj.pointer("/metadata/resourceVersion"),
            "creationTimestamp": obj.pointer("/metadata/creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {
            "replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_request_gets_a_429_status_with_retry_after() {
        let response = too_many_requests();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            response
                .headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        let status: Value = serde_json::from_slice(&body).expect("a Status");
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["reason"], "TooManyRequests");
        assert_eq!(status["code"], 429);
        assert_eq!(status["details"]["retryAfterSeconds"], 1);
    }

    #[test]
    fn watches_and_streams_are_long_running_and_the_rest_is_not() {
        let target = |path: &str| parse_path(path);
        assert!(is_long_running("WATCH", &target("/api/v1/pods")));
        for sub in ["log", "exec", "attach", "portforward", "proxy"] {
            let path = format!("/api/v1/namespaces/ns/pods/p/{sub}");
            assert!(is_long_running("GET", &target(&path)), "{path}");
        }
        assert!(!is_long_running("LIST", &target("/api/v1/pods")));
        assert!(!is_long_running(
            "PATCH",
            &target("/api/v1/namespaces/ns/pods/p/status")
        ));
        assert!(!is_long_running("GET", &None));
    }
}
