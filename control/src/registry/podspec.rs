//! What pods and the workload kinds share: defaulting and validating a `PodSpec` or a
//! `PodTemplateSpec` at a given field path, resource quantities, label selectors, and the
//! Go-style renderings Kubernetes puts into its validation messages.
//!
//! Everything works on `serde_json::Value` so unknown fields survive. Defaulting follows
//! upstream's `pkg/apis/core/v1/defaults.go` (plus the quantity canonicalisation a decode
//! and re-encode performs); validation follows `pkg/apis/core/validation` with the same
//! field paths and message wording, for the rules a client is likely to trip over.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Display;

use serde_json::{json, Map, Value};

use super::table::Column;
use super::validation::{self, Cause};

/// Whether a PodSpec belongs to a Pod or sits inside another object's template; a few
/// defaults and checks apply to pods only, as upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpecOwner {
    /// `Pod.spec`.
    Pod,
    /// `<workload>.spec.template.spec`.
    Template,
}

// ---------------------------------------------------------------------------------------
// Field paths, causes and small JSON accessors.
// ---------------------------------------------------------------------------------------

/// `path.name`, as `field.Path.Child` renders it.
pub(crate) fn child(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// `path[i]`.
pub(crate) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// `path[key]`.
pub(crate) fn key(path: &str, k: &str) -> String {
    format!("{path}[{k}]")
}

/// An invalid value that Kubernetes prints without quotes (numbers, Go structs).
pub(crate) fn invalid_raw(field: impl Into<String>, rendered: impl Display, detail: &str) -> Cause {
    Cause {
        reason: "FieldValueInvalid",
        message: format!("Invalid value: {rendered}: {detail}"),
        field: field.into(),
    }
}

/// A missing value with an explanation (`Required value: must specify a volume type`).
pub(crate) fn required_with(field: impl Into<String>, detail: &str) -> Cause {
    Cause {
        reason: "FieldValueRequired",
        message: format!("Required value: {detail}"),
        field: field.into(),
    }
}

/// A reference to something that does not exist (`Not found: "data"`).
pub(crate) fn not_found(field: impl Into<String>, value: &str) -> Cause {
    Cause {
        reason: "FieldValueNotFound",
        message: format!("Not found: {value:?}"),
        field: field.into(),
    }
}

/// An unsupported value that Kubernetes prints without quotes (a Go struct).
pub(crate) fn not_supported_raw(
    field: impl Into<String>,
    rendered: &str,
    supported: &[&str],
) -> Cause {
    let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
    Cause {
        reason: "FieldValueNotSupported",
        message: format!(
            "Unsupported value: {rendered}: supported values: {}",
            list.join(", ")
        ),
        field: field.into(),
    }
}

/// `must be greater than or equal to 0` on a negative integer.
pub(crate) fn nonnegative(out: &mut Vec<Cause>, field: &str, value: i64) {
    if value < 0 {
        out.push(invalid_raw(
            field,
            value,
            "must be greater than or equal to 0",
        ));
    }
}

/// The string at `k`, or "" when missing or not a string (Go's zero value).
pub(crate) fn str_at<'a>(m: &'a Map<String, Value>, k: &str) -> &'a str {
    m.get(k).and_then(Value::as_str).unwrap_or("")
}

/// The array at `k`, or an empty slice.
pub(crate) fn arr_at<'a>(m: &'a Map<String, Value>, k: &str) -> &'a [Value] {
    m.get(k)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The object at `k`, if any.
pub(crate) fn obj_at<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a Map<String, Value>> {
    m.get(k).and_then(Value::as_object)
}

/// The integer at `k`, if any.
pub(crate) fn int_at(m: &Map<String, Value>, k: &str) -> Option<i64> {
    m.get(k).and_then(Value::as_i64)
}

/// An empty map shared by accessors that need "no object".
fn empty_map() -> &'static Map<String, Value> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(Map::new)
}

/// The object at `k`, or an empty one.
fn obj_or_empty<'a>(m: &'a Map<String, Value>, k: &str) -> &'a Map<String, Value> {
    obj_at(m, k).unwrap_or_else(|| empty_map())
}

/// Whether a field is unset in Go terms: missing, null or the empty string.
fn unset(m: &Map<String, Value>, k: &str) -> bool {
    match m.get(k) {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        _ => false,
    }
}

/// Whether an integer field is unset or zero (Go's `== 0` on a non-pointer int).
fn unset_or_zero(m: &Map<String, Value>, k: &str) -> bool {
    match m.get(k) {
        None | Some(Value::Null) => true,
        Some(v) => v.as_i64() == Some(0),
    }
}

fn set_if_unset(m: &mut Map<String, Value>, k: &str, v: Value) {
    if unset(m, k) {
        m.insert(k.to_string(), v);
    }
}

fn set_if_zero(m: &mut Map<String, Value>, k: &str, v: i64) {
    if unset_or_zero(m, k) {
        m.insert(k.to_string(), json!(v));
    }
}

/// Calls `f` on every object in the array at `k`.
fn each_obj_mut(m: &mut Map<String, Value>, k: &str, mut f: impl FnMut(&mut Map<String, Value>)) {
    if let Some(items) = m.get_mut(k).and_then(Value::as_array_mut) {
        for item in items.iter_mut() {
            if let Some(o) = item.as_object_mut() {
                f(o);
            }
        }
    }
}

fn obj_mut<'a>(m: &'a mut Map<String, Value>, k: &str) -> Option<&'a mut Map<String, Value>> {
    m.get_mut(k).and_then(Value::as_object_mut)
}

/// A JSON value as Go's `%v` would show a scalar (used for renderings in messages).
fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Name rules (the `k8s.io/apimachinery/pkg/util/validation` messages).
// ---------------------------------------------------------------------------------------

const DNS1123_LABEL_ERR: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const QUALIFIED_NAME_PART_ERR: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const QUALIFIED_NAME_ERR: &str = "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')";
const LABEL_VALUE_ERR: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const CONFIG_KEY_ERR: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";
const ENV_NAME_ERR: &str = "a valid environment variable name must consist only of printable ASCII characters other than '='";
const FILE_MODE_ERR: &str = "must be a number between 0 and 0777 (octal), both inclusive";

fn label_chars_ok(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// `IsDNS1123Label`: every problem with `s` as an RFC 1123 label.
pub(crate) fn dns_label_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !label_chars_ok(s) {
        if s.split('.').all(label_chars_ok) {
            errs.push("must not contain dots".to_string());
        } else {
            errs.push(DNS1123_LABEL_ERR.to_string());
        }
    }
    errs
}

/// Invalid causes for `value` at `field` when it is not a DNS label.
pub(crate) fn dns_label_causes(out: &mut Vec<Cause>, field: &str, value: &str) {
    for msg in dns_label_errors(value) {
        out.push(Cause::invalid(field, value, msg));
    }
}

/// Invalid causes for `value` at `field` when it is not a DNS subdomain.
fn dns_subdomain_causes(out: &mut Vec<Cause>, field: &str, value: &str) {
    if let Some(msg) = validation::dns1123_subdomain(value) {
        out.push(Cause::invalid(field, value, msg));
    }
}

fn qualified_name_part_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// `IsQualifiedName` (label keys, annotation keys, condition types).
pub(crate) fn qualified_name_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else if let Some(msg) = validation::dns1123_subdomain(prefix) {
                errs.push(format!("prefix part {msg}"));
            }
            *name
        }
        _ => return vec![QUALIFIED_NAME_ERR.to_string()],
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push("name part must be no more than 63 characters".to_string());
    }
    if !name.is_empty() && !qualified_name_part_ok(name) {
        errs.push(QUALIFIED_NAME_PART_ERR.to_string());
    }
    errs
}

/// `IsValidLabelValue`.
pub(crate) fn label_value_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !value.is_empty() && !qualified_name_part_ok(value) {
        errs.push(LABEL_VALUE_ERR.to_string());
    }
    errs
}

/// `ValidateLabels`: keys and values of a label map; every cause names the map's path.
pub(crate) fn validate_labels(
    out: &mut Vec<Cause>,
    labels: Option<&Map<String, Value>>,
    field: &str,
) {
    let Some(labels) = labels else { return };
    let sorted: BTreeMap<&String, &Value> = labels.iter().collect();
    for (k, v) in sorted {
        for msg in qualified_name_errors(k) {
            out.push(Cause::invalid(field, k, msg));
        }
        let v = scalar_text(v);
        for msg in label_value_errors(&v) {
            out.push(Cause::invalid(field, &v, msg));
        }
    }
}

/// Annotation keys must be qualified names (values are free-form).
fn validate_annotation_keys(
    out: &mut Vec<Cause>,
    annotations: Option<&Map<String, Value>>,
    field: &str,
) {
    let Some(annotations) = annotations else {
        return;
    };
    let keys: BTreeSet<&String> = annotations.keys().collect();
    for k in keys {
        for msg in qualified_name_errors(&k.to_lowercase()) {
            out.push(Cause::invalid(field, k, msg));
        }
    }
}

/// `IsValidPortName`.
fn port_name_errors(port: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if port.len() > 15 {
        errs.push("must be no more than 15 characters".to_string());
    }
    if port.is_empty()
        || !port
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        errs.push(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".to_string(),
        );
    }
    if !port.bytes().any(|b| b.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".to_string());
    }
    if port.contains("--") {
        errs.push("must not contain consecutive hyphens".to_string());
    }
    if port.starts_with('-') || port.ends_with('-') {
        errs.push("must not begin or end with a hyphen".to_string());
    }
    errs
}

const PORT_RANGE_ERR: &str = "must be between 1 and 65535, inclusive";

/// `ValidatePortNumOrName` for an int-or-string port.
fn validate_port_num_or_name(out: &mut Vec<Cause>, port: Option<&Value>, field: &str) {
    match port {
        Some(Value::String(name)) => {
            for msg in port_name_errors(name) {
                out.push(Cause::invalid(field, name, msg));
            }
        }
        Some(Value::Number(n)) => {
            let p = n.as_i64().unwrap_or(0);
            if !(1..=65535).contains(&p) {
                out.push(invalid_raw(field, p, PORT_RANGE_ERR));
            }
        }
        _ => out.push(invalid_raw(field, 0, PORT_RANGE_ERR)),
    }
}

// ---------------------------------------------------------------------------------------
// Resource quantities.
// ---------------------------------------------------------------------------------------

/// The message Kubernetes gives for a string that is not a quantity.
pub(crate) const QUANTITY_FORMAT_ERR: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QuantityFormat {
    /// `Ki`, `Mi`, ...
    BinarySI,
    /// `m`, `k`, `M`, ... or no suffix.
    DecimalSI,
    /// `e3`.
    DecimalExponent,
}

/// A parsed resource quantity: `mantissa × 10^exp`, remembering the suffix family so it
/// can be re-rendered in Kubernetes' canonical form (`0.5` → `500m`, `1.5Gi` → `1536Mi`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Quantity {
    mantissa: i128,
    exp: i32,
    format: QuantityFormat,
}

fn pow10(n: u32) -> Option<i128> {
    10i128.checked_pow(n)
}

/// `m × 10^shift`, or `None` on overflow.
fn scale_up(m: i128, shift: i32) -> Option<i128> {
    pow10(u32::try_from(shift).ok()?).and_then(|p| m.checked_mul(p))
}

impl Quantity {
    /// Parses a quantity string; `None` when it is malformed or absurdly large.
    pub(crate) fn parse(s: &str) -> Option<Quantity> {
        let s = s.trim();
        let (negative, rest) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let num_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        let (number, suffix) = rest.split_at(num_len);
        let (int_part, frac_part) = match number.split_once('.') {
            Some((i, f)) => (i, f),
            None => (number, ""),
        };
        if frac_part.contains('.') || (int_part.is_empty() && frac_part.is_empty()) {
            return None;
        }
        let digits = format!("{int_part}{frac_part}");
        let digits = digits.trim_start_matches('0');
        if digits.len() > 30 {
            return None;
        }
        let mut mantissa: i128 = if digits.is_empty() {
            0
        } else {
            digits.parse().ok()?
        };
        let mut exp = -i32::try_from(frac_part.len()).ok()?;
        let (format, exp10, pow1024) = match suffix {
            "" => (QuantityFormat::DecimalSI, 0, 0),
            "n" => (QuantityFormat::DecimalSI, -9, 0),
            "u" => (QuantityFormat::DecimalSI, -6, 0),
            "m" => (QuantityFormat::DecimalSI, -3, 0),
            "k" => (QuantityFormat::DecimalSI, 3, 0),
            "M" => (QuantityFormat::DecimalSI, 6, 0),
            "G" => (QuantityFormat::DecimalSI, 9, 0),
            "T" => (QuantityFormat::DecimalSI, 12, 0),
            "P" => (QuantityFormat::DecimalSI, 15, 0),
            "E" => (QuantityFormat::DecimalSI, 18, 0),
            "Ki" => (QuantityFormat::BinarySI, 0, 1),
            "Mi" => (QuantityFormat::BinarySI, 0, 2),
            "Gi" => (QuantityFormat::BinarySI, 0, 3),
            "Ti" => (QuantityFormat::BinarySI, 0, 4),
            "Pi" => (QuantityFormat::BinarySI, 0, 5),
            "Ei" => (QuantityFormat::BinarySI, 0, 6),
            other => {
                let e = other.strip_prefix(['e', 'E'])?;
                let body = e.strip_prefix(['+', '-']).unwrap_or(e);
                if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit()) || body.len() > 4 {
                    return None;
                }
                (QuantityFormat::DecimalExponent, e.parse::<i32>().ok()?, 0)
            }
        };
        if pow1024 > 0 {
            mantissa = mantissa.checked_mul(1024i128.checked_pow(pow1024)?)?;
        }
        exp = exp.checked_add(exp10)?;
        if negative {
            mantissa = -mantissa;
        }
        // Quantities keep nano precision at most.
        Some(
            Quantity {
                mantissa,
                exp,
                format,
            }
            .round_up_to(-9)
            .normalized(),
        )
    }

    /// Removes trailing zeros from the mantissa.
    fn normalized(mut self) -> Self {
        if self.mantissa == 0 {
            self.exp = 0;
            return self;
        }
        while self.mantissa % 10 == 0 {
            self.mantissa /= 10;
            self.exp += 1;
        }
        self
    }

    /// Rounds away from zero to a multiple of `10^scale`.
    pub(crate) fn round_up_to(mut self, scale: i32) -> Self {
        if self.exp >= scale {
            return self;
        }
        match scale_up(1, scale - self.exp) {
            Some(d) => {
                let (q, r) = (self.mantissa / d, self.mantissa % d);
                self.mantissa = if r != 0 {
                    q + self.mantissa.signum()
                } else {
                    q
                };
            }
            // The value is far below the scale: it rounds to one unit of it.
            None => self.mantissa = self.mantissa.signum(),
        }
        self.exp = scale;
        self.normalized()
    }

    pub(crate) fn is_zero(&self) -> bool {
        self.mantissa == 0
    }

    pub(crate) fn is_negative(&self) -> bool {
        self.mantissa < 0
    }

    fn to_f64(self) -> f64 {
        self.mantissa as f64 * 10f64.powi(self.exp)
    }

    /// The exact integer value, if it is one and fits.
    fn as_integer(&self) -> Option<i128> {
        if self.exp >= 0 {
            scale_up(self.mantissa, self.exp)
        } else {
            None
        }
    }

    /// Whether the value is a whole number (`MilliValue() % 1000 == 0`).
    pub(crate) fn is_integer(&self) -> bool {
        self.exp >= 0
    }

    /// The two mantissas at a common exponent.
    fn aligned(&self, other: &Quantity) -> Option<(i128, i128, i32)> {
        let e = self.exp.min(other.exp);
        Some((
            scale_up(self.mantissa, self.exp - e)?,
            scale_up(other.mantissa, other.exp - e)?,
            e,
        ))
    }

    pub(crate) fn compare(&self, other: &Quantity) -> Ordering {
        match self.aligned(other) {
            Some((a, b, _)) => a.cmp(&b),
            None => self
                .to_f64()
                .partial_cmp(&other.to_f64())
                .unwrap_or(Ordering::Equal),
        }
    }

    /// The sum, keeping this quantity's format; `None` on overflow.
    pub(crate) fn checked_add(&self, other: &Quantity) -> Option<Quantity> {
        let (a, b, e) = self.aligned(other)?;
        Some(
            Quantity {
                mantissa: a.checked_add(b)?,
                exp: e,
                format: self.format,
            }
            .normalized(),
        )
    }

    /// The canonical string Kubernetes serialises this quantity as.
    pub(crate) fn canonical(&self) -> String {
        if self.mantissa == 0 {
            return "0".to_string();
        }
        let mut format = self.format;
        if format == QuantityFormat::BinarySI {
            let small = self.compare(&Quantity::from_int(1024)) == Ordering::Less
                && self.compare(&Quantity::from_int(-1024)) == Ordering::Greater;
            match self.as_integer() {
                Some(mut v) if !small => {
                    let mut k = 0;
                    while k < 6 && v % 1024 == 0 {
                        v /= 1024;
                        k += 1;
                    }
                    return format!("{v}{}", ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][k]);
                }
                _ => format = QuantityFormat::DecimalSI,
            }
        }
        let q = self.normalized();
        let r = q.exp.rem_euclid(3);
        let (m, e) = match scale_up(q.mantissa, r) {
            Some(m) => (m, q.exp - r),
            None => (q.mantissa, q.exp),
        };
        let suffix = match (format, e) {
            (_, 0) => String::new(),
            (QuantityFormat::DecimalSI, -9) => "n".to_string(),
            (QuantityFormat::DecimalSI, -6) => "u".to_string(),
            (QuantityFormat::DecimalSI, -3) => "m".to_string(),
            (QuantityFormat::DecimalSI, 3) => "k".to_string(),
            (QuantityFormat::DecimalSI, 6) => "M".to_string(),
            (QuantityFormat::DecimalSI, 9) => "G".to_string(),
            (QuantityFormat::DecimalSI, 12) => "T".to_string(),
            (QuantityFormat::DecimalSI, 15) => "P".to_string(),
            (QuantityFormat::DecimalSI, 18) => "E".to_string(),
            (_, e) => format!("e{e}"),
        };
        format!("{m}{suffix}")
    }

    fn from_int(v: i128) -> Quantity {
        Quantity {
            mantissa: v,
            exp: 0,
            format: QuantityFormat::DecimalSI,
        }
    }
}

/// Parses a quantity held in a JSON value (a string, or a bare number some clients send).
pub(crate) fn quantity_of(v: &Value) -> Option<Quantity> {
    match v {
        Value::String(s) => Quantity::parse(s),
        Value::Number(n) => Quantity::parse(&n.to_string()),
        _ => None,
    }
}

/// `SetDefaults_ResourceList`: rounds every quantity up to milli precision and rewrites
/// it canonically, as a decode and re-encode does upstream. Unparsable values are left
/// for validation to report.
fn canonicalize_resource_list(list: Option<&mut Value>) {
    let Some(list) = list.and_then(Value::as_object_mut) else {
        return;
    };
    for v in list.values_mut() {
        if let Some(q) = quantity_of(v) {
            *v = Value::String(q.round_up_to(-3).canonical());
        }
    }
}

/// Rewrites a single quantity canonically (no rounding beyond nano).
fn canonicalize_quantity(v: Option<&mut Value>) {
    if let Some(v) = v {
        if let Some(q) = quantity_of(v) {
            *v = Value::String(q.canonical());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Defaulting.
// ---------------------------------------------------------------------------------------

/// Fills the defaults of a PodSpec (upstream's `SetDefaults_PodSpec` and everything
/// nested; for pods also `SetDefaults_Pod`). Idempotent, as it runs on every write.
pub(crate) fn default_pod_spec(spec: &mut Value, owner: SpecOwner) {
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    if owner == SpecOwner::Pod {
        for list in ["containers", "initContainers"] {
            each_obj_mut(spec, list, default_requests_from_limits);
        }
        if spec.get("enableServiceLinks").is_none_or(Value::is_null) {
            spec.insert("enableServiceLinks".into(), json!(true));
        }
        if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
            for list in ["containers", "initContainers"] {
                each_obj_mut(spec, list, |c| {
                    each_obj_mut(c, "ports", |p| {
                        if unset_or_zero(p, "hostPort") {
                            if let Some(cp) = p.get("containerPort").cloned() {
                                p.insert("hostPort".into(), cp);
                            }
                        }
                    })
                });
            }
        }
    }
    set_if_unset(spec, "dnsPolicy", json!("ClusterFirst"));
    set_if_unset(spec, "restartPolicy", json!("Always"));
    if spec.get("securityContext").is_none_or(Value::is_null) {
        spec.insert("securityContext".into(), json!({}));
    }
    if spec
        .get("terminationGracePeriodSeconds")
        .is_none_or(Value::is_null)
    {
        spec.insert("terminationGracePeriodSeconds".into(), json!(30));
    }
    set_if_unset(spec, "schedulerName", json!("default-scheduler"));

    // The internal type has one field for both names; the v1 round trip fills the
    // deprecated one from the current one.
    if unset(spec, "serviceAccountName") && !unset(spec, "serviceAccount") {
        let sa = spec.get("serviceAccount").cloned().unwrap_or(Value::Null);
        spec.insert("serviceAccountName".into(), sa);
    }
    if !unset(spec, "serviceAccountName") {
        let san = spec
            .get("serviceAccountName")
            .cloned()
            .unwrap_or(Value::Null);
        spec.insert("serviceAccount".into(), san);
    }

    each_obj_mut(spec, "volumes", default_volume);
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        each_obj_mut(spec, list, default_container);
    }
    canonicalize_resource_list(spec.get_mut("overhead"));
    if let Some(res) = obj_mut(spec, "resources") {
        canonicalize_resource_list(res.get_mut("limits"));
        canonicalize_resource_list(res.get_mut("requests"));
    }
}

/// Fills the defaults of a `PodTemplateSpec` (the template of a Deployment, ReplicaSet or
/// DaemonSet): only its pod spec has defaults.
pub(crate) fn default_pod_template(template: &mut Value) {
    let Some(t) = template.as_object_mut() else {
        return;
    };
    let spec = t.entry("spec").or_insert_with(|| json!({}));
    if spec.is_null() {
        *spec = json!({});
    }
    default_pod_spec(spec, SpecOwner::Template);
}

/// Pods only: requests default to limits for every resource with a limit.
fn default_requests_from_limits(c: &mut Map<String, Value>) {
    let Some(res) = obj_mut(c, "resources") else {
        return;
    };
    let Some(limits) = res.get("limits").and_then(Value::as_object).cloned() else {
        return;
    };
    let requests = res.entry("requests").or_insert_with(|| json!({}));
    if requests.is_null() {
        *requests = json!({});
    }
    if let Some(requests) = requests.as_object_mut() {
        for (k, v) in limits {
            requests.entry(k).or_insert(v);
        }
    }
}

fn default_container(c: &mut Map<String, Value>) {
    if unset(c, "imagePullPolicy") {
        let policy = if image_tag_is_latest(str_at(c, "image")) {
            "Always"
        } else {
            "IfNotPresent"
        };
        c.insert("imagePullPolicy".into(), json!(policy));
    }
    set_if_unset(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_if_unset(c, "terminationMessagePolicy", json!("File"));
    each_obj_mut(c, "ports", |p| set_if_unset(p, "protocol", json!("TCP")));
    each_obj_mut(c, "env", |e| {
        if let Some(vf) = obj_mut(e, "valueFrom") {
            if let Some(fr) = obj_mut(vf, "fieldRef") {
                set_if_unset(fr, "apiVersion", json!("v1"));
            }
        }
    });
    // `resources` is a struct, not a pointer, upstream: it is always serialised.
    if c.get("resources").is_none_or(Value::is_null) {
        c.insert("resources".into(), json!({}));
    }
    if let Some(res) = obj_mut(c, "resources") {
        canonicalize_resource_list(res.get_mut("limits"));
        canonicalize_resource_list(res.get_mut("requests"));
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = obj_mut(c, probe) {
            set_if_zero(p, "timeoutSeconds", 1);
            set_if_zero(p, "periodSeconds", 10);
            set_if_zero(p, "successThreshold", 1);
            set_if_zero(p, "failureThreshold", 3);
            default_http_get(p);
        }
    }
    if let Some(lc) = obj_mut(c, "lifecycle") {
        for hook in ["postStart", "preStop"] {
            if let Some(h) = obj_mut(lc, hook) {
                default_http_get(h);
            }
        }
    }
}

fn default_http_get(handler: &mut Map<String, Value>) {
    if let Some(h) = obj_mut(handler, "httpGet") {
        set_if_unset(h, "path", json!("/"));
        set_if_unset(h, "scheme", json!("HTTP"));
    }
}

/// `Always` when the image has the tag `latest` or neither tag nor digest, as upstream's
/// `parsers.ParseImageName` + `SetDefaults_Container`.
pub(crate) fn image_tag_is_latest(image: &str) -> bool {
    if image.is_empty() {
        return false;
    }
    if image.contains('@') {
        // With a digest a tag is only present when written before the `@`.
        let before = image.split('@').next().unwrap_or("");
        return tag_of(before) == Some("latest");
    }
    match tag_of(image) {
        Some(tag) => tag == "latest",
        None => true,
    }
}

/// The tag of an image reference without digest: what follows the last `:` after the
/// last `/` (a `:` before a `/` is a registry port).
fn tag_of(reference: &str) -> Option<&str> {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    last.split_once(':').map(|(_, tag)| tag)
}

/// Every volume source field; a volume with none of them becomes an emptyDir.
const VOLUME_SOURCES: &[&str] = &[
    "hostPath",
    "emptyDir",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "gitRepo",
    "secret",
    "nfs",
    "iscsi",
    "glusterfs",
    "persistentVolumeClaim",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "downwardAPI",
    "fc",
    "azureFile",
    "configMap",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "projected",
    "portworxVolume",
    "scaleIO",
    "storageos",
    "csi",
    "ephemeral",
    "image",
];

fn default_volume(v: &mut Map<String, Value>) {
    if VOLUME_SOURCES
        .iter()
        .all(|s| v.get(*s).is_none_or(Value::is_null))
    {
        v.insert("emptyDir".into(), json!({}));
    }
    for source in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(s) = obj_mut(v, source) {
            if s.get("defaultMode").is_none_or(Value::is_null) {
                s.insert("defaultMode".into(), json!(420));
            }
        }
    }
    if let Some(d) = obj_mut(v, "downwardAPI") {
        default_downward_items(d);
    }
    if let Some(p) = obj_mut(v, "projected") {
        each_obj_mut(p, "sources", |src| {
            if let Some(t) = obj_mut(src, "serviceAccountToken") {
                if t.get("expirationSeconds").is_none_or(Value::is_null) {
                    t.insert("expirationSeconds".into(), json!(3600));
                }
            }
            if let Some(d) = obj_mut(src, "downwardAPI") {
                default_downward_items(d);
            }
        });
    }
    if let Some(h) = obj_mut(v, "hostPath") {
        if h.get("type").is_none_or(Value::is_null) {
            h.insert("type".into(), json!(""));
        }
    }
    if let Some(e) = obj_mut(v, "emptyDir") {
        canonicalize_quantity(e.get_mut("sizeLimit"));
    }
}

fn default_downward_items(d: &mut Map<String, Value>) {
    each_obj_mut(d, "items", |item| {
        if let Some(fr) = obj_mut(item, "fieldRef") {
            set_if_unset(fr, "apiVersion", json!("v1"));
        }
    });
}

// ---------------------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------------------

/// Validates a PodSpec found at `path` (`spec` for a pod, `spec.template.spec` for a
/// workload). Expects defaults to have been applied.
pub(crate) fn validate_pod_spec(spec: &Value, path: &str, owner: SpecOwner) -> Vec<Cause> {
    let spec = spec.as_object().unwrap_or_else(|| empty_map());
    let mut v = SpecValidator {
        out: Vec::new(),
        owner,
        restart_policy: str_at(spec, "restartPolicy"),
        grace_period: int_at(spec, "terminationGracePeriodSeconds"),
    };
    v.validate(spec, path);
    v.out
}

/// Validates a `PodTemplateSpec` at `path` (`spec.template`): its labels and annotations
/// and its pod spec.
pub(crate) fn validate_pod_template(template: &Value, path: &str) -> Vec<Cause> {
    let t = template.as_object().unwrap_or_else(|| empty_map());
    let meta = obj_or_empty(t, "metadata");
    let mut out = Vec::new();
    validate_labels(&mut out, obj_at(meta, "labels"), &child(path, "labels"));
    validate_annotation_keys(
        &mut out,
        obj_at(meta, "annotations"),
        &child(path, "annotations"),
    );
    let empty = json!({});
    let spec = t.get("spec").filter(|v| !v.is_null()).unwrap_or(&empty);
    let spec_path = child(path, "spec");
    out.extend(validate_pod_spec(spec, &spec_path, SpecOwner::Template));
    if !arr_at(obj_or_empty(t, "spec"), "ephemeralContainers").is_empty() {
        out.push(Cause::forbidden(
            child(&spec_path, "ephemeralContainers"),
            "ephemeral containers not allowed in pod template",
        ));
    }
    out
}

struct SpecValidator<'a> {
    out: Vec<Cause>,
    owner: SpecOwner,
    restart_policy: &'a str,
    grace_period: Option<i64>,
}

/// The container kinds, whose rules differ slightly.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ContainerKind {
    Regular,
    Init,
}

impl<'a> SpecValidator<'a> {
    fn validate(&mut self, spec: &'a Map<String, Value>, path: &str) {
        if spec
            .get("terminationGracePeriodSeconds")
            .is_none_or(Value::is_null)
        {
            self.out.push(Cause::required(child(
                path,
                "terminationGracePeriodSeconds",
            )));
        }
        let volumes = self.volumes(arr_at(spec, "volumes"), &child(path, "volumes"));
        self.containers(spec, &volumes, path);
        self.host_network_ports(spec, path);

        let restart = child(path, "restartPolicy");
        match self.restart_policy {
            "Always" | "OnFailure" | "Never" => {}
            "" => self.out.push(Cause::required(restart)),
            other => self.out.push(Cause::not_supported(
                restart,
                other,
                &["Always", "OnFailure", "Never"],
            )),
        }
        let dns_path = child(path, "dnsPolicy");
        let dns_policy = str_at(spec, "dnsPolicy");
        match dns_policy {
            "ClusterFirstWithHostNet" | "ClusterFirst" | "Default" | "None" => {}
            "" => self.out.push(Cause::required(dns_path)),
            other => self.out.push(Cause::not_supported(
                dns_path,
                other,
                &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
            )),
        }
        validate_labels(
            &mut self.out,
            obj_at(spec, "nodeSelector"),
            &child(path, "nodeSelector"),
        );
        self.security_context(
            obj_at(spec, "securityContext"),
            &child(path, "securityContext"),
        );
        for (i, s) in arr_at(spec, "imagePullSecrets").iter().enumerate() {
            if let Some(o) = s.as_object() {
                if o.keys().any(|k| k != "name") {
                    self.out.push(invalid_raw(
                        index(&child(path, "imagePullSecrets"), i),
                        s,
                        "only name may be set",
                    ));
                }
            }
        }
        self.dns_config(spec, dns_policy, &child(path, "dnsConfig"));
        for (i, g) in arr_at(spec, "readinessGates").iter().enumerate() {
            let ct = g.get("conditionType").and_then(Value::as_str).unwrap_or("");
            let f = child(&index(&child(path, "readinessGates"), i), "conditionType");
            for msg in qualified_name_errors(ct) {
                self.out.push(Cause::invalid(&f, ct, msg));
            }
        }
        let mut gates = HashSet::new();
        for (i, g) in arr_at(spec, "schedulingGates").iter().enumerate() {
            let name = g.get("name").and_then(Value::as_str).unwrap_or("");
            let f = index(&child(path, "schedulingGates"), i);
            for msg in qualified_name_errors(name) {
                self.out.push(Cause::invalid(&f, name, msg));
            }
            if !gates.insert(name) {
                self.out.push(Cause::duplicate(&f, name));
            }
        }
        for (field, subdomain) in [
            ("serviceAccountName", true),
            ("nodeName", true),
            ("priorityClassName", true),
            ("hostname", false),
            ("subdomain", false),
        ] {
            let value = str_at(spec, field);
            if value.is_empty() {
                continue;
            }
            if subdomain {
                dns_subdomain_causes(&mut self.out, &child(path, field), value);
            } else {
                dns_label_causes(&mut self.out, &child(path, field), value);
            }
        }
        if let Some(rc) = spec.get("runtimeClassName").and_then(Value::as_str) {
            dns_subdomain_causes(&mut self.out, &child(path, "runtimeClassName"), rc);
        }
        if let Some(ads) = int_at(spec, "activeDeadlineSeconds") {
            if !(1..=i64::from(i32::MAX)).contains(&ads) {
                self.out.push(invalid_raw(
                    child(path, "activeDeadlineSeconds"),
                    ads,
                    "must be between 1 and 2147483647, inclusive",
                ));
            }
        }
        validate_tolerations(
            &mut self.out,
            arr_at(spec, "tolerations"),
            &child(path, "tolerations"),
        );
        if let Some(pp) = spec.get("preemptionPolicy").and_then(Value::as_str) {
            let f = child(path, "preemptionPolicy");
            match pp {
                "PreemptLowerPriority" | "Never" => {}
                "" => self.out.push(Cause::required(f)),
                other => self.out.push(Cause::not_supported(
                    f,
                    other,
                    &["PreemptLowerPriority", "Never"],
                )),
            }
        }
        if let Some(overhead) = obj_at(spec, "overhead") {
            self.resource_list(overhead, &child(path, "overhead"));
        }
        if let Some(os) = obj_at(spec, "os") {
            let name = str_at(os, "name");
            let f = child(&child(path, "os"), "name");
            match name {
                "linux" | "windows" => {}
                "" => self.out.push(Cause::required(f)),
                other => self
                    .out
                    .push(Cause::not_supported(f, other, &["linux", "windows"])),
            }
        }
    }

    /// `ValidateVolumes`: returns the names of the volumes that validated.
    fn volumes(&mut self, volumes: &'a [Value], path: &str) -> HashSet<&'a str> {
        let mut names = HashSet::new();
        for (i, vol) in volumes.iter().enumerate() {
            let vol = vol.as_object().unwrap_or_else(|| empty_map());
            let idx = index(path, i);
            let name_path = child(&idx, "name");
            let mut errs = self.volume_source(vol, &idx);
            let name = str_at(vol, "name");
            if name.is_empty() {
                errs.push(Cause::required(&name_path));
            } else {
                dns_label_causes(&mut errs, &name_path, name);
            }
            if names.contains(name) {
                errs.push(Cause::duplicate(&name_path, name));
            }
            if errs.is_empty() {
                names.insert(name);
            } else {
                self.out.extend(errs);
            }
        }
        names
    }

    fn volume_source(&mut self, vol: &Map<String, Value>, path: &str) -> Vec<Cause> {
        let mut out = Vec::new();
        let mut count = 0;
        for source in VOLUME_SOURCES {
            let Some(s) = vol.get(*source).filter(|v| !v.is_null()) else {
                continue;
            };
            let spath = child(path, source);
            if count > 0 {
                out.push(Cause::forbidden(
                    &spath,
                    "may not specify more than 1 volume type",
                ));
                continue;
            }
            count += 1;
            let s = s.as_object().unwrap_or_else(|| empty_map());
            match *source {
                "secret" => {
                    if str_at(s, "secretName").is_empty() {
                        out.push(Cause::required(child(&spath, "secretName")));
                    }
                    file_mode(&mut out, s, &spath);
                    key_to_paths(&mut out, arr_at(s, "items"), &child(&spath, "items"));
                }
                "configMap" => {
                    if str_at(s, "name").is_empty() {
                        out.push(Cause::required(child(&spath, "name")));
                    }
                    file_mode(&mut out, s, &spath);
                    key_to_paths(&mut out, arr_at(s, "items"), &child(&spath, "items"));
                }
                "downwardAPI" | "projected" => file_mode(&mut out, s, &spath),
                "hostPath" => {
                    let p = str_at(s, "path");
                    if p.is_empty() {
                        out.push(Cause::required(child(&spath, "path")));
                    } else {
                        no_backsteps(&mut out, p, &child(&spath, "path"));
                    }
                }
                "persistentVolumeClaim" if str_at(s, "claimName").is_empty() => {
                    out.push(Cause::required(child(&spath, "claimName")));
                }
                "emptyDir"
                    if s.get("sizeLimit")
                        .and_then(quantity_of)
                        .is_some_and(|q| q.is_negative()) =>
                {
                    out.push(Cause::forbidden(
                        child(&spath, "sizeLimit"),
                        "SizeLimit field must be a valid resource quantity",
                    ));
                }
                _ => {}
            }
        }
        if count == 0 {
            out.push(required_with(path, "must specify a volume type"));
        }
        out
    }

    fn containers(&mut self, spec: &'a Map<String, Value>, volumes: &HashSet<&'a str>, path: &str) {
        let containers = arr_at(spec, "containers");
        let cpath = child(path, "containers");
        if containers.is_empty() {
            self.out.push(Cause::required(&cpath));
        }
        let mut names: HashSet<&str> = HashSet::new();
        for (i, c) in containers.iter().enumerate() {
            let c = c.as_object().unwrap_or_else(|| empty_map());
            let idx = index(&cpath, i);
            self.container_common(c, volumes, &idx);
            let name = str_at(c, "name");
            if !names.insert(name) {
                self.out.push(Cause::duplicate(child(&idx, "name"), name));
            }
            self.handlers_and_probes(c, &idx, ContainerKind::Regular);
            if c.get("restartPolicy").is_some_and(|v| !v.is_null()) {
                self.out.push(Cause::forbidden(
                    child(&idx, "restartPolicy"),
                    "may not be set for non-init containers",
                ));
            }
        }
        self.host_port_conflicts(containers.iter(), &cpath, 0);

        let ipath = child(path, "initContainers");
        for (i, c) in arr_at(spec, "initContainers").iter().enumerate() {
            let c = c.as_object().unwrap_or_else(|| empty_map());
            let idx = index(&ipath, i);
            self.container_common(c, volumes, &idx);
            if let Some(rp) = c.get("restartPolicy").filter(|v| !v.is_null()) {
                let rp = scalar_text(rp);
                if rp != "Always" {
                    self.out.push(Cause::not_supported(
                        child(&idx, "restartPolicy"),
                        &rp,
                        &["Always"],
                    ));
                }
            }
            let name = str_at(c, "name");
            if names.contains(name) {
                self.out.push(Cause::duplicate(child(&idx, "name"), name));
            } else if !name.is_empty() {
                names.insert(name);
            }
            // Init containers run one by one, so their host ports are checked alone.
            self.host_port_conflicts(std::iter::once(&Value::Object(c.clone())), &ipath, i);
            self.handlers_and_probes(c, &idx, ContainerKind::Init);
        }
    }

    fn container_common(&mut self, c: &Map<String, Value>, volumes: &HashSet<&str>, path: &str) {
        let name = str_at(c, "name");
        let name_path = child(path, "name");
        if name.is_empty() {
            self.out.push(Cause::required(&name_path));
        } else {
            dns_label_causes(&mut self.out, &name_path, name);
        }
        let image = str_at(c, "image");
        if image.is_empty() {
            self.out.push(Cause::required(child(path, "image")));
        } else if self.owner == SpecOwner::Pod && image.trim() != image {
            self.out.push(Cause::invalid(
                child(path, "image"),
                image,
                "must not have leading or trailing whitespace",
            ));
        }
        let tmp = child(path, "terminationMessagePolicy");
        match str_at(c, "terminationMessagePolicy") {
            "File" | "FallbackToLogsOnError" => {}
            "" => self.out.push(Cause::required(tmp)),
            other => self.out.push(Cause::not_supported(
                tmp,
                other,
                &["File", "FallbackToLogsOnError"],
            )),
        }
        self.ports(arr_at(c, "ports"), &child(path, "ports"));
        self.env(arr_at(c, "env"), &child(path, "env"));
        self.env_from(arr_at(c, "envFrom"), &child(path, "envFrom"));
        self.volume_mounts(
            arr_at(c, "volumeMounts"),
            volumes,
            &child(path, "volumeMounts"),
        );
        let pp = child(path, "imagePullPolicy");
        match str_at(c, "imagePullPolicy") {
            "Always" | "IfNotPresent" | "Never" => {}
            "" => self.out.push(Cause::required(pp)),
            other => self.out.push(Cause::not_supported(
                pp,
                other,
                &["Always", "IfNotPresent", "Never"],
            )),
        }
        self.resources(obj_at(c, "resources"), &child(path, "resources"));
    }

    fn ports(&mut self, ports: &[Value], path: &str) {
        let mut names = HashSet::new();
        for (i, p) in ports.iter().enumerate() {
            let p = p.as_object().unwrap_or_else(|| empty_map());
            let idx = index(path, i);
            let name = str_at(p, "name");
            if !name.is_empty() {
                let errs = port_name_errors(name);
                if !errs.is_empty() {
                    for msg in errs {
                        self.out
                            .push(Cause::invalid(child(&idx, "name"), name, msg));
                    }
                } else if !names.insert(name.to_string()) {
                    self.out.push(Cause::duplicate(child(&idx, "name"), name));
                }
            }
            let cp = int_at(p, "containerPort").unwrap_or(0);
            if cp == 0 {
                self.out.push(Cause::required(child(&idx, "containerPort")));
            } else if !(1..=65535).contains(&cp) {
                self.out.push(invalid_raw(
                    child(&idx, "containerPort"),
                    cp,
                    PORT_RANGE_ERR,
                ));
            }
            let hp = int_at(p, "hostPort").unwrap_or(0);
            if hp != 0 && !(1..=65535).contains(&hp) {
                self.out
                    .push(invalid_raw(child(&idx, "hostPort"), hp, PORT_RANGE_ERR));
            }
            let proto = str_at(p, "protocol");
            match proto {
                "TCP" | "UDP" | "SCTP" => {}
                "" => self.out.push(Cause::required(child(&idx, "protocol"))),
                other => self.out.push(Cause::not_supported(
                    child(&idx, "protocol"),
                    other,
                    &["SCTP", "TCP", "UDP"],
                )),
            }
        }
    }

    fn env(&mut self, env: &[Value], path: &str) {
        for (i, e) in env.iter().enumerate() {
            let e = e.as_object().unwrap_or_else(|| empty_map());
            let idx = index(path, i);
            let name = str_at(e, "name");
            if name.is_empty() {
                self.out.push(Cause::required(child(&idx, "name")));
            } else if !env_name_ok(name) {
                self.out
                    .push(Cause::invalid(child(&idx, "name"), name, ENV_NAME_ERR));
            }
            let Some(vf) = obj_at(e, "valueFrom") else {
                continue;
            };
            let vpath = child(&idx, "valueFrom");
            let mut sources = 0;
            if let Some(fr) = obj_at(vf, "fieldRef") {
                sources += 1;
                self.field_ref(fr, &child(&vpath, "fieldRef"));
            }
            if let Some(rr) = obj_at(vf, "resourceFieldRef") {
                sources += 1;
                let r = str_at(rr, "resource");
                let f = child(&child(&vpath, "resourceFieldRef"), "resource");
                const RESOURCES: [&str; 6] = [
                    "limits.cpu",
                    "limits.ephemeral-storage",
                    "limits.memory",
                    "requests.cpu",
                    "requests.ephemeral-storage",
                    "requests.memory",
                ];
                if r.is_empty() {
                    self.out.push(Cause::required(f));
                } else if !RESOURCES.contains(&r)
                    && !r.starts_with("requests.hugepages-")
                    && !r.starts_with("limits.hugepages-")
                {
                    self.out.push(Cause::not_supported(f, r, &RESOURCES));
                }
            }
            for selector in ["configMapKeyRef", "secretKeyRef"] {
                if let Some(s) = obj_at(vf, selector) {
                    sources += 1;
                    let spath = child(&vpath, selector);
                    dns_subdomain_causes(&mut self.out, &child(&spath, "name"), str_at(s, "name"));
                    let k = str_at(s, "key");
                    if k.is_empty() {
                        self.out.push(Cause::required(child(&spath, "key")));
                    } else if !config_key_ok(k) {
                        self.out
                            .push(Cause::invalid(child(&spath, "key"), k, CONFIG_KEY_ERR));
                    }
                }
            }
            if sources == 0 {
                self.out.push(Cause::invalid(
                    &vpath,
                    "",
                    "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
                ));
            } else if !str_at(e, "value").is_empty() {
                self.out.push(Cause::invalid(
                    &vpath,
                    "",
                    "may not be specified when `value` is not empty",
                ));
            } else if sources > 1 {
                self.out.push(Cause::invalid(
                    &vpath,
                    "",
                    "may not have more than one field specified at a time",
                ));
            }
        }
    }

    fn field_ref(&mut self, fr: &Map<String, Value>, path: &str) {
        const SUPPORTED: [&str; 9] = [
            "metadata.name",
            "metadata.namespace",
            "metadata.uid",
            "spec.nodeName",
            "spec.serviceAccountName",
            "status.hostIP",
            "status.hostIPs",
            "status.podIP",
            "status.podIPs",
        ];
        if str_at(fr, "apiVersion").is_empty() {
            self.out.push(Cause::required(child(path, "apiVersion")));
            return;
        }
        let fp = str_at(fr, "fieldPath");
        if fp.is_empty() {
            self.out.push(Cause::required(child(path, "fieldPath")));
            return;
        }
        if let Some((base, rest)) = fp.split_once('[') {
            let sub = rest
                .strip_suffix(']')
                .map(|s| s.trim_matches('\''))
                .unwrap_or("");
            match base {
                "metadata.annotations" => {
                    for msg in qualified_name_errors(&sub.to_lowercase()) {
                        self.out.push(Cause::invalid(path, sub, msg));
                    }
                }
                "metadata.labels" => {
                    for msg in qualified_name_errors(sub) {
                        self.out.push(Cause::invalid(path, sub, msg));
                    }
                }
                _ => self
                    .out
                    .push(Cause::invalid(path, base, "does not support subscript")),
            }
        } else if !SUPPORTED.contains(&fp) {
            self.out.push(Cause::not_supported(
                child(path, "fieldPath"),
                fp,
                &SUPPORTED,
            ));
        }
    }

    fn env_from(&mut self, env_from: &[Value], path: &str) {
        for (i, e) in env_from.iter().enumerate() {
            let e = e.as_object().unwrap_or_else(|| empty_map());
            let idx = index(path, i);
            let prefix = str_at(e, "prefix");
            if !prefix.is_empty() && !env_name_ok(prefix) {
                self.out
                    .push(Cause::invalid(child(&idx, "prefix"), prefix, ENV_NAME_ERR));
            }
            let mut sources = 0;
            for r in ["configMapRef", "secretRef"] {
                if let Some(src) = obj_at(e, r) {
                    sources += 1;
                    let n = str_at(src, "name");
                    let f = child(&child(&idx, r), "name");
                    if n.is_empty() {
                        self.out.push(Cause::required(f));
                    } else {
                        dns_subdomain_causes(&mut self.out, &f, n);
                    }
                }
            }
            if sources == 0 {
                self.out.push(Cause::invalid(
                    path,
                    "",
                    "must specify one of: `configMapRef` or `secretRef`",
                ));
            } else if sources > 1 {
                self.out.push(Cause::invalid(
                    path,
                    "",
                    "may not have more than one field specified at a time",
                ));
            }
        }
    }

    fn volume_mounts(&mut self, mounts: &[Value], volumes: &HashSet<&str>, path: &str) {
        let mut points = HashSet::new();
        for (i, m) in mounts.iter().enumerate() {
            let m = m.as_object().unwrap_or_else(|| empty_map());
            let idx = index(path, i);
            let name = str_at(m, "name");
            if name.is_empty() {
                self.out.push(Cause::required(child(&idx, "name")));
            }
            if !volumes.contains(name) {
                self.out.push(not_found(child(&idx, "name"), name));
            }
            let mp = str_at(m, "mountPath");
            if mp.is_empty() {
                self.out.push(Cause::required(child(&idx, "mountPath")));
            }
            if !points.insert(mp) {
                self.out.push(Cause::invalid(
                    child(&idx, "mountPath"),
                    mp,
                    "must be unique",
                ));
            }
            let sub = str_at(m, "subPath");
            if !sub.is_empty() {
                // Upstream reports these on the list's path, not the item's.
                local_descending_path(&mut self.out, sub, &child(path, "subPath"));
            }
            let expr = str_at(m, "subPathExpr");
            if !expr.is_empty() {
                if !sub.is_empty() {
                    self.out.push(Cause::invalid(
                        child(&idx, "subPathExpr"),
                        expr,
                        "subPathExpr and subPath are mutually exclusive",
                    ));
                }
                local_descending_path(&mut self.out, expr, &child(path, "subPathExpr"));
            }
        }
    }

    /// `ValidateContainerResourceRequirements`.
    fn resources(&mut self, res: Option<&Map<String, Value>>, path: &str) {
        let Some(res) = res else { return };
        let lim_path = child(path, "limits");
        let req_path = child(path, "requests");
        let limits = obj_or_empty(res, "limits");
        let requests = obj_or_empty(res, "requests");
        let lim: BTreeMap<&String, &Value> = limits.iter().collect();
        for (name, value) in lim {
            let f = key(&lim_path, name);
            container_resource_name(&mut self.out, name, &f);
            resource_quantity(&mut self.out, name, value, &f);
        }
        let req: BTreeMap<&String, &Value> = requests.iter().collect();
        for (name, value) in req {
            let f = key(&req_path, name);
            container_resource_name(&mut self.out, name, &f);
            let Some(q) = resource_quantity(&mut self.out, name, value, &f) else {
                continue;
            };
            match limits.get(name.as_str()).and_then(quantity_of) {
                Some(l) => {
                    let ord = q.compare(&l);
                    if ord != Ordering::Equal && !overcommit_allowed(name) {
                        self.out.push(Cause::invalid(
                            &req_path,
                            &q.canonical(),
                            format!("must be equal to {name} limit of {}", l.canonical()),
                        ));
                    } else if ord == Ordering::Greater {
                        self.out.push(Cause::invalid(
                            &req_path,
                            &q.canonical(),
                            format!(
                                "must be less than or equal to {name} limit of {}",
                                l.canonical()
                            ),
                        ));
                    }
                }
                None if !overcommit_allowed(name) && !limits.contains_key(name.as_str()) => {
                    self.out.push(required_with(
                        &lim_path,
                        "Limit must be set for non overcommitable resources",
                    ));
                }
                None => {}
            }
        }
    }

    fn resource_list(&mut self, list: &Map<String, Value>, path: &str) {
        let sorted: BTreeMap<&String, &Value> = list.iter().collect();
        for (name, value) in sorted {
            resource_quantity(&mut self.out, name, value, &key(path, name));
        }
    }

    fn handlers_and_probes(&mut self, c: &Map<String, Value>, path: &str, kind: ContainerKind) {
        let sidecar = kind == ContainerKind::Init && str_at(c, "restartPolicy") == "Always";
        if kind == ContainerKind::Init && !sidecar {
            for f in [
                "lifecycle",
                "livenessProbe",
                "readinessProbe",
                "startupProbe",
            ] {
                if c.get(f).is_some_and(|v| !v.is_null()) {
                    self.out.push(Cause::forbidden(
                        child(path, f),
                        "may not be set for init containers without restartPolicy=Always",
                    ));
                }
            }
            return;
        }
        if let Some(lc) = obj_at(c, "lifecycle") {
            for hook in ["postStart", "preStop"] {
                if let Some(h) = obj_at(lc, hook) {
                    self.handler(h, &child(&child(path, "lifecycle"), hook), true);
                }
            }
        }
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            let Some(p) = obj_at(c, probe) else { continue };
            let ppath = child(path, probe);
            self.handler(p, &ppath, false);
            for f in [
                "initialDelaySeconds",
                "timeoutSeconds",
                "periodSeconds",
                "successThreshold",
                "failureThreshold",
            ] {
                nonnegative(&mut self.out, &child(&ppath, f), int_at(p, f).unwrap_or(0));
            }
            if let Some(t) = int_at(p, "terminationGracePeriodSeconds") {
                if t <= 0 {
                    self.out.push(invalid_raw(
                        child(&ppath, "terminationGracePeriodSeconds"),
                        t,
                        "must be greater than 0",
                    ));
                }
            }
            let success = int_at(p, "successThreshold").unwrap_or(0);
            match probe {
                "livenessProbe" | "startupProbe" if success != 1 => {
                    self.out.push(invalid_raw(
                        child(&ppath, "successThreshold"),
                        success,
                        "must be 1",
                    ));
                }
                "readinessProbe" => {
                    if let Some(t) = int_at(p, "terminationGracePeriodSeconds") {
                        self.out.push(invalid_raw(
                            child(&ppath, "terminationGracePeriodSeconds"),
                            t,
                            "must not be set for readinessProbes",
                        ));
                    }
                }
                _ => {}
            }
        }
    }

    /// `validateHandler`: exactly one action, each valid.
    fn handler(&mut self, h: &Map<String, Value>, path: &str, lifecycle: bool) {
        let actions: &[&str] = if lifecycle {
            &["exec", "httpGet", "tcpSocket", "sleep"]
        } else {
            &["exec", "httpGet", "tcpSocket", "grpc"]
        };
        let mut count = 0;
        for action in actions {
            let Some(a) = obj_at(h, action) else { continue };
            let apath = child(path, action);
            if count > 0 {
                self.out.push(Cause::forbidden(
                    apath,
                    "may not specify more than 1 handler type",
                ));
                continue;
            }
            count += 1;
            match *action {
                "exec" if arr_at(a, "command").is_empty() => {
                    self.out.push(Cause::required(child(&apath, "command")));
                }
                "httpGet" => {
                    if str_at(a, "path").is_empty() {
                        self.out.push(Cause::required(child(&apath, "path")));
                    }
                    validate_port_num_or_name(&mut self.out, a.get("port"), &child(&apath, "port"));
                    let scheme = str_at(a, "scheme");
                    if scheme != "HTTP" && scheme != "HTTPS" {
                        self.out.push(Cause::not_supported(
                            child(&apath, "scheme"),
                            scheme,
                            &["HTTP", "HTTPS"],
                        ));
                    }
                }
                "tcpSocket" | "grpc" => {
                    validate_port_num_or_name(&mut self.out, a.get("port"), &child(&apath, "port"));
                }
                "sleep" => {
                    let secs = int_at(a, "seconds").unwrap_or(0);
                    if let Some(grace) = self.grace_period {
                        if secs < 0 || secs > grace {
                            self.out.push(invalid_raw(
                                &apath,
                                secs,
                                &format!(
                                    "must be non-negative and less than terminationGracePeriodSeconds ({grace})"
                                ),
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        if count == 0 {
            self.out
                .push(required_with(path, "must specify a handler type"));
        }
    }

    /// Host ports must not collide (protocol/hostIP/port).
    fn host_port_conflicts<'b>(
        &mut self,
        containers: impl Iterator<Item = &'b Value>,
        path: &str,
        first_index: usize,
    ) {
        let mut seen = HashSet::new();
        for (ci, c) in containers.enumerate() {
            let c = c.as_object().unwrap_or_else(|| empty_map());
            for (pi, p) in arr_at(c, "ports").iter().enumerate() {
                let p = p.as_object().unwrap_or_else(|| empty_map());
                let hp = int_at(p, "hostPort").unwrap_or(0);
                if hp == 0 {
                    continue;
                }
                let id = format!("{}/{}/{}", str_at(p, "protocol"), str_at(p, "hostIP"), hp);
                if !seen.insert(id.clone()) {
                    let f = child(
                        &index(&child(&index(path, first_index + ci), "ports"), pi),
                        "hostPort",
                    );
                    self.out.push(Cause::duplicate(f, &id));
                }
            }
        }
    }

    fn host_network_ports(&mut self, spec: &Map<String, Value>, path: &str) {
        if spec.get("hostNetwork").and_then(Value::as_bool) != Some(true) {
            return;
        }
        let cpath = child(path, "containers");
        for (i, c) in arr_at(spec, "containers").iter().enumerate() {
            let c = c.as_object().unwrap_or_else(|| empty_map());
            for (j, p) in arr_at(c, "ports").iter().enumerate() {
                let p = p.as_object().unwrap_or_else(|| empty_map());
                let hp = int_at(p, "hostPort").unwrap_or(0);
                let cp = int_at(p, "containerPort").unwrap_or(0);
                if (self.owner == SpecOwner::Pod || hp != 0) && hp != cp {
                    self.out.push(invalid_raw(
                        child(&index(&child(&index(&cpath, i), "ports"), j), "hostPort"),
                        hp,
                        "must match `containerPort` when `hostNetwork` is true",
                    ));
                }
            }
        }
    }

    fn security_context(&mut self, sc: Option<&Map<String, Value>>, path: &str) {
        let Some(sc) = sc else { return };
        const ID_RANGE: &str = "must be between 0 and 2147483647, inclusive";
        for f in ["fsGroup", "runAsUser", "runAsGroup"] {
            if let Some(id) = int_at(sc, f) {
                if !(0..=i64::from(i32::MAX)).contains(&id) {
                    self.out.push(invalid_raw(child(path, f), id, ID_RANGE));
                }
            }
        }
        for (i, g) in arr_at(sc, "supplementalGroups").iter().enumerate() {
            let id = g.as_i64().unwrap_or(0);
            if !(0..=i64::from(i32::MAX)).contains(&id) {
                self.out.push(invalid_raw(
                    index(&child(path, "supplementalGroups"), i),
                    id,
                    ID_RANGE,
                ));
            }
        }
    }

    fn dns_config(&mut self, spec: &Map<String, Value>, policy: &str, path: &str) {
        let cfg = obj_at(spec, "dnsConfig");
        if policy == "None" {
            match cfg {
                None => {
                    self.out.push(required_with(
                        path,
                        "must provide `dnsConfig` when `dnsPolicy` is None",
                    ));
                    return;
                }
                Some(c) if arr_at(c, "nameservers").is_empty() => {
                    self.out.push(required_with(
                        child(path, "nameservers"),
                        "must provide at least one DNS nameserver when `dnsPolicy` is None",
                    ));
                    return;
                }
                _ => {}
            }
        }
        let Some(cfg) = cfg else { return };
        let ns = arr_at(cfg, "nameservers");
        if ns.len() > 3 {
            self.out.push(invalid_raw(
                child(path, "nameservers"),
                Value::Array(ns.to_vec()),
                "must not have more than 3 nameservers",
            ));
        }
        for (i, n) in ns.iter().enumerate() {
            let n = n.as_str().unwrap_or("");
            if n.parse::<std::net::IpAddr>().is_err() {
                self.out.push(Cause::invalid(
                    index(&child(path, "nameservers"), i),
                    n,
                    "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                ));
            }
        }
        for (i, o) in arr_at(cfg, "options").iter().enumerate() {
            if o.get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
            {
                self.out.push(required_with(
                    index(&child(path, "options"), i),
                    "must not be empty",
                ));
            }
        }
    }
}

fn env_name_ok(name: &str) -> bool {
    name.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'=')
}

fn config_key_ok(k: &str) -> bool {
    k.len() <= 253
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

fn file_mode(out: &mut Vec<Cause>, source: &Map<String, Value>, path: &str) {
    if let Some(mode) = int_at(source, "defaultMode") {
        if !(0..=0o777).contains(&mode) {
            out.push(invalid_raw(child(path, "defaultMode"), mode, FILE_MODE_ERR));
        }
    }
}

fn key_to_paths(out: &mut Vec<Cause>, items: &[Value], path: &str) {
    for (i, item) in items.iter().enumerate() {
        let item = item.as_object().unwrap_or_else(|| empty_map());
        let idx = index(path, i);
        if str_at(item, "key").is_empty() {
            out.push(Cause::required(child(&idx, "key")));
        }
        let p = str_at(item, "path");
        if p.is_empty() {
            out.push(Cause::required(child(&idx, "path")));
        } else {
            local_descending_path(out, p, &child(&idx, "path"));
        }
        if let Some(mode) = int_at(item, "mode") {
            if !(0..=0o777).contains(&mode) {
                out.push(invalid_raw(child(&idx, "mode"), mode, FILE_MODE_ERR));
            }
        }
    }
}

fn local_descending_path(out: &mut Vec<Cause>, target: &str, field: &str) {
    if target.starts_with('/') {
        out.push(Cause::invalid(field, target, "must be a relative path"));
    }
    no_backsteps(out, target, field);
}

fn no_backsteps(out: &mut Vec<Cause>, target: &str, field: &str) {
    if target.split('/').any(|p| p == "..") {
        out.push(Cause::invalid(field, target, "must not contain '..'"));
    }
}

/// Native resources (no domain, or a `kubernetes.io/` one) other than huge pages may be
/// overcommitted; the rest need requests equal to limits.
fn overcommit_allowed(name: &str) -> bool {
    let native = !name.contains('/') || name.contains("kubernetes.io/");
    native && !name.starts_with("hugepages-")
}

fn container_resource_name(out: &mut Vec<Cause>, name: &str, field: &str) {
    for msg in qualified_name_errors(name) {
        out.push(Cause::invalid(field, name, msg));
    }
    if !name.contains('/') {
        let standard = matches!(name, "cpu" | "memory" | "ephemeral-storage")
            || name.starts_with("hugepages-");
        if !standard {
            out.push(Cause::invalid(
                field,
                name,
                "must be a standard resource for containers",
            ));
        }
    }
}

/// Parses and checks one quantity of a resource list; `None` when it is unusable.
fn resource_quantity(
    out: &mut Vec<Cause>,
    name: &str,
    value: &Value,
    field: &str,
) -> Option<Quantity> {
    let Some(q) = quantity_of(value) else {
        out.push(Cause::invalid(
            field,
            &scalar_text(value),
            QUANTITY_FORMAT_ERR,
        ));
        return None;
    };
    if q.is_negative() {
        out.push(Cause::invalid(
            field,
            &q.canonical(),
            "must be greater than or equal to 0",
        ));
    }
    if !overcommit_allowed(name) && !name.starts_with("hugepages-") && !q.is_integer() {
        out.push(Cause::invalid(field, &q.canonical(), "must be an integer"));
    }
    Some(q)
}

/// `ValidateTolerations`.
pub(crate) fn validate_tolerations(out: &mut Vec<Cause>, tolerations: &[Value], path: &str) {
    for (i, t) in tolerations.iter().enumerate() {
        let t = t.as_object().unwrap_or_else(|| empty_map());
        let idx = index(path, i);
        let k = str_at(t, "key");
        let op = str_at(t, "operator");
        let effect = str_at(t, "effect");
        if !k.is_empty() {
            for msg in qualified_name_errors(k) {
                out.push(Cause::invalid(child(&idx, "key"), k, msg));
            }
        }
        if k.is_empty() && op != "Exists" {
            out.push(Cause::invalid(
                child(&idx, "operator"),
                op,
                "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
            ));
        }
        if t.get("tolerationSeconds").is_some_and(|v| !v.is_null()) && effect != "NoExecute" {
            out.push(Cause::invalid(
                child(&idx, "effect"),
                effect,
                "effect must be 'NoExecute' when `tolerationSeconds` is set",
            ));
        }
        let value = str_at(t, "value");
        match op {
            "Equal" | "" => {
                let errs = label_value_errors(value);
                if !errs.is_empty() {
                    out.push(Cause::invalid(
                        child(&idx, "operator"),
                        value,
                        errs.join(";"),
                    ));
                }
            }
            "Exists" => {
                if !value.is_empty() {
                    out.push(Cause::invalid(
                        child(&idx, "operator"),
                        value,
                        "value must be empty when `operator` is 'Exists'",
                    ));
                }
            }
            other => out.push(Cause::not_supported(
                child(&idx, "operator"),
                other,
                &["Equal", "Exists"],
            )),
        }
        if !effect.is_empty() && !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute")
        {
            out.push(Cause::not_supported(
                child(&idx, "effect"),
                effect,
                &["NoSchedule", "PreferNoSchedule", "NoExecute"],
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------
// QoS class.
// ---------------------------------------------------------------------------------------

/// The pod's QoS class (`Guaranteed`, `Burstable` or `BestEffort`), computed from the
/// cpu and memory requests and limits of its containers and init containers as upstream's
/// `ComputePodQOS`.
pub(crate) fn qos_class(spec: &Value) -> &'static str {
    let Some(spec) = spec.as_object() else {
        return "BestEffort";
    };
    let mut requests: BTreeMap<String, Quantity> = BTreeMap::new();
    let mut limits: BTreeMap<String, Quantity> = BTreeMap::new();
    let mut guaranteed = true;
    let all = arr_at(spec, "containers")
        .iter()
        .chain(arr_at(spec, "initContainers"));
    for c in all {
        let res = c.get("resources").and_then(Value::as_object);
        let res = res.unwrap_or_else(|| empty_map());
        accumulate(&mut requests, obj_or_empty(res, "requests"));
        let found = accumulate(&mut limits, obj_or_empty(res, "limits"));
        if !(found.contains("cpu") && found.contains("memory")) {
            guaranteed = false;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return "BestEffort";
    }
    if guaranteed {
        for (name, req) in &requests {
            match limits.get(name) {
                Some(lim) if lim.compare(req) == Ordering::Equal => {}
                _ => {
                    guaranteed = false;
                    break;
                }
            }
        }
    }
    if guaranteed && requests.len() == limits.len() {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Adds the positive cpu/memory quantities of `list` into `into`; returns their names.
fn accumulate(into: &mut BTreeMap<String, Quantity>, list: &Map<String, Value>) -> HashSet<String> {
    let mut found = HashSet::new();
    for name in ["cpu", "memory"] {
        let Some(q) = list.get(name).and_then(quantity_of) else {
            continue;
        };
        if q.is_zero() || q.is_negative() {
            continue;
        }
        found.insert(name.to_string());
        let sum = match into.get(name) {
            Some(prev) => prev.checked_add(&q).unwrap_or(q),
            None => q,
        };
        into.insert(name.to_string(), sum);
    }
    found
}

// ---------------------------------------------------------------------------------------
// Label selectors.
// ---------------------------------------------------------------------------------------

/// One requirement of a `metav1.LabelSelector` once converted into a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Requirement {
    key: String,
    op: SelectorOp,
    values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SelectorOp {
    Equals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// A `metav1.LabelSelector` converted as upstream's `LabelSelectorAsSelector` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Selector {
    /// A missing selector: matches nothing.
    Nothing,
    /// Requirements, all of which must hold (none: matches everything).
    Requirements(Vec<Requirement>),
}

impl Selector {
    /// Converts a JSON `LabelSelector` (or its absence); `Err` when it is not a valid
    /// selector (bad operator, missing values, invalid key or value).
    pub(crate) fn from_json(sel: Option<&Value>) -> Result<Selector, String> {
        let Some(sel) = sel.filter(|v| !v.is_null()) else {
            return Ok(Selector::Nothing);
        };
        let sel = sel.as_object().ok_or("selector is not an object")?;
        let mut reqs = Vec::new();
        let labels = obj_or_empty(sel, "matchLabels");
        for (k, v) in labels {
            let v = scalar_text(v);
            check_requirement(k, SelectorOp::Equals, std::slice::from_ref(&v))?;
            reqs.push(Requirement {
                key: k.clone(),
                op: SelectorOp::Equals,
                values: vec![v],
            });
        }
        for expr in arr_at(sel, "matchExpressions") {
            let expr = expr
                .as_object()
                .ok_or("matchExpressions item is not an object")?;
            let op = match str_at(expr, "operator") {
                "In" => SelectorOp::In,
                "NotIn" => SelectorOp::NotIn,
                "Exists" => SelectorOp::Exists,
                "DoesNotExist" => SelectorOp::DoesNotExist,
                other => return Err(format!("{other:?} is not a valid label selector operator")),
            };
            let values: Vec<String> = arr_at(expr, "values").iter().map(scalar_text).collect();
            let k = str_at(expr, "key").to_string();
            check_requirement(&k, op, &values)?;
            reqs.push(Requirement { key: k, op, values });
        }
        // Upstream sorts requirements by key.
        reqs.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Selector::Requirements(reqs))
    }

    /// Whether a set of labels satisfies the selector.
    pub(crate) fn matches(&self, labels: &Map<String, Value>) -> bool {
        let Selector::Requirements(reqs) = self else {
            return false;
        };
        reqs.iter().all(|r| {
            let have = labels.get(&r.key).map(scalar_text);
            match r.op {
                SelectorOp::Equals | SelectorOp::In => have.is_some_and(|h| r.values.contains(&h)),
                SelectorOp::NotIn => have.is_none_or(|h| !r.values.contains(&h)),
                SelectorOp::Exists => have.is_some(),
                SelectorOp::DoesNotExist => have.is_none(),
            }
        })
    }

    /// Whether the selector selects everything (upstream's `Empty()`).
    pub(crate) fn is_empty(&self) -> bool {
        matches!(self, Selector::Requirements(r) if r.is_empty())
    }

    /// The selector's string form (`app=web,tier in (a,b)`), "" for none or everything.
    pub(crate) fn to_query(&self) -> String {
        let Selector::Requirements(reqs) = self else {
            return String::new();
        };
        let parts: Vec<String> = reqs
            .iter()
            .map(|r| {
                let mut values = r.values.clone();
                values.sort();
                match r.op {
                    SelectorOp::Equals => format!("{}={}", r.key, values.join(",")),
                    SelectorOp::In => format!("{} in ({})", r.key, values.join(",")),
                    SelectorOp::NotIn => format!("{} notin ({})", r.key, values.join(",")),
                    SelectorOp::Exists => r.key.clone(),
                    SelectorOp::DoesNotExist => format!("!{}", r.key),
                }
            })
            .collect();
        parts.join(",")
    }
}

fn check_requirement(k: &str, op: SelectorOp, values: &[String]) -> Result<(), String> {
    if let Some(msg) = qualified_name_errors(k).into_iter().next() {
        return Err(format!("key: Invalid value: {k:?}: {msg}"));
    }
    match op {
        SelectorOp::In | SelectorOp::NotIn if values.is_empty() => {
            return Err(
                "values: Invalid value: []: for 'in', 'notin' operators, values set can't be empty"
                    .into(),
            );
        }
        SelectorOp::Exists | SelectorOp::DoesNotExist if !values.is_empty() => {
            return Err(
                "values: Invalid value: values set must be empty for exists and does not exist"
                    .into(),
            );
        }
        _ => {}
    }
    for v in values {
        if let Some(msg) = label_value_errors(v).into_iter().next() {
            return Err(format!("values[0][{k}]: Invalid value: {v:?}: {msg}"));
        }
    }
    Ok(())
}

/// `metav1.FormatLabelSelector`: the selector's string, `<none>` when empty, `<error>`
/// when invalid (ReplicaSet and DaemonSet tables).
pub(crate) fn format_label_selector(sel: Option<&Value>) -> String {
    match Selector::from_json(sel) {
        Ok(s) => {
            let q = s.to_query();
            if q.is_empty() {
                "<none>".to_string()
            } else {
                q
            }
        }
        Err(_) => "<error>".to_string(),
    }
}

/// `labels.FormatLabels`: `k=v,k2=v2` sorted by key, `<none>` when empty.
pub(crate) fn format_labels(labels: Option<&Value>) -> String {
    let Some(labels) = labels.and_then(Value::as_object).filter(|m| !m.is_empty()) else {
        return "<none>".to_string();
    };
    let sorted: BTreeMap<&String, String> =
        labels.iter().map(|(k, v)| (k, scalar_text(v))).collect();
    sorted
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `ValidateLabelSelector` (unversioned validation of a selector's fields).
pub(crate) fn validate_label_selector(out: &mut Vec<Cause>, sel: &Map<String, Value>, path: &str) {
    validate_labels(out, obj_at(sel, "matchLabels"), &child(path, "matchLabels"));
    let epath = child(path, "matchExpressions");
    for (i, expr) in arr_at(sel, "matchExpressions").iter().enumerate() {
        let expr = expr.as_object().unwrap_or_else(|| empty_map());
        let idx = index(&epath, i);
        let values = arr_at(expr, "values");
        match str_at(expr, "operator") {
            "In" | "NotIn" => {
                if values.is_empty() {
                    out.push(required_with(
                        child(&idx, "values"),
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    ));
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    out.push(Cause::forbidden(
                        child(&idx, "values"),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    ));
                }
            }
            other => out.push(Cause::invalid(
                child(&idx, "operator"),
                other,
                "not a valid selector operator",
            )),
        }
        let k = str_at(expr, "key");
        for msg in qualified_name_errors(k) {
            out.push(Cause::invalid(child(&idx, "key"), k, msg));
        }
        for (j, v) in values.iter().enumerate() {
            let v = scalar_text(v);
            for msg in label_value_errors(&v) {
                out.push(Cause::invalid(index(&child(&idx, "values"), j), &v, msg));
            }
        }
    }
}

/// Go's `%#v` of a `map[string]string`, as validation messages show template labels.
pub(crate) fn go_string_map(m: Option<&Value>) -> String {
    match m.and_then(Value::as_object) {
        None => "map[string]string(nil)".to_string(),
        Some(m) => {
            let sorted: BTreeMap<&String, String> =
                m.iter().map(|(k, v)| (k, scalar_text(v))).collect();
            let items: Vec<String> = sorted.iter().map(|(k, v)| format!("{k:?}:{v:?}")).collect();
            format!("map[string]string{{{}}}", items.join(", "))
        }
    }
}

/// Go's `%#v` of a `*metav1.LabelSelector` as field errors print it.
pub(crate) fn go_label_selector(sel: Option<&Value>) -> String {
    let Some(sel) = sel.and_then(Value::as_object) else {
        return "null".to_string();
    };
    let exprs = arr_at(sel, "matchExpressions");
    let exprs = if sel.get("matchExpressions").is_none_or(Value::is_null) {
        "[]v1.LabelSelectorRequirement(nil)".to_string()
    } else {
        let items: Vec<String> = exprs
            .iter()
            .map(|e| {
                let e = e.as_object().unwrap_or_else(|| empty_map());
                let values: Vec<String> = arr_at(e, "values")
                    .iter()
                    .map(|v| format!("{:?}", scalar_text(v)))
                    .collect();
                format!(
                    "v1.LabelSelectorRequirement{{Key:{:?}, Operator:{:?}, Values:[]string{{{}}}}}",
                    str_at(e, "key"),
                    str_at(e, "operator"),
                    values.join(", ")
                )
            })
            .collect();
        format!("[]v1.LabelSelectorRequirement{{{}}}", items.join(", "))
    };
    format!(
        "v1.LabelSelector{{MatchLabels:{}, MatchExpressions:{}}}",
        go_string_map(sel.get("matchLabels")),
        exprs
    )
}

// ---------------------------------------------------------------------------------------
// What the workload kinds share.
// ---------------------------------------------------------------------------------------

/// `.spec` of an object as a map, created when missing or null.
pub(crate) fn spec_mut(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    let o = obj.as_object_mut()?;
    let spec = o.entry("spec").or_insert_with(|| json!({}));
    if spec.is_null() {
        *spec = json!({});
    }
    spec.as_object_mut()
}

/// The selector checks of a workload spec (Deployment, ReplicaSet): `selector` required,
/// valid and non-empty, matching the template's labels; then the template itself, whose
/// pods must restart `Always` and have no active deadline. `kind` names the kind in the
/// messages upstream words with it.
pub(crate) fn validate_workload_spec(
    spec: &Map<String, Value>,
    kind_for_empty: &str,
    kind_for_deadline: &str,
) -> Vec<Cause> {
    let mut out = Vec::new();
    let sel_value = spec.get("selector").filter(|v| !v.is_null());
    match sel_value.and_then(Value::as_object) {
        None => out.push(Cause::required("spec.selector")),
        Some(sel) => {
            validate_label_selector(&mut out, sel, "spec.selector");
            if obj_or_empty(sel, "matchLabels").is_empty()
                && arr_at(sel, "matchExpressions").is_empty()
            {
                out.push(invalid_raw(
                    "spec.selector",
                    go_label_selector(sel_value),
                    &format!("empty selector is invalid for {kind_for_empty}"),
                ));
            }
        }
    }
    match Selector::from_json(sel_value) {
        Err(_) => out.push(invalid_raw(
            "spec.selector",
            go_label_selector(sel_value),
            "invalid label selector",
        )),
        Ok(selector) => out.extend(validate_template_for_selector(
            spec.get("template"),
            &selector,
            "spec.template",
            kind_for_deadline,
        )),
    }
    out
}

/// A workload's template: it must match the selector, be a valid pod template, and
/// restart as one of `restart_policies` says.
pub(crate) fn validate_selected_template(
    template: Option<&Value>,
    selector: &Selector,
    path: &str,
    restart_policies: &[&str],
) -> Vec<Cause> {
    let mut out = Vec::new();
    let empty = json!({});
    let template = template.filter(|v| !v.is_null()).unwrap_or(&empty);
    let t = template.as_object().unwrap_or_else(|| empty_map());
    let meta = obj_or_empty(t, "metadata");
    let labels = obj_or_empty(meta, "labels");
    if !selector.is_empty() && !selector.matches(labels) {
        out.push(invalid_raw(
            child(&child(path, "metadata"), "labels"),
            go_string_map(meta.get("labels")),
            "`selector` does not match template `labels`",
        ));
    }
    out.extend(validate_pod_template(template, path));
    let spec = obj_or_empty(t, "spec");
    let rp = str_at(spec, "restartPolicy");
    if !restart_policies.contains(&rp) {
        out.push(Cause::not_supported(
            child(&child(path, "spec"), "restartPolicy"),
            rp,
            restart_policies,
        ));
    }
    out
}

/// `ValidatePodTemplateSpecForReplicaSet`: the template must match the selector, and its
/// pods restart `Always` with no active deadline.
pub(crate) fn validate_template_for_selector(
    template: Option<&Value>,
    selector: &Selector,
    path: &str,
    kind_for_deadline: &str,
) -> Vec<Cause> {
    let mut out = validate_selected_template(template, selector, path, &["Always"]);
    let empty = json!({});
    let template = template.filter(|v| !v.is_null()).unwrap_or(&empty);
    let t = template.as_object().unwrap_or_else(|| empty_map());
    let spec = obj_or_empty(t, "spec");
    if spec
        .get("activeDeadlineSeconds")
        .is_some_and(|v| !v.is_null())
    {
        out.push(Cause::forbidden(
            child(&child(path, "spec"), "activeDeadlineSeconds"),
            format!("activeDeadlineSeconds in {kind_for_deadline} is not Supported"),
        ));
    }
    out
}

/// Go's rendering of an `intstr.IntOrString` in messages (its `String()`).
pub(crate) fn int_or_string_text(v: &Value) -> String {
    scalar_text(v)
}

/// The numeric value of an int-or-percent (`25%` → 25), as upstream's
/// `getIntOrPercentValue`.
pub(crate) fn int_or_percent_value(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(Value::String(s)) => s
            .strip_suffix('%')
            .and_then(|p| p.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

/// `ValidatePositiveIntOrPercent` and, when `cap_percent`, `IsNotMoreThan100Percent`.
pub(crate) fn validate_int_or_percent(
    out: &mut Vec<Cause>,
    v: Option<&Value>,
    field: &str,
    cap_percent: bool,
) {
    match v {
        Some(Value::String(s)) => {
            let valid = s
                .strip_suffix('%')
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            if !valid {
                out.push(invalid_raw(
                    field,
                    s,
                    "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
                ));
            } else if cap_percent && int_or_percent_value(v) > 100 {
                out.push(invalid_raw(field, s, "must not be greater than 100%"));
            }
        }
        Some(Value::Number(n)) => nonnegative(out, field, n.as_i64().unwrap_or(0)),
        _ => {}
    }
}

/// The Containers and Images cells of the workload tables (`layoutContainerCells`).
pub(crate) fn container_cells(pod_spec: Option<&Value>) -> (String, String) {
    let containers = pod_spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let names: Vec<&str> = containers
        .iter()
        .map(|c| c.get("name").and_then(Value::as_str).unwrap_or(""))
        .collect();
    let images: Vec<&str> = containers
        .iter()
        .map(|c| c.get("image").and_then(Value::as_str).unwrap_or(""))
        .collect();
    (names.join(","), images.join(","))
}

/// The immutability check of a workload's selector on update.
pub(crate) fn selector_immutable(new: &Value, old: &Value) -> Option<Cause> {
    let n = new.pointer("/spec/selector").filter(|v| !v.is_null());
    let o = old.pointer("/spec/selector").filter(|v| !v.is_null());
    if semantically_equal(n, o) {
        None
    } else {
        Some(invalid_raw(
            "spec.selector",
            go_label_selector(n),
            "field is immutable",
        ))
    }
}

/// Strips what Go's semantic equality ignores (null, "", empty lists and maps) so that
/// two JSON renderings of the same Go value compare equal.
pub(crate) fn normalized(v: &Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::Array(a) => {
            let items: Vec<Value> = a
                .iter()
                .map(|x| normalized(x).unwrap_or(Value::Null))
                .collect();
            (!items.is_empty()).then_some(Value::Array(items))
        }
        Value::Object(m) => {
            let fields: Map<String, Value> = m
                .iter()
                .filter_map(|(k, v)| normalized(v).map(|v| (k.clone(), v)))
                .collect();
            (!fields.is_empty()).then_some(Value::Object(fields))
        }
        other => Some(other.clone()),
    }
}

/// Equality after [`normalized`].
pub(crate) fn semantically_equal(a: Option<&Value>, b: Option<&Value>) -> bool {
    a.and_then(normalized) == b.and_then(normalized)
}

/// The `-o wide` columns every workload kind shares: its template's containers and
/// images, and its selector (`selector` is the kind's own description of it).
pub(crate) fn template_columns(selector: &'static str) -> [Column; 3] {
    [
        Column::wide(
            "Containers",
            "string",
            "Names of each container in the template.",
        ),
        Column::wide(
            "Images",
            "string",
            "Images referenced by each container in the template.",
        ),
        Column::wide("Selector", "string", selector),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(causes: &[Cause]) -> Vec<&str> {
        causes.iter().map(|c| c.field.as_str()).collect()
    }

    #[test]
    fn quantities_canonicalise_like_kubernetes() {
        let cases = [
            ("0.5", "500m"),
            ("1000m", "1"),
            ("1.5Gi", "1536Mi"),
            ("100Mi", "100Mi"),
            ("128974848", "128974848"),
            ("129e6", "129e6"),
            ("1e3", "1e3"),
            ("0", "0"),
            ("512Ki", "512Ki"),
            ("0.5Ki", "512"),
            ("2000", "2k"),
            ("1.5", "1500m"),
            ("100n", "100n"),
        ];
        for (input, want) in cases {
            let q = Quantity::parse(input).unwrap_or_else(|| panic!("{input} parses"));
            assert_eq!(q.canonical(), want, "{input}");
        }
        for bad in ["", "abc", "1.2.3", "1Kb", "--1", "1e"] {
            assert!(Quantity::parse(bad).is_none(), "{bad} is not a quantity");
        }
        let rounded = Quantity::parse("0.0001").map(|q| q.round_up_to(-3).canonical());
        assert_eq!(rounded.as_deref(), Some("1m"));
        let a =
            Quantity::parse("1Gi").map(|q| q.compare(&Quantity::parse("1073741824").unwrap_or(q)));
        assert_eq!(a, Some(Ordering::Equal));
    }

    #[test]
    fn image_pull_policy_follows_the_tag() {
        assert!(image_tag_is_latest("nginx"));
        assert!(image_tag_is_latest("nginx:latest"));
        assert!(image_tag_is_latest("registry:5000/app"));
        assert!(!image_tag_is_latest("nginx:1.27"));
        assert!(!image_tag_is_latest("registry:5000/app:v1"));
        assert!(!image_tag_is_latest("nginx@sha256:abc"));
        assert!(image_tag_is_latest("nginx:latest@sha256:abc"));
    }

    #[test]
    fn volumes_and_probes_get_defaults() {
        let mut spec = json!({
            "containers": [{
                "name": "c", "image": "busybox:1",
                "livenessProbe": {"httpGet": {"port": 80}},
                "env": [{"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "resources": {"limits": {"cpu": "0.5", "memory": "1.5Gi"}}
            }],
            "volumes": [{"name": "a"}, {"name": "b", "configMap": {"name": "cm"}}]
        });
        default_pod_spec(&mut spec, SpecOwner::Template);
        assert_eq!(spec.pointer("/volumes/0/emptyDir"), Some(&json!({})));
        assert_eq!(
            spec.pointer("/volumes/1/configMap/defaultMode"),
            Some(&json!(420))
        );
        let probe = spec.pointer("/containers/0/livenessProbe");
        assert_eq!(
            probe,
            Some(&json!({
                "httpGet": {"port": 80, "path": "/", "scheme": "HTTP"},
                "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3
            }))
        );
        assert_eq!(
            spec.pointer("/containers/0/env/0/valueFrom/fieldRef/apiVersion"),
            Some(&json!("v1"))
        );
        assert_eq!(
            spec.pointer("/containers/0/resources"),
            Some(&json!({"limits": {"cpu": "500m", "memory": "1536Mi"}})),
            "templates keep requests unset and get canonical quantities"
        );
        assert!(
            spec.get("enableServiceLinks").is_none(),
            "only pods get enableServiceLinks"
        );
        let again = spec.clone();
        default_pod_spec(&mut spec, SpecOwner::Template);
        assert_eq!(spec, again, "defaulting is idempotent");
    }

    #[test]
    fn volume_mounts_must_name_a_volume_and_requests_fit_limits() {
        let mut spec = json!({
            "containers": [{
                "name": "c", "image": "i",
                "volumeMounts": [{"name": "nope", "mountPath": "/x"}],
                "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}},
                "env": [{"name": "A=B", "value": "x"}],
                "ports": [{"containerPort": 70000, "protocol": "HTTP"}]
            }],
            "volumes": [{"name": "Bad_Name"}]
        });
        default_pod_spec(&mut spec, SpecOwner::Pod);
        let causes = validate_pod_spec(&spec, "spec", SpecOwner::Pod);
        let f = fields(&causes);
        assert!(f.contains(&"spec.volumes[0].name"), "{causes:?}");
        assert!(
            f.contains(&"spec.containers[0].volumeMounts[0].name"),
            "{causes:?}"
        );
        assert!(
            f.contains(&"spec.containers[0].resources.requests"),
            "{causes:?}"
        );
        assert!(f.contains(&"spec.containers[0].env[0].name"), "{causes:?}");
        assert!(
            f.contains(&"spec.containers[0].ports[0].containerPort"),
            "{causes:?}"
        );
        let mount = causes
            .iter()
            .find(|c| c.field == "spec.containers[0].volumeMounts[0].name")
            .map(|c| c.message.as_str());
        assert_eq!(mount, Some("Not found: \"nope\""));
        let req = causes
            .iter()
            .find(|c| c.field == "spec.containers[0].resources.requests")
            .map(|c| c.message.as_str());
        assert_eq!(
            req,
            Some("Invalid value: \"2\": must be less than or equal to cpu limit of 1")
        );
        let port = causes
            .iter()
            .find(|c| c.field == "spec.containers[0].ports[0].containerPort")
            .map(|c| c.message.as_str());
        assert_eq!(
            port,
            Some("Invalid value: 70000: must be between 1 and 65535, inclusive")
        );
        let proto = causes
            .iter()
            .find(|c| c.field == "spec.containers[0].ports[0].protocol")
            .map(|c| c.message.as_str());
        assert_eq!(
            proto,
            Some("Unsupported value: \"HTTP\": supported values: \"SCTP\", \"TCP\", \"UDP\"")
        );
    }

    #[test]
    fn qos_classes() {
        let spec = |res: Value| json!({"containers": [{"name": "c", "resources": res}]});
        assert_eq!(qos_class(&spec(json!({}))), "BestEffort");
        assert_eq!(
            qos_class(&spec(json!({"requests": {"cpu": "100m"}}))),
            "Burstable"
        );
        assert_eq!(
            qos_class(&spec(json!({
                "requests": {"cpu": "1", "memory": "1Gi"},
                "limits": {"cpu": "1000m", "memory": "1024Mi"}
            }))),
            "Guaranteed"
        );
    }

    #[test]
    fn selectors_match_and_render() {
        let sel = json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]}]
        });
        let s = Selector::from_json(Some(&sel)).unwrap_or(Selector::Nothing);
        assert_eq!(s.to_query(), "app=web,tier in (a,b)");
        let labels = json!({"app": "web", "tier": "a"});
        assert!(s.matches(labels.as_object().unwrap_or_else(|| empty_map())));
        let other = json!({"app": "web"});
        assert!(!s.matches(other.as_object().unwrap_or_else(|| empty_map())));
        assert_eq!(format_label_selector(None), "<none>");
        assert_eq!(
            go_label_selector(Some(&json!({"matchLabels": {"app": "x"}}))),
            "v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"x\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}"
        );
        assert_eq!(format_labels(Some(&json!({"b": "2", "a": "1"}))), "a=1,b=2");
    }

    #[test]
    fn label_name_rules() {
        assert!(qualified_name_errors("app.kubernetes.io/name").is_empty());
        assert!(!qualified_name_errors("-bad").is_empty());
        assert!(!qualified_name_errors("a/b/c").is_empty());
        assert!(label_value_errors("").is_empty());
        assert!(!label_value_errors("a b").is_empty());
        assert_eq!(
            dns_label_errors("a.b"),
            vec!["must not contain dots".to_string()]
        );
    }
}
