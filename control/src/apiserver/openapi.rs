//! `/openapi/v3`: enough of the OpenAPI documents for kubectl's default
//! `--validate=strict`: kubectl looks for a `patch` operation per kind carrying
//! `x-kubernetes-group-version-kind` and a `fieldValidation` parameter, and when it finds
//! one it leaves validation to the server (`?fieldValidation=Strict`). Full schemas (for
//! `kubectl explain`) come with the apply/patch issue.

use serde_json::{json, Map, Value};

use crate::registry::Registry;

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// A short stable hash of the registry's group-versions, so clients re-fetch after an
/// upgrade that changes what is served.
fn hash(registry: &Registry) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for d in registry.all() {
        for b in d
            .group
            .bytes()
            .chain(d.plural.bytes())
            .chain(d.version.bytes())
        {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    format!("{h:016X}")
}

/// `GET /openapi/v3`: the index of group-version documents.
pub fn index(registry: &Registry) -> Value {
    let h = hash(registry);
    let mut paths = Map::new();
    for (g, v) in registry.group_versions() {
        let p = gv_path(g, v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={h}")}),
        );
    }
    json!({"paths": paths})
}

/// `GET /openapi/v3/<api/v1|apis/g/v>`: one group-version document; `None` if not served.
pub fn document(registry: &Registry, path: &str) -> Option<Value> {
    let (group, version) = registry
        .group_versions()
        .into_iter()
        .find(|(g, v)| gv_path(g, v) == path)?;
    let mut paths = Map::new();
    for d in registry
        .all()
        .filter(|d| d.group == group && d.version == version)
    {
        let base = format!("/{path}");
        let item = if d.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", d.plural)
        } else {
            format!("{base}/{}/{{name}}", d.plural)
        };
        let gvk = json!({"group": d.group, "version": d.version, "kind": d.kind});
        let field_validation = json!({
            "name": "fieldValidation",
            "in": "query",
            "description": "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields.",
            "schema": {"type": "string", "uniqueItems": true},
        });
        paths.insert(
            item,
            json!({
                "patch": {
                    "operationId": format!("patch{}", d.kind),
                    "x-kubernetes-action": "patch",
                    "x-kubernetes-group-version-kind": gvk,
                    "parameters": [field_validation],
                    "responses": {"200": {"description": "OK"}},
                },
            }),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}
