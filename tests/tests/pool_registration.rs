//! RSerPool end to end: collector processes register as pool elements at a
//! registrar (ASAP over SCTP over UDP), a pool user resolves the pool and
//! sees them in priority order; SIGTERM deregisters a collector, SIGKILL
//! makes the registrar drop it after the keep-alive timeout.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use asap_client::driver::{PoolUserClient, PoolUserDriverConfig, RegistrarAddress};
use asap_client::pool_user::{PoolUserConfig, ResolutionError};
use policies::PolicyParams;
use poolflow_tests::workspace_bin;
use protocol::rserpool::params::PoolHandle;
use registrar::config::RegistrarConfig;
use registrar::driver::Registrar;

const POOL: &str = "billing-collectors";
const KEEP_ALIVE_PERIOD_MS: u64 = 200;
const KEEP_ALIVE_TIMEOUT_MS: u64 = 300;

struct Collector {
    child: Child,
}

impl Collector {
    fn start(dir: &Path, name: &str, registrar: std::net::SocketAddr, priority: u32) -> Self {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"database = "{db}"
udp_listen = []
tcp_listen = []
sctp_listen = ["127.0.0.1:0"]

[pool]
handle = "{POOL}"
registrars = ["sctp:{registrar}"]
policy = "priority"
priority = {priority}
registration_lifetime_ms = 60000
reregistration_interval_ms = 20000
"#,
                db = dir.join(format!("{name}.sqlite")).display(),
            ),
        )
        .unwrap();
        let child = Command::new(workspace_bin("collector"))
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the collector");
        Self { child }
    }

    fn signal(&mut self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Priorities of the pool's elements as the registrar reports them, in
/// resolution order.
async fn resolve_priorities(pu: &mut PoolUserClient) -> Vec<u32> {
    match pu.refresh(&PoolHandle(POOL.as_bytes().to_vec())).await {
        Ok(elements) => {
            let mut priorities: Vec<u32> = elements
                .iter()
                .map(|e| match e.policy {
                    PolicyParams::Priority { priority } => priority,
                    other => panic!("unexpected policy {other:?}"),
                })
                .collect();
            priorities.sort_unstable_by(|a, b| b.cmp(a));
            priorities
        }
        // An empty pool is an answer (or the registrar refuses the handle
        // once its last element is gone); anything else, such as no
        // registrar answering, must not pass for "no elements".
        Err(e) => match e.downcast_ref::<ResolutionError>() {
            Some(ResolutionError::NoPoolElements | ResolutionError::Rejected { .. }) => Vec::new(),
            _ => panic!("resolution failed: {e:#}"),
        },
    }
}

async fn wait_for(pu: &mut PoolUserClient, expected: &[u32], within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = resolve_priorities(pu).await;
        if got == expected {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "pool never became {expected:?}; last {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collectors_register_resolve_by_priority_and_leave() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RegistrarConfig::default();
    config.listen.tcp = String::new();
    config.listen.sctp_over_udp = "127.0.0.1:0".into();
    config.listen.status = String::new();
    config.timers.keep_alive_period = Duration::from_millis(KEEP_ALIVE_PERIOD_MS);
    config.timers.keep_alive_timeout = Duration::from_millis(KEEP_ALIVE_TIMEOUT_MS);
    let registrar = Registrar::start(config, None).await.unwrap();
    let registrar_addr = registrar.sctp_over_udp_addr.unwrap();

    let mut primary = Collector::start(dir.path(), "primary", registrar_addr, 100);
    let mut backup = Collector::start(dir.path(), "backup", registrar_addr, 10);

    let mut pu = PoolUserClient::new(PoolUserDriverConfig {
        pool_user: PoolUserConfig::new(1),
        registrars: vec![RegistrarAddress::sctp_over_udp(registrar_addr)],
        transport: transport::Config::default(),
        announce_listen: None,
    })
    .unwrap();
    wait_for(&mut pu, &[100, 10], Duration::from_secs(20)).await;

    // The pool user's own selection puts the primary first.
    let handle = PoolHandle(POOL.as_bytes().to_vec());
    let first = pu.select(&handle, 1).await.unwrap();
    assert_eq!(first[0].policy, PolicyParams::Priority { priority: 100 });

    // SIGTERM: the backup deregisters before it exits, cleanly.
    backup.signal("-TERM");
    let exit = backup.child.wait().unwrap();
    assert!(exit.success(), "collector exited with {exit}");
    wait_for(&mut pu, &[100], Duration::from_secs(5)).await;

    // SIGKILL: no deregistration; the registrar's keep-alive timeout (or the
    // association's failure) removes the primary.
    primary.signal("-KILL");
    let removed_after = wait_for(&mut pu, &[], Duration::from_secs(10)).await;
    eprintln!("killed collector removed after {removed_after:?}");
    registrar.stop().await;
}
