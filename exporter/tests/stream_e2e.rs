//! End to end over loopback: an in-process registrar, two minimal fake
//! collectors (SCTP over UDP endpoints that decode IPFIX, rebuild record
//! sequences and answer with signed billing cookies) registered under
//! Priority, and the exporter's driver. The primary is stopped mid-stream
//! (failover to the backup) and restarted (failback): every record must end
//! up stored, and nothing may be stored by both the backup and the restarted
//! primary.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use asap_client::driver::{PoolElementDriverConfig, RegistrarAddress, spawn_pool_element};
use asap_client::{PoolElementConfig, PoolElementHandle};
use exporter::pool_user::{ExporterConfig, FailureCause, Notice};
use exporter::replay::ReplayLimits;
use exporter::state_file::StateFile;
use exporter::stream::{InputRecord, Progress, RecordClass, StreamSettings};
use policies::PolicyParams;
use protocol::billing::{
    BillingCookie, CookieMessageKind, SequenceExtender, cookie_from_asap_bytes,
};
use protocol::ipfix::flow::{FLOW_TEMPLATE_ID, FlowRecord, flow_template};
use protocol::ipfix::{Session, SessionConfig, TransportKind as IpfixTransport};
use protocol::rserpool::params::{TransportAddress, TransportKind, TransportUse};
use protocol::rserpool::{ASAP_SCTP_PPID, PoolHandle};
use registrar::config::RegistrarConfig;
use registrar::driver::Registrar;
use tokio::task::JoinSet;
use transport::{Endpoint, Event, Message};

const POOL: &str = "billing-e2e";
const KEY: &[u8] = b"e2e pool key";
const EXPORTER_ID: u32 = 4242;
const DOMAIN: u32 = 9;

type Store = Arc<Mutex<BTreeMap<u64, Vec<u8>>>>;

struct FakeCollector {
    pe: PoolElementHandle,
    tasks: JoinSet<()>,
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl FakeCollector {
    async fn start(
        pe_id: u32,
        priority: u32,
        port: u16,
        registrar: SocketAddr,
        store: Store,
    ) -> Self {
        let mut endpoint = bind(port, transport::Config::default().receive_queue_len).await;
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut associations = JoinSet::new();
            while let Some(association) = endpoint.accept().await {
                associations.spawn(serve(association, pe_id, store.clone()));
            }
        });
        Self::register(pe_id, priority, port, registrar, tasks).await
    }

    /// A collector whose transport is alive (it acknowledges DATA, answers
    /// heartbeats and window probes) but whose pipeline is stuck: it never
    /// reads what arrives, as behind a hung disk. Its small receive queue
    /// closes the window after a few messages.
    async fn start_hung(pe_id: u32, priority: u32, port: u16, registrar: SocketAddr) -> Self {
        let mut endpoint = bind(port, 8).await;
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut held = Vec::new();
            while let Some(association) = endpoint.accept().await {
                held.push(association);
            }
        });
        Self::register(pe_id, priority, port, registrar, tasks).await
    }

    async fn register(
        pe_id: u32,
        priority: u32,
        port: u16,
        registrar: SocketAddr,
        tasks: JoinSet<()>,
    ) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let pe_config = PoolElementConfig::new(
            PoolHandle(POOL.as_bytes().to_vec()),
            pe_id,
            TransportAddress {
                kind: TransportKind::Sctp(TransportUse::DataPlusControl),
                port,
                addresses: vec![addr.ip()],
            },
            PolicyParams::Priority { priority },
            1,
        );
        let mut pe = spawn_pool_element(PoolElementDriverConfig {
            pool_element: pe_config,
            registrars: vec![RegistrarAddress::sctp_over_udp(registrar)],
            transport: transport::Config::fast_failure_detection(
                transport::TransportKind::SctpOverUdp,
            ),
            announce_listen: None,
        })
        .unwrap();
        pe.wait_registered().await.unwrap();
        Self { pe, tasks }
    }

    /// Like a crash for the exporter (associations vanish), but the PE
    /// deregisters so the registrar need not wait for keep-alives.
    async fn stop(mut self) {
        self.tasks.shutdown().await;
        let _ = self.pe.shutdown().await;
    }
}

/// A fake collector's SCTP over UDP endpoint on `port`.
async fn bind(port: u16, receive_queue_len: usize) -> Endpoint {
    let mut config =
        transport::Config::fast_failure_detection(transport::TransportKind::SctpOverUdp);
    config.sctp_port = port;
    config.receive_queue_len = receive_queue_len;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    Endpoint::bind(config, addr).await.unwrap()
}

/// One association of a fake collector: Cookie Echo, IPFIX, cookies back.
async fn serve(mut association: transport::Association, pe_id: u32, store: Store) {
    let mut session = Session::new(SessionConfig::new(IpfixTransport::Sctp));
    // Per domain: the sequence extender and the contiguous-through point.
    let mut domains: HashMap<u32, (SequenceExtender, Option<u64>)> = HashMap::new();
    while let Some(event) = association.recv().await {
        let Event::Message(message) = event else {
            if matches!(event, Event::Up) {
                continue;
            }
            return;
        };
        if message.ppid == ASAP_SCTP_PPID {
            let (kind, cookie) = cookie_from_asap_bytes(&message.payload).unwrap();
            assert_eq!(kind, CookieMessageKind::CookieEcho);
            assert_eq!(cookie.exporter_id, EXPORTER_ID);
            if !cookie.introduction {
                cookie.verify(KEY).expect("echoed cookie verifies");
            }
            let through = (!cookie.introduction).then_some(cookie.last_record_sequence);
            domains.insert(
                cookie.domain,
                (SequenceExtender::new(cookie.last_record_sequence), through),
            );
            continue;
        }
        let mut records = Vec::new();
        let report = session
            .process(&message.payload, message.stream, 0, |record| {
                records.push((
                    record.header.observation_domain_id,
                    record.header.sequence_number,
                    record.index_in_message,
                    record.bytes.to_vec(),
                ))
            })
            .unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let mut touched = Vec::new();
        for (domain, low, index, bytes) in records {
            // The exporter's reliability statistics (their own domain) are
            // no billing records.
            if domain == protocol::ipfix::reliability::STATISTICS_DOMAIN {
                continue;
            }
            let (extender, _) = domains
                .get_mut(&domain)
                .expect("Cookie Echo before the domain's first record");
            let base = extender.extend(low);
            let sequence = base + u64::from(index);
            let mut store = store.lock().unwrap();
            if let Some(previous) = store.insert(sequence, bytes.clone()) {
                assert_eq!(previous, bytes, "conflicting duplicate at {sequence}");
            }
            touched.push(domain);
        }
        touched.dedup();
        for domain in touched {
            let (_, through) = domains.get_mut(&domain).unwrap();
            let cookie = {
                let store = store.lock().unwrap();
                let mut next = through.map_or(0, |t| t + 1);
                while store.contains_key(&next) {
                    next += 1;
                }
                (next > 0 && Some(next - 1) != *through).then(|| {
                    *through = Some(next - 1);
                    BillingCookie::sign(KEY, EXPORTER_ID, domain, next - 1, pe_id, 0)
                })
            };
            if let Some(cookie) = cookie {
                let reply = Message::new(0, ASAP_SCTP_PPID, cookie.cookie_message_bytes());
                if association.send(reply).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn record(n: u64) -> InputRecord {
    let mut bytes = Vec::new();
    FlowRecord::synthetic(n, 0).encode(&mut bytes);
    InputRecord {
        domain: DOMAIN,
        template_id: FLOW_TEMPLATE_ID,
        bytes: bytes.into(),
        class: RecordClass::Billing,
    }
}

async fn wait_until(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An in-process registrar on loopback with fast keep-alives.
async fn start_registrar() -> (Registrar, SocketAddr) {
    let mut config = RegistrarConfig::default();
    config.listen.tcp = String::new();
    config.listen.sctp_over_udp = "127.0.0.1:0".into();
    config.listen.status = String::new();
    config.timers.keep_alive_period = Duration::from_millis(200);
    config.timers.keep_alive_timeout = Duration::from_millis(200);
    let registrar = Registrar::start(config, None).await.unwrap();
    let addr = registrar.sctp_over_udp_addr.unwrap();
    (registrar, addr)
}

/// The exporter's settings: short timers, a small in-memory replay buffer.
fn stream_settings(dir: &std::path::Path, registrar_addr: SocketAddr) -> StreamSettings {
    let mut exporter = ExporterConfig::new(EXPORTER_ID);
    exporter.cookie_timeout = Duration::from_secs(2);
    exporter.failback_check = Duration::from_millis(100);
    exporter.drain_timeout = Duration::from_secs(3);
    exporter.retry_interval = Duration::from_millis(200);
    exporter.failback_holdoff = Duration::from_millis(100);
    exporter.replay = ReplayLimits::memory(5_000);
    let mut transport =
        transport::Config::fast_failure_detection(transport::TransportKind::SctpOverUdp);
    transport.connect_timeout = Duration::from_secs(1);
    StreamSettings {
        exporter,
        templates: vec![flow_template()],
        pool_handle: PoolHandle(POOL.as_bytes().to_vec()),
        registrars: vec![RegistrarAddress::sctp_over_udp(registrar_addr)],
        announce_listen: None,
        state_file: StateFile::new(dir.join("exporter.state")),
        transport,
        data_tls: None,
        data_udp_segmentation_offload: false,
        cache_lifetime: Duration::from_millis(200),
        registrar_request_timeout: Duration::from_secs(1),
        exit_drain_timeout: Duration::from_secs(10),
        durable: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_and_failback_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (registrar, registrar_addr) = start_registrar().await;

    let primary_port = free_udp_port();
    let backup_port = free_udp_port();
    let primary_store: Store = Arc::default();
    let backup_store: Store = Arc::default();
    let primary =
        FakeCollector::start(0x1, 2, primary_port, registrar_addr, primary_store.clone()).await;
    let backup =
        FakeCollector::start(0x2, 1, backup_port, registrar_addr, backup_store.clone()).await;

    let settings = stream_settings(dir.path(), registrar_addr);
    let (input, input_rx) = exporter::record_queue::record_queue(256);
    let notices: Arc<Mutex<Vec<Notice>>> = Arc::default();
    let seen = notices.clone();
    let run = tokio::spawn(exporter::stream::run(
        settings.clone(),
        input_rx,
        std::future::pending::<()>(),
        move |progress| {
            if let Progress::Notice(notice) = progress {
                seen.lock().unwrap().push(notice);
            }
        },
    ));

    // Phase 1: to the primary.
    for n in 0..1000 {
        input.send(vec![record(n)]).await.unwrap();
    }
    wait_until(
        "the primary to store records",
        Duration::from_secs(10),
        || primary_store.lock().unwrap().len() >= 500,
    )
    .await;

    // Phase 2: the primary goes away; records go on to the backup.
    primary.stop().await;
    for n in 1000..2000 {
        input.send(vec![record(n)]).await.unwrap();
    }
    wait_until(
        "the backup to store the rest",
        Duration::from_secs(15),
        || backup_store.lock().unwrap().contains_key(&1999),
    )
    .await;

    // Phase 3: the primary is back (new store: what it holds after the
    // restart); the exporter drains the backup and fails back.
    let restarted_store: Store = Arc::default();
    let primary = FakeCollector::start(
        0x1,
        2,
        primary_port,
        registrar_addr,
        restarted_store.clone(),
    )
    .await;
    // Keep the stream going while the failback happens.
    for n in 2000..3000 {
        input.send(vec![record(n)]).await.unwrap();
        if n % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(input);
    let report = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("exporter finished")
        .unwrap()
        .unwrap();

    assert!(report.drained, "every record covered by a cookie");
    assert_eq!(report.records_in, 3000);
    assert!(report.counters.failovers >= 1, "{:?}", report.counters);
    assert_eq!(report.counters.failbacks, 1, "{:?}", report.counters);

    let first = primary_store.lock().unwrap().clone();
    let second = backup_store.lock().unwrap().clone();
    let third = restarted_store.lock().unwrap().clone();
    // No loss: every record stored somewhere, with its content.
    for n in 0..3000u64 {
        let stored = first.get(&n).or(second.get(&n)).or(third.get(&n));
        assert_eq!(
            stored.map(Vec::as_slice),
            Some(&record(n).bytes[..]),
            "record {n}"
        );
    }
    // Failback is duplicate-free: the drained backup and the restarted
    // primary share nothing, and the primary got the end of the stream.
    assert!(second.keys().all(|k| !third.contains_key(k)));
    assert!(third.contains_key(&2999));
    assert!(!third.is_empty() && third.keys().next().unwrap() >= &2000);

    let notices = notices.lock().unwrap().clone();
    assert!(notices.contains(&Notice::FailoverStarted {
        pe_id: 0x1,
        cause: FailureCause::AssociationEnded
    }));
    assert!(notices.contains(&Notice::DrainStarted { from: 0x2, to: 0x1 }));

    // A restart continues the sequence from the state file and echoes the
    // last cookie (the restarted primary verifies it).
    let (input, input_rx) = exporter::record_queue::record_queue(256);
    let run = tokio::spawn(exporter::stream::run(
        settings,
        input_rx,
        std::future::pending::<()>(),
        |_| {},
    ));
    for n in 3000..3100 {
        input.send(vec![record(n)]).await.unwrap();
    }
    drop(input);
    let report = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("second run finished")
        .unwrap()
        .unwrap();
    assert!(report.drained);
    let third = restarted_store.lock().unwrap().clone();
    for n in 3000..3100u64 {
        assert_eq!(
            third.get(&n).map(Vec::as_slice),
            Some(&record(n).bytes[..]),
            "record {n} after restart"
        );
    }

    primary.stop().await;
    backup.stop().await;
    registrar.stop().await;
}

/// A collector whose transport acknowledges but whose pipeline never reads
/// (its window closes, the exporter's send buffer fills): the exporter must
/// still leave it at the cookie timeout and deliver everything to the
/// backup. A driver that waited inside a send for buffer room would never
/// judge the timeout, since the hung peer's transport answers every probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_stops_reading_is_left_at_the_cookie_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (registrar, registrar_addr) = start_registrar().await;
    let hung = FakeCollector::start_hung(0x1, 2, free_udp_port(), registrar_addr).await;
    let backup_store: Store = Arc::default();
    let backup = FakeCollector::start(
        0x2,
        1,
        free_udp_port(),
        registrar_addr,
        backup_store.clone(),
    )
    .await;

    let mut settings = stream_settings(dir.path(), registrar_addr);
    settings.exporter.cookie_timeout = Duration::from_millis(500);
    settings.exporter.cookie_stall_timeout = Duration::from_secs(1);
    settings.exporter.replay = ReplayLimits::memory(100_000);
    // A few dozen messages fill it.
    settings.transport.send_buffer_bytes = 16 * 1024;
    let notices: Arc<Mutex<Vec<Notice>>> = Arc::default();
    let seen = notices.clone();
    let (input, input_rx) = exporter::record_queue::record_queue(256);
    let run = tokio::spawn(exporter::stream::run(
        settings,
        input_rx,
        std::future::pending::<()>(),
        move |progress| {
            if let Progress::Notice(notice) = progress {
                seen.lock().unwrap().push(notice);
            }
        },
    ));
    // Three times what the hung peer's receive window (1 MiB) takes.
    const RECORDS: u64 = 60_000;
    tokio::spawn(async move {
        for n in 0..RECORDS {
            input.send(vec![record(n)]).await.unwrap();
        }
    });
    let report = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the exporter left the hung collector and finished")
        .unwrap()
        .unwrap();
    assert!(report.drained, "every record covered by a cookie");
    let stored = backup_store.lock().unwrap().clone();
    for n in 0..RECORDS {
        assert_eq!(
            stored.get(&n).map(Vec::as_slice),
            Some(&record(n).bytes[..]),
            "record {n}"
        );
    }
    assert!(notices.lock().unwrap().contains(&Notice::FailoverStarted {
        pe_id: 0x1,
        cause: FailureCause::CookieTimeout
    }));

    hung.stop().await;
    backup.stop().await;
    registrar.stop().await;
}
