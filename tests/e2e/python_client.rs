//! Scenario 6: the official Python client (`pip install kubernetes`) creates, lists,
//! watches and deletes pods.

use crate::harness::Cluster;

/// Run as `python3 script KUBECONFIG`; prints `OK` at the end, raises on any mismatch.
const SCRIPT: &str = r#"
import sys
from kubernetes import client, config, watch

config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
ns = "pyns"

v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))

def pod(name):
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels={"app": "py"}),
        spec=client.V1PodSpec(containers=[
            client.V1Container(name="c", image="ghcr.io/wasmkube/hello:v1",
                               ports=[client.V1ContainerPort(container_port=8080)])]))

created = v1.create_namespaced_pod(ns, pod("py1"))
assert created.metadata.uid, created.metadata
assert created.metadata.resource_version, created.metadata
assert created.spec.restart_policy == "Always", created.spec.restart_policy
assert created.spec.containers[0].ports[0].protocol == "TCP", created.spec.containers[0]
print("created", created.metadata.name)

pods = v1.list_namespaced_pod(ns, label_selector="app=py")
assert [p.metadata.name for p in pods.items] == ["py1"], [p.metadata.name for p in pods.items]
assert pods.metadata.resource_version, pods.metadata
read = v1.read_namespaced_pod("py1", ns)
assert read.metadata.uid == created.metadata.uid
everywhere = v1.list_pod_for_all_namespaces(field_selector="metadata.name=py1")
assert [(p.metadata.namespace, p.metadata.name) for p in everywhere.items] == [(ns, "py1")]
print("listed", len(pods.items))

# Watch without a resourceVersion: the existing pod comes as ADDED, which proves the
# watch is open; the pod created then must arrive as ADDED too, its deletion as DELETED.
w = watch.Watch()
seen = []
for event in w.stream(v1.list_namespaced_pod, ns, timeout_seconds=30):
    name = event["object"].metadata.name
    seen.append((event["type"], name))
    print("event", event["type"], name, flush=True)
    if (event["type"], name) == ("ADDED", "py1"):
        v1.create_namespaced_pod(ns, pod("py2"))
    elif (event["type"], name) == ("ADDED", "py2"):
        v1.delete_namespaced_pod("py2", ns)
    elif (event["type"], name) == ("DELETED", "py2"):
        w.stop()
assert ("ADDED", "py2") in seen and ("DELETED", "py2") in seen, seen

# A watch resumed from a list's resourceVersion sees what was created after the list.
listed = v1.list_namespaced_pod(ns)
v1.create_namespaced_pod(ns, pod("py3"))
w = watch.Watch()
for event in w.stream(v1.list_namespaced_pod, ns,
                      resource_version=listed.metadata.resource_version, timeout_seconds=30):
    print("resumed", event["type"], event["object"].metadata.name, flush=True)
    assert event["object"].metadata.name == "py3", event["object"].metadata.name
    assert event["type"] == "ADDED", event["type"]
    w.stop()

try:
    v1.read_namespaced_pod("missing", ns)
    raise AssertionError("reading a missing pod succeeded")
except client.exceptions.ApiException as e:
    assert e.status == 404, e.status

v1.delete_namespaced_pod("py1", ns)
print("OK")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_client_creates_lists_and_watches_pods() {
    let cluster = Cluster::start().await;
    let probe = cluster
        .run(
            "python3",
            &["-c", "import kubernetes; print(kubernetes.__version__)"],
        )
        .await;
    assert!(
        probe.success,
        "the official Python client is missing: install it with `pip install kubernetes`\n{probe}"
    );

    let script = cluster.write_file("client.py", SCRIPT);
    let out = cluster
        .run(
            "python3",
            &[
                script.to_str().expect("utf-8 path"),
                cluster.kubeconfig.to_str().expect("utf-8 path"),
            ],
        )
        .await;
    assert!(
        out.success && out.stdout.lines().last() == Some("OK"),
        "the Python client script failed:\n{out}"
    );

    // What Python created, kubectl sees.
    let pods = cluster.get_table(&["pods", "-n", "pyns"]).await;
    assert!(pods.names().contains(&"py3".to_string()), "{pods}");
    assert!(!pods.names().contains(&"py2".to_string()), "{pods}");
}
