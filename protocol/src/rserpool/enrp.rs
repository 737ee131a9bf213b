//! ENRP, the Endpoint haNdlespace Redundancy Protocol (RFC 5353 §2).
//!
//! Every message is the 4-byte header of ASAP (type, flags, length of the
//! whole message) followed by the sending and receiving server identifiers
//! (32 bits each; receiver 0 when not known, e.g. on multicast) and then
//! message-specific fields and RFC 5354 parameters. On SCTP, ENRP uses PPID
//! [`super::ENRP_SCTP_PPID`] and port [`super::ENRP_PORT`].

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
                    for pe in &entry.pool_elements {
                        pe.encode(o);
                    }
                }
            }
            Body::HandleUpdate {
                action,
                pool_handle,
                pool_element,
                ..
            } => {
                o.extend_from_slice(&action.to_wire().to_be_bytes());
                o.extend_from_slice(&[0, 0]); // reserved
                pool_handle.encode(o);
                pool_element.encode(o);
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
            }),
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
