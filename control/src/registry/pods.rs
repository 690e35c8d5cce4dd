//! Pod: the Pod strategy.
//!
//! Defaulting and validation of the spec live in [`super::podspec`]; this module adds
//! what is pod-only: the Pending status and QoS class set on create, the narrow set of
//! spec fields an update may change, the field selectors kubelets and kubectl use, and
//! the `kubectl get pods` columns with kubectl's STATUS and RESTARTS logic.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::podspec::{
    self, arr_at, child, index, invalid_raw, str_at, validate_tolerations, SpecOwner,
};
use super::table::{self, Column};
use super::validation::Cause;
use super::{decode_as, Projection, ResourceDef, Strategy, Subresource};

struct PodStrategy;

/// The spec fields an update may change, in upstream's wording.
const UPDATABLE_FIELDS: &str = "`spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

impl Strategy for PodStrategy {
    fn decode(&self, obj: &Value) -> Result<Value, String> {
        decode_as::<k8s_openapi::api::core::v1::Pod>(obj)
    }

    fn default(&self, obj: &mut Value) {
        let Some(o) = obj.as_object_mut() else { return };
        let spec = o.entry("spec").or_insert_with(|| json!({}));
        if spec.is_null() {
            *spec = json!({});
        }
        podspec::default_pod_spec(spec, SpecOwner::Pod);
        if let Some(status) = o.get_mut("status").and_then(Value::as_object_mut) {
            sync_ips(status, "podIP", "podIPs");
            sync_ips(status, "hostIP", "hostIPs");
        }
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        let Some(o) = obj.as_object_mut() else { return };
        let empty = json!({});
        let spec = o.get("spec").unwrap_or(&empty);
        let mut status = json!({"phase": "Pending", "qosClass": podspec::qos_class(spec)});
        let gated = spec
            .get("schedulingGates")
            .and_then(Value::as_array)
            .is_some_and(|g| !g.is_empty());
        if gated {
            status["conditions"] = json!([{
                "type": "PodScheduled",
                "status": "False",
                "reason": "SchedulingGated",
                "message": "Scheduling is blocked due to non-empty scheduling gates",
            }]);
        }
        o.insert("status".into(), status);
    }

    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut out = validate_pod(obj);
        let empty = Map::new();
        let spec = obj.get("spec").and_then(Value::as_object).unwrap_or(&empty);
        if !arr_at(spec, "ephemeralContainers").is_empty() {
            out.push(Cause::forbidden(
                "spec.ephemeralContainers",
                "cannot be set on create",
            ));
        }
        if !str_at(spec, "nodeName").is_empty() && !arr_at(spec, "schedulingGates").is_empty() {
            out.push(Cause::forbidden(
                "spec.nodeName",
                "cannot be set until all schedulingGates have been cleared",
            ));
        }
        out
    }

    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let mut out = validate_pod(new);
        out.extend(validate_spec_update(new, old));
        dedup(out)
    }

    fn tracks_generation(&self) -> bool {
        // Since 1.33 the API server keeps a pod's metadata.generation (not feature gated,
        // KEP-5067); it changes with the spec like any other kind's.
        true
    }

    fn field_value(&self, obj: &Value, field: &str) -> Option<String> {
        let text = |ptr: &str| {
            obj.pointer(ptr)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        match field {
            "spec.nodeName" => Some(text("/spec/nodeName")),
            "spec.restartPolicy" => Some(text("/spec/restartPolicy")),
            "spec.schedulerName" => Some(text("/spec/schedulerName")),
            "spec.serviceAccountName" => Some(text("/spec/serviceAccountName")),
            "spec.hostNetwork" => Some(
                obj.pointer("/spec/hostNetwork")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                    .to_string(),
            ),
            "status.phase" => Some(text("/status/phase")),
            "status.podIP" => Some(pod_ip(obj).to_string()),
            "status.nominatedNodeName" => Some(text("/status/nominatedNodeName")),
            _ => None,
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            Column::name(),
            Column::new(
                "Ready",
                "string",
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            Column::new(
                "Status",
                "string",
                "The aggregate status of the containers in this pod.",
            ),
            Column::new(
                "Restarts",
                "string",
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            Column::age(),
            Column::wide(
                "IP",
                "string",
                "podIP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
            ),
            Column::wide(
                "Node",
                "string",
                "NodeName indicates in which node this pod is scheduled. If empty, this pod is a candidate for scheduling by the scheduler defined in schedulerName.",
            ),
            Column::wide(
                "Nominated Node",
                "string",
                "nominatedNodeName is set only when this pod preempts other pods on the node, but it cannot be scheduled right away as preemption victims receive their graceful termination periods.",
            ),
            Column::wide(
                "Readiness Gates",
                "string",
                "If specified, all readiness gates will be evaluated for pod readiness.",
            ),
        ]
    }

    fn selector_fields(&self) -> &'static Projection {
        &SELECTOR_FIELDS
    }

    fn cell_fields(&self) -> &'static Projection {
        &CELL_FIELDS
    }

    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        let s = pod_summary(obj, now);
        let or_none = |v: &str| {
            if v.is_empty() {
                "<none>".to_string()
            } else {
                v.to_string()
            }
        };
        vec![
            json!(table::name_of(obj)),
            json!(s.ready),
            json!(s.status),
            json!(s.restarts),
            json!(table::age(obj, now)),
            json!(or_none(pod_ip(obj))),
            json!(or_none(
                obj.pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .unwrap_or("")
            )),
            json!(or_none(
                obj.pointer("/status/nominatedNodeName")
                    .and_then(Value::as_str)
                    .unwrap_or("")
            )),
            json!(readiness_gates(obj)),
        ]
    }
}

/// What selectors read of a pod: [`PodStrategy::field_value`]'s fields, and the name,
/// namespace and labels.
static SELECTOR_FIELDS: Projection = Projection::Keys(&[
    (
        "metadata",
        Projection::Keys(&[
            ("name", Projection::All),
            ("namespace", Projection::All),
            ("labels", Projection::All),
        ]),
    ),
    (
        "spec",
        Projection::Keys(&[
            ("nodeName", Projection::All),
            ("restartPolicy", Projection::All),
            ("schedulerName", Projection::All),
            ("serviceAccountName", Projection::All),
            ("hostNetwork", Projection::All),
        ]),
    ),
    (
        "status",
        Projection::Keys(&[
            ("phase", Projection::All),
            ("podIP", Projection::All),
            ("podIPs", Projection::All),
            ("nominatedNodeName", Projection::All),
        ]),
    ),
]);

/// What [`PodStrategy::cells`] reads (through `pod_summary`, `pod_ip`, `readiness_gates`).
static CELL_FIELDS: Projection = Projection::Keys(&[
    (
        "metadata",
        Projection::Keys(&[
            ("name", Projection::All),
            ("creationTimestamp", Projection::All),
            ("deletionTimestamp", Projection::All),
        ]),
    ),
    (
        "spec",
        Projection::Keys(&[
            ("containers", Projection::Keys(&[("name", Projection::All)])),
            (
                "initContainers",
                Projection::Keys(&[
                    ("name", Projection::All),
                    ("restartPolicy", Projection::All),
                ]),
            ),
            ("nodeName", Projection::All),
            ("readinessGates", Projection::All),
        ]),
    ),
    ("status", Projection::All),
]);

pub(super) fn def() -> ResourceDef {
    ResourceDef {
        group: "",
        version: "v1",
        kind: "Pod",
        plural: "pods",
        singular: "pod",
        namespaced: true,
        short_names: &["po"],
        categories: &["all"],
        subresources: &[
            Subresource::Status,
            Subresource::Binding,
            Subresource::Log,
            Subresource::Exec,
            Subresource::PortForward,
        ],
        strategy: Box::new(PodStrategy),
    }
}

/// The v1 round trip keeps `podIP` and `podIPs[0].ip` (and the host pair) in step.
fn sync_ips(status: &mut Map<String, Value>, single: &str, plural: &str) {
    let first = status
        .get(plural)
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|e| e.get("ip"))
        .and_then(Value::as_str)
        .map(str::to_string);
    match first {
        Some(ip) => {
            status.insert(single.into(), json!(ip));
        }
        None => {
            let ip = str_at(status, single).to_string();
            if !ip.is_empty() {
                status.insert(plural.into(), json!([{ "ip": ip }]));
            }
        }
    }
}

/// The pod's primary IP: `status.podIPs[0].ip`, else `status.podIP`.
fn pod_ip(pod: &Value) -> &str {
    pod.pointer("/status/podIPs/0/ip")
        .and_then(Value::as_str)
        .or_else(|| pod.pointer("/status/podIP").and_then(Value::as_str))
        .unwrap_or("")
}

/// Validation shared by create and update: the pod spec, pod-only rules included.
fn validate_pod(obj: &Value) -> Vec<Cause> {
    let empty = json!({});
    let spec = obj.get("spec").filter(|v| !v.is_null()).unwrap_or(&empty);
    let mut out = podspec::validate_pod_spec(spec, "spec", SpecOwner::Pod);
    let empty_map = Map::new();
    let spec = spec.as_object().unwrap_or(&empty_map);
    if str_at(spec, "serviceAccountName").is_empty() {
        for (vi, vol) in arr_at(spec, "volumes").iter().enumerate() {
            let Some(proj) = vol.get("projected").and_then(Value::as_object) else {
                continue;
            };
            for (si, src) in arr_at(proj, "sources").iter().enumerate() {
                if src.get("serviceAccountToken").is_some_and(|v| !v.is_null()) {
                    out.push(Cause::forbidden(
                        format!("spec.volumes[{vi}].projected.sources[{si}].serviceAccountToken"),
                        "must not be specified when serviceAccountName is not set",
                    ));
                }
            }
        }
    }
    out
}

/// `ValidatePodUpdate`'s spec rules: only images, a shrinking active deadline, added
/// tolerations, removed scheduling gates and a negative grace period set to 1 may change.
fn validate_spec_update(new: &Value, old: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let new_spec = new
        .get("spec")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let old_spec = old
        .get("spec")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();

    for list in ["containers", "initContainers"] {
        let (n, o) = (arr_at(&new_spec, list), arr_at(&old_spec, list));
        let path = child("spec", list);
        if n.len() != o.len() {
            out.push(Cause::forbidden(
                path,
                "pod updates may not add or remove containers",
            ));
            return out;
        }
        for (i, c) in n.iter().enumerate() {
            if c.get("image")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
            {
                out.push(Cause::required(child(&index(&path, i), "image")));
            }
        }
    }

    let ads_path = "spec.activeDeadlineSeconds";
    let new_ads = new_spec
        .get("activeDeadlineSeconds")
        .and_then(Value::as_i64);
    let old_ads = old_spec
        .get("activeDeadlineSeconds")
        .and_then(Value::as_i64);
    match (new_ads, old_ads) {
        (Some(n), _) if !(0..=i64::from(i32::MAX)).contains(&n) => {
            out.push(invalid_raw(
                ads_path,
                n,
                "must be between 0 and 2147483647, inclusive",
            ));
            return out;
        }
        (Some(n), Some(o)) if o < n => {
            out.push(invalid_raw(
                ads_path,
                n,
                "must be less than or equal to previous value",
            ));
            return out;
        }
        (None, Some(_)) => out.push(invalid_raw(
            ads_path,
            "null",
            "must not update from a positive integer to nil value",
        )),
        _ => {}
    }

    // Existing tolerations may only gain a different tolerationSeconds.
    let new_tol = arr_at(&new_spec, "tolerations");
    let strip = |t: &Value| {
        let mut t = t.clone();
        if let Some(o) = t.as_object_mut() {
            o.remove("tolerationSeconds");
        }
        podspec::normalized(&t)
    };
    for old_t in arr_at(&old_spec, "tolerations") {
        if !new_tol.iter().any(|n| strip(n) == strip(old_t)) {
            out.push(Cause::forbidden(
                "spec.tolerations",
                "existing toleration can not be modified except its tolerationSeconds",
            ));
            break;
        }
    }
    if !out.iter().any(|c| c.field == "spec.tolerations") {
        validate_tolerations(&mut out, new_tol, "spec.tolerations");
    }

    // Scheduling gates may only be removed.
    let old_gates: Vec<&str> = arr_at(&old_spec, "schedulingGates")
        .iter()
        .filter_map(|g| g.get("name").and_then(Value::as_str))
        .collect();
    for (i, g) in arr_at(&new_spec, "schedulingGates").iter().enumerate() {
        let name = g.get("name").and_then(Value::as_str).unwrap_or("");
        if !old_gates.contains(&name) {
            out.push(Cause::forbidden(
                format!("spec.schedulingGates[{i}].name"),
                format!("only deletion is allowed, but found new scheduling gate '{name}'"),
            ));
        }
    }

    // Everything else must be unchanged: put the old values of the mutable fields into
    // the new spec and compare.
    let mut munged = new_spec.clone();
    for list in ["containers", "initContainers"] {
        if let Some(items) = munged.get_mut(list).and_then(Value::as_array_mut) {
            for (i, c) in items.iter_mut().enumerate() {
                let old_image = old_spec
                    .get(list)
                    .and_then(|l| l.get(i))
                    .and_then(|c| c.get("image"))
                    .cloned();
                if let Some(c) = c.as_object_mut() {
                    match old_image {
                        Some(img) => c.insert("image".into(), img),
                        None => c.remove("image"),
                    };
                }
            }
        }
    }
    for field in ["activeDeadlineSeconds", "schedulingGates", "tolerations"] {
        match old_spec.get(field) {
            Some(v) => munged.insert(field.into(), v.clone()),
            None => munged.remove(field),
        };
    }
    let old_grace = old_spec
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_i64);
    let new_grace = munged
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_i64);
    if old_grace.is_some_and(|g| g < 0) && new_grace == Some(1) {
        munged.insert("terminationGracePeriodSeconds".into(), json!(old_grace));
    }
    let munged = Value::Object(munged);
    let old_spec = Value::Object(old_spec);
    if !podspec::semantically_equal(Some(&munged), Some(&old_spec)) {
        let mut diff = Vec::new();
        json_diff("spec", Some(&old_spec), Some(&munged), &mut diff);
        out.push(Cause::forbidden(
            "spec",
            format!(
                "pod updates may not change fields other than {UPDATABLE_FIELDS}\n{}",
                diff.join("\n")
            ),
        ));
    }
    out
}

/// A short textual diff of two JSON values (upstream prints a Go struct diff here).
fn json_diff(path: &str, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<String>) {
    if podspec::semantically_equal(old, new) {
        return;
    }
    match (old, new) {
        (Some(Value::Object(o)), Some(Value::Object(n))) => {
            let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                json_diff(&child(path, k), o.get(k), n.get(k), out);
            }
        }
        (Some(Value::Array(o)), Some(Value::Array(n))) if o.len() == n.len() => {
            for (i, (a, b)) in o.iter().zip(n).enumerate() {
                json_diff(&index(path, i), Some(a), Some(b), out);
            }
        }
        _ => {
            let show = |v: Option<&Value>| v.map_or("null".to_string(), Value::to_string);
            out.push(format!("- {path}: {}", show(old)));
            out.push(format!("+ {path}: {}", show(new)));
        }
    }
}

/// Drops repeated causes (upstream's aggregate does the same when printing).
fn dedup(causes: Vec<Cause>) -> Vec<Cause> {
    let mut out: Vec<Cause> = Vec::with_capacity(causes.len());
    for c in causes {
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// The Ready, Status and Restarts cells of a pod row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodSummary {
    /// `ready/total` containers (sidecars count).
    pub ready: String,
    /// kubectl's STATUS: the phase or the most telling container reason.
    pub status: String,
    /// `3`, or `3 (5m ago)` when the last restart's time is known.
    pub restarts: String,
}

fn is_true_condition(pod: &Value, ctype: &str) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some(ctype)
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}

fn finished_at(status: &Value) -> Option<DateTime<Utc>> {
    status
        .pointer("/lastState/terminated/finishedAt")
        .and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn later(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The reason of a terminated state, or `<prefix>Signal:N` / `<prefix>ExitCode:N`.
fn terminated_reason(t: &Value, prefix: &str) -> String {
    let reason = t.get("reason").and_then(Value::as_str).unwrap_or("");
    if !reason.is_empty() {
        return format!("{prefix}{reason}");
    }
    let signal = t.get("signal").and_then(Value::as_i64).unwrap_or(0);
    if signal != 0 {
        format!("{prefix}Signal:{signal}")
    } else {
        let code = t.get("exitCode").and_then(Value::as_i64).unwrap_or(0);
        format!("{prefix}ExitCode:{code}")
    }
}

/// Computes the Ready, Status and Restarts cells as kubectl's `printPod` does.
pub(crate) fn pod_summary(pod: &Value, now: DateTime<Utc>) -> PodSummary {
    let empty = Map::new();
    let spec = pod.get("spec").and_then(Value::as_object).unwrap_or(&empty);
    let status = pod
        .get("status")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let phase = str_at(status, "phase");
    let mut reason = phase.to_string();
    if !str_at(status, "reason").is_empty() {
        reason = str_at(status, "reason").to_string();
    }
    for c in arr_at(status, "conditions") {
        if c.get("type").and_then(Value::as_str) == Some("PodScheduled")
            && c.get("reason").and_then(Value::as_str) == Some("SchedulingGated")
        {
            reason = "SchedulingGated".to_string();
        }
    }

    let init_specs = arr_at(spec, "initContainers");
    let is_sidecar = |name: &str| {
        init_specs.iter().any(|c| {
            c.get("name").and_then(Value::as_str) == Some(name)
                && c.get("restartPolicy").and_then(Value::as_str) == Some("Always")
        })
    };
    let mut total = arr_at(spec, "containers").len();
    total += init_specs
        .iter()
        .filter(|c| c.get("restartPolicy").and_then(Value::as_str) == Some("Always"))
        .count();

    let mut restarts: i64 = 0;
    let mut sidecar_restarts: i64 = 0;
    let mut ready = 0;
    let mut last_restart: Option<DateTime<Utc>> = None;
    let mut last_sidecar_restart: Option<DateTime<Utc>> = None;
    let mut initializing = false;
    let init_statuses = arr_at(status, "initContainerStatuses");
    for (i, cs) in init_statuses.iter().enumerate() {
        let name = cs.get("name").and_then(Value::as_str).unwrap_or("");
        let count = cs.get("restartCount").and_then(Value::as_i64).unwrap_or(0);
        restarts += count;
        last_restart = later(last_restart, finished_at(cs));
        let sidecar = is_sidecar(name);
        if sidecar {
            sidecar_restarts += count;
            last_sidecar_restart = later(last_sidecar_restart, finished_at(cs));
        }
        let terminated = cs.pointer("/state/terminated").filter(|v| !v.is_null());
        let waiting_reason = cs
            .pointer("/state/waiting/reason")
            .and_then(Value::as_str)
            .unwrap_or("");
        if terminated.is_some_and(|t| t.get("exitCode").and_then(Value::as_i64).unwrap_or(0) == 0) {
            continue;
        }
        if sidecar && cs.get("started").and_then(Value::as_bool) == Some(true) {
            if cs.get("ready").and_then(Value::as_bool) == Some(true) {
                ready += 1;
            }
            continue;
        }
        if let Some(t) = terminated {
            reason = terminated_reason(t, "Init:");
        } else if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" {
            reason = format!("Init:{waiting_reason}");
        } else {
            reason = format!("Init:{i}/{}", init_specs.len());
        }
        initializing = true;
        break;
    }

    if !initializing || is_true_condition(pod, "Initialized") {
        restarts = sidecar_restarts;
        last_restart = last_sidecar_restart;
        let mut has_running = false;
        for cs in arr_at(status, "containerStatuses").iter().rev() {
            restarts += cs.get("restartCount").and_then(Value::as_i64).unwrap_or(0);
            last_restart = later(last_restart, finished_at(cs));
            let waiting_reason = cs
                .pointer("/state/waiting/reason")
                .and_then(Value::as_str)
                .unwrap_or("");
            let terminated = cs.pointer("/state/terminated").filter(|v| !v.is_null());
            let running = cs.pointer("/state/running").is_some_and(|v| !v.is_null());
            if !waiting_reason.is_empty() {
                reason = waiting_reason.to_string();
            } else if let Some(t) = terminated {
                reason = terminated_reason(t, "");
            } else if cs.get("ready").and_then(Value::as_bool) == Some(true) && running {
                has_running = true;
                ready += 1;
            }
        }
        // A pod with a completed container and a still-running one is Running.
        if reason == "Completed" && has_running {
            reason = if is_true_condition(pod, "Ready") {
                "Running".to_string()
            } else {
                "NotReady".to_string()
            };
        }
    }

    let deleting = pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null());
    if deleting && str_at(status, "reason") == "NodeLost" {
        reason = "Unknown".to_string();
    } else if deleting && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".to_string();
    }

    let restarts = match last_restart {
        Some(t) if restarts != 0 => format!(
            "{restarts} ({} ago)",
            table::human_duration(now.signed_duration_since(t))
        ),
        _ => restarts.to_string(),
    };
    PodSummary {
        ready: format!("{ready}/{total}"),
        status: reason,
        restarts,
    }
}

/// The Readiness Gates cell: `true/total` gate conditions, `<none>` without gates.
fn readiness_gates(pod: &Value) -> String {
    let gates = pod
        .pointer("/spec/readinessGates")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if gates.is_empty() {
        return "<none>".to_string();
    }
    let conditions = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let true_count = gates
        .iter()
        .filter(|g| {
            let ct = g.get("conditionType").and_then(Value::as_str);
            conditions
                .iter()
                .find(|c| c.get("type").and_then(Value::as_str) == ct)
                .is_some_and(|c| c.get("status").and_then(Value::as_str) == Some("True"))
        })
        .count();
    format!("{true_count}/{}", gates.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 1, 1, 12, 0, 0)
            .single()
            .unwrap_or_default()
    }

    fn created(obj: &Value) -> Value {
        let s = PodStrategy;
        let mut obj = obj.clone();
        s.default(&mut obj);
        s.prepare_for_create(&mut obj);
        obj
    }

    fn minimal() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"containers": [{"name": "app", "image": "nginx", "ports": [{"containerPort": 80}]}]}
        })
    }

    #[test]
    fn defaults_applied_to_a_minimal_pod() {
        let pod = created(&minimal());
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Always");
        assert_eq!(spec["terminationGracePeriodSeconds"], 30);
        assert_eq!(spec["dnsPolicy"], "ClusterFirst");
        assert_eq!(spec["schedulerName"], "default-scheduler");
        assert_eq!(spec["securityContext"], json!({}));
        assert_eq!(spec["enableServiceLinks"], true);
        let c = &spec["containers"][0];
        assert_eq!(c["imagePullPolicy"], "Always");
        assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(c["terminationMessagePolicy"], "File");
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(c["resources"], json!({}));
        assert_eq!(
            pod["status"],
            json!({"phase": "Pending", "qosClass": "BestEffort"})
        );
        assert!(
            PodStrategy.validate(&pod).is_empty(),
            "{:?}",
            PodStrategy.validate(&pod)
        );
    }

    #[test]
    fn a_realistic_pod_validates_cleanly() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "api-7d9f", "namespace": "prod", "labels": {"app": "api"}},
            "spec": {
                "serviceAccountName": "default",
                "initContainers": [{"name": "migrate", "image": "api:v2", "command": ["/migrate"]}],
                "containers": [{
                    "name": "api", "image": "registry.local:5000/api:v2",
                    "args": ["--port=8080"],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "env": [
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "api-secret", "key": "token"}}},
                        {"name": "LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}}
                    ],
                    "envFrom": [{"configMapRef": {"name": "api-config"}}],
                    "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                    "livenessProbe": {"tcpSocket": {"port": 8080}, "initialDelaySeconds": 5},
                    "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}},
                    "volumeMounts": [
                        {"name": "data", "mountPath": "/data"},
                        {"name": "kube-api-access-x1", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}
                    ]
                }],
                "volumes": [
                    {"name": "data", "emptyDir": {"sizeLimit": "1Gi"}},
                    {"name": "kube-api-access-x1", "projected": {"sources": [
                        {"serviceAccountToken": {"path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}
                    ]}}
                ],
                "tolerations": [
                    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
                ],
                "nodeSelector": {"kubernetes.io/os": "linux"}
            }
        });
        let pod = created(&pod);
        assert_eq!(PodStrategy.validate(&pod), Vec::<Cause>::new());
        assert_eq!(pod["status"]["qosClass"], "Burstable");
        assert_eq!(pod["spec"]["serviceAccount"], "default");
        assert_eq!(
            pod["spec"]["volumes"][1]["projected"]["sources"][0]["serviceAccountToken"]
                ["expirationSeconds"],
            3600
        );
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["requests"],
            json!({"cpu": "250m", "memory": "64Mi"})
        );
        assert!(PodStrategy.validate_update(&pod, &pod).is_empty());
    }

    #[test]
    fn create_discards_client_status_and_computes_qos() {
        let mut pod = minimal();
        pod["status"] = json!({"phase": "Running", "podIP": "10.0.0.1"});
        pod["spec"]["containers"][0]["resources"] =
            json!({"limits": {"cpu": "1", "memory": "1Gi"}});
        let pod = created(&pod);
        assert_eq!(
            pod["status"],
            json!({"phase": "Pending", "qosClass": "Guaranteed"})
        );
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["requests"],
            json!({"cpu": "1", "memory": "1Gi"}),
            "pod requests default to limits"
        );
    }

    fn cause<'a>(causes: &'a [Cause], field: &str) -> Option<&'a Cause> {
        causes.iter().find(|c| c.field == field)
    }

    #[test]
    fn validation_causes_name_exact_fields() {
        let mut pod = minimal();
        pod["spec"]["containers"][0]["image"] = json!("");
        pod["spec"]["restartPolicy"] = json!("Sometimes");
        if let Some(a) = pod["spec"]["containers"].as_array_mut() {
            a.push(json!({"name": "app", "image": "busybox"}));
        }
        let pod = created(&pod);
        let causes = PodStrategy.validate(&pod);
        let image = cause(&causes, "spec.containers[0].image");
        assert_eq!(
            image.map(|c| (c.reason, c.message.as_str())),
            Some(("FieldValueRequired", "Required value"))
        );
        let rp = cause(&causes, "spec.restartPolicy").map(|c| c.message.as_str());
        assert_eq!(
            rp,
            Some(
                "Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\""
            )
        );
        let dup = cause(&causes, "spec.containers[1].name").map(|c| (c.reason, c.message.as_str()));
        assert_eq!(
            dup,
            Some(("FieldValueDuplicate", "Duplicate value: \"app\""))
        );

        let mut no_containers = minimal();
        no_containers["spec"]["containers"] = json!([]);
        let causes = PodStrategy.validate(&created(&no_containers));
        assert!(cause(&causes, "spec.containers").is_some(), "{causes:?}");

        let mut bad_name = minimal();
        bad_name["spec"]["containers"][0]["name"] = json!("App_1");
        let causes = PodStrategy.validate(&created(&bad_name));
        let msg = cause(&causes, "spec.containers[0].name").map(|c| c.message.clone());
        assert!(
            msg.is_some_and(
                |m| m.starts_with("Invalid value: \"App_1\": a lowercase RFC 1123 label")
            ),
            "{causes:?}"
        );
    }

    #[test]
    fn spec_update_refused_but_image_change_allowed() {
        let old = created(&minimal());
        let mut image = old.clone();
        image["spec"]["containers"][0]["image"] = json!("nginx:1.27");
        PodStrategy.default(&mut image);
        assert!(PodStrategy.validate_update(&image, &old).is_empty());

        let mut env = old.clone();
        env["spec"]["containers"][0]["env"] = json!([{"name": "A", "value": "b"}]);
        PodStrategy.default(&mut env);
        let causes = PodStrategy.validate_update(&env, &old);
        let c = cause(&causes, "spec");
        assert_eq!(c.map(|c| c.reason), Some("FieldValueForbidden"));
        assert!(c.is_some_and(|c| c.message.starts_with(
            "Forbidden: pod updates may not change fields other than `spec.containers[*].image`"
        )));
        assert!(c.is_some_and(|c| c.message.contains("spec.containers[0].env")));

        let mut tol = old.clone();
        tol["spec"]["tolerations"] =
            json!([{"key": "k", "operator": "Exists", "effect": "NoSchedule"}]);
        assert!(
            PodStrategy.validate_update(&tol, &old).is_empty(),
            "adding tolerations is allowed"
        );
        let mut removed = tol.clone();
        removed["spec"]["tolerations"] = json!([]);
        let causes = PodStrategy.validate_update(&removed, &tol);
        assert!(cause(&causes, "spec.tolerations").is_some(), "{causes:?}");

        let mut more = old.clone();
        if let Some(a) = more["spec"]["containers"].as_array_mut() {
            a.push(json!({"name": "b", "image": "b"}));
        }
        PodStrategy.default(&mut more);
        let causes = PodStrategy.validate_update(&more, &old);
        assert_eq!(
            cause(&causes, "spec.containers").map(|c| c.message.as_str()),
            Some("Forbidden: pod updates may not add or remove containers")
        );
    }

    fn with_status(status: Value) -> Value {
        let mut pod = created(&minimal());
        pod["status"] = status;
        pod
    }

    #[test]
    fn status_column_follows_kubectl() {
        let summary = |status: Value| pod_summary(&with_status(status), now());
        assert_eq!(summary(json!({"phase": "Pending"})).status, "Pending");
        let creating = summary(json!({"phase": "Pending", "containerStatuses": [
            {"name": "app", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}
        ]}));
        assert_eq!(creating.status, "ContainerCreating");
        assert_eq!(creating.ready, "0/1");
        let running = summary(json!({"phase": "Running", "containerStatuses": [
            {"name": "app", "ready": true, "restartCount": 0, "state": {"running": {"startedAt": "2025-01-01T11:00:00Z"}}}
        ]}));
        assert_eq!(
            (
                running.status.as_str(),
                running.ready.as_str(),
                running.restarts.as_str()
            ),
            ("Running", "1/1", "0")
        );
        let crash = summary(json!({"phase": "Running", "containerStatuses": [
            {"name": "app", "ready": false, "restartCount": 3,
             "state": {"waiting": {"reason": "CrashLoopBackOff"}},
             "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": "2025-01-01T11:55:00Z"}}}
        ]}));
        assert_eq!(crash.status, "CrashLoopBackOff");
        assert_eq!(crash.restarts, "3 (5m ago)");
        let done = summary(json!({"phase": "Succeeded", "containerStatuses": [
            {"name": "app", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
        ]}));
        assert_eq!(done.status, "Completed");
        let failed = summary(json!({"phase": "Failed", "containerStatuses": [
            {"name": "app", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 2}}}
        ]}));
        assert_eq!(failed.status, "ExitCode:2");
    }

    #[test]
    fn init_and_terminating_states() {
        let mut pod = created(&minimal());
        pod["spec"]["initContainers"] = json!([{"name": "init", "image": "busybox"}]);
        pod["status"] = json!({"phase": "Pending", "initContainerStatuses": [
            {"name": "init", "ready": false, "restartCount": 0, "state": {"running": {}}}
        ]});
        assert_eq!(pod_summary(&pod, now()).status, "Init:0/1");
        pod["status"]["initContainerStatuses"][0]["state"] =
            json!({"terminated": {"exitCode": 1, "reason": "Error"}});
        assert_eq!(pod_summary(&pod, now()).status, "Init:Error");

        let mut deleting = with_status(json!({"phase": "Running"}));
        deleting["metadata"]["deletionTimestamp"] = json!("2025-01-01T11:59:00Z");
        assert_eq!(pod_summary(&deleting, now()).status, "Terminating");
    }

    #[test]
    fn cells_read_only_the_projected_fields() {
        let mut base = created(&minimal());
        PodStrategy.default(&mut base);
        base["metadata"]["creationTimestamp"] = json!("2025-01-01T11:00:00Z");
        base["metadata"]["managedFields"] = json!([{"manager": "kubectl", "fieldsV1": {}}]);
        base["spec"]["nodeName"] = json!("node-1");
        base["spec"]["readinessGates"] = json!([{"conditionType": "example.com/gate"}]);
        base["spec"]["initContainers"] = json!([
            {"name": "side", "image": "x", "restartPolicy": "Always"},
            {"name": "init", "image": "y"},
        ]);
        let restarted =
            json!({"terminated": {"exitCode": 1, "finishedAt": "2025-01-01T11:50:00Z"}});
        let statuses = [
            json!({"phase": "Pending", "initContainerStatuses": [
                {"name": "side", "ready": true, "started": true, "restartCount": 2,
                 "state": {"running": {}}, "lastState": restarted},
                {"name": "init", "ready": false, "restartCount": 0,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
            ]}),
            json!({"phase": "Running", "podIPs": [{"ip": "10.1.0.5"}], "podIP": "10.1.0.5",
                "nominatedNodeName": "node-2",
                "conditions": [{"type": "Initialized", "status": "True"},
                    {"type": "example.com/gate", "status": "True"}, {"type": "Ready", "status": "True"}],
                "initContainerStatuses": [
                    {"name": "side", "ready": true, "started": true, "restartCount": 1,
                     "state": {"running": {}}, "lastState": restarted},
                    {"name": "init", "ready": false, "restartCount": 0,
                     "state": {"terminated": {"exitCode": 0}}},
                ],
                "containerStatuses": [{"name": "web", "ready": true, "restartCount": 3,
                    "state": {"running": {}}, "lastState": restarted}]}),
            json!({"phase": "Running", "reason": "NodeLost", "containerStatuses": [
                {"name": "web", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}),
        ];
        for (i, status) in statuses.into_iter().enumerate() {
            for deleting in [false, true] {
                let mut pod = base.clone();
                pod["status"] = status.clone();
                if deleting {
                    pod["metadata"]["deletionTimestamp"] = json!("2025-01-01T11:59:00Z");
                }
                let text = serde_json::to_vec(&pod).expect("encodes");
                let projected = super::super::projection::decode(&text, PodStrategy.cell_fields())
                    .expect("decodes");
                assert!(projected["metadata"].get("managedFields").is_none());
                assert_eq!(
                    PodStrategy.cells(&projected, now()),
                    PodStrategy.cells(&pod, now()),
                    "status {i}, deleting {deleting}"
                );
            }
        }
    }

    #[test]
    fn selectors_read_only_the_projected_fields() {
        let mut pod = created(&minimal());
        PodStrategy.default(&mut pod);
        pod["metadata"]["namespace"] = json!("prod");
        pod["metadata"]["labels"] = json!({"app": "web"});
        pod["spec"]["nodeName"] = json!("node-1");
        pod["spec"]["serviceAccountName"] = json!("robot");
        pod["spec"]["hostNetwork"] = json!(true);
        pod["status"] = json!({"phase": "Running", "podIPs": [{"ip": "10.1.0.5"}],
            "nominatedNodeName": "node-2"});
        let text = serde_json::to_vec(&pod).expect("encodes");
        let projected = super::super::projection::decode(&text, PodStrategy.selector_fields())
            .expect("decodes");
        for field in [
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ] {
            let want = PodStrategy.field_value(&pod, field);
            assert!(want.as_deref().is_some_and(|v| !v.is_empty()), "{field}");
            assert_eq!(PodStrategy.field_value(&projected, field), want, "{field}");
        }
        for meta in ["name", "namespace", "labels"] {
            assert_eq!(projected["metadata"][meta], pod["metadata"][meta], "{meta}");
        }
        assert!(projected["spec"].get("containers").is_none());
    }

    #[test]
    fn cells_and_field_values() {
        let mut pod = with_status(json!({"phase": "Running", "podIP": "10.1.0.5"}));
        PodStrategy.default(&mut pod);
        pod["metadata"]["creationTimestamp"] = json!("2025-01-01T11:00:00Z");
        pod["spec"]["nodeName"] = json!("node-1");
        let cells = PodStrategy.cells(&pod, now());
        assert_eq!(cells.len(), PodStrategy.columns().len());
        assert_eq!(
            cells,
            vec![
                json!("web"),
                json!("0/1"),
                json!("Running"),
                json!("0"),
                json!("60m"),
                json!("10.1.0.5"),
                json!("node-1"),
                json!("<none>"),
                json!("<none>"),
            ]
        );
        assert_eq!(pod["status"]["podIPs"], json!([{"ip": "10.1.0.5"}]));
        assert_eq!(
            PodStrategy.field_value(&pod, "spec.nodeName").as_deref(),
            Some("node-1")
        );
        assert_eq!(
            PodStrategy.field_value(&pod, "status.phase").as_deref(),
            Some("Running")
        );
        assert_eq!(
            PodStrategy.field_value(&pod, "spec.hostNetwork").as_deref(),
            Some("false")
        );
        assert_eq!(
            PodStrategy.field_value(&pod, "status.podIP").as_deref(),
            Some("10.1.0.5")
        );
        assert_eq!(PodStrategy.field_value(&pod, "spec.unknown"), None);
    }
}
