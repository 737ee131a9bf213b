//! What the PostgreSQL shipper does next, without any I/O: given the
//! watermarks (how far each SQLite table is shipped) and the outcome of the
//! last step, [`Shipper::next_step`] says which rows to ship or how long to
//! wait. The I/O loop that reads SQLite and writes PostgreSQL is in
//! postgres.rs; keeping the decisions here makes them unit-testable.
//!
//! Exactly once does not rest on this state: PostgreSQL drops a block it
//! already holds (`shipped_blocks` primary key, docs/postgres.md), so a
//! watermark that lags behind PostgreSQL (a crash between the PostgreSQL
//! commits and the SQLite watermark update) only re-sends one step.

use std::collections::VecDeque;
use std::time::Duration;

/// One shipped SQLite table, in the order a round ships them: blocks
/// first, so the billing tables never run ahead of the records they
/// describe for long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// `record_blocks`, by id.
    Blocks,
    /// `billing_handovers`, by id.
    Handovers,
    /// `declared_losses`, by id.
    DeclaredLosses,
    /// `exporter_totals`, by `received_ms` (rows are updated in place, so
    /// every row at or after the watermark is shipped again; the upsert
    /// keeps the highest counters).
    Totals,
}

impl Stream {
    /// Every stream, in shipping order.
    pub const ALL: [Stream; 4] = [
        Stream::Blocks,
        Stream::Handovers,
        Stream::DeclaredLosses,
        Stream::Totals,
    ];

    /// The key of its row in SQLite's `shipping_watermark`.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Blocks => "blocks",
            Stream::Handovers => "handovers",
            Stream::DeclaredLosses => "declared_losses",
            Stream::Totals => "totals",
        }
    }
}

/// How far each stream is shipped: rows with an id (or, for totals, a
/// `received_ms`) above the position are still to ship.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watermarks {
    /// Highest `record_blocks.id` in PostgreSQL.
    pub blocks: i64,
    /// Highest `billing_handovers.id` in PostgreSQL.
    pub handovers: i64,
    /// Highest `declared_losses.id` in PostgreSQL.
    pub declared_losses: i64,
    /// Highest `exporter_totals.received_ms` shipped.
    pub totals: i64,
}

impl Watermarks {
    /// The position of one stream.
    pub fn get(&self, stream: Stream) -> i64 {
        match stream {
            Stream::Blocks => self.blocks,
            Stream::Handovers => self.handovers,
            Stream::DeclaredLosses => self.declared_losses,
            Stream::Totals => self.totals,
        }
    }

    fn advance(&mut self, stream: Stream, position: i64) {
        let slot = match stream {
            Stream::Blocks => &mut self.blocks,
            Stream::Handovers => &mut self.handovers,
            Stream::DeclaredLosses => &mut self.declared_losses,
            Stream::Totals => &mut self.totals,
        };
        // Never backwards: a stale answer must not make rows ship twice
        // (harmless) or, worse, be skipped after a later advance.
        *slot = (*slot).max(position);
    }
}

/// The shipper's tunables (from `[postgres]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShipperPolicy {
    /// Rows per step (for blocks: every transaction the step's pipeline
    /// runs, `batch_blocks` each).
    pub batch_rows: usize,
    /// Pause once every stream is caught up.
    pub interval: Duration,
    /// Unshipped records above which the backlog alarm is on.
    pub max_backlog_records: u64,
    /// First pause after a failure; doubles up to `retry_max`.
    pub retry_min: Duration,
    /// Longest pause after failures.
    pub retry_max: Duration,
}

/// What the I/O loop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Ship rows of `stream` above `after`, at most `limit` (`None`: all).
    Ship {
        /// Which table.
        stream: Stream,
        /// Its watermark.
        after: i64,
        /// Row limit; `None` for totals, whose position is not unique.
        limit: Option<usize>,
    },
    /// Sleep this long (caught up, or backing off after a failure).
    Wait(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Shipping `Stream::ALL[index]`.
    Shipping(usize),
    /// Every stream caught up: wait `interval`.
    CaughtUp,
    /// A step failed: wait, then start the round again.
    BackingOff(Duration),
}

/// The shipper's state machine.
#[derive(Debug, Clone)]
pub struct Shipper {
    policy: ShipperPolicy,
    watermarks: Watermarks,
    phase: Phase,
    consecutive_failures: u32,
}

/// The backlog as the alarm sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BacklogStatus {
    /// Age of the oldest committed but unshipped block (zero when none).
    pub lag: Duration,
    /// Unshipped records.
    pub records: u64,
    /// More unshipped records than `max_backlog_records`.
    pub exceeded: bool,
}

impl Shipper {
    /// Starts a round at the given watermarks (read from SQLite).
    pub fn new(policy: ShipperPolicy, watermarks: Watermarks) -> Self {
        Self {
            policy,
            watermarks,
            phase: Phase::Shipping(0),
            consecutive_failures: 0,
        }
    }

    /// How far each stream is shipped.
    pub fn watermarks(&self) -> Watermarks {
        self.watermarks
    }

    /// Failures since the last successful step.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// The next thing to do. A `Wait` is taken as done once returned: the
    /// step after it starts a new round.
    pub fn next_step(&mut self) -> Step {
        match self.phase {
            Phase::Shipping(index) => {
                let stream = Stream::ALL[index];
                Step::Ship {
                    stream,
                    after: self.watermarks.get(stream),
                    limit: (stream != Stream::Totals).then_some(self.policy.batch_rows),
                }
            }
            Phase::CaughtUp => {
                self.phase = Phase::Shipping(0);
                Step::Wait(self.policy.interval)
            }
            Phase::BackingOff(pause) => {
                self.phase = Phase::Shipping(0);
                Step::Wait(pause)
            }
        }
    }

    /// `rows` rows of `stream` are committed in PostgreSQL, up to
    /// `position` (the highest id or `received_ms` among them; ignored when
    /// `rows` is 0). The caller records the new watermark in SQLite.
    pub fn shipped(&mut self, stream: Stream, rows: usize, position: i64) {
        self.consecutive_failures = 0;
        if rows > 0 {
            self.watermarks.advance(stream, position);
        }
        let Phase::Shipping(index) = self.phase else {
            return;
        };
        // A full batch means more may be waiting: ship it before moving on.
        let full = stream != Stream::Totals && rows >= self.policy.batch_rows;
        if full {
            return;
        }
        self.phase = match index + 1 {
            next if next < Stream::ALL.len() => Phase::Shipping(next),
            _ => Phase::CaughtUp,
        };
    }

    /// A step failed (PostgreSQL down, a query refused): wait with
    /// exponential backoff, then start the round again from the watermarks.
    /// Returns the pause.
    pub fn failed(&mut self) -> Duration {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let doublings = self.consecutive_failures.saturating_sub(1).min(16);
        let pause = self
            .policy
            .retry_min
            .saturating_mul(1 << doublings)
            .min(self.policy.retry_max);
        self.phase = Phase::BackingOff(pause);
        pause
    }

    /// The backlog alarm's view of what SQLite holds beyond the block
    /// watermark: `unshipped_records` records, the oldest received at
    /// `oldest_unshipped_ms` (unix ms; `None` when nothing is unshipped).
    pub fn backlog(
        &self,
        unshipped_records: u64,
        oldest_unshipped_ms: Option<i64>,
        now_ms: i64,
    ) -> BacklogStatus {
        let lag_ms = oldest_unshipped_ms.map_or(0, |oldest| now_ms.saturating_sub(oldest).max(0));
        BacklogStatus {
            lag: Duration::from_millis(lag_ms as u64),
            records: unshipped_records,
            exceeded: unshipped_records > self.policy.max_backlog_records,
        }
    }
}

/// The unshipped records, kept up to date without summing the whole
/// backlog: the backlog gauge is read every second, and a `SUM` over every
/// unshipped block costs time proportional to the backlog, on the shipping
/// thread. At 500k records/s that scan grew with the lag it measured and
/// took half the shipper's time (BENCHMARKS.md), so a shipper that fell
/// behind fell further behind.
///
/// Blocks are counted once, when first seen beyond `counted_through`
/// ([`Self::counted`], summing only the blocks committed since the last
/// count), and subtracted once, when shipped ([`Self::shipped`]). Blocks are
/// never deleted from SQLite, so the count stays exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BacklogCount {
    /// Blocks up to this id are in PostgreSQL (and out of `records`).
    shipped_through: i64,
    /// Blocks up to this id are in `records` unless shipped.
    counted_through: i64,
    /// Records of the blocks in `(shipped_through, counted_through]`.
    records: u64,
}

impl BacklogCount {
    /// Nothing counted yet, blocks up to `watermark` shipped.
    pub fn new(watermark: i64) -> Self {
        Self {
            shipped_through: watermark,
            counted_through: watermark,
            records: 0,
        }
    }

    /// Block ids above this are not counted yet: sum their records and
    /// pass the sum to [`Self::counted`].
    pub fn count_after(&self) -> i64 {
        self.counted_through
    }

    /// The blocks in `(count_after(), through]` hold `records` records.
    /// `through` is `None` when there were none.
    pub fn counted(&mut self, records: u64, through: Option<i64>) {
        let Some(through) = through else { return };
        if through > self.counted_through {
            self.records = self.records.saturating_add(records);
            self.counted_through = through;
        }
    }

    /// These blocks (`(id, records)`, ascending ids) are committed in
    /// PostgreSQL. A block shipped again (a retried step) is not subtracted
    /// twice; one not counted yet will never be.
    pub fn shipped(&mut self, blocks: impl IntoIterator<Item = (i64, u64)>) {
        for (id, records) in blocks {
            if id <= self.shipped_through {
                continue;
            }
            if id <= self.counted_through {
                self.records = self.records.saturating_sub(records);
            }
            self.shipped_through = id;
        }
        self.counted_through = self.counted_through.max(self.shipped_through);
    }

    /// Records committed to SQLite and not yet in PostgreSQL (as of the
    /// last count).
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Blocks up to this id are in PostgreSQL.
    pub fn shipped_through(&self) -> i64 {
        self.shipped_through
    }
}

/// The shipping pipeline's transactions, in the order of their blocks'
/// ids, and which have committed. They commit in any order; the watermark
/// may only cover a prefix of committed ones, or a crash would skip the
/// blocks of one still in flight.
#[derive(Debug, Default)]
pub struct CommitOrder {
    next_ticket: u64,
    /// By ticket.
    started: VecDeque<Transaction>,
}

/// One transaction of the pipeline.
#[derive(Debug)]
struct Transaction {
    ticket: u64,
    /// Its blocks as `(id, records)`.
    blocks: Vec<(i64, u64)>,
    committed: bool,
}

impl CommitOrder {
    /// A transaction with these blocks (ids above every earlier one's) is
    /// sent; returns its ticket.
    pub fn started(&mut self, blocks: Vec<(i64, u64)>) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.started.push_back(Transaction {
            ticket,
            blocks,
            committed: false,
        });
        ticket
    }

    /// The transaction of `ticket` committed; returns the blocks that this
    /// makes part of the committed prefix, in id order (none while an
    /// earlier one is still in flight).
    pub fn committed(&mut self, ticket: u64) -> Vec<(i64, u64)> {
        if let Some(transaction) = self.started.iter_mut().find(|t| t.ticket == ticket) {
            transaction.committed = true;
        }
        let mut prefix = Vec::new();
        while self.started.front().is_some_and(|t| t.committed) {
            let transaction = self.started.pop_front().expect("checked above");
            prefix.extend(transaction.blocks);
        }
        prefix
    }

    /// Transactions started and not yet in the committed prefix.
    pub fn outstanding(&self) -> usize {
        self.started.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_prefix_of_committed_transactions_counts() {
        let mut order = CommitOrder::default();
        let first = order.started(vec![(1, 10), (2, 10)]);
        let second = order.started(vec![(3, 10)]);
        let third = order.started(vec![(4, 5), (5, 5)]);
        // The third commits first: nothing is shipped for the watermark yet.
        assert_eq!(order.committed(third), vec![]);
        assert_eq!(order.committed(first), vec![(1, 10), (2, 10)]);
        assert_eq!(order.outstanding(), 2);
        // The second closes the gap and brings the third with it.
        assert_eq!(order.committed(second), vec![(3, 10), (4, 5), (5, 5)]);
        assert_eq!(order.outstanding(), 0);
        // An unknown or repeated ticket changes nothing.
        assert_eq!(order.committed(second), vec![]);
        let fourth = order.started(vec![(6, 1)]);
        assert_eq!(order.committed(fourth), vec![(6, 1)]);
    }

    fn policy() -> ShipperPolicy {
        ShipperPolicy {
            batch_rows: 10,
            interval: Duration::from_millis(200),
            max_backlog_records: 1000,
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(2),
        }
    }

    fn ship(stream: Stream, after: i64, limit: Option<usize>) -> Step {
        Step::Ship {
            stream,
            after,
            limit,
        }
    }

    #[test]
    fn a_round_ships_every_stream_then_waits() {
        let mut s = Shipper::new(policy(), Watermarks::default());
        assert_eq!(s.next_step(), ship(Stream::Blocks, 0, Some(10)));
        s.shipped(Stream::Blocks, 3, 42);
        assert_eq!(s.next_step(), ship(Stream::Handovers, 0, Some(10)));
        s.shipped(Stream::Handovers, 0, 0);
        assert_eq!(s.next_step(), ship(Stream::DeclaredLosses, 0, Some(10)));
        s.shipped(Stream::DeclaredLosses, 1, 5);
        assert_eq!(s.next_step(), ship(Stream::Totals, 0, None));
        s.shipped(Stream::Totals, 2, 1_700_000_000_000);
        assert_eq!(s.next_step(), Step::Wait(Duration::from_millis(200)));
        assert_eq!(s.next_step(), ship(Stream::Blocks, 42, Some(10)));
        assert_eq!(
            s.watermarks(),
            Watermarks {
                blocks: 42,
                handovers: 0,
                declared_losses: 5,
                totals: 1_700_000_000_000
            }
        );
    }

    #[test]
    fn a_full_batch_ships_the_same_stream_again_at_once() {
        let mut s = Shipper::new(policy(), Watermarks::default());
        s.next_step();
        s.shipped(Stream::Blocks, 10, 10);
        assert_eq!(s.next_step(), ship(Stream::Blocks, 10, Some(10)));
        s.shipped(Stream::Blocks, 10, 20);
        assert_eq!(s.next_step(), ship(Stream::Blocks, 20, Some(10)));
        s.shipped(Stream::Blocks, 4, 24);
        assert_eq!(s.next_step(), ship(Stream::Handovers, 0, Some(10)));
    }

    #[test]
    fn failures_back_off_exponentially_and_restart_from_the_watermark() {
        let mut s = Shipper::new(policy(), Watermarks::default());
        s.next_step();
        s.shipped(Stream::Blocks, 10, 10);
        s.next_step();
        assert_eq!(s.failed(), Duration::from_millis(100));
        assert_eq!(s.next_step(), Step::Wait(Duration::from_millis(100)));
        assert_eq!(s.next_step(), ship(Stream::Blocks, 10, Some(10)));
        assert_eq!(s.failed(), Duration::from_millis(200));
        s.next_step();
        s.next_step();
        assert_eq!(s.failed(), Duration::from_millis(400));
        for _ in 0..40 {
            s.next_step();
            s.next_step();
            s.failed();
        }
        assert_eq!(s.failed(), Duration::from_secs(2), "capped at retry_max");
        assert!(s.consecutive_failures() > 40);
        s.next_step();
        s.next_step();
        s.shipped(Stream::Blocks, 1, 11);
        assert_eq!(s.consecutive_failures(), 0);
        s.next_step();
        assert_eq!(
            s.failed(),
            Duration::from_millis(100),
            "backoff starts over"
        );
    }

    #[test]
    fn the_watermark_never_moves_backwards() {
        let mut s = Shipper::new(
            policy(),
            Watermarks {
                blocks: 50,
                ..Watermarks::default()
            },
        );
        s.next_step();
        s.shipped(Stream::Blocks, 2, 30);
        assert_eq!(s.watermarks().blocks, 50);
    }

    #[test]
    fn backlog_alarm_and_lag() {
        let s = Shipper::new(policy(), Watermarks::default());
        let idle = s.backlog(0, None, 10_000);
        assert_eq!(idle.lag, Duration::ZERO);
        assert!(!idle.exceeded);
        let behind = s.backlog(1001, Some(7_500), 10_000);
        assert_eq!(behind.lag, Duration::from_millis(2_500));
        assert!(behind.exceeded);
        assert!(!s.backlog(1000, Some(9_000), 10_000).exceeded);
        // A clock step back gives no negative lag.
        assert_eq!(s.backlog(1, Some(20_000), 10_000).lag, Duration::ZERO);
    }

    #[test]
    fn the_backlog_count_adds_new_blocks_and_subtracts_shipped_ones_once() {
        let mut count = BacklogCount::new(10);
        assert_eq!(count.count_after(), 10);
        // Blocks 11..=14 hold 40 records.
        count.counted(40, Some(14));
        assert_eq!(count.records(), 40);
        assert_eq!(count.count_after(), 14);
        // Nothing new committed: the sum over an empty range changes nothing.
        count.counted(0, None);
        assert_eq!(count.records(), 40);
        count.shipped([(11, 10), (12, 10)]);
        assert_eq!(count.records(), 20);
        assert_eq!(count.shipped_through(), 12);
        // A retried step ships 12 again: not subtracted twice.
        count.shipped([(12, 10), (13, 10)]);
        assert_eq!(count.records(), 10);
        // 15 and 16 shipped before any count saw them: never counted later.
        count.shipped([(14, 10), (15, 5), (16, 5)]);
        assert_eq!(count.records(), 0);
        assert_eq!(count.count_after(), 16);
        count.counted(7, Some(17));
        assert_eq!(count.records(), 7);
        // A stale count (a range already counted) is ignored.
        count.counted(7, Some(17));
        assert_eq!(count.records(), 7);
    }
}
