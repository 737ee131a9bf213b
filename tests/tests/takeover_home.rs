//! RFC 5353 takeover as the PE sees it, with real collector processes: two
//! registrars peered by ENRP, two collectors that know only registrar A
//! (so when A dies, no registrar of their own list is left to re-register
//! with). Collector "listening" registered an ASAP transport
//! (`[pool] asap_listen`); collector "silent" did not. A is stopped; B takes
//! both over. B reaches "listening" with the Home keep-alive and keeps
//! supervising it, so it stays in the handlespace long past the adoption
//! grace; "silent" cannot be reached (its ASAP Transport, filled in by A from
//! its association, is a socket that accepts nothing) and is dropped when the
//! grace ends.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use poolflow_tests::{child_log, free_tcp_port, workspace_bin};
use registrar::config::RegistrarConfig;
use registrar::driver::Registrar;
use registrar::server::Status;

const POOL: &str = "billing-collectors";
const LISTENING: u32 = 0x51;
const SILENT: u32 = 0x52;
const ADOPTION_GRACE_MS: u64 = 1_500;

fn registrar_config(index: usize, enrp_ports: &[u16]) -> RegistrarConfig {
    let mut config = RegistrarConfig {
        server_id: 0x1000 + index as u32,
        ..RegistrarConfig::default()
    };
    config.listen.tcp = "127.0.0.1:0".into();
    config.listen.sctp_over_udp = String::new();
    config.listen.status = String::new();
    // Real supervision: a PE that stops answering is gone within 500 ms.
    config.timers.keep_alive_period = Duration::from_millis(200);
    config.timers.keep_alive_timeout = Duration::from_millis(300);
    config.transport.fast_failure_detection = true;
    let enrp = &mut config.enrp;
    enrp.enabled = true;
    enrp.transport = "tcp".into();
    enrp.listen = format!("127.0.0.1:{}", enrp_ports[index]);
    enrp.peers = enrp_ports
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, port)| format!("127.0.0.1:{port}"))
        .collect();
    enrp.peer_heartbeat_cycle = Duration::from_millis(200);
    enrp.max_time_last_heard = Duration::from_millis(600);
    enrp.max_time_no_response = Duration::from_millis(300);
    enrp.takeover_expiry = Duration::from_millis(300);
    enrp.adopted_pe_grace = Duration::from_millis(ADOPTION_GRACE_MS);
    config
}

struct Collector(Child);

impl Collector {
    fn start(dir: &Path, pe_id: u32, registrar: SocketAddr, asap_listen: bool) -> Self {
        let config = dir.join(format!("c{pe_id}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"database = "{db}"
udp_listen = []
tcp_listen = []
sctp_listen = ["127.0.0.1:0"]

[pool]
handle = "{POOL}"
registrars = ["tcp:{registrar}"]
pe_identifier = {pe_id}
priority = 10
{asap_listen}
"#,
                db = dir.join(format!("c{pe_id}.sqlite")).display(),
                asap_listen = if asap_listen {
                    r#"asap_listen = "tcp:127.0.0.1:0""#
                } else {
                    ""
                },
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
        Self(child)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (PE id, home registrar) of every PE `registrar` lists.
fn elements(status: &Status) -> Vec<(u32, u32)> {
    status
        .pools
        .iter()
        .flat_map(|pool| pool.elements.iter().map(|e| (e.id, e.home_registrar)))
        .collect()
}

async fn wait_for(what: &str, within: Duration, registrar: &Registrar, want: &[(u32, u32)]) {
    let deadline = Instant::now() + within;
    loop {
        let mut got = elements(&registrar.status().await.unwrap());
        got.sort();
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {got:x?}, wanted {want:x?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_collector_with_an_asap_endpoint_outlives_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let enrp_ports = [free_tcp_port(), free_tcp_port()];
    let a = Registrar::start(registrar_config(0, &enrp_ports), None)
        .await
        .unwrap();
    let b = Registrar::start(registrar_config(1, &enrp_ports), None)
        .await
        .unwrap();
    let a_asap = a.tcp_addr.unwrap();
    let _listening = Collector::start(dir.path(), LISTENING, a_asap, true);
    let _silent = Collector::start(dir.path(), SILENT, a_asap, false);
    // Both registered at A and known at B through ENRP.
    let at_a = [(LISTENING, 0x1000), (SILENT, 0x1000)];
    wait_for("registered at A", Duration::from_secs(20), &a, &at_a).await;
    wait_for("synchronized to B", Duration::from_secs(10), &b, &at_a).await;

    a.stop().await;
    // B takes both over.
    wait_for(
        "taken over by B",
        Duration::from_secs(10),
        &b,
        &[(LISTENING, 0x1001), (SILENT, 0x1001)],
    )
    .await;
    // The grace ends for the one B cannot reach; the other stays.
    wait_for(
        "the unreachable adoptee dropped after the grace",
        Duration::from_millis(ADOPTION_GRACE_MS + 5_000),
        &b,
        &[(LISTENING, 0x1001)],
    )
    .await;
    let acks_before = b.status().await.unwrap().counters.keep_alive_acks;
    // Well past the grace: still there, and answering B's keep-alives (a
    // PE that stopped answering would be gone within 500 ms). B's own
    // count of answered keep-alives (one each 200 ms) is the clock.
    let past_grace = acks_before + (ADOPTION_GRACE_MS + 1_000) / 200;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = b.status().await.unwrap();
        if status.counters.keep_alive_acks >= past_grace {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "B's keep-alives to the adopted collector stopped: {} acks after {acks_before}",
            status.counters.keep_alive_acks
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(elements(&status), [(LISTENING, 0x1001)]);
    let enrp = status.enrp.as_ref().unwrap();
    // Since issue 13 every Pool Element sent over ENRP carries an ASAP Transport (RFC
    // 5353; RSPLIB refuses one without): A filled in where "silent" registers from. So B
    // tries the Home keep-alive on both; "silent"'s socket accepts no association, and
    // the grace drops it as before.
    assert_eq!(
        enrp.counters.home_keep_alives, 2,
        "a Home keep-alive tried for each adopted collector"
    );
    assert_eq!(
        enrp.counters.adopted_unreachable, 0,
        "none adopted without an ASAP transport"
    );
    assert!(
        status.counters.keep_alive_acks >= acks_before + 5,
        "B supervises the adopted collector: {} acks after {acks_before}",
        status.counters.keep_alive_acks
    );
    b.stop().await;
}
