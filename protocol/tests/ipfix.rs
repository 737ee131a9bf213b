//! IPFIX codec and session behaviour (RFC 7011).

use protocol::ipfix::encode::put_variable_length;
use protocol::ipfix::flow::{FLOW_TEMPLATE_ID, FlowRecord, flow_template};
use protocol::ipfix::message::{SetKind, TemplateRecord};
use protocol::ipfix::*;

use proptest::prelude::*;

const NOW: u64 = 1_700_000_000;

fn udp() -> Session {
    Session::new(SessionConfig::new(TransportKind::Udp))
}

fn tcp() -> Session {
    Session::new(SessionConfig::new(TransportKind::Tcp))
}

/// A message with the flow template and `n` synthetic records.
fn flow_message(domain: u32, seq: u32, first: u64, n: u64, with_template: bool) -> Vec<u8> {
    let mut w = MessageWriter::new(65_535);
    w.start(domain, NOW as u32, seq);
    if with_template {
        w.add_template(&flow_template()).unwrap();
    }
    for i in first..first + n {
        FlowRecord::synthetic(i, 0).write_to(&mut w).unwrap();
    }
    w.finish().to_vec()
}

fn collect(session: &mut Session, msg: &[u8]) -> (MessageReport, Vec<Vec<u8>>) {
    let mut records = Vec::new();
    let report = session
        .process(msg, 0, NOW, |r| records.push(r.bytes.to_vec()))
        .expect("message header must decode");
    (report, records)
}

#[test]
fn flow_records_round_trip_through_session() {
    let msg = flow_message(7, 0, 0, 20, true);
    let mut s = udp();
    let (report, records) = collect(&mut s, &msg);
    assert_eq!(report.errors, vec![]);
    assert_eq!(report.data_records, 20);
    assert_eq!(report.templates_defined, 1);
    assert_eq!(report.header.observation_domain_id, 7);
    for (i, bytes) in records.iter().enumerate() {
        let mut expected = Vec::new();
        FlowRecord::synthetic(i as u64, 0).encode(&mut expected);
        assert_eq!(bytes, &expected, "record {i}");
    }
    // Field splitting gives back each element's bytes.
    let template = flow_template();
    let fields: Vec<_> = record_fields(&template, &records[3]).collect();
    assert_eq!(fields.len(), 11);
    assert_eq!(fields[0].0.id, 8);
    assert_eq!(
        fields[0].1,
        &FlowRecord::synthetic(3, 0).source.octets()[..]
    );
}

#[test]
fn truncated_header_is_an_error() {
    let err = udp().process(&[0, 10, 0, 16], 0, NOW, |_| {}).unwrap_err();
    assert_eq!(err, DecodeError::TruncatedHeader { have: 4 });
    assert_eq!(err.reason(), "truncated_header");
}

#[test]
fn wrong_version_is_an_error() {
    let mut msg = flow_message(1, 0, 0, 1, true);
    msg[1] = 9;
    assert_eq!(
        udp().process(&msg, 0, NOW, |_| {}).unwrap_err(),
        DecodeError::WrongVersion(9)
    );
}

#[test]
fn length_field_must_match_datagram() {
    let mut msg = flow_message(1, 0, 0, 1, true);
    msg.push(0);
    assert!(matches!(
        udp().process(&msg, 0, NOW, |_| {}).unwrap_err(),
        DecodeError::LengthMismatch { .. }
    ));
}

#[test]
fn set_length_overrun_keeps_earlier_sets() {
    let mut msg = flow_message(1, 0, 0, 2, true);
    // Append a data set header that claims more bytes than exist.
    msg.extend_from_slice(&[0x01, 0x00, 0x01, 0x00, 1, 2, 3]);
    let len = msg.len() as u16;
    msg[2..4].copy_from_slice(&len.to_be_bytes());
    let mut s = udp();
    let (report, records) = collect(&mut s, &msg);
    assert_eq!(records.len(), 2, "records before the bad set are kept");
    assert!(matches!(
        report.errors[..],
        [DecodeError::SetOverrun {
            set_id: 256,
            length: 256,
            ..
        }]
    ));
}

#[test]
fn set_shorter_than_its_header_is_an_error() {
    let mut msg = flow_message(1, 0, 0, 0, false);
    msg.extend_from_slice(&[0x00, 0x02, 0x00, 0x02]);
    let len = msg.len() as u16;
    msg[2..4].copy_from_slice(&len.to_be_bytes());
    let (report, _) = collect(&mut udp(), &msg);
    assert!(matches!(
        report.errors[..],
        [DecodeError::SetTooShort { length: 2, .. }]
    ));
}

#[test]
fn data_for_unknown_template_is_reported_and_session_continues() {
    let mut s = udp();
    let (report, records) = collect(&mut s, &flow_message(5, 0, 0, 3, false));
    assert!(records.is_empty());
    assert_eq!(
        report.errors,
        vec![DecodeError::UnknownTemplate {
            domain: 5,
            template_id: FLOW_TEMPLATE_ID
        }]
    );
    // The template arrives later; the same session then decodes data.
    let (report, records) = collect(&mut s, &flow_message(5, 3, 3, 3, true));
    assert_eq!(records.len(), 3);
    assert!(report.errors.is_empty());
    // The first message could not be counted: no false gap.
    assert_eq!(report.sequence, SequenceCheck::Resync);
}

#[test]
fn templates_are_scoped_per_observation_domain() {
    let mut s = udp();
    collect(&mut s, &flow_message(1, 0, 0, 1, true));
    let (report, records) = collect(&mut s, &flow_message(2, 0, 0, 1, false));
    assert!(
        records.is_empty(),
        "domain 2 must not see domain 1's template"
    );
    assert!(matches!(
        report.errors[..],
        [DecodeError::UnknownTemplate { domain: 2, .. }]
    ));
}

#[test]
fn template_with_zero_fields_over_udp_is_malformed() {
    let mut w = MessageWriter::new(1500);
    w.start(1, NOW as u32, 0);
    w.add_withdrawal(300, false).unwrap();
    let msg = w.finish().to_vec();
    let (report, _) = collect(&mut udp(), &msg);
    assert_eq!(
        report.errors,
        vec![DecodeError::WithdrawalOverUdp { template_id: 300 }]
    );
}

#[test]
fn withdrawal_over_tcp_removes_template() {
    let mut s = tcp();
    collect(&mut s, &flow_message(1, 0, 0, 1, true));
    assert!(s.template(1, FLOW_TEMPLATE_ID).is_some());
    let mut w = MessageWriter::new(1500);
    w.start(1, NOW as u32, 1);
    w.add_withdrawal(FLOW_TEMPLATE_ID, false).unwrap();
    let (report, _) = collect(&mut s, w.finish());
    assert_eq!(report.templates_withdrawn, 1);
    assert!(s.template(1, FLOW_TEMPLATE_ID).is_none());
}

#[test]
fn template_with_reserved_id_is_rejected() {
    let mut w = MessageWriter::new(1500);
    w.start(1, NOW as u32, 0);
    w.add_template(&Template::new(255, 0, vec![FieldSpecifier::iana(8, 4)]))
        .unwrap();
    let (report, _) = collect(&mut udp(), w.finish());
    assert_eq!(report.errors, vec![DecodeError::TemplateIdReserved(255)]);
}

#[test]
fn truncated_template_record_is_reported() {
    let mut w = MessageWriter::new(1500);
    w.start(1, NOW as u32, 0);
    w.add_template(&flow_template()).unwrap();
    let mut msg = w.finish().to_vec();
    // Claim 20 fields in a record that holds 11.
    msg[HEADER + 4 + 2..HEADER + 4 + 4].copy_from_slice(&20u16.to_be_bytes());
    let (report, _) = collect(&mut udp(), &msg);
    assert!(matches!(
        report.errors[..],
        [DecodeError::TemplateTruncated { set_id: 2 }]
    ));
}

const HEADER: usize = 16;

#[test]
fn absurd_variable_length_is_a_truncated_record() {
    let template = Template::new(
        400,
        0,
        vec![
            FieldSpecifier::iana(8, 4),
            FieldSpecifier::iana(82, VARIABLE_LENGTH),
        ],
    );
    let mut w = MessageWriter::new(1500);
    w.start(1, NOW as u32, 0);
    w.add_template(&template).unwrap();
    // Length prefix says 60000 bytes follow; 3 do.
    w.add_record(400, &[1, 2, 3, 4, 255, 0xea, 0x60, 1, 2, 3])
        .unwrap();
    let (report, records) = collect(&mut udp(), w.finish());
    assert!(records.is_empty());
    assert_eq!(
        report.errors,
        vec![DecodeError::RecordTruncated { template_id: 400 }]
    );
}

#[test]
fn options_template_with_bad_scope_count_is_rejected() {
    let mut w = MessageWriter::new(1500);
    w.start(1, NOW as u32, 0);
    w.add_template(&Template::new(
        300,
        3,
        vec![FieldSpecifier::iana(149, 4), FieldSpecifier::iana(41, 8)],
    ))
    .unwrap();
    let (report, _) = collect(&mut udp(), w.finish());
    assert_eq!(
        report.errors,
        vec![DecodeError::BadScopeCount {
            template_id: 300,
            scope: 3,
            fields: 2
        }]
    );
}

#[test]
fn variable_length_enterprise_and_options_records_decode() {
    let options = Template::new(
        300,
        1,
        vec![
            FieldSpecifier::iana(149, 4),              // observationDomainId (scope)
            FieldSpecifier::iana(41, 8),               // exportedMessageTotalCount
            FieldSpecifier::enterprise(29305, 1, 2),   // enterprise element
            FieldSpecifier::iana(82, VARIABLE_LENGTH), // interfaceName
        ],
    );
    let long_name = vec![b'x'; 300];
    let mut w = MessageWriter::new(4000);
    w.start(9, NOW as u32, 0);
    w.add_template(&options).unwrap();
    for name in [&b"eth0"[..], &long_name[..]] {
        let mut rec = Vec::new();
        rec.extend_from_slice(&9u32.to_be_bytes());
        rec.extend_from_slice(&77u64.to_be_bytes());
        rec.extend_from_slice(&0xbeefu16.to_be_bytes());
        put_variable_length(&mut rec, name);
        w.add_record(300, &rec).unwrap();
    }
    let msg = w.finish().to_vec();

    // The set structure is what the writer intended.
    let parsed = Message::parse(&msg).unwrap();
    let sets: Vec<_> = parsed.sets().map(Result::unwrap).collect();
    assert_eq!(sets[0].kind, SetKind::OptionsTemplate);
    let defs: Vec<_> = sets[0].template_records().map(Result::unwrap).collect();
    assert_eq!(defs, vec![TemplateRecord::Definition(options.clone())]);

    let mut s = udp();
    let mut names = Vec::new();
    let report = s
        .process(&msg, 0, NOW, |r| {
            let fields: Vec<_> = record_fields(r.template, r.bytes).collect();
            assert_eq!(fields[2].0.enterprise, 29305);
            assert_eq!(fields[2].1, &[0xbe, 0xef]);
            names.push(fields[3].1.to_vec());
        })
        .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(names, vec![b"eth0".to_vec(), long_name]);
}

#[test]
fn sequence_numbers_count_lost_records() {
    let mut s = udp();
    assert_eq!(
        collect(&mut s, &flow_message(1, 0, 0, 10, true)).0.sequence,
        SequenceCheck::First
    );
    assert_eq!(
        collect(&mut s, &flow_message(1, 10, 10, 10, false))
            .0
            .sequence,
        SequenceCheck::InOrder
    );
    // Records 20..35 never arrived.
    assert_eq!(
        collect(&mut s, &flow_message(1, 35, 35, 5, false))
            .0
            .sequence,
        SequenceCheck::Gap { lost: 15 }
    );
    // A late message does not move the expectation back.
    assert_eq!(
        collect(&mut s, &flow_message(1, 20, 20, 5, false))
            .0
            .sequence,
        SequenceCheck::Behind { behind: 20 }
    );
    assert_eq!(
        collect(&mut s, &flow_message(1, 40, 40, 5, false))
            .0
            .sequence,
        SequenceCheck::InOrder
    );
}

#[test]
fn sequence_numbers_wrap_at_2_pow_32() {
    let mut s = udp();
    collect(&mut s, &flow_message(1, u32::MAX - 4, 0, 10, true));
    assert_eq!(
        collect(&mut s, &flow_message(1, 5, 10, 1, false))
            .0
            .sequence,
        SequenceCheck::InOrder
    );
}

#[test]
fn udp_templates_expire_unless_refreshed() {
    let mut config = SessionConfig::new(TransportKind::Udp);
    config.template_lifetime_secs = 60;
    let mut s = Session::new(config);
    s.process(&flow_message(1, 0, 0, 1, true), 0, NOW, |_| {})
        .unwrap();
    // Within the lifetime data decodes.
    let r = s
        .process(&flow_message(1, 1, 1, 1, false), 0, NOW + 60, |_| {})
        .unwrap();
    assert_eq!(r.data_records, 1);
    // After it, the template is gone.
    let r = s
        .process(&flow_message(1, 2, 2, 1, false), 0, NOW + 61, |_| {})
        .unwrap();
    assert_eq!(r.data_records, 0);
    assert!(matches!(
        r.errors[..],
        [DecodeError::UnknownTemplate { .. }]
    ));
}

#[test]
fn tcp_templates_do_not_expire() {
    let mut s = tcp();
    s.process(&flow_message(1, 0, 0, 1, true), 0, NOW, |_| {})
        .unwrap();
    assert_eq!(s.expire_templates(NOW + 1_000_000), 0);
    let r = s
        .process(&flow_message(1, 1, 1, 1, false), 0, NOW + 1_000_000, |_| {})
        .unwrap();
    assert_eq!(r.data_records, 1);
}

#[test]
fn template_limit_holds_per_session() {
    let mut config = SessionConfig::new(TransportKind::Tcp);
    config.max_templates = 2;
    let mut s = Session::new(config);
    let mut w = MessageWriter::new(4000);
    w.start(1, NOW as u32, 0);
    for id in 256..260 {
        w.add_template(&Template::new(id, 0, vec![FieldSpecifier::iana(8, 4)]))
            .unwrap();
    }
    let (report, _) = collect(&mut s, w.finish());
    assert_eq!(report.templates_defined, 2);
    assert_eq!(s.template_count(), 2);
    assert_eq!(report.errors.len(), 2);
    assert!(
        report
            .errors
            .iter()
            .all(|e| matches!(e, DecodeError::TemplateLimit { limit: 2, .. }))
    );
}

#[test]
fn redefinition_over_tcp_is_flagged_but_used() {
    let mut s = tcp();
    collect(&mut s, &flow_message(1, 0, 0, 0, true));
    let mut w = MessageWriter::new(1500);
    w.start(1, NOW as u32, 0);
    w.add_template(&Template::new(
        FLOW_TEMPLATE_ID,
        0,
        vec![FieldSpecifier::iana(8, 4)],
    ))
    .unwrap();
    w.add_record(FLOW_TEMPLATE_ID, &[10, 0, 0, 1]).unwrap();
    let (report, records) = collect(&mut s, w.finish());
    assert_eq!(
        report.errors,
        vec![DecodeError::TemplateRedefined {
            template_id: FLOW_TEMPLATE_ID
        }]
    );
    assert_eq!(records, vec![vec![10, 0, 0, 1]]);
}

#[test]
fn writer_respects_its_size_limit() {
    let mut w = MessageWriter::new(1400);
    w.start(1, NOW as u32, 0);
    w.add_template(&flow_template()).unwrap();
    let mut n = 0;
    while FlowRecord::synthetic(n, 0).write_to(&mut w).is_ok() {
        n += 1;
    }
    let msg = w.finish();
    assert!(msg.len() <= 1400);
    assert!(
        msg.len() > 1400 - 47,
        "writer stopped early at {}",
        msg.len()
    );
    assert_eq!(w.data_records() as u64, n);
}

fn arb_field() -> impl Strategy<Value = FieldSpecifier> {
    (
        prop_oneof![Just(0u32), 1u32..1_000_000],
        1u16..0x7fff,
        prop_oneof![1u16..16, Just(VARIABLE_LENGTH)],
    )
        .prop_map(|(enterprise, id, length)| FieldSpecifier {
            enterprise,
            id,
            length,
        })
}

fn arb_template() -> impl Strategy<Value = Template> {
    (
        256u16..1000,
        prop::collection::vec(arb_field(), 1..12),
        any::<bool>(),
    )
        .prop_map(|(id, fields, options)| {
            let scope = if options { 1 } else { 0 };
            Template::new(id, scope, fields)
        })
}

proptest! {
    /// Any template and any records built for it decode to exactly what was
    /// encoded.
    #[test]
    fn encode_decode_round_trip(template in arb_template(), seeds in prop::collection::vec(any::<u8>(), 0..20)) {
        let mut w = MessageWriter::new(65_535);
        w.start(42, 1, 0);
        w.add_template(&template).unwrap();
        let mut sent = Vec::new();
        for seed in &seeds {
            let mut rec = Vec::new();
            let mut values = Vec::new();
            for (i, f) in template.fields.iter().enumerate() {
                let len = if f.is_variable() { (*seed as usize + i * 37) % 300 } else { f.length as usize };
                let value: Vec<u8> = (0..len).map(|k| seed.wrapping_add(k as u8)).collect();
                if f.is_variable() { put_variable_length(&mut rec, &value) } else { rec.extend_from_slice(&value) }
                values.push(value);
            }
            if w.add_record(template.id, &rec).is_err() { break; }
            sent.push(values);
        }
        let msg = w.finish().to_vec();
        let mut s = Session::new(SessionConfig::new(TransportKind::Sctp));
        let mut got = Vec::new();
        let report = s.process(&msg, 3, 0, |r| {
            got.push(record_fields(r.template, r.bytes).map(|(_, v)| v.to_vec()).collect::<Vec<_>>());
        }).unwrap();
        prop_assert!(report.errors.is_empty(), "{:?}", report.errors);
        prop_assert_eq!(got, sent);
    }

    /// Arbitrary bytes never panic the session, and a message-level error is
    /// never reported for a well-formed header.
    #[test]
    fn arbitrary_bytes_never_panic(mut bytes in prop::collection::vec(any::<u8>(), 0..600), fix_header in any::<bool>()) {
        if fix_header && bytes.len() >= 16 {
            bytes[0] = 0; bytes[1] = 10;
            let len = bytes.len() as u16;
            bytes[2..4].copy_from_slice(&len.to_be_bytes());
        }
        let mut s = Session::new(SessionConfig::new(TransportKind::Udp));
        let result = s.process(&bytes, 0, 0, |_| {});
        if fix_header && bytes.len() >= 16 {
            prop_assert!(result.is_ok());
        }
    }
}
