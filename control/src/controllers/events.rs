//! Recording core/v1 Events about objects, deduplicated as Kubernetes' event recorder
//! does: the same reason and message about the same object bumps `count` and
//! `lastTimestamp` of the existing Event instead of creating another.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::Utc;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};

/// How many event series a recorder remembers for deduplication.
const MAX_SERIES: usize = 4096;

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// Identifies one deduplicated event series.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    namespace: String,
    uid: String,
    kind: String,
    name: String,
    event_type: EventType,
    reason: String,
    message: String,
}

/// Emits Events for one component (`scheduler`, `replicaset-controller`, …).
pub struct Recorder {
    client: kube::Client,
    component: String,
    /// Series seen so far → (event name, count), so repeats become count bumps.
    series: Mutex<HashMap<SeriesKey, (String, i32)>>,
}

impl Recorder {
    pub fn new(client: kube::Client, component: impl Into<String>) -> Self {
        Recorder {
            client,
            component: component.into(),
            series: Mutex::new(HashMap::new()),
        }
    }

    /// Records an event about `object`. Failures are logged, never returned: an event
    /// is a diagnostic and must not stop the work it describes.
    pub async fn record(
        &self,
        object: &ObjectReference,
        event_type: EventType,
        reason: &str,
        message: &str,
    ) {
        let namespace = object
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let key = SeriesKey {
            namespace: namespace.clone(),
            uid: object.uid.clone().unwrap_or_default(),
            kind: object.kind.clone().unwrap_or_default(),
            name: object.name.clone().unwrap_or_default(),
            event_type,
            reason: reason.to_string(),
            message: message.to_string(),
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let existing = {
            let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
            series.get(&key).cloned()
        };
        if let Some((name, count)) = existing {
            let patch = serde_json::json!({
                "count": count + 1,
                "lastTimestamp": now,
            });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
                    series.insert(key, (name, count + 1));
                    return;
                }
                // The event expired or was deleted: start a new series below.
                Err(e) => tracing::debug!(event = %name, error = %e, "event series restarts"),
            }
        }
        let base = object.name.clone().unwrap_or_else(|| "object".to_string());
        let name = format!("{base}.{:x}", Utc::now().timestamp_nanos_opt().unwrap_or(0));
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            involved_object: object.clone(),
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            type_: Some(event_type.as_str().to_string()),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: None,
            }),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.component.clone()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => {
                let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
                // Bounded memory: forgetting old series only costs a new Event object.
                if series.len() >= MAX_SERIES {
                    series.clear();
                }
                series.insert(key, (name, 1));
            }
            Err(e) => tracing::warn!(
                namespace = %namespace,
                object = object.name.as_deref().unwrap_or(""),
                reason,
                error = %e,
                "recording event failed"
            ),
        }
    }
}

/// An ObjectReference to a Kubernetes object, for events.
pub fn reference<K>(obj: &K) -> ObjectReference
where
    K: kube::Resource<DynamicType = ()>,
{
    obj.object_ref(&())
}
