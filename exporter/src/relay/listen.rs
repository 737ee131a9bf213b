//! The relay's IO: UDP listeners (one blocking thread each, the shared
//! [`transport::udp_listener`] loop, never waiting for the pool user: a full
//! queue drops and counts) and TCP listeners (a
//! task per connection, waiting on a full queue so TCP flow control pauses
//! the router), and the metrics and rate-limited logs of what each message
//! did.

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use daemon_common::log_limit::LogLimiter;
use protocol::ipfix::{self, TransportKind};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use transport::udp_listener::{self, SessionChange, UdpService};

use super::session::{InputProtocol, InputReport, RouterSession, SessionLimits};
use super::templates::SharedRegistry;
use crate::config::RelayConfig;
use crate::record_queue::{RecordSender, TrySendError};
use crate::stream::InputRecord;

/// How often a UDP listener forgets idle sessions and expired templates.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(5);
/// A UDP listener checks for a stop this often while no datagram comes.
const UDP_POLL_INTERVAL: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------------
// Accounting: metrics and rate-limited logs

/// At most one bad-input log line per second per listener (a UDP listener
/// or a TCP connection), with the count of the lines it stands for: a flood
/// of bad datagrams must not flood the log.
fn log_limiter() -> LogLimiter {
    LogLimiter::per_interval(Duration::from_secs(1))
}

/// Hands on only records whose relay template is in the template file. The
/// session defined new ids in memory; they are written here first. A write
/// that fails drops the records under the new ids (reason `template_file`)
/// and is tried again with the next message: a record numbered under an id
/// the file does not hold could not be replayed faithfully after a restart.
fn keep_durable_templates(
    registry: &SharedRegistry,
    out: &mut Vec<InputRecord>,
    report: &mut InputReport,
) {
    let (durable_below, error) = match registry.persist() {
        Ok(below) => (below, None),
        Err(error) => (registry.lock().durable_below(), Some(error)),
    };
    let before = out.len();
    out.retain(|record| record.template_id < durable_below);
    let dropped = (before - out.len()) as u64;
    if dropped > 0 {
        report.forwarded -= dropped;
        if let Some(error) = error {
            tracing::error!(%error, dropped, "relay template file not written; records under its new templates dropped");
        }
        report.drop_records("template_file", dropped);
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
        && let Some(allowed) = log.allow()
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
            similar_lines_suppressed = allowed.suppressed,
            "bad or dropped router input"
        );
    }
}

fn count_backpressure(dropped: u64, peer: SocketAddr, log: &mut LogLimiter) {
    metrics::counter!("poolflow_relay_dropped_records_total", "reason" => "backpressure")
        .increment(dropped);
    if let Some(allowed) = log.allow() {
        tracing::warn!(
            %peer,
            dropped,
            similar_lines_suppressed = allowed.suppressed,
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
    pub(super) records: RecordSender,
    pub(super) limits: SessionLimits,
    pub(super) config: RelayConfig,
}

/// Binds a UDP socket with the configured receive buffer.
pub(super) fn bind_udp(addr: SocketAddr, receive_buffer_bytes: usize) -> anyhow::Result<UdpSocket> {
    let options = udp_listener::BindOptions {
        receive_buffer_bytes,
        // Failure (not privileged) only costs burst capacity.
        force_receive_buffer: true,
        reuse_address: false,
        poll_interval: UDP_POLL_INTERVAL,
    };
    udp_listener::bind(addr, &options).with_context(|| format!("binding UDP {addr}"))
}

/// One UDP listener on its own thread: the shared UDP listener loop
/// ([`transport::udp_listener`]) with a [`RouterSession`] per router.
pub(super) fn udp_loop(socket: UdpSocket, context: ListenerContext, stop: Arc<AtomicBool>) {
    let settings = udp_listener::ListenerSettings {
        max_sessions: context.config.max_udp_sessions,
        idle_timeout: context.config.udp_idle_timeout,
        housekeeping_interval: HOUSEKEEPING_INTERVAL,
    };
    let mut routers = UdpRouters {
        context,
        out: Vec::new(),
        log: log_limiter(),
        backpressure_log: log_limiter(),
    };
    udp_listener::run(&socket, &settings, &stop, &mut routers);
}

/// The relay's [`UdpService`]: decodes each router's datagrams and hands
/// the records on at once; it never waits for the pool user (a full queue
/// drops and counts).
struct UdpRouters {
    context: ListenerContext,
    out: Vec<InputRecord>,
    log: LogLimiter,
    backpressure_log: LogLimiter,
}

impl UdpService for UdpRouters {
    type Session = RouterSession;

    fn open(&mut self, peer: SocketAddr) -> RouterSession {
        RouterSession::new(peer.ip(), TransportKind::Udp, self.context.limits.clone())
    }

    fn datagram(
        &mut self,
        session: &mut RouterSession,
        peer: SocketAddr,
        bytes: &[u8],
        _now: Instant,
    ) -> ControlFlow<()> {
        self.out.clear();
        let mut report = session.handle(bytes, unix_secs(), &self.context.registry, &mut self.out);
        keep_durable_templates(&self.context.registry, &mut self.out, &mut report);
        account(&report, peer, TransportKind::Udp, &mut self.log);
        // A message's records go together or not at all.
        let records = std::mem::take(&mut self.out);
        let count = records.len() as u64;
        match self.context.records.try_send(records) {
            Ok(()) => metrics::counter!("poolflow_relay_forwarded_records_total").increment(count),
            Err(TrySendError::Full(_)) => {
                count_backpressure(count, peer, &mut self.backpressure_log)
            }
            Err(TrySendError::Closed(_)) => return ControlFlow::Break(()),
        }
        ControlFlow::Continue(())
    }

    fn session_change(&mut self, peer: SocketAddr, change: SessionChange, _sessions: usize) {
        let sessions = metrics::gauge!("poolflow_relay_sessions", "transport" => "udp");
        match change {
            SessionChange::Opened => sessions.increment(1.0),
            SessionChange::Evicted => {
                metrics::counter!("poolflow_relay_evicted_sessions_total").increment(1);
                sessions.decrement(1.0);
                tracing::warn!(%peer, "UDP session limit reached: idlest router session forgotten");
            }
            SessionChange::Idle => sessions.decrement(1.0),
        }
    }

    fn housekeeping<'a>(&mut self, sessions: impl Iterator<Item = &'a mut RouterSession>) {
        let now_secs = unix_secs();
        for session in sessions {
            session.expire_templates(now_secs);
        }
        metrics::gauge!("poolflow_relay_templates")
            .set(self.context.registry.lock().templates().len() as f64);
    }

    fn stopped(&mut self, sessions: usize) {
        metrics::gauge!("poolflow_relay_sessions", "transport" => "udp").decrement(sessions as f64);
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
    let mut log = log_limiter();
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
        let mut report = session.handle(&message, unix_secs(), &context.registry, &mut out);
        keep_durable_templates(&context.registry, &mut out, &mut report);
        account(&report, peer, TransportKind::Tcp, &mut log);
        let forwarded = out.len() as u64;
        tokio::select! {
            sent = context.records.send(std::mem::take(&mut out)) => if sent.is_err() { return },
            _ = shutdown.changed() => {
                tracing::warn!(%peer, "stopping: records of a message from the router were not taken");
                return;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::fixtures::{ROUTER_A, ipfix_message, limits, record, router_template};
    use crate::relay::templates::TemplateRegistry;

    /// The session defines relay ids in memory; the listener writes them to
    /// the template file before it hands a record on, and drops (and
    /// counts) records whose id the file could not take.
    #[test]
    fn records_are_handed_on_only_under_templates_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-yet").join("relay.templates");
        let registry = SharedRegistry::new(TemplateRegistry::open(&path, 8).unwrap());
        let mut session = RouterSession::new(ROUTER_A, TransportKind::Udp, limits());
        let message = ipfix_message(5, &router_template(256), &[record(1), record(2)]);
        let mut out = Vec::new();
        let mut report = session.handle(&message, 0, &registry, &mut out);
        assert_eq!(out.len(), 2, "decoded and mapped");
        keep_durable_templates(&registry, &mut out, &mut report);
        assert!(out.is_empty(), "the file cannot be written yet");
        assert_eq!(report.dropped, vec![("template_file", 2)]);
        assert_eq!(report.forwarded, 0);

        std::fs::create_dir(path.parent().unwrap()).unwrap();
        let mut out = Vec::new();
        let message = ipfix_message(5, &router_template(256), &[record(3)]);
        let mut report = session.handle(&message, 0, &registry, &mut out);
        keep_durable_templates(&registry, &mut out, &mut report);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].template_id, 256);
        assert!(report.dropped.is_empty());
        let reopened = TemplateRegistry::open(&path, 8).unwrap();
        assert_eq!(reopened.templates().len(), 1, "the id is in the file");
    }
}
