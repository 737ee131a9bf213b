//! The ENRP announce group (RFC 5353 §4): our signed Presence for it, and
//! peers learnt from the Presences of other registrars heard on it.

use std::net::SocketAddr;
use std::time::Instant;

use protocol::rserpool::enrp::Body;

use super::{Enrp, Liveness, Outgoing, Peer, body_name, socket_of};
use crate::server::Server;

impl Enrp {
    /// Our Presence for the ENRP announce group (RFC 5353 §4: a registrar
    /// may announce itself by multicast), signed like every message we
    /// send. `None` without an advertised address: an announce that names
    /// no address teaches a listener nothing.
    pub fn multicast_presence(
        &mut self,
        now: Instant,
        group: SocketAddr,
        server: &Server,
    ) -> Option<Vec<u8>> {
        self.config.advertised.as_ref()?;
        self.latest = self.latest.max(now);
        let mut out = Vec::new();
        let body = self.presence(server, false);
        self.emit(group, 0, body, &mut out);
        out.pop().map(|outgoing| outgoing.payload)
    }

    /// One datagram from the ENRP announce group. A Presence of a registrar
    /// we do not peer with (unknown, or declared dead) names its ENRP
    /// address in its Server Information: it is learnt like a peer from a
    /// List Response and sent our Presence with reply required, which
    /// starts the ordinary peering. Our own Presence looped back and those
    /// of live peers change nothing (the unicast association stays the
    /// judge of liveness); anything else is counted as malformed and
    /// logged with its source. Never panics.
    pub fn on_multicast(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &[u8],
        server: &mut Server,
    ) -> Vec<Outgoing> {
        self.latest = self.latest.max(now);
        let mut out = Vec::new();
        let Some(message) = self.authenticated_message(now, from, bytes, "multicast ENRP") else {
            return out;
        };
        let sender = message.sender_server_id;
        if sender == self.config.server_id {
            return out; // Our own announce, looped back.
        }
        let Body::Presence {
            server_information: Some(info),
            ..
        } = message.body
        else {
            tracing::warn!(%from, sender = format_args!("{sender:#010x}"), message = body_name(&message.body),
                "multicast ENRP message that is no Presence with Server Information dropped");
            self.count_malformed("multicast_not_presence");
            return out;
        };
        if sender == 0 || info.server_identifier != sender {
            tracing::warn!(%from, sender = format_args!("{sender:#010x}"),
                info = format_args!("{:#010x}", info.server_identifier),
                "multicast Presence whose sender is not the server it describes dropped");
            self.count_malformed("bad_sender_id");
            return out;
        }
        if !self.config.allowed_server_ids.is_empty()
            && !self.config.allowed_server_ids.contains(&sender)
        {
            self.count_malformed("peer_not_allowed");
            tracing::warn!(%from, sender = format_args!("{sender:#010x}"), "multicast Presence from a server id not in enrp.allowed_server_ids");
            return out;
        }
        self.counters.multicast_presences_heard += 1;
        let peering = self
            .peers
            .get(&sender)
            .is_some_and(|peer| peer.liveness != Liveness::Dead);
        if peering {
            return out;
        }
        let Some(address) = socket_of(&info.transport, from) else {
            self.count_malformed("multicast_presence_without_address");
            tracing::warn!(%from, sender = format_args!("{sender:#010x}"), "multicast Presence without an ENRP address dropped");
            return out;
        };
        tracing::info!(peer = format_args!("{sender:#010x}"), %address, %from, "learned ENRP peer from its multicast Presence");
        self.counters.multicast_peers_learned += 1;
        match self.peers.get_mut(&sender) {
            // Declared dead: probed again at its (possibly new) address on a
            // fresh association; it counts as alive once it answers.
            Some(peer) => {
                peer.address = Some(address);
                peer.reconnect = true;
            }
            None => {
                // Probed like any silent peer until it speaks.
                self.peers.insert(sender, Peer::new(Some(address), now));
            }
        }
        let presence = self.presence(server, true);
        self.send(sender, presence, &mut out);
        out
    }
}
