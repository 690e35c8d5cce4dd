//! The downward API: pod fields and container resources rendered as strings, shared by
//! `downwardAPI` volumes and `fieldRef` / `resourceFieldRef` environment variables.
//!
//! Renderings follow the kubelet: label and annotation maps as sorted `key="value"`
//! lines, CPU as `ceil(milli / divisor)`, byte quantities as `ceil(value / divisor)`.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Why a downward API value could not be produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownwardError {
    /// The field path is not one the downward API offers.
    #[error("unsupported fieldPath: {0}")]
    UnsupportedField(String),
    /// The resource name is not one the downward API offers.
    #[error("unsupported container resource : {0}")]
    UnsupportedResource(String),
    /// `resourceFieldRef.containerName` names no container of the pod.
    #[error("container {0} not found")]
    ContainerNotFound(String),
    /// A resource quantity or divisor does not parse (or overflows).
    #[error("invalid quantity {0:?}")]
    InvalidQuantity(String),
    /// The divisor is zero, so nothing can be divided by it.
    #[error("divisor {0:?} is zero")]
    ZeroDivisor(String),
}

/// A pod metadata field as the downward API renders it (what both volumes and env
/// accept): `metadata.name|namespace|uid|labels|annotations` and
/// `metadata.labels['k']` / `metadata.annotations['k']`.
pub fn metadata_field(pod: &Pod, path: &str) -> Result<String, DownwardError> {
    let meta = &pod.metadata;
    if let Some((base, key)) = split_subscript(path) {
        let map = match base {
            "metadata.labels" => meta.labels.as_ref(),
            "metadata.annotations" => meta.annotations.as_ref(),
            _ => return Err(DownwardError::UnsupportedField(path.into())),
        };
        return Ok(map.and_then(|m| m.get(key)).cloned().unwrap_or_default());
    }
    match path {
        "metadata.name" => Ok(meta.name.clone().unwrap_or_default()),
        "metadata.namespace" => Ok(meta.namespace.clone().unwrap_or_default()),
        "metadata.uid" => Ok(meta.uid.clone().unwrap_or_default()),
        "metadata.labels" => Ok(format_map(meta.labels.as_ref())),
        "metadata.annotations" => Ok(format_map(meta.annotations.as_ref())),
        _ => Err(DownwardError::UnsupportedField(path.into())),
    }
}

/// Splits `metadata.labels['key']` into `("metadata.labels", "key")`.
fn split_subscript(path: &str) -> Option<(&str, &str)> {
    let inner = path.strip_suffix("']")?;
    let open = inner.find("['")?;
    Some((&inner[..open], &inner[open + 2..]))
}

/// Renders a label/annotation map the kubelet way: sorted `key="value"` lines, values
/// quoted like Go's `%q`, no trailing newline.
pub fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    let Some(map) = map else {
        return String::new();
    };
    map.iter()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Quotes a string as Go's `strconv.Quote` does for the characters that occur in
/// practice: backslash escapes for quotes, backslashes and control characters.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A container resource (`limits.cpu`, `requests.memory`, …) rendered with its divisor.
///
/// `container_name` selects among the pod's containers and init containers; unset limits
/// fall back to the node's `allocatable` (as the kubelet does), unset requests to the
/// limit the spec gives, else zero.
pub fn container_resource(
    pod: &Pod,
    container_name: &str,
    resource: &str,
    divisor: Option<&Quantity>,
    allocatable: &BTreeMap<String, Quantity>,
) -> Result<String, DownwardError> {
    let container = find_container(pod, container_name)
        .ok_or_else(|| DownwardError::ContainerNotFound(container_name.into()))?;
    resource_value(container, resource, divisor, allocatable)
}

/// Looks a container up by name among containers, then init containers.
pub fn find_container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

/// [`container_resource`] for a container already in hand.
pub fn resource_value(
    container: &Container,
    resource: &str,
    divisor: Option<&Quantity>,
    allocatable: &BTreeMap<String, Quantity>,
) -> Result<String, DownwardError> {
    let (kind, name) = resource
        .split_once('.')
        .ok_or_else(|| DownwardError::UnsupportedResource(resource.into()))?;
    let is_cpu = name == "cpu";
    let supported =
        matches!(name, "cpu" | "memory" | "ephemeral-storage") || name.starts_with("hugepages-");
    if !supported || !matches!(kind, "limits" | "requests") {
        return Err(DownwardError::UnsupportedResource(resource.into()));
    }
    let resources = container.resources.as_ref();
    let limit = resources
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get(name));
    let request = resources
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get(name));
    let quantity = if kind == "limits" {
        limit.or_else(|| {
            if name.starts_with("hugepages-") {
                None
            } else {
                allocatable.get(name)
            }
        })
    } else {
        request.or(limit)
    };
    let milli = match quantity {
        Some(q) => {
            parse_quantity_milli(&q.0).ok_or_else(|| DownwardError::InvalidQuantity(q.0.clone()))?
        }
        None => 0,
    };
    let divisor_text = divisor.map(|d| d.0.as_str()).unwrap_or("1");
    let divisor_milli = parse_quantity_milli(divisor_text)
        .ok_or_else(|| DownwardError::InvalidQuantity(divisor_text.into()))?;
    let value = if is_cpu {
        if divisor_milli == 0 {
            return Err(DownwardError::ZeroDivisor(divisor_text.into()));
        }
        ceil_div(milli, divisor_milli)
    } else {
        let divisor_value = ceil_div(divisor_milli, 1000);
        if divisor_value == 0 {
            return Err(DownwardError::ZeroDivisor(divisor_text.into()));
        }
        ceil_div(ceil_div(milli, 1000), divisor_value)
    };
    Ok(value.to_string())
}

/// This machine's CPU count and memory, the downward API's value for a container
/// without limits (the kubelet uses the node's allocatable, which wasmkube nodes report
/// from the same figures). Read once per process.
pub fn node_allocatable() -> &'static BTreeMap<String, Quantity> {
    static ALLOCATABLE: OnceLock<BTreeMap<String, Quantity>> = OnceLock::new();
    ALLOCATABLE.get_or_init(|| {
        let mut facts = BTreeMap::new();
        if let Ok(cpus) = std::thread::available_parallelism() {
            facts.insert("cpu".to_string(), Quantity(cpus.to_string()));
        }
        let mem_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|rest| rest.trim().strip_suffix("kB"))
                    .and_then(|n| n.trim().parse::<u64>().ok())
            });
        if let Some(kib) = mem_kib {
            facts.insert("memory".to_string(), Quantity(format!("{kib}Ki")));
        }
        facts
    })
}

/// Ceiling division of non-negative numbers.
fn ceil_div(a: i128, b: i128) -> i128 {
    (a + b - 1) / b
}

/// Parses a Kubernetes quantity (`100m`, `1.5`, `128Mi`, `1e3`, `2G`) into thousandths
/// of a unit, rounded up as `Quantity.MilliValue()` does. Negative or overflowing
/// quantities give `None`.
pub fn parse_quantity_milli(text: &str) -> Option<i128> {
    let s = text.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    let mut mantissa: i128 = 0;
    for c in int_part.chars().chain(frac_part.chars()) {
        let digit = i128::from(c.to_digit(10)?);
        mantissa = mantissa.checked_mul(10)?.checked_add(digit)?;
    }
    let frac_digits = i32::try_from(frac_part.len()).ok()?;
    let (decimal_exp, binary_exp): (i32, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        exp if exp.starts_with(['e', 'E']) => (exp[1..].parse::<i32>().ok()?, 0),
        _ => return None,
    };
    // milli = mantissa * 2^binary_exp * 10^(decimal_exp + 3 - frac_digits), rounded up.
    let scaled = mantissa.checked_mul(1i128.checked_shl(binary_exp)?)?;
    let exp10 = decimal_exp.checked_add(3)?.checked_sub(frac_digits)?;
    if exp10 >= 0 {
        scaled.checked_mul(10i128.checked_pow(u32::try_from(exp10).ok()?)?)
    } else {
        let Some(denominator) = 10i128.checked_pow(exp10.unsigned_abs()) else {
            // Smaller than anything representable: rounds up to one milli unless zero.
            return Some(i128::from(scaled > 0));
        };
        Some(ceil_div(scaled, denominator))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};
    use kube::api::ObjectMeta;

    fn q(s: &str) -> Quantity {
        Quantity(s.into())
    }

    #[test]
    fn quantities_parse_to_milli_rounding_up() {
        assert_eq!(parse_quantity_milli("1"), Some(1000));
        assert_eq!(parse_quantity_milli("250m"), Some(250));
        assert_eq!(parse_quantity_milli("0.5"), Some(500));
        assert_eq!(parse_quantity_milli("1.2345"), Some(1235));
        assert_eq!(parse_quantity_milli("1n"), Some(1));
        assert_eq!(
            parse_quantity_milli("128Mi"),
            Some(128 * 1024 * 1024 * 1000)
        );
        assert_eq!(parse_quantity_milli("1G"), Some(1_000_000_000_000));
        assert_eq!(parse_quantity_milli("1e3"), Some(1_000_000));
        assert_eq!(parse_quantity_milli("1.5Gi"), Some(1_610_612_736_000));
        assert_eq!(
            parse_quantity_milli("1E"),
            Some(1_000_000_000_000_000_000_000)
        );
        assert_eq!(parse_quantity_milli(""), None);
        assert_eq!(parse_quantity_milli("abc"), None);
        assert_eq!(parse_quantity_milli("-1"), None);
        assert_eq!(parse_quantity_milli("1Zi"), None);
    }

    fn pod_with_resources() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                uid: Some("u-1".into()),
                labels: Some(BTreeMap::from([
                    ("b".into(), "two \"quoted\"".into()),
                    ("a".into(), "one".into()),
                ])),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    resources: Some(ResourceRequirements {
                        limits: Some(BTreeMap::from([
                            ("cpu".into(), q("1500m")),
                            ("memory".into(), q("64Mi")),
                        ])),
                        requests: Some(BTreeMap::from([("cpu".into(), q("250m"))])),
                        ..ResourceRequirements::default()
                    }),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn metadata_fields_render_like_the_kubelet() {
        let pod = pod_with_resources();
        assert_eq!(metadata_field(&pod, "metadata.name").as_deref(), Ok("p"));
        assert_eq!(metadata_field(&pod, "metadata.uid").as_deref(), Ok("u-1"));
        assert_eq!(
            metadata_field(&pod, "metadata.labels").as_deref(),
            Ok("a=\"one\"\nb=\"two \\\"quoted\\\"\"")
        );
        assert_eq!(
            metadata_field(&pod, "metadata.labels['a']").as_deref(),
            Ok("one")
        );
        assert_eq!(
            metadata_field(&pod, "metadata.annotations['x']").as_deref(),
            Ok("")
        );
        assert_eq!(
            metadata_field(&pod, "spec.nodeName"),
            Err(DownwardError::UnsupportedField("spec.nodeName".into()))
        );
    }

    #[test]
    fn resources_use_divisors_and_fallbacks() {
        let pod = pod_with_resources();
        let alloc = BTreeMap::from([
            ("cpu".into(), q("4")),
            ("ephemeral-storage".into(), q("10Gi")),
        ]);
        let get = |r: &str, d: Option<&str>| {
            container_resource(&pod, "app", r, d.map(q).as_ref(), &alloc)
        };
        assert_eq!(get("limits.cpu", None).as_deref(), Ok("2"));
        assert_eq!(get("limits.cpu", Some("1m")).as_deref(), Ok("1500"));
        assert_eq!(get("requests.cpu", Some("1m")).as_deref(), Ok("250"));
        assert_eq!(get("limits.memory", None).as_deref(), Ok("67108864"));
        assert_eq!(get("limits.memory", Some("1Mi")).as_deref(), Ok("64"));
        // requests.memory is unset: it defaults to the limit.
        assert_eq!(get("requests.memory", Some("1Mi")).as_deref(), Ok("64"));
        // limits.ephemeral-storage is unset: node allocatable.
        assert_eq!(
            get("limits.ephemeral-storage", Some("1Gi")).as_deref(),
            Ok("10")
        );
        assert_eq!(get("requests.ephemeral-storage", None).as_deref(), Ok("0"));
        assert!(matches!(
            get("limits.gpu", None),
            Err(DownwardError::UnsupportedResource(_))
        ));
        assert!(matches!(
            get("limits.cpu", Some("0")),
            Err(DownwardError::ZeroDivisor(_))
        ));
        assert!(matches!(
            container_resource(&pod, "nope", "limits.cpu", None, &alloc),
            Err(DownwardError::ContainerNotFound(_))
        ));
    }

    #[test]
    fn node_allocatable_reads_this_machine() {
        let facts = node_allocatable();
        let cpus = facts.get("cpu").and_then(|q| parse_quantity_milli(&q.0));
        assert!(cpus.is_some_and(|c| c >= 1000), "{facts:?}");
        let memory = facts.get("memory").and_then(|q| parse_quantity_milli(&q.0));
        assert!(memory.is_some_and(|m| m > 0), "{facts:?}");
    }
}
