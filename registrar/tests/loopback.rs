//! End-to-end tests on loopback: the in-process driver over TCP and over
//! SCTP-over-UDP (transport crate), the protocol codec as the client, and the
//! real binary for `registrar dump` and `registrar run` + SIGTERM.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use policies::PolicyParams;
use protocol::rserpool::asap::Message;
use protocol::rserpool::params::cause_code;
use protocol::rserpool::{
    ASAP_SCTP_PPID, PoolElement, TransportAddress, TransportKind, TransportUse,
};
use registrar::Registrar;
use registrar::config::RegistrarConfig;
use registrar::server::selection_policy;
use transport::{Association, Event};

fn test_config() -> RegistrarConfig {
    let mut config = RegistrarConfig {
        server_id: 0x0bad_cafe,
        ..RegistrarConfig::default()
    };
    config.listen.tcp = "127.0.0.1:0".into();
    config.listen.sctp_over_udp = "127.0.0.1:0".into();
    config.listen.status = "127.0.0.1:0".into();
    config
}

fn pe(id: u32, params: PolicyParams, port: u16) -> PoolElement {
    PoolElement {
        pe_identifier: id,
        home_enrp_server_identifier: 0,
        registration_life: -1,
        user_transport: TransportAddress {
            kind: TransportKind::Tcp(TransportUse::DataPlusControl),
            port,
            addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        },
        policy: selection_policy(&params),
        asap_transport: None,
    }
}

struct Client {
    association: Association,
}

impl Client {
    async fn connect(registrar: &Registrar, kind: transport::TransportKind) -> Self {
        let (address, sctp_port) = match kind {
            transport::TransportKind::Tcp => (registrar.tcp_addr.unwrap(), 0),
            _ => (
                registrar.sctp_over_udp_addr.unwrap(),
                protocol::rserpool::ASAP_PORT,
            ),
        };
        let config = transport::Config {
            transport: kind,
            sctp_port,
            ..transport::Config::fast_failure_detection(kind)
        };
        let association = transport::connect(config, address).await.expect("connect");
        Self { association }
    }

    async fn send(&self, message: &Message) {
        self.send_raw(message.to_bytes()).await;
    }

    async fn send_raw(&self, bytes: Vec<u8>) {
        self.association
            .send(transport::Message::new(0, ASAP_SCTP_PPID, bytes))
            .await
            .expect("send");
    }

    /// Next ASAP message, or `None` after `wait`.
    async fn recv(&mut self, wait: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let event = tokio::time::timeout_at(deadline, self.association.recv())
                .await
                .ok()??;
            match event {
                Event::Message(message) => {
                    assert_eq!(message.ppid, ASAP_SCTP_PPID);
                    return Some(
                        Message::decode(&message.payload).expect("registrar sends valid ASAP"),
                    );
                }
                Event::Up | Event::Restarted => continue,
                Event::Down(_) | Event::Failed(_) => return None,
            }
        }
    }

    /// Next message that is not an Endpoint Keep Alive.
    async fn reply(&mut self) -> Message {
        loop {
            match self
                .recv(Duration::from_secs(5))
                .await
                .expect("reply expected")
            {
                Message::EndpointKeepAlive { .. } => continue,
                other => return other,
            }
        }
    }

    async fn register(&mut self, handle: &str, element: PoolElement) -> Message {
        self.send(&Message::Registration {
            pool_handle: handle.into(),
            pool_element: element,
            membership: None,
        })
        .await;
        self.reply().await
    }

    async fn resolve(&mut self, handle: &str) -> Vec<u32> {
        self.send(&Message::HandleResolution {
            pool_handle: handle.into(),
            items: Some(u32::MAX),
        })
        .await;
        match self.reply().await {
            Message::HandleResolutionResponse { pool_elements, .. } => {
                pool_elements.iter().map(|pe| pe.pe_identifier).collect()
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn assert_registered(response: &Message) {
    assert!(
        matches!(
            response,
            Message::RegistrationResponse {
                reject: false,
                error: None,
                ..
            }
        ),
        "registration failed: {response:?}"
    );
}

async fn register_and_resolve_over(kind: transport::TransportKind) {
    let registrar = Registrar::start(test_config(), None).await.unwrap();
    let mut pe_client = Client::connect(&registrar, kind).await;
    for (id, priority) in [(1, 5), (2, 50), (3, 20)] {
        assert_registered(
            &pe_client
                .register("ipfix", pe(id, PolicyParams::Priority { priority }, 4739))
                .await,
        );
    }
    let mut pu = Client::connect(&registrar, kind).await;
    assert_eq!(pu.resolve("ipfix").await, vec![2, 3, 1], "priority order");
    pu.send(&Message::HandleResolution {
        pool_handle: "unknown".into(),
        items: None,
    })
    .await;
    match pu.reply().await {
        Message::HandleResolutionResponse {
            reject: true,
            error: Some(error),
            ..
        } => {
            assert_eq!(error.causes[0].code, cause_code::UNKNOWN_POOL_HANDLE)
        }
        other => panic!("{other:?}"),
    }
    // Deregistration over the same association.
    pe_client
        .send(&Message::Deregistration {
            pool_handle: "ipfix".into(),
            pe_identifier: 2,
            membership: None,
        })
        .await;
    assert!(matches!(
        pe_client.reply().await,
        Message::DeregistrationResponse {
            error: None,
            pe_identifier: 2,
            ..
        }
    ));
    assert_eq!(pu.resolve("ipfix").await, vec![3, 1]);
    let status = registrar.status().await.unwrap();
    assert_eq!(status.element_count, 2);
    assert_eq!(status.server_id, 0x0bad_cafe);
    // A PE whose association closes is removed.
    drop(pe_client);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pu.resolve("ipfix").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "PEs of a closed association were not removed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    registrar.stop().await;
}

#[tokio::test]
async fn registration_and_resolution_over_tcp() {
    register_and_resolve_over(transport::TransportKind::Tcp).await;
}

#[tokio::test]
async fn registration_and_resolution_over_sctp_over_udp() {
    register_and_resolve_over(transport::TransportKind::SctpOverUdp).await;
}

/// A PE that stops answering keep-alives (hung or killed without its
/// association noticing) is gone within keep-alive period + timeout, while a
/// PE that answers stays.
async fn silent_pe_removed_within_keep_alive_time(kind: transport::TransportKind) {
    let mut config = test_config();
    config.timers.keep_alive_period = Duration::from_millis(200);
    config.timers.keep_alive_timeout = Duration::from_millis(150);
    let registrar = Registrar::start(config, None).await.unwrap();

    let mut silent = Client::connect(&registrar, kind).await;
    assert_registered(
        &silent
            .register("pool", pe(1, PolicyParams::RoundRobin, 1))
            .await,
    );
    let registered = Instant::now();
    let mut alive = Client::connect(&registrar, kind).await;
    assert_registered(
        &alive
            .register("pool", pe(2, PolicyParams::RoundRobin, 2))
            .await,
    );
    // The live PE answers every keep-alive.
    let responder = tokio::spawn(async move {
        while let Some(message) = alive.recv(Duration::from_secs(10)).await {
            if let Message::EndpointKeepAlive {
                pool_handle,
                pe_identifier,
                ..
            } = message
            {
                alive
                    .send(&Message::EndpointKeepAliveAck {
                        pool_handle,
                        pe_identifier: pe_identifier.unwrap(),
                    })
                    .await;
            }
        }
    });

    let mut pu = Client::connect(&registrar, kind).await;
    loop {
        let members = pu.resolve("pool").await;
        assert!(members.contains(&2), "the answering PE must stay");
        if !members.contains(&1) {
            break;
        }
        assert!(
            registered.elapsed() < Duration::from_millis(350 + 400),
            "silent PE not removed in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let removed_after = registered.elapsed();
    assert!(
        removed_after >= Duration::from_millis(340),
        "removed too early: {removed_after:?}"
    );
    // The silent PE saw a keep-alive, then its association was closed.
    assert!(matches!(
        silent.recv(Duration::from_secs(2)).await,
        Some(Message::EndpointKeepAlive {
            pe_identifier: Some(1),
            ..
        })
    ));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(pu.resolve("pool").await, vec![2]);
    let status = registrar.status().await.unwrap();
    assert_eq!(status.counters.keep_alive_failures, 1);
    responder.abort();
    registrar.stop().await;
}

#[tokio::test]
async fn keep_alive_timeout_removes_silent_pe_over_tcp() {
    silent_pe_removed_within_keep_alive_time(transport::TransportKind::Tcp).await;
}

#[tokio::test]
async fn keep_alive_timeout_removes_silent_pe_over_sctp_over_udp() {
    silent_pe_removed_within_keep_alive_time(transport::TransportKind::SctpOverUdp).await;
}

#[tokio::test]
async fn malformed_and_oversized_messages_get_errors_and_the_registrar_keeps_serving() {
    let registrar = Registrar::start(test_config(), None).await.unwrap();
    for kind in [
        transport::TransportKind::Tcp,
        transport::TransportKind::SctpOverUdp,
    ] {
        let mut attacker = Client::connect(&registrar, kind).await;
        for (bytes, code) in [
            (vec![0xff, 0xff, 0xff], cause_code::INVALID_VALUES),
            (vec![0x42, 0, 0, 4], cause_code::UNRECOGNIZED_MESSAGE),
            (
                vec![0x01, 0, 0xff, 0xff, 1, 2, 3, 4],
                cause_code::INVALID_VALUES,
            ),
            (vec![0x01; 70_000], cause_code::INVALID_VALUES),
        ] {
            attacker.send_raw(bytes).await;
            match attacker.reply().await {
                Message::Error { error } => assert_eq!(error.causes[0].code, code),
                other => panic!("{other:?}"),
            }
        }
        // Another client is served normally.
        let mut good = Client::connect(&registrar, kind).await;
        assert_registered(
            &good
                .register("ok", pe(9, PolicyParams::RoundRobin, 9))
                .await,
        );
        assert_eq!(good.resolve("ok").await, vec![9]);
        // The attacker is still served too.
        assert_eq!(attacker.resolve("ok").await, vec![9]);
        good.send(&Message::Deregistration {
            pool_handle: "ok".into(),
            pe_identifier: 9,
            membership: None,
        })
        .await;
        good.reply().await;
    }
    let status = registrar.status().await.unwrap();
    assert_eq!(status.counters.malformed["too_large"], 2);
    assert_eq!(status.counters.malformed["unknown_message_type"], 2);
    registrar.stop().await;
}

#[tokio::test]
async fn registration_flood_from_one_peer_is_limited() {
    let mut config = test_config();
    config.limits.registration_burst = 10;
    config.limits.registrations_per_second = 5.0;
    config.limits.max_pool_elements_per_association = 1000;
    let registrar = Registrar::start(config, None).await.unwrap();
    let mut flooder = Client::connect(&registrar, transport::TransportKind::Tcp).await;
    let started = Instant::now();
    for id in 0..200 {
        flooder
            .send(&Message::Registration {
                pool_handle: "flood".into(),
                pool_element: pe(id, PolicyParams::RoundRobin, 1),
                membership: None,
            })
            .await;
    }
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..200 {
        match flooder.reply().await {
            Message::RegistrationResponse { reject: false, .. } => accepted += 1,
            Message::RegistrationResponse {
                reject: true,
                error: Some(error),
                ..
            } => {
                assert_eq!(error.causes[0].code, cause_code::REJECTED_DUE_TO_SECURITY);
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    let allowed = 10 + (started.elapsed().as_secs_f64() * 5.0).ceil() as usize;
    assert!(
        accepted >= 10 && accepted <= allowed,
        "accepted {accepted}, allowed {allowed}"
    );
    assert_eq!(accepted + refused, 200);
    // Others still get in.
    let mut other = Client::connect(&registrar, transport::TransportKind::Tcp).await;
    assert_registered(
        &other
            .register("flood", pe(10_000, PolicyParams::RoundRobin, 2))
            .await,
    );
    registrar.stop().await;
}

#[tokio::test]
async fn dump_command_lists_pools_and_pes() {
    let registrar = Registrar::start(test_config(), None).await.unwrap();
    let mut client = Client::connect(&registrar, transport::TransportKind::Tcp).await;
    assert_registered(
        &client
            .register(
                "dump-me",
                pe(0xabcd, PolicyParams::Priority { priority: 3 }, 4739),
            )
            .await,
    );
    let status = registrar.status_addr.unwrap().to_string();
    let binary = env!("CARGO_BIN_EXE_registrar");
    let output = tokio::process::Command::new(binary)
        .args(["dump", "--status", &status, "--json"])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let parsed: registrar::Status = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(parsed.pools.len(), 1);
    assert_eq!(parsed.pools[0].handle, "dump-me");
    assert_eq!(parsed.pools[0].policy, "Priority");
    assert_eq!(parsed.pools[0].elements[0].id, 0xabcd);

    let output = tokio::process::Command::new(binary)
        .args(["dump", "--status", &status])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("pool \"dump-me\""), "{text}");
    assert!(text.contains("PE 0x0000abcd"), "{text}");
    assert!(text.contains("tcp 127.0.0.1:4739"), "{text}");
    registrar.stop().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn binary_runs_from_a_config_file_and_stops_on_sigterm() {
    let (asap, status) = (free_port(), free_port());
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("registrar.toml");
    std::fs::write(
        &path,
        format!(
            "server_id = 77\n[listen]\ntcp = \"127.0.0.1:{asap}\"\nsctp_over_udp = \"\"\nstatus = \"127.0.0.1:{status}\"\n[timers]\nkeep_alive_period = \"250ms\"\n"
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_registrar"))
        .args([
            "run",
            "--config",
            path.to_str().unwrap(),
            "--keep-alive-timeout",
            "300ms",
        ])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let status_addr: SocketAddr = format!("127.0.0.1:{status}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let snapshot = loop {
        if let Ok(snapshot) = registrar::driver::fetch_status(status_addr).await {
            break snapshot;
        }
        assert!(Instant::now() < deadline, "registrar did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(snapshot.server_id, 77);
    // Prometheus metrics are served on the same port.
    let mut stream = tokio::net::TcpStream::connect(status_addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with("HTTP/1.0 200"), "{body}");
    // Published from the core's counters at the scrape: present (at their
    // values, zero here) before anything happened.
    for series in [
        format!(
            "poolflow_registrar_pool_elements {}",
            snapshot.element_count
        ),
        "poolflow_registrar_registrations_total{result=\"new\"} 0".to_string(),
        "poolflow_registrar_handle_resolutions_total{result=\"unknown_pool\"} 0".to_string(),
        "poolflow_registrar_keepalives_sent_total 0".to_string(),
    ] {
        assert!(
            body.lines().any(|line| line == series),
            "{series} in {body}"
        );
    }
    // Bad requests get an HTTP error, and the endpoint keeps serving.
    async fn exchange(to: SocketAddr, request: &[u8]) -> String {
        let mut stream = tokio::net::TcpStream::connect(to).await.unwrap();
        let _ = stream.write_all(request).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("the endpoint answers or closes");
        String::from_utf8_lossy(&answer).into_owned()
    }
    let unknown = exchange(status_addr, b"GET /nothing HTTP/1.1\r\nHost: r\r\n\r\n").await;
    assert!(unknown.starts_with("HTTP/1.1 404"), "{unknown}");
    let garbage = exchange(status_addr, b"\x16\x03\x01 not http at all\r\n\r\n").await;
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    let huge = format!(
        "GET /status HTTP/1.1\r\nX: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let huge = exchange(status_addr, huge.as_bytes()).await;
    assert!(
        huge.starts_with("HTTP/1.1 431"),
        "an oversized head is refused: {huge}"
    );
    assert_eq!(
        registrar::driver::fetch_status(status_addr)
            .await
            .unwrap()
            .server_id,
        77
    );

    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("no exit after SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}
