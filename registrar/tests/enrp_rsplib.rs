//! ENRP as RSPLIB (the RSerPool reference implementation) expects it, on the sans-IO
//! core: requests are answered on the association they came in on (`hsdump` listens
//! nowhere else), loopback addresses in a remote peer's Server Information are not
//! taken, Pool Elements sent over ENRP carry an ASAP Transport, and RSPLIB's ENRP Errors
//! (which carry our own server id as sender) are counted, not dropped silently.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use policies::PolicyParams;
use protocol::rserpool::asap;
use protocol::rserpool::enrp::{Body, Message, UpdateAction};
use protocol::rserpool::{
    ErrorCause, OperationError, PoolElement, ServerInformation, TransportAddress, TransportKind,
    TransportUse,
};
use registrar::enrp::{Enrp, EnrpConfig, Outgoing, transport_of};
use registrar::server::selection_policy;
use registrar::{Server, ServerConfig};

const OURS: u32 = 0x0102_0304;
const HSDUMP: u32 = 0x0a0b_0c0d;

fn ours() -> SocketAddr {
    "10.0.0.1:9901".parse().unwrap()
}

fn setup() -> (Server, Enrp, Instant) {
    let now = Instant::now();
    let mut server = Server::new(
        ServerConfig {
            server_id: OURS,
            keep_alive_period: Duration::from_secs(3600),
            ..ServerConfig::default()
        },
        now,
    );
    server.track_home_changes();
    let enrp = Enrp::new(
        EnrpConfig {
            server_id: OURS,
            advertised: Some(transport_of(ours())),
            ..EnrpConfig::default()
        },
        now,
    );
    (server, enrp, now)
}

fn sctp(port: u16, addresses: Vec<IpAddr>) -> TransportAddress {
    TransportAddress {
        kind: TransportKind::Sctp(TransportUse::DataOnly),
        port,
        addresses,
    }
}

fn message(sender: u32, body: Body) -> Vec<u8> {
    Message {
        sender_server_id: sender,
        receiver_server_id: 0,
        body,
    }
    .to_bytes()
}

/// What `hsdump` sends: a Presence that wants a reply, its Server Information listing
/// `::1` first.
fn hsdump_presence(port: u16) -> Vec<u8> {
    message(
        HSDUMP,
        Body::Presence {
            reply_required: true,
            pe_checksum: 0,
            server_information: Some(ServerInformation {
                server_identifier: HSDUMP,
                transport: sctp(
                    port,
                    vec![
                        IpAddr::V6(Ipv6Addr::LOCALHOST),
                        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 99)),
                    ],
                ),
            }),
        },
    )
}

fn bodies(out: &[Outgoing]) -> Vec<(Body, &Outgoing)> {
    out.iter()
        .map(|o| (Message::decode(&o.payload).unwrap().body, o))
        .collect()
}

#[test]
fn presence_with_reply_required_is_answered_on_its_association() {
    let (mut server, mut enrp, now) = setup();
    let from: SocketAddr = "10.0.0.99:40000".parse().unwrap();
    let out = enrp.on_message(now, from, &hsdump_presence(9901), &mut server);
    let replies: Vec<_> = bodies(&out)
        .into_iter()
        .filter(|(body, _)| {
            matches!(
                body,
                Body::Presence {
                    reply_required: false,
                    ..
                }
            )
        })
        .collect();
    assert_eq!(replies.len(), 2, "the reply and the first-contact Presence");
    let (_, reply) = replies[0];
    assert_eq!(reply.reply_on, Some(from));
    // Never ::1 from a peer on another host: the address it listed next.
    assert_eq!(reply.to, "10.0.0.99:9901".parse::<SocketAddr>().unwrap());
    for outgoing in &out {
        assert!(!outgoing.to.ip().is_loopback(), "{outgoing:?}");
    }
}

#[test]
fn list_and_handle_table_requests_are_answered_on_their_association() {
    let (mut server, mut enrp, now) = setup();
    let from: SocketAddr = "10.0.0.99:40000".parse().unwrap();
    enrp.on_message(now, from, &hsdump_presence(9901), &mut server);
    let out = enrp.on_message(now, from, &message(HSDUMP, Body::ListRequest), &mut server);
    let list: Vec<_> = bodies(&out)
        .into_iter()
        .filter(|(body, _)| matches!(body, Body::ListResponse { .. }))
        .collect();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].1.reply_on, Some(from));

    let request = message(
        HSDUMP,
        Body::HandleTableRequest {
            own_children_only: false,
        },
    );
    let out = enrp.on_message(now, from, &request, &mut server);
    let tables: Vec<_> = bodies(&out)
        .into_iter()
        .filter(|(body, _)| matches!(body, Body::HandleTableResponse { .. }))
        .collect();
    assert_eq!(tables.len(), 1);
    assert_eq!(tables[0].1.reply_on, Some(from));
}

/// A requester that gave no Server Information at all still gets its answer, back on its
/// association (before, "no ENRP address for peer: not sent").
#[test]
fn request_without_server_information_is_answered() {
    let (mut server, mut enrp, now) = setup();
    let from: SocketAddr = "10.0.0.99:40000".parse().unwrap();
    let out = enrp.on_message(now, from, &message(HSDUMP, Body::ListRequest), &mut server);
    let list: Vec<_> = bodies(&out)
        .into_iter()
        .filter(|(body, _)| matches!(body, Body::ListResponse { .. }))
        .collect();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].1.reply_on, Some(from));
    assert_eq!(list[0].1.to, from);
}

#[test]
fn loopback_only_server_information_from_a_remote_peer_means_its_source_address() {
    let (mut server, mut enrp, now) = setup();
    let from: SocketAddr = "10.0.0.99:40000".parse().unwrap();
    let presence = message(
        HSDUMP,
        Body::Presence {
            reply_required: false,
            pe_checksum: 0,
            server_information: Some(ServerInformation {
                server_identifier: HSDUMP,
                transport: sctp(
                    9901,
                    vec![
                        IpAddr::V6(Ipv6Addr::LOCALHOST),
                        "fe80::1".parse().unwrap(),
                        IpAddr::V4(Ipv4Addr::new(169, 254, 1, 1)),
                    ],
                ),
            }),
        },
    );
    let out = enrp.on_message(now, from, &presence, &mut server);
    assert!(!out.is_empty());
    for outgoing in &out {
        assert_eq!(outgoing.to, "10.0.0.99:9901".parse::<SocketAddr>().unwrap());
    }
}

#[test]
fn loopback_server_information_from_a_loopback_peer_is_kept() {
    let (mut server, mut enrp, now) = setup();
    let from: SocketAddr = "[::1]:40000".parse().unwrap();
    let out = enrp.on_message(now, from, &hsdump_presence(9901), &mut server);
    let first_contact: Vec<_> = out.iter().filter(|o| o.reply_on.is_none()).collect();
    assert!(!first_contact.is_empty());
    for outgoing in first_contact {
        assert_eq!(outgoing.to, "[::1]:9901".parse::<SocketAddr>().unwrap());
    }
}

/// RSPLIB's ENRP Error names the receiver (us) as its sender; it is counted by cause.
#[test]
fn enrp_error_with_our_own_server_id_is_counted_by_cause() {
    let (mut server, mut enrp, now) = setup();
    let from: SocketAddr = "10.0.0.99:9901".parse().unwrap();
    let error = message(
        OURS,
        Body::Error {
            error: OperationError {
                causes: vec![ErrorCause {
                    code: 0xf006,
                    info: Vec::new(),
                }],
            },
        },
    );
    let out = enrp.on_message(now, from, &error, &mut server);
    assert!(out.is_empty());
    assert_eq!(
        enrp.counters().errors_received.get("0xf006").copied(),
        Some(1)
    );
    // Anything else with our own id is still refused as before.
    enrp.on_message(now, from, &message(OURS, Body::ListRequest), &mut server);
    assert_eq!(
        enrp.counters().malformed.get("bad_sender_id").copied(),
        Some(1)
    );
}

/// A PE that registered without an ASAP Transport is sent over ENRP with one: where its
/// ASAP association comes from.
#[test]
fn handle_update_pool_element_carries_an_asap_transport() {
    let (mut server, mut enrp, now) = setup();
    // A peer to send Handle Updates to.
    let peer: SocketAddr = "10.0.0.2:9901".parse().unwrap();
    let presence = message(
        HSDUMP,
        Body::Presence {
            reply_required: false,
            pe_checksum: 0,
            server_information: Some(ServerInformation {
                server_identifier: HSDUMP,
                transport: transport_of(peer),
            }),
        },
    );
    enrp.on_message(now, peer, &presence, &mut server);
    let pe_remote: SocketAddr = "192.0.2.7:41234".parse().unwrap();
    server.on_association_up(now, 7, Some(pe_remote));
    let registration = asap::Message::Registration {
        pool_handle: "collectors".into(),
        pool_element: PoolElement {
            pe_identifier: 77,
            home_enrp_server_identifier: 0,
            registration_life: -1,
            user_transport: sctp(9899, vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))]),
            policy: selection_policy(&PolicyParams::RoundRobin),
            asap_transport: None,
        },
        membership: None,
    };
    server.on_message(now, 7, &registration.to_bytes());
    let out = enrp.on_home_changes(server.take_home_changes());
    let updates: Vec<PoolElement> = bodies(&out)
        .into_iter()
        .filter_map(|(body, _)| match body {
            Body::HandleUpdate {
                action: UpdateAction::AddPe,
                pool_element,
                ..
            } => Some(pool_element),
            _ => None,
        })
        .collect();
    assert_eq!(updates.len(), 1);
    assert_eq!(
        updates[0].asap_transport,
        Some(sctp(41234, vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))]))
    );
}
