//! The tokio driver talking ENRP the way RSPLIB needs it, over SCTP over UDP on
//! loopback: a requester that listens nowhere (RSPLIB's `hsdump`) gets its answers on
//! its own association, and our outbound ENRP associations leave from the ENRP port we
//! advertise. Every wait is bounded.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use protocol::rserpool::enrp::{Body, Message};
use protocol::rserpool::{
    ENRP_SCTP_PPID, ServerInformation, TransportAddress, TransportKind, TransportUse,
};
use registrar::Registrar;
use registrar::config::RegistrarConfig;
use transport::{Association, Endpoint, Event};

const STEP: Duration = Duration::from_secs(20);

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(enrp_port: u16, peers: Vec<String>) -> RegistrarConfig {
    let mut config = RegistrarConfig {
        server_id: 0x5151_0001,
        ..RegistrarConfig::default()
    };
    config.listen.tcp = "127.0.0.1:0".into();
    config.listen.sctp_over_udp = String::new();
    config.listen.status = String::new();
    config.transport.fast_failure_detection = true;
    config.enrp.enabled = true;
    config.enrp.transport = "sctp-over-udp".into();
    config.enrp.listen = format!("127.0.0.1:{enrp_port}");
    config.enrp.peers = peers;
    config.enrp.peer_heartbeat_cycle = Duration::from_millis(200);
    config.enrp.connect_from_listen_port = true;
    config
}

fn transport_config() -> transport::Config {
    transport::Config::fast_failure_detection(transport::TransportKind::SctpOverUdp)
}

async fn next_enrp(association: &mut Association) -> Message {
    loop {
        match tokio::time::timeout(STEP, association.recv()).await {
            Ok(Some(Event::Message(message))) => {
                return Message::decode(&message.payload).expect("well-formed ENRP");
            }
            Ok(Some(Event::Up | Event::Restarted)) => {}
            other => panic!("expected an ENRP message, got {other:?}"),
        }
    }
}

/// `hsdump`'s exchange: Presence (reply required, Server Information naming a port where
/// nothing listens) and List Request from an ephemeral socket; both answers come back on
/// that association.
#[tokio::test]
async fn requests_from_a_peer_that_listens_nowhere_are_answered_on_its_association() {
    let registrar = Registrar::start(config(free_udp_port(), Vec::new()), None)
        .await
        .unwrap();
    let enrp = registrar.enrp_addr.unwrap();
    let to = transport::Config {
        sctp_port: enrp.port(),
        ..transport_config()
    };
    let mut hsdump = tokio::time::timeout(STEP, transport::connect(to, enrp))
        .await
        .unwrap()
        .unwrap();
    let sender = 0x0bad_cafe;
    let presence = Message {
        sender_server_id: sender,
        receiver_server_id: 0,
        body: Body::Presence {
            reply_required: true,
            pe_checksum: 0,
            server_information: Some(ServerInformation {
                server_identifier: sender,
                transport: TransportAddress {
                    kind: TransportKind::Sctp(TransportUse::DataOnly),
                    port: free_udp_port(),
                    addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
                },
            }),
        },
    };
    let list = Message {
        sender_server_id: sender,
        receiver_server_id: 0,
        body: Body::ListRequest,
    };
    for message in [presence, list] {
        hsdump
            .send(transport::Message::new(
                0,
                ENRP_SCTP_PPID,
                message.to_bytes(),
            ))
            .await
            .unwrap();
    }
    let mut got_presence = false;
    let mut got_list = false;
    while !(got_presence && got_list) {
        let message = next_enrp(&mut hsdump).await;
        assert_eq!(message.sender_server_id, 0x5151_0001);
        match message.body {
            Body::Presence { .. } => got_presence = true,
            Body::ListResponse { reject, servers } => {
                assert!(!reject);
                assert!(servers.iter().any(|s| s.server_identifier == 0x5151_0001));
                got_list = true;
            }
            _ => {}
        }
    }
    registrar.stop().await;
}

/// Our Presence to a configured peer comes from the ENRP port we listen on and advertise,
/// in both the UDP and the SCTP header (RSPLIB refuses a peer whose association comes from
/// anywhere else).
#[tokio::test]
async fn outbound_enrp_association_leaves_from_the_enrp_port() {
    let peer_port = free_udp_port();
    let mut peer = Endpoint::bind(
        transport::Config {
            sctp_port: peer_port,
            ..transport_config()
        },
        SocketAddr::from((Ipv4Addr::LOCALHOST, peer_port)),
    )
    .await
    .unwrap();
    let enrp_port = free_udp_port();
    let registrar = Registrar::start(
        config(enrp_port, vec![format!("127.0.0.1:{peer_port}")]),
        None,
    )
    .await
    .unwrap();
    let mut association = tokio::time::timeout(STEP, peer.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(association.remote_addr().port(), enrp_port);
    let message = next_enrp(&mut association).await;
    match message.body {
        Body::Presence {
            server_information: Some(info),
            ..
        } => assert_eq!(info.transport.port, enrp_port),
        other => panic!("expected a Presence first, got {other:?}"),
    }
    registrar.stop().await;
}

/// A peer whose UDP encapsulation port is not its SCTP port (RSPLIB on
/// sctplib: SCTP 9901 inside UDP 9899), configured `HOST:SCTP_PORT/udp=UDP_PORT`:
/// our INIT goes to that UDP port, for that SCTP port, and the Presence
/// follows. Without the `/udp=` the datagrams would go to UDP = SCTP port,
/// where nothing listens.
#[tokio::test]
async fn a_peer_with_its_own_udp_port_is_reached_there() {
    let udp_port = free_udp_port();
    let sctp_port = free_udp_port();
    let mut peer = Endpoint::bind(
        transport::Config {
            sctp_port,
            ..transport_config()
        },
        SocketAddr::from((Ipv4Addr::LOCALHOST, udp_port)),
    )
    .await
    .unwrap();
    let registrar = Registrar::start(
        config(
            free_udp_port(),
            vec![format!("127.0.0.1:{sctp_port}/udp={udp_port}")],
        ),
        None,
    )
    .await
    .unwrap();
    let mut association = tokio::time::timeout(STEP, peer.accept())
        .await
        .expect("the registrar reached the peer's UDP port")
        .unwrap();
    let message = next_enrp(&mut association).await;
    assert!(
        matches!(message.body, Body::Presence { .. }),
        "expected a Presence first, got {message:?}"
    );
    registrar.stop().await;
}
