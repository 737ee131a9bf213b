//! The audit's judgement: the stores' entry streams are k-way merged in
//! (exporter, domain, sequence) order, and each exporter/domain's
//! [`GroupAccumulator`] walks its sequences once, finding gaps (split into
//! unexplained and declared loss by the exporter's account), benign
//! duplicates, conflicting copies and each store's share.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::mpsc::Receiver;

use super::report::{
    Anomaly, Conflict, ConflictCopy, Conflicts, DeclaredLoss, DeclaredRange, DuplicateRange,
    Duplicates, ExporterDomainReport, Gaps, Handover, SequenceRange, StoreCopies, StoreShare,
    Verdict, format_ms,
};
use super::{ExporterAccount, GroupKey, RecordEntry};

pub(super) struct StoreStream {
    receiver: Receiver<Vec<RecordEntry>>,
    batch: Vec<RecordEntry>,
    position: usize,
}

impl StoreStream {
    pub(super) fn new(receiver: Receiver<Vec<RecordEntry>>) -> Self {
        Self {
            receiver,
            batch: Vec::new(),
            position: 0,
        }
    }

    /// The next entry; `None` at the end (or when the reader failed: its
    /// error comes from joining it).
    fn next_entry(&mut self) -> Option<RecordEntry> {
        while self.position >= self.batch.len() {
            self.batch = self.receiver.recv().ok()?;
            self.position = 0;
        }
        let entry = self.batch[self.position];
        self.position += 1;
        Some(entry)
    }
}

/// K-way merge of the store streams into per-group accumulators.
pub(super) fn merge_streams(
    streams: &mut [StoreStream],
    store_names: &[String],
    list_limit: usize,
    accounts: &BTreeMap<GroupKey, ExporterAccount>,
) -> BTreeMap<GroupKey, GroupAccumulator> {
    let mut heads = BinaryHeap::with_capacity(streams.len());
    for (store, stream) in streams.iter_mut().enumerate() {
        if let Some(entry) = stream.next_entry() {
            heads.push(Reverse((entry, store)));
        }
    }
    let mut groups = BTreeMap::new();
    let mut current: Option<GroupAccumulator> = None;
    // All copies of the sequence being merged: (store, hash, block id).
    let mut copies: Vec<(usize, u64, i64)> = Vec::new();
    let mut copies_of: Option<(GroupKey, u64)> = None;
    while let Some(Reverse((entry, store))) = heads.pop() {
        if let Some(next) = streams[store].next_entry() {
            heads.push(Reverse((next, store)));
        }
        if copies_of != Some((entry.key, entry.sequence)) {
            if let Some((_, sequence)) = copies_of
                && let Some(group) = current.as_mut()
            {
                group.observe(sequence, &mut copies, store_names);
            }
            copies.clear();
            copies_of = Some((entry.key, entry.sequence));
            if current.as_ref().is_none_or(|g| g.key != entry.key) {
                if let Some(done) = current.take() {
                    groups.insert(done.key, done);
                }
                current = Some(GroupAccumulator::new(
                    entry.key,
                    store_names.len(),
                    list_limit,
                    accounts,
                ));
            }
        }
        copies.push((store, entry.hash, entry.block_id));
    }
    if let (Some((_, sequence)), Some(mut group)) = (copies_of, current) {
        group.observe(sequence, &mut copies, store_names);
        groups.insert(group.key, group);
    }
    groups
}

struct OpenDuplicate {
    first: u64,
    last: u64,
    /// (store, copies of each sequence), by store.
    per_store: Vec<(usize, u64)>,
}

/// One exporter/domain while the merge walks its sequences in order.
pub(super) struct GroupAccumulator {
    pub(super) key: GroupKey,
    list_limit: usize,
    /// The lowest sequence not yet seen; `None` once u64::MAX was seen.
    next_expected: Option<u64>,
    first: Option<u64>,
    last: Option<u64>,
    present: u64,
    copies_stored: u64,
    gaps: Gaps,
    duplicates: Duplicates,
    /// The duplicate range being extended, listed once it ends.
    open_duplicate: Option<OpenDuplicate>,
    /// Copies per store of the current sequence; reused so a long run of
    /// duplicates costs no allocation per record.
    per_store_scratch: Vec<(usize, u64)>,
    conflicts: Conflicts,
    /// Per store: (records, first, last).
    shares: Vec<Option<(u64, u64, u64)>>,
    pub(super) handovers: Vec<Handover>,
    pub(super) anomalies: Vec<Anomaly>,
    /// What the exporter accounted for and declared lost (all stores).
    account: ExporterAccount,
    declared_loss: DeclaredLoss,
}

impl GroupAccumulator {
    pub(super) fn new(
        key: GroupKey,
        stores: usize,
        list_limit: usize,
        accounts: &BTreeMap<GroupKey, ExporterAccount>,
    ) -> Self {
        Self {
            account: accounts.get(&key).cloned().unwrap_or_default(),
            declared_loss: DeclaredLoss::default(),
            key,
            list_limit,
            next_expected: Some(0),
            first: None,
            last: None,
            present: 0,
            copies_stored: 0,
            gaps: Gaps::default(),
            duplicates: Duplicates::default(),
            open_duplicate: None,
            per_store_scratch: Vec::new(),
            conflicts: Conflicts::default(),
            shares: vec![None; stores],
            handovers: Vec::new(),
            anomalies: Vec::new(),
        }
    }

    fn may_list(&self, listed: usize) -> bool {
        self.list_limit == 0 || listed < self.list_limit
    }

    /// Sequences `first..=last` are stored nowhere: the parts the exporter
    /// declared lost are declared loss, the rest an unexplained gap.
    fn add_gap(&mut self, first: u64, last: u64) {
        let unexplained = self.account.declared.missing(first, last);
        let mut cursor = first;
        for &(a, b) in &unexplained {
            if a > cursor {
                self.add_declared(cursor, a - 1);
            }
            self.add_unexplained_gap(a, b);
            cursor = b.saturating_add(1);
        }
        if unexplained.last().is_none_or(|&(_, b)| b < last) {
            self.add_declared(cursor, last);
        }
    }

    /// `first..=last` lies inside declared ranges: listed per declaration
    /// (with the restart time of the exporter that made it).
    fn add_declared(&mut self, first: u64, last: u64) {
        let count = (last - first).saturating_add(1);
        self.declared_loss.records = self.declared_loss.records.saturating_add(count);
        let mut pieces: Vec<DeclaredRange> = Vec::new();
        for row in &self.account.declarations {
            let (a, b) = (row.first.max(first), row.last.min(last));
            if a > b || pieces.iter().any(|p| p.first <= a && b <= p.last) {
                continue;
            }
            pieces.push(DeclaredRange {
                first: a,
                last: b,
                records: (b - a).saturating_add(1),
                exporter_restart_ms: row.system_init_ms,
                exporter_restart: format_ms(row.system_init_ms),
                store: row.store.clone(),
                peer: row.peer.clone(),
            });
        }
        for piece in pieces {
            self.declared_loss.range_count += 1;
            if self.may_list(self.declared_loss.ranges.len()) {
                self.declared_loss.ranges.push(piece);
            } else {
                self.declared_loss.ranges_not_listed += 1;
            }
        }
    }

    fn add_unexplained_gap(&mut self, first: u64, last: u64) {
        let missing = (last - first).saturating_add(1);
        self.gaps.missing_records = self.gaps.missing_records.saturating_add(missing);
        self.gaps.range_count += 1;
        if self.may_list(self.gaps.ranges.len()) {
            self.gaps.ranges.push(SequenceRange { first, last });
        } else {
            self.gaps.ranges_not_listed += 1;
        }
    }

    /// Accounts every stored copy of `sequence` (sequences arrive in
    /// ascending order). Sorts `copies` by store.
    fn observe(&mut self, sequence: u64, copies: &mut [(usize, u64, i64)], store_names: &[String]) {
        if let Some(expected) = self.next_expected
            && sequence > expected
        {
            self.add_gap(expected, sequence - 1);
        }
        self.next_expected = sequence.checked_add(1);
        self.first.get_or_insert(sequence);
        self.last = Some(sequence);
        self.present += 1;
        self.copies_stored += copies.len() as u64;
        for &(store, _, _) in copies.iter() {
            let share = self.shares[store].get_or_insert((0, sequence, sequence));
            share.0 += 1;
            share.2 = sequence;
        }
        if copies.len() == 1 {
            self.close_duplicate(store_names);
            return;
        }
        copies.sort_unstable();
        let first_hash = copies[0].1;
        if copies.iter().all(|&(_, hash, _)| hash == first_hash) {
            self.duplicates.sequences += 1;
            self.duplicates.extra_copies += copies.len() as u64 - 1;
            count_per_store(copies, &mut self.per_store_scratch);
            match &mut self.open_duplicate {
                Some(open)
                    if open.last.checked_add(1) == Some(sequence)
                        && open.per_store == self.per_store_scratch =>
                {
                    open.last = sequence;
                }
                _ => {
                    self.close_duplicate(store_names);
                    self.open_duplicate = Some(OpenDuplicate {
                        first: sequence,
                        last: sequence,
                        per_store: self.per_store_scratch.clone(),
                    });
                }
            }
        } else {
            self.close_duplicate(store_names);
            self.conflicts.sequences += 1;
            if self.may_list(self.conflicts.listed.len()) {
                self.conflicts.listed.push(Conflict {
                    sequence,
                    copies: copies
                        .iter()
                        .map(|&(store, hash, block_id)| ConflictCopy {
                            store: store_names[store].clone(),
                            block_id,
                            record_hash: format!("{hash:016x}"),
                        })
                        .collect(),
                });
            } else {
                self.conflicts.not_listed += 1;
            }
        }
    }

    fn close_duplicate(&mut self, store_names: &[String]) {
        if let Some(open) = self.open_duplicate.take() {
            self.duplicates.range_count += 1;
            if self.may_list(self.duplicates.ranges.len()) {
                self.duplicates.ranges.push(DuplicateRange {
                    first: open.first,
                    last: open.last,
                    copies: open
                        .per_store
                        .into_iter()
                        .map(|(store, copies)| StoreCopies {
                            store: store_names[store].clone(),
                            copies,
                        })
                        .collect(),
                });
            } else {
                self.duplicates.ranges_not_listed += 1;
            }
        }
    }

    pub(super) fn finish(mut self, store_names: &[String]) -> ExporterDomainReport {
        self.close_duplicate(store_names);
        // A handover cookie signed by a collector says every record through
        // its sequence was stored: records up to there missing from every
        // store are lost even though no later record shows the gap.
        let claimed = self
            .handovers
            .iter()
            .filter_map(|h| h.record_sequence)
            .max();
        // The exporter's statistics account for every sequence below
        // `accounted`: the ones stored nowhere are a lost tail (or declared).
        let accounted_last = self.account.accounted.and_then(|n| n.checked_sub(1));
        let claimed = claimed.max(accounted_last);
        let expected_through = self.last.max(claimed);
        if let (Some(claimed), Some(expected)) = (claimed, self.next_expected)
            && claimed >= expected
        {
            self.add_gap(expected, claimed);
        }
        self.handovers.sort_by_key(|h| h.at_ms);
        let failed = self.gaps.missing_records > 0
            || self.conflicts.sequences > 0
            || !self.anomalies.is_empty();
        ExporterDomainReport {
            billing_exporter: self.key.billing_exporter,
            domain: self.key.domain,
            verdict: if failed { Verdict::Fail } else { Verdict::Pass },
            first_sequence: self.first,
            last_sequence: self.last,
            expected_through,
            exporter_accounted: self.account.accounted,
            state_file_next_sequence: self.account.state_file_next,
            declared_loss: self.declared_loss,
            records_present: self.present,
            copies_stored: self.copies_stored,
            gaps: self.gaps,
            duplicates: self.duplicates,
            conflicts: self.conflicts,
            stores: self
                .shares
                .iter()
                .enumerate()
                .filter_map(|(store, share)| {
                    share.map(|(records, first, last)| StoreShare {
                        store: store_names[store].clone(),
                        records,
                        first_sequence: first,
                        last_sequence: last,
                    })
                })
                .collect(),
            handovers: self.handovers,
            anomalies: self.anomalies,
        }
    }
}

/// `copies` sorted by store, as (store, copies) runs, into `out`.
fn count_per_store(copies: &[(usize, u64, i64)], out: &mut Vec<(usize, u64)>) {
    out.clear();
    for &(store, _, _) in copies {
        match out.last_mut() {
            Some((last_store, count)) if *last_store == store => *count += 1,
            _ => out.push((store, 1)),
        }
    }
}
