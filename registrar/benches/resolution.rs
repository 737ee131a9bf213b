//! Handle resolutions per second of the sans-IO core with 10,000 PEs
//! registered: each resolution is a full `Server::on_message` (decode the
//! request, select by policy over the whole pool, encode the response).
//!
//! Run: `cargo bench -p registrar --bench resolution`
//!
//! Measured here (2 shared cores): ~1,100/s for one pool of 10,000 PEs and
//! ~490,000/s for 1,000 pools of 10 PEs. The single big pool is bound by
//! `policies::PoolSelector::select`, which is O(pool size) with several hash
//! lookups per member per call (~100 ns/PE); reaching 50,000/s on a 10,000-PE
//! pool needs an incremental (O(log n)) ordered index per pool.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use policies::PolicyParams;
use protocol::rserpool::asap::Message;
use protocol::rserpool::{PoolElement, TransportAddress, TransportKind, TransportUse};
use registrar::handlespace::HandlespaceLimits;
use registrar::server::selection_policy;
use registrar::{Server, ServerConfig};

const PES: u32 = 10_000;

fn server_with_pool(name: &str, params: impl Fn(u32) -> PolicyParams, pools: u32) -> Server {
    let t0 = Instant::now();
    let mut server = Server::new(
        ServerConfig {
            registrations_per_second: 1e9,
            registration_burst: u32::MAX,
            keep_alive_period: Duration::from_secs(3600),
            limits: HandlespaceLimits {
                max_pool_elements_per_association: usize::MAX,
                ..HandlespaceLimits::default()
            },
            ..ServerConfig::default()
        },
        t0,
    );
    for id in 0..PES {
        let pool = format!("{name}-{}", id % pools);
        let request = Message::Registration {
            pool_handle: pool.as_str().into(),
            pool_element: PoolElement {
                pe_identifier: id,
                home_enrp_server_identifier: 0,
                registration_life: -1,
                user_transport: TransportAddress {
                    kind: TransportKind::Tcp(TransportUse::DataPlusControl),
                    port: (id % 60_000) as u16,
                    addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 0, (id >> 8) as u8, id as u8))],
                },
                policy: selection_policy(&params(id)),
                asap_transport: None,
            },
            membership: None,
        };
        server.on_message(t0, u64::from(id % 64), &request.to_bytes());
    }
    assert_eq!(server.handlespace().element_count(), PES as usize);
    server
}

fn measure(label: &str, server: &mut Server, pool: &str) -> f64 {
    let request = Message::HandleResolution {
        pool_handle: pool.into(),
        items: None,
    }
    .to_bytes();
    let now = Instant::now();
    // Warm up, then run for about two seconds.
    for _ in 0..100 {
        black_box(server.on_message(now, 9999, &request));
    }
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < Duration::from_secs(2) {
        for _ in 0..100 {
            black_box(server.on_message(now, 9999, black_box(&request)));
        }
        count += 100;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    println!("{label:<58} {rate:>12.0} resolutions/s");
    rate
}

fn main() {
    // `cargo test --benches` passes --bench-less args; run only under `cargo bench`.
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    println!("sans-IO handle resolution, {PES} PEs registered, 3 items per answer");
    let mut server = server_with_pool("rr", |_| PolicyParams::RoundRobin, 1);
    measure("Round Robin, one pool of 10,000 PEs", &mut server, "rr-0");
    let mut server = server_with_pool("prio", |id| PolicyParams::Priority { priority: id % 7 }, 1);
    measure("Priority, one pool of 10,000 PEs", &mut server, "prio-0");
    let mut server = server_with_pool("lu", |id| PolicyParams::LeastUsed { load: id * 7919 }, 1);
    measure("Least Used, one pool of 10,000 PEs", &mut server, "lu-0");
    let mut server = server_with_pool(
        "wr",
        |id| PolicyParams::WeightedRandom { weight: 1 + id % 5 },
        1,
    );
    measure(
        "Weighted Random, one pool of 10,000 PEs",
        &mut server,
        "wr-0",
    );
    let mut server = server_with_pool(
        "many",
        |id| PolicyParams::Priority { priority: id % 3 },
        1_000,
    );
    measure(
        "Priority, 1,000 pools of 10 PEs (typical deployment)",
        &mut server,
        "many-7",
    );
}
