//! Sans-IO tests of the Pool Element with a fake clock.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use asap_client::params_from_selection_policy;
use asap_client::pool_element::{Input, Output, PeState, PoolElement, PoolElementConfig};
use policies::PolicyParams;
use protocol::rserpool::asap::Message;
use protocol::rserpool::params::cause_code;
use protocol::rserpool::{
    ErrorCause, OperationError, PoolHandle, TransportAddress, TransportKind, TransportUse,
};

const PE_ID: u32 = 0x0bad_cafe;

fn handle() -> PoolHandle {
    PoolHandle::from("ipfix-collectors")
}

fn config(registrars: usize) -> PoolElementConfig {
    let transport = TransportAddress {
        kind: TransportKind::Sctp(TransportUse::DataPlusControl),
        port: 4739,
        addresses: vec![
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
        ],
    };
    let mut config = PoolElementConfig::new(
        handle(),
        PE_ID,
        transport,
        PolicyParams::Priority { priority: 10 },
        registrars,
    );
    config.registration_lifetime = Some(Duration::from_secs(3));
    config.reregistration_interval = Duration::from_secs(60);
    config.registration_timeout = Duration::from_millis(500);
    config.deregistration_timeout = Duration::from_millis(300);
    config.connect_timeout = Duration::from_millis(400);
    config.server_hunt_pause = Duration::from_secs(1);
    config
}

/// The messages sent to `registrar`, decoded.
fn sent_to(outputs: &[Output], registrar: usize) -> Vec<Message> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send {
                registrar: r,
                bytes,
            } if *r == registrar => Some(Message::decode(bytes).expect("PE sends valid ASAP")),
            _ => None,
        })
        .collect()
}

fn accept(pe_identifier: u32) -> Vec<u8> {
    Message::RegistrationResponse {
        reject: false,
        pool_handle: handle(),
        pe_identifier,
        error: None,
    }
    .to_bytes()
}

/// Start, association up with registrar 0, accepted: the common prefix.
fn registered(t0: Instant, registrars: usize) -> PoolElement {
    let mut pe = PoolElement::new(config(registrars)).unwrap();
    assert_eq!(
        pe.on_event(t0, Input::Start),
        vec![Output::Connect { registrar: 0 }]
    );
    let out = pe.on_event(t0, Input::AssociationUp(0));
    assert!(matches!(
        sent_to(&out, 0)[..],
        [Message::Registration { .. }]
    ));
    let out = pe.on_event(t0, Input::Message(0, accept(PE_ID)));
    assert_eq!(out, vec![Output::Registered { registrar: 0 }]);
    pe
}

#[test]
fn registration_carries_the_pe_and_is_confirmed() {
    let t0 = Instant::now();
    let mut pe = PoolElement::new(config(2)).unwrap();
    pe.on_event(t0, Input::Start);
    let out = pe.on_event(t0, Input::AssociationUp(0));
    let [
        Message::Registration {
            pool_handle,
            pool_element,
            membership: _,
        },
    ] = &sent_to(&out, 0)[..]
    else {
        panic!("expected one Registration, got {out:?}");
    };
    assert_eq!(*pool_handle, handle());
    assert_eq!(pool_element.pe_identifier, PE_ID);
    assert_eq!(pool_element.registration_life, 3000);
    // Both addresses of the multi-homed PE in the one SCTP transport.
    assert_eq!(pool_element.user_transport.addresses.len(), 2);
    assert_eq!(
        params_from_selection_policy(&pool_element.policy),
        Ok(PolicyParams::Priority { priority: 10 })
    );
    assert_eq!(pool_element.asap_transport, None);

    // A response for another PE identifier is not ours.
    assert!(
        pe.on_event(t0, Input::Message(0, accept(PE_ID + 1)))
            .is_empty()
    );
    assert_eq!(
        pe.on_event(t0, Input::Message(0, accept(PE_ID))),
        vec![Output::Registered { registrar: 0 }]
    );
    assert_eq!(pe.state(), PeState::Registered { registrar: 0 });
}

#[test]
fn rejection_surfaces_the_error_cause_and_stops() {
    let t0 = Instant::now();
    let mut pe = PoolElement::new(config(2)).unwrap();
    pe.on_event(t0, Input::Start);
    pe.on_event(t0, Input::AssociationUp(0));
    let reject = Message::RegistrationResponse {
        reject: true,
        pool_handle: handle(),
        pe_identifier: PE_ID,
        error: Some(OperationError {
            causes: vec![ErrorCause {
                code: cause_code::INCONSISTENT_POOLING_POLICY,
                info: Vec::new(),
            }],
        }),
    };
    let out = pe.on_event(t0, Input::Message(0, reject.to_bytes()));
    assert!(out.contains(&Output::Close { registrar: 0 }));
    let failure = out
        .iter()
        .find_map(|o| match o {
            Output::RegistrationFailed { cause } => Some(cause.clone()),
            _ => None,
        })
        .expect("RegistrationFailed output");
    assert_eq!(
        failure.cause_codes(),
        vec![cause_code::INCONSISTENT_POOLING_POLICY]
    );
    assert_eq!(pe.state(), PeState::Rejected);
    assert_eq!(pe.poll_timeout(), None, "a rejected PE does not retry");
}

#[test]
fn reregisters_before_the_lifetime_ends() {
    let t0 = Instant::now();
    let mut pe = registered(t0, 1);
    let lifetime = Duration::from_secs(3);
    let due = pe.poll_timeout().expect("re-registration timer");
    assert!(due > t0 && due < t0 + lifetime, "due {:?}", due - t0);

    // Not yet: nothing happens.
    assert!(
        pe.on_event(due - Duration::from_millis(1), Input::Timer)
            .is_empty()
    );
    let out = pe.on_event(due, Input::Timer);
    let [Message::Registration { pool_element, .. }] = &sent_to(&out, 0)[..] else {
        panic!("expected a re-registration, got {out:?}");
    };
    assert_eq!(pool_element.pe_identifier, PE_ID, "same PE, refreshed");
    assert_eq!(
        pe.on_event(due, Input::Message(0, accept(PE_ID))),
        vec![Output::Registered { registrar: 0 }]
    );
    let next = pe.poll_timeout().unwrap();
    assert!(next > due && next < due + lifetime);
}

#[test]
fn keep_alive_is_acked_with_our_pe_identifier() {
    let t0 = Instant::now();
    let mut pe = registered(t0, 2);
    let keep_alive = |pe_identifier| {
        Message::EndpointKeepAlive {
            home: false,
            server_identifier: 0x5eed,
            pool_handle: handle(),
            pe_identifier,
        }
        .to_bytes()
    };
    for addressed in [None, Some(PE_ID)] {
        let out = pe.on_event(t0, Input::Message(0, keep_alive(addressed)));
        assert_eq!(
            sent_to(&out, 0),
            vec![Message::EndpointKeepAliveAck {
                pool_handle: handle(),
                pe_identifier: PE_ID,
            }]
        );
    }
    // A keep alive for another PE is not answered for it.
    assert!(
        pe.on_event(t0, Input::Message(0, keep_alive(Some(PE_ID ^ 1))))
            .is_empty()
    );
    // The home registrar's identifier goes into the next re-registration.
    assert_eq!(pe.home_server_identifier(), 0x5eed);
    let out = pe.on_event(pe.poll_timeout().unwrap(), Input::Timer);
    let [Message::Registration { pool_element, .. }] = &sent_to(&out, 0)[..] else {
        panic!("expected a re-registration");
    };
    assert_eq!(pool_element.home_enrp_server_identifier, 0x5eed);
}

#[test]
fn keep_alive_with_home_flag_moves_the_home_registrar() {
    let t0 = Instant::now();
    let mut pe = registered(t0, 2);
    let takeover = Message::EndpointKeepAlive {
        home: true,
        server_identifier: 77,
        pool_handle: handle(),
        pe_identifier: Some(PE_ID),
    };
    let out = pe.on_event(t0, Input::Message(1, takeover.to_bytes()));
    assert_eq!(
        sent_to(&out, 1),
        vec![Message::EndpointKeepAliveAck {
            pool_handle: handle(),
            pe_identifier: PE_ID
        }]
    );
    assert!(out.contains(&Output::Close { registrar: 0 }));
    assert!(out.contains(&Output::Registered { registrar: 1 }));
    assert_eq!(pe.state(), PeState::Registered { registrar: 1 });
    assert_eq!(pe.home_server_identifier(), 77);
}

fn home_keep_alive(server_identifier: u32) -> Vec<u8> {
    Message::EndpointKeepAlive {
        home: true,
        server_identifier,
        pool_handle: handle(),
        pe_identifier: Some(PE_ID),
    }
    .to_bytes()
}

/// The old home died and the PE is hunting when the registrar that took
/// it over sends the Keep Alive with the Home flag: the hunt ends, the
/// sender is home, and the next re-registration goes there.
#[test]
fn home_keep_alive_during_a_hunt_adopts_the_sender_as_home() {
    let t0 = Instant::now();
    let mut pe = registered(t0, 3);
    let t1 = t0 + Duration::from_secs(1);
    pe.on_event(t1, Input::AssociationDown(0));
    assert_eq!(pe.state(), PeState::Connecting { registrar: 1 });
    let out = pe.on_event(t1, Input::Message(2, home_keep_alive(0x3333)));
    assert_eq!(
        sent_to(&out, 2),
        vec![Message::EndpointKeepAliveAck {
            pool_handle: handle(),
            pe_identifier: PE_ID
        }]
    );
    assert!(out.contains(&Output::Close { registrar: 1 }), "{out:?}");
    assert!(
        out.contains(&Output::Registered { registrar: 2 }),
        "{out:?}"
    );
    assert_eq!(pe.state(), PeState::Registered { registrar: 2 });
    assert_eq!(pe.home_server_identifier(), 0x3333);
    // No connect timeout fires for the abandoned registrar 1: the next
    // deadline is the re-registration, sent to the new home.
    let next = pe.poll_timeout().unwrap();
    assert!(next >= t1 + Duration::from_secs(1), "{next:?}");
    let out = pe.on_event(next, Input::Timer);
    let [Message::Registration { pool_element, .. }] = &sent_to(&out, 2)[..] else {
        panic!("expected a re-registration at the new home: {out:?}");
    };
    assert_eq!(pool_element.home_enrp_server_identifier, 0x3333);
}

/// Between hunt rounds (every registrar failed once) the Home Keep Alive
/// ends the pause too; a Keep Alive without the flag from a registrar that
/// is not home changes nothing but is still acknowledged.
#[test]
fn home_keep_alive_ends_a_hunt_pause_and_plain_ones_do_not() {
    let t0 = Instant::now();
    let mut pe = PoolElement::new(config(1)).unwrap();
    pe.on_event(t0, Input::Start);
    pe.on_event(t0, Input::AssociationDown(0));
    assert_eq!(pe.state(), PeState::HuntPause);
    let plain = Message::EndpointKeepAlive {
        home: false,
        server_identifier: 0x4444,
        pool_handle: handle(),
        pe_identifier: Some(PE_ID),
    };
    let out = pe.on_event(t0, Input::Message(0, plain.to_bytes()));
    assert_eq!(sent_to(&out, 0).len(), 1, "acked");
    assert_eq!(pe.state(), PeState::HuntPause);
    let out = pe.on_event(t0, Input::Message(0, home_keep_alive(0x4444)));
    assert!(
        out.contains(&Output::Registered { registrar: 0 }),
        "{out:?}"
    );
    assert_eq!(pe.state(), PeState::Registered { registrar: 0 });
}

/// A PE configured with an ASAP transport puts it in its registration, so
/// a registrar that takes it over knows where to send the Home Keep Alive.
#[test]
fn asap_transport_is_announced_in_the_registration() {
    let t0 = Instant::now();
    let mut config = config(1);
    let asap = TransportAddress {
        kind: TransportKind::Sctp(TransportUse::DataOnly),
        port: 3863,
        addresses: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))],
    };
    config.asap_transport = Some(asap.clone());
    let mut pe = PoolElement::new(config).unwrap();
    pe.on_event(t0, Input::Start);
    let out = pe.on_event(t0, Input::AssociationUp(0));
    let [Message::Registration { pool_element, .. }] = &sent_to(&out, 0)[..] else {
        panic!("expected a registration");
    };
    assert_eq!(pool_element.asap_transport, Some(asap));
}

#[test]
fn registrar_failure_hunts_to_the_next_and_reregisters() {
    let t0 = Instant::now();
    let mut pe = registered(t0, 3);
    let t1 = t0 + Duration::from_secs(1);
    let out = pe.on_event(t1, Input::AssociationDown(0));
    assert_eq!(
        out,
        vec![
            Output::Close { registrar: 0 },
            Output::Connect { registrar: 1 }
        ]
    );
    // Registrar 1 never comes up: connect timeout, on to registrar 2.
    let deadline = pe.poll_timeout().unwrap();
    assert_eq!(deadline, t1 + Duration::from_millis(400));
    let out = pe.on_event(deadline, Input::Timer);
    assert_eq!(
        out,
        vec![
            Output::Close { registrar: 1 },
            Output::Connect { registrar: 2 }
        ]
    );
    let out = pe.on_event(deadline, Input::AssociationUp(2));
    assert!(matches!(
        sent_to(&out, 2)[..],
        [Message::Registration { .. }]
    ));
    // A late Up from registrar 1 is closed, not used.
    assert_eq!(
        pe.on_event(deadline, Input::AssociationUp(1)),
        vec![Output::Close { registrar: 1 }]
    );
    assert_eq!(
        pe.on_event(deadline, Input::Message(2, accept(PE_ID))),
        vec![Output::Registered { registrar: 2 }]
    );
}

#[test]
fn silent_registrar_gets_max_reg_attempt_registrations_then_is_left() {
    let t0 = Instant::now();
    let mut pe = PoolElement::new(config(2)).unwrap();
    pe.on_event(t0, Input::Start);
    pe.on_event(t0, Input::AssociationUp(0));
    let t1 = pe.poll_timeout().unwrap();
    let out = pe.on_event(t1, Input::Timer);
    assert_eq!(sent_to(&out, 0).len(), 1, "second attempt at the same one");
    let t2 = pe.poll_timeout().unwrap();
    let out = pe.on_event(t2, Input::Timer);
    assert_eq!(
        out,
        vec![
            Output::Close { registrar: 0 },
            Output::Connect { registrar: 1 }
        ]
    );
}

#[test]
fn a_failed_round_pauses_before_starting_over() {
    let t0 = Instant::now();
    let mut pe = PoolElement::new(config(2)).unwrap();
    pe.on_event(t0, Input::Start);
    assert_eq!(
        pe.on_event(t0, Input::AssociationDown(0)),
        vec![
            Output::Close { registrar: 0 },
            Output::Connect { registrar: 1 }
        ]
    );
    assert_eq!(
        pe.on_event(t0, Input::AssociationDown(1)),
        vec![Output::Close { registrar: 1 }]
    );
    assert_eq!(pe.state(), PeState::HuntPause);
    assert_eq!(pe.poll_timeout(), Some(t0 + Duration::from_secs(1)));
    assert_eq!(
        pe.on_event(t0 + Duration::from_secs(1), Input::Timer),
        vec![Output::Connect { registrar: 0 }]
    );
}

#[test]
fn shutdown_deregisters_and_waits_for_the_response() {
    let t0 = Instant::now();
    let mut pe = registered(t0, 1);
    let out = pe.on_event(t0, Input::Shutdown);
    assert_eq!(
        sent_to(&out, 0),
        vec![Message::Deregistration {
            pool_handle: handle(),
            pe_identifier: PE_ID,
            membership: None,
        }]
    );
    assert_eq!(pe.poll_timeout(), Some(t0 + Duration::from_millis(300)));
    let response = Message::DeregistrationResponse {
        pool_handle: handle(),
        pe_identifier: PE_ID,
        error: None,
    };
    let out = pe.on_event(t0, Input::Message(0, response.to_bytes()));
    assert_eq!(
        out,
        vec![
            Output::Close { registrar: 0 },
            Output::Deregistered { confirmed: true }
        ]
    );
    assert_eq!(pe.state(), PeState::Stopped);
    assert_eq!(pe.poll_timeout(), None);
}

#[test]
fn deregistration_wait_is_bounded() {
    let t0 = Instant::now();
    let mut pe = registered(t0, 1);
    pe.on_event(t0, Input::Shutdown);
    let deadline = pe.poll_timeout().unwrap();
    assert_eq!(
        pe.on_event(deadline, Input::Timer),
        vec![
            Output::Close { registrar: 0 },
            Output::Deregistered { confirmed: false }
        ]
    );
}

#[test]
fn invalid_transports_are_refused() {
    let mut bad = config(1);
    bad.user_transport.kind = TransportKind::Tcp(TransportUse::DataPlusControl);
    assert!(
        PoolElement::new(bad).is_err(),
        "TCP takes exactly one address"
    );
    assert!(PoolElement::new(config(0)).is_err(), "no registrars");
}

/// The policy parameters a Registration message carries.
fn registered_policy(message: &Message) -> PolicyParams {
    let Message::Registration { pool_element, .. } = message else {
        panic!("not a registration: {message:?}");
    };
    params_from_selection_policy(&pool_element.policy).unwrap()
}

#[test]
fn policy_update_reregisters_at_once_and_keeps_the_policy_type() {
    let t0 = Instant::now();
    let mut pe = registered(t0, 2);
    // A lower priority (drain for maintenance): registered at once.
    let out = pe.on_event(
        t0,
        Input::UpdatePolicy(PolicyParams::Priority { priority: 1 }),
    );
    let sent = sent_to(&out, 0);
    assert_eq!(sent.len(), 1, "one re-registration: {out:?}");
    assert_eq!(
        registered_policy(&sent[0]),
        PolicyParams::Priority { priority: 1 }
    );
    assert!(matches!(pe.state(), PeState::Registering { registrar: 0 }));
    pe.on_event(t0, Input::Message(0, accept(PE_ID)));
    assert!(matches!(pe.state(), PeState::Registered { registrar: 0 }));
    // The same parameters again: nothing to do.
    assert!(
        pe.on_event(
            t0,
            Input::UpdatePolicy(PolicyParams::Priority { priority: 1 })
        )
        .is_empty()
    );
    // Another policy type would be rejected by the registrar (one policy
    // per pool) and end the registration: refused here instead.
    assert!(
        pe.on_event(t0, Input::UpdatePolicy(PolicyParams::RoundRobin))
            .is_empty()
    );
    assert_eq!(pe.policy(), &PolicyParams::Priority { priority: 1 });
    // The next periodic re-registration carries the new priority too.
    let out = pe.on_event(t0 + Duration::from_secs(61), Input::Timer);
    assert_eq!(
        registered_policy(&sent_to(&out, 0)[0]),
        PolicyParams::Priority { priority: 1 }
    );
}

#[test]
fn policy_update_before_registration_is_used_by_the_first_one() {
    let t0 = Instant::now();
    let mut pe = PoolElement::new(config(1)).unwrap();
    pe.on_event(t0, Input::Start);
    assert!(
        pe.on_event(
            t0,
            Input::UpdatePolicy(PolicyParams::Priority { priority: 50 })
        )
        .is_empty(),
        "not registered yet: nothing sent"
    );
    let out = pe.on_event(t0, Input::AssociationUp(0));
    assert_eq!(
        registered_policy(&sent_to(&out, 0)[0]),
        PolicyParams::Priority { priority: 50 }
    );
}

/// A daemon's graceful stop must not hang on a registrar that is gone:
/// the default T3-deregistration is 2 s (RFC 5352's 30 s held a stopping
/// collector for 30 s), and nothing is sent after it.
#[test]
fn default_deregistration_wait_is_two_seconds() {
    let default = PoolElementConfig::new(
        handle(),
        PE_ID,
        config(1).user_transport,
        PolicyParams::Priority { priority: 10 },
        1,
    );
    assert_eq!(default.deregistration_timeout, Duration::from_secs(2));
}

/// Closed pools: with credentials, every Registration and Deregistration
/// carries a proof the registrar can verify (Unix time from the wall clock
/// the driver sets); new credentials re-register at once.
#[test]
fn membership_proofs_sign_registration_and_deregistration() {
    use asap_client::pool_element::MemberCredentials;
    use protocol::rserpool::asap::msg_type;
    use protocol::rserpool::membership::MemberCertificate;
    use protocol::signing::SigningKey;

    let authority = SigningKey::from_bytes(&[1; 32]);
    let credentials = |seed: u8| {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let certificate =
            MemberCertificate::issue(&authority, &handle(), &key.verifying_key(), 0, u64::MAX);
        MemberCredentials { key, certificate }
    };
    let wall = Duration::from_secs(1_800_000_000);
    let t0 = Instant::now();
    let mut cfg = config(1);
    cfg.membership = Some(credentials(2));
    let mut pe = PoolElement::new(cfg).unwrap();
    pe.set_wall_clock(t0, wall);
    pe.on_event(t0, Input::Start);
    let out = pe.on_event(t0 + Duration::from_millis(250), Input::AssociationUp(0));
    let authorities = [authority.verifying_key()];
    let Message::Registration {
        pool_handle,
        pool_element,
        membership: Some(proof),
    } = sent_to(&out, 0).remove(0)
    else {
        panic!("registration without proof: {out:?}");
    };
    assert_eq!(proof.timestamp_ms, 1_800_000_000_250);
    proof
        .verify(
            &authorities,
            msg_type::REGISTRATION,
            &pool_handle,
            PE_ID,
            Some(&pool_element),
            wall,
        )
        .expect("registration proof verifies");
    pe.on_event(t0, Input::Message(0, accept(PE_ID)));

    // A reissued certificate (another member key): re-registered at once.
    let out = pe.on_event(t0, Input::UpdateMembership(Some(Box::new(credentials(3)))));
    let Message::Registration {
        membership: Some(proof),
        ..
    } = sent_to(&out, 0).remove(0)
    else {
        panic!("no re-registration with the new proof: {out:?}");
    };
    assert_eq!(
        proof.certificate.member_key,
        SigningKey::from_bytes(&[3; 32]).verifying_key().to_bytes()
    );
    pe.on_event(t0, Input::Message(0, accept(PE_ID)));

    let out = pe.on_event(t0, Input::Shutdown);
    let Message::Deregistration {
        pool_handle,
        pe_identifier,
        membership: Some(proof),
    } = sent_to(&out, 0).remove(0)
    else {
        panic!("deregistration without proof: {out:?}");
    };
    proof
        .verify(
            &authorities,
            msg_type::DEREGISTRATION,
            &pool_handle,
            pe_identifier,
            None,
            wall,
        )
        .expect("deregistration proof verifies");
}

/// Only announced registrars: nothing to connect to until the server table
/// has a candidate; then the hunt walks the candidates and skips the slots
/// whose announces stopped.
#[test]
fn announced_registrars_join_and_leave_the_hunt() {
    let t0 = Instant::now();
    let mut announced_only = config(0);
    announced_only.registrars_announced = true;
    let mut pe = PoolElement::new(announced_only).unwrap();
    assert_eq!(pe.on_event(t0, Input::Start), vec![]);
    assert_eq!(pe.state(), PeState::HuntPause);
    assert_eq!(
        pe.poll_timeout(),
        None,
        "waits for an announce, not a timer"
    );
    // The first announce: registrar slot 0 appears and is tried at once.
    assert_eq!(
        pe.on_event(t0, Input::Registrars(vec![true])),
        vec![Output::Connect { registrar: 0 }]
    );
    // It fails; a second announced registrar appears, the first expires.
    let t1 = t0 + Duration::from_millis(100);
    let out = pe.on_event(t1, Input::AssociationDown(0));
    assert_eq!(out, vec![Output::Close { registrar: 0 }]);
    assert_eq!(pe.state(), PeState::HuntPause);
    assert_eq!(
        pe.on_event(t1, Input::Registrars(vec![false, true])),
        vec![Output::Connect { registrar: 1 }]
    );
    // Registrar 1 fails too: the round (one candidate) is over, pause; after
    // the pause the expired slot 0 is skipped.
    let out = pe.on_event(t1, Input::AssociationDown(1));
    assert_eq!(out, vec![Output::Close { registrar: 1 }]);
    let after_pause = pe.poll_timeout().expect("hunt pause");
    assert_eq!(
        pe.on_event(after_pause, Input::Timer),
        vec![Output::Connect { registrar: 1 }]
    );
    let out = pe.on_event(after_pause, Input::AssociationUp(1));
    assert!(matches!(
        sent_to(&out, 1)[..],
        [Message::Registration { .. }]
    ));
    let out = pe.on_event(after_pause, Input::Message(1, accept(PE_ID)));
    assert_eq!(out, vec![Output::Registered { registrar: 1 }]);
}

/// A static registrar stays first in the hunt; an announced one is tried
/// after it, and a refresh of the table while registered changes nothing.
#[test]
fn static_registrars_are_tried_alongside_announced_ones() {
    let t0 = Instant::now();
    let mut pe = PoolElement::new(config(1)).unwrap();
    assert_eq!(
        pe.on_event(t0, Input::Start),
        vec![Output::Connect { registrar: 0 }]
    );
    assert_eq!(pe.on_event(t0, Input::Registrars(vec![true, true])), vec![]);
    let out = pe.on_event(t0, Input::AssociationDown(0));
    assert_eq!(
        out,
        vec![
            Output::Close { registrar: 0 },
            Output::Connect { registrar: 1 }
        ]
    );
    pe.on_event(t0, Input::AssociationUp(1));
    let out = pe.on_event(t0, Input::Message(1, accept(PE_ID)));
    assert_eq!(out, vec![Output::Registered { registrar: 1 }]);
    // The announced home expires from the table: the live association is
    // proof enough, the registration stands.
    assert_eq!(
        pe.on_event(t0, Input::Registrars(vec![true, false])),
        vec![]
    );
    assert_eq!(pe.state(), PeState::Registered { registrar: 1 });
}

#[test]
fn no_registrars_at_all_is_still_a_configuration_error() {
    assert!(PoolElement::new(config(0)).is_err());
    let mut announced = config(0);
    announced.registrars_announced = true;
    assert!(PoolElement::new(announced).is_ok());
}
