//! ENRP Presence over the announce group (RFC 5353; RSPLIB's
//! `-enrpannounce=`): the sans-IO side of `[enrp] multicast`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use protocol::rserpool::enrp::{Body, Message};
use protocol::rserpool::{ServerInformation, TransportAddress, TransportKind, TransportUse};
use registrar::enrp::{Enrp, EnrpConfig, transport_of};
use registrar::{Server, ServerConfig};

const OURS: u32 = 0x0102_0304;
const PEER: u32 = 0x5566_7788;

fn group() -> SocketAddr {
    "239.0.0.51:9901".parse().unwrap()
}

fn setup(advertised: bool) -> (Server, Enrp, Instant) {
    let now = Instant::now();
    let server = Server::new(
        ServerConfig {
            server_id: OURS,
            keep_alive_period: Duration::from_secs(3600),
            ..ServerConfig::default()
        },
        now,
    );
    let enrp = Enrp::new(
        EnrpConfig {
            server_id: OURS,
            advertised: advertised.then(|| transport_of("10.0.0.1:9901".parse().unwrap())),
            ..EnrpConfig::default()
        },
        now,
    );
    (server, enrp, now)
}

fn presence_of(sender: u32, described: u32, addresses: Vec<IpAddr>) -> Vec<u8> {
    Message {
        sender_server_id: sender,
        receiver_server_id: 0,
        body: Body::Presence {
            reply_required: false,
            pe_checksum: 0,
            server_information: Some(ServerInformation {
                server_identifier: described,
                transport: TransportAddress {
                    kind: TransportKind::Sctp(TransportUse::DataOnly),
                    port: 9901,
                    addresses,
                },
            }),
        },
    }
    .to_bytes()
}

fn peer_addresses() -> Vec<IpAddr> {
    vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))]
}

fn malformed(enrp: &Enrp, reason: &str) -> u64 {
    enrp.counters().malformed.get(reason).copied().unwrap_or(0)
}

#[test]
fn a_registrar_heard_on_the_group_is_learnt_and_asked_for_its_presence() {
    let (mut server, mut enrp, now) = setup(true);
    let from: SocketAddr = "10.0.0.2:40000".parse().unwrap();
    let out = enrp.on_multicast(
        now,
        from,
        &presence_of(PEER, PEER, peer_addresses()),
        &mut server,
    );
    assert_eq!(out.len(), 1, "{out:?}");
    // Unicast, to the ENRP address its Server Information names.
    assert_eq!(out[0].to, "10.0.0.2:9901".parse::<SocketAddr>().unwrap());
    let message = Message::decode(&out[0].payload).unwrap();
    assert_eq!(message.sender_server_id, OURS);
    assert_eq!(message.receiver_server_id, PEER);
    assert!(matches!(
        message.body,
        Body::Presence {
            reply_required: true,
            server_information: Some(_),
            ..
        }
    ));
    assert_eq!(enrp.counters().multicast_peers_learned, 1);
    assert!(
        enrp.status(now, &server)
            .peers
            .iter()
            .any(|p| p.server_id == PEER)
    );
    // Heard again while we peer with it: nothing more to do.
    let later = now + Duration::from_secs(1);
    let out = enrp.on_multicast(
        later,
        from,
        &presence_of(PEER, PEER, peer_addresses()),
        &mut server,
    );
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(enrp.counters().multicast_peers_learned, 1);
    assert_eq!(enrp.counters().multicast_presences_heard, 2);
}

#[test]
fn our_own_presence_looped_back_is_ignored_quietly() {
    let (mut server, mut enrp, now) = setup(true);
    let ours = enrp
        .multicast_presence(now, group(), &server)
        .expect("advertised: a Presence to announce");
    let out = enrp.on_multicast(now, "10.0.0.1:40000".parse().unwrap(), &ours, &mut server);
    assert!(out.is_empty());
    assert!(
        enrp.counters().malformed.is_empty(),
        "{:?}",
        enrp.counters().malformed
    );
    assert_eq!(enrp.counters().multicast_presences_heard, 0);
    assert!(enrp.status(now, &server).peers.is_empty());
}

#[test]
fn the_multicast_presence_describes_us_and_wants_no_reply() {
    let (server, mut enrp, now) = setup(true);
    let bytes = enrp.multicast_presence(now, group(), &server).unwrap();
    let message = Message::decode(&bytes).unwrap();
    assert_eq!(message.sender_server_id, OURS);
    assert_eq!(message.receiver_server_id, 0);
    let Body::Presence {
        reply_required,
        server_information: Some(info),
        ..
    } = message.body
    else {
        panic!("not a Presence with Server Information: {:?}", message.body);
    };
    assert!(!reply_required, "a group cannot be answered");
    assert_eq!(info.server_identifier, OURS);
    assert_eq!(info.transport.port, 9901);
    // Without an advertised address there is nothing worth announcing.
    let (server, mut unadvertised, now) = setup(false);
    assert_eq!(unadvertised.multicast_presence(now, group(), &server), None);
}

#[test]
fn bad_datagrams_on_the_group_are_counted_by_reason_and_learn_nothing() {
    let (mut server, mut enrp, now) = setup(true);
    let from: SocketAddr = "10.0.0.66:9901".parse().unwrap();
    let mut feed = |bytes: &[u8]| enrp.on_multicast(now, from, bytes, &mut server);
    assert!(feed(&[]).is_empty());
    assert!(feed(&[0xff; 40]).is_empty());
    let mut truncated = presence_of(PEER, PEER, peer_addresses());
    truncated.truncate(10);
    assert!(feed(&truncated).is_empty());
    let list_request = Message {
        sender_server_id: PEER,
        receiver_server_id: 0,
        body: Body::ListRequest,
    }
    .to_bytes();
    assert!(feed(&list_request).is_empty());
    // A Presence that describes another server than its sender.
    assert!(feed(&presence_of(PEER, 0x0bad_0bad, peer_addresses())).is_empty());
    // Server Information whose SCTP transport lists no address: the
    // decoder refuses it already.
    assert!(feed(&presence_of(PEER, PEER, Vec::new())).is_empty());
    assert_eq!(malformed(&enrp, "multicast_not_presence"), 1);
    assert_eq!(malformed(&enrp, "bad_sender_id"), 1);
    let decode_errors: u64 = enrp
        .counters()
        .malformed
        .iter()
        .filter(|(reason, _)| {
            !matches!(reason.as_str(), "multicast_not_presence" | "bad_sender_id")
        })
        .map(|(_, count)| count)
        .sum();
    assert_eq!(decode_errors, 4, "{:?}", enrp.counters().malformed);
    assert_eq!(enrp.counters().multicast_peers_learned, 0);
    assert!(enrp.status(now, &server).peers.is_empty());
}

#[test]
fn allowed_server_ids_also_bound_multicast_peering() {
    let now = Instant::now();
    let mut server = Server::new(
        ServerConfig {
            server_id: OURS,
            ..ServerConfig::default()
        },
        now,
    );
    let mut enrp = Enrp::new(
        EnrpConfig {
            server_id: OURS,
            advertised: Some(transport_of("10.0.0.1:9901".parse().unwrap())),
            allowed_server_ids: vec![0x0000_0001],
            ..EnrpConfig::default()
        },
        now,
    );
    let out = enrp.on_multicast(
        now,
        "10.0.0.2:40000".parse().unwrap(),
        &presence_of(PEER, PEER, peer_addresses()),
        &mut server,
    );
    assert!(out.is_empty());
    assert_eq!(malformed(&enrp, "peer_not_allowed"), 1);
}

/// With the pool's ENRP key, a multicast Presence is checked like any ENRP
/// message: a keyed peer's signed one is followed, an unsigned one (anyone
/// on the network could send it) is dropped and counted.
#[test]
fn a_keyed_registrar_follows_only_signed_multicast_presence() {
    let keyed = |server_id: u32, advertised: &str, now: Instant| {
        let mut enrp = Enrp::new(
            EnrpConfig {
                server_id,
                advertised: Some(transport_of(advertised.parse().unwrap())),
                auth: Some(registrar::enrp::EnrpAuth {
                    key_id: 1,
                    key: b"the registrar pool's ENRP key".to_vec(),
                    accepted_keys: Vec::new(),
                    max_clock_skew: Duration::from_secs(30),
                    accept_unsigned: false,
                }),
                ..EnrpConfig::default()
            },
            now,
        );
        enrp.set_wall_clock(now, 1_800_000_000_000_000);
        enrp
    };
    let now = Instant::now();
    let mut server = Server::new(
        ServerConfig {
            server_id: OURS,
            ..ServerConfig::default()
        },
        now,
    );
    let peer_server = Server::new(
        ServerConfig {
            server_id: PEER,
            ..ServerConfig::default()
        },
        now,
    );
    let mut ours = keyed(OURS, "10.0.0.1:9901", now);
    let mut peer = keyed(PEER, "10.0.0.2:9901", now);
    let from: SocketAddr = "10.0.0.2:40000".parse().unwrap();
    // Unsigned, though well formed: dropped before it is decoded.
    let unsigned = presence_of(PEER, PEER, peer_addresses());
    assert!(
        ours.on_multicast(now, from, &unsigned, &mut server)
            .is_empty()
    );
    assert_eq!(ours.counters().auth_rejected.values().sum::<u64>(), 1);
    assert_eq!(ours.counters().multicast_peers_learned, 0);
    // Signed with the pool's key: followed.
    let signed = peer.multicast_presence(now, group(), &peer_server).unwrap();
    let out = ours.on_multicast(now, from, &signed, &mut server);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].to, "10.0.0.2:9901".parse::<SocketAddr>().unwrap());
    assert_eq!(ours.counters().multicast_peers_learned, 1);
}
