//! Interop: Debian's softflowd, a real IPFIX exporter, reads a pcap we write
//! and exports its flows as IPFIX (v10) over UDP to our collector, which must
//! store one record per flow with the flow's addresses, ports and counters.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use collector::config::CollectorConfig;
use collector::query::{self, Filter, Format};
use collector::store::Store;
use poolflow_tests::pcap::{self, Packet, Transport};
use poolflow_tests::{finish_softflowd, require_tool};

const UDP_FLOWS: u16 = 40;
const TCP_FLOWS: u16 = 10;
const PACKETS_PER_FLOW: u64 = 3;
const PAYLOAD: usize = 100;

/// One-directional flows (so softflowd exports exactly one record each).
fn flows() -> Vec<Packet> {
    let mut packets = Vec::new();
    let t0 = 1_763_700_000_000_000u64;
    for f in 0..UDP_FLOWS + TCP_FLOWS {
        let src = SocketAddrV4::new(
            Ipv4Addr::new(10, 1, (f / 200) as u8, (f % 200) as u8 + 1),
            20_000 + f,
        );
        let dst = SocketAddrV4::new(
            Ipv4Addr::new(192, 0, 2, 10),
            if f < UDP_FLOWS { 53 } else { 443 },
        );
        for k in 0..PACKETS_PER_FLOW {
            let transport = if f < UDP_FLOWS {
                Transport::Udp
            } else {
                // SYN, data, FIN so the flow ends cleanly.
                let flags = [0x02, 0x18, 0x11][k as usize];
                Transport::Tcp {
                    flags,
                    seq: 1000 + k as u32 * PAYLOAD as u32,
                }
            };
            packets.push(Packet {
                src,
                dst,
                transport,
                time_us: t0 + (f as u64) * 1000 + k * 100,
                payload: vec![0x5a; PAYLOAD],
            });
        }
    }
    packets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn softflowd_ipfix_over_udp_is_stored_flow_for_flow() {
    let (Some(softflowd), Some(softflowctl)) =
        (require_tool("softflowd"), require_tool("softflowctl"))
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("flows.pcap");
    pcap::write(&mut File::create(&capture).unwrap(), &flows()).unwrap();

    let config = CollectorConfig {
        database: dir.path().join("c.sqlite"),
        udp_listen: vec!["127.0.0.1:0".parse().unwrap()],
        tcp_listen: vec![],
        sctp_listen: vec![],
        ..CollectorConfig::default()
    };
    let c = collector::start(&config).await.unwrap();
    let ctl = dir.path().join("softflowd.ctl");
    let exporter = Command::new(&softflowd)
        .arg("-d")
        .arg("-r")
        .arg(&capture)
        .args(["-n", &c.udp_addrs[0].to_string(), "-v", "10", "-A", "milli"])
        .arg("-c")
        .arg(&ctl)
        .arg("-p")
        .arg(dir.path().join("softflowd.pid"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting softflowd");
    let log =
        tokio::task::spawn_blocking(move || finish_softflowd(exporter, &softflowctl, &ctl, 50))
            .await
            .unwrap();

    let expected = (UDP_FLOWS + TCP_FLOWS) as u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.progress.committed_records.load(Ordering::Acquire) < expected {
        assert!(
            Instant::now() < deadline,
            "only {} of {expected} records stored; softflowd said: {log}",
            c.progress.committed_records.load(Ordering::Acquire)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give stragglers (options records, duplicates) a moment to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.shutdown().await.unwrap();

    let store = Store::open_read_only(&config.database).unwrap();
    let mut out = Vec::new();
    query::run(&store, &Filter::default(), Format::Json, &mut out).unwrap();
    let rows: Vec<serde_json::Value> = out
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    // softflowd may also send options records (no flow addresses): count
    // the flow records.
    let flows: Vec<_> = rows.iter().filter(|r| !r["src_addr"].is_null()).collect();
    assert_eq!(flows.len() as u64, expected, "one stored record per flow");
    let mut by_source: BTreeMap<String, &serde_json::Value> = BTreeMap::new();
    for r in &flows {
        by_source.insert(r["src_addr"].as_str().unwrap().to_owned(), r);
    }
    for f in 0..UDP_FLOWS + TCP_FLOWS {
        let src = Ipv4Addr::new(10, 1, (f / 200) as u8, (f % 200) as u8 + 1).to_string();
        let r = by_source
            .get(&src)
            .unwrap_or_else(|| panic!("flow from {src} missing"));
        assert_eq!(r["dst_addr"], "192.0.2.10");
        assert_eq!(r["src_port"], 20_000 + f);
        assert_eq!(r["dst_port"], if f < UDP_FLOWS { 53 } else { 443 });
        assert_eq!(r["protocol"], if f < UDP_FLOWS { 17 } else { 6 });
        assert_eq!(r["packets"], PACKETS_PER_FLOW);
        let header = if f < UDP_FLOWS { 20 + 8 } else { 20 + 20 };
        assert_eq!(r["octets"], PACKETS_PER_FLOW * (header + PAYLOAD) as u64);
        assert!(r["flow_start_ms"].as_i64().unwrap() >= 1_763_700_000_000);
    }
}
