//! One etcd watch per resource, fanned out in memory.
//!
//! A [`WatchCache`] holds a single etcd watch on a resource prefix (say
//! `/registry/pods/`) and serves any number of API watchers from it, so a thousand
//! `kubectl get -w` cost one etcd stream. It keeps the most recent events in a ring
//! buffer, so a watcher that resumes from a recent resourceVersion is served from memory.
//!
//! The etcd watch starts lazily, at the first [`WatchCache::subscribe`], from the store's
//! current revision; constructing a cache costs nothing and needs no runtime.
//!
//! Guarantees and their mechanics:
//! - **No gap, no duplicate.** The watch task appends each event to the ring buffer and
//!   broadcasts it while holding the state lock; `subscribe` copies the replay and joins
//!   the broadcast under that same lock. Every event is therefore either in the replay or
//!   in the live feed, never both and never neither.
//! - **Bounded memory.** Events are shared (`Arc`) between the buffer and the broadcast
//!   channel, both of fixed capacity. A subscriber that falls further behind than the
//!   broadcast holds gets `Compacted` and its stream ends; its client re-lists, as for
//!   Kubernetes' "too old resource version".
//! - **Old resume points.** A subscriber asking for revisions older than the buffer is
//!   served by its own etcd watch, which reports `Compacted` if etcd no longer has them.
//! - **etcd restarts.** When the cache's etcd watch breaks it is re-established from the
//!   last seen revision + 1, so subscribers only see a pause. If that revision has been
//!   compacted meanwhile, history is lost: every subscriber ends with `Compacted`, and the
//!   cache starts afresh from the current revision.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::{Error, Result, Store, WatchEvent, WatchStream};

/// Back-off bounds while the cache's etcd watch cannot be re-established.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What the watch task tells subscribers.
#[derive(Clone, Debug)]
enum Message {
    Event(Arc<WatchEvent>),
    /// The cache lost history (its resume revision was compacted): every current
    /// subscriber must end with `Compacted`.
    Reset {
        compacted: i64,
    },
}

struct State {
    /// Whether the etcd watch has been started (it is only ever started once).
    started: bool,
    /// The most recent events, oldest first.
    events: VecDeque<Arc<WatchEvent>>,
    /// Every event with a revision above this one is in `events` or yet to come: the
    /// oldest `after_revision` a subscriber can be served from memory.
    window_start: i64,
    /// The revision of the newest event seen (or the start revision).
    latest: i64,
    /// The live feed. Sent to only under this lock, which is what makes subscribe's
    /// replay + join atomic.
    tx: broadcast::Sender<Message>,
}

/// What the watch task and the cache handle share.
struct Shared {
    store: Arc<dyn Store>,
    prefix: String,
    capacity: usize,
    state: Mutex<State>,
    /// Mirror of `State::latest`, readable without the lock (bookmarks poll it).
    latest: AtomicI64,
}

/// The watch cache of one resource.
pub struct WatchCache {
    shared: Arc<Shared>,
    /// Serializes the lazy start, so concurrent first subscribers start one etcd watch.
    start: tokio::sync::Mutex<()>,
    /// The task feeding the cache from etcd; aborted when the cache is dropped.
    task: Mutex<Option<JoinHandle<()>>>,
}

impl WatchCache {
    /// A cache of the events under `prefix` (e.g. `/registry/pods/`), remembering the
    /// last `capacity` of them.
    pub fn new(store: Arc<dyn Store>, prefix: String, capacity: usize) -> Arc<WatchCache> {
        let capacity = capacity.max(1);
        let (tx, _) = broadcast::channel(capacity);
        Arc::new(WatchCache {
            shared: Arc::new(Shared {
                store,
                prefix,
                capacity,
                state: Mutex::new(State {
                    started: false,
                    events: VecDeque::with_capacity(capacity),
                    window_start: 0,
                    latest: 0,
                    tx,
                }),
                latest: AtomicI64::new(0),
            }),
            start: tokio::sync::Mutex::new(()),
            task: Mutex::new(None),
        })
    }

    /// The newest revision the cache has seen (0 before its first subscriber): every
    /// event up to it has been handed to the subscribers' feeds, though a subscriber may
    /// not have read them yet. For one watcher's bookmarks use its [`Progress`] instead.
    pub fn latest_revision(&self) -> i64 {
        self.shared.latest.load(Ordering::SeqCst)
    }

    /// Every event with a revision above `after_revision` whose key starts with
    /// `key_prefix`, then the live ones, without gap or duplicate.
    ///
    /// `key_prefix` must lie under the cache's prefix; end it with `/` to mean one
    /// namespace (`/registry/pods/default/`, not `/registry/pods/default`, which would also
    /// match `default2`). An `after_revision` of 0 or less means "from now".
    pub async fn subscribe(
        self: &Arc<Self>,
        after_revision: i64,
        key_prefix: &str,
    ) -> Result<WatchStream> {
        Ok(self
            .subscribe_with_progress(after_revision, key_prefix)
            .await?
            .0)
    }

    /// Like [`subscribe`](Self::subscribe), plus the subscriber's [`Progress`]: the
    /// revision a bookmark may safely report to this watcher.
    pub async fn subscribe_with_progress(
        self: &Arc<Self>,
        after_revision: i64,
        key_prefix: &str,
    ) -> Result<(WatchStream, Progress)> {
        if !key_prefix.starts_with(&self.shared.prefix) {
            return Err(Error::Internal(format!(
                "watch prefix {key_prefix} is outside the cache's prefix {}",
                self.shared.prefix
            )));
        }
        self.ensure_started().await?;
        let key_prefix = key_prefix.to_string();
        let (subscriber, after) = {
            let state = self.shared.lock();
            let after = if after_revision <= 0 {
                state.latest
            } else {
                after_revision
            };
            if after < state.window_start {
                (None, after)
            } else {
                let replay = state
                    .events
                    .iter()
                    .filter(|e| e.revision > after && e.key.starts_with(&key_prefix))
                    .cloned()
                    .collect();
                let subscriber = Subscriber {
                    replay,
                    replay_upto: after.max(state.latest),
                    rx: state.tx.subscribe(),
                    after,
                    progress: Progress(Arc::new(AtomicI64::new(after))),
                    key_prefix: key_prefix.clone(),
                    shared: Arc::downgrade(&self.shared),
                    done: false,
                };
                (Some(subscriber), after)
            }
        };
        if let Some(s) = subscriber {
            let progress = s.progress.clone();
            return Ok((
                futures::stream::unfold(s, Subscriber::next).boxed(),
                progress,
            ));
        }
        tracing::debug!(
            prefix = %key_prefix,
            after_revision,
            "watch older than the cache window, watching etcd directly"
        );
        // Without a revision, etcd's "from now" (0) is the right start.
        let from = if after_revision <= 0 { 0 } else { after + 1 };
        let stream = self.shared.store.watch(&key_prefix, from).await?;
        let progress = Progress(Arc::new(AtomicI64::new(after)));
        let seen = progress.clone();
        let stream = stream
            .inspect(move |item| {
                if let Ok(event) = item {
                    seen.advance(event.revision);
                }
            })
            .boxed();
        Ok((stream, progress))
    }

    /// Starts the etcd watch on first use.
    async fn ensure_started(&self) -> Result<()> {
        if self.shared.lock().started {
            return Ok(());
        }
        let _guard = self.start.lock().await;
        if self.shared.lock().started {
            return Ok(());
        }
        let store = &self.shared.store;
        let revision = store.current_revision().await?;
        let stream = store.watch(&self.shared.prefix, revision + 1).await?;
        {
            let mut state = self.shared.lock();
            state.started = true;
            state.window_start = revision;
            state.latest = revision;
            self.shared.latest.store(revision, Ordering::SeqCst);
        }
        tracing::debug!(prefix = %self.shared.prefix, revision, "watch cache started");
        let task = tokio::spawn(run(self.shared.clone(), stream));
        *self.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(())
    }
}

impl Drop for WatchCache {
    fn drop(&mut self) {
        // The task holds the shared state (and so the broadcast sender); once it is gone
        // the subscribers' feeds close and their streams end.
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends an event to the window and hands it to the live feed, atomically.
    fn publish(&self, event: WatchEvent) {
        let mut state = self.lock();
        // A re-established watch starts after `latest`; anything older is a duplicate.
        if event.revision < state.latest {
            return;
        }
        let event = Arc::new(event);
        state.events.push_back(event.clone());
        if state.events.len() > self.capacity {
            if let Some(oldest) = state.events.pop_front() {
                state.window_start = oldest.revision;
            }
        }
        state.latest = event.revision;
        self.latest.store(event.revision, Ordering::SeqCst);
        // No receiver is fine: nobody is watching right now.
        let _ = state.tx.send(Message::Event(event));
    }

    /// Forgets all history: current subscribers end with `Compacted`, and until the cache
    /// restarts every subscriber is served by its own etcd watch.
    fn reset(&self, compacted: i64) {
        let mut state = self.lock();
        state.events.clear();
        state.window_start = i64::MAX;
        let _ = state.tx.send(Message::Reset { compacted });
    }

    /// Resumes after a fresh start at `revision`.
    fn restarted(&self, revision: i64) {
        let mut state = self.lock();
        state.events.clear();
        state.window_start = revision;
        state.latest = state.latest.max(revision);
        self.latest.store(state.latest, Ordering::SeqCst);
    }

    /// Re-establishes the etcd watch after it broke, from the last seen revision + 1.
    async fn resume(&self) -> WatchStream {
        let mut delay = RETRY_MIN;
        loop {
            let from = self.lock().latest + 1;
            match self.store.watch(&self.prefix, from).await {
                Ok(stream) => {
                    tracing::info!(prefix = %self.prefix, from, "watch cache re-established its etcd watch");
                    return stream;
                }
                Err(Error::Compacted { compacted, .. }) => {
                    return self.start_fresh(compacted).await
                }
                Err(e) => {
                    tracing::warn!(prefix = %self.prefix, error = %e, retry_in = ?delay, "watch cache cannot re-establish its etcd watch");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Drops the lost history and watches again from the current revision.
    async fn start_fresh(&self, compacted: i64) -> WatchStream {
        tracing::warn!(
            prefix = %self.prefix,
            compacted,
            "watch cache fell behind etcd compaction, ending its watchers and starting afresh"
        );
        self.reset(compacted);
        let mut delay = RETRY_MIN;
        loop {
            let attempt = async {
                let revision = self.store.current_revision().await?;
                let stream = self.store.watch(&self.prefix, revision + 1).await?;
                Ok::<_, Error>((revision, stream))
            };
            match attempt.await {
                Ok((revision, stream)) => {
                    self.restarted(revision);
                    return stream;
                }
                Err(e) => {
                    tracing::warn!(prefix = %self.prefix, error = %e, retry_in = ?delay, "watch cache cannot restart its etcd watch");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
    }
}

/// The watch task: moves events from etcd into the cache, forever.
async fn run(shared: Arc<Shared>, mut stream: WatchStream) {
    loop {
        match stream.next().await {
            Some(Ok(event)) => shared.publish(event),
            Some(Err(Error::Compacted { compacted, .. })) => {
                stream = shared.start_fresh(compacted).await;
            }
            Some(Err(e)) => {
                tracing::warn!(prefix = %shared.prefix, error = %e, "watch cache lost its etcd watch");
                stream = shared.resume().await;
            }
            None => {
                tracing::warn!(prefix = %shared.prefix, "watch cache's etcd watch ended");
                stream = shared.resume().await;
            }
        }
    }
}

/// How far one watcher has read its feed: every event up to this revision that it should
/// see has been returned by its stream. A bookmark carrying this revision is therefore
/// safe; the cache's [`WatchCache::latest_revision`] may be ahead of what the watcher has
/// read.
#[derive(Clone, Debug)]
pub struct Progress(Arc<AtomicI64>);

impl Progress {
    /// The revision read up to.
    pub fn revision(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }

    fn advance(&self, revision: i64) {
        self.0.fetch_max(revision, Ordering::SeqCst);
    }
}

/// One API watcher's view of the cache.
struct Subscriber {
    /// Buffered events it asked for, handed out before the live feed.
    replay: VecDeque<Arc<WatchEvent>>,
    /// The newest revision the replay covers (matching or not): progress once it is out.
    replay_upto: i64,
    rx: broadcast::Receiver<Message>,
    after: i64,
    /// The newest revision this subscriber has been sent or has skipped past (events of
    /// other keys): shared with the watcher for bookmarks.
    progress: Progress,
    key_prefix: String,
    /// Weak, so that a dropped cache closes the feed instead of being kept alive by it.
    shared: Weak<Shared>,
    done: bool,
}

impl Subscriber {
    async fn next(mut self) -> Option<(Result<WatchEvent>, Subscriber)> {
        if self.done {
            return None;
        }
        if let Some(event) = self.replay.pop_front() {
            self.progress.advance(event.revision);
            return Some((Ok((*event).clone()), self));
        }
        self.progress.advance(self.replay_upto);
        loop {
            match self.rx.recv().await {
                Ok(Message::Event(event)) => {
                    // Once the replay is out every event is either returned or skipped,
                    // so progress follows the feed. Events up to `after` are skipped
                    // without counting: the watcher started past them.
                    if event.revision <= self.after {
                        continue;
                    }
                    self.progress.advance(event.revision);
                    if event.key.starts_with(&self.key_prefix) {
                        return Some((Ok((*event).clone()), self));
                    }
                }
                Ok(Message::Reset { compacted }) => {
                    self.done = true;
                    let err = Error::Compacted {
                        requested: self.progress.revision() + 1,
                        compacted,
                    };
                    return Some((Err(err), self));
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    self.done = true;
                    let window = self
                        .shared
                        .upgrade()
                        .map(|s| s.lock().window_start)
                        .unwrap_or(i64::MAX);
                    tracing::debug!(
                        prefix = %self.key_prefix,
                        missed,
                        "watcher fell behind the watch cache, ending it"
                    );
                    let requested = self.progress.revision() + 1;
                    let err = Error::Compacted {
                        requested,
                        compacted: window.max(requested),
                    };
                    return Some((Err(err), self));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::etcd::tests::{test_etcd, TestEtcd};
    use crate::storage::EventKind;
    use bytes::Bytes;
    use tokio::time::{timeout, Instant};

    const PREFIX: &str = "/registry/pods/";

    fn cache(t: &TestEtcd, capacity: usize) -> Arc<WatchCache> {
        WatchCache::new(t.store.clone(), PREFIX.to_string(), capacity)
    }

    /// Writes `n` changes to keys under `ns`; returns the revision of each.
    async fn write(t: &TestEtcd, ns: &str, n: usize) -> Vec<i64> {
        let mut revs = Vec::new();
        for i in 0..n {
            let key = format!("{PREFIX}{ns}/p{}", i % 3);
            let value = Bytes::from(format!("v{i}"));
            let rev = match t.store.get(&key).await.expect("get") {
                None => t.store.create(&key, value).await.expect("create"),
                Some(kv) => t
                    .store
                    .update(&key, value, kv.mod_revision)
                    .await
                    .expect("update"),
            };
            revs.push(rev);
        }
        revs
    }

    /// Reads `n` events, failing after a deadline.
    async fn take(stream: &mut WatchStream, n: usize) -> Vec<WatchEvent> {
        let mut out = Vec::new();
        while out.len() < n {
            match timeout(Duration::from_secs(20), stream.next()).await {
                Ok(Some(Ok(ev))) => out.push(ev),
                other => panic!("after {} events: {other:?}", out.len()),
            }
        }
        out
    }

    fn revisions(events: &[WatchEvent]) -> Vec<i64> {
        events.iter().map(|e| e.revision).collect()
    }

    #[tokio::test]
    async fn two_hundred_subscribers_see_every_event_in_order() {
        let t = test_etcd().await;
        let c = cache(&t, 1000);
        let start = t.store.current_revision().await.expect("rev");
        let mut subs = Vec::new();
        for _ in 0..200 {
            subs.push(c.subscribe(start, PREFIX).await.expect("subscribe"));
        }
        let readers: Vec<_> = subs
            .into_iter()
            .map(|mut s| tokio::spawn(async move { revisions(&take(&mut s, 60).await) }))
            .collect();
        let revs = write(&t, "ns", 60).await;
        for r in readers {
            assert_eq!(r.await.expect("reader"), revs);
        }
        assert_eq!(c.latest_revision(), *revs.last().expect("events"));
    }

    #[tokio::test]
    async fn subscribing_from_an_older_revision_replays_the_buffer() {
        let t = test_etcd().await;
        let c = cache(&t, 100);
        // The first subscriber starts the cache at the current revision.
        let start = t.store.current_revision().await.expect("rev");
        let mut first = c.subscribe(start, PREFIX).await.expect("subscribe");
        let revs = write(&t, "ns", 10).await;
        take(&mut first, 10).await;
        // Resume from the 4th event: 5..10 come from the buffer, then live ones follow.
        let mut late = c.subscribe(revs[3], PREFIX).await.expect("subscribe");
        let more = write(&t, "ns", 5).await;
        let got = take(&mut late, 11).await;
        let mut want = revs[4..].to_vec();
        want.extend(&more);
        assert_eq!(revisions(&got), want);
        // Created / Updated as etcd says.
        assert_eq!(got[0].kind, EventKind::Updated);
        // A subscriber ahead of the cache just waits for newer events.
        let ahead_of = *more.last().expect("events") + 1;
        let mut ahead = c.subscribe(ahead_of, PREFIX).await.expect("subscribe");
        let newer = write(&t, "ns", 3).await;
        assert_eq!(revisions(&take(&mut ahead, 2).await), newer[1..].to_vec());
    }

    #[tokio::test]
    async fn namespace_subprefix_filters_events() {
        let t = test_etcd().await;
        let c = cache(&t, 100);
        let start = t.store.current_revision().await.expect("rev");
        let mut a = c.subscribe(start, "/registry/pods/a/").await.expect("a");
        let mut all = c.subscribe(start, PREFIX).await.expect("all");
        let ra = write(&t, "a", 3).await;
        let rb = write(&t, "b", 3).await;
        let ra2 = write(&t, "a", 2).await;
        let got = take(&mut a, 5).await;
        assert!(got.iter().all(|e| e.key.starts_with("/registry/pods/a/")));
        assert_eq!(revisions(&got), [ra.clone(), ra2].concat());
        assert_eq!(take(&mut all, 8).await.len(), 8);
        // The same filter applies to the replay.
        let mut b = c.subscribe(start, "/registry/pods/b/").await.expect("b");
        assert_eq!(revisions(&take(&mut b, 3).await), rb);
        let err = c.subscribe(start, "/registry/services/").await.err();
        assert!(matches!(err, Some(Error::Internal(_))), "{err:?}");
    }

    #[tokio::test]
    async fn progress_follows_skipped_events_of_other_namespaces() {
        let t = test_etcd().await;
        let c = cache(&t, 100);
        let start = t.store.current_revision().await.expect("rev");
        let (mut a, progress) = c
            .subscribe_with_progress(start, "/registry/pods/a/")
            .await
            .expect("subscribe");
        assert_eq!(progress.revision(), start);
        let ra = write(&t, "a", 2).await;
        let rb = write(&t, "b", 3).await;
        let got = take(&mut a, 2).await;
        assert_eq!(revisions(&got), ra);
        // Nothing more for namespace a, but reading past b's events moves progress on.
        let deadline = Instant::now() + Duration::from_secs(20);
        while progress.revision() < rb[2] {
            assert!(
                Instant::now() < deadline,
                "progress stuck at {}",
                progress.revision()
            );
            let next = timeout(Duration::from_millis(50), a.next()).await;
            assert!(next.is_err(), "unexpected item {next:?}");
        }
        assert_eq!(progress.revision(), rb[2]);
        assert_eq!(c.latest_revision(), rb[2]);
        // A late subscriber's progress covers the skipped part of its replay.
        let (mut late, progress) = c
            .subscribe_with_progress(start, "/registry/pods/a/")
            .await
            .expect("subscribe");
        assert_eq!(revisions(&take(&mut late, 2).await), ra);
        let next = timeout(Duration::from_millis(50), late.next()).await;
        assert!(next.is_err(), "unexpected item {next:?}");
        assert_eq!(progress.revision(), rb[2]);
    }

    #[tokio::test]
    async fn subscriber_older_than_the_window_watches_etcd_directly() {
        let t = test_etcd().await;
        let c = cache(&t, 4);
        let start = t.store.current_revision().await.expect("rev");
        // Read along, or this subscriber would lag behind the 4-slot feed.
        let mut live = c.subscribe(start, PREFIX).await.expect("subscribe");
        let reader = tokio::spawn(async move { revisions(&take(&mut live, 12).await) });
        let revs = write(&t, "ns", 12).await;
        assert_eq!(reader.await.expect("reader"), revs);
        // Only the last 4 events are buffered; from the start needs etcd's history.
        let mut old = c.subscribe(start, PREFIX).await.expect("subscribe");
        assert_eq!(revisions(&take(&mut old, 12).await), revs);
        // Once etcd has compacted that history, the answer is Compacted.
        t.store.compact(revs[8]).await.expect("compact");
        let mut gone = c.subscribe(start, PREFIX).await.expect("subscribe");
        match timeout(Duration::from_secs(20), gone.next()).await {
            Ok(Some(Err(Error::Compacted { compacted, .. }))) => assert_eq!(compacted, revs[8]),
            other => panic!("expected Compacted, got {other:?}"),
        }
        // Still inside the window: served from memory even though etcd compacted.
        let mut recent = c.subscribe(revs[8], PREFIX).await.expect("subscribe");
        assert_eq!(revisions(&take(&mut recent, 3).await), revs[9..].to_vec());
    }

    #[tokio::test]
    async fn a_lagging_subscriber_is_ended_with_compacted() {
        let t = test_etcd().await;
        let c = cache(&t, 8);
        let start = t.store.current_revision().await.expect("rev");
        let mut slow = c.subscribe(start, PREFIX).await.expect("subscribe");
        let mut fast = c.subscribe(start, PREFIX).await.expect("subscribe");
        let reader = tokio::spawn(async move { revisions(&take(&mut fast, 40).await) });
        let revs = write(&t, "ns", 40).await;
        assert_eq!(reader.await.expect("fast reader"), revs);
        // The slow one never read: it lost events and must re-list.
        let mut saw_error = false;
        while let Some(item) = timeout(Duration::from_secs(20), slow.next())
            .await
            .expect("slow subscriber ends")
        {
            match item {
                Ok(_) => assert!(!saw_error, "events after the error"),
                Err(Error::Compacted { .. }) => saw_error = true,
                Err(e) => panic!("unexpected error {e:?}"),
            }
        }
        assert!(saw_error);
    }

    #[tokio::test]
    async fn cache_survives_an_etcd_restart() {
        let t = test_etcd().await;
        let c = cache(&t, 100);
        let start = t.store.current_revision().await.expect("rev");
        let mut sub = c.subscribe(start, PREFIX).await.expect("subscribe");
        let before = write(&t, "ns", 3).await;
        t.etcd.restart().await.expect("restart etcd");
        // Writes right after the restart may need the client to reconnect first.
        let deadline = Instant::now() + Duration::from_secs(30);
        let after = loop {
            let attempt = t
                .store
                .create(&format!("{PREFIX}ns/after"), Bytes::from("x"))
                .await;
            match attempt {
                Ok(rev) => break rev,
                Err(e) => {
                    assert!(Instant::now() < deadline, "etcd not back: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let more = write(&t, "ns", 3).await;
        let got = take(&mut sub, 7).await;
        assert_eq!(revisions(&got), [before, vec![after], more].concat());
    }

    /// A store whose watches the test can break, and whose new watches it can hold back,
    /// to put the cache's resume point behind a compaction deterministically.
    struct Flaky {
        inner: Arc<crate::storage::EtcdStore>,
        /// Bumped to end every open watch stream.
        breaker: tokio::sync::watch::Sender<u64>,
        /// While true, new watches wait.
        paused: tokio::sync::watch::Sender<bool>,
    }

    #[async_trait::async_trait]
    impl Store for Flaky {
        async fn get(&self, key: &str) -> Result<Option<crate::storage::KeyValue>> {
            self.inner.get(key).await
        }
        async fn list(
            &self,
            prefix: &str,
            opts: &crate::storage::ListOptions,
        ) -> Result<crate::storage::ListResult> {
            self.inner.list(prefix, opts).await
        }
        async fn count(&self, prefix: &str) -> Result<i64> {
            self.inner.count(prefix).await
        }
        async fn create(&self, key: &str, value: Bytes) -> Result<i64> {
            self.inner.create(key, value).await
        }
        async fn update(&self, key: &str, value: Bytes, expected: i64) -> Result<i64> {
            self.inner.update(key, value, expected).await
        }
        async fn delete(
            &self,
            key: &str,
            expected: Option<i64>,
        ) -> Result<(crate::storage::KeyValue, i64)> {
            self.inner.delete(key, expected).await
        }
        async fn watch(&self, prefix: &str, start_revision: i64) -> Result<WatchStream> {
            let mut paused = self.paused.subscribe();
            let _ = paused.wait_for(|p| !*p).await;
            let mut broken = self.breaker.subscribe();
            let stream = self.inner.watch(prefix, start_revision).await?;
            Ok(stream
                .take_until(async move {
                    let _ = broken.changed().await;
                })
                .boxed())
        }
        async fn current_revision(&self) -> Result<i64> {
            self.inner.current_revision().await
        }
        async fn compact(&self, revision: i64) -> Result<()> {
            self.inner.compact(revision).await
        }
        fn compacted_revision(&self) -> i64 {
            self.inner.compacted_revision()
        }
    }

    #[tokio::test]
    async fn cache_behind_compaction_ends_subscribers_and_restarts() {
        let t = test_etcd().await;
        let flaky = Arc::new(Flaky {
            inner: t.store.clone(),
            breaker: tokio::sync::watch::channel(0).0,
            paused: tokio::sync::watch::channel(false).0,
        });
        let c = WatchCache::new(flaky.clone(), PREFIX.to_string(), 100);
        let start = t.store.current_revision().await.expect("rev");
        let mut sub = c.subscribe(start, PREFIX).await.expect("subscribe");
        let first = write(&t, "ns", 2).await;
        assert_eq!(revisions(&take(&mut sub, 2).await), first);

        // Break the cache's watch and hold its re-watch while history moves on and is
        // compacted away.
        flaky.paused.send_replace(true);
        flaky.breaker.send_modify(|n| *n += 1);
        let lost = write(&t, "ns", 3).await;
        t.store.compact(lost[2]).await.expect("compact");
        flaky.paused.send_replace(false);

        match timeout(Duration::from_secs(20), sub.next()).await {
            Ok(Some(Err(Error::Compacted { compacted, .. }))) => assert_eq!(compacted, lost[2]),
            other => panic!("expected Compacted, got {other:?}"),
        }
        assert!(sub.next().await.is_none(), "stream ends after Compacted");

        // The cache starts afresh: new subscribers from now on get live events.
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.latest_revision() < lost[2] {
            assert!(Instant::now() < deadline, "cache did not restart");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let now = t.store.current_revision().await.expect("rev");
        let mut again = c.subscribe(now, PREFIX).await.expect("subscribe");
        let last = write(&t, "ns", 2).await;
        assert_eq!(revisions(&take(&mut again, 2).await), last);
        // A watcher resuming inside the lost stretch is told to re-list by etcd.
        let mut stale = c.subscribe(first[1], PREFIX).await.expect("subscribe");
        match timeout(Duration::from_secs(20), stale.next()).await {
            Ok(Some(Err(Error::Compacted { .. }))) => {}
            other => panic!("expected Compacted, got {other:?}"),
        }
    }
}
