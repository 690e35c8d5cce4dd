//! EndpointSlice: the EndpointSlice strategy.
//!
//! Slices are what kube-proxy-like consumers (our proxy) read. `addressType` fixes how
//! every address in the slice is checked and may not change after creation.

use std::collections::HashSet;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::table::{self, Column};
use super::validation::{self, Cause};
use super::{decode_as, ResourceDef, Strategy};

const ADDRESS_TYPES: &[&str] = &["FQDN", "IPv4", "IPv6"];
const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const MAX_ADDRESSES: usize = 100;
const MAX_ENDPOINTS: usize = 1000;
const MAX_PORTS: usize = 100;
/// How many ports or addresses a table cell lists before `+ N more...`.
const SHOWN: usize = 3;

struct EndpointSliceStrategy;

fn array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// Joins up to [`SHOWN`] items, then `+ N more...`; `<unset>` when there are none.
fn list_with_more(items: impl Iterator<Item = String>) -> String {
    let all: Vec<String> = items.collect();
    if all.is_empty() {
        return "<unset>".to_string();
    }
    if all.len() > SHOWN {
        format!("{} + {} more...", all[..SHOWN].join(","), all.len() - SHOWN)
    } else {
        all.join(",")
    }
}

/// The `PORTS` cell: port numbers (or names, or `*`).
fn format_ports(obj: &Value) -> String {
    list_with_more(array(obj, "ports").iter().map(|p| {
        if let Some(n) = p.get("port").and_then(Value::as_i64) {
            n.to_string()
        } else if let Some(name) = p.get("name").and_then(Value::as_str) {
            name.to_string()
        } else {
            "*".to_string()
        }
    }))
}

/// The `ENDPOINTS` cell: every endpoint's addresses.
fn format_addresses(obj: &Value) -> String {
    list_with_more(array(obj, "endpoints").iter().flat_map(|e| {
        array(e, "addresses")
            .iter()
            .map(|a| a.as_str().unwrap_or("").to_string())
    }))
}

fn validate_address(kind: &str, addr: &str, path: String, causes: &mut Vec<Cause>) {
    let msg = match kind {
        "IPv4" => match addr.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => None,
            _ => Some("must be a valid IPv4 address".to_string()),
        },
        "IPv6" => match addr.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => None,
            _ => Some("must be a valid IPv6 address".to_string()),
        },
        "FQDN" => validation::dns1123_subdomain(addr),
        // An unsupported type is reported once, on `addressType`.
        _ => None,
    };
    if let Some(msg) = msg {
        causes.push(Cause::invalid(path, addr, msg));
    }
}

impl Strategy for EndpointSliceStrategy {
    fn decode(&self, obj: &Value) -> Result<Value, String> {
        decode_as::<k8s_openapi::api::discovery::v1::EndpointSlice>(obj)
    }

    fn default(&self, obj: &mut Value) {
        let Some(ports) = obj.get_mut("ports").and_then(Value::as_array_mut) else {
            return;
        };
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            if p.get("name").is_none_or(Value::is_null) {
                p.insert("name".to_string(), json!(""));
            }
            if p.get("protocol").is_none_or(Value::is_null) {
                p.insert("protocol".to_string(), json!("TCP"));
            }
        }
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        let kind = table::str_at(obj, "/addressType");
        if kind.is_empty() {
            causes.push(Cause::required("addressType"));
        } else if !ADDRESS_TYPES.contains(&kind) {
            causes.push(Cause::not_supported("addressType", kind, ADDRESS_TYPES));
        }
        let endpoints = array(obj, "endpoints");
        if endpoints.len() > MAX_ENDPOINTS {
            causes.push(Cause::invalid_int(
                "endpoints",
                endpoints.len() as i64,
                format!("must have at most {MAX_ENDPOINTS} items"),
            ));
        }
        for (i, e) in endpoints.iter().enumerate() {
            let path = format!("endpoints[{i}].addresses");
            let addrs = array(e, "addresses");
            if addrs.is_empty() {
                causes.push(Cause::required(path.clone()));
            } else if addrs.len() > MAX_ADDRESSES {
                causes.push(Cause::invalid_int(
                    path.clone(),
                    addrs.len() as i64,
                    format!("must have at most {MAX_ADDRESSES} items"),
                ));
            }
            for (j, a) in addrs.iter().enumerate() {
                validate_address(
                    kind,
                    a.as_str().unwrap_or(""),
                    format!("{path}[{j}]"),
                    &mut causes,
                );
            }
            let host = table::str_at(e, "/hostname");
            if !host.is_empty() {
                if let Some(msg) = validation::dns1123_label(host) {
                    causes.push(Cause::invalid(
                        format!("endpoints[{i}].hostname"),
                        host,
                        msg,
                    ));
                }
            }
        }
        let ports = array(obj, "ports");
        if ports.len() > MAX_PORTS {
            causes.push(Cause::invalid_int(
                "ports",
                ports.len() as i64,
                format!("must have at most {MAX_PORTS} items"),
            ));
        }
        let mut names = HashSet::new();
        for (i, p) in ports.iter().enumerate() {
            let path = format!("ports[{i}]");
            let name = table::str_at(p, "/name");
            if !name.is_empty() {
                if let Some(msg) = validation::dns1123_label(name) {
                    causes.push(Cause::invalid(format!("{path}.name"), name, msg));
                }
            }
            if !names.insert(name) {
                causes.push(Cause::duplicate(format!("{path}.name"), name));
            }
            if let Some(port) = p.get("port").and_then(Value::as_i64) {
                if let Some(msg) = validation::port_number(port) {
                    causes.push(Cause::invalid_int(format!("{path}.port"), port, msg));
                }
            }
            let proto = table::str_at(p, "/protocol");
            if !proto.is_empty() && !PROTOCOLS.contains(&proto) {
                causes.push(Cause::not_supported(
                    format!("{path}.protocol"),
                    proto,
                    PROTOCOLS,
                ));
            }
        }
        causes
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let mut causes = self.validate(new);
        causes.extend(validation::immutable(
            "addressType",
            "/addressType",
            new,
            old,
        ));
        causes
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::name(),
            Column::new(
                "AddressType",
                "string",
                "addressType specifies the type of address carried by this EndpointSlice. All addresses in this slice must be the same type. This field is immutable after creation. The following address types are currently supported: * IPv4: Represents an IPv4 Address. * IPv6: Represents an IPv6 Address. * FQDN: Represents a Fully Qualified Domain Name. (Deprecated) The EndpointSlice controller only generates, and kube-proxy only processes, slices of addressType \"IPv4\" and \"IPv6\". No semantics are defined for the \"FQDN\" type.",
            ),
            Column::new(
                "Ports",
                "string",
                "ports specifies the list of network ports exposed by each endpoint in this slice. Each port must have a unique name. Each slice may include a maximum of 100 ports. Services always have at least 1 port, so EndpointSlices generated by the EndpointSlice controller will likewise always have at least 1 port. EndpointSlices used for other purposes may have an empty ports list.",
            ),
            Column::new(
                "Endpoints",
                "string",
                "endpoints is a list of unique endpoints in this slice. Each slice may include a maximum of 1000 endpoints.",
            ),
            Column::age(),
        ]
    }

    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        vec![
            json!(table::name_of(obj)),
            json!(table::str_at(obj, "/addressType")),
            json!(format_ports(obj)),
            json!(format_addresses(obj)),
            json!(table::age(obj, now)),
        ]
    }
}

pub(super) fn def() -> ResourceDef {
    ResourceDef {
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        plural: "endpointslices",
        singular: "endpointslice",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
        strategy: Box::new(EndpointSliceStrategy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2024-01-01T00:00:10Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    fn slice() -> Value {
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "creationTimestamp": "2024-01-01T00:00:00Z",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"]},
                {"addresses": ["10.0.0.3"]},
                {"addresses": ["10.0.0.4"]},
                {"addresses": ["10.0.0.5"]}
            ]
        })
    }

    #[test]
    fn cells_match_kubectl() {
        let s = EndpointSliceStrategy;
        let mut es = slice();
        s.default(&mut es);
        assert!(s.decode(&es).is_ok());
        assert_eq!(es["ports"][0]["protocol"], "TCP");
        assert_eq!(
            s.cells(&es, now()),
            vec![
                json!("web-abc"),
                json!("IPv4"),
                json!("80,443"),
                json!("10.0.0.1,10.0.0.2,10.0.0.3 + 2 more..."),
                json!("10s")
            ]
        );
        let empty = json!({"metadata": {"name": "e"}, "addressType": "IPv4"});
        let cells = s.cells(&empty, now());
        assert_eq!(cells[2], json!("<unset>"));
        assert_eq!(cells[3], json!("<unset>"));
        let unnamed = json!({"ports": [{"name": "dns"}, {}]});
        assert_eq!(format_ports(&unnamed), "dns,*");
    }

    #[test]
    fn validation() {
        let s = EndpointSliceStrategy;
        let mut es = slice();
        s.default(&mut es);
        assert!(s.validate(&es).is_empty());

        let bad = json!({
            "endpoints": [{"addresses": []}],
            "ports": [{"name": "a", "port": 99999, "protocol": "TCP"}, {"name": "a", "protocol": "ICMP"}]
        });
        let fields: Vec<String> = s.validate(&bad).into_iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            vec![
                "addressType",
                "endpoints[0].addresses",
                "ports[0].port",
                "ports[1].name",
                "ports[1].protocol"
            ]
        );
        let v6_in_v4 = json!({"addressType": "IPv4", "endpoints": [{"addresses": ["fd00::1"]}]});
        let causes = s.validate(&v6_in_v4);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "endpoints[0].addresses[0]");
    }

    #[test]
    fn address_type_is_immutable() {
        let s = EndpointSliceStrategy;
        let old = json!({"addressType": "IPv4"});
        let new = json!({"addressType": "IPv6"});
        let causes = s.validate_update(&new, &old);
        assert_eq!(causes.len(), 1);
        assert_eq!(
            causes[0].message,
            "Invalid value: \"IPv6\": field is immutable"
        );
        assert!(s.validate_update(&old, &old).is_empty());
    }
}
