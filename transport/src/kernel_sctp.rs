//! Native (kernel) SCTP: run-time detection only.
//!
//! Many hosts and containers have no `sctp` kernel module, so this is probed, never assumed.
//! The message interface over kernel SCTP is not implemented yet: asking for
//! [`crate::TransportKind::KernelSctp`] returns a clear error either way.

use crate::TransportError;

/// Probes `socket(AF_INET, SOCK_SEQPACKET, IPPROTO_SCTP)` (the one-to-many style of
/// RFC 6458); `Err` carries the OS reason, e.g. "Protocol not supported".
pub fn probe() -> Result<(), String> {
    // SAFETY: plain socket(2) call; the descriptor is closed right away if one is returned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_SEQPACKET, libc::IPPROTO_SCTP) };
    if fd < 0 {
        return Err(format!(
            "socket(AF_INET, SOCK_SEQPACKET, IPPROTO_SCTP) failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` is a descriptor we own and have not closed.
    unsafe { libc::close(fd) };
    Ok(())
}

/// Whether this host can create kernel SCTP sockets.
pub fn is_available() -> bool {
    probe().is_ok()
}

pub(crate) fn unavailable_error() -> TransportError {
    match probe() {
        Err(reason) => TransportError::KernelSctpUnavailable(reason),
        Ok(()) => TransportError::Unsupported(
            "kernel SCTP exists on this host but poolflow's kernel SCTP transport is not \
             implemented yet; use TransportKind::SctpOverUdp",
        ),
    }
}
