//! Durable record storage in SQLite (WAL, batched transactions).
//!
//! A record counts as stored only once the transaction holding it commits;
//! [`Store::commit_batch`] returns after that commit. The schema is described
//! in README.md ("SQLite schema") and created by [`Store::open`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use protocol::ipfix::message::DataRecordIter;
use protocol::ipfix::{DataRecord, FieldSpecifier, MessageHeader, Template};
use rusqlite::{Connection, OptionalExtension, params};

use crate::batch::{Batch, BillingTag, RecordBlock, TotalsReport};
use crate::ledger::{Ledger, RangeSet, SharedLedger, take_new};
use crate::record::{SequenceEventKind, StoredRecord, flow_fields};
use crate::segments::{SegmentReader, SegmentWriter};

/// Bump when the schema changes; [`Store::open`] refuses unknown versions.
/// 2: records stored in blocks (one row per message and template) instead
/// of one row per record.
/// 3: billing columns on record blocks, billing ranges and handovers.
/// 4: exporters' reliability statistics (`exporter_totals`) and the losses
/// they declared (`declared_losses`).
/// 5: `shipping_watermark`, how far the PostgreSQL shipper got.
/// 6: record bytes in append-only segment files (`segment`,
/// `segment_offset`, `segment_length`; `records` left empty), and the
/// billing index covers billing blocks only (partial index), so plain
/// UDP/TCP blocks no longer pay for its maintenance. Rows of older
/// versions keep their bytes in `records` and are read as before.
pub const SCHEMA_VERSION: i64 = 6;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS exporters (
    id            INTEGER PRIMARY KEY,
    address       TEXT NOT NULL,      -- "ip:port" of the exporting process
    transport     TEXT NOT NULL,      -- udp | tcp | sctp
    first_seen_ms INTEGER NOT NULL,
    UNIQUE (address, transport)
);
CREATE TABLE IF NOT EXISTS templates (
    id                INTEGER PRIMARY KEY,
    template_id       INTEGER NOT NULL,
    scope_field_count INTEGER NOT NULL,
    fields            BLOB NOT NULL,  -- 8 bytes a field: enterprise u32, id u16, length u16 (BE)
    UNIQUE (template_id, scope_field_count, fields)
);
CREATE TABLE IF NOT EXISTS record_blocks (
    id                 INTEGER PRIMARY KEY,
    exporter_id        INTEGER NOT NULL REFERENCES exporters(id),
    domain             INTEGER NOT NULL,  -- observation domain id
    template_ref       INTEGER NOT NULL REFERENCES templates(id),
    export_time        INTEGER NOT NULL,  -- message export time, unix seconds
    message_sequence   INTEGER NOT NULL,  -- IPFIX header sequence number
    first_record_index INTEGER NOT NULL,  -- position of the first record among the message's
    record_count       INTEGER NOT NULL,
    received_ms        INTEGER NOT NULL,  -- collector clock, unix milliseconds
    records            BLOB NOT NULL,     -- the data records as received, back to back
                                          -- (empty when they are in a segment)
    billing_exporter   INTEGER,           -- billing exporter id (Cookie Echo); NULL: not billing
    first_record_sequence INTEGER,        -- record sequence of the first record (billing)
    segment            INTEGER,           -- segment file of the records; NULL: in `records`
    segment_offset     INTEGER,           -- their byte offset there
    segment_length     INTEGER            -- and byte length
);
CREATE INDEX IF NOT EXISTS record_blocks_by_exporter_domain_time
    ON record_blocks (exporter_id, domain, export_time);
CREATE TABLE IF NOT EXISTS billing_ranges (
    billing_exporter INTEGER NOT NULL,
    domain           INTEGER NOT NULL,
    first            INTEGER NOT NULL,  -- record sequences first..=last are stored here
    last             INTEGER NOT NULL,
    PRIMARY KEY (billing_exporter, domain, first)
);
CREATE TABLE IF NOT EXISTS billing_handovers (
    id               INTEGER PRIMARY KEY,
    at_ms            INTEGER NOT NULL,
    billing_exporter INTEGER NOT NULL,
    domain           INTEGER NOT NULL,
    peer             TEXT NOT NULL,     -- the exporter's transport address
    from_pe          INTEGER,           -- PE that signed the echoed cookie; NULL: introduction
    to_pe            INTEGER NOT NULL,  -- this collector
    record_sequence  INTEGER            -- last record sequence the echoed cookie vouches for
);
CREATE TABLE IF NOT EXISTS exporter_totals (
    id                   INTEGER PRIMARY KEY,
    peer                 TEXT NOT NULL,     -- "ip:port" of the exporting process
    transport            TEXT NOT NULL,
    billing_exporter     INTEGER,           -- billing exporter id; NULL: plain session
    exporting_process_id INTEGER NOT NULL,  -- IE 144 as sent
    domain               INTEGER NOT NULL,  -- IE 149: the domain counted
    system_init_ms       INTEGER NOT NULL,  -- IE 160: when that exporter process started
    exported_messages    INTEGER NOT NULL,  -- IE 41 (highest received)
    exported_records     INTEGER NOT NULL,  -- IE 42 (highest received)
    not_sent_records     INTEGER NOT NULL,  -- IE 166 (highest received)
    observation_ms       INTEGER NOT NULL,  -- IE 323 of the latest statistics
    received_ms          INTEGER NOT NULL,
    UNIQUE (peer, exporting_process_id, domain, system_init_ms)
);
CREATE TABLE IF NOT EXISTS declared_losses (
    id               INTEGER PRIMARY KEY,
    billing_exporter INTEGER NOT NULL,
    domain           INTEGER NOT NULL,
    first            INTEGER NOT NULL,  -- record sequences first..=last will never be sent
    last             INTEGER NOT NULL,
    at_ms            INTEGER NOT NULL,  -- when this collector recorded the declaration
    system_init_ms   INTEGER NOT NULL,  -- when the declaring exporter process started
    peer             TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS domain_stats (
    exporter_id      INTEGER NOT NULL REFERENCES exporters(id),
    domain           INTEGER NOT NULL,
    records          INTEGER NOT NULL,  -- data records stored
    lost_records     INTEGER NOT NULL,  -- sum of sequence gaps
    sequence_events  INTEGER NOT NULL,  -- gaps, late messages and resyncs
    last_sequence    INTEGER,           -- last message sequence number seen
    updated_ms       INTEGER NOT NULL,
    PRIMARY KEY (exporter_id, domain)
);
CREATE TABLE IF NOT EXISTS sequence_events (
    id          INTEGER PRIMARY KEY,
    exporter_id INTEGER NOT NULL REFERENCES exporters(id),
    domain      INTEGER NOT NULL,
    stream      INTEGER NOT NULL,
    at_ms       INTEGER NOT NULL,
    kind        TEXT NOT NULL,          -- gap | behind | resync
    sequence    INTEGER NOT NULL,       -- sequence number of the message
    records     INTEGER NOT NULL        -- lost (gap) or behind (late) records
);
CREATE TABLE IF NOT EXISTS shipping_watermark (
    stream     TEXT PRIMARY KEY,        -- blocks | handovers | declared_losses | totals
    position   INTEGER NOT NULL,        -- rows up to here are in PostgreSQL (id, or received_ms for totals)
    updated_ms INTEGER NOT NULL
);
"#;

/// WAL bytes between automatic checkpoints (64 MiB, turned into pages of
/// the file's page size). Larger than SQLite's 1000 pages: at millions of
/// records/s fewer, larger checkpoints cost fewer fsyncs.
const WAL_AUTOCHECKPOINT_BYTES: i64 = 64 << 20;

/// Page size of a new store. SQLite writes the WAL and checkpoints a page
/// per system call: with 64 KiB pages a block-heavy store makes 16 times
/// fewer of them than with the default 4 KiB, and its B-trees are
/// shallower (BENCHMARKS.md, "Where the writer's time went"). An existing
/// file keeps the page size it was created with.
const NEW_STORE_PAGE_SIZE: i64 = 65_536;

/// Per (exporter, domain) totals accumulated across commits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainStats {
    /// Data records stored.
    pub records: u64,
    /// Records lost in sequence gaps.
    pub lost_records: u64,
    /// Gaps, late messages and resyncs.
    pub sequence_events: u64,
    /// Last message sequence number seen.
    pub last_sequence: Option<u32>,
}

/// Per (exporter id, domain) changes of one commit.
#[derive(Default)]
struct StatsDelta {
    records: u64,
    lost: u64,
    events: u64,
    last_sequence: Option<u32>,
}

/// The SQLite store of one collector.
pub struct Store {
    conn: Connection,
    /// Where the blocks' record bytes go (synced before each commit).
    segments: SegmentWriter,
    /// Exporter ids by transport, then address (looked up by `&str`).
    exporter_ids: HashMap<&'static str, HashMap<String, i64>>,
    /// Template row ids; few entries, found by pointer first.
    template_ids: Vec<(Arc<Template>, i64)>,
    /// Billing record sequences durably stored here; read by sessions to
    /// issue cookies, written only by [`Store::commit`] after a commit.
    ledger: SharedLedger,
}

impl Store {
    /// Opens (creating if needed) the database, in WAL mode.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)
            .with_context(|| format!("opening SQLite database {}", path.display()))?;
        // WAL lets readers (query, audit) run while the collector writes;
        // synchronous=FULL makes a commit durable before we acknowledge it,
        // which billing needs (NORMAL could lose the last commits on power
        // loss in WAL mode).
        // The page size must be chosen before the first table exists (and
        // before WAL mode): it only takes on a new, empty file.
        conn.pragma_update(None, "page_size", NEW_STORE_PAGE_SIZE)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let page_size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
        conn.pragma_update(
            None,
            "wal_autocheckpoint",
            (WAL_AUTOCHECKPOINT_BYTES / page_size.max(512)).max(1),
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            anyhow::bail!(
                "{} has schema version {version}, this collector knows up to {SCHEMA_VERSION}",
                path.display()
            );
        }
        if version == 1 {
            anyhow::bail!(
                "{} has schema version 1 (one row per record); this collector writes version \
                 {SCHEMA_VERSION} (record blocks): use a new database file",
                path.display()
            );
        }
        // 3 -> 4 and 4 -> 5 only add tables (created below by SCHEMA).
        if (2..6).contains(&version) {
            // 5 -> 6: new blocks' bytes go to segments (old rows keep
            // theirs), and the billing index becomes partial (created below).
            if !crate::segments::has_location_columns(&conn)? {
                conn.execute_batch(
                    "ALTER TABLE record_blocks ADD COLUMN segment INTEGER;
                     ALTER TABLE record_blocks ADD COLUMN segment_offset INTEGER;
                     ALTER TABLE record_blocks ADD COLUMN segment_length INTEGER;",
                )?;
            }
            conn.execute_batch("DROP INDEX IF EXISTS record_blocks_by_billing;")?;
        }
        if version == 2 {
            // 2 -> 3 only adds: billing columns (NULL for old rows) and tables.
            conn.execute_batch(
                "ALTER TABLE record_blocks ADD COLUMN billing_exporter INTEGER;
                 ALTER TABLE record_blocks ADD COLUMN first_record_sequence INTEGER;",
            )?;
        }
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(
            "CREATE INDEX IF NOT EXISTS record_blocks_by_billing
                ON record_blocks (billing_exporter, domain, first_record_sequence)
                WHERE billing_exporter IS NOT NULL;",
        )?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        let ledger = load_ledger(&conn)?;
        let segments = SegmentWriter::open(path)?;
        Ok(Self {
            conn,
            segments,
            exporter_ids: HashMap::new(),
            template_ids: Vec::new(),
            ledger: Arc::new(Mutex::new(ledger)),
        })
    }

    /// Opens an existing database read-only (query, audit).
    pub fn open_read_only(path: &Path) -> Result<Connection> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening SQLite database {} read-only", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(conn)
    }

    /// The read-write connection (tests and tools).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The billing ledger (what this store holds per exporter and domain).
    pub fn ledger(&self) -> SharedLedger {
        Arc::clone(&self.ledger)
    }

    fn exporter_id(&mut self, address: &str, transport: &'static str, now_ms: i64) -> Result<i64> {
        if let Some(id) = self
            .exporter_ids
            .get(transport)
            .and_then(|by_address| by_address.get(address))
        {
            return Ok(*id);
        }
        self.conn.execute(
            "INSERT OR IGNORE INTO exporters (address, transport, first_seen_ms) VALUES (?1, ?2, ?3)",
            params![address, transport, now_ms],
        )?;
        let id: i64 = self.conn.query_row(
            "SELECT id FROM exporters WHERE address = ?1 AND transport = ?2",
            params![address, transport],
            |r| r.get(0),
        )?;
        self.exporter_ids
            .entry(transport)
            .or_default()
            .insert(address.to_owned(), id);
        Ok(id)
    }

    fn template_ref(&mut self, template: &Arc<Template>) -> Result<i64> {
        if let Some((_, id)) = self
            .template_ids
            .iter()
            .find(|(t, _)| Arc::ptr_eq(t, template) || **t == **template)
        {
            return Ok(*id);
        }
        let fields = encode_template_fields(template);
        self.conn.execute(
            "INSERT OR IGNORE INTO templates (template_id, scope_field_count, fields)
             VALUES (?1, ?2, ?3)",
            params![template.id, template.scope_field_count, fields],
        )?;
        let id: i64 = self.conn.query_row(
            "SELECT id FROM templates WHERE template_id = ?1 AND scope_field_count = ?2
                AND fields = ?3",
            params![template.id, template.scope_field_count, fields],
            |r| r.get(0),
        )?;
        // Bounded: a pathological exporter cycling templates must not grow
        // this without limit; the table itself dedups.
        if self.template_ids.len() >= 1024 {
            self.template_ids.clear();
        }
        self.template_ids.push((Arc::clone(template), id));
        Ok(id)
    }

    /// Stores the blocks and sequence events of `batches` in one
    /// transaction; returns once it has committed (the records are then
    /// durable).
    pub fn commit(&mut self, batches: &[Batch], now_ms: i64) -> Result<()> {
        // Resolve ids before the transaction borrows the connection. Blocks
        // of one session come in runs: remember the last one's ids.
        let blocks: usize = batches.iter().map(|b| b.blocks.len()).sum();
        let mut refs = Vec::with_capacity(blocks);
        let mut last: Option<(&RecordBlock, i64, i64)> = None;
        for block in batches.iter().flat_map(|b| &b.blocks) {
            let ids = match last {
                Some((prev, exporter, template))
                    if Arc::ptr_eq(&prev.exporter, &block.exporter)
                        && prev.transport == block.transport
                        && Arc::ptr_eq(&prev.template, &block.template) =>
                {
                    (exporter, template)
                }
                _ => (
                    self.exporter_id(&block.exporter, block.transport, now_ms)?,
                    self.template_ref(&block.template)?,
                ),
            };
            refs.push(ids);
            last = Some((block, ids.0, ids.1));
        }
        let mut event_ids = Vec::new();
        for e in batches.iter().flat_map(|b| &b.events) {
            event_ids.push(self.exporter_id(&e.exporter, e.transport, now_ms)?);
        }
        // Billing ranges as they will be once this transaction commits:
        // records already stored (earlier, or earlier in this transaction)
        // are dropped, which makes replays idempotent.
        let mut pending = BillingPending::new(&self.ledger);
        self.segments.begin()?;
        let segments = &mut self.segments;
        let tx = self.conn.transaction()?;
        let mut stats: HashMap<(i64, u32), StatsDelta> = HashMap::new();
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO record_blocks (exporter_id, domain, template_ref, export_time,
                    message_sequence, first_record_index, record_count, received_ms, records,
                    billing_exporter, first_record_sequence, segment, segment_offset,
                    segment_length)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, X'', ?9, ?10, ?11, ?12, ?13)",
            )?;
            let mut refs = refs.iter();
            // One (exporter, domain) usually fills a whole batch: keep its
            // stats entry at hand instead of hashing every block.
            let mut current: Option<((i64, u32), StatsDelta)> = None;
            for batch in batches {
                for block in &batch.blocks {
                    let (exporter_id, template_ref) = *refs.next().expect("one per block");
                    let bytes = batch.block_bytes(block);
                    let pieces = match block.billing {
                        None => vec![(0, block.record_count as usize, None, bytes)],
                        Some(tag) => billing_pieces(block, tag, bytes, &mut pending),
                    };
                    for (first_index, count, sequence, piece) in pieces {
                        let at = segments.stage(piece);
                        insert.execute(params![
                            exporter_id,
                            block.domain,
                            template_ref,
                            block.export_time,
                            block.message_sequence,
                            block.first_record_index + first_index as u32,
                            count as u32,
                            block.received_ms,
                            block.billing.map(|t| t.exporter_id),
                            sequence.map(|s: u64| s as i64),
                            at.segment,
                            at.offset as i64,
                            at.length as i64,
                        ])?;
                    }
                    let key = (exporter_id, block.domain);
                    match &mut current {
                        Some((k, delta)) if *k == key => {
                            delta.records += block.record_count as u64;
                            delta.last_sequence = Some(block.message_sequence);
                        }
                        _ => {
                            if let Some((k, delta)) = current.take() {
                                merge(stats.entry(k).or_default(), delta);
                            }
                            current = Some((
                                key,
                                StatsDelta {
                                    records: block.record_count as u64,
                                    last_sequence: Some(block.message_sequence),
                                    ..StatsDelta::default()
                                },
                            ));
                        }
                    }
                }
            }
            if let Some((k, delta)) = current.take() {
                merge(stats.entry(k).or_default(), delta);
            }
            let mut insert_event = tx.prepare_cached(
                "INSERT INTO sequence_events (exporter_id, domain, stream, at_ms, kind, sequence, records)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for (e, id) in batches.iter().flat_map(|b| &b.events).zip(&event_ids) {
                insert_event.execute(params![
                    id,
                    e.domain,
                    e.stream,
                    e.at_ms,
                    e.kind.as_str(),
                    e.sequence,
                    clamp_i64(e.records)
                ])?;
                let entry = stats.entry((*id, e.domain)).or_default();
                entry.events += 1;
                if e.kind == SequenceEventKind::Gap {
                    entry.lost += e.records;
                }
            }
            let mut upsert = tx.prepare_cached(
                "INSERT INTO domain_stats (exporter_id, domain, records, lost_records, sequence_events,
                    last_sequence, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (exporter_id, domain) DO UPDATE SET
                    records = records + excluded.records,
                    lost_records = lost_records + excluded.lost_records,
                    sequence_events = sequence_events + excluded.sequence_events,
                    last_sequence = COALESCE(excluded.last_sequence, last_sequence),
                    updated_ms = excluded.updated_ms",
            )?;
            for ((id, domain), d) in &stats {
                upsert.execute(params![
                    id,
                    domain,
                    clamp_i64(d.records),
                    clamp_i64(d.lost),
                    clamp_i64(d.events),
                    d.last_sequence,
                    now_ms
                ])?;
            }
        }
        {
            let mut insert_handover = tx.prepare_cached(
                "INSERT INTO billing_handovers (at_ms, billing_exporter, domain, peer, from_pe,
                    to_pe, record_sequence) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for h in batches.iter().flat_map(|b| &b.handovers) {
                insert_handover.execute(params![
                    h.at_ms,
                    h.exporter_id,
                    h.domain,
                    h.peer,
                    h.from_pe,
                    h.to_pe,
                    h.record_sequence.map(|s| s as i64)
                ])?;
            }
            let mut delete_ranges = tx.prepare_cached(
                "DELETE FROM billing_ranges WHERE billing_exporter = ?1 AND domain = ?2",
            )?;
            let mut insert_range = tx.prepare_cached(
                "INSERT INTO billing_ranges (billing_exporter, domain, first, last)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for ((exporter, domain), set) in &pending.changed {
                delete_ranges.execute(params![exporter, domain])?;
                for (first, last) in set.ranges() {
                    insert_range.execute(params![exporter, domain, first as i64, last as i64])?;
                }
            }
        }
        let mut declared = HashMap::new();
        for report in batches.iter().flat_map(|b| &b.totals) {
            store_totals(&tx, report)?;
            if let Some(ranges) = declaration(report, &mut pending, &mut declared) {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO declared_losses (billing_exporter, domain, first, last, at_ms,
                        system_init_ms, peer) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?;
                let (exporter, _) = report.billing.expect("billing declaration");
                for (first, last) in ranges {
                    insert.execute(params![
                        exporter,
                        report.stats.observation_domain_id,
                        first as i64,
                        last as i64,
                        now_ms,
                        clamp_i64(report.stats.system_init_ms),
                        &*report.peer,
                    ])?;
                }
            }
        }
        // The rows point at the staged bytes: those reach the disk first
        // (on error the transaction is dropped, so rolled back).
        segments.sync()?;
        tx.commit()?;
        // Durable now: sessions may issue cookies for these records.
        let mut ledger = self.ledger.lock().expect("ledger lock");
        for (key, set) in pending.changed {
            ledger.stored.insert(key, set);
        }
        for (key, set) in declared {
            ledger.declared.insert(key, set);
        }
        Ok(())
    }

    /// Totals for one exporter address and domain.
    pub fn domain_stats(&self, address: &str, domain: u32) -> Result<Option<DomainStats>> {
        Ok(self
            .conn
            .query_row(
                "SELECT s.records, s.lost_records, s.sequence_events, s.last_sequence
                 FROM domain_stats s JOIN exporters e ON e.id = s.exporter_id
                 WHERE e.address = ?1 AND s.domain = ?2",
                params![address, domain],
                |r| {
                    Ok(DomainStats {
                        records: r.get::<_, i64>(0)? as u64,
                        lost_records: r.get::<_, i64>(1)? as u64,
                        sequence_events: r.get::<_, i64>(2)? as u64,
                        last_sequence: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// Number of stored records.
    pub fn record_count(&self) -> Result<u64> {
        let n: i64 = self.conn.query_row(
            "SELECT COALESCE(SUM(record_count), 0) FROM record_blocks",
            [],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }
}

/// Keeps the highest counts an exporter process reported for a domain (the
/// counters only grow; an older report arriving late changes nothing).
fn store_totals(tx: &rusqlite::Transaction<'_>, report: &TotalsReport) -> Result<()> {
    let s = &report.stats;
    tx.prepare_cached(
        "INSERT INTO exporter_totals (peer, transport, billing_exporter, exporting_process_id,
            domain, system_init_ms, exported_messages, exported_records, not_sent_records,
            observation_ms, received_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (peer, exporting_process_id, domain, system_init_ms) DO UPDATE SET
            billing_exporter = COALESCE(excluded.billing_exporter, billing_exporter),
            exported_messages = MAX(exported_messages, excluded.exported_messages),
            exported_records = MAX(exported_records, excluded.exported_records),
            not_sent_records = MAX(not_sent_records, excluded.not_sent_records),
            observation_ms = MAX(observation_ms, excluded.observation_ms),
            received_ms = excluded.received_ms",
    )?
    .execute(params![
        &*report.peer,
        report.transport,
        report.billing.map(|(exporter, _)| exporter),
        s.exporting_process_id,
        s.observation_domain_id,
        clamp_i64(s.system_init_ms),
        clamp_i64(s.exported_messages),
        clamp_i64(s.exported_records),
        clamp_i64(s.not_sent_records),
        clamp_i64(s.observation_ms),
        report.received_ms,
    ])?;
    Ok(())
}

/// The ranges a billing exporter's statistics declare lost here: every
/// record sequence from the association's start (after the echoed cookie)
/// below `exported + not sent` was sent on this association before the
/// statistics, or will never be sent; what this store does not hold (and
/// has not recorded as declared) is the latter. Refused, counted and logged
/// when it exceeds what the exporter says it did not send: then it is a
/// loss on the way, not a declaration, and contiguity must not move past it.
fn declaration(
    report: &TotalsReport,
    pending: &mut BillingPending<'_>,
    declared: &mut HashMap<(u32, u32), RangeSet>,
) -> Option<Vec<(u64, u64)>> {
    let (exporter, start) = report.billing?;
    let stats = &report.stats;
    let accounted = stats.accounted();
    if accounted > crate::ledger::MAX_ECHOED_SEQUENCE {
        // No exporter gets there (see MAX_ECHOED_SEQUENCE); a claim beyond
        // it is broken or hostile and would declare most of the space.
        metrics::counter!("poolflow_collector_statistics_refused_total", "reason" => "out_of_range")
            .increment(1);
        tracing::warn!(peer = %report.peer, exporter, accounted,
              "exporter statistics beyond any exporter's range: not treated as a declaration");
        return None;
    }
    if accounted <= start {
        return None;
    }
    let key = (exporter, stats.observation_domain_id);
    let missing = pending.set(key).missing(start, accounted - 1);
    if missing.is_empty() {
        return None;
    }
    let set = declared.entry(key).or_insert_with(|| {
        pending
            .ledger
            .lock()
            .expect("ledger lock")
            .declared
            .get(&key)
            .cloned()
            .unwrap_or_default()
    });
    let new: Vec<(u64, u64)> = missing
        .into_iter()
        .flat_map(|(a, b)| set.missing(a, b))
        .collect();
    let count: u64 = new.iter().map(|(a, b)| b - a + 1).sum();
    if count == 0 {
        return None;
    }
    if count > stats.not_sent_records {
        metrics::counter!("poolflow_collector_statistics_refused_total", "reason" => "undeclared_gap")
            .increment(1);
        tracing::warn!(peer = %report.peer, exporter, domain = key.1, missing = count,
              not_sent = stats.not_sent_records,
              "exporter statistics account for records neither received nor declared lost; \
               not treated as a declaration");
        return None;
    }
    for (a, b) in &new {
        set.insert(*a, *b);
    }
    metrics::counter!("poolflow_collector_declared_lost_records_total").increment(count);
    tracing::warn!(peer = %report.peer, exporter, domain = key.1, records = count,
          ranges = ?new, "exporter declared records lost (restart); contiguity moves past them");
    Some(new)
}

fn merge(into: &mut StatsDelta, from: StatsDelta) {
    into.records += from.records;
    into.lost += from.lost;
    into.events += from.events;
    if from.last_sequence.is_some() {
        into.last_sequence = from.last_sequence;
    }
}

/// A template's field specifiers as stored in `templates.fields`.
pub fn encode_template_fields(template: &Template) -> Vec<u8> {
    let mut out = Vec::with_capacity(template.fields.len() * 8);
    for f in &template.fields {
        out.extend_from_slice(&f.enterprise.to_be_bytes());
        out.extend_from_slice(&f.id.to_be_bytes());
        out.extend_from_slice(&f.length.to_be_bytes());
    }
    out
}

/// The template stored as `templates` row values; `None` if damaged.
pub fn decode_template(
    template_id: u16,
    scope_field_count: u16,
    fields: &[u8],
) -> Option<Template> {
    if fields.is_empty() || fields.len() % 8 != 0 {
        return None;
    }
    let specs = fields
        .chunks_exact(8)
        .map(|c| FieldSpecifier {
            enterprise: u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
            id: u16::from_be_bytes([c[4], c[5]]),
            length: u16::from_be_bytes([c[6], c[7]]),
        })
        .collect();
    Some(Template::new(template_id, scope_field_count, specs))
}

/// One stored block as read back: what [`decode_block`] needs.
#[derive(Debug, Clone, Copy)]
pub struct StoredBlock<'a> {
    /// "ip:port" of the exporting process.
    pub exporter: &'a str,
    /// Transport label: udp, tcp, sctp.
    pub transport: &'static str,
    /// Observation domain id.
    pub domain: u32,
    /// The template the records follow.
    pub template: &'a Template,
    /// Export time of the message, unix seconds.
    pub export_time: u32,
    /// Sequence number of the message header.
    pub message_sequence: u32,
    /// Position of the first record among the message's data records.
    pub first_record_index: u32,
    /// When the message arrived, unix milliseconds.
    pub received_ms: i64,
    /// The records' bytes, back to back.
    pub records: &'a [u8],
}

/// The columns, in this order, that a reader of whole blocks selects for
/// [`BlockReader`] (more may follow them), from [`BLOCK_TABLES`]: 15 of
/// them, the last three where the records are
/// ([`crate::segments::location_columns`]).
pub fn block_columns(conn: &Connection) -> rusqlite::Result<String> {
    Ok(format!(
        "e.address, e.transport, r.domain, r.template_ref, t.template_id, \
         t.scope_field_count, t.fields, r.export_time, r.message_sequence, \
         r.first_record_index, r.received_ms, r.records, {}",
        crate::segments::location_columns(conn, "r")?
    ))
}

/// The tables [`block_columns`] come from: `r` the block, `e` its exporter,
/// `t` its template.
pub const BLOCK_TABLES: &str = "record_blocks r JOIN exporters e ON e.id = r.exporter_id \
     JOIN templates t ON t.id = r.template_ref";

/// Decodes blocks from rows that start with [`block_columns`], each stored
/// template decoded once.
#[derive(Debug)]
pub struct BlockReader {
    templates: HashMap<i64, Option<Template>>,
    segments: SegmentReader,
}

impl BlockReader {
    /// A reader of the blocks of the database `conn` has open.
    pub fn new(conn: &Connection) -> Self {
        Self {
            templates: HashMap::new(),
            segments: SegmentReader::for_connection(conn),
        }
    }

    /// Calls `each` with every record of the row's block, in order.
    /// `Ok(Err(template_ref))` when the block's stored template is damaged
    /// (nothing decoded; each reader reports that its own way).
    pub fn decode(
        &mut self,
        row: &rusqlite::Row<'_>,
        each: impl FnMut(StoredRecord),
    ) -> rusqlite::Result<std::result::Result<usize, i64>> {
        let template_ref: i64 = row.get(3)?;
        if let std::collections::hash_map::Entry::Vacant(slot) = self.templates.entry(template_ref)
        {
            let fields: Vec<u8> = row.get(6)?;
            slot.insert(decode_template(row.get(4)?, row.get(5)?, &fields));
        }
        let Some(template) = &self.templates[&template_ref] else {
            return Ok(Err(template_ref));
        };
        let exporter: String = row.get(0)?;
        let transport: String = row.get(1)?;
        let block = StoredBlock {
            exporter: &exporter,
            transport: transport_name(&transport),
            domain: row.get(2)?,
            template,
            export_time: row.get(7)?,
            message_sequence: row.get(8)?,
            first_record_index: row.get(9)?,
            received_ms: row.get(10)?,
            records: self
                .segments
                .row_bytes(row, 11)
                .map_err(|err| rusqlite::Error::ModuleError(format!("{err:#}")))?,
        };
        Ok(Ok(decode_block(&block, each)))
    }
}

/// Decodes the records of a stored block into the per-record view, in
/// order. Returns how many records it produced.
pub fn decode_block(block: &StoredBlock<'_>, mut each: impl FnMut(StoredRecord)) -> usize {
    let header = MessageHeader {
        version: 10,
        length: 0,
        export_time: block.export_time,
        sequence_number: block.message_sequence,
        observation_domain_id: block.domain,
    };
    let mut n = 0;
    for (i, bytes) in DataRecordIter::new(block.template, block.records).enumerate() {
        // The collector stored only records that split cleanly.
        let Ok(bytes) = bytes else { break };
        let index = block.first_record_index + i as u32;
        let (fields, extra) = flow_fields(&DataRecord {
            header: &header,
            template: block.template,
            bytes,
            index_in_message: index,
        });
        each(StoredRecord {
            exporter: block.exporter.to_owned(),
            transport: block.transport,
            domain: block.domain,
            template_id: block.template.id,
            export_time: block.export_time,
            message_sequence: block.message_sequence,
            record_index: index,
            received_ms: block.received_ms,
            fields,
            extra,
        });
        n += 1;
    }
    n
}

/// The `&'static str` of a stored transport name.
pub fn transport_name(stored: &str) -> &'static str {
    match stored {
        "udp" => "udp",
        "tcp" => "tcp",
        "sctp" => "sctp",
        _ => "other",
    }
}

/// SQLite integers are signed 64-bit; counters beyond that saturate rather
/// than wrap into negative numbers.
fn clamp_i64(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

/// Billing ranges changed by the transaction being built.
struct BillingPending<'a> {
    ledger: &'a SharedLedger,
    changed: HashMap<(u32, u32), RangeSet>,
}

impl<'a> BillingPending<'a> {
    fn new(ledger: &'a SharedLedger) -> Self {
        Self {
            ledger,
            changed: HashMap::new(),
        }
    }

    fn set(&mut self, key: (u32, u32)) -> &mut RangeSet {
        self.changed.entry(key).or_insert_with(|| {
            self.ledger
                .lock()
                .expect("ledger lock")
                .stored
                .get(&key)
                .cloned()
                .unwrap_or_default()
        })
    }
}

/// The parts of a billing block not stored yet, as (index of the first
/// record in the block, record count, first record sequence, bytes).
fn billing_pieces<'b>(
    block: &RecordBlock,
    tag: BillingTag,
    bytes: &'b [u8],
    pending: &mut BillingPending<'_>,
) -> Vec<(usize, usize, Option<u64>, &'b [u8])> {
    let count = block.record_count as u64;
    let first = tag.first_record_sequence;
    // The rule is pure (ledger.rs); here only what it decides is cut out.
    let missing = take_new(pending.set((tag.exporter_id, block.domain)), first, count);
    if missing.is_empty() {
        return Vec::new();
    }
    if missing == [(first, first + count - 1)] {
        return vec![(0, count as usize, Some(first), bytes)];
    }
    // Some records are stored already: cut the block at record boundaries.
    let offsets = record_offsets(&block.template, bytes);
    missing
        .into_iter()
        .filter_map(|(a, b)| {
            let i = (a - first) as usize;
            let j = (b - first) as usize + 1;
            let (start, end) = (*offsets.get(i)?, *offsets.get(j)?);
            Some((i, j - i, Some(a), &bytes[start..end]))
        })
        .collect()
}

/// Byte offset of each record in a block, plus the end.
fn record_offsets(template: &Template, bytes: &[u8]) -> Vec<usize> {
    let mut offsets = vec![0];
    let mut at = 0;
    for record in DataRecordIter::new(template, bytes).map_while(Result::ok) {
        at += record.len();
        offsets.push(at);
    }
    offsets
}

fn load_ledger(conn: &Connection) -> Result<Ledger> {
    let mut ledger = Ledger::default();
    for (table, sets) in [
        ("billing_ranges", &mut ledger.stored),
        ("declared_losses", &mut ledger.declared),
    ] {
        let mut stmt = conn.prepare(&format!(
            "SELECT billing_exporter, domain, first, last FROM {table}"
        ))?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let key: (u32, u32) = (r.get(0)?, r.get(1)?);
            let (first, last): (i64, i64) = (r.get(2)?, r.get(3)?);
            sets.entry(key)
                .or_default()
                .insert(first as u64, last as u64);
        }
    }
    Ok(ledger)
}
