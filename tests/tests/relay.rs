//! `exporter relay` end to end, with real processes: a registrar, one or two
//! collectors registered under a pool handle, and the relay as their pool
//! user. Routers are softflowd (NetFlow v9 and IPFIX over UDP, from a pcap)
//! and IPFIX written with our encoder (TCP, and UDP with malformed
//! datagrams in between). The stores, `collector::query` and the audit
//! must show every record, from an identifiable router.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use collector::audit::{AuditOptions, AuditReport, Verdict};
use collector::query::{self, Filter, Format};
use collector::store::Store;
use poolflow_tests::pcap::{self, Packet, Transport};
use poolflow_tests::pool::{LocalPool, POOL, wait_stored};
use poolflow_tests::{finish_softflowd, free_tcp_port, free_udp_port, require_tool, workspace_bin};
use protocol::ipfix::MessageWriter;
use protocol::ipfix::flow::{FLOW_TEMPLATE_ID, FlowRecord, flow_template};

const RELAY_EXPORTER_ID: u32 = 11;

/// A local pool (registrar, collectors) and the relay as its pool user.
struct Pool {
    local: LocalPool,
    relay: Option<Child>,
    relay_udp: SocketAddr,
    relay_tcp: SocketAddr,
    relay_metrics: SocketAddr,
}

impl Pool {
    /// `collectors`: 1 (a primary) or 2 (primary priority 100, backup 10).
    async fn start(collectors: usize) -> Self {
        Self::start_some(collectors, collectors).await
    }

    /// `collectors` configured, the first `running` of them started and
    /// registered.
    async fn start_some(collectors: usize, running: usize) -> Self {
        Self {
            local: LocalPool::start_some(&[100, 10][..collectors], running).await,
            relay: None,
            relay_udp: SocketAddr::from(([127, 0, 0, 1], free_udp_port())),
            relay_tcp: SocketAddr::from(([127, 0, 0, 1], free_tcp_port())),
            relay_metrics: SocketAddr::from(([127, 0, 0, 1], free_tcp_port())),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.local.path(name)
    }

    fn database(&self, i: usize) -> PathBuf {
        self.local.store(i)
    }

    fn start_collector(&mut self, i: usize) {
        self.local.start_collector(i);
    }

    fn kill_collector(&mut self, i: usize) {
        self.local.kill_collector(i);
    }

    fn start_relay(&mut self) {
        self.start_relay_with("[buffer]", "")
    }

    /// `buffer`: the `[buffer]` section; `relay_extra`: more `[relay]` keys.
    fn start_relay_with(&mut self, buffer: &str, relay_extra: &str) {
        let config = self.path("relay.toml");
        std::fs::write(
            &config,
            format!(
                r#"exporter_id = {RELAY_EXPORTER_ID}
pool_handle = "{POOL}"
registrars = ["sctp:{registrar}"]
state_file = "{state}"
metrics_listen = "{metrics}"
{buffer}
[timers]
cookie_timeout_ms = 1000
failback_check_ms = 200
retry_interval_ms = 200
failback_holdoff_ms = 500
connect_timeout_ms = 1000
cache_lifetime_ms = 500
registrar_request_timeout_ms = 1000
[relay]
udp_listen = ["{udp}"]
tcp_listen = ["{tcp}"]
{relay_extra}
"#,
                registrar = self.local.registrar_addr,
                state = self.path("relay.state").display(),
                buffer = if buffer == "[buffer]" {
                    format!("[buffer]\nspill_dir = \"{}\"", self.path("spill").display())
                } else {
                    buffer.to_owned()
                },
                metrics = self.relay_metrics,
                udp = self.relay_udp,
                tcp = self.relay_tcp,
            ),
        )
        .unwrap();
        let log = File::create(self.path("relay.log")).unwrap();
        let child = Command::new(workspace_bin("exporter"))
            .args(["relay", "--config"])
            .arg(&config)
            .args(["--exit-drain-timeout-secs", "30"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        self.relay = Some(child);
        // Ready when its TCP listener accepts (it binds UDP first).
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(self.relay_tcp).is_err() {
            assert!(
                Instant::now() < deadline,
                "relay did not start: {}",
                self.relay_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn relay_log(&self) -> String {
        std::fs::read_to_string(self.path("relay.log")).unwrap_or_default()
    }

    /// The relay's Prometheus text.
    fn relay_metrics(&self) -> String {
        let mut stream = TcpStream::connect(self.relay_metrics).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    }

    /// Waits (bounded) until a relay metric reaches `at_least`; returns
    /// the metrics text that showed it.
    async fn wait_relay_metric(&self, selector: &str, at_least: f64) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = self.relay_metrics();
            if metric(&text, selector) >= at_least {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{selector} stayed below {at_least}: {text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the relay has handed on (or dropped and counted) this
    /// many records: a stop discards what routers sent and it did not read.
    async fn wait_relay_took(&self, records: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = self.relay_metrics();
            let took = metric(&text, "poolflow_relay_forwarded_records_total")
                + metric(
                    &text,
                    "poolflow_relay_dropped_records_total{reason=\"backpressure\"}",
                );
            if took >= records as f64 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "relay took {took} of {records}: {text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM to the relay: it stops listening, drains to the pool and
    /// exits 0 only when every record it took is covered by a cookie.
    fn stop_relay(&mut self) -> String {
        let mut relay = self.relay.take().expect("relay running");
        Command::new("kill")
            .args(["-TERM", &relay.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = relay.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = relay.kill();
                panic!("relay did not stop: {}", self.relay_log());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stdout = String::new();
        relay
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let log = format!("{stdout}{}", self.relay_log());
        assert!(status.success(), "relay exited with {status}: {log}");
        log
    }

    /// Stops the collectors gracefully (they commit what they have) and the
    /// registrar.
    async fn stop(&mut self) {
        self.local.stop().await;
    }

    fn audit(&self) -> AuditReport {
        self.local.audit(false)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(mut relay) = self.relay.take() {
            let _ = relay.kill();
            let _ = relay.wait();
        }
    }
}

/// Every record in a store, as `collector query --format json` prints them.
fn query_rows(database: &Path) -> Vec<serde_json::Value> {
    let store = Store::open_read_only(database).unwrap();
    let mut out = Vec::new();
    query::run(&store, &Filter::default(), Format::Json, &mut out).unwrap();
    out.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

/// A metric's value from Prometheus text, `0` when absent. `selector` is
/// the name with its labels as printed, e.g. `x_total{reason="y"}`.
fn metric(text: &str, selector: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == selector).then(|| value.parse().unwrap())
        })
        .unwrap_or(0.0)
}

fn assert_no_loss(report: &AuditReport, records: u64) {
    let t = &report.totals;
    assert_eq!(report.verdict, Verdict::Pass, "{:?}", report.failures);
    assert_eq!(t.records_present, records, "every record present");
    assert_eq!(t.missing_records, 0);
    assert_eq!(t.conflicting_sequences, 0);
    // The relay's reliability statistics (RFC 7011 4.3) for the routers'
    // domains reached the pool; the last ones (sent once the relay drained
    // at its stop) account for every record stored.
    for g in &report.exporter_domains {
        let accounted = g
            .exporter_accounted
            .expect("the relay's statistics reached a collector");
        assert_eq!(Some(accounted), g.last_sequence.map(|l| l + 1));
        assert_eq!(g.declared_loss.records, 0);
    }
}

// ---------------------------------------------------------------------------
// (1) softflowd, a real router-side exporter, over UDP in both versions

const UDP_FLOWS: u16 = 40;
const TCP_FLOWS: u16 = 10;
const PACKETS_PER_FLOW: u64 = 3;
const PAYLOAD: usize = 100;
const PCAP_START_US: u64 = 1_763_700_000_000_000;

fn flow_source(f: u16) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::new(10, 1, (f / 200) as u8, (f % 200) as u8 + 1),
        20_000 + f,
    )
}

/// One-directional flows (so softflowd exports exactly one record each),
/// the first packet at `start_us` (UNIX microseconds).
fn flows(start_us: u64) -> Vec<Packet> {
    let mut packets = Vec::new();
    for f in 0..UDP_FLOWS + TCP_FLOWS {
        let dst = SocketAddrV4::new(
            Ipv4Addr::new(192, 0, 2, 10),
            if f < UDP_FLOWS { 53 } else { 443 },
        );
        for k in 0..PACKETS_PER_FLOW {
            let transport = if f < UDP_FLOWS {
                Transport::Udp
            } else {
                let flags = [0x02, 0x18, 0x11][k as usize];
                Transport::Tcp {
                    flags,
                    seq: 1000 + k as u32 * PAYLOAD as u32,
                }
            };
            packets.push(Packet {
                src: flow_source(f),
                dst,
                transport,
                time_us: start_us + (f as u64) * 1000 + k * 100,
                payload: vec![0x5a; PAYLOAD],
            });
        }
    }
    packets
}

/// Runs softflowd over a pcap of [`flows`] from `start_us`, exporting to
/// `target`; returns its log.
async fn run_softflowd(dir: &Path, version: &str, start_us: u64, target: SocketAddr) -> String {
    let (softflowd, softflowctl) = (
        require_tool("softflowd").unwrap(),
        require_tool("softflowctl").unwrap(),
    );
    let capture = dir.join(format!("flows-v{version}.pcap"));
    pcap::write(&mut File::create(&capture).unwrap(), &flows(start_us)).unwrap();
    let ctl = dir.join(format!("softflowd-v{version}.ctl"));
    let exporter = Command::new(&softflowd)
        .arg("-d")
        .arg("-r")
        .arg(&capture)
        .args(["-n", &target.to_string(), "-v", version])
        // IPFIX: absolute millisecond times. NetFlow v9: softflowd's
        // default, sysUpTime-relative times (FIRST_SWITCHED, LAST_SWITCHED).
        .args(if version == "10" {
            &["-A", "milli"][..]
        } else {
            &[]
        })
        .arg("-c")
        .arg(&ctl)
        .arg("-p")
        .arg(dir.join(format!("softflowd-v{version}.pid")))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting softflowd");
    tokio::task::spawn_blocking(move || finish_softflowd(exporter, &softflowctl, &ctl, 50))
        .await
        .unwrap()
}

async fn softflowd_through_the_relay(version: &str) {
    if require_tool("softflowd").is_none() || require_tool("softflowctl").is_none() {
        return;
    }
    let mut pool = Pool::start(1).await;
    pool.start_relay();
    // softflowd's NetFlow v9 times are sysUpTime: the pcap's timestamps
    // relative to softflowd's start (its boot), in an unsigned 32-bit
    // count. Live traffic comes after the start, so the pcap must too: a
    // pcap from the past wraps and no decoder can recover it.
    let start_us = if version == "9" {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        now.as_micros() as u64 + 3_000_000
    } else {
        PCAP_START_US
    };
    let softflowd_log = run_softflowd(pool.local.dir(), version, start_us, pool.relay_udp).await;
    // The last datagrams reach the relay before it stops listening.
    let protocol = if version == "9" {
        "netflow_v9"
    } else {
        "ipfix"
    };
    pool.wait_relay_metric(
        &format!("poolflow_relay_received_records_total{{protocol=\"{protocol}\"}}"),
        f64::from(UDP_FLOWS + TCP_FLOWS),
    )
    .await;
    let relay_log = pool.stop_relay();
    pool.stop().await;
    let rows = query_rows(&pool.database(0));
    // softflowd also sends options records (no flow addresses).
    let flows: Vec<_> = rows.iter().filter(|r| !r["src_addr"].is_null()).collect();
    assert_eq!(
        flows.len(),
        usize::from(UDP_FLOWS + TCP_FLOWS),
        "one stored record per flow; softflowd: {softflowd_log}; relay: {relay_log}"
    );
    let mut by_source: BTreeMap<String, &serde_json::Value> = BTreeMap::new();
    for r in &flows {
        by_source.insert(r["src_addr"].as_str().unwrap().to_owned(), r);
    }
    for f in 0..UDP_FLOWS + TCP_FLOWS {
        let src = flow_source(f);
        let r = by_source
            .get(&src.ip().to_string())
            .unwrap_or_else(|| panic!("flow from {src} missing"));
        assert_eq!(r["dst_addr"], "192.0.2.10");
        assert_eq!(r["src_port"], src.port());
        assert_eq!(r["dst_port"], if f < UDP_FLOWS { 53 } else { 443 });
        assert_eq!(r["protocol"], if f < UDP_FLOWS { 17 } else { 6 });
        assert_eq!(r["packets"], PACKETS_PER_FLOW);
        let header = if f < UDP_FLOWS { 20 + 8 } else { 20 + 20 };
        assert_eq!(r["octets"], PACKETS_PER_FLOW * (header + PAYLOAD) as u64);
        // The router: its address as the relay saw it, in every record.
        assert_eq!(
            r["fields"]["originalExporterIPv4Address"], "127.0.0.1",
            "router not identifiable: {r}"
        );
    }
    if version == "9" {
        // v9 times are sysUpTime-relative; the relay added the boot time
        // (IE 160) from the packet header, so they are absolute again. The
        // header has second resolution: allow a second and a bit.
        for r in &flows {
            assert!(
                r["fields"]["flowStartSysUpTime"].is_u64(),
                "softflowd sent no sysUpTime times: {r}"
            );
            let src = r["src_addr"].as_str().unwrap();
            let f = (0..UDP_FLOWS + TCP_FLOWS)
                .find(|&f| flow_source(f).ip().to_string() == src)
                .unwrap();
            let expected_ms = ((start_us + u64::from(f) * 1000) / 1000) as i64;
            let start_ms = r["flow_start_ms"].as_i64().expect("absolute start time");
            assert!(
                (start_ms - expected_ms).abs() <= 1_100,
                "flow {f} starts at {start_ms}, the pcap says {expected_ms}: {r}"
            );
        }
    }
    // The billing view of the same store: nothing missing.
    let report = pool.audit();
    assert_no_loss(&report, rows.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn softflowd_netflow_v9_over_udp_reaches_the_pool() {
    softflowd_through_the_relay("9").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn softflowd_ipfix_over_udp_reaches_the_pool() {
    softflowd_through_the_relay("10").await;
}

// ---------------------------------------------------------------------------
// (2) IPFIX over TCP, primary collector killed mid-stream

const TCP_RECORDS: u64 = 20_000;
const TCP_DOMAIN: u32 = 3;

/// IPFIX messages of flow records `first..first + count`, the template in
/// the first one.
fn flow_messages(domain: u32, first: u64, count: u64, with_template: bool) -> Vec<Vec<u8>> {
    let mut writer = MessageWriter::new(1400);
    let mut messages = Vec::new();
    let mut record = Vec::new();
    let mut n = first;
    let mut template_pending = with_template;
    while n < first + count {
        writer.start(domain, 1_763_700_000, (n - first) as u32);
        if template_pending {
            writer.add_template(&flow_template()).unwrap();
            template_pending = false;
        }
        while n < first + count {
            record.clear();
            FlowRecord::synthetic(n, 1_763_700_000_000).encode(&mut record);
            if writer.add_record(FLOW_TEMPLATE_ID, &record).is_err() {
                break;
            }
            n += 1;
        }
        messages.push(writer.finish().to_vec());
    }
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipfix_over_tcp_survives_sigkill_of_the_primary() {
    let mut pool = Pool::start(2).await;
    pool.start_relay();
    let relay_tcp = pool.relay_tcp;
    // The router: about 10,000 records/s for 2 s over one TCP connection.
    let router = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(relay_tcp).unwrap();
        let messages = flow_messages(TCP_DOMAIN, 0, TCP_RECORDS, true);
        let started = Instant::now();
        let per_message = Duration::from_secs(2) / messages.len() as u32;
        for (i, message) in messages.iter().enumerate() {
            stream.write_all(message).unwrap();
            let due = started + per_message * i as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    });
    // The primary dies mid-stream: once it has stored some of the records.
    wait_stored(&[pool.database(0)], RELAY_EXPORTER_ID, TCP_RECORDS / 4).await;
    pool.kill_collector(0);
    router.join().unwrap();
    pool.wait_relay_took(TCP_RECORDS).await;
    let log = pool.stop_relay();
    assert!(log.contains("failover"), "no failover: {log}");
    assert!(
        log.contains(&format!("{TCP_RECORDS} records in")),
        "relay took a different count: {log}"
    );
    pool.stop().await;
    let report = pool.audit();
    // Records the primary committed but could not acknowledge before the
    // SIGKILL were replayed to the backup: identical copies are allowed
    // (benign duplicates), loss is not.
    assert_no_loss(&report, TCP_RECORDS);
    assert!(report.stores[1].billing_records > 0, "the backup took over");
    let backup = query_rows(&pool.database(1));
    assert!(
        backup.iter().all(
            |r| r["fields"]["originalExporterIPv4Address"] == "127.0.0.1"
                && r["domain"] == TCP_DOMAIN
        ),
        "router identity lost on the backup"
    );
}

// ---------------------------------------------------------------------------
// (3) Malformed datagrams between valid ones

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_datagrams_are_counted_and_valid_ones_arrive() {
    let mut pool = Pool::start(1).await;
    pool.start_relay();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let valid = flow_messages(1, 0, 300, true);
    let mut truncated_length = valid[1].clone();
    truncated_length.truncate(40); // header says longer
    let mut v9_overrun = vec![0u8; 28];
    v9_overrun[1] = 9; // version 9, header only ...
    v9_overrun[20..24].copy_from_slice(&[1, 0, 0, 200]); // ... a flowset overrunning
    let malformed: Vec<(&str, Vec<u8>)> = vec![
        ("unknown_version", vec![0, 5, 0, 24, 1, 2, 3, 4]),
        ("length_mismatch", truncated_length),
        ("truncated_header", vec![0]),
        ("flowset_overrun", v9_overrun),
    ];
    let mut sent = 0;
    for (i, message) in valid.iter().enumerate() {
        socket.send_to(message, pool.relay_udp).unwrap();
        if let Some((_, bad)) = malformed.get(i) {
            socket.send_to(bad, pool.relay_udp).unwrap();
        }
        sent += 1;
        // Loopback UDP loses nothing at this pace.
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        sent > malformed.len(),
        "valid messages on both sides of the bad ones"
    );
    // Datagrams are handled in order: once the last valid records are
    // handed on, every malformed one before them was counted.
    pool.wait_relay_took(300).await;
    let metrics = pool.relay_metrics();
    pool.stop_relay();
    pool.stop().await;
    for (reason, _) in &malformed {
        let protocol = match *reason {
            "flowset_overrun" => "netflow_v9",
            "length_mismatch" => "ipfix",
            _ => "unknown",
        };
        let selector = format!(
            "poolflow_relay_decode_errors_total{{protocol=\"{protocol}\",reason=\"{reason}\"}}"
        );
        assert_eq!(metric(&metrics, &selector), 1.0, "{selector} in {metrics}");
    }
    let rows = query_rows(&pool.database(0));
    assert_eq!(rows.len(), 300, "every valid record arrived");
    let report = pool.audit();
    assert_no_loss(&report, 300);
}

// ---------------------------------------------------------------------------
// (4) Back-pressure: no collector, a small replay buffer

const PAUSED_RECORDS: u64 = 300_000;

/// With nowhere to send, the replay buffer fills: the TCP router is paused
/// (its writes stop being taken, nothing is lost), UDP records are dropped
/// and counted. When a collector appears, every TCP record arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_buffer_pauses_tcp_and_drops_udp_with_a_count() {
    let mut pool = Pool::start_some(1, 0).await;
    pool.start_relay_with(
        "[buffer]\nmemory_records = 1000\nmax_records = 1000",
        "queue_records = 100",
    );
    let relay_tcp = pool.relay_tcp;
    // Far more than the loopback socket buffers and the relay's buffer and
    // queue hold, so the router must be paused while no collector is there.
    let stream: Vec<u8> = flow_messages(TCP_DOMAIN, 0, PAUSED_RECORDS, true).concat();
    let (paused_tx, paused_rx) = std::sync::mpsc::channel();
    let router = std::thread::spawn(move || {
        let mut socket = TcpStream::connect(relay_tcp).unwrap();
        // A write that waits this long means the relay stopped reading.
        socket
            .set_write_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut written = 0;
        let mut paused = false;
        while written < stream.len() {
            match socket.write(&stream[written..]) {
                Ok(n) => written += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if !paused {
                        paused = true;
                        paused_tx.send(written).unwrap();
                    }
                }
                Err(e) => panic!("router write failed: {e}"),
            }
        }
        socket.shutdown(std::net::Shutdown::Write).unwrap();
        paused
    });
    let written_when_paused = paused_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the relay never paused the TCP router");
    assert!(written_when_paused < stream_len(PAUSED_RECORDS));

    // Meanwhile a UDP router's records find the queue full.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_messages = flow_messages(1, 0, 2_000, true);
    for message in &udp_messages {
        udp.send_to(message, pool.relay_udp).unwrap();
    }
    const DROPPED: &str = "poolflow_relay_dropped_records_total{reason=\"backpressure\"}";
    pool.wait_relay_metric(DROPPED, 1.0).await;

    // A collector appears: the router resumes and loses nothing.
    pool.start_collector(0);
    let router_was_paused = tokio::task::spawn_blocking(move || router.join().unwrap())
        .await
        .unwrap();
    assert!(router_was_paused);
    pool.wait_relay_took(PAUSED_RECORDS + 2_000).await;
    // Every UDP datagram is handled by now: the final count of drops.
    let metrics = pool.relay_metrics();
    let dropped = metric(&metrics, DROPPED);
    assert!(dropped > 0.0, "UDP drops not counted: {metrics}");
    assert!(dropped <= 2_000.0);
    pool.stop_relay();
    pool.stop().await;
    let report = collector::audit::run(&AuditOptions {
        databases: vec![pool.database(0)],
        exporter: None,
        domain: Some(TCP_DOMAIN),
        list_limit: 100,
        progress: false,
        ..AuditOptions::default()
    })
    .unwrap();
    assert_no_loss(&report, PAUSED_RECORDS);
    let report = collector::audit::run(&AuditOptions {
        databases: vec![pool.database(0)],
        exporter: None,
        domain: Some(1),
        list_limit: 100,
        progress: false,
        ..AuditOptions::default()
    })
    .unwrap();
    assert_eq!(
        report.totals.records_present as f64 + dropped,
        2_000.0,
        "every UDP record was either forwarded or counted as dropped"
    );
}

fn stream_len(records: u64) -> usize {
    flow_messages(TCP_DOMAIN, 0, records, true)
        .iter()
        .map(Vec::len)
        .sum()
}
