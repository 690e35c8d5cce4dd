//! Issue 4, "a Service gets Endpoints and EndpointSlices with exactly the ready pods": a
//! Service with a named targetPort and three pods bound to a made-up node. There is no
//! kubelet, so the test reports pod status as one would (`pods/status`). Also: a new
//! namespace gets its `default` ServiceAccount, and gets it back when it is deleted.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::harness::{eventually, Cluster, DEADLINE};

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  labels: {tier: front}
spec:
  selector: {app: web}
  ports:
  - name: http
    port: 80
    targetPort: http
"#;

fn pod_yaml(name: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: web}}
spec:
  nodeName: made-up-node
  containers:
  - name: app
    image: example.com/web:1
    ports:
    - name: http
      containerPort: 8080
"#
    )
}

/// Reports the pod Running with `ip`, Ready or not, as a kubelet would.
async fn set_status(cluster: &Cluster, pod: &str, ip: &str, ready: bool) {
    let status = serde_json::json!({"status": {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
    }});
    cluster
        .kubectl_ok(&[
            "patch",
            "pod",
            pod,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ])
        .await;
}

fn ips(list: &Value) -> BTreeSet<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["ip"].as_str().map(str::to_string))
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The Endpoints `web` as (ready IPs, not-ready IPs), checking every subset's ports.
async fn endpoints(cluster: &Cluster) -> Result<(BTreeSet<String>, BTreeSet<String>), String> {
    let out = cluster
        .kubectl(&["get", "endpoints", "web", "-o", "json"])
        .await;
    if !out.success {
        return Err(out.to_string());
    }
    let ep: Value = serde_json::from_str(&out.stdout).map_err(|e| e.to_string())?;
    let mut ready = BTreeSet::new();
    let mut not_ready = BTreeSet::new();
    for subset in ep["subsets"].as_array().into_iter().flatten() {
        let ports = &subset["ports"];
        if ports != &serde_json::json!([{"name": "http", "port": 8080, "protocol": "TCP"}]) {
            return Err(format!("unexpected ports in {ep}"));
        }
        ready.extend(ips(&subset["addresses"]));
        not_ready.extend(ips(&subset["notReadyAddresses"]));
    }
    Ok((ready, not_ready))
}

/// The endpoints of the Service's slices, as address → ready.
async fn slices(cluster: &Cluster) -> Vec<Value> {
    let list = cluster
        .get_json(&["endpointslices", "-l", "kubernetes.io/service-name=web"])
        .await;
    list["items"].as_array().cloned().unwrap_or_default()
}

fn slice_endpoints(items: &[Value]) -> Result<Vec<(String, bool, bool)>, String> {
    let mut out = Vec::new();
    for s in items {
        if s["endpoints"].as_array().is_some_and(|e| !e.is_empty())
            && s["ports"] != serde_json::json!([{"name": "http", "port": 8080, "protocol": "TCP"}])
        {
            return Err(format!("unexpected ports in {s}"));
        }
        for e in s["endpoints"].as_array().into_iter().flatten() {
            let ip = e["addresses"][0].as_str().unwrap_or_default().to_string();
            let ready = e["conditions"]["ready"].as_bool() == Some(true);
            let terminating = e["conditions"]["terminating"].as_bool() == Some(true);
            out.push((ip, ready, terminating));
        }
    }
    out.sort();
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_gets_endpoints_and_slices_of_its_pods() {
    let cluster = Cluster::start().await;
    cluster.create_stdin(SERVICE).await;
    for name in ["web-1", "web-2", "web-3"] {
        cluster.create_stdin(&pod_yaml(name)).await;
    }
    // A pod of another app never shows up.
    cluster
        .create_stdin(&pod_yaml("other").replace("app: web", "app: other"))
        .await;
    set_status(&cluster, "web-1", "10.244.1.1", true).await;
    set_status(&cluster, "web-2", "10.244.1.2", true).await;
    set_status(&cluster, "web-3", "10.244.1.3", false).await;
    set_status(&cluster, "other", "10.244.1.9", true).await;

    eventually(
        "endpoints with the ready and not-ready pods",
        DEADLINE,
        async || {
            let got = endpoints(&cluster).await?;
            let want = (set(&["10.244.1.1", "10.244.1.2"]), set(&["10.244.1.3"]));
            if got == want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await;

    let ep = cluster.get_json(&["endpoints", "web"]).await;
    let labels = &ep["metadata"]["labels"];
    assert_eq!(labels["tier"], "front", "{ep}");
    assert_eq!(
        labels["endpoints.kubernetes.io/managed-by"], "endpoint-controller",
        "{ep}"
    );
    let address = ep["subsets"][0]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["ip"] == "10.244.1.1"))
        .unwrap_or_else(|| panic!("no address 10.244.1.1 in {ep}"));
    assert_eq!(address["nodeName"], "made-up-node", "{ep}");
    assert_eq!(address["targetRef"]["kind"], "Pod", "{ep}");
    assert_eq!(address["targetRef"]["name"], "web-1", "{ep}");
    assert_eq!(address["targetRef"]["namespace"], "default", "{ep}");
    let uid = cluster.get_json(&["pod", "web-1"]).await["metadata"]["uid"].clone();
    assert_eq!(address["targetRef"]["uid"], uid, "{ep}");

    let items = eventually("endpoint slices with the pods", DEADLINE, async || {
        let items = slices(&cluster).await;
        let got = slice_endpoints(&items)?;
        let want = vec![
            ("10.244.1.1".to_string(), true, false),
            ("10.244.1.2".to_string(), true, false),
            ("10.244.1.3".to_string(), false, false),
        ];
        if got == want {
            Ok(items)
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    let service_uid = cluster.get_json(&["service", "web"]).await["metadata"]["uid"].clone();
    for s in &items {
        assert_eq!(s["addressType"], "IPv4", "{s}");
        let labels = &s["metadata"]["labels"];
        assert_eq!(
            labels["endpointslice.kubernetes.io/managed-by"], "endpointslice-controller.k8s.io",
            "{s}"
        );
        assert!(
            s["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("web-")),
            "{s}"
        );
        let owner = &s["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "Service", "{s}");
        assert_eq!(owner["uid"], service_uid, "{s}");
        assert_eq!(owner["controller"], true, "{s}");
        for e in s["endpoints"].as_array().into_iter().flatten() {
            assert_eq!(e["nodeName"], "made-up-node", "{s}");
            assert_eq!(e["targetRef"]["kind"], "Pod", "{s}");
        }
    }

    // web-3 turns ready.
    set_status(&cluster, "web-3", "10.244.1.3", true).await;
    eventually("web-3 ready in the endpoints", DEADLINE, async || {
        let got = endpoints(&cluster).await?;
        if got == (set(&["10.244.1.1", "10.244.1.2", "10.244.1.3"]), set(&[])) {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;

    // Deleting a pod bound to a node leaves it terminating (no kubelet finishes it): it
    // leaves the Endpoints, and the slices stop calling it ready.
    cluster
        .kubectl_ok(&["delete", "pod", "web-2", "--wait=false"])
        .await;
    eventually("web-2 out of the endpoints", DEADLINE, async || {
        let got = endpoints(&cluster).await?;
        if got == (set(&["10.244.1.1", "10.244.1.3"]), set(&[])) {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    eventually("web-2 not ready in the slices", DEADLINE, async || {
        let got = slice_endpoints(&slices(&cluster).await)?;
        let web2: Vec<_> = got.iter().filter(|e| e.0 == "10.244.1.2").collect();
        let others_ready = got.iter().filter(|e| e.0 != "10.244.1.2").all(|e| e.1);
        if others_ready && web2.iter().all(|e| !e.1 && e.2) {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    // Gone for good: gone from the slices as well.
    cluster
        .kubectl_ok(&["delete", "pod", "web-2", "--grace-period=0", "--force"])
        .await;
    eventually("web-2 out of the slices", DEADLINE, async || {
        let got = slice_endpoints(&slices(&cluster).await)?;
        let want = vec![
            ("10.244.1.1".to_string(), true, false),
            ("10.244.1.3".to_string(), true, false),
        ];
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;

    // The Service goes: its Endpoints and slices go with it.
    cluster.kubectl_ok(&["delete", "service", "web"]).await;
    eventually("endpoints deleted with the service", DEADLINE, async || {
        let out = cluster.kubectl(&["get", "endpoints", "web"]).await;
        if !out.success && out.stderr.contains("NotFound") {
            Ok(())
        } else {
            Err(out.to_string())
        }
    })
    .await;
    eventually("slices deleted with the service", DEADLINE, async || {
        let items = slices(&cluster).await;
        if items.is_empty() {
            Ok(())
        } else {
            Err(format!("{items:?}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_namespace_gets_a_default_service_account() {
    let cluster = Cluster::start().await;
    cluster.create_namespace("team-a").await;
    let uid = eventually("the default service account", DEADLINE, async || {
        let out = cluster
            .kubectl(&["get", "sa", "default", "-n", "team-a", "-o", "json"])
            .await;
        if !out.success {
            return Err(out.to_string());
        }
        let sa: Value = serde_json::from_str(&out.stdout).map_err(|e| e.to_string())?;
        Ok(sa["metadata"]["uid"].clone())
    })
    .await;

    // Deleted, it comes back (a new object).
    cluster
        .kubectl_ok(&["delete", "sa", "default", "-n", "team-a"])
        .await;
    eventually("the default service account back", DEADLINE, async || {
        let out = cluster
            .kubectl(&["get", "sa", "default", "-n", "team-a", "-o", "json"])
            .await;
        if !out.success {
            return Err(out.to_string());
        }
        let sa: Value = serde_json::from_str(&out.stdout).map_err(|e| e.to_string())?;
        if sa["metadata"]["uid"] != uid {
            Ok(())
        } else {
            Err("still the old one".to_string())
        }
    })
    .await;

    // The system namespaces have one too.
    eventually(
        "kube-system's default service account",
        DEADLINE,
        async || {
            let out = cluster
                .kubectl(&["get", "sa", "default", "-n", "kube-system"])
                .await;
            if out.success {
                Ok(())
            } else {
                Err(out.to_string())
            }
        },
    )
    .await;
}
