//! Per-pool selection state and the selection algorithms.
//!
//! Three families, following the RFC 5356 descriptions and RSPLIB (the
//! reference implementation by the RFC's authors):
//!
//! * **Ordered** (Round Robin, Priority, Least Used and their variants): sort
//!   members by a policy key, ties by a per-PE sequence number, and return the
//!   first `max`. Only the *first* returned PE is then moved to the end of its
//!   tie group ("the head is advanced by one element", RFC 5356 §4.1.2; RSPLIB
//!   `MaxIncrement` = 1). That gives round robin among equals, which RFC 5356
//!   §5.1.2 asks for when several PEs share the lowest load.
//! * **Smooth weighted round robin** (Weighted Round Robin, RFC 5356 §4.2):
//!   every call adds each PE's weight to its credit, the PE with the most
//!   credit is first and pays the total weight back. Over any window of
//!   `sum(weights)` calls on a stable pool each PE comes first exactly `weight`
//!   times, interleaved rather than in bursts.
//! * **Randomized** (Random, Weighted Random, Randomized Least Used and
//!   variants, RFC 5356 §4.3, §4.4, §5.4): draw without replacement with
//!   probability proportional to a per-PE weight.
//!
//! Degradation (RFC 5356 §5.2): each time a PE is handed out first its
//! degradation grows by its `load_degradation`; it is reset to 0 whenever the
//! PE re-registers (RSPLIB resets on every handlespace update of the PE), which
//! the registrar reports with [`PoolSelector::on_registration_update`]. A
//! change of the PE's policy parameters seen in `select` also resets it.

use std::collections::{HashMap, HashSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::wire::{PolicyError, PolicyParams, policy_type};
use crate::{Member, PeId};

/// Full load (100 %), RFC 5356 §3.1.
const FULL_LOAD: u64 = u32::MAX as u64;

/// How a policy turns members into an ordered answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Ordered,
    SmoothWeighted,
    Randomized,
}

fn family_of(policy_type: u32) -> Result<Family, PolicyError> {
    use policy_type::*;
    match policy_type {
        ROUND_ROBIN
        | PRIORITY
        | LEAST_USED
        | LEAST_USED_DEGRADATION
        | PRIORITY_LEAST_USED
        | PRIORITY_LEAST_USED_DEGRADATION
        | LEAST_USED_DPF
        | LEAST_USED_DEGRADATION_DPF => Ok(Family::Ordered),
        WEIGHTED_ROUND_ROBIN => Ok(Family::SmoothWeighted),
        RANDOM
        | WEIGHTED_RANDOM
        | RANDOMIZED_LEAST_USED
        | RANDOMIZED_PRIORITY_LEAST_USED
        | RANDOMIZED_LEAST_USED_DEGRADATION
        | RANDOMIZED_PRIORITY_LEAST_USED_DEGRADATION
        | WEIGHTED_RANDOM_DPF => Ok(Family::Randomized),
        other => Err(PolicyError::UnknownPolicyType(other)),
    }
}

/// What the selector remembers about one PE between calls.
#[derive(Debug, Clone)]
struct MemberState {
    /// Position in the round-robin order; lower goes first among equals.
    sequence: u64,
    /// Accumulated load degradation (RFC 5356 §5.2), same units as load.
    degradation: u32,
    /// Smooth weighted round robin credit.
    credit: i128,
    /// Parameters last seen, to notice re-registrations with new values.
    params: PolicyParams,
}

/// Selection state for one pool (registrar) or one cached pool list (PU).
///
/// Not thread-safe by itself; hold one per pool behind the caller's lock.
#[derive(Debug, Clone)]
pub struct PoolSelector {
    policy_type: u32,
    family: Family,
    rng: StdRng,
    next_sequence: u64,
    states: HashMap<PeId, MemberState>,
}

impl PoolSelector {
    /// Creates the selector for a pool using `policy_type`, with a seeded RNG
    /// so tests and simulations are reproducible. Production callers pass a
    /// random seed (e.g. `rand::random()`).
    pub fn new(policy_type: u32, seed: u64) -> Result<Self, PolicyError> {
        Ok(Self {
            policy_type,
            family: family_of(policy_type)?,
            rng: StdRng::seed_from_u64(seed),
            next_sequence: 0,
            states: HashMap::new(),
        })
    }

    /// Creates the selector for the policy a pool's first PE registered with.
    pub fn for_policy(params: &PolicyParams, seed: u64) -> Self {
        Self::new(params.policy_type(), seed)
            .expect("every PolicyParams variant has a selection algorithm")
    }

    /// The policy type this selector implements.
    pub fn policy_type(&self) -> u32 {
        self.policy_type
    }

    /// Returns at most `max` distinct PE ids from `members`, best first, and
    /// advances the pool state (round robin position, degradation, credit) for
    /// the first one only.
    ///
    /// Members whose parameters are of another policy type are never returned
    /// (the registrar rejects them at registration, RFC 5352 §3.1.3); a
    /// repeated id counts once, with its first parameters. An empty list or
    /// `max == 0` gives an empty answer.
    pub fn select(&mut self, members: &[Member], max: usize) -> Vec<PeId> {
        let candidates = self.admit(members);
        if max == 0 || candidates.is_empty() {
            return Vec::new();
        }
        match self.family {
            Family::Ordered => self.select_ordered(&candidates, max),
            Family::SmoothWeighted => self.select_smooth_weighted(&candidates, max),
            Family::Randomized => self.select_randomized(&candidates, max),
        }
    }

    /// Records that `id` was handed out (or used) as first choice: moves it
    /// behind its equals in the round robin order and adds its load
    /// degradation. [`select`](Self::select) already does this for its first
    /// result; call it only for a PE chosen some other way. Unknown ids
    /// (never seen by `select`) are ignored.
    pub fn on_selected(&mut self, id: PeId) {
        let sequence = self.take_sequence();
        if let Some(state) = self.states.get_mut(&id) {
            state.sequence = sequence;
            let step = state.params.degradation_step();
            state.degradation = state.degradation.saturating_add(step);
        }
    }

    /// The PE re-registered (or otherwise refreshed its entry): its degradation
    /// starts again from zero, as RSPLIB does on every update of a PE
    /// (RFC 5356 §5.2: degradation counts selections since the PE last
    /// reported its load).
    pub fn on_registration_update(&mut self, id: PeId) {
        if let Some(state) = self.states.get_mut(&id) {
            state.degradation = 0;
        }
    }

    /// The PE left the pool: drop its state so a later PE reusing the id
    /// starts fresh. (States of PEs missing from a `select` list are also
    /// pruned once they outnumber the live members.)
    pub fn forget(&mut self, id: PeId) {
        self.states.remove(&id);
    }

    /// Current accumulated degradation of a PE, for metrics and tests.
    pub fn degradation(&self, id: PeId) -> Option<u32> {
        self.states.get(&id).map(|state| state.degradation)
    }

    /// Preferred Primary failback check; see [`crate::failback_target`].
    pub fn failback_target(&self, current: PeId, members: &[Member]) -> Option<PeId> {
        crate::failback_target(current, members)
    }

    fn take_sequence(&mut self) -> u64 {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        sequence
    }

    /// Deduplicates and filters `members`, creates state for new PEs (at the
    /// end of the round robin order) and resets degradation of PEs whose
    /// parameters changed. Returns the candidates in list order.
    fn admit(&mut self, members: &[Member]) -> Vec<(PeId, PolicyParams)> {
        let mut seen = HashSet::with_capacity(members.len());
        let mut candidates = Vec::with_capacity(members.len());
        for member in members {
            if member.params.policy_type() != self.policy_type || !seen.insert(member.id) {
                continue;
            }
            match self.states.get_mut(&member.id) {
                Some(state) => {
                    if state.params != member.params {
                        state.params = member.params;
                        state.degradation = 0;
                    }
                }
                None => {
                    let sequence = self.take_sequence();
                    self.states.insert(
                        member.id,
                        MemberState {
                            sequence,
                            degradation: 0,
                            credit: 0,
                            params: member.params,
                        },
                    );
                }
            }
            candidates.push((member.id, member.params));
        }
        // Without pruning, a long-lived PU or registrar would keep state for
        // every PE that ever existed. Prune lazily so the common case stays O(n).
        if self.states.len() > 2 * seen.len() + 16 {
            self.states.retain(|id, _| seen.contains(id));
        }
        candidates
    }

    fn state(&self, id: PeId) -> &MemberState {
        &self.states[&id]
    }

    fn select_ordered(&mut self, candidates: &[(PeId, PolicyParams)], max: usize) -> Vec<PeId> {
        let mut keyed: Vec<(u64, u64, PeId)> = candidates
            .iter()
            .map(|&(id, params)| {
                let state = self.state(id);
                (ordering_key(&params, state.degradation), state.sequence, id)
            })
            .collect();
        let selected = smallest_sorted(&mut keyed, max);
        let result: Vec<PeId> = selected.iter().map(|&(_, _, id)| id).collect();
        self.on_selected(result[0]);
        result
    }

    fn select_smooth_weighted(
        &mut self,
        candidates: &[(PeId, PolicyParams)],
        max: usize,
    ) -> Vec<PeId> {
        let weighted: Vec<(PeId, i128)> = candidates
            .iter()
            .map(|&(id, params)| (id, i128::from(params.weight().unwrap_or(0))))
            .filter(|&(_, weight)| weight > 0)
            .collect();
        let total: i128 = weighted.iter().map(|&(_, weight)| weight).sum();
        if total == 0 {
            return Vec::new();
        }
        for &(id, weight) in &weighted {
            if let Some(state) = self.states.get_mut(&id) {
                state.credit += weight;
            }
        }
        // Ascending sort key: most credit first, then round robin position.
        let mut keyed: Vec<(i128, u64, PeId)> = weighted
            .iter()
            .map(|&(id, _)| {
                let state = self.state(id);
                (-state.credit, state.sequence, id)
            })
            .collect();
        let selected = smallest_sorted(&mut keyed, max);
        let result: Vec<PeId> = selected.iter().map(|&(_, _, id)| id).collect();
        if let Some(state) = self.states.get_mut(&result[0]) {
            state.credit -= total;
        }
        self.on_selected(result[0]);
        result
    }

    fn select_randomized(&mut self, candidates: &[(PeId, PolicyParams)], max: usize) -> Vec<PeId> {
        let mut pool: Vec<(PeId, u64)> = candidates
            .iter()
            .map(|&(id, params)| (id, random_weight(&params, self.state(id).degradation)))
            .filter(|&(_, weight)| weight > 0)
            .collect();
        let mut total: u64 = pool.iter().map(|&(_, weight)| weight).sum();
        let mut result = Vec::with_capacity(max.min(pool.len()));
        while result.len() < max && total > 0 {
            let mut target = self.rng.random_range(0..total);
            let index = pool
                .iter()
                .position(|&(_, weight)| {
                    if target < weight {
                        true
                    } else {
                        target -= weight;
                        false
                    }
                })
                .expect("target < total, so some member covers it");
            let (id, weight) = pool.swap_remove(index);
            total -= weight;
            result.push(id);
        }
        if let Some(&first) = result.first() {
            self.on_selected(first);
        }
        result
    }
}

/// Sorts the `k` smallest entries to the front and returns them in order.
/// Partial selection keeps a handle resolution O(n) in big pools.
fn smallest_sorted<T: Ord>(entries: &mut [T], k: usize) -> &[T] {
    let k = k.min(entries.len());
    if k < entries.len() {
        entries.select_nth_unstable(k);
    }
    let head = &mut entries[..k];
    head.sort_unstable();
    head
}

/// Sum of load-like values, capped at 100 % as RSPLIB does, so that all
/// overloaded PEs tie and are served round robin.
fn capped_load(parts: &[u64]) -> u64 {
    parts.iter().sum::<u64>().min(FULL_LOAD)
}

/// Distance penalty in load units: `distance × dpf`, where dpf is a fraction
/// of `0xffffffff` per distance unit (RSPLIB: `distance × dpf/MAX × MAX`).
fn distance_penalty(distance: u32, dpf: u32) -> u64 {
    (u64::from(distance) * u64::from(dpf)).min(FULL_LOAD)
}

/// Ascending key of the ordered policies.
fn ordering_key(params: &PolicyParams, degradation: u32) -> u64 {
    let degradation = u64::from(degradation);
    match *params {
        PolicyParams::RoundRobin => 0,
        // Descending priority via an ascending key.
        PolicyParams::Priority { priority } => u64::from(u32::MAX - priority),
        PolicyParams::LeastUsed { load } => u64::from(load),
        PolicyParams::LeastUsedDegradation { load, .. } => {
            capped_load(&[u64::from(load), degradation])
        }
        PolicyParams::PriorityLeastUsed {
            load,
            load_increment,
        } => capped_load(&[u64::from(load), u64::from(load_increment)]),
        PolicyParams::PriorityLeastUsedDegradation {
            load,
            load_degradation,
        } => capped_load(&[u64::from(load), u64::from(load_degradation), degradation]),
        PolicyParams::LeastUsedDpf {
            load,
            load_dpf,
            distance,
        } => capped_load(&[u64::from(load), distance_penalty(distance, load_dpf)]),
        PolicyParams::LeastUsedDegradationDpf {
            load,
            load_dpf,
            distance,
            ..
        } => capped_load(&[
            u64::from(load),
            degradation,
            distance_penalty(distance, load_dpf),
        ]),
        // Not an ordered policy; admit() only lets the selector's own type through.
        _ => 0,
    }
}

/// Selection weight of the randomized policies (0 = never selected).
fn random_weight(params: &PolicyParams, degradation: u32) -> u64 {
    // Spare capacity, at least 1 so a fully loaded pool still answers
    // (RSPLIB's getValueFraction does the same).
    let spare = |used: &[u64]| FULL_LOAD.saturating_sub(used.iter().sum::<u64>()).max(1);
    let degradation = u64::from(degradation);
    match *params {
        PolicyParams::Random => 1,
        PolicyParams::WeightedRandom { weight } => u64::from(weight),
        PolicyParams::RandomizedLeastUsed { load } => spare(&[u64::from(load)]),
        PolicyParams::RandomizedPriorityLeastUsed {
            load,
            load_increment,
        } => spare(&[u64::from(load), u64::from(load_increment)]),
        PolicyParams::RandomizedLeastUsedDegradation { load, .. } => {
            spare(&[u64::from(load), degradation])
        }
        PolicyParams::RandomizedPriorityLeastUsedDegradation {
            load,
            load_degradation,
        } => spare(&[u64::from(load), u64::from(load_degradation), degradation]),
        PolicyParams::WeightedRandomDpf {
            weight,
            weight_dpf,
            distance,
        } => {
            if weight == 0 {
                return 0;
            }
            // weight × (1 - distance × dpf), floored at 1 so a distant PE stays reachable.
            let penalty = u128::from(weight) * u128::from(distance) * u128::from(weight_dpf)
                / u128::from(u32::MAX);
            u64::try_from(u128::from(weight).saturating_sub(penalty))
                .unwrap_or(0)
                .max(1)
        }
        _ => 0,
    }
}
