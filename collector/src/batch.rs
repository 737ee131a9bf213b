//! What a transport session hands to the writer: a [`Batch`] of
//! [`RecordBlock`]s (records exactly as received), sequence events,
//! reliability statistics ([`TotalsReport`]) and billing handovers.
//!
//! Plain data shared by the decoder, the billing session, the store and the
//! writer; it depends on no other module of the collector but
//! [`crate::record`], which breaks the old `billing` ↔ `ingest` ↔ `store`
//! cycle (docs/architecture.md, "Collector session").

use std::ops::Range;
use std::sync::Arc;

use protocol::ipfix::Template;
use protocol::ipfix::reliability::ReliabilityStatistics;

use crate::record::SequenceEvent;

/// Billing identity and position of a block's first record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BillingTag {
    /// Billing exporter id (from the Cookie Echo).
    pub exporter_id: u32,
    /// Record sequence of the block's first record.
    pub first_record_sequence: u64,
}

/// A failover or failback arriving here: the exporter echoed a cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    /// When the Cookie Echo arrived, unix milliseconds.
    pub at_ms: i64,
    /// Billing exporter id of the echoed cookie.
    pub exporter_id: u32,
    /// Observation domain the cookie is for.
    pub domain: u32,
    /// The exporter's transport address.
    pub peer: String,
    /// PE that signed the echoed cookie; `None` for an introduction.
    pub from_pe: Option<u32>,
    /// This collector's PE identifier.
    pub to_pe: u32,
    /// Last record sequence the echoed cookie vouches for.
    pub record_sequence: Option<u64>,
}

/// Consecutive records of one message that share a template, kept exactly
/// as received.
#[derive(Debug, Clone)]
pub struct RecordBlock {
    /// "ip:port" of the exporting process.
    pub exporter: Arc<str>,
    /// Transport label: udp, tcp, sctp.
    pub transport: &'static str,
    /// Observation domain id (message header).
    pub domain: u32,
    /// The template the records follow.
    pub template: Arc<Template>,
    /// Export time of the message, unix seconds.
    pub export_time: u32,
    /// Sequence number of the message header.
    pub message_sequence: u32,
    /// Position of the first record among the message's data records.
    pub first_record_index: u32,
    /// Records in the block.
    pub record_count: u32,
    /// When the message arrived (collector clock), unix milliseconds.
    pub received_ms: i64,
    /// This block's records in [`Batch::bytes`].
    pub bytes: Range<usize>,
    /// Set on billing associations (after a Cookie Echo): whose records
    /// these are and the first one's record sequence.
    pub billing: Option<BillingTag>,
}

/// Exporting Process Reliability Statistics received (RFC 7011 4.3): stored
/// in `exporter_totals` and, for a billing domain, reconciled with what the
/// store holds (the exporter's declared losses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotalsReport {
    /// "ip:port" of the exporting process.
    pub peer: Arc<str>,
    /// Transport label: udp, tcp, sctp.
    pub transport: &'static str,
    /// When the statistics arrived, unix milliseconds.
    pub received_ms: i64,
    /// The statistics as received.
    pub stats: ReliabilityStatistics,
    /// On a billing association, for a domain it announced with a Cookie
    /// Echo: the billing exporter id and the first record sequence this
    /// association is responsible for (after the echoed cookie).
    pub billing: Option<(u32, u64)>,
}

/// Records and sequence events that travel to the writer together.
#[derive(Debug, Default)]
pub struct Batch {
    /// Record blocks, in the order received.
    pub blocks: Vec<RecordBlock>,
    /// The records' bytes of every block, back to back.
    pub bytes: Vec<u8>,
    /// Sequence anomalies (gaps, late messages, resyncs).
    pub events: Vec<SequenceEvent>,
    /// Exporters that arrived here with a Cookie Echo (failover/failback).
    pub handovers: Vec<Handover>,
    /// Reliability statistics, after the records that came before them.
    pub totals: Vec<TotalsReport>,
    pub(crate) records: usize,
}

impl Batch {
    /// Whether the batch carries nothing for the writer.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
            && self.events.is_empty()
            && self.handovers.is_empty()
            && self.totals.is_empty()
    }

    /// Data records in the batch.
    pub fn len(&self) -> usize {
        self.records
    }

    /// The records' bytes of one block.
    pub fn block_bytes(&self, block: &RecordBlock) -> &[u8] {
        &self.bytes[block.bytes.clone()]
    }

    /// An empty batch with room for about `records` records of `record_len`.
    pub(crate) fn with_capacity(records: usize, record_len: usize) -> Self {
        Self {
            blocks: Vec::with_capacity(records / 8),
            bytes: Vec::with_capacity(records * record_len),
            events: Vec::new(),
            handovers: Vec::new(),
            totals: Vec::new(),
            records: 0,
        }
    }
}
