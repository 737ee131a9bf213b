//! The PostgreSQL shared tier with real processes (docs/postgres.md): a
//! registrar, a collector with `[postgres]`, `exporter stream` as the pool
//! user and a throw-away PostgreSQL server (tests/postgres/start.sh).
//!
//! While records stream in:
//! - rows reach PostgreSQL while the exporter still sends (shipping under a
//!   running stream);
//! - PostgreSQL is stopped (the collector keeps committing to SQLite) and
//!   started again;
//! - the collector is SIGKILLed while it ships, and restarted.
//!
//! At the end PostgreSQL holds every record exactly once (no sequence
//! missing, none doubled), `collector audit` gives the same report on the
//! SQLite file and on PostgreSQL, and the README's example queries give
//! what the same aggregation over the SQLite store gives.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use collector::audit::{AuditOptions, AuditReport, Verdict};
use poolflow_tests::pool::{LocalPool, stored_records, wait_success};
use poolflow_tests::postgres::PostgresServer;
use tokio_postgres::NoTls;

const EXPORTER_ID: u32 = 15;
const RECORDS: u64 = 240_000;
const RATE: u64 = 20_000;
const COLLECTOR_NAME: &str = "c0";

/// A fresh connection each time: the server restarts under the test.
async fn pg_client(url: &str) -> Option<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.ok()?;
    tokio::spawn(connection);
    Some(client)
}

/// Records of the test exporter in `flows`; 0 while the table or the
/// server is not there.
async fn shipped_records(url: &str) -> u64 {
    let Some(client) = pg_client(url).await else {
        return 0;
    };
    client
        .query_one(
            "SELECT count(*) FROM flows WHERE billing_exporter = $1",
            &[&i64::from(EXPORTER_ID)],
        )
        .await
        .map_or(0, |row| row.get::<_, i64>(0) as u64)
}

/// Polls `condition` every 20 ms until it holds; panics after `within`.
async fn wait_for<F, Fut>(what: &str, within: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !condition().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipping_survives_postgres_outage_and_collector_kill() {
    let Some(pg) = PostgresServer::start() else {
        return;
    };
    let url = pg.url.clone();
    let mut pool = LocalPool::start_with_tables(&[100], |_| {
        format!(
            "[postgres]\nurl = \"{url}\"\ncollector_name = \"{COLLECTOR_NAME}\"\n\
             batch_blocks = 100\ninterval = \"50ms\"\n"
        )
    })
    .await;
    let store = pool.store(0);
    let config = pool.exporter_config(EXPORTER_ID, "", "");
    let mut exporter = pool.stream(&config, RECORDS, RATE);

    // Shipping under a running stream.
    wait_for(
        "first rows in PostgreSQL",
        Duration::from_secs(60),
        || async { shipped_records(&url).await > 0 },
    )
    .await;
    assert!(
        exporter.try_wait().unwrap().is_none(),
        "the exporter finished before anything was shipped: the stream is too short"
    );

    // PostgreSQL down: SQLite keeps committing, nothing reaches PostgreSQL.
    pg.stop();
    let stored_at_stop = stored_records(&store, EXPORTER_ID);
    wait_for(
        "records committed to SQLite while PostgreSQL is down",
        Duration::from_secs(60),
        || async { stored_records(&store, EXPORTER_ID) >= stored_at_stop + 20_000 },
    )
    .await;
    assert!(
        pg_client(&url).await.is_none(),
        "PostgreSQL answers although stopped"
    );
    pg.restart();
    let shipped_at_restart = shipped_records(&url).await;
    wait_for(
        "shipping resumes after PostgreSQL is back",
        Duration::from_secs(60),
        || async { shipped_records(&url).await > shipped_at_restart },
    )
    .await;

    // SIGKILL while shipping: PostgreSQL behind SQLite and still moving.
    wait_for(
        "collector mid-shipment",
        Duration::from_secs(60),
        || async {
            let shipped = shipped_records(&url).await;
            shipped > shipped_at_restart && shipped < stored_records(&store, EXPORTER_ID)
        },
    )
    .await;
    pool.kill_collector(0);
    pool.start_collector(0);

    // It exits 0 only once every record it sent is acknowledged.
    tokio::task::spawn_blocking(move || wait_success(exporter, Duration::from_secs(120)))
        .await
        .unwrap();
    wait_for(
        "PostgreSQL holds every stored record",
        Duration::from_secs(60),
        || async { shipped_records(&url).await >= stored_records(&store, EXPORTER_ID) },
    )
    .await;
    pool.stop().await;

    // Nothing lost, nothing doubled.
    let stored = stored_records(&store, EXPORTER_ID);
    assert_eq!(stored, RECORDS, "SQLite holds each record once");
    let client = pg_client(&url).await.expect("PostgreSQL is up");
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT record_sequence), min(record_sequence),
                    max(record_sequence), count(DISTINCT (collector, block_id, record_index))
             FROM flows WHERE billing_exporter = $1",
            &[&i64::from(EXPORTER_ID)],
        )
        .await
        .unwrap();
    let (rows, distinct, min, max, identities): (i64, i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!(rows as u64, RECORDS, "every record shipped exactly once");
    assert_eq!(distinct as u64, RECORDS, "no record sequence doubled");
    assert_eq!(identities, rows, "no stored record copied twice");
    assert_eq!((min, max), (0, RECORDS as i64 - 1), "no sequence missing");
    let blocks_claimed: i64 = client
        .query_one(
            "SELECT COALESCE(sum(record_count), 0)::bigint FROM shipped_blocks
             WHERE billing_exporter = $1",
            &[&i64::from(EXPORTER_ID)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(blocks_claimed, rows, "shipped_blocks and flows agree");

    // The audit on both tiers: one report.
    let on_sqlite = collector::audit::run(&AuditOptions {
        databases: vec![store.clone()],
        list_limit: 100,
        ..AuditOptions::default()
    })
    .unwrap();
    let on_postgres = collector::audit::run(&AuditOptions {
        postgres: Some(url.clone()),
        list_limit: 100,
        ..AuditOptions::default()
    })
    .unwrap();
    assert_eq!(on_sqlite.verdict, Verdict::Pass, "{on_sqlite:#?}");
    assert_eq!(on_sqlite.totals.records_present, RECORDS);
    assert_eq!(
        normalized(&on_sqlite, &store.display().to_string()),
        normalized(&on_postgres, COLLECTOR_NAME),
        "the audit differs between SQLite and PostgreSQL"
    );

    example_queries_match_the_sqlite_store(&client, &store).await;
}

/// The report as JSON with the store's name replaced by a placeholder.
fn normalized(report: &AuditReport, store_name: &str) -> serde_json::Value {
    let text = serde_json::to_string(report)
        .unwrap()
        .replace(&serde_json::to_string(store_name).unwrap(), "\"STORE\"");
    serde_json::from_str(&text).unwrap()
}

/// The README's example queries against the same aggregations computed
/// from the SQLite store's decoded records (`collector query`).
async fn example_queries_match_the_sqlite_store(
    client: &tokio_postgres::Client,
    store: &std::path::Path,
) {
    let conn = collector::store::Store::open_read_only(store).unwrap();
    let mut out = Vec::new();
    collector::query::run(
        &conn,
        &collector::query::Filter::default(),
        collector::query::Format::Json,
        &mut out,
    )
    .unwrap();
    let mut per_prefix_hour: BTreeMap<(i64, String), i64> = BTreeMap::new();
    let mut per_source: HashMap<IpAddr, i64> = HashMap::new();
    let mut per_exporter_minute: BTreeMap<(String, i64), i64> = BTreeMap::new();
    let mut records = 0;
    for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let r: serde_json::Value = serde_json::from_slice(line).unwrap();
        let octets = r["octets"].as_i64().unwrap();
        let dst: IpAddr = r["dst_addr"].as_str().unwrap().parse().unwrap();
        let src: IpAddr = r["src_addr"].as_str().unwrap().parse().unwrap();
        let IpAddr::V4(dst) = dst else {
            panic!("the stream sends IPv4")
        };
        let [a, b, c, _] = dst.octets();
        let hour = r["flow_start_ms"].as_i64().unwrap().div_euclid(3_600_000) * 3600;
        *per_prefix_hour
            .entry((hour, format!("{a}.{b}.{c}.0/24")))
            .or_default() += octets;
        *per_source.entry(src).or_default() += octets;
        let minute = r["export_time"].as_i64().unwrap().div_euclid(60) * 60;
        *per_exporter_minute
            .entry((r["exporter"].as_str().unwrap().to_owned(), minute))
            .or_default() += 1;
        records += 1;
    }
    assert_eq!(records, RECORDS);
    client.batch_execute("SET TIME ZONE 'UTC'").await.unwrap();

    // Bytes per customer prefix (/24) per hour.
    let rows = client
        .query(
            "SELECT extract(epoch FROM date_trunc('hour', flow_start))::bigint AS hour,
                    network(set_masklen(dst_addr, 24))::text AS prefix,
                    sum(octets)::bigint AS bytes
             FROM flows
             GROUP BY 1, 2
             ORDER BY 1, 3 DESC",
            &[],
        )
        .await
        .unwrap();
    let from_pg: BTreeMap<(i64, String), i64> = rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    assert_eq!(rows.len(), per_prefix_hour.len());
    assert_eq!(from_pg, per_prefix_hour, "bytes per prefix per hour");

    // Top talkers: the 10 sources with the most bytes.
    let rows = client
        .query(
            "SELECT src_addr, sum(octets)::bigint AS bytes
             FROM flows
             GROUP BY src_addr
             ORDER BY bytes DESC, src_addr
             LIMIT 10",
            &[],
        )
        .await
        .unwrap();
    let top: Vec<(IpAddr, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut expected: Vec<(IpAddr, i64)> = per_source.into_iter().collect();
    expected.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
    expected.truncate(10);
    assert_eq!(top, expected, "top talkers");

    // Records per exporter per minute.
    let rows = client
        .query(
            "SELECT exporter, extract(epoch FROM date_trunc('minute', export_time))::bigint,
                    count(*)
             FROM flows
             GROUP BY 1, 2
             ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap();
    let from_pg: BTreeMap<(String, i64), i64> = rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    assert_eq!(
        from_pg, per_exporter_minute,
        "records per exporter per minute"
    );
}
