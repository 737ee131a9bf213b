//! Messages over TCP with length-prefixed frames, all fields big-endian:
//!
//! ```text
//! +----------------+------------+------------+-----------+-------------------+
//! | length (u32)   | stream u16 | flags u16  | PPID u32  | payload (length)  |
//! +----------------+------------+------------+-----------+-------------------+
//! ```
//!
//! `length` counts payload bytes only; flag bit 0 is "unordered" (carried, but TCP delivers
//! everything in order anyway). [`crate::Reliability`] is accepted and ignored: TCP is always
//! fully reliable. Association events map to the connection: [`Event::Up`] on connect or
//! accept, [`DownReason::Shutdown`] on end of stream, [`DownReason::Aborted`] on reset,
//! [`FailureReason`] on other errors or a frame above `max_message_size`. A silent peer is
//! detected with TCP keep-alive and `TCP_USER_TIMEOUT` derived from the heartbeat settings.
//!
//! Plain TCP counts acknowledged messages as SCTP does ([`AckCounter`]): Linux's `TCP_INFO`
//! says how many bytes the peer's TCP has acknowledged, and the writer notes where each frame
//! ends in the byte stream. Under TLS the bytes on the wire are TLS records, not our frames,
//! so there is no count.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::tls::StreamTls;

use crate::{
    Association, AssociationSender, Config, DownReason, Event, FailureReason, Message, Reliability,
    SenderInner, TransportError,
};

/// Bytes of a frame header (see the module documentation).
pub const FRAME_HEADER_LEN: usize = 12;
/// Frame flag: the message was sent unordered.
pub const FLAG_UNORDERED: u16 = 0x0001;
/// Frames queued for the writer task per association.
const WRITE_QUEUE: usize = 1024;

/// Encodes one frame (header and payload) into `out`.
pub fn encode_frame(message: &Message, out: &mut BytesMut) {
    out.reserve(FRAME_HEADER_LEN + message.payload.len());
    out.put_u32(message.payload.len() as u32);
    out.put_u16(message.stream);
    out.put_u16(if message.unordered { FLAG_UNORDERED } else { 0 });
    out.put_u32(message.ppid);
    out.put_slice(&message.payload);
}

/// TLS handshakes in progress at one listener; a connection past this is
/// closed at once (counted), so handshake floods cannot exhaust memory.
const MAX_PENDING_HANDSHAKES: usize = 64;

type Handshake = Option<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>;

pub(crate) struct TcpEndpoint {
    config: Config,
    listener: TcpListener,
    /// With TLS: handshakes run as tasks, so a slow client does not hold up
    /// the others.
    handshakes: JoinSet<Handshake>,
}

impl TcpEndpoint {
    pub(crate) async fn bind(config: Config, local: SocketAddr) -> Result<Self, TransportError> {
        let listener = TcpListener::bind(local).await?;
        Ok(TcpEndpoint {
            config,
            listener,
            handshakes: JoinSet::new(),
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Cancel-safe: an accepted connection or finished handshake is never
    /// lost when the caller drops this future.
    pub(crate) async fn accept(&mut self) -> Option<Association> {
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some((stream, remote))) = done {
                        let (read_half, write_half) = tokio::io::split(stream);
                        match start(&self.config, read_half, write_half, remote, None) {
                            Ok(association) => return Some(association),
                            Err(error) => tracing::warn!("TLS association from {remote} failed: {error}"),
                        }
                    }
                    continue;
                }
            };
            let (stream, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!("TCP accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if let Err(error) = prepare(&stream, &self.config) {
                tracing::warn!("TCP association from {remote} failed: {error}");
                continue;
            }
            match &self.config.tls {
                Some(StreamTls::Server(acceptor)) => {
                    if self.handshakes.len() >= MAX_PENDING_HANDSHAKES {
                        crate::tls::count_handshake_failure(
                            remote,
                            "too_many_handshakes",
                            &format!("{MAX_PENDING_HANDSHAKES} handshakes already pending"),
                        );
                        continue;
                    }
                    let acceptor = acceptor.clone();
                    let timeout = self.config.connect_timeout;
                    self.handshakes.spawn(async move {
                        match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => {
                                let (_, session) = stream.get_ref();
                                tracing::info!(
                                    peer = %remote,
                                    version = ?session.protocol_version(),
                                    suite = ?session.negotiated_cipher_suite().map(|s| s.suite()),
                                    client_certificate = session.peer_certificates().is_some(),
                                    "TLS session established"
                                );
                                Some((stream, remote))
                            }
                            Ok(Err(error)) => {
                                let reason = crate::tls::handshake_failure_reason(&error);
                                crate::tls::count_handshake_failure(
                                    remote,
                                    reason,
                                    &error.to_string(),
                                );
                                None
                            }
                            Err(_) => {
                                crate::tls::count_handshake_failure(
                                    remote,
                                    "timeout",
                                    &format!("not finished in {timeout:?}"),
                                );
                                None
                            }
                        }
                    });
                }
                _ => {
                    let acks = AckCounter::new(&stream);
                    let (read_half, write_half) = stream.into_split();
                    match start(&self.config, read_half, write_half, remote, acks) {
                        Ok(association) => return Some(association),
                        Err(error) => {
                            tracing::warn!("TCP association from {remote} failed: {error}")
                        }
                    }
                }
            }
        }
    }

    pub(crate) async fn connect(&self, remote: SocketAddr) -> Result<Association, TransportError> {
        connect(&self.config, remote).await
    }
}

pub(crate) async fn connect(
    config: &Config,
    remote: SocketAddr,
) -> Result<Association, TransportError> {
    let deadline = tokio::time::Instant::now() + config.connect_timeout;
    let stream = tokio::time::timeout_at(deadline, TcpStream::connect(remote))
        .await
        .map_err(|_| TransportError::ConnectTimeout(config.connect_timeout))?
        .map_err(|e| TransportError::ConnectFailed(e.to_string()))?;
    prepare(&stream, config)?;
    match &config.tls {
        Some(StreamTls::Client {
            connector,
            server_name,
        }) => {
            let name = server_name
                .clone()
                .unwrap_or_else(|| rustls::pki_types::ServerName::IpAddress(remote.ip().into()));
            let stream = tokio::time::timeout_at(deadline, connector.connect(name, stream))
                .await
                .map_err(|_| TransportError::ConnectTimeout(config.connect_timeout))?
                .map_err(|e| {
                    TransportError::ConnectFailed(format!("TLS handshake with {remote}: {e}"))
                })?;
            let (read_half, write_half) = tokio::io::split(stream);
            start(config, read_half, write_half, remote, None)
        }
        _ => {
            let acks = AckCounter::new(&stream);
            let (read_half, write_half) = stream.into_split();
            start(config, read_half, write_half, remote, acks)
        }
    }
}

/// Socket options of every connection, set before TLS wraps it.
fn prepare(stream: &TcpStream, config: &Config) -> Result<(), TransportError> {
    stream.set_nodelay(true)?;
    set_keepalive(stream, config);
    Ok(())
}

/// Starts the reader and writer tasks of a connection (plain or TLS; `acks` for plain).
fn start<R, W>(
    config: &Config,
    read_half: R,
    write_half: W,
    remote: SocketAddr,
    acks: Option<Arc<AckCounter>>,
) -> Result<Association, TransportError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (events_tx, events) = mpsc::channel(config.receive_queue_len.max(1));
    let (frames_tx, frames_rx) = mpsc::channel(WRITE_QUEUE);
    let closing_locally = Arc::new(AtomicBool::new(false));
    events_tx
        .try_send(Event::Up)
        .expect("a new channel has room for one event");
    tokio::spawn(write_frames(write_half, frames_rx, acks.clone()));
    tokio::spawn(read_frames(
        read_half,
        frames_tx.downgrade(),
        events_tx,
        config.max_message_size,
        closing_locally.clone(),
    ));
    Ok(Association {
        remote,
        events,
        sender: AssociationSender {
            inner: SenderInner::Tcp(TcpSender {
                frames: frames_tx,
                closing_locally,
                max_message_size: config.max_message_size,
                acks,
            }),
        },
    })
}

enum WriterCommand {
    Frame(Message),
    Close,
}

#[derive(Clone)]
pub(crate) struct TcpSender {
    frames: mpsc::Sender<WriterCommand>,
    closing_locally: Arc<AtomicBool>,
    max_message_size: usize,
    acks: Option<Arc<AckCounter>>,
}

/// Messages of one plain TCP connection that the peer's TCP has acknowledged: the byte
/// offsets where written frames end, against `TCP_INFO`'s `tcpi_bytes_acked` (Linux 4.2
/// and later). The peer's TCP holding a message is what a SACK of SCTP DATA says too:
/// delivered to its host, not yet read by its application.
pub(crate) struct AckCounter {
    /// A duplicate of the connection's descriptor, only for `getsockopt`; dropped with the
    /// writer and the senders, so it never outlives the association's users.
    socket: std::net::TcpStream,
    /// `tcpi_bytes_acked` when the connection was set up: the SYN can count as one byte.
    base: u64,
    /// Where each written, not yet acknowledged message ends, in bytes from the start.
    ends: Mutex<VecDeque<u64>>,
    acknowledged: AtomicU64,
}

impl AckCounter {
    /// `None` where the kernel cannot tell (no `TCP_INFO`, or a descriptor we cannot
    /// duplicate): the connection then has no count, as under TLS.
    fn new(stream: &TcpStream) -> Option<Arc<Self>> {
        let socket = std::net::TcpStream::from(stream.as_fd().try_clone_to_owned().ok()?);
        let base = bytes_acked(&socket)?;
        Some(Arc::new(AckCounter {
            socket,
            base,
            ends: Mutex::new(VecDeque::new()),
            acknowledged: AtomicU64::new(0),
        }))
    }

    /// The writer queued a message ending `end` bytes into the stream.
    fn wrote(&self, end: u64) {
        self.ends.lock().expect("not poisoned").push_back(end);
    }

    /// Messages acknowledged so far, in sending order (the last count once the socket is
    /// gone: after the association ended it still tells how many the peer holds).
    fn acknowledged_messages(&self) -> u64 {
        let Some(acked) = bytes_acked(&self.socket) else {
            return self.acknowledged.load(Ordering::Acquire);
        };
        let acked = acked.saturating_sub(self.base);
        let mut ends = self.ends.lock().expect("not poisoned");
        let mut newly = 0;
        while ends.front().is_some_and(|&end| end <= acked) {
            ends.pop_front();
            newly += 1;
        }
        self.acknowledged.fetch_add(newly, Ordering::AcqRel) + newly
    }
}

/// `tcpi_bytes_acked` of a TCP socket.
fn bytes_acked(socket: &std::net::TcpStream) -> Option<u64> {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero tcp_info is valid (plain integers); getsockopt writes at most
    // `length` bytes into it and tells how many.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the descriptor is open for as long as `socket` lives; `info` and `length` are
    // valid for writes of the sizes given.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut length,
        )
    };
    // Kernels before 4.2 return a shorter struct without the field.
    let needed = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + 8;
    (result == 0 && length as usize >= needed).then_some(info.tcpi_bytes_acked)
}

impl TcpSender {
    pub(crate) async fn send(&self, message: Message) -> Result<(), TransportError> {
        if message.payload.len() > self.max_message_size {
            return Err(TransportError::MessageTooLarge {
                size: message.payload.len(),
                max: self.max_message_size,
            });
        }
        if self.closing_locally.load(Ordering::Acquire) {
            return Err(TransportError::Closed);
        }
        self.frames
            .send(WriterCommand::Frame(message))
            .await
            .map_err(|_| TransportError::Closed)
    }

    /// See [`AssociationSender::acknowledged_messages`]; `None` under TLS.
    pub(crate) fn acknowledged_messages(&self) -> Option<u64> {
        self.acks.as_ref().map(|acks| acks.acknowledged_messages())
    }

    pub(crate) fn close(&self) {
        if !self.closing_locally.swap(true, Ordering::AcqRel)
            && let Err(mpsc::error::TrySendError::Full(close)) =
                self.frames.try_send(WriterCommand::Close)
        {
            // The writer is busy: queue the close behind the frames from a task. Relying on
            // the channel closing when the last sender goes away hung while the application
            // kept its handle to read the peer's last messages (seen under load in
            // `tcp_close_delivers_everything_queued`). Outside a runtime (a drop at exit)
            // the channel closing is all there is.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let frames = self.frames.clone();
                runtime.spawn(async move {
                    let _ = frames.send(close).await;
                });
            }
        }
    }
}

async fn write_frames<W: AsyncWrite + Unpin>(
    write_half: W,
    mut commands: mpsc::Receiver<WriterCommand>,
    acks: Option<Arc<AckCounter>>,
) {
    let mut writer = BufWriter::with_capacity(64 * 1024, write_half);
    let mut frame = BytesMut::new();
    let mut written = 0u64;
    while let Some(command) = commands.recv().await {
        let message = match command {
            WriterCommand::Frame(message) => message,
            WriterCommand::Close => break,
        };
        frame.clear();
        encode_frame(&message, &mut frame);
        if writer.write_all(&frame).await.is_err() {
            return;
        }
        written += frame.len() as u64;
        if let Some(acks) = &acks {
            acks.wrote(written);
        }
        // Batch: flush only when nothing else is queued.
        if commands.is_empty() && writer.flush().await.is_err() {
            return;
        }
    }
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
}

async fn read_frames<R: AsyncRead + Unpin>(
    read_half: R,
    writer: mpsc::WeakSender<WriterCommand>,
    events: mpsc::Sender<Event>,
    max_message_size: usize,
    closing_locally: Arc<AtomicBool>,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, read_half);
    let last = loop {
        let mut header = [0u8; FRAME_HEADER_LEN];
        match reader.read_exact(&mut header).await {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                break Event::Down(DownReason::Shutdown);
            }
            Err(error) => break io_error_event(error),
        }
        let length = u32::from_be_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        if length > max_message_size {
            break Event::Failed(FailureReason::Error(format!(
                "peer sent a {length}-byte frame, limit {max_message_size}"
            )));
        }
        let mut payload = BytesMut::zeroed(length);
        if let Err(error) = reader.read_exact(&mut payload).await {
            break io_error_event(error);
        }
        let message = Message {
            stream: u16::from_be_bytes([header[4], header[5]]),
            unordered: u16::from_be_bytes([header[6], header[7]]) & FLAG_UNORDERED != 0,
            ppid: u32::from_be_bytes(header[8..12].try_into().expect("4 bytes")),
            reliability: Reliability::Reliable,
            payload: Bytes::from(payload),
        };
        if events.send(Event::Message(message)).await.is_err() {
            return;
        }
    };
    // Like SCTP's SHUTDOWN, an end of stream from the peer ends both directions.
    if let Some(writer) = writer.upgrade() {
        let _ = writer.try_send(WriterCommand::Close);
    }
    let last = if closing_locally.load(Ordering::Acquire) {
        Event::Down(DownReason::Local)
    } else {
        last
    };
    let _ = events.send(last).await;
}

fn io_error_event(error: std::io::Error) -> Event {
    match error.kind() {
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
            Event::Down(DownReason::Aborted)
        }
        std::io::ErrorKind::TimedOut => Event::Failed(FailureReason::PeerUnreachable),
        _ => Event::Failed(FailureReason::Error(error.to_string())),
    }
}

/// TCP's counterpart of SCTP path supervision: keep-alive probes after `heartbeat_interval`
/// idle, every `rto_max`, `max_path_retransmissions + 1` of them; and `TCP_USER_TIMEOUT` so
/// unacknowledged data also fails the connection within the same bound.
fn set_keepalive(stream: &TcpStream, config: &Config) {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    let seconds = |d: Duration| d.as_secs().clamp(1, i32::MAX as u64) as libc::c_int;
    let millis = |d: Duration| d.as_millis().clamp(1, u32::MAX as u128) as libc::c_uint;
    let set = |level: libc::c_int, option: libc::c_int, value: libc::c_int| {
        // SAFETY: valid fd owned by `stream`; the pointer and length describe a live c_int.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                option,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(
        libc::IPPROTO_TCP,
        libc::TCP_KEEPIDLE,
        seconds(config.heartbeat_interval),
    );
    set(
        libc::IPPROTO_TCP,
        libc::TCP_KEEPINTVL,
        seconds(config.rto_max),
    );
    set(
        libc::IPPROTO_TCP,
        libc::TCP_KEEPCNT,
        (config.max_path_retransmissions + 1) as libc::c_int,
    );
    set(
        libc::IPPROTO_TCP,
        libc::TCP_USER_TIMEOUT,
        millis(config.failure_detection_bound()) as libc::c_int,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_layout_is_as_documented() {
        let message = Message::new(3, 11, &b"abc"[..]).unordered();
        let mut frame = BytesMut::new();
        encode_frame(&message, &mut frame);
        assert_eq!(
            &frame[..],
            &[0, 0, 0, 3, 0, 3, 0, 1, 0, 0, 0, 11, b'a', b'b', b'c']
        );
    }
}
