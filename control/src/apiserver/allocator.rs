//! ClusterIP and NodePort allocation for Services.
//!
//! Each allocated address or port is one etcd key (`/registry/ranges/serviceips/<ip>`,
//! `/registry/ranges/servicenodeports/<port>`) created with create-if-absent, so two API
//! servers, or two requests racing in one, can never hand out the same one: whoever
//! creates the key owns it until the Service is deleted. The value names the owning
//! Service, which lets [`ServiceAllocator::repair`] free what a crash between allocation
//! and the Service write left behind.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use bytes::Bytes;
use ipnet::Ipv4Net;
use rand::Rng;
use serde_json::{json, Value};

use crate::storage::{self, ListOptions, Store};

const IP_PREFIX: &str = "/registry/ranges/serviceips/";
const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";

/// Why an allocation failed.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    /// The requested address is outside the service CIDR.
    #[error("provided IP is not in the valid range. The range of valid IPs is {0}")]
    IpOutOfRange(Ipv4Net),
    /// The requested port is outside the NodePort range.
    #[error("provided port is not in the valid range. The range of valid ports is {0}-{1}")]
    PortOutOfRange(u16, u16),
    /// The requested address or port belongs to another Service.
    #[error("provided {0} is already allocated")]
    Taken(&'static str),
    /// Every address or port of the range is in use.
    #[error("range is full: no {0} left to allocate")]
    Full(&'static str),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] storage::Error),
}

/// Allocates ClusterIPs from the service CIDR and NodePorts from their range.
pub struct ServiceAllocator {
    store: Arc<dyn Store>,
    cidr: Ipv4Net,
    ports: (u16, u16),
}

/// The owner (`namespace/name`) that may have the range's first host.
pub const KUBERNETES_SERVICE: &str = "default/kubernetes";

impl ServiceAllocator {
    pub fn new(store: Arc<dyn Store>, cidr: Ipv4Net, ports: (u16, u16)) -> Self {
        ServiceAllocator { store, cidr, ports }
    }

    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// The usable addresses: the network address, the broadcast address and the first
    /// host (kept for the API server's own `kubernetes` Service, as Kubernetes does) are
    /// never handed out.
    fn ip_range(&self) -> (u32, u32) {
        let net = u32::from(self.cidr.network());
        let bcast = u32::from(self.cidr.broadcast());
        (net.saturating_add(2), bcast.saturating_sub(1))
    }

    async fn claim(&self, key: String, owner: &str) -> Result<bool, AllocError> {
        let value = json!({"owner": owner, "allocated": chrono::Utc::now().to_rfc3339()});
        match self
            .store
            .create(&key, Bytes::from(value.to_string()))
            .await
        {
            Ok(_) => Ok(true),
            Err(storage::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Allocates `requested` or, when `None`, any free ClusterIP for `owner` (`ns/name`).
    pub async fn allocate_ip(
        &self,
        requested: Option<Ipv4Addr>,
        owner: &str,
    ) -> Result<Ipv4Addr, AllocError> {
        let (lo, hi) = self.ip_range();
        if let Some(ip) = requested {
            let n = u32::from(ip);
            // The reserved first host is for the API server's own Service only.
            let lowest = if owner == KUBERNETES_SERVICE {
                lo - 1
            } else {
                lo
            };
            if !self.cidr.contains(&ip) || n < lowest || n > hi {
                return Err(AllocError::IpOutOfRange(self.cidr));
            }
            return if self.claim(format!("{IP_PREFIX}{ip}"), owner).await? {
                Ok(ip)
            } else {
                Err(AllocError::Taken("IP"))
            };
        }
        if hi < lo {
            return Err(AllocError::Full("IPs"));
        }
        // Random probes find a free address at once in a sparse range; a scan of what is
        // taken settles a dense one.
        for _ in 0..8 {
            let n = rand::rng().random_range(lo..=hi);
            let ip = Ipv4Addr::from(n);
            if self.claim(format!("{IP_PREFIX}{ip}"), owner).await? {
                return Ok(ip);
            }
        }
        let taken = self.taken(IP_PREFIX).await?;
        for n in lo..=hi {
            let ip = Ipv4Addr::from(n);
            if !taken.contains(&ip.to_string())
                && self.claim(format!("{IP_PREFIX}{ip}"), owner).await?
            {
                return Ok(ip);
            }
        }
        Err(AllocError::Full("IPs"))
    }

    /// Allocates `requested` (when non-zero) or any free NodePort for `owner`.
    pub async fn allocate_port(
        &self,
        requested: Option<u16>,
        owner: &str,
    ) -> Result<u16, AllocError> {
        let (lo, hi) = self.ports;
        if let Some(p) = requested {
            if p < lo || p > hi {
                return Err(AllocError::PortOutOfRange(lo, hi));
            }
            return if self.claim(format!("{PORT_PREFIX}{p}"), owner).await? {
                Ok(p)
            } else {
                Err(AllocError::Taken("port"))
            };
        }
        for _ in 0..8 {
            let p = rand::rng().random_range(lo..=hi);
            if self.claim(format!("{PORT_PREFIX}{p}"), owner).await? {
                return Ok(p);
            }
        }
        let taken = self.taken(PORT_PREFIX).await?;
        for p in lo..=hi {
            if !taken.contains(&p.to_string())
                && self.claim(format!("{PORT_PREFIX}{p}"), owner).await?
            {
                return Ok(p);
            }
        }
        Err(AllocError::Full("ports"))
    }

    async fn taken(&self, prefix: &str) -> Result<HashSet<String>, AllocError> {
        let res = self.store.list(prefix, &ListOptions::default()).await?;
        Ok(res
            .kvs
            .into_iter()
            .map(|kv| kv.key[prefix.len()..].to_string())
            .collect())
    }

    async fn release(&self, key: String) {
        match self.store.delete(&key, None).await {
            Ok(_) | Err(storage::Error::NotFound { .. }) => {}
            Err(e) => tracing::warn!(%key, error = %e, "failed to release allocation"),
        }
    }

    pub async fn release_ip(&self, ip: &str) {
        self.release(format!("{IP_PREFIX}{ip}")).await
    }

    pub async fn release_port(&self, port: u16) {
        self.release(format!("{PORT_PREFIX}{port}")).await
    }

    /// Frees allocations whose Service no longer holds them — left behind when the
    /// process died between allocating and writing the Service. Only allocations older
    /// than a minute are considered, so a create in flight elsewhere is not robbed.
    pub async fn repair(&self, services: &[Value]) -> Result<usize, AllocError> {
        let mut held_ips = HashSet::new();
        let mut held_ports = HashSet::new();
        for svc in services {
            if let Some(ip) = svc.pointer("/spec/clusterIP").and_then(Value::as_str) {
                held_ips.insert(ip.to_string());
            }
            for p in svc
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(np) = p.get("nodePort").and_then(Value::as_u64) {
                    held_ports.insert(np.to_string());
                }
            }
        }
        let cutoff = chrono::Utc::now() - chrono::TimeDelta::minutes(1);
        let mut freed = 0;
        for (prefix, held) in [(IP_PREFIX, &held_ips), (PORT_PREFIX, &held_ports)] {
            let res = self.store.list(prefix, &ListOptions::default()).await?;
            for kv in res.kvs {
                let id = &kv.key[prefix.len()..];
                if held.contains(id) {
                    continue;
                }
                let old_enough = serde_json::from_slice::<Value>(&kv.value)
                    .ok()
                    .and_then(|v| v.get("allocated").and_then(Value::as_str).map(String::from))
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                    .is_none_or(|t| t < cutoff);
                if old_enough
                    && self
                        .store
                        .delete(&kv.key, Some(kv.mod_revision))
                        .await
                        .is_ok()
                {
                    tracing::info!(key = %kv.key, "released leaked service allocation");
                    freed += 1;
                }
            }
        }
        Ok(freed)
    }
}
