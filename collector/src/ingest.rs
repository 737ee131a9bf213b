//! The collecting pipeline: transport sessions decode messages into batches
//! of [`RecordBlock`]s, one writer thread commits them to SQLite.
//!
//! ```text
//!  UDP thread ─┐
//!  TCP tasks  ─┼─ bounded channel of Batch ─► writer thread ─► SQLite (WAL)
//!  (SCTP)     ─┘
//! ```
//! The channel is bounded: when SQLite falls behind, receivers block, TCP
//! pushes back on the exporter and UDP datagrams queue in the kernel socket
//! buffer (and beyond it are lost, which the sequence numbers then show).
//!
//! Hot path: a message's records are validated by the session and copied,
//! as received, into the batch's one byte buffer; the records of a message
//! that share a template become one [`RecordBlock`] (one SQLite row). No
//! allocation per record, none per message once the buffers have grown;
//! decoding into flow fields happens at query time ([`crate::store`]).

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use protocol::ipfix::reliability::{self, ReliabilityStatistics};
use protocol::ipfix::{
    DecodeError, SequenceCheck, Session, SessionConfig, Template, TransportKind,
};
use tokio::sync::mpsc;
use tracing::{debug, error, warn};

use crate::billing::{BillingTag, Handover};
use crate::record::{SequenceEvent, SequenceEventKind};
use crate::store::Store;

/// Consecutive records of one message that share a template, kept exactly
/// as received.
#[derive(Debug, Clone)]
pub struct RecordBlock {
    /// "ip:port" of the exporting process.
    pub exporter: Arc<str>,
    pub transport: &'static str,
    pub domain: u32,
    pub template: Arc<Template>,
    pub export_time: u32,
    pub message_sequence: u32,
    /// Position of the first record among the message's data records.
    pub first_record_index: u32,
    pub record_count: u32,
    pub received_ms: i64,
    /// This block's records in [`Batch::bytes`].
    pub bytes: Range<usize>,
    /// Set on billing associations (after a Cookie Echo): whose records
    /// these are and the first one's record sequence.
    pub billing: Option<BillingTag>,
}

/// Exporting Process Reliability Statistics received (RFC 7011 4.3): stored
/// in `exporter_totals` and, for a billing domain, reconciled with what the
/// store holds (the exporter's declared losses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotalsReport {
    /// "ip:port" of the exporting process.
    pub peer: Arc<str>,
    pub transport: &'static str,
    pub received_ms: i64,
    pub stats: ReliabilityStatistics,
    /// On a billing association, for a domain it announced with a Cookie
    /// Echo: the billing exporter id and the first record sequence this
    /// association is responsible for (after the echoed cookie).
    pub billing: Option<(u32, u64)>,
}

/// Records and sequence events that travel to the writer together.
#[derive(Debug, Default)]
pub struct Batch {
    pub blocks: Vec<RecordBlock>,
    /// The records' bytes of every block, back to back.
    pub bytes: Vec<u8>,
    pub events: Vec<SequenceEvent>,
    /// Exporters that arrived here with a Cookie Echo (failover/failback).
    pub handovers: Vec<Handover>,
    /// Reliability statistics, after the records that came before them.
    pub totals: Vec<TotalsReport>,
    records: usize,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
            && self.events.is_empty()
            && self.handovers.is_empty()
            && self.totals.is_empty()
    }

    /// Data records in the batch.
    pub fn len(&self) -> usize {
        self.records
    }

    /// The records' bytes of one block.
    pub fn block_bytes(&self, block: &RecordBlock) -> &[u8] {
        &self.bytes[block.bytes.clone()]
    }

    /// An empty batch with room for about `records` records of `record_len`.
    pub(crate) fn with_capacity(records: usize, record_len: usize) -> Self {
        Self {
            blocks: Vec::with_capacity(records / 8),
            bytes: Vec::with_capacity(records * record_len),
            events: Vec::new(),
            handovers: Vec::new(),
            totals: Vec::new(),
            records: 0,
        }
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Decodes the messages of one transport session into a [`Batch`], counting
/// and logging what is wrong with them.
pub struct SessionDecoder {
    exporter: Arc<str>,
    transport: &'static str,
    session: Session,
    /// Shared copies of the templates blocks refer to, so a block costs a
    /// reference count, not a template clone.
    templates: Vec<Arc<Template>>,
    errors_logged: u64,
    /// A billing association: sequence numbers of announced domains are
    /// record sequences, reconciled by the writer, not here.
    billing: bool,
    messages_total: metrics::Counter,
    records_total: metrics::Counter,
}

/// Log at most this many malformed messages per session in full, then only
/// every power of two, so a broken exporter cannot flood the log.
const FULL_ERROR_LOGS: u64 = 20;

/// Distinct templates a decoder keeps shared copies of before starting over
/// (a session may define up to `max_templates`; blocks only need the ones
/// in use).
const SHARED_TEMPLATES: usize = 64;

impl SessionDecoder {
    pub fn new(exporter: String, config: SessionConfig) -> Self {
        let transport = config.transport.as_str();
        Self {
            exporter: exporter.into(),
            transport,
            session: Session::new(config),
            templates: Vec::new(),
            errors_logged: 0,
            billing: false,
            messages_total: metrics::counter!(
                "poolflow_collector_messages_total", "transport" => transport),
            records_total: metrics::counter!(
                "poolflow_collector_records_received_total", "transport" => transport),
        }
    }

    pub fn exporter(&self) -> &str {
        &self.exporter
    }

    /// Marks the session as a billing association (after a Cookie Echo).
    pub fn set_billing(&mut self) {
        self.billing = true;
    }

    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    /// Counts and logs an error found outside [`Self::handle`] (framing).
    pub fn count_error(&mut self, err: &DecodeError) {
        self.log_errors(std::slice::from_ref(err));
    }

    fn log_errors(&mut self, errors: &[DecodeError]) {
        for err in errors {
            metrics::counter!("poolflow_collector_decode_errors_total", "reason" => err.reason())
                .increment(1);
            self.errors_logged += 1;
            let n = self.errors_logged;
            if n <= FULL_ERROR_LOGS || n.is_power_of_two() {
                warn!(peer = %self.exporter, transport = self.transport, reason = err.reason(),
                      occurrences = n, "malformed IPFIX: {err}");
            }
        }
    }

    /// Decodes one message into `out`. Returns the number of data records.
    pub fn handle(&mut self, bytes: &[u8], stream: u16, out: &mut Batch) -> usize {
        let received_ms = now_ms();
        let now_secs = (received_ms / 1000) as u64;
        let Self {
            exporter,
            transport,
            session,
            templates,
            ..
        } = self;
        let transport = *transport;
        let first_block = out.blocks.len();
        let records_before = out.records;
        // The session's template of the block being built: the session holds
        // it for the whole message, so its address identifies it meanwhile.
        let mut block_template: *const Template = std::ptr::null();
        let result = session.process(bytes, stream, now_secs, |record| {
            let start = out.bytes.len();
            out.bytes.extend_from_slice(record.bytes);
            out.records += 1;
            // Records of one data set arrive in a row: extend the block.
            if out.blocks.len() > first_block && std::ptr::eq(block_template, record.template) {
                let block = out.blocks.last_mut().expect("a block of this message");
                if block.first_record_index + block.record_count == record.index_in_message {
                    block.record_count += 1;
                    block.bytes.end = out.bytes.len();
                    return;
                }
            }
            block_template = record.template;
            out.blocks.push(RecordBlock {
                exporter: Arc::clone(exporter),
                transport,
                domain: record.header.observation_domain_id,
                template: shared_template(templates, record.template),
                export_time: record.header.export_time,
                message_sequence: record.header.sequence_number,
                first_record_index: record.index_in_message,
                record_count: 1,
                received_ms,
                bytes: start..out.bytes.len(),
                billing: None,
            });
        });
        self.messages_total.increment(1);
        let report = match result {
            Ok(report) => report,
            Err(err) => {
                self.log_errors(std::slice::from_ref(&err));
                return 0;
            }
        };
        if !report.errors.is_empty() {
            self.log_errors(&report.errors);
        }
        let (kind, records) = match report.sequence {
            SequenceCheck::First | SequenceCheck::InOrder => (None, 0),
            SequenceCheck::Gap { lost } => (Some(SequenceEventKind::Gap), lost),
            SequenceCheck::Behind { behind } => (Some(SequenceEventKind::Behind), behind),
            SequenceCheck::Resync => (Some(SequenceEventKind::Resync), 0),
        };
        if let Some(kind) = kind {
            if kind == SequenceEventKind::Gap {
                metrics::counter!("poolflow_collector_sequence_lost_records_total")
                    .increment(records);
            }
            debug!(peer = %self.exporter, domain = report.header.observation_domain_id,
                   kind = kind.as_str(), records, "sequence anomaly");
            out.events.push(SequenceEvent {
                exporter: self.exporter.to_string(),
                transport,
                domain: report.header.observation_domain_id,
                stream,
                at_ms: received_ms,
                kind,
                sequence: report.header.sequence_number,
                records,
            });
        }
        self.take_statistics(first_block, stream, received_ms, out);
        let n = out.records - records_before;
        self.records_total.increment(n as u64);
        n
    }

    /// Moves the records of the reliability statistics layout out of the
    /// message's blocks into [`Batch::totals`] (they are the exporter's
    /// account, not flow records). On a plain session, a total beyond the
    /// last message seen is a lost tail: counted as a sequence gap.
    fn take_statistics(
        &mut self,
        first_block: usize,
        stream: u16,
        received_ms: i64,
        out: &mut Batch,
    ) {
        let mut i = first_block;
        while i < out.blocks.len() {
            if !reliability::is_statistics_template(&out.blocks[i].template) {
                i += 1;
                continue;
            }
            let block = out.blocks.remove(i);
            out.records -= block.record_count as usize;
            let bytes = &out.bytes[block.bytes.clone()];
            for record in bytes.chunks_exact(reliability::RECORD_LEN) {
                let stats = ReliabilityStatistics::decode(record).expect("fixed length");
                out.totals.push(TotalsReport {
                    peer: Arc::clone(&self.exporter),
                    transport: self.transport,
                    received_ms,
                    stats,
                    billing: None,
                });
                if self.billing {
                    continue;
                }
                let domain = stats.observation_domain_id;
                let lost = self
                    .session
                    .reconcile_exported_total(domain, stream, stats.exported_records)
                    .unwrap_or(0);
                if lost > 0 {
                    metrics::counter!("poolflow_collector_sequence_lost_records_total")
                        .increment(lost);
                    warn!(peer = %self.exporter, domain, lost,
                          "exporter's statistics count records never received (lost tail)");
                    out.events.push(SequenceEvent {
                        exporter: self.exporter.to_string(),
                        transport: self.transport,
                        domain,
                        stream,
                        at_ms: received_ms,
                        kind: SequenceEventKind::Gap,
                        sequence: stats.exported_records as u32,
                        records: lost,
                    });
                }
            }
        }
    }
}

/// The shared copy of `template` (the session's own `Arc` is not reachable
/// from a [`protocol::ipfix::DataRecord`]). Compared by content: a pointer
/// alone could be a freed template's address reused.
fn shared_template(shared: &mut Vec<Arc<Template>>, template: &Template) -> Arc<Template> {
    if let Some(t) = shared.iter().find(|t| ***t == *template) {
        return Arc::clone(t);
    }
    if shared.len() >= SHARED_TEMPLATES {
        shared.clear();
    }
    let t = Arc::new(template.clone());
    shared.push(Arc::clone(&t));
    t
}

/// Limits of the writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Largest transaction; under load batches grow up to this.
    pub max_batch_records: usize,
}

/// What the writer has made durable so far, readable from any thread.
#[derive(Debug)]
pub struct Progress {
    pub committed_records: AtomicU64,
    pub commits: AtomicU64,
    /// Bumped after every commit: sessions owing cookies wait on it.
    pub committed: tokio::sync::watch::Sender<u64>,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            committed_records: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            committed: tokio::sync::watch::Sender::new(0),
        }
    }
}

/// Starts the writer thread. It ends, after a last commit, when every sender
/// of `rx` is dropped; its result tells whether SQLite failed.
pub fn spawn_writer(
    mut store: Store,
    mut rx: mpsc::Receiver<Batch>,
    config: WriterConfig,
    progress: Arc<Progress>,
) -> JoinHandle<Result<()>> {
    std::thread::Builder::new()
        .name("sqlite-writer".into())
        .spawn(move || {
            let mut pending: Vec<Batch> = Vec::new();
            while let Some(batch) = rx.blocking_recv() {
                let mut records = batch.len();
                pending.push(batch);
                // Take whatever else is already queued: big transactions
                // under load, small and prompt ones when idle. Batches are
                // committed as they are, not merged: no copying.
                while records < config.max_batch_records {
                    match rx.try_recv() {
                        Ok(batch) => {
                            records += batch.len();
                            pending.push(batch);
                        }
                        Err(_) => break,
                    }
                }
                let n = records as u64;
                let commit_started = std::time::Instant::now();
                if let Err(err) = store.commit(&pending, now_ms()) {
                    error!("SQLite commit of {n} records failed: {err:#}");
                    return Err(err);
                }
                progress.committed_records.fetch_add(n, Ordering::Release);
                let commits = progress.commits.fetch_add(1, Ordering::Release) + 1;
                progress.committed.send_replace(commits);
                metrics::counter!("poolflow_collector_records_stored_total").increment(n);
                // Commit latency bounds how soon cookies go out (cookie lag).
                metrics::histogram!("poolflow_collector_commit_seconds")
                    .record(commit_started.elapsed().as_secs_f64());
                pending.clear();
            }
            Ok(())
        })
        .expect("spawning the writer thread")
}

/// How long a UDP receive waits before flushing a partial batch.
pub const UDP_FLUSH_INTERVAL: Duration = Duration::from_millis(50);

/// Default session configuration for a transport from the collector config.
pub fn session_config(
    transport: TransportKind,
    template_lifetime_secs: u64,
    max_templates: usize,
) -> SessionConfig {
    let mut c = SessionConfig::new(transport);
    c.template_lifetime_secs = template_lifetime_secs;
    c.max_templates = max_templates;
    c
}
