//! Object storage: the [`Store`] trait and its etcd implementation.
//!
//! Keys are `/registry/<resource>/<namespace>/<name>` (cluster-scoped objects:
//! `/registry/<resource>/<name>`), values are the object's JSON without its
//! `resourceVersion`; an object's resourceVersion is the key's etcd `mod_revision` and a
//! list's is the revision of the read. Writes are etcd transactions with preconditions
//! (create-if-absent, compare-and-swap on `mod_revision`), so two writers never silently
//! overwrite each other. The API server is the only component that uses this module.
//!
//! - [`etcd`]: [`EtcdStore`], the `Store` on a real etcd cluster.
//! - [`watch_cache`]: one etcd watch per resource, fanned out in memory to API watchers.
//! - [`compactor`]: drops history older than a few minutes so etcd stays small.

pub mod compactor;
pub mod etcd;
pub mod watch_cache;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

pub use etcd::EtcdStore;
pub use watch_cache::WatchCache;

/// One stored key with its revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// Revision at which the key was created (since its last deletion).
    pub create_revision: i64,
    /// Revision of the last write: the object's resourceVersion.
    pub mod_revision: i64,
}

/// What happened to a key, as seen by a watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Updated,
    Deleted,
}

/// One change to a key under a watched prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    pub key: String,
    /// The value after the change; for `Deleted`, the value just before deletion.
    pub value: Bytes,
    /// The value before the change (`None` for `Created`).
    pub prev_value: Option<Bytes>,
    /// The etcd revision of the change: the resourceVersion to report for this event.
    pub revision: i64,
}

/// How to read a range of keys.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Read at this revision (a consistent snapshot); `None` reads the latest.
    pub revision: Option<i64>,
    /// Start at this key (inclusive) instead of the prefix; used for `continue`.
    pub start_key: Option<String>,
    /// Return at most this many keys.
    pub limit: Option<i64>,
}

/// The answer to a range read.
#[derive(Debug, Clone, Default)]
pub struct ListResult {
    pub kvs: Vec<KeyValue>,
    /// The revision the read was served at: the list's resourceVersion.
    pub revision: i64,
    /// True when keys remain after the last returned one (the read hit `limit`).
    pub more: bool,
}

/// Storage failures; the API server maps each to a Kubernetes Status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key does not exist.
    #[error("key {key} not found")]
    NotFound { key: String },
    /// A create found the key already present.
    #[error("key {key} already exists")]
    AlreadyExists { key: String },
    /// A compare-and-swap precondition failed: someone else wrote the key first.
    #[error("key {key} was modified: expected revision {expected}, found {actual}")]
    Conflict {
        key: String,
        expected: i64,
        actual: i64,
    },
    /// The requested revision is older than the compacted revision.
    #[error("required revision {requested} has been compacted (compacted revision {compacted})")]
    Compacted { requested: i64, compacted: i64 },
    /// The value is larger than etcd accepts for one request.
    #[error("value for key {key} is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        key: String,
        size: usize,
        limit: usize,
    },
    /// etcd could not be reached or did not answer in time.
    #[error("etcd unavailable: {0}")]
    Unavailable(String),
    /// Anything else etcd reported.
    #[error("etcd error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A stream of watch events. A `Compacted` error item means the start revision is gone:
/// the caller must re-list. The stream ends when the watch is cancelled.
pub type WatchStream = BoxStream<'static, Result<WatchEvent>>;

/// A key-value store with revisions, compare-and-swap and watch: what the API server
/// needs from etcd.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one key at the latest revision.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Reads the keys under `prefix` in key order.
    async fn list(&self, prefix: &str, opts: &ListOptions) -> Result<ListResult>;

    /// Counts the keys under `prefix`.
    async fn count(&self, prefix: &str) -> Result<i64>;

    /// Creates `key` if it does not exist; returns the new mod_revision.
    async fn create(&self, key: &str, value: Bytes) -> Result<i64>;

    /// Replaces `key` if its mod_revision is still `expected`; returns the new mod_revision.
    async fn update(&self, key: &str, value: Bytes, expected: i64) -> Result<i64>;

    /// Deletes `key`, if `expected` is given only at that mod_revision. Returns the deleted
    /// value and the revision of the deletion.
    async fn delete(&self, key: &str, expected: Option<i64>) -> Result<(KeyValue, i64)>;

    /// Watches every key under `prefix`, starting with the changes at `start_revision`
    /// (inclusive): pass a list's revision + 1 to miss nothing after that list.
    async fn watch(&self, prefix: &str, start_revision: i64) -> Result<WatchStream>;

    /// The store's current revision.
    async fn current_revision(&self) -> Result<i64>;

    /// Discards history before `revision`.
    async fn compact(&self, revision: i64) -> Result<()>;

    /// The revision up to which history has been compacted (0 when never).
    fn compacted_revision(&self) -> i64;
}
