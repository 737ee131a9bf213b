//! Inputs the fuzz targets (fuzz/fuzz_targets/) found crashing the protocol
//! codecs, kept so the bugs stay fixed. Each test names its target.

use protocol::billing::{BillingCookie, cookie_from_asap_bytes};

/// billing_cookie: a well-formed, unsigned-looking cookie (no key needed to
/// send it) claiming the last possible record sequence made
/// `next_record_sequence` overflow (a panic with overflow checks; a silent
/// wrap to "replay from 0" without). The exporter calls it on every cookie
/// a collector sends, before anything could verify it.
#[test]
fn cookie_claiming_the_last_sequence_does_not_overflow() {
    // fuzz/artifacts/billing_cookie/crash-7a9f2b3b… without its mode byte.
    let input: [u8; 64] = [
        1, 0, 0, 0, 0, 0, 0, 7, 0, 0, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 137,
        137, 137, 137, 137, 137, 137, 137, 137, 137, 137, 137, 167, 167, 167, 167, 167, 167, 0,
        255, 150, 254, 93, 25, 138, 130, 238, 1, 50, 64, 177, 47, 46, 129, 10, 113, 207, 117, 150,
        180, 23, 92, 182,
    ];
    let cookie = BillingCookie::decode(&input).expect("well-formed");
    assert_eq!(cookie.last_record_sequence, u64::MAX);
    assert!(cookie.verify(b"any key").is_err(), "not signed");
    // Nothing comes after the last sequence: the replay point saturates.
    assert_eq!(cookie.next_record_sequence(), u64::MAX);
    assert!(cookie.covers(u64::MAX));

    // The same through a signed cookie in an ASAP Cookie Echo, as a
    // collector receives it.
    let signed = BillingCookie::sign(b"pool key", 7, 1, u64::MAX, 0xc011, 1);
    let (_, echoed) = cookie_from_asap_bytes(&signed.cookie_echo_message_bytes()).unwrap();
    assert_eq!(echoed.next_record_sequence(), u64::MAX);
}
