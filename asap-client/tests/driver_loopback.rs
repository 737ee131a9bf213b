//! The tokio drivers against a minimal fake registrar on loopback, over the
//! `transport` crate and the `protocol` codec. Every wait is bounded.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asap_client::driver::PeStatus;
use asap_client::{
    PoolElementConfig, PoolElementDriverConfig, PoolUserClient, PoolUserConfig,
    PoolUserDriverConfig, RegistrarAddress, RegistrarTransport, spawn_pool_element,
};
use policies::PolicyParams;
use protocol::rserpool::asap::Message;
use protocol::rserpool::params::cause_code;
use protocol::rserpool::{
    ASAP_SCTP_PPID, ErrorCause, OperationError, PoolElement, PoolHandle, TransportAddress,
    TransportKind as WireTransport, TransportUse,
};
use transport::{Config, Endpoint, Event, TransportKind};

const STEP: Duration = Duration::from_secs(10);
const PE_ID: u32 = 0x1234_5678;

/// What the fake registrar saw.
#[derive(Default)]
struct Seen {
    handlespace: HashMap<u32, PoolElement>,
    keep_alive_acks: Vec<u32>,
    unreachable: Vec<u32>,
    deregistrations: Vec<u32>,
}

fn transport_config(kind: TransportKind) -> Config {
    Config::fast_failure_detection(kind)
}

/// Accepts associations and answers ASAP like a one-pool registrar: store
/// registrations (then probe with a Keep Alive), resolve, deregister.
async fn fake_registrar(kind: TransportKind) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let mut endpoint = Endpoint::bind(transport_config(kind), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = endpoint.local_addr();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let state = seen.clone();
    tokio::spawn(async move {
        while let Some(mut association) = endpoint.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                while let Some(event) = association.recv().await {
                    let Event::Message(message) = event else {
                        continue;
                    };
                    assert_eq!(message.ppid, ASAP_SCTP_PPID);
                    let request = Message::decode(&message.payload).expect("valid ASAP");
                    for reply in answer(&state, request) {
                        let reply = transport::Message::new(0, ASAP_SCTP_PPID, reply.to_bytes());
                        if association.send(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, seen)
}

fn answer(state: &Mutex<Seen>, request: Message) -> Vec<Message> {
    let mut seen = state.lock().unwrap();
    match request {
        Message::Registration {
            pool_handle,
            pool_element,
            membership: _,
        } => {
            let pe_identifier = pool_element.pe_identifier;
            seen.handlespace.insert(pe_identifier, pool_element);
            vec![
                Message::RegistrationResponse {
                    reject: false,
                    pool_handle: pool_handle.clone(),
                    pe_identifier,
                    error: None,
                },
                Message::EndpointKeepAlive {
                    home: false,
                    server_identifier: 42,
                    pool_handle,
                    pe_identifier: None,
                },
            ]
        }
        Message::EndpointKeepAliveAck { pe_identifier, .. } => {
            seen.keep_alive_acks.push(pe_identifier);
            Vec::new()
        }
        Message::HandleResolution { pool_handle, .. } => {
            let pool_elements: Vec<PoolElement> = seen.handlespace.values().cloned().collect();
            let empty = pool_elements.is_empty();
            vec![Message::HandleResolutionResponse {
                reject: empty,
                pool_handle,
                policy: None,
                pool_elements,
                error: empty.then(|| OperationError {
                    causes: vec![ErrorCause {
                        code: cause_code::UNKNOWN_POOL_HANDLE,
                        info: Vec::new(),
                    }],
                }),
            }]
        }
        Message::EndpointUnreachable { pe_identifier, .. } => {
            seen.unreachable.push(pe_identifier);
            Vec::new()
        }
        Message::Deregistration {
            pool_handle,
            pe_identifier,
            membership: _,
        } => {
            seen.handlespace.remove(&pe_identifier);
            seen.deregistrations.push(pe_identifier);
            vec![Message::DeregistrationResponse {
                pool_handle,
                pe_identifier,
                error: None,
            }]
        }
        other => panic!("fake registrar got an unexpected {other:?}"),
    }
}

fn registrar_address(kind: TransportKind, addr: SocketAddr) -> RegistrarAddress {
    match kind {
        TransportKind::Tcp => RegistrarAddress::tcp(addr),
        // The fake registrar listens with the default SCTP port of `Config`.
        _ => RegistrarAddress {
            addr,
            transport: RegistrarTransport::SctpOverUdp {
                sctp_port: Config::default().sctp_port,
            },
        },
    }
}

/// A TCP port nobody listens on: bind, read the port, close.
fn dead_tcp_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let give_up = tokio::time::Instant::now() + STEP;
    while !check() {
        assert!(tokio::time::Instant::now() < give_up, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn register_resolve_report_deregister(kind: TransportKind, dead_first: bool) {
    let handle = PoolHandle::from("collectors");
    let (addr, seen) = fake_registrar(kind).await;
    let mut registrars = Vec::new();
    if dead_first {
        registrars.push(RegistrarAddress::tcp(dead_tcp_address()));
    }
    registrars.push(registrar_address(kind, addr));
    let live = registrars.len() - 1;

    let user_transport = TransportAddress {
        kind: WireTransport::Tcp(TransportUse::DataPlusControl),
        port: 4739,
        addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
    };
    let mut pe_config = PoolElementConfig::new(
        handle.clone(),
        PE_ID,
        user_transport.clone(),
        PolicyParams::Priority { priority: 7 },
        registrars.len(),
    );
    pe_config.registration_timeout = Duration::from_secs(2);
    pe_config.deregistration_timeout = Duration::from_secs(2);
    pe_config.connect_timeout = Duration::from_secs(3);
    let mut pe = spawn_pool_element(PoolElementDriverConfig {
        pool_element: pe_config,
        registrars: registrars.clone(),
        transport: transport_config(kind),
        announce_listen: None,
    })
    .unwrap();

    let home = tokio::time::timeout(STEP, pe.wait_registered())
        .await
        .expect("registered in time")
        .expect("registration accepted");
    assert_eq!(home, live, "hunted past the dead registrar");
    assert_eq!(
        seen.lock().unwrap().handlespace[&PE_ID].user_transport,
        user_transport
    );
    eventually("keep-alive ack with our PE id", || {
        seen.lock().unwrap().keep_alive_acks.contains(&PE_ID)
    })
    .await;

    let mut pu_config = PoolUserConfig::new(registrars.len());
    pu_config.request_timeout = Duration::from_secs(2);
    pu_config.connect_timeout = Duration::from_secs(3);
    let mut pu = PoolUserClient::new(PoolUserDriverConfig {
        pool_user: pu_config,
        registrars,
        transport: transport_config(kind),
        announce_listen: None,
    })
    .unwrap();
    let pool = tokio::time::timeout(STEP, pu.resolve(&handle))
        .await
        .expect("resolved in time")
        .expect("resolution succeeded");
    assert_eq!(pool.len(), 1);
    assert_eq!(pool[0].pe_id, PE_ID);
    assert_eq!(pool[0].policy, PolicyParams::Priority { priority: 7 });
    let chosen = tokio::time::timeout(STEP, pu.select(&handle, 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(chosen[0].pe_id, PE_ID);

    pu.report_unreachable(&handle, PE_ID).await.unwrap();
    eventually("Endpoint Unreachable at the registrar", || {
        seen.lock().unwrap().unreachable == [PE_ID]
    })
    .await;

    let last = tokio::time::timeout(STEP, pe.shutdown())
        .await
        .expect("shutdown in time")
        .unwrap();
    assert_eq!(last, PeStatus::Deregistered { confirmed: true });
    assert_eq!(seen.lock().unwrap().deregistrations, [PE_ID]);

    // Gone from the handlespace: a fresh resolution is refused.
    let error = tokio::time::timeout(STEP, pu.refresh(&handle))
        .await
        .unwrap()
        .expect_err("pool is empty after deregistration");
    assert!(error.to_string().contains("refused"), "{error}");
}

#[tokio::test]
async fn tcp_driver_against_a_fake_registrar_with_server_hunt() {
    register_resolve_report_deregister(TransportKind::Tcp, true).await;
}

#[tokio::test]
async fn sctp_over_udp_driver_against_a_fake_registrar() {
    register_resolve_report_deregister(TransportKind::SctpOverUdp, false).await;
}
