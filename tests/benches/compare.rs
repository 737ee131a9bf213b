//! Benchmark driver (not a test): our collector side by side with nfcapd
//! (nfdump) and nfacctd (pmacct) on loopback, fed the same standard IPFIX
//! load by our generator. For each collector it finds the highest offered
//! rate stored with < 0.1 % loss, the median of several runs, and prints a
//! table with CPU use and the ratio of ours to each peer; then ours alone
//! over TCP, and the exporter's own send rate. Method: BENCHMARKS.md.
//!
//! Run: `bench/run.sh` (builds the release binaries first), or
//! `cargo bench -p poolflow-tests --bench compare` after
//! `cargo build --release -p collector`.
//!
//! Environment: `POOLFLOW_BENCH_SECS` seconds per trial (default 2),
//! `POOLFLOW_BENCH_RUNS` runs per collector (default 3),
//! `POOLFLOW_BENCH_ONLY` comma list of `poolflow,nfcapd,nfacctd,tcp,sctp,exporter`,
//! `POOLFLOW_COLLECTOR_BIN` collector binary to measure (default: the release
//! build next to this bench), `POOLFLOW_BENCH_DIR` where stores are written
//! (default: the system temp dir; use a real disk, not tmpfs).

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use exporter::generate::{GenerateConfig, GenerateReport, GenerateTransport, generate};

/// Largest loss at which a rate counts as sustained.
const MAX_LOSS: f64 = 0.001;
/// Every collector gets the same kernel receive buffer.
const RECEIVE_BUFFER_BYTES: usize = 32 * 1024 * 1024;
/// Paced trials per run after the unpaced one (bisection steps).
const SEARCH_STEPS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Poolflow,
    Nfcapd,
    Nfacctd,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Poolflow => "poolflow (SQLite)",
            Peer::Nfcapd => "nfcapd",
            Peer::Nfacctd => "nfacctd (memory)",
        }
    }
}

/// One trial: what was offered and what the collector kept.
#[derive(Debug, Clone, Copy)]
struct Trial {
    offered_per_sec: f64,
    sent: u64,
    stored: u64,
    /// Collector CPU (all its processes) over the trial, in cores.
    cpu_cores: f64,
}

impl Trial {
    fn loss(&self) -> f64 {
        1.0 - self.stored as f64 / self.sent.max(1) as f64
    }
    fn passed(&self) -> bool {
        self.loss() < MAX_LOSS
    }
}

struct Bench {
    secs: f64,
    dir: PathBuf,
    collector_bin: PathBuf,
}

fn main() {
    let secs: f64 = env_or("POOLFLOW_BENCH_SECS", 2.0);
    let runs: usize = env_or("POOLFLOW_BENCH_RUNS", 3);
    let only = std::env::var("POOLFLOW_BENCH_ONLY").unwrap_or_default();
    let wanted = |what: &str| only.is_empty() || only.split(',').any(|w| w.trim() == what);
    let base = std::env::var_os("POOLFLOW_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).expect("bench directory");
    let bench = Bench {
        secs,
        dir: dir.path().to_owned(),
        collector_bin: collector_binary(),
    };
    print_machine(&bench);

    let mut results: Vec<(Peer, Option<Trial>, String)> = Vec::new();
    for peer in [Peer::Poolflow, Peer::Nfcapd, Peer::Nfacctd] {
        let key = match peer {
            Peer::Poolflow => "poolflow",
            Peer::Nfcapd => "nfcapd",
            Peer::Nfacctd => "nfacctd",
        };
        if !wanted(key) {
            continue;
        }
        if let Some(missing) = missing_tool(peer) {
            eprintln!("skipping {}: {missing}", peer.name());
            results.push((peer, None, missing));
            continue;
        }
        let mut best = Vec::new();
        for run in 1..=runs {
            let trial = bench.highest_lossless(peer);
            eprintln!(
                "{} run {run}: {:.0} records/s, loss {:.3} %, {:.2} cores",
                peer.name(),
                trial.offered_per_sec,
                100.0 * trial.loss(),
                trial.cpu_cores
            );
            best.push(trial);
        }
        let runs_text = best
            .iter()
            .map(|t| format!("{:.2}M", t.offered_per_sec / 1e6))
            .collect::<Vec<_>>()
            .join(" ");
        results.push((peer, Some(median_by_rate(best)), runs_text));
    }

    let streams: Vec<(&str, Trial)> = [
        ("TCP", GenerateTransport::Tcp),
        ("SCTP over UDP", GenerateTransport::Sctp),
    ]
    .into_iter()
    .filter(|(name, _)| wanted(if *name == "TCP" { "tcp" } else { "sctp" }))
    .map(|(name, transport)| {
        let trials: Vec<Trial> = (0..runs)
            .map(|_| bench.poolflow_stream(transport))
            .collect();
        (name, median_by_rate(trials))
    })
    .collect();
    let exporter = wanted("exporter").then(|| {
        let udp: Vec<f64> = (0..runs)
            .map(|_| exporter_rate(GenerateTransport::Udp, secs))
            .collect();
        let tcp: Vec<f64> = (0..runs)
            .map(|_| exporter_rate(GenerateTransport::Tcp, secs))
            .collect();
        (median(udp), median(tcp))
    });
    print_table(&results, &streams, exporter, runs, secs);
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The collector binary: `POOLFLOW_COLLECTOR_BIN`, else the release build
/// of this target directory (this bench runs from `<target>/release/deps`).
fn collector_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("POOLFLOW_COLLECTOR_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("bench executable path");
    let target = exe.parent().and_then(Path::parent).expect("target dir");
    let candidate = target.join("collector");
    assert!(
        candidate.exists(),
        "{} missing: run `cargo build --release -p collector` first (bench/run.sh does)",
        candidate.display()
    );
    candidate
}

fn missing_tool(peer: Peer) -> Option<String> {
    let tools: &[&str] = match peer {
        Peer::Poolflow => &[],
        Peer::Nfcapd => &["nfcapd", "nfdump"],
        Peer::Nfacctd => &["nfacctd", "pmacct"],
    };
    for tool in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !found {
            return Some(format!(
                "`{tool}` not found (apt-get install -y nfdump pmacct)"
            ));
        }
    }
    None
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn median_by_rate(mut trials: Vec<Trial>) -> Trial {
    trials.sort_by(|a, b| a.offered_per_sec.total_cmp(&b.offered_per_sec));
    trials[trials.len() / 2]
}

fn free_port() -> u16 {
    // Both protocols free on the port: the kernel gave it to UDP, and TCP
    // ports are a separate space, checked too.
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// utime + stime of a process and all its descendants, seconds.
fn cpu_seconds(root: u32) -> f64 {
    let ticks = clock_ticks_per_sec();
    let mut pids = vec![root];
    let mut total = 0u64;
    let mut i = 0;
    let all = all_processes();
    while i < pids.len() {
        let pid = pids[i];
        if let Some((_, utime, stime)) = all
            .iter()
            .find(|(p, ..)| p.0 == pid)
            .map(|(p, u, s)| (p, *u, *s))
        {
            total += utime + stime;
        }
        pids.extend(all.iter().filter(|(p, ..)| p.1 == pid).map(|(p, ..)| p.0));
        i += 1;
    }
    total as f64 / ticks
}

/// (pid, ppid), utime, stime of every process.
fn all_processes() -> Vec<((u32, u32), u64, u64)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name is in parentheses and may hold spaces.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split(' ').collect();
        // Fields after "comm": state(0) ppid(1) ... utime(11) stime(12).
        let parse = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        out.push(((pid, parse(1) as u32), parse(11), parse(12)));
    }
    out
}

/// Clock ticks per second (USER_HZ); 100 on every Linux we run on, read
/// from getconf to be sure.
fn clock_ticks_per_sec() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Waits until the process tree stops using CPU (it has drained its socket
/// and queues), at most `limit`.
fn wait_until_idle(pid: u32, limit: Duration) {
    let start = Instant::now();
    let mut last = cpu_seconds(pid);
    let mut quiet_since = Instant::now();
    while start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(100));
        let now = cpu_seconds(pid);
        if now - last > 0.005 {
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_millis(300) {
            return;
        }
        last = now;
    }
}

fn terminate(child: &mut Child) {
    // SIGTERM, the graceful stop of all three collectors (Child::kill
    // would send SIGKILL and lose what they hold in memory).
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A collector under test, started and ready to receive.
struct Running {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Bench {
    fn start(&self, peer: Peer, trial: usize, transport: GenerateTransport) -> Running {
        let dir = self.dir.join(format!("{peer:?}-{trial}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let child = match peer {
            Peer::Poolflow => {
                let listen = format!("127.0.0.1:{port}");
                let config = dir.join("collector.toml");
                std::fs::write(
                    &config,
                    format!("udp_receive_buffer_bytes = {RECEIVE_BUFFER_BYTES}\n"),
                )
                .unwrap();
                let mut cmd = Command::new(&self.collector_bin);
                cmd.arg("run")
                    .arg("--config")
                    .arg(&config)
                    .arg("--database")
                    .arg(dir.join("store.sqlite"));
                match transport {
                    GenerateTransport::Udp => cmd.args(["--no-tcp", "--no-sctp", "--udp", &listen]),
                    GenerateTransport::Tcp => cmd.args(["--no-udp", "--no-sctp", "--tcp", &listen]),
                    GenerateTransport::Sctp => {
                        cmd.args(["--no-udp", "--no-tcp", "--sctp", &listen])
                    }
                    // Not compared: the other collectors here take no TLS.
                    GenerateTransport::Tls => unreachable!("TLS is not part of the comparison"),
                };
                let mut child = cmd
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("starting the collector");
                // It prints "listening ..." once bound.
                let mut out = BufReader::new(child.stdout.take().unwrap());
                let mut line = String::new();
                out.read_line(&mut line).unwrap();
                assert!(line.starts_with("listening"), "collector said {line:?}");
                child
            }
            Peer::Nfcapd => {
                let child = Command::new("nfcapd")
                    .args(["-b", "127.0.0.1", "-p", &port.to_string(), "-t", "3600"])
                    .args(["-B", &RECEIVE_BUFFER_BYTES.to_string()])
                    .arg("-w")
                    .arg(&dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("starting nfcapd");
                wait_for_udp_bind(port);
                child
            }
            Peer::Nfacctd => {
                let config = dir.join("nfacctd.conf");
                std::fs::write(
                    &config,
                    format!(
                        "daemonize: false\n\
                         nfacctd_ip: 127.0.0.1\n\
                         nfacctd_port: {port}\n\
                         nfacctd_pipe_size: {RECEIVE_BUFFER_BYTES}\n\
                         plugins: memory\n\
                         aggregate: proto\n\
                         imt_path: {}\n\
                         plugin_pipe_size: 67108864\n\
                         plugin_buffer_size: 65536\n",
                        dir.join("imt.pipe").display()
                    ),
                )
                .unwrap();
                let child = Command::new("nfacctd")
                    .arg("-f")
                    .arg(&config)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("starting nfacctd");
                wait_for_udp_bind(port);
                // The memory plugin's query pipe appears once it is ready.
                let deadline = Instant::now() + Duration::from_secs(10);
                while !dir.join("imt.pipe").exists() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                std::thread::sleep(Duration::from_millis(200));
                child
            }
        };
        Running { child, port, dir }
    }

    /// Records the collector holds once it is idle; stops it.
    fn stored(&self, peer: Peer, mut running: Running, sent_first: u64, sent: u64) -> u64 {
        match peer {
            Peer::Poolflow => {
                // Graceful stop commits everything received.
                terminate(&mut running.child);
                let conn = rusqlite_count(&running.dir.join("store.sqlite"));
                conn.unwrap_or(0)
            }
            Peer::Nfcapd => {
                // nfcapd writes its file on SIGTERM; `nfdump -I` reads the
                // file's statistics block, not every record.
                terminate(&mut running.child);
                let out = Command::new("nfdump")
                    .arg("-R")
                    .arg(&running.dir)
                    .arg("-I")
                    .output()
                    .expect("running nfdump");
                let text = String::from_utf8_lossy(&out.stdout);
                text.lines()
                    .find_map(|l| l.strip_prefix("Flows:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0)
            }
            Peer::Nfacctd => {
                // The memory table aggregates by protocol: the sum of the
                // packet counters stored, divided by what each synthetic
                // record carries on average, is the records stored. Exact
                // when nothing is lost; within a fraction of a record per
                // loss otherwise (loss is spread evenly over records).
                let out = Command::new("pmacct")
                    .arg("-p")
                    .arg(running.dir.join("imt.pipe"))
                    .args(["-s", "-O", "csv"])
                    .output()
                    .expect("running pmacct");
                terminate(&mut running.child);
                let text = String::from_utf8_lossy(&out.stdout);
                let mut lines = text.lines();
                let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
                let col = header.iter().position(|h| *h == "PACKETS");
                let flows_col = header.iter().position(|h| *h == "FLOWS");
                let mut packets = 0u64;
                let mut flows = 0u64;
                for line in lines {
                    let cells: Vec<&str> = line.split(',').collect();
                    let get = |c: Option<usize>| {
                        c.and_then(|i| cells.get(i))
                            .and_then(|v| v.trim().parse::<u64>().ok())
                    };
                    packets += get(col).unwrap_or(0);
                    flows += get(flows_col).unwrap_or(0);
                }
                if flows > 0 {
                    return flows;
                }
                let expected: u64 = (sent_first..sent_first + sent).map(synthetic_packets).sum();
                ((packets as f64 / expected.max(1) as f64) * sent as f64).round() as u64
            }
        }
    }

    /// One trial at `rate` (None: as fast as the generator goes).
    fn trial(&self, peer: Peer, index: usize, rate: Option<f64>, generator_max: f64) -> Trial {
        let running = self.start(peer, index, GenerateTransport::Udp);
        let target: SocketAddr = format!("127.0.0.1:{}", running.port).parse().unwrap();
        let planned = rate.unwrap_or(generator_max);
        let records = (planned * self.secs) as u64;
        let pid = running.child.id();
        let cpu_before = cpu_seconds(pid);
        let started = Instant::now();
        let report = send(target, GenerateTransport::Udp, records, rate);
        wait_until_idle(pid, Duration::from_secs(20));
        let cpu = cpu_seconds(pid) - cpu_before;
        let wall = started.elapsed().as_secs_f64();
        let stored = self.stored(peer, running, 0, report.records);
        Trial {
            offered_per_sec: report.records_per_sec(),
            sent: report.records,
            stored,
            // Averaged over the send time: drain time adds CPU, not wall.
            cpu_cores: cpu / report.elapsed.as_secs_f64().min(wall),
        }
    }

    /// One run: an unpaced trial bounds the rate, then a bisection between
    /// the best rate that passed and the lowest that failed.
    fn highest_lossless(&self, peer: Peer) -> Trial {
        let generator_max = generator_speed(self.secs);
        let first = self.trial(peer, 0, None, generator_max);
        if first.passed() {
            return first; // the generator, not the collector, is the limit
        }
        let mut best: Option<Trial> = None;
        let mut low = 0.0;
        let mut high = first.offered_per_sec;
        // Start just under what it stored per second while overloaded.
        let mut rate = (first.stored as f64 / self.secs * 0.95).max(high * 0.05);
        for step in 1..=SEARCH_STEPS {
            let t = self.trial(peer, step, Some(rate), generator_max);
            eprintln!(
                "  {} at {:.0}/s: loss {:.3} %",
                peer.name(),
                t.offered_per_sec,
                100.0 * t.loss()
            );
            if t.passed() {
                low = rate;
                if best.is_none_or(|b| t.offered_per_sec > b.offered_per_sec) {
                    best = Some(t);
                }
            } else {
                high = rate;
            }
            rate = if low == 0.0 {
                rate * 0.6
            } else {
                (low + high) / 2.0
            };
        }
        best.unwrap_or(Trial {
            offered_per_sec: 0.0,
            sent: 0,
            stored: 0,
            cpu_cores: 0.0,
        })
    }

    /// Ours over TCP or SCTP-over-UDP: the association pushes back, so
    /// nothing is lost and the rate is what it stores per second from an
    /// unpaced sender.
    fn poolflow_stream(&self, transport: GenerateTransport) -> Trial {
        let running = self.start(Peer::Poolflow, 100, transport);
        let target: SocketAddr = format!("127.0.0.1:{}", running.port).parse().unwrap();
        let pid = running.child.id();
        let records = (3_000_000.0 * self.secs) as u64;
        let cpu_before = cpu_seconds(pid);
        let started = Instant::now();
        let report = send(target, transport, records, None);
        wait_until_idle(pid, Duration::from_secs(30));
        let cpu = cpu_seconds(pid) - cpu_before;
        let wall = started.elapsed().as_secs_f64() - 0.3; // idle detection lag
        let stored = self.stored(Peer::Poolflow, running, 0, report.records);
        Trial {
            offered_per_sec: stored as f64 / wall,
            sent: report.records,
            stored,
            cpu_cores: cpu / wall,
        }
    }
}

fn wait_for_udp_bind(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if UdpSocket::bind(("127.0.0.1", port)).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing bound UDP port {port}");
}

fn rusqlite_count(path: &Path) -> Option<u64> {
    // The bench depends on the collector crate, which exposes its store.
    let store = collector::store::Store::open_read_only(path).ok()?;
    store
        .query_row(
            "SELECT COALESCE(SUM(records), 0) FROM domain_stats",
            [],
            |r| r.get::<_, i64>(0),
        )
        .ok()
        .map(|n| n as u64)
}

/// `packetDeltaCount` of synthetic record `n` (see `FlowRecord::synthetic`).
fn synthetic_packets(n: u64) -> u64 {
    protocol::ipfix::flow::FlowRecord::synthetic(n, 0).packets
}

fn send(
    target: SocketAddr,
    transport: GenerateTransport,
    records: u64,
    rate: Option<f64>,
) -> GenerateReport {
    generate(
        &GenerateConfig {
            target,
            transport,
            records,
            rate: rate.map(|r| r as u64),
            observation_domain: 1,
            message_size: 1400,
            template_refresh: Duration::from_secs(1),
            first_record: 0,
            tls: None,
        },
        |_| {},
    )
    .expect("generating")
}

/// How fast the generator sends UDP when nothing slows it down: into a
/// socket nobody reads (the kernel drops what overflows its buffer).
fn generator_speed(secs: f64) -> f64 {
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = sink.local_addr().unwrap();
    let records = (2_000_000.0 * secs.min(1.0)) as u64;
    send(target, GenerateTransport::Udp, records, None).records_per_sec()
}

/// Exporter throughput: records/s encoded and sent to a sink that reads
/// everything (a thread of this process).
fn exporter_rate(transport: GenerateTransport, secs: f64) -> f64 {
    let records = (4_000_000.0 * secs) as u64;
    let target = match transport {
        GenerateTransport::Udp => {
            let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
            sink.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            let addr = sink.local_addr().unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 65_536];
                while sink.recv(&mut buf).is_ok() {}
            });
            addr
        }
        GenerateTransport::Tcp => {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            std::thread::spawn(move || {
                if let Ok((mut s, _)) = listener.accept() {
                    let mut buf = vec![0u8; 1 << 20];
                    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                }
            });
            addr
        }
        GenerateTransport::Sctp | GenerateTransport::Tls => {
            unreachable!("measured against the collector")
        }
    };
    send(target, transport, records, None).records_per_sec()
}

fn print_machine(bench: &Bench) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let version = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .output()
            .ok()
            .map(|o| {
                let s = [o.stdout, o.stderr].concat();
                String::from_utf8_lossy(&s)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            })
            .unwrap_or_else(|| "not installed".into())
    };
    println!("machine: {cpu}, {cores} cores, Linux {}", kernel.trim());
    println!(
        "nfcapd: {}; nfacctd: {}",
        version("nfcapd", "-V"),
        version("nfacctd", "-V")
    );
    println!("collector: {}", bench.collector_bin.display());
    println!("stores in: {}", bench.dir.display());
    println!(
        "load: 11-IE IPv4 records, 1400-byte IPFIX messages over UDP loopback, {} s per trial\n",
        bench.secs
    );
}

fn print_table(
    results: &[(Peer, Option<Trial>, String)],
    streams: &[(&str, Trial)],
    exporter: Option<(f64, f64)>,
    runs: usize,
    secs: f64,
) {
    let ours = results
        .iter()
        .find(|(p, ..)| *p == Peer::Poolflow)
        .and_then(|(_, t, _)| *t);
    println!(
        "UDP, highest rate with < {:.1} % loss, median of {runs} runs ({secs} s trials)",
        MAX_LOSS * 100.0
    );
    println!(
        "{:<20} {:>12} {:>9} {:>7} {:>14}  runs",
        "collector", "records/s", "loss %", "CPU", "ours / this"
    );
    for (peer, trial, runs_text) in results {
        match trial {
            Some(t) => {
                let ratio = match ours {
                    Some(o) if t.offered_per_sec > 0.0 => {
                        format!("{:.2}", o.offered_per_sec / t.offered_per_sec)
                    }
                    _ => "-".into(),
                };
                println!(
                    "{:<20} {:>12.0} {:>9.3} {:>7.2} {:>14}  {}",
                    peer.name(),
                    t.offered_per_sec,
                    100.0 * t.loss(),
                    t.cpu_cores,
                    ratio,
                    runs_text
                );
            }
            None => println!("{:<20} {:>12}  ({runs_text})", peer.name(), "skipped"),
        }
    }
    if !streams.is_empty() {
        println!(
            "\nours over TCP and SCTP-over-UDP (peers do not support them), median of {runs} runs"
        );
    }
    for (name, t) in streams {
        println!(
            "{:<20} {:>12.0} {:>9.3} {:>7.2}",
            format!("poolflow {name}"),
            t.offered_per_sec,
            100.0 * t.loss(),
            t.cpu_cores
        );
    }
    if let Some((udp, tcp)) = exporter {
        println!("\nexporter generate, records/s encoded and sent, median of {runs} runs");
        println!("{:<20} {:>12.0}", "UDP", udp);
        println!("{:<20} {:>12.0}", "TCP", tcp);
    }
}
