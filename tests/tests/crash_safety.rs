//! Crash safety of the collector's store, with real processes: a registrar,
//! one collector and `exporter stream` as the pool user. The collector is
//! killed with SIGKILL five times while records stream in (each time at a
//! different point: right after the first new cookie of its incarnation,
//! then later and later) and restarted on the same SQLite file.
//!
//! After every kill, before the restart:
//! - the store opens the way the collector opens it and
//!   `PRAGMA integrity_check` says `ok`;
//! - every record a cookie acknowledged is in the store. The acknowledgement
//!   observed is the strongest one the exporter keeps: the signed cookie in
//!   its persisted state file (docs/billing-continuity.md; the exporter
//!   echoes exactly that cookie to the next collector and never replays what
//!   it covers, so a record it covers that the store lacks is lost for
//!   good). The state file is sampled all along, and the highest cookie ever
//!   seen must stay covered after every later crash too.
//!
//! At the end the exporter must exit 0 (everything acknowledged) and
//! `collector audit` must pass with every record present and none missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use collector::audit::{AuditOptions, Verdict};
use collector::store::Store;
use exporter::state_file::StateFile;
use poolflow_tests::collector_config::{Listener, PoolCollector};
use poolflow_tests::pool::wait_registered;
use poolflow_tests::{free_udp_port, workspace_bin};
use protocol::billing::BillingCookie;
use registrar::config::RegistrarConfig;
use registrar::driver::Registrar;

const POOL: &str = "billing-collectors";
const KEY: &str = "a shared pool key for the crash test";
const EXPORTER_ID: u32 = 7;
const RECORDS: u64 = 600_000;
const RATE: u64 = 60_000;
/// Extra wait after the first new cookie of an incarnation, one per kill:
/// the kills land at different points of the commit cycle.
const KILL_DELAYS_MS: [u64; 5] = [0, 60, 170, 320, 530];

struct Setup {
    dir: tempfile::TempDir,
    registrar_addr: std::net::SocketAddr,
    port: u16,
}

impl Setup {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn database(&self) -> PathBuf {
        self.path("collector.sqlite")
    }

    fn start_collector(&self) -> Child {
        PoolCollector {
            handle: POOL,
            database: &self.database(),
            listener: Listener::Sctp(self.port),
            registrars: &[format!("sctp:{}", self.registrar_addr)],
            priority: 100,
            pool_keys: &format!("cookie_key = \"{KEY}\""),
        }
        .start(&self.path("collector.toml"))
    }

    fn start_exporter(&self) -> Child {
        let config = self.path("exporter.toml");
        std::fs::write(
            &config,
            format!(
                r#"exporter_id = {EXPORTER_ID}
pool_handle = "{POOL}"
registrars = ["sctp:{registrar}"]
state_file = "{state}"
[buffer]
spill_dir = "{spill}"
[timers]
cookie_timeout_ms = 1000
retry_interval_ms = 100
connect_timeout_ms = 1000
cache_lifetime_ms = 200
registrar_request_timeout_ms = 1000
state_sync_interval_ms = 10
fast_failure_detection = true
"#,
                registrar = self.registrar_addr,
                state = self.path("exporter.state").display(),
                spill = self.path("spill").display(),
            ),
        )
        .unwrap();
        Command::new(workspace_bin("exporter"))
            .args(["stream", "--config"])
            .arg(&config)
            .args(["--records", &RECORDS.to_string()])
            .args(["--rate", &RATE.to_string()])
            .args(["--exit-drain-timeout-secs", "60"])
            // A file, not a pipe: nobody reads the log while it runs, and a
            // full pipe would stall the exporter.
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.path("exporter.log")).unwrap())
            .spawn()
            .unwrap()
    }

    fn exporter_log(&self) -> String {
        std::fs::read_to_string(self.path("exporter.log")).unwrap_or_default()
    }

    /// The cookie in the exporter's persisted state, if it holds one. The
    /// file is replaced atomically, so a read sees a whole state.
    fn persisted_cookie(&self) -> Option<BillingCookie> {
        let state = StateFile::new(self.path("exporter.state"))
            .load(EXPORTER_ID)
            .expect("exporter state file reads");
        let cookie = state.domains.values().find_map(|d| d.last_cookie)?;
        cookie
            .verify(KEY.as_bytes())
            .expect("the persisted cookie is signed with the pool key");
        assert_eq!(cookie.exporter_id, EXPORTER_ID);
        Some(cookie)
    }
}

/// Opens the store as a restarting collector would and checks it: returns
/// the end of the run of record sequences stored contiguously from 0 for
/// (exporter, domain), or `None` when not even record 0 is there.
fn check_store(database: &Path, domain: u32) -> Option<u64> {
    let store = Store::open(database).expect("the store opens after SIGKILL");
    let conn = store.connection();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", (), |row| row.get(0))
        .unwrap();
    assert_eq!(integrity, "ok", "integrity_check after SIGKILL");
    let mut statement = conn
        .prepare(
            "SELECT first_record_sequence, record_count FROM record_blocks
             WHERE billing_exporter = ?1 AND domain = ?2
             ORDER BY first_record_sequence",
        )
        .unwrap();
    let rows = statement
        .query_map([i64::from(EXPORTER_ID), i64::from(domain)], |row| {
            Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64))
        })
        .unwrap();
    // Walk the blocks in sequence order: the contiguous prefix from 0.
    let mut next = 0u64;
    for row in rows {
        let (first, count) = row.unwrap();
        if first > next {
            break;
        }
        next = next.max(first + count);
    }
    next.checked_sub(1)
}

/// A child process that is killed if the test fails while it runs.
struct Running(Option<Child>);

impl Running {
    fn sigkill(&mut self) {
        if let Some(mut child) = self.0.take() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }
    }

    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("process running")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.sigkill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_heavy_writes_never_loses_an_acknowledged_record() {
    let mut config = RegistrarConfig::default();
    config.listen.tcp = String::new();
    config.listen.sctp_over_udp = "127.0.0.1:0".into();
    config.listen.status = String::new();
    config.timers.keep_alive_period = Duration::from_millis(200);
    config.timers.keep_alive_timeout = Duration::from_millis(300);
    let registrar = Registrar::start(config, None).await.unwrap();
    let setup = Setup {
        dir: tempfile::tempdir().unwrap(),
        registrar_addr: registrar.sctp_over_udp_addr.unwrap(),
        port: free_udp_port(),
    };
    let mut collector = Running(Some(setup.start_collector()));
    wait_registered(&registrar, 1).await;
    let mut exporter = Running(Some(setup.start_exporter()));

    // Highest acknowledged record sequence ever seen, and its domain.
    let mut acknowledged: Option<(u32, u64)> = None;
    for (round, delay_ms) in KILL_DELAYS_MS.into_iter().enumerate() {
        // Wait for this incarnation to acknowledge something new: records
        // are flowing and being committed right now.
        let deadline = Instant::now() + Duration::from_secs(15);
        let before = acknowledged.map(|(_, last)| last);
        loop {
            if let Some(cookie) = setup.persisted_cookie() {
                let last = cookie.last_record_sequence;
                if acknowledged.is_none_or(|(_, seen)| last > seen) {
                    acknowledged = Some((cookie.domain, last));
                }
            }
            if acknowledged.map(|(_, last)| last) > before {
                break;
            }
            assert!(
                exporter.child().try_wait().unwrap().is_none(),
                "round {round}: the exporter ended before the collector was killed 5 times \
                 (raise RECORDS)"
            );
            assert!(
                Instant::now() < deadline,
                "round {round}: no new cookie within 15 s (acknowledged so far: {before:?})"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        collector.sigkill();
        // Cookies that were on their way when the collector died may have
        // reached the exporter after the last sample: take the final state.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(cookie) = setup.persisted_cookie() {
            let last = cookie.last_record_sequence;
            if acknowledged.is_none_or(|(_, seen)| last > seen) {
                acknowledged = Some((cookie.domain, last));
            }
        }
        let (domain, last_acknowledged) = acknowledged.expect("a cookie was seen");
        let stored_through = check_store(&setup.database(), domain);
        assert!(
            stored_through.is_some_and(|through| through >= last_acknowledged),
            "round {round}: a cookie acknowledged records 0..={last_acknowledged}, but after \
             SIGKILL the store holds them contiguously only through {stored_through:?}"
        );
        eprintln!(
            "round {round}: killed {delay_ms} ms after a new cookie; acknowledged through \
             {last_acknowledged}, stored through {stored_through:?}"
        );
        collector = Running(Some(setup.start_collector()));
    }

    // Let the exporter finish: it exits 0 only when every record it took in
    // is covered by a cookie.
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = exporter.child().try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "exporter did not finish: {}",
            setup.exporter_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status.success(),
        "exporter failed ({status}): {}",
        setup.exporter_log()
    );
    let mut stopping = collector.0.take().expect("collector running");
    Command::new("kill")
        .args(["-TERM", &stopping.id().to_string()])
        .status()
        .unwrap();
    assert!(
        stopping.wait().unwrap().success(),
        "collector stops cleanly"
    );
    registrar.stop().await;
    let report = collector::audit::run(&AuditOptions {
        databases: vec![setup.database()],
        exporter: None,
        domain: None,
        list_limit: 100,
        progress: false,
        ..AuditOptions::default()
    })
    .unwrap();
    let totals = &report.totals;
    assert_eq!(report.verdict, Verdict::Pass, "{:?}", report.failures);
    assert_eq!(totals.missing_records, 0);
    assert_eq!(totals.conflicting_sequences, 0);
    assert_eq!(totals.records_present, RECORDS, "every record present");
    // One store: a replayed record already stored is dropped, never kept twice.
    assert_eq!(totals.benign_duplicate_sequences, 0);
}
