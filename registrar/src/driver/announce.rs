//! Server Announces (RFC 5352 section 2.2.1): which of our transports they
//! name, and the UDP socket that sends them to a group or to listed hosts.

use std::net::SocketAddr;

use anyhow::Context;
use protocol::rserpool::{TransportAddress, TransportKind as AsapTransportKind, TransportUse};
use tokio::net::UdpSocket;

use crate::config::RegistrarConfig;

/// Sends Server Announces over UDP (multicast or unicast).
pub(super) struct Announcer {
    socket: UdpSocket,
    destinations: Vec<SocketAddr>,
}

impl Announcer {
    pub(super) async fn new(config: &RegistrarConfig) -> anyhow::Result<Self> {
        let destinations = config
            .announce
            .addresses
            .iter()
            .map(|a| {
                a.parse::<SocketAddr>()
                    .with_context(|| format!("announce address {a:?}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let ipv6 = destinations.first().is_some_and(SocketAddr::is_ipv6);
        let socket = UdpSocket::bind(if ipv6 { "[::]:0" } else { "0.0.0.0:0" }).await?;
        if !ipv6 {
            socket.set_multicast_ttl_v4(config.announce.multicast_ttl)?;
        }
        Ok(Self {
            socket,
            destinations,
        })
    }

    pub(super) async fn send(&self, payload: &[u8]) {
        for destination in &self.destinations {
            if let Err(error) = self.socket.send_to(payload, destination).await {
                tracing::debug!(%destination, %error, "server announce not sent");
            }
        }
    }
}

/// Transports advertised in Server Announces: the configured ones, else the
/// TCP listener if it has a specific address (a wildcard address tells a
/// pool user nothing; the announce's source address then does).
pub(super) fn announce_transports(
    config: &RegistrarConfig,
    tcp_addr: Option<SocketAddr>,
) -> anyhow::Result<Vec<TransportAddress>> {
    if config.announce.transports.is_empty() {
        return Ok(tcp_addr
            .filter(|addr| !addr.ip().is_unspecified())
            .map(|addr| TransportAddress {
                kind: AsapTransportKind::Tcp(TransportUse::DataPlusControl),
                port: addr.port(),
                addresses: vec![addr.ip()],
            })
            .into_iter()
            .collect());
    }
    config
        .announce
        .transports
        .iter()
        .map(|text| parse_transport(text))
        .collect()
}

/// Parses "tcp:ADDRESS:PORT" or "sctp:ADDRESS:PORT".
pub(super) fn parse_transport(text: &str) -> anyhow::Result<TransportAddress> {
    let (protocol, address) = text
        .split_once(':')
        .with_context(|| format!("announce transport {text:?} is not PROTOCOL:ADDRESS:PORT"))?;
    let address: SocketAddr = address
        .parse()
        .with_context(|| format!("announce transport {text:?}: bad address"))?;
    let kind = match protocol {
        "tcp" => AsapTransportKind::Tcp(TransportUse::DataPlusControl),
        "sctp" => AsapTransportKind::Sctp(TransportUse::DataPlusControl),
        other => anyhow::bail!("announce transport protocol {other:?} is not tcp or sctp"),
    };
    Ok(TransportAddress {
        kind,
        port: address.port(),
        addresses: vec![address.ip()],
    })
}
