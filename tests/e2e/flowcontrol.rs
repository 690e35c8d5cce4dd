//! Priority and fairness: with a single workload seat, a flood of creates from
//! two users is queued, not refused and not deadlocked, while a watch (which holds no
//! seat) streams every object; /metrics reports the levels.

use crate::harness::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_seat_queues_a_flood_of_creates_and_watches_stream_past_it() {
    let cluster = Cluster::builder()
        .token_auth_file("bob-token,bob,bob-uid,\"devs\"\n")
        .args(&["--max-workload-requests-inflight", "1"])
        .start()
        .await;
    let bob = cluster.kubeconfig_with_token("bob.kubeconfig", Some("bob-token"));

    // Opened first: if a watch held the only seat, nothing below could run.
    let mut watch = cluster.spawn_kubectl(&["get", "configmaps", "-w", "--no-headers"]);

    let admin_creates = (0..30).map(|i| {
        let name = format!("admin-{i}");
        let cluster = &cluster;
        async move {
            cluster
                .kubectl(&["create", "configmap", &name, "--from-literal=k=v"])
                .await
        }
    });
    let bob_creates = (0..10).map(|i| {
        let name = format!("bob-{i}");
        let (cluster, bob) = (&cluster, &bob);
        async move {
            let args = ["create", "configmap", name.as_str(), "--from-literal=k=v"];
            cluster.kubectl_as(bob, &args, None).await
        }
    });
    let (admin, bob_out) = tokio::join!(
        futures::future::join_all(admin_creates),
        futures::future::join_all(bob_creates)
    );
    for out in admin.iter().chain(bob_out.iter()) {
        assert!(
            out.success,
            "a queued create must succeed, not be refused:\n{out}"
        );
    }

    let names: Vec<String> = cluster
        .kubectl_ok(&["get", "configmaps", "-o", "name"])
        .await
        .lines()
        .filter(|l| l.starts_with("configmap/admin-") || l.starts_with("configmap/bob-"))
        .map(String::from)
        .collect();
    assert_eq!(names.len(), 40, "{names:?}");
    let mut streamed = std::collections::BTreeSet::new();
    while streamed.len() < names.len() {
        let line = watch
            .wait_for_line("another created configmap", |_| true)
            .await;
        let name = line.split_whitespace().next().unwrap_or_default();
        if name.starts_with("admin-") || name.starts_with("bob-") {
            streamed.insert(format!("configmap/{name}"));
        }
    }
    assert_eq!(streamed, names.iter().cloned().collect());

    let metrics = cluster.raw("/metrics").await;
    assert!(metrics.success, "{metrics}");
    // The current limit is the nominal one, or the borrowed 32 while no node or
    // controller request ran for a moment.
    assert!(
        metrics.stdout.lines().any(|l| {
            l.strip_prefix(
                "apiserver_flowcontrol_current_limit_seats{priority_level=\"workload\"} ",
            )
            .is_some_and(|v| v == "1" || v == "32")
        }),
        "{}",
        metrics.stdout
    );
    for line in [
        "apiserver_flowcontrol_nominal_limit_seats{priority_level=\"workload\"} 1",
        "apiserver_flowcontrol_nominal_limit_seats{priority_level=\"system\"} 0",
        "apiserver_flowcontrol_rejected_requests_total{priority_level=\"workload\"} 0",
    ] {
        assert!(
            metrics.stdout.lines().any(|l| l == line),
            "/metrics lacks {line:?}:\n{}",
            metrics.stdout
        );
    }
}
