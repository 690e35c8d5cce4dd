//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`) decoded into
//! the JSON object the rest of the API server handles.
//!
//! `kubectl create deployment|job|cronjob|namespace|configmap|secret|service|serviceaccount` send
//! protobuf and do not fall back to JSON on 415, so the server has to read them. A body is
//! the 4-byte magic `k8s\0` followed by a `runtime.Unknown` message whose `typeMeta` names
//! the kind and whose `raw` field holds that kind's message.
//!
//! The decoder is a small wire-format reader driven by static message descriptors (field
//! number → JSON name and type). The output is the object as Kubernetes' JSON encoding
//! would print it: camelCase names, `kind`/`apiVersion` set, zero values of `omitempty`
//! fields omitted (Go's gogo-protobuf marshals every non-pointer field, so a zero on the
//! wire usually means "unset"), pointer fields kept even when zero, IntOrString as a number
//! or string, quantities as strings, bytes as base64, and unset timestamps left out.
//!
//! A field number a supported message does not describe is an error rather than being
//! dropped: silently losing part of what a client sent is worse than refusing it.
//!
//! Field numbers come from upstream's generated `.proto` files:
//! `k8s.io/api/core/v1/generated.proto` and `k8s.io/api/apps/v1/generated.proto`
//! (kubernetes/kubernetes `staging/src/k8s.io/api/…`, a 1.34-era tree),
//! `k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto` (v0.26), and the one-message
//! files `util/intstr` (`IntOrString{type=1,intVal=2,strVal=3}`), `api/resource`
//! (`Quantity{string=1}`) and `runtime` (`Unknown{typeMeta=1,raw=2,contentEncoding=3,
//! contentType=4}`, `TypeMeta{apiVersion=1,kind=2}`). Which fields are kept when zero
//! follows the Go types' JSON tags (pointers and fields without `omitempty`).

use base64::Engine;
use serde_json::{Map, Number, Value};

/// The media type of Kubernetes protobuf bodies.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// The prefix every Kubernetes protobuf body starts with.
pub const MAGIC: &[u8; 4] = b"k8s\0";

/// The `(apiVersion, kind)` pairs [`decode`] understands.
pub const SUPPORTED_KINDS: &[(&str, &str)] = &[
    ("v1", "Namespace"),
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "Service"),
    ("v1", "ServiceAccount"),
    ("apps/v1", "Deployment"),
    ("batch/v1", "Job"),
    ("batch/v1", "CronJob"),
];

/// Why a protobuf body could not be turned into JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtobufError {
    /// The body does not start with the `k8s\0` magic.
    #[error("not a kubernetes protobuf body: missing the \"k8s\\0\" prefix")]
    BadMagic,
    /// The input ended inside a field of the named message.
    #[error("truncated protobuf body inside message {message}")]
    Truncated {
        /// The message being read.
        message: &'static str,
    },
    /// A varint longer than 10 bytes.
    #[error("malformed varint in message {message}")]
    BadVarint {
        /// The message being read.
        message: &'static str,
    },
    /// A field number the message's descriptor does not know.
    #[error("unknown field number {field} in message {message}")]
    UnknownField {
        /// The message being read.
        message: &'static str,
        /// The field number found on the wire.
        field: u32,
    },
    /// A known field arrived with a wire type its type cannot have.
    #[error(
        "wrong wire type {found} for field {field} in message {message} (expected {expected})"
    )]
    WrongWireType {
        /// The message being read.
        message: &'static str,
        /// The field number.
        field: u32,
        /// The wire type the field's type requires.
        expected: &'static str,
        /// The wire type on the wire.
        found: &'static str,
    },
    /// A string field holding bytes that are not UTF-8.
    #[error("field {field} in message {message} is not valid utf-8")]
    InvalidUtf8 {
        /// The message being read.
        message: &'static str,
        /// The field number.
        field: u32,
    },
    /// An IntOrString whose `type` is neither 0 (int) nor 1 (string).
    #[error("invalid IntOrString type {0}")]
    InvalidIntOrString(i64),
    /// A timestamp outside the range JSON timestamps can express.
    #[error("timestamp {0} seconds is out of range")]
    InvalidTime(i64),
    /// A managedFields `fieldsV1` payload that is not JSON.
    #[error("managedFields fieldsV1 is not valid json")]
    InvalidFieldsV1,
    /// The `runtime.Unknown` envelope names no kind or apiVersion.
    #[error("the protobuf body does not name its apiVersion and kind")]
    MissingTypeMeta,
    /// A kind this decoder has no descriptor for.
    #[error("unsupported kind {api_version} {kind} in a protobuf body")]
    UnsupportedKind {
        /// The envelope's apiVersion.
        api_version: String,
        /// The envelope's kind.
        kind: String,
    },
    /// The envelope says `raw` is compressed or otherwise encoded.
    #[error("unsupported protobuf content encoding {0:?}")]
    UnsupportedContentEncoding(String),
    /// The envelope says `raw` is not protobuf.
    #[error("unsupported content type {0:?} inside a protobuf body")]
    UnsupportedContentType(String),
}

type Result<T> = std::result::Result<T, ProtobufError>;

/// Decodes a Kubernetes protobuf request body into the object's JSON form.
pub fn decode(body: &[u8]) -> Result<Value> {
    let rest = body.strip_prefix(MAGIC).ok_or(ProtobufError::BadMagic)?;
    let envelope = Envelope::parse(rest)?;
    if !envelope.content_encoding.is_empty() {
        return Err(ProtobufError::UnsupportedContentEncoding(
            envelope.content_encoding,
        ));
    }
    if !envelope.content_type.is_empty() && envelope.content_type != MEDIA_TYPE {
        return Err(ProtobufError::UnsupportedContentType(envelope.content_type));
    }
    if envelope.api_version.is_empty() || envelope.kind.is_empty() {
        return Err(ProtobufError::MissingTypeMeta);
    }
    let schema = schema_for(&envelope.api_version, &envelope.kind).ok_or_else(|| {
        ProtobufError::UnsupportedKind {
            api_version: envelope.api_version.clone(),
            kind: envelope.kind.clone(),
        }
    })?;
    let fields = decode_message(envelope.raw, schema)?;
    // Kubernetes prints kind and apiVersion first.
    let mut object = Map::new();
    object.insert("kind".into(), Value::String(envelope.kind.clone()));
    object.insert(
        "apiVersion".into(),
        Value::String(envelope.api_version.clone()),
    );
    object.extend(fields);
    tracing::debug!(
        api_version = %envelope.api_version,
        kind = %envelope.kind,
        raw_bytes = envelope.raw.len(),
        "decoded a protobuf request body"
    );
    Ok(Value::Object(object))
}

fn schema_for(api_version: &str, kind: &str) -> Option<&'static Msg> {
    Some(match (api_version, kind) {
        ("v1", "Namespace") => &NAMESPACE,
        ("v1", "ConfigMap") => &CONFIG_MAP,
        ("v1", "Secret") => &SECRET,
        ("v1", "Service") => &SERVICE,
        ("v1", "ServiceAccount") => &SERVICE_ACCOUNT,
        ("apps/v1", "Deployment") => &DEPLOYMENT,
        ("batch/v1", "Job") => &JOB,
        ("batch/v1", "CronJob") => &CRON_JOB,
        // `kubectl drain` (and client-go's typed deletes) send their options as protobuf.
        ("v1", "DeleteOptions") | ("meta.k8s.io/v1", "DeleteOptions") => &DELETE_OPTIONS,
        _ => return None,
    })
}

/// The `runtime.Unknown` envelope.
struct Envelope<'a> {
    api_version: String,
    kind: String,
    raw: &'a [u8],
    content_encoding: String,
    content_type: String,
}

impl<'a> Envelope<'a> {
    fn parse(buf: &'a [u8]) -> Result<Self> {
        const UNKNOWN: &str = "runtime.Unknown";
        const TYPE_META: &str = "runtime.TypeMeta";
        let mut envelope = Envelope {
            api_version: String::new(),
            kind: String::new(),
            raw: &[],
            content_encoding: String::new(),
            content_type: String::new(),
        };
        let mut reader = Reader::new(buf, UNKNOWN);
        while !reader.done() {
            let (field, wire) = reader.key()?;
            expect_wire(UNKNOWN, field, wire, Wire::Len)?;
            let value = reader.len_delimited()?;
            match field {
                1 => {
                    let mut meta = Reader::new(value, TYPE_META);
                    while !meta.done() {
                        let (field, wire) = meta.key()?;
                        expect_wire(TYPE_META, field, wire, Wire::Len)?;
                        let text = utf8(TYPE_META, field, meta.len_delimited()?)?;
                        match field {
                            1 => envelope.api_version = text,
                            2 => envelope.kind = text,
                            _ => {
                                return Err(ProtobufError::UnknownField {
                                    message: TYPE_META,
                                    field,
                                })
                            }
                        }
                    }
                }
                2 => envelope.raw = value,
                3 => envelope.content_encoding = utf8(UNKNOWN, field, value)?,
                4 => envelope.content_type = utf8(UNKNOWN, field, value)?,
                _ => {
                    return Err(ProtobufError::UnknownField {
                        message: UNKNOWN,
                        field,
                    })
                }
            }
        }
        Ok(envelope)
    }
}

// ---------------------------------------------------------------------------------------
// Wire format
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    Varint,
    Fixed64,
    Len,
    Fixed32,
}

impl Wire {
    fn name(self) -> &'static str {
        match self {
            Wire::Varint => "varint",
            Wire::Fixed64 => "64-bit",
            Wire::Len => "length-delimited",
            Wire::Fixed32 => "32-bit",
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    message: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], message: &'static str) -> Self {
        Reader {
            buf,
            pos: 0,
            message,
        }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn truncated(&self) -> ProtobufError {
        ProtobufError::Truncated {
            message: self.message,
        }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = *self.buf.get(self.pos).ok_or_else(|| self.truncated())?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ProtobufError::BadVarint {
            message: self.message,
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or_else(|| self.truncated())?;
        let slice = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| self.truncated())?;
        self.pos = end;
        Ok(slice)
    }

    fn len_delimited(&mut self) -> Result<&'a [u8]> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| self.truncated())?;
        self.take(len)
    }

    /// Reads a field key: the field number and its wire type.
    fn key(&mut self) -> Result<(u32, Wire)> {
        let key = self.varint()?;
        let field = u32::try_from(key >> 3).unwrap_or(u32::MAX);
        let wire = match key & 7 {
            0 => Wire::Varint,
            1 => Wire::Fixed64,
            2 => Wire::Len,
            5 => Wire::Fixed32,
            other => {
                // Groups (3, 4) are not used by Kubernetes; 6 and 7 do not exist.
                return Err(ProtobufError::WrongWireType {
                    message: self.message,
                    field,
                    expected: "varint, 64-bit, length-delimited or 32-bit",
                    found: match other {
                        3 => "start-group",
                        4 => "end-group",
                        _ => "reserved",
                    },
                });
            }
        };
        Ok((field, wire))
    }
}

fn expect_wire(message: &'static str, field: u32, found: Wire, expected: Wire) -> Result<()> {
    if found == expected {
        Ok(())
    } else {
        Err(ProtobufError::WrongWireType {
            message,
            field,
            expected: expected.name(),
            found: found.name(),
        })
    }
}

fn utf8(message: &'static str, field: u32, bytes: &[u8]) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| ProtobufError::InvalidUtf8 { message, field })
}

// ---------------------------------------------------------------------------------------
// Message descriptors and the generic decoder
// ---------------------------------------------------------------------------------------

/// How a field's value is encoded and printed.
#[derive(Clone, Copy)]
enum Ty {
    Str,
    Bool,
    Int32,
    Int64,
    Msg(&'static Msg),
    /// A Go struct embedded with `json:",inline"`: its fields land in the parent object.
    Inline(&'static Msg),
    /// `map<string, string>`.
    MapStr,
    /// `map<string, bytes>`, values printed as base64.
    MapBytes,
    /// `map<string, resource.Quantity>`.
    MapQuantity,
    IntOrString,
    Quantity,
    /// `meta.v1.Time`; unset (zero) timestamps are left out.
    Time,
    /// `meta.v1.FieldsV1`, whose raw bytes are a JSON document.
    FieldsV1,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Card {
    /// A Go field with `omitempty`: a zero value is left out.
    Opt,
    /// A pointer or a field without `omitempty`: printed even when zero.
    Keep,
    /// A repeated field (a Go slice), left out when empty.
    Rep,
}

struct Field {
    num: u32,
    name: &'static str,
    ty: Ty,
    card: Card,
}

struct Msg {
    name: &'static str,
    fields: &'static [Field],
}

const fn opt(num: u32, name: &'static str, ty: Ty) -> Field {
    Field {
        num,
        name,
        ty,
        card: Card::Opt,
    }
}

const fn keep(num: u32, name: &'static str, ty: Ty) -> Field {
    Field {
        num,
        name,
        ty,
        card: Card::Keep,
    }
}

const fn rep(num: u32, name: &'static str, ty: Ty) -> Field {
    Field {
        num,
        name,
        ty,
        card: Card::Rep,
    }
}

fn decode_message(buf: &[u8], msg: &'static Msg) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    let mut reader = Reader::new(buf, msg.name);
    while !reader.done() {
        let (num, wire) = reader.key()?;
        let field =
            msg.fields
                .iter()
                .find(|f| f.num == num)
                .ok_or(ProtobufError::UnknownField {
                    message: msg.name,
                    field: num,
                })?;
        decode_field(&mut reader, msg, field, wire, &mut out)?;
    }
    Ok(out)
}

fn decode_field(
    reader: &mut Reader<'_>,
    msg: &'static Msg,
    field: &Field,
    wire: Wire,
    out: &mut Map<String, Value>,
) -> Result<()> {
    let name = field.name;
    match field.ty {
        Ty::Str | Ty::Bool | Ty::Int32 | Ty::Int64 => {
            if field.card == Card::Rep {
                for value in repeated_scalar(reader, msg, field, wire)? {
                    push(out, name, value);
                }
            } else {
                let value = scalar(reader, msg, field, wire)?;
                if field.card == Card::Opt && is_zero(&value) {
                    // A later zero overrides an earlier value, as proto's last-one-wins.
                    out.remove(name);
                } else {
                    out.insert(name.into(), value);
                }
            }
        }
        Ty::Msg(inner) => {
            expect_wire(msg.name, field.num, wire, Wire::Len)?;
            let value = Value::Object(decode_message(reader.len_delimited()?, inner)?);
            put(out, field, value);
        }
        Ty::Inline(inner) => {
            expect_wire(msg.name, field.num, wire, Wire::Len)?;
            out.extend(decode_message(reader.len_delimited()?, inner)?);
        }
        Ty::MapStr | Ty::MapBytes | Ty::MapQuantity => {
            expect_wire(msg.name, field.num, wire, Wire::Len)?;
            let (key, value) = map_entry(reader.len_delimited()?, field.ty)?;
            let map = out.entry(name).or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(map) = map {
                map.insert(key, value);
            }
        }
        Ty::IntOrString => {
            expect_wire(msg.name, field.num, wire, Wire::Len)?;
            let value = int_or_string(reader.len_delimited()?)?;
            put(out, field, value);
        }
        Ty::Quantity => {
            expect_wire(msg.name, field.num, wire, Wire::Len)?;
            let value = quantity(reader.len_delimited()?)?;
            put(out, field, value);
        }
        Ty::Time => {
            expect_wire(msg.name, field.num, wire, Wire::Len)?;
            match time(reader.len_delimited()?)? {
                Some(value) => put(out, field, value),
                None if field.card != Card::Rep => {
                    out.remove(name);
                }
                None => {}
            }
        }
        Ty::FieldsV1 => {
            expect_wire(msg.name, field.num, wire, Wire::Len)?;
            let value = fields_v1(reader.len_delimited()?)?;
            put(out, field, value);
        }
    }
    Ok(())
}

/// Stores a non-scalar value: appended for repeated fields, set otherwise.
fn put(out: &mut Map<String, Value>, field: &Field, value: Value) {
    if field.card == Card::Rep {
        push(out, field.name, value);
    } else {
        out.insert(field.name.into(), value);
    }
}

fn push(out: &mut Map<String, Value>, name: &str, value: Value) {
    let list = out.entry(name).or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(list) = list {
        list.push(value);
    }
}

fn is_zero(value: &Value) -> bool {
    match value {
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_i64() == Some(0),
        _ => false,
    }
}

fn scalar(reader: &mut Reader<'_>, msg: &'static Msg, field: &Field, wire: Wire) -> Result<Value> {
    Ok(match field.ty {
        Ty::Str => {
            expect_wire(msg.name, field.num, wire, Wire::Len)?;
            Value::String(utf8(msg.name, field.num, reader.len_delimited()?)?)
        }
        Ty::Bool => {
            expect_wire(msg.name, field.num, wire, Wire::Varint)?;
            Value::Bool(reader.varint()? != 0)
        }
        Ty::Int32 => {
            expect_wire(msg.name, field.num, wire, Wire::Varint)?;
            Value::Number(Number::from(int32(reader.varint()?)))
        }
        Ty::Int64 => {
            expect_wire(msg.name, field.num, wire, Wire::Varint)?;
            // Negative int64s are sent as 10-byte two's complement varints.
            Value::Number(Number::from(reader.varint()? as i64))
        }
        _ => Value::Null,
    })
}

/// Negative int32s are sign-extended to 64 bits on the wire; keep the low 32.
fn int32(raw: u64) -> i32 {
    raw as i64 as i32
}

/// Repeated scalars: one element per occurrence, or a packed run of varints.
fn repeated_scalar(
    reader: &mut Reader<'_>,
    msg: &'static Msg,
    field: &Field,
    wire: Wire,
) -> Result<Vec<Value>> {
    let numeric = matches!(field.ty, Ty::Bool | Ty::Int32 | Ty::Int64);
    if numeric && wire == Wire::Len {
        let mut packed = Reader::new(reader.len_delimited()?, msg.name);
        let mut values = Vec::new();
        while !packed.done() {
            let raw = packed.varint()?;
            values.push(match field.ty {
                Ty::Bool => Value::Bool(raw != 0),
                Ty::Int32 => Value::Number(Number::from(int32(raw))),
                _ => Value::Number(Number::from(raw as i64)),
            });
        }
        return Ok(values);
    }
    Ok(vec![scalar(reader, msg, field, wire)?])
}

const MAP_ENTRY: &str = "map entry";

fn map_entry(buf: &[u8], ty: Ty) -> Result<(String, Value)> {
    let mut reader = Reader::new(buf, MAP_ENTRY);
    let mut key = String::new();
    let mut value = match ty {
        Ty::MapQuantity => Value::String("0".into()),
        _ => Value::String(String::new()),
    };
    while !reader.done() {
        let (field, wire) = reader.key()?;
        expect_wire(MAP_ENTRY, field, wire, Wire::Len)?;
        let bytes = reader.len_delimited()?;
        match field {
            1 => key = utf8(MAP_ENTRY, field, bytes)?,
            2 => {
                value = match ty {
                    Ty::MapBytes => {
                        Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
                    }
                    Ty::MapQuantity => quantity(bytes)?,
                    _ => Value::String(utf8(MAP_ENTRY, field, bytes)?),
                }
            }
            _ => {
                return Err(ProtobufError::UnknownField {
                    message: MAP_ENTRY,
                    field,
                })
            }
        }
    }
    Ok((key, value))
}

fn int_or_string(buf: &[u8]) -> Result<Value> {
    const NAME: &str = "intstr.IntOrString";
    let mut reader = Reader::new(buf, NAME);
    let (mut kind, mut int_val, mut str_val) = (0i64, 0i32, String::new());
    while !reader.done() {
        let (field, wire) = reader.key()?;
        match field {
            1 => {
                expect_wire(NAME, field, wire, Wire::Varint)?;
                kind = reader.varint()? as i64;
            }
            2 => {
                expect_wire(NAME, field, wire, Wire::Varint)?;
                int_val = int32(reader.varint()?);
            }
            3 => {
                expect_wire(NAME, field, wire, Wire::Len)?;
                str_val = utf8(NAME, field, reader.len_delimited()?)?;
            }
            _ => {
                return Err(ProtobufError::UnknownField {
                    message: NAME,
                    field,
                })
            }
        }
    }
    match kind {
        0 => Ok(Value::Number(Number::from(int_val))),
        1 => Ok(Value::String(str_val)),
        other => Err(ProtobufError::InvalidIntOrString(other)),
    }
}

fn quantity(buf: &[u8]) -> Result<Value> {
    const NAME: &str = "resource.Quantity";
    let mut reader = Reader::new(buf, NAME);
    let mut text = String::new();
    while !reader.done() {
        let (field, wire) = reader.key()?;
        if field != 1 {
            return Err(ProtobufError::UnknownField {
                message: NAME,
                field,
            });
        }
        expect_wire(NAME, field, wire, Wire::Len)?;
        text = utf8(NAME, field, reader.len_delimited()?)?;
    }
    // A zero Quantity prints as "0" in JSON.
    if text.is_empty() {
        text.push('0');
    }
    Ok(Value::String(text))
}

/// `meta.v1.Time`; `None` for the zero time, which Go marshals as an empty message.
fn time(buf: &[u8]) -> Result<Option<Value>> {
    const NAME: &str = "v1.Time";
    let mut reader = Reader::new(buf, NAME);
    let mut seconds = 0i64;
    while !reader.done() {
        let (field, wire) = reader.key()?;
        expect_wire(NAME, field, wire, Wire::Varint)?;
        let raw = reader.varint()?;
        match field {
            1 => seconds = raw as i64,
            // JSON timestamps have second precision; Kubernetes drops nanos as well.
            2 => {}
            _ => {
                return Err(ProtobufError::UnknownField {
                    message: NAME,
                    field,
                })
            }
        }
    }
    if seconds == 0 {
        return Ok(None);
    }
    let at =
        chrono::DateTime::from_timestamp(seconds, 0).ok_or(ProtobufError::InvalidTime(seconds))?;
    Ok(Some(Value::String(
        at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )))
}

fn fields_v1(buf: &[u8]) -> Result<Value> {
    const NAME: &str = "v1.FieldsV1";
    let mut reader = Reader::new(buf, NAME);
    let mut value = Value::Object(Map::new());
    while !reader.done() {
        let (field, wire) = reader.key()?;
        if field != 1 {
            return Err(ProtobufError::UnknownField {
                message: NAME,
                field,
            });
        }
        expect_wire(NAME, field, wire, Wire::Len)?;
        value = serde_json::from_slice(reader.len_delimited()?)
            .map_err(|_| ProtobufError::InvalidFieldsV1)?;
    }
    Ok(value)
}

// ---------------------------------------------------------------------------------------
// k8s.io/apimachinery/pkg/apis/meta/v1
// ---------------------------------------------------------------------------------------

static OBJECT_META: Msg = Msg {
    name: "ObjectMeta",
    fields: &[
        opt(1, "name", Ty::Str),
        opt(2, "generateName", Ty::Str),
        opt(3, "namespace", Ty::Str),
        opt(4, "selfLink", Ty::Str),
        opt(5, "uid", Ty::Str),
        opt(6, "resourceVersion", Ty::Str),
        opt(7, "generation", Ty::Int64),
        opt(8, "creationTimestamp", Ty::Time),
        opt(9, "deletionTimestamp", Ty::Time),
        keep(10, "deletionGracePeriodSeconds", Ty::Int64),
        opt(11, "labels", Ty::MapStr),
        opt(12, "annotations", Ty::MapStr),
        rep(13, "ownerReferences", Ty::Msg(&OWNER_REFERENCE)),
        rep(14, "finalizers", Ty::Str),
        rep(17, "managedFields", Ty::Msg(&MANAGED_FIELDS_ENTRY)),
    ],
};

static OWNER_REFERENCE: Msg = Msg {
    name: "OwnerReference",
    fields: &[
        keep(5, "apiVersion", Ty::Str),
        keep(1, "kind", Ty::Str),
        keep(3, "name", Ty::Str),
        keep(4, "uid", Ty::Str),
        keep(6, "controller", Ty::Bool),
        keep(7, "blockOwnerDeletion", Ty::Bool),
    ],
};

static MANAGED_FIELDS_ENTRY: Msg = Msg {
    name: "ManagedFieldsEntry",
    fields: &[
        opt(1, "manager", Ty::Str),
        opt(2, "operation", Ty::Str),
        opt(3, "apiVersion", Ty::Str),
        opt(4, "time", Ty::Time),
        opt(6, "fieldsType", Ty::Str),
        opt(7, "fieldsV1", Ty::FieldsV1),
        opt(8, "subresource", Ty::Str),
    ],
};

static LABEL_SELECTOR: Msg = Msg {
    name: "LabelSelector",
    fields: &[
        opt(1, "matchLabels", Ty::MapStr),
        rep(2, "matchExpressions", Ty::Msg(&LABEL_SELECTOR_REQUIREMENT)),
    ],
};

static LABEL_SELECTOR_REQUIREMENT: Msg = Msg {
    name: "LabelSelectorRequirement",
    fields: &[
        keep(1, "key", Ty::Str),
        keep(2, "operator", Ty::Str),
        rep(3, "values", Ty::Str),
    ],
};

static CONDITION: Msg = Msg {
    name: "Condition",
    fields: &[
        keep(1, "type", Ty::Str),
        keep(2, "status", Ty::Str),
        opt(3, "observedGeneration", Ty::Int64),
        keep(4, "lastTransitionTime", Ty::Time),
        keep(5, "reason", Ty::Str),
        keep(6, "message", Ty::Str),
    ],
};

// ---------------------------------------------------------------------------------------
// k8s.io/api/core/v1: the top-level kinds
// ---------------------------------------------------------------------------------------

static NAMESPACE: Msg = Msg {
    name: "Namespace",
    fields: &[
        opt(1, "metadata", Ty::Msg(&OBJECT_META)),
        opt(2, "spec", Ty::Msg(&NAMESPACE_SPEC)),
        opt(3, "status", Ty::Msg(&NAMESPACE_STATUS)),
    ],
};

static NAMESPACE_SPEC: Msg = Msg {
    name: "NamespaceSpec",
    fields: &[rep(1, "finalizers", Ty::Str)],
};

static NAMESPACE_STATUS: Msg = Msg {
    name: "NamespaceStatus",
    fields: &[
        opt(1, "phase", Ty::Str),
        rep(2, "conditions", Ty::Msg(&NAMESPACE_CONDITION)),
    ],
};

static NAMESPACE_CONDITION: Msg = Msg {
    name: "NamespaceCondition",
    fields: &[
        keep(1, "type", Ty::Str),
        keep(2, "status", Ty::Str),
        opt(4, "lastTransitionTime", Ty::Time),
        opt(5, "reason", Ty::Str),
        opt(6, "message", Ty::Str),
    ],
};

static CONFIG_MAP: Msg = Msg {
    name: "ConfigMap",
    fields: &[
        opt(1, "metadata", Ty::Msg(&OBJECT_META)),
        keep(4, "immutable", Ty::Bool),
        opt(2, "data", Ty::MapStr),
        opt(3, "binaryData", Ty::MapBytes),
    ],
};

static SECRET: Msg = Msg {
    name: "Secret",
    fields: &[
        opt(1, "metadata", Ty::Msg(&OBJECT_META)),
        keep(5, "immutable", Ty::Bool),
        opt(2, "data", Ty::MapBytes),
        opt(4, "stringData", Ty::MapStr),
        opt(3, "type", Ty::Str),
    ],
};

static SERVICE_ACCOUNT: Msg = Msg {
    name: "ServiceAccount",
    fields: &[
        opt(1, "metadata", Ty::Msg(&OBJECT_META)),
        rep(2, "secrets", Ty::Msg(&OBJECT_REFERENCE)),
        rep(3, "imagePullSecrets", Ty::Msg(&LOCAL_OBJECT_REFERENCE)),
        keep(4, "automountServiceAccountToken", Ty::Bool),
    ],
};

static OBJECT_REFERENCE: Msg = Msg {
    name: "ObjectReference",
    fields: &[
        opt(1, "kind", Ty::Str),
        opt(2, "namespace", Ty::Str),
        opt(3, "name", Ty::Str),
        opt(4, "uid", Ty::Str),
        opt(5, "apiVersion", Ty::Str),
        opt(6, "resourceVersion", Ty::Str),
        opt(7, "fieldPath", Ty::Str),
    ],
};

static DELETE_OPTIONS: Msg = Msg {
    name: "DeleteOptions",
    fields: &[
        keep(1, "gracePeriodSeconds", Ty::Int64),
        opt(2, "preconditions", Ty::Msg(&PRECONDITIONS)),
        keep(3, "orphanDependents", Ty::Bool),
        keep(4, "propagationPolicy", Ty::Str),
        rep(5, "dryRun", Ty::Str),
        keep(
            6,
            "ignoreStoreReadErrorWithClusterBreakingPotential",
            Ty::Bool,
        ),
    ],
};

static PRECONDITIONS: Msg = Msg {
    name: "Preconditions",
    fields: &[keep(1, "uid", Ty::Str), keep(2, "resourceVersion", Ty::Str)],
};

static LOCAL_OBJECT_REFERENCE: Msg = Msg {
    name: "LocalObjectReference",
    fields: &[opt(1, "name", Ty::Str)],
};

// ---------------------------------------------------------------------------------------
// core/v1 Service
// ---------------------------------------------------------------------------------------

static SERVICE: Msg = Msg {
    name: "Service",
    fields: &[
        opt(1, "metadata", Ty::Msg(&OBJECT_META)),
        opt(2, "spec", Ty::Msg(&SERVICE_SPEC)),
        opt(3, "status", Ty::Msg(&SERVICE_STATUS)),
    ],
};

static SERVICE_SPEC: Msg = Msg {
    name: "ServiceSpec",
    fields: &[
        rep(1, "ports", Ty::Msg(&SERVICE_PORT)),
        opt(2, "selector", Ty::MapStr),
        opt(3, "clusterIP", Ty::Str),
        rep(18, "clusterIPs", Ty::Str),
        opt(4, "type", Ty::Str),
        rep(5, "externalIPs", Ty::Str),
        opt(7, "sessionAffinity", Ty::Str),
        opt(8, "loadBalancerIP", Ty::Str),
        rep(9, "loadBalancerSourceRanges", Ty::Str),
        opt(10, "externalName", Ty::Str),
        opt(11, "externalTrafficPolicy", Ty::Str),
        opt(12, "healthCheckNodePort", Ty::Int32),
        opt(13, "publishNotReadyAddresses", Ty::Bool),
        opt(
            14,
            "sessionAffinityConfig",
            Ty::Msg(&SESSION_AFFINITY_CONFIG),
        ),
        rep(19, "ipFamilies", Ty::Str),
        keep(17, "ipFamilyPolicy", Ty::Str),
        keep(20, "allocateLoadBalancerNodePorts", Ty::Bool),
        keep(21, "loadBalancerClass", Ty::Str),
        keep(22, "internalTrafficPolicy", Ty::Str),
        keep(23, "trafficDistribution", Ty::Str),
    ],
};

static SERVICE_PORT: Msg = Msg {
    name: "ServicePort",
    fields: &[
        opt(1, "name", Ty::Str),
        opt(2, "protocol", Ty::Str),
        keep(6, "appProtocol", Ty::Str),
        keep(3, "port", Ty::Int32),
        opt(4, "targetPort", Ty::IntOrString),
        opt(5, "nodePort", Ty::Int32),
    ],
};

static SESSION_AFFINITY_CONFIG: Msg = Msg {
    name: "SessionAffinityConfig",
    fields: &[opt(1, "clientIP", Ty::Msg(&CLIENT_IP_CONFIG))],
};

static CLIENT_IP_CONFIG: Msg = Msg {
    name: "ClientIPConfig",
    fields: &[keep(1, "timeoutSeconds", Ty::Int32)],
};

static SERVICE_STATUS: Msg = Msg {
    name: "ServiceStatus",
    fields: &[
        opt(1, "loadBalancer", Ty::Msg(&LOAD_BALANCER_STATUS)),
        rep(2, "conditions", Ty::Msg(&CONDITION)),
    ],
};

static LOAD_BALANCER_STATUS: Msg = Msg {
    name: "LoadBalancerStatus",
    fields: &[rep(1, "ingress", Ty::Msg(&LOAD_BALANCER_INGRESS))],
};

static LOAD_BALANCER_INGRESS: Msg = Msg {
    name: "LoadBalancerIngress",
    fields: &[
        opt(1, "ip", Ty::Str),
        opt(2, "hostname", Ty::Str),
        keep(3, "ipMode", Ty::Str),
        rep(4, "ports", Ty::Msg(&PORT_STATUS)),
    ],
};

static PORT_STATUS: Msg = Msg {
    name: "PortStatus",
    fields: &[
        keep(1, "port", Ty::Int32),
        keep(2, "protocol", Ty::Str),
        keep(3, "error", Ty::Str),
    ],
};

// ---------------------------------------------------------------------------------------
// apps/v1 Deployment
// ---------------------------------------------------------------------------------------

static DEPLOYMENT: Msg = Msg {
    name: "Deployment",
    fields: &[
        opt(1, "metadata", Ty::Msg(&OBJECT_META)),
        opt(2, "spec", Ty::Msg(&DEPLOYMENT_SPEC)),
        opt(3, "status", Ty::Msg(&DEPLOYMENT_STATUS)),
    ],
};

static DEPLOYMENT_SPEC: Msg = Msg {
    name: "DeploymentSpec",
    fields: &[
        keep(1, "replicas", Ty::Int32),
        opt(2, "selector", Ty::Msg(&LABEL_SELECTOR)),
        opt(3, "template", Ty::Msg(&POD_TEMPLATE_SPEC)),
        opt(4, "strategy", Ty::Msg(&DEPLOYMENT_STRATEGY)),
        opt(5, "minReadySeconds", Ty::Int32),
        keep(6, "revisionHistoryLimit", Ty::Int32),
        opt(7, "paused", Ty::Bool),
        keep(9, "progressDeadlineSeconds", Ty::Int32),
    ],
};

static DEPLOYMENT_STRATEGY: Msg = Msg {
    name: "DeploymentStrategy",
    fields: &[
        opt(1, "type", Ty::Str),
        opt(2, "rollingUpdate", Ty::Msg(&ROLLING_UPDATE_DEPLOYMENT)),
    ],
};

static ROLLING_UPDATE_DEPLOYMENT: Msg = Msg {
    name: "RollingUpdateDeployment",
    fields: &[
        opt(1, "maxUnavailable", Ty::IntOrString),
        opt(2, "maxSurge", Ty::IntOrString),
    ],
};

static DEPLOYMENT_STATUS: Msg = Msg {
    name: "DeploymentStatus",
    fields: &[
        opt(1, "observedGeneration", Ty::Int64),
        opt(2, "replicas", Ty::Int32),
        opt(3, "updatedReplicas", Ty::Int32),
        opt(7, "readyReplicas", Ty::Int32),
        opt(4, "availableReplicas", Ty::Int32),
        opt(5, "unavailableReplicas", Ty::Int32),
        rep(6, "conditions", Ty::Msg(&DEPLOYMENT_CONDITION)),
        keep(8, "collisionCount", Ty::Int32),
    ],
};

static DEPLOYMENT_CONDITION: Msg = Msg {
    name: "DeploymentCondition",
    fields: &[
        keep(1, "type", Ty::Str),
        keep(2, "status", Ty::Str),
        opt(6, "lastUpdateTime", Ty::Time),
        opt(7, "lastTransitionTime", Ty::Time),
        opt(4, "reason", Ty::Str),
        opt(5, "message", Ty::Str),
    ],
};

// ---------------------------------------------------------------------------------------
// batch/v1 Job and CronJob (`kubectl create job|cronjob`); field numbers from
// k8s.io/api/batch/v1. The failure and success policies are not described: a body
// carrying one is refused.
// ---------------------------------------------------------------------------------------

static JOB: Msg = Msg {
    name: "Job",
    fields: &[
        opt(1, "metadata", Ty::Msg(&OBJECT_META)),
        opt(2, "spec", Ty::Msg(&JOB_SPEC)),
        opt(3, "status", Ty::Msg(&JOB_STATUS)),
    ],
};

static JOB_SPEC: Msg = Msg {
    name: "JobSpec",
    fields: &[
        keep(1, "parallelism", Ty::Int32),
        keep(2, "completions", Ty::Int32),
        keep(3, "activeDeadlineSeconds", Ty::Int64),
        opt(4, "selector", Ty::Msg(&LABEL_SELECTOR)),
        keep(5, "manualSelector", Ty::Bool),
        opt(6, "template", Ty::Msg(&POD_TEMPLATE_SPEC)),
        keep(7, "backoffLimit", Ty::Int32),
        keep(8, "ttlSecondsAfterFinished", Ty::Int32),
        keep(9, "completionMode", Ty::Str),
        keep(10, "suspend", Ty::Bool),
        keep(12, "backoffLimitPerIndex", Ty::Int32),
        keep(13, "maxFailedIndexes", Ty::Int32),
        keep(14, "podReplacementPolicy", Ty::Str),
        keep(15, "managedBy", Ty::Str),
    ],
};

static JOB_STATUS: Msg = Msg {
    name: "JobStatus",
    fields: &[
        rep(1, "conditions", Ty::Msg(&JOB_CONDITION)),
        opt(2, "startTime", Ty::Time),
        opt(3, "completionTime", Ty::Time),
        opt(4, "active", Ty::Int32),
        opt(5, "succeeded", Ty::Int32),
        opt(6, "failed", Ty::Int32),
        opt(7, "completedIndexes", Ty::Str),
    ],
};

static CRON_JOB: Msg = Msg {
    name: "CronJob",
    fields: &[
        opt(1, "metadata", Ty::Msg(&OBJECT_META)),
        opt(2, "spec", Ty::Msg(&CRON_JOB_SPEC)),
        opt(3, "status", Ty::Msg(&CRON_JOB_STATUS)),
    ],
};

static CRON_JOB_SPEC: Msg = Msg {
    name: "CronJobSpec",
    fields: &[
        keep(1, "schedule", Ty::Str),
        keep(8, "timeZone", Ty::Str),
        keep(2, "startingDeadlineSeconds", Ty::Int64),
        opt(3, "concurrencyPolicy", Ty::Str),
        keep(4, "suspend", Ty::Bool),
        opt(5, "jobTemplate", Ty::Msg(&JOB_TEMPLATE_SPEC)),
        keep(6, "successfulJobsHistoryLimit", Ty::Int32),
        keep(7, "failedJobsHistoryLimit", Ty::Int32),
    ],
};

static JOB_TEMPLATE_SPEC: Msg = Msg {
    name: "JobTemplateSpec",
    fields: &[
        opt(1, "metadata", Ty::Msg(&OBJECT_META)),
        opt(2, "spec", Ty::Msg(&JOB_SPEC)),
    ],
};

static CRON_JOB_STATUS: Msg = Msg {
    name: "CronJobStatus",
    fields: &[
        rep(1, "active", Ty::Msg(&OBJECT_REFERENCE)),
        opt(4, "lastScheduleTime", Ty::Time),
        opt(5, "lastSuccessfulTime", Ty::Time),
    ],
};

static JOB_CONDITION: Msg = Msg {
    name: "JobCondition",
    fields: &[
        keep(1, "type", Ty::Str),
        keep(2, "status", Ty::Str),
        opt(3, "lastProbeTime", Ty::Time),
        opt(4, "lastTransitionTime", Ty::Time),
        opt(5, "reason", Ty::Str),
        opt(6, "message", Ty::Str),
    ],
};

// ---------------------------------------------------------------------------------------
// core/v1 pod templates
// ---------------------------------------------------------------------------------------

static POD_TEMPLATE_SPEC: Msg = Msg {
    name: "PodTemplateSpec",
    fields: &[
        opt(1, "metadata", Ty::Msg(&OBJECT_META)),
        opt(2, "spec", Ty::Msg(&POD_SPEC)),
    ],
};

static POD_SPEC: Msg = Msg {
    name: "PodSpec",
    fields: &[
        rep(1, "volumes", Ty::Msg(&VOLUME)),
        rep(20, "initContainers", Ty::Msg(&CONTAINER)),
        rep(2, "containers", Ty::Msg(&CONTAINER)),
        rep(34, "ephemeralContainers", Ty::Msg(&EPHEMERAL_CONTAINER)),
        opt(3, "restartPolicy", Ty::Str),
        keep(4, "terminationGracePeriodSeconds", Ty::Int64),
        keep(5, "activeDeadlineSeconds", Ty::Int64),
        opt(6, "dnsPolicy", Ty::Str),
        opt(7, "nodeSelector", Ty::MapStr),
        opt(8, "serviceAccountName", Ty::Str),
        opt(9, "serviceAccount", Ty::Str),
        keep(21, "automountServiceAccountToken", Ty::Bool),
        opt(10, "nodeName", Ty::Str),
        opt(11, "hostNetwork", Ty::Bool),
        opt(12, "hostPID", Ty::Bool),
        opt(13, "hostIPC", Ty::Bool),
        keep(27, "shareProcessNamespace", Ty::Bool),
        opt(14, "securityContext", Ty::Msg(&POD_SECURITY_CONTEXT)),
        rep(15, "imagePullSecrets", Ty::Msg(&LOCAL_OBJECT_REFERENCE)),
        opt(16, "hostname", Ty::Str),
        opt(17, "subdomain", Ty::Str),
        opt(18, "affinity", Ty::Msg(&AFFINITY)),
        opt(19, "schedulerName", Ty::Str),
        rep(22, "tolerations", Ty::Msg(&TOLERATION)),
        rep(23, "hostAliases", Ty::Msg(&HOST_ALIAS)),
        opt(24, "priorityClassName", Ty::Str),
        keep(25, "priority", Ty::Int32),
        opt(26, "dnsConfig", Ty::Msg(&POD_DNS_CONFIG)),
        rep(28, "readinessGates", Ty::Msg(&POD_READINESS_GATE)),
        keep(29, "runtimeClassName", Ty::Str),
        keep(30, "enableServiceLinks", Ty::Bool),
        keep(31, "preemptionPolicy", Ty::Str),
        opt(32, "overhead", Ty::MapQuantity),
        rep(
            33,
            "topologySpreadConstraints",
            Ty::Msg(&TOPOLOGY_SPREAD_CONSTRAINT),
        ),
        keep(35, "setHostnameAsFQDN", Ty::Bool),
        opt(36, "os", Ty::Msg(&POD_OS)),
        keep(37, "hostUsers", Ty::Bool),
        rep(38, "schedulingGates", Ty::Msg(&POD_SCHEDULING_GATE)),
        rep(39, "resourceClaims", Ty::Msg(&POD_RESOURCE_CLAIM)),
        opt(40, "resources", Ty::Msg(&RESOURCE_REQUIREMENTS)),
        keep(41, "hostnameOverride", Ty::Str),
    ],
};

static CONTAINER: Msg = Msg {
    name: "Container",
    fields: &[
        keep(1, "name", Ty::Str),
        opt(2, "image", Ty::Str),
        rep(3, "command", Ty::Str),
        rep(4, "args", Ty::Str),
        opt(5, "workingDir", Ty::Str),
        rep(6, "ports", Ty::Msg(&CONTAINER_PORT)),
        rep(19, "envFrom", Ty::Msg(&ENV_FROM_SOURCE)),
        rep(7, "env", Ty::Msg(&ENV_VAR)),
        opt(8, "resources", Ty::Msg(&RESOURCE_REQUIREMENTS)),
        rep(23, "resizePolicy", Ty::Msg(&CONTAINER_RESIZE_POLICY)),
        keep(24, "restartPolicy", Ty::Str),
        rep(25, "restartPolicyRules", Ty::Msg(&CONTAINER_RESTART_RULE)),
        rep(9, "volumeMounts", Ty::Msg(&VOLUME_MOUNT)),
        rep(21, "volumeDevices", Ty::Msg(&VOLUME_DEVICE)),
        opt(10, "livenessProbe", Ty::Msg(&PROBE)),
        opt(11, "readinessProbe", Ty::Msg(&PROBE)),
        opt(22, "startupProbe", Ty::Msg(&PROBE)),
        opt(12, "lifecycle", Ty::Msg(&LIFECYCLE)),
        opt(13, "terminationMessagePath", Ty::Str),
        opt(20, "terminationMessagePolicy", Ty::Str),
        opt(14, "imagePullPolicy", Ty::Str),
        opt(15, "securityContext", Ty::Msg(&SECURITY_CONTEXT)),
        opt(16, "stdin", Ty::Bool),
        opt(17, "stdinOnce", Ty::Bool),
        opt(18, "tty", Ty::Bool),
    ],
};

// EphemeralContainerCommon carries Container's field numbers, inlined in JSON.
static EPHEMERAL_CONTAINER: Msg = Msg {
    name: "EphemeralContainer",
    fields: &[
        opt(1, "ephemeralContainerCommon", Ty::Inline(&CONTAINER)),
        opt(2, "targetContainerName", Ty::Str),
    ],
};

static CONTAINER_PORT: Msg = Msg {
    name: "ContainerPort",
    fields: &[
        opt(1, "name", Ty::Str),
        opt(2, "hostPort", Ty::Int32),
        keep(3, "containerPort", Ty::Int32),
        opt(4, "protocol", Ty::Str),
        opt(5, "hostIP", Ty::Str),
    ],
};

static CONTAINER_RESIZE_POLICY: Msg = Msg {
    name: "ContainerResizePolicy",
    fields: &[
        keep(1, "resourceName", Ty::Str),
        keep(2, "restartPolicy", Ty::Str),
    ],
};

static CONTAINER_RESTART_RULE: Msg = Msg {
    name: "ContainerRestartRule",
    fields: &[
        keep(1, "action", Ty::Str),
        opt(
            2,
            "exitCodes",
            Ty::Msg(&CONTAINER_RESTART_RULE_ON_EXIT_CODES),
        ),
    ],
};

static CONTAINER_RESTART_RULE_ON_EXIT_CODES: Msg = Msg {
    name: "ContainerRestartRuleOnExitCodes",
    fields: &[keep(1, "operator", Ty::Str), rep(2, "values", Ty::Int32)],
};

static ENV_VAR: Msg = Msg {
    name: "EnvVar",
    fields: &[
        keep(1, "name", Ty::Str),
        opt(2, "value", Ty::Str),
        opt(3, "valueFrom", Ty::Msg(&ENV_VAR_SOURCE)),
    ],
};

static ENV_VAR_SOURCE: Msg = Msg {
    name: "EnvVarSource",
    fields: &[
        opt(1, "fieldRef", Ty::Msg(&OBJECT_FIELD_SELECTOR)),
        opt(2, "resourceFieldRef", Ty::Msg(&RESOURCE_FIELD_SELECTOR)),
        opt(3, "configMapKeyRef", Ty::Msg(&CONFIG_MAP_KEY_SELECTOR)),
        opt(4, "secretKeyRef", Ty::Msg(&SECRET_KEY_SELECTOR)),
        opt(5, "fileKeyRef", Ty::Msg(&FILE_KEY_SELECTOR)),
    ],
};

static OBJECT_FIELD_SELECTOR: Msg = Msg {
    name: "ObjectFieldSelector",
    fields: &[opt(1, "apiVersion", Ty::Str), keep(2, "fieldPath", Ty::Str)],
};

static RESOURCE_FIELD_SELECTOR: Msg = Msg {
    name: "ResourceFieldSelector",
    fields: &[
        opt(1, "containerName", Ty::Str),
        keep(2, "resource", Ty::Str),
        opt(3, "divisor", Ty::Quantity),
    ],
};

static CONFIG_MAP_KEY_SELECTOR: Msg = Msg {
    name: "ConfigMapKeySelector",
    fields: &[
        opt(
            1,
            "localObjectReference",
            Ty::Inline(&LOCAL_OBJECT_REFERENCE),
        ),
        keep(2, "key", Ty::Str),
        keep(3, "optional", Ty::Bool),
    ],
};

static SECRET_KEY_SELECTOR: Msg = Msg {
    name: "SecretKeySelector",
    fields: &[
        opt(
            1,
            "localObjectReference",
            Ty::Inline(&LOCAL_OBJECT_REFERENCE),
        ),
        keep(2, "key", Ty::Str),
        keep(3, "optional", Ty::Bool),
    ],
};

static FILE_KEY_SELECTOR: Msg = Msg {
    name: "FileKeySelector",
    fields: &[
        keep(1, "volumeName", Ty::Str),
        keep(2, "path", Ty::Str),
        keep(3, "key", Ty::Str),
        keep(4, "optional", Ty::Bool),
    ],
};

static ENV_FROM_SOURCE: Msg = Msg {
    name: "EnvFromSource",
    fields: &[
        opt(1, "prefix", Ty::Str),
        opt(2, "configMapRef", Ty::Msg(&CONFIG_MAP_ENV_SOURCE)),
        opt(3, "secretRef", Ty::Msg(&SECRET_ENV_SOURCE)),
    ],
};

static CONFIG_MAP_ENV_SOURCE: Msg = Msg {
    name: "ConfigMapEnvSource",
    fields: &[
        opt(
            1,
            "localObjectReference",
            Ty::Inline(&LOCAL_OBJECT_REFERENCE),
        ),
        keep(2, "optional", Ty::Bool),
    ],
};

static SECRET_ENV_SOURCE: Msg = Msg {
    name: "SecretEnvSource",
    fields: &[
        opt(
            1,
            "localObjectReference",
            Ty::Inline(&LOCAL_OBJECT_REFERENCE),
        ),
        keep(2, "optional", Ty::Bool),
    ],
};

static RESOURCE_REQUIREMENTS: Msg = Msg {
    name: "ResourceRequirements",
    fields: &[
        opt(1, "limits", Ty::MapQuantity),
        opt(2, "requests", Ty::MapQuantity),
        rep(3, "claims", Ty::Msg(&RESOURCE_CLAIM)),
    ],
};

static RESOURCE_CLAIM: Msg = Msg {
    name: "ResourceClaim",
    fields: &[keep(1, "name", Ty::Str), opt(2, "request", Ty::Str)],
};

static VOLUME_MOUNT: Msg = Msg {
    name: "VolumeMount",
    fields: &[
        keep(1, "name", Ty::Str),
        opt(2, "readOnly", Ty::Bool),
        keep(7, "recursiveReadOnly", Ty::Str),
        keep(3, "mountPath", Ty::Str),
        opt(4, "subPath", Ty::Str),
        keep(5, "mountPropagation", Ty::Str),
        opt(6, "subPathExpr", Ty::Str),
    ],
};

static VOLUME_DEVICE: Msg = Msg {
    name: "VolumeDevice",
    fields: &[keep(1, "name", Ty::Str), keep(2, "devicePath", Ty::Str)],
};

static PROBE: Msg = Msg {
    name: "Probe",
    fields: &[
        opt(1, "handler", Ty::Inline(&PROBE_HANDLER)),
        opt(2, "initialDelaySeconds", Ty::Int32),
        opt(3, "timeoutSeconds", Ty::Int32),
        opt(4, "periodSeconds", Ty::Int32),
        opt(5, "successThreshold", Ty::Int32),
        opt(6, "failureThreshold", Ty::Int32),
        keep(7, "terminationGracePeriodSeconds", Ty::Int64),
    ],
};

static PROBE_HANDLER: Msg = Msg {
    name: "ProbeHandler",
    fields: &[
        opt(1, "exec", Ty::Msg(&EXEC_ACTION)),
        opt(2, "httpGet", Ty::Msg(&HTTP_GET_ACTION)),
        opt(3, "tcpSocket", Ty::Msg(&TCP_SOCKET_ACTION)),
        opt(4, "grpc", Ty::Msg(&GRPC_ACTION)),
    ],
};

static LIFECYCLE: Msg = Msg {
    name: "Lifecycle",
    fields: &[
        opt(1, "postStart", Ty::Msg(&LIFECYCLE_HANDLER)),
        opt(2, "preStop", Ty::Msg(&LIFECYCLE_HANDLER)),
        keep(3, "stopSignal", Ty::Str),
    ],
};

static LIFECYCLE_HANDLER: Msg = Msg {
    name: "LifecycleHandler",
    fields: &[
        opt(1, "exec", Ty::Msg(&EXEC_ACTION)),
        opt(2, "httpGet", Ty::Msg(&HTTP_GET_ACTION)),
        opt(3, "tcpSocket", Ty::Msg(&TCP_SOCKET_ACTION)),
        opt(4, "sleep", Ty::Msg(&SLEEP_ACTION)),
    ],
};

static EXEC_ACTION: Msg = Msg {
    name: "ExecAction",
    fields: &[rep(1, "command", Ty::Str)],
};

static HTTP_GET_ACTION: Msg = Msg {
    name: "HTTPGetAction",
    fields: &[
        opt(1, "path", Ty::Str),
        opt(2, "port", Ty::IntOrString),
        opt(3, "host", Ty::Str),
        opt(4, "scheme", Ty::Str),
        rep(5, "httpHeaders", Ty::Msg(&HTTP_HEADER)),
    ],
};

static HTTP_HEADER: Msg = Msg {
    name: "HTTPHeader",
    fields: &[keep(1, "name", Ty::Str), keep(2, "value", Ty::Str)],
};

static TCP_SOCKET_ACTION: Msg = Msg {
    name: "TCPSocketAction",
    fields: &[opt(1, "port", Ty::IntOrString), opt(2, "host", Ty::Str)],
};

static GRPC_ACTION: Msg = Msg {
    name: "GRPCAction",
    fields: &[keep(1, "port", Ty::Int32), keep(2, "service", Ty::Str)],
};

static SLEEP_ACTION: Msg = Msg {
    name: "SleepAction",
    fields: &[keep(1, "seconds", Ty::Int64)],
};

static SECURITY_CONTEXT: Msg = Msg {
    name: "SecurityContext",
    fields: &[
        opt(1, "capabilities", Ty::Msg(&CAPABILITIES)),
        keep(2, "privileged", Ty::Bool),
        opt(3, "seLinuxOptions", Ty::Msg(&SE_LINUX_OPTIONS)),
        opt(
            10,
            "windowsOptions",
            Ty::Msg(&WINDOWS_SECURITY_CONTEXT_OPTIONS),
        ),
        keep(4, "runAsUser", Ty::Int64),
        keep(8, "runAsGroup", Ty::Int64),
        keep(5, "runAsNonRoot", Ty::Bool),
        keep(6, "readOnlyRootFilesystem", Ty::Bool),
        keep(7, "allowPrivilegeEscalation", Ty::Bool),
        keep(9, "procMount", Ty::Str),
        opt(11, "seccompProfile", Ty::Msg(&SECCOMP_PROFILE)),
        opt(12, "appArmorProfile", Ty::Msg(&APP_ARMOR_PROFILE)),
    ],
};

static POD_SECURITY_CONTEXT: Msg = Msg {
    name: "PodSecurityContext",
    fields: &[
        opt(1, "seLinuxOptions", Ty::Msg(&SE_LINUX_OPTIONS)),
        opt(
            8,
            "windowsOptions",
            Ty::Msg(&WINDOWS_SECURITY_CONTEXT_OPTIONS),
        ),
        keep(2, "runAsUser", Ty::Int64),
        keep(6, "runAsGroup", Ty::Int64),
        keep(3, "runAsNonRoot", Ty::Bool),
        rep(4, "supplementalGroups", Ty::Int64),
        keep(12, "supplementalGroupsPolicy", Ty::Str),
        keep(5, "fsGroup", Ty::Int64),
        rep(7, "sysctls", Ty::Msg(&SYSCTL)),
        keep(9, "fsGroupChangePolicy", Ty::Str),
        opt(10, "seccompProfile", Ty::Msg(&SECCOMP_PROFILE)),
        opt(11, "appArmorProfile", Ty::Msg(&APP_ARMOR_PROFILE)),
        keep(13, "seLinuxChangePolicy", Ty::Str),
    ],
};

static CAPABILITIES: Msg = Msg {
    name: "Capabilities",
    fields: &[rep(1, "add", Ty::Str), rep(2, "drop", Ty::Str)],
};

static SE_LINUX_OPTIONS: Msg = Msg {
    name: "SELinuxOptions",
    fields: &[
        opt(1, "user", Ty::Str),
        opt(2, "role", Ty::Str),
        opt(3, "type", Ty::Str),
        opt(4, "level", Ty::Str),
    ],
};

static WINDOWS_SECURITY_CONTEXT_OPTIONS: Msg = Msg {
    name: "WindowsSecurityContextOptions",
    fields: &[
        keep(1, "gmsaCredentialSpecName", Ty::Str),
        keep(2, "gmsaCredentialSpec", Ty::Str),
        keep(3, "runAsUserName", Ty::Str),
        keep(4, "hostProcess", Ty::Bool),
    ],
};

static SECCOMP_PROFILE: Msg = Msg {
    name: "SeccompProfile",
    fields: &[
        keep(1, "type", Ty::Str),
        keep(2, "localhostProfile", Ty::Str),
    ],
};

static APP_ARMOR_PROFILE: Msg = Msg {
    name: "AppArmorProfile",
    fields: &[
        keep(1, "type", Ty::Str),
        keep(2, "localhostProfile", Ty::Str),
    ],
};

static SYSCTL: Msg = Msg {
    name: "Sysctl",
    fields: &[keep(1, "name", Ty::Str), keep(2, "value", Ty::Str)],
};

static TOLERATION: Msg = Msg {
    name: "Toleration",
    fields: &[
        opt(1, "key", Ty::Str),
        opt(2, "operator", Ty::Str),
        opt(3, "value", Ty::Str),
        opt(4, "effect", Ty::Str),
        keep(5, "tolerationSeconds", Ty::Int64),
    ],
};

static HOST_ALIAS: Msg = Msg {
    name: "HostAlias",
    fields: &[keep(1, "ip", Ty::Str), rep(2, "hostnames", Ty::Str)],
};

static POD_DNS_CONFIG: Msg = Msg {
    name: "PodDNSConfig",
    fields: &[
        rep(1, "nameservers", Ty::Str),
        rep(2, "searches", Ty::Str),
        rep(3, "options", Ty::Msg(&POD_DNS_CONFIG_OPTION)),
    ],
};

static POD_DNS_CONFIG_OPTION: Msg = Msg {
    name: "PodDNSConfigOption",
    fields: &[opt(1, "name", Ty::Str), keep(2, "value", Ty::Str)],
};

static POD_READINESS_GATE: Msg = Msg {
    name: "PodReadinessGate",
    fields: &[keep(1, "conditionType", Ty::Str)],
};

static TOPOLOGY_SPREAD_CONSTRAINT: Msg = Msg {
    name: "TopologySpreadConstraint",
    fields: &[
        keep(1, "maxSkew", Ty::Int32),
        keep(2, "topologyKey", Ty::Str),
        keep(3, "whenUnsatisfiable", Ty::Str),
        opt(4, "labelSelector", Ty::Msg(&LABEL_SELECTOR)),
        keep(5, "minDomains", Ty::Int32),
        keep(6, "nodeAffinityPolicy", Ty::Str),
        keep(7, "nodeTaintsPolicy", Ty::Str),
        rep(8, "matchLabelKeys", Ty::Str),
    ],
};

static POD_OS: Msg = Msg {
    name: "PodOS",
    fields: &[keep(1, "name", Ty::Str)],
};

static POD_SCHEDULING_GATE: Msg = Msg {
    name: "PodSchedulingGate",
    fields: &[keep(1, "name", Ty::Str)],
};

static POD_RESOURCE_CLAIM: Msg = Msg {
    name: "PodResourceClaim",
    fields: &[
        keep(1, "name", Ty::Str),
        keep(3, "resourceClaimName", Ty::Str),
        keep(4, "resourceClaimTemplateName", Ty::Str),
    ],
};

static AFFINITY: Msg = Msg {
    name: "Affinity",
    fields: &[
        opt(1, "nodeAffinity", Ty::Msg(&NODE_AFFINITY)),
        opt(2, "podAffinity", Ty::Msg(&POD_AFFINITY)),
        opt(3, "podAntiAffinity", Ty::Msg(&POD_AFFINITY)),
    ],
};

static NODE_AFFINITY: Msg = Msg {
    name: "NodeAffinity",
    fields: &[
        opt(
            1,
            "requiredDuringSchedulingIgnoredDuringExecution",
            Ty::Msg(&NODE_SELECTOR),
        ),
        rep(
            2,
            "preferredDuringSchedulingIgnoredDuringExecution",
            Ty::Msg(&PREFERRED_SCHEDULING_TERM),
        ),
    ],
};

static NODE_SELECTOR: Msg = Msg {
    name: "NodeSelector",
    fields: &[rep(1, "nodeSelectorTerms", Ty::Msg(&NODE_SELECTOR_TERM))],
};

static NODE_SELECTOR_TERM: Msg = Msg {
    name: "NodeSelectorTerm",
    fields: &[
        rep(1, "matchExpressions", Ty::Msg(&NODE_SELECTOR_REQUIREMENT)),
        rep(2, "matchFields", Ty::Msg(&NODE_SELECTOR_REQUIREMENT)),
    ],
};

static NODE_SELECTOR_REQUIREMENT: Msg = Msg {
    name: "NodeSelectorRequirement",
    fields: &[
        keep(1, "key", Ty::Str),
        keep(2, "operator", Ty::Str),
        rep(3, "values", Ty::Str),
    ],
};

static PREFERRED_SCHEDULING_TERM: Msg = Msg {
    name: "PreferredSchedulingTerm",
    fields: &[
        keep(1, "weight", Ty::Int32),
        opt(2, "preference", Ty::Msg(&NODE_SELECTOR_TERM)),
    ],
};

// PodAffinity and PodAntiAffinity share their field numbers and JSON names.
static POD_AFFINITY: Msg = Msg {
    name: "PodAffinity",
    fields: &[
        rep(
            1,
            "requiredDuringSchedulingIgnoredDuringExecution",
            Ty::Msg(&POD_AFFINITY_TERM),
        ),
        rep(
            2,
            "preferredDuringSchedulingIgnoredDuringExecution",
            Ty::Msg(&WEIGHTED_POD_AFFINITY_TERM),
        ),
    ],
};

static POD_AFFINITY_TERM: Msg = Msg {
    name: "PodAffinityTerm",
    fields: &[
        opt(1, "labelSelector", Ty::Msg(&LABEL_SELECTOR)),
        rep(2, "namespaces", Ty::Str),
        keep(3, "topologyKey", Ty::Str),
        opt(4, "namespaceSelector", Ty::Msg(&LABEL_SELECTOR)),
        rep(5, "matchLabelKeys", Ty::Str),
        rep(6, "mismatchLabelKeys", Ty::Str),
    ],
};

static WEIGHTED_POD_AFFINITY_TERM: Msg = Msg {
    name: "WeightedPodAffinityTerm",
    fields: &[
        keep(1, "weight", Ty::Int32),
        opt(2, "podAffinityTerm", Ty::Msg(&POD_AFFINITY_TERM)),
    ],
};

// ---------------------------------------------------------------------------------------
// core/v1 volumes: the sources a wasm pod can use; cloud and legacy ones are refused.
// ---------------------------------------------------------------------------------------

static VOLUME: Msg = Msg {
    name: "Volume",
    fields: &[
        keep(1, "name", Ty::Str),
        opt(2, "volumeSource", Ty::Inline(&VOLUME_SOURCE)),
    ],
};

static VOLUME_SOURCE: Msg = Msg {
    name: "VolumeSource",
    fields: &[
        opt(1, "hostPath", Ty::Msg(&HOST_PATH_VOLUME_SOURCE)),
        opt(2, "emptyDir", Ty::Msg(&EMPTY_DIR_VOLUME_SOURCE)),
        opt(6, "secret", Ty::Msg(&SECRET_VOLUME_SOURCE)),
        opt(7, "nfs", Ty::Msg(&NFS_VOLUME_SOURCE)),
        opt(
            10,
            "persistentVolumeClaim",
            Ty::Msg(&PERSISTENT_VOLUME_CLAIM_VOLUME_SOURCE),
        ),
        opt(16, "downwardAPI", Ty::Msg(&DOWNWARD_API_VOLUME_SOURCE)),
        opt(19, "configMap", Ty::Msg(&CONFIG_MAP_VOLUME_SOURCE)),
        opt(26, "projected", Ty::Msg(&PROJECTED_VOLUME_SOURCE)),
        opt(28, "csi", Ty::Msg(&CSI_VOLUME_SOURCE)),
        opt(30, "image", Ty::Msg(&IMAGE_VOLUME_SOURCE)),
    ],
};

static HOST_PATH_VOLUME_SOURCE: Msg = Msg {
    name: "HostPathVolumeSource",
    fields: &[keep(1, "path", Ty::Str), keep(2, "type", Ty::Str)],
};

static EMPTY_DIR_VOLUME_SOURCE: Msg = Msg {
    name: "EmptyDirVolumeSource",
    fields: &[opt(1, "medium", Ty::Str), opt(2, "sizeLimit", Ty::Quantity)],
};

static SECRET_VOLUME_SOURCE: Msg = Msg {
    name: "SecretVolumeSource",
    fields: &[
        opt(1, "secretName", Ty::Str),
        rep(2, "items", Ty::Msg(&KEY_TO_PATH)),
        keep(3, "defaultMode", Ty::Int32),
        keep(4, "optional", Ty::Bool),
    ],
};

static NFS_VOLUME_SOURCE: Msg = Msg {
    name: "NFSVolumeSource",
    fields: &[
        keep(1, "server", Ty::Str),
        keep(2, "path", Ty::Str),
        opt(3, "readOnly", Ty::Bool),
    ],
};

static PERSISTENT_VOLUME_CLAIM_VOLUME_SOURCE: Msg = Msg {
    name: "PersistentVolumeClaimVolumeSource",
    fields: &[keep(1, "claimName", Ty::Str), opt(2, "readOnly", Ty::Bool)],
};

static DOWNWARD_API_VOLUME_SOURCE: Msg = Msg {
    name: "DownwardAPIVolumeSource",
    fields: &[
        rep(1, "items", Ty::Msg(&DOWNWARD_API_VOLUME_FILE)),
        keep(2, "defaultMode", Ty::Int32),
    ],
};

static DOWNWARD_API_VOLUME_FILE: Msg = Msg {
    name: "DownwardAPIVolumeFile",
    fields: &[
        keep(1, "path", Ty::Str),
        opt(2, "fieldRef", Ty::Msg(&OBJECT_FIELD_SELECTOR)),
        opt(3, "resourceFieldRef", Ty::Msg(&RESOURCE_FIELD_SELECTOR)),
        keep(4, "mode", Ty::Int32),
    ],
};

static CONFIG_MAP_VOLUME_SOURCE: Msg = Msg {
    name: "ConfigMapVolumeSource",
    fields: &[
        opt(
            1,
            "localObjectReference",
            Ty::Inline(&LOCAL_OBJECT_REFERENCE),
        ),
        rep(2, "items", Ty::Msg(&KEY_TO_PATH)),
        keep(3, "defaultMode", Ty::Int32),
        keep(4, "optional", Ty::Bool),
    ],
};

static KEY_TO_PATH: Msg = Msg {
    name: "KeyToPath",
    fields: &[
        keep(1, "key", Ty::Str),
        keep(2, "path", Ty::Str),
        keep(3, "mode", Ty::Int32),
    ],
};

static PROJECTED_VOLUME_SOURCE: Msg = Msg {
    name: "ProjectedVolumeSource",
    fields: &[
        rep(1, "sources", Ty::Msg(&VOLUME_PROJECTION)),
        keep(2, "defaultMode", Ty::Int32),
    ],
};

static VOLUME_PROJECTION: Msg = Msg {
    name: "VolumeProjection",
    fields: &[
        opt(1, "secret", Ty::Msg(&SECRET_PROJECTION)),
        opt(2, "downwardAPI", Ty::Msg(&DOWNWARD_API_PROJECTION)),
        opt(3, "configMap", Ty::Msg(&CONFIG_MAP_PROJECTION)),
        opt(
            4,
            "serviceAccountToken",
            Ty::Msg(&SERVICE_ACCOUNT_TOKEN_PROJECTION),
        ),
    ],
};

static SECRET_PROJECTION: Msg = Msg {
    name: "SecretProjection",
    fields: &[
        opt(
            1,
            "localObjectReference",
            Ty::Inline(&LOCAL_OBJECT_REFERENCE),
        ),
        rep(2, "items", Ty::Msg(&KEY_TO_PATH)),
        keep(4, "optional", Ty::Bool),
    ],
};

static CONFIG_MAP_PROJECTION: Msg = Msg {
    name: "ConfigMapProjection",
    fields: &[
        opt(
            1,
            "localObjectReference",
            Ty::Inline(&LOCAL_OBJECT_REFERENCE),
        ),
        rep(2, "items", Ty::Msg(&KEY_TO_PATH)),
        keep(4, "optional", Ty::Bool),
    ],
};

static DOWNWARD_API_PROJECTION: Msg = Msg {
    name: "DownwardAPIProjection",
    fields: &[rep(1, "items", Ty::Msg(&DOWNWARD_API_VOLUME_FILE))],
};

static SERVICE_ACCOUNT_TOKEN_PROJECTION: Msg = Msg {
    name: "ServiceAccountTokenProjection",
    fields: &[
        opt(1, "audience", Ty::Str),
        keep(2, "expirationSeconds", Ty::Int64),
        keep(3, "path", Ty::Str),
    ],
};

static CSI_VOLUME_SOURCE: Msg = Msg {
    name: "CSIVolumeSource",
    fields: &[
        keep(1, "driver", Ty::Str),
        keep(2, "readOnly", Ty::Bool),
        keep(3, "fsType", Ty::Str),
        opt(4, "volumeAttributes", Ty::MapStr),
        opt(5, "nodePublishSecretRef", Ty::Msg(&LOCAL_OBJECT_REFERENCE)),
    ],
};

static IMAGE_VOLUME_SOURCE: Msg = Msg {
    name: "ImageVolumeSource",
    fields: &[opt(1, "reference", Ty::Str), opt(2, "pullPolicy", Ty::Str)],
};

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A minimal protobuf encoder for building bodies in tests.
    mod enc {
        pub fn varint(mut value: u64, out: &mut Vec<u8>) {
            while value >= 0x80 {
                out.push((value as u8) | 0x80);
                value >>= 7;
            }
            out.push(value as u8);
        }

        fn key(num: u32, wire: u64) -> Vec<u8> {
            let mut out = Vec::new();
            varint((u64::from(num) << 3) | wire, &mut out);
            out
        }

        /// A varint field (bool, int32, int64; negatives sign-extended).
        pub fn v(num: u32, value: i64) -> Vec<u8> {
            let mut out = key(num, 0);
            varint(value as u64, &mut out);
            out
        }

        /// A length-delimited field holding raw bytes.
        pub fn b(num: u32, bytes: &[u8]) -> Vec<u8> {
            let mut out = key(num, 2);
            varint(bytes.len() as u64, &mut out);
            out.extend_from_slice(bytes);
            out
        }

        pub fn s(num: u32, text: &str) -> Vec<u8> {
            b(num, text.as_bytes())
        }

        /// A nested message made of the given fields.
        pub fn m(num: u32, fields: &[Vec<u8>]) -> Vec<u8> {
            b(num, &fields.concat())
        }

        /// One entry of a map field.
        pub fn entry(num: u32, k: &str, value: &[u8]) -> Vec<u8> {
            m(num, &[s(1, k), b(2, value)])
        }

        /// A whole body: magic plus runtime.Unknown around the kind's message.
        pub fn body(api_version: &str, kind: &str, raw: &[Vec<u8>]) -> Vec<u8> {
            let mut out = b"k8s\0".to_vec();
            out.extend(m(1, &[s(1, api_version), s(2, kind)]));
            out.extend(b(2, &raw.concat()));
            out.extend(s(3, ""));
            out.extend(s(4, ""));
            out
        }
    }
    use enc::{b, body, entry, m, s, v};

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("fixture is hex"))
            .collect()
    }

    fn decoded(bytes: &[u8]) -> Value {
        match decode(bytes) {
            Ok(value) => value,
            Err(err) => panic!("decode failed: {err}"),
        }
    }

    // Real request bodies captured from kubectl v1.33.1 (`-v=9` prints them) against a
    // running wasmkube with `--dry-run=server`.
    mod captured {
        /// `kubectl create namespace x`
        pub const NAMESPACE: &str = "6b3873000a0f0a02763112094e616d65737061636512190a110a017812001a0022002a0032003800420012001a020a001a002200";
        /// `kubectl create configmap cm --from-literal a=b`
        pub const CONFIGMAP: &str = "6b3873000a0f0a0276311209436f6e6669674d6170121c0a120a02636d12001a0022002a0032003800420012060a01611201621a002200";
        /// `kubectl create configmap cm2 --from-file=bin=<00 01 ff> --from-literal=k=v`
        pub const CONFIGMAP_BINARY: &str = "6b3873000a0f0a0276311209436f6e6669674d617012290a130a03636d3212001a0022002a0032003800420012060a016b1201761a0a0a0362696e12030001ff1a002200";
        /// `kubectl create secret generic s --from-literal user=admin`
        pub const SECRET: &str = "6b3873000a0c0a027631120653656372657412240a110a017312001a0022002a00320038004200120d0a0475736572120561646d696e1a001a002200";
        /// `kubectl create secret docker-registry reg --docker-server=r.io --docker-username=u --docker-password=p`
        pub const SECRET_DOCKER: &str = "6b3873000a0c0a0276311206536563726574128c010a130a0372656712001a0022002a0032003800420012550a112e646f636b6572636f6e6669676a736f6e12407b226175746873223a7b22722e696f223a7b22757365726e616d65223a2275222c2270617373776f7264223a2270222c2261757468223a2264547077227d7d7d1a1e6b756265726e657465732e696f2f646f636b6572636f6e6669676a736f6e1a002200";
        /// `kubectl create cronjob cj --image=busybox --schedule='*/5 * * * *'` (kubectl 1.33)
        pub const CRON_JOB: &str = "6b3873000a130a0862617463682f7631120743726f6e4a6f62129e010a120a02636a12001a0022002a003200380042001285010a0b2a2f35202a202a202a202a1a002a740a120a02636a12001a0022002a00320038004200125e325c0a100a0012001a0022002a00320038004200124812210a02636a120762757379626f782a0042006a007200800100880100900100a201001a094f6e4661696c757265320042004a0052005800600068008201008a01009a0100c201001a001a002200";
        /// `kubectl create job j --image=busybox`
        pub const JOB: &str = "6b3873000a0f0a0862617463682f763112034a6f6212780a110a016a12001a0022002a00320038004200125932570a100a0012001a0022002a00320038004200124312200a016a120762757379626f782a0042006a007200800100880100900100a201001a054e65766572320042004a0052005800600068008201008a01009a0100c201001a082000280030003a001a002200";
        /// `kubectl create deployment web --image=x.wasm --replicas=3 --port=8080`
        pub const DEPLOYMENT: &str = "6b3873000a150a07617070732f7631120a4465706c6f796d656e7412c1010a1f0a0377656212001a0022002a003200380042005a0a0a036170701203776562128f010803120c0a0a0a0361707012037765621a750a1c0a0012001a0022002a003200380042005a0a0a036170701203776562125512370a0c782d7761736d2d72736635621206782e7761736d2a00320b0a00100018903f22002a0042006a007200800100880100900100a201001a00320042004a0052005800600068008201008a01009a0100c2010022020a00280038001a0c0800100018002000280038001a002200";
        /// `kubectl create deployment multi --image=a.wasm --image=b.wasm`
        pub const DEPLOYMENT_TWO_IMAGES: &str = "6b3873000a150a07617070732f7631120a4465706c6f796d656e7412e9010a230a056d756c746912001a0022002a003200380042005a0c0a0361707012056d756c746912b3010801120e0a0c0a0361707012056d756c74691a96010a1e0a0012001a0022002a003200380042005a0c0a0361707012056d756c74691274122a0a0c612d7761736d2d6d36647a371206612e7761736d2a0042006a007200800100880100900100a20100122a0a0c622d7761736d2d78746737641206622e7761736d2a0042006a007200800100880100900100a201001a00320042004a0052005800600068008201008a01009a0100c2010022020a00280038001a0c0800100018002000280038001a002200";
        /// `kubectl create service clusterip web --tcp=80:8080`
        pub const SERVICE_CLUSTER_IP: &str = "6b3873000a0d0a02763112075365727669636512690a1f0a0377656212001a0022002a003200380042005a0a0a03617070120377656212420a1b0a0738302d38303830120354435018502207080010903f1a002800120a0a0361707012037765621a002209436c757374657249503a00420052005a00600068001a020a001a002200";
        /// `kubectl create service nodeport np --tcp=5678:8080 --node-port=30080`
        pub const SERVICE_NODE_PORT: &str = "6b3873000a0d0a027631120753657276696365126a0a1d0a026e7012001a0022002a003200380042005a090a0361707012026e7012450a200a09353637382d38303830120354435018ae2c2207080010903f1a002880eb0112090a0361707012026e701a0022084e6f6465506f72743a00420052005a00600068001a020a001a002200";
        /// `kubectl create service externalname ext --external-name=example.com`
        pub const SERVICE_EXTERNAL_NAME: &str = "6b3873000a0d0a027631120753657276696365125a0a1f0a0365787412001a0022002a003200380042005a0a0a0361707012036578741233120a0a0361707012036578741a00220c45787465726e616c4e616d653a004200520b6578616d706c652e636f6d5a00600068001a020a001a002200";
        /// `kubectl create service loadbalancer lb --tcp=80:8080`
        pub const SERVICE_LOAD_BALANCER: &str = "6b3873000a0d0a02763112075365727669636512690a1d0a026c6212001a0022002a003200380042005a090a0361707012026c6212440a1b0a0738302d38303830120354435018502207080010903f1a00280012090a0361707012026c621a00220c4c6f616442616c616e6365723a00420052005a00600068001a020a001a002200";
        /// `kubectl create service clusterip hl --clusterip=None`
        pub const SERVICE_HEADLESS: &str = "6b3873000a0d0a027631120753657276696365124d0a1d0a02686c12001a0022002a003200380042005a090a036170701202686c122812090a036170701202686c1a044e6f6e652209436c757374657249503a00420052005a00600068001a020a001a002200";
        /// `kubectl create serviceaccount sa`
        pub const SERVICE_ACCOUNT: &str = "6b3873000a140a027631120e536572766963654163636f756e7412140a120a02736112001a0022002a003200380042001a002200";
    }

    #[test]
    fn captured_namespace() {
        assert_eq!(
            decoded(&hex(captured::NAMESPACE)),
            json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "x"},
                   "spec": {}, "status": {}})
        );
    }

    #[test]
    fn captured_configmaps() {
        assert_eq!(
            decoded(&hex(captured::CONFIGMAP)),
            json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "cm"},
                   "data": {"a": "b"}})
        );
        assert_eq!(
            decoded(&hex(captured::CONFIGMAP_BINARY)),
            json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "cm2"},
                   "data": {"k": "v"}, "binaryData": {"bin": "AAH/"}})
        );
    }

    #[test]
    fn captured_secrets_have_base64_data() {
        assert_eq!(
            decoded(&hex(captured::SECRET)),
            json!({"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "s"},
                   "data": {"user": "YWRtaW4="}})
        );
        let docker = decoded(&hex(captured::SECRET_DOCKER));
        assert_eq!(docker["type"], "kubernetes.io/dockerconfigjson");
        let config = docker["data"][".dockerconfigjson"]
            .as_str()
            .and_then(|text| base64::engine::general_purpose::STANDARD.decode(text).ok())
            .expect("base64 data");
        assert_eq!(
            serde_json::from_slice::<Value>(&config).expect("docker config json"),
            json!({"auths": {"r.io": {"username": "u", "password": "p", "auth": "dTpw"}}})
        );
    }

    #[test]
    fn captured_deployment() {
        assert_eq!(
            decoded(&hex(captured::DEPLOYMENT)),
            json!({
                "kind": "Deployment",
                "apiVersion": "apps/v1",
                "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {
                    "replicas": 3,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{
                            "name": "x-wasm-rsf5b",
                            "image": "x.wasm",
                            "ports": [{"containerPort": 8080}],
                            "resources": {}
                        }]}
                    },
                    "strategy": {}
                },
                "status": {}
            })
        );
    }

    #[test]
    fn captured_deployment_with_two_images() {
        let object = decoded(&hex(captured::DEPLOYMENT_TWO_IMAGES));
        assert_eq!(object["spec"]["replicas"], 1);
        assert_eq!(
            object["spec"]["template"]["spec"]["containers"],
            json!([
                {"name": "a-wasm-m6dz7", "image": "a.wasm", "resources": {}},
                {"name": "b-wasm-xtg7d", "image": "b.wasm", "resources": {}}
            ])
        );
    }

    #[test]
    fn captured_services() {
        assert_eq!(
            decoded(&hex(captured::SERVICE_CLUSTER_IP)),
            json!({
                "kind": "Service",
                "apiVersion": "v1",
                "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {
                    "ports": [{"name": "80-8080", "protocol": "TCP", "port": 80,
                               "targetPort": 8080}],
                    "selector": {"app": "web"},
                    "type": "ClusterIP"
                },
                "status": {"loadBalancer": {}}
            })
        );
        let node_port = decoded(&hex(captured::SERVICE_NODE_PORT));
        assert_eq!(
            node_port["spec"],
            json!({
                "ports": [{"name": "5678-8080", "protocol": "TCP", "port": 5678,
                           "targetPort": 8080, "nodePort": 30080}],
                "selector": {"app": "np"},
                "type": "NodePort"
            })
        );
        let external = decoded(&hex(captured::SERVICE_EXTERNAL_NAME));
        assert_eq!(
            external["spec"],
            json!({"selector": {"app": "ext"}, "type": "ExternalName",
                   "externalName": "example.com"})
        );
        let load_balancer = decoded(&hex(captured::SERVICE_LOAD_BALANCER));
        assert_eq!(load_balancer["spec"]["type"], "LoadBalancer");
        assert_eq!(load_balancer["spec"]["ports"][0]["port"], 80);
        let headless = decoded(&hex(captured::SERVICE_HEADLESS));
        assert_eq!(
            headless["spec"],
            json!({"selector": {"app": "hl"}, "clusterIP": "None", "type": "ClusterIP"})
        );
    }

    #[test]
    fn captured_service_account() {
        assert_eq!(
            decoded(&hex(captured::SERVICE_ACCOUNT)),
            json!({"kind": "ServiceAccount", "apiVersion": "v1", "metadata": {"name": "sa"}})
        );
    }

    #[test]
    fn captured_job() {
        let object = decoded(&hex(captured::JOB));
        assert_eq!(object["metadata"]["name"], "j");
        let template = &object["spec"]["template"]["spec"];
        assert_eq!(template["containers"][0]["image"], "busybox");
        assert_eq!(template["restartPolicy"], "Never");
    }

    #[test]
    fn captured_cron_job() {
        let object = decoded(&hex(captured::CRON_JOB));
        assert_eq!(object["kind"], "CronJob");
        assert_eq!(object["metadata"]["name"], "cj");
        assert_eq!(object["spec"]["schedule"], "*/5 * * * *");
        let template = &object["spec"]["jobTemplate"];
        assert_eq!(template["metadata"]["name"], "cj");
        let pod = &template["spec"]["template"]["spec"];
        assert_eq!(pod["containers"][0]["image"], "busybox");
        assert_eq!(pod["restartPolicy"], "OnFailure");
    }

    #[test]
    fn other_kinds_are_unsupported() {
        let err = decode(&body("batch/v1", "CronJobList", &[])).expect_err("not served");
        assert_eq!(
            err,
            ProtobufError::UnsupportedKind {
                api_version: "batch/v1".into(),
                kind: "CronJobList".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "unsupported kind batch/v1 CronJobList in a protobuf body"
        );
    }

    #[test]
    fn object_meta_in_full() {
        let fields_v1 = br#"{"f:metadata":{"f:labels":{".":{}}}}"#;
        let meta = m(
            1,
            &[
                s(2, "web-"),
                s(3, "prod"),
                s(5, "0b5c1b7e-8d4e-4f7a-9d36-1f7f8a0e2a11"),
                s(6, "42"),
                v(7, 3),
                m(8, &[v(1, 1_700_000_000), v(2, 123)]),
                m(9, &[v(1, 1_700_000_600)]),
                v(10, 0),
                entry(11, "app", b"web"),
                entry(11, "tier", b"front"),
                entry(12, "note", b"hi"),
                m(
                    13,
                    &[
                        s(5, "apps/v1"),
                        s(1, "ReplicaSet"),
                        s(3, "web-abc"),
                        s(4, "u-1"),
                        v(6, 1),
                        v(7, 0),
                    ],
                ),
                s(14, "example.com/cleanup"),
                s(14, "kubernetes"),
                m(
                    17,
                    &[
                        s(1, "kubectl"),
                        s(2, "Update"),
                        s(3, "v1"),
                        m(4, &[v(1, 1_700_000_000)]),
                        s(6, "FieldsV1"),
                        m(7, &[b(1, fields_v1)]),
                    ],
                ),
            ],
        );
        let object = decoded(&body("v1", "ConfigMap", &[meta]));
        assert_eq!(
            object["metadata"],
            json!({
                "generateName": "web-",
                "namespace": "prod",
                "uid": "0b5c1b7e-8d4e-4f7a-9d36-1f7f8a0e2a11",
                "resourceVersion": "42",
                "generation": 3,
                "creationTimestamp": "2023-11-14T22:13:20Z",
                "deletionTimestamp": "2023-11-14T22:23:20Z",
                "deletionGracePeriodSeconds": 0,
                "labels": {"app": "web", "tier": "front"},
                "annotations": {"note": "hi"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                     "name": "web-abc", "uid": "u-1", "controller": true,
                                     "blockOwnerDeletion": false}],
                "finalizers": ["example.com/cleanup", "kubernetes"],
                "managedFields": [{"manager": "kubectl", "operation": "Update",
                                   "apiVersion": "v1", "time": "2023-11-14T22:13:20Z",
                                   "fieldsType": "FieldsV1",
                                   "fieldsV1": {"f:metadata": {"f:labels": {".": {}}}}}]
            })
        );
    }

    #[test]
    fn deployment_with_a_full_pod_template() {
        let container = m(
            2,
            &[
                s(1, "app"),
                s(2, "app.wasm"),
                s(3, "/app.wasm"),
                s(4, "--port"),
                s(4, "8080"),
                m(6, &[s(1, "http"), v(3, 8080), s(4, "TCP")]),
                m(
                    19,
                    &[s(1, "CFG_"), m(2, &[m(1, &[s(1, "settings")]), v(2, 1)])],
                ),
                m(7, &[s(1, "MODE"), s(2, "prod")]),
                m(
                    7,
                    &[
                        s(1, "TOKEN"),
                        m(3, &[m(4, &[m(1, &[s(1, "creds")]), s(2, "token")])]),
                    ],
                ),
                m(
                    7,
                    &[
                        s(1, "POD"),
                        m(3, &[m(1, &[s(1, "v1"), s(2, "metadata.name")])]),
                    ],
                ),
                m(
                    8,
                    &[
                        m(1, &[s(1, "cpu"), m(2, &[s(1, "500m")])]),
                        m(2, &[s(1, "memory"), m(2, &[s(1, "64Mi")])]),
                    ],
                ),
                m(9, &[s(1, "data"), v(2, 1), s(3, "/data")]),
                m(
                    10,
                    &[
                        m(
                            1,
                            &[m(2, &[s(1, "/healthz"), m(2, &[v(1, 1), s(3, "http")])])],
                        ),
                        v(2, 5),
                        v(4, 10),
                    ],
                ),
                m(11, &[m(1, &[m(3, &[m(1, &[v(1, 0), v(2, 8080)])])])]),
                m(15, &[v(7, 0), m(1, &[s(2, "ALL")])]),
                s(14, "IfNotPresent"),
            ],
        );
        let spec = m(
            2,
            &[
                v(1, 0),
                m(
                    2,
                    &[m(2, &[s(1, "app"), s(2, "In"), s(3, "web"), s(3, "api")])],
                ),
                m(
                    3,
                    &[
                        m(1, &[entry(11, "app", b"web")]),
                        m(
                            2,
                            &[
                                m(1, &[s(1, "data"), m(2, &[m(2, &[s(1, "Memory")])])]),
                                m(
                                    1,
                                    &[
                                        s(1, "settings"),
                                        m(
                                            2,
                                            &[m(
                                                19,
                                                &[
                                                    m(1, &[s(1, "settings")]),
                                                    m(2, &[s(1, "a"), s(2, "a.txt")]),
                                                    v(3, 0o644),
                                                ],
                                            )],
                                        ),
                                    ],
                                ),
                                container,
                                s(3, "Always"),
                                v(4, 30),
                                entry(7, "disk", b"ssd"),
                                v(25, -1),
                                m(22, &[s(1, "k"), s(2, "Exists"), s(4, "NoSchedule")]),
                            ],
                        ),
                    ],
                ),
                m(
                    4,
                    &[
                        s(1, "RollingUpdate"),
                        m(
                            2,
                            &[m(1, &[v(1, 0), v(2, 1)]), m(2, &[v(1, 1), s(3, "25%")])],
                        ),
                    ],
                ),
                v(6, 5),
                v(9, 600),
            ],
        );
        let object = decoded(&body(
            "apps/v1",
            "Deployment",
            &[m(1, &[s(1, "web")]), spec],
        ));
        assert_eq!(
            object["spec"],
            json!({
                "replicas": 0,
                "selector": {"matchExpressions": [{"key": "app", "operator": "In",
                                                   "values": ["web", "api"]}]},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "volumes": [
                            {"name": "data", "emptyDir": {"medium": "Memory"}},
                            {"name": "settings", "configMap": {
                                "name": "settings",
                                "items": [{"key": "a", "path": "a.txt"}],
                                "defaultMode": 420}}
                        ],
                        "containers": [{
                            "name": "app",
                            "image": "app.wasm",
                            "command": ["/app.wasm"],
                            "args": ["--port", "8080"],
                            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                            "envFrom": [{"prefix": "CFG_",
                                         "configMapRef": {"name": "settings", "optional": true}}],
                            "env": [
                                {"name": "MODE", "value": "prod"},
                                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {
                                    "name": "creds", "key": "token"}}},
                                {"name": "POD", "valueFrom": {"fieldRef": {
                                    "apiVersion": "v1", "fieldPath": "metadata.name"}}}
                            ],
                            "resources": {"limits": {"cpu": "500m"},
                                          "requests": {"memory": "64Mi"}},
                            "volumeMounts": [{"name": "data", "readOnly": true,
                                              "mountPath": "/data"}],
                            "livenessProbe": {
                                "httpGet": {"path": "/healthz", "port": "http"},
                                "initialDelaySeconds": 5,
                                "periodSeconds": 10
                            },
                            "readinessProbe": {"tcpSocket": {"port": 8080}},
                            "securityContext": {"allowPrivilegeEscalation": false,
                                                "capabilities": {"drop": ["ALL"]}},
                            "imagePullPolicy": "IfNotPresent"
                        }],
                        "restartPolicy": "Always",
                        "terminationGracePeriodSeconds": 30,
                        "nodeSelector": {"disk": "ssd"},
                        "priority": -1,
                        "tolerations": [{"key": "k", "operator": "Exists",
                                         "effect": "NoSchedule"}]
                    }
                },
                "strategy": {"type": "RollingUpdate",
                             "rollingUpdate": {"maxUnavailable": 1, "maxSurge": "25%"}},
                "revisionHistoryLimit": 5,
                "progressDeadlineSeconds": 600
            })
        );
    }

    #[test]
    fn service_account_and_secret_pointer_fields_keep_false() {
        let object = decoded(&body(
            "v1",
            "ServiceAccount",
            &[
                m(1, &[s(1, "builder")]),
                m(2, &[s(3, "builder-token")]),
                m(3, &[s(1, "registry")]),
                v(4, 0),
            ],
        ));
        assert_eq!(
            object,
            json!({"kind": "ServiceAccount", "apiVersion": "v1",
                   "metadata": {"name": "builder"},
                   "secrets": [{"name": "builder-token"}],
                   "imagePullSecrets": [{"name": "registry"}],
                   "automountServiceAccountToken": false})
        );
        let secret = decoded(&body(
            "v1",
            "Secret",
            &[
                m(1, &[s(1, "s")]),
                v(5, 1),
                entry(4, "plain", b"text"),
                s(3, "Opaque"),
            ],
        ));
        assert_eq!(
            secret,
            json!({"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "s"},
                   "immutable": true, "stringData": {"plain": "text"}, "type": "Opaque"})
        );
    }

    #[test]
    fn service_optional_pointers_and_status() {
        let object = decoded(&body(
            "v1",
            "Service",
            &[
                m(1, &[s(1, "web")]),
                m(
                    2,
                    &[
                        m(1, &[s(1, "grpc"), v(3, 9000), s(6, "kubernetes.io/h2c")]),
                        s(18, "10.0.0.9"),
                        s(7, "ClientIP"),
                        m(14, &[m(1, &[v(1, 60)])]),
                        s(19, "IPv4"),
                        s(17, "SingleStack"),
                        v(20, 0),
                        s(22, "Cluster"),
                    ],
                ),
                m(
                    3,
                    &[
                        m(1, &[m(1, &[s(1, "192.0.2.10"), s(3, "VIP")])]),
                        m(
                            2,
                            &[
                                s(1, "Ready"),
                                s(2, "True"),
                                m(4, &[v(1, 1_700_000_000)]),
                                s(5, "Up"),
                                s(6, ""),
                            ],
                        ),
                    ],
                ),
            ],
        ));
        assert_eq!(
            object["spec"],
            json!({
                "ports": [{"name": "grpc", "port": 9000, "appProtocol": "kubernetes.io/h2c"}],
                "clusterIPs": ["10.0.0.9"],
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                "ipFamilies": ["IPv4"],
                "ipFamilyPolicy": "SingleStack",
                "allocateLoadBalancerNodePorts": false,
                "internalTrafficPolicy": "Cluster"
            })
        );
        assert_eq!(
            object["status"],
            json!({
                "loadBalancer": {"ingress": [{"ip": "192.0.2.10", "ipMode": "VIP"}]},
                "conditions": [{"type": "Ready", "status": "True",
                                "lastTransitionTime": "2023-11-14T22:13:20Z",
                                "reason": "Up", "message": ""}]
            })
        );
    }

    #[test]
    fn packed_repeated_integers() {
        // supplementalGroups as a packed run: 1000, 2000.
        let mut packed = Vec::new();
        enc::varint(1000, &mut packed);
        enc::varint(2000, &mut packed);
        let pod_spec = m(2, &[m(14, &[b(4, &packed), v(4, 3000)])]);
        let object = decoded(&body(
            "apps/v1",
            "Deployment",
            &[m(2, &[m(3, &[pod_spec])])],
        ));
        assert_eq!(
            object["spec"]["template"]["spec"]["securityContext"]["supplementalGroups"],
            json!([1000, 2000, 3000])
        );
    }

    #[test]
    fn key_order_is_kind_api_version_then_wire_order() {
        let object = decoded(&hex(captured::NAMESPACE));
        let keys: Vec<&String> = object
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        assert_eq!(keys, ["kind", "apiVersion", "metadata", "spec", "status"]);
    }

    #[test]
    fn a_job_from_kubectl_create_job() {
        // `kubectl create job pi --image=IMG -- pi 5`: a template with one container and
        // restartPolicy Never, an empty status.
        let container = m(2, &[s(1, "pi"), s(2, "IMG"), s(3, "pi"), s(3, "5")]);
        let pod_spec = m(2, &[container, s(3, "Never")]);
        let object = decoded(&body(
            "batch/v1",
            "Job",
            &[
                m(1, &[s(1, "pi"), s(3, "default")]),
                m(2, &[m(6, &[pod_spec]), v(7, 2)]),
                m(3, &[]),
            ],
        ));
        assert_eq!(object["kind"], "Job");
        assert_eq!(object["apiVersion"], "batch/v1");
        assert_eq!(object["metadata"]["name"], "pi");
        let spec = &object["spec"];
        assert_eq!(spec["backoffLimit"], 2);
        let template = &spec["template"]["spec"];
        assert_eq!(template["restartPolicy"], "Never");
        assert_eq!(template["containers"][0]["image"], "IMG");
        assert_eq!(template["containers"][0]["command"], json!(["pi", "5"]));
    }

    #[test]
    fn bad_magic() {
        assert_eq!(decode(b"{\"kind\":\"Pod\"}"), Err(ProtobufError::BadMagic));
        assert_eq!(decode(b"k8s"), Err(ProtobufError::BadMagic));
    }

    #[test]
    fn truncated_bodies_are_errors_at_every_length() {
        let full = hex(captured::DEPLOYMENT);
        // 27 bytes is magic plus typeMeta: a valid envelope with an empty raw message.
        // Every other cut before the trailing empty fields lands inside a field.
        for len in (4..full.len() - 4).filter(|&len| len != 27) {
            assert!(
                decode(&full[..len]).is_err(),
                "a body cut at {len} bytes decoded"
            );
        }
        // Cutting the kind's message itself and re-wrapping it must never panic; cuts at
        // field boundaries are valid shorter messages, the rest are errors.
        let raw = &full[30..full.len() - 4];
        let mut errors = 0;
        for len in 0..raw.len() {
            if decode(&body("apps/v1", "Deployment", &[raw[..len].to_vec()])).is_err() {
                errors += 1;
            }
        }
        assert!(errors > raw.len() / 2, "only {errors} cuts failed");
        let err = decode(&full[..40]).expect_err("cut body");
        assert!(matches!(err, ProtobufError::Truncated { .. }), "{err}");
    }

    #[test]
    fn unknown_field_names_message_and_number() {
        let err = decode(&body("v1", "ConfigMap", &[m(1, &[s(1, "x"), s(99, "?")])]))
            .expect_err("unknown field");
        assert_eq!(
            err,
            ProtobufError::UnknownField {
                message: "ObjectMeta",
                field: 99
            }
        );
        assert_eq!(
            err.to_string(),
            "unknown field number 99 in message ObjectMeta"
        );

        // A volume type we do not serve (gcePersistentDisk = 3) is refused, not dropped.
        let volume = m(1, &[s(1, "disk"), m(2, &[m(3, &[s(1, "pd")])])]);
        let err = decode(&body(
            "apps/v1",
            "Deployment",
            &[m(2, &[m(3, &[m(2, &[volume])])])],
        ))
        .expect_err("gce volume");
        assert_eq!(
            err,
            ProtobufError::UnknownField {
                message: "VolumeSource",
                field: 3
            }
        );
    }

    #[test]
    fn wrong_wire_type() {
        // ObjectMeta.name (a string) sent as a varint.
        let err = decode(&body("v1", "Namespace", &[m(1, &[v(1, 7)])])).expect_err("wire");
        assert_eq!(
            err,
            ProtobufError::WrongWireType {
                message: "ObjectMeta",
                field: 1,
                expected: "length-delimited",
                found: "varint"
            }
        );
        // DeploymentSpec.replicas (int32) sent as a string.
        let err = decode(&body("apps/v1", "Deployment", &[m(2, &[s(1, "3")])])).expect_err("wire");
        assert!(
            matches!(err, ProtobufError::WrongWireType { field: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn unsupported_kinds_and_envelopes() {
        let err = decode(&body("apps/v1", "Job", &[])).expect_err("kind");
        assert_eq!(
            err.to_string(),
            "unsupported kind apps/v1 Job in a protobuf body"
        );

        let mut gzip = b"k8s\0".to_vec();
        gzip.extend(m(1, &[s(1, "v1"), s(2, "Namespace")]));
        gzip.extend(s(3, "gzip"));
        assert_eq!(
            decode(&gzip),
            Err(ProtobufError::UnsupportedContentEncoding("gzip".into()))
        );

        let mut missing = b"k8s\0".to_vec();
        missing.extend(b(2, &[]));
        assert_eq!(decode(&missing), Err(ProtobufError::MissingTypeMeta));
    }

    #[test]
    fn invalid_utf8_and_bad_int_or_string() {
        let err =
            decode(&body("v1", "Namespace", &[m(1, &[b(1, &[0xff, 0xfe])])])).expect_err("utf8");
        assert_eq!(
            err,
            ProtobufError::InvalidUtf8 {
                message: "ObjectMeta",
                field: 1
            }
        );
        let port = m(1, &[v(3, 80), m(4, &[v(1, 7)])]);
        let err = decode(&body("v1", "Service", &[m(2, &[port])])).expect_err("intstr");
        assert_eq!(err, ProtobufError::InvalidIntOrString(7));
    }

    #[test]
    fn delete_options_from_kubectl_drain() {
        use enc::*;
        let body = body(
            "v1",
            "DeleteOptions",
            &[v(1, 0), m(2, &[s(1, "u-1")]), s(4, "Background")],
        );
        assert_eq!(
            decoded(&body),
            json!({
                "kind": "DeleteOptions", "apiVersion": "v1",
                "gracePeriodSeconds": 0,
                "preconditions": {"uid": "u-1"},
                "propagationPolicy": "Background",
            })
        );
    }

    #[test]
    fn overlong_varint() {
        let mut raw = b"k8s\0".to_vec();
        raw.extend([0xff; 11]);
        assert!(matches!(decode(&raw), Err(ProtobufError::BadVarint { .. })));
    }
}
