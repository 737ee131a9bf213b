//! The exporter as an RSerPool pool user, sans-IO: record sequences, replay
//! buffers, the cookie protocol, failover and Preferred Primary failback
//! (docs/billing-continuity.md). No sockets, no clock: the driver
//! ([`crate::stream`]) feeds events with `now` and carries out the
//! [`Output`]s in order; tests do the same with a fake clock.
//!
//! Life of an association:
//! 1. [`Output::Select`] → the driver asks the ASAP pool user for PEs by
//!    policy → [`Exporter::handle_selected`].
//! 2. [`Output::Connect`] → [`Exporter::handle_association_up`]: per domain a
//!    Cookie Echo (the last cookie, or an introduction), the templates, then
//!    every record from the cookie on (the replay), then new records.
//! 3. ASAP Cookies (PPID 11) drop covered records from the replay buffers,
//!    once they pass every check (signature by a trusted key when
//!    `cookie_keys` is set, this exporter, a known domain, nothing claimed
//!    past what this association sent).
//! 4. Failure (association ended, a refused cookie, or no cookie progress
//!    for `cookie_timeout` while records are outstanding) → Close,
//!    [`Output::ReportUnreachable`], back to 1. A PE whose cookie was
//!    refused is neither selected nor failed back to for `untrusted_for`. Nothing reachable → wait
//!    `retry_interval`, buffer meanwhile (back-pressure when full).
//! 5. Failback (the PE has the Priority policy): every `failback_check`
//!    [`Output::CheckFailback`]; a better PE → stop sending, wait for the
//!    cookie to cover everything sent (drain, bounded by `drain_timeout`,
//!    else failover), then Close and Connect to it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use asap_client::PoolElementInfo;
use policies::{PeId, PolicyParams};
use protocol::billing::{
    BillingCookie, CookieError, CookieKeys, CookieMessageKind, cookie_from_message,
};
use protocol::ipfix::reliability::{self, ReliabilityStatistics};
use protocol::ipfix::{MessageWriter, Template};
use protocol::rserpool::ASAP_SCTP_PPID;
use protocol::rserpool::asap::Message as AsapMessage;

use transport::Reliability;

use crate::replay::{
    BufferedRecord, PushError, RecordBytes, RecoveredSpill, ReplayBuffer, ReplayLimits,
    SpillRequest,
};
use crate::sequence::{DomainState, ExporterState};

/// PPID of IPFIX messages (RFC 7011 §10.2.4: 0, unspecified).
pub const IPFIX_PPID: u32 = 0;
/// The SCTP stream of billing messages (one stream, one sequence counter).
pub const BILLING_STREAM: u16 = protocol::billing::BILLING_STREAM;
/// The SCTP stream of best-effort (non-billing) records: PR-SCTP, no record
/// sequences, no replay. Its own IPFIX sequence numbers (RFC 7011 §10.2.4.4
/// counts per stream) show the collector what PR-SCTP abandoned.
pub const BEST_EFFORT_STREAM: u16 = 1;

/// Settings of the [`Exporter`] core.
#[derive(Debug, Clone)]
pub struct ExporterConfig {
    /// This exporter's id, unique in the pool.
    pub exporter_id: u32,
    /// Largest IPFIX message in bytes.
    pub message_size: usize,
    /// No cookie progress for this long while records are outstanding
    /// means the collector is gone (or stuck): fail over.
    pub cookie_timeout: Duration,
    /// Longest wait for cookie progress while the association keeps
    /// acknowledging data ([`Exporter::handle_transport_progress`]): the
    /// collector is alive and reading, only slow to commit, as on a machine
    /// busy with a build. Its ingest queue is bounded, so a collector whose
    /// store is wedged stops reading, its receive window closes, and the
    /// plain `cookie_timeout` applies again. Not below `cookie_timeout`.
    pub cookie_stall_timeout: Duration,
    /// While on a Priority PE: how often to ask whether a better PE is back.
    pub failback_check: Duration,
    /// The same, for [`FAST_FAILBACK_CHECKS_FOR`] after a failover away from
    /// a PE of better priority than the current one: a primary restarted by
    /// its service manager is back within seconds, and every check period
    /// adds to the time billing records go to the backup. Not above
    /// `failback_check`.
    pub failback_check_after_failover: Duration,
    /// Longest wait for the drain before a failback; then fail over.
    pub drain_timeout: Duration,
    /// Nothing reachable: ask for PEs again after this long.
    pub retry_interval: Duration,
    /// Do not fail back to a PE within this long of its failure.
    pub failback_holdoff: Duration,
    /// Persist cookies at most this often (sequence reservations are
    /// persisted at once, before any record using them goes out).
    pub state_sync_interval: Duration,
    /// Sequence numbers reserved per state file write.
    pub sequence_reservation: u64,
    /// Replay buffer limits (per domain).
    pub replay: ReplayLimits,
    /// Best-effort records: PR-SCTP lifetime ("ttl") of their messages;
    /// a message not delivered by then is abandoned, not retransmitted.
    pub best_effort_lifetime: Duration,
    /// Best-effort records queued per domain while no collector takes
    /// them (failover, drain); beyond this the oldest are dropped, counted.
    pub best_effort_queue: usize,
    /// The pool's cookie public keys: every cookie must carry a version 2
    /// signature by one of them. `None`: cookies are taken unchecked (the
    /// exporter cannot tell a forged cookie from a real one).
    pub cookie_keys: Option<CookieKeys>,
    /// A PE whose cookie was refused is not used again for this long.
    pub untrusted_for: Duration,
    /// How often the Exporting Process Reliability Statistics (RFC 7011
    /// 4.3) go out while streaming (also on every new association and at
    /// the end of a stream).
    pub statistics_interval: Duration,
}

impl ExporterConfig {
    /// Defaults suitable for tests and a LAN; memory-only buffering.
    pub fn new(exporter_id: u32) -> Self {
        Self {
            exporter_id,
            message_size: 1400,
            cookie_timeout: Duration::from_secs(5),
            cookie_stall_timeout: Duration::from_secs(6),
            failback_check: Duration::from_millis(500),
            failback_check_after_failover: Duration::from_millis(50),
            drain_timeout: Duration::from_secs(5),
            retry_interval: Duration::from_secs(1),
            failback_holdoff: Duration::from_secs(1),
            state_sync_interval: Duration::from_millis(100),
            sequence_reservation: 100_000,
            replay: ReplayLimits::memory(100_000),
            best_effort_lifetime: Duration::from_millis(1000),
            best_effort_queue: 10_000,
            cookie_keys: None,
            untrusted_for: Duration::from_secs(24 * 3600),
            statistics_interval: Duration::from_secs(1),
        }
    }
}

/// How long after a failover the failback checks run at
/// [`ExporterConfig::failback_check_after_failover`]: long enough for a
/// collector restarted on the spot to come back, short enough that an
/// exporter left on a backup for good does not keep asking its registrar
/// twenty times a second.
pub const FAST_FAILBACK_CHECKS_FOR: Duration = Duration::from_secs(60);

/// Identifies one data association; events of older ones are ignored.
pub type AssociationId = u64;

/// What the driver must do (in order) or may report.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Ask the ASAP pool user for PEs by the pool's policy (best first) and
    /// answer with [`Exporter::handle_selected`].
    Select,
    /// Tell the registrar this PE is unreachable (ASAP Endpoint Unreachable).
    ReportUnreachable {
        /// The PE.
        pe_id: PeId,
    },
    /// Open a data association to this PE's user transport.
    Connect {
        /// Tag for the association's events.
        association: AssociationId,
        /// The PE.
        pe: PoolElementInfo,
    },
    /// Send one message on the association (ordered).
    Send {
        /// The association.
        association: AssociationId,
        /// [`BILLING_STREAM`] (cookies, templates, billing records) or
        /// [`BEST_EFFORT_STREAM`].
        stream: u16,
        /// Reliable for everything but best-effort data, which is sent
        /// with the PR-SCTP lifetime `best_effort_lifetime`.
        reliability: Reliability,
        /// 0 for IPFIX, 11 for ASAP.
        ppid: u32,
        /// The message.
        payload: Vec<u8>,
    },
    /// Close the association (gracefully: queued messages still go out).
    Close {
        /// The association.
        association: AssociationId,
    },
    /// Re-resolve the pool and answer [`Exporter::handle_failback_check`]
    /// with the PE to fail back to, if any, leaving out `avoid`.
    CheckFailback {
        /// The PE in use.
        current: PeId,
        /// PEs whose cookies were refused: never a failback target.
        avoid: Vec<PeId>,
    },
    /// Write the state file now (before executing the outputs that follow).
    PersistState(ExporterState),
    /// Something worth a log line or a metric.
    Notice(Notice),
}

/// Events for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Streaming to a PE (first time, after a failover or a failback).
    Streaming {
        /// The PE.
        pe_id: PeId,
        /// Why we came here.
        reason: ConnectReason,
        /// Records to send from the cookie on (replay and queued).
        pending: u64,
    },
    /// The PE in use failed.
    FailoverStarted {
        /// The failed PE.
        pe_id: PeId,
        /// What showed the failure.
        cause: FailureCause,
    },
    /// A better PE is back: draining the current one.
    DrainStarted {
        /// Current PE.
        from: PeId,
        /// Where we go after the drain.
        to: PeId,
    },
    /// A PE could not be reached.
    ConnectFailed {
        /// The PE.
        pe_id: PeId,
    },
    /// No PE to use: buffering, retrying later.
    NoPoolElement {
        /// Why.
        reason: String,
    },
    /// A cookie was refused: no record was released on it, the PE is
    /// reported unreachable, failed over from and not used again for
    /// `untrusted_for`.
    CookieRejected {
        /// The PE that sent it (none if it came while no PE was in use).
        pe_id: Option<PeId>,
        /// Why, as a metric label.
        reason: CookieRejectReason,
        /// Why, for the log.
        detail: String,
    },
    /// The collector sent an ASAP Error (e.g. it refused our Cookie Echo).
    CollectorError {
        /// Debug text of the error.
        error: String,
    },
}

/// Why a cookie from a collector was refused (the metric label of
/// `poolflow_exporter_cookie_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CookieRejectReason {
    /// Not a decodable ASAP Cookie (garbage, unknown version, bad length,
    /// reserved bits).
    Malformed,
    /// A Cookie Echo from the collector (only exporters send those).
    WrongDirection,
    /// A version 2 cookie whose signature does not verify with the trusted
    /// key of its key id: forged or corrupted.
    BadSignature,
    /// A version 2 cookie signed by a key the exporter does not trust.
    UnknownKey,
    /// Not signed in a way the exporter can check: a version 1 (HMAC)
    /// cookie or an introduction, while public keys are configured.
    Unsigned,
    /// For another exporter id.
    WrongExporter,
    /// For an observation domain this exporter does not send.
    WrongDomain,
    /// Claims a record sequence not yet sent on this association.
    BeyondSent,
}

impl CookieRejectReason {
    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::WrongDirection => "wrong_direction",
            Self::BadSignature => "bad_signature",
            Self::UnknownKey => "unknown_key",
            Self::Unsigned => "unsigned",
            Self::WrongExporter => "wrong_exporter",
            Self::WrongDomain => "wrong_domain",
            Self::BeyondSent => "beyond_sent",
        }
    }

    fn of(error: &CookieError) -> Self {
        match error {
            CookieError::BadSignature(_) | CookieError::BadHmac => Self::BadSignature,
            CookieError::UnknownKey(_) => Self::UnknownKey,
            CookieError::Unsigned | CookieError::HmacNotTrusted => Self::Unsigned,
            _ => Self::Malformed,
        }
    }
}

/// Why an association was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectReason {
    /// The first association (or after waiting with none reachable).
    Initial,
    /// The previous PE failed.
    Failover,
    /// Back to a better PE after draining.
    Failback,
}

/// What showed that a PE failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCause {
    /// The association failed or was closed by the peer.
    AssociationEnded,
    /// No cookie progress within `cookie_timeout`.
    CookieTimeout,
    /// The drain before a failback did not finish within `drain_timeout`.
    DrainTimeout,
    /// The collector sent a cookie the exporter refused.
    CookieRejected,
}

impl FailureCause {
    /// Whether this is evidence that the PE is unreachable, worth an ASAP
    /// Endpoint Unreachable report (RFC 5352 §3.5). Only a transport
    /// failure is: a stalled cookie or drain is a protocol problem between
    /// this exporter and that collector (e.g. a hole in the exporter's own
    /// sequence), and reporting it would let one confused pool user get a
    /// healthy collector removed for every user of the pool.
    pub fn is_transport_failure(self) -> bool {
        matches!(self, Self::AssociationEnded)
    }

    /// Whether the PE is reported to the registrar (ASAP Endpoint
    /// Unreachable): a transport failure, or a cookie the exporter refused
    /// (the PE is hostile or misconfigured: other pool users should not
    /// trust it either, and the registrar checks it before acting).
    pub fn is_reported(self) -> bool {
        self.is_transport_failure() || matches!(self, Self::CookieRejected)
    }

    /// Label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::AssociationEnded => "association_ended",
            Self::CookieTimeout => "cookie_timeout",
            Self::DrainTimeout => "drain_timeout",
            Self::CookieRejected => "cookie_rejected",
        }
    }
}

/// Counters for metrics (monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Failures of the PE in use.
    pub failovers: u64,
    /// Of those, the ones for a protocol problem (cookie or drain stalled),
    /// not reported to the registrar as unreachable.
    pub protocol_failovers: u64,
    /// Completed failbacks.
    pub failbacks: u64,
    /// Cookie deadlines moved on because the collector kept acknowledging
    /// data ([`Exporter::handle_transport_progress`]): slow commits that
    /// were not taken for a failure.
    pub cookie_waits_extended: u64,
    /// Data records sent (replays included).
    pub records_sent: u64,
    /// Data records sent again after a failover.
    pub records_replayed: u64,
    /// Cookies accepted.
    pub cookies: u64,
    /// Best-effort records sent (PR-SCTP; not acknowledged, not replayed).
    pub best_effort_sent: u64,
    /// Best-effort records dropped from a full queue (no collector took
    /// them in time).
    pub best_effort_dropped: u64,
    /// Cookies refused (each one also a failover).
    pub cookies_rejected: u64,
    /// Record sequences declared never to be sent (lost in restarts or too
    /// large for a message), over every run of the exporter.
    pub declared_not_sent: u64,
    /// Reliability statistics records sent.
    pub statistics_sent: u64,
}

/// Why the core refused a record.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The domain's replay buffer is full: wait ([`Exporter::can_accept`]).
    #[error("replay buffer full")]
    Full,
}

#[derive(Debug)]
struct Domain {
    id: u32,
    /// Next record sequence to assign.
    next_sequence: u64,
    /// Sequences below this are reserved in the state file.
    reserved_until: u64,
    cookie: Option<BillingCookie>,
    buffer: ReplayBuffer,
    /// Next sequence to send on the current association.
    send_cursor: u64,
    /// Cookie Echo and templates sent on the current association.
    introduced: bool,
    /// How many of the core's templates (a prefix of
    /// `Exporter::templates`) this domain announced on the current
    /// association: templates learned at run time go out before the next
    /// data message of the domain.
    templates_announced: usize,
    /// Sequences declared never to be sent, over every run (persisted).
    not_sent: u64,
    /// Sequences below this were examined for loss at a restart (persisted).
    declared_until: u64,
    /// IPFIX messages of the domain sent by this process.
    messages_sent: u64,
}

impl Domain {
    /// First sequence not covered by the cookie.
    fn acknowledged_until(&self) -> u64 {
        self.cookie.map_or(0, |c| c.next_record_sequence())
    }

    /// Sent on the current association (or before it) and not covered.
    fn outstanding(&self) -> u64 {
        self.send_cursor.saturating_sub(self.acknowledged_until())
    }

    /// Where sending starts on a new association: after the cookie, or at
    /// the oldest record still held if records in between were lost (a
    /// restart without spill). Spilled records were never sent by this
    /// process (only memory is sent): while they are on their way back
    /// into an empty window (at a start), sending waits at the cookie.
    fn rewind(&mut self) {
        let from_cookie = self.acknowledged_until();
        self.send_cursor = match self.buffer.first_in_memory() {
            Some(first) => first.max(from_cookie),
            None if self.buffer.spilled_len() > 0 => from_cookie,
            None => self.next_sequence.max(from_cookie),
        };
        self.introduced = false;
        self.templates_announced = 0;
    }
}

#[derive(Debug, Clone)]
enum Phase {
    /// Waiting for [`Exporter::handle_selected`].
    Selecting { reason: ConnectReason },
    /// Nothing reachable; select again at `retry_at`.
    Waiting {
        retry_at: Instant,
        reason: ConnectReason,
    },
    Connecting {
        association: AssociationId,
        pe: PoolElementInfo,
        reason: ConnectReason,
    },
    Streaming {
        association: AssociationId,
        pe: PoolElementInfo,
        next_failback_check: Option<Instant>,
        failback_check_pending: bool,
    },
    Draining {
        association: AssociationId,
        pe: PoolElementInfo,
        target: PoolElementInfo,
        deadline: Instant,
    },
}

/// The exporter pool user core.
#[derive(Debug)]
pub struct Exporter {
    config: ExporterConfig,
    domains: BTreeMap<u32, Domain>,
    templates: Vec<Template>,
    /// Ids of `templates`, for the per-record [`Self::has_template`].
    template_ids: HashSet<u16>,
    phase: Phase,
    next_association: AssociationId,
    /// PEs that failed since the last successful association: not tried
    /// again until the next retry round.
    failed_this_round: HashSet<PeId>,
    /// When each PE last failed: a failback poll right after a failure may
    /// still list a dead PE (the registrar has not dropped it yet); moving
    /// there would only cost a drain and a connect timeout.
    last_failure: HashMap<PeId, Instant>,
    /// PEs whose cookies were refused, and until when they are avoided.
    untrusted: HashMap<PeId, Instant>,
    /// No cookie progress by then (while records are outstanding) = failure.
    cookie_deadline: Option<Instant>,
    /// Since when the current wait for cookie progress runs (the first
    /// record sent without a cookie pending, or the last cookie progress):
    /// transport progress extends `cookie_deadline` up to this plus
    /// `cookie_stall_timeout`.
    cookie_wait_since: Option<Instant>,
    /// Messages the current association's peer had acknowledged at the last
    /// [`Exporter::handle_transport_progress`] (0 at association up).
    transport_acknowledged: u64,
    outputs: VecDeque<Output>,
    /// What the replay buffers ask of the driver's spill store, in order
    /// ([`Self::poll_spill`]); apart from `outputs` so that a send waiting
    /// for room never holds the spill up.
    spill_requests: VecDeque<SpillRequest>,
    /// What the driver's spill store recovered, for domains not opened yet.
    recovered_spill: BTreeMap<u32, RecoveredSpill>,
    writer: MessageWriter,
    /// Wall clock at `clock_base` (export times).
    wall_base_ms: u64,
    clock_base: Instant,
    cookies_dirty: bool,
    last_persist: Instant,
    /// Round robin over domains when sending.
    send_turn: usize,
    /// Unix ms when this process started (systemInitTimeMilliseconds).
    system_init_ms: u64,
    /// When the next periodic statistics are due (while streaming).
    next_statistics: Option<Instant>,
    /// Statistics records sent on the current association (their own
    /// RFC 7011 sequence numbers in the statistics domain).
    statistics_sequence: u32,
    /// Best-effort records per domain (apart from billing: no sequences,
    /// no replay, nothing persisted).
    best_effort: BTreeMap<u32, BestEffortDomain>,
    /// Billing and best-effort messages take turns, so neither class
    /// starves the other.
    best_effort_turn: bool,
    counters: Counters,
    started: bool,
    /// The best priority of a PE failed over from, and when: while on a
    /// worse one within [`FAST_FAILBACK_CHECKS_FOR`], failback checks run
    /// at `failback_check_after_failover`.
    left_priority: Option<(u32, Instant)>,
}

/// One domain's best-effort records.
#[derive(Debug, Default)]
struct BestEffortDomain {
    /// Waiting to be sent: (template id, record bytes).
    queue: VecDeque<(u16, RecordBytes)>,
    /// IPFIX sequence number on [`BEST_EFFORT_STREAM`]: data records sent
    /// so far (abandoned ones included, so the collector sees them as a
    /// gap).
    sequence: u32,
    /// How many of the core's templates went out on the best-effort stream
    /// of the current association (templates precede their data on the
    /// same stream, reliably: RFC 7011 §10.2.4.3).
    templates_announced: usize,
}

impl Exporter {
    /// Creates the core from the persisted state. `unix_ms` is the wall
    /// clock at `now` (for IPFIX export times). `recovered_spill` is what
    /// the driver's spill store holds from a previous run
    /// (`crate::spill::SpillStore::open`; empty without a spill): the
    /// replay buffers ask for those records back at once
    /// ([`Self::poll_spill`]).
    pub fn new(
        config: ExporterConfig,
        state: ExporterState,
        templates: Vec<Template>,
        now: Instant,
        unix_ms: u64,
        recovered_spill: BTreeMap<u32, RecoveredSpill>,
    ) -> Self {
        let mut exporter = Self {
            writer: MessageWriter::new(config.message_size),
            config,
            domains: BTreeMap::new(),
            template_ids: templates.iter().map(|t| t.id).collect(),
            templates,
            phase: Phase::Selecting {
                reason: ConnectReason::Initial,
            },
            next_association: 1,
            failed_this_round: HashSet::new(),
            last_failure: HashMap::new(),
            untrusted: HashMap::new(),
            cookie_deadline: None,
            cookie_wait_since: None,
            transport_acknowledged: 0,
            outputs: VecDeque::new(),
            spill_requests: VecDeque::new(),
            recovered_spill,
            wall_base_ms: unix_ms,
            clock_base: now,
            cookies_dirty: false,
            last_persist: now,
            send_turn: 0,
            system_init_ms: unix_ms,
            next_statistics: None,
            statistics_sequence: 0,
            best_effort: BTreeMap::new(),
            best_effort_turn: false,
            counters: Counters::default(),
            started: false,
            left_priority: None,
        };
        for (id, domain_state) in state.domains {
            exporter.add_domain(id, domain_state);
        }
        exporter
    }

    fn add_domain(&mut self, id: u32, state: DomainState) {
        let cookie = state.last_cookie.filter(|c| !c.introduction);
        let acknowledged = cookie.map(|c| c.last_record_sequence);
        let recovered = self.recovered_spill.remove(&id).unwrap_or_default();
        let buffer = ReplayBuffer::new(
            id,
            self.config.replay.clone(),
            acknowledged,
            recovered.len(),
            &mut self.spill_requests,
        );
        // A restart: every sequence after the last cookie that this process
        // does not hold (lost with the old memory, or reserved and never
        // used) will never be sent. Declared once: `declared_until` stays
        // persisted with the count.
        let from = cookie
            .map_or(0, |c| c.next_record_sequence())
            .max(state.declared_until);
        let held = if self.config.replay.spill_dir.is_some() {
            recovered.held_from(from)
        } else {
            0
        };
        let lost = state
            .next_sequence
            .saturating_sub(from)
            .saturating_sub(held);
        if lost > 0 {
            tracing::warn!(
                domain = id,
                from,
                next_sequence = state.next_sequence,
                lost,
                "restart: record sequences not held any more are declared never to be sent"
            );
            self.counters.declared_not_sent += lost;
        }
        let mut domain = Domain {
            id,
            next_sequence: state.next_sequence,
            reserved_until: state.next_sequence,
            cookie,
            buffer,
            send_cursor: 0,
            introduced: false,
            templates_announced: 0,
            not_sent: state.not_sent + lost,
            declared_until: state.next_sequence.max(state.declared_until),
            messages_sent: 0,
        };
        domain.rewind();
        self.domains.insert(id, domain);
    }

    /// Starts: asks for a PE.
    pub fn start(&mut self) {
        if !self.started {
            self.started = true;
            self.outputs.push_back(Output::Select);
        }
    }

    /// Counters for metrics.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The PE records currently go to (or drain to), if any.
    pub fn current_pe(&self) -> Option<PeId> {
        match &self.phase {
            Phase::Streaming { pe, .. } | Phase::Draining { pe, .. } => Some(pe.pe_id),
            _ => None,
        }
    }

    /// The association the core waits to come up, if connecting.
    pub fn connecting_association(&self) -> Option<AssociationId> {
        match self.phase {
            Phase::Connecting { association, .. } => Some(association),
            _ => None,
        }
    }

    /// Whether a template with this id is known (announced on every
    /// association before data that uses it).
    pub fn has_template(&self, template_id: u16) -> bool {
        self.template_ids.contains(&template_id)
    }

    /// Learns a template at run time (a relay meets routers' templates as
    /// they come). Every domain announces it before its next data message,
    /// and every later association announces it with the others. A new
    /// definition for a known id replaces the old one and makes every
    /// domain announce all templates again.
    pub fn add_template(&mut self, template: Template) {
        match self.templates.iter_mut().find(|t| t.id == template.id) {
            Some(known) if *known == template => {}
            Some(known) => {
                *known = template;
                for domain in self.domains.values_mut() {
                    domain.templates_announced = 0;
                }
                for domain in self.best_effort.values_mut() {
                    domain.templates_announced = 0;
                }
            }
            None => {
                self.template_ids.insert(template.id);
                self.templates.push(template);
            }
        }
    }

    /// Whether a record for `domain` would be taken now.
    pub fn can_accept(&self, domain: u32) -> bool {
        self.domains
            .get(&domain)
            .is_none_or(|d| !d.buffer.is_full())
    }

    /// Records held in all replay buffers (not covered by a cookie).
    pub fn buffered_records(&self) -> u64 {
        self.domains.values().map(|d| d.buffer.len() as u64).sum()
    }

    /// Records sent and not yet covered by a cookie (cookie lag).
    pub fn cookie_lag(&self) -> u64 {
        self.domains.values().map(Domain::outstanding).sum()
    }

    /// Every record handed in is covered by a cookie.
    pub fn is_drained(&self) -> bool {
        self.domains
            .values()
            .all(|d| d.buffer.is_empty() && d.acknowledged_until() >= d.next_sequence)
    }

    /// The last cookie of a domain.
    pub fn cookie(&self, domain: u32) -> Option<BillingCookie> {
        self.domains.get(&domain).and_then(|d| d.cookie)
    }

    /// Next record sequence of a domain.
    pub fn next_sequence(&self, domain: u32) -> u64 {
        self.domains.get(&domain).map_or(0, |d| d.next_sequence)
    }

    /// The state to persist: reservations (safe while running).
    pub fn state(&self) -> ExporterState {
        self.snapshot(|d| d.reserved_until.max(d.next_sequence))
    }

    /// The exact state at a clean stop (no further record may be assigned
    /// after this). With a spill, the memory windows go to it first: the
    /// driver performs the [`SpillRequest::Prepend`]s this queues
    /// ([`Self::poll_spill`]) before it writes the state. Call it with no
    /// spill request outstanding.
    pub fn shutdown_state(&mut self) -> ExporterState {
        for domain in self.domains.values_mut() {
            domain.buffer.persist_for_restart(&mut self.spill_requests);
        }
        self.snapshot(|d| d.next_sequence)
    }

    /// The next request for the driver's spill store, if any. Call until
    /// `None` after every input, before [`Self::poll_output`], and perform
    /// them in order: a [`SpillRequest::Read`] is answered with
    /// [`Self::handle_unspilled`] before the next one.
    pub fn poll_spill(&mut self) -> Option<SpillRequest> {
        self.spill_requests.pop_front()
    }

    /// The spill store's answer to a [`SpillRequest::Read`] of `domain`:
    /// its oldest spilled records (none when the store could not read;
    /// asked again after the next cookie).
    pub fn handle_unspilled(&mut self, domain: u32, records: Vec<BufferedRecord>) {
        if let Some(d) = self.domains.get_mut(&domain) {
            d.buffer.unspilled(records, &mut self.spill_requests);
        }
    }

    fn snapshot(&self, next: impl Fn(&Domain) -> u64) -> ExporterState {
        ExporterState {
            exporter_id: self.config.exporter_id,
            domains: self
                .domains
                .values()
                .map(|d| {
                    (
                        d.id,
                        DomainState {
                            next_sequence: next(d),
                            last_cookie: d.cookie,
                            not_sent: d.not_sent,
                            declared_until: d.declared_until,
                        },
                    )
                })
                .collect(),
        }
    }

    /// Takes one data record of `domain`, encoded for `template_id`, and
    /// numbers it. Refused with [`RecordError::Full`] when the buffer is
    /// full (back-pressure: try again after a cookie).
    pub fn push_record(
        &mut self,
        domain: u32,
        template_id: u16,
        bytes: impl Into<RecordBytes>,
    ) -> Result<u64, RecordError> {
        let bytes = bytes.into();
        if !self.domains.contains_key(&domain) {
            self.add_domain(domain, DomainState::default());
        }
        let reservation = self.config.sequence_reservation.max(1);
        let d = self.domains.get_mut(&domain).expect("added above");
        let sequence = d.next_sequence;
        let record = BufferedRecord {
            sequence,
            template_id,
            bytes,
        };
        match d.buffer.push(record, &mut self.spill_requests) {
            Ok(()) => {}
            Err(PushError::Full) => return Err(RecordError::Full),
        }
        d.next_sequence += 1;
        if d.next_sequence > d.reserved_until {
            // Persist before any record numbered past the old reservation
            // can leave: the outputs run in order.
            d.reserved_until = sequence + reservation;
            let state = self.state();
            self.persist(state);
        }
        Ok(sequence)
    }

    /// Takes one best-effort (non-billing) record of `domain`: sent on
    /// [`BEST_EFFORT_STREAM`] with PR-SCTP, never numbered, acknowledged or
    /// replayed. Never refused: while no collector takes records, a full
    /// queue drops its oldest record (counted in
    /// [`Counters::best_effort_dropped`]).
    pub fn push_best_effort(
        &mut self,
        domain: u32,
        template_id: u16,
        bytes: impl Into<RecordBytes>,
    ) {
        let bytes = bytes.into();
        let limit = self.config.best_effort_queue.max(1);
        let d = self.best_effort.entry(domain).or_default();
        while d.queue.len() >= limit {
            d.queue.pop_front();
            self.counters.best_effort_dropped += 1;
        }
        d.queue.push_back((template_id, bytes));
    }

    /// Best-effort records waiting to be sent.
    pub fn best_effort_queued(&self) -> u64 {
        self.best_effort
            .values()
            .map(|d| d.queue.len() as u64)
            .sum()
    }

    fn persist(&mut self, state: ExporterState) {
        self.cookies_dirty = false;
        self.outputs.push_back(Output::PersistState(state));
    }

    /// The next thing to do, if any. Call until `None` after every input.
    pub fn poll_output(&mut self, now: Instant) -> Option<Output> {
        if let Some(output) = self.outputs.pop_front() {
            return Some(output);
        }
        if self.cookies_dirty && now >= self.last_persist + self.config.state_sync_interval {
            self.last_persist = now;
            let state = self.state();
            self.persist(state);
            return self.outputs.pop_front();
        }
        if let Phase::Streaming {
            association,
            ref pe,
            next_failback_check,
            failback_check_pending,
        } = self.phase
        {
            if !failback_check_pending && next_failback_check.is_some_and(|at| now >= at) {
                let current = pe.pe_id;
                let interval = self.failback_interval(pe, now);
                if let Phase::Streaming {
                    next_failback_check,
                    failback_check_pending,
                    ..
                } = &mut self.phase
                {
                    *failback_check_pending = true;
                    *next_failback_check = Some(now + interval);
                }
                let avoid = self.untrusted_pes(now);
                return Some(Output::CheckFailback { current, avoid });
            }
            if self.next_statistics.is_some_and(|at| now >= at) {
                self.queue_statistics(now);
                return self.outputs.pop_front();
            }
            // Billing and best-effort messages alternate while both wait.
            self.best_effort_turn = !self.best_effort_turn;
            if self.best_effort_turn {
                return self
                    .next_best_effort_message(now, association)
                    .or_else(|| self.next_data_message(now, association));
            }
            return self
                .next_data_message(now, association)
                .or_else(|| self.next_best_effort_message(now, association));
        }
        None
    }

    /// When to call [`Self::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let phase = match &self.phase {
            Phase::Waiting { retry_at, .. } => Some(*retry_at),
            Phase::Draining { deadline, .. } => Some(*deadline),
            Phase::Streaming {
                next_failback_check,
                failback_check_pending: false,
                ..
            } => [*next_failback_check, self.next_statistics]
                .into_iter()
                .flatten()
                .min(),
            Phase::Streaming { .. } => self.next_statistics,
            _ => None,
        };
        let persist = self
            .cookies_dirty
            .then_some(self.last_persist + self.config.state_sync_interval);
        [phase, self.cookie_deadline, persist]
            .into_iter()
            .flatten()
            .min()
    }

    /// Timers: cookie timeout, drain timeout, retry after waiting. (Polls
    /// and persistence come out of [`Self::poll_output`].)
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(deadline) = self.cookie_deadline
            && now >= deadline
            && matches!(self.phase, Phase::Streaming { .. } | Phase::Draining { .. })
        {
            self.fail_over(now, FailureCause::CookieTimeout);
            return;
        }
        match self.phase {
            Phase::Draining { deadline, .. } if now >= deadline => {
                self.fail_over(now, FailureCause::DrainTimeout);
            }
            Phase::Waiting { retry_at, reason } if now >= retry_at => {
                self.failed_this_round.clear();
                self.phase = Phase::Selecting { reason };
                self.outputs.push_back(Output::Select);
            }
            _ => {}
        }
    }

    /// The answer to [`Output::Select`]: PEs best first, or why none.
    pub fn handle_selected(&mut self, now: Instant, result: Result<Vec<PoolElementInfo>, String>) {
        let Phase::Selecting { reason } = self.phase else {
            return;
        };
        let candidates = match result {
            Ok(candidates) => candidates,
            Err(reason_text) => {
                self.wait(now, reason, reason_text);
                return;
            }
        };
        let Some(pe) = candidates.into_iter().find(|pe| {
            !self.failed_this_round.contains(&pe.pe_id) && !self.is_untrusted(pe.pe_id, now)
        }) else {
            self.wait(
                now,
                reason,
                "every pool element failed or sent a cookie that was refused".into(),
            );
            return;
        };
        self.connect(pe, reason);
    }

    fn wait(&mut self, now: Instant, reason: ConnectReason, why: String) {
        self.outputs
            .push_back(Output::Notice(Notice::NoPoolElement { reason: why }));
        self.phase = Phase::Waiting {
            retry_at: now + self.config.retry_interval,
            reason,
        };
    }

    fn connect(&mut self, pe: PoolElementInfo, reason: ConnectReason) {
        let association = self.next_association;
        self.next_association += 1;
        self.outputs.push_back(Output::Connect {
            association,
            pe: pe.clone(),
        });
        self.phase = Phase::Connecting {
            association,
            pe,
            reason,
        };
    }

    /// The association is established: Cookie Echo per domain, templates,
    /// then the replay and new records (from [`Self::poll_output`]).
    pub fn handle_association_up(&mut self, now: Instant, association: AssociationId) {
        let Phase::Connecting {
            association: expected,
            ref pe,
            reason,
        } = self.phase
        else {
            return;
        };
        if association != expected {
            return;
        }
        let pe = pe.clone();
        self.failed_this_round.clear();
        let mut pending = 0;
        for domain in self.domains.values_mut() {
            domain.rewind();
            pending += domain.next_sequence.saturating_sub(domain.send_cursor);
        }
        let domains: Vec<u32> = self.domains.keys().copied().collect();
        for domain in domains {
            self.introduce(now, association, domain);
        }
        // A new transport session: the statistics template goes first
        // again and their sequence numbers restart.
        self.statistics_sequence = 0;
        for domain in self.best_effort.values_mut() {
            domain.templates_announced = 0;
        }
        if reason == ConnectReason::Failback {
            self.counters.failbacks += 1;
        }
        self.outputs.push_back(Output::Notice(Notice::Streaming {
            pe_id: pe.pe_id,
            reason,
            pending,
        }));
        if let (Some((left, _)), PolicyParams::Priority { priority }) =
            (self.left_priority, &pe.policy)
            && *priority >= left
        {
            self.left_priority = None; // Home again.
        }
        let next_failback_check = matches!(pe.policy, PolicyParams::Priority { .. })
            .then(|| now + self.failback_interval(&pe, now));
        self.cookie_deadline = None;
        self.cookie_wait_since = None;
        self.transport_acknowledged = 0;
        self.phase = Phase::Streaming {
            association,
            pe,
            next_failback_check,
            failback_check_pending: false,
        };
        // Right after the Cookie Echoes: what a restart lost is declared
        // before anything else, so the collector's cookies move past it.
        self.queue_statistics(now);
    }

    /// Queues the Exporting Process Reliability Statistics of every billing
    /// domain on the current association (stream 0, after everything sent
    /// so far) and schedules the next periodic ones. For each domain,
    /// `exported + not sent` is the domain's send cursor: every sequence
    /// below it was sent on this association (or acknowledged before it) or
    /// is declared never to be sent. Nothing happens unless streaming.
    pub fn queue_statistics(&mut self, now: Instant) {
        let Phase::Streaming { association, .. } = self.phase else {
            return;
        };
        self.next_statistics = Some(now + self.config.statistics_interval);
        let observation_ms = self.unix_ms_at(now);
        let stats: Vec<ReliabilityStatistics> = self
            .domains
            .values()
            .map(|d| ReliabilityStatistics {
                exporting_process_id: self.config.exporter_id,
                observation_domain_id: d.id,
                exported_messages: d.messages_sent,
                exported_records: d.send_cursor.saturating_sub(d.not_sent),
                not_sent_records: d.not_sent.min(d.send_cursor),
                system_init_ms: self.system_init_ms,
                observation_ms,
            })
            .collect();
        let export_time = (observation_ms / 1000) as u32;
        let mut rest = &stats[..];
        while !rest.is_empty() {
            let with_template = self.statistics_sequence == 0;
            let Ok((payload, added)) = reliability::encode_message(
                &mut self.writer,
                export_time,
                self.statistics_sequence,
                with_template,
                rest,
            ) else {
                tracing::error!("reliability statistics do not fit an IPFIX message");
                return;
            };
            self.statistics_sequence = self.statistics_sequence.wrapping_add(added as u32);
            self.counters.statistics_sent += added as u64;
            rest = &rest[added..];
            self.outputs.push_back(Output::Send {
                association,
                stream: BILLING_STREAM,
                reliability: Reliability::Reliable,
                ppid: IPFIX_PPID,
                payload,
            });
        }
    }

    fn unix_ms_at(&self, now: Instant) -> u64 {
        self.wall_base_ms + now.saturating_duration_since(self.clock_base).as_millis() as u64
    }

    /// Cookie Echo and templates of one domain on a fresh association.
    fn introduce(&mut self, now: Instant, association: AssociationId, domain_id: u32) {
        let exporter_id = self.config.exporter_id;
        let unix_secs = self.export_time_at(now);
        let domain = self.domains.get_mut(&domain_id).expect("known domain");
        let cookie = domain
            .cookie
            .unwrap_or_else(|| BillingCookie::introduction(exporter_id, domain_id));
        self.outputs.push_back(Output::Send {
            association,
            stream: BILLING_STREAM,
            reliability: Reliability::Reliable,
            ppid: ASAP_SCTP_PPID,
            payload: cookie.cookie_echo_message_bytes(),
        });
        domain.introduced = true;
        domain.templates_announced = 0;
        self.announce_templates(unix_secs, association, domain_id);
    }

    /// Sends the templates the domain has not announced on this association
    /// yet, in as many messages as they need.
    fn announce_templates(&mut self, unix_secs: u32, association: AssociationId, domain_id: u32) {
        let domain = self.domains.get_mut(&domain_id).expect("known domain");
        while domain.templates_announced < self.templates.len() {
            // A template-only message counts no data records: its sequence
            // number is that of the next data record.
            self.writer
                .start(domain_id, unix_secs, domain.send_cursor as u32);
            let mut added = 0;
            for template in &self.templates[domain.templates_announced..] {
                if self.writer.add_template(template).is_err() {
                    break;
                }
                added += 1;
            }
            if added == 0 {
                // Larger than a message: no collector could learn it.
                let template = &self.templates[domain.templates_announced];
                tracing::error!(
                    template_id = template.id,
                    "template does not fit an IPFIX message; not announced"
                );
                domain.templates_announced += 1;
                continue;
            }
            domain.templates_announced += added;
            self.outputs.push_back(Output::Send {
                association,
                stream: BILLING_STREAM,
                reliability: Reliability::Reliable,
                ppid: IPFIX_PPID,
                payload: self.writer.finish().to_vec(),
            });
        }
    }

    fn export_time_at(&self, now: Instant) -> u32 {
        let elapsed = now.saturating_duration_since(self.clock_base).as_millis() as u64;
        ((self.wall_base_ms + elapsed) / 1000) as u32
    }

    /// Builds the next IPFIX message of some domain with unsent records in
    /// memory: consecutive record sequences, header sequence number = low
    /// 32 bits of the first one.
    fn next_data_message(&mut self, now: Instant, association: AssociationId) -> Option<Output> {
        let ids: Vec<u32> = self.domains.keys().copied().collect();
        if ids.is_empty() {
            return None;
        }
        for offset in 0..ids.len() {
            let domain_id = ids[(self.send_turn + offset) % ids.len()];
            let has_unsent = {
                let d = &self.domains[&domain_id];
                d.buffer.in_memory_from(d.send_cursor).next().is_some()
            };
            if !has_unsent {
                // Nothing held from the cursor on: the sequences up to the
                // next one to assign were lost in a restart (declared) or
                // never used. Sending moves past them, so the reliability
                // statistics account for them and the collector's cookies
                // can pass over them (after a restart whose spill held
                // records before such a gap; memory-only restarts start
                // there).
                let d = self.domains.get_mut(&domain_id).expect("listed");
                if d.buffer.spilled_len() == 0 {
                    d.send_cursor = d.send_cursor.max(d.next_sequence);
                }
                continue;
            }
            if !self.domains[&domain_id].introduced {
                // A domain that appeared during the association.
                self.introduce(now, association, domain_id);
                return self.outputs.pop_front();
            }
            if self.domains[&domain_id].templates_announced < self.templates.len() {
                // Templates learned during the association go first.
                let unix_secs = self.export_time_at(now);
                self.announce_templates(unix_secs, association, domain_id);
                if let Some(output) = self.outputs.pop_front() {
                    return Some(output);
                }
            }
            self.send_turn = (self.send_turn + offset + 1) % ids.len();
            let export_time = self.export_time_at(now);
            let domain = self.domains.get_mut(&domain_id).expect("listed");
            let mut records = domain.buffer.in_memory_from(domain.send_cursor).peekable();
            let first = records.peek().expect("has unsent").sequence;
            self.writer.start(domain_id, export_time, first as u32);
            let mut count = 0u64;
            for record in records {
                if record.sequence != first + count {
                    break; // A gap (records lost in a restart): new message.
                }
                if self
                    .writer
                    .add_record(record.template_id, &record.bytes)
                    .is_err()
                {
                    break;
                }
                count += 1;
            }
            if count == 0 {
                // A record larger than a message: cannot be sent at all.
                // Skip it loudly rather than stall the pool forever.
                tracing::error!(
                    domain = domain_id,
                    sequence = first,
                    "record does not fit an IPFIX message; skipped"
                );
                domain.send_cursor = first + 1;
                // Never to be sent: declared, so collectors move past it.
                domain.not_sent += 1;
                self.counters.declared_not_sent += 1;
                return self.outputs.pop_front();
            }
            domain.send_cursor = first + count;
            domain.messages_sent += 1;
            self.counters.records_sent += count;
            if self.cookie_deadline.is_none() {
                self.cookie_deadline = Some(now + self.config.cookie_timeout);
                self.cookie_wait_since = Some(now);
            }
            return Some(Output::Send {
                association,
                stream: BILLING_STREAM,
                reliability: Reliability::Reliable,
                ppid: IPFIX_PPID,
                payload: self.writer.finish().to_vec(),
            });
        }
        None
    }

    /// Builds the next message of best-effort records (or of the templates
    /// they need on their stream first), if any wait.
    fn next_best_effort_message(
        &mut self,
        now: Instant,
        association: AssociationId,
    ) -> Option<Output> {
        let export_time = self.export_time_at(now);
        loop {
            let (&domain_id, domain) = self
                .best_effort
                .iter_mut()
                .find(|(_, d)| !d.queue.is_empty())?;
            self.writer.start(domain_id, export_time, domain.sequence);
            if domain.templates_announced < self.templates.len() {
                // A template-only message: its sequence number is that of
                // the next data record.
                let mut added = 0;
                for template in &self.templates[domain.templates_announced..] {
                    if self.writer.add_template(template).is_err() {
                        break;
                    }
                    added += 1;
                }
                // A template larger than a message was reported on the
                // billing stream already: skipped here too.
                domain.templates_announced += added.max(1);
                if added == 0 {
                    continue;
                }
                return Some(Output::Send {
                    association,
                    stream: BEST_EFFORT_STREAM,
                    reliability: Reliability::Reliable,
                    ppid: IPFIX_PPID,
                    payload: self.writer.finish().to_vec(),
                });
            }
            let mut count = 0u32;
            while let Some((template_id, bytes)) = domain.queue.front() {
                if self.writer.add_record(*template_id, bytes).is_err() {
                    break;
                }
                domain.queue.pop_front();
                count += 1;
            }
            if count == 0 {
                // Larger than a message: can never be sent.
                domain.queue.pop_front();
                self.counters.best_effort_dropped += 1;
                tracing::error!(
                    domain = domain_id,
                    "best-effort record does not fit an IPFIX message; dropped"
                );
                continue;
            }
            domain.sequence = domain.sequence.wrapping_add(count);
            self.counters.best_effort_sent += u64::from(count);
            return Some(Output::Send {
                association,
                stream: BEST_EFFORT_STREAM,
                reliability: Reliability::Lifetime(self.config.best_effort_lifetime),
                ppid: IPFIX_PPID,
                payload: self.writer.finish().to_vec(),
            });
        }
    }

    /// A message from the collector on the data association (PPID 11:
    /// ASAP Cookie or Error; anything else is ignored).
    pub fn handle_message(
        &mut self,
        now: Instant,
        association: AssociationId,
        ppid: u32,
        payload: &[u8],
    ) {
        if self.current_association() != Some(association) || ppid != ASAP_SCTP_PPID {
            return;
        }
        let message = match AsapMessage::decode(payload) {
            Ok(message) => message,
            Err(error) => {
                self.reject_cookie(
                    now,
                    CookieRejectReason::Malformed,
                    format!("undecodable ASAP message: {error}"),
                );
                return;
            }
        };
        if let AsapMessage::Error { error } = &message {
            self.outputs
                .push_back(Output::Notice(Notice::CollectorError {
                    error: format!("{error:?}"),
                }));
            return;
        }
        let cookie = match cookie_from_message(&message) {
            Ok((CookieMessageKind::Cookie, cookie)) => cookie,
            Ok((CookieMessageKind::CookieEcho, _)) => {
                self.reject_cookie(
                    now,
                    CookieRejectReason::WrongDirection,
                    "Cookie Echo from the collector".into(),
                );
                return;
            }
            Err(error) => {
                self.reject_cookie(now, CookieRejectReason::Malformed, error.to_string());
                return;
            }
        };
        if let Err((reason, detail)) = self.check_cookie(&cookie) {
            self.reject_cookie(now, reason, detail);
            return;
        }
        self.accept_cookie(now, cookie);
    }

    /// Everything a cookie must pass before any record is released on it.
    fn check_cookie(&self, cookie: &BillingCookie) -> Result<(), (CookieRejectReason, String)> {
        if let Some(keys) = &self.config.cookie_keys {
            // First: the claims of a cookie nobody trusted signed mean
            // nothing, whatever they say.
            keys.verify(cookie)
                .map_err(|error| (CookieRejectReason::of(&error), error.to_string()))?;
        }
        if cookie.exporter_id != self.config.exporter_id {
            return Err((
                CookieRejectReason::WrongExporter,
                format!("cookie for exporter {}", cookie.exporter_id),
            ));
        }
        let Some(domain) = self.domains.get(&cookie.domain) else {
            return Err((
                CookieRejectReason::WrongDomain,
                format!("cookie for unknown domain {}", cookie.domain),
            ));
        };
        // A collector acknowledges only what it received on this
        // association (the association starts at our cookie and we send in
        // order), so nothing at or past the send cursor can be stored there.
        // Without public keys this is all the exporter can check; with them
        // it still stops a trusted key's holder from claiming the future.
        if !cookie.introduction && cookie.last_record_sequence >= domain.send_cursor {
            return Err((
                CookieRejectReason::BeyondSent,
                format!(
                    "cookie claims sequence {} of domain {}, only up to {} sent on this association",
                    cookie.last_record_sequence,
                    cookie.domain,
                    domain
                        .send_cursor
                        .checked_sub(1)
                        .map_or("none".into(), |s| s.to_string())
                ),
            ));
        }
        Ok(())
    }

    /// A refused cookie: nothing is released, the PE is reported, left and
    /// avoided (a hostile or broken PE at the top priority would otherwise
    /// be failed back to at every check).
    fn reject_cookie(&mut self, now: Instant, reason: CookieRejectReason, detail: String) {
        let pe_id = match &self.phase {
            Phase::Connecting { pe, .. }
            | Phase::Streaming { pe, .. }
            | Phase::Draining { pe, .. } => Some(pe.pe_id),
            _ => None,
        };
        self.counters.cookies_rejected += 1;
        self.outputs
            .push_back(Output::Notice(Notice::CookieRejected {
                pe_id,
                reason,
                detail,
            }));
        if let Some(pe_id) = pe_id {
            self.untrusted
                .insert(pe_id, now + self.config.untrusted_for);
        }
        self.fail_over(now, FailureCause::CookieRejected);
    }

    fn is_untrusted(&self, pe_id: PeId, now: Instant) -> bool {
        self.untrusted.get(&pe_id).is_some_and(|&until| now < until)
    }

    /// PEs avoided because their cookies were refused.
    pub fn untrusted_pes(&self, now: Instant) -> Vec<PeId> {
        let mut pes: Vec<PeId> = self
            .untrusted
            .iter()
            .filter(|&(_, &until)| now < until)
            .map(|(&pe, _)| pe)
            .collect();
        pes.sort_unstable();
        pes
    }

    fn accept_cookie(&mut self, now: Instant, cookie: BillingCookie) {
        if cookie.introduction {
            return; // Claims nothing (an exporter without keys takes it so).
        }
        let Some(domain) = self.domains.get_mut(&cookie.domain) else {
            return; // Checked by `check_cookie`.
        };
        if domain
            .cookie
            .is_some_and(|c| c.covers(cookie.last_record_sequence))
        {
            return; // No progress (a repeat or an older commit).
        }
        domain
            .buffer
            .acknowledge(cookie.last_record_sequence, &mut self.spill_requests);
        domain.cookie = Some(cookie);
        // Stored already: no need to send it again.
        domain.send_cursor = domain.send_cursor.max(cookie.next_record_sequence());
        self.counters.cookies += 1;
        self.cookies_dirty = true;
        let outstanding: u64 = self.domains.values().map(Domain::outstanding).sum();
        self.cookie_deadline = (outstanding > 0).then_some(now + self.config.cookie_timeout);
        self.cookie_wait_since = self.cookie_deadline.map(|_| now);
        self.check_drained();
    }

    /// The association records go out on (streaming or draining), if any.
    pub fn sending_association(&self) -> Option<AssociationId> {
        match self.phase {
            Phase::Streaming { association, .. } | Phase::Draining { association, .. } => {
                Some(association)
            }
            _ => None,
        }
    }

    fn current_association(&self) -> Option<AssociationId> {
        match self.phase {
            Phase::Connecting { association, .. }
            | Phase::Streaming { association, .. }
            | Phase::Draining { association, .. } => Some(association),
            _ => None,
        }
    }

    /// The association ended (failed, aborted, or closed by the peer), or
    /// could not be established.
    pub fn handle_association_ended(&mut self, now: Instant, association: AssociationId) {
        if self.current_association() != Some(association) {
            return;
        }
        match &self.phase {
            Phase::Connecting { pe, reason, .. } => {
                let (pe_id, reason) = (pe.pe_id, *reason);
                self.outputs
                    .push_back(Output::Notice(Notice::ConnectFailed { pe_id }));
                self.outputs.push_back(Output::ReportUnreachable { pe_id });
                self.failed_this_round.insert(pe_id);
                self.last_failure.insert(pe_id, now);
                let reason = if reason == ConnectReason::Initial {
                    ConnectReason::Initial
                } else {
                    ConnectReason::Failover
                };
                self.phase = Phase::Selecting { reason };
                self.outputs.push_back(Output::Select);
            }
            _ => self.fail_over(now, FailureCause::AssociationEnded),
        }
    }

    /// The association's peer has acknowledged `acknowledged` messages so
    /// far (SCTP over UDP: SACKed DATA; the driver reports it before each
    /// timer, since the transport counts without telling). Progress since
    /// the last report shows a live collector that reads what we send: the
    /// cookie deadline moves to a full `cookie_timeout` from now, but never
    /// past `cookie_stall_timeout` since the wait began, so a collector that
    /// reads but never commits is still left.
    pub fn handle_transport_progress(
        &mut self,
        now: Instant,
        association: AssociationId,
        acknowledged: u64,
    ) {
        if self.current_association() != Some(association) {
            return;
        }
        let progressed = acknowledged > self.transport_acknowledged;
        self.transport_acknowledged = self.transport_acknowledged.max(acknowledged);
        let (Some(deadline), Some(since), true) =
            (self.cookie_deadline, self.cookie_wait_since, progressed)
        else {
            return;
        };
        let limit = since
            + self
                .config
                .cookie_stall_timeout
                .max(self.config.cookie_timeout);
        let extended = (now + self.config.cookie_timeout).min(limit);
        if extended > deadline {
            self.cookie_deadline = Some(extended);
            self.counters.cookie_waits_extended += 1;
        }
    }

    /// The answer to [`Output::CheckFailback`].
    pub fn handle_failback_check(&mut self, now: Instant, target: Option<PoolElementInfo>) {
        let Phase::Streaming {
            association,
            ref pe,
            ref mut failback_check_pending,
            ..
        } = self.phase
        else {
            return;
        };
        *failback_check_pending = false;
        let holdoff = self.config.failback_holdoff;
        let Some(target) = target.filter(|t| {
            t.pe_id != pe.pe_id
                && !self.is_untrusted(t.pe_id, now)
                && self
                    .last_failure
                    .get(&t.pe_id)
                    .is_none_or(|&failed| now >= failed + holdoff)
        }) else {
            return;
        };
        let pe = pe.clone();
        self.outputs.push_back(Output::Notice(Notice::DrainStarted {
            from: pe.pe_id,
            to: target.pe_id,
        }));
        self.phase = Phase::Draining {
            association,
            pe,
            target,
            deadline: now + self.config.drain_timeout,
        };
        self.check_drained();
    }

    /// Draining and everything sent is covered: move to the target.
    fn check_drained(&mut self) {
        let Phase::Draining {
            association,
            ref target,
            ..
        } = self.phase
        else {
            return;
        };
        if self.domains.values().any(|d| d.outstanding() > 0) {
            return;
        }
        let target = target.clone();
        self.outputs.push_back(Output::Close { association });
        self.cookie_deadline = None;
        self.connect(target, ConnectReason::Failback);
    }

    /// The failback check period while streaming to `pe`.
    fn failback_interval(&self, pe: &PoolElementInfo, now: Instant) -> Duration {
        match (self.left_priority, &pe.policy) {
            (Some((left, since)), PolicyParams::Priority { priority })
                if *priority < left && now < since + FAST_FAILBACK_CHECKS_FOR =>
            {
                self.config
                    .failback_check_after_failover
                    .min(self.config.failback_check)
            }
            _ => self.config.failback_check,
        }
    }

    fn fail_over(&mut self, now: Instant, cause: FailureCause) {
        let Some(association) = self.current_association() else {
            return;
        };
        let pe = match &self.phase {
            Phase::Connecting { pe, .. }
            | Phase::Streaming { pe, .. }
            | Phase::Draining { pe, .. } => pe,
            _ => return,
        };
        let pe_id = pe.pe_id;
        if let PolicyParams::Priority { priority } = pe.policy {
            let best = match self.left_priority {
                Some((left, since)) if now < since + FAST_FAILBACK_CHECKS_FOR => left.max(priority),
                _ => priority,
            };
            self.left_priority = Some((best, now));
        }
        self.counters.failovers += 1;
        self.outputs
            .push_back(Output::Notice(Notice::FailoverStarted { pe_id, cause }));
        self.outputs.push_back(Output::Close { association });
        if cause.is_reported() {
            self.outputs.push_back(Output::ReportUnreachable { pe_id });
        } else {
            self.counters.protocol_failovers += 1;
        }
        self.failed_this_round.insert(pe_id);
        self.last_failure.insert(pe_id, now);
        self.cookie_deadline = None;
        for domain in self.domains.values_mut() {
            // What was sent and not covered goes again to the next PE.
            let before = domain.send_cursor;
            domain.rewind();
            self.counters.records_replayed += before.saturating_sub(domain.send_cursor);
        }
        self.phase = Phase::Selecting {
            reason: ConnectReason::Failover,
        };
        self.outputs.push_back(Output::Select);
    }
}
