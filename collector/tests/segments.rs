//! Record bytes in segment files (schema 6, collector/src/segments.rs):
//! a store written before them is migrated in place and keeps its records
//! readable beside new ones, and a store copied without its segments is
//! named unreadable by the audit instead of passing.

use std::path::Path;
use std::sync::Arc;

use collector::audit::{self, AuditOptions, Verdict};
use collector::billing::BillingTag;
use collector::ingest::{Batch, RecordBlock};
use collector::query::{self, Filter};
use collector::segments;
use collector::store::{SCHEMA_VERSION, Store};
use protocol::ipfix::flow::{FlowRecord, flow_template};
use rusqlite::Connection;

/// Billing records `first..first + count` of exporter 7, domain 1.
fn billing_batch(first: u64, count: u32) -> Batch {
    let mut batch = Batch::default();
    for n in first..first + count as u64 {
        FlowRecord::synthetic(n, 1_700_000_000_000).encode(&mut batch.bytes);
    }
    batch.blocks.push(RecordBlock {
        exporter: Arc::from("192.0.2.1:4739"),
        transport: "sctp",
        domain: 1,
        template: Arc::new(flow_template()),
        export_time: 1_700_000_000,
        message_sequence: first as u32,
        first_record_index: 0,
        record_count: count,
        received_ms: 0,
        bytes: 0..batch.bytes.len(),
        billing: Some(BillingTag {
            exporter_id: 7,
            first_record_sequence: first,
        }),
    });
    batch
}

fn stored_records(path: &Path) -> usize {
    let conn = Store::open_read_only(path).unwrap();
    let mut n = 0;
    query::for_each_record(&conn, &Filter::default(), |_| {
        n += 1;
        Ok(std::ops::ControlFlow::Continue(()))
    })
    .unwrap();
    n
}

fn audit(path: &Path) -> audit::AuditReport {
    audit::run(&AuditOptions {
        databases: vec![path.to_owned()],
        ..AuditOptions::default()
    })
    .unwrap()
}

/// Turns a store into what schema 5 wrote: the bytes inside the rows, no
/// segment columns, no segments directory.
fn rewind_to_version_5(path: &Path) {
    let conn = Connection::open(path).unwrap();
    let rows: Vec<(i64, i64, i64, i64)> = conn
        .prepare("SELECT id, segment, segment_offset, segment_length FROM record_blocks")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut reader = segments::SegmentReader::for_database(path);
    for (id, segment, offset, length) in rows {
        let bytes = reader
            .read(segments::Location {
                segment,
                offset: offset as u64,
                length: length as u64,
            })
            .unwrap()
            .to_vec();
        conn.execute(
            "UPDATE record_blocks SET records = ?1 WHERE id = ?2",
            rusqlite::params![bytes, id],
        )
        .unwrap();
    }
    conn.execute_batch(
        "DROP INDEX record_blocks_by_billing;
         ALTER TABLE record_blocks DROP COLUMN segment;
         ALTER TABLE record_blocks DROP COLUMN segment_offset;
         ALTER TABLE record_blocks DROP COLUMN segment_length;
         CREATE INDEX record_blocks_by_billing
             ON record_blocks (billing_exporter, domain, first_record_sequence);
         PRAGMA user_version = 5;",
    )
    .unwrap();
    drop(conn);
    std::fs::remove_dir_all(segments::directory(path)).unwrap();
}

#[test]
fn a_version_5_store_is_migrated_and_reads_old_and_new_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sqlite");
    Store::open(&path)
        .unwrap()
        .commit(&[billing_batch(0, 10)], 1)
        .unwrap();
    rewind_to_version_5(&path);
    // Version 5 as written then: readable by the audit without migrating.
    assert_eq!(stored_records(&path), 10);
    let report = audit(&path);
    assert_eq!(report.verdict, Verdict::Pass, "{:?}", report.failures);
    assert_eq!(report.totals.records_present, 10);

    let mut store = Store::open(&path).unwrap();
    let version: i64 = store
        .connection()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    store.commit(&[billing_batch(10, 15)], 2).unwrap();
    let (in_rows, in_segments): (i64, i64) = store
        .connection()
        .query_row(
            "SELECT SUM(segment IS NULL), SUM(segment IS NOT NULL) FROM record_blocks",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((in_rows, in_segments), (1, 1), "old bytes stay, new go out");
    drop(store);

    assert_eq!(stored_records(&path), 25);
    let report = audit(&path);
    assert_eq!(report.verdict, Verdict::Pass, "{:?}", report.failures);
    assert_eq!(report.totals.records_present, 25);
    assert_eq!(report.totals.missing_records, 0);
}

#[test]
fn a_store_copied_without_its_segments_fails_the_audit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sqlite");
    let mut store = Store::open(&path).unwrap();
    store.commit(&[billing_batch(0, 10)], 1).unwrap();
    store.commit(&[billing_batch(10, 10)], 2).unwrap();
    drop(store);
    let report = audit(&path);
    assert_eq!(report.verdict, Verdict::Pass, "{:?}", report.failures);
    assert_eq!(report.totals.records_present, 20);

    std::fs::remove_dir_all(segments::directory(&path)).unwrap();
    let report = audit(&path);
    assert_eq!(report.verdict, Verdict::Fail);
    assert_eq!(report.totals.anomalies, 2, "{:?}", report.failures);
    assert_eq!(report.totals.records_present, 0);
    assert!(
        report.failures.iter().any(|f| f.contains("unreadable")),
        "{:?}",
        report.failures
    );
    // Query says why instead of returning nothing.
    let conn = Store::open_read_only(&path).unwrap();
    let err = query::for_each_record(&conn, &Filter::default(), |_| {
        Ok(std::ops::ControlFlow::Continue(()))
    })
    .unwrap_err();
    assert!(format!("{err:#}").contains("segment"), "{err:#}");
}
