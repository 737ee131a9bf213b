//! The PE's own ASAP endpoint (RFC 5354 §3.10 ASAP Transport): where a
//! registrar that is not the PE's current home reaches it.
//!
//! When a registrar dies, its ENRP peers take its PEs over (RFC 5353
//! takeover procedure); the new home then opens an association to each
//! adopted PE's ASAP transport and sends an Endpoint Keep Alive with the
//! Home ('H') flag, and from then on supervises the PE over that association
//! with ordinary keep-alives (RFC 5352 §3.5). A PE that answers them stays
//! in the handlespace even when no registrar of its own list is left to
//! re-register with; one that gave no ASAP transport is dropped once the
//! new home's adoption grace runs out.
//!
//! [`answer`] is the sans-IO part: which message gets which answer.
//! [`AsapEndpoint`] listens (SCTP over UDP or TCP) and answers on every
//! association a registrar opens, independently of the PE state machine:
//! that one keeps its own registrar association and hunt as before, so a
//! registrar list that still has a live entry re-registers there too.

use std::net::{IpAddr, SocketAddr};

use protocol::rserpool::asap::Message;
use protocol::rserpool::{
    ASAP_SCTP_PPID, DecodeError, PoolHandle, TransportAddress, TransportKind, TransportUse,
};
use tokio::task::JoinSet;
use transport::{Endpoint, Event};

use crate::driver::{RegistrarAddress, RegistrarTransport};

/// What a keep-alive on the PE's ASAP endpoint asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepAliveAnswer {
    /// The Endpoint Keep Alive Ack to send back on the same association.
    pub ack: Vec<u8>,
    /// The sender declared itself the PE's new home (Home flag).
    pub home: bool,
    /// The sender's server identifier.
    pub server_identifier: u32,
}

/// The answer to one message a registrar sent to the PE's ASAP endpoint:
/// an Endpoint Keep Alive for this PE (pool handle and, when present, PE
/// identifier match) gets a Keep Alive Ack; anything else gets nothing
/// (`Ok(None)`). Undecodable bytes are an error for the caller to count.
pub fn answer(
    pool_handle: &PoolHandle,
    pe_identifier: u32,
    bytes: &[u8],
) -> Result<Option<KeepAliveAnswer>, DecodeError> {
    let Message::EndpointKeepAlive {
        home,
        server_identifier,
        pool_handle: handle,
        pe_identifier: addressed,
    } = Message::decode(bytes)?
    else {
        return Ok(None);
    };
    if handle != *pool_handle || addressed.is_some_and(|id| id != pe_identifier) {
        return Ok(None);
    }
    let ack = Message::EndpointKeepAliveAck {
        pool_handle: handle,
        pe_identifier,
    }
    .to_bytes();
    Ok(Some(KeepAliveAnswer {
        ack,
        home,
        server_identifier,
    }))
}

/// A listening ASAP endpoint that answers registrars' keep-alives for one
/// PE. Dropping it stops listening and closes its associations.
pub struct AsapEndpoint {
    local_addr: SocketAddr,
    transport: RegistrarTransport,
    tasks: JoinSet<()>,
}

impl AsapEndpoint {
    /// Binds `listen` ("sctp:ADDR" = SCTP over UDP with SCTP port = UDP
    /// port, or "tcp:ADDR"; port 0 picks one) and starts answering.
    pub async fn bind(
        listen: RegistrarAddress,
        base: &transport::Config,
        pool_handle: PoolHandle,
        pe_identifier: u32,
    ) -> anyhow::Result<Self> {
        let mut config = listen.transport_config(base);
        let mut addr = listen.addr;
        if let RegistrarTransport::SctpOverUdp { .. } = listen.transport {
            // The SCTP port must equal the UDP port: with port 0, take a
            // free one first.
            if addr.port() == 0 {
                addr.set_port(std::net::UdpSocket::bind(addr)?.local_addr()?.port());
            }
            config.sctp_port = addr.port();
        }
        let mut endpoint = Endpoint::bind(config, addr).await?;
        let local_addr = endpoint.local_addr();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut associations = JoinSet::new();
            while let Some(association) = endpoint.accept().await {
                associations.spawn(serve(association, pool_handle.clone(), pe_identifier));
                // Reap finished ones so a long life does not pile them up.
                while associations.try_join_next().is_some() {}
            }
        });
        tracing::info!(%local_addr, "ASAP PE endpoint listening (takeover keep-alives)");
        Ok(Self {
            local_addr,
            transport: listen.transport,
            tasks,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The ASAP Transport parameter to register (RFC 5354 §3.10):
    /// `advertised_ip` where the listener is bound to a wildcard address.
    pub fn asap_transport(&self, advertised_ip: IpAddr) -> TransportAddress {
        let ip = if self.local_addr.ip().is_unspecified() {
            advertised_ip
        } else {
            self.local_addr.ip()
        };
        let kind = match self.transport {
            RegistrarTransport::Tcp => TransportKind::Tcp(TransportUse::DataOnly),
            RegistrarTransport::SctpOverUdp { .. } | RegistrarTransport::KernelSctp => {
                TransportKind::Sctp(TransportUse::DataOnly)
            }
        };
        TransportAddress {
            kind,
            port: self.local_addr.port(),
            addresses: vec![ip],
        }
    }
}

impl Drop for AsapEndpoint {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// Answers one registrar association until it ends.
async fn serve(mut association: transport::Association, pool_handle: PoolHandle, pe_id: u32) {
    let peer = association.remote_addr();
    while let Some(event) = association.recv().await {
        let message = match event {
            Event::Message(message) if message.ppid == ASAP_SCTP_PPID => message,
            Event::Message(message) => {
                tracing::debug!(%peer, ppid = message.ppid, "ASAP PE endpoint: non-ASAP message dropped");
                continue;
            }
            Event::Up | Event::Restarted => continue,
            Event::Down(_) | Event::Failed(_) => break,
        };
        match answer(&pool_handle, pe_id, &message.payload) {
            Ok(Some(answer)) => {
                if answer.home {
                    tracing::info!(
                        %peer,
                        server_identifier = format_args!("{:#010x}", answer.server_identifier),
                        "ASAP PE: a registrar took over our registration (Keep Alive with the Home flag)"
                    );
                    metrics::counter!("poolflow_asap_pe_home_keep_alives_total").increment(1);
                }
                let ack = transport::Message::new(0, ASAP_SCTP_PPID, answer.ack);
                if association.send(ack).await.is_err() {
                    break;
                }
            }
            Ok(None) => {
                tracing::debug!(%peer, "ASAP PE endpoint: message for another PE or not a keep-alive: ignored")
            }
            Err(error) => {
                metrics::counter!("poolflow_asap_pe_endpoint_malformed_total").increment(1);
                tracing::warn!(%peer, reason = error.reason(), "ASAP PE endpoint: malformed message: {error}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle() -> PoolHandle {
        PoolHandle(b"billing-collectors".to_vec())
    }

    fn keep_alive(home: bool, pool: &[u8], pe: Option<u32>) -> Vec<u8> {
        Message::EndpointKeepAlive {
            home,
            server_identifier: 0x1001,
            pool_handle: PoolHandle(pool.to_vec()),
            pe_identifier: pe,
        }
        .to_bytes()
    }

    #[test]
    fn keep_alive_for_this_pe_is_acked_and_home_reported() {
        let answer = answer(
            &handle(),
            7,
            &keep_alive(true, b"billing-collectors", Some(7)),
        )
        .unwrap()
        .expect("an answer");
        assert!(answer.home);
        assert_eq!(answer.server_identifier, 0x1001);
        assert_eq!(
            Message::decode(&answer.ack).unwrap(),
            Message::EndpointKeepAliveAck {
                pool_handle: handle(),
                pe_identifier: 7
            }
        );
        // No PE identifier (RFC 5352 §3.5: the keep-alive is for the pool):
        // answered with ours.
        let plain = super::answer(
            &handle(),
            7,
            &keep_alive(false, b"billing-collectors", None),
        )
        .unwrap()
        .unwrap();
        assert!(!plain.home);
    }

    #[test]
    fn other_pools_other_pes_and_other_messages_get_no_answer() {
        assert_eq!(
            answer(&handle(), 7, &keep_alive(true, b"other-pool", Some(7))).unwrap(),
            None
        );
        assert_eq!(
            answer(
                &handle(),
                7,
                &keep_alive(true, b"billing-collectors", Some(8))
            )
            .unwrap(),
            None
        );
        let not_a_keep_alive = Message::HandleResolution {
            pool_handle: handle(),
            items: None,
        }
        .to_bytes();
        assert_eq!(answer(&handle(), 7, &not_a_keep_alive).unwrap(), None);
        assert!(answer(&handle(), 7, &[0x07, 0, 0, 3]).is_err(), "truncated");
    }
}
