//! The ASAP server side of the registrar (RFC 5352), sans-IO.
//!
//! [`Server`] is fed events — a message from an association, an
//! association going up or down, the clock passing a deadline — and answers
//! with [`Action`]s for the IO driver to carry out. It never reads a clock:
//! every entry point takes `now`, so tests drive it with made-up instants.
//!
//! How the registrar reaches a PE: Endpoint Keep Alive goes over the
//! association the PE registered on, as RSPLIB's registrar does (RFC 5352
//! §3.7 lets the home registrar use the PE's ASAP association). After an
//! ENRP takeover the new home reaches an adopted PE at the ASAP transport of
//! its registration, if it gave one ([`Server::attach_adopted_element`]);
//! see [`crate::enrp`] for PEs that gave none.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use policies::{PeId, PolicyParams};
use protocol::rserpool::asap::Message;
use protocol::rserpool::enrp::UpdateAction;
use protocol::rserpool::membership::{MembershipError, MembershipProof, forwarded_matches_signed};
use protocol::rserpool::params::{Parameter, cause_code};
use protocol::rserpool::{
    DecodeError, ErrorCause, Limits, OperationError, PoolElement, PoolHandle, SelectionPolicy,
    TransportAddress,
};
use protocol::signing::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::handlespace::{
    AssocId, Handlespace, HandlespaceError, HandlespaceLimits, KeepAlive, PoolElementEntry,
    Registered, Registration, is_peer_owner, peer_owner,
};

/// How far in the future the keep-alive timer of a PE learned over ENRP is
/// parked: its home registrar keeps it alive, we never probe it.
const NO_KEEP_ALIVE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A change of a PE whose home registrar is this one: what ENRP announces
/// to the peers in a Handle Update (RFC 5353 §3.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeChange {
    /// Add (registration, re-registration) or delete (any removal).
    pub action: UpdateAction,
    /// The PE's pool.
    pub pool_handle: PoolHandle,
    /// The PE as peers store it.
    pub pool_element: PoolElement,
    /// Its membership proof (closed pools), for the peers to check.
    pub membership: Option<Box<MembershipProof>>,
}

/// The wire form of a stored PE (for Handle Updates and Handle Tables).
pub fn pool_element_of(entry: &PoolElementEntry) -> PoolElement {
    PoolElement {
        pe_identifier: entry.id,
        home_enrp_server_identifier: entry.home_registrar,
        registration_life: entry.registration_life,
        user_transport: entry.user_transport.clone(),
        policy: entry.policy.clone(),
        asap_transport: entry.asap_transport.clone(),
    }
}

/// The ASAP Transport parameter of a PE that gave none: the address and port its ASAP
/// association comes from (SCTP, as RFC 5352 has ASAP run over).
fn asap_transport_of(remote: SocketAddr) -> TransportAddress {
    TransportAddress {
        kind: protocol::rserpool::TransportKind::Sctp(protocol::rserpool::TransportUse::DataOnly),
        port: remote.port(),
        addresses: vec![canonical_ip(remote.ip())],
    }
}

/// An IPv4-mapped IPv6 address (a dual-stack socket's view of an IPv4 peer)
/// as the IPv4 address, so "10.0.0.0/8" matches it.
fn canonical_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    }
}

/// Largest slice of an offending message echoed back in an Unrecognized
/// Message cause: enough to identify it, too little to amplify a flood.
const MAX_ECHOED_BYTES: usize = 128;

/// Settings of the ASAP server. Defaults: RFC 5352 §5 where it gives a
/// value, RSPLIB's registrar otherwise (see docs/architecture.md).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// This registrar's 32-bit server identifier (home registrar id of the
    /// PEs registered here, sent in keep-alives and announces).
    pub server_id: u32,
    /// Keep-alive transmission interval: a PE is probed this long after its
    /// registration or last ack (RSPLIB 5 s).
    pub keep_alive_period: Duration,
    /// How long a probed PE has to answer before it is removed (RSPLIB 5 s).
    pub keep_alive_timeout: Duration,
    /// Endpoint Unreachable reports that remove a PE (RFC 5352 MAX-BAD-PE-REPORT, 3).
    pub max_bad_pe_reports: u32,
    /// Server Announce interval (RFC 5352 T6-serverAnnounce / RSPLIB 1 s).
    pub server_announce_interval: Duration,
    /// Send Server Announces at all.
    pub announce: bool,
    /// Transports listed in our Server Announces (empty: "the sender").
    pub announce_transports: Vec<TransportAddress>,
    /// PEs returned when the pool user does not ask for a number (RSPLIB 3).
    pub default_resolution_items: usize,
    /// Upper bound on PEs in one Handle Resolution Response (RSPLIB 128).
    pub max_resolution_items: usize,
    /// Sustained registrations per second accepted from one association.
    pub registrations_per_second: f64,
    /// Registrations one association may send in a burst.
    pub registration_burst: u32,
    /// Malformed messages after which the association is closed.
    pub max_malformed_per_association: u32,
    /// Handlespace capacity limits.
    pub limits: HandlespaceLimits,
    /// Decoder limits (message size, parameter count, handle length).
    pub decode_limits: Limits,
    /// Seed of the randomized selection policies.
    pub seed: u64,
    /// Registrations (and deregistrations) are accepted only from these
    /// networks; empty: from anyone.
    pub registration_networks: Vec<ipnet::IpNet>,
    /// Closed pools: a PE must prove membership with a certificate signed
    /// by one of these authority keys (several during a rotation). Pools
    /// not listed are open (RFC 5352 without extensions, e.g. RSPLIB PEs).
    pub membership_authorities: BTreeMap<PoolHandle, Vec<VerifyingKey>>,
    /// How far a membership proof's timestamp may be from our clock
    /// (replay window; covers clock skew between PE and registrar).
    pub membership_max_clock_skew: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            server_id: 1,
            keep_alive_period: Duration::from_millis(5_000),
            keep_alive_timeout: Duration::from_millis(5_000),
            max_bad_pe_reports: 3,
            server_announce_interval: Duration::from_millis(1_000),
            announce: false,
            announce_transports: Vec::new(),
            default_resolution_items: 3,
            max_resolution_items: 128,
            registrations_per_second: 20.0,
            registration_burst: 50,
            max_malformed_per_association: 100,
            limits: HandlespaceLimits::default(),
            decode_limits: Limits::default(),
            seed: 0x706f_6f6c_666c_6f77,
            registration_networks: Vec::new(),
            membership_authorities: BTreeMap::new(),
            membership_max_clock_skew: Duration::from_secs(60),
        }
    }
}

/// What the IO driver has to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send one ASAP message (PPID 11) on an association.
    Send {
        /// The association.
        assoc: AssocId,
        /// The encoded ASAP message.
        payload: Vec<u8>,
    },
    /// Abort an association (the driver sends an SCTP ABORT): its peer
    /// misbehaves, or its last PE was dropped and must hear it at once.
    Close {
        /// The association.
        assoc: AssocId,
    },
    /// Send a Server Announce datagram to the configured announce addresses.
    Announce {
        /// The encoded ASAP Server Announce.
        payload: Vec<u8>,
    },
}

/// Why a PE left the handlespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Removal {
    Deregistered,
    KeepAliveTimeout,
    Expired,
    Unreachable,
    AssociationDown,
}

impl Removal {
    fn label(self) -> &'static str {
        match self {
            Self::Deregistered => "deregistered",
            Self::KeepAliveTimeout => "keepalive_timeout",
            Self::Expired => "expired",
            Self::Unreachable => "unreachable",
            Self::AssociationDown => "association_down",
        }
    }
}

/// Running totals, for the status endpoint and tests; the driver publishes
/// them to Prometheus (`driver/metrics.rs`), the core touches no global.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Successful first registrations.
    pub registrations: u64,
    /// Successful re-registrations.
    pub reregistrations: u64,
    /// Rejected registrations by reason.
    pub registration_rejects: BTreeMap<String, u64>,
    /// Deregistrations that removed a PE.
    pub deregistrations: u64,
    /// Handle resolutions answered (including unknown pools).
    pub handle_resolutions: u64,
    /// Endpoint Keep Alives sent.
    pub keep_alives_sent: u64,
    /// Endpoint Keep Alive Acks accepted.
    pub keep_alive_acks: u64,
    /// PEs removed for not answering a keep-alive in time.
    pub keep_alive_failures: u64,
    /// PEs removed because their registration life ended.
    pub expiries: u64,
    /// Endpoint Unreachable reports received for known PEs.
    pub unreachable_reports: u64,
    /// PEs removed after MAX-BAD-PE-REPORT reports and a keep-alive probe
    /// the PE did not answer.
    pub unreachable_removals: u64,
    /// Keep-alive probes sent because a PE reached MAX-BAD-PE-REPORT.
    pub unreachable_probes: u64,
    /// PEs that answered such a probe and stayed (the reports were wrong).
    pub unreachable_refuted: u64,
    /// PEs removed because their association went down.
    pub association_removals: u64,
    /// Registrations refused by the per-association rate limit.
    pub rate_limited: u64,
    /// Malformed or unexpected messages by reason.
    pub malformed: BTreeMap<String, u64>,
    /// Deregistrations refused by reason.
    #[serde(default)]
    pub deregistration_rejects: BTreeMap<String, u64>,
    /// PEs from peer registrars (ENRP) refused for lack of a valid
    /// membership proof, by reason.
    #[serde(default)]
    pub peer_membership_rejects: BTreeMap<String, u64>,
    /// Handle resolutions for pools we do not know (part of
    /// `handle_resolutions`).
    #[serde(default)]
    pub handle_resolutions_unknown_pool: u64,
    /// PEs removed from the handlespace, by reason (`deregistered`,
    /// `keepalive_timeout`, `expired`, `unreachable`, `association_down`).
    #[serde(default)]
    pub removals: BTreeMap<String, u64>,
    /// Messages refused for lack of a valid membership proof, by message
    /// (`registration`, `deregistration`, `enrp`) and reason.
    #[serde(default)]
    pub membership_refused: BTreeMap<String, BTreeMap<String, u64>>,
}

/// Token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone)]
struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(burst: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(burst),
            last: now,
        }
    }

    fn take(&mut self, now: Instant, rate: f64, burst: u32) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What the server knows about one association.
#[derive(Debug, Clone)]
struct Peer {
    remote: Option<SocketAddr>,
    registrations: TokenBucket,
    malformed: u32,
}

/// The sans-IO ASAP server: handlespace plus protocol logic.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    handlespace: Handlespace,
    peers: HashMap<AssocId, Peer>,
    next_announce: Option<Instant>,
    counters: Counters,
    /// Changes of our home PEs not yet taken by ENRP; only collected once
    /// ENRP asked for them, so a stand-alone registrar does not accumulate.
    home_changes: Vec<HomeChange>,
    track_home_changes: bool,
    /// Wall clock at an instant, set by the driver: membership proofs carry
    /// Unix time, the rest of the server runs on `Instant`s.
    wall_clock: Option<(Instant, Duration)>,
}

impl Server {
    /// A server with an empty handlespace. The first Server Announce (if
    /// enabled) is due at `now`.
    pub fn new(config: ServerConfig, now: Instant) -> Self {
        let handlespace = Handlespace::new(config.limits.clone(), config.seed);
        let next_announce = config.announce.then_some(now);
        Self {
            config,
            handlespace,
            peers: HashMap::new(),
            next_announce,
            counters: Counters::default(),
            home_changes: Vec::new(),
            track_home_changes: false,
            wall_clock: None,
        }
    }

    /// Tells the server the wall clock (time since the Unix epoch) at
    /// `now`; the driver calls it before every message so the two clocks
    /// never drift apart for long.
    pub fn set_wall_clock(&mut self, now: Instant, since_epoch: Duration) {
        self.wall_clock = Some((now, since_epoch));
    }

    /// The wall clock at `now`, from the last [`Server::set_wall_clock`].
    fn unix_time(&self, now: Instant) -> Option<Duration> {
        self.wall_clock.map(|(at, wall)| {
            if now >= at {
                wall + (now - at)
            } else {
                wall.saturating_sub(at - now)
            }
        })
    }

    /// Whether `pool_handle` is closed (has membership authorities).
    pub fn is_closed_pool(&self, pool_handle: &PoolHandle) -> bool {
        self.config.membership_authorities.contains_key(pool_handle)
    }

    /// Checks a PE's proof for an ASAP message it sent us: certificate,
    /// signature, and the timestamp within the replay window. Open pools
    /// need none (a proof sent to one is ignored, like by RSPLIB).
    fn check_membership(
        &self,
        now: Instant,
        message_type: u8,
        pool_handle: &PoolHandle,
        pe_identifier: PeId,
        element: Option<&PoolElement>,
        proof: Option<&MembershipProof>,
    ) -> Result<(), MembershipError> {
        let Some(authorities) = self.config.membership_authorities.get(pool_handle) else {
            return Ok(());
        };
        let proof = proof.ok_or(MembershipError::NoProof)?;
        // Without a wall clock nothing can be fresh: fail closed.
        let unix = self
            .unix_time(now)
            .ok_or(MembershipError::StaleTimestamp { skew_ms: i64::MAX })?;
        proof.verify(
            authorities,
            message_type,
            pool_handle,
            pe_identifier,
            element,
            unix,
        )?;
        proof.check_fresh(unix, self.config.membership_max_clock_skew)
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The handlespace, read-only.
    pub fn handlespace(&self) -> &Handlespace {
        &self.handlespace
    }

    /// Running totals.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// An association came up; `remote` is the peer's address if known (used
    /// to fill in unspecified addresses in registrations).
    pub fn on_association_up(&mut self, now: Instant, assoc: AssocId, remote: Option<SocketAddr>) {
        let peer = self.peer(now, assoc);
        peer.remote = remote;
    }

    /// An association went down: every PE registered over it is removed
    /// (RSPLIB does the same; the PE re-registers when it reconnects).
    /// Returns how many PEs were removed.
    pub fn on_association_down(&mut self, assoc: AssocId) -> usize {
        self.peers.remove(&assoc);
        let removed = self.handlespace.remove_owner(assoc);
        for (handle, entry) in &removed {
            tracing::info!(pool = %handle, pe = format_args!("{:#010x}", entry.id), "association down: PE removed");
            self.count_removal(Removal::AssociationDown);
            self.note_home_change(UpdateAction::DeletePe, handle, entry);
        }
        removed.len()
    }

    /// The earliest time [`Server::on_timer`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.handlespace.next_deadline(), self.next_announce) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs every timer due at `now`: keep-alive transmissions, keep-alive
    /// timeouts, registration expiries, the Server Announce.
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        for (handle, id) in self.handlespace.due(now) {
            let Some(entry) = self.handlespace.element(&handle, id) else {
                continue;
            };
            let owner = entry.owner;
            if entry.expires_at.is_some_and(|at| at <= now) {
                tracing::info!(pool = %handle, pe = format_args!("{id:#010x}"), "registration life expired: PE removed");
                self.remove(&handle, id, Removal::Expired);
                continue;
            }
            match entry.keep_alive {
                KeepAlive::SendAt(at) if at <= now => {
                    let keep_alive = Message::EndpointKeepAlive {
                        home: false,
                        server_identifier: self.config.server_id,
                        pool_handle: handle.clone(),
                        pe_identifier: Some(id),
                    };
                    actions.push(Action::Send {
                        assoc: owner,
                        payload: keep_alive.to_bytes(),
                    });
                    self.handlespace.set_keep_alive(
                        &handle,
                        id,
                        KeepAlive::AwaitingAck {
                            sent: now,
                            deadline: now + self.config.keep_alive_timeout,
                        },
                    );
                    self.counters.keep_alives_sent += 1;
                }
                KeepAlive::AwaitingAck { deadline, .. } if deadline <= now => {
                    let why = if entry.unreachable_reports >= self.config.max_bad_pe_reports {
                        Removal::Unreachable
                    } else {
                        Removal::KeepAliveTimeout
                    };
                    tracing::warn!(pool = %handle, pe = format_args!("{id:#010x}"), reason = why.label(), "keep-alive timeout: PE removed");
                    self.remove(&handle, id, why);
                    // Like RSPLIB, tell a hung PE by closing its association,
                    // but only once no live PE depends on that association.
                    if self.handlespace.elements_of_owner(owner) == 0 {
                        actions.push(Action::Close { assoc: owner });
                    }
                }
                _ => {}
            }
        }
        if let Some(at) = self.next_announce
            && at <= now
        {
            let announce = Message::ServerAnnounce {
                server_identifier: self.config.server_id,
                transports: self.config.announce_transports.clone(),
            };
            actions.push(Action::Announce {
                payload: announce.to_bytes(),
            });
            self.next_announce = Some(now + self.config.server_announce_interval);
        }
        actions
    }

    /// Handles one ASAP message from `from`. Never panics on any input:
    /// undecodable messages are answered with an ASAP Error and counted.
    pub fn on_message(&mut self, now: Instant, from: AssocId, bytes: &[u8]) -> Vec<Action> {
        let mut actions = Vec::new();
        let decoded = match Message::decode_with(bytes, &self.config.decode_limits) {
            Ok(decoded) => decoded,
            Err(error) => {
                self.reject_malformed(now, from, bytes, &error, &mut actions);
                return actions;
            }
        };
        let report = decoded.report_causes();
        if !report.is_empty() {
            self.count_malformed("unrecognized_parameter");
            actions.push(send_error(from, report));
        }
        match decoded.message {
            Message::Registration {
                pool_handle,
                pool_element,
                membership,
            } => self.on_registration(
                now,
                from,
                pool_handle,
                pool_element,
                membership,
                &mut actions,
            ),
            Message::Deregistration {
                pool_handle,
                pe_identifier,
                membership,
            } => self.on_deregistration(
                now,
                from,
                pool_handle,
                pe_identifier,
                membership,
                &mut actions,
            ),
            Message::HandleResolution { pool_handle, items } => {
                self.on_handle_resolution(from, pool_handle, items, &mut actions)
            }
            Message::EndpointKeepAliveAck {
                pool_handle,
                pe_identifier,
            } => self.on_keep_alive_ack(now, from, &pool_handle, pe_identifier),
            Message::EndpointUnreachable {
                pool_handle,
                pe_identifier,
            } => self.on_endpoint_unreachable(now, &pool_handle, pe_identifier),
            Message::Error { error } => {
                // Never answer an error with an error (no ping-pong).
                tracing::warn!(assoc = from, ?error, "ASAP Error from peer");
                self.count_malformed("peer_error");
            }
            Message::ServerAnnounce { .. } => {
                // Another registrar's announce looped back to us: harmless.
                self.count_malformed("server_announce");
            }
            other => {
                // Valid ASAP, but not a message a registrar processes.
                tracing::debug!(
                    assoc = from,
                    message_type = other.message_type(),
                    "unexpected ASAP message"
                );
                self.count_malformed("unexpected_message");
                self.note_malformed(now, from, &mut actions);
                actions.push(send_error(
                    from,
                    vec![ErrorCause {
                        code: cause_code::UNRECOGNIZED_MESSAGE,
                        info: bytes[..bytes.len().min(MAX_ECHOED_BYTES)].to_vec(),
                    }],
                ));
            }
        }
        actions
    }

    /// A snapshot of pools, PEs and counters for the status endpoint.
    pub fn status(&self, now: Instant) -> Status {
        let mut pools: Vec<PoolStatus> = self
            .handlespace
            .pools()
            .map(|(handle, pool)| {
                let mut elements: Vec<ElementStatus> = pool
                    .elements()
                    .map(|entry| ElementStatus {
                        id: entry.id,
                        user_transport: format_transport(&entry.user_transport),
                        policy: format!("{:?}", entry.params),
                        owner_association: entry.owner,
                        home_registrar: entry.home_registrar,
                        registration_life_ms: entry.registration_life,
                        registered_ms_ago: millis_since(now, entry.registered_at),
                        last_heard_ms_ago: millis_since(now, entry.last_heard),
                        awaiting_keep_alive_ack: matches!(
                            entry.keep_alive,
                            KeepAlive::AwaitingAck { .. }
                        ),
                        unreachable_reports: entry.unreachable_reports,
                        membership_authority: entry
                            .membership
                            .as_ref()
                            .map(|proof| proof.certificate.authority_key_id),
                        membership_not_after: entry
                            .membership
                            .as_ref()
                            .map(|proof| proof.certificate.not_after),
                    })
                    .collect();
                elements.sort_by_key(|element| element.id);
                PoolStatus {
                    handle: handle.to_string(),
                    handle_hex: hex(handle.as_bytes()),
                    policy_type: pool.policy_type(),
                    policy: policies::policy_name(pool.policy_type())
                        .unwrap_or("unknown")
                        .to_string(),
                    elements,
                }
            })
            .collect();
        pools.sort_by(|a, b| a.handle_hex.cmp(&b.handle_hex));
        Status {
            server_id: self.config.server_id,
            pool_count: self.handlespace.pool_count(),
            element_count: self.handlespace.element_count(),
            associations: self.peers.len(),
            pools,
            counters: self.counters.clone(),
            enrp: None,
        }
    }

    fn peer(&mut self, now: Instant, assoc: AssocId) -> &mut Peer {
        let burst = self.config.registration_burst;
        self.peers.entry(assoc).or_insert_with(|| Peer {
            remote: None,
            registrations: TokenBucket::new(burst, now),
            malformed: 0,
        })
    }

    fn on_registration(
        &mut self,
        now: Instant,
        from: AssocId,
        pool_handle: PoolHandle,
        pool_element: PoolElement,
        membership: Option<Box<MembershipProof>>,
        actions: &mut Vec<Action>,
    ) {
        let pe_identifier = pool_element.pe_identifier;
        let respond = |error: Option<ErrorCause>| Action::Send {
            assoc: from,
            payload: Message::RegistrationResponse {
                reject: error.is_some(),
                pool_handle: pool_handle.clone(),
                pe_identifier,
                error: error.map(|cause| OperationError {
                    causes: vec![cause],
                }),
            }
            .to_bytes(),
        };

        if !self.may_register(now, from) {
            self.count_reject("not_allowed_network");
            actions.push(respond(Some(ErrorCause {
                code: cause_code::REJECTED_DUE_TO_SECURITY,
                info: Vec::new(),
            })));
            return;
        }
        let (rate, burst) = (
            self.config.registrations_per_second,
            self.config.registration_burst,
        );
        let peer = self.peer(now, from);
        if !peer.registrations.take(now, rate, burst) {
            let remote = peer.remote;
            self.counters.rate_limited += 1;
            self.count_reject("rate_limited");
            tracing::debug!(assoc = from, ?remote, "registration rate limit exceeded");
            actions.push(respond(Some(ErrorCause {
                code: cause_code::REJECTED_DUE_TO_SECURITY,
                info: Vec::new(),
            })));
            return;
        }
        let remote_ip = peer.remote.map(|addr| addr.ip());
        let remote_addr = peer.remote;

        // RFC 5352 §6 / RFC 5355 §2.2: only members join a closed pool. The
        // signature covers the Pool Element as sent, before any fill-in.
        let membership = if self.is_closed_pool(&pool_handle) {
            if let Err(error) = self.check_membership(
                now,
                protocol::rserpool::asap::msg_type::REGISTRATION,
                &pool_handle,
                pe_identifier,
                Some(&pool_element),
                membership.as_deref(),
            ) {
                let remote = self.peers.get(&from).and_then(|peer| peer.remote);
                tracing::warn!(
                    assoc = from,
                    ?remote,
                    pool = %pool_handle,
                    pe = format_args!("{pe_identifier:#010x}"),
                    reason = error.reason(),
                    %error,
                    "registration without valid pool membership refused"
                );
                self.count_reject(error.reason());
                self.count_membership_refused("registration", error.reason());
                actions.push(respond(Some(ErrorCause {
                    code: cause_code::REJECTED_DUE_TO_SECURITY,
                    info: Vec::new(),
                })));
                return;
            }
            membership.map(|mut proof| {
                proof.signed_element = Some(pool_element.clone());
                proof
            })
        } else {
            None
        };

        let params = match policy_params(&pool_element.policy) {
            Ok(params) => params,
            Err(error) => {
                tracing::info!(assoc = from, %error, "registration with an unusable policy");
                self.count_reject("invalid_policy");
                actions.push(respond(Some(ErrorCause {
                    code: cause_code::INVALID_VALUES,
                    info: parameter_tlv(&Parameter::SelectionPolicy(pool_element.policy.clone())),
                })));
                return;
            }
        };
        let user_transport = fill_unspecified(pool_element.user_transport, remote_ip);
        let policy_tlv = parameter_tlv(&Parameter::SelectionPolicy(pool_element.policy.clone()));
        let transport_tlv = parameter_tlv(&Parameter::Transport(user_transport.clone()));
        let registration = Registration {
            id: pe_identifier,
            user_transport,
            // RFC 5353 peers (RSPLIB answers ENRP Error 0xf006 otherwise) need an ASAP
            // Transport in every Pool Element we send over ENRP: when the PE gave none, it
            // is where its ASAP association comes from.
            asap_transport: pool_element
                .asap_transport
                .or_else(|| remote_addr.map(asap_transport_of)),
            policy: pool_element.policy,
            params,
            registration_life: pool_element.registration_life,
            home_registrar: self.config.server_id,
            owner: from,
            membership,
        };
        match self.handlespace.register(
            &pool_handle,
            registration,
            now,
            self.config.keep_alive_period,
        ) {
            Ok(kind) => {
                let result = match kind {
                    Registered::New => {
                        self.counters.registrations += 1;
                        "new"
                    }
                    Registered::Updated => {
                        self.counters.reregistrations += 1;
                        "updated"
                    }
                };
                tracing::info!(pool = %pool_handle, pe = format_args!("{pe_identifier:#010x}"), result, "registration");
                if let Some(entry) = self.handlespace.element(&pool_handle, pe_identifier) {
                    let entry = entry.clone();
                    self.note_home_change(UpdateAction::AddPe, &pool_handle, &entry);
                }
                actions.push(respond(None));
            }
            Err(error) => {
                tracing::info!(pool = %pool_handle, pe = format_args!("{pe_identifier:#010x}"), %error, "registration rejected");
                self.count_reject(error.label());
                let info = match error {
                    HandlespaceError::InconsistentPoolingPolicy { .. } => policy_tlv,
                    HandlespaceError::InconsistentTransportType
                    | HandlespaceError::InconsistentDataControlConfiguration => transport_tlv,
                    HandlespaceError::InvalidPoolHandle(_) => {
                        parameter_tlv(&Parameter::PoolHandle(pool_handle.clone()))
                    }
                    _ => Vec::new(),
                };
                actions.push(respond(Some(ErrorCause {
                    code: error.cause_code(),
                    info,
                })));
            }
        }
    }

    fn on_deregistration(
        &mut self,
        now: Instant,
        from: AssocId,
        pool_handle: PoolHandle,
        pe_identifier: PeId,
        membership: Option<Box<MembershipProof>>,
        actions: &mut Vec<Action>,
    ) {
        let refusal = if !self.may_register(now, from) {
            Some("not_allowed_network")
        } else if let Err(error) = self.check_membership(
            now,
            protocol::rserpool::asap::msg_type::DEREGISTRATION,
            &pool_handle,
            pe_identifier,
            None,
            membership.as_deref(),
        ) {
            let remote = self.peers.get(&from).and_then(|peer| peer.remote);
            tracing::warn!(
                assoc = from,
                ?remote,
                pool = %pool_handle,
                pe = format_args!("{pe_identifier:#010x}"),
                reason = error.reason(),
                %error,
                "deregistration without valid pool membership refused"
            );
            self.count_membership_refused("deregistration", error.reason());
            Some(error.reason())
        } else {
            None
        };
        if let Some(reason) = refusal {
            *self
                .counters
                .deregistration_rejects
                .entry(reason.to_string())
                .or_default() += 1;
            actions.push(Action::Send {
                assoc: from,
                payload: Message::DeregistrationResponse {
                    pool_handle,
                    pe_identifier,
                    error: Some(OperationError {
                        causes: vec![ErrorCause {
                            code: cause_code::REJECTED_DUE_TO_SECURITY,
                            info: Vec::new(),
                        }],
                    }),
                }
                .to_bytes(),
            });
            return;
        }
        let error = match self
            .handlespace
            .deregister(&pool_handle, pe_identifier, from)
        {
            Ok(removed) => {
                if let Some(entry) = &removed {
                    self.note_home_change(UpdateAction::DeletePe, &pool_handle, entry);
                }
                if removed.is_some() {
                    self.counters.deregistrations += 1;
                    self.count_removal(Removal::Deregistered);
                }
                None
            }
            Err(error) => Some(OperationError {
                causes: vec![ErrorCause {
                    code: error.cause_code(),
                    info: Vec::new(),
                }],
            }),
        };
        actions.push(Action::Send {
            assoc: from,
            payload: Message::DeregistrationResponse {
                pool_handle,
                pe_identifier,
                error,
            }
            .to_bytes(),
        });
    }

    fn on_handle_resolution(
        &mut self,
        from: AssocId,
        pool_handle: PoolHandle,
        items: Option<u32>,
        actions: &mut Vec<Action>,
    ) {
        self.counters.handle_resolutions += 1;
        let max = match items {
            None | Some(0) => self.config.default_resolution_items,
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        }
        .min(self.config.max_resolution_items);
        let response = match self.handlespace.resolve(&pool_handle, max) {
            Ok(selected) => Message::HandleResolutionResponse {
                reject: false,
                pool_handle: pool_handle.clone(),
                policy: selected.first().map(|entry| entry.policy.clone()),
                pool_elements: selected
                    .iter()
                    .map(|entry| PoolElement {
                        pe_identifier: entry.id,
                        home_enrp_server_identifier: entry.home_registrar,
                        registration_life: entry.registration_life,
                        user_transport: entry.user_transport.clone(),
                        policy: entry.policy.clone(),
                        asap_transport: None,
                    })
                    .collect(),
                error: None,
            },
            Err(error) => {
                self.counters.handle_resolutions_unknown_pool += 1;
                Message::HandleResolutionResponse {
                    reject: true,
                    pool_handle: pool_handle.clone(),
                    policy: None,
                    pool_elements: Vec::new(),
                    error: Some(OperationError {
                        causes: vec![ErrorCause {
                            code: error.cause_code(),
                            info: parameter_tlv(&Parameter::PoolHandle(pool_handle)),
                        }],
                    }),
                }
            }
        };
        actions.push(Action::Send {
            assoc: from,
            payload: encode_fitting(response),
        });
    }

    fn on_keep_alive_ack(&mut self, now: Instant, from: AssocId, handle: &PoolHandle, id: PeId) {
        match self.handlespace.element(handle, id) {
            Some(entry) if entry.owner == from => {
                let next = now + self.config.keep_alive_period;
                let refuted = self
                    .handlespace
                    .element(handle, id)
                    .is_some_and(|e| e.unreachable_reports >= self.config.max_bad_pe_reports);
                self.handlespace.keep_alive_acked(handle, id, now, next);
                self.counters.keep_alive_acks += 1;
                if refuted {
                    self.counters.unreachable_refuted += 1;
                    tracing::warn!(pool = %handle, pe = format_args!("{id:#010x}"), "PE reported unreachable answered its keep-alive: kept (a pool user's reports were wrong)");
                }
            }
            Some(_) => {
                // Only the PE itself may vouch for its liveness.
                self.count_malformed("keep_alive_ack_foreign_association");
            }
            None => {
                // Late ack of a PE that was already removed.
                tracing::debug!(pool = %handle, pe = format_args!("{id:#010x}"), "keep-alive ack for unknown PE");
            }
        }
    }

    /// An Endpoint Unreachable report is a pool user's opinion, not proof:
    /// one confused or hostile user must not empty a pool. RFC 5352 §3.5
    /// leaves the removal to the registrar's judgement; at MAX-BAD-PE-REPORT
    /// we check at once with an Endpoint Keep Alive and remove the PE only
    /// if it misses that (the keep-alive timeout does it). A PE that answers
    /// stays, and its report count starts again. PEs homed at another
    /// registrar are that registrar's to supervise (RFC 5353): counted only.
    fn on_endpoint_unreachable(&mut self, now: Instant, handle: &PoolHandle, id: PeId) {
        let Some(reports) = self.handlespace.report_unreachable(handle, id) else {
            return;
        };
        self.counters.unreachable_reports += 1;
        if reports < self.config.max_bad_pe_reports {
            return;
        }
        let Some(entry) = self.handlespace.element(handle, id) else {
            return;
        };
        if entry.home_registrar != self.config.server_id {
            tracing::debug!(pool = %handle, pe = format_args!("{id:#010x}"), reports, "MAX-BAD-PE-REPORT for a PE homed elsewhere: its home supervises it");
            return;
        }
        match entry.keep_alive {
            // A keep-alive is already out: its timeout decides.
            KeepAlive::AwaitingAck { .. } => {}
            KeepAlive::SendAt(at) => {
                if at > now {
                    self.handlespace
                        .set_keep_alive(handle, id, KeepAlive::SendAt(now));
                }
                self.counters.unreachable_probes += 1;
                tracing::info!(pool = %handle, pe = format_args!("{id:#010x}"), reports, "MAX-BAD-PE-REPORT reached: probing the PE with a keep-alive before removing it");
            }
        }
    }

    fn reject_malformed(
        &mut self,
        now: Instant,
        from: AssocId,
        bytes: &[u8],
        error: &DecodeError,
        actions: &mut Vec<Action>,
    ) {
        let reason = error.reason();
        tracing::debug!(assoc = from, %error, reason, "malformed ASAP message");
        self.count_malformed(reason);
        let cause = match error {
            DecodeError::UnknownMessageType(_) => Some(ErrorCause {
                code: cause_code::UNRECOGNIZED_MESSAGE,
                info: bytes[..bytes.len().min(MAX_ECHOED_BYTES)].to_vec(),
            }),
            DecodeError::UnrecognizedParameter { parameter } => parameter
                .action()
                .reports()
                .then(|| ErrorCause::unrecognized_parameter(parameter)),
            _ => Some(ErrorCause {
                code: cause_code::INVALID_VALUES,
                info: Vec::new(),
            }),
        };
        if let Some(mut cause) = cause {
            cause.info.truncate(MAX_ECHOED_BYTES);
            actions.push(send_error(from, vec![cause]));
        }
        self.note_malformed(now, from, actions);
    }

    /// Counts a bad message against the association and closes it once it
    /// has sent too many.
    fn note_malformed(&mut self, now: Instant, from: AssocId, actions: &mut Vec<Action>) {
        let limit = self.config.max_malformed_per_association;
        let peer = self.peer(now, from);
        peer.malformed += 1;
        if peer.malformed == limit.saturating_add(1) {
            tracing::warn!(
                assoc = from,
                "too many malformed messages: closing association"
            );
            actions.push(Action::Close { assoc: from });
        }
    }

    fn remove(&mut self, handle: &PoolHandle, id: PeId, why: Removal) {
        if let Some(entry) = self.handlespace.remove(handle, id) {
            self.count_removal(why);
            self.note_home_change(UpdateAction::DeletePe, handle, &entry);
        }
    }

    fn note_home_change(
        &mut self,
        action: UpdateAction,
        handle: &PoolHandle,
        entry: &PoolElementEntry,
    ) {
        if self.track_home_changes && entry.home_registrar == self.config.server_id {
            self.home_changes.push(HomeChange {
                action,
                pool_handle: handle.clone(),
                pool_element: pool_element_of(entry),
                membership: entry.membership.clone(),
            });
        }
    }

    /// Starts collecting [`HomeChange`]s (ENRP is on).
    pub fn track_home_changes(&mut self) {
        self.track_home_changes = true;
    }

    /// The changes of our home PEs since the last call, oldest first.
    pub fn take_home_changes(&mut self) -> Vec<HomeChange> {
        std::mem::take(&mut self.home_changes)
    }

    /// Stores (or refreshes) a PE a peer registrar told us about. Its home
    /// registrar keeps it alive, so we park its keep-alive timer; its
    /// registration life still applies. Not a home change of ours.
    ///
    /// A PE registered with us over a live association is ours: a peer's
    /// Handle Table cannot take it (after a partition the peer may list it
    /// as adopted), only a Handle Update naming another home can
    /// (`moved_by_update`: the PE re-registered there).
    ///
    /// In a closed pool the PE needs a membership proof that this registrar
    /// checks with its own authority keys ([`Server::check_peer_membership`]);
    /// without one (a Handle Table from a peer that does not forward
    /// proofs) only a PE we already hold a proof for is refreshed.
    pub fn apply_peer_element(
        &mut self,
        now: Instant,
        pool_handle: &PoolHandle,
        pool_element: PoolElement,
        membership: Option<Box<MembershipProof>>,
        moved_by_update: bool,
    ) -> Result<(), HandlespaceError> {
        let membership =
            match self.check_peer_membership(now, pool_handle, &pool_element, membership) {
                Ok(membership) => membership,
                Err(error) => {
                    *self
                        .counters
                        .peer_membership_rejects
                        .entry(error.reason().to_string())
                        .or_default() += 1;
                    self.count_membership_refused("enrp", error.reason());
                    tracing::warn!(
                        pool = %pool_handle,
                        pe = format_args!("{:#010x}", pool_element.pe_identifier),
                        home = pool_element.home_enrp_server_identifier,
                        reason = error.reason(),
                        %error,
                        "PE from a peer registrar without valid pool membership refused"
                    );
                    return Err(HandlespaceError::Rejected(error.reason()));
                }
            };
        let home = pool_element.home_enrp_server_identifier;
        if let Some(existing) = self
            .handlespace
            .element(pool_handle, pool_element.pe_identifier)
            && existing.home_registrar == self.config.server_id
            && !is_peer_owner(existing.owner)
            && (home == self.config.server_id || !moved_by_update)
        {
            return Ok(());
        }
        if home == self.config.server_id {
            // A peer lists a PE as ours that is not registered here (we
            // restarted): it is the peer's stale copy, the PE re-registers.
            return Ok(());
        }
        let params = policy_params(&pool_element.policy).map_err(|_| {
            HandlespaceError::InconsistentPoolingPolicy {
                pool: 0,
                requested: pool_element.policy.policy_type,
            }
        })?;
        let registration = Registration {
            id: pool_element.pe_identifier,
            user_transport: pool_element.user_transport,
            asap_transport: pool_element.asap_transport,
            policy: pool_element.policy,
            params,
            registration_life: pool_element.registration_life,
            home_registrar: home,
            owner: peer_owner(home),
            membership,
        };
        self.handlespace
            .register(pool_handle, registration, now, NO_KEEP_ALIVE)?;
        Ok(())
    }

    /// The proof a peer's PE must bring into a closed pool: certificate and
    /// signature checked against our own authority list (a peer may be
    /// configured with other keys), and the forwarded element must be the
    /// signed one up to the home registrar's fill-ins. Freshness is not
    /// checked: the home registrar did at registration, and Handle Updates
    /// and Tables legitimately repeat it later; ENRP's own authentication
    /// (docs/enrp-security.md) keeps outsiders from replaying them.
    pub fn check_peer_membership(
        &self,
        now: Instant,
        pool_handle: &PoolHandle,
        pool_element: &PoolElement,
        membership: Option<Box<MembershipProof>>,
    ) -> Result<Option<Box<MembershipProof>>, MembershipError> {
        let Some(authorities) = self.config.membership_authorities.get(pool_handle) else {
            return Ok(None);
        };
        let proof = match membership {
            Some(proof) => proof,
            None => {
                // Refresh of a PE whose proof we hold (a table without
                // proofs): the element must still be the signed one.
                self.handlespace
                    .element(pool_handle, pool_element.pe_identifier)
                    .and_then(|entry| entry.membership.clone())
                    .ok_or(MembershipError::NoProof)?
            }
        };
        let signed = proof
            .signed_element
            .as_ref()
            .ok_or(MembershipError::ElementMismatch)?;
        if !forwarded_matches_signed(pool_element, signed) {
            return Err(MembershipError::ElementMismatch);
        }
        // No wall clock yet: time 0, before every certificate (fail closed).
        let unix = self.unix_time(now).unwrap_or_default();
        proof.verify(
            authorities,
            protocol::rserpool::asap::msg_type::REGISTRATION,
            pool_handle,
            signed.pe_identifier,
            Some(signed),
            unix,
        )?;
        Ok(Some(proof))
    }

    /// Removes a PE on behalf of its home registrar `home` (Handle Update
    /// delete, audit repair). A PE homed elsewhere (e.g. it already moved to
    /// another registrar, or to us) is left alone.
    pub fn remove_peer_element(&mut self, pool_handle: &PoolHandle, id: PeId, home: u32) -> bool {
        let homed_there = self
            .handlespace
            .element(pool_handle, id)
            .is_some_and(|entry| entry.home_registrar == home && home != self.config.server_id);
        if homed_there {
            self.handlespace.remove(pool_handle, id);
        }
        homed_there
    }

    /// Takeover (RFC 5353) done by us: every PE homed at `dead` becomes
    /// ours. Until the driver reaches it with the Endpoint Keep Alive with
    /// the Home flag ([`Server::attach_adopted_element`]), or if it cannot
    /// (no ASAP transport), each gets `grace` to re-register here (or
    /// anywhere) before it is removed as dead. Returns how many PEs were
    /// adopted.
    pub fn adopt_elements_of(&mut self, now: Instant, dead: u32, grace: Duration) -> usize {
        let own_id = self.config.server_id;
        let adopted = self.handlespace.elements_of_home(dead);
        for (handle, id) in &adopted {
            self.handlespace.rehome(
                handle,
                *id,
                own_id,
                peer_owner(own_id),
                KeepAlive::AwaitingAck {
                    sent: now,
                    deadline: now + grace,
                },
            );
        }
        adopted.len()
    }

    /// Takeover done by peer `new_home`: the PEs of `dead` are its now.
    pub fn rehome_elements_of(&mut self, now: Instant, dead: u32, new_home: u32) -> usize {
        let moved = self.handlespace.elements_of_home(dead);
        for (handle, id) in &moved {
            self.handlespace.rehome(
                handle,
                *id,
                new_home,
                peer_owner(new_home),
                KeepAlive::SendAt(now + NO_KEEP_ALIVE),
            );
        }
        moved.len()
    }

    /// A PE we adopted in a takeover is reachable over `assoc` (the driver
    /// opened it to send the Home Keep Alive, RFC 5353 takeover procedure):
    /// from now on it is supervised there like a PE that registered over
    /// it, and its Keep Alive Ack is due within the keep-alive timeout.
    /// False (and nothing changes) if the PE is no longer an adopted one of
    /// ours.
    pub fn attach_adopted_element(
        &mut self,
        now: Instant,
        pool_handle: &PoolHandle,
        id: PeId,
        assoc: AssocId,
    ) -> bool {
        let own_id = self.config.server_id;
        let adopted = self
            .handlespace
            .element(pool_handle, id)
            .is_some_and(|entry| entry.home_registrar == own_id && is_peer_owner(entry.owner));
        if adopted {
            self.handlespace.rehome(
                pool_handle,
                id,
                own_id,
                assoc,
                KeepAlive::AwaitingAck {
                    sent: now,
                    deadline: now + self.config.keep_alive_timeout,
                },
            );
        }
        adopted
    }

    /// Mutable access for the ENRP layer's table building is not needed:
    /// read-only pool element lookups in wire form.
    pub fn pool_element(&self, pool_handle: &PoolHandle, id: PeId) -> Option<PoolElement> {
        self.handlespace
            .element(pool_handle, id)
            .map(pool_element_of)
    }

    /// The stored membership proof of a PE (closed pools), for ENRP.
    pub fn membership_of(
        &self,
        pool_handle: &PoolHandle,
        id: PeId,
    ) -> Option<Box<MembershipProof>> {
        self.handlespace
            .element(pool_handle, id)
            .and_then(|entry| entry.membership.clone())
    }

    fn count_removal(&mut self, why: Removal) {
        match why {
            Removal::KeepAliveTimeout => {
                self.counters.keep_alive_failures += 1;
            }
            Removal::Expired => self.counters.expiries += 1,
            Removal::Unreachable => self.counters.unreachable_removals += 1,
            Removal::AssociationDown => self.counters.association_removals += 1,
            Removal::Deregistered => {}
        }
        *self
            .counters
            .removals
            .entry(why.label().to_string())
            .or_default() += 1;
    }

    /// The registration allow-list: an association whose address is unknown
    /// is refused once a list is configured.
    fn may_register(&mut self, now: Instant, from: AssocId) -> bool {
        if self.config.registration_networks.is_empty() {
            return true;
        }
        let remote = self.peer(now, from).remote;
        let allowed = remote.is_some_and(|addr| {
            let ip = canonical_ip(addr.ip());
            self.config
                .registration_networks
                .iter()
                .any(|net| net.contains(&ip))
        });
        if !allowed {
            tracing::warn!(
                assoc = from,
                ?remote,
                "registration from outside `access.registration_networks` refused"
            );
        }
        allowed
    }

    fn count_reject(&mut self, reason: &'static str) {
        *self
            .counters
            .registration_rejects
            .entry(reason.to_string())
            .or_default() += 1;
    }

    fn count_membership_refused(&mut self, message: &'static str, reason: &'static str) {
        *self
            .counters
            .membership_refused
            .entry(message.to_string())
            .or_default()
            .entry(reason.to_string())
            .or_default() += 1;
    }

    fn count_malformed(&mut self, reason: &'static str) {
        *self
            .counters
            .malformed
            .entry(reason.to_string())
            .or_default() += 1;
    }
}

/// Converts the codec's policy parameter into `policies`' form. The codec
/// splits the policy type off (`SelectionPolicy::value` is what follows it);
/// `PolicyParams::decode` wants the whole value, type first.
pub fn policy_params(policy: &SelectionPolicy) -> Result<PolicyParams, policies::PolicyError> {
    let mut value = Vec::with_capacity(4 + policy.value.len());
    value.extend_from_slice(&policy.policy_type.to_be_bytes());
    value.extend_from_slice(&policy.value);
    PolicyParams::decode(&value)
}

/// The inverse of [`policy_params`]: the codec's form of a policy.
pub fn selection_policy(params: &PolicyParams) -> SelectionPolicy {
    let bytes = params.to_bytes();
    SelectionPolicy {
        policy_type: params.policy_type(),
        value: bytes[4..].to_vec(),
    }
}

/// Replaces unspecified addresses (0.0.0.0, ::) of a PE's user transport by
/// the address its association comes from, so a PE bound to the wildcard
/// address still registers something pool users can reach.
fn fill_unspecified(mut transport: TransportAddress, remote: Option<IpAddr>) -> TransportAddress {
    if let Some(remote) = remote {
        for address in &mut transport.addresses {
            if address.is_unspecified() {
                *address = remote;
            }
        }
        let mut seen = Vec::with_capacity(transport.addresses.len());
        transport.addresses.retain(|a| {
            let fresh = !seen.contains(a);
            seen.push(*a);
            fresh
        });
    }
    transport
}

fn send_error(assoc: AssocId, causes: Vec<ErrorCause>) -> Action {
    Action::Send {
        assoc,
        payload: Message::Error {
            error: OperationError { causes },
        }
        .to_bytes(),
    }
}

fn parameter_tlv(parameter: &Parameter) -> Vec<u8> {
    let mut out = Vec::new();
    parameter.encode(&mut out);
    out
}

/// Encodes a Handle Resolution Response, dropping PEs from the end until it
/// fits the 16-bit length (only reachable with huge transports lists).
fn encode_fitting(mut message: Message) -> Vec<u8> {
    loop {
        let mut out = Vec::new();
        if message.try_encode(&mut out).is_ok() {
            return out;
        }
        match &mut message {
            Message::HandleResolutionResponse { pool_elements, .. }
                if !pool_elements.is_empty() =>
            {
                let keep = pool_elements.len() / 2;
                pool_elements.truncate(keep);
            }
            _ => return Vec::new(),
        }
    }
}

fn millis_since(now: Instant, then: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(then).as_millis()).unwrap_or(u64::MAX)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// "tcp 192.0.2.1:4739" style rendering of a transport parameter.
pub fn format_transport(transport: &TransportAddress) -> String {
    use protocol::rserpool::TransportKind;
    let name = match transport.kind {
        TransportKind::Sctp(_) => "sctp",
        TransportKind::Tcp(_) => "tcp",
        TransportKind::Udp => "udp",
        TransportKind::UdpLite => "udplite",
        TransportKind::Dccp { .. } => "dccp",
    };
    let addresses: Vec<String> = transport
        .addresses
        .iter()
        .map(|address| SocketAddr::new(*address, transport.port).to_string())
        .collect();
    format!("{name} {}", addresses.join(","))
}

/// Status snapshot served as JSON and printed by `registrar dump`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Our server identifier.
    pub server_id: u32,
    /// Number of pools.
    pub pool_count: usize,
    /// Number of PEs.
    pub element_count: usize,
    /// Associations the server knows.
    pub associations: usize,
    /// Pools sorted by handle.
    pub pools: Vec<PoolStatus>,
    /// Running totals.
    pub counters: Counters,
    /// ENRP peering, when enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrp: Option<crate::enrp::EnrpStatus>,
}

/// One pool in a [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Handle as text (lossy UTF-8).
    pub handle: String,
    /// Handle bytes in hex.
    pub handle_hex: String,
    /// Policy type number.
    pub policy_type: u32,
    /// Policy name.
    pub policy: String,
    /// PEs sorted by id.
    pub elements: Vec<ElementStatus>,
}

/// One PE in a [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElementStatus {
    /// PE identifier.
    pub id: u32,
    /// User transport.
    pub user_transport: String,
    /// Policy parameters.
    pub policy: String,
    /// Association it registered over.
    pub owner_association: u64,
    /// Home registrar id.
    pub home_registrar: u32,
    /// Registration life (ms; ≤ 0: none).
    pub registration_life_ms: i32,
    /// Time since first registration.
    pub registered_ms_ago: u64,
    /// Time since the last registration or keep-alive ack.
    pub last_heard_ms_ago: u64,
    /// A keep-alive is outstanding.
    pub awaiting_keep_alive_ack: bool,
    /// Endpoint Unreachable reports so far.
    pub unreachable_reports: u32,
    /// Closed pools: key id of the authority that certified the PE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership_authority: Option<u32>,
    /// Closed pools: end of the PE's certificate, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership_not_after: Option<u64>,
}
