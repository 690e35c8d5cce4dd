//! Cluster DNS for pods, answered in the agent: a pod's name lookups (see
//! `wasm/names.rs`) come here first, so `web`, `web.shop` and
//! `web.shop.svc.cluster.local` reach Services as they do through CoreDNS on
//! Kubernetes, without a DNS server on the node.
//!
//! The names are those of the Kubernetes DNS specification, in the cluster domain
//! (`--cluster-domain`, default `cluster.local`):
//! - `<service>.<ns>.svc.<domain>`: the ClusterIPs; a headless Service's ready endpoint
//!   addresses; an ExternalName Service's `externalName`, looked up by the host.
//! - `<hostname>.<service>.<ns>.svc.<domain>`: the endpoint of a headless Service with
//!   that hostname.
//! - `<a-b-c-d>.<ns>.pod.<domain>`: the address a-b-c-d.
//!
//! A pod looks names up as its `resolv.conf` would have it: search domains
//! `<ns>.svc.<domain>`, `svc.<domain>`, `<domain>` plus `dnsConfig.searches`, and
//! `ndots` 5 (or `dnsConfig.options`); its own hostname and `hostAliases` come first, as
//! from `/etc/hosts`. `dnsPolicy: Default` (and a `hostNetwork` pod without
//! `ClusterFirstWithHostNet`, and `None`) skips the cluster names. Any name the cluster
//! does not have goes to the host's resolver; a name inside the cluster domain that does
//! not exist is answered "no such name" at once.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use super::services::Services;
use crate::wasm::{Lookup, Names};

/// The cluster domain when none is configured (the kubelet's usual `--cluster-domain`).
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// resolv.conf's `ndots` on Kubernetes: names with fewer dots try the search domains
/// first.
const DEFAULT_NDOTS: usize = 5;

/// The names of the cluster: Services and pods in the cluster domain.
#[derive(Clone)]
pub struct ClusterNames {
    services: Services,
    domain: Arc<str>,
}

impl ClusterNames {
    pub fn new(services: Services, domain: &str) -> ClusterNames {
        ClusterNames {
            services,
            domain: domain.trim_matches('.').to_ascii_lowercase().into(),
        }
    }

    /// The answer for the absolute name `fqdn` (lowercase, no trailing dot): `None` when
    /// it is outside the cluster domain; no addresses when it is inside but names
    /// nothing.
    fn answer(&self, fqdn: &str) -> Option<Lookup> {
        let inside = fqdn
            .strip_suffix(&*self.domain)
            .and_then(|rest| rest.strip_suffix('.'))?;
        let labels: Vec<&str> = inside.split('.').collect();
        let none = Lookup::Addresses(Vec::new());
        Some(match labels.as_slice() {
            [service, ns, "svc"] => self.service(ns, service, None).unwrap_or(none),
            [host, service, ns, "svc"] => self.service(ns, service, Some(host)).unwrap_or(none),
            [dashed, _ns, "pod"] => dashed
                .replace('-', ".")
                .parse::<Ipv4Addr>()
                .map(|ip| Lookup::Addresses(vec![IpAddr::V4(ip)]))
                .unwrap_or(none),
            _ => none,
        })
    }

    /// The answer for Service `ns/name` (or, with `host`, its endpoint of that hostname).
    fn service(&self, ns: &str, name: &str, host: Option<&str>) -> Option<Lookup> {
        let svc = self.services.get(ns, name)?;
        let spec = svc.spec.as_ref()?;
        if spec.type_.as_deref() == Some("ExternalName") {
            return match host {
                None => spec.external_name.clone().map(Lookup::Host),
                Some(_) => None,
            };
        }
        let headless = spec.cluster_ip.as_deref() == Some("None");
        if !headless {
            if host.is_some() {
                return None;
            }
            let ips = spec
                .cluster_ips
                .iter()
                .flatten()
                .chain(spec.cluster_ip.iter())
                .filter_map(|ip| ip.parse().ok());
            return Some(Lookup::Addresses(unique(ips)));
        }
        let slices = self.services.headless_slices(ns, name);
        let ready = slices
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
            .filter(|e| host.is_none_or(|h| e.hostname.as_deref() == Some(h)))
            .flat_map(|e| e.addresses.iter())
            .filter_map(|a| a.parse().ok());
        Some(Lookup::Addresses(unique(ready)))
    }
}

fn unique(ips: impl Iterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = ips.collect();
    out.sort();
    out.dedup();
    out
}

/// One pod's lookups: its search path over the cluster's names, its hosts entries.
#[derive(Clone)]
pub struct PodNames {
    /// None: the pod's DNS policy leaves the cluster out.
    cluster: Option<ClusterNames>,
    search: Vec<String>,
    ndots: usize,
    /// What the pod's `/etc/hosts` would hold: its hostname(s) and `hostAliases`.
    hosts: Vec<(String, IpAddr)>,
}

impl std::fmt::Debug for PodNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodNames")
            .field("cluster", &self.cluster.as_ref().map(|c| c.domain.clone()))
            .field("search", &self.search)
            .field("ndots", &self.ndots)
            .field("hosts", &self.hosts)
            .finish()
    }
}

impl PodNames {
    /// The lookups of `pod`, whose address is `pod_ip` (if it has its own).
    pub fn for_pod(cluster: &ClusterNames, pod: &Pod, pod_ip: Option<IpAddr>) -> PodNames {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let spec = pod.spec.as_ref();
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let policy = spec
            .and_then(|s| s.dns_policy.as_deref())
            .unwrap_or("ClusterFirst");
        let cluster_first = match policy {
            "ClusterFirstWithHostNet" => true,
            "ClusterFirst" => !host_network,
            _ => false,
        };
        let domain = &cluster.domain;
        let mut search = if cluster_first {
            vec![
                format!("{ns}.svc.{domain}"),
                format!("svc.{domain}"),
                domain.to_string(),
            ]
        } else {
            Vec::new()
        };
        let config = spec.and_then(|s| s.dns_config.as_ref());
        for s in config
            .and_then(|c| c.searches.as_ref())
            .into_iter()
            .flatten()
        {
            let s = s.trim_matches('.').to_ascii_lowercase();
            if !s.is_empty() && !search.contains(&s) {
                search.push(s);
            }
        }
        let ndots = config
            .and_then(|c| c.options.as_ref())
            .into_iter()
            .flatten()
            .filter(|o| o.name.as_deref() == Some("ndots"))
            .find_map(|o| o.value.as_deref()?.parse().ok())
            .unwrap_or(DEFAULT_NDOTS);

        let mut hosts = Vec::new();
        if let Some(ip) = pod_ip {
            let hostname = spec
                .and_then(|s| s.hostname.clone())
                .or_else(|| pod.metadata.name.clone())
                .unwrap_or_default()
                .to_ascii_lowercase();
            if let Some(sub) = spec.and_then(|s| s.subdomain.as_deref()) {
                hosts.push((format!("{hostname}.{sub}.{ns}.svc.{domain}"), ip));
            }
            hosts.push((hostname, ip));
        }
        for alias in spec
            .and_then(|s| s.host_aliases.as_ref())
            .into_iter()
            .flatten()
        {
            let Some(ip) = alias.ip.parse::<IpAddr>().ok() else {
                continue;
            };
            for name in alias.hostnames.iter().flatten() {
                hosts.push((name.to_ascii_lowercase(), ip));
            }
        }
        PodNames {
            cluster: cluster_first.then(|| cluster.clone()),
            search,
            ndots,
            hosts,
        }
    }
}

impl Names for PodNames {
    fn lookup(&self, name: &str) -> Lookup {
        let name = name.to_ascii_lowercase();
        let absolute = name.ends_with('.');
        let bare = name.trim_end_matches('.');
        let from_hosts: Vec<IpAddr> = self
            .hosts
            .iter()
            .filter(|(h, _)| h == bare)
            .map(|(_, ip)| *ip)
            .collect();
        if !from_hosts.is_empty() {
            return Lookup::Addresses(from_hosts);
        }
        let Some(cluster) = &self.cluster else {
            return Lookup::Host(bare.to_string());
        };
        // As a stub resolver walks resolv.conf: a name with enough dots is tried as it is
        // first, any other after the search domains; an absolute name only as it is.
        let expanded = self.search.iter().map(|d| format!("{bare}.{d}"));
        let candidates: Vec<String> = if absolute {
            vec![bare.to_string()]
        } else if bare.matches('.').count() >= self.ndots {
            std::iter::once(bare.to_string()).chain(expanded).collect()
        } else {
            expanded.chain(std::iter::once(bare.to_string())).collect()
        };
        for candidate in &candidates {
            match cluster.answer(candidate) {
                Some(Lookup::Addresses(ips)) if ips.is_empty() => continue,
                // An ExternalName may name another Service: the cluster answers that too.
                Some(Lookup::Host(target)) => {
                    let target = target.trim_end_matches('.').to_ascii_lowercase();
                    return cluster.answer(&target).unwrap_or(Lookup::Host(target));
                }
                Some(found) => return found,
                None => continue,
            }
        }
        if cluster.answer(bare).is_some() {
            // Inside the cluster domain and not there: no DNS server knows more.
            return Lookup::Addresses(Vec::new());
        }
        Lookup::Host(bare.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cluster() -> ClusterNames {
        let svc = |v: serde_json::Value| serde_json::from_value(v).unwrap();
        let services = vec![
            svc(json!({"metadata": {"name": "web", "namespace": "shop"},
                       "spec": {"clusterIP": "127.96.0.7", "clusterIPs": ["127.96.0.7"]}})),
            svc(json!({"metadata": {"name": "db", "namespace": "shop"},
                       "spec": {"clusterIP": "None"}})),
            svc(json!({"metadata": {"name": "ext", "namespace": "shop"},
                       "spec": {"type": "ExternalName", "externalName": "example.com"}})),
            svc(json!({"metadata": {"name": "alias", "namespace": "shop"},
                       "spec": {"type": "ExternalName",
                                "externalName": "Web.Shop.svc.cluster.local."}})),
        ];
        let slice = serde_json::from_value(json!({
            "metadata": {"name": "db-x", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "db",
                                    "service.kubernetes.io/headless": ""}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["127.128.0.2"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["127.128.0.3"], "hostname": "db-1"},
                {"addresses": ["127.128.0.4"], "conditions": {"ready": false}}
            ]
        }))
        .unwrap();
        ClusterNames::new(Services::of(services, vec![slice]), "cluster.local")
    }

    fn pod(ns: &str, spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "client", "namespace": ns},
            "spec": spec
        }))
        .unwrap()
    }

    fn ips(list: &[&str]) -> Lookup {
        Lookup::Addresses(list.iter().map(|s| s.parse().unwrap()).collect())
    }

    #[test]
    fn service_names_resolve_through_the_search_path() {
        let names = PodNames::for_pod(&cluster(), &pod("shop", json!({})), None);
        let web = ips(&["127.96.0.7"]);
        for name in [
            "web",
            "WEB",
            "web.shop",
            "web.shop.svc",
            "web.shop.svc.cluster.local",
            "web.shop.svc.cluster.local.",
        ] {
            assert_eq!(names.lookup(name), web, "{name}");
        }
        // A headless Service: its ready endpoints; one by its hostname.
        assert_eq!(names.lookup("db"), ips(&["127.128.0.2", "127.128.0.3"]));
        assert_eq!(
            names.lookup("db-0.db.shop.svc.cluster.local"),
            ips(&["127.128.0.2"])
        );
        assert_eq!(names.lookup("ext"), Lookup::Host("example.com".into()));
        assert_eq!(names.lookup("alias"), web);
        assert_eq!(
            names.lookup("127-128-9-9.shop.pod.cluster.local"),
            ips(&["127.128.9.9"])
        );
        // Inside the cluster domain but nothing: no address, and no host lookup.
        assert_eq!(names.lookup("nope.shop.svc.cluster.local"), ips(&[]));
        assert_eq!(
            names.lookup("web.shop.svc.cluster.local.x"),
            Lookup::Host("web.shop.svc.cluster.local.x".into())
        );
        // Not a cluster name: the host's resolver.
        assert_eq!(
            names.lookup("example.org"),
            Lookup::Host("example.org".into())
        );
        // An absolute name is not expanded.
        assert_eq!(names.lookup("web."), Lookup::Host("web".into()));
    }

    #[test]
    fn another_namespace_needs_the_namespace_in_the_name() {
        let names = PodNames::for_pod(&cluster(), &pod("other", json!({})), None);
        assert_eq!(names.lookup("web"), Lookup::Host("web".into()));
        assert_eq!(names.lookup("web.shop"), ips(&["127.96.0.7"]));
    }

    #[test]
    fn hosts_entries_and_dns_policy() {
        let own: IpAddr = "127.128.0.9".parse().unwrap();
        let spec = json!({
            "hostname": "box", "subdomain": "db",
            "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["Foo.Local", "bar"]}],
            "dnsConfig": {"searches": ["corp.example"], "options": [{"name": "ndots", "value": "1"}]}
        });
        let names = PodNames::for_pod(&cluster(), &pod("shop", spec), Some(own));
        assert_eq!(names.lookup("box"), Lookup::Addresses(vec![own]));
        assert_eq!(
            names.lookup("box.db.shop.svc.cluster.local"),
            Lookup::Addresses(vec![own])
        );
        assert_eq!(names.lookup("foo.local"), ips(&["10.1.2.3"]));
        assert_eq!(names.lookup("bar"), ips(&["10.1.2.3"]));
        assert_eq!(
            names.search.last().map(String::as_str),
            Some("corp.example")
        );
        // ndots 1: a dotted name is tried as it is first, then still through the search.
        assert_eq!(names.lookup("web.shop"), ips(&["127.96.0.7"]));

        for spec in [
            json!({"dnsPolicy": "Default"}),
            json!({"hostNetwork": true}),
            json!({"dnsPolicy": "None"}),
        ] {
            let names = PodNames::for_pod(&cluster(), &pod("shop", spec.clone()), None);
            assert_eq!(names.lookup("web"), Lookup::Host("web".into()), "{spec}");
        }
        let names = PodNames::for_pod(
            &cluster(),
            &pod(
                "shop",
                json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}),
            ),
            None,
        );
        assert_eq!(names.lookup("web"), ips(&["127.96.0.7"]));
    }
}
