//! The collector end to end on loopback: IPFIX over UDP and TCP is stored,
//! malformed input is counted without harming the session, shutdown commits.

use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use collector::config::CollectorConfig;
use collector::query::{self, Filter, Format};
use collector::store::Store;
use protocol::ipfix::MessageWriter;
use protocol::ipfix::flow::{FlowRecord, flow_template};

fn config(dir: &Path) -> CollectorConfig {
    CollectorConfig {
        database: dir.join("c.sqlite"),
        udp_listen: vec!["127.0.0.1:0".parse().unwrap()],
        tcp_listen: vec!["127.0.0.1:0".parse().unwrap()],
        sctp_listen: vec!["127.0.0.1:0".parse().unwrap()],
        udp_receive_buffer_bytes: 4 * 1024 * 1024,
        ..CollectorConfig::default()
    }
}

/// `count` records numbered from `first`, in messages of `per_message`.
fn messages(domain: u32, first: u64, count: u64, per_message: u64) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut w = MessageWriter::new(65_535);
    let mut n = first;
    while n < first + count {
        w.start(domain, 1_700_000_000, (n - first) as u32);
        w.add_template(&flow_template()).unwrap();
        for i in n..(n + per_message).min(first + count) {
            FlowRecord::synthetic(i, 1_700_000_000_000)
                .write_to(&mut w)
                .unwrap();
        }
        n += per_message;
        out.push(w.finish().to_vec());
    }
    out
}

async fn wait_for_records(c: &collector::RunningCollector, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while c
        .progress
        .committed_records
        .load(std::sync::atomic::Ordering::Acquire)
        < n
    {
        assert!(Instant::now() < deadline, "records not committed in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_and_tcp_records_are_stored_with_their_fields() {
    let dir = tempfile::tempdir().unwrap();
    let c = collector::start(&config(dir.path())).await.unwrap();

    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    for m in messages(1, 0, 100, 10) {
        udp.send_to(&m, c.udp_addrs[0]).unwrap();
    }
    let mut tcp = TcpStream::connect(c.tcp_addrs[0]).unwrap();
    for m in messages(2, 1000, 250, 25) {
        tcp.write_all(&m).unwrap();
    }
    tcp.flush().unwrap();
    wait_for_records(&c, 350).await;
    drop(tcp);
    c.shutdown().await.unwrap();

    let store = Store::open(&dir.path().join("c.sqlite")).unwrap();
    assert_eq!(store.record_count().unwrap(), 350);
    let udp_peer = udp.local_addr().unwrap().to_string();
    let stats = store.domain_stats(&udp_peer, 1).unwrap().unwrap();
    assert_eq!(stats.records, 100);
    assert_eq!(stats.lost_records, 0);

    // Every stored record carries exactly what was sent.
    let mut out = Vec::new();
    let filter = Filter {
        domain: Some(2),
        ..Filter::default()
    };
    let n = query::run(store.connection(), &filter, Format::Json, &mut out).unwrap();
    assert_eq!(n, 250);
    let rows: Vec<serde_json::Value> = out
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    for (i, row) in rows.iter().enumerate() {
        let flow = FlowRecord::synthetic(1000 + i as u64, 1_700_000_000_000);
        assert_eq!(row["src_addr"], flow.source.to_string());
        assert_eq!(row["dst_port"], flow.destination_port);
        assert_eq!(row["octets"], flow.octets);
        assert_eq!(row["flow_start_ms"], flow.start_millis);
        assert_eq!(row["transport"], "tcp");
        assert_eq!(row["record_index"], (i % 25) as u64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_gaps_are_counted_in_records() {
    let dir = tempfile::tempdir().unwrap();
    let c = collector::start(&config(dir.path())).await.unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let all = messages(3, 0, 100, 10);
    for (i, m) in all.iter().enumerate() {
        // Messages 4 and 5 (records 40..60) are "lost in the network".
        if i != 4 && i != 5 {
            udp.send_to(m, c.udp_addrs[0]).unwrap();
        }
    }
    wait_for_records(&c, 80).await;
    c.shutdown().await.unwrap();
    let store = Store::open(&dir.path().join("c.sqlite")).unwrap();
    let stats = store
        .domain_stats(&udp.local_addr().unwrap().to_string(), 3)
        .unwrap()
        .unwrap();
    assert_eq!(stats.records, 80);
    assert_eq!(stats.lost_records, 20);
    assert_eq!(stats.sequence_events, 1);
    let summaries = query::domain_summaries(store.connection()).unwrap();
    assert_eq!(summaries.len(), 1);
    assert_eq!(
        (
            summaries[0].domain,
            summaries[0].records,
            summaries[0].lost_records
        ),
        (3, 80, 20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_datagrams_do_not_poison_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let c = collector::start(&config(dir.path())).await.unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let good = messages(4, 0, 20, 10);
    udp.send_to(&good[0], c.udp_addrs[0]).unwrap();
    // Truncated header, wrong version, lying length, set overrun, garbage.
    let mut wrong_version = good[1].clone();
    wrong_version[1] = 5;
    let mut overrun = good[1].clone();
    overrun[18] = 0xff; // template set length high byte
    for bad in [
        &good[1][..10],
        &wrong_version[..],
        &good[1][..good[1].len() - 3],
        &overrun[..],
        &[0xde; 300][..],
    ] {
        udp.send_to(bad, c.udp_addrs[0]).unwrap();
    }
    udp.send_to(&good[1], c.udp_addrs[0]).unwrap();
    wait_for_records(&c, 20).await;
    c.shutdown().await.unwrap();
    let store = Store::open(&dir.path().join("c.sqlite")).unwrap();
    assert_eq!(
        store.record_count().unwrap(),
        20,
        "both good messages stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_framing_error_closes_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let c = collector::start(&config(dir.path())).await.unwrap();
    let mut bad = TcpStream::connect(c.tcp_addrs[0]).unwrap();
    bad.write_all(&[0, 9, 0, 20, 1, 2, 3, 4]).unwrap();
    // The collector closes the broken stream...
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(std::io::Read::read(&mut bad, &mut buf).unwrap_or(0), 0);
    // ...and keeps serving others.
    let mut good = TcpStream::connect(c.tcp_addrs[0]).unwrap();
    for m in messages(5, 0, 30, 10) {
        good.write_all(&m).unwrap();
    }
    wait_for_records(&c, 30).await;
    drop(good);
    c.shutdown().await.unwrap();
    let store = Store::open(&dir.path().join("c.sqlite")).unwrap();
    assert_eq!(store.record_count().unwrap(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_session_limit_refuses_extra_connections_and_serves_others() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_tcp_sessions = 1;
    let c = collector::start(&cfg).await.unwrap();
    let mut first = TcpStream::connect(c.tcp_addrs[0]).unwrap();
    first.write_all(&messages(7, 0, 5, 5)[0]).unwrap();
    wait_for_records(&c, 5).await;
    // The second connection is accepted by the kernel, then closed by us.
    let mut second = TcpStream::connect(c.tcp_addrs[0]).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(std::io::Read::read(&mut second, &mut buf).unwrap_or(0), 0);
    // The first one still works.
    first.write_all(&messages(7, 5, 5, 5)[0]).unwrap();
    wait_for_records(&c, 10).await;
    drop(first);
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_export_has_header_and_one_line_per_record() {
    let dir = tempfile::tempdir().unwrap();
    let c = collector::start(&config(dir.path())).await.unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    for m in messages(6, 0, 15, 5) {
        udp.send_to(&m, c.udp_addrs[0]).unwrap();
    }
    wait_for_records(&c, 15).await;
    c.shutdown().await.unwrap();
    let conn = Store::open_read_only(&dir.path().join("c.sqlite")).unwrap();
    let mut out = Vec::new();
    let filter = Filter {
        exporter: Some("127.0.0.1".into()),
        limit: Some(10),
        ..Filter::default()
    };
    assert_eq!(
        query::run(&conn, &filter, Format::Csv, &mut out).unwrap(),
        10
    );
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(lines.len(), 11);
    assert!(lines[0].starts_with("exporter,transport,domain"));
    let other = Filter {
        exporter: Some("127.0.0.2".into()),
        ..Filter::default()
    };
    assert_eq!(
        query::run(&conn, &other, Format::Csv, &mut Vec::new()).unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipfix_over_sctp_over_udp_is_stored_per_stream() {
    let dir = tempfile::tempdir().unwrap();
    let c = collector::start(&config(dir.path())).await.unwrap();
    let client = transport::Config {
        transport: transport::TransportKind::SctpOverUdp,
        sctp_port: 4739,
        ..transport::Config::default()
    };
    let association = transport::connect(client, c.sctp_addrs[0]).await.unwrap();
    // Two streams, each with its own sequence numbering (RFC 7011 3.1);
    // the template travels reliably ahead of the data on each stream.
    for (stream, domain) in [(1u16, 8u32), (2, 8)] {
        for m in messages(domain, 100 * stream as u64, 60, 20) {
            association
                .send(transport::Message::new(stream, 0, m))
                .await
                .unwrap();
        }
    }
    wait_for_records(&c, 120).await;
    drop(association);
    c.shutdown().await.unwrap();
    let store = Store::open(&dir.path().join("c.sqlite")).unwrap();
    assert_eq!(store.record_count().unwrap(), 120);
    let summaries = query::domain_summaries(store.connection()).unwrap();
    assert_eq!(summaries.len(), 1);
    assert_eq!(summaries[0].transport, "sctp");
    assert_eq!(summaries[0].records, 120);
    // Per-stream numbering restarts at 0 on stream 2: not a gap.
    assert_eq!(summaries[0].lost_records, 0);
    assert_eq!(summaries[0].sequence_events, 0);
}

/// Two receive threads on one UDP address (`udp_receive_threads = 2`,
/// SO_REUSEPORT): 16 exporters, each on its own source port. The kernel
/// keeps each exporter on one thread, so every exporter's session sees its
/// whole sequence: all records stored, no gap counted. A session split over
/// both threads would count the other thread's messages as lost in each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_udp_receive_threads_keep_each_exporters_session_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.udp_receive_threads = 2;
    let c = collector::start(&cfg).await.unwrap();
    assert_eq!(c.udp_addrs.len(), 1, "one address, however many threads");
    let exporters: Vec<UdpSocket> = (0..16)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let all: Vec<Vec<u8>> = messages(4, 0, 200, 10);
    // Interleaved, as exporters run side by side.
    for m in &all {
        for exporter in &exporters {
            exporter.send_to(m, c.udp_addrs[0]).unwrap();
        }
    }
    wait_for_records(&c, 16 * 200).await;
    c.shutdown().await.unwrap();
    let store = Store::open(&dir.path().join("c.sqlite")).unwrap();
    assert_eq!(store.record_count().unwrap(), 16 * 200);
    for exporter in &exporters {
        let peer = exporter.local_addr().unwrap().to_string();
        let stats = store.domain_stats(&peer, 4).unwrap().unwrap();
        assert_eq!((stats.records, stats.lost_records), (200, 0), "{peer}");
        assert_eq!(stats.sequence_events, 0, "{peer}");
    }
}

/// A steady trickle of datagrams (never idle for the receive timeout) must
/// still reach the store promptly, and must not keep a graceful stop from
/// completing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_udp_trickle_is_committed_and_does_not_block_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let c = collector::start(&config(dir.path())).await.unwrap();
    let target = c.udp_addrs[0];
    let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sender = {
        let running = running.clone();
        std::thread::spawn(move || {
            // One record every 5 ms: a full 2048-record batch would take
            // ten seconds to fill.
            let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut n = 0u64;
            while running.load(std::sync::atomic::Ordering::Acquire) && n < 4000 {
                let m = &messages(9, n, 1, 1)[0];
                let mut m = m.clone();
                m[8..12].copy_from_slice(&(n as u32).to_be_bytes());
                udp.send_to(&m, target).unwrap();
                n += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            n
        })
    };
    // While the trickle goes on, records become durable well before a
    // full batch could have formed.
    wait_for_records(&c, 50).await;
    let stopped = tokio::time::timeout(Duration::from_secs(10), c.shutdown()).await;
    running.store(false, std::sync::atomic::Ordering::Release);
    let sent = sender.join().unwrap();
    assert!(
        stopped.is_ok(),
        "shutdown must finish while datagrams keep arriving"
    );
    stopped.unwrap().unwrap();
    assert!(sent > 50);
}

/// SIGTERM while an exporter's records still sit in the collector's socket
/// buffer: a graceful stop reads them first (they were sent once and TCP
/// already acknowledged them), so nothing sent before the stop is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_takes_in_what_tcp_already_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let c = collector::start(&config(dir.path())).await.unwrap();
    let mut exporter = TcpStream::connect(c.tcp_addrs[0]).unwrap();
    // More than the socket buffers hold: the writer is still writing when
    // the stop comes.
    let records = 300_000;
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        for m in messages(6, 0, records, 100) {
            exporter.write_all(&m)?;
        }
        exporter.shutdown(std::net::Shutdown::Write)
    });
    wait_for_records(&c, 1).await;
    c.shutdown().await.unwrap();
    writer
        .join()
        .unwrap()
        .expect("the collector read everything sent");
    let store = Store::open(&dir.path().join("c.sqlite")).unwrap();
    assert_eq!(store.record_count().unwrap(), records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_exporters_statistics_reveal_a_lost_tail() {
    use protocol::ipfix::reliability::{self, ReliabilityStatistics};
    let dir = tempfile::tempdir().unwrap();
    let c = collector::start(&config(dir.path())).await.unwrap();
    let mut tcp = TcpStream::connect(c.tcp_addrs[0]).unwrap();
    for m in messages(4, 0, 100, 10) {
        tcp.write_all(&m).unwrap();
    }
    // The exporter sent 130 records of domain 4: the last 30 never came
    // (say, the connection broke and the exporter reconnected elsewhere).
    let stats = ReliabilityStatistics {
        exporting_process_id: 0,
        observation_domain_id: 4,
        exported_messages: 13,
        exported_records: 130,
        not_sent_records: 0,
        system_init_ms: 1_700_000_000_000,
        observation_ms: 1_700_000_001_000,
    };
    let mut w = MessageWriter::new(1400);
    let (bytes, n) = reliability::encode_message(&mut w, 1_700_000_001, 0, true, &[stats]).unwrap();
    assert_eq!(n, 1);
    tcp.write_all(&bytes).unwrap();
    tcp.flush().unwrap();
    wait_for_records(&c, 100).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let peer = tcp.local_addr().unwrap().to_string();
    loop {
        let store = Store::open_read_only(&dir.path().join("c.sqlite")).unwrap();
        let rows: i64 = store
            .query_row("SELECT COUNT(*) FROM exporter_totals", [], |r| r.get(0))
            .unwrap_or(0);
        if rows > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "statistics not stored in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(tcp);
    c.shutdown().await.unwrap();
    let store = Store::open(&dir.path().join("c.sqlite")).unwrap();
    // The statistics are the exporter's account, not flow records.
    assert_eq!(store.record_count().unwrap(), 100);
    let stats = store.domain_stats(&peer, 4).unwrap().unwrap();
    assert_eq!(stats.records, 100);
    assert_eq!(stats.lost_records, 30, "the lost tail");
    let (exported, billing): (i64, Option<i64>) = store
        .connection()
        .query_row(
            "SELECT exported_records, billing_exporter FROM exporter_totals WHERE domain = 4",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((exported, billing), (130, None));
}
