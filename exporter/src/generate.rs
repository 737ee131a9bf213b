//! `exporter generate`: synthetic IPFIX flow records at a given rate, for
//! load tests, benchmarks and demos. The records are standard IPFIX
//! ([`protocol::ipfix::flow`]) so third-party collectors accept them too.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use protocol::ipfix::MessageWriter;
use protocol::ipfix::flow::{FlowRecord, flow_template};

/// How `exporter generate` reaches the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GenerateTransport {
    /// IPFIX over UDP (RFC 7011 10.3): no acknowledgement, templates resent.
    Udp,
    /// IPFIX over TCP (RFC 7011 10.4).
    Tcp,
    /// SCTP over UDP (RFC 6951); `target` is the collector's UDP address,
    /// its SCTP port is the IPFIX port 4739.
    Sctp,
    /// TLS over TCP (RFC 7011 section 11) to a collector's `tls_listen`;
    /// needs [`GenerateConfig::tls`].
    Tls,
}

/// TLS settings of `--transport tls`.
#[derive(Debug, Clone)]
pub struct GenerateTls {
    /// The CA the collector's certificate must chain to, and our own
    /// certificate and key for a collector that asks for one.
    pub files: transport::tls::ClientTlsFiles,
    /// Name the collector's certificate must carry; `None`: its IP address.
    pub server_name: Option<String>,
}

/// What `exporter generate` sends, where and how fast.
#[derive(Debug, Clone)]
pub struct GenerateConfig {
    /// The collector's address.
    pub target: SocketAddr,
    /// The transport to it.
    pub transport: GenerateTransport,
    /// Records to send in total.
    pub records: u64,
    /// Records per second; `None` sends as fast as possible.
    pub rate: Option<u64>,
    /// IPFIX observation domain of every message.
    pub observation_domain: u32,
    /// Largest IPFIX message, bytes (keep UDP under the path MTU).
    pub message_size: usize,
    /// UDP: resend the template at least this often (RFC 7011 8.4).
    pub template_refresh: Duration,
    /// Number of the first synthetic record, so runs can continue a series.
    pub first_record: u64,
    /// For [`GenerateTransport::Tls`].
    pub tls: Option<GenerateTls>,
    /// [`GenerateTransport::Sctp`]: UDP GSO, as the exporter's
    /// `udp_segmentation_offload` (so a benchmark compares like with like).
    pub udp_segmentation_offload: bool,
}

/// What a run did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerateReport {
    /// Records the collector acknowledged (TCP, SCTP; UDP: sent).
    pub records: u64,
    /// IPFIX messages sent.
    pub messages: u64,
    /// Bytes of those messages.
    pub bytes: u64,
    /// From the first send to the acknowledged close.
    pub elapsed: Duration,
}

impl GenerateReport {
    /// Throughput of the run.
    pub fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

enum Sink {
    Udp(UdpBatcher),
    Tcp(TcpSink),
    Sctp(Box<SctpSink>),
    Tls(Box<std::io::BufWriter<crate::tls::TlsStream>>),
}

/// IPFIX over SCTP (RFC 7011 section 10.2): templates and data reliable and
/// ordered on stream 0. The association lives on a small runtime of its own
/// because this generator is synchronous.
struct SctpSink {
    runtime: tokio::runtime::Runtime,
    association: transport::Association,
    target: SocketAddr,
    /// Records of every message sent, in order: the association counts
    /// acknowledged messages, the report counts records.
    records_per_message: Vec<u32>,
}

/// A close that makes no progress (nothing newly acknowledged) for this long
/// has failed: the collector is gone or stuck.
const CLOSE_STALL: Duration = Duration::from_secs(30);

/// IPFIX has no registered SCTP payload protocol identifier; 0 means
/// "unspecified" (RFC 9260 section 3.3.1).
const IPFIX_PPID: u32 = 0;

impl SctpSink {
    fn connect(target: SocketAddr, udp_segmentation_offload: bool) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let config = transport::Config {
            transport: transport::TransportKind::SctpOverUdp,
            // poolflow convention (as for registrars): the SCTP port equals
            // the UDP encapsulation port, so one socket address names an
            // SCTP-over-UDP endpoint, e.g. in an ASAP transport parameter.
            sctp_port: target.port(),
            udp_segmentation_offload,
            ..transport::Config::default()
        };
        let association = runtime
            .block_on(transport::connect(config, target))
            .with_context(|| format!("SCTP over UDP to {target}"))?;
        Ok(Self {
            runtime,
            association,
            target,
            records_per_message: Vec::new(),
        })
    }

    fn send(&mut self, bytes: &[u8], records: u32) -> Result<()> {
        let message = transport::Message::new(0, IPFIX_PPID, bytes.to_vec());
        if let Err(error) = self.runtime.block_on(self.association.send(message)) {
            let (acknowledged, total) = self.acknowledged_records();
            anyhow::bail!(
                "SCTP association to {} ended while sending ({error}): the collector \
                 acknowledged {acknowledged} of {total} records sent",
                self.target
            );
        }
        self.records_per_message.push(records);
        Ok(())
    }

    /// Records in the messages the association counted as acknowledged,
    /// and records sent.
    fn acknowledged_records(&self) -> (u64, u64) {
        let sent = self.records_per_message.len();
        let acknowledged_messages =
            (self.association.acknowledged_messages().unwrap_or(0) as usize).min(sent);
        let sum = |messages: &[u32]| messages.iter().map(|&r| u64::from(r)).sum::<u64>();
        (
            sum(&self.records_per_message[..acknowledged_messages]),
            sum(&self.records_per_message),
        )
    }

    /// Closes gracefully and returns the records the collector acknowledged:
    /// all of them when the SHUTDOWN sequence completed (it completes only
    /// once every DATA chunk is SACKed, RFC 9260 section 9.2). An ABORT, a
    /// failure or a stalled close is an error that says how many records
    /// the collector did acknowledge.
    fn close(&mut self) -> Result<u64> {
        self.association.close();
        let association = &mut self.association;
        let last = self.runtime.block_on(async {
            let mut progress = (association.acknowledged_messages(), Instant::now());
            loop {
                match tokio::time::timeout(Duration::from_secs(1), association.recv()).await {
                    Ok(Some(event @ (transport::Event::Down(_) | transport::Event::Failed(_)))) => {
                        return Some(event);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return None,
                    Err(_) => {
                        let acknowledged = association.acknowledged_messages();
                        if acknowledged != progress.0 {
                            progress = (acknowledged, Instant::now());
                        } else if progress.1.elapsed() >= CLOSE_STALL {
                            return None;
                        }
                    }
                }
            }
        });
        let (acknowledged, total) = self.acknowledged_records();
        match last {
            Some(transport::Event::Down(transport::DownReason::Local)) if acknowledged == total => {
                Ok(acknowledged)
            }
            last => {
                let how = match last {
                    Some(event) => format!("{event:?}"),
                    None => format!("no progress for {} s", CLOSE_STALL.as_secs()),
                };
                anyhow::bail!(
                    "SCTP association to {} did not close cleanly ({how}): the collector \
                     acknowledged {acknowledged} of {total} records",
                    self.target
                )
            }
        }
    }
}

/// IPFIX over TCP; the kernel tells which bytes the collector's TCP
/// acknowledged, so the report counts the records in them.
struct TcpSink {
    writer: std::io::BufWriter<TcpStream>,
    /// End offset (bytes) and records of every message sent, in order.
    messages: Vec<(u64, u32)>,
    bytes: u64,
}

impl TcpSink {
    fn send(&mut self, bytes: &[u8], records: u32) -> Result<()> {
        self.writer.write_all(bytes)?;
        self.bytes += bytes.len() as u64;
        self.messages.push((self.bytes, records));
        Ok(())
    }

    /// Sends FIN after the last byte and waits until the collector's TCP has
    /// acknowledged every byte; returns the records in acknowledged bytes.
    fn close(&mut self) -> Result<u64> {
        self.writer.flush()?;
        let stream = self.writer.get_ref();
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut progress = (unacknowledged_bytes(stream)?, Instant::now());
        while progress.0 > 0 && progress.1.elapsed() < CLOSE_STALL {
            std::thread::sleep(Duration::from_millis(5));
            let now = unacknowledged_bytes(stream)?;
            if now != progress.0 {
                progress = (now, Instant::now());
            }
        }
        let acknowledged_bytes = self.bytes - progress.0.min(self.bytes);
        let acknowledged: u64 = self
            .messages
            .iter()
            .take_while(|&&(end, _)| end <= acknowledged_bytes)
            .map(|&(_, r)| u64::from(r))
            .sum();
        if progress.0 > 0 {
            let total: u64 = self.messages.iter().map(|&(_, r)| u64::from(r)).sum();
            anyhow::bail!(
                "TCP connection to {} did not close cleanly ({} bytes never acknowledged): the \
                 collector acknowledged {acknowledged} of {total} records",
                stream.peer_addr()?,
                progress.0
            );
        }
        Ok(acknowledged)
    }
}

/// Bytes sent on `stream` that the peer has not acknowledged yet (Linux
/// `SIOCOUTQ`; elsewhere 0, i.e. what the kernel accepted counts).
#[cfg(target_os = "linux")]
fn unacknowledged_bytes(stream: &TcpStream) -> Result<u64> {
    use std::os::fd::AsRawFd;
    let mut queued: libc::c_int = 0;
    // SAFETY: valid fd owned by `stream`; SIOCOUTQ writes one c_int.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(queued.max(0) as u64)
}

#[cfg(not(target_os = "linux"))]
fn unacknowledged_bytes(_stream: &TcpStream) -> Result<u64> {
    Ok(0)
}

impl Sink {
    fn send(&mut self, bytes: &[u8], records: u32) -> Result<()> {
        match self {
            Sink::Udp(s) => s.push(bytes),
            Sink::Tcp(s) => s.send(bytes, records),
            Sink::Sctp(s) => s.send(bytes, records),
            Sink::Tls(s) => Ok(s.write_all(bytes)?),
        }
    }

    /// Hands everything queued to the network (before a pause).
    fn flush(&mut self) -> Result<()> {
        match self {
            Sink::Udp(s) => s.flush(),
            Sink::Tcp(s) => Ok(s.writer.flush()?),
            // The association's driver sends at once. (This used to close the
            // association, so a paced SCTP run ended at its first pause.)
            Sink::Sctp(_) => Ok(()),
            Sink::Tls(s) => Ok(s.flush()?),
        }
    }

    /// Ends the session; returns the records the collector acknowledged
    /// (UDP acknowledges nothing: there, what the kernel took), or an error
    /// when the close did not complete.
    fn finish(&mut self, sent: u64) -> Result<u64> {
        match self {
            Sink::Udp(s) => s.flush().map(|()| sent),
            Sink::Tcp(s) => s.close(),
            Sink::Sctp(s) => s.close(),
            // close_notify sent and the collector's close awaited: TLS
            // over TCP delivered everything before it.
            Sink::Tls(s) => crate::tls::close(s).map(|()| sent),
        }
    }
}

/// Datagrams handed to the kernel per system call (sendmmsg on Linux): the
/// per-call cost, not encoding, bounded the generator's rate.
const DATAGRAMS_PER_CALL: usize = 32;

/// Queues datagrams and sends them together; a datagram counts as sent
/// once queued, and [`UdpBatcher::flush`] (called before any wait and at
/// the end) hands every queued one to the kernel.
struct UdpBatcher {
    socket: UdpSocket,
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl UdpBatcher {
    fn new(socket: UdpSocket) -> Self {
        Self {
            socket,
            data: Vec::with_capacity(DATAGRAMS_PER_CALL * 1500),
            ends: Vec::with_capacity(DATAGRAMS_PER_CALL),
        }
    }

    fn push(&mut self, bytes: &[u8]) -> Result<()> {
        self.data.extend_from_slice(bytes);
        self.ends.push(self.data.len());
        if self.ends.len() >= DATAGRAMS_PER_CALL {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let mut sent = 0;
        while sent < self.ends.len() {
            match self.send_from(sent) {
                Ok(n) => sent += n,
                // The local socket buffer is full: wait for it rather
                // than count a datagram as sent that never left.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => std::thread::yield_now(),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.data.clear();
        self.ends.clear();
        Ok(())
    }

    fn datagram(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.data[start..self.ends[i]]
    }

    /// Sends queued datagrams from `first`; returns how many left.
    #[cfg(target_os = "linux")]
    fn send_from(&mut self, first: usize) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        let count = self.ends.len() - first;
        let mut iovecs: Vec<libc::iovec> = (first..self.ends.len())
            .map(|i| {
                let d = self.datagram(i);
                libc::iovec {
                    iov_base: d.as_ptr() as *mut libc::c_void,
                    iov_len: d.len(),
                }
            })
            .collect();
        // SAFETY: mmsghdr is plain data; all zeroes is a valid value.
        let mut headers: Vec<libc::mmsghdr> =
            (0..count).map(|_| unsafe { std::mem::zeroed() }).collect();
        for (h, iov) in headers.iter_mut().zip(iovecs.iter_mut()) {
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the headers point at iovecs and data that outlive the
        // call; the socket is connected, so no address is needed.
        let n = unsafe {
            libc::sendmmsg(
                self.socket.as_raw_fd(),
                headers.as_mut_ptr(),
                count as u32,
                0,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    #[cfg(not(target_os = "linux"))]
    fn send_from(&mut self, first: usize) -> std::io::Result<usize> {
        self.socket.send(self.datagram(first))?;
        Ok(1)
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
            Sink::Udp(UdpBatcher::new(s))
        }
        GenerateTransport::Tcp => {
            let s = TcpStream::connect(config.target)
                .with_context(|| format!("connecting TCP to {}", config.target))?;
            s.set_nodelay(true)?;
            Sink::Tcp(TcpSink {
                writer: std::io::BufWriter::with_capacity(256 * 1024, s),
                messages: Vec::new(),
                bytes: 0,
            })
        }
        GenerateTransport::Sctp => Sink::Sctp(Box::new(SctpSink::connect(
            config.target,
            config.udp_segmentation_offload,
        )?)),
        GenerateTransport::Tls => {
            let tls = config
                .tls
                .as_ref()
                .context("--transport tls needs --ca-file")?;
            Sink::Tls(Box::new(std::io::BufWriter::with_capacity(
                256 * 1024,
                crate::tls::connect(config.target, tls)?,
            )))
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
            (
                GenerateTransport::Tcp | GenerateTransport::Sctp | GenerateTransport::Tls,
                Some(_),
            ) => false,
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
        sink.send(bytes, records)?;
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
                // Nothing may wait in the queue while we sleep.
                sink.flush()?;
                std::thread::sleep(due - elapsed);
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            progress(report.records);
        }
    }
    // The exporter's own account at the end (RFC 7011 4.3): a collector
    // that missed the tail counts it as lost records.
    let stats = protocol::ipfix::reliability::ReliabilityStatistics {
        exporting_process_id: 0,
        observation_domain_id: config.observation_domain,
        exported_messages: report.messages,
        exported_records: report.records,
        not_sent_records: 0,
        system_init_ms: base_millis,
        observation_ms: SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64,
    };
    let (bytes, _) = protocol::ipfix::reliability::encode_message(
        &mut writer,
        (stats.observation_ms / 1000) as u32,
        0,
        true,
        &[stats],
    )?;
    // No data record: it never counts as sent.
    sink.send(&bytes, 0)?;
    // "Sent" means acknowledged by the collector (TCP, SCTP): a close that
    // did not complete is an error naming what was.
    report.records = sink.finish(report.records)?;
    report.elapsed = start.elapsed();
    Ok(report)
}
