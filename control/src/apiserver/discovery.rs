//! API discovery: `/api`, `/apis`, the per group-version resource lists (legacy
//! discovery, what the Python client uses) and aggregated discovery
//! (`apidiscovery.k8s.io/v2`, what kubectl asks for first), plus `/version`.

use serde_json::{json, Value};

use crate::registry::{Registry, ResourceDef, Subresource};

/// The exact Content-Type kubectl requires before it trusts an aggregated answer.
pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// The Kubernetes version we speak. kubectl's dispatcher picks its binary by the minor.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": concat!("v1.33.0-wasmkube.", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "n/a",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, goarch()),
    })
}

fn goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// Subresources that are served (all of them, now that exec and portforward are).
fn served_subresources(def: &ResourceDef) -> impl Iterator<Item = Subresource> + '_ {
    def.subresources.iter().copied().filter(|s| {
        matches!(
            s,
            Subresource::Status
                | Subresource::Scale
                | Subresource::Binding
                | Subresource::Finalize
                | Subresource::Log
                | Subresource::Token
                | Subresource::Exec
                | Subresource::PortForward
        )
    })
}

/// (group, version, kind, verbs) of a subresource.
fn subresource_kind(
    def: &ResourceDef,
    sub: Subresource,
) -> (String, String, String, Vec<&'static str>) {
    match sub {
        Subresource::Status => (
            def.group.into(),
            def.version.into(),
            def.kind.into(),
            vec!["get", "patch", "update"],
        ),
        Subresource::Scale => (
            "autoscaling".into(),
            "v1".into(),
            "Scale".into(),
            vec!["get", "patch", "update"],
        ),
        Subresource::Binding => ("".into(), "v1".into(), "Binding".into(), vec!["create"]),
        Subresource::Finalize => (
            def.group.into(),
            def.version.into(),
            def.kind.into(),
            vec!["update"],
        ),
        Subresource::Log => ("".into(), "v1".into(), "Pod".into(), vec!["get"]),
        Subresource::Exec => (
            "".into(),
            "v1".into(),
            "PodExecOptions".into(),
            vec!["create", "get"],
        ),
        Subresource::PortForward => (
            "".into(),
            "v1".into(),
            "PodPortForwardOptions".into(),
            vec!["create", "get"],
        ),
        Subresource::Token => (
            "authentication.k8s.io".into(),
            "v1".into(),
            "TokenRequest".into(),
            vec!["create"],
        ),
    }
}

/// `GET /api` (legacy).
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_entry(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

/// `GET /apis` (legacy).
pub fn groups(registry: &Registry) -> Value {
    let groups: Vec<Value> = registry
        .group_versions()
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, v)| group_entry(g, v))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/<group>` (legacy); `None` for an unknown group.
pub fn group(registry: &Registry, name: &str) -> Option<Value> {
    let (g, v) = registry
        .group_versions()
        .into_iter()
        .find(|(g, _)| !g.is_empty() && *g == name)?;
    let mut entry = group_entry(g, v);
    entry["kind"] = json!("APIGroup");
    entry["apiVersion"] = json!("v1");
    Some(entry)
}

/// `GET /api/v1`, `GET /apis/<group>/<version>` (legacy); `None` when not served.
pub fn resource_list(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let defs: Vec<_> = registry
        .all()
        .filter(|d| d.group == group && d.version == version)
        .collect();
    if defs.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for d in defs {
        let mut r = json!({
            "name": d.plural,
            "singularName": d.singular,
            "namespaced": d.namespaced,
            "kind": d.kind,
            "verbs": VERBS,
        });
        if !d.short_names.is_empty() {
            r["shortNames"] = json!(d.short_names);
        }
        if !d.categories.is_empty() {
            r["categories"] = json!(d.categories);
        }
        resources.push(r);
        for sub in served_subresources(d) {
            let (g, v, kind, verbs) = subresource_kind(d, sub);
            let mut r = json!({
                "name": format!("{}/{}", d.plural, sub.name()),
                "singularName": "",
                "namespaced": d.namespaced,
                "kind": kind,
                "verbs": verbs,
            });
            if g != d.group || v != d.version {
                r["group"] = json!(g);
                r["version"] = json!(v);
            }
            resources.push(r);
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }))
}

fn aggregated_resource(d: &ResourceDef) -> Value {
    let subresources: Vec<Value> = served_subresources(d)
        .map(|sub| {
            let (g, v, kind, verbs) = subresource_kind(d, sub);
            json!({
                "subresource": sub.name(),
                "responseKind": {"group": g, "version": v, "kind": kind},
                "verbs": verbs,
            })
        })
        .collect();
    let mut r = json!({
        "resource": d.plural,
        "responseKind": {"group": d.group, "version": d.version, "kind": d.kind},
        "scope": if d.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": d.singular,
        "verbs": VERBS,
    });
    if !d.short_names.is_empty() {
        r["shortNames"] = json!(d.short_names);
    }
    if !d.categories.is_empty() {
        r["categories"] = json!(d.categories);
    }
    if !subresources.is_empty() {
        r["subresources"] = json!(subresources);
    }
    r
}

/// Aggregated discovery for the core group (`/api`) or every named group (`/apis`).
pub fn aggregated(registry: &Registry, core: bool) -> Value {
    let items: Vec<Value> = registry
        .group_versions()
        .into_iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(g, v)| {
            let resources: Vec<Value> = registry
                .all()
                .filter(|d| d.group == g && d.version == v)
                .map(|d| aggregated_resource(d))
                .collect();
            json!({
                "metadata": {"name": g, "creationTimestamp": null},
                "versions": [{"version": v, "resources": resources, "freshness": "Current"}],
            })
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}
