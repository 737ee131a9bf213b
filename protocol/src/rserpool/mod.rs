//! RSerPool wire formats: RFC 5354 parameters, ASAP (RFC 5352), ENRP (RFC 5353).
//!
//! Sans-IO: every codec turns a complete message (one SCTP user message, or
//! one frame cut out of a TCP stream with [`message_length`]) into a typed
//! value and back. Nothing here reads sockets or clocks.
//!
//! - [`params`]: the TLV parameters both protocols share (RFC 5354), the
//!   unknown-parameter rules (RFC 5354 §3), error causes, and [`Limits`].
//! - [`asap`]: Aggregate Server Access Protocol messages (RFC 5352 §2.2).
//! - [`enrp`]: Endpoint haNdlespace Redundancy Protocol messages (RFC 5353 §2).

pub mod asap;
pub mod enrp;
pub mod membership;
pub mod params;

pub use params::{
    DecodeError, EncodeError, ErrorCause, Limits, OperationError, Parameter, PoolElement,
    PoolHandle, SelectionPolicy, ServerInformation, TransportAddress, TransportKind, TransportUse,
    UnknownParameterAction, UnrecognizedParameter,
};

use std::net::Ipv4Addr;

/// SCTP Payload Protocol Identifier of ASAP (RFC 5352 §8, IANA SCTP PPIDs).
pub const ASAP_SCTP_PPID: u32 = 11;
/// SCTP Payload Protocol Identifier of ENRP (RFC 5353 §7, IANA SCTP PPIDs).
pub const ENRP_SCTP_PPID: u32 = 12;
/// Well-known ASAP port (SCTP; Wireshark also dissects TCP and UDP 3863).
pub const ASAP_PORT: u16 = 3863;
/// Well-known ENRP port (SCTP; Wireshark also dissects UDP 9901).
pub const ENRP_PORT: u16 = 9901;
/// Multicast group for ASAP Server Announce messages (the address RSPLIB, the
/// reference implementation, uses: `ASAP_ANNOUNCE_MULTICAST_ADDRESS`).
pub const ASAP_ANNOUNCE_MULTICAST: Ipv4Addr = Ipv4Addr::new(239, 0, 0, 50);
/// Multicast group for ENRP Presence announcements (RSPLIB's
/// `ENRP_ANNOUNCE_MULTICAST_ADDRESS`).
pub const ENRP_ANNOUNCE_MULTICAST: Ipv4Addr = Ipv4Addr::new(239, 0, 0, 51);

/// Size of the common message header: type (u8), flags (u8), length (u16).
pub const MESSAGE_HEADER_LEN: usize = 4;

/// Length of the message that starts at `bytes`, read from its header, for
/// cutting messages out of a byte stream (TCP). `None` until the 4 header
/// bytes are there. The value is the header's length field: the whole message
/// including the header (RFC 5352 §2.1, RFC 5353 §2).
pub fn message_length(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < MESSAGE_HEADER_LEN {
        return None;
    }
    Some(usize::from(u16::from_be_bytes([bytes[2], bytes[3]])))
}

/// Checks the common header against `bytes` and `limits` and returns the
/// message type, flags and the body (the parameters after the header).
pub(crate) fn split_message<'a>(
    bytes: &'a [u8],
    limits: &Limits,
) -> Result<(u8, u8, &'a [u8]), DecodeError> {
    if bytes.len() > limits.max_message_size {
        return Err(DecodeError::MessageTooLarge {
            length: bytes.len(),
            max: limits.max_message_size,
        });
    }
    let Some(length) = message_length(bytes) else {
        return Err(DecodeError::Truncated {
            what: "message header",
        });
    };
    if length > limits.max_message_size {
        return Err(DecodeError::MessageTooLarge {
            length,
            max: limits.max_message_size,
        });
    }
    if length < MESSAGE_HEADER_LEN || length > bytes.len() {
        return Err(DecodeError::BadMessageLength {
            length,
            available: bytes.len(),
        });
    }
    // A sender that leaves the last parameter's padding out of the length
    // may still put the padding on the wire; anything beyond is garbage.
    let extra = bytes.len() - length;
    if extra > params::padding_for(length) {
        return Err(DecodeError::TrailingBytes { extra });
    }
    Ok((bytes[0], bytes[1], &bytes[MESSAGE_HEADER_LEN..length]))
}

/// Appends a message: header, the body `write_body` produces, and the length
/// patched in. Fails, leaving `out` as it was, when the message would not fit
/// the 16-bit length field (then some nested length would not fit either).
pub(crate) fn write_message(
    out: &mut Vec<u8>,
    message_type: u8,
    flags: u8,
    write_body: impl FnOnce(&mut Vec<u8>),
) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[message_type, flags, 0, 0]);
    write_body(out);
    let length = out.len() - start;
    let Ok(length_field) = u16::try_from(length) else {
        out.truncate(start);
        return Err(EncodeError::TooLong { length });
    };
    out[start + 2..start + 4].copy_from_slice(&length_field.to_be_bytes());
    Ok(())
}

/// A decoded message together with the unknown parameters that were skipped
/// on the way (type bits 10 or 11, RFC 5354 §2). Those whose action
/// [`UnknownParameterAction::reports`] should be answered with an Operation
/// Error carrying [`ErrorCause::unrecognized_parameter`] causes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded<M> {
    /// The message.
    pub message: M,
    /// Skipped unknown parameters, in wire order.
    pub unrecognized: Vec<UnrecognizedParameter>,
}

impl<M> Decoded<M> {
    /// Error causes reporting every skipped parameter whose type bits ask
    /// for a report (action 11); empty when there is nothing to report.
    pub fn report_causes(&self) -> Vec<ErrorCause> {
        self.unrecognized
            .iter()
            .filter(|p| p.action().reports())
            .map(ErrorCause::unrecognized_parameter)
            .collect()
    }
}
