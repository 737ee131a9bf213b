//! The message interface over native kernel SCTP, on loopback. These run only where the
//! kernel has SCTP (`modprobe sctp`); elsewhere (most containers, CI) each prints
//! `SKIPPED: <reason>` and passes, since there is nothing to test against.
//! `tests/run.sh` runs them for real in a QEMU VM (`kernel-vm/run.sh`, which
//! sets `POOLFLOW_KERNEL_SCTP_VM`): there a missing SCTP module fails them.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use transport::{
    Association, Config, DownReason, Endpoint, Event, Message, Reliability, TransportError,
    TransportKind, connect, kernel_sctp,
};

const STEP: Duration = Duration::from_secs(10);

fn kernel_sctp_or_skip(test: &str) -> bool {
    match kernel_sctp::probe() {
        Ok(()) => true,
        // Inside the kernel VM (transport/tests/kernel-vm/run.sh) SCTP is
        // what is under test: a module that did not load is a failure, not
        // a reason to skip.
        Err(reason) if std::env::var_os("POOLFLOW_KERNEL_SCTP_VM").is_some() => {
            panic!("{test}: the kernel VM has no SCTP ({reason}): sctp.ko did not load")
        }
        Err(reason) => {
            println!("SKIPPED: {test}: no kernel SCTP on this host ({reason})");
            false
        }
    }
}

fn config() -> Config {
    Config::fast_failure_detection(TransportKind::KernelSctp)
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
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

async fn pair() -> (Endpoint, Association, Association) {
    let mut server = Endpoint::bind(config(), loopback()).await.unwrap();
    let mut client = tokio::time::timeout(STEP, connect(config(), server.local_addr()))
        .await
        .unwrap()
        .unwrap();
    let mut accepted = tokio::time::timeout(STEP, server.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next_event(&mut client).await, Event::Up);
    assert_eq!(next_event(&mut accepted).await, Event::Up);
    (server, client, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_sctp_exchanges_messages_with_streams_ppids_and_flags() {
    if !kernel_sctp_or_skip("kernel_sctp_exchanges_messages_with_streams_ppids_and_flags") {
        return;
    }
    let (_server, mut client, mut accepted) = pair().await;
    let sent: Vec<Message> = (0..12u32)
        .map(|i| {
            let message = Message::new(
                (i % 4) as u16,
                [11, 12, 18, 0x1234_5678][(i % 4) as usize],
                Bytes::from(format!("client message {i}")),
            );
            if i % 4 == 3 {
                message.unordered()
            } else {
                message
            }
        })
        .collect();
    for message in &sent {
        client.send(message.clone()).await.unwrap();
    }
    let mut received = Vec::new();
    for _ in 0..sent.len() {
        received.push(next_message(&mut accepted).await);
    }
    for stream in 0..4u16 {
        let expected: Vec<_> = sent.iter().filter(|m| m.stream == stream).collect();
        let got: Vec<_> = received.iter().filter(|m| m.stream == stream).collect();
        assert_eq!(got.len(), expected.len());
        for (got, expected) in got.iter().zip(expected) {
            assert_eq!(got.ppid, expected.ppid, "PPID carried verbatim");
            assert_eq!(got.unordered, expected.unordered);
            if !expected.unordered {
                assert_eq!(got.payload, expected.payload, "ordered within the stream");
            }
        }
    }
    accepted
        .send(Message::new(1, 11, Bytes::from_static(b"reply")))
        .await
        .unwrap();
    let reply = next_message(&mut client).await;
    assert_eq!((reply.stream, reply.ppid), (1, 11));
    assert_eq!(reply.payload, Bytes::from_static(b"reply"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_sctp_large_messages_arrive_whole() {
    if !kernel_sctp_or_skip("kernel_sctp_large_messages_arrive_whole") {
        return;
    }
    let (_server, client, mut accepted) = pair().await;
    for size in [1usize, 1500, 70_000, 256 * 1024] {
        let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        client
            .send(Message::new(0, 4, payload.clone()))
            .await
            .unwrap();
        let message = next_message(&mut accepted).await;
        assert_eq!(message.payload.len(), size);
        assert_eq!(&message.payload[..], &payload[..]);
    }
    let too_large = vec![0u8; config().max_message_size + 1];
    assert!(matches!(
        client.send(Message::new(0, 4, too_large)).await,
        Err(TransportError::MessageTooLarge { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_sctp_partial_reliability_delivers_on_a_clean_path() {
    if !kernel_sctp_or_skip("kernel_sctp_partial_reliability_delivers_on_a_clean_path") {
        return;
    }
    let (_server, client, mut accepted) = pair().await;
    let reliabilities = [
        Reliability::Lifetime(Duration::from_secs(5)),
        Reliability::LimitedRetransmissions(3),
        Reliability::Reliable,
    ];
    for (i, reliability) in reliabilities.into_iter().enumerate() {
        client
            .send(Message::new(2, 4, vec![i as u8; 100]).with_reliability(reliability))
            .await
            .unwrap();
    }
    for i in 0..3u8 {
        assert_eq!(next_message(&mut accepted).await.payload[0], i);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_sctp_server_close_reaches_the_client_gracefully() {
    if !kernel_sctp_or_skip("kernel_sctp_server_close_reaches_the_client_gracefully") {
        return;
    }
    let (_server, mut client, mut accepted) = pair().await;
    client
        .send(Message::new(0, 11, vec![1u8; 64]))
        .await
        .unwrap();
    next_message(&mut accepted).await;
    accepted.close();
    drop(accepted);
    assert_eq!(
        next_event(&mut client).await,
        Event::Down(DownReason::Shutdown)
    );
    assert!(
        client
            .send(Message::new(0, 11, vec![1u8; 8]))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_sctp_close_delivers_everything_queued() {
    if !kernel_sctp_or_skip("kernel_sctp_close_delivers_everything_queued") {
        return;
    }
    let (_server, client, mut accepted) = pair().await;
    const MESSAGES: usize = 3000;
    for i in 0..MESSAGES {
        let mut payload = vec![0u8; 1200];
        payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
        client.send(Message::new(0, 4, payload)).await.unwrap();
    }
    client.close();
    for i in 0..MESSAGES {
        let message = next_message(&mut accepted).await;
        assert_eq!(message.payload[..8], (i as u64).to_be_bytes());
    }
    assert_eq!(
        next_event(&mut accepted).await,
        Event::Down(DownReason::Shutdown)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_sctp_connect_to_a_closed_port_fails() {
    if !kernel_sctp_or_skip("kernel_sctp_connect_to_a_closed_port_fails") {
        return;
    }
    // Bind and drop to find a port nobody listens on.
    let port = Endpoint::bind(config(), loopback())
        .await
        .unwrap()
        .local_addr()
        .port();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let target: SocketAddr = ([127, 0, 0, 1], port).into();
    let result = tokio::time::timeout(STEP, connect(config(), target))
        .await
        .expect("connect gives up within its own timeout");
    assert!(
        matches!(
            result,
            Err(TransportError::ConnectFailed(_) | TransportError::ConnectTimeout(_))
        ),
        "{:?}",
        result.map(|_| ())
    );
}

/// The kernel's UDP port for encapsulated SCTP inside the test VM
/// (`net.sctp.udp_port`; RFC 6951's default).
const KERNEL_UDP_ENCAPSULATION_PORT: u16 = 9899;

/// Linux's own SCTP over UDP (RFC 6951, Linux 5.11+) against our user-space
/// SCTP-over-UDP endpoint, both ways: an SCTP stack nobody here wrote
/// accepts and opens associations with ours, with streams, PPIDs and
/// unordered messages intact. It sets the host-wide `net.sctp` sysctls, so
/// it runs only inside the throw-away VM of `tests/kernel-vm/run.sh`
/// (which sets `POOLFLOW_KERNEL_SCTP_VM=1`); elsewhere it prints SKIPPED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_sctp_over_udp_interoperates_with_user_space_sctp() {
    let test = "kernel_sctp_over_udp_interoperates_with_user_space_sctp";
    if std::env::var_os("POOLFLOW_KERNEL_SCTP_VM").is_none() {
        println!("SKIPPED: {test}: changes net.sctp sysctls, runs only in tests/kernel-vm/run.sh");
        return;
    }
    if !kernel_sctp_or_skip(test) {
        return;
    }
    // Our user-space endpoint: UDP port = SCTP port, as RFC 6951 setups do.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let ours_port = udp.local_addr().unwrap().port();
    drop(udp);
    let mut user_space = Config::fast_failure_detection(TransportKind::SctpOverUdp);
    user_space.sctp_port = ours_port;
    // No UDP GSO toward a kernel SCTP-over-UDP stack on the same host: the
    // 6.1 kernel then sometimes crashes in sctp_udp_rcv (a double free; 2 of
    // 8 boots with GSO, 0 of 14 without). The driver's own guard (no GSO
    // while net.sctp.udp_port is set) did not prevent it; likely GSO sends of
    // our lingering associations race the tunnel socket's teardown when the
    // test resets the sysctl. Across hosts packets are segmented before they
    // leave the sender.
    user_space.udp_segmentation_offload = false;
    let mut ours = Endpoint::bind(
        user_space.clone(),
        SocketAddr::from(([127, 0, 0, 1], ours_port)),
    )
    .await
    .unwrap();
    // The kernel receives encapsulated SCTP on UDP 9899 and encapsulates
    // what it sends to our UDP port, until the guard turns both off again
    // (the other tests want plain kernel SCTP).
    let _encapsulation = KernelUdpEncapsulation::enable(KERNEL_UDP_ENCAPSULATION_PORT, ours_port);

    // 1. The kernel connects to us.
    let mut kernel_client = tokio::time::timeout(
        STEP,
        connect(config(), SocketAddr::from(([127, 0, 0, 1], ours_port))),
    )
    .await
    .expect("the kernel's INIT reaches us and our INIT ACK reaches it")
    .unwrap();
    let mut accepted = tokio::time::timeout(STEP, ours.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next_event(&mut kernel_client).await, Event::Up);
    assert_eq!(next_event(&mut accepted).await, Event::Up);
    exchange(&mut kernel_client, &mut accepted).await;

    // 2. We connect to a kernel endpoint (its SCTP port in the header, the
    // kernel's encapsulation port as the UDP destination).
    let mut kernel_server = Endpoint::bind(config(), loopback()).await.unwrap();
    let mut to_kernel = user_space.clone();
    to_kernel.sctp_port = kernel_server.local_addr().port();
    let mut user_client = tokio::time::timeout(
        STEP,
        connect(
            to_kernel,
            SocketAddr::from(([127, 0, 0, 1], KERNEL_UDP_ENCAPSULATION_PORT)),
        ),
    )
    .await
    .expect("our INIT reaches the kernel and its INIT ACK reaches us")
    .unwrap();
    let mut kernel_accepted = tokio::time::timeout(STEP, kernel_server.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next_event(&mut user_client).await, Event::Up);
    assert_eq!(next_event(&mut kernel_accepted).await, Event::Up);
    exchange(&mut user_client, &mut kernel_accepted).await;
    println!("{test}: the kernel's SCTP over UDP and ours exchanged messages both ways");
}

/// `net.sctp.udp_port` and `net.sctp.encap_port` set while it lives.
struct KernelUdpEncapsulation;

impl KernelUdpEncapsulation {
    fn enable(local_udp_port: u16, remote_udp_port: u16) -> Self {
        Self::write(local_udp_port, remote_udp_port);
        Self
    }

    fn write(local_udp_port: u16, remote_udp_port: u16) {
        std::fs::write("/proc/sys/net/sctp/udp_port", local_udp_port.to_string()).unwrap();
        std::fs::write("/proc/sys/net/sctp/encap_port", remote_udp_port.to_string()).unwrap();
    }
}

impl Drop for KernelUdpEncapsulation {
    fn drop(&mut self) {
        Self::write(0, 0);
    }
}

/// Messages on several streams with several PPIDs from `a` to `b`, a reply
/// back: each arrives whole, in order within its stream.
async fn exchange(a: &mut Association, b: &mut Association) {
    let sent: Vec<Message> = (0..9u32)
        .map(|i| {
            Message::new(
                (i % 3) as u16,
                [0, 11, 12][(i % 3) as usize],
                Bytes::from(format!("message {i} {}", "x".repeat(i as usize * 300))),
            )
        })
        .collect();
    for message in &sent {
        a.send(message.clone()).await.unwrap();
    }
    let mut received = Vec::new();
    for _ in 0..sent.len() {
        received.push(next_message(b).await);
    }
    for stream in 0..3u16 {
        let expected: Vec<_> = sent.iter().filter(|m| m.stream == stream).collect();
        let got: Vec<_> = received.iter().filter(|m| m.stream == stream).collect();
        assert_eq!(got.len(), expected.len());
        for (got, expected) in got.iter().zip(expected) {
            assert_eq!((got.ppid, &got.payload), (expected.ppid, &expected.payload));
        }
    }
    b.send(Message::new(2, 11, Bytes::from_static(b"reply")).unordered())
        .await
        .unwrap();
    let reply = next_message(a).await;
    assert_eq!((reply.stream, reply.ppid, reply.unordered), (2, 11, true));
    assert_eq!(reply.payload, Bytes::from_static(b"reply"));
}

/// An endpoint's connector opens associations from the endpoint's own socket, so
/// from its listening port, while the endpoint keeps accepting (RSPLIB's registrar
/// refuses an ENRP peer whose association comes from another port than it advertises).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_sctp_connector_leaves_from_the_listening_port() {
    if !kernel_sctp_or_skip("kernel_sctp_connector_leaves_from_the_listening_port") {
        return;
    }
    let mut peer = Endpoint::bind(config(), loopback()).await.unwrap();
    let mut ours = Endpoint::bind(config(), loopback()).await.unwrap();
    let connector = ours.connector(&config());
    let mut outbound = tokio::time::timeout(STEP, connector.connect_to_port(peer.local_addr(), 0))
        .await
        .unwrap()
        .unwrap();
    let mut accepted = tokio::time::timeout(STEP, peer.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next_event(&mut outbound).await, Event::Up);
    assert_eq!(next_event(&mut accepted).await, Event::Up);
    assert_eq!(
        accepted.remote_addr().port(),
        ours.local_addr().port(),
        "the association leaves from the listening port"
    );
    // The endpoint still accepts while its connector is in use.
    let mut inbound = tokio::time::timeout(STEP, connect(config(), ours.local_addr()))
        .await
        .unwrap()
        .unwrap();
    let mut inbound_accepted = tokio::time::timeout(STEP, ours.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next_event(&mut inbound).await, Event::Up);
    assert_eq!(next_event(&mut inbound_accepted).await, Event::Up);
}
