//! Table rendering helpers shared by the kinds: column definitions, ages, and the default
//! Name/Age table for kinds upstream prints no special columns for.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};

/// One `columnDefinitions` entry of a `meta.k8s.io/v1` Table.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    #[serde(rename = "type")]
    pub type_: &'static str,
    pub format: &'static str,
    pub description: &'static str,
    /// 0: always shown; 1: only with `-o wide`.
    pub priority: i32,
}

impl Column {
    /// A column shown by plain `kubectl get`.
    pub const fn new(name: &'static str, type_: &'static str, description: &'static str) -> Self {
        Column {
            name,
            type_,
            format: "",
            description,
            priority: 0,
        }
    }

    /// A column shown only with `-o wide`.
    pub const fn wide(name: &'static str, type_: &'static str, description: &'static str) -> Self {
        Column {
            name,
            type_,
            format: "",
            description,
            priority: 1,
        }
    }

    /// The Name column every table starts with.
    pub const fn name() -> Self {
        Column {
            name: "Name",
            type_: "string",
            format: "name",
            description: "Name must be unique within a namespace.",
            priority: 0,
        }
    }

    /// The Age column.
    pub const fn age() -> Self {
        Column::new(
            "Age",
            "string",
            "CreationTimestamp is a timestamp representing the server time when this object was created.",
        )
    }
}

/// The columns of kinds without their own printer: Name and Age.
pub fn default_columns() -> Vec<Column> {
    vec![Column::name(), Column::age()]
}

/// Cells for [`default_columns`].
pub fn default_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![json!(name_of(obj)), json!(age(obj, now))]
}

/// `metadata.name`, or "".
pub fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The object's age as kubectl prints it, from `metadata.creationTimestamp`.
pub fn age(obj: &Value, now: DateTime<Utc>) -> String {
    timestamp_age(obj.pointer("/metadata/creationTimestamp"), now)
}

/// The string at JSON pointer `pointer`, or "" when absent or not a string.
pub fn str_at<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// The length of the array or object at `pointer` (0 when absent).
pub fn len_at(obj: &Value, pointer: &str) -> usize {
    match obj.pointer(pointer) {
        Some(Value::Array(a)) => a.len(),
        Some(Value::Object(o)) => o.len(),
        _ => 0,
    }
}

/// A label map as `labels.FormatLabels` prints it: `a=1,b=2` sorted by key, or
/// `<none>`.
pub fn format_labels(map: Option<&Value>) -> String {
    let mut pairs: Vec<String> = map
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    if pairs.is_empty() {
        return "<none>".to_string();
    }
    pairs.sort();
    pairs.join(",")
}

/// A structured `metav1.LabelSelector` as `metav1.FormatLabelSelector` prints it:
/// `app=web,tier in (a,b)`, `<none>` when it selects everything or is missing, and
/// `<error>` when it is invalid.
pub fn format_label_selector(selector: Option<&Value>) -> String {
    let sel = selector.unwrap_or(&Value::Null);
    match super::selectors::LabelSelector::try_from_label_selector_json(sel) {
        Ok(s) => {
            let text = s.to_string();
            if text.is_empty() {
                "<none>".to_string()
            } else {
                text
            }
        }
        Err(_) => "<error>".to_string(),
    }
}

/// The age of an RFC 3339 timestamp value, or `<unknown>`.
pub fn timestamp_age(ts: Option<&Value>, now: DateTime<Utc>) -> String {
    match ts
        .and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
    {
        Some(t) => human_duration(now.signed_duration_since(t.with_timezone(&Utc))),
        None => "<unknown>".to_string(),
    }
}

/// Formats a duration the way Kubernetes' `duration.HumanDuration` does: `45s`, `3m2s`,
/// `10m`, `5h3m`, `2d3h`, `45d`, `2y30d`.
pub fn human_duration(d: chrono::TimeDelta) -> String {
    let secs = d.num_seconds();
    if secs < -1 {
        return "<invalid>".to_string();
    }
    let secs = secs.max(0);
    if secs < 60 * 2 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{}h", hours / 24, h)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let d = (hours / 24) % 365;
        return if d == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{}d", hours / 24 / 365, d)
        };
    }
    format!("{}y", hours / 24 / 365)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    #[test]
    fn label_formatting() {
        use serde_json::json;
        assert_eq!(format_labels(None), "<none>");
        assert_eq!(format_labels(Some(&json!({}))), "<none>");
        assert_eq!(format_labels(Some(&json!({"b": "2", "a": "1"}))), "a=1,b=2");
        assert_eq!(format_label_selector(None), "<none>");
        assert_eq!(format_label_selector(Some(&json!({}))), "<none>");
        assert_eq!(
            format_label_selector(Some(&json!({
                "matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["b", "a"]}]
            }))),
            "app=web,env notin (a,b)"
        );
        assert_eq!(
            format_label_selector(Some(&json!({"matchLabels": {"a": "b c"}}))),
            "<error>"
        );
    }

    #[test]
    fn human_durations_match_kubectl() {
        let cases = [
            (5, "5s"),
            (119, "119s"),
            (120, "2m"),
            (182, "3m2s"),
            (600, "10m"),
            (3 * 3600 + 5 * 60, "3h5m"),
            (8 * 3600, "8h"),
            (50 * 3600, "2d2h"),
            (10 * 86400, "10d"),
            (800 * 86400, "2y70d"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(TimeDelta::seconds(secs)), want, "{secs}s");
        }
    }
}
