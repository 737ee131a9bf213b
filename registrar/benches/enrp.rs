//! Registrar pool benchmarks of the sans-IO core, at 10,000 and 100,000 PEs:
//! registrations/s (with ENRP Handle Updates to two peers), handle
//! resolutions/s, the CPU cost of a takeover, and the takeover time a peer
//! sees with RSPLIB's default and with sub-second timers (simulated clock:
//! detection is timer-bound, the work is measured).
//!
//! Run: `cargo bench -p registrar --bench enrp`; with `ENRP_AUTH=1` every
//! registrar signs and checks its ENRP messages (docs/enrp-security.md).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use policies::PolicyParams;
use protocol::rserpool::asap::Message;
use protocol::rserpool::{PoolElement, TransportAddress, TransportKind, TransportUse};
use registrar::enrp::{Enrp, EnrpConfig, Outgoing, transport_of};
use registrar::handlespace::HandlespaceLimits;
use registrar::server::selection_policy;
use registrar::{Server, ServerConfig};

const PES_PER_POOL: u32 = 10;

fn server(id: u32, now: Instant) -> Server {
    let mut server = Server::new(
        ServerConfig {
            server_id: id,
            registrations_per_second: 1e12,
            registration_burst: u32::MAX,
            keep_alive_period: Duration::from_secs(3600),
            limits: HandlespaceLimits {
                max_pool_elements_per_association: usize::MAX,
                ..HandlespaceLimits::default()
            },
            ..ServerConfig::default()
        },
        now,
    );
    server.track_home_changes();
    server
}

fn registration(pe: u32) -> Vec<u8> {
    Message::Registration {
        pool_handle: format!("pool-{}", pe / PES_PER_POOL).as_str().into(),
        pool_element: PoolElement {
            pe_identifier: pe,
            home_enrp_server_identifier: 0,
            registration_life: -1,
            user_transport: TransportAddress {
                kind: TransportKind::Tcp(TransportUse::DataPlusControl),
                port: 4739,
                addresses: vec![IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | pe))],
            },
            policy: selection_policy(&PolicyParams::RoundRobin),
            asap_transport: None,
        },
        membership: None,
    }
    .to_bytes()
}

fn address(index: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 9, 0, index)), 9901)
}

fn enrp(id: u32, index: u8, peers: &[u8], now: Instant, fast: bool) -> Enrp {
    let mut config = EnrpConfig {
        server_id: id,
        advertised: Some(transport_of(address(index))),
        static_peers: peers.iter().map(|&p| address(p)).collect(),
        ..EnrpConfig::default()
    };
    if fast {
        config.heartbeat_cycle = Duration::from_millis(100);
        config.max_time_last_heard = Duration::from_millis(250);
        config.max_time_no_response = Duration::from_millis(150);
        config.takeover_expiry = Duration::from_millis(150);
    }
    if std::env::var_os("ENRP_AUTH").is_some() {
        config.auth = Some(registrar::enrp::EnrpAuth {
            key_id: 1,
            key: b"benchmark registrar pool key".to_vec(),
            accepted_keys: Vec::new(),
            max_clock_skew: Duration::from_secs(3600),
            accept_unsigned: false,
        });
    }
    Enrp::new(config, now)
}

/// With `ENRP_AUTH`, a hand-made message signed like a pool member's.
fn signed_if_keyed(mut message: Vec<u8>, sequence: u64) -> Vec<u8> {
    if std::env::var_os("ENRP_AUTH").is_some() {
        protocol::rserpool::enrp::auth::sign(
            &mut message,
            1,
            b"benchmark registrar pool key",
            sequence,
        )
        .expect("small message");
    }
    message
}

/// Registers `count` PEs (10 per pool), feeding the Handle Updates through
/// ENRP for two peers; returns registrations/s.
fn registrations(count: u32) -> (Server, f64) {
    let now = Instant::now();
    let mut server = server(1, now);
    let mut peering = enrp(1, 1, &[2, 3], now, false);
    // Make the two peers known and alive so each change is sent twice.
    for (peer, index) in [(2u32, 2u8), (3, 3)] {
        let presence = protocol::rserpool::enrp::Message {
            sender_server_id: peer,
            receiver_server_id: 0,
            body: protocol::rserpool::enrp::Body::Presence {
                reply_required: false,
                pe_checksum: 0xffff,
                server_information: Some(protocol::rserpool::ServerInformation {
                    server_identifier: peer,
                    transport: transport_of(address(index)),
                }),
            },
        }
        .to_bytes();
        let presence = signed_if_keyed(presence, u64::from(peer));
        peering.on_message(now, address(index), &presence, &mut server);
    }
    let requests: Vec<Vec<u8>> = (0..count).map(registration).collect();
    let started = Instant::now();
    let mut sent = 0usize;
    for (pe, request) in requests.iter().enumerate() {
        black_box(server.on_message(now, 1 + pe as u64 % 64, request));
        let updates = peering.on_home_changes(server.take_home_changes());
        sent += updates.len();
    }
    let rate = f64::from(count) / started.elapsed().as_secs_f64();
    assert_eq!(server.handlespace().element_count(), count as usize);
    assert_eq!(sent, 2 * count as usize);
    (server, rate)
}

fn resolutions(server: &mut Server, pool: &str) -> f64 {
    let request = Message::HandleResolution {
        pool_handle: pool.into(),
        items: None,
    }
    .to_bytes();
    let now = Instant::now();
    for _ in 0..100 {
        black_box(server.on_message(now, 99_999, &request));
    }
    let started = Instant::now();
    let mut done = 0u64;
    while started.elapsed() < Duration::from_secs(2) {
        for _ in 0..1000 {
            black_box(server.on_message(now, 99_999, &request));
        }
        done += 1000;
    }
    done as f64 / started.elapsed().as_secs_f64()
}

/// Delivers messages between two sans-IO registrars until quiet.
fn deliver(
    mut queue: Vec<(u8, Outgoing)>,
    nodes: &mut [(Server, Enrp); 2],
    now: Instant,
    alive: [bool; 2],
) {
    while let Some((from, message)) = queue.pop() {
        let to = if message.to == address(1) { 0 } else { 1 };
        if !alive[to] {
            continue;
        }
        let (server, peering) = &mut nodes[to];
        let out = peering.on_message(now, address(from), &message.payload, server);
        queue.extend(out.into_iter().map(|o| (to as u8 + 1, o)));
    }
}

/// Registrar B (index 1) holds `count` PEs; A learns them by handle table,
/// then B goes silent. Returns (table sync CPU time, simulated time from
/// B's last message to A owning its PEs, CPU time of the takeover step).
fn takeover(count: u32, fast: bool) -> (Duration, Duration, Duration) {
    let t0 = Instant::now();
    let mut nodes = [
        (server(1, t0), enrp(1, 1, &[2], t0, fast)),
        (server(2, t0), enrp(2, 2, &[1], t0, fast)),
    ];
    for pe in 0..count {
        nodes[1]
            .0
            .on_message(t0, 1 + u64::from(pe) % 64, &registration(pe));
    }
    nodes[1].0.take_home_changes();
    let started = Instant::now();
    let mut now = t0;
    let step = Duration::from_millis(10);
    while nodes[0].0.handlespace().element_count() < count as usize {
        now += step;
        let mut queue = Vec::new();
        for (index, (server, peering)) in nodes.iter_mut().enumerate() {
            server.on_timer(now);
            queue.extend(
                peering
                    .on_timer(now, server)
                    .into_iter()
                    .map(|o| (index as u8 + 1, o)),
            );
        }
        deliver(queue, &mut nodes, now, [true, true]);
        assert!(now - t0 < Duration::from_secs(60), "no sync");
    }
    let sync_cpu = started.elapsed();
    // B dies now.
    let died = now;
    let mut takeover_cpu = Duration::ZERO;
    loop {
        now += step;
        let (server, peering) = &mut nodes[0];
        server.on_timer(now);
        let cpu = Instant::now();
        black_box(peering.on_timer(now, server));
        let spent = cpu.elapsed();
        if peering.counters().takeovers == 1 {
            takeover_cpu = spent;
            break;
        }
        assert!(now - died < Duration::from_secs(60), "no takeover");
        let _ = takeover_cpu;
    }
    let owner = nodes[0]
        .0
        .handlespace()
        .element(&"pool-0".into(), 0)
        .unwrap()
        .home_registrar;
    assert_eq!(owner, 1);
    (sync_cpu, now - died, takeover_cpu)
}

fn main() {
    for count in [10_000u32, 100_000] {
        let (mut server, rate) = registrations(count);
        println!(
            "{count:>7} PEs: {rate:>10.0} registrations/s (new PEs, incl. Handle Updates to 2 peers)"
        );
        let reregistration = {
            let requests: Vec<Vec<u8>> = (0..10_000).map(registration).collect();
            let now = Instant::now();
            let started = Instant::now();
            for (pe, request) in requests.iter().enumerate() {
                black_box(server.on_message(now, 1 + pe as u64 % 64, request));
                black_box(server.take_home_changes());
            }
            10_000.0 / started.elapsed().as_secs_f64()
        };
        println!("{count:>7} PEs: {reregistration:>10.0} re-registrations/s");
        let rate = resolutions(&mut server, "pool-0");
        println!(
            "{count:>7} PEs: {rate:>10.0} handle resolutions/s ({} pools of {PES_PER_POOL})",
            count / PES_PER_POOL
        );
        for fast in [false, true] {
            let (sync, detected, cpu) = takeover(count, fast);
            println!(
                "{count:>7} PEs: {} timers: takeover {:?} after the peer's last message (simulated), \
                 takeover step {:?} CPU; initial handle table sync {:?} CPU",
                if fast { "sub-second" } else { "default" },
                detected,
                cpu,
                sync
            );
        }
    }
}
