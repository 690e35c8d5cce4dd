//! Response encodings chosen from the `Accept` header: plain JSON objects and lists,
//! `meta.k8s.io/v1` Tables (what `kubectl get` asks for), and PartialObjectMetadata
//! (what metadata-only informers ask for).

use chrono::Utc;
use serde_json::{json, Map, Value};

use super::objects::{decode_stored, metadata_with_resource_version, with_resource_version};
use super::request::Query;
use super::status::{ApiError, ApiResult};
use crate::registry::{Projection, ResourceDef};
use crate::storage::KeyValue;

/// How to encode objects in a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The objects as stored.
    Json,
    /// A `meta.k8s.io/v1` Table.
    Table(IncludeObject),
    /// `PartialObjectMetadata` / `PartialObjectMetadataList`.
    PartialMetadata,
}

/// What a Table row's `object` carries (`?includeObject=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

/// One media type from an Accept header with its parameters.
struct MediaRange<'a> {
    essence: &'a str,
    params: Vec<(&'a str, &'a str)>,
}

fn media_ranges(accept: &str) -> Vec<MediaRange<'_>> {
    accept
        .split(',')
        .map(|part| {
            let mut pieces = part.split(';').map(str::trim);
            let essence = pieces.next().unwrap_or("");
            let params = pieces
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.trim(), v.trim()))
                .collect();
            MediaRange { essence, params }
        })
        .collect()
}

fn param<'a>(m: &MediaRange<'a>, key: &str) -> Option<&'a str> {
    m.params.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// Picks the response format from the Accept header, in the client's order of preference.
pub fn negotiate(accept: Option<&str>, query: &Query) -> ApiResult<Format> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Ok(Format::Json);
    };
    let mut saw_unsupported = false;
    for m in media_ranges(accept) {
        let json_like = matches!(
            m.essence,
            "application/json" | "application/*" | "*/*" | "application/yaml"
        );
        if !json_like {
            saw_unsupported = true;
            continue;
        }
        match param(&m, "as") {
            None => return Ok(Format::Json),
            Some("Table") if param(&m, "g") == Some("meta.k8s.io") => {
                let include = match query.get("includeObject") {
                    Some("None") => IncludeObject::None,
                    Some("Object") => IncludeObject::Object,
                    _ => IncludeObject::Metadata,
                };
                return Ok(Format::Table(include));
            }
            Some("PartialObjectMetadata") | Some("PartialObjectMetadataList")
                if param(&m, "g") == Some("meta.k8s.io") =>
            {
                return Ok(Format::PartialMetadata)
            }
            Some(_) => saw_unsupported = true,
        }
    }
    if saw_unsupported {
        Err(ApiError::not_acceptable(format!(
            "only the following media types are accepted: application/json, application/json;as=Table;v=v1;g=meta.k8s.io (asked for {accept:?})"
        )))
    } else {
        Ok(Format::Json)
    }
}

/// True when the client asked for aggregated discovery (`as=APIGroupDiscoveryList`).
pub fn wants_aggregated_discovery(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    for m in media_ranges(accept) {
        if m.essence != "application/json" {
            continue;
        }
        match param(&m, "as") {
            Some("APIGroupDiscoveryList") => {
                return param(&m, "g") == Some("apidiscovery.k8s.io")
                    && param(&m, "v") == Some("v2")
            }
            None => return false,
            Some(_) => continue,
        }
    }
    false
}

/// The PartialObjectMetadata of an object.
pub fn partial_metadata(obj: &Value) -> Value {
    serde_json::to_value(PartialMetadataRef::of(obj)).unwrap_or_default()
}

/// What a PartialObjectMetadata reads of an object.
pub static METADATA_FIELDS: Projection = Projection::Keys(&[("metadata", Projection::All)]);

/// The PartialObjectMetadata of a listed object as JSON text, its metadata cut from the
/// stored text; `obj` (its metadata decoded) when the text has none to cut.
pub fn partial_metadata_text(kv: &KeyValue, obj: &Value) -> Vec<u8> {
    match metadata_with_resource_version(&kv.value, kv.mod_revision) {
        Some(metadata) => {
            let mut out = Vec::with_capacity(metadata.len() + 80);
            out.extend_from_slice(PARTIAL_METADATA_HEAD);
            out.extend_from_slice(&metadata);
            out.push(b'}');
            out
        }
        None => serde_json::to_vec(&PartialMetadataRef::of(obj)).unwrap_or_default(),
    }
}

/// A PartialObjectMetadata's text up to its metadata object.
const PARTIAL_METADATA_HEAD: &[u8] =
    b"{\"kind\":\"PartialObjectMetadata\",\"apiVersion\":\"meta.k8s.io/v1\",\"metadata\":";

/// A PartialObjectMetadata that borrows the object's metadata, so it can be encoded
/// without a copy (the metadata, managedFields included, is most of a row's bytes).
#[derive(serde::Serialize)]
struct PartialMetadataRef<'a> {
    kind: &'static str,
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    /// An object without metadata gets `{}`.
    #[serde(serialize_with = "metadata_or_empty")]
    metadata: Option<&'a Value>,
}

impl<'a> PartialMetadataRef<'a> {
    fn of(obj: &'a Value) -> Self {
        PartialMetadataRef {
            kind: "PartialObjectMetadata",
            api_version: "meta.k8s.io/v1",
            metadata: obj.get("metadata"),
        }
    }
}

fn metadata_or_empty<S: serde::Serializer>(m: &Option<&Value>, s: S) -> Result<S::Ok, S::Error> {
    match m {
        Some(v) => serde::Serialize::serialize(v, s),
        None => serde::Serialize::serialize(&Map::new(), s),
    }
}

/// A Table row, borrowing its object.
#[derive(serde::Serialize)]
struct RowRef<'a> {
    cells: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    object: Option<RowObject<'a>>,
}

/// What a row carries of its object (`?includeObject=`).
#[derive(serde::Serialize)]
#[serde(untagged)]
enum RowObject<'a> {
    Metadata(PartialMetadataRef<'a>),
    Whole(&'a Value),
}

impl<'a> RowRef<'a> {
    fn of(
        def: &ResourceDef,
        obj: &'a Value,
        include: IncludeObject,
        now: chrono::DateTime<Utc>,
    ) -> Self {
        RowRef {
            cells: def.strategy.cells(obj, now),
            object: match include {
                IncludeObject::None => None,
                IncludeObject::Metadata => Some(RowObject::Metadata(PartialMetadataRef::of(obj))),
                IncludeObject::Object => Some(RowObject::Whole(obj)),
            },
        }
    }
}

/// One Table row for `obj` as JSON text, encoded straight from the object (a list's
/// rows are rendered to text as they are made).
pub fn table_row_json(
    def: &ResourceDef,
    obj: &Value,
    include: IncludeObject,
    now: chrono::DateTime<Utc>,
) -> Vec<u8> {
    // Encoding a Value into memory cannot fail.
    serde_json::to_vec(&RowRef::of(def, obj, include, now)).unwrap_or_default()
}

/// One Table row as JSON text for an object listed with
/// [`Objects::list_stored`](super::objects::Objects::list_stored): the cells from `obj`
/// (decoded as far as the strategy's `cell_fields`), the row's object cut from the
/// stored text rather than encoded again.
pub fn table_row_text(
    def: &ResourceDef,
    kv: &KeyValue,
    obj: &Value,
    include: IncludeObject,
    now: chrono::DateTime<Utc>,
) -> Vec<u8> {
    let object = match include {
        IncludeObject::None => Some(Vec::new()),
        IncludeObject::Metadata => metadata_with_resource_version(&kv.value, kv.mod_revision),
        IncludeObject::Object => with_resource_version(&kv.value, kv.mod_revision),
    };
    let Some(object) = object else {
        // Text without a metadata object: render from a full decode instead.
        return match decode_stored(&kv.value, kv.mod_revision) {
            Ok(full) => table_row_json(def, &full, include, now),
            Err(_) => table_row_json(def, obj, include, now),
        };
    };
    let cells = serde_json::to_vec(&def.strategy.cells(obj, now)).unwrap_or_default();
    let mut row = Vec::with_capacity(cells.len() + object.len() + 96);
    row.extend_from_slice(b"{\"cells\":");
    row.extend_from_slice(&cells);
    match include {
        IncludeObject::None => {}
        IncludeObject::Metadata => {
            row.extend_from_slice(b",\"object\":");
            row.extend_from_slice(PARTIAL_METADATA_HEAD);
            row.extend_from_slice(&object);
            row.push(b'}');
        }
        IncludeObject::Object => {
            row.extend_from_slice(b",\"object\":");
            row.extend_from_slice(&object);
        }
    }
    row.push(b'}');
    row
}

/// One Table row for `obj`; `now` renders ages.
pub fn table_row(
    def: &ResourceDef,
    obj: &Value,
    include: IncludeObject,
    now: chrono::DateTime<Utc>,
) -> Value {
    serde_json::to_value(RowRef::of(def, obj, include, now)).unwrap_or_default()
}

/// A Table of rows already rendered; `list_meta` is the list's metadata.
pub fn table_of_rows(def: &ResourceDef, rows: Vec<Value>, list_meta: Value) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": def.strategy.columns(),
        "rows": rows,
    })
}

/// A Table of `objects`.
pub fn table(
    def: &ResourceDef,
    objects: &[Value],
    list_meta: Value,
    include: IncludeObject,
) -> Value {
    let now = Utc::now();
    let rows = objects
        .iter()
        .map(|o| table_row(def, o, include, now))
        .collect();
    table_of_rows(def, rows, list_meta)
}

/// A PartialObjectMetadataList of already converted items.
pub fn partial_metadata_list(items: Vec<Value>, list_meta: Value) -> Value {
    json!({
        "kind": "PartialObjectMetadataList",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "items": items,
    })
}

/// Encodes one object in `format`.
pub fn object(def: &ResourceDef, obj: Value, format: Format) -> Value {
    match format {
        Format::Json => obj,
        Format::PartialMetadata => partial_metadata(&obj),
        Format::Table(include) => {
            let rv = obj
                .pointer("/metadata/resourceVersion")
                .cloned()
                .unwrap_or(Value::Null);
            let mut meta = Map::new();
            if !rv.is_null() {
                meta.insert("resourceVersion".into(), rv);
            }
            table(
                def,
                std::slice::from_ref(&obj),
                Value::Object(meta),
                include,
            )
        }
    }
}

/// Encodes a list in `format`.
pub fn list(def: &ResourceDef, items: Vec<Value>, list_meta: Value, format: Format) -> Value {
    match format {
        Format::Json => json!({
            "kind": def.list_kind(),
            "apiVersion": def.api_version(),
            "metadata": list_meta,
            "items": items,
        }),
        Format::PartialMetadata => {
            partial_metadata_list(items.iter().map(partial_metadata).collect(), list_meta)
        }
        Format::Table(include) => table(def, &items, list_meta, include),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_kubectl_accept_headers() {
        let q = Query::default();
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(
            negotiate(Some(kubectl), &q).unwrap(),
            Format::Table(IncludeObject::Metadata)
        );
        assert_eq!(
            negotiate(Some("application/json"), &q).unwrap(),
            Format::Json
        );
        assert_eq!(negotiate(None, &q).unwrap(), Format::Json);
        assert_eq!(
            negotiate(
                Some("application/vnd.kubernetes.protobuf,application/json"),
                &q
            )
            .unwrap(),
            Format::Json
        );
        assert!(negotiate(Some("application/vnd.kubernetes.protobuf"), &q).is_err());
        let disco = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert!(wants_aggregated_discovery(Some(disco)));
        assert!(!wants_aggregated_discovery(Some("application/json")));
    }

    #[test]
    fn table_rows_carry_the_cells_and_what_include_object_asks_for() {
        let registry = crate::registry::Registry::builtin();
        let def = registry.lookup("", "v1", "pods").expect("pods");
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "namespace": "prod", "creationTimestamp": "2025-01-01T11:00:00Z",
                         "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
            "spec": {"containers": [{"name": "c", "image": "i"}], "nodeName": "n1"},
            "status": {"phase": "Running"}
        });
        let now = Utc::now();
        let cells = json!(def.strategy.cells(&pod, now));
        let partial = json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": pod["metadata"],
        });
        for (include, object) in [
            (IncludeObject::None, None),
            (IncludeObject::Metadata, Some(partial.clone())),
            (IncludeObject::Object, Some(pod.clone())),
        ] {
            let mut want = json!({"cells": cells});
            if let Some(o) = object {
                want["object"] = o;
            }
            let text: Value = serde_json::from_slice(&table_row_json(&def, &pod, include, now))
                .expect("a row is JSON");
            assert_eq!(text, want, "{include:?} as text");
            assert_eq!(table_row(&def, &pod, include, now), want, "{include:?}");
        }
        assert_eq!(cells[0], "web");
        assert_eq!(partial_metadata(&pod), partial);

        // Rows cut from the stored text (no resourceVersion in it) say the same, with
        // the key's revision as the resourceVersion.
        let kv = KeyValue {
            key: "/registry/pods/prod/web".into(),
            value: serde_json::to_vec(&pod).expect("encodes").into(),
            create_revision: 5,
            mod_revision: 9,
        };
        let mut stored_pod = pod.clone();
        stored_pod["metadata"]["resourceVersion"] = json!("9");
        let projected = crate::registry::projection::decode(&kv.value, def.strategy.cell_fields())
            .expect("decodes");
        for include in [
            IncludeObject::None,
            IncludeObject::Metadata,
            IncludeObject::Object,
        ] {
            let cut: Value =
                serde_json::from_slice(&table_row_text(&def, &kv, &projected, include, now))
                    .expect("a row is JSON");
            assert_eq!(
                cut,
                table_row(&def, &stored_pod, include, now),
                "{include:?}"
            );
        }
        let metadata: Value =
            serde_json::from_slice(&partial_metadata_text(&kv, &projected)).expect("JSON");
        assert_eq!(metadata, partial_metadata(&stored_pod));
        // Text without a metadata object falls back to encoding what was decoded.
        let bare = KeyValue {
            value: br#"{"kind":"Pod","spec":{}}"#.to_vec().into(),
            ..kv
        };
        let row: Value = serde_json::from_slice(&table_row_text(
            &def,
            &bare,
            &json!({"kind": "Pod", "spec": {}}),
            IncludeObject::Metadata,
            now,
        ))
        .expect("JSON");
        assert_eq!(row["object"]["metadata"], json!({}));
        assert_eq!(
            partial_metadata(&json!({"kind": "Pod"}))["metadata"],
            json!({})
        );
    }
}
