//! Events the agent records on pods (Pulling, Pulled, Created, Started, Killing,
//! BackOff, Failed …), as the kubelet does: source component `kubelet`, the node as
//! host, and repeats of one event folded into its `count`.
//!
//! Like the kubelet's event broadcaster, which writes through one sink, the agent writes
//! only a few events at a time ([`MAX_IN_FLIGHT`]): in a burst of pod starts the Events
//! (three per pod) queue behind each other instead of competing with the status writes
//! that make pods Running. Timestamps are taken when the event happens, not when it is
//! written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{SecondsFormat, Utc};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Folding cache entries beyond this are forgotten (the next repeat starts a new event).
const MAX_REMEMBERED: usize = 4096;

/// Event writes in flight at once.
pub const MAX_IN_FLIGHT: usize = 2;
/// Events waiting to be written beyond this are dropped (and logged), as the kubelet's
/// broadcaster drops them when its queue is full: Events must never hold up the node.
pub const MAX_QUEUED: usize = 4096;

/// What identifies a repeat: (namespace, uid, fieldPath, reason, message).
type EventKey = (String, String, String, String, String);

/// The object an event is about: a pod, or one of its containers.
struct Involved {
    namespace: String,
    name: String,
    uid: String,
    resource_version: Option<String>,
    /// `spec.containers{NAME}` or `spec.initContainers{NAME}`; empty for the pod.
    field_path: String,
}

impl Involved {
    fn of(pod: &Pod, container: Option<&str>) -> Involved {
        let field_path = container
            .map(|c| {
                let init = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.init_containers.as_ref())
                    .is_some_and(|ics| ics.iter().any(|i| i.name == c));
                if init {
                    format!("spec.initContainers{{{c}}}")
                } else {
                    format!("spec.containers{{{c}}}")
                }
            })
            .unwrap_or_default();
        let meta = &pod.metadata;
        Involved {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            resource_version: meta.resource_version.clone(),
            field_path,
        }
    }
}

/// Records Events; cheap to share.
pub struct Recorder {
    client: Client,
    node: String,
    /// Each event recorded → (its name, its count).
    seen: Mutex<HashMap<EventKey, (String, i32)>>,
    /// Bounds the event writes in flight.
    writers: Arc<tokio::sync::Semaphore>,
    /// Events recorded but not written yet.
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

impl Recorder {
    pub fn new(client: Client, node: &str) -> Recorder {
        Recorder {
            client,
            node: node.to_string(),
            seen: Mutex::new(HashMap::new()),
            writers: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
            queued: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        }
    }

    /// Records an event about `pod` (and, with `container`, about that container) in the
    /// background, as the kubelet's event broadcaster does: a pod's start does not wait
    /// for its events. A failure to record is logged, never returned.
    pub fn pod(
        self: &Arc<Self>,
        pod: &Pod,
        container: Option<&str>,
        kind: EventType,
        reason: &str,
        message: &str,
    ) {
        use std::sync::atomic::Ordering;
        if self.queued.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            tracing::debug!(
                namespace = pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod = pod.metadata.name.as_deref().unwrap_or_default(),
                reason,
                "event dropped: too many events waiting to be written"
            );
            return;
        }
        let this = self.clone();
        let at = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
        // Only the reference is kept, not the pod: three events per pod start would
        // otherwise copy the whole object (managed fields and all) three times.
        let about = Involved::of(pod, container);
        let (reason, message) = (reason.to_string(), message.to_string());
        tokio::spawn(async move {
            if let Ok(_permit) = this.writers.clone().acquire_owned().await {
                this.record(about, kind, &reason, &message, &at).await;
            }
            this.queued.fetch_sub(1, Ordering::Relaxed);
        });
    }

    async fn record(
        &self,
        about: Involved,
        kind: EventType,
        reason: &str,
        message: &str,
        now: &str,
    ) {
        let Involved {
            namespace: ns,
            name,
            uid,
            resource_version,
            field_path,
        } = about;
        let key = (
            ns.clone(),
            uid.clone(),
            field_path.clone(),
            reason.to_string(),
            message.to_string(),
        );
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let repeat = self.seen.lock().ok().and_then(|mut seen| {
            let entry = seen.get_mut(&key)?;
            entry.1 += 1;
            Some(entry.clone())
        });
        if let Some((event_name, count)) = repeat {
            let patch = json!({"count": count, "lastTimestamp": now});
            match api
                .patch(&event_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return,
                // The event expired or was deleted: record it anew.
                Err(e) => {
                    tracing::debug!(error = %e, event = %event_name, "event repeat not recorded")
                }
            }
        }
        let event_name = format!(
            "{name}.{:x}",
            Utc::now().timestamp_nanos_opt().unwrap_or_default()
        );
        let mut involved = json!({
            "kind": "Pod", "apiVersion": "v1", "namespace": ns, "name": name, "uid": uid,
            "resourceVersion": resource_version,
        });
        if !field_path.is_empty() {
            involved["fieldPath"] = json!(field_path);
        }
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": event_name, "namespace": ns},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": kind.as_str(),
            "source": {"component": "kubelet", "host": self.node},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        let event: Event = match serde_json::from_value(event) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "building an event");
                return;
            }
        };
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => {
                if let Ok(mut seen) = self.seen.lock() {
                    if seen.len() >= MAX_REMEMBERED {
                        seen.clear();
                    }
                    seen.insert(key, (event_name, 1));
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, namespace = %ns, pod = %name, reason, "event not recorded")
            }
        }
    }

    /// Forgets the folding state of a pod that is gone.
    pub fn forget(&self, uid: &str) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.retain(|k, _| k.1 != uid);
        }
    }
}
