//! The upstream column sets (kubernetes pkg/printers/internalversion/printers.go) for
//! the other resources of issue 2: nodes, endpoints, endpointslices, replicasets,
//! daemonsets, serviceaccounts, events, leases, runtimeclasses; plus generateName and
//! Service IP/port allocation as `get` shows them.

use crate::harness::{is_age, Cluster};

const OBJECTS: &str = r#"
apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels:
    kubernetes.io/hostname: node-a
---
apiVersion: v1
kind: Endpoints
metadata:
  name: ep
  namespace: default
subsets:
- addresses:
  - ip: 10.1.0.5
  ports:
  - port: 8080
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: ep-abc
  namespace: default
  labels:
    kubernetes.io/service-name: ep
addressType: IPv4
endpoints:
- addresses:
  - 10.1.0.5
ports:
- port: 8080
  protocol: TCP
---
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: rs
  namespace: default
spec:
  replicas: 2
  selector:
    matchLabels:
      app: rs
  template:
    metadata:
      labels:
        app: rs
    spec:
      containers:
      - name: main
        image: ghcr.io/wasmkube/hello:v1
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: ds
  namespace: default
spec:
  selector:
    matchLabels:
      app: ds
  template:
    metadata:
      labels:
        app: ds
    spec:
      containers:
      - name: main
        image: ghcr.io/wasmkube/hello:v1
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: robot
  namespace: default
---
apiVersion: v1
kind: Event
metadata:
  name: hello.1
  namespace: default
involvedObject:
  kind: Pod
  name: hello
  namespace: default
  apiVersion: v1
reason: Scheduled
message: assigned default/hello to node-a
type: Normal
source:
  component: e2e
firstTimestamp: "2026-01-01T00:00:00Z"
lastTimestamp: "2026-01-01T00:00:00Z"
count: 1
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata:
  name: node-a
  namespace: kube-node-lease
spec:
  holderIdentity: node-a
  leaseDurationSeconds: 40
---
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata:
  name: wasm
handler: wasmtime
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_resource_prints_the_upstream_columns() {
    let cluster = Cluster::start().await;
    let created = cluster.create_stdin(OBJECTS).await;
    assert_eq!(
        created.lines().collect::<Vec<_>>(),
        [
            "node/node-a created",
            "endpoints/ep created",
            "endpointslice.discovery.k8s.io/ep-abc created",
            "replicaset.apps/rs created",
            "daemonset.apps/ds created",
            "serviceaccount/robot created",
            "event/hello.1 created",
            "lease.coordination.k8s.io/node-a created",
            "runtimeclass.node.k8s.io/wasm created",
        ],
        "{created}"
    );

    let nodes = cluster.get_table(&["nodes"]).await;
    nodes.assert_headers(&["NAME", "STATUS", "ROLES", "AGE", "VERSION"]);
    // No Ready condition yet: Unknown.
    assert_eq!(nodes.row("node-a").get("STATUS"), "Unknown", "{nodes}");
    assert_eq!(nodes.row("node-a").get("ROLES"), "<none>", "{nodes}");
    let wide = cluster.get_table(&["nodes", "-o", "wide"]).await;
    wide.assert_headers(&[
        "NAME",
        "STATUS",
        "ROLES",
        "AGE",
        "VERSION",
        "INTERNAL-IP",
        "EXTERNAL-IP",
        "OS-IMAGE",
        "KERNEL-VERSION",
        "CONTAINER-RUNTIME",
    ]);
    cluster.kubectl_ok(&["cordon", "node-a"]).await;
    let nodes = cluster.get_table(&["nodes"]).await;
    assert_eq!(
        nodes.row("node-a").get("STATUS"),
        "Unknown,SchedulingDisabled",
        "{nodes}"
    );

    let ep = cluster.get_table(&["endpoints", "ep"]).await;
    ep.assert_headers(&["NAME", "ENDPOINTS", "AGE"]);
    assert_eq!(ep.row("ep").get("ENDPOINTS"), "10.1.0.5:8080", "{ep}");

    let slices = cluster.get_table(&["endpointslices"]).await;
    slices.assert_headers(&["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]);
    let slice = slices.row("ep-abc");
    assert_eq!(slice.get("ADDRESSTYPE"), "IPv4", "{slices}");
    assert_eq!(slice.get("PORTS"), "8080", "{slices}");
    assert_eq!(slice.get("ENDPOINTS"), "10.1.0.5", "{slices}");
    let by_service = cluster
        .get_table(&["endpointslices", "-l", "kubernetes.io/service-name=ep"])
        .await;
    assert_eq!(by_service.names(), ["ep-abc"], "{by_service}");

    let rs = cluster.get_table(&["rs", "rs"]).await;
    rs.assert_headers(&["NAME", "DESIRED", "CURRENT", "READY", "AGE"]);
    assert_eq!(rs.row("rs").get("DESIRED"), "2", "{rs}");
    let rs_wide = cluster.get_table(&["rs", "rs", "-o", "wide"]).await;
    assert_eq!(rs_wide.row("rs").get("SELECTOR"), "app=rs", "{rs_wide}");
    assert_eq!(
        rs_wide.row("rs").get("IMAGES"),
        "ghcr.io/wasmkube/hello:v1",
        "{rs_wide}"
    );

    let ds = cluster.get_table(&["ds"]).await;
    ds.assert_headers(&[
        "NAME",
        "DESIRED",
        "CURRENT",
        "READY",
        "UP-TO-DATE",
        "AVAILABLE",
        "NODE SELECTOR",
        "AGE",
    ]);
    assert_eq!(ds.row("ds").get("NODE SELECTOR"), "<none>", "{ds}");
    assert!(is_age(ds.row("ds").get("AGE")), "{ds}");

    let sa = cluster.get_table(&["sa", "robot"]).await;
    sa.assert_headers(&["NAME", "SECRETS", "AGE"]);
    assert_eq!(sa.row("robot").get("SECRETS"), "0", "{sa}");

    let events = cluster.get_table(&["events"]).await;
    events.assert_headers(&["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]);
    // The controllers record events of their own; find the one this test wrote.
    let row = events
        .rows
        .iter()
        .find(|r| r.get(3).map(String::as_str) == Some("pod/hello"))
        .unwrap_or_else(|| panic!("no event about pod/hello:\n{events}"));
    assert_eq!(
        &row[1..],
        [
            "Normal",
            "Scheduled",
            "pod/hello",
            "assigned default/hello to node-a"
        ],
        "{events}"
    );
    // The field selectors `kubectl describe` uses.
    let selected = cluster
        .kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=hello,involvedObject.namespace=default,type=Normal",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(selected.trim(), "event/hello.1");
    let none = cluster
        .kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=other",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(none.trim(), "");

    let leases = cluster
        .get_table(&["leases", "-n", "kube-node-lease"])
        .await;
    leases.assert_headers(&["NAME", "HOLDER", "AGE"]);
    assert_eq!(leases.row("node-a").get("HOLDER"), "node-a", "{leases}");

    let rc = cluster.get_table(&["runtimeclasses"]).await;
    rc.assert_headers(&["NAME", "HANDLER", "AGE"]);
    assert_eq!(rc.row("wasm").get("HANDLER"), "wasmtime", "{rc}");

    check_generate_name_and_service_allocation(&cluster).await;
}

/// generateName, and ClusterIP/NodePort allocation as `get svc` shows it.
async fn check_generate_name_and_service_allocation(cluster: &Cluster) {
    let out = cluster
        .create_stdin(
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"generateName":"gen-","namespace":"default"},
                "spec":{"containers":[{"name":"c","image":"i:1"}]}}"#,
        )
        .await;
    let name = out
        .trim()
        .strip_prefix("pod/")
        .and_then(|s| s.strip_suffix(" created"))
        .unwrap_or_else(|| panic!("unexpected create output: {out}"))
        .to_string();
    assert!(
        name.starts_with("gen-") && name.len() == "gen-".len() + 5,
        "generateName gen- should give gen-XXXXX, got {name}"
    );
    cluster.get_table(&["pod", &name]).await.row(&name);

    let out = cluster
        .create_stdin(
            r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"np","namespace":"default"},
                "spec":{"type":"NodePort","selector":{"app":"x"},"ports":[{"port":80,"targetPort":8080}]}}"#,
        )
        .await;
    assert_eq!(out.trim(), "service/np created");
    let svcs = cluster.get_table(&["svc", "np"]).await;
    let row = svcs.row("np");
    assert_eq!(row.get("TYPE"), "NodePort", "{svcs}");
    let ports = row.get("PORT(S)").to_string();
    let node_port: u16 = ports
        .strip_prefix("80:")
        .and_then(|s| s.strip_suffix("/TCP"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("PORT(S) should read 80:<nodePort>/TCP, got {ports}"));
    assert!((30000..=32767).contains(&node_port), "{ports}");
    let np_ip = row.get("CLUSTER-IP").to_string();

    // Headless.
    cluster
        .create_stdin(
            r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"headless","namespace":"default"},
                "spec":{"clusterIP":"None","selector":{"app":"x"},"ports":[{"port":80}]}}"#,
        )
        .await;
    let headless = cluster.get_table(&["svc", "headless"]).await;
    assert_eq!(
        headless.row("headless").get("CLUSTER-IP"),
        "None",
        "{headless}"
    );

    // Asking for an IP or a node port already handed out is refused.
    let taken_ip = cluster
        .kubectl_stdin(
            &["create", "-f", "-"],
            &format!(
                r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"dup-ip","namespace":"default"}},
                    "spec":{{"clusterIP":"{np_ip}","ports":[{{"port":80}}]}}}}"#
            ),
        )
        .await;
    assert!(
        !taken_ip.success
            && taken_ip.stderr.contains("is invalid")
            && taken_ip.stderr.contains("already allocated"),
        "a ClusterIP in use: {taken_ip}"
    );
    let taken_port = cluster
        .kubectl_stdin(
            &["create", "-f", "-"],
            &format!(
                r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"dup-port","namespace":"default"}},
                    "spec":{{"type":"NodePort","ports":[{{"port":80,"nodePort":{node_port}}}]}}}}"#
            ),
        )
        .await;
    assert!(
        !taken_port.success
            && taken_port.stderr.contains("is invalid")
            && taken_port.stderr.contains("already allocated"),
        "a NodePort in use: {taken_port}"
    );
    let out_of_range = cluster
        .kubectl_stdin(
            &["create", "-f", "-"],
            r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"bad-ip","namespace":"default"},
                "spec":{"clusterIP":"10.0.0.1","ports":[{"port":80}]}}"#,
        )
        .await;
    assert!(
        !out_of_range.success && out_of_range.stderr.contains("is invalid"),
        "a ClusterIP outside --service-cidr: {out_of_range}"
    );

    // Deleting a service releases its IP and port: asking for them again works.
    cluster.kubectl_ok(&["delete", "svc", "np"]).await;
    let reuse = format!(
        r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"reuse","namespace":"default"}},
            "spec":{{"type":"NodePort","clusterIP":"{np_ip}","ports":[{{"port":80,"nodePort":{node_port}}}]}}}}"#
    );
    assert_eq!(
        cluster.create_stdin(&reuse).await.trim(),
        "service/reuse created"
    );

    // Every ClusterIP handed out is distinct.
    let mut ips = Vec::new();
    for n in 0..5 {
        cluster
            .create_stdin(&format!(
                r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"many-{n}","namespace":"default"}},
                    "spec":{{"ports":[{{"port":80}}]}}}}"#
            ))
            .await;
        let ip = cluster
            .kubectl_ok(&[
                "get",
                "svc",
                &format!("many-{n}"),
                "-o",
                "jsonpath={.spec.clusterIP}",
            ])
            .await;
        assert!(ip.starts_with("127.96."), "{ip}");
        assert!(
            !ips.contains(&ip) && ip != np_ip,
            "ClusterIP {ip} handed out twice"
        );
        ips.push(ip);
    }
}
