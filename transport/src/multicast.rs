//! UDP sockets for RSerPool's announce groups (ASAP Server Announce, ENRP
//! Presence): several listeners on one host (a collector, an exporter, a
//! registrar, RSPLIB) must all receive the same datagrams.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

/// A UDP socket receiving the datagrams sent to `address`.
///
/// For a multicast group it binds the group address itself, so only that
/// group's datagrams arrive (not unicast to the same port, e.g. a
/// registrar's SCTP over UDP), and joins the group on the interface the
/// kernel's route to the group picks. For a unicast address it simply binds
/// it. SO_REUSEADDR either way, so every process of the host that listens
/// to the announces gets its copy. Must be called inside a tokio runtime.
pub fn bind_receiver(address: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    match address.ip() {
        IpAddr::V4(group) if group.is_multicast() => {
            socket.join_multicast_v4(&group, &Ipv4Addr::UNSPECIFIED)?;
        }
        IpAddr::V6(group) if group.is_multicast() => socket.join_multicast_v6(&group, 0)?,
        _ => {}
    }
    tokio::net::UdpSocket::from_std(socket.into())
}

/// A UDP socket for sending to `destination` (a group or a unicast
/// address) from an ephemeral port, with multicast TTL (IPv4) or hop limit
/// (IPv6) `ttl`. Must be called inside a tokio runtime.
pub async fn bind_sender(
    destination: SocketAddr,
    ttl: u32,
) -> std::io::Result<tokio::net::UdpSocket> {
    let local: SocketAddr = if destination.is_ipv6() {
        "[::]:0".parse().expect("literal")
    } else {
        "0.0.0.0:0".parse().expect("literal")
    };
    let socket = tokio::net::UdpSocket::bind(local).await?;
    if destination.is_ipv4() {
        socket.set_multicast_ttl_v4(ttl)?;
    } else {
        socket2::SockRef::from(&socket).set_multicast_hops_v6(ttl)?;
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two receivers on one unicast address and port: SO_REUSEADDR lets
    /// the second bind where a plain socket would fail.
    #[tokio::test]
    async fn two_receivers_share_one_address() {
        let first = bind_receiver("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = first.local_addr().unwrap();
        let second = bind_receiver(address).unwrap();
        assert_eq!(second.local_addr().unwrap(), address);
        assert!(std::net::UdpSocket::bind(address).is_err());
    }
}
