//! The registrar pool survives a registrar SIGKILL under a running exporter,
//! with real processes: three `registrar` processes peered by ENRP on
//! loopback, a primary and a backup collector registered at different
//! registrars, and `exporter stream` as the pool user knowing all three
//! registrars. The primary's home registrar is killed with SIGKILL
//! mid-stream; the primary's PE must stay resolvable at both survivors
//! (taken over by ENRP, or re-registered by the PE's own server hunt,
//! whichever comes first) and end up homed at a survivor; the exporter must
//! finish and the audit over both stores must find nothing missing. The
//! killed registrar is restarted and must resynchronize to the survivors'
//! handlespace checksum.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use collector::audit::{AuditOptions, Verdict};
use poolflow_tests::collector_config::{Listener, PoolCollector};
use poolflow_tests::pool::wait_stored;
use poolflow_tests::{child_log, free_tcp_port, free_udp_port, workspace_bin};
use registrar::driver::fetch_status;
use registrar::server::Status;

const POOL: &str = "billing-collectors";
const KEY: &str = "a shared pool key for the tests";
const RECORDS: u64 = 40_000;
const RATE: u64 = 10_000;

/// One registrar process and the ports it listens on.
struct RegistrarProcess {
    server_id: u32,
    asap: SocketAddr,
    enrp: SocketAddr,
    status: SocketAddr,
    child: Option<Child>,
}

impl RegistrarProcess {
    fn start(&mut self, dir: &Path, peers: &[SocketAddr]) {
        let config = dir.join(format!("registrar{}.toml", self.server_id));
        // The pool's ENRP is authenticated (docs/enrp-security.md).
        // Written once: rewriting it could race a registrar reading it.
        let key_file = dir.join("enrp.key");
        if !key_file.exists() {
            std::fs::write(&key_file, "a registrar pool key for the tests\n").unwrap();
        }
        let peers: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
        std::fs::write(
            &config,
            format!(
                r#"server_id = {id}
[listen]
tcp = ""
sctp_over_udp = "{asap}"
status = "{status}"
[timers]
keep_alive_period = "200ms"
keep_alive_timeout = "400ms"
[enrp]
enabled = true
listen = "{enrp}"
peers = [{peers}]
peer_heartbeat_cycle = "200ms"
max_time_last_heard = "600ms"
max_time_no_response = "400ms"
takeover_expiry = "400ms"
auth_key_file = "{key_file}"
"#,
                id = self.server_id,
                asap = self.asap,
                status = self.status,
                enrp = self.enrp,
                peers = peers.join(", "),
                key_file = key_file.display(),
            ),
        )
        .unwrap();
        let child = Command::new(workspace_bin("registrar"))
            .args(["run", "--config"])
            .arg(&config)
            // tracing writes to stdout.
            .stdout(child_log())
            .stderr(child_log())
            .spawn()
            .expect("starting a registrar");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }
    }
}

impl Drop for RegistrarProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Collector(Child);

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Collector {
    /// Registers at `registrars[0]` first (asap-client walks its list in order).
    fn start(dir: &Path, i: usize, port: u16, priority: u32, registrars: &[SocketAddr]) -> Self {
        let database = dir.join(format!("c{i}.sqlite"));
        let registrars: Vec<String> = registrars.iter().map(|r| format!("sctp:{r}")).collect();
        let child = PoolCollector {
            handle: POOL,
            database: &database,
            listener: Listener::Sctp(port),
            registrars: &registrars,
            priority,
            pool_keys: &format!("cookie_key = \"{KEY}\""),
        }
        .start(&dir.join(format!("c{i}.toml")));
        Self(child)
    }

    fn terminate(mut self) {
        Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .unwrap();
        let status = self.0.wait().unwrap();
        assert!(status.success(), "collector exited with {status}");
    }
}

fn exporter(dir: &Path, registrars: &[SocketAddr]) -> Child {
    let config = dir.join("exporter.toml");
    let list: Vec<String> = registrars.iter().map(|r| format!("\"sctp:{r}\"")).collect();
    std::fs::write(
        &config,
        format!(
            r#"exporter_id = 7
pool_handle = "{POOL}"
registrars = [{list}]
state_file = "{state}"
[buffer]
spill_dir = "{spill}"
[timers]
cookie_timeout_ms = 1000
failback_check_ms = 200
drain_timeout_ms = 5000
retry_interval_ms = 200
failback_holdoff_ms = 500
connect_timeout_ms = 1000
cache_lifetime_ms = 500
registrar_request_timeout_ms = 500
"#,
            list = list.join(", "),
            state = dir.join("exporter.state").display(),
            spill = dir.join("spill").display(),
        ),
    )
    .unwrap();
    Command::new(workspace_bin("exporter"))
        .args(["stream", "--config"])
        .arg(&config)
        .args(["--records", &RECORDS.to_string()])
        .args(["--rate", &RATE.to_string()])
        .args(["--exit-drain-timeout-secs", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn status(address: SocketAddr) -> Option<Status> {
    fetch_status(address).await.ok()
}

/// Home registrar of the PE whose user transport names `port`, if the
/// registrar at `address` can resolve it.
fn home_of(status: &Status, port: u16) -> Option<u32> {
    let suffix = format!(":{port}");
    status
        .pools
        .iter()
        .filter(|pool| pool.handle == POOL)
        .flat_map(|pool| &pool.elements)
        .find(|pe| pe.user_transport.contains(&suffix))
        .map(|pe| pe.home_registrar)
}

fn handlespace_checksum(status: &Status) -> u16 {
    status
        .enrp
        .as_ref()
        .expect("ENRP status")
        .handlespace_checksum
}

/// Polls until `done` holds for the statuses of `addresses`, or panics.
async fn wait_for(
    what: &str,
    addresses: &[SocketAddr],
    within: Duration,
    done: impl Fn(&[Status]) -> bool,
) -> Vec<Status> {
    let deadline = Instant::now() + within;
    loop {
        let mut statuses = Vec::new();
        for &address in addresses {
            if let Some(s) = status(address).await {
                statuses.push(s);
            }
        }
        if statuses.len() == addresses.len() && done(&statuses) {
            return statuses;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {statuses:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrar_sigkill_under_a_running_exporter_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut registrars: Vec<RegistrarProcess> = (1..=3)
        .map(|server_id| RegistrarProcess {
            server_id,
            asap: SocketAddr::from(([127, 0, 0, 1], free_udp_port())),
            enrp: SocketAddr::from(([127, 0, 0, 1], free_udp_port())),
            status: SocketAddr::from(([127, 0, 0, 1], free_tcp_port())),
            child: None,
        })
        .collect();
    let enrp: Vec<SocketAddr> = registrars.iter().map(|r| r.enrp).collect();
    for (i, registrar) in registrars.iter_mut().enumerate() {
        let peers: Vec<SocketAddr> = enrp
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, a)| *a)
            .collect();
        registrar.start(dir.path(), &peers);
    }
    let asap: Vec<SocketAddr> = registrars.iter().map(|r| r.asap).collect();
    let status_of: Vec<SocketAddr> = registrars.iter().map(|r| r.status).collect();

    // The primary's home is registrar 1 (the one to die), the backup's 2.
    let ports = [free_udp_port(), free_udp_port()];
    let primary = Collector::start(dir.path(), 0, ports[0], 100, &[asap[0], asap[1], asap[2]]);
    let backup = Collector::start(dir.path(), 1, ports[1], 10, &[asap[1], asap[2], asap[0]]);
    wait_for(
        "both PEs at every registrar with their first-choice homes",
        &status_of,
        Duration::from_secs(10),
        |all| {
            all.iter()
                .all(|s| home_of(s, ports[0]) == Some(1) && home_of(s, ports[1]) == Some(2))
        },
    )
    .await;

    let exporter = exporter(dir.path(), &asap);
    // The registrar dies mid-stream, once the primary has stored a part.
    wait_stored(&[dir.path().join("c0.sqlite")], 7, 3 * RATE / 2).await;
    registrars[0].kill();
    let killed_at = Instant::now();

    // From the kill until the exporter is done, the survivors must always
    // resolve the primary (the exporter's failback check depends on it).
    let survivors = [status_of[1], status_of[2]];
    let mut samples = 0;
    let mut exporter = exporter;
    let exporter_deadline = Instant::now() + Duration::from_secs(30);
    while exporter.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < exporter_deadline,
            "exporter did not finish"
        );
        for address in survivors {
            if let Some(s) = status(address).await {
                assert!(
                    home_of(&s, ports[0]).is_some(),
                    "primary PE not resolvable at {address} {:?} after the kill: {s:#?}",
                    killed_at.elapsed()
                );
                samples += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(samples >= 4, "too few status samples ({samples})");
    let out = exporter.wait_with_output().unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "exporter failed: {log}");

    // The primary ends up homed at a survivor, the same one at both.
    let settled = wait_for(
        "the primary homed at a survivor, same handlespace at both",
        &survivors,
        Duration::from_secs(10),
        |all| {
            let homes: Vec<Option<u32>> = all.iter().map(|s| home_of(s, ports[0])).collect();
            homes[0].is_some_and(|h| h != 1)
                && homes[0] == homes[1]
                && handlespace_checksum(&all[0]) == handlespace_checksum(&all[1])
        },
    )
    .await;
    let takeovers: u64 = settled
        .iter()
        .map(|s| s.enrp.as_ref().unwrap().counters.takeovers)
        .sum();
    for status in &settled {
        let rejected = &status.enrp.as_ref().unwrap().counters.auth_rejected;
        assert!(rejected.is_empty(), "signed ENRP refused: {rejected:?}");
    }
    // Who moves the primary: usually the PE itself, at once, because its
    // registration association ends on the killed registrar's ICMP port
    // unreachable (transport/README.md) and it hunts for a new home; or a
    // survivor's takeover, when the ENRP timers come first. Never two.
    assert!(
        takeovers <= 1,
        "at most one survivor took over: {settled:#?}"
    );

    // The killed registrar comes back and resynchronizes.
    registrars[0].start(dir.path(), &[enrp[1], enrp[2]]);
    let synced = wait_for(
        "the restarted registrar at the survivors' handlespace checksum",
        &status_of,
        Duration::from_secs(10),
        |all| {
            let sums: Vec<u16> = all.iter().map(handlespace_checksum).collect();
            all.iter().all(|s| s.element_count == 2) && sums.iter().all(|&c| c == sums[0])
        },
    )
    .await;
    assert_eq!(home_of(&synced[0], ports[1]), Some(2));
    assert_ne!(
        home_of(&synced[0], ports[0]),
        Some(1),
        "nobody re-homed the primary at the restarted registrar"
    );

    // The primary still believes in its dead home (asap-client PEs cannot
    // be sent the Home Keep Alive yet, see registrar/src/enrp/mod.rs), so a
    // SIGTERM would wait out T3-deregistration there; everything it stored
    // is committed (the exporter got cookies for all of it).
    drop(primary);
    backup.terminate();
    let report = collector::audit::run(&AuditOptions {
        databases: vec![dir.path().join("c0.sqlite"), dir.path().join("c1.sqlite")],
        exporter: None,
        domain: None,
        list_limit: 100,
        progress: false,
        ..AuditOptions::default()
    })
    .unwrap();
    let totals = &report.totals;
    assert_eq!(report.verdict, Verdict::Pass, "{:?}", report.failures);
    assert_eq!(totals.records_present, RECORDS, "every record present");
    assert_eq!(totals.missing_records, 0);
    assert_eq!(totals.conflicting_sequences, 0);
}
