//! Sans-IO tests of the ASAP server with a fake clock: every `now` is a
//! made-up instant, so timer behaviour is exact and the tests take no time.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use policies::PolicyParams;
use proptest::prelude::*;
use protocol::rserpool::asap::Message;
use protocol::rserpool::params::cause_code;
use protocol::rserpool::{PoolElement, PoolHandle, TransportAddress, TransportKind, TransportUse};
use registrar::handlespace::{Handlespace, HandlespaceLimits, Registration};
use registrar::server::{policy_params, selection_policy};
use registrar::{Action, Server, ServerConfig};

const PE_ASSOC: u64 = 1;
const PU_ASSOC: u64 = 2;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn config() -> ServerConfig {
    ServerConfig {
        server_id: 0x1234_5678,
        keep_alive_period: ms(100),
        keep_alive_timeout: ms(50),
        ..ServerConfig::default()
    }
}

fn tcp(port: u16) -> TransportAddress {
    TransportAddress {
        kind: TransportKind::Tcp(TransportUse::DataPlusControl),
        port,
        addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
    }
}

fn pe(id: u32, params: PolicyParams, port: u16) -> PoolElement {
    PoolElement {
        pe_identifier: id,
        home_enrp_server_identifier: 0,
        registration_life: -1,
        user_transport: tcp(port),
        policy: selection_policy(&params),
        asap_transport: None,
    }
}

fn sends(actions: &[Action]) -> Vec<(u64, Message)> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Send { assoc, payload } => Some((*assoc, Message::decode(payload).unwrap())),
            _ => None,
        })
        .collect()
}

fn only_reply(actions: &[Action]) -> Message {
    let replies = sends(actions);
    assert_eq!(replies.len(), 1, "expected one reply, got {actions:?}");
    replies.into_iter().next().unwrap().1
}

fn register(
    server: &mut Server,
    now: Instant,
    assoc: u64,
    handle: &str,
    element: PoolElement,
) -> Message {
    let request = Message::Registration {
        pool_handle: handle.into(),
        pool_element: element,
        membership: None,
    };
    only_reply(&server.on_message(now, assoc, &request.to_bytes()))
}

fn assert_registered(response: &Message) {
    match response {
        Message::RegistrationResponse {
            reject: false,
            error: None,
            ..
        } => {}
        other => panic!("registration failed: {other:?}"),
    }
}

fn reject_cause(response: &Message) -> u16 {
    match response {
        Message::RegistrationResponse {
            reject: true,
            error: Some(error),
            ..
        } => error.causes[0].code,
        other => panic!("expected a rejected registration, got {other:?}"),
    }
}

fn resolve(server: &mut Server, now: Instant, handle: &str, items: Option<u32>) -> Vec<u32> {
    let request = Message::HandleResolution {
        pool_handle: handle.into(),
        items,
    };
    match only_reply(&server.on_message(now, PU_ASSOC, &request.to_bytes())) {
        Message::HandleResolutionResponse {
            reject: false,
            pool_elements,
            ..
        } => pool_elements.iter().map(|pe| pe.pe_identifier).collect(),
        Message::HandleResolutionResponse { reject: true, .. } => Vec::new(),
        other => panic!("unexpected answer {other:?}"),
    }
}

#[test]
fn registration_then_resolution_returns_the_pe() {
    let t0 = Instant::now();
    let mut server = Server::new(config(), t0);
    let response = register(
        &mut server,
        t0,
        PE_ASSOC,
        "collectors",
        pe(7, PolicyParams::RoundRobin, 4739),
    );
    match &response {
        Message::RegistrationResponse {
            reject: false,
            pool_handle,
            pe_identifier: 7,
            error: None,
        } => assert_eq!(pool_handle, &PoolHandle::from("collectors")),
        other => panic!("{other:?}"),
    }
    let request = Message::HandleResolution {
        pool_handle: "collectors".into(),
        items: None,
    };
    match only_reply(&server.on_message(t0, PU_ASSOC, &request.to_bytes())) {
        Message::HandleResolutionResponse {
            reject: false,
            pool_elements,
            policy,
            ..
        } => {
            assert_eq!(pool_elements.len(), 1);
            assert_eq!(pool_elements[0].user_transport, tcp(4739));
            assert_eq!(pool_elements[0].home_enrp_server_identifier, 0x1234_5678);
            assert_eq!(policy, Some(selection_policy(&PolicyParams::RoundRobin)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.counters().registrations, 1);
    assert_eq!(server.handlespace().element_count(), 1);
}

#[test]
fn priority_policy_through_the_codec_decodes_to_priority_params() {
    // The codec splits the policy type off the value; the registrar must glue
    // it back before PolicyParams::decode.
    let wire = Message::Registration {
        pool_handle: "p".into(),
        pool_element: pe(1, PolicyParams::Priority { priority: 77 }, 1),
        membership: None,
    }
    .to_bytes();
    let Message::Registration { pool_element, .. } = Message::decode(&wire).unwrap() else {
        panic!("not a registration");
    };
    assert_eq!(pool_element.policy.policy_type, 5);
    assert_eq!(pool_element.policy.value, vec![0, 0, 0, 77]);
    assert_eq!(
        policy_params(&pool_element.policy),
        Ok(PolicyParams::Priority { priority: 77 })
    );

    let t0 = Instant::now();
    let mut server = Server::new(config(), t0);
    assert_registered(&only_reply(&server.on_message(t0, PE_ASSOC, &wire)));
    let entry = server.handlespace().element(&"p".into(), 1).unwrap();
    assert_eq!(entry.params, PolicyParams::Priority { priority: 77 });
}

#[test]
fn reregistration_updates_the_entry_without_duplicating_it() {
    let t0 = Instant::now();
    let mut server = Server::new(config(), t0);
    assert_registered(&register(
        &mut server,
        t0,
        PE_ASSOC,
        "p",
        pe(1, PolicyParams::Priority { priority: 1 }, 1000),
    ));
    assert_registered(&register(
        &mut server,
        t0 + ms(10),
        PE_ASSOC,
        "p",
        pe(1, PolicyParams::Priority { priority: 9 }, 2000),
    ));
    let entry = server.handlespace().element(&"p".into(), 1).unwrap();
    assert_eq!(entry.user_transport.port, 2000);
    assert_eq!(entry.params, PolicyParams::Priority { priority: 9 });
    assert_eq!(entry.registered_at, t0);
    assert_eq!(entry.refreshed_at, t0 + ms(10));
    assert_eq!(server.handlespace().element_count(), 1);
    assert_eq!(server.counters().registrations, 1);
    assert_eq!(server.counters().reregistrations, 1);
}

#[test]
fn deregistration_removes_only_for_the_owner() {
    let t0 = Instant::now();
    let mut server = Server::new(config(), t0);
    assert_registered(&register(
        &mut server,
        t0,
        PE_ASSOC,
        "p",
        pe(1, PolicyParams::RoundRobin, 1),
    ));
    let dereg = Message::Deregistration {
        pool_handle: "p".into(),
        pe_identifier: 1,
        membership: None,
    }
    .to_bytes();
    // A pool user cannot deregister someone else's PE.
    match only_reply(&server.on_message(t0, PU_ASSOC, &dereg)) {
        Message::DeregistrationResponse {
            error: Some(error), ..
        } => {
            assert_eq!(error.causes[0].code, cause_code::REJECTED_DUE_TO_SECURITY)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.handlespace().element_count(), 1);
    match only_reply(&server.on_message(t0, PE_ASSOC, &dereg)) {
        Message::DeregistrationResponse {
            error: None,
            pe_identifier: 1,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(server.handlespace().element_count(), 0);
    assert_eq!(
        server.handlespace().pool_count(),
        0,
        "empty pools disappear"
    );
    assert!(resolve(&mut server, t0, "p", None).is_empty());
    // Deregistering what is gone succeeds (RSPLIB does the same).
    assert!(matches!(
        only_reply(&server.on_message(t0, PE_ASSOC, &dereg)),
        Message::DeregistrationResponse { error: None, .. }
    ));
}

#[test]
fn priority_resolution_order_is_highest_first_round_robin_among_equals() {
    let t0 = Instant::now();
    let mut server = Server::new(config(), t0);
    for (id, priority) in [(1, 10), (2, 30), (3, 20), (4, 30)] {
        assert_registered(&register(
            &mut server,
            t0,
            PE_ASSOC,
            "prio",
            pe(id, PolicyParams::Priority { priority }, id as u16),
        ));
    }
    let first = resolve(&mut server, t0, "prio", Some(4));
    let second = resolve(&mut server, t0, "prio", Some(4));
    // The two priority-30 PEs come first, the 20 then the 10 after them.
    assert_eq!(&first[2..], &[3, 1]);
    assert_eq!(&second[2..], &[3, 1]);
    let mut top: Vec<u32> = first[..2].to_vec();
    top.sort();
    assert_eq!(top, vec![2, 4]);
    // Round robin among the equals: the head alternates.
    assert_ne!(first[0], second[0]);
    // items limits the answer, default is 3.
    assert_eq!(resolve(&mut server, t0, "prio", Some(1)).len(), 1);
    assert_eq!(resolve(&mut server, t0, "prio", None).len(), 3);
    assert_eq!(resolve(&mut server, t0, "prio", Some(u32::MAX)).len(), 4);
}

#[test]
fn round_robin_resolution_rotates_through_the_pool() {
    let t0 = Instant::now();
    let mut server = Server::new(config(), t0);
    for id in 1..=3 {
        assert_registered(&register(
            &mut server,
            t0,
            PE_ASSOC,
            "rr",
            pe(id, PolicyParams::RoundRobin, id as u16),
        ));
    }
    let heads: Vec<u32> = (0..6)
        .map(|_| resolve(&mut server, t0, "rr", Some(1))[0])
        .collect();
    assert_eq!(&heads[..3], &heads[3..]);
    let mut distinct = heads[..3].to_vec();
    distinct.sort();
    assert_eq!(distinct, vec![1, 2, 3]);
}

#[test]
fn keep_alive_timeout_removes_a_silent_pe_after_period_plus_timeout() {
    let t0 = Instant::now();
    let mut server = Server::new(config(), t0);
    assert_registered(&register(
        &mut server,
        t0,
        PE_ASSOC,
        "p",
        pe(1, PolicyParams::RoundRobin, 1),
    ));
    assert_eq!(server.next_deadline(), Some(t0 + ms(100)));
    assert!(server.on_timer(t0 + ms(99)).is_empty());

    let actions = server.on_timer(t0 + ms(100));
    let sent = sends(&actions);
    assert_eq!(sent.len(), 1);
    match &sent[0] {
        (
            PE_ASSOC,
            Message::EndpointKeepAlive {
                home: false,
                server_identifier: 0x1234_5678,
                pool_handle,
                pe_identifier: Some(1),
            },
        ) => {
            assert_eq!(pool_handle, &PoolHandle::from("p"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.next_deadline(), Some(t0 + ms(150)));
    assert!(server.on_timer(t0 + ms(149)).is_empty());
    assert_eq!(resolve(&mut server, t0 + ms(149), "p", None), vec![1]);

    let actions = server.on_timer(t0 + ms(150));
    assert_eq!(actions, vec![Action::Close { assoc: PE_ASSOC }]);
    assert!(resolve(&mut server, t0 + ms(150), "p", None).is_empty());
    assert_eq!(server.counters().keep_alive_failures, 1);
    assert_eq!(server.next_deadline(), None);
}

#[test]
fn keep_alive_acks_keep_a_pe_registered() {
    let t0 = Instant::now();
    let mut server = Server::new(config(), t0);
    assert_registered(&register(
        &mut server,
        t0,
        PE_ASSOC,
        "p",
        pe(1, PolicyParams::RoundRobin, 1),
    ));
    let ack = Message::EndpointKeepAliveAck {
        pool_handle: "p".into(),
        pe_identifier: 1,
    }
    .to_bytes();
    let mut now = t0;
    for _ in 0..10 {
        now += ms(100);
        assert_eq!(sends(&server.on_timer(now)).len(), 1, "keep-alive expected");
        now += ms(20);
        assert!(server.on_message(now, PE_ASSOC, &ack).is_empty());
        assert_eq!(server.next_deadline(), Some(now + ms(100)));
    }
    assert_eq!(resolve(&mut server, now, "p", None), vec![1]);
    assert_eq!(server.counters().keep_alive_acks, 10);

    // An ack from another association does not count.
    now += ms(100);
    server.on_timer(now);
    server.on_message(now + ms(10), PU_ASSOC, &ack);
    server.on_timer(now + ms(50));
    assert!(resolve(&mut server, now + ms(50), "p", None).is_empty());
}

/// Registers PEs 1 and 2 in pool "p" and returns the Endpoint Unreachable
/// report for PE 1.
fn two_pes_and_a_report_on_1(server: &mut Server, t0: Instant) -> Vec<u8> {
    for (id, port) in [(1, 1), (2, 2)] {
        assert_registered(&register(
            server,
            t0,
            PE_ASSOC,
            "p",
            pe(id, PolicyParams::RoundRobin, port),
        ));
    }
    Message::EndpointUnreachable {
        pool_handle: "p".into(),
        pe_identifier: 1,
    }
    .to_bytes()
}

#[test]
fn max_bad_pe_report_probes_and_removes_a_pe_that_misses_the_keep_alive() {
    let t0 = Instant::now();
    let mut server = Server::new(config(), t0);
    let report = two_pes_and_a_report_on_1(&mut server, t0);
    for _ in 0..2 {
        assert!(server.on_message(t0, PU_ASSOC, &report).is_empty());
    }
    assert_eq!(
        server
            .handlespace()
            .element(&"p".into(), 1)
            .unwrap()
            .unreachable_reports,
        2
    );
    assert_eq!(server.counters().unreachable_probes, 0);
    // The third report reaches MAX-BAD-PE-REPORT: not removed yet, probed.
    server.on_message(t0, PU_ASSOC, &report);
    assert_eq!(server.handlespace().element_count(), 2);
    assert_eq!(server.counters().unreachable_probes, 1);
    assert_eq!(server.next_deadline(), Some(t0));
    let probe = server.on_timer(t0);
    assert_eq!(sends(&probe).len(), 1, "an immediate keep-alive probe");
    // No answer within the keep-alive timeout: removed as unreachable.
    let timeout = config().keep_alive_timeout;
    server.on_timer(t0 + timeout);
    assert!(server.handlespace().element(&"p".into(), 1).is_none());
    assert_eq!(resolve(&mut server, t0 + timeout, "p", None), vec![2]);
    assert_eq!(server.counters().unreachable_removals, 1);
    assert_eq!(server.counters().keep_alive_failures, 0);
}

#[test]
fn a_pe_that_answers_the_probe_stays_whatever_users_report() {
    let t0 = Instant::now();
    let mut server = Server::new(config(), t0);
    let report = two_pes_and_a_report_on_1(&mut server, t0);
    let ack = Message::EndpointKeepAliveAck {
        pool_handle: "p".into(),
        pe_identifier: 1,
    }
    .to_bytes();
    let mut now = t0;
    // A confused pool user reports the healthy PE again and again.
    for round in 0..5 {
        for _ in 0..3 {
            server.on_message(now, PU_ASSOC, &report);
        }
        let probe = server.on_timer(now);
        assert!(!sends(&probe).is_empty(), "round {round}: probe sent");
        now += ms(10);
        assert!(server.on_message(now, PE_ASSOC, &ack).is_empty());
        assert_eq!(
            resolve(&mut server, now, "p", None).len(),
            2,
            "round {round}: the PE that answers stays in the pool"
        );
    }
    assert_eq!(server.counters().unreachable_removals, 0);
    assert_eq!(server.counters().unreachable_probes, 5);
    assert_eq!(server.counters().unreachable_refuted, 5);
    assert_eq!(
        server
            .handlespace()
            .element(&"p".into(), 1)
            .unwrap()
            .unreachable_reports,
        0
    );
}

#[test]
fn registration_life_expiry_removes_the_pe() {
    let t0 = Instant::now();
    let mut server = Server::new(
        ServerConfig {
            keep_alive_period: Duration::from_secs(10),
            ..config()
        },
        t0,
    );
    let mut element = pe(1, PolicyParams::RoundRobin, 1);
    element.registration_life = 300;
    assert_registered(&register(&mut server, t0, PE_ASSOC, "p", element.clone()));
    assert_eq!(server.next_deadline(), Some(t0 + ms(300)));
    server.on_timer(t0 + ms(299));
    assert_eq!(server.handlespace().element_count(), 1);
    // A re-registration renews the life.
    assert_registered(&register(&mut server, t0 + ms(200), PE_ASSOC, "p", element));
    server.on_timer(t0 + ms(300));
    assert_eq!(server.handlespace().element_count(), 1);
    server.on_timer(t0 + ms(500));
    assert_eq!(server.handlespace().element_count(), 0);
    assert_eq!(server.counters().expiries, 1);
}

#[test]
fn inconsistent_policy_is_rejected_with_its_cause() {
    let t0 = Instant::now();
    let mut server = Server::new(config(), t0);
    assert_registered(&register(
        &mut server,
        t0,
        PE_ASSOC,
        "p",
        pe(1, PolicyParams::RoundRobin, 1),
    ));
    assert_registered(&register(
        &mut server,
        t0,
        PE_ASSOC,
        "p",
        pe(2, PolicyParams::RoundRobin, 2),
    ));
    let response = register(
        &mut server,
        t0,
        PE_ASSOC,
        "p",
        pe(3, PolicyParams::Priority { priority: 1 }, 3),
    );
    assert_eq!(
        reject_cause(&response),
        cause_code::INCONSISTENT_POOLING_POLICY
    );
    // Re-registering an existing member with another policy is rejected too.
    let response = register(
        &mut server,
        t0,
        PE_ASSOC,
        "p",
        pe(1, PolicyParams::Random, 1),
    );
    assert_eq!(
        reject_cause(&response),
        cause_code::INCONSISTENT_POOLING_POLICY
    );
    assert_eq!(server.handlespace().element_count(), 2);
    assert_eq!(
        server.counters().registration_rejects["inconsistent_policy"],
        2
    );
}

#[test]
fn sole_member_may_change_the_pool_policy() {
    let t0 = Instant::now();
    let mut server = Server::new(config(), t0);
    assert_registered(&register(
        &mut server,
        t0,
        PE_ASSOC,
        "p",
        pe(1, PolicyParams::RoundRobin, 1),
    ));
    assert_registered(&register(
        &mut server,
        t0,
        PE_ASSOC,
        "p",
        pe(1, PolicyParams::Priority { priority: 3 }, 1),
    ));
    assert_eq!(
        server
            .handlespace()
            .pool(&"p".into())
            .unwrap()
            .policy_type(),
        5
    );
}

#[test]
fn inconsistent_transport_and_unknown_policy_are_rejected() {
    let t0 = Instant::now();
    let mut server = Server::new(config(), t0);
    assert_registered(&register(
        &mut server,
        t0,
        PE_ASSOC,
        "p",
        pe(1, PolicyParams::RoundRobin, 1),
    ));
    let mut udp = pe(2, PolicyParams::RoundRobin, 2);
    udp.user_transport.kind = TransportKind::Udp;
    assert_eq!(
        reject_cause(&register(&mut server, t0, PE_ASSOC, "p", udp)),
        cause_code::INCONSISTENT_TRANSPORT_TYPE
    );
    let mut data_only = pe(3, PolicyParams::RoundRobin, 3);
    data_only.user_transport.kind = TransportKind::Tcp(TransportUse::DataOnly);
    assert_eq!(
        reject_cause(&register(&mut server, t0, PE_ASSOC, "p", data_only)),
        cause_code::INCONSISTENT_DATA_CONTROL_CONFIGURATION
    );
    let mut unknown = pe(4, PolicyParams::RoundRobin, 4);
    unknown.policy.policy_type = 0x7777_7777;
    assert_eq!(
        reject_cause(&register(&mut server, t0, PE_ASSOC, "q", unknown)),
        cause_code::INVALID_VALUES
    );
    let mut truncated = pe(5, PolicyParams::Priority { priority: 1 }, 5);
    truncated.policy.value.clear();
    assert_eq!(
        reject_cause(&register(&mut server, t0, PE_ASSOC, "q", truncated)),
        cause_code::INVALID_VALUES
    );
}

#[test]
fn identifier_of_another_pe_cannot_be_taken_over() {
    let t0 = Instant::now();
    let mut server = Server::new(config(), t0);
    assert_registered(&register(
        &mut server,
        t0,
        PE_ASSOC,
        "p",
        pe(1, PolicyParams::RoundRobin, 1),
    ));
    let response = register(&mut server, t0, 99, "p", pe(1, PolicyParams::RoundRobin, 2));
    assert_eq!(
        reject_cause(&response),
        cause_code::NON_UNIQUE_PE_IDENTIFIER
    );
    // The same PE (same user transport) on a new association takes its entry over.
    assert_registered(&register(
        &mut server,
        t0,
        99,
        "p",
        pe(1, PolicyParams::RoundRobin, 1),
    ));
    assert_eq!(
        server.handlespace().element(&"p".into(), 1).unwrap().owner,
        99
    );
    assert_eq!(server.on_association_down(PE_ASSOC), 0);
    assert_eq!(server.on_association_down(99), 1);
}

#[test]
fn limits_per_association_pool_and_handle_are_enforced() {
    let t0 = Instant::now();
    let mut server = Server::new(
        ServerConfig {
            limits: HandlespaceLimits {
                max_pools: 2,
                max_pool_elements_per_pool: 3,
                max_pool_elements_per_association: 2,
                ..HandlespaceLimits::default()
            },
            ..config()
        },
        t0,
    );
    assert_registered(&register(
        &mut server,
        t0,
        10,
        "a",
        pe(1, PolicyParams::RoundRobin, 1),
    ));
    assert_registered(&register(
        &mut server,
        t0,
        10,
        "a",
        pe(2, PolicyParams::RoundRobin, 2),
    ));
    let third = register(&mut server, t0, 10, "a", pe(3, PolicyParams::RoundRobin, 3));
    assert_eq!(reject_cause(&third), cause_code::LACK_OF_RESOURCES);
    // Re-registration needs no new capacity.
    assert_registered(&register(
        &mut server,
        t0,
        10,
        "a",
        pe(2, PolicyParams::RoundRobin, 2),
    ));
    assert_registered(&register(
        &mut server,
        t0,
        11,
        "a",
        pe(3, PolicyParams::RoundRobin, 3),
    ));
    let pool_full = register(&mut server, t0, 12, "a", pe(4, PolicyParams::RoundRobin, 4));
    assert_eq!(reject_cause(&pool_full), cause_code::LACK_OF_RESOURCES);
    assert_registered(&register(
        &mut server,
        t0,
        12,
        "b",
        pe(4, PolicyParams::RoundRobin, 4),
    ));
    let too_many_pools = register(&mut server, t0, 12, "c", pe(5, PolicyParams::RoundRobin, 5));
    assert_eq!(reject_cause(&too_many_pools), cause_code::LACK_OF_RESOURCES);
    assert_eq!(
        reject_cause(&register(
            &mut server,
            t0,
            13,
            "",
            pe(6, PolicyParams::RoundRobin, 6)
        )),
        cause_code::INVALID_VALUES
    );

    // A 33-byte handle does not even decode (RSPLIB's 32-byte limit): ASAP Error.
    let long = Message::Registration {
        pool_handle: PoolHandle(vec![b'x'; 33]),
        pool_element: pe(7, PolicyParams::RoundRobin, 7),
        membership: None,
    };
    match only_reply(&server.on_message(t0, 13, &long.to_bytes())) {
        Message::Error { error } => assert_eq!(error.causes[0].code, cause_code::INVALID_VALUES),
        other => panic!("{other:?}"),
    }
    assert_eq!(server.counters().malformed["pool_handle_too_long"], 1);
    assert_eq!(server.handlespace().element_count(), 4);
}

#[test]
fn registration_flood_from_one_association_is_rate_limited() {
    let t0 = Instant::now();
    let mut server = Server::new(
        ServerConfig {
            registrations_per_second: 2.0,
            registration_burst: 5,
            ..config()
        },
        t0,
    );
    let mut accepted = 0;
    for id in 0..50 {
        let response = register(
            &mut server,
            t0,
            PE_ASSOC,
            "p",
            pe(id, PolicyParams::RoundRobin, 1),
        );
        match response {
            Message::RegistrationResponse { reject: false, .. } => accepted += 1,
            other => assert_eq!(reject_cause(&other), cause_code::REJECTED_DUE_TO_SECURITY),
        }
    }
    assert_eq!(accepted, 5);
    assert_eq!(server.counters().rate_limited, 45);
    // Another association is not affected.
    assert_registered(&register(
        &mut server,
        t0,
        77,
        "p",
        pe(100, PolicyParams::RoundRobin, 2),
    ));
    // Tokens come back at the configured rate.
    assert_registered(&register(
        &mut server,
        t0 + ms(500),
        PE_ASSOC,
        "p",
        pe(200, PolicyParams::RoundRobin, 1),
    ));
    let response = register(
        &mut server,
        t0 + ms(500),
        PE_ASSOC,
        "p",
        pe(201, PolicyParams::RoundRobin, 1),
    );
    assert_eq!(
        reject_cause(&response),
        cause_code::REJECTED_DUE_TO_SECURITY
    );
}

#[test]
fn malformed_messages_get_an_error_and_are_counted() {
    let t0 = Instant::now();
    let mut server = Server::new(config(), t0);
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (vec![0x01], cause_code::INVALID_VALUES, "truncated"),
        (
            vec![0x42, 0, 0, 4],
            cause_code::UNRECOGNIZED_MESSAGE,
            "unknown_message_type",
        ),
        (
            vec![0x01, 0, 0, 200, 0, 0],
            cause_code::INVALID_VALUES,
            "bad_message_length",
        ),
        (
            vec![0x05, 0, 0, 4],
            cause_code::INVALID_VALUES,
            "missing_parameter",
        ),
        (vec![0u8; 70_000], cause_code::INVALID_VALUES, "too_large"),
    ];
    for (bytes, code, reason) in cases {
        match only_reply(&server.on_message(t0, PU_ASSOC, &bytes)) {
            Message::Error { error } => {
                assert_eq!(error.causes[0].code, code, "{reason}");
                assert!(error.causes[0].info.len() <= 128);
            }
            other => panic!("{reason}: {other:?}"),
        }
        assert_eq!(server.counters().malformed[reason], 1, "{reason}");
    }
    // A message a registrar does not process: Unrecognized Message.
    let cookie = Message::Cookie {
        cookie: vec![1, 2, 3],
    }
    .to_bytes();
    match only_reply(&server.on_message(t0, PU_ASSOC, &cookie)) {
        Message::Error { error } => {
            assert_eq!(error.causes[0].code, cause_code::UNRECOGNIZED_MESSAGE)
        }
        other => panic!("{other:?}"),
    }
    // An ASAP Error is never answered.
    let error = Message::Error {
        error: Default::default(),
    }
    .to_bytes();
    assert!(server.on_message(t0, PU_ASSOC, &error).is_empty());
    // And the server still serves.
    assert_registered(&register(
        &mut server,
        t0,
        PE_ASSOC,
        "p",
        pe(1, PolicyParams::RoundRobin, 1),
    ));
}

#[test]
fn unknown_parameter_with_report_bits_is_reported_and_processing_continues() {
    let t0 = Instant::now();
    let mut server = Server::new(config(), t0);
    let mut bytes = Message::HandleResolution {
        pool_handle: "nope".into(),
        items: None,
    }
    .to_bytes();
    // Append an unknown parameter of type 0xc123 (bits 11: skip and report).
    bytes.extend_from_slice(&[0xc1, 0x23, 0, 8, 1, 2, 3, 4]);
    let length = bytes.len() as u16;
    bytes[2..4].copy_from_slice(&length.to_be_bytes());
    let replies = sends(&server.on_message(t0, PU_ASSOC, &bytes));
    assert_eq!(replies.len(), 2);
    match &replies[0].1 {
        Message::Error { error } => {
            assert_eq!(error.causes[0].code, cause_code::UNRECOGNIZED_PARAMETER);
            assert_eq!(error.causes[0].info, vec![0xc1, 0x23, 0, 8, 1, 2, 3, 4]);
        }
        other => panic!("{other:?}"),
    }
    match &replies[1].1 {
        Message::HandleResolutionResponse {
            reject: true,
            error: Some(error),
            ..
        } => {
            assert_eq!(error.causes[0].code, cause_code::UNKNOWN_POOL_HANDLE)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn too_many_malformed_messages_close_the_association() {
    let t0 = Instant::now();
    let mut server = Server::new(
        ServerConfig {
            max_malformed_per_association: 3,
            ..config()
        },
        t0,
    );
    for _ in 0..3 {
        assert!(
            !server
                .on_message(t0, PU_ASSOC, &[9])
                .contains(&Action::Close { assoc: PU_ASSOC })
        );
    }
    assert!(
        server
            .on_message(t0, PU_ASSOC, &[9])
            .contains(&Action::Close { assoc: PU_ASSOC })
    );
}

#[test]
fn association_down_removes_its_pes_only() {
    let t0 = Instant::now();
    let mut server = Server::new(config(), t0);
    assert_registered(&register(
        &mut server,
        t0,
        1,
        "p",
        pe(1, PolicyParams::RoundRobin, 1),
    ));
    assert_registered(&register(
        &mut server,
        t0,
        1,
        "q",
        pe(2, PolicyParams::RoundRobin, 2),
    ));
    assert_registered(&register(
        &mut server,
        t0,
        2,
        "p",
        pe(3, PolicyParams::RoundRobin, 3),
    ));
    assert_eq!(server.on_association_down(1), 2);
    assert_eq!(resolve(&mut server, t0, "p", None), vec![3]);
    assert_eq!(server.handlespace().pool_count(), 1);
    assert_eq!(server.counters().association_removals, 2);
}

#[test]
fn unspecified_user_address_is_replaced_by_the_peer_address() {
    let t0 = Instant::now();
    let mut server = Server::new(config(), t0);
    server.on_association_up(t0, PE_ASSOC, Some("192.0.2.7:5000".parse().unwrap()));
    let mut element = pe(1, PolicyParams::RoundRobin, 4739);
    element.user_transport.addresses = vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)];
    assert_registered(&register(&mut server, t0, PE_ASSOC, "p", element));
    let entry = server.handlespace().element(&"p".into(), 1).unwrap();
    assert_eq!(
        entry.user_transport.addresses,
        vec!["192.0.2.7".parse::<IpAddr>().unwrap()]
    );
}

#[test]
fn server_announce_is_sent_every_interval_when_enabled() {
    let t0 = Instant::now();
    let mut server = Server::new(
        ServerConfig {
            announce: true,
            server_announce_interval: ms(250),
            ..config()
        },
        t0,
    );
    assert_eq!(server.next_deadline(), Some(t0));
    let actions = server.on_timer(t0);
    let [Action::Announce { payload }] = actions.as_slice() else {
        panic!("{actions:?}");
    };
    assert!(matches!(
        Message::decode(payload).unwrap(),
        Message::ServerAnnounce {
            server_identifier: 0x1234_5678,
            ..
        }
    ));
    assert_eq!(server.next_deadline(), Some(t0 + ms(250)));
    assert!(server.on_timer(t0 + ms(249)).is_empty());
    assert_eq!(server.on_timer(t0 + ms(250)).len(), 1);
}

#[test]
fn handlespace_holds_100000_pes_and_resolves_in_a_big_pool() {
    let t0 = Instant::now();
    let mut handlespace = Handlespace::new(
        HandlespaceLimits {
            max_pool_elements_per_association: usize::MAX,
            ..HandlespaceLimits::default()
        },
        1,
    );
    for i in 0..100_000u32 {
        let pool: PoolHandle = format!("pool-{}", i % 10).as_str().into();
        handlespace
            .register(
                &pool,
                Registration {
                    id: i,
                    user_transport: tcp((i % 60_000) as u16),
                    asap_transport: None,
                    policy: selection_policy(&PolicyParams::LeastUsed { load: i }),
                    params: PolicyParams::LeastUsed { load: i },
                    registration_life: -1,
                    home_registrar: 1,
                    owner: u64::from(i % 100),
                    membership: None,
                },
                t0,
                ms(1000 + u64::from(i % 1000)),
            )
            .unwrap();
    }
    assert_eq!(handlespace.element_count(), 100_000);
    assert_eq!(handlespace.next_deadline(), Some(t0 + ms(1000)));
    let selected: Vec<u32> = handlespace
        .resolve(&"pool-3".into(), 3)
        .unwrap()
        .iter()
        .map(|entry| entry.id)
        .collect();
    // Least used: the three lowest loads of pool-3.
    assert_eq!(selected, vec![3, 13, 23]);
    assert_eq!(handlespace.remove_owner(3).len(), 1_000);
    assert_eq!(handlespace.element_count(), 99_000);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_and_always_get_an_answer_or_nothing(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let t0 = Instant::now();
        let mut server = Server::new(config(), t0);
        for action in server.on_message(t0, PU_ASSOC, &bytes) {
            if let Action::Send { payload, .. } = action {
                prop_assert!(Message::decode(&payload).is_ok());
            }
        }
    }

    #[test]
    fn mutated_registrations_never_panic(flip in 0usize..200, value in any::<u8>()) {
        let t0 = Instant::now();
        let mut server = Server::new(config(), t0);
        let mut bytes = Message::Registration {
            pool_handle: "pool".into(),
            pool_element: pe(1, PolicyParams::Priority { priority: 4 }, 9), membership: None,
        }
        .to_bytes();
        let index = flip % bytes.len();
        bytes[index] = value;
        let _ = server.on_message(t0, PU_ASSOC, &bytes);
        let _ = server.on_timer(t0 + ms(1000));
    }
}

#[test]
fn registrations_only_from_allowed_networks_and_others_still_served() {
    let now = Instant::now();
    let mut server = Server::new(
        ServerConfig {
            registration_networks: vec!["10.1.0.0/16".parse().unwrap()],
            ..config()
        },
        now,
    );
    let inside = 10;
    let outside = 11;
    let unknown = 12;
    server.on_association_up(now, inside, Some("10.1.2.3:5000".parse().unwrap()));
    server.on_association_up(now, outside, Some("192.0.2.7:5000".parse().unwrap()));
    // A dual-stack socket sees an IPv4 peer as ::ffff:a.b.c.d.
    let mapped = 13;
    server.on_association_up(now, mapped, Some("[::ffff:10.1.9.9]:5000".parse().unwrap()));
    let params = PolicyParams::RoundRobin;
    for (assoc, id) in [(outside, 2), (unknown, 3)] {
        let response = register(&mut server, now, assoc, "pool", pe(id, params, 4739));
        assert_eq!(
            reject_cause(&response),
            cause_code::REJECTED_DUE_TO_SECURITY,
            "assoc {assoc}"
        );
    }
    assert_registered(&register(
        &mut server,
        now,
        inside,
        "pool",
        pe(1, params, 4739),
    ));
    assert_registered(&register(
        &mut server,
        now,
        mapped,
        "pool",
        pe(4, params, 4740),
    ));
    // The refused ones are not in the handlespace; the pool keeps serving.
    let mut found = resolve(&mut server, now, "pool", Some(10));
    found.sort();
    assert_eq!(found, vec![1, 4]);
    assert_eq!(
        server.counters().registration_rejects["not_allowed_network"],
        2
    );
    // An outsider cannot deregister an allowed PE either.
    let reply = only_reply(
        &server.on_message(
            now,
            outside,
            &Message::Deregistration {
                pool_handle: "pool".into(),
                pe_identifier: 1,
                membership: None,
            }
            .to_bytes(),
        ),
    );
    match reply {
        Message::DeregistrationResponse {
            error: Some(error), ..
        } => {
            assert_eq!(error.causes[0].code, cause_code::REJECTED_DUE_TO_SECURITY)
        }
        other => panic!("expected a refused deregistration, got {other:?}"),
    }
    assert_eq!(resolve(&mut server, now, "pool", Some(10)).len(), 2);
}
