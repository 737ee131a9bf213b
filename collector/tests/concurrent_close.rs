//! Many exporters into one collector, all closing at once (issue 20): every
//! record each exporter's close reported as delivered is in the store, per
//! observation domain, up to the highest sequence number. Over SCTP the
//! collector used to lose the tail of streams whose SHUTDOWN completed while
//! it was still behind. Every wait is bounded.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use collector::config::CollectorConfig;
use protocol::ipfix::MessageWriter;
use protocol::ipfix::flow::{FlowRecord, flow_template};
use transport::{DownReason, Event, TransportKind};

const EXPORTERS: u32 = 20;
const RECORDS: u64 = 20_000;
/// Small messages (4 records each): 5,000 per exporter, more than the
/// collector's per-association receive queue (4,096 messages) holds, so a
/// collector that falls behind leaves messages in the SCTP stack at close,
/// which is where they were lost.
const MESSAGE_SIZE: usize = 200;
/// Bound on each exporter's whole run (connect, send, close) and on the
/// collector committing everything afterwards; generous for a loaded CI box.
const BOUND: Duration = Duration::from_secs(120);
/// Longest the test blocks the collector's store.
const HOLD: Duration = Duration::from_secs(6);

fn config(dir: &Path) -> CollectorConfig {
    CollectorConfig {
        database: dir.join("c.sqlite"),
        udp_listen: vec![],
        tcp_listen: vec![],
        sctp_listen: vec!["127.0.0.1:0".parse().unwrap()],
        framed_tcp_listen: vec!["127.0.0.1:0".parse().unwrap()],
        // A short writer queue, so that a blocked store backs up into the
        // sessions and the transport at once (see `all_close_at_once`).
        queue_batches: 1,
        ..CollectorConfig::default()
    }
}

/// The IPFIX messages of one exporter: template first, then `RECORDS`
/// records of `domain`, sequence numbers counting records (RFC 7011 3.1).
fn messages(domain: u32) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut writer = MessageWriter::new(MESSAGE_SIZE);
    let mut n = 0u64;
    let mut sequence = 0u32;
    while n < RECORDS {
        writer.start(domain, 1_700_000_000, sequence);
        if n == 0 {
            writer.add_template(&flow_template()).unwrap();
        }
        while n < RECORDS
            && FlowRecord::synthetic(n, 1_700_000_000_000)
                .write_to(&mut writer)
                .is_ok()
        {
            n += 1;
        }
        sequence = sequence.wrapping_add(writer.data_records());
        out.push(writer.finish().to_vec());
    }
    out
}

/// One exporter: connects, sends everything as fast as the transport takes
/// it, closes gracefully and waits for the close to complete.
async fn export(kind: TransportKind, target: SocketAddr, domain: u32) {
    let config = transport::Config {
        transport: kind,
        sctp_port: target.port(),
        ..transport::Config::default()
    };
    let mut association = transport::connect(config, target).await.unwrap();
    let messages = messages(domain);
    for message in &messages {
        association
            .send(transport::Message::new(0, 0, message.clone()))
            .await
            .unwrap();
    }
    association.close();
    loop {
        match association.recv().await {
            Some(Event::Up) => {}
            Some(Event::Down(DownReason::Local)) => break,
            other => panic!("domain {domain}: close did not complete: {other:?}"),
        }
    }
    if let Some(acknowledged) = association.acknowledged_messages() {
        assert_eq!(
            acknowledged,
            messages.len() as u64,
            "domain {domain}: a completed SCTP close means every message was acknowledged"
        );
    }
}

async fn all_close_at_once(kind: TransportKind) {
    let dir = tempfile::tempdir().unwrap();
    let c = collector::start(&config(dir.path())).await.unwrap();
    let target = match kind {
        TransportKind::SctpOverUdp => c.sctp_addrs[0],
        _ => c.framed_tcp_addrs[0],
    };
    // Hold the store's write lock while the exporters send and close: the
    // collector's writer waits (busy timeout 10 s), its sessions stop
    // reading, and messages pile up in each association's queue and then in
    // the SCTP stack, acknowledged but unread, exactly the state in which a
    // completed SHUTDOWN used to discard them. Released after all closes
    // complete or after `HOLD`, well inside the writer's busy timeout.
    let lock = rusqlite::Connection::open(dir.path().join("c.sqlite")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut exporters = tokio::task::JoinSet::new();
    for domain in 1..=EXPORTERS {
        exporters.spawn(tokio::time::timeout(BOUND, export(kind, target, domain)));
    }
    let mut finished = 0;
    let hold_until = tokio::time::Instant::now() + HOLD;
    while finished < EXPORTERS {
        tokio::select! {
            done = exporters.join_next() => {
                done.expect("an exporter left").unwrap().expect("exporter finished within the bound");
                finished += 1;
            }
            _ = tokio::time::sleep_until(hold_until) => break,
        }
    }
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    while let Some(done) = exporters.join_next().await {
        done.unwrap().expect("exporter finished within the bound");
    }
    // Every close completed, so every record was handed over: wait for the
    // collector to commit them all (bounded), then stop it.
    let total = RECORDS * u64::from(EXPORTERS);
    let deadline = Instant::now() + BOUND;
    while c
        .progress
        .committed_records
        .load(std::sync::atomic::Ordering::Acquire)
        < total
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.shutdown().await.unwrap();

    let conn = rusqlite::Connection::open(dir.path().join("c.sqlite")).unwrap();
    let mut per_domain = conn
        .prepare(
            "SELECT domain, SUM(record_count),
                    MAX(message_sequence + first_record_index + record_count)
             FROM record_blocks GROUP BY domain ORDER BY domain",
        )
        .unwrap();
    let rows: Vec<(u32, u64, u64)> = per_domain
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let short: Vec<_> = rows
        .iter()
        .filter(|&&(_, records, highest)| records != RECORDS || highest != RECORDS)
        .collect();
    assert!(
        short.is_empty() && rows.len() == EXPORTERS as usize,
        "{} of {EXPORTERS} domains stored; (domain, records, highest sequence) short of \
         {RECORDS}: {short:?}",
        rows.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sctp_associations_closing_at_once_store_every_record() {
    all_close_at_once(TransportKind::SctpOverUdp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_framed_tcp_connections_closing_at_once_store_every_record() {
    all_close_at_once(TransportKind::Tcp).await;
}
