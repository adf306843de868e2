//! Where partitions go: the ideal replicas of a partition by rendezvous hashing over the live
//! nodes, and the next step from an assignment towards it.
//!
//! Rendezvous (highest-random-weight) hashing ranks the nodes by a hash of (node, partition);
//! the first `replicas` live nodes are the ideal holders. When a node joins or leaves, only the
//! partitions it ranks high for move (like Vespa's ideal state), and every process computes the
//! same ranking without talking to the others.
//!
//! [`next_step`] changes an assignment in small, safe steps; the controller writes each by
//! compare-and-swap:
//! 1. a replica on a dead node that is still joining is removed (it holds nothing of value);
//! 2. a ready replica on a dead node is removed while another ready replica is live (else it is
//!    kept: it may come back, and it is the only full copy besides the log);
//! 3. an ideal live node that is missing is added as joining;
//! 4. a live replica that is not ideal is removed only once every ideal replica is ready, so
//!    ownership switches only after the new owner has caught up.

use std::collections::BTreeSet;

use crate::meta::{Assignment, Replica, ReplicaState};
use crate::partition::mix64;

/// 64-bit FNV-1a of a node id.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The rendezvous weight of `node` for `partition`.
pub fn weight(node: &str, partition: u32) -> u64 {
    mix64(fnv1a(node) ^ mix64(u64::from(partition)))
}

/// The `replicas` nodes of `live` that rank highest for `partition`, best first.
pub fn ideal(partition: u32, live: &BTreeSet<String>, replicas: usize) -> Vec<String> {
    let mut ranked: Vec<(u64, &String)> = live.iter().map(|n| (weight(n, partition), n)).collect();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    ranked
        .into_iter()
        .take(replicas)
        .map(|(_, n)| n.clone())
        .collect()
}

/// The assignment one step closer to the ideal, or `None` if `current` needs no change.
/// `current` is `None` for a partition never assigned.
pub fn next_step(
    partition: u32,
    current: Option<&Assignment>,
    live: &BTreeSet<String>,
    replicas: usize,
) -> Option<Assignment> {
    let target = ideal(partition, live, replicas);
    let Some(current) = current else {
        return (!target.is_empty()).then(|| Assignment {
            partition,
            epoch: 1,
            replicas: target.iter().map(|n| Replica::joining(n)).collect(),
        });
    };
    let is_live = |r: &Replica| live.contains(&r.node);
    let mut next = current.clone();

    // 1. Dead joiners go.
    next.replicas
        .retain(|r| is_live(r) || r.state == ReplicaState::Ready);
    // 2. Dead ready replicas go while a live ready one remains.
    if next.ready().any(is_live) {
        next.replicas.retain(is_live);
    }
    // 3. Missing ideal nodes join.
    for n in &target {
        if next.replica(n).is_none() {
            next.replicas.push(Replica::joining(n));
        }
    }
    // 4. Live replicas that are not ideal leave once every ideal one is ready.
    let all_ideal_ready = target.iter().all(|n| {
        next.replica(n)
            .is_some_and(|r| r.state == ReplicaState::Ready)
    });
    if all_ideal_ready {
        next.replicas
            .retain(|r| target.contains(&r.node) || !is_live(r));
    }
    if next.replicas == current.replicas {
        return None;
    }
    next.epoch = current.epoch + 1;
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn ready(a: &mut Assignment) {
        for r in &mut a.replicas {
            r.state = ReplicaState::Ready;
        }
    }

    #[test]
    fn ideal_is_stable_and_moves_little_when_a_node_joins() {
        let three = live(&["a", "b", "c"]);
        let four = live(&["a", "b", "c", "d"]);
        let mut moved = 0;
        for p in 0..1000 {
            let before = ideal(p, &three, 2);
            let after = ideal(p, &four, 2);
            assert_eq!(before, ideal(p, &three, 2));
            moved += after.iter().filter(|n| !before.contains(n)).count();
            // Only the new node takes replicas.
            assert!(after.iter().all(|n| before.contains(n) || n == "d"));
        }
        // The new node should take about a quarter of the 2000 replicas.
        assert!((400..600).contains(&moved), "{moved} replicas moved");
    }

    #[test]
    fn steps_add_then_switch_only_after_catch_up() {
        let ab = live(&["a", "b"]);
        let mut a = next_step(3, None, &ab, 2).unwrap();
        assert_eq!(a.replicas.len(), 2);
        assert!(next_step(3, Some(&a), &ab, 2).is_none(), "joining: wait");
        ready(&mut a);
        assert!(next_step(3, Some(&a), &ab, 2).is_none(), "ideal and ready");

        // A third node that ranks high for this partition joins; the replaced one stays until
        // the newcomer is ready.
        let p = (0..100)
            .find(|&p| ideal(p, &live(&["a", "b", "c"]), 2).contains(&"c".to_string()))
            .unwrap();
        let mut a = next_step(p, None, &ab, 2).unwrap();
        ready(&mut a);
        let abc = live(&["a", "b", "c"]);
        let step = next_step(p, Some(&a), &abc, 2).unwrap();
        assert_eq!(step.replicas.len(), 3);
        assert_eq!(step.replica("c").unwrap().state, ReplicaState::Joining);
        assert!(next_step(p, Some(&step), &abc, 2).is_none());
        let mut caught_up = step.clone();
        caught_up.replica_mut("c").unwrap().state = ReplicaState::Ready;
        let done = next_step(p, Some(&caught_up), &abc, 2).unwrap();
        assert_eq!(done.replicas.len(), 2);
        assert!(done.replica("c").is_some());
        assert_eq!(done.epoch, caught_up.epoch + 1);
    }

    #[test]
    fn dead_replicas_are_replaced_but_the_last_full_copy_is_kept() {
        let ab = live(&["a", "b"]);
        let mut a = next_step(0, None, &ab, 2).unwrap();
        ready(&mut a);
        // b dies; c is live: b is removed (a is ready and live), c joins.
        let ac = live(&["a", "c"]);
        let step = next_step(0, Some(&a), &ac, 2).unwrap();
        assert!(step.replica("b").is_none());
        assert_eq!(step.replica("c").unwrap().state, ReplicaState::Joining);
        // Both ready replicas die: they are kept, and the live nodes join.
        let cd = live(&["c", "d"]);
        let step = next_step(0, Some(&a), &cd, 2).unwrap();
        assert!(step.replica("a").is_some() && step.replica("b").is_some());
        assert_eq!(step.replicas.len(), 4);
        // A dead joiner is dropped at once.
        let mut j = step.clone();
        j.replica_mut("c").unwrap().state = ReplicaState::Joining;
        let step = next_step(0, Some(&j), &live(&["d"]), 2).unwrap();
        assert!(step.replica("c").is_none());
        // Nobody live: nothing to do.
        assert!(next_step(0, None, &live(&[]), 2).is_none());
    }
}
