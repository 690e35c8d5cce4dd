//! SPDY/3.1 framing, as far as `kubectl port-forward` needs it.
//!
//! kubectl (through client-go and moby/spdystream) still speaks SPDY/3.1 for
//! port-forward: over a websocket whose binary messages carry the SPDY byte stream
//! (subprotocol `SPDY/3.1+portforward.k8s.io`), or over a plain `Upgrade: SPDY/3.1`
//! connection. This module is only the wire format — frames in and out, and the
//! compressed header blocks; what the streams mean lives in `portforward`.
//!
//! Header blocks (SYN_STREAM, SYN_REPLY, HEADERS) are zlib-compressed with one stream
//! per direction for the whole connection, primed with the SPDY/3 dictionary, and
//! sync-flushed after each block. So an [`Encoder`] and a [`Decoder`] each belong to
//! one connection and must see every header block in order.
//!
//! spdystream implements no flow control (it neither sends nor honours
//! WINDOW_UPDATE), so neither do we: such frames are parsed and ignored.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

/// The SPDY version on the wire.
pub const VERSION: u16 = 3;
/// Data/control flag: the sender is done with this stream.
pub const FLAG_FIN: u8 = 0x01;
/// SYN_STREAM flag: the stream is one-way (the receiver must not send on it).
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// RST_STREAM status: the stream was malformed or unexpected.
pub const RST_PROTOCOL_ERROR: u32 = 1;
/// RST_STREAM status: the frame named a stream that is not open.
pub const RST_INVALID_STREAM: u32 = 2;
/// RST_STREAM status: the stream was refused before any processing.
pub const RST_REFUSED_STREAM: u32 = 3;
/// RST_STREAM status: the stream is no longer needed.
pub const RST_CANCEL: u32 = 5;
/// RST_STREAM status: the receiver failed for a reason of its own.
pub const RST_INTERNAL_ERROR: u32 = 6;

/// The largest payload a frame's 24-bit length can carry.
pub const MAX_PAYLOAD: usize = 0x00ff_ffff;
/// How large a decompressed header block may grow: port-forward's blocks are a few
/// dozen bytes, and a bound keeps a hostile peer from inflating a small frame into
/// gigabytes.
const MAX_HEADER_BLOCK: usize = 256 * 1024;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

/// Header names (lowercase, as SPDY requires) and values (several values of one name are
/// joined with NUL bytes, as on the wire).
pub type Headers = Vec<(String, String)>;

/// The value of header `name` (compared case-insensitively).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// One SPDY frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a stream.
    SynStream {
        stream_id: u32,
        associated_to: u32,
        /// 0 (highest) to 7.
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    /// Accepts a stream the peer opened.
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    /// Aborts a stream.
    RstStream { stream_id: u32, status: u32 },
    /// Connection settings (flags/id/value triples); informational for us.
    Settings { entries: Vec<(u8, u32, u32)> },
    /// A liveness check; the receiver of a peer-initiated ping echoes it.
    Ping { id: u32 },
    /// The sender will open no more streams.
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    /// More headers for a stream.
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    /// Flow-control credit (ignored, see the module docs).
    WindowUpdate { stream_id: u32, delta: u32 },
    /// Stream data; `FLAG_FIN` half-closes the stream.
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    /// A control frame of a type SPDY/3.1 does not define; receivers ignore those.
    Unknown { frame_type: u16 },
}

/// Why bytes could not be read as SPDY.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    /// A control frame of another SPDY version.
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    /// A frame whose payload does not fit its type.
    #[error("malformed {frame} frame: {why}")]
    Malformed { frame: &'static str, why: String },
    /// A header block that does not decompress or parse.
    #[error("bad header block: {0}")]
    HeaderBlock(String),
}

fn malformed(frame: &'static str, why: impl Into<String>) -> SpdyError {
    SpdyError::Malformed {
        frame,
        why: why.into(),
    }
}

/// The SPDY/3 header-compression dictionary (draft 3, section 2.6.10.1): length-prefixed
/// header names and common values, then a run of frequent strings. Both zlib streams of
/// a connection are primed with it.
pub const DICTIONARY: &[u8] = b"\
    \x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04post\
    \x00\x00\x00\x03put\x00\x00\x00\x06delete\x00\x00\x00\x05trace\
    \x00\x00\x00\x06accept\x00\x00\x00\x0eaccept-charset\
    \x00\x00\x00\x0faccept-encoding\x00\x00\x00\x0faccept-language\
    \x00\x00\x00\x0daccept-ranges\x00\x00\x00\x03age\x00\x00\x00\x05allow\
    \x00\x00\x00\x0dauthorization\x00\x00\x00\x0dcache-control\
    \x00\x00\x00\x0aconnection\x00\x00\x00\x0ccontent-base\
    \x00\x00\x00\x10content-encoding\x00\x00\x00\x10content-language\
    \x00\x00\x00\x0econtent-length\x00\x00\x00\x10content-location\
    \x00\x00\x00\x0bcontent-md5\x00\x00\x00\x0dcontent-range\
    \x00\x00\x00\x0ccontent-type\x00\x00\x00\x04date\x00\x00\x00\x04etag\
    \x00\x00\x00\x06expect\x00\x00\x00\x07expires\x00\x00\x00\x04from\
    \x00\x00\x00\x04host\x00\x00\x00\x08if-match\x00\x00\x00\x11if-modified-since\
    \x00\x00\x00\x0dif-none-match\x00\x00\x00\x08if-range\
    \x00\x00\x00\x13if-unmodified-since\x00\x00\x00\x0dlast-modified\
    \x00\x00\x00\x08location\x00\x00\x00\x0cmax-forwards\x00\x00\x00\x06pragma\
    \x00\x00\x00\x12proxy-authenticate\x00\x00\x00\x13proxy-authorization\
    \x00\x00\x00\x05range\x00\x00\x00\x07referer\x00\x00\x00\x0bretry-after\
    \x00\x00\x00\x06server\x00\x00\x00\x02te\x00\x00\x00\x07trailer\
    \x00\x00\x00\x11transfer-encoding\x00\x00\x00\x07upgrade\
    \x00\x00\x00\x0auser-agent\x00\x00\x00\x04vary\x00\x00\x00\x03via\
    \x00\x00\x00\x07warning\x00\x00\x00\x10www-authenticate\x00\x00\x00\x06method\
    \x00\x00\x00\x03get\x00\x00\x00\x06status\x00\x00\x00\x06200 OK\
    \x00\x00\x00\x07version\x00\x00\x00\x08HTTP/1.1\x00\x00\x00\x03url\
    \x00\x00\x00\x06public\x00\x00\x00\x0aset-cookie\x00\x00\x00\x0akeep-alive\
    \x00\x00\x00\x06origin\
    10010120120220520630030230330430530630740240540640740840941041141241341441541641\
    7502504505203 Non-Authoritative Information204 No Content301 Moved Permanently40\
    0 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error\
    501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept O\
    ct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,imag\
    e/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/\
    javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1\
    ,utf-,*,enq=0.";

/// Writes frames, owning the connection's outbound header-compression stream.
pub struct Encoder {
    compress: Compress,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new()
    }
}

impl Encoder {
    pub fn new() -> Encoder {
        let mut compress = Compress::new(Compression::default(), true);
        // Only fails for a stream already in use; this one is new.
        let _ = compress.set_dictionary(DICTIONARY);
        Encoder { compress }
    }

    /// Appends `frame` to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), SpdyError> {
        match frame {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if data.len() > MAX_PAYLOAD {
                    return Err(malformed("DATA", "payload longer than 2^24-1 bytes"));
                }
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32(u32::from(*flags) << 24 | data.len() as u32);
                out.put_slice(data);
                Ok(())
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                flags,
                headers,
            } => {
                let block = self.header_block(headers)?;
                let mut payload = BytesMut::with_capacity(10 + block.len());
                payload.put_u32(stream_id & 0x7fff_ffff);
                payload.put_u32(associated_to & 0x7fff_ffff);
                payload.put_u8((priority & 0x07) << 5);
                payload.put_u8(0);
                payload.put_slice(&block);
                control(out, TYPE_SYN_STREAM, *flags, &payload)
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            } => {
                let block = self.header_block(headers)?;
                let mut payload = BytesMut::with_capacity(4 + block.len());
                payload.put_u32(stream_id & 0x7fff_ffff);
                payload.put_slice(&block);
                control(out, TYPE_SYN_REPLY, *flags, &payload)
            }
            Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                let block = self.header_block(headers)?;
                let mut payload = BytesMut::with_capacity(4 + block.len());
                payload.put_u32(stream_id & 0x7fff_ffff);
                payload.put_slice(&block);
                control(out, TYPE_HEADERS, *flags, &payload)
            }
            Frame::RstStream { stream_id, status } => {
                let mut payload = [0u8; 8];
                payload[..4].copy_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                payload[4..].copy_from_slice(&status.to_be_bytes());
                control(out, TYPE_RST_STREAM, 0, &payload)
            }
            Frame::Settings { entries } => {
                let mut payload = BytesMut::with_capacity(4 + 8 * entries.len());
                payload.put_u32(entries.len() as u32);
                for (flags, id, value) in entries {
                    payload.put_u32(u32::from(*flags) << 24 | (id & 0x00ff_ffff));
                    payload.put_u32(*value);
                }
                control(out, TYPE_SETTINGS, 0, &payload)
            }
            Frame::Ping { id } => control(out, TYPE_PING, 0, &id.to_be_bytes()),
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                let mut payload = [0u8; 8];
                payload[..4].copy_from_slice(&(last_good_stream_id & 0x7fff_ffff).to_be_bytes());
                payload[4..].copy_from_slice(&status.to_be_bytes());
                control(out, TYPE_GOAWAY, 0, &payload)
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let mut payload = [0u8; 8];
                payload[..4].copy_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                payload[4..].copy_from_slice(&(delta & 0x7fff_ffff).to_be_bytes());
                control(out, TYPE_WINDOW_UPDATE, 0, &payload)
            }
            Frame::Unknown { frame_type } => control(out, *frame_type, 0, &[]),
        }
    }

    /// Serialises and compresses a header block, ending with a sync flush so the peer
    /// can decompress it without waiting for more.
    fn header_block(&mut self, headers: &Headers) -> Result<Vec<u8>, SpdyError> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            raw.extend_from_slice(&(name.len() as u32).to_be_bytes());
            raw.extend_from_slice(name.as_bytes());
            raw.extend_from_slice(&(value.len() as u32).to_be_bytes());
            raw.extend_from_slice(value.as_bytes());
        }
        let start = self.compress.total_in();
        let mut out = Vec::with_capacity(raw.len() + 64);
        loop {
            let consumed = (self.compress.total_in() - start) as usize;
            self.compress
                .compress_vec(&raw[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::HeaderBlock(format!("compressing: {e}")))?;
            let consumed = (self.compress.total_in() - start) as usize;
            // Room left over means the flush completed.
            if consumed == raw.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            out.reserve(out.capacity().max(64));
        }
    }
}

fn control(
    out: &mut BytesMut,
    frame_type: u16,
    flags: u8,
    payload: &[u8],
) -> Result<(), SpdyError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(malformed("control", "payload longer than 2^24-1 bytes"));
    }
    out.put_u16(0x8000 | VERSION);
    out.put_u16(frame_type);
    out.put_u32(u32::from(flags) << 24 | payload.len() as u32);
    out.put_slice(payload);
    Ok(())
}

/// Reads frames, owning the connection's inbound header-decompression stream.
pub struct Decoder {
    decompress: Decompress,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder {
            decompress: Decompress::new(true),
        }
    }

    /// Takes the next whole frame off the front of `buf`; `None` until one has arrived.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let length = (u32::from_be_bytes([0, buf[5], buf[6], buf[7]])) as usize;
        if buf.len() < 8 + length {
            buf.reserve(8 + length - buf.len());
            return Ok(None);
        }
        let first = buf.get_u32();
        let second = buf.get_u32();
        let flags = (second >> 24) as u8;
        let payload = buf.split_to(length).freeze();
        if first & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data {
                stream_id: first & 0x7fff_ffff,
                flags,
                data: payload,
            }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let frame_type = (first & 0xffff) as u16;
        self.control(frame_type, flags, payload).map(Some)
    }

    fn control(&mut self, frame_type: u16, flags: u8, mut p: Bytes) -> Result<Frame, SpdyError> {
        let need = |name: &'static str, p: &Bytes, n: usize| {
            if p.len() < n {
                Err(malformed(name, format!("{} bytes, need {n}", p.len())))
            } else {
                Ok(())
            }
        };
        Ok(match frame_type {
            TYPE_SYN_STREAM => {
                need("SYN_STREAM", &p, 10)?;
                let stream_id = p.get_u32() & 0x7fff_ffff;
                let associated_to = p.get_u32() & 0x7fff_ffff;
                let priority = p.get_u8() >> 5;
                let _slot = p.get_u8();
                let headers = self.header_block(&p)?;
                Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    flags,
                    headers,
                }
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                need("SYN_REPLY", &p, 4)?;
                let stream_id = p.get_u32() & 0x7fff_ffff;
                let headers = self.header_block(&p)?;
                if frame_type == TYPE_SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        flags,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        flags,
                        headers,
                    }
                }
            }
            TYPE_RST_STREAM => {
                need("RST_STREAM", &p, 8)?;
                Frame::RstStream {
                    stream_id: p.get_u32() & 0x7fff_ffff,
                    status: p.get_u32(),
                }
            }
            TYPE_SETTINGS => {
                need("SETTINGS", &p, 4)?;
                let count = p.get_u32() as usize;
                if p.len() != count.saturating_mul(8) {
                    return Err(malformed(
                        "SETTINGS",
                        format!("{count} entries in {} bytes", p.len()),
                    ));
                }
                let entries = (0..count)
                    .map(|_| {
                        let word = p.get_u32();
                        ((word >> 24) as u8, word & 0x00ff_ffff, p.get_u32())
                    })
                    .collect();
                Frame::Settings { entries }
            }
            TYPE_PING => {
                need("PING", &p, 4)?;
                Frame::Ping { id: p.get_u32() }
            }
            TYPE_GOAWAY => {
                need("GOAWAY", &p, 4)?;
                let last_good_stream_id = p.get_u32() & 0x7fff_ffff;
                // SPDY/2 had no status; tolerate its absence.
                let status = if p.len() >= 4 { p.get_u32() } else { 0 };
                Frame::GoAway {
                    last_good_stream_id,
                    status,
                }
            }
            TYPE_WINDOW_UPDATE => {
                need("WINDOW_UPDATE", &p, 8)?;
                Frame::WindowUpdate {
                    stream_id: p.get_u32() & 0x7fff_ffff,
                    delta: p.get_u32() & 0x7fff_ffff,
                }
            }
            other => Frame::Unknown { frame_type: other },
        })
    }

    /// Decompresses and parses one header block.
    fn header_block(&mut self, compressed: &[u8]) -> Result<Headers, SpdyError> {
        let start_in = self.decompress.total_in();
        let mut raw = Vec::with_capacity(compressed.len() * 4 + 64);
        loop {
            let consumed = (self.decompress.total_in() - start_in) as usize;
            let produced = raw.len();
            match self.decompress.decompress_vec(
                &compressed[consumed..],
                &mut raw,
                FlushDecompress::Sync,
            ) {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.decompress
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| SpdyError::HeaderBlock(format!("the dictionary: {e}")))?;
                    continue;
                }
                Err(e) => return Err(SpdyError::HeaderBlock(e.to_string())),
            }
            let now_consumed = (self.decompress.total_in() - start_in) as usize;
            if now_consumed == compressed.len() && raw.len() < raw.capacity() {
                break;
            }
            if now_consumed == consumed && raw.len() == produced && raw.len() < raw.capacity() {
                return Err(SpdyError::HeaderBlock("truncated compressed data".into()));
            }
            if raw.len() >= MAX_HEADER_BLOCK {
                return Err(SpdyError::HeaderBlock(format!(
                    "larger than {MAX_HEADER_BLOCK} bytes"
                )));
            }
            raw.reserve(raw.capacity().max(64));
        }
        parse_header_block(&raw)
    }
}

fn parse_header_block(mut raw: &[u8]) -> Result<Headers, SpdyError> {
    fn take<'a>(raw: &mut &'a [u8], what: &str) -> Result<&'a [u8], SpdyError> {
        if raw.len() < 4 {
            return Err(SpdyError::HeaderBlock(format!("{what}: length cut short")));
        }
        let len = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
        *raw = &raw[4..];
        if raw.len() < len {
            return Err(SpdyError::HeaderBlock(format!("{what}: cut short")));
        }
        let (value, rest) = raw.split_at(len);
        *raw = rest;
        Ok(value)
    }
    if raw.len() < 4 {
        return Err(SpdyError::HeaderBlock("no header count".into()));
    }
    let count = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
    raw = &raw[4..];
    // Each pair takes at least 8 bytes: a count beyond that is a lie.
    let mut headers = Vec::with_capacity(count.min(raw.len() / 8));
    for _ in 0..count {
        let name = take(&mut raw, "a header name")?;
        let value = take(&mut raw, "a header value")?;
        let text = |b: &[u8], what: &str| {
            String::from_utf8(b.to_vec())
                .map_err(|_| SpdyError::HeaderBlock(format!("{what} is not UTF-8")))
        };
        headers.push((
            text(name, "a header name")?.to_ascii_lowercase(),
            text(value, "a header value")?,
        ));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn decode_all(decoder: &mut Decoder, bytes: &[u8]) -> Vec<Frame> {
        let mut buf = BytesMut::from(bytes);
        let mut frames = Vec::new();
        while let Some(f) = decoder.decode(&mut buf).expect("decodes") {
            frames.push(f);
        }
        assert!(buf.is_empty(), "{} bytes left over", buf.len());
        frames
    }

    #[test]
    fn the_dictionary_is_spdy3s() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert!(DICTIONARY.starts_with(b"\x00\x00\x00\x07options\x00\x00\x00\x04head"));
        assert!(DICTIONARY.ends_with(b"charset=iso-8859-1,utf-,*,enq=0."));
        // zlib announces a preset dictionary by its Adler-32: SPDY/3's is e3c6a7c2.
        let mut c = Compress::new(Compression::default(), true);
        assert_eq!(
            c.set_dictionary(DICTIONARY).expect("dictionary"),
            0xe3c6_a7c2
        );
    }

    /// Two SYN_STREAMs as client-go sends them for one forwarded connection, their
    /// header blocks compressed by the reference zlib (level 9, as Go's framer) in one
    /// stream with the dictionary.
    #[test]
    fn decodes_header_blocks_from_reference_zlib() {
        let wire = hex(concat!(
            "800300010000003d0000000100000000000078f9e3c6a7c202253a48f95b044eea16061606409ab3",
            "08125f99a074cc68004e892545a989b9d0c2863515141500000000ffff8003000100000016000000",
            "03000000000000225333a8a44a04000000ffff"
        ));
        let frames = decode_all(&mut Decoder::new(), &wire);
        assert_eq!(
            frames,
            vec![
                Frame::SynStream {
                    stream_id: 1,
                    associated_to: 0,
                    priority: 0,
                    flags: 0,
                    headers: headers(&[
                        ("port", "8080"),
                        ("requestid", "0"),
                        ("streamtype", "error")
                    ]),
                },
                Frame::SynStream {
                    stream_id: 3,
                    associated_to: 0,
                    priority: 0,
                    flags: 0,
                    headers: headers(&[
                        ("port", "8080"),
                        ("requestid", "0"),
                        ("streamtype", "data")
                    ]),
                },
            ]
        );
        assert_eq!(
            header(&headers(&[("streamtype", "data")]), "streamType"),
            Some("data")
        );
    }

    #[test]
    fn header_blocks_round_trip_through_one_stream_per_direction() {
        let mut enc = Encoder::new();
        let mut dec = Decoder::new();
        let sent = vec![
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 3,
                flags: FLAG_FIN,
                headers: headers(&[("streamtype", "error"), ("port", "80")]),
            },
            Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: Vec::new(),
            },
            Frame::Headers {
                stream_id: 1,
                flags: 0,
                headers: headers(&[("x-many", "a\0b"), ("empty", "")]),
            },
            Frame::Data {
                stream_id: 1,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"payload"),
            },
            Frame::SynReply {
                stream_id: 3,
                flags: FLAG_FIN,
                headers: headers(&[("status", "200 OK")]),
            },
        ];
        let mut wire = BytesMut::new();
        for f in &sent {
            enc.encode(f, &mut wire).expect("encodes");
        }
        // The first block announces the dictionary.
        assert_eq!(wire[18], 0x78, "a zlib header");
        assert_eq!(wire[19] & 0x20, 0x20, "FDICT is set");
        assert_eq!(&wire[20..24], &[0xe3, 0xc6, 0xa7, 0xc2]);
        // Fed in small pieces, frames come out whole and in order.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in wire.chunks(5) {
            buf.extend_from_slice(chunk);
            while let Some(f) = dec.decode(&mut buf).expect("decodes") {
                got.push(f);
            }
        }
        assert_eq!(got, sent);
    }

    #[test]
    fn control_frames_have_the_spdy3_layout() {
        let mut enc = Encoder::new();
        let mut out = BytesMut::new();
        enc.encode(&Frame::Ping { id: 7 }, &mut out).expect("ping");
        assert_eq!(&out[..], hex("800300060000000400000007"));
        out.clear();
        enc.encode(
            &Frame::RstStream {
                stream_id: 5,
                status: RST_CANCEL,
            },
            &mut out,
        )
        .expect("rst");
        assert_eq!(&out[..], hex("80030003000000080000000500000005"));
        out.clear();
        enc.encode(
            &Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"hi"),
            },
            &mut out,
        )
        .expect("data");
        assert_eq!(&out[..], hex("00000003010000026869"));

        let mut dec = Decoder::new();
        let wire = hex(concat!(
            "8003000400000014000000020100000400000064", // SETTINGS: 2 entries
            "000000070000000a",
            "80030009000000080000000100010000", // WINDOW_UPDATE stream 1 +65536
            "80030007000000080000000300000000", // GOAWAY last good 3, OK
            "800300ff00000000",                 // an unknown type
        ));
        assert_eq!(
            decode_all(&mut dec, &wire),
            vec![
                Frame::Settings {
                    entries: vec![(1, 4, 100), (0, 7, 10)]
                },
                Frame::WindowUpdate {
                    stream_id: 1,
                    delta: 65536
                },
                Frame::GoAway {
                    last_good_stream_id: 3,
                    status: 0
                },
                Frame::Unknown { frame_type: 0xff },
            ]
        );
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut buf = BytesMut::from(&hex("800200060000000400000001")[..]);
        assert!(matches!(
            Decoder::new().decode(&mut buf),
            Err(SpdyError::Version(2))
        ));
        let mut buf = BytesMut::from(&hex("80030006000000020000")[..]);
        assert!(matches!(
            Decoder::new().decode(&mut buf),
            Err(SpdyError::Malformed { frame: "PING", .. })
        ));
        // A SYN_STREAM whose header block is not zlib.
        let mut buf = BytesMut::from(&hex("800300010000000e00000001000000000000deadbeefcafe")[..]);
        assert!(matches!(
            Decoder::new().decode(&mut buf),
            Err(SpdyError::HeaderBlock(_))
        ));
        // A partial frame waits for the rest.
        let mut buf = BytesMut::from(&hex("0000000100000005abcd")[..]);
        assert_eq!(Decoder::new().decode(&mut buf).expect("partial"), None);
        assert_eq!(buf.len(), 10);
    }
}
