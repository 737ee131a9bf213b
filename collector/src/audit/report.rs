//! The audit's findings ([`AuditReport`] and its parts, which are also the
//! `--json` output), how the per-exporter/domain results become the verdict
//! and its failure lines ([`assemble`]), and the text report.

use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

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

pub(super) fn assemble(
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

pub(super) fn format_ms(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(ms) => {
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
        Err(_) => format!("{ms} ms before 1970"),
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
