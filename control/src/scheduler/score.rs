//! Scores: how good a feasible node is for a pod, 0–100 per plugin, weighted as
//! kube-scheduler's default profile weighs them: least requested (NodeResourcesFit) 1,
//! balanced allocation 1, spreading one owner's pods across nodes 2. The best total
//! wins; ties are broken at random.

use rand::Rng;

use super::cache::{NodeInfo, NodeSpec};
use super::requirements::PodInfo;

const MAX_SCORE: i64 = 100;
const LEAST_REQUESTED_WEIGHT: i64 = 1;
const BALANCED_WEIGHT: i64 = 1;
const SPREAD_WEIGHT: i64 = 2;

/// The fraction of `capacity` used once the pod is added, as (used, capacity).
fn usage(node: &NodeInfo, spec: &NodeSpec, pod: &PodInfo) -> [(i64, i64); 2] {
    [
        (
            node.nonzero_requested
                .milli_cpu
                .saturating_add(pod.nonzero.milli_cpu),
            spec.allocatable.milli_cpu,
        ),
        (
            node.nonzero_requested
                .memory
                .saturating_add(pod.nonzero.memory),
            spec.allocatable.memory,
        ),
    ]
}

/// Least requested: the share of cpu and memory left free, averaged.
pub fn least_requested(node: &NodeInfo, spec: &NodeSpec, pod: &PodInfo) -> i64 {
    let per_resource = usage(node, spec, pod).map(|(used, cap)| {
        if cap <= 0 || used > cap {
            0
        } else {
            ((cap - used) as i128 * MAX_SCORE as i128 / cap as i128) as i64
        }
    });
    per_resource.iter().sum::<i64>() / per_resource.len() as i64
}

/// Balanced allocation: 100 when cpu and memory are used in the same proportion, lower
/// as their fractions diverge (one minus their standard deviation).
pub fn balanced_allocation(node: &NodeInfo, spec: &NodeSpec, pod: &PodInfo) -> i64 {
    let [cpu, memory] = usage(node, spec, pod).map(|(used, cap)| {
        if cap <= 0 {
            1.0
        } else {
            (used as f64 / cap as f64).min(1.0)
        }
    });
    // For two values the standard deviation is half their distance.
    let std = (cpu - memory).abs() / 2.0;
    ((1.0 - std) * MAX_SCORE as f64) as i64
}

/// Spreading: nodes with fewer pods of the pod's owner score higher (100 with none of
/// them); `max_owned` is the most such pods on any feasible node.
pub fn spread(node: &NodeInfo, pod: &PodInfo, max_owned: u32) -> i64 {
    let Some(owner) = &pod.owner else {
        return MAX_SCORE;
    };
    if max_owned == 0 {
        return MAX_SCORE;
    }
    let here = node.owners.get(owner).copied().unwrap_or(0);
    MAX_SCORE * i64::from(max_owned - here.min(max_owned)) / i64::from(max_owned)
}

/// The weighted total for one node.
pub fn total(node: &NodeInfo, spec: &NodeSpec, pod: &PodInfo, max_owned: u32) -> i64 {
    LEAST_REQUESTED_WEIGHT * least_requested(node, spec, pod)
        + BALANCED_WEIGHT * balanced_allocation(node, spec, pod)
        + SPREAD_WEIGHT * spread(node, pod, max_owned)
}

/// Picks the highest-scoring candidate (index, score), uniformly at random among ties
/// (reservoir sampling, as upstream's `selectHost`).
pub fn select(candidates: &[(usize, i64)], rng: &mut impl Rng) -> Option<usize> {
    let mut best: Option<(usize, i64)> = None;
    let mut ties = 0u32;
    for &(index, score) in candidates {
        match best {
            Some((_, top)) if score < top => {}
            Some((_, top)) if score == top => {
                ties += 1;
                if rng.random_range(0..ties) == 0 {
                    best = Some((index, score));
                }
            }
            _ => {
                best = Some((index, score));
                ties = 1;
            }
        }
    }
    best.map(|(index, _)| index)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use super::*;
    use crate::scheduler::requirements::Resources;

    fn spec(cpu: i64, memory: i64) -> NodeSpec {
        NodeSpec {
            labels: BTreeMap::new(),
            taints: vec![],
            unschedulable: false,
            ready: true,
            allocatable: Resources {
                milli_cpu: cpu,
                memory,
                ephemeral_storage: 0,
            },
            allowed_pods: 110,
        }
    }

    fn node(cpu: i64, memory: i64) -> NodeInfo {
        NodeInfo {
            nonzero_requested: Resources {
                milli_cpu: cpu,
                memory,
                ephemeral_storage: 0,
            },
            ..Default::default()
        }
    }

    fn pod(cpu: i64, memory: i64, owner: Option<&str>) -> PodInfo {
        let r = Resources {
            milli_cpu: cpu,
            memory,
            ephemeral_storage: 0,
        };
        PodInfo {
            requests: r,
            nonzero: r,
            host_ports: vec![],
            owner: owner.map(str::to_string),
        }
    }

    #[test]
    fn least_requested_prefers_emptier_nodes() {
        let s = spec(4000, 4000);
        let p = pod(1000, 1000, None);
        assert_eq!(least_requested(&node(0, 0), &s, &p), 75);
        assert_eq!(least_requested(&node(2000, 2000), &s, &p), 25);
        assert_eq!(
            least_requested(&node(4000, 0), &s, &p),
            37,
            "cpu 0 (overfull), memory 75"
        );
    }

    #[test]
    fn balanced_allocation_prefers_even_use() {
        let s = spec(4000, 4000);
        assert_eq!(
            balanced_allocation(&node(1000, 1000), &s, &pod(1000, 1000, None)),
            100
        );
        assert_eq!(
            balanced_allocation(&node(0, 0), &s, &pod(4000, 0, None)),
            50
        );
    }

    #[test]
    fn spread_prefers_nodes_without_the_owners_pods() {
        let mut busy = node(0, 0);
        busy.owners.insert("rs".into(), 2);
        let mut one = node(0, 0);
        one.owners.insert("rs".into(), 1);
        let p = pod(0, 0, Some("rs"));
        assert_eq!(spread(&busy, &p, 2), 0);
        assert_eq!(spread(&one, &p, 2), 50);
        assert_eq!(spread(&node(0, 0), &p, 2), 100);
        assert_eq!(
            spread(&busy, &pod(0, 0, None), 2),
            100,
            "no owner: no preference"
        );
        // Spreading outweighs a slightly emptier node.
        let s = spec(4000, 4000);
        assert!(total(&node(100, 100), &s, &p, 2) > total(&one, &s, &p, 2));
    }

    #[test]
    fn ties_are_broken_at_random_and_the_best_wins() {
        let mut rng = rand::rng();
        assert_eq!(select(&[(0, 5), (1, 9), (2, 3)], &mut rng), Some(1));
        assert_eq!(select(&[], &mut rng), None);
        let seen: HashSet<usize> = (0..200)
            .filter_map(|_| select(&[(0, 7), (1, 7), (2, 7), (3, 1)], &mut rng))
            .collect();
        assert_eq!(seen, HashSet::from([0, 1, 2]));
    }
}
