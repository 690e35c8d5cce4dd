//! Patch application: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic
//! merge patch (`application/strategic-merge-patch+json`).
//!
//! Strategic merge follows upstream's `strategicpatch.StrategicMergePatch`, driven by the
//! type table in [`crate::registry::schema`]:
//! - maps and objects merge key by key; `null` deletes a key;
//! - a list whose field has `patchStrategy:"merge"` merges: lists of objects by the
//!   field's `patchMergeKey` (an item without it is an error), lists of scalars as sets;
//!   any other list in the patch replaces the stored one;
//! - directives: `$patch: replace` (a map, or a list given a `{"$patch": "replace"}`
//!   item, is replaced by the rest of the patch), `$patch: delete` (on a map: removes it;
//!   on a list item: removes the stored items with that key), `$patch: merge` (the
//!   default, accepted), `$retainKeys` (stored keys not listed are dropped; every key the
//!   patch sets must be listed), `$setElementOrder/<list>` (the order of a merged list)
//!   and `$deleteFromPrimitiveList/<list>` (values removed from a list of scalars). Any
//!   other `$`-key, or `$patch` value, is an error.
//! - order of a merged list: items named in the patch keep the patch's relative order,
//!   items only on the server keep theirs, and the two are interleaved by their stored
//!   positions, a new item going before the stored items that follow it. With
//!   `$setElementOrder/<list>` its order wins for the items it names (kubectl sends it on
//!   every `apply`).
//!
//! Where this deliberately differs from upstream (each makes a patch that upstream
//! rejects or mangles do the evident thing): `$patch: merge` is accepted rather than
//! rejected; `$patch: delete` on a stored map removes the key instead of leaving `{}`;
//! a `$patch: replace` map or list for a field not yet stored is created instead of
//! dropped; directives are stripped from values the patch adds; and
//! `$deleteFromPrimitiveList` deletes whatever the list's strategy.

use serde_json::{Map, Value};

use super::status::{ApiError, ApiResult};
use crate::registry::schema::{FieldKind, PatchStrategy, TypeRef};

/// The patch formats a client can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            _ => None,
        }
    }
}

/// Applies `patch` to `doc`. `root` is the type of `doc` (see
/// [`crate::registry::schema::root`]); strategic merge needs it, and is refused (415, as
/// upstream does for custom resources) for a type the table does not know.
pub fn apply(
    doc: &Value,
    patch: &Value,
    kind: PatchType,
    root: Option<TypeRef>,
) -> ApiResult<Value> {
    let mut out = doc.clone();
    match kind {
        PatchType::Merge => json_patch::merge(&mut out, patch),
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(&mut out, &ops).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?;
        }
        PatchType::Strategic => {
            let Some(root) = root else {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types \
                     include: application/json-patch+json, application/merge-patch+json",
                ));
            };
            out = strategic_merge(doc, patch, root).map_err(SmpError::into_api_error)?;
        }
    }
    Ok(out)
}

/// Why a strategic merge patch could not be applied. Messages follow upstream's
/// `mergepatch` errors, which kubectl prints verbatim.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SmpError {
    /// The patch (or the document) is not a JSON object.
    #[error("a strategic merge patch must be a JSON object")]
    NotAnObject,
    /// `$patch` with a value other than replace, delete or merge.
    #[error("unknown patch type: {value} in {container}: {patch}")]
    UnknownPatchType {
        value: String,
        container: &'static str,
        patch: String,
    },
    /// A `$`-key that is no directive.
    #[error("unknown directive {0:?} in the patch")]
    UnknownDirective(String),
    /// An item of a merging list lacks the merge key.
    #[error("map: {item} does not contain declared merge key: {key}")]
    NoMergeKey { item: String, key: String },
    /// A merging list of objects whose field declares no merge key.
    #[error("cannot merge lists without merge key for {0}")]
    NoMergeKeyDeclared(String),
    /// A merging list mixes objects and scalars, or scalars of different types.
    #[error("list element types are not identical: {0}")]
    MixedList(String),
    /// A merging list holds lists.
    #[error("lists of lists are not supported")]
    ListOfLists,
    /// A list directive names a field that is not a list.
    #[error("expected a list, but received {0}")]
    NotAList(String),
    /// `$retainKeys` is not a list, or the patch sets a key it does not list.
    #[error("invalid patch format of retainKeys")]
    BadRetainKeys,
    /// `$setElementOrder/<list>` is not a list.
    #[error("invalid patch format of setElementOrder list")]
    BadSetElementOrder,
    /// The patch list names items in another order than `$setElementOrder`, or items
    /// it does not name.
    #[error("the order in patch list:\n{patch}\n doesn't match $setElementOrder list:\n{order}")]
    OrderMismatch { patch: String, order: String },
    /// `$deleteFromPrimitiveList/<list>` is not a list.
    #[error("invalid patch format of primitive list")]
    BadDeleteFromPrimitiveList,
}

impl SmpError {
    /// The API error upstream answers with (`interpretStrategicMergePatchError`): 422 for
    /// lists of lists, 400 for the rest.
    pub fn into_api_error(self) -> ApiError {
        match self {
            SmpError::ListOfLists => ApiError::new(422, "Invalid", self.to_string()),
            other => ApiError::bad_request(other.to_string()),
        }
    }
}

/// Applies a strategic merge patch to `doc`, an object of type `root`.
pub fn strategic_merge(doc: &Value, patch: &Value, root: TypeRef) -> Result<Value, SmpError> {
    let (Value::Object(doc), Value::Object(patch)) = (doc, patch) else {
        return Err(SmpError::NotAnObject);
    };
    let merged = merge_map(doc.clone(), patch.clone(), Schema::Struct(root))?;
    // A whole-object `$patch: delete` leaves an empty object, as upstream; validation then
    // refuses it.
    Ok(Value::Object(merged.unwrap_or_default()))
}

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";

/// What the table says about the value being merged.
#[derive(Debug, Clone, Copy)]
enum Schema {
    /// An object of a known type.
    Struct(TypeRef),
    /// A map from strings to values of this type (`None`: scalars).
    MapOf(Option<TypeRef>),
    /// Not described (a scalar type's JSON, or a field the type does not have): maps
    /// merge, lists are replaced.
    Untyped,
}

/// What the table says about one key of a map.
#[derive(Debug, Clone, Copy)]
struct Child {
    /// The key's value.
    schema: Schema,
    /// For a list: how it merges, and the schema of its items.
    strategy: PatchStrategy,
    item: Schema,
}

impl Child {
    const UNTYPED: Child = Child {
        schema: Schema::Untyped,
        strategy: PatchStrategy::Default,
        item: Schema::Untyped,
    };
}

impl Schema {
    fn child(self, key: &str) -> Child {
        let ty = match self {
            Schema::Struct(t) => t,
            Schema::MapOf(Some(t)) => {
                return Child {
                    schema: Schema::Struct(t),
                    ..Child::UNTYPED
                }
            }
            Schema::MapOf(None) | Schema::Untyped => return Child::UNTYPED,
        };
        let Some(field) = ty.field(key) else {
            return Child::UNTYPED;
        };
        match field.kind() {
            FieldKind::Scalar => Child::UNTYPED,
            FieldKind::Object(t) => Child {
                schema: Schema::Struct(t),
                ..Child::UNTYPED
            },
            FieldKind::Map { value, .. } => Child {
                schema: Schema::MapOf(value),
                ..Child::UNTYPED
            },
            FieldKind::List { elem, .. } => Child {
                schema: Schema::Untyped,
                strategy: field.patch_strategy(),
                item: elem.map_or(Schema::Untyped, Schema::Struct),
            },
        }
    }
}

/// Merges `patch` into `original` (empty when the map is new). `None`: the patch deletes
/// the map.
fn merge_map(
    mut original: Map<String, Value>,
    mut patch: Map<String, Value>,
    schema: Schema,
) -> Result<Option<Map<String, Value>>, SmpError> {
    if let Some(directive) = patch.shift_remove(DIRECTIVE) {
        match directive.as_str() {
            Some("replace") => return merge_map(Map::new(), patch, schema),
            Some("delete") => return Ok(None),
            Some("merge") => {}
            _ => {
                return Err(SmpError::UnknownPatchType {
                    value: render(&directive),
                    container: "map",
                    patch: render(&Value::Object(patch)),
                })
            }
        }
    }
    apply_retain_keys(&mut original, &mut patch)?;
    apply_set_element_orders(&mut original, &mut patch, schema)?;

    for (key, pval) in patch {
        if let Some(list) = key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            let Value::Array(values) = pval else {
                return Err(SmpError::BadDeleteFromPrimitiveList);
            };
            if let Some(Value::Array(items)) = original.get_mut(list) {
                items.retain(|i| !values.iter().any(|v| json_eq(i, v)));
            }
            continue;
        }
        if key.starts_with('$') {
            return Err(SmpError::UnknownDirective(key));
        }
        if pval.is_null() {
            original.shift_remove(&key);
            continue;
        }
        let child = schema.child(&key);
        let existing = original.get_mut(&key).map(std::mem::take);
        match merge_value(existing, pval, child)? {
            // `insert` on a present key keeps its position.
            Some(v) => {
                original.insert(key, v);
            }
            None => {
                original.shift_remove(&key);
            }
        }
    }
    Ok(Some(original))
}

/// Merges one value of the patch into the stored one (`None` when absent). `None` in the
/// result: the key goes.
fn merge_value(
    existing: Option<Value>,
    patch: Value,
    child: Child,
) -> Result<Option<Value>, SmpError> {
    match (existing, patch) {
        (Some(Value::Object(o)), Value::Object(p)) => {
            Ok(merge_map(o, p, child.schema)?.map(Value::Object))
        }
        (Some(Value::Array(o)), Value::Array(p)) => {
            Ok(Some(Value::Array(merge_list(o, p, child)?)))
        }
        // New, or of another JSON type than stored: the patch's value, directives
        // processed as if merged into nothing.
        (_, Value::Object(p)) => Ok(merge_map(Map::new(), p, child.schema)?.map(Value::Object)),
        (_, Value::Array(p)) => Ok(Some(Value::Array(merge_list(Vec::new(), p, child)?))),
        (_, Value::Null) => Ok(None),
        (_, scalar) => Ok(Some(scalar)),
    }
}

/// Merges a list of the patch into the stored list, by the field's strategy.
fn merge_list(
    original: Vec<Value>,
    patch: Vec<Value>,
    child: Child,
) -> Result<Vec<Value>, SmpError> {
    match child.strategy {
        PatchStrategy::Default => replacement_list(patch, child.item),
        PatchStrategy::Merge { key } => merging_list(original, patch, key, child.item),
    }
}

/// A list that replaces the stored one: its items cleaned of directives (an item that
/// is itself a directive, `{"$patch": …}`, is dropped).
fn replacement_list(patch: Vec<Value>, item: Schema) -> Result<Vec<Value>, SmpError> {
    let mut out = Vec::with_capacity(patch.len());
    for v in patch {
        match v {
            Value::Object(m) if m.contains_key(DIRECTIVE) => {}
            Value::Object(m) => {
                if let Some(m) = merge_map(Map::new(), m, item)? {
                    out.push(Value::Object(m));
                }
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

/// The JSON type of a merging list's items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ItemKind {
    Object,
    Scalar,
}

fn item_kind(lists: &[&[Value]]) -> Result<Option<ItemKind>, SmpError> {
    fn class(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Number(_) => 2,
            Value::String(_) => 3,
            Value::Array(_) => 4,
            Value::Object(_) => 5,
        }
    }
    let mut first: Option<&Value> = None;
    for v in lists.iter().flat_map(|l| l.iter()) {
        match first {
            None => {
                if v.is_array() {
                    return Err(SmpError::ListOfLists);
                }
                first = Some(v);
            }
            Some(f) if class(f) != class(v) => {
                let all: Vec<Value> = lists.iter().map(|l| Value::Array(l.to_vec())).collect();
                return Err(SmpError::MixedList(render(&Value::Array(all))));
            }
            Some(_) => {}
        }
    }
    Ok(first.map(|f| {
        if f.is_object() {
            ItemKind::Object
        } else {
            ItemKind::Scalar
        }
    }))
}

/// Merges two lists under `patchStrategy:"merge"`.
fn merging_list(
    mut original: Vec<Value>,
    patch: Vec<Value>,
    key: Option<&'static str>,
    item: Schema,
) -> Result<Vec<Value>, SmpError> {
    let Some(kind) = item_kind(&[&original, &patch])? else {
        return Ok(original);
    };
    if kind == ItemKind::Scalar {
        let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
        for v in original.iter().chain(patch.iter()) {
            if !merged.iter().any(|m| json_eq(m, v)) {
                merged.push(v.clone());
            }
        }
        return order_merged(merged, &patch, &original, None);
    }
    let Some(key) = key else {
        return Err(SmpError::NoMergeKeyDeclared(render(&Value::Array(patch))));
    };

    // Directive items first: deletions by key, and `{"$patch": "replace"}`.
    let mut replace = false;
    let mut plain: Vec<Map<String, Value>> = Vec::with_capacity(patch.len());
    for v in patch {
        let Value::Object(mut m) = v else {
            continue; // item_kind checked that every item is an object
        };
        let Some(directive) = m.get(DIRECTIVE).cloned() else {
            plain.push(m);
            continue;
        };
        match directive.as_str() {
            Some("delete") => {
                let Some(kv) = m.get(key) else {
                    return Err(no_merge_key(&m, key));
                };
                original.retain(|o| !o.get(key).is_some_and(|ov| json_eq(ov, kv)));
            }
            Some("replace") => replace = true,
            Some("merge") => {
                m.shift_remove(DIRECTIVE);
                plain.push(m);
            }
            _ => {
                return Err(SmpError::UnknownPatchType {
                    value: render(&directive),
                    container: "list",
                    patch: render(&Value::Object(m)),
                })
            }
        }
    }
    if replace {
        let items = plain.into_iter().map(Value::Object).collect();
        return replacement_list(items, item);
    }

    let server_order = original.clone();
    let mut merged = original;
    for p in &plain {
        let Some(kv) = p.get(key) else {
            return Err(no_merge_key(p, key));
        };
        let at = merged
            .iter()
            .position(|o| o.get(key).is_some_and(|ov| json_eq(ov, kv)));
        match at {
            Some(i) => {
                let Value::Object(o) = std::mem::take(&mut merged[i]) else {
                    continue; // item_kind checked that every item is an object
                };
                match merge_map(o, p.clone(), item)? {
                    Some(m) => merged[i] = Value::Object(m),
                    None => {
                        merged.remove(i);
                    }
                }
            }
            None => {
                if let Some(m) = merge_map(Map::new(), p.clone(), item)? {
                    merged.push(Value::Object(m));
                }
            }
        }
    }
    let patch_order: Vec<Value> = plain.into_iter().map(Value::Object).collect();
    order_merged(merged, &patch_order, &server_order, Some(key))
}

fn no_merge_key(item: &Map<String, Value>, key: &str) -> SmpError {
    SmpError::NoMergeKey {
        item: render(&Value::Object(item.clone())),
        key: key.to_string(),
    }
}

/// Processes `$retainKeys`: stored keys it does not list are dropped.
fn apply_retain_keys(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
) -> Result<(), SmpError> {
    let Some(retain) = patch.shift_remove(RETAIN_KEYS) else {
        return Ok(());
    };
    let Value::Array(retain) = retain else {
        return Err(SmpError::BadRetainKeys);
    };
    let listed = |k: &str| retain.iter().any(|r| r.as_str() == Some(k));
    for (k, v) in patch.iter() {
        if v.is_null()
            || k.starts_with(DELETE_FROM_PRIMITIVE_LIST)
            || k.starts_with(SET_ELEMENT_ORDER)
        {
            continue;
        }
        if !listed(k) {
            return Err(SmpError::BadRetainKeys);
        }
    }
    original.retain(|k, _| listed(k));
    Ok(())
}

/// Processes each `$setElementOrder/<list>` together with `<list>` in the patch: merges
/// the list, then orders it. The patch's `<list>` is consumed.
fn apply_set_element_orders(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    schema: Schema,
) -> Result<(), SmpError> {
    let directives: Vec<String> = patch
        .keys()
        .filter(|k| k.starts_with(SET_ELEMENT_ORDER))
        .cloned()
        .collect();
    for directive in directives {
        let Some(Value::Array(order)) = patch.shift_remove(&directive) else {
            return Err(SmpError::BadSetElementOrder);
        };
        let list = &directive[SET_ELEMENT_ORDER.len()..];
        let child = schema.child(list);
        let key = match child.strategy {
            PatchStrategy::Merge { key } => key,
            PatchStrategy::Default => None,
        };
        let stored = match original.get(list) {
            None => None,
            Some(Value::Array(a)) => Some(a.clone()),
            Some(other) => return Err(SmpError::NotAList(render(other))),
        };
        let patched = match patch.shift_remove(list) {
            None => None,
            Some(Value::Array(a)) => Some(a),
            Some(other) => return Err(SmpError::NotAList(render(&other))),
        };
        if let Some(p) = &patched {
            check_order(p, &order, key)?;
        }
        let merged = match (stored.clone(), patched) {
            (None, None) => continue,
            (Some(s), None) => s,
            (s, Some(p)) => merge_list(s.unwrap_or_default(), p, child)?,
        };
        let server_order = stored.unwrap_or_default();
        let ordered = order_merged(merged, &order, &server_order, key)?;
        original.insert(list.to_string(), Value::Array(ordered));
    }
    Ok(())
}

/// Upstream's `validatePatchWithSetOrderList`: the patch list's items (deletions aside)
/// appear in `$setElementOrder`, in the same relative order.
fn check_order(patch: &[Value], order: &[Value], key: Option<&str>) -> Result<(), SmpError> {
    let items: Vec<&Value> = patch
        .iter()
        .filter(|v| key.is_none() || v.get(DIRECTIVE).and_then(Value::as_str) != Some("delete"))
        .collect();
    let (mut pi, mut si) = (0, 0);
    while pi < items.len() && si < order.len() {
        if key.is_some() && items[pi].get(DIRECTIVE).is_some() {
            pi += 1;
            continue;
        }
        if same_item(items[pi], &order[si], key)? {
            pi += 1;
        }
        si += 1;
    }
    if pi < items.len() {
        return Err(SmpError::OrderMismatch {
            patch: render(&Value::Array(patch.to_vec())),
            order: render(&Value::Array(order.to_vec())),
        });
    }
    Ok(())
}

/// Whether two items are the same list entry: equal merge-key values (both must have
/// the key), or equal values for scalars.
fn same_item(a: &Value, b: &Value, key: Option<&str>) -> Result<bool, SmpError> {
    let Some(key) = key else {
        return Ok(json_eq(a, b));
    };
    let lookup = |v: &Value| -> Result<Value, SmpError> {
        match v {
            Value::Object(m) => m.get(key).cloned().ok_or_else(|| no_merge_key(m, key)),
            other => Err(SmpError::NotAList(render(other))),
        }
    };
    Ok(json_eq(&lookup(a)?, &lookup(b)?))
}

/// Upstream's `normalizeElementOrder`: the merged items named in `patch_order` sorted by
/// it, the others by `server_order`, then interleaved by their stored positions.
fn order_merged(
    merged: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    key: Option<&str>,
) -> Result<Vec<Value>, SmpError> {
    let ident = |v: &Value| -> Option<Value> {
        match key {
            Some(k) => v.get(k).cloned(),
            None => Some(v.clone()),
        }
    };
    let position = |list: &[Value], v: &Value| -> Option<usize> {
        let id = ident(v)?;
        list.iter()
            .position(|o| ident(o).is_some_and(|oid| json_eq(&oid, &id)))
    };
    if let Some(k) = key {
        if let Some(bad) = merged.iter().find(|v| v.get(k).is_none()) {
            return Err(SmpError::NoMergeKey {
                item: render(bad),
                key: k.to_string(),
            });
        }
    }
    let (mut from_patch, mut server_only): (Vec<Value>, Vec<Value>) = merged
        .into_iter()
        .partition(|v| position(patch_order, v).is_some());
    // Stable sorts; an item missing from the order goes first (upstream's comparator
    // moves it forward).
    from_patch.sort_by_key(|v| position(patch_order, v).map_or(0, |p| p + 1));
    server_only.sort_by_key(|v| position(server_order, v).map_or(0, |p| p + 1));

    let mut out = Vec::with_capacity(from_patch.len() + server_only.len());
    let mut left = server_only.into_iter().peekable();
    let mut right = from_patch.into_iter().peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => match (position(server_order, l), position(server_order, r)) {
                (Some(li), Some(ri)) => li < ri,
                _ => false,
            },
        };
        let next = if take_left { left.next() } else { right.next() };
        out.extend(next);
    }
    Ok(out)
}

/// JSON equality with numbers compared by value (`80` and `80.0` are one port), as
/// upstream compares decoded `float64`s.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => x == y,
        },
        _ => a == b,
    }
}

fn render(v: &Value) -> String {
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::schema;
    use serde_json::json;

    fn pod() -> TypeRef {
        schema::root("", "v1", "Pod").expect("pod type")
    }

    fn deployment() -> TypeRef {
        schema::root("apps", "v1", "Deployment").expect("deployment type")
    }

    fn smp(root: TypeRef, doc: Value, patch: Value) -> Result<Value, SmpError> {
        strategic_merge(&doc, &patch, root)
    }

    /// (name, root, original, patch, expected)
    fn cases() -> Vec<(&'static str, TypeRef, Value, Value, Value)> {
        vec![
            (
                "maps merge recursively and null deletes a key",
                pod(),
                json!({"metadata": {"name": "p", "labels": {"a": "1", "b": "2"}}}),
                json!({"metadata": {"labels": {"a": null, "c": "3"}}}),
                json!({"metadata": {"name": "p", "labels": {"b": "2", "c": "3"}}}),
            ),
            (
                "null for an absent key is ignored",
                pod(),
                json!({"metadata": {"name": "p"}}),
                json!({"metadata": {"labels": null, "annotations": {"x": null, "y": "1"}}}),
                json!({"metadata": {"name": "p", "annotations": {"y": "1"}}}),
            ),
            (
                "containers merge by name, untouched fields stay",
                pod(),
                json!({"spec": {"containers": [
                    {"name": "a", "image": "a:1", "ports": [{"containerPort": 80}]},
                    {"name": "b", "image": "b:1"}]}}),
                json!({"spec": {"containers": [{"name": "a", "image": "a:2"}]}}),
                json!({"spec": {"containers": [
                    {"name": "a", "image": "a:2", "ports": [{"containerPort": 80}]},
                    {"name": "b", "image": "b:1"}]}}),
            ),
            (
                "a new item goes before the stored items (no $setElementOrder)",
                pod(),
                json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}),
                json!({"spec": {"containers": [{"name": "c", "image": "c"}]}}),
                json!({"spec": {"containers": [{"name": "c", "image": "c"}, {"name": "a"}, {"name": "b"}]}}),
            ),
            (
                "patch items keep the patch's order relative to each other",
                pod(),
                json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}}),
                json!({"spec": {"containers": [{"name": "c", "x": 1}, {"name": "a", "x": 1}]}}),
                json!({"spec": {"containers": [{"name": "b"}, {"name": "c", "x": 1}, {"name": "a", "x": 1}]}}),
            ),
            (
                "container ports merge by containerPort",
                pod(),
                json!({"spec": {"containers": [{"name": "a", "ports": [
                    {"containerPort": 80, "name": "http"}, {"containerPort": 443}]}]}}),
                json!({"spec": {"containers": [{"name": "a", "ports": [
                    {"containerPort": 80, "name": "web"}]}]}}),
                json!({"spec": {"containers": [{"name": "a", "ports": [
                    {"containerPort": 80, "name": "web"}, {"containerPort": 443}]}]}}),
            ),
            (
                "service ports merge by port",
                schema::root("", "v1", "Service").expect("service"),
                json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}]}}),
                json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}]}}),
                json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}, {"port": 443}]}}),
            ),
            (
                "volumeMounts merge by mountPath, env by name",
                pod(),
                json!({"spec": {"containers": [{"name": "a",
                    "volumeMounts": [{"mountPath": "/a", "name": "v1"}, {"mountPath": "/b", "name": "v2"}],
                    "env": [{"name": "X", "value": "1"}]}]}}),
                json!({"spec": {"containers": [{"name": "a",
                    "volumeMounts": [{"mountPath": "/b", "readOnly": true}],
                    "env": [{"name": "X", "value": "2"}]}]}}),
                json!({"spec": {"containers": [{"name": "a",
                    "volumeMounts": [{"mountPath": "/a", "name": "v1"}, {"mountPath": "/b", "name": "v2", "readOnly": true}],
                    "env": [{"name": "X", "value": "2"}]}]}}),
            ),
            (
                "lists without a merge strategy are replaced (args, tolerations)",
                pod(),
                json!({"spec": {"tolerations": [{"key": "a"}, {"key": "b"}],
                    "containers": [{"name": "a", "args": ["x", "y"]}]}}),
                json!({"spec": {"tolerations": [{"key": "c"}],
                    "containers": [{"name": "a", "args": ["z"]}]}}),
                json!({"spec": {"tolerations": [{"key": "c"}],
                    "containers": [{"name": "a", "args": ["z"]}]}}),
            ),
            (
                "finalizers merge as a set",
                pod(),
                json!({"metadata": {"finalizers": ["a", "b"]}}),
                json!({"metadata": {"finalizers": ["b", "c"]}}),
                json!({"metadata": {"finalizers": ["a", "b", "c"]}}),
            ),
            (
                "ownerReferences merge by uid",
                pod(),
                json!({"metadata": {"ownerReferences": [{"uid": "1", "name": "x"}, {"uid": "2", "name": "y"}]}}),
                json!({"metadata": {"ownerReferences": [{"uid": "2", "name": "z"}]}}),
                json!({"metadata": {"ownerReferences": [{"uid": "1", "name": "x"}, {"uid": "2", "name": "z"}]}}),
            ),
            (
                "$patch: replace on a map",
                pod(),
                json!({"spec": {"nodeSelector": {"a": "1", "b": "2"}}}),
                json!({"spec": {"nodeSelector": {"$patch": "replace", "c": "3"}}}),
                json!({"spec": {"nodeSelector": {"c": "3"}}}),
            ),
            (
                "$patch: replace on a merging list",
                pod(),
                json!({"spec": {"containers": [{"name": "a", "image": "a"}, {"name": "b"}]}}),
                json!({"spec": {"containers": [{"name": "c"}, {"$patch": "replace"}]}}),
                json!({"spec": {"containers": [{"name": "c"}]}}),
            ),
            (
                "$patch: delete on a map removes it",
                pod(),
                json!({"spec": {"securityContext": {"runAsUser": 1}, "hostname": "h"}}),
                json!({"spec": {"securityContext": {"$patch": "delete"}}}),
                json!({"spec": {"hostname": "h"}}),
            ),
            (
                "$patch: delete in a list removes the item by key",
                pod(),
                json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}),
                json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}}),
                json!({"spec": {"containers": [{"name": "b"}]}}),
            ),
            (
                "$patch: merge is the default",
                pod(),
                json!({"spec": {"nodeSelector": {"a": "1"}, "containers": [{"name": "a", "image": "x"}]}}),
                json!({"spec": {"nodeSelector": {"$patch": "merge", "b": "2"},
                    "containers": [{"name": "a", "tty": true, "$patch": "merge"}]}}),
                json!({"spec": {"nodeSelector": {"a": "1", "b": "2"},
                    "containers": [{"name": "a", "image": "x", "tty": true}]}}),
            ),
            (
                "$retainKeys drops stored keys it does not list",
                deployment(),
                json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}}),
                json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
                json!({"spec": {"strategy": {"type": "Recreate"}}}),
            ),
            (
                "$retainKeys on a volume switches its source",
                pod(),
                json!({"spec": {"volumes": [{"name": "v", "emptyDir": {}}]}}),
                json!({"spec": {"volumes": [{"name": "v", "$retainKeys": ["configMap", "name"],
                    "configMap": {"name": "cm"}}]}}),
                json!({"spec": {"volumes": [{"name": "v", "configMap": {"name": "cm"}}]}}),
            ),
            (
                "$setElementOrder orders a merged list; server-only items interleave",
                pod(),
                json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}}),
                json!({"spec": {"$setElementOrder/containers": [{"name": "c"}, {"name": "a"}],
                    "containers": [{"name": "a", "image": "new"}]}}),
                json!({"spec": {"containers": [{"name": "b"}, {"name": "c"}, {"name": "a", "image": "new"}]}}),
            ),
            (
                "$setElementOrder places a new item where it is named",
                pod(),
                json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}),
                json!({"spec": {"$setElementOrder/containers": [{"name": "a"}, {"name": "n"}, {"name": "b"}],
                    "containers": [{"name": "n"}]}}),
                json!({"spec": {"containers": [{"name": "a"}, {"name": "n"}, {"name": "b"}]}}),
            ),
            (
                "$setElementOrder without the list only reorders",
                pod(),
                json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}),
                json!({"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}]}}),
                json!({"spec": {"containers": [{"name": "b"}, {"name": "a"}]}}),
            ),
            (
                "$setElementOrder on a list of scalars",
                pod(),
                json!({"metadata": {"finalizers": ["a", "b"]}}),
                json!({"metadata": {"$setElementOrder/finalizers": ["c", "b", "a"], "finalizers": ["c"]}}),
                json!({"metadata": {"finalizers": ["c", "b", "a"]}}),
            ),
            (
                "$deleteFromPrimitiveList removes values",
                pod(),
                json!({"metadata": {"finalizers": ["a", "b", "c"]}}),
                json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a", "c"]}}),
                json!({"metadata": {"finalizers": ["b"]}}),
            ),
            (
                "a new map is taken from the patch, directives and nulls stripped",
                pod(),
                json!({"spec": {}}),
                json!({"spec": {"securityContext": {"runAsUser": 1, "runAsGroup": null},
                    "containers": [{"name": "a", "$patch": "delete"}, {"name": "b", "env": [{"name": "X", "value": null}]}]}}),
                json!({"spec": {"securityContext": {"runAsUser": 1},
                    "containers": [{"name": "b", "env": [{"name": "X"}]}]}}),
            ),
            (
                "a value of another JSON type replaces the stored one",
                pod(),
                json!({"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80}]}]}}),
                json!({"spec": {"containers": "x"}}),
                json!({"spec": {"containers": "x"}}),
            ),
            (
                "merge keys match numerically (the patch's value is kept)",
                pod(),
                json!({"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80}]}]}}),
                json!({"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80.0, "name": "h"}]}]}}),
                json!({"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80.0, "name": "h"}]}]}}),
            ),
            (
                "deployment pod template containers merge by name",
                deployment(),
                json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [
                    {"name": "web", "image": "w:1"}, {"name": "side", "image": "s:1"}]}}}}),
                json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [
                    {"name": "side", "image": "s:2"}]}}}}),
                json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [
                    {"name": "web", "image": "w:1"}, {"name": "side", "image": "s:2"}]}}}}),
            ),
            (
                "node addresses merge by type",
                schema::root("", "v1", "Node").expect("node"),
                json!({"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"},
                    {"type": "Hostname", "address": "n"}]}}),
                json!({"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.2"}]}}),
                json!({"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.2"},
                    {"type": "Hostname", "address": "n"}]}}),
            ),
            (
                "scale spec merges",
                schema::root("autoscaling", "v1", "Scale").expect("scale"),
                json!({"spec": {"replicas": 1}, "status": {"replicas": 1}}),
                json!({"spec": {"replicas": 4}}),
                json!({"spec": {"replicas": 4}, "status": {"replicas": 1}}),
            ),
        ]
    }

    #[test]
    fn strategic_merge_cases() {
        let mut failures = Vec::new();
        for (name, root, original, patch, expected) in cases() {
            match smp(root, original, patch) {
                Ok(got) if got == expected => {}
                Ok(got) => failures.push(format!("{name}:\n  got  {got}\n  want {expected}")),
                Err(e) => failures.push(format!("{name}: error {e}")),
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn strategic_merge_errors() {
        let cases: Vec<(&str, Value, Value)> = vec![
            (
                "list item without the merge key",
                json!({"spec": {"containers": [{"name": "a"}]}}),
                json!({"spec": {"containers": [{"image": "x"}]}}),
            ),
            (
                "delete directive without the merge key",
                json!({"spec": {"containers": [{"name": "a"}]}}),
                json!({"spec": {"containers": [{"$patch": "delete"}]}}),
            ),
            (
                "unknown $patch value on a map",
                json!({"spec": {"nodeSelector": {"a": "1"}}}),
                json!({"spec": {"nodeSelector": {"$patch": "frobnicate"}}}),
            ),
            (
                "unknown $patch value in a list",
                json!({"spec": {"containers": [{"name": "a"}]}}),
                json!({"spec": {"containers": [{"name": "a", "$patch": "frobnicate"}]}}),
            ),
            (
                "unknown directive",
                json!({"spec": {}}),
                json!({"spec": {"$frobnicate": 1}}),
            ),
            (
                "$retainKeys not naming a key the patch sets",
                json!({"spec": {"hostname": "h"}}),
                json!({"spec": {"$retainKeys": ["hostname"], "subdomain": "s"}}),
            ),
            (
                "$retainKeys not a list",
                json!({"spec": {}}),
                json!({"spec": {"$retainKeys": "hostname"}}),
            ),
            (
                "patch list out of $setElementOrder's order",
                json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}),
                json!({"spec": {"$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                    "containers": [{"name": "b"}, {"name": "a"}]}}),
            ),
            (
                "$setElementOrder not a list",
                json!({"spec": {}}),
                json!({"spec": {"$setElementOrder/containers": {"name": "a"}}}),
            ),
            (
                "$deleteFromPrimitiveList not a list",
                json!({"metadata": {"finalizers": ["a"]}}),
                json!({"metadata": {"$deleteFromPrimitiveList/finalizers": "a"}}),
            ),
            (
                "mixed item types in a merging list",
                json!({"metadata": {"finalizers": ["a"]}}),
                json!({"metadata": {"finalizers": [1]}}),
            ),
        ];
        for (name, original, patch) in cases {
            assert!(
                smp(pod(), original, patch.clone()).is_err(),
                "{name}: {patch} was accepted"
            );
        }
        assert_eq!(smp(pod(), json!({}), json!([])), Err(SmpError::NotAnObject));
    }

    /// `kubectl apply` of a changed manifest: the three-way patch kubectl computes when
    /// one env var is removed, one container's image changes and a port is added.
    #[test]
    fn kubectl_apply_style_patch() {
        let live = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "generation": 1,
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{…}"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                    {"name": "app", "image": "app:1",
                        "ports": [{"containerPort": 80, "protocol": "TCP"}],
                        "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"},
                                {"name": "C", "value": "3"}],
                        "imagePullPolicy": "IfNotPresent"},
                    {"name": "sidecar", "image": "side:1",
                        "ports": [{"containerPort": 9000, "protocol": "TCP"}],
                        "env": [{"name": "S", "value": "s"}]}
                ]}}},
            "status": {"replicas": 2}
        });
        let patch = json!({
            "metadata": {"annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{new}"}},
            "spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
                "containers": [{
                    "name": "app",
                    "image": "app:2",
                    "$setElementOrder/env": [{"name": "A"}, {"name": "C"}],
                    "$setElementOrder/ports": [{"containerPort": 80}, {"containerPort": 443}],
                    "env": [{"$patch": "delete", "name": "B"}],
                    "ports": [{"containerPort": 443, "protocol": "TCP"}]
                }]
            }}}
        });
        let got = smp(deployment(), live.clone(), patch).expect("patch applies");
        let mut want = live;
        want["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] =
            json!("{new}");
        let app = &mut want["spec"]["template"]["spec"]["containers"][0];
        app["image"] = json!("app:2");
        app["env"] = json!([{"name": "A", "value": "1"}, {"name": "C", "value": "3"}]);
        app["ports"] = json!([{"containerPort": 80, "protocol": "TCP"},
            {"containerPort": 443, "protocol": "TCP"}]);
        assert_eq!(got, want);
    }

    #[test]
    fn apply_dispatches_and_refuses_unknown_types_for_strategic() {
        let doc = json!({"metadata": {"labels": {"a": "1"}}});
        let patch = json!({"metadata": {"labels": {"b": "2"}}});
        let out = apply(&doc, &patch, PatchType::Strategic, Some(pod())).expect("applies");
        assert_eq!(out, json!({"metadata": {"labels": {"a": "1", "b": "2"}}}));
        let err = apply(&doc, &patch, PatchType::Strategic, None).expect_err("no schema");
        assert_eq!(err.code, 415);
        let err = apply(
            &doc,
            &json!({"spec": {"containers": [{}]}}),
            PatchType::Strategic,
            Some(pod()),
        )
        .expect_err("no merge key");
        assert_eq!(err.code, 400);
        let merged = apply(
            &doc,
            &json!({"metadata": {"labels": null}}),
            PatchType::Merge,
            None,
        )
        .expect("merge patch");
        assert_eq!(merged, json!({"metadata": {}}));
    }

    #[test]
    fn json_patch_test_failure_is_an_error() {
        let doc = json!({"a": 1});
        let patch = json!([{"op": "test", "path": "/a", "value": 2}, {"op": "replace", "path": "/a", "value": 3}]);
        assert!(apply(&doc, &patch, PatchType::Json, None).is_err());
    }
}
