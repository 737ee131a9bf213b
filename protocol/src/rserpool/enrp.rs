//! ENRP, the Endpoint haNdlespace Redundancy Protocol (RFC 5353 §2).
//!
//! Every message is the 4-byte header of ASAP (type, flags, length of the
//! whole message) followed by the sending and receiving server identifiers
//! (32 bits each; receiver 0 when not known, e.g. on multicast) and then
//! message-specific fields and RFC 5354 parameters. On SCTP, ENRP uses PPID
//! [`super::ENRP_SCTP_PPID`] and port [`super::ENRP_PORT`].

use super::membership::MembershipProof;
use super::params::{
    DecodeContext, DecodeError, EncodeError, Limits, OperationError, Parameter, ParameterBag,
    PoolElement, PoolHandle, ServerInformation, read_u16, read_u32,
};
use super::{Decoded, split_message, write_message};

/// ENRP message type numbers (RFC 5353 §2, IANA "ENRP Message Types").
pub mod msg_type {
    /// ENRP_PRESENCE.
    pub const PRESENCE: u8 = 0x01;
    /// ENRP_HANDLE_TABLE_REQUEST.
    pub const HANDLE_TABLE_REQUEST: u8 = 0x02;
    /// ENRP_HANDLE_TABLE_RESPONSE.
    pub const HANDLE_TABLE_RESPONSE: u8 = 0x03;
    /// ENRP_HANDLE_UPDATE.
    pub const HANDLE_UPDATE: u8 = 0x04;
    /// ENRP_LIST_REQUEST.
    pub const LIST_REQUEST: u8 = 0x05;
    /// ENRP_LIST_RESPONSE.
    pub const LIST_RESPONSE: u8 = 0x06;
    /// ENRP_INIT_TAKEOVER.
    pub const INIT_TAKEOVER: u8 = 0x07;
    /// ENRP_INIT_TAKEOVER_ACK.
    pub const INIT_TAKEOVER_ACK: u8 = 0x08;
    /// ENRP_TAKEOVER_SERVER.
    pub const TAKEOVER_SERVER: u8 = 0x09;
    /// ENRP_ERROR.
    pub const ERROR: u8 = 0x0a;
}

/// Flag bits (RFC 5353 §2; bit masks as Wireshark and RSPLIB use them).
pub mod flags {
    /// R bit of Presence: the receiver must answer with a Presence
    /// (RFC 5353 §2.1).
    pub const PRESENCE_REPLY_REQUIRED: u8 = 0x01;
    /// W bit of Handle Table Request: only the PEs the receiver is home for
    /// (RFC 5353 §2.2).
    pub const OWN_CHILDREN_ONLY: u8 = 0x01;
    /// R bit of Handle Table Response: request rejected (RFC 5353 §2.3).
    pub const HANDLE_TABLE_RESPONSE_REJECT: u8 = 0x01;
    /// M bit of Handle Table Response: more to send, ask again
    /// (RFC 5353 §2.3).
    pub const HANDLE_TABLE_RESPONSE_MORE_TO_SEND: u8 = 0x02;
    /// T bit of Handle Update: takeover suggested
    /// (draft-dreibholz-rserpool-enrp-takeover; Wireshark `enrp.t_bit`).
    pub const HANDLE_UPDATE_TAKEOVER_SUGGESTED: u8 = 0x01;
    /// R bit of List Response: request rejected (RFC 5353 §2.6).
    pub const LIST_RESPONSE_REJECT: u8 = 0x01;
}

/// Update Action of a Handle Update (RFC 5353 §2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpdateAction {
    /// 0x0000: add (or refresh) the PE.
    AddPe,
    /// 0x0001: delete the PE.
    DeletePe,
}

impl UpdateAction {
    fn to_wire(self) -> u16 {
        match self {
            Self::AddPe => 0,
            Self::DeletePe => 1,
        }
    }
}

/// One entry of a Handle Table Response: a pool handle and the PEs under it
/// (RFC 5353 §2.3: a Pool Handle parameter followed by Pool Element
/// parameters).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolEntry {
    /// The pool.
    pub pool_handle: PoolHandle,
    /// Its PEs (at least one on the wire).
    pub pool_elements: Vec<PoolElement>,
    /// Membership proofs of closed pools, by position: the proof of
    /// `pool_elements[i]` follows that PE on the wire (poolflow extension,
    /// skipped by other servers). Shorter than `pool_elements` (or empty)
    /// where PEs have none.
    pub memberships: Vec<Option<Box<MembershipProof>>>,
}

/// An ENRP message: the server identifiers every message carries and the
/// type-specific body.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Message {
    /// Sending server's identifier.
    pub sender_server_id: u32,
    /// Receiving server's identifier (0 if unknown, e.g. multicast).
    pub receiver_server_id: u32,
    /// What the message says.
    pub body: Body,
}

/// The type-specific part of an ENRP message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Body {
    /// Heartbeat and handlespace checksum (RFC 5353 §2.1).
    Presence {
        /// R flag: answer with a Presence.
        reply_required: bool,
        /// PE Checksum parameter: checksum of the PEs the sender owns.
        pe_checksum: u16,
        /// The sender's Server Information (optional).
        server_information: Option<ServerInformation>,
    },
    /// Ask a peer for its handlespace (RFC 5353 §2.2).
    HandleTableRequest {
        /// W flag: only the PEs the receiver is home for.
        own_children_only: bool,
    },
    /// Handlespace data (RFC 5353 §2.3).
    HandleTableResponse {
        /// R flag: request rejected.
        reject: bool,
        /// M flag: more entries follow in further responses.
        more_to_send: bool,
        /// Pools and their PEs.
        pool_entries: Vec<PoolEntry>,
    },
    /// A PE was added or removed (RFC 5353 §2.4).
    HandleUpdate {
        /// T flag (takeover suggested, draft-dreibholz-rserpool-enrp-takeover).
        takeover_suggested: bool,
        /// Add or delete.
        action: UpdateAction,
        /// Pool of the PE.
        pool_handle: PoolHandle,
        /// The PE.
        pool_element: PoolElement,
        /// The PE's membership proof with the element as it signed it, for
        /// closed pools (poolflow extension, skipped by other servers).
        membership: Option<Box<MembershipProof>>,
    },
    /// Ask a peer for its peer list (RFC 5353 §2.5).
    ListRequest,
    /// The peer list (RFC 5353 §2.6).
    ListResponse {
        /// R flag: request rejected.
        reject: bool,
        /// Known ENRP servers.
        servers: Vec<ServerInformation>,
    },
    /// Start taking over a dead peer's PEs (RFC 5353 §2.7).
    InitTakeover {
        /// The dead server.
        target_server_id: u32,
    },
    /// Consent to a takeover (RFC 5353 §2.8).
    InitTakeoverAck {
        /// The dead server.
        target_server_id: u32,
    },
    /// The takeover is done (RFC 5353 §2.9).
    TakeoverServer {
        /// The dead server.
        target_server_id: u32,
    },
    /// An operation failed (RFC 5353 §2.10).
    Error {
        /// The causes.
        error: OperationError,
    },
}

impl Message {
    /// Wire type of this message.
    pub fn message_type(&self) -> u8 {
        match self.body {
            Body::Presence { .. } => msg_type::PRESENCE,
            Body::HandleTableRequest { .. } => msg_type::HANDLE_TABLE_REQUEST,
            Body::HandleTableResponse { .. } => msg_type::HANDLE_TABLE_RESPONSE,
            Body::HandleUpdate { .. } => msg_type::HANDLE_UPDATE,
            Body::ListRequest => msg_type::LIST_REQUEST,
            Body::ListResponse { .. } => msg_type::LIST_RESPONSE,
            Body::InitTakeover { .. } => msg_type::INIT_TAKEOVER,
            Body::InitTakeoverAck { .. } => msg_type::INIT_TAKEOVER_ACK,
            Body::TakeoverServer { .. } => msg_type::TAKEOVER_SERVER,
            Body::Error { .. } => msg_type::ERROR,
        }
    }

    fn flags(&self) -> u8 {
        let bit = |set: bool, mask: u8| if set { mask } else { 0 };
        match self.body {
            Body::Presence { reply_required, .. } => {
                bit(reply_required, flags::PRESENCE_REPLY_REQUIRED)
            }
            Body::HandleTableRequest { own_children_only } => {
                bit(own_children_only, flags::OWN_CHILDREN_ONLY)
            }
            Body::HandleTableResponse {
                reject,
                more_to_send,
                ..
            } => {
                bit(reject, flags::HANDLE_TABLE_RESPONSE_REJECT)
                    | bit(more_to_send, flags::HANDLE_TABLE_RESPONSE_MORE_TO_SEND)
            }
            Body::HandleUpdate {
                takeover_suggested, ..
            } => bit(takeover_suggested, flags::HANDLE_UPDATE_TAKEOVER_SUGGESTED),
            Body::ListResponse { reject, .. } => bit(reject, flags::LIST_RESPONSE_REJECT),
            _ => 0,
        }
    }

    /// Appends the encoded message to `out`.
    ///
    /// # Panics
    /// If the message exceeds 65535 bytes (a handle table response with too
    /// many entries); use [`Message::try_encode`] when that can happen.
    pub fn encode(&self, out: &mut Vec<u8>) {
        if let Err(error) = self.try_encode(out) {
            panic!("ENRP message cannot be encoded: {error}");
        }
    }

    /// Appends the encoded message to `out`, or fails (leaving `out`
    /// unchanged) if it exceeds 65535 bytes.
    pub fn try_encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        write_message(out, self.message_type(), self.flags(), |o| {
            o.extend_from_slice(&self.sender_server_id.to_be_bytes());
            o.extend_from_slice(&self.receiver_server_id.to_be_bytes());
            self.write_body(o);
        })
    }

    /// The encoded message as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    fn write_body(&self, o: &mut Vec<u8>) {
        match &self.body {
            Body::Presence {
                pe_checksum,
                server_information,
                ..
            } => {
                Parameter::PeChecksum(*pe_checksum).encode(o);
                if let Some(info) = server_information {
                    info.encode(o);
                }
            }
            Body::HandleTableRequest { .. } | Body::ListRequest => {}
            Body::HandleTableResponse { pool_entries, .. } => {
                for entry in pool_entries {
                    entry.pool_handle.encode(o);
                    for (index, pe) in entry.pool_elements.iter().enumerate() {
                        pe.encode(o);
                        if let Some(Some(proof)) = entry.memberships.get(index) {
                            proof.encode(o);
                        }
                    }
                }
            }
            Body::HandleUpdate {
                action,
                pool_handle,
                pool_element,
                membership,
                ..
            } => {
                o.extend_from_slice(&action.to_wire().to_be_bytes());
                o.extend_from_slice(&[0, 0]); // reserved
                pool_handle.encode(o);
                pool_element.encode(o);
                if let Some(proof) = membership {
                    proof.encode(o);
                }
            }
            Body::ListResponse { servers, .. } => {
                for server in servers {
                    server.encode(o);
                }
            }
            Body::InitTakeover { target_server_id }
            | Body::InitTakeoverAck { target_server_id }
            | Body::TakeoverServer { target_server_id } => {
                o.extend_from_slice(&target_server_id.to_be_bytes());
            }
            Body::Error { error } => error.encode(o),
        }
    }

    /// Decodes one complete message with default [`Limits`]. Skipped
    /// unknown parameters are dropped; use [`Message::decode_with`] to get
    /// them for reporting.
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        Self::decode_with(bytes, &Limits::default()).map(|decoded| decoded.message)
    }

    /// Decodes one complete message (trailing padding allowed) under
    /// `limits`, returning the skipped unknown parameters too.
    pub fn decode_with(bytes: &[u8], limits: &Limits) -> Result<Decoded<Message>, DecodeError> {
        let (message_type, flag_bits, body) = split_message(bytes, limits)?;
        let context = message_name(message_type)?;
        let (body, sender_server_id) = read_u32(body, "sending server's ID")?;
        let (mut body, receiver_server_id) = read_u32(body, "receiving server's ID")?;
        let flag = |mask: u8| flag_bits & mask != 0;

        // Fixed fields between the server IDs and the parameters.
        let mut target_server_id = 0;
        let mut update_action = UpdateAction::AddPe;
        match message_type {
            msg_type::INIT_TAKEOVER | msg_type::INIT_TAKEOVER_ACK | msg_type::TAKEOVER_SERVER => {
                let (rest, target) = read_u32(body, "target server's ID")?;
                body = rest;
                target_server_id = target;
            }
            msg_type::HANDLE_UPDATE => {
                let (rest, action) = read_u16(body, "update action")?;
                let (rest, _reserved) = read_u16(rest, "reserved")?;
                body = rest;
                update_action = match action {
                    0 => UpdateAction::AddPe,
                    1 => UpdateAction::DeletePe,
                    other => {
                        return Err(DecodeError::InvalidValue {
                            what: "update action",
                            value: u32::from(other),
                        });
                    }
                };
            }
            _ => {}
        }

        let mut ctx = DecodeContext::new(limits);
        let parameters = ctx.decode_parameters(body)?;
        let body = if message_type == msg_type::HANDLE_TABLE_RESPONSE {
            Body::HandleTableResponse {
                reject: flag(flags::HANDLE_TABLE_RESPONSE_REJECT),
                more_to_send: flag(flags::HANDLE_TABLE_RESPONSE_MORE_TO_SEND),
                pool_entries: group_pool_entries(context, parameters)?,
            }
        } else {
            let mut bag = ParameterBag::new(context, parameters);
            let body = match message_type {
                msg_type::PRESENCE => Body::Presence {
                    reply_required: flag(flags::PRESENCE_REPLY_REQUIRED),
                    pe_checksum: bag.pe_checksum()?,
                    server_information: bag.optional_server_information(),
                },
                msg_type::HANDLE_TABLE_REQUEST => Body::HandleTableRequest {
                    own_children_only: flag(flags::OWN_CHILDREN_ONLY),
                },
                msg_type::HANDLE_UPDATE => Body::HandleUpdate {
                    takeover_suggested: flag(flags::HANDLE_UPDATE_TAKEOVER_SUGGESTED),
                    action: update_action,
                    pool_handle: bag.pool_handle()?,
                    pool_element: bag.pool_element()?,
                    membership: bag.optional_membership(),
                },
                msg_type::LIST_REQUEST => Body::ListRequest,
                msg_type::LIST_RESPONSE => Body::ListResponse {
                    reject: flag(flags::LIST_RESPONSE_REJECT),
                    servers: bag.all_server_information(),
                },
                msg_type::INIT_TAKEOVER => Body::InitTakeover { target_server_id },
                msg_type::INIT_TAKEOVER_ACK => Body::InitTakeoverAck { target_server_id },
                msg_type::TAKEOVER_SERVER => Body::TakeoverServer { target_server_id },
                _ => Body::Error {
                    error: bag.operation_error()?,
                },
            };
            bag.finish()?;
            body
        };
        Ok(Decoded {
            message: Message {
                sender_server_id,
                receiver_server_id,
                body,
            },
            unrecognized: ctx.unrecognized,
        })
    }
}

/// Groups a Handle Table Response's parameters: each Pool Handle starts an
/// entry, the Pool Elements after it belong to it (RFC 5353 §2.3).
fn group_pool_entries(
    context: &'static str,
    parameters: Vec<Parameter>,
) -> Result<Vec<PoolEntry>, DecodeError> {
    let mut entries: Vec<PoolEntry> = Vec::new();
    for parameter in parameters {
        match parameter {
            Parameter::PoolHandle(pool_handle) => entries.push(PoolEntry {
                pool_handle,
                pool_elements: Vec::new(),
                memberships: Vec::new(),
            }),
            // A proof belongs to the PE right before it, which has no proof yet.
            Parameter::MembershipProof(proof) => match entries.last_mut() {
                Some(entry)
                    if !entry.pool_elements.is_empty()
                        && entry.memberships.len() < entry.pool_elements.len() =>
                {
                    entry
                        .memberships
                        .resize(entry.pool_elements.len() - 1, None);
                    entry.memberships.push(Some(proof));
                }
                _ => {
                    return Err(DecodeError::UnexpectedParameter {
                        context,
                        param_type: super::params::param_type::MEMBERSHIP_PROOF,
                    });
                }
            },
            Parameter::PoolElement(pe) => match entries.last_mut() {
                Some(entry) => entry.pool_elements.push(pe),
                None => {
                    return Err(DecodeError::MissingParameter {
                        context,
                        parameter: "pool handle before pool element",
                    });
                }
            },
            other => {
                return Err(DecodeError::UnexpectedParameter {
                    context,
                    param_type: other.param_type(),
                });
            }
        }
    }
    Ok(entries)
}

/// Name of a message type for error reports; unknown types are an error.
fn message_name(message_type: u8) -> Result<&'static str, DecodeError> {
    Ok(match message_type {
        msg_type::PRESENCE => "ENRP Presence",
        msg_type::HANDLE_TABLE_REQUEST => "ENRP Handle Table Request",
        msg_type::HANDLE_TABLE_RESPONSE => "ENRP Handle Table Response",
        msg_type::HANDLE_UPDATE => "ENRP Handle Update",
        msg_type::LIST_REQUEST => "ENRP List Request",
        msg_type::LIST_RESPONSE => "ENRP List Response",
        msg_type::INIT_TAKEOVER => "ENRP Init Takeover",
        msg_type::INIT_TAKEOVER_ACK => "ENRP Init Takeover Ack",
        msg_type::TAKEOVER_SERVER => "ENRP Takeover Server",
        msg_type::ERROR => "ENRP Error",
        other => return Err(DecodeError::UnknownMessageType(other)),
    })
}

/// Message authentication for ENRP between registrars of one pool (our
/// answer to the peer-impersonation and replay threats of RFC 5355 §2;
/// design and rationale in `docs/enrp-security.md`).
///
/// A signed message ends with one extra parameter:
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |   Type = 0xBF01               |         Length = 48           |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                        Key Identifier                         |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |        Sequence (64 bits: microseconds since the Unix         |
/// |        epoch at sending, strictly increasing per sender)      |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                  HMAC-SHA-256 (32 bytes)                      |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
///
/// The HMAC covers the whole message as sent (header with the final
/// length, both server identifiers, every parameter, and this parameter
/// with the HMAC field zeroed). The type's two high bits are `10`
/// (RFC 5354 §2: skip the parameter, continue processing, do not report),
/// so a decoder that does not know it — Wireshark, RSPLIB, an unkeyed
/// poolflow registrar — reads the rest of the message unchanged. The value
/// 0xBF01 is not IANA-assigned (experimental, poolflow-local).
pub mod auth {
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    type HmacSha256 = Hmac<Sha256>;

    /// Parameter type of the authentication parameter (action bits `10`).
    pub const PARAM_TYPE: u16 = 0xBF01;
    /// Length of the parameter, header included (a multiple of 4: no padding).
    pub const PARAM_LEN: usize = 48;
    const MAC_OFFSET: usize = 16;

    /// What a valid signature vouches for.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Signed {
        /// The key that signed.
        pub key_id: u32,
        /// The sender's sequence (its clock in µs, strictly increasing).
        pub sequence: u64,
        /// The sending server's identifier, from the (signed) header.
        pub sender_server_id: u32,
    }

    /// Why a message was not accepted as signed.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
    pub enum AuthError {
        /// No authentication parameter at the end of the message.
        #[error("no authentication parameter")]
        Missing,
        /// Signed with a key identifier we do not have.
        #[error("unknown key identifier {0}")]
        UnknownKey(u32),
        /// The HMAC does not match: forged, altered, or another key.
        #[error("bad HMAC")]
        BadMac,
        /// Adding the parameter would exceed the 16-bit message length.
        #[error("message too long to sign")]
        TooLong,
    }

    impl AuthError {
        /// Metric label.
        pub fn reason(&self) -> &'static str {
            match self {
                Self::Missing => "unsigned",
                Self::UnknownKey(_) => "unknown_key",
                Self::BadMac => "bad_mac",
                Self::TooLong => "too_long",
            }
        }
    }

    fn mac(key: &[u8], message: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(message);
        mac
    }

    /// Appends the authentication parameter to the encoded ENRP `message`
    /// (one complete message, nothing after it) and fixes its length.
    pub fn sign(
        message: &mut Vec<u8>,
        key_id: u32,
        key: &[u8],
        sequence: u64,
    ) -> Result<(), AuthError> {
        let length = message.len() + PARAM_LEN;
        let length_field = u16::try_from(length).map_err(|_| AuthError::TooLong)?;
        if message.len() < super::super::MESSAGE_HEADER_LEN {
            return Err(AuthError::Missing);
        }
        message.extend_from_slice(&PARAM_TYPE.to_be_bytes());
        message.extend_from_slice(&(PARAM_LEN as u16).to_be_bytes());
        message.extend_from_slice(&key_id.to_be_bytes());
        message.extend_from_slice(&sequence.to_be_bytes());
        message.extend_from_slice(&[0; 32]);
        message[2..4].copy_from_slice(&length_field.to_be_bytes());
        let tag = mac(key, message).finalize().into_bytes();
        let at = message.len() - PARAM_LEN + MAC_OFFSET;
        message[at..].copy_from_slice(&tag);
        Ok(())
    }

    /// Checks the authentication parameter at the end of `message` against
    /// `keys` (identifier, key). Freshness and replay are the caller's: it
    /// gets the signed sequence and sender.
    pub fn verify(message: &[u8], keys: &[(u32, &[u8])]) -> Result<Signed, AuthError> {
        // The header's length, not the buffer's: trailing padding is allowed.
        let Some(length) = super::super::message_length(message) else {
            return Err(AuthError::Missing);
        };
        if length > message.len() || length < 12 + PARAM_LEN {
            return Err(AuthError::Missing);
        }
        let message = &message[..length];
        let param = &message[length - PARAM_LEN..];
        if u16::from_be_bytes([param[0], param[1]]) != PARAM_TYPE
            || usize::from(u16::from_be_bytes([param[2], param[3]])) != PARAM_LEN
        {
            return Err(AuthError::Missing);
        }
        let key_id = u32::from_be_bytes(param[4..8].try_into().expect("4 bytes"));
        let sequence = u64::from_be_bytes(param[8..16].try_into().expect("8 bytes"));
        let Some((_, key)) = keys.iter().find(|(id, _)| *id == key_id) else {
            return Err(AuthError::UnknownKey(key_id));
        };
        let mac_at = length - PARAM_LEN + MAC_OFFSET;
        let mut check = mac(key, &message[..mac_at]);
        check.update(&[0; 32]);
        check
            .verify_slice(&message[mac_at..])
            .map_err(|_| AuthError::BadMac)?;
        Ok(Signed {
            key_id,
            sequence,
            sender_server_id: u32::from_be_bytes(message[4..8].try_into().expect("4 bytes")),
        })
    }
}

#[cfg(test)]
mod auth_tests {
    use super::auth::{self, AuthError, PARAM_LEN, PARAM_TYPE};
    use super::{Body, Message};
    use crate::rserpool::params::UnknownParameterAction;

    const KEY: &[u8] = b"registrar pool key";

    fn presence() -> Message {
        Message {
            sender_server_id: 0x0a01,
            receiver_server_id: 0x0b02,
            body: Body::Presence {
                reply_required: false,
                pe_checksum: 0x1234,
                server_information: None,
            },
        }
    }

    fn signed() -> Vec<u8> {
        let mut bytes = presence().to_bytes();
        auth::sign(&mut bytes, 7, KEY, 1_700_000_000_000_000).unwrap();
        bytes
    }

    #[test]
    fn signed_message_verifies_and_still_decodes() {
        let bytes = signed();
        assert_eq!(bytes.len(), presence().to_bytes().len() + PARAM_LEN);
        assert_eq!(
            usize::from(u16::from_be_bytes([bytes[2], bytes[3]])),
            bytes.len()
        );
        let signed = auth::verify(&bytes, &[(7, KEY)]).unwrap();
        assert_eq!(signed.key_id, 7);
        assert_eq!(signed.sequence, 1_700_000_000_000_000);
        assert_eq!(signed.sender_server_id, 0x0a01);
        // A decoder that does not know the parameter skips it silently.
        assert_eq!(
            UnknownParameterAction::of_type(PARAM_TYPE),
            UnknownParameterAction::Skip
        );
        let decoded = Message::decode_with(&bytes, &Default::default()).unwrap();
        assert_eq!(decoded.message, presence());
        assert_eq!(decoded.unrecognized.len(), 1);
        assert!(decoded.report_causes().is_empty());
    }

    #[test]
    fn any_changed_bit_breaks_the_signature() {
        let bytes = signed();
        for at in 0..bytes.len() {
            let mut forged = bytes.clone();
            forged[at] ^= 0x01;
            assert!(
                auth::verify(&forged, &[(7, KEY)]).is_err(),
                "flipped bit in byte {at} went unnoticed"
            );
        }
    }

    #[test]
    fn unsigned_wrong_key_and_unknown_key_are_refused() {
        let unsigned = presence().to_bytes();
        assert_eq!(
            auth::verify(&unsigned, &[(7, KEY)]),
            Err(AuthError::Missing)
        );
        let bytes = signed();
        assert_eq!(
            auth::verify(&bytes, &[(7, b"another key".as_slice())]),
            Err(AuthError::BadMac)
        );
        assert_eq!(
            auth::verify(&bytes, &[(8, KEY)]),
            Err(AuthError::UnknownKey(7))
        );
        // Of several keys, the one named by the identifier is used.
        assert!(auth::verify(&bytes, &[(1, b"old".as_slice()), (7, KEY)]).is_ok());
        // Truncations never panic and never verify.
        for len in 0..bytes.len() {
            assert!(auth::verify(&bytes[..len], &[(7, KEY)]).is_err());
        }
    }
}
