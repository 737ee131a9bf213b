//! Loopback tests of the message interface over SCTP-over-UDP and TCP. Every wait is bounded.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use transport::{
    Association, Config, DownReason, Endpoint, Event, FailureReason, Message, Reliability,
    TransportKind, connect,
};

const STEP: Duration = Duration::from_secs(10);

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn config(kind: TransportKind) -> Config {
    Config {
        transport: kind,
        ..Config::fast_failure_detection(kind)
    }
}

async fn next_event(association: &mut Association) -> Event {
    tokio::time::timeout(STEP, association.recv())
        .await
        .expect("event within the step timeout")
        .expect("association still reporting")
}

async fn next_message(association: &mut Association) -> Message {
    match next_event(association).await {
        Event::Message(message) => message,
        other => panic!("expected a message, got {other:?}"),
    }
}

async fn expect_up(association: &mut Association) {
    assert_eq!(next_event(association).await, Event::Up);
}

/// A client association to `to` (where `server`'s packets arrive, directly or through a
/// relay) and the one `server` accepts.
async fn connect_to(
    server: &mut Endpoint,
    config: Config,
    to: SocketAddr,
) -> (Association, Association) {
    let client = tokio::time::timeout(STEP, connect(config, to))
        .await
        .unwrap()
        .unwrap();
    let accepted = tokio::time::timeout(STEP, server.accept())
        .await
        .unwrap()
        .unwrap();
    (client, accepted)
}

async fn pair(kind: TransportKind) -> (Endpoint, Association, Association) {
    pair_with(config(kind)).await
}

/// A listening endpoint, a client association to it and the accepted one.
async fn pair_with(config: Config) -> (Endpoint, Association, Association) {
    let mut server = Endpoint::bind(config.clone(), loopback()).await.unwrap();
    let to = server.local_addr();
    let (client, accepted) = connect_to(&mut server, config, to).await;
    (server, client, accepted)
}

async fn exchange_on_several_streams(kind: TransportKind) {
    let (_server, mut client, mut accepted) = pair(kind).await;
    expect_up(&mut client).await;
    expect_up(&mut accepted).await;

    let sent: Vec<Message> = (0..12u32)
        .map(|i| {
            Message::new(
                (i % 4) as u16,
                [11, 12, 18, 0x1234_5678][(i % 4) as usize],
                Bytes::from(format!("client message {i}")),
            )
        })
        .collect();
    for message in &sent {
        client.send(message.clone()).await.unwrap();
    }
    let mut received = Vec::new();
    for _ in 0..sent.len() {
        received.push(next_message(&mut accepted).await);
    }
    // Order is guaranteed per stream only.
    for stream in 0..4u16 {
        let expected: Vec<_> = sent.iter().filter(|m| m.stream == stream).collect();
        let got: Vec<_> = received.iter().filter(|m| m.stream == stream).collect();
        assert_eq!(got.len(), expected.len(), "stream {stream}");
        for (got, expected) in got.iter().zip(expected) {
            assert_eq!(got.payload, expected.payload);
            assert_eq!(got.ppid, expected.ppid);
            assert!(!got.unordered);
        }
    }

    // The other direction, with the unordered flag.
    for stream in [1u16, 7, 300] {
        accepted
            .send(Message::new(stream, 11, Bytes::from(vec![stream as u8; 100])).unordered())
            .await
            .unwrap();
    }
    for _ in 0..3 {
        let message = next_message(&mut client).await;
        assert!(message.unordered, "unordered flag carried");
        assert_eq!(message.ppid, 11);
        assert_eq!(
            message.payload,
            Bytes::from(vec![message.stream as u8; 100])
        );
    }

    client.close();
    assert_eq!(
        next_event(&mut client).await,
        Event::Down(DownReason::Local)
    );
    assert_eq!(
        next_event(&mut accepted).await,
        Event::Down(DownReason::Shutdown)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sctp_udp_exchange_on_several_streams() {
    exchange_on_several_streams(TransportKind::SctpOverUdp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_exchange_on_several_streams() {
    exchange_on_several_streams(TransportKind::Tcp).await;
}

async fn large_messages(kind: TransportKind) {
    let (_server, mut client, mut accepted) = pair(kind).await;
    expect_up(&mut client).await;
    expect_up(&mut accepted).await;
    let sizes = [64 * 1024, 65_535, 200_000, 1, 1201];
    for (i, size) in sizes.into_iter().enumerate() {
        let payload: Vec<u8> = (0..size).map(|b| (b * 7 + i) as u8).collect();
        client
            .send(Message::new(i as u16, 7, payload.clone()))
            .await
            .unwrap();
        let got = next_message(&mut accepted).await;
        assert_eq!(got.payload.len(), size);
        assert_eq!(
            got.payload,
            Bytes::from(payload),
            "{size}-byte message intact"
        );
    }
    let too_big = vec![0u8; config(kind).max_message_size + 1];
    assert!(client.send(Message::new(0, 7, too_big)).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sctp_udp_large_messages_fragment_and_reassemble() {
    large_messages(TransportKind::SctpOverUdp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_large_messages() {
    large_messages(TransportKind::Tcp).await;
}

async fn many_associations(kind: TransportKind) {
    const CLIENTS: usize = 24;
    let mut server = Endpoint::bind(config(kind), loopback()).await.unwrap();
    let server_addr = server.local_addr();
    let clients = tokio::spawn(async move {
        let mut clients = Vec::new();
        for i in 0..CLIENTS {
            let mut client = connect(config(kind), server_addr).await.unwrap();
            expect_up(&mut client).await;
            client
                .send(Message::new(2, 99, Bytes::from(format!("hello from {i}"))))
                .await
                .unwrap();
            clients.push(client);
        }
        clients
    });
    let mut seen = std::collections::BTreeSet::new();
    let mut accepted_all = Vec::new();
    for _ in 0..CLIENTS {
        let mut accepted = tokio::time::timeout(STEP, server.accept())
            .await
            .unwrap()
            .unwrap();
        expect_up(&mut accepted).await;
        let message = next_message(&mut accepted).await;
        assert_eq!((message.stream, message.ppid), (2, 99));
        accepted
            .send(Message::new(2, 99, message.payload.clone()))
            .await
            .unwrap();
        seen.insert(message.payload);
        accepted_all.push(accepted);
    }
    assert_eq!(seen.len(), CLIENTS, "every association distinct");
    let mut clients = clients.await.unwrap();
    for (i, client) in clients.iter_mut().enumerate() {
        let echo = next_message(client).await;
        assert_eq!(echo.payload, Bytes::from(format!("hello from {i}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sctp_udp_many_associations_on_one_server_socket() {
    many_associations(TransportKind::SctpOverUdp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_many_associations() {
    many_associations(TransportKind::Tcp).await;
}

/// Runs a client in its own runtime on its own thread, so the test can kill it the way a
/// SIGKILL would: its tasks stop and its socket closes without any SHUTDOWN or ABORT.
fn client_in_killable_runtime(
    kind: TransportKind,
    server: SocketAddr,
) -> (tokio::runtime::Runtime, Association) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let association = runtime
        .block_on(async { connect(config(kind), server).await })
        .unwrap();
    (runtime, association)
}

async fn killed_peer_is_detected(kind: TransportKind) {
    let mut server = Endpoint::bind(config(kind), loopback()).await.unwrap();
    let server_addr = server.local_addr();
    let (runtime, client) =
        tokio::task::spawn_blocking(move || client_in_killable_runtime(kind, server_addr))
            .await
            .unwrap();
    let mut accepted = tokio::time::timeout(STEP, server.accept())
        .await
        .unwrap()
        .unwrap();
    expect_up(&mut accepted).await;
    accepted
        .send(Message::new(0, 1, &b"before the kill"[..]))
        .await
        .unwrap();
    // Let heartbeats run a few rounds while the peer is alive: no false failure.
    tokio::time::sleep(config(kind).failure_detection_bound() * 3).await;

    let killed_at = Instant::now();
    std::mem::forget(client); // its Drop would start a graceful shutdown
    runtime.shutdown_background();
    // Keep data outstanding too, as a billing stream would have.
    let _ = accepted
        .send(Message::new(0, 1, &b"after the kill"[..]))
        .await;
    let bound = config(kind).failure_detection_bound();
    let event = tokio::time::timeout(bound * 10 + Duration::from_secs(1), async {
        loop {
            match accepted.recv().await {
                Some(Event::Message(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("failure reported within 10x the configured detection bound");
    let elapsed = killed_at.elapsed();
    println!("{kind:?}: killed peer detected after {elapsed:?} (bound {bound:?}): {event:?}");
    match kind {
        // Its host answers what we still send with ICMP port unreachable, quoting our
        // verification tag: the association ends on that, not on the timers.
        TransportKind::SctpOverUdp => {
            assert_eq!(event, Some(Event::Failed(FailureReason::PortUnreachable)))
        }
        // The kernel closes a killed process's TCP socket, so the survivor sees FIN or RST.
        _ => assert!(
            matches!(event, Some(Event::Down(_)) | Some(Event::Failed(_))),
            "{event:?}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sctp_udp_killed_peer_fails_the_association() {
    killed_peer_is_detected(TransportKind::SctpOverUdp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_killed_peer_ends_the_association() {
    killed_peer_is_detected(TransportKind::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sctp_udp_partial_reliability_options_deliver_on_a_clean_path() {
    let (_server, mut client, mut accepted) = pair(TransportKind::SctpOverUdp).await;
    expect_up(&mut client).await;
    expect_up(&mut accepted).await;
    let options = [
        Reliability::Reliable,
        Reliability::LimitedRetransmissions(0),
        Reliability::LimitedRetransmissions(3),
        Reliability::Lifetime(Duration::from_millis(500)),
    ];
    for (i, reliability) in options.into_iter().enumerate() {
        client
            .send(Message::new(5, 42, vec![i as u8; 3000]).with_reliability(reliability))
            .await
            .unwrap();
    }
    for i in 0..options.len() {
        let message = next_message(&mut accepted).await;
        assert_eq!(message.payload, Bytes::from(vec![i as u8; 3000]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sctp_udp_peer_restart_is_reported_on_the_same_association() {
    let mut server = Endpoint::bind(config(TransportKind::SctpOverUdp), loopback())
        .await
        .unwrap();
    let server_addr = server.local_addr();
    // The peer listens on a fixed port, so its next incarnation has the same address.
    let peer_port = {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let peer_addr: SocketAddr = format!("127.0.0.1:{peer_port}").parse().unwrap();
    let first_life = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let association = runtime.block_on(async {
            let endpoint = Endpoint::bind(config(TransportKind::SctpOverUdp), peer_addr)
                .await
                .unwrap();
            endpoint.connect(server_addr).await.unwrap()
        });
        (runtime, association)
    })
    .await
    .unwrap();
    let mut accepted = tokio::time::timeout(STEP, server.accept())
        .await
        .unwrap()
        .unwrap();
    expect_up(&mut accepted).await;
    std::mem::forget(first_life.1);
    first_life.0.shutdown_background();

    // The killed runtime releases its socket asynchronously.
    let mut attempts = 0;
    let second_life = loop {
        match Endpoint::bind(config(TransportKind::SctpOverUdp), peer_addr).await {
            Ok(endpoint) => break endpoint,
            Err(error) if attempts < 100 => {
                attempts += 1;
                let _ = error;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("peer port never freed: {error}"),
        }
    };
    let mut reborn = second_life.connect(server_addr).await.unwrap();
    expect_up(&mut reborn).await;
    assert_eq!(next_event(&mut accepted).await, Event::Restarted);
    reborn
        .send(Message::new(1, 11, &b"second life"[..]))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut accepted).await.payload,
        &b"second life"[..]
    );
    accepted
        .send(Message::new(1, 11, &b"welcome back"[..]))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut reborn).await.payload,
        &b"welcome back"[..]
    );
}

#[tokio::test]
async fn kernel_sctp_is_detected_and_refused_clearly_when_absent() {
    let bound = Endpoint::bind(config(TransportKind::KernelSctp), loopback()).await;
    match transport::kernel_sctp::probe() {
        Ok(()) => {
            println!("kernel SCTP present on this host (tests/kernel_sctp.rs exercises it)");
            assert!(bound.is_ok(), "bind must work where the kernel has SCTP");
        }
        Err(reason) => {
            println!("SKIPPED: kernel SCTP tests: {reason}");
            let text = match bound {
                Ok(_) => panic!("no kernel SCTP here, bind must fail"),
                Err(error) => error.to_string(),
            };
            println!("asking for kernel SCTP: {text}");
            assert!(text.contains("kernel SCTP unavailable"), "{text}");
            let connected = connect(
                config(TransportKind::KernelSctp),
                "127.0.0.1:9".parse().unwrap(),
            )
            .await;
            assert!(matches!(
                connected,
                Err(transport::TransportError::KernelSctpUnavailable(_))
            ));
        }
    }
}

/// A UDP relay between client and server that drops every packet carrying a DATA chunk
/// with `drop_ppid`, to watch PR-SCTP abandon a message instead of retransmitting it.
async fn lossy_relay(server: SocketAddr, drop_ppid: u32) -> SocketAddr {
    let facing_client = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
    let facing_server = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
    facing_server.connect(server).await.unwrap();
    let relay_addr = facing_client.local_addr().unwrap();
    tokio::spawn(async move {
        let mut client: Option<SocketAddr> = None;
        let mut up = vec![0u8; 65536];
        let mut down = vec![0u8; 65536];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            tokio::select! {
                Ok((len, from)) = facing_client.recv_from(&mut up) => {
                    client = Some(from);
                    if !carries_data_with_ppid(&up[..len], drop_ppid) {
                        let _ = facing_server.send(&up[..len]).await;
                    }
                }
                Ok(len) = facing_server.recv(&mut down) => {
                    if let Some(client) = client {
                        let _ = facing_client.send_to(&down[..len], client).await;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
    });
    relay_addr
}

fn carries_data_with_ppid(packet: &[u8], ppid: u32) -> bool {
    let mut offset = 12;
    while offset + 16 <= packet.len() {
        let length = u16::from_be_bytes([packet[offset + 2], packet[offset + 3]]) as usize;
        if packet[offset] == 0 && packet[offset + 12..offset + 16] == ppid.to_be_bytes() {
            return true;
        }
        if length < 4 {
            return false;
        }
        offset += length.next_multiple_of(4);
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sctp_udp_pr_sctp_abandons_a_lost_message_and_unblocks_the_stream() {
    let kind = TransportKind::SctpOverUdp;
    let mut server = Endpoint::bind(config(kind), loopback()).await.unwrap();
    let relay = lossy_relay(server.local_addr(), 99).await;
    let mut client = connect(config(kind), relay).await.unwrap();
    let mut accepted = tokio::time::timeout(STEP, server.accept())
        .await
        .unwrap()
        .unwrap();
    expect_up(&mut client).await;
    expect_up(&mut accepted).await;
    for (ppid, reliability) in [
        (99, Reliability::LimitedRetransmissions(0)),
        (1, Reliability::Reliable),
        (99, Reliability::Lifetime(Duration::from_millis(100))),
        (2, Reliability::Reliable),
    ] {
        client
            .send(Message::new(3, ppid, &b"on an ordered stream"[..]).with_reliability(reliability))
            .await
            .unwrap();
    }
    // Every transmission of the PPID 99 messages is lost; the reliable ones behind them on
    // the same ordered stream arrive only because FORWARD TSN skips the abandoned ones.
    assert_eq!(next_message(&mut accepted).await.ppid, 1);
    assert_eq!(next_message(&mut accepted).await.ppid, 2);
    // And the association is still healthy in both directions.
    accepted
        .send(Message::new(3, 5, &b"still here"[..]))
        .await
        .unwrap();
    assert_eq!(next_message(&mut client).await.ppid, 5);
}

/// Everything sent before `close()` reaches the peer before it sees the
/// association go down: a graceful shutdown must first drain the queue,
/// including data the congestion window held back (RFC 9260 section 9.2).
/// Upstream sctp-proto sent SHUTDOWN with data still queued and lost it.
async fn close_delivers_everything_queued(kind: TransportKind) {
    // Default (RFC) timers: this is about delivery, and the aggressive
    // failure-detection preset may, on a loaded machine, declare the peer
    // unreachable in the middle of a 3.6 MB burst.
    let config = Config {
        transport: kind,
        ..Config::default()
    };
    let mut endpoint = Endpoint::bind(config.clone(), loopback()).await.unwrap();
    let client = tokio::time::timeout(STEP, connect(config, endpoint.local_addr()))
        .await
        .unwrap()
        .unwrap();
    let mut server = tokio::time::timeout(STEP, endpoint.accept())
        .await
        .unwrap()
        .unwrap();
    const MESSAGES: usize = 3000;
    for i in 0..MESSAGES {
        let mut payload = vec![0u8; 1200];
        payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
        client.send(Message::new(0, 0, payload)).await.unwrap();
    }
    client.close();
    let mut received = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), server.recv()).await {
            Ok(Some(Event::Message(m))) => {
                assert_eq!(
                    u64::from_be_bytes(m.payload[..8].try_into().unwrap()),
                    received as u64,
                    "messages arrive complete and in order"
                );
                received += 1;
            }
            Ok(Some(Event::Up)) => {}
            Ok(Some(Event::Down(_))) | Ok(None) => break,
            Ok(Some(other)) => panic!("unexpected event {other:?}"),
            Err(_) => panic!("no shutdown within 30 s, {received} received"),
        }
    }
    assert_eq!(
        received, MESSAGES,
        "every queued message delivered before shutdown"
    );
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sctp_udp_close_delivers_everything_queued() {
    close_delivers_everything_queued(TransportKind::SctpOverUdp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_close_delivers_everything_queued() {
    close_delivers_everything_queued(TransportKind::Tcp).await;
}

/// A receiver whose application has fallen behind when the sender closes:
/// everything its stack acknowledged is still delivered, before `Down`. The
/// sender's graceful shutdown completes as soon as all DATA is SACKed, and
/// DATA is SACKed once it sits in the receiving stack, read or not; sctp-proto
/// dropped what was unread when SHUTDOWN COMPLETE closed the association, so
/// a collector behind its exporters lost the end of their streams with
/// nothing counted (issue 20).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sctp_udp_close_delivers_what_the_receiver_had_not_read_yet() {
    let receiver_config = Config {
        // The application's queue holds few messages, so most of the burst
        // waits in the SCTP stack, as when a collector's writer is busy.
        receive_queue_len: 4,
        ..config(TransportKind::SctpOverUdp)
    };
    let mut endpoint = Endpoint::bind(receiver_config, loopback()).await.unwrap();
    let to = endpoint.local_addr();
    let (mut client, mut server) =
        connect_to(&mut endpoint, config(TransportKind::SctpOverUdp), to).await;
    expect_up(&mut client).await;
    // 360 kB: well inside the receiver's 1 MiB window, so all of it is
    // acknowledged without the application reading anything.
    const MESSAGES: u64 = 300;
    for i in 0..MESSAGES {
        let mut payload = vec![0u8; 1200];
        payload[..8].copy_from_slice(&i.to_be_bytes());
        client.send(Message::new(0, 0, payload)).await.unwrap();
    }
    client.close();
    // The sender's close completes while the receiver reads nothing.
    assert_eq!(
        next_event(&mut client).await,
        Event::Down(DownReason::Local),
        "the sender's graceful close completes"
    );
    let mut received = 0u64;
    loop {
        match next_event(&mut server).await {
            Event::Up => {}
            Event::Message(m) => {
                assert_eq!(
                    u64::from_be_bytes(m.payload[..8].try_into().unwrap()),
                    received,
                    "messages arrive complete and in order"
                );
                received += 1;
            }
            Event::Down(reason) => {
                assert_eq!(reason, DownReason::Shutdown);
                break;
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(
        received, MESSAGES,
        "every acknowledged message reaches the application before Down"
    );
}

/// A close that cannot complete (the receiver died with data outstanding)
/// ends in `Failed`, not `Down`, and `acknowledged_messages` counts only
/// what the peer SACKed before it died: what `exporter generate` reports as
/// sent and why it then exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sctp_udp_close_to_a_dead_peer_fails_and_counts_only_what_was_acknowledged() {
    let kind = TransportKind::SctpOverUdp;
    // The sender ignores ICMP, as across a path that drops it: the retransmission timers
    // alone must end the close.
    let sender = Config {
        icmp_port_unreachable: false,
        ..config(kind)
    };
    // The receiver in a runtime of its own, so it can vanish as a SIGKILL
    // would: no SHUTDOWN, no ABORT.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (endpoint_tx, endpoint_rx) = tokio::sync::oneshot::channel();
    runtime.spawn(async move {
        let mut endpoint = Endpoint::bind(config(kind), loopback()).await.unwrap();
        endpoint_tx.send(endpoint.local_addr()).unwrap();
        let accepted = endpoint.accept().await;
        // Kept open until the runtime is killed.
        std::future::pending::<()>().await;
        drop((endpoint, accepted));
    });
    let server = endpoint_rx.await.unwrap();
    let mut client = tokio::time::timeout(STEP, connect(sender.clone(), server))
        .await
        .unwrap()
        .unwrap();
    expect_up(&mut client).await;
    for i in 0..20u8 {
        client.send(Message::new(0, 0, vec![i; 500])).await.unwrap();
    }
    let deadline = Instant::now() + STEP;
    while client.acknowledged_messages() != Some(20) {
        assert!(Instant::now() < deadline, "first 20 messages acknowledged");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    runtime.shutdown_background();
    for i in 0..5u8 {
        client.send(Message::new(0, 0, vec![i; 500])).await.unwrap();
    }
    client.close();
    let bound = config(kind).failure_detection_bound();
    let last = tokio::time::timeout(bound * 10 + Duration::from_secs(1), async {
        loop {
            match client.recv().await {
                Some(Event::Message(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the close ends within 10x the detection bound");
    assert_eq!(last, Some(Event::Failed(FailureReason::PeerUnreachable)));
    assert_eq!(
        client.acknowledged_messages(),
        Some(20),
        "the 5 messages sent after the peer died are not counted as delivered"
    );
}

/// The accepting side closing an association ends it on the connecting
/// side too (a collector refusing a forged cookie relies on this), by the
/// graceful shutdown sequence, not by failure detection.
async fn server_close_reaches_the_client(config: Config) {
    let (_endpoint, mut client, mut server) = pair_with(config).await;
    expect_up(&mut client).await;
    // As when a collector refuses what the client just sent: the close
    // follows a message from the client at once, and the handle is dropped
    // right after (both send a close request to the driver).
    client
        .send(Message::new(0, 11, vec![1u8; 64]))
        .await
        .unwrap();
    expect_up(&mut server).await;
    next_message(&mut server).await;
    server.close();
    drop(server);
    // On RFC timers failure detection takes over 30 s (heartbeat interval),
    // so an event within the step timeout can only come from the shutdown;
    // on both presets it must say so.
    assert_eq!(
        next_event(&mut client).await,
        Event::Down(DownReason::Shutdown),
        "the client must see the server's graceful close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sctp_udp_server_close_reaches_the_client() {
    server_close_reaches_the_client(config(TransportKind::SctpOverUdp)).await;
}

/// Regression: with RFC timers the client only learnt of the close when its
/// heartbeats failed (close() plus drop() discarded the SHUTDOWN).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sctp_udp_server_close_reaches_the_client_on_rfc_timers() {
    server_close_reaches_the_client(Config::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_server_close_reaches_the_client() {
    server_close_reaches_the_client(config(TransportKind::Tcp)).await;
}

/// An abort ends the association on both sides at once, even with the peer's message
/// unread (a graceful close would first deliver it both ways): what a registrar does to a
/// pool element it dropped, so the element hunts for a registrar now, not at its next
/// re-registration. RFC timers, so failure detection cannot be what ends it in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sctp_udp_abort_ends_the_association_on_both_sides_at_once() {
    let (_endpoint, mut client, mut server) = pair_with(Config::default()).await;
    expect_up(&mut client).await;
    expect_up(&mut server).await;
    client
        .send(Message::new(0, 11, vec![1u8; 64]))
        .await
        .unwrap();
    server.sender().abort();
    assert_eq!(
        next_event(&mut client).await,
        Event::Down(DownReason::Aborted),
        "the client must hear the ABORT"
    );
    // The server's own handle ends too, whatever it had not read yet.
    let last = loop {
        match next_event(&mut server).await {
            Event::Message(_) => continue,
            other => break other,
        }
    };
    assert_eq!(last, Event::Down(DownReason::Local));
    assert!(
        client
            .send(Message::new(0, 11, vec![2u8; 8]))
            .await
            .is_err(),
        "nothing can be sent on an aborted association"
    );
}

/// A peer that restarted (a new process on the same port, with no state) answers the
/// packets of our stale association with an ABORT (RFC 9260 section 8.4), so the
/// association ends at the next packet instead of after the retransmission timers, which
/// on RFC timers (RTO.Max 60 s, heartbeat 30 s) take minutes. The multi-host nemesis saw a
/// restarted registrar's peers and pool elements write into the void for ~45 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sctp_udp_a_restarted_peer_aborts_the_stale_association() {
    let rfc = Config {
        transport: TransportKind::SctpOverUdp,
        ..Config::default()
    };
    // The peer's first incarnation, in a runtime that can be killed.
    let first = rfc.clone();
    let (runtime, server_addr) = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let addr = runtime.block_on(async move {
            let mut server = Endpoint::bind(first, loopback()).await.unwrap();
            let addr = server.local_addr();
            tokio::spawn(async move {
                let mut accepted = server.accept().await.unwrap();
                while accepted.recv().await.is_some() {}
                drop(server);
            });
            addr
        });
        (runtime, addr)
    })
    .await
    .unwrap();
    let mut client = tokio::time::timeout(STEP, connect(rfc.clone(), server_addr))
        .await
        .unwrap()
        .unwrap();
    expect_up(&mut client).await;

    // The peer dies without a word, and a new process takes its port.
    runtime.shutdown_background();
    let deadline = Instant::now() + Duration::from_secs(10);
    let _restarted = loop {
        match Endpoint::bind(rfc.clone(), server_addr).await {
            Ok(endpoint) => break endpoint,
            Err(error) => {
                assert!(Instant::now() < deadline, "port not free again: {error}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let sent_at = Instant::now();
    client
        .send(Message::new(0, 1, &b"into the stale association"[..]))
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match client.recv().await {
                Some(Event::Message(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stale association ends at the restarted peer's ABORT, not by RFC timers");
    println!(
        "stale association ended after {:?}: {event:?}",
        sent_at.elapsed()
    );
    assert_eq!(event, Some(Event::Down(DownReason::Aborted)));
}

/// Plain TCP counts the messages its peer's TCP has acknowledged (Linux
/// `TCP_INFO`), as SCTP counts SACKed DATA: liveness evidence for an
/// exporter on framed TCP. While the peer's application reads nothing, the
/// count stops where its socket buffer is full, below what was sent; once
/// it reads, every message counts, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_counts_the_messages_its_peers_tcp_acknowledged() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    let config = Config {
        // The accepting side stops reading its socket after a few messages.
        receive_queue_len: 4,
        ..config(TransportKind::Tcp)
    };
    let (_server, mut client, mut accepted) = pair_with(config).await;
    expect_up(&mut client).await;
    expect_up(&mut accepted).await;
    for i in 0..20u8 {
        client.send(Message::new(0, 0, vec![i; 500])).await.unwrap();
    }
    let wait_for = |target: u64| {
        let sender = client.sender();
        async move {
            let deadline = Instant::now() + STEP;
            while sender.acknowledged_messages() != Some(target) {
                assert!(
                    Instant::now() < deadline,
                    "{target} messages acknowledged, got {:?}",
                    sender.acknowledged_messages()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    wait_for(20).await;

    // 128 MiB, far beyond what the peer's socket and ours can buffer.
    const BIG: usize = 64 * 1024;
    const COUNT: u64 = 2000;
    let sent = Arc::new(AtomicU64::new(0));
    let sender = client.sender();
    let counting = sent.clone();
    let writer = tokio::spawn(async move {
        for _ in 0..COUNT {
            sender.send(Message::new(0, 0, vec![7; BIG])).await.unwrap();
            counting.fetch_add(1, Ordering::AcqRel);
        }
    });
    // Until the sender is blocked and the count has stopped: both unchanged
    // over 20 polls in a row.
    let deadline = Instant::now() + STEP;
    let mut last = (u64::MAX, None);
    let mut unchanged = 0;
    while unchanged < 20 {
        assert!(Instant::now() < deadline, "the sender never blocked");
        tokio::time::sleep(Duration::from_millis(25)).await;
        let now = (sent.load(Ordering::Acquire), client.acknowledged_messages());
        unchanged = if now == last { unchanged + 1 } else { 0 };
        last = now;
    }
    let (blocked_at, acknowledged) = last;
    let acknowledged = acknowledged.expect("plain TCP counts") - 20;
    assert!(blocked_at < COUNT, "the sender blocked");
    assert!(
        acknowledged < blocked_at,
        "{acknowledged} of {blocked_at} counted while the peer reads nothing"
    );

    for _ in 0..20 + COUNT {
        next_message(&mut accepted).await;
    }
    writer.await.unwrap();
    wait_for(20 + COUNT).await;
}

/// RFC 6951 section 5.4: the peer's UDP encapsulation port is learnt from
/// the packets it sends. A NAT between client and server rebinds mid-
/// association (the client's packets now reach the server from another UDP
/// port; the old mapping stays open but is no longer read, as a NAT drops
/// what arrives on an expired mapping): the server's replies must follow
/// the new port, and the association lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sctp_udp_learns_the_peers_new_encapsulation_port() {
    use tokio::net::UdpSocket;

    let kind = TransportKind::SctpOverUdp;
    let mut server = Endpoint::bind(config(kind), loopback()).await.unwrap();
    let server_addr = server.local_addr();
    let inside = UdpSocket::bind(loopback()).await.unwrap();
    let nat_addr = inside.local_addr().unwrap();
    let (rebind, mut rebinds) = tokio::sync::mpsc::channel::<()>(1);
    let nat = tokio::spawn(async move {
        let mut outside = UdpSocket::bind(loopback()).await.unwrap();
        let mut expired = Vec::new();
        let mut client = None;
        let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
        loop {
            tokio::select! {
                received = inside.recv_from(&mut up) => {
                    let (n, from) = received.unwrap();
                    client = Some(from);
                    outside.send_to(&up[..n], server_addr).await.unwrap();
                }
                received = outside.recv_from(&mut down) => {
                    let (n, _) = received.unwrap();
                    if let Some(client) = client {
                        inside.send_to(&down[..n], client).await.unwrap();
                    }
                }
                Some(()) = rebinds.recv() => {
                    let new = UdpSocket::bind(loopback()).await.unwrap();
                    expired.push(std::mem::replace(&mut outside, new));
                }
            }
        }
    });
    let (mut client, mut accepted) = connect_to(&mut server, config(kind), nat_addr).await;
    expect_up(&mut client).await;
    expect_up(&mut accepted).await;
    for round in 0..2u8 {
        if round == 1 {
            rebind.send(()).await.unwrap();
        }
        client
            .send(Message::new(0, 0, vec![round; 100]))
            .await
            .unwrap();
        assert_eq!(
            &next_message(&mut accepted).await.payload[..],
            &[round; 100]
        );
        accepted
            .send(Message::new(0, 0, vec![round + 10; 100]))
            .await
            .unwrap();
        assert_eq!(
            &next_message(&mut client).await.payload[..],
            &[round + 10; 100],
            "round {round}: the server's reply reached the client"
        );
    }
    nat.abort();
}
