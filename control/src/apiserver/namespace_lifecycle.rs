//! Namespace lifecycle admission: objects may only be created in a namespace that exists
//! and is not terminating.
//!
//! Every namespaced create asks this question, so it is answered from memory: a task
//! keeps a map of namespaces (name → terminating?) from the namespaces' watch cache. A
//! namespace the map does not know yet (created a moment ago) is looked up in etcd, as
//! Kubernetes' NamespaceLifecycle admission falls back to a live lookup. The map may lag
//! the store by the watch's latency, which is the same window Kubernetes accepts.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use crate::registry::ResourceDef;
use crate::storage::{EventKind, ListOptions, Store, WatchCache};

/// What the map knows about one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceState {
    Active,
    Terminating,
}

/// The in-memory view of namespaces.
#[derive(Default)]
pub struct NamespaceLifecycle {
    /// `None` until the first full list has been loaded.
    known: RwLock<Option<HashMap<String, NamespaceState>>>,
}

fn state_of(obj: &Value) -> NamespaceState {
    if obj
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        NamespaceState::Terminating
    } else {
        NamespaceState::Active
    }
}

fn name_of(key: &str, prefix: &str) -> String {
    key.strip_prefix(prefix).unwrap_or(key).to_string()
}

impl NamespaceLifecycle {
    /// What the map says about `ns`; `None` when it does not know (not synced yet, or
    /// not seen yet) and the caller must ask etcd.
    pub fn lookup(&self, ns: &str) -> Option<NamespaceState> {
        let known = self.known.read().unwrap_or_else(|e| e.into_inner());
        known.as_ref().and_then(|m| m.get(ns).copied())
    }

    /// Keeps the map in step with the store until the process ends: list, then follow
    /// the watch; start over when the watch ends or fails.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        cache: Arc<WatchCache>,
        def: Arc<ResourceDef>,
    ) {
        let prefix = def.key_prefix();
        loop {
            if let Err(e) = self.sync_once(&store, &cache, &prefix).await {
                tracing::debug!(error = %e, "namespace cache resyncing");
            }
            *self.known.write().unwrap_or_else(|e| e.into_inner()) = None;
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
        let mut map = HashMap::new();
        for kv in &list.kvs {
            if let Ok(obj) = serde_json::from_slice::<Value>(&kv.value) {
                map.insert(name_of(&kv.key, prefix), state_of(&obj));
            }
        }
        let mut events = cache.subscribe(list.revision, prefix).await?;
        *self.known.write().unwrap_or_else(|e| e.into_inner()) = Some(map);
        while let Some(ev) = events.next().await {
            let ev = ev?;
            let name = name_of(&ev.key, prefix);
            let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
            let Some(map) = known.as_mut() else {
                return Ok(());
            };
            match ev.kind {
                EventKind::Deleted => {
                    map.remove(&name);
                }
                EventKind::Created | EventKind::Updated => {
                    if let Ok(obj) = serde_json::from_slice::<Value>(&ev.value) {
                        map.insert(name, state_of(&obj));
                    }
                }
            }
        }
        Ok(())
    }
}
