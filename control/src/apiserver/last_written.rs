//! The last version of recently written objects, as the first guess of an update.
//!
//! Every update is a read-modify-write: read the object, apply the change, write it back
//! on condition that nobody wrote in between (its mod_revision). Most updates touch an
//! object this server wrote moments ago — the scheduler binds the pod a client just
//! created, the node agent patches the status of the pod the scheduler just bound — so
//! the read can usually start from what was written instead of asking etcd, as
//! Kubernetes' storage layer does with its cached existing object. The guess is only
//! ever a guess: the conditional write fails if it is stale (another API server wrote,
//! or a write here raced), and the update then reads etcd and tries again.
//!
//! Bounded: past [`CAPACITY`] keys, the older half is forgotten.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::storage::KeyValue;

/// How many keys are remembered: the objects in flight in a burst of pod starts, with
/// room to spare, at ~2 KiB each.
pub const CAPACITY: usize = 4096;

/// Recently written objects by key.
#[derive(Default)]
pub struct LastWritten {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Key → (the stored value and revisions, the insertion sequence number).
    entries: HashMap<String, (KeyValue, u64)>,
    next_seq: u64,
}

impl LastWritten {
    /// What was last written at `key`, if still remembered.
    pub fn get(&self, key: &str) -> Option<KeyValue> {
        self.lock().entries.get(key).map(|(kv, _)| kv.clone())
    }

    /// Remembers a successful write. A write older than what is remembered (two writes
    /// of one key finishing out of order) leaves the newer one.
    pub fn put(&self, kv: KeyValue) {
        let mut inner = self.lock();
        if inner
            .entries
            .get(&kv.key)
            .is_some_and(|(known, _)| known.mod_revision >= kv.mod_revision)
        {
            return;
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.entries.insert(kv.key.clone(), (kv, seq));
        if inner.entries.len() > CAPACITY {
            // Amortised: one sweep per CAPACITY/2 inserts drops the older half.
            let cutoff = seq.saturating_sub(CAPACITY as u64 / 2);
            inner.entries.retain(|_, (_, s)| *s > cutoff);
        }
    }

    /// Forgets a key (the object was deleted, or the guess proved stale).
    pub fn forget(&self, key: &str) {
        self.lock().entries.remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn kv(key: &str, rev: i64) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: Bytes::from(format!("v{rev}")),
            create_revision: 1,
            mod_revision: rev,
        }
    }

    #[test]
    fn keeps_the_newest_write_and_forgets_on_request() {
        let lw = LastWritten::default();
        assert!(lw.get("/a").is_none());
        lw.put(kv("/a", 5));
        lw.put(kv("/a", 3));
        assert_eq!(lw.get("/a").map(|k| k.mod_revision), Some(5));
        lw.put(kv("/a", 7));
        assert_eq!(lw.get("/a").map(|k| k.value), Some(Bytes::from("v7")));
        lw.forget("/a");
        assert!(lw.get("/a").is_none());
    }

    #[test]
    fn stays_bounded_and_keeps_the_most_recent_keys() {
        let lw = LastWritten::default();
        for i in 0..CAPACITY * 3 {
            lw.put(kv(&format!("/k{i}"), i as i64 + 1));
        }
        assert!(lw.lock().entries.len() <= CAPACITY);
        let last = CAPACITY * 3 - 1;
        assert!(lw.get(&format!("/k{last}")).is_some());
        assert!(lw.get("/k0").is_none());
    }
}
