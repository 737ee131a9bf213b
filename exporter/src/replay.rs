//! The replay buffer of one observation domain: every record not yet covered
//! by a cookie, oldest first (docs/billing-continuity.md). Sans-IO.
//!
//! It is also the send queue. The oldest records live in memory (up to
//! [`ReplayLimits::memory_records`]); this window holds both the records sent
//! and waiting for a cookie and the next ones to send, so the exporter only
//! ever sends from memory. Records beyond the window go to the driver's
//! spill store (`crate::spill`, append-only files) and come back into
//! memory, in order, as cookies free the window. Beyond
//! [`ReplayLimits::max_records`] in total the buffer is full and the input
//! must wait (back-pressure, never loss).
//!
//! The buffer touches no file: what it needs of the spill it asks as
//! [`SpillRequest`]s, which the core hands its driver in order
//! (`Exporter::poll_spill`); the driver answers a
//! [`SpillRequest::Read`] with `Exporter::handle_unspilled`. So the core
//! runs unchanged over an in-memory spill in tests and in the simulation.
//!
//! Spilled records survive a restart: the driver reports what its store
//! recovered ([`RecoveredSpill`]), and at a clean stop the memory window is
//! written in front of the spill ([`SpillRequest::Prepend`]), so a clean
//! stop loses nothing that was not acknowledged.

use std::collections::VecDeque;
use std::path::PathBuf;

/// An encoded data record (no set header). Up to 64 bytes are held inline:
/// a record goes from the input through the replay buffer to the wire
/// without a heap allocation of its own (per-record `malloc` and `free`, on
/// two threads, were a fifth of the exporter's CPU on the billing stream).
pub type RecordBytes = smallvec::SmallVec<[u8; 64]>;

/// One buffered data record, already encoded for its template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferedRecord {
    /// Its record sequence.
    pub sequence: u64,
    /// The template it is encoded for.
    pub template_id: u16,
    /// The encoded record (no set header).
    pub bytes: RecordBytes,
}

/// Size limits of a [`ReplayBuffer`].
#[derive(Debug, Clone)]
pub struct ReplayLimits {
    /// Records kept in memory (the send window).
    pub memory_records: usize,
    /// Records in total (memory + spill); beyond it the input waits.
    pub max_records: usize,
    /// Directory of the driver's spill files; `None` = no spill (then the
    /// buffer is full at `memory_records`). The core only asks whether
    /// there is one.
    pub spill_dir: Option<PathBuf>,
    /// Records per spill segment file (the driver's store); a segment is
    /// deleted once read.
    pub segment_records: usize,
}

impl ReplayLimits {
    /// Memory only.
    pub fn memory(records: usize) -> Self {
        Self {
            memory_records: records,
            max_records: records,
            spill_dir: None,
            segment_records: 65_536,
        }
    }

    fn spills(&self) -> bool {
        self.spill_dir.is_some()
    }
}

/// Why a record was not taken.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The buffer holds `max_records`: wait for a cookie.
    #[error("replay buffer full")]
    Full,
}

/// What the core asks of the driver's spill store. Performed in the order
/// given, each domain's spill a FIFO of records in sequence order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpillRequest {
    /// Append `record` at the end of the domain's spill.
    Append {
        /// Observation domain.
        domain: u32,
        /// The record (its sequence above every one spilled).
        record: BufferedRecord,
    },
    /// Take up to `count` of the domain's oldest spilled records out of the
    /// spill and hand them back, oldest first, through
    /// `Exporter::handle_unspilled` before the next request is performed.
    Read {
        /// Observation domain.
        domain: u32,
        /// At most this many.
        count: usize,
    },
    /// At a clean stop: write `records` (older than everything spilled, maybe
    /// none) in front of the domain's spill and make the whole spill
    /// durable.
    Prepend {
        /// Observation domain.
        domain: u32,
        /// The memory window, oldest first.
        records: Vec<BufferedRecord>,
    },
}

/// What a spill store found for one domain at start: the record sequences
/// it holds, as runs of consecutive sequences (a spill is nearly always one
/// run), oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveredSpill {
    runs: Vec<(u64, u64)>,
}

impl RecoveredSpill {
    /// Adds the next record's sequence (above every one added before).
    pub fn push(&mut self, sequence: u64) {
        match self.runs.last_mut() {
            Some((first, count)) if *first + *count == sequence => *count += 1,
            _ => self.runs.push((sequence, 1)),
        }
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.runs.iter().map(|&(_, count)| count as usize).sum()
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Records held with a sequence of at least `from`.
    pub fn held_from(&self, from: u64) -> u64 {
        self.runs
            .iter()
            .map(|&(first, count)| (first + count).saturating_sub(from.max(first)))
            .sum()
    }
}

/// Replay buffer of one domain.
#[derive(Debug)]
pub struct ReplayBuffer {
    domain: u32,
    limits: ReplayLimits,
    memory: VecDeque<BufferedRecord>,
    /// Records in the driver's spill (recovered ones already acknowledged
    /// included until they are read back and dropped).
    spilled: usize,
    /// A [`SpillRequest::Read`] is out and not yet answered.
    reading: bool,
    /// Everything through this sequence is acknowledged (dropped on sight).
    acknowledged_through: Option<u64>,
}

impl ReplayBuffer {
    /// The buffer of `domain`; `recovered` records are in the driver's
    /// spill already (a previous run's), and the first of them are asked
    /// for at once.
    pub fn new(
        domain: u32,
        limits: ReplayLimits,
        acknowledged_through: Option<u64>,
        recovered: usize,
        requests: &mut VecDeque<SpillRequest>,
    ) -> Self {
        let mut buffer = Self {
            domain,
            spilled: if limits.spills() { recovered } else { 0 },
            limits,
            memory: VecDeque::new(),
            reading: false,
            acknowledged_through,
        };
        buffer.request_refill(requests);
        buffer
    }

    /// Records held (memory + spill).
    pub fn len(&self) -> usize {
        self.memory.len() + self.spilled
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records in memory.
    pub fn memory_len(&self) -> usize {
        self.memory.len()
    }

    /// Records in the spill.
    pub fn spilled_len(&self) -> usize {
        self.spilled
    }

    /// No more records fit: the input must wait for a cookie.
    pub fn is_full(&self) -> bool {
        let max = if self.limits.spills() {
            self.limits.max_records
        } else {
            self.limits.memory_records
        };
        self.len() >= max.max(1)
    }

    /// Sequence of the oldest record held in memory.
    pub fn first_in_memory(&self) -> Option<u64> {
        self.memory.front().map(|r| r.sequence)
    }

    /// Appends a record (its sequence larger than every one held), in
    /// memory or, past the window, through a [`SpillRequest::Append`].
    pub fn push(
        &mut self,
        record: BufferedRecord,
        requests: &mut VecDeque<SpillRequest>,
    ) -> Result<(), PushError> {
        if self.is_full() {
            return Err(PushError::Full);
        }
        // Order: nothing may overtake what is already spilled.
        if self.limits.spills()
            && (self.spilled > 0 || self.memory.len() >= self.limits.memory_records)
        {
            self.spilled += 1;
            requests.push_back(SpillRequest::Append {
                domain: self.domain,
                record,
            });
        } else {
            self.memory.push_back(record);
        }
        Ok(())
    }

    /// Drops every record through `sequence` and asks for spilled records
    /// to refill the memory window. Returns the number of records dropped
    /// from memory.
    pub fn acknowledge(&mut self, sequence: u64, requests: &mut VecDeque<SpillRequest>) -> usize {
        if self.acknowledged_through.is_some_and(|a| a >= sequence) {
            return 0;
        }
        self.acknowledged_through = Some(sequence);
        let before = self.memory.len();
        while self.memory.front().is_some_and(|r| r.sequence <= sequence) {
            self.memory.pop_front();
        }
        self.request_refill(requests);
        before - self.memory.len()
    }

    /// The answer to a [`SpillRequest::Read`]: the oldest spilled records.
    /// Those a cookie covers already (a previous run's) are dropped. An
    /// empty answer (the store could not read) is asked again only after
    /// the next cookie.
    pub fn unspilled(
        &mut self,
        records: Vec<BufferedRecord>,
        requests: &mut VecDeque<SpillRequest>,
    ) {
        self.reading = false;
        let answered = !records.is_empty();
        self.spilled = self.spilled.saturating_sub(records.len());
        for record in records {
            if self
                .acknowledged_through
                .is_some_and(|a| record.sequence <= a)
            {
                continue;
            }
            debug_assert!(
                self.memory
                    .back()
                    .is_none_or(|last| last.sequence < record.sequence),
                "spill read back out of order"
            );
            self.memory.push_back(record);
        }
        if answered {
            self.request_refill(requests);
        }
    }

    /// Records in memory with a sequence of at least `sequence`, in order.
    pub fn in_memory_from(&self, sequence: u64) -> impl Iterator<Item = &BufferedRecord> {
        let start = self.memory.partition_point(|r| r.sequence < sequence);
        self.memory.range(start..)
    }

    /// Asks for spilled records while the memory window has room and no
    /// read is out.
    fn request_refill(&mut self, requests: &mut VecDeque<SpillRequest>) {
        let room = self.limits.memory_records.saturating_sub(self.memory.len());
        if self.spilled > 0 && room > 0 && !self.reading {
            self.reading = true;
            requests.push_back(SpillRequest::Read {
                domain: self.domain,
                count: room,
            });
        }
    }

    /// At a clean stop: hands the memory window to the spill, in front of
    /// what is spilled (when spilling is configured), so a restart replays
    /// it. Returns the number of records handed over. Call it with every
    /// earlier request performed.
    pub fn persist_for_restart(&mut self, requests: &mut VecDeque<SpillRequest>) -> usize {
        if !self.limits.spills() {
            return 0;
        }
        debug_assert!(!self.reading, "a spill read is still out");
        let records: Vec<BufferedRecord> = self.memory.drain(..).collect();
        let count = records.len();
        self.spilled += count;
        requests.push_back(SpillRequest::Prepend {
            domain: self.domain,
            records,
        });
        count
    }
}
