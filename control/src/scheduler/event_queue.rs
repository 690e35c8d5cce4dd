//! The scheduler's Events, written off the scheduling path: a pod's binding never waits
//! for its `Scheduled` Event. As client-go's event broadcaster, the queue is bounded
//! ([`CAPACITY`]) and drops what does not fit. While the scheduler has bindings in
//! flight Events are written one at a time, [`WRITERS`] at a time otherwise, so a burst
//! of thousands of pods costs the API server bindings first and Events as it can afford
//! them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use tokio::sync::mpsc;

use crate::controllers::events::{EventType, Recorder};

/// Events waiting to be written (upstream's maxQueuedEvents).
const CAPACITY: usize = 1000;
/// Event writes in flight at once while the scheduler is not binding.
const WRITERS: usize = 4;

/// One Event to write.
struct Pending {
    object: ObjectReference,
    event_type: EventType,
    reason: &'static str,
    message: String,
}

/// The sending half; cheap to share.
pub struct EventQueue {
    tx: mpsc::Sender<Pending>,
    dropped: AtomicU64,
}

impl EventQueue {
    /// The queue, and the future that writes what it receives (runs until the queue is
    /// dropped; the caller drives it, so it stops with the scheduler). `busy` says
    /// whether the scheduler has writes of its own in flight.
    pub fn new(
        recorder: Arc<Recorder>,
        busy: impl Fn() -> bool + Send + 'static,
    ) -> (Arc<EventQueue>, impl std::future::Future<Output = ()>) {
        let (tx, mut rx) = mpsc::channel::<Pending>(CAPACITY);
        let writer = async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                if !busy() {
                    while batch.len() < WRITERS {
                        match rx.try_recv() {
                            Ok(p) => batch.push(p),
                            Err(_) => break,
                        }
                    }
                }
                futures::future::join_all(
                    batch
                        .iter()
                        .map(|p| recorder.record(&p.object, p.event_type, p.reason, &p.message)),
                )
                .await;
            }
        };
        let queue = Arc::new(EventQueue {
            tx,
            dropped: AtomicU64::new(0),
        });
        (queue, writer)
    }

    /// Queues an Event; drops it when the queue is full.
    pub fn record(
        &self,
        object: ObjectReference,
        event_type: EventType,
        reason: &'static str,
        message: String,
    ) {
        let pending = Pending {
            object,
            event_type,
            reason,
            message,
        };
        match self.tx.try_send(pending) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // One line per thousand, not one per Event, during a flood.
                if dropped % 1000 == 1 {
                    tracing::warn!(dropped, "event queue full; dropping scheduler events");
                }
            }
            // The scheduler stopped (lost its lease): nobody writes Events any more.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    #[cfg(test)]
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_drops_instead_of_waiting() {
        let client = kube::Client::try_from(kube::Config::new(
            "http://127.0.0.1:1".parse().expect("a valid url"),
        ))
        .expect("a client");
        let (queue, _writer) = EventQueue::new(Arc::new(Recorder::new(client, "test")), || false);
        // The writer is not driven: nothing drains the queue.
        for i in 0..CAPACITY + 5 {
            queue.record(
                ObjectReference::default(),
                EventType::Normal,
                "Scheduled",
                i.to_string(),
            );
        }
        assert_eq!(queue.dropped(), 5);
    }
}
