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

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::thread;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use protocol::ipfix::Template;
use protocol::ipfix::message::DataRecordIter;
use rusqlite::{Connection, params};
use serde::Serialize;

mod postgres;

use crate::record::record_hash;
use crate::store::{Store, decode_template};

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

/// The audit's outcome; [`AuditReport::write_text`] and the `Serialize`
/// impl (`--json`) carry the same content.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    /// `pass` only if every exporter/domain passes (see `failures`) and there
    /// is at least one.
    pub verdict: Verdict,
    /// Why the verdict is `fail`, one line each; empty on `pass`.
    pub failures: Vec<String>,
    /// What each store holds, in the order given.
    pub stores: Vec<StoreSummary>,
    /// One report per (billing exporter id, observation domain).
    pub exporter_domains: Vec<ExporterDomainReport>,
    /// Sums over every exporter/domain.
    pub totals: Totals,
}

/// The audit's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Continuity holds.
    Pass,
    /// It does not: see `AuditReport::failures`.
    Fail,
}

/// What one store holds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StoreSummary {
    /// The store's database file.
    pub path: String,
    /// Record blocks of billing sessions (with record sequences).
    pub billing_blocks: u64,
    /// Records of billing sessions.
    pub billing_records: u64,
    /// Blocks of non-billing sessions (plain UDP/TCP IPFIX): they carry no
    /// record sequence, so there is nothing to audit in them.
    pub non_billing_blocks: u64,
    /// Records of non-billing blocks (not audited).
    pub non_billing_records_skipped: u64,
    /// Handovers (Cookie Echoes) the store recorded.
    pub handovers: u64,
}

/// Sums over every exporter/domain.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Exporter/domains audited.
    pub exporter_domains: u64,
    /// Distinct record sequences stored.
    pub records_present: u64,
    /// Unexplained: neither stored anywhere nor declared lost.
    pub missing_records: u64,
    /// Declared lost by their exporter (and stored nowhere).
    pub declared_lost_records: u64,
    /// Sequences stored more than once with identical bytes.
    pub benign_duplicate_sequences: u64,
    /// Sequences stored with differing bytes.
    pub conflicting_sequences: u64,
    /// Blocks that could not be read completely.
    pub anomalies: u64,
    /// Records of non-billing blocks (not audited).
    pub non_billing_records_skipped: u64,
}

/// Everything about one (billing exporter id, observation domain).
#[derive(Debug, Clone, Serialize)]
pub struct ExporterDomainReport {
    /// Billing exporter id.
    pub billing_exporter: i64,
    /// Observation domain id.
    pub domain: i64,
    /// This exporter/domain's verdict.
    pub verdict: Verdict,
    /// Lowest and highest record sequence stored in any store.
    pub first_sequence: Option<u64>,
    /// Highest record sequence stored in any store (see `first_sequence`).
    pub last_sequence: Option<u64>,
    /// Highest sequence that must be stored: the last one seen, or a higher
    /// one a handover cookie claims was stored contiguously, or the last one
    /// the exporter's statistics account for.
    pub expected_through: Option<u64>,
    /// The highest `exported + not sent` the exporter reported (RFC 7011
    /// 4.3 statistics) in any store, or `next_sequence` of its state file:
    /// every sequence below it was sent or declared never to be sent.
    pub exporter_accounted: Option<u64>,
    /// `next_sequence` of the exporter's state file, when one was given.
    pub state_file_next_sequence: Option<u64>,
    /// Distinct record sequences stored.
    pub records_present: u64,
    /// Stored records counting every copy.
    pub copies_stored: u64,
    /// Unexplained gaps: the audit fails on them.
    pub gaps: Gaps,
    /// Sequences stored nowhere that the exporter declared lost.
    pub declared_loss: DeclaredLoss,
    /// Sequences stored more than once with identical bytes (benign).
    pub duplicates: Duplicates,
    /// Sequences stored with differing bytes (the audit fails on them).
    pub conflicts: Conflicts,
    /// Which part each store holds.
    pub stores: Vec<StoreShare>,
    /// Handovers of this exporter/domain, in time order.
    pub handovers: Vec<Handover>,
    /// Blocks that could not be read completely (their records count as
    /// missing unless another store has them).
    pub anomalies: Vec<Anomaly>,
}

/// Unexplained gaps of one exporter/domain.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Gaps {
    /// Records missing.
    pub missing_records: u64,
    /// Missing ranges.
    pub range_count: u64,
    /// The missing ranges, up to the listing limit.
    pub ranges: Vec<SequenceRange>,
    /// Missing ranges beyond `AuditOptions::list_limit`: counted, not listed.
    pub ranges_not_listed: u64,
}

/// Records an exporter declared lost (RFC 7011 4.3 statistics).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeclaredLoss {
    /// Records declared lost and stored nowhere.
    pub records: u64,
    /// Declared ranges.
    pub range_count: u64,
    /// The declared ranges, up to the listing limit.
    pub ranges: Vec<DeclaredRange>,
    /// Declared ranges beyond `AuditOptions::list_limit`: counted, not listed.
    pub ranges_not_listed: u64,
}

/// Inclusive; one range of one declaration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeclaredRange {
    /// First record sequence declared lost.
    pub first: u64,
    /// Last record sequence declared lost.
    pub last: u64,
    /// Records of the range.
    pub records: u64,
    /// When the declaring exporter process started (its restart).
    pub exporter_restart_ms: i64,
    /// `exporter_restart_ms` as RFC 3339, UTC.
    pub exporter_restart: String,
    /// The store that recorded the declaration.
    pub store: String,
    /// The declaring exporter's transport address.
    pub peer: String,
}

/// Inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SequenceRange {
    /// First record sequence of the range.
    pub first: u64,
    /// Last record sequence of the range.
    pub last: u64,
}

/// Same sequence stored more than once with identical bytes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Duplicates {
    /// Record sequences stored more than once.
    pub sequences: u64,
    /// Copies beyond the first.
    pub extra_copies: u64,
    /// Duplicated ranges.
    pub range_count: u64,
    /// The duplicated ranges, up to the listing limit.
    pub ranges: Vec<DuplicateRange>,
    /// Duplicated ranges beyond `AuditOptions::list_limit`: counted, not
    /// listed.
    pub ranges_not_listed: u64,
}

/// Inclusive; consecutive sequences duplicated alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DuplicateRange {
    /// First record sequence of the range.
    pub first: u64,
    /// Last record sequence of the range.
    pub last: u64,
    /// Copies of each sequence of the range, per store.
    pub copies: Vec<StoreCopies>,
}

/// Copies in one store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreCopies {
    /// The store's database file.
    pub store: String,
    /// Copies of each sequence of the range there.
    pub copies: u64,
}

/// Same sequence stored with differing bytes: one of them is not what the
/// exporter sent.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Conflicts {
    /// Record sequences with differing copies.
    pub sequences: u64,
    /// The conflicts, up to the listing limit.
    pub listed: Vec<Conflict>,
    /// Conflicts beyond `AuditOptions::list_limit`: counted, not listed.
    pub not_listed: u64,
}

/// One record sequence stored with differing bytes.
#[derive(Debug, Clone, Serialize)]
pub struct Conflict {
    /// The record sequence.
    pub sequence: u64,
    /// Every copy, with where it is.
    pub copies: Vec<ConflictCopy>,
}

/// One copy of a conflicting record.
#[derive(Debug, Clone, Serialize)]
pub struct ConflictCopy {
    /// The store's database file.
    pub store: String,
    /// `record_blocks.id` holding the copy.
    pub block_id: i64,
    /// 64-bit hash of the record's bytes, hex.
    pub record_hash: String,
}

/// The part of an exporter/domain one store holds.
#[derive(Debug, Clone, Serialize)]
pub struct StoreShare {
    /// The store's database file.
    pub store: String,
    /// Records of the exporter/domain stored there.
    pub records: u64,
    /// Lowest record sequence stored there.
    pub first_sequence: u64,
    /// Highest record sequence stored there.
    pub last_sequence: u64,
}

/// A Cookie Echo recorded by a store (`billing_handovers`).
#[derive(Debug, Clone, Serialize)]
pub struct Handover {
    /// When it arrived, unix milliseconds.
    pub at_ms: i64,
    /// `at_ms` as RFC 3339, UTC.
    pub at: String,
    /// The store that recorded it (the receiving collector's).
    pub store: String,
    /// `introduction` (fresh exporter), `handover` (from another collector:
    /// failover or failback) or `reconnect` (same collector again).
    pub kind: &'static str,
    /// The exporter's transport address.
    pub peer: String,
    /// PE that signed the echoed cookie; `None` for an introduction.
    pub from_pe: Option<i64>,
    /// The receiving collector's PE identifier.
    pub to_pe: i64,
    /// Last record sequence the echoed cookie says was stored contiguously.
    pub record_sequence: Option<u64>,
}

/// A block that could not be read completely.
#[derive(Debug, Clone, Serialize)]
pub struct Anomaly {
    /// The store's database file.
    pub store: String,
    /// `record_blocks.id` of the block.
    pub block_id: i64,
    /// What is wrong with it.
    pub problem: String,
}

impl AuditReport {
    /// Whether the verdict is `pass`.
    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Pass
    }

    /// The human-readable report: stores, one section per exporter/domain,
    /// then the VERDICT line.
    pub fn write_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "poolflow billing audit of {} store(s)",
            self.stores.len()
        )?;
        for (i, s) in self.stores.iter().enumerate() {
            writeln!(
                out,
                "  store {}: {}: {} billing records in {} blocks, handovers {}; \
                 non-billing records skipped (no record sequence) {}",
                i + 1,
                s.path,
                s.billing_records,
                s.billing_blocks,
                s.handovers,
                s.non_billing_records_skipped
            )?;
        }
        for g in &self.exporter_domains {
            writeln!(out)?;
            write_section(out, g)?;
        }
        writeln!(out)?;
        let t = &self.totals;
        let summary = format!(
            "{} exporter/domain(s), {} records present, {} missing (unexplained), \
             {} declared lost, {} benign duplicate(s), {} conflict(s), {} anomalies",
            t.exporter_domains,
            t.records_present,
            t.missing_records,
            t.declared_lost_records,
            t.benign_duplicate_sequences,
            t.conflicting_sequences,
            t.anomalies
        );
        match self.verdict {
            Verdict::Pass => writeln!(out, "VERDICT: PASS: {summary}")?,
            Verdict::Fail => {
                writeln!(out, "VERDICT: FAIL: {summary}")?;
                for reason in &self.failures {
                    writeln!(out, "  {reason}")?;
                }
            }
        }
        Ok(())
    }
}

fn write_section(out: &mut impl Write, g: &ExporterDomainReport) -> std::io::Result<()> {
    writeln!(
        out,
        "== billing exporter {} domain {}: {} ==",
        g.billing_exporter,
        g.domain,
        match g.verdict {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
        }
    )?;
    match (g.first_sequence, g.last_sequence) {
        (Some(first), Some(last)) => writeln!(out, "  sequences   {first}..={last}")?,
        _ => writeln!(out, "  sequences   none stored")?,
    }
    if let Some(next) = g.state_file_next_sequence {
        writeln!(
            out,
            "  state file  next sequence {next} (every sequence below was assigned)"
        )?;
    }
    if let Some(accounted) = g.exporter_accounted {
        writeln!(
            out,
            "  exporter    accounts for {accounted} record sequence(s) (sent or declared lost)"
        )?;
    }
    if g.expected_through != g.last_sequence
        && let Some(claimed) = g.expected_through
    {
        writeln!(
            out,
            "  expected    through {claimed} (claimed by a handover cookie or the exporter's statistics)"
        )?;
    }
    writeln!(
        out,
        "  present     {} records ({} copies stored)",
        g.records_present, g.copies_stored
    )?;
    for share in &g.stores {
        writeln!(
            out,
            "    {}: {} records, {}..={}",
            share.store, share.records, share.first_sequence, share.last_sequence
        )?;
    }
    if g.gaps.range_count == 0 {
        writeln!(out, "  gaps        none")?;
    } else {
        writeln!(
            out,
            "  gaps        {} missing records in {} range(s)",
            g.gaps.missing_records, g.gaps.range_count
        )?;
        for r in &g.gaps.ranges {
            writeln!(out, "    missing {}", format_range(r.first, r.last))?;
        }
        write_not_listed(out, g.gaps.ranges_not_listed, "range")?;
    }
    if g.declared_loss.range_count > 0 {
        writeln!(
            out,
            "  declared    {} records in {} range(s) declared lost by the exporter (never to be sent)",
            g.declared_loss.records, g.declared_loss.range_count
        )?;
        for r in &g.declared_loss.ranges {
            writeln!(
                out,
                "    declared loss {} ({} records), exporter restarted {}, peer {} ({})",
                format_range(r.first, r.last),
                r.records,
                r.exporter_restart,
                r.peer,
                r.store
            )?;
        }
        write_not_listed(out, g.declared_loss.ranges_not_listed, "range")?;
    }
    if g.duplicates.sequences == 0 {
        writeln!(out, "  duplicates  none")?;
    } else {
        writeln!(
            out,
            "  duplicates  {} sequences stored more than once with identical bytes \
             ({} extra copies, benign) in {} range(s)",
            g.duplicates.sequences, g.duplicates.extra_copies, g.duplicates.range_count
        )?;
        for r in &g.duplicates.ranges {
            let copies: Vec<String> = r
                .copies
                .iter()
                .map(|c| format!("{} x{}", c.store, c.copies))
                .collect();
            writeln!(
                out,
                "    duplicate {}: {}",
                format_range(r.first, r.last),
                copies.join(", ")
            )?;
        }
        write_not_listed(out, g.duplicates.ranges_not_listed, "range")?;
    }
    if g.conflicts.sequences == 0 {
        writeln!(out, "  conflicts   none")?;
    } else {
        writeln!(
            out,
            "  conflicts   {} sequences stored with DIFFERING bytes",
            g.conflicts.sequences
        )?;
        for c in &g.conflicts.listed {
            let copies: Vec<String> = c
                .copies
                .iter()
                .map(|copy| {
                    format!(
                        "{} block {} hash {}",
                        copy.store, copy.block_id, copy.record_hash
                    )
                })
                .collect();
            writeln!(out, "    CONFLICT {}: {}", c.sequence, copies.join("; "))?;
        }
        write_not_listed(out, g.conflicts.not_listed, "conflict")?;
    }
    if g.handovers.is_empty() {
        writeln!(out, "  handovers   none recorded")?;
    } else {
        writeln!(out, "  handovers   {}", g.handovers.len())?;
        for h in &g.handovers {
            let from = match h.from_pe {
                Some(pe) => format!("PE {pe:#010x}"),
                None => "(new exporter)".to_owned(),
            };
            let sequence = match h.record_sequence {
                Some(s) => format!(", stored through {s}"),
                None => String::new(),
            };
            writeln!(
                out,
                "    {} {} {from} -> PE {:#010x}{sequence}, peer {} ({})",
                h.at, h.kind, h.to_pe, h.peer, h.store
            )?;
        }
    }
    if !g.anomalies.is_empty() {
        writeln!(out, "  anomalies   {}", g.anomalies.len())?;
        for a in &g.anomalies {
            writeln!(out, "    {} block {}: {}", a.store, a.block_id, a.problem)?;
        }
    }
    Ok(())
}

fn write_not_listed(out: &mut impl Write, count: u64, what: &str) -> std::io::Result<()> {
    if count > 0 {
        writeln!(
            out,
            "    ... {count} more {what}(s) not listed (--list-limit)"
        )?;
    }
    Ok(())
}

fn format_range(first: u64, last: u64) -> String {
    if first == last {
        first.to_string()
    } else {
        format!("{first}..={last}")
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

fn assemble(
    stores: Vec<StoreSummary>,
    mut exporter_domains: Vec<ExporterDomainReport>,
    fail_on_declared_loss: bool,
) -> AuditReport {
    if fail_on_declared_loss {
        for g in &mut exporter_domains {
            if g.declared_loss.records > 0 {
                g.verdict = Verdict::Fail;
            }
        }
    }
    let mut totals = Totals {
        exporter_domains: exporter_domains.len() as u64,
        non_billing_records_skipped: stores.iter().map(|s| s.non_billing_records_skipped).sum(),
        ..Totals::default()
    };
    let mut failures = Vec::new();
    for g in &exporter_domains {
        totals.records_present += g.records_present;
        totals.missing_records = totals
            .missing_records
            .saturating_add(g.gaps.missing_records);
        totals.declared_lost_records = totals
            .declared_lost_records
            .saturating_add(g.declared_loss.records);
        totals.benign_duplicate_sequences += g.duplicates.sequences;
        totals.conflicting_sequences += g.conflicts.sequences;
        totals.anomalies += g.anomalies.len() as u64;
        if g.verdict == Verdict::Fail {
            let mut problems = Vec::new();
            if g.gaps.missing_records > 0 {
                let ranges: Vec<String> = g
                    .gaps
                    .ranges
                    .iter()
                    .take(5)
                    .map(|r| format_range(r.first, r.last))
                    .collect();
                let more = if g.gaps.range_count > ranges.len() as u64 {
                    ", ..."
                } else {
                    ""
                };
                problems.push(format!(
                    "{} missing records in {} unexplained gap(s) ({}{more})",
                    g.gaps.missing_records,
                    g.gaps.range_count,
                    ranges.join(", ")
                ));
            }
            if fail_on_declared_loss && g.declared_loss.records > 0 {
                problems.push(format!(
                    "{} records declared lost by the exporter in {} range(s)",
                    g.declared_loss.records, g.declared_loss.range_count
                ));
            }
            if g.conflicts.sequences > 0 {
                problems.push(format!("{} conflicting sequences", g.conflicts.sequences));
            }
            if !g.anomalies.is_empty() {
                problems.push(format!("{} unreadable block(s)", g.anomalies.len()));
            }
            failures.push(format!(
                "billing exporter {} domain {}: {}",
                g.billing_exporter,
                g.domain,
                problems.join(", ")
            ));
        }
    }
    // Proving continuity of nothing proves nothing: a typo in --exporter or
    // the wrong files must not pass.
    if exporter_domains.is_empty() {
        failures.push("no billing records or handovers found".to_owned());
    }
    AuditReport {
        verdict: if failures.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        failures,
        stores,
        exporter_domains,
        totals,
    }
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

/// What a store reader returns besides its entries.
struct StoreReadout {
    summary: StoreSummary,
    handovers: Vec<HandoverRow>,
    anomalies: Vec<BlockAnomaly>,
}

struct HandoverRow {
    key: GroupKey,
    at_ms: i64,
    peer: String,
    from_pe: Option<i64>,
    to_pe: i64,
    record_sequence: Option<u64>,
}

impl HandoverRow {
    fn into_report(self, store: &str) -> Handover {
        let kind = match self.from_pe {
            None => "introduction",
            Some(from) if from == self.to_pe => "reconnect",
            Some(_) => "handover",
        };
        Handover {
            at_ms: self.at_ms,
            at: format_ms(self.at_ms),
            store: store.to_owned(),
            kind,
            peer: self.peer,
            from_pe: self.from_pe,
            to_pe: self.to_pe,
            record_sequence: self.record_sequence,
        }
    }
}

struct BlockAnomaly {
    key: GroupKey,
    block_id: i64,
    problem: String,
}

fn format_ms(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(ms) => {
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
        Err(_) => format!("{ms} ms before 1970"),
    }
}

/// Reads one store inside one read transaction (a consistent snapshot even
/// while its collector writes), sending its billing records as entries in
/// (exporter, domain, sequence) order.
fn read_store(
    path: &Path,
    filter: GroupFilter,
    sender: &SyncSender<Vec<RecordEntry>>,
    progress: &ReadProgress,
) -> Result<StoreReadout> {
    let conn = Store::open_read_only(path)?;
    check_billing_schema(&conn, path)?;
    conn.execute_batch("BEGIN")?;

    let templates = read_templates(&conn)?;
    let mut summary = StoreSummary::default();
    (
        summary.non_billing_blocks,
        summary.non_billing_records_skipped,
    ) = conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(record_count), 0) FROM record_blocks
         WHERE billing_exporter IS NULL",
        [],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
    )?;
    let handovers = read_handovers(&conn, filter)?;
    summary.handovers = handovers.len() as u64;

    let mut keys = Vec::new();
    {
        let mut stmt = conn.prepare(
            "SELECT DISTINCT billing_exporter, domain FROM record_blocks
             WHERE billing_exporter IS NOT NULL",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let key = GroupKey {
                billing_exporter: row.get(0)?,
                domain: row.get(1)?,
            };
            if filter.accepts(key) {
                keys.push(key);
            }
        }
    }
    // Every reader must produce groups in the same order for the merge.
    keys.sort_unstable();
    for key in &keys {
        let blocks: i64 = conn.query_row(
            "SELECT COUNT(*) FROM record_blocks WHERE billing_exporter = ?1 AND domain = ?2",
            params![key.billing_exporter, key.domain],
            |r| r.get(0),
        )?;
        progress
            .blocks_total
            .fetch_add(blocks as u64, Ordering::Relaxed);
    }

    let mut reader = GroupReader {
        sender,
        batch: Vec::with_capacity(BATCH_ENTRIES),
        pending: VecDeque::new(),
        anomalies: Vec::new(),
    };
    for &key in &keys {
        read_group(&conn, key, &templates, &mut reader, &mut summary, progress)?;
    }
    reader.flush()?;
    conn.execute_batch("COMMIT")?;
    Ok(StoreReadout {
        summary,
        handovers,
        anomalies: reader.anomalies,
    })
}

/// A store from before schema version 3 has no record sequences at all:
/// say so rather than fail on a missing column.
fn check_billing_schema(conn: &Connection, path: &Path) -> Result<()> {
    let has_column = |column: &str| -> Result<bool> {
        Ok(conn.query_row(
            "SELECT COUNT(*) FROM pragma_table_info('record_blocks') WHERE name = ?1",
            [column],
            |r| r.get::<_, i64>(0),
        )? > 0)
    };
    let has_handovers: bool = conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'billing_handovers'",
        [],
        |r| Ok(r.get::<_, i64>(0)? > 0),
    )?;
    if !has_column("billing_exporter")? || !has_column("first_record_sequence")? || !has_handovers {
        bail!(
            "{} has no billing columns (record_blocks.billing_exporter, \
             first_record_sequence, billing_handovers): a store before schema version 3 \
             or not a collector store",
            path.display()
        );
    }
    Ok(())
}

/// Templates by row id; `None` for a damaged row (its blocks become
/// anomalies, the audit goes on).
fn read_templates(conn: &Connection) -> Result<HashMap<i64, Option<Template>>> {
    let mut stmt =
        conn.prepare("SELECT id, template_id, scope_field_count, fields FROM templates")?;
    let mut rows = stmt.query([])?;
    let mut templates = HashMap::new();
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        let template_id = u16::try_from(row.get::<_, i64>(1)?).ok();
        let scope_field_count = u16::try_from(row.get::<_, i64>(2)?).ok();
        let fields: Vec<u8> = row.get(3)?;
        let template = match (template_id, scope_field_count) {
            (Some(t), Some(s)) => decode_template(t, s, &fields),
            _ => None,
        };
        templates.insert(id, template);
    }
    Ok(templates)
}

fn read_handovers(conn: &Connection, filter: GroupFilter) -> Result<Vec<HandoverRow>> {
    let mut stmt = conn.prepare(
        "SELECT at_ms, billing_exporter, domain, peer, from_pe, to_pe, record_sequence
         FROM billing_handovers ORDER BY at_ms, id",
    )?;
    let mut rows = stmt.query([])?;
    let mut handovers = Vec::new();
    while let Some(row) = rows.next()? {
        let key = GroupKey {
            billing_exporter: row.get(1)?,
            domain: row.get(2)?,
        };
        if !filter.accepts(key) {
            continue;
        }
        handovers.push(HandoverRow {
            key,
            at_ms: row.get(0)?,
            peer: row.get(3)?,
            from_pe: row.get(4)?,
            to_pe: row.get(5)?,
            // Stored as the i64 bit pattern of the u64 sequence.
            record_sequence: row.get::<_, Option<i64>>(6)?.map(|s| s as u64),
        });
    }
    Ok(handovers)
}

/// Per-store state while streaming one group's blocks.
struct GroupReader<'a> {
    sender: &'a SyncSender<Vec<RecordEntry>>,
    batch: Vec<RecordEntry>,
    /// Records read but possibly not yet in order: a later block (ordered
    /// by its first sequence) may overlap them. Sorted by sequence.
    pending: VecDeque<RecordEntry>,
    anomalies: Vec<BlockAnomaly>,
}

impl GroupReader<'_> {
    /// Sends every pending record below `sequence` (all when `None`): no
    /// later block can hold a lower one.
    fn release_below(&mut self, sequence: Option<u64>) -> Result<()> {
        while let Some(front) = self.pending.front() {
            if sequence.is_some_and(|s| front.sequence >= s) {
                break;
            }
            let entry = self.pending.pop_front().expect("front exists");
            self.batch.push(entry);
            if self.batch.len() >= BATCH_ENTRIES {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_ENTRIES));
        self.sender
            .send(batch)
            .map_err(|_| anyhow!("the audit stopped reading"))
    }
}

fn read_group(
    conn: &Connection,
    key: GroupKey,
    templates: &HashMap<i64, Option<Template>>,
    reader: &mut GroupReader<'_>,
    summary: &mut StoreSummary,
    progress: &ReadProgress,
) -> Result<()> {
    {
        let mut stmt = conn.prepare_cached(
            "SELECT id, record_count FROM record_blocks
             WHERE billing_exporter = ?1 AND domain = ?2 AND first_record_sequence IS NULL",
        )?;
        let mut rows = stmt.query(params![key.billing_exporter, key.domain])?;
        while let Some(row) = rows.next()? {
            let record_count: i64 = row.get(1)?;
            reader.anomalies.push(BlockAnomaly {
                key,
                block_id: row.get(0)?,
                problem: format!(
                    "billing block without first_record_sequence: {record_count} records unplaceable"
                ),
            });
            progress.blocks_read.fetch_add(1, Ordering::Relaxed);
        }
    }
    // SQLite orders the i64 bit pattern signed; sequences from 2^63 on are
    // negative there. Reading the non-negative half first, then the
    // negative half, yields unsigned order, each half from the index.
    for (low, high) in [(0, i64::MAX), (i64::MIN, -1)] {
        let mut stmt = conn.prepare_cached(
            "SELECT id, first_record_sequence, template_ref, record_count, records
             FROM record_blocks
             WHERE billing_exporter = ?1 AND domain = ?2
               AND first_record_sequence BETWEEN ?3 AND ?4
             ORDER BY first_record_sequence, id",
        )?;
        let mut rows = stmt.query(params![key.billing_exporter, key.domain, low, high])?;
        while let Some(row) = rows.next()? {
            let block_id: i64 = row.get(0)?;
            let first_sequence = row.get::<_, i64>(1)? as u64;
            let template_ref: i64 = row.get(2)?;
            let record_count: i64 = row.get(3)?;
            let records = row.get_ref(4)?.as_blob()?;
            reader.release_below(Some(first_sequence))?;
            summary.billing_blocks += 1;
            progress.blocks_read.fetch_add(1, Ordering::Relaxed);
            let Some(Some(template)) = templates.get(&template_ref) else {
                reader.anomalies.push(BlockAnomaly {
                    key,
                    block_id,
                    problem: format!(
                        "template row {template_ref} missing or damaged: \
                         {record_count} records unreadable"
                    ),
                });
                continue;
            };
            let overlaps = reader
                .pending
                .back()
                .is_some_and(|last| last.sequence >= first_sequence);
            let mut split = 0u64;
            let mut problem = None;
            for (index, bytes) in DataRecordIter::new(template, records).enumerate() {
                let Ok(bytes) = bytes else {
                    problem = Some(format!(
                        "records BLOB breaks off after {split} of {record_count} records"
                    ));
                    break;
                };
                let Some(sequence) = first_sequence.checked_add(index as u64) else {
                    problem = Some("record sequence beyond 2^64-1".to_owned());
                    break;
                };
                reader.pending.push_back(RecordEntry {
                    key,
                    sequence,
                    hash: record_hash(bytes),
                    block_id,
                });
                split += 1;
            }
            if problem.is_none() && split != record_count as u64 {
                problem = Some(format!(
                    "record_count is {record_count} but the records BLOB holds {split}"
                ));
            }
            if let Some(problem) = problem {
                reader.anomalies.push(BlockAnomaly {
                    key,
                    block_id,
                    problem,
                });
            }
            summary.billing_records += split;
            progress.records_read.fetch_add(split, Ordering::Relaxed);
            // Blocks of one store normally follow each other without
            // overlap and `pending` stays sorted by appending; only
            // overlapping blocks (duplicates within the store) need a sort,
            // of the overlapping window only.
            if overlaps {
                reader.pending.make_contiguous().sort_unstable();
            }
        }
    }
    reader.release_below(None)
}

/// The receiving end of one store reader.
struct StoreStream {
    receiver: Receiver<Vec<RecordEntry>>,
    batch: Vec<RecordEntry>,
    position: usize,
}

impl StoreStream {
    fn new(receiver: Receiver<Vec<RecordEntry>>) -> Self {
        Self {
            receiver,
            batch: Vec::new(),
            position: 0,
        }
    }

    /// The next entry; `None` at the end (or when the reader failed: its
    /// error comes from joining it).
    fn next_entry(&mut self) -> Option<RecordEntry> {
        while self.position >= self.batch.len() {
            self.batch = self.receiver.recv().ok()?;
            self.position = 0;
        }
        let entry = self.batch[self.position];
        self.position += 1;
        Some(entry)
    }
}

/// K-way merge of the store streams into per-group accumulators.
fn merge_streams(
    streams: &mut [StoreStream],
    store_names: &[String],
    list_limit: usize,
    accounts: &BTreeMap<GroupKey, ExporterAccount>,
) -> BTreeMap<GroupKey, GroupAccumulator> {
    let mut heads = BinaryHeap::with_capacity(streams.len());
    for (store, stream) in streams.iter_mut().enumerate() {
        if let Some(entry) = stream.next_entry() {
            heads.push(Reverse((entry, store)));
        }
    }
    let mut groups = BTreeMap::new();
    let mut current: Option<GroupAccumulator> = None;
    // All copies of the sequence being merged: (store, hash, block id).
    let mut copies: Vec<(usize, u64, i64)> = Vec::new();
    let mut copies_of: Option<(GroupKey, u64)> = None;
    while let Some(Reverse((entry, store))) = heads.pop() {
        if let Some(next) = streams[store].next_entry() {
            heads.push(Reverse((next, store)));
        }
        if copies_of != Some((entry.key, entry.sequence)) {
            if let Some((_, sequence)) = copies_of
                && let Some(group) = current.as_mut()
            {
                group.observe(sequence, &mut copies, store_names);
            }
            copies.clear();
            copies_of = Some((entry.key, entry.sequence));
            if current.as_ref().is_none_or(|g| g.key != entry.key) {
                if let Some(done) = current.take() {
                    groups.insert(done.key, done);
                }
                current = Some(GroupAccumulator::new(
                    entry.key,
                    store_names.len(),
                    list_limit,
                    accounts,
                ));
            }
        }
        copies.push((store, entry.hash, entry.block_id));
    }
    if let (Some((_, sequence)), Some(mut group)) = (copies_of, current) {
        group.observe(sequence, &mut copies, store_names);
        groups.insert(group.key, group);
    }
    groups
}

struct OpenDuplicate {
    first: u64,
    last: u64,
    /// (store, copies of each sequence), by store.
    per_store: Vec<(usize, u64)>,
}

/// One exporter/domain while the merge walks its sequences in order.
struct GroupAccumulator {
    key: GroupKey,
    list_limit: usize,
    /// The lowest sequence not yet seen; `None` once u64::MAX was seen.
    next_expected: Option<u64>,
    first: Option<u64>,
    last: Option<u64>,
    present: u64,
    copies_stored: u64,
    gaps: Gaps,
    duplicates: Duplicates,
    /// The duplicate range being extended, listed once it ends.
    open_duplicate: Option<OpenDuplicate>,
    /// Copies per store of the current sequence; reused so a long run of
    /// duplicates costs no allocation per record.
    per_store_scratch: Vec<(usize, u64)>,
    conflicts: Conflicts,
    /// Per store: (records, first, last).
    shares: Vec<Option<(u64, u64, u64)>>,
    handovers: Vec<Handover>,
    anomalies: Vec<Anomaly>,
    /// What the exporter accounted for and declared lost (all stores).
    account: ExporterAccount,
    declared_loss: DeclaredLoss,
}

impl GroupAccumulator {
    fn new(
        key: GroupKey,
        stores: usize,
        list_limit: usize,
        accounts: &BTreeMap<GroupKey, ExporterAccount>,
    ) -> Self {
        Self {
            account: accounts.get(&key).cloned().unwrap_or_default(),
            declared_loss: DeclaredLoss::default(),
            key,
            list_limit,
            next_expected: Some(0),
            first: None,
            last: None,
            present: 0,
            copies_stored: 0,
            gaps: Gaps::default(),
            duplicates: Duplicates::default(),
            open_duplicate: None,
            per_store_scratch: Vec::new(),
            conflicts: Conflicts::default(),
            shares: vec![None; stores],
            handovers: Vec::new(),
            anomalies: Vec::new(),
        }
    }

    fn may_list(&self, listed: usize) -> bool {
        self.list_limit == 0 || listed < self.list_limit
    }

    /// Sequences `first..=last` are stored nowhere: the parts the exporter
    /// declared lost are declared loss, the rest an unexplained gap.
    fn add_gap(&mut self, first: u64, last: u64) {
        let unexplained = self.account.declared.missing(first, last);
        let mut cursor = first;
        for &(a, b) in &unexplained {
            if a > cursor {
                self.add_declared(cursor, a - 1);
            }
            self.add_unexplained_gap(a, b);
            cursor = b.saturating_add(1);
        }
        if unexplained.last().is_none_or(|&(_, b)| b < last) {
            self.add_declared(cursor, last);
        }
    }

    /// `first..=last` lies inside declared ranges: listed per declaration
    /// (with the restart time of the exporter that made it).
    fn add_declared(&mut self, first: u64, last: u64) {
        let count = (last - first).saturating_add(1);
        self.declared_loss.records = self.declared_loss.records.saturating_add(count);
        let mut pieces: Vec<DeclaredRange> = Vec::new();
        for row in &self.account.declarations {
            let (a, b) = (row.first.max(first), row.last.min(last));
            if a > b || pieces.iter().any(|p| p.first <= a && b <= p.last) {
                continue;
            }
            pieces.push(DeclaredRange {
                first: a,
                last: b,
                records: (b - a).saturating_add(1),
                exporter_restart_ms: row.system_init_ms,
                exporter_restart: format_ms(row.system_init_ms),
                store: row.store.clone(),
                peer: row.peer.clone(),
            });
        }
        for piece in pieces {
            self.declared_loss.range_count += 1;
            if self.may_list(self.declared_loss.ranges.len()) {
                self.declared_loss.ranges.push(piece);
            } else {
                self.declared_loss.ranges_not_listed += 1;
            }
        }
    }

    fn add_unexplained_gap(&mut self, first: u64, last: u64) {
        let missing = (last - first).saturating_add(1);
        self.gaps.missing_records = self.gaps.missing_records.saturating_add(missing);
        self.gaps.range_count += 1;
        if self.may_list(self.gaps.ranges.len()) {
            self.gaps.ranges.push(SequenceRange { first, last });
        } else {
            self.gaps.ranges_not_listed += 1;
        }
    }

    /// Accounts every stored copy of `sequence` (sequences arrive in
    /// ascending order). Sorts `copies` by store.
    fn observe(&mut self, sequence: u64, copies: &mut [(usize, u64, i64)], store_names: &[String]) {
        if let Some(expected) = self.next_expected
            && sequence > expected
        {
            self.add_gap(expected, sequence - 1);
        }
        self.next_expected = sequence.checked_add(1);
        self.first.get_or_insert(sequence);
        self.last = Some(sequence);
        self.present += 1;
        self.copies_stored += copies.len() as u64;
        for &(store, _, _) in copies.iter() {
            let share = self.shares[store].get_or_insert((0, sequence, sequence));
            share.0 += 1;
            share.2 = sequence;
        }
        if copies.len() == 1 {
            self.close_duplicate(store_names);
            return;
        }
        copies.sort_unstable();
        let first_hash = copies[0].1;
        if copies.iter().all(|&(_, hash, _)| hash == first_hash) {
            self.duplicates.sequences += 1;
            self.duplicates.extra_copies += copies.len() as u64 - 1;
            count_per_store(copies, &mut self.per_store_scratch);
            match &mut self.open_duplicate {
                Some(open)
                    if open.last.checked_add(1) == Some(sequence)
                        && open.per_store == self.per_store_scratch =>
                {
                    open.last = sequence;
                }
                _ => {
                    self.close_duplicate(store_names);
                    self.open_duplicate = Some(OpenDuplicate {
                        first: sequence,
                        last: sequence,
                        per_store: self.per_store_scratch.clone(),
                    });
                }
            }
        } else {
            self.close_duplicate(store_names);
            self.conflicts.sequences += 1;
            if self.may_list(self.conflicts.listed.len()) {
                self.conflicts.listed.push(Conflict {
                    sequence,
                    copies: copies
                        .iter()
                        .map(|&(store, hash, block_id)| ConflictCopy {
                            store: store_names[store].clone(),
                            block_id,
                            record_hash: format!("{hash:016x}"),
                        })
                        .collect(),
                });
            } else {
                self.conflicts.not_listed += 1;
            }
        }
    }

    fn close_duplicate(&mut self, store_names: &[String]) {
        if let Some(open) = self.open_duplicate.take() {
            self.duplicates.range_count += 1;
            if self.may_list(self.duplicates.ranges.len()) {
                self.duplicates.ranges.push(DuplicateRange {
                    first: open.first,
                    last: open.last,
                    copies: open
                        .per_store
                        .into_iter()
                        .map(|(store, copies)| StoreCopies {
                            store: store_names[store].clone(),
                            copies,
                        })
                        .collect(),
                });
            } else {
                self.duplicates.ranges_not_listed += 1;
            }
        }
    }

    fn finish(mut self, store_names: &[String]) -> ExporterDomainReport {
        self.close_duplicate(store_names);
        // A handover cookie signed by a collector says every record through
        // its sequence was stored: records up to there missing from every
        // store are lost even though no later record shows the gap.
        let claimed = self
            .handovers
            .iter()
            .filter_map(|h| h.record_sequence)
            .max();
        // The exporter's statistics account for every sequence below
        // `accounted`: the ones stored nowhere are a lost tail (or declared).
        let accounted_last = self.account.accounted.and_then(|n| n.checked_sub(1));
        let claimed = claimed.max(accounted_last);
        let expected_through = self.last.max(claimed);
        if let (Some(claimed), Some(expected)) = (claimed, self.next_expected)
            && claimed >= expected
        {
            self.add_gap(expected, claimed);
        }
        self.handovers.sort_by_key(|h| h.at_ms);
        let failed = self.gaps.missing_records > 0
            || self.conflicts.sequences > 0
            || !self.anomalies.is_empty();
        ExporterDomainReport {
            billing_exporter: self.key.billing_exporter,
            domain: self.key.domain,
            verdict: if failed { Verdict::Fail } else { Verdict::Pass },
            first_sequence: self.first,
            last_sequence: self.last,
            expected_through,
            exporter_accounted: self.account.accounted,
            state_file_next_sequence: self.account.state_file_next,
            declared_loss: self.declared_loss,
            records_present: self.present,
            copies_stored: self.copies_stored,
            gaps: self.gaps,
            duplicates: self.duplicates,
            conflicts: self.conflicts,
            stores: self
                .shares
                .iter()
                .enumerate()
                .filter_map(|(store, share)| {
                    share.map(|(records, first, last)| StoreShare {
                        store: store_names[store].clone(),
                        records,
                        first_sequence: first,
                        last_sequence: last,
                    })
                })
                .collect(),
            handovers: self.handovers,
            anomalies: self.anomalies,
        }
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

#[derive(Debug, Clone)]
struct DeclarationRow {
    first: u64,
    last: u64,
    system_init_ms: i64,
    store: String,
    peer: String,
}

/// The part of an exporter's state file the audit needs (other keys, such
/// as the cookies, are ignored).
#[derive(serde::Deserialize)]
struct ExporterStateFile {
    version: u32,
    exporter_id: u32,
    #[serde(default)]
    domains: Vec<ExporterStateDomain>,
}

#[derive(serde::Deserialize)]
struct ExporterStateDomain {
    domain: u32,
    next_sequence: u64,
}

fn read_exporter_state(
    path: &Path,
    filter: GroupFilter,
    accounts: &mut BTreeMap<GroupKey, ExporterAccount>,
) -> Result<()> {
    let text = std::fs::read_to_string(path)?;
    let state: ExporterStateFile = toml::from_str(&text).context("not an exporter state file")?;
    if state.version != 1 {
        bail!("exporter state file version {} unknown", state.version);
    }
    for d in state.domains {
        let key = GroupKey {
            billing_exporter: i64::from(state.exporter_id),
            domain: i64::from(d.domain),
        };
        if !filter.accepts(key) {
            continue;
        }
        let account = accounts.entry(key).or_default();
        account.state_file_next = account.state_file_next.max(Some(d.next_sequence));
        account.accounted = account.accounted.max(Some(d.next_sequence));
    }
    Ok(())
}

fn has_table(conn: &Connection, table: &str) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [table],
        |r| r.get::<_, i64>(0),
    )? > 0)
}

/// Reads the exporters' statistics and declared losses of one store (small
/// tables; a store before schema version 4 has none).
fn read_accounts(
    path: &Path,
    store: &str,
    filter: GroupFilter,
    accounts: &mut BTreeMap<GroupKey, ExporterAccount>,
) -> Result<()> {
    let conn = Store::open_read_only(path)?;
    if has_table(&conn, "exporter_totals")? {
        let mut stmt = conn.prepare(
            "SELECT billing_exporter, domain, MAX(exported_records + not_sent_records)
             FROM exporter_totals WHERE billing_exporter IS NOT NULL
             GROUP BY billing_exporter, domain",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let key = GroupKey {
                billing_exporter: row.get(0)?,
                domain: row.get(1)?,
            };
            if !filter.accepts(key) {
                continue;
            }
            let accounted = row.get::<_, i64>(2)?.max(0) as u64;
            let account = accounts.entry(key).or_default();
            account.accounted = account.accounted.max(Some(accounted));
        }
    }
    if has_table(&conn, "declared_losses")? {
        let mut stmt = conn.prepare(
            "SELECT billing_exporter, domain, first, last, system_init_ms, peer
             FROM declared_losses ORDER BY first, id",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let key = GroupKey {
                billing_exporter: row.get(0)?,
                domain: row.get(1)?,
            };
            if !filter.accepts(key) {
                continue;
            }
            let (first, last) = (row.get::<_, i64>(2)? as u64, row.get::<_, i64>(3)? as u64);
            if first > last {
                continue;
            }
            let account = accounts.entry(key).or_default();
            account.declared.insert(first, last);
            account.declarations.push(DeclarationRow {
                first,
                last,
                system_init_ms: row.get(4)?,
                store: store.to_owned(),
                peer: row.get(5)?,
            });
        }
    }
    Ok(())
}

/// `copies` sorted by store, as (store, copies) runs, into `out`.
fn count_per_store(copies: &[(usize, u64, i64)], out: &mut Vec<(usize, u64)>) {
    out.clear();
    for &(store, _, _) in copies {
        match out.last_mut() {
            Some((last_store, count)) if *last_store == store => *count += 1,
            _ => out.push((store, 1)),
        }
    }
}

/// The text report as a string.
pub fn report_text(report: &AuditReport) -> String {
    let mut out = Vec::new();
    report
        .write_text(&mut out)
        .expect("writing to a Vec cannot fail");
    String::from_utf8(out).expect("the report is UTF-8")
}
