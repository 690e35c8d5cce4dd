//! The scheduler's writes: binding a pod to its node (`pods/binding`), and telling an
//! unschedulable pod why (condition PodScheduled=False/Unschedulable and a
//! FailedScheduling Event).

use chrono::{SecondsFormat, Utc};
use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};

use super::event_queue::EventQueue;
use crate::controllers::events::{reference, EventType};

/// The field manager of the scheduler's status patches.
const FIELD_MANAGER: &str = "default-scheduler";

/// Why a binding failed.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The pod is gone, already bound or being deleted: nothing left to do.
    #[error("pod cannot be bound any more: {0}")]
    Moot(#[source] kube::Error),
    /// Anything else; the pod is retried.
    #[error("binding failed: {0}")]
    Failed(#[source] kube::Error),
}

/// POSTs a v1 Binding of the pod to `node`.
pub async fn bind(client: &kube::Client, pod: &Pod, node: &str) -> Result<(), BindError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".to_string()),
            kind: Some("Node".to_string()),
            name: Some(node.to_string()),
            ..Default::default()
        },
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    match api
        .create_subresource::<_, serde_json::Value>(
            "binding",
            name,
            &PostParams::default(),
            &binding,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {
            Err(BindError::Moot(kube::Error::Api(status)))
        }
        Err(e) => Err(BindError::Failed(e)),
    }
}

/// Queues the `Scheduled` event of a bound pod.
pub fn record_scheduled(events: &EventQueue, pod: &Pod, node: &str) {
    let message = format!(
        "Successfully assigned {}/{} to {node}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default()
    );
    events.record(reference(pod), EventType::Normal, "Scheduled", message);
}

/// Sets PodScheduled=False/Unschedulable with `message` (unless the pod already says
/// so) and queues a FailedScheduling warning.
pub async fn report_unschedulable(
    client: &kube::Client,
    events: &EventQueue,
    pod: &Pod,
    message: &str,
) {
    let already = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
                && c.message.as_deref() == Some(message)
        });
    if !already {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
        // Strategic merge: conditions merge by `type`, so other conditions stay.
        let patch = serde_json::json!({
            "status": {"conditions": [{
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
                "lastProbeTime": null,
                "lastTransitionTime": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
            }]}
        });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..Default::default()
        };
        if let Err(e) = api
            .patch_status(name, &params, &Patch::Strategic(&patch))
            .await
        {
            tracing::warn!(namespace, pod = name, error = %e, "setting PodScheduled=False failed");
        }
    }
    events.record(
        reference(pod),
        EventType::Warning,
        "FailedScheduling",
        message.to_string(),
    );
}
