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
    config.timers.keep_alive_period = Duration::from_millis(60_000);
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
    enrp.peer_heartbeat_cycle = Duration::from_millis(200);
    enrp.max_time_last_heard = Duration::from_millis(600);
    enrp.max_time_no_response = Duration::from_millis(300);
    enrp.takeover_expiry = Duration::from_millis(300);
    enrp.adopted_pe_grace = Duration::from_millis(30_000);
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
                membership: None,
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

const POOL_KEY: &str = "the registrar pool's ENRP key";

fn keyed_config(index: usize, ports: &[u16], kind: &str, key: Option<&str>) -> RegistrarConfig {
    let mut config = config(index, ports, kind);
    config.enrp.auth_key = key.unwrap_or_default().into();
    config
}

async fn three_registrars_take_over_and_resynchronize(kind: &str) {
    three_registrars_take_over_and_resynchronize_with(kind, None).await;
}

async fn three_registrars_take_over_and_resynchronize_with(kind: &str, key: Option<&str>) {
    let config = |index: usize, ports: &[u16], kind: &str| keyed_config(index, ports, kind, key);
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
    for status in &statuses {
        let counters = &status.enrp.as_ref().unwrap().counters;
        // Only a restart's leftovers may fail: none when unkeyed.
        if key.is_none() {
            assert!(counters.auth_rejected.is_empty());
        }
        assert!(
            !counters.auth_rejected.contains_key("bad_mac"),
            "{counters:?}"
        );
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_keyed_registrars_over_sctp_over_udp() {
    three_registrars_take_over_and_resynchronize_with("sctp-over-udp", Some(POOL_KEY)).await;
}

/// Two keyed registrars and an unkeyed one that lists them as peers: the
/// keyed ones drop everything it sends (counted as unsigned) and keep it
/// out of their handlespace, while still synchronizing with each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unkeyed_intruder_is_kept_out_of_a_keyed_pool() {
    let kind = "tcp";
    let ports: Vec<u16> = (0..3).map(|_| free_port(kind)).collect();
    let keyed_a = Registrar::start(keyed_config(0, &ports, kind, Some(POOL_KEY)), None)
        .await
        .unwrap();
    let keyed_b = Registrar::start(keyed_config(1, &ports, kind, Some(POOL_KEY)), None)
        .await
        .unwrap();
    let intruder = Registrar::start(keyed_config(2, &ports, kind, None), None)
        .await
        .unwrap();
    let mut pe_a = Client::connect(&keyed_a).await;
    pe_a.register(1).await;
    let mut pe_intruder = Client::connect(&intruder).await;
    pe_intruder.register(66).await;
    let statuses = wait_converged(&[&keyed_a, &keyed_b], 1, Duration::from_secs(10)).await;
    // Give the intruder a few heartbeat cycles to try.
    tokio::time::sleep(Duration::from_millis(800)).await;
    for registrar in [&keyed_a, &keyed_b] {
        let status = registrar.status().await.unwrap();
        let enrp = status.enrp.as_ref().unwrap();
        assert_eq!(status.element_count, 1, "only PE 1: {status:#?}");
        let alive: Vec<u32> = enrp
            .peers
            .iter()
            .filter(|p| p.state != "dead")
            .map(|p| p.server_id)
            .collect();
        assert!(
            !alive.contains(&0x1002),
            "the intruder is no peer: {alive:?}"
        );
        assert!(
            enrp.counters
                .auth_rejected
                .get("unsigned")
                .copied()
                .unwrap_or(0)
                > 0,
            "{:?}",
            enrp.counters
        );
    }
    assert_eq!(checksum(&statuses[0]), checksum(&statuses[1]));
    drop((pe_a, pe_intruder));
    for registrar in [keyed_a, keyed_b, intruder] {
        registrar.stop().await;
    }
}

/// RFC 5353 takeover with real IO: a PE that registered with an ASAP
/// transport (a listener of its own) is sent the Endpoint Keep Alive with
/// the Home flag by the registrar that took it over, over an association
/// that registrar opens; the PE's Keep Alive Ack on it makes the PE an
/// ordinary, supervised PE of its new home.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_reaches_the_adopted_pe_with_a_home_keep_alive() {
    let kind = "tcp";
    let ports: Vec<u16> = (0..2).map(|_| free_port(kind)).collect();
    let old_home = Registrar::start(keyed_config(0, &ports, kind, Some(POOL_KEY)), None)
        .await
        .unwrap();
    let new_home = Registrar::start(keyed_config(1, &ports, kind, Some(POOL_KEY)), None)
        .await
        .unwrap();
    // The PE's ASAP endpoint.
    let mut asap_endpoint = transport::Endpoint::bind(
        transport::Config {
            transport: transport::TransportKind::Tcp,
            ..transport::Config::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let asap_addr = asap_endpoint.local_addr();
    let mut registration = Client::connect(&old_home).await;
    let reply = registration
        .request(Message::Registration {
            pool_handle: POOL.into(),
            pool_element: PoolElement {
                asap_transport: Some(TransportAddress {
                    kind: TransportKind::Tcp(TransportUse::DataOnly),
                    port: asap_addr.port(),
                    addresses: vec![asap_addr.ip()],
                }),
                ..pe(9)
            },
            membership: None,
        })
        .await;
    assert!(matches!(
        reply,
        Message::RegistrationResponse { reject: false, .. }
    ));
    wait_converged(&[&old_home, &new_home], 1, Duration::from_secs(10)).await;

    old_home.stop().await;
    let mut from_new_home = tokio::time::timeout(Duration::from_secs(10), asap_endpoint.accept())
        .await
        .expect("the new home connects to the PE's ASAP transport")
        .unwrap();
    let keep_alive = loop {
        match tokio::time::timeout(Duration::from_secs(5), from_new_home.recv())
            .await
            .expect("a message in time")
        {
            Some(Event::Message(message)) => break Message::decode(&message.payload).unwrap(),
            Some(Event::Up | Event::Restarted) => continue,
            other => panic!("association ended: {other:?}"),
        }
    };
    assert_eq!(
        keep_alive,
        Message::EndpointKeepAlive {
            home: true,
            server_identifier: 0x1001,
            pool_handle: POOL.into(),
            pe_identifier: Some(9),
        }
    );
    let ack = Message::EndpointKeepAliveAck {
        pool_handle: POOL.into(),
        pe_identifier: 9,
    };
    from_new_home
        .send(transport::Message::new(0, ASAP_SCTP_PPID, ack.to_bytes()))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = new_home.status().await.unwrap();
        let element = &status.pools[0].elements[0];
        assert_eq!(element.home_registrar, 0x1001);
        let enrp = status.enrp.as_ref().unwrap();
        assert_eq!(enrp.counters.home_keep_alives, 1);
        if !registrar::handlespace::is_peer_owner(element.owner_association)
            && !element.awaiting_keep_alive_ack
        {
            assert_eq!(status.counters.keep_alive_acks, 1);
            break;
        }
        assert!(Instant::now() < deadline, "ack not taken: {element:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop((registration, from_new_home));
    new_home.stop().await;
}
