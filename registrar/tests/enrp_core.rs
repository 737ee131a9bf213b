//! ENRP peering of the sans-IO core on a simulated network with a fake
//! clock: mesh synchronization, Handle Updates, takeover of a dead
//! registrar, resynchronization after a restart, partition healing, the
//! handlespace audit, paged handle tables and malformed input.

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use policies::PolicyParams;
use protocol::rserpool::asap;
use protocol::rserpool::enrp::{Body, Message};
use protocol::rserpool::membership::{MemberCertificate, MembershipProof};
use protocol::rserpool::{PoolElement, TransportAddress, TransportKind, TransportUse};
use registrar::enrp::{Enrp, EnrpConfig, handlespace_checksum, transport_of};
use registrar::handlespace::{
    HandlespaceLimits, finish_pe_checksum, is_peer_owner, pe_checksum_words,
};
use registrar::server::{HomeChange, selection_policy};
use registrar::{Server, ServerConfig};

const POOL: &str = "collectors";
const STEP: Duration = Duration::from_millis(50);

fn address(index: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, index as u8 + 1)), 9901)
}

fn server_id(index: usize) -> u32 {
    0x1111_1111 * (index as u32 + 1)
}

struct Node {
    server: Server,
    enrp: Enrp,
    up: bool,
}

/// The wall clock the simulated registrars read at the net's start
/// (membership proofs are checked in Unix time).
const START_UNIX: Duration = Duration::from_secs(1_796_515_200);

fn node(
    index: usize,
    count: usize,
    now: Instant,
    tune: &impl Fn(&mut EnrpConfig),
    server_tune: fn(usize, &mut ServerConfig),
) -> Node {
    let id = server_id(index);
    let server = {
        let mut config = ServerConfig {
            server_id: id,
            keep_alive_period: Duration::from_secs(3600),
            registrations_per_second: 1e9,
            registration_burst: u32::MAX,
            limits: HandlespaceLimits {
                max_pool_elements_per_association: usize::MAX,
                ..HandlespaceLimits::default()
            },
            ..ServerConfig::default()
        };
        server_tune(index, &mut config);
        let mut server = Server::new(config, now);
        server.set_wall_clock(now, START_UNIX);
        server.track_home_changes();
        server
    };
    let mut config = EnrpConfig {
        server_id: id,
        advertised: Some(transport_of(address(index))),
        static_peers: (0..count).filter(|&i| i != index).map(address).collect(),
        heartbeat_cycle: Duration::from_millis(500),
        max_time_last_heard: Duration::from_millis(1500),
        max_time_no_response: Duration::from_millis(500),
        takeover_expiry: Duration::from_millis(500),
        adopted_pe_grace: Duration::from_millis(3000),
        ..EnrpConfig::default()
    };
    tune(&mut config);
    Node {
        server,
        enrp: Enrp::new(config, now),
        up: true,
    }
}

/// A simulated loopback network: messages go by address, instantly, unless
/// the destination is down or the link is cut.
struct Net {
    nodes: Vec<Node>,
    now: Instant,
    cut: HashSet<(usize, usize)>,
    queue: VecDeque<(usize, registrar::enrp::Outgoing)>,
    start: Instant,
    server_tune: fn(usize, &mut ServerConfig),
}

impl Net {
    fn new(count: usize) -> Self {
        Self::with(count, |_| {})
    }

    fn with(count: usize, tune: impl Fn(&mut EnrpConfig)) -> Self {
        Self::with_servers(count, tune, |_, _| {})
    }

    fn with_servers(
        count: usize,
        tune: impl Fn(&mut EnrpConfig),
        server_tune: fn(usize, &mut ServerConfig),
    ) -> Self {
        let now = Instant::now();
        Self {
            nodes: (0..count)
                .map(|i| node(i, count, now, &tune, server_tune))
                .collect(),
            now,
            cut: HashSet::new(),
            queue: VecDeque::new(),
            start: now,
            server_tune,
        }
    }

    fn pump(&mut self, from: usize) {
        let changes: Vec<HomeChange> = self.nodes[from].server.take_home_changes();
        if !changes.is_empty() {
            let out = self.nodes[from].enrp.on_home_changes(changes);
            self.queue.extend(out.into_iter().map(|o| (from, o)));
        }
        while let Some((sender, message)) = self.queue.pop_front() {
            let Some(to) = (0..self.nodes.len()).find(|&i| address(i) == message.to) else {
                continue;
            };
            if !self.nodes[to].up || self.cut.contains(&(sender, to)) {
                continue;
            }
            let now = self.now;
            let node = &mut self.nodes[to];
            let out =
                node.enrp
                    .on_message(now, address(sender), &message.payload, &mut node.server);
            self.queue.extend(out.into_iter().map(|o| (to, o)));
            let changes = node.server.take_home_changes();
            if !changes.is_empty() {
                let out = node.enrp.on_home_changes(changes);
                self.queue.extend(out.into_iter().map(|o| (to, o)));
            }
        }
    }

    fn run(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.now < end {
            self.now += STEP;
            for index in 0..self.nodes.len() {
                if !self.nodes[index].up {
                    continue;
                }
                let now = self.now;
                let node = &mut self.nodes[index];
                node.server.on_timer(now);
                let out = node.enrp.on_timer(now, &mut node.server);
                self.queue.extend(out.into_iter().map(|o| (index, o)));
                self.pump(index);
            }
        }
    }

    fn register(&mut self, at: usize, pe: u32) {
        let request = asap::Message::Registration {
            pool_handle: POOL.into(),
            pool_element: pool_element(pe),
            membership: None,
        };
        let now = self.now;
        let actions =
            self.nodes[at]
                .server
                .on_message(now, 1000 + u64::from(pe), &request.to_bytes());
        assert_eq!(actions.len(), 1);
        self.pump(at);
    }

    fn deregister(&mut self, at: usize, pe: u32) {
        let request = asap::Message::Deregistration {
            pool_handle: POOL.into(),
            pe_identifier: pe,
            membership: None,
        };
        let now = self.now;
        self.nodes[at]
            .server
            .on_message(now, 1000 + u64::from(pe), &request.to_bytes());
        self.pump(at);
    }

    /// Replaces node `index` by a fresh registrar with the same id.
    fn restart(&mut self, index: usize) {
        let count = self.nodes.len();
        self.nodes[index] = node(index, count, self.now, &|_| {}, self.server_tune);
        // The restarted registrar reads the same wall clock as the others.
        let (start, now) = (self.start, self.now);
        self.nodes[index]
            .server
            .set_wall_clock(now, START_UNIX + (now - start));
    }

    fn checksum(&self, index: usize) -> u16 {
        handlespace_checksum(&self.nodes[index].server)
    }

    fn elements(&self, index: usize) -> Vec<(u32, u32)> {
        let mut list: Vec<(u32, u32)> = self.nodes[index]
            .server
            .handlespace()
            .pool(&POOL.into())
            .map(|pool| pool.elements().map(|e| (e.id, e.home_registrar)).collect())
            .unwrap_or_default();
        list.sort_unstable();
        list
    }

    fn ids(&self, index: usize) -> Vec<u32> {
        self.elements(index).into_iter().map(|(id, _)| id).collect()
    }
}

fn pool_element(pe: u32) -> PoolElement {
    PoolElement {
        pe_identifier: pe,
        home_enrp_server_identifier: 0,
        registration_life: -1,
        user_transport: TransportAddress {
            kind: TransportKind::Tcp(TransportUse::DataPlusControl),
            port: 4739,
            addresses: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, pe as u8))],
        },
        policy: selection_policy(&PolicyParams::RoundRobin),
        asap_transport: None,
    }
}

/// Three meshed registrars with PEs 100..105 at node 0, 200.. at 1, 300.. at 2.
fn meshed_three() -> Net {
    let mut net = Net::new(3);
    net.run(Duration::from_secs(2));
    for node in 0..3 {
        for k in 0..5 {
            net.register(node, (node as u32 + 1) * 100 + k);
        }
    }
    net.run(Duration::from_secs(1));
    net
}

fn all_ids() -> Vec<u32> {
    (1..=3)
        .flat_map(|n| (0..5).map(move |k| n * 100 + k))
        .collect()
}

#[test]
fn pe_checksum_is_the_folded_complement_of_handle_and_id_words() {
    // "ab" = 0x6162, id 0x00010002 = 0x0001 + 0x0002.
    assert_eq!(pe_checksum_words(&"ab".into(), 0x0001_0002), 0x6165);
    assert_eq!(finish_pe_checksum(0x6165), !0x6165);
    // Odd handle length: the last byte is padded with zero.
    assert_eq!(pe_checksum_words(&"abc".into(), 0), 0x6162 + 0x6300);
    // End-around carry.
    assert_eq!(finish_pe_checksum(0x1_fffe), !0xffff);
    assert_eq!(finish_pe_checksum(0), 0xffff);
}

#[test]
fn pes_registered_at_any_registrar_are_known_at_all() {
    let net = meshed_three();
    for node in 0..3 {
        assert_eq!(net.ids(node), all_ids(), "node {node}");
        assert_eq!(net.nodes[node].enrp.alive_peers().len(), 2);
    }
    assert_eq!(net.checksum(0), net.checksum(1));
    assert_eq!(net.checksum(1), net.checksum(2));
    // Homes are where the PEs registered, everywhere.
    for node in 0..3 {
        for (id, home) in net.elements(node) {
            assert_eq!(home, server_id((id / 100 - 1) as usize));
        }
        // Every peer's Presence checksum matches what we store for it.
        let status = net.nodes[node]
            .enrp
            .status(net.now, &net.nodes[node].server);
        for peer in status.peers {
            assert_eq!(peer.remote_checksum, Some(peer.local_checksum));
            assert_eq!(peer.home_elements, 5);
        }
    }
}

#[test]
fn deregistration_and_re_registration_propagate() {
    let mut net = meshed_three();
    net.deregister(0, 100);
    net.register(1, 299);
    for node in 0..3 {
        let ids = net.ids(node);
        assert!(!ids.contains(&100), "node {node}");
        assert!(ids.contains(&299), "node {node}");
    }
    assert_eq!(net.checksum(0), net.checksum(2));
}

#[test]
fn dead_registrar_is_taken_over_exactly_once_and_its_pes_stay_resolvable() {
    let mut net = meshed_three();
    net.nodes[2].up = false;
    let died = net.now;
    // MAX-TIME-LAST-HEARD + MAX-TIME-NO-RESPONSE + takeover round trip.
    net.run(Duration::from_millis(2500));
    let takeovers: u64 = (0..2).map(|n| net.nodes[n].enrp.counters().takeovers).sum();
    assert_eq!(takeovers, 1, "exactly one survivor takes over");
    let adopter = (0..2)
        .find(|&n| net.nodes[n].enrp.counters().takeovers == 1)
        .unwrap();
    for node in 0..2 {
        assert_eq!(net.ids(node), all_ids(), "node {node} still resolves all");
        for (id, home) in net.elements(node) {
            if id >= 300 {
                assert_eq!(home, server_id(adopter), "node {node}: PE {id}");
            }
        }
    }
    assert_eq!(net.checksum(0), net.checksum(1));
    assert!(net.now - died <= Duration::from_millis(2500));
    // A handle resolution at the survivors still returns the adopted PEs.
    let request = asap::Message::HandleResolution {
        pool_handle: POOL.into(),
        items: Some(100),
    };
    let now = net.now;
    let actions = net.nodes[1 - adopter]
        .server
        .on_message(now, 1, &request.to_bytes());
    let registrar::Action::Send { payload, .. } = &actions[0] else {
        panic!("no response")
    };
    let asap::Message::HandleResolutionResponse { pool_elements, .. } =
        asap::Message::decode(payload).unwrap()
    else {
        panic!("not a resolution response")
    };
    assert_eq!(pool_elements.len(), 15);
}

#[test]
fn adopted_pes_that_re_register_stay_and_silent_ones_expire_after_the_grace() {
    let mut net = meshed_three();
    net.nodes[2].up = false;
    net.run(Duration::from_millis(2500));
    // PE 300 hunts to registrar 0 and re-registers; the others never do.
    net.register(0, 300);
    net.run(Duration::from_millis(3500));
    for node in 0..2 {
        let elements = net.elements(node);
        assert!(elements.contains(&(300, server_id(0))), "node {node}");
        assert!(!elements.iter().any(|(id, _)| (301..305).contains(id)));
        assert_eq!(elements.len(), 11);
    }
    assert_eq!(net.checksum(0), net.checksum(1));
    let element = net.nodes[0]
        .server
        .handlespace()
        .element(&POOL.into(), 300)
        .unwrap();
    assert!(!is_peer_owner(element.owner));
}

#[test]
fn restarted_registrar_resynchronizes_to_an_identical_handlespace() {
    let mut net = meshed_three();
    // Quick restart: peers never declared it dead.
    net.nodes[2].up = false;
    net.run(Duration::from_millis(300));
    net.restart(2);
    net.run(Duration::from_secs(3));
    // Its old PEs have not re-registered yet: nobody keeps them.
    let expected: Vec<u32> = (100..105).chain(200..205).collect();
    for node in 0..3 {
        assert_eq!(net.ids(node), expected, "node {node}");
    }
    assert_eq!(net.checksum(2), net.checksum(0));
    assert_eq!(net.checksum(2), net.checksum(1));
    // They come back to it.
    for k in 0..5 {
        net.register(2, 300 + k);
    }
    net.run(Duration::from_secs(1));
    for node in 0..3 {
        assert_eq!(net.ids(node), all_ids(), "node {node}");
    }
    assert_eq!(net.checksum(2), net.checksum(0));
}

#[test]
fn registrar_restarted_after_a_takeover_learns_the_adopted_pes() {
    let mut net = meshed_three();
    net.nodes[2].up = false;
    net.run(Duration::from_millis(2500));
    net.restart(2);
    net.run(Duration::from_secs(2));
    for node in 0..3 {
        assert_eq!(net.ids(node), all_ids(), "node {node}");
    }
    assert_eq!(net.checksum(2), net.checksum(0));
    assert_eq!(net.checksum(2), net.checksum(1));
}

#[test]
fn partition_heals_with_the_same_handlespace_on_both_sides() {
    let mut net = Net::new(2);
    net.run(Duration::from_secs(2));
    for k in 0..5 {
        net.register(0, 100 + k);
        net.register(1, 200 + k);
    }
    net.run(Duration::from_secs(1));
    net.cut.insert((0, 1));
    net.cut.insert((1, 0));
    // Long enough for both sides to declare the other dead, adopt and drop
    // the other's PEs; meanwhile the PEs change.
    net.register(0, 105);
    net.deregister(1, 200);
    net.run(Duration::from_secs(8));
    assert_eq!(net.nodes[0].enrp.counters().takeovers, 1);
    assert_eq!(net.nodes[1].enrp.counters().takeovers, 1);
    net.cut.clear();
    net.run(Duration::from_secs(3));
    let expected: Vec<(u32, u32)> = (100..106)
        .map(|id| (id, server_id(0)))
        .chain((201..205).map(|id| (id, server_id(1))))
        .collect();
    assert_eq!(net.elements(0), expected);
    assert_eq!(net.elements(1), expected);
    assert_eq!(net.checksum(0), net.checksum(1));
}

#[test]
fn short_partition_is_repaired_by_the_checksum_audit() {
    let mut net = Net::new(2);
    net.run(Duration::from_secs(2));
    for k in 0..3 {
        net.register(0, 100 + k);
    }
    net.run(Duration::from_millis(500));
    // Handle Updates lost, Presences keep flowing afterwards.
    net.cut.insert((0, 1));
    net.register(0, 103);
    net.deregister(0, 100);
    net.cut.clear();
    assert_ne!(net.checksum(0), net.checksum(1));
    net.run(Duration::from_secs(2));
    assert_eq!(net.ids(1), vec![101, 102, 103]);
    assert_eq!(net.checksum(0), net.checksum(1));
    assert!(net.nodes[1].enrp.counters().audit_mismatches >= 1);
    assert_eq!(net.nodes[1].enrp.counters().takeovers, 0);
}

#[test]
fn large_handle_tables_are_paged_with_the_more_to_send_flag() {
    let mut net = Net::with(2, |config| config.max_elements_per_table_response = 64);
    net.nodes[1].up = false;
    for pe in 0..300 {
        net.register(0, 10_000 + pe);
    }
    net.nodes[1].up = true;
    net.run(Duration::from_secs(2));
    assert_eq!(net.ids(1).len(), 300);
    assert_eq!(net.checksum(0), net.checksum(1));
    let pages = net.nodes[0]
        .enrp
        .counters()
        .sent
        .get("handle_table_response")
        .copied()
        .unwrap_or(0);
    assert!(pages >= 5, "300 PEs at 64 per page: {pages} responses");
}

#[test]
fn malformed_and_foreign_enrp_is_counted_and_dropped() {
    let mut net = Net::with(1, |config| config.allowed_server_ids = vec![0x4242]);
    let node = &mut net.nodes[0];
    let now = net.now;
    let from = address(7);
    let presence = |sender: u32| {
        Message {
            sender_server_id: sender,
            receiver_server_id: 0,
            body: Body::Presence {
                reply_required: true,
                pe_checksum: 0xffff,
                server_information: None,
            },
        }
        .to_bytes()
    };
    let mut inputs: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0xff; 3],
        vec![0x7f, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 0],
        presence(0x4242)[..10].to_vec(),
        presence(0x9999),
        presence(server_id(0)),
    ];
    let mut wrong_receiver = presence(0x4242);
    wrong_receiver[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    inputs.push(wrong_receiver);
    for bytes in &inputs {
        let out = node.enrp.on_message(now, from, bytes, &mut node.server);
        assert!(out.is_empty());
    }
    let malformed = &node.enrp.counters().malformed;
    assert_eq!(
        malformed.values().sum::<u64>(),
        inputs.len() as u64,
        "{malformed:?}"
    );
    assert_eq!(malformed.get("peer_not_allowed"), Some(&1));
    assert_eq!(malformed.get("bad_sender_id"), Some(&1));
    assert_eq!(malformed.get("wrong_receiver"), Some(&1));
    assert!(node.enrp.alive_peers().is_empty());
    // The allowed peer is accepted.
    node.enrp
        .on_message(now, from, &presence(0x4242), &mut node.server);
    assert_eq!(node.enrp.alive_peers(), vec![0x4242]);
}

#[test]
fn pe_re_registering_at_another_registrar_moves_its_home_everywhere() {
    let mut net = meshed_three();
    // PE 100 cannot reach registrar 0 any more and hunts to registrar 1.
    net.register(1, 100);
    for node in 0..3 {
        assert!(
            net.elements(node).contains(&(100, server_id(1))),
            "node {node}"
        );
    }
    // Its old association to registrar 0 closing does not remove it there.
    net.nodes[0].server.on_association_down(1100);
    net.pump(0);
    net.run(Duration::from_secs(1));
    for node in 0..3 {
        assert_eq!(net.ids(node), all_ids(), "node {node}");
    }
    assert_eq!(net.checksum(0), net.checksum(1));
    assert_eq!(net.checksum(1), net.checksum(2));
    let audits: u64 = (0..3)
        .map(|n| net.nodes[n].enrp.counters().audit_mismatches)
        .sum();
    assert_eq!(audits, 0, "Handle Updates alone kept everyone in step");
}

/// RFC 5353 takeover procedure: the registrar that takes over sends every adopted PE an
/// ASAP Endpoint Keep Alive with the Home flag, addressed to the ASAP
/// transport from the PE's registration; a PE that gave none is counted as
/// unreachable (and kept for the grace). Once the driver has reached the
/// PE, its Keep Alive Ack on that association supervises it as usual.
#[test]
fn takeover_sends_a_home_keep_alive_to_each_adopted_pe() {
    let mut net = meshed_three();
    let asap_transport = |pe: u32| TransportAddress {
        kind: TransportKind::Sctp(TransportUse::DataOnly),
        port: 3863,
        addresses: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, pe as u8))],
    };
    // PEs 300..305 of node 2 register again, now with an ASAP transport.
    for pe in 300..305 {
        let request = asap::Message::Registration {
            pool_handle: POOL.into(),
            pool_element: PoolElement {
                asap_transport: Some(asap_transport(pe)),
                ..pool_element(pe)
            },
            membership: None,
        };
        let now = net.now;
        net.nodes[2]
            .server
            .on_message(now, 1000 + u64::from(pe), &request.to_bytes());
        net.pump(2);
    }
    net.nodes[2].up = false;
    net.run(Duration::from_millis(2500));
    let adopter = (0..2)
        .find(|&n| net.nodes[n].enrp.counters().takeovers == 1)
        .expect("a survivor took over");
    assert!(
        net.nodes[1 - adopter]
            .enrp
            .take_home_keep_alives()
            .is_empty(),
        "only the new home sends them"
    );
    let mut keep_alives = net.nodes[adopter].enrp.take_home_keep_alives();
    keep_alives.sort_by_key(|k| k.pe_identifier);
    assert_eq!(keep_alives.len(), 5);
    for (pe, keep_alive) in (300..305).zip(&keep_alives) {
        assert_eq!(keep_alive.pe_identifier, pe);
        assert_eq!(keep_alive.asap_transport, Some(asap_transport(pe)));
        assert_eq!(
            asap::Message::decode(&keep_alive.payload).unwrap(),
            asap::Message::EndpointKeepAlive {
                home: true,
                server_identifier: server_id(adopter),
                pool_handle: POOL.into(),
                pe_identifier: Some(pe),
            }
        );
    }
    let counters = net.nodes[adopter].enrp.counters();
    assert_eq!(counters.home_keep_alives, 5);
    assert_eq!(counters.adopted_unreachable, 0);

    // The driver reached PE 300 on association 7000; its ack counts there.
    let now = net.now;
    let server = &mut net.nodes[adopter].server;
    server.on_association_up(now, 7000, None);
    assert!(server.attach_adopted_element(now, &POOL.into(), 300, 7000));
    let ack = asap::Message::EndpointKeepAliveAck {
        pool_handle: POOL.into(),
        pe_identifier: 300,
    };
    server.on_message(now, 7000, &ack.to_bytes());
    let element = server.handlespace().element(&POOL.into(), 300).unwrap();
    assert_eq!(element.owner, 7000);
    assert_eq!(element.home_registrar, server_id(adopter));
    assert!(matches!(
        element.keep_alive,
        registrar::handlespace::KeepAlive::SendAt(_)
    ));
    // A PE that is not an adopted one of ours is not attached.
    assert!(!server.attach_adopted_element(now, &POOL.into(), 100, 7000));
}

/// PEs that registered without an ASAP transport (asap-client PEs today)
/// still get a Home Keep Alive prepared, but nowhere to send it: counted.
#[test]
fn adopted_pes_without_an_asap_transport_are_counted_unreachable() {
    let mut net = meshed_three();
    net.nodes[2].up = false;
    net.run(Duration::from_millis(2500));
    let adopter = (0..2)
        .find(|&n| net.nodes[n].enrp.counters().takeovers == 1)
        .expect("a survivor took over");
    let keep_alives = net.nodes[adopter].enrp.take_home_keep_alives();
    assert_eq!(keep_alives.len(), 5);
    assert!(keep_alives.iter().all(|k| k.asap_transport.is_none()));
    assert_eq!(net.nodes[adopter].enrp.counters().adopted_unreachable, 5);
}

const POOL_KEY: &[u8] = b"the registrar pool's ENRP key";

fn keyed(config: &mut EnrpConfig) {
    config.auth = Some(registrar::enrp::EnrpAuth {
        key_id: 1,
        key: POOL_KEY.to_vec(),
        accepted_keys: Vec::new(),
        max_clock_skew: Duration::from_secs(30),
        accept_unsigned: false,
    });
}

/// A Handle Update adding PE `pe` as if from node `sender` of the net.
fn handle_update(sender: usize, receiver: usize, pe: u32) -> Vec<u8> {
    Message {
        sender_server_id: server_id(sender),
        receiver_server_id: server_id(receiver),
        body: Body::HandleUpdate {
            takeover_suggested: false,
            action: protocol::rserpool::enrp::UpdateAction::AddPe,
            pool_handle: POOL.into(),
            pool_element: PoolElement {
                home_enrp_server_identifier: server_id(sender),
                ..pool_element(pe)
            },
            membership: None,
        },
    }
    .to_bytes()
}

fn auth_rejected(net: &Net, node: usize, reason: &str) -> u64 {
    net.nodes[node]
        .enrp
        .counters()
        .auth_rejected
        .get(reason)
        .copied()
        .unwrap_or(0)
}

#[test]
fn keyed_registrars_synchronize_and_take_over() {
    let mut net = Net::with(3, keyed);
    net.run(Duration::from_secs(2));
    for node in 0..3 {
        for k in 0..5 {
            net.register(node, (node as u32 + 1) * 100 + k);
        }
    }
    net.run(Duration::from_secs(1));
    for node in 0..3 {
        assert_eq!(net.ids(node), all_ids(), "node {node}");
        assert!(
            net.nodes[node].enrp.counters().auth_rejected.is_empty(),
            "node {node}: {:?}",
            net.nodes[node].enrp.counters().auth_rejected
        );
    }
    net.nodes[2].up = false;
    net.run(Duration::from_millis(2500));
    let takeovers: u64 = (0..2).map(|n| net.nodes[n].enrp.counters().takeovers).sum();
    assert_eq!(takeovers, 1);
    assert_eq!(net.checksum(0), net.checksum(1));
}

#[test]
fn keyed_registrar_drops_unsigned_and_forged_messages_and_keeps_serving_its_peers() {
    let mut net = Net::with(2, keyed);
    net.run(Duration::from_secs(2));
    let attacker: SocketAddr = "203.0.113.66:9901".parse().unwrap();
    let now = net.now;
    let node = &mut net.nodes[0];

    // Unsigned Presence and Handle Update claiming to be node 1.
    let presence = Message {
        sender_server_id: server_id(1),
        receiver_server_id: 0,
        body: Body::Presence {
            reply_required: true,
            pe_checksum: 0x1234,
            server_information: None,
        },
    }
    .to_bytes();
    assert!(
        node.enrp
            .on_message(now, attacker, &presence, &mut node.server)
            .is_empty()
    );
    let update = handle_update(1, 0, 666);
    assert!(
        node.enrp
            .on_message(now, attacker, &update, &mut node.server)
            .is_empty()
    );
    // Signed with a key the pool does not use.
    let mut forged = handle_update(1, 0, 667);
    protocol::rserpool::enrp::auth::sign(&mut forged, 1, b"guessed key, wrong one", 1).unwrap();
    node.enrp
        .on_message(now, attacker, &forged, &mut node.server);
    // A Takeover Server naming us as the dead one, unsigned.
    let takeover = Message {
        sender_server_id: server_id(1),
        receiver_server_id: server_id(0),
        body: Body::TakeoverServer {
            target_server_id: server_id(0),
        },
    }
    .to_bytes();
    node.enrp
        .on_message(now, attacker, &takeover, &mut node.server);

    assert_eq!(auth_rejected(&net, 0, "unsigned"), 3);
    assert_eq!(auth_rejected(&net, 0, "bad_mac"), 1);
    assert!(
        net.ids(0).is_empty(),
        "nothing forged got into the handlespace"
    );

    // The authenticated peer is still served: its registrations arrive.
    net.register(1, 200);
    net.run(Duration::from_secs(1));
    assert_eq!(net.ids(0), vec![200]);
    assert_eq!(net.nodes[0].enrp.alive_peers(), vec![server_id(1)]);
    assert_eq!(net.checksum(0), net.checksum(1));
}

#[test]
fn replayed_and_stale_signed_messages_are_refused() {
    let mut net = Net::with(2, keyed);
    net.run(Duration::from_secs(2));
    let insider: SocketAddr = address(1);
    let now = net.now;
    // Signed correctly, sequence = "now" on the receiver's clock (its
    // wall clock starts at 0 when the test net is built).
    let sequence = u64::try_from(Duration::from_secs(2).as_micros()).unwrap() + 17;
    let mut update = handle_update(1, 0, 700);
    protocol::rserpool::enrp::auth::sign(&mut update, 1, POOL_KEY, sequence).unwrap();
    let node = &mut net.nodes[0];
    node.enrp
        .on_message(now, insider, &update, &mut node.server);
    assert!(net.ids(0).contains(&700), "a well-signed update is applied");

    // The same bytes again: a replay.
    let node = &mut net.nodes[0];
    node.server
        .remove_peer_element(&POOL.into(), 700, server_id(1));
    node.enrp
        .on_message(now, insider, &update, &mut node.server);
    assert_eq!(auth_rejected(&net, 0, "replay"), 1);
    assert!(!net.ids(0).contains(&700), "the replay changed nothing");

    // Signed an hour ago: stale, whatever its MAC.
    let mut old = handle_update(1, 0, 701);
    protocol::rserpool::enrp::auth::sign(&mut old, 1, POOL_KEY, 1).unwrap();
    let node = &mut net.nodes[0];
    let later = now + Duration::from_secs(3600);
    node.enrp.on_message(later, insider, &old, &mut node.server);
    assert_eq!(auth_rejected(&net, 0, "stale"), 1);
    assert!(!net.ids(0).contains(&701));
}

/// A registrar without a key behaves as before: it reads signed messages
/// (the parameter's type says "skip if unknown": no error, the peer is up)
/// while its own unsigned ones are refused by a keyed peer, which therefore
/// never counts it as a peer — a mixed pool is partitioned. With
/// `accept_unsigned` (migration) the keyed peer takes them and they sync.
#[test]
fn unkeyed_registrar_reads_signed_enrp_and_migration_accepts_unsigned() {
    let mut net = Net::with(2, |config| {
        if config.server_id == server_id(0) {
            keyed(config);
        }
    });
    net.run(Duration::from_secs(2));
    net.register(0, 100);
    net.register(1, 200);
    net.run(Duration::from_secs(1));
    let unkeyed = net.nodes[1].enrp.counters();
    assert!(unkeyed.received.get("presence").copied().unwrap_or(0) > 0);
    assert!(unkeyed.malformed.is_empty(), "{:?}", unkeyed.malformed);
    assert_eq!(net.nodes[1].enrp.alive_peers(), vec![server_id(0)]);
    assert!(net.nodes[0].enrp.alive_peers().is_empty());
    assert!(
        !net.ids(0).contains(&200),
        "the keyed one refuses unsigned ones"
    );
    assert!(auth_rejected(&net, 0, "unsigned") > 0);

    let mut net = Net::with(2, |config| {
        if config.server_id == server_id(0) {
            keyed(config);
            config.auth.as_mut().unwrap().accept_unsigned = true;
        }
    });
    net.run(Duration::from_secs(2));
    net.register(0, 100);
    net.register(1, 200);
    net.run(Duration::from_secs(1));
    assert_eq!(net.ids(0), vec![100, 200]);
    assert_eq!(net.ids(1), vec![100, 200]);
}

/// After a peer is declared dead, the next message to it asks the driver
/// for a new association (a restarted peer does not know the old one).
#[test]
fn first_message_to_a_dead_peer_asks_for_a_new_association() {
    let mut net = meshed_three();
    net.nodes[2].up = false;
    let mut reconnects = 0;
    let mut later_messages = 0;
    for _ in 0..60 {
        net.now += STEP;
        let now = net.now;
        let node = &mut net.nodes[0];
        node.server.on_timer(now);
        for message in node.enrp.on_timer(now, &mut node.server) {
            if message.to == address(2) {
                if message.reconnect {
                    reconnects += 1;
                } else if reconnects > 0 {
                    later_messages += 1;
                }
            }
        }
    }
    assert_eq!(
        reconnects, 1,
        "exactly one message opens the new association"
    );
    assert!(later_messages > 0, "later Presences reuse it");
}

// --- Closed pools over ENRP: proofs travel with the PEs -------------------

/// Membership authority of the pool at nodes that trust it.
fn authority() -> protocol::signing::SigningKey {
    protocol::signing::SigningKey::from_bytes(&[0xa1; 32])
}

/// A member key per PE.
fn member(pe: u32) -> protocol::signing::SigningKey {
    protocol::signing::SigningKey::from_bytes(&[(pe % 251) as u8 + 1; 32])
}

/// Every node closes POOL with [`authority`]; node 2 (if any) trusts
/// another authority only.
fn closed(index: usize, config: &mut ServerConfig) {
    let key = if index == 2 {
        protocol::signing::SigningKey::from_bytes(&[0xb2; 32])
    } else {
        authority()
    };
    config
        .membership_authorities
        .insert(POOL.into(), vec![key.verifying_key()]);
}

fn member_proof(pe: u32, element: &PoolElement, at: Duration) -> Box<MembershipProof> {
    let certificate = MemberCertificate::issue(
        &authority(),
        &POOL.into(),
        &member(pe).verifying_key(),
        START_UNIX.as_secs() - 3600,
        START_UNIX.as_secs() + 86_400,
    );
    Box::new(MembershipProof::sign_registration(
        &member(pe),
        &certificate,
        &POOL.into(),
        element,
        at.as_millis() as u64,
    ))
}

impl Net {
    /// Registers PE `pe` with a valid membership proof at node `at`.
    fn register_member(&mut self, at: usize, pe: u32) {
        let element = pool_element(pe);
        let unix = START_UNIX + (self.now - self.start);
        let request = asap::Message::Registration {
            pool_handle: POOL.into(),
            membership: Some(member_proof(pe, &element, unix)),
            pool_element: element,
        };
        let now = self.now;
        let replies =
            self.nodes[at]
                .server
                .on_message(now, 1000 + u64::from(pe), &request.to_bytes());
        assert!(
            matches!(&replies[..], [registrar::Action::Send { payload, .. }]
                if matches!(asap::Message::decode(payload), Ok(asap::Message::RegistrationResponse { reject: false, .. }))),
            "registration of {pe} at node {at} refused: {replies:?}"
        );
        self.pump(at);
    }

    fn peer_membership_rejects(&self, node: usize, reason: &str) -> u64 {
        self.nodes[node]
            .server
            .counters()
            .peer_membership_rejects
            .get(reason)
            .copied()
            .unwrap_or(0)
    }
}

#[test]
fn closed_pool_members_reach_peers_with_their_proof_and_peers_check_it() {
    let mut net = Net::with_servers(3, |_| {}, closed);
    net.run(Duration::from_secs(2));
    net.register_member(0, 100);
    net.register_member(1, 200);
    net.run(Duration::from_secs(1));
    // Peers that trust the authority learn the members (Handle Updates
    // carrying the proofs); node 2 trusts another authority and refuses
    // them with its own list.
    assert_eq!(net.ids(0), vec![100, 200]);
    assert_eq!(net.ids(1), vec![100, 200]);
    assert!(net.ids(2).is_empty(), "{:?}", net.ids(2));
    assert!(net.peer_membership_rejects(2, "membership_unknown_authority") >= 2);

    // A peer's Handle Update of a PE without proof: refused, counted.
    let now = net.now;
    let node = &mut net.nodes[1];
    node.enrp
        .on_message(now, address(0), &handle_update(0, 1, 666), &mut node.server);
    assert!(!net.ids(1).contains(&666));
    assert_eq!(net.peer_membership_rejects(1, "no_membership_proof"), 1);

    // A PE's genuine proof attached to an altered element (another user
    // transport): refused, the signed element does not match.
    let genuine = member_proof(100, &pool_element(100), START_UNIX);
    let mut altered = pool_element(100);
    altered.user_transport.addresses = vec![IpAddr::V4(Ipv4Addr::new(203, 0, 113, 66))];
    altered.home_enrp_server_identifier = server_id(0);
    let mut proof = genuine;
    proof.signed_element = Some(altered.clone());
    let update = Message {
        sender_server_id: server_id(0),
        receiver_server_id: server_id(1),
        body: Body::HandleUpdate {
            takeover_suggested: false,
            action: protocol::rserpool::enrp::UpdateAction::AddPe,
            pool_handle: POOL.into(),
            pool_element: altered,
            membership: Some(proof),
        },
    }
    .to_bytes();
    let node = &mut net.nodes[1];
    node.enrp
        .on_message(now, address(0), &update, &mut node.server);
    assert_eq!(
        net.peer_membership_rejects(1, "membership_bad_signature"),
        1
    );
    let stored = net.nodes[1]
        .server
        .pool_element(&POOL.into(), 100)
        .expect("PE 100 still there");
    assert_eq!(stored.user_transport, pool_element(100).user_transport);
}

#[test]
fn restarted_registrar_learns_closed_pool_members_from_the_handle_table() {
    let mut net = Net::with_servers(2, |_| {}, closed);
    net.run(Duration::from_secs(2));
    for pe in [100, 101, 102] {
        net.register_member(0, pe);
    }
    net.run(Duration::from_secs(1));
    assert_eq!(net.ids(1), vec![100, 101, 102]);
    net.restart(1);
    net.run(Duration::from_secs(3));
    // The table carried each PE's proof; node 1 checked and stored them.
    assert_eq!(net.ids(1), vec![100, 101, 102]);
    assert!(
        net.nodes[1]
            .server
            .counters()
            .peer_membership_rejects
            .is_empty()
    );
    for pe in [100, 101, 102] {
        assert!(
            net.nodes[1]
                .server
                .membership_of(&POOL.into(), pe)
                .is_some()
        );
    }
    assert_eq!(net.checksum(0), net.checksum(1));
}
