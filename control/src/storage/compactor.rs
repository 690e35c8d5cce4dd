//! Periodic compaction of etcd history.
//!
//! etcd keeps every revision until told otherwise, so without compaction its database
//! grows with every write. Each tick compacts up to the revision seen at the *previous*
//! tick, so at least one full interval of history always survives: a client that listed
//! less than an interval ago can still resume its watch from that list. Reads and watches
//! at a revision below the compaction get `Compacted` (410 Gone), and the client re-lists.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::Store;

/// Starts the compactor; it runs until the task is aborted. Failures are logged and the
/// next tick tries again.
pub fn spawn(store: Arc<dyn Store>, interval: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The revision seen at the previous tick: the next compaction target.
        let mut previous: Option<i64> = None;
        loop {
            ticker.tick().await;
            let current = match store.current_revision().await {
                Ok(rev) => rev,
                Err(e) => {
                    tracing::warn!(error = %e, "compactor cannot read the current revision");
                    continue;
                }
            };
            if let Some(target) = previous {
                if target > store.compacted_revision() {
                    match store.compact(target).await {
                        Ok(()) => {
                            tracing::info!(revision = target, current, "compacted etcd history")
                        }
                        Err(e) => {
                            tracing::warn!(revision = target, error = %e, "etcd compaction failed")
                        }
                    }
                }
            }
            previous = Some(current);
        }
    })
}
