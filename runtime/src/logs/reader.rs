//! Reading a container's logs back as `kubectl logs` shows them: the text of each line,
//! partial records joined, optionally prefixed with its timestamp, filtered by time, the
//! last N lines, capped in bytes, and followed while the container runs.
//!
//! File access is blocking, so the reader is a plain state machine ([`Reader::step`])
//! driven from `spawn_blocking`; between steps an idle follower waits for its writer's
//! `Notify` (or polls when there is none).

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::Stream;
use tokio::sync::Notify;

use super::cri::{self, parse_record};
use super::writer::file_name;
use super::{check_name, list_dir, live_name, LogError, LogFile};

/// What to read (the kubelet's `PodLogOptions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep streaming new lines until the run ends.
    pub follow: bool,
    /// Only the last N lines (of those `since` keeps).
    pub tail_lines: Option<u64>,
    /// Only lines that started at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Prefix each line with its RFC3339Nano timestamp and a space.
    pub timestamps: bool,
    /// The previous run instead of the current one.
    pub previous: bool,
    /// Stop after this many bytes of output.
    pub limit_bytes: Option<u64>,
}

/// The output of [`read_logs`]: text, in chunks; an I/O error ends it.
pub struct LogStream {
    inner: Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>,
}

impl std::fmt::Debug for LogStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogStream")
    }
}

impl Stream for LogStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// Reads the logs of `container` in pod `namespace/pod` under `root` (a
/// [`LogStore`](super::LogStore)'s root). A follower polls the files; within the agent,
/// [`LogStore::read`](super::LogStore::read) wakes it as lines are written instead.
pub async fn read_logs(
    root: &Path,
    namespace: &str,
    pod: &str,
    container: &str,
    opts: LogOptions,
) -> Result<LogStream, LogError> {
    let target = locate(root, namespace, pod, container, opts.previous)?;
    stream(target, opts, None)
}

/// The run whose files are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The container's log directory.
    pub dir: PathBuf,
    pub restart: u32,
}

/// Finds the container's directory and the run to read. When a pod name has several
/// directories (a pod deleted and created again, the old logs not yet removed), the
/// newest one is the pod's.
pub(crate) fn locate(
    root: &Path,
    namespace: &str,
    pod: &str,
    container: &str,
    previous: bool,
) -> Result<Target, LogError> {
    check_name("namespace", namespace, true)?;
    check_name("pod", pod, true)?;
    check_name("container", container, false)?;
    let pod_missing = || LogError::PodNotFound {
        namespace: namespace.to_string(),
        pod: pod.to_string(),
    };
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(pod_missing()),
        Err(e) => return Err(LogError::io(root, e)),
    };
    let prefix = format!("{namespace}_{pod}_");
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in entries {
        let entry = entry.map_err(|e| LogError::io(root, e))?;
        let name = entry.file_name();
        let Some(uid) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        if uid.is_empty() || uid.contains('_') {
            continue;
        }
        let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else {
            continue;
        };
        if newest.as_ref().is_none_or(|(t, _)| modified > *t) {
            newest = Some((modified, entry.path()));
        }
    }
    let (_, pod_dir) = newest.ok_or_else(pod_missing)?;
    let dir = pod_dir.join(container);
    let container_missing = || LogError::ContainerNotFound {
        pod: pod.to_string(),
        container: container.to_string(),
    };
    let files = match list_dir(&dir) {
        Ok(files) => files,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(container_missing()),
        Err(e) => return Err(LogError::io(&dir, e)),
    };
    let mut restarts: Vec<u32> = files
        .iter()
        .filter(|f| !matches!(f, LogFile::Done(_)))
        .map(LogFile::restart)
        .collect();
    restarts.sort_unstable();
    restarts.dedup();
    let restart = match (restarts.as_slice(), previous) {
        ([], _) => return Err(container_missing()),
        ([.., last], false) => *last,
        ([.., before, _], true) => *before,
        ([_], true) => {
            return Err(LogError::PreviousNotFound {
                pod: pod.to_string(),
                container: container.to_string(),
            })
        }
    };
    Ok(Target { dir, restart })
}

/// How long an idle follower sleeps when no writer can wake it.
const POLL: Duration = Duration::from_millis(100);
/// How long it waits for a wake-up before looking anyway (rotation or the end of a run
/// seen through the files alone).
const WAKE_FALLBACK: Duration = Duration::from_millis(500);

pub(crate) fn stream(
    target: Target,
    opts: LogOptions,
    notify: Option<Arc<Notify>>,
) -> Result<LogStream, LogError> {
    let reader = Reader::new(target, &opts)?;
    let driver = Driver {
        reader: Some(reader),
        notify,
    };
    let s = futures::stream::unfold(driver, |mut d| async move {
        let item = d.next().await?;
        Some((item, d))
    });
    Ok(LogStream { inner: Box::pin(s) })
}

struct Driver {
    /// `None` once the stream has ended.
    reader: Option<Reader>,
    notify: Option<Arc<Notify>>,
}

impl Driver {
    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            let mut reader = self.reader.take()?;
            let notify = self.notify.clone();
            // Registered before looking at the files, so a write made while we look
            // still wakes us.
            let mut notified = std::pin::pin!(notify.as_deref().map(Notify::notified));
            if let Some(n) = notified.as_mut().as_pin_mut() {
                n.enable();
            }
            let joined = tokio::task::spawn_blocking(move || {
                let step = reader.step();
                (reader, step)
            })
            .await;
            let (reader, step) = match joined {
                Ok(r) => r,
                Err(e) => return Some(Err(io::Error::other(e))),
            };
            match step {
                Ok(Step::Data(bytes)) => {
                    self.reader = Some(reader);
                    return Some(Ok(bytes));
                }
                Ok(Step::End) => return None,
                Ok(Step::Idle) => {
                    self.reader = Some(reader);
                    match notified.as_mut().as_pin_mut() {
                        Some(n) => {
                            let _ = tokio::time::timeout(WAKE_FALLBACK, n).await;
                        }
                        None => tokio::time::sleep(POLL).await,
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// What one step of reading produced.
#[derive(Debug)]
enum Step {
    Data(Bytes),
    /// Following, and everything written so far has been read.
    Idle,
    End,
}

/// Output is handed out in chunks of about this size.
const CHUNK: usize = 64 * 1024;

/// A file being read; `id` is (device, inode), which survives a rename.
struct Open {
    file: File,
    id: (u64, u64),
    /// The run's live file (as far as we know: it may have been rotated meanwhile).
    live: bool,
}

/// Per-stream line state: partial records continue the line of their own stream only.
#[derive(Default)]
struct Line {
    /// The next record starts a line.
    at_start: bool,
    /// The current line is filtered out by `since`.
    skipping: bool,
    /// While collecting the tail: the current line's text so far.
    building: Vec<u8>,
}

struct Reader {
    dir: PathBuf,
    restart: u32,
    follow: bool,
    since: Option<DateTime<Utc>>,
    timestamps: bool,
    /// Output bytes still allowed.
    remaining: Option<u64>,
    /// While collecting the tail: (how many lines, the last lines so far).
    tail: Option<(usize, VecDeque<Vec<u8>>)>,
    /// Rotated files still to read before the live one, oldest first.
    queue: VecDeque<PathBuf>,
    open: Option<Open>,
    lines: [Line; 2],
    /// The start of a record whose newline has not been read yet.
    carry: Vec<u8>,
    /// The run has ended: read what is left, then stop.
    ending: bool,
    done: bool,
    buf: Vec<u8>,
}

impl Reader {
    fn new(target: Target, opts: &LogOptions) -> Result<Reader, LogError> {
        let mut reader = Reader {
            dir: target.dir,
            restart: target.restart,
            follow: opts.follow,
            since: opts.since,
            timestamps: opts.timestamps,
            remaining: opts.limit_bytes,
            tail: opts
                .tail_lines
                .map(|n| (usize::try_from(n).unwrap_or(usize::MAX), VecDeque::new())),
            queue: VecDeque::new(),
            open: None,
            lines: [Line::default(), Line::default()],
            carry: Vec::new(),
            ending: false,
            done: opts.limit_bytes == Some(0),
            buf: vec![0; CHUNK],
        };
        for line in &mut reader.lines {
            line.at_start = true;
        }
        reader.queue = reader
            .rotated_after(None)
            .map_err(|e| LogError::io(&reader.dir, e))?;
        Ok(reader)
    }

    /// Reads until there is a chunk of output, the follower has caught up, or the end.
    fn step(&mut self) -> io::Result<Step> {
        let mut out = Vec::new();
        let mut buf = std::mem::take(&mut self.buf);
        let result = self.fill(&mut out, &mut buf);
        self.buf = buf;
        result?;
        Ok(if !out.is_empty() {
            Step::Data(Bytes::from(out))
        } else if self.done {
            Step::End
        } else {
            Step::Idle
        })
    }

    /// Fills `out` until it holds a chunk, the reader is done, or it has caught up with
    /// the writer.
    fn fill(&mut self, out: &mut Vec<u8>, buf: &mut [u8]) -> io::Result<()> {
        loop {
            if self.done || out.len() >= CHUNK {
                return Ok(());
            }
            let Some(open) = self.open.as_mut() else {
                if let Some(path) = self.queue.pop_front() {
                    match File::open(&path) {
                        Ok(file) => {
                            let id = file_id(&file.metadata()?);
                            self.open = Some(Open {
                                file,
                                id,
                                live: false,
                            });
                        }
                        // Pruned by rotation before we got to it.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                    continue;
                }
                match File::open(self.dir.join(live_name(self.restart))) {
                    Ok(file) => {
                        let id = file_id(&file.metadata()?);
                        self.open = Some(Open {
                            file,
                            id,
                            live: true,
                        });
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        if self.at_live_end(out)? {
                            continue;
                        }
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                }
            };
            let live = open.live;
            let n = match open.file.read(buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n > 0 {
                self.consume(&buf[..n], out);
                continue;
            }
            if !live {
                self.open = None;
                if !self.carry.is_empty() {
                    tracing::debug!(dir = %self.dir.display(), "a log file ended inside a record");
                    self.carry.clear();
                }
                continue;
            }
            if self.at_live_end(out)? {
                continue;
            }
            return Ok(());
        }
    }

    /// At the end of what the live file holds now: finishes the tail, then decides
    /// whether to keep reading (`true`) or wait (`false`).
    fn at_live_end(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        if self.tail.is_some() {
            self.finish_tail(out);
        }
        if !self.follow || self.done {
            self.done = true;
            return Ok(true);
        }
        let live_id = match fs::metadata(self.dir.join(live_name(self.restart))) {
            Ok(m) => Some(file_id(&m)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        match (&mut self.open, live_id) {
            (Some(open), Some(id)) if id != open.id => {
                // Rotated under us: finish this file (it may have grown since we read its
                // end), then any file rotated after it, then the new live file.
                open.live = false;
                let ours = open.id;
                self.queue = self.rotated_after(Some(ours))?;
                return Ok(true);
            }
            (None, Some(_)) => return Ok(true),
            _ => {}
        }
        if self.ending {
            self.done = true;
            return Ok(true);
        }
        if self.run_finished()? {
            // One more pass: lines written just before the run ended.
            self.ending = true;
            return Ok(true);
        }
        Ok(false)
    }

    /// Whether the run is over: marked done, superseded by a newer run, or removed.
    fn run_finished(&self) -> io::Result<bool> {
        let files = match list_dir(&self.dir) {
            Ok(files) => files,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(e),
        };
        Ok(files
            .iter()
            .any(|f| *f == LogFile::Done(self.restart) || f.restart() > self.restart))
    }

    /// The run's rotated files, oldest first; with `after`, only those rotated after the
    /// file with that id (all of them if it is gone: it was the oldest).
    fn rotated_after(&self, after: Option<(u64, u64)>) -> io::Result<VecDeque<PathBuf>> {
        let files = match list_dir(&self.dir) {
            Ok(files) => files,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(VecDeque::new()),
            Err(e) => return Err(e),
        };
        let mut rotated: Vec<String> = files
            .into_iter()
            .filter_map(|f| match f {
                LogFile::Rotated(r, suffix) if r == self.restart => Some(suffix),
                _ => None,
            })
            .collect();
        rotated.sort();
        let mut paths: Vec<PathBuf> = rotated
            .into_iter()
            .map(|s| self.dir.join(file_name(&LogFile::Rotated(self.restart, s))))
            .collect();
        if let Some(id) = after {
            let position = paths
                .iter()
                .position(|p| fs::metadata(p).is_ok_and(|m| file_id(&m) == id));
            if let Some(i) = position {
                paths.drain(..=i);
            }
        }
        Ok(paths.into())
    }

    /// Splits bytes read into records.
    fn consume(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let mut rest = data;
        while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
            if self.carry.is_empty() {
                self.record(&rest[..nl], out);
            } else {
                let mut line = std::mem::take(&mut self.carry);
                line.extend_from_slice(&rest[..nl]);
                self.record(&line, out);
            }
            rest = &rest[nl + 1..];
        }
        self.carry.extend_from_slice(rest);
    }

    fn record(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let Some(rec) = parse_record(raw) else {
            tracing::debug!(dir = %self.dir.display(), "skipping a line that is not a CRI log record");
            return;
        };
        let line = &mut self.lines[rec.stream.index()];
        let starts = line.at_start;
        if starts {
            line.skipping = self.since.is_some_and(|since| rec.time < since);
        }
        line.at_start = !rec.partial;
        if line.skipping {
            return;
        }
        let mut piece = Vec::with_capacity(rec.content.len() + 40);
        if starts && self.timestamps {
            piece.extend_from_slice(cri::rfc3339_nano(rec.time).as_bytes());
            piece.push(b' ');
        }
        piece.extend_from_slice(rec.content);
        if !rec.partial {
            piece.push(b'\n');
        }
        match &mut self.tail {
            Some((n, ring)) => {
                line.building.extend_from_slice(&piece);
                if !rec.partial {
                    ring.push_back(std::mem::take(&mut line.building));
                    while ring.len() > *n {
                        ring.pop_front();
                    }
                }
            }
            None => self.emit(&piece, out),
        }
    }

    /// Ends the tail phase: hands out the last lines (an unfinished one counts as a line).
    fn finish_tail(&mut self, out: &mut Vec<u8>) {
        let Some((n, mut ring)) = self.tail.take() else {
            return;
        };
        for line in &mut self.lines {
            if !line.building.is_empty() {
                ring.push_back(std::mem::take(&mut line.building));
            }
        }
        while ring.len() > n {
            ring.pop_front();
        }
        for line in ring {
            self.emit(&line, out);
        }
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        match &mut self.remaining {
            None => out.extend_from_slice(bytes),
            Some(left) => {
                let take = bytes
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                out.extend_from_slice(&bytes[..take]);
                *left -= take as u64;
                if *left == 0 {
                    self.done = true;
                }
            }
        }
    }
}

fn file_id(m: &fs::Metadata) -> (u64, u64) {
    (m.dev(), m.ino())
}
