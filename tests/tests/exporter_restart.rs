//! An exporter SIGKILLed mid-stream and restarted with the same state file:
//! the records it held in memory and the sequences it had reserved are gone.
//! The restarted exporter declares them in its reliability statistics
//! (RFC 7011 4.3), the collector moves its cookies past the declared range,
//! the stream finishes, and the audit passes with the loss named as
//! declared, not as an unexplained gap.

use std::time::Duration;

use collector::audit::Verdict;
use poolflow_tests::pool::{LocalPool, sigkill, stored_records, wait_stored, wait_success};

const EXPORTER: u32 = 7;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_exporter_declares_its_lost_records_and_the_audit_passes() {
    let pool = LocalPool::start(&[100]).await;
    let store = pool.store(0);
    let config = pool.exporter_config(EXPORTER, "", "");

    // 100,000 records at 20,000/s; killed once a fifth is stored, so tens
    // of thousands are in its memory and the rest of its reserved block
    // unused.
    let mut first = pool.stream(&config, 100_000, 20_000);
    wait_stored(std::slice::from_ref(&store), EXPORTER, 20_000).await;
    assert!(
        first.try_wait().unwrap().is_none(),
        "exporter ended before the kill"
    );
    sigkill(&mut first);
    let before_restart = stored_records(&store, EXPORTER);

    // Same config, same state file: 20,000 more records must all be
    // acknowledged (exit 0), which needs the collector's cookie to pass
    // the declared range.
    let second = pool.stream(&config, 20_000, 20_000);
    let log = tokio::task::spawn_blocking(move || wait_success(second, Duration::from_secs(120)))
        .await
        .unwrap();
    // Cookies moved past the declared range at once: no stall, hence no
    // cookie timeout and no failover away from the only collector.
    assert!(!log.contains("FAILOVER"), "the stream stalled: {log}");
    assert!(
        log.contains("declared never to be sent at this start"),
        "{log}"
    );

    let mut pool = pool;
    pool.stop().await;
    let report = pool.audit(false);
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
    assert!(g.records_present >= before_restart + 20_000, "{text}");
    // The declaration is of the restarted process: its restart time is
    // after the first process was killed.
    let first_declared = &g.declared_loss.ranges[0];
    assert!(first_declared.exporter_restart_ms > 0, "{text}");
    assert!(text.contains("declared loss"), "{text}");

    let strict = pool.audit(true);
    assert_eq!(strict.verdict, Verdict::Fail);
    eprintln!("{text}");
}
