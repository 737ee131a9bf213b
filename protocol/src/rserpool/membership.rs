//! Pool membership proofs: how a pool element proves to a registrar that it
//! belongs to a pool (RFC 5352 §6: registrars SHOULD authenticate PEs;
//! RFC 5355 §2.1–§2.4: a rogue PE registering, or altering another's
//! registration). Sans-IO: signing and checking take keys, bytes and the
//! wall-clock time as arguments; the daemons read key files and clocks.
//!
//! Two signatures, both Ed25519 ([`crate::signing`]):
//!
//! - A [`MemberCertificate`]: the pool's *membership authority* (an operator
//!   key, kept offline) signs (pool handle, member public key, validity).
//! - A [`MembershipProof`], sent in each Registration and Deregistration:
//!   the member signs the message's content (message type, pool handle, PE
//!   identifier, the Pool Element parameter as encoded, a timestamp) with its
//!   own key and attaches its certificate. A captured registration cannot
//!   be altered (the signature covers transports and policy) nor replayed
//!   later than the registrar's clock window.
//!
//! On the wire the proof is one parameter of type [`PARAM_TYPE`] (0xBF02),
//! whose high bits `10` tell registrars that do not know it (RSPLIB,
//! Wireshark) to skip it silently (RFC 5354 §2). ENRP carries the proof in
//! Handle Updates with the Pool Element as the PE signed it
//! ([`MembershipProof::signed_element`]), since the home registrar fills in
//! addresses and its own identifier before forwarding.

use std::fmt;
use std::time::Duration;

use crate::signing::{Signature, Signer, SigningKey, Verifier, VerifyingKey, key_id};

use super::params::{DecodeError, PoolElement, PoolHandle};

/// Parameter type of a [`MembershipProof`]: not IANA-assigned (a local,
/// experimental extension like ENRP authentication's 0xBF01), top bits `10`:
/// "skip and continue, report nothing" for receivers that do not know it.
pub const PARAM_TYPE: u16 = 0xbf02;

/// Domain separation: a certificate signature can never be taken for a
/// message signature or for anything else signed with the same keys (the
/// billing cookies use the same scheme).
const CERT_CONTEXT: &[u8] = b"poolflow member certificate v1\0";
const PROOF_CONTEXT: &[u8] = b"poolflow membership proof v1\0";

/// Fixed part of an encoded certificate: authority key id (4), not before
/// (8), not after (8), member key (32), authority signature (64).
const CERT_FIXED_LEN: usize = 4 + 8 + 8 + 32 + 64;
/// Fixed part of an encoded proof: timestamp (8), signature (64),
/// certificate length (2), reserved (2).
const PROOF_FIXED_LEN: usize = 8 + 64 + 2 + 2;

/// Authority-signed binding of a member key to a pool for a time span.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MemberCertificate {
    /// [`key_id`] of the authority key that signed (lets the registrar pick
    /// the key among several during a rotation).
    pub authority_key_id: u32,
    /// Start of validity, seconds since the Unix epoch.
    pub not_before: u64,
    /// End of validity (exclusive), seconds since the Unix epoch.
    pub not_after: u64,
    /// The member's Ed25519 public key.
    pub member_key: [u8; 32],
    /// The pool the member may join.
    pub pool_handle: PoolHandle,
    /// The authority's signature over the fields above.
    pub signature: [u8; 64],
}

impl fmt::Debug for MemberCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemberCertificate")
            .field(
                "authority_key_id",
                &format_args!("{:#010x}", self.authority_key_id),
            )
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("pool_handle", &self.pool_handle)
            .finish_non_exhaustive()
    }
}

fn cert_signed_bytes(
    pool_handle: &PoolHandle,
    member_key: &[u8; 32],
    not_before: u64,
    not_after: u64,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(CERT_CONTEXT.len() + 52 + pool_handle.0.len());
    out.extend_from_slice(CERT_CONTEXT);
    out.extend_from_slice(&not_before.to_be_bytes());
    out.extend_from_slice(&not_after.to_be_bytes());
    out.extend_from_slice(member_key);
    out.extend_from_slice(&pool_handle.0);
    out
}

impl MemberCertificate {
    /// The authority issues a certificate for `member` in `pool_handle`,
    /// valid from `not_before` to `not_after` (Unix seconds).
    pub fn issue(
        authority: &SigningKey,
        pool_handle: &PoolHandle,
        member: &VerifyingKey,
        not_before: u64,
        not_after: u64,
    ) -> Self {
        let member_key = member.to_bytes();
        let signed = cert_signed_bytes(pool_handle, &member_key, not_before, not_after);
        Self {
            authority_key_id: key_id(&authority.verifying_key()),
            not_before,
            not_after,
            member_key,
            pool_handle: pool_handle.clone(),
            signature: authority.sign(&signed).to_bytes(),
        }
    }

    /// Checks the authority's signature with `authority`.
    pub fn verify_signature(&self, authority: &VerifyingKey) -> bool {
        let signed = cert_signed_bytes(
            &self.pool_handle,
            &self.member_key,
            self.not_before,
            self.not_after,
        );
        authority
            .verify(&signed, &Signature::from_bytes(&self.signature))
            .is_ok()
    }

    /// Appends the binary form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.authority_key_id.to_be_bytes());
        out.extend_from_slice(&self.not_before.to_be_bytes());
        out.extend_from_slice(&self.not_after.to_be_bytes());
        out.extend_from_slice(&self.member_key);
        out.extend_from_slice(&self.signature);
        out.extend_from_slice(&self.pool_handle.0);
    }

    /// The binary form as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Parses the binary form; the pool handle is whatever follows the
    /// fixed fields and may be at most `max_handle_len` bytes.
    pub fn decode(bytes: &[u8], max_handle_len: usize) -> Result<Self, DecodeError> {
        if bytes.len() < CERT_FIXED_LEN {
            return Err(DecodeError::Truncated {
                what: "member certificate",
            });
        }
        let handle = &bytes[CERT_FIXED_LEN..];
        if handle.len() > max_handle_len {
            return Err(DecodeError::PoolHandleTooLong {
                length: handle.len(),
                max: max_handle_len,
            });
        }
        let u64_at = |at: usize| {
            let mut b = [0; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let mut member_key = [0; 32];
        member_key.copy_from_slice(&bytes[20..52]);
        let mut signature = [0; 64];
        signature.copy_from_slice(&bytes[52..116]);
        Ok(Self {
            authority_key_id: u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            not_before: u64_at(4),
            not_after: u64_at(12),
            member_key,
            pool_handle: PoolHandle(handle.to_vec()),
            signature,
        })
    }

    /// The text form operators keep in a file: a comment line saying what
    /// it is, then the binary form in hex between PEM-style markers.
    pub fn to_text(&self) -> String {
        let hex: String = self.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
        let mut text = format!(
            "# poolflow member certificate: pool {:?}, member key id {:#010x}, authority key id {:#010x}, valid {}..{} (Unix seconds)\n-----BEGIN POOLFLOW MEMBER CERTIFICATE-----\n",
            self.pool_handle.to_string(),
            VerifyingKey::from_bytes(&self.member_key)
                .map(|k| key_id(&k))
                .unwrap_or(0),
            self.authority_key_id,
            self.not_before,
            self.not_after,
        );
        for line in hex.as_bytes().chunks(64) {
            text.push_str(std::str::from_utf8(line).unwrap_or_default());
            text.push('\n');
        }
        text.push_str("-----END POOLFLOW MEMBER CERTIFICATE-----\n");
        text
    }

    /// Parses [`MemberCertificate::to_text`] output (comment lines ignored).
    pub fn from_text(text: &str, max_handle_len: usize) -> Result<Self, String> {
        let begin = "-----BEGIN POOLFLOW MEMBER CERTIFICATE-----";
        let end = "-----END POOLFLOW MEMBER CERTIFICATE-----";
        let start = text
            .find(begin)
            .ok_or("no BEGIN POOLFLOW MEMBER CERTIFICATE line")?;
        let body = &text[start + begin.len()..];
        let stop = body
            .find(end)
            .ok_or("no END POOLFLOW MEMBER CERTIFICATE line")?;
        let hex: String = body[..stop]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        if hex.len() % 2 != 0 {
            return Err("odd number of hex digits".to_string());
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&hex[at..at + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|e| format!("bad hex: {e}"))?;
        Self::decode(&bytes, max_handle_len).map_err(|e| e.to_string())
    }
}

/// What the member signs: a context string, then the message's content.
/// `element` is the encoded Pool Element parameter for a Registration and
/// empty for a Deregistration.
fn proof_signed_bytes(
    message_type: u8,
    pool_handle: &PoolHandle,
    pe_identifier: u32,
    element: &[u8],
    timestamp_ms: u64,
) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(PROOF_CONTEXT.len() + 19 + pool_handle.0.len() + element.len());
    out.extend_from_slice(PROOF_CONTEXT);
    out.push(message_type);
    // Length-prefixed: handle and element cannot trade bytes. Both come
    // from (or go into) 16-bit TLV lengths, so the casts never truncate.
    out.extend_from_slice(&(pool_handle.0.len() as u16).to_be_bytes());
    out.extend_from_slice(&pool_handle.0);
    out.extend_from_slice(&pe_identifier.to_be_bytes());
    out.extend_from_slice(&(element.len() as u32).to_be_bytes());
    out.extend_from_slice(element);
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out
}

/// A member's signature over one Registration or Deregistration, with its
/// certificate.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MembershipProof {
    /// The member's wall clock when signing, milliseconds since the Unix
    /// epoch (the registrar refuses values outside its window: replay).
    pub timestamp_ms: u64,
    /// The member's signature (see [`MembershipProof::sign_registration`]).
    pub signature: [u8; 64],
    /// The member's certificate.
    pub certificate: MemberCertificate,
    /// Only in ENRP Handle Updates: the Pool Element exactly as the PE
    /// signed it (the forwarded one has the home registrar's fill-ins).
    pub signed_element: Option<PoolElement>,
}

impl fmt::Debug for MembershipProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MembershipProof")
            .field("timestamp_ms", &self.timestamp_ms)
            .field("certificate", &self.certificate)
            .field("signed_element", &self.signed_element.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a proof was refused; [`MembershipError::reason`] is the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// The pool is closed and the message carries no proof.
    #[error("no membership proof for a closed pool")]
    NoProof,
    /// The certificate is for another pool.
    #[error("certificate is for pool {0:?}")]
    WrongPool(String),
    /// No configured authority key has the certificate's key id, or its
    /// signature does not verify with the one that has.
    #[error("certificate not signed by an authority of this pool (key id {0:#010x})")]
    UnknownAuthority(u32),
    /// Now is outside the certificate's validity.
    #[error("certificate not valid now (valid {not_before}..{not_after}, now {now})")]
    CertificateExpired {
        /// Start of validity.
        not_before: u64,
        /// End of validity.
        not_after: u64,
        /// The registrar's clock (Unix seconds).
        now: u64,
    },
    /// The member's signature does not match the message.
    #[error("bad member signature (message altered or wrong key)")]
    BadSignature,
    /// The timestamp is outside the registrar's window.
    #[error("timestamp {skew_ms} ms away from the registrar's clock")]
    StaleTimestamp {
        /// Signed timestamp minus registrar clock.
        skew_ms: i64,
    },
    /// The forwarded Pool Element does not match the one the PE signed.
    #[error("forwarded pool element differs from the signed one")]
    ElementMismatch,
}

impl MembershipError {
    /// Short stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoProof => "no_membership_proof",
            Self::WrongPool(_) => "membership_wrong_pool",
            Self::UnknownAuthority(_) => "membership_unknown_authority",
            Self::CertificateExpired { .. } => "membership_certificate_expired",
            Self::BadSignature => "membership_bad_signature",
            Self::StaleTimestamp { .. } => "membership_stale_timestamp",
            Self::ElementMismatch => "membership_element_mismatch",
        }
    }
}

/// The encoded Pool Element parameter (what a Registration proof covers).
fn element_bytes(element: &PoolElement) -> Vec<u8> {
    let mut out = Vec::new();
    element.encode(&mut out);
    out
}

impl MembershipProof {
    /// Signs a Registration of `element` in `pool_handle` at `timestamp_ms`.
    pub fn sign_registration(
        key: &SigningKey,
        certificate: &MemberCertificate,
        pool_handle: &PoolHandle,
        element: &PoolElement,
        timestamp_ms: u64,
    ) -> Self {
        let signed = proof_signed_bytes(
            super::asap::msg_type::REGISTRATION,
            pool_handle,
            element.pe_identifier,
            &element_bytes(element),
            timestamp_ms,
        );
        Self {
            timestamp_ms,
            signature: key.sign(&signed).to_bytes(),
            certificate: certificate.clone(),
            signed_element: None,
        }
    }

    /// Signs a Deregistration of `pe_identifier` from `pool_handle`.
    pub fn sign_deregistration(
        key: &SigningKey,
        certificate: &MemberCertificate,
        pool_handle: &PoolHandle,
        pe_identifier: u32,
        timestamp_ms: u64,
    ) -> Self {
        let signed = proof_signed_bytes(
            super::asap::msg_type::DEREGISTRATION,
            pool_handle,
            pe_identifier,
            &[],
            timestamp_ms,
        );
        Self {
            timestamp_ms,
            signature: key.sign(&signed).to_bytes(),
            certificate: certificate.clone(),
            signed_element: None,
        }
    }

    /// Checks the certificate against the pool's `authorities` and the
    /// validity at `now` (wall clock since the Unix epoch), then the
    /// member's signature over `message_type`, `pool_handle`,
    /// `pe_identifier` and `element` (the Pool Element a Registration
    /// carries; `None` for a Deregistration). Freshness of the timestamp is
    /// the caller's policy ([`MembershipProof::check_fresh`]).
    pub fn verify(
        &self,
        authorities: &[VerifyingKey],
        message_type: u8,
        pool_handle: &PoolHandle,
        pe_identifier: u32,
        element: Option<&PoolElement>,
        now: Duration,
    ) -> Result<(), MembershipError> {
        let cert = &self.certificate;
        if &cert.pool_handle != pool_handle {
            return Err(MembershipError::WrongPool(cert.pool_handle.to_string()));
        }
        // Several keys of one id cannot pass by accident: the signature
        // decides, the id only saves trying every key.
        if !authorities
            .iter()
            .filter(|key| key_id(key) == cert.authority_key_id)
            .any(|key| cert.verify_signature(key))
        {
            return Err(MembershipError::UnknownAuthority(cert.authority_key_id));
        }
        let now_s = now.as_secs();
        if now_s < cert.not_before || now_s >= cert.not_after {
            return Err(MembershipError::CertificateExpired {
                not_before: cert.not_before,
                not_after: cert.not_after,
                now: now_s,
            });
        }
        let member = VerifyingKey::from_bytes(&cert.member_key)
            .map_err(|_| MembershipError::BadSignature)?;
        let element = element.map(element_bytes).unwrap_or_default();
        let signed = proof_signed_bytes(
            message_type,
            pool_handle,
            pe_identifier,
            &element,
            self.timestamp_ms,
        );
        member
            .verify_strict(&signed, &Signature::from_bytes(&self.signature))
            .map_err(|_| MembershipError::BadSignature)
    }

    /// The timestamp must be within `window` of `now` (either side: clocks
    /// of PE and registrar differ a little).
    pub fn check_fresh(&self, now: Duration, window: Duration) -> Result<(), MembershipError> {
        let now_ms = i128::try_from(now.as_millis()).unwrap_or(i128::MAX);
        let skew = i128::from(self.timestamp_ms) - now_ms;
        let window_ms = i128::try_from(window.as_millis()).unwrap_or(i128::MAX);
        if skew.abs() > window_ms {
            return Err(MembershipError::StaleTimestamp {
                skew_ms: i64::try_from(skew).unwrap_or(i64::MAX),
            });
        }
        Ok(())
    }

    /// Appends the parameter TLV.
    pub fn encode(&self, out: &mut Vec<u8>) {
        super::params::write_tlv(out, PARAM_TYPE, |o| {
            let cert = self.certificate.to_bytes();
            o.extend_from_slice(&self.timestamp_ms.to_be_bytes());
            o.extend_from_slice(&self.signature);
            // A handle of at most 32 bytes (RSPLIB's limit, checked by every
            // decoder) keeps the certificate far below 64 KiB.
            o.extend_from_slice(&(cert.len() as u16).to_be_bytes());
            o.extend_from_slice(&[0, 0]);
            o.extend_from_slice(&cert);
            if let Some(element) = &self.signed_element {
                element.encode(o);
            }
        })
    }

    /// Decodes the parameter value (after the TLV header).
    pub(crate) fn decode_value(
        ctx: &mut super::params::DecodeContext<'_>,
        value: &[u8],
    ) -> Result<Self, DecodeError> {
        if value.len() < PROOF_FIXED_LEN {
            return Err(DecodeError::Truncated {
                what: "membership proof",
            });
        }
        let mut ts = [0; 8];
        ts.copy_from_slice(&value[0..8]);
        let mut signature = [0; 64];
        signature.copy_from_slice(&value[8..72]);
        let cert_len = usize::from(u16::from_be_bytes([value[72], value[73]]));
        let rest = &value[PROOF_FIXED_LEN..];
        if cert_len > rest.len() {
            return Err(DecodeError::Truncated {
                what: "member certificate",
            });
        }
        let certificate =
            MemberCertificate::decode(&rest[..cert_len], ctx.limits.max_pool_handle_len)?;
        // The certificate is not padded inside the value: the signed
        // element, if any, starts right after it.
        let after = &rest[cert_len..];
        let signed_element = if after.is_empty() {
            None
        } else {
            let parameters = ctx.decode_parameters(after)?;
            match <[_; 1]>::try_from(parameters) {
                Ok([super::params::Parameter::PoolElement(pe)]) => Some(pe),
                _ => {
                    return Err(DecodeError::UnexpectedParameter {
                        context: "membership proof",
                        param_type: PARAM_TYPE,
                    });
                }
            }
        };
        Ok(Self {
            timestamp_ms: u64::from_be_bytes(ts),
            signature,
            certificate,
            signed_element,
        })
    }
}

/// Whether `forwarded` (a PE as a home registrar forwards it over ENRP) is
/// what the PE signed as `signed`, up to what the home registrar may change:
/// its own identifier as the home, unspecified addresses (0.0.0.0, ::)
/// replaced by the PE's source address, and an ASAP transport filled in from
/// the registration's association when the PE sent none (RFC 5353 wants
/// one in every Pool Element parameter over ENRP). An ASAP transport the PE
/// did sign cannot be changed.
pub fn forwarded_matches_signed(forwarded: &PoolElement, signed: &PoolElement) -> bool {
    let (f, s) = (&forwarded.user_transport, &signed.user_transport);
    let wildcard = s.addresses.iter().any(|a| a.is_unspecified());
    forwarded.pe_identifier == signed.pe_identifier
        && forwarded.registration_life == signed.registration_life
        && forwarded.policy == signed.policy
        && (signed.asap_transport.is_none() || forwarded.asap_transport == signed.asap_transport)
        && f.kind == s.kind
        && f.port == s.port
        && !f.addresses.is_empty()
        && f.addresses
            .iter()
            .all(|a| s.addresses.contains(a) || wildcard)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rserpool::asap::{Message, msg_type};
    use crate::rserpool::params::{
        Limits, SelectionPolicy, TransportAddress, TransportKind, TransportUse,
        UnknownParameterAction,
    };
    use std::net::{IpAddr, Ipv4Addr};

    fn element(address: Ipv4Addr) -> PoolElement {
        PoolElement {
            pe_identifier: 0x42,
            home_enrp_server_identifier: 0,
            registration_life: 300_000,
            user_transport: TransportAddress {
                kind: TransportKind::Sctp(TransportUse::DataPlusControl),
                port: 4739,
                addresses: vec![IpAddr::V4(address)],
            },
            policy: SelectionPolicy {
                policy_type: 0x4000_0003,
                value: 7u32.to_be_bytes().to_vec(),
            },
            asap_transport: None,
        }
    }

    fn keys() -> (SigningKey, SigningKey) {
        (
            SigningKey::from_bytes(&[1; 32]),
            SigningKey::from_bytes(&[2; 32]),
        )
    }

    #[test]
    fn proof_survives_the_wire_and_verifies() {
        let (authority, member) = keys();
        let handle = PoolHandle::from("billing");
        let cert = MemberCertificate::issue(&authority, &handle, &member.verifying_key(), 10, 20);
        let pe = element(Ipv4Addr::new(192, 0, 2, 1));
        let proof = MembershipProof::sign_registration(&member, &cert, &handle, &pe, 15_000);
        let message = Message::Registration {
            pool_handle: handle.clone(),
            pool_element: pe.clone(),
            membership: Some(Box::new(proof.clone())),
        };
        let decoded = Message::decode(&message.to_bytes()).expect("decodes");
        assert_eq!(decoded, message);
        let now = Duration::from_secs(15);
        let authorities = [authority.verifying_key()];
        assert_eq!(
            proof.verify(
                &authorities,
                msg_type::REGISTRATION,
                &handle,
                0x42,
                Some(&pe),
                now
            ),
            Ok(())
        );
        assert_eq!(proof.check_fresh(now, Duration::from_secs(1)), Ok(()));
        assert!(matches!(
            proof.check_fresh(now + Duration::from_secs(2), Duration::from_secs(1)),
            Err(MembershipError::StaleTimestamp { .. })
        ));
        // Another address in the element: the signature no longer matches.
        assert_eq!(
            proof.verify(
                &authorities,
                msg_type::REGISTRATION,
                &handle,
                0x42,
                Some(&element(Ipv4Addr::new(203, 0, 113, 9))),
                now
            ),
            Err(MembershipError::BadSignature)
        );
    }

    #[test]
    fn forwarded_proof_with_signed_element_round_trips() {
        let (authority, member) = keys();
        let handle = PoolHandle::from("billing");
        let cert = MemberCertificate::issue(&authority, &handle, &member.verifying_key(), 10, 20);
        let signed = element(Ipv4Addr::UNSPECIFIED);
        let mut proof = MembershipProof::sign_registration(&member, &cert, &handle, &signed, 1);
        proof.signed_element = Some(signed.clone());
        let mut bytes = Vec::new();
        proof.encode(&mut bytes);
        let decoded = crate::rserpool::params::Parameter::decode(&bytes).expect("decodes");
        assert_eq!(
            decoded,
            crate::rserpool::params::Parameter::MembershipProof(Box::new(proof))
        );
        // The home registrar filled in the wildcard address: still the same PE.
        let mut forwarded = element(Ipv4Addr::new(192, 0, 2, 1));
        forwarded.home_enrp_server_identifier = 9;
        assert!(forwarded_matches_signed(&forwarded, &signed));
        // ... and the ASAP transport the PE left out, from its association.
        let asap = TransportAddress {
            kind: TransportKind::Sctp(TransportUse::DataPlusControl),
            port: 40_000,
            addresses: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))],
        };
        forwarded.asap_transport = Some(asap.clone());
        assert!(forwarded_matches_signed(&forwarded, &signed));
        // An ASAP transport the PE signed cannot be swapped.
        let mut signed_with_asap = signed.clone();
        signed_with_asap.asap_transport = Some(TransportAddress {
            port: 40_001,
            ..asap
        });
        assert!(!forwarded_matches_signed(&forwarded, &signed_with_asap));
        forwarded.registration_life = -1;
        assert!(!forwarded_matches_signed(&forwarded, &signed));
        // A concrete signed address cannot be swapped.
        assert!(!forwarded_matches_signed(
            &element(Ipv4Addr::new(203, 0, 113, 9)),
            &element(Ipv4Addr::new(192, 0, 2, 1))
        ));
    }

    #[test]
    fn other_implementations_skip_the_parameter() {
        assert_eq!(
            UnknownParameterAction::of_type(PARAM_TYPE),
            UnknownParameterAction::Skip
        );
    }

    #[test]
    fn certificate_text_round_trips_and_garbage_is_refused() {
        let (authority, member) = keys();
        let cert = MemberCertificate::issue(
            &authority,
            &PoolHandle::from("billing"),
            &member.verifying_key(),
            1,
            2,
        );
        let text = cert.to_text();
        assert_eq!(MemberCertificate::from_text(&text, 32), Ok(cert.clone()));
        assert!(cert.verify_signature(&authority.verifying_key()));
        assert!(!cert.verify_signature(&member.verifying_key()));
        assert!(MemberCertificate::from_text("nothing", 32).is_err());
        assert!(MemberCertificate::from_text(&text, 3).is_err());
        // Truncated proofs are decode errors, never panics.
        let mut bytes = Vec::new();
        MembershipProof::sign_deregistration(&member, &cert, &"billing".into(), 1, 1)
            .encode(&mut bytes);
        let limits = Limits::default();
        for cut in 4..bytes.len() {
            let mut short = bytes[..cut].to_vec();
            let length = u16::try_from(cut).unwrap().to_be_bytes();
            short[2..4].copy_from_slice(&length);
            let _ = crate::rserpool::params::Parameter::decode_with(&short, &limits);
        }
    }
}

#[cfg(test)]
mod table_tests {
    use super::*;
    use crate::rserpool::enrp::{Body, Message, PoolEntry};
    use crate::rserpool::params::{SelectionPolicy, TransportAddress, TransportKind};
    use std::net::{IpAddr, Ipv4Addr};

    fn element(id: u32) -> PoolElement {
        PoolElement {
            pe_identifier: id,
            home_enrp_server_identifier: 5,
            registration_life: -1,
            user_transport: TransportAddress {
                kind: TransportKind::Udp,
                port: 4739,
                addresses: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))],
            },
            policy: SelectionPolicy {
                policy_type: 1,
                value: Vec::new(),
            },
            asap_transport: None,
        }
    }

    #[test]
    fn handle_table_proofs_stay_with_their_pool_elements() {
        let (authority, member) = (
            SigningKey::from_bytes(&[1; 32]),
            SigningKey::from_bytes(&[2; 32]),
        );
        let handle = PoolHandle::from("billing");
        let cert = MemberCertificate::issue(&authority, &handle, &member.verifying_key(), 1, 2);
        let mut proof = MembershipProof::sign_registration(&member, &cert, &handle, &element(2), 1);
        proof.signed_element = Some(element(2));
        // PE 1 without a proof, PE 2 with one, PE 3 without.
        let message = Message {
            sender_server_id: 5,
            receiver_server_id: 6,
            body: Body::HandleTableResponse {
                reject: false,
                more_to_send: false,
                pool_entries: vec![PoolEntry {
                    pool_handle: handle.clone(),
                    pool_elements: vec![element(1), element(2), element(3)],
                    memberships: vec![None, Some(Box::new(proof))],
                }],
            },
        };
        assert_eq!(Message::decode(&message.to_bytes()), Ok(message));

        // A proof with no PE before it is out of place.
        let mut bytes = Message {
            sender_server_id: 5,
            receiver_server_id: 6,
            body: Body::HandleTableResponse {
                reject: false,
                more_to_send: false,
                pool_entries: Vec::new(),
            },
        }
        .to_bytes();
        handle.encode(&mut bytes);
        MembershipProof::sign_deregistration(&member, &cert, &handle, 1, 1).encode(&mut bytes);
        let length = u16::try_from(bytes.len()).unwrap().to_be_bytes();
        bytes[2..4].copy_from_slice(&length);
        assert!(matches!(
            Message::decode(&bytes),
            Err(DecodeError::UnexpectedParameter { .. })
        ));
    }
}
