//! Issue 7's service discovery inside pods: the API server's own `default/kubernetes`
//! Service (its certificate good for the Service's names and address), and the
//! `<SVC>_SERVICE_HOST`/`_PORT` variables the agent gives every container for the
//! Services of its namespace.

use crate::agents::{sample_image, up_node};
use crate::harness::{eventually, Cluster, DEADLINE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_service_variables_and_the_api_server_has_a_service() {
    let cluster = Cluster::builder().up().start().await;
    let node = up_node(&cluster).await;

    // The API server's Service: the first address of the range (the harness gives each
    // cluster a /24 of 127.96.0.0/16), 443 → the server.
    let svc = cluster
        .get_json(&["svc", "kubernetes", "-n", "default"])
        .await;
    let api_ip = svc["spec"]["clusterIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        api_ip.starts_with("127.96.") && api_ip.ends_with(".1"),
        "{svc}"
    );
    assert_eq!(svc["spec"]["ports"][0]["name"], "https", "{svc}");
    assert_eq!(svc["spec"]["ports"][0]["port"], 443, "{svc}");
    let server = cluster.server_url();
    let server_port: u16 = server
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port in the server URL");
    let eps = cluster
        .get_json(&["endpoints", "kubernetes", "-n", "default"])
        .await;
    assert_eq!(eps["subsets"][0]["ports"][0]["port"], server_port, "{eps}");
    assert_eq!(
        eps["subsets"][0]["addresses"][0]["ip"], "127.0.0.1",
        "{eps}"
    );

    // In-cluster clients verify the server by the Service's names and ClusterIP, which
    // its certificate carries; reached through the node's proxy.
    let ca = cluster.data_dir.join("pki").join("ca.crt");
    for (name, url) in [
        (
            "kubernetes.default.svc",
            "https://kubernetes.default.svc/version".to_string(),
        ),
        ("kubernetes", "https://kubernetes/version".to_string()),
        ("", format!("https://{api_ip}/version")),
    ] {
        let resolve = format!("{name}:443:{api_ip}");
        let mut args = vec!["-sS", "--max-time", "20", "--cacert"];
        let ca = ca.to_str().unwrap();
        args.push(ca);
        if !name.is_empty() {
            args.extend(["--resolve", &resolve]);
        }
        args.push(&url);
        let out = cluster.run("curl", &args).await;
        assert!(
            out.success && out.stdout.contains("gitVersion"),
            "{url}: {out}"
        );
    }

    cluster.create_namespace("shop").await;
    cluster
        .create_stdin(
            r#"apiVersion: v1
kind: Service
metadata:
  name: web-front
  namespace: shop
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: metrics, port: 9090, protocol: UDP}
"#,
        )
        .await;
    let cluster_ip = cluster.get_json(&["svc", "web-front", "-n", "shop"]).await["spec"]
        ["clusterIP"]
        .as_str()
        .expect("a clusterIP")
        .to_string();
    let pod = |name: &str, links: bool| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: shop
spec:
  nodeName: {node}
  restartPolicy: Never
  enableServiceLinks: {links}
  containers:
  - name: env
    image: {image}
    command: ["printenv"]
"#,
            image = sample_image("http-echo")
        )
    };
    cluster.create_stdin(&pod("links", true)).await;
    cluster.create_stdin(&pod("no-links", false)).await;
    let mut logs = Vec::new();
    for name in ["links", "no-links"] {
        eventually(&format!("{name} to finish"), DEADLINE, async || {
            let p = cluster.get_json(&["pod", name, "-n", "shop"]).await;
            match p["status"]["phase"].as_str() {
                Some("Succeeded") => Ok(()),
                _ => Err(format!("status: {}", p["status"])),
            }
        })
        .await;
        logs.push(cluster.kubectl_ok(&["logs", name, "-n", "shop"]).await);
    }
    let with = &logs[0];
    for line in [
        format!("WEB_FRONT_SERVICE_HOST={cluster_ip}"),
        "WEB_FRONT_SERVICE_PORT=80".to_string(),
        "WEB_FRONT_SERVICE_PORT_METRICS=9090".to_string(),
        format!("WEB_FRONT_PORT=tcp://{cluster_ip}:80"),
        format!("WEB_FRONT_PORT_9090_UDP=udp://{cluster_ip}:9090"),
        format!("KUBERNETES_SERVICE_HOST={api_ip}"),
        "KUBERNETES_SERVICE_PORT=443".to_string(),
    ] {
        assert!(
            with.lines().any(|l| l == line),
            "missing {line} in:\n{with}"
        );
    }
    let without = &logs[1];
    assert!(!without.contains("WEB_FRONT_"), "{without}");
    assert!(
        without.contains(&format!("KUBERNETES_SERVICE_HOST={api_ip}")),
        "{without}"
    );
}
