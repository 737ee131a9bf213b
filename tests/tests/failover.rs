//! Billing continuity end to end, with real processes: a registrar, a
//! primary and a backup collector, and `exporter stream` as the pool user.
//! Collectors are killed with SIGKILL at different points of the stream,
//! restarted, or both stopped; in every case the audit over both stores
//! must find every record exactly as often as allowed: no gap, no conflict,
//! and after a clean failback no duplicate.

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use collector::audit::{AuditOptions, AuditReport, Verdict};
use poolflow_tests::collector_config::StreamTransport;
use poolflow_tests::pool::{LocalPool, wait_stored_by};
use protocol::billing::BillingCookie;

const EXPORTER: u32 = 7;

/// The local pool (collector 0 the primary at priority 100, collector 1
/// the backup at 10) and `exporter stream` as its pool user.
struct Pool {
    local: LocalPool,
}

impl Pool {
    async fn start() -> Self {
        Self::start_with(StreamTransport::Sctp).await
    }

    async fn start_with(transport: StreamTransport) -> Self {
        Self {
            local: LocalPool::start_over(transport, &[100, 10], 2).await,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.local.path(name)
    }

    /// The exporter's state file (LocalPool::exporter_config names it).
    fn state_file(&self) -> PathBuf {
        self.path(&format!("exporter-{EXPORTER}.state"))
    }

    /// Waits until the stores of `collectors` together hold `records`; if
    /// they never do, the panic carries the exporter's log.
    async fn wait_stored(&self, collectors: &[usize], records: u64, exporter: &mut Child) {
        let stores: Vec<PathBuf> = collectors.iter().map(|&i| self.local.store(i)).collect();
        wait_stored_by(&stores, EXPORTER, records, exporter).await;
    }

    /// `fast_failure_detection`: aggressive SCTP path supervision, as for
    /// the SIGKILL cases; without it failures are noticed by the cookie
    /// timeout, and a loaded machine cannot cause a spurious failover.
    fn exporter(&self, records: u64, rate: u64, fast_failure_detection: bool) -> Child {
        self.exporter_with(records, rate, fast_failure_detection, "", &[])
    }

    /// [`Self::exporter`] with more configuration (TOML sections) and flags.
    fn exporter_with(
        &self,
        records: u64,
        rate: u64,
        fast_failure_detection: bool,
        more_config: &str,
        more_args: &[&str],
    ) -> Child {
        // Right after the [timers] keys: one more of them, then tables.
        let tables = format!(
            "fast_failure_detection = {fast_failure_detection}\n[buffer]\nspill_dir = {spill:?}\n{more_config}",
            spill = self.path("spill"),
        );
        let config = self.local.exporter_config(EXPORTER, "", &tables);
        self.local.stream_with(&config, records, rate, more_args)
    }

    /// Stops everything gracefully and audits both stores, against the
    /// exporter's state file too (as deploy/local-pool.sh does): after its
    /// clean stop it names exactly the sequences it assigned.
    async fn finish(mut self) -> AuditReport {
        self.local.stop().await;
        let state = self.state_file();
        collector::audit::run(&AuditOptions {
            databases: self.local.stores(),
            list_limit: 100,
            exporter_states: state.exists().then_some(state).into_iter().collect(),
            ..AuditOptions::default()
        })
        .unwrap()
    }
}

/// Waits for the exporter; returns its combined output. It exits 0 only
/// when every record it took in was acknowledged by a cookie.
fn wait_exporter(exporter: Child, within: Duration) -> String {
    poolflow_tests::pool::wait_success(exporter, within)
}

fn assert_complete(report: &AuditReport, records: u64, allow_benign_duplicates: bool) {
    let t = &report.totals;
    assert_eq!(report.verdict, Verdict::Pass, "{:?}", report.failures);
    assert_eq!(t.records_present, records, "every record present");
    assert_eq!(t.missing_records, 0);
    assert_eq!(t.conflicting_sequences, 0);
    assert_eq!(t.anomalies, 0);
    if !allow_benign_duplicates {
        assert_eq!(t.benign_duplicate_sequences, 0, "no record stored twice");
    }
}

const RECORDS: u64 = 30_000;
/// Streams that must see a planned move (failback after a restart, a
/// lowered priority) complete before they end: 4.5 s of records, so the
/// move has more than 2 s even on a loaded machine.
const MOVE_RECORDS: u64 = 45_000;
const RATE: u64 = 10_000;

/// SIGKILL of the primary once `kill_after` records are stored, restart
/// once the backup has stored `down_for` records: failover to the backup,
/// then failback.
async fn kill_and_restart_primary(kill_after: u64, down_for: u64) {
    kill_and_restart_primary_over(StreamTransport::Sctp, kill_after, down_for).await;
}

async fn kill_and_restart_primary_over(transport: StreamTransport, kill_after: u64, down_for: u64) {
    // The stream goes on for 2 s after the restart, so the failback (it
    // waits for re-registration, the failback poll, the hold-off after the
    // failure and a drain) happens before the exporter runs out of records,
    // however late the kill; a loaded machine made 0.4 s too little.
    let records = RECORDS.max(kill_after + down_for + 2 * RATE);
    let mut pool = Pool::start_with(transport).await;
    let mut exporter = pool.exporter(records, RATE, true);
    pool.wait_stored(&[0], kill_after, &mut exporter).await;
    pool.local.kill_collector(0);
    pool.wait_stored(&[1], down_for, &mut exporter).await;
    pool.local.start_collector(0);
    let log = wait_exporter(exporter, Duration::from_secs(60));
    assert!(log.contains("FAILOVER"), "no failover: {log}");
    assert!(log.contains("FAILBACK"), "no failback: {log}");
    let report = pool.finish().await;
    // After a SIGKILL, records the primary committed but could not
    // acknowledge are replayed to the backup: identical copies in two
    // stores are allowed there (the audit calls them benign), loss is not.
    assert_complete(&report, records, true);
    assert!(report.stores[0].billing_records + report.stores[1].billing_records >= records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_early_in_the_stream_loses_nothing() {
    kill_and_restart_primary(4 * RATE / 10, 8 * RATE / 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_midway_loses_nothing() {
    kill_and_restart_primary(15 * RATE / 10, 6 * RATE / 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_late_loses_nothing() {
    kill_and_restart_primary(23 * RATE / 10, 3 * RATE / 10).await;
}

/// The same over framed TCP, for pool users without SCTP: the cookies come
/// back on the data connection, a SIGKILL shows as a reset connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_over_framed_tcp_loses_nothing() {
    kill_and_restart_primary_over(StreamTransport::FramedTcp, 12 * RATE / 10, 6 * RATE / 10).await;
}

/// A graceful stop of the primary (deregistration) and its return: the
/// exporter moves over and back without any record stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failback_after_graceful_stop_has_no_duplicates() {
    let mut pool = Pool::start().await;
    let mut exporter = pool.exporter(MOVE_RECORDS, RATE, false);
    pool.wait_stored(&[0], RATE, &mut exporter).await;
    pool.local.terminate_collector(0);
    pool.wait_stored(&[1], 8 * RATE / 10, &mut exporter).await;
    pool.local.start_collector(0);
    let log = wait_exporter(exporter, Duration::from_secs(60));
    assert!(log.contains("FAILBACK"), "no failback: {log}");
    let report = pool.finish().await;
    assert_complete(&report, MOVE_RECORDS, false);
    assert!(report.stores[1].billing_records > 0, "the backup took part");
}

/// Both collectors down: the exporter buffers (and spills) and resumes when
/// one returns, losing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_collectors_down_then_one_back_loses_nothing() {
    let mut pool = Pool::start().await;
    let mut exporter = pool.exporter(RECORDS, RATE, true);
    pool.wait_stored(&[0], 8 * RATE / 10, &mut exporter).await;
    pool.local.kill_collector(0);
    pool.local.kill_collector(1);
    // Back once the registrar has found both gone (keep-alive timeouts):
    // the exporter has had nowhere to send meanwhile.
    pool.local.wait_registered(0).await;
    pool.local.start_collector(1);
    wait_exporter(exporter, Duration::from_secs(60));
    let report = pool.finish().await;
    assert_complete(&report, RECORDS, true);
}

/// A Cookie Echo that is not signed with the pool key (or names another
/// exporter) makes the collector close the association.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_cookie_is_rejected() {
    let pool = Pool::start().await;
    let target = pool.local.collector_addr(1);
    for cookie in [
        BillingCookie::sign(b"not the pool key", 7, 1, 1000, 1, 0),
        BillingCookie::sign(b"tampered", 8, 1, 5, 1, 0),
    ] {
        let mut association = transport::connect(
            transport::Config {
                sctp_port: target.port(),
                ..transport::Config::fast_failure_detection(transport::TransportKind::SctpOverUdp)
            },
            target,
        )
        .await
        .unwrap();
        association
            .send(transport::Message::new(
                0,
                protocol::rserpool::ASAP_SCTP_PPID,
                cookie.cookie_echo_message_bytes(),
            ))
            .await
            .unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match association.recv().await {
                    Some(transport::Event::Down(_) | transport::Event::Failed(_)) | None => {
                        return true;
                    }
                    Some(transport::Event::Message(m)) => {
                        assert_ne!(
                            m.ppid,
                            protocol::rserpool::ASAP_SCTP_PPID,
                            "no cookie for a forged echo"
                        );
                    }
                    Some(_) => {}
                }
            }
        })
        .await
        .unwrap_or(false);
        assert!(closed, "the collector must close the association");
    }
    let report = pool.finish().await;
    assert_eq!(report.totals.records_present, 0);
}

/// UDP GSO to the collectors (`udp_segmentation_offload = true`): at full
/// speed the exporter's SCTP-over-UDP driver hands runs of packets to the
/// kernel in one `sendmsg`, and the collector must split each run back into
/// SCTP packets (it reads with UDP GRO). Every record stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segmentation_offload_to_the_collectors_loses_nothing() {
    const FAST_RECORDS: u64 = 300_000;
    let pool = Pool::start().await;
    let tables = format!("[buffer]\nspill_dir = {:?}\n", pool.path("spill"));
    let config = pool
        .local
        .exporter_config(EXPORTER, "udp_segmentation_offload = true", &tables);
    // Rate 0: as fast as the pool takes it, so packets queue into runs.
    let exporter = pool.local.stream(&config, FAST_RECORDS, 0);
    let log = wait_exporter(exporter, Duration::from_secs(120));
    assert!(!log.contains("FAILOVER"), "a failover: {log}");
    let report = pool.finish().await;
    assert_complete(&report, FAST_RECORDS, false);
    assert_eq!(report.stores[0].billing_records, FAST_RECORDS);
}

/// Best-effort records beside billing ones, through a SIGKILL failover and
/// failback: they travel PR-SCTP on their own stream and are stored, but
/// carry no record sequence, so the billing audit is untouched by them (no
/// gap, no duplicate among the billing records) and counts them apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn best_effort_records_travel_beside_billing_ones() {
    const BEST_EFFORT: u64 = 6_000;
    let mut pool = Pool::start().await;
    let mut exporter = pool.exporter_with(
        RECORDS,
        RATE,
        true,
        // Generous lifetime: a loaded test machine must not turn a slow
        // send into an abandoned message.
        "[best_effort]\ndomains = [9]\nlifetime = \"10s\"\n",
        &["--best-effort-records", &BEST_EFFORT.to_string()],
    );
    pool.wait_stored(&[0], 12 * RATE / 10, &mut exporter).await;
    pool.local.kill_collector(0);
    pool.wait_stored(&[1], 6 * RATE / 10, &mut exporter).await;
    pool.local.start_collector(0);
    let log = wait_exporter(exporter, Duration::from_secs(60));
    assert!(log.contains("FAILOVER"), "no failover: {log}");
    let sent: u64 = log
        .lines()
        .find_map(|line| line.strip_prefix("best effort: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no best-effort summary: {log}"));
    let report = pool.finish().await;
    assert_complete(&report, RECORDS, true);
    // Best effort: whatever the killed primary had not stored is lost (by
    // design); nothing was invented, and the rest arrived.
    let stored = report.totals.non_billing_records_skipped;
    println!("best effort: {stored} of {sent} stored across the failover");
    assert_eq!(sent, BEST_EFFORT, "every best-effort record was sent once");
    assert!(stored <= sent, "{stored} stored of {sent} sent");
    assert!(
        stored >= sent / 2,
        "most best-effort records arrive: {stored} of {sent}"
    );
}

/// Maintenance without a failover: the primary's priority is lowered below
/// the backup's and reloaded (SIGHUP). The exporter sees a better PE, drains
/// the primary and moves to the backup, as in a failback: nothing lost,
/// nothing stored twice, no failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_the_primary_priority_moves_the_exporter_without_loss() {
    let mut pool = Pool::start().await;
    let mut exporter = pool.exporter(MOVE_RECORDS, RATE, false);
    pool.wait_stored(&[0], RATE, &mut exporter).await;
    pool.local.reload_priority(0, 1);
    let log = wait_exporter(exporter, Duration::from_secs(60));
    assert!(log.contains("FAILBACK"), "no move to the backup: {log}");
    assert!(!log.contains("FAILOVER"), "moved by a failover: {log}");
    let report = pool.finish().await;
    assert_complete(&report, MOVE_RECORDS, false);
    assert!(report.stores[1].billing_records > 0, "the backup took over");
    assert!(
        report.stores[0].billing_records > 0,
        "the primary had records before"
    );
}

/// The reported case: the primary SIGKILLed a third into the stream and
/// never back, the tail on the backup, whose store is then left out. The
/// primary's store alone looks complete (the stores know only what they
/// received); the exporter's own account, its state file, names the tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_on_a_store_left_out_is_named_by_the_exporters_account() {
    let mut pool = Pool::start().await;
    let mut exporter = pool.exporter(RECORDS, RATE, true);
    pool.wait_stored(&[0], RATE, &mut exporter).await;
    pool.local.kill_collector(0);
    let log = wait_exporter(exporter, Duration::from_secs(60));
    assert!(log.contains("FAILOVER"), "no failover: {log}");
    pool.local.terminate_collector(1);
    pool.local.stop_registrar().await;
    let primary = pool.local.store(0);
    let state = pool.state_file();
    let audit = |databases: Vec<PathBuf>, exporter_states: Vec<PathBuf>| {
        collector::audit::run(&AuditOptions {
            databases,
            exporter_states,
            ..AuditOptions::default()
        })
        .unwrap()
    };
    let alone = audit(vec![primary.clone()], vec![]);
    let stored_on_primary = alone.exporter_domains[0].last_sequence.unwrap();
    assert!(
        stored_on_primary + 1 < RECORDS,
        "the primary took everything"
    );

    let with_state = audit(vec![primary.clone()], vec![state.clone()]);
    assert_eq!(with_state.verdict, Verdict::Fail);
    let g = &with_state.exporter_domains[0];
    assert_eq!(g.state_file_next_sequence, Some(RECORDS));
    let last_gap = g.gaps.ranges.last().expect("the tail is a gap");
    assert_eq!(last_gap.last, RECORDS - 1, "{:?}", g.gaps);
    assert!(last_gap.first <= stored_on_primary + 1, "{:?}", g.gaps);

    let both = audit(vec![primary, pool.local.store(1)], vec![state]);
    assert_complete(&both, RECORDS, true);
}
