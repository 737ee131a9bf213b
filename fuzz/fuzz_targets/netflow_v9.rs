//! NetFlow v9 (RFC 3954) packet decoder and its session (templates per
//! exporter and source id, options templates mapped to IPFIX, packet
//! sequence accounting).
//!
//! Input: one control byte (exporter key, clock step), then packets, each
//! preceded by a two-byte length (v9 has no length field in its header).

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::ipfix::{VARIABLE_LENGTH, record_fields};
use protocol::netflow_v9::{Packet, Session, SessionConfig};

const MAX_TEMPLATES: usize = 8;

fuzz_target!(|data: &[u8]| {
    let Some((&control, mut rest)) = data.split_first() else {
        return;
    };
    let config = SessionConfig {
        max_templates: MAX_TEMPLATES,
        max_templates_per_source: 4,
        max_sources: 3,
        template_lifetime_secs: Some(5),
    };
    let mut session: Session<u8> = Session::new(config);
    let mut now = 1_700_000_000u64;
    let mut exporter = control & 3;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let packet = &rest[2..2 + len];
        rest = &rest[2 + len..];
        if let Ok(parsed) = Packet::parse(packet) {
            for flowset in parsed.flowsets().flatten() {
                for template in flowset.templates().flatten() {
                    // Every template the decoder accepts maps to IPFIX.
                    let ipfix = template.to_ipfix();
                    assert_eq!(
                        ipfix.fields.len(),
                        template.fields.len() + template.scope_fields.len()
                    );
                }
            }
        }
        let mut seen = 0u32;
        let result = session.process(&exporter, packet, now, |record| {
            assert_eq!(record.index_in_packet, seen);
            seen += 1;
            assert_eq!(record.bytes.len(), record.v9_template.record_len());
            let mut fields = 0;
            for (field, value) in record_fields(record.template, record.bytes) {
                fields += 1;
                assert_ne!(
                    field.length, VARIABLE_LENGTH,
                    "v9 has no variable-length fields"
                );
                assert_eq!(value.len(), usize::from(field.length));
            }
            assert_eq!(fields, record.template.fields.len());
        });
        match result {
            Ok(report) => {
                assert_eq!(report.data_records, seen);
                assert!(report.records_seen >= report.data_records);
            }
            Err(_) => assert_eq!(seen, 0),
        }
        assert!(session.template_count() <= MAX_TEMPLATES);
        now += u64::from(control >> 4);
        session.expire_templates(now);
        exporter = exporter.wrapping_add(control >> 7) & 3;
        if control & 0x0c == 0x0c {
            session.forget_exporter(&exporter);
        }
    }
});
