//! Loopback throughput of SCTP-over-UDP and TCP, and the time to detect a killed peer.
//!
//! Run: `cargo bench -p transport --bench throughput` (optionally `-- --quick`).
//! Prints a table; not a pass/fail test.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use transport::{Association, Config, Endpoint, Event, Message, TransportKind, connect};

async fn established_pair(config: &Config) -> (Endpoint, Association, Association) {
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut server = Endpoint::bind(config.clone(), loopback).await.unwrap();
    let client = connect(config.clone(), server.local_addr()).await.unwrap();
    let accepted = server.accept().await.unwrap();
    (server, client, accepted)
}

/// How much to send: for a time budget, or a fixed count (for instruction counts under
/// `valgrind --tool=callgrind`, which do not depend on the machine's load).
#[derive(Clone, Copy)]
enum Amount {
    For(Duration),
    Messages(u64),
}

async fn throughput(kind: TransportKind, size: usize, amount: Amount) -> (u64, Duration) {
    let config = Config {
        transport: kind,
        ..Config::default()
    };
    let (_server, mut client, mut accepted) = established_pair(&config).await;
    assert_eq!(client.recv().await, Some(Event::Up));
    assert_eq!(accepted.recv().await, Some(Event::Up));
    let payload = Bytes::from(vec![0x5a; size]);
    let sender = client.sender();
    let started = Instant::now();
    // Send for `budget`, spread over 4 streams, then report how many were sent.
    let send_task = tokio::spawn(async move {
        let mut sent = 0u64;
        while match amount {
            Amount::For(budget) => started.elapsed() < budget,
            Amount::Messages(count) => sent < count,
        } {
            for _ in 0..256 {
                let message = Message::new((sent % 4) as u16, 18, payload.clone());
                sender.send(message).await.unwrap();
                sent += 1;
            }
        }
        // Streams are independent, so the end marker may overtake data on other streams:
        // it carries the count, and the receiver waits for all of them.
        let marker = Message::new(0, 0xffff_ffff, sent.to_be_bytes().to_vec());
        sender.send(marker).await.unwrap();
        sent
    });
    let mut received = 0u64;
    let mut expected: Option<u64> = None;
    while expected != Some(received) {
        let event = tokio::time::timeout(Duration::from_secs(10), accepted.recv())
            .await
            .unwrap_or_else(|_| panic!("stalled after {received} messages, expected {expected:?}"));
        match event {
            Some(Event::Message(message)) if message.ppid == 0xffff_ffff => {
                expected = Some(u64::from_be_bytes(message.payload[..8].try_into().unwrap()));
            }
            Some(Event::Message(_)) => received += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    let elapsed = started.elapsed();
    let sent = send_task.await.unwrap();
    assert_eq!(sent, received, "every message delivered");
    drop(client);
    (received, elapsed)
}

/// Kills a peer (its runtime, as SIGKILL would) and times the survivor's Failed event.
/// `None` when the survivor had already declared the live peer failed before the kill
/// (a false positive, e.g. when CPU starvation delays heartbeat answers past the limit).
async fn detection_time(config: &Config) -> Option<Duration> {
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut server = Endpoint::bind(config.clone(), loopback).await.unwrap();
    let server_addr = server.local_addr();
    let client_config = config.clone();
    let (runtime, client) = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let client = runtime
            .block_on(connect(client_config, server_addr))
            .unwrap();
        (runtime, client)
    })
    .await
    .unwrap();
    let mut accepted = server.accept().await.unwrap();
    assert_eq!(accepted.recv().await, Some(Event::Up));
    tokio::time::sleep(config.failure_detection_bound() * 2).await;
    let premature = tokio::time::timeout(Duration::ZERO, accepted.recv())
        .await
        .is_ok();
    std::mem::forget(client);
    let killed = Instant::now();
    runtime.shutdown_background();
    if premature {
        return None;
    }
    match accepted.recv().await {
        Some(Event::Failed(_)) | Some(Event::Down(_)) => Some(killed.elapsed()),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = Duration::from_secs(if quick { 1 } else { 3 });
    // `--messages N [--size BYTES]`: N messages (default 1400 bytes) over SCTP/UDP, nothing
    // else; for `valgrind --tool=callgrind` (instructions per message, independent of load).
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--messages") {
        let count: u64 = args[at + 1].parse().expect("--messages N");
        let size: usize = args
            .iter()
            .position(|a| a == "--size")
            .map_or(1400, |at| args[at + 1].parse().expect("--size BYTES"));
        let (messages, elapsed) =
            throughput(TransportKind::SctpOverUdp, size, Amount::Messages(count)).await;
        println!("SctpOverUdp: {messages} messages of {size} bytes in {elapsed:?}");
        return;
    }
    println!("loopback throughput, {budget:?} per run, 4 streams, ordered, reliable");
    println!(
        "{:<14} {:>6} {:>12} {:>10}",
        "transport", "bytes", "messages/s", "MB/s"
    );
    for kind in [TransportKind::SctpOverUdp, TransportKind::Tcp] {
        for size in [200usize, 1400] {
            let (messages, elapsed) = throughput(kind, size, Amount::For(budget)).await;
            let per_second = messages as f64 / elapsed.as_secs_f64();
            println!(
                "{:<14} {:>6} {:>12.0} {:>10.1}",
                format!("{kind:?}"),
                size,
                per_second,
                per_second * size as f64 / 1e6
            );
        }
    }

    let aggressive = Config {
        heartbeat_interval: Duration::from_millis(10),
        rto_initial: Duration::from_millis(10),
        rto_min: Duration::from_millis(10),
        rto_max: Duration::from_millis(20),
        max_path_retransmissions: 1,
        max_association_retransmissions: 1,
        ..Config::fast_failure_detection(TransportKind::SctpOverUdp)
    };
    let runs = if quick { 3 } else { 7 };
    for config in [
        aggressive.clone(),
        Config::fast_failure_detection(TransportKind::SctpOverUdp),
    ] {
        let mut times = Vec::new();
        let mut false_failures = 0;
        for _ in 0..runs {
            match detection_time(&config).await {
                Some(time) => times.push(time),
                None => false_failures += 1,
            }
        }
        times.sort();
        if times.is_empty() {
            println!("killed-peer detection: all {runs} runs failed the live peer early");
            continue;
        }
        println!(
            "killed-peer detection (SCTP/UDP, hb {:?}, rto {:?}..{:?}, path max retrans {}): \
             min {:?} median {:?} max {:?} over {} runs (bound {:?}); \
             {false_failures} false failures of the live peer",
            config.heartbeat_interval,
            config.rto_min,
            config.rto_max,
            config.max_path_retransmissions,
            times[0],
            times[times.len() / 2],
            times[times.len() - 1],
            times.len(),
            config.failure_detection_bound()
        );
    }
}
