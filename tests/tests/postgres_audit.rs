//! The continuity audit on the PostgreSQL shared tier against the same
//! audit on the SQLite files, on stores built to fail: a failover split
//! across two collectors with a gap, a conflict, a benign duplicate, a
//! declared loss, the exporter's statistics claiming a lost tail, handovers,
//! sequences beyond 2^63 and non-billing blocks. Each store is shipped by
//! the collector's own shipper (`postgres::spawn_shipper`); both audits must
//! give the same report (verdicts, every figure and range).
//!
//! Then exactly once at its most direct: the watermarks are wiped and the
//! shipper started again, re-sending everything; PostgreSQL must drop it
//! all.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use collector::audit::{AuditOptions, AuditReport, Verdict};
use collector::config::PostgresConfig;
use collector::store::{Store, encode_template_fields};
use poolflow_tests::postgres::PostgresServer;
use poolflow_tests::workspace_bin;
use protocol::ipfix::flow::{FlowRecord, flow_template};
use rusqlite::{Connection, params};
use tokio_postgres::NoTls;

const BASE_MS: u64 = 1_700_000_000_000;
/// Different bytes under the same sequence: a conflict.
const OTHER_BASE_MS: u64 = 1_800_000_000_000;

/// A collector store made with the collector's schema, filled by hand.
struct HandStore {
    path: PathBuf,
    conn: Connection,
}

impl HandStore {
    fn create(dir: &Path, name: &str) -> Self {
        let path = dir.join(name);
        drop(Store::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        let template = flow_template();
        conn.execute(
            "INSERT INTO templates (id, template_id, scope_field_count, fields)
             VALUES (1, ?1, ?2, ?3)",
            params![
                template.id,
                template.scope_field_count,
                encode_template_fields(&template)
            ],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO exporters (id, address, transport, first_seen_ms)
             VALUES (1, '192.0.2.1:4739', 'sctp', 0)",
            [],
        )
        .unwrap();
        Self { path, conn }
    }

    /// Records `sequences` of (exporter, domain) in blocks of 25, their
    /// bytes made from `base_ms`; `billing_exporter` None: a plain session.
    fn add_records(
        &self,
        billing_exporter: Option<u32>,
        domain: u32,
        sequences: std::ops::Range<u64>,
        base_ms: u64,
    ) {
        let mut first = sequences.start;
        while first < sequences.end {
            let end = (first + 25).min(sequences.end);
            let mut bytes = Vec::new();
            for n in first..end {
                FlowRecord::synthetic(n, base_ms).encode(&mut bytes);
            }
            self.conn
                .execute(
                    "INSERT INTO record_blocks (exporter_id, domain, template_ref, export_time,
                        message_sequence, first_record_index, record_count, received_ms,
                        records, billing_exporter, first_record_sequence)
                     VALUES (1, ?1, 1, 1765000000, ?2, 0, ?3, 1765000000000, ?4, ?5, ?6)",
                    params![
                        domain,
                        first as u32,
                        end - first,
                        bytes,
                        billing_exporter,
                        billing_exporter.map(|_| first as i64)
                    ],
                )
                .unwrap();
            first = end;
        }
    }

    fn add_handover(&self, at_ms: i64, from_pe: Option<u32>, to_pe: u32, sequence: Option<u64>) {
        self.conn
            .execute(
                "INSERT INTO billing_handovers (at_ms, billing_exporter, domain, peer, from_pe,
                    to_pe, record_sequence) VALUES (?1, 1, 1, '192.0.2.1:4739', ?2, ?3, ?4)",
                params![at_ms, from_pe, to_pe, sequence.map(|s| s as i64)],
            )
            .unwrap();
    }

    fn add_totals(&self, exported: u64, not_sent: u64) {
        self.conn
            .execute(
                "INSERT INTO exporter_totals (peer, transport, billing_exporter,
                    exporting_process_id, domain, system_init_ms, exported_messages,
                    exported_records, not_sent_records, observation_ms, received_ms)
                 VALUES ('192.0.2.1:4739', 'sctp', 1, 1, 1, 5, 10, ?1, ?2, 0, 1765000000000)",
                params![exported as i64, not_sent as i64],
            )
            .unwrap();
    }

    fn add_declared(&self, first: u64, last: u64) {
        self.conn
            .execute(
                "INSERT INTO declared_losses (billing_exporter, domain, first, last, at_ms,
                    system_init_ms, peer) VALUES (1, 1, ?1, ?2, 0, 5, '192.0.2.1:4739')",
                params![first as i64, last as i64],
            )
            .unwrap();
    }
}

async fn pg_count(url: &str, sql: &str, collector: &str) -> i64 {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
        .query_one(sql, &[&collector])
        .await
        .map_or(-1, |row| row.get(0))
}

/// What `collector` holds in PostgreSQL: blocks, flows, handovers,
/// declarations, totals.
async fn shipped(url: &str, collector: &str) -> [i64; 5] {
    let mut counts = [0; 5];
    for (i, table) in [
        "shipped_blocks",
        "flows",
        "billing_handovers",
        "declared_losses",
        "exporter_totals",
    ]
    .iter()
    .enumerate()
    {
        counts[i] = pg_count(
            url,
            &format!("SELECT count(*) FROM {table} WHERE collector = $1"),
            collector,
        )
        .await;
    }
    counts
}

/// What a store holds, counted the same way.
fn local(store: &HandStore) -> [i64; 5] {
    let count = |sql: &str| store.conn.query_row(sql, [], |r| r.get(0)).unwrap();
    [
        count("SELECT count(*) FROM record_blocks"),
        count("SELECT COALESCE(sum(record_count), 0) FROM record_blocks"),
        count("SELECT count(*) FROM billing_handovers"),
        count("SELECT count(*) FROM declared_losses"),
        count("SELECT count(*) FROM exporter_totals"),
    ]
}

/// The store's watermarks reach its last rows (they move after the
/// PostgreSQL commit).
fn watermarks_at_end(store: &HandStore) -> bool {
    let at_end = |stream: &str, table: &str| -> bool {
        let last: i64 = store
            .conn
            .query_row(
                &format!("SELECT COALESCE(max(id), 0) FROM {table}"),
                [],
                |r| r.get(0),
            )
            .unwrap();
        let position: i64 = store
            .conn
            .query_row(
                "SELECT COALESCE(max(position), 0) FROM shipping_watermark WHERE stream = ?1",
                [stream],
                |r| r.get(0),
            )
            .unwrap();
        position == last
    };
    at_end("blocks", "record_blocks")
        && at_end("handovers", "billing_handovers")
        && at_end("declared_losses", "declared_losses")
}

/// Runs the shipper for `store` until PostgreSQL holds all of it and the
/// watermarks say so.
async fn ship(url: &str, store: &HandStore, collector: &str) {
    let config = PostgresConfig {
        url: url.to_owned(),
        collector_name: collector.to_owned(),
        batch_blocks: 7,
        connections: 3,
        interval: Duration::from_millis(20),
        max_backlog_records: 1_000_000,
    };
    let shipper = collector::postgres::spawn_shipper(&config, &store.path).unwrap();
    let want = local(store);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let have = shipped(url, collector).await;
        if have == want && watermarks_at_end(store) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{collector}: PostgreSQL holds {have:?}, the store {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::task::spawn_blocking(move || shipper.stop())
        .await
        .unwrap();
}

/// The report as JSON with the stores' names replaced by placeholders.
fn normalized(report: &AuditReport, names: &[&str]) -> serde_json::Value {
    let mut text = serde_json::to_string(report).unwrap();
    for (i, name) in names.iter().enumerate() {
        text = text.replace(
            &serde_json::to_string(name).unwrap(),
            &format!("\"STORE{i}\""),
        );
    }
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_gives_the_same_report_on_both_tiers() {
    let Some(pg) = PostgresServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The primary stored 0..500 (and a wrong copy of 900..910), the backup
    // 400..1000 less 700..750 after the handover at 499; the exporter's
    // statistics account for 1100 sequences of which 50 never sent, and it
    // declared 1000..1049 lost: 1050..1100 is an unexplained tail.
    let primary = HandStore::create(dir.path(), "primary.sqlite");
    primary.add_records(Some(1), 1, 0..500, BASE_MS);
    primary.add_records(Some(1), 1, 900..910, OTHER_BASE_MS);
    primary.add_handover(1_000, None, 11, None);
    let backup = HandStore::create(dir.path(), "backup.sqlite");
    backup.add_records(Some(1), 1, 400..700, BASE_MS);
    backup.add_records(Some(1), 1, 750..1000, BASE_MS);
    backup.add_records(None, 3, 0..40, BASE_MS);
    backup.add_records(Some(2), 9, (1 << 63) - 5..(1 << 63) + 5, BASE_MS);
    backup.add_handover(2_000, Some(11), 12, Some(499));
    backup.add_totals(1050, 50);
    backup.add_declared(1000, 1049);

    ship(&pg.url, &primary, "primary").await;
    ship(&pg.url, &backup, "backup").await;

    let on_sqlite = collector::audit::run(&AuditOptions {
        databases: vec![backup.path.clone(), primary.path.clone()],
        ..AuditOptions::default()
    })
    .unwrap();
    // The PostgreSQL stores come sorted by name: backup, primary.
    let on_postgres = collector::audit::run(&AuditOptions {
        postgres: Some(pg.url.clone()),
        ..AuditOptions::default()
    })
    .unwrap();
    assert_eq!(on_sqlite.verdict, Verdict::Fail);
    let t = &on_sqlite.totals;
    assert_eq!(
        t.missing_records,
        50 + 50 + (1 << 63) - 5,
        "gap 700..750, the tail, and 0.. below exporter 2's first sequence"
    );
    assert_eq!(t.conflicting_sequences, 10, "900..910");
    assert_eq!(t.benign_duplicate_sequences, 100, "400..500");
    assert_eq!(t.declared_lost_records, 50);
    assert_eq!(t.non_billing_records_skipped, 40);
    assert_eq!(t.exporter_domains, 2);
    let backup_path = backup.path.display().to_string();
    let primary_path = primary.path.display().to_string();
    assert_eq!(
        normalized(&on_sqlite, &[&backup_path, &primary_path]),
        normalized(&on_postgres, &["backup", "primary"]),
        "the audit differs between SQLite and PostgreSQL"
    );

    // The command line agrees: exit 1 (findings), the same JSON.
    let out = Command::new(workspace_bin("collector"))
        .args(["audit", "--quiet", "--json", "--postgres", &pg.url])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli, serde_json::to_value(&on_postgres).unwrap());

    // Wiped watermarks re-send everything: PostgreSQL drops all of it.
    let before = shipped(&pg.url, "backup").await;
    backup
        .conn
        .execute("DELETE FROM shipping_watermark", [])
        .unwrap();
    assert!(!watermarks_at_end(&backup));
    ship(&pg.url, &backup, "backup").await;
    assert_eq!(shipped(&pg.url, "backup").await, before, "nothing doubled");
}

/// `flows` as the shipper made it before the per-message columns
/// (transport, template, header sequence, arrival) moved to
/// `shipped_blocks` alone.
const FLOWS_WITH_MESSAGE_COLUMNS: &str = "
CREATE TABLE flows (
    collector text NOT NULL, block_id bigint NOT NULL, record_index integer NOT NULL,
    exporter text NOT NULL, transport text NOT NULL, domain bigint NOT NULL,
    template_id integer NOT NULL, export_time timestamptz NOT NULL,
    message_sequence bigint NOT NULL, received_at timestamptz NOT NULL,
    billing_exporter bigint, record_sequence bigint, record_hash bigint NOT NULL,
    src_addr inet, dst_addr inet, src_port integer, dst_port integer, protocol smallint,
    tcp_flags integer, tos smallint, octets bigint, packets bigint,
    flow_start timestamptz, flow_end timestamptz, ingress_if bigint, egress_if bigint,
    fields jsonb
) PARTITION BY RANGE (export_time);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_flows_table_and_a_partly_shipped_range_take_the_rest_once() {
    let Some(pg) = PostgresServer::start() else {
        return;
    };
    let (client, connection) = tokio_postgres::connect(&pg.url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(FLOWS_WITH_MESSAGE_COLUMNS)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = HandStore::create(dir.path(), "store.sqlite");
    // 12 blocks of 25 records.
    store.add_records(Some(1), 1, 0..300, BASE_MS);
    ship(&pg.url, &store, "c").await;
    let new_rows_with_old_columns: i64 = client
        .query_one(
            "SELECT count(*) FROM flows WHERE transport IS NOT NULL OR template_id IS NOT NULL
                OR message_sequence IS NOT NULL OR received_at IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        new_rows_with_old_columns, 0,
        "the old columns are left NULL"
    );

    // Blocks 4 to 6 gone from PostgreSQL, the others still there, and the
    // watermark wiped: the shipper re-reads all 12 blocks, in transactions
    // of 7 spanning both kinds, and copies only the missing three.
    client
        .batch_execute(
            "DELETE FROM flows WHERE collector = 'c' AND block_id BETWEEN 4 AND 6;
             DELETE FROM shipped_blocks WHERE collector = 'c' AND block_id BETWEEN 4 AND 6;",
        )
        .await
        .unwrap();
    store
        .conn
        .execute("DELETE FROM shipping_watermark", [])
        .unwrap();
    ship(&pg.url, &store, "c").await;
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT record_sequence), min(record_sequence),
                    max(record_sequence)
             FROM flows WHERE collector = 'c'",
            &[],
        )
        .await
        .unwrap();
    let (rows, distinct, lowest, highest): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!((rows, distinct, lowest, highest), (300, 300, 0, 299));
}

#[test]
fn audit_refuses_both_kinds_of_store_at_once() {
    let err = collector::audit::run(&AuditOptions {
        databases: vec![PathBuf::from("a.sqlite")],
        postgres: Some("postgresql://postgres@127.0.0.1:1/postgres".into()),
        ..AuditOptions::default()
    })
    .unwrap_err();
    assert!(format!("{err:#}").contains("not both"), "{err:#}");
}
