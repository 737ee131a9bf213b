//! Inputs the `collector_session` fuzz target (fuzz/fuzz_targets/) found
//! crashing the collector's billing session, kept so the bugs stay fixed.

use collector::billing::{AssociationBilling, CookieSigner, MAX_ECHOED_SEQUENCE};
use collector::ingest::{Batch, SessionDecoder};
use protocol::billing::BillingCookie;
use protocol::ipfix::flow::synthetic_message;
use protocol::ipfix::{SessionConfig, TransportKind};

const KEY: &[u8] = b"pool key";

fn signer() -> CookieSigner {
    CookieSigner::hmac(KEY.to_vec(), 0xc011)
}

/// A flow message of domain 1 whose header carries `sequence`.
fn message(sequence: u32, records: u64) -> Vec<u8> {
    synthetic_message(1, sequence, records)
}

/// A Cookie Echo with a validly signed cookie claiming the last possible
/// record sequence overflowed the start of the association
/// (`last_record_sequence + 1`), and sequences near it overflowed when the
/// records after it were numbered. Such a cookie is refused now.
#[test]
fn echo_claiming_a_sequence_beyond_any_exporter_is_refused() {
    for last in [u64::MAX, u64::MAX - 2, MAX_ECHOED_SEQUENCE] {
        let cookie = BillingCookie::sign(KEY, 7, 1, last, 0xc0ff, 1);
        let mut billing = AssociationBilling::default();
        let err = billing
            .on_cookie_echo(&cookie.cookie_echo_message_bytes(), &signer(), "peer", 0)
            .expect_err("refused");
        assert_eq!(err.reason(), "cookie_sequence_out_of_range");
        assert_eq!(billing.exporter_id(), None, "nothing taken from it");
    }
}

/// Just below the bound the echo is accepted, and the records after it,
/// across a 32-bit wrap of the IPFIX sequence number, are numbered on.
#[test]
fn echo_just_below_the_bound_numbers_the_records_after_it() {
    let last = MAX_ECHOED_SEQUENCE - 2;
    let cookie = BillingCookie::sign(KEY, 7, 1, last, 0xc0ff, 1);
    let mut billing = AssociationBilling::default();
    billing
        .on_cookie_echo(&cookie.cookie_echo_message_bytes(), &signer(), "peer", 0)
        .expect("accepted");
    let mut decoder = SessionDecoder::new("peer".into(), SessionConfig::new(TransportKind::Sctp));
    let mut batch = Batch::default();
    // The header carries the low 32 bits of the first record's sequence.
    assert_eq!(
        decoder.handle(&message((last + 1) as u32, 3), 0, 0, &mut batch),
        3
    );
    billing.tag_blocks(&mut batch.blocks);
    let tag = batch.blocks[0].billing.expect("tagged");
    assert_eq!((tag.exporter_id, tag.first_record_sequence), (7, last + 1));
}
