//! ENRP peering (RFC 5353), sans-IO: the registrar's peer table, heartbeat
//! cycle, handlespace synchronization and audit, and takeover.
//!
//! [`Enrp`] is fed ENRP messages (with the address they came from), the
//! clock, and the [`HomeChange`]s of the ASAP [`Server`]; it changes the
//! server's handlespace through the server's peer-element methods and
//! answers with [`Outgoing`] messages addressed to a peer's ENRP address.
//! It never reads a clock.
//!
//! How it works:
//! * Every `heartbeat_cycle` a Presence (with the PE checksum of our home
//!   PEs and our Server Information) goes to every configured and learned
//!   peer address.
//! * The first message from a peer we did not know, or had declared dead,
//!   makes us ask it for its home PEs (Handle Table Request with the W flag,
//!   paged with the M flag) and for its peer list (List Request).
//! * Every registration/removal of one of our home PEs goes to every peer in
//!   a Handle Update.
//! * Audit: a Presence whose checksum differs from the checksum of what we
//!   store for that peer triggers the same Handle Table Request; its last
//!   page also deletes what the peer no longer has.
//! * A peer silent for `max_time_last_heard` is asked for a Presence; silent
//!   `max_time_no_response` longer, it is dead: Init Takeover to the other
//!   peers, after every Ack (or `takeover_expiry`) we adopt its PEs and send
//!   Takeover Server. Of two registrars taking over the same peer, the one
//!   with the higher server id wins (the other acks and aborts).
//!
//! Authentication (`docs/enrp-security.md`): with
//! [`EnrpConfig::auth`] every message we send carries an HMAC-SHA-256
//! parameter over the whole message with a sequence taken from our wall
//! clock, and every message we receive must carry a valid one from a
//! configured key, a sequence within `max_clock_skew` of our clock and not
//! seen before from that sender; anything else is dropped before it is
//! decoded, counted by reason and logged with the peer. The wall clock is
//! passed in ([`Enrp::set_wall_clock`]) like every other time.
//!
//! Takeover and the adopted PEs (RFC 5353 takeover procedure, RFC 5352
//! §2.2.7): after a takeover we are the adopted PEs' home, and RFC 5353 has the new home
//! send each of them an ASAP Endpoint Keep Alive with the Home ('H') flag so
//! they learn it. [`Enrp::take_home_keep_alives`] hands those messages to
//! the driver, which opens an ASAP association to the PE's ASAP transport
//! (the one in its registration) and from then on supervises the PE over it
//! with ordinary keep-alives. A PE that registered without an ASAP transport
//! (collectors do unless `[pool] asap_listen` is set) cannot be reached: it stays
//! resolvable for `adopted_pe_grace` and is removed unless it re-registers
//! with some registrar by then (asap-client PEs hunt for the next registrar
//! when their association fails and re-register).
//!
//! Layout: this file holds the machine ([`Enrp`]) with its peer table,
//! timers and message dispatch; `config` its settings, `status` its
//! counters and status report, `auth` message authentication,
//! `table_sync` the Handle Table exchange, `takeover` takeovers and the
//! Home keep-alives of adopted PEs, `multicast` the announce group.

mod auth;
mod config;
mod multicast;
mod status;
mod table_sync;
mod takeover;

pub use config::{EnrpAuth, EnrpConfig};
pub use status::{EnrpCounters, EnrpStatus, PeerStatus};
pub use takeover::HomeKeepAlive;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Instant;

use protocol::rserpool::enrp::{Body, Message, UpdateAction};
use protocol::rserpool::{OperationError, ServerInformation, TransportAddress};

use crate::server::{HomeChange, Server};
use table_sync::{TableCursor, TableSync};
use takeover::Takeover;

/// One ENRP message to send to a peer's ENRP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The peer's advertised (or configured) ENRP address.
    pub to: SocketAddr,
    /// The encoded ENRP message (PPID 12).
    pub payload: Vec<u8>,
    /// Open a new association for this message instead of reusing the one
    /// to `to`: the peer was declared dead, and if it restarted, the old
    /// association is one its new incarnation does not know (SCTP over UDP
    /// in user space has no kernel to abort it), so anything sent on it
    /// would be lost until the association times out.
    pub reconnect: bool,
    /// A reply to a request (Presence with reply-required, List Request, Handle Table
    /// Request): send it on the association the request came in on, whose remote address
    /// this is, while that association is up (RFC 5353; RSPLIB's `hsdump` waits for the
    /// answer there and listens nowhere else). `to` is the fallback.
    pub reply_on: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Liveness {
    Alive,
    /// Asked for a Presence after MAX-TIME-LAST-HEARD; dead at `deadline`.
    Probing {
        deadline: Instant,
    },
    Dead,
}

#[derive(Debug)]
struct Peer {
    address: Option<SocketAddr>,
    last_heard: Instant,
    liveness: Liveness,
    remote_checksum: Option<u16>,
    sync: Option<TableSync>,
    cursor: Option<TableCursor>,
    /// The next message to this peer goes on a new association (see
    /// [`Outgoing::reconnect`]).
    reconnect: bool,
}

impl Peer {
    /// A peer just heard of (or from), counted alive until its silence says
    /// otherwise; `address` where we know where to reach it.
    fn new(address: Option<SocketAddr>, now: Instant) -> Self {
        Peer {
            address,
            last_heard: now,
            liveness: Liveness::Alive,
            remote_checksum: None,
            sync: None,
            cursor: None,
            reconnect: false,
        }
    }
}

/// The sans-IO ENRP peer state machine.
#[derive(Debug)]
pub struct Enrp {
    config: EnrpConfig,
    peers: HashMap<u32, Peer>,
    takeovers: HashMap<u32, Takeover>,
    /// Targets whose takeover by a peer we acked, until when we leave it to
    /// that peer (if it never completes, we take over ourselves).
    acked_takeovers: HashMap<u32, Instant>,
    next_heartbeat: Instant,
    counters: EnrpCounters,
    home_keep_alives: Vec<HomeKeepAlive>,
    /// Wall clock: microseconds since the Unix epoch at `.0` (see
    /// [`Enrp::set_wall_clock`]).
    wall_clock: (Instant, u64),
    /// The latest `now` we were given (what outgoing messages are signed
    /// with: [`Enrp::on_home_changes`] takes no clock).
    latest: Instant,
    /// Sequence of the last message we signed.
    last_sequence: u64,
    /// Recently accepted signed sequences per sender server id.
    replay: HashMap<u32, BTreeSet<u64>>,
    /// While answering a request: the address of the association it came in on.
    replying_on: Option<SocketAddr>,
}

impl Enrp {
    /// A peer table with only the static peers' addresses; the first
    /// Presence is due at `now`.
    pub fn new(config: EnrpConfig, now: Instant) -> Self {
        Self {
            config,
            peers: HashMap::new(),
            takeovers: HashMap::new(),
            acked_takeovers: HashMap::new(),
            next_heartbeat: now,
            counters: EnrpCounters::default(),
            home_keep_alives: Vec::new(),
            wall_clock: (now, 0),
            latest: now,
            last_sequence: 0,
            replay: HashMap::new(),
            replying_on: None,
        }
    }

    /// Running totals.
    pub fn counters(&self) -> &EnrpCounters {
        &self.counters
    }

    /// Tells the machine that at `now` the wall clock reads `unix_us`
    /// (microseconds since the Unix epoch); it extrapolates from there.
    /// Authentication needs it: signed sequences are wall-clock times so
    /// they keep increasing across restarts and can be checked for
    /// freshness by peers. The driver calls it before every entry point.
    pub fn set_wall_clock(&mut self, now: Instant, unix_us: u64) {
        self.wall_clock = (now, unix_us);
        self.latest = self.latest.max(now);
    }

    /// The configuration.
    pub fn config(&self) -> &EnrpConfig {
        &self.config
    }

    /// Server ids of the peers currently considered alive, sorted.
    pub fn alive_peers(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .peers
            .iter()
            .filter(|(_, peer)| peer.liveness != Liveness::Dead)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The earliest time [`Enrp::on_timer`] has something to do.
    pub fn next_deadline(&self) -> Instant {
        let mut next = self.next_heartbeat;
        for peer in self.peers.values() {
            let at = match peer.liveness {
                Liveness::Alive => peer.last_heard + self.config.max_time_last_heard,
                Liveness::Probing { deadline } => deadline,
                Liveness::Dead => continue,
            };
            next = next.min(at);
        }
        for takeover in self.takeovers.values() {
            next = next.min(takeover.expires);
        }
        for &until in self.acked_takeovers.values() {
            next = next.min(until);
        }
        next
    }

    /// Heartbeat, peer liveness and takeover timers.
    pub fn on_timer(&mut self, now: Instant, server: &mut Server) -> Vec<Outgoing> {
        self.latest = self.latest.max(now);
        let mut out = Vec::new();
        if now >= self.next_heartbeat {
            self.send_presence_to_all(server, false, &mut out);
            self.next_heartbeat = now + self.config.heartbeat_cycle;
        }
        let mut died = Vec::new();
        let mut probe = Vec::new();
        for (&id, peer) in &mut self.peers {
            match peer.liveness {
                Liveness::Alive if now >= peer.last_heard + self.config.max_time_last_heard => {
                    peer.liveness = Liveness::Probing {
                        deadline: now + self.config.max_time_no_response,
                    };
                    probe.push(id);
                }
                Liveness::Probing { deadline } if now >= deadline => {
                    peer.liveness = Liveness::Dead;
                    peer.sync = None;
                    peer.cursor = None;
                    peer.reconnect = true;
                    died.push(id);
                }
                _ => {}
            }
            let stale = now
                .saturating_duration_since(peer.sync.as_ref().map_or(now, |s| s.started))
                > self.config.max_time_no_response;
            if stale {
                peer.sync = None;
            }
            let stale = now
                .saturating_duration_since(peer.cursor.as_ref().map_or(now, |c| c.started))
                > self.config.max_time_no_response;
            if stale {
                peer.cursor = None;
            }
        }

        for id in probe {
            tracing::info!(
                peer = format_args!("{id:#010x}"),
                "peer silent for MAX-TIME-LAST-HEARD: asking for a Presence"
            );
            let presence = self.presence(server, true);
            self.send(id, presence, &mut out);
        }
        died.sort_unstable();
        for id in died {
            self.counters.peers_lost += 1;
            tracing::warn!(
                peer = format_args!("{id:#010x}"),
                "peer did not answer within MAX-TIME-NO-RESPONSE: declared dead"
            );
            self.start_takeover(now, id, server, &mut out);
        }
        let expired: Vec<u32> = self
            .takeovers
            .iter()
            .filter(|(_, takeover)| now >= takeover.expires)
            .map(|(target, _)| *target)
            .collect();
        for target in expired {
            tracing::info!(
                target = format_args!("{target:#010x}"),
                "takeover expiry: taking over without every ack"
            );
            self.complete_takeover(now, target, server, &mut out);
        }
        let abandoned: Vec<u32> = self
            .acked_takeovers
            .iter()
            .filter(|(_, until)| now >= **until)
            .map(|(target, _)| *target)
            .collect();
        for target in abandoned {
            self.acked_takeovers.remove(&target);
            let target_dead = self
                .peers
                .get(&target)
                .is_none_or(|peer| peer.liveness == Liveness::Dead);
            if target_dead {
                // The peer we acked never sent Takeover Server.
                self.start_takeover(now, target, server, &mut out);
            }
        }
        out
    }

    /// Announces changes of our home PEs to every live peer (Handle Update).
    pub fn on_home_changes(&mut self, changes: Vec<HomeChange>) -> Vec<Outgoing> {
        let mut out = Vec::new();
        for change in changes {
            for id in self.alive_peers() {
                let body = Body::HandleUpdate {
                    takeover_suggested: false,
                    action: change.action,
                    pool_handle: change.pool_handle.clone(),
                    pool_element: change.pool_element.clone(),
                    // Closed pools: the PE's own proof travels with it, so
                    // each peer checks membership with its own authorities.
                    membership: change.membership.clone(),
                };
                self.send(id, body, &mut out);
            }
        }
        out
    }

    /// Handles one ENRP message that arrived from `from` (the sending
    /// socket, used only for logging and to complete an unspecified
    /// advertised address). Never panics: bad input is counted and dropped.
    pub fn on_message(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &[u8],
        server: &mut Server,
    ) -> Vec<Outgoing> {
        self.latest = self.latest.max(now);
        let mut out = Vec::new();
        let Some(message) = self.authenticated_message(now, from, bytes, "ENRP") else {
            return out;
        };
        let sender = message.sender_server_id;
        if let Body::Error { error } = &message.body
            && (sender == self.config.server_id || sender == 0)
        {
            // RSPLIB's registrar sends ENRP Errors with the receiver's (our) server id as
            // the sender. Dropping it as "our own" would hide what the peer refused.
            self.count_errors_received(from, sender, error);
            return out;
        }
        if sender == self.config.server_id || sender == 0 {
            self.count_malformed("bad_sender_id");
            tracing::debug!(%from, sender, "ENRP message with our own or no server id");
            return out;
        }
        if message.receiver_server_id != 0 && message.receiver_server_id != self.config.server_id {
            self.count_malformed("wrong_receiver");
            tracing::debug!(%from, receiver = message.receiver_server_id, "ENRP message for another server");
            return out;
        }
        if !self.config.allowed_server_ids.is_empty()
            && !self.config.allowed_server_ids.contains(&sender)
        {
            self.count_malformed("peer_not_allowed");
            tracing::warn!(%from, sender = format_args!("{sender:#010x}"), "ENRP message from a server id not in enrp.allowed_server_ids");
            return out;
        }
        *self
            .counters
            .received
            .entry(body_name(&message.body).to_string())
            .or_default() += 1;

        let first_contact = match self.peers.get(&sender) {
            None => true,
            Some(peer) => peer.liveness == Liveness::Dead,
        };
        let peer = self
            .peers
            .entry(sender)
            .or_insert_with(|| Peer::new(None, now));
        peer.last_heard = now;
        peer.liveness = Liveness::Alive;
        if first_contact {
            tracing::info!(peer = format_args!("{sender:#010x}"), %from, "ENRP peer up");
            // A peer that is alive is nobody's takeover target.
            self.takeovers.remove(&sender);
            self.acked_takeovers.remove(&sender);
        }

        match message.body {
            Body::Presence {
                reply_required,
                pe_checksum,
                server_information,
            } => {
                if let Some(info) = server_information
                    && let Some(address) = socket_of(&info.transport, from)
                {
                    self.peer_mut(sender).address = Some(address);
                }
                self.peer_mut(sender).remote_checksum = Some(pe_checksum);
                if reply_required {
                    let presence = self.presence(server, false);
                    self.reply(from, sender, presence, &mut out);
                }
                let local = server.handlespace().home_checksum(sender);
                let syncing = self.peer_mut(sender).sync.is_some();
                if !first_contact && !syncing && local != pe_checksum {
                    self.counters.audit_mismatches += 1;
                    tracing::info!(
                        peer = format_args!("{sender:#010x}"),
                        local,
                        remote = pe_checksum,
                        "PE checksum mismatch: requesting the peer's handle table"
                    );
                    self.request_table(now, sender, &mut out);
                }
            }
            Body::HandleTableRequest { own_children_only } => {
                self.replying_on = Some(from);
                self.answer_table_request(now, sender, own_children_only, server, &mut out);
                self.replying_on = None;
            }
            Body::HandleTableResponse {
                reject,
                more_to_send,
                pool_entries,
            } => self.on_table_response(
                now,
                sender,
                reject,
                more_to_send,
                pool_entries,
                server,
                &mut out,
            ),
            Body::HandleUpdate {
                action,
                pool_handle,
                mut pool_element,
                membership,
                ..
            } => {
                if pool_element.home_enrp_server_identifier == 0 {
                    pool_element.home_enrp_server_identifier = sender;
                }
                match action {
                    UpdateAction::AddPe => {
                        if let Err(error) = server.apply_peer_element(
                            now,
                            &pool_handle,
                            pool_element,
                            membership,
                            true,
                        ) {
                            tracing::warn!(peer = format_args!("{sender:#010x}"), pool = %pool_handle, %error, "Handle Update refused");
                            self.count_malformed("handle_update_refused");
                        }
                    }
                    UpdateAction::DeletePe => {
                        server.remove_peer_element(
                            &pool_handle,
                            pool_element.pe_identifier,
                            sender,
                        );
                    }
                }
            }
            Body::ListRequest => {
                let mut servers: Vec<ServerInformation> = self
                    .config
                    .advertised
                    .clone()
                    .map(|transport| ServerInformation {
                        server_identifier: self.config.server_id,
                        transport,
                    })
                    .into_iter()
                    .collect();
                for id in self.alive_peers() {
                    if let Some(address) = self.peers[&id].address {
                        servers.push(ServerInformation {
                            server_identifier: id,
                            transport: transport_of(address),
                        });
                    }
                }
                self.reply(
                    from,
                    sender,
                    Body::ListResponse {
                        reject: false,
                        servers,
                    },
                    &mut out,
                );
            }
            Body::ListResponse { reject, servers } => {
                if !reject {
                    for info in servers {
                        let id = info.server_identifier;
                        if id == self.config.server_id || id == 0 || self.peers.contains_key(&id) {
                            continue;
                        }
                        if !self.config.allowed_server_ids.is_empty()
                            && !self.config.allowed_server_ids.contains(&id)
                        {
                            continue;
                        }
                        if let Some(address) = socket_of(&info.transport, from) {
                            tracing::info!(peer = format_args!("{id:#010x}"), %address, "learned ENRP peer from a List Response");
                            // Probed like any silent peer until it speaks.
                            self.peers.insert(id, Peer::new(Some(address), now));
                            let presence = self.presence(server, true);
                            self.send(id, presence, &mut out);
                        }
                    }
                }
            }
            Body::InitTakeover { target_server_id } => {
                if target_server_id == self.config.server_id {
                    tracing::warn!(
                        peer = format_args!("{sender:#010x}"),
                        "peer wants to take us over: announcing that we are alive"
                    );
                    self.send_presence_to_all(server, false, &mut out);
                } else if self.takeovers.contains_key(&target_server_id)
                    && self.config.server_id > sender
                {
                    // We win this race: the sender aborts when it sees ours.
                    tracing::debug!(target = target_server_id, "competing takeover: ours wins");
                } else {
                    self.takeovers.remove(&target_server_id);
                    self.acked_takeovers.insert(
                        target_server_id,
                        now + self.config.takeover_expiry + self.config.max_time_no_response,
                    );
                    self.send(sender, Body::InitTakeoverAck { target_server_id }, &mut out);
                }
            }
            Body::InitTakeoverAck { target_server_id } => {
                let complete = self
                    .takeovers
                    .get_mut(&target_server_id)
                    .is_some_and(|takeover| {
                        takeover.awaiting_acks.remove(&sender);
                        takeover.awaiting_acks.is_empty()
                    });
                if complete {
                    self.complete_takeover(now, target_server_id, server, &mut out);
                }
            }
            Body::TakeoverServer { target_server_id } => {
                self.takeovers.remove(&target_server_id);
                self.acked_takeovers.remove(&target_server_id);
                if target_server_id != self.config.server_id {
                    if let Some(target) = self.peers.get_mut(&target_server_id) {
                        target.liveness = Liveness::Dead;
                    }
                    let moved = server.rehome_elements_of(now, target_server_id, sender);
                    self.counters.rehomed_pes += moved as u64;
                    tracing::info!(
                        new_home = format_args!("{sender:#010x}"),
                        dead = format_args!("{target_server_id:#010x}"),
                        moved,
                        "peer took over a dead registrar's PEs"
                    );
                }
            }
            Body::Error { error } => {
                self.count_errors_received(from, sender, &error);
                self.count_malformed("peer_error");
            }
        }

        if first_contact {
            let presence = self.presence(server, false);
            self.send(sender, presence, &mut out);
            self.request_table(now, sender, &mut out);
            self.send(sender, Body::ListRequest, &mut out);
        }
        out
    }

    /// The ENRP part of the status endpoint.
    pub fn status(&self, now: Instant, server: &Server) -> EnrpStatus {
        let handlespace = server.handlespace();
        let mut peers: Vec<PeerStatus> = self
            .peers
            .iter()
            .map(|(&id, peer)| PeerStatus {
                server_id: id,
                address: peer.address.map(|a| a.to_string()),
                state: match peer.liveness {
                    Liveness::Alive => "alive",
                    Liveness::Probing { .. } => "probing",
                    Liveness::Dead => "dead",
                }
                .to_string(),
                last_heard_ms_ago: u64::try_from(
                    now.saturating_duration_since(peer.last_heard).as_millis(),
                )
                .unwrap_or(u64::MAX),
                remote_checksum: peer.remote_checksum,
                local_checksum: handlespace.home_checksum(id),
                home_elements: handlespace.elements_of_home(id).len(),
            })
            .collect();
        peers.sort_by_key(|peer| peer.server_id);
        EnrpStatus {
            own_checksum: handlespace.home_checksum(self.config.server_id),
            handlespace_checksum: handlespace_checksum(server),
            peers,
            counters: self.counters.clone(),
        }
    }

    fn peer_mut(&mut self, id: u32) -> &mut Peer {
        self.peers.get_mut(&id).expect("peer exists")
    }

    fn presence(&self, server: &Server, reply_required: bool) -> Body {
        Body::Presence {
            reply_required,
            pe_checksum: server.handlespace().home_checksum(self.config.server_id),
            server_information: self
                .config
                .advertised
                .clone()
                .map(|transport| ServerInformation {
                    server_identifier: self.config.server_id,
                    transport,
                }),
        }
    }

    /// Presence to every static address and every known peer address.
    fn send_presence_to_all(
        &mut self,
        server: &Server,
        reply_required: bool,
        out: &mut Vec<Outgoing>,
    ) {
        let mut addresses: Vec<(SocketAddr, u32)> = Vec::new();
        for (&id, peer) in &self.peers {
            if let Some(address) = peer.address {
                addresses.push((address, id));
            }
        }
        for &address in &self.config.static_peers {
            if !addresses.iter().any(|(known, _)| *known == address) {
                addresses.push((address, 0));
            }
        }
        addresses.sort();
        let body = self.presence(server, reply_required);
        for (address, receiver) in addresses {
            self.emit(address, receiver, body.clone(), out);
        }
    }

    /// Answers a request from peer `id` that came in on the association with `from`: on
    /// that association (see [`Outgoing::reply_on`]), whether or not we know where the
    /// peer listens.
    fn reply(&mut self, from: SocketAddr, id: u32, body: Body, out: &mut Vec<Outgoing>) {
        self.replying_on = Some(from);
        self.send(id, body, out);
        self.replying_on = None;
    }

    /// Logs and counts an ENRP Error by cause.
    fn count_errors_received(&mut self, from: SocketAddr, sender: u32, error: &OperationError) {
        for cause in &error.causes {
            let code = format!("{:#06x}", cause.code);
            tracing::warn!(
                %from,
                sender = format_args!("{sender:#010x}"),
                cause = %code,
                info_len = cause.info.len(),
                "ENRP Error from peer: it refused something we sent"
            );
            *self.counters.errors_received.entry(code).or_default() += 1;
        }
    }

    /// Sends `body` to peer `id` if we know where it is (or on the association of the
    /// request being answered).
    fn send(&mut self, id: u32, body: Body, out: &mut Vec<Outgoing>) {
        match self
            .peers
            .get(&id)
            .and_then(|peer| peer.address)
            .or(self.replying_on)
        {
            Some(address) => self.emit(address, id, body, out),
            None => {
                tracing::debug!(
                    peer = format_args!("{id:#010x}"),
                    message = body_name(&body),
                    "no ENRP address for peer: not sent"
                );
                self.count_malformed("peer_address_unknown");
            }
        }
    }

    fn emit(&mut self, to: SocketAddr, receiver: u32, body: Body, out: &mut Vec<Outgoing>) {
        let name = body_name(&body);
        let message = Message {
            sender_server_id: self.config.server_id,
            receiver_server_id: receiver,
            body,
        };
        let mut payload = Vec::new();
        if let Err(error) = message.try_encode(&mut payload) {
            tracing::warn!(%error, message = name, "ENRP message too large: not sent");
            return;
        }
        if !self.sign_outgoing(&mut payload, name) {
            return;
        }
        *self.counters.sent.entry(name.to_string()).or_default() += 1;
        let reconnect = self
            .peers
            .get_mut(&receiver)
            .is_some_and(|peer| std::mem::take(&mut peer.reconnect));
        out.push(Outgoing {
            to,
            payload,
            reconnect,
            reply_on: self.replying_on,
        });
    }

    fn count_malformed(&mut self, reason: &'static str) {
        *self
            .counters
            .malformed
            .entry(reason.to_string())
            .or_default() += 1;
    }
}

/// A checksum over every PE of the handlespace, whatever its home: two
/// registrars with the same handlespace show the same value.
pub fn handlespace_checksum(server: &Server) -> u16 {
    let sum: u64 = server
        .handlespace()
        .all_elements()
        .iter()
        .map(|(handle, id)| crate::handlespace::pe_checksum_words(handle, *id))
        .sum();
    crate::handlespace::finish_pe_checksum(sum)
}

/// An SCTP transport parameter for an ENRP address (RFC 5354 §3.11 puts an
/// SCTP transport in Server Information).
pub fn transport_of(address: SocketAddr) -> TransportAddress {
    TransportAddress {
        kind: protocol::rserpool::TransportKind::Sctp(protocol::rserpool::TransportUse::DataOnly),
        port: address.port(),
        addresses: vec![address.ip()],
    }
}

/// The first usable address of a Server Information transport; an unspecified
/// address means "where the message came from". A loopback or link-local address
/// is usable only from a peer that is itself on loopback: RSPLIB lists `::1` first,
/// and from another host that is ourselves. With no usable address, the address
/// the message came from.
fn socket_of(transport: &TransportAddress, from: SocketAddr) -> Option<SocketAddr> {
    let peer_on_loopback = from.ip().is_loopback()
        || matches!(from.ip(), std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()));
    if transport.addresses.is_empty() {
        return None;
    }
    let ip = transport
        .addresses
        .iter()
        .map(|&ip| if ip.is_unspecified() { from.ip() } else { ip })
        .find(|&ip| peer_on_loopback || !is_local_scope(ip))
        .unwrap_or(from.ip());
    Some(SocketAddr::new(ip, transport.port))
}

/// Loopback or link-local: meaningful only on the host (or link) that sent it.
fn is_local_scope(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.is_loopback() || v4.is_link_local(),
            None => v6.is_loopback() || (v6.segments()[0] & 0xffc0) == 0xfe80,
        },
    }
}

fn body_name(body: &Body) -> &'static str {
    match body {
        Body::Presence { .. } => "presence",
        Body::HandleTableRequest { .. } => "handle_table_request",
        Body::HandleTableResponse { .. } => "handle_table_response",
        Body::HandleUpdate { .. } => "handle_update",
        Body::ListRequest => "list_request",
        Body::ListResponse { .. } => "list_response",
        Body::InitTakeover { .. } => "init_takeover",
        Body::InitTakeoverAck { .. } => "init_takeover_ack",
        Body::TakeoverServer { .. } => "takeover_server",
        Body::Error { .. } => "error",
    }
}
