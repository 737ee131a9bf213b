//! PostgreSQL, the shared store tier (docs/postgres.md): the schema, and the
//! shipper thread that copies what the local SQLite store has committed.
//!
//! SQLite stays the durable point a billing cookie stands on; PostgreSQL is
//! filled behind it. Blocks are shipped in transactions of up to
//! `postgres.batch_blocks` blocks, `postgres.connections` of them in flight
//! at once (a pipeline: a connection that commits is handed the next
//! blocks at once, so PostgreSQL's backends never wait for each other or
//! for the SQLite read). Each transaction leaves out the blocks already in
//! `shipped_blocks` (primary key `(collector, block_id)`), claims the
//! others there and copies their records into `flows` (binary COPY both).
//! A block's records are thus in `flows` exactly when its identity is
//! in `shipped_blocks`, whatever the watermark said: exactly once across
//! PostgreSQL outages, collector crashes and restarts. The SQLite watermark
//! (`shipping_watermark`) then moves over the committed prefix only: a
//! transaction that commits before an earlier one is not counted until the
//! earlier one has committed too.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use futures_util::stream::{FuturesUnordered, StreamExt};
use protocol::ipfix::message::DataRecordIter;
use protocol::ipfix::{DataRecord, MessageHeader, Template};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Map, Value};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls};

use crate::config::PostgresConfig;
use crate::query::describe_field;
use crate::record::{extra_fields, flow_fields, record_hash};
use crate::segments::SegmentReader;
use crate::shipper::{
    BacklogCount, BacklogStatus, CommitOrder, Shipper, ShipperPolicy, Step, Stream, Watermarks,
};
use crate::store::decode_template;

/// The shared tier's tables, created by every shipper at connect (and by
/// `collector audit --postgres` never: the audit only reads). Documented
/// column by column in docs/postgres.md.
pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS shipped_blocks (
    collector             text        NOT NULL,
    block_id              bigint      NOT NULL,
    exporter              text        NOT NULL,
    transport             text        NOT NULL,
    domain                bigint      NOT NULL,
    template_id           integer     NOT NULL,
    export_time           timestamptz NOT NULL,
    message_sequence      bigint      NOT NULL,
    received_at           timestamptz NOT NULL,
    record_count          integer     NOT NULL,
    billing_exporter      bigint,
    first_record_sequence bigint,
    shipped_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collector, block_id)
);
CREATE INDEX IF NOT EXISTS shipped_blocks_by_billing
    ON shipped_blocks (billing_exporter, domain, first_record_sequence);
-- The message's other facts (transport, template, header sequence number,
-- arrival) are in shipped_blocks, one row a block: every column here costs
-- PostgreSQL CPU on every record shipped (docs/postgres.md).
CREATE TABLE IF NOT EXISTS flows (
    collector        text        NOT NULL,
    block_id         bigint      NOT NULL,
    record_index     integer     NOT NULL,
    exporter         text        NOT NULL,
    domain           bigint      NOT NULL,
    export_time      timestamptz NOT NULL,
    billing_exporter bigint,
    record_sequence  bigint,
    record_hash      bigint      NOT NULL,
    src_addr         inet,
    dst_addr         inet,
    src_port         integer,
    dst_port         integer,
    protocol         smallint,
    tcp_flags        integer,
    tos              smallint,
    octets           bigint,
    packets          bigint,
    flow_start       timestamptz,
    flow_end         timestamptz,
    ingress_if       bigint,
    egress_if        bigint,
    fields           jsonb
) PARTITION BY RANGE (export_time);
-- A database made when flows had those per-message columns keeps them,
-- NULL in the rows shipped since.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_schema = current_schema() AND table_name = 'flows'
                 AND column_name = 'transport' AND is_nullable = 'NO') THEN
        ALTER TABLE flows ALTER COLUMN transport DROP NOT NULL,
                          ALTER COLUMN template_id DROP NOT NULL,
                          ALTER COLUMN message_sequence DROP NOT NULL,
                          ALTER COLUMN received_at DROP NOT NULL;
    END IF;
END
$$;
-- The audit's order; partial, so plain (non-billing) flows cost no index
-- upkeep. Time conditions need no index: they prune partitions.
CREATE INDEX IF NOT EXISTS flows_by_billing
    ON flows (collector, billing_exporter, domain, record_sequence)
    WHERE record_sequence IS NOT NULL;
CREATE OR REPLACE VIEW billing_ranges AS
    SELECT collector, billing_exporter, domain, first_record_sequence AS first,
           first_record_sequence + record_count - 1 AS last
    FROM shipped_blocks
    WHERE billing_exporter IS NOT NULL AND first_record_sequence IS NOT NULL;
CREATE TABLE IF NOT EXISTS billing_handovers (
    collector        text   NOT NULL,
    id               bigint NOT NULL,
    at_ms            bigint NOT NULL,
    billing_exporter bigint NOT NULL,
    domain           bigint NOT NULL,
    peer             text   NOT NULL,
    from_pe          bigint,
    to_pe            bigint NOT NULL,
    record_sequence  bigint,
    PRIMARY KEY (collector, id)
);
CREATE TABLE IF NOT EXISTS declared_losses (
    collector        text   NOT NULL,
    id               bigint NOT NULL,
    billing_exporter bigint NOT NULL,
    domain           bigint NOT NULL,
    first            bigint NOT NULL,
    last             bigint NOT NULL,
    at_ms            bigint NOT NULL,
    system_init_ms   bigint NOT NULL,
    peer             text   NOT NULL,
    PRIMARY KEY (collector, id)
);
CREATE TABLE IF NOT EXISTS exporter_totals (
    collector            text   NOT NULL,
    peer                 text   NOT NULL,
    transport            text   NOT NULL,
    billing_exporter     bigint,
    exporting_process_id bigint NOT NULL,
    domain               bigint NOT NULL,
    system_init_ms       bigint NOT NULL,
    exported_messages    bigint NOT NULL,
    exported_records     bigint NOT NULL,
    not_sent_records     bigint NOT NULL,
    observation_ms       bigint NOT NULL,
    received_ms          bigint NOT NULL,
    PRIMARY KEY (collector, peer, exporting_process_id, domain, system_init_ms)
);
CREATE OR REPLACE FUNCTION poolflow_flows_partition(day date) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format(
        'CREATE TABLE IF NOT EXISTS %I PARTITION OF flows FOR VALUES FROM (%L) TO (%L)',
        'flows_' || to_char(day, 'YYYYMMDD'),
        (day::timestamp AT TIME ZONE 'UTC'),
        ((day + 1)::timestamp AT TIME ZONE 'UTC'));
EXCEPTION
    -- Another collector created it at the same moment.
    WHEN duplicate_table OR unique_violation THEN NULL;
END
$$;
"#;

/// Longest one shipping step may take: a PostgreSQL that stops answering
/// (a partition, not a refusal) must not hold the shipper, or a collector's
/// stop, forever. The step is rolled back and retried.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Columns of `shipped_blocks` the shipper fills, in COPY order.
const SHIPPED_BLOCK_COLUMNS: [(&str, Type); 12] = [
    ("collector", Type::TEXT),
    ("block_id", Type::INT8),
    ("exporter", Type::TEXT),
    ("transport", Type::TEXT),
    ("domain", Type::INT8),
    ("template_id", Type::INT4),
    ("export_time", Type::TIMESTAMPTZ),
    ("message_sequence", Type::INT8),
    ("received_at", Type::TIMESTAMPTZ),
    ("record_count", Type::INT4),
    ("billing_exporter", Type::INT8),
    ("first_record_sequence", Type::INT8),
];

/// Columns of `flows` in COPY order, with their types.
const FLOW_COLUMNS: [(&str, Type); 23] = [
    ("collector", Type::TEXT),
    ("block_id", Type::INT8),
    ("record_index", Type::INT4),
    ("exporter", Type::TEXT),
    ("domain", Type::INT8),
    ("export_time", Type::TIMESTAMPTZ),
    ("billing_exporter", Type::INT8),
    ("record_sequence", Type::INT8),
    ("record_hash", Type::INT8),
    ("src_addr", Type::INET),
    ("dst_addr", Type::INET),
    ("src_port", Type::INT4),
    ("dst_port", Type::INT4),
    ("protocol", Type::INT2),
    ("tcp_flags", Type::INT4),
    ("tos", Type::INT2),
    ("octets", Type::INT8),
    ("packets", Type::INT8),
    ("flow_start", Type::TIMESTAMPTZ),
    ("flow_end", Type::TIMESTAMPTZ),
    ("ingress_if", Type::INT8),
    ("egress_if", Type::INT8),
    ("fields", Type::JSONB),
];

/// Connects without TLS (loopback or a trusted network; docs/postgres.md
/// says how to add TLS) and drives the connection on the current runtime.
pub async fn connect(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to PostgreSQL ({})", redact(url)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("PostgreSQL connection ended: {e}");
        }
    });
    Ok(client)
}

/// The URL without its password, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Creates the shared tier's tables when missing.
pub async fn create_schema(client: &Client) -> Result<()> {
    client
        .batch_execute(SCHEMA)
        .await
        .context("creating the PostgreSQL schema")
}

/// A running shipper thread.
pub struct ShipperHandle {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl ShipperHandle {
    /// Stops shipping (what is unshipped stays in SQLite for the next
    /// start) and waits for the thread.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.thread.join();
    }
}

/// Starts the shipper thread for the store at `database` (which the
/// collector has opened, so its schema exists).
pub fn spawn_shipper(config: &PostgresConfig, database: &Path) -> Result<ShipperHandle> {
    let stop = Arc::new(AtomicBool::new(false));
    let io = ShipperIo::open(config, database)?;
    let policy = ShipperPolicy {
        batch_rows: config
            .batch_blocks
            .saturating_mul(config.connections * TRANSACTIONS_PER_CONNECTION_PER_STEP),
        interval: config.interval,
        max_backlog_records: config.max_backlog_records,
        retry_min: Duration::from_millis(100),
        retry_max: Duration::from_secs(5),
    };
    let watermarks = io.read_watermarks()?;
    tracing::info!(collector = %config.collector_name, postgres = %redact(&config.url),
        ?watermarks, "shipping to PostgreSQL");
    let shipper = Shipper::new(policy, watermarks);
    let thread = {
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("pg-shipper".to_owned())
            .spawn(move || {
                let up = metrics::gauge!("poolflow_collector_shipper_up");
                up.set(1.0);
                let shipped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a current-thread runtime")
                        .block_on(io.run(shipper, &stop))
                }));
                up.set(0.0);
                // Receiving and SQLite go on without it; the alert on
                // poolflow_collector_shipper_up calls for a restart.
                if shipped.is_err() {
                    tracing::error!(
                        "the PostgreSQL shipper panicked: nothing is shipped until the \
                         collector restarts (records stay in SQLite)"
                    );
                }
            })
            .context("starting the shipper thread")?
    };
    Ok(ShipperHandle { stop, thread })
}

/// Transactions one shipping step hands each connection at most, so a
/// step (after which the billing tables and the watermark get their turn)
/// ends within a second or so at full speed, while the pipeline's one
/// barrier, at the end of a step, comes rarely.
const TRANSACTIONS_PER_CONNECTION_PER_STEP: usize = 4;

/// How far a shipping step has read `record_blocks`.
struct StepReader {
    /// The id of the last block read.
    last_read: i64,
    /// Blocks read in this step, at most `limit`.
    read: usize,
    limit: usize,
    /// SQLite held fewer blocks than the last read asked for.
    caught_up: bool,
}

/// One committed block read back from SQLite, owned.
struct BlockRow {
    id: i64,
    exporter: String,
    transport: String,
    domain: u32,
    /// Its template (`None`: missing or damaged in SQLite).
    template: Option<Arc<Template>>,
    export_time: u32,
    message_sequence: u32,
    first_record_index: u32,
    received_ms: i64,
    record_count: i64,
    records: Vec<u8>,
    billing_exporter: Option<i64>,
    first_record_sequence: Option<i64>,
}

/// The shipper's I/O: the SQLite connection, the PostgreSQL client (made
/// again after every failure) and what it has learnt.
struct ShipperIo {
    sqlite: Connection,
    database: PathBuf,
    url: String,
    collector: String,
    /// The connections; the first has created the schema and checked this
    /// collector's identity, the others (`postgres.connections` in all)
    /// are made when blocks are first shipped.
    clients: Vec<Client>,
    connections: usize,
    /// Record blocks per PostgreSQL transaction.
    batch_blocks: usize,
    templates: HashMap<i64, Option<Arc<Template>>>,
    /// The blocks' record bytes (segment files since schema 6).
    segments: SegmentReader,
    /// Days whose `flows` partition exists (this process created or saw it).
    partitions: HashSet<i64>,
    /// When the backlog was last measured, and what it was.
    backlog_checked: Option<(Instant, BacklogStatus)>,
    /// The unshipped records, counted as blocks are committed and shipped.
    backlog: BacklogCount,
    /// The alarm as last logged, to log changes only.
    alarm_on: bool,
}

impl ShipperIo {
    fn open(config: &PostgresConfig, database: &Path) -> Result<Self> {
        let sqlite = Connection::open(database)
            .with_context(|| format!("opening {} for shipping", database.display()))?;
        sqlite.busy_timeout(Duration::from_secs(10))?;
        // SQLite runs an automatic checkpoint in whichever connection commits
        // past the threshold, which is per connection (1000 pages unless
        // set). Left at that, every watermark update here checkpointed the
        // WAL the record writer fills: a third of the shipper's time at
        // 500k records/s, spent while PostgreSQL waited for the next batch.
        // The writer checkpoints on its own schedule (store.rs,
        // WAL_AUTOCHECKPOINT_BYTES); this connection never does.
        sqlite.pragma_update(None, "wal_autocheckpoint", 0)?;
        // This connection writes only the watermark. A watermark update lost
        // to a power cut re-sends one batch, which PostgreSQL drops
        // (shipped_blocks), so it need not wait for its own fsync (FULL):
        // the writer's next commit makes it durable anyway.
        sqlite.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(Self {
            sqlite,
            database: database.to_owned(),
            url: config.url.clone(),
            collector: config.collector_name.clone(),
            clients: Vec::new(),
            connections: config.connections,
            batch_blocks: config.batch_blocks,
            templates: HashMap::new(),
            segments: SegmentReader::for_database(database),
            partitions: HashSet::new(),
            backlog_checked: None,
            backlog: BacklogCount::new(0),
            alarm_on: false,
        })
    }

    fn read_watermarks(&self) -> Result<Watermarks> {
        let mut w = Watermarks::default();
        let mut stmt = self
            .sqlite
            .prepare("SELECT stream, position FROM shipping_watermark")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let stream: String = row.get(0)?;
            let position: i64 = row.get(1)?;
            match stream.as_str() {
                "blocks" => w.blocks = position,
                "handovers" => w.handovers = position,
                "declared_losses" => w.declared_losses = position,
                "totals" => w.totals = position,
                other => bail!("unknown shipping_watermark stream `{other}`"),
            }
        }
        Ok(w)
    }

    fn write_watermark(&self, stream: Stream, position: i64) -> Result<()> {
        self.sqlite.execute(
            "INSERT INTO shipping_watermark (stream, position, updated_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (stream) DO UPDATE SET
                position = MAX(position, excluded.position), updated_ms = excluded.updated_ms",
            params![stream.name(), position, now_ms()],
        )?;
        Ok(())
    }

    async fn run(mut self, mut shipper: Shipper, stop: &AtomicBool) {
        self.backlog = BacklogCount::new(shipper.watermarks().blocks);
        while !stop.load(Ordering::Acquire) {
            match shipper.next_step() {
                Step::Wait(pause) => {
                    // Short slices, so a stop is seen promptly.
                    let until = Instant::now() + pause;
                    while !stop.load(Ordering::Acquire) && Instant::now() < until {
                        let left = until.saturating_duration_since(Instant::now());
                        tokio::time::sleep(left.min(Duration::from_millis(50))).await;
                    }
                }
                Step::Ship {
                    stream,
                    after,
                    limit,
                } => match tokio::time::timeout(STEP_TIMEOUT, self.ship(stream, after, limit))
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {STEP_TIMEOUT:?}")))
                {
                    Ok((rows, position)) => {
                        shipper.shipped(stream, rows, position);
                        if stream == Stream::Blocks {
                            metrics::counter!("poolflow_collector_shipped_blocks_total")
                                .increment(rows as u64);
                        }
                        self.report_backlog(&shipper);
                    }
                    Err(e) => {
                        // The clients may be broken: connect again next time.
                        self.clients.clear();
                        let pause = shipper.failed();
                        metrics::counter!("poolflow_collector_shipping_errors_total").increment(1);
                        if shipper.consecutive_failures() == 1 {
                            tracing::warn!(stream = stream.name(), retry_in = ?pause,
                                "shipping to PostgreSQL failed: {e:#}");
                        } else {
                            tracing::debug!(stream = stream.name(), retry_in = ?pause,
                                failures = shipper.consecutive_failures(),
                                "shipping to PostgreSQL failed again: {e:#}");
                        }
                        self.report_backlog(&shipper);
                    }
                },
            }
        }
    }

    /// Lag and backlog gauges, and the alarm, at most once a second. Reads
    /// SQLite only for what is new: the blocks committed since the last
    /// count (BacklogCount) and the first unshipped block, by its key.
    fn report_backlog(&mut self, shipper: &Shipper) {
        if self
            .backlog_checked
            .is_some_and(|(at, _)| at.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        let measured = self.measure_backlog(shipper.watermarks().blocks);
        let (records, oldest) = match measured {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("measuring the shipping backlog: {e}");
                return;
            }
        };
        let status = shipper.backlog(records, oldest, now_ms());
        metrics::gauge!("poolflow_collector_shipping_lag_seconds").set(status.lag.as_secs_f64());
        metrics::gauge!("poolflow_collector_shipping_backlog_records").set(status.records as f64);
        metrics::gauge!("poolflow_collector_shipping_backlog_exceeded").set(if status.exceeded {
            1.0
        } else {
            0.0
        });
        if status.exceeded != self.alarm_on {
            self.alarm_on = status.exceeded;
            if status.exceeded {
                tracing::error!(database = %self.database.display(), backlog_records = status.records,
                    lag = ?status.lag,
                    "unshipped records exceed postgres.max_backlog_records: PostgreSQL is \
                     down or too slow; nothing is deleted, the SQLite file keeps growing");
            } else {
                tracing::info!(
                    backlog_records = status.records,
                    "shipping backlog back under postgres.max_backlog_records"
                );
            }
        }
        self.backlog_checked = Some((Instant::now(), status));
    }

    /// The unshipped records, and when the first unshipped block (the
    /// oldest committed one: ids follow commit order) was received.
    fn measure_backlog(&mut self, watermark: i64) -> rusqlite::Result<(u64, Option<i64>)> {
        let (new_records, newest) = self.sqlite.query_row(
            "SELECT COALESCE(SUM(record_count), 0), MAX(id) FROM record_blocks WHERE id > ?1",
            [self.backlog.count_after()],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?)),
        )?;
        self.backlog.counted(new_records.max(0) as u64, newest);
        let oldest = self
            .sqlite
            .query_row(
                "SELECT received_ms FROM record_blocks WHERE id > ?1 ORDER BY id LIMIT 1",
                [watermark.max(self.backlog.shipped_through())],
                |r| r.get::<_, i64>(0),
            )
            .optional()?;
        Ok((self.backlog.records(), oldest))
    }

    async fn client(&mut self) -> Result<&mut Client> {
        if self.clients.is_empty() {
            let client = connect(&self.url).await?;
            create_schema(&client).await?;
            self.check_identity(&client).await?;
            self.clients.push(client);
        }
        Ok(&mut self.clients[0])
    }

    /// Refuses a `collector_name` whose blocks in PostgreSQL go beyond this
    /// SQLite file's: the name was given to a new file, whose block ids
    /// would be taken for ones already shipped and silently dropped.
    async fn check_identity(&self, client: &Client) -> Result<()> {
        let shipped: Option<i64> = client
            .query_one(
                "SELECT max(block_id) FROM shipped_blocks WHERE collector = $1",
                &[&self.collector],
            )
            .await?
            .get(0);
        let local: Option<i64> =
            self.sqlite
                .query_row("SELECT max(id) FROM record_blocks", [], |r| r.get(0))?;
        if let Some(shipped) = shipped
            && shipped > local.unwrap_or(0)
        {
            tracing::error!(collector = %self.collector, shipped, local = local.unwrap_or(0),
                "PostgreSQL holds blocks of this collector_name beyond this SQLite file: \
                 give this store its own postgres.collector_name");
            bail!(
                "collector_name `{}` has block {shipped} in PostgreSQL but {} has only up to {}: \
                 the name belongs to another SQLite file",
                self.collector,
                self.database.display(),
                local.unwrap_or(0)
            );
        }
        Ok(())
    }

    /// Ships one step; returns the rows shipped and the highest position.
    async fn ship(
        &mut self,
        stream: Stream,
        after: i64,
        limit: Option<usize>,
    ) -> Result<(usize, i64)> {
        let shipped = match stream {
            Stream::Blocks => self.ship_blocks(after, limit.unwrap_or(1)).await?,
            Stream::Handovers => self.ship_handovers(after, limit.unwrap_or(1)).await?,
            Stream::DeclaredLosses => self.ship_declared_losses(after, limit.unwrap_or(1)).await?,
            Stream::Totals => self.ship_totals(after).await?,
        };
        if shipped.0 > 0 {
            self.write_watermark(stream, shipped.1)?;
        }
        Ok(shipped)
    }

    fn read_blocks(&mut self, after: i64, limit: usize) -> Result<Vec<BlockRow>> {
        let mut stmt = self.sqlite.prepare_cached(
            "SELECT b.id, e.address, e.transport, b.domain, b.template_ref, b.export_time,
                    b.message_sequence, b.first_record_index, b.received_ms, b.record_count,
                    b.records, b.segment, b.segment_offset, b.segment_length,
                    b.billing_exporter, b.first_record_sequence
             FROM record_blocks b JOIN exporters e ON e.id = b.exporter_id
             WHERE b.id > ?1 ORDER BY b.id LIMIT ?2",
        )?;
        let mut rows = stmt.query(params![after, limit as i64])?;
        let mut blocks = Vec::new();
        let mut template_refs = Vec::new();
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            let template_ref: i64 = r.get(4)?;
            template_refs.push(template_ref);
            blocks.push(BlockRow {
                id,
                exporter: r.get(1)?,
                transport: r.get(2)?,
                domain: r.get(3)?,
                template: None,
                export_time: r.get(5)?,
                message_sequence: r.get(6)?,
                first_record_index: r.get(7)?,
                received_ms: r.get(8)?,
                record_count: r.get(9)?,
                records: self
                    .segments
                    .row_bytes(r, 10)
                    .with_context(|| format!("the records of block {id}"))?
                    .to_vec(),
                billing_exporter: r.get(14)?,
                first_record_sequence: r.get(15)?,
            });
        }
        drop(rows);
        drop(stmt);
        for (block, template_ref) in blocks.iter_mut().zip(template_refs) {
            if !self.templates.contains_key(&template_ref) {
                let template = self.sqlite.query_row(
                    "SELECT template_id, scope_field_count, fields FROM templates WHERE id = ?1",
                    [template_ref],
                    |r| {
                        Ok(decode_template(
                            r.get(0)?,
                            r.get(1)?,
                            &r.get::<_, Vec<u8>>(2)?,
                        ))
                    },
                )?;
                self.templates.insert(template_ref, template.map(Arc::new));
            }
            block.template = self.templates[&template_ref].clone();
        }
        Ok(blocks)
    }

    async fn ensure_partitions_on(
        &mut self,
        client: &mut Client,
        blocks: &[BlockRow],
    ) -> Result<()> {
        let days: HashSet<i64> = blocks
            .iter()
            .map(|b| i64::from(b.export_time) / 86_400)
            .filter(|day| !self.partitions.contains(day))
            .collect();
        if days.is_empty() {
            return Ok(());
        }
        for day in &days {
            client
                .execute(
                    "SELECT poolflow_flows_partition(
                        (to_timestamp($1::bigint * 86400) AT TIME ZONE 'UTC')::date)",
                    &[day],
                )
                .await
                .context("creating a flows partition")?;
        }
        self.partitions.extend(days);
        Ok(())
    }

    /// Ships up to `limit` blocks after `after` through the pipeline:
    /// transactions of up to `batch_blocks` blocks, read from SQLite in id
    /// order, one in flight per connection; a connection that commits gets
    /// the next blocks straight away. Returns the blocks shipped and the
    /// highest id of the committed prefix. A failed transaction fails the
    /// step; those committed after it are claimed in `shipped_blocks`, so
    /// the retry from the watermark drops them.
    async fn ship_blocks(&mut self, after: i64, limit: usize) -> Result<(usize, i64)> {
        let mut reader = StepReader {
            last_read: after,
            read: 0,
            limit,
            caught_up: false,
        };
        let Some(first) = self.read_next(&mut reader)? else {
            return Ok((0, after));
        };
        self.client().await?;
        let mut idle = std::mem::take(&mut self.clients);
        while idle.len() < self.connections {
            idle.push(connect(&self.url).await?);
        }
        let collector: Arc<str> = Arc::from(self.collector.as_str());
        let mut in_flight = FuturesUnordered::new();
        let mut order = CommitOrder::default();
        let mut to_send = Some(first);
        let mut shipped = 0usize;
        let mut position = after;
        loop {
            while let Some(blocks) = to_send.take() {
                let Some(mut client) = idle.pop() else {
                    to_send = Some(blocks);
                    break;
                };
                self.ensure_partitions_on(&mut client, &blocks).await?;
                let ticket = order.started(
                    blocks
                        .iter()
                        .map(|b| (b.id, b.record_count.max(0) as u64))
                        .collect(),
                );
                let collector = Arc::clone(&collector);
                in_flight.push(async move {
                    let copied = copy_blocks(&mut client, &collector, &blocks).await;
                    (ticket, client, copied)
                });
                // The next transaction's blocks, read while this one copies.
                to_send = self.read_next(&mut reader)?;
            }
            let Some((ticket, client, copied)) = in_flight.next().await else {
                break;
            };
            // On failure the client is dropped with the others in flight:
            // the caller connects again.
            let copied = copied?;
            metrics::counter!("poolflow_collector_shipped_records_total").increment(copied);
            idle.push(client);
            let prefix = order.committed(ticket);
            shipped += prefix.len();
            position = prefix.last().map_or(position, |(id, _)| *id);
            self.backlog.shipped(prefix);
        }
        debug_assert_eq!(order.outstanding(), 0);
        // Any of them serves the other streams: the schema and the identity
        // check, done on the first, hold for the same server.
        self.clients = idle;
        Ok((shipped, position))
    }

    /// The step's next transaction of blocks; `None` once the step has
    /// read `limit` blocks or SQLite had fewer than asked (caught up).
    fn read_next(&mut self, reader: &mut StepReader) -> Result<Option<Vec<BlockRow>>> {
        if reader.caught_up || reader.read >= reader.limit {
            return Ok(None);
        }
        let want = self.batch_blocks.min(reader.limit - reader.read);
        let blocks = self.read_blocks(reader.last_read, want)?;
        reader.caught_up = blocks.len() < want;
        reader.read += blocks.len();
        let Some(last) = blocks.last() else {
            return Ok(None);
        };
        reader.last_read = last.id;
        Ok(Some(blocks))
    }

    async fn ship_handovers(&mut self, after: i64, limit: usize) -> Result<(usize, i64)> {
        const COLUMNS: [&str; 8] = [
            "id",
            "at_ms",
            "billing_exporter",
            "domain",
            "peer",
            "from_pe",
            "to_pe",
            "record_sequence",
        ];
        self.ship_rows("billing_handovers", &COLUMNS, after, limit)
            .await
    }

    async fn ship_declared_losses(&mut self, after: i64, limit: usize) -> Result<(usize, i64)> {
        const COLUMNS: [&str; 8] = [
            "id",
            "billing_exporter",
            "domain",
            "first",
            "last",
            "at_ms",
            "system_init_ms",
            "peer",
        ];
        self.ship_rows("declared_losses", &COLUMNS, after, limit)
            .await
    }

    /// Copies the rows of an append-only SQLite table whose `id` is after `after` (at
    /// most `limit`, `id` first in `columns`) into the PostgreSQL table of the same name
    /// and columns, this collector's name in front. A row already there is left alone
    /// (`ON CONFLICT DO NOTHING`), so copying a range twice doubles nothing. The tables
    /// hold integers and text; NULL appears in integer columns only.
    async fn ship_rows(
        &mut self,
        table: &str,
        columns: &[&str],
        after: i64,
        limit: usize,
    ) -> Result<(usize, i64)> {
        let rows: Vec<Vec<rusqlite::types::Value>> = {
            let mut stmt = self.sqlite.prepare_cached(&format!(
                "SELECT {} FROM {table} WHERE id > ?1 ORDER BY id LIMIT ?2",
                columns.join(", ")
            ))?;
            stmt.query_map(params![after, limit as i64], |r| {
                (0..columns.len()).map(|i| r.get(i)).collect()
            })?
            .collect::<rusqlite::Result<_>>()?
        };
        let Some(last) = rows.last().map(|r| match r[0] {
            rusqlite::types::Value::Integer(id) => id,
            _ => after,
        }) else {
            return Ok((0, after));
        };
        let collector = self.collector.clone();
        let client = self.client().await?;
        let tx = client.transaction().await?;
        let placeholders: Vec<String> = (1..=columns.len() + 1).map(|i| format!("${i}")).collect();
        let insert = tx
            .prepare(&format!(
                "INSERT INTO {table} (collector, {}) VALUES ({}) ON CONFLICT DO NOTHING",
                columns.join(", "),
                placeholders.join(", ")
            ))
            .await?;
        for row in &rows {
            let values: Vec<Box<dyn ToSql + Sync + Send>> = row
                .iter()
                .map(|value| -> Result<Box<dyn ToSql + Sync + Send>> {
                    Ok(match value {
                        rusqlite::types::Value::Integer(n) => Box::new(*n),
                        rusqlite::types::Value::Text(text) => Box::new(text.clone()),
                        rusqlite::types::Value::Null => Box::new(None::<i64>),
                        other => bail!("{table}: unexpected SQLite value {other:?}"),
                    })
                })
                .collect::<Result<_>>()?;
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&collector];
            params.extend(values.iter().map(|v| v.as_ref() as &(dyn ToSql + Sync)));
            tx.execute(&insert, &params).await?;
        }
        tx.commit().await?;
        Ok((rows.len(), last))
    }

    async fn ship_totals(&mut self, after: i64) -> Result<(usize, i64)> {
        type TotalsRow = (
            String,
            String,
            Option<i64>,
            i64,
            i64,
            i64,
            i64,
            i64,
            i64,
            i64,
            i64,
        );
        let rows: Vec<TotalsRow> = {
            let mut stmt = self.sqlite.prepare_cached(
                "SELECT peer, transport, billing_exporter, exporting_process_id, domain,
                    system_init_ms, exported_messages, exported_records, not_sent_records,
                    observation_ms, received_ms
                 FROM exporter_totals WHERE received_ms >= ?1 ORDER BY received_ms",
            )?;
            stmt.query_map([after], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                    r.get(10)?,
                ))
            })?
            .collect::<rusqlite::Result<_>>()?
        };
        let Some(last) = rows.last().map(|r| r.10) else {
            return Ok((0, after));
        };
        let collector = self.collector.clone();
        let client = self.client().await?;
        let tx = client.transaction().await?;
        // The counters only grow (store.rs keeps the highest): so here.
        let upsert = tx
            .prepare(
                "INSERT INTO exporter_totals (collector, peer, transport, billing_exporter,
                    exporting_process_id, domain, system_init_ms, exported_messages,
                    exported_records, not_sent_records, observation_ms, received_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                 ON CONFLICT (collector, peer, exporting_process_id, domain, system_init_ms)
                 DO UPDATE SET
                    billing_exporter = COALESCE(excluded.billing_exporter,
                                                exporter_totals.billing_exporter),
                    exported_messages = GREATEST(exporter_totals.exported_messages,
                                                 excluded.exported_messages),
                    exported_records = GREATEST(exporter_totals.exported_records,
                                                excluded.exported_records),
                    not_sent_records = GREATEST(exporter_totals.not_sent_records,
                                                excluded.not_sent_records),
                    observation_ms = GREATEST(exporter_totals.observation_ms,
                                              excluded.observation_ms),
                    received_ms = GREATEST(exporter_totals.received_ms, excluded.received_ms)",
            )
            .await?;
        for r in &rows {
            tx.execute(
                &upsert,
                &[
                    &collector, &r.0, &r.1, &r.2, &r.3, &r.4, &r.5, &r.6, &r.7, &r.8, &r.9, &r.10,
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok((rows.len(), last))
    }
}

/// One transaction: claim the blocks in `shipped_blocks`, copy the records
/// of those that were new. Returns the records copied.
///
/// The blocks already in `shipped_blocks` (a step retried after a failure,
/// or a watermark behind PostgreSQL after a crash) are looked up first and
/// left out; the rest are claimed by a binary COPY, which costs PostgreSQL
/// a fraction of an `INSERT … ON CONFLICT` (speculative insertion, a row at
/// a time: 7 % of its CPU at 500k records/s). The primary key still makes
/// it exactly once: a block claimed by someone else in between fails the
/// COPY, the transaction rolls back and the retry leaves the block out.
async fn copy_blocks(client: &mut Client, collector: &str, blocks: &[BlockRow]) -> Result<u64> {
    let (Some(lowest), Some(highest)) = (blocks.first(), blocks.last()) else {
        return Ok(0);
    };
    let tx = client.transaction().await?;
    let already: HashSet<i64> = tx
        .query(
            "SELECT block_id FROM shipped_blocks
             WHERE collector = $1 AND block_id BETWEEN $2 AND $3",
            &[&collector, &lowest.id, &highest.id],
        )
        .await
        .context("looking up shipped blocks")?
        .iter()
        .map(|row| row.get::<_, i64>(0))
        .collect();
    let new: Vec<&BlockRow> = blocks.iter().filter(|b| !already.contains(&b.id)).collect();
    if new.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }
    let claims = copy_writer(&tx, "shipped_blocks", &SHIPPED_BLOCK_COLUMNS).await?;
    futures_util::pin_mut!(claims);
    for b in &new {
        let row: [&(dyn ToSql + Sync); SHIPPED_BLOCK_COLUMNS.len()] = [
            &collector,
            &b.id,
            &b.exporter,
            &b.transport,
            &i64::from(b.domain),
            &b.template.as_ref().map_or(-1, |t| i32::from(t.id)),
            &time_from_ms(i64::from(b.export_time) * 1000),
            &i64::from(b.message_sequence),
            &time_from_ms(b.received_ms),
            &(b.record_count as i32),
            &b.billing_exporter,
            &b.first_record_sequence,
        ];
        claims.as_mut().write(&row).await?;
    }
    claims
        .finish()
        .await
        .context("claiming blocks in shipped_blocks")?;
    let mut copied = 0u64;
    {
        let writer = copy_writer(&tx, "flows", &FLOW_COLUMNS).await?;
        futures_util::pin_mut!(writer);
        for block in new {
            let Some(template) = &block.template else {
                // Counted as shipped in shipped_blocks.record_count with no
                // flows: the PostgreSQL audit reports the difference.
                tracing::error!(
                    block = block.id,
                    "template of block missing or damaged: records not shipped"
                );
                continue;
            };
            copied += copy_block(writer.as_mut(), collector, block, template).await?;
        }
        writer.finish().await?;
    }
    tx.commit().await.context("committing the shipment")?;
    Ok(copied)
}

/// A binary COPY into `table`'s `columns`.
async fn copy_writer(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    columns: &[(&str, Type)],
) -> Result<BinaryCopyInWriter> {
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    let types: Vec<Type> = columns.iter().map(|(_, ty)| ty.clone()).collect();
    let sink = tx
        .copy_in(&format!(
            "COPY {table} ({}) FROM STDIN (FORMAT binary)",
            names.join(", ")
        ))
        .await
        .with_context(|| format!("starting the copy into {table}"))?;
    Ok(BinaryCopyInWriter::new(sink, &types))
}

/// Appends one block's records to the COPY.
async fn copy_block(
    mut writer: std::pin::Pin<&mut BinaryCopyInWriter>,
    collector: &str,
    block: &BlockRow,
    template: &Template,
) -> Result<u64> {
    let header = MessageHeader {
        version: 10,
        length: 0,
        export_time: block.export_time,
        sequence_number: block.message_sequence,
        observation_domain_id: block.domain,
    };
    let export_time = time_from_ms(i64::from(block.export_time) * 1000);
    let domain = i64::from(block.domain);
    let mut copied = 0u64;
    for (i, bytes) in DataRecordIter::new(template, &block.records).enumerate() {
        // The collector stored only records that split cleanly.
        let Ok(bytes) = bytes else { break };
        let record_index = block.first_record_index.saturating_add(i as u32);
        let (f, extra) = flow_fields(&DataRecord {
            header: &header,
            template,
            bytes,
            index_in_message: record_index,
        });
        // Sequences are stored as the i64 bit pattern of the u64, as in SQLite.
        let record_sequence = block
            .first_record_sequence
            .map(|first| (first as u64).wrapping_add(i as u64) as i64);
        // Exporters' clocks are input: a time PostgreSQL cannot hold
        // leaves the column NULL and keeps the value in `fields`.
        let flow_start = f.flow_start_ms.and_then(timestamp_in_range);
        let flow_end = f.flow_end_ms.and_then(timestamp_in_range);
        let mut map = Map::new();
        for (enterprise, id, raw) in extra_fields(&extra) {
            let (name, value) = describe_field(enterprise, id, raw);
            map.insert(name, value);
        }
        for (name, ms, kept) in [
            ("flow_start_ms_out_of_range", f.flow_start_ms, flow_start),
            ("flow_end_ms_out_of_range", f.flow_end_ms, flow_end),
        ] {
            if let (Some(ms), None) = (ms, kept) {
                map.insert(name.to_owned(), Value::from(ms));
            }
        }
        let fields = (!map.is_empty()).then_some(Value::Object(map));
        let counter = |v: Option<u64>| v.map(|v| v.min(i64::MAX as u64) as i64);
        let row: [&(dyn ToSql + Sync); FLOW_COLUMNS.len()] = [
            &collector,
            &block.id,
            &(record_index as i32),
            &block.exporter,
            &domain,
            &export_time,
            &block.billing_exporter,
            &record_sequence,
            &(record_hash(bytes) as i64),
            &f.src_addr as &Option<IpAddr>,
            &f.dst_addr as &Option<IpAddr>,
            &f.src_port.map(i32::from),
            &f.dst_port.map(i32::from),
            &f.protocol.map(i16::from),
            &f.tcp_flags.map(i32::from),
            &f.tos.map(i16::from),
            &counter(f.octets),
            &counter(f.packets),
            &flow_start,
            &flow_end,
            &f.ingress_if.map(i64::from),
            &f.egress_if.map(i64::from),
            &fields,
        ];
        writer.as_mut().write(&row).await.context("copying flows")?;
        copied += 1;
    }
    Ok(copied)
}

/// Earliest and latest flow time shipped as `timestamptz`: years 1 to
/// 9999, well inside PostgreSQL's range (4713 BC to 294276 AD).
const TIMESTAMP_RANGE_MS: std::ops::RangeInclusive<i64> = -62_135_596_800_000..=253_402_300_799_999;

/// The time of unix milliseconds `ms` when PostgreSQL can hold it.
fn timestamp_in_range(ms: i64) -> Option<SystemTime> {
    TIMESTAMP_RANGE_MS.contains(&ms).then(|| time_from_ms(ms))
}

/// Unix milliseconds as a time (before 1970 too).
pub fn time_from_ms(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redact("postgresql://poolflow:secret@db:5432/flows"),
            "postgresql://poolflow:***@db:5432/flows"
        );
        assert_eq!(
            redact("postgresql://poolflow@db/flows"),
            "postgresql://poolflow@db/flows"
        );
        assert_eq!(redact("host=db user=x"), "host=db user=x");
    }

    #[test]
    fn flow_times_postgres_cannot_hold_are_refused() {
        assert!(timestamp_in_range(1_765_000_000_000).is_some());
        assert!(timestamp_in_range(-1_000).is_some());
        assert!(timestamp_in_range(i64::MAX).is_none());
        assert!(timestamp_in_range(i64::MIN).is_none());
        assert!(timestamp_in_range(253_402_300_800_000).is_none());
    }

    #[test]
    fn times_before_1970_are_kept() {
        assert_eq!(
            time_from_ms(-1500),
            UNIX_EPOCH - Duration::from_millis(1500)
        );
        assert_eq!(time_from_ms(2500), UNIX_EPOCH + Duration::from_millis(2500));
    }
}
