//! ASAP, the Aggregate Server Access Protocol (RFC 5352 §2.2).
//!
//! Every message is a 4-byte header — type (u8), flags (u8), length (u16,
//! the whole message including the header) — followed by RFC 5354
//! parameters; Endpoint Keep Alive and Server Announce carry a 32-bit server
//! identifier between header and parameters. On SCTP, ASAP uses PPID
//! [`super::ASAP_SCTP_PPID`] and port [`super::ASAP_PORT`].

use super::membership::MembershipProof;
use super::params::{
    DecodeContext, DecodeError, EncodeError, Limits, OperationError, ParameterBag, PoolElement,
    PoolHandle, SelectionPolicy, TransportAddress, read_u32,
};
use super::{Decoded, split_message, write_message};

/// ASAP message type numbers (RFC 5352 §2.2, IANA "ASAP Message Types").
pub mod msg_type {
    /// ASAP_REGISTRATION.
    pub const REGISTRATION: u8 = 0x01;
    /// ASAP_DEREGISTRATION.
    pub const DEREGISTRATION: u8 = 0x02;
    /// ASAP_REGISTRATION_RESPONSE.
    pub const REGISTRATION_RESPONSE: u8 = 0x03;
    /// ASAP_DEREGISTRATION_RESPONSE.
    pub const DEREGISTRATION_RESPONSE: u8 = 0x04;
    /// ASAP_HANDLE_RESOLUTION.
    pub const HANDLE_RESOLUTION: u8 = 0x05;
    /// ASAP_HANDLE_RESOLUTION_RESPONSE.
    pub const HANDLE_RESOLUTION_RESPONSE: u8 = 0x06;
    /// ASAP_ENDPOINT_KEEP_ALIVE.
    pub const ENDPOINT_KEEP_ALIVE: u8 = 0x07;
    /// ASAP_ENDPOINT_KEEP_ALIVE_ACK.
    pub const ENDPOINT_KEEP_ALIVE_ACK: u8 = 0x08;
    /// ASAP_ENDPOINT_UNREACHABLE.
    pub const ENDPOINT_UNREACHABLE: u8 = 0x09;
    /// ASAP_SERVER_ANNOUNCE.
    pub const SERVER_ANNOUNCE: u8 = 0x0a;
    /// ASAP_COOKIE.
    pub const COOKIE: u8 = 0x0b;
    /// ASAP_COOKIE_ECHO.
    pub const COOKIE_ECHO: u8 = 0x0c;
    /// ASAP_BUSINESS_CARD.
    pub const BUSINESS_CARD: u8 = 0x0d;
    /// ASAP_ERROR.
    pub const ERROR: u8 = 0x0e;
}

/// Flag bits. Bits not defined for a message type are sent as 0 and ignored
/// on receipt.
pub mod flags {
    /// R bit of Registration Response: the registration was rejected
    /// (RFC 5352 §2.2.3; Wireshark `asap.r_bit`).
    pub const REGISTRATION_REJECT: u8 = 0x01;
    /// Reject bit of Handle Resolution Response, as RSPLIB and RSPSIM define
    /// it (`AHF_HANDLE_RESOLUTION_REJECT`); Wireshark 4.0 does not dissect a
    /// flag for this message.
    pub const HANDLE_RESOLUTION_REJECT: u8 = 0x01;
    /// H bit of Endpoint Keep Alive: the sender wants to become the PE's new
    /// home ENRP server (RFC 5352 §2.2.7; Wireshark `asap.h_bit`).
    pub const KEEP_ALIVE_HOME: u8 = 0x01;
}

/// An ASAP message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Message {
    /// PE → home registrar: register (or re-register) a PE in a pool
    /// (RFC 5352 §2.2.1).
    Registration {
        /// Pool to join.
        pool_handle: PoolHandle,
        /// The PE with its transports and policy.
        pool_element: PoolElement,
        /// Proof that the PE is a member of the pool (poolflow extension,
        /// skipped by registrars that do not know it).
        membership: Option<Box<MembershipProof>>,
    },
    /// PE → registrar: leave the pool (RFC 5352 §2.2.2).
    Deregistration {
        /// Pool to leave.
        pool_handle: PoolHandle,
        /// The leaving PE.
        pe_identifier: u32,
        /// Proof that the PE is a member of the pool (as for Registration).
        membership: Option<Box<MembershipProof>>,
    },
    /// Registrar → PE: outcome of a Registration (RFC 5352 §2.2.3).
    RegistrationResponse {
        /// R flag: the registration was rejected.
        reject: bool,
        /// Pool of the registration.
        pool_handle: PoolHandle,
        /// The registered PE.
        pe_identifier: u32,
        /// Why it was rejected (optional).
        error: Option<OperationError>,
    },
    /// Registrar → PE: outcome of a Deregistration (RFC 5352 §2.2.4).
    DeregistrationResponse {
        /// Pool of the deregistration.
        pool_handle: PoolHandle,
        /// The deregistered PE.
        pe_identifier: u32,
        /// Why it failed (optional).
        error: Option<OperationError>,
    },
    /// PU → registrar: which PEs serve this pool? (RFC 5352 §2.2.5).
    HandleResolution {
        /// Pool to resolve.
        pool_handle: PoolHandle,
        /// Handle Resolution option: how many PEs are wanted
        /// (draft-dreibholz-rserpool-asap-hropt; 0xffffffff for all).
        items: Option<u32>,
    },
    /// Registrar → PU: the pool's PEs (RFC 5352 §2.2.6).
    HandleResolutionResponse {
        /// Resolution refused (RSPLIB's reject bit, bit 0 of the flags).
        reject: bool,
        /// The resolved pool.
        pool_handle: PoolHandle,
        /// The pool's overall selection policy (optional).
        policy: Option<SelectionPolicy>,
        /// Selected PEs, in the registrar's order.
        pool_elements: Vec<PoolElement>,
        /// Why the resolution failed, e.g. Unknown Pool Handle (optional).
        error: Option<OperationError>,
    },
    /// Registrar → PE: are you alive? (RFC 5352 §2.2.7).
    EndpointKeepAlive {
        /// H flag: the sender wants to be the PE's new home registrar.
        home: bool,
        /// The sending registrar's server identifier.
        server_identifier: u32,
        /// Pool of the PE.
        pool_handle: PoolHandle,
        /// The PE addressed. Not in RFC 5352's message layout; RSPLIB sends
        /// it as an extra parameter so a PE registered under several
        /// identifiers knows which one is meant.
        pe_identifier: Option<u32>,
    },
    /// PE → registrar: alive (RFC 5352 §2.2.8).
    EndpointKeepAliveAck {
        /// Pool of the PE.
        pool_handle: PoolHandle,
        /// The answering PE.
        pe_identifier: u32,
    },
    /// PU → registrar: this PE did not answer (RFC 5352 §2.2.9).
    EndpointUnreachable {
        /// Pool of the PE.
        pool_handle: PoolHandle,
        /// The unreachable PE.
        pe_identifier: u32,
    },
    /// Registrar → multicast: here I am (RFC 5352 §2.2.10).
    ServerAnnounce {
        /// The registrar's server identifier.
        server_identifier: u32,
        /// Where to reach it; empty means "the announcement's source".
        transports: Vec<TransportAddress>,
    },
    /// PE → PU: state to hand to the next PE on failover (RFC 5352 §2.2.11).
    Cookie {
        /// Opaque cookie bytes.
        cookie: Vec<u8>,
    },
    /// PU → new PE: the last cookie received (RFC 5352 §2.2.12).
    CookieEcho {
        /// The cookie as received.
        cookie: Vec<u8>,
    },
    /// PU ↔ PE: the sender's pool and its failover candidates
    /// (RFC 5352 §2.2.13).
    BusinessCard {
        /// The sender's pool.
        pool_handle: PoolHandle,
        /// Overall selection policy (optional; RSPLIB sends one).
        policy: Option<SelectionPolicy>,
        /// PEs to fail over to, in preference order.
        pool_elements: Vec<PoolElement>,
    },
    /// Any direction: an operation failed (RFC 5352 §2.2.14).
    Error {
        /// The causes.
        error: OperationError,
    },
}

impl Message {
    /// Wire type of this message.
    pub fn message_type(&self) -> u8 {
        match self {
            Self::Registration { .. } => msg_type::REGISTRATION,
            Self::Deregistration { .. } => msg_type::DEREGISTRATION,
            Self::RegistrationResponse { .. } => msg_type::REGISTRATION_RESPONSE,
            Self::DeregistrationResponse { .. } => msg_type::DEREGISTRATION_RESPONSE,
            Self::HandleResolution { .. } => msg_type::HANDLE_RESOLUTION,
            Self::HandleResolutionResponse { .. } => msg_type::HANDLE_RESOLUTION_RESPONSE,
            Self::EndpointKeepAlive { .. } => msg_type::ENDPOINT_KEEP_ALIVE,
            Self::EndpointKeepAliveAck { .. } => msg_type::ENDPOINT_KEEP_ALIVE_ACK,
            Self::EndpointUnreachable { .. } => msg_type::ENDPOINT_UNREACHABLE,
            Self::ServerAnnounce { .. } => msg_type::SERVER_ANNOUNCE,
            Self::Cookie { .. } => msg_type::COOKIE,
            Self::CookieEcho { .. } => msg_type::COOKIE_ECHO,
            Self::BusinessCard { .. } => msg_type::BUSINESS_CARD,
            Self::Error { .. } => msg_type::ERROR,
        }
    }

    fn flags(&self) -> u8 {
        match self {
            Self::RegistrationResponse { reject: true, .. } => flags::REGISTRATION_REJECT,
            Self::HandleResolutionResponse { reject: true, .. } => flags::HANDLE_RESOLUTION_REJECT,
            Self::EndpointKeepAlive { home: true, .. } => flags::KEEP_ALIVE_HOME,
            _ => 0,
        }
    }

    /// Appends the encoded message to `out`.
    ///
    /// # Panics
    /// If the message does not fit the 16-bit length field (more than 65535
    /// bytes, e.g. a huge cookie); use [`Message::try_encode`] for values
    /// that are not known to be small.
    pub fn encode(&self, out: &mut Vec<u8>) {
        if let Err(error) = self.try_encode(out) {
            panic!("ASAP message cannot be encoded: {error}");
        }
    }

    /// Appends the encoded message to `out`, or fails (leaving `out`
    /// unchanged) if it exceeds 65535 bytes.
    pub fn try_encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        write_message(out, self.message_type(), self.flags(), |o| {
            self.write_body(o)
        })
    }

    /// The encoded message as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    fn write_body(&self, o: &mut Vec<u8>) {
        use super::params::Parameter;
        match self {
            Self::Registration {
                pool_handle,
                pool_element,
                membership,
            } => {
                pool_handle.encode(o);
                pool_element.encode(o);
                if let Some(proof) = membership {
                    proof.encode(o);
                }
            }
            Self::Deregistration {
                pool_handle,
                pe_identifier,
                membership,
            } => {
                pool_handle.encode(o);
                Parameter::PeIdentifier(*pe_identifier).encode(o);
                if let Some(proof) = membership {
                    proof.encode(o);
                }
            }
            Self::EndpointKeepAliveAck {
                pool_handle,
                pe_identifier,
            }
            | Self::EndpointUnreachable {
                pool_handle,
                pe_identifier,
            } => {
                pool_handle.encode(o);
                Parameter::PeIdentifier(*pe_identifier).encode(o);
            }
            Self::RegistrationResponse {
                pool_handle,
                pe_identifier,
                error,
                ..
            }
            | Self::DeregistrationResponse {
                pool_handle,
                pe_identifier,
                error,
            } => {
                pool_handle.encode(o);
                Parameter::PeIdentifier(*pe_identifier).encode(o);
                if let Some(error) = error {
                    error.encode(o);
                }
            }
            Self::HandleResolution { pool_handle, items } => {
                pool_handle.encode(o);
                if let Some(items) = items {
                    Parameter::HandleResolutionOption { items: *items }.encode(o);
                }
            }
            Self::HandleResolutionResponse {
                pool_handle,
                policy,
                pool_elements,
                error,
                ..
            } => {
                pool_handle.encode(o);
                if let Some(policy) = policy {
                    policy.encode(o);
                }
                for pe in pool_elements {
                    pe.encode(o);
                }
                if let Some(error) = error {
                    error.encode(o);
                }
            }
            Self::EndpointKeepAlive {
                server_identifier,
                pool_handle,
                pe_identifier,
                ..
            } => {
                o.extend_from_slice(&server_identifier.to_be_bytes());
                pool_handle.encode(o);
                if let Some(id) = pe_identifier {
                    Parameter::PeIdentifier(*id).encode(o);
                }
            }
            Self::ServerAnnounce {
                server_identifier,
                transports,
            } => {
                o.extend_from_slice(&server_identifier.to_be_bytes());
                for transport in transports {
                    transport.encode(o);
                }
            }
            Self::Cookie { cookie } | Self::CookieEcho { cookie } => {
                Parameter::Cookie(cookie.clone()).encode(o);
            }
            Self::BusinessCard {
                pool_handle,
                policy,
                pool_elements,
            } => {
                pool_handle.encode(o);
                if let Some(policy) = policy {
                    policy.encode(o);
                }
                for pe in pool_elements {
                    pe.encode(o);
                }
            }
            Self::Error { error } => error.encode(o),
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
        let (message_type, flag_bits, mut body) = split_message(bytes, limits)?;
        let mut ctx = DecodeContext::new(limits);
        let server_identifier = match message_type {
            msg_type::ENDPOINT_KEEP_ALIVE | msg_type::SERVER_ANNOUNCE => {
                let (rest, id) = read_u32(body, "server identifier")?;
                body = rest;
                id
            }
            _ => 0,
        };
        let context = message_name(message_type)?;
        let mut bag = ParameterBag::new(context, ctx.decode_parameters(body)?);
        let message = match message_type {
            msg_type::REGISTRATION => Self::Registration {
                pool_handle: bag.pool_handle()?,
                pool_element: bag.pool_element()?,
                membership: bag.optional_membership(),
            },
            msg_type::DEREGISTRATION => Self::Deregistration {
                pool_handle: bag.pool_handle()?,
                pe_identifier: bag.pe_identifier()?,
                membership: bag.optional_membership(),
            },
            msg_type::REGISTRATION_RESPONSE => Self::RegistrationResponse {
                reject: flag_bits & flags::REGISTRATION_REJECT != 0,
                pool_handle: bag.pool_handle()?,
                pe_identifier: bag.pe_identifier()?,
                error: bag.optional_operation_error(),
            },
            msg_type::DEREGISTRATION_RESPONSE => Self::DeregistrationResponse {
                pool_handle: bag.pool_handle()?,
                pe_identifier: bag.pe_identifier()?,
                error: bag.optional_operation_error(),
            },
            msg_type::HANDLE_RESOLUTION => Self::HandleResolution {
                pool_handle: bag.pool_handle()?,
                items: bag.optional_handle_resolution_items(),
            },
            msg_type::HANDLE_RESOLUTION_RESPONSE => Self::HandleResolutionResponse {
                reject: flag_bits & flags::HANDLE_RESOLUTION_REJECT != 0,
                pool_handle: bag.pool_handle()?,
                policy: bag.optional_policy(),
                pool_elements: bag.all_pool_elements(),
                error: bag.optional_operation_error(),
            },
            msg_type::ENDPOINT_KEEP_ALIVE => Self::EndpointKeepAlive {
                home: flag_bits & flags::KEEP_ALIVE_HOME != 0,
                server_identifier,
                pool_handle: bag.pool_handle()?,
                pe_identifier: bag.optional_pe_identifier(),
            },
            msg_type::ENDPOINT_KEEP_ALIVE_ACK => Self::EndpointKeepAliveAck {
                pool_handle: bag.pool_handle()?,
                pe_identifier: bag.pe_identifier()?,
            },
            msg_type::ENDPOINT_UNREACHABLE => Self::EndpointUnreachable {
                pool_handle: bag.pool_handle()?,
                pe_identifier: bag.pe_identifier()?,
            },
            msg_type::SERVER_ANNOUNCE => Self::ServerAnnounce {
                server_identifier,
                transports: bag.all_transports(),
            },
            msg_type::COOKIE => Self::Cookie {
                cookie: bag.cookie()?,
            },
            msg_type::COOKIE_ECHO => Self::CookieEcho {
                cookie: bag.cookie()?,
            },
            msg_type::BUSINESS_CARD => Self::BusinessCard {
                pool_handle: bag.pool_handle()?,
                policy: bag.optional_policy(),
                pool_elements: bag.all_pool_elements(),
            },
            _ => Self::Error {
                error: bag.operation_error()?,
            },
        };
        bag.finish()?;
        Ok(Decoded {
            message,
            unrecognized: ctx.unrecognized,
        })
    }
}

/// Name of a message type for error reports; unknown types are an error.
fn message_name(message_type: u8) -> Result<&'static str, DecodeError> {
    Ok(match message_type {
        msg_type::REGISTRATION => "ASAP Registration",
        msg_type::DEREGISTRATION => "ASAP Deregistration",
        msg_type::REGISTRATION_RESPONSE => "ASAP Registration Response",
        msg_type::DEREGISTRATION_RESPONSE => "ASAP Deregistration Response",
        msg_type::HANDLE_RESOLUTION => "ASAP Handle Resolution",
        msg_type::HANDLE_RESOLUTION_RESPONSE => "ASAP Handle Resolution Response",
        msg_type::ENDPOINT_KEEP_ALIVE => "ASAP Endpoint Keep Alive",
        msg_type::ENDPOINT_KEEP_ALIVE_ACK => "ASAP Endpoint Keep Alive Ack",
        msg_type::ENDPOINT_UNREACHABLE => "ASAP Endpoint Unreachable",
        msg_type::SERVER_ANNOUNCE => "ASAP Server Announce",
        msg_type::COOKIE => "ASAP Cookie",
        msg_type::COOKIE_ECHO => "ASAP Cookie Echo",
        msg_type::BUSINESS_CARD => "ASAP Business Card",
        msg_type::ERROR => "ASAP Error",
        other => return Err(DecodeError::UnknownMessageType(other)),
    })
}
