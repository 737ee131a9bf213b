//! Sans-IO tests of pool membership (closed pools): the registrar accepts a
//! Registration or Deregistration in a closed pool only with a proof that
//! verifies against the pool's authority keys, is fresh, and covers the
//! message as sent; every refusal carries the reject flag and cause
//! "Rejected due to security considerations" and is counted by reason.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use policies::PolicyParams;
use protocol::rserpool::asap::Message;
use protocol::rserpool::membership::{MemberCertificate, MembershipProof};
use protocol::rserpool::params::cause_code;
use protocol::rserpool::{PoolElement, PoolHandle, TransportAddress, TransportKind, TransportUse};
use protocol::signing::SigningKey;
use registrar::server::selection_policy;
use registrar::{Action, Server, ServerConfig};

const POOL: &str = "billing";
/// 2026-12-06, a wall-clock value the tests pretend it is.
const NOW_UNIX: Duration = Duration::from_secs(1_796_515_200);
const DAY: u64 = 86_400;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn element(id: u32, port: u16, priority: u32) -> PoolElement {
    PoolElement {
        pe_identifier: id,
        home_enrp_server_identifier: 0,
        registration_life: -1,
        user_transport: TransportAddress {
            kind: TransportKind::Tcp(TransportUse::DataPlusControl),
            port,
            addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        },
        policy: selection_policy(&PolicyParams::Priority { priority }),
        asap_transport: None,
    }
}

fn certificate(authority: &SigningKey, member: &SigningKey, pool: &str) -> MemberCertificate {
    MemberCertificate::issue(
        authority,
        &PoolHandle::from(pool),
        &member.verifying_key(),
        NOW_UNIX.as_secs() - DAY,
        NOW_UNIX.as_secs() + 30 * DAY,
    )
}

/// A server whose pool "billing" is closed with `authorities`; its wall
/// clock reads [`NOW_UNIX`] at the returned instant.
fn server(authorities: &[&SigningKey]) -> (Server, Instant) {
    let now = Instant::now();
    let mut config = ServerConfig {
        server_id: 0x1111,
        membership_authorities: BTreeMap::from([(
            PoolHandle::from(POOL),
            authorities.iter().map(|k| k.verifying_key()).collect(),
        )]),
        ..ServerConfig::default()
    };
    config.membership_max_clock_skew = Duration::from_secs(60);
    let mut server = Server::new(config, now);
    server.set_wall_clock(now, NOW_UNIX);
    server.on_association_up(now, 1, Some(SocketAddr::from(([127, 0, 0, 1], 40_000))));
    (server, now)
}

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn registration(pool: &str, pe: PoolElement, proof: Option<MembershipProof>) -> Vec<u8> {
    Message::Registration {
        pool_handle: pool.into(),
        pool_element: pe,
        membership: proof.map(Box::new),
    }
    .to_bytes()
}

fn signed_registration(
    member: &SigningKey,
    cert: &MemberCertificate,
    pe: &PoolElement,
    at: Duration,
) -> MembershipProof {
    MembershipProof::sign_registration(member, cert, &POOL.into(), pe, millis(at))
}

fn reply(actions: &[Action]) -> Message {
    let sent: Vec<Message> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { payload, .. } => Some(Message::decode(payload).unwrap()),
            _ => None,
        })
        .collect();
    assert_eq!(sent.len(), 1, "one reply expected: {actions:?}");
    sent.into_iter().next().unwrap()
}

fn assert_accepted(message: &Message) {
    assert!(
        matches!(
            message,
            Message::RegistrationResponse {
                reject: false,
                error: None,
                ..
            }
        ),
        "expected acceptance, got {message:?}"
    );
}

fn assert_refused(message: &Message) {
    match message {
        Message::RegistrationResponse {
            reject: true,
            error: Some(error),
            ..
        } => assert_eq!(error.causes[0].code, cause_code::REJECTED_DUE_TO_SECURITY),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn element_count(server: &Server) -> usize {
    server.handlespace().element_count()
}

#[test]
fn valid_proof_is_accepted_and_kept_for_enrp() {
    let (authority, member) = (key(1), key(2));
    let (mut server, now) = server(&[&authority]);
    let cert = certificate(&authority, &member, POOL);
    let pe = element(7, 4739, 10);
    let proof = signed_registration(&member, &cert, &pe, NOW_UNIX);
    assert_accepted(&reply(&server.on_message(
        now,
        1,
        &registration(POOL, pe.clone(), Some(proof)),
    )));
    assert_eq!(element_count(&server), 1);
    let stored = server
        .handlespace()
        .element(&POOL.into(), 7)
        .and_then(|e| e.membership.clone())
        .expect("proof stored");
    assert_eq!(stored.signed_element.as_ref(), Some(&pe));
}

#[test]
fn refusals_carry_reject_flag_and_cause_and_are_counted() {
    let (authority, member, stranger) = (key(1), key(2), key(3));
    let cert = certificate(&authority, &member, POOL);
    let pe = element(7, 4739, 10);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("no_membership_proof", registration(POOL, pe.clone(), None)),
        (
            "membership_wrong_pool",
            // A valid certificate for another pool, used in "billing".
            {
                let other = certificate(&authority, &member, "other");
                registration(
                    POOL,
                    pe.clone(),
                    Some(signed_registration(&member, &other, &pe, NOW_UNIX)),
                )
            },
        ),
        ("membership_unknown_authority", {
            let self_made = certificate(&stranger, &member, POOL);
            registration(
                POOL,
                pe.clone(),
                Some(signed_registration(&member, &self_made, &pe, NOW_UNIX)),
            )
        }),
        ("membership_certificate_expired", {
            let expired = MemberCertificate::issue(
                &authority,
                &POOL.into(),
                &member.verifying_key(),
                NOW_UNIX.as_secs() - 30 * DAY,
                NOW_UNIX.as_secs() - DAY,
            );
            registration(
                POOL,
                pe.clone(),
                Some(signed_registration(&member, &expired, &pe, NOW_UNIX)),
            )
        }),
        (
            "membership_bad_signature",
            // Signed by another key than the certified one.
            registration(
                POOL,
                pe.clone(),
                Some(signed_registration(&stranger, &cert, &pe, NOW_UNIX)),
            ),
        ),
        (
            "membership_bad_signature",
            // A captured registration with the priority raised.
            {
                let proof = signed_registration(&member, &cert, &pe, NOW_UNIX);
                registration(POOL, element(7, 4739, 0xffff_ffff), Some(proof))
            },
        ),
        (
            "membership_stale_timestamp",
            // Replayed ten minutes later.
            registration(
                POOL,
                pe.clone(),
                Some(signed_registration(
                    &member,
                    &cert,
                    &pe,
                    NOW_UNIX - Duration::from_secs(600),
                )),
            ),
        ),
    ];
    let (mut server, now) = server(&[&authority]);
    for (reason, bytes) in &cases {
        let before = server
            .counters()
            .registration_rejects
            .get(*reason)
            .copied()
            .unwrap_or(0);
        assert_refused(&reply(&server.on_message(now, 1, bytes)));
        assert_eq!(
            server.counters().registration_rejects.get(*reason),
            Some(&(before + 1)),
            "{reason}: {:?}",
            server.counters().registration_rejects
        );
        assert_eq!(element_count(&server), 0, "{reason}");
    }
}

#[test]
fn open_pool_accepts_without_proof_and_closed_pool_stays_closed() {
    let authority = key(1);
    let (mut server, now) = server(&[&authority]);
    assert_accepted(&reply(&server.on_message(
        now,
        1,
        &registration("open-pool", element(9, 4740, 1), None),
    )));
    assert_refused(&reply(&server.on_message(
        now,
        1,
        &registration(POOL, element(9, 4740, 1), None),
    )));
    assert_eq!(element_count(&server), 1);
}

#[test]
fn deregistration_needs_a_proof_in_a_closed_pool() {
    let (authority, member) = (key(1), key(2));
    let (mut server, now) = server(&[&authority]);
    let cert = certificate(&authority, &member, POOL);
    let pe = element(7, 4739, 10);
    let proof = signed_registration(&member, &cert, &pe, NOW_UNIX);
    assert_accepted(&reply(&server.on_message(
        now,
        1,
        &registration(POOL, pe, Some(proof)),
    )));

    let deregister = |proof: Option<MembershipProof>| {
        Message::Deregistration {
            pool_handle: POOL.into(),
            pe_identifier: 7,
            membership: proof.map(Box::new),
        }
        .to_bytes()
    };
    let refused = |message: &Message| match message {
        Message::DeregistrationResponse {
            error: Some(error), ..
        } => error.causes[0].code == cause_code::REJECTED_DUE_TO_SECURITY,
        _ => false,
    };
    assert!(refused(&reply(&server.on_message(
        now,
        1,
        &deregister(None)
    ))));
    // A registration proof cannot stand in for a deregistration one.
    let wrong_kind = MembershipProof::sign_registration(
        &member,
        &cert,
        &POOL.into(),
        &element(7, 4739, 10),
        millis(NOW_UNIX),
    );
    assert!(refused(&reply(&server.on_message(
        now,
        1,
        &deregister(Some(wrong_kind))
    ))));
    assert_eq!(element_count(&server), 1);
    assert_eq!(
        server
            .counters()
            .deregistration_rejects
            .get("no_membership_proof"),
        Some(&1)
    );
    assert_eq!(
        server
            .counters()
            .deregistration_rejects
            .get("membership_bad_signature"),
        Some(&1)
    );

    let good =
        MembershipProof::sign_deregistration(&member, &cert, &POOL.into(), 7, millis(NOW_UNIX));
    assert!(matches!(
        reply(&server.on_message(now, 1, &deregister(Some(good)))),
        Message::DeregistrationResponse { error: None, .. }
    ));
    assert_eq!(element_count(&server), 0);
}

#[test]
fn rotation_accepts_certificates_of_every_listed_authority() {
    let (old, new) = (key(1), key(4));
    let (mut server, now) = server(&[&old, &new]);
    for (id, authority, member) in [(1, &old, key(2)), (2, &new, key(5))] {
        let cert = certificate(authority, &member, POOL);
        let pe = element(id, 4000 + id as u16, 1);
        let proof = signed_registration(&member, &cert, &pe, NOW_UNIX);
        assert_accepted(&reply(&server.on_message(
            now,
            1,
            &registration(POOL, pe, Some(proof)),
        )));
    }
    assert_eq!(element_count(&server), 2);
}

#[test]
fn without_a_wall_clock_a_closed_pool_fails_closed() {
    let (authority, member) = (key(1), key(2));
    let now = Instant::now();
    let mut server = Server::new(
        ServerConfig {
            membership_authorities: BTreeMap::from([(
                PoolHandle::from(POOL),
                vec![authority.verifying_key()],
            )]),
            ..ServerConfig::default()
        },
        now,
    );
    let cert = certificate(&authority, &member, POOL);
    let pe = element(7, 4739, 10);
    let proof = signed_registration(&member, &cert, &pe, NOW_UNIX);
    assert_refused(&reply(&server.on_message(
        now,
        1,
        &registration(POOL, pe, Some(proof)),
    )));
    assert_eq!(element_count(&server), 0);
}

/// A closed pool served by two registrars: the home fills in the ASAP
/// transport the PE left out (RFC 5353 wants one in every Pool Element
/// parameter over ENRP), and the peer must still take the PE as the signed
/// one. Found by the multi-host pool (deploy/multi-host-pool.sh), where the
/// second registrar refused every forwarded PE.
#[test]
fn a_peer_accepts_the_pe_its_home_forwards_with_the_asap_transport_filled_in() {
    let (authority, member) = (key(1), key(2));
    let (mut home, now) = server(&[&authority]);
    let cert = certificate(&authority, &member, POOL);
    let pe = element(7, 4739, 10);
    assert!(pe.asap_transport.is_none());
    let proof = signed_registration(&member, &cert, &pe, NOW_UNIX);
    assert_accepted(&reply(&home.on_message(
        now,
        1,
        &registration(POOL, pe, Some(proof)),
    )));
    let entry = home.handlespace().element(&POOL.into(), 7).unwrap();
    let forwarded = registrar::server::pool_element_of(entry);
    assert!(forwarded.asap_transport.is_some(), "the home fills it in");

    let (peer, now) = server(&[&authority]);
    let accepted =
        peer.check_peer_membership(now, &POOL.into(), &forwarded, entry.membership.clone());
    assert!(accepted.is_ok(), "{accepted:?}");
}
