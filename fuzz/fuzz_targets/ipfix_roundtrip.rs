//! IPFIX decode → encode → decode: every template and data record a session
//! accepts, written again with our `MessageWriter`, must decode to the same
//! template and the same record bytes, and the header fields must survive.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::ipfix::{Message, MessageWriter, Session, SessionConfig, Template, TransportKind};

/// Records checked per input (one message each), to keep inputs fast.
const MAX_CHECKED: usize = 32;

fuzz_target!(|data: &[u8]| {
    let mut session = Session::new(SessionConfig::new(TransportKind::Tcp));
    let mut accepted: Vec<(Template, Vec<u8>)> = Vec::new();
    let Ok(report) = session.process(data, 0, 0, |record| {
        if accepted.len() < MAX_CHECKED {
            accepted.push((record.template.clone(), record.bytes.to_vec()));
        }
    }) else {
        return;
    };
    let header = report.header;
    for (template, record) in accepted {
        let mut writer = MessageWriter::new(usize::from(u16::MAX));
        writer.start(
            header.observation_domain_id,
            header.export_time,
            header.sequence_number,
        );
        if writer.add_template(&template).is_err()
            || writer.add_record(template.id, &record).is_err()
        {
            // Template and record came out of one message of at most 65535
            // bytes, so they fit one again.
            panic!("re-encoding an accepted template and record overflowed a message");
        }
        let bytes = writer.finish().to_vec();
        let reparsed = Message::parse(&bytes).expect("our own message parses");
        assert_eq!(
            reparsed.header.observation_domain_id,
            header.observation_domain_id
        );
        assert_eq!(reparsed.header.export_time, header.export_time);
        assert_eq!(reparsed.header.sequence_number, header.sequence_number);
        let mut again = Session::new(SessionConfig::new(TransportKind::Tcp));
        let mut records = Vec::new();
        let report = again
            .process(&bytes, 0, 0, |r| {
                records.push((r.template.clone(), r.bytes.to_vec()));
            })
            .expect("our own message processes");
        assert!(
            report.errors.is_empty(),
            "errors in re-encoded message: {:?}",
            report.errors
        );
        assert_eq!(
            records,
            vec![(template, record)],
            "round trip changed the record"
        );
    }
});
