//! Issue 6's pod network: each pod gets an address of its own from the node's podCIDR,
//! and a module binding `0.0.0.0:8080` serves on that address, so two pods on one node
//! both serve 8080.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde_json::Value;

use crate::agents::{sample_image, up_node};
use crate::harness::{eventually, Cluster, DEADLINE};

fn echo_pod(name: &str, node: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  nodeName: {node}
  # Not `echo`: argv[0] is the container name, and http-echo's toolbox would run its
  # `echo` tool instead of the server.
  containers:
  - name: web
    image: {image}
    env:
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
"#,
        image = sample_image("http-echo")
    )
}

/// `a.b.c.d/n` → (network, prefix).
fn parse_cidr(cidr: &str) -> (Ipv4Addr, u32) {
    let (ip, prefix) = cidr.split_once('/').expect("a CIDR");
    (
        ip.parse().expect("an IPv4 network"),
        prefix.parse().expect("a prefix"),
    )
}

fn in_cidr(ip: Ipv4Addr, (net, prefix): (Ipv4Addr, u32)) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

/// One GET of `/` at `ip:8080`; the whole response.
async fn http_get(ip: IpAddr) -> Result<String, String> {
    crate::harness::http_get(std::net::SocketAddr::new(ip, 8080), "/").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_echo_pods_serve_port_8080_on_their_own_ips() {
    let cluster = Cluster::builder().up().start().await;
    let node = up_node(&cluster).await;
    let cidr = eventually("the node to get a podCIDR", DEADLINE, async || {
        let n = cluster.get_json(&["node", &node]).await;
        n["spec"]["podCIDR"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("spec: {}", n["spec"]))
    })
    .await;
    let range = parse_cidr(&cidr);

    for name in ["echo-a", "echo-b"] {
        cluster.create_stdin(&echo_pod(name, &node)).await;
    }
    let mut ips = Vec::new();
    for name in ["echo-a", "echo-b"] {
        let pod: Value = eventually(&format!("{name} to run"), DEADLINE, async || {
            let pod = cluster.get_json(&["pod", name]).await;
            let running = pod["status"]["phase"] == "Running"
                && pod["status"]["containerStatuses"][0]["state"]["running"].is_object();
            if running {
                Ok(pod)
            } else {
                Err(format!("status: {}", pod["status"]))
            }
        })
        .await;
        let ip: Ipv4Addr = pod["status"]["podIP"]
            .as_str()
            .and_then(|ip| ip.parse().ok())
            .unwrap_or_else(|| panic!("{name} has no IPv4 podIP: {}", pod["status"]));
        assert!(in_cidr(ip, range), "{name}'s IP {ip} is outside {cidr}");
        assert_eq!(pod["status"]["podIPs"][0]["ip"], ip.to_string());
        assert_ne!(pod["status"]["hostIP"], ip.to_string());
        ips.push((name, ip));
    }
    assert_ne!(ips[0].1, ips[1].1, "both pods got the same IP");

    for (name, ip) in ips {
        let response = eventually(
            &format!("{name} to answer on {ip}:8080"),
            DEADLINE,
            async || {
                let response = http_get(IpAddr::V4(ip)).await?;
                if response.starts_with("HTTP/1.") {
                    Ok(response)
                } else {
                    Err(format!("response: {response:?}"))
                }
            },
        )
        .await;
        assert!(response.contains(" 200 "), "{response}");
        assert!(
            response.contains(name),
            "{ip} did not answer as {name}: {response}"
        );
        let other = if name == "echo-a" { "echo-b" } else { "echo-a" };
        assert!(
            !response.contains(other),
            "{ip} answered as {other}: {response}"
        );
    }
}

fn connect_pod(name: &str, node: &str, target: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  nodeName: {node}
  restartPolicy: Never
  containers:
  - name: client
    image: {image}
    command: ["connect", "{target}", "3"]
"#,
        image = sample_image("http-echo")
    )
}

/// Waits for a run-to-completion pod to end; its phase and log.
async fn finished(cluster: &Cluster, name: &str) -> (String, String) {
    let phase = eventually(&format!("{name} to finish"), DEADLINE, async || {
        let pod = cluster.get_json(&["pod", name]).await;
        match pod["status"]["phase"].as_str() {
            Some(p @ ("Succeeded" | "Failed")) => Ok(p.to_string()),
            _ => Err(format!("status: {}", pod["status"])),
        }
    })
    .await;
    let log = cluster.kubectl_ok(&["logs", name]).await;
    (phase, log)
}

/// The agent decides where a pod may connect: other pods (and ClusterIPs) yes, from its
/// own address; the host's other loopback addresses and the outside no — the guest sees
/// a permission error it can report, and nothing crashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_other_pods_but_not_the_host() {
    let cluster = Cluster::builder().up().start().await;
    let node = up_node(&cluster).await;
    cluster.create_stdin(&echo_pod("target", &node)).await;
    let target_ip = eventually("target to run with an IP", DEADLINE, async || {
        let pod = cluster.get_json(&["pod", "target"]).await;
        match pod["status"]["podIP"].as_str() {
            Some(ip) if pod["status"]["phase"] == "Running" => Ok(ip.to_string()),
            _ => Err(format!("status: {}", pod["status"])),
        }
    })
    .await;
    let target_ip: IpAddr = target_ip.parse().expect("an IP");
    eventually("target to answer", DEADLINE, async || {
        http_get(target_ip).await
    })
    .await;

    // A host service on a loopback address outside the cluster's ranges.
    let host_listener = tokio::net::TcpListener::bind(("127.0.0.2", 0))
        .await
        .expect("bind 127.0.0.2");
    let host_addr = host_listener.local_addr().expect("local addr");

    let allowed = format!("{target_ip}:8080");
    cluster
        .create_stdin(&connect_pod("to-pod", &node, &allowed))
        .await;
    cluster
        .create_stdin(&connect_pod("to-host", &node, &host_addr.to_string()))
        .await;
    cluster
        .create_stdin(&connect_pod("to-outside", &node, "192.0.2.1:80"))
        .await;

    let (phase, log) = finished(&cluster, "to-pod").await;
    assert_eq!(phase, "Succeeded", "{log}");
    let pod = cluster.get_json(&["pod", "to-pod"]).await;
    let own_ip = pod["status"]["podIP"]
        .as_str()
        .expect("a podIP")
        .to_string();
    assert!(
        log.contains(&format!("connected to {allowed} from {own_ip}:")),
        "the connection should come from the pod's own address {own_ip}: {log}"
    );

    for name in ["to-host", "to-outside"] {
        let (phase, log) = finished(&cluster, name).await;
        assert_eq!(phase, "Failed", "{name}: {log}");
        assert!(log.contains("PermissionDenied"), "{name}: {log}");
        let pod = cluster.get_json(&["pod", name]).await;
        assert_eq!(
            pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"], 1,
            "{name}: {}",
            pod["status"]
        );
    }
    // Nothing reached the host's listener.
    let accepted = tokio::time::timeout(Duration::from_millis(1), host_listener.accept()).await;
    assert!(accepted.is_err(), "a pod reached the host's 127.0.0.2");
}
