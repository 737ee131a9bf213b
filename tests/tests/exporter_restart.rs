//! An exporter SIGKILLed mid-stream and restarted with the same state file:
//! the records it held in memory and the sequences it had reserved are gone.
//! The restarted exporter declares them in its reliability statistics
//! (RFC 7011 4.3), the collector moves its cookies past the declared range,
//! the stream finishes, and the audit passes with the loss named as
//! declared, not as an unexplained gap.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use collector::audit::{AuditOptions, Verdict};
use poolflow_tests::{child_log, free_udp_port, workspace_bin};
use registrar::config::RegistrarConfig;
use registrar::driver::Registrar;

const POOL: &str = "billing-collectors";
const KEY: &str = "a shared pool key for the restart test";

fn write_collector_config(dir: &Path, port: u16, registrar: std::net::SocketAddr) -> PathBuf {
    let config = dir.join("c0.toml");
    std::fs::write(
        &config,
        format!(
            r#"database = "{db}"
udp_listen = []
tcp_listen = []
sctp_listen = ["127.0.0.1:{port}"]
[pool]
handle = "{POOL}"
registrars = ["sctp:{registrar}"]
priority = 100
cookie_key = "{KEY}"
"#,
            db = dir.join("c0.sqlite").display(),
        ),
    )
    .unwrap();
    config
}

fn exporter(dir: &Path, registrar: std::net::SocketAddr, records: u64, rate: u64) -> Child {
    let config = dir.join("exporter.toml");
    std::fs::write(
        &config,
        format!(
            r#"exporter_id = 7
pool_handle = "{POOL}"
registrars = ["sctp:{registrar}"]
state_file = "{state}"
[timers]
cookie_timeout_ms = 3000
retry_interval_ms = 200
connect_timeout_ms = 1000
cache_lifetime_ms = 500
registrar_request_timeout_ms = 1000
"#,
            state = dir.join("exporter.state").display(),
        ),
    )
    .unwrap();
    Command::new(workspace_bin("exporter"))
        .args(["stream", "--config"])
        .arg(&config)
        .args(["--records", &records.to_string()])
        .args(["--rate", &rate.to_string()])
        .args(["--exit-drain-timeout-secs", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Billing records committed in the store so far (0 before it exists).
fn stored_records(db: &Path) -> i64 {
    if !db.exists() {
        return 0;
    }
    let Ok(conn) = collector::store::Store::open_read_only(db) else {
        return 0;
    };
    conn.query_row(
        "SELECT COALESCE(SUM(record_count), 0) FROM record_blocks
         WHERE billing_exporter IS NOT NULL",
        [],
        |r| r.get(0),
    )
    .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_exporter_declares_its_lost_records_and_the_audit_passes() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RegistrarConfig::default();
    config.listen.tcp = String::new();
    config.listen.sctp_over_udp = "127.0.0.1:0".into();
    config.listen.status = String::new();
    config.timers.keep_alive_period = Duration::from_millis(200);
    config.timers.keep_alive_timeout = Duration::from_millis(300);
    let registrar = Registrar::start(config, None).await.unwrap();
    let registrar_addr = registrar.sctp_over_udp_addr.unwrap();
    let collector_config = write_collector_config(dir.path(), free_udp_port(), registrar_addr);
    let mut collector = Command::new(workspace_bin("collector"))
        .args(["run", "--config"])
        .arg(&collector_config)
        .stdout(Stdio::null())
        .stderr(child_log())
        .spawn()
        .unwrap();
    let db = dir.path().join("c0.sqlite");

    // 100,000 records at 20,000/s; killed once a fifth is stored, so tens
    // of thousands are in its memory and most of the reserved block
    // (100,000 sequences) unused.
    let mut first = exporter(dir.path(), registrar_addr, 100_000, 20_000);
    let deadline = Instant::now() + Duration::from_secs(60);
    while stored_records(&db) < 20_000 {
        assert!(
            first.try_wait().unwrap().is_none(),
            "exporter ended before the kill"
        );
        assert!(Instant::now() < deadline, "records not stored in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let before_restart = stored_records(&db);

    // Same config, same state file: 20,000 more records must all be
    // acknowledged (exit 0), which needs the collector's cookie to pass
    // the declared range.
    let second = exporter(dir.path(), registrar_addr, 20_000, 20_000);
    let out = tokio::task::spawn_blocking(move || second.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "restarted exporter failed: {log}");
    // Cookies moved past the declared range at once: no stall, hence no
    // cookie timeout and no failover away from the only collector.
    assert!(!log.contains("FAILOVER"), "the stream stalled: {log}");
    assert!(
        log.contains("declared never to be sent at this start"),
        "{log}"
    );

    Command::new("kill")
        .args(["-TERM", &collector.id().to_string()])
        .status()
        .unwrap();
    assert!(collector.wait().unwrap().success());
    registrar.stop().await;

    let options = AuditOptions {
        databases: vec![db.clone()],
        list_limit: 100,
        ..AuditOptions::default()
    };
    let report = collector::audit::run(&options).unwrap();
    let text = collector::audit::report_text(&report);
    assert_eq!(report.verdict, Verdict::Pass, "{text}");
    let g = &report.exporter_domains[0];
    assert_eq!(g.gaps.missing_records, 0, "{text}");
    assert!(g.declared_loss.records > 0, "{text}");
    assert!(!g.declared_loss.ranges.is_empty(), "{text}");
    // Every sequence the exporter accounted for is present or declared.
    let accounted = g.exporter_accounted.expect("statistics received");
    assert_eq!(
        g.records_present + g.declared_loss.records,
        accounted,
        "{text}"
    );
    assert!(
        g.records_present >= before_restart as u64 + 20_000,
        "{text}"
    );
    // The declaration is of the restarted process: its restart time is
    // after the first process was killed.
    let first_declared = &g.declared_loss.ranges[0];
    assert!(first_declared.exporter_restart_ms > 0, "{text}");
    assert!(text.contains("declared loss"), "{text}");

    let strict = collector::audit::run(&AuditOptions {
        fail_on_declared_loss: true,
        ..options
    })
    .unwrap();
    assert_eq!(strict.verdict, Verdict::Fail);
    eprintln!("{text}");
}
