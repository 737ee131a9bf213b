//! The store's side of declared losses: an exporter's reliability
//! statistics (RFC 7011 4.3) on a billing association declare the record
//! sequences it will never send; the store records them, cookies pass over
//! them, and records actually stored are never declared lost. Also the
//! in-place upgrade of a schema version 3 store.

use std::sync::Arc;

use collector::billing::BillingTag;
use collector::ingest::{Batch, RecordBlock, TotalsReport};
use collector::store::{SCHEMA_VERSION, Store};
use protocol::ipfix::flow::{FlowRecord, flow_template};
use protocol::ipfix::reliability::ReliabilityStatistics;

const PEER: &str = "192.0.2.1:4739";

fn records(batch: &mut Batch, exporter: u32, domain: u32, first: u64, count: u32) {
    let start = batch.bytes.len();
    for n in first..first + count as u64 {
        FlowRecord::synthetic(n, 1_700_000_000_000).encode(&mut batch.bytes);
    }
    batch.blocks.push(RecordBlock {
        exporter: Arc::from(PEER),
        transport: "sctp",
        domain,
        template: Arc::new(flow_template()),
        export_time: 1_700_000_000,
        message_sequence: first as u32,
        first_record_index: 0,
        record_count: count,
        received_ms: 0,
        bytes: start..batch.bytes.len(),
        billing: Some(BillingTag {
            exporter_id: exporter,
            first_record_sequence: first,
        }),
    });
}

fn totals(exporter: u32, domain: u32, start: u64, exported: u64, not_sent: u64) -> TotalsReport {
    TotalsReport {
        peer: Arc::from(PEER),
        transport: "sctp",
        received_ms: 5,
        stats: ReliabilityStatistics {
            exporting_process_id: exporter,
            observation_domain_id: domain,
            exported_messages: 1,
            exported_records: exported,
            not_sent_records: not_sent,
            system_init_ms: 1_765_000_000_000,
            observation_ms: 1_765_000_000_100,
        },
        billing: Some((exporter, start)),
    }
}

fn declared_rows(store: &Store) -> Vec<(i64, i64, i64)> {
    let mut stmt = store
        .connection()
        .prepare("SELECT first, last, system_init_ms FROM declared_losses ORDER BY first")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn a_declaration_moves_contiguity_past_what_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sqlite");
    let mut store = Store::open(&path).unwrap();
    // Before the exporter's crash: 0..=99 stored, 100..=119 in flight and
    // stored too (its cookie for them never reached the exporter).
    let mut batch = Batch::default();
    records(&mut batch, 7, 1, 0, 120);
    store.commit(&[batch], 1).unwrap();
    // Restarted exporter: Cookie Echo for 99 (association starts at 100),
    // reserved next sequence 1000, so 100..=999 are declared (900), then
    // new records from 1000 on.
    let mut batch = Batch::default();
    batch.totals.push(totals(7, 1, 100, 100, 900));
    records(&mut batch, 7, 1, 1000, 50);
    store.commit(&[batch], 2).unwrap();
    assert_eq!(declared_rows(&store), [(120, 999, 1_765_000_000_000)]);
    let ledger = store.ledger();
    let ledger = ledger.lock().unwrap();
    assert_eq!(ledger.covered_through((7, 1), 0), Some(1049));
    assert_eq!(
        ledger.stored[&(7, 1)].ranges().collect::<Vec<_>>(),
        [(0, 119), (1000, 1049)],
        "a declaration stores nothing"
    );
    drop(ledger);
    // The same statistics again (periodic) declare nothing new.
    let mut batch = Batch::default();
    batch.totals.push(totals(7, 1, 100, 150, 900));
    store.commit(&[batch], 3).unwrap();
    assert_eq!(declared_rows(&store).len(), 1);
    let (n, exported): (i64, i64) = store
        .connection()
        .query_row(
            "SELECT COUNT(*), MAX(exported_records) FROM exporter_totals",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (n, exported),
        (1, 150),
        "one row per exporter process, highest counts"
    );
    drop(store);
    // Reopened: the declaration is durable and still covers.
    let store = Store::open(&path).unwrap();
    assert_eq!(
        store.ledger().lock().unwrap().covered_through((7, 1), 0),
        Some(1049)
    );
}

#[test]
fn a_gap_larger_than_the_declared_count_is_not_a_declaration() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("c.sqlite")).unwrap();
    let mut batch = Batch::default();
    records(&mut batch, 7, 1, 0, 100);
    records(&mut batch, 7, 1, 150, 50);
    // 100..=149 never arrived, but the exporter says it sent everything.
    batch.totals.push(totals(7, 1, 0, 200, 0));
    store.commit(&[batch], 1).unwrap();
    assert!(declared_rows(&store).is_empty());
    assert_eq!(
        store.ledger().lock().unwrap().covered_through((7, 1), 0),
        Some(99)
    );
    // Nor does a claim beyond any exporter's range (2^63), however much it
    // says was not sent.
    let mut batch = Batch::default();
    batch.totals.push(totals(7, 1, 0, 0, u64::MAX - 1));
    store.commit(&[batch], 2).unwrap();
    assert!(declared_rows(&store).is_empty());
    // A plain session's statistics never declare anything.
    let mut batch = Batch::default();
    let mut plain = totals(7, 1, 0, 0, 200);
    plain.billing = None;
    batch.totals.push(plain);
    store.commit(&[batch], 2).unwrap();
    assert!(declared_rows(&store).is_empty());
}

#[test]
fn a_version_3_store_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v3.sqlite");
    {
        let mut store = Store::open(&path).unwrap();
        let mut batch = Batch::default();
        records(&mut batch, 7, 1, 0, 10);
        store.commit(&[batch], 1).unwrap();
        // Version 3 is version 4 without the statistics tables.
        store
            .connection()
            .execute_batch(
                "DROP TABLE exporter_totals; DROP TABLE declared_losses;
                 PRAGMA user_version = 3;",
            )
            .unwrap();
    }
    let mut store = Store::open(&path).unwrap();
    let version: i64 = store
        .connection()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    assert_eq!(SCHEMA_VERSION, 6);
    assert_eq!(store.record_count().unwrap(), 10, "old records kept");
    let watermarks: i64 = store
        .connection()
        .query_row("SELECT count(*) FROM shipping_watermark", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        watermarks, 0,
        "version 5's shipping_watermark created, empty"
    );
    let mut batch = Batch::default();
    batch.totals.push(totals(7, 1, 10, 10, 5));
    store.commit(&[batch], 2).unwrap();
    assert_eq!(declared_rows(&store), [(10, 14, 1_765_000_000_000)]);
}
