//! One pod's life on the node, as an explicit state machine:
//!
//! ```text
//! Fetching ──> Volumes ──> Init(i) … ──> Running ──> Finished
//!    │            │          │             │            │
//!    └────────────┴──────────┴──── deletion requested ──┴──> Terminating ──> gone
//! ```
//!
//! - **Fetching**: every container's module is fetched and compiled; a failure shows
//!   as `ErrImagePull` then `ImagePullBackOff` and is retried with back-off.
//! - **Volumes**: the pod's volumes are laid out; a failure (a missing ConfigMap …)
//!   is a `FailedMount` event and a retry.
//! - **Init(i)**: init containers run in order, each to completion.
//! - **Running**: each container runs under its own loop that applies restartPolicy
//!   with the kubelet's back-off (the first restart at once, then 10 s doubling to
//!   5 min, reset after 10 min of good running), shown as `CrashLoopBackOff`.
//! - **Finished**: restartPolicy ended every container (Succeeded or Failed); the pod
//!   stays until deleted.
//! - **Evicted** (from Running, or Init): an emptyDir grew past its limit (checked
//!   with the volume refresh, every 10 s, as the kubelet's eviction manager does); the
//!   containers are stopped and the pod is Failed with reason Evicted until deleted.
//! - **Terminating**: instances are stopped (within the grace period), the pod's files
//!   removed, then the agent completes the deletion in the API.
//!
//! Status is written through `pods/status` by a writer task whenever the state
//! changes; Events are recorded along the way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::Api;
use serde_json::Value;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::dns::PodNames;
use super::events::EventType;
use super::pods::Context;
use super::probes;
use super::sandbox::ContainerSandbox;
use super::status::{ContainerState, PodState, RestartPolicy, Terminated};
use crate::fetch::{Fetched, PullPolicy, RegistryAuth};
use crate::volumes::usage::SizeLimit;
use crate::volumes::{PodDirs, PodVolumes};
use crate::wasm::{Egress, Exit, Names, Program, RunSpec};

/// The first back-off after a failure, as the kubelet's.
const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
/// The longest back-off.
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long without failing starts over at the initial back-off.
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// How long the status writer waits for more changes before writing.
const STATUS_COALESCE: Duration = Duration::from_millis(15);
/// How long the first status write waits for the pod's containers to get past "being
/// created": a pod whose module is cached starts within this, and its first write then
/// says Running — one PATCH per pod start instead of two.
const FIRST_STATUS_WAIT: Duration = Duration::from_millis(250);
/// How often configMap/secret/downwardAPI/projected volumes are re-projected, and
/// emptyDir usage checked against its limits.
const VOLUME_REFRESH: Duration = Duration::from_secs(10);

/// Shared between the worker, its container loops and its status writer.
struct Shared {
    ctx: Arc<Context>,
    state: Mutex<PodState>,
    changed: Notify,
    policy: RestartPolicy,
    /// The current crash back-off per container.
    backoffs: Mutex<HashMap<String, Duration>>,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut PodState)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s);
        }
        self.changed.notify_one();
    }
}

/// Runs a pod until it is gone from the API (`gone`), its deletion is complete, or the
/// agent stops (`stop`, which stops instances but keeps the pod and its files).
pub async fn run(
    ctx: Arc<Context>,
    pod_net: Arc<super::podnet::NodePodNet>,
    mut pod_rx: watch::Receiver<Pod>,
    gone: CancellationToken,
    stop: CancellationToken,
) {
    let pod = pod_rx.borrow().clone();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    // Deletion requested (deletionTimestamp) or the pod gone: both end the run phase.
    let terminate = CancellationToken::new();
    let watcher = {
        let terminate = terminate.clone();
        let gone = gone.clone();
        let mut rx = pod_rx.clone();
        tokio::spawn(async move {
            loop {
                if rx.borrow().metadata.deletion_timestamp.is_some() {
                    terminate.cancel();
                    return;
                }
                tokio::select! {
                    // The sender goes when the worker is dropped: on deletion `gone` was
                    // cancelled first (a race with the arm below), at shutdown it was not.
                    r = rx.changed() => if r.is_err() { if gone.is_cancelled() { terminate.cancel() } return },
                    _ = gone.cancelled() => { terminate.cancel(); return }
                }
            }
        })
    };

    let terminal = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    );
    let pod_dirs = PodDirs::of(&ctx.pods_dir, ctx.memory_pods_dir.as_deref(), &uid);
    let host_ip = ctx.node_ip.to_string();
    let recorded_ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
    let pod_ip = if terminal {
        // A finished pod runs nothing: it keeps showing the address it had.
        recorded_ip.map(|ip| ip.to_string()).unwrap_or_default()
    } else {
        let net = pod_net.get(&ctx.client, &ctx.node_name).await;
        match net.claim(&uid, recorded_ip) {
            Ok(ip) => ip.to_string(),
            Err(e) => {
                // Better a pod on the node's address than no pod at all.
                tracing::warn!(namespace = %ns, pod = %name, error = %e, "no pod IP; the pod shares the node's address");
                host_ip.clone()
            }
        }
    };
    let shared = Arc::new(Shared {
        ctx: ctx.clone(),
        state: Mutex::new(PodState::new(&pod, &host_ip, &pod_ip, Utc::now())),
        changed: Notify::new(),
        policy: RestartPolicy::of(&pod),
        backoffs: Mutex::new(HashMap::new()),
    });
    let writer_stop = CancellationToken::new();
    // A finished pod's status is final: this agent (perhaps restarted since) has nothing
    // to add, and a state rebuilt from it would only overwrite it.
    let writer = (!terminal).then(|| {
        tokio::spawn(write_status(
            shared.clone(),
            pod.clone(),
            writer_stop.clone(),
        ))
    });

    if !terminal {
        let own_ip = pod_ip
            .parse::<std::net::IpAddr>()
            .ok()
            .filter(|ip| *ip != ctx.node_ip);
        let names = pod.spec.iter().flat_map(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(s.containers.iter())
                .map(|c| c.name.clone())
        });
        ctx.sandboxes.add_pod(&uid, &ns, &name, own_ip, names);
        shared.changed.notify_one();
        let run_cancel = CancellationToken::new();
        let latest = pod_rx.clone();
        tokio::select! {
            _ = run_pod(&shared, &mut pod_rx, &pod_dirs, run_cancel.clone()) => {}
            // The containers keep running while their preStop hooks do.
            _ = async {
                terminate.cancelled().await;
                let pod = latest.borrow().clone();
                pre_stop_all(&shared, &pod).await;
            } => {}
            _ = stop.cancelled() => {}
        }
        run_cancel.cancel();
        shared.update(|s| s.settle_eviction(Utc::now()));
    }
    // Finished pods wait here for their deletion.
    tokio::select! {
        _ = terminate.cancelled() => {}
        _ = stop.cancelled() => {}
    }
    ctx.sandboxes.remove_pod(&uid);
    writer_stop.cancel();
    if let Some(writer) = writer {
        let _ = writer.await;
    }
    watcher.abort();
    if stop.is_cancelled() && !gone.is_cancelled() && !terminate.is_cancelled() {
        return;
    }
    // The pod is going away: its address may go to another pod.
    pod_net.get(&ctx.client, &ctx.node_name).await.release(&uid);
    // Terminating: instances are stopped (run_pod's futures are dropped, which
    // cancels them); now the files, then the API object.
    let latest = pod_rx.borrow().clone();
    if !terminal {
        ctx.recorder.pod(
            &latest,
            None,
            EventType::Normal,
            "Killing",
            "Stopping the pod's containers",
        );
    }
    if let Err(e) = pod_dirs.remove() {
        tracing::warn!(namespace = %ns, pod = %name, error = %e, "removing the pod's files");
    }
    if let Err(e) = ctx.logs.remove_pod_named(&ns, &name, &uid) {
        tracing::warn!(namespace = %ns, pod = %name, error = %e, "removing the pod's logs");
    }
    if gone.is_cancelled() {
        return;
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.clone()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => tracing::info!(namespace = %ns, pod = %name, "pod deleted"),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(e) => {
            tracing::warn!(namespace = %ns, pod = %name, error = %e, "completing the pod's deletion")
        }
    }
}

/// Fetch → volumes → init containers → containers. Returns when every container has
/// ended for good (the pod is Succeeded or Failed); cancelled from outside otherwise.
async fn run_pod(
    shared: &Arc<Shared>,
    pod_rx: &mut watch::Receiver<Pod>,
    pod_dirs: &PodDirs,
    cancel: CancellationToken,
) {
    let ctx = &shared.ctx;
    let pod = pod_rx.borrow().clone();
    let spec = pod.spec.clone().unwrap_or_default();

    // Fetching.
    let all: Vec<Container> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .cloned()
        .collect();
    let mut programs: HashMap<String, Program> = HashMap::new();
    for c in &all {
        let program = fetch_with_backoff(shared, &pod, c).await;
        programs.insert(c.name.clone(), program);
    }

    // Volumes.
    let mut backoff = Backoff::new();
    let volumes = loop {
        match PodVolumes::prepare(&ctx.objects, &pod, pod_dirs).await {
            Ok(v) => break v,
            Err(e) => {
                let message = format!("MountVolume.SetUp failed: {e}");
                shared.update(|s| s.pod_problem = Some(("FailedMount".into(), message.clone())));
                ctx.recorder
                    .pod(&pod, None, EventType::Warning, "FailedMount", &message);
                tokio::time::sleep(backoff.next()).await;
            }
        }
    };
    shared.update(|s| s.pod_problem = None);
    let volumes = Arc::new(volumes);
    let limits = empty_dir_limits(&pod);
    let storage_limit = ephemeral_storage_limit(&pod);
    let log_dir = {
        let m = &pod.metadata;
        ctx.logs.pod_dir(
            m.namespace.as_deref().unwrap_or_default(),
            m.name.as_deref().unwrap_or_default(),
            m.uid.as_deref().unwrap_or_default(),
        )
    };
    let refresher = {
        let shared = shared.clone();
        let volumes = volumes.clone();
        let pod_rx = pod_rx.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(VOLUME_REFRESH) => {}
                }
                let pod = pod_rx.borrow().clone();
                if let Err(e) = volumes.refresh(&shared.ctx.objects, &pod).await {
                    tracing::debug!(error = %e, "refreshing volumes");
                }
                let over = if let Some((limit, used)) = volumes.over_limit(&limits) {
                    Some((
                        format!(
                            "Usage of EmptyDir volume {:?} exceeds the limit {:?}. ",
                            limit.volume, limit.shown
                        ),
                        used,
                        limit.bytes,
                    ))
                } else {
                    storage_limit.and_then(|limit| {
                        let logs = crate::volumes::usage::usage(&log_dir).unwrap_or(0);
                        let used = volumes.disk_usage() + logs;
                        (used > limit).then(|| {
                            (
                                format!(
                                    "Pod ephemeral local storage usage exceeds the total limit of containers {}. ",
                                    format_bytes(limit)
                                ),
                                used,
                                limit,
                            )
                        })
                    })
                };
                if let Some((message, used, limit)) = over {
                    evict(&shared, &pod, message, used, limit);
                    // Stops the containers; the pod stays, Failed, until deleted.
                    cancel.cancel();
                    return;
                }
            }
        })
    };

    // Init containers, in order, each to completion.
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        let program = programs[&c.name].clone();
        loop {
            let exit_code = run_once(shared, &pod, c, &program, &volumes, &cancel).await;
            match exit_code {
                Some(0) => break,
                None => return,
                Some(code) => {
                    if !shared.policy.restarts(code) {
                        shared.update(|s| s.finished = true);
                        refresher.abort();
                        return;
                    }
                    if !back_off_and_count_restart(shared, &pod, c, &cancel).await {
                        return;
                    }
                }
            }
        }
        let next = spec
            .init_containers
            .iter()
            .flatten()
            .nth(i + 1)
            .map(|n| n.name.clone());
        shared.update(|s| {
            if let Some(n) = next.as_deref().and_then(|n| s.container_mut(n)) {
                n.waiting("ContainerCreating", None);
            }
        });
    }
    shared.update(|s| {
        s.initialized = true;
        for c in &mut s.containers {
            if matches!(&c.state, ContainerState::Waiting { reason, .. } if reason == "PodInitializing")
            {
                c.waiting("ContainerCreating", None);
            }
        }
    });

    // Containers: each under its own restart loop.
    let mut loops = tokio::task::JoinSet::new();
    for c in spec.containers.iter().cloned() {
        let shared = shared.clone();
        let pod = pod.clone();
        let program = programs[&c.name].clone();
        let volumes = volumes.clone();
        let cancel = cancel.clone();
        loops.spawn(
            async move { container_loop(&shared, &pod, &c, &program, &volumes, &cancel).await },
        );
    }
    while loops.join_next().await.is_some() {}
    refresher.abort();
    if !cancel.is_cancelled() {
        shared.update(|s| s.finished = true);
    }
}

/// The limit of each of the pod's emptyDirs: its `sizeLimit`, or for a memory-backed
/// one without, the pod's memory limit — the size the kubelet gives such a tmpfs — when
/// every container has one.
fn empty_dir_limits(pod: &Pod) -> Vec<SizeLimit> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let memory = |c: &Container| {
        c.resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("memory"))
            .and_then(|q| parse_bytes(&q.0))
    };
    // As upstream's pod limits: the containers' sum, or the largest init container's
    // if that is more.
    let pod_memory = spec
        .containers
        .iter()
        .map(memory)
        .sum::<Option<u64>>()
        .map(|sum| {
            spec.init_containers
                .iter()
                .flatten()
                .filter_map(memory)
                .fold(sum, u64::max)
        });
    spec.volumes
        .iter()
        .flatten()
        .filter_map(|v| {
            let e = v.empty_dir.as_ref()?;
            let (bytes, shown) = match e.size_limit.as_ref() {
                Some(q) => (parse_bytes(&q.0)?, q.0.clone()),
                None if e.medium.as_deref() == Some("Memory") => {
                    let bytes = pod_memory?;
                    (bytes, format_bytes(bytes))
                }
                None => return None,
            };
            Some(SizeLimit {
                volume: v.name.clone(),
                bytes,
                shown,
            })
        })
        .collect()
}

/// The pod's local-storage limit: its containers' `limits.ephemeral-storage` summed
/// (the largest init container's if more), when any container sets one. It covers
/// the pod's emptyDirs on disk and its containers' logs — all a WASI container writes
/// locally, having no writable layer.
fn ephemeral_storage_limit(pod: &Pod) -> Option<u64> {
    let spec = pod.spec.as_ref()?;
    let limit = |c: &Container| {
        c.resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("ephemeral-storage"))
            .and_then(|q| parse_bytes(&q.0))
    };
    let containers: Vec<u64> = spec.containers.iter().filter_map(limit).collect();
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .filter_map(limit)
        .max();
    if containers.is_empty() && init.is_none() {
        return None;
    }
    Some(containers.iter().sum::<u64>().max(init.unwrap_or(0)))
}

/// `64Mi`, `1536Ki` or `1000`: bytes as the largest binary suffix that divides them.
fn format_bytes(bytes: u64) -> String {
    for (suffix, unit) in [
        ("Ti", 1u64 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// Marks the pod evicted (`message` as the kubelet's eviction manager words it) for
/// using `used` bytes of local storage against `limit`; the caller stops the containers.
fn evict(shared: &Shared, pod: &Pod, message: String, used: u64, limit: u64) {
    tracing::warn!(
        namespace = pod.metadata.namespace.as_deref().unwrap_or(""),
        pod = pod.metadata.name.as_deref().unwrap_or(""),
        reason = %message,
        used,
        limit,
        "evicting the pod"
    );
    shared
        .ctx
        .recorder
        .pod(pod, None, EventType::Warning, "Evicted", &message);
    shared.update(|s| s.evicted = Some(message));
}

/// Runs a container again and again as restartPolicy says, until it should not run
/// any more or `cancel`.
async fn container_loop(
    shared: &Arc<Shared>,
    pod: &Pod,
    c: &Container,
    program: &Program,
    volumes: &PodVolumes,
    cancel: &CancellationToken,
) {
    loop {
        let started = Instant::now();
        let Some(code) = run_once(shared, pod, c, program, volumes, cancel).await else {
            return;
        };
        if !shared.policy.restarts(code) {
            return;
        }
        if started.elapsed() >= BACKOFF_RESET {
            if let Ok(mut b) = shared.backoffs.lock() {
                b.remove(&c.name);
            }
        }
        if !back_off_and_count_restart(shared, pod, c, cancel).await {
            return;
        }
    }
}

/// Waits out a failed container's crash back-off as the kubelet does — the first
/// restart at once, then 10 s doubling to 5 min, shown as `CrashLoopBackOff` with a
/// BackOff event — and counts the restart. False when cancelled meanwhile.
async fn back_off_and_count_restart(
    shared: &Arc<Shared>,
    pod: &Pod,
    c: &Container,
    cancel: &CancellationToken,
) -> bool {
    if let Some(delay) = backoff_for(shared, &c.name) {
        let pod_ref = pod_ref(pod);
        let msg = format!(
            "back-off {} restarting failed container={} pod={pod_ref}",
            human(delay),
            c.name
        );
        shared.update(|s| {
            if let Some(r) = s.container_mut(&c.name) {
                r.waiting("CrashLoopBackOff", Some(msg.clone()));
            }
        });
        shared.ctx.recorder.pod(
            pod,
            Some(&c.name),
            EventType::Warning,
            "BackOff",
            &format!(
                "Back-off restarting failed container {} in pod {pod_ref}",
                c.name
            ),
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return false,
        }
    }
    shared.update(|s| {
        if let Some(r) = s.container_mut(&c.name) {
            r.restart_count += 1;
        }
    });
    true
}

/// Runs the preStop hooks of the pod's running containers, together, within the pod's
/// grace period (none for a deletion with grace 0). Failures are FailedPreStopHook
/// events.
async fn pre_stop_all(shared: &Arc<Shared>, pod: &Pod) {
    let ctx = &shared.ctx;
    let grace = probes::termination_grace(pod);
    if grace.is_zero() {
        return;
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let pod_ip = shared
        .state
        .lock()
        .ok()
        .and_then(|s| s.pod_ip.parse::<std::net::IpAddr>().ok())
        .unwrap_or(ctx.node_ip);
    let pod_ref = pod_ref(pod);
    let hooks = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .filter(|c| c.lifecycle.as_ref().is_some_and(|l| l.pre_stop.is_some()))
        .filter_map(|c| {
            let sandbox = ctx.sandboxes.container(&uid, &c.name)?;
            let target = probes::Target {
                pod_ip,
                sandbox: Some(sandbox),
            };
            let pod_ref = &pod_ref;
            Some(async move {
                if let Err(message) = probes::pre_stop(c, &target, pod_ref, grace).await {
                    ctx.recorder.pod(
                        pod,
                        Some(&c.name),
                        EventType::Warning,
                        "FailedPreStopHook",
                        &message,
                    );
                }
            })
        })
        .collect::<Vec<_>>();
    futures::future::join_all(hooks).await;
}

/// Where one container run's probe results go: the pod's state (written by the
/// status writer, coalesced) and Events. Results of a run that has ended are ignored.
struct RunSink {
    shared: Arc<Shared>,
    pod: Pod,
    container: String,
    /// The run the probes belong to.
    container_id: String,
    has_readiness: bool,
}

impl RunSink {
    fn update(&self, f: impl FnOnce(&mut super::status::ContainerRecord)) {
        let mut changed = false;
        if let Ok(mut s) = self.shared.state.lock() {
            if let Some(r) = s.container_mut(&self.container) {
                if r.container_id == self.container_id && r.is_running() {
                    let before = (r.ready, r.started);
                    f(r);
                    changed = before != (r.ready, r.started);
                }
            }
        }
        if changed {
            self.shared.changed.notify_one();
        }
    }
}

impl probes::ProbeSink for RunSink {
    fn set_ready(&self, ready: bool) {
        self.update(|r| r.ready = ready && r.started);
    }

    fn set_started(&self) {
        let has_readiness = self.has_readiness;
        self.update(|r| {
            r.started = true;
            if !has_readiness {
                r.ready = true;
            }
        });
    }

    fn event(&self, kind: EventType, reason: &str, message: &str) {
        self.shared
            .ctx
            .recorder
            .pod(&self.pod, Some(&self.container), kind, reason, message);
    }
}

/// How long a container of this pod waits before its next restart: nothing the first
/// time, then 10 s, doubling to 5 min (the kubelet's crash back-off).
fn backoff_for(shared: &Shared, container: &str) -> Option<Duration> {
    let mut map = match shared.backoffs.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    let wait = map.get(container).copied();
    let next = wait.map_or(BACKOFF_INITIAL, |d| (d * 2).min(BACKOFF_MAX));
    map.insert(container.to_string(), next);
    wait
}

/// Runs one instance of a container to its end. `None` when cancelled (the pod is
/// terminating or the agent stopping); otherwise the exit code.
async fn run_once(
    shared: &Arc<Shared>,
    pod: &Pod,
    c: &Container,
    program: &Program,
    volumes: &PodVolumes,
    cancel: &CancellationToken,
) -> Option<i32> {
    let ctx = &shared.ctx;
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    // The container's configuration: a problem here is CreateContainerConfigError,
    // retried (the missing ConfigMap may appear).
    let mut backoff = Backoff::new();
    let service_env = ctx.services.env_for(pod).await;
    let (env, preopens) = loop {
        let (host_ip, pod_ip) = shared
            .state
            .lock()
            .map(|s| (s.host_ip.clone(), s.pod_ip.clone()))
            .unwrap_or_default();
        let facts = crate::env::NodeFacts {
            node_name: ctx.node_name.clone(),
            host_ip,
            pod_ip,
        };
        let env = crate::env::container_env(&ctx.objects, pod, c, &facts, &service_env).await;
        let result = env.map_err(|e| e.to_string()).and_then(|env| {
            volumes
                .preopens(c, &env)
                .map(|p| (env, p))
                .map_err(|e| e.to_string())
        });
        match result {
            Ok(ok) => break ok,
            Err(message) => {
                shared.update(|s| {
                    if let Some(r) = s.container_mut(&c.name) {
                        r.waiting("CreateContainerConfigError", Some(message.clone()));
                    }
                });
                ctx.recorder.pod(
                    pod,
                    Some(&c.name),
                    EventType::Warning,
                    "Failed",
                    &format!("Error: {message}"),
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next()) => {}
                    _ = cancel.cancelled() => return None,
                }
            }
        }
    };
    let argv = argv(c, &env);
    let restart = shared
        .state
        .lock()
        .ok()
        .and_then(|mut s| s.container_mut(&c.name).map(|r| r.restart_count))
        .unwrap_or(0);
    let log = match ctx
        .logs
        .open(&ns, &name, &uid, &c.name, restart.max(0) as u32)
    {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(namespace = %ns, pod = %name, container = %c.name, error = %e, "opening the container log");
            return Some(1);
        }
    };
    let memory_limit = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
        .and_then(|q| parse_bytes(&q.0));
    let cpu_limit_millis = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("cpu"))
        .and_then(|q| parse_millicores(&q.0));
    // The node's own address means the pod got none of its own (see `run`).
    let pod_ip = shared
        .state
        .lock()
        .ok()
        .and_then(|s| s.pod_ip.parse::<std::net::IpAddr>().ok())
        .filter(|ip| *ip != ctx.node_ip);
    let egress = pod_egress(pod, &ctx.pod_egress);
    let names: Arc<dyn Names> = Arc::new(PodNames::for_pod(&ctx.names, pod, pod_ip));
    let sandbox = ContainerSandbox {
        program: program.clone(),
        argv: argv.clone(),
        env: env.clone(),
        preopens: preopens.clone(),
        memory_limit,
        cpu_limit_millis,
        pod_ip,
        egress: egress.clone(),
        names: Some(names.clone()),
    };
    let listens = Arc::new(watch::channel(0u64).0);
    let spec = RunSpec {
        argv,
        env,
        preopens,
        stdout: log.stdout(),
        stderr: log.stderr(),
        stdin: None,
        memory_limit,
        cpu_limit_millis,
        network: true,
        pod_ip,
        egress,
        listens: Some(listens.clone()),
        names: Some(names),
    };
    let started_at = Utc::now();
    let container_id = format!("wasmtime://{uid}/{}/{restart}", c.name);
    shared.update(|s| {
        if let Some(r) = s.container_mut(&c.name) {
            r.container_id = container_id.clone();
            r.running(started_at);
            // A startup probe holds `started` back; without a readiness probe a
            // started container is ready.
            r.started = c.startup_probe.is_none();
            r.ready = r.started && c.readiness_probe.is_none();
        }
    });
    ctx.recorder.pod(
        pod,
        Some(&c.name),
        EventType::Normal,
        "Created",
        &format!("Created container {}", c.name),
    );
    ctx.recorder.pod(
        pod,
        Some(&c.name),
        EventType::Normal,
        "Started",
        &format!("Started container {}", c.name),
    );
    ctx.sandboxes
        .set_container(&uid, &c.name, Some(sandbox.clone()));
    let instance = cancel.child_token();
    let run = program.run(spec, instance.clone());
    // Probes and hooks are watched next to the instance, in the same task: a liveness
    // kill's preStop hook runs while the instance still runs.
    let (exit, killed) = if probes::needs_supervision(c) {
        let probe_ip = shared
            .state
            .lock()
            .ok()
            .and_then(|s| s.pod_ip.parse::<std::net::IpAddr>().ok())
            .unwrap_or(ctx.node_ip);
        let sink = Arc::new(RunSink {
            shared: shared.clone(),
            pod: pod.clone(),
            container: c.name.clone(),
            container_id: container_id.clone(),
            has_readiness: c.readiness_probe.is_some(),
        });
        let watch = probes::supervise(
            probes::RunProbes {
                container: c.clone(),
                pod_ref: pod_ref(pod),
                target: probes::Target {
                    pod_ip: probe_ip,
                    sandbox: Some(sandbox),
                },
                grace: probes::termination_grace(pod),
                started_at: tokio::time::Instant::now(),
                listens: Some(listens.subscribe()),
            },
            sink,
            instance.clone(),
        );
        tokio::pin!(run);
        tokio::select! {
            biased;
            exit = &mut run => (exit, None),
            cause = watch => (run.await, Some(cause)),
        }
    } else {
        (run.await, None)
    };
    ctx.sandboxes.set_container(&uid, &c.name, None);
    drop(log);
    let finished_at = Utc::now();
    // Killed by a probe or a failed postStart hook, the run ends as a killed container
    // does (137, Error) and restarts as restartPolicy says; otherwise a cancelled run
    // means the pod is terminating or the agent stopping.
    if exit == Exit::Cancelled && killed.is_none() {
        return None;
    }
    // A trap is reported like a container killed by SIGABRT (134), running out of
    // memory like the OOM killer's SIGKILL (137).
    let (code, reason, message) = (
        exit.exit_code(),
        exit.reason(),
        exit.message().map(str::to_string),
    );
    if cancel.is_cancelled() {
        return None;
    }
    tracing::info!(namespace = %ns, pod = %name, container = %c.name, exit_code = code, reason, "container exited");
    if let Some(m) = &message {
        ctx.recorder.pod(
            pod,
            Some(&c.name),
            EventType::Warning,
            "Failed",
            &format!("Error: {m}"),
        );
    }
    shared.update(|s| {
        if let Some(r) = s.container_mut(&c.name) {
            r.terminated(Terminated {
                exit_code: code,
                reason: reason.to_string(),
                message: message.clone(),
                started_at: Some(started_at),
                finished_at,
            });
        }
    });
    Some(code)
}

/// A container's argv: `command` (or the module's name as argv[0], as a container's
/// entrypoint is its program) then `args`, with `$(VAR)` references expanded as
/// Kubernetes does. Not the container's name: a program may act on its argv[0] (the
/// samples run their built-in `echo` or `cat` when called so).
fn argv(c: &Container, env: &[(String, String)]) -> Vec<String> {
    let mut argv: Vec<String> = match &c.command {
        Some(cmd) if !cmd.is_empty() => cmd.iter().map(|s| crate::env::expand(s, env)).collect(),
        _ => vec![module_name(c.image.as_deref().unwrap_or_default(), &c.name)],
    };
    argv.extend(c.args.iter().flatten().map(|s| crate::env::expand(s, env)));
    argv
}

/// The program name an image stands for: the last path segment without digest, tag
/// or `.wasm` (`file:///opt/m/http-echo.wasm` and `reg:5000/x/http-echo:v1` both give
/// `http-echo`).
fn module_name(image: &str, fallback: &str) -> String {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    let last = if image.contains("://") {
        last
    } else {
        last.split(':').next().unwrap_or(last)
    };
    let name = last.strip_suffix(".wasm").unwrap_or(last);
    if name.is_empty() {
        fallback.to_string()
    } else {
        name.to_string()
    }
}

/// Fetches and compiles a container's module, retrying with back-off until it works.
async fn fetch_with_backoff(shared: &Arc<Shared>, pod: &Pod, c: &Container) -> Program {
    let ctx = &shared.ctx;
    let image = c.image.clone().unwrap_or_default();
    let policy = PullPolicy::from_k8s(c.image_pull_policy.as_deref(), &image);
    let mut backoff = Backoff::new();
    loop {
        let auths = pull_secrets(ctx, pod).await;
        let result = fetch_and_load(ctx, pod, c, &image, policy, &auths).await;
        match result {
            Ok((fetched, program)) => {
                shared.update(|s| {
                    if let Some(r) = s.container_mut(&c.name) {
                        r.image_id = fetched.image_id.clone();
                    }
                });
                return program;
            }
            Err((reason, message)) => {
                shared.update(|s| {
                    if let Some(r) = s.container_mut(&c.name) {
                        r.waiting(reason, Some(message.clone()));
                    }
                });
                ctx.recorder
                    .pod(pod, Some(&c.name), EventType::Warning, "Failed", &message);
                let delay = backoff.next();
                if reason == "ErrImagePull" {
                    let back = format!("Back-off pulling image {image:?}");
                    shared.update(|s| {
                        if let Some(r) = s.container_mut(&c.name) {
                            r.waiting("ImagePullBackOff", Some(back.clone()));
                        }
                    });
                    ctx.recorder
                        .pod(pod, Some(&c.name), EventType::Normal, "BackOff", &back);
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

async fn fetch_and_load(
    ctx: &Context,
    pod: &Pod,
    c: &Container,
    image: &str,
    policy: PullPolicy,
    auths: &[RegistryAuth],
) -> Result<(Fetched, Program), (&'static str, String)> {
    let started = Instant::now();
    let fetched = ctx
        .modules
        .fetch(image, policy, auths)
        .await
        .map_err(|e| (e.reason(), format!("Failed to pull image {image:?}: {e}")))?;
    if fetched.pulled {
        // Recorded once the fetch is done, so a module already on the node costs one
        // event, as the kubelet's "already present on machine".
        ctx.recorder.pod(
            pod,
            Some(&c.name),
            EventType::Normal,
            "Pulling",
            &format!("Pulling image {image:?}"),
        );
    }
    let pulled_msg = if fetched.pulled {
        format!(
            "Successfully pulled image {image:?} in {:?}. Image size: {} bytes.",
            started.elapsed(),
            fetched.size
        )
    } else {
        format!("Container image {image:?} already present on machine")
    };
    ctx.recorder
        .pod(pod, Some(&c.name), EventType::Normal, "Pulled", &pulled_msg);
    let program = ctx
        .engine
        .load(&fetched.digest, &fetched.path)
        .await
        .map_err(|e| ("CreateContainerError", format!("Error: {e}")))?;
    Ok((fetched, program))
}

/// Registry credentials from the pod's imagePullSecrets (missing ones are skipped, as
/// the kubelet does).
async fn pull_secrets(ctx: &Context, pod: &Pod) -> Vec<RegistryAuth> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let mut auths = Vec::new();
    let refs = pod
        .spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.clone())
        .unwrap_or_default();
    for r in refs {
        let Ok(Some(secret)) = api.get_opt(&r.name).await else {
            continue;
        };
        let data = secret.data.unwrap_or_default();
        let Some(bytes) = data
            .get(".dockerconfigjson")
            .or_else(|| data.get(".dockercfg"))
        else {
            continue;
        };
        match crate::fetch::auths_from_docker_config(&bytes.0) {
            Ok(a) => auths.extend(a),
            Err(e) => tracing::warn!(secret = %r.name, error = %e, "unreadable imagePullSecret"),
        }
    }
    auths
}

/// Writes the pod's status whenever it changes, keeping each condition's
/// lastTransitionTime until its status really changes.
async fn write_status(shared: Arc<Shared>, pod: Pod, stop: CancellationToken) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(shared.ctx.client.clone(), &ns);
    let mut last: Option<Value> = None;
    let mut transitions: HashMap<String, (String, Value)> = HashMap::new();
    if let Some(conds) = pod.status.as_ref().and_then(|s| s.conditions.as_ref()) {
        for c in conds {
            if let Some(t) = &c.last_transition_time {
                transitions.insert(
                    c.type_.clone(),
                    (
                        c.status.clone(),
                        serde_json::to_value(t).unwrap_or(Value::Null),
                    ),
                );
            }
        }
    }
    let mut backoff = Backoff::new();
    loop {
        let stopping = tokio::select! {
            _ = shared.changed.notified() => false,
            _ = stop.cancelled() => true,
        };
        if !stopping {
            if last.is_none() {
                // The first write waits until every container is up (or in trouble), so
                // a pod start costs one PATCH that already says Running, and Ready.
                let deadline = tokio::time::Instant::now() + FIRST_STATUS_WAIT;
                loop {
                    let settled = shared.state.lock().map(|s| s.is_settled()).unwrap_or(true);
                    if settled || tokio::time::Instant::now() >= deadline {
                        break;
                    }
                    tokio::select! {
                        _ = shared.changed.notified() => {}
                        _ = tokio::time::sleep_until(deadline) => {}
                        _ = stop.cancelled() => break,
                    }
                }
            } else {
                // Changes that follow each other closely (a probe result, then a
                // restart) become one write.
                tokio::time::sleep(STATUS_COALESCE).await;
            }
        }
        let mut status = match shared.state.lock() {
            Ok(s) => s.to_status(shared.policy, Utc::now()),
            Err(_) => return,
        };
        if let Some(conds) = status["conditions"].as_array_mut() {
            for c in conds {
                let type_ = c["type"].as_str().unwrap_or_default().to_string();
                let st = c["status"].as_str().unwrap_or_default().to_string();
                match transitions.get(&type_) {
                    Some((old, t)) if *old == st => c["lastTransitionTime"] = t.clone(),
                    _ => {
                        transitions.insert(type_, (st, c["lastTransitionTime"].clone()));
                    }
                }
            }
        }
        if last.as_ref() != Some(&status) {
            let patch = serde_json::json!({"status": status});
            match patch_status(&shared.ctx.client, &api, &name, &patch).await {
                Ok(_) => {
                    last = Some(status);
                    backoff = Backoff::new();
                }
                Err(kube::Error::Api(e)) if e.code == 404 => return,
                Err(e) => {
                    tracing::warn!(namespace = %ns, pod = %name, error = %e, "writing the pod status");
                    // Try again: the state is re-read then.
                    shared.changed.notify_one();
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_short()) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        }
        if stopping {
            return;
        }
    }
}

/// A merge patch of the pod's status. The reply (the whole pod) is not decoded: the
/// agent learns of the pod's changes from its watch, and decoding a pod per status
/// write is a noticeable share of a pod start's CPU.
async fn patch_status(
    client: &kube::Client,
    api: &Api<Pod>,
    name: &str,
    patch: &Value,
) -> Result<(), kube::Error> {
    let request = kube::core::Request::new(api.resource_url())
        .patch_subresource(
            "status",
            name,
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .map_err(kube::Error::BuildRequest)?;
    client.request_text(request).await.map(drop)
}

/// Back-off for retries: 10 s doubling to 5 min.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            next: BACKOFF_INITIAL,
        }
    }

    fn next(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        d
    }

    /// For API write retries: 100 ms doubling to 5 s.
    fn next_short(&mut self) -> Duration {
        self.next(); // keep the doubling
        (self.next / 100).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{}m0s", s / 60)
    } else if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn pod_ref(pod: &Pod) -> String {
    format!(
        "{}_{}({})",
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.uid.as_deref().unwrap_or_default()
    )
}

/// A memory quantity in bytes (`64Mi`, `1G`, `1000000`).
fn parse_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "m" => 1e-3,
        _ => return None,
    };
    Some((n * mult).ceil() as u64)
}

/// The annotation that widens where a pod may connect: `any`, or a comma-separated list
/// of CIDRs allowed besides the cluster's ranges.
pub const EGRESS_ANNOTATION: &str = "network.wasmkube.io/egress";

/// Where a pod's sockets may go: the cluster's ranges (`base`), anything for a
/// `hostNetwork` pod, plus what its egress annotation adds.
fn pod_egress(pod: &Pod, base: &Arc<[ipnet::IpNet]>) -> Egress {
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let extra = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(EGRESS_ANNOTATION))
        .map(|v| v.trim())
        .filter(|v| !v.is_empty());
    if host_network || extra == Some("any") {
        return Egress::Any;
    }
    let Some(extra) = extra else {
        return Egress::Only(base.clone());
    };
    let mut nets: Vec<ipnet::IpNet> = base.to_vec();
    for item in extra.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let parsed = item
            .parse::<ipnet::IpNet>()
            .or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => nets.push(net),
            Err(_) => tracing::warn!(
                namespace = pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod = pod.metadata.name.as_deref().unwrap_or_default(),
                value = item,
                "ignoring an entry of the egress annotation that is not a CIDR or address"
            ),
        }
    }
    Egress::Only(nets.into())
}

/// A CPU quantity in millicores (`500m`, `2`, `0.5`).
fn parse_millicores(q: &str) -> Option<u64> {
    let q = q.trim();
    let millis = match q.strip_suffix('m') {
        Some(m) => m.parse::<f64>().ok()?,
        None => q.parse::<f64>().ok()? * 1000.0,
    };
    (millis.is_finite() && millis > 0.0).then(|| millis.ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_is_the_cluster_ranges_unless_the_pod_says_more() {
        let base: Arc<[ipnet::IpNet]> = Arc::from(vec!["127.128.0.0/10".parse().unwrap()]);
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": []}
        }))
        .unwrap();
        let e = pod_egress(&pod, &base);
        assert!(e.permits("127.128.9.9".parse().unwrap()));
        assert!(!e.permits("127.0.0.1".parse().unwrap()));
        pod.metadata.annotations = Some(
            [(
                EGRESS_ANNOTATION.to_string(),
                "10.0.0.0/8, 192.168.1.5, junk".to_string(),
            )]
            .into(),
        );
        let e = pod_egress(&pod, &base);
        assert!(e.permits("10.9.9.9".parse().unwrap()));
        assert!(e.permits("192.168.1.5".parse().unwrap()));
        assert!(!e.permits("192.168.1.6".parse().unwrap()));
        pod.metadata.annotations =
            Some([(EGRESS_ANNOTATION.to_string(), "any".to_string())].into());
        assert_eq!(pod_egress(&pod, &base), Egress::Any);
    }

    #[test]
    fn cpu_quantities_parse_to_millicores() {
        assert_eq!(parse_millicores("500m"), Some(500));
        assert_eq!(parse_millicores("2"), Some(2000));
        assert_eq!(parse_millicores("0.25"), Some(250));
        assert_eq!(parse_millicores("0"), None);
        assert_eq!(parse_millicores("fast"), None);
    }

    #[test]
    fn back_off_doubles_to_five_minutes() {
        let mut b = Backoff::new();
        let seq: Vec<u64> = (0..7).map(|_| b.next().as_secs()).collect();
        assert_eq!(seq, vec![10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(human(Duration::from_secs(300)), "5m0s");
        assert_eq!(human(Duration::from_secs(20)), "20s");
    }

    #[test]
    fn empty_dir_limits_are_size_limits_or_the_pods_memory_limit() {
        let pod = |containers: Value, init: Value| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p"},
                "spec": {
                    "containers": containers,
                    "initContainers": init,
                    "volumes": [
                        {"name": "sized", "emptyDir": {"sizeLimit": "1Mi"}},
                        {"name": "plain", "emptyDir": {}},
                        {"name": "ram", "emptyDir": {"medium": "Memory"}},
                        {"name": "cfg", "configMap": {"name": "c"}},
                    ],
                },
            }))
            .unwrap()
        };
        let limited =
            |mem: &str| serde_json::json!({"name": mem, "resources": {"limits": {"memory": mem}}});
        let got = empty_dir_limits(&pod(
            serde_json::json!([limited("48Mi"), limited("16Mi")]),
            serde_json::json!([limited("32Mi")]),
        ));
        let shown: Vec<(&str, u64, &str)> = got
            .iter()
            .map(|l| (l.volume.as_str(), l.bytes, l.shown.as_str()))
            .collect();
        assert_eq!(
            shown,
            vec![("sized", 1 << 20, "1Mi"), ("ram", 64 << 20, "64Mi")],
            "the containers' sum beats the init container's"
        );
        let got = empty_dir_limits(&pod(
            serde_json::json!([limited("16Mi")]),
            serde_json::json!([limited("100Mi")]),
        ));
        assert_eq!(
            got[1].shown, "100Mi",
            "a bigger init container's limit wins"
        );
        let got = empty_dir_limits(&pod(
            serde_json::json!([limited("16Mi"), {"name": "free"}]),
            serde_json::json!([]),
        ));
        assert_eq!(
            got.len(),
            1,
            "a container without a limit leaves the tmpfs unbounded"
        );
        assert_eq!(format_bytes(1536 * 1024), "1536Ki");
        let storage = |containers: Value, init: Value| -> Option<u64> {
            let pod: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p"},
                "spec": {"containers": containers, "initContainers": init},
            }))
            .unwrap();
            ephemeral_storage_limit(&pod)
        };
        let disk = |q: &str| serde_json::json!({"name": q, "resources": {"limits": {"ephemeral-storage": q}}});
        assert_eq!(
            storage(
                serde_json::json!([disk("1Mi"), disk("2Mi")]),
                serde_json::json!([])
            ),
            Some(3 << 20)
        );
        assert_eq!(
            storage(
                serde_json::json!([disk("1Mi")]),
                serde_json::json!([disk("8Mi")])
            ),
            Some(8 << 20)
        );
        assert_eq!(
            storage(serde_json::json!([{"name": "free"}]), serde_json::json!([])),
            None
        );
        assert_eq!(format_bytes(1000), "1000");
        assert_eq!(format_bytes(2 << 30), "2Gi");
    }

    #[test]
    fn memory_quantities_parse_to_bytes() {
        assert_eq!(parse_bytes("64Mi"), Some(64 << 20));
        assert_eq!(parse_bytes("1G"), Some(1_000_000_000));
        assert_eq!(parse_bytes("1500"), Some(1500));
        assert_eq!(parse_bytes("lots"), None);
    }

    #[test]
    fn module_names_come_from_images() {
        for (image, want) in [
            ("file:///opt/m/http-echo.wasm", "http-echo"),
            ("https://h:8443/x/hello.wasm@sha256:abcd", "hello"),
            ("127.0.0.1:5000/samples/hello:v1", "hello"),
            ("127.0.0.1:5000/samples/hello@sha256:abcd", "hello"),
            ("ghcr.io/org/app", "app"),
            ("", "fallback"),
        ] {
            assert_eq!(module_name(image, "fallback"), want, "{image}");
        }
    }

    #[test]
    fn argv_is_command_then_args_with_expansion() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "app", "args": ["--name", "$(WHO)"]
        }))
        .unwrap();
        let env = vec![("WHO".to_string(), "world".to_string())];
        assert_eq!(argv(&c, &env), vec!["app", "--name", "world"]);
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "echo", "image": "file:///opt/m/http-echo.wasm", "args": ["-v"]
        }))
        .unwrap();
        assert_eq!(argv(&c, &env), vec!["http-echo", "-v"]);
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "app", "command": ["tool", "x"], "args": ["y"]
        }))
        .unwrap();
        assert_eq!(argv(&c, &env), vec!["tool", "x", "y"]);
    }
}
