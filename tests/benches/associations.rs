//! Benchmark (not a test): many concurrent IPFIX-over-SCTP associations into
//! one collector process. For each association count K it starts a fresh
//! `collector run` (release binary, SQLite store), opens K SCTP-over-UDP
//! associations from this process, measures the collector's resident memory
//! with all of them open and idle, then sends a fixed total of records split
//! evenly over the K associations, closes them all at once and waits until
//! every record is committed. Prints stored records/s (first record sent to
//! last record committed), the collector's RSS, and memory per association.
//!
//! Run: `bench/associations.sh` (builds the release collector first), or
//! `cargo bench -p poolflow-tests --bench associations -- [K...]`.
//! `POOLFLOW_BENCH_RECORDS` sets the total records per K (default 1,000,000).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use protocol::ipfix::MessageWriter;
use protocol::ipfix::flow::{FlowRecord, flow_template};
use transport::{DownReason, Event, Message, TransportKind};

/// Bound on every wait of the benchmark.
const BOUND: Duration = Duration::from_secs(300);

fn main() {
    let counts: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let counts = if counts.is_empty() {
        vec![1, 10, 100, 1000]
    } else {
        counts
    };
    let total: u64 = std::env::var("POOLFLOW_BENCH_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    println!(
        "IPFIX over SCTP over UDP into one collector (SQLite), {total} records per run, \
         1400-byte messages, all associations closing at once"
    );
    println!(
        "{:>6} {:>10} {:>8} {:>11} {:>10} {:>11} {:>12} {:>10}",
        "assocs", "stored", "secs", "stored/s", "RSS idle", "RSS K open", "per assoc", "peak RSS"
    );
    for k in counts {
        let row = runtime.block_on(run(k, total));
        println!(
            "{:>6} {:>10} {:>8.2} {:>11.0} {:>8} MB {:>8} MB {:>9} kB {:>7} MB",
            k,
            row.stored,
            row.secs,
            row.stored as f64 / row.secs,
            row.rss_idle_kb / 1024,
            row.rss_open_kb / 1024,
            row.rss_open_kb.saturating_sub(row.rss_idle_kb) / k as u64,
            row.peak_kb / 1024
        );
    }
}

struct Row {
    stored: u64,
    secs: f64,
    rss_idle_kb: u64,
    rss_open_kb: u64,
    peak_kb: u64,
}

async fn run(k: usize, total: u64) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let port = poolflow_tests::free_udp_port();
    let metrics_port = poolflow_tests::free_tcp_port();
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "database = {:?}\nudp_listen = []\ntcp_listen = []\nsctp_listen = [\"127.0.0.1:{port}\"]\n\
             metrics_listen = \"127.0.0.1:{metrics_port}\"\nmax_sctp_sessions = {}\n",
            dir.path().join("flows.sqlite"),
            k + 16
        ),
    )
    .unwrap();
    let mut collector = Collector(
        Command::new(poolflow_tests::workspace_bin("collector"))
            .args(["run", "--config"])
            .arg(&config)
            .stdout(poolflow_tests::child_log())
            .stderr(poolflow_tests::child_log())
            .spawn()
            .expect("collector starts"),
    );
    let metrics: SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    wait_for(|| scrape(metrics).is_some(), "collector metrics").await;
    let pid = collector.0.id();
    let rss_idle_kb = proc_status_kb(pid, "VmRSS");

    // Open K associations; each sends its template first, so the collector
    // holds a full IPFIX session per association while we measure.
    let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let per = total / k as u64;
    let mut associations = Vec::with_capacity(k);
    for chunk in (0..k).collect::<Vec<_>>().chunks(50) {
        let opened = chunk.iter().map(|&i| async move {
            let config = transport::Config {
                transport: TransportKind::SctpOverUdp,
                sctp_port: port,
                ..transport::Config::default()
            };
            let association = tokio::time::timeout(BOUND, transport::connect(config, target))
                .await
                .expect("connect within the bound")
                .expect("association up");
            (i as u32 + 1, association)
        });
        for opened in join_all(opened.collect()).await {
            associations.push(opened);
        }
    }
    wait_for(
        || metric(metrics, "poolflow_collector_sessions_active") >= k as f64,
        "all sessions active",
    )
    .await;
    let rss_open_kb = proc_status_kb(pid, "VmRSS");

    let start = Instant::now();
    let senders = associations.into_iter().map(|(domain, mut association)| {
        tokio::spawn(async move {
            for message in messages(domain, per) {
                association
                    .send(Message::new(0, 0, message))
                    .await
                    .expect("send");
            }
            association.close();
            loop {
                match tokio::time::timeout(BOUND, association.recv()).await {
                    Ok(Some(Event::Down(DownReason::Local))) => break,
                    Ok(Some(Event::Up)) => {}
                    other => panic!("domain {domain}: close did not complete: {other:?}"),
                }
            }
        })
    });
    for sender in senders.collect::<Vec<_>>() {
        sender.await.unwrap();
    }
    let expected = per * k as u64;
    wait_for(
        || metric(metrics, "poolflow_collector_records_stored_total") >= expected as f64,
        "every record committed",
    )
    .await;
    let secs = start.elapsed().as_secs_f64();
    let stored = metric(metrics, "poolflow_collector_records_stored_total") as u64;
    let peak_kb = proc_status_kb(pid, "VmHWM");
    collector.stop();
    Row {
        stored,
        secs,
        rss_idle_kb,
        rss_open_kb,
        peak_kb,
    }
}

/// The collector child, stopped (SIGTERM, then waited for) however the
/// benchmark ends.
struct Collector(Child);

impl Collector {
    fn stop(&mut self) {
        // A graceful stop (SIGTERM), as an operator would.
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

async fn join_all<T: Send + 'static>(
    futures: Vec<impl std::future::Future<Output = T> + Send + 'static>,
) -> Vec<T> {
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

async fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + BOUND;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `count` records of `domain` in 1400-byte IPFIX messages, template first.
fn messages(domain: u32, count: u64) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut writer = MessageWriter::new(1400);
    let (mut n, mut sequence) = (0u64, 0u32);
    while n < count {
        writer.start(domain, 1_700_000_000, sequence);
        if n == 0 {
            writer.add_template(&flow_template()).unwrap();
        }
        while n < count
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

/// A field of /proc/PID/status, in kB.
fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn scrape(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    Some(body)
}

/// Sum of a metric's samples over all label sets (0 when absent).
fn metric(addr: SocketAddr, name: &str) -> f64 {
    scrape(addr)
        .unwrap_or_default()
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
