//! The collecting pipeline: transport sessions decode messages into batches
//! of [`StoredRecord`]s, one writer thread commits them to SQLite.
//!
//! ```text
//!  UDP thread ─┐
//!  TCP tasks  ─┼─ bounded channel of Batch ─► writer thread ─► SQLite (WAL)
//!  (SCTP)     ─┘
//! ```
//! The channel is bounded: when SQLite falls behind, receivers block, TCP
//! pushes back on the exporter and UDP datagrams queue in the kernel socket
//! buffer (and beyond it are lost, which the sequence numbers then show).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use protocol::ipfix::{DecodeError, SequenceCheck, Session, SessionConfig, TransportKind};
use tokio::sync::mpsc;
use tracing::{debug, error, warn};

use crate::record::{SequenceEvent, SequenceEventKind, StoredRecord, flow_fields};
use crate::store::Store;

/// Records and sequence events that travel to the writer together.
#[derive(Debug, Default)]
pub struct Batch {
    pub records: Vec<StoredRecord>,
    pub events: Vec<SequenceEvent>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.events.is_empty()
    }

    pub fn len(&self) -> usize {
        self.records.len()
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
    exporter: String,
    transport: &'static str,
    session: Session,
    errors_logged: u64,
}

/// Log at most this many malformed messages per session in full, then only
/// every power of two, so a broken exporter cannot flood the log.
const FULL_ERROR_LOGS: u64 = 20;

impl SessionDecoder {
    pub fn new(exporter: String, config: SessionConfig) -> Self {
        let transport = config.transport.as_str();
        Self {
            exporter,
            transport,
            session: Session::new(config),
            errors_logged: 0,
        }
    }

    pub fn exporter(&self) -> &str {
        &self.exporter
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
        let exporter = &self.exporter;
        let transport = self.transport;
        let before = out.records.len();
        let result = self.session.process(bytes, stream, now_secs, |record| {
            let (fields, extra) = flow_fields(&record);
            out.records.push(StoredRecord {
                exporter: exporter.clone(),
                transport,
                domain: record.header.observation_domain_id,
                template_id: record.template.id,
                export_time: record.header.export_time,
                message_sequence: record.header.sequence_number,
                record_index: record.index_in_message,
                received_ms,
                fields,
                extra,
            });
        });
        metrics::counter!("poolflow_collector_messages_total", "transport" => transport)
            .increment(1);
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
                exporter: self.exporter.clone(),
                transport,
                domain: report.header.observation_domain_id,
                stream,
                at_ms: received_ms,
                kind,
                sequence: report.header.sequence_number,
                records,
            });
        }
        let n = out.records.len() - before;
        metrics::counter!("poolflow_collector_records_received_total", "transport" => transport)
            .increment(n as u64);
        n
    }
}

/// Limits of the writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Largest transaction; under load batches grow up to this.
    pub max_batch_records: usize,
}

/// What the writer has made durable so far, readable from any thread.
#[derive(Debug, Default)]
pub struct Progress {
    pub committed_records: AtomicU64,
    pub commits: AtomicU64,
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
            let mut pending = Batch::default();
            while let Some(batch) = rx.blocking_recv() {
                append(&mut pending, batch);
                // Take whatever else is already queued: big transactions
                // under load, small and prompt ones when idle.
                while pending.len() < config.max_batch_records {
                    match rx.try_recv() {
                        Ok(batch) => append(&mut pending, batch),
                        Err(_) => break,
                    }
                }
                let n = pending.records.len() as u64;
                if let Err(err) = store.commit_batch(&pending.records, &pending.events, now_ms()) {
                    error!("SQLite commit of {n} records failed: {err:#}");
                    return Err(err);
                }
                progress.committed_records.fetch_add(n, Ordering::Release);
                progress.commits.fetch_add(1, Ordering::Release);
                metrics::counter!("poolflow_collector_records_stored_total").increment(n);
                pending.records.clear();
                pending.events.clear();
            }
            Ok(())
        })
        .expect("spawning the writer thread")
}

fn append(into: &mut Batch, mut from: Batch) {
    if into.is_empty() {
        *into = from;
    } else {
        into.records.append(&mut from.records);
        into.events.append(&mut from.events);
    }
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
