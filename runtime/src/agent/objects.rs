//! The ConfigMaps, Secrets and tokens pods read, through a short-lived cache.
//!
//! Every pod's kube-access volume projects the namespace's `kube-root-ca.crt`, and
//! configMap/secret volumes are re-projected periodically: without a cache a burst of
//! pods, or hundreds of running ones, each read the same objects again. Reads of one
//! object within [`TTL`] share one request (concurrent callers wait for the first), so
//! an update reaches pods at most `TTL` later than it would otherwise. Errors are not
//! cached. Tokens are bound to their pod and are never shared.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use tokio::sync::OnceCell;

use crate::volumes::{IssuedToken, ObjectSource, SourceError, TokenSpec};

/// How long a read object is reused.
pub const TTL: Duration = Duration::from_secs(2);

type Slot<T> = Arc<OnceCell<Option<T>>>;
/// (namespace, name).
type Key = (String, String);

/// One kind's cache: (namespace, name) → (when the slot was made, the slot).
struct Cache<T> {
    entries: Mutex<HashMap<Key, (Instant, Slot<T>)>>,
}

impl<T: Clone> Cache<T> {
    fn new() -> Self {
        Cache {
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, namespace: &str, name: &str) -> Slot<T> {
        let mut entries = match self.entries.lock() {
            Ok(e) => e,
            Err(p) => p.into_inner(),
        };
        let now = Instant::now();
        if entries.len() > 4096 {
            entries.retain(|_, (made, _)| now.duration_since(*made) < TTL);
        }
        let key = (namespace.to_string(), name.to_string());
        match entries.get(&key) {
            Some((made, slot)) if now.duration_since(*made) < TTL => slot.clone(),
            _ => {
                let slot: Slot<T> = Arc::new(OnceCell::new());
                entries.insert(key, (now, slot.clone()));
                slot
            }
        }
    }

    async fn get<F, Fut>(
        &self,
        namespace: &str,
        name: &str,
        fetch: F,
    ) -> Result<Option<T>, SourceError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, SourceError>>,
    {
        let slot = self.slot(namespace, name);
        slot.get_or_try_init(fetch).await.cloned()
    }
}

/// An [`ObjectSource`] over the API with a short cache.
pub struct CachedSource {
    client: kube::Client,
    config_maps: Cache<ConfigMap>,
    secrets: Cache<Secret>,
}

impl CachedSource {
    pub fn new(client: kube::Client) -> CachedSource {
        CachedSource {
            client,
            config_maps: Cache::new(),
            secrets: Cache::new(),
        }
    }
}

impl ObjectSource for CachedSource {
    async fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ConfigMap>, SourceError> {
        self.config_maps
            .get(namespace, name, || self.client.config_map(namespace, name))
            .await
    }

    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, SourceError> {
        self.secrets
            .get(namespace, name, || self.client.secret(namespace, name))
            .await
    }

    async fn service_account_token(&self, spec: &TokenSpec) -> Result<IssuedToken, SourceError> {
        self.client.service_account_token(spec).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_reads_share_one_fetch_and_errors_are_retried() {
        let cache: Arc<Cache<String>> = Arc::new(Cache::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let cache = cache.clone();
            let calls = calls.clone();
            tasks.push(tokio::spawn(async move {
                cache
                    .get("ns", "cm", || async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        Ok(Some("v".to_string()))
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), Some("v".to_string()));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let failed = cache
            .get("ns", "other", || async {
                Err(SourceError::Other("boom".into()))
            })
            .await;
        assert!(failed.is_err());
        let retried = cache
            .get("ns", "other", || async { Ok(Some("ok".to_string())) })
            .await
            .unwrap();
        assert_eq!(retried, Some("ok".to_string()));
    }
}
