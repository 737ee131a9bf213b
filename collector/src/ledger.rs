//! The billing ledger: which record sequences this store holds durably,
//! per (billing exporter id, observation domain), and the replay rule that
//! decides which records of a billing block are new ([`take_new`]).
//!
//! Pure data and rules, no IO: the store loads and saves the ledger with
//! SQL and applies what [`take_new`] decides; sessions read it to issue
//! cookies. Depends on no other module of the collector.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Record sequences at and above this are refused in Cookie Echoes: at ten
/// million records a second an exporter needs 29,000 years to get here, and
/// below it the 32-bit windows of `protocol::billing::SequenceExtender` cannot overflow.
pub const MAX_ECHOED_SEQUENCE: u64 = 1 << 63;

/// A set of record sequences as merged, inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// first -> last, disjoint and not adjacent.
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// The ranges, in order, as (first, last).
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(a, b)| (*a, *b))
    }

    /// Adds `first..=last`, merging with neighbours.
    pub fn insert(&mut self, mut first: u64, mut last: u64) {
        // A range starting at or before `last + 1` may overlap or touch.
        let overlapping: Vec<(u64, u64)> = self
            .ranges
            .range(..=last.saturating_add(1))
            .rev()
            .take_while(|(_, end)| **end >= first.saturating_sub(1))
            .map(|(a, b)| (*a, *b))
            .collect();
        for (a, b) in overlapping {
            self.ranges.remove(&a);
            first = first.min(a);
            last = last.max(b);
        }
        self.ranges.insert(first, last);
    }

    /// The parts of `first..=last` not in the set, in order.
    pub fn missing(&self, first: u64, last: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut cursor = first;
        // Ranges that may intersect: those starting at or before `last`.
        let start_key = self
            .ranges
            .range(..=first)
            .next_back()
            .map(|(a, _)| *a)
            .unwrap_or(first);
        for (&a, &b) in self.ranges.range(start_key..=last) {
            if b < cursor {
                continue;
            }
            if a > cursor {
                out.push((cursor, a - 1));
            }
            if b >= last {
                return out;
            }
            cursor = b + 1;
        }
        if cursor <= last {
            out.push((cursor, last));
        }
        out
    }

    /// The end of the range holding `sequence`, if it is held.
    pub fn through(&self, sequence: u64) -> Option<u64> {
        let (_, &end) = self.ranges.range(..=sequence).next_back()?;
        (end >= sequence).then_some(end)
    }
}

/// What this store holds durably, per (billing exporter id, domain).
#[derive(Debug, Default)]
pub struct Ledger {
    /// Record sequences stored here (committed).
    pub stored: HashMap<(u32, u32), RangeSet>,
    /// Record sequences the exporter declared it will never send (lost in
    /// its restart): kept apart from `stored` (a record of a declared range
    /// that arrives after all is still stored, and replays are dropped only
    /// against what is stored), but cookies pass over them.
    pub declared: HashMap<(u32, u32), RangeSet>,
}

impl Ledger {
    /// The last sequence through which every record from `from` on is
    /// stored here or declared lost; `None` if `from` is neither.
    pub fn covered_through(&self, key: (u32, u32), from: u64) -> Option<u64> {
        covered_through(self.stored.get(&key), self.declared.get(&key), from)
    }
}

/// [`Ledger::covered_through`] over two sets.
pub fn covered_through(
    stored: Option<&RangeSet>,
    declared: Option<&RangeSet>,
    from: u64,
) -> Option<u64> {
    let mut through: Option<u64> = None;
    let mut cursor = from;
    loop {
        let next = [stored, declared]
            .into_iter()
            .flatten()
            .filter_map(|set| set.through(cursor))
            .max();
        match next {
            Some(end) => {
                through = Some(end);
                if end == u64::MAX {
                    return through;
                }
                cursor = end + 1;
            }
            None => return through,
        }
    }
}

/// The ledger shared by the store (writer) and the sessions (readers).
pub type SharedLedger = Arc<Mutex<Ledger>>;

/// The replay rule: of the billing records `first..first + count` (one
/// block, in record-sequence order), the ranges `held` does not hold yet,
/// in order; they are added to `held`. Everything else is a replay of
/// records stored earlier (or earlier in the same transaction) and is
/// dropped, which makes an exporter's replay after a failover idempotent.
/// `held` is the ledger's set for the block's (exporter, domain) as it
/// will be once the transaction being built commits; the store fetches it
/// and applies the answer with SQL.
pub fn take_new(held: &mut RangeSet, first: u64, count: u64) -> Vec<(u64, u64)> {
    if count == 0 {
        return Vec::new();
    }
    let last = first + count - 1;
    let new = held.missing(first, last);
    for (a, b) in &new {
        held.insert(*a, *b);
    }
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ranges: &[(u64, u64)]) -> RangeSet {
        let mut s = RangeSet::default();
        for (a, b) in ranges {
            s.insert(*a, *b);
        }
        s
    }

    #[test]
    fn ranges_merge_when_overlapping_or_adjacent() {
        let s = set(&[(10, 19), (30, 39), (20, 25), (26, 29)]);
        assert_eq!(s.ranges().collect::<Vec<_>>(), vec![(10, 39)]);
        let s = set(&[(10, 19), (21, 30)]);
        assert_eq!(s.ranges().collect::<Vec<_>>(), vec![(10, 19), (21, 30)]);
        let s = set(&[(5, 100), (10, 20)]);
        assert_eq!(s.ranges().collect::<Vec<_>>(), vec![(5, 100)]);
        let s = set(&[(0, 0), (u64::MAX - 1, u64::MAX)]);
        assert_eq!(s.ranges().count(), 2);
    }

    #[test]
    fn missing_parts_are_exact() {
        let s = set(&[(10, 19), (30, 39)]);
        assert_eq!(s.missing(0, 50), vec![(0, 9), (20, 29), (40, 50)]);
        assert_eq!(s.missing(12, 18), vec![]);
        assert_eq!(s.missing(15, 32), vec![(20, 29)]);
        assert_eq!(s.missing(40, 45), vec![(40, 45)]);
        assert_eq!(RangeSet::default().missing(3, 4), vec![(3, 4)]);
    }

    #[test]
    fn through_is_the_end_of_the_holding_range() {
        let s = set(&[(0, 99), (200, 299)]);
        assert_eq!(s.through(0), Some(99));
        assert_eq!(s.through(50), Some(99));
        assert_eq!(s.through(100), None);
        assert_eq!(s.through(250), Some(299));
    }

    #[test]
    fn replayed_records_below_the_contiguous_mark_are_dropped() {
        // Held: 0..=99 (contiguous mark 99) and 200..=249.
        let mut held = set(&[(0, 99), (200, 249)]);
        // A replay of 50..=149 keeps only 100..=149.
        assert_eq!(take_new(&mut held, 50, 100), vec![(100, 149)]);
        assert_eq!(
            held.ranges().collect::<Vec<_>>(),
            vec![(0, 149), (200, 249)]
        );
        // Entirely below the mark: nothing new.
        assert_eq!(take_new(&mut held, 0, 150), vec![]);
        // Straddling a held range: the holes on both sides.
        assert_eq!(take_new(&mut held, 140, 120), vec![(150, 199), (250, 259)]);
        assert_eq!(held.ranges().collect::<Vec<_>>(), vec![(0, 259)]);
        assert_eq!(take_new(&mut held, 7, 0), vec![], "an empty block");
    }
}
