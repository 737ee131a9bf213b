//! The billing cookie of poolflow's cookie protocol (docs/billing-continuity.md),
//! sans-IO: the value of the ASAP Cookie parameter (RFC 5354 §3.13) that a
//! collector signs after each commit and an exporter echoes to the next
//! collector, plus the record sequence reconstruction a collector needs to
//! turn 32-bit IPFIX sequence numbers back into 64-bit record sequences.
//!
//! Two versions share the first 32 bytes (network byte order):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | version: 1 (HMAC, or an introduction) or 2 (Ed25519) |
//! | 1 | 1 | flags: bit 0 = introduction (version 1 only) |
//! | 2 | 2 | reserved, 0 |
//! | 4 | 4 | exporter id |
//! | 8 | 4 | observation domain id |
//! | 12 | 8 | last record sequence (contiguously stored through this one) |
//! | 20 | 4 | PE identifier of the signing collector |
//! | 24 | 8 | signing time, unix milliseconds |
//!
//! Version 1 (64 bytes): 32..64 = HMAC-SHA-256 over bytes 0..32 with the
//! pool's shared key. Anyone holding the key can sign, so an exporter (which
//! must not be able to forge) cannot check it.
//!
//! Version 2 (100 bytes): 32..36 = key id of the signing key
//! ([`crate::signing::key_id`]), 36..100 = Ed25519 signature (RFC 8032) over
//! [`SIGNATURE_CONTEXT`] followed by bytes 0..36. Collectors hold the private
//! keys; exporters hold the public keys and check every cookie.

use std::collections::BTreeMap;
use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::rserpool::asap::Message;
use crate::signing::{Signer, SigningKey, VerifyingKey, key_id};

/// The SCTP stream (or framed-TCP stream id) that carries billing records,
/// their templates and the cookies: the only stream whose IPFIX sequence
/// numbers are record sequences. Other streams of a billing association
/// carry best-effort records, which no cookie covers.
pub const BILLING_STREAM: u16 = 0;

/// Encoded size of a version 1 cookie (HMAC, or an introduction).
pub const COOKIE_LEN: usize = 64;
/// Encoded size of a version 2 cookie (Ed25519).
pub const COOKIE_V2_LEN: usize = 100;
/// Version 1: HMAC-SHA-256 with the pool's shared key; every introduction.
pub const COOKIE_VERSION: u8 = 1;
/// Version 2: Ed25519 signature, checkable by exporters.
pub const COOKIE_VERSION_ED25519: u8 = 2;
/// Flags bit 0: an introduction (nothing stored yet, unsigned).
pub const FLAG_INTRODUCTION: u8 = 0x01;
/// Bytes of claims, common to both versions (covered by the HMAC).
const CLAIMS_LEN: usize = 32;
/// Bytes a version 2 signature covers (claims and key id).
const V2_SIGNED_LEN: usize = 36;
/// Prefixed to what a version 2 signature covers, so a signature made for
/// anything else with the same key (a pool registration, say) can never
/// pass as a cookie, and the reverse.
pub const SIGNATURE_CONTEXT: &[u8] = b"poolflow billing cookie v2\0";

type HmacSha256 = Hmac<Sha256>;

/// Why a cookie was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    /// The value is not the length of its version.
    #[error("billing cookie of {0} bytes does not match its version")]
    Length(usize),
    /// A version this codec does not know.
    #[error("unsupported billing cookie version {0}")]
    Version(u8),
    /// Reserved bits or unknown flags set: a cookie from a newer or broken
    /// peer whose meaning we cannot know.
    #[error("billing cookie has reserved bits set")]
    ReservedBits,
    /// An introduction that claims something (a sequence, a PE, a time or
    /// an HMAC): introductions claim nothing.
    #[error("billing cookie introduction carries non-zero fields")]
    MalformedIntroduction,
    /// Verification of an introduction: it is not signed.
    #[error("billing cookie is an unsigned introduction")]
    Unsigned,
    /// The HMAC does not match the pool key (forged, corrupted or another
    /// pool's cookie).
    #[error("billing cookie HMAC does not verify")]
    BadHmac,
    /// A version 1 (HMAC) cookie where no HMAC key is trusted (an exporter
    /// checking signatures, or a collector past the migration).
    #[error("billing cookie is HMAC-signed (version 1) and no HMAC key is trusted")]
    HmacNotTrusted,
    /// A version 2 cookie signed by a key not in the trusted set.
    #[error("billing cookie signed by unknown key {0:#010x}")]
    UnknownKey(u32),
    /// A version 2 cookie whose Ed25519 signature does not verify with the
    /// trusted key of its key id (forged or corrupted).
    #[error("billing cookie Ed25519 signature does not verify (key {0:#010x})")]
    BadSignature(u32),
    /// The ASAP message is not a Cookie / Cookie Echo.
    #[error("ASAP message type {0:#04x} is not a Cookie or Cookie Echo")]
    NotACookieMessage(u8),
    /// The ASAP message itself did not decode.
    #[error("ASAP message does not decode: {0}")]
    Asap(String),
}

/// What vouches for a cookie's claims.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum CookieSeal {
    /// An introduction: nothing claimed, nothing signed.
    None,
    /// Version 1: HMAC-SHA-256 over the claims with the pool's shared key.
    Hmac([u8; 32]),
    /// Version 2: Ed25519 signature by the key named by `key_id`.
    Ed25519 {
        /// [`crate::signing::key_id`] of the signing key's public half.
        key_id: u32,
        /// Over [`SIGNATURE_CONTEXT`] and the encoded bytes 0..36.
        signature: [u8; 64],
    },
}

impl fmt::Debug for CookieSeal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Hmac(_) => f.write_str("Hmac(..)"),
            Self::Ed25519 { key_id, .. } => write!(f, "Ed25519 {{ key_id: {key_id:#010x} }}"),
        }
    }
}

/// The billing cookie. `introduction == true` means "nothing stored yet"
/// (unsigned, all claims zero); otherwise every record of (exporter_id,
/// domain) up to and including `last_record_sequence` is durably stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BillingCookie {
    /// [`COOKIE_VERSION`] (HMAC or introduction) or
    /// [`COOKIE_VERSION_ED25519`]; follows `seal`.
    pub version: u8,
    /// Introduction flag.
    pub introduction: bool,
    /// The exporter's configured id (not its address).
    pub exporter_id: u32,
    /// IPFIX observation domain id.
    pub domain: u32,
    /// Contiguously stored through this record sequence (0 for an
    /// introduction, meaning nothing).
    pub last_record_sequence: u64,
    /// PE identifier of the collector that signed.
    pub pe_identifier: u32,
    /// Signing time, unix milliseconds.
    pub signed_at_ms: u64,
    /// HMAC, Ed25519 signature, or nothing (introduction).
    pub seal: CookieSeal,
}

impl BillingCookie {
    /// The cookie an exporter echoes for a domain it holds no cookie for.
    /// Always version 1, which collectors of every version read.
    pub fn introduction(exporter_id: u32, domain: u32) -> Self {
        Self {
            version: COOKIE_VERSION,
            introduction: true,
            exporter_id,
            domain,
            last_record_sequence: 0,
            pe_identifier: 0,
            signed_at_ms: 0,
            seal: CookieSeal::None,
        }
    }

    fn unsealed(
        version: u8,
        exporter_id: u32,
        domain: u32,
        last_record_sequence: u64,
        pe_identifier: u32,
        signed_at_ms: u64,
    ) -> Self {
        Self {
            version,
            introduction: false,
            exporter_id,
            domain,
            last_record_sequence,
            pe_identifier,
            signed_at_ms,
            seal: CookieSeal::None,
        }
    }

    /// A version 1 cookie signed with the pool's shared HMAC key:
    /// "everything through `last_record_sequence` is stored".
    pub fn sign(
        key: &[u8],
        exporter_id: u32,
        domain: u32,
        last_record_sequence: u64,
        pe_identifier: u32,
        signed_at_ms: u64,
    ) -> Self {
        let mut cookie = Self::unsealed(
            COOKIE_VERSION,
            exporter_id,
            domain,
            last_record_sequence,
            pe_identifier,
            signed_at_ms,
        );
        let tag = mac(key, &cookie.claims()).finalize();
        cookie.seal = CookieSeal::Hmac(tag.into_bytes().into());
        cookie
    }

    /// A version 2 cookie signed with this collector's Ed25519 key.
    pub fn sign_ed25519(
        key: &SigningKey,
        exporter_id: u32,
        domain: u32,
        last_record_sequence: u64,
        pe_identifier: u32,
        signed_at_ms: u64,
    ) -> Self {
        let mut cookie = Self::unsealed(
            COOKIE_VERSION_ED25519,
            exporter_id,
            domain,
            last_record_sequence,
            pe_identifier,
            signed_at_ms,
        );
        let key_id = key_id(&key.verifying_key());
        let signature = key.sign(&v2_signed_message(&cookie.claims(), key_id));
        cookie.seal = CookieSeal::Ed25519 {
            key_id,
            signature: signature.to_bytes(),
        };
        cookie
    }

    /// Checks a version 1 cookie's HMAC with the pool key (constant time).
    /// Introductions fail with [`CookieError::Unsigned`] (a collector
    /// accepts them by their flag, not by this check); version 2 cookies
    /// need [`CookieKeys::verify`].
    pub fn verify(&self, key: &[u8]) -> Result<(), CookieError> {
        CookieKeys::default()
            .with_hmac_key(key.to_vec())
            .verify(self)
    }

    /// The key id of a version 2 cookie's signer.
    pub fn key_id(&self) -> Option<u32> {
        match self.seal {
            CookieSeal::Ed25519 { key_id, .. } => Some(key_id),
            _ => None,
        }
    }

    /// The first record sequence this cookie does not cover: where a replay
    /// after it starts.
    pub fn next_record_sequence(&self) -> u64 {
        if self.introduction {
            0
        } else {
            // Saturates: a cookie claiming the last possible sequence
            // (only a broken or hostile peer sends one; 2^64 records are
            // never reached) must not overflow (found by fuzzing).
            self.last_record_sequence.saturating_add(1)
        }
    }

    /// Whether the record `sequence` is stored according to this cookie.
    pub fn covers(&self, sequence: u64) -> bool {
        !self.introduction && sequence <= self.last_record_sequence
    }

    /// The first 32 bytes: the claims, the same in both versions.
    fn claims(&self) -> [u8; CLAIMS_LEN] {
        let mut out = [0u8; CLAIMS_LEN];
        out[0] = self.version;
        out[1] = if self.introduction {
            FLAG_INTRODUCTION
        } else {
            0
        };
        out[4..8].copy_from_slice(&self.exporter_id.to_be_bytes());
        out[8..12].copy_from_slice(&self.domain.to_be_bytes());
        out[12..20].copy_from_slice(&self.last_record_sequence.to_be_bytes());
        out[20..24].copy_from_slice(&self.pe_identifier.to_be_bytes());
        out[24..32].copy_from_slice(&self.signed_at_ms.to_be_bytes());
        out
    }

    /// The wire bytes: [`COOKIE_LEN`] for version 1, [`COOKIE_V2_LEN`] for
    /// version 2.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(COOKIE_V2_LEN);
        out.extend_from_slice(&self.claims());
        match &self.seal {
            CookieSeal::None => out.extend_from_slice(&[0; 32]),
            CookieSeal::Hmac(tag) => out.extend_from_slice(tag),
            CookieSeal::Ed25519 { key_id, signature } => {
                out.extend_from_slice(&key_id.to_be_bytes());
                out.extend_from_slice(signature);
            }
        }
        out
    }

    /// Parses the wire bytes. Does not check the HMAC or signature (see
    /// [`CookieKeys::verify`]); does reject what a verified cookie could
    /// never be.
    pub fn decode(bytes: &[u8]) -> Result<Self, CookieError> {
        let expected = match bytes.first() {
            Some(&COOKIE_VERSION) => COOKIE_LEN,
            Some(&COOKIE_VERSION_ED25519) => COOKIE_V2_LEN,
            // The length tells a truncated cookie from an unknown version.
            Some(&other) if bytes.len() == COOKIE_LEN || bytes.len() == COOKIE_V2_LEN => {
                return Err(CookieError::Version(other));
            }
            _ => return Err(CookieError::Length(bytes.len())),
        };
        if bytes.len() != expected {
            return Err(CookieError::Length(bytes.len()));
        }
        let version = bytes[0];
        // Reserved bits are covered by the HMAC or signature, so a signer
        // that set them meant something we cannot interpret: refuse rather
        // than guess. Version 2 has no introduction (introductions are
        // unsigned, version 1 says it all).
        let allowed_flags = if version == COOKIE_VERSION {
            FLAG_INTRODUCTION
        } else {
            0
        };
        if bytes[1] & !allowed_flags != 0 || bytes[2] != 0 || bytes[3] != 0 {
            return Err(CookieError::ReservedBits);
        }
        let u32_at = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let introduction = bytes[1] & FLAG_INTRODUCTION != 0;
        let seal = if version == COOKIE_VERSION_ED25519 {
            CookieSeal::Ed25519 {
                key_id: u32_at(32),
                signature: bytes[36..100].try_into().expect("64 bytes"),
            }
        } else if introduction {
            if bytes[12..64].iter().any(|&b| b != 0) {
                return Err(CookieError::MalformedIntroduction);
            }
            CookieSeal::None
        } else {
            CookieSeal::Hmac(bytes[32..64].try_into().expect("32 bytes"))
        };
        Ok(Self {
            version,
            introduction,
            exporter_id: u32_at(4),
            domain: u32_at(8),
            last_record_sequence: u64_at(12),
            pe_identifier: u32_at(20),
            signed_at_ms: u64_at(24),
            seal,
        })
    }

    /// ASAP Cookie (0x0b), collector → exporter, carrying this cookie.
    pub fn to_cookie_message(&self) -> Message {
        Message::Cookie {
            cookie: self.encode(),
        }
    }

    /// ASAP Cookie Echo (0x0c), exporter → collector, carrying this cookie.
    pub fn to_cookie_echo_message(&self) -> Message {
        Message::CookieEcho {
            cookie: self.encode(),
        }
    }

    /// The encoded ASAP Cookie message (PPID 11 payload).
    pub fn cookie_message_bytes(&self) -> Vec<u8> {
        self.to_cookie_message().to_bytes()
    }

    /// The encoded ASAP Cookie Echo message (PPID 11 payload).
    pub fn cookie_echo_message_bytes(&self) -> Vec<u8> {
        self.to_cookie_echo_message().to_bytes()
    }
}

fn v2_signed_message(claims: &[u8; CLAIMS_LEN], key_id: u32) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNATURE_CONTEXT.len() + V2_SIGNED_LEN);
    message.extend_from_slice(SIGNATURE_CONTEXT);
    message.extend_from_slice(claims);
    message.extend_from_slice(&key_id.to_be_bytes());
    message
}

/// The keys a party trusts for cookies: the pool's HMAC key (version 1,
/// collectors only, during the migration) and Ed25519 public keys by key id
/// (version 2: every collector's signing key, old and new during a
/// rotation). An exporter holds public keys only, so it checks but cannot
/// sign.
#[derive(Clone, Default)]
pub struct CookieKeys {
    hmac: Option<Vec<u8>>,
    public: BTreeMap<u32, Vec<VerifyingKey>>,
}

impl fmt::Debug for CookieKeys {
    // Never prints the HMAC key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CookieKeys")
            .field("hmac", &self.hmac.is_some())
            .field("public_key_ids", &self.public_key_ids())
            .finish()
    }
}

impl CookieKeys {
    /// Also trusts version 1 cookies signed with this HMAC key.
    pub fn with_hmac_key(mut self, key: Vec<u8>) -> Self {
        self.hmac = Some(key);
        self
    }

    /// Trusts version 2 cookies signed by this key's private half.
    pub fn add_public_key(&mut self, key: VerifyingKey) {
        // Two keys may share a 32-bit id (unlikely, not impossible): keep
        // both and try each.
        let same_id = self.public.entry(key_id(&key)).or_default();
        if !same_id.contains(&key) {
            same_id.push(key);
        }
    }

    /// Whether any Ed25519 key is trusted.
    pub fn has_public_keys(&self) -> bool {
        !self.public.is_empty()
    }

    /// Whether version 1 cookies can be checked.
    pub fn has_hmac_key(&self) -> bool {
        self.hmac.is_some()
    }

    /// Ids of the trusted public keys, for logs.
    pub fn public_key_ids(&self) -> Vec<u32> {
        self.public.keys().copied().collect()
    }

    /// Checks a cookie's HMAC or signature against the trusted keys.
    pub fn verify(&self, cookie: &BillingCookie) -> Result<(), CookieError> {
        match &cookie.seal {
            CookieSeal::None => Err(CookieError::Unsigned),
            CookieSeal::Hmac(tag) => {
                let key = self.hmac.as_ref().ok_or(CookieError::HmacNotTrusted)?;
                mac(key, &cookie.claims())
                    .verify_slice(tag)
                    .map_err(|_| CookieError::BadHmac)
            }
            CookieSeal::Ed25519 { key_id, signature } => {
                let keys = self
                    .public
                    .get(key_id)
                    .ok_or(CookieError::UnknownKey(*key_id))?;
                let message = v2_signed_message(&cookie.claims(), *key_id);
                let signature = crate::signing::Signature::from_bytes(signature);
                // Strict verification: no malleable or small-order-key
                // signatures (RFC 8032 leaves them to the verifier).
                keys.iter()
                    .any(|key| key.verify_strict(&message, &signature).is_ok())
                    .then_some(())
                    .ok_or(CookieError::BadSignature(*key_id))
            }
        }
    }
}

/// Which of the two cookie messages carried a cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieMessageKind {
    /// ASAP Cookie (0x0b), collector → exporter.
    Cookie,
    /// ASAP Cookie Echo (0x0c), exporter → collector.
    CookieEcho,
}

/// The billing cookie inside a decoded ASAP Cookie / Cookie Echo.
pub fn cookie_from_message(
    message: &Message,
) -> Result<(CookieMessageKind, BillingCookie), CookieError> {
    match message {
        Message::Cookie { cookie } => {
            Ok((CookieMessageKind::Cookie, BillingCookie::decode(cookie)?))
        }
        Message::CookieEcho { cookie } => Ok((
            CookieMessageKind::CookieEcho,
            BillingCookie::decode(cookie)?,
        )),
        other => Err(CookieError::NotACookieMessage(other.message_type())),
    }
}

/// The billing cookie inside an encoded ASAP message (a PPID 11 payload).
pub fn cookie_from_asap_bytes(
    bytes: &[u8],
) -> Result<(CookieMessageKind, BillingCookie), CookieError> {
    let message = Message::decode(bytes).map_err(|e| CookieError::Asap(e.to_string()))?;
    cookie_from_message(&message)
}

fn mac(key: &[u8], data: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(data);
    mac
}

/// Rebuilds 64-bit record sequences from the 32-bit IPFIX header sequence
/// numbers of one (association, domain), as docs/billing-continuity.md says:
/// start from the Cookie Echo's sequence and step the high half when the low
/// half wraps.
///
/// The reference point is the highest sequence seen so far, and a low value
/// is placed in whichever 2^32 window puts it nearest to that point (serial
/// number arithmetic, RFC 1982). For an in-order stream that is exactly the
/// document's rule (a new low more than 2^31 below the previous one steps the
/// high half); in addition a record slightly *before* a wrap that arrives
/// after it (a message from before the wrap re-sent) is placed in the
/// previous window instead of 2^32 ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceExtender {
    high: u32,
    last_low: Option<u32>,
}

impl SequenceExtender {
    /// Starts at `start`: the Cookie Echo's `last_record_sequence`, or 0
    /// after an introduction.
    pub fn new(start: u64) -> Self {
        Self {
            high: (start >> 32) as u32,
            last_low: Some(start as u32),
        }
    }

    /// The 64-bit record sequence of a record whose low 32 bits are `low32`.
    pub fn extend(&mut self, low32: u32) -> u64 {
        let Some(last_low) = self.last_low else {
            self.last_low = Some(low32);
            return compose(self.high, low32);
        };
        const HALF: u32 = 1 << 31;
        if low32 < last_low && last_low - low32 > HALF {
            // Wrapped forward: the next window.
            self.high = self.high.wrapping_add(1);
            self.last_low = Some(low32);
            compose(self.high, low32)
        } else if low32 > last_low && low32 - last_low > HALF && self.high > 0 {
            // Just before the last wrap: the previous window; the reference
            // point stays where it is.
            compose(self.high - 1, low32)
        } else {
            if low32 > last_low {
                self.last_low = Some(low32);
            }
            compose(self.high, low32)
        }
    }

    /// The highest record sequence seen (or the start).
    pub fn current(&self) -> u64 {
        compose(self.high, self.last_low.unwrap_or(0))
    }
}

fn compose(high: u32, low: u32) -> u64 {
    (u64::from(high) << 32) | u64::from(low)
}
