//! One watch of a resource shared by several controllers, as kube-controller-manager's
//! shared informers are.
//!
//! Every pod change reaches the ReplicaSet, DaemonSet, Endpoints and EndpointSlice
//! controllers. With a watch each, the API server sent every event four times and this
//! process parsed it four times; a [`SharedWatch`] holds one watch and hands each
//! subscriber the same parsed object (`Arc`).
//!
//! A subscriber sees what its own `kube::runtime::watcher` would have shown: the
//! current objects first (`Init`, `InitApply`…, `InitDone`), then changes. The watch
//! task records each event and broadcasts it under one lock, and a subscriber copies
//! the record and joins the broadcast under that same lock, so it misses nothing and
//! sees nothing twice. A subscriber that falls more than [`CAPACITY`] events behind is
//! given the current objects again as a re-list, which watcher consumers already handle
//! (a relist after a broken watch looks the same).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use futures::{Stream, StreamExt};
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Resource;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

/// Events a subscriber may fall behind before it is given a re-list. Events are `Arc`s,
/// so this bounds pointers, not objects.
pub const CAPACITY: usize = 65_536;

/// A watch of one resource, shared by its subscribers. Cloning shares it too.
pub struct SharedWatch<K> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for SharedWatch<K> {
    fn clone(&self) -> Self {
        SharedWatch {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<K> {
    state: Mutex<State<K>>,
}

struct State<K> {
    /// The objects as of the last completed list and the changes since, by namespace/name.
    objects: HashMap<String, Arc<K>>,
    /// While a (re)list is under way: what it has delivered so far.
    listing: Option<HashMap<String, Arc<K>>>,
    /// Whether a list has completed.
    listed: bool,
    /// The live feed; sent to only under the state lock.
    tx: broadcast::Sender<Event<Arc<K>>>,
}

impl<K: Resource> State<K> {
    fn record(&mut self, event: &Event<Arc<K>>) {
        match event {
            Event::Init => self.listing = Some(HashMap::new()),
            Event::InitApply(obj) => {
                self.listing
                    .get_or_insert_with(HashMap::new)
                    .insert(key(obj.as_ref()), obj.clone());
            }
            Event::InitDone => {
                self.objects = self.listing.take().unwrap_or_default();
                self.listed = true;
            }
            Event::Apply(obj) => {
                self.objects.insert(key(obj.as_ref()), obj.clone());
            }
            Event::Delete(obj) => {
                self.objects.remove(&key(obj.as_ref()));
            }
        }
    }

    /// What a subscriber joining now must be shown before the live feed: the list in
    /// progress so far (its rest comes live), else the current objects as a list.
    fn replay(&self) -> VecDeque<Event<Arc<K>>> {
        let mut events = VecDeque::new();
        if let Some(listing) = &self.listing {
            events.push_back(Event::Init);
            events.extend(listing.values().cloned().map(Event::InitApply));
        } else if self.listed {
            events.push_back(Event::Init);
            events.extend(self.objects.values().cloned().map(Event::InitApply));
            events.push_back(Event::InitDone);
        }
        events
    }
}

fn key<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or(""),
        obj.meta().name.as_deref().unwrap_or("")
    )
}

impl<K> SharedWatch<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    /// Starts watching `api`; the watch runs until the last handle is dropped and its
    /// next event arrives.
    pub fn start(api: Api<K>, config: watcher::Config) -> SharedWatch<K> {
        let stream = watcher::watcher(api, config).default_backoff().boxed();
        SharedWatch::from_stream(stream, CAPACITY)
    }
}

impl<K> SharedWatch<K>
where
    K: Resource + Clone + Send + Sync + 'static,
{
    /// Shares the events of `stream` (a watcher's), holding up to `capacity` for
    /// subscribers that fall behind.
    fn from_stream<S>(stream: S, capacity: usize) -> SharedWatch<K>
    where
        S: Stream<Item = Result<Event<K>, watcher::Error>> + Unpin + Send + 'static,
    {
        let (tx, _) = broadcast::channel(capacity);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                objects: HashMap::new(),
                listing: None,
                listed: false,
                tx,
            }),
        });
        tokio::spawn(run(Arc::downgrade(&shared), stream));
        SharedWatch { shared }
    }

    /// The watch's events from now on, after the current objects as a list.
    pub fn subscribe(&self) -> impl Stream<Item = Event<Arc<K>>> + Send + 'static {
        let shared = self.shared.clone();
        let (pending, rx) = join(&shared);
        futures::stream::unfold(
            (pending, rx, shared),
            |(mut pending, mut rx, shared)| async move {
                loop {
                    if let Some(event) = pending.pop_front() {
                        return Some((event, (pending, rx, shared)));
                    }
                    match rx.recv().await {
                        Ok(event) => return Some((event, (pending, rx, shared))),
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::warn!(
                                kind = std::any::type_name::<K>(),
                                missed,
                                "a shared watch's subscriber fell behind; it lists again"
                            );
                            (pending, rx) = join(&shared);
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            },
        )
    }

    /// The objects the watch touches (applied, listed or deleted), each as its own
    /// copy: what `kube::runtime::Controller::watches_stream`/`owns_stream` take.
    pub fn touched(&self) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static {
        self.subscribe().filter_map(|event| async move {
            match event {
                Event::Apply(obj) | Event::InitApply(obj) | Event::Delete(obj) => {
                    Some(Ok(K::clone(&obj)))
                }
                Event::Init | Event::InitDone => None,
            }
        })
    }
}

impl<K: Resource> Shared<K> {
    fn lock(&self) -> MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A subscriber's end of the live feed.
type Feed<K> = broadcast::Receiver<Event<Arc<K>>>;

/// The replay and the live feed, taken under one lock.
fn join<K: Resource>(shared: &Shared<K>) -> (VecDeque<Event<Arc<K>>>, Feed<K>) {
    let state = shared.lock();
    (state.replay(), state.tx.subscribe())
}

async fn run<K, S>(shared: Weak<Shared<K>>, mut stream: S)
where
    K: Resource,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Unpin,
{
    while let Some(event) = stream.next().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(kind = std::any::type_name::<K>(), error = %e, "shared watch failed; retrying");
                continue;
            }
        };
        let event = match event {
            Event::Init => Event::Init,
            Event::InitApply(obj) => Event::InitApply(Arc::new(obj)),
            Event::InitDone => Event::InitDone,
            Event::Apply(obj) => Event::Apply(Arc::new(obj)),
            Event::Delete(obj) => Event::Delete(Arc::new(obj)),
        };
        let mut state = shared.lock();
        state.record(&event);
        // No subscriber yet is fine: they get the record when they join.
        let _ = state.tx.send(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use kube::ResourceExt;

    fn pod(name: &str, node: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"nodeName": node, "containers": []},
        }))
        .unwrap()
    }

    /// A watch fed from a channel instead of an API server.
    fn fed() -> (
        SharedWatch<Pod>,
        tokio::sync::mpsc::UnboundedSender<Event<Pod>>,
    ) {
        let (feed, rx) = tokio::sync::mpsc::unbounded_channel();
        let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(Ok);
        (SharedWatch::from_stream(stream, 8), feed)
    }

    fn describe(event: &Event<Arc<Pod>>) -> String {
        match event {
            Event::Init => "init".into(),
            Event::InitDone => "done".into(),
            Event::InitApply(p) => format!("list {}", p.name_any()),
            Event::Apply(p) => format!(
                "apply {} {}",
                p.name_any(),
                p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default()
            ),
            Event::Delete(p) => format!("delete {}", p.name_any()),
        }
    }

    async fn next(s: &mut (impl Stream<Item = Event<Arc<Pod>>> + Unpin)) -> String {
        let event = tokio::time::timeout(std::time::Duration::from_secs(5), s.next())
            .await
            .expect("an event")
            .expect("the stream goes on");
        describe(&event)
    }

    #[tokio::test]
    async fn late_subscribers_see_the_current_objects_then_changes() {
        let (watch, feed) = fed();
        let mut early = Box::pin(watch.subscribe());
        feed.send(Event::Init).unwrap();
        feed.send(Event::InitApply(pod("a", ""))).unwrap();
        assert_eq!(next(&mut early).await, "init");
        assert_eq!(next(&mut early).await, "list a");
        // Joining mid-list: what was listed so far, the rest comes live.
        let mut mid = Box::pin(watch.subscribe());
        feed.send(Event::InitApply(pod("b", ""))).unwrap();
        feed.send(Event::InitDone).unwrap();
        feed.send(Event::Apply(pod("a", "n1"))).unwrap();
        feed.send(Event::Delete(pod("b", ""))).unwrap();
        for s in [&mut early] {
            assert_eq!(next(s).await, "list b");
            assert_eq!(next(s).await, "done");
            assert_eq!(next(s).await, "apply a n1");
            assert_eq!(next(s).await, "delete b");
        }
        assert_eq!(next(&mut mid).await, "init");
        assert_eq!(next(&mut mid).await, "list a");
        assert_eq!(next(&mut mid).await, "list b");
        assert_eq!(next(&mut mid).await, "done");
        assert_eq!(next(&mut mid).await, "apply a n1");
        assert_eq!(next(&mut mid).await, "delete b");
        // Joining later: the current state as a list (a on n1; b gone), then changes.
        feed.send(Event::Apply(pod("c", ""))).unwrap();
        assert_eq!(next(&mut early).await, "apply c ");
        let mut late = Box::pin(watch.subscribe());
        let mut listed = vec![next(&mut late).await];
        for _ in 0..3 {
            listed.push(next(&mut late).await);
        }
        listed[1..3].sort();
        assert_eq!(listed, ["init", "list a", "list c", "done"]);
        feed.send(Event::Apply(pod("c", "n2"))).unwrap();
        assert_eq!(next(&mut late).await, "apply c n2");
        assert_eq!(next(&mut early).await, "apply c n2");
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_lists_again() {
        let (watch, feed) = fed();
        let mut slow = Box::pin(watch.subscribe());
        feed.send(Event::Init).unwrap();
        feed.send(Event::InitDone).unwrap();
        assert_eq!(next(&mut slow).await, "init");
        // More changes than the channel holds (8 in this test) while it does not read.
        for i in 0..20 {
            feed.send(Event::Apply(pod(&format!("p{i:02}"), "")))
                .unwrap();
        }
        // Wait until the watch task has taken them all in.
        let mut probe = Box::pin(watch.subscribe());
        loop {
            let mut seen = 0;
            assert_eq!(next(&mut probe).await, "init");
            loop {
                if next(&mut probe).await == "done" {
                    break;
                }
                seen += 1;
            }
            if seen == 20 {
                break;
            }
            probe = Box::pin(watch.subscribe());
            tokio::task::yield_now().await;
        }
        // The slow one lost events: it gets every current object as a fresh list.
        let mut events = Vec::new();
        loop {
            let e = next(&mut slow).await;
            let done = e == "done";
            events.push(e);
            if done {
                break;
            }
        }
        let init = events.iter().rposition(|e| e == "init").expect("a re-list");
        let listed: std::collections::BTreeSet<&String> =
            events[init + 1..events.len() - 1].iter().collect();
        assert_eq!(listed.len(), 20, "{events:?}");
    }
}
