//! Validation helpers: field causes and the name rules Kubernetes applies.

use serde::Serialize;
use serde_json::Value;

/// One reason an object is invalid, reported as a `StatusCause` of a 422 Invalid Status.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueNotSupported`,
    /// `FieldValueForbidden`, `FieldValueDuplicate`, `FieldValueTooLong`.
    pub reason: &'static str,
    /// A human-readable message, as Kubernetes words it:
    /// `Invalid value: "Foo": a lowercase RFC 1123 subdomain must consist of …`.
    pub message: String,
    /// The field path: `metadata.name`, `spec.containers[0].image`.
    pub field: String,
}

impl Cause {
    /// A field whose value is wrong.
    pub fn invalid(field: impl Into<String>, value: &str, detail: impl AsRef<str>) -> Self {
        Cause {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {:?}: {}", value, detail.as_ref()),
            field: field.into(),
        }
    }

    /// A number field whose value is wrong (printed bare, as Kubernetes prints numbers).
    pub fn invalid_int(field: impl Into<String>, value: i64, detail: impl AsRef<str>) -> Self {
        Cause {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {value}: {}", detail.as_ref()),
            field: field.into(),
        }
    }

    /// A required field that is missing or empty.
    pub fn required(field: impl Into<String>) -> Self {
        Cause {
            reason: "FieldValueRequired",
            message: "Required value".to_string(),
            field: field.into(),
        }
    }

    /// A value outside the supported set.
    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Cause {
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {:?}: supported values: {}",
                value,
                list.join(", ")
            ),
            field: field.into(),
        }
    }

    /// A field that may not be set or changed.
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Cause {
            reason: "FieldValueForbidden",
            message: format!("Forbidden: {}", detail.into()),
            field: field.into(),
        }
    }

    /// A value that repeats one given earlier in the same list.
    pub fn duplicate(field: impl Into<String>, value: &str) -> Self {
        Cause {
            reason: "FieldValueDuplicate",
            message: format!("Duplicate value: {value:?}"),
            field: field.into(),
        }
    }

    /// A value (or a collection of values) larger than `max` bytes.
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        Cause {
            reason: "FieldValueTooLong",
            message: format!("Too long: may not be more than {max} bytes"),
            field: field.into(),
        }
    }
}

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Checks an RFC 1123 label (namespaces, services): `None` when valid.
pub fn dns1123_label(name: &str) -> Option<String> {
    if name.len() > 63 {
        return Some("must be no more than 63 characters".to_string());
    }
    if is_label(name) {
        None
    } else {
        Some(DNS1123_LABEL_MSG.to_string())
    }
}

/// Checks an RFC 1123 subdomain (most object names): `None` when valid.
pub fn dns1123_subdomain(name: &str) -> Option<String> {
    if name.len() > 253 {
        return Some("must be no more than 253 characters".to_string());
    }
    if !name.is_empty() && name.split('.').all(is_label) {
        None
    } else {
        Some(DNS1123_SUBDOMAIN_MSG.to_string())
    }
}

/// Longest label value, and longest name part of a qualified name (label and annotation
/// keys).
pub const QUALIFIED_NAME_MAX_LEN: usize = 63;

/// Upper bound on the summed size of an object's annotation keys and values.
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

/// Upper bound on the summed size of a ConfigMap's or Secret's data.
pub const MAX_DATA_SIZE: usize = 1024 * 1024;

const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_ERR: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_ERR: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const CONFIG_KEY_FMT: &str = "[-._a-zA-Z0-9]+";
const CONFIG_KEY_ERR: &str =
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.'";

/// Builds a message the way apimachinery's `RegexError` does, examples included.
fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    let mut out = msg.to_string();
    if !examples.is_empty() {
        let quoted: Vec<String> = examples.iter().map(|e| format!("'{e}'")).collect();
        out.push_str(&format!(" (e.g. {}, ", quoted.join(",  or ")));
    } else {
        out.push_str(" (");
    }
    out.push_str(&format!("regex used for validation is '{fmt}')"));
    out
}

fn max_len_error(max: usize) -> String {
    format!("must be no more than {max} characters")
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, without the length limit.
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// Checks a qualified name (`[prefix/]name`, as label and annotation keys are): the
/// problems found, empty when valid. Messages as Kubernetes words them.
pub fn qualified_name(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else if let Some(msg) = dns1123_subdomain(prefix) {
                errs.push(format!("prefix part {msg}"));
            }
            *name
        }
        _ => {
            return vec![format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(
                    QUALIFIED_NAME_ERR,
                    QUALIFIED_NAME_FMT,
                    &["MyName", "my.name", "123-abc"]
                )
            )]
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > QUALIFIED_NAME_MAX_LEN {
        errs.push(format!(
            "name part {}",
            max_len_error(QUALIFIED_NAME_MAX_LEN)
        ));
    }
    if !is_qualified_name_part(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_ERR,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

/// Checks a label value (may be empty): the problems found, empty when valid.
pub fn label_value(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > QUALIFIED_NAME_MAX_LEN {
        errs.push(max_len_error(QUALIFIED_NAME_MAX_LEN));
    }
    if !value.is_empty() && !is_qualified_name_part(value) {
        errs.push(regex_error(
            LABEL_VALUE_ERR,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

/// Checks a ConfigMap or Secret data key: the problems found, empty when valid.
pub fn config_map_key(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 253 {
        errs.push(max_len_error(253));
    }
    let charset_ok = !value.is_empty()
        && value
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if !charset_ok {
        errs.push(regex_error(
            CONFIG_KEY_ERR,
            CONFIG_KEY_FMT,
            &["key.name", "KEY_NAME", "key-name"],
        ));
    }
    if value == "." {
        errs.push("must not be '.'".to_string());
    } else if value == ".." {
        errs.push("must not be '..'".to_string());
    } else if value.starts_with("..") {
        errs.push("must not start with '..'".to_string());
    }
    errs
}

/// Checks a port number (1–65535): `None` when valid.
pub fn port_number(port: i64) -> Option<String> {
    if (1..=65535).contains(&port) {
        None
    } else {
        Some("must be between 1 and 65535, inclusive".to_string())
    }
}

/// Checks a named port (an IANA service name such as `http`): the problems found.
pub fn port_name(name: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if name.len() > 15 {
        errs.push(max_len_error(15));
    }
    let charset_ok = !name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    if !charset_ok {
        errs.push(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".to_string(),
        );
    } else if !name.bytes().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".to_string());
    }
    if name.contains("--") {
        errs.push("must not contain consecutive hyphens".to_string());
    }
    if name.starts_with('-') || name.ends_with('-') {
        errs.push("must not begin or end with a hyphen".to_string());
    }
    errs
}

/// Checks an IP address (v4 or v6): `None` when valid.
pub fn ip_address(value: &str) -> Option<String> {
    if value.parse::<std::net::IpAddr>().is_ok() {
        None
    } else {
        Some("must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)".to_string())
    }
}

/// Checks a name that only has to be usable as a URL path segment (events): `None` when
/// valid.
pub fn path_segment_name(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("name or generateName is required".to_string());
    }
    for bad in [".", ".."] {
        if name == bad {
            return Some(format!("may not be '{bad}'"));
        }
    }
    let errs: Vec<String> = ["/", "%"]
        .iter()
        .filter(|c| name.contains(*c))
        .map(|c| format!("may not contain '{c}'"))
        .collect();
    if errs.is_empty() {
        None
    } else {
        Some(errs.join("; "))
    }
}

/// Validates a label map (`metadata.labels`, a service's `spec.selector`, a pod's
/// `nodeSelector`): every key a qualified name, every value a label value. One cause per
/// problem, all at `path`, as Kubernetes reports them.
pub fn validate_labels(labels: Option<&Value>, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(map) = labels.and_then(Value::as_object) else {
        return causes;
    };
    for (k, v) in map {
        for msg in qualified_name(k) {
            causes.push(Cause::invalid(path, k, msg));
        }
        if let Some(v) = v.as_str() {
            for msg in label_value(v) {
                causes.push(Cause::invalid(path, v, msg));
            }
        }
    }
    causes
}

/// Validates an annotation map: keys are qualified names (compared in lower case, as
/// Kubernetes does) and the whole map stays under [`TOTAL_ANNOTATION_SIZE_LIMIT`].
pub fn validate_annotations(annotations: Option<&Value>, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(map) = annotations.and_then(Value::as_object) else {
        return causes;
    };
    let mut total = 0usize;
    for (k, v) in map {
        for msg in qualified_name(&k.to_lowercase()) {
            causes.push(Cause::invalid(path, k, msg));
        }
        total += k.len() + v.as_str().map_or(0, str::len);
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT {
        causes.push(Cause::too_long(path, TOTAL_ANNOTATION_SIZE_LIMIT));
    }
    causes
}

/// The metadata checks every kind shares beyond the name: `metadata.labels` and
/// `metadata.annotations`. The API server calls it for every create and update.
pub fn validate_metadata(obj: &Value) -> Vec<Cause> {
    let mut causes = validate_labels(obj.pointer("/metadata/labels"), "metadata.labels");
    causes.extend(validate_annotations(
        obj.pointer("/metadata/annotations"),
        "metadata.annotations",
    ));
    causes
}

/// A `field is immutable` cause when the value at JSON pointer `pointer` differs between
/// `new` and `old` (absent counts as null).
pub fn immutable(field: &str, pointer: &str, new: &Value, old: &Value) -> Option<Cause> {
    let n = new.pointer(pointer).unwrap_or(&Value::Null);
    let o = old.pointer(pointer).unwrap_or(&Value::Null);
    if n == o {
        return None;
    }
    let shown = match n {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    Some(Cause::invalid(field, &shown, "field is immutable"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(dns1123_subdomain("web-1.example").is_none());
        assert!(dns1123_subdomain("Web").is_some());
        assert!(dns1123_subdomain("-a").is_some());
        assert!(dns1123_subdomain("").is_some());
        assert!(dns1123_label("a.b").is_some());
        assert!(dns1123_label("kube-system").is_none());
    }

    #[test]
    fn qualified_names() {
        assert!(qualified_name("app").is_empty());
        assert!(qualified_name("app.kubernetes.io/name").is_empty());
        assert!(qualified_name("My_Name.1").is_empty());
        assert_eq!(
            qualified_name("-bad"),
            vec!["name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"]
        );
        assert_eq!(
            qualified_name("/x"),
            vec!["prefix part must be non-empty".to_string()]
        );
        assert_eq!(qualified_name("a/").len(), 2);
        assert!(qualified_name("Example.com/x")[0]
            .starts_with("prefix part a lowercase RFC 1123 subdomain"));
        assert!(qualified_name("a/b/c")[0].starts_with("a qualified name must consist of"));
        assert_eq!(
            qualified_name(&"x".repeat(64)),
            vec!["name part must be no more than 63 characters".to_string()]
        );
    }

    #[test]
    fn label_values() {
        assert!(label_value("").is_empty());
        assert!(label_value("v1.2_beta-3").is_empty());
        assert_eq!(label_value("a b").len(), 1);
        assert!(label_value("a b")[0].starts_with("a valid label must be an empty string"));
        assert_eq!(
            label_value(&"v".repeat(64)),
            vec!["must be no more than 63 characters".to_string()]
        );
    }

    #[test]
    fn metadata_causes() {
        use serde_json::json;
        let obj = json!({"metadata": {
            "labels": {"ok": "yes", "bad key": "v", "k": "bad value"},
            "annotations": {"Example.COM/Note": "fine", "not valid/a/b": "x"}
        }});
        let causes = validate_metadata(&obj);
        let summary: Vec<(&str, &str)> = causes
            .iter()
            .map(|c| (c.field.as_str(), c.reason))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("metadata.labels", "FieldValueInvalid"),
                ("metadata.labels", "FieldValueInvalid"),
                ("metadata.annotations", "FieldValueInvalid"),
            ],
            "{causes:#?}"
        );
        assert!(causes[0]
            .message
            .starts_with("Invalid value: \"bad key\": name part"));
        assert!(causes[1]
            .message
            .starts_with("Invalid value: \"bad value\": a valid label"));
        let big =
            json!({"metadata": {"annotations": {"a": "x".repeat(TOTAL_ANNOTATION_SIZE_LIMIT)}}});
        let causes = validate_metadata(&big);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].reason, "FieldValueTooLong");
        assert!(validate_metadata(&json!({"metadata": {"name": "x"}})).is_empty());
    }

    #[test]
    fn keys_ports_ips_and_segments() {
        assert!(config_map_key("app.properties").is_empty());
        assert!(config_map_key("KEY_1-x").is_empty());
        assert_eq!(config_map_key(".").len(), 1);
        assert_eq!(
            config_map_key("..a"),
            vec!["must not start with '..'".to_string()]
        );
        assert_eq!(config_map_key("a/b").len(), 1);
        assert_eq!(config_map_key("").len(), 1);
        assert!(port_number(1).is_none() && port_number(65535).is_none());
        assert!(port_number(0).is_some() && port_number(65536).is_some());
        assert!(port_name("http").is_empty());
        assert_eq!(
            port_name("8080"),
            vec!["must contain at least one letter (a-z)".to_string()]
        );
        assert_eq!(
            port_name("a--b"),
            vec!["must not contain consecutive hyphens".to_string()]
        );
        assert_eq!(port_name("-ab").len(), 1);
        assert_eq!(port_name("averyveryverylongname").len(), 1);
        assert!(ip_address("10.0.0.1").is_none() && ip_address("fd00::1").is_none());
        assert!(ip_address("10.0.0").is_some());
        assert!(path_segment_name("a.b_C:1").is_none());
        assert_eq!(
            path_segment_name("a/b%").as_deref(),
            Some("may not contain '/'; may not contain '%'")
        );
        assert_eq!(path_segment_name(".").as_deref(), Some("may not be '.'"));
    }

    #[test]
    fn immutable_fields() {
        use serde_json::json;
        let old = json!({"spec": {"x": "a"}});
        assert!(immutable("spec.x", "/spec/x", &old, &old).is_none());
        let c = immutable("spec.x", "/spec/x", &json!({"spec": {"x": "b"}}), &old);
        assert_eq!(
            c.map(|c| c.message).as_deref(),
            Some("Invalid value: \"b\": field is immutable")
        );
        let c = immutable("spec.x", "/spec/x", &json!({}), &old);
        assert_eq!(
            c.map(|c| c.message).as_deref(),
            Some("Invalid value: \"\": field is immutable")
        );
    }
}
