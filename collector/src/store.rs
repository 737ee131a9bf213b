//! Durable record storage in SQLite (WAL, batched transactions).
//!
//! A record counts as stored only once the transaction holding it commits;
//! [`Store::commit_batch`] returns after that commit. The schema is described
//! in README.md ("SQLite schema") and created by [`Store::open`].

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension, params};

use crate::record::{SequenceEvent, StoredRecord};

/// Bump when the schema changes; [`Store::open`] refuses unknown versions.
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS exporters (
    id            INTEGER PRIMARY KEY,
    address       TEXT NOT NULL,      -- "ip:port" of the exporting process
    transport     TEXT NOT NULL,      -- udp | tcp | sctp
    first_seen_ms INTEGER NOT NULL,
    UNIQUE (address, transport)
);
CREATE TABLE IF NOT EXISTS records (
    id               INTEGER PRIMARY KEY,
    exporter_id      INTEGER NOT NULL REFERENCES exporters(id),
    domain           INTEGER NOT NULL,   -- observation domain id
    template_id      INTEGER NOT NULL,
    export_time      INTEGER NOT NULL,   -- message export time, unix seconds
    message_sequence INTEGER NOT NULL,   -- IPFIX header sequence number
    record_index     INTEGER NOT NULL,   -- position among the message's data records
    received_ms      INTEGER NOT NULL,   -- collector clock, unix milliseconds
    src_addr         TEXT,
    dst_addr         TEXT,
    src_port         INTEGER,
    dst_port         INTEGER,
    protocol         INTEGER,
    tcp_flags        INTEGER,
    tos              INTEGER,
    octets           INTEGER,
    packets          INTEGER,
    flow_start_ms    INTEGER,
    flow_end_ms      INTEGER,
    ingress_if       INTEGER,
    egress_if        INTEGER,
    extra            BLOB               -- other fields, see README "extra encoding"
);
CREATE INDEX IF NOT EXISTS records_by_exporter_domain_time
    ON records (exporter_id, domain, export_time);
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
"#;

/// One commit's additions to a domain: records, lost records, sequence
/// events, last message sequence number.
type DomainDelta = (u64, u64, u64, Option<u32>);

/// Per (exporter, domain) totals accumulated across commits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainStats {
    pub records: u64,
    pub lost_records: u64,
    pub sequence_events: u64,
    pub last_sequence: Option<u32>,
}

/// The SQLite store of one collector.
pub struct Store {
    conn: Connection,
    exporter_ids: HashMap<(String, &'static str), i64>,
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
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            anyhow::bail!(
                "{} has schema version {version}, this collector knows up to {SCHEMA_VERSION}",
                path.display()
            );
        }
        conn.execute_batch(SCHEMA)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        Ok(Self {
            conn,
            exporter_ids: HashMap::new(),
        })
    }

    /// Opens an existing database read-only (query, audit).
    pub fn open_read_only(path: &Path) -> Result<Connection> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening SQLite database {} read-only", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(conn)
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    fn exporter_id(&mut self, address: &str, transport: &'static str, now_ms: i64) -> Result<i64> {
        if let Some(id) = self.exporter_ids.get(&(address.to_owned(), transport)) {
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
            .insert((address.to_owned(), transport), id);
        Ok(id)
    }

    /// Stores records and sequence events in one transaction; returns once it
    /// has committed (the records are then durable).
    pub fn commit_batch(
        &mut self,
        records: &[StoredRecord],
        events: &[SequenceEvent],
        now_ms: i64,
    ) -> Result<()> {
        // Resolve exporter ids before the transaction borrows the connection.
        let mut ids = Vec::with_capacity(records.len());
        for r in records {
            ids.push(self.exporter_id(&r.exporter, r.transport, now_ms)?);
        }
        let mut event_ids = Vec::with_capacity(events.len());
        for e in events {
            event_ids.push(self.exporter_id(&e.exporter, e.transport, now_ms)?);
        }
        let tx = self.conn.transaction()?;
        let mut stats: HashMap<(i64, u32), DomainDelta> = HashMap::new();
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO records (exporter_id, domain, template_id, export_time, message_sequence,
                    record_index, received_ms, src_addr, dst_addr, src_port, dst_port, protocol,
                    tcp_flags, tos, octets, packets, flow_start_ms, flow_end_ms, ingress_if,
                    egress_if, extra)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                    ?17, ?18, ?19, ?20, ?21)",
            )?;
            for (r, id) in records.iter().zip(&ids) {
                let f = &r.fields;
                insert.execute(params![
                    id,
                    r.domain,
                    r.template_id,
                    r.export_time,
                    r.message_sequence,
                    r.record_index,
                    r.received_ms,
                    f.src_addr.map(|a| a.to_string()),
                    f.dst_addr.map(|a| a.to_string()),
                    f.src_port,
                    f.dst_port,
                    f.protocol,
                    f.tcp_flags,
                    f.tos,
                    f.octets.map(clamp_i64),
                    f.packets.map(clamp_i64),
                    f.flow_start_ms,
                    f.flow_end_ms,
                    f.ingress_if,
                    f.egress_if,
                    (!r.extra.is_empty()).then_some(&r.extra[..]),
                ])?;
                let entry = stats.entry((*id, r.domain)).or_default();
                entry.0 += 1;
                entry.3 = Some(r.message_sequence);
            }
            let mut insert_event = tx.prepare_cached(
                "INSERT INTO sequence_events (exporter_id, domain, stream, at_ms, kind, sequence, records)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for (e, id) in events.iter().zip(&event_ids) {
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
                entry.2 += 1;
                if e.kind == crate::record::SequenceEventKind::Gap {
                    entry.1 += e.records;
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
            for ((id, domain), (n, lost, ev, last)) in &stats {
                upsert.execute(params![
                    id,
                    domain,
                    clamp_i64(*n),
                    clamp_i64(*lost),
                    clamp_i64(*ev),
                    last,
                    now_ms
                ])?;
            }
        }
        tx.commit()?;
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
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))?;
        Ok(n as u64)
    }
}

/// SQLite integers are signed 64-bit; counters beyond that saturate rather
/// than wrap into negative numbers.
fn clamp_i64(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}
