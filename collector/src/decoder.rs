//! IPFIX decoding of one transport session into a [`Batch`]: records are
//! validated and copied as received, grouped into [`RecordBlock`]s, and
//! sequence anomalies and reliability statistics are taken out.
//!
//! No IO and no clock: the caller passes the receive time. Logs what is
//! wrong with the messages and counts into [`DecodeCounts`], which its
//! driver takes and publishes.

use std::sync::Arc;

use daemon_common::log_limit::LogLimiter;
use protocol::ipfix::reliability::{self, ReliabilityStatistics};
use protocol::ipfix::{DecodeError, SequenceCheck, Session, SessionConfig, Template};
use tracing::{debug, warn};

use crate::batch::{Batch, RecordBlock, TotalsReport};
use crate::decode_counts::DecodeCounts;
use crate::record::{SequenceEvent, SequenceEventKind};

/// Decodes the messages of one transport session into a [`Batch`], counting
/// and logging what is wrong with them.
pub struct SessionDecoder {
    exporter: Arc<str>,
    transport: &'static str,
    session: Session,
    /// Shared copies of the templates blocks refer to, so a block costs a
    /// reference count, not a template clone.
    templates: Vec<Arc<Template>>,
    /// Malformed-message log lines of this session (counted per session,
    /// so the clock is not read: the decoder stays sans-IO).
    errors_log: LogLimiter,
    /// A billing association: sequence numbers of announced domains are
    /// record sequences, reconciled by the writer, not here.
    billing: bool,
    /// Counted since the driver last took them ([`Self::take_counts`]).
    counts: DecodeCounts,
}

/// Log at most this many malformed messages per session in full, then only
/// every power of two, so a broken exporter cannot flood the log.
const FULL_ERROR_LOGS: u64 = 20;

/// Distinct templates a decoder keeps shared copies of before starting over
/// (a session may define up to `max_templates`; blocks only need the ones
/// in use).
const SHARED_TEMPLATES: usize = 64;

impl SessionDecoder {
    /// A decoder for the exporter at `exporter` ("ip:port").
    pub fn new(exporter: String, config: SessionConfig) -> Self {
        let transport = config.transport.as_str();
        Self {
            exporter: exporter.into(),
            transport,
            session: Session::new(config),
            templates: Vec::new(),
            errors_log: LogLimiter::first_then_powers_of_two(FULL_ERROR_LOGS),
            billing: false,
            counts: DecodeCounts {
                transport,
                ..DecodeCounts::default()
            },
        }
    }

    /// What was counted since the last call; the driver publishes it
    /// ([`crate::decode_counts::DecodeMetrics::publish`]).
    pub fn take_counts(&mut self) -> DecodeCounts {
        let transport = self.transport;
        std::mem::replace(
            &mut self.counts,
            DecodeCounts {
                transport,
                ..DecodeCounts::default()
            },
        )
    }

    /// The exporter's "ip:port".
    pub fn exporter(&self) -> &str {
        &self.exporter
    }

    /// Marks the session as a billing association (after a Cookie Echo).
    pub fn set_billing(&mut self) {
        self.billing = true;
    }

    /// The IPFIX session state (templates, sequence numbers).
    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    /// Counts and logs an error found outside [`Self::handle`] (framing).
    pub fn count_error(&mut self, err: &DecodeError) {
        self.log_errors(std::slice::from_ref(err));
    }

    fn log_errors(&mut self, errors: &[DecodeError]) {
        for err in errors {
            self.counts.count_error(err.reason());
            if let Some(allowed) = self.errors_log.allow() {
                warn!(peer = %self.exporter, transport = self.transport, reason = err.reason(),
                      occurrences = allowed.occurrences, "malformed IPFIX: {err}");
            }
        }
    }

    /// Decodes one message, received at `received_ms` (unix milliseconds,
    /// the caller's clock), into `out`. Returns the number of data records.
    pub fn handle(
        &mut self,
        bytes: &[u8],
        stream: u16,
        received_ms: i64,
        out: &mut Batch,
    ) -> usize {
        let now_secs = (received_ms / 1000) as u64;
        let Self {
            exporter,
            transport,
            session,
            templates,
            ..
        } = self;
        let transport = *transport;
        let first_block = out.blocks.len();
        let records_before = out.records;
        // The session's template of the block being built: the session holds
        // it for the whole message, so its address identifies it meanwhile.
        let mut block_template: *const Template = std::ptr::null();
        let result = session.process(bytes, stream, now_secs, |record| {
            let start = out.bytes.len();
            out.bytes.extend_from_slice(record.bytes);
            out.records += 1;
            // Records of one data set arrive in a row: extend the block.
            if out.blocks.len() > first_block && std::ptr::eq(block_template, record.template) {
                let block = out.blocks.last_mut().expect("a block of this message");
                if block.first_record_index + block.record_count == record.index_in_message {
                    block.record_count += 1;
                    block.bytes.end = out.bytes.len();
                    return;
                }
            }
            block_template = record.template;
            out.blocks.push(RecordBlock {
                exporter: Arc::clone(exporter),
                transport,
                domain: record.header.observation_domain_id,
                template: shared_template(templates, record.template),
                export_time: record.header.export_time,
                message_sequence: record.header.sequence_number,
                first_record_index: record.index_in_message,
                record_count: 1,
                received_ms,
                bytes: start..out.bytes.len(),
                billing: None,
            });
        });
        self.counts.messages += 1;
        let report = match result {
            Ok(report) => report,
            Err(err) => {
                self.log_errors(std::slice::from_ref(&err));
                return 0;
            }
        };
        if !report.errors.is_empty() {
            self.log_errors(&report.errors);
        }
        let (kind, records) = match report.sequence {
            SequenceCheck::First | SequenceCheck::InOrder => (None, 0),
            SequenceCheck::Gap { lost } => (Some(SequenceEventKind::Gap), lost),
            SequenceCheck::Behind { behind } => (Some(SequenceEventKind::Behind), behind),
            SequenceCheck::Resync => (Some(SequenceEventKind::Resync), 0),
        };
        if let Some(kind) = kind {
            if kind == SequenceEventKind::Gap {
                self.counts.sequence_lost_records += records;
            }
            debug!(peer = %self.exporter, domain = report.header.observation_domain_id,
                   kind = kind.as_str(), records, "sequence anomaly");
            out.events.push(SequenceEvent {
                exporter: self.exporter.to_string(),
                transport,
                domain: report.header.observation_domain_id,
                stream,
                at_ms: received_ms,
                kind,
                sequence: report.header.sequence_number,
                records,
            });
        }
        self.take_statistics(first_block, stream, received_ms, out);
        let n = out.records - records_before;
        self.counts.records += n as u64;
        n
    }

    /// Moves the records of the reliability statistics layout out of the
    /// message's blocks into [`Batch::totals`] (they are the exporter's
    /// account, not flow records). On a plain session, a total beyond the
    /// last message seen is a lost tail: counted as a sequence gap.
    fn take_statistics(
        &mut self,
        first_block: usize,
        stream: u16,
        received_ms: i64,
        out: &mut Batch,
    ) {
        let mut i = first_block;
        while i < out.blocks.len() {
            if !reliability::is_statistics_template(&out.blocks[i].template) {
                i += 1;
                continue;
            }
            let block = out.blocks.remove(i);
            out.records -= block.record_count as usize;
            let bytes = &out.bytes[block.bytes.clone()];
            for record in bytes.chunks_exact(reliability::RECORD_LEN) {
                let stats = ReliabilityStatistics::decode(record).expect("fixed length");
                out.totals.push(TotalsReport {
                    peer: Arc::clone(&self.exporter),
                    transport: self.transport,
                    received_ms,
                    stats,
                    billing: None,
                });
                if self.billing {
                    continue;
                }
                let domain = stats.observation_domain_id;
                let lost = self
                    .session
                    .reconcile_exported_total(domain, stream, stats.exported_records)
                    .unwrap_or(0);
                if lost > 0 {
                    self.counts.sequence_lost_records += lost;
                    warn!(peer = %self.exporter, domain, lost,
                          "exporter's statistics count records never received (lost tail)");
                    out.events.push(SequenceEvent {
                        exporter: self.exporter.to_string(),
                        transport: self.transport,
                        domain,
                        stream,
                        at_ms: received_ms,
                        kind: SequenceEventKind::Gap,
                        sequence: stats.exported_records as u32,
                        records: lost,
                    });
                }
            }
        }
    }
}

/// The shared copy of `template` (the session's own `Arc` is not reachable
/// from a [`protocol::ipfix::DataRecord`]). Compared by content: a pointer
/// alone could be a freed template's address reused.
fn shared_template(shared: &mut Vec<Arc<Template>>, template: &Template) -> Arc<Template> {
    if let Some(t) = shared.iter().find(|t| ***t == *template) {
        return Arc::clone(t);
    }
    if shared.len() >= SHARED_TEMPLATES {
        shared.clear();
    }
    let t = Arc::new(template.clone());
    shared.push(Arc::clone(&t));
    t
}

#[cfg(test)]
mod tests {
    use protocol::ipfix::TransportKind;
    use protocol::ipfix::flow::synthetic_message;

    use super::*;

    fn message(sequence: u32, records: u64) -> Vec<u8> {
        synthetic_message(1, sequence, records)
    }

    #[test]
    fn the_decoder_counts_messages_records_gaps_and_errors_until_taken() {
        let mut decoder = SessionDecoder::new("192.0.2.1:4739".into(), {
            SessionConfig::new(TransportKind::Udp)
        });
        let mut batch = Batch::default();
        assert_eq!(decoder.handle(&message(0, 5), 0, 0, &mut batch), 5);
        // Records 5..8 never arrive: a gap of 3.
        assert_eq!(decoder.handle(&message(8, 2), 0, 0, &mut batch), 2);
        // Not IPFIX at all: counted by reason, nothing taken in.
        let mut garbage = message(10, 1);
        garbage[1] = 9; // version 9
        assert_eq!(decoder.handle(&garbage, 0, 0, &mut batch), 0);

        let counts = decoder.take_counts();
        assert_eq!(counts.transport, "udp");
        assert_eq!((counts.messages, counts.records), (3, 7));
        assert_eq!(counts.sequence_lost_records, 3);
        assert_eq!(counts.errors.len(), 1, "{:?}", counts.errors);
        assert_eq!(counts.errors[0].1, 1);
        // Taken: the next take starts from zero.
        assert!(decoder.take_counts().is_zero());
    }
}
