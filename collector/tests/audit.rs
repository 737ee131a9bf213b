//! `collector audit` over hand-built stores: continuity across a failover,
//! gaps, benign and conflicting duplicates, handovers, JSON, exit codes, and
//! a million records.
//!
//! The stores are created here with the schema version 3 SQL rather than
//! through `Store::open`, so the cases (such as a duplicate within one
//! store, which the collector itself never writes) do not depend on how the
//! collector fills a store.

use std::path::{Path, PathBuf};
use std::process::Command;

use collector::audit::{self, AuditOptions, AuditReport, Verdict};
use collector::store::encode_template_fields;
use protocol::ipfix::flow::{FlowRecord, flow_template};
use rusqlite::{Connection, params};

const SCHEMA_V3: &str = r#"
CREATE TABLE exporters (id INTEGER PRIMARY KEY, address TEXT NOT NULL, transport TEXT NOT NULL,
    first_seen_ms INTEGER NOT NULL, UNIQUE (address, transport));
CREATE TABLE templates (id INTEGER PRIMARY KEY, template_id INTEGER NOT NULL,
    scope_field_count INTEGER NOT NULL, fields BLOB NOT NULL,
    UNIQUE (template_id, scope_field_count, fields));
CREATE TABLE record_blocks (
    id INTEGER PRIMARY KEY, exporter_id INTEGER NOT NULL REFERENCES exporters(id),
    domain INTEGER NOT NULL, template_ref INTEGER NOT NULL REFERENCES templates(id),
    export_time INTEGER NOT NULL, message_sequence INTEGER NOT NULL,
    first_record_index INTEGER NOT NULL, record_count INTEGER NOT NULL,
    received_ms INTEGER NOT NULL, records BLOB NOT NULL,
    billing_exporter INTEGER, first_record_sequence INTEGER);
CREATE INDEX record_blocks_by_billing
    ON record_blocks (billing_exporter, domain, first_record_sequence);
CREATE TABLE billing_handovers (
    id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, billing_exporter INTEGER NOT NULL,
    domain INTEGER NOT NULL, peer TEXT NOT NULL, from_pe INTEGER, to_pe INTEGER NOT NULL,
    record_sequence INTEGER);
PRAGMA user_version = 3;
"#;

/// Flow start time of the records as the exporter sent them.
const BASE_MS: u64 = 1_700_000_000_000;
/// A different base gives different bytes for the same sequence: what a
/// collector storing the wrong record under a sequence would look like.
const OTHER_BASE_MS: u64 = 1_800_000_000_000;

/// Template row id of the flow template in every test store.
const FLOW_TEMPLATE_REF: i64 = 1;

struct TestStore {
    path: PathBuf,
    conn: Connection,
}

impl TestStore {
    fn create(dir: &Path, name: &str) -> Self {
        let path = dir.join(name);
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA_V3).unwrap();
        let template = flow_template();
        conn.execute(
            "INSERT INTO templates (id, template_id, scope_field_count, fields)
             VALUES (?1, ?2, ?3, ?4)",
            params![
                FLOW_TEMPLATE_REF,
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

    /// Stores records `sequences` of (exporter, domain) in blocks of
    /// `per_block`, their bytes made from `base_ms`.
    fn add_records(
        &self,
        billing_exporter: Option<u32>,
        domain: u32,
        sequences: std::ops::Range<u64>,
        per_block: u64,
        base_ms: u64,
    ) {
        let tx = self.conn.unchecked_transaction().unwrap();
        {
            let mut insert = tx
                .prepare(
                    "INSERT INTO record_blocks (exporter_id, domain, template_ref, export_time,
                        message_sequence, first_record_index, record_count, received_ms, records,
                        billing_exporter, first_record_sequence)
                     VALUES (1, ?1, ?2, 1700000000, ?3, 0, ?4, 0, ?5, ?6, ?7)",
                )
                .unwrap();
            let mut bytes = Vec::new();
            let mut first = sequences.start;
            while first < sequences.end {
                let end = (first + per_block).min(sequences.end);
                bytes.clear();
                for n in first..end {
                    FlowRecord::synthetic(n, base_ms).encode(&mut bytes);
                }
                insert
                    .execute(params![
                        domain,
                        FLOW_TEMPLATE_REF,
                        first as u32,
                        end - first,
                        bytes,
                        billing_exporter,
                        billing_exporter.map(|_| first as i64)
                    ])
                    .unwrap();
                first = end;
            }
        }
        tx.commit().unwrap();
    }

    fn add_handover(
        &self,
        at_ms: i64,
        billing_exporter: u32,
        domain: u32,
        from_pe: Option<u32>,
        to_pe: u32,
        record_sequence: Option<u64>,
    ) {
        self.conn
            .execute(
                "INSERT INTO billing_handovers (at_ms, billing_exporter, domain, peer, from_pe,
                    to_pe, record_sequence) VALUES (?1, ?2, ?3, '192.0.2.1:4739', ?4, ?5, ?6)",
                params![
                    at_ms,
                    billing_exporter,
                    domain,
                    from_pe,
                    to_pe,
                    record_sequence.map(|s| s as i64)
                ],
            )
            .unwrap();
    }
}

/// The schema version 4 tables: the exporters' reliability statistics and
/// the losses they declared.
const SCHEMA_V4_TABLES: &str = r#"
CREATE TABLE IF NOT EXISTS exporter_totals (
    id INTEGER PRIMARY KEY, peer TEXT NOT NULL, transport TEXT NOT NULL,
    billing_exporter INTEGER, exporting_process_id INTEGER NOT NULL, domain INTEGER NOT NULL,
    system_init_ms INTEGER NOT NULL, exported_messages INTEGER NOT NULL,
    exported_records INTEGER NOT NULL, not_sent_records INTEGER NOT NULL,
    observation_ms INTEGER NOT NULL, received_ms INTEGER NOT NULL,
    UNIQUE (peer, exporting_process_id, domain, system_init_ms));
CREATE TABLE IF NOT EXISTS declared_losses (
    id INTEGER PRIMARY KEY, billing_exporter INTEGER NOT NULL, domain INTEGER NOT NULL,
    first INTEGER NOT NULL, last INTEGER NOT NULL, at_ms INTEGER NOT NULL,
    system_init_ms INTEGER NOT NULL, peer TEXT NOT NULL);
PRAGMA user_version = 4;
"#;

impl TestStore {
    /// The exporter's statistics as received: `exported + not_sent` sequences
    /// accounted for.
    fn add_totals(&self, billing_exporter: u32, domain: u32, exported: u64, not_sent: u64) {
        self.conn.execute_batch(SCHEMA_V4_TABLES).unwrap();
        self.conn
            .execute(
                "INSERT INTO exporter_totals (peer, transport, billing_exporter,
                    exporting_process_id, domain, system_init_ms, exported_messages,
                    exported_records, not_sent_records, observation_ms, received_ms)
                 VALUES ('192.0.2.1:4739', 'sctp', ?1, ?1, ?2, ?3, 1, ?4, ?5, 0, 0)",
                params![
                    billing_exporter,
                    domain,
                    exported as i64 + not_sent as i64,
                    exported as i64,
                    not_sent as i64
                ],
            )
            .unwrap();
    }

    /// A declaration recorded by this store: `first..=last` never sent by an
    /// exporter process started at `restart_ms`.
    fn add_declared(
        &self,
        billing_exporter: u32,
        domain: u32,
        first: u64,
        last: u64,
        restart_ms: i64,
    ) {
        self.conn.execute_batch(SCHEMA_V4_TABLES).unwrap();
        self.conn
            .execute(
                "INSERT INTO declared_losses (billing_exporter, domain, first, last, at_ms,
                    system_init_ms, peer) VALUES (?1, ?2, ?3, ?4, 0, ?5, '192.0.2.1:4739')",
                params![
                    billing_exporter,
                    domain,
                    first as i64,
                    last as i64,
                    restart_ms
                ],
            )
            .unwrap();
    }
}

fn options(stores: &[&TestStore]) -> AuditOptions {
    AuditOptions {
        databases: stores.iter().map(|s| s.path.clone()).collect(),
        ..AuditOptions::default()
    }
}

fn audit(stores: &[&TestStore]) -> AuditReport {
    audit::run(&options(stores)).unwrap()
}

struct CliOutput {
    code: i32,
    stdout: String,
    stderr: String,
}

fn cli(args: &[&str]) -> CliOutput {
    let output = Command::new(env!("CARGO_BIN_EXE_collector"))
        .arg("audit")
        .args(args)
        .output()
        .unwrap();
    CliOutput {
        code: output.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

fn cli_on(stores: &[&TestStore], extra: &[&str]) -> CliOutput {
    let mut args = Vec::new();
    for s in stores {
        args.push("--database".to_owned());
        args.push(s.path.display().to_string());
    }
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cli(&args)
}

/// The usual failover: the primary stored 0..500 and the backup, after the
/// Cookie Echo vouching for 499, stored 500..1000.
fn failover_pair(dir: &Path) -> (TestStore, TestStore) {
    let primary = TestStore::create(dir, "primary.sqlite");
    let backup = TestStore::create(dir, "backup.sqlite");
    primary.add_records(Some(7), 1, 0..500, 29, BASE_MS);
    primary.add_handover(1_000, 7, 1, None, 1, None);
    backup.add_records(Some(7), 1, 500..1000, 29, BASE_MS);
    backup.add_handover(2_000, 7, 1, Some(1), 2, Some(499));
    (primary, backup)
}

#[test]
fn a_failover_split_across_two_stores_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, backup) = failover_pair(dir.path());
    let report = audit(&[&primary, &backup]);
    assert_eq!(
        report.verdict,
        Verdict::Pass,
        "{}",
        audit::report_text(&report)
    );
    assert_eq!(report.exporter_domains.len(), 1);
    let g = &report.exporter_domains[0];
    assert_eq!((g.billing_exporter, g.domain), (7, 1));
    assert_eq!((g.first_sequence, g.last_sequence), (Some(0), Some(999)));
    assert_eq!(g.records_present, 1000);
    assert_eq!(g.copies_stored, 1000);
    assert_eq!(g.gaps.missing_records, 0);
    assert_eq!(g.duplicates.sequences, 0);
    assert_eq!(g.conflicts.sequences, 0);
    let shares: Vec<(u64, u64, u64)> = g
        .stores
        .iter()
        .map(|s| (s.records, s.first_sequence, s.last_sequence))
        .collect();
    assert_eq!(shares, [(500, 0, 499), (500, 500, 999)]);
    assert_eq!(report.stores[0].billing_records, 500);
    assert_eq!(report.stores[0].billing_blocks, 18); // 500 / 29 rounded up

    let out = cli_on(&[&primary, &backup], &[]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("VERDICT: PASS"), "{}", out.stdout);
    assert!(out.stdout.contains("gaps        none"), "{}", out.stdout);
}

#[test]
fn a_missing_range_is_a_gap_with_its_exact_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestStore::create(dir.path(), "a.sqlite");
    let b = TestStore::create(dir.path(), "b.sqlite");
    a.add_records(Some(7), 1, 0..100, 29, BASE_MS);
    b.add_records(Some(7), 1, 130..200, 29, BASE_MS);
    // The second block (29..=57) lost inside the store as well.
    a.conn
        .execute(
            "DELETE FROM record_blocks WHERE first_record_sequence = 29",
            [],
        )
        .unwrap();
    let report = audit(&[&a, &b]);
    assert_eq!(report.verdict, Verdict::Fail);
    let g = &report.exporter_domains[0];
    let ranges: Vec<(u64, u64)> = g.gaps.ranges.iter().map(|r| (r.first, r.last)).collect();
    assert_eq!(ranges, [(29, 57), (100, 129)]);
    assert_eq!(g.gaps.missing_records, 29 + 30);
    assert_eq!(g.gaps.range_count, 2);
    assert_eq!(g.records_present, 200 - 59);

    let out = cli_on(&[&a, &b], &["--quiet"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("missing 29..=57"), "{}", out.stdout);
    assert!(out.stdout.contains("missing 100..=129"), "{}", out.stdout);
    assert!(out.stdout.contains("VERDICT: FAIL"), "{}", out.stdout);
}

#[test]
fn a_gap_at_the_start_counts_from_sequence_zero() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestStore::create(dir.path(), "a.sqlite");
    a.add_records(Some(7), 1, 10..50, 29, BASE_MS);
    let report = audit(&[&a]);
    let g = &report.exporter_domains[0];
    assert_eq!(g.gaps.ranges[0].first, 0);
    assert_eq!(g.gaps.ranges[0].last, 9);
    assert_eq!(g.gaps.missing_records, 10);
    assert_eq!(report.verdict, Verdict::Fail);
}

#[test]
fn identical_copies_in_two_stores_are_a_benign_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestStore::create(dir.path(), "a.sqlite");
    let b = TestStore::create(dir.path(), "b.sqlite");
    a.add_records(Some(7), 1, 0..150, 29, BASE_MS);
    // The backup got a replay from 100 on: 100..150 are stored twice.
    b.add_records(Some(7), 1, 100..200, 29, BASE_MS);
    let report = audit(&[&a, &b]);
    assert_eq!(
        report.verdict,
        Verdict::Pass,
        "{}",
        audit::report_text(&report)
    );
    let g = &report.exporter_domains[0];
    assert_eq!(g.records_present, 200);
    assert_eq!(g.copies_stored, 250);
    assert_eq!(g.duplicates.sequences, 50);
    assert_eq!(g.duplicates.extra_copies, 50);
    assert_eq!(g.duplicates.range_count, 1);
    let range = &g.duplicates.ranges[0];
    assert_eq!((range.first, range.last), (100, 149));
    let copies: Vec<(&str, u64)> = range
        .copies
        .iter()
        .map(|c| (c.store.as_str(), c.copies))
        .collect();
    assert_eq!(
        copies,
        [(a.path.to_str().unwrap(), 1), (b.path.to_str().unwrap(), 1)]
    );
    assert_eq!(g.conflicts.sequences, 0);

    let out = cli_on(&[&a, &b], &["--quiet"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("duplicate 100..=149"), "{}", out.stdout);
}

#[test]
fn differing_copies_are_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestStore::create(dir.path(), "a.sqlite");
    let b = TestStore::create(dir.path(), "b.sqlite");
    a.add_records(Some(7), 1, 0..100, 29, BASE_MS);
    b.add_records(Some(7), 1, 90..100, 29, OTHER_BASE_MS);
    b.add_records(Some(7), 1, 100..200, 29, BASE_MS);
    let report = audit(&[&a, &b]);
    assert_eq!(report.verdict, Verdict::Fail);
    let g = &report.exporter_domains[0];
    assert_eq!(g.conflicts.sequences, 10);
    assert_eq!(g.duplicates.sequences, 0);
    assert_eq!(g.gaps.missing_records, 0);
    let first = &g.conflicts.listed[0];
    assert_eq!(first.sequence, 90);
    assert_eq!(first.copies.len(), 2);
    assert_ne!(first.copies[0].record_hash, first.copies[1].record_hash);
    assert_eq!(first.copies[1].store, b.path.to_str().unwrap());
    assert!(report.failures[0].contains("10 conflicting sequences"));

    let out = cli_on(&[&a, &b], &["--quiet"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("CONFLICT 90:"), "{}", out.stdout);
}

#[test]
fn duplicates_within_one_store_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestStore::create(dir.path(), "a.sqlite");
    a.add_records(Some(7), 1, 0..100, 29, BASE_MS);
    // The same replayed records stored twice, in blocks cut differently so
    // that they overlap the original blocks partially.
    a.add_records(Some(7), 1, 40..60, 7, BASE_MS);
    let report = audit(&[&a]);
    assert_eq!(
        report.verdict,
        Verdict::Pass,
        "{}",
        audit::report_text(&report)
    );
    let g = &report.exporter_domains[0];
    assert_eq!(g.records_present, 100);
    assert_eq!(g.duplicates.sequences, 20);
    let range = &g.duplicates.ranges[0];
    assert_eq!((range.first, range.last), (40, 59));
    assert_eq!(range.copies.len(), 1);
    assert_eq!(range.copies[0].copies, 2);

    // A different record under an already stored sequence in the same store.
    a.add_records(Some(7), 1, 70..71, 1, OTHER_BASE_MS);
    let report = audit(&[&a]);
    assert_eq!(report.verdict, Verdict::Fail);
    let g = &report.exporter_domains[0];
    assert_eq!(g.conflicts.sequences, 1);
    assert_eq!(g.conflicts.listed[0].sequence, 70);
    assert_ne!(
        g.conflicts.listed[0].copies[0].block_id,
        g.conflicts.listed[0].copies[1].block_id
    );
}

#[test]
fn exporters_and_domains_are_kept_apart() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestStore::create(dir.path(), "a.sqlite");
    let b = TestStore::create(dir.path(), "b.sqlite");
    // Same sequence numbers under other exporters/domains are no duplicates.
    a.add_records(Some(1), 0, 0..100, 29, BASE_MS);
    b.add_records(Some(1), 1, 0..100, 29, OTHER_BASE_MS);
    b.add_records(Some(2), 0, 0..50, 29, OTHER_BASE_MS);
    b.add_records(Some(2), 0, 60..80, 29, OTHER_BASE_MS);
    // Plain IPFIX without the cookie protocol: no record sequence.
    a.add_records(None, 0, 0..33, 11, BASE_MS);
    let report = audit(&[&a, &b]);
    let keys: Vec<(i64, i64, u64, u64)> = report
        .exporter_domains
        .iter()
        .map(|g| {
            (
                g.billing_exporter,
                g.domain,
                g.records_present,
                g.gaps.missing_records,
            )
        })
        .collect();
    assert_eq!(keys, [(1, 0, 100, 0), (1, 1, 100, 0), (2, 0, 70, 10)]);
    assert!(
        report
            .exporter_domains
            .iter()
            .all(|g| g.duplicates.sequences == 0 && g.conflicts.sequences == 0)
    );
    assert_eq!(report.stores[0].non_billing_records_skipped, 33);
    assert_eq!(report.stores[0].non_billing_blocks, 3);
    assert_eq!(report.totals.non_billing_records_skipped, 33);
    assert_eq!(report.verdict, Verdict::Fail);
    assert_eq!(report.failures.len(), 1);
    assert!(report.failures[0].starts_with("billing exporter 2 domain 0"));

    // The filters select one exporter/domain: exporter 1 alone passes.
    let out = cli_on(&[&a, &b], &["--quiet", "--exporter", "1"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(!out.stdout.contains("billing exporter 2"), "{}", out.stdout);
    let out = cli_on(&[&a, &b], &["--quiet", "--domain", "0", "--json"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["exporter_domains"].as_array().unwrap().len(), 2);
}

#[test]
fn handovers_are_listed_in_time_order_with_their_kind() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, backup) = failover_pair(dir.path());
    // Failback: the primary takes over again after the backup vouched for 999.
    primary.add_handover(3_000, 7, 1, Some(2), 1, Some(999));
    let report = audit(&[&primary, &backup]);
    assert_eq!(
        report.verdict,
        Verdict::Pass,
        "{}",
        audit::report_text(&report)
    );
    let g = &report.exporter_domains[0];
    let handovers: Vec<_> = g
        .handovers
        .iter()
        .map(|h| {
            (
                h.at_ms,
                h.kind,
                h.from_pe,
                h.to_pe,
                h.record_sequence,
                h.store.as_str(),
            )
        })
        .collect();
    let primary_path = primary.path.to_str().unwrap();
    let backup_path = backup.path.to_str().unwrap();
    assert_eq!(
        handovers,
        [
            (1_000, "introduction", None, 1, None, primary_path),
            (2_000, "handover", Some(1), 2, Some(499), backup_path),
            (3_000, "handover", Some(2), 1, Some(999), primary_path),
        ]
    );
    assert_eq!(g.handovers[1].at, "1970-01-01T00:00:02.000Z");
    assert_eq!(report.stores[0].handovers, 2);

    let out = cli_on(&[&primary, &backup], &["--quiet"]);
    assert!(
        out.stdout.contains(
            "1970-01-01T00:00:02.000Z handover PE 0x00000001 -> PE 0x00000002, stored through 499"
        ),
        "{}",
        out.stdout
    );
}

#[test]
fn a_cookie_vouching_for_records_no_store_holds_is_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, backup) = failover_pair(dir.path());
    // The backup signed a cookie for 1099, but only 999 is stored anywhere:
    // the records after the last one seen are lost too.
    primary.add_handover(3_000, 7, 1, Some(2), 1, Some(1099));
    let report = audit(&[&primary, &backup]);
    assert_eq!(report.verdict, Verdict::Fail);
    let g = &report.exporter_domains[0];
    assert_eq!(g.last_sequence, Some(999));
    assert_eq!(g.expected_through, Some(1099));
    assert_eq!(g.gaps.missing_records, 100);
    assert_eq!(
        (g.gaps.ranges[0].first, g.gaps.ranges[0].last),
        (1000, 1099)
    );
}

#[test]
fn json_output_carries_the_same_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestStore::create(dir.path(), "a.sqlite");
    let b = TestStore::create(dir.path(), "b.sqlite");
    a.add_records(Some(7), 1, 0..120, 29, BASE_MS);
    a.add_handover(5, 7, 1, None, 1, None);
    b.add_records(Some(7), 1, 100..150, 29, BASE_MS);
    b.add_records(Some(7), 1, 160..200, 29, BASE_MS);
    b.add_records(Some(7), 1, 195..196, 1, OTHER_BASE_MS);
    let report = audit(&[&a, &b]);
    let out = cli_on(&[&a, &b], &["--json", "--quiet"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["verdict"], "fail");
    let g = &json["exporter_domains"][0];
    assert_eq!(g["billing_exporter"], 7);
    assert_eq!(g["domain"], 1);
    assert_eq!(g["first_sequence"], 0);
    assert_eq!(g["last_sequence"], 199);
    assert_eq!(g["records_present"], 190);
    assert_eq!(g["gaps"]["missing_records"], 10);
    assert_eq!(g["gaps"]["ranges"][0]["first"], 150);
    assert_eq!(g["gaps"]["ranges"][0]["last"], 159);
    assert_eq!(g["duplicates"]["sequences"], 20);
    assert_eq!(g["duplicates"]["ranges"][0]["first"], 100);
    assert_eq!(g["duplicates"]["ranges"][0]["last"], 119);
    assert_eq!(g["conflicts"]["sequences"], 1);
    assert_eq!(g["conflicts"]["listed"][0]["sequence"], 195);
    assert_eq!(g["handovers"][0]["kind"], "introduction");
    // The library report and the JSON document are the same thing.
    assert_eq!(json, serde_json::to_value(&report).unwrap());
}

#[test]
fn listing_is_limited_but_everything_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestStore::create(dir.path(), "a.sqlite");
    // Every other record lost: 50 gaps of one record each.
    for n in (0..100).step_by(2) {
        a.add_records(Some(7), 1, n + 1..n + 2, 1, BASE_MS);
    }
    let report = audit::run(&AuditOptions {
        list_limit: 10,
        ..options(&[&a])
    })
    .unwrap();
    let g = &report.exporter_domains[0];
    assert_eq!(g.gaps.range_count, 50);
    assert_eq!(g.gaps.missing_records, 50);
    assert_eq!(g.gaps.ranges.len(), 10);
    assert_eq!(g.gaps.ranges_not_listed, 40);
}

#[test]
fn sequences_beyond_two_to_the_63_keep_unsigned_order() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestStore::create(dir.path(), "a.sqlite");
    // Stored as negative i64s from 2^63 on; contiguous in unsigned order.
    let start = (1u64 << 63) - 40;
    a.add_records(Some(7), 1, start..start + 100, 29, BASE_MS);
    let report = audit(&[&a]);
    let g = &report.exporter_domains[0];
    assert_eq!(g.first_sequence, Some(start));
    assert_eq!(g.last_sequence, Some(start + 99));
    assert_eq!(g.records_present, 100);
    // Only the (huge) gap before the first record, nothing in between.
    assert_eq!(g.gaps.range_count, 1);
    assert_eq!(g.gaps.missing_records, start);
    assert_eq!(g.duplicates.sequences, 0);
}

#[test]
fn an_unreadable_block_is_an_anomaly_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestStore::create(dir.path(), "a.sqlite");
    a.add_records(Some(7), 1, 0..58, 29, BASE_MS);
    // The second block claims 29 records but its BLOB holds 28.
    a.conn
        .execute(
            "UPDATE record_blocks SET records = substr(records, 1, length(records) - 47)
             WHERE first_record_sequence = 29",
            [],
        )
        .unwrap();
    let report = audit(&[&a]);
    assert_eq!(report.verdict, Verdict::Fail);
    let g = &report.exporter_domains[0];
    assert_eq!(g.anomalies.len(), 1);
    assert!(
        g.anomalies[0].problem.contains("record_count is 29"),
        "{}",
        g.anomalies[0].problem
    );
    assert_eq!(g.records_present, 57);
}

#[test]
fn usage_and_io_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sqlite");
    let out = cli(&["--database", missing.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("missing.sqlite"), "{}", out.stderr);

    // A store from before schema version 3 has nothing to audit.
    let old = dir.path().join("old.sqlite");
    Connection::open(&old)
        .unwrap()
        .execute_batch("CREATE TABLE record_blocks (id INTEGER PRIMARY KEY, records BLOB);")
        .unwrap();
    let out = cli(&["--database", old.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("no billing columns"), "{}", out.stderr);

    let out = cli(&[]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
}

#[test]
fn auditing_nothing_does_not_pass() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, backup) = failover_pair(dir.path());
    let out = cli_on(&[&primary, &backup], &["--quiet", "--exporter", "8"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("no billing records or handovers found"),
        "{}",
        out.stdout
    );
}

#[test]
fn a_million_records_across_two_stores() {
    const TOTAL: u64 = 1_000_000;
    const SPLIT: u64 = 600_000;
    let dir = tempfile::tempdir().unwrap();
    let a = TestStore::create(dir.path(), "a.sqlite");
    let b = TestStore::create(dir.path(), "b.sqlite");
    a.add_records(Some(7), 1, 0..SPLIT, 29, BASE_MS);
    // The backup received a replay of the last 100 records before the split.
    b.add_records(Some(7), 1, SPLIT - 100..TOTAL, 29, BASE_MS);
    let report = audit(&[&a, &b]);
    assert_eq!(
        report.verdict,
        Verdict::Pass,
        "{}",
        audit::report_text(&report)
    );
    let g = &report.exporter_domains[0];
    assert_eq!(g.records_present, TOTAL);
    assert_eq!(g.copies_stored, TOTAL + 100);
    assert_eq!(g.last_sequence, Some(TOTAL - 1));
    assert_eq!(g.gaps.missing_records, 0);
    assert_eq!(g.duplicates.sequences, 100);
    assert_eq!(g.duplicates.range_count, 1);
    assert_eq!(
        report.stores[0].billing_blocks + report.stores[1].billing_blocks,
        SPLIT.div_ceil(29) + (TOTAL - SPLIT + 100).div_ceil(29)
    );
}

#[test]
fn a_store_that_lost_its_tail_fails_against_the_exporters_account() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestStore::create(dir.path(), "a.sqlite");
    a.add_records(Some(7), 1, 0..1000, 29, BASE_MS);
    a.add_handover(1, 7, 1, None, 1, None);
    // Without the exporter's account the store looks complete.
    assert_eq!(audit(&[&a]).verdict, Verdict::Pass);
    // The exporter said it sent 1500: the last 500 are stored nowhere.
    a.add_totals(7, 1, 1500, 0);
    let report = audit(&[&a]);
    assert_eq!(
        report.verdict,
        Verdict::Fail,
        "{}",
        audit::report_text(&report)
    );
    let g = &report.exporter_domains[0];
    assert_eq!(g.exporter_accounted, Some(1500));
    assert_eq!(g.expected_through, Some(1499));
    assert_eq!(g.gaps.missing_records, 500);
    assert_eq!(
        (g.gaps.ranges[0].first, g.gaps.ranges[0].last),
        (1000, 1499)
    );
    assert_eq!(g.declared_loss.records, 0);
    let out = cli_on(&[&a], &["--quiet"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("missing 1000..=1499"), "{}", out.stdout);
    assert!(
        out.stdout.contains("unexplained gap(s) (1000..=1499)"),
        "{}",
        out.stdout
    );
}

#[test]
fn the_tail_sent_elsewhere_is_missing_when_that_store_is_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, backup) = failover_pair(dir.path());
    // The primary came back and received the end-of-stream statistics
    // (1000 sent); the backup holds 500..=999.
    primary.add_totals(7, 1, 1000, 0);
    let alone = audit(&[&primary]);
    assert_eq!(alone.verdict, Verdict::Fail);
    let g = &alone.exporter_domains[0];
    assert_eq!(g.records_present, 500);
    assert_eq!((g.gaps.ranges[0].first, g.gaps.ranges[0].last), (500, 999));
    let both = audit(&[&primary, &backup]);
    assert_eq!(both.verdict, Verdict::Pass, "{}", audit::report_text(&both));
    assert_eq!(both.exporter_domains[0].gaps.missing_records, 0);
}

#[test]
fn declared_loss_is_shown_apart_and_fails_only_with_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestStore::create(dir.path(), "a.sqlite");
    let b = TestStore::create(dir.path(), "b.sqlite");
    a.add_records(Some(7), 1, 0..100, 29, BASE_MS);
    a.add_handover(1, 7, 1, None, 1, None);
    // The exporter restarted after its cookie for 99 and declared
    // 100..=299 lost; the other collector had stored 100..=149 before the
    // crash (present, not lost). After the restart it sent 300..=399.
    b.add_records(Some(7), 1, 100..150, 29, BASE_MS);
    a.add_declared(7, 1, 100, 299, 1_765_000_000_000);
    a.add_records(Some(7), 1, 300..400, 29, BASE_MS);
    a.add_totals(7, 1, 200, 200);
    let report = audit(&[&a, &b]);
    assert_eq!(
        report.verdict,
        Verdict::Pass,
        "{}",
        audit::report_text(&report)
    );
    let g = &report.exporter_domains[0];
    assert_eq!(g.gaps.missing_records, 0);
    assert_eq!(g.declared_loss.records, 150);
    assert_eq!(g.declared_loss.range_count, 1);
    let r = &g.declared_loss.ranges[0];
    assert_eq!((r.first, r.last, r.records), (150, 299, 150));
    assert_eq!(r.exporter_restart_ms, 1_765_000_000_000);
    assert_eq!(report.totals.declared_lost_records, 150);
    assert_eq!(report.totals.missing_records, 0);

    let out = cli_on(&[&a, &b], &["--quiet"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(
            "declared loss 150..=299 (150 records), exporter restarted 2025-12-06T05:46:40.000Z"
        ),
        "{}",
        out.stdout
    );
    let out = cli_on(&[&a, &b], &["--quiet", "--fail-on-declared-loss"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("150 records declared lost"),
        "{}",
        out.stdout
    );
    let out = cli_on(&[&a, &b], &["--quiet", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["totals"]["declared_lost_records"], 150);
    assert_eq!(
        json["exporter_domains"][0]["declared_loss"]["ranges"][0]["first"],
        150
    );

    // A hole beside the declaration stays an unexplained gap.
    a.add_totals(7, 1, 300, 200);
    let report = audit(&[&a, &b]);
    assert_eq!(report.verdict, Verdict::Fail);
    let g = &report.exporter_domains[0];
    assert_eq!((g.gaps.ranges[0].first, g.gaps.ranges[0].last), (400, 499));
    assert_eq!(g.declared_loss.records, 150);
}

#[test]
fn the_exporters_state_file_reveals_a_tail_no_given_store_knows_of() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, _backup) = failover_pair(dir.path());
    // The primary died and never came back; the backup's store is gone.
    // The exporter stopped cleanly after 1000 records: its state file says so.
    let state = dir.path().join("exporter.state");
    std::fs::write(
        &state,
        "version = 1\nexporter_id = 7\n\n[[domains]]\ndomain = 1\nnext_sequence = 1000\n\
         last_cookie = \"00\"\nnot_sent = 0\n",
    )
    .unwrap();
    assert_eq!(
        audit(&[&primary]).verdict,
        Verdict::Pass,
        "the store alone looks complete"
    );
    let report = audit::run(&AuditOptions {
        exporter_states: vec![state.clone()],
        ..options(&[&primary])
    })
    .unwrap();
    assert_eq!(report.verdict, Verdict::Fail);
    let g = &report.exporter_domains[0];
    assert_eq!(g.state_file_next_sequence, Some(1000));
    assert_eq!((g.gaps.ranges[0].first, g.gaps.ranges[0].last), (500, 999));
    let state_arg = state.display().to_string();
    let out = cli_on(&[&primary], &["--quiet", "--exporter-state", &state_arg]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("missing 500..=999"), "{}", out.stdout);
    // Another exporter's file claims nothing here; a broken file is an error.
    std::fs::write(
        &state,
        "version = 1\nexporter_id = 8\n[[domains]]\ndomain = 1\nnext_sequence = 5000\n",
    )
    .unwrap();
    let out = cli_on(&[&primary], &["--quiet", "--exporter-state", &state_arg]);
    assert_eq!(
        out.code, 1,
        "exporter 8 has no records anywhere: {}",
        out.stdout
    );
    assert!(
        out.stdout.contains("billing exporter 7 domain 1: PASS"),
        "{}",
        out.stdout
    );
    std::fs::write(&state, "not toml [").unwrap();
    let out = cli_on(&[&primary], &["--quiet", "--exporter-state", &state_arg]);
    assert_eq!(out.code, 2, "{}", out.stderr);
}
