//! Service: the Service strategy.
//!
//! Defaulting mirrors `SetDefaults_Service` plus the IP-family defaults the service
//! registry applies, except the cluster IP and node ports themselves: the API server's
//! allocators assign those (and, on an update that omits them, must carry the allocated
//! values over from the old object before validation).

use std::collections::{BTreeSet, HashSet};

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::table::{self, Column};
use super::validation::{self, Cause};
use super::{decode_as, ResourceDef, Strategy, Subresource};

const TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const AFFINITIES: &[&str] = &["ClientIP", "None"];
const TRAFFIC_POLICIES: &[&str] = &["Cluster", "Local"];
const FAMILY_POLICIES: &[&str] = &["PreferDualStack", "RequireDualStack", "SingleStack"];
const FAMILIES: &[&str] = &["IPv4", "IPv6"];
/// `sessionAffinityConfig.clientIP.timeoutSeconds` default: three hours.
const DEFAULT_AFFINITY_TIMEOUT: i64 = 10800;
const MAX_AFFINITY_TIMEOUT: i64 = 86400;

struct ServiceStrategy;

fn spec_type(obj: &Value) -> &str {
    table::str_at(obj, "/spec/type")
}

fn uses_node_ports(ty: &str) -> bool {
    ty == "NodePort" || ty == "LoadBalancer"
}

/// The primary cluster IP: `clusterIPs[0]`, else `clusterIP`, else "".
fn cluster_ip(obj: &Value) -> &str {
    let first = table::str_at(obj, "/spec/clusterIPs/0");
    if first.is_empty() {
        table::str_at(obj, "/spec/clusterIP")
    } else {
        first
    }
}

fn is_missing(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        _ => false,
    }
}

fn set_if_missing(map: &mut Map<String, Value>, key: &str, value: Value) {
    if is_missing(map.get(key)) {
        map.insert(key.to_string(), value);
    }
}

fn default_port(port: &mut Value) {
    let Some(p) = port.as_object_mut() else {
        return;
    };
    set_if_missing(p, "protocol", json!("TCP"));
    let number = p.get("port").and_then(Value::as_i64);
    let target_unset = match p.get("targetPort") {
        None | Some(Value::Null) => true,
        Some(Value::Number(n)) => n.as_i64() == Some(0),
        Some(Value::String(s)) => s.is_empty(),
        _ => false,
    };
    if let (true, Some(n)) = (target_unset, number) {
        p.insert("targetPort".to_string(), json!(n));
    }
}

/// `EXTERNAL-IP` as kubectl prints it.
fn external_ip(obj: &Value) -> String {
    let external: Vec<&str> = obj
        .pointer("/spec/externalIPs")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    match spec_type(obj) {
        "ClusterIP" | "NodePort" => {
            if external.is_empty() {
                "<none>".to_string()
            } else {
                external.join(",")
            }
        }
        "LoadBalancer" => {
            let ingress: BTreeSet<&str> = obj
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|i| {
                            let ip = table::str_at(i, "/ip");
                            let host = table::str_at(i, "/hostname");
                            if !ip.is_empty() {
                                Some(ip)
                            } else if !host.is_empty() {
                                Some(host)
                            } else {
                                None
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mut all: Vec<&str> = ingress.into_iter().collect();
            all.extend(external);
            if all.is_empty() {
                "<pending>".to_string()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => table::str_at(obj, "/spec/externalName").to_string(),
        _ => "<unknown>".to_string(),
    }
}

/// `PORT(S)`: `80/TCP`, `80:30080/TCP`, comma-separated, or `<none>`.
fn ports_string(obj: &Value) -> String {
    let pieces: Vec<String> = obj
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|ports| {
            ports
                .iter()
                .map(|p| {
                    let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
                    let proto = table::str_at(p, "/protocol");
                    match p.get("nodePort").and_then(Value::as_i64) {
                        Some(np) if np > 0 => format!("{port}:{np}/{proto}"),
                        _ => format!("{port}/{proto}"),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    if pieces.is_empty() {
        "<none>".to_string()
    } else {
        pieces.join(",")
    }
}

fn validate_ports(spec: &Value, ty: &str, causes: &mut Vec<Cause>) {
    let ports = spec
        .get("ports")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let headless = table::str_at(spec, "/clusterIP") == "None";
    if ports.is_empty() && !headless && ty != "ExternalName" {
        causes.push(Cause::required("spec.ports"));
    }
    let require_name = ports.len() > 1;
    let mut names = HashSet::new();
    let mut port_keys = HashSet::new();
    let mut node_port_keys = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        let name = table::str_at(p, "/name");
        if name.is_empty() {
            if require_name {
                causes.push(Cause::required(format!("{path}.name")));
            }
        } else {
            if let Some(msg) = validation::dns1123_label(name) {
                causes.push(Cause::invalid(format!("{path}.name"), name, msg));
            }
            if !names.insert(name) {
                causes.push(Cause::duplicate(format!("{path}.name"), name));
            }
        }
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if let Some(msg) = validation::port_number(port) {
            causes.push(Cause::invalid_int(format!("{path}.port"), port, msg));
        }
        let proto = table::str_at(p, "/protocol");
        if proto.is_empty() {
            causes.push(Cause::required(format!("{path}.protocol")));
        } else if !PROTOCOLS.contains(&proto) {
            causes.push(Cause::not_supported(
                format!("{path}.protocol"),
                proto,
                PROTOCOLS,
            ));
        }
        match p.get("targetPort") {
            Some(Value::Number(n)) => {
                let n = n.as_i64().unwrap_or(0);
                if let Some(msg) = validation::port_number(n) {
                    causes.push(Cause::invalid_int(format!("{path}.targetPort"), n, msg));
                }
            }
            Some(Value::String(s)) => {
                for msg in validation::port_name(s) {
                    causes.push(Cause::invalid(format!("{path}.targetPort"), s, msg));
                }
            }
            _ => {}
        }
        let node_port = p.get("nodePort").and_then(Value::as_i64).unwrap_or(0);
        if node_port != 0 {
            if !uses_node_ports(ty) {
                causes.push(Cause::forbidden(
                    format!("{path}.nodePort"),
                    format!("may not be used when `type` is '{ty}'"),
                ));
            } else if let Some(msg) = validation::port_number(node_port) {
                causes.push(Cause::invalid_int(
                    format!("{path}.nodePort"),
                    node_port,
                    msg,
                ));
            } else if !node_port_keys.insert((node_port, proto)) {
                causes.push(Cause::duplicate(
                    format!("{path}.nodePort"),
                    &node_port.to_string(),
                ));
            }
        }
        if !port_keys.insert((port, proto)) {
            causes.push(Cause::duplicate(path, &format!("{port}/{proto}")));
        }
    }
}

fn validate_ips(spec: &Value, ty: &str, causes: &mut Vec<Cause>) {
    let cluster_ip = table::str_at(spec, "/clusterIP");
    let ips: Vec<&str> = spec
        .get("clusterIPs")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|v| v.as_str().unwrap_or("")).collect())
        .unwrap_or_default();
    if ty == "ExternalName" {
        if !cluster_ip.is_empty() || !ips.is_empty() {
            causes.push(Cause::forbidden(
                "spec.clusterIP",
                "may not be set for ExternalName services",
            ));
        }
        return;
    }
    if !ips.is_empty() && !cluster_ip.is_empty() && ips[0] != cluster_ip {
        causes.push(Cause::invalid(
            "spec.clusterIPs",
            &ips.join(","),
            "first value must match `clusterIP`",
        ));
    }
    for (i, ip) in ips.iter().enumerate() {
        if *ip == "None" {
            if i > 0 || ips.len() > 1 {
                causes.push(Cause::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    ip,
                    "'None' must be the first and only value",
                ));
            } else if ty != "ClusterIP" {
                causes.push(Cause::invalid(
                    "spec.clusterIP",
                    ip,
                    "may only be set to 'None' for ClusterIP services",
                ));
            }
        } else if let Some(msg) = validation::ip_address(ip) {
            causes.push(Cause::invalid(format!("spec.clusterIPs[{i}]"), ip, msg));
        }
    }
    if ips.is_empty() && !cluster_ip.is_empty() && cluster_ip != "None" {
        if let Some(msg) = validation::ip_address(cluster_ip) {
            causes.push(Cause::invalid("spec.clusterIP", cluster_ip, msg));
        }
    }
    let families = spec
        .get("ipFamilies")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut seen = HashSet::new();
    for (i, f) in families.iter().enumerate() {
        let f = f.as_str().unwrap_or("");
        if !FAMILIES.contains(&f) {
            causes.push(Cause::not_supported(
                format!("spec.ipFamilies[{i}]"),
                f,
                FAMILIES,
            ));
        } else if !seen.insert(f) {
            causes.push(Cause::duplicate(format!("spec.ipFamilies[{i}]"), f));
        }
    }
    let policy = table::str_at(spec, "/ipFamilyPolicy");
    if !policy.is_empty() && !FAMILY_POLICIES.contains(&policy) {
        causes.push(Cause::not_supported(
            "spec.ipFamilyPolicy",
            policy,
            FAMILY_POLICIES,
        ));
    }
}

impl Strategy for ServiceStrategy {
    fn decode(&self, obj: &Value) -> Result<Value, String> {
        decode_as::<k8s_openapi::api::core::v1::Service>(obj)
    }

    fn default(&self, obj: &mut Value) {
        let Some(map) = obj.as_object_mut() else {
            return;
        };
        let spec = map.entry("spec").or_insert_with(|| json!({}));
        let Some(spec) = spec.as_object_mut() else {
            return;
        };
        set_if_missing(spec, "type", json!("ClusterIP"));
        set_if_missing(spec, "sessionAffinity", json!("None"));
        let ty = spec
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if spec.get("sessionAffinity").and_then(Value::as_str) == Some("ClientIP") {
            let cfg = spec
                .entry("sessionAffinityConfig")
                .or_insert_with(|| json!({}));
            if let Some(cfg) = cfg.as_object_mut() {
                let client = cfg.entry("clientIP").or_insert_with(|| json!({}));
                if let Some(client) = client.as_object_mut() {
                    set_if_missing(client, "timeoutSeconds", json!(DEFAULT_AFFINITY_TIMEOUT));
                }
            }
        }
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            ports.iter_mut().for_each(default_port);
        }
        if uses_node_ports(&ty) {
            set_if_missing(spec, "externalTrafficPolicy", json!("Cluster"));
        }
        if ty == "LoadBalancer" {
            set_if_missing(spec, "allocateLoadBalancerNodePorts", json!(true));
        }
        if ty == "ExternalName" {
            return;
        }
        set_if_missing(spec, "internalTrafficPolicy", json!("Cluster"));
        // Keep `clusterIP` and `clusterIPs` in step, as the API's conversion does, so
        // that whichever one a client set is what the allocator sees.
        let single = spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let first = spec
            .get("clusterIPs")
            .and_then(|ips| ips.get(0))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if !single.is_empty() && first.is_empty() {
            spec.insert("clusterIPs".to_string(), json!([single]));
        } else if single.is_empty() && !first.is_empty() {
            spec.insert("clusterIP".to_string(), json!(first));
        }
        let primary = if first.is_empty() { single } else { first };
        let family = match primary.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(_)) => "IPv6",
            _ => "IPv4",
        };
        set_if_missing(spec, "ipFamilyPolicy", json!("SingleStack"));
        set_if_missing(spec, "ipFamilies", json!([family]));
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        if let Some(map) = obj.as_object_mut() {
            map.insert("status".to_string(), json!({"loadBalancer": {}}));
        }
    }

    /// A client that re-sends a Service without its allocated ClusterIP or NodePorts
    /// (as `kubectl replace` of a hand-written manifest does) keeps them, as in
    /// Kubernetes; changing them is refused by validation instead.
    fn prepare_for_update(&self, new: &mut Value, old: &Value) {
        let Some(old_spec) = old.get("spec") else {
            return;
        };
        let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
            return;
        };
        let ty = spec
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        let ip_given = spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
            || spec
                .get("clusterIPs")
                .and_then(|ips| ips.get(0))
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty());
        if ty != "ExternalName" && !ip_given {
            for field in ["clusterIP", "clusterIPs"] {
                if let Some(v) = old_spec.get(field) {
                    spec.insert(field.to_string(), v.clone());
                }
            }
            for field in ["ipFamilies", "ipFamilyPolicy"] {
                if let Some(v) = old_spec.get(field) {
                    spec.entry(field.to_string()).or_insert_with(|| v.clone());
                }
            }
        }
        if !uses_node_ports(&ty) {
            return;
        }
        let old_ports = old_spec
            .get("ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for port in ports.iter_mut() {
                let has = port.get("nodePort").and_then(Value::as_u64).unwrap_or(0) != 0;
                if has {
                    continue;
                }
                let same = old_ports.iter().find(|o| {
                    o.get("port") == port.get("port")
                        && o.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
                            == port
                                .get("protocol")
                                .and_then(Value::as_str)
                                .unwrap_or("TCP")
                });
                if let Some(np) = same
                    .and_then(|o| o.get("nodePort"))
                    .filter(|v| !v.is_null())
                {
                    port["nodePort"] = np.clone();
                }
            }
        }
    }

    fn validate_name(&self, name: &str) -> Option<String> {
        validation::dns1123_label(name)
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        let empty = json!({});
        let spec = obj.get("spec").unwrap_or(&empty);
        let ty = table::str_at(spec, "/type");
        if !TYPES.contains(&ty) {
            causes.push(Cause::not_supported("spec.type", ty, TYPES));
        }
        validate_ports(spec, ty, &mut causes);
        validate_ips(spec, ty, &mut causes);
        if ty == "ExternalName" {
            let name = table::str_at(spec, "/externalName");
            if name.is_empty() {
                causes.push(Cause::required("spec.externalName"));
            } else if let Some(msg) =
                validation::dns1123_subdomain(name.strip_suffix('.').unwrap_or(name))
            {
                causes.push(Cause::invalid("spec.externalName", name, msg));
            }
        }
        let affinity = table::str_at(spec, "/sessionAffinity");
        if !affinity.is_empty() && !AFFINITIES.contains(&affinity) {
            causes.push(Cause::not_supported(
                "spec.sessionAffinity",
                affinity,
                AFFINITIES,
            ));
        }
        if affinity == "ClientIP" {
            let path = "spec.sessionAffinityConfig.clientIP.timeoutSeconds";
            if let Some(t) = spec
                .pointer("/sessionAffinityConfig/clientIP/timeoutSeconds")
                .and_then(Value::as_i64)
            {
                if t <= 0 || t > MAX_AFFINITY_TIMEOUT {
                    causes.push(Cause::invalid_int(
                        path,
                        t,
                        format!("must be greater than 0 and less than {MAX_AFFINITY_TIMEOUT}"),
                    ));
                }
            }
        }
        let etp = table::str_at(spec, "/externalTrafficPolicy");
        if !etp.is_empty() {
            if !uses_node_ports(ty) {
                causes.push(Cause::invalid(
                    "spec.externalTrafficPolicy",
                    etp,
                    "may only be set when `type` is 'NodePort' or 'LoadBalancer'",
                ));
            } else if !TRAFFIC_POLICIES.contains(&etp) {
                causes.push(Cause::not_supported(
                    "spec.externalTrafficPolicy",
                    etp,
                    TRAFFIC_POLICIES,
                ));
            }
        }
        let itp = table::str_at(spec, "/internalTrafficPolicy");
        if !itp.is_empty() && !TRAFFIC_POLICIES.contains(&itp) {
            causes.push(Cause::not_supported(
                "spec.internalTrafficPolicy",
                itp,
                TRAFFIC_POLICIES,
            ));
        }
        causes.extend(validation::validate_labels(
            spec.get("selector"),
            "spec.selector",
        ));
        if let Some(ips) = spec.get("externalIPs").and_then(Value::as_array) {
            for (i, ip) in ips.iter().enumerate() {
                let ip = ip.as_str().unwrap_or("");
                if let Some(msg) = validation::ip_address(ip) {
                    causes.push(Cause::invalid(format!("spec.externalIPs[{i}]"), ip, msg));
                }
            }
        }
        causes
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let mut causes = self.validate(new);
        // An update that leaves the IP empty is not a change: the server carries the
        // allocated IP over. Switching to or from ExternalName releases or allocates.
        let (new_ip, old_ip) = (cluster_ip(new), cluster_ip(old));
        let crosses_external = spec_type(new) == "ExternalName" || spec_type(old) == "ExternalName";
        if !new_ip.is_empty() && !old_ip.is_empty() && new_ip != old_ip && !crosses_external {
            causes.push(Cause::invalid(
                "spec.clusterIP",
                new_ip,
                "field is immutable",
            ));
        }
        causes
    }

    fn field_value(&self, obj: &Value, field: &str) -> Option<String> {
        match field {
            "spec.clusterIP" => Some(table::str_at(obj, "/spec/clusterIP").to_string()),
            "spec.type" => Some(spec_type(obj).to_string()),
            _ => None,
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::name(),
            Column::new("Type", "string", TYPE_DOC),
            Column::new("Cluster-IP", "string", CLUSTER_IP_DOC),
            Column::new("External-IP", "string", EXTERNAL_IPS_DOC),
            Column::new("Port(s)", "string", PORTS_DOC),
            Column::age(),
            Column::wide("Selector", "string", SELECTOR_DOC),
        ]
    }

    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        let ip = cluster_ip(obj);
        vec![
            json!(table::name_of(obj)),
            json!(spec_type(obj)),
            json!(if ip.is_empty() { "<none>" } else { ip }),
            json!(external_ip(obj)),
            json!(ports_string(obj)),
            json!(table::age(obj, now)),
            json!(table::format_labels(obj.pointer("/spec/selector"))),
        ]
    }
}

const TYPE_DOC: &str = "type determines how the Service is exposed. Defaults to ClusterIP. Valid options are ExternalName, ClusterIP, NodePort, and LoadBalancer. \"ClusterIP\" allocates a cluster-internal IP address for load-balancing to endpoints. Endpoints are determined by the selector or if that is not specified, by manual construction of an Endpoints object or EndpointSlice objects. If clusterIP is \"None\", no virtual IP is allocated and the endpoints are published as a set of endpoints rather than a virtual IP. \"NodePort\" builds on ClusterIP and allocates a port on every node which routes to the same endpoints as the clusterIP. \"LoadBalancer\" builds on NodePort and creates an external load-balancer (if supported in the current cloud) which routes to the same endpoints as the clusterIP. \"ExternalName\" aliases this service to the specified externalName. Several other fields do not apply to ExternalName services. More info: https://kubernetes.io/docs/concepts/services-networking/service/#publishing-services-service-types";
const CLUSTER_IP_DOC: &str = "clusterIP is the IP address of the service and is usually assigned randomly. If an address is specified manually, is in-range (as per system configuration), and is not in use, it will be allocated to the service; otherwise creation of the service will fail. This field may not be changed through updates unless the type field is also being changed to ExternalName (which requires this field to be blank) or the type field is being changed from ExternalName (in which case this field may optionally be specified, as describe above).  Valid values are \"None\", empty string (\"\"), or a valid IP address. Setting this to \"None\" makes a \"headless service\" (no virtual IP), which is useful when direct endpoint connections are preferred and proxying is not required.  Only applies to types ClusterIP, NodePort, and LoadBalancer. If this field is specified when creating a Service of type ExternalName, creation will fail. This field will be wiped when updating a Service to type ExternalName. More info: https://kubernetes.io/docs/concepts/services-networking/service/#virtual-ips-and-service-proxies";
const EXTERNAL_IPS_DOC: &str = "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.  These IPs are not managed by Kubernetes.  The user is responsible for ensuring that traffic arrives at a node with this IP.  A common example is external load-balancers that are not part of the Kubernetes system.";
const PORTS_DOC: &str = "The list of ports that are exposed by this service. More info: https://kubernetes.io/docs/concepts/services-networking/service/#virtual-ips-and-service-proxies";
const SELECTOR_DOC: &str = "Route service traffic to pods with label keys and values matching this selector. If empty or not present, the service is assumed to have an external process managing its endpoints, which Kubernetes will not modify. Only applies to types ClusterIP, NodePort, and LoadBalancer. Ignored if type is ExternalName. More info: https://kubernetes.io/docs/concepts/services-networking/service/";

pub(super) fn def() -> ResourceDef {
    ResourceDef {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
        singular: "service",
        namespaced: true,
        short_names: &["svc"],
        categories: &["all"],
        subresources: &[Subresource::Status],
        strategy: Box::new(ServiceStrategy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2024-01-01T00:05:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    fn defaulted(mut svc: Value) -> Value {
        ServiceStrategy.default(&mut svc);
        svc
    }

    fn fields(causes: &[Cause]) -> Vec<&str> {
        causes.iter().map(|c| c.field.as_str()).collect()
    }

    #[test]
    fn defaults() {
        let svc = defaulted(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}, {"port": 53, "protocol": "UDP", "targetPort": "dns"}]}
        }));
        let spec = &svc["spec"];
        assert_eq!(spec["type"], "ClusterIP");
        assert_eq!(spec["sessionAffinity"], "None");
        assert_eq!(spec["internalTrafficPolicy"], "Cluster");
        assert_eq!(spec["ipFamilyPolicy"], "SingleStack");
        assert_eq!(spec["ipFamilies"], json!(["IPv4"]));
        assert_eq!(spec["ports"][0]["protocol"], "TCP");
        assert_eq!(spec["ports"][0]["targetPort"], 80);
        assert_eq!(spec["ports"][1]["protocol"], "UDP");
        assert_eq!(spec["ports"][1]["targetPort"], "dns");
        // The allocator, not defaulting, assigns the IP.
        assert!(spec.get("clusterIP").is_none());
        assert!(spec.get("externalTrafficPolicy").is_none());
        assert!(ServiceStrategy.decode(&svc).is_ok());
    }

    #[test]
    fn node_port_and_affinity_defaults() {
        let svc = defaulted(json!({"spec": {
            "type": "LoadBalancer", "sessionAffinity": "ClientIP",
            "clusterIP": "fd00::10", "ports": [{"port": 443}]
        }}));
        let spec = &svc["spec"];
        assert_eq!(spec["externalTrafficPolicy"], "Cluster");
        assert_eq!(spec["allocateLoadBalancerNodePorts"], true);
        assert_eq!(
            spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"],
            10800
        );
        assert_eq!(spec["clusterIPs"], json!(["fd00::10"]));
        assert_eq!(spec["ipFamilies"], json!(["IPv6"]));

        let ext =
            defaulted(json!({"spec": {"type": "ExternalName", "externalName": "example.com"}}));
        assert!(ext["spec"].get("ipFamilies").is_none());
        assert!(ext["spec"].get("internalTrafficPolicy").is_none());
        assert!(ServiceStrategy.validate(&ext).is_empty());
    }

    #[test]
    fn valid_service_passes() {
        let svc = defaulted(json!({"metadata": {"name": "web"}, "spec": {
            "type": "NodePort", "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}, {"name": "https", "port": 443}]
        }}));
        assert_eq!(ServiceStrategy.validate(&svc), vec![]);
    }

    #[test]
    fn port_validation() {
        let svc = defaulted(json!({"spec": {"ports": [
            {"port": 80},
            {"name": "a", "port": 0, "protocol": "HTTP", "nodePort": 30001},
            {"name": "a", "port": 70000, "targetPort": "Bad_Name"}
        ]}}));
        let causes = ServiceStrategy.validate(&svc);
        assert_eq!(
            fields(&causes),
            vec![
                "spec.ports[0].name",
                "spec.ports[1].port",
                "spec.ports[1].protocol",
                "spec.ports[1].targetPort",
                "spec.ports[1].nodePort",
                "spec.ports[2].name",
                "spec.ports[2].port",
                "spec.ports[2].targetPort",
            ],
            "{causes:#?}"
        );
        assert_eq!(
            causes[1].message,
            "Invalid value: 0: must be between 1 and 65535, inclusive"
        );
        assert_eq!(causes[2].reason, "FieldValueNotSupported");
        assert_eq!(
            causes[4].message,
            "Forbidden: may not be used when `type` is 'ClusterIP'"
        );
        assert_eq!(causes[5].reason, "FieldValueDuplicate");
    }

    #[test]
    fn ports_required_and_duplicates() {
        let svc = defaulted(json!({"spec": {"selector": {"app": "x"}}}));
        assert_eq!(fields(&ServiceStrategy.validate(&svc)), vec!["spec.ports"]);
        let headless = defaulted(json!({"spec": {"clusterIP": "None"}}));
        assert!(ServiceStrategy.validate(&headless).is_empty());
        let dup = defaulted(
            json!({"spec": {"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}}),
        );
        assert_eq!(
            fields(&ServiceStrategy.validate(&dup)),
            vec!["spec.ports[1]"]
        );
    }

    #[test]
    fn type_and_ip_validation() {
        let svc = defaulted(json!({"spec": {
            "type": "Magic", "clusterIP": "10.0.0.300", "ports": [{"port": 1}],
            "selector": {"bad key": "v"}, "externalIPs": ["nope"]
        }}));
        let causes = ServiceStrategy.validate(&svc);
        assert_eq!(
            fields(&causes),
            vec![
                "spec.type",
                "spec.clusterIPs[0]",
                "spec.selector",
                "spec.externalIPs[0]"
            ],
            "{causes:#?}"
        );
        let ext = defaulted(json!({"spec": {"type": "ExternalName", "clusterIP": "10.0.0.1"}}));
        assert_eq!(
            fields(&ServiceStrategy.validate(&ext)),
            vec!["spec.clusterIP", "spec.externalName"]
        );
        let etp =
            defaulted(json!({"spec": {"externalTrafficPolicy": "Local", "ports": [{"port": 1}]}}));
        assert_eq!(
            fields(&ServiceStrategy.validate(&etp)),
            vec!["spec.externalTrafficPolicy"]
        );
    }

    #[test]
    fn cluster_ip_is_immutable() {
        let old = defaulted(json!({"spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 53}]}}));
        let changed =
            defaulted(json!({"spec": {"clusterIP": "10.96.0.11", "ports": [{"port": 53}]}}));
        let causes = ServiceStrategy.validate_update(&changed, &old);
        assert_eq!(fields(&causes), vec!["spec.clusterIP"]);
        assert_eq!(
            causes[0].message,
            "Invalid value: \"10.96.0.11\": field is immutable"
        );
        let omitted = defaulted(json!({"spec": {"ports": [{"port": 53}]}}));
        assert!(ServiceStrategy.validate_update(&omitted, &old).is_empty());
        assert!(ServiceStrategy.validate_update(&old, &old).is_empty());
    }

    #[test]
    fn cells_match_kubectl() {
        let s = ServiceStrategy;
        let svc = json!({
            "metadata": {"name": "web", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {
                "type": "NodePort", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                "selector": {"tier": "fe", "app": "web"},
                "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}, {"port": 53, "protocol": "UDP"}]
            }
        });
        let cells = s.cells(&svc, now());
        assert_eq!(cells.len(), s.columns().len());
        assert_eq!(
            cells,
            vec![
                json!("web"),
                json!("NodePort"),
                json!("10.96.0.20"),
                json!("<none>"),
                json!("80:30080/TCP,53/UDP"),
                json!("5m"),
                json!("app=web,tier=fe"),
            ]
        );
        let bare = json!({"metadata": {"name": "x"}, "spec": {"type": "ClusterIP"}});
        let cells = s.cells(&bare, now());
        assert_eq!(cells[2], json!("<none>"));
        assert_eq!(cells[4], json!("<none>"));
        assert_eq!(cells[5], json!("<unknown>"));
        assert_eq!(cells[6], json!("<none>"));
    }

    #[test]
    fn external_ip_column() {
        let lb_pending = json!({"spec": {"type": "LoadBalancer"}});
        assert_eq!(external_ip(&lb_pending), "<pending>");
        let lb = json!({"spec": {"type": "LoadBalancer", "externalIPs": ["1.2.3.4"]},
            "status": {"loadBalancer": {"ingress": [{"ip": "9.9.9.9"}, {"hostname": "lb.example"}]}}});
        assert_eq!(external_ip(&lb), "9.9.9.9,lb.example,1.2.3.4");
        let ext = json!({"spec": {"type": "ExternalName", "externalName": "db.example.com"}});
        assert_eq!(external_ip(&ext), "db.example.com");
        let cip = json!({"spec": {"type": "ClusterIP", "externalIPs": ["1.1.1.1", "2.2.2.2"]}});
        assert_eq!(external_ip(&cip), "1.1.1.1,2.2.2.2");
    }

    #[test]
    fn selectable_fields_and_status_reset() {
        let s = ServiceStrategy;
        let mut svc = json!({"spec": {"type": "ClusterIP", "clusterIP": "10.0.0.1"},
            "status": {"loadBalancer": {"ingress": [{"ip": "1.1.1.1"}]}}});
        assert_eq!(
            s.field_value(&svc, "spec.clusterIP").as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(
            s.field_value(&svc, "spec.type").as_deref(),
            Some("ClusterIP")
        );
        assert_eq!(s.field_value(&svc, "spec.ports"), None);
        s.prepare_for_create(&mut svc);
        assert_eq!(svc["status"], json!({"loadBalancer": {}}));
    }

    #[test]
    fn names_are_dns_labels() {
        assert!(ServiceStrategy.validate_name("my-svc").is_none());
        assert!(ServiceStrategy.validate_name("my.svc").is_some());
    }
}
