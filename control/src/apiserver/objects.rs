//! Kubernetes object semantics on top of the [`Store`]: what create, update, patch and
//! delete mean for any kind (the kube-apiserver "generic registry").
//!
//! Handlers parse HTTP and call in here; everything kind-specific comes from the kind's
//! [`Strategy`](crate::registry::Strategy), apart from the few lifecycles Kubernetes also
//! special-cases in the storage of one kind: namespaces (Terminating, finalize), pods
//! (graceful deletion once bound to a node) and services (ClusterIP / NodePort
//! allocation). Those live in small `*_hook` functions below so the flow stays readable.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::allocator::{AllocError, ServiceAllocator};
use super::fieldmanager;
use super::namespace_lifecycle::{NamespaceLifecycle, NamespaceState};
use super::status::{ApiError, ApiResult};
use crate::registry::selectors::{FieldSelector, LabelSelector};
use crate::registry::validation::{self, Cause};
use crate::registry::{projection, Projection, Registry, ResourceDef, Subresource};
use crate::storage::{self, KeyValue, ListOptions, Store, WatchCache};

/// Size of each watch cache's replay buffer, in events.
const WATCH_CACHE_CAPACITY: usize = 4096;

/// Namespaces that exist from the start and may not be deleted.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// The generic object layer shared by every handler.
pub struct Objects {
    pub store: Arc<dyn Store>,
    pub registry: Registry,
    pub allocator: ServiceAllocator,
    /// One watch cache per resource, created on the first watch of that resource.
    caches: Mutex<HashMap<String, Arc<WatchCache>>>,
    /// Which namespaces exist and which are terminating, for creates.
    namespaces: Arc<NamespaceLifecycle>,
    /// ServiceAccounts in memory, for pod admission and token authentication.
    pub service_accounts: Arc<super::lister::Lister>,
    /// Recent watch events' objects, decoded once for every watcher with selectors.
    pub(crate) decoded_events: super::watch::DecodedEvents,
    /// What this server last wrote, the first guess of an update's read.
    last_written: super::last_written::LastWritten,
}

/// What a list reads.
#[derive(Debug, Default, Clone)]
pub struct ListParams {
    pub labels: Option<LabelSelector>,
    pub fields: Option<FieldSelector>,
    pub limit: Option<i64>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub exact: bool,
}

/// A `DeleteOptions` body or its query-parameter form.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    /// The deprecated form of `propagationPolicy: Orphan` (true) / `Background` (false).
    pub orphan_dependents: Option<bool>,
    pub preconditions: Option<Preconditions>,
    pub dry_run: Option<Vec<String>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

/// The kind of write an update is: the object itself or one of its subresources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateTarget {
    Main,
    Status,
    Finalize,
}

/// Who a write is recorded for in `metadata.managedFields`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership<'a> {
    /// An Update by this field manager: it takes the fields it changes.
    Update(&'a str),
    /// A server-side apply: the object already carries the managed fields the apply
    /// computed.
    Applied,
}

/// How an update is carried out: which part it writes, whom it is recorded for, and
/// whether it is only a dry run.
#[derive(Debug, Clone, Copy)]
pub struct Write<'a> {
    pub target: UpdateTarget,
    pub owner: Ownership<'a>,
    pub dry_run: bool,
}

/// A server-side apply's options.
#[derive(Debug, Clone, Copy)]
pub struct ApplyOptions<'a> {
    pub manager: &'a str,
    /// Take over conflicting fields (`?force=true`).
    pub force: bool,
    /// The object (`Main`) or its status.
    pub target: UpdateTarget,
    pub dry_run: bool,
}

#[derive(Serialize, Deserialize)]
struct ContinueToken {
    rv: i64,
    start: String,
}

pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Decodes a stored value and stamps the revision into `metadata.resourceVersion`.
pub fn decode_stored(value: &[u8], revision: i64) -> ApiResult<Value> {
    let mut obj: Value = serde_json::from_slice(value)
        .map_err(|e| ApiError::internal(format!("stored object is not JSON: {e}")))?;
    set_rv(&mut obj, revision);
    Ok(obj)
}

fn decode_kv(kv: &KeyValue) -> ApiResult<Value> {
    decode_stored(&kv.value, kv.mod_revision)
}

fn set_rv(obj: &mut Value, revision: i64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(revision.to_string()));
    }
}

/// The stored JSON text of an object with `"resourceVersion":"<rev>"` inserted at the
/// start of its top-level `metadata` object; `None` if the text has no such object.
pub(crate) fn with_resource_version(raw: &[u8], revision: i64) -> Option<Vec<u8>> {
    Some(splice_resource_version(
        raw,
        metadata_body_start(raw)?,
        revision,
    ))
}

/// The top-level `metadata` object of a stored object's text with `"resourceVersion"`
/// inserted (what a PartialObjectMetadata carries); `None` if it has none.
pub(crate) fn metadata_with_resource_version(raw: &[u8], revision: i64) -> Option<Vec<u8>> {
    let metadata = metadata_text(raw)?;
    Some(splice_resource_version(metadata, 1, revision))
}

/// `raw` with `"resourceVersion":"<revision>"` inserted at `at`, just after an object's
/// opening brace.
fn splice_resource_version(raw: &[u8], at: usize, revision: i64) -> Vec<u8> {
    let rest = &raw[at..];
    let empty = rest
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'}');
    let field = format!(
        "\"resourceVersion\":\"{revision}\"{}",
        if empty { "" } else { "," }
    );
    let mut out = Vec::with_capacity(raw.len() + field.len());
    out.extend_from_slice(&raw[..at]);
    out.extend_from_slice(field.as_bytes());
    out.extend_from_slice(rest);
    out
}

/// The index of the quote that closes the JSON string whose opening quote is at
/// `open` (`raw.len()` if the text ends first); escapes are skipped.
fn string_end(raw: &[u8], open: usize) -> usize {
    let mut i = open + 1;
    while i < raw.len() && raw[i] != b'"' {
        i += if raw[i] == b'\\' { 2 } else { 1 };
    }
    i.min(raw.len())
}

/// The index just after the `{` that opens the value of the top-level `"metadata"` key.
fn metadata_body_start(raw: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'"' => {
                let start = i + 1;
                let j = string_end(raw, i);
                let token = raw.get(start..j)?;
                i = j + 1;
                if depth == 1 && token == b"metadata" {
                    let mut k = i;
                    while raw.get(k).is_some_and(|b| b.is_ascii_whitespace()) {
                        k += 1;
                    }
                    if raw.get(k) == Some(&b':') {
                        k += 1;
                        while raw.get(k).is_some_and(|b| b.is_ascii_whitespace()) {
                            k += 1;
                        }
                        return (raw.get(k) == Some(&b'{')).then_some(k + 1);
                    }
                }
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// The text of the top-level `metadata` object (braces included) of a JSON object's
/// text; `None` if it has none or the text is cut short.
fn metadata_text(raw: &[u8]) -> Option<&[u8]> {
    let open = metadata_body_start(raw)? - 1;
    let mut depth = 0usize;
    let mut i = open;
    while i < raw.len() {
        match raw[i] {
            b'"' => i = string_end(raw, i),
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return raw.get(open..=i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The stored form: no resourceVersion (it is the key's revision) and no selfLink.
fn encode(obj: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(&StoredForm(obj)).unwrap_or_default())
}

/// An object serialized without the metadata fields that are not stored, so a write
/// does not copy the whole object to drop two strings.
struct StoredForm<'a>(&'a Value);

/// The top-level `metadata` of a [`StoredForm`].
struct StoredMetadata<'a>(&'a Map<String, Value>);

impl Serialize for StoredForm<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Value::Object(fields) = self.0 else {
            return self.0.serialize(serializer);
        };
        let mut map = serializer.serialize_map(Some(fields.len()))?;
        for (k, v) in fields {
            match v {
                Value::Object(meta) if k == "metadata" => {
                    map.serialize_entry(k, &StoredMetadata(meta))?
                }
                _ => map.serialize_entry(k, v)?,
            }
        }
        map.end()
    }
}

impl Serialize for StoredMetadata<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let kept = |k: &String| k != "resourceVersion" && k != "selfLink";
        let mut map = serializer.serialize_map(Some(self.0.keys().filter(|k| kept(k)).count()))?;
        for (k, v) in self.0.iter().filter(|(k, _)| kept(k)) {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

/// Drops empty `labels`, `annotations`, `finalizers` and `ownerReferences`, as Go's
/// `omitempty` does when Kubernetes encodes an object: removing the last finalizer
/// leaves no `finalizers: []` behind.
fn drop_empty_metadata(obj: &mut Value) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in ["labels", "annotations", "finalizers", "ownerReferences"] {
            let empty = match m.get(field) {
                Some(Value::Array(a)) => a.is_empty(),
                Some(Value::Object(o)) => o.is_empty(),
                _ => false,
            };
            if empty {
                m.remove(field);
            }
        }
    }
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj.get_mut("metadata")
        .and_then(Value::as_object_mut)
        .expect("metadata was just made an object")
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    meta(obj).and_then(|m| m.get(field)).and_then(Value::as_str)
}

fn rv_of(obj: &Value) -> Option<&str> {
    meta_str(obj, "resourceVersion").filter(|s| !s.is_empty())
}

fn has_finalizers(obj: &Value) -> bool {
    meta(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

fn is_deleting(obj: &Value) -> bool {
    meta(obj).is_some_and(|m| m.get("deletionTimestamp").is_some_and(|v| !v.is_null()))
}

/// Everything but metadata and status: what a change of bumps `generation`.
fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    o
}

/// Compares two objects ignoring resourceVersion and managedFields timestamps.
fn same_object(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        v
    };
    strip(a) == strip(b)
}

fn random_suffix() -> String {
    // Kubernetes' alphabet: no vowels (no words), no confusable characters.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

impl Objects {
    pub fn new(store: Arc<dyn Store>, registry: Registry, allocator: ServiceAllocator) -> Self {
        Objects {
            store,
            registry,
            allocator,
            caches: Mutex::new(HashMap::new()),
            namespaces: Arc::new(NamespaceLifecycle::default()),
            service_accounts: Arc::new(super::lister::Lister::new()),
            decoded_events: super::watch::DecodedEvents::default(),
            last_written: super::last_written::LastWritten::default(),
        }
    }

    /// Starts the background tasks of the object layer (the namespace map, the
    /// ServiceAccount lister).
    pub fn spawn_background(&self) -> tokio::task::JoinHandle<()> {
        let def = self.namespaces();
        let cache = self.cache(&def);
        let namespaces = self.namespaces.clone().run(self.store.clone(), cache, def);
        let accounts = super::admission::run_service_account_lister(self);
        tokio::spawn(async move {
            tokio::join!(namespaces, accounts);
        })
    }

    /// The watch cache of a resource.
    pub fn cache(&self, def: &ResourceDef) -> Arc<WatchCache> {
        let prefix = def.key_prefix();
        let mut caches = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        caches
            .entry(prefix.clone())
            .or_insert_with(|| WatchCache::new(self.store.clone(), prefix, WATCH_CACHE_CAPACITY))
            .clone()
    }

    fn namespaces(&self) -> Arc<ResourceDef> {
        self.registry
            .lookup("", "v1", "namespaces")
            .expect("namespaces are always registered")
    }

    /// Reads one object.
    pub async fn get(&self, def: &ResourceDef, ns: Option<&str>, name: &str) -> ApiResult<Value> {
        let key = def.key(ns, name);
        match self.store.get(&key).await? {
            Some(kv) => decode_kv(&kv),
            None => Err(ApiError::not_found(def, name)),
        }
    }

    /// Lists objects matching the selectors, with paging. Returns the items and the
    /// list metadata (resourceVersion, continue).
    pub async fn list(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        params: &ListParams,
    ) -> ApiResult<(Vec<Value>, Value)> {
        let mut items = Vec::new();
        let list_meta = self
            .scan(def, ns, params, |kv| {
                let obj = decode_kv(kv)?;
                let keep = self.matches(def, &obj, params)?;
                if keep {
                    items.push(obj);
                }
                Ok(keep)
            })
            .await?;
        Ok((items, list_meta))
    }

    /// Lists like [`Objects::list`], turning each matching object into what the response
    /// needs as soon as it is read, so a big list never holds every decoded object: `f`
    /// gets the stored text (`kv`) and the object decoded only as far as `fields` names
    /// (whole when selectors must look at it). A Table row reads a few fields and copies
    /// the rest from the text.
    pub async fn list_stored<T>(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        params: &ListParams,
        fields: &Projection,
        mut f: impl FnMut(&KeyValue, &Value) -> T,
    ) -> ApiResult<(Vec<T>, Value)> {
        let selected = params.labels.is_some() || params.fields.is_some();
        let mut items = Vec::new();
        let list_meta = self
            .scan(def, ns, params, |kv| {
                let obj = if selected {
                    decode_kv(kv)?
                } else {
                    let mut obj = projection::decode(&kv.value, fields).map_err(|e| {
                        ApiError::internal(format!("stored object is not JSON: {e}"))
                    })?;
                    set_rv(&mut obj, kv.mod_revision);
                    obj
                };
                let keep = !selected || self.matches(def, &obj, params)?;
                if keep {
                    items.push(f(kv, &obj));
                }
                Ok(keep)
            })
            .await?;
        Ok((items, list_meta))
    }

    /// Lists objects as the JSON text they are stored as, with their resourceVersion
    /// spliced in: no decoding, for the plain lists that informers and `-o json` ask
    /// for. Selectors need the decoded objects; use [`Objects::list`] for those.
    pub async fn list_raw(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        params: &ListParams,
    ) -> ApiResult<(Vec<u8>, Value)> {
        // The items go straight into one comma-separated buffer: a 10,000-pod list then
        // holds its text once, not once per item and again for the body.
        let mut joined = Vec::new();
        let list_meta = self
            .scan(def, ns, params, |kv| {
                if !joined.is_empty() {
                    joined.push(b',');
                }
                match with_resource_version(&kv.value, kv.mod_revision) {
                    Some(raw) => joined.extend_from_slice(&raw),
                    None => joined.extend_from_slice(
                        &serde_json::to_vec(&decode_kv(kv)?).unwrap_or_default(),
                    ),
                }
                Ok(true)
            })
            .await?;
        Ok((joined, list_meta))
    }

    /// Reads the keys a list covers, page by page at one revision, handing each to
    /// `visit` (which says whether it counts towards `limit`), and returns the list
    /// metadata.
    async fn scan<F>(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        params: &ListParams,
        mut visit: F,
    ) -> ApiResult<Value>
    where
        F: FnMut(&KeyValue) -> ApiResult<bool>,
    {
        /// Keys per etcd read: bounds the memory one read holds.
        const PAGE: i64 = 1000;
        let prefix = def.namespace_prefix(ns);
        let mut revision = None;
        let mut start_key = None;
        if let Some(token) = &params.continue_token {
            let t = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token)
                .ok()
                .and_then(|b| serde_json::from_slice::<ContinueToken>(&b).ok())
                .filter(|t| t.start.starts_with(&prefix))
                .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
            revision = Some(t.rv);
            start_key = Some(t.start);
        } else if let Some(rv) = params
            .resource_version
            .as_deref()
            .filter(|s| !s.is_empty() && *s != "0")
        {
            let n: i64 = rv
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))?;
            if params.exact || params.limit.is_some() {
                revision = Some(n);
            } else {
                // NotOlderThan: the latest state is never older than what was asked for,
                // as long as the store has reached it.
                let current = self.store.current_revision().await?;
                if current < n {
                    return Err(ApiError::new(
                        504,
                        "Timeout",
                        format!("Too large resource version: {n}, current: {current}"),
                    ));
                }
            }
        }
        let limit = params.limit.filter(|l| *l > 0);
        let mut included = 0i64;
        let mut next: Option<String> = None;
        let read_revision = loop {
            let want = limit.map_or(PAGE, |l| (l - included + 1).clamp(1, PAGE));
            let res = self
                .store
                .list(
                    &prefix,
                    &ListOptions {
                        revision,
                        start_key: start_key.clone(),
                        limit: Some(want),
                    },
                )
                .await
                .map_err(|e| match e {
                    storage::Error::Compacted { .. } if params.continue_token.is_some() => {
                        ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.")
                    }
                    other => ApiError::from(other),
                })?;
            // Every page of one list reads the same snapshot.
            revision = Some(res.revision);
            let mut last_key = None;
            for kv in &res.kvs {
                if limit.is_some_and(|l| included >= l) {
                    next = Some(kv.key.clone());
                    break;
                }
                last_key = Some(kv.key.as_str());
                if visit(kv)? {
                    included += 1;
                }
            }
            match last_key {
                Some(k) if next.is_none() && res.more => start_key = Some(format!("{k}\0")),
                _ => break res.revision,
            }
        };
        let mut list_meta = json!({"resourceVersion": read_revision.to_string()});
        if let Some(start) = next {
            let token = ContinueToken {
                rv: read_revision,
                start,
            };
            let raw = serde_json::to_vec(&token).unwrap_or_default();
            list_meta["continue"] =
                json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw));
        }
        Ok(list_meta)
    }

    /// Whether `obj` passes the list's label and field selectors.
    pub fn matches(&self, def: &ResourceDef, obj: &Value, params: &ListParams) -> ApiResult<bool> {
        if let Some(sel) = &params.labels {
            if !sel.matches_object(obj) {
                return Ok(false);
            }
        }
        if let Some(sel) = &params.fields {
            return Ok(sel.matches(|f| field_value(def, obj, f)));
        }
        Ok(true)
    }

    /// Creates an object; `dry_run` validates and answers without persisting.
    pub async fn create(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        mut obj: Value,
        dry_run: bool,
        owner: Ownership<'_>,
    ) -> ApiResult<Value> {
        check_type_meta(def, &mut obj)?;
        set_namespace(def, ns, &mut obj)?;
        let m = meta_mut(&mut obj);
        let name = m
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let name = if name.is_empty() {
            match m
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|g| !g.is_empty())
            {
                Some(g) => {
                    let n = format!("{g}{}", random_suffix());
                    m.insert("name".into(), json!(n));
                    n
                }
                None => {
                    return Err(ApiError::invalid(
                        def,
                        "",
                        vec![Cause {
                            reason: "FieldValueRequired",
                            message: "Required value: name or generateName is required".into(),
                            field: "metadata.name".into(),
                        }],
                    ))
                }
            }
        } else {
            name
        };
        for field in [
            "resourceVersion",
            "selfLink",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            m.remove(field);
        }
        m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        m.insert("creationTimestamp".into(), json!(now_rfc3339()));
        if def.strategy.tracks_generation() {
            m.insert("generation".into(), json!(1));
        } else {
            m.remove("generation");
        }
        // Only the fields the kind has are stored, as in Kubernetes; the handler has
        // already reported unknown ones per the request's fieldValidation.
        let mut obj = def
            .strategy
            .decode(&obj)
            .map_err(|e| decode_error(def, &name, &e))?;
        drop_empty_metadata(&mut obj);
        def.strategy.default(&mut obj);
        super::admission::admit_create(self, def, ns, &mut obj).await?;
        def.strategy.prepare_for_create(&mut obj);
        let mut causes = Vec::new();
        if let Some(msg) = def.strategy.validate_name(&name) {
            causes.push(Cause::invalid("metadata.name", &name, msg));
        }
        causes.extend(validation::validate_metadata(&obj));
        causes.extend(def.strategy.validate(&obj));
        if !causes.is_empty() {
            return Err(ApiError::invalid(def, &name, causes));
        }
        if def.namespaced {
            if let Some(ns) = ns {
                self.check_namespace_open(def, ns, &name).await?;
            }
        }
        if let Ownership::Update(manager) = owner {
            meta_mut(&mut obj).remove("managedFields");
            let schema = fieldmanager::schema_for(def);
            fieldmanager::record_update(
                None,
                &mut obj,
                manager,
                &def.api_version(),
                None,
                def.has(Subresource::Status),
                schema.as_ref(),
                &now_rfc3339(),
            );
        }
        let key = def.key(ns, &name);
        let allocated = if def.group.is_empty() && def.plural == "services" && !dry_run {
            self.service_allocate(def, &name, &mut obj, None).await?
        } else {
            Allocated::default()
        };
        if dry_run {
            return Ok(obj);
        }
        let value = encode(&obj);
        match self.store.create(&key, value.clone()).await {
            Ok(rev) => {
                self.remember(key, value, rev, rev);
                set_rv(&mut obj, rev);
                tracing::info!(resource = def.plural, namespace = ns.unwrap_or(""), name = %name, "created");
                Ok(obj)
            }
            Err(e) => {
                self.release(&allocated).await;
                Err(ApiError::from_storage(e, def, &name))
            }
        }
    }

    pub(crate) async fn check_namespace_open(
        &self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
    ) -> ApiResult<()> {
        let state = match self.namespaces.lookup(ns) {
            Some(state) => Some(state),
            None => {
                let nsdef = self.namespaces();
                match self.store.get(&nsdef.key(None, ns)).await? {
                    None => None,
                    Some(kv) if is_deleting(&decode_kv(&kv)?) => Some(NamespaceState::Terminating),
                    Some(_) => Some(NamespaceState::Active),
                }
            }
        };
        match state {
            None => Err(ApiError::not_found_named("namespaces", ns)),
            Some(NamespaceState::Terminating) => Err(ApiError::forbidden(format!(
                "{} {name:?} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                def.group_resource()
            ))),
            Some(NamespaceState::Active) => Ok(()),
        }
    }

    /// Replaces an object (PUT) or one of its subresources.
    pub async fn update(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
        write: Write<'_>,
    ) -> ApiResult<Value> {
        check_type_meta(def, &mut obj)?;
        set_namespace(def, ns, &mut obj)?;
        if let Some(n) = meta_str(&obj, "name") {
            if n != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
        }
        let wanted_rv = rv_of(&obj).map(String::from);
        self.guaranteed_update(def, ns, name, write, |old| {
            if let Some(rv) = &wanted_rv {
                if Some(rv.as_str()) != rv_of(old) {
                    return Err(ApiError::conflict(def, name));
                }
            }
            Ok(obj.clone())
        })
        .await
    }

    /// Applies `mutate` to the current object and writes the result, retrying when
    /// another writer got there first. `mutate` sees the object as stored (with its
    /// resourceVersion) and returns the object the client wants.
    pub async fn guaranteed_update<F>(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        write: Write<'_>,
        mut mutate: F,
    ) -> ApiResult<Value>
    where
        F: FnMut(&Value) -> ApiResult<Value>,
    {
        let Write {
            target,
            owner,
            dry_run,
        } = write;
        let key = def.key(ns, name);
        // A dry run answers from what etcd holds, never from a guess it cannot check.
        let mut guess = if dry_run {
            None
        } else {
            self.last_written.get(&key)
        };
        loop {
            // Everything decided from a guess is provisional: a refusal or a no-op might
            // be the stale guess speaking, so it is decided again from etcd.
            let guessed = guess.is_some();
            let kv = match guess.take() {
                Some(kv) => kv,
                None => self.read_for_update(def, &key, name).await?,
            };
            let attempt = decode_kv(&kv)
                .and_then(|old| Ok((mutate(&old)?, old)))
                .and_then(|(wanted, old)| {
                    Ok((self.prepare_update(def, name, wanted, &old, target)?, old))
                });
            let (mut new, old) = match attempt {
                Ok(pair) => pair,
                Err(_) if guessed => continue,
                Err(e) => return Err(e),
            };
            if let Ownership::Update(_) = owner {
                // Managed fields are the server's record, not something a client edits.
                copy_metadata_field(&mut new, &old, "managedFields");
            }
            if same_object(&new, &old) {
                if guessed {
                    continue;
                }
                return Ok(old);
            }
            if let Ownership::Update(manager) = owner {
                let schema = fieldmanager::schema_for(def);
                let subresource = (target == UpdateTarget::Status).then_some("status");
                fieldmanager::record_update(
                    Some(&old),
                    &mut new,
                    manager,
                    &def.api_version(),
                    subresource,
                    def.has(Subresource::Status),
                    schema.as_ref(),
                    &now_rfc3339(),
                );
            }
            let allocated = if def.group.is_empty() && def.plural == "services" && !dry_run {
                match self.service_allocate(def, name, &mut new, Some(&old)).await {
                    Ok(allocated) => allocated,
                    // Allocation refused against a stale guess: decide again from etcd.
                    Err(_) if guessed => continue,
                    Err(e) => return Err(e),
                }
            } else {
                Allocated::default()
            };
            if dry_run {
                return Ok(new);
            }
            if is_deleting(&new)
                && !has_finalizers(&new)
                && !namespace_has_spec_finalizers(def, &new)
            {
                // The last finalizer is gone: the deletion the client asked for earlier
                // completes now.
                match self.store.delete(&key, Some(kv.mod_revision)).await {
                    Ok(_) => {
                        self.last_written.forget(&key);
                        self.after_delete(def, &new).await;
                        return Ok(new);
                    }
                    Err(storage::Error::Conflict { .. }) => continue,
                    Err(storage::Error::NotFound { .. }) if guessed => continue,
                    Err(e) => return Err(ApiError::from_storage(e, def, name)),
                }
            }
            match self.write_over(&key, &kv, &new).await {
                Ok(rev) => {
                    self.release_replaced(def, &old, &new).await;
                    set_rv(&mut new, rev);
                    return Ok(new);
                }
                Err(storage::Error::Conflict { .. }) => {
                    self.release(&allocated).await;
                    continue;
                }
                Err(storage::Error::NotFound { .. }) if guessed => {
                    self.release(&allocated).await;
                    continue;
                }
                Err(e) => {
                    self.release(&allocated).await;
                    return Err(ApiError::from_storage(e, def, name));
                }
            }
        }
    }

    /// Turns what the client sent into the object to store: immutable metadata kept,
    /// status or spec kept depending on the target, defaults, validation, generation.
    fn prepare_update(
        &self,
        def: &ResourceDef,
        name: &str,
        wanted: Value,
        old: &Value,
        target: UpdateTarget,
    ) -> ApiResult<Value> {
        let mut new = match target {
            UpdateTarget::Main => {
                let mut new = wanted;
                def.strategy.prepare_for_update(&mut new, old);
                if def.has(Subresource::Status) {
                    copy_field(&mut new, old, "status");
                }
                new
            }
            UpdateTarget::Status => {
                let mut new = old.clone();
                copy_field(&mut new, &wanted, "status");
                new
            }
            UpdateTarget::Finalize => {
                let mut new = old.clone();
                let finalizers = wanted
                    .pointer("/spec/finalizers")
                    .cloned()
                    .unwrap_or_else(|| json!([]));
                new["spec"]["finalizers"] = finalizers;
                new
            }
        };
        if !new.is_object() {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        }
        let old_meta = meta(old).cloned().unwrap_or_default();
        let m = meta_mut(&mut new);
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match old_meta.get(field) {
                Some(v) => m.insert(field.into(), v.clone()),
                None => m.remove(field),
            };
        }
        m.remove("selfLink");
        if let (Some(k), Some(v)) = (old.get("kind"), old.get("apiVersion")) {
            new["kind"] = k.clone();
            new["apiVersion"] = v.clone();
        }
        let mut new = def
            .strategy
            .decode(&new)
            .map_err(|e| decode_error(def, name, &e))?;
        drop_empty_metadata(&mut new);
        def.strategy.default(&mut new);
        if is_deleting(old) {
            // Finalizers may only be removed from an object being deleted.
            let added = meta(&new)
                .and_then(|m| m.get("finalizers"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|f| {
                    !meta(old)
                        .and_then(|m| m.get("finalizers"))
                        .and_then(Value::as_array)
                        .is_some_and(|o| o.contains(f))
                });
            if added {
                return Err(ApiError::invalid(
                    def,
                    name,
                    vec![Cause::forbidden(
                        "metadata.finalizers",
                        "no new finalizers can be added if the object is being deleted",
                    )],
                ));
            }
        }
        let mut causes = validation::validate_metadata(&new);
        causes.extend(def.strategy.validate_update(&new, old));
        if !causes.is_empty() {
            return Err(ApiError::invalid(def, name, causes));
        }
        if def.strategy.tracks_generation() && spec_part(&new) != spec_part(old) {
            let gen = old_meta
                .get("generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut new).insert("generation".into(), json!(gen + 1));
        }
        Ok(new)
    }

    /// Deletes an object, or marks it for deletion when finalizers or a graceful pod
    /// shutdown must run first. Returns the object and whether it is gone already.
    pub async fn delete(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
        dry_run: bool,
    ) -> ApiResult<(Value, bool)> {
        let key = def.key(ns, name);
        if def.group.is_empty()
            && def.plural == "namespaces"
            && SYSTEM_NAMESPACES[..3].contains(&name)
        {
            return Err(ApiError::forbidden(format!(
                "namespaces {name:?} is forbidden: this namespace may not be deleted"
            )));
        }
        loop {
            let kv = self
                .store
                .get(&key)
                .await?
                .ok_or_else(|| ApiError::not_found(def, name))?;
            let old = decode_kv(&kv)?;
            if let Some(pre) = &opts.preconditions {
                if let Some(uid) = &pre.uid {
                    if meta_str(&old, "uid") != Some(uid.as_str()) {
                        return Err(ApiError::conflict_msg(def, name, &format!(
                            "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                            meta_str(&old, "uid").unwrap_or("")
                        )));
                    }
                }
                if let Some(rv) = &pre.resource_version {
                    if rv_of(&old) != Some(rv.as_str()) {
                        return Err(ApiError::conflict_msg(def, name, &format!(
                            "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                            rv_of(&old).unwrap_or("")
                        )));
                    }
                }
            }
            let graceful = self.graceful_deletion(def, &old, opts);
            // Upstream leaves a pod alone while its graceful deletion is pending (unless
            // this delete shortens it or forces it): finalizers are not touched either.
            let forced = opts.grace_period_seconds.is_some_and(|g| g <= 0);
            if graceful.is_none() && !forced && graceful_deletion_pending(def, &old) {
                return Ok((old, false));
            }
            let gc_finalizers = gc_finalizers_for_delete(&old, opts);
            let mut marked = old.clone();
            if let Some(finalizers) = &gc_finalizers {
                let m = meta_mut(&mut marked);
                if finalizers.is_empty() {
                    m.remove("finalizers");
                } else {
                    m.insert("finalizers".into(), json!(finalizers));
                }
            }
            if has_finalizers(&marked)
                || graceful.is_some()
                || namespace_has_spec_finalizers(def, &marked)
            {
                if is_deleting(&old) && graceful.is_none() && gc_finalizers.is_none() {
                    return Ok((old, false));
                }
                let grace = graceful.unwrap_or(0);
                let when = Utc::now() + chrono::TimeDelta::seconds(grace);
                let first_mark = !is_deleting(&old);
                let m = meta_mut(&mut marked);
                if first_mark && graceful.is_none() {
                    // As upstream's markAsDeleting: the deletion is a change of the
                    // object's desired state for kinds that track generations.
                    if let Some(gen) = m.get("generation").and_then(Value::as_i64) {
                        if gen > 0 {
                            m.insert("generation".into(), json!(gen + 1));
                        }
                    }
                }
                if first_mark || graceful.is_some() {
                    m.insert(
                        "deletionTimestamp".into(),
                        json!(when.to_rfc3339_opts(SecondsFormat::Secs, true)),
                    );
                    m.insert("deletionGracePeriodSeconds".into(), json!(grace));
                }
                if def.group.is_empty() && def.plural == "namespaces" {
                    marked["status"]["phase"] = json!("Terminating");
                }
                if dry_run {
                    return Ok((marked, false));
                }
                match self.write_over(&key, &kv, &marked).await {
                    Ok(rev) => {
                        set_rv(&mut marked, rev);
                        tracing::info!(
                            resource = def.plural,
                            namespace = ns.unwrap_or(""),
                            name,
                            "marked for deletion"
                        );
                        return Ok((marked, false));
                    }
                    Err(storage::Error::Conflict { .. }) => continue,
                    Err(e) => return Err(ApiError::from_storage(e, def, name)),
                }
            }
            if dry_run {
                return Ok((old, true));
            }
            match self.store.delete(&key, Some(kv.mod_revision)).await {
                Ok(_) => {
                    self.last_written.forget(&key);
                    self.after_delete(def, &old).await;
                    tracing::info!(
                        resource = def.plural,
                        namespace = ns.unwrap_or(""),
                        name,
                        "deleted"
                    );
                    return Ok((old, true));
                }
                Err(storage::Error::Conflict { .. }) => continue,
                Err(storage::Error::NotFound { .. }) => return Err(ApiError::not_found(def, name)),
                Err(e) => return Err(ApiError::from_storage(e, def, name)),
            }
        }
    }

    /// Pods bound to a node get a grace period for their kubelet to stop them; the
    /// kubelet then deletes them with grace 0. Unbound or finished pods go at once, as
    /// does any pod deleted with `gracePeriodSeconds: 0`.
    fn graceful_deletion(
        &self,
        def: &ResourceDef,
        obj: &Value,
        opts: &DeleteOptions,
    ) -> Option<i64> {
        if !(def.group.is_empty() && def.plural == "pods") {
            return None;
        }
        let bound = obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let finished = matches!(
            obj.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded") | Some("Failed")
        );
        let grace = opts.grace_period_seconds.unwrap_or_else(|| {
            obj.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(30)
        });
        if !bound || finished || grace <= 0 {
            return None;
        }
        // A second delete may shorten the grace period, never lengthen it.
        if let Some(current) = meta(obj)
            .and_then(|m| m.get("deletionGracePeriodSeconds"))
            .and_then(Value::as_i64)
        {
            if grace >= current {
                return None;
            }
        }
        Some(grace)
    }

    /// Deletes every object matching `params`; returns the deleted (or marked) objects.
    pub async fn delete_collection(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        params: &ListParams,
        opts: &DeleteOptions,
        dry_run: bool,
    ) -> ApiResult<(Vec<Value>, Value)> {
        let (items, list_meta) = self.list(def, ns, params).await?;
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let name = meta_str(&item, "name").unwrap_or("").to_string();
            let item_ns = meta_str(&item, "namespace").map(String::from);
            match self
                .delete(def, item_ns.as_deref(), &name, opts, dry_run)
                .await
            {
                Ok((obj, _)) => out.push(obj),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok((out, list_meta))
    }

    /// Server-side apply: merges `config` (the whole intent of its manager) into the
    /// object, creating it when absent. Returns the object and whether it was created.
    pub async fn apply(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        mut config: Value,
        opts: ApplyOptions<'_>,
    ) -> ApiResult<(Value, bool)> {
        let ApplyOptions {
            manager,
            force,
            target,
            dry_run,
        } = opts;
        check_type_meta(def, &mut config)?;
        set_namespace(def, ns, &mut config)?;
        match meta_str(&config, "name") {
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )))
            }
            _ => {
                meta_mut(&mut config).insert("name".into(), json!(name));
            }
        }
        let schema = fieldmanager::schema_for(def);
        let api_version = def.api_version();
        let now = now_rfc3339();
        let applier = fieldmanager::Applier {
            manager,
            api_version: &api_version,
            force,
            subresource: (target == UpdateTarget::Status).then_some("status"),
            has_status: def.has(Subresource::Status),
            now: &now,
        };
        let run = |live: Option<&Value>| {
            applier
                .apply(live, &config, schema.as_ref())
                .map_err(|conflicts| apply_conflict(def, name, &conflicts))
        };
        loop {
            if self.store.get(&def.key(ns, name)).await?.is_none() {
                if target == UpdateTarget::Status {
                    return Err(ApiError::not_found(def, name));
                }
                let mut obj = run(None)?;
                obj["apiVersion"] = config["apiVersion"].clone();
                obj["kind"] = config["kind"].clone();
                match self.create(def, ns, obj, dry_run, Ownership::Applied).await {
                    Ok(created) => return Ok((created, true)),
                    // Someone created it meanwhile: apply to theirs.
                    Err(e) if e.reason == "AlreadyExists" => continue,
                    Err(e) => return Err(e),
                }
            }
            match self
                .guaranteed_update(
                    def,
                    ns,
                    name,
                    Write {
                        target,
                        owner: Ownership::Applied,
                        dry_run,
                    },
                    |old| run(Some(old)),
                )
                .await
            {
                Err(e) if e.code == 404 => continue,
                other => return other.map(|o| (o, false)),
            }
        }
    }

    /// Assigns a pod to a node (`pods/binding`), as the scheduler does. The pod's spec is
    /// otherwise immutable, so this bypasses the update strategy on purpose.
    pub async fn bind_pod(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
        node: &str,
        dry_run: bool,
    ) -> ApiResult<()> {
        let key = def.key(ns, name);
        let mut guess = if dry_run {
            None
        } else {
            self.last_written.get(&key)
        };
        loop {
            let guessed = guess.is_some();
            let kv = match guess.take() {
                Some(kv) => kv,
                None => self.read_for_update(def, &key, name).await?,
            };
            let Ok(mut pod) = decode_kv(&kv) else {
                if guessed {
                    continue;
                }
                return Err(decode_kv(&kv).expect_err("decoding failed just now"));
            };
            let assigned = pod
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
            if guessed && (is_deleting(&pod) || assigned) {
                // Refusals are decided from etcd, not from a possibly stale guess.
                continue;
            }
            if is_deleting(&pod) {
                return Err(ApiError::conflict_msg(
                    def,
                    name,
                    "pod is being deleted, cannot be assigned to a host",
                ));
            }
            if let Some(current) = pod
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
            {
                return Err(ApiError::conflict_msg(
                    def,
                    name,
                    &format!("pod {name} is already assigned to node {current:?}"),
                ));
            }
            pod["spec"]["nodeName"] = json!(node);
            let condition = json!({
                "type": "PodScheduled",
                "status": "True",
                "lastProbeTime": null,
                "lastTransitionTime": now_rfc3339(),
            });
            if !pod.get("status").is_some_and(Value::is_object) {
                pod["status"] = json!({});
            }
            let conditions = pod["status"]
                .as_object_mut()
                .expect("status was just made an object")
                .entry("conditions")
                .or_insert_with(|| json!([]));
            if let Some(list) = conditions.as_array_mut() {
                list.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
                list.push(condition);
            }
            if dry_run {
                return Ok(());
            }
            match self.write_over(&key, &kv, &pod).await {
                Ok(_) => {
                    tracing::info!(namespace = ns.unwrap_or(""), pod = name, node, "bound pod");
                    return Ok(());
                }
                Err(storage::Error::Conflict { .. }) => continue,
                Err(storage::Error::NotFound { .. }) if guessed => continue,
                Err(e) => return Err(ApiError::from_storage(e, def, name)),
            }
        }
    }

    /// Reads the object an update starts from, from etcd; it becomes the next guess.
    async fn read_for_update(
        &self,
        def: &ResourceDef,
        key: &str,
        name: &str,
    ) -> ApiResult<KeyValue> {
        match self.store.get(key).await? {
            Some(kv) => {
                self.last_written.put(kv.clone());
                Ok(kv)
            }
            None => {
                self.last_written.forget(key);
                Err(ApiError::not_found(def, name))
            }
        }
    }

    /// Writes `obj` at `key` on condition that it is still as read in `kv`, and
    /// remembers the write as the next update's guess. Returns the new revision.
    async fn write_over(&self, key: &str, kv: &KeyValue, obj: &Value) -> storage::Result<i64> {
        let value = encode(obj);
        let rev = self
            .store
            .update(key, value.clone(), kv.mod_revision)
            .await?;
        self.remember(key.to_string(), value, kv.create_revision, rev);
        Ok(rev)
    }

    /// Notes a successful write as the next update's guess.
    fn remember(&self, key: String, value: Bytes, create_revision: i64, mod_revision: i64) {
        self.last_written.put(KeyValue {
            key,
            value,
            create_revision,
            mod_revision,
        });
    }

    /// Creates the namespaces every cluster starts with, if missing.
    pub async fn ensure_system_namespaces(&self) -> ApiResult<()> {
        let def = self.namespaces();
        for ns in SYSTEM_NAMESPACES {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            match self
                .create(&def, None, obj, false, Ownership::Update("wasmkube"))
                .await
            {
                Ok(_) => tracing::info!(namespace = ns, "created system namespace"),
                Err(e) if e.reason == "AlreadyExists" => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn after_delete(&self, def: &ResourceDef, obj: &Value) {
        if def.group.is_empty() && def.plural == "services" {
            let mut allocated = Allocated::default();
            collect_allocations(obj, &mut allocated);
            self.release(&allocated).await;
        }
    }

    /// Releases what an update dropped (a ClusterIP, NodePorts no longer listed).
    async fn release_replaced(&self, def: &ResourceDef, old: &Value, new: &Value) {
        if !(def.group.is_empty() && def.plural == "services") {
            return;
        }
        let mut before = Allocated::default();
        let mut after = Allocated::default();
        collect_allocations(old, &mut before);
        collect_allocations(new, &mut after);
        before.ips.retain(|ip| !after.ips.contains(ip));
        before.ports.retain(|p| !after.ports.contains(p));
        self.release(&before).await;
    }

    async fn release(&self, allocated: &Allocated) {
        for ip in &allocated.ips {
            self.allocator.release_ip(ip).await;
        }
        for p in &allocated.ports {
            self.allocator.release_port(*p).await;
        }
    }

    /// Allocates what a Service needs and does not hold yet: a ClusterIP (unless
    /// `None` or ExternalName) and a NodePort per port for NodePort/LoadBalancer
    /// Services. Returns what was newly allocated, so a failed write can give it back.
    async fn service_allocate(
        &self,
        def: &ResourceDef,
        name: &str,
        svc: &mut Value,
        old: Option<&Value>,
    ) -> ApiResult<Allocated> {
        let owner = format!("{}/{}", meta_str(svc, "namespace").unwrap_or(""), name);
        let mut got = Allocated::default();
        let result = self
            .service_allocate_inner(def, name, svc, old, &owner, &mut got)
            .await;
        if let Err(e) = result {
            self.release(&got).await;
            return Err(e);
        }
        Ok(got)
    }

    async fn service_allocate_inner(
        &self,
        def: &ResourceDef,
        name: &str,
        svc: &mut Value,
        old: Option<&Value>,
        owner: &str,
        got: &mut Allocated,
    ) -> ApiResult<()> {
        let svc_type = svc
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        let alloc_err = |field: &str, value: &str, e: AllocError| match e {
            AllocError::Storage(s) => ApiError::from(s),
            other => ApiError::invalid(
                def,
                name,
                vec![Cause::invalid(field, value, other.to_string())],
            ),
        };
        if svc_type != "ExternalName" {
            let old_ip = old
                .and_then(|o| o.pointer("/spec/clusterIP"))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(String::from);
            let wanted = svc
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if wanted != "None" && old_ip.is_none() {
                let requested = if wanted.is_empty() {
                    None
                } else {
                    Some(wanted.parse::<Ipv4Addr>().map_err(|_| {
                        ApiError::invalid(
                            def,
                            name,
                            vec![Cause::invalid(
                                "spec.clusterIP",
                                &wanted,
                                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                            )],
                        )
                    })?)
                };
                let ip = self
                    .allocator
                    .allocate_ip(requested, owner)
                    .await
                    .map_err(|e| alloc_err("spec.clusterIP", &wanted, e))?;
                got.ips.push(ip.to_string());
                svc["spec"]["clusterIP"] = json!(ip.to_string());
                svc["spec"]["clusterIPs"] = json!([ip.to_string()]);
            } else if wanted == "None" {
                svc["spec"]["clusterIPs"] = json!(["None"]);
            }
        }
        let wants_node_ports = matches!(svc_type.as_str(), "NodePort" | "LoadBalancer");
        let old_ports: Vec<u16> = old
            .map(|o| {
                let mut a = Allocated::default();
                collect_allocations(o, &mut a);
                a.ports
            })
            .unwrap_or_default();
        if let Some(ports) = svc.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
            for (i, port) in ports.iter_mut().enumerate() {
                let current = port.get("nodePort").and_then(Value::as_u64).unwrap_or(0) as u16;
                if !wants_node_ports {
                    if let Some(p) = port.as_object_mut() {
                        p.remove("nodePort");
                    }
                    continue;
                }
                if current != 0 && old_ports.contains(&current) {
                    continue;
                }
                let requested = (current != 0).then_some(current);
                let p = self
                    .allocator
                    .allocate_port(requested, owner)
                    .await
                    .map_err(|e| {
                        alloc_err(
                            &format!("spec.ports[{i}].nodePort"),
                            &current.to_string(),
                            e,
                        )
                    })?;
                got.ports.push(p);
                port["nodePort"] = json!(p);
            }
        }
        Ok(())
    }
}

/// Makes `to.metadata[field]` what `from.metadata[field]` is, absent included.
fn copy_metadata_field(to: &mut Value, from: &Value, field: &str) {
    match meta(from).and_then(|m| m.get(field)).cloned() {
        Some(v) => {
            meta_mut(to).insert(field.into(), v);
        }
        None => {
            meta_mut(to).remove(field);
        }
    }
}

/// Makes `to[field]` what `from[field]` is, absent included.
fn copy_field(to: &mut Value, from: &Value, field: &str) {
    match (from.get(field), to.as_object_mut()) {
        (Some(v), Some(o)) => {
            o.insert(field.to_string(), v.clone());
        }
        (None, Some(o)) => {
            o.remove(field);
        }
        _ => {}
    }
}

/// Addresses and ports a Service holds.
#[derive(Debug, Default)]
struct Allocated {
    ips: Vec<String>,
    ports: Vec<u16>,
}

fn collect_allocations(svc: &Value, into: &mut Allocated) {
    if let Some(ip) = svc
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && *s != "None")
    {
        into.ips.push(ip.to_string());
    }
    for p in svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(np) = p.get("nodePort").and_then(Value::as_u64).filter(|n| *n > 0) {
            into.ports.push(np as u16);
        }
    }
}

/// The garbage collector's finalizers: `orphan` (dependents lose their owner reference)
/// and `foregroundDeletion` (dependents go first).
const FINALIZER_ORPHAN: &str = "orphan";
const FINALIZER_FOREGROUND: &str = "foregroundDeletion";

/// The finalizers a delete leaves on `obj` for its propagation policy, as upstream's
/// `deletionFinalizersForGarbageCollection`: an explicit `orphanDependents` or
/// `propagationPolicy` wins, else a GC finalizer already present, else the default
/// (Background for every kind we serve, which needs no finalizer). `None` when the
/// finalizers stay as they are.
fn gc_finalizers_for_delete(obj: &Value, opts: &DeleteOptions) -> Option<Vec<Value>> {
    let current: Vec<Value> = meta(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let has = |f: &str| current.iter().any(|v| v.as_str() == Some(f));
    let policy = match (opts.orphan_dependents, opts.propagation_policy.as_deref()) {
        (Some(true), _) => Some("Orphan"),
        (Some(false), _) => Some("Background"),
        (None, p) => p,
    };
    let (orphan, foreground) = match policy {
        Some("Orphan") => (true, false),
        Some("Foreground") => (false, true),
        Some(_) => (false, false),
        None => {
            // Whichever of the two comes first decides, as upstream checks them in order.
            let first = current.iter().find_map(|v| {
                v.as_str()
                    .filter(|f| *f == FINALIZER_ORPHAN || *f == FINALIZER_FOREGROUND)
            });
            (
                first == Some(FINALIZER_ORPHAN),
                first == Some(FINALIZER_FOREGROUND),
            )
        }
    };
    if orphan == has(FINALIZER_ORPHAN) && foreground == has(FINALIZER_FOREGROUND) {
        return None;
    }
    let mut out: Vec<Value> = current
        .into_iter()
        .filter(|v| {
            !matches!(
                v.as_str(),
                Some(FINALIZER_ORPHAN) | Some(FINALIZER_FOREGROUND)
            )
        })
        .collect();
    if orphan {
        out.push(json!(FINALIZER_ORPHAN));
    }
    if foreground {
        out.push(json!(FINALIZER_FOREGROUND));
    }
    Some(out)
}

/// A pod whose graceful deletion has begun and still runs (its grace period is not 0).
fn graceful_deletion_pending(def: &ResourceDef, obj: &Value) -> bool {
    def.group.is_empty()
        && def.plural == "pods"
        && is_deleting(obj)
        && meta(obj)
            .and_then(|m| m.get("deletionGracePeriodSeconds"))
            .and_then(Value::as_i64)
            .is_some_and(|g| g > 0)
}

/// A namespace is only deleted once its `spec.finalizers` (the namespace controller's
/// `kubernetes` finalizer) are gone too.
fn namespace_has_spec_finalizers(def: &ResourceDef, obj: &Value) -> bool {
    def.group.is_empty()
        && def.plural == "namespaces"
        && obj
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty())
}

/// The value of a field for field selectors: the generic metadata fields, then the kind's.
pub fn field_value(def: &ResourceDef, obj: &Value, field: &str) -> Option<String> {
    match field {
        "metadata.name" => Some(meta_str(obj, "name").unwrap_or("").to_string()),
        "metadata.namespace" if def.namespaced => {
            Some(meta_str(obj, "namespace").unwrap_or("").to_string())
        }
        _ => def.strategy.field_value(obj, field),
    }
}

/// Checks (or fills in) `apiVersion` and `kind`.
fn check_type_meta(def: &ResourceDef, obj: &mut Value) -> ApiResult<()> {
    let Some(map) = obj.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the body of the request must be a JSON object",
        ));
    };
    let want_av = def.api_version();
    match map.get("apiVersion").and_then(Value::as_str) {
        Some(av) if av != want_av => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({want_av})"
            )))
        }
        Some(_) => {}
        None => {
            map.insert("apiVersion".into(), json!(want_av));
        }
    }
    match map.get("kind").and_then(Value::as_str) {
        Some(k) if k != def.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                def.kind
            )))
        }
        Some(_) => {}
        None => {
            map.insert("kind".into(), json!(def.kind));
        }
    }
    Ok(())
}

/// Sets `metadata.namespace` from the URL, refusing a body that names another one.
fn set_namespace(def: &ResourceDef, ns: Option<&str>, obj: &mut Value) -> ApiResult<()> {
    let m = meta_mut(obj);
    if !def.namespaced {
        m.remove("namespace");
        return Ok(());
    }
    let Some(ns) = ns else {
        return Err(ApiError::bad_request(format!(
            "{} must be created in a namespace",
            def.group_resource()
        )));
    };
    match m.get("namespace").and_then(Value::as_str) {
        Some(n) if !n.is_empty() && n != ns => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => {
            m.insert("namespace".into(), json!(ns));
            Ok(())
        }
    }
}

/// The 409 an apply with conflicts gets, worded as Kubernetes does.
fn apply_conflict(def: &ResourceDef, name: &str, conflicts: &[fieldmanager::Conflict]) -> ApiError {
    let n = conflicts.len();
    let message = if n == 1 {
        format!(
            "Apply failed with 1 conflict: conflict with {:?}: {}",
            conflicts[0].manager, conflicts[0].field
        )
    } else {
        let lines: Vec<String> = conflicts
            .iter()
            .map(|c| format!("conflict with {:?}: {}", c.manager, c.field))
            .collect();
        format!("Apply failed with {n} conflicts: {}", lines.join("\n"))
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| {
            json!({
                "reason": "FieldManagerConflict",
                "message": format!("conflict with {:?}", c.manager),
                "field": c.field,
            })
        })
        .collect();
    let mut details = json!({"name": name, "kind": def.plural, "causes": causes});
    if !def.group.is_empty() {
        details["group"] = json!(def.group);
    }
    let mut err = ApiError::new(409, "Conflict", message);
    err.details = Some(details);
    err
}

fn decode_error(def: &ResourceDef, name: &str, err: &str) -> ApiError {
    let what = if name.is_empty() {
        def.kind.to_string()
    } else {
        format!("{} {name:?}", def.kind)
    };
    ApiError::bad_request(format!(
        "{what} in version {:?} cannot be handled as a {}: {err}",
        def.version, def.kind
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_propagation_sets_gc_finalizers_as_upstream() {
        let opts = |policy: Option<&str>, orphan: Option<bool>| DeleteOptions {
            propagation_policy: policy.map(String::from),
            orphan_dependents: orphan,
            ..Default::default()
        };
        let plain = json!({"metadata": {"name": "a", "finalizers": ["x"]}});
        assert_eq!(gc_finalizers_for_delete(&plain, &opts(None, None)), None);
        assert_eq!(
            gc_finalizers_for_delete(&plain, &opts(Some("Background"), None)),
            None
        );
        assert_eq!(
            gc_finalizers_for_delete(&plain, &opts(Some("Orphan"), None)),
            Some(vec![json!("x"), json!("orphan")])
        );
        assert_eq!(
            gc_finalizers_for_delete(&plain, &opts(None, Some(true))),
            Some(vec![json!("x"), json!("orphan")])
        );
        let orphaning = json!({"metadata": {"name": "a", "finalizers": ["orphan"]}});
        // No policy: the finalizer already there decides; an explicit one replaces it.
        assert_eq!(
            gc_finalizers_for_delete(&orphaning, &opts(None, None)),
            None
        );
        assert_eq!(
            gc_finalizers_for_delete(&orphaning, &opts(Some("Foreground"), None)),
            Some(vec![json!("foregroundDeletion")])
        );
        assert_eq!(
            gc_finalizers_for_delete(&orphaning, &opts(Some("Background"), None)),
            Some(vec![])
        );
    }

    #[test]
    fn the_stored_form_leaves_out_the_revision_and_self_link_only() {
        let obj = json!({
            "kind": "Pod",
            "metadata": {"name": "p", "resourceVersion": "7", "selfLink": "/x", "labels": {"a": "b"}},
            "spec": {"resourceVersion": "kept below the top level"}
        });
        let stored: Value = serde_json::from_slice(&encode(&obj)).expect("JSON");
        assert_eq!(
            stored,
            json!({
                "kind": "Pod",
                "metadata": {"name": "p", "labels": {"a": "b"}},
                "spec": {"resourceVersion": "kept below the top level"}
            })
        );
        assert_eq!(encode(&json!([1])), Bytes::from("[1]"));
    }

    #[test]
    fn splices_resource_version_into_top_level_metadata() {
        let raw = br#"{"apiVersion":"v1","kind":"Pod","spec":{"metadata":{"x":1}},"metadata":{"name":"a\"metadata\":{"}}"#;
        let out = with_resource_version(raw, 42).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], "42");
        assert_eq!(v["metadata"]["name"], "a\"metadata\":{");
        assert!(v["spec"]["metadata"].get("resourceVersion").is_none());
        let empty = with_resource_version(br#"{ "metadata" : { } }"#, 7).unwrap();
        let v: Value = serde_json::from_slice(&empty).unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], "7");
        assert!(with_resource_version(br#"{"kind":"X"}"#, 1).is_none());
    }
}

/// Updates start from the last write this server made; these check that a stale guess
/// (another API server wrote meanwhile) never changes an outcome.
#[cfg(test)]
mod guess_tests {
    use super::*;
    use crate::storage::etcd::tests::{test_etcd, TestEtcd};

    struct TwoServers {
        a: Objects,
        b: Objects,
        _etcd: TestEtcd,
    }

    async fn two_servers() -> TwoServers {
        let etcd = test_etcd().await;
        let server = || {
            let store: Arc<dyn Store> = etcd.store.clone();
            let cidr = "127.97.0.0/16".parse().expect("cidr");
            let allocator = ServiceAllocator::new(store.clone(), cidr, (30000, 32767));
            Objects::new(store, Registry::builtin(), allocator)
        };
        let (a, b) = (server(), server());
        a.ensure_system_namespaces().await.expect("namespaces");
        TwoServers { a, b, _etcd: etcd }
    }

    impl TwoServers {
        /// Creates configMap default/cm (k=1) through server a.
        async fn config_map_created_on_a(&self) -> (Arc<ResourceDef>, Option<&'static str>) {
            let cms = def(&self.a, "configmaps");
            let ns = Some("default");
            self.a
                .create(
                    &cms,
                    ns,
                    config_map("1", None),
                    false,
                    Ownership::Update("test"),
                )
                .await
                .expect("create on a");
            (cms, ns)
        }
    }

    fn def(o: &Objects, plural: &str) -> Arc<ResourceDef> {
        o.registry.lookup("", "v1", plural).expect("registered")
    }

    fn write() -> Write<'static> {
        Write {
            target: UpdateTarget::Main,
            owner: Ownership::Update("test"),
            dry_run: false,
        }
    }

    fn config_map(value: &str, rv: Option<&str>) -> Value {
        let mut cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cm"}, "data": {"k": value}
        });
        if let Some(rv) = rv {
            cm["metadata"]["resourceVersion"] = json!(rv);
        }
        cm
    }

    async fn stored_data(o: &Objects) -> (String, String) {
        let cm = o
            .get(&def(o, "configmaps"), Some("default"), "cm")
            .await
            .expect("get");
        (
            cm["data"]["k"].as_str().unwrap_or_default().to_string(),
            rv_of(&cm).unwrap_or_default().to_string(),
        )
    }

    #[tokio::test]
    async fn a_stale_guess_neither_refuses_nor_skips_an_update() {
        let t = two_servers().await;
        let (cms, ns) = t.config_map_created_on_a().await;
        // b changes it: a's memory of its own create is now stale.
        t.b.update(&cms, ns, "cm", config_map("2", None), write())
            .await
            .expect("update on b");
        let (_, rv_b) = stored_data(&t.a).await;
        // A precondition on b's resourceVersion holds, though a's guess says otherwise.
        let updated =
            t.a.update(&cms, ns, "cm", config_map("3", Some(&rv_b)), write())
                .await
                .expect("a precondition that holds in etcd is met");
        assert_eq!(updated["data"]["k"], "3");
        // Back to "3": equal to a's now stale memory of its last write, yet a change.
        t.b.update(&cms, ns, "cm", config_map("4", None), write())
            .await
            .expect("update on b");
        t.a.update(&cms, ns, "cm", config_map("3", None), write())
            .await
            .expect("update on a");
        assert_eq!(stored_data(&t.b).await.0, "3");
        // A precondition on a resourceVersion that is gone is still refused.
        let err =
            t.a.update(&cms, ns, "cm", config_map("5", Some(&rv_b)), write())
                .await
                .expect_err("stale precondition");
        assert_eq!(err.code, 409, "{err:?}");
    }

    #[tokio::test]
    async fn an_object_deleted_elsewhere_is_not_found() {
        let t = two_servers().await;
        let (cms, ns) = t.config_map_created_on_a().await;
        t.b.delete(&cms, ns, "cm", &DeleteOptions::default(), false)
            .await
            .expect("delete on b");
        let err =
            t.a.update(&cms, ns, "cm", config_map("2", None), write())
                .await
                .expect_err("the object is gone");
        assert_eq!(err.code, 404, "{err:?}");
    }

    #[tokio::test]
    async fn empty_metadata_lists_and_maps_are_left_out() {
        let t = two_servers().await;
        let cms = def(&t.a, "configmaps");
        let ns = Some("default");
        let created =
            t.a.create(
                &cms,
                ns,
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "fin", "labels": {}, "annotations": {},
                                    "finalizers": ["example.com/keep"]}}),
                false,
                Ownership::Update("test"),
            )
            .await
            .expect("create");
        assert!(created["metadata"].get("labels").is_none(), "{created}");
        assert!(
            created["metadata"].get("annotations").is_none(),
            "{created}"
        );
        let mut without = created.clone();
        without["metadata"]["finalizers"] = json!([]);
        let updated =
            t.a.update(&cms, ns, "fin", without, write())
                .await
                .expect("update");
        assert!(
            updated["metadata"].get("finalizers").is_none(),
            "removing the last finalizer leaves no empty list: {updated}"
        );
    }

    #[tokio::test]
    async fn binding_refuses_a_pod_bound_elsewhere_and_binds_a_fresh_one() {
        let t = two_servers().await;
        let pods = def(&t.a, "pods");
        let ns = Some("default");
        let pod = |name: &str| {
            json!({
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                "spec": {"containers": [{"name": "c", "image": "file:///x.wasm"}]}
            })
        };
        let account =
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}});
        t.a.create(
            &def(&t.a, "serviceaccounts"),
            ns,
            account,
            false,
            Ownership::Update("test"),
        )
        .await
        .expect("the namespace's default ServiceAccount");
        for name in ["p1", "p2"] {
            t.a.create(&pods, ns, pod(name), false, Ownership::Update("test"))
                .await
                .expect("create on a");
        }
        t.b.bind_pod(&pods, ns, "p1", "n1", false)
            .await
            .expect("bind on b");
        let err =
            t.a.bind_pod(&pods, ns, "p1", "n2", false)
                .await
                .expect_err("already bound");
        assert!(
            err.message.contains("already assigned to node \"n1\""),
            "{err:?}"
        );
        t.a.bind_pod(&pods, ns, "p2", "n2", false)
            .await
            .expect("bind on a");
        let p2 = t.b.get(&pods, ns, "p2").await.expect("get");
        assert_eq!(p2["spec"]["nodeName"], "n2");
        // The status write after binding starts from the bound pod, not the created one.
        let mut status = p2.clone();
        status["status"]["phase"] = json!("Running");
        let target = Write {
            target: UpdateTarget::Status,
            ..write()
        };
        let written =
            t.a.update(&pods, ns, "p2", status, target)
                .await
                .expect("status");
        assert_eq!(written["spec"]["nodeName"], "n2");
        assert_eq!(written["status"]["phase"], "Running");
    }
}
