//! Reading one collector's SQLite store for the audit: its billing records
//! as (sequence, record hash) entries, streamed per exporter/domain in
//! record-sequence order to the merge, plus its handovers, its unreadable
//! blocks and the exporters' account (statistics, declared losses). Also the
//! exporters' state files. The types the readers hand back are shared with
//! the PostgreSQL reader (`postgres`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;

use anyhow::{Context, Result, anyhow, bail};
use protocol::ipfix::Template;
use protocol::ipfix::message::DataRecordIter;
use rusqlite::{Connection, params};

use super::report::{Handover, StoreSummary, format_ms};
use super::{
    BATCH_ENTRIES, DeclarationRow, ExporterAccount, GroupFilter, GroupKey, ReadProgress,
    RecordEntry,
};
use crate::record::record_hash;
use crate::segments::{self, SegmentReader};
use crate::store::{Store, decode_template};

/// What a store reader returns besides its entries.
pub(super) struct StoreReadout {
    pub(super) summary: StoreSummary,
    pub(super) handovers: Vec<HandoverRow>,
    pub(super) anomalies: Vec<BlockAnomaly>,
}

pub(super) struct HandoverRow {
    pub(super) key: GroupKey,
    pub(super) at_ms: i64,
    pub(super) peer: String,
    pub(super) from_pe: Option<i64>,
    pub(super) to_pe: i64,
    pub(super) record_sequence: Option<u64>,
}

impl HandoverRow {
    pub(super) fn into_report(self, store: &str) -> Handover {
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

pub(super) struct BlockAnomaly {
    pub(super) key: GroupKey,
    pub(super) block_id: i64,
    pub(super) problem: String,
}

/// Reads one store inside one read transaction (a consistent snapshot even
/// while its collector writes), sending its billing records as entries in
/// (exporter, domain, sequence) order.
pub(super) fn read_store(
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
            if let Some(key) = filter.key(row.get(0)?, row.get(1)?) {
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

    let mut reader = GroupReader::new(sender);
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
        let Some(key) = filter.key(row.get(1)?, row.get(2)?) else {
            continue;
        };
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
pub(super) struct GroupReader<'a> {
    sender: &'a SyncSender<Vec<RecordEntry>>,
    batch: Vec<RecordEntry>,
    /// Records read but possibly not yet in order: a later block (ordered
    /// by its first sequence) may overlap them. Sorted by sequence.
    pub(super) pending: VecDeque<RecordEntry>,
    pub(super) anomalies: Vec<BlockAnomaly>,
}

impl<'a> GroupReader<'a> {
    /// A reader that sends its entries through `sender`.
    pub(super) fn new(sender: &'a SyncSender<Vec<RecordEntry>>) -> Self {
        Self {
            sender,
            batch: Vec::with_capacity(BATCH_ENTRIES),
            pending: VecDeque::new(),
            anomalies: Vec::new(),
        }
    }

    /// Sends every pending record below `sequence` (all when `None`): no
    /// later block can hold a lower one.
    pub(super) fn release_below(&mut self, sequence: Option<u64>) -> Result<()> {
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

    pub(super) fn flush(&mut self) -> Result<()> {
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
    let mut segments = SegmentReader::for_connection(conn);
    let locations = segments::location_columns(conn, "")?;
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
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT id, first_record_sequence, template_ref, record_count, records, {locations}
             FROM record_blocks
             WHERE billing_exporter = ?1 AND domain = ?2
               AND first_record_sequence BETWEEN ?3 AND ?4
             ORDER BY first_record_sequence, id"
        ))?;
        let mut rows = stmt.query(params![key.billing_exporter, key.domain, low, high])?;
        while let Some(row) = rows.next()? {
            let block_id: i64 = row.get(0)?;
            let first_sequence = row.get::<_, i64>(1)? as u64;
            let template_ref: i64 = row.get(2)?;
            let record_count: i64 = row.get(3)?;
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
            // The bytes are in the row, or in a segment file that must be
            // there: a store copied without its segments is unreadable.
            let records = match segments.row_bytes(row, 4) {
                Ok(records) => records,
                Err(err) => {
                    reader.anomalies.push(BlockAnomaly {
                        key,
                        block_id,
                        problem: format!("{record_count} records unreadable: {err:#}"),
                    });
                    continue;
                }
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

pub(super) fn read_exporter_state(
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
        let Some(key) = filter.key(i64::from(state.exporter_id), i64::from(d.domain)) else {
            continue;
        };
        let account = accounts.entry(key).or_default();
        account.state_file_next = account.state_file_next.max(Some(d.next_sequence));
        account.account(d.next_sequence);
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
pub(super) fn read_accounts(
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
            let Some(key) = filter.key(row.get(0)?, row.get(1)?) else {
                continue;
            };
            let accounted = row.get::<_, i64>(2)?.max(0) as u64;
            accounts.entry(key).or_default().account(accounted);
        }
    }
    if has_table(&conn, "declared_losses")? {
        let mut stmt = conn.prepare(
            "SELECT billing_exporter, domain, first, last, system_init_ms, peer
             FROM declared_losses ORDER BY first, id",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let Some(key) = filter.key(row.get(0)?, row.get(1)?) else {
                continue;
            };
            let (first, last) = (row.get::<_, i64>(2)? as u64, row.get::<_, i64>(3)? as u64);
            if first > last {
                continue;
            }
            accounts.entry(key).or_default().declare(DeclarationRow {
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
