//! The indexed `PoolSelector` against a straightforward model of the
//! selection rules (sort every member on every call, as the first version of
//! the crate did), through both ways of keeping the member set: whole lists
//! given to `select`, and `insert` / `remove` / `select_top`.

use std::collections::{HashMap, HashSet};

use policies::{Member, PeId, PolicyParams, PoolSelector, policy_type};
use proptest::prelude::*;

const FULL_LOAD: u64 = u32::MAX as u64;

#[derive(Debug, Clone)]
struct ModelState {
    sequence: u64,
    degradation: u32,
    credit: i128,
    params: PolicyParams,
}

/// Round Robin, Priority, Least Used, Least Used with Degradation and
/// Weighted Round Robin by the book: O(n log n) per call, no index.
#[derive(Debug, Default)]
struct Model {
    policy_type: u32,
    next_sequence: u64,
    states: HashMap<PeId, ModelState>,
}

impl Model {
    fn new(policy_type: u32) -> Self {
        Self {
            policy_type,
            ..Self::default()
        }
    }

    fn take_sequence(&mut self) -> u64 {
        self.next_sequence += 1;
        self.next_sequence
    }

    fn select(&mut self, members: &[Member], max: usize) -> Vec<PeId> {
        let mut seen = HashSet::new();
        let mut candidates = Vec::new();
        for member in members {
            if member.params.policy_type() != self.policy_type || !seen.insert(member.id) {
                continue;
            }
            match self.states.get_mut(&member.id) {
                Some(state) if state.params != member.params => {
                    state.params = member.params;
                    state.degradation = 0;
                }
                Some(_) => {}
                None => {
                    let sequence = self.take_sequence();
                    self.states.insert(
                        member.id,
                        ModelState {
                            sequence,
                            degradation: 0,
                            credit: 0,
                            params: member.params,
                        },
                    );
                }
            }
            candidates.push(member.id);
        }
        if self.states.len() > 2 * seen.len() + 16 {
            self.states.retain(|id, _| seen.contains(id));
        }
        if max == 0 || candidates.is_empty() {
            return Vec::new();
        }
        if self.policy_type == policy_type::WEIGHTED_ROUND_ROBIN {
            return self.select_weighted_round_robin(&candidates, max);
        }
        let mut ranked: Vec<(u64, u64, PeId)> = candidates
            .iter()
            .map(|id| {
                let state = &self.states[id];
                (ordering_key(state), state.sequence, *id)
            })
            .collect();
        ranked.sort_unstable();
        let answer: Vec<PeId> = ranked.iter().take(max).map(|&(_, _, id)| id).collect();
        self.on_selected(answer[0]);
        answer
    }

    fn select_weighted_round_robin(&mut self, candidates: &[PeId], max: usize) -> Vec<PeId> {
        let mut total = 0;
        let mut ranked = Vec::new();
        for id in candidates {
            let state = self.states.get_mut(id).unwrap();
            let weight = i128::from(state.params.weight().unwrap());
            if weight > 0 {
                state.credit += weight;
                total += weight;
                ranked.push((-state.credit, state.sequence, *id));
            }
        }
        if total == 0 {
            return Vec::new();
        }
        ranked.sort_unstable();
        let answer: Vec<PeId> = ranked.iter().take(max).map(|&(_, _, id)| id).collect();
        self.states.get_mut(&answer[0]).unwrap().credit -= total;
        self.on_selected(answer[0]);
        answer
    }

    fn on_selected(&mut self, id: PeId) {
        let sequence = self.take_sequence();
        if let Some(state) = self.states.get_mut(&id) {
            state.sequence = sequence;
            let step = match state.params {
                PolicyParams::LeastUsedDegradation {
                    load_degradation, ..
                } => load_degradation,
                _ => 0,
            };
            state.degradation = state.degradation.saturating_add(step);
        }
    }

    fn on_registration_update(&mut self, id: PeId) {
        if let Some(state) = self.states.get_mut(&id) {
            state.degradation = 0;
        }
    }

    fn forget(&mut self, id: PeId) {
        self.states.remove(&id);
    }

    fn degradation(&self, id: PeId) -> Option<u32> {
        self.states.get(&id).map(|state| state.degradation)
    }
}

fn ordering_key(state: &ModelState) -> u64 {
    match state.params {
        PolicyParams::RoundRobin | PolicyParams::WeightedRoundRobin { .. } => 0,
        PolicyParams::Priority { priority } => u64::from(u32::MAX - priority),
        PolicyParams::LeastUsed { load } => u64::from(load),
        PolicyParams::LeastUsedDegradation { load, .. } => {
            (u64::from(load) + u64::from(state.degradation)).min(FULL_LOAD)
        }
        other => panic!("model does not cover {other:?}"),
    }
}

const MODELLED_TYPES: [u32; 5] = [
    policy_type::ROUND_ROBIN,
    policy_type::PRIORITY,
    policy_type::LEAST_USED,
    policy_type::LEAST_USED_DEGRADATION,
    policy_type::WEIGHTED_ROUND_ROBIN,
];

/// Small values so that ties (the round robin part) are common; degradation
/// steps large enough to overtake other loads within a few selections.
fn params_for(policy: u32, value: u8) -> PolicyParams {
    let value = u32::from(value % 4);
    match policy {
        policy_type::ROUND_ROBIN => PolicyParams::RoundRobin,
        policy_type::PRIORITY => PolicyParams::Priority { priority: value },
        policy_type::LEAST_USED => PolicyParams::LeastUsed { load: value },
        policy_type::LEAST_USED_DEGRADATION => PolicyParams::LeastUsedDegradation {
            load: value * (u32::MAX / 8),
            load_degradation: u32::MAX / 10,
        },
        policy_type::WEIGHTED_ROUND_ROBIN => PolicyParams::WeightedRoundRobin { weight: value },
        other => panic!("unexpected policy {other:#x}"),
    }
}

/// What happens to a pool between two resolutions.
#[derive(Debug, Clone)]
enum Step {
    /// Registration or re-registration of PE `id` with a parameter value
    /// (degradation restarts, as the registrar reports every registration).
    Register { id: PeId, value: u8 },
    /// The PE leaves.
    Remove { id: PeId },
    /// A re-registration with unchanged parameters (degradation reset).
    Refresh { id: PeId },
    /// A PE chosen by other means.
    Selected { id: PeId },
    /// Handle resolution.
    Resolve { max: usize },
}

fn step() -> impl Strategy<Value = Step> {
    let id = 0u32..12;
    prop_oneof![
        3 => (id.clone(), any::<u8>()).prop_map(|(id, value)| Step::Register { id, value }),
        1 => id.clone().prop_map(|id| Step::Remove { id }),
        1 => id.clone().prop_map(|id| Step::Refresh { id }),
        1 => id.prop_map(|id| Step::Selected { id }),
        4 => (0usize..5).prop_map(|max| Step::Resolve { max }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The registrar's way (a member list kept in registration order) through
    /// `select`, and through `insert`/`remove`/`select_top`, both give the
    /// model's answers and degradations.
    #[test]
    fn incremental_and_whole_list_selection_match_the_model(
        type_index in 0..MODELLED_TYPES.len(),
        steps in proptest::collection::vec(step(), 1..80),
    ) {
        let policy = MODELLED_TYPES[type_index];
        let mut model = Model::new(policy);
        let mut whole_list = PoolSelector::new(policy, 0).unwrap();
        let mut incremental = PoolSelector::new(policy, 0).unwrap();
        let mut list: Vec<Member> = Vec::new();
        for step in steps {
            match step {
                Step::Register { id, value } => {
                    let member = Member { id, params: params_for(policy, value) };
                    match list.iter_mut().find(|m| m.id == id) {
                        Some(existing) => *existing = member,
                        None => list.push(member),
                    }
                    prop_assert!(incremental.insert(member));
                    // As the registrar does after every registration.
                    model.on_registration_update(id);
                    whole_list.on_registration_update(id);
                    incremental.on_registration_update(id);
                }
                Step::Remove { id } => {
                    list.retain(|m| m.id != id);
                    model.forget(id);
                    whole_list.forget(id);
                    incremental.remove(id);
                }
                Step::Refresh { id } => {
                    model.on_registration_update(id);
                    whole_list.on_registration_update(id);
                    incremental.on_registration_update(id);
                }
                Step::Selected { id } => {
                    // The whole-list selector learns of registrations only in
                    // `select`; `max == 0` makes it look without selecting.
                    model.select(&list, 0);
                    whole_list.select(&list, 0);
                    model.on_selected(id);
                    whole_list.on_selected(id);
                    incremental.on_selected(id);
                }
                Step::Resolve { max } => {
                    let expected = model.select(&list, max);
                    prop_assert_eq!(&whole_list.select(&list, max), &expected);
                    prop_assert_eq!(&incremental.select_top(max), &expected);
                    prop_assert_eq!(incremental.len(), list.len());
                }
            }
            for id in 0..12 {
                prop_assert_eq!(whole_list.degradation(id), model.degradation(id));
            }
        }
    }

    /// Arbitrary lists for `select`: duplicates, other policy types, PEs
    /// dropping out and coming back (their state is kept until pruned).
    #[test]
    fn whole_list_selection_matches_the_model_for_any_lists(
        type_index in 0..MODELLED_TYPES.len(),
        calls in proptest::collection::vec(
            (proptest::collection::vec((0u32..40, any::<u8>(), any::<bool>()), 0..30), 0usize..5),
            1..40,
        ),
    ) {
        let policy = MODELLED_TYPES[type_index];
        let other_policy = if policy == policy_type::ROUND_ROBIN {
            PolicyParams::Random
        } else {
            PolicyParams::RoundRobin
        };
        let mut model = Model::new(policy);
        let mut selector = PoolSelector::new(policy, 0).unwrap();
        for (entries, max) in calls {
            let list: Vec<Member> = entries
                .iter()
                .map(|&(id, value, foreign)| Member {
                    id,
                    params: if foreign { other_policy } else { params_for(policy, value) },
                })
                .collect();
            // Twice: the second call takes the unchanged-list path.
            for _ in 0..2 {
                prop_assert_eq!(selector.select(&list, max), model.select(&list, max));
            }
            for id in 0..40 {
                prop_assert_eq!(selector.degradation(id), model.degradation(id));
            }
        }
    }

    /// Randomized policies kept incrementally: answers are distinct live
    /// members with positive weight, as many as possible up to `max`.
    #[test]
    fn incremental_randomized_answers_are_live_members(
        policy in prop::sample::select(vec![
            policy_type::RANDOM,
            policy_type::WEIGHTED_RANDOM,
            policy_type::RANDOMIZED_LEAST_USED,
            policy_type::RANDOMIZED_LEAST_USED_DEGRADATION,
        ]),
        steps in proptest::collection::vec((0u32..20, 0u32..4, any::<bool>(), 0usize..6), 1..100),
        seed in any::<u64>(),
    ) {
        let mut selector = PoolSelector::new(policy, seed).unwrap();
        let mut live: HashMap<PeId, PolicyParams> = HashMap::new();
        for (id, value, leaves, max) in steps {
            if leaves {
                selector.remove(id);
                live.remove(&id);
            } else {
                let params = match policy {
                    policy_type::RANDOM => PolicyParams::Random,
                    policy_type::WEIGHTED_RANDOM => PolicyParams::WeightedRandom { weight: value },
                    policy_type::RANDOMIZED_LEAST_USED => PolicyParams::RandomizedLeastUsed {
                        load: value * (u32::MAX / 3),
                    },
                    _ => PolicyParams::RandomizedLeastUsedDegradation {
                        load: value * (u32::MAX / 4),
                        load_degradation: u32::MAX / 3,
                    },
                };
                selector.insert(Member { id, params });
                live.insert(id, params);
            }
            let selectable = live.values().filter(|params| params.weight() != Some(0)).count();
            let answer = selector.select_top(max);
            prop_assert_eq!(answer.len(), max.min(selectable));
            prop_assert!(answer.iter().all(|id| live.contains_key(id)));
            prop_assert_eq!(answer.iter().collect::<HashSet<_>>().len(), answer.len());
        }
    }
}

/// After removals and re-insertions (slots recycled, weights changed), first
/// places still follow the weights of the current members only.
#[test]
fn incremental_weighted_random_follows_current_weights() {
    let mut selector = PoolSelector::new(policy_type::WEIGHTED_RANDOM, 3).unwrap();
    for id in 0..50 {
        selector.insert(Member {
            id,
            params: PolicyParams::WeightedRandom { weight: 7 },
        });
    }
    for id in 0..48 {
        selector.remove(id);
    }
    let weights = [(48, 1u32), (49, 2), (100, 0), (101, 5)];
    for (id, weight) in weights {
        selector.insert(Member {
            id,
            params: PolicyParams::WeightedRandom { weight },
        });
    }
    let draws = 40_000u64;
    let mut firsts: HashMap<PeId, u64> = HashMap::new();
    for _ in 0..draws {
        *firsts.entry(selector.select_top(2)[0]).or_default() += 1;
    }
    let total: u32 = weights.iter().map(|&(_, weight)| weight).sum();
    assert_eq!(
        firsts.len(),
        3,
        "only the current, weighted PEs: {firsts:?}"
    );
    for (id, weight) in weights {
        let probability = f64::from(weight) / f64::from(total);
        let expected = draws as f64 * probability;
        let sigma = (draws as f64 * probability * (1.0 - probability)).sqrt();
        let observed = firsts.get(&id).copied().unwrap_or(0) as f64;
        assert!(
            (observed - expected).abs() <= 5.0 * sigma + 1.0,
            "PE {id}: observed {observed}, expected {expected:.0}"
        );
    }
}

#[test]
fn insert_rejects_another_policy_and_select_replaces_the_member_set() {
    let mut selector = PoolSelector::new(policy_type::ROUND_ROBIN, 0).unwrap();
    assert!(!selector.insert(Member {
        id: 1,
        params: PolicyParams::Random,
    }));
    assert!(selector.is_empty());
    for id in [1, 2, 3] {
        assert!(selector.insert(Member {
            id,
            params: PolicyParams::RoundRobin,
        }));
    }
    assert_eq!(selector.select_top(3), vec![1, 2, 3]);
    // A whole list wins over what was inserted.
    let list = [Member {
        id: 3,
        params: PolicyParams::RoundRobin,
    }];
    assert_eq!(selector.select(&list, 3), vec![3]);
    assert_eq!(selector.len(), 1);
    assert_eq!(selector.select_top(3), vec![3]);
}
