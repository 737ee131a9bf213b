//! Sans-IO tests of the Pool User with a fake clock.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use asap_client::pool_user::{CacheMiss, Input, Output, PoolUser, PoolUserConfig, ResolutionError};
use asap_client::selection_policy_from_params;
use policies::PolicyParams;
use protocol::rserpool::asap::Message;
use protocol::rserpool::params::cause_code;
use protocol::rserpool::{
    ErrorCause, OperationError, PoolElement, PoolHandle, TransportAddress, TransportKind,
    TransportUse,
};

fn handle() -> PoolHandle {
    PoolHandle::from("ipfix-collectors")
}

fn config(registrars: usize) -> PoolUserConfig {
    PoolUserConfig {
        registrar_count: registrars,
        registrars_announced: false,
        cache_lifetime: Duration::from_secs(5),
        request_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(400),
        resolution_items: Some(u32::MAX),
        selector_seed: 7,
    }
}

fn pe(id: u32, params: PolicyParams) -> PoolElement {
    PoolElement {
        pe_identifier: id,
        home_enrp_server_identifier: 1,
        registration_life: 30_000,
        user_transport: TransportAddress {
            kind: TransportKind::Tcp(TransportUse::DataPlusControl),
            port: 4739,
            addresses: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, id as u8))],
        },
        policy: selection_policy_from_params(&params),
        asap_transport: None,
    }
}

fn response(pool_elements: Vec<PoolElement>) -> Vec<u8> {
    Message::HandleResolutionResponse {
        reject: false,
        pool_handle: handle(),
        policy: None,
        pool_elements,
        error: None,
    }
    .to_bytes()
}

fn priority_pool() -> Vec<PoolElement> {
    vec![
        pe(1, PolicyParams::Priority { priority: 10 }),
        pe(2, PolicyParams::Priority { priority: 20 }),
    ]
}

fn sent_to(outputs: &[Output], registrar: usize) -> Vec<Message> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send {
                registrar: r,
                bytes,
            } if *r == registrar => Some(Message::decode(bytes).expect("PU sends valid ASAP")),
            _ => None,
        })
        .collect()
}

fn resolution_request() -> Message {
    Message::HandleResolution {
        pool_handle: handle(),
        items: Some(u32::MAX),
    }
}

fn resolved_ids(outputs: &[Output]) -> Option<(Vec<u32>, bool)> {
    outputs.iter().find_map(|o| match o {
        Output::Resolved {
            pool_elements,
            from_cache,
            ..
        } => Some((pool_elements.iter().map(|p| p.pe_id).collect(), *from_cache)),
        _ => None,
    })
}

/// A PU that resolved `pool` at registrar 0 at `t0`.
fn resolved(t0: Instant, registrars: usize, pool: Vec<PoolElement>) -> PoolUser {
    let mut pu = PoolUser::new(config(registrars));
    assert_eq!(
        pu.on_event(t0, Input::Resolve(handle())),
        vec![Output::Connect { registrar: 0 }]
    );
    let out = pu.on_event(t0, Input::AssociationUp(0));
    assert_eq!(sent_to(&out, 0), vec![resolution_request()]);
    let out = pu.on_event(t0, Input::Message(0, response(pool)));
    assert!(resolved_ids(&out).is_some(), "{out:?}");
    pu
}

#[test]
fn resolves_at_the_registrar_then_answers_from_the_cache() {
    let t0 = Instant::now();
    let mut pu = PoolUser::new(config(2));
    pu.on_event(t0, Input::Resolve(handle()));
    let out = pu.on_event(t0, Input::AssociationUp(0));
    assert_eq!(sent_to(&out, 0), vec![resolution_request()]);
    let out = pu.on_event(t0, Input::Message(0, response(priority_pool())));
    assert_eq!(resolved_ids(&out), Some((vec![1, 2], false)));
    let cached = pu.cached(&handle()).unwrap();
    assert_eq!(cached[1].policy, PolicyParams::Priority { priority: 20 });
    assert_eq!(cached[0].user_transport.port, 4739);
    assert_eq!(pu.poll_timeout(), None, "nothing outstanding");

    let out = pu.on_event(t0 + Duration::from_secs(1), Input::Resolve(handle()));
    assert_eq!(resolved_ids(&out), Some((vec![1, 2], true)));
    assert!(sent_to(&out, 0).is_empty(), "fresh entry: no request");
}

#[test]
fn stale_cache_entry_triggers_a_new_resolution() {
    let t0 = Instant::now();
    let mut pu = resolved(t0, 1, priority_pool());
    let almost = t0 + Duration::from_millis(4_999);
    assert!(pu.is_fresh(almost, &handle()));
    assert!(pu.select(almost, &handle(), 1).is_ok());

    let stale = t0 + Duration::from_secs(5);
    assert_eq!(pu.select(stale, &handle(), 1), Err(CacheMiss::Stale));
    let out = pu.on_event(stale, Input::Resolve(handle()));
    assert_eq!(sent_to(&out, 0), vec![resolution_request()]);
    assert_eq!(resolved_ids(&out), None);
    // The registrar's new view replaces the old one.
    let out = pu.on_event(
        stale,
        Input::Message(
            0,
            response(vec![pe(3, PolicyParams::Priority { priority: 5 })]),
        ),
    );
    assert_eq!(resolved_ids(&out), Some((vec![3], false)));
    assert_eq!(pu.select(stale, &handle(), 3).unwrap()[0].pe_id, 3);
}

#[test]
fn invalidate_forces_the_next_resolve_to_the_registrar() {
    let t0 = Instant::now();
    let mut pu = resolved(t0, 1, priority_pool());
    pu.invalidate(t0, &handle());
    let out = pu.on_event(t0, Input::Resolve(handle()));
    assert_eq!(sent_to(&out, 0), vec![resolution_request()]);
}

#[test]
fn unreachable_pe_is_reported_and_dropped_from_the_cache() {
    let t0 = Instant::now();
    let mut pu = resolved(t0, 1, priority_pool());
    let out = pu.on_event(
        t0,
        Input::ReportUnreachable {
            pool_handle: handle(),
            pe_id: 2,
        },
    );
    assert_eq!(
        sent_to(&out, 0),
        vec![Message::EndpointUnreachable {
            pool_handle: handle(),
            pe_identifier: 2
        }]
    );
    let ids: Vec<u32> = pu
        .cached(&handle())
        .unwrap()
        .iter()
        .map(|p| p.pe_id)
        .collect();
    assert_eq!(ids, vec![1]);
    for _ in 0..5 {
        assert_eq!(pu.select(t0, &handle(), 2).unwrap()[0].pe_id, 1);
    }
    pu.on_event(
        t0,
        Input::ReportUnreachable {
            pool_handle: handle(),
            pe_id: 1,
        },
    );
    assert_eq!(pu.select(t0, &handle(), 1), Err(CacheMiss::Empty));
}

#[test]
fn unreachable_report_waits_for_an_association() {
    let t0 = Instant::now();
    let mut pu = PoolUser::new(config(2));
    let out = pu.on_event(
        t0,
        Input::ReportUnreachable {
            pool_handle: handle(),
            pe_id: 9,
        },
    );
    assert_eq!(out, vec![Output::Connect { registrar: 0 }]);
    let out = pu.on_event(t0, Input::AssociationUp(0));
    assert_eq!(
        sent_to(&out, 0),
        vec![Message::EndpointUnreachable {
            pool_handle: handle(),
            pe_identifier: 9
        }]
    );
    assert_eq!(pu.poll_timeout(), None, "a sent report expects no answer");
}

#[test]
fn silent_registrar_is_left_for_the_next_one() {
    let t0 = Instant::now();
    let mut pu = PoolUser::new(config(3));
    pu.on_event(t0, Input::Resolve(handle()));
    pu.on_event(t0, Input::AssociationUp(0));
    let deadline = pu.poll_timeout().unwrap();
    assert_eq!(deadline, t0 + Duration::from_millis(500));
    assert!(
        pu.on_event(deadline - Duration::from_millis(1), Input::Timer)
            .is_empty()
    );
    let out = pu.on_event(deadline, Input::Timer);
    assert_eq!(
        out,
        vec![
            Output::Close { registrar: 0 },
            Output::Connect { registrar: 1 }
        ]
    );
    let out = pu.on_event(deadline, Input::AssociationUp(1));
    assert_eq!(sent_to(&out, 1), vec![resolution_request()]);
    // The old registrar's late answer is not taken.
    assert!(
        pu.on_event(deadline, Input::Message(0, response(priority_pool())))
            .is_empty()
    );
    let out = pu.on_event(deadline, Input::Message(1, response(priority_pool())));
    assert_eq!(resolved_ids(&out), Some((vec![1, 2], false)));
}

#[test]
fn resolution_fails_once_every_registrar_failed() {
    let t0 = Instant::now();
    let mut pu = PoolUser::new(config(2));
    pu.on_event(t0, Input::Resolve(handle()));
    // Registrar 0 does not come up in time, registrar 1 drops the association.
    let out = pu.on_event(t0 + Duration::from_millis(400), Input::Timer);
    assert_eq!(
        out,
        vec![
            Output::Close { registrar: 0 },
            Output::Connect { registrar: 1 }
        ]
    );
    let out = pu.on_event(t0, Input::AssociationDown(1));
    assert_eq!(
        out,
        vec![
            Output::Close { registrar: 1 },
            Output::ResolutionFailed {
                pool_handle: handle(),
                error: ResolutionError::NoRegistrarAnswered
            }
        ]
    );
    assert_eq!(pu.poll_timeout(), None);
}

#[test]
fn rejected_resolution_surfaces_the_cause() {
    let t0 = Instant::now();
    let mut pu = PoolUser::new(config(1));
    pu.on_event(t0, Input::Resolve(handle()));
    pu.on_event(t0, Input::AssociationUp(0));
    let error = OperationError {
        causes: vec![ErrorCause {
            code: cause_code::UNKNOWN_POOL_HANDLE,
            info: Vec::new(),
        }],
    };
    let reject = Message::HandleResolutionResponse {
        reject: true,
        pool_handle: handle(),
        policy: None,
        pool_elements: Vec::new(),
        error: Some(error.clone()),
    };
    let out = pu.on_event(t0, Input::Message(0, reject.to_bytes()));
    assert_eq!(
        out,
        vec![Output::ResolutionFailed {
            pool_handle: handle(),
            error: ResolutionError::Rejected { error: Some(error) }
        }]
    );
    assert_eq!(pu.select(t0, &handle(), 1), Err(CacheMiss::NotCached));
}

#[test]
fn priority_selection_and_failback_detection() {
    let t0 = Instant::now();
    let mut pu = resolved(t0, 1, priority_pool());
    // Highest priority first.
    let chosen: Vec<u32> = pu
        .select(t0, &handle(), 2)
        .unwrap()
        .iter()
        .map(|p| p.pe_id)
        .collect();
    assert_eq!(chosen, vec![2, 1]);
    // On the backup (1) while the primary (2) is listed: fail back.
    assert_eq!(pu.should_fail_back(&handle(), 1), Some(2));
    assert_eq!(pu.should_fail_back(&handle(), 2), None, "already on top");

    // The primary died and was reported: nothing to fail back to until a
    // later resolution lists it again.
    pu.on_event(
        t0,
        Input::ReportUnreachable {
            pool_handle: handle(),
            pe_id: 2,
        },
    );
    assert_eq!(pu.should_fail_back(&handle(), 1), None);
    pu.invalidate(t0, &handle());
    pu.on_event(t0, Input::Resolve(handle()));
    pu.on_event(t0, Input::Message(0, response(priority_pool())));
    assert_eq!(pu.should_fail_back(&handle(), 1), Some(2));
}

#[test]
fn round_robin_rotates_over_the_cached_list() {
    let t0 = Instant::now();
    let pool = (1..=3).map(|id| pe(id, PolicyParams::RoundRobin)).collect();
    let mut pu = resolved(t0, 1, pool);
    let firsts: Vec<u32> = (0..6)
        .map(|_| pu.select(t0, &handle(), 1).unwrap()[0].pe_id)
        .collect();
    assert_eq!(firsts, vec![1, 2, 3, 1, 2, 3]);
}

#[test]
fn concurrent_resolutions_of_one_handle_share_one_request() {
    let t0 = Instant::now();
    let mut pu = PoolUser::new(config(1));
    pu.on_event(t0, Input::Resolve(handle()));
    assert!(pu.on_event(t0, Input::Resolve(handle())).is_empty());
    let out = pu.on_event(t0, Input::AssociationUp(0));
    assert_eq!(sent_to(&out, 0).len(), 1);
}

/// Only announced registrars: a resolution with no candidate fails at once
/// (the caller retries), and one with a candidate goes there.
#[test]
fn resolution_uses_announced_registrars_when_there_are_some() {
    let t0 = Instant::now();
    let mut announced_only = config(0);
    announced_only.registrars_announced = true;
    let mut pu = PoolUser::new(announced_only);
    let out = pu.on_event(t0, Input::Resolve(handle()));
    assert_eq!(
        out,
        vec![Output::ResolutionFailed {
            pool_handle: handle(),
            error: ResolutionError::NoRegistrarAnswered,
        }]
    );
    assert_eq!(pu.poll_timeout(), None);
    // Two registrars announced, the first already expired.
    assert_eq!(
        pu.on_event(t0, Input::Registrars(vec![false, true])),
        vec![]
    );
    let out = pu.on_event(t0, Input::Resolve(handle()));
    assert_eq!(out, vec![Output::Connect { registrar: 1 }]);
    let out = pu.on_event(t0, Input::AssociationUp(1));
    assert_eq!(sent_to(&out, 1), vec![resolution_request()]);
    let out = pu.on_event(t0, Input::Message(1, response(priority_pool())));
    assert_eq!(resolved_ids(&out), Some((vec![1, 2], false)));
}
