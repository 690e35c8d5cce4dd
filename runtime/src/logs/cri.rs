//! The CRI log line format, as containerd writes it and the kubelet reads it:
//! `2026-11-27T11:00:00.123456789Z stdout F text`.
//!
//! The tag is `F` for a line that ended with a newline (not stored) and `P` for a chunk of
//! a longer line that continues in the next record of the same stream.

use chrono::{DateTime, SecondsFormat, Utc};

/// Which output stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    /// An index for per-stream state.
    pub(crate) fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// One parsed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    pub time: DateTime<Utc>,
    pub stream: Stream,
    /// `P`: the line continues in the stream's next record.
    pub partial: bool,
    pub content: &'a [u8],
}

/// The timestamp as written into files: always nine fractional digits, so records of one
/// file sort as text too.
pub(crate) fn file_timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// The timestamp as the kubelet shows it with `timestamps=true`: Go's RFC3339Nano, whose
/// fraction drops trailing zeros (and the dot when nothing is left).
pub fn rfc3339_nano(t: DateTime<Utc>) -> String {
    let full = file_timestamp(t);
    // `full` is `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
    let Some(body) = full.strip_suffix('Z') else {
        return full;
    };
    let trimmed = body.trim_end_matches('0').trim_end_matches('.');
    format!("{trimmed}Z")
}

/// Appends one record (with its newline) to `out`.
pub(crate) fn push_record(
    out: &mut Vec<u8>,
    timestamp: &str,
    stream: Stream,
    partial: bool,
    content: &[u8],
) {
    out.extend_from_slice(timestamp.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// Parses one record without its newline; `None` for a line that is not a CRI record.
pub(crate) fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let time = DateTime::parse_from_rfc3339(time).ok()?.with_timezone(&Utc);
    let stream = match parts.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let partial = match parts.next()? {
        b"F" => false,
        b"P" => true,
        _ => return None,
    };
    // An empty line may have lost the separator after its tag.
    let content = parts.next().unwrap_or_default();
    Some(Record {
        time,
        stream,
        partial,
        content,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn timestamps_in_files_and_in_output() {
        let t = Utc
            .timestamp_opt(1_795_777_200, 123_400_000)
            .single()
            .expect("valid time");
        assert_eq!(file_timestamp(t), "2026-11-27T11:00:00.123400000Z");
        assert_eq!(rfc3339_nano(t), "2026-11-27T11:00:00.1234Z");
        let whole = Utc.timestamp_opt(1_795_777_200, 0).single().expect("time");
        assert_eq!(rfc3339_nano(whole), "2026-11-27T11:00:00Z");
    }

    #[test]
    fn records_round_trip() {
        let mut out = Vec::new();
        push_record(
            &mut out,
            "2026-11-27T11:00:00.123456789Z",
            Stream::Stderr,
            true,
            b"a b c",
        );
        assert_eq!(out, b"2026-11-27T11:00:00.123456789Z stderr P a b c\n");
        let r = parse_record(&out[..out.len() - 1]).expect("parses");
        assert_eq!(r.stream, Stream::Stderr);
        assert!(r.partial);
        assert_eq!(r.content, b"a b c");
        assert_eq!(r.time.timestamp_subsec_nanos(), 123_456_789);

        let empty = parse_record(b"2026-11-27T11:00:00Z stdout F").expect("parses");
        assert_eq!(empty.content, b"");
        assert!(!empty.partial);
        assert!(parse_record(b"not a record").is_none());
        assert!(parse_record(b"2026-11-27T11:00:00Z stdin F x").is_none());
    }
}
