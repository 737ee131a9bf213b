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

use crate::collector_config::{PoolCollector, StreamTransport};
use crate::{free_tcp_port, free_udp_port, workspace_bin};

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
    transport: StreamTransport,
    ports: Vec<u16>,
    priorities: Vec<u32>,
    /// TOML appended to each collector's config (e.g. a `[postgres]` table).
    collector_tables: Vec<String>,
    collectors: Vec<Option<Child>>,
}

impl LocalPool {
    /// A registrar with fast keep-alives and collectors with these
    /// priorities (the first is the primary), all started and registered.
    pub async fn start(priorities: &[u32]) -> Self {
        Self::start_some(priorities, priorities.len()).await
    }

    /// Collectors with these priorities configured, the first `running` of
    /// them started and registered.
    pub async fn start_some(priorities: &[u32], running: usize) -> Self {
        Self::start_over(StreamTransport::Sctp, priorities, running).await
    }

    /// [`Self::start`], with `tables(i)` (TOML tables) appended to
    /// collector `i`'s config.
    pub async fn start_with_tables(priorities: &[u32], tables: impl Fn(usize) -> String) -> Self {
        Self::launch(StreamTransport::Sctp, priorities, priorities.len(), tables).await
    }

    /// [`Self::start_some`] with the collectors taking billing streams
    /// over `transport`.
    pub async fn start_over(
        transport: StreamTransport,
        priorities: &[u32],
        running: usize,
    ) -> Self {
        Self::launch(transport, priorities, running, |_| String::new()).await
    }

    async fn launch(
        transport: StreamTransport,
        priorities: &[u32],
        running: usize,
        tables: impl Fn(usize) -> String,
    ) -> Self {
        let free_port = match transport {
            StreamTransport::Sctp => free_udp_port,
            StreamTransport::FramedTcp => free_tcp_port,
        };
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
            transport,
            ports: priorities.iter().map(|_| free_port()).collect(),
            priorities: priorities.to_vec(),
            collector_tables: (0..priorities.len()).map(tables).collect(),
            collectors: priorities.iter().map(|_| None).collect(),
        };
        for i in 0..running {
            pool.start_collector(i);
        }
        pool.wait_registered(running).await;
        pool
    }

    /// The pool's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The stores of every configured collector.
    pub fn stores(&self) -> Vec<PathBuf> {
        (0..self.ports.len()).map(|i| self.store(i)).collect()
    }

    /// SIGKILL of collector `i`, if running (no graceful stop: nothing
    /// flushed, no deregistration).
    pub fn kill_collector(&mut self, i: usize) {
        if let Some(mut c) = self.collectors[i].take() {
            sigkill(&mut c);
        }
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
        let store = self.store(i);
        let child = PoolCollector {
            handle: POOL,
            database: &store,
            listener: self.transport.listener(self.ports[i]),
            registrars: &[format!("sctp:{}", self.registrar_addr)],
            priority: self.priorities[i],
            // The tables go last: they end the `[pool]` table.
            pool_keys: &format!(
                "cookie_key = \"{COOKIE_KEY}\"\n{}",
                self.collector_tables[i]
            ),
        }
        .start(&self.path(&format!("c{i}.toml")));
        self.collectors[i] = Some(child);
    }

    /// Where exporters reach collector `i`.
    pub fn collector_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[i]))
    }

    /// A new priority for running collector `i`: its config file is
    /// rewritten and reloaded with SIGHUP.
    pub fn reload_priority(&mut self, i: usize, priority: u32) {
        self.priorities[i] = priority;
        let store = self.store(i);
        let config = PoolCollector {
            handle: POOL,
            database: &store,
            listener: self.transport.listener(self.ports[i]),
            registrars: &[format!("sctp:{}", self.registrar_addr)],
            priority,
            pool_keys: &format!("cookie_key = \"{COOKIE_KEY}\""),
        };
        std::fs::write(self.path(&format!("c{i}.toml")), config.toml()).unwrap();
        let pid = self.collectors[i].as_ref().expect("running").id();
        let status = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM to collector `i`, if running: it must exit 0.
    pub fn terminate_collector(&mut self, i: usize) {
        if let Some(mut c) = self.collectors[i].take() {
            terminate(&mut c);
            let status = c.wait().unwrap();
            assert!(status.success(), "collector {i} exited with {status}");
        }
    }

    /// Stops the registrar (the collectors keep running).
    pub async fn stop_registrar(&mut self) {
        if let Some(r) = self.registrar.take() {
            r.stop().await;
        }
    }

    /// The registrar's handlespace size and its removal counters
    /// (keep-alive failures, unreachable removals).
    pub async fn registrar_view(&self) -> (usize, u64, u64) {
        registrar_view(self.registrar.as_ref().expect("registrar running")).await
    }

    /// Waits until the handlespace holds `count` PEs.
    pub async fn wait_registered(&self, count: usize) {
        wait_registered(self.registrar.as_ref().expect("registrar running"), count).await;
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
        self.stream_with(config, records, rate, &[])
    }

    /// [`Self::stream`] with more command-line arguments.
    pub fn stream_with(&self, config: &Path, records: u64, rate: u64, more_args: &[&str]) -> Child {
        let child = Command::new(workspace_bin("exporter"))
            .args(["stream", "--config"])
            .arg(config)
            .args(["--records", &records.to_string()])
            .args(["--rate", &rate.to_string()])
            .args(["--exit-drain-timeout", "60s"])
            .args(more_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The output is read once the exporter exits: a pipe that fills
        // first (64 KiB by default) would block the exporter in a log
        // write and look like a hang. 1 MiB (Linux's default pipe-max-size)
        // holds any test's log.
        for fd in [
            child.stdout.as_ref().map(std::os::fd::AsRawFd::as_raw_fd),
            child.stderr.as_ref().map(std::os::fd::AsRawFd::as_raw_fd),
        ]
        .into_iter()
        .flatten()
        {
            // SAFETY: F_SETPIPE_SZ on a pipe fd this process owns.
            unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, 1 << 20) };
        }
        child
    }

    /// Stops the collectors (SIGTERM; each must exit 0) and the registrar.
    pub async fn stop(&mut self) {
        for i in 0..self.collectors.len() {
            self.terminate_collector(i);
        }
        self.stop_registrar().await;
    }

    /// Audits every store.
    pub fn audit(&self, fail_on_declared_loss: bool) -> AuditReport {
        collector::audit::run(&AuditOptions {
            databases: self.stores(),
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

/// An in-process registrar's handlespace size and its removal counters
/// (keep-alive failures, unreachable removals).
pub async fn registrar_view(registrar: &Registrar) -> (usize, u64, u64) {
    let status = registrar.status().await.unwrap();
    let elements = status.pools.iter().map(|p| p.elements.len()).sum();
    (
        elements,
        status.counters.keep_alive_failures,
        status.counters.unreachable_removals,
    )
}

/// Waits (bounded) until an in-process registrar's handlespace holds
/// `count` PEs.
pub async fn wait_registered(registrar: &Registrar, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if registrar_view(registrar).await.0 == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the handlespace did not reach {count} PEs within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
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

/// [`wait_stored`] while `exporter` streams: if the records never arrive,
/// the exporter is stopped and its log goes into the panic, which tells
/// where it was stuck.
pub async fn wait_stored_by(
    stores: &[PathBuf],
    exporter_id: u32,
    records: u64,
    exporter: &mut Child,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored: u64 = stores.iter().map(|s| stored_records(s, exporter_id)).sum();
        if stored >= records {
            return;
        }
        if Instant::now() >= deadline {
            let _ = exporter.kill();
            let _ = exporter.wait();
            let mut log = String::new();
            if let Some(mut out) = exporter.stdout.take() {
                let _ = std::io::Read::read_to_string(&mut out, &mut log);
            }
            if let Some(mut err) = exporter.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut err, &mut log);
            }
            panic!(
                "exporter {exporter_id}: {stored} of {records} records stored after 60 s; its log:\n{log}"
            );
        }
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
