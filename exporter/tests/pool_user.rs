//! The sans-IO pool user core with a fake clock and scripted events:
//! failover, replay after the cookie, failback after the drain, waiting
//! with both collectors down, cookie timeout, back-pressure.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use asap_client::PoolElementInfo;
use exporter::pool_user::{
    BEST_EFFORT_STREAM, BILLING_STREAM, ConnectReason, CookieRejectReason, Exporter,
    ExporterConfig, FAST_FAILBACK_CHECKS_FOR, FailureCause, IPFIX_PPID, Notice, Output,
    RecordError,
};
use exporter::replay::{BufferedRecord, ReplayLimits};
use exporter::sequence::{DomainState, ExporterState};
use exporter::spill::MemorySpill;
use policies::PolicyParams;
use protocol::billing::{BillingCookie, CookieKeys, CookieSeal};
use protocol::ipfix;
use protocol::ipfix::flow::{FLOW_RECORD_LEN, FLOW_TEMPLATE_ID, FlowRecord, flow_template};
use protocol::ipfix::reliability::{self, ReliabilityStatistics};
use protocol::ipfix::{Session, SessionConfig};
use protocol::rserpool::ASAP_SCTP_PPID;
use protocol::rserpool::params::{TransportAddress, TransportKind, TransportUse};
use protocol::signing::SigningKey;
use transport::Reliability;

const EXPORTER: u32 = 77;
const DOMAIN: u32 = 1;
const PRIMARY: u32 = 0xa;
const BACKUP: u32 = 0xb;
const KEY: &[u8] = b"pool key";

fn pe(pe_id: u32, priority: u32) -> PoolElementInfo {
    PoolElementInfo {
        pe_id,
        user_transport: TransportAddress {
            kind: TransportKind::Sctp(TransportUse::DataPlusControl),
            port: 4739,
            addresses: vec!["127.0.0.1".parse().unwrap()],
        },
        policy: PolicyParams::Priority { priority },
        registration_life: 30_000,
        home_registrar_id: 1,
    }
}

fn config() -> ExporterConfig {
    let mut config = ExporterConfig::new(EXPORTER);
    config.cookie_timeout = Duration::from_millis(500);
    config.failback_check = Duration::from_millis(200);
    config.drain_timeout = Duration::from_millis(1000);
    config.retry_interval = Duration::from_millis(300);
    config.replay = ReplayLimits::memory(1000);
    config
}

struct Harness {
    exporter: Exporter,
    now: Instant,
}

impl Harness {
    fn new(config: ExporterConfig) -> Self {
        Self::with_state(config, ExporterState::new(EXPORTER))
    }

    fn with_state(config: ExporterConfig, state: ExporterState) -> Self {
        let now = Instant::now();
        let exporter = Exporter::new(
            config,
            state,
            vec![flow_template()],
            now,
            1_700_000_000_000,
            Default::default(),
        );
        Self { exporter, now }
    }

    fn outputs(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        while let Some(output) = self.exporter.poll_output(self.now) {
            out.push(output);
        }
        out
    }

    fn advance(&mut self, by: Duration) -> Vec<Output> {
        self.now += by;
        self.exporter.handle_timeout(self.now);
        self.outputs()
    }

    fn push(&mut self, count: u64) {
        for _ in 0..count {
            let n = self.exporter.next_sequence(DOMAIN);
            let mut bytes = Vec::new();
            FlowRecord::synthetic(n, 0).encode(&mut bytes);
            self.exporter
                .push_record(DOMAIN, FLOW_TEMPLATE_ID, bytes)
                .unwrap();
        }
    }

    /// Start, select `candidates`, association up: returns the association.
    fn connect_to(&mut self, candidates: Vec<PoolElementInfo>) -> (u64, Vec<Output>) {
        self.exporter.handle_selected(self.now, Ok(candidates));
        let outputs = self.outputs();
        let association = connect_of(&outputs).expect("a Connect").0;
        self.exporter.handle_association_up(self.now, association);
        (association, self.outputs())
    }

    fn cookie(&mut self, association: u64, pe_id: u32, last: u64) -> Vec<Output> {
        let cookie = BillingCookie::sign(KEY, EXPORTER, DOMAIN, last, pe_id, 1);
        self.send_cookie(association, &cookie)
    }

    fn send_cookie(&mut self, association: u64, cookie: &BillingCookie) -> Vec<Output> {
        self.exporter.handle_message(
            self.now,
            association,
            ASAP_SCTP_PPID,
            &cookie.cookie_message_bytes(),
        );
        self.outputs()
    }
}

fn connect_of(outputs: &[Output]) -> Option<(u64, u32)> {
    outputs.iter().find_map(|o| match o {
        Output::Connect { association, pe } => Some((*association, pe.pe_id)),
        _ => None,
    })
}

/// Cookie Echoes sent, decoded.
fn cookie_echoes(outputs: &[Output]) -> Vec<BillingCookie> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send { ppid, payload, .. } if *ppid == ASAP_SCTP_PPID => {
                let (_, cookie) = protocol::billing::cookie_from_asap_bytes(payload).unwrap();
                Some(cookie)
            }
            _ => None,
        })
        .collect()
}

/// Record sequences of the data records sent, rebuilt from the IPFIX
/// header (low 32 bits of the first record) and the record count.
fn data_sequences(outputs: &[Output]) -> Vec<u64> {
    let mut sequences = Vec::new();
    for output in outputs {
        let Output::Send { ppid, payload, .. } = output else {
            continue;
        };
        if *ppid != IPFIX_PPID || is_statistics(payload) {
            continue;
        }
        let first = u32::from_be_bytes(payload[8..12].try_into().unwrap());
        let mut offset = 16;
        let mut index = 0;
        while offset < payload.len() {
            let set_id = u16::from_be_bytes([payload[offset], payload[offset + 1]]);
            let set_len = u16::from_be_bytes([payload[offset + 2], payload[offset + 3]]) as usize;
            if set_id >= 256 {
                let records = (set_len - 4) / FLOW_RECORD_LEN;
                for _ in 0..records {
                    sequences.push(u64::from(first) + index);
                    index += 1;
                }
            }
            offset += set_len;
        }
    }
    sequences
}

/// A message of the reliability statistics' own observation domain.
fn is_statistics(payload: &[u8]) -> bool {
    u32::from_be_bytes(payload[12..16].try_into().unwrap()) == reliability::STATISTICS_DOMAIN
}

/// The reliability statistics records sent, decoded by a collector session.
fn statistics(outputs: &[Output]) -> Vec<ReliabilityStatistics> {
    let mut session = Session::new(SessionConfig::new(ipfix::TransportKind::Sctp));
    let mut out = Vec::new();
    for output in outputs {
        let Output::Send {
            ppid,
            payload,
            stream,
            ..
        } = output
        else {
            continue;
        };
        if *ppid != IPFIX_PPID || !is_statistics(payload) {
            continue;
        }
        assert_eq!(
            *stream, 0,
            "statistics go after the records on the billing stream"
        );
        let report = session
            .process(payload, 0, 0, |r| {
                assert!(reliability::is_statistics_template(r.template));
                out.push(ReliabilityStatistics::decode(r.bytes).unwrap());
            })
            .unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
    }
    out
}

fn has_report(outputs: &[Output], pe_id: u32) -> bool {
    outputs
        .iter()
        .any(|o| matches!(o, Output::ReportUnreachable { pe_id: p } if *p == pe_id))
}

#[test]
fn first_association_introduces_each_domain_then_streams() {
    let mut h = Harness::new(config());
    h.exporter.start();
    assert_eq!(h.outputs(), vec![Output::Select]);
    h.push(3);
    let (_, outputs) = h.connect_to(vec![pe(PRIMARY, 2), pe(BACKUP, 1)]);
    let echoes = cookie_echoes(&outputs);
    assert_eq!(echoes, vec![BillingCookie::introduction(EXPORTER, DOMAIN)]);
    // Cookie Echo comes before any IPFIX message.
    let first_send = outputs
        .iter()
        .find_map(|o| match o {
            Output::Send { ppid, .. } => Some(*ppid),
            _ => None,
        })
        .unwrap();
    assert_eq!(first_send, ASAP_SCTP_PPID);
    assert_eq!(data_sequences(&outputs), vec![0, 1, 2]);
    assert_eq!(h.exporter.current_pe(), Some(PRIMARY));
}

#[test]
fn sequence_reservation_is_persisted_before_records_go_out() {
    let mut cfg = config();
    cfg.sequence_reservation = 10;
    let mut h = Harness::new(cfg);
    h.exporter.start();
    h.outputs();
    let (association, _) = h.connect_to(vec![pe(PRIMARY, 2)]);
    h.push(12);
    let outputs = h.outputs();
    let persisted: Vec<(usize, u64)> = outputs
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match o {
            Output::PersistState(state) => Some((i, state.domains[&DOMAIN].next_sequence)),
            _ => None,
        })
        .collect();
    // Record 0 reserves [0, 10), record 10 reserves [10, 20).
    assert_eq!(
        persisted.iter().map(|p| p.1).collect::<Vec<_>>(),
        vec![10, 20]
    );
    let first_data = outputs
        .iter()
        .position(|o| {
            matches!(
                o,
                Output::Send {
                    ppid: IPFIX_PPID,
                    ..
                }
            )
        })
        .unwrap();
    assert!(
        persisted[1].0 < first_data,
        "reservation persisted after sending"
    );
    assert_eq!(data_sequences(&outputs).len(), 12);
    let _ = association;
}

#[test]
fn failover_reports_selects_next_echoes_last_cookie_and_replays_after_it() {
    let mut h = Harness::new(config());
    h.exporter.start();
    h.outputs();
    let (primary, _) = h.connect_to(vec![pe(PRIMARY, 2), pe(BACKUP, 1)]);
    h.push(10);
    assert_eq!(data_sequences(&h.outputs()), (0..10).collect::<Vec<_>>());
    h.cookie(primary, PRIMARY, 4);
    assert_eq!(
        h.exporter.buffered_records(),
        5,
        "0..=4 dropped by the cookie"
    );

    h.exporter.handle_association_ended(h.now, primary);
    let outputs = h.outputs();
    assert!(
        has_report(&outputs, PRIMARY),
        "Endpoint Unreachable for the primary"
    );
    assert!(outputs.contains(&Output::Close {
        association: primary
    }));
    assert!(outputs.contains(&Output::Notice(Notice::FailoverStarted {
        pe_id: PRIMARY,
        cause: FailureCause::AssociationEnded
    })));
    assert_eq!(outputs.last(), Some(&Output::Select));

    // The ASAP PU no longer lists the primary (reported); the backup is next.
    let (backup, outputs) = h.connect_to(vec![pe(BACKUP, 1)]);
    assert_ne!(backup, primary);
    let echoes = cookie_echoes(&outputs);
    assert_eq!(echoes.len(), 1);
    assert_eq!(echoes[0].last_record_sequence, 4);
    assert_eq!(echoes[0].pe_identifier, PRIMARY, "the primary's own cookie");
    assert_eq!(echoes[0].verify(KEY), Ok(()), "echoed unchanged");
    assert_eq!(
        data_sequences(&outputs),
        vec![5, 6, 7, 8, 9],
        "exactly after the cookie"
    );
    assert!(outputs.contains(&Output::Notice(Notice::Streaming {
        pe_id: BACKUP,
        reason: ConnectReason::Failover,
        pending: 5
    })));
    assert_eq!(h.exporter.counters().failovers, 1);
    assert_eq!(h.exporter.counters().records_replayed, 5);

    // Old association's late events are ignored.
    h.cookie(primary, PRIMARY, 9);
    assert_eq!(h.exporter.cookie(DOMAIN).unwrap().last_record_sequence, 4);
}

#[test]
fn connect_failure_reports_and_tries_the_next_pe_first() {
    let mut h = Harness::new(config());
    h.exporter.start();
    h.outputs();
    h.exporter
        .handle_selected(h.now, Ok(vec![pe(PRIMARY, 2), pe(BACKUP, 1)]));
    let (association, pe_id) = connect_of(&h.outputs()).unwrap();
    assert_eq!(pe_id, PRIMARY);
    h.exporter.handle_association_ended(h.now, association);
    let outputs = h.outputs();
    assert!(has_report(&outputs, PRIMARY));
    assert_eq!(outputs.last(), Some(&Output::Select));
    // A registrar that still lists the dead primary: skipped this round.
    h.exporter
        .handle_selected(h.now, Ok(vec![pe(PRIMARY, 2), pe(BACKUP, 1)]));
    assert_eq!(connect_of(&h.outputs()).unwrap().1, BACKUP);
}

#[test]
fn cookie_timeout_triggers_failover() {
    let mut h = Harness::new(config());
    h.exporter.start();
    h.outputs();
    let (primary, _) = h.connect_to(vec![pe(PRIMARY, 2), pe(BACKUP, 1)]);
    h.push(5);
    h.outputs();
    // Progress within the timeout keeps the association.
    let outputs = h.advance(Duration::from_millis(400));
    assert!(!has_report(&outputs, PRIMARY));
    h.cookie(primary, PRIMARY, 1);
    let outputs = h.advance(Duration::from_millis(400));
    assert!(
        !has_report(&outputs, PRIMARY),
        "cookie progress restarted the timer"
    );
    let outputs = h.advance(Duration::from_millis(200));
    assert!(outputs.contains(&Output::Notice(Notice::FailoverStarted {
        pe_id: PRIMARY,
        cause: FailureCause::CookieTimeout
    })));
    // A stalled cookie is a protocol problem, not unreachability: the
    // registrar is not told (one confused exporter must not get a healthy
    // collector removed for the whole pool).
    assert!(
        !has_report(&outputs, PRIMARY),
        "a cookie timeout is not reported as Endpoint Unreachable"
    );
    assert_eq!(h.exporter.counters().protocol_failovers, 1);
    let (_, outputs) = h.connect_to(vec![pe(BACKUP, 1)]);
    assert_eq!(data_sequences(&outputs), vec![2, 3, 4]);
}

/// A collector that keeps acknowledging our data is alive and reading, only
/// slow to commit (a busy machine): its transport progress moves the cookie
/// deadline on, up to `cookie_stall_timeout`; without it, and past that
/// bound, the cookie timeout fails over as before.
#[test]
fn transport_progress_extends_the_cookie_wait_up_to_the_stall_timeout() {
    let mut cfg = config();
    cfg.cookie_stall_timeout = Duration::from_millis(1_200);
    let mut h = Harness::new(cfg);
    h.exporter.start();
    h.outputs();
    let (primary, _) = h.connect_to(vec![pe(PRIMARY, 2), pe(BACKUP, 1)]);
    h.push(5);
    h.outputs();
    let failed_over = |outputs: &[Output]| {
        outputs.contains(&Output::Notice(Notice::FailoverStarted {
            pe_id: PRIMARY,
            cause: FailureCause::CookieTimeout,
        }))
    };
    // 400 ms in, the collector acknowledges data: the deadline (500 ms)
    // moves to 900 ms.
    assert!(!failed_over(&h.advance(Duration::from_millis(400))));
    h.exporter.handle_transport_progress(h.now, primary, 3);
    assert!(!failed_over(&h.advance(Duration::from_millis(400))));
    // The same count again is no progress: at 900 ms it fails over...
    h.exporter.handle_transport_progress(h.now, primary, 3);
    // ...unless more is acknowledged (800 ms: deadline 1,200 ms, the cap).
    h.exporter.handle_transport_progress(h.now, primary, 4);
    assert!(!failed_over(&h.advance(Duration::from_millis(300))));
    // Progress goes on, but 1,200 ms without a cookie is the stall bound.
    h.exporter.handle_transport_progress(h.now, primary, 9);
    let outputs = h.advance(Duration::from_millis(100));
    assert!(failed_over(&outputs), "the stall timeout bounds the wait");
    assert_eq!(h.exporter.counters().cookie_waits_extended, 2);
}

#[test]
fn a_collector_that_acknowledges_nothing_more_is_left_at_the_cookie_timeout() {
    let mut h = Harness::new(config());
    h.exporter.start();
    h.outputs();
    let (primary, _) = h.connect_to(vec![pe(PRIMARY, 2), pe(BACKUP, 1)]);
    h.exporter.handle_transport_progress(h.now, primary, 2);
    h.push(5);
    h.outputs();
    h.exporter.handle_transport_progress(h.now, primary, 2);
    let outputs = h.advance(Duration::from_millis(500));
    assert!(outputs.contains(&Output::Notice(Notice::FailoverStarted {
        pe_id: PRIMARY,
        cause: FailureCause::CookieTimeout
    })));
}

#[test]
fn no_cookie_timeout_while_nothing_is_outstanding() {
    let mut h = Harness::new(config());
    h.exporter.start();
    h.outputs();
    let (primary, _) = h.connect_to(vec![pe(PRIMARY, 2)]);
    h.push(3);
    h.outputs();
    h.cookie(primary, PRIMARY, 2);
    let outputs = h.advance(Duration::from_secs(10));
    assert!(!has_report(&outputs, PRIMARY));
    assert!(h.exporter.is_drained());
}

#[test]
fn failback_waits_for_the_drain_before_switching() {
    let mut h = Harness::new(config());
    h.exporter.start();
    h.outputs();
    // Primary is down at start: on the backup.
    let (backup, _) = h.connect_to(vec![pe(BACKUP, 1)]);
    h.push(10);
    assert_eq!(data_sequences(&h.outputs()).len(), 10);
    h.cookie(backup, BACKUP, 3);

    let outputs = h.advance(Duration::from_millis(200));
    assert!(outputs.contains(&Output::CheckFailback {
        current: BACKUP,
        avoid: vec![]
    }));
    h.exporter
        .handle_failback_check(h.now, Some(pe(PRIMARY, 2)));
    let outputs = h.outputs();
    assert!(outputs.contains(&Output::Notice(Notice::DrainStarted {
        from: BACKUP,
        to: PRIMARY
    })));
    assert!(connect_of(&outputs).is_none(), "no switch before the drain");

    // New records wait; nothing new goes to the backup while draining.
    h.push(5);
    let outputs = h.outputs();
    assert!(data_sequences(&outputs).is_empty());
    assert!(connect_of(&outputs).is_none());
    // A cookie short of everything sent: still draining.
    let outputs = h.cookie(backup, BACKUP, 8);
    assert!(connect_of(&outputs).is_none());
    // Covered: close the backup, open the primary.
    let outputs = h.cookie(backup, BACKUP, 9);
    assert!(outputs.contains(&Output::Close {
        association: backup
    }));
    assert!(!has_report(&outputs, BACKUP), "a failback is not a failure");
    let (primary, pe_id) = connect_of(&outputs).unwrap();
    assert_eq!(pe_id, PRIMARY);
    h.exporter.handle_association_up(h.now, primary);
    let outputs = h.outputs();
    let echoes = cookie_echoes(&outputs);
    assert_eq!(echoes[0].last_record_sequence, 9);
    assert_eq!(echoes[0].pe_identifier, BACKUP);
    assert_eq!(
        data_sequences(&outputs),
        vec![10, 11, 12, 13, 14],
        "no record sent twice"
    );
    assert_eq!(h.exporter.counters().failbacks, 1);
    assert_eq!(h.exporter.counters().failovers, 0);
    assert_eq!(h.exporter.counters().records_sent, 15);
}

fn is_failback_check(outputs: &[Output]) -> bool {
    outputs
        .iter()
        .any(|o| matches!(o, Output::CheckFailback { .. }))
}

/// Steps of `step` until the first failback check, answers it with "no
/// better PE", and returns the time it took to come.
fn failback_check_period(h: &mut Harness, step: Duration) -> Duration {
    let start = h.now;
    for _ in 0..1000 {
        if is_failback_check(&h.advance(step)) {
            h.exporter.handle_failback_check(h.now, None);
            return h.now - start;
        }
    }
    panic!("no failback check");
}

/// After a failover away from a better-priority PE the failback checks run
/// at `failback_check_after_failover` (a primary restarted on the spot is
/// found within one short period), back at home they run at
/// `failback_check`, and on a backup for longer than
/// FAST_FAILBACK_CHECKS_FOR too.
#[test]
fn failback_checks_are_fast_only_after_leaving_a_better_pe() {
    let mut cfg = config();
    cfg.cookie_timeout = Duration::from_secs(120);
    cfg.failback_check = Duration::from_millis(200);
    cfg.failback_check_after_failover = Duration::from_millis(50);
    let step = Duration::from_millis(10);
    let mut h = Harness::new(cfg);
    h.exporter.start();
    h.outputs();
    let (primary, _) = h.connect_to(vec![pe(PRIMARY, 2), pe(BACKUP, 1)]);
    assert_eq!(
        failback_check_period(&mut h, step),
        Duration::from_millis(200)
    );

    // The primary dies: on the backup, checks every 50 ms.
    h.exporter.handle_association_ended(h.now, primary);
    h.outputs();
    let (backup, _) = h.connect_to(vec![pe(BACKUP, 1)]);
    assert_eq!(
        failback_check_period(&mut h, step),
        Duration::from_millis(50)
    );
    // The registrar no longer lists the primary: still fast.
    assert_eq!(
        failback_check_period(&mut h, step),
        Duration::from_millis(50)
    );
    // It is back (after the holdoff): failback.
    h.advance(Duration::from_secs(1));
    h.exporter
        .handle_failback_check(h.now, Some(pe(PRIMARY, 2)));
    let outputs = h.outputs();
    assert!(outputs.contains(&Output::Close {
        association: backup
    }));
    let (primary, _) = connect_of(&outputs).unwrap();
    h.exporter.handle_association_up(h.now, primary);
    h.outputs();
    // Home again: the normal period.
    assert_eq!(
        failback_check_period(&mut h, step),
        Duration::from_millis(200)
    );

    // Another failover, and the primary stays away: fast for a minute,
    // then the normal period.
    h.exporter.handle_association_ended(h.now, primary);
    h.outputs();
    h.connect_to(vec![pe(BACKUP, 1)]);
    let until = h.now + FAST_FAILBACK_CHECKS_FOR;
    while h.now < until {
        let took = failback_check_period(&mut h, step);
        assert!(took <= Duration::from_millis(50), "{took:?}");
    }
    // The next check may still have been scheduled within the minute; the
    // one after it comes at the normal period.
    failback_check_period(&mut h, step);
    assert_eq!(
        failback_check_period(&mut h, step),
        Duration::from_millis(200)
    );
}

#[test]
fn failback_poll_answer_none_keeps_streaming() {
    let mut h = Harness::new(config());
    h.exporter.start();
    h.outputs();
    let (_, _) = h.connect_to(vec![pe(BACKUP, 1)]);
    let outputs = h.advance(Duration::from_millis(200));
    assert!(outputs.contains(&Output::CheckFailback {
        current: BACKUP,
        avoid: vec![]
    }));
    // No second poll while one is pending.
    let outputs = h.advance(Duration::from_millis(300));
    assert!(!outputs.contains(&Output::CheckFailback {
        current: BACKUP,
        avoid: vec![]
    }));
    h.exporter.handle_failback_check(h.now, None);
    let outputs = h.advance(Duration::from_millis(200));
    assert!(outputs.contains(&Output::CheckFailback {
        current: BACKUP,
        avoid: vec![]
    }));
    h.exporter.handle_failback_check(h.now, None);
    h.push(2);
    assert_eq!(data_sequences(&h.outputs()), vec![0, 1]);
}

#[test]
fn failback_drain_timeout_fails_over() {
    let mut h = Harness::new(config());
    h.exporter.start();
    h.outputs();
    let (_, _) = h.connect_to(vec![pe(BACKUP, 1)]);
    h.push(4);
    h.outputs();
    h.advance(Duration::from_millis(200));
    h.exporter
        .handle_failback_check(h.now, Some(pe(PRIMARY, 2)));
    h.outputs();
    // The cookie timeout (500 ms) is shorter here; make it the drain timer
    // that fires by keeping cookies coming for nothing new... none come:
    // whichever fires first, the exporter leaves the backup and selects a
    // new PE, without reporting it (a stall is not unreachability).
    let outputs = h.advance(Duration::from_millis(1000));
    assert!(!has_report(&outputs, BACKUP));
    assert!(outputs.iter().any(|o| matches!(
        o,
        Output::Notice(Notice::FailoverStarted { pe_id: BACKUP, .. })
    )));
    assert_eq!(outputs.last(), Some(&Output::Select));
    let (_, outputs) = h.connect_to(vec![pe(PRIMARY, 2)]);
    assert_eq!(
        data_sequences(&outputs),
        vec![0, 1, 2, 3],
        "replayed to the primary"
    );
}

#[test]
fn drain_timeout_itself_fails_over() {
    let mut cfg = config();
    cfg.cookie_timeout = Duration::from_secs(60);
    let mut h = Harness::new(cfg);
    h.exporter.start();
    h.outputs();
    let (_, _) = h.connect_to(vec![pe(BACKUP, 1)]);
    h.push(4);
    h.outputs();
    h.advance(Duration::from_millis(200));
    h.exporter
        .handle_failback_check(h.now, Some(pe(PRIMARY, 2)));
    h.outputs();
    let outputs = h.advance(Duration::from_millis(999));
    assert!(!has_report(&outputs, BACKUP));
    let outputs = h.advance(Duration::from_millis(1));
    assert!(outputs.contains(&Output::Notice(Notice::FailoverStarted {
        pe_id: BACKUP,
        cause: FailureCause::DrainTimeout
    })));
    assert!(
        !has_report(&outputs, BACKUP),
        "a drain stall is not reported"
    );
    assert_eq!(h.exporter.counters().protocol_failovers, 1);
}

#[test]
fn both_down_buffers_with_back_pressure_and_resumes_losslessly() {
    let mut cfg = config();
    cfg.replay = ReplayLimits::memory(20);
    let mut h = Harness::new(cfg);
    h.exporter.start();
    h.outputs();
    let (primary, _) = h.connect_to(vec![pe(PRIMARY, 2), pe(BACKUP, 1)]);
    h.push(6);
    h.outputs();
    h.cookie(primary, PRIMARY, 1);
    h.exporter.handle_association_ended(h.now, primary);
    h.outputs();
    // The backup is unreachable too.
    h.exporter.handle_selected(h.now, Ok(vec![pe(BACKUP, 1)]));
    let (backup, _) = connect_of(&h.outputs()).unwrap();
    h.exporter.handle_association_ended(h.now, backup);
    let outputs = h.outputs();
    assert!(has_report(&outputs, BACKUP));
    h.exporter
        .handle_selected(h.now, Err("no pool elements".into()));
    let outputs = h.outputs();
    assert!(matches!(
        outputs.last(),
        Some(Output::Notice(Notice::NoPoolElement { .. }))
    ));

    // Records keep coming: buffered until the buffer is full.
    for _ in 0..16 {
        let mut bytes = Vec::new();
        FlowRecord::synthetic(0, 0).encode(&mut bytes);
        h.exporter
            .push_record(DOMAIN, FLOW_TEMPLATE_ID, bytes)
            .unwrap();
    }
    assert!(!h.exporter.can_accept(DOMAIN));
    let mut bytes = Vec::new();
    FlowRecord::synthetic(0, 0).encode(&mut bytes);
    assert!(matches!(
        h.exporter.push_record(DOMAIN, FLOW_TEMPLATE_ID, bytes),
        Err(RecordError::Full)
    ));
    assert!(data_sequences(&h.outputs()).is_empty());

    // Retry after retry_interval; same failed PEs are eligible again.
    let outputs = h.advance(Duration::from_millis(300));
    assert!(outputs.contains(&Output::Select));
    // The cookie received before the outage was persisted meanwhile.
    assert!(
        outputs
            .iter()
            .any(|o| matches!(o, Output::PersistState(state)
        if state.domains[&DOMAIN].last_cookie.map(|c| c.last_record_sequence) == Some(1)))
    );
    let (primary2, outputs) = h.connect_to(vec![pe(PRIMARY, 2)]);
    assert_eq!(cookie_echoes(&outputs)[0].last_record_sequence, 1);
    assert_eq!(data_sequences(&outputs), (2..22).collect::<Vec<_>>());
    h.cookie(primary2, PRIMARY, 21);
    assert!(h.exporter.is_drained());
    assert!(h.exporter.can_accept(DOMAIN));
}

#[test]
fn unusable_cookies_are_rejected_even_without_keys() {
    // Without public keys the exporter still refuses what it can tell is
    // wrong: claims past what it sent, another exporter's cookie.
    for (cookie, reason) in [
        (
            BillingCookie::sign(KEY, EXPORTER, DOMAIN, 3, PRIMARY, 1),
            CookieRejectReason::BeyondSent,
        ),
        (
            BillingCookie::sign(KEY, EXPORTER + 1, DOMAIN, 1, PRIMARY, 1),
            CookieRejectReason::WrongExporter,
        ),
        (
            BillingCookie::sign(KEY, EXPORTER, DOMAIN + 5, 1, PRIMARY, 1),
            CookieRejectReason::WrongDomain,
        ),
    ] {
        let mut h = Harness::new(config());
        h.exporter.start();
        h.outputs();
        let (primary, _) = h.connect_to(vec![pe(PRIMARY, 2)]);
        h.push(3);
        h.outputs();
        let outputs = h.send_cookie(primary, &cookie);
        assert_rejected_and_left(&outputs, PRIMARY, reason);
        assert_eq!(h.exporter.cookie(DOMAIN), None);
        assert_eq!(h.exporter.buffered_records(), 3);
    }
}

const HOSTILE: u32 = 0x666;

fn ed25519(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// The pool's key (collectors hold the private half) and a config whose
/// exporter trusts only the public halves of `trusted`.
fn checking_config(trusted: &[&SigningKey]) -> ExporterConfig {
    let mut keys = CookieKeys::default();
    for key in trusted {
        keys.add_public_key(key.verifying_key());
    }
    let mut cfg = config();
    cfg.cookie_keys = Some(keys);
    cfg
}

fn v2(key: &SigningKey, last: u64, pe_id: u32) -> BillingCookie {
    BillingCookie::sign_ed25519(key, EXPORTER, DOMAIN, last, pe_id, 1)
}

fn assert_rejected_and_left(outputs: &[Output], pe_id: u32, reason: CookieRejectReason) {
    assert!(
        outputs.iter().any(|o| matches!(o,
            Output::Notice(Notice::CookieRejected { pe_id: Some(p), reason: r, .. })
                if *p == pe_id && *r == reason)),
        "{reason:?} from {pe_id:#x} in {outputs:?}"
    );
    assert!(has_report(outputs, pe_id), "reported unreachable");
    assert!(outputs.contains(&Output::Notice(Notice::FailoverStarted {
        pe_id,
        cause: FailureCause::CookieRejected
    })));
    assert!(outputs.iter().any(|o| matches!(o, Output::Close { .. })));
    assert!(outputs.contains(&Output::Select), "fails over");
}

#[test]
fn a_cookie_signed_by_a_trusted_key_releases_records() {
    let (old, new) = (ed25519(1), ed25519(2));
    // Rotation: old and new both trusted.
    let mut h = Harness::new(checking_config(&[&old, &new]));
    h.exporter.start();
    h.outputs();
    let (primary, _) = h.connect_to(vec![pe(PRIMARY, 2)]);
    h.push(10);
    h.outputs();
    let outputs = h.send_cookie(primary, &v2(&old, 4, PRIMARY));
    assert!(outputs.is_empty(), "{outputs:?}");
    assert_eq!(h.exporter.buffered_records(), 5);
    h.send_cookie(primary, &v2(&new, 9, PRIMARY));
    assert!(h.exporter.is_drained());
    assert_eq!(h.exporter.counters().cookies_rejected, 0);
}

#[test]
fn an_untrusted_key_bad_signature_or_unsigned_cookie_releases_nothing() {
    let (pool, stranger) = (ed25519(1), ed25519(7));
    let mut forged = v2(&stranger, 2, PRIMARY);
    if let CookieSeal::Ed25519 { key_id, .. } = &mut forged.seal {
        *key_id = protocol::signing::key_id(&pool.verifying_key());
    }
    for (cookie, reason) in [
        (v2(&stranger, 2, PRIMARY), CookieRejectReason::UnknownKey),
        (forged, CookieRejectReason::BadSignature),
        (
            BillingCookie::sign(KEY, EXPORTER, DOMAIN, 2, PRIMARY, 1),
            CookieRejectReason::Unsigned,
        ),
        (
            BillingCookie::introduction(EXPORTER, DOMAIN),
            CookieRejectReason::Unsigned,
        ),
    ] {
        let mut h = Harness::new(checking_config(&[&pool]));
        h.exporter.start();
        h.outputs();
        let (primary, _) = h.connect_to(vec![pe(PRIMARY, 2), pe(BACKUP, 1)]);
        h.push(3);
        h.outputs();
        let outputs = h.send_cookie(primary, &cookie);
        assert_rejected_and_left(&outputs, PRIMARY, reason);
        assert_eq!(h.exporter.cookie(DOMAIN), None, "{reason:?}");
        assert_eq!(
            h.exporter.buffered_records(),
            3,
            "{reason:?}: nothing released"
        );
        assert_eq!(h.exporter.counters().cookies_rejected, 1);
        // Everything goes again to the next PE.
        let (_, outputs) = h.connect_to(vec![pe(PRIMARY, 2), pe(BACKUP, 1)]);
        assert_eq!(connect_of(&outputs), None);
        assert_eq!(h.exporter.current_pe(), Some(BACKUP), "{reason:?}");
        assert_eq!(data_sequences(&outputs), vec![0, 1, 2]);
    }
}

#[test]
fn a_cookie_beyond_what_this_association_sent_is_refused_even_if_signed() {
    let pool = ed25519(1);
    let mut h = Harness::new(checking_config(&[&pool]));
    h.exporter.start();
    h.outputs();
    let (primary, _) = h.connect_to(vec![pe(PRIMARY, 2), pe(BACKUP, 1)]);
    h.push(3);
    h.outputs(); // 0..=2 sent
    h.push(2); // 3, 4 numbered, not sent yet
    let outputs = h.send_cookie(primary, &v2(&pool, 3, PRIMARY));
    assert_rejected_and_left(&outputs, PRIMARY, CookieRejectReason::BeyondSent);
    assert_eq!(h.exporter.buffered_records(), 5);
}

#[test]
fn a_hostile_top_priority_pe_is_left_and_never_failed_back_to() {
    let (pool, hostile_key) = (ed25519(1), ed25519(6));
    let mut h = Harness::new(checking_config(&[&pool]));
    h.exporter.start();
    h.outputs();
    let (primary, _) = h.connect_to(vec![pe(PRIMARY, 2)]);
    h.push(4);
    h.outputs();
    h.send_cookie(primary, &v2(&pool, 3, PRIMARY));
    assert!(h.exporter.is_drained());
    // A hostile PE registers at a higher priority: failback to it (nothing
    // outstanding, so at once).
    h.advance(Duration::from_millis(200));
    h.exporter
        .handle_failback_check(h.now, Some(pe(HOSTILE, 9)));
    let outputs = h.outputs();
    let (hostile, to) = connect_of(&outputs).unwrap();
    assert_eq!(to, HOSTILE);
    h.exporter.handle_association_up(h.now, hostile);
    h.push(6);
    let outputs = h.outputs();
    assert_eq!(cookie_echoes(&outputs)[0].last_record_sequence, 3);
    assert_eq!(data_sequences(&outputs), (4..10).collect::<Vec<_>>());
    // It "acknowledges" everything with its own key.
    let outputs = h.send_cookie(hostile, &v2(&hostile_key, 9, HOSTILE));
    assert_rejected_and_left(&outputs, HOSTILE, CookieRejectReason::UnknownKey);
    assert_eq!(h.exporter.buffered_records(), 6, "4..=9 kept");
    assert_eq!(h.exporter.untrusted_pes(h.now), vec![HOSTILE]);
    // The registrar still lists it first: skipped.
    let (primary, outputs) = h.connect_to(vec![pe(HOSTILE, 9), pe(PRIMARY, 2)]);
    assert_eq!(h.exporter.current_pe(), Some(PRIMARY));
    assert_eq!(
        data_sequences(&outputs),
        (4..10).collect::<Vec<_>>(),
        "replay"
    );
    // Failback checks leave it out, and a target naming it is ignored.
    let outputs = h.advance(Duration::from_millis(200));
    assert!(outputs.contains(&Output::CheckFailback {
        current: PRIMARY,
        avoid: vec![HOSTILE]
    }));
    h.exporter
        .handle_failback_check(h.now, Some(pe(HOSTILE, 9)));
    let outputs = h.outputs();
    assert_eq!(connect_of(&outputs), None, "no flapping back");
    assert_eq!(h.exporter.current_pe(), Some(PRIMARY));
    h.send_cookie(primary, &v2(&pool, 9, PRIMARY));
    assert!(
        h.exporter.is_drained(),
        "the stream finishes on the primary"
    );
    // Hours later it is still avoided (default: a day).
    h.advance(Duration::from_secs(3600));
    assert_eq!(h.exporter.untrusted_pes(h.now), vec![HOSTILE]);
}

#[test]
fn an_untrusted_pe_may_be_used_again_after_the_configured_time() {
    let pool = ed25519(1);
    let mut cfg = checking_config(&[&pool]);
    cfg.untrusted_for = Duration::from_secs(60);
    let mut h = Harness::new(cfg);
    h.exporter.start();
    h.outputs();
    let (primary, _) = h.connect_to(vec![pe(PRIMARY, 2)]);
    h.push(1);
    h.outputs();
    h.send_cookie(primary, &v2(&ed25519(5), 0, PRIMARY));
    // Only the untrusted PE is left: wait, do not use it.
    h.exporter.handle_selected(h.now, Ok(vec![pe(PRIMARY, 2)]));
    let outputs = h.outputs();
    assert_eq!(connect_of(&outputs), None);
    assert!(
        outputs
            .iter()
            .any(|o| matches!(o, Output::Notice(Notice::NoPoolElement { .. })))
    );
    h.advance(Duration::from_secs(61));
    let (_, outputs) = h.connect_to(vec![pe(PRIMARY, 2)]);
    assert_eq!(data_sequences(&outputs), vec![0]);
    assert!(h.exporter.untrusted_pes(h.now).is_empty());
}

/// The state a restart finds: a cookie from the primary through `last`, and
/// `next_sequence` reserved.
fn restarted_state(last: u64, next_sequence: u64) -> (ExporterState, BillingCookie) {
    let cookie = BillingCookie::sign(KEY, EXPORTER, DOMAIN, last, PRIMARY, 5);
    let mut state = ExporterState::new(EXPORTER);
    state.domains.insert(
        DOMAIN,
        DomainState {
            next_sequence,
            last_cookie: Some(cookie),
            ..DomainState::default()
        },
    );
    (state, cookie)
}

#[test]
fn restart_echoes_the_persisted_cookie_and_continues_the_sequence() {
    let (state, cookie) = restarted_state(41, 50);
    let mut h = Harness::with_state(config(), state);
    h.exporter.start();
    h.outputs();
    h.push(2);
    let (_, outputs) = h.connect_to(vec![pe(PRIMARY, 2)]);
    assert_eq!(cookie_echoes(&outputs), vec![cookie]);
    // 42..49 were lost with the old process's memory: they are a gap, the
    // new records continue at 50 (never reused).
    assert_eq!(data_sequences(&outputs), vec![50, 51]);
}

fn spill_config() -> ExporterConfig {
    let mut cfg = config();
    cfg.replay = ReplayLimits {
        memory_records: 4,
        max_records: 100,
        spill_dir: Some("spill".into()),
        segment_records: 8,
    };
    cfg
}

/// The replay spill is requests the driver performs, so the core runs over
/// any store: records past the window come back in order as cookies free
/// it, and a clean stop hands the window to the spill, so the next run
/// echoes the cookie and sends every record after it once, with no loss
/// declared.
#[test]
fn spilled_records_come_back_in_order_and_survive_a_clean_stop() {
    let cfg = spill_config();
    let mut spill = MemorySpill::default();
    let mut h = Harness::new(cfg.clone());
    h.exporter.start();
    h.outputs();
    h.push(10);
    spill.perform(&mut h.exporter);
    assert_eq!(spill.domains[&DOMAIN].len(), 6, "past the window of 4");
    let (association, outputs) = h.connect_to(vec![pe(PRIMARY, 1)]);
    assert_eq!(
        data_sequences(&outputs),
        vec![0, 1, 2, 3],
        "only memory is sent"
    );
    h.cookie(association, PRIMARY, 1);
    spill.perform(&mut h.exporter);
    assert_eq!(data_sequences(&h.outputs()), vec![4, 5]);
    h.cookie(association, PRIMARY, 5);
    spill.perform(&mut h.exporter);
    assert_eq!(data_sequences(&h.outputs()), vec![6, 7, 8, 9]);
    assert!(spill.domains[&DOMAIN].is_empty());
    h.push(6);
    spill.perform(&mut h.exporter);
    assert_eq!(
        data_sequences(&h.outputs()),
        Vec::<u64>::new(),
        "window full"
    );
    assert_eq!(spill.domains[&DOMAIN].len(), 6);

    // A clean stop with 6..10 sent but not covered and 10..16 spilled.
    let state = h.exporter.shutdown_state();
    spill.perform(&mut h.exporter);
    let held: Vec<u64> = spill.domains[&DOMAIN].iter().map(|r| r.sequence).collect();
    assert_eq!(
        held,
        (6..16).collect::<Vec<_>>(),
        "window in front, in order"
    );

    // The next run: the store reports what it holds, the core asks for it.
    let mut h = Harness {
        exporter: Exporter::new(
            cfg,
            state,
            vec![flow_template()],
            h.now,
            1_700_000_000_000,
            spill.recovered(),
        ),
        now: h.now,
    };
    spill.perform(&mut h.exporter);
    assert_eq!(h.exporter.counters().declared_not_sent, 0, "nothing lost");
    h.exporter.start();
    h.outputs();
    let (association, outputs) = h.connect_to(vec![pe(BACKUP, 1)]);
    assert_eq!(cookie_echoes(&outputs).len(), 1, "the cookie through 5");
    let mut sent = data_sequences(&outputs);
    for last in [9, 13] {
        h.cookie(association, BACKUP, last);
        spill.perform(&mut h.exporter);
        sent.extend(data_sequences(&h.outputs()));
    }
    assert_eq!(sent, (6..16).collect::<Vec<_>>(), "every record once");
}

/// A crash leaves the spill holding records between two gaps: the memory
/// window before them and the unflushed tail and unused reservation after
/// them. The restarted exporter sends what the spill held and then moves
/// past the tail gap, so its statistics account for every sequence up to
/// the next one to assign and the collector's cookie can cover the gap: the
/// stream drains without new input. (Found by the simulation, seed 168 of
/// `mixed_faults_with_exporter_crashes`, once it ran with a spill.)
#[test]
fn a_restart_whose_spill_ends_before_a_gap_still_drains() {
    let cfg = spill_config();
    let (state, _) = restarted_state(3, 20);
    let mut spill = MemorySpill::default();
    let mut held = VecDeque::new();
    for sequence in 6..10 {
        let mut bytes = Vec::new();
        FlowRecord::synthetic(sequence, 0).encode(&mut bytes);
        held.push_back(BufferedRecord {
            sequence,
            template_id: FLOW_TEMPLATE_ID,
            bytes: bytes.into(),
        });
    }
    spill.domains.insert(DOMAIN, held);
    let now = Instant::now();
    let mut h = Harness {
        exporter: Exporter::new(
            cfg,
            state,
            vec![flow_template()],
            now,
            1_700_000_000_000,
            spill.recovered(),
        ),
        now,
    };
    spill.perform(&mut h.exporter);
    assert_eq!(
        h.exporter.counters().declared_not_sent,
        12,
        "4, 5 and 10..20"
    );
    h.exporter.start();
    h.outputs();
    let (association, outputs) = h.connect_to(vec![pe(PRIMARY, 1)]);
    assert_eq!(data_sequences(&outputs), vec![6, 7, 8, 9]);
    h.exporter.queue_statistics(h.now);
    // The first statistics (at association up) carry their template.
    let mut sent = outputs;
    sent.extend(h.outputs());
    let stats = statistics(&sent);
    let last = stats.last().expect("statistics");
    assert_eq!(
        last.exported_records + last.not_sent_records,
        20,
        "every sequence up to the next one is sent or declared"
    );
    // The collector declares the gaps and covers them with its cookie.
    h.cookie(association, PRIMARY, 19);
    assert_eq!(h.exporter.cookie(DOMAIN).unwrap().last_record_sequence, 19);
    assert!(h.exporter.is_drained());
}

#[test]
fn no_failback_to_a_pe_that_just_failed() {
    let mut cfg = config();
    cfg.failback_holdoff = Duration::from_millis(1000);
    let mut h = Harness::new(cfg);
    h.exporter.start();
    h.outputs();
    let (primary, _) = h.connect_to(vec![pe(PRIMARY, 2), pe(BACKUP, 1)]);
    h.exporter.handle_association_ended(h.now, primary);
    h.outputs();
    let (_, _) = h.connect_to(vec![pe(BACKUP, 1)]);
    // The registrar still lists the dead primary: not yet.
    h.advance(Duration::from_millis(200));
    h.exporter
        .handle_failback_check(h.now, Some(pe(PRIMARY, 2)));
    let outputs = h.outputs();
    assert!(
        !outputs
            .iter()
            .any(|o| matches!(o, Output::Notice(Notice::DrainStarted { .. })))
    );
    // After the holdoff it is taken as back.
    h.advance(Duration::from_millis(800));
    h.exporter
        .handle_failback_check(h.now, Some(pe(PRIMARY, 2)));
    let outputs = h.outputs();
    assert!(outputs.contains(&Output::Notice(Notice::DrainStarted {
        from: BACKUP,
        to: PRIMARY
    })));
    // Nothing outstanding: the drain is immediate.
    assert_eq!(connect_of(&outputs).unwrap().1, PRIMARY);
}

const BEST_EFFORT_DOMAIN: u32 = 9;

/// IPFIX messages on one stream, in order, with their reliability.
fn ipfix_on_stream(outputs: &[Output], wanted: u16) -> Vec<(Reliability, Vec<u8>)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send {
                stream,
                reliability,
                ppid: IPFIX_PPID,
                payload,
                ..
            } if *stream == wanted => Some((*reliability, payload.clone())),
            _ => None,
        })
        .collect()
}

/// Decodes messages as a collector's SCTP session would (templates and
/// data of one stream); returns the records' bytes and the header sequence
/// numbers.
fn decode_stream(messages: &[(Reliability, Vec<u8>)]) -> (Vec<Vec<u8>>, Vec<u32>) {
    let mut session = ipfix::Session::new(ipfix::SessionConfig::new(ipfix::TransportKind::Sctp));
    let mut records = Vec::new();
    let mut sequences = Vec::new();
    for (_, message) in messages {
        sequences.push(u32::from_be_bytes(message[8..12].try_into().unwrap()));
        let report = session
            .process(message, BEST_EFFORT_STREAM, 0, |record| {
                records.push(record.bytes.to_vec())
            })
            .unwrap();
        assert!(report.errors.is_empty(), "{report:?}");
    }
    (records, sequences)
}

fn best_effort_record(n: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    FlowRecord::synthetic(n, 0).encode(&mut bytes);
    bytes
}

#[test]
fn best_effort_records_go_pr_sctp_on_their_own_stream_after_their_templates() {
    let mut config = config();
    config.best_effort_lifetime = Duration::from_millis(250);
    let mut h = Harness::new(config);
    h.exporter.start();
    h.outputs();
    let (association, _) = h.connect_to(vec![pe(PRIMARY, 2)]);
    h.push(5);
    for n in 0..3 {
        h.exporter
            .push_best_effort(BEST_EFFORT_DOMAIN, FLOW_TEMPLATE_ID, best_effort_record(n));
    }
    let outputs = h.outputs();
    assert_eq!(
        data_sequences(&ipfix_outputs_on(&outputs, BILLING_STREAM)),
        (0..5).collect::<Vec<_>>(),
        "billing records unaffected"
    );
    let best_effort = ipfix_on_stream(&outputs, BEST_EFFORT_STREAM);
    assert_eq!(best_effort.len(), 2, "a template message, then the data");
    assert_eq!(
        best_effort[0].0,
        Reliability::Reliable,
        "templates reliable"
    );
    assert_eq!(
        best_effort[1].0,
        Reliability::Lifetime(Duration::from_millis(250)),
        "data with the PR-SCTP lifetime"
    );
    let (records, sequences) = decode_stream(&best_effort);
    assert_eq!(
        records,
        (0..3).map(best_effort_record).collect::<Vec<_>>(),
        "every record decodes with the stream's own template"
    );
    assert_eq!(sequences, vec![0, 0], "template message, then data from 0");
    // No cookie covers best-effort records, and none is awaited for them.
    assert!(
        cookie_echoes(&outputs)
            .iter()
            .all(|c| c.domain != BEST_EFFORT_DOMAIN),
        "no Cookie Echo for a best-effort domain"
    );
    h.cookie(association, PRIMARY, 4);
    assert!(
        h.exporter.is_drained(),
        "drained without any best-effort ack"
    );
    assert_eq!(h.exporter.counters().best_effort_sent, 3);

    // A failover: best-effort records are not replayed; those that arrive
    // while no collector is there wait in the queue and go out after the
    // templates, again, on the new association's stream.
    h.exporter.handle_association_ended(h.now, association);
    h.outputs();
    for n in 3..5 {
        h.exporter
            .push_best_effort(BEST_EFFORT_DOMAIN, FLOW_TEMPLATE_ID, best_effort_record(n));
    }
    assert_eq!(h.exporter.best_effort_queued(), 2);
    let (_, outputs) = h.connect_to(vec![pe(BACKUP, 1)]);
    let best_effort = ipfix_on_stream(&outputs, BEST_EFFORT_STREAM);
    let (records, sequences) = decode_stream(&best_effort);
    assert_eq!(
        records,
        (3..5).map(best_effort_record).collect::<Vec<_>>(),
        "only the two queued records, no replay"
    );
    assert_eq!(
        sequences,
        vec![3, 3],
        "the stream's sequence number continues (the collector sees losses as gaps)"
    );
    assert!(data_sequences(&ipfix_outputs_on(&outputs, BILLING_STREAM)).is_empty());
}

#[test]
fn a_full_best_effort_queue_drops_its_oldest_and_counts_them() {
    let mut config = config();
    config.best_effort_queue = 4;
    let mut h = Harness::new(config);
    for n in 0..10 {
        h.exporter
            .push_best_effort(BEST_EFFORT_DOMAIN, FLOW_TEMPLATE_ID, best_effort_record(n));
    }
    assert_eq!(h.exporter.best_effort_queued(), 4);
    assert_eq!(h.exporter.counters().best_effort_dropped, 6);
    h.exporter.start();
    h.outputs();
    let (_, outputs) = h.connect_to(vec![pe(PRIMARY, 2)]);
    let (records, _) = decode_stream(&ipfix_on_stream(&outputs, BEST_EFFORT_STREAM));
    assert_eq!(
        records,
        (6..10).map(best_effort_record).collect::<Vec<_>>(),
        "the newest four, in order"
    );
}

/// The Send outputs on one stream (all kinds of payload).
fn ipfix_outputs_on(outputs: &[Output], wanted: u16) -> Vec<Output> {
    outputs
        .iter()
        .filter(|o| matches!(o, Output::Send { stream, .. } if *stream == wanted))
        .cloned()
        .collect()
}

#[test]
fn statistics_follow_the_cookie_echo_then_every_interval() {
    let mut h = Harness::new(config());
    h.exporter.start();
    h.outputs();
    h.push(3);
    let (association, outputs) = h.connect_to(vec![pe(PRIMARY, 2)]);
    let stats = statistics(&outputs);
    assert_eq!(
        stats.len(),
        1,
        "one record per domain on the new association"
    );
    assert_eq!(
        (
            stats[0].exporting_process_id,
            stats[0].observation_domain_id
        ),
        (EXPORTER, DOMAIN)
    );
    assert_eq!(stats[0].accounted(), 0, "sent right after the Cookie Echo");
    assert_eq!(data_sequences(&outputs), vec![0, 1, 2]);
    h.cookie(association, PRIMARY, 2);
    let later = h.advance(Duration::from_millis(1100));
    // The template went with the first statistics of the association.
    let stats = statistics(&[outputs, later].concat());
    assert_eq!(stats.len(), 2, "periodic: {stats:?}");
    let stats = &stats[1..];
    assert_eq!(
        (
            stats[0].exported_records,
            stats[0].not_sent_records,
            stats[0].exported_messages
        ),
        (3, 0, 1)
    );
}

#[test]
fn a_restart_declares_what_it_no_longer_holds_once() {
    let (state, _) = restarted_state(41, 50);
    let mut h = Harness::with_state(config(), state);
    h.exporter.start();
    h.outputs();
    h.push(2);
    let (_, outputs) = h.connect_to(vec![pe(PRIMARY, 2)]);
    // 42..=49 are gone with the old process: declared, before the new
    // records, which continue at 50.
    let stats = statistics(&outputs);
    assert_eq!(
        (stats[0].exported_records, stats[0].not_sent_records),
        (42, 8)
    );
    assert_eq!(stats[0].accounted(), 50);
    assert_eq!(data_sequences(&outputs), vec![50, 51]);
    assert_eq!(h.exporter.counters().declared_not_sent, 8);
    // Persisted: a second restart before any cookie counts them once, plus
    // what that restart loses (50..=51 were sent, not acknowledged).
    let persisted = h.exporter.state();
    let d = persisted.domains[&DOMAIN];
    assert_eq!((d.not_sent, d.declared_until), (8, 50));
    let mut again = Harness::with_state(config(), persisted);
    again.exporter.start();
    again.outputs();
    let (_, outputs) = again.connect_to(vec![pe(PRIMARY, 2)]);
    let stats = statistics(&outputs);
    let lost_now = d.next_sequence - 50;
    assert_eq!(stats[0].not_sent_records, 8 + lost_now);
    assert_eq!(stats[0].accounted(), d.next_sequence);
}
