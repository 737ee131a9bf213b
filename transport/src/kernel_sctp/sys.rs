//! The raw layer of kernel SCTP: the linux/sctp.h constants and structs the libc crate
//! lacks, socket creation and options, `SCTP_SNDRCV`/`SCTP_RCVINFO` control messages,
//! notification parsing and the `bind`/`listen`/`connect`/`sendmsg`/`recvmsg` calls
//! (socket addresses are [`crate::sockaddr`]'s, shared with the UDP listener). Stateless
//! and without tokio: [`super::driver`] owns the socket and decides; everything with a
//! byte layout is here, where the tests check it against the kernel headers without a
//! socket.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use libc::c_int;

use crate::sockaddr::{from_raw, to_raw};
use crate::{Config, Reliability, TransportError};

// Constants of linux/sctp.h (and linux/socket.h) that the libc crate does not export.
/// linux/socket.h: `#define SOL_SCTP 132`.
const SOL_SCTP: c_int = 132;
/// linux/sctp.h: `#define SCTP_EVENT 127` (socket option, struct sctp_event).
const SCTP_EVENT: c_int = 127;
/// linux/sctp.h: `enum sctp_sn_type`, `SCTP_ASSOC_CHANGE = SCTP_SN_TYPE_BASE + 1` (1 << 15).
const SCTP_ASSOC_CHANGE: u16 = 0x8001;
/// linux/sctp.h `enum sctp_sac_state`.
pub(super) const SCTP_COMM_UP: u16 = 0;
pub(super) const SCTP_COMM_LOST: u16 = 1;
pub(super) const SCTP_RESTART: u16 = 2;
pub(super) const SCTP_SHUTDOWN_COMP: u16 = 3;
pub(super) const SCTP_CANT_STR_ASSOC: u16 = 4;
/// linux/sctp.h `enum sctp_spp_flags`: `SPP_HB_ENABLE = 1 << 0`, `SPP_PMTUD_ENABLE = 1 << 3`.
const SPP_HB_ENABLE: u32 = 1 << 0;
const SPP_PMTUD_ENABLE: u32 = 1 << 3;
/// linux/sctp.h: `sizeof(struct sctp_paddrparams)`, a packed struct aligned to 4:
/// assoc_id 0, address 4 (sockaddr_storage, 128), hbinterval 132, pathmaxrxt 136,
/// pathmtu 138, sackdelay 142, flags 146, ipv6_flowlabel 150, dscp 154, padding 155.
const SCTP_PADDRPARAMS_LEN: usize = 156;
/// linux/sctp.h: `struct sctp_assoc_change` up to `sac_info` (the fixed part).
const SCTP_ASSOC_CHANGE_LEN: usize = 20;
/// `sctp_assoc_t` for "all future associations" (libc: `SCTP_FUTURE_ASSOC`).
const FUTURE_ASSOC: i32 = libc::SCTP_FUTURE_ASSOC;

/// Streams we ask for in each direction (the kernel's default is 10).
const STREAMS: u16 = 256;

/// linux/sctp.h `struct sctp_event`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct SctpEvent {
    se_assoc_id: i32,
    se_type: u16,
    se_on: u8,
}

/// linux/sctp.h `struct sctp_rtoinfo` (milliseconds).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct SctpRtoinfo {
    srto_assoc_id: i32,
    srto_initial: u32,
    srto_max: u32,
    srto_min: u32,
}

/// linux/sctp.h `struct sctp_assocparams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct SctpAssocparams {
    sasoc_assoc_id: i32,
    sasoc_asocmaxrxt: u16,
    sasoc_number_peer_destinations: u16,
    sasoc_peer_rwnd: u32,
    sasoc_local_rwnd: u32,
    sasoc_cookie_life: u32,
}

pub(super) fn sctp_socket(family: c_int) -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; a returned descriptor is owned by the OwnedFd at once.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::IPPROTO_SCTP,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The socket for an endpoint, with a clear error when the host has no kernel SCTP.
pub(super) fn endpoint_socket(family: c_int) -> Result<OwnedFd, TransportError> {
    sctp_socket(family).map_err(|error| match error.raw_os_error() {
        Some(libc::EPROTONOSUPPORT | libc::ESOCKTNOSUPPORT | libc::EAFNOSUPPORT) => {
            TransportError::KernelSctpUnavailable(format!(
                "socket(SOCK_SEQPACKET, IPPROTO_SCTP) failed: {error} (is the sctp kernel \
                 module loaded? TransportKind::SctpOverUdp needs no kernel support)"
            ))
        }
        _ => TransportError::Io(error),
    })
}

fn set_option<T: Copy>(fd: RawFd, level: c_int, name: c_int, value: &T) -> std::io::Result<()> {
    set_option_bytes(fd, level, name, (value as *const T).cast(), size_of::<T>())
}

fn set_option_bytes(
    fd: RawFd,
    level: c_int,
    name: c_int,
    value: *const libc::c_void,
    len: usize,
) -> std::io::Result<()> {
    // SAFETY: `value` points to `len` readable bytes owned by the caller for the call.
    let rc = unsafe { libc::setsockopt(fd, level, name, value, len as libc::socklen_t) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn millis_u32(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis())
        .unwrap_or(u32::MAX)
        .max(1)
}

/// `struct sctp_paddrparams` for all future associations: heartbeats every
/// `heartbeat_interval`, `Path.Max.Retrans`, path MTU discovery on.
fn paddrparams(config: &Config) -> [u8; SCTP_PADDRPARAMS_LEN] {
    let mut raw = [0u8; SCTP_PADDRPARAMS_LEN];
    raw[0..4].copy_from_slice(&FUTURE_ASSOC.to_ne_bytes());
    // spp_address stays zeroed: "every address of the association".
    raw[132..136].copy_from_slice(&millis_u32(config.heartbeat_interval).to_ne_bytes());
    let path_max = u16::try_from(config.max_path_retransmissions).unwrap_or(u16::MAX);
    raw[136..138].copy_from_slice(&path_max.to_ne_bytes());
    raw[146..150].copy_from_slice(&(SPP_HB_ENABLE | SPP_PMTUD_ENABLE).to_ne_bytes());
    raw
}

/// Applies the [`Config`] to a fresh socket, before any association exists.
pub(super) fn configure(fd: RawFd, config: &Config) -> std::io::Result<()> {
    let rto = SctpRtoinfo {
        srto_assoc_id: FUTURE_ASSOC,
        srto_initial: millis_u32(config.rto_initial),
        srto_max: millis_u32(config.rto_max),
        srto_min: millis_u32(config.rto_min),
    };
    set_option(fd, SOL_SCTP, libc::SCTP_RTOINFO, &rto)?;
    let assoc = SctpAssocparams {
        sasoc_assoc_id: FUTURE_ASSOC,
        sasoc_asocmaxrxt: u16::try_from(config.max_association_retransmissions).unwrap_or(u16::MAX),
        ..SctpAssocparams::default()
    };
    set_option(fd, SOL_SCTP, libc::SCTP_ASSOCINFO, &assoc)?;
    let params = paddrparams(config);
    set_option_bytes(
        fd,
        SOL_SCTP,
        libc::SCTP_PEER_ADDR_PARAMS,
        params.as_ptr().cast(),
        params.len(),
    )?;
    let init = libc::sctp_initmsg {
        sinit_num_ostreams: STREAMS,
        sinit_max_instreams: STREAMS,
        // Attempts, not retransmissions: the first INIT counts.
        sinit_max_attempts: u16::try_from(config.max_init_retransmissions + 1).unwrap_or(u16::MAX),
        sinit_max_init_timeo: u16::try_from(config.rto_max.as_millis()).unwrap_or(u16::MAX),
    };
    set_option(fd, SOL_SCTP, libc::SCTP_INITMSG, &init)?;
    // Small control messages (ASAP, cookies) must not wait for Nagle-style bundling.
    set_option(fd, SOL_SCTP, libc::SCTP_NODELAY, &1 as &c_int)?;
    // Stream, PPID, flags and association of each message as an SCTP_RCVINFO cmsg.
    set_option(fd, SOL_SCTP, libc::SCTP_RECVRCVINFO, &1 as &c_int)?;
    subscribe_assoc_change(fd)?;
    let buffer = c_int::try_from(config.send_buffer_bytes).unwrap_or(c_int::MAX);
    // Best effort: the kernel caps these at net.core.[rw]mem_max.
    let _ = set_option(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, &buffer);
    let _ = set_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &buffer);
    Ok(())
}

/// Association change notifications: SCTP_EVENT (Linux 5.0 and later), else the older
/// SCTP_EVENTS with `struct sctp_event_subscribe`, whose second byte is
/// `sctp_association_event` (a shorter option length is accepted by every kernel).
fn subscribe_assoc_change(fd: RawFd) -> std::io::Result<()> {
    let event = SctpEvent {
        se_assoc_id: FUTURE_ASSOC,
        se_type: SCTP_ASSOC_CHANGE,
        se_on: 1,
    };
    match set_option(fd, SOL_SCTP, SCTP_EVENT, &event) {
        Err(error) if error.raw_os_error() == Some(libc::ENOPROTOOPT) => {
            let subscribe: [u8; 2] = [0, 1];
            set_option_bytes(
                fd,
                SOL_SCTP,
                libc::SCTP_EVENTS,
                subscribe.as_ptr().cast(),
                2,
            )
        }
        other => other,
    }
}

// ---------------------------------------------------------------------------------------
// Pure parts: addresses, control messages, notifications.
// ---------------------------------------------------------------------------------------

/// Same transport address, whether or not one side is an IPv4-mapped IPv6 address (an
/// IPv6 socket reports IPv4 peers that way).
pub(super) fn same_peer(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

/// What goes into the `SCTP_SNDRCV` control message of one `sendmsg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outgoing {
    Data {
        stream: u16,
        ppid: u32,
        unordered: bool,
        reliability: Reliability,
    },
    /// Graceful shutdown (SHUTDOWN once queued data is acknowledged).
    Eof,
    Abort,
}

fn sndrcvinfo(outgoing: Outgoing, assoc_id: i32) -> libc::sctp_sndrcvinfo {
    // SAFETY: plain old data; all-zero is a valid value.
    let mut info: libc::sctp_sndrcvinfo = unsafe { std::mem::zeroed() };
    info.sinfo_assoc_id = assoc_id;
    match outgoing {
        Outgoing::Data {
            stream,
            ppid,
            unordered,
            reliability,
        } => {
            info.sinfo_stream = stream;
            // The kernel copies the PPID into the DATA chunk as it is: network order.
            info.sinfo_ppid = ppid.to_be();
            let mut flags = if unordered { libc::SCTP_UNORDERED } else { 0 };
            // Linux reads the PR-SCTP policy from sinfo_flags (SCTP_PR_SCTP_MASK) and its
            // value from sinfo_timetolive: milliseconds for TTL, a count for RTX.
            match reliability {
                Reliability::Reliable => {}
                Reliability::LimitedRetransmissions(count) => {
                    flags |= libc::SCTP_PR_SCTP_RTX;
                    info.sinfo_timetolive = count;
                }
                Reliability::Lifetime(lifetime) => {
                    flags |= libc::SCTP_PR_SCTP_TTL;
                    info.sinfo_timetolive = millis_u32(lifetime);
                }
            }
            info.sinfo_flags = flags as u16;
        }
        Outgoing::Eof => info.sinfo_flags = libc::SCTP_EOF as u16,
        Outgoing::Abort => info.sinfo_flags = libc::SCTP_ABORT as u16,
    }
    info
}

/// Room for one control message with an `sctp_sndrcvinfo` or `sctp_rcvinfo` (and spare),
/// aligned for `cmsghdr`.
#[repr(C, align(8))]
struct ControlBuffer([u8; 128]);

impl ControlBuffer {
    fn new() -> Self {
        ControlBuffer([0; 128])
    }
}

/// Writes one `SOL_SCTP`/`SCTP_SNDRCV` control message into `buffer`; returns its length
/// for `msg_controllen`.
fn write_sndrcv_cmsg(buffer: &mut ControlBuffer, info: &libc::sctp_sndrcvinfo) -> usize {
    let data_len = size_of::<libc::sctp_sndrcvinfo>() as u32;
    // SAFETY: CMSG_SPACE/CMSG_LEN are arithmetic; the header and data are written inside
    // `buffer` (128 bytes > CMSG_SPACE(32) = 48), which is aligned for cmsghdr.
    unsafe {
        let space = libc::CMSG_SPACE(data_len) as usize;
        assert!(space <= buffer.0.len());
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_control = buffer.0.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = SOL_SCTP;
        (*cmsg).cmsg_type = libc::SCTP_SNDRCV;
        (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast(), *info);
        space
    }
}

/// Stream, PPID, flags and association of a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReceiveInfo {
    pub(super) stream: u16,
    pub(super) ppid: u32,
    pub(super) unordered: bool,
    pub(super) assoc_id: i32,
}

/// Finds the `SCTP_RCVINFO` (or legacy `SCTP_SNDRCV`) control message of a `recvmsg`.
///
/// # Safety
/// `msg.msg_control`/`msg_controllen` must describe the control buffer `recvmsg` filled.
unsafe fn parse_receive_cmsgs(msg: &libc::msghdr) -> Option<ReceiveInfo> {
    // SAFETY: the CMSG_* walk stays within the buffer (caller's contract); each payload
    // is read unaligned and only when cmsg_len covers it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            let header = *cmsg;
            let data = libc::CMSG_DATA(cmsg);
            let available = (header.cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
            if header.cmsg_level == SOL_SCTP {
                if header.cmsg_type == libc::SCTP_RCVINFO
                    && available >= size_of::<libc::sctp_rcvinfo>()
                {
                    let info: libc::sctp_rcvinfo = std::ptr::read_unaligned(data.cast());
                    return Some(ReceiveInfo {
                        stream: info.rcv_sid,
                        ppid: u32::from_be(info.rcv_ppid),
                        unordered: c_int::from(info.rcv_flags) & libc::SCTP_UNORDERED != 0,
                        assoc_id: info.rcv_assoc_id,
                    });
                }
                if header.cmsg_type == libc::SCTP_SNDRCV
                    && available >= size_of::<libc::sctp_sndrcvinfo>()
                {
                    let info: libc::sctp_sndrcvinfo = std::ptr::read_unaligned(data.cast());
                    return Some(ReceiveInfo {
                        stream: info.sinfo_stream,
                        ppid: u32::from_be(info.sinfo_ppid),
                        unordered: c_int::from(info.sinfo_flags) & libc::SCTP_UNORDERED != 0,
                        assoc_id: info.sinfo_assoc_id,
                    });
                }
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
        None
    }
}

/// A notification we act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Notification {
    AssocChange {
        state: u16,
        error: u16,
        assoc_id: i32,
    },
    /// Any other notification type (we subscribe to none, but tolerate them).
    Other(u16),
}

/// Parses a notification (the data of a `recvmsg` with `MSG_NOTIFICATION`), laid out as
/// linux/sctp.h `struct sctp_assoc_change`: type u16, flags u16, length u32, state u16,
/// error u16, outbound u16, inbound u16, assoc_id i32, all in host order.
pub(super) fn parse_notification(data: &[u8]) -> Result<Notification, &'static str> {
    let u16_at = |at: usize| u16::from_ne_bytes([data[at], data[at + 1]]);
    if data.len() < 8 {
        return Err("notification shorter than its header");
    }
    let kind = u16_at(0);
    let length = u32::from_ne_bytes([data[4], data[5], data[6], data[7]]) as usize;
    if length > data.len() {
        return Err("notification truncated");
    }
    if kind != SCTP_ASSOC_CHANGE {
        return Ok(Notification::Other(kind));
    }
    if length < SCTP_ASSOC_CHANGE_LEN {
        return Err("SCTP_ASSOC_CHANGE shorter than its fixed part");
    }
    Ok(Notification::AssocChange {
        state: u16_at(8),
        error: u16_at(10),
        assoc_id: i32::from_ne_bytes([data[16], data[17], data[18], data[19]]),
    })
}

/// One `recvmsg` worth of input.
pub(super) enum Received {
    Data {
        info: Option<ReceiveInfo>,
        end_of_record: bool,
        len: usize,
    },
    Notification {
        from: Option<SocketAddr>,
        len: usize,
    },
}

pub(super) fn local_address(fd: RawFd) -> std::io::Result<SocketAddr> {
    // SAFETY: zeroed sockaddr_storage is valid; getsockname writes at most `len` bytes.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockname(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    from_raw(&storage, len)
        .ok_or_else(|| std::io::Error::other("getsockname returned an unknown family"))
}

/// bind(2) to `local`.
pub(super) fn bind(fd: RawFd, local: &SocketAddr) -> std::io::Result<()> {
    let (raw, len) = to_raw(local);
    // SAFETY: `raw`/`len` describe a valid socket address for this family.
    if unsafe { libc::bind(fd, (&raw as *const libc::sockaddr_storage).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// listen(2): the socket accepts associations.
pub(super) fn listen(fd: RawFd, backlog: c_int) -> std::io::Result<()> {
    // SAFETY: plain listen(2) on a socket the caller owns.
    if unsafe { libc::listen(fd, backlog) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Non-blocking connect(2) to `remote`: `Ok` once the INIT is under way (EINPROGRESS);
/// the outcome arrives as an `SCTP_ASSOC_CHANGE` notification.
pub(super) fn start_connect(fd: RawFd, remote: &SocketAddr) -> std::io::Result<()> {
    let (raw, len) = to_raw(remote);
    // SAFETY: `raw`/`len` describe a valid socket address.
    let rc = unsafe { libc::connect(fd, (&raw as *const libc::sockaddr_storage).cast(), len) };
    let error = std::io::Error::last_os_error();
    if rc != 0 && error.raw_os_error() != Some(libc::EINPROGRESS) {
        return Err(error);
    }
    Ok(())
}

pub(super) fn send_one(
    fd: RawFd,
    assoc_id: i32,
    outgoing: Outgoing,
    payload: &[u8],
) -> std::io::Result<()> {
    let info = sndrcvinfo(outgoing, assoc_id);
    let mut control = ControlBuffer::new();
    let control_len = write_sndrcv_cmsg(&mut control, &info);
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: zeroed msghdr is valid; every pointer set below outlives the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // No destination address: the association id in the cmsg selects the association.
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control_len as _;
    // SAFETY: `msg` describes live buffers; the kernel only reads them.
    let sent = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    if sent < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub(super) fn receive_one(fd: RawFd, buffer: &mut [u8]) -> std::io::Result<Received> {
    // SAFETY: zeroed sockaddr_storage/msghdr are valid values.
    let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut control = ControlBuffer::new();
    let mut iov = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: buffer.len(),
    };
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len() as _;
    // SAFETY: `msg` describes live, writable buffers of the lengths given.
    let received = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if received < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let len = received as usize;
    let peer = from_raw(&from, msg.msg_namelen);
    if msg.msg_flags & libc::MSG_NOTIFICATION != 0 {
        return Ok(Received::Notification { from: peer, len });
    }
    // SAFETY: msg_control/msg_controllen now describe what recvmsg wrote into `control`.
    let info = unsafe { parse_receive_cmsgs(&msg) };
    Ok(Received::Data {
        info,
        end_of_record: msg.msg_flags & libc::MSG_EOR != 0,
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes and field offsets of linux/sctp.h (x86_64 and aarch64 alike: no pointers).
    #[test]
    fn option_structs_match_linux_sctp_h() {
        assert_eq!(size_of::<SctpEvent>(), 8);
        assert_eq!(size_of::<SctpRtoinfo>(), 16);
        assert_eq!(size_of::<SctpAssocparams>(), 20);
        assert_eq!(std::mem::offset_of!(SctpAssocparams, sasoc_peer_rwnd), 8);
        assert_eq!(size_of::<libc::sctp_initmsg>(), 8);
        assert_eq!(size_of::<libc::sctp_sndrcvinfo>(), 32);
        assert_eq!(std::mem::offset_of!(libc::sctp_sndrcvinfo, sinfo_ppid), 8);
        assert_eq!(
            std::mem::offset_of!(libc::sctp_sndrcvinfo, sinfo_timetolive),
            16
        );
        assert_eq!(
            std::mem::offset_of!(libc::sctp_sndrcvinfo, sinfo_assoc_id),
            28
        );
        assert_eq!(size_of::<libc::sctp_rcvinfo>(), 28);
        assert_eq!(std::mem::offset_of!(libc::sctp_rcvinfo, rcv_assoc_id), 24);
        assert_eq!(size_of::<libc::sockaddr_storage>(), 128);
    }

    #[test]
    fn paddrparams_puts_fields_at_the_packed_offsets() {
        let config = Config {
            heartbeat_interval: Duration::from_millis(1234),
            max_path_retransmissions: 7,
            ..Config::default()
        };
        let raw = paddrparams(&config);
        assert_eq!(raw.len(), 156);
        assert_eq!(
            i32::from_ne_bytes(raw[0..4].try_into().unwrap()),
            FUTURE_ASSOC
        );
        assert!(raw[4..132].iter().all(|&b| b == 0), "address: all of them");
        assert_eq!(u32::from_ne_bytes(raw[132..136].try_into().unwrap()), 1234);
        assert_eq!(u16::from_ne_bytes(raw[136..138].try_into().unwrap()), 7);
        assert_eq!(
            u32::from_ne_bytes(raw[138..142].try_into().unwrap()),
            0,
            "pathmtu"
        );
        assert_eq!(
            u32::from_ne_bytes(raw[142..146].try_into().unwrap()),
            0,
            "sackdelay"
        );
        assert_eq!(
            u32::from_ne_bytes(raw[146..150].try_into().unwrap()),
            SPP_HB_ENABLE | SPP_PMTUD_ENABLE
        );
    }

    #[test]
    fn sndrcvinfo_carries_stream_ppid_flags_and_pr_sctp() {
        let data = |unordered, reliability| Outgoing::Data {
            stream: 3,
            ppid: 11,
            unordered,
            reliability,
        };
        let info = sndrcvinfo(
            data(true, Reliability::Lifetime(Duration::from_millis(500))),
            42,
        );
        assert_eq!(info.sinfo_stream, 3);
        assert_eq!(
            info.sinfo_ppid.to_ne_bytes(),
            [0, 0, 0, 11],
            "network order"
        );
        assert_eq!(
            c_int::from(info.sinfo_flags),
            libc::SCTP_UNORDERED | libc::SCTP_PR_SCTP_TTL
        );
        assert_eq!(info.sinfo_timetolive, 500);
        assert_eq!(info.sinfo_assoc_id, 42);
        let info = sndrcvinfo(data(false, Reliability::LimitedRetransmissions(2)), 1);
        assert_eq!(c_int::from(info.sinfo_flags), libc::SCTP_PR_SCTP_RTX);
        assert_eq!(info.sinfo_timetolive, 2);
        let info = sndrcvinfo(data(false, Reliability::Reliable), 1);
        assert_eq!((info.sinfo_flags, info.sinfo_timetolive), (0, 0));
        assert_eq!(
            c_int::from(sndrcvinfo(Outgoing::Eof, 9).sinfo_flags),
            libc::SCTP_EOF
        );
        assert_eq!(
            c_int::from(sndrcvinfo(Outgoing::Abort, 9).sinfo_flags),
            libc::SCTP_ABORT
        );
    }

    /// Walks a control buffer the way the kernel lays it out.
    fn msghdr_over(control: &mut ControlBuffer, len: usize) -> libc::msghdr {
        // SAFETY: zeroed msghdr is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = len as _;
        msg
    }

    #[test]
    fn sndrcv_cmsg_round_trips_through_the_receive_parser() {
        let mut control = ControlBuffer::new();
        let info = sndrcvinfo(
            Outgoing::Data {
                stream: 7,
                ppid: 0x1234_5678,
                unordered: true,
                reliability: Reliability::Reliable,
            },
            -5,
        );
        let len = write_sndrcv_cmsg(&mut control, &info);
        assert_eq!(len, 16 + 32, "CMSG_SPACE(sizeof(struct sctp_sndrcvinfo))");
        // cmsghdr: len (size_t), level, type.
        assert_eq!(control.0[8..12], SOL_SCTP.to_ne_bytes());
        assert_eq!(control.0[12..16], libc::SCTP_SNDRCV.to_ne_bytes());
        let msg = msghdr_over(&mut control, len);
        // SAFETY: the buffer holds the control message just written.
        let parsed = unsafe { parse_receive_cmsgs(&msg) };
        assert_eq!(
            parsed,
            Some(ReceiveInfo {
                stream: 7,
                ppid: 0x1234_5678,
                unordered: true,
                assoc_id: -5,
            })
        );
    }

    #[test]
    fn rcvinfo_cmsg_is_parsed_and_foreign_cmsgs_are_skipped() {
        let mut control = ControlBuffer::new();
        // SAFETY: building two control messages inside the aligned 128-byte buffer.
        let len = unsafe {
            let first_space = libc::CMSG_SPACE(4) as usize;
            let second_space = libc::CMSG_SPACE(size_of::<libc::sctp_rcvinfo>() as u32) as usize;
            let msg = msghdr_over(&mut control, first_space + second_space);
            let first = libc::CMSG_FIRSTHDR(&msg);
            (*first).cmsg_level = libc::SOL_SOCKET;
            (*first).cmsg_type = libc::SCM_RIGHTS;
            (*first).cmsg_len = libc::CMSG_LEN(4) as _;
            let second = libc::CMSG_NXTHDR(&msg, first);
            (*second).cmsg_level = SOL_SCTP;
            (*second).cmsg_type = libc::SCTP_RCVINFO;
            (*second).cmsg_len = libc::CMSG_LEN(size_of::<libc::sctp_rcvinfo>() as u32) as _;
            let mut info: libc::sctp_rcvinfo = std::mem::zeroed();
            info.rcv_sid = 2;
            info.rcv_ppid = 12u32.to_be();
            info.rcv_flags = 0;
            info.rcv_assoc_id = 77;
            std::ptr::write_unaligned(libc::CMSG_DATA(second).cast(), info);
            first_space + second_space
        };
        let msg = msghdr_over(&mut control, len);
        // SAFETY: the buffer holds the control messages just written.
        let parsed = unsafe { parse_receive_cmsgs(&msg) };
        assert_eq!(
            parsed,
            Some(ReceiveInfo {
                stream: 2,
                ppid: 12,
                unordered: false,
                assoc_id: 77,
            })
        );
        let empty = msghdr_over(&mut control, 0);
        // SAFETY: an empty control buffer.
        assert_eq!(unsafe { parse_receive_cmsgs(&empty) }, None);
    }

    fn assoc_change(state: u16, error: u16, assoc_id: i32) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&SCTP_ASSOC_CHANGE.to_ne_bytes());
        raw.extend_from_slice(&0u16.to_ne_bytes());
        raw.extend_from_slice(&20u32.to_ne_bytes());
        raw.extend_from_slice(&state.to_ne_bytes());
        raw.extend_from_slice(&error.to_ne_bytes());
        raw.extend_from_slice(&10u16.to_ne_bytes());
        raw.extend_from_slice(&10u16.to_ne_bytes());
        raw.extend_from_slice(&assoc_id.to_ne_bytes());
        raw
    }

    #[test]
    fn assoc_change_notifications_are_parsed() {
        assert_eq!(
            parse_notification(&assoc_change(SCTP_COMM_UP, 0, 3)),
            Ok(Notification::AssocChange {
                state: SCTP_COMM_UP,
                error: 0,
                assoc_id: 3,
            })
        );
        assert_eq!(
            parse_notification(&assoc_change(SCTP_COMM_LOST, 12, -1)),
            Ok(Notification::AssocChange {
                state: SCTP_COMM_LOST,
                error: 12,
                assoc_id: -1,
            })
        );
        // SCTP_SHUTDOWN_EVENT (0x8005): 12 bytes, tolerated.
        let mut shutdown = Vec::new();
        shutdown.extend_from_slice(&0x8005u16.to_ne_bytes());
        shutdown.extend_from_slice(&0u16.to_ne_bytes());
        shutdown.extend_from_slice(&12u32.to_ne_bytes());
        shutdown.extend_from_slice(&3i32.to_ne_bytes());
        assert_eq!(
            parse_notification(&shutdown),
            Ok(Notification::Other(0x8005))
        );
    }

    #[test]
    fn malformed_notifications_are_errors_not_panics() {
        assert!(parse_notification(&[]).is_err());
        assert!(parse_notification(&[1, 0x80, 0, 0]).is_err());
        let whole = assoc_change(SCTP_COMM_UP, 0, 3);
        assert!(parse_notification(&whole[..12]).is_err(), "length says 20");
        let mut short = whole[..12].to_vec();
        short[4..8].copy_from_slice(&12u32.to_ne_bytes());
        assert!(
            parse_notification(&short).is_err(),
            "shorter than the fixed part"
        );
    }

    #[test]
    fn mapped_ipv4_peers_match_their_ipv4_address() {
        let v4: SocketAddr = "192.0.2.1:9899".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:9899".parse().unwrap();
        assert!(same_peer(v4, mapped));
        assert!(!same_peer(v4, "[::ffff:192.0.2.1]:9900".parse().unwrap()));
    }
}
