//! `exporter generate`: synthetic IPFIX flow records at a given rate, for
//! load tests, benchmarks and demos. The records are standard IPFIX
//! ([`protocol::ipfix::flow`]) so third-party collectors accept them too.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use protocol::ipfix::MessageWriter;
use protocol::ipfix::flow::{FlowRecord, flow_template};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GenerateTransport {
    Udp,
    Tcp,
}

#[derive(Debug, Clone)]
pub struct GenerateConfig {
    pub target: SocketAddr,
    pub transport: GenerateTransport,
    /// Records to send in total.
    pub records: u64,
    /// Records per second; `None` sends as fast as possible.
    pub rate: Option<u64>,
    pub observation_domain: u32,
    /// Largest IPFIX message, bytes (keep UDP under the path MTU).
    pub message_size: usize,
    /// UDP: resend the template at least this often (RFC 7011 8.4).
    pub template_refresh: Duration,
    /// Number of the first synthetic record, so runs can continue a series.
    pub first_record: u64,
}

/// What a run did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerateReport {
    pub records: u64,
    pub messages: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

impl GenerateReport {
    pub fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

enum Sink {
    Udp(UdpSocket),
    Tcp(std::io::BufWriter<TcpStream>),
}

impl Sink {
    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        match self {
            Sink::Udp(s) => loop {
                match s.send(bytes) {
                    Ok(_) => return Ok(()),
                    // The local socket buffer is full: wait for it rather
                    // than count a datagram as sent that never left.
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => std::thread::yield_now(),
                    Err(e) => return Err(e.into()),
                }
            },
            Sink::Tcp(s) => Ok(s.write_all(bytes)?),
        }
    }

    fn flush(&mut self) -> Result<()> {
        if let Sink::Tcp(s) = self {
            s.flush()?;
        }
        Ok(())
    }
}

/// Sends the configured records, blocking. `progress` is called about once
/// a second with the records sent so far.
pub fn generate(config: &GenerateConfig, mut progress: impl FnMut(u64)) -> Result<GenerateReport> {
    let mut sink = match config.transport {
        GenerateTransport::Udp => {
            let bind: SocketAddr = if config.target.is_ipv4() {
                "0.0.0.0:0".parse()?
            } else {
                "[::]:0".parse()?
            };
            let s = UdpSocket::bind(bind)?;
            s.connect(config.target)
                .with_context(|| format!("UDP to {}", config.target))?;
            Sink::Udp(s)
        }
        GenerateTransport::Tcp => {
            let s = TcpStream::connect(config.target)
                .with_context(|| format!("connecting TCP to {}", config.target))?;
            s.set_nodelay(true)?;
            Sink::Tcp(std::io::BufWriter::with_capacity(256 * 1024, s))
        }
    };
    let template = flow_template();
    let base_millis = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let mut writer = MessageWriter::new(config.message_size);
    let start = Instant::now();
    let mut last_template: Option<Instant> = None;
    let mut last_progress = start;
    let mut report = GenerateReport {
        records: 0,
        messages: 0,
        bytes: 0,
        elapsed: Duration::ZERO,
    };
    // Sequence numbers count the data records sent before each message
    // (RFC 7011 section 3.1), modulo 2^32.
    let mut sequence: u32 = 0;
    let mut n = config.first_record;
    let end = config.first_record + config.records;
    while n < end {
        let export_time = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as u32;
        writer.start(config.observation_domain, export_time, sequence);
        // Over TCP the template is sent once per session (8.1); over UDP
        // it is refreshed periodically (8.4).
        let refresh = match (config.transport, last_template) {
            (_, None) => true,
            (GenerateTransport::Udp, Some(t)) => t.elapsed() >= config.template_refresh,
            (GenerateTransport::Tcp, Some(_)) => false,
        };
        if refresh {
            writer.add_template(&template)?;
            last_template = Some(Instant::now());
        }
        while n < end
            && FlowRecord::synthetic(n, base_millis)
                .write_to(&mut writer)
                .is_ok()
        {
            n += 1;
        }
        let records = writer.data_records();
        let bytes = writer.finish();
        sink.send(bytes)?;
        report.messages += 1;
        report.bytes += bytes.len() as u64;
        report.records += records as u64;
        sequence = sequence.wrapping_add(records);
        if let Some(rate) = config.rate {
            // Pace against the schedule, not per message, so sleeping's
            // coarse granularity does not lower the achieved rate.
            let due = Duration::from_secs_f64(report.records as f64 / rate as f64);
            let elapsed = start.elapsed();
            if due > elapsed + Duration::from_millis(1) {
                std::thread::sleep(due - elapsed);
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            progress(report.records);
        }
    }
    sink.flush()?;
    report.elapsed = start.elapsed();
    Ok(report)
}
