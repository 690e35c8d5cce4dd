//! The failure message of a pod no node fits, in kube-scheduler's format:
//! `0/3 nodes are available: 1 Insufficient memory, 2 node(s) had untolerated taint
//! {key: value}. preemption: 0/3 nodes are available: 1 No preemption victims found for
//! incoming pod, 2 Preemption is not helpful for scheduling.` Reasons are counted per
//! node and listed as sorted "<count> <reason>" strings, as upstream's `FitError` does.

use std::collections::HashMap;

use super::filter::Reason;

/// Upstream's message when there are no nodes at all.
pub const NO_NODES: &str = "no nodes available to schedule pods";

/// The rejected nodes' reasons, accumulated while filtering.
#[derive(Debug, Default)]
pub struct Diagnosis {
    reasons: HashMap<String, usize>,
    /// Nodes where evicting pods could help / could not.
    preemptable: usize,
    hopeless: usize,
}

impl Diagnosis {
    pub fn reject(&mut self, reasons: &[Reason]) {
        for reason in reasons {
            *self.reasons.entry(reason.message()).or_default() += 1;
        }
        if reasons.iter().all(Reason::preemption_might_help) {
            self.preemptable += 1;
        } else {
            self.hopeless += 1;
        }
    }

    /// The whole message for `nodes` nodes, none of which fit.
    pub fn message(&self, nodes: usize, never_preempts: bool) -> String {
        if nodes == 0 {
            return NO_NODES.to_string();
        }
        let filters = histogram(self.reasons.iter().map(|(r, c)| (r.as_str(), *c)));
        let preemption = if never_preempts {
            "not eligible due to preemptionPolicy=Never".to_string()
        } else {
            format!(
                "0/{nodes} nodes are available: {}",
                histogram([
                    (
                        "No preemption victims found for incoming pod",
                        self.preemptable
                    ),
                    ("Preemption is not helpful for scheduling", self.hopeless),
                ])
            )
        };
        format!("0/{nodes} nodes are available: {filters}. preemption: {preemption}.")
    }
}

/// A message for a pod rejected before any node was looked at (upstream's PreFilter
/// failures), such as a missing RuntimeClass.
pub fn pre_filter_message(nodes: usize, why: &str) -> String {
    format!(
        "0/{nodes} nodes are available: {why}. preemption: 0/{nodes} nodes are available: \
         {nodes} Preemption is not helpful for scheduling."
    )
}

fn histogram<'a>(counts: impl IntoIterator<Item = (&'a str, usize)>) -> String {
    let mut items: Vec<String> = counts
        .into_iter()
        .filter(|(_, c)| *c > 0)
        .map(|(reason, count)| format!("{count} {reason}"))
        .collect();
    items.sort();
    items.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_matches_kube_schedulers_wording() {
        let mut d = Diagnosis::default();
        d.reject(&[Reason::Insufficient("memory")]);
        for _ in 0..2 {
            d.reject(&[Reason::UntoleratedTaint {
                key: "dedicated".into(),
                value: "gpu".into(),
            }]);
        }
        assert_eq!(
            d.message(3, false),
            "0/3 nodes are available: 1 Insufficient memory, 2 node(s) had untolerated taint \
             {dedicated: gpu}. preemption: 0/3 nodes are available: 1 No preemption victims \
             found for incoming pod, 2 Preemption is not helpful for scheduling."
        );
    }

    #[test]
    fn a_node_can_give_several_reasons() {
        let mut d = Diagnosis::default();
        d.reject(&[Reason::Insufficient("cpu"), Reason::Insufficient("memory")]);
        d.reject(&[Reason::Insufficient("memory")]);
        d.reject(&[Reason::NodeAffinity]);
        assert_eq!(
            d.message(3, true),
            "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) didn't match Pod's node \
             affinity/selector, 2 Insufficient memory. preemption: not eligible due to \
             preemptionPolicy=Never."
        );
    }

    #[test]
    fn no_nodes_and_pre_filter_failures() {
        assert_eq!(Diagnosis::default().message(0, false), NO_NODES);
        assert_eq!(
            pre_filter_message(2, "RuntimeClass \"wasm\" not found"),
            "0/2 nodes are available: RuntimeClass \"wasm\" not found. preemption: 0/2 nodes \
             are available: 2 Preemption is not helpful for scheduling."
        );
    }
}
