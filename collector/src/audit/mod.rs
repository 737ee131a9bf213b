//! `collector audit`: proves billing record continuity across the stores of
//! every collector of a pool (docs/billing-continuity.md;
//! docs/architecture.md "Failure handling in one paragraph").
//!
//! Per (billing exporter id, observation domain) it reports the record
//! sequences present, the gaps between 0 (the first record sequence an
//! exporter sends) and the highest sequence seen or claimed by a handover
//! cookie, duplicates (identical bytes: benign; differing bytes: conflict)
//! and the handovers recorded in `billing_handovers`.
//!
//! The exporters' own account (RFC 7011 4.3 reliability statistics, in
//! `exporter_totals`) says how many record sequences each exporter has
//! accounted for: every sequence below `exported + not sent` must be
//! present, so a lost tail or middle is a gap even when no later record or
//! cookie shows it. Ranges the exporter declared it will never send (lost
//! in its restart, `declared_losses`) are reported apart as declared loss:
//! they fail the audit only with `fail_on_declared_loss`. A declared range
//! that a store holds after all is present, not lost.
//!
//! Stores may hold hundreds of millions of records, so nothing here keeps a
//! per-record structure for a whole store: one reader thread per store streams
//! its blocks in record-sequence order (the `record_blocks_by_billing` index)
//! and sends (sequence, 64-bit hash of the record's bytes) entries, and the
//! caller's thread k-way merges the streams. Memory stays bounded by the
//! channel depth plus the blocks of one store that overlap each other.
//!
//! Layout: this file runs the audit (stores in, [`AuditReport`] out) and holds
//! the vocabulary the parts share (group keys, entries, exporters' accounts);
//! `read` streams a SQLite store into entries (`postgres` does the same for
//! the shared tier), `merge` k-way merges the stores' streams and judges each
//! exporter/domain, `report` is the report's content and its text form.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

mod merge;
mod postgres;
mod read;
mod report;

use merge::{GroupAccumulator, StoreStream, merge_streams};
use read::{read_accounts, read_exporter_state, read_store};
use report::assemble;
pub use report::{
    Anomaly, AuditReport, Conflict, ConflictCopy, Conflicts, DeclaredLoss, DeclaredRange,
    DuplicateRange, Duplicates, ExporterDomainReport, Gaps, Handover, SequenceRange, StoreCopies,
    StoreShare, StoreSummary, Totals, Verdict, report_text,
};

/// What to audit and how.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// Every collector's SQLite store; the order names them in the report.
    pub databases: Vec<PathBuf>,
    /// Audit the PostgreSQL shared tier at this URL instead of SQLite files
    /// (docs/postgres.md): every collector that shipped there is a store,
    /// named by its `collector_name`.
    pub postgres: Option<String>,
    /// Only this billing exporter id.
    pub exporter: Option<u32>,
    /// Only this observation domain.
    pub domain: Option<u32>,
    /// At most this many gap ranges, duplicate ranges and conflicts are
    /// listed per exporter/domain (all are counted); 0 lists all. A store
    /// that lost every other record must not produce a gigabyte report.
    pub list_limit: usize,
    /// Print progress on stderr every second.
    pub progress: bool,
    /// Declared losses fail the audit too (by default only unexplained
    /// gaps, conflicts and unreadable blocks do).
    pub fail_on_declared_loss: bool,
    /// Exporters' state files (`state_file` of `exporter stream` or
    /// `relay`): each domain's `next_sequence` is claimed like the
    /// statistics' `exported + not sent`, so a tail that went to a store
    /// not given (or to none) is a gap even when no given store received
    /// statistics about it. Exact after a clean stop; after a crash it is
    /// the reservation, whose unused part shows as a gap.
    pub exporter_states: Vec<PathBuf>,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            databases: Vec::new(),
            postgres: None,
            exporter: None,
            domain: None,
            list_limit: 1000,
            progress: false,
            fail_on_declared_loss: false,
            exporter_states: Vec::new(),
        }
    }
}

/// Reads every store and audits it. Errors are usage or I/O problems (a
/// store that cannot be opened or lacks the billing schema), not findings:
/// findings are in the report.
pub fn run(options: &AuditOptions) -> Result<AuditReport> {
    let sources: Vec<StoreSource> = match (&options.postgres, options.databases.is_empty()) {
        (Some(_), false) => bail!("give either SQLite stores (--database) or --postgres, not both"),
        (Some(url), true) => postgres::collectors(url)?
            .into_iter()
            .map(|collector| StoreSource::Postgres {
                url: url.clone(),
                collector,
            })
            .collect(),
        (None, false) => options
            .databases
            .iter()
            .cloned()
            .map(StoreSource::Sqlite)
            .collect(),
        (None, true) => bail!("no store given (--database or --postgres)"),
    };
    let filter = GroupFilter {
        exporter: options.exporter.map(i64::from),
        domain: options.domain.map(i64::from),
    };
    let store_names: Vec<String> = sources.iter().map(StoreSource::name).collect();
    let mut accounts: BTreeMap<GroupKey, ExporterAccount> = BTreeMap::new();
    for (index, source) in sources.iter().enumerate() {
        let name = &store_names[index];
        match source {
            StoreSource::Sqlite(path) => read_accounts(path, name, filter, &mut accounts),
            StoreSource::Postgres { url, collector } => {
                postgres::read_accounts(url, collector, name, filter, &mut accounts)
            }
        }
        .with_context(|| format!("auditing {name}"))?;
    }
    for path in &options.exporter_states {
        read_exporter_state(path, filter, &mut accounts)
            .with_context(|| format!("reading exporter state {}", path.display()))?;
    }
    let progress = Arc::new(ReadProgress::default());
    let mut streams = Vec::with_capacity(sources.len());
    let mut readers = Vec::with_capacity(sources.len());
    for source in sources {
        // A few batches in flight per store let the reader run ahead of the
        // merge without letting memory grow with the store.
        let (sender, receiver) = mpsc::sync_channel(4);
        let progress = Arc::clone(&progress);
        readers.push(
            thread::Builder::new()
                .name("audit-reader".to_owned())
                .spawn(move || match source {
                    StoreSource::Sqlite(path) => read_store(&path, filter, &sender, &progress),
                    StoreSource::Postgres { url, collector } => {
                        postgres::read_store(&url, &collector, filter, &sender, &progress)
                    }
                })
                .context("starting an audit reader thread")?,
        );
        streams.push(StoreStream::new(receiver));
    }
    let reporter = options
        .progress
        .then(|| ProgressReporter::start(Arc::clone(&progress)));

    let mut groups = merge_streams(&mut streams, &store_names, options.list_limit, &accounts);
    drop(streams);

    let mut stores = Vec::with_capacity(readers.len());
    let mut handovers = Vec::new();
    let mut anomalies = Vec::new();
    let mut first_error = None;
    for (index, reader) in readers.into_iter().enumerate() {
        match reader.join() {
            Ok(Ok(readout)) => {
                let mut summary = readout.summary;
                summary.path = store_names[index].clone();
                stores.push(summary);
                handovers.extend(readout.handovers.into_iter().map(|h| (index, h)));
                anomalies.extend(readout.anomalies.into_iter().map(|a| (index, a)));
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e.context(format!("auditing {}", store_names[index])));
            }
            Err(_) => {
                first_error.get_or_insert(anyhow!("the reader of {} panicked", store_names[index]));
            }
        }
    }
    if let Some(reporter) = reporter {
        reporter.stop();
    }
    if let Some(e) = first_error {
        return Err(e);
    }

    // Handovers and anomalies may name exporter/domains without any stored
    // record: they still get a section.
    for key in accounts.keys() {
        groups.entry(*key).or_insert_with(|| {
            GroupAccumulator::new(*key, store_names.len(), options.list_limit, &accounts)
        });
    }
    for (index, handover) in handovers {
        groups
            .entry(handover.key)
            .or_insert_with(|| {
                GroupAccumulator::new(
                    handover.key,
                    store_names.len(),
                    options.list_limit,
                    &accounts,
                )
            })
            .handovers
            .push(handover.into_report(&store_names[index]));
    }
    for (index, anomaly) in anomalies {
        groups
            .entry(anomaly.key)
            .or_insert_with(|| {
                GroupAccumulator::new(
                    anomaly.key,
                    store_names.len(),
                    options.list_limit,
                    &accounts,
                )
            })
            .anomalies
            .push(Anomaly {
                store: store_names[index].clone(),
                block_id: anomaly.block_id,
                problem: anomaly.problem,
            });
    }
    let exporter_domains: Vec<ExporterDomainReport> = groups
        .into_values()
        .map(|g| g.finish(&store_names))
        .collect();
    Ok(assemble(
        stores,
        exporter_domains,
        options.fail_on_declared_loss,
    ))
}

/// Where one store's records come from.
enum StoreSource {
    /// A collector's SQLite file.
    Sqlite(PathBuf),
    /// One collector's rows in the PostgreSQL shared tier.
    Postgres { url: String, collector: String },
}

impl StoreSource {
    /// The store's name in the report.
    fn name(&self) -> String {
        match self {
            StoreSource::Sqlite(path) => path.display().to_string(),
            StoreSource::Postgres { collector, .. } => collector.clone(),
        }
    }
}

/// (billing exporter id, observation domain), ordered as the merge needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct GroupKey {
    billing_exporter: i64,
    domain: i64,
}

#[derive(Debug, Clone, Copy)]
struct GroupFilter {
    exporter: Option<i64>,
    domain: Option<i64>,
}

impl GroupFilter {
    fn accepts(&self, key: GroupKey) -> bool {
        self.exporter.is_none_or(|e| e == key.billing_exporter)
            && self.domain.is_none_or(|d| d == key.domain)
    }

    /// The group of a row's (billing exporter, domain), if the audit covers it.
    fn key(&self, billing_exporter: i64, domain: i64) -> Option<GroupKey> {
        let key = GroupKey {
            billing_exporter,
            domain,
        };
        self.accepts(key).then_some(key)
    }
}

/// One stored record as the merge sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct RecordEntry {
    key: GroupKey,
    sequence: u64,
    hash: u64,
    block_id: i64,
}

/// Entries per channel message: large enough that channel overhead
/// vanishes, small enough that 4 in flight per store cost little.
const BATCH_ENTRIES: usize = 4096;

#[derive(Default)]
struct ReadProgress {
    blocks_total: AtomicU64,
    blocks_read: AtomicU64,
    records_read: AtomicU64,
}

/// Prints [`ReadProgress`] on stderr every second until stopped.
struct ProgressReporter {
    stop: mpsc::Sender<()>,
    thread: thread::JoinHandle<()>,
}

impl ProgressReporter {
    fn start(progress: Arc<ReadProgress>) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::spawn(move || {
            let started = Instant::now();
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(Duration::from_secs(1))
            {
                let total = progress.blocks_total.load(Ordering::Relaxed);
                let read = progress.blocks_read.load(Ordering::Relaxed);
                let percent = (read * 100).checked_div(total).unwrap_or(0);
                eprintln!(
                    "audit: {read}/{total} blocks ({percent}%), {} records read, {}s",
                    progress.records_read.load(Ordering::Relaxed),
                    started.elapsed().as_secs()
                );
            }
        });
        Self { stop, thread }
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// What the exporter said about one exporter/domain, across every store.
#[derive(Debug, Clone, Default)]
struct ExporterAccount {
    /// Highest `exported + not sent` reported, or state-file next sequence.
    accounted: Option<u64>,
    state_file_next: Option<u64>,
    /// Union of the declared ranges.
    declared: crate::ledger::RangeSet,
    declarations: Vec<DeclarationRow>,
}

impl ExporterAccount {
    /// A report (statistics or state file) accounts for every sequence below
    /// `accounted`; the highest wins.
    fn account(&mut self, accounted: u64) {
        self.accounted = self.accounted.max(Some(accounted));
    }

    /// The exporter declared `row.first..=row.last` lost.
    fn declare(&mut self, row: DeclarationRow) {
        self.declared.insert(row.first, row.last);
        self.declarations.push(row);
    }
}

#[derive(Debug, Clone)]
struct DeclarationRow {
    first: u64,
    last: u64,
    system_init_ms: i64,
    store: String,
    peer: String,
}
