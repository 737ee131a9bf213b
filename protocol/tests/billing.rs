//! Billing cookie codec and record sequence reconstruction
//! (docs/billing-continuity.md).

use protocol::billing::{
    BillingCookie, COOKIE_LEN, COOKIE_V2_LEN, CookieError, CookieKeys, CookieMessageKind,
    CookieSeal, SIGNATURE_CONTEXT, SequenceExtender, cookie_from_asap_bytes, cookie_from_message,
};
use protocol::rserpool::asap::Message;
use protocol::signing::{SigningKey, Verifier, key_id};

const KEY: &[u8] = b"pool shared key, 32 bytes long!!";

fn signed() -> BillingCookie {
    BillingCookie::sign(
        KEY,
        0x0102_0304,
        7,
        0x1122_3344_5566_7788,
        0xaabb_ccdd,
        1_700_000_000_123,
    )
}

#[test]
fn signed_cookie_round_trips_and_verifies() {
    let cookie = signed();
    let bytes = cookie.encode();
    assert_eq!(bytes.len(), COOKIE_LEN);
    let decoded = BillingCookie::decode(&bytes).unwrap();
    assert_eq!(decoded, cookie);
    assert_eq!(decoded.verify(KEY), Ok(()));
    assert!(!decoded.introduction);
    assert_eq!(decoded.next_record_sequence(), 0x1122_3344_5566_7789);
}

#[test]
fn layout_matches_the_wire_contract() {
    let bytes = signed().encode();
    assert_eq!(bytes[0], 1, "version");
    assert_eq!(bytes[1], 0, "flags");
    assert_eq!(&bytes[2..4], &[0, 0], "reserved");
    assert_eq!(&bytes[4..8], &[1, 2, 3, 4], "exporter id");
    assert_eq!(&bytes[8..12], &[0, 0, 0, 7], "domain");
    assert_eq!(&bytes[12..20], &0x1122_3344_5566_7788u64.to_be_bytes());
    assert_eq!(&bytes[20..24], &[0xaa, 0xbb, 0xcc, 0xdd], "PE id");
    assert_eq!(&bytes[24..32], &1_700_000_000_123u64.to_be_bytes());
    assert_ne!(&bytes[32..64], &[0u8; 32], "HMAC present");
}

#[test]
fn hmac_is_hmac_sha256_over_the_first_32_bytes() {
    // Independent check of the MAC construction with the hmac crate.
    use hmac::{Hmac, Mac};
    let cookie = signed();
    let bytes = cookie.encode();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(KEY).unwrap();
    mac.update(&bytes[..32]);
    assert_eq!(mac.finalize().into_bytes().as_slice(), &bytes[32..64]);
}

#[test]
fn every_flipped_bit_is_detected() {
    let bytes = signed().encode();
    for index in 0..COOKIE_LEN {
        for bit in 0..8 {
            let mut tampered = bytes.clone();
            tampered[index] ^= 1 << bit;
            let accepted = BillingCookie::decode(&tampered)
                .map(|cookie| cookie.verify(KEY).is_ok())
                .unwrap_or(false);
            assert!(
                !accepted,
                "byte {index} bit {bit} flipped and still accepted"
            );
        }
    }
}

#[test]
fn wrong_key_fails() {
    assert_eq!(
        signed().verify(b"another pool's key"),
        Err(CookieError::BadHmac)
    );
    assert_eq!(signed().verify(b""), Err(CookieError::BadHmac));
}

#[test]
fn introduction_is_unsigned_and_claims_nothing() {
    let intro = BillingCookie::introduction(42, 3);
    let bytes = intro.encode();
    assert_eq!(bytes[1], 1, "introduction flag");
    assert_eq!(&bytes[12..64], &[0u8; 52]);
    let decoded = BillingCookie::decode(&bytes).unwrap();
    assert_eq!(decoded, intro);
    assert_eq!(decoded.verify(KEY), Err(CookieError::Unsigned));
    assert_eq!(decoded.next_record_sequence(), 0);
    assert!(!decoded.covers(0));
}

#[test]
fn introduction_claiming_a_sequence_is_malformed() {
    let mut bytes = BillingCookie::introduction(42, 3).encode();
    bytes[19] = 5;
    assert_eq!(
        BillingCookie::decode(&bytes),
        Err(CookieError::MalformedIntroduction)
    );
}

#[test]
fn wrong_lengths_version_and_reserved_bits_are_errors() {
    let bytes = signed().encode();
    assert_eq!(
        BillingCookie::decode(&bytes[..63]),
        Err(CookieError::Length(63))
    );
    assert_eq!(BillingCookie::decode(&[]), Err(CookieError::Length(0)));
    let mut long = bytes.to_vec();
    long.push(0);
    assert_eq!(BillingCookie::decode(&long), Err(CookieError::Length(65)));
    let mut version = bytes.clone();
    version[0] = 3;
    assert_eq!(
        BillingCookie::decode(&version),
        Err(CookieError::Version(3))
    );
    // A version 1 body labelled version 2 is too short for version 2.
    version[0] = 2;
    assert_eq!(
        BillingCookie::decode(&version),
        Err(CookieError::Length(64))
    );
    let mut reserved = bytes.clone();
    reserved[3] = 1;
    assert_eq!(
        BillingCookie::decode(&reserved),
        Err(CookieError::ReservedBits)
    );
    let mut flags = bytes.clone();
    flags[1] = 0x80;
    assert_eq!(
        BillingCookie::decode(&flags),
        Err(CookieError::ReservedBits)
    );
}

fn collector_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn signed_v2(key: &SigningKey) -> BillingCookie {
    BillingCookie::sign_ed25519(
        key,
        0x0102_0304,
        7,
        0x1122_3344_5566_7788,
        0xaabb_ccdd,
        1_700_000_000_123,
    )
}

fn trusting(keys: &[&SigningKey]) -> CookieKeys {
    let mut trusted = CookieKeys::default();
    for key in keys {
        trusted.add_public_key(key.verifying_key());
    }
    trusted
}

#[test]
fn v2_layout_is_the_claims_then_key_id_then_an_ed25519_signature() {
    let key = collector_key(1);
    let cookie = signed_v2(&key);
    let bytes = cookie.encode();
    assert_eq!(bytes.len(), COOKIE_V2_LEN);
    assert_eq!(bytes[0], 2, "version");
    assert_eq!(bytes[1], 0, "flags");
    assert_eq!(&bytes[4..8], &[1, 2, 3, 4], "exporter id");
    assert_eq!(&bytes[12..20], &0x1122_3344_5566_7788u64.to_be_bytes());
    assert_eq!(&bytes[20..24], &[0xaa, 0xbb, 0xcc, 0xdd], "PE id");
    let id = key_id(&key.verifying_key());
    assert_eq!(&bytes[32..36], &id.to_be_bytes(), "key id");
    // Independent check of what is signed: context, then bytes 0..36.
    assert_eq!(
        SIGNATURE_CONTEXT, b"poolflow billing cookie v2\0",
        "wire contract"
    );
    let mut message = SIGNATURE_CONTEXT.to_vec();
    message.extend_from_slice(&bytes[..36]);
    let signature = protocol::signing::Signature::from_bytes(&bytes[36..100].try_into().unwrap());
    assert!(key.verifying_key().verify(&message, &signature).is_ok());
    let decoded = BillingCookie::decode(&bytes).unwrap();
    assert_eq!(decoded, cookie);
    assert_eq!(decoded.key_id(), Some(id));
    assert_eq!(trusting(&[&key]).verify(&decoded), Ok(()));
}

#[test]
fn v2_is_checked_with_public_keys_only_and_any_trusted_key_will_do() {
    let (old, new, stranger) = (collector_key(1), collector_key(2), collector_key(3));
    let rotation = trusting(&[&old, &new]);
    assert_eq!(rotation.verify(&signed_v2(&old)), Ok(()));
    assert_eq!(rotation.verify(&signed_v2(&new)), Ok(()));
    let stranger_id = key_id(&stranger.verifying_key());
    assert_eq!(
        rotation.verify(&signed_v2(&stranger)),
        Err(CookieError::UnknownKey(stranger_id))
    );
    // A stranger claiming a trusted key's id: the signature gives it away.
    let mut forged = signed_v2(&stranger);
    let old_id = key_id(&old.verifying_key());
    if let CookieSeal::Ed25519 { key_id, .. } = &mut forged.seal {
        *key_id = old_id;
    }
    assert_eq!(
        rotation.verify(&forged),
        Err(CookieError::BadSignature(old_id))
    );
    // Public keys do not check HMAC cookies: an exporter cannot tell a
    // forged one from a real one, so it trusts none.
    assert_eq!(rotation.verify(&signed()), Err(CookieError::HmacNotTrusted));
    assert_eq!(
        rotation.verify(&BillingCookie::introduction(1, 2)),
        Err(CookieError::Unsigned)
    );
    // A collector in migration trusts both versions.
    let migrating = rotation.clone().with_hmac_key(KEY.to_vec());
    assert_eq!(migrating.verify(&signed()), Ok(()));
    assert_eq!(migrating.verify(&signed_v2(&new)), Ok(()));
    // The HMAC-only check refuses a v2 cookie (no public key).
    assert!(signed_v2(&old).verify(KEY).is_err());
}

#[test]
fn every_flipped_bit_of_a_v2_cookie_is_detected() {
    let key = collector_key(9);
    let trusted = trusting(&[&key]);
    let bytes = signed_v2(&key).encode();
    // One bit per byte, a different one each byte (Ed25519 checks are slow
    // in a debug build; every byte is still covered).
    for index in 0..COOKIE_V2_LEN {
        let bit = index % 8;
        let mut tampered = bytes.clone();
        tampered[index] ^= 1 << bit;
        let accepted = BillingCookie::decode(&tampered)
            .map(|cookie| trusted.verify(&cookie).is_ok())
            .unwrap_or(false);
        assert!(
            !accepted,
            "byte {index} bit {bit} flipped and still accepted"
        );
    }
}

#[test]
fn v2_has_no_introduction_and_its_length_is_exact() {
    let bytes = signed_v2(&collector_key(1)).encode();
    let mut intro = bytes.clone();
    intro[1] = 1;
    assert_eq!(
        BillingCookie::decode(&intro),
        Err(CookieError::ReservedBits)
    );
    assert_eq!(
        BillingCookie::decode(&bytes[..99]),
        Err(CookieError::Length(99))
    );
    let mut long = bytes.clone();
    long.push(0);
    assert_eq!(BillingCookie::decode(&long), Err(CookieError::Length(101)));
    // The Cookie parameter grows with it.
    let cookie = signed_v2(&collector_key(1));
    assert_eq!(
        cookie_from_asap_bytes(&cookie.cookie_message_bytes()),
        Ok((CookieMessageKind::Cookie, cookie))
    );
}

#[test]
fn cookie_and_cookie_echo_messages_carry_the_cookie() {
    let cookie = signed();
    let wire = cookie.cookie_message_bytes();
    // ASAP header: type 0x0b, flags 0, length 4 + Cookie TLV (4 + 64).
    assert_eq!(&wire[..4], &[0x0b, 0, 0, 72]);
    assert_eq!(&wire[4..8], &[0x00, 0x0d, 0, 68], "Cookie parameter 0x000d");
    assert_eq!(
        cookie_from_asap_bytes(&wire),
        Ok((CookieMessageKind::Cookie, cookie))
    );
    let echo = cookie.cookie_echo_message_bytes();
    assert_eq!(echo[0], 0x0c);
    assert_eq!(
        cookie_from_asap_bytes(&echo),
        Ok((CookieMessageKind::CookieEcho, cookie))
    );
    assert_eq!(
        cookie_from_message(&cookie.to_cookie_echo_message()),
        Ok((CookieMessageKind::CookieEcho, cookie))
    );
}

#[test]
fn other_asap_messages_and_garbage_are_not_cookies() {
    let unreachable = Message::EndpointUnreachable {
        pool_handle: "pool".into(),
        pe_identifier: 1,
    };
    assert_eq!(
        cookie_from_message(&unreachable),
        Err(CookieError::NotACookieMessage(0x09))
    );
    assert!(matches!(
        cookie_from_asap_bytes(&[0x0b, 0, 0]),
        Err(CookieError::Asap(_))
    ));
    let short = Message::Cookie {
        cookie: vec![1; 10],
    };
    assert_eq!(cookie_from_message(&short), Err(CookieError::Length(10)));
}

#[test]
fn extender_counts_up_from_the_start() {
    let mut extender = SequenceExtender::new(0);
    assert_eq!(extender.extend(0), 0);
    assert_eq!(extender.extend(1), 1);
    assert_eq!(extender.extend(1000), 1000);
    let mut high = SequenceExtender::new(5 << 32 | 10);
    assert_eq!(high.extend(11), 5 << 32 | 11);
}

#[test]
fn extender_steps_the_high_half_on_wrap() {
    let mut extender = SequenceExtender::new(0xffff_fff0);
    assert_eq!(extender.extend(0xffff_fff1), 0xffff_fff1);
    assert_eq!(extender.extend(0xffff_ffff), 0xffff_ffff);
    assert_eq!(extender.extend(0), 1 << 32);
    assert_eq!(extender.extend(5), 1 << 32 | 5);
    // A second wrap.
    assert_eq!(extender.extend(0x8000_0000), 1 << 32 | 0x8000_0000);
    assert_eq!(extender.extend(0xffff_fffe), 1 << 32 | 0xffff_fffe);
    assert_eq!(extender.extend(3), 2 << 32 | 3);
    assert_eq!(extender.current(), 2 << 32 | 3);
}

#[test]
fn extender_wraps_when_the_first_record_after_the_cookie_crosses() {
    // Cookie through 0x0_ffff_ffff; the replay starts at 0x1_0000_0000.
    let mut extender = SequenceExtender::new(0xffff_ffff);
    assert_eq!(extender.extend(0), 1 << 32);
}

#[test]
fn extender_places_a_late_pre_wrap_record_in_the_previous_window() {
    let mut extender = SequenceExtender::new(0xffff_fff0);
    assert_eq!(extender.extend(2), 1 << 32 | 2);
    assert_eq!(extender.extend(0xffff_fff8), 0xffff_fff8);
    // The reference point did not move back.
    assert_eq!(extender.extend(3), 1 << 32 | 3);
}

#[test]
fn extender_small_backward_steps_stay_in_the_window() {
    // Less than 2^31 below the previous: not a wrap (e.g. a replay).
    let mut extender = SequenceExtender::new(1000);
    assert_eq!(extender.extend(2000), 2000);
    assert_eq!(extender.extend(1500), 1500);
    assert_eq!(extender.extend(2001), 2001);
    // Exactly 2^31 apart is not "more than 2^31": no wrap.
    let mut half = SequenceExtender::new(0x8000_0000);
    assert_eq!(half.extend(0), 0);
}
