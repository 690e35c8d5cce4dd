//! Issue 4, leader election: two control planes against one etcd. One of them holds the
//! `kube-scheduler` and `kube-controller-manager` Leases and is the only one that
//! schedules; SIGKILL it and the other takes the Leases over within about a lease
//! duration (15 s) and schedules new pods.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use tokio::time::Instant;

use crate::harness::{eventually, signal, Cluster, DEADLINE};

/// How long a takeover may take: the lease duration (15 s) plus a few retry periods.
const TAKEOVER_DEADLINE: Duration = Duration::from_secs(30);

/// Runs kubectl against one server; panics unless it succeeds.
async fn kubectl(
    cluster: &Cluster,
    kubeconfig: &Path,
    args: &[&str],
    input: Option<&str>,
) -> String {
    let out = cluster.kubectl_as(kubeconfig, args, input).await;
    assert!(
        out.success,
        "kubectl {args:?} failed:\n{out}\n{}",
        cluster.log_tail()
    );
    out.stdout
}

/// The process id in a holder identity (`<host>_<pid>_<random>`), with the identity.
async fn lease_holder(
    cluster: &Cluster,
    kubeconfig: &Path,
    lease: &str,
) -> Result<(u32, String), String> {
    let out = cluster
        .kubectl_as(
            kubeconfig,
            &[
                "get",
                "lease",
                "-n",
                "kube-system",
                lease,
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
            None,
        )
        .await;
    if !out.success {
        return Err(format!("kubectl get lease {lease}: {out}"));
    }
    let identity = out.stdout.trim().to_string();
    let pid = identity
        .rsplit('_')
        .nth(1)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("holder identity {identity:?} names no process"))?;
    Ok((pid, identity))
}

/// Registers (or re-registers) a Ready node and renews its heartbeat Lease, so the node
/// lifecycle controller keeps it schedulable while the test runs.
async fn ready_node(cluster: &Cluster, kubeconfig: &Path, name: &str) {
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}});
    kubectl(
        cluster,
        kubeconfig,
        &["apply", "-f", "-"],
        Some(&node.to_string()),
    )
    .await;
    let resources = json!({"cpu": "4", "memory": "4Gi", "pods": "110"});
    let status = json!({"status": {
        "capacity": resources,
        "allocatable": resources,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
    }});
    kubectl(
        cluster,
        kubeconfig,
        &[
            "patch",
            "node",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ],
        None,
    )
    .await;
    let heartbeat = Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some("kube-node-lease".to_string()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name.to_string()),
            lease_duration_seconds: Some(40),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..LeaseSpec::default()
        }),
    };
    let mut heartbeat = serde_json::to_value(&heartbeat).expect("encode a Lease");
    heartbeat["apiVersion"] = json!("coordination.k8s.io/v1");
    heartbeat["kind"] = json!("Lease");
    kubectl(
        cluster,
        kubeconfig,
        &["apply", "-f", "-"],
        Some(&heartbeat.to_string()),
    )
    .await;
}

/// Creates a pod and waits until it is bound; returns its node.
async fn scheduled_pod(
    cluster: &Cluster,
    kubeconfig: &Path,
    name: &str,
    deadline: Duration,
) -> String {
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{
            "name": "app",
            "image": "example.com/app:1",
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
        }]},
    });
    kubectl(
        cluster,
        kubeconfig,
        &["create", "-f", "-"],
        Some(&pod.to_string()),
    )
    .await;
    eventually(&format!("pod {name} to be bound"), deadline, async || {
        let out = cluster
            .kubectl_as(
                kubeconfig,
                &["get", "pod", name, "-o", "jsonpath={.spec.nodeName}"],
                None,
            )
            .await;
        match out.stdout.trim() {
            "" => Err(format!("not bound yet: {out}")),
            node => Ok(node.to_string()),
        }
    })
    .await
}

/// Lines of a server log saying it acquired `lease`.
fn acquisitions(log: &Path, lease: &str) -> usize {
    let needle = format!("lease={lease} ");
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("acquired the leader lease") && l.contains(&needle))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_control_plane_takes_over_when_the_leader_dies() {
    let cluster = Cluster::builder().external_etcd().start().await;
    let second = cluster.start_second_server().await;
    let first_pid = cluster.server_pid().expect("the first server runs");
    let second_pid = second.pid().expect("the second server runs");
    let first_log = cluster.path("server.log");

    // One of the two holds each Lease.
    let mut holders = Vec::new();
    for lease in ["kube-scheduler", "kube-controller-manager"] {
        let (pid, identity) = eventually(&format!("a holder of {lease}"), DEADLINE, async || {
            lease_holder(&cluster, &cluster.kubeconfig, lease).await
        })
        .await;
        assert!(
            pid == first_pid || pid == second_pid,
            "{lease} is held by {identity}, neither server (pids {first_pid}, {second_pid})"
        );
        holders.push((lease, pid, identity));
    }
    let (_, leader_pid, leader_identity) = holders[0].clone();
    let (survivor_pid, survivor_kubeconfig, survivor_log, leader_log) = if leader_pid == first_pid {
        (
            second_pid,
            second.kubeconfig.clone(),
            second.log_path.clone(),
            first_log.clone(),
        )
    } else {
        (
            first_pid,
            cluster.kubeconfig.clone(),
            first_log.clone(),
            second.log_path.clone(),
        )
    };

    // The leader schedules; the standby never started its scheduler.
    ready_node(&cluster, &cluster.kubeconfig, "node-1").await;
    scheduled_pod(&cluster, &cluster.kubeconfig, "before", DEADLINE).await;
    assert_eq!(
        acquisitions(&leader_log, "kube-scheduler"),
        1,
        "{}",
        second.log_tail()
    );
    assert_eq!(
        acquisitions(&survivor_log, "kube-scheduler"),
        0,
        "{}",
        second.log_tail()
    );
    let (pid, identity) = lease_holder(&cluster, &cluster.kubeconfig, "kube-scheduler")
        .await
        .expect("the scheduler lease still has its holder");
    assert_eq!(
        (pid, &identity),
        (leader_pid, &leader_identity),
        "the leader changed by itself"
    );

    // SIGKILL: no release, so the standby has to wait for the Lease to expire.
    signal(leader_pid, "KILL");
    let killed = Instant::now();
    let (_, new_identity) = eventually(
        "the standby to take the scheduler lease",
        TAKEOVER_DEADLINE,
        async || match lease_holder(&cluster, &survivor_kubeconfig, "kube-scheduler").await? {
            (pid, identity) if pid == survivor_pid => Ok((pid, identity)),
            (_, identity) => Err(format!("still held by {identity}")),
        },
    )
    .await;
    let took = killed.elapsed();
    eprintln!("{leader_identity} killed; {new_identity} took the scheduler lease after {took:?}");
    assert_ne!(new_identity, leader_identity);
    eventually(
        "the standby to take the controller-manager lease",
        TAKEOVER_DEADLINE,
        async || match lease_holder(&cluster, &survivor_kubeconfig, "kube-controller-manager")
            .await?
        {
            (pid, _) if pid == survivor_pid => Ok(()),
            (_, identity) => Err(format!("still held by {identity}")),
        },
    )
    .await;
    let lease: serde_json::Value = serde_json::from_str(
        &kubectl(
            &cluster,
            &survivor_kubeconfig,
            &[
                "get",
                "lease",
                "-n",
                "kube-system",
                "kube-scheduler",
                "-o",
                "json",
            ],
            None,
        )
        .await,
    )
    .expect("the lease as JSON");
    assert!(
        lease["spec"]["leaseTransitions"].as_i64().unwrap_or(0) >= 1,
        "a takeover counts a transition: {lease}"
    );
    assert_eq!(lease["spec"]["leaseDurationSeconds"], json!(15), "{lease}");

    // The new leader schedules.
    ready_node(&cluster, &survivor_kubeconfig, "node-1").await;
    scheduled_pod(&cluster, &survivor_kubeconfig, "after", DEADLINE).await;
    assert_eq!(acquisitions(&survivor_log, "kube-scheduler"), 1);
}
