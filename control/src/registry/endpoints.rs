//! Endpoints: the Endpoints strategy.
//!
//! Endpoints are written by the endpoints controller (and by hand for selector-less
//! services); the strategy checks addresses and ports and renders the `ENDPOINTS`
//! column as kubectl does (`10.0.0.1:80,10.0.0.2:80 + 3 more...`).

use std::collections::HashSet;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::table::{self, Column};
use super::validation::{self, Cause};
use super::{decode_as, ResourceDef, Strategy};

const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
/// How many endpoints the table cell lists before `+ N more...`.
const SHOWN: usize = 3;

struct EndpointsStrategy;

fn array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// `ip:port`, with brackets around IPv6 addresses.
fn host_port(ip: &str, port: i64) -> String {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("[{ip}]:{port}"),
        _ => format!("{ip}:{port}"),
    }
}

/// The `ENDPOINTS` cell: ready addresses (with each port), at most three, then
/// `+ N more...`; `<none>` without subsets.
fn format_endpoints(obj: &Value) -> String {
    let subsets = array(obj, "subsets");
    if subsets.is_empty() {
        return "<none>".to_string();
    }
    let mut list: Vec<String> = Vec::new();
    let mut more = false;
    let mut count = 0usize;
    for ss in subsets {
        let addrs = array(ss, "addresses");
        let ports = array(ss, "ports");
        if ports.is_empty() {
            // Headless services may have no ports.
            count += addrs.len();
            for a in addrs {
                if list.len() == SHOWN {
                    more = true;
                    break;
                }
                list.push(table::str_at(a, "/ip").to_string());
            }
            continue;
        }
        for p in ports {
            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
            count += addrs.len();
            for a in addrs {
                if list.len() == SHOWN {
                    more = true;
                    break;
                }
                list.push(host_port(table::str_at(a, "/ip"), port));
            }
        }
    }
    let joined = list.join(",");
    if more {
        format!("{joined} + {} more...", count - SHOWN)
    } else {
        joined
    }
}

fn validate_addresses(addrs: &[Value], path: &str, causes: &mut Vec<Cause>) {
    for (j, a) in addrs.iter().enumerate() {
        let ip = table::str_at(a, "/ip");
        if let Some(msg) = validation::ip_address(ip) {
            causes.push(Cause::invalid(format!("{path}[{j}].ip"), ip, msg));
        }
        let host = table::str_at(a, "/hostname");
        if !host.is_empty() {
            if let Some(msg) = validation::dns1123_label(host) {
                causes.push(Cause::invalid(format!("{path}[{j}].hostname"), host, msg));
            }
        }
    }
}

impl Strategy for EndpointsStrategy {
    fn decode(&self, obj: &Value) -> Result<Value, String> {
        decode_as::<k8s_openapi::api::core::v1::Endpoints>(obj)
    }

    fn default(&self, obj: &mut Value) {
        let Some(subsets) = obj.get_mut("subsets").and_then(Value::as_array_mut) else {
            return;
        };
        for ss in subsets {
            let Some(ports) = ss.get_mut("ports").and_then(Value::as_array_mut) else {
                continue;
            };
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                let missing = p
                    .get("protocol")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty);
                if missing {
                    p.insert("protocol".to_string(), json!("TCP"));
                }
            }
        }
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        for (i, ss) in array(obj, "subsets").iter().enumerate() {
            let path = format!("subsets[{i}]");
            let ready = array(ss, "addresses");
            let not_ready = array(ss, "notReadyAddresses");
            if ready.is_empty() && not_ready.is_empty() {
                causes.push(Cause::required(path.clone()));
            }
            validate_addresses(ready, &format!("{path}.addresses"), &mut causes);
            validate_addresses(not_ready, &format!("{path}.notReadyAddresses"), &mut causes);
            let ports = array(ss, "ports");
            let mut names = HashSet::new();
            for (k, p) in ports.iter().enumerate() {
                let ppath = format!("{path}.ports[{k}]");
                let name = table::str_at(p, "/name");
                if name.is_empty() {
                    if ports.len() > 1 {
                        causes.push(Cause::required(format!("{ppath}.name")));
                    }
                } else {
                    if let Some(msg) = validation::dns1123_label(name) {
                        causes.push(Cause::invalid(format!("{ppath}.name"), name, msg));
                    }
                    if !names.insert(name) {
                        causes.push(Cause::duplicate(format!("{ppath}.name"), name));
                    }
                }
                let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
                if let Some(msg) = validation::port_number(port) {
                    causes.push(Cause::invalid_int(format!("{ppath}.port"), port, msg));
                }
                let proto = table::str_at(p, "/protocol");
                if !PROTOCOLS.contains(&proto) {
                    causes.push(Cause::not_supported(
                        format!("{ppath}.protocol"),
                        proto,
                        PROTOCOLS,
                    ));
                }
            }
        }
        causes
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::name(),
            Column::new(
                "Endpoints",
                "string",
                "The set of all endpoints is the union of all subsets. Addresses are placed into subsets according to the IPs they share. A single address with multiple ports, some of which are ready and some of which are not (because they come from different containers) will result in the address being displayed in different subsets for the different ports. No address will appear in both Addresses and NotReadyAddresses in the same subset. Sets of addresses and ports that comprise a service.",
            ),
            Column::age(),
        ]
    }

    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        vec![
            json!(table::name_of(obj)),
            json!(format_endpoints(obj)),
            json!(table::age(obj, now)),
        ]
    }
}

pub(super) fn def() -> ResourceDef {
    ResourceDef {
        group: "",
        version: "v1",
        kind: "Endpoints",
        plural: "endpoints",
        singular: "endpoints",
        namespaced: true,
        short_names: &["ep"],
        categories: &[],
        subresources: &[],
        strategy: Box::new(EndpointsStrategy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2024-01-01T00:00:30Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    #[test]
    fn endpoints_cell() {
        assert_eq!(format_endpoints(&json!({})), "<none>");
        let two = json!({"subsets": [{
            "addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}],
            "notReadyAddresses": [{"ip": "10.0.0.9"}],
            "ports": [{"port": 80}]
        }]});
        assert_eq!(format_endpoints(&two), "10.0.0.1:80,10.0.0.2:80");
        let many = json!({"subsets": [
            {"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "ports": [{"port": 80}, {"port": 443}]},
            {"addresses": [{"ip": "fd00::1"}], "ports": [{"port": 8080}]}
        ]});
        assert_eq!(
            format_endpoints(&many),
            "10.0.0.1:80,10.0.0.2:80,10.0.0.1:443 + 2 more..."
        );
        let headless = json!({"subsets": [{"addresses": [{"ip": "fd00::2"}]}]});
        assert_eq!(format_endpoints(&headless), "fd00::2");
        let v6 = json!({"subsets": [{"addresses": [{"ip": "fd00::2"}], "ports": [{"port": 53}]}]});
        assert_eq!(format_endpoints(&v6), "[fd00::2]:53");
    }

    #[test]
    fn cells_and_defaults() {
        let s = EndpointsStrategy;
        let mut ep = json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "web", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]
        });
        s.default(&mut ep);
        assert_eq!(ep["subsets"][0]["ports"][0]["protocol"], "TCP");
        assert!(s.decode(&ep).is_ok());
        assert!(s.validate(&ep).is_empty());
        assert_eq!(
            s.cells(&ep, now()),
            vec![json!("web"), json!("10.0.0.1:80"), json!("30s")]
        );
    }

    #[test]
    fn validation_paths() {
        let s = EndpointsStrategy;
        let ep = json!({"subsets": [
            {"addresses": [{"ip": "not-an-ip"}], "ports": [{"port": 80, "protocol": "TCP"}, {"port": 0, "protocol": "XDP"}]},
            {}
        ]});
        let fields: Vec<String> = s.validate(&ep).into_iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            vec![
                "subsets[0].addresses[0].ip",
                "subsets[0].ports[0].name",
                "subsets[0].ports[1].name",
                "subsets[0].ports[1].port",
                "subsets[0].ports[1].protocol",
                "subsets[1]",
            ]
        );
    }
}
