//! The tokio driver of the pool user core ([`crate::pool_user::Exporter`]):
//! one task owns the core and carries out its outputs; the ASAP pool user
//! (`asap_client::PoolUserClient`), each data association's reader and the
//! record input feed it through channels. Everything that can wait (ASAP
//! requests, connects) runs in its own task, so cookies keep flowing while a
//! registrar is slow. A send that finds the association's buffer full is
//! never awaited in place: the driver parks it ([`BlockedSend`]) and waits
//! for room beside its events and the core's timers, so a collector whose
//! transport acknowledges but whose pipeline stopped reading is still left
//! at the cookie timeout.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use asap_client::clock::{self, sleep_until};
use asap_client::pool_user::PoolUserConfig;
use asap_client::{
    AnnounceListenConfig, PoolElementInfo, PoolUserClient, PoolUserDriverConfig, RegistrarAddress,
};
use bytes::Bytes;
use protocol::ipfix::Template;
use protocol::rserpool::PoolHandle;
use protocol::rserpool::params::TransportKind as AsapTransportKind;
use tokio::sync::mpsc;
use transport::{AssociationSender, Event, TransportError, TransportKind};

use crate::journal::{DurableIntake, DurableSettings};
use crate::pool_user::{
    AssociationId, Counters, Exporter, ExporterConfig, Notice, Output, RecordError,
};
use crate::record_queue::RecordReceiver;
use crate::replay::{BufferedRecord, RecordBytes, SpillRequest};
use crate::spill::SpillStore;
use crate::state_file::StateFile;

/// Least time between two reports of transport progress on the loop's turns
/// (liveness needs no finer grain than a fraction of a cookie timeout; a
/// `getsockopt` per turn cost a tenth of the framed-TCP stream rate).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(5);

/// PEs asked for per selection: the policy's ranking, best first.
const SELECT_CANDIDATES: usize = 16;

/// One record for the exporter.
#[derive(Debug, Clone)]
pub struct InputRecord {
    /// Observation domain.
    pub domain: u32,
    /// Template the bytes are encoded for (announced in `templates`).
    pub template_id: u16,
    /// The encoded data record.
    pub bytes: RecordBytes,
    /// Billing (numbered, acknowledged, replayed) or best effort.
    pub class: RecordClass,
}

/// How a record travels to the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecordClass {
    /// A billing record: record sequence, replay buffer, cookies, replayed
    /// after a failover; never lost.
    #[default]
    Billing,
    /// A record nobody bills from (e.g. monitoring-only flows): sent with
    /// PR-SCTP on its own stream, neither acknowledged nor replayed; lost
    /// when the collector fails or the lifetime runs out.
    BestEffort,
}

/// Templates an input learns at run time (the relay: routers' templates as
/// they arrive). Before the core takes a record whose template it does not
/// know, [`run_with_templates`] asks here; the input must make a template
/// available before it sends records that use it.
pub trait TemplateSource: Send + Sync {
    /// The template with this id, if the input defined one.
    fn template(&self, template_id: u16) -> Option<Template>;
}

/// Everything [`run`] needs.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// The core.
    pub exporter: ExporterConfig,
    /// Templates of the input's records, sent on every association.
    pub templates: Vec<Template>,
    /// Pool to resolve.
    pub pool_handle: PoolHandle,
    /// Static registrar list.
    pub registrars: Vec<RegistrarAddress>,
    /// Also learn registrars from Server Announces.
    pub announce_listen: Option<AnnounceListenConfig>,
    /// The state file.
    pub state_file: StateFile,
    /// Transport timers for data and registrar associations (kind and
    /// port are set per peer).
    pub transport: transport::Config,
    /// TLS on every data connection (framed TCP); never on the registrar
    /// associations, which `transport` also configures.
    pub data_tls: Option<transport::tls::StreamTls>,
    /// UDP GSO on the data associations (SCTP over UDP) to the collectors,
    /// never on the registrar associations (an RSPLIB registrar's sctplib
    /// cannot split a batch).
    pub data_udp_segmentation_offload: bool,
    /// PU cache lifetime.
    pub cache_lifetime: Duration,
    /// T1-ENRPrequest.
    pub registrar_request_timeout: Duration,
    /// After the input ended: longest wait for the last cookies.
    pub exit_drain_timeout: Duration,
    /// Durable intake (`[buffer] durable`): records are journaled and
    /// fsynced before the core takes them.
    pub durable: Option<DurableSettings>,
}

/// What a finished [`run`] did.
#[derive(Debug, Clone, Copy)]
pub struct StreamReport {
    /// Records taken from the input.
    pub records_in: u64,
    /// Core counters.
    pub counters: Counters,
    /// Every record was covered by a cookie at exit.
    pub drained: bool,
    /// Run time.
    pub elapsed: Duration,
}

/// Progress line material, for the caller's printing.
#[derive(Debug, Clone)]
pub enum Progress {
    /// Periodic.
    Status {
        /// Records taken from the input.
        records_in: u64,
        /// Records sent (replays included).
        records_sent: u64,
        /// Records not yet covered by a cookie.
        buffered: u64,
        /// PE in use.
        pe: Option<u32>,
    },
    /// A notice of the core (failover, failback, ...).
    Notice(Notice),
}

enum DriverEvent {
    Selected(Result<Vec<PoolElementInfo>, String>),
    FailbackCheck(Option<PoolElementInfo>),
    Up(AssociationId, AssociationSender),
    Message(AssociationId, u32, Bytes),
    Ended(AssociationId),
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Streams the input to the pool until it ends (and its records are covered
/// by cookies, or `exit_drain_timeout` passed) or `shutdown` resolves. The
/// state file is written on the way out.
pub async fn run(
    settings: StreamSettings,
    input: RecordReceiver,
    shutdown: impl Future<Output = ()>,
    progress: impl FnMut(Progress),
) -> anyhow::Result<StreamReport> {
    run_with_templates(settings, None, input, shutdown, progress).await
}

/// [`run`], for input whose templates are not all known at the start:
/// `learned` supplies the templates beyond `settings.templates`.
pub async fn run_with_templates(
    settings: StreamSettings,
    learned: Option<&dyn TemplateSource>,
    mut input: RecordReceiver,
    shutdown: impl Future<Output = ()>,
    mut progress: impl FnMut(Progress),
) -> anyhow::Result<StreamReport> {
    let started = clock::now();
    let mut pu_config = PoolUserConfig::new(settings.registrars.len());
    pu_config.cache_lifetime = settings.cache_lifetime;
    pu_config.request_timeout = settings.registrar_request_timeout;
    pu_config.connect_timeout = settings.transport.connect_timeout;
    let client = PoolUserClient::new(PoolUserDriverConfig {
        pool_user: pu_config,
        registrars: settings.registrars.clone(),
        transport: settings.transport.clone(),
        announce_listen: settings.announce_listen.clone(),
    })?;
    let mut state = settings.state_file.load(settings.exporter.exporter_id)?;
    let (mut durable, mut restored) = match &settings.durable {
        Some(durable) => {
            let (intake, pending) = DurableIntake::open(
                durable.clone(),
                settings.exporter.replay.spill_dir.as_deref(),
                &mut state,
            )
            .with_context(|| format!("opening the intake journal in {}", durable.dir.display()))?;
            if !pending.is_empty() {
                tracing::info!(
                    records = pending.len(),
                    "durable intake: replaying journaled records no cookie covered"
                );
            }
            (Some(intake), std::collections::VecDeque::from(pending))
        }
        None => (None, std::collections::VecDeque::new()),
    };
    log_cookie_trust(&settings.exporter);
    // What the state file holds: the journal is released only through its
    // cookies (`DurableIntake::release_persisted`).
    let mut persisted = state.clone();
    let (mut spill, recovered_spill) = match &settings.exporter.replay.spill_dir {
        Some(dir) => {
            let (store, recovered) =
                SpillStore::open(dir, settings.exporter.replay.segment_records)
                    .with_context(|| format!("opening the replay spill in {}", dir.display()))?;
            (Some(store), recovered)
        }
        None => (None, BTreeMap::new()),
    };
    let mut core = Exporter::new(
        settings.exporter.clone(),
        state,
        settings.templates.clone(),
        clock::now(),
        unix_ms(),
        recovered_spill,
    );
    perform_spill_requests(&mut core, &mut spill)?;
    core.start();

    let (events_tx, mut events) = mpsc::channel::<DriverEvent>(1024);
    let mut driver = Driver {
        settings: &settings,
        client,
        events_tx,
        sender: None,
        blocked: None,
    };
    let mut shutdown = std::pin::pin!(shutdown);
    // Records of a received batch the core has not taken yet, in order.
    let mut held: VecDeque<InputRecord> = VecDeque::new();
    let mut records_in = 0u64;
    let mut input_done = false;
    let mut input_done_at: Option<Instant> = None;
    let mut next_status = clock::now() + Duration::from_secs(1);
    let mut interrupted = false;
    let mut final_statistics = false;
    let mut progress_reported = clock::now();

    loop {
        // Durable intake, group commit: whatever was journaled since the
        // last pass is synced before the outputs can send any of it.
        if let Some(intake) = &mut durable {
            intake.sync().context("syncing the intake journal")?;
        }
        // Every record counted here is in the core (and, with durable
        // intake, synced in the journal just now): a crash from here on
        // loses none of them.
        metrics::counter!("poolflow_exporter_records_taken_in_total").absolute(records_in);
        // A send waiting for room on an association the core has left
        // (failover, failback) is dropped: what it carried is replayed.
        if driver
            .blocked
            .as_ref()
            .is_some_and(|b| core.sending_association() != Some(b.association))
        {
            driver.blocked = None;
        }
        // The spill's turn comes first: it never waits for the network.
        perform_spill_requests(&mut core, &mut spill)?;
        // Outputs are carried out in order, so none after a blocked send.
        while driver.blocked.is_none()
            && let Some(output) = core.poll_output(clock::now())
        {
            let written = match &output {
                Output::PersistState(state) => Some(state.clone()),
                _ => None,
            };
            driver.execute(output, &mut progress).await?;
            if let Some(state) = written {
                persisted = state;
            }
        }
        publish_metrics(&core);
        let now = clock::now();
        if now >= next_status {
            next_status = now + Duration::from_secs(1);
            progress(Progress::Status {
                records_in,
                records_sent: core.counters().records_sent,
                buffered: core.buffered_records(),
                pe: core.current_pe(),
            });
        }
        if input_done && held.is_empty() {
            // Best-effort records still queued go out first (they are
            // never acknowledged, so only their sending is waited for).
            if core.is_drained() && core.best_effort_queued() == 0 {
                // The exporter's final account goes out before the
                // association closes (gracefully: queued messages still go).
                if !final_statistics {
                    final_statistics = true;
                    core.queue_statistics(now);
                    continue;
                }
                break;
            }
            let done_at = *input_done_at.get_or_insert(now);
            if now >= done_at + settings.exit_drain_timeout {
                tracing::warn!(
                    buffered = core.buffered_records(),
                    "exit: records still not covered by a cookie"
                );
                break;
            }
        }
        // Journaled records of a previous run go first, with their own
        // sequences (durable intake).
        while let Some((domain, _)) = restored.front()
            && core.can_accept(*domain)
        {
            let (domain, record) = restored.pop_front().expect("front exists");
            restore(&mut core, domain, record)?;
        }
        if let Some(intake) = &mut durable {
            intake.release_persisted(&persisted)?;
        }
        // Back-pressure: records the core refused are retried before any
        // new one is read.
        if restored.is_empty() {
            records_in += take_held(&mut held, &mut core, &mut durable, learned)?;
        }
        let now = clock::now();
        if now.duration_since(progress_reported) >= PROGRESS_INTERVAL {
            progress_reported = now;
            report_transport_progress(&driver.sender, &mut core, now);
        }
        let wake = [
            core.poll_timeout(),
            Some(next_status),
            input_done_at.map(|at| at + settings.exit_drain_timeout),
        ]
        .into_iter()
        .flatten()
        .min();
        tokio::select! {
            biased;
            () = &mut shutdown, if !interrupted => {
                interrupted = true;
                break;
            }
            result = finish_blocked_send(&mut driver.blocked) => {
                if let Err(error) = result {
                    // The reader reports the association's end.
                    tracing::debug!(%error, "send failed");
                }
            }
            event = events.recv() => {
                let Some(event) = event else { continue };
                let now = clock::now();
                match event {
                    DriverEvent::Selected(result) => core.handle_selected(now, result),
                    DriverEvent::FailbackCheck(target) => core.handle_failback_check(now, target),
                    DriverEvent::Up(association, sender) => {
                        if core.connecting_association() == Some(association) {
                            driver.sender = Some((association, sender));
                            core.handle_association_up(now, association);
                        } else {
                            sender.close(); // The core gave up on it.
                        }
                    }
                    DriverEvent::Message(association, ppid, payload) => {
                        core.handle_message(now, association, ppid, &payload);
                    }
                    DriverEvent::Ended(association) => {
                        if driver.sender.as_ref().is_some_and(|(a, _)| *a == association) {
                            driver.sender = None;
                        }
                        core.handle_association_ended(now, association);
                    }
                }
            }
            batch = input.recv(), if !input_done && held.is_empty() && restored.is_empty() => {
                match batch {
                    Some(batch) => {
                        // Take what is already queued in one go, up to
                        // INPUT_TURN records, then let the output loop run.
                        held.extend(batch);
                        let mut taken = take_held(&mut held, &mut core, &mut durable, learned)?;
                        while held.is_empty()
                            && taken < INPUT_TURN as u64
                            && let Some(batch) = input.try_recv()
                        {
                            held.extend(batch);
                            taken += take_held(&mut held, &mut core, &mut durable, learned)?;
                        }
                        records_in += taken;
                    }
                    None => input_done = true,
                }
            }
            () = sleep_until(wake) => {
                let now = clock::now();
                // Before the cookie deadline is judged.
                report_transport_progress(&driver.sender, &mut core, now);
                core.handle_timeout(now)
            }
        }
    }

    if let Some((_, sender)) = driver.sender.take() {
        sender.close();
    }
    let drained = core.is_drained();
    perform_spill_requests(&mut core, &mut spill)?;
    let state = core.shutdown_state();
    perform_spill_requests(&mut core, &mut spill).context("saving the replay buffer")?;
    settings
        .state_file
        .store(&state)
        .with_context(|| format!("writing {}", settings.state_file.path().display()))?;
    publish_metrics(&core);
    if interrupted {
        tracing::info!("interrupted; state saved");
    }
    Ok(StreamReport {
        records_in,
        counters: core.counters(),
        drained,
        elapsed: clock::now().saturating_duration_since(started),
    })
}

/// Most input records taken between two turns of the output loop: enough
/// to amortise a turn, few enough that sending keeps pace.
const INPUT_TURN: usize = 1024;

/// Hands the core the held records it accepts, in order, at most
/// [`INPUT_TURN`]; stops at the first it refuses (back-pressure: it stays
/// held). Returns how many it took.
fn take_held(
    held: &mut VecDeque<InputRecord>,
    core: &mut Exporter,
    durable: &mut Option<DurableIntake>,
    learned: Option<&dyn TemplateSource>,
) -> anyhow::Result<u64> {
    let mut taken = 0;
    while taken < INPUT_TURN && held.front().is_some_and(|record| accepts(core, record)) {
        let record = held.pop_front().expect("front exists");
        journal(durable, core, &record)?;
        push(core, learned, record)?;
        taken += 1;
    }
    Ok(taken as u64)
}

/// Whether the core takes this record now: best-effort records are never
/// held back (a full queue drops its oldest), billing records wait for
/// room in the replay buffer (back-pressure).
fn accepts(core: &Exporter, record: &InputRecord) -> bool {
    record.class == RecordClass::BestEffort || core.can_accept(record.domain)
}

/// Durable intake: journals a billing record under the sequence the core
/// will give it (the driver is the only one that pushes, so that is the
/// domain's next sequence). It counts once the batch is synced.
fn journal(
    durable: &mut Option<DurableIntake>,
    core: &Exporter,
    record: &InputRecord,
) -> anyhow::Result<()> {
    let Some(intake) = durable else {
        return Ok(());
    };
    if record.class == RecordClass::BestEffort {
        return Ok(()); // Never replayed, so never journaled.
    }
    intake
        .append(
            record.domain,
            &BufferedRecord {
                sequence: core.next_sequence(record.domain),
                template_id: record.template_id,
                bytes: record.bytes.clone(),
            },
        )
        .context("writing the intake journal")
}

/// Hands a journaled record of a previous run back to the core, which must
/// give it the same sequence (the state was set to continue there).
fn restore(core: &mut Exporter, domain: u32, record: BufferedRecord) -> anyhow::Result<()> {
    let expected = record.sequence;
    match core.push_record(domain, record.template_id, record.bytes) {
        Ok(sequence) if sequence == expected => Ok(()),
        Ok(sequence) => Err(anyhow!(
            "intake journal of domain {domain}: record {expected} was given sequence {sequence}"
        )),
        Err(RecordError::Full) => Err(anyhow!("replay buffer full after can_accept")),
    }
}

/// Performs the core's requests of the replay spill, in order (there are
/// none without a spill). A read that fails is logged and answered empty:
/// the records stay in the spill and are asked for again after the next
/// cookie. A write that fails stops the stream, as a full disk must.
fn perform_spill_requests(
    core: &mut Exporter,
    spill: &mut Option<SpillStore>,
) -> anyhow::Result<()> {
    while let Some(request) = core.poll_spill() {
        let Some(store) = spill.as_mut() else {
            return Err(anyhow!(
                "the core asked for a replay spill none is configured"
            ));
        };
        let read_domain = match &request {
            SpillRequest::Read { domain, .. } => Some(*domain),
            _ => None,
        };
        match (store.perform(request), read_domain) {
            (Ok(Some(records)), Some(domain)) => core.handle_unspilled(domain, records),
            (Ok(_), _) => {}
            (Err(error), Some(domain)) => {
                tracing::error!(%error, domain, "replay spill read failed; asked again after the next cookie");
                core.handle_unspilled(domain, Vec::new());
            }
            (Err(error), None) => return Err(error).context("writing the replay spill"),
        }
    }
    Ok(())
}

/// Hands a record the core said it can take to it.
fn push(
    core: &mut Exporter,
    learned: Option<&dyn TemplateSource>,
    record: InputRecord,
) -> anyhow::Result<()> {
    if let Some(source) = learned
        && !core.has_template(record.template_id)
    {
        match source.template(record.template_id) {
            Some(template) => core.add_template(template),
            // The input broke its promise; the collector will count the
            // records as of an unknown template.
            None => tracing::error!(
                template_id = record.template_id,
                "record of a template the input never defined"
            ),
        }
    }
    if record.class == RecordClass::BestEffort {
        core.push_best_effort(record.domain, record.template_id, record.bytes);
        return Ok(());
    }
    match core.push_record(record.domain, record.template_id, record.bytes) {
        Ok(_) => Ok(()),
        // `can_accept` said yes; a full buffer here is a bug, not input.
        Err(RecordError::Full) => Err(anyhow!("replay buffer full after can_accept")),
    }
}

/// Tells the core how much of our data the collector has acknowledged
/// (transport liveness: a collector that reads is alive, however slowly it
/// commits). SCTP over UDP: an atomic load; plain TCP: a `getsockopt`, so
/// the loop asks at most every [`PROGRESS_INTERVAL`] (and always before the
/// cookie deadline is judged).
fn report_transport_progress(
    sender: &Option<(AssociationId, AssociationSender)>,
    core: &mut Exporter,
    now: Instant,
) {
    if let Some((association, sender)) = sender
        && let Some(acknowledged) = sender.acknowledged_messages()
    {
        core.handle_transport_progress(now, *association, acknowledged);
    }
}

fn publish_metrics(core: &Exporter) {
    let counters = core.counters();
    metrics::counter!("poolflow_exporter_failovers_total").absolute(counters.failovers);
    metrics::counter!("poolflow_exporter_protocol_failovers_total")
        .absolute(counters.protocol_failovers);
    metrics::counter!("poolflow_exporter_failbacks_total").absolute(counters.failbacks);
    metrics::counter!("poolflow_exporter_cookie_waits_extended_total")
        .absolute(counters.cookie_waits_extended);
    metrics::counter!("poolflow_exporter_records_sent_total").absolute(counters.records_sent);
    metrics::counter!("poolflow_exporter_best_effort_records_sent_total")
        .absolute(counters.best_effort_sent);
    metrics::counter!("poolflow_exporter_best_effort_dropped_records_total")
        .absolute(counters.best_effort_dropped);
    // Declared at this process's start (restart) or later; not the
    // persisted total over every run, which the statistics carry.
    metrics::counter!("poolflow_exporter_declared_not_sent_records_total")
        .absolute(counters.declared_not_sent);
    metrics::counter!("poolflow_exporter_statistics_sent_total").absolute(counters.statistics_sent);
    metrics::gauge!("poolflow_exporter_replay_buffer_records").set(core.buffered_records() as f64);
    metrics::gauge!("poolflow_exporter_cookie_lag_records").set(core.cookie_lag() as f64);
}

struct Driver<'a> {
    settings: &'a StreamSettings,
    client: PoolUserClient,
    events_tx: mpsc::Sender<DriverEvent>,
    sender: Option<(AssociationId, AssociationSender)>,
    /// The send that found the buffer full, while it waits for room.
    blocked: Option<BlockedSend>,
}

/// A message the association's send buffer has no room for yet. Awaiting
/// it in place would stop the loop, the core's timers with it: a peer whose
/// transport still answers (window probes, heartbeats) but never reads
/// would hold the exporter forever.
struct BlockedSend {
    association: AssociationId,
    send: Pin<Box<dyn Future<Output = Result<(), TransportError>> + Send>>,
}

/// Completes the blocked send, if any (never, if none), and clears it.
async fn finish_blocked_send(blocked: &mut Option<BlockedSend>) -> Result<(), TransportError> {
    let Some(pending) = blocked else {
        return std::future::pending().await;
    };
    let result = pending.send.as_mut().await;
    *blocked = None;
    result
}

impl Driver<'_> {
    async fn execute(
        &mut self,
        output: Output,
        progress: &mut impl FnMut(Progress),
    ) -> anyhow::Result<()> {
        match output {
            Output::Select => {
                let mut client = self.client.clone();
                let handle = self.settings.pool_handle.clone();
                let events = self.events_tx.clone();
                tokio::spawn(async move {
                    let result = client
                        .select(&handle, SELECT_CANDIDATES)
                        .await
                        .map_err(|e| format!("{e:#}"));
                    let _ = events.send(DriverEvent::Selected(result)).await;
                });
            }
            Output::ReportUnreachable { pe_id } => {
                tracing::info!(
                    pe_id = format_args!("{pe_id:#010x}"),
                    "reporting PE unreachable"
                );
                self.client
                    .report_unreachable(&self.settings.pool_handle, pe_id)
                    .await?;
            }
            Output::Connect { association, pe } => {
                let events = self.events_tx.clone();
                let mut base = self.settings.transport.clone();
                base.tls = self.settings.data_tls.clone();
                base.udp_segmentation_offload = self.settings.data_udp_segmentation_offload;
                tokio::spawn(run_association(association, pe, base, events));
            }
            Output::Send {
                association,
                stream,
                reliability,
                ppid,
                payload,
            } => {
                if let Some((current, sender)) = &self.sender
                    && *current == association
                {
                    let mut message = transport::Message::new(stream, ppid, payload);
                    message.reliability = reliability;
                    let sender = sender.clone();
                    let mut send: Pin<Box<dyn Future<Output = _> + Send>> =
                        Box::pin(async move { sender.send(message).await });
                    // One poll: queued at once unless the buffer is full.
                    match send
                        .as_mut()
                        .poll(&mut TaskContext::from_waker(Waker::noop()))
                    {
                        Poll::Ready(Ok(())) => {}
                        // The reader reports the association's end.
                        Poll::Ready(Err(error)) => tracing::debug!(%error, "send failed"),
                        Poll::Pending => self.blocked = Some(BlockedSend { association, send }),
                    }
                }
            }
            Output::Close { association } => {
                if let Some((current, sender)) = &self.sender
                    && *current == association
                {
                    sender.close();
                    self.sender = None;
                }
            }
            Output::CheckFailback { current, avoid } => {
                let mut client = self.client.clone();
                let handle = self.settings.pool_handle.clone();
                let events = self.events_tx.clone();
                tokio::spawn(async move {
                    let target = failback_target(&mut client, &handle, current, &avoid).await;
                    let _ = events.send(DriverEvent::FailbackCheck(target)).await;
                });
            }
            Output::PersistState(state) => {
                self.settings.state_file.store(&state).with_context(|| {
                    format!("writing {}", self.settings.state_file.path().display())
                })?;
            }
            Output::Notice(notice) => {
                log_notice(&notice);
                progress(Progress::Notice(notice));
            }
        }
        Ok(())
    }
}

async fn failback_target(
    client: &mut PoolUserClient,
    handle: &PoolHandle,
    current: u32,
    avoid: &[u32],
) -> Option<PoolElementInfo> {
    let elements = match client.refresh(handle).await {
        Ok(elements) => elements,
        Err(error) => {
            tracing::debug!(
                error = format!("{error:#}"),
                "failback check: no resolution"
            );
            return None;
        }
    };
    if avoid.is_empty() {
        let target = client.should_fail_back(handle, current).await.ok()??;
        return elements.into_iter().find(|pe| pe.pe_id == target);
    }
    // The best PE among those whose cookies were not refused: an untrusted
    // PE at the top priority must not hide a better trusted one.
    let members: Vec<policies::Member> = elements
        .iter()
        .filter(|pe| !avoid.contains(&pe.pe_id))
        .map(|pe| policies::Member {
            id: pe.pe_id,
            params: pe.policy,
        })
        .collect();
    let target = policies::failback_target(current, &members)?;
    elements.into_iter().find(|pe| pe.pe_id == target)
}

/// Says at start whether cookies are checked: an exporter without the
/// pool's public keys releases records on any cookie, forged ones included.
fn log_cookie_trust(config: &ExporterConfig) {
    match &config.cookie_keys {
        Some(keys) => tracing::info!(
            key_ids = ?keys
                .public_key_ids()
                .iter()
                .map(|id| format!("{id:#010x}"))
                .collect::<Vec<_>>(),
            "billing cookies are checked against the pool's public keys"
        ),
        None => tracing::warn!(
            "NO `cookie_public_key_files`: billing cookies are NOT checked. Any pool element \
             (a hostile or misconfigured one included) can make this exporter drop records \
             from its replay buffer that were never stored. Configure the pool's cookie \
             public keys (docs/billing-continuity.md)"
        ),
    }
}

fn log_notice(notice: &Notice) {
    match notice {
        Notice::Streaming {
            pe_id,
            reason,
            pending,
        } => tracing::info!(
            pe_id = format_args!("{pe_id:#010x}"),
            ?reason,
            pending,
            "streaming"
        ),
        Notice::FailoverStarted { pe_id, cause } if cause.is_transport_failure() => {
            tracing::warn!(
                pe_id = format_args!("{pe_id:#010x}"),
                cause = cause.label(),
                "failover: PE reported unreachable"
            )
        }
        Notice::FailoverStarted { pe_id, cause } => tracing::warn!(
            pe_id = format_args!("{pe_id:#010x}"),
            cause = cause.label(),
            "failover for a protocol problem (the PE is reachable: not reported to the registrar)"
        ),
        Notice::DrainStarted { from, to } => tracing::info!(
            from = format_args!("{from:#010x}"),
            to = format_args!("{to:#010x}"),
            "failback: draining"
        ),
        Notice::ConnectFailed { pe_id } => {
            tracing::warn!(pe_id = format_args!("{pe_id:#010x}"), "connect failed")
        }
        Notice::NoPoolElement { reason } => {
            tracing::warn!(%reason, "no pool element reachable; buffering")
        }
        Notice::CookieRejected {
            pe_id,
            reason,
            detail,
        } => {
            metrics::counter!("poolflow_exporter_cookie_rejected_total", "reason" => reason.label())
                .increment(1);
            tracing::error!(
                pe_id = pe_id.map(|id| format!("{id:#010x}")),
                reason = reason.label(),
                %detail,
                "cookie refused: no record released on it; PE reported unreachable and avoided"
            )
        }
        Notice::CollectorError { error } => tracing::warn!(%error, "collector sent an ASAP Error"),
    }
}

/// Where and how to reach a PE's user transport: SCTP (over UDP, SCTP port
/// = UDP port, the project's convention) or TCP.
pub fn data_transport(
    pe: &PoolElementInfo,
    base: &transport::Config,
) -> anyhow::Result<(transport::Config, SocketAddr)> {
    let ut = &pe.user_transport;
    let ip = *ut
        .addresses
        .first()
        .ok_or_else(|| anyhow!("PE {:#010x} advertises no address", pe.pe_id))?;
    let mut config = base.clone();
    match ut.kind {
        // RFC 5354's transport parameters cannot say "TLS": with `[tls]` the
        // exporter takes TCP PEs as TLS ones and will not fall back to
        // SCTP in the clear.
        AsapTransportKind::Sctp(_) if config.tls.is_some() => {
            return Err(anyhow!(
                "PE {:#010x} advertises SCTP, but [tls] allows only TLS over framed TCP",
                pe.pe_id
            ));
        }
        AsapTransportKind::Sctp(_) => {
            config.transport = TransportKind::SctpOverUdp;
            config.sctp_port = ut.port;
        }
        AsapTransportKind::Tcp(_) => config.transport = TransportKind::Tcp,
        other => {
            return Err(anyhow!(
                "PE {:#010x}: transport {other:?} carries no cookies",
                pe.pe_id
            ));
        }
    }
    Ok((config, SocketAddr::new(ip, ut.port)))
}

async fn run_association(
    association: AssociationId,
    pe: PoolElementInfo,
    base: transport::Config,
    events: mpsc::Sender<DriverEvent>,
) {
    let connected = match data_transport(&pe, &base) {
        Ok((config, addr)) => transport::connect(config, addr)
            .await
            .map_err(anyhow::Error::from),
        Err(error) => Err(error),
    };
    let mut link = match connected {
        Ok(link) => link,
        Err(error) => {
            tracing::info!(
                pe_id = format_args!("{:#010x}", pe.pe_id),
                error = format!("{error:#}"),
                "collector connect failed"
            );
            let _ = events.send(DriverEvent::Ended(association)).await;
            return;
        }
    };
    loop {
        let event = match link.recv().await {
            Some(Event::Up) => DriverEvent::Up(association, link.sender()),
            Some(Event::Message(message)) => {
                DriverEvent::Message(association, message.ppid, message.payload)
            }
            // A restarted collector lost our Cookie Echo and maybe messages
            // in flight: start over as after a failure.
            Some(Event::Restarted) | Some(Event::Down(_)) | Some(Event::Failed(_)) | None => {
                let _ = events.send(DriverEvent::Ended(association)).await;
                return;
            }
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}
