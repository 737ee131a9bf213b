//! Thin IO drivers around [`SessionDecoder`]: a UDP receive thread (the
//! shared [`transport::udp_listener`] loop, as the exporter's relay uses it)
//! and TCP connection tasks. All protocol decisions live in the sans-IO
//! session.

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use protocol::ipfix::message::peek_message_length;
use protocol::ipfix::{SessionConfig, TransportKind};
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};
use transport::udp_listener::{self, SessionChange, UdpService};

use crate::batch::Batch;
use crate::decode_counts::{DecodeCounts, DecodeMetrics};
use crate::decoder::SessionDecoder;
use crate::ingest::{UDP_FLUSH_INTERVAL, now_ms};
use crate::session::{STOP_DRAIN_LIMIT, STOP_DRAIN_QUIET};

/// Records collected before a receiver hands a batch to the writer.
const RECEIVER_BATCH_RECORDS: usize = 2048;

/// Settings of the UDP receiver.
#[derive(Debug, Clone)]
pub struct UdpSettings {
    /// IPFIX session settings of each exporter.
    pub session: SessionConfig,
    /// Exporters (source address and port) tracked at once; the idlest is
    /// dropped to admit a new one.
    pub max_sessions: usize,
    /// A session silent this long is dropped (its templates with it).
    pub idle_timeout_secs: u64,
    /// SO_RCVBUF asked of the kernel: absorbs bursts while SQLite commits.
    pub receive_buffer_bytes: usize,
}

/// How often the UDP receiver drops idle sessions and expires templates.
const UDP_HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(10);

/// Binds `threads` UDP sockets to `addr` (one receive thread each; more
/// than one share the address through SO_REUSEPORT), each with a large
/// receive buffer. With `force`, SO_RCVBUFFORCE is tried too (past
/// `net.core.rmem_max` when privileged).
pub fn bind_udp(
    addr: SocketAddr,
    receive_buffer_bytes: usize,
    force: bool,
    threads: usize,
) -> Result<Vec<UdpSocket>> {
    let options = udp_listener::BindOptions {
        receive_buffer_bytes,
        force_receive_buffer: force,
        reuse_address: true,
        // The receiver hands on a partial batch at least this often.
        poll_interval: UDP_FLUSH_INTERVAL,
    };
    udp_listener::bind_group(addr, &options, threads).with_context(|| format!("binding UDP {addr}"))
}

/// Runs the UDP receiver on its own thread until `stop` is set: the shared
/// UDP listener loop ([`transport::udp_listener`]) with a [`SessionDecoder`]
/// per exporter, decoding into batches for the writer.
pub fn spawn_udp(
    socket: UdpSocket,
    index: usize,
    settings: UdpSettings,
    tx: mpsc::Sender<Batch>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("udp-receiver-{index}"))
        .spawn(move || {
            let listener = udp_listener::ListenerSettings {
                max_sessions: settings.max_sessions,
                idle_timeout: Duration::from_secs(settings.idle_timeout_secs),
                housekeeping_interval: UDP_HOUSEKEEPING_INTERVAL,
            };
            let mut receiver = UdpReceiver {
                tx,
                batch: new_batch(),
                batch_started: None,
                counts: DecodeCounts::default(),
                metrics: DecodeMetrics::new(settings.session.transport.as_str()),
                session: settings.session,
            };
            udp_listener::run(&socket, &listener, &stop, &mut receiver);
        })
        .expect("spawning the UDP receiver")
}

/// The collector's [`UdpService`]: decodes every exporter's datagrams into
/// one batch and hands it to the writer when full, old or stopping.
struct UdpReceiver {
    session: SessionConfig,
    tx: mpsc::Sender<Batch>,
    batch: Batch,
    /// When the oldest record of `batch` arrived: a steady trickle must not
    /// keep records waiting for a full batch.
    batch_started: Option<Instant>,
    /// The sessions' decode counts, published with each batch handed on.
    counts: DecodeCounts,
    metrics: DecodeMetrics,
}

impl UdpService for UdpReceiver {
    type Session = SessionDecoder;

    fn open(&mut self, peer: SocketAddr) -> SessionDecoder {
        SessionDecoder::new(peer.to_string(), self.session.clone())
    }

    fn datagram(
        &mut self,
        decoder: &mut SessionDecoder,
        _peer: SocketAddr,
        bytes: &[u8],
        now: Instant,
    ) -> ControlFlow<()> {
        self.batch_started.get_or_insert(now);
        decoder.handle(bytes, 0, now_ms(), &mut self.batch);
        self.counts.add(decoder.take_counts());
        ControlFlow::Continue(())
    }

    fn flush_now(&self, stopping: bool) -> bool {
        let young = self
            .batch_started
            .is_some_and(|t| t.elapsed() < UDP_FLUSH_INTERVAL);
        stopping
            || !young
            || self.batch.len() >= RECEIVER_BATCH_RECORDS
            || !self.batch.events.is_empty()
    }

    fn flush(&mut self) -> ControlFlow<()> {
        self.batch_started = None;
        self.metrics.publish(&std::mem::take(&mut self.counts));
        if !self.batch.is_empty()
            && self
                .tx
                .blocking_send(std::mem::replace(&mut self.batch, new_batch()))
                .is_err()
        {
            return ControlFlow::Break(()); // writer gone: shutting down
        }
        ControlFlow::Continue(())
    }

    /// The gauge counts up and down, as the TCP and SCTP sessions' do, so
    /// the receive threads of a `SO_REUSEPORT` group add up in it.
    fn session_change(&mut self, peer: SocketAddr, change: SessionChange, _sessions: usize) {
        let active = metrics::gauge!("poolflow_collector_sessions_active", "transport" => "udp");
        match change {
            SessionChange::Opened => {
                info!(%peer, "new UDP transport session");
                active.increment(1.0);
            }
            SessionChange::Evicted => {
                warn!(%peer, "UDP session limit reached, dropping the idlest session");
                active.decrement(1.0);
            }
            SessionChange::Idle => {
                info!(%peer, "UDP transport session idle, dropped");
                active.decrement(1.0);
            }
        }
    }

    fn housekeeping<'a>(&mut self, sessions: impl Iterator<Item = &'a mut SessionDecoder>) {
        let now_secs = (now_ms() / 1000) as u64;
        for decoder in sessions {
            decoder.session_mut().expire_templates(now_secs);
        }
    }
}

/// A batch sized for [`RECEIVER_BATCH_RECORDS`] typical flow records, so it
/// does not regrow while filling.
fn new_batch() -> Batch {
    Batch::with_capacity(RECEIVER_BATCH_RECORDS + 64, 48)
}

/// Settings of the TCP listener.
#[derive(Debug, Clone)]
pub struct TcpSettings {
    /// IPFIX session settings of each connection.
    pub session: SessionConfig,
    /// Connections served at once; more are refused.
    pub max_sessions: usize,
}

/// Accepts IPFIX-over-TCP connections (RFC 7011 section 10.4) until
/// `shutdown` turns true; then every connection flushes what it decoded and
/// this returns once they all have.
pub async fn serve_tcp(
    listener: TcpListener,
    settings: TcpSettings,
    tx: mpsc::Sender<Batch>,
    shutdown: watch::Receiver<bool>,
) {
    serve_stream(listener, settings, None, tx, shutdown).await
}

/// Accepts IPFIX over TLS over TCP (RFC 7011 section 11): as
/// [`serve_tcp`], after a TLS handshake. A failed handshake (a client
/// without a certificate signed by `client_ca_file`, a client that does not
/// trust ours, a stalled or garbled handshake) is counted by reason and
/// logged with the peer; it never affects other sessions.
pub async fn serve_tls(
    listener: TcpListener,
    settings: TcpSettings,
    acceptor: transport::tls::TlsAcceptor,
    tx: mpsc::Sender<Batch>,
    shutdown: watch::Receiver<bool>,
) {
    serve_stream(listener, settings, Some(acceptor), tx, shutdown).await
}

/// A TLS client gets this long to finish its handshake: a peer that opens
/// connections and stays silent must not hold session slots for ever.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve_stream(
    listener: TcpListener,
    settings: TcpSettings,
    tls: Option<transport::tls::TlsAcceptor>,
    tx: mpsc::Sender<Batch>,
    mut shutdown: watch::Receiver<bool>,
) {
    let label = if tls.is_some() { "tls" } else { "tcp" };
    let slots = Arc::new(Semaphore::new(settings.max_sessions));
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped(&mut shutdown) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                warn!("{label} accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            warn!(%peer, limit = settings.max_sessions, "{label} session limit reached, refusing");
            drop(stream);
            continue;
        };
        let tx = tx.clone();
        let config = settings.session.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let reason = match tls {
                None => session_with_gauge(stream, peer, label, config, tx, shutdown).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                    match handshake {
                        Ok(Ok(stream)) => {
                            session_with_gauge(stream, peer, label, config, tx, shutdown).await
                        }
                        Ok(Err(e)) => {
                            let reason = transport::tls::handshake_failure_reason(&e);
                            transport::tls::count_handshake_failure(peer, reason, &e.to_string());
                            None
                        }
                        Err(_) => {
                            transport::tls::count_handshake_failure(
                                peer,
                                "timeout",
                                &format!("not finished in {TLS_HANDSHAKE_TIMEOUT:?}"),
                            );
                            None
                        }
                    }
                }
            };
            if let Some(reason) = reason {
                info!(%peer, "{label} transport session closed: {reason}");
            }
            drop(permit);
        });
    }
    while connections.join_next().await.is_some() {}
}

async fn session_with_gauge<S: AsyncRead + Unpin>(
    stream: S,
    peer: SocketAddr,
    label: &'static str,
    config: SessionConfig,
    tx: mpsc::Sender<Batch>,
    shutdown: watch::Receiver<bool>,
) -> Option<String> {
    let gauge = metrics::gauge!("poolflow_collector_sessions_active", "transport" => label);
    gauge.increment(1.0);
    info!(%peer, "{label} transport session opened");
    let reason = tcp_session(stream, peer, config, tx, shutdown).await;
    gauge.decrement(1.0);
    Some(reason)
}

async fn tcp_session<S: AsyncRead + Unpin>(
    stream: S,
    peer: SocketAddr,
    config: SessionConfig,
    tx: mpsc::Sender<Batch>,
    mut shutdown: watch::Receiver<bool>,
) -> String {
    debug_assert_eq!(config.transport, TransportKind::Tcp);
    let mut reader = BufReader::with_capacity(256 * 1024, stream);
    let metrics = DecodeMetrics::new(config.transport.as_str());
    let mut decoder = SessionDecoder::new(peer.to_string(), config);
    let mut buf = vec![0u8; 65_536];
    let mut batch = Batch::default();
    // Set once the collector stops: the last moment to drain the socket.
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        // A message is self-delimiting: its header carries its length.
        let header = {
            // The read is never abandoned half-way for the stop: its bytes
            // would be lost and the stream out of step.
            let read = reader.read_exact(&mut buf[..4]);
            tokio::pin!(read);
            loop {
                tokio::select! {
                    result = &mut read => break Some(result),
                    _ = stopped(&mut shutdown), if drain_until.is_none() => {
                        // Graceful stop: first take in what the exporter
                        // already sent (it is in our socket buffer and will
                        // not be sent again).
                        drain_until = Some(stop_drain_deadline());
                    }
                    _ = tokio::time::sleep(stop_drain_wait(drain_until)), if drain_until.is_some() => break None,
                }
            }
        };
        let Some(header) = header else {
            let _ = flush(&tx, &mut batch, &mut decoder, &metrics).await;
            return "collector shutting down".into();
        };
        if let Err(e) = header {
            let _ = flush(&tx, &mut batch, &mut decoder, &metrics).await;
            return if e.kind() == ErrorKind::UnexpectedEof {
                "peer closed".into()
            } else {
                format!("read failed: {e}")
            };
        }
        let len = match peek_message_length(&buf[..4]) {
            Some(Ok(len)) => len as usize,
            Some(Err(err)) => {
                // Without a trustworthy length the stream cannot be resynced:
                // RFC 7011 section 10.4.1 has the collector close it.
                decoder.count_error(&err);
                let _ = flush(&tx, &mut batch, &mut decoder, &metrics).await;
                return format!("unrecoverable framing error: {err}");
            }
            None => unreachable!("four bytes were read"),
        };
        if let Err(e) = reader.read_exact(&mut buf[4..len]).await {
            let _ = flush(&tx, &mut batch, &mut decoder, &metrics).await;
            return format!("message truncated by connection end: {e}");
        }
        decoder.handle(&buf[..len], 0, now_ms(), &mut batch);
        // Flush when nothing more is buffered: the next read may wait, and
        // records must not sit in memory meanwhile.
        let drained = reader.buffer().is_empty();
        if (batch.len() >= RECEIVER_BATCH_RECORDS || drained)
            && flush(&tx, &mut batch, &mut decoder, &metrics)
                .await
                .is_err()
        {
            return "collector shutting down".into();
        }
    }
}

/// Graceful stop of a plain TCP session: once stopping (`drain_until` is
/// set), how long to wait for more data before closing (the same rule as
/// the association session's, [`crate::session`]).
fn stop_drain_wait(drain_until: Option<tokio::time::Instant>) -> Duration {
    let left = drain_until.map_or(Duration::ZERO, |until| {
        until.saturating_duration_since(tokio::time::Instant::now())
    });
    STOP_DRAIN_QUIET.min(left)
}

/// Drain deadline of a session that just saw the stop.
fn stop_drain_deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + STOP_DRAIN_LIMIT
}

/// Publishes the decoder's counts and hands a non-empty batch to the
/// writer; `Err` once the writer is gone.
async fn flush(
    tx: &mpsc::Sender<Batch>,
    batch: &mut Batch,
    decoder: &mut SessionDecoder,
    metrics: &DecodeMetrics,
) -> Result<(), ()> {
    metrics.publish(&decoder.take_counts());
    if batch.is_empty() {
        return Ok(());
    }
    tx.send(std::mem::replace(batch, new_batch()))
        .await
        .map_err(|_| ())
}

/// Resolves once the shutdown flag is set (or its sender is gone). Keeps the
/// watch guard out of the caller's future so that future stays `Send`.
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
