//! Issue 6's limits: `limits.memory` ends a module that outgrows it as OOMKilled, and a
//! spinning module — with or without `limits.cpu` — leaves its neighbours responsive.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::agents::{sample_image, up_node};
use crate::harness::{eventually, Cluster, DEADLINE};

/// The slowest answer the neighbour of two spinners may give. A guest yields every
/// 2 ms epoch tick, so answers normally take a few milliseconds; the bound leaves room
/// for a loaded CI machine running other tests alongside.
const NEIGHBOUR_BOUND: Duration = Duration::from_secs(1);

/// One GET of `/` at `ip:8080`; the status line.
async fn get(ip: IpAddr) -> Result<String, String> {
    let response = crate::harness::http_get(std::net::SocketAddr::new(ip, 8080), "/").await?;
    Ok(response.lines().next().unwrap_or_default().to_string())
}

async fn pod_ip(cluster: &Cluster, name: &str) -> IpAddr {
    let ip = eventually(&format!("{name} to run"), DEADLINE, async || {
        let pod = cluster.get_json(&["pod", name]).await;
        match pod["status"]["podIP"].as_str() {
            Some(ip) if pod["status"]["containerStatuses"][0]["state"]["running"].is_object() => {
                Ok(ip.to_string())
            }
            _ => Err(format!("status: {}", pod["status"])),
        }
    })
    .await;
    ip.parse().expect("an IP")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_hog_ends_oom_killed_and_spinners_leave_neighbours_responsive() {
    let cluster = Cluster::builder().up().start().await;
    let node = up_node(&cluster).await;

    cluster
        .create_stdin(&format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: hog
spec:
  nodeName: {node}
  restartPolicy: Never
  containers:
  - name: hog
    image: {image}
    env:
    - {{name: CHUNK_MB, value: "8"}}
    resources:
      limits: {{memory: 48Mi}}
"#,
            image = sample_image("memory-hog")
        ))
        .await;
    let terminated = eventually("the hog to be OOMKilled", DEADLINE, async || {
        let pod = cluster.get_json(&["pod", "hog"]).await;
        let t = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
        if t.is_object() && pod["status"]["phase"] == "Failed" {
            Ok(t.clone())
        } else {
            Err(format!("status: {}", pod["status"]))
        }
    })
    .await;
    assert_eq!(terminated["reason"], "OOMKilled", "{terminated}");
    assert_eq!(terminated["exitCode"], 137, "{terminated}");
    let table = cluster.kubectl_ok(&["get", "pod", "hog"]).await;
    assert!(table.contains("OOMKilled"), "{table}");
    // It got close to its limit before it was stopped, and no further.
    let log = cluster.kubectl_ok(&["logs", "hog"]).await;
    assert!(log.contains("allocated 32 MiB"), "{log}");
    assert!(!log.contains("allocated 56 MiB"), "{log}");

    let web = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  nodeName: {node}
  containers:
  - name: web
    image: {image}
"#,
        image = sample_image("http-echo")
    );
    cluster.create_stdin(&web).await;
    let ip = pod_ip(&cluster, "web").await;
    eventually("web to answer", DEADLINE, async || get(ip).await).await;

    // Two spinners without limits (as many as the machine has cores) and one held to
    // 100m.
    for (name, limit) in [
        ("spin-a", None),
        ("spin-b", None),
        ("spin-slow", Some("100m")),
    ] {
        let resources = limit
            .map(|l| format!("    resources:\n      limits: {{cpu: {l}}}\n"))
            .unwrap_or_default();
        cluster
            .create_stdin(&format!(
                r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  nodeName: {node}
  containers:
  - name: spin
    image: {image}
    env:
    - {{name: HEARTBEAT_ITERATIONS, value: "20000000"}}
{resources}"#,
                image = sample_image("spinner")
            ))
            .await;
    }
    let heartbeats = |log: &str| log.lines().filter(|l| l.starts_with("heartbeat ")).count();
    eventually("the spinners to spin", DEADLINE, async || {
        let log = cluster.kubectl(&["logs", "spin-a"]).await.stdout;
        if heartbeats(&log) >= 3 {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await;

    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let started = Instant::now();
        let status = get(ip).await.unwrap_or_else(|e| panic!("request {i}: {e}"));
        let took = started.elapsed();
        assert!(status.contains(" 200 "), "request {i}: {status}");
        slowest = slowest.max(took);
    }
    eprintln!("slowest of 20 answers next to the spinners: {slowest:?}");
    assert!(
        slowest <= NEIGHBOUR_BOUND,
        "the neighbour took {slowest:?} to answer (bound {NEIGHBOUR_BOUND:?})"
    );

    // The limited spinner got far less than an unlimited one.
    let a = heartbeats(&cluster.kubectl_ok(&["logs", "spin-a"]).await);
    let slow = heartbeats(&cluster.kubectl_ok(&["logs", "spin-slow"]).await);
    eprintln!("heartbeats: unlimited {a}, limited to 100m {slow}");
    assert!(
        (slow as f64) < (a as f64) * 0.5,
        "the 100m spinner made {slow} heartbeats against the unlimited one's {a}"
    );
}
