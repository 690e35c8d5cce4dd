//! batch/v1 Jobs through `wasmkube up` and the real kubectl: `kubectl create job` runs a
//! module to completion and `kubectl wait --for=condition=complete` returns; an Indexed
//! Job runs each index once, two at a time, with `JOB_COMPLETION_INDEX`; a failing Job
//! stops at its backoffLimit; `ttlSecondsAfterFinished` deletes a finished Job; a Job
//! created suspended starts no pod until resumed; deleting a Job takes its pods with it.
//! CronJobs make their Jobs at the scheduled minute.

use serde_json::Value;

use crate::agents::{manifest, sample_image, up_node};
use crate::harness::{eventually, Cluster, DEADLINE};

/// The pods of Job `job`, by the label every Job pod carries.
async fn job_pods(cluster: &Cluster, job: &str) -> Vec<Value> {
    let list = cluster
        .get_json(&["pods", "-l", &format!("batch.kubernetes.io/job-name={job}")])
        .await;
    list["items"].as_array().cloned().unwrap_or_default()
}

/// A Job `name` with `spec` (a flow mapping's fields, e.g. `suspend: true`) running one
/// container of `sample` with environment `env` (a flow sequence) and restartPolicy Never.
fn job_manifest(name: &str, spec: &str, sample: &str, env: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n  {spec}\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{{name: {name}, image: {}, env: {env}}}]\n",
        sample_image(sample)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_pods_to_completion() {
    let cluster = Cluster::builder().up().start().await;
    up_node(&cluster).await;

    // `kubectl create job` sends the Job as protobuf.
    cluster
        .kubectl_ok(&[
            "create",
            "job",
            "hello",
            &format!("--image={}", sample_image("hello")),
        ])
        .await;
    cluster
        .kubectl_ok(&[
            "wait",
            "--for=condition=complete",
            "job/hello",
            "--timeout=60s",
        ])
        .await;
    let table = cluster.get_table(&["jobs"]).await;
    let row = table.row("hello");
    assert_eq!(row.get("STATUS"), "Complete");
    assert_eq!(row.get("COMPLETIONS"), "1/1");
    let logs = cluster.kubectl_ok(&["logs", "job/hello"]).await;
    assert!(logs.contains("hello from wasmkube"), "{logs}");
    let pods = job_pods(&cluster, "hello").await;
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(pods[0]["status"]["phase"], "Succeeded");
    assert!(
        pods[0]["metadata"]["finalizers"].is_null(),
        "the tracking finalizer goes once counted: {:#}",
        pods[0]["metadata"]
    );

    // samples/hello/job.yaml: Indexed, three completions two at a time; each index
    // runs once and sees itself.
    cluster.apply_stdin(&manifest("hello/job.yaml")).await;
    let indexed = "hello-indexed";
    cluster
        .kubectl_ok(&[
            "wait",
            "--for=condition=complete",
            &format!("job/{indexed}"),
            "--timeout=60s",
        ])
        .await;
    let status = cluster.get_json(&["job", indexed]).await["status"].clone();
    assert_eq!(status["completedIndexes"], "0-2", "{status:#}");
    assert_eq!(status["succeeded"], 3);
    let mut seen = Vec::new();
    for pod in job_pods(&cluster, indexed).await {
        let name = pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let index = pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let logs = cluster.kubectl_ok(&["logs", &name]).await;
        assert!(logs.contains(&format!("index={index}")), "{name}: {logs}");
        seen.push(index);
    }
    seen.sort();
    assert_eq!(seen, ["0", "1", "2"]);

    // A module that fails, with no retries allowed: the Job fails.
    cluster
        .apply_stdin(&job_manifest(
            "boom",
            "backoffLimit: 0",
            "crasher",
            r#"[{name: EXIT_CODE, value: "3"}, {name: CRASH_AFTER_MS, value: "0"}]"#,
        ))
        .await;
    cluster
        .kubectl_ok(&[
            "wait",
            "--for=condition=failed",
            "job/boom",
            "--timeout=60s",
        ])
        .await;
    let job = cluster.get_json(&["job", "boom"]).await;
    assert_eq!(job["status"]["failed"], 1, "{:#}", job["status"]);
    let failed = job["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Failed")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        failed["reason"], "BackoffLimitExceeded",
        "{:#}",
        job["status"]
    );
    let table = cluster.get_table(&["job", "boom"]).await;
    assert_eq!(table.row("boom").get("STATUS"), "Failed");

    // A time to live of zero: gone once finished.
    cluster
        .apply_stdin(&job_manifest(
            "brief",
            "ttlSecondsAfterFinished: 0",
            "hello",
            "[]",
        ))
        .await;
    eventually("the finished job deleted", DEADLINE, async || {
        let out = cluster.kubectl(&["get", "job", "brief"]).await;
        if !out.success && out.stderr.contains("NotFound") {
            Ok(())
        } else {
            Err(format!("{}{}", out.stdout, out.stderr))
        }
    })
    .await;

    // Created suspended: no pods until resumed, then it runs to completion.
    cluster
        .apply_stdin(&job_manifest("later", "suspend: true", "hello", "[]"))
        .await;
    eventually("the job suspended", DEADLINE, async || {
        let table = cluster.get_table(&["job", "later"]).await;
        match table.row("later").get("STATUS") {
            "Suspended" => Ok(()),
            other => Err(other.to_string()),
        }
    })
    .await;
    assert!(job_pods(&cluster, "later").await.is_empty());
    cluster
        .kubectl_ok(&[
            "patch",
            "job",
            "later",
            "--type=merge",
            "-p",
            r#"{"spec":{"suspend":false}}"#,
        ])
        .await;
    cluster
        .kubectl_ok(&[
            "wait",
            "--for=condition=complete",
            "job/later",
            "--timeout=60s",
        ])
        .await;

    // Deleting a Job deletes its pods.
    cluster.kubectl_ok(&["delete", "job", indexed]).await;
    eventually("the job's pods gone", DEADLINE, async || {
        let left = job_pods(&cluster, indexed).await;
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{} pods left", left.len()))
        }
    })
    .await;
}

/// A CronJob makes a Job at the next minute and records it; `kubectl create job
/// --from=cronjob/…` runs its template at once; a schedule cron cannot read is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cronjobs_make_jobs_on_schedule() {
    let cluster = Cluster::builder().up().start().await;
    up_node(&cluster).await;
    let image = format!("--image={}", sample_image("hello"));
    let refused = cluster
        .kubectl(&["create", "cronjob", "bad", &image, "--schedule=61 * * * *"])
        .await;
    assert!(!refused.success);
    assert!(
        refused.stderr.contains("spec.schedule: Invalid value"),
        "{}",
        refused.stderr
    );

    // The sample manifest is one the server takes.
    let sample = cluster.write_file("cronjob.yaml", manifest("hello/cronjob.yaml"));
    let out = cluster
        .kubectl_ok(&["apply", "--dry-run=server", "-f", sample.to_str().unwrap()])
        .await;
    assert!(
        out.contains("hello-every-minute created (server dry run)"),
        "{out}"
    );

    // `kubectl create cronjob` sends protobuf too.
    cluster
        .kubectl_ok(&["create", "cronjob", "tick", &image, "--schedule=* * * * *"])
        .await;
    cluster
        .kubectl_ok(&["create", "job", "manual", "--from=cronjob/tick"])
        .await;
    cluster
        .kubectl_ok(&[
            "wait",
            "--for=condition=complete",
            "job/manual",
            "--timeout=60s",
        ])
        .await;

    // The first scheduled run comes within a minute.
    let scheduled = eventually(
        "a scheduled job to complete",
        std::time::Duration::from_secs(100),
        async || {
            let jobs = cluster.get_json(&["jobs"]).await;
            let done = jobs["items"].as_array().into_iter().flatten().find(|j| {
                j["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("tick-"))
                    && j["status"]["succeeded"] == 1
            });
            match done {
                Some(j) => Ok(j.clone()),
                None => Err(jobs.to_string()),
            }
        },
    )
    .await;
    assert_eq!(
        scheduled["metadata"]["ownerReferences"][0]["kind"],
        "CronJob"
    );
    assert!(scheduled["metadata"]["annotations"]
        ["batch.kubernetes.io/cronjob-scheduled-timestamp"]
        .is_string());
    eventually("the run recorded", DEADLINE, async || {
        let cj = cluster.get_json(&["cronjob", "tick"]).await;
        if cj["status"]["lastScheduleTime"].is_string()
            && cj["status"]["lastSuccessfulTime"].is_string()
        {
            Ok(())
        } else {
            Err(cj["status"].to_string())
        }
    })
    .await;
    let table = cluster.get_table(&["cronjobs"]).await;
    let row = table.row("tick");
    assert_eq!(row.get("SCHEDULE"), "* * * * *");
    assert_eq!(row.get("SUSPEND"), "False");
    assert_ne!(row.get("LAST SCHEDULE"), "<none>");
}
