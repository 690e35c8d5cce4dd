//! Controller history: the ControllerRevisions a DaemonSet's pod templates are recorded
//! in, as upstream's `pkg/controller/history`.
//!
//! Each distinct template a DaemonSet has had is one ControllerRevision named
//! `<daemonset>-<hash>`, labelled with the template's labels plus
//! `controller-revision-hash`, owned by the DaemonSet, whose `data` is a strategic merge
//! patch replacing `spec.template` — so `kubectl rollout undo` can apply it as it is —
//! and whose `revision` numbers it. Going back to an earlier template reuses that
//! template's revision and renumbers it as the newest. Revisions that no live pod uses
//! and that are not current are deleted beyond `revisionHistoryLimit`, oldest first.
//!
//! This module decides; the DaemonSet controller makes the API calls.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::{json, Value};

/// The label naming the revision (its hash) on revisions and on the pods made from them.
pub(crate) const HASH_LABEL: &str = "controller-revision-hash";

/// Names are at most 253 characters; upstream keeps 223 of the owner's name so that a
/// hash suffix always fits.
const MAX_PREFIX: usize = 223;

/// The `data` of the revision recording `template`: `{"spec": {"template": {...,
/// "$patch": "replace"}}}`, which restores exactly that template when patched in.
pub(crate) fn template_patch(template: &PodTemplateSpec) -> Value {
    let mut template = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Some(t) = template.as_object_mut() {
        t.insert("$patch".to_string(), json!("replace"));
    }
    json!({"spec": {"template": template}})
}

/// `<owner>-<hash>`, the owner's name cut so that the whole is a valid object name.
pub(crate) fn revision_name(owner: &str, hash: &str) -> String {
    let mut prefix = owner;
    if prefix.len() > MAX_PREFIX {
        let mut end = MAX_PREFIX;
        while !prefix.is_char_boundary(end) {
            end -= 1;
        }
        prefix = &prefix[..end];
    }
    format!("{prefix}-{hash}")
}

/// The labels of a new revision: the template's, plus the hash.
pub(crate) fn revision_labels(template: &PodTemplateSpec, hash: &str) -> BTreeMap<String, String> {
    let mut labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(HASH_LABEL.to_string(), hash.to_string());
    labels
}

/// How the current template gets its revision.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Current {
    /// A revision already records it; `renumber` is its new number when a newer
    /// revision exists (the template came back, e.g. through `rollout undo`).
    Existing {
        name: String,
        hash: Option<String>,
        renumber: Option<i64>,
    },
    /// No revision records it: create one numbered `revision`.
    New { revision: i64 },
}

fn data_of(r: &ControllerRevision) -> Option<&Value> {
    r.data.as_ref().map(|d| &d.0)
}

/// Which of the owner's revisions records `data`, or the number a new one gets. When
/// several record it (a race upstream also tolerates), the newest wins.
pub(crate) fn current(owned: &[ControllerRevision], data: &Value) -> Current {
    let newest = owned.iter().map(|r| r.revision).max().unwrap_or(0);
    let matching = owned
        .iter()
        .filter(|r| data_of(r) == Some(data))
        .max_by_key(|r| r.revision);
    match matching {
        Some(r) => {
            let others_newest = owned
                .iter()
                .filter(|o| o.metadata.name != r.metadata.name)
                .map(|o| o.revision)
                .max()
                .unwrap_or(0);
            Current::Existing {
                name: r.metadata.name.clone().unwrap_or_default(),
                hash: r
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(HASH_LABEL))
                    .cloned(),
                renumber: (r.revision <= others_newest).then_some(others_newest + 1),
            }
        }
        None => Current::New {
            revision: newest + 1,
        },
    }
}

/// The revisions to delete: those neither `current` nor used by a live pod (`live`
/// holds the pods' hash labels), oldest first, all but the newest `limit` of them.
pub(crate) fn excess(
    owned: &[ControllerRevision],
    current: &str,
    live: &HashSet<String>,
    limit: usize,
) -> Vec<String> {
    let mut old: Vec<&ControllerRevision> = owned
        .iter()
        .filter(|r| r.metadata.name.as_deref() != Some(current))
        .filter(|r| {
            let hash = r.metadata.labels.as_ref().and_then(|l| l.get(HASH_LABEL));
            !hash.is_some_and(|h| live.contains(h))
        })
        .collect();
    if old.len() <= limit {
        return Vec::new();
    }
    old.sort_by_key(|r| r.revision);
    old[..old.len() - limit]
        .iter()
        .filter_map(|r| r.metadata.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(image: &str) -> PodTemplateSpec {
        serde_json::from_value(json!({
            "metadata": {"labels": {"app": "agent"}},
            "spec": {"containers": [{"name": "agent", "image": image}]},
        }))
        .unwrap()
    }

    fn revision(name: &str, n: i64, image: &str) -> ControllerRevision {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {HASH_LABEL: name.trim_start_matches("ds-")}},
            "data": template_patch(&template(image)),
            "revision": n,
        }))
        .unwrap()
    }

    #[test]
    fn the_patch_replaces_the_template() {
        let p = template_patch(&template("a:1"));
        assert_eq!(p["spec"]["template"]["$patch"], json!("replace"));
        assert_eq!(
            p["spec"]["template"]["spec"]["containers"][0]["image"],
            json!("a:1")
        );
        assert_eq!(p.as_object().unwrap().len(), 1, "only spec.template");
    }

    #[test]
    fn names_fit_and_labels_carry_the_hash() {
        assert_eq!(revision_name("web", "abc"), "web-abc");
        let long = "x".repeat(300);
        assert_eq!(revision_name(&long, "abc").len(), MAX_PREFIX + 4);
        let labels = revision_labels(&template("a:1"), "h1");
        assert_eq!(labels.get("app").map(String::as_str), Some("agent"));
        assert_eq!(labels.get(HASH_LABEL).map(String::as_str), Some("h1"));
    }

    #[test]
    fn a_new_template_gets_the_next_number() {
        assert_eq!(
            current(&[], &template_patch(&template("a:1"))),
            Current::New { revision: 1 }
        );
        let owned = [revision("ds-1", 1, "a:1"), revision("ds-2", 2, "a:2")];
        assert_eq!(
            current(&owned, &template_patch(&template("a:3"))),
            Current::New { revision: 3 }
        );
    }

    #[test]
    fn the_newest_template_keeps_its_number_and_an_old_one_is_renumbered() {
        let owned = [revision("ds-1", 1, "a:1"), revision("ds-2", 2, "a:2")];
        assert_eq!(
            current(&owned, &template_patch(&template("a:2"))),
            Current::Existing {
                name: "ds-2".into(),
                hash: Some("2".into()),
                renumber: None
            }
        );
        assert_eq!(
            current(&owned, &template_patch(&template("a:1"))),
            Current::Existing {
                name: "ds-1".into(),
                hash: Some("1".into()),
                renumber: Some(3)
            },
            "rolled back: revision 1 becomes 3"
        );
    }

    #[test]
    fn history_beyond_the_limit_goes_oldest_first_sparing_live_and_current() {
        let owned: Vec<ControllerRevision> = (1..=6)
            .map(|n| revision(&format!("ds-{n}"), n, &format!("a:{n}")))
            .collect();
        let live: HashSet<String> = ["2".to_string()].into();
        // Old and unused: 1, 3, 4, 5 (6 is current, 2 is live); keep 2 of them.
        assert_eq!(excess(&owned, "ds-6", &live, 2), vec!["ds-1", "ds-3"]);
        assert!(excess(&owned, "ds-6", &live, 4).is_empty());
        assert_eq!(
            excess(&owned, "ds-6", &HashSet::new(), 0),
            vec!["ds-1", "ds-2", "ds-3", "ds-4", "ds-5"]
        );
    }
}
