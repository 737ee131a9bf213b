//! Billing cookie verification (docs/billing-continuity.md): the codec of
//! both versions (64-byte HMAC, 100-byte Ed25519), their verification, the ASAP Cookie / Cookie Echo wrapping and the
//! 32 → 64-bit record sequence extension.
//!
//! The first input byte picks a mode; the rest is the mode's input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::billing::{
    BillingCookie, COOKIE_LEN, COOKIE_V2_LEN, CookieError, CookieKeys, CookieMessageKind,
    SequenceExtender, cookie_from_asap_bytes,
};
use protocol::signing::SigningKey;

const KEY: &[u8] = b"the pool key of the fuzz target";

fn collector_key() -> SigningKey {
    SigningKey::from_bytes(&[0x5a; 32])
}

fn trusted() -> CookieKeys {
    let mut keys = CookieKeys::default().with_hmac_key(KEY.to_vec());
    keys.add_public_key(collector_key().verifying_key());
    keys
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => raw_cookie(input),
        1 => signed_then_tampered(input),
        2 => asap_wrapped(input),
        _ => sequence_extension(input),
    }
});

/// Arbitrary bytes as a cookie: accepted only if they re-encode exactly,
/// and none verifies with the pool key unless the input is a real cookie.
fn raw_cookie(input: &[u8]) {
    let Ok(cookie) = BillingCookie::decode(input) else {
        return;
    };
    assert_eq!(
        &cookie.encode()[..],
        input,
        "decode -> encode must be exact"
    );
    match trusted().verify(&cookie) {
        Ok(()) => {
            // Only possible for bytes these keys signed: check it really is
            // the cookie the signer would have produced (Ed25519 signatures
            // are deterministic).
            let resigned = if cookie.version == 1 {
                BillingCookie::sign(
                    KEY,
                    cookie.exporter_id,
                    cookie.domain,
                    cookie.last_record_sequence,
                    cookie.pe_identifier,
                    cookie.signed_at_ms,
                )
            } else {
                BillingCookie::sign_ed25519(
                    &collector_key(),
                    cookie.exporter_id,
                    cookie.domain,
                    cookie.last_record_sequence,
                    cookie.pe_identifier,
                    cookie.signed_at_ms,
                )
            };
            assert_eq!(resigned, cookie);
        }
        Err(CookieError::Unsigned) => assert!(cookie.introduction),
        Err(CookieError::BadHmac) => assert!(!cookie.introduction && cookie.version == 1),
        Err(CookieError::UnknownKey(_) | CookieError::BadSignature(_)) => {
            assert_eq!(cookie.version, 2)
        }
        Err(other) => panic!("verify failed with a decode error: {other}"),
    }
    let _ = cookie.next_record_sequence();
    let _ = cookie.covers(0);
}

/// A cookie signed from fuzzed fields verifies; flipping any one bit of
/// its 64 bytes makes it fail to decode or to verify.
fn signed_then_tampered(input: &[u8]) {
    if input.len() < 30 {
        return;
    }
    let u32_at = |at: usize| u32::from_be_bytes(input[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_be_bytes(input[at..at + 8].try_into().unwrap());
    let cookie = BillingCookie::sign(KEY, u32_at(0), u32_at(4), u64_at(8), u32_at(16), u64_at(20));
    let bytes = cookie.encode();
    let decoded = BillingCookie::decode(&bytes).expect("a signed cookie decodes");
    assert_eq!(decoded, cookie);
    decoded.verify(KEY).expect("a signed cookie verifies");
    assert!(
        decoded.verify(b"another pool's key").is_err(),
        "verified with the wrong key"
    );
    let bit = usize::from(u16::from_be_bytes([input[28], input[29]])) % (COOKIE_LEN * 8);
    let mut tampered = bytes.clone();
    tampered[bit / 8] ^= 1 << (bit % 8);
    if let Ok(forged) = BillingCookie::decode(&tampered) {
        assert!(
            forged.verify(KEY).is_err(),
            "cookie with bit {bit} flipped still verifies"
        );
    }
    // The same for version 2.
    let signed = BillingCookie::sign_ed25519(
        &collector_key(),
        u32_at(0),
        u32_at(4),
        u64_at(8),
        u32_at(16),
        u64_at(20),
    );
    let bytes = signed.encode();
    assert_eq!(bytes.len(), COOKIE_V2_LEN);
    assert_eq!(BillingCookie::decode(&bytes), Ok(signed));
    trusted().verify(&signed).expect("a signed v2 cookie verifies");
    let bit = usize::from(u16::from_be_bytes([input[28], input[29]])) % (COOKIE_V2_LEN * 8);
    let mut tampered = bytes;
    tampered[bit / 8] ^= 1 << (bit % 8);
    if let Ok(forged) = BillingCookie::decode(&tampered) {
        assert!(
            trusted().verify(&forged).is_err(),
            "v2 cookie with bit {bit} flipped still verifies"
        );
    }
    // The ASAP messages carry it unchanged.
    let (kind, echoed) =
        cookie_from_asap_bytes(&cookie.cookie_echo_message_bytes()).expect("own Cookie Echo");
    assert_eq!((kind, echoed), (CookieMessageKind::CookieEcho, cookie));
    let (kind, sent) = cookie_from_asap_bytes(&cookie.cookie_message_bytes()).expect("own Cookie");
    assert_eq!((kind, sent), (CookieMessageKind::Cookie, cookie));
}

/// Arbitrary ASAP bytes, as a collector receives them on PPID 11.
fn asap_wrapped(input: &[u8]) {
    if let Ok((_, cookie)) = cookie_from_asap_bytes(input) {
        let _ = trusted().verify(&cookie);
        assert!(matches!(cookie.version, 1 | 2), "{}", cookie.version);
    }
}

/// Extending fuzzed low halves: the low 32 bits always come back as given,
/// and each result lies within 2^31 of the highest value before it.
fn sequence_extension(input: &[u8]) {
    if input.len() < 8 {
        return;
    }
    // Below 2^63: the 64-bit sequence itself never wraps (2^64 records are
    // beyond any exporter's life), and each input advances it by < 2^42.
    let start = u64::from_be_bytes(input[..8].try_into().unwrap()) >> 1;
    let mut extender = SequenceExtender::new(start);
    let mut highest = start;
    for chunk in input[8..].chunks_exact(4) {
        let low = u32::from_be_bytes(chunk.try_into().unwrap());
        let extended = extender.extend(low);
        assert_eq!(extended as u32, low, "low half preserved");
        let distance = extended.abs_diff(highest);
        // Near 0 there is no window below to place a late value in.
        if highest >= 1 << 32 {
            assert!(
                distance <= 1 << 31,
                "{extended} is {distance} from {highest}"
            );
        }
        highest = highest.max(extended);
        assert_eq!(
            extender.current(),
            highest,
            "reference point is the highest seen"
        );
    }
}
