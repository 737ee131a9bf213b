//! The simulated pool: exporter cores, collector sessions and pool
//! elements, and a registrar's ASAP server core (the real sans-IO code),
//! collectors with real SQLite stores, joined by simulated SCTP
//! associations, and one virtual clock that jumps from event to event.
//!
//! Everything that varies comes from the run's seed: the scenario
//! (`scenario.rs`) and the network's draws (latency, retransmissions,
//! failure detection) from a second generator seeded from the same u64.
//! Nothing reads the wall clock: `origin` is only the `Instant` that
//! virtual time zero maps to, because the cores take `Instant`s.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use asap_client::PoolElementInfo;
use asap_client::pool_element::{
    Input as PeInput, Output as PeOutput, PoolElement, PoolElementConfig,
};
use collector::batch::Batch;
use collector::billing::CookieSigner;
use collector::session::{CollectorSession, Input, Now, Output as SessionOutput, SessionEvent};
use collector::store::Store;
use exporter::journal::{DurableIntake, DurableSettings};
use exporter::pool_user::{AssociationId, Exporter, ExporterConfig, Notice, Output};
use exporter::replay::{BufferedRecord, RecordBytes, ReplayLimits};
use exporter::sequence::ExporterState;
use exporter::spill::MemorySpill;
use policies::{Member, PolicyParams};
use protocol::billing::CookieKeys;
use protocol::ipfix::flow::{FLOW_TEMPLATE_ID, FlowRecord, flow_template};
use protocol::ipfix::{SessionConfig, TransportKind};
use protocol::rserpool::ASAP_SCTP_PPID;
use protocol::rserpool::asap::Message as AsapMessage;
use protocol::rserpool::params::PoolHandle;
use protocol::rserpool::params::{TransportAddress, TransportKind as AsapTransport, TransportUse};
use protocol::signing::SigningKey;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use registrar::handlespace::AssocId;
use registrar::{Action, Server, ServerConfig};

use crate::scenario::{AsapNode, EXPORTERS_START, Fault, Kind, Scenario};

/// The pool's HMAC cookie key (version 1 cookies: see docs/simulation.md
/// for why not Ed25519).
const POOL_KEY: &[u8] = b"simulated pool key";
/// Unix milliseconds at virtual time zero (cookie and export times).
const UNIX_MS_AT_ORIGIN: u64 = 1_800_000_000_000;
/// Exporter ids are this plus the exporter's index.
const FIRST_EXPORTER_ID: u32 = 500;
/// PE identifiers are this plus the collector's index (a collector keeps
/// its PE identifier across restarts, as `pe_identifier` derived from its
/// database path does).
const FIRST_PE_ID: u32 = 0x5e00;
/// The pool the collectors register under.
const POOL_HANDLE: &[u8] = b"billing-collectors";
/// A graceful stop that has not finished by then ends like a crash.
const STOP_LIMIT: Duration = Duration::from_secs(10);
/// After the faults: longest the stream may take to finish.
const FINISH_LIMIT: Duration = Duration::from_secs(300);
/// After the faults: time for the failback before the stream may end.
const SETTLE: Duration = Duration::from_secs(5);
/// Events handled per run before the run counts as a livelock.
const MAX_STEPS: u64 = 3_000_000;
/// Lines of trace kept for a failure report.
const TRACE_LINES: usize = 400;

type LinkId = u64;

/// Why a run failed: what went wrong and the trace leading to it.
#[derive(Debug)]
pub struct RunFailure {
    /// The broken property.
    pub reason: String,
    /// The last events before it.
    pub trace: Vec<String>,
}

/// What a finished run produced, for the oracle.
#[derive(Debug)]
pub struct RunOutcome {
    /// Every collector's SQLite file.
    pub databases: Vec<PathBuf>,
    /// Every exporter's final state file.
    pub exporter_states: Vec<PathBuf>,
    /// Per exporter: (exporter id, next sequence per domain, declared
    /// not sent per domain, crashed at least once).
    pub exporters: Vec<ExporterSummary>,
    /// Counts over the run.
    pub stats: RunStats,
}

/// One exporter at the end of a run.
#[derive(Debug, Clone)]
pub struct ExporterSummary {
    /// Its exporter id.
    pub exporter_id: u32,
    /// Its final state (next sequence, cookie, declared losses per domain).
    pub state: ExporterState,
    /// Whether it crashed during the run (a crash may declare losses).
    pub crashed: bool,
    /// It journaled its intake: even a crash loses nothing.
    pub durable_intake: bool,
    /// Records taken in over every incarnation.
    pub taken_in: u64,
    /// PE the exporter streams to at the end.
    pub final_pe: Option<u32>,
}

/// Counts of one run.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunStats {
    /// Virtual time at the end.
    pub virtual_time: Duration,
    /// Events handled.
    pub steps: u64,
    /// Failovers over every exporter incarnation.
    pub failovers: u64,
    /// Failbacks over every exporter incarnation.
    pub failbacks: u64,
    /// Commits over every collector.
    pub commits: u64,
    /// Associations that failed (partition, retransmissions, dead peer).
    pub associations_failed: u64,
    /// Cookie Echoes a collector refused.
    pub echoes_refused: u64,
}

#[derive(Debug)]
enum Event {
    Fault(Fault),
    StartExporter(usize),
    PartitionStart(usize),
    RegistrarPartitionStart(usize),
    LinkUp(LinkId),
    Deliver {
        link: LinkId,
        to_collector: bool,
        ppid: u32,
        stream: u16,
        payload: Vec<u8>,
    },
    /// The exporter's end learns the association is over.
    EndAtExporter(LinkId),
    /// The collector's end learns the association is over.
    EndAtCollector(LinkId),
    Commit {
        collector: usize,
        incarnation: u32,
    },
    /// An ASAP association to the registrar is established.
    RegistrarUp(AssocId),
    /// The registrar's end of an ASAP association learns it is over.
    RegistrarDown(AssocId),
    /// An ASAP message arrives at the registrar.
    ToRegistrar {
        assoc: AssocId,
        bytes: Vec<u8>,
    },
    /// An ASAP message from the registrar arrives at its peer.
    FromRegistrar {
        assoc: AssocId,
        bytes: Vec<u8>,
    },
    /// The peer's end of an ASAP association learns it is over (the
    /// registrar died, or was not there to connect to).
    RegistrarLost(AssocId),
}

/// Who is at the other end of a registrar association.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AsapPeer {
    /// A collector's pool element (one incarnation of it).
    Collector { index: usize, incarnation: u32 },
    /// An exporter's pool user (one incarnation of it).
    Exporter { index: usize, incarnation: u32 },
}

/// What an exporter asked the registrar; answers come in order.
#[derive(Debug, Clone)]
enum Request {
    Select,
    Failback { current: u32, avoid: Vec<u32> },
}

struct Link {
    exporter: usize,
    exporter_incarnation: u32,
    association: AssociationId,
    collector: usize,
    collector_incarnation: u32,
    up: bool,
    /// Open at each end (the end has not learnt of its end yet).
    exporter_open: bool,
    collector_open: bool,
    /// Nothing is delivered at or after this (failure, crash, close).
    dead_from: Option<Duration>,
    /// In-order delivery per direction: the last delivery time.
    last_to_collector: Duration,
    last_to_exporter: Duration,
}

struct CollectorLife {
    store: Store,
    signer: CookieSigner,
    /// Batches handed to the writer and not committed yet (volatile).
    pending: Vec<Batch>,
    commit_scheduled: bool,
    sessions: BTreeMap<LinkId, CollectorSession>,
    /// Graceful stop: deadline.
    stopping: Option<Duration>,
    /// A stalled disk: no commit completes before this.
    stalled_until: Duration,
    /// The ASAP pool element (registration, keep-alives, deregistration).
    pool_element: PoolElement,
    /// Its association to the registrar.
    registrar_assoc: Option<AssocId>,
    /// It left the pool (deregistered, or gave up): a stop may end.
    left_pool: bool,
}

struct CollectorNode {
    pe_id: u32,
    priority: u32,
    database: PathBuf,
    incarnation: u32,
    life: Option<CollectorLife>,
    /// A restart came while a graceful stop was running.
    restart_after_stop: bool,
}

struct ExporterNode {
    exporter_id: u32,
    incarnation: u32,
    core: Option<Exporter>,
    /// The state file's content (written by `Output::PersistState`).
    durable: ExporterState,
    /// Durable intake (`[buffer] durable`): the journal, on real files.
    intake: Option<DurableIntake>,
    /// Journaled records of a previous run, to be taken in again first.
    restored: VecDeque<(u32, BufferedRecord)>,
    /// The replay spill's files, per domain, oldest first
    /// (`Scenario::spill_window`).
    spill: MemorySpill,
    target: u64,
    taken_in: u64,
    next_input: Duration,
    links: BTreeMap<AssociationId, LinkId>,
    crashed: bool,
    /// Its association to the registrar, once established.
    registrar_assoc: Option<AssocId>,
    registrar_up: bool,
    /// Requests waiting for the association, and those sent, in order.
    unsent_requests: Vec<AsapMessage>,
    requests: VecDeque<Request>,
    /// Highest cookie sequence seen per domain (cookies never go back).
    cookie_high: BTreeMap<u32, u64>,
    counted_failovers: u64,
    counted_failbacks: u64,
}

impl RegistrarNode {
    /// Whether the running registrar process has `assoc` up (messages on
    /// an association of a dead process go nowhere).
    fn server_knows(&self, assoc: AssocId) -> bool {
        self.up && self.open.contains(&assoc) && assoc >= self.first_assoc_of_run
    }
}

/// The registrar: the real ASAP server core, no ENRP peers.
struct RegistrarNode {
    server: Server,
    /// The process runs (a crash loses the handlespace: PEs re-register).
    up: bool,
    /// Associations below this belong to an earlier run of the process.
    first_assoc_of_run: AssocId,
    /// Who is at the other end of every association ever opened.
    peers: BTreeMap<AssocId, AsapPeer>,
    /// The associations the registrar process has up.
    open: BTreeSet<AssocId>,
    next_assoc: AssocId,
}

/// One simulated pool.
pub struct World {
    scenario: Scenario,
    origin: Instant,
    now: Duration,
    rng: StdRng,
    queue: BTreeMap<(Duration, u64), Event>,
    next_event: u64,
    collectors: Vec<CollectorNode>,
    exporters: Vec<ExporterNode>,
    links: BTreeMap<LinkId, Link>,
    next_link: LinkId,
    registrar: RegistrarNode,
    trace: Vec<String>,
    verbose: bool,
    stats: RunStats,
    dir: PathBuf,
}

impl World {
    /// A pool for `scenario`, its files in `dir` (empty). `verbose` prints
    /// every trace line as it happens (one seed under investigation).
    pub fn new(scenario: Scenario, dir: &Path, verbose: bool) -> Self {
        // The network's draws come from their own generator so that a
        // change of the scenario's shape does not shift them (and back).
        let rng = StdRng::seed_from_u64(scenario.seed ^ 0x6e65_7477_6f72_6b00);
        let collectors = scenario
            .collector_priorities
            .iter()
            .enumerate()
            .map(|(index, &priority)| CollectorNode {
                pe_id: FIRST_PE_ID + index as u32,
                priority,
                database: dir.join(format!("collector{index}.sqlite")),
                incarnation: 0,
                life: None,
                restart_after_stop: false,
            })
            .collect();
        let exporters = scenario
            .exporter_records
            .iter()
            .enumerate()
            .map(|(index, &target)| {
                let exporter_id = FIRST_EXPORTER_ID + index as u32;
                ExporterNode {
                    exporter_id,
                    incarnation: 0,
                    core: None,
                    durable: ExporterState::new(exporter_id),
                    target,
                    taken_in: 0,
                    next_input: EXPORTERS_START,
                    links: BTreeMap::new(),
                    intake: None,
                    restored: VecDeque::new(),
                    spill: MemorySpill::default(),
                    registrar_assoc: None,
                    registrar_up: false,
                    unsent_requests: Vec::new(),
                    requests: VecDeque::new(),
                    crashed: false,
                    cookie_high: BTreeMap::new(),
                    counted_failovers: 0,
                    counted_failbacks: 0,
                }
            })
            .collect();
        let origin = Instant::now();
        let mut world = Self {
            origin,
            now: Duration::ZERO,
            rng,
            queue: BTreeMap::new(),
            next_event: 0,
            collectors,
            exporters,
            links: BTreeMap::new(),
            next_link: 1,
            registrar: RegistrarNode {
                server: Server::new(
                    ServerConfig {
                        keep_alive_period: scenario.network.keepalive_period,
                        keep_alive_timeout: scenario.network.keepalive_timeout,
                        ..ServerConfig::default()
                    },
                    origin,
                ),
                up: true,
                first_assoc_of_run: 0,
                peers: BTreeMap::new(),
                open: BTreeSet::new(),
                next_assoc: 1,
            },
            trace: Vec::new(),
            verbose,
            stats: RunStats::default(),
            dir: dir.to_path_buf(),
            scenario,
        };
        for (at, fault) in world.scenario.faults.clone() {
            world.schedule(at, Event::Fault(fault));
        }
        for (index, partition) in world.scenario.partitions.clone().iter().enumerate() {
            world.schedule(partition.from, Event::PartitionStart(index));
        }
        for (index, partition) in world
            .scenario
            .registrar_partitions
            .clone()
            .iter()
            .enumerate()
        {
            world.schedule(partition.from, Event::RegistrarPartitionStart(index));
        }
        for exporter in 0..world.exporters.len() {
            world.schedule(EXPORTERS_START, Event::StartExporter(exporter));
        }
        world
    }

    /// Runs the scenario to its end: every exporter took in its records,
    /// every record is covered by a cookie, the final statistics went out
    /// and every collector stopped gracefully.
    pub fn run(mut self) -> Result<RunOutcome, RunFailure> {
        match self.run_inner() {
            Ok(outcome) => Ok(outcome),
            Err(reason) => Err(RunFailure {
                reason,
                trace: self.trace,
            }),
        }
    }

    fn run_inner(&mut self) -> Result<RunOutcome, String> {
        for collector in 0..self.collectors.len() {
            self.start_collector(collector)?;
        }
        let finish_by = self.scenario.faults_end + FINISH_LIMIT;
        // Phase 1: the stream, with the faults, until every exporter is
        // done and drained, and the pool had time to settle (failback).
        let settled = self.scenario.faults_end + SETTLE;
        self.run_until(finish_by, |world| {
            world.now >= settled && world.exporters_finished() && world.back_on_primary()
        })?;
        if !self.exporters_finished() {
            return Err(format!(
                "the stream did not finish {FINISH_LIMIT:?} after the faults: {}",
                self.exporter_status()
            ));
        }
        // Phase 2: the exporters' final account (reliability statistics),
        // as `exporter stream` sends it before it exits.
        for exporter in &mut self.exporters {
            if let Some(core) = &mut exporter.core {
                core.queue_statistics(self.origin + self.now);
            }
        }
        // They must reach a store, so the run goes on for a while, and, in
        // the primary-killed scenario, until the exporter is back on the
        // primary after any association the network failed meanwhile.
        let quiet_until = self.now + Duration::from_secs(2);
        self.run_until(quiet_until + FINISH_LIMIT, |world| {
            world.now >= quiet_until && world.exporters_finished() && world.back_on_primary()
        })?;
        if !(self.exporters_finished() && self.back_on_primary()) {
            return Err(format!(
                "the stream did not settle after its final statistics: {}",
                self.exporter_status()
            ));
        }
        // Phase 3: every collector stops gracefully; their stores are then
        // final.
        let exporter_states = self.stop_exporters()?;
        for collector in 0..self.collectors.len() {
            self.stop_collector(collector);
        }
        let stop_by = self.now + STOP_LIMIT + Duration::from_secs(1);
        self.run_until(stop_by, |world| {
            world.collectors.iter().all(|c| c.life.is_none())
        })?;
        if let Some(up) = self.collectors.iter().position(|c| c.life.is_some()) {
            return Err(format!("collector {up} did not stop"));
        }
        self.stats.virtual_time = self.now;
        let exporters = self
            .exporters
            .iter()
            .zip(&exporter_states)
            .map(|(node, (final_pe, state))| ExporterSummary {
                exporter_id: node.exporter_id,
                state: state.clone(),
                crashed: node.crashed,
                durable_intake: node.intake.is_some(),
                taken_in: node.taken_in,
                final_pe: *final_pe,
            })
            .collect();
        let mut state_files = Vec::new();
        for (index, (_, state)) in exporter_states.iter().enumerate() {
            let path = self.dir.join(format!("exporter{index}.state"));
            exporter::state_file::StateFile::new(&path)
                .store(state)
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
            state_files.push(path);
        }
        Ok(RunOutcome {
            databases: self.collectors.iter().map(|c| c.database.clone()).collect(),
            exporter_states: state_files,
            exporters,
            stats: self.stats,
        })
    }

    fn exporters_finished(&self) -> bool {
        self.exporters.iter().all(|e| {
            e.taken_in >= e.target
                && e.restored.is_empty()
                && e.core.as_ref().is_some_and(Exporter::is_drained)
        })
    }

    /// In the primary-killed scenario the run goes on until the exporter
    /// streams to the primary again (a lossy network may fail an
    /// association after the settling time; the failback then comes
    /// later), bounded by [`FINISH_LIMIT`]; the oracle checks it did.
    fn back_on_primary(&self) -> bool {
        self.scenario.kind != Kind::PrimaryKilled
            || self.exporters.iter().all(|e| {
                e.core
                    .as_ref()
                    .is_some_and(|core| core.current_pe() == Some(FIRST_PE_ID))
            })
    }

    fn exporter_status(&self) -> String {
        self.exporters
            .iter()
            .map(|e| match &e.core {
                Some(core) => format!(
                    "exporter {}: taken in {}/{}, buffered {}, on PE {:?}",
                    e.exporter_id,
                    e.taken_in,
                    e.target,
                    core.buffered_records(),
                    core.current_pe()
                ),
                None => format!("exporter {}: down", e.exporter_id),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The exporters exit the way `exporter stream` does: the final state
    /// is what the audit reads. Returns (PE in use, final state) each.
    fn stop_exporters(&mut self) -> Result<Vec<(Option<u32>, ExporterState)>, String> {
        let mut states = Vec::new();
        for index in 0..self.exporters.len() {
            let node = &mut self.exporters[index];
            let core = node
                .core
                .as_mut()
                .ok_or_else(|| format!("exporter {index} down at the end"))?;
            let pe = core.current_pe();
            node.spill.perform(core);
            let state = core.shutdown_state();
            node.spill.perform(core);
            node.durable = state.clone();
            let links: Vec<LinkId> = node.links.values().copied().collect();
            for link in links {
                self.close_from_exporter(link);
            }
            states.push((pe, state));
        }
        Ok(states)
    }

    // ---- the event loop ------------------------------------------------

    fn run_until(&mut self, until: Duration, done: impl Fn(&World) -> bool) -> Result<(), String> {
        loop {
            self.drain_outputs()?;
            self.release_journals()?;
            self.check_invariants()?;
            if done(self) {
                return Ok(());
            }
            let Some(next) = self.next_wake() else {
                return Ok(()); // Nothing will ever happen again.
            };
            if next > until {
                self.now = self.now.max(until);
                return Ok(());
            }
            self.stats.steps += 1;
            if self.stats.steps > MAX_STEPS {
                return Err(format!(
                    "more than {MAX_STEPS} steps at {:?}: livelock? {}",
                    self.now,
                    self.exporter_status()
                ));
            }
            // Virtual time never goes back (a core may ask for a past
            // instant: it is handled now).
            self.now = self.now.max(next);
            self.step()?;
        }
    }

    /// The earliest of: the next queued event, every core's timer, the
    /// input ticks and the stop deadlines.
    fn next_wake(&self) -> Option<Duration> {
        let mut wake = self.queue.keys().next().map(|(at, _)| *at);
        let mut consider = |at: Option<Duration>| {
            if let Some(at) = at {
                wake = Some(wake.map_or(at, |w: Duration| w.min(at)));
            }
        };
        for exporter in &self.exporters {
            if let Some(core) = &exporter.core {
                consider(core.poll_timeout().map(|i| self.virtual_time(i)));
                if exporter.taken_in < exporter.target {
                    consider(Some(exporter.next_input));
                }
            }
        }
        for collector in &self.collectors {
            if let Some(life) = &collector.life {
                for session in life.sessions.values() {
                    consider(session.poll_timeout().map(|i| self.virtual_time(i)));
                }
                consider(life.stopping);
                consider(
                    life.pool_element
                        .poll_timeout()
                        .map(|i| self.virtual_time(i)),
                );
            }
        }
        consider(
            self.registrar
                .server
                .next_deadline()
                .map(|i| self.virtual_time(i)),
        );
        wake
    }

    fn virtual_time(&self, instant: Instant) -> Duration {
        instant.saturating_duration_since(self.origin)
    }

    fn instant(&self) -> Instant {
        self.origin + self.now
    }

    fn unix_ms(&self) -> u64 {
        UNIX_MS_AT_ORIGIN + self.now.as_millis() as u64
    }

    fn session_now(&self) -> Now {
        Now {
            instant: self.instant(),
            unix_ms: self.unix_ms() as i64,
        }
    }

    fn schedule(&mut self, at: Duration, event: Event) {
        self.next_event += 1;
        self.queue.insert((at, self.next_event), event);
    }

    fn log(&mut self, line: String) {
        let line = format!("{:>10.3}s {line}", self.now.as_secs_f64());
        if self.verbose {
            println!("{line}");
        }
        if self.trace.len() == TRACE_LINES {
            self.trace.remove(0);
        }
        self.trace.push(line);
    }

    /// Handles everything due now: queued events first (in order), then
    /// timers and input.
    fn step(&mut self) -> Result<(), String> {
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let event = entry.remove();
            self.handle_event(event)?;
            self.drain_outputs()?;
        }
        let now = self.instant();
        for index in 0..self.exporters.len() {
            let due = self.exporters[index]
                .core
                .as_ref()
                .and_then(Exporter::poll_timeout)
                .is_some_and(|at| at <= now);
            if due {
                self.exporters[index]
                    .core
                    .as_mut()
                    .expect("checked")
                    .handle_timeout(now);
            }
            self.take_input(index)?;
        }
        for collector in 0..self.collectors.len() {
            let pe_due = self.collectors[collector]
                .life
                .as_ref()
                .and_then(|life| life.pool_element.poll_timeout())
                .is_some_and(|at| at <= now);
            if pe_due {
                self.pool_element_event(collector, PeInput::Timer)?;
            }
            self.collector_timers(collector)?;
        }
        if self
            .registrar
            .server
            .next_deadline()
            .is_some_and(|at| at <= now)
        {
            let actions = self.registrar.server.on_timer(now);
            self.perform_registrar(actions)?;
        }
        Ok(())
    }

    fn take_input(&mut self, index: usize) -> Result<(), String> {
        let burst = self.scenario.input_burst;
        let interval = self.scenario.input_interval;
        let domains = self.scenario.domains.clone();
        let now = self.now;
        let node = &mut self.exporters[index];
        let Some(core) = &mut node.core else {
            return Ok(());
        };
        // Journaled records of a previous run go first, with their own
        // sequences (as `stream.rs` restores them).
        while let Some((domain, _)) = node.restored.front()
            && core.can_accept(*domain)
        {
            let (domain, record) = node.restored.pop_front().expect("front exists");
            match core.push_record(domain, record.template_id, record.bytes) {
                Ok(given) if given == record.sequence => {}
                other => {
                    return Err(format!(
                        "exporter {index}: journaled record {} of domain {domain} came back as {other:?}",
                        record.sequence
                    ));
                }
            }
        }
        if node.taken_in >= node.target || node.next_input > now {
            return Ok(());
        }
        if !node.restored.is_empty() {
            // Back-pressure on the restored records: new input waits.
            node.next_input = now + interval;
            return Ok(());
        }
        for _ in 0..burst {
            if node.taken_in >= node.target {
                break;
            }
            let domain = domains[(node.taken_in % domains.len() as u64) as usize];
            if !core.can_accept(domain) {
                break; // Back-pressure: the source waits for cookies.
            }
            let sequence = core.next_sequence(domain);
            // The bytes depend on who numbered the record and how, so a
            // sequence reused for another record shows as a conflict.
            let bytes = RecordBytes::from_slice(
                &FlowRecord::synthetic(
                    sequence ^ (u64::from(node.exporter_id) << 40) ^ (u64::from(domain) << 32),
                    UNIX_MS_AT_ORIGIN,
                )
                .to_bytes(),
            );
            if let Some(intake) = &mut node.intake {
                // Journaled before the core takes it; synced below, before
                // any output can send it.
                let record = BufferedRecord {
                    sequence,
                    template_id: FLOW_TEMPLATE_ID,
                    bytes: bytes.clone(),
                };
                intake
                    .append(domain, &record)
                    .map_err(|e| format!("exporter {index}: journal append: {e}"))?;
            }
            match core.push_record(domain, FLOW_TEMPLATE_ID, bytes) {
                Ok(given) if given == sequence => node.taken_in += 1,
                Ok(given) => {
                    return Err(format!(
                        "exporter {index}: next_sequence said {sequence}, push gave {given}"
                    ));
                }
                Err(error) => {
                    return Err(format!("exporter {index}: push after can_accept: {error}"));
                }
            }
        }
        if let Some(intake) = &mut node.intake {
            intake
                .sync()
                .map_err(|e| format!("exporter {index}: journal sync: {e}"))?;
        }
        node.next_input = now + interval;
        Ok(())
    }

    /// Journal segments the state file's cookie covers are released (as
    /// `stream.rs` does after every pass).
    fn release_journals(&mut self) -> Result<(), String> {
        for (index, node) in self.exporters.iter_mut().enumerate() {
            if let (Some(_), Some(intake)) = (&node.core, &mut node.intake) {
                intake
                    .release_persisted(&node.durable)
                    .map_err(|e| format!("exporter {index}: journal release: {e}"))?;
            }
        }
        Ok(())
    }

    fn collector_timers(&mut self, collector: usize) -> Result<(), String> {
        let now = self.instant();
        let due: Vec<LinkId> = match &self.collectors[collector].life {
            Some(life) => life
                .sessions
                .iter()
                .filter(|(_, s)| s.poll_timeout().is_some_and(|at| at <= now))
                .map(|(link, _)| *link)
                .collect(),
            None => return Ok(()),
        };
        for link in due {
            let session_now = self.session_now();
            let Some(life) = &mut self.collectors[collector].life else {
                break;
            };
            let ledger = life.store.ledger();
            let ledger = ledger.lock().expect("ledger lock");
            let Some(session) = life.sessions.get_mut(&link) else {
                continue;
            };
            let outputs = session.handle(
                session_now,
                Input::Timeout {
                    ledger: Some(&ledger),
                },
            );
            drop(ledger);
            self.perform_session(collector, link, outputs)?;
        }
        let life = self.collectors[collector].life.as_ref();
        if let Some(deadline) = life.and_then(|l| l.stopping)
            && deadline <= self.now
        {
            self.log(format!("collector {collector}: stop took too long, killed"));
            self.crash_collector(collector);
        }
        self.maybe_stopped(collector)?;
        Ok(())
    }

    // ---- events --------------------------------------------------------

    fn handle_event(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Fault(fault) => self.fault(fault)?,
            Event::StartExporter(exporter) => self.start_exporter(exporter)?,
            Event::PartitionStart(index) => self.partition_start(index),
            Event::RegistrarPartitionStart(index) => self.registrar_partition_start(index),
            Event::LinkUp(link) => self.link_up(link),
            Event::Deliver {
                link,
                to_collector,
                ppid,
                stream,
                payload,
            } => self.deliver(link, to_collector, ppid, stream, &payload)?,
            Event::EndAtExporter(link) => self.end_at_exporter(link),
            Event::EndAtCollector(link) => self.end_at_collector(link)?,
            Event::RegistrarUp(assoc) => self.registrar_up(assoc)?,
            Event::RegistrarDown(assoc) => self.registrar_down(assoc),
            Event::RegistrarLost(assoc) => self.registrar_lost(assoc)?,
            Event::ToRegistrar { assoc, bytes } => {
                if self.registrar.up && self.registrar.server_knows(assoc) {
                    let now = self.instant();
                    let actions = self.registrar.server.on_message(now, assoc, &bytes);
                    self.perform_registrar(actions)?;
                }
            }
            Event::FromRegistrar { assoc, bytes } => self.deliver_from_registrar(assoc, &bytes)?,
            Event::Commit {
                collector,
                incarnation,
            } => self.commit(collector, incarnation)?,
        }
        Ok(())
    }

    fn fault(&mut self, fault: Fault) -> Result<(), String> {
        self.log(format!("FAULT {fault:?}"));
        match fault {
            Fault::CrashCollector(collector) => {
                if self.collectors[collector].life.is_some() {
                    self.crash_collector(collector);
                }
            }
            Fault::RestartCollector(collector) => {
                let node = &mut self.collectors[collector];
                match &node.life {
                    None => self.start_collector(collector)?,
                    Some(life) if life.stopping.is_some() => node.restart_after_stop = true,
                    Some(_) => {}
                }
            }
            Fault::StopCollector(collector) => self.stop_collector(collector),
            Fault::StallCollector(collector, stall) => {
                let until = self.now + stall;
                if let Some(life) = &mut self.collectors[collector].life {
                    life.stalled_until = until;
                }
            }
            Fault::CrashExporter(exporter) => self.crash_exporter(exporter),
            Fault::CrashRegistrar => self.crash_registrar(),
            Fault::RestartRegistrar => self.restart_registrar(),
            Fault::RestartExporter(exporter) => self.start_exporter(exporter)?,
        }
        Ok(())
    }

    fn start_collector(&mut self, collector: usize) -> Result<(), String> {
        let signer = cookie_signer(
            self.scenario.signed_cookies,
            collector,
            self.collectors.len(),
        );
        let node = &mut self.collectors[collector];
        let store = Store::open(&node.database)
            .map_err(|e| format!("collector {collector}: opening its store: {e:#}"))?;
        node.incarnation += 1;
        let mut pe_config = PoolElementConfig::new(
            PoolHandle(POOL_HANDLE.to_vec()),
            node.pe_id,
            pool_element(node.pe_id, node.priority).user_transport,
            PolicyParams::Priority {
                priority: node.priority,
            },
            1,
        );
        // As the process-level tests configure collectors: short timers.
        pe_config.registration_timeout = Duration::from_secs(1);
        pe_config.connect_timeout = Duration::from_secs(1);
        pe_config.server_hunt_pause = Duration::from_millis(500);
        let pool_element = PoolElement::new(pe_config)
            .map_err(|e| format!("collector {collector}: PE config: {e}"))?;
        node.life = Some(CollectorLife {
            store,
            signer,
            pending: Vec::new(),
            commit_scheduled: false,
            sessions: BTreeMap::new(),
            stopping: None,
            stalled_until: Duration::ZERO,
            pool_element,
            registrar_assoc: None,
            left_pool: false,
        });
        let incarnation = node.incarnation;
        self.log(format!(
            "collector {collector}: started (incarnation {incarnation})"
        ));
        // Associations still open to the dead incarnation: its packets are
        // out of the blue to the new one, which answers with ABORT.
        let latency = self.latency();
        let stale: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| {
                l.collector == collector
                    && l.collector_incarnation != incarnation
                    && l.exporter_open
            })
            .map(|(id, _)| *id)
            .collect();
        for link in stale {
            self.schedule(self.now + latency, Event::EndAtExporter(link));
        }
        self.pool_element_event(collector, PeInput::Start)
    }

    fn crash_collector(&mut self, collector: usize) {
        let node = &mut self.collectors[collector];
        let Some(life) = node.life.take() else {
            return;
        };
        let lost: usize = life.pending.iter().map(Batch::len).sum();
        node.incarnation += 1;
        let dead_incarnation = node.incarnation - 1;
        self.log(format!(
            "collector {collector}: crashed ({lost} uncommitted records dropped)"
        ));
        // The registrar finds out when its association to the PE fails (or
        // earlier, by keep-alives).
        if let Some(assoc) = life.registrar_assoc {
            let detect = self.detect();
            self.schedule(self.now + detect, Event::RegistrarDown(assoc));
        }
        let links: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| {
                l.collector == collector && l.collector_incarnation == dead_incarnation
            })
            .map(|(id, _)| *id)
            .collect();
        for link in links {
            let detect = self.detect();
            let l = self.links.get_mut(&link).expect("listed");
            l.dead_from = Some(self.now);
            l.collector_open = false;
            if l.exporter_open {
                self.schedule(self.now + detect, Event::EndAtExporter(link));
            }
        }
        self.maybe_restart_after_stop(collector);
    }

    fn stop_collector(&mut self, collector: usize) {
        let deadline = self.now + STOP_LIMIT;
        let session_now = self.session_now();
        let node = &mut self.collectors[collector];
        let Some(life) = &mut node.life else {
            return;
        };
        if life.stopping.is_some() {
            return;
        }
        life.stopping = Some(deadline);
        // Deregistration at the home registrar, beside the sessions' stop.
        if let Err(error) = self.pool_element_event(collector, PeInput::Shutdown) {
            self.log(format!("collector {collector}: {error}"));
        }
        let Some(life) = &mut self.collectors[collector].life else {
            return;
        };
        let links: Vec<LinkId> = life.sessions.keys().copied().collect();
        let mut all = Vec::new();
        for link in links {
            let session = life.sessions.get_mut(&link).expect("listed");
            all.push((link, session.handle(session_now, Input::StopRequested)));
        }
        self.log(format!("collector {collector}: stopping gracefully"));
        for (link, outputs) in all {
            if let Err(error) = self.perform_session(collector, link, outputs) {
                self.log(format!("collector {collector}: {error}"));
            }
        }
    }

    /// A stopping collector exits once its sessions are closed and its
    /// writer committed everything.
    fn maybe_stopped(&mut self, collector: usize) -> Result<(), String> {
        let node = &mut self.collectors[collector];
        let done = node.life.as_ref().is_some_and(|life| {
            life.stopping.is_some()
                && life.sessions.is_empty()
                && life.pending.is_empty()
                && life.left_pool
        });
        if done {
            if let Some(assoc) = node.life.take().and_then(|life| life.registrar_assoc) {
                self.schedule(self.now, Event::RegistrarDown(assoc));
            }
            let node = &mut self.collectors[collector];
            node.incarnation += 1;
            self.log(format!("collector {collector}: stopped"));
            self.maybe_restart_after_stop(collector);
            if self.collectors[collector].life.is_none()
                && self.collectors[collector].restart_after_stop
            {
                self.collectors[collector].restart_after_stop = false;
                self.start_collector(collector)?;
            }
        }
        Ok(())
    }

    fn maybe_restart_after_stop(&mut self, collector: usize) {
        // Restarts wait for the stop: handled by `maybe_stopped`, and here
        // for a stop cut short by a crash.
        let node = &mut self.collectors[collector];
        if node.restart_after_stop && node.life.is_none() {
            node.restart_after_stop = false;
            if let Err(error) = self.start_collector(collector) {
                self.log(format!("collector {collector}: restart failed: {error}"));
            }
        }
    }

    fn start_exporter(&mut self, exporter: usize) -> Result<(), String> {
        let now = self.instant();
        let unix_ms = self.unix_ms();
        let mut config = ExporterConfig::new(self.exporters[exporter].exporter_id);
        let timers = self.scenario.exporter_timers;
        config.cookie_timeout = timers.cookie_timeout;
        config.failback_check = timers.failback_check;
        config.drain_timeout = timers.drain_timeout;
        config.retry_interval = timers.retry_interval;
        config.failback_holdoff = timers.failback_holdoff;
        config.state_sync_interval = timers.state_sync_interval;
        config.sequence_reservation = timers.sequence_reservation;
        if self.scenario.signed_cookies {
            config.cookie_keys = Some(pool_public_keys(self.collectors.len()));
        }
        config.replay = ReplayLimits::memory(self.scenario.replay_records);
        if let Some(window) = self.scenario.spill_window {
            // Kept in memory by this driver (`MemorySpill`), as files are
            // by the real one.
            config.replay.memory_records = window;
            config.replay.spill_dir = Some("simulated".into());
        }
        let journal_dir = self.dir.join(format!("exporter{exporter}-journal"));
        let segment_records = self.scenario.journal_segment_records;
        let node = &mut self.exporters[exporter];
        if node.core.is_some() {
            return Ok(());
        }
        let mut state = node.durable.clone();
        if let Some(segment_records) = segment_records {
            let settings = DurableSettings {
                dir: journal_dir,
                segment_records,
            };
            let (intake, pending) = DurableIntake::open(settings, None, &mut state)
                .map_err(|e| format!("exporter {exporter}: opening the journal: {e}"))?;
            node.intake = Some(intake);
            node.restored = pending.into();
            // The journal holds every record the spill did (the real
            // driver removes the spill's files the same way).
            node.spill.domains.clear();
        }
        let recovered = node.spill.recovered();
        let mut core = Exporter::new(
            config,
            state,
            vec![flow_template()],
            now,
            unix_ms,
            recovered,
        );
        node.spill.perform(&mut core);
        core.start();
        node.incarnation += 1;
        node.core = Some(core);
        node.links.clear();
        // Cookies advance within a run; a restart goes back to the last
        // persisted one (persisting is rate-limited), never below it.
        node.cookie_high = node
            .durable
            .domains
            .iter()
            .filter_map(|(&domain, state)| {
                let cookie = state.last_cookie.filter(|c| !c.introduction)?;
                Some((domain, cookie.next_record_sequence()))
            })
            .collect();
        node.counted_failovers = 0;
        node.counted_failbacks = 0;
        node.next_input = node.next_input.max(self.now);
        node.registrar_up = false;
        node.unsent_requests.clear();
        node.requests.clear();
        let incarnation = node.incarnation;
        let assoc = self.connect_registrar(AsapPeer::Exporter {
            index: exporter,
            incarnation,
        });
        self.exporters[exporter].registrar_assoc = Some(assoc);
        let node = &self.exporters[exporter];
        let line = format!(
            "exporter {exporter}: started from {:?}, {} journaled records to take in again, declared {}",
            node.core.as_ref().map(|core| core.state()),
            node.restored.len(),
            node.core
                .as_ref()
                .map_or(0, |core| core.counters().declared_not_sent),
        );
        self.log(line);
        Ok(())
    }

    fn crash_exporter(&mut self, exporter: usize) {
        let node = &mut self.exporters[exporter];
        if node.core.take().is_none() {
            return;
        }
        // The journal's files stay; its open handles go with the process.
        node.intake = None;
        node.restored.clear();
        node.crashed = true;
        node.incarnation += 1;
        let links: Vec<LinkId> = node.links.values().copied().collect();
        node.links.clear();
        if let Some(assoc) = node.registrar_assoc.take() {
            let detect = self.detect();
            self.schedule(self.now + detect, Event::RegistrarDown(assoc));
        }
        if self.scenario.spill_window.is_some() {
            // The spill's files stay too, but the last records appended may
            // still have been in the process's write buffer.
            let mut spill = std::mem::take(&mut self.exporters[exporter].spill);
            for records in spill.domains.values_mut() {
                let unflushed = self.rng.random_range(0..=8).min(records.len());
                records.truncate(records.len() - unflushed);
            }
            self.exporters[exporter].spill = spill;
        }
        self.log(format!("exporter {exporter}: crashed"));
        for link in links {
            let detect = self.detect();
            let l = self.links.get_mut(&link).expect("listed");
            l.dead_from = Some(self.now);
            l.exporter_open = false;
            if l.collector_open {
                self.schedule(self.now + detect, Event::EndAtCollector(link));
            }
        }
    }

    // ---- the registrar ---------------------------------------------------

    /// Opens an ASAP association to the registrar (reliable, no partition
    /// on this path): up after a round trip.
    fn connect_registrar(&mut self, peer: AsapPeer) -> AssocId {
        let assoc = self.registrar.next_assoc;
        self.registrar.next_assoc += 1;
        self.registrar.peers.insert(assoc, peer);
        let rtt = self.scenario.network.registrar_rtt;
        let blocked = self.registrar_partitioned_until(peer, self.now).is_some()
            || self
                .registrar_partitioned_until(peer, self.now + rtt)
                .is_some();
        if self.registrar.up && !blocked {
            self.schedule(self.now + rtt, Event::RegistrarUp(assoc));
        } else {
            let timeout = self.scenario.network.connect_timeout;
            self.schedule(self.now + timeout, Event::RegistrarLost(assoc));
        }
        assoc
    }

    /// The peer of `assoc`, if that incarnation still uses it.
    /// (Associations made before a registrar crash are unknown to the
    /// restarted one: see `RegistrarNode::server_knows`.)
    fn live_peer(&self, assoc: AssocId) -> Option<AsapPeer> {
        let peer = *self.registrar.peers.get(&assoc)?;
        let alive = match peer {
            AsapPeer::Collector { index, incarnation } => {
                let node = &self.collectors[index];
                node.incarnation == incarnation
                    && node
                        .life
                        .as_ref()
                        .is_some_and(|life| life.registrar_assoc == Some(assoc))
            }
            AsapPeer::Exporter { index, incarnation } => {
                let node = &self.exporters[index];
                node.incarnation == incarnation && node.registrar_assoc == Some(assoc)
            }
        };
        alive.then_some(peer)
    }

    fn registrar_up(&mut self, assoc: AssocId) -> Result<(), String> {
        let Some(peer) = self.live_peer(assoc) else {
            // Its end died meanwhile: the registrar never sees it.
            return Ok(());
        };
        if !self.registrar.up {
            // The registrar died during the handshake.
            let timeout = self.scenario.network.connect_timeout;
            self.schedule(self.now + timeout, Event::RegistrarLost(assoc));
            return Ok(());
        }
        let now = self.instant();
        self.registrar
            .server
            .on_association_up(now, assoc, Some(address_of(peer)));
        self.registrar.open.insert(assoc);
        match peer {
            AsapPeer::Collector { index, .. } => {
                self.pool_element_event(index, PeInput::AssociationUp(0))
            }
            AsapPeer::Exporter { index, .. } => {
                let node = &mut self.exporters[index];
                node.registrar_up = true;
                for message in std::mem::take(&mut node.unsent_requests) {
                    self.send_to_registrar(assoc, &message);
                }
                Ok(())
            }
        }
    }

    /// The peer's end of `assoc` is over: a pool element hunts for a
    /// registrar again; a pool user's requests on it fail (the exporter
    /// core retries after its retry interval) and it reconnects.
    fn registrar_lost(&mut self, assoc: AssocId) -> Result<(), String> {
        let peer = self.live_peer(assoc);
        match peer {
            Some(AsapPeer::Collector { index, .. }) => {
                if let Some(life) = &mut self.collectors[index].life {
                    life.registrar_assoc = None;
                }
                self.pool_element_event(index, PeInput::AssociationDown(0))
            }
            Some(AsapPeer::Exporter { index, incarnation }) => {
                let now = self.instant();
                let node = &mut self.exporters[index];
                node.registrar_up = false;
                node.unsent_requests.clear();
                let failed: Vec<Request> = node.requests.drain(..).collect();
                if let Some(core) = &mut node.core {
                    for request in failed {
                        match request {
                            Request::Select => core.handle_selected(
                                now,
                                Err("no registrar answered the handle resolution".to_owned()),
                            ),
                            Request::Failback { .. } => core.handle_failback_check(now, None),
                        }
                    }
                }
                let assoc = self.connect_registrar(AsapPeer::Exporter { index, incarnation });
                self.exporters[index].registrar_assoc = Some(assoc);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The registrar process dies: its handlespace is gone, every ASAP
    /// association's other end finds out after the detection time.
    fn crash_registrar(&mut self) {
        if !self.registrar.up {
            return;
        }
        self.registrar.up = false;
        let assocs: Vec<AssocId> = std::mem::take(&mut self.registrar.open)
            .into_iter()
            .collect();
        for assoc in assocs {
            let detect = self.detect();
            self.schedule(self.now + detect, Event::RegistrarLost(assoc));
        }
        self.log("registrar: crashed".to_owned());
    }

    fn restart_registrar(&mut self) {
        if self.registrar.up {
            return;
        }
        let config = self.registrar.server.config().clone();
        self.registrar.server = Server::new(config, self.instant());
        self.registrar.up = true;
        self.registrar.first_assoc_of_run = self.registrar.next_assoc;
        self.log("registrar: restarted (empty handlespace)".to_owned());
    }

    /// The registrar's end of `assoc` is over (its peer died or closed it).
    fn registrar_down(&mut self, assoc: AssocId) {
        if self.registrar.open.remove(&assoc) {
            let removed = self.registrar.server.on_association_down(assoc);
            if removed > 0 {
                self.log(format!(
                    "registrar: association {assoc} down, {removed} PE(s) removed"
                ));
            }
        }
    }

    fn send_to_registrar(&mut self, assoc: AssocId, message: &AsapMessage) {
        let mut bytes = Vec::new();
        message.encode(&mut bytes);
        self.asap_transmit(assoc, Event::ToRegistrar { assoc, bytes });
    }

    /// When a message sent now on the registrar association `assoc`
    /// arrives: after half the round trip, held by any partition between
    /// the registrar and the association's peer until it ends.
    fn asap_arrival(&self, assoc: AssocId) -> Duration {
        let one_way = self.scenario.network.registrar_rtt / 2;
        let mut at = self.now + one_way;
        if let Some(&peer) = self.registrar.peers.get(&assoc) {
            while let Some(until) = self.registrar_partitioned_until(peer, at) {
                at = until + one_way;
            }
        }
        at
    }

    fn asap_transmit(&mut self, assoc: AssocId, event: Event) {
        let at = self.asap_arrival(assoc);
        self.schedule(at, event);
    }

    /// The end of a partition between the registrar and `peer`'s node that
    /// holds at `at`, if any.
    fn registrar_partitioned_until(&self, peer: AsapPeer, at: Duration) -> Option<Duration> {
        let node = match peer {
            AsapPeer::Collector { index, .. } => AsapNode::Collector(index),
            AsapPeer::Exporter { index, .. } => AsapNode::Exporter(index),
        };
        self.scenario
            .registrar_partitions
            .iter()
            .filter(|p| p.node == node && p.from <= at && at < p.until)
            .map(|p| p.until)
            .max()
    }

    /// A partition between the registrar and a node begins: associations
    /// across it fail if it outlasts the failure threshold.
    fn registrar_partition_start(&mut self, index: usize) {
        let partition = self.scenario.registrar_partitions[index];
        let threshold = self.scenario.network.failure_threshold;
        self.log(format!("PARTITION {partition:?}"));
        if partition.until - partition.from <= threshold {
            return;
        }
        let failing: Vec<AssocId> = self
            .registrar
            .peers
            .iter()
            .filter(|(assoc, _)| self.registrar.open.contains(assoc))
            .filter(|(_, peer)| {
                matches!(
                    (**peer, partition.node),
                    (AsapPeer::Collector { index, .. }, AsapNode::Collector(node)) if index == node
                ) || matches!(
                    (**peer, partition.node),
                    (AsapPeer::Exporter { index, .. }, AsapNode::Exporter(node)) if index == node
                )
            })
            .map(|(assoc, _)| *assoc)
            .collect();
        let at = partition.from + threshold;
        for assoc in failing {
            self.schedule(at, Event::RegistrarDown(assoc));
            self.schedule(at, Event::RegistrarLost(assoc));
        }
    }

    /// An exporter's ASAP request; `request` when an answer is expected.
    fn ask_registrar(&mut self, exporter: usize, request: Option<Request>, message: AsapMessage) {
        let node = &mut self.exporters[exporter];
        let Some(assoc) = node.registrar_assoc else {
            return;
        };
        if let Some(request) = request {
            node.requests.push_back(request);
        }
        if node.registrar_up {
            self.send_to_registrar(assoc, &message);
        } else {
            node.unsent_requests.push(message);
        }
    }

    fn perform_registrar(&mut self, actions: Vec<Action>) -> Result<(), String> {
        for action in actions {
            match action {
                Action::Send { assoc, payload } => self.asap_transmit(
                    assoc,
                    Event::FromRegistrar {
                        assoc,
                        bytes: payload,
                    },
                ),
                Action::Close { assoc } => {
                    let peer = self.live_peer(assoc);
                    self.registrar.open.remove(&assoc);
                    self.registrar.server.on_association_down(assoc);
                    match peer {
                        Some(AsapPeer::Collector { index, .. }) => {
                            if let Some(life) = &mut self.collectors[index].life {
                                life.registrar_assoc = None;
                            }
                            self.pool_element_event(index, PeInput::AssociationDown(0))?;
                        }
                        Some(AsapPeer::Exporter { index, .. }) => {
                            return Err(format!(
                                "the registrar closed exporter {index}'s association"
                            ));
                        }
                        None => {}
                    }
                }
                Action::Announce { .. } => {} // No multicast here.
            }
        }
        Ok(())
    }

    fn deliver_from_registrar(&mut self, assoc: AssocId, bytes: &[u8]) -> Result<(), String> {
        match self.live_peer(assoc) {
            Some(AsapPeer::Collector { index, .. }) => {
                self.pool_element_event(index, PeInput::Message(0, bytes.to_vec()))
            }
            Some(AsapPeer::Exporter { index, .. }) => {
                self.resolution_answer(index, bytes);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// A Handle Resolution Response for an exporter: the answer to its
    /// oldest request (SCTP keeps them in order).
    fn resolution_answer(&mut self, exporter: usize, bytes: &[u8]) {
        let Ok(AsapMessage::HandleResolutionResponse {
            reject,
            pool_elements,
            ..
        }) = AsapMessage::decode(bytes)
        else {
            return; // Nothing else is addressed to a pool user here.
        };
        let Some(request) = self.exporters[exporter].requests.pop_front() else {
            return;
        };
        // The pool user's local selection by the Priority policy: best
        // first, ties by PE identifier.
        let mut candidates: Vec<PoolElementInfo> = pool_elements
            .iter()
            .filter_map(|pe| PoolElementInfo::from_wire(pe).ok())
            .collect();
        candidates.sort_by_key(|pe| {
            let priority = match pe.policy {
                PolicyParams::Priority { priority } => priority,
                _ => 0,
            };
            (std::cmp::Reverse(priority), pe.pe_id)
        });
        let now = self.instant();
        match request {
            Request::Select => {
                let names: Vec<String> = candidates
                    .iter()
                    .map(|pe| format!("{:#x}", pe.pe_id))
                    .collect();
                self.log(format!(
                    "exporter {exporter}: resolved [{}]",
                    names.join(", ")
                ));
                let result = if reject || candidates.is_empty() {
                    Err("no pool element registered".to_owned())
                } else {
                    Ok(candidates)
                };
                if let Some(core) = &mut self.exporters[exporter].core {
                    core.handle_selected(now, result);
                }
            }
            Request::Failback { current, avoid } => {
                let members: Vec<Member> = candidates
                    .iter()
                    .filter(|pe| !avoid.contains(&pe.pe_id))
                    .map(|pe| Member {
                        id: pe.pe_id,
                        params: pe.policy,
                    })
                    .collect();
                let target = policies::failback_target(current, &members)
                    .and_then(|id| candidates.into_iter().find(|pe| pe.pe_id == id));
                if let Some(core) = &mut self.exporters[exporter].core {
                    core.handle_failback_check(now, target);
                }
            }
        }
    }

    /// Feeds a collector's pool element and performs what it asks.
    fn pool_element_event(&mut self, collector: usize, input: PeInput) -> Result<(), String> {
        let now = self.instant();
        let Some(life) = &mut self.collectors[collector].life else {
            return Ok(());
        };
        let outputs = life.pool_element.on_event(now, input);
        let incarnation = self.collectors[collector].incarnation;
        let one_way = self.scenario.network.registrar_rtt / 2;
        for output in outputs {
            match output {
                PeOutput::Connect { .. } => {
                    let assoc = self.connect_registrar(AsapPeer::Collector {
                        index: collector,
                        incarnation,
                    });
                    if let Some(life) = &mut self.collectors[collector].life {
                        life.registrar_assoc = Some(assoc);
                    }
                }
                PeOutput::Send { bytes, .. } => {
                    let assoc = self.collectors[collector]
                        .life
                        .as_ref()
                        .and_then(|life| life.registrar_assoc);
                    if let Some(assoc) = assoc {
                        self.asap_transmit(assoc, Event::ToRegistrar { assoc, bytes });
                    }
                }
                PeOutput::Close { .. } => {
                    let assoc = self.collectors[collector]
                        .life
                        .as_mut()
                        .and_then(|life| life.registrar_assoc.take());
                    if let Some(assoc) = assoc {
                        self.schedule(self.now + one_way, Event::RegistrarDown(assoc));
                    }
                }
                PeOutput::Registered { .. } => {
                    let pe_id = self.collectors[collector].pe_id;
                    self.log(format!("collector {collector}: registered as {pe_id:#x}"));
                }
                PeOutput::RegistrationFailed { cause } => {
                    return Err(format!(
                        "collector {collector}: registration refused: {cause}"
                    ));
                }
                PeOutput::Deregistered { confirmed } => {
                    self.log(format!(
                        "collector {collector}: deregistered (confirmed {confirmed})"
                    ));
                    if let Some(life) = &mut self.collectors[collector].life {
                        life.left_pool = true;
                    }
                }
            }
        }
        Ok(())
    }

    // ---- the network ---------------------------------------------------

    fn latency(&mut self) -> Duration {
        let network = self.scenario.network;
        let span = (network.latency_max - network.latency_min).as_micros() as u64;
        network.latency_min + Duration::from_micros(self.rng.random_range(0..=span))
    }

    fn detect(&mut self) -> Duration {
        let network = self.scenario.network;
        let span = (network.detect_max - network.detect_min).as_micros() as u64;
        network.detect_min + Duration::from_micros(self.rng.random_range(0..=span))
    }

    /// The end of a partition between the two that holds at `at`, if any.
    fn partitioned_until(
        &self,
        exporter: usize,
        collector: usize,
        at: Duration,
    ) -> Option<Duration> {
        self.scenario
            .partitions
            .iter()
            .filter(|p| p.exporter == exporter && p.collector == collector)
            .filter(|p| p.from <= at && at < p.until)
            .map(|p| p.until)
            .max()
    }

    fn partition_start(&mut self, index: usize) {
        let partition = self.scenario.partitions[index];
        let threshold = self.scenario.network.failure_threshold;
        self.log(format!("PARTITION {partition:?}"));
        if partition.until - partition.from <= threshold {
            return; // Only delay: SCTP retransmits across it.
        }
        let links: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| {
                l.exporter == partition.exporter
                    && l.collector == partition.collector
                    && l.dead_from.is_none()
            })
            .map(|(id, _)| *id)
            .collect();
        for link in links {
            self.fail_link(link, partition.from + threshold);
        }
    }

    /// The association fails at `at` (both ends find out then).
    fn fail_link(&mut self, link: LinkId, at: Duration) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        if l.dead_from.is_some_and(|dead| dead <= at) {
            return;
        }
        l.dead_from = Some(at);
        self.stats.associations_failed += 1;
        self.schedule(at, Event::EndAtExporter(link));
        self.schedule(at, Event::EndAtCollector(link));
    }

    fn connect(&mut self, exporter: usize, association: AssociationId, pe_id: u32) {
        let link = self.next_link;
        self.next_link += 1;
        let collector = self
            .collectors
            .iter()
            .position(|c| c.pe_id == pe_id)
            .expect("only simulated collectors register");
        let node = &self.collectors[collector];
        let accepting = node
            .life
            .as_ref()
            .is_some_and(|life| life.stopping.is_none());
        let alive = node.life.is_some();
        let incarnation = node.incarnation;
        self.links.insert(
            link,
            Link {
                exporter,
                exporter_incarnation: self.exporters[exporter].incarnation,
                association,
                collector,
                collector_incarnation: incarnation,
                up: false,
                exporter_open: true,
                collector_open: false,
                dead_from: None,
                last_to_collector: self.now,
                last_to_exporter: self.now,
            },
        );
        self.exporters[exporter].links.insert(association, link);
        // INIT, INIT ACK, COOKIE ECHO, COOKIE ACK: two round trips.
        let handshake = self.latency() * 4;
        let blocked = self
            .partitioned_until(exporter, collector, self.now)
            .is_some()
            || self
                .partitioned_until(exporter, collector, self.now + handshake)
                .is_some();
        if accepting && !blocked {
            self.schedule(self.now + handshake, Event::LinkUp(link));
        } else if alive && !blocked {
            // A stopping collector answers INIT with ABORT.
            self.schedule(self.now + handshake / 2, Event::EndAtExporter(link));
        } else {
            let timeout = self.scenario.network.connect_timeout;
            self.schedule(self.now + timeout, Event::EndAtExporter(link));
        }
    }

    fn link_up(&mut self, link_id: LinkId) {
        let Some(link) = self.links.get(&link_id) else {
            return;
        };
        let (exporter, collector) = (link.exporter, link.collector);
        let node = &self.collectors[collector];
        let accepting = node.incarnation == link.collector_incarnation
            && node
                .life
                .as_ref()
                .is_some_and(|life| life.stopping.is_none());
        let exporter_alive =
            self.exporters[exporter].incarnation == link.exporter_incarnation && link.exporter_open;
        if !exporter_alive {
            return;
        }
        if !accepting {
            // The collector died during the handshake.
            let timeout = self.scenario.network.connect_timeout;
            self.schedule(self.now + timeout, Event::EndAtExporter(link_id));
            return;
        }
        let signer = node.life.as_ref().expect("accepting").signer.clone();
        let session = CollectorSession::new(
            format!("192.0.2.{}:{}", exporter + 1, 40_000 + link_id),
            SessionConfig::new(TransportKind::Sctp),
            Some(signer),
        );
        let life = self.collectors[collector].life.as_mut().expect("accepting");
        life.sessions.insert(link_id, session);
        let link = self.links.get_mut(&link_id).expect("checked");
        link.up = true;
        link.collector_open = true;
        let association = link.association;
        self.log(format!(
            "association {link_id}: exporter {exporter} (#{association}) up with collector {collector}"
        ));
        let now = self.instant();
        if let Some(core) = &mut self.exporters[exporter].core {
            core.handle_association_up(now, association);
        }
    }

    /// Sends one message on an association: SCTP delivers it in order,
    /// after its latency, retransmissions and any partition; too many
    /// retransmissions fail the association.
    fn transmit(
        &mut self,
        link_id: LinkId,
        to_collector: bool,
        ppid: u32,
        stream: u16,
        payload: Vec<u8>,
    ) {
        let Some(link) = self.links.get(&link_id) else {
            return;
        };
        if !link.up || link.dead_from.is_some_and(|dead| dead <= self.now) {
            return;
        }
        let (exporter, collector) = (link.exporter, link.collector);
        let network = self.scenario.network;
        let mut at = self.now + self.latency();
        let mut rto = network.rto;
        let mut retransmissions = 0;
        while network.loss > 0.0 && self.rng.random_bool(network.loss) {
            retransmissions += 1;
            if retransmissions > network.max_retransmissions {
                self.log(format!("association {link_id}: retransmissions exhausted"));
                self.fail_link(link_id, at);
                return;
            }
            at += rto;
            rto = (rto * 2).min(Duration::from_secs(1));
        }
        // A partition holds the message (retransmitted) until it ends.
        while let Some(until) = self.partitioned_until(exporter, collector, at) {
            at = until + self.latency();
        }
        let link = self.links.get_mut(&link_id).expect("checked");
        let last = if to_collector {
            &mut link.last_to_collector
        } else {
            &mut link.last_to_exporter
        };
        at = at.max(*last);
        *last = at;
        self.schedule(
            at,
            Event::Deliver {
                link: link_id,
                to_collector,
                ppid,
                stream,
                payload,
            },
        );
    }

    fn deliver(
        &mut self,
        link_id: LinkId,
        to_collector: bool,
        ppid: u32,
        stream: u16,
        payload: &[u8],
    ) -> Result<(), String> {
        let Some(link) = self.links.get(&link_id) else {
            return Ok(());
        };
        if link.dead_from.is_some_and(|dead| dead <= self.now) {
            return Ok(());
        }
        if to_collector {
            if !link.collector_open {
                return Ok(());
            }
            let collector = link.collector;
            let session_now = self.session_now();
            let Some(life) = &mut self.collectors[collector].life else {
                return Ok(());
            };
            let Some(session) = life.sessions.get_mut(&link_id) else {
                return Ok(());
            };
            if !session.is_receiving() {
                return Ok(()); // The driver stopped reading.
            }
            let outputs = if ppid == ASAP_SCTP_PPID {
                let ledger = life.store.ledger();
                let ledger = ledger.lock().expect("ledger lock");
                session.handle(
                    session_now,
                    Input::Asap {
                        payload,
                        ledger: Some(&ledger),
                    },
                )
            } else {
                session.handle(session_now, Input::Message { stream, payload })
            };
            self.perform_session(collector, link_id, outputs)
        } else {
            if !link.exporter_open {
                return Ok(());
            }
            let (exporter, association) = (link.exporter, link.association);
            let now = self.instant();
            if let Some(core) = &mut self.exporters[exporter].core {
                core.handle_message(now, association, ppid, payload);
            }
            Ok(())
        }
    }

    fn end_at_exporter(&mut self, link_id: LinkId) {
        let Some(link) = self.links.get_mut(&link_id) else {
            return;
        };
        if !link.exporter_open {
            return;
        }
        link.exporter_open = false;
        let (exporter, association, incarnation) =
            (link.exporter, link.association, link.exporter_incarnation);
        self.forget_if_closed(link_id);
        if self.exporters[exporter].incarnation != incarnation {
            return;
        }
        self.exporters[exporter].links.remove(&association);
        self.log(format!(
            "association {link_id}: ended at exporter {exporter}"
        ));
        let now = self.instant();
        if let Some(core) = &mut self.exporters[exporter].core {
            core.handle_association_ended(now, association);
        }
    }

    fn end_at_collector(&mut self, link_id: LinkId) -> Result<(), String> {
        let Some(link) = self.links.get_mut(&link_id) else {
            return Ok(());
        };
        if !link.collector_open {
            return Ok(());
        }
        link.collector_open = false;
        let (collector, incarnation) = (link.collector, link.collector_incarnation);
        self.forget_if_closed(link_id);
        if self.collectors[collector].incarnation != incarnation {
            return Ok(());
        }
        self.log(format!(
            "association {link_id}: ended at collector {collector}"
        ));
        self.end_session(collector, link_id);
        self.maybe_stopped(collector)
    }

    /// The session is over: what it still held goes to the writer.
    fn end_session(&mut self, collector: usize, link_id: LinkId) {
        let Some(life) = &mut self.collectors[collector].life else {
            return;
        };
        if let Some(mut session) = life.sessions.remove(&link_id)
            && let Some(batch) = session.finish()
        {
            self.store_batch(collector, batch);
        }
    }

    fn forget_if_closed(&mut self, link_id: LinkId) {
        if self
            .links
            .get(&link_id)
            .is_some_and(|l| !l.exporter_open && !l.collector_open)
        {
            self.links.remove(&link_id);
        }
    }

    /// The exporter closes gracefully: what it sent is still delivered,
    /// then the collector's end learns of the SHUTDOWN.
    fn close_from_exporter(&mut self, link_id: LinkId) {
        let latency = self.latency();
        let Some(link) = self.links.get_mut(&link_id) else {
            return;
        };
        let (exporter, association) = (link.exporter, link.association);
        link.exporter_open = false;
        if link.up && link.dead_from.is_none() {
            let at = link.last_to_collector.max(self.now) + latency;
            link.dead_from = Some(at + Duration::from_micros(1));
            if link.collector_open {
                self.schedule(at, Event::EndAtCollector(link_id));
            }
        } else if !link.up {
            link.dead_from = Some(self.now);
        }
        self.exporters[exporter].links.remove(&association);
        self.forget_if_closed(link_id);
    }

    /// The collector closes gracefully: its cookies in flight still
    /// arrive, then the exporter's end learns of the SHUTDOWN; what the
    /// exporter sends meanwhile is not read any more.
    fn close_from_collector(&mut self, collector: usize, link_id: LinkId) {
        self.end_session(collector, link_id);
        let latency = self.latency();
        let Some(link) = self.links.get_mut(&link_id) else {
            return;
        };
        link.collector_open = false;
        if link.exporter_open && link.dead_from.is_none() {
            let at = link.last_to_exporter.max(self.now) + latency;
            link.dead_from = Some(at + Duration::from_micros(1));
            self.schedule(at, Event::EndAtExporter(link_id));
        }
        self.forget_if_closed(link_id);
    }

    // ---- collectors ----------------------------------------------------

    fn perform_session(
        &mut self,
        collector: usize,
        link_id: LinkId,
        mut outputs: Vec<SessionOutput>,
    ) -> Result<(), String> {
        canonical_cookie_order(&mut outputs);
        for output in outputs {
            match output {
                SessionOutput::Store(batch) => self.store_batch(collector, batch),
                SessionOutput::SendCookie(bytes) => {
                    self.transmit(link_id, false, ASAP_SCTP_PPID, 0, bytes);
                }
                SessionOutput::Close(reason) => {
                    self.log(format!(
                        "association {link_id}: collector {collector} closes: {reason}"
                    ));
                    self.close_from_collector(collector, link_id);
                    return self.maybe_stopped(collector);
                }
                SessionOutput::Event(SessionEvent::CookieRefused { reason, error }) => {
                    self.stats.echoes_refused += 1;
                    self.log(format!(
                        "association {link_id}: collector {collector} refused the echo ({reason}): {error}"
                    ));
                }
                SessionOutput::Event(SessionEvent::HandedOver(handover)) => {
                    self.log(format!(
                        "association {link_id}: collector {collector} took exporter {} domain {} from {:?} at {:?}",
                        handover.exporter_id, handover.domain, handover.from_pe, handover.record_sequence
                    ));
                }
                SessionOutput::Event(_) => {}
            }
        }
        Ok(())
    }

    fn store_batch(&mut self, collector: usize, batch: Batch) {
        let latency = self.scenario.network.commit_latency;
        let node = &mut self.collectors[collector];
        let incarnation = node.incarnation;
        let Some(life) = &mut node.life else {
            return;
        };
        life.pending.push(batch);
        if !life.commit_scheduled {
            life.commit_scheduled = true;
            self.schedule(
                self.now + latency,
                Event::Commit {
                    collector,
                    incarnation,
                },
            );
        }
    }

    /// The writer commits every pending batch in one transaction, then
    /// every session owed cookies hears of it.
    fn commit(&mut self, collector: usize, incarnation: u32) -> Result<(), String> {
        let unix_ms = self.unix_ms() as i64;
        let session_now = self.session_now();
        let node = &mut self.collectors[collector];
        if node.incarnation != incarnation {
            return Ok(());
        }
        let Some(life) = &mut node.life else {
            return Ok(());
        };
        if life.stalled_until > self.now {
            // The transaction is under way; it completes when the disk
            // answers again.
            let at = life.stalled_until;
            self.schedule(
                at,
                Event::Commit {
                    collector,
                    incarnation,
                },
            );
            return Ok(());
        }
        life.commit_scheduled = false;
        let batches = std::mem::take(&mut life.pending);
        life.store
            .commit(&batches, unix_ms)
            .map_err(|e| format!("collector {collector}: commit failed: {e:#}"))?;
        self.stats.commits += 1;
        let ledger = life.store.ledger();
        let ledger = ledger.lock().expect("ledger lock");
        let mut all = Vec::new();
        for (&link, session) in &mut life.sessions {
            if session.wants_commits() {
                all.push((
                    link,
                    session.handle(session_now, Input::Committed { ledger: &ledger }),
                ));
            }
        }
        drop(ledger);
        for (link, outputs) in all {
            self.perform_session(collector, link, outputs)?;
        }
        self.maybe_stopped(collector)
    }

    // ---- exporters -----------------------------------------------------

    fn drain_outputs(&mut self) -> Result<(), String> {
        for exporter in 0..self.exporters.len() {
            loop {
                let now = self.instant();
                let node = &mut self.exporters[exporter];
                let Some(core) = &mut node.core else {
                    break;
                };
                node.spill.perform(core);
                let Some(output) = core.poll_output(now) else {
                    break;
                };
                self.perform_exporter(exporter, output);
            }
        }
        Ok(())
    }

    fn perform_exporter(&mut self, exporter: usize, output: Output) {
        match output {
            Output::Select => self.ask_registrar(exporter, Some(Request::Select), resolution()),
            Output::ReportUnreachable { pe_id } => {
                self.log(format!(
                    "exporter {exporter}: reports {pe_id:#x} unreachable"
                ));
                let report = AsapMessage::EndpointUnreachable {
                    pool_handle: PoolHandle(POOL_HANDLE.to_vec()),
                    pe_identifier: pe_id,
                };
                self.ask_registrar(exporter, None, report);
            }
            Output::Connect { association, pe } => {
                self.log(format!(
                    "exporter {exporter}: connect #{association} to {:#x}",
                    pe.pe_id
                ));
                self.connect(exporter, association, pe.pe_id);
            }
            Output::Send {
                association,
                stream,
                ppid,
                payload,
                ..
            } => {
                if let Some(&link) = self.exporters[exporter].links.get(&association) {
                    self.transmit(link, true, ppid, stream, payload.to_vec());
                }
            }
            Output::Close { association } => {
                if let Some(&link) = self.exporters[exporter].links.get(&association) {
                    self.close_from_exporter(link);
                }
            }
            Output::CheckFailback { current, avoid } => self.ask_registrar(
                exporter,
                Some(Request::Failback { current, avoid }),
                resolution(),
            ),
            Output::PersistState(state) => self.exporters[exporter].durable = state,
            Output::Notice(notice) => {
                let line = match &notice {
                    Notice::FailoverStarted { pe_id, cause } => {
                        format!("failover from {pe_id:#x} ({})", cause.label())
                    }
                    Notice::DrainStarted { from, to } => {
                        format!("failback: draining {from:#x} for {to:#x}")
                    }
                    other => format!("{other:?}"),
                };
                self.log(format!("exporter {exporter}: {line}"));
            }
        }
    }

    /// Checked after every step: cookies never go back, and the counters
    /// only grow.
    fn check_invariants(&mut self) -> Result<(), String> {
        for (index, node) in self.exporters.iter_mut().enumerate() {
            let Some(core) = &node.core else {
                continue;
            };
            for &domain in &self.scenario.domains {
                if let Some(cookie) = core.cookie(domain).filter(|c| !c.introduction) {
                    let high = node.cookie_high.entry(domain).or_insert(0);
                    if cookie.next_record_sequence() < *high {
                        return Err(format!(
                            "exporter {index} domain {domain}: cookie went back from {} to {}",
                            *high,
                            cookie.next_record_sequence()
                        ));
                    }
                    *high = cookie.next_record_sequence();
                    if cookie.next_record_sequence() > core.next_sequence(domain) {
                        return Err(format!(
                            "exporter {index} domain {domain}: cookie covers {} but only {} were numbered",
                            cookie.last_record_sequence,
                            core.next_sequence(domain)
                        ));
                    }
                }
            }
            let counters = core.counters();
            // Every collector here is honest: a refused cookie is a bug in
            // one of the two cores.
            if counters.cookies_rejected > 0 {
                return Err(format!(
                    "exporter {index} refused {} cookie(s) of honest collectors",
                    counters.cookies_rejected
                ));
            }
            if counters.failovers > node.counted_failovers {
                self.stats.failovers += counters.failovers - node.counted_failovers;
                node.counted_failovers = counters.failovers;
            }
            if counters.failbacks > node.counted_failbacks {
                self.stats.failbacks += counters.failbacks - node.counted_failbacks;
                node.counted_failbacks = counters.failbacks;
            }
        }
        Ok(())
    }
}

/// The session issues one cookie per domain in the order of a `HashMap`,
/// which differs from process to process; each send draws its latency
/// from the run's generator, so that order would make a seed's run depend
/// on the process. Cookies of different domains are independent: runs of
/// consecutive cookies are put in byte order.
fn canonical_cookie_order(outputs: &mut [SessionOutput]) {
    for run in outputs.chunk_by_mut(|a, b| {
        matches!(a, SessionOutput::SendCookie(_)) && matches!(b, SessionOutput::SendCookie(_))
    }) {
        run.sort_by(|a, b| match (a, b) {
            (SessionOutput::SendCookie(a), SessionOutput::SendCookie(b)) => a.cmp(b),
            _ => std::cmp::Ordering::Equal,
        });
    }
}

/// Collector `index`'s Ed25519 cookie key (fixed per index: a restarted
/// collector signs with the same key).
fn collector_key(index: usize) -> SigningKey {
    SigningKey::from_bytes(&[0x40 + index as u8; 32])
}

/// The public halves of every collector's key: what exporters check
/// cookies with and collectors check Cookie Echoes with.
fn pool_public_keys(collectors: usize) -> CookieKeys {
    let mut keys = CookieKeys::default();
    for index in 0..collectors {
        keys.add_public_key(collector_key(index).verifying_key());
    }
    keys
}

/// How collector `index` signs cookies: its own Ed25519 key (version 2),
/// or the pool's HMAC key (version 1).
fn cookie_signer(signed: bool, index: usize, collectors: usize) -> CookieSigner {
    if signed {
        CookieSigner::ed25519(
            collector_key(index),
            pool_public_keys(collectors),
            FIRST_PE_ID + index as u32,
        )
    } else {
        CookieSigner::hmac(POOL_KEY.to_vec(), FIRST_PE_ID + index as u32)
    }
}

/// A Handle Resolution of the pool asking for every PE (the exporter
/// selects locally and must see the primary for failback).
fn resolution() -> AsapMessage {
    AsapMessage::HandleResolution {
        pool_handle: PoolHandle(POOL_HANDLE.to_vec()),
        items: Some(u32::MAX),
    }
}

/// Where a simulated node's ASAP endpoint is (the registrar checks
/// registrations against the association's address).
fn address_of(peer: AsapPeer) -> SocketAddr {
    match peer {
        AsapPeer::Collector { index, .. } => {
            SocketAddr::new(collector_ip(FIRST_PE_ID + index as u32), 3863)
        }
        AsapPeer::Exporter { index, .. } => {
            SocketAddr::new(IpAddr::from([192, 0, 2, 1 + index as u8]), 3863)
        }
    }
}

fn collector_ip(pe_id: u32) -> IpAddr {
    IpAddr::from([192, 0, 2, 100 + (pe_id & 0x3f) as u8])
}

/// How a collector registers: SCTP user transport, Priority policy.
fn pool_element(pe_id: u32, priority: u32) -> PoolElementInfo {
    PoolElementInfo {
        pe_id,
        user_transport: TransportAddress {
            kind: AsapTransport::Sctp(TransportUse::DataPlusControl),
            port: 4739,
            addresses: vec![collector_ip(pe_id)],
        },
        policy: PolicyParams::Priority { priority },
        registration_life: 30_000,
        home_registrar_id: 1,
    }
}
