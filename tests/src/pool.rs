//! A local pool of real processes for process-level tests: an in-process
//! registrar, collectors as `collector run` children, exporters and relays
//! as `exporter` children, and the audit over every store. Tests wait on
//! polled state (records in a store, a registrar's handlespace, a relay's
//! counters) with bounded deadlines, never on fixed sleeps.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use collector::audit::{AuditOptions, AuditReport};
use registrar::config::RegistrarConfig;
use registrar::driver::Registrar;

use crate::{child_log, free_udp_port, workspace_bin};

/// The pool handle of the test pools.
pub const POOL: &str = "billing-collectors";
/// The shared HMAC cookie key of the test pools.
pub const COOKIE_KEY: &str = "a shared pool key for the tests";

/// A registrar and collectors on loopback (SCTP over UDP).
pub struct LocalPool {
    dir: tempfile::TempDir,
    registrar: Option<Registrar>,
    /// Where PEs and PUs reach the registrar.
    pub registrar_addr: SocketAddr,
    ports: Vec<u16>,
    priorities: Vec<u32>,
    /// TOML appended to each collector's config (e.g. a `[postgres]` table).
    collector_tables: Vec<String>,
    collectors: Vec<Option<Child>>,
}

impl LocalPool {
    /// A registrar with fast keep-alives and collectors with these
    /// priorities (the first is the primary).
    pub async fn start(priorities: &[u32]) -> Self {
        Self::start_with_tables(priorities, |_| String::new()).await
    }

    /// [`Self::start`], with `tables(i)` (TOML tables) appended to
    /// collector `i`'s config.
    pub async fn start_with_tables(priorities: &[u32], tables: impl Fn(usize) -> String) -> Self {
        let mut config = RegistrarConfig::default();
        config.listen.tcp = String::new();
        config.listen.sctp_over_udp = "127.0.0.1:0".into();
        config.listen.status = String::new();
        config.timers.keep_alive_period = Duration::from_millis(200);
        config.timers.keep_alive_timeout = Duration::from_millis(300);
        let registrar = Registrar::start(config, None).await.unwrap();
        let registrar_addr = registrar.sctp_over_udp_addr.unwrap();
        let mut pool = Self {
            dir: tempfile::tempdir().unwrap(),
            registrar: Some(registrar),
            registrar_addr,
            ports: priorities.iter().map(|_| free_udp_port()).collect(),
            priorities: priorities.to_vec(),
            collector_tables: (0..priorities.len()).map(tables).collect(),
            collectors: priorities.iter().map(|_| None).collect(),
        };
        for i in 0..priorities.len() {
            pool.start_collector(i);
        }
        pool.wait_registered(priorities.len()).await;
        pool
    }

    /// A file in the pool's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The store of collector `i`.
    pub fn store(&self, i: usize) -> PathBuf {
        self.path(&format!("c{i}.sqlite"))
    }

    /// Starts collector `i` (again).
    pub fn start_collector(&mut self, i: usize) {
        let config = self.path(&format!("c{i}.toml"));
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
priority = {priority}
cookie_key = "{COOKIE_KEY}"
{tables}
"#,
                tables = self.collector_tables[i],
                db = self.store(i).display(),
                port = self.ports[i],
                registrar = self.registrar_addr,
                priority = self.priorities[i],
            ),
        )
        .unwrap();
        let child = Command::new(workspace_bin("collector"))
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(child_log())
            .spawn()
            .unwrap();
        self.collectors[i] = Some(child);
    }

    /// The registrar's handlespace size and its removal counters
    /// (keep-alive failures, unreachable removals).
    pub async fn registrar_view(&self) -> (usize, u64, u64) {
        let status = self
            .registrar
            .as_ref()
            .expect("registrar running")
            .status()
            .await
            .unwrap();
        let elements = status.pools.iter().map(|p| p.elements.len()).sum();
        (
            elements,
            status.counters.keep_alive_failures,
            status.counters.unreachable_removals,
        )
    }

    /// Waits until the handlespace holds `count` PEs.
    pub async fn wait_registered(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.registrar_view().await.0 == count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{count} PEs did not register within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Writes an exporter config (`exporter_id`, its own state file) and
    /// returns its path; `top` goes with the top-level keys, `tables` (TOML
    /// tables) after `[timers]`.
    pub fn exporter_config(&self, exporter_id: u32, top: &str, tables: &str) -> PathBuf {
        let config = self.path(&format!("exporter-{exporter_id}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"exporter_id = {exporter_id}
pool_handle = "{POOL}"
registrars = ["sctp:{registrar}"]
state_file = "{state}"
sequence_reservation = 1000
{top}
[timers]
cookie_timeout = "2s"
failback_check = "200ms"
drain_timeout = "5s"
retry_interval = "200ms"
failback_holdoff = "500ms"
connect_timeout = "1s"
cache_lifetime = "500ms"
registrar_request_timeout = "1s"
{tables}"#,
                registrar = self.registrar_addr,
                state = self
                    .path(&format!("exporter-{exporter_id}.state"))
                    .display(),
            ),
        )
        .unwrap();
        config
    }

    /// `exporter stream` with this config.
    pub fn stream(&self, config: &Path, records: u64, rate: u64) -> Child {
        Command::new(workspace_bin("exporter"))
            .args(["stream", "--config"])
            .arg(config)
            .args(["--records", &records.to_string()])
            .args(["--rate", &rate.to_string()])
            .args(["--exit-drain-timeout-secs", "60"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// SIGKILLs collector `i` (no graceful stop: nothing flushed, no
    /// deregistration).
    pub fn kill_collector(&mut self, i: usize) {
        if let Some(mut c) = self.collectors[i].take() {
            sigkill(&mut c);
        }
    }

    /// Stops the collectors (SIGTERM; each must exit 0) and the registrar.
    pub async fn stop(&mut self) {
        for i in 0..self.collectors.len() {
            if let Some(mut c) = self.collectors[i].take() {
                terminate(&mut c);
                let status = c.wait().unwrap();
                assert!(status.success(), "collector {i} exited with {status}");
            }
        }
        if let Some(r) = self.registrar.take() {
            r.stop().await;
        }
    }

    /// Audits every store.
    pub fn audit(&self, fail_on_declared_loss: bool) -> AuditReport {
        collector::audit::run(&AuditOptions {
            databases: (0..self.ports.len()).map(|i| self.store(i)).collect(),
            exporter: None,
            domain: None,
            list_limit: 100,
            progress: false,
            fail_on_declared_loss,
            ..AuditOptions::default()
        })
        .unwrap()
    }

    /// [`Self::stop`], then [`Self::audit`].
    pub async fn finish(mut self, fail_on_declared_loss: bool) -> AuditReport {
        self.stop().await;
        self.audit(fail_on_declared_loss)
    }
}

impl Drop for LocalPool {
    fn drop(&mut self) {
        for c in self.collectors.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// SIGTERM.
pub fn terminate(child: &mut Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
}

/// SIGKILL and reap.
pub fn sigkill(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Billing records of `exporter_id` stored in `store` (0 while the store
/// does not exist yet).
pub fn stored_records(store: &Path, exporter_id: u32) -> u64 {
    let Ok(db) =
        rusqlite::Connection::open_with_flags(store, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return 0;
    };
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.query_row(
        "SELECT COALESCE(SUM(record_count), 0) FROM record_blocks WHERE billing_exporter = ?1",
        [exporter_id],
        |row| row.get::<_, i64>(0),
    )
    .map_or(0, |n| n as u64)
}

/// Waits (bounded) until the stores together hold at least `records`
/// billing records of `exporter_id`.
pub async fn wait_stored(stores: &[PathBuf], exporter_id: u32, records: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored: u64 = stores.iter().map(|s| stored_records(s, exporter_id)).sum();
        if stored >= records {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "exporter {exporter_id}: {stored} of {records} records stored after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`wait_output`] for a child that must succeed (an exporter exits 0 only
/// when every record it took in was acknowledged): returns its output.
pub fn wait_success(child: Child, within: Duration) -> String {
    let (status, log) = wait_output(child, within);
    assert!(status.success(), "exited with {status}: {log}");
    log
}

/// Waits for a child to exit (bounded) and returns its status and its
/// combined output.
pub fn wait_output(mut child: Child, within: Duration) -> (std::process::ExitStatus, String) {
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "did not finish within {within:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, log)
}
