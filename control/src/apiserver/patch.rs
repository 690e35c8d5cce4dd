//! Patch application: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic
//! merge patch.
//!
//! The strategic merge here merges lists of objects by their Kubernetes merge key
//! (containers by name, ports by port number, …) and honours `$patch: delete|replace`;
//! the full directive set and per-type merge keys are the subject of the apply/patch
//! issue.

use serde_json::{Map, Value};

use super::status::{ApiError, ApiResult};

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

/// Applies `patch` to `doc`.
pub fn apply(doc: &Value, patch: &Value, kind: PatchType) -> ApiResult<Value> {
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
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "a strategic merge patch must be a JSON object",
                ));
            }
            strategic_merge(&mut out, patch, "");
        }
    }
    Ok(out)
}

/// The merge key of a list field, by the field's name and its items.
fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "secrets"
        | "hostAliases"
        | "readinessGates"
        | "resourceClaims" => Some(if field == "hostAliases" {
            "ip"
        } else if field == "readinessGates" {
            "conditionType"
        } else {
            "name"
        }),
        "volumeMounts" | "volumeDevices" => Some("mountPath"),
        "conditions" => Some("type"),
        "ownerReferences" => Some("uid"),
        "ports" => {
            let is_container = items.iter().any(|i| i.get("containerPort").is_some());
            Some(if is_container {
                "containerPort"
            } else {
                "port"
            })
        }
        _ => None,
    }
}

fn strategic_merge(target: &mut Value, patch: &Value, _path: &str) {
    let Some(patch_map) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if patch_map.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replaced = patch_map.clone();
        replaced.remove("$patch");
        *target = Value::Object(replaced);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target_map = target.as_object_mut().expect("made an object above");
    for (key, pval) in patch_map {
        if key.starts_with('$') {
            continue;
        }
        if let Some(list) = key.strip_prefix("$setElementOrder/") {
            let _ = list;
            continue;
        }
        if pval.is_null() {
            target_map.remove(key);
            continue;
        }
        match (target_map.get_mut(key), pval) {
            (Some(tval @ Value::Object(_)), Value::Object(_)) => strategic_merge(tval, pval, key),
            (Some(Value::Array(tlist)), Value::Array(plist)) => {
                let mk = merge_key(key, plist).or_else(|| merge_key(key, tlist));
                match mk {
                    Some(mk) if plist.iter().all(Value::is_object) => merge_list(tlist, plist, mk),
                    _ => *tlist = plist.iter().filter(|v| !is_directive(v)).cloned().collect(),
                }
            }
            _ => {
                let mut v = pval.clone();
                strip_directives(&mut v);
                target_map.insert(key.clone(), v);
            }
        }
    }
    let deletes: Vec<(String, Vec<Value>)> = patch_map
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("$deleteFromPrimitiveList/")
                .map(|list| (list.to_string(), v.as_array().cloned().unwrap_or_default()))
        })
        .collect();
    for (list, values) in deletes {
        if let Some(Value::Array(items)) = target_map.get_mut(&list) {
            items.retain(|i| !values.contains(i));
        }
    }
}

fn is_directive(v: &Value) -> bool {
    v.get("$patch").is_some()
}

fn strip_directives(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !k.starts_with('$'));
            m.values_mut().for_each(strip_directives);
        }
        Value::Array(a) => {
            a.retain(|i| !is_directive(i));
            a.iter_mut().for_each(strip_directives);
        }
        _ => {}
    }
}

fn merge_list(target: &mut Vec<Value>, patch: &[Value], key: &str) {
    for item in patch {
        let Some(k) = item.get(key) else {
            continue;
        };
        let pos = target.iter().position(|t| t.get(key) == Some(k));
        if item.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(p) = pos {
                target.remove(p);
            }
            continue;
        }
        match pos {
            Some(p) => strategic_merge(&mut target[p], item, key),
            None => {
                let mut v = item.clone();
                strip_directives(&mut v);
                target.push(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merges_containers_by_name_and_keeps_ports() {
        let doc = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "b:1"}
        ]}});
        let patch = json!({"spec": {"containers": [{"name": "a", "image": "a:2"}]}});
        let out = apply(&doc, &patch, PatchType::Strategic).unwrap();
        assert_eq!(out["spec"]["containers"][0]["image"], "a:2");
        assert_eq!(
            out["spec"]["containers"][0]["ports"][0]["containerPort"],
            80
        );
        assert_eq!(out["spec"]["containers"][1]["name"], "b");
    }

    #[test]
    fn strategic_delete_directive() {
        let doc = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let patch = json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}});
        let out = apply(&doc, &patch, PatchType::Strategic).unwrap();
        assert_eq!(out["spec"]["containers"], json!([{"name": "b"}]));
    }

    #[test]
    fn json_patch_test_failure_is_an_error() {
        let doc = json!({"a": 1});
        let patch = json!([{"op": "test", "path": "/a", "value": 2}, {"op": "replace", "path": "/a", "value": 3}]);
        assert!(apply(&doc, &patch, PatchType::Json).is_err());
    }
}
