//! Signed billing cookies end to end, with real processes: collectors sign
//! cookies with their own Ed25519 keys (version 2), the exporter holds the
//! pool's public keys and checks every cookie.
//!
//! - A hostile pool element (a real `collector` with the highest priority,
//!   its own key, and `trust_any_cookie_echo`) joins an open pool mid-stream:
//!   the exporter fails back to it once, refuses its first cookie, releases
//!   nothing on it, leaves it for good, and finishes on the legitimate
//!   collectors, whose audit finds every record.
//! - A signing-key rotation under a running stream: collectors restarted one
//!   by one with the new key while the exporter trusts old and new: nothing
//!   lost, nothing stored twice.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use collector::audit::{AuditOptions, AuditReport, Verdict};
use poolflow_tests::collector_config::{Listener, PoolCollector};
use poolflow_tests::pool::{wait_registered, wait_stored};
use poolflow_tests::{free_udp_port, workspace_bin};
use protocol::signing::{SigningKey, key_id, pkcs8_private_pem, pkcs8_public_pem};
use registrar::config::RegistrarConfig;
use registrar::driver::Registrar;

const POOL: &str = "billing-collectors";
const EXPORTER_ID: u32 = 7;
const RATE: u64 = 10_000;
const HOSTILE_PE: u32 = 0x0bad_c0de;

/// One collector's settings.
#[derive(Clone)]
struct CollectorSpec {
    name: &'static str,
    priority: u32,
    pe_identifier: u32,
    signing_key: String,
    verify_keys: Vec<String>,
    trust_any_cookie_echo: bool,
}

struct Pool {
    dir: tempfile::TempDir,
    registrar: Option<Registrar>,
    registrar_addr: std::net::SocketAddr,
    collectors: Vec<(CollectorSpec, u16, Option<Child>)>,
}

impl Pool {
    async fn start() -> Self {
        let mut config = RegistrarConfig::default();
        config.listen.tcp = String::new();
        config.listen.sctp_over_udp = "127.0.0.1:0".into();
        config.listen.status = String::new();
        config.timers.keep_alive_period = Duration::from_millis(200);
        config.timers.keep_alive_timeout = Duration::from_millis(300);
        let registrar = Registrar::start(config, None).await.unwrap();
        Self {
            registrar_addr: registrar.sctp_over_udp_addr.unwrap(),
            registrar: Some(registrar),
            dir: tempfile::tempdir().unwrap(),
            collectors: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn wait_registered(&self, count: usize) {
        wait_registered(self.registrar.as_ref().expect("running"), count).await;
    }

    /// Waits until the stores of `names` together hold `records`.
    async fn wait_stored(&self, names: &[&str], records: u64) {
        let stores: Vec<PathBuf> = names
            .iter()
            .map(|n| self.path(&format!("{n}.sqlite")))
            .collect();
        wait_stored(&stores, EXPORTER_ID, records).await;
    }

    /// Writes `name.pem` (private, mode 600) and `name.pub`; returns the key.
    fn make_key(&self, name: &str, seed: u8) -> SigningKey {
        use std::os::unix::fs::PermissionsExt;
        let key = SigningKey::from_bytes(&[seed; 32]);
        let private = self.path(&format!("{name}.pem"));
        std::fs::write(&private, pkcs8_private_pem(&key)).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(
            self.path(&format!("{name}.pub")),
            pkcs8_public_pem(&key.verifying_key()),
        )
        .unwrap();
        key
    }

    fn add_collector(&mut self, spec: CollectorSpec) -> usize {
        self.collectors.push((spec, free_udp_port(), None));
        let i = self.collectors.len() - 1;
        self.start_collector(i);
        i
    }

    fn start_collector(&mut self, i: usize) {
        let (spec, port, _) = &self.collectors[i];
        let list = |names: &[String]| {
            names
                .iter()
                .map(|n| format!("{:?}", self.path(&format!("{n}.pub"))))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let database = self.path(&format!("{}.sqlite", spec.name));
        let child = PoolCollector {
            handle: POOL,
            database: &database,
            listener: Listener::Sctp(*port),
            registrars: &[format!("sctp:{}", self.registrar_addr)],
            priority: spec.priority,
            pool_keys: &format!(
                "pe_identifier = {pe}\ncookie_signing_key_file = {signing:?}\n\
                 cookie_verify_key_files = [{verify}]\ntrust_any_cookie_echo = {trust_any}",
                pe = spec.pe_identifier,
                signing = self.path(&format!("{}.pem", spec.signing_key)),
                verify = list(&spec.verify_keys),
                trust_any = spec.trust_any_cookie_echo,
            ),
        }
        .start(&self.path(&format!("{}.toml", spec.name)));
        self.collectors[i].2 = Some(child);
    }

    /// SIGTERM (deregister, commit, acknowledge) and wait.
    fn terminate(&mut self, i: usize) {
        if let Some(mut c) = self.collectors[i].2.take() {
            Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .unwrap();
            let status = c.wait().unwrap();
            assert!(status.success(), "collector {i} exited with {status}");
        }
    }

    fn exporter(&self, records: u64, trusted_keys: &[&str]) -> Child {
        let config = self.path("exporter.toml");
        let keys = trusted_keys
            .iter()
            .map(|n| format!("{:?}", self.path(&format!("{n}.pub"))))
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::write(
            &config,
            format!(
                r#"exporter_id = {EXPORTER_ID}
pool_handle = "{POOL}"
registrars = ["sctp:{registrar}"]
state_file = {state:?}
cookie_public_key_files = [{keys}]
[buffer]
spill_dir = {spill:?}
[timers]
cookie_timeout_ms = 3000
failback_check_ms = 200
drain_timeout_ms = 5000
retry_interval_ms = 200
failback_holdoff_ms = 500
connect_timeout_ms = 1000
cache_lifetime_ms = 500
registrar_request_timeout_ms = 1000
fast_failure_detection = false
"#,
                registrar = self.registrar_addr,
                state = self.path("exporter.state"),
                spill = self.path("spill"),
            ),
        )
        .unwrap();
        Command::new(workspace_bin("exporter"))
            .args(["stream", "--config"])
            .arg(&config)
            .args(["--records", &records.to_string()])
            .args(["--rate", &RATE.to_string()])
            .args(["--exit-drain-timeout-secs", "60"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Stops every collector gracefully and the registrar.
    async fn stop(&mut self) {
        for i in 0..self.collectors.len() {
            self.terminate(i);
        }
        if let Some(r) = self.registrar.take() {
            r.stop().await;
        }
    }

    /// Audits `names`' stores; with `with_state`, against the exporter's
    /// state file too (what it says it numbered: a tail stored nowhere
    /// audited is a gap).
    fn audit(&self, names: &[&str], with_state: bool) -> AuditReport {
        let state = self.path("exporter.state");
        collector::audit::run(&AuditOptions {
            databases: names
                .iter()
                .map(|n| self.path(&format!("{n}.sqlite")))
                .collect(),
            exporter: None,
            domain: None,
            list_limit: 100,
            progress: false,
            exporter_states: (with_state && state.exists())
                .then_some(state)
                .into_iter()
                .collect(),
            ..AuditOptions::default()
        })
        .unwrap()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for (_, _, child) in &mut self.collectors {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Waits for the exporter (it exits 0 only when every record it took in
/// is covered by an accepted cookie); returns stdout and stderr.
fn wait_exporter(exporter: Child, within: Duration) -> String {
    poolflow_tests::pool::wait_success(exporter, within)
}

/// Polls until `condition` holds (bounded), for events of other processes.
async fn wait_until(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Records stored in one collector's store (its audit alone).
fn stored_in(pool: &Pool, name: &str) -> u64 {
    pool.audit(&[name], false).stores[0].billing_records
}

fn legit(name: &'static str, priority: u32, pe: u32, key: &str) -> CollectorSpec {
    CollectorSpec {
        name,
        priority,
        pe_identifier: pe,
        signing_key: key.into(),
        verify_keys: vec!["pool-a".into(), "pool-b".into()],
        trust_any_cookie_echo: false,
    }
}

fn assert_every_record_once(report: &AuditReport, records: u64) {
    let t = &report.totals;
    assert_eq!(report.verdict, Verdict::Pass, "{:?}", report.failures);
    assert_eq!(t.records_present, records, "every record present");
    assert_eq!(t.missing_records, 0);
    assert_eq!(t.conflicting_sequences, 0);
    assert_eq!(t.anomalies, 0);
    assert_eq!(t.benign_duplicate_sequences, 0, "no record stored twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_top_priority_pe_in_an_open_pool_gets_no_record_released() {
    const RECORDS: u64 = 60_000;
    let mut pool = Pool::start().await;
    pool.make_key("pool-a", 1);
    pool.make_key("pool-b", 2);
    pool.make_key("hostile", 66);
    pool.add_collector(legit("primary", 100, 0x100, "pool-a"));
    pool.add_collector(legit("backup", 10, 0x10, "pool-b"));
    pool.wait_registered(2).await;
    let exporter = pool.exporter(RECORDS, &["pool-a", "pool-b"]);
    // A third of the way in, the hostile PE joins under the same handle,
    // above everyone, with its own key and accepting any Cookie Echo.
    pool.wait_stored(&["primary", "backup"], RECORDS / 3).await;
    pool.add_collector(CollectorSpec {
        name: "hostile",
        priority: 200,
        pe_identifier: HOSTILE_PE,
        signing_key: "hostile".into(),
        verify_keys: Vec::new(),
        trust_any_cookie_echo: true,
    });
    let log = wait_exporter(exporter, Duration::from_secs(90));
    let refused = format!("COOKIE REFUSED from {HOSTILE_PE:#010x}: unknown_key");
    assert!(
        log.contains(&refused),
        "no refusal of the hostile PE: {log}"
    );
    // It was used once: one association, one refusal, never again.
    let streamed_to_hostile = log
        .matches(&format!("streaming to {HOSTILE_PE:#010x}"))
        .count();
    assert_eq!(streamed_to_hostile, 1, "flapped to the hostile PE: {log}");
    assert_eq!(log.matches("COOKIE REFUSED").count(), 1, "{log}");
    assert!(log.contains("all acknowledged"), "{log}");
    pool.stop().await;

    let hostile_stored = stored_in(&pool, "hostile");
    let report = pool.audit(&["primary", "backup"], true);
    println!(
        "hostile PE stored {hostile_stored} of {RECORDS} records; audit of the two legitimate \
         stores: {:?}, {} present, {} missing, {} duplicates",
        report.verdict,
        report.totals.records_present,
        report.totals.missing_records,
        report.totals.benign_duplicate_sequences
    );
    assert!(
        hostile_stored > 0,
        "the hostile PE took part (else nothing was tested)"
    );
    assert_every_record_once(&report, RECORDS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_key_rotation_under_a_running_stream_loses_and_duplicates_nothing() {
    // 8 s of records: the rolls and the failback happen well before the end.
    const RECORDS: u64 = 80_000;
    let mut pool = Pool::start().await;
    let old = pool.make_key("pool-a", 1);
    let new = pool.make_key("pool-b", 2);
    // Step 1 (done before): every collector and the exporter trust old and
    // new; collectors sign with the old key.
    let primary = pool.add_collector(legit("primary", 100, 0x100, "pool-a"));
    let backup = pool.add_collector(legit("backup", 10, 0x10, "pool-a"));
    pool.wait_registered(2).await;
    let exporter = pool.exporter(RECORDS, &["pool-a", "pool-b"]);
    pool.wait_stored(&["primary"], RECORDS / 8).await;
    // Step 2: roll the collectors one by one onto the new key.
    pool.terminate(backup);
    pool.collectors[backup].0.signing_key = "pool-b".into();
    pool.start_collector(backup);
    pool.wait_registered(2).await;
    pool.terminate(primary);
    pool.collectors[primary].0.signing_key = "pool-b".into();
    // While the primary is away the backup signs with the new key.
    let state = pool.path("exporter.state");
    let new_id = key_id(&new.verifying_key());
    wait_until(
        "a cookie signed with the new key in the exporter's state",
        Duration::from_secs(20),
        || {
            state.exists()
                && exporter::state_file::StateFile::new(&state)
                    .load(EXPORTER_ID)
                    .ok()
                    .and_then(|s| s.domains.get(&1).and_then(|d| d.last_cookie))
                    .and_then(|c| c.key_id())
                    == Some(new_id)
        },
    )
    .await;
    pool.start_collector(primary);
    let log = wait_exporter(exporter, Duration::from_secs(90));
    assert!(!log.contains("COOKIE REFUSED"), "{log}");
    assert!(
        log.contains("FAILBACK"),
        "back to the rolled primary: {log}"
    );
    assert!(log.contains("all acknowledged"), "{log}");
    // The last cookie is signed by the new key: the old one can go.
    let last = exporter::state_file::StateFile::new(&state)
        .load(EXPORTER_ID)
        .unwrap()
        .domains[&1]
        .last_cookie
        .unwrap();
    assert_eq!(last.key_id(), Some(new_id));
    assert_ne!(last.key_id(), Some(key_id(&old.verifying_key())));
    pool.stop().await;
    let report = pool.audit(&["primary", "backup"], true);
    println!(
        "rotation: {:?}, {} present, {} missing, {} duplicates",
        report.verdict,
        report.totals.records_present,
        report.totals.missing_records,
        report.totals.benign_duplicate_sequences
    );
    assert_every_record_once(&report, RECORDS);
    assert!(report.stores[1].billing_records > 0, "the backup took part");
}
