//! Writing container output into CRI log files, with rotation and per-restart retention.
//!
//! A [`ContainerLog`] is one run (restart) of one container. Its two sinks split what the
//! guest writes into lines per stream and append each line as one record under one lock,
//! so stdout and stderr never interleave inside a line. A line longer than
//! [`LogLimits::max_line_bytes`] is cut into `P` records; what is left without a newline
//! when the run ends is written as a final `F` record.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use chrono::Utc;
use tokio::sync::Notify;

use super::cri::{self, Stream};
use super::reader::{self, LogOptions, LogStream};
use super::{check_name, done_name, list_dir, live_name, pod_dir_name, LogError, LogFile};
use crate::wasm::OutputSink;

/// Size limits of a container's logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// A file rotates before a record would take it past this size (the kubelet's
    /// `containerLogMaxSize`, 10 MiB).
    pub max_file_bytes: u64,
    /// Files kept per restart, the live one included (`containerLogMaxFiles`, 5).
    pub max_files: usize,
    /// Longer lines are split into partial records (containerd's 16 KiB).
    pub max_line_bytes: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            max_file_bytes: 10 * 1024 * 1024,
            max_files: 5,
            max_line_bytes: 16 * 1024,
        }
    }
}

/// One `Notify` per container directory (see [`LogStore`]).
#[derive(Default)]
struct Notifiers {
    map: BTreeMap<PathBuf, Weak<Notify>>,
    /// The size at which entries nobody holds are swept out.
    sweep_at: usize,
}

/// The node's container logs under one root directory.
pub struct LogStore {
    root: PathBuf,
    limits: LogLimits,
    /// One `Notify` per container directory, shared by its writer and its followers so
    /// that a follower wakes as soon as a line is written. Weak so that an entry lives
    /// only while someone holds it.
    notifiers: Mutex<Notifiers>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("root", &self.root)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl LogStore {
    /// A store under `root` (created when the first log is opened).
    pub fn new(root: impl Into<PathBuf>, limits: LogLimits) -> Self {
        LogStore {
            root: root.into(),
            limits,
            notifiers: Mutex::new(Notifiers::default()),
        }
    }

    /// The directory holding every pod's logs.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn limits(&self) -> LogLimits {
        self.limits
    }

    /// Opens the log of run `restart` of a container, appending if that run already has a
    /// file (an agent that restarted and reopens it). Removes the container's logs of
    /// every other run except `restart - 1`, and a stale end marker of this one.
    ///
    /// One run should have one open `ContainerLog` at a time.
    pub fn open(
        &self,
        namespace: &str,
        pod: &str,
        uid: &str,
        container: &str,
        restart: u32,
    ) -> io::Result<ContainerLog> {
        for (what, value, in_pod_dir) in [
            ("namespace", namespace, true),
            ("pod", pod, true),
            ("uid", uid, true),
            ("container", container, false),
        ] {
            check_name(what, value, in_pod_dir)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        }
        let dir = self
            .root
            .join(pod_dir_name(namespace, pod, uid))
            .join(container);
        std::fs::create_dir_all(&dir)?;
        for file in list_dir(&dir)? {
            let r = file.restart();
            let stale = r != restart && Some(r) != restart.checked_sub(1);
            if stale || file == LogFile::Done(restart) {
                let path = dir.join(file_name(&file));
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        let live = dir.join(live_name(restart));
        let file = open_append(&live)?;
        let size = file.metadata()?.len();
        tracing::debug!(path = %live.display(), size, "opened a container log");
        let notify = self.notifier(&dir);
        Ok(ContainerLog {
            inner: Arc::new(Inner {
                dir,
                restart,
                limits: self.limits,
                notify,
                state: Mutex::new(State {
                    file: Some(file),
                    size,
                    pending: [Vec::new(), Vec::new()],
                    closed: false,
                    failed: false,
                }),
            }),
        })
    }

    /// Removes every log of the pod with this uid, whatever its name (an orphan found
    /// by [`LogStore::pod_uids`]); scans the root, so a pod the caller knows by name is
    /// removed with [`LogStore::remove_pod_named`] instead.
    pub fn remove_pod(&self, uid: &str) -> io::Result<()> {
        check_name("uid", uid, true)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let suffix = format!("_{uid}");
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(&suffix) && name.matches('_').count() == 2 {
                self.remove_pod_dir(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Removes every log of one pod: its directory alone, without looking at the other
    /// pods' (a node that deletes many pods at once does not scan its logs per pod).
    /// The directory holding every log of one pod (it may not exist yet).
    pub fn pod_dir(&self, namespace: &str, pod: &str, uid: &str) -> PathBuf {
        self.root.join(pod_dir_name(namespace, pod, uid))
    }

    pub fn remove_pod_named(&self, namespace: &str, pod: &str, uid: &str) -> io::Result<()> {
        for (what, value) in [("namespace", namespace), ("pod", pod), ("uid", uid)] {
            check_name(what, value, true)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        }
        self.remove_pod_dir(&self.root.join(pod_dir_name(namespace, pod, uid)))
    }

    fn remove_pod_dir(&self, path: &Path) -> io::Result<()> {
        match std::fs::remove_dir_all(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => tracing::debug!(path = %path.display(), "removed a pod's logs"),
        }
        // Followers of this pod stop once they see the directory gone. The map is
        // ordered, so the pod's container directories sit together from `path` on.
        let notifiers = self.lock_notifiers();
        for (_, n) in notifiers
            .map
            .range(path.to_path_buf()..)
            .take_while(|(dir, _)| dir.starts_with(path))
        {
            if let Some(n) = n.upgrade() {
                n.notify_waiters();
            }
        }
        Ok(())
    }

    /// The uids of the pods that have logs here (to find those of pods that are gone).
    pub fn pod_uids(&self) -> io::Result<Vec<String>> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut uids = Vec::new();
        for entry in entries {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            let mut parts = name.split('_');
            if let (Some(_), Some(_), Some(uid), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            {
                if !uid.is_empty() {
                    uids.push(uid.to_string());
                }
            }
        }
        Ok(uids)
    }

    /// Reads a container's logs, waking followers as soon as the writer writes.
    pub async fn read(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        opts: LogOptions,
    ) -> Result<LogStream, LogError> {
        let target = reader::locate(&self.root, namespace, pod, container, opts.previous)?;
        let notify = self.notifier(&target.dir);
        reader::stream(target, opts, Some(notify))
    }

    pub(crate) fn notifier(&self, dir: &Path) -> Arc<Notify> {
        let mut notifiers = self.lock_notifiers();
        if let Some(n) = notifiers.map.get(dir).and_then(Weak::upgrade) {
            return n;
        }
        // Entries nobody holds any more are dropped once the map has doubled since the
        // last sweep: amortised, so opening a log never costs a walk over every pod's.
        if notifiers.map.len() >= notifiers.sweep_at {
            notifiers.map.retain(|_, n| n.strong_count() > 0);
            notifiers.sweep_at = (notifiers.map.len() * 2).max(64);
        }
        let n = Arc::new(Notify::new());
        notifiers.map.insert(dir.to_path_buf(), Arc::downgrade(&n));
        n
    }

    fn lock_notifiers(&self) -> MutexGuard<'_, Notifiers> {
        self.notifiers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One run of one container: hands out its stdout and stderr sinks.
///
/// The run ends — followers stop, a trailing line without newline is written — when
/// [`ContainerLog::close`] is called or when the `ContainerLog` and every sink it
/// handed out are dropped. Output written after that is discarded.
pub struct ContainerLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ContainerLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerLog")
            .field("dir", &self.inner.dir)
            .field("restart", &self.inner.restart)
            .finish_non_exhaustive()
    }
}

impl ContainerLog {
    pub fn stdout(&self) -> Arc<dyn OutputSink> {
        Arc::new(Sink {
            inner: self.inner.clone(),
            stream: Stream::Stdout,
        })
    }

    pub fn stderr(&self) -> Arc<dyn OutputSink> {
        Arc::new(Sink {
            inner: self.inner.clone(),
            stream: Stream::Stderr,
        })
    }

    /// The live file of this run.
    pub fn path(&self) -> PathBuf {
        self.inner.dir.join(live_name(self.inner.restart))
    }

    /// Ends the run: writes what is left of unfinished lines, then the end marker.
    pub fn close(&self) {
        self.inner.close();
    }
}

struct Inner {
    dir: PathBuf,
    restart: u32,
    limits: LogLimits,
    notify: Arc<Notify>,
    state: Mutex<State>,
}

struct State {
    /// `None` after close, or after the file could not be reopened.
    file: Option<File>,
    /// Bytes in the live file.
    size: u64,
    /// The unfinished line of each stream.
    pending: [Vec<u8>; 2],
    closed: bool,
    /// A write failed; logged once, until a write succeeds again.
    failed: bool,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, stream: Stream, bytes: &[u8]) {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        let s = stream.index();
        state.pending[s].extend_from_slice(bytes);
        let timestamp = cri::file_timestamp(Utc::now());
        let pending = std::mem::take(&mut state.pending[s]);
        let max = self.limits.max_line_bytes.max(1);
        let mut records: Vec<(bool, &[u8])> = Vec::new();
        let mut rest = &pending[..];
        loop {
            let window = &rest[..rest.len().min(max)];
            if let Some(nl) = window.iter().position(|b| *b == b'\n') {
                records.push((false, &rest[..nl]));
                rest = &rest[nl + 1..];
            } else if rest.len() >= max {
                records.push((true, &rest[..max]));
                rest = &rest[max..];
            } else {
                break;
            }
        }
        let result = self.append(&mut state, &timestamp, stream, &records);
        state.pending[s] = rest.to_vec();
        drop(state);
        self.report(result);
    }

    fn close(&self) {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        let timestamp = cri::file_timestamp(Utc::now());
        let mut result = Ok(());
        for stream in [Stream::Stdout, Stream::Stderr] {
            let line = std::mem::take(&mut state.pending[stream.index()]);
            if !line.is_empty() && result.is_ok() {
                result = self.append(&mut state, &timestamp, stream, &[(false, &line[..])]);
            }
        }
        state.closed = true;
        state.file = None;
        drop(state);
        self.report(result);
        let marker = self.dir.join(done_name(self.restart));
        match File::create(&marker) {
            Ok(_) => {}
            // The pod's logs were removed while it ran: nobody is left to tell.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(path = %marker.display(), %error, "cannot mark a container log finished")
            }
        }
        self.notify.notify_waiters();
    }

    /// Appends records, rotating first whenever the next one would overflow the file.
    fn append(
        &self,
        state: &mut State,
        timestamp: &str,
        stream: Stream,
        records: &[(bool, &[u8])],
    ) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for (partial, content) in records {
            // `<timestamp> stdout F <content>\n`
            let len = (timestamp.len() + 11 + content.len()) as u64;
            let used = state.size + buf.len() as u64;
            if used > 0 && used + len > self.limits.max_file_bytes {
                self.flush(state, &mut buf)?;
                self.rotate(state)?;
            }
            cri::push_record(&mut buf, timestamp, stream, *partial, content);
        }
        self.flush(state, &mut buf)
    }

    fn flush(&self, state: &mut State, buf: &mut Vec<u8>) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        if state.file.is_none() {
            // An earlier rotation failed half-way; try to carry on in a fresh file.
            state.file = Some(open_append(&self.dir.join(live_name(self.restart)))?);
            state.size = 0;
        }
        let Some(file) = state.file.as_mut() else {
            return Ok(());
        };
        // One write per batch: a reader sees whole records (or a tail it waits to finish).
        file.write_all(buf)?;
        state.size += buf.len() as u64;
        buf.clear();
        self.notify.notify_waiters();
        Ok(())
    }

    /// Renames the live file to `<restart>.log.<timestamp>`, starts a new one, and drops
    /// the oldest rotated files beyond the limit.
    fn rotate(&self, state: &mut State) -> io::Result<()> {
        let live = self.dir.join(live_name(self.restart));
        let stamp = Utc::now().format("%Y%m%d-%H%M%S%.9f").to_string();
        let mut target = self
            .dir
            .join(format!("{}.{stamp}", live_name(self.restart)));
        let mut n = 1;
        while target.exists() {
            target = self
                .dir
                .join(format!("{}.{stamp}-{n}", live_name(self.restart)));
            n += 1;
        }
        state.file = None;
        std::fs::rename(&live, &target)?;
        state.file = Some(open_append(&live)?);
        state.size = 0;
        tracing::debug!(from = %live.display(), to = %target.display(), "rotated a container log");

        let mut rotated: Vec<String> = list_dir(&self.dir)?
            .into_iter()
            .filter_map(|f| match f {
                LogFile::Rotated(r, suffix) if r == self.restart => Some(suffix),
                _ => None,
            })
            .collect();
        rotated.sort();
        let keep = self.limits.max_files.max(1) - 1;
        let excess = rotated.len().saturating_sub(keep);
        for suffix in &rotated[..excess] {
            let path = self
                .dir
                .join(file_name(&LogFile::Rotated(self.restart, suffix.clone())));
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    fn report(&self, result: io::Result<()>) {
        let mut state = self.lock();
        match result {
            Ok(()) => state.failed = false,
            Err(error) if !state.failed => {
                state.failed = true;
                tracing::warn!(dir = %self.dir.display(), restart = self.restart, %error, "cannot write a container log; output is being lost");
            }
            Err(_) => {}
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close();
    }
}

struct Sink {
    inner: Arc<Inner>,
    stream: Stream,
}

impl OutputSink for Sink {
    fn write(&self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.inner.write(self.stream, bytes);
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

pub(crate) fn file_name(file: &LogFile) -> String {
    match file {
        LogFile::Live(r) => live_name(*r),
        LogFile::Rotated(r, suffix) => format!("{}.{suffix}", live_name(*r)),
        LogFile::Done(r) => done_name(*r),
    }
}
