//! Properties of pool member selection (RFC 5356 §4–5, RSPLIB Priority,
//! poolflow Preferred Primary). Every random stream is seeded, so a failure
//! reproduces exactly.

use std::collections::{HashMap, HashSet};

use policies::{Member, PeId, PolicyParams, PoolSelector, failback_target, policy_type};
use proptest::prelude::*;

const FULL_LOAD: u32 = u32::MAX;

/// Members with ids 1..=n and params built per index.
fn members(n: usize, params: impl Fn(usize) -> PolicyParams) -> Vec<Member> {
    (0..n)
        .map(|index| Member {
            id: index as PeId + 1,
            params: params(index),
        })
        .collect()
}

/// Params of `policy_type` with `value` in the first field and `second` in
/// the others, whatever the layout's field count.
fn params_of_type(policy_type: u32, value: u32, second: u32) -> PolicyParams {
    (0..=4)
        .find_map(|field_count| {
            let mut bytes = policy_type.to_be_bytes().to_vec();
            for index in 0..field_count {
                let field = if index == 0 { value } else { second };
                bytes.extend_from_slice(&field.to_be_bytes());
            }
            PolicyParams::decode(&bytes).ok()
        })
        .unwrap_or_else(|| panic!("no layout for {policy_type:#x}"))
}

const ALL_TYPES: [u32; 16] = [
    0x0000_0001,
    0x0000_0002,
    0x0000_0003,
    0x0000_0004,
    0x0000_0005,
    0x4000_0001,
    0x4000_0002,
    0x4000_0003,
    0x4000_0004,
    0xb000_1001,
    0xb000_1002,
    0xb000_1003,
    0xb000_1004,
    0xb000_2001,
    0xb000_2002,
    0xb000_2003,
];

/// 5-sigma tolerance on a binomial count: with fixed seeds a correct
/// implementation essentially never trips it, a wrong distribution does.
fn assert_frequency(observed: u64, draws: u64, probability: f64, what: &str) {
    let expected = draws as f64 * probability;
    let sigma = (draws as f64 * probability * (1.0 - probability)).sqrt();
    assert!(
        (observed as f64 - expected).abs() <= 5.0 * sigma + 1.0,
        "{what}: observed {observed}, expected {expected:.1} ± {:.1}",
        5.0 * sigma
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Never a PE outside the list, never twice, never more than max, and
    /// never fewer than min(max, selectable members).
    #[test]
    fn answers_are_distinct_members_within_max(
        type_index in 0..ALL_TYPES.len(),
        values in proptest::collection::vec((any::<u32>(), any::<u32>()), 0..12),
        max in 0usize..6,
        calls in 1usize..20,
        seed in any::<u64>(),
    ) {
        let policy = ALL_TYPES[type_index];
        let pool: Vec<Member> = values
            .iter()
            .enumerate()
            .map(|(index, &(a, b))| Member {
                id: 100 + index as PeId,
                params: params_of_type(policy, a, b),
            })
            .collect();
        let ids: HashSet<PeId> = pool.iter().map(|m| m.id).collect();
        let selectable = pool
            .iter()
            .filter(|m| m.params.weight() != Some(0))
            .count();
        let mut selector = PoolSelector::new(policy, seed).unwrap();
        for _ in 0..calls {
            let answer = selector.select(&pool, max);
            prop_assert!(answer.len() <= max);
            prop_assert_eq!(answer.len(), max.min(selectable));
            prop_assert!(answer.iter().all(|id| ids.contains(id)));
            let distinct: HashSet<_> = answer.iter().collect();
            prop_assert_eq!(distinct.len(), answer.len());
        }
    }

    /// Least Used: the answer is sorted by load, so the first has minimum load.
    #[test]
    fn least_used_picks_a_minimum_load_member(
        loads in proptest::collection::vec(0u32..5, 1..10),
        calls in 1usize..10,
        seed in any::<u64>(),
    ) {
        let pool = members(loads.len(), |i| PolicyParams::LeastUsed { load: loads[i] });
        let load_of: HashMap<PeId, u32> = pool.iter().map(|m| (m.id, loads[m.id as usize - 1])).collect();
        let minimum = *loads.iter().min().unwrap();
        let mut selector = PoolSelector::new(policy_type::LEAST_USED, seed).unwrap();
        for _ in 0..calls {
            let answer = selector.select(&pool, 3);
            prop_assert_eq!(load_of[&answer[0]], minimum);
            let answer_loads: Vec<u32> = answer.iter().map(|id| load_of[id]).collect();
            prop_assert!(answer_loads.windows(2).all(|w| w[0] <= w[1]), "{:?}", answer_loads);
        }
    }

    /// Least Used ties are resolved round robin: k rounds over the minimum-load
    /// group give each member of it exactly k first places.
    #[test]
    fn least_used_rotates_among_equal_minimum_loads(
        loads in proptest::collection::vec(0u32..3, 1..8),
        rounds in 1usize..5,
    ) {
        let pool = members(loads.len(), |i| PolicyParams::LeastUsed { load: loads[i] });
        let minimum = *loads.iter().min().unwrap();
        let group: Vec<PeId> = pool.iter().filter(|m| m.params.load() == Some(minimum)).map(|m| m.id).collect();
        let mut selector = PoolSelector::new(policy_type::LEAST_USED, 0).unwrap();
        let mut firsts: HashMap<PeId, usize> = HashMap::new();
        for _ in 0..rounds * group.len() {
            *firsts.entry(selector.select(&pool, 1)[0]).or_default() += 1;
        }
        for id in group {
            prop_assert_eq!(firsts.get(&id).copied().unwrap_or(0), rounds);
        }
    }

    /// Round Robin: n consecutive calls put every member first once.
    #[test]
    fn round_robin_visits_all_members_evenly(n in 1usize..12, rounds in 1usize..5, max in 1usize..4) {
        let pool = members(n, |_| PolicyParams::RoundRobin);
        let mut selector = PoolSelector::new(policy_type::ROUND_ROBIN, 0).unwrap();
        for _ in 0..rounds {
            let mut firsts = HashSet::new();
            for _ in 0..n {
                firsts.insert(selector.select(&pool, max)[0]);
            }
            prop_assert_eq!(firsts.len(), n);
        }
    }

    /// Weighted Round Robin: over k × sum(weights) calls each member is first
    /// exactly k × weight times; weight 0 is never first.
    #[test]
    fn weighted_round_robin_matches_weights_exactly(
        weights in proptest::collection::vec(0u32..8, 1..7),
        rounds in 1u64..4,
    ) {
        let pool = members(weights.len(), |i| PolicyParams::WeightedRoundRobin { weight: weights[i] });
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let mut selector = PoolSelector::new(policy_type::WEIGHTED_ROUND_ROBIN, 0).unwrap();
        let mut firsts: HashMap<PeId, u64> = HashMap::new();
        for _ in 0..rounds * total {
            let answer = selector.select(&pool, 2);
            *firsts.entry(answer[0]).or_default() += 1;
        }
        for member in &pool {
            let expected = rounds * u64::from(member.params.weight().unwrap());
            prop_assert_eq!(firsts.get(&member.id).copied().unwrap_or(0), expected);
        }
        if total == 0 {
            prop_assert!(selector.select(&pool, 3).is_empty());
        }
    }

    /// Weighted Random: first-choice frequencies follow the weights.
    #[test]
    fn weighted_random_frequencies_match_weights(
        weights in proptest::collection::vec(0u32..10, 2..6),
        seed in any::<u64>(),
    ) {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        prop_assume!(total > 0);
        let pool = members(weights.len(), |i| PolicyParams::WeightedRandom { weight: weights[i] });
        let mut selector = PoolSelector::new(policy_type::WEIGHTED_RANDOM, seed).unwrap();
        let draws = 20_000u64;
        let mut firsts: HashMap<PeId, u64> = HashMap::new();
        for _ in 0..draws {
            *firsts.entry(selector.select(&pool, 1)[0]).or_default() += 1;
        }
        for member in &pool {
            let weight = u64::from(member.params.weight().unwrap());
            let observed = firsts.get(&member.id).copied().unwrap_or(0);
            if weight == 0 {
                prop_assert_eq!(observed, 0);
            } else {
                assert_frequency(observed, draws, weight as f64 / total as f64, &format!("PE {}", member.id));
            }
        }
    }

    /// Priority: the answer is sorted by descending priority, and first places
    /// rotate evenly among the top-priority members.
    #[test]
    fn priority_is_highest_first_and_rotates_among_equals(
        priorities in proptest::collection::vec(0u32..4, 1..9),
        rounds in 1usize..4,
    ) {
        let pool = members(priorities.len(), |i| PolicyParams::Priority { priority: priorities[i] });
        let top = *priorities.iter().max().unwrap();
        let top_group: Vec<PeId> = pool.iter().filter(|m| m.params.priority() == Some(top)).map(|m| m.id).collect();
        let priority_of = |id: &PeId| priorities[*id as usize - 1];
        let mut selector = PoolSelector::new(policy_type::PRIORITY, 0).unwrap();
        let mut firsts: HashMap<PeId, usize> = HashMap::new();
        for _ in 0..rounds * top_group.len() {
            let answer = selector.select(&pool, 3);
            prop_assert_eq!(priority_of(&answer[0]), top);
            let answer_priorities: Vec<u32> = answer.iter().map(priority_of).collect();
            prop_assert!(answer_priorities.windows(2).all(|w| w[0] >= w[1]), "{:?}", answer_priorities);
            *firsts.entry(answer[0]).or_default() += 1;
        }
        for id in top_group {
            prop_assert_eq!(firsts.get(&id).copied().unwrap_or(0), rounds);
        }
    }

    /// Preferred Primary: failback is reported exactly when some member has a
    /// strictly higher priority than the current PE, and it names a
    /// highest-priority member.
    #[test]
    fn failback_exactly_when_a_higher_priority_member_exists(
        priorities in proptest::collection::vec(0u32..5, 1..9),
        current_index in any::<prop::sample::Index>(),
    ) {
        let pool = members(priorities.len(), |i| PolicyParams::Priority { priority: priorities[i] });
        let current = pool[current_index.index(pool.len())];
        let current_priority = current.params.priority().unwrap();
        let top = *priorities.iter().max().unwrap();
        let target = failback_target(current.id, &pool);
        prop_assert_eq!(target.is_some(), top > current_priority);
        if let Some(target) = target {
            prop_assert_ne!(target, current.id);
            prop_assert_eq!(priorities[target as usize - 1], top);
        }
        let selector = PoolSelector::new(policy_type::PRIORITY, 0).unwrap();
        prop_assert_eq!(selector.failback_target(current.id, &pool), target);
    }
}

#[test]
fn failback_ignores_a_current_pe_that_left_the_pool() {
    let pool = members(2, |i| PolicyParams::Priority { priority: i as u32 });
    // PE 99 is gone: that is a failover, not a failback.
    assert_eq!(failback_target(99, &pool), None);
    // On the top PE already: nothing to do.
    assert_eq!(failback_target(2, &pool), None);
    assert_eq!(failback_target(1, &pool), Some(2));
}

#[test]
fn failback_prefers_lowest_id_among_equal_top_priorities() {
    let pool = [
        Member {
            id: 9,
            params: PolicyParams::Priority { priority: 1 },
        },
        Member {
            id: 7,
            params: PolicyParams::Priority { priority: 5 },
        },
        Member {
            id: 3,
            params: PolicyParams::Priority { priority: 5 },
        },
    ];
    assert_eq!(failback_target(9, &pool), Some(3));
}

#[test]
fn least_used_with_degradation_spreads_between_load_updates_and_resets() {
    let degradation = FULL_LOAD / 10; // +10 % per selection
    let pool = vec![
        Member {
            id: 1,
            params: PolicyParams::LeastUsedDegradation {
                load: 0,
                load_degradation: degradation,
            },
        },
        Member {
            id: 2,
            params: PolicyParams::LeastUsedDegradation {
                load: FULL_LOAD / 4, // 25 %
                load_degradation: degradation,
            },
        },
    ];
    let mut selector = PoolSelector::new(policy_type::LEAST_USED_DEGRADATION, 0).unwrap();
    // PE 1 (0 %) wins three times (0, 10, 20 % < 25 %), then 30 % > 25 %.
    let firsts: Vec<PeId> = (0..4).map(|_| selector.select(&pool, 1)[0]).collect();
    assert_eq!(firsts, vec![1, 1, 1, 2]);
    assert_eq!(selector.degradation(1), Some(3 * degradation));
    assert_eq!(selector.degradation(2), Some(degradation));
    // PE 1 re-registers: its degradation is gone, it wins again.
    selector.on_registration_update(1);
    assert_eq!(selector.degradation(1), Some(0));
    assert_eq!(selector.select(&pool, 1), vec![1]);
    // A changed load in the list also counts as an update.
    let mut updated = pool.clone();
    updated[1].params = PolicyParams::LeastUsedDegradation {
        load: 0,
        load_degradation: degradation,
    };
    // PE 2 drops from 10 % degradation to 0, wins (0 % < PE 1's 10 %) and
    // carries exactly one step: without the reset it would carry two.
    assert_eq!(selector.select(&updated, 1), vec![2]);
    assert_eq!(selector.degradation(2), Some(degradation));
}

#[test]
fn priority_least_used_ranks_by_load_plus_increment() {
    let pool = vec![
        Member {
            id: 1,
            params: PolicyParams::PriorityLeastUsed {
                load: 10,
                load_increment: 50,
            },
        },
        Member {
            id: 2,
            params: PolicyParams::PriorityLeastUsed {
                load: 30,
                load_increment: 20,
            },
        },
        Member {
            id: 3,
            params: PolicyParams::PriorityLeastUsed {
                load: 20,
                load_increment: 35,
            },
        },
    ];
    let mut selector = PoolSelector::new(policy_type::PRIORITY_LEAST_USED, 0).unwrap();
    assert_eq!(selector.select(&pool, 3), vec![2, 3, 1]);
    // PLU has no degradation: the same answer again.
    assert_eq!(selector.select(&pool, 3), vec![2, 3, 1]);
}

#[test]
fn randomized_least_used_favours_spare_capacity() {
    // Spare capacity 100 % vs 25 %: first places about 4 : 1.
    let pool = vec![
        Member {
            id: 1,
            params: PolicyParams::RandomizedLeastUsed { load: 0 },
        },
        Member {
            id: 2,
            params: PolicyParams::RandomizedLeastUsed {
                load: FULL_LOAD / 4 * 3,
            },
        },
    ];
    let mut selector = PoolSelector::new(policy_type::RANDOMIZED_LEAST_USED, 7).unwrap();
    let draws = 20_000;
    let ones = (0..draws)
        .filter(|_| selector.select(&pool, 1)[0] == 1)
        .count() as u64;
    assert_frequency(ones, draws, 0.8, "idle PE");
}

#[test]
fn fully_loaded_randomized_pool_still_answers() {
    let pool = members(3, |_| PolicyParams::RandomizedLeastUsed { load: FULL_LOAD });
    let mut selector = PoolSelector::new(policy_type::RANDOMIZED_LEAST_USED, 1).unwrap();
    assert_eq!(selector.select(&pool, 3).len(), 3);
}

#[test]
fn random_is_uniform() {
    let pool = members(4, |_| PolicyParams::Random);
    let mut selector = PoolSelector::new(policy_type::RANDOM, 99).unwrap();
    let draws = 20_000;
    let mut firsts: HashMap<PeId, u64> = HashMap::new();
    for _ in 0..draws {
        *firsts.entry(selector.select(&pool, 2)[0]).or_default() += 1;
    }
    for id in 1..=4 {
        assert_frequency(firsts[&id], draws, 0.25, &format!("PE {id}"));
    }
}

#[test]
fn same_seed_gives_same_answers() {
    let pool = members(6, |i| PolicyParams::WeightedRandom {
        weight: i as u32 + 1,
    });
    let mut first = PoolSelector::new(policy_type::WEIGHTED_RANDOM, 5).unwrap();
    let mut second = PoolSelector::new(policy_type::WEIGHTED_RANDOM, 5).unwrap();
    let mut other = PoolSelector::new(policy_type::WEIGHTED_RANDOM, 6).unwrap();
    let run = |selector: &mut PoolSelector| -> Vec<Vec<PeId>> {
        (0..50).map(|_| selector.select(&pool, 3)).collect()
    };
    let first_run = run(&mut first);
    assert_eq!(first_run, run(&mut second));
    assert_ne!(first_run, run(&mut other));
}

#[test]
fn members_of_another_policy_and_duplicates_are_skipped() {
    let pool = vec![
        Member {
            id: 1,
            params: PolicyParams::LeastUsed { load: 5 },
        },
        Member {
            id: 2,
            params: PolicyParams::RoundRobin,
        },
        Member {
            id: 1,
            params: PolicyParams::LeastUsed { load: 0 },
        },
        Member {
            id: 3,
            params: PolicyParams::LeastUsed { load: 9 },
        },
    ];
    let mut selector = PoolSelector::new(policy_type::LEAST_USED, 0).unwrap();
    assert_eq!(selector.select(&pool, 5), vec![1, 3]);
}

#[test]
fn unknown_policy_type_is_rejected() {
    assert!(PoolSelector::new(0x4000_0005, 0).is_err());
    assert!(PoolSelector::new(0, 0).is_err());
}

#[test]
fn new_members_join_the_round_robin_at_the_end() {
    let mut pool = members(2, |_| PolicyParams::RoundRobin);
    let mut selector = PoolSelector::new(policy_type::ROUND_ROBIN, 0).unwrap();
    assert_eq!(selector.select(&pool, 3), vec![1, 2]);
    pool.push(Member {
        id: 3,
        params: PolicyParams::RoundRobin,
    });
    assert_eq!(selector.select(&pool, 3), vec![2, 1, 3]);
    assert_eq!(selector.select(&pool, 3), vec![1, 3, 2]);
    assert_eq!(selector.select(&pool, 3), vec![3, 2, 1]);
    // A PE that leaves and comes back starts at the end again.
    selector.forget(2);
    assert_eq!(selector.select(&pool, 3), vec![1, 3, 2]);
}

#[test]
fn distance_penalty_pushes_far_pes_back() {
    // LU-DPF: 10 % load far away loses against 20 % load nearby.
    let dpf = FULL_LOAD / 100; // 1 % per distance unit
    let pool = vec![
        Member {
            id: 1,
            params: PolicyParams::LeastUsedDpf {
                load: FULL_LOAD / 10,
                load_dpf: dpf,
                distance: 50,
            },
        },
        Member {
            id: 2,
            params: PolicyParams::LeastUsedDpf {
                load: FULL_LOAD / 5,
                load_dpf: dpf,
                distance: 1,
            },
        },
    ];
    let mut selector = PoolSelector::new(policy_type::LEAST_USED_DPF, 0).unwrap();
    assert_eq!(selector.select(&pool, 2), vec![2, 1]);
}
