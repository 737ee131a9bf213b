//! Sans-IO Pool Element (RFC 5352 §3.1–§3.3, §3.5, §3.6).
//!
//! One [`PoolElement`] registers one PE in one pool with one home registrar
//! at a time, chosen from its server table: the static list (slots
//! `0..registrar_count`) and, when the driver listens for ASAP Server
//! Announces, the registrars learnt from them (later slots, see
//! [`crate::server_table`]), which come and go with [`Input::Registrars`].
//!
//! # Transports in the registration
//!
//! The working group decided a PE registers *once with all its transports*
//! ("the animal with several legs"). The RFC 5354 Pool Element parameter
//! has room for one user transport (plus an ASAP transport, which describes
//! the PE's ASAP endpoint, not a data leg), so:
//!
//! * all addresses of a multi-homed SCTP PE go into the one SCTP transport
//!   parameter (SCTP transports carry any number of addresses);
//! * a TCP- or UDP-only PE registers its single transport;
//! * a PE cannot advertise SCTP *and* TCP legs in one registration. Doing so
//!   would take either a codec extension or several PE identifiers, and the
//!   latter breaks "register once" (a PU would treat the legs as different
//!   PEs). poolflow collectors therefore register their preferred leg.
//!
//! The user transport's Transport Use is whatever the caller configures;
//! poolflow collectors want `DataPlusControl`, since ASAP Cookies travel on
//! the data association (docs/billing-continuity.md). The ASAP
//! transport ([`PoolElementConfig::asap_transport`]) is optional (RFC 5354
//! §3.10): it is where a registrar that took over this PE's home sends the
//! Endpoint Keep Alive with the Home flag (RFC 5353 takeover procedure);
//! without it the PE learns of a takeover only when its own association
//! fails and it hunts.
//!
//! # Timers (RFC 5352 §5, all configurable, sub-second allowed)
//!
//! * registration response wait: T2-registration (30 s); a Registration is
//!   sent at most [`PoolElementConfig::max_registration_attempts`]
//!   (MAX-REG-ATTEMPT, 2) times to one registrar before hunting for another;
//! * deregistration response wait: T3-deregistration (2 s here; RFC 5352
//!   suggests 30 s, too long for a daemon's stop when its registrar is
//!   gone), bounded: the shutdown completes unconfirmed when it expires;
//! * re-registration: [`PoolElementConfig::reregistration_interval`], at most
//!   2/3 of the registration lifetime so a lost re-registration can be
//!   retried before the registrar drops the PE;
//! * connecting to a registrar: [`PoolElementConfig::connect_timeout`];
//! * after every registrar in the list failed once, the hunt pauses for
//!   [`PoolElementConfig::server_hunt_pause`] before the next round.

use std::time::{Duration, Instant};

use policies::PolicyParams;
use protocol::rserpool::asap::Message;
use protocol::rserpool::membership::{MemberCertificate, MembershipProof};
use protocol::rserpool::{OperationError, PoolHandle, TransportAddress, TransportKind};
use protocol::signing::SigningKey;

use crate::{RegistrarIndex, selection_policy_from_params};

/// Configuration of a [`PoolElement`].
#[derive(Debug, Clone)]
pub struct PoolElementConfig {
    /// Pool to join.
    pub pool_handle: PoolHandle,
    /// PE identifier: random 32 bits, persisted by the caller so a restarted
    /// PE replaces its own old registration instead of adding a second one.
    pub pe_identifier: u32,
    /// Where pool users reach this PE (see the module docs for why one).
    pub user_transport: TransportAddress,
    /// Where registrars reach this PE's ASAP endpoint (RFC 5354 §3.10), if
    /// the driver listens for ASAP; `None` leaves the parameter out.
    pub asap_transport: Option<TransportAddress>,
    /// Selection policy and this PE's parameters (e.g. Priority).
    pub policy: PolicyParams,
    /// Registration life announced to the registrar; `None` = infinite
    /// (encoded as a negative value, RFC 5354 §3.10).
    pub registration_lifetime: Option<Duration>,
    /// How often to re-register; clamped to 2/3 of the lifetime.
    pub reregistration_interval: Duration,
    /// Number of registrars in the static list.
    pub registrar_count: usize,
    /// Registrars may also be learnt from Server Announces: the static list
    /// may then be empty (the PE waits for an announce).
    pub registrars_announced: bool,
    /// T2-registration: wait for a Registration Response.
    pub registration_timeout: Duration,
    /// MAX-REG-ATTEMPT: Registrations sent to one registrar before hunting.
    pub max_registration_attempts: u32,
    /// T3-deregistration: bounded wait for a Deregistration Response.
    pub deregistration_timeout: Duration,
    /// Wait for an association to a registrar to come up.
    pub connect_timeout: Duration,
    /// Pause after a whole round over the registrar list failed.
    pub server_hunt_pause: Duration,
    /// Proof of membership of a closed pool: attached to every
    /// Registration and Deregistration (see
    /// `protocol::rserpool::membership`); `None` for open pools.
    pub membership: Option<MemberCredentials>,
}

/// A member's key and the pool authority's certificate for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberCredentials {
    /// The member's own Ed25519 key (signs each message).
    pub key: SigningKey,
    /// The authority's certificate binding that key to the pool.
    pub certificate: MemberCertificate,
}

impl PoolElementConfig {
    /// A configuration with RFC 5352 §5 timer defaults, a 300 s registration
    /// life re-registered every 200 s (RFC T4-reregistration is 10 min, but
    /// that would need a longer life; keep both short so a registrar that
    /// lost state learns about the PE quickly).
    pub fn new(
        pool_handle: PoolHandle,
        pe_identifier: u32,
        user_transport: TransportAddress,
        policy: PolicyParams,
        registrar_count: usize,
    ) -> Self {
        Self {
            pool_handle,
            pe_identifier,
            user_transport,
            asap_transport: None,
            policy,
            registration_lifetime: Some(Duration::from_secs(300)),
            reregistration_interval: Duration::from_secs(200),
            registrar_count,
            registrars_announced: false,
            registration_timeout: Duration::from_secs(30),
            max_registration_attempts: 2,
            deregistration_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(10),
            server_hunt_pause: Duration::from_secs(1),
            membership: None,
        }
    }

    /// Checks what the state machine relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.registrar_count == 0 && !self.registrars_announced {
            return Err(ConfigError::NoRegistrars);
        }
        let addresses = self.user_transport.addresses.len();
        let addresses_ok = match self.user_transport.kind {
            TransportKind::Sctp(_) => addresses >= 1,
            _ => addresses == 1,
        };
        if !addresses_ok {
            return Err(ConfigError::BadUserTransport { addresses });
        }
        if self.max_registration_attempts == 0 {
            return Err(ConfigError::ZeroAttempts);
        }
        Ok(())
    }

    /// The interval actually used between re-registrations.
    pub fn effective_reregistration_interval(&self) -> Duration {
        match self.registration_lifetime {
            Some(life) => self.reregistration_interval.min(life * 2 / 3),
            None => self.reregistration_interval,
        }
    }

    fn lifetime_on_wire(&self) -> i32 {
        match self.registration_lifetime {
            Some(life) => i32::try_from(life.as_millis()).unwrap_or(i32::MAX),
            None => -1,
        }
    }
}

/// A configuration the state machine cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The registrar list is empty.
    #[error("no registrars configured")]
    NoRegistrars,
    /// SCTP needs at least one address, TCP/UDP exactly one.
    #[error("user transport has {addresses} addresses (SCTP needs >= 1, others exactly 1)")]
    BadUserTransport {
        /// Addresses given.
        addresses: usize,
    },
    /// `max_registration_attempts` is 0.
    #[error("max_registration_attempts must be at least 1")]
    ZeroAttempts,
}

/// What the driver tells the PE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Begin: connect to the first registrar and register.
    Start,
    /// Leave the pool: deregister (bounded wait) and close.
    Shutdown,
    /// The association to a registrar is established.
    AssociationUp(RegistrarIndex),
    /// The association to a registrar ended or could not be established.
    AssociationDown(RegistrarIndex),
    /// One complete ASAP message from a registrar.
    Message(RegistrarIndex, Vec<u8>),
    /// [`PoolElement::poll_timeout`] has passed.
    Timer,
    /// New policy parameters (e.g. a lower priority to drain this PE for
    /// maintenance): registered at once when registered (RFC 5352 §3.1: a
    /// registration of a registered PE is an update), else used by the
    /// next registration. Same policy type only: a pool has one policy,
    /// and a registrar rejects a PE that disagrees.
    UpdatePolicy(PolicyParams),
    /// New membership credentials (reissued certificate, rotated key):
    /// re-registered at once when registered.
    UpdateMembership(Option<Box<MemberCredentials>>),
    /// The server table changed: per registrar slot, whether it is a
    /// candidate now (static slots always are; an announced registrar stops
    /// being one when its announces stop). Slots are only ever added.
    Registrars(Vec<bool>),
}

/// What the PE asks the driver to do, or reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Open an association to this registrar.
    Connect {
        /// Registrar to connect to.
        registrar: RegistrarIndex,
    },
    /// Send one ASAP message (PPID 11 on SCTP) to this registrar.
    Send {
        /// Destination.
        registrar: RegistrarIndex,
        /// The encoded message.
        bytes: Vec<u8>,
    },
    /// Close the association to this registrar.
    Close {
        /// Registrar to disconnect from.
        registrar: RegistrarIndex,
    },
    /// The registration (or a re-registration) was accepted.
    Registered {
        /// The PE's home registrar now.
        registrar: RegistrarIndex,
    },
    /// The registrar rejected the registration; the PE stops (a rejection,
    /// e.g. Inconsistent Pooling Policy, is a configuration problem that
    /// another registrar of the same handlespace would repeat).
    RegistrationFailed {
        /// Why.
        cause: RegistrationFailure,
    },
    /// The PE left the pool; nothing more will happen.
    Deregistered {
        /// The registrar answered the Deregistration (false: it timed out,
        /// or the PE was not registered at shutdown).
        confirmed: bool,
    },
}

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationFailure {
    /// Registration Response with the reject flag set.
    #[error(
        "registrar {registrar} rejected the registration: causes {:?}",
        cause_codes(error)
    )]
    Rejected {
        /// The rejecting registrar.
        registrar: RegistrarIndex,
        /// The error causes it gave (RFC 5354 §3.12), if any.
        error: Option<OperationError>,
    },
}

fn cause_codes(error: &Option<OperationError>) -> Vec<u16> {
    error
        .iter()
        .flat_map(|e| e.causes.iter().map(|c| c.code))
        .collect()
}

impl RegistrationFailure {
    /// Cause codes of the rejection (e.g. 0x0005 Inconsistent Pooling Policy).
    pub fn cause_codes(&self) -> Vec<u16> {
        match self {
            Self::Rejected { error, .. } => cause_codes(error),
        }
    }
}

/// Where the PE is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeState {
    /// Not started.
    Idle,
    /// Waiting for the association to `registrar`.
    Connecting {
        /// Registrar being connected.
        registrar: RegistrarIndex,
    },
    /// Registration sent, waiting for the response.
    Registering {
        /// Registrar asked.
        registrar: RegistrarIndex,
    },
    /// Registered with `registrar` as home.
    Registered {
        /// Home registrar.
        registrar: RegistrarIndex,
    },
    /// Between hunt rounds: every registrar failed once, or there is no
    /// candidate registrar yet (then until [`Input::Registrars`] brings one).
    HuntPause,
    /// Deregistration sent, waiting (bounded) for the response.
    Deregistering {
        /// Registrar asked.
        registrar: RegistrarIndex,
    },
    /// Rejected; stopped.
    Rejected,
    /// Deregistered; stopped.
    Stopped,
}

/// The Pool Element state machine.
#[derive(Debug)]
pub struct PoolElement {
    config: PoolElementConfig,
    state: PeState,
    /// The one timer: what it means depends on `state` (connect, response,
    /// re-registration, hunt pause, deregistration).
    deadline: Option<Instant>,
    /// Registrations sent to the current registrar without an answer.
    attempts: u32,
    /// Registrars that failed in a row; a full round triggers the pause.
    failures_in_round: usize,
    /// Server identifier of the home registrar, from its Keep Alives
    /// (0 until known, RFC 5354 §3.10), announced on re-registration.
    home_server_identifier: u32,
    /// Registrar the next connect goes to: the list is walked in order,
    /// wrapping around.
    next_registrar: RegistrarIndex,
    /// Wall clock at an instant, set by the driver: membership proofs are
    /// timestamped in Unix time.
    wall_clock: Option<(Instant, Duration)>,
    /// Per registrar slot: a candidate for the hunt.
    available: Vec<bool>,
}

impl PoolElement {
    /// Creates the PE; nothing happens until [`Input::Start`].
    pub fn new(config: PoolElementConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            state: PeState::Idle,
            deadline: None,
            attempts: 0,
            failures_in_round: 0,
            home_server_identifier: 0,
            next_registrar: 0,
            wall_clock: None,
            available: vec![true; config.registrar_count],
            config,
        })
    }

    /// Tells the PE the wall clock (since the Unix epoch) at `now`; the
    /// driver calls it before each event. Needed only with membership.
    pub fn set_wall_clock(&mut self, now: Instant, since_epoch: Duration) {
        self.wall_clock = Some((now, since_epoch));
    }

    fn unix_millis(&self, now: Instant) -> u64 {
        let wall = self.wall_clock.map_or(Duration::ZERO, |(at, wall)| {
            if now >= at {
                wall + (now - at)
            } else {
                wall.saturating_sub(at - now)
            }
        });
        u64::try_from(wall.as_millis()).unwrap_or(u64::MAX)
    }

    /// Current state.
    pub fn state(&self) -> PeState {
        self.state
    }

    /// The configuration.
    pub fn config(&self) -> &PoolElementConfig {
        &self.config
    }

    /// Server identifier of the home registrar as learnt from Keep Alives.
    pub fn home_server_identifier(&self) -> u32 {
        self.home_server_identifier
    }

    /// When to feed [`Input::Timer`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// Advances the state machine.
    pub fn on_event(&mut self, now: Instant, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Start => {
                if self.state == PeState::Idle {
                    self.connect_next(now, &mut out);
                }
            }
            Input::Shutdown => self.shutdown(now, &mut out),
            Input::AssociationUp(registrar) => self.on_up(now, registrar, &mut out),
            Input::AssociationDown(registrar) => self.on_down(now, registrar, &mut out),
            Input::Message(registrar, bytes) => self.on_message(now, registrar, &bytes, &mut out),
            Input::Timer => {
                if self.deadline.is_some_and(|deadline| now >= deadline) {
                    self.deadline = None;
                    self.on_timer(now, &mut out);
                }
            }
            Input::UpdateMembership(membership) => {
                // A reissued certificate (or rotated key): re-register at
                // once so the registrar holds the new proof.
                self.config.membership = membership.map(|m| *m);
                if let PeState::Registered { registrar } = self.state {
                    self.attempts = 0;
                    self.send_registration(now, registrar, &mut out);
                }
            }
            Input::Registrars(available) => self.on_registrars(now, available, &mut out),
            Input::UpdatePolicy(policy) => {
                if policy.policy_type() != self.config.policy.policy_type() {
                    tracing::warn!(
                        ?policy,
                        current = ?self.config.policy,
                        "ASAP PE: a pool's policy type cannot change: update ignored"
                    );
                } else if policy != self.config.policy {
                    self.config.policy = policy;
                    if let PeState::Registered { registrar } = self.state {
                        self.attempts = 0;
                        self.send_registration(now, registrar, &mut out);
                    }
                }
            }
        }
        out
    }

    /// The policy parameters registered (or to be registered).
    pub fn policy(&self) -> &PolicyParams {
        &self.config.policy
    }

    fn current_registrar(&self) -> Option<RegistrarIndex> {
        match self.state {
            PeState::Connecting { registrar }
            | PeState::Registering { registrar }
            | PeState::Registered { registrar }
            | PeState::Deregistering { registrar } => Some(registrar),
            _ => None,
        }
    }

    fn on_registrars(&mut self, now: Instant, available: Vec<bool>, out: &mut Vec<Output>) {
        let newly_available = available
            .iter()
            .enumerate()
            .any(|(slot, &live)| live && !self.available.get(slot).copied().unwrap_or(false));
        // Slots never go away: a shorter list keeps the slots it omits.
        for (slot, live) in available.into_iter().enumerate() {
            match self.available.get_mut(slot) {
                Some(known) => *known = live,
                None => self.available.push(live),
            }
        }
        // A registrar that just appeared ends a hunt pause at once: the
        // pause is there to stop hammering registrars that failed, and this
        // one has not.
        if newly_available && self.state == PeState::HuntPause {
            self.failures_in_round = 0;
            self.connect_next(now, out);
        }
    }

    /// Where the hunt resumes after `registrar`. Not wrapped here: the
    /// table may grow before the next connect, which wraps over its size
    /// then (a slot added behind the last one is next, not skipped).
    fn slot_after(&self, registrar: RegistrarIndex) -> RegistrarIndex {
        registrar + 1
    }

    fn candidate_count(&self) -> usize {
        self.available.iter().filter(|&&live| live).count()
    }

    fn connect_next(&mut self, now: Instant, out: &mut Vec<Output>) {
        let slots = self.available.len();
        let Some(registrar) = (0..slots)
            .map(|step| (self.next_registrar + step) % slots)
            .find(|&slot| self.available[slot])
        else {
            // Nothing to ask yet (only announced registrars, none heard).
            self.state = PeState::HuntPause;
            self.deadline = None;
            return;
        };
        self.next_registrar = self.slot_after(registrar);
        self.attempts = 0;
        self.state = PeState::Connecting { registrar };
        self.deadline = Some(now + self.config.connect_timeout);
        out.push(Output::Connect { registrar });
    }

    /// Server hunt (RFC 5352 §3.6 for PEs): drop the current registrar and
    /// try the next one in the list; pause after a whole failed round.
    fn hunt(&mut self, now: Instant, out: &mut Vec<Output>) {
        if let Some(registrar) = self.current_registrar() {
            out.push(Output::Close { registrar });
            tracing::info!(registrar, "ASAP PE: hunting for another registrar");
        }
        self.home_server_identifier = 0;
        self.failures_in_round += 1;
        if self.failures_in_round >= self.candidate_count() {
            self.failures_in_round = 0;
            self.state = PeState::HuntPause;
            self.deadline = Some(now + self.config.server_hunt_pause);
        } else {
            self.connect_next(now, out);
        }
    }

    fn registration_message(&self, now: Instant) -> Vec<u8> {
        let pool_element = protocol::rserpool::PoolElement {
            pe_identifier: self.config.pe_identifier,
            home_enrp_server_identifier: self.home_server_identifier,
            registration_life: self.config.lifetime_on_wire(),
            user_transport: self.config.user_transport.clone(),
            policy: selection_policy_from_params(&self.config.policy),
            asap_transport: self.config.asap_transport.clone(),
        };
        let membership = self.config.membership.as_ref().map(|m| {
            Box::new(MembershipProof::sign_registration(
                &m.key,
                &m.certificate,
                &self.config.pool_handle,
                &pool_element,
                self.unix_millis(now),
            ))
        });
        Message::Registration {
            pool_handle: self.config.pool_handle.clone(),
            pool_element,
            membership,
        }
        .to_bytes()
    }

    fn send_registration(
        &mut self,
        now: Instant,
        registrar: RegistrarIndex,
        out: &mut Vec<Output>,
    ) {
        self.attempts += 1;
        self.state = PeState::Registering { registrar };
        self.deadline = Some(now + self.config.registration_timeout);
        out.push(Output::Send {
            registrar,
            bytes: self.registration_message(now),
        });
    }

    fn on_up(&mut self, now: Instant, registrar: RegistrarIndex, out: &mut Vec<Output>) {
        match self.state {
            PeState::Connecting { registrar: current } if current == registrar => {
                self.send_registration(now, registrar, out);
            }
            // A connect that completed after the hunt moved on.
            _ if self.current_registrar() != Some(registrar) => {
                out.push(Output::Close { registrar });
            }
            _ => {}
        }
    }

    fn on_down(&mut self, now: Instant, registrar: RegistrarIndex, out: &mut Vec<Output>) {
        if self.current_registrar() != Some(registrar) {
            return;
        }
        match self.state {
            PeState::Deregistering { .. } => self.finish_deregistration(false, out),
            _ => self.hunt(now, out),
        }
    }

    fn on_timer(&mut self, now: Instant, out: &mut Vec<Output>) {
        match self.state {
            PeState::Connecting { .. } => self.hunt(now, out),
            PeState::Registering { registrar } => {
                if self.attempts < self.config.max_registration_attempts {
                    self.send_registration(now, registrar, out);
                } else {
                    self.hunt(now, out);
                }
            }
            PeState::Registered { registrar } => {
                // Re-registration: same message, same PE identifier; the
                // registrar treats it as an update (RFC 5352 §3.1).
                self.attempts = 0;
                self.send_registration(now, registrar, out);
            }
            PeState::HuntPause => self.connect_next(now, out),
            PeState::Deregistering { .. } => self.finish_deregistration(false, out),
            PeState::Idle | PeState::Rejected | PeState::Stopped => {}
        }
    }

    fn on_message(
        &mut self,
        now: Instant,
        registrar: RegistrarIndex,
        bytes: &[u8],
        out: &mut Vec<Output>,
    ) {
        let message = match Message::decode(bytes) {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(registrar, %error, "ASAP PE: undecodable message dropped");
                return;
            }
        };
        let own_pool = |handle: &PoolHandle| *handle == self.config.pool_handle;
        match message {
            Message::RegistrationResponse {
                reject,
                pool_handle,
                pe_identifier,
                error,
            } if own_pool(&pool_handle) && pe_identifier == self.config.pe_identifier => {
                if self.state != (PeState::Registering { registrar }) {
                    return;
                }
                if reject {
                    self.state = PeState::Rejected;
                    self.deadline = None;
                    out.push(Output::Close { registrar });
                    out.push(Output::RegistrationFailed {
                        cause: RegistrationFailure::Rejected { registrar, error },
                    });
                } else {
                    self.failures_in_round = 0;
                    self.attempts = 0;
                    // Hunting restarts from the registrar after this one.
                    self.next_registrar = self.slot_after(registrar);
                    self.state = PeState::Registered { registrar };
                    self.deadline = Some(now + self.config.effective_reregistration_interval());
                    out.push(Output::Registered { registrar });
                }
            }
            Message::EndpointKeepAlive {
                home,
                server_identifier,
                pool_handle,
                pe_identifier,
            } if own_pool(&pool_handle)
                && pe_identifier.is_none_or(|id| id == self.config.pe_identifier) =>
            {
                self.on_keep_alive(now, registrar, home, server_identifier, out);
            }
            Message::DeregistrationResponse {
                pool_handle,
                pe_identifier,
                error,
            } if own_pool(&pool_handle) && pe_identifier == self.config.pe_identifier => {
                if self.state == (PeState::Deregistering { registrar }) {
                    if let Some(error) = error {
                        tracing::warn!(?error, "ASAP PE: deregistration answered with an error");
                    }
                    self.finish_deregistration(true, out);
                }
            }
            other => {
                tracing::debug!(registrar, message = ?other, "ASAP PE: message ignored");
            }
        }
    }

    /// Keep Alive (RFC 5352 §3.5): always answered with a Keep Alive Ack for
    /// our PE identifier. With the Home flag the sender becomes the home
    /// registrar: it took over our registration from the old home (RFC 5353
    /// §3.9), so the registration stands and there is nothing to redo. That
    /// holds while we are registered elsewhere and also while we are hunting
    /// (our old home's association failed): the hunt ends, since the
    /// handlespace still has our registration and the sender vouches for it.
    fn on_keep_alive(
        &mut self,
        now: Instant,
        registrar: RegistrarIndex,
        home: bool,
        server_identifier: u32,
        out: &mut Vec<Output>,
    ) {
        out.push(Output::Send {
            registrar,
            bytes: Message::EndpointKeepAliveAck {
                pool_handle: self.config.pool_handle.clone(),
                pe_identifier: self.config.pe_identifier,
            }
            .to_bytes(),
        });
        tracing::debug!(
            registrar,
            home,
            server = format_args!("{server_identifier:#010x}"),
            "ASAP PE: Endpoint Keep Alive answered"
        );
        let current = self.current_registrar();
        if current == Some(registrar) {
            self.home_server_identifier = server_identifier;
        }
        if !home || current == Some(registrar) {
            return;
        }
        match self.state {
            PeState::Registered { registrar: old } => {
                out.push(Output::Close { registrar: old });
                // The deadline (re-registration) carries over: the
                // registration itself is unchanged, only its home moved.
            }
            PeState::Connecting {
                registrar: abandoned,
            }
            | PeState::Registering {
                registrar: abandoned,
            } => {
                out.push(Output::Close {
                    registrar: abandoned,
                });
                self.deadline = Some(now + self.config.effective_reregistration_interval());
            }
            PeState::HuntPause => {
                self.deadline = Some(now + self.config.effective_reregistration_interval());
            }
            // Not started, leaving or stopped: a new home changes nothing.
            PeState::Idle
            | PeState::Deregistering { .. }
            | PeState::Rejected
            | PeState::Stopped => return,
        }
        tracing::info!(
            registrar,
            server_identifier = format_args!("{server_identifier:#010x}"),
            "ASAP PE: adopted by a new home registrar (Keep Alive with the Home flag)"
        );
        self.state = PeState::Registered { registrar };
        self.home_server_identifier = server_identifier;
        self.failures_in_round = 0;
        self.attempts = 0;
        self.next_registrar = self.slot_after(registrar);
        out.push(Output::Registered { registrar });
    }

    fn shutdown(&mut self, now: Instant, out: &mut Vec<Output>) {
        match self.state {
            // Mid-registration the registrar may already have accepted
            // (the response is in flight): deregister to be sure.
            PeState::Registered { registrar } | PeState::Registering { registrar } => {
                self.state = PeState::Deregistering { registrar };
                self.deadline = Some(now + self.config.deregistration_timeout);
                out.push(Output::Send {
                    registrar,
                    bytes: Message::Deregistration {
                        pool_handle: self.config.pool_handle.clone(),
                        pe_identifier: self.config.pe_identifier,
                        membership: self.config.membership.as_ref().map(|m| {
                            Box::new(MembershipProof::sign_deregistration(
                                &m.key,
                                &m.certificate,
                                &self.config.pool_handle,
                                self.config.pe_identifier,
                                self.unix_millis(now),
                            ))
                        }),
                    }
                    .to_bytes(),
                });
            }
            PeState::Deregistering { .. } | PeState::Stopped => {}
            _ => {
                // Not registered (or only possibly, mid-registration): there
                // is nothing confirmed to undo; the lifetime expires it.
                if let Some(registrar) = self.current_registrar() {
                    out.push(Output::Close { registrar });
                }
                self.state = PeState::Stopped;
                self.deadline = None;
                out.push(Output::Deregistered { confirmed: false });
            }
        }
    }

    fn finish_deregistration(&mut self, confirmed: bool, out: &mut Vec<Output>) {
        if let Some(registrar) = self.current_registrar() {
            out.push(Output::Close { registrar });
        }
        self.state = PeState::Stopped;
        self.deadline = None;
        out.push(Output::Deregistered { confirmed });
    }
}
