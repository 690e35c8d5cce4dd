//! Container logs on the node: written to files the way the kubelet lays them out, read
//! back for `kubectl logs`, and served over the kubelet's `containerLogs` HTTP API.
//!
//! ## Layout
//!
//! ```text
//! <root>/<namespace>_<pod>_<uid>/<container>/<restart>.log             the live file
//!                                            <restart>.log.<timestamp> rotated files
//!                                            <restart>.done            the run finished
//! ```
//!
//! Each line of a log file is a CRI record (see [`cri`]): `<RFC3339Nano> stdout|stderr
//! F|P <text>`. A file rotates when the next record would take it past
//! [`LogLimits::max_file_bytes`]; a restart keeps at most [`LogLimits::max_files`] files
//! (the live one included). Only the current and the previous restart of a container
//! are kept, which is all `kubectl logs` and `kubectl logs --previous` can ask for.
//!
//! ## When does `follow` stop?
//!
//! Kubernetes ends `kubectl logs -f` when the container exits. Here the writer marks the
//! end of a run with an empty `<restart>.done` file, written by [`ContainerLog::close`]
//! (or when the `ContainerLog` and all its sinks are dropped). A follower also stops
//! when a newer restart's file appears or the pod's directory is removed, so a run
//! whose agent died without writing the marker cannot hold a follower forever once the
//! container is restarted or the pod removed. A file marker (rather than in-memory state
//! only) lets a restarted agent, or any reader of the directory, see which runs are
//! over. Within the agent, writers wake followers through a [`tokio::sync::Notify`] per
//! container; without one (reading a directory some other process writes) followers
//! poll.
//!
//! - [`cri`]: the record format;
//! - [`writer`]: [`LogStore`] and [`ContainerLog`], the files' only writer;
//! - [`reader`]: [`read_logs`] and [`LogOptions`];
//! - [`http`]: the `GET /containerLogs/…` router.

pub mod cri;
pub mod http;
pub mod reader;
pub mod writer;

use std::path::{Path, PathBuf};

pub use reader::{read_logs, LogOptions, LogStream};
pub use writer::{ContainerLog, LogLimits, LogStore};

/// Why logs cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A namespace, pod or container name that cannot name a log directory.
    #[error("invalid {what} name {value:?}")]
    InvalidName { what: &'static str, value: String },
    /// No container of this pod has written logs on this node.
    #[error("pod \"{namespace}/{pod}\" has no logs on this node")]
    PodNotFound { namespace: String, pod: String },
    /// The pod has logs here, but not this container (it has not started yet).
    #[error("container \"{container}\" in pod \"{pod}\" has no logs on this node")]
    ContainerNotFound { pod: String, container: String },
    /// `previous` was asked for a container that has not been restarted.
    #[error("previous terminated container \"{container}\" in pod \"{pod}\" not found")]
    PreviousNotFound { pod: String, container: String },
    /// Reading the log directory failed.
    #[error("reading logs in {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl LogError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        LogError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What a file in a container's log directory is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LogFile {
    /// `<restart>.log`
    Live(u32),
    /// `<restart>.log.<suffix>`; suffixes sort in rotation order.
    Rotated(u32, String),
    /// `<restart>.done`
    Done(u32),
}

impl LogFile {
    pub(crate) fn parse(name: &str) -> Option<LogFile> {
        if let Some(n) = name.strip_suffix(".done") {
            return parse_restart(n).map(LogFile::Done);
        }
        let (n, rest) = name.split_once(".log")?;
        let restart = parse_restart(n)?;
        match rest {
            "" => Some(LogFile::Live(restart)),
            _ => {
                let suffix = rest.strip_prefix('.').filter(|s| !s.is_empty())?;
                Some(LogFile::Rotated(restart, suffix.to_string()))
            }
        }
    }

    pub(crate) fn restart(&self) -> u32 {
        match self {
            LogFile::Live(r) | LogFile::Rotated(r, _) | LogFile::Done(r) => *r,
        }
    }
}

fn parse_restart(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

pub(crate) fn live_name(restart: u32) -> String {
    format!("{restart}.log")
}

pub(crate) fn done_name(restart: u32) -> String {
    format!("{restart}.done")
}

/// `<namespace>_<pod>_<uid>`: unambiguous because none of the three may hold `_`.
pub(crate) fn pod_dir_name(namespace: &str, pod: &str, uid: &str) -> String {
    format!("{namespace}_{pod}_{uid}")
}

/// The files of a container directory, parsed; unknown names are left out.
pub(crate) fn list_dir(dir: &Path) -> std::io::Result<Vec<LogFile>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(f) = entry.file_name().to_str().and_then(LogFile::parse) {
            files.push(f);
        }
    }
    Ok(files)
}

/// Checks that a name taken from a request or a pod can be one path component:
/// non-empty, no separators, not `.` or `..`, and — for the parts of a pod directory's
/// name — no `_`.
pub(crate) fn check_name(
    what: &'static str,
    value: &str,
    in_pod_dir: bool,
) -> Result<(), LogError> {
    let bad = value.is_empty()
        || value == "."
        || value == ".."
        || value.len() > 253
        || value.contains(['/', '\\', '\0'])
        || (in_pod_dir && value.contains('_'));
    if bad {
        return Err(LogError::InvalidName {
            what,
            value: value.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;
    use std::time::Duration;

    use chrono::{DateTime, Utc};
    use futures::StreamExt;

    /// How long any test waits for something that should happen at once.
    const PATIENCE: Duration = Duration::from_secs(10);

    fn store(limits: LogLimits) -> (tempfile::TempDir, Arc<LogStore>) {
        let tmp = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(LogStore::new(tmp.path().join("logs"), limits));
        (tmp, store)
    }

    async fn read_all(store: &LogStore, container: &str, opts: LogOptions) -> String {
        let stream = store
            .read("ns", "web", container, opts)
            .await
            .expect("logs exist");
        collect(stream).await
    }

    async fn collect(mut stream: LogStream) -> String {
        let mut out = Vec::new();
        let finished = tokio::time::timeout(PATIENCE, async {
            while let Some(chunk) = stream.next().await {
                out.extend_from_slice(&chunk.expect("reads"));
            }
        })
        .await;
        assert!(
            finished.is_ok(),
            "the stream did not end: {:?}",
            String::from_utf8_lossy(&out)
        );
        String::from_utf8(out).expect("utf-8")
    }

    /// Reads from a following stream until `want` has been seen, failing after the
    /// deadline.
    async fn read_until(stream: &mut LogStream, seen: &mut String, want: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !seen.contains(want) {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(chunk)) => seen.push_str(&String::from_utf8_lossy(&chunk.expect("reads"))),
                Ok(None) => panic!("the stream ended before {want:?}; got {seen:?}"),
                Err(_) => panic!("no {want:?} in time; got {seen:?}"),
            }
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    /// Writes a hand-made log file (known timestamps) for run `restart`.
    fn write_file(store: &LogStore, container: &str, name: &str, text: &str) {
        let dir = store.root().join("ns_web_uid1").join(container);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(name), text).expect("write");
    }

    #[tokio::test]
    async fn lines_from_both_streams_are_written_whole() {
        let (_tmp, store) = store(LogLimits::default());
        let log = store.open("ns", "web", "uid1", "app", 0).expect("opens");
        let (out, err) = (log.stdout(), log.stderr());
        out.write(b"hel");
        err.write(b"oops\n");
        out.write(b"lo\nwor");
        out.write(b"ld\n\nno newline");
        log.close();
        // Written after the end of the run: dropped.
        out.write(b"late\n");

        let raw = std::fs::read_to_string(log.path()).expect("file");
        let records: Vec<&str> = raw
            .lines()
            .map(|l| l.split_once(' ').expect("ts").1)
            .collect();
        assert_eq!(
            records,
            [
                "stderr F oops",
                "stdout F hello",
                "stdout F world",
                "stdout F ",
                "stdout F no newline"
            ]
        );
        for line in raw.lines() {
            let ts = line.split(' ').next().expect("ts");
            assert_eq!(ts.len(), "2026-11-27T11:00:00.123456789Z".len(), "{ts}");
            assert!(cri::parse_record(line.as_bytes()).is_some(), "{line}");
        }
        assert!(log.path().with_file_name("0.done").exists());

        let text = read_all(&store, "app", LogOptions::default()).await;
        assert_eq!(text, "oops\nhello\nworld\n\nno newline\n");
    }

    #[test]
    fn concurrent_streams_never_interleave_inside_a_line() {
        let (_tmp, store) = store(LogLimits::default());
        let log = store.open("ns", "web", "uid1", "app", 0).expect("opens");
        let writers: Vec<_> = [("out", log.stdout()), ("err", log.stderr())]
            .into_iter()
            .map(|(name, sink)| {
                std::thread::spawn(move || {
                    for i in 0..500 {
                        // Each line arrives in three fragments.
                        sink.write(format!("{name}-").as_bytes());
                        sink.write(format!("{i:03}").as_bytes());
                        sink.write(b"-end\n");
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().expect("writer");
        }
        log.close();
        let raw = std::fs::read_to_string(log.path()).expect("file");
        let mut counts = [0, 0];
        for line in raw.lines() {
            let rec = cri::parse_record(line.as_bytes()).expect("a record");
            assert!(!rec.partial);
            let text = std::str::from_utf8(rec.content).expect("utf-8");
            let (prefix, stream) = match rec.stream {
                cri::Stream::Stdout => ("out-", 0),
                cri::Stream::Stderr => ("err-", 1),
            };
            assert_eq!(text, format!("{prefix}{:03}-end", counts[stream]), "{line}");
            counts[stream] += 1;
        }
        assert_eq!(counts, [500, 500]);
    }

    #[tokio::test]
    async fn long_lines_are_split_and_joined_again() {
        let limits = LogLimits {
            max_line_bytes: 4,
            ..LogLimits::default()
        };
        let (_tmp, store) = store(limits);
        let log = store.open("ns", "web", "uid1", "app", 0).expect("opens");
        log.stdout().write(b"abcdefghij\nxy");
        log.stdout().write(b"z\n");
        drop(log);
        let raw =
            std::fs::read_to_string(store.root().join("ns_web_uid1/app/0.log")).expect("file");
        let records: Vec<&str> = raw
            .lines()
            .map(|l| l.split_once(' ').expect("ts").1)
            .collect();
        assert_eq!(
            records,
            [
                "stdout P abcd",
                "stdout P efgh",
                "stdout F ij",
                "stdout F xyz"
            ]
        );
        // Dropping the log and its sinks ends the run.
        assert!(store.root().join("ns_web_uid1/app/0.done").exists());
        let text = read_all(
            &store,
            "app",
            LogOptions {
                timestamps: true,
                ..Default::default()
            },
        )
        .await;
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].ends_with(" abcdefghij"), "{text}");
        assert!(lines[1].ends_with(" xyz"), "{text}");
    }

    #[tokio::test]
    async fn timestamps_since_tail_and_limit() {
        let (_tmp, store) = store(LogLimits::default());
        write_file(
            &store,
            "app",
            "0.log",
            "2026-11-27T11:00:01.000000000Z stdout F one\n\
             2026-11-27T11:00:02.500000000Z stderr P tw\n\
             2026-11-27T11:00:02.600000000Z stdout F three\n\
             2026-11-27T11:00:02.700000000Z stderr F o\n\
             garbage that is skipped\n\
             2026-11-27T11:00:04.000000000Z stdout F four\n",
        );
        let all = read_all(&store, "app", LogOptions::default()).await;
        assert_eq!(all, "one\ntwthree\no\nfour\n");

        let stamped = read_all(
            &store,
            "app",
            LogOptions {
                timestamps: true,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(
            stamped,
            "2026-11-27T11:00:01Z one\n2026-11-27T11:00:02.5Z tw2026-11-27T11:00:02.6Z three\no\n2026-11-27T11:00:04Z four\n"
        );

        // Tail counts whole lines, finished in the order they finished.
        let tail = read_all(
            &store,
            "app",
            LogOptions {
                tail_lines: Some(2),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(tail, "two\nfour\n");
        let tail = read_all(
            &store,
            "app",
            LogOptions {
                tail_lines: Some(0),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(tail, "");
        let tail = read_all(
            &store,
            "app",
            LogOptions {
                tail_lines: Some(100),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(tail, "one\nthree\ntwo\nfour\n");

        // A line is kept or dropped by the time it started.
        let since = read_all(
            &store,
            "app",
            LogOptions {
                since: Some(at("2026-11-27T11:00:02.55Z")),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(since, "three\nfour\n");
        let since = read_all(
            &store,
            "app",
            LogOptions {
                since: Some(at("2026-11-27T11:00:02.5Z")),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(since, "twthree\no\nfour\n");

        let limited = read_all(
            &store,
            "app",
            LogOptions {
                limit_bytes: Some(6),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(limited, "one\ntw");
        let both = read_all(
            &store,
            "app",
            LogOptions {
                tail_lines: Some(1),
                timestamps: true,
                limit_bytes: Some(12),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(both, "2026-11-27T1");
    }

    #[tokio::test]
    async fn rotation_keeps_max_files_and_reads_in_order() {
        let limits = LogLimits {
            max_file_bytes: 200,
            max_files: 3,
            ..LogLimits::default()
        };
        let (_tmp, store) = store(limits);
        let log = store.open("ns", "web", "uid1", "app", 0).expect("opens");
        let out = log.stdout();
        for i in 0..40 {
            out.write(format!("line {i:02}\n").as_bytes());
        }
        let dir = store.root().join("ns_web_uid1/app");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(names[0], "0.log", "{names:?}");
        assert!(
            names[1].starts_with("0.log.2") && names[2].starts_with("0.log.2"),
            "{names:?}"
        );
        for name in &names {
            let size = std::fs::metadata(dir.join(name)).expect("size").len();
            assert!(size <= 200, "{name} has {size} bytes");
        }
        // Each record is 48 bytes: 4 per file, 3 files: the last 12 lines survive.
        let text = read_all(&store, "app", LogOptions::default()).await;
        let want: String = (28..40).map(|i| format!("line {i:02}\n")).collect();
        assert_eq!(text, want);
        let tail = read_all(
            &store,
            "app",
            LogOptions {
                tail_lines: Some(5),
                ..Default::default()
            },
        )
        .await;
        let want: String = (35..40).map(|i| format!("line {i:02}\n")).collect();
        assert_eq!(tail, want);
    }

    #[tokio::test]
    async fn previous_run_and_retention() {
        let (_tmp, store) = store(LogLimits::default());
        let run = |restart: u32, text: &str| {
            let log = store
                .open("ns", "web", "uid1", "app", restart)
                .expect("opens");
            log.stdout().write(text.as_bytes());
            log.close();
        };
        run(0, "first\n");
        let err = store
            .read(
                "ns",
                "web",
                "app",
                LogOptions {
                    previous: true,
                    ..Default::default()
                },
            )
            .await
            .expect_err("no previous run yet");
        assert_eq!(
            err.to_string(),
            "previous terminated container \"app\" in pod \"web\" not found"
        );
        run(1, "second\n");
        assert_eq!(
            read_all(&store, "app", LogOptions::default()).await,
            "second\n"
        );
        assert_eq!(
            read_all(
                &store,
                "app",
                LogOptions {
                    previous: true,
                    ..Default::default()
                }
            )
            .await,
            "first\n"
        );
        run(2, "third\n");
        assert_eq!(
            read_all(
                &store,
                "app",
                LogOptions {
                    previous: true,
                    ..Default::default()
                }
            )
            .await,
            "second\n"
        );
        let dir = store.root().join("ns_web_uid1/app");
        assert!(!dir.join("0.log").exists());
        assert!(dir.join("1.log").exists() && dir.join("2.log").exists());

        // Reopening a run appends to it and clears its end marker.
        let log = store.open("ns", "web", "uid1", "app", 2).expect("reopens");
        assert!(!dir.join("2.done").exists());
        log.stdout().write(b"more\n");
        log.close();
        assert_eq!(
            read_all(&store, "app", LogOptions::default()).await,
            "third\nmore\n"
        );
    }

    #[tokio::test]
    async fn missing_pods_and_containers() {
        let (_tmp, store) = store(LogLimits::default());
        let err = store
            .read("ns", "web", "app", LogOptions::default())
            .await
            .expect_err("no pod");
        assert!(matches!(err, LogError::PodNotFound { .. }), "{err}");
        let _log = store.open("ns", "web", "uid1", "app", 0).expect("opens");
        let err = store
            .read("ns", "web", "other", LogOptions::default())
            .await
            .expect_err("no container");
        assert_eq!(
            err.to_string(),
            "container \"other\" in pod \"web\" has no logs on this node"
        );
        let err = store
            .read("ns", "we", "app", LogOptions::default())
            .await
            .expect_err("prefix only");
        assert!(matches!(err, LogError::PodNotFound { .. }), "{err}");
        let err = store
            .read("ns", "web", "..", LogOptions::default())
            .await
            .expect_err("bad name");
        assert!(matches!(err, LogError::InvalidName { .. }), "{err}");
        assert!(store.open("ns", "a_b", "uid1", "app", 0).is_err());
    }

    #[tokio::test]
    async fn follow_streams_lines_across_rotation_until_the_run_ends() {
        let limits = LogLimits {
            max_file_bytes: 200,
            max_files: 5,
            ..LogLimits::default()
        };
        let (_tmp, store) = store(limits);
        let log = store.open("ns", "web", "uid1", "app", 0).expect("opens");
        let out = log.stdout();
        out.write(b"before 1\nbefore 2\n");
        let mut stream = store
            .read(
                "ns",
                "web",
                "app",
                LogOptions {
                    follow: true,
                    tail_lines: Some(1),
                    ..Default::default()
                },
            )
            .await
            .expect("follows");
        let mut seen = String::new();
        read_until(&mut stream, &mut seen, "before 2\n").await;
        assert_eq!(seen, "before 2\n");

        // Written while the reader waits, across several rotations.
        for i in 0..12 {
            out.write(format!("after {i:02}\n").as_bytes());
            read_until(&mut stream, &mut seen, &format!("after {i:02}\n")).await;
        }
        let want: String = std::iter::once("before 2\n".to_string())
            .chain((0..12).map(|i| format!("after {i:02}\n")))
            .collect();
        assert_eq!(seen, want);
        assert!(
            std::fs::read_dir(store.root().join("ns_web_uid1/app"))
                .expect("dir")
                .count()
                > 2
        );

        out.write(b"last words");
        log.close();
        let rest = collect(stream).await;
        assert_eq!(rest, "last words\n");
    }

    #[tokio::test]
    async fn follow_ends_with_a_new_run_or_the_pod_removed() {
        let (_tmp, store) = store(LogLimits::default());
        let root = store.root().to_path_buf();
        let log = store.open("ns", "web", "uid1", "app", 0).expect("opens");
        log.stdout().write(b"run 0\n");
        // Polling reader: no writer can wake it.
        let mut stream = read_logs(
            &root,
            "ns",
            "web",
            "app",
            LogOptions {
                follow: true,
                ..Default::default()
            },
        )
        .await
        .expect("follows");
        let mut seen = String::new();
        read_until(&mut stream, &mut seen, "run 0\n").await;
        log.stdout().write(b"still 0\n");
        read_until(&mut stream, &mut seen, "still 0\n").await;
        // The agent died without ending the run; the container starts again.
        std::mem::forget(log);
        let next = store.open("ns", "web", "uid1", "app", 1).expect("opens");
        next.stdout().write(b"run 1\n");
        assert_eq!(collect(stream).await, "");

        let mut stream = store
            .read(
                "ns",
                "web",
                "app",
                LogOptions {
                    follow: true,
                    ..Default::default()
                },
            )
            .await
            .expect("follows");
        let mut seen = String::new();
        read_until(&mut stream, &mut seen, "run 1\n").await;
        assert_eq!(store.pod_uids().expect("lists"), ["uid1"]);
        store.remove_pod("uid1").expect("removes");
        assert!(store.pod_uids().expect("lists").is_empty());
        assert!(!root.join("ns_web_uid1").exists());
        assert_eq!(collect(stream).await, "");
        store.remove_pod("uid1").expect("removing twice is fine");
    }

    #[tokio::test]
    async fn removing_a_pod_by_name_ends_its_followers_and_keeps_the_others() {
        let (_tmp, store) = store(LogLimits::default());
        let root = store.root().to_path_buf();
        let web = store.open("ns", "web", "uid1", "app", 0).expect("opens");
        web.stdout().write(b"web\n");
        let db = store.open("ns", "db", "uid2", "app", 0).expect("opens");
        db.stdout().write(b"db\n");
        let follow = || LogOptions {
            follow: true,
            ..Default::default()
        };
        let mut web_stream = store
            .read("ns", "web", "app", follow())
            .await
            .expect("follows");
        let mut seen = String::new();
        read_until(&mut web_stream, &mut seen, "web\n").await;
        store
            .remove_pod_named("ns", "web", "uid1")
            .expect("removes");
        assert_eq!(collect(web_stream).await, "", "the follower ends");
        assert!(!root.join("ns_web_uid1").exists());
        assert_eq!(store.pod_uids().expect("lists"), ["uid2"]);
        let mut db_stream = store
            .read("ns", "db", "app", follow())
            .await
            .expect("follows");
        let mut seen = String::new();
        read_until(&mut db_stream, &mut seen, "db\n").await;
        store
            .remove_pod_named("ns", "web", "uid1")
            .expect("removing twice is fine");
        assert!(
            store.remove_pod_named("ns", "a_b", "uid1").is_err(),
            "names are checked"
        );
    }

    #[tokio::test]
    async fn a_recreated_pod_reads_its_newest_directory() {
        let (_tmp, store) = store(LogLimits::default());
        let old = store.open("ns", "web", "uid1", "app", 0).expect("opens");
        old.stdout().write(b"old pod\n");
        old.close();
        // Directory times may share a clock tick: make the old one clearly older.
        let old_dir = std::fs::File::open(store.root().join("ns_web_uid1")).expect("dir");
        old_dir
            .set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
            .expect("set mtime");
        let new = store.open("ns", "web", "uid2", "app", 0).expect("opens");
        new.stdout().write(b"new pod\n");
        new.close();
        assert_eq!(
            read_all(&store, "app", LogOptions::default()).await,
            "new pod\n"
        );
    }

    #[test]
    fn file_names() {
        assert_eq!(LogFile::parse("0.log"), Some(LogFile::Live(0)));
        assert_eq!(LogFile::parse("12.done"), Some(LogFile::Done(12)));
        assert_eq!(
            LogFile::parse("3.log.20261127-110000.123456789"),
            Some(LogFile::Rotated(3, "20261127-110000.123456789".into()))
        );
        assert_eq!(LogFile::parse("3.log."), None);
        assert_eq!(LogFile::parse("x.log"), None);
        assert_eq!(LogFile::parse("+1.log"), None);
        assert_eq!(LogFile::parse("3.logx"), None);
        assert_eq!(LogFile::parse("notes.txt"), None);
    }

    #[test]
    fn names() {
        assert!(check_name("pod", "web-1", true).is_ok());
        assert!(check_name("pod", "a_b", true).is_err());
        assert!(check_name("container", "a_b", false).is_ok());
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(check_name("pod", bad, false).is_err(), "{bad:?}");
        }
    }
}
