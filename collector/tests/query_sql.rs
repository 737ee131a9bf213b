//! `collector query` filters and aggregates, and `collector sql` over the
//! `flows` table, on a store filled through the store's own API with six
//! known records: four IPv4 flows from a plain UDP exporter (two messages),
//! two IPv6 flows from a billing exporter. Every expected value below is
//! worked out by hand from the table in `known_store`.

// The record and block helpers take one argument per column of the table
// in `known_store`, so each call reads as that table's row.
#![allow(clippy::too_many_arguments)]

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use collector::aggregate::{self, TopBy, TopOrder, Totals};
use collector::batch::{Batch, BillingTag, RecordBlock};
use collector::query::{self, Filter, Format};
use collector::sql::{self, SqlFormat};
use collector::store::Store;
use protocol::ipfix::flow::{FlowRecord, flow_template};
use protocol::ipfix::{FieldSpecifier, Template};
use serde_json::{Value, json};

/// Divisible by 60: the one-minute bins start here.
const BASE_S: i64 = 1_700_000_040;
const V4_EXPORTER: &str = "192.0.2.1:4739";
const V6_EXPORTER: &str = "192.0.2.2:4739";
const LATE_EXPORT_S: u32 = 1_700_000_200;

fn v4(
    src: &str,
    sport: u16,
    dst: &str,
    dport: u16,
    proto: u8,
    octets: u64,
    packets: u64,
    start_s: i64,
) -> FlowRecord {
    let start = ((BASE_S + start_s) * 1000) as u64;
    FlowRecord {
        source: src.parse::<Ipv4Addr>().unwrap(),
        destination: dst.parse::<Ipv4Addr>().unwrap(),
        source_port: sport,
        destination_port: dport,
        protocol: proto,
        tcp_flags: 0x18,
        tos: 0,
        octets,
        packets,
        start_millis: start,
        end_millis: start + 500,
    }
}

/// IPv6 flows: addresses, ports, protocol, octets, packets, flow start in
/// milliseconds, and flowEndReason (no typed column: goes to `fields`).
fn v6_template() -> Template {
    Template::new(
        300,
        0,
        vec![
            FieldSpecifier::iana(27, 16),
            FieldSpecifier::iana(28, 16),
            FieldSpecifier::iana(7, 2),
            FieldSpecifier::iana(11, 2),
            FieldSpecifier::iana(4, 1),
            FieldSpecifier::iana(1, 8),
            FieldSpecifier::iana(2, 8),
            FieldSpecifier::iana(152, 8),
            FieldSpecifier::iana(136, 1),
        ],
    )
}

fn v6(
    out: &mut Vec<u8>,
    src: &str,
    sport: u16,
    dst: &str,
    dport: u16,
    proto: u8,
    octets: u64,
    packets: u64,
    start_s: i64,
    end_reason: u8,
) {
    out.extend_from_slice(&src.parse::<std::net::Ipv6Addr>().unwrap().octets());
    out.extend_from_slice(&dst.parse::<std::net::Ipv6Addr>().unwrap().octets());
    out.extend_from_slice(&sport.to_be_bytes());
    out.extend_from_slice(&dport.to_be_bytes());
    out.push(proto);
    out.extend_from_slice(&octets.to_be_bytes());
    out.extend_from_slice(&packets.to_be_bytes());
    out.extend_from_slice(&(((BASE_S + start_s) * 1000) as u64).to_be_bytes());
    out.push(end_reason);
}

fn block(
    batch: &Batch,
    exporter: &str,
    transport: &'static str,
    domain: u32,
    template: Template,
    export_time: u32,
    start: usize,
    count: u32,
    billing: Option<BillingTag>,
) -> RecordBlock {
    RecordBlock {
        exporter: Arc::from(exporter),
        transport,
        domain,
        template: Arc::new(template),
        export_time,
        message_sequence: 0,
        first_record_index: 0,
        record_count: count,
        received_ms: 0,
        bytes: start..batch.bytes.len(),
        billing,
    }
}

/// | # | exporter | src → dst | proto | octets | packets | start (s after BASE_S) |
/// |---|---|---|---|---|---|---|
/// | 1 | v4 | 10.0.0.1:1000 → 198.51.100.10:443 | tcp | 1000 | 10 | 0 |
/// | 2 | v4 | 10.0.0.2:1001 → 198.51.100.10:443 | tcp | 3000 | 20 | 30 |
/// | 3 | v4 | 10.0.1.5:53 → 198.51.100.20:5353 | udp | 500 | 5 | 61 |
/// | 4 | v4, exported at LATE_EXPORT_S | 10.0.0.1:1002 → 203.0.113.7:80 | tcp | 200 | 2 | 125 |
/// | 5 | v6, billing 7, seq 100 | [2001:db8:1::1]:5000 → [2001:db8:ff::2]:443 | tcp | 4000 | 40 | 10 |
/// | 6 | v6, billing 7, seq 101 | [2001:db8:2::1]:5001 → [2001:db8:ff::2]:53 | udp | 100 | 1 | 70 |
fn known_store(path: &Path) {
    let mut store = Store::open(path).unwrap();
    let mut batch = Batch::default();
    let export = BASE_S as u32;
    let start = batch.bytes.len();
    for record in [
        v4("10.0.0.1", 1000, "198.51.100.10", 443, 6, 1000, 10, 0),
        v4("10.0.0.2", 1001, "198.51.100.10", 443, 6, 3000, 20, 30),
        v4("10.0.1.5", 53, "198.51.100.20", 5353, 17, 500, 5, 61),
    ] {
        record.encode(&mut batch.bytes);
    }
    let b = block(
        &batch,
        V4_EXPORTER,
        "udp",
        1,
        flow_template(),
        export,
        start,
        3,
        None,
    );
    batch.blocks.push(b);
    let start = batch.bytes.len();
    v4("10.0.0.1", 1002, "203.0.113.7", 80, 6, 200, 2, 125).encode(&mut batch.bytes);
    let b = block(
        &batch,
        V4_EXPORTER,
        "udp",
        1,
        flow_template(),
        LATE_EXPORT_S,
        start,
        1,
        None,
    );
    batch.blocks.push(b);
    let start = batch.bytes.len();
    v6(
        &mut batch.bytes,
        "2001:db8:1::1",
        5000,
        "2001:db8:ff::2",
        443,
        6,
        4000,
        40,
        10,
        3,
    );
    v6(
        &mut batch.bytes,
        "2001:db8:2::1",
        5001,
        "2001:db8:ff::2",
        53,
        17,
        100,
        1,
        70,
        1,
    );
    let tag = BillingTag {
        exporter_id: 7,
        first_record_sequence: 100,
    };
    let b = block(
        &batch,
        V6_EXPORTER,
        "sctp",
        2,
        v6_template(),
        export,
        start,
        2,
        Some(tag),
    );
    batch.blocks.push(b);
    store.commit(&[batch], 1).unwrap();
}

fn with_store(test: impl FnOnce(&Path)) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.sqlite");
    known_store(&path);
    test(&path);
}

/// (src_addr, dst_addr) of the records `filter` selects, in storage order.
fn selected(path: &Path, filter: &Filter) -> Vec<(String, String)> {
    let conn = Store::open_read_only(path).unwrap();
    let mut out = Vec::new();
    query::run(&conn, filter, Format::Json, &mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            (
                v["src_addr"].as_str().unwrap().to_owned(),
                v["dst_addr"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn sources(path: &Path, filter: Filter) -> Vec<String> {
    selected(path, &filter)
        .into_iter()
        .map(|(s, _)| s)
        .collect()
}

fn prefix(text: &str) -> Option<collector::prefix::IpPrefix> {
    Some(text.parse().unwrap())
}

#[test]
fn address_and_prefix_filters_select_exactly_their_records() {
    with_store(|path| {
        assert_eq!(sources(path, Filter::default()).len(), 6);
        let src_v4 = Filter {
            src: prefix("10.0.0.0/24"),
            ..Filter::default()
        };
        assert_eq!(sources(path, src_v4), ["10.0.0.1", "10.0.0.2", "10.0.0.1"]);
        let either = Filter {
            addr: prefix("198.51.100.10"),
            ..Filter::default()
        };
        assert_eq!(sources(path, either), ["10.0.0.1", "10.0.0.2"]);
        let dst_v6 = Filter {
            dst: prefix("2001:db8:ff::/48"),
            ..Filter::default()
        };
        assert_eq!(sources(path, dst_v6), ["2001:db8:1::1", "2001:db8:2::1"]);
        let src_v6 = Filter {
            src: prefix("2001:db8:1::/48"),
            ..Filter::default()
        };
        assert_eq!(sources(path, src_v6), ["2001:db8:1::1"]);
        // A v4 prefix never matches a v6 address, and the reverse.
        let everything_v4 = Filter {
            addr: prefix("0.0.0.0/0"),
            ..Filter::default()
        };
        assert_eq!(sources(path, everything_v4).len(), 4);
        let everything_v6 = Filter {
            addr: prefix("::/0"),
            ..Filter::default()
        };
        assert_eq!(sources(path, everything_v6).len(), 2);
    });
}

#[test]
fn port_and_protocol_filters_select_exactly_their_records() {
    with_store(|path| {
        let port = Filter {
            port: Some(53),
            ..Filter::default()
        };
        assert_eq!(sources(path, port), ["10.0.1.5", "2001:db8:2::1"]);
        let src_port = Filter {
            src_port: Some(53),
            ..Filter::default()
        };
        assert_eq!(sources(path, src_port), ["10.0.1.5"]);
        let udp = Filter {
            protocol: Some(query::parse_protocol("udp").unwrap()),
            ..Filter::default()
        };
        assert_eq!(sources(path, udp), ["10.0.1.5", "2001:db8:2::1"]);
        let https = Filter {
            dst_port: Some(443),
            protocol: Some(6),
            ..Filter::default()
        };
        assert_eq!(
            sources(path, https),
            ["10.0.0.1", "10.0.0.2", "2001:db8:1::1"]
        );
        // Block filters and record filters together, with the limit
        // counting matches.
        let combined = Filter {
            exporter: Some("192.0.2.1".into()),
            protocol: Some(6),
            limit: Some(2),
            ..Filter::default()
        };
        assert_eq!(sources(path, combined), ["10.0.0.1", "10.0.0.2"]);
        let late = Filter {
            since: Some(LATE_EXPORT_S.into()),
            src: prefix("10.0.0.0/8"),
            ..Filter::default()
        };
        assert_eq!(sources(path, late), ["10.0.0.1"]);
    });
}

fn totals(flows: u64, packets: u64, octets: u64) -> Totals {
    Totals {
        flows,
        packets,
        octets,
    }
}

#[test]
fn top_n_ranks_groups_by_the_chosen_sum() {
    with_store(|path| {
        let conn = Store::open_read_only(path).unwrap();
        let all = Filter::default();
        let by_bytes = aggregate::top(&conn, &all, TopBy::SrcAddr, TopOrder::Bytes, 3).unwrap();
        assert_eq!(
            by_bytes,
            [
                (json!("2001:db8:1::1"), totals(1, 40, 4000)),
                (json!("10.0.0.2"), totals(1, 20, 3000)),
                (json!("10.0.0.1"), totals(2, 12, 1200)),
            ]
        );
        // Ties (two flows each) go to the smaller key.
        let by_flows = aggregate::top(&conn, &all, TopBy::DstAddr, TopOrder::Flows, 10).unwrap();
        assert_eq!(
            by_flows,
            [
                (json!("198.51.100.10"), totals(2, 30, 4000)),
                (json!("2001:db8:ff::2"), totals(2, 41, 4100)),
                (json!("198.51.100.20"), totals(1, 5, 500)),
                (json!("203.0.113.7"), totals(1, 2, 200)),
            ]
        );
        let protocols =
            aggregate::top(&conn, &all, TopBy::Protocol, TopOrder::Packets, 10).unwrap();
        assert_eq!(
            protocols,
            [
                (json!(6), totals(4, 72, 8200)),
                (json!(17), totals(2, 6, 600))
            ]
        );
        let udp = Filter {
            protocol: Some(17),
            ..Filter::default()
        };
        let ports = aggregate::top(&conn, &udp, TopBy::DstPort, TopOrder::Bytes, 1).unwrap();
        assert_eq!(ports, [(json!(5353), totals(1, 5, 500))]);
        let exporters = aggregate::top(&conn, &all, TopBy::Exporter, TopOrder::Flows, 10).unwrap();
        assert_eq!(
            exporters,
            [
                (json!(V4_EXPORTER), totals(4, 37, 4700)),
                (json!(V6_EXPORTER), totals(2, 41, 4100)),
            ]
        );
        let mut csv = Vec::new();
        aggregate::write_top(&by_bytes, TopBy::SrcAddr, Format::Csv, &mut csv).unwrap();
        assert_eq!(
            String::from_utf8(csv).unwrap(),
            "src_addr,flows,packets,octets\n\
             2001:db8:1::1,1,40,4000\n10.0.0.2,1,20,3000\n10.0.0.1,2,12,1200\n"
        );
    });
}

#[test]
fn time_bins_sum_records_by_flow_start() {
    with_store(|path| {
        let conn = Store::open_read_only(path).unwrap();
        let all = Filter::default();
        let minutes = aggregate::bins(&conn, &all, Duration::from_secs(60)).unwrap();
        assert_eq!(
            minutes,
            [
                (BASE_S, totals(3, 70, 8000)),
                (BASE_S + 60, totals(2, 6, 600)),
                (BASE_S + 120, totals(1, 2, 200)),
            ]
        );
        // 5-minute bins start on multiples of 300 s.
        let five = aggregate::bins(&conn, &all, Duration::from_secs(300)).unwrap();
        assert_eq!(
            five,
            [
                (1_699_999_800, totals(3, 70, 8000)),
                (1_700_000_100, totals(3, 8, 800)),
            ]
        );
        let v6_only = Filter {
            addr: prefix("2001:db8::/32"),
            ..Filter::default()
        };
        let hours = aggregate::bins(&conn, &v6_only, Duration::from_secs(3600)).unwrap();
        assert_eq!(hours, [(1_699_999_200, totals(2, 41, 4100))]);
        let mut json_lines = Vec::new();
        aggregate::write_bins(&hours, Format::Json, &mut json_lines).unwrap();
        let line: Value = serde_json::from_slice(&json_lines).unwrap();
        assert_eq!(
            line,
            json!({"bin_start": 1_699_999_200, "time": "2023-11-14T22:00:00Z",
                   "records": 2, "packets": 41, "octets": 4100})
        );
        assert!(aggregate::bins(&conn, &all, Duration::from_millis(1500)).is_err());
    });
}

fn sql_rows(path: &Path, statement: &str) -> Vec<Value> {
    let conn = sql::open(path).unwrap();
    let mut out = Vec::new();
    sql::run(&conn, statement, SqlFormat::Json, &mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn sql_over_flows_groups_filters_and_reads_billing_columns() {
    with_store(|path| {
        assert_eq!(
            sql_rows(path, "SELECT count(*) AS n FROM flows"),
            [json!({"n": 6})]
        );
        assert_eq!(
            sql_rows(
                path,
                "SELECT src_addr, sum(octets) AS octets, count(*) AS flows FROM flows \
                 WHERE protocol = 6 GROUP BY src_addr ORDER BY octets DESC"
            ),
            [
                json!({"src_addr": "2001:db8:1::1", "octets": 4000, "flows": 1}),
                json!({"src_addr": "10.0.0.2", "octets": 3000, "flows": 1}),
                json!({"src_addr": "10.0.0.1", "octets": 1200, "flows": 2}),
            ]
        );
        assert_eq!(
            sql_rows(
                path,
                "SELECT exporter, domain, record_sequence, dst_port, \
                 json_extract(fields, '$.flowEndReason') AS reason \
                 FROM flows WHERE billing_exporter = 7 ORDER BY record_sequence"
            ),
            [
                json!({"exporter": V6_EXPORTER, "domain": 2, "record_sequence": 100,
                       "dst_port": 443, "reason": 3}),
                json!({"exporter": V6_EXPORTER, "domain": 2, "record_sequence": 101,
                       "dst_port": 53, "reason": 1}),
            ]
        );
        // Pushed-down block constraints give what a plain table would.
        assert_eq!(
            sql_rows(
                path,
                &format!("SELECT src_port FROM flows WHERE export_time >= {LATE_EXPORT_S}")
            ),
            [json!({"src_port": 1002})]
        );
        assert_eq!(
            sql_rows(
                path,
                &format!(
                    "SELECT count(*) AS n FROM flows WHERE exporter = '{V4_EXPORTER}' \
                     AND export_time < {LATE_EXPORT_S} AND domain = 1"
                )
            ),
            [json!({"n": 3})]
        );
        assert_eq!(
            sql_rows(
                path,
                "SELECT count(*) AS n FROM flows WHERE exporter = 'nobody' OR domain = 2"
            ),
            [json!({"n": 2})]
        );
        // Per-minute records of each exporter, from flow starts.
        assert_eq!(
            sql_rows(
                path,
                "SELECT flow_start_ms / 60000 * 60 AS minute, count(*) AS n FROM flows \
                 GROUP BY minute ORDER BY minute"
            ),
            [
                json!({"minute": BASE_S, "n": 3}),
                json!({"minute": BASE_S + 60, "n": 2}),
                json!({"minute": BASE_S + 120, "n": 1}),
            ]
        );
        // The store's own tables are there too.
        assert_eq!(
            sql_rows(path, "SELECT sum(record_count) AS n FROM record_blocks"),
            [json!({"n": 6})]
        );
    });
}

#[test]
fn sql_output_formats_are_exact() {
    with_store(|path| {
        let conn = sql::open(path).unwrap();
        let statement = "SELECT protocol, count(*) AS flows, NULL AS none FROM flows \
                         GROUP BY protocol ORDER BY protocol";
        let mut csv = Vec::new();
        assert_eq!(
            sql::run(&conn, statement, SqlFormat::Csv, &mut csv).unwrap(),
            2
        );
        assert_eq!(
            String::from_utf8(csv).unwrap(),
            "protocol,flows,none\n6,4,\n17,2,\n"
        );
        let mut table = Vec::new();
        sql::run(&conn, statement, SqlFormat::Table, &mut table).unwrap();
        assert_eq!(
            String::from_utf8(table).unwrap(),
            "protocol  flows  none\n--------  -----  ----\n6         4\n17        2\n"
        );
    });
}

#[test]
fn bad_sql_is_an_error_that_says_why() {
    with_store(|path| {
        let conn = sql::open(path).unwrap();
        let error = |statement: &str| {
            sql::run(&conn, statement, SqlFormat::Json, &mut Vec::new())
                .unwrap_err()
                .to_string()
        };
        let syntax = error("SELEC * FROM flows");
        assert!(
            syntax.contains("bad SQL statement") && syntax.contains("syntax error"),
            "{syntax}"
        );
        let column = error("SELECT bogus FROM flows");
        assert!(column.contains("no such column: bogus"), "{column}");
        assert!(error("SELECT 1; SELECT 2").contains("one SQL statement"));
        assert!(error("  ").contains("no SQL statement given"));
        assert!(error("-- only a comment").contains("no SQL statement given"));
        assert!(
            format!(
                "{:#}",
                sql::run(&conn, "SELECT ?", SqlFormat::Json, &mut Vec::new()).unwrap_err()
            )
            .contains("Wrong number of parameters")
        );
        // The store is opened read-only: a statement cannot change it.
        let write = format!(
            "{:#}",
            sql::run(
                &conn,
                "DELETE FROM record_blocks",
                SqlFormat::Json,
                &mut Vec::new()
            )
            .unwrap_err()
        );
        assert!(write.contains("readonly"), "{write}");
        assert_eq!(
            sql_rows(path, "SELECT count(*) AS n FROM record_blocks"),
            [json!({"n": 3})]
        );
    });
}

#[test]
fn the_command_line_reports_bad_arguments_without_panicking() {
    with_store(|path| {
        let collector = env!("CARGO_BIN_EXE_collector");
        let run = |args: &[&str]| {
            let output = Command::new(collector).args(args).output().unwrap();
            (
                output.status.code(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        };
        let db = path.to_str().unwrap();
        let (code, _, stderr) = run(&["query", "--database", db, "--src", "10.0.0.1/8"]);
        assert_eq!(code, Some(2));
        assert!(stderr.contains("did you mean 10.0.0.0/8?"), "{stderr}");
        let (code, _, stderr) = run(&["query", "--database", db, "--protocol", "tcpx"]);
        assert_eq!(code, Some(2));
        assert!(stderr.contains("is not a protocol"), "{stderr}");
        let (code, _, stderr) = run(&["sql", "--database", db, "SELECT * FROM nowhere"]);
        assert_eq!(code, Some(1));
        assert!(stderr.contains("no such table: nowhere"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        let (code, stdout, _) = run(&[
            "query",
            "--database",
            db,
            "--format",
            "csv",
            "--top",
            "1",
            "--by",
            "dst_port",
            "--order",
            "packets",
        ]);
        assert_eq!(code, Some(0));
        assert_eq!(stdout, "dst_port,flows,packets,octets\n443,3,70,8000\n");
        let (code, stdout, _) = run(&[
            "sql",
            "--database",
            db,
            "--format",
            "csv",
            "SELECT dst_addr, sum(packets) AS packets FROM flows GROUP BY dst_addr ORDER BY 2 DESC LIMIT 1",
        ]);
        assert_eq!(code, Some(0));
        assert_eq!(stdout, "dst_addr,packets\n2001:db8:ff::2,41\n");
        let (code, stdout, _) = run(&["query", "--database", db, "--format", "csv", "--bin", "1h"]);
        assert_eq!(code, Some(0));
        assert_eq!(
            stdout,
            "bin_start,time,records,packets,octets\n1699999200,2023-11-14T22:00:00Z,6,78,8800\n"
        );
    });
}

#[test]
fn pushed_down_constraints_show_in_the_query_plan() {
    with_store(|path| {
        let plan = sql_rows(
            path,
            &format!(
                "EXPLAIN QUERY PLAN SELECT * FROM flows WHERE export_time >= {LATE_EXPORT_S} \
                 AND exporter = '{V4_EXPORTER}' AND src_port = 1002"
            ),
        );
        let detail = plan[0]["detail"].as_str().unwrap();
        assert!(
            detail.contains("r.export_time >= ?") && detail.contains("e.address = ?"),
            "{detail}"
        );
        assert!(!detail.contains("src_port"), "{detail}");
    });
}

#[test]
fn a_scan_reads_every_page_of_blocks() {
    // More blocks than one page of the cursor holds, one record each.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.sqlite");
    let mut store = Store::open(&path).unwrap();
    let mut batch = Batch::default();
    for n in 0..150u64 {
        let start = batch.bytes.len();
        let mut flow = v4("10.1.0.1", 1, "10.2.0.1", 2, 17, n + 1, 1, n as i64);
        flow.source_port = n as u16;
        flow.encode(&mut batch.bytes);
        let b = block(
            &batch,
            V4_EXPORTER,
            "udp",
            1,
            flow_template(),
            BASE_S as u32 + n as u32,
            start,
            1,
            None,
        );
        batch.blocks.push(b);
    }
    store.commit(&[batch], 1).unwrap();
    assert_eq!(
        sql_rows(
            &path,
            "SELECT count(*) AS n, sum(octets) AS octets, max(src_port) AS last FROM flows"
        ),
        [json!({"n": 150, "octets": 150 * 151 / 2, "last": 149})]
    );
    assert_eq!(
        sql_rows(
            &path,
            &format!(
                "SELECT count(*) AS n FROM flows WHERE export_time > {}",
                BASE_S + 99
            )
        ),
        [json!({"n": 50})]
    );
}

#[test]
fn the_documented_per_prefix_report_works() {
    // docs/querying.md: bytes per /24 of the source, per hour.
    with_store(|path| {
        assert_eq!(
            sql_rows(
                path,
                "SELECT flow_start_ms / 3600000 * 3600 AS hour, \
                        rtrim(src_addr, '0123456789') || '0/24' AS net, sum(octets) AS octets \
                 FROM flows WHERE src_addr NOT LIKE '%:%' GROUP BY hour, net \
                 ORDER BY hour, octets DESC"
            ),
            [
                json!({"hour": 1_699_999_200, "net": "10.0.0.0/24", "octets": 4200}),
                json!({"hour": 1_699_999_200, "net": "10.0.1.0/24", "octets": 500}),
            ]
        );
    });
}
