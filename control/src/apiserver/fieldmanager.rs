//! Field ownership (`metadata.managedFields`) and server-side apply.
//!
//! Every write records which manager set which fields, in the `FieldsV1` format
//! Kubernetes uses (`{"f:data":{"f:color":{}}}`, list items of keyed lists as
//! `k:{"name":"web"}`, set members as `v:"x"`, and `.` for "the item itself"). An Update
//! (create, PUT, PATCH) takes ownership of the fields it changed, silently. An Apply
//! (`application/apply-patch+yaml`) declares the fields its manager wants: it merges
//! them into the object, fails with a conflict when another manager owns a field it
//! would change (unless forced, which takes the field over), and removes fields the
//! manager applied before, no longer applies, and nobody else owns.
//!
//! How lists merge (atomic, set, or keyed map) comes from a [`Schema`]: the type
//! metadata table of each kind (`registry::schema`); for an unknown type, lists are
//! atomic.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::registry::schema::{self, Field, FieldKind, TypeRef};
use crate::registry::ResourceDef;

/// How a list merges, from the type definitions (`x-kubernetes-list-type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListKind {
    /// Replaced as a whole.
    Atomic,
    /// A set of scalars.
    Set,
    /// Objects identified by these key fields.
    Map(Vec<String>),
}

/// The shape of the value at one place in an object.
pub trait Schema: Send + Sync {
    /// The schema of an object field (or of a map's values).
    fn field(&self, name: &str) -> Box<dyn Schema + '_>;
    /// How a list at this place merges.
    fn list_kind(&self) -> ListKind;
    /// The schema of a list's items.
    fn item(&self) -> Box<dyn Schema + '_>;
    /// Whether an object at this place is replaced as a whole.
    fn atomic_object(&self) -> bool {
        false
    }
}

/// No type information: objects merge field by field, lists are atomic.
pub struct Untyped;

impl Schema for Untyped {
    fn field(&self, _name: &str) -> Box<dyn Schema + '_> {
        Box::new(Untyped)
    }
    fn list_kind(&self) -> ListKind {
        ListKind::Atomic
    }
    fn item(&self) -> Box<dyn Schema + '_> {
        Box::new(Untyped)
    }
}

/// The merge schema of a kind, from the type metadata table; untyped (atomic lists)
/// for a kind the table does not know.
pub fn schema_for(def: &ResourceDef) -> Box<dyn Schema> {
    match schema::root(def.group, def.version, def.kind) {
        Some(t) => Box::new(Typed::Object(t)),
        None => Box::new(Untyped),
    }
}

/// A place in an object of a known type: an object of type T, or the value of a field.
#[derive(Clone, Copy)]
enum Typed {
    Object(TypeRef),
    Field(Field),
}

impl Schema for Typed {
    fn field(&self, name: &str) -> Box<dyn Schema + '_> {
        let next = match *self {
            Typed::Object(t) => t.field(name).map(Typed::Field),
            Typed::Field(f) => match f.kind() {
                FieldKind::Object(t) => t.field(name).map(Typed::Field),
                // A map's value under key `name`.
                FieldKind::Map { value: Some(t), .. } => Some(Typed::Object(t)),
                _ => None,
            },
        };
        match next {
            Some(n) => Box::new(n),
            None => Box::new(Untyped),
        }
    }

    fn list_kind(&self) -> ListKind {
        match *self {
            Typed::Field(f) => match f.list_type() {
                Some(schema::ListKind::Set) => ListKind::Set,
                Some(schema::ListKind::Map(keys)) => {
                    ListKind::Map(keys.iter().map(|k| k.to_string()).collect())
                }
                _ => ListKind::Atomic,
            },
            Typed::Object(_) => ListKind::Atomic,
        }
    }

    fn item(&self) -> Box<dyn Schema + '_> {
        match *self {
            Typed::Field(f) => match f.kind() {
                FieldKind::List { elem: Some(t), .. } => Box::new(Typed::Object(t)),
                _ => Box::new(Untyped),
            },
            Typed::Object(_) => Box::new(Untyped),
        }
    }

    fn atomic_object(&self) -> bool {
        match *self {
            Typed::Object(t) => t.is_atomic(),
            Typed::Field(f) => match f.kind() {
                FieldKind::Object(t) => t.is_atomic(),
                FieldKind::Map { kind, .. } => kind == schema::MapKind::Atomic,
                _ => false,
            },
        }
    }
}

/// A set of field paths: a trie keyed by path elements (`f:x`, `k:{…}`, `v:…`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet {
    /// Whether the path ending here is itself in the set.
    member: bool,
    children: BTreeMap<String, FieldSet>,
}

/// One path: encoded elements from the root.
pub type Path = Vec<String>;

impl FieldSet {
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    pub fn insert(&mut self, path: &[String]) {
        let mut node = self;
        for el in path {
            node = node.children.entry(el.clone()).or_default();
        }
        node.member = true;
    }

    pub fn contains(&self, path: &[String]) -> bool {
        let mut node = self;
        for el in path {
            match node.children.get(el) {
                Some(n) => node = n,
                None => return false,
            }
        }
        node.member
    }

    pub fn remove(&mut self, path: &[String]) {
        fn go(node: &mut FieldSet, path: &[String]) {
            match path.split_first() {
                None => node.member = false,
                Some((el, rest)) => {
                    if let Some(child) = node.children.get_mut(el) {
                        go(child, rest);
                        if child.is_empty() {
                            node.children.remove(el);
                        }
                    }
                }
            }
        }
        go(self, path)
    }

    /// Every member path.
    pub fn paths(&self) -> Vec<Path> {
        fn go(node: &FieldSet, prefix: &mut Path, out: &mut Vec<Path>) {
            if node.member && !prefix.is_empty() {
                out.push(prefix.clone());
            }
            for (el, child) in &node.children {
                prefix.push(el.clone());
                go(child, prefix, out);
                prefix.pop();
            }
        }
        let mut out = Vec::new();
        go(self, &mut Vec::new(), &mut out);
        out
    }

    /// The `fieldsV1` JSON form.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        if self.member && !self.children.is_empty() {
            map.insert(".".into(), json!({}));
        }
        for (el, child) in &self.children {
            map.insert(el.clone(), child.to_json());
        }
        Value::Object(map)
    }

    /// Reads the `fieldsV1` JSON form.
    pub fn from_json(v: &Value) -> FieldSet {
        let mut set = FieldSet::default();
        if let Some(map) = v.as_object() {
            if map.is_empty() {
                set.member = true;
            }
            for (el, child) in map {
                if el == "." {
                    set.member = true;
                } else {
                    set.children.insert(el.clone(), FieldSet::from_json(child));
                }
            }
        }
        set
    }
}

fn key_element(item: &Value, keys: &[String]) -> Option<String> {
    let mut sorted = BTreeMap::new();
    for k in keys {
        if let Some(v) = item.get(k).filter(|v| !v.is_null()) {
            sorted.insert(k.clone(), v.clone());
        }
    }
    if sorted.is_empty() {
        return None;
    }
    Some(format!(
        "k:{}",
        serde_json::to_string(&sorted).unwrap_or_default()
    ))
}

fn value_element(v: &Value) -> String {
    format!("v:{}", serde_json::to_string(v).unwrap_or_default())
}

/// The member paths of `value` (an object's tracked part).
pub fn fields_of(value: &Value, schema: &dyn Schema) -> FieldSet {
    let mut out = FieldSet::default();
    collect(value, schema, &mut Vec::new(), &mut out);
    out
}

fn collect(value: &Value, schema: &dyn Schema, prefix: &mut Path, out: &mut FieldSet) {
    match value {
        Value::Object(map) if !schema.atomic_object() && !map.is_empty() => {
            for (k, child) in map {
                if child.is_null() {
                    continue;
                }
                prefix.push(format!("f:{k}"));
                collect(child, schema.field(k).as_ref(), prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => match schema.list_kind() {
            ListKind::Atomic => out.insert(prefix),
            ListKind::Set => {
                for item in items {
                    prefix.push(value_element(item));
                    out.insert(prefix);
                    prefix.pop();
                }
            }
            ListKind::Map(keys) => {
                let item_schema = schema.item();
                for item in items {
                    match key_element(item, &keys) {
                        Some(el) => {
                            prefix.push(el);
                            out.insert(prefix);
                            collect(item, item_schema.as_ref(), prefix, out);
                            prefix.pop();
                        }
                        // An item without its key cannot be tracked on its own.
                        None => {
                            out.insert(prefix);
                        }
                    }
                }
            }
        },
        _ => {
            if !prefix.is_empty() {
                out.insert(prefix)
            }
        }
    }
}

/// The value at `path` in `obj`, if present.
pub fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for el in path {
        cur = step(cur, el)?;
    }
    Some(cur)
}

fn step<'a>(cur: &'a Value, el: &str) -> Option<&'a Value> {
    if let Some(f) = el.strip_prefix("f:") {
        return cur.get(f);
    }
    let items = cur.as_array()?;
    if let Some(k) = el.strip_prefix("k:") {
        let keys: Map<String, Value> = serde_json::from_str(k).ok()?;
        return items
            .iter()
            .find(|i| keys.iter().all(|(kk, kv)| i.get(kk) == Some(kv)));
    }
    if let Some(v) = el.strip_prefix("v:") {
        let want: Value = serde_json::from_str(v).ok()?;
        return items.iter().find(|i| **i == want);
    }
    None
}

/// Removes what `path` names from `obj`: an object field, a keyed list item, a set
/// member.
pub fn remove_at(obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for el in parents {
        let next = if let Some(f) = el.strip_prefix("f:") {
            cur.get_mut(f)
        } else {
            let Some(items) = cur.as_array_mut() else {
                return;
            };
            let Some(pos) = position(items, el) else {
                return;
            };
            items.get_mut(pos)
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
    } else if let Some(items) = cur.as_array_mut() {
        if let Some(pos) = position(items, last) {
            items.remove(pos);
        }
    }
}

fn position(items: &[Value], el: &str) -> Option<usize> {
    if let Some(k) = el.strip_prefix("k:") {
        let keys: Map<String, Value> = serde_json::from_str(k).ok()?;
        return items
            .iter()
            .position(|i| keys.iter().all(|(kk, kv)| i.get(kk) == Some(kv)));
    }
    if let Some(v) = el.strip_prefix("v:") {
        let want: Value = serde_json::from_str(v).ok()?;
        return items.iter().position(|i| *i == want);
    }
    None
}

/// A path as `kubectl` prints it in conflicts: `.spec.containers[name="web"].image`.
pub fn display_path(path: &[String]) -> String {
    let mut out = String::new();
    for el in path {
        if let Some(f) = el.strip_prefix("f:") {
            out.push('.');
            out.push_str(f);
        } else if let Some(k) = el.strip_prefix("k:") {
            let keys: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = el.strip_prefix("v:") {
            out.push_str(&format!("[={v}]"));
        }
    }
    out
}

/// Merges an applied configuration into the live object.
pub fn merge(live: &mut Value, config: &Value, schema: &dyn Schema) {
    match (live, config) {
        (Value::Object(l), Value::Object(c)) if !schema.atomic_object() => {
            for (k, cv) in c {
                if cv.is_null() {
                    continue;
                }
                let child = schema.field(k);
                match l.get_mut(k) {
                    Some(lv) if lv.is_object() && cv.is_object() => merge(lv, cv, child.as_ref()),
                    Some(lv) if lv.is_array() && cv.is_array() => merge(lv, cv, child.as_ref()),
                    _ => {
                        l.insert(k.clone(), cv.clone());
                    }
                }
            }
        }
        (Value::Array(l), Value::Array(c)) => match schema.list_kind() {
            ListKind::Atomic => *l = c.clone(),
            ListKind::Set => {
                for v in c {
                    if !l.contains(v) {
                        l.push(v.clone());
                    }
                }
            }
            ListKind::Map(keys) => {
                let item_schema = schema.item();
                for ci in c {
                    let key = key_element(ci, &keys);
                    let pos = key.as_ref().and_then(|k| position(l, k));
                    match pos {
                        Some(p) => merge(&mut l[p], ci, item_schema.as_ref()),
                        None => l.push(ci.clone()),
                    }
                }
            }
        },
        (live, config) => *live = config.clone(),
    }
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: Option<String>,
    pub fields: FieldSet,
}

impl Entry {
    fn from_json(v: &Value) -> Option<Entry> {
        Some(Entry {
            manager: v.get("manager")?.as_str()?.to_string(),
            operation: v
                .get("operation")
                .and_then(Value::as_str)
                .unwrap_or("Update")
                .to_string(),
            api_version: v
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            time: v
                .get("time")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            subresource: v
                .get("subresource")
                .and_then(Value::as_str)
                .map(String::from),
            fields: v
                .get("fieldsV1")
                .map(FieldSet::from_json)
                .unwrap_or_default(),
        })
    }

    fn to_json(&self) -> Value {
        let mut v = json!({
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": self.fields.to_json(),
        });
        if let Some(s) = &self.subresource {
            v["subresource"] = json!(s);
        }
        v
    }

    fn same_owner(&self, manager: &str, operation: &str, subresource: Option<&str>) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource.as_deref() == subresource
    }
}

/// The managed fields of an object.
#[derive(Debug, Clone, Default)]
pub struct ManagedFields(pub Vec<Entry>);

impl ManagedFields {
    pub fn of(obj: &Value) -> ManagedFields {
        ManagedFields(
            obj.pointer("/metadata/managedFields")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Entry::from_json)
                .collect(),
        )
    }

    /// Writes the entries into `obj.metadata.managedFields` (dropping empty ones).
    pub fn store(mut self, obj: &mut Value) {
        self.0.retain(|e| !e.fields.is_empty());
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            if self.0.is_empty() {
                meta.remove("managedFields");
            } else {
                meta.insert(
                    "managedFields".into(),
                    Value::Array(self.0.iter().map(Entry::to_json).collect()),
                );
            }
        }
    }

    fn entry_mut(
        &mut self,
        manager: &str,
        operation: &str,
        api_version: &str,
        subresource: Option<&str>,
    ) -> &mut Entry {
        let pos = self
            .0
            .iter()
            .position(|e| e.same_owner(manager, operation, subresource));
        let pos = match pos {
            Some(p) => p,
            None => {
                self.0.push(Entry {
                    manager: manager.to_string(),
                    operation: operation.to_string(),
                    api_version: api_version.to_string(),
                    time: String::new(),
                    subresource: subresource.map(String::from),
                    fields: FieldSet::default(),
                });
                self.0.len() - 1
            }
        };
        &mut self.0[pos]
    }
}

/// The part of an object field ownership is tracked for: not the identity and
/// bookkeeping metadata, and only the half (spec or status) the endpoint writes.
pub fn tracked(obj: &Value, status_only: bool, has_status: bool) -> Value {
    let Some(m) = obj.as_object() else {
        return obj.clone();
    };
    // Built from the kept parts only: copying the whole object first (managedFields, and
    // for a status write the whole spec) was most of what a write spent here.
    let mut out = Map::new();
    for (k, v) in m {
        let keep = match k.as_str() {
            "apiVersion" | "kind" => false,
            "status" => status_only || !has_status,
            _ => !status_only,
        };
        if !keep {
            continue;
        }
        match (k.as_str(), v.as_object()) {
            ("metadata", Some(meta)) => {
                let kept: Map<String, Value> = meta
                    .iter()
                    .filter(|(f, _)| !UNTRACKED_METADATA.contains(&f.as_str()))
                    .map(|(f, v)| (f.clone(), v.clone()))
                    .collect();
                if !kept.is_empty() {
                    out.insert(k.clone(), Value::Object(kept));
                }
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(out)
}

/// Identity and bookkeeping metadata: nobody owns these.
const UNTRACKED_METADATA: [&str; 11] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "generateName",
];

/// Records an Update by `manager`: it owns every field it changed, which no other
/// manager owns any longer; removed fields are owned by nobody.
#[allow(clippy::too_many_arguments)]
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    subresource: Option<&str>,
    has_status: bool,
    schema: &dyn Schema,
    now: &str,
) {
    let status_only = subresource == Some("status");
    let mut managed = old.map(ManagedFields::of).unwrap_or_default();
    let new_t = tracked(new, status_only, has_status);
    let new_set = fields_of(&new_t, schema);
    let (old_t, old_set) = match old {
        Some(o) => {
            let t = tracked(o, status_only, has_status);
            let s = fields_of(&t, schema);
            (t, s)
        }
        None => (Value::Null, FieldSet::default()),
    };
    let changed: Vec<Path> = new_set
        .paths()
        .into_iter()
        .filter(|p| !old_set.contains(p) || value_at(&old_t, p) != value_at(&new_t, p))
        .collect();
    let removed: Vec<Path> = old_set
        .paths()
        .into_iter()
        .filter(|p| !new_set.contains(p))
        .collect();
    if changed.is_empty() && removed.is_empty() && old.is_some() {
        managed.store(new);
        return;
    }
    for e in managed.0.iter_mut() {
        for p in &removed {
            e.fields.remove(p);
        }
        if !e.same_owner(manager, "Update", subresource) {
            for p in &changed {
                e.fields.remove(p);
            }
        }
    }
    let entry = managed.entry_mut(manager, "Update", api_version, subresource);
    for p in &changed {
        entry.fields.insert(p);
    }
    entry.time = now.to_string();
    entry.api_version = api_version.to_string();
    managed.store(new);
}

/// A field another manager owns that an apply would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    pub field: String,
}

/// One server-side apply request: who applies, to which part of the object.
#[derive(Debug, Clone, Copy)]
pub struct Applier<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    /// Take over fields other managers own instead of failing with a conflict.
    pub force: bool,
    /// `Some("status")` for an apply to the status subresource.
    pub subresource: Option<&'a str>,
    /// Whether the kind has a status subresource (then the main resource's apply does
    /// not own status).
    pub has_status: bool,
    pub now: &'a str,
}

impl Applier<'_> {
    fn status_only(&self) -> bool {
        self.subresource == Some("status")
    }

    /// Applies `config` (the manager's whole intent) to `live` (or to nothing, for a
    /// create). Returns the new object with its managed fields, or the conflicts.
    pub fn apply(
        &self,
        live: Option<&Value>,
        config: &Value,
        schema: &dyn Schema,
    ) -> Result<Value, Vec<Conflict>> {
        let (manager, sub) = (self.manager, self.subresource);
        let mut managed = live.map(ManagedFields::of).unwrap_or_default();
        let config_t = tracked(config, self.status_only(), self.has_status);
        let applied = fields_of(&config_t, schema);
        let mut result = match live {
            Some(l) => l.clone(),
            None => json!({}),
        };
        let live_t = live
            .map(|l| tracked(l, self.status_only(), self.has_status))
            .unwrap_or(Value::Null);

        let mut conflicts = Vec::new();
        let mut taken: Vec<(usize, Path)> = Vec::new();
        for p in applied.paths() {
            let Some(want) = value_at(&config_t, &p) else {
                continue;
            };
            let have = value_at(&live_t, &p);
            let differs = have.is_some_and(|h| h != want) && !want.is_object();
            if !differs {
                continue;
            }
            for (i, e) in managed.0.iter().enumerate() {
                if e.same_owner(manager, "Apply", sub) || e.subresource.as_deref() != sub {
                    continue;
                }
                if e.fields.contains(&p) {
                    conflicts.push(Conflict {
                        manager: e.manager.clone(),
                        field: display_path(&p),
                    });
                    taken.push((i, p.clone()));
                }
            }
        }
        if !conflicts.is_empty() && !self.force {
            return Err(conflicts);
        }
        for (i, p) in taken {
            managed.0[i].fields.remove(&p);
        }

        // Fields this manager applied before and no longer does: removed, unless another
        // manager still owns them.
        let previous = managed
            .0
            .iter()
            .find(|e| e.same_owner(manager, "Apply", sub))
            .map(|e| e.fields.clone())
            .unwrap_or_default();
        let mut dropped: Vec<Path> = previous
            .paths()
            .into_iter()
            .filter(|p| !applied.contains(p))
            .filter(|p| {
                !managed
                    .0
                    .iter()
                    .any(|e| !e.same_owner(manager, "Apply", sub) && e.fields.contains(p))
            })
            .collect();
        // Shallowest first: a dropped list item goes whole, and the paths inside it then
        // find nothing to remove (removing its key field first would orphan the item).
        dropped.sort_by_key(|p| p.len());

        if self.status_only() {
            let status = json!({"status": config.get("status").cloned().unwrap_or(Value::Null)});
            merge(&mut result, &status, schema);
        } else {
            merge(&mut result, config, schema);
        }
        for p in &dropped {
            // Paths are relative to the tracked view, whose root is the object's.
            remove_at(&mut result, p);
        }

        let entry = managed.entry_mut(manager, "Apply", self.api_version, sub);
        entry.fields = applied;
        entry.time = self.now.to_string();
        entry.api_version = self.api_version.to_string();
        managed.store(&mut result);
        Ok(result)
    }
}

#[cfg(test)]
#[allow(clippy::too_many_arguments)]
mod tests {
    use super::*;

    #[test]
    fn tracked_keeps_the_half_the_endpoint_writes_without_bookkeeping() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a", "namespace": "n", "uid": "u", "labels": {"x": "1"},
                         "managedFields": [{"manager": "m"}], "resourceVersion": "5"},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Running"},
        });
        assert_eq!(
            tracked(&pod, false, true),
            json!({"metadata": {"labels": {"x": "1"}}, "spec": {"containers": [{"name": "c"}]}})
        );
        assert_eq!(
            tracked(&pod, true, true),
            json!({"status": {"phase": "Running"}})
        );
        // A kind without a status subresource owns its status through the main endpoint.
        assert_eq!(
            tracked(&pod, false, false)["status"],
            json!({"phase": "Running"})
        );
        // Metadata with nothing but bookkeeping is not tracked at all.
        let bare = json!({"metadata": {"name": "a", "generation": 2}, "data": {"k": "v"}});
        assert_eq!(tracked(&bare, false, false), json!({"data": {"k": "v"}}));
        assert_eq!(tracked(&json!(null), false, false), json!(null));
    }

    /// `spec.items` is a keyed list by `name`, `spec.tags` a set; the rest untyped.
    struct TestSchema;
    impl Schema for TestSchema {
        fn field(&self, name: &str) -> Box<dyn Schema + '_> {
            match name {
                "items" => Box::new(Keyed),
                "tags" => Box::new(SetList),
                _ => Box::new(TestSchema),
            }
        }
        fn list_kind(&self) -> ListKind {
            ListKind::Atomic
        }
        fn item(&self) -> Box<dyn Schema + '_> {
            Box::new(TestSchema)
        }
    }
    struct Keyed;
    impl Schema for Keyed {
        fn field(&self, _: &str) -> Box<dyn Schema + '_> {
            Box::new(TestSchema)
        }
        fn list_kind(&self) -> ListKind {
            ListKind::Map(vec!["name".into()])
        }
        fn item(&self) -> Box<dyn Schema + '_> {
            Box::new(TestSchema)
        }
    }
    struct SetList;
    impl Schema for SetList {
        fn field(&self, _: &str) -> Box<dyn Schema + '_> {
            Box::new(TestSchema)
        }
        fn list_kind(&self) -> ListKind {
            ListKind::Set
        }
        fn item(&self) -> Box<dyn Schema + '_> {
            Box::new(TestSchema)
        }
    }

    fn apply(
        live: Option<&Value>,
        config: &Value,
        manager: &str,
        api_version: &str,
        force: bool,
        has_status: bool,
        schema: &dyn Schema,
        now: &str,
    ) -> Result<Value, Vec<Conflict>> {
        Applier {
            manager,
            api_version,
            force,
            subresource: None,
            has_status,
            now,
        }
        .apply(live, config, schema)
    }

    fn cm(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": data})
    }

    #[test]
    fn status_applies_are_owned_apart_from_spec() {
        let obj = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "x"}, "spec": {"a": 1}, "status": {"ready": false}});
        let applier = Applier {
            manager: "controller",
            api_version: "v1",
            force: false,
            subresource: Some("status"),
            has_status: true,
            now: "t",
        };
        let config = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "x"}, "spec": {"a": 2}, "status": {"ready": true}});
        let out = applier.apply(Some(&obj), &config, &Untyped).unwrap();
        assert_eq!(out["status"]["ready"], true);
        assert_eq!(out["spec"]["a"], 1, "a status apply leaves the spec alone");
        let m = ManagedFields::of(&out);
        assert_eq!(m.0[0].subresource.as_deref(), Some("status"));
        assert_eq!(
            m.0[0].fields.to_json(),
            json!({"f:status": {"f:ready": {}}})
        );
    }

    #[test]
    fn fields_v1_round_trips() {
        let obj = json!({"spec": {"items": [{"name": "a", "image": "i"}], "tags": ["x"], "n": 1}});
        let set = fields_of(&obj, &TestSchema);
        let j = set.to_json();
        assert_eq!(
            j,
            json!({"f:spec": {"f:items": {"k:{\"name\":\"a\"}": {".": {}, "f:image": {}, "f:name": {}}}, "f:n": {}, "f:tags": {"v:\"x\"": {}}}})
        );
        assert_eq!(FieldSet::from_json(&j), set);
    }

    #[test]
    fn apply_conflicts_then_force_takes_over() {
        let first = apply(
            None,
            &cm(json!({"color": "blue"})),
            "alice",
            "v1",
            false,
            false,
            &TestSchema,
            "t1",
        )
        .unwrap();
        let err = apply(
            Some(&first),
            &cm(json!({"color": "red"})),
            "bob",
            "v1",
            false,
            false,
            &TestSchema,
            "t2",
        )
        .unwrap_err();
        assert_eq!(
            err,
            vec![Conflict {
                manager: "alice".into(),
                field: ".data.color".into()
            }]
        );
        // Agreeing on a value is shared ownership, not a conflict.
        let shared = apply(
            Some(&first),
            &cm(json!({"color": "blue"})),
            "bob",
            "v1",
            false,
            false,
            &TestSchema,
            "t2",
        )
        .unwrap();
        assert_eq!(ManagedFields::of(&shared).0.len(), 2);
        let forced = apply(
            Some(&first),
            &cm(json!({"color": "red"})),
            "bob",
            "v1",
            true,
            false,
            &TestSchema,
            "t2",
        )
        .unwrap();
        assert_eq!(forced["data"]["color"], "red");
        let owners: Vec<String> = ManagedFields::of(&forced)
            .0
            .into_iter()
            .map(|e| e.manager)
            .collect();
        assert_eq!(owners, vec!["bob".to_string()]);
    }

    #[test]
    fn fields_dropped_by_their_only_manager_are_removed() {
        let a = apply(
            None,
            &cm(json!({"color": "blue", "size": "L"})),
            "alice",
            "v1",
            false,
            false,
            &TestSchema,
            "t",
        )
        .unwrap();
        let b = apply(
            Some(&a),
            &cm(json!({"size": "L"})),
            "bob",
            "v1",
            false,
            false,
            &TestSchema,
            "t",
        )
        .unwrap();
        let a2 = apply(
            Some(&b),
            &cm(json!({})),
            "alice",
            "v1",
            false,
            false,
            &TestSchema,
            "t",
        )
        .unwrap();
        assert_eq!(
            a2["data"],
            json!({"size": "L"}),
            "size is still bob's; color was only alice's"
        );
    }

    #[test]
    fn keyed_lists_merge_by_key_and_drop_unapplied_items() {
        let obj = |items: Value| json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "x"}, "spec": {"items": items}});
        let a = apply(
            None,
            &obj(json!([{"name": "a", "image": "1"}, {"name": "b", "image": "1"}])),
            "m",
            "v1",
            false,
            false,
            &TestSchema,
            "t",
        )
        .unwrap();
        let mut edited = a.clone();
        edited["spec"]["items"][0]["extra"] = json!("kept");
        record_update(
            Some(&a),
            &mut edited,
            "editor",
            "v1",
            None,
            false,
            &TestSchema,
            "t",
        );
        let b = apply(
            Some(&edited),
            &obj(json!([{"name": "a", "image": "2"}])),
            "m",
            "v1",
            false,
            false,
            &TestSchema,
            "t",
        )
        .unwrap();
        assert_eq!(
            b["spec"]["items"],
            json!([{"name": "a", "image": "2", "extra": "kept"}])
        );
    }

    #[test]
    fn updates_take_ownership_silently() {
        let mut created = cm(json!({"color": "blue"}));
        record_update(
            None,
            &mut created,
            "kubectl-create",
            "v1",
            None,
            false,
            &Untyped,
            "t",
        );
        let mut edited = created.clone();
        edited["data"]["color"] = json!("green");
        record_update(
            Some(&created),
            &mut edited,
            "kubectl-edit",
            "v1",
            None,
            false,
            &Untyped,
            "t2",
        );
        let m = ManagedFields::of(&edited);
        assert_eq!(m.0.len(), 1, "{:?}", m);
        assert_eq!(m.0[0].manager, "kubectl-edit");
        // A no-op update changes nothing, not even the time.
        let mut same = edited.clone();
        record_update(
            Some(&edited),
            &mut same,
            "other",
            "v1",
            None,
            false,
            &Untyped,
            "t3",
        );
        assert_eq!(same, edited);
    }
}
