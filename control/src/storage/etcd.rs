//! The [`Store`](super::Store) on a real etcd cluster.
//!
//! Every write is one etcd transaction whose compare decides it (create-if-absent,
//! compare-and-swap on `mod_revision`); a failed compare reads the key in the same
//! transaction so the caller learns *why* without a second round trip. Each unary request
//! is bounded by [`REQUEST_TIMEOUT`] and timed into the `etcd_request_duration_seconds`
//! metric. The gRPC channel reconnects by itself, so the store keeps working across an
//! etcd restart; requests made while etcd is down fail with [`Error::Unavailable`].

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, KvClient,
    Txn, TxnOp, TxnOpResponse, WatchClient, WatchOptions,
};
use futures::StreamExt;

use super::{
    Error, EventKind, KeyValue, ListOptions, ListResult, Result, Store, WatchEvent, WatchStream,
};

/// How long connecting (and the first health check) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one unary request may take before it is reported as `Unavailable`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// etcd's default `--max-request-bytes` (1.5 MiB).
const ETCD_MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// The largest key + value we send: etcd's limit less room for the transaction around it
/// (the key appears in the compare, the put and the fallback get).
pub const MAX_VALUE_BYTES: usize = ETCD_MAX_REQUEST_BYTES - 16 * 1024;

/// The largest response we accept. gRPC's default of 4 MiB would make a plain list of a
/// few thousand objects fail; etcd is trusted, so the bound is only a sanity limit.
const MAX_RESPONSE_BYTES: usize = 1 << 30;

/// gRPC status codes we branch on (tonic's `Code` discriminants, which follow gRPC).
const CODE_CANCELLED: i32 = 1;
const CODE_UNKNOWN: i32 = 2;
const CODE_DEADLINE_EXCEEDED: i32 = 4;
const CODE_RESOURCE_EXHAUSTED: i32 = 8;
const CODE_UNAVAILABLE: i32 = 14;

/// A `Store` backed by etcd.
#[derive(Clone)]
pub struct EtcdStore {
    kv: KvClient,
    watch: WatchClient,
    /// The highest compacted revision we know of: from our own compactions and from
    /// errors and watch cancellations that report one.
    compacted: Arc<AtomicI64>,
}

/// What a failed request was about, to build a precise [`Error`].
#[derive(Default)]
struct Context<'a> {
    key: &'a str,
    size: usize,
    revision: Option<i64>,
}

impl EtcdStore {
    /// Connects to etcd and checks that it answers, both within a few seconds.
    pub async fn connect(endpoints: &[String]) -> Result<EtcdStore> {
        let opts = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        let client =
            match tokio::time::timeout(CONNECT_TIMEOUT, Client::connect(endpoints, Some(opts)))
                .await
            {
                Ok(Ok(client)) => client,
                Ok(Err(e)) => {
                    return Err(Error::Unavailable(format!(
                        "cannot connect to etcd at {}: {e}",
                        endpoints.join(",")
                    )))
                }
                Err(_) => {
                    return Err(Error::Unavailable(format!(
                        "cannot connect to etcd at {} within {CONNECT_TIMEOUT:?}",
                        endpoints.join(",")
                    )))
                }
            };
        let store = EtcdStore {
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            watch: client
                .watch_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            compacted: Arc::new(AtomicI64::new(0)),
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, store.ping()).await {
            Ok(Ok(())) => Ok(store),
            Ok(Err(e)) => Err(Error::Unavailable(format!(
                "etcd at {} does not answer: {e}",
                endpoints.join(",")
            ))),
            Err(_) => Err(Error::Unavailable(format!(
                "etcd at {} did not answer within {CONNECT_TIMEOUT:?}",
                endpoints.join(",")
            ))),
        }
    }

    /// A cheap linearizable read: succeeds only when etcd has a leader and answers.
    pub async fn ping(&self) -> Result<()> {
        let mut kv = self.kv.clone();
        let opts = GetOptions::new().with_count_only();
        self.call("ping", &Context::default(), kv.get("/health", Some(opts)))
            .await
            .map(|_| ())
    }

    /// Runs one request with a deadline, records its latency and maps its error.
    async fn call<T>(
        &self,
        op: &'static str,
        ctx: &Context<'_>,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        let start = Instant::now();
        let result = tokio::time::timeout(REQUEST_TIMEOUT, fut).await;
        crate::metrics::observe_etcd(op, start.elapsed().as_secs_f64());
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.map_error(op, ctx, e).await),
            Err(_) => Err(Error::Unavailable(format!(
                "etcd {op} request timed out after {REQUEST_TIMEOUT:?}"
            ))),
        }
    }

    async fn map_error(&self, op: &str, ctx: &Context<'_>, err: etcd_client::Error) -> Error {
        let mapped = classify(ctx, &err);
        match mapped {
            Classified::Compacted => {
                let requested = ctx.revision.unwrap_or(0);
                let compacted = self.discover_compacted(requested).await;
                Error::Compacted {
                    requested,
                    compacted,
                }
            }
            Classified::Done(e) => {
                if matches!(e, Error::Unavailable(_) | Error::Internal(_)) {
                    tracing::debug!(op, key = ctx.key, error = %err, "etcd request failed");
                }
                e
            }
        }
    }

    /// Finds the compacted revision after an error said "compacted" without saying up to
    /// where: a watch from `requested` is cancelled by etcd with the compact revision.
    async fn discover_compacted(&self, requested: i64) -> i64 {
        let known = self.compacted.load(Ordering::SeqCst);
        if known > requested {
            return known;
        }
        let probe = async {
            let mut watch = self.watch.clone();
            let opts = WatchOptions::new().with_start_revision(requested.max(1));
            let mut stream = watch.watch("/", Some(opts)).await.ok()?;
            while let Some(resp) = stream.message().await.ok()? {
                if resp.compact_revision() > 0 {
                    return Some(resp.compact_revision());
                }
                if resp.canceled() || !resp.created() {
                    return None;
                }
            }
            None
        };
        match tokio::time::timeout(Duration::from_secs(2), probe).await {
            Ok(Some(rev)) => {
                self.note_compacted(rev);
                rev
            }
            _ => known.max(requested + 1),
        }
    }

    fn note_compacted(&self, revision: i64) {
        self.compacted.fetch_max(revision, Ordering::SeqCst);
    }

    fn check_size(key: &str, value: &Bytes) -> Result<()> {
        let size = key.len() + value.len();
        if size > MAX_VALUE_BYTES {
            return Err(Error::TooLarge {
                key: key.to_string(),
                size: value.len(),
                limit: MAX_VALUE_BYTES,
            });
        }
        Ok(())
    }

    /// A failed write's fallback read: tells NotFound from Conflict.
    fn explain_failure(key: &str, expected: i64, responses: Vec<TxnOpResponse>) -> Error {
        let current = responses.into_iter().find_map(|r| match r {
            TxnOpResponse::Get(mut get) => get.take_kvs().into_iter().next(),
            _ => None,
        });
        match current {
            None => Error::NotFound {
                key: key.to_string(),
            },
            Some(kv) => Error::Conflict {
                key: key.to_string(),
                expected,
                actual: kv.mod_revision(),
            },
        }
    }
}

/// An etcd error sorted into ours; "compacted" needs a look-up to fill in the revision.
enum Classified {
    Compacted,
    Done(Error),
}

fn classify(ctx: &Context<'_>, err: &etcd_client::Error) -> Classified {
    match err {
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message();
            let code = status.code() as i32;
            if message.contains("required revision has been compacted") {
                Classified::Compacted
            } else if message.contains("request is too large")
                || (code == CODE_RESOURCE_EXHAUSTED && message.contains("larger than max"))
            {
                Classified::Done(Error::TooLarge {
                    key: ctx.key.to_string(),
                    size: ctx.size,
                    limit: MAX_VALUE_BYTES,
                })
            } else if matches!(
                code,
                CODE_UNAVAILABLE | CODE_DEADLINE_EXCEEDED | CODE_CANCELLED | CODE_UNKNOWN
            ) || message.contains("leader changed")
                || message.contains("no leader")
                || message.contains("request timed out")
                || message.contains("server stopped")
            {
                Classified::Done(Error::Unavailable(err.to_string()))
            } else {
                Classified::Done(Error::Internal(err.to_string()))
            }
        }
        etcd_client::Error::TransportError(_)
        | etcd_client::Error::IoError(_)
        | etcd_client::Error::WatchError(_) => {
            Classified::Done(Error::Unavailable(err.to_string()))
        }
        other => Classified::Done(Error::Internal(other.to_string())),
    }
}

fn convert(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    }
}

/// The end of the key range holding every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only reachable for an empty (or all-0xff) prefix: "every key".
    vec![0]
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<i64> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| Error::Internal("etcd response without header".to_string()))
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let mut kv = self.kv.clone();
        let ctx = Context {
            key,
            ..Context::default()
        };
        let resp = self.call("get", &ctx, kv.get(key, None)).await?;
        Ok(resp.kvs().first().map(convert))
    }

    async fn list(&self, prefix: &str, opts: &ListOptions) -> Result<ListResult> {
        let end = prefix_end(prefix);
        // A continue key before the prefix would read other resources' keys.
        let start = match &opts.start_key {
            Some(k) if k.as_str() > prefix => k.as_str(),
            _ => prefix,
        };
        let mut get = GetOptions::new().with_range(end.clone());
        if let Some(rev) = opts.revision.filter(|r| *r > 0) {
            get = get.with_revision(rev);
        }
        if let Some(limit) = opts.limit.filter(|l| *l > 0) {
            get = get.with_limit(limit);
        }
        let ctx = Context {
            key: prefix,
            revision: opts.revision,
            ..Context::default()
        };
        if start.as_bytes() >= end.as_slice() {
            // Past the end of the range (a stale continue token): nothing left to read, but
            // the answer still needs a revision.
            let revision = match opts.revision.filter(|r| *r > 0) {
                Some(rev) => rev,
                None => self.current_revision().await?,
            };
            return Ok(ListResult {
                kvs: Vec::new(),
                revision,
                more: false,
            });
        }
        let mut kv = self.kv.clone();
        let resp = self.call("list", &ctx, kv.get(start, Some(get))).await?;
        // etcd's header carries the store's current revision; a read at a fixed revision
        // is a snapshot of that revision, which is what the list's resourceVersion means.
        let revision = match opts.revision.filter(|r| *r > 0) {
            Some(rev) => rev,
            None => header_revision(resp.header())?,
        };
        Ok(ListResult {
            kvs: resp.kvs().iter().map(convert).collect(),
            revision,
            more: resp.more(),
        })
    }

    async fn count(&self, prefix: &str) -> Result<i64> {
        let mut kv = self.kv.clone();
        let opts = GetOptions::new()
            .with_range(prefix_end(prefix))
            .with_count_only();
        let ctx = Context {
            key: prefix,
            ..Context::default()
        };
        let resp = self.call("count", &ctx, kv.get(prefix, Some(opts))).await?;
        Ok(resp.count())
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<i64> {
        Self::check_size(key, &value)?;
        let ctx = Context {
            key,
            size: value.len(),
            revision: None,
        };
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value.to_vec(), None)]);
        let mut kv = self.kv.clone();
        let resp = self.call("create", &ctx, kv.txn(txn)).await?;
        if !resp.succeeded() {
            return Err(Error::AlreadyExists {
                key: key.to_string(),
            });
        }
        header_revision(resp.header())
    }

    async fn update(&self, key: &str, value: Bytes, expected: i64) -> Result<i64> {
        Self::check_size(key, &value)?;
        let ctx = Context {
            key,
            size: value.len(),
            revision: None,
        };
        // The create_revision compare keeps an `expected` of 0 from creating the key.
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key, CompareOp::Equal, expected),
                Compare::create_revision(key, CompareOp::Greater, 0),
            ])
            .and_then([TxnOp::put(key, value.to_vec(), None)])
            .or_else([TxnOp::get(key, None)]);
        let mut kv = self.kv.clone();
        let resp = self.call("update", &ctx, kv.txn(txn)).await?;
        if !resp.succeeded() {
            return Err(Self::explain_failure(key, expected, resp.op_responses()));
        }
        header_revision(resp.header())
    }

    async fn delete(&self, key: &str, expected: Option<i64>) -> Result<(KeyValue, i64)> {
        let ctx = Context {
            key,
            ..Context::default()
        };
        let mut compares = vec![Compare::create_revision(key, CompareOp::Greater, 0)];
        if let Some(rev) = expected {
            compares.push(Compare::mod_revision(key, CompareOp::Equal, rev));
        }
        let txn = Txn::new()
            .when(compares)
            .and_then([TxnOp::delete(
                key,
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(key, None)]);
        let mut kv = self.kv.clone();
        let resp = self.call("delete", &ctx, kv.txn(txn)).await?;
        if !resp.succeeded() {
            return Err(Self::explain_failure(
                key,
                expected.unwrap_or(0),
                resp.op_responses(),
            ));
        }
        let revision = header_revision(resp.header())?;
        let deleted = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Delete(del) => del.prev_kvs().first().map(convert),
            _ => None,
        });
        match deleted {
            Some(kv) => Ok((kv, revision)),
            None => Err(Error::NotFound {
                key: key.to_string(),
            }),
        }
    }

    async fn watch(&self, prefix: &str, start_revision: i64) -> Result<WatchStream> {
        let mut opts = WatchOptions::new().with_prefix().with_prev_key();
        // etcd reads a start revision of 0 as "from now", which is what a caller without a
        // revision means; any positive one replays history from there.
        if start_revision > 0 {
            opts = opts.with_start_revision(start_revision);
        }
        let ctx = Context {
            key: prefix,
            revision: Some(start_revision),
            ..Context::default()
        };
        let mut client = self.watch.clone();
        let mut stream = self
            .call("watch", &ctx, client.watch(prefix, Some(opts)))
            .await?;
        // Wait for etcd to confirm the watch, so that `Ok` means the watch is live (events
        // written after this returns are seen) and a watch refused at once says why.
        let first = self
            .call("watch", &ctx, async { stream.message().await })
            .await?;
        let state = WatchState {
            stream,
            pending: VecDeque::new(),
            requested: start_revision,
            compacted: self.compacted.clone(),
            done: false,
        };
        let mut state = state;
        match first {
            Some(resp) => state.absorb(resp),
            None => {
                return Err(Error::Unavailable(
                    "etcd closed the watch stream".to_string(),
                ))
            }
        }
        Ok(futures::stream::unfold(state, WatchState::next).boxed())
    }

    async fn current_revision(&self) -> Result<i64> {
        let mut kv = self.kv.clone();
        let opts = GetOptions::new().with_count_only();
        let resp = self
            .call(
                "current_revision",
                &Context::default(),
                kv.get("/", Some(opts)),
            )
            .await?;
        header_revision(resp.header())
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        let mut kv = self.kv.clone();
        let ctx = Context {
            revision: Some(revision),
            ..Context::default()
        };
        match self.call("compact", &ctx, kv.compact(revision, None)).await {
            Ok(_) => {
                self.note_compacted(revision);
                Ok(())
            }
            // Someone (another API server's compactor) got there first: same outcome.
            Err(Error::Compacted { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn compacted_revision(&self) -> i64 {
        self.compacted.load(Ordering::SeqCst)
    }
}

/// The state behind a [`WatchStream`]: the etcd stream and the events of the last
/// response not yet handed out.
struct WatchState {
    stream: etcd_client::WatchStream,
    pending: VecDeque<Result<WatchEvent>>,
    requested: i64,
    compacted: Arc<AtomicI64>,
    /// Set once a terminal error is queued: the stream ends after it.
    done: bool,
}

impl WatchState {
    async fn next(mut self) -> Option<(Result<WatchEvent>, WatchState)> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some((item, self));
            }
            if self.done {
                return None;
            }
            match self.stream.message().await {
                Ok(Some(resp)) => self.absorb(resp),
                Ok(None) => {
                    self.fail(Error::Unavailable(
                        "etcd closed the watch stream".to_string(),
                    ));
                }
                Err(e) => {
                    let err = match classify(&Context::default(), &e) {
                        Classified::Done(err) => err,
                        Classified::Compacted => Error::Compacted {
                            requested: self.requested,
                            compacted: self.compacted.load(Ordering::SeqCst),
                        },
                    };
                    self.fail(err);
                }
            }
        }
    }

    fn fail(&mut self, err: Error) {
        self.pending.push_back(Err(err));
        self.done = true;
    }

    fn absorb(&mut self, resp: etcd_client::WatchResponse) {
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let prev = event.prev_kv().map(|p| Bytes::copy_from_slice(p.value()));
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let revision = kv.mod_revision();
            let ev = match event.event_type() {
                EventType::Put => WatchEvent {
                    kind: if kv.create_revision() == kv.mod_revision() {
                        EventKind::Created
                    } else {
                        EventKind::Updated
                    },
                    key,
                    value: Bytes::copy_from_slice(kv.value()),
                    prev_value: prev,
                    revision,
                },
                EventType::Delete => WatchEvent {
                    kind: EventKind::Deleted,
                    key,
                    value: prev.clone().unwrap_or_default(),
                    prev_value: prev,
                    revision,
                },
            };
            // Resume point for the error we may report later.
            self.requested = revision + 1;
            self.pending.push_back(Ok(ev));
        }
        if resp.canceled() {
            let compact = resp.compact_revision();
            if compact > 0 {
                self.compacted.fetch_max(compact, Ordering::SeqCst);
                self.fail(Error::Compacted {
                    requested: self.requested,
                    compacted: compact,
                });
            } else {
                let reason = resp.cancel_reason();
                self.fail(Error::Unavailable(format!(
                    "etcd cancelled the watch: {}",
                    if reason.is_empty() {
                        "no reason given"
                    } else {
                        reason
                    }
                )));
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::etcd_process::ManagedEtcd;
    use std::collections::BTreeMap;

    /// A real etcd in a temp dir and a store connected to it.
    pub(crate) struct TestEtcd {
        pub store: Arc<EtcdStore>,
        pub etcd: ManagedEtcd,
        _dir: tempfile::TempDir,
    }

    pub(crate) async fn test_etcd() -> TestEtcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let etcd = ManagedEtcd::start(dir.path()).await.expect("start etcd");
        let store = EtcdStore::connect(&[etcd.client_url()])
            .await
            .expect("connect");
        TestEtcd {
            store: Arc::new(store),
            etcd,
            _dir: dir,
        }
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[tokio::test]
    async fn create_get_and_already_exists() {
        let t = test_etcd().await;
        let s = &t.store;
        let rev = s
            .create("/registry/pods/a/x", b("1"))
            .await
            .expect("create");
        let kv = s
            .get("/registry/pods/a/x")
            .await
            .expect("get")
            .expect("present");
        assert_eq!(kv.value, b("1"));
        assert_eq!(kv.mod_revision, rev);
        assert_eq!(kv.create_revision, rev);
        let err = s.create("/registry/pods/a/x", b("2")).await.unwrap_err();
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
        assert!(s.get("/registry/pods/a/y").await.expect("get").is_none());
        assert_eq!(s.count("/registry/pods/").await.expect("count"), 1);
        s.ping().await.expect("ping");
    }

    #[tokio::test]
    async fn conflicting_cas_exactly_one_wins() {
        let t = test_etcd().await;
        let s = t.store.clone();
        let rev = s.create("/k", b("0")).await.expect("create");
        let (a, b2) = tokio::join!(s.update("/k", b("a"), rev), s.update("/k", b("b"), rev));
        let (winner, loser) = match (a, b2) {
            (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
            other => panic!("exactly one update must win: {other:?}"),
        };
        assert!(winner > rev);
        match loser {
            Error::Conflict {
                expected, actual, ..
            } => {
                assert_eq!(expected, rev);
                assert_eq!(actual, winner);
            }
            other => panic!("expected Conflict, got {other:?}"),
        }
        let err = s.update("/missing", b("x"), 0).await.unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
        let err = s.update("/missing", b("x"), 5).await.unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn delete_with_preconditions() {
        let t = test_etcd().await;
        let s = &t.store;
        let r1 = s.create("/k", b("v1")).await.expect("create");
        let r2 = s.update("/k", b("v2"), r1).await.expect("update");
        let err = s.delete("/k", Some(r1)).await.unwrap_err();
        assert!(
            matches!(err, Error::Conflict { expected, actual, .. } if expected == r1 && actual == r2),
            "{err:?}"
        );
        let (kv, rev) = s.delete("/k", Some(r2)).await.expect("delete");
        assert_eq!(kv.value, b("v2"));
        assert_eq!(kv.mod_revision, r2);
        assert!(rev > r2);
        let err = s.delete("/k", None).await.unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
        s.create("/k", b("v3")).await.expect("re-create");
        let (kv, _) = s.delete("/k", None).await.expect("unconditional delete");
        assert_eq!(kv.value, b("v3"));
    }

    #[tokio::test]
    async fn too_large_values_are_refused_before_sending() {
        let t = test_etcd().await;
        let big = Bytes::from(vec![b'x'; 2 * 1024 * 1024]);
        let err = t.store.create("/big", big.clone()).await.unwrap_err();
        assert!(
            matches!(err, Error::TooLarge { size, limit, .. } if size == big.len() && limit == MAX_VALUE_BYTES),
            "{err:?}"
        );
        let rev = t.store.create("/big", b("small")).await.expect("create");
        let err = t.store.update("/big", big, rev).await.unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
        // Just under our limit is accepted by etcd's default limit.
        let fits = Bytes::from(vec![b'y'; MAX_VALUE_BYTES - 100]);
        t.store.update("/big", fits, rev).await.expect("fits");
    }

    #[tokio::test]
    async fn lists_larger_than_grpc_default_limit_are_readable() {
        let t = test_etcd().await;
        let value = Bytes::from(vec![b'z'; 1024 * 1024]);
        for i in 0..6 {
            t.store
                .create(&format!("/big/{i}"), value.clone())
                .await
                .expect("create");
        }
        let list = t
            .store
            .list("/big/", &ListOptions::default())
            .await
            .expect("a 6 MiB list");
        assert_eq!(list.kvs.len(), 6);
    }

    #[tokio::test]
    async fn list_pages_at_one_revision_see_a_snapshot() {
        let t = test_etcd().await;
        let s = &t.store;
        for i in 0..10 {
            s.create(&format!("/registry/cm/ns/k{i}"), b(&format!("v{i}")))
                .await
                .expect("create");
        }
        // Neighbours that must not show up.
        s.create("/registry/cm/nt/z", b("other"))
            .await
            .expect("create");
        s.create("/registry/cmx", b("other")).await.expect("create");
        let prefix = "/registry/cm/ns/";
        let first = s
            .list(
                prefix,
                &ListOptions {
                    limit: Some(4),
                    ..ListOptions::default()
                },
            )
            .await
            .expect("list");
        assert_eq!(first.kvs.len(), 4);
        assert!(first.more);
        let snapshot = first.revision;
        // Writes between pages must not leak into the following pages.
        s.create("/registry/cm/ns/k45", b("new"))
            .await
            .expect("create");
        let kv = s.get("/registry/cm/ns/k7").await.expect("get").expect("k7");
        s.update("/registry/cm/ns/k7", b("changed"), kv.mod_revision)
            .await
            .expect("update");
        s.delete("/registry/cm/ns/k9", None).await.expect("delete");

        let mut all = first.kvs.clone();
        let mut more = first.more;
        while more {
            let start = format!("{}\0", all.last().expect("non-empty").key);
            let page = s
                .list(
                    prefix,
                    &ListOptions {
                        revision: Some(snapshot),
                        start_key: Some(start),
                        limit: Some(4),
                    },
                )
                .await
                .expect("next page");
            assert_eq!(page.revision, snapshot);
            all.extend(page.kvs);
            more = page.more;
        }
        let got: Vec<(String, Bytes)> = all.into_iter().map(|kv| (kv.key, kv.value)).collect();
        let want: Vec<(String, Bytes)> = (0..10)
            .map(|i| (format!("/registry/cm/ns/k{i}"), b(&format!("v{i}"))))
            .collect();
        assert_eq!(got, want);

        let latest = s.list(prefix, &ListOptions::default()).await.expect("list");
        assert!(latest.revision > snapshot);
        assert_eq!(latest.kvs.len(), 10);
        assert!(!latest.more);
        // A continue key past the end reads nothing.
        let past = s
            .list(
                prefix,
                &ListOptions {
                    start_key: Some("/registry/cm/nt/".to_string()),
                    ..ListOptions::default()
                },
            )
            .await
            .expect("list past end");
        assert!(past.kvs.is_empty() && !past.more);
    }

    /// Applies watch events to a map of key → value (the informer pattern).
    fn apply(state: &mut BTreeMap<String, Bytes>, ev: &WatchEvent) {
        match ev.kind {
            EventKind::Created | EventKind::Updated => {
                state.insert(ev.key.clone(), ev.value.clone());
            }
            EventKind::Deleted => {
                state.remove(&ev.key);
            }
        }
    }

    #[tokio::test]
    async fn watch_from_list_revision_misses_nothing_under_concurrent_writes() {
        let t = test_etcd().await;
        let s = t.store.clone();
        let prefix = "/registry/pods/";
        let writer = {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..300 {
                    let key = format!("/registry/pods/ns/p{}", i % 17);
                    match s.get(&key).await.expect("get") {
                        None => {
                            s.create(&key, b(&format!("c{i}"))).await.expect("create");
                        }
                        Some(kv) if i % 5 == 0 => {
                            s.delete(&key, Some(kv.mod_revision)).await.expect("delete");
                        }
                        Some(kv) => {
                            s.update(&key, b(&format!("u{i}")), kv.mod_revision)
                                .await
                                .expect("update");
                        }
                    }
                }
                s.create("/registry/pods/zz-done", b("done"))
                    .await
                    .expect("done")
            })
        };
        // List in the middle of the writes, then watch from just after the list.
        while s.count(prefix).await.expect("count") < 5 {
            tokio::task::yield_now().await;
        }
        let list = s.list(prefix, &ListOptions::default()).await.expect("list");
        let mut state: BTreeMap<String, Bytes> =
            list.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
        let mut watch = s.watch(prefix, list.revision + 1).await.expect("watch");
        let done_rev = writer.await.expect("writer");
        let mut last = list.revision;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while last < done_rev {
            let ev = tokio::time::timeout_at(deadline, watch.next())
                .await
                .expect("events in time")
                .expect("stream open")
                .expect("event");
            assert!(
                ev.revision > last,
                "revisions must rise: {} then {}",
                last,
                ev.revision
            );
            last = ev.revision;
            apply(&mut state, &ev);
        }
        let truth = s.list(prefix, &ListOptions::default()).await.expect("list");
        let truth: BTreeMap<String, Bytes> =
            truth.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
        assert_eq!(state, truth);
    }

    #[tokio::test]
    async fn watch_reports_kinds_and_prev_values() {
        let t = test_etcd().await;
        let s = &t.store;
        let start = s.current_revision().await.expect("rev");
        let mut w = s.watch("/p/", start + 1).await.expect("watch");
        let r1 = s.create("/p/a", b("1")).await.expect("create");
        let r2 = s.update("/p/a", b("2"), r1).await.expect("update");
        let (_, r3) = s.delete("/p/a", None).await.expect("delete");
        let mut evs = Vec::new();
        while evs.len() < 3 {
            evs.push(w.next().await.expect("open").expect("event"));
        }
        assert_eq!(
            evs[0],
            WatchEvent {
                kind: EventKind::Created,
                key: "/p/a".into(),
                value: b("1"),
                prev_value: None,
                revision: r1
            }
        );
        assert_eq!(
            evs[1],
            WatchEvent {
                kind: EventKind::Updated,
                key: "/p/a".into(),
                value: b("2"),
                prev_value: Some(b("1")),
                revision: r2
            }
        );
        assert_eq!(
            evs[2],
            WatchEvent {
                kind: EventKind::Deleted,
                key: "/p/a".into(),
                value: b("2"),
                prev_value: Some(b("2")),
                revision: r3
            }
        );
    }

    #[tokio::test]
    async fn reads_and_watches_below_compaction_are_compacted() {
        let t = test_etcd().await;
        let s = &t.store;
        let old = s.create("/c/a", b("1")).await.expect("create");
        let mut rev = old;
        for i in 0..5 {
            rev = s
                .update("/c/a", b(&i.to_string()), rev)
                .await
                .expect("update");
        }
        s.compact(rev).await.expect("compact");
        assert_eq!(s.compacted_revision(), rev);
        // Compacting again to the same or an older revision is not an error.
        s.compact(old).await.expect("compact again");

        let err = s
            .list(
                "/c/",
                &ListOptions {
                    revision: Some(old),
                    ..ListOptions::default()
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Compacted { requested, compacted } if requested == old && compacted == rev),
            "{err:?}"
        );
        let mut w = s.watch("/c/", old + 1).await.expect("watch");
        match w.next().await {
            Some(Err(Error::Compacted { compacted, .. })) => assert_eq!(compacted, rev),
            other => panic!("expected Compacted, got {other:?}"),
        }
        assert!(w.next().await.is_none(), "stream must end after Compacted");
        // The compacted revision itself can still be read and watched.
        let at = s
            .list(
                "/c/",
                &ListOptions {
                    revision: Some(rev),
                    ..ListOptions::default()
                },
            )
            .await
            .expect("list at compacted revision");
        assert_eq!(at.kvs.len(), 1);

        // Another store (another API server) learns the compacted revision from etcd.
        let other = EtcdStore::connect(&[t.etcd.client_url()])
            .await
            .expect("connect");
        assert_eq!(other.compacted_revision(), 0);
        let err = other
            .list(
                "/c/",
                &ListOptions {
                    revision: Some(old),
                    ..ListOptions::default()
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Compacted { compacted, .. } if compacted == rev),
            "{err:?}"
        );
        assert_eq!(other.compacted_revision(), rev);
    }

    /// Retries `f` until it succeeds, for the seconds after an etcd restart.
    async fn eventually<T, F, Fut>(mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match f().await {
                Ok(v) => return v,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "still failing after 30s: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    #[tokio::test]
    async fn store_survives_an_etcd_restart() {
        let t = test_etcd().await;
        let s = t.store.clone();
        let r1 = s.create("/r/a", b("1")).await.expect("create");
        let start = s.current_revision().await.expect("rev");
        let mut w = s.watch("/r/", start + 1).await.expect("watch");

        t.etcd.restart().await.expect("restart etcd");

        // The old watch reports the broken connection and ends.
        match tokio::time::timeout(Duration::from_secs(30), w.next()).await {
            Ok(Some(Err(Error::Unavailable(_)))) | Ok(None) => {}
            other => panic!("expected Unavailable, got {other:?}"),
        }
        let kv = eventually(|| s.get("/r/a")).await.expect("data survives");
        assert_eq!(kv.value, b("1"));
        assert_eq!(kv.mod_revision, r1);
        let r2 = eventually(|| s.update("/r/a", b("2"), r1)).await;
        assert!(r2 > r1);
        let r3 = s
            .create("/r/b", b("3"))
            .await
            .expect("create after restart");
        assert!(r3 > r2);
        s.ping().await.expect("ping");
        // A watch from before the restart replays what happened since.
        let mut w = s.watch("/r/", start + 1).await.expect("watch");
        let revs: Vec<i64> = vec![
            w.next().await.expect("open").expect("event").revision,
            w.next().await.expect("open").expect("event").revision,
        ];
        assert_eq!(revs, vec![r2, r3]);
    }

    #[tokio::test]
    async fn unreachable_etcd_is_unavailable() {
        let t = test_etcd().await;
        let s = t.store.clone();
        let url = t.etcd.client_url();
        t.etcd.stop().await;
        let err = s.get("/x").await.unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
        assert!(s.ping().await.is_err());
        let err = EtcdStore::connect(&[url])
            .await
            .err()
            .expect("connect fails");
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    }

    #[tokio::test]
    async fn compactor_keeps_one_interval_of_history() {
        let t = test_etcd().await;
        let s = t.store.clone();
        let first = s.create("/k", b("0")).await.expect("create");
        let task = super::super::compactor::spawn(s.clone(), Duration::from_millis(200));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut rev = first;
        while s.compacted_revision() < first {
            assert!(
                tokio::time::Instant::now() < deadline,
                "compactor never ran"
            );
            rev = s.update("/k", b("x"), rev).await.expect("update");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Never compacts up to the newest revision: the last interval stays readable.
        assert!(s.compacted_revision() < rev);
        task.abort();
    }
}
