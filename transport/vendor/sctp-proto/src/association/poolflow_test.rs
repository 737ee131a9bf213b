//! poolflow regression tests that need the association's internals, driven by a small
//! sans-IO simulator: two endpoints, a packet queue with a fixed one-way latency, simulated
//! time, no sockets. See POOLFLOW-PATCHES.md.

use super::*;
use crate::AssociationHandle;
use crate::config::{ClientConfig, EndpointConfig};
use crate::endpoint::{DatagramEvent, Endpoint};
use alloc::collections::VecDeque as Queue;
use alloc::vec::Vec;
use bytes::Bytes;
use core::net::SocketAddr;

struct SimPeer {
    endpoint: Endpoint,
    addr: SocketAddr,
    association: Option<(AssociationHandle, Association)>,
    inbox: Queue<(Instant, Bytes)>,
}

impl SimPeer {
    fn next_wakeup(&self) -> Option<Instant> {
        let timer = self
            .association
            .as_ref()
            .and_then(|(_, a)| a.poll_timeout());
        let packet = self.inbox.front().map(|(at, _)| *at);
        match (timer, packet) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Client and server associations exchanging packets with `latency` each way.
struct Sim {
    client: SimPeer,
    server: SimPeer,
    now: Instant,
    latency: Duration,
}

/// The transport settings of poolflow's `Config::fast_failure_detection()`.
fn fast_transport() -> TransportConfig {
    TransportConfig::default()
        .with_rto_initial_ms(50)
        .with_rto_min_ms(20)
        .with_rto_max_ms(100)
        .with_max_data_retransmits(None)
        .with_max_receive_buffer_size(1024 * 1024)
}

impl Sim {
    fn new(transport: fn() -> TransportConfig, latency: Duration) -> Sim {
        let mut endpoint_config = EndpointConfig::new();
        endpoint_config.max_payload_size(1452 - 28);
        let endpoint_config = Arc::new(endpoint_config);
        let mut server_config = ServerConfig::new();
        server_config.transport = Arc::new(transport());
        let server = Endpoint::new(endpoint_config.clone(), Some(Arc::new(server_config)));
        let mut client = Endpoint::new(endpoint_config, None);
        let server_addr: SocketAddr = "127.0.0.1:9899".parse().unwrap();
        let client_addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let mut client_config = ClientConfig::new();
        client_config.transport = Arc::new(transport());
        let (handle, association) = client.connect(client_config, server_addr).unwrap();
        let mut sim = Sim {
            client: SimPeer {
                endpoint: client,
                addr: client_addr,
                association: Some((handle, association)),
                inbox: Queue::new(),
            },
            server: SimPeer {
                endpoint: server,
                addr: server_addr,
                association: None,
                inbox: Queue::new(),
            },
            now: Instant::now(),
            latency,
        };
        for _ in 0..100 {
            sim.step(None);
            let up = |p: &SimPeer| {
                p.association
                    .as_ref()
                    .is_some_and(|(_, a)| a.state() == AssociationState::Established)
            };
            if up(&sim.client) && up(&sim.server) {
                return sim;
            }
        }
        panic!("handshake did not complete");
    }

    fn client(&mut self) -> &mut Association {
        &mut self.client.association.as_mut().unwrap().1
    }

    fn server(&mut self) -> &mut Association {
        &mut self.server.association.as_mut().unwrap().1
    }

    /// Runs everything due now, then advances time to the next event (at most to `limit`).
    fn step(&mut self, limit: Option<Instant>) {
        let now = self.now;
        for (me, other) in [(0, 1), (1, 0)] {
            let (peer, remote_addr) = if me == 0 {
                (&mut self.client, self.server.addr)
            } else {
                (&mut self.server, self.client.addr)
            };
            while peer.inbox.front().is_some_and(|(at, _)| *at <= now) {
                let (_, packet) = peer.inbox.pop_front().unwrap();
                match peer.endpoint.handle(now, remote_addr, None, None, packet) {
                    Some((handle, DatagramEvent::NewAssociation(a))) => {
                        peer.association = Some((handle, a))
                    }
                    Some((_, DatagramEvent::AssociationEvent(event))) => {
                        if let Some((_, a)) = peer.association.as_mut() {
                            a.handle_event(event);
                        }
                    }
                    None => {}
                }
            }
            let mut out = Vec::new();
            if let Some((_, a)) = peer.association.as_mut() {
                if a.poll_timeout().is_some_and(|t| t <= now) {
                    a.handle_timeout(now);
                }
                // poolflow's driver keeps associations in the endpoint until they end.
                while a.poll_endpoint_event().is_some() {}
                while let Some(transmit) = a.poll_transmit(now) {
                    if let Payload::RawEncode(datagrams) = transmit.payload {
                        out.extend(datagrams);
                    }
                }
            }
            let target = if other == 0 {
                &mut self.client
            } else {
                &mut self.server
            };
            for datagram in out {
                target.inbox.push_back((now + self.latency, datagram));
            }
        }
        let next = [self.client.next_wakeup(), self.server.next_wakeup(), limit]
            .into_iter()
            .flatten()
            .min();
        if let Some(next) = next {
            self.now = self.now.max(next);
        }
    }
}

/// Reads whatever complete messages the server has, at most `budget`.
fn server_reads(sim: &mut Sim, budget: usize) -> usize {
    let server = sim.server();
    while server.accept_stream().is_some() {}
    let mut read = 0;
    while read < budget {
        match server.stream(0).and_then(|mut s| s.read_sctp()) {
            Ok(Some(_)) => read += 1,
            _ => break,
        }
    }
    read
}

/// A multi-MB burst to a live but slow receiver: its window closes and opens as it reads.
/// The sender's consecutive-timeout counter (RFC 9260 section 8.1 error counter) must stay
/// low: the receiver keeps acknowledging, it is plainly alive.
#[test]
fn poolflow_burst_to_slow_reader_keeps_error_count_low() {
    let mut sim = Sim::new(fast_transport, Duration::from_micros(500));
    let messages = 3000usize;
    let payload = Bytes::from(vec![7u8; 1200]);
    sim.client()
        .open_stream(0, PayloadProtocolIdentifier::Other(4))
        .unwrap();
    for _ in 0..messages {
        sim.client()
            .stream(0)
            .unwrap()
            .write_sctp(&payload, PayloadProtocolIdentifier::Other(4))
            .unwrap();
    }
    let start = sim.now;
    // The application reads one message per 300 us: a loaded machine.
    let read_interval = Duration::from_micros(300);
    let mut next_read = sim.now;
    let mut received = 0;
    let mut max_consecutive_t3 = 0;
    let mut steps = 0;
    while received < messages && steps < 2_000_000 {
        steps += 1;
        if sim.now >= next_read {
            received += server_reads(&mut sim, 1);
            next_read = sim.now + read_interval;
        }
        sim.step(Some(next_read));
        max_consecutive_t3 = max_consecutive_t3.max(sim.client().consecutive_data_timeouts());
    }
    let mut stats = sim.client().stats();
    std::println!(
        "received {received} in {:?} simulated, T3 timeouts {}, max consecutive {max_consecutive_t3}",
        sim.now - start,
        stats.get_num_t3timeouts()
    );
    assert_eq!(received, messages);
    assert!(
        max_consecutive_t3 <= 1,
        "max consecutive T3 {max_consecutive_t3}"
    );
}

/// A live receiver whose application stops reading for a second in the middle of a burst:
/// its window closes, the sender probes it, the receiver answers every probe with a SACK
/// (window still zero), then reads again. RFC 9260 section 6.1 rule A: answered probes are
/// not errors. Upstream counted every probe timeout (13 in a row here, an association
/// with Path.Max.Retrans 2 would have been declared dead after the third), delayed the
/// SACK for a dropped probe and never announced the reopened window.
#[test]
fn poolflow_zero_window_probes_answered_by_sacks_are_not_errors() {
    let mut sim = Sim::new(fast_transport, Duration::from_micros(500));
    let messages = 3000usize;
    let payload = Bytes::from(vec![7u8; 1200]);
    sim.client()
        .open_stream(0, PayloadProtocolIdentifier::Other(4))
        .unwrap();
    for _ in 0..messages {
        sim.client()
            .stream(0)
            .unwrap()
            .write_sctp(&payload, PayloadProtocolIdentifier::Other(4))
            .unwrap();
    }
    let start = sim.now;
    let stall = Duration::from_millis(5)..Duration::from_millis(1005);
    let mut received = 0;
    let mut max_consecutive_t3 = 0;
    let mut probed_zero_window = false;
    let mut steps = 0;
    while received < messages && steps < 200_000 {
        steps += 1;
        if !stall.contains(&(sim.now - start)) {
            received += server_reads(&mut sim, 50);
        }
        sim.step(Some(sim.now + Duration::from_millis(1)));
        let client = sim.client();
        probed_zero_window |= client.rwnd == 0 && client.outbound_queue.inflight_len() > 0;
        max_consecutive_t3 = max_consecutive_t3.max(client.consecutive_data_timeouts());
    }
    let mut stats = sim.client().stats();
    std::println!(
        "received {received} in {:?} simulated, T3 timeouts {}, at most {max_consecutive_t3} \
         in a row",
        sim.now - start,
        stats.get_num_t3timeouts()
    );
    assert_eq!(received, messages);
    assert!(probed_zero_window, "the scenario must close the window");
    assert!(
        max_consecutive_t3 <= 1,
        "{max_consecutive_t3} consecutive T3-rtx expiries against a peer that answers"
    );
}

/// Issue 20: the sender's graceful shutdown completes once every DATA chunk is SACKed, and
/// the receiver SACKs what sits unread in its reassembly queue. Closing must not discard it:
/// every complete unread message is kept for `poll_undelivered`, and the receiver reports
/// the close as a completed shutdown (`ApplicationClosed`), not as an ABORT.
#[test]
fn poolflow_close_keeps_acknowledged_unread_messages() {
    let mut sim = Sim::new(fast_transport, Duration::from_micros(500));
    let messages = 200usize;
    sim.client()
        .open_stream(0, PayloadProtocolIdentifier::Other(4))
        .unwrap();
    for i in 0..messages {
        let payload = Bytes::from((i as u32).to_be_bytes().repeat(300));
        sim.client()
            .stream(0)
            .unwrap()
            .write_sctp(&payload, PayloadProtocolIdentifier::Other(4))
            .unwrap();
    }
    sim.client().shutdown().unwrap();
    let mut steps = 0;
    while (sim.client().state() != AssociationState::Closed
        || sim.server().state() != AssociationState::Closed)
        && steps < 100_000
    {
        steps += 1;
        let limit = sim.now + Duration::from_millis(1);
        sim.step(Some(limit));
    }
    assert_eq!(sim.client().state(), AssociationState::Closed);
    assert_eq!(sim.server().state(), AssociationState::Closed);
    let mut lost = None;
    while let Some(event) = sim.server().poll() {
        if let Event::AssociationLost { reason } = event {
            lost = Some(reason);
        }
    }
    assert_eq!(lost, Some(AssociationError::ApplicationClosed));
    let mut kept = 0u32;
    while let Some((stream, chunks)) = sim.server().poll_undelivered() {
        assert_eq!(stream, 0);
        let bytes = chunks.to_bytes();
        assert_eq!(&bytes[..4], &kept.to_be_bytes(), "in order");
        kept += 1;
    }
    assert_eq!(kept as usize, messages, "every acknowledged message kept");
}
