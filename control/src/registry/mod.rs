//! The resource registry: what the API server knows about each kind it serves.
//!
//! One module per kind holds that kind's "strategy" (the kube-apiserver idea): defaulting,
//! validation on create and update, which fields field selectors may use, the Table
//! columns `kubectl get` prints, and whether it tracks `metadata.generation`. The API
//! server's handlers are generic over [`ResourceDef`]; nothing kind-specific lives there.
//!
//! Objects are handled as `serde_json::Value` so that every field a client sends survives
//! a round trip; each kind also decodes into its `k8s-openapi` type to reject bodies of the
//! wrong shape.

pub mod projection;
pub mod schema;
pub mod selectors;
pub mod table;
pub mod validation;

mod configmaps;
mod controllerrevisions;
mod cronjobs;
mod daemonsets;
mod deployments;
mod endpoints;
mod endpointslices;
mod events;
pub mod jobs;
mod leases;
mod namespaces;
mod nodes;
mod pods;
mod podspec;
mod replicasets;
mod runtimeclasses;
mod secrets;
mod serviceaccounts;
mod services;
mod typeinfo;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

pub use projection::Projection;
pub use table::Column;
pub use validation::Cause;

/// A subresource a kind serves besides the object itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// `<plural>/status`: writes only `.status`; the main resource ignores `.status`.
    Status,
    /// `<plural>/scale`: an `autoscaling/v1` Scale view of `.spec.replicas`.
    Scale,
    /// `pods/binding`: assigns a pod to a node.
    Binding,
    /// `namespaces/finalize`: edits `.spec.finalizers`.
    Finalize,
    /// `pods/log`.
    Log,
    /// `pods/exec`.
    Exec,
    /// `pods/portforward`.
    PortForward,
    /// `serviceaccounts/token`: the TokenRequest API.
    Token,
}

impl Subresource {
    pub fn name(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale => "scale",
            Subresource::Binding => "binding",
            Subresource::Finalize => "finalize",
            Subresource::Log => "log",
            Subresource::Exec => "exec",
            Subresource::PortForward => "portforward",
            Subresource::Token => "token",
        }
    }

    pub fn parse(s: &str) -> Option<Subresource> {
        [
            Subresource::Status,
            Subresource::Scale,
            Subresource::Binding,
            Subresource::Finalize,
            Subresource::Log,
            Subresource::Exec,
            Subresource::PortForward,
            Subresource::Token,
        ]
        .into_iter()
        .find(|r| r.name() == s)
    }
}

/// A kind's behaviour. Every method has the neutral default, so a kind only writes what
/// differs.
pub trait Strategy: Send + Sync {
    /// Decodes the object as its `k8s-openapi` type and returns it re-encoded: the
    /// object with exactly the fields Kubernetes knows (unknown ones dropped, nulls
    /// gone). The error names what is wrong (e.g. `invalid type: string "x", expected
    /// i32`).
    fn decode(&self, obj: &Value) -> Result<Value, String>;

    /// Fills defaults, as Kubernetes does when it decodes a request (both on create and
    /// on update).
    fn default(&self, _obj: &mut Value) {}

    /// Resets what a client may not set on create (e.g. a pod's status becomes Pending).
    fn prepare_for_create(&self, _obj: &mut Value) {}

    /// Carries over, on an update of the main resource, what the client may omit or may
    /// not change through it (a Service's allocated ClusterIP, a namespace's
    /// `spec.finalizers`, which only `/finalize` changes). Runs before defaulting.
    fn prepare_for_update(&self, _new: &mut Value, _old: &Value) {}

    /// Validates `metadata.name` (`None` = valid). Most kinds take a DNS-1123 subdomain.
    fn validate_name(&self, name: &str) -> Option<String> {
        validation::dns1123_subdomain(name)
    }

    /// Validates a new object (after defaulting). Field paths as in Kubernetes
    /// (`spec.containers[0].image`).
    fn validate(&self, _obj: &Value) -> Vec<Cause> {
        Vec::new()
    }

    /// Validates an update: immutable fields etc. By default just [`Strategy::validate`].
    fn validate_update(&self, new: &Value, _old: &Value) -> Vec<Cause> {
        self.validate(new)
    }

    /// Whether `metadata.generation` is kept and bumped on spec changes.
    fn tracks_generation(&self) -> bool {
        false
    }

    /// The value of a field for field selectors, for the fields this kind supports beyond
    /// `metadata.name` and `metadata.namespace` (which every kind supports). `None` means
    /// the field is not supported for selection.
    fn field_value(&self, _obj: &Value, _field: &str) -> Option<String> {
        None
    }

    /// Table columns for `kubectl get`, in upstream's order.
    fn columns(&self) -> Vec<Column> {
        table::default_columns()
    }

    /// One Table row's cells for `obj`, matching [`Strategy::columns`]; `now` renders ages.
    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        table::default_cells(obj, now)
    }

    /// The fields label and field selectors read ([`Strategy::field_value`] and
    /// `metadata.name`, `.namespace`, `.labels`): watch events are decoded only this far
    /// to decide which watchers get them.
    fn selector_fields(&self) -> &'static Projection {
        &Projection::All
    }

    /// The fields [`Strategy::cells`] reads: a list's Table rows decode only these.
    fn cell_fields(&self) -> &'static Projection {
        &Projection::All
    }
}

/// Everything the API server knows about one resource.
pub struct ResourceDef {
    /// API group, `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// The plural resource name used in URLs and as the etcd key segment.
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub subresources: &'static [Subresource],
    pub strategy: Box<dyn Strategy>,
}

impl ResourceDef {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `pods` or `deployments.apps`, as Kubernetes names the resource in messages.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// The etcd key prefix of every object of this resource, ending in `/`.
    pub fn key_prefix(&self) -> String {
        if self.group.is_empty() {
            format!("/registry/{}/", self.plural)
        } else {
            format!("/registry/{}/{}/", self.group, self.plural)
        }
    }

    /// The etcd key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{}/{}", self.key_prefix(), ns, name),
            _ => format!("{}{}", self.key_prefix(), name),
        }
    }

    /// The etcd key prefix of this resource's objects in one namespace (or all of them).
    pub fn namespace_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{}/", self.key_prefix(), ns),
            _ => self.key_prefix(),
        }
    }

    pub fn has(&self, sub: Subresource) -> bool {
        self.subresources.contains(&sub)
    }
}

/// Decodes `obj` as `T` and re-encodes it; used by every kind's `decode`.
pub(crate) fn decode_as<T>(obj: &Value) -> Result<Value, String>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    // Deserializing from a borrowed Value spares a deep copy of the object.
    let typed = T::deserialize(obj).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

/// The paths of fields `input` carries that its decoded form `known` does not: fields
/// the kind does not have (`spec.contianers`), as `fieldValidation` reports them.
/// Null values count as absent.
pub fn unknown_fields(input: &Value, known: &Value) -> Vec<String> {
    let mut out = Vec::new();
    collect_unknown(input, known, &mut Vec::new(), &mut out);
    out
}

/// One step of a field path.
enum PathStep<'a> {
    Key(&'a str),
    Index(usize),
}

/// `spec.containers[0].name`; built only for the fields reported, since most writes
/// have none.
fn render_path(path: &[PathStep<'_>]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            PathStep::Key(k) if out.is_empty() => out.push_str(k),
            PathStep::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            PathStep::Index(n) => out.push_str(&format!("[{n}]")),
        }
    }
    out
}

fn collect_unknown<'a>(
    input: &'a Value,
    known: &Value,
    path: &mut Vec<PathStep<'a>>,
    out: &mut Vec<String>,
) {
    match (input, known) {
        (Value::Object(i), Value::Object(k)) => {
            for (key, v) in i {
                if v.is_null() {
                    continue;
                }
                path.push(PathStep::Key(key));
                match k.get(key) {
                    Some(kv) => collect_unknown(v, kv, path, out),
                    None => out.push(render_path(path)),
                }
                path.pop();
            }
        }
        (Value::Array(i), Value::Array(k)) => {
            for (n, (iv, kv)) in i.iter().zip(k.iter()).enumerate() {
                path.push(PathStep::Index(n));
                collect_unknown(iv, kv, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

/// The set of resources the API server serves.
#[derive(Clone)]
pub struct Registry {
    defs: Arc<Vec<Arc<ResourceDef>>>,
}

impl Registry {
    /// Every built-in kind wasmkube serves.
    pub fn builtin() -> Self {
        let defs = vec![
            namespaces::def(),
            pods::def(),
            nodes::def(),
            services::def(),
            endpoints::def(),
            configmaps::def(),
            secrets::def(),
            serviceaccounts::def(),
            events::def(),
            deployments::def(),
            replicasets::def(),
            daemonsets::def(),
            controllerrevisions::def(),
            jobs::def(),
            cronjobs::def(),
            endpointslices::def(),
            leases::def(),
            runtimeclasses::def(),
        ];
        Registry {
            defs: Arc::new(defs.into_iter().map(Arc::new).collect()),
        }
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<ResourceDef>> {
        self.defs.iter()
    }

    /// Finds a resource by group, version and plural name.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.defs
            .iter()
            .find(|d| d.group == group && d.version == version && d.plural == plural)
            .cloned()
    }

    /// Finds a resource by group and kind.
    pub fn by_kind(&self, group: &str, kind: &str) -> Option<Arc<ResourceDef>> {
        self.defs
            .iter()
            .find(|d| d.group == group && d.kind == kind)
            .cloned()
    }

    /// The group/versions served, in discovery order (core first).
    pub fn group_versions(&self) -> Vec<(&'static str, &'static str)> {
        let mut out: Vec<(&'static str, &'static str)> = Vec::new();
        for d in self.defs.iter() {
            if !out.contains(&(d.group, d.version)) {
                out.push((d.group, d.version));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn unknown_fields_are_named_by_their_paths() {
        let input = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "labelz": {"a": "b"}},
            "spec": {
                "containers": [
                    {"name": "a", "image": "x"},
                    {"name": "b", "image": "y", "imagee": "z", "resources": {"limitz": {}}}
                ],
                "nodeName": null,
                "notAField": null
            },
            "extra": 1
        });
        let known = decode_as::<k8s_openapi::api::core::v1::Pod>(&input).expect("decodes");
        let mut unknown = unknown_fields(&input, &known);
        unknown.sort();
        assert_eq!(
            unknown,
            [
                "extra",
                "metadata.labelz",
                "spec.containers[1].imagee",
                "spec.containers[1].resources.limitz",
            ]
        );
        assert!(unknown_fields(&known, &known).is_empty());
        assert_eq!(
            decode_as::<k8s_openapi::api::core::v1::Pod>(&json!({"spec": {"containers": "x"}}))
                .expect_err("a string is not a list"),
            "invalid type: string \"x\", expected a sequence"
        );
    }
}
