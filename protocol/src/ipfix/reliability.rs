//! Exporting Process Reliability Statistics (RFC 7011 section 4.3): the
//! exporter's own account of what it sent and what it will never send, per
//! observation domain, as an Options Template and its Data Records. Sans-IO:
//! encode into a [`MessageWriter`], decode from a record's bytes.
//!
//! Layout (every element from the IANA registry, fixed length):
//!
//! | scope | element | id | bytes |
//! |---|---|---|---|
//! | yes | exportingProcessId (the billing exporter id, 0 for a plain exporter) | 144 | 4 |
//! | yes | observationDomainId (the domain the counts are about) | 149 | 4 |
//! | no | exportedMessageTotalCount | 41 | 8 |
//! | no | exportedFlowRecordTotalCount | 42 | 8 |
//! | no | notSentFlowTotalCount | 166 | 8 |
//! | no | systemInitTimeMilliseconds (when this Exporting Process started) | 160 | 8 |
//! | no | observationTimeMilliseconds (when the counts were taken) | 323 | 8 |
//!
//! RFC 7011 4.3 scopes the statistics by the Exporting Process; our counts
//! are per observation domain (record sequences are), so the domain is a
//! second scope field. The packet and octet counts of records not sent
//! (notSentPacketTotalCount, notSentOctetTotalCount) are left out: an
//! exporter that lost records in a crash no longer knows their contents.
//!
//! The statistics travel in their own observation domain,
//! [`STATISTICS_DOMAIN`] (message header), with their own RFC 7011 sequence
//! numbers (data records of that domain), so they never consume a number of
//! a billing domain's record-sequence space; over SCTP they go on stream 0
//! after the records they account for (docs/billing-continuity.md).

use super::encode::{MessageFull, MessageWriter};
use super::template::{FieldSpecifier, Template};

/// Template id of the statistics Options Template (in
/// [`STATISTICS_DOMAIN`], which holds no other template).
pub const TEMPLATE_ID: u16 = 0xFF00;
/// Observation Domain ID of the message headers that carry statistics.
/// Reserved: no exporter may bill in it (its sequence numbers count
/// statistics records, not billing records).
pub const STATISTICS_DOMAIN: u32 = u32::MAX;
/// Bytes of one statistics record.
pub const RECORD_LEN: usize = 4 + 4 + 8 * 5;

const EXPORTING_PROCESS_ID: u16 = 144;
const OBSERVATION_DOMAIN_ID: u16 = 149;
const EXPORTED_MESSAGE_TOTAL_COUNT: u16 = 41;
const EXPORTED_FLOW_RECORD_TOTAL_COUNT: u16 = 42;
const NOT_SENT_FLOW_TOTAL_COUNT: u16 = 166;
const SYSTEM_INIT_TIME_MILLISECONDS: u16 = 160;
const OBSERVATION_TIME_MILLISECONDS: u16 = 323;

/// The template's fields, scope fields first.
const FIELDS: [FieldSpecifier; 7] = [
    FieldSpecifier::iana(EXPORTING_PROCESS_ID, 4),
    FieldSpecifier::iana(OBSERVATION_DOMAIN_ID, 4),
    FieldSpecifier::iana(EXPORTED_MESSAGE_TOTAL_COUNT, 8),
    FieldSpecifier::iana(EXPORTED_FLOW_RECORD_TOTAL_COUNT, 8),
    FieldSpecifier::iana(NOT_SENT_FLOW_TOTAL_COUNT, 8),
    FieldSpecifier::iana(SYSTEM_INIT_TIME_MILLISECONDS, 8),
    FieldSpecifier::iana(OBSERVATION_TIME_MILLISECONDS, 8),
];

/// The statistics Options Template.
pub fn template() -> Template {
    Template::new(TEMPLATE_ID, 2, FIELDS.to_vec())
}

/// Whether `template` has exactly the statistics layout (whatever its id):
/// the collector recognises the records by layout, not by id. Allocation
/// free: it runs for every block a collector decodes.
pub fn is_statistics_template(template: &Template) -> bool {
    template.scope_field_count == 2 && template.fields == FIELDS
}

/// One statistics record: what one Exporting Process says about one domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReliabilityStatistics {
    /// The billing exporter id (0 for a plain exporter).
    pub exporting_process_id: u32,
    /// The observation domain the counts are about (second scope field,
    /// IE 149); never [`STATISTICS_DOMAIN`], which only carries them.
    pub observation_domain_id: u32,
    /// IPFIX messages of the domain sent by this process since it started.
    pub exported_messages: u64,
    /// Data records of the domain sent (billing: record sequences sent at
    /// least once, over all runs of the exporter).
    pub exported_records: u64,
    /// Data records that were numbered but will never be sent (billing:
    /// lost in a restart of the exporter; over all runs).
    pub not_sent_records: u64,
    /// Unix milliseconds when this Exporting Process (re)started.
    pub system_init_ms: u64,
    /// Unix milliseconds when the counts were taken.
    pub observation_ms: u64,
}

impl ReliabilityStatistics {
    /// `exported + not sent`: for a billing domain, every record sequence
    /// below this was sent before this record (on the same stream) or is
    /// declared never to be sent.
    pub fn accounted(&self) -> u64 {
        self.exported_records.saturating_add(self.not_sent_records)
    }

    /// The record's bytes per [`template`].
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut out = [0u8; RECORD_LEN];
        out[0..4].copy_from_slice(&self.exporting_process_id.to_be_bytes());
        out[4..8].copy_from_slice(&self.observation_domain_id.to_be_bytes());
        for (i, v) in [
            self.exported_messages,
            self.exported_records,
            self.not_sent_records,
            self.system_init_ms,
            self.observation_ms,
        ]
        .into_iter()
        .enumerate()
        {
            out[8 + i * 8..16 + i * 8].copy_from_slice(&v.to_be_bytes());
        }
        out
    }

    /// Decodes a record of the statistics layout; `None` if the length is
    /// wrong.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != RECORD_LEN {
            return None;
        }
        let u32_at = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_be_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        Some(Self {
            exporting_process_id: u32_at(0),
            observation_domain_id: u32_at(4),
            exported_messages: u64_at(8),
            exported_records: u64_at(16),
            not_sent_records: u64_at(24),
            system_init_ms: u64_at(32),
            observation_ms: u64_at(40),
        })
    }
}

/// Builds one message of the [`STATISTICS_DOMAIN`]: the Options Template
/// (when `with_template`, i.e. first on a transport session, or always over
/// UDP) and one record per entry. `sequence` is the number of statistics
/// records sent before in this session (RFC 7011 3.1). Returns the bytes and
/// how many records fit (the rest go in the next message).
pub fn encode_message(
    writer: &mut MessageWriter,
    export_time: u32,
    sequence: u32,
    with_template: bool,
    stats: &[ReliabilityStatistics],
) -> Result<(Vec<u8>, usize), MessageFull> {
    writer.start(STATISTICS_DOMAIN, export_time, sequence);
    if with_template {
        writer.add_template(&template())?;
    }
    let mut added = 0;
    for s in stats {
        if writer.add_record(TEMPLATE_ID, &s.encode()).is_err() {
            break;
        }
        added += 1;
    }
    if added == 0 && !stats.is_empty() {
        return Err(MessageFull);
    }
    Ok((writer.finish().to_vec(), added))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipfix::{Session, SessionConfig, TransportKind};

    fn sample(domain: u32) -> ReliabilityStatistics {
        ReliabilityStatistics {
            exporting_process_id: 42,
            observation_domain_id: domain,
            exported_messages: 1234,
            exported_records: 90_000,
            not_sent_records: 50_494,
            system_init_ms: 1_765_000_000_000,
            observation_ms: 1_765_000_002_500,
        }
    }

    #[test]
    fn records_round_trip_through_a_session() {
        let mut w = MessageWriter::new(1400);
        let stats = [sample(1), sample(2)];
        let (bytes, n) = encode_message(&mut w, 1_765_000_000, 7, true, &stats).unwrap();
        assert_eq!(n, 2);
        let mut session = Session::new(SessionConfig::new(TransportKind::Sctp));
        let mut decoded = Vec::new();
        let report = session
            .process(&bytes, 0, 1_765_000_000, |r| {
                assert!(is_statistics_template(r.template));
                assert_eq!(r.header.observation_domain_id, STATISTICS_DOMAIN);
                decoded.push(ReliabilityStatistics::decode(r.bytes).unwrap());
            })
            .unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.header.sequence_number, 7);
        assert_eq!(decoded, stats);
        assert_eq!(decoded[0].accounted(), 140_494);
    }

    #[test]
    fn other_layouts_and_lengths_are_not_statistics() {
        let mut t = template();
        assert!(is_statistics_template(&t));
        t.fields.swap(2, 3);
        let t = Template::new(TEMPLATE_ID, 2, t.fields);
        assert!(!is_statistics_template(&t));
        let scope1 = Template::new(TEMPLATE_ID, 1, template().fields);
        assert!(!is_statistics_template(&scope1));
        assert_eq!(ReliabilityStatistics::decode(&[0u8; RECORD_LEN - 1]), None);
        assert_eq!(template().fixed_record_len(), Some(RECORD_LEN));
    }
}
