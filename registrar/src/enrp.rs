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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use policies::PeId;
use protocol::rserpool::asap;
use protocol::rserpool::enrp::{Body, Message, PoolEntry, UpdateAction, auth};
use protocol::rserpool::{Limits, OperationError, PoolHandle, ServerInformation, TransportAddress};
use serde::{Deserialize, Serialize};

use crate::server::{HomeChange, Server};

/// ENRP settings. Timer defaults are RSPLIB's registrar defaults (see
/// docs/architecture.md); RFC 5353 leaves the values to the implementation.
#[derive(Debug, Clone)]
pub struct EnrpConfig {
    /// Our server id (the ASAP server's).
    pub server_id: u32,
    /// Our ENRP transport as advertised in Server Information (Presence,
    /// List Response): how peers reach us. `None`: peers only learn us
    /// through their static lists.
    pub advertised: Option<TransportAddress>,
    /// Peer ENRP addresses to contact (static mesh).
    pub static_peers: Vec<SocketAddr>,
    /// Server ids accepted as peers; empty accepts any.
    pub allowed_server_ids: Vec<u32>,
    /// PEER-HEARTBEAT-CYCLE: Presence interval (RSPLIB 2444 ms).
    pub heartbeat_cycle: Duration,
    /// MAX-TIME-LAST-HEARD: silence after which a peer is probed (RSPLIB 5000 ms).
    pub max_time_last_heard: Duration,
    /// MAX-TIME-NO-RESPONSE: how long a probed peer has to answer before it
    /// is declared dead, and how long a table request may take (RSPLIB 5000 ms).
    pub max_time_no_response: Duration,
    /// TAKEOVER-EXPIRY: wait for Init Takeover Acks at most this long (RSPLIB 5000 ms).
    pub takeover_expiry: Duration,
    /// How long adopted PEs we cannot send the Home Keep Alive to stay
    /// without re-registering (see the module documentation).
    pub adopted_pe_grace: Duration,
    /// Most PEs in one Handle Table Response page (RSPLIB 128).
    pub max_elements_per_table_response: usize,
    /// Decoder limits.
    pub decode_limits: Limits,
    /// Peer authentication; `None`: messages are neither signed nor
    /// checked (anyone who reaches the ENRP port is a peer).
    pub auth: Option<EnrpAuth>,
}

/// ENRP peer authentication settings (see `docs/enrp-security.md`).
#[derive(Clone)]
pub struct EnrpAuth {
    /// Identifier of the signing key, sent in every message.
    pub key_id: u32,
    /// The pool's shared ENRP key: signs what we send, checks what we get.
    pub key: Vec<u8>,
    /// Further keys accepted (not used for signing), for key rotation.
    pub accepted_keys: Vec<(u32, Vec<u8>)>,
    /// A message whose sequence (the sender's clock) is further than this
    /// from our clock is refused: bounds replays after a restart wiped
    /// the replay state, and tolerates skew between the registrars' clocks.
    pub max_clock_skew: Duration,
    /// Migration only: accept unsigned messages (bad signatures are still
    /// refused). Off in production: an attacker simply leaves it out.
    pub accept_unsigned: bool,
}

impl std::fmt::Debug for EnrpAuth {
    // Never print keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrpAuth")
            .field("key_id", &self.key_id)
            .field(
                "accepted_key_ids",
                &self
                    .accepted_keys
                    .iter()
                    .map(|(id, _)| *id)
                    .collect::<Vec<_>>(),
            )
            .field("max_clock_skew", &self.max_clock_skew)
            .field("accept_unsigned", &self.accept_unsigned)
            .finish_non_exhaustive()
    }
}

/// Signed sequences remembered per sender: a message may arrive up to this
/// many messages late (two associations briefly in flight) and still count.
const REPLAY_WINDOW: usize = 64;

impl Default for EnrpConfig {
    fn default() -> Self {
        Self {
            server_id: 1,
            advertised: None,
            static_peers: Vec::new(),
            allowed_server_ids: Vec::new(),
            heartbeat_cycle: Duration::from_millis(2_444),
            max_time_last_heard: Duration::from_millis(5_000),
            max_time_no_response: Duration::from_millis(5_000),
            takeover_expiry: Duration::from_millis(5_000),
            adopted_pe_grace: Duration::from_millis(10_000),
            max_elements_per_table_response: 128,
            decode_limits: Limits::default(),
            auth: None,
        }
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Liveness {
    Alive,
    /// Asked for a Presence after MAX-TIME-LAST-HEARD; dead at `deadline`.
    Probing {
        deadline: Instant,
    },
    Dead,
}

/// Our Handle Table Request to a peer in progress.
#[derive(Debug)]
struct TableSync {
    started: Instant,
    seen: HashSet<(PoolHandle, PeId)>,
}

/// A Handle Table we are sending a peer page by page.
#[derive(Debug)]
struct TableCursor {
    started: Instant,
    remaining: std::vec::IntoIter<(PoolHandle, PeId)>,
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

#[derive(Debug)]
struct Takeover {
    awaiting_acks: HashSet<u32>,
    expires: Instant,
}

/// Running ENRP totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrpCounters {
    /// Messages received by type name.
    pub received: BTreeMap<String, u64>,
    /// Messages sent by type name.
    pub sent: BTreeMap<String, u64>,
    /// Presences whose checksum disagreed with ours (audit repairs started).
    pub audit_mismatches: u64,
    /// Peers declared dead.
    pub peers_lost: u64,
    /// Takeovers we completed.
    pub takeovers: u64,
    /// PEs adopted in our takeovers.
    pub adopted_pes: u64,
    /// PEs moved to a peer by its Takeover Server.
    pub rehomed_pes: u64,
    /// Endpoint Keep Alives with the Home flag handed to the driver for
    /// adopted PEs that gave an ASAP transport.
    pub home_keep_alives: u64,
    /// Adopted PEs without an ASAP transport (kept for the grace only).
    pub adopted_unreachable: u64,
    /// Peers learnt (or re-learnt after being declared dead) from their
    /// Presence on the ENRP announce group.
    #[serde(default)]
    pub multicast_peers_learned: u64,
    /// Well-formed Presences of other registrars heard on the ENRP announce
    /// group, whether they taught us a peer or came from one we knew.
    #[serde(default)]
    pub multicast_presences_heard: u64,
    /// Malformed or refused ENRP messages by reason.
    pub malformed: BTreeMap<String, u64>,
    /// ENRP Error messages received, by cause code (hex), counted whoever the sender
    /// claims to be (RSPLIB puts our own server id in it).
    pub errors_received: BTreeMap<String, u64>,
    /// Messages dropped by authentication, by reason (unsigned, bad_mac,
    /// unknown_key, stale, replay).
    pub auth_rejected: BTreeMap<String, u64>,
}

/// One peer in an [`EnrpStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Server id.
    pub server_id: u32,
    /// ENRP address, if known.
    pub address: Option<String>,
    /// "alive", "probing" or "dead".
    pub state: String,
    /// Time since its last message.
    pub last_heard_ms_ago: u64,
    /// PE checksum of its last Presence.
    pub remote_checksum: Option<u16>,
    /// Checksum of the PEs we store with it as home.
    pub local_checksum: u16,
    /// Number of PEs we store with it as home.
    pub home_elements: usize,
}

/// ENRP part of the status endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrpStatus {
    /// Checksum of our home PEs (what our Presence carries).
    pub own_checksum: u16,
    /// Checksum over the whole handlespace: equal on registrars that agree.
    pub handlespace_checksum: u16,
    /// Peers by server id.
    pub peers: Vec<PeerStatus>,
    /// Totals.
    pub counters: EnrpCounters,
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

    fn unix_us(&self, now: Instant) -> u64 {
        let (anchor, anchor_us) = self.wall_clock;
        let since = now.saturating_duration_since(anchor).as_micros();
        anchor_us.saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }

    /// The Endpoint Keep Alives with the Home flag our takeovers produced
    /// since the last call, one per adopted PE, oldest first.
    pub fn take_home_keep_alives(&mut self) -> Vec<HomeKeepAlive> {
        std::mem::take(&mut self.home_keep_alives)
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

    /// Authenticates and decodes one ENRP datagram or message from `from`;
    /// `None` (counted and logged with the source and the reason) when it is
    /// not a valid, authentic ENRP message. `what` names the channel in logs.
    fn authenticated_message(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &[u8],
        what: &str,
    ) -> Option<Message> {
        if let Err(reason) = self.authenticate(now, bytes) {
            self.count_auth_rejected(from, bytes, reason);
            return None;
        }
        match Message::decode_with(bytes, &self.config.decode_limits) {
            Ok(decoded) => Some(decoded.message),
            Err(error) => {
                let reason = error.reason();
                tracing::warn!(%from, %error, reason, "malformed {what} message dropped");
                self.count_malformed(reason);
                None
            }
        }
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

    fn request_table(&mut self, now: Instant, peer: u32, out: &mut Vec<Outgoing>) {
        self.peer_mut(peer).sync = Some(TableSync {
            started: now,
            seen: HashSet::new(),
        });
        self.send(
            peer,
            Body::HandleTableRequest {
                own_children_only: true,
            },
            out,
        );
    }

    fn answer_table_request(
        &mut self,
        now: Instant,
        peer: u32,
        own_children_only: bool,
        server: &Server,
        out: &mut Vec<Outgoing>,
    ) {
        let own_id = self.config.server_id;
        let per_page = self.config.max_elements_per_table_response.max(1);
        let cursor = self
            .peer_mut(peer)
            .cursor
            .get_or_insert_with(|| TableCursor {
                started: now,
                remaining: if own_children_only {
                    server.handlespace().elements_of_home(own_id)
                } else {
                    server.handlespace().all_elements()
                }
                .into_iter(),
            });
        cursor.started = now;
        let mut pool_entries: Vec<PoolEntry> = Vec::new();
        let mut taken = 0;
        while taken < per_page {
            let Some((handle, id)) = cursor.remaining.next() else {
                break;
            };
            // PEs removed since the table was listed are simply skipped.
            let Some(element) = server.pool_element(&handle, id) else {
                continue;
            };
            taken += 1;
            // Closed pools: the PE's proof goes along, so the peer can
            // check it with its own authority keys.
            let membership = server.membership_of(&handle, id);
            match pool_entries.last_mut() {
                Some(entry) if entry.pool_handle == handle => {
                    entry.pool_elements.push(element);
                    if membership.is_some() {
                        entry
                            .memberships
                            .resize(entry.pool_elements.len() - 1, None);
                        entry.memberships.push(membership);
                    }
                }
                _ => pool_entries.push(PoolEntry {
                    pool_handle: handle,
                    pool_elements: vec![element],
                    memberships: membership.map(|m| vec![Some(m)]).unwrap_or_default(),
                }),
            }
        }
        let more_to_send = cursor.remaining.len() > 0;
        if !more_to_send {
            self.peer_mut(peer).cursor = None;
        }
        self.send(
            peer,
            Body::HandleTableResponse {
                reject: false,
                more_to_send,
                pool_entries,
            },
            out,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn on_table_response(
        &mut self,
        now: Instant,
        peer: u32,
        reject: bool,
        more_to_send: bool,
        pool_entries: Vec<PoolEntry>,
        server: &mut Server,
        out: &mut Vec<Outgoing>,
    ) {
        if reject {
            tracing::warn!(
                peer = format_args!("{peer:#010x}"),
                "Handle Table Request rejected"
            );
            self.peer_mut(peer).sync = None;
            return;
        }
        let mut refused = 0;
        let mut seen = Vec::new();
        for mut entry in pool_entries {
            let memberships = std::mem::take(&mut entry.memberships);
            for (index, mut element) in entry.pool_elements.into_iter().enumerate() {
                let membership = memberships.get(index).cloned().flatten();
                if element.home_enrp_server_identifier == 0 {
                    element.home_enrp_server_identifier = peer;
                }
                seen.push((entry.pool_handle.clone(), element.pe_identifier));
                if server
                    .apply_peer_element(now, &entry.pool_handle, element, membership, false)
                    .is_err()
                {
                    refused += 1;
                }
            }
        }
        if refused > 0 {
            tracing::warn!(
                peer = format_args!("{peer:#010x}"),
                refused,
                "PEs of a Handle Table Response refused"
            );
            self.count_malformed("handle_table_entry_refused");
        }
        let Some(sync) = self.peer_mut(peer).sync.as_mut() else {
            // Unsolicited (or late) response: the PEs are applied, nothing
            // is deleted without a complete table.
            return;
        };
        sync.seen.extend(seen);
        sync.started = now;
        if more_to_send {
            self.send(
                peer,
                Body::HandleTableRequest {
                    own_children_only: true,
                },
                out,
            );
            return;
        }
        let seen = self
            .peer_mut(peer)
            .sync
            .take()
            .map(|s| s.seen)
            .unwrap_or_default();
        let mut removed = 0;
        for (handle, id) in server.handlespace().elements_of_home(peer) {
            if !seen.contains(&(handle.clone(), id))
                && server.remove_peer_element(&handle, id, peer)
            {
                removed += 1;
            }
        }
        tracing::info!(
            peer = format_args!("{peer:#010x}"),
            elements = seen.len(),
            removed,
            "handle table synchronized"
        );
    }

    fn start_takeover(
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

    fn complete_takeover(
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
        if let Some(keys) = &self.config.auth {
            // Strictly increasing even when the clock stands still or
            // steps back, so a receiver never takes ours for a replay.
            let sequence = self.unix_us(self.latest).max(self.last_sequence + 1);
            if let Err(error) = auth::sign(&mut payload, keys.key_id, &keys.key, sequence) {
                tracing::warn!(%error, message = name, "ENRP message cannot be signed: not sent");
                return;
            }
            self.last_sequence = sequence;
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

    /// Checks a received message's authentication (before it is decoded).
    fn authenticate(&mut self, now: Instant, bytes: &[u8]) -> Result<(), &'static str> {
        let Some(keys) = &self.config.auth else {
            return Ok(());
        };
        let mut candidates: Vec<(u32, &[u8])> = Vec::with_capacity(1 + keys.accepted_keys.len());
        candidates.push((keys.key_id, &keys.key));
        candidates.extend(
            keys.accepted_keys
                .iter()
                .map(|(id, key)| (*id, key.as_slice())),
        );
        let signed = match auth::verify(bytes, &candidates) {
            Ok(signed) => signed,
            Err(auth::AuthError::Missing) if keys.accept_unsigned => return Ok(()),
            Err(error) => return Err(error.reason()),
        };
        let local = self.unix_us(now);
        let skew = u64::try_from(keys.max_clock_skew.as_micros()).unwrap_or(u64::MAX);
        if signed.sequence.abs_diff(local) > skew {
            return Err("stale");
        }
        let recent = self.replay.entry(signed.sender_server_id).or_default();
        let too_old = recent.len() >= REPLAY_WINDOW
            && recent
                .first()
                .is_some_and(|&oldest| signed.sequence <= oldest);
        if too_old || !recent.insert(signed.sequence) {
            return Err("replay");
        }
        if recent.len() > REPLAY_WINDOW {
            recent.pop_first();
        }
        Ok(())
    }

    fn count_auth_rejected(&mut self, from: SocketAddr, bytes: &[u8], reason: &'static str) {
        let count = self
            .counters
            .auth_rejected
            .entry(reason.to_string())
            .or_default();
        *count += 1;
        let count = *count;
        // Whoever forges messages controls how many arrive: log the first
        // ones of each reason, then every thousandth.
        if count <= 10 || count % 1000 == 0 {
            // Unverified, but it tells the operator who claims to send.
            let claimed_sender = bytes
                .get(4..8)
                .map(|id| u32::from_be_bytes(id.try_into().expect("4 bytes")));
            tracing::warn!(
                %from,
                claimed_sender = ?claimed_sender.map(|id| format!("{id:#010x}")),
                reason,
                count,
                "ENRP message failed authentication: dropped"
            );
        }
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
