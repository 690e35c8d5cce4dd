//! What a request addresses: parsing `/api/v1/namespaces/ns/pods/name/status` into group,
//! version, namespace, resource, name and subresource (kube-apiserver's RequestInfo), and
//! reading the common query parameters.

use std::collections::HashMap;

/// Where a request path points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `/api`: the legacy core group's versions.
    CoreVersions,
    /// `/apis`: the group list.
    Groups,
    /// `/apis/<group>`.
    Group(String),
    /// `/api/v1` or `/apis/<group>/<version>`: the resource list.
    Resources { group: String, version: String },
    /// A resource, an object or a subresource.
    Resource(ResourcePath),
}

/// A path under a group/version that names a resource.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourcePath {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// Namespace subresources, which share the `/namespaces/<name>/<x>` shape with namespaced
/// collections and must be told apart from them.
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

/// Parses an API path; `None` when it is not under `/api` or `/apis`.
pub fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api"] => return Some(Target::CoreVersions),
        ["api", version] => {
            return Some(Target::Resources {
                group: String::new(),
                version: version.to_string(),
            })
        }
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis"] => return Some(Target::Groups),
        ["apis", group] => return Some(Target::Group(group.to_string())),
        ["apis", group, version] => {
            return Some(Target::Resources {
                group: group.to_string(),
                version: version.to_string(),
            })
        }
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let mut rp = ResourcePath {
        group: group.to_string(),
        version: version.to_string(),
        ..Default::default()
    };
    let mut rest: Vec<&str> = rest.to_vec();
    if rest.first() == Some(&"namespaces")
        && rest.len() > 2
        && !NAMESPACE_SUBRESOURCES.contains(&rest[2])
    {
        rp.namespace = Some(rest[1].to_string());
        rest.drain(..2);
    }
    match rest.as_slice() {
        [resource] => rp.resource = resource.to_string(),
        [resource, name] => {
            rp.resource = resource.to_string();
            rp.name = Some(name.to_string());
        }
        [resource, name, sub] => {
            rp.resource = resource.to_string();
            rp.name = Some(name.to_string());
            rp.subresource = Some(sub.to_string());
        }
        _ => return None,
    }
    Some(Target::Resource(rp))
}

/// Decoded query parameters (last value wins, as in Go's `url.Values.Get`... first wins
/// there; Kubernetes clients never repeat them).
#[derive(Debug, Clone, Default)]
pub struct Query(HashMap<String, String>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Self {
        let mut map = HashMap::new();
        if let Some(q) = raw {
            for (k, v) in form_urlencoded::parse(q.as_bytes()) {
                map.entry(k.into_owned()).or_insert_with(|| v.into_owned());
            }
        }
        Query(map)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// A non-empty parameter.
    pub fn non_empty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }

    /// `true`/`1` as Kubernetes reads booleans.
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true") | Some("1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp(t: Option<Target>) -> ResourcePath {
        match t {
            Some(Target::Resource(r)) => r,
            other => panic!("not a resource path: {other:?}"),
        }
    }

    #[test]
    fn paths() {
        assert_eq!(parse_path("/api"), Some(Target::CoreVersions));
        assert_eq!(parse_path("/apis/apps"), Some(Target::Group("apps".into())));
        let r = rp(parse_path("/api/v1/namespaces/ns1/pods/web/status"));
        assert_eq!(r.namespace.as_deref(), Some("ns1"));
        assert_eq!(r.resource, "pods");
        assert_eq!(r.name.as_deref(), Some("web"));
        assert_eq!(r.subresource.as_deref(), Some("status"));
        let r = rp(parse_path("/api/v1/namespaces/ns1"));
        assert_eq!(r.resource, "namespaces");
        assert_eq!(r.name.as_deref(), Some("ns1"));
        assert_eq!(r.namespace, None);
        let r = rp(parse_path("/api/v1/namespaces/ns1/finalize"));
        assert_eq!(r.resource, "namespaces");
        assert_eq!(r.subresource.as_deref(), Some("finalize"));
        let r = rp(parse_path("/api/v1/namespaces/ns1/configmaps"));
        assert_eq!(r.resource, "configmaps");
        assert_eq!(r.namespace.as_deref(), Some("ns1"));
        let r = rp(parse_path("/apis/apps/v1/deployments"));
        assert_eq!(r.group, "apps");
        assert_eq!(r.namespace, None);
        assert_eq!(parse_path("/healthz"), None);
        assert_eq!(parse_path("/api/v1/a/b/c/d"), None);
    }
}
