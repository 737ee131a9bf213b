//! Thin IO drivers around [`SessionDecoder`]: a UDP receive thread and TCP
//! connection tasks. All protocol decisions live in the sans-IO session.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use protocol::ipfix::message::peek_message_length;
use protocol::ipfix::{SessionConfig, TransportKind};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::batch::Batch;
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

/// Binds a UDP socket with a large receive buffer. With `force`,
/// SO_RCVBUFFORCE is tried too (past `net.core.rmem_max` when privileged).
pub fn bind_udp(addr: SocketAddr, receive_buffer_bytes: usize, force: bool) -> Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // SO_RCVBUF is capped at net.core.rmem_max; SO_RCVBUFFORCE passes the
    // cap when we run privileged and fails harmlessly otherwise.
    if socket.set_recv_buffer_size(receive_buffer_bytes).is_err() {
        warn!("could not set UDP receive buffer to {receive_buffer_bytes} bytes");
    }
    if force {
        force_receive_buffer(&socket, receive_buffer_bytes);
    }
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
    let mut receiver = DatagramReceiver::new();
    let mut batch = new_batch();
    // When the oldest record of `batch` arrived: a steady trickle must not
    // keep records waiting for a full batch.
    let mut batch_started: Option<Instant> = None;
    let mut last_sweep = Instant::now();
    loop {
        match receiver.receive(&socket) {
            Ok(count) => {
                // One clock read per receive call, not per datagram: they
                // arrived together.
                let now = Instant::now();
                if batch_started.is_none() {
                    batch_started = Some(now);
                }
                for i in 0..count {
                    let (datagram, peer) = receiver.datagram(i);
                    let Some(peer) = peer else { continue };
                    let session = match sessions.get_mut(&peer) {
                        Some(s) => s,
                        None => {
                            if sessions.len() >= settings.max_sessions {
                                evict_idlest(&mut sessions);
                            }
                            info!(%peer, "new UDP transport session");
                            metrics::gauge!("poolflow_collector_sessions_active", "transport" => "udp")
                                .set((sessions.len() + 1) as f64);
                            sessions.entry(peer).or_insert(UdpSession {
                                decoder: SessionDecoder::new(
                                    peer.to_string(),
                                    settings.session.clone(),
                                ),
                                last_seen: now,
                            })
                        }
                    };
                    session.last_seen = now;
                    session.decoder.handle(datagram, 0, now_ms(), &mut batch);
                }
                let young = batch_started.is_some_and(|t| t.elapsed() < UDP_FLUSH_INTERVAL);
                if batch.len() < RECEIVER_BATCH_RECORDS
                    && batch.events.is_empty()
                    && young
                    && !stop.load(Ordering::Acquire)
                {
                    continue;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => warn!("UDP receive failed: {e}"),
        }
        batch_started = None;
        if !batch.is_empty()
            && tx
                .blocking_send(std::mem::replace(&mut batch, new_batch()))
                .is_err()
        {
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
            metrics::gauge!("poolflow_collector_sessions_active", "transport" => "udp")
                .set(sessions.len() as f64);
            let now_secs = (now_ms() / 1000) as u64;
            for s in sessions.values_mut() {
                s.decoder.session_mut().expire_templates(now_secs);
            }
        }
    }
}

/// A batch sized for [`RECEIVER_BATCH_RECORDS`] typical flow records, so it
/// does not regrow while filling.
fn new_batch() -> Batch {
    Batch::with_capacity(RECEIVER_BATCH_RECORDS + 64, 48)
}

/// Datagrams received per system call.
#[cfg(target_os = "linux")]
const DATAGRAMS_PER_CALL: usize = 64;

/// Receives many datagrams per system call (recvmmsg): at ~30 records per
/// datagram the per-datagram system call was a visible share of the cost.
#[cfg(target_os = "linux")]
struct DatagramReceiver {
    buffers: Vec<u8>,
    lengths: [usize; DATAGRAMS_PER_CALL],
    addresses: Vec<libc::sockaddr_storage>,
}

#[cfg(target_os = "linux")]
impl DatagramReceiver {
    /// Largest IPFIX message (its length field is 16 bits).
    const MAX_DATAGRAM: usize = 65_536;

    fn new() -> Self {
        Self {
            buffers: vec![0u8; Self::MAX_DATAGRAM * DATAGRAMS_PER_CALL],
            lengths: [0; DATAGRAMS_PER_CALL],
            // SAFETY: sockaddr_storage is plain data; all zeroes is valid.
            addresses: vec![unsafe { std::mem::zeroed() }; DATAGRAMS_PER_CALL],
        }
    }

    /// Waits for at least one datagram (up to the socket's read timeout),
    /// then takes what else is queued. Returns how many were received.
    fn receive(&mut self, socket: &UdpSocket) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        let mut iovecs: [libc::iovec; DATAGRAMS_PER_CALL] = std::array::from_fn(|i| libc::iovec {
            iov_base: self.buffers[i * Self::MAX_DATAGRAM..].as_mut_ptr().cast(),
            iov_len: Self::MAX_DATAGRAM,
        });
        // SAFETY: mmsghdr is plain data; all zeroes is a valid value.
        let mut headers: [libc::mmsghdr; DATAGRAMS_PER_CALL] = unsafe { std::mem::zeroed() };
        for (i, h) in headers.iter_mut().enumerate() {
            h.msg_hdr.msg_iov = &mut iovecs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_name = (&mut self.addresses[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
        }
        // SAFETY: every header points at a live buffer and address of the
        // sizes given; they outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                DATAGRAMS_PER_CALL as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = n as usize;
        for (length, h) in self.lengths.iter_mut().zip(&headers[..n]) {
            *length = h.msg_len as usize;
        }
        Ok(n)
    }

    /// Datagram `i` of the last receive and its sender.
    fn datagram(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        let start = i * Self::MAX_DATAGRAM;
        let bytes = &self.buffers[start..start + self.lengths[i]];
        (bytes, socket_address(&self.addresses[i]))
    }
}

#[cfg(target_os = "linux")]
fn socket_address(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::from((
                u32::from_be(a.sin_addr.s_addr).to_be_bytes(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Portable fallback: one datagram per call.
#[cfg(not(target_os = "linux"))]
struct DatagramReceiver {
    buffer: Vec<u8>,
    last: (usize, Option<SocketAddr>),
}

#[cfg(not(target_os = "linux"))]
impl DatagramReceiver {
    fn new() -> Self {
        Self {
            buffer: vec![0u8; 65_536],
            last: (0, None),
        }
    }

    fn receive(&mut self, socket: &UdpSocket) -> std::io::Result<usize> {
        let (len, peer) = socket.recv_from(&mut self.buffer)?;
        self.last = (len, Some(peer));
        Ok(1)
    }

    fn datagram(&self, _i: usize) -> (&[u8], Option<SocketAddr>) {
        (&self.buffer[..self.last.0], self.last.1)
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
            let _ = flush(&tx, &mut batch).await;
            return "collector shutting down".into();
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
        decoder.handle(&buf[..len], 0, now_ms(), &mut batch);
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

/// Hands a non-empty batch to the writer; `Err` once the writer is gone.
async fn flush(tx: &mpsc::Sender<Batch>, batch: &mut Batch) -> Result<(), ()> {
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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn rmem_max() -> usize {
        std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// CAP_NET_ADMIN (bit 12) in the effective set: what SO_RCVBUFFORCE needs.
    fn has_net_admin() -> bool {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .is_some_and(|caps| caps & (1 << 12) != 0)
    }

    /// Without force the buffer is what plain SO_RCVBUF gives: at most the
    /// kernel's doubling of `net.core.rmem_max`, even when running as root
    /// (where SO_RCVBUFFORCE would pass the cap). The benchmark relies on
    /// this to treat every collector alike.
    #[test]
    fn unforced_buffer_stays_within_rmem_max() {
        let max = rmem_max();
        let asked = 4 * max;
        let socket = bind_udp("127.0.0.1:0".parse().unwrap(), asked, false).unwrap();
        let got = Socket::from(socket).recv_buffer_size().unwrap();
        assert!(got <= 2 * max, "got {got} bytes, rmem_max {max}");
        assert!(got > 0);
    }

    /// With force, a privileged process gets the whole buffer past the cap
    /// (the default behaviour); without CAP_NET_ADMIN, it gets the capped one.
    #[test]
    fn forced_buffer_passes_rmem_max_when_privileged() {
        let max = rmem_max();
        let asked = 4 * max;
        let socket = bind_udp("127.0.0.1:0".parse().unwrap(), asked, true).unwrap();
        let got = Socket::from(socket).recv_buffer_size().unwrap();
        if has_net_admin() {
            assert_eq!(got, 2 * asked, "rmem_max {max}");
        } else {
            assert!(got <= 2 * max, "got {got}, rmem_max {max}");
        }
    }
}
