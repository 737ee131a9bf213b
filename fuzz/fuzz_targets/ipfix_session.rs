//! IPFIX message decoder and the per-transport-session state machine
//! (templates per domain, withdrawals, UDP expiry, sequence accounting).
//!
//! Input: one control byte (transport, SCTP stream, clock step) followed by
//! a byte stream that is cut into messages the way the TCP receiver cuts it
//! (each message's header length), so one input drives a whole session.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::ipfix::message::peek_message_length;
use protocol::ipfix::value::decode_element;
use protocol::ipfix::{
    Message, SequenceCheck, Session, SessionConfig, TransportKind, VARIABLE_LENGTH, record_fields,
};

/// Small limits, so the fuzzer reaches the "limit reached" paths.
const MAX_TEMPLATES: usize = 8;
const MAX_SCOPES: usize = 4;

fuzz_target!(|data: &[u8]| {
    let Some((&control, mut stream)) = data.split_first() else {
        return;
    };
    let transport = match control % 3 {
        0 => TransportKind::Udp,
        1 => TransportKind::Tcp,
        _ => TransportKind::Sctp,
    };
    let mut config = SessionConfig::new(transport);
    config.template_lifetime_secs = 5;
    config.max_templates = MAX_TEMPLATES;
    config.max_sequence_scopes = MAX_SCOPES;
    let mut session = Session::new(config);
    let sctp_stream = u16::from(control >> 6);
    let clock_step = u64::from((control >> 2) & 0x0f);
    let mut now = 1_700_000_000u64;
    while !stream.is_empty() {
        // A bad length prefix is where the TCP receiver closes the
        // connection; here the rest is fed as one (bad) message instead.
        let len = match peek_message_length(stream) {
            Some(Ok(len)) => usize::from(len).min(stream.len()),
            _ => stream.len(),
        };
        let (message, rest) = stream.split_at(len);
        stream = rest;
        walk_raw(message);
        let mut seen = 0u32;
        let result = session.process(message, sctp_stream, now, |record| {
            assert_eq!(record.index_in_message, seen, "records come in order");
            seen += 1;
            assert!(record.bytes.len() >= record.template.min_record_len());
            if let Some(fixed) = record.template.fixed_record_len() {
                assert_eq!(record.bytes.len(), fixed, "fixed-length record");
            }
            // A record the session handed out is complete: every field of
            // its template is present, fixed ones at their length.
            let mut fields = 0;
            for (field, value) in record_fields(record.template, record.bytes) {
                fields += 1;
                if field.length != VARIABLE_LENGTH {
                    assert_eq!(value.len(), usize::from(field.length));
                }
                let _ = decode_element(field.enterprise, field.id, value);
            }
            assert_eq!(
                fields,
                record.template.fields.len(),
                "record split into all fields"
            );
        });
        match result {
            Ok(report) => {
                assert_eq!(report.data_records, seen);
                if let SequenceCheck::Gap { lost } = report.sequence {
                    assert!(lost > 0 && lost < 1 << 31);
                }
            }
            Err(_) => assert_eq!(seen, 0, "a refused message yields no records"),
        }
        assert!(session.template_count() <= MAX_TEMPLATES);
        now += clock_step;
        session.expire_templates(now);
    }
});

/// The raw iterators on their own: they must end and never panic.
fn walk_raw(message: &[u8]) {
    let Ok(parsed) = Message::parse(message) else {
        return;
    };
    assert_eq!(usize::from(parsed.header.length), message.len());
    for set in parsed.sets().flatten() {
        for template in set.template_records().flatten() {
            let _ = template;
        }
    }
}
