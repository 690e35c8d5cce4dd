//! Issue 6, limits that keep one pod from hurting the others: a pod whose emptyDir
//! outgrows its `sizeLimit`, or whose local storage outgrows its containers'
//! `ephemeral-storage` limits, is evicted by its node's agent as the kubelet's eviction
//! manager does — containers stopped, the pod Failed with reason Evicted, an Evicted
//! event — and stays so, also across restarts of the agent.

use serde_json::Value;

use crate::agents::{sample_image, AgentProcess};
use crate::harness::{eventually, Cluster, DEADLINE};

/// A shell script that fills `/cache` with 3 MiB: 1 KiB written, then copied onto
/// itself, doubling, into two files.
fn filler_script() -> String {
    let mut script = vec![format!("write /cache/a {}", "x".repeat(1023))];
    for i in 0..11 {
        let (from, to) = if i % 2 == 0 { ("a", "b") } else { ("b", "a") };
        script.push(format!("cat /cache/{from} /cache/{from} > /cache/{to}"));
    }
    script.push("sleep inf".into());
    script.join("; ")
}

async fn evicted_status(cluster: &Cluster, pod: &str) -> Value {
    cluster.get_json(&["pod", pod]).await["status"].clone()
}

fn assert_evicted(status: &Value, message: &str) {
    assert_eq!(status["phase"], "Failed", "{status:#}");
    assert_eq!(status["reason"], "Evicted", "{status:#}");
    assert_eq!(status["message"], message, "{status:#}");
    let state = &status["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(state["exitCode"], 137, "{status:#}");
}

/// A pod on `node` running the filler script with `volume` at /cache and `resources`.
fn filler_pod(name: &str, node: &str, volume: Value, resources: Value) -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "containers": [{
                "name": "filler",
                "image": sample_image("writer"),
                "command": ["sh", "-c", filler_script()],
                "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
                "resources": resources,
            }],
            "volumes": [{"name": "cache", "emptyDir": volume}],
        },
    })
    .to_string()
}

const OVER_SIZE_LIMIT: &str = "Usage of EmptyDir volume \"cache\" exceeds the limit \"1Mi\". ";
const OVER_STORAGE_LIMIT: &str =
    "Pod ephemeral local storage usage exceeds the total limit of containers 1Mi. ";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_outgrowing_their_local_storage_are_evicted() {
    let cluster = Cluster::start().await;
    let mut agent = AgentProcess::start(&cluster, "evict-node").await;
    // One pod fills a 1Mi memory-backed emptyDir; the other a plain emptyDir, with a
    // 1Mi ephemeral-storage limit on its container.
    cluster
        .apply_stdin(&filler_pod(
            "filler",
            "evict-node",
            serde_json::json!({"medium": "Memory", "sizeLimit": "1Mi"}),
            serde_json::json!({}),
        ))
        .await;
    cluster
        .apply_stdin(&filler_pod(
            "spender",
            "evict-node",
            serde_json::json!({}),
            serde_json::json!({"limits": {"ephemeral-storage": "1Mi"}}),
        ))
        .await;
    for pod in ["filler", "spender"] {
        eventually(&format!("{pod} evicted"), DEADLINE, async || {
            let status = evicted_status(&cluster, pod).await;
            if status["phase"] == "Failed" {
                Ok(())
            } else {
                Err(status.to_string())
            }
        })
        .await;
    }
    assert_evicted(
        &evicted_status(&cluster, "spender").await,
        OVER_STORAGE_LIMIT,
    );
    let status = evicted_status(&cluster, "filler").await;
    assert_evicted(&status, OVER_SIZE_LIMIT);
    let disruption = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "DisruptionTarget")
        .cloned()
        .unwrap_or_default();
    assert_eq!(disruption["reason"], "TerminationByKubelet", "{status:#}");

    let described = cluster.kubectl_ok(&["describe", "pod", "filler"]).await;
    for line in ["Status:", "Reason:", "Message:"] {
        let shown = described
            .lines()
            .find(|l| l.starts_with(line))
            .unwrap_or_default();
        let want = match line {
            "Status:" => "Failed",
            "Reason:" => "Evicted",
            _ => "exceeds the limit",
        };
        assert!(shown.contains(want), "{line} {want}:\n{described}");
    }
    eventually("an Evicted event", DEADLINE, async || {
        let events = cluster
            .kubectl_ok(&[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=filler,reason=Evicted",
            ])
            .await;
        if events.contains("exceeds the limit") {
            Ok(())
        } else {
            Err(events)
        }
    })
    .await;

    // The eviction is final: an agent that restarts, and then stops cleanly, leaves
    // the pod as it was rather than running it again or rewriting its status.
    agent.stop().await;
    agent.restart(&cluster).await;
    agent.stop().await;
    assert_evicted(&evicted_status(&cluster, "filler").await, OVER_SIZE_LIMIT);
}
