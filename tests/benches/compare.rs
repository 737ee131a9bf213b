//! Benchmark driver (not a test): our collector side by side with nfcapd
//! (nfdump) and nfacctd (pmacct) on loopback, fed the same standard IPFIX
//! load by our generator. For each collector it finds the highest offered
//! rate sustained with < 0.1 % loss over trials of at least 10 s, with the
//! records stored per CPU-second; runs alternate between collectors and the
//! ratio ours / nfcapd is printed per run and for the medians. Every
//! collector gets the same receive buffer through plain SO_RCVBUF (ours with
//! `udp_receive_buffer_force = false`), so `net.core.rmem_max` must be at
//! least the buffer: bench/run.sh raises it for the run. Then ours alone
//! over TCP, and the exporter's own send rate. Method: BENCHMARKS.md.
//!
//! Run: `bench/run.sh` (builds the release binaries first), or
//! `cargo bench -p poolflow-tests --bench compare` after
//! `cargo build --release -p collector`.
//!
//! Environment: `POOLFLOW_BENCH_SECS` seconds per trial (default 10; less
//! is refused, a buffer could hide a backlog), `POOLFLOW_BENCH_RUNS` runs per
//! collector (default 3), `POOLFLOW_BENCH_STEPS` paced trials per run
//! (default 4), `POOLFLOW_BENCH_RCVBUF` SO_RCVBUF asked by every collector
//! (bytes, default 16 MiB; the kernel doubles it),
//! `POOLFLOW_BENCH_ONLY` comma list of `poolflow,nfcapd,nfacctd,tcp,sctp,exporter`,
//! `POOLFLOW_COLLECTOR_BIN` collector binary to measure (default: the release
//! build next to this bench), `POOLFLOW_BENCH_DIR` where stores are written
//! (default: the system temp dir; use a real disk, not tmpfs).

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use exporter::generate::{GenerateConfig, GenerateReport, GenerateTransport, generate};

/// Largest loss at which a rate counts as sustained.
const MAX_LOSS: f64 = 0.001;
/// Every collector asks for the same kernel receive buffer (SO_RCVBUF).
const RECEIVE_BUFFER_BYTES: usize = 16 * 1024 * 1024;
/// Paced trials per run after the unpaced one (bisection steps).
const SEARCH_STEPS: usize = 4;
/// Shortest trial: long enough that a receive buffer cannot hide a backlog
/// that sustained load would turn into loss.
const MIN_TRIAL_SECS: f64 = 10.0;
/// Flows (one packet each) in the pcap softflowd replays: about 1 s of
/// softflowd's work and 80 MB of pcap.
const PCAP_FLOWS: u64 = 1_000_000;

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

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::Generator => "our generator",
            Load::Softflowd => "softflowd",
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
    /// Collector CPU-seconds (utime + stime) from start of sending to idle.
    cpu_secs: f64,
    /// Receive buffer the kernel gave the collector's socket (`ss` rb), bytes.
    receive_buffer: u64,
    /// IPFIX bytes sent in the trial.
    bytes_sent: u64,
    /// Peak resident memory of the collector's main process over the trial
    /// (`VmHWM`), bytes.
    peak_rss: u64,
}

impl Trial {
    fn loss(&self) -> f64 {
        1.0 - self.stored as f64 / self.sent.max(1) as f64
    }
    fn passed(&self) -> bool {
        self.loss() < MAX_LOSS
    }
    /// Records stored per CPU-second of the collector.
    fn per_cpu_sec(&self) -> f64 {
        if self.cpu_secs > 0.0 {
            self.stored as f64 / self.cpu_secs
        } else {
            0.0
        }
    }
    fn failed() -> Self {
        Trial {
            offered_per_sec: 0.0,
            sent: 0,
            stored: 0,
            cpu_cores: 0.0,
            cpu_secs: 0.0,
            receive_buffer: 0,
            bytes_sent: 0,
            peak_rss: 0,
        }
    }
}

struct Bench {
    secs: f64,
    steps: usize,
    receive_buffer: usize,
    dir: PathBuf,
    collector_bin: PathBuf,
    /// softflowd and its pcap, when that load is selected.
    replay: Option<Replay>,
}

/// What sends the IPFIX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    /// Our generator (`exporter generate`), paced: the rate search.
    Generator,
    /// softflowd (Debian's, nobody here wrote it) replaying a pcap we
    /// write, at its own top speed.
    Softflowd,
}

/// softflowd replaying a pcap of one-packet flows: one IPFIX record per
/// packet. Measured once into a plain socket (its top rate, nothing else
/// in the way) to know the bytes it sends per replay.
struct Replay {
    softflowd: PathBuf,
    pcap: PathBuf,
    /// Records (= flows = packets) in the pcap.
    flows: u64,
    /// IPFIX bytes and records per replay, and its rate, into the sink.
    bytes: u64,
    alone_per_sec: f64,
    version: String,
}

/// The trials of one collector under one load, one per run.
type Runs = Vec<(Peer, Vec<Trial>)>;

fn main() {
    let secs: f64 = env_or("POOLFLOW_BENCH_SECS", MIN_TRIAL_SECS);
    assert!(
        secs >= MIN_TRIAL_SECS,
        "POOLFLOW_BENCH_SECS={secs}: trials under {MIN_TRIAL_SECS} s let the receive buffer hide a backlog"
    );
    let runs: usize = env_or("POOLFLOW_BENCH_RUNS", 3);
    let only = std::env::var("POOLFLOW_BENCH_ONLY").unwrap_or_default();
    let wanted = |what: &str| only.is_empty() || only.split(',').any(|w| w.trim() == what);
    let load_list = std::env::var("POOLFLOW_BENCH_LOAD").unwrap_or_else(|_| "generator".to_owned());
    let mut loads = Vec::new();
    for name in load_list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        match name {
            "generator" => loads.push(Load::Generator),
            "softflowd" => loads.push(Load::Softflowd),
            other => panic!("POOLFLOW_BENCH_LOAD: unknown load {other:?} (generator, softflowd)"),
        }
    }
    let base = std::env::var_os("POOLFLOW_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).expect("bench directory");
    let mut bench = Bench {
        secs,
        steps: env_or("POOLFLOW_BENCH_STEPS", SEARCH_STEPS),
        receive_buffer: env_or("POOLFLOW_BENCH_RCVBUF", RECEIVE_BUFFER_BYTES),
        dir: dir.path().to_owned(),
        collector_bin: collector_binary(),
        replay: None,
    };
    if loads.contains(&Load::Softflowd) {
        match find_tool("softflowd") {
            Some(softflowd) => {
                bench.replay = Some(prepare_replay(
                    softflowd,
                    dir.path(),
                    env_or("POOLFLOW_BENCH_PCAP_FLOWS", PCAP_FLOWS),
                ))
            }
            None => {
                eprintln!(
                    "skipping the softflowd load: `softflowd` not found (apt-get install -y softflowd)"
                );
                loads.retain(|l| *l != Load::Softflowd);
            }
        }
    }
    print_machine(&bench, &loads);

    let mut peers = Vec::new();
    let mut skipped: Vec<(Peer, String)> = Vec::new();
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
            skipped.push((peer, missing));
            continue;
        }
        peers.push(peer);
    }
    let stream_count = ["tcp", "sctp"].iter().filter(|w| wanted(w)).count();
    // Each trial: the send time plus start, drain and count (a few seconds).
    let per_run_trials = loads
        .iter()
        .map(|l| match l {
            Load::Generator => 1 + bench.steps,
            Load::Softflowd => 1,
        })
        .sum::<usize>();
    let estimate = runs as f64
        * (peers.len() as f64 * per_run_trials as f64 * (secs + 5.0)
            + stream_count as f64 * (secs + 10.0)
            + if wanted("exporter") { 2.0 * secs } else { 0.0 });
    println!(
        "estimated time: {:.0} min ({} collectors x {runs} runs x {per_run_trials} trials of {secs} s)\n",
        (estimate / 60.0).ceil(),
        peers.len(),
    );

    // Runs alternate between collectors (and loads) so a change in machine
    // load hits all of them alike.
    let mut results: Vec<(Load, Runs)> = loads
        .iter()
        .map(|l| (*l, peers.iter().map(|p| (*p, Vec::new())).collect()))
        .collect();
    for run in 1..=runs {
        for (load, by_peer) in results.iter_mut() {
            for (peer, trials) in by_peer.iter_mut() {
                let trial = match load {
                    Load::Generator => bench.highest_lossless(*peer),
                    Load::Softflowd => bench.softflowd_trial(*peer, run),
                };
                eprintln!(
                    "run {run} {:?} {}: {:.0} records/s, loss {:.3} %, {:.2} cores, {:.0} records/CPU-s, rb {} = {:.2} % of the trial's bytes, peak RSS {}",
                    load,
                    peer.name(),
                    trial.offered_per_sec,
                    100.0 * trial.loss(),
                    trial.cpu_cores,
                    trial.per_cpu_sec(),
                    mib(trial.receive_buffer),
                    buffer_share(&trial),
                    mib(trial.peak_rss)
                );
                trials.push(trial);
            }
            print_run_ratio(*load, run, by_peer);
        }
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
    println!();
    // No table for a run of TCP, SCTP or the exporter alone.
    if !peers.is_empty() || !skipped.is_empty() {
        for (load, by_peer) in &results {
            print_table(&bench, *load, by_peer, &skipped, runs);
        }
    }
    print_streams(&streams, exporter, runs);
}

/// The ratio ours / nfcapd of one run, rate and records per CPU-second,
/// with both receive buffers (`rb`) to show they are the same.
fn print_run_ratio(load: Load, run: usize, by_peer: &Runs) {
    let of = |p: Peer| {
        by_peer
            .iter()
            .find(|(q, _)| *q == p)
            .map(|(_, t)| t[run - 1])
    };
    if let (Some(o), Some(n)) = (of(Peer::Poolflow), of(Peer::Nfcapd)) {
        println!(
            "run {run} ({}): poolflow {:.2}M/s {:.2}M/CPU-s rb {}, nfcapd {:.2}M/s {:.2}M/CPU-s rb {}; ours/nfcapd rate {}, per CPU-s {}",
            load.name(),
            o.offered_per_sec / 1e6,
            o.per_cpu_sec() / 1e6,
            o.receive_buffer,
            n.offered_per_sec / 1e6,
            n.per_cpu_sec() / 1e6,
            n.receive_buffer,
            ratio(o.offered_per_sec, n.offered_per_sec),
            ratio(o.per_cpu_sec(), n.per_cpu_sec())
        );
    }
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
        if find_tool(tool).is_none() {
            return Some(format!(
                "`{tool}` not found (apt-get install -y nfdump pmacct)"
            ));
        }
    }
    None
}

/// An external program on PATH (or in /usr/sbin, where Debian puts
/// nfacctd and softflowd).
fn find_tool(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn ratio(ours: f64, theirs: f64) -> String {
    if theirs > 0.0 {
        format!("{:.2}", ours / theirs)
    } else {
        "-".into()
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The kernel receive buffer as a share of the bytes sent in the trial.
fn buffer_share(t: &Trial) -> f64 {
    100.0 * t.receive_buffer as f64 / t.bytes_sent.max(1) as f64
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

/// Peak resident set of a process (`VmHWM` of /proc/PID/status), bytes.
fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
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

/// The receive buffer the kernel gave whatever listens on UDP `port`
/// (`ss` shows it as `rb`): checks that every collector got the same.
fn receive_buffer_of(port: u16) -> u64 {
    let out = Command::new("ss")
        .args(["-lunmH", &format!("sport = :{port}")])
        .output();
    let Ok(out) = out else { return 0 };
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(|c: char| c == ',' || c == '(' || c.is_whitespace())
        .find_map(|f| f.strip_prefix("rb").and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn rmem_max() -> u64 {
    std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
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
                    // Plain SO_RCVBUF like the peers: no SO_RCVBUFFORCE.
                    format!(
                        "udp_receive_buffer_bytes = {}\nudp_receive_buffer_force = false\n",
                        self.receive_buffer
                    ),
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
                    .args(["-B", &self.receive_buffer.to_string()])
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
                         nfacctd_pipe_size: {}\n\
                         plugins: memory\n\
                         aggregate: proto\n\
                         imt_path: {}\n\
                         plugin_pipe_size: 67108864\n\
                         plugin_buffer_size: 65536\n",
                        self.receive_buffer,
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

    /// Records the collector holds once it is idle; stops it. `packets_sent`
    /// gives the packet counters of the `sent` records (for nfacctd's
    /// count, only asked then).
    fn stored(
        &self,
        peer: Peer,
        mut running: Running,
        load: Load,
        sent: u64,
        packets_sent: &dyn Fn() -> u64,
    ) -> u64 {
        match peer {
            Peer::Poolflow => {
                // Graceful stop commits everything received.
                terminate(&mut running.child);
                rusqlite_count(&running.dir.join("store.sqlite"), load == Load::Softflowd)
                    .unwrap_or(0)
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
                // packet counters stored, divided by what the records sent
                // carry on average, is the records stored. Exact
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
                let expected = packets_sent();
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
        let receive_buffer = receive_buffer_of(running.port);
        let dir = running.dir.clone();
        let cpu_before = cpu_seconds(pid);
        let started = Instant::now();
        let report = send(target, GenerateTransport::Udp, records, rate);
        wait_until_idle(pid, Duration::from_secs(20));
        let cpu = cpu_seconds(pid) - cpu_before;
        let rss = peak_rss(pid);
        let wall = started.elapsed().as_secs_f64();
        let stored = self.stored(peer, running, Load::Generator, report.records, &|| {
            (0..report.records).map(synthetic_packets).sum()
        });
        // Stores of overloaded trials reach gigabytes: gone once counted.
        let _ = std::fs::remove_dir_all(&dir);
        Trial {
            offered_per_sec: report.records_per_sec(),
            sent: report.records,
            stored,
            // Averaged over the send time: drain time adds CPU, not wall.
            cpu_cores: cpu / report.elapsed.as_secs_f64().min(wall),
            cpu_secs: cpu,
            receive_buffer,
            bytes_sent: report.bytes,
            peak_rss: rss,
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
        // Start just under what it stored per second of sending while
        // overloaded (the unpaced trial may have taken longer than planned
        // when the generator got less CPU).
        let mut rate = (first.offered_per_sec * (1.0 - first.loss()) * 0.95).max(high * 0.05);
        for step in 1..=self.steps {
            let t = self.trial(peer, step, Some(rate), generator_max);
            eprintln!(
                "  {} asked {:.0}/s, sent {:.0}/s: loss {:.3} %",
                peer.name(),
                rate,
                t.offered_per_sec,
                100.0 * t.loss()
            );
            // Bisect on the rates really sent: a generator short of CPU
            // sends below the asked rate.
            if t.passed() {
                low = t.offered_per_sec;
                if best.is_none_or(|b| t.offered_per_sec > b.offered_per_sec) {
                    best = Some(t);
                }
            } else {
                high = t.offered_per_sec;
            }
            if low >= high {
                // Noise: it passed above a rate that failed before.
                high = low * 1.25;
            }
            rate = if low == 0.0 {
                high * 0.6
            } else {
                (low + high) / 2.0
            };
        }
        best.unwrap_or_else(|| Trial {
            receive_buffer: first.receive_buffer,
            bytes_sent: first.bytes_sent,
            ..Trial::failed()
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
        let rss = peak_rss(pid);
        let wall = started.elapsed().as_secs_f64() - 0.3; // idle detection lag
        let dir = running.dir.clone();
        let stored = self.stored(
            Peer::Poolflow,
            running,
            Load::Generator,
            report.records,
            &|| 0,
        );
        let _ = std::fs::remove_dir_all(&dir);
        Trial {
            offered_per_sec: stored as f64 / wall,
            sent: report.records,
            stored,
            cpu_cores: cpu / wall,
            cpu_secs: cpu,
            receive_buffer: 0,
            bytes_sent: report.bytes,
            peak_rss: rss,
        }
    }
}

impl Bench {
    /// One trial with softflowd as the exporter: it replays the pcap as
    /// fast as it goes (it has no pacing), again and again until the
    /// trial's time is up. Each replay is a new softflowd process, so a new
    /// exporter (source port) with sequence numbers from 0. Records sent
    /// are what softflowd says it exported.
    fn softflowd_trial(&self, peer: Peer, run: usize) -> Trial {
        let replay = self.replay.as_ref().expect("softflowd load prepared");
        let running = self.start(peer, 200 + run, GenerateTransport::Udp);
        let target = format!("127.0.0.1:{}", running.port);
        let pid = running.child.id();
        let receive_buffer = receive_buffer_of(running.port);
        let dir = running.dir.clone();
        let cpu_before = cpu_seconds(pid);
        let started = Instant::now();
        let mut sent = 0u64;
        let mut replays = 0u64;
        while started.elapsed().as_secs_f64() < self.secs {
            let (records, failures) = run_softflowd(replay, &target);
            if failures > 0 {
                eprintln!("  softflowd: {failures} export packets failed to send");
            }
            sent += records;
            replays += 1;
        }
        let send_time = started.elapsed().as_secs_f64();
        wait_until_idle(pid, Duration::from_secs(20));
        let cpu = cpu_seconds(pid) - cpu_before;
        let rss = peak_rss(pid);
        // One packet per flow: the packet counters sent are the records.
        let stored = self.stored(peer, running, Load::Softflowd, sent, &|| sent);
        let _ = std::fs::remove_dir_all(&dir);
        Trial {
            offered_per_sec: sent as f64 / send_time,
            sent,
            stored,
            cpu_cores: cpu / send_time,
            cpu_secs: cpu,
            receive_buffer,
            bytes_sent: replay.bytes * replays,
            peak_rss: rss,
        }
    }
}

/// Runs softflowd once over the pcap to `target`; returns the records it
/// exported and its failed sends, from its closing statistics.
fn run_softflowd(replay: &Replay, target: &str) -> (u64, u64) {
    let mut child = Command::new(&replay.softflowd)
        .arg("-d")
        .arg("-r")
        .arg(&replay.pcap)
        .args(["-n", target, "-v", "10", "-A", "milli"])
        // No -c: with -r softflowd 1.1.0 opens no control socket (and no
        // pid file, it stays in the foreground). A -c after -r would open
        // one, which its file loop then polls through an uninitialised
        // pollfd: it can block in accept() instead of reading the pcap.
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting softflowd");
    // Its log is a few KB: the pipes cannot fill while we wait.
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("softflowd did not finish reading the pcap within 120 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_softflowd_exported(&log).unwrap_or_else(|| panic!("softflowd said: {log}"))
}

/// From softflowd's statistics line
/// `Flows exported: 1000000 (1000000 records) in 31772 packets (0 failures)`:
/// the records and the failed sends.
fn parse_softflowd_exported(log: &str) -> Option<(u64, u64)> {
    let line = log
        .lines()
        .find_map(|l| l.trim().strip_prefix("Flows exported:"))?;
    let number_before = |word: &str| -> Option<u64> {
        let end = line.find(word)?;
        line[..end]
            .trim_end()
            .rsplit(['(', ' '])
            .next()?
            .parse()
            .ok()
    };
    Some((number_before(" records)")?, number_before(" failures)")?))
}

/// Writes the pcap (`flows` one-packet flows, three UDP for one TCP, each
/// a distinct 5-tuple, 1 µs apart so no timeout splits anything) and runs
/// softflowd once into a socket of ours that counts what arrives: the bytes
/// per replay, and softflowd's top rate with nothing else in the way.
fn prepare_replay(softflowd: PathBuf, dir: &Path, flows: u64) -> Replay {
    use poolflow_tests::pcap::{self, Packet, Transport};
    use std::io::Write;
    let path = dir.join("flows.pcap");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    pcap::write_header(&mut out).unwrap();
    let t0 = 1_763_700_000_000_000u64;
    for i in 0..flows {
        let n = i as u32;
        let src = SocketAddrV4::new(
            Ipv4Addr::new(10, (n >> 16) as u8, (n >> 8) as u8, n as u8),
            1024 + (i % 60_000) as u16,
        );
        let udp = i % 4 != 3;
        let dst = SocketAddrV4::new(
            Ipv4Addr::new(192, 0, 2, (i % 250) as u8 + 1),
            if udp { 53 } else { 443 },
        );
        let packet = Packet {
            src,
            dst,
            // PSH|ACK without FIN: the flow ends when softflowd evicts it.
            transport: if udp {
                Transport::Udp
            } else {
                Transport::Tcp {
                    flags: 0x18,
                    seq: n,
                }
            },
            time_us: t0 + i,
            payload: vec![0x5a; 16],
        };
        pcap::write_packet(&mut out, &packet).unwrap();
    }
    out.flush().unwrap();
    drop(out);

    let version = Command::new(&softflowd)
        .arg("-h")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&[o.stdout, o.stderr].concat()).into_owned();
            // "This is softflowd version 1.1.0. Valid commandline options:"
            let rest = text.split("softflowd version ").nth(1)?;
            let number = rest.split_whitespace().next()?.trim_end_matches('.');
            Some(format!("softflowd {number}"))
        })
        .unwrap_or_else(|| "softflowd".into());

    // The sink: a big buffer and a thread that only counts.
    let sink = counting_sink();
    let target = sink.local_addr().unwrap().to_string();
    sink.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let counter = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        let (mut datagrams, mut bytes) = (0u64, 0u64);
        let mut idle = 0;
        // Stops after 2 s without a datagram once something arrived.
        while idle < 4 || datagrams == 0 && idle < 240 {
            match sink.recv(&mut buf) {
                Ok(n) => {
                    datagrams += 1;
                    bytes += n as u64;
                    idle = 0;
                }
                Err(_) => idle += 1,
            }
        }
        (datagrams, bytes)
    });
    let mut replay = Replay {
        softflowd,
        pcap: path,
        flows,
        bytes: 0,
        alone_per_sec: 0.0,
        version,
    };
    let started = Instant::now();
    let (records, _) = run_softflowd(&replay, &target);
    let elapsed = started.elapsed().as_secs_f64();
    let (datagrams, bytes) = counter.join().unwrap();
    assert_eq!(
        records, flows,
        "softflowd exported {records} records for {flows} one-packet flows"
    );
    replay.bytes = bytes;
    replay.alone_per_sec = records as f64 / elapsed;
    println!(
        "softflowd alone: {flows} records in {datagrams} datagrams ({:.1} MB) in {elapsed:.2} s: {:.0} records/s",
        bytes as f64 / 1e6,
        replay.alone_per_sec
    );
    replay
}

/// A UDP socket on loopback with as big a receive buffer as rmem_max gives,
/// for counting what softflowd sends.
fn counting_sink() -> UdpSocket {
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    // std has no SO_RCVBUF setter; libc is a dev-dependency here already.
    let size: libc::c_int = 64 << 20;
    // SAFETY: a valid socket and a c_int option of the right length.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sink),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    sink
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

/// Data records stored: all of them (`domain_stats`), or with `flows_only`
/// those of plain templates, leaving out options records (softflowd sends
/// some with its templates; nfcapd does not count them as flows, nor does
/// softflowd's "Flows exported"). That needs a scan of `record_blocks`,
/// done after the trial's timing.
fn rusqlite_count(path: &Path, flows_only: bool) -> Option<u64> {
    // The bench depends on the collector crate, which exposes its store.
    let store = collector::store::Store::open_read_only(path).ok()?;
    let sql = if flows_only {
        "SELECT COALESCE(SUM(b.record_count), 0) FROM record_blocks b \
         JOIN templates t ON t.id = b.template_ref WHERE t.scope_field_count = 0"
    } else {
        "SELECT COALESCE(SUM(records), 0) FROM domain_stats"
    };
    store
        .query_row(sql, [], |r| r.get::<_, i64>(0))
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
            udp_segmentation_offload: false,
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

fn print_machine(bench: &Bench, loads: &[Load]) {
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
    for load in loads {
        match load {
            Load::Generator => println!(
                "load: our generator, 11-IE IPv4 records, 1400-byte IPFIX messages over UDP loopback, {} s per trial, 1 unpaced + {} paced trials per run",
                bench.secs, bench.steps
            ),
            Load::Softflowd => {
                let r = bench.replay.as_ref().expect("prepared");
                println!(
                    "load: {} (-v 10, IPFIX over UDP loopback) replaying a pcap of {} one-packet flows, repeated for {} s per trial, 1 trial per run",
                    r.version, r.flows, bench.secs
                );
            }
        }
    }
    let max = rmem_max();
    println!(
        "receive buffer: every collector asks SO_RCVBUF {} (nfcapd -B, nfacctd_pipe_size, ours udp_receive_buffer_bytes without SO_RCVBUFFORCE); net.core.rmem_max {}",
        mib(bench.receive_buffer as u64),
        mib(max)
    );
    if max < bench.receive_buffer as u64 {
        println!(
            "  warning: rmem_max is below the buffer, every collector is capped at it (bench/run.sh raises it)"
        );
    }
    println!("load average: {}", load_average());
    println!();
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The table of one load: per collector the median over runs of the rate
/// (and the trial it came from), of records per CPU-second, and the
/// ratios ours / this, both of the medians and per run.
fn print_table(bench: &Bench, load: Load, by_peer: &Runs, skipped: &[(Peer, String)], runs: usize) {
    let ours = by_peer.iter().find(|(p, _)| *p == Peer::Poolflow);
    match load {
        Load::Generator => println!(
            "UDP, our generator: highest rate with < {:.1} % loss, median of {runs} runs ({} s trials)",
            MAX_LOSS * 100.0,
            bench.secs
        ),
        Load::Softflowd => {
            let r = bench.replay.as_ref().expect("prepared");
            println!(
                "UDP, softflowd replaying {} one-packet flows at its own top rate (alone: {:.0} records/s), median of {runs} runs ({} s trials)",
                r.flows, r.alone_per_sec, bench.secs
            );
        }
    }
    println!(
        "{:<18} {:>10} {:>7} {:>6} {:>10} {:>9} {:>7} {:>8} {:>8}  per run: rate M/s (ours/this), M/CPU-s (ours/this)",
        "collector",
        "records/s",
        "loss %",
        "cores",
        "rec/CPU-s",
        "rb MiB",
        "rb %",
        "ours/",
        "ours/"
    );
    println!(
        "{:<18} {:>10} {:>7} {:>6} {:>10} {:>9} {:>7} {:>8} {:>8}",
        "", "", "", "", "", "", "of trial", "this", "this"
    );
    println!(
        "{:<18} {:>10} {:>7} {:>6} {:>10} {:>9} {:>7} {:>8} {:>8}",
        "", "", "", "", "", "", "", "rate", "CPU-s"
    );
    let per_cpu = |trials: &[Trial]| median(trials.iter().map(Trial::per_cpu_sec).collect());
    for (peer, trials) in by_peer {
        let t = median_by_rate(trials.clone());
        let (rate_ratio, cpu_ratio) = match ours {
            Some((_, o)) => (
                ratio(median_by_rate(o.clone()).offered_per_sec, t.offered_per_sec),
                ratio(per_cpu(o), per_cpu(trials)),
            ),
            None => ("-".into(), "-".into()),
        };
        let runs_text = trials
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let vs = |f: fn(&Trial) -> f64| match ours {
                    Some((_, o)) if *peer != Peer::Poolflow => {
                        format!(" ({})", ratio(f(&o[i]), f(t)))
                    }
                    _ => String::new(),
                };
                format!(
                    "{:.2}{} {:.2}{}",
                    t.offered_per_sec / 1e6,
                    vs(|t| t.offered_per_sec),
                    t.per_cpu_sec() / 1e6,
                    vs(Trial::per_cpu_sec)
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        println!(
            "{:<18} {:>10.0} {:>7.3} {:>6.2} {:>10.0} {:>9.1} {:>7.2} {:>8} {:>8}  {}",
            peer.name(),
            t.offered_per_sec,
            100.0 * t.loss(),
            t.cpu_cores,
            per_cpu(trials),
            t.receive_buffer as f64 / (1024.0 * 1024.0),
            buffer_share(&t),
            rate_ratio,
            cpu_ratio,
            runs_text
        );
    }
    for (peer, why) in skipped {
        println!("{:<18} {:>10}  ({why})", peer.name(), "skipped");
    }
    let peaks = by_peer
        .iter()
        .map(|(peer, trials)| {
            let peak = trials.iter().map(|t| t.peak_rss).max().unwrap_or(0);
            format!("{} {}", peer.name(), mib(peak))
        })
        .collect::<Vec<_>>()
        .join(", ");
    println!("peak RSS at the reported rate, highest of the runs: {peaks}");
    println!("load average at the end: {}\n", load_average());
}

fn print_streams(streams: &[(&str, Trial)], exporter: Option<(f64, f64)>, runs: usize) {
    if !streams.is_empty() {
        println!(
            "ours over TCP and SCTP-over-UDP (peers do not support them), median of {runs} runs"
        );
    }
    for (name, t) in streams {
        println!(
            "{:<20} {:>12.0} {:>9.3} {:>7.2}  peak RSS {}",
            format!("poolflow {name}"),
            t.offered_per_sec,
            100.0 * t.loss(),
            t.cpu_cores,
            mib(t.peak_rss)
        );
    }
    if let Some((udp, tcp)) = exporter {
        println!("\nexporter generate, records/s encoded and sent, median of {runs} runs");
        println!("{:<20} {:>12.0}", "UDP", udp);
        println!("{:<20} {:>12.0}", "TCP", tcp);
    }
}
