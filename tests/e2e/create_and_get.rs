//! Scenario 2: `kubectl create -f` a multi-document YAML, then every way of `get`ting
//! it: tables with the upstream columns, `-o wide|yaml|json|name|jsonpath`, label and
//! field selectors, `-A` and `--show-labels`.

use serde_json::Value;

use crate::harness::{is_age, Cluster, Table};

/// A namespace and one object of each common kind in it.
pub const SHOP_YAML: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    team: e2e
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: shop
  labels:
    app: web
data:
  color: blue
  size: large
---
apiVersion: v1
kind: Secret
metadata:
  name: creds
  namespace: shop
type: Opaque
data:
  password: czNjcjN0
stringData:
  user: admin
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: 8080
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels:
    app: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: ghcr.io/wasmkube/hello:v1
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Pod
metadata:
  name: hello
  namespace: shop
  labels:
    app: hello
    tier: demo
spec:
  containers:
  - name: hello
    image: ghcr.io/wasmkube/hello:v1
    ports:
    - containerPort: 8080
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_multi_document_yaml_and_get_it_every_way() {
    let cluster = Cluster::start().await;

    let created = cluster.create_stdin(SHOP_YAML).await;
    let lines: Vec<&str> = created.lines().collect();
    assert_eq!(
        lines,
        [
            "namespace/shop created",
            "configmap/settings created",
            "secret/creds created",
            "service/web created",
            "deployment.apps/web created",
            "pod/hello created",
        ],
        "kubectl create -f printed:\n{created}"
    );

    // Several resource types at once: one table per type, names prefixed with the type.
    let out = cluster
        .kubectl_ok(&["get", "pods,svc,deploy,cm", "-n", "shop"])
        .await;
    let tables = Table::parse_all(&out);
    let find = |prefix: &str| -> &Table {
        tables
            .iter()
            .find(|t| t.rows.iter().any(|r| r[0].starts_with(prefix)))
            .unwrap_or_else(|| panic!("no table with {prefix} rows in:\n{out}"))
    };
    let pods = find("pod/");
    pods.assert_headers(&["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
    let hello = pods.row("pod/hello");
    assert_eq!(hello.get("READY"), "0/1", "{pods}");
    assert_eq!(hello.get("STATUS"), "Pending", "{pods}");
    assert_eq!(hello.get("RESTARTS"), "0", "{pods}");
    assert!(is_age(hello.get("AGE")), "{pods}");

    let svcs = find("service/");
    svcs.assert_headers(&[
        "NAME",
        "TYPE",
        "CLUSTER-IP",
        "EXTERNAL-IP",
        "PORT(S)",
        "AGE",
    ]);
    let web = svcs.row("service/web");
    assert_eq!(web.get("TYPE"), "ClusterIP", "{svcs}");
    let cluster_ip = web.get("CLUSTER-IP").to_string();
    assert!(
        cluster_ip.starts_with("127.96."),
        "ClusterIP {cluster_ip} not in 127.96.0.0/16:\n{svcs}"
    );
    assert_eq!(web.get("EXTERNAL-IP"), "<none>", "{svcs}");
    assert_eq!(web.get("PORT(S)"), "80/TCP", "{svcs}");

    let deploys = find("deployment.apps/");
    deploys.assert_headers(&["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]);
    // No node runs pods yet, so nothing is ready.
    assert_eq!(
        deploys.row("deployment.apps/web").get("READY"),
        "0/2",
        "{deploys}"
    );

    let cms = find("configmap/");
    cms.assert_headers(&["NAME", "DATA", "AGE"]);
    assert_eq!(cms.row("configmap/settings").get("DATA"), "2", "{cms}");

    let secrets = cluster.get_table(&["secrets", "-n", "shop"]).await;
    secrets.assert_headers(&["NAME", "TYPE", "DATA", "AGE"]);
    let creds = secrets.row("creds");
    assert_eq!(creds.get("TYPE"), "Opaque", "{secrets}");
    // stringData is merged into data.
    assert_eq!(creds.get("DATA"), "2", "{secrets}");

    // -o wide adds the pod's IP and node (none yet) and the service selector.
    let wide = cluster
        .get_table(&["pods", "-n", "shop", "-o", "wide"])
        .await;
    wide.assert_headers(&[
        "NAME",
        "READY",
        "STATUS",
        "RESTARTS",
        "AGE",
        "IP",
        "NODE",
        "NOMINATED NODE",
        "READINESS GATES",
    ]);
    assert_eq!(wide.row("hello").get("IP"), "<none>", "{wide}");
    assert_eq!(wide.row("hello").get("NODE"), "<none>", "{wide}");
    let svc_wide = cluster
        .get_table(&["svc", "web", "-n", "shop", "-o", "wide"])
        .await;
    assert_eq!(svc_wide.row("web").get("SELECTOR"), "app=web", "{svc_wide}");
    let deploy_wide = cluster
        .get_table(&["deploy", "web", "-n", "shop", "-o", "wide"])
        .await;
    assert_eq!(
        deploy_wide.row("web").get("CONTAINERS"),
        "web",
        "{deploy_wide}"
    );
    assert_eq!(
        deploy_wide.row("web").get("IMAGES"),
        "ghcr.io/wasmkube/hello:v1",
        "{deploy_wide}"
    );
    assert_eq!(
        deploy_wide.row("web").get("SELECTOR"),
        "app=web",
        "{deploy_wide}"
    );

    check_json_and_defaults(&cluster).await;
    check_yaml_name_jsonpath(&cluster, &cluster_ip).await;
    check_selectors(&cluster).await;
    check_paging_all_and_describe(&cluster).await;
}

/// `limit`/`continue` (kubectl's `--chunk-size`), the `all` category, `describe`.
async fn check_paging_all_and_describe(cluster: &Cluster) {
    for n in 0..5 {
        cluster
            .create_configmap("shop", &format!("page-{n}"), &[("n", "x")])
            .await;
    }
    let chunked = cluster
        .get_table(&["cm", "-n", "shop", "--chunk-size=2"])
        .await;
    for n in 0..5 {
        chunked.row(&format!("page-{n}"));
    }
    chunked.row("settings");

    let mut names = Vec::new();
    let mut pages = 0;
    let mut path = "/api/v1/namespaces/shop/configmaps?limit=2".to_string();
    loop {
        let out = cluster.raw(&path).await;
        assert!(out.success, "{path}: {out}");
        let page: Value = serde_json::from_str(&out.stdout).expect("list JSON");
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 2, "limit=2 returned {} items", items.len());
        names.extend(
            items
                .iter()
                .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_string)),
        );
        pages += 1;
        match page["metadata"]["continue"].as_str() {
            Some(token) if !token.is_empty() => {
                path = format!("/api/v1/namespaces/shop/configmaps?limit=2&continue={token}");
            }
            _ => break,
        }
        assert!(pages < 20, "paging does not end: {names:?}");
    }
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        names.len(),
        "paging returned duplicates: {names:?}"
    );
    assert!(
        pages >= 3,
        "6+ configmaps with limit=2 take 3+ pages, got {pages}: {names:?}"
    );
    for n in 0..5 {
        assert!(names.contains(&format!("page-{n}")), "{names:?}");
    }

    let all = cluster.kubectl_ok(&["get", "all", "-n", "shop"]).await;
    let all_names: Vec<String> = Table::parse_all(&all)
        .iter()
        .flat_map(|t| t.names())
        .collect();
    for expected in ["pod/hello", "service/web", "deployment.apps/web"] {
        assert!(
            all_names.iter().any(|n| n == expected),
            "get all lacks {expected}:\n{all}"
        );
    }

    let described = cluster
        .kubectl_ok(&["describe", "pod", "hello", "-n", "shop"])
        .await;
    for needle in [
        "Name:",
        "hello",
        "Namespace:",
        "shop",
        "Status:",
        "Pending",
        "Image:",
        "ghcr.io/wasmkube/hello:v1",
        "Events:",
    ] {
        assert!(
            described.contains(needle),
            "describe pod lacks {needle:?}:\n{described}"
        );
    }
    let described = cluster
        .kubectl_ok(&["describe", "deployment", "web", "-n", "shop"])
        .await;
    assert!(described.contains("Replicas:"), "{described}");
    let events = cluster.kubectl(&["get", "events", "-n", "shop"]).await;
    assert!(events.success, "{events}");
}

/// `-o json`: server-set metadata and upstream defaults.
async fn check_json_and_defaults(cluster: &Cluster) {
    let pod = cluster.get_json(&["pod", "hello", "-n", "shop"]).await;
    assert_eq!(pod["kind"], "Pod");
    assert_eq!(pod["apiVersion"], "v1");
    let meta = &pod["metadata"];
    assert!(
        meta["uid"].as_str().is_some_and(|s| s.len() >= 32),
        "uid: {meta}"
    );
    assert!(
        meta["creationTimestamp"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z')),
        "creationTimestamp: {meta}"
    );
    assert!(
        meta["resourceVersion"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{meta}"
    );
    assert_eq!(meta["namespace"], "shop");
    let spec = &pod["spec"];
    assert_eq!(spec["restartPolicy"], "Always", "{spec}");
    assert_eq!(spec["terminationGracePeriodSeconds"], 30, "{spec}");
    assert_eq!(spec["dnsPolicy"], "ClusterFirst", "{spec}");
    assert_eq!(spec["schedulerName"], "default-scheduler", "{spec}");
    let container = &spec["containers"][0];
    assert_eq!(container["imagePullPolicy"], "IfNotPresent", "{container}");
    assert_eq!(container["ports"][0]["protocol"], "TCP", "{container}");
    assert_eq!(
        container["terminationMessagePath"], "/dev/termination-log",
        "{container}"
    );
    assert_eq!(container["terminationMessagePolicy"], "File", "{container}");
    assert_eq!(pod["status"]["phase"], "Pending", "{}", pod["status"]);

    let svc = cluster.get_json(&["svc", "web", "-n", "shop"]).await;
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert_eq!(svc["spec"]["sessionAffinity"], "None");
    assert_eq!(svc["spec"]["ports"][0]["protocol"], "TCP");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    assert_eq!(svc["spec"]["clusterIPs"][0], svc["spec"]["clusterIP"]);

    let deploy = cluster.get_json(&["deploy", "web", "-n", "shop"]).await;
    assert_eq!(deploy["apiVersion"], "apps/v1");
    assert_eq!(deploy["metadata"]["generation"], 1);
    let dspec = &deploy["spec"];
    assert_eq!(dspec["strategy"]["type"], "RollingUpdate", "{dspec}");
    assert_eq!(
        dspec["strategy"]["rollingUpdate"]["maxSurge"], "25%",
        "{dspec}"
    );
    assert_eq!(
        dspec["strategy"]["rollingUpdate"]["maxUnavailable"], "25%",
        "{dspec}"
    );
    assert_eq!(dspec["revisionHistoryLimit"], 10, "{dspec}");
    assert_eq!(dspec["progressDeadlineSeconds"], 600, "{dspec}");
    assert_eq!(
        dspec["template"]["spec"]["containers"][0]["imagePullPolicy"], "IfNotPresent",
        "{dspec}"
    );

    let secret = cluster.get_json(&["secret", "creds", "-n", "shop"]).await;
    assert_eq!(
        secret["data"]["user"], "YWRtaW4=",
        "stringData merged into data: {secret}"
    );
    assert_eq!(secret["data"]["password"], "czNjcjN0", "{secret}");
    assert!(
        secret.get("stringData").is_none(),
        "stringData is write-only: {secret}"
    );

    // A list is a kind: List with items.
    let list = cluster.get_json(&["pods", "-n", "shop"]).await;
    assert_eq!(list["kind"], "List", "{list}");
    let items = list["items"].as_array().expect("items");
    assert!(
        items.iter().any(|p| p["metadata"]["name"] == "hello"),
        "{list}"
    );
}

/// `-o yaml`, `-o name`, `-o jsonpath`.
async fn check_yaml_name_jsonpath(cluster: &Cluster, cluster_ip: &str) {
    let yaml = cluster
        .kubectl_ok(&["get", "svc", "web", "-n", "shop", "-o", "yaml"])
        .await;
    for needle in [
        "apiVersion: v1",
        "kind: Service",
        "  name: web",
        "  namespace: shop",
        &format!("clusterIP: {cluster_ip}"),
        "protocol: TCP",
        "type: ClusterIP",
        "resourceVersion:",
        "uid:",
    ] {
        assert!(yaml.contains(needle), "-o yaml lacks {needle:?}:\n{yaml}");
    }
    let pod_yaml = cluster
        .kubectl_ok(&["get", "pod", "hello", "-n", "shop", "-o", "yaml"])
        .await;
    assert!(pod_yaml.contains("restartPolicy: Always"), "{pod_yaml}");
    assert!(pod_yaml.contains("phase: Pending"), "{pod_yaml}");

    let names = cluster
        .kubectl_ok(&[
            "get",
            "pods,svc,deploy,cm,secrets",
            "-n",
            "shop",
            "-o",
            "name",
        ])
        .await;
    for expected in [
        "pod/hello",
        "service/web",
        "deployment.apps/web",
        "configmap/settings",
        "secret/creds",
    ] {
        assert!(
            names.lines().any(|l| l == expected),
            "-o name lacks {expected}:\n{names}"
        );
    }

    let phase = cluster
        .kubectl_ok(&[
            "get",
            "pod",
            "hello",
            "-n",
            "shop",
            "-o",
            "jsonpath={.status.phase}",
        ])
        .await;
    assert_eq!(phase, "Pending");
    let color = cluster
        .kubectl_ok(&[
            "get",
            "cm",
            "settings",
            "-n",
            "shop",
            "-o",
            "jsonpath={.data.color}",
        ])
        .await;
    assert_eq!(color, "blue");
}

/// `-l`, `--field-selector`, `-A`, `--show-labels`.
async fn check_selectors(cluster: &Cluster) {
    // A second pod so selectors have something to leave out.
    cluster
        .create_stdin(
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"other","namespace":"shop","labels":{"app":"other"}},
                "spec":{"containers":[{"name":"c","image":"ghcr.io/wasmkube/hello:v1"}]}}"#,
        )
        .await;

    let by_label = cluster
        .get_table(&["pods", "-n", "shop", "-l", "app=hello"])
        .await;
    assert_eq!(by_label.names(), ["hello"], "{by_label}");
    let set_based = cluster
        .get_table(&["pods", "-n", "shop", "-l", "app in (hello,other)"])
        .await;
    let mut names = set_based.names();
    names.sort();
    assert_eq!(names, ["hello", "other"], "{set_based}");
    let not_hello = cluster
        .get_table(&["pods", "-n", "shop", "-l", "app!=hello"])
        .await;
    assert!(
        !not_hello.names().contains(&"hello".to_string()),
        "{not_hello}"
    );
    assert!(
        not_hello.names().contains(&"other".to_string()),
        "{not_hello}"
    );
    let exists = cluster
        .get_table(&["pods", "-n", "shop", "-l", "tier"])
        .await;
    assert_eq!(exists.names(), ["hello"], "{exists}");
    let empty = cluster
        .kubectl(&["get", "pods", "-n", "shop", "-l", "app=nothing"])
        .await;
    assert!(empty.success, "{empty}");
    assert!(empty.stdout.trim().is_empty(), "{empty}");
    assert!(
        empty
            .stderr
            .contains("No resources found in shop namespace."),
        "{empty}"
    );

    let by_name = cluster
        .get_table(&[
            "pods",
            "-n",
            "shop",
            "--field-selector",
            "metadata.name=hello",
        ])
        .await;
    assert_eq!(by_name.names(), ["hello"], "{by_name}");
    let pending = cluster
        .get_table(&[
            "pods",
            "-n",
            "shop",
            "--field-selector",
            "status.phase=Pending",
        ])
        .await;
    assert!(pending.names().contains(&"hello".to_string()), "{pending}");
    let running = cluster
        .kubectl(&[
            "get",
            "pods",
            "-n",
            "shop",
            "--field-selector",
            "status.phase=Running",
        ])
        .await;
    assert!(
        running.success && running.stdout.trim().is_empty(),
        "{running}"
    );
    let combined = cluster
        .get_table(&[
            "pods",
            "-n",
            "shop",
            "--field-selector",
            "metadata.name!=hello,status.phase=Pending",
            "-l",
            "app",
        ])
        .await;
    assert!(
        combined.names().contains(&"other".to_string()),
        "{combined}"
    );
    assert!(
        !combined.names().contains(&"hello".to_string()),
        "{combined}"
    );
    let unassigned = cluster
        .get_table(&["pods", "-n", "shop", "--field-selector", "spec.nodeName="])
        .await;
    assert!(
        unassigned.names().contains(&"hello".to_string()),
        "{unassigned}"
    );
    let unsupported = cluster
        .kubectl_err(&[
            "get",
            "pods",
            "-n",
            "shop",
            "--field-selector",
            "spec.bogus=x",
        ])
        .await;
    assert!(unsupported.contains("BadRequest"), "{unsupported}");
    assert!(
        unsupported.contains("field label not supported"),
        "{unsupported}"
    );

    // -A: a NAMESPACE column, objects from every namespace.
    let all = cluster.get_table(&["pods", "-A"]).await;
    all.assert_headers(&["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
    assert!(
        all.rows.iter().any(|r| r[0] == "shop" && r[1] == "hello"),
        "{all}"
    );
    let all_cms = cluster.get_table(&["cm", "-A", "-l", "app=web"]).await;
    all_cms.assert_headers(&["NAMESPACE", "NAME", "DATA", "AGE"]);
    assert!(
        all_cms
            .rows
            .iter()
            .any(|r| r[0] == "shop" && r[1] == "settings"),
        "{all_cms}"
    );
    let all_json = cluster.get_json(&["svc", "-A"]).await;
    let items: &Vec<Value> = all_json["items"].as_array().expect("items");
    assert!(
        items.iter().any(|s| s["metadata"]["name"] == "web"),
        "{all_json}"
    );

    // --show-labels: a LABELS column, sorted k=v pairs.
    let labels = cluster
        .get_table(&["pods", "hello", "-n", "shop", "--show-labels"])
        .await;
    labels.assert_headers(&["NAME", "READY", "STATUS", "RESTARTS", "AGE", "LABELS"]);
    assert_eq!(
        labels.row("hello").get("LABELS"),
        "app=hello,tier=demo",
        "{labels}"
    );
    let ns_labels = cluster.get_table(&["ns", "shop", "--show-labels"]).await;
    let ns_label_cell = ns_labels.row("shop").get("LABELS").to_string();
    assert!(ns_label_cell.contains("team=e2e"), "{ns_labels}");
    assert!(
        ns_label_cell.contains("kubernetes.io/metadata.name=shop"),
        "{ns_labels}"
    );
    let no_labels = cluster
        .get_table(&["svc", "web", "-n", "shop", "--show-labels"])
        .await;
    assert_eq!(no_labels.row("web").get("LABELS"), "<none>", "{no_labels}");
}

/// kubectl's imperative `create` subcommands send protobuf bodies
/// (`application/vnd.kubernetes.protobuf`) and never retry as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imperative_create_commands_work() {
    let cluster = Cluster::start().await;
    let steps: [(&[&str], &str); 6] = [
        (
            &["create", "namespace", "imperative"],
            "namespace/imperative created",
        ),
        (
            &[
                "create",
                "configmap",
                "c",
                "-n",
                "imperative",
                "--from-literal=a=1",
                "--from-literal=b=2",
            ],
            "configmap/c created",
        ),
        (
            &[
                "create",
                "secret",
                "generic",
                "s",
                "-n",
                "imperative",
                "--from-literal=k=v",
            ],
            "secret/s created",
        ),
        (
            &[
                "create",
                "deployment",
                "d",
                "-n",
                "imperative",
                "--image=ghcr.io/wasmkube/hello:v1",
                "--replicas=2",
            ],
            "deployment.apps/d created",
        ),
        (
            &[
                "create",
                "service",
                "clusterip",
                "svc",
                "-n",
                "imperative",
                "--tcp=80:8080",
            ],
            "service/svc created",
        ),
        (
            &["create", "serviceaccount", "sa", "-n", "imperative"],
            "serviceaccount/sa created",
        ),
    ];
    for (args, expected) in steps {
        let out = cluster.kubectl_ok(args).await;
        assert_eq!(out.trim(), expected, "kubectl {args:?}");
    }
    let cm = cluster.get_json(&["cm", "c", "-n", "imperative"]).await;
    assert_eq!(cm["data"], serde_json::json!({"a": "1", "b": "2"}), "{cm}");
    let secret = cluster.get_json(&["secret", "s", "-n", "imperative"]).await;
    assert_eq!(secret["data"]["k"], "dg==", "{secret}");
    let deploy = cluster.get_json(&["deploy", "d", "-n", "imperative"]).await;
    assert_eq!(deploy["spec"]["replicas"], 2, "{deploy}");
    assert_eq!(
        deploy["spec"]["selector"]["matchLabels"]["app"], "d",
        "{deploy}"
    );
    let svc = cluster.get_table(&["svc", "svc", "-n", "imperative"]).await;
    assert_eq!(svc.row("svc").get("PORT(S)"), "80/TCP", "{svc}");
    let sas = cluster.get_table(&["sa", "-n", "imperative"]).await;
    sas.assert_headers(&["NAME", "SECRETS", "AGE"]);
    sas.row("sa");
    // `run` sends JSON; it is here for completeness of the imperative commands.
    let out = cluster
        .kubectl_ok(&[
            "run",
            "r",
            "-n",
            "imperative",
            "--image=ghcr.io/wasmkube/hello:v1",
            "--labels=app=r",
        ])
        .await;
    assert_eq!(out.trim(), "pod/r created");
    let pods = cluster
        .get_table(&["pods", "-n", "imperative", "-l", "app=r"])
        .await;
    assert_eq!(pods.names(), ["r"], "{pods}");
}
