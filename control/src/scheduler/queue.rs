//! The scheduling queue: pods waiting for a node, by uid. Active pods are tried in
//! arrival order; a pod no node fits waits as unschedulable until the cluster changes
//! in a way that might help (after a per-pod backoff) or, as a backstop, a few seconds
//! pass.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::time::Instant;

/// First wait before an unschedulable pod is retried on a cluster change; doubles per
/// failed attempt up to [`MAX_BACKOFF`] (upstream's podInitialBackoff/podMaxBackoff).
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Unschedulable pods are retried this often even when nothing seemed to change.
pub const BACKSTOP: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In `active`, waiting for its turn.
    Active,
    /// Taken by the scheduler (being placed or bound).
    InFlight,
    /// Tried; no node fit (or binding failed).
    Unschedulable,
}

#[derive(Debug)]
struct Entry {
    pod: Arc<Pod>,
    state: State,
    attempts: u32,
    last_attempt: Option<Instant>,
    /// The cluster generation when the last attempt started.
    seen_generation: u64,
    /// The last failure message reported on the pod, and when.
    reported: Option<(String, Instant)>,
}

/// Pods waiting for a node.
#[derive(Debug, Default)]
pub struct Queue {
    active: VecDeque<String>,
    entries: HashMap<String, Entry>,
    /// Bumped on every change that might make an unschedulable pod fit.
    generation: u64,
}

impl Queue {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Something changed (a node appeared or changed, resources were freed…).
    pub fn cluster_changed(&mut self) {
        self.generation += 1;
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A pending pod from the watch. New pods become active; a changed spec re-activates
    /// an unschedulable pod; status-only changes (our own condition) do not.
    pub fn upsert(&mut self, uid: &str, pod: Arc<Pod>) -> bool {
        match self.entries.get_mut(uid) {
            Some(entry) => {
                let respec = entry.pod.spec != pod.spec;
                entry.pod = pod;
                if respec && entry.state == State::Unschedulable {
                    entry.state = State::Active;
                    self.active.push_back(uid.to_string());
                    return true;
                }
                false
            }
            None => {
                self.entries.insert(
                    uid.to_string(),
                    Entry {
                        pod,
                        state: State::Active,
                        attempts: 0,
                        last_attempt: None,
                        seen_generation: 0,
                        reported: None,
                    },
                );
                self.active.push_back(uid.to_string());
                true
            }
        }
    }

    pub fn remove(&mut self, uid: &str) {
        // A stale uid left in `active` is skipped by `pop`.
        self.entries.remove(uid);
    }

    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.entries.retain(|uid, _| keep(uid));
    }

    /// The next active pod, now in flight, with the generation its attempt starts at.
    pub fn pop(&mut self) -> Option<(String, Arc<Pod>)> {
        while let Some(uid) = self.active.pop_front() {
            if let Some(entry) = self.entries.get_mut(&uid) {
                if entry.state == State::Active {
                    entry.state = State::InFlight;
                    entry.attempts += 1;
                    entry.last_attempt = Some(Instant::now());
                    entry.seen_generation = self.generation;
                    return Some((uid, entry.pod.clone()));
                }
            }
        }
        None
    }

    /// The latest version of an in-flight pod (the watch may have updated it).
    pub fn in_flight(&self, uid: &str) -> Option<Arc<Pod>> {
        self.entries
            .get(uid)
            .filter(|e| e.state == State::InFlight)
            .map(|e| e.pod.clone())
    }

    /// The attempt failed. Returns whether `message` should be reported on the pod (it
    /// is new, or the last report is a minute old), and notes the report.
    pub fn unschedulable(&mut self, uid: &str, message: &str) -> bool {
        let Some(entry) = self.entries.get_mut(uid) else {
            return false;
        };
        entry.state = State::Unschedulable;
        let now = Instant::now();
        let fresh = match &entry.reported {
            Some((last, at)) => {
                last != message || now.duration_since(*at) >= Duration::from_secs(60)
            }
            None => true,
        };
        if fresh {
            entry.reported = Some((message.to_string(), now));
        }
        fresh
    }

    /// Moves unschedulable pods back to active when the cluster changed since their
    /// attempt and their backoff passed, or when the backstop interval passed. Returns
    /// how many moved.
    pub fn reactivate_due(&mut self, now: Instant) -> usize {
        let mut moved = 0;
        for (uid, entry) in self.entries.iter_mut() {
            if entry.state != State::Unschedulable {
                continue;
            }
            let Some(last) = entry.last_attempt else {
                continue;
            };
            let since = now.saturating_duration_since(last);
            let backoff = INITIAL_BACKOFF
                .saturating_mul(1 << entry.attempts.saturating_sub(1).min(8))
                .min(MAX_BACKOFF);
            let changed = self.generation > entry.seen_generation;
            if (changed && since >= backoff) || since >= BACKSTOP {
                entry.state = State::Active;
                self.active.push_back(uid.clone());
                moved += 1;
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(image: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p"},
                "spec": {"containers": [{"name": "c", "image": image}]}
            }))
            .expect("a valid pod"),
        )
    }

    #[test]
    fn unschedulable_pods_return_on_change_after_backoff_or_backstop() {
        let mut q = Queue::default();
        assert!(q.upsert("u", pod("a")));
        let (uid, _) = q.pop().expect("active");
        let base = Instant::now();
        assert!(q.unschedulable(&uid, "0/1 nodes are available"));
        assert!(
            !q.unschedulable(&uid, "0/1 nodes are available"),
            "reported once"
        );
        assert!(q.pop().is_none());

        // A change within the backoff does not retry yet.
        q.cluster_changed();
        assert_eq!(q.reactivate_due(base), 0);
        assert_eq!(q.reactivate_due(base + INITIAL_BACKOFF), 1);
        // No change: only the backstop retries.
        let base = Instant::now();
        assert!(q.pop().is_some());
        q.unschedulable("u", "0/1 nodes are available");
        assert_eq!(
            q.reactivate_due(base + BACKSTOP - Duration::from_millis(1)),
            0
        );
        assert_eq!(q.reactivate_due(Instant::now() + BACKSTOP), 1);
    }

    #[test]
    fn spec_changes_reactivate_and_status_changes_do_not() {
        let mut q = Queue::default();
        q.upsert("u", pod("a"));
        q.pop();
        q.unschedulable("u", "m");
        assert!(!q.upsert("u", pod("a")));
        assert!(q.pop().is_none());
        assert!(q.upsert("u", pod("b")));
        assert!(q.pop().is_some());
        q.remove("u");
        assert_eq!(q.len(), 0);
    }
}
