//! The pods bound to this node: one watch (field selector `spec.nodeName`), one worker
//! per pod.
//!
//! The manager hands each worker the latest version of its pod; the worker does the
//! rest (see [`super::worker`]). A pod that disappears from the API (force-deleted, or
//! deleted while the agent was away) has its worker cancelled, which stops its
//! instances and removes its files. On every (re)list, pod directories of pods that no
//! longer exist are removed, so an agent restart never leaves an orphan behind.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::events::Recorder;
use crate::fetch::ModuleStore;
use crate::logs::LogStore;
use crate::wasm::WasmEngine;

/// What every pod worker shares.
pub struct Context {
    pub client: Client,
    pub node_name: String,
    pub node_ip: IpAddr,
    pub engine: WasmEngine,
    pub modules: Arc<ModuleStore>,
    pub logs: Arc<LogStore>,
    /// ConfigMaps, Secrets and tokens for volumes and environments.
    pub objects: super::objects::CachedSource,
    pub recorder: Arc<Recorder>,
    /// `pods/<uid>/` per pod.
    pub pods_dir: PathBuf,
    /// `<uid>/` per pod for its memory-backed volumes, if they are not on disk (see
    /// [`super::memory_dir`]).
    pub memory_pods_dir: Option<PathBuf>,
    /// The running containers' sandboxes, for exec, probes and port-forward.
    pub sandboxes: Arc<super::sandbox::Sandboxes>,
    /// Where pods' sockets may go: the cluster's pod and service ranges.
    pub pod_egress: Arc<[ipnet::IpNet]>,
    /// The cluster's Services, for the containers' Service variables.
    pub services: super::services::Services,
    /// The cluster's names, which pods' lookups try first.
    pub names: super::dns::ClusterNames,
}

struct Worker {
    pod: watch::Sender<Pod>,
    /// Cancelled when the pod is gone from the API.
    gone: CancellationToken,
    task: JoinHandle<()>,
}

/// Watches this node's pods and keeps one worker per pod until `stop`.
pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node_name));
    let mut stream = watcher(api, config).boxed();
    // Pod IPs, set up when the first worker needs one.
    let pod_net = Arc::new(super::podnet::NodePodNet::new());
    let mut workers: HashMap<String, Worker> = HashMap::new();
    // uids seen during the current (re)list, to find pods deleted meanwhile.
    let mut listing: Option<HashSet<String>> = None;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            e = stream.next() => e,
        };
        let Some(event) = event else { break };
        match event {
            Ok(watcher::Event::Init) => listing = Some(HashSet::new()),
            Ok(watcher::Event::InitApply(pod)) => {
                if let (Some(uids), Some(uid)) = (listing.as_mut(), pod.metadata.uid.clone()) {
                    uids.insert(uid);
                }
                apply(&ctx, &pod_net, &mut workers, pod, &stop);
            }
            Ok(watcher::Event::InitDone) => {
                let live = listing.take().unwrap_or_default();
                let stale: Vec<String> = workers
                    .keys()
                    .filter(|uid| !live.contains(*uid))
                    .cloned()
                    .collect();
                for uid in stale {
                    if let Some(w) = workers.remove(&uid) {
                        w.gone.cancel();
                    }
                }
                remove_orphan_dirs(&ctx, &live);
            }
            Ok(watcher::Event::Apply(pod)) => apply(&ctx, &pod_net, &mut workers, pod, &stop),
            Ok(watcher::Event::Delete(pod)) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    if let Some(w) = workers.remove(uid) {
                        w.gone.cancel();
                    }
                    ctx.recorder.forget(uid);
                }
            }
            Err(e) => {
                tracing::warn!(node = %ctx.node_name, error = %e, "watching this node's pods")
            }
        }
        workers.retain(|_, w| !w.task.is_finished());
    }
    // Shutting down: stop every instance (the pods stay; a new agent runs them again).
    let handles: Vec<JoinHandle<()>> = workers.into_values().map(|w| w.task).collect();
    for h in handles {
        let _ = h.await;
    }
}

fn apply(
    ctx: &Arc<Context>,
    pod_net: &Arc<super::podnet::NodePodNet>,
    workers: &mut HashMap<String, Worker>,
    pod: Pod,
    stop: &CancellationToken,
) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    if let Some(w) = workers.get(&uid) {
        if !w.task.is_finished() {
            w.pod.send_replace(pod);
            return;
        }
    }
    let (tx, rx) = watch::channel(pod);
    let gone = CancellationToken::new();
    let task = tokio::spawn(super::worker::run(
        ctx.clone(),
        pod_net.clone(),
        rx,
        gone.clone(),
        stop.clone(),
    ));
    workers.insert(
        uid,
        Worker {
            pod: tx,
            gone,
            task,
        },
    );
}

/// Removes the files (`pods/<uid>`, memory-backed volumes and logs) of pods that no
/// longer exist.
fn remove_orphan_dirs(ctx: &Context, live: &HashSet<String>) {
    for root in std::iter::once(&ctx.pods_dir).chain(&ctx.memory_pods_dir) {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        for entry in entries.flatten() {
            let uid = entry.file_name().to_string_lossy().into_owned();
            if live.contains(&uid) {
                continue;
            }
            tracing::info!(uid = %uid, dir = %entry.path().display(), "removing the files of a pod that no longer exists");
            if let Err(e) = crate::volumes::remove_pod_dir(&entry.path()) {
                tracing::warn!(uid = %uid, error = %e, "removing an orphaned pod directory");
            }
        }
    }
    for uid in ctx.logs.pod_uids().unwrap_or_default() {
        if live.contains(&uid) {
            continue;
        }
        if let Err(e) = ctx.logs.remove_pod(&uid) {
            tracing::warn!(uid = %uid, error = %e, "removing the logs of a pod that no longer exists");
        }
    }
}
