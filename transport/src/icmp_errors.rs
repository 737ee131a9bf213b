//! ICMP errors about our own SCTP-over-UDP packets, read from the socket's error queue
//! (Linux `IP_RECVERR` / `IPV6_RECVERR`, `recvmsg(MSG_ERRQUEUE)`).
//!
//! When a collector process dies, its host's kernel answers every packet we still send to
//! its UDP port with an ICMP port unreachable. The error queue gives us, per ICMP message,
//! where the packet was going and its first bytes: the SCTP common header, so the driver
//! can check the verification tag before it believes the message (RFC 6951 section 5.5: an
//! ICMP message that cannot be related to an association, or whose verification tag cannot
//! be checked, is discarded). RFC 9260 appendix C lets an implementation treat a
//! "protocol unreachable" (for SCTP over UDP: the port) as an ABORT; it may not *rely* on
//! ICMP, so path supervision stays as it was and ICMP only makes a dead process's end known
//! within a round trip instead of after the retransmission timers.
//!
//! Without this the queued errors were never read, and each one held receive-buffer space
//! (the kernel charges the error queue to the socket's receive buffer).

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

/// Bytes of the offending packet kept: more than the SCTP common header needs.
const PACKET_PREFIX: usize = 64;

/// One ICMP error the kernel queued for the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueuedIcmpError {
    /// Where the packet that caused it was going.
    pub destination: SocketAddr,
    /// The packet's first bytes (the UDP payload: an SCTP packet of ours).
    pub packet: Vec<u8>,
    /// ICMP "port unreachable" (ICMPv4 type 3 code 3, ICMPv6 type 1 code 4): nothing listens
    /// on the destination's UDP port.
    pub port_unreachable: bool,
}

/// Asks the kernel to queue ICMP errors for `socket` (IPv4 and, on an IPv6 socket, IPv6).
pub(crate) fn enable(socket: &std::net::UdpSocket) -> io::Result<()> {
    let ipv6 = socket.local_addr()?.is_ipv6();
    if ipv6 {
        set_option(socket, libc::IPPROTO_IPV6, libc::IPV6_RECVERR)?;
        // A dual-stack socket also sends to IPv4-mapped addresses; ignore failure on
        // IPv6-only sockets, where the IPv4 option does not apply.
        let _ = set_option(socket, libc::IPPROTO_IP, libc::IP_RECVERR);
    } else {
        set_option(socket, libc::IPPROTO_IP, libc::IP_RECVERR)?;
    }
    Ok(())
}

fn set_option(
    socket: &std::net::UdpSocket,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: valid fd owned by `socket`; the pointer and length describe a live c_int.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Takes one queued error without blocking; `WouldBlock` when the queue is empty.
pub(crate) fn receive(socket: &impl AsRawFd) -> io::Result<QueuedIcmpError> {
    let mut name = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut data = [0u8; PACKET_PREFIX];
    let mut control = [0u64; 64]; // 512 bytes, aligned for cmsghdr
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: zeroed msghdr is a valid "empty" value; every pointer set below stays alive
    // for the call.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_name = name.as_mut_ptr().cast();
    message.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: valid fd; `message` describes live buffers of the given lengths.
    let received = unsafe {
        libc::recvmsg(
            socket.as_raw_fd(),
            &mut message,
            libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
        )
    };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    let length = (received as usize).min(PACKET_PREFIX);
    // SAFETY: the kernel filled `msg_namelen` bytes of the storage.
    let destination = unsafe { socket_address(name.as_ptr(), message.msg_namelen) }
        .ok_or_else(|| io::Error::other("ICMP error without a destination address"))?;
    let mut port_unreachable = false;
    // SAFETY: walking the control messages the kernel wrote into `control`, with the libc
    // macros that respect `msg_controllen`.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&message);
        while !header.is_null() {
            let level = (*header).cmsg_level;
            let kind = (*header).cmsg_type;
            let is_v4 = level == libc::IPPROTO_IP && kind == libc::IP_RECVERR;
            let is_v6 = level == libc::IPPROTO_IPV6 && kind == libc::IPV6_RECVERR;
            if is_v4 || is_v6 {
                let error: libc::sock_extended_err =
                    std::ptr::read_unaligned(libc::CMSG_DATA(header).cast());
                port_unreachable |= match error.ee_origin {
                    libc::SO_EE_ORIGIN_ICMP => error.ee_type == 3 && error.ee_code == 3,
                    libc::SO_EE_ORIGIN_ICMP6 => error.ee_type == 1 && error.ee_code == 4,
                    _ => false,
                };
            }
            header = libc::CMSG_NXTHDR(&message, header);
        }
    }
    Ok(QueuedIcmpError {
        destination,
        packet: data[..length].to_vec(),
        port_unreachable,
    })
}

/// # Safety
/// `name` points to at least `length` initialised bytes of a socket address.
unsafe fn socket_address(
    name: *const libc::sockaddr_storage,
    length: libc::socklen_t,
) -> Option<SocketAddr> {
    let length = length as usize;
    // SAFETY: the caller vouches for the bytes; the family field comes first in every
    // socket address.
    let family = unsafe { (*name).ss_family } as libc::c_int;
    match family {
        libc::AF_INET if length >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: long enough for a sockaddr_in, which the family says it is.
            let v4: libc::sockaddr_in = unsafe { std::ptr::read_unaligned(name.cast()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)),
                u16::from_be(v4.sin_port),
            )))
        }
        libc::AF_INET6 if length >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: long enough for a sockaddr_in6, which the family says it is.
            let v6: libc::sockaddr_in6 = unsafe { std::ptr::read_unaligned(name.cast()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(v6.sin6_addr.s6_addr),
                u16::from_be(v6.sin6_port),
                v6.sin6_flowinfo,
                v6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A datagram to a closed local port comes back as a queued port unreachable naming
    /// that port and carrying the datagram's first bytes.
    #[test]
    fn a_closed_port_is_reported_with_the_packet() {
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let closed_addr = closed.local_addr().unwrap();
        drop(closed);
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        enable(&socket).unwrap();
        let packet = [0x12u8, 0x34, 0x0b, 0x59, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0];
        socket.send_to(&packet, closed_addr).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let error = loop {
            match receive(&socket) {
                Ok(error) => break error,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline, "no ICMP error queued");
                    std::thread::yield_now();
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(error.destination, closed_addr);
        assert!(error.port_unreachable);
        assert_eq!(error.packet, packet);
        assert_eq!(
            receive(&socket).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }
}
