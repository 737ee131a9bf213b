//! The billing cookie of poolflow's cookie protocol (docs/billing-continuity.md),
//! sans-IO: the 64-byte value of the ASAP Cookie parameter (RFC 5354 §3.13)
//! that a collector signs after each commit and an exporter echoes to the next
//! collector, plus the record sequence reconstruction a collector needs to
//! turn 32-bit IPFIX sequence numbers back into 64-bit record sequences.
//!
//! Layout (network byte order):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | version = 1 |
//! | 1 | 1 | flags: bit 0 = introduction |
//! | 2 | 2 | reserved, 0 |
//! | 4 | 4 | exporter id |
//! | 8 | 4 | observation domain id |
//! | 12 | 8 | last record sequence (contiguously stored through this one) |
//! | 20 | 4 | PE identifier of the signing collector |
//! | 24 | 8 | signing time, unix milliseconds |
//! | 32 | 32 | HMAC-SHA-256 over bytes 0..32 with the pool key |

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::rserpool::asap::Message;

/// The SCTP stream (or framed-TCP stream id) that carries billing records,
/// their templates and the cookies: the only stream whose IPFIX sequence
/// numbers are record sequences. Other streams of a billing association
/// carry best-effort records, which no cookie covers.
pub const BILLING_STREAM: u16 = 0;

/// Encoded size of a [`BillingCookie`].
pub const COOKIE_LEN: usize = 64;
/// The only version this codec reads and writes.
pub const COOKIE_VERSION: u8 = 1;
/// Flags bit 0: an introduction (nothing stored yet, unsigned).
pub const FLAG_INTRODUCTION: u8 = 0x01;
/// Bytes covered by the HMAC.
const SIGNED_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// Why a cookie was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    /// The value is not exactly [`COOKIE_LEN`] bytes.
    #[error("billing cookie must be {COOKIE_LEN} bytes, got {0}")]
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
    /// `verify` on an introduction: it is not signed.
    #[error("billing cookie is an unsigned introduction")]
    Unsigned,
    /// The HMAC does not match the pool key (forged, corrupted or another
    /// pool's cookie).
    #[error("billing cookie HMAC does not verify")]
    BadHmac,
    /// The ASAP message is not a Cookie / Cookie Echo.
    #[error("ASAP message type {0:#04x} is not a Cookie or Cookie Echo")]
    NotACookieMessage(u8),
    /// The ASAP message itself did not decode.
    #[error("ASAP message does not decode: {0}")]
    Asap(String),
}

/// The billing cookie. `introduction == true` means "nothing stored yet"
/// (unsigned, all claims zero); otherwise every record of (exporter_id,
/// domain) up to and including `last_record_sequence` is durably stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BillingCookie {
    /// Always [`COOKIE_VERSION`] for cookies this codec accepts.
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
    /// HMAC-SHA-256 over the first 32 encoded bytes; zero for an
    /// introduction.
    pub hmac: [u8; 32],
}

impl BillingCookie {
    /// The cookie an exporter echoes for a domain it holds no cookie for.
    pub fn introduction(exporter_id: u32, domain: u32) -> Self {
        Self {
            version: COOKIE_VERSION,
            introduction: true,
            exporter_id,
            domain,
            last_record_sequence: 0,
            pe_identifier: 0,
            signed_at_ms: 0,
            hmac: [0; 32],
        }
    }

    /// A signed cookie: "everything through `last_record_sequence` is stored".
    pub fn sign(
        key: &[u8],
        exporter_id: u32,
        domain: u32,
        last_record_sequence: u64,
        pe_identifier: u32,
        signed_at_ms: u64,
    ) -> Self {
        let mut cookie = Self {
            version: COOKIE_VERSION,
            introduction: false,
            exporter_id,
            domain,
            last_record_sequence,
            pe_identifier,
            signed_at_ms,
            hmac: [0; 32],
        };
        let tag = mac(key, &cookie.encode()[..SIGNED_LEN]).finalize();
        cookie.hmac.copy_from_slice(&tag.into_bytes());
        cookie
    }

    /// Checks the HMAC with the pool key (constant time). Introductions are
    /// unsigned and fail with [`CookieError::Unsigned`]: a collector accepts
    /// them by their flag, not by this check.
    pub fn verify(&self, key: &[u8]) -> Result<(), CookieError> {
        if self.introduction {
            return Err(CookieError::Unsigned);
        }
        mac(key, &self.encode()[..SIGNED_LEN])
            .verify_slice(&self.hmac)
            .map_err(|_| CookieError::BadHmac)
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

    /// The 64 wire bytes.
    pub fn encode(&self) -> [u8; COOKIE_LEN] {
        let mut out = [0u8; COOKIE_LEN];
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
        out[32..64].copy_from_slice(&self.hmac);
        out
    }

    /// Parses the 64 wire bytes. Does not check the HMAC (see
    /// [`Self::verify`]); does reject what a verified cookie could never be.
    pub fn decode(bytes: &[u8]) -> Result<Self, CookieError> {
        let bytes: &[u8; COOKIE_LEN] = bytes
            .try_into()
            .map_err(|_| CookieError::Length(bytes.len()))?;
        if bytes[0] != COOKIE_VERSION {
            return Err(CookieError::Version(bytes[0]));
        }
        // Reserved bits are covered by the HMAC, so a signer that set them
        // meant something we cannot interpret: refuse rather than guess.
        if bytes[1] & !FLAG_INTRODUCTION != 0 || bytes[2] != 0 || bytes[3] != 0 {
            return Err(CookieError::ReservedBits);
        }
        let u32_at = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let cookie = Self {
            version: bytes[0],
            introduction: bytes[1] & FLAG_INTRODUCTION != 0,
            exporter_id: u32_at(4),
            domain: u32_at(8),
            last_record_sequence: u64_at(12),
            pe_identifier: u32_at(20),
            signed_at_ms: u64_at(24),
            hmac: bytes[32..64].try_into().expect("32 bytes"),
        };
        if cookie.introduction
            && (cookie.last_record_sequence != 0
                || cookie.pe_identifier != 0
                || cookie.signed_at_ms != 0
                || cookie.hmac != [0; 32])
        {
            return Err(CookieError::MalformedIntroduction);
        }
        Ok(cookie)
    }

    /// ASAP Cookie (0x0b), collector → exporter, carrying this cookie.
    pub fn to_cookie_message(&self) -> Message {
        Message::Cookie {
            cookie: self.encode().to_vec(),
        }
    }

    /// ASAP Cookie Echo (0x0c), exporter → collector, carrying this cookie.
    pub fn to_cookie_echo_message(&self) -> Message {
        Message::CookieEcho {
            cookie: self.encode().to_vec(),
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
