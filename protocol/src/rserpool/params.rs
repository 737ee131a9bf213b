//! RFC 5354 parameters shared by ASAP and ENRP.
//!
//! Every parameter is a TLV (RFC 5354 §2): a 16-bit type, a 16-bit length
//! that counts the 4-byte header and the value but not the padding, the
//! value, and zero padding up to a multiple of 4 bytes. The two high-order
//! bits of the type say what a receiver that does not know the type must do
//! (RFC 5354 §2, mirroring SCTP): see [`UnknownParameterAction`].
//!
//! Decoding never panics: every length is checked against the bytes that are
//! really there and against [`Limits`], and every problem is a
//! [`DecodeError`] that names it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use nom::number::complete::{be_u16, be_u32};

/// Parameter type numbers (RFC 5354 §3, IANA "RSerPool Parameters").
pub mod param_type {
    /// IPv4 Address (RFC 5354 §3.1).
    pub const IPV4_ADDRESS: u16 = 0x0001;
    /// IPv6 Address (RFC 5354 §3.2).
    pub const IPV6_ADDRESS: u16 = 0x0002;
    /// DCCP Transport (RFC 5354 §3.3).
    pub const DCCP_TRANSPORT: u16 = 0x0003;
    /// SCTP Transport (RFC 5354 §3.4).
    pub const SCTP_TRANSPORT: u16 = 0x0004;
    /// TCP Transport (RFC 5354 §3.5).
    pub const TCP_TRANSPORT: u16 = 0x0005;
    /// UDP Transport (RFC 5354 §3.6).
    pub const UDP_TRANSPORT: u16 = 0x0006;
    /// UDP-Lite Transport (RFC 5354 §3.7).
    pub const UDP_LITE_TRANSPORT: u16 = 0x0007;
    /// Pool Member Selection Policy (RFC 5354 §3.8, policies in RFC 5356).
    pub const POOL_MEMBER_SELECTION_POLICY: u16 = 0x0008;
    /// Pool Handle (RFC 5354 §3.9).
    pub const POOL_HANDLE: u16 = 0x0009;
    /// Pool Element (RFC 5354 §3.10).
    pub const POOL_ELEMENT: u16 = 0x000a;
    /// Server Information (RFC 5354 §3.11).
    pub const SERVER_INFORMATION: u16 = 0x000b;
    /// Operation Error (RFC 5354 §3.12).
    pub const OPERATION_ERROR: u16 = 0x000c;
    /// Cookie (RFC 5354 §3.13).
    pub const COOKIE: u16 = 0x000d;
    /// PE Identifier (RFC 5354 §3.14).
    pub const PE_IDENTIFIER: u16 = 0x000e;
    /// PE Checksum (RFC 5354 §3.15).
    pub const PE_CHECKSUM: u16 = 0x000f;
    /// Handle Resolution option of draft-dreibholz-rserpool-asap-hropt:
    /// type 0x3f with the "skip if unknown" bit (0x8000) set, so registrars
    /// that do not know it simply ignore it. Wireshark and RSPLIB use 0x803f.
    pub const HANDLE_RESOLUTION_OPTION: u16 = 0x803f;
    /// Pool membership proof (poolflow extension, "skip if unknown"): see
    /// [`crate::rserpool::membership`].
    pub const MEMBERSHIP_PROOF: u16 = crate::rserpool::membership::PARAM_TYPE;
}

/// Error cause codes carried in an Operation Error parameter (RFC 5354 §3.12).
pub mod cause_code {
    /// Unrecognized Parameter: the info is the offending parameter TLV.
    pub const UNRECOGNIZED_PARAMETER: u16 = 0x0001;
    /// Unrecognized Message: the info is the offending message.
    pub const UNRECOGNIZED_MESSAGE: u16 = 0x0002;
    /// Invalid Values: the info is the offending parameter TLV.
    pub const INVALID_VALUES: u16 = 0x0003;
    /// Non-unique PE Identifier.
    pub const NON_UNIQUE_PE_IDENTIFIER: u16 = 0x0004;
    /// Inconsistent Pooling Policy: the info is the policy parameter.
    pub const INCONSISTENT_POOLING_POLICY: u16 = 0x0005;
    /// Lack of Resources.
    pub const LACK_OF_RESOURCES: u16 = 0x0006;
    /// Inconsistent Transport Type: the info is the transport parameter.
    pub const INCONSISTENT_TRANSPORT_TYPE: u16 = 0x0007;
    /// Inconsistent Data/Control Configuration.
    pub const INCONSISTENT_DATA_CONTROL_CONFIGURATION: u16 = 0x0008;
    /// Unknown Pool Handle.
    pub const UNKNOWN_POOL_HANDLE: u16 = 0x0009;
    /// Rejected due to security considerations.
    pub const REJECTED_DUE_TO_SECURITY: u16 = 0x000a;
    /// Non-standard RSPLIB cause "invalid message" (`RSPERR_INVALID_MESSAGE`);
    /// tolerated on input, never sent by us.
    pub const RSPLIB_INVALID_MESSAGE: u16 = 0x0010;
    /// Non-standard RSPLIB cause "invalid value" (`RSPERR_INVALID_VALUE`);
    /// tolerated on input, never sent by us.
    pub const RSPLIB_INVALID_VALUE: u16 = 0x0011;
}

/// Size of a TLV header (type + length).
pub const TLV_HEADER_LEN: usize = 4;

/// Decoder limits, so that hostile or broken input is rejected early and
/// cheaply instead of allocating without bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest message accepted, in bytes. The header's length field is 16
    /// bits, so nothing above 65535 can be valid anyway.
    pub max_message_size: usize,
    /// Most parameters (and error causes) in one message, counting nested
    /// ones (addresses inside transports, transports inside pool elements).
    pub max_parameters: usize,
    /// Longest pool handle accepted. The RFCs set no bound; RSPLIB, the
    /// reference implementation, stores at most 32 bytes
    /// (`MAX_POOLHANDLESIZE`), so longer handles would not survive a trip
    /// through an RSPLIB registrar.
    pub max_pool_handle_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_size: 65_535,
            max_parameters: 4_096,
            max_pool_handle_len: 32,
        }
    }
}

/// Why a message or parameter could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ends before a field that must be there.
    #[error("truncated: {what} needs more bytes than are left")]
    Truncated {
        /// The field being read.
        what: &'static str,
    },
    /// The message header's length is below the header size or beyond the
    /// bytes given.
    #[error("bad message length {length} (have {available} bytes)")]
    BadMessageLength {
        /// Length field of the header.
        length: usize,
        /// Bytes handed to the decoder.
        available: usize,
    },
    /// Bytes left after the message (beyond its padding).
    #[error("{extra} trailing bytes after the message")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// The message is larger than [`Limits::max_message_size`].
    #[error("message of {length} bytes exceeds the limit of {max}")]
    MessageTooLarge {
        /// Message length.
        length: usize,
        /// Configured limit.
        max: usize,
    },
    /// The message type is not one this protocol defines.
    #[error("unknown message type 0x{0:02x}")]
    UnknownMessageType(u8),
    /// A parameter length below the 4-byte TLV header.
    #[error("parameter 0x{param_type:04x} has bad length {length}")]
    BadParameterLength {
        /// Parameter type.
        param_type: u16,
        /// Length field.
        length: usize,
    },
    /// A parameter (or error cause) claims more bytes than its container has.
    #[error(
        "parameter 0x{param_type:04x} of length {length} overruns its container ({available} bytes left)"
    )]
    ParameterOverrun {
        /// Parameter type (or cause code).
        param_type: u16,
        /// Length field.
        length: usize,
        /// Bytes left in the container.
        available: usize,
    },
    /// A fixed-size parameter value has the wrong size.
    #[error("parameter 0x{param_type:04x} value is {actual} bytes, expected {expected}")]
    WrongValueLength {
        /// Parameter type.
        param_type: u16,
        /// Size the RFC prescribes.
        expected: usize,
        /// Size found.
        actual: usize,
    },
    /// More parameters than [`Limits::max_parameters`].
    #[error("more than {max} parameters in one message")]
    TooManyParameters {
        /// Configured limit.
        max: usize,
    },
    /// A parameter the message (or enclosing parameter) requires is absent.
    #[error("{context} lacks its mandatory {parameter} parameter")]
    MissingParameter {
        /// Message or parameter being decoded.
        context: &'static str,
        /// The missing parameter.
        parameter: &'static str,
    },
    /// A known parameter where it does not belong, or one too many of it.
    #[error("unexpected parameter 0x{param_type:04x} in {context}")]
    UnexpectedParameter {
        /// Message or parameter being decoded.
        context: &'static str,
        /// Parameter type.
        param_type: u16,
    },
    /// A pool handle longer than [`Limits::max_pool_handle_len`].
    #[error("pool handle of {length} bytes exceeds the limit of {max}")]
    PoolHandleTooLong {
        /// Handle length.
        length: usize,
        /// Configured limit.
        max: usize,
    },
    /// A field holds a value the RFC does not define.
    #[error("invalid {what} value {value}")]
    InvalidValue {
        /// Field name.
        what: &'static str,
        /// The value found.
        value: u32,
    },
    /// A transport parameter with the wrong number of addresses (SCTP needs
    /// at least one, the others exactly one).
    #[error("{transport} transport parameter with {count} addresses")]
    BadAddressCount {
        /// Transport name.
        transport: &'static str,
        /// Addresses found.
        count: usize,
    },
    /// An unknown parameter whose type bits say "stop processing and discard
    /// the message" (00 or 01, RFC 5354 §2). When `report` is set (01), the
    /// sender should get an Operation Error with an Unrecognized Parameter
    /// cause: [`ErrorCause::unrecognized_parameter`] builds it from
    /// `parameter`.
    #[error("unrecognized parameter 0x{:04x} stops processing of the message", parameter.param_type)]
    UnrecognizedParameter {
        /// The offending parameter.
        parameter: UnrecognizedParameter,
    },
}

impl DecodeError {
    /// A short stable label for metrics and logs (the collector's IPFIX
    /// errors have the same, see `ipfix::DecodeError::reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Truncated { .. } => "truncated",
            Self::BadMessageLength { .. } => "bad_message_length",
            Self::TrailingBytes { .. } => "trailing_bytes",
            Self::MessageTooLarge { .. } => "too_large",
            Self::UnknownMessageType(_) => "unknown_message_type",
            Self::BadParameterLength { .. } => "bad_parameter_length",
            Self::ParameterOverrun { .. } => "parameter_overrun",
            Self::WrongValueLength { .. } => "wrong_value_length",
            Self::TooManyParameters { .. } => "too_many_parameters",
            Self::MissingParameter { .. } => "missing_parameter",
            Self::UnexpectedParameter { .. } => "unexpected_parameter",
            Self::PoolHandleTooLong { .. } => "pool_handle_too_long",
            Self::InvalidValue { .. } => "invalid_value",
            Self::BadAddressCount { .. } => "bad_address_count",
            Self::UnrecognizedParameter { .. } => "unrecognized_parameter",
        }
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoded message would not fit the 16-bit length field.
    #[error("encoded message of {length} bytes exceeds 65535")]
    TooLong {
        /// Length it would have had.
        length: usize,
    },
}

/// What a receiver does with a parameter type it does not know: the two
/// high-order bits of the type (RFC 5354 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnknownParameterAction {
    /// `00`: stop processing, discard the message, report nothing.
    StopAndDiscard,
    /// `01`: stop processing, discard the message, report the parameter.
    StopDiscardAndReport,
    /// `10`: skip the parameter, go on with the next one.
    Skip,
    /// `11`: skip the parameter, go on, and report it.
    SkipAndReport,
}

impl UnknownParameterAction {
    /// The action encoded in a parameter type.
    pub fn of_type(param_type: u16) -> Self {
        match param_type >> 14 {
            0 => Self::StopAndDiscard,
            1 => Self::StopDiscardAndReport,
            2 => Self::Skip,
            _ => Self::SkipAndReport,
        }
    }

    /// Whether processing of the message continues.
    pub fn continues(self) -> bool {
        matches!(self, Self::Skip | Self::SkipAndReport)
    }

    /// Whether the sender must be told (Operation Error, Unrecognized
    /// Parameter cause).
    pub fn reports(self) -> bool {
        matches!(self, Self::StopDiscardAndReport | Self::SkipAndReport)
    }
}

/// A parameter of a type this codec does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnrecognizedParameter {
    /// Its type, including the two action bits.
    pub param_type: u16,
    /// The whole TLV as received (header and value, without padding): what
    /// an Unrecognized Parameter error cause carries back.
    pub tlv: Vec<u8>,
}

impl UnrecognizedParameter {
    /// The action its type bits demand.
    pub fn action(&self) -> UnknownParameterAction {
        UnknownParameterAction::of_type(self.param_type)
    }
}

/// A pool handle: an opaque byte string naming a pool (RFC 5354 §3.9).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PoolHandle(pub Vec<u8>);

impl PoolHandle {
    /// The handle's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<&str> for PoolHandle {
    fn from(handle: &str) -> Self {
        Self(handle.as_bytes().to_vec())
    }
}

impl From<&[u8]> for PoolHandle {
    fn from(handle: &[u8]) -> Self {
        Self(handle.to_vec())
    }
}

impl fmt::Display for PoolHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", String::from_utf8_lossy(&self.0))
    }
}

/// Transport Use field of the SCTP and TCP transport parameters
/// (RFC 5354 §3.4, §3.5): may the pool user also send ASAP control traffic
/// (cookies, business cards) on this transport?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportUse {
    /// 0x0000: data only.
    DataOnly,
    /// 0x0001: data plus control.
    DataPlusControl,
}

impl TransportUse {
    fn to_wire(self) -> u16 {
        match self {
            Self::DataOnly => 0,
            Self::DataPlusControl => 1,
        }
    }

    fn from_wire(value: u16) -> Result<Self, DecodeError> {
        match value {
            0 => Ok(Self::DataOnly),
            1 => Ok(Self::DataPlusControl),
            other => Err(DecodeError::InvalidValue {
                what: "transport use",
                value: u32::from(other),
            }),
        }
    }
}

/// Which transport a [`TransportAddress`] describes, with the fields that
/// only that transport has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// SCTP (RFC 5354 §3.4): multi-homed, any number (≥ 1) of addresses.
    Sctp(TransportUse),
    /// TCP (RFC 5354 §3.5): one address.
    Tcp(TransportUse),
    /// UDP (RFC 5354 §3.6): one address; the second 16-bit word is reserved.
    Udp,
    /// UDP-Lite (RFC 5354 §3.7): one address; reserved word as for UDP.
    UdpLite,
    /// DCCP (RFC 5354 §3.3): one address, plus the 32-bit DCCP service code
    /// after the reserved word.
    Dccp {
        /// DCCP service code (RFC 4340 §8.1.2).
        service_code: u32,
    },
}

impl TransportKind {
    fn param_type(self) -> u16 {
        match self {
            Self::Sctp(_) => param_type::SCTP_TRANSPORT,
            Self::Tcp(_) => param_type::TCP_TRANSPORT,
            Self::Udp => param_type::UDP_TRANSPORT,
            Self::UdpLite => param_type::UDP_LITE_TRANSPORT,
            Self::Dccp { .. } => param_type::DCCP_TRANSPORT,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Sctp(_) => "SCTP",
            Self::Tcp(_) => "TCP",
            Self::Udp => "UDP",
            Self::UdpLite => "UDP-Lite",
            Self::Dccp { .. } => "DCCP",
        }
    }
}

/// A transport endpoint: one of the five transport parameters
/// (RFC 5354 §3.3–§3.7), a port and the address parameters nested in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TransportAddress {
    /// Transport protocol and its protocol-specific fields.
    pub kind: TransportKind,
    /// Port number.
    pub port: u16,
    /// Addresses, in order (SCTP: all addresses of the multi-homed endpoint).
    pub addresses: Vec<IpAddr>,
}

/// Pool Member Selection Policy (RFC 5354 §3.8): the policy type and its
/// policy-specific data, kept raw; the `policies` crate interprets it
/// (RFC 5356 defines the types and their data).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SelectionPolicy {
    /// Policy type (e.g. 0x00000001 Round Robin, RFC 5356).
    pub policy_type: u32,
    /// Policy-specific data (weight, load, ...), exactly as on the wire.
    pub value: Vec<u8>,
}

/// Pool Element parameter (RFC 5354 §3.10): everything a registrar or pool
/// user needs to know about one PE.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolElement {
    /// PE identifier, chosen by the PE, unique within the pool.
    pub pe_identifier: u32,
    /// Identifier of the PE's home ENRP server (0 while unknown).
    pub home_enrp_server_identifier: u32,
    /// Registration life in milliseconds; signed on the wire (Wireshark shows
    /// it as INT32), a negative value meaning "infinite" (RFC 5354 §3.10).
    pub registration_life: i32,
    /// Where pool users reach the PE (the User Transport parameter).
    pub user_transport: TransportAddress,
    /// The PE's member selection policy and its data.
    pub policy: SelectionPolicy,
    /// The transport the PE uses for ASAP with its home registrar: optional,
    /// present in what registrars exchange over ENRP.
    pub asap_transport: Option<TransportAddress>,
}

/// Server Information parameter (RFC 5354 §3.11): an ENRP server and where
/// to reach it (an SCTP transport parameter in the RFC; any transport is
/// accepted here).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerInformation {
    /// The server's 32-bit ENRP server identifier.
    pub server_identifier: u32,
    /// The server's transport.
    pub transport: TransportAddress,
}

/// One error cause of an Operation Error parameter (RFC 5354 §3.12): a
/// 16-bit cause code, a 16-bit length including its 4-byte header, and
/// cause-specific information padded to 4 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ErrorCause {
    /// Cause code (see [`cause_code`]); unknown codes are kept, e.g. RSPLIB's
    /// non-standard 0x0010 and 0x0011.
    pub code: u16,
    /// Cause-specific information, raw (for Unrecognized Parameter: the
    /// offending TLV; for Unrecognized Message: the offending message).
    pub info: Vec<u8>,
}

impl ErrorCause {
    /// The Unrecognized Parameter cause that reports `parameter` back.
    pub fn unrecognized_parameter(parameter: &UnrecognizedParameter) -> Self {
        Self {
            code: cause_code::UNRECOGNIZED_PARAMETER,
            info: parameter.tlv.clone(),
        }
    }
}

/// Operation Error parameter (RFC 5354 §3.12): one or more error causes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct OperationError {
    /// The causes, in order.
    pub causes: Vec<ErrorCause>,
}

/// A decoded RFC 5354 parameter (or the handle-resolution option).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Parameter {
    /// IPv4 Address (0x1).
    Ipv4Address(Ipv4Addr),
    /// IPv6 Address (0x2).
    Ipv6Address(Ipv6Addr),
    /// DCCP/SCTP/TCP/UDP/UDP-Lite Transport (0x3–0x7).
    Transport(TransportAddress),
    /// Pool Member Selection Policy (0x8).
    SelectionPolicy(SelectionPolicy),
    /// Pool Handle (0x9).
    PoolHandle(PoolHandle),
    /// Pool Element (0xa).
    PoolElement(PoolElement),
    /// Server Information (0xb).
    ServerInformation(ServerInformation),
    /// Operation Error (0xc).
    OperationError(OperationError),
    /// Cookie (0xd): opaque to ASAP; see docs/billing-continuity.md.
    Cookie(Vec<u8>),
    /// PE Identifier (0xe).
    PeIdentifier(u32),
    /// PE Checksum (0xf): 16-bit handlespace checksum (RFC 5353 §3.11.1).
    PeChecksum(u16),
    /// Handle Resolution option (0x803f, draft-dreibholz-rserpool-asap-hropt):
    /// how many PEs the pool user wants in the response (0xffffffff: all).
    HandleResolutionOption {
        /// Requested number of items.
        items: u32,
    },
    /// Pool membership proof (0xbf02, poolflow extension).
    MembershipProof(Box<crate::rserpool::membership::MembershipProof>),
}

impl Parameter {
    /// Its wire type.
    pub fn param_type(&self) -> u16 {
        match self {
            Self::Ipv4Address(_) => param_type::IPV4_ADDRESS,
            Self::Ipv6Address(_) => param_type::IPV6_ADDRESS,
            Self::Transport(t) => t.kind.param_type(),
            Self::SelectionPolicy(_) => param_type::POOL_MEMBER_SELECTION_POLICY,
            Self::PoolHandle(_) => param_type::POOL_HANDLE,
            Self::PoolElement(_) => param_type::POOL_ELEMENT,
            Self::ServerInformation(_) => param_type::SERVER_INFORMATION,
            Self::OperationError(_) => param_type::OPERATION_ERROR,
            Self::Cookie(_) => param_type::COOKIE,
            Self::PeIdentifier(_) => param_type::PE_IDENTIFIER,
            Self::PeChecksum(_) => param_type::PE_CHECKSUM,
            Self::HandleResolutionOption { .. } => param_type::HANDLE_RESOLUTION_OPTION,
            Self::MembershipProof(_) => param_type::MEMBERSHIP_PROOF,
        }
    }

    /// Appends the TLV, padded to 4 bytes, to `out`. Length fields of TLVs
    /// are 16 bits: a value that does not fit cannot be sent, and message
    /// encoders check this for the whole message (see `try_encode`).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Ipv4Address(a) => write_tlv(out, param_type::IPV4_ADDRESS, |o| {
                o.extend_from_slice(&a.octets())
            }),
            Self::Ipv6Address(a) => write_tlv(out, param_type::IPV6_ADDRESS, |o| {
                o.extend_from_slice(&a.octets())
            }),
            Self::Transport(t) => t.encode(out),
            Self::SelectionPolicy(p) => p.encode(out),
            Self::PoolHandle(h) => h.encode(out),
            Self::PoolElement(pe) => pe.encode(out),
            Self::ServerInformation(si) => si.encode(out),
            Self::OperationError(e) => e.encode(out),
            Self::Cookie(c) => write_tlv(out, param_type::COOKIE, |o| o.extend_from_slice(c)),
            Self::PeIdentifier(id) => write_tlv(out, param_type::PE_IDENTIFIER, |o| {
                o.extend_from_slice(&id.to_be_bytes())
            }),
            Self::PeChecksum(sum) => write_tlv(out, param_type::PE_CHECKSUM, |o| {
                o.extend_from_slice(&sum.to_be_bytes())
            }),
            Self::HandleResolutionOption { items } => {
                write_tlv(out, param_type::HANDLE_RESOLUTION_OPTION, |o| {
                    o.extend_from_slice(&items.to_be_bytes())
                })
            }
            Self::MembershipProof(proof) => proof.encode(out),
        }
    }

    /// Decodes exactly one parameter (trailing padding allowed, nothing
    /// else) with default [`Limits`]. An unknown parameter is an
    /// [`DecodeError::UnrecognizedParameter`] whatever its action bits, since
    /// there is no message to continue with.
    pub fn decode(bytes: &[u8]) -> Result<Parameter, DecodeError> {
        Self::decode_with(bytes, &Limits::default())
    }

    /// [`Parameter::decode`] with explicit limits.
    pub fn decode_with(bytes: &[u8], limits: &Limits) -> Result<Parameter, DecodeError> {
        let mut ctx = DecodeContext::new(limits);
        let (tlv, rest) = split_tlv(bytes)?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes { extra: rest.len() });
        }
        ctx.count_one()?;
        match decode_known(&mut ctx, tlv.param_type, tlv.value)? {
            Some(parameter) => Ok(parameter),
            None => Err(DecodeError::UnrecognizedParameter {
                parameter: tlv.unrecognized(),
            }),
        }
    }
}

/// Result of decoding a sequence of parameters: the known ones in order, and
/// the unknown ones that were skipped because their type bits allow it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DecodedParameters {
    /// Known parameters, in wire order.
    pub parameters: Vec<Parameter>,
    /// Skipped unknown parameters (action 10 or 11); those whose
    /// [`UnrecognizedParameter::action`] reports must be sent back in an
    /// Operation Error.
    pub unrecognized: Vec<UnrecognizedParameter>,
}

/// Decodes a run of back-to-back parameters (e.g. the body of a message),
/// applying the unknown-parameter rules of RFC 5354 §2.
pub fn decode_parameter_list(
    bytes: &[u8],
    limits: &Limits,
) -> Result<DecodedParameters, DecodeError> {
    let mut ctx = DecodeContext::new(limits);
    let parameters = ctx.decode_parameters(bytes)?;
    Ok(DecodedParameters {
        parameters,
        unrecognized: ctx.unrecognized,
    })
}

// ---------------------------------------------------------------------------
// Encoding helpers
// ---------------------------------------------------------------------------

/// Bytes of zero padding after `length` bytes to reach a multiple of 4.
pub(crate) fn padding_for(length: usize) -> usize {
    (4 - length % 4) % 4
}

/// Writes one TLV: header, the value `body` writes, then padding. The length
/// field covers header and value, not the padding (RFC 5354 §2). A length
/// above 65535 is written truncated; message encoders reject such messages
/// as a whole, which is the only way a nested TLV can get that large.
pub(crate) fn write_tlv(out: &mut Vec<u8>, tlv_type: u16, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&tlv_type.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    body(out);
    let length = out.len() - start;
    let length_field = u16::try_from(length).unwrap_or(u16::MAX);
    out[start + 2..start + 4].copy_from_slice(&length_field.to_be_bytes());
    out.resize(out.len() + padding_for(length), 0);
}

impl TransportAddress {
    /// Appends the transport parameter TLV.
    pub fn encode(&self, out: &mut Vec<u8>) {
        write_tlv(out, self.kind.param_type(), |o| {
            o.extend_from_slice(&self.port.to_be_bytes());
            match self.kind {
                TransportKind::Sctp(usage) | TransportKind::Tcp(usage) => {
                    o.extend_from_slice(&usage.to_wire().to_be_bytes())
                }
                TransportKind::Udp | TransportKind::UdpLite => o.extend_from_slice(&[0, 0]),
                TransportKind::Dccp { service_code } => {
                    o.extend_from_slice(&[0, 0]);
                    o.extend_from_slice(&service_code.to_be_bytes());
                }
            }
            for address in &self.addresses {
                match address {
                    IpAddr::V4(a) => Parameter::Ipv4Address(*a).encode(o),
                    IpAddr::V6(a) => Parameter::Ipv6Address(*a).encode(o),
                }
            }
        })
    }
}

impl SelectionPolicy {
    /// Appends the Pool Member Selection Policy TLV.
    pub fn encode(&self, out: &mut Vec<u8>) {
        write_tlv(out, param_type::POOL_MEMBER_SELECTION_POLICY, |o| {
            o.extend_from_slice(&self.policy_type.to_be_bytes());
            o.extend_from_slice(&self.value);
        })
    }
}

impl PoolHandle {
    /// Appends the Pool Handle TLV.
    pub fn encode(&self, out: &mut Vec<u8>) {
        write_tlv(out, param_type::POOL_HANDLE, |o| {
            o.extend_from_slice(&self.0)
        })
    }
}

impl PoolElement {
    /// Appends the Pool Element TLV with its nested parameters in the order
    /// of RFC 5354 §3.10: user transport, policy, then ASAP transport.
    pub fn encode(&self, out: &mut Vec<u8>) {
        write_tlv(out, param_type::POOL_ELEMENT, |o| {
            o.extend_from_slice(&self.pe_identifier.to_be_bytes());
            o.extend_from_slice(&self.home_enrp_server_identifier.to_be_bytes());
            o.extend_from_slice(&self.registration_life.to_be_bytes());
            self.user_transport.encode(o);
            self.policy.encode(o);
            if let Some(asap) = &self.asap_transport {
                asap.encode(o);
            }
        })
    }
}

impl ServerInformation {
    /// Appends the Server Information TLV.
    pub fn encode(&self, out: &mut Vec<u8>) {
        write_tlv(out, param_type::SERVER_INFORMATION, |o| {
            o.extend_from_slice(&self.server_identifier.to_be_bytes());
            self.transport.encode(o);
        })
    }
}

impl OperationError {
    /// Appends the Operation Error TLV; each cause is padded to 4 bytes, its
    /// length field excluding the padding, like a parameter.
    pub fn encode(&self, out: &mut Vec<u8>) {
        write_tlv(out, param_type::OPERATION_ERROR, |o| {
            for cause in &self.causes {
                write_tlv(o, cause.code, |c| c.extend_from_slice(&cause.info));
            }
        })
    }
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

type NomError<'a> = nom::error::Error<&'a [u8]>;

/// Reads a big-endian u16 with nom, naming the field when input is short.
pub(crate) fn read_u16<'a>(
    input: &'a [u8],
    what: &'static str,
) -> Result<(&'a [u8], u16), DecodeError> {
    be_u16::<_, NomError<'a>>(input).map_err(|_| DecodeError::Truncated { what })
}

/// Reads a big-endian u32 with nom, naming the field when input is short.
pub(crate) fn read_u32<'a>(
    input: &'a [u8],
    what: &'static str,
) -> Result<(&'a [u8], u32), DecodeError> {
    be_u32::<_, NomError<'a>>(input).map_err(|_| DecodeError::Truncated { what })
}

/// One TLV cut out of a buffer.
pub(crate) struct RawTlv<'a> {
    pub param_type: u16,
    /// Header and value, without padding.
    pub whole: &'a [u8],
    /// Value only.
    pub value: &'a [u8],
}

impl RawTlv<'_> {
    fn unrecognized(&self) -> UnrecognizedParameter {
        UnrecognizedParameter {
            param_type: self.param_type,
            tlv: self.whole.to_vec(),
        }
    }
}

/// Splits the first TLV off `input`: returns it and what follows its
/// padding. The padding of the last TLV of a container may be missing (some
/// senders count it in no length), so padding is skipped only as far as the
/// input goes.
pub(crate) fn split_tlv(input: &[u8]) -> Result<(RawTlv<'_>, &[u8]), DecodeError> {
    let (_, param_type) = read_u16(input, "parameter type")?;
    let (_, length) = read_u16(&input[2..], "parameter length")?;
    let length = usize::from(length);
    if length < TLV_HEADER_LEN {
        return Err(DecodeError::BadParameterLength { param_type, length });
    }
    if length > input.len() {
        return Err(DecodeError::ParameterOverrun {
            param_type,
            length,
            available: input.len(),
        });
    }
    let padded = (length + padding_for(length)).min(input.len());
    Ok((
        RawTlv {
            param_type,
            whole: &input[..length],
            value: &input[TLV_HEADER_LEN..length],
        },
        &input[padded..],
    ))
}

/// State shared across one message's decoding: limits, the running
/// parameter count, and the skipped unknown parameters.
pub(crate) struct DecodeContext<'l> {
    pub limits: &'l Limits,
    pub parameters_seen: usize,
    pub unrecognized: Vec<UnrecognizedParameter>,
}

impl<'l> DecodeContext<'l> {
    pub(crate) fn new(limits: &'l Limits) -> Self {
        Self {
            limits,
            parameters_seen: 0,
            unrecognized: Vec::new(),
        }
    }

    fn count_one(&mut self) -> Result<(), DecodeError> {
        self.parameters_seen += 1;
        if self.parameters_seen > self.limits.max_parameters {
            return Err(DecodeError::TooManyParameters {
                max: self.limits.max_parameters,
            });
        }
        Ok(())
    }

    /// Decodes back-to-back TLVs, applying RFC 5354 §2 to unknown types.
    pub(crate) fn decode_parameters(
        &mut self,
        mut input: &[u8],
    ) -> Result<Vec<Parameter>, DecodeError> {
        let mut parameters = Vec::new();
        while !input.is_empty() {
            let (tlv, rest) = split_tlv(input)?;
            self.count_one()?;
            match decode_known(self, tlv.param_type, tlv.value)? {
                Some(parameter) => parameters.push(parameter),
                None => {
                    let unrecognized = tlv.unrecognized();
                    if !unrecognized.action().continues() {
                        return Err(DecodeError::UnrecognizedParameter {
                            parameter: unrecognized,
                        });
                    }
                    self.unrecognized.push(unrecognized);
                }
            }
            input = rest;
        }
        Ok(parameters)
    }
}

fn exact<const N: usize>(param_type: u16, value: &[u8]) -> Result<[u8; N], DecodeError> {
    value.try_into().map_err(|_| DecodeError::WrongValueLength {
        param_type,
        expected: N,
        actual: value.len(),
    })
}

/// Decodes the value of a known parameter type; `None` for unknown types.
fn decode_known(
    ctx: &mut DecodeContext<'_>,
    tlv_type: u16,
    value: &[u8],
) -> Result<Option<Parameter>, DecodeError> {
    let parameter = match tlv_type {
        param_type::IPV4_ADDRESS => {
            Parameter::Ipv4Address(Ipv4Addr::from(exact::<4>(tlv_type, value)?))
        }
        param_type::IPV6_ADDRESS => {
            Parameter::Ipv6Address(Ipv6Addr::from(exact::<16>(tlv_type, value)?))
        }
        param_type::DCCP_TRANSPORT
        | param_type::SCTP_TRANSPORT
        | param_type::TCP_TRANSPORT
        | param_type::UDP_TRANSPORT
        | param_type::UDP_LITE_TRANSPORT => {
            Parameter::Transport(decode_transport(ctx, tlv_type, value)?)
        }
        param_type::POOL_MEMBER_SELECTION_POLICY => {
            let (rest, policy_type) = read_u32(value, "policy type")?;
            Parameter::SelectionPolicy(SelectionPolicy {
                policy_type,
                value: rest.to_vec(),
            })
        }
        param_type::POOL_HANDLE => {
            if value.len() > ctx.limits.max_pool_handle_len {
                return Err(DecodeError::PoolHandleTooLong {
                    length: value.len(),
                    max: ctx.limits.max_pool_handle_len,
                });
            }
            Parameter::PoolHandle(PoolHandle(value.to_vec()))
        }
        param_type::POOL_ELEMENT => Parameter::PoolElement(decode_pool_element(ctx, value)?),
        param_type::SERVER_INFORMATION => {
            let (rest, server_identifier) = read_u32(value, "server identifier")?;
            let nested = ctx.decode_parameters(rest)?;
            let mut transport = None;
            for parameter in nested {
                match parameter {
                    Parameter::Transport(t) if transport.is_none() => transport = Some(t),
                    other => {
                        return Err(DecodeError::UnexpectedParameter {
                            context: "server information",
                            param_type: other.param_type(),
                        });
                    }
                }
            }
            Parameter::ServerInformation(ServerInformation {
                server_identifier,
                transport: transport.ok_or(DecodeError::MissingParameter {
                    context: "server information",
                    parameter: "server transport",
                })?,
            })
        }
        param_type::OPERATION_ERROR => Parameter::OperationError(decode_causes(ctx, value)?),
        param_type::COOKIE => Parameter::Cookie(value.to_vec()),
        param_type::PE_IDENTIFIER => {
            Parameter::PeIdentifier(u32::from_be_bytes(exact::<4>(tlv_type, value)?))
        }
        param_type::PE_CHECKSUM => {
            Parameter::PeChecksum(u16::from_be_bytes(exact::<2>(tlv_type, value)?))
        }
        param_type::HANDLE_RESOLUTION_OPTION => Parameter::HandleResolutionOption {
            items: u32::from_be_bytes(exact::<4>(tlv_type, value)?),
        },
        param_type::MEMBERSHIP_PROOF => Parameter::MembershipProof(Box::new(
            crate::rserpool::membership::MembershipProof::decode_value(ctx, value)?,
        )),
        _ => return Ok(None),
    };
    Ok(Some(parameter))
}

fn decode_transport(
    ctx: &mut DecodeContext<'_>,
    tlv_type: u16,
    value: &[u8],
) -> Result<TransportAddress, DecodeError> {
    let (rest, port) = read_u16(value, "transport port")?;
    let (mut rest, second_word) = read_u16(rest, "transport use/reserved")?;
    let kind = match tlv_type {
        param_type::SCTP_TRANSPORT => TransportKind::Sctp(TransportUse::from_wire(second_word)?),
        param_type::TCP_TRANSPORT => TransportKind::Tcp(TransportUse::from_wire(second_word)?),
        // Reserved words: senders set 0, receivers ignore them.
        param_type::UDP_TRANSPORT => TransportKind::Udp,
        param_type::UDP_LITE_TRANSPORT => TransportKind::UdpLite,
        _ => {
            let (after, service_code) = read_u32(rest, "DCCP service code")?;
            rest = after;
            TransportKind::Dccp { service_code }
        }
    };
    let mut addresses = Vec::new();
    for parameter in ctx.decode_parameters(rest)? {
        match parameter {
            Parameter::Ipv4Address(a) => addresses.push(IpAddr::V4(a)),
            Parameter::Ipv6Address(a) => addresses.push(IpAddr::V6(a)),
            other => {
                return Err(DecodeError::UnexpectedParameter {
                    context: "transport parameter",
                    param_type: other.param_type(),
                });
            }
        }
    }
    let count_ok = match kind {
        TransportKind::Sctp(_) => !addresses.is_empty(),
        _ => addresses.len() == 1,
    };
    if !count_ok {
        return Err(DecodeError::BadAddressCount {
            transport: kind.name(),
            count: addresses.len(),
        });
    }
    Ok(TransportAddress {
        kind,
        port,
        addresses,
    })
}

fn decode_pool_element(
    ctx: &mut DecodeContext<'_>,
    value: &[u8],
) -> Result<PoolElement, DecodeError> {
    let (rest, pe_identifier) = read_u32(value, "PE identifier")?;
    let (rest, home_enrp_server_identifier) = read_u32(rest, "home ENRP server identifier")?;
    let (rest, registration_life) = read_u32(rest, "registration life")?;
    let mut transports = Vec::new();
    let mut policy = None;
    for parameter in ctx.decode_parameters(rest)? {
        match parameter {
            // First transport is the user transport, the one after the
            // policy the ASAP transport (RFC 5354 §3.10 order); a third one
            // has no meaning.
            Parameter::Transport(t) if transports.len() < 2 => transports.push(t),
            Parameter::SelectionPolicy(p) if policy.is_none() => policy = Some(p),
            other => {
                return Err(DecodeError::UnexpectedParameter {
                    context: "pool element",
                    param_type: other.param_type(),
                });
            }
        }
    }
    let mut transports = transports.into_iter();
    Ok(PoolElement {
        pe_identifier,
        home_enrp_server_identifier,
        registration_life: registration_life as i32,
        user_transport: transports.next().ok_or(DecodeError::MissingParameter {
            context: "pool element",
            parameter: "user transport",
        })?,
        policy: policy.ok_or(DecodeError::MissingParameter {
            context: "pool element",
            parameter: "member selection policy",
        })?,
        asap_transport: transports.next(),
    })
}

fn decode_causes(
    ctx: &mut DecodeContext<'_>,
    mut value: &[u8],
) -> Result<OperationError, DecodeError> {
    let mut causes = Vec::new();
    while !value.is_empty() {
        // Causes have the TLV layout (code, length incl. header, info, pad).
        let (tlv, rest) = split_tlv(value)?;
        ctx.count_one()?;
        causes.push(ErrorCause {
            code: tlv.param_type,
            info: tlv.value.to_vec(),
        });
        value = rest;
    }
    Ok(OperationError { causes })
}

/// Removes and returns the parameters of a decoded message one kind at a
/// time, so that message decoders can say which mandatory one is missing and
/// which one is out of place.
pub(crate) struct ParameterBag {
    context: &'static str,
    items: Vec<Option<Parameter>>,
}

impl ParameterBag {
    pub(crate) fn new(context: &'static str, parameters: Vec<Parameter>) -> Self {
        Self {
            context,
            items: parameters.into_iter().map(Some).collect(),
        }
    }

    /// Takes the first parameter `pick` accepts.
    pub(crate) fn take(&mut self, mut pick: impl FnMut(&Parameter) -> bool) -> Option<Parameter> {
        self.items
            .iter_mut()
            .find(|slot| slot.as_ref().is_some_and(&mut pick))
            .and_then(Option::take)
    }

    pub(crate) fn pool_handle(&mut self) -> Result<PoolHandle, DecodeError> {
        match self.take(|p| matches!(p, Parameter::PoolHandle(_))) {
            Some(Parameter::PoolHandle(h)) => Ok(h),
            _ => Err(self.missing("pool handle")),
        }
    }

    pub(crate) fn pe_identifier(&mut self) -> Result<u32, DecodeError> {
        self.optional_pe_identifier()
            .ok_or_else(|| self.missing("PE identifier"))
    }

    pub(crate) fn optional_pe_identifier(&mut self) -> Option<u32> {
        match self.take(|p| matches!(p, Parameter::PeIdentifier(_))) {
            Some(Parameter::PeIdentifier(id)) => Some(id),
            _ => None,
        }
    }

    pub(crate) fn pool_element(&mut self) -> Result<PoolElement, DecodeError> {
        self.optional_pool_element()
            .ok_or_else(|| self.missing("pool element"))
    }

    pub(crate) fn optional_pool_element(&mut self) -> Option<PoolElement> {
        match self.take(|p| matches!(p, Parameter::PoolElement(_))) {
            Some(Parameter::PoolElement(pe)) => Some(pe),
            _ => None,
        }
    }

    pub(crate) fn all_pool_elements(&mut self) -> Vec<PoolElement> {
        std::iter::from_fn(|| self.optional_pool_element()).collect()
    }

    pub(crate) fn operation_error(&mut self) -> Result<OperationError, DecodeError> {
        self.optional_operation_error()
            .ok_or_else(|| self.missing("operation error"))
    }

    pub(crate) fn optional_operation_error(&mut self) -> Option<OperationError> {
        match self.take(|p| matches!(p, Parameter::OperationError(_))) {
            Some(Parameter::OperationError(e)) => Some(e),
            _ => None,
        }
    }

    pub(crate) fn optional_policy(&mut self) -> Option<SelectionPolicy> {
        match self.take(|p| matches!(p, Parameter::SelectionPolicy(_))) {
            Some(Parameter::SelectionPolicy(p)) => Some(p),
            _ => None,
        }
    }

    pub(crate) fn cookie(&mut self) -> Result<Vec<u8>, DecodeError> {
        match self.take(|p| matches!(p, Parameter::Cookie(_))) {
            Some(Parameter::Cookie(c)) => Ok(c),
            _ => Err(self.missing("cookie")),
        }
    }

    pub(crate) fn pe_checksum(&mut self) -> Result<u16, DecodeError> {
        match self.take(|p| matches!(p, Parameter::PeChecksum(_))) {
            Some(Parameter::PeChecksum(c)) => Ok(c),
            _ => Err(self.missing("PE checksum")),
        }
    }

    pub(crate) fn optional_server_information(&mut self) -> Option<ServerInformation> {
        match self.take(|p| matches!(p, Parameter::ServerInformation(_))) {
            Some(Parameter::ServerInformation(s)) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn all_server_information(&mut self) -> Vec<ServerInformation> {
        std::iter::from_fn(|| self.optional_server_information()).collect()
    }

    pub(crate) fn all_transports(&mut self) -> Vec<TransportAddress> {
        std::iter::from_fn(
            || match self.take(|p| matches!(p, Parameter::Transport(_))) {
                Some(Parameter::Transport(t)) => Some(t),
                _ => None,
            },
        )
        .collect()
    }

    pub(crate) fn optional_membership(
        &mut self,
    ) -> Option<Box<crate::rserpool::membership::MembershipProof>> {
        match self.take(|p| matches!(p, Parameter::MembershipProof(_))) {
            Some(Parameter::MembershipProof(proof)) => Some(proof),
            _ => None,
        }
    }

    pub(crate) fn optional_handle_resolution_items(&mut self) -> Option<u32> {
        match self.take(|p| matches!(p, Parameter::HandleResolutionOption { .. })) {
            Some(Parameter::HandleResolutionOption { items }) => Some(items),
            _ => None,
        }
    }

    fn missing(&self, parameter: &'static str) -> DecodeError {
        DecodeError::MissingParameter {
            context: self.context,
            parameter,
        }
    }

    /// Every parameter must have been taken: a leftover one is out of place
    /// (a duplicate, or a kind this message does not carry).
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.items.into_iter().flatten().next() {
            None => Ok(()),
            Some(extra) => Err(DecodeError::UnexpectedParameter {
                context: self.context,
                param_type: extra.param_type(),
            }),
        }
    }
}
