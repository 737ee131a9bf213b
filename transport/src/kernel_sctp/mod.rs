//! Native (kernel) SCTP behind the message interface, Linux only.
//!
//! Many hosts and containers have no `sctp` kernel module, so it is probed, never assumed:
//! [`probe`] tries `socket(AF_INET, SOCK_SEQPACKET, IPPROTO_SCTP)`, and asking for
//! [`crate::TransportKind::KernelSctp`] on such a host fails with
//! [`crate::TransportError::KernelSctpUnavailable`] carrying the OS reason.
//!
//! Design: every endpoint is one one-to-many socket (RFC 6458 section 3, `SOCK_SEQPACKET`),
//! listening on the server side, `connect()`ed on the client side, driven by one tokio task
//! through `AsyncFd`. Messages go out with `sendmsg` and an `SCTP_SNDRCV` control message
//! (stream, PPID, unordered flag, PR-SCTP policy and value); they come in with `recvmsg` and
//! an `SCTP_RCVINFO` control message. Association life cycle comes from `SCTP_ASSOC_CHANGE`
//! notifications: COMM_UP is [`crate::Event::Up`], RESTART [`crate::Event::Restarted`], SHUTDOWN_COMP
//! [`crate::DownReason::Shutdown`], COMM_LOST [`crate::DownReason::Aborted`] when the peer's ABORT carried
//! an error cause, else [`crate::FailureReason::PeerUnreachable`] (Linux reports retransmission
//! exhaustion with error 0). Heartbeat, RTO and retransmission limits from [`crate::Config`] are set
//! for all future associations with `SCTP_RTOINFO`, `SCTP_ASSOCINFO`,
//! `SCTP_PEER_ADDR_PARAMS` and `SCTP_INITMSG`; path supervision is the kernel's.
//!
//! Limits: a full receive queue of one association stops reading for all associations of the
//! socket (one socket, one kernel queue); `Config::sctp_port` and `max_sctp_packet_size` are
//! UDP-encapsulation settings and do not apply (the kernel discovers the path MTU).
//!
//! Layout: `sys` is the raw layer (linux/sctp.h constants and structs, socket options,
//! control-message encoding, notification parsing, the `sendmsg`/`recvmsg` calls),
//! stateless and without tokio, so its byte layouts are unit-tested alone; `driver` is the
//! tokio side (the per-socket task, association handles, connects, send budgets,
//! back-pressure towards the application).

mod driver;
mod sys;

pub(crate) use driver::{KernelSctpConnector, KernelSctpEndpoint, KernelSender, connect};

/// Probes `socket(AF_INET, SOCK_SEQPACKET, IPPROTO_SCTP)` (the one-to-many style of
/// RFC 6458); `Err` carries the OS reason, e.g. "Protocol not supported".
pub fn probe() -> Result<(), String> {
    match sys::sctp_socket(libc::AF_INET) {
        Ok(_socket) => Ok(()),
        Err(error) => Err(format!(
            "socket(AF_INET, SOCK_SEQPACKET, IPPROTO_SCTP) failed: {error}"
        )),
    }
}

/// Whether this host can create kernel SCTP sockets.
pub fn is_available() -> bool {
    probe().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asking_for_kernel_sctp_without_it_names_the_reason() {
        match probe() {
            Ok(()) => println!("kernel SCTP present: nothing to check here"),
            Err(reason) => {
                let error = sys::endpoint_socket(libc::AF_INET).expect_err("probe failed");
                let text = error.to_string();
                assert!(text.contains("kernel SCTP unavailable"), "{text}");
                println!("SKIPPED kernel socket: {reason}; error reads: {text}");
            }
        }
    }
}
