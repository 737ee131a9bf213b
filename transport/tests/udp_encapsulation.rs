//! SCTP over UDP as other stacks see it on the wire (RFC 6951): every UDP datagram carries
//! exactly one SCTP packet. A relay between two endpoints reads each datagram the way a
//! stack that knows nothing of UDP GSO/GRO does (one `recv` is one packet, checksum over the
//! whole datagram, as RSPLIB's sctplib checks it) and counts any datagram that is not
//! exactly one SCTP packet. Every wait is bounded.

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use crc::{CRC_32_ISCSI, Crc};
use tokio::net::UdpSocket;
use transport::{Association, Config, Endpoint, Event, Message, TransportKind, connect};

const STEP: Duration = Duration::from_secs(20);
const CRC32C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

/// True when `datagram` is one SCTP packet: a common header, chunks whose padded lengths
/// end exactly at the end of the datagram, and a CRC32c over the whole datagram that
/// matches (RFC 9260 section 6.8).
fn is_exactly_one_sctp_packet(datagram: &[u8]) -> bool {
    if datagram.len() < 16 {
        return false;
    }
    let mut digest = CRC32C.digest();
    digest.update(&datagram[..8]);
    digest.update(&[0; 4]);
    digest.update(&datagram[12..]);
    if datagram[8..12] != digest.finalize().to_le_bytes() {
        return false;
    }
    let mut at = 12;
    while at < datagram.len() {
        if datagram.len() - at < 4 {
            return false;
        }
        let length = u16::from_be_bytes([datagram[at + 2], datagram[at + 3]]) as usize;
        if length < 4 {
            return false;
        }
        let padded = length.div_ceil(4) * 4;
        // The last chunk's padding may be left off.
        if at + length > datagram.len() {
            return false;
        }
        at = (at + padded).min(datagram.len());
    }
    true
}

#[derive(Default)]
struct RelayCounts {
    datagrams: AtomicU64,
    not_one_packet: AtomicU64,
    /// (UDP source port, SCTP source port, SCTP destination port) of the client's datagrams.
    client_ports: Mutex<BTreeSet<(u16, u16, u16)>>,
}

/// A UDP socket with UDP GRO switched on: the kernel hands it a GSO batch sent over
/// loopback as it was sent (several packets in one buffer), which is what a peer whose
/// socket or capture does not segment sees. A peer that always gets single datagrams reads
/// the same bytes one datagram per `recv`.
fn gro_socket() -> StdUdpSocket {
    let socket = StdUdpSocket::bind("127.0.0.1:0").unwrap();
    let on: libc::c_int = 1;
    // SAFETY: valid fd owned by `socket`; pointer and length describe a live c_int.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "UDP_GRO: {}", std::io::Error::last_os_error());
    socket.set_nonblocking(true).unwrap();
    socket
}

/// Forwards datagrams between the first client that speaks and `server`, counting each
/// datagram that is not exactly one SCTP packet. With `reply_port`, the server's packets go
/// to the client's IP at that port whatever port the client sent from, as RSPLIB's sctplib
/// answers (always to UDP 9899). Returns the relay's address.
fn spawn_relay(
    server: SocketAddr,
    counts: Arc<RelayCounts>,
    reply_port: Option<u16>,
) -> SocketAddr {
    let socket = UdpSocket::from_std(gro_socket()).unwrap();
    let relay = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut client: Option<SocketAddr> = None;
        let mut buffer = vec![0u8; 65535];
        loop {
            let Ok((len, from)) = socket.recv_from(&mut buffer).await else {
                return;
            };
            let datagram = &buffer[..len];
            counts.datagrams.fetch_add(1, Ordering::Relaxed);
            if !is_exactly_one_sctp_packet(datagram) {
                counts.not_one_packet.fetch_add(1, Ordering::Relaxed);
            }
            let to = if from == server {
                match client {
                    Some(client) => match reply_port {
                        Some(port) => SocketAddr::new(client.ip(), port),
                        None => client,
                    },
                    None => continue,
                }
            } else {
                client = Some(from);
                if datagram.len() >= 12 {
                    counts.client_ports.lock().unwrap().insert((
                        from.port(),
                        u16::from_be_bytes([datagram[0], datagram[1]]),
                        u16::from_be_bytes([datagram[2], datagram[3]]),
                    ));
                }
                server
            };
            let _ = socket.send_to(datagram, to).await;
        }
    });
    relay
}

async fn next_event(association: &mut Association) -> Event {
    tokio::time::timeout(STEP, association.recv())
        .await
        .expect("event within the step timeout")
        .expect("association still reporting")
}

/// Sends enough maximum-size DATA packets in bursts that a GSO sender would batch them, and
/// returns the relay's counts once everything arrived (`expect_delivery`) or once the relay
/// saw a datagram that is not one packet (the server, reading as the relay forwards, may
/// then abort, as sctplib's drops would stall it).
async fn burst_through_relay(client_config: Config, expect_delivery: bool) -> (u64, u64) {
    let server_config = Config::fast_failure_detection(TransportKind::SctpOverUdp);
    let mut server = Endpoint::bind(server_config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let counts = Arc::new(RelayCounts::default());
    let relay = spawn_relay(server.local_addr(), counts.clone(), None);
    let mut client = tokio::time::timeout(STEP, connect(client_config, relay))
        .await
        .unwrap()
        .unwrap();
    let mut accepted = tokio::time::timeout(STEP, server.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next_event(&mut client).await, Event::Up);
    assert_eq!(next_event(&mut accepted).await, Event::Up);
    const MESSAGES: usize = 16;
    let payload = Bytes::from(vec![0x5a; 32 * 1024]);
    for _ in 0..MESSAGES {
        client
            .send(Message::new(0, 11, payload.clone()))
            .await
            .unwrap();
    }
    if !expect_delivery {
        let deadline = tokio::time::Instant::now() + STEP;
        while counts.not_one_packet.load(Ordering::Relaxed) == 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        return (
            counts.datagrams.load(Ordering::Relaxed),
            counts.not_one_packet.load(Ordering::Relaxed),
        );
    }
    for _ in 0..MESSAGES {
        match next_event(&mut accepted).await {
            Event::Message(message) => assert_eq!(message.payload.len(), payload.len()),
            other => panic!("expected a message, got {other:?}"),
        }
    }
    (
        counts.datagrams.load(Ordering::Relaxed),
        counts.not_one_packet.load(Ordering::Relaxed),
    )
}

/// The default configuration never hands the kernel a GSO batch: every datagram the peer
/// reads is one SCTP packet.
#[tokio::test]
async fn default_config_sends_one_sctp_packet_per_datagram() {
    assert!(!Config::default().udp_segmentation_offload);
    let config = Config::fast_failure_detection(TransportKind::SctpOverUdp);
    let (datagrams, not_one_packet) = burst_through_relay(config, true).await;
    // 512 KiB in 1452-byte packets is several hundred datagrams.
    assert!(datagrams > 300, "only {datagrams} datagrams relayed");
    assert_eq!(
        not_one_packet, 0,
        "{not_one_packet} of {datagrams} datagrams were not exactly one SCTP packet"
    );
}

/// The check above can fail: with GSO explicitly on, a reader that does not segment sees
/// several SCTP packets in one buffer (the "malformed packet" tshark and sctplib saw). Where
/// the kernel has no UDP GSO at all, nothing is batched and nothing is asserted about it.
#[tokio::test]
async fn explicit_gso_batches_packets_a_plain_reader_cannot_split() {
    let config = Config {
        udp_segmentation_offload: true,
        ..Config::fast_failure_detection(TransportKind::SctpOverUdp)
    };
    let (datagrams, not_one_packet) = burst_through_relay(config, false).await;
    assert!(datagrams > 0);
    if kernel_has_udp_gso() {
        assert!(
            not_one_packet > 0,
            "GSO on, yet all {datagrams} datagrams arrived one packet each"
        );
    }
}

/// Whether this kernel takes `UDP_SEGMENT` on a UDP socket.
fn kernel_has_udp_gso() -> bool {
    let socket = StdUdpSocket::bind("127.0.0.1:0").unwrap();
    let size: libc::c_int = 1200;
    // SAFETY: valid fd owned by `socket`; pointer and length describe a live c_int.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

/// A UDP port that was free a moment ago.
fn free_udp_port() -> u16 {
    StdUdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Connects through a relay that answers to `reply_port` only; true when the handshake
/// completed and a message went each way.
async fn exchange_through_fixed_port_peer(
    local_udp_port: u16,
    reply_port: u16,
    counts: Arc<RelayCounts>,
) -> bool {
    let server_config = Config::fast_failure_detection(TransportKind::SctpOverUdp);
    let mut server = Endpoint::bind(server_config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let relay = spawn_relay(server.local_addr(), counts, Some(reply_port));
    let client_config = Config {
        local_udp_port,
        ..Config::fast_failure_detection(TransportKind::SctpOverUdp)
    };
    let Ok(Ok(mut client)) = tokio::time::timeout(STEP, connect(client_config, relay)).await else {
        return false;
    };
    let mut accepted = tokio::time::timeout(STEP, server.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next_event(&mut client).await, Event::Up);
    assert_eq!(next_event(&mut accepted).await, Event::Up);
    client
        .send(Message::new(0, 11, Bytes::from_static(b"to the registrar")))
        .await
        .unwrap();
    accepted
        .send(Message::new(0, 11, Bytes::from_static(b"to the element")))
        .await
        .unwrap();
    let to_server = next_event(&mut accepted).await;
    let to_client = next_event(&mut client).await;
    matches!(to_server, Event::Message(m) if m.payload == "to the registrar")
        && matches!(to_client, Event::Message(m) if m.payload == "to the element")
}

/// RFC 6951 with a peer that answers to a fixed UDP port (sctplib's habit): an outbound
/// association that leaves from that port completes, and every datagram it sent carried it.
#[tokio::test]
async fn outbound_association_from_the_configured_port_reaches_a_fixed_port_peer() {
    let port = free_udp_port();
    let counts = Arc::new(RelayCounts::default());
    assert!(exchange_through_fixed_port_peer(port, port, counts.clone()).await);
    let ports = counts.client_ports.lock().unwrap().clone();
    assert!(!ports.is_empty());
    assert!(
        ports.iter().all(|&(udp, _, _)| udp == port),
        "client datagrams left from {ports:?}, not UDP port {port}"
    );
}

/// The check above can fail: from an ephemeral port the fixed-port peer's INIT ACK goes
/// where nobody listens, and the handshake never completes.
#[tokio::test]
async fn ephemeral_source_port_loses_a_fixed_port_peers_replies() {
    let counts = Arc::new(RelayCounts::default());
    assert!(!exchange_through_fixed_port_peer(0, free_udp_port(), counts.clone()).await);
    // The INITs did reach the relay: only the replies were lost.
    assert!(counts.datagrams.load(Ordering::Relaxed) > 0);
}

/// A listening endpoint's outbound associations leave from its own UDP port and SCTP port
/// (the ports it advertises, as RSPLIB's registrar checks ENRP peers against), toward the
/// SCTP port named per connect.
#[tokio::test]
async fn listener_connects_from_its_listening_port() {
    let config = Config::fast_failure_detection(TransportKind::SctpOverUdp);
    let mut server = Endpoint::bind(config.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let listener = Endpoint::bind(config.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let listening_port = listener.local_addr().port();
    let counts = Arc::new(RelayCounts::default());
    let relay = spawn_relay(server.local_addr(), counts.clone(), None);
    let connector = listener.connector(&config);
    let mut client = tokio::time::timeout(STEP, connector.connect_to_port(relay, 9901))
        .await
        .unwrap()
        .unwrap();
    let mut accepted = tokio::time::timeout(STEP, server.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next_event(&mut client).await, Event::Up);
    assert_eq!(next_event(&mut accepted).await, Event::Up);
    let ports = counts.client_ports.lock().unwrap().clone();
    assert!(!ports.is_empty());
    assert!(
        ports
            .iter()
            .all(|&ports| ports == (listening_port, listening_port, 9901)),
        "(UDP source, SCTP source, SCTP destination) ports {ports:?}, expected \
         ({listening_port}, {listening_port}, 9901)"
    );
}
