//! The OpenAPI documents: `/openapi/v3` (an index plus one document per group-version)
//! and `/openapi/v2` (one Swagger 2.0 document), built from the schemas `k8s-openapi`
//! carries (upstream's descriptions and types) for every kind the registry serves.
//!
//! Who reads them and what they need:
//! - `kubectl explain` (v3): finds the kind's GVK on an operation of its resource path
//!   (`x-kubernetes-group-version-kind`), then the schema in `components.schemas`
//!   carrying the same GVK, and follows `$ref`s/`allOf`s from there.
//! - kubectl's `--validate=strict` (v3): a `patch` operation with the GVK and a
//!   `fieldValidation` query parameter means the server validates (`?fieldValidation=`).
//! - kubectl's client-side apply (v3): it computes strategic merge patches from these
//!   schemas if the `patch` operation accepts `application/strategic-merge-patch+json`.
//!   `k8s-openapi`'s schemas lack upstream's `x-kubernetes-patch-merge-key` /
//!   `x-kubernetes-patch-strategy`, so that would make kubectl replace lists (containers,
//!   ports, env) wholesale. We therefore leave that content type out of the patch
//!   operations: kubectl then falls back to the patch metadata compiled into it, which
//!   is upstream's.
//! - `/openapi/v2` is served as JSON only. kubectl asks for it in protobuf (the
//!   gnostic encoding) and gets 406, which it treats like a server without v2; for the
//!   same reason as above that is the behaviour we want (kubectl would otherwise compute
//!   apply patches from it).
//!
//! The documents are built once per registry (they depend on nothing else), on first
//! use or through [`prebuild`], and served as pre-encoded bytes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::autoscaling::v1 as autoscaling;
use k8s_openapi::api::coordination::v1 as coordination;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery_api;
use k8s_openapi::api::node::v1 as node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::schemars::generate::SchemaSettings;
use k8s_openapi::schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

use super::status::ApiError;
use super::ApiState;
use crate::registry::{Registry, ResourceDef, Subresource};

/// The document of one group-version, encoded.
struct GroupVersionDoc {
    /// `api/v1` or `apis/apps/v1`: the key in the index and the URL suffix.
    path: String,
    /// Hash of `json`; clients re-fetch when it changes.
    hash: String,
    json: Bytes,
}

/// Every document, encoded once.
struct Documents {
    /// `GET /openapi/v3`.
    v3_index: Bytes,
    v3: Vec<GroupVersionDoc>,
    /// `GET /openapi/v2`, built on first use: kubectl never reads it (it asks for
    /// protobuf), so most servers need not pay for it.
    v2: OnceLock<V2Doc>,
    registry: Registry,
}

struct V2Doc {
    json: Bytes,
    hash: String,
}

impl Documents {
    fn v2(&self) -> &V2Doc {
        self.v2.get_or_init(|| {
            let started = std::time::Instant::now();
            let all: Vec<&Arc<ResourceDef>> = self.registry.all().collect();
            let json = encode(&v2_document(&all));
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                bytes = json.len(),
                "built the OpenAPI v2 document"
            );
            V2Doc {
                hash: content_hash(&json),
                json,
            }
        })
    }
}

/// Builds (and caches) the documents of `registry` now, so the first client does not wait
/// for them. Cheap when they exist already.
pub fn prebuild(registry: &Registry) {
    documents(registry);
}

/// `GET /openapi/v3`: the index of group-version documents.
pub fn index(registry: &Registry) -> Value {
    serde_json::from_slice(&documents(registry).v3_index).unwrap_or(Value::Null)
}

/// `GET /openapi/v3/<api/v1|apis/g/v>`: one group-version document; `None` if not served.
pub fn document(registry: &Registry, path: &str) -> Option<Value> {
    let docs = documents(registry);
    let doc = docs.v3.iter().find(|d| d.path == path)?;
    serde_json::from_slice(&doc.json).ok()
}

/// `GET /openapi/v2`: the Swagger 2.0 document.
pub fn swagger(registry: &Registry) -> Value {
    serde_json::from_slice(&documents(registry).v2().json).unwrap_or(Value::Null)
}

/// Handler of `GET /openapi/v3`.
pub async fn serve_v3_index(State(state): State<Arc<ApiState>>, req: Request) -> Response {
    let docs = documents_async(&state.objects.registry).await;
    json_response(req.headers(), docs.v3_index.clone(), None, false)
}

/// Handler of `GET /openapi/v3/{*path}`.
pub async fn serve_v3_document(State(state): State<Arc<ApiState>>, req: Request) -> Response {
    let docs = documents_async(&state.objects.registry).await;
    let path = req.uri().path().trim_start_matches("/openapi/v3/");
    let Some(doc) = docs.v3.iter().find(|d| d.path == path) else {
        return ApiError::not_found_path().into_response();
    };
    let asked_hash = query_value(req.uri().query(), "hash");
    let immutable = asked_hash.as_deref() == Some(doc.hash.as_str());
    json_response(req.headers(), doc.json.clone(), Some(&doc.hash), immutable)
}

/// Handler of `GET /openapi/v2`. JSON only: a client accepting nothing but protobuf gets
/// 406 (see the module docs for why that is deliberate).
pub async fn serve_v2(State(state): State<Arc<ApiState>>, req: Request) -> Response {
    if !accepts_json(req.headers()) {
        return ApiError::not_acceptable(
            "only application/json is supported for /openapi/v2".to_string(),
        )
        .into_response();
    }
    let docs = documents_async(&state.objects.registry).await;
    if docs.v2.get().is_none() {
        let building = docs.clone();
        // Built off the async runtime; if that fails the line below builds it here.
        if let Err(e) = tokio::task::spawn_blocking(move || {
            building.v2();
        })
        .await
        {
            tracing::warn!(error = %e, "building the OpenAPI v2 document failed");
        }
    }
    let v2 = docs.v2();
    json_response(req.headers(), v2.json.clone(), Some(&v2.hash), false)
}

fn json_response(
    headers: &HeaderMap,
    body: Bytes,
    hash: Option<&str>,
    immutable: bool,
) -> Response {
    let etag = hash.map(|h| format!("\"{h}\""));
    if let (Some(etag), Some(inm)) = (&etag, headers.get(header::IF_NONE_MATCH)) {
        if inm.as_bytes() == etag.as_bytes() {
            return StatusCode::NOT_MODIFIED.into_response();
        }
    }
    let mut resp = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    let h = resp.headers_mut();
    if let Some(Ok(v)) = etag.map(|e| HeaderValue::from_str(&e)) {
        h.insert(header::ETAG, v);
    }
    // Upstream marks a document fetched by its current hash immutable: the hash in the
    // URL changes whenever the content does.
    let cache = if immutable {
        "public, immutable, max-age=31536000"
    } else {
        "no-cache, private"
    };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    resp
}

fn accepts_json(headers: &HeaderMap) -> bool {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    if accept.trim().is_empty() {
        return true;
    }
    accept.split(',').any(|part| {
        let media = part.split(';').next().unwrap_or("").trim();
        matches!(media, "application/json" | "application/*" | "*/*")
    })
}

fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// The cached documents of `registry`, built off the async runtime on first use.
async fn documents_async(registry: &Registry) -> Arc<Documents> {
    if let Some(d) = cached(registry) {
        return d;
    }
    let owned = registry.clone();
    match tokio::task::spawn_blocking(move || documents(&owned)).await {
        Ok(d) => d,
        Err(e) => {
            // The build has no failure path; should the blocking pool fail anyway,
            // build here rather than serve nothing.
            tracing::warn!(error = %e, "building the OpenAPI documents failed");
            documents(registry)
        }
    }
}

type Cache = Mutex<Vec<(u64, Arc<Documents>)>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(Vec::new()))
}

fn cached(registry: &Registry) -> Option<Arc<Documents>> {
    let key = fingerprint(registry);
    let guard = cache().lock().unwrap_or_else(|p| p.into_inner());
    guard
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, d)| d.clone())
}

fn documents(registry: &Registry) -> Arc<Documents> {
    if let Some(d) = cached(registry) {
        return d;
    }
    // Built outside the lock; two concurrent first builds just do the work twice.
    let started = std::time::Instant::now();
    let built = Arc::new(build(registry));
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        v3_bytes = built.v3.iter().map(|d| d.json.len()).sum::<usize>(),
        "built the OpenAPI v3 documents"
    );
    let key = fingerprint(registry);
    let mut guard = cache().lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, d)) = guard.iter().find(|(k, _)| *k == key) {
        return d.clone();
    }
    guard.push((key, built.clone()));
    built
}

/// Identifies a registry's served resources, so each distinct registry gets its own
/// documents.
fn fingerprint(registry: &Registry) -> u64 {
    let mut h = Fnv::new();
    for d in registry.all() {
        for s in [d.group, d.version, d.kind, d.plural] {
            h.write(s.as_bytes());
            h.write(b"/");
        }
        h.write(&[d.namespaced as u8]);
        for s in d.subresources {
            h.write(s.name().as_bytes());
        }
        h.write(b";");
    }
    h.finish()
}

/// FNV-1a: a small, stable hash for cache keys and document hashes.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf29ce484222325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

fn content_hash(bytes: &[u8]) -> String {
    let mut h = Fnv::new();
    h.write(bytes);
    format!("{:016X}", h.finish())
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The `k8s-openapi` type behind a kind: its schema name and how to register its schema.
#[derive(Clone, Copy)]
struct TypeSchema {
    name: fn() -> std::borrow::Cow<'static, str>,
    register: fn(&mut SchemaGenerator) -> Schema,
}

fn type_schema<T: JsonSchema>() -> TypeSchema {
    TypeSchema {
        name: T::schema_name,
        register: SchemaGenerator::subschema_for::<T>,
    }
}

/// The `k8s-openapi` type of each kind the registry may serve. A kind missing here is
/// served with an open object schema (and the unit tests fail).
fn kind_type(group: &str, version: &str, kind: &str) -> Option<TypeSchema> {
    Some(match (group, version, kind) {
        ("", "v1", "Namespace") => type_schema::<core::Namespace>(),
        ("", "v1", "Pod") => type_schema::<core::Pod>(),
        ("", "v1", "Node") => type_schema::<core::Node>(),
        ("", "v1", "Service") => type_schema::<core::Service>(),
        ("", "v1", "Endpoints") => type_schema::<core::Endpoints>(),
        ("", "v1", "ConfigMap") => type_schema::<core::ConfigMap>(),
        ("", "v1", "Secret") => type_schema::<core::Secret>(),
        ("", "v1", "ServiceAccount") => type_schema::<core::ServiceAccount>(),
        ("", "v1", "Event") => type_schema::<core::Event>(),
        ("", "v1", "Binding") => type_schema::<core::Binding>(),
        ("apps", "v1", "Deployment") => type_schema::<apps::Deployment>(),
        ("apps", "v1", "ReplicaSet") => type_schema::<apps::ReplicaSet>(),
        ("apps", "v1", "DaemonSet") => type_schema::<apps::DaemonSet>(),
        ("apps", "v1", "StatefulSet") => type_schema::<apps::StatefulSet>(),
        ("apps", "v1", "ControllerRevision") => type_schema::<apps::ControllerRevision>(),
        ("batch", "v1", "Job") => type_schema::<k8s_openapi::api::batch::v1::Job>(),
        ("batch", "v1", "CronJob") => type_schema::<k8s_openapi::api::batch::v1::CronJob>(),
        ("autoscaling", "v1", "Scale") => type_schema::<autoscaling::Scale>(),
        ("discovery.k8s.io", "v1", "EndpointSlice") => {
            type_schema::<discovery_api::EndpointSlice>()
        }
        ("coordination.k8s.io", "v1", "Lease") => type_schema::<coordination::Lease>(),
        ("node.k8s.io", "v1", "RuntimeClass") => type_schema::<node::RuntimeClass>(),
        _ => return None,
    })
}

/// Which dialect a document is in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dialect {
    /// OpenAPI 3.0: refs to `#/components/schemas/`, no siblings next to `$ref`.
    V3,
    /// Swagger 2.0: refs to `#/definitions/`.
    V2,
}

impl Dialect {
    fn generator(self) -> SchemaGenerator {
        match self {
            Dialect::V3 => SchemaSettings::openapi3()
                .with(|s| s.meta_schema = None)
                .into_generator(),
            // Upstream's v2 document keeps `description` next to `$ref`, as
            // `k8s-openapi` writes it, so no transforms.
            Dialect::V2 => SchemaSettings::draft07()
                .with(|s| {
                    s.definitions_path = "/definitions".into();
                    s.meta_schema = None;
                    s.transforms = Vec::new();
                })
                .into_generator(),
        }
    }
}

fn gvk_value(group: &str, version: &str, kind: &str) -> Value {
    json!({"group": group, "kind": kind, "version": version})
}

/// Registers the schemas one group-version's documents reference: each kind and its
/// list, `Status`, `DeleteOptions`, `Patch`, and `Scale` when a kind has `/scale`.
/// Returns the schema refs of each kind (object, list) by kind name.
struct Registered {
    /// `(kind, object ref, list ref)`.
    kinds: Vec<(&'static str, Value, Value)>,
    status: Value,
    delete_options: Value,
    patch: Value,
    scale: Option<Value>,
}

fn register_schemas<'a>(
    gen: &mut SchemaGenerator,
    defs: impl Iterator<Item = &'a Arc<ResourceDef>>,
) -> Registered {
    // Top-level GVKs to stamp on their schemas after generation, by schema name.
    let mut stamps: Vec<(String, Value)> = Vec::new();
    let mut lists: Vec<(String, Value)> = Vec::new();
    let mut kinds = Vec::new();
    let mut wants_scale = false;
    let list_meta = gen.subschema_for::<meta::ListMeta>();
    for d in defs {
        wants_scale |= d.has(Subresource::Scale);
        let (name, object_ref) = match kind_type(d.group, d.version, d.kind) {
            Some(t) => ((t.name)().into_owned(), (t.register)(gen).to_value()),
            None => {
                tracing::warn!(kind = d.kind, group = d.group, "no OpenAPI schema for kind");
                let name = format!("io.wasmkube.{}.{}.{}", d.group, d.version, d.kind);
                gen.definitions_mut().insert(
                    name.clone(),
                    json!({
                        "description": format!("{} (no schema published)", d.kind),
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": true,
                    }),
                );
                let r = reference(gen, &name);
                (name, r)
            }
        };
        stamps.push((name.clone(), gvk_value(d.group, d.version, d.kind)));
        let list_name = format!("{name}List");
        let list_kind = d.list_kind();
        lists.push((
            list_name.clone(),
            json!({
                "description": format!("{list_kind} is a list of {} objects.", d.kind),
                "type": "object",
                "properties": {
                    "apiVersion": {
                        "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources",
                        "type": "string",
                    },
                    "items": {
                        "description": format!("List of {}.", d.plural),
                        "type": "array",
                        "items": object_ref.clone(),
                    },
                    "kind": {
                        "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds",
                        "type": "string",
                    },
                    "metadata": with_description(
                        list_meta.clone().to_value(),
                        "Standard list metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds",
                    ),
                },
                "required": ["items"],
                "x-kubernetes-group-version-kind": [gvk_value(d.group, d.version, &list_kind)],
            }),
        ));
        let list_ref = reference(gen, &list_name);
        kinds.push((d.kind, object_ref, list_ref));
    }
    let status = gen.subschema_for::<meta::Status>().to_value();
    let delete_options = gen.subschema_for::<meta::DeleteOptions>().to_value();
    let patch = gen.subschema_for::<meta::Patch>().to_value();
    let scale = wants_scale.then(|| {
        stamps.push((
            autoscaling::Scale::schema_name().into_owned(),
            gvk_value("autoscaling", "v1", "Scale"),
        ));
        gen.subschema_for::<autoscaling::Scale>().to_value()
    });
    let definitions = gen.definitions_mut();
    for (name, list) in lists {
        definitions.insert(name, list);
    }
    for (name, gvk) in stamps {
        if let Some(Value::Object(schema)) = definitions.get_mut(&name) {
            let entry = schema
                .entry("x-kubernetes-group-version-kind")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(list) = entry {
                if !list.contains(&gvk) {
                    list.push(gvk);
                }
            }
        }
    }
    Registered {
        kinds,
        status,
        delete_options,
        patch,
        scale,
    }
}

/// A `$ref` to the named schema in this generator's dialect.
fn reference(gen: &SchemaGenerator, name: &str) -> Value {
    let base = gen.settings().definitions_path.trim_start_matches('#');
    json!({"$ref": format!("#{}/{}", base.trim_end_matches('/'), name)})
}

/// A property schema pointing at `target` (a `$ref`) with its own description. Dialect
/// transforms (v3's `allOf` wrapping) run over it later with the other definitions.
fn with_description(mut target: Value, description: &str) -> Value {
    if let Value::Object(m) = &mut target {
        m.insert("description".into(), description.into());
    }
    target
}

/// A query parameter of an operation.
struct QueryParam {
    name: &'static str,
    kind: &'static str,
    description: &'static str,
}

const PRETTY: QueryParam = QueryParam {
    name: "pretty",
    kind: "string",
    description: "If 'true', then the output is pretty printed. Defaults to 'false' unless the user-agent indicates a browser or command-line HTTP tool (curl and wget).",
};
const DRY_RUN: QueryParam = QueryParam {
    name: "dryRun",
    kind: "string",
    description: "When present, indicates that modifications should not be persisted. An invalid or unrecognized dryRun directive will result in an error response and no further processing of the request. Valid values are: - All: all dry run stages will be processed",
};
const FIELD_MANAGER: QueryParam = QueryParam {
    name: "fieldManager",
    kind: "string",
    description: "fieldManager is a name associated with the actor or entity that is making these changes. The value must be less than or 128 characters long, and only contain printable characters, as defined by https://golang.org/pkg/unicode/#IsPrint.",
};
const FIELD_VALIDATION: QueryParam = QueryParam {
    name: "fieldValidation",
    kind: "string",
    description: "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore: This will ignore any unknown fields that are silently dropped from the object, and will ignore all but the last duplicate field that the decoder encounters. - Warn: This will send a warning via the standard warning response header for each unknown field that is dropped from the object, and for each duplicate field that is encountered. The request will still succeed if there are no other errors, and will only persist the last of any duplicate fields. This is the default. - Strict: This will fail the request with a BadRequest error if any unknown fields would be dropped from the object, or if any duplicate fields are present. The error returned from the server will contain all unknown and duplicate fields encountered.",
};
const FORCE: QueryParam = QueryParam {
    name: "force",
    kind: "boolean",
    description: "Force is going to \"force\" Apply requests. It means user will re-acquire conflicting fields owned by other people. Force flag must be unset for non-apply patch requests.",
};
const GRACE_PERIOD: QueryParam = QueryParam {
    name: "gracePeriodSeconds",
    kind: "integer",
    description: "The duration in seconds before the object should be deleted. Value must be non-negative integer. The value zero indicates delete immediately. If this value is nil, the default grace period for the specified type will be used.",
};
const ORPHAN: QueryParam = QueryParam {
    name: "orphanDependents",
    kind: "boolean",
    description: "Deprecated: please use the PropagationPolicy, this field will be deprecated in 1.7. Should the dependent objects be orphaned. If true/false, the \"orphan\" finalizer will be added to/removed from the object's finalizers list. Either this field or PropagationPolicy may be set, but not both.",
};
const PROPAGATION: QueryParam = QueryParam {
    name: "propagationPolicy",
    kind: "string",
    description: "Whether and how garbage collection will be performed. Either this field or OrphanDependents may be set, but not both. Acceptable values are: 'Orphan' - orphan the dependents; 'Background' - allow the garbage collector to delete the dependents in the background; 'Foreground' - a cascading policy that deletes all dependents in the foreground.",
};
const ALLOW_BOOKMARKS: QueryParam = QueryParam {
    name: "allowWatchBookmarks",
    kind: "boolean",
    description: "allowWatchBookmarks requests watch events with type \"BOOKMARK\". Servers that do not implement bookmarks may ignore this flag and bookmarks are sent at the server's discretion.",
};
const CONTINUE: QueryParam = QueryParam {
    name: "continue",
    kind: "string",
    description: "The continue option should be set when retrieving more results from the server. Since this value is server defined, clients may only use the continue value from a previous query result with identical query parameters (except for the value of continue).",
};
const FIELD_SELECTOR: QueryParam = QueryParam {
    name: "fieldSelector",
    kind: "string",
    description: "A selector to restrict the list of returned objects by their fields. Defaults to everything.",
};
const LABEL_SELECTOR: QueryParam = QueryParam {
    name: "labelSelector",
    kind: "string",
    description: "A selector to restrict the list of returned objects by their labels. Defaults to everything.",
};
const LIMIT: QueryParam = QueryParam {
    name: "limit",
    kind: "integer",
    description: "limit is a maximum number of responses to return for a list call. If more items exist, the server will set the `continue` field on the list metadata to a value that can be used with the same initial query to retrieve the next set of results.",
};
const RESOURCE_VERSION: QueryParam = QueryParam {
    name: "resourceVersion",
    kind: "string",
    description: "resourceVersion sets a constraint on what resource versions a request may be served from. See https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions for details. Defaults to unset",
};
const RESOURCE_VERSION_MATCH: QueryParam = QueryParam {
    name: "resourceVersionMatch",
    kind: "string",
    description: "resourceVersionMatch determines how resourceVersion is applied to list calls. It is highly recommended that resourceVersionMatch be set for list calls where resourceVersion is set. See https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions for details. Defaults to unset",
};
const SEND_INITIAL_EVENTS: QueryParam = QueryParam {
    name: "sendInitialEvents",
    kind: "boolean",
    description: "`sendInitialEvents=true` may be set together with `watch=true`. In that case, the watch stream will begin with synthetic events to produce the current state of objects in the collection.",
};
const TIMEOUT_SECONDS: QueryParam = QueryParam {
    name: "timeoutSeconds",
    kind: "integer",
    description: "Timeout for the list/watch call. This limits the duration of the call, regardless of any activity or inactivity.",
};
const WATCH: QueryParam = QueryParam {
    name: "watch",
    kind: "boolean",
    description: "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications. Specify resourceVersion.",
};

const LIST_PARAMS: &[&QueryParam] = &[
    &ALLOW_BOOKMARKS,
    &CONTINUE,
    &FIELD_SELECTOR,
    &LABEL_SELECTOR,
    &LIMIT,
    &RESOURCE_VERSION,
    &RESOURCE_VERSION_MATCH,
    &SEND_INITIAL_EVENTS,
    &TIMEOUT_SECONDS,
    &WATCH,
];
const WRITE_PARAMS: &[&QueryParam] = &[&DRY_RUN, &FIELD_MANAGER, &FIELD_VALIDATION];
const PATCH_PARAMS: &[&QueryParam] = &[&DRY_RUN, &FIELD_MANAGER, &FIELD_VALIDATION, &FORCE];
const DELETE_PARAMS: &[&QueryParam] = &[&DRY_RUN, &GRACE_PERIOD, &ORPHAN, &PROPAGATION];
const DELETE_COLLECTION_PARAMS: &[&QueryParam] = &[
    &CONTINUE,
    &DRY_RUN,
    &FIELD_SELECTOR,
    &GRACE_PERIOD,
    &LABEL_SELECTOR,
    &LIMIT,
    &ORPHAN,
    &PROPAGATION,
    &RESOURCE_VERSION,
    &RESOURCE_VERSION_MATCH,
    &SEND_INITIAL_EVENTS,
    &TIMEOUT_SECONDS,
];

/// The request body an operation takes.
#[derive(Clone, Copy)]
enum Body {
    /// The object itself (create, replace).
    Object,
    /// A patch; see the module docs for why strategic merge is not listed.
    Patch,
    /// `DeleteOptions`.
    DeleteOptions,
}

/// What an operation answers with.
#[derive(Clone, Copy)]
enum Answer {
    Object,
    List,
    Status,
}

/// One operation on one path, independent of the dialect it is rendered in.
struct Operation {
    method: &'static str,
    /// `x-kubernetes-action`.
    action: &'static str,
    operation_id: String,
    description: String,
    params: &'static [&'static QueryParam],
    body: Option<Body>,
    answer: Answer,
    /// Status codes answered with the `answer` schema.
    codes: &'static [(&'static str, &'static str)],
}

/// One path: its path parameters, its operations, and the schemas they speak of.
struct PathItem {
    path: String,
    namespaced: bool,
    named: bool,
    gvk: Value,
    object: Value,
    list: Value,
    operations: Vec<Operation>,
}

const OK: &[(&str, &str)] = &[("200", "OK")];
const CREATED: &[(&str, &str)] = &[("200", "OK"), ("201", "Created"), ("202", "Accepted")];
const REPLACED: &[(&str, &str)] = &[("200", "OK"), ("201", "Created")];
const DELETED: &[(&str, &str)] = &[("200", "OK"), ("202", "Accepted")];

/// `Core`, `Apps`, `Discovery`: how upstream's operation ids name a group.
fn group_ident(group: &str) -> String {
    if group.is_empty() {
        return "Core".to_string();
    }
    let base = group.strip_suffix(".k8s.io").unwrap_or(group);
    base.split(['.', '-'])
        .map(|s| {
            let mut c = s.chars();
            match c.next() {
                Some(f) => f.to_uppercase().chain(c).collect::<String>(),
                None => String::new(),
            }
        })
        .collect()
}

fn version_ident(version: &str) -> String {
    let mut c = version.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// An operation as a template over the kind (`{kind}`) and subresource (`{sub}`,
/// `{Sub}`) it is instantiated for.
struct OpTemplate {
    method: &'static str,
    action: &'static str,
    /// Operation id prefix: `read` in `readCoreV1NamespacedPod`.
    verb: &'static str,
    description: &'static str,
    params: &'static [&'static QueryParam],
    body: Option<Body>,
    answer: Answer,
    codes: &'static [(&'static str, &'static str)],
}

#[rustfmt::skip]
const COLLECTION_OPS: &[OpTemplate] = &[
    OpTemplate { method: "get", action: "list", verb: "list", description: "list or watch objects of kind {kind}", params: LIST_PARAMS, body: None, answer: Answer::List, codes: OK },
    OpTemplate { method: "post", action: "post", verb: "create", description: "create a {kind}", params: WRITE_PARAMS, body: Some(Body::Object), answer: Answer::Object, codes: CREATED },
    OpTemplate { method: "delete", action: "deletecollection", verb: "deleteCollection", description: "delete collection of {kind}", params: DELETE_COLLECTION_PARAMS, body: Some(Body::DeleteOptions), answer: Answer::Status, codes: OK },
];

#[rustfmt::skip]
const ITEM_OPS: &[OpTemplate] = &[
    OpTemplate { method: "get", action: "get", verb: "read", description: "read the specified {kind}", params: &[], body: None, answer: Answer::Object, codes: OK },
    OpTemplate { method: "put", action: "put", verb: "replace", description: "replace the specified {kind}", params: WRITE_PARAMS, body: Some(Body::Object), answer: Answer::Object, codes: REPLACED },
    OpTemplate { method: "delete", action: "delete", verb: "delete", description: "delete a {kind}", params: DELETE_PARAMS, body: Some(Body::DeleteOptions), answer: Answer::Status, codes: DELETED },
    OpTemplate { method: "patch", action: "patch", verb: "patch", description: "partially update the specified {kind}", params: PATCH_PARAMS, body: Some(Body::Patch), answer: Answer::Object, codes: REPLACED },
];

#[rustfmt::skip]
const ALL_NAMESPACES_OPS: &[OpTemplate] = &[
    OpTemplate { method: "get", action: "list", verb: "list", description: "list or watch objects of kind {kind}", params: LIST_PARAMS, body: None, answer: Answer::List, codes: OK },
];

/// `/status` and `/scale`.
#[rustfmt::skip]
const SUBRESOURCE_OPS: &[OpTemplate] = &[
    OpTemplate { method: "get", action: "get", verb: "read", description: "read {sub} of the specified {kind}", params: &[], body: None, answer: Answer::Object, codes: OK },
    OpTemplate { method: "put", action: "put", verb: "replace", description: "replace {sub} of the specified {kind}", params: WRITE_PARAMS, body: Some(Body::Object), answer: Answer::Object, codes: REPLACED },
    OpTemplate { method: "patch", action: "patch", verb: "patch", description: "partially update {sub} of the specified {kind}", params: PATCH_PARAMS, body: Some(Body::Patch), answer: Answer::Object, codes: REPLACED },
];

/// The paths and operations of one resource, as upstream lays them out.
fn resource_paths(
    d: &ResourceDef,
    object: &Value,
    list: &Value,
    reg: &Registered,
) -> Vec<PathItem> {
    let prefix = format!("/{}", gv_path(d.group, d.version));
    let gv = format!("{}{}", group_ident(d.group), version_ident(d.version));
    let scope = if d.namespaced { "Namespaced" } else { "" };
    let gvk = gvk_value(d.group, d.version, d.kind);
    let collection = if d.namespaced {
        format!("{prefix}/namespaces/{{namespace}}/{}", d.plural)
    } else {
        format!("{prefix}/{}", d.plural)
    };
    let item = format!("{collection}/{{name}}");
    // (operation id scope, subresource) -> operations.
    let ops = |templates: &[OpTemplate], scope: &str, sub: &str| -> Vec<Operation> {
        let sub_ident = version_ident(sub);
        templates
            .iter()
            .map(|t| {
                let (id_scope, id_suffix) = if scope == "ForAllNamespaces" {
                    ("", scope)
                } else {
                    (scope, sub_ident.as_str())
                };
                Operation {
                    method: t.method,
                    action: t.action,
                    operation_id: format!("{}{gv}{id_scope}{}{id_suffix}", t.verb, d.kind),
                    description: t
                        .description
                        .replace("{kind}", d.kind)
                        .replace("{sub}", sub),
                    params: t.params,
                    body: t.body,
                    answer: t.answer,
                    codes: t.codes,
                }
            })
            .collect()
    };
    let path = |path: String, namespaced: bool, named: bool, operations: Vec<Operation>| PathItem {
        path,
        namespaced,
        named,
        gvk: gvk.clone(),
        object: object.clone(),
        list: list.clone(),
        operations,
    };
    let mut out = vec![
        path(
            collection.clone(),
            d.namespaced,
            false,
            ops(COLLECTION_OPS, scope, ""),
        ),
        path(item.clone(), d.namespaced, true, ops(ITEM_OPS, scope, "")),
    ];
    if d.namespaced {
        let all = format!("{prefix}/{}", d.plural);
        out.push(path(
            all,
            false,
            false,
            ops(ALL_NAMESPACES_OPS, "ForAllNamespaces", ""),
        ));
    }
    if d.has(Subresource::Status) {
        let status = format!("{item}/status");
        out.push(path(
            status,
            d.namespaced,
            true,
            ops(SUBRESOURCE_OPS, scope, "status"),
        ));
    }
    if let (true, Some(scale)) = (d.has(Subresource::Scale), &reg.scale) {
        out.push(PathItem {
            path: format!("{item}/scale"),
            namespaced: d.namespaced,
            named: true,
            gvk: gvk_value("autoscaling", "v1", "Scale"),
            object: scale.clone(),
            list: scale.clone(),
            operations: ops(SUBRESOURCE_OPS, scope, "scale"),
        });
    }
    out
}

/// Patch content types the patch operations declare (strategic merge deliberately
/// absent: see the module docs).
const PATCH_CONTENT_TYPES: &[&str] = &[
    "application/apply-patch+yaml",
    "application/json-patch+json",
    "application/merge-patch+json",
];
const RESPONSE_CONTENT_TYPES: &[&str] = &[
    "application/json",
    "application/yaml",
    "application/vnd.kubernetes.protobuf",
];

fn path_param(name: &str, description: &str, dialect: Dialect) -> Value {
    match dialect {
        Dialect::V3 => json!({
            "name": name, "in": "path", "description": description, "required": true,
            "schema": {"type": "string", "uniqueItems": true},
        }),
        Dialect::V2 => json!({
            "name": name, "in": "path", "description": description, "required": true,
            "type": "string", "uniqueItems": true,
        }),
    }
}

fn query_param(p: &QueryParam, dialect: Dialect) -> Value {
    match dialect {
        Dialect::V3 => json!({
            "name": p.name, "in": "query", "description": p.description,
            "schema": {"type": p.kind, "uniqueItems": true},
        }),
        Dialect::V2 => json!({
            "name": p.name, "in": "query", "description": p.description,
            "type": p.kind, "uniqueItems": true,
        }),
    }
}

fn render_path(item: &PathItem, reg: &Registered, tag: &str, dialect: Dialect) -> Value {
    let mut out = Map::new();
    let mut params = Vec::new();
    if item.named {
        params.push(path_param("name", "name of the resource", dialect));
    }
    if item.namespaced {
        params.push(path_param(
            "namespace",
            "object name and auth scope, such as for teams and projects",
            dialect,
        ));
    }
    params.push(query_param(&PRETTY, dialect));
    out.insert("parameters".into(), Value::Array(params));
    for op in &item.operations {
        let answer_schema = match op.answer {
            Answer::Object => &item.object,
            Answer::List => &item.list,
            Answer::Status => &reg.status,
        };
        let mut o = Map::new();
        o.insert("tags".into(), json!([tag]));
        o.insert("description".into(), op.description.clone().into());
        o.insert("operationId".into(), op.operation_id.clone().into());
        let mut parameters: Vec<Value> =
            op.params.iter().map(|p| query_param(p, dialect)).collect();
        let body_schema = op.body.map(|b| match b {
            Body::Object => (&item.object, true),
            Body::Patch => (&reg.patch, true),
            Body::DeleteOptions => (&reg.delete_options, false),
        });
        let content_types: &[&str] = match op.body {
            Some(Body::Patch) => PATCH_CONTENT_TYPES,
            _ => &["*/*"],
        };
        let mut responses = Map::new();
        match dialect {
            Dialect::V3 => {
                if let Some((schema, required)) = body_schema {
                    let content: Map<String, Value> = content_types
                        .iter()
                        .map(|ct| (ct.to_string(), json!({"schema": schema})))
                        .collect();
                    let mut rb = json!({"content": content});
                    if required {
                        rb["required"] = true.into();
                    }
                    o.insert("requestBody".into(), rb);
                }
                for (code, desc) in op.codes {
                    let content: Map<String, Value> = RESPONSE_CONTENT_TYPES
                        .iter()
                        .map(|ct| (ct.to_string(), json!({"schema": answer_schema})))
                        .collect();
                    responses.insert(
                        code.to_string(),
                        json!({"description": desc, "content": content}),
                    );
                }
            }
            Dialect::V2 => {
                if let Some((schema, required)) = body_schema {
                    parameters.insert(
                        0,
                        json!({"name": "body", "in": "body", "required": required, "schema": schema}),
                    );
                }
                o.insert("consumes".into(), json!(content_types));
                o.insert("produces".into(), json!(RESPONSE_CONTENT_TYPES));
                o.insert("schemes".into(), json!(["https"]));
                for (code, desc) in op.codes {
                    responses.insert(
                        code.to_string(),
                        json!({"description": desc, "schema": answer_schema}),
                    );
                }
            }
        }
        responses.insert("401".into(), json!({"description": "Unauthorized"}));
        if !parameters.is_empty() {
            o.insert("parameters".into(), Value::Array(parameters));
        }
        o.insert("responses".into(), Value::Object(responses));
        o.insert("x-kubernetes-action".into(), op.action.into());
        o.insert("x-kubernetes-group-version-kind".into(), item.gvk.clone());
        out.insert(op.method.into(), Value::Object(o));
    }
    Value::Object(out)
}

fn tag(group: &str, version: &str) -> String {
    let g = if group.is_empty() {
        "core".to_string()
    } else {
        group
            .strip_suffix(".k8s.io")
            .unwrap_or(group)
            .replace(['.', '-'], "_")
    };
    format!("{g}_{version}")
}

/// Paths and schemas of a set of resources in one dialect.
fn paths_and_schemas(
    defs: &[&Arc<ResourceDef>],
    dialect: Dialect,
) -> (Map<String, Value>, Map<String, Value>) {
    let mut gen = dialect.generator();
    let reg = register_schemas(&mut gen, defs.iter().copied());
    let mut paths = Map::new();
    for (d, (_, object, list)) in defs.iter().zip(reg.kinds.iter()) {
        let tag = tag(d.group, d.version);
        for item in resource_paths(d, object, list, &reg) {
            let rendered = render_path(&item, &reg, &tag, dialect);
            paths.insert(item.path, rendered);
        }
    }
    let mut schemas = gen.take_definitions(true);
    for (name, schema) in schemas.iter_mut() {
        drop_required_metadata(name, schema);
    }
    // Sorted, as upstream serves them (and so the hash is stable).
    let schemas: BTreeMap<String, Value> = schemas.into_iter().collect();
    (paths, schemas.into_iter().collect())
}

/// Schemas whose `metadata` upstream lists as required.
const UPSTREAM_REQUIRES_METADATA: &[&str] = &["io.k8s.api.core.v1.Event"];

/// `k8s-openapi` makes every kind's `metadata` non-optional and so lists it under
/// `required`; upstream does not (bar [`UPSTREAM_REQUIRES_METADATA`]), and `kubectl
/// explain` would print `-required-` next to it.
fn drop_required_metadata(name: &str, schema: &mut Value) {
    if UPSTREAM_REQUIRES_METADATA.contains(&name) {
        return;
    }
    let Value::Object(m) = schema else { return };
    let Some(Value::Array(required)) = m.get_mut("required") else {
        return;
    };
    required.retain(|r| r != "metadata");
    if required.is_empty() {
        m.remove("required");
    }
}

fn info() -> Value {
    let version = super::discovery::version()["gitVersion"].clone();
    json!({"title": "Kubernetes", "version": version})
}

const BEARER_TOKEN: &str = "Bearer Token authentication";

fn v3_document(defs: &[&Arc<ResourceDef>]) -> Value {
    let (paths, schemas) = paths_and_schemas(defs, Dialect::V3);
    json!({
        "openapi": "3.0.0",
        "info": info(),
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "BearerToken": {
                    "type": "apiKey", "description": BEARER_TOKEN,
                    "name": "authorization", "in": "header",
                },
            },
        },
        "security": [{"BearerToken": []}],
    })
}

fn v2_document(defs: &[&Arc<ResourceDef>]) -> Value {
    let (paths, schemas) = paths_and_schemas(defs, Dialect::V2);
    json!({
        "swagger": "2.0",
        "info": info(),
        "paths": paths,
        "definitions": schemas,
        "securityDefinitions": {
            "BearerToken": {
                "type": "apiKey", "description": BEARER_TOKEN,
                "name": "authorization", "in": "header",
            },
        },
        "security": [{"BearerToken": []}],
    })
}

fn encode(v: &Value) -> Bytes {
    // Encoding a `Value` cannot fail (string keys, no non-finite floats).
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

fn build(registry: &Registry) -> Documents {
    let mut v3 = Vec::new();
    let mut index = Map::new();
    for (g, v) in registry.group_versions() {
        let defs: Vec<&Arc<ResourceDef>> = registry
            .all()
            .filter(|d| d.group == g && d.version == v)
            .collect();
        let json = encode(&v3_document(&defs));
        let hash = content_hash(&json);
        let path = gv_path(g, v);
        index.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
        );
        v3.push(GroupVersionDoc { path, hash, json });
    }
    Documents {
        v3_index: encode(&json!({"paths": index})),
        v3,
        v2: OnceLock::new(),
        registry: registry.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        Registry::builtin()
    }

    /// Every `$ref` in `v`, with the JSON path it sits at.
    fn refs(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    if k == "$ref" {
                        if let Value::String(r) = child {
                            out.push((at.to_string(), r.clone()));
                        }
                    } else {
                        refs(child, &format!("{at}.{k}"), out);
                    }
                }
            }
            Value::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    refs(child, &format!("{at}[{i}]"), out);
                }
            }
            _ => {}
        }
    }

    fn resolve<'a>(doc: &'a Value, r: &str) -> Option<&'a Value> {
        doc.pointer(r.strip_prefix('#')?)
    }

    fn schema_with_gvk<'a>(schemas: &'a Value, gvk: &Value) -> Option<&'a Value> {
        schemas.as_object()?.values().find(|s| {
            s["x-kubernetes-group-version-kind"]
                .as_array()
                .is_some_and(|l| l.contains(gvk))
        })
    }

    #[test]
    fn every_registered_kind_has_a_typed_schema() {
        for d in registry().all() {
            assert!(
                kind_type(d.group, d.version, d.kind).is_some(),
                "no k8s-openapi type mapped for {}/{} {}",
                d.group,
                d.version,
                d.kind
            );
        }
    }

    #[test]
    fn v3_documents_carry_gvk_and_field_validation_for_every_kind() {
        let r = registry();
        for d in r.all() {
            let path = gv_path(d.group, d.version);
            let doc = document(&r, &path).expect("group-version document");
            assert_eq!(doc["openapi"], "3.0.0");
            let gvk = gvk_value(d.group, d.version, d.kind);
            let patch_ok = doc["paths"].as_object().unwrap().values().any(|p| {
                let op = &p["patch"];
                op["x-kubernetes-group-version-kind"] == gvk
                    && op["parameters"].as_array().is_some_and(|ps| {
                        ps.iter()
                            .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
                    })
            });
            assert!(
                patch_ok,
                "no patch operation with fieldValidation for {}",
                d.kind
            );
            let schema = schema_with_gvk(&doc["components"]["schemas"], &gvk)
                .unwrap_or_else(|| panic!("no schema with the GVK of {}", d.kind));
            assert!(schema["properties"]["metadata"].is_object(), "{}", d.kind);
            // The item path sits where kubectl explain looks for it.
            let item = if d.namespaced {
                format!("/{path}/namespaces/{{namespace}}/{}/{{name}}", d.plural)
            } else {
                format!("/{path}/{}/{{name}}", d.plural)
            };
            assert_eq!(
                doc["paths"][&item]["get"]["x-kubernetes-group-version-kind"],
                gvk
            );
        }
    }

    #[test]
    fn v2_document_covers_every_kind() {
        let r = registry();
        let doc = swagger(&r);
        assert_eq!(doc["swagger"], "2.0");
        for d in r.all() {
            let gvk = gvk_value(d.group, d.version, d.kind);
            assert!(
                schema_with_gvk(&doc["definitions"], &gvk).is_some(),
                "{}",
                d.kind
            );
            let patched = doc["paths"].as_object().unwrap().values().any(|p| {
                p["patch"]["x-kubernetes-group-version-kind"] == gvk
                    && p["patch"]["parameters"]
                        .as_array()
                        .is_some_and(|ps| ps.iter().any(|p| p["name"] == "fieldValidation"))
            });
            assert!(patched, "{}", d.kind);
        }
    }

    #[test]
    fn every_ref_resolves_and_v3_refs_have_no_siblings() {
        let r = registry();
        for (g, v) in r.group_versions() {
            let doc = document(&r, &gv_path(g, v)).unwrap();
            let mut found = Vec::new();
            refs(&doc, "", &mut found);
            assert!(!found.is_empty());
            for (at, rf) in &found {
                assert!(rf.starts_with("#/components/schemas/"), "{at}: {rf}");
                assert!(resolve(&doc, rf).is_some(), "{at}: unresolved {rf}");
            }
            check_no_ref_siblings(&doc, "");
        }
        let doc = swagger(&r);
        let mut found = Vec::new();
        refs(&doc, "", &mut found);
        for (at, rf) in &found {
            assert!(rf.starts_with("#/definitions/"), "{at}: {rf}");
            assert!(resolve(&doc, rf).is_some(), "{at}: unresolved {rf}");
        }
    }

    fn check_no_ref_siblings(v: &Value, at: &str) {
        match v {
            Value::Object(m) => {
                assert!(
                    !m.contains_key("$ref") || m.len() == 1,
                    "{at}: $ref with siblings (OpenAPI 3.0 ignores them)"
                );
                for (k, c) in m {
                    check_no_ref_siblings(c, &format!("{at}.{k}"));
                }
            }
            Value::Array(a) => a.iter().for_each(|c| check_no_ref_siblings(c, at)),
            _ => {}
        }
    }

    #[test]
    fn upstream_descriptions_and_types_are_present() {
        let r = registry();
        let core = document(&r, "api/v1").unwrap();
        let schemas = &core["components"]["schemas"];
        let container = &schemas["io.k8s.api.core.v1.Container"];
        assert!(container["properties"]["image"]["description"]
            .as_str()
            .unwrap()
            .contains("Container image name"));
        assert_eq!(container["required"], json!(["name"]));
        let pod_spec = &schemas["io.k8s.api.core.v1.PodSpec"];
        assert_eq!(
            pod_spec["properties"]["containers"]["items"]["$ref"],
            "#/components/schemas/io.k8s.api.core.v1.Container"
        );
        for name in [
            "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
            "io.k8s.apimachinery.pkg.api.resource.Quantity",
            "io.k8s.apimachinery.pkg.util.intstr.IntOrString",
            "io.k8s.apimachinery.pkg.apis.meta.v1.Time",
            "io.k8s.api.core.v1.PodList",
            "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
        ] {
            assert!(schemas[name].is_object(), "{name} missing");
        }
        // A described `$ref` property is wrapped in `allOf`, as upstream's v3 does.
        let spec = &schemas["io.k8s.api.core.v1.Pod"]["properties"]["spec"];
        assert_eq!(
            spec["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.core.v1.PodSpec"
        );
        assert!(spec["description"]
            .as_str()
            .unwrap()
            .contains("desired behavior"));
        // As upstream: `metadata` is not required, except on Events.
        assert!(schemas["io.k8s.api.core.v1.Pod"].get("required").is_none());
        assert_eq!(
            schemas["io.k8s.api.core.v1.Event"]["required"],
            json!(["involvedObject", "metadata"])
        );

        let apps = document(&r, "apis/apps/v1").unwrap();
        let strategy = &apps["components"]["schemas"]["io.k8s.api.apps.v1.DeploymentStrategy"];
        assert!(strategy["properties"]["rollingUpdate"].is_object());
        assert!(strategy["properties"]["type"]["description"]
            .as_str()
            .unwrap()
            .contains("RollingUpdate"));
        // The scale subresource's kind comes along with the kinds that have one.
        assert!(schema_with_gvk(
            &apps["components"]["schemas"],
            &gvk_value("autoscaling", "v1", "Scale")
        )
        .is_some());
    }

    #[test]
    fn patch_operations_leave_strategic_merge_to_kubectls_builtin_metadata() {
        let r = registry();
        let doc = document(&r, "api/v1").unwrap();
        let patch = &doc["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        let content = patch["requestBody"]["content"].as_object().unwrap();
        assert!(content.contains_key("application/merge-patch+json"));
        assert!(!content.contains_key("application/strategic-merge-patch+json"));
    }

    #[test]
    fn index_points_at_each_document_by_its_content_hash() {
        let r = registry();
        let idx = index(&r);
        let docs = documents(&r);
        assert_eq!(
            idx["paths"].as_object().unwrap().len(),
            r.group_versions().len()
        );
        for d in &docs.v3 {
            assert_eq!(
                idx["paths"][&d.path]["serverRelativeURL"],
                format!("/openapi/v3/{}?hash={}", d.path, content_hash(&d.json))
            );
        }
        assert!(document(&r, "apis/nope/v1").is_none());
    }

    #[test]
    fn operation_ids_follow_upstream_naming() {
        assert_eq!(group_ident(""), "Core");
        assert_eq!(group_ident("apps"), "Apps");
        assert_eq!(group_ident("discovery.k8s.io"), "Discovery");
        assert_eq!(tag("coordination.k8s.io", "v1"), "coordination_v1");
        let r = registry();
        let doc = document(&r, "api/v1").unwrap();
        assert_eq!(
            doc["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["get"]["operationId"],
            "readCoreV1NamespacedPod"
        );
        assert_eq!(
            doc["paths"]["/api/v1/pods"]["get"]["operationId"],
            "listCoreV1PodForAllNamespaces"
        );
    }

    #[test]
    fn v2_is_json_only() {
        let mut h = HeaderMap::new();
        assert!(accepts_json(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/com.github.proto-openapi.spec.v2@v1.0+protobuf"),
        );
        assert!(!accepts_json(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, */*;q=0.1"),
        );
        assert!(accepts_json(&h));
    }
}
