//! Three real registrars (the tokio driver) peering over ENRP on loopback,
//! over TCP and over SCTP-over-UDP: PEs registered at each are resolvable
//! at all; a stopped registrar's PEs are taken over and stay resolvable; a
//! restarted registrar resynchronizes to an identical handlespace.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use policies::PolicyParams;
use protocol::rserpool::asap::Message;
use protocol::rserpool::{
    ASAP_SCTP_PPID, PoolElement, TransportAddress, TransportKind, TransportUse,
};
use registrar::Registrar;
use registrar::config::RegistrarConfig;
use registrar::server::{Status, selection_policy};
use transport::{Association, Event};

const POOL: &str = "ipfix";

fn free_port(kind: &str) -> u16 {
    if kind == "tcp" {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

fn config(index: usize, ports: &[u16], kind: &str) -> RegistrarConfig {
    let mut config = RegistrarConfig {
        server_id: 0x1000 + index as u32,
        ..RegistrarConfig::default()
    };
    config.listen.tcp = "127.0.0.1:0".into();
    config.listen.sctp_over_udp = String::new();
    config.listen.status = String::new();
    config.timers.keep_alive_period_ms = 60_000;
    config.transport.fast_failure_detection = true;
    let enrp = &mut config.enrp;
    enrp.enabled = true;
    enrp.transport = kind.into();
    enrp.listen = format!("127.0.0.1:{}", ports[index]);
    enrp.peers = ports
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, port)| format!("127.0.0.1:{port}"))
        .collect();
    enrp.peer_heartbeat_cycle_ms = 200;
    enrp.max_time_last_heard_ms = 600;
    enrp.max_time_no_response_ms = 300;
    enrp.takeover_expiry_ms = 300;
    enrp.adopted_pe_grace_ms = 30_000;
    config
}

fn pe(id: u32) -> PoolElement {
    PoolElement {
        pe_identifier: id,
        home_enrp_server_identifier: 0,
        registration_life: -1,
        user_transport: TransportAddress {
            kind: TransportKind::Tcp(TransportUse::DataPlusControl),
            port: 4739,
            addresses: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, id as u8))],
        },
        policy: selection_policy(&PolicyParams::RoundRobin),
        asap_transport: None,
    }
}

/// A minimal ASAP client over TCP (the PE and PU side).
struct Client(Association);

impl Client {
    async fn connect(registrar: &Registrar) -> Self {
        let config = transport::Config::fast_failure_detection(transport::TransportKind::Tcp);
        Self(
            transport::connect(config, registrar.tcp_addr.unwrap())
                .await
                .unwrap(),
        )
    }

    async fn request(&mut self, message: Message) -> Message {
        self.0
            .send(transport::Message::new(
                0,
                ASAP_SCTP_PPID,
                message.to_bytes(),
            ))
            .await
            .unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.0.recv())
                .await
                .expect("reply in time")
            {
                Some(Event::Message(reply)) => match Message::decode(&reply.payload).unwrap() {
                    Message::EndpointKeepAlive { .. } => continue,
                    other => return other,
                },
                Some(Event::Up | Event::Restarted) => continue,
                other => panic!("association ended: {other:?}"),
            }
        }
    }

    async fn register(&mut self, id: u32) {
        let reply = self
            .request(Message::Registration {
                pool_handle: POOL.into(),
                pool_element: pe(id),
            })
            .await;
        assert!(
            matches!(reply, Message::RegistrationResponse { reject: false, .. }),
            "{reply:?}"
        );
    }

    async fn resolve(&mut self) -> Vec<(u32, u32)> {
        let reply = self
            .request(Message::HandleResolution {
                pool_handle: POOL.into(),
                items: Some(100),
            })
            .await;
        let Message::HandleResolutionResponse { pool_elements, .. } = reply else {
            panic!("{reply:?}")
        };
        let mut found: Vec<(u32, u32)> = pool_elements
            .iter()
            .map(|pe| (pe.pe_identifier, pe.home_enrp_server_identifier))
            .collect();
        found.sort_unstable();
        found
    }
}

fn checksum(status: &Status) -> u16 {
    status.enrp.as_ref().unwrap().handlespace_checksum
}

/// Waits until every registrar's handlespace has `count` PEs and the same checksum.
async fn wait_converged(registrars: &[&Registrar], count: usize, within: Duration) -> Vec<Status> {
    let deadline = Instant::now() + within;
    loop {
        let mut statuses = Vec::new();
        for registrar in registrars {
            statuses.push(registrar.status().await.unwrap());
        }
        let converged = statuses.iter().all(|s| s.element_count == count)
            && statuses
                .windows(2)
                .all(|w| checksum(&w[0]) == checksum(&w[1]));
        if converged {
            return statuses;
        }
        assert!(
            Instant::now() < deadline,
            "no convergence: {:?}",
            statuses
                .iter()
                .map(|s| (s.server_id, s.element_count, checksum(s)))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn three_registrars_take_over_and_resynchronize(kind: &str) {
    let ports: Vec<u16> = (0..3).map(|_| free_port(kind)).collect();
    let mut registrars = Vec::new();
    for index in 0..3 {
        registrars.push(
            Registrar::start(config(index, &ports, kind), None)
                .await
                .unwrap(),
        );
    }
    let enrp_addresses: Vec<SocketAddr> = registrars.iter().map(|r| r.enrp_addr.unwrap()).collect();
    assert_eq!(enrp_addresses[0].port(), ports[0]);

    // One PE registered at each registrar.
    let mut pes = Vec::new();
    for (index, registrar) in registrars.iter().enumerate() {
        let mut client = Client::connect(registrar).await;
        client.register(index as u32 + 1).await;
        pes.push(client);
    }
    let all = [&registrars[0], &registrars[1], &registrars[2]];
    wait_converged(&all, 3, Duration::from_secs(10)).await;
    for registrar in &registrars {
        let mut pu = Client::connect(registrar).await;
        let found = pu.resolve().await;
        assert_eq!(
            found,
            vec![(1, 0x1000), (2, 0x1001), (3, 0x1002)],
            "resolvable everywhere with their homes"
        );
    }

    // Registrar 2 dies; its PE stays registered (it does not re-register).
    let dead = registrars.pop().unwrap();
    let stopped = Instant::now();
    dead.stop().await;
    let survivors = [&registrars[0], &registrars[1]];
    let taken_over = loop {
        let mut pu = Client::connect(&registrars[0]).await;
        let found = pu.resolve().await;
        if let Some(&(3, home)) = found.iter().find(|(id, _)| *id == 3)
            && home != 0x1002
        {
            break stopped.elapsed();
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "no takeover: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("{kind}: takeover {taken_over:?} after the registrar stopped");
    let statuses = wait_converged(&survivors, 3, Duration::from_secs(5)).await;
    let takeovers: u64 = statuses
        .iter()
        .map(|s| s.enrp.as_ref().unwrap().counters.takeovers)
        .sum();
    assert_eq!(takeovers, 1);
    for registrar in survivors {
        let mut pu = Client::connect(registrar).await;
        assert_eq!(pu.resolve().await.len(), 3, "adopted PE stays resolvable");
    }

    // It restarts with the same id and resynchronizes.
    let restarted = Registrar::start(config(2, &ports, kind), None)
        .await
        .unwrap();
    let all = [&registrars[0], &registrars[1], &restarted];
    let statuses = wait_converged(&all, 3, Duration::from_secs(10)).await;
    assert_eq!(checksum(&statuses[2]), checksum(&statuses[0]));
    let mut pu = Client::connect(&restarted).await;
    assert_eq!(pu.resolve().await.len(), 3);
    drop(pes);
    restarted.stop().await;
    for registrar in registrars {
        registrar.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_registrars_over_tcp() {
    three_registrars_take_over_and_resynchronize("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_registrars_over_sctp_over_udp() {
    three_registrars_take_over_and_resynchronize("sctp-over-udp").await;
}
