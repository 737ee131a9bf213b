//! Thin IO drivers around [`SessionDecoder`]: a UDP receive thread and TCP
//! connection tasks. All protocol decisions live in the sans-IO session.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{Context, Result};
use protocol::ipfix::message::peek_message_length;
use protocol::ipfix::{SessionConfig, TransportKind};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::ingest::{Batch, SessionDecoder, UDP_FLUSH_INTERVAL};

/// Records collected before a receiver hands a batch to the writer.
const RECEIVER_BATCH_RECORDS: usize = 2048;

/// Settings of the UDP receiver.
#[derive(Debug, Clone)]
pub struct UdpSettings {
    pub session: SessionConfig,
    /// Exporters (source address and port) tracked at once; the idlest is
    /// dropped to admit a new one.
    pub max_sessions: usize,
    /// A session silent this long is dropped (its templates with it).
    pub idle_timeout_secs: u64,
    /// SO_RCVBUF asked of the kernel: absorbs bursts while SQLite commits.
    pub receive_buffer_bytes: usize,
}

/// Binds a UDP socket with a large receive buffer.
pub fn bind_udp(addr: SocketAddr, receive_buffer_bytes: usize) -> Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // SO_RCVBUFFORCE passes net.core.rmem_max when we run privileged; fall
    // back to the capped SO_RCVBUF otherwise.
    if socket.set_recv_buffer_size(receive_buffer_bytes).is_err() {
        warn!("could not set UDP receive buffer to {receive_buffer_bytes} bytes");
    }
    force_receive_buffer(&socket, receive_buffer_bytes);
    socket.set_reuse_address(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("binding UDP {addr}"))?;
    let socket: UdpSocket = socket.into();
    socket.set_read_timeout(Some(UDP_FLUSH_INTERVAL))?;
    Ok(socket)
}

#[cfg(target_os = "linux")]
fn force_receive_buffer(socket: &Socket, bytes: usize) {
    use std::os::fd::AsRawFd;
    let value = bytes.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: a valid socket fd and a pointer to a c_int of the right size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn force_receive_buffer(_socket: &Socket, _bytes: usize) {}

/// Runs the UDP receiver on its own thread until `stop` is set. Blocking
/// receive on a dedicated thread beats an async loop here: one socket, one
/// consumer, no wake-ups between datagrams.
pub fn spawn_udp(
    socket: UdpSocket,
    settings: UdpSettings,
    tx: mpsc::Sender<Batch>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("udp-receiver".into())
        .spawn(move || udp_loop(socket, settings, tx, stop))
        .expect("spawning the UDP receiver")
}

struct UdpSession {
    decoder: SessionDecoder,
    last_seen: Instant,
}

fn udp_loop(
    socket: UdpSocket,
    settings: UdpSettings,
    tx: mpsc::Sender<Batch>,
    stop: Arc<AtomicBool>,
) {
    let mut sessions: HashMap<SocketAddr, UdpSession> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    let mut batch = Batch::default();
    let mut last_sweep = Instant::now();
    loop {
        match socket.recv_from(&mut buf) {
            Ok((len, peer)) => {
                let session = match sessions.get_mut(&peer) {
                    Some(s) => s,
                    None => {
                        if sessions.len() >= settings.max_sessions {
                            evict_idlest(&mut sessions);
                        }
                        info!(%peer, "new UDP transport session");
                        sessions.entry(peer).or_insert(UdpSession {
                            decoder: SessionDecoder::new(
                                peer.to_string(),
                                settings.session.clone(),
                            ),
                            last_seen: Instant::now(),
                        })
                    }
                };
                session.last_seen = Instant::now();
                session.decoder.handle(&buf[..len], 0, &mut batch);
                metrics::gauge!("poolflow_collector_sessions_active", "transport" => "udp")
                    .set(sessions.len() as f64);
                if batch.len() < RECEIVER_BATCH_RECORDS && batch.events.is_empty() {
                    continue;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => warn!("UDP receive failed: {e}"),
        }
        if !batch.is_empty() && tx.blocking_send(std::mem::take(&mut batch)).is_err() {
            return; // writer gone: shutting down
        }
        if stop.load(Ordering::Acquire) {
            return;
        }
        if last_sweep.elapsed().as_secs() >= 10 {
            last_sweep = Instant::now();
            let idle = settings.idle_timeout_secs;
            sessions.retain(|peer, s| {
                let keep = s.last_seen.elapsed().as_secs() < idle;
                if !keep {
                    info!(%peer, "UDP transport session idle, dropped");
                }
                keep
            });
            let now_secs = (crate::ingest::now_ms() / 1000) as u64;
            for s in sessions.values_mut() {
                s.decoder.session_mut().expire_templates(now_secs);
            }
        }
    }
}

fn evict_idlest(sessions: &mut HashMap<SocketAddr, UdpSession>) {
    if let Some(peer) = sessions
        .iter()
        .min_by_key(|(_, s)| s.last_seen)
        .map(|(p, _)| *p)
    {
        warn!(%peer, "UDP session limit reached, dropping the idlest session");
        sessions.remove(&peer);
    }
}

/// Settings of the TCP listener.
#[derive(Debug, Clone)]
pub struct TcpSettings {
    pub session: SessionConfig,
    pub max_sessions: usize,
}

/// Accepts IPFIX-over-TCP connections (RFC 7011 section 10.4) until
/// `shutdown` turns true; then every connection flushes what it decoded and
/// this returns once they all have.
pub async fn serve_tcp(
    listener: TcpListener,
    settings: TcpSettings,
    tx: mpsc::Sender<Batch>,
    mut shutdown: watch::Receiver<bool>,
) {
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
                warn!("TCP accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            warn!(%peer, limit = settings.max_sessions, "TCP session limit reached, refusing");
            drop(stream);
            continue;
        };
        let tx = tx.clone();
        let config = settings.session.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let gauge = metrics::gauge!("poolflow_collector_sessions_active", "transport" => "tcp");
            gauge.increment(1.0);
            info!(%peer, "TCP transport session opened");
            let reason = tcp_session(stream, peer, config, tx, shutdown).await;
            info!(%peer, "TCP transport session closed: {reason}");
            gauge.decrement(1.0);
            drop(permit);
        });
    }
    while connections.join_next().await.is_some() {}
}

async fn tcp_session(
    stream: TcpStream,
    peer: SocketAddr,
    config: SessionConfig,
    tx: mpsc::Sender<Batch>,
    mut shutdown: watch::Receiver<bool>,
) -> String {
    debug_assert_eq!(config.transport, TransportKind::Tcp);
    let mut reader = BufReader::with_capacity(256 * 1024, stream);
    let mut decoder = SessionDecoder::new(peer.to_string(), config);
    let mut buf = vec![0u8; 65_536];
    let mut batch = Batch::default();
    loop {
        // A message is self-delimiting: its header carries its length.
        let header = tokio::select! {
            read = reader.read_exact(&mut buf[..4]) => read,
            _ = stopped(&mut shutdown) => {
                let _ = flush(&tx, &mut batch).await;
                return "collector shutting down".into();
            }
        };
        if let Err(e) = header {
            let _ = flush(&tx, &mut batch).await;
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
                let _ = flush(&tx, &mut batch).await;
                return format!("unrecoverable framing error: {err}");
            }
            None => unreachable!("four bytes were read"),
        };
        if let Err(e) = reader.read_exact(&mut buf[4..len]).await {
            let _ = flush(&tx, &mut batch).await;
            return format!("message truncated by connection end: {e}");
        }
        decoder.handle(&buf[..len], 0, &mut batch);
        // Flush when nothing more is buffered: the next read may wait, and
        // records must not sit in memory meanwhile.
        let drained = reader.buffer().is_empty();
        if (batch.len() >= RECEIVER_BATCH_RECORDS || drained)
            && flush(&tx, &mut batch).await.is_err()
        {
            return "collector shutting down".into();
        }
    }
}

async fn flush(tx: &mpsc::Sender<Batch>, batch: &mut Batch) -> Result<(), ()> {
    if batch.is_empty() {
        return Ok(());
    }
    tx.send(std::mem::take(batch)).await.map_err(|_| ())
}

/// Resolves once the shutdown flag is set (or its sender is gone). Keeps the
/// watch guard out of the caller's future so that future stays `Send`.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
