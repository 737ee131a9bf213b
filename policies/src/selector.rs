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
//! change of the PE's policy parameters (seen by `select` or `insert`) also
//! resets it.
//!
//! # Keeping the member set
//!
//! The selector holds the pool's current member set and a per-policy index
//! over it, so that answering costs O(`max` · log n) instead of O(n):
//!
//! * Ordered family: a `BTreeMap` keyed by (policy key, sequence); the answer
//!   is its first `max` entries and only the first PE is re-keyed.
//! * Randomized family: a Fenwick tree of selection weights; each draw is a
//!   prefix-sum descent.
//! * Smooth weighted round robin stays O(n) per call: every call changes
//!   every credit, so there is nothing to keep sorted.
//!
//! Callers keep that set up to date in one of two ways:
//!
//! * **Incremental** (registrar): [`PoolSelector::insert`] on every
//!   registration or re-registration, [`PoolSelector::remove`] when a PE
//!   leaves, [`PoolSelector::select_top`] to answer.
//! * **Whole list** (pool users with a small cached list, older callers):
//!   [`PoolSelector::select`] with the full list each time. It replaces the
//!   set with the list; when the list is identical to the previous call's,
//!   that check is a plain O(n) comparison with no hashing, otherwise it
//!   costs one hash lookup per PE.
//!
//! Both give the same answers for the same history of member sets.

use std::collections::{BTreeMap, HashMap};

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

/// Whether a slot's PE can be selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotStatus {
    /// Unused, waiting in `free_slots`.
    Free,
    /// A PE missing from the last [`PoolSelector::select`] list. Its state is
    /// kept, as before, so that a PE dropping out of one list and back into
    /// the next resumes its round robin position and degradation.
    Dormant,
    /// In the member set and in the policy index.
    Active,
}

/// What the selector remembers about one PE between calls.
#[derive(Debug, Clone)]
struct Slot {
    id: PeId,
    /// Parameters last seen, to notice re-registrations with new values.
    params: PolicyParams,
    /// Position in the round-robin order; lower goes first among equals.
    /// Unique per selector, so it alone breaks every tie.
    sequence: u64,
    /// Accumulated load degradation (RFC 5356 §5.2), same units as load.
    degradation: u32,
    /// Smooth weighted round robin credit.
    credit: i128,
    status: SlotStatus,
    /// Last list synchronisation that saw this PE: spots duplicates within a
    /// list and PEs absent from it without a per-call set.
    seen_in_sync: u64,
}

impl Slot {
    fn ordered_key(&self) -> (u64, u64) {
        (ordering_key(&self.params, self.degradation), self.sequence)
    }
}

/// The per-policy structure over the active slots.
#[derive(Debug, Clone)]
enum PolicyIndex {
    /// Active slots by (policy key, sequence): the first entry is the best PE.
    Ordered(BTreeMap<(u64, u64), usize>),
    /// No index (every call changes every credit); the buffer is reused by
    /// each call to avoid an allocation per resolution.
    SmoothWeighted(Vec<(i128, u64, usize)>),
    /// Selection weight of every slot (0 for inactive ones).
    Randomized(WeightTree),
}

/// Selection state for one pool (registrar) or one cached pool list (PU).
///
/// Not thread-safe by itself; hold one per pool behind the caller's lock.
#[derive(Debug, Clone)]
pub struct PoolSelector {
    policy_type: u32,
    rng: StdRng,
    next_sequence: u64,
    /// Per-PE state, dense so the index refers to PEs by position. A PE keeps
    /// its slot until it is removed or pruned.
    slots: Vec<Slot>,
    /// PE id → slot. Consulted on membership changes only, never per PE per
    /// selection.
    slot_of: HashMap<PeId, usize>,
    free_slots: Vec<usize>,
    active_count: usize,
    index: PolicyIndex,
    /// The list the last [`select`](Self::select) synchronised with, so an
    /// unchanged list is recognised by comparison instead of hashing.
    last_list: Vec<Member>,
    /// False once the member set changed by any other means, forcing the next
    /// `select` to synchronise even with an identical list.
    last_list_is_current: bool,
    sync_count: u64,
}

impl PoolSelector {
    /// Creates the selector for a pool using `policy_type`, with a seeded RNG
    /// so tests and simulations are reproducible. Production callers pass a
    /// random seed (e.g. `rand::random()`).
    pub fn new(policy_type: u32, seed: u64) -> Result<Self, PolicyError> {
        let index = match family_of(policy_type)? {
            Family::Ordered => PolicyIndex::Ordered(BTreeMap::new()),
            Family::SmoothWeighted => PolicyIndex::SmoothWeighted(Vec::new()),
            Family::Randomized => PolicyIndex::Randomized(WeightTree::default()),
        };
        Ok(Self {
            policy_type,
            rng: StdRng::seed_from_u64(seed),
            next_sequence: 0,
            slots: Vec::new(),
            slot_of: HashMap::new(),
            free_slots: Vec::new(),
            active_count: 0,
            index,
            last_list: Vec::new(),
            last_list_is_current: false,
            sync_count: 0,
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

    /// Number of PEs in the member set (those [`select_top`](Self::select_top)
    /// chooses from).
    pub fn len(&self) -> usize {
        self.active_count
    }

    /// Whether the member set is empty.
    pub fn is_empty(&self) -> bool {
        self.active_count == 0
    }

    /// Returns at most `max` distinct PE ids from `members`, best first, and
    /// advances the pool state (round robin position, degradation, credit) for
    /// the first one only.
    ///
    /// Members whose parameters are of another policy type are never returned
    /// (the registrar rejects them at registration, RFC 5352 §3.1.3); a
    /// repeated id counts once, with its first parameters. An empty list or
    /// `max == 0` gives an empty answer.
    ///
    /// `members` becomes the selector's member set (see the module docs). Cost:
    /// O(n) comparison when `members` equals the previous call's list, O(n)
    /// hash lookups when it does not, plus the cost of
    /// [`select_top`](Self::select_top). Callers that know what changed should
    /// use [`insert`](Self::insert) / [`remove`](Self::remove) /
    /// [`select_top`](Self::select_top) instead.
    pub fn select(&mut self, members: &[Member], max: usize) -> Vec<PeId> {
        self.synchronise(members);
        self.select_top(max)
    }

    /// Returns at most `max` distinct PE ids from the member set, best first,
    /// and advances the pool state for the first one only, exactly as
    /// [`select`](Self::select) does for a list holding the member set.
    ///
    /// O(`max` · log n) for the ordered and randomized policies, O(n) for
    /// Weighted Round Robin.
    pub fn select_top(&mut self, max: usize) -> Vec<PeId> {
        if max == 0 || self.active_count == 0 {
            return Vec::new();
        }
        let chosen = match &mut self.index {
            PolicyIndex::Ordered(order) => {
                debug_assert_eq!(order.len(), self.active_count);
                order
                    .values()
                    .take(max)
                    .map(|&slot| self.slots[slot].id)
                    .collect()
            }
            PolicyIndex::SmoothWeighted(scratch) => {
                select_smooth_weighted(&mut self.slots, scratch, max)
            }
            PolicyIndex::Randomized(weights) => {
                select_randomized(&self.slots, weights, &mut self.rng, max)
            }
        };
        if let Some(&first) = chosen.first() {
            self.on_selected(first);
        }
        chosen
    }

    /// Adds `member` to the member set, at the end of the round robin order,
    /// or updates the parameters of a PE already in it (a re-registration;
    /// its degradation restarts if they changed). Returns false, and changes
    /// nothing, if its parameters are of another policy type. O(log n).
    pub fn insert(&mut self, member: Member) -> bool {
        if member.params.policy_type() != self.policy_type {
            return false;
        }
        self.last_list_is_current = false;
        match self.slot_of.get(&member.id) {
            Some(&slot) => {
                self.set_params(slot, member.params);
                self.activate(slot);
            }
            None => {
                self.allocate(member);
            }
        }
        true
    }

    /// The PE left the pool: removes it from the member set and drops its
    /// state, so a later PE reusing the id starts fresh at the end of the
    /// round robin order. Returns whether the selector knew it. O(log n).
    pub fn remove(&mut self, id: PeId) -> bool {
        let Some(slot) = self.slot_of.get(&id).copied() else {
            return false;
        };
        self.release(slot);
        // The next `select` must re-admit this PE if its list still has it.
        self.last_list_is_current = false;
        true
    }

    /// Same as [`remove`](Self::remove), kept for existing callers. (States of
    /// PEs missing from a `select` list are also pruned once they outnumber
    /// the live members.)
    pub fn forget(&mut self, id: PeId) {
        self.remove(id);
    }

    /// Records that `id` was handed out (or used) as first choice: moves it
    /// behind its equals in the round robin order and adds its load
    /// degradation. [`select`](Self::select) and
    /// [`select_top`](Self::select_top) already do this for their first
    /// result; call it only for a PE chosen some other way. Unknown ids are
    /// ignored. O(log n).
    pub fn on_selected(&mut self, id: PeId) {
        let Some(&slot) = self.slot_of.get(&id) else {
            return;
        };
        let sequence = self.take_sequence();
        self.modify(slot, |state| {
            state.sequence = sequence;
            let step = state.params.degradation_step();
            state.degradation = state.degradation.saturating_add(step);
        });
    }

    /// The PE re-registered (or otherwise refreshed its entry): its degradation
    /// starts again from zero, as RSPLIB does on every update of a PE
    /// (RFC 5356 §5.2: degradation counts selections since the PE last
    /// reported its load). O(log n).
    pub fn on_registration_update(&mut self, id: PeId) {
        if let Some(&slot) = self.slot_of.get(&id)
            && self.slots[slot].degradation != 0
        {
            self.modify(slot, |state| state.degradation = 0);
        }
    }

    /// Current accumulated degradation of a PE, for metrics and tests.
    pub fn degradation(&self, id: PeId) -> Option<u32> {
        self.slot_of
            .get(&id)
            .map(|&slot| self.slots[slot].degradation)
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

    /// Makes the member set equal to `members`: deduplicates and filters it,
    /// creates state for new PEs (at the end of the round robin order, in list
    /// order), resets degradation of PEs whose parameters changed and parks
    /// PEs missing from it as dormant.
    fn synchronise(&mut self, members: &[Member]) {
        // The common case in a stable pool: nothing changed since last call.
        if self.last_list_is_current && members == self.last_list.as_slice() {
            return;
        }
        self.sync_count += 1;
        let this_sync = self.sync_count;
        for member in members {
            if member.params.policy_type() != self.policy_type {
                continue;
            }
            let slot = match self.slot_of.get(&member.id) {
                Some(&slot) if self.slots[slot].seen_in_sync == this_sync => continue,
                Some(&slot) => {
                    self.set_params(slot, member.params);
                    self.activate(slot);
                    slot
                }
                None => self.allocate(*member),
            };
            self.slots[slot].seen_in_sync = this_sync;
        }
        for slot in 0..self.slots.len() {
            let state = &self.slots[slot];
            if state.status == SlotStatus::Active && state.seen_in_sync != this_sync {
                self.deactivate(slot);
            }
        }
        // Without pruning, a long-lived PU would keep state for every PE that
        // ever existed. Prune lazily so that a PE briefly missing from a list
        // keeps its place.
        if self.slot_of.len() > 2 * self.active_count + 16 {
            for slot in 0..self.slots.len() {
                if self.slots[slot].status == SlotStatus::Dormant {
                    self.release(slot);
                }
            }
        }
        self.last_list.clear();
        self.last_list.extend_from_slice(members);
        self.last_list_is_current = true;
    }

    /// Gives a new PE a slot, active, at the end of the round robin order.
    fn allocate(&mut self, member: Member) -> usize {
        let sequence = self.take_sequence();
        let state = Slot {
            id: member.id,
            params: member.params,
            sequence,
            degradation: 0,
            credit: 0,
            status: SlotStatus::Free,
            seen_in_sync: 0,
        };
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.slots[slot] = state;
                slot
            }
            None => {
                self.slots.push(state);
                if let PolicyIndex::Randomized(weights) = &mut self.index {
                    weights.push_zero();
                }
                self.slots.len() - 1
            }
        };
        self.slot_of.insert(member.id, slot);
        self.slots[slot].status = SlotStatus::Dormant;
        self.activate(slot);
        slot
    }

    /// Drops a PE's state entirely and recycles its slot.
    fn release(&mut self, slot: usize) {
        self.deactivate(slot);
        self.slots[slot].status = SlotStatus::Free;
        self.slot_of.remove(&self.slots[slot].id);
        self.free_slots.push(slot);
    }

    fn activate(&mut self, slot: usize) {
        if self.slots[slot].status == SlotStatus::Dormant {
            self.slots[slot].status = SlotStatus::Active;
            self.active_count += 1;
            self.add_to_index(slot);
        }
    }

    fn deactivate(&mut self, slot: usize) {
        if self.slots[slot].status == SlotStatus::Active {
            self.remove_from_index(slot);
            self.slots[slot].status = SlotStatus::Dormant;
            self.active_count -= 1;
        }
    }

    fn set_params(&mut self, slot: usize, params: PolicyParams) {
        if self.slots[slot].params != params {
            self.modify(slot, |state| {
                state.params = params;
                state.degradation = 0;
            });
        }
    }

    /// Changes a PE's state, keeping the index in step with its new key.
    fn modify(&mut self, slot: usize, change: impl FnOnce(&mut Slot)) {
        let active = self.slots[slot].status == SlotStatus::Active;
        if active {
            self.remove_from_index(slot);
        }
        change(&mut self.slots[slot]);
        if active {
            self.add_to_index(slot);
        }
    }

    fn add_to_index(&mut self, slot: usize) {
        let state = &self.slots[slot];
        match &mut self.index {
            PolicyIndex::Ordered(order) => {
                order.insert(state.ordered_key(), slot);
            }
            PolicyIndex::SmoothWeighted(_) => {}
            PolicyIndex::Randomized(weights) => {
                weights.set(slot, random_weight(&state.params, state.degradation));
            }
        }
    }

    fn remove_from_index(&mut self, slot: usize) {
        let state = &self.slots[slot];
        match &mut self.index {
            PolicyIndex::Ordered(order) => {
                order.remove(&state.ordered_key());
            }
            PolicyIndex::SmoothWeighted(_) => {}
            PolicyIndex::Randomized(weights) => weights.set(slot, 0),
        }
    }
}

/// One smooth weighted round robin step over the active slots: credit every
/// PE, rank by credit, charge the winner the total weight.
fn select_smooth_weighted(
    slots: &mut [Slot],
    ranked: &mut Vec<(i128, u64, usize)>,
    max: usize,
) -> Vec<PeId> {
    ranked.clear();
    let mut total: i128 = 0;
    for (slot, state) in slots.iter_mut().enumerate() {
        let weight = i128::from(state.params.weight().unwrap_or(0));
        if state.status != SlotStatus::Active || weight == 0 {
            continue;
        }
        state.credit += weight;
        total += weight;
        // Ascending sort key: most credit first, then round robin position.
        ranked.push((-state.credit, state.sequence, slot));
    }
    if total == 0 {
        return Vec::new();
    }
    let chosen: Vec<usize> = smallest_sorted(ranked, max)
        .iter()
        .map(|&(_, _, slot)| slot)
        .collect();
    slots[chosen[0]].credit -= total;
    chosen.iter().map(|&slot| slots[slot].id).collect()
}

/// Draws up to `max` PEs without replacement, each draw with probability
/// proportional to the weights left. Drawn weights are zeroed during the
/// call and restored before it returns.
fn select_randomized(
    slots: &[Slot],
    weights: &mut WeightTree,
    rng: &mut StdRng,
    max: usize,
) -> Vec<PeId> {
    let mut drawn: Vec<(usize, u64)> = Vec::with_capacity(max.min(slots.len()));
    while drawn.len() < max && weights.total() > 0 {
        let target = rng.random_range(0..weights.total());
        let slot = weights.find(target);
        drawn.push((slot, weights.weight(slot)));
        weights.set(slot, 0);
    }
    for &(slot, weight) in &drawn {
        weights.set(slot, weight);
    }
    drawn.iter().map(|&(slot, _)| slots[slot].id).collect()
}

/// Fenwick (binary indexed) tree over per-slot weights: O(log n) update and
/// O(log n) "which slot covers this point of the cumulative weight".
#[derive(Debug, Clone, Default)]
struct WeightTree {
    /// `partial[i]` (1-based) sums the weights of slots `i - lowbit(i) .. i`
    /// (0-based, half-open); `partial[0]` is unused.
    partial: Vec<u64>,
    weights: Vec<u64>,
    total: u64,
}

impl WeightTree {
    fn total(&self) -> u64 {
        self.total
    }

    fn weight(&self, slot: usize) -> u64 {
        self.weights[slot]
    }

    /// Appends a slot of weight 0.
    fn push_zero(&mut self) {
        if self.partial.is_empty() {
            self.partial.push(0);
        }
        let node = self.partial.len();
        // The new node covers `lowbit(node)` slots ending with itself: sum the
        // nodes already covering the slots before it in that range.
        let first_covered = node - (node & node.wrapping_neg());
        let mut sum = 0;
        let mut child = node - 1;
        while child > first_covered {
            sum += self.partial[child];
            child -= child & child.wrapping_neg();
        }
        self.partial.push(sum);
        self.weights.push(0);
    }

    fn set(&mut self, slot: usize, weight: u64) {
        let old = std::mem::replace(&mut self.weights[slot], weight);
        if old == weight {
            return;
        }
        // Wrapping arithmetic applies a decrease as adding its two's
        // complement; every partial sum stays exact.
        let delta = weight.wrapping_sub(old);
        self.total = self.total.wrapping_add(delta);
        let mut node = slot + 1;
        while node < self.partial.len() {
            self.partial[node] = self.partial[node].wrapping_add(delta);
            node += node & node.wrapping_neg();
        }
    }

    /// The slot whose weight covers `target`, i.e. the first slot whose
    /// cumulative weight exceeds it. Needs `target < total`; slots of weight
    /// 0 are never returned.
    fn find(&self, target: u64) -> usize {
        debug_assert!(target < self.total);
        let nodes = self.partial.len() - 1;
        let mut position = 0;
        let mut remaining = target;
        let mut step = if nodes == 0 { 0 } else { 1 << nodes.ilog2() };
        while step > 0 {
            let next = position + step;
            if next <= nodes && self.partial[next] <= remaining {
                position = next;
                remaining -= self.partial[next];
            }
            step >>= 1;
        }
        // `position` slots have cumulative weight <= target: the next one covers it.
        position
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
