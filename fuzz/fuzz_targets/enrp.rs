//! ENRP (RFC 5353) decoder with the RFC 5354 parameters: never panics, and
//! whatever it accepts re-encodes to bytes that decode to the same message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::rserpool::enrp::Message;
use protocol::rserpool::{Limits, message_length};

fuzz_target!(|data: &[u8]| {
    let _ = message_length(data);
    // Tight limits too, so the limit checks themselves are exercised.
    let tight = Limits {
        max_message_size: 512,
        max_parameters: 8,
        max_pool_handle_len: 8,
    };
    let _ = Message::decode_with(data, &tight);
    let Ok(decoded) = Message::decode_with(data, &Limits::default()) else {
        return;
    };
    // Unknown parameters were skipped; reporting them must work.
    let _ = decoded.report_causes();
    let message = decoded.message;
    let mut encoded = Vec::new();
    if let Err(err) = message.try_encode(&mut encoded) {
        // Only a message near the 16-bit length limit may grow past it
        // (padding the sender left out of its last parameter is added).
        assert!(
            data.len() > 65_000,
            "a decoded ENRP message does not re-encode: {err}"
        );
        return;
    }
    assert_eq!(message_length(&encoded), Some(encoded.len()));
    let again = Message::decode(&encoded).expect("our own encoding decodes");
    assert_eq!(
        again, message,
        "decode -> encode -> decode changed the message"
    );
    assert_eq!(again.message_type(), encoded[0]);
});
