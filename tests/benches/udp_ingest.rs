//! Benchmark (not a test): records/s the collector stores from IPFIX over UDP
//! on loopback, with SQLite persistence, at stepped offered rates. Prints
//! for each rate what was sent, stored and lost, and the highest rate with
//! less than 0.1 % loss.
//!
//! Run: `cargo bench -p poolflow-tests --bench udp_ingest`
//! (`POOLFLOW_BENCH_SECS` sets seconds per step, default 3).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use collector::config::CollectorConfig;
use exporter::generate::{GenerateConfig, GenerateTransport, generate};

fn main() {
    let secs: u64 = std::env::var("POOLFLOW_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config = CollectorConfig {
        database: dir.path().join("bench.sqlite"),
        udp_listen: vec!["127.0.0.1:0".parse().unwrap()],
        tcp_listen: vec![],
        sctp_listen: vec![],
        ..CollectorConfig::default()
    };
    let collector = runtime.block_on(collector::start(&config)).unwrap();
    let target = collector.udp_addrs[0];
    println!("UDP ingest into SQLite, 11-field records, 1400-byte messages, {secs} s per step");
    println!(
        "{:>12} {:>12} {:>12} {:>12} {:>9}",
        "offered/s", "sent", "stored", "stored/s", "loss %"
    );
    let mut best_lossless = 0f64;
    let rates = [100_000u64, 200_000, 300_000, 400_000, 600_000, 800_000, 0];
    for (step, rate) in rates.iter().enumerate() {
        let rate = (*rate > 0).then_some(*rate);
        let records = rate.map(|r| r * secs).unwrap_or(2_000_000);
        let before = collector.progress.committed_records.load(Ordering::Acquire);
        let started = Instant::now();
        let report = generate(
            &GenerateConfig {
                target,
                transport: GenerateTransport::Udp,
                records,
                rate,
                observation_domain: step as u32,
                message_size: 1400,
                template_refresh: Duration::from_secs(1),
                first_record: 0,
                tls: None,
                udp_segmentation_offload: false,
            },
            |_| {},
        )
        .unwrap();
        // Wait until the writer has caught up (no progress for 500 ms).
        let mut last = collector.progress.committed_records.load(Ordering::Acquire);
        let mut last_change = Instant::now();
        let mut done_at = Instant::now();
        while last_change.elapsed() < Duration::from_millis(500) {
            std::thread::sleep(Duration::from_millis(10));
            let now = collector.progress.committed_records.load(Ordering::Acquire);
            if now != last {
                last = now;
                last_change = Instant::now();
                done_at = last_change;
            }
        }
        let stored = last - before;
        let elapsed = done_at.duration_since(started).as_secs_f64();
        let loss = 100.0 * (report.records - stored) as f64 / report.records as f64;
        let stored_rate = stored as f64 / elapsed;
        println!(
            "{:>12} {:>12} {:>12} {:>12.0} {:>9.3}",
            rate.map(|r| r.to_string()).unwrap_or_else(|| "max".into()),
            report.records,
            stored,
            stored_rate,
            loss
        );
        if loss < 0.1 {
            best_lossless = best_lossless.max(stored_rate);
        }
    }
    println!("highest stored rate with < 0.1 % loss: {best_lossless:.0} records/s");
    runtime.block_on(collector.shutdown()).unwrap();
}
