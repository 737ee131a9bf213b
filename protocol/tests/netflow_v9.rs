//! NetFlow v9 decoder: well-formed packets, every class of malformed input,
//! session limits, a no-panic property test, and interop with Wireshark's
//! `cflow` dissector (tshark) on a pcap written here.

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::process::Command;

use proptest::prelude::*;
use protocol::ipfix::registry::ids;
use protocol::ipfix::value::{Value, decode_element};
use protocol::ipfix::{FieldSpecifier, Template};
use protocol::netflow_v9::{
    DecodeError, MAX_RECORD_LEN, Packet, PacketHeader, ScopeType, SequenceCheck, Session,
    SessionConfig,
};

// ---------------------------------------------------------------- builders

fn header(count: u16, sys_uptime: u32, unix_secs: u32, sequence: u32, source_id: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(20);
    out.extend_from_slice(&9u16.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(&sys_uptime.to_be_bytes());
    out.extend_from_slice(&unix_secs.to_be_bytes());
    out.extend_from_slice(&sequence.to_be_bytes());
    out.extend_from_slice(&source_id.to_be_bytes());
    out
}

/// A FlowSet with its header, zero-padded to a 4-byte boundary.
fn flowset(id: u16, body: &[u8]) -> Vec<u8> {
    let padded = (4 + body.len()).div_ceil(4) * 4;
    let mut out = Vec::with_capacity(padded);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(padded as u16).to_be_bytes());
    out.extend_from_slice(body);
    out.resize(padded, 0);
    out
}

fn pairs(out: &mut Vec<u8>, fields: &[(u16, u16)]) {
    for &(field_type, length) in fields {
        out.extend_from_slice(&field_type.to_be_bytes());
        out.extend_from_slice(&length.to_be_bytes());
    }
}

fn template_record(id: u16, fields: &[(u16, u16)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(fields.len() as u16).to_be_bytes());
    pairs(&mut out, fields);
    out
}

fn options_template_record(id: u16, scopes: &[(u16, u16)], options: &[(u16, u16)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&((scopes.len() * 4) as u16).to_be_bytes());
    out.extend_from_slice(&((options.len() * 4) as u16).to_be_bytes());
    pairs(&mut out, scopes);
    pairs(&mut out, options);
    out
}

fn packet(count: u16, sequence: u32, source_id: u32, flowsets: &[Vec<u8>]) -> Vec<u8> {
    let mut out = header(count, 360_000, 1_700_000_000, sequence, source_id);
    for set in flowsets {
        out.extend_from_slice(set);
    }
    out
}

/// The IPv4 flow layout used by several tests, v9 field types and lengths.
const FLOW_FIELDS: &[(u16, u16)] = &[
    (8, 4),  // IPV4_SRC_ADDR
    (12, 4), // IPV4_DST_ADDR
    (7, 2),  // L4_SRC_PORT
    (11, 2), // L4_DST_PORT
    (4, 1),  // PROTOCOL
    (1, 4),  // IN_BYTES, reduced to 4 bytes as v9 exporters do
    (2, 4),  // IN_PKTS
];
const FLOW_RECORD_LEN: usize = 21;

fn flow_record(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, octets: u32) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&src);
    out.extend_from_slice(&dst);
    out.extend_from_slice(&sport.to_be_bytes());
    out.extend_from_slice(&dport.to_be_bytes());
    out.push(6);
    out.extend_from_slice(&octets.to_be_bytes());
    out.extend_from_slice(&3u32.to_be_bytes());
    out
}

fn template_flowset(records: &[Vec<u8>]) -> Vec<u8> {
    flowset(0, &records.concat())
}

type Collected = Vec<(u16, Vec<u8>)>;

/// Runs one packet through the session, collecting (template id, bytes).
fn run(
    session: &mut Session<&'static str>,
    exporter: &'static str,
    bytes: &[u8],
    now: u64,
) -> (
    Result<protocol::netflow_v9::PacketReport, DecodeError>,
    Collected,
) {
    let mut records = Vec::new();
    let report = session.process(&exporter, bytes, now, |record| {
        records.push((record.template.id, record.bytes.to_vec()));
    });
    (report, records)
}

fn new_session() -> Session<&'static str> {
    Session::new(SessionConfig::default())
}

// ---------------------------------------------------------- well-formed

#[test]
fn template_and_data_in_one_packet_decode_to_typed_fields() {
    let data = [
        flow_record([10, 0, 0, 1], [192, 0, 2, 7], 40000, 443, 1500),
        flow_record([10, 0, 0, 2], [192, 0, 2, 8], 40001, 80, 70000),
    ]
    .concat();
    let bytes = packet(
        3,
        41,
        7,
        &[
            template_flowset(&[template_record(300, FLOW_FIELDS)]),
            flowset(300, &data),
        ],
    );
    let mut session = new_session();
    let mut decoded = Vec::new();
    let report = session
        .process(&"r1", &bytes, 0, |record| {
            assert_eq!(record.bytes.len(), FLOW_RECORD_LEN);
            assert_eq!(record.header.source_id, 7);
            let fields: Vec<(u16, String)> = record
                .fields()
                .map(|(spec, raw)| {
                    let value = decode_element(spec.enterprise, spec.id, raw).unwrap();
                    (spec.id, value.to_string())
                })
                .collect();
            decoded.push(fields);
        })
        .unwrap();
    assert_eq!(report.data_records, 2);
    assert_eq!(report.templates_defined, 1);
    assert_eq!(report.records_seen, 3);
    assert!(report.count_matches());
    assert_eq!(report.sequence, SequenceCheck::First);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(
        decoded[1],
        vec![
            (ids::SOURCE_IPV4_ADDRESS, "10.0.0.2".to_owned()),
            (ids::DESTINATION_IPV4_ADDRESS, "192.0.2.8".to_owned()),
            (ids::SOURCE_TRANSPORT_PORT, "40001".to_owned()),
            (ids::DESTINATION_TRANSPORT_PORT, "80".to_owned()),
            (ids::PROTOCOL_IDENTIFIER, "6".to_owned()),
            (ids::OCTET_DELTA_COUNT, "70000".to_owned()),
            (ids::PACKET_DELTA_COUNT, "3".to_owned()),
        ]
    );
    let template = session.template(&"r1", 7, 300).unwrap();
    assert_eq!(
        template.ipfix,
        Template::new(
            300,
            0,
            FLOW_FIELDS
                .iter()
                .map(|&(t, l)| FieldSpecifier::iana(t, l))
                .collect()
        )
    );
}

#[test]
fn templates_persist_across_packets_and_sequence_counts_packets() {
    let mut session = new_session();
    let template = packet(
        1,
        100,
        1,
        &[template_flowset(&[template_record(256, FLOW_FIELDS)])],
    );
    let data = |sequence: u32| {
        packet(
            1,
            sequence,
            1,
            &[flowset(
                256,
                &flow_record([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, 3),
            )],
        )
    };
    assert_eq!(
        run(&mut session, "r", &template, 0).0.unwrap().sequence,
        SequenceCheck::First
    );
    let (report, records) = run(&mut session, "r", &data(101), 1);
    let report = report.unwrap();
    assert_eq!(records.len(), 1);
    // One data record per packet, yet the next packet is 102: v9 counts packets.
    assert_eq!(report.sequence, SequenceCheck::InOrder);
    assert_eq!(
        run(&mut session, "r", &data(102), 1).0.unwrap().sequence,
        SequenceCheck::InOrder
    );
    assert_eq!(
        run(&mut session, "r", &data(105), 1).0.unwrap().sequence,
        SequenceCheck::Gap { lost_packets: 2 }
    );
    assert_eq!(
        run(&mut session, "r", &data(104), 1).0.unwrap().sequence,
        SequenceCheck::Behind { packets: 2 }
    );
    // The late packet did not move the expectation back.
    assert_eq!(
        run(&mut session, "r", &data(106), 1).0.unwrap().sequence,
        SequenceCheck::InOrder
    );
}

#[test]
fn sequence_numbers_wrap_around() {
    let mut session = new_session();
    let empty = |sequence| packet(0, sequence, 1, &[]);
    assert_eq!(
        run(&mut session, "r", &empty(u32::MAX), 0)
            .0
            .unwrap()
            .sequence,
        SequenceCheck::First
    );
    assert_eq!(
        run(&mut session, "r", &empty(0), 0).0.unwrap().sequence,
        SequenceCheck::InOrder
    );
}

#[test]
fn templates_are_scoped_per_exporter_and_source_id() {
    let mut session = new_session();
    let short = packet(
        1,
        0,
        1,
        &[template_flowset(&[template_record(400, &[(4, 1)])])],
    );
    let long = packet(
        1,
        0,
        1,
        &[template_flowset(&[template_record(400, &[(1, 8)])])],
    );
    run(&mut session, "a", &short, 0).0.unwrap();
    run(&mut session, "b", &long, 0).0.unwrap();
    let data = packet(1, 1, 1, &[flowset(400, &[0, 0, 0, 0, 0, 0, 0, 9])]);
    assert_eq!(
        run(&mut session, "a", &data, 0).1.len(),
        8,
        "1-byte records for a"
    );
    assert_eq!(
        run(&mut session, "b", &data, 0).1.len(),
        1,
        "one 8-byte record for b"
    );
    // Same exporter, other source id: the template is unknown there.
    let other_source = packet(1, 1, 2, &[flowset(400, &[0; 8])]);
    let (report, records) = run(&mut session, "a", &other_source, 0);
    assert!(records.is_empty());
    assert_eq!(
        report.unwrap().errors,
        vec![DecodeError::UnknownTemplate {
            source_id: 2,
            template_id: 400
        }]
    );
    assert_eq!(session.template_count(), 2);
    session.forget_exporter(&"a");
    assert_eq!(session.template_count(), 1);
}

#[test]
fn redefined_template_replaces_the_old_layout() {
    let mut session = new_session();
    run(
        &mut session,
        "r",
        &packet(
            1,
            0,
            1,
            &[template_flowset(&[template_record(256, &[(4, 1)])])],
        ),
        0,
    )
    .0
    .unwrap();
    run(
        &mut session,
        "r",
        &packet(
            1,
            1,
            1,
            &[template_flowset(&[template_record(256, &[(7, 2)])])],
        ),
        0,
    )
    .0
    .unwrap();
    assert_eq!(session.template_count(), 1);
    let (_, records) = run(
        &mut session,
        "r",
        &packet(1, 2, 1, &[flowset(256, &[0, 80, 1, 187])]),
        0,
    );
    assert_eq!(records, vec![(256, vec![0, 80]), (256, vec![1, 187])]);
}

#[test]
fn options_template_maps_scopes_to_ipfix_elements() {
    let options = options_template_record(
        512,
        &[(2, 4)],           // scope Interface, 4 bytes
        &[(34, 4), (35, 1)], // samplingInterval, samplingAlgorithm
    );
    let record = [0, 0, 0, 3, 0, 0, 0, 100, 2];
    let bytes = packet(2, 0, 1, &[flowset(1, &options), flowset(512, &record)]);
    let mut session = new_session();
    let mut seen = Vec::new();
    let report = session
        .process(&"r", &bytes, 0, |record| {
            assert!(record.template.is_options());
            assert_eq!(
                record.v9_template.scope_fields[0].scope,
                ScopeType::Interface
            );
            for (spec, raw) in record.fields() {
                seen.push((spec.id, decode_element(0, spec.id, raw).unwrap().as_u64()));
            }
        })
        .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.records_seen, 2);
    assert_eq!(
        seen,
        vec![
            (ids::INGRESS_INTERFACE, Some(3)),
            (34, Some(100)),
            (35, Some(2))
        ]
    );
    let template = &session.template(&"r", 1, 512).unwrap().ipfix;
    assert_eq!(template.scope_field_count, 1);
    assert_eq!(template.fixed_record_len(), Some(9));
}

#[test]
fn every_scope_type_has_a_mapping() {
    let scopes = [(1, 4), (1, 16), (1, 2), (2, 4), (3, 4), (4, 4), (5, 2)];
    let options = options_template_record(600, &scopes, &[(34, 4)]);
    let mut session = new_session();
    let report = run(
        &mut session,
        "r",
        &packet(1, 0, 1, &[flowset(1, &options)]),
        0,
    )
    .0
    .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let template = &session.template(&"r", 1, 600).unwrap().ipfix;
    let mapped: Vec<u16> = template.fields.iter().map(|f| f.id).collect();
    assert_eq!(
        mapped,
        vec![
            ids::EXPORTER_IPV4_ADDRESS,
            ids::EXPORTER_IPV6_ADDRESS,
            ids::EXPORTING_PROCESS_ID,
            ids::INGRESS_INTERFACE,
            ids::LINE_CARD_ID,
            ids::METERING_PROCESS_ID,
            ids::TEMPLATE_ID,
            34,
        ]
    );
    assert_eq!(template.scope_field_count, 7);
}

#[test]
fn padding_in_template_and_data_flowsets_is_ignored() {
    // Options template records are 2 mod 4 bytes long: padded.
    let options = options_template_record(700, &[(1, 4)], &[(36, 2)]);
    assert_eq!(options.len() % 4, 2);
    // 3 records of 3 bytes = 9 bytes, padded with 3 zeros.
    let template = template_record(701, &[(4, 1), (7, 2)]);
    let data = [6, 0, 80, 17, 0, 53, 1, 1, 187];
    let bytes = packet(
        5,
        0,
        1,
        &[
            flowset(1, &options),
            template_flowset(&[template]),
            flowset(701, &data),
        ],
    );
    let (report, records) = run(&mut new_session(), "r", &bytes, 0);
    let report = report.unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(records.len(), 3);
    assert!(report.count_matches());
}

#[test]
fn wrong_count_is_reported_but_records_are_kept() {
    let bytes = packet(
        9,
        0,
        1,
        &[
            template_flowset(&[template_record(256, &[(4, 1)])]),
            flowset(256, &[6]),
        ],
    );
    let (report, records) = run(&mut new_session(), "r", &bytes, 0);
    let report = report.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(report.records_seen, 2);
    assert!(!report.count_matches());
}

#[test]
fn uptime_converts_to_unix_time() {
    let header = PacketHeader {
        version: 9,
        count: 0,
        sys_uptime_ms: 10_000,
        unix_secs: 1_700_000_000,
        sequence_number: 0,
        source_id: 0,
    };
    assert_eq!(
        header.uptime_to_unix_millis(4_000),
        1_700_000_000_000 - 6_000
    );
    assert_eq!(
        header.uptime_to_unix_millis(10_500),
        1_700_000_000_000 + 500
    );
    // Uptime wrapped between the flow start and the export.
    let wrapped = PacketHeader {
        sys_uptime_ms: 1_000,
        ..header
    };
    assert_eq!(
        wrapped.uptime_to_unix_millis(u32::MAX - 999),
        1_700_000_000_000 - 2_000
    );
}

// ------------------------------------------------------------ malformed

#[test]
fn truncated_header_is_an_error() {
    for len in [0, 1, 19] {
        let bytes = vec![0u8; len];
        let err = new_session().process(&"r", &bytes, 0, |_| {}).unwrap_err();
        assert_eq!(err, DecodeError::TruncatedHeader { have: len });
    }
}

#[test]
fn wrong_version_is_an_error() {
    for version in [5u16, 10, 0] {
        let mut bytes = packet(0, 0, 1, &[]);
        bytes[..2].copy_from_slice(&version.to_be_bytes());
        assert_eq!(
            Packet::parse(&bytes).unwrap_err(),
            DecodeError::WrongVersion(version)
        );
        assert_eq!(
            new_session()
                .process(&"r", &bytes, 0, |_| {})
                .unwrap_err()
                .reason(),
            "wrong_version"
        );
    }
}

#[test]
fn flowset_shorter_than_its_header_stops_after_good_flowsets() {
    let mut bytes = packet(
        2,
        0,
        1,
        &[
            template_flowset(&[template_record(256, &[(4, 1)])]),
            flowset(256, &[6, 17, 1, 1]),
        ],
    );
    let offset = bytes.len();
    bytes.extend_from_slice(&[1, 0, 0, 2]); // length 2 < 4
    bytes.extend_from_slice(&flowset(256, &[6, 6, 6, 6]));
    let (report, records) = run(&mut new_session(), "r", &bytes, 0);
    let report = report.unwrap();
    assert_eq!(records.len(), 4, "records before the bad flowset are kept");
    assert_eq!(
        report.errors,
        vec![DecodeError::FlowSetTooShort { offset, length: 2 }]
    );
}

#[test]
fn flowset_overrunning_the_packet_stops_after_good_flowsets() {
    let mut bytes = packet(
        2,
        0,
        1,
        &[
            template_flowset(&[template_record(256, &[(4, 1)])]),
            flowset(256, &[6, 17, 1, 1]),
        ],
    );
    let offset = bytes.len();
    bytes.extend_from_slice(&[1, 0, 0, 200, 9, 9, 9, 9]);
    let (report, records) = run(&mut new_session(), "r", &bytes, 0);
    assert_eq!(records.len(), 4);
    assert_eq!(
        report.unwrap().errors,
        vec![DecodeError::FlowSetOverrun {
            offset,
            flowset_id: 256,
            length: 200,
            remaining: 8
        }]
    );
}

#[test]
fn data_for_unknown_template_is_skipped_and_later_flowsets_decode() {
    let bytes = packet(
        3,
        0,
        9,
        &[
            flowset(999, &[1, 2, 3, 4]),
            template_flowset(&[template_record(256, &[(4, 1)])]),
            // Two 1-byte records, padded with two zeros.
            flowset(256, &[6, 17]),
        ],
    );
    let (report, records) = run(&mut new_session(), "r", &bytes, 0);
    let report = report.unwrap();
    assert_eq!(
        report.errors,
        vec![DecodeError::UnknownTemplate {
            source_id: 9,
            template_id: 999
        }]
    );
    assert_eq!(
        records,
        vec![(256, vec![6]), (256, vec![17])],
        "padding is no record"
    );
}

#[test]
fn template_with_zero_fields_is_refused_and_the_next_one_kept() {
    let bytes = packet(
        2,
        0,
        1,
        &[template_flowset(&[
            template_record(256, &[]),
            template_record(257, &[(4, 1)]),
        ])],
    );
    let mut session = new_session();
    let report = run(&mut session, "r", &bytes, 0).0.unwrap();
    assert_eq!(
        report.errors,
        vec![DecodeError::TemplateWithoutFields { template_id: 256 }]
    );
    assert_eq!(report.templates_defined, 1);
    assert!(session.template(&"r", 1, 257).is_some());
    assert!(session.template(&"r", 1, 256).is_none());
}

#[test]
fn reserved_template_id_is_refused() {
    let bytes = packet(
        1,
        0,
        1,
        &[template_flowset(&[template_record(255, &[(4, 1)])])],
    );
    let report = run(&mut new_session(), "r", &bytes, 0).0.unwrap();
    assert_eq!(report.errors, vec![DecodeError::TemplateIdReserved(255)]);
}

#[test]
fn absurd_field_counts_and_lengths_are_refused() {
    // A field count far beyond the flowset: truncated, no giant allocation.
    let mut huge_count = 256u16.to_be_bytes().to_vec();
    huge_count.extend_from_slice(&u16::MAX.to_be_bytes());
    huge_count.extend_from_slice(&[0, 4, 0, 1]);
    let report = run(
        &mut new_session(),
        "r",
        &packet(1, 0, 1, &[flowset(0, &huge_count)]),
        0,
    )
    .0
    .unwrap();
    assert_eq!(
        report.errors,
        vec![DecodeError::TemplateTruncated { flowset_id: 0 }]
    );

    // Length 65535 is IPFIX's variable-length marker, meaningless in v9.
    let variable = packet(
        1,
        0,
        1,
        &[template_flowset(&[template_record(256, &[(82, 65535)])])],
    );
    let report = run(&mut new_session(), "r", &variable, 0).0.unwrap();
    assert_eq!(
        report.errors,
        vec![DecodeError::InvalidFieldLength {
            template_id: 256,
            field_type: 82,
            length: 65535
        }]
    );

    // Records longer than any packet can carry.
    let long = packet(
        1,
        0,
        1,
        &[template_flowset(&[template_record(
            256,
            &[(82, 65000), (83, 65000)],
        )])],
    );
    let report = run(&mut new_session(), "r", &long, 0).0.unwrap();
    assert_eq!(
        report.errors,
        vec![DecodeError::RecordTooLong {
            template_id: 256,
            length: 130_000
        }]
    );
    const { assert!(130_000 > MAX_RECORD_LEN) };

    // Only zero-length fields: records of no bytes cannot be counted.
    let empty = packet(
        1,
        0,
        1,
        &[template_flowset(&[template_record(256, &[(4, 0)])])],
    );
    let report = run(&mut new_session(), "r", &empty, 0).0.unwrap();
    assert_eq!(
        report.errors,
        vec![DecodeError::EmptyRecord { template_id: 256 }]
    );
}

#[test]
fn malformed_options_templates_are_refused() {
    // Scope length not a multiple of 4: the record's extent is unknown.
    let mut bad_lengths = Vec::new();
    bad_lengths.extend_from_slice(&512u16.to_be_bytes());
    bad_lengths.extend_from_slice(&6u16.to_be_bytes());
    bad_lengths.extend_from_slice(&4u16.to_be_bytes());
    bad_lengths.extend_from_slice(&[0, 2, 0, 4, 0, 0, 0, 34, 0, 4]);
    let report = run(
        &mut new_session(),
        "r",
        &packet(1, 0, 1, &[flowset(1, &bad_lengths)]),
        0,
    )
    .0
    .unwrap();
    assert_eq!(
        report.errors,
        vec![DecodeError::BadOptionsLengths {
            template_id: 512,
            scope_length: 6,
            option_length: 4
        }]
    );

    let no_scope = options_template_record(513, &[], &[(34, 4)]);
    let unknown_scope = options_template_record(514, &[(9, 4)], &[(34, 4)]);
    let good = options_template_record(515, &[(2, 4)], &[(34, 4)]);
    let mut session = new_session();
    let bytes = packet(
        3,
        0,
        1,
        &[flowset(1, &[no_scope, unknown_scope, good].concat())],
    );
    let report = run(&mut session, "r", &bytes, 0).0.unwrap();
    assert_eq!(
        report.errors,
        vec![
            DecodeError::OptionsWithoutScope { template_id: 513 },
            DecodeError::UnknownScopeType {
                template_id: 514,
                scope_type: 9
            },
        ]
    );
    assert!(
        session.template(&"r", 1, 515).is_some(),
        "the valid record after them is kept"
    );
}

#[test]
fn reserved_flowset_id_is_skipped() {
    let bytes = packet(
        2,
        0,
        1,
        &[
            flowset(7, &[1, 2, 3, 4]),
            template_flowset(&[template_record(256, &[(7, 2)])]),
            flowset(256, &[0, 53]),
        ],
    );
    let (report, records) = run(&mut new_session(), "r", &bytes, 0);
    assert_eq!(
        report.unwrap().errors,
        vec![DecodeError::ReservedFlowSetId {
            offset: 20,
            flowset_id: 7
        }]
    );
    assert_eq!(records, vec![(256, vec![0, 53])]);
}

#[test]
fn stray_bytes_after_the_last_flowset_are_reported() {
    let mut bytes = packet(0, 0, 1, &[]);
    bytes.extend_from_slice(&[0, 1, 2]);
    let report = run(&mut new_session(), "r", &bytes, 0).0.unwrap();
    assert_eq!(
        report.errors,
        vec![DecodeError::FlowSetHeaderTruncated {
            offset: 20,
            remaining: 3
        }]
    );
    // Zeros there are datagram padding.
    let mut padded = packet(0, 0, 1, &[]);
    padded.extend_from_slice(&[0, 0]);
    assert!(
        run(&mut new_session(), "r", &padded, 0)
            .0
            .unwrap()
            .errors
            .is_empty()
    );
}

#[test]
fn trailing_garbage_in_a_data_flowset_is_reported_after_its_records() {
    let mut session = new_session();
    run(
        &mut session,
        "r",
        &packet(
            1,
            0,
            1,
            &[template_flowset(&[template_record(256, FLOW_FIELDS)])],
        ),
        0,
    )
    .0
    .unwrap();
    let mut body = flow_record([1, 2, 3, 4], [5, 6, 7, 8], 1, 2, 3);
    body.extend_from_slice(&[0xff; 11]); // 32 bytes: one record and 11 bytes of junk
    let (report, records) = run(
        &mut session,
        "r",
        &packet(1, 1, 1, &[flowset(256, &body)]),
        0,
    );
    assert_eq!(records.len(), 1);
    assert_eq!(
        report.unwrap().errors,
        vec![DecodeError::TrailingBytes {
            template_id: 256,
            length: 11
        }]
    );
}

// --------------------------------------------------------------- limits

#[test]
fn template_limits_are_enforced() {
    let mut session = Session::new(SessionConfig {
        max_templates: 3,
        max_templates_per_source: 2,
        max_sources: 2,
        template_lifetime_secs: None,
    });
    let three = packet(
        3,
        0,
        1,
        &[template_flowset(&[
            template_record(256, &[(4, 1)]),
            template_record(257, &[(4, 1)]),
            template_record(258, &[(4, 1)]),
        ])],
    );
    let report = run(&mut session, "a", &three, 0).0.unwrap();
    assert_eq!(
        report.errors,
        vec![DecodeError::TemplateLimit {
            template_id: 258,
            limit: 2
        }]
    );
    // A refresh of a known template is always accepted.
    let refresh = packet(
        1,
        1,
        1,
        &[template_flowset(&[template_record(256, &[(4, 1)])])],
    );
    assert!(
        run(&mut session, "a", &refresh, 0)
            .0
            .unwrap()
            .errors
            .is_empty()
    );

    let two_more = packet(
        2,
        0,
        1,
        &[template_flowset(&[
            template_record(300, &[(4, 1)]),
            template_record(301, &[(4, 1)]),
        ])],
    );
    let report = run(&mut session, "b", &two_more, 0).0.unwrap();
    assert_eq!(
        report.errors,
        vec![DecodeError::TemplateLimit {
            template_id: 301,
            limit: 3
        }]
    );
    assert_eq!(session.template_count(), 3);

    // A third (exporter, source id) is not tracked at all.
    let report = run(&mut session, "c", &refresh, 0).0.unwrap();
    assert_eq!(
        report.errors,
        vec![DecodeError::SourceLimit {
            source_id: 1,
            limit: 2
        }]
    );
    assert_eq!(report.sequence, SequenceCheck::Untracked);
}

#[test]
fn templates_expire_when_not_refreshed() {
    let mut session = Session::new(SessionConfig {
        template_lifetime_secs: Some(10),
        ..SessionConfig::default()
    });
    let define = |id| {
        packet(
            1,
            0,
            1,
            &[template_flowset(&[template_record(id, &[(4, 1)])])],
        )
    };
    run(&mut session, "r", &define(256), 100).0.unwrap();
    run(&mut session, "r", &define(257), 105).0.unwrap();
    let data = packet(1, 1, 1, &[flowset(256, &[6, 6, 6, 6])]);
    assert_eq!(
        run(&mut session, "r", &data, 110).1.len(),
        4,
        "still live at 10 s"
    );
    let (report, records) = run(&mut session, "r", &data, 111);
    assert!(records.is_empty());
    assert_eq!(
        report.unwrap().errors,
        vec![DecodeError::UnknownTemplate {
            source_id: 1,
            template_id: 256
        }]
    );
    assert_eq!(session.template_count(), 1);
    assert_eq!(session.expire_templates(116), 1);
    assert_eq!(session.template_count(), 0);
}

// ------------------------------------------------------------ properties

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut session = new_session();
        let _ = session.process(&"r", &bytes, 0, |record| {
            let _ = record.fields().count();
        });
        if let Ok(packet) = Packet::parse(&bytes) {
            for flowset in packet.flowsets().flatten() {
                for template in flowset.templates().flatten() {
                    let _ = template.to_ipfix();
                }
            }
        }
    }

    #[test]
    fn arbitrary_flowsets_after_a_valid_header_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..600),
        template_first in any::<bool>(),
    ) {
        let mut session = new_session();
        // Prime the session with a template so random data flowsets of id
        // 256 reach the record splitting code.
        if template_first {
            let prime = packet(1, 0, 1, &[template_flowset(&[template_record(256, &[(4, 1), (7, 2)])])]);
            session.process(&"r", &prime, 0, |_| {}).unwrap();
        }
        let mut bytes = header(3, 0, 0, 1, 1);
        bytes.extend_from_slice(&body);
        let mut total = 0usize;
        let report = session.process(&"r", &bytes, 0, |record| {
            total += record.bytes.len();
            assert_eq!(record.bytes.len(), record.template.fixed_record_len().unwrap());
        }).unwrap();
        prop_assert!(total <= body.len());
        prop_assert!(report.records_seen >= report.data_records);
    }

    #[test]
    fn generated_templates_and_records_round_trip(
        fields in proptest::collection::vec((1u16..128, 1u16..20), 1..12),
        records in 0usize..6,
        seed in any::<u8>(),
    ) {
        let record_len: usize = fields.iter().map(|&(_, l)| l as usize).sum();
        // Non-zero bytes: trailing all-zero records shorter than 4 bytes
        // would rightly be taken for padding.
        let data: Vec<u8> = (0..record_len * records).map(|i| (i as u8).wrapping_mul(31) ^ seed | 1).collect();
        let bytes = packet(
            (1 + records) as u16,
            0,
            1,
            &[template_flowset(&[template_record(1000, &fields)]), flowset(1000, &data)],
        );
        let mut got = Vec::new();
        let report = new_session().process(&"r", &bytes, 0, |record| got.extend_from_slice(record.bytes)).unwrap();
        prop_assert!(report.errors.is_empty(), "{:?}", report.errors);
        prop_assert_eq!(report.data_records as usize, records);
        prop_assert_eq!(got, data);
    }
}

// --------------------------------------------------------------- tshark

const TSHARK: &str = "/usr/bin/tshark";
const COLLECTOR_PORT: u16 = 2055;

/// Internet checksum (RFC 1071) of an IPv4 header.
fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A classic pcap file (microsecond timestamps, Ethernet link type) holding
/// one Ethernet/IPv4/UDP frame per payload, sent to `COLLECTOR_PORT`.
fn pcap_file(payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&65_535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
    for (n, payload) in payloads.iter().enumerate() {
        let mut frame = Vec::new();
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // destination MAC
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // source MAC
        frame.extend_from_slice(&0x0800u16.to_be_bytes());
        let udp_len = 8 + payload.len();
        let mut ip = Vec::new();
        ip.push(0x45);
        ip.push(0);
        ip.extend_from_slice(&((20 + udp_len) as u16).to_be_bytes());
        ip.extend_from_slice(&(n as u16).to_be_bytes());
        ip.extend_from_slice(&[0x40, 0]); // don't fragment
        ip.push(64);
        ip.push(17);
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(&[127, 0, 0, 1]);
        ip.extend_from_slice(&[127, 0, 0, 1]);
        let checksum = ipv4_checksum(&ip);
        ip[10..12].copy_from_slice(&checksum.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&40_000u16.to_be_bytes());
        frame.extend_from_slice(&COLLECTOR_PORT.to_be_bytes());
        frame.extend_from_slice(&(udp_len as u16).to_be_bytes());
        frame.extend_from_slice(&0u16.to_be_bytes()); // no UDP checksum
        frame.extend_from_slice(payload);
        out.extend_from_slice(&(1_700_000_000 + n as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&frame);
    }
    out
}

/// The interop packet: an IPv4 flow template with two records, an IPv6
/// template with one, and an options template (scope Interface) with one.
fn interop_packets() -> Vec<Vec<u8>> {
    let v4_fields: &[(u16, u16)] = &[
        (8, 4),
        (12, 4),
        (7, 2),
        (11, 2),
        (4, 1),
        (6, 1),
        (5, 1),
        (10, 4),
        (14, 4),
        (1, 4),
        (2, 8),
        (22, 4),
        (21, 4),
    ];
    let v4_record =
        |src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, octets: u32, packets: u64| {
            let mut r = Vec::new();
            r.extend_from_slice(&src);
            r.extend_from_slice(&dst);
            r.extend_from_slice(&sport.to_be_bytes());
            r.extend_from_slice(&dport.to_be_bytes());
            r.push(6);
            r.push(0x12);
            r.push(0x28);
            r.extend_from_slice(&3u32.to_be_bytes());
            r.extend_from_slice(&7u32.to_be_bytes());
            r.extend_from_slice(&octets.to_be_bytes());
            r.extend_from_slice(&packets.to_be_bytes());
            r.extend_from_slice(&350_000u32.to_be_bytes());
            r.extend_from_slice(&359_500u32.to_be_bytes());
            r
        };
    let v6_fields: &[(u16, u16)] = &[(27, 16), (28, 16), (7, 2), (11, 2), (1, 8)];
    let mut v6_record = Vec::new();
    v6_record.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
    v6_record.extend_from_slice(&"2001:db8:ffff::42".parse::<Ipv6Addr>().unwrap().octets());
    v6_record.extend_from_slice(&5353u16.to_be_bytes());
    v6_record.extend_from_slice(&53u16.to_be_bytes());
    v6_record.extend_from_slice(&123_456_789u64.to_be_bytes());
    let options = options_template_record(260, &[(2, 4)], &[(34, 4), (35, 1)]);
    let options_record = [0, 0, 0, 3, 0, 0, 0, 100, 2];

    let first = packet(
        7,
        1234,
        77,
        &[
            template_flowset(&[
                template_record(256, v4_fields),
                template_record(257, v6_fields),
            ]),
            flowset(1, &options),
            flowset(
                256,
                &[
                    v4_record([10, 1, 2, 3], [192, 0, 2, 44], 51_000, 443, 1_500, 3),
                    v4_record(
                        [10, 9, 8, 7],
                        [198, 51, 100, 5],
                        40_001,
                        80,
                        4_000_000,
                        2_900,
                    ),
                ]
                .concat(),
            ),
            flowset(257, &v6_record),
            flowset(260, &options_record),
        ],
    );
    // A second packet with data only: the template from the first applies.
    let second = packet(
        1,
        1235,
        77,
        &[flowset(
            256,
            &v4_record([172, 16, 0, 1], [203, 0, 113, 9], 1, 2, 64, 1),
        )],
    );
    vec![first, second]
}

fn tshark_fields(pcap: &std::path::Path, fields: &[&str]) -> Vec<Vec<String>> {
    let mut command = Command::new(TSHARK);
    command
        .arg("-r")
        .arg(pcap)
        .args(["-d", &format!("udp.port=={COLLECTOR_PORT},cflow")])
        .args([
            "-T",
            "fields",
            "-E",
            "separator=/t",
            "-E",
            "occurrence=a",
            "-E",
            "aggregator=,",
        ]);
    for field in fields {
        command.args(["-e", field]);
    }
    let output = command.output().expect("run tshark");
    assert!(
        output.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| line.split('\t').map(str::to_owned).collect())
        .collect()
}

/// One column of tshark's output per packet, split into its occurrences.
fn occurrences(cell: &str) -> Vec<String> {
    if cell.is_empty() {
        Vec::new()
    } else {
        cell.split(',').map(str::to_owned).collect()
    }
}

/// Where a tshark column's values come from on our side.
#[derive(Clone, Copy)]
enum Source {
    /// An element of the flow (non-options) records.
    Flow(u16),
    /// An element of the options records.
    Options(u16),
    /// A packet header field.
    Header(fn(&PacketHeader) -> u32),
}

#[test]
fn tshark_decodes_the_same_values() {
    if !std::path::Path::new(TSHARK).exists() {
        eprintln!("SKIP tshark_decodes_the_same_values: {TSHARK} is not installed");
        return;
    }
    let packets = interop_packets();
    let path = std::env::temp_dir().join(format!(
        "poolflow-netflow-v9-{}-{:?}.pcap",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&path, pcap_file(&packets)).unwrap();

    // Our decoding: per packet, (options record?, element id) -> values in
    // record order, printed the way tshark prints them.
    type Values = HashMap<(bool, u16), Vec<String>>;
    let mut session = new_session();
    let mut ours: Vec<(PacketHeader, Values)> = Vec::new();
    for bytes in &packets {
        let mut values = Values::new();
        let report = session
            .process(&"interop", bytes, 0, |record| {
                for (spec, raw) in record.fields() {
                    let value = decode_element(spec.enterprise, spec.id, raw).unwrap();
                    let text = match (spec.id, value) {
                        // Flow times are printed as seconds of uptime.
                        (
                            ids::FLOW_START_SYS_UP_TIME | ids::FLOW_END_SYS_UP_TIME,
                            Value::Unsigned(ms),
                        ) => {
                            format!("{}.{:03}000000", ms / 1000, ms % 1000)
                        }
                        (ids::TCP_CONTROL_BITS | ids::IP_CLASS_OF_SERVICE, Value::Unsigned(v)) => {
                            format!("0x{v:02x}")
                        }
                        _ => value.to_string(),
                    };
                    let key = (record.template.is_options(), spec.id);
                    values.entry(key).or_default().push(text);
                }
            })
            .unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert!(report.count_matches());
        ours.push((report.header, values));
    }

    let columns: &[(&str, Source)] = &[
        ("cflow.version", Source::Header(|h| h.version.into())),
        ("cflow.count", Source::Header(|h| h.count.into())),
        ("cflow.unix_secs", Source::Header(|h| h.unix_secs)),
        ("cflow.sequence", Source::Header(|h| h.sequence_number)),
        ("cflow.source_id", Source::Header(|h| h.source_id)),
        ("cflow.srcaddr", Source::Flow(ids::SOURCE_IPV4_ADDRESS)),
        ("cflow.dstaddr", Source::Flow(ids::DESTINATION_IPV4_ADDRESS)),
        ("cflow.srcport", Source::Flow(ids::SOURCE_TRANSPORT_PORT)),
        (
            "cflow.dstport",
            Source::Flow(ids::DESTINATION_TRANSPORT_PORT),
        ),
        ("cflow.protocol", Source::Flow(ids::PROTOCOL_IDENTIFIER)),
        ("cflow.tcpflags", Source::Flow(ids::TCP_CONTROL_BITS)),
        ("cflow.tos", Source::Flow(ids::IP_CLASS_OF_SERVICE)),
        ("cflow.inputint", Source::Flow(ids::INGRESS_INTERFACE)),
        ("cflow.outputint", Source::Flow(ids::EGRESS_INTERFACE)),
        ("cflow.octets", Source::Flow(ids::OCTET_DELTA_COUNT)),
        ("cflow.packets", Source::Flow(ids::PACKET_DELTA_COUNT)),
        ("cflow.timestart", Source::Flow(ids::FLOW_START_SYS_UP_TIME)),
        ("cflow.timeend", Source::Flow(ids::FLOW_END_SYS_UP_TIME)),
        ("cflow.srcaddrv6", Source::Flow(ids::SOURCE_IPV6_ADDRESS)),
        (
            "cflow.dstaddrv6",
            Source::Flow(ids::DESTINATION_IPV6_ADDRESS),
        ),
        // The Interface scope is ingressInterface on our side.
        (
            "cflow.scope_interface",
            Source::Options(ids::INGRESS_INTERFACE),
        ),
        (
            "cflow.sampling_interval",
            Source::Options(ids::SAMPLING_INTERVAL),
        ),
        (
            "cflow.sampling_algorithm",
            Source::Options(ids::SAMPLING_ALGORITHM),
        ),
    ];
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    let rows = tshark_fields(&path, &names);
    let _ = std::fs::remove_file(&path);
    assert_eq!(rows.len(), packets.len(), "tshark saw {rows:?}");

    let mut compared = 0;
    for ((header, values), row) in ours.iter().zip(&rows) {
        for (column, (name, source)) in columns.iter().enumerate() {
            let theirs = occurrences(row.get(column).map_or("", String::as_str));
            let expected = match *source {
                Source::Header(field) => vec![field(header).to_string()],
                Source::Flow(id) => values.get(&(false, id)).cloned().unwrap_or_default(),
                Source::Options(id) => values.get(&(true, id)).cloned().unwrap_or_default(),
            };
            assert_eq!(
                theirs, expected,
                "{name}, packet with sequence {}",
                header.sequence_number
            );
            compared += theirs.len();
        }
    }
    // Guard against a vacuous pass (both sides empty).
    assert!(compared >= 50, "only {compared} values compared");
    assert_eq!(occurrences(&rows[0][5]), ["10.1.2.3", "10.9.8.7"]);
    assert_eq!(occurrences(&rows[1][5]), ["172.16.0.1"]);
    assert_eq!(occurrences(&rows[0][18]), ["2001:db8::1"]);
}
