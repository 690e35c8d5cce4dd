//! Watch: the newline-framed event stream (`{"type":…,"object":…}` per line).
//!
//! A watch starting with no resourceVersion (or "0") first sends the current objects as
//! synthetic ADDED events; one starting at N sends only changes after N. Events come from
//! the resource's [`WatchCache`](crate::storage::WatchCache), so all watchers of a
//! resource share one etcd watch. With selectors, an object that stops matching is sent
//! as DELETED and one that starts matching as ADDED, as Kubernetes does.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::objects::{
    decode_stored, metadata_with_resource_version, with_resource_version, ListParams, Objects,
};
use super::output::{self, Format};
use super::status::{ApiError, ApiResult};
use crate::metrics::WatchGuard;
use crate::registry::{projection, Projection, ResourceDef};
use crate::storage::{self, EventKind};

/// What a watch request asked for.
pub struct WatchRequest {
    pub def: Arc<ResourceDef>,
    pub namespace: Option<String>,
    pub params: ListParams,
    pub format: Format,
    pub bookmarks: bool,
    pub timeout: Option<Duration>,
    pub bookmark_interval: Duration,
}

fn line(kind: &str, object: Value) -> Bytes {
    let mut buf = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    buf.push(b'\n');
    Bytes::from(buf)
}

/// An event line with the stored text spliced in as the object: no parse and no
/// re-encoding, which is most of a watch's cost when many clients watch one resource.
fn raw_line(kind: &str, stored: &[u8], revision: i64) -> Option<Bytes> {
    let object = with_resource_version(stored, revision)?;
    let mut buf = Vec::with_capacity(object.len() + kind.len() + 24);
    buf.extend_from_slice(b"{\"type\":\"");
    buf.extend_from_slice(kind.as_bytes());
    buf.extend_from_slice(b"\",\"object\":");
    buf.extend_from_slice(&object);
    buf.extend_from_slice(b"}\n");
    Some(Bytes::from(buf))
}

/// A PartialObjectMetadata event line cut from the stored text (its `metadata` object
/// with the resourceVersion spliced in): a metadata-only watcher, the garbage
/// collector's, costs no parse per event either.
fn raw_metadata_line(kind: &str, stored: &[u8], revision: i64) -> Option<Bytes> {
    let metadata = metadata_with_resource_version(stored, revision)?;
    let mut buf = Vec::with_capacity(metadata.len() + kind.len() + 96);
    buf.extend_from_slice(b"{\"type\":\"");
    buf.extend_from_slice(kind.as_bytes());
    buf.extend_from_slice(
        b"\",\"object\":{\"kind\":\"PartialObjectMetadata\",\"apiVersion\":\"meta.k8s.io/v1\",\"metadata\":",
    );
    buf.extend_from_slice(&metadata);
    buf.extend_from_slice(b"}}\n");
    Some(Bytes::from(buf))
}

/// Starts a watch; the returned stream is the response body.
pub async fn start(
    objects: Arc<Objects>,
    req: WatchRequest,
) -> ApiResult<ReceiverStream<Result<Bytes, Infallible>>> {
    let def = req.def.clone();
    let ns = req.namespace.clone();
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(256);

    let rv = req
        .params
        .resource_version
        .clone()
        .filter(|s| !s.is_empty() && s != "0");
    let mut initial = Vec::new();
    let start_rev = match rv {
        Some(rv) => rv
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))?,
        None => {
            let mut params = req.params.clone();
            params.limit = None;
            params.continue_token = None;
            params.resource_version = None;
            let (items, meta) = objects.list(&def, ns.as_deref(), &params).await?;
            initial = items;
            meta["resourceVersion"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0)
        }
    };
    // History below the compacted revision is gone from etcd; the cache may still hold
    // some of it, but a watch from there must re-list like any other too-old one.
    let compacted = objects.store.compacted_revision();
    if start_rev > 0 && start_rev < compacted {
        return Err(ApiError::expired(format!(
            "too old resource version: {start_rev} ({compacted})"
        )));
    }
    let cache = objects.cache(&def);
    let prefix = def.namespace_prefix(ns.as_deref());
    let subscription = cache.subscribe_with_progress(start_rev, &prefix).await;

    let timeout = req
        .timeout
        .unwrap_or_else(|| Duration::from_secs(rand::rng().random_range(1800..3600)));
    tokio::spawn(async move {
        let _guard = WatchGuard::new();
        let format = req.format;
        for obj in initial {
            if tx
                .send(Ok(line("ADDED", output::object(&def, obj, format))))
                .await
                .is_err()
            {
                return;
            }
        }
        let (mut events, progress) = match subscription {
            Ok(s) => s,
            Err(e) => {
                let status = ApiError::from(e).to_status();
                let _ = tx.send(Ok(line("ERROR", status))).await;
                return;
            }
        };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut bookmark = tokio::time::interval(req.bookmark_interval);
        bookmark.tick().await;
        let mut last_rev = start_rev;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = bookmark.tick(), if req.bookmarks => {
                    // Only a revision this watcher has fully read is safe to resume
                    // from; the cache's newest may still be queued for it.
                    let rev = last_rev.max(progress.revision());
                    let obj = json!({
                        "kind": def.kind,
                        "apiVersion": def.api_version(),
                        "metadata": {"resourceVersion": rev.to_string()},
                    });
                    if tx.send(Ok(line("BOOKMARK", obj))).await.is_err() {
                        return;
                    }
                }
                ev = events.next() => {
                    let ev = match ev {
                        None => return,
                        Some(Err(e)) => {
                            let status = match e {
                                storage::Error::Compacted { .. } => ApiError::from(e),
                                other => ApiError::from(other),
                            };
                            let _ = tx.send(Ok(line("ERROR", status.to_status()))).await;
                            return;
                        }
                        Some(Ok(ev)) => ev,
                    };
                    last_rev = ev.revision;
                    let Some(line) = event_line(&objects, &def, &req.params, format, &ev) else {
                        continue;
                    };
                    if tx.send(Ok(line)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// The line a watcher gets for a storage event in `format`; `None` when the selectors
/// say it should not see it.
fn event_line(
    objects: &Objects,
    def: &ResourceDef,
    params: &ListParams,
    format: Format,
    ev: &storage::WatchEvent,
) -> Option<Bytes> {
    let filtered = params.labels.is_some() || params.fields.is_some();
    if !filtered {
        let line = match format {
            Format::Json => raw_line(plain_kind(ev.kind), &ev.value, ev.revision),
            Format::PartialMetadata => {
                raw_metadata_line(plain_kind(ev.kind), &ev.value, ev.revision)
            }
            Format::Table(_) => None,
        };
        if line.is_some() {
            return line;
        }
    }
    let kind = if filtered {
        let decoded = objects
            .decoded_events
            .get(ev, def.strategy.selector_fields())?;
        translate(objects, def, params, ev.kind, &decoded)?
    } else {
        plain_kind(ev.kind)
    };
    if format == Format::Json {
        if let Some(line) = raw_line(kind, &ev.value, ev.revision) {
            return Some(line);
        }
    }
    // What was decoded is only what the selectors read; the response needs the object.
    let now = decode_stored(&ev.value, ev.revision).ok()?;
    let object = match format {
        // Metadata-only watchers (the garbage collector's) get no copy of the whole object.
        Format::PartialMetadata => output::partial_metadata(&now),
        _ => output::object(def, now, format),
    };
    Some(line(kind, object))
}

/// The watch event type of an unfiltered storage event.
fn plain_kind(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Created => "ADDED",
        EventKind::Updated => "MODIFIED",
        EventKind::Deleted => "DELETED",
    }
}

/// Applies a watcher's selectors to the old and new state of an event: the watch event
/// type to send (an object entering the selection is ADDED, one leaving it DELETED),
/// `None` when the watcher should not see it.
fn translate(
    objects: &Objects,
    def: &ResourceDef,
    params: &ListParams,
    kind: EventKind,
    decoded: &Decoded,
) -> Option<&'static str> {
    let now_matches = objects.matches(def, &decoded.now, params).unwrap_or(false);
    let before_matches = decoded
        .before
        .as_ref()
        .is_some_and(|prev| objects.matches(def, prev, params).unwrap_or(false));
    match kind {
        EventKind::Created => now_matches.then_some("ADDED"),
        EventKind::Deleted => now_matches.then_some("DELETED"),
        EventKind::Updated => match (before_matches, now_matches) {
            (true, true) => Some("MODIFIED"),
            (false, true) => Some("ADDED"),
            (true, false) => Some("DELETED"),
            (false, false) => None,
        },
    }
}

/// A storage event's objects, decoded.
pub(crate) struct Decoded {
    /// The object after the change (before it, for a deletion).
    now: Value,
    /// The object before an update.
    before: Option<Value>,
}

/// How many recent events keep their decoded objects.
const DECODED_EVENTS: usize = 512;

/// The decoded objects of the most recent watch events, by revision. Every watcher with
/// selectors must look inside each event's object (and the one before it) to decide
/// whether to send it; with many such watchers — an agent per node, each watching its
/// own pods — decoding once per event rather than once per watcher is what keeps a
/// pod's change from costing the server a parse per node. Watchers far behind the
/// others decode for themselves.
#[derive(Default)]
pub(crate) struct DecodedEvents {
    recent: std::sync::Mutex<std::collections::VecDeque<(i64, String, Arc<Decoded>)>>,
}

impl DecodedEvents {
    /// The objects of `ev` decoded as far as `fields` (what the resource's selectors
    /// read); `None` if the stored text is not an object.
    fn get(&self, ev: &storage::WatchEvent, fields: &Projection) -> Option<Arc<Decoded>> {
        let find = |recent: &std::collections::VecDeque<(i64, String, Arc<Decoded>)>| {
            recent
                .iter()
                .rev()
                .find(|(rev, key, _)| *rev == ev.revision && *key == ev.key)
                .map(|(_, _, d)| d.clone())
        };
        if let Some(d) = find(&self.lock()) {
            return Some(d);
        }
        // Decoded outside the lock: the other watchers go on meanwhile (one of them may
        // decode the same event too; the first one stored wins).
        let now = projection::decode(&ev.value, fields).ok()?;
        let before = match (ev.kind, &ev.prev_value) {
            // An unreadable old state matches no selector, as if there were none.
            (EventKind::Updated, Some(prev)) => projection::decode(prev, fields).ok(),
            _ => None,
        };
        let decoded = Arc::new(Decoded { now, before });
        let mut recent = self.lock();
        if let Some(d) = find(&recent) {
            return Some(d);
        }
        // Events arrive in revision order per resource, not across resources: keep the
        // deque roughly ordered by inserting at the end and evicting the oldest.
        if recent.len() >= DECODED_EVENTS {
            recent.pop_front();
        }
        recent.push_back((ev.revision, ev.key.clone(), decoded.clone()));
        Some(decoded)
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::VecDeque<(i64, String, Arc<Decoded>)>> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_metadata_lines_are_the_same_as_encoded_ones() {
        let stored = br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a","labels":{"x":"}{\"]"},"managedFields":[{"manager":"m"}]},"spec":{"x":[1,2]}}"#;
        let raw = raw_metadata_line("ADDED", stored, 42).expect("a line");
        assert_eq!(raw.last(), Some(&b'\n'));
        let decoded = decode_stored(stored, 42).expect("decodes");
        let encoded = line(
            "ADDED",
            crate::apiserver::output::partial_metadata(&decoded),
        );
        let a: Value = serde_json::from_slice(&raw).expect("raw line is JSON");
        let b: Value = serde_json::from_slice(&encoded).expect("encoded line is JSON");
        assert_eq!(a, b);
        assert_eq!(a["object"]["metadata"]["resourceVersion"], "42");
        assert_eq!(a["object"]["metadata"]["labels"]["x"], "}{\"]");
        assert!(a["object"].get("spec").is_none());
        let empty = raw_metadata_line("ADDED", br#"{"metadata":{},"spec":{}}"#, 7).expect("line");
        let e: Value = serde_json::from_slice(&empty).expect("JSON");
        assert_eq!(
            e["object"]["metadata"],
            serde_json::json!({"resourceVersion": "7"})
        );
        assert!(raw_metadata_line("ADDED", br#"{"metadata":{"name":"cut"#, 7).is_none());
    }

    #[test]
    fn raw_lines_are_the_same_events_as_encoded_ones() {
        let stored = br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a","namespace":"n"},"spec":{"x":[1,2]}}"#;
        let raw = raw_line("MODIFIED", stored, 42).expect("a line");
        assert_eq!(raw.last(), Some(&b'\n'));
        let decoded = decode_stored(stored, 42).expect("decodes");
        let encoded = line("MODIFIED", decoded);
        let a: Value = serde_json::from_slice(&raw).expect("raw line is JSON");
        let b: Value = serde_json::from_slice(&encoded).expect("encoded line is JSON");
        assert_eq!(a, b);
        assert_eq!(a["object"]["metadata"]["resourceVersion"], "42");
        assert_eq!(plain_kind(EventKind::Deleted), "DELETED");
    }

    fn event(kind: EventKind, key: &str, revision: i64, node: &str) -> storage::WatchEvent {
        let obj = |n: &str| {
            Bytes::from(format!(
                r#"{{"kind":"Pod","metadata":{{"name":"{key}"}},"spec":{{"nodeName":"{n}"}}}}"#
            ))
        };
        storage::WatchEvent {
            kind,
            key: key.to_string(),
            value: obj(node),
            prev_value: (kind == EventKind::Updated).then(|| obj("")),
            revision,
        }
    }

    /// What the selectors of these tests read.
    static FIELDS: Projection = Projection::Keys(&[
        ("metadata", Projection::Keys(&[("name", Projection::All)])),
        ("spec", Projection::Keys(&[("nodeName", Projection::All)])),
    ]);

    #[test]
    fn an_event_is_decoded_once_for_every_watcher() {
        let memo = DecodedEvents::default();
        let ev = event(EventKind::Updated, "a", 7, "n1");
        let first = memo.get(&ev, &FIELDS).expect("decodes");
        let again = memo.get(&ev, &FIELDS).expect("decodes");
        assert!(
            Arc::ptr_eq(&first, &again),
            "the second watcher reuses the first's"
        );
        assert_eq!(first.now["spec"]["nodeName"], "n1");
        assert!(first.now.get("kind").is_none(), "only what selectors read");
        assert_eq!(
            first.before.as_ref().expect("old state")["spec"]["nodeName"],
            ""
        );
        // Another key at the same revision is another object.
        let other = memo
            .get(&event(EventKind::Created, "b", 7, "n2"), &FIELDS)
            .expect("decodes");
        assert_eq!(other.now["metadata"]["name"], "b");
        assert!(other.before.is_none());
        // Old events fall out; they are still decoded, just not shared.
        for rev in 8..8 + DECODED_EVENTS as i64 {
            memo.get(&event(EventKind::Created, "c", rev, "n"), &FIELDS)
                .expect("decodes");
        }
        let late = memo.get(&ev, &FIELDS).expect("decodes");
        assert!(!Arc::ptr_eq(&first, &late));
        assert_eq!(late.now, first.now);
        let broken = storage::WatchEvent {
            value: Bytes::from_static(b"not json"),
            ..event(EventKind::Created, "d", 9999, "n")
        };
        assert!(memo.get(&broken, &FIELDS).is_none());
    }
}
