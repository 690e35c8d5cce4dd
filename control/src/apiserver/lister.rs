//! An in-memory copy of one resource's objects, kept from its watch cache: what
//! kube-apiserver's admission plugins and authenticators read through informer listers.
//!
//! Used for ServiceAccounts, which every pod create (admission) and every request with a
//! ServiceAccount token (authentication) looks up: answering from memory keeps both off
//! etcd. The copy may lag the store by the watch's latency, so a miss is not proof of
//! absence: callers fall back to a live read, as Kubernetes' listers-with-client do.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use crate::storage::{EventKind, ListOptions, Store, WatchCache};

/// What the copy knows about one key.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The object, as last seen (without resourceVersion).
    Found(Arc<Value>),
    /// Not in the copy: absent, or created too recently to have arrived yet.
    Missing,
    /// The copy is not loaded (starting, or resyncing after a failed watch).
    Unsynced,
}

/// The objects under one etcd key prefix, by key.
#[derive(Default)]
pub struct Lister {
    /// `None` until the first full list has been loaded.
    objects: RwLock<Option<HashMap<String, Arc<Value>>>>,
}

impl Lister {
    /// An empty, unsynced copy; [`Lister::run`] fills it.
    pub fn new() -> Self {
        Self::default()
    }

    /// The object stored at etcd key `key`, as far as the copy knows.
    pub fn lookup(&self, key: &str) -> Lookup {
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        match objects.as_ref() {
            None => Lookup::Unsynced,
            Some(map) => map
                .get(key)
                .map_or(Lookup::Missing, |o| Lookup::Found(o.clone())),
        }
    }

    /// Keeps the copy in step with the keys under `prefix` until the process ends: list,
    /// then follow the watch cache; start over when the watch ends or fails.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        cache: Arc<WatchCache>,
        prefix: String,
    ) {
        loop {
            if let Err(e) = self.sync_once(&store, &cache, &prefix).await {
                tracing::debug!(%prefix, error = %e, "lister resyncing");
            }
            *self.objects.write().unwrap_or_else(|e| e.into_inner()) = None;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn sync_once(
        &self,
        store: &Arc<dyn Store>,
        cache: &Arc<WatchCache>,
        prefix: &str,
    ) -> Result<(), crate::storage::Error> {
        let list = store.list(prefix, &ListOptions::default()).await?;
        let mut map = HashMap::with_capacity(list.kvs.len());
        for kv in &list.kvs {
            if let Ok(obj) = serde_json::from_slice::<Value>(&kv.value) {
                map.insert(kv.key.clone(), Arc::new(obj));
            }
        }
        let mut events = cache.subscribe(list.revision, prefix).await?;
        *self.objects.write().unwrap_or_else(|e| e.into_inner()) = Some(map);
        while let Some(ev) = events.next().await {
            let ev = ev?;
            let decoded = match ev.kind {
                EventKind::Deleted => None,
                EventKind::Created | EventKind::Updated => {
                    serde_json::from_slice::<Value>(&ev.value).ok()
                }
            };
            let mut objects = self.objects.write().unwrap_or_else(|e| e.into_inner());
            let Some(map) = objects.as_mut() else {
                return Ok(());
            };
            match decoded {
                Some(obj) => map.insert(ev.key, Arc::new(obj)),
                None => map.remove(&ev.key),
            };
        }
        Ok(())
    }
}
