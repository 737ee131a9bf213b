//! Takeover of a dead peer (RFC 5353 takeover procedure): Init Takeover to
//! the other peers; once every one acked (or at `takeover_expiry`) the dead
//! peer's PEs adopted and Takeover Server sent; and the handover of the
//! adopted PEs to the driver, an ASAP Endpoint Keep Alive with the Home
//! flag per PE ([`HomeKeepAlive`], [`Enrp::take_home_keep_alives`]).

use std::collections::HashSet;
use std::time::Instant;

use policies::PeId;
use protocol::rserpool::asap;
use protocol::rserpool::enrp::Body;
use protocol::rserpool::{PoolHandle, TransportAddress};

use super::{Enrp, Outgoing};
use crate::server::Server;

/// An ASAP Endpoint Keep Alive with the Home flag for a PE we adopted in a
/// takeover (RFC 5353 takeover procedure): for the driver to send to the PE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeKeepAlive {
    /// The PE's pool.
    pub pool_handle: PoolHandle,
    /// The PE.
    pub pe_identifier: PeId,
    /// The PE's ASAP transport from its registration (RFC 5354 §3.10);
    /// `None`: the PE gave none and cannot be reached, the grace applies.
    pub asap_transport: Option<TransportAddress>,
    /// The encoded Endpoint Keep Alive (H=1, our server id).
    pub payload: Vec<u8>,
}

#[derive(Debug)]
pub(super) struct Takeover {
    pub(super) awaiting_acks: HashSet<u32>,
    pub(super) expires: Instant,
}

impl Enrp {
    /// The Endpoint Keep Alives with the Home flag our takeovers produced
    /// since the last call, one per adopted PE, oldest first.
    pub fn take_home_keep_alives(&mut self) -> Vec<HomeKeepAlive> {
        std::mem::take(&mut self.home_keep_alives)
    }

    pub(super) fn start_takeover(
        &mut self,
        now: Instant,
        target: u32,
        server: &mut Server,
        out: &mut Vec<Outgoing>,
    ) {
        if self.acked_takeovers.contains_key(&target)
            || server.handlespace().elements_of_home(target).is_empty()
        {
            return;
        }
        let awaiting_acks: HashSet<u32> = self
            .alive_peers()
            .into_iter()
            .filter(|&id| id != target && self.peers[&id].address.is_some())
            .collect();
        if awaiting_acks.is_empty() {
            self.takeovers.insert(
                target,
                Takeover {
                    awaiting_acks,
                    expires: now,
                },
            );
            self.complete_takeover(now, target, server, out);
            return;
        }
        tracing::info!(
            target = format_args!("{target:#010x}"),
            peers = awaiting_acks.len(),
            "Init Takeover"
        );
        for &id in &awaiting_acks {
            self.send(
                id,
                Body::InitTakeover {
                    target_server_id: target,
                },
                out,
            );
        }
        self.takeovers.insert(
            target,
            Takeover {
                awaiting_acks,
                expires: now + self.config.takeover_expiry,
            },
        );
    }

    pub(super) fn complete_takeover(
        &mut self,
        now: Instant,
        target: u32,
        server: &mut Server,
        out: &mut Vec<Outgoing>,
    ) {
        if self.takeovers.remove(&target).is_none() {
            return;
        }
        let own_id = self.config.server_id;
        let adopted_elements = server.handlespace().elements_of_home(target);
        let adopted = server.adopt_elements_of(now, target, self.config.adopted_pe_grace);
        for (pool_handle, pe_identifier) in adopted_elements {
            let asap_transport = server
                .pool_element(&pool_handle, pe_identifier)
                .and_then(|element| element.asap_transport);
            if asap_transport.is_some() {
                self.counters.home_keep_alives += 1;
            } else {
                self.counters.adopted_unreachable += 1;
            }
            let payload = asap::Message::EndpointKeepAlive {
                home: true,
                server_identifier: own_id,
                pool_handle: pool_handle.clone(),
                pe_identifier: Some(pe_identifier),
            }
            .to_bytes();
            self.home_keep_alives.push(HomeKeepAlive {
                pool_handle,
                pe_identifier,
                asap_transport,
                payload,
            });
        }
        self.counters.takeovers += 1;
        self.counters.adopted_pes += adopted as u64;
        tracing::warn!(
            target = format_args!("{target:#010x}"),
            adopted,
            "took over a dead registrar's PEs"
        );
        for id in self.alive_peers() {
            if id != target {
                self.send(
                    id,
                    Body::TakeoverServer {
                        target_server_id: target,
                    },
                    out,
                );
            }
        }
    }
}
