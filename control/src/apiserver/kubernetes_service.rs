//! The `default/kubernetes` Service: how pods find the API server. As Kubernetes does,
//! the server gives it the first address of the Service range (port 443, named
//! `https`) and keeps its Endpoints and EndpointSlice pointing at its own address, so
//! the node proxies forward `KUBERNETES_SERVICE_HOST:443` to the API server.

use std::net::IpAddr;

use serde_json::{json, Value};

use super::objects::{ApplyOptions, Objects, Ownership, UpdateTarget};
use super::status::ApiError;

/// The field manager the server writes these objects as.
const MANAGER: &str = "kube-apiserver";

/// The names in-cluster clients reach the API server by, which its serving certificate
/// must carry as kube-apiserver's does: the Service's DNS names (in cluster domain
/// `domain`) and its ClusterIP.
pub fn serving_names(service_cidr: ipnet::Ipv4Net, domain: &str) -> Vec<String> {
    let mut names: Vec<String> = ["kubernetes", "kubernetes.default", "kubernetes.default.svc"]
        .map(String::from)
        .into();
    names.push(format!(
        "kubernetes.default.svc.{}",
        domain.trim_matches('.')
    ));
    names.extend(service_cidr.hosts().next().map(|ip| ip.to_string()));
    names
}

/// Creates the Service (once; its address never changes) and points its Endpoints and
/// EndpointSlice at `address:port` (each start: the port may be new).
pub async fn ensure(
    objects: &Objects,
    service_cidr: ipnet::Ipv4Net,
    address: IpAddr,
    port: u16,
) -> Result<(), ApiError> {
    let registry = &objects.registry;
    let (Some(services), Some(endpoints), Some(slices)) = (
        registry.lookup("", "v1", "services"),
        registry.lookup("", "v1", "endpoints"),
        registry.lookup("discovery.k8s.io", "v1", "endpointslices"),
    ) else {
        return Ok(());
    };
    let first_ip = service_cidr.hosts().next().map(|ip| ip.to_string());
    let service = |cluster_ip: Option<&str>| {
        let mut svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {
                "type": "ClusterIP",
                "sessionAffinity": "None",
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}],
            },
        });
        if let Some(ip) = cluster_ip {
            svc["spec"]["clusterIP"] = json!(ip);
        }
        svc
    };
    match objects.get(&services, Some("default"), "kubernetes").await {
        Ok(_) => {}
        Err(e) if e.code == 404 => {
            let created = objects
                .create(
                    &services,
                    Some("default"),
                    service(first_ip.as_deref()),
                    false,
                    Ownership::Update(MANAGER),
                )
                .await;
            match created {
                Ok(_) => {}
                Err(e) if e.reason == "AlreadyExists" => {}
                // The first address went to another Service (a cluster from before
                // this Service existed): any address will do.
                Err(e) if e.code == 422 => {
                    objects
                        .create(
                            &services,
                            Some("default"),
                            service(None),
                            false,
                            Ownership::Update(MANAGER),
                        )
                        .await?;
                }
                Err(e) => return Err(e),
            }
            tracing::info!(
                namespace = "default",
                name = "kubernetes",
                "created the API server's Service"
            );
        }
        Err(e) => return Err(e),
    }
    let ip = address.to_string();
    let family = if address.is_ipv4() { "IPv4" } else { "IPv6" };
    let eps = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default"},
        "subsets": [{"addresses": [{"ip": ip}],
                     "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
    });
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "kubernetes",
                                "endpointslice.kubernetes.io/managed-by": "kube-apiserver"}},
        "addressType": family,
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    });
    for (def, obj) in [(&endpoints, eps), (&slices, slice)] {
        apply(objects, def, obj).await?;
    }
    Ok(())
}

async fn apply(
    objects: &Objects,
    def: &crate::registry::ResourceDef,
    obj: Value,
) -> Result<(), ApiError> {
    objects
        .apply(
            def,
            Some("default"),
            "kubernetes",
            obj,
            ApplyOptions {
                manager: MANAGER,
                force: true,
                target: UpdateTarget::Main,
                dry_run: false,
            },
        )
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_names_follow_the_cluster_domain_and_the_service_range() {
        let names = serving_names("10.43.0.0/16".parse().unwrap(), "edge.example.");
        assert_eq!(
            names,
            [
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.edge.example",
                "10.43.0.1"
            ]
        );
    }
}
