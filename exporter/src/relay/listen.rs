//! The relay's IO: UDP listeners (one blocking thread each, never waiting
//! for the pool user: a full queue drops and counts) and TCP listeners (a
//! task per connection, waiting on a full queue so TCP flow control pauses
//! the router), and the metrics and rate-limited logs of what each message
//! did.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use protocol::ipfix::{self, TransportKind};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};

use super::session::{InputProtocol, InputReport, RouterSession, SessionLimits};
use super::templates::SharedRegistry;
use crate::config::RelayConfig;
use crate::stream::InputRecord;

/// How often a UDP listener forgets idle sessions and expired templates.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(5);
/// A UDP listener checks for a stop this often while no datagram comes.
const UDP_POLL_INTERVAL: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------------
// Accounting: metrics and rate-limited logs

/// At most one log line per interval per listener, with the count of the
/// lines it stands for: a flood of bad datagrams must not flood the log.
#[derive(Debug)]
struct LogLimiter {
    next: Instant,
    suppressed: u64,
}

impl LogLimiter {
    fn new() -> Self {
        Self {
            next: Instant::now(),
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last line)` when a line may be written.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if now >= self.next {
            self.next = now + Duration::from_secs(1);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

fn account(report: &InputReport, peer: SocketAddr, transport: TransportKind, log: &mut LogLimiter) {
    let protocol = report.protocol.map_or("unknown", InputProtocol::as_str);
    metrics::counter!("poolflow_relay_received_messages_total",
        "protocol" => protocol, "transport" => transport.as_str())
    .increment(1);
    if report.records > 0 {
        metrics::counter!("poolflow_relay_received_records_total", "protocol" => protocol)
            .increment(report.records);
    }
    for (reason, count) in &report.dropped {
        metrics::counter!("poolflow_relay_dropped_records_total", "reason" => *reason)
            .increment(*count);
    }
    for error in &report.errors {
        metrics::counter!("poolflow_relay_decode_errors_total",
            "protocol" => protocol, "reason" => error.reason)
        .increment(1);
    }
    if report.lost_records > 0 {
        metrics::counter!("poolflow_relay_input_lost_records_total").increment(report.lost_records);
    }
    if report.lost_packets > 0 {
        metrics::counter!("poolflow_relay_input_lost_packets_total").increment(report.lost_packets);
    }
    if (!report.errors.is_empty() || !report.dropped.is_empty())
        && let Some(suppressed) = log.allow()
    {
        let errors: Vec<String> = report
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.reason, e.detail))
            .collect();
        tracing::warn!(
            %peer,
            transport = transport.as_str(),
            protocol,
            errors = ?errors,
            dropped = ?report.dropped,
            similar_lines_suppressed = suppressed,
            "bad or dropped router input"
        );
    }
}

fn count_backpressure(dropped: u64, peer: SocketAddr, log: &mut LogLimiter) {
    metrics::counter!("poolflow_relay_dropped_records_total", "reason" => "backpressure")
        .increment(dropped);
    if let Some(suppressed) = log.allow() {
        tracing::warn!(
            %peer,
            dropped,
            similar_lines_suppressed = suppressed,
            "replay buffer full: UDP records dropped (routers cannot be paused)"
        );
    }
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------------------
// Listeners

/// Everything a listener needs.
#[derive(Debug, Clone)]
pub(super) struct ListenerContext {
    pub(super) registry: SharedRegistry,
    pub(super) records: mpsc::Sender<InputRecord>,
    pub(super) limits: SessionLimits,
    pub(super) config: RelayConfig,
}

/// Binds a UDP socket with the configured receive buffer.
pub(super) fn bind_udp(addr: SocketAddr, receive_buffer_bytes: usize) -> anyhow::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr).with_context(|| format!("binding UDP {addr}"))?;
    set_receive_buffer(&socket, receive_buffer_bytes);
    socket.set_read_timeout(Some(UDP_POLL_INTERVAL))?;
    Ok(socket)
}

#[cfg(target_os = "linux")]
fn set_receive_buffer(socket: &UdpSocket, bytes: usize) {
    use std::os::fd::AsRawFd;
    let value = bytes.min(i32::MAX as usize) as libc::c_int;
    // SO_RCVBUFFORCE passes net.core.rmem_max when privileged; SO_RCVBUF
    // (capped by the kernel) otherwise. Failure only costs burst capacity.
    for option in [libc::SO_RCVBUF, libc::SO_RCVBUFFORCE] {
        // SAFETY: a valid socket fd and a pointer to a c_int of its size.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                &value as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn set_receive_buffer(_socket: &UdpSocket, _bytes: usize) {}

/// One UDP listener on its own thread: blocking receive, one consumer, and
/// it never waits for the pool user (a full queue drops and counts).
pub(super) fn udp_loop(socket: UdpSocket, context: ListenerContext, stop: Arc<AtomicBool>) {
    let local = socket.local_addr().ok();
    let mut sessions: HashMap<SocketAddr, RouterSession> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    let mut out = Vec::new();
    let mut log = LogLimiter::new();
    let mut backpressure_log = LogLimiter::new();
    let mut next_housekeeping = Instant::now() + HOUSEKEEPING_INTERVAL;
    let max_sessions = context.config.max_udp_sessions;
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((len, peer)) => {
                let now_secs = unix_secs();
                if !sessions.contains_key(&peer) {
                    if sessions.len() >= max_sessions {
                        evict_idlest(&mut sessions);
                    }
                    sessions.insert(
                        peer,
                        RouterSession::new(peer.ip(), TransportKind::Udp, context.limits.clone()),
                    );
                    metrics::gauge!("poolflow_relay_sessions", "transport" => "udp").increment(1.0);
                }
                let session = sessions.get_mut(&peer).expect("inserted above");
                out.clear();
                let report = session.handle(&buf[..len], now_secs, &context.registry, &mut out);
                account(&report, peer, TransportKind::Udp, &mut log);
                let mut forwarded = 0;
                let mut dropped = 0;
                for record in out.drain(..) {
                    match context.records.try_send(record) {
                        Ok(()) => forwarded += 1,
                        Err(mpsc::error::TrySendError::Full(_)) => dropped += 1,
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
                metrics::counter!("poolflow_relay_forwarded_records_total").increment(forwarded);
                if dropped > 0 {
                    count_backpressure(dropped, peer, &mut backpressure_log);
                }
            }
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(error) => {
                // E.g. ICMP errors reported on the socket: keep receiving.
                tracing::debug!(?local, %error, "UDP receive error");
            }
        }
        let now = Instant::now();
        if now >= next_housekeeping {
            next_housekeeping = now + HOUSEKEEPING_INTERVAL;
            let now_secs = unix_secs();
            let before = sessions.len();
            sessions.retain(|_, s| {
                now_secs.saturating_sub(s.last_seen_secs)
                    <= context.config.udp_idle_timeout.as_secs()
            });
            for session in sessions.values_mut() {
                session.expire_templates(now_secs);
            }
            metrics::gauge!("poolflow_relay_sessions", "transport" => "udp")
                .decrement((before - sessions.len()) as f64);
            metrics::gauge!("poolflow_relay_templates")
                .set(context.registry.lock().templates().len() as f64);
        }
    }
    metrics::gauge!("poolflow_relay_sessions", "transport" => "udp")
        .decrement(sessions.len() as f64);
}

fn evict_idlest(sessions: &mut HashMap<SocketAddr, RouterSession>) {
    if let Some(peer) = sessions
        .iter()
        .min_by_key(|(_, s)| s.last_seen_secs)
        .map(|(peer, _)| *peer)
    {
        sessions.remove(&peer);
        metrics::counter!("poolflow_relay_evicted_sessions_total").increment(1);
        metrics::gauge!("poolflow_relay_sessions", "transport" => "udp").decrement(1.0);
        tracing::warn!(%peer, "UDP session limit reached: idlest router session forgotten");
    }
}

pub(super) async fn serve_tcp(
    listener: TcpListener,
    context: ListenerContext,
    mut shutdown: watch::Receiver<bool>,
) {
    let connections = Arc::new(Semaphore::new(context.config.max_tcp_connections));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            metrics::counter!("poolflow_relay_refused_connections_total").increment(1);
            tracing::warn!(%peer, "TCP connection limit reached: connection refused");
            continue;
        };
        let context = context.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            metrics::gauge!("poolflow_relay_sessions", "transport" => "tcp").increment(1.0);
            tcp_connection(stream, peer, context, shutdown).await;
            metrics::gauge!("poolflow_relay_sessions", "transport" => "tcp").decrement(1.0);
            drop(permit);
        });
    }
}

/// One router's TCP connection: IPFIX messages framed by their length
/// field. Records are handed on with a waiting send, so a full queue stops
/// the reading and TCP flow control pauses the router.
async fn tcp_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    context: ListenerContext,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut session = RouterSession::new(peer.ip(), TransportKind::Tcp, context.limits.clone());
    let mut log = LogLimiter::new();
    let mut message = Vec::with_capacity(65_536);
    let mut out = Vec::new();
    tracing::info!(%peer, "router connected over TCP");
    loop {
        let mut header = [0u8; 4];
        let read = tokio::select! {
            read = stream.read_exact(&mut header) => read,
            _ = shutdown.changed() => return,
        };
        if let Err(error) = read {
            if error.kind() != ErrorKind::UnexpectedEof {
                tracing::info!(%peer, %error, "router TCP connection failed");
            }
            break;
        }
        let version = u16::from_be_bytes([header[0], header[1]]);
        let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
        message.clear();
        message.extend_from_slice(&header);
        // Only IPFIX has its length here; anything else is handed to the
        // session as is, which counts it and ends the connection.
        if version == ipfix::message::VERSION && length >= ipfix::message::HEADER_LEN {
            message.resize(length, 0);
            let read = tokio::select! {
                read = stream.read_exact(&mut message[4..]) => read,
                _ = shutdown.changed() => return,
            };
            if read.is_err() {
                tracing::info!(%peer, "router TCP connection ended inside a message");
                break;
            }
        }
        out.clear();
        let report = session.handle(&message, unix_secs(), &context.registry, &mut out);
        account(&report, peer, TransportKind::Tcp, &mut log);
        let forwarded = out.len() as u64;
        for record in out.drain(..) {
            tokio::select! {
                sent = context.records.send(record) => if sent.is_err() { return },
                _ = shutdown.changed() => {
                    tracing::warn!(%peer, "stopping: records of a message from the router were not taken");
                    return;
                }
            }
        }
        metrics::counter!("poolflow_relay_forwarded_records_total").increment(forwarded);
        if report.fatal {
            tracing::warn!(%peer, "closing router TCP connection: its framing is lost");
            break;
        }
    }
    tracing::info!(%peer, "router TCP connection closed");
}
