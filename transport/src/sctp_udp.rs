//! SCTP over UDP (RFC 6951) driven by tokio: one task per UDP socket owns the sans-IO
//! `sctp-proto` endpoint and all its associations; application handles talk to it through
//! a command channel.
//!
//! Path supervision is ours (see `sctp_wire` for why): after `heartbeat_interval` without
//! hearing from the peer we send a HEARTBEAT and expect any packet from the peer within one
//! RTO (backed off, capped at `rto_max`). The error count (RFC 9260 section 8.1) is the
//! number of consecutive heartbeat misses, which any packet from the peer clears, plus
//! sctp-proto's count of consecutive DATA retransmission timeouts, which a SACK acknowledging
//! new DATA (or answering a probe of a closed window, section 6.1) clears: acknowledged DATA
//! proves the peer alive in the middle of a burst as a HEARTBEAT ACK would. When the count
//! exceeds `min(max_path_retransmissions, max_association_retransmissions)` we send ABORT and
//! report [`Event::Failed`].

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use sctp_proto::{
    AssociationError, AssociationHandle, ClientConfig, DatagramEvent, EndpointConfig,
    EndpointEvent, Payload, PayloadProtocolIdentifier, ReliabilityType, ServerConfig, StreamEvent,
    TransportConfig,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{debug, warn};

use crate::icmp_errors;
use crate::sctp_wire::{self, CommonHeader, InboundVerdict};
use crate::{
    Association, AssociationSender, Config, DownReason, Event, FailureReason, Message, Reliability,
    SenderInner, TransportError,
};

/// Largest UDP payload we accept; IP's limit, so nothing a peer sends is truncated.
const MAX_DATAGRAM: usize = 65535;
/// Datagrams or commands handled per wake-up before timers and output get their turn.
const BATCH: usize = 64;
/// How long the driver keeps running after the last handle is gone, so that graceful
/// shutdowns can finish.
const LINGER: Duration = Duration::from_secs(2);
/// Receive buffers per `recvmmsg`, each `MAX_DATAGRAM` long: with UDP GRO one buffer holds
/// up to 64 coalesced packets of one sender, without it one datagram.
const RECV_BUFFERS: usize = 8;
/// Most UDP payload bytes in one GSO send (one UDP datagram's limit, with IPv4 headers).
const MAX_GSO_BYTES: usize = 65_507;
const ACCEPT_QUEUE: usize = 1024;
const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

type AppId = u64;

enum Command {
    Connect {
        remote: SocketAddr,
        /// The peer's SCTP port, when it is not `Config::sctp_port`.
        remote_sctp_port: Option<u16>,
        reply: oneshot::Sender<Result<Association, TransportError>>,
    },
    Send {
        id: AppId,
        message: Message,
        charged: u32,
    },
    Close {
        id: AppId,
    },
    Abort {
        id: AppId,
    },
    ResumeReceive {
        id: AppId,
    },
}

/// State shared between an application handle and the driver.
struct Shared {
    id: AppId,
    /// Bytes the application may still queue; the driver returns them as the peer acks.
    send_budget: Semaphore,
    closed: AtomicBool,
    /// Set by the driver when the event queue was full; the next `recv` asks it to go on.
    receive_stalled: AtomicBool,
    /// Messages the peer has acknowledged in full (SACKed, or abandoned under PR-SCTP), in
    /// the order they were sent.
    acknowledged: AtomicU64,
}

#[derive(Clone)]
pub(crate) struct SctpSender {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    max_message_size: usize,
    send_buffer_bytes: usize,
}

impl SctpSender {
    pub(crate) async fn send(&self, message: Message) -> Result<(), TransportError> {
        let charged = crate::admit_message(
            &message,
            self.max_message_size,
            self.send_buffer_bytes,
            &self.shared.closed,
            &self.shared.send_budget,
        )
        .await?;
        self.commands
            .send(Command::Send {
                id: self.shared.id,
                message,
                charged,
            })
            .map_err(|_| TransportError::Closed)
    }

    pub(crate) fn close(&self) {
        let _ = self.commands.send(Command::Close { id: self.shared.id });
    }

    pub(crate) fn abort(&self) {
        let _ = self.commands.send(Command::Abort { id: self.shared.id });
    }

    pub(crate) fn acknowledged_messages(&self) -> u64 {
        self.shared.acknowledged.load(Ordering::Acquire)
    }

    pub(crate) fn after_receive(&self) {
        if self.shared.receive_stalled.swap(false, Ordering::AcqRel) {
            let _ = self
                .commands
                .send(Command::ResumeReceive { id: self.shared.id });
        }
    }
}

pub(crate) struct SctpUdpEndpoint {
    local_addr: SocketAddr,
    connect_timeout: Duration,
    commands: mpsc::UnboundedSender<Command>,
    accepted: mpsc::Receiver<Association>,
}

impl SctpUdpEndpoint {
    /// Binds the UDP socket and starts its driver task. Must run inside a tokio runtime.
    pub(crate) fn bind(
        config: Config,
        local: SocketAddr,
        accept_incoming: bool,
    ) -> Result<Self, TransportError> {
        let (socket, udp_state) = udp_socket(local, config.icmp_port_unreachable)?;
        let local_addr = socket.local_addr()?;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (accept_tx, accepted) = mpsc::channel(ACCEPT_QUEUE);
        let connect_timeout = config.connect_timeout;
        let driver = Driver::new(
            config,
            socket,
            udp_state,
            local_addr,
            commands.downgrade(),
            accept_incoming.then_some(accept_tx),
        );
        tokio::spawn(driver.run(command_rx));
        Ok(SctpUdpEndpoint {
            local_addr,
            connect_timeout,
            commands,
            accepted,
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that opens associations from this endpoint's socket while another task
    /// accepts.
    pub(crate) fn connector(&self) -> SctpUdpConnector {
        SctpUdpConnector {
            connect_timeout: self.connect_timeout,
            commands: self.commands.clone(),
        }
    }

    pub(crate) async fn accept(&mut self) -> Option<Association> {
        self.accepted.recv().await
    }

    pub(crate) async fn connect(
        &self,
        remote: SocketAddr,
        remote_sctp_port: Option<u16>,
    ) -> Result<Association, TransportError> {
        connect_with(
            &self.commands,
            self.connect_timeout,
            remote,
            remote_sctp_port,
        )
        .await
    }
}

#[derive(Clone)]
pub(crate) struct SctpUdpConnector {
    connect_timeout: Duration,
    commands: mpsc::UnboundedSender<Command>,
}

impl SctpUdpConnector {
    pub(crate) async fn connect(
        &self,
        remote: SocketAddr,
        remote_sctp_port: Option<u16>,
    ) -> Result<Association, TransportError> {
        connect_with(
            &self.commands,
            self.connect_timeout,
            remote,
            remote_sctp_port,
        )
        .await
    }
}

async fn connect_with(
    commands: &mpsc::UnboundedSender<Command>,
    connect_timeout: Duration,
    remote: SocketAddr,
    remote_sctp_port: Option<u16>,
) -> Result<Association, TransportError> {
    let (reply, reply_rx) = oneshot::channel();
    commands
        .send(Command::Connect {
            remote,
            remote_sctp_port,
            reply,
        })
        .map_err(|_| TransportError::Closed)?;
    // The driver enforces the deadline itself; this only guards against a lost reply.
    match tokio::time::timeout(connect_timeout * 2, reply_rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(TransportError::Closed),
        Err(_) => Err(TransportError::ConnectTimeout(connect_timeout)),
    }
}

/// The socket and its batched I/O state: `quinn-udp` sends runs of equal-size packets to one
/// peer with one `sendmsg` (UDP GSO, `UDP_SEGMENT`) and reads with `recvmmsg` (and UDP GRO
/// where the kernel has it). On the wire these are ordinary UDP datagrams, one SCTP packet
/// each (RFC 6951); only the number of system calls changes.
fn udp_socket(
    local: SocketAddr,
    icmp_errors: bool,
) -> Result<(UdpSocket, UdpSocketState), TransportError> {
    let socket = std::net::UdpSocket::bind(local)?;
    socket.set_nonblocking(true)?;
    if icmp_errors {
        icmp_errors::enable(&socket)?;
    }
    // Bursts of SCTP packets outrun the default 208 KiB buffers at benchmark rates; the
    // kernel caps the request at net.core.[rw]mem_max, which is fine.
    set_socket_buffer(&socket, libc::SO_RCVBUF);
    set_socket_buffer(&socket, libc::SO_SNDBUF);
    // quinn-udp forbids IP fragmentation (QUIC does its own path MTU discovery). We send
    // `max_sctp_packet_size` packets and used to let the kernel fragment them where the path
    // needs it: keep that as it was.
    let pmtu_options = [
        (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
        (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER),
        (libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG),
    ];
    let saved: Vec<_> = pmtu_options
        .iter()
        .map(|&(level, name)| get_int_option(&socket, level, name))
        .collect();
    let udp_state = UdpSocketState::new((&socket).into())?;
    for (&(level, name), value) in pmtu_options.iter().zip(saved) {
        if let Some(value) = value {
            set_int_option(&socket, level, name, value);
        }
    }
    Ok((UdpSocket::from_std(socket)?, udp_state))
}

/// An integer socket option, `None` where the socket does not have it (IPv6 options on an
/// IPv4 socket).
fn get_int_option(
    socket: &std::net::UdpSocket,
    level: libc::c_int,
    name: libc::c_int,
) -> Option<libc::c_int> {
    use std::os::fd::AsRawFd;
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd owned by `socket`, pointers describe a live c_int and its length.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(value)
}

fn set_int_option(
    socket: &std::net::UdpSocket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) {
    use std::os::fd::AsRawFd;
    // SAFETY: valid fd owned by `socket`, pointer and length describe a live c_int.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        debug!(
            "setsockopt({level}, {name}) failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn set_socket_buffer(socket: &std::net::UdpSocket, option: libc::c_int) {
    use std::os::fd::AsRawFd;
    let size = SOCKET_BUFFER_BYTES as libc::c_int;
    // SAFETY: valid fd owned by `socket`, pointer and length describe a live c_int.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        debug!(
            "setsockopt buffer size failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

enum Phase {
    /// Handshake running; `reply` is the pending `connect` (client side only).
    Handshaking {
        reply: Option<oneshot::Sender<Result<Association, TransportError>>>,
        deadline: Instant,
    },
    Up,
}

struct Liveness {
    next_heartbeat: Instant,
    outstanding: Option<OutstandingHeartbeat>,
    /// Consecutive unanswered heartbeats.
    heartbeat_misses: u32,
    /// RFC 9260 section 6.3.1 estimator fed by HEARTBEAT round trips: sctp-proto measures
    /// RTT only from DATA, so an idle association would otherwise keep RTO.Initial forever.
    smoothed_rtt: Option<(Duration, Duration)>,
}

#[derive(Clone, Copy)]
struct OutstandingHeartbeat {
    nonce: u64,
    sent_at: Instant,
    due: Instant,
}

struct Entry {
    proto: sctp_proto::Association,
    shared: Arc<Shared>,
    remote: SocketAddr,
    events: mpsc::Sender<Event>,
    outbox: VecDeque<Event>,
    /// The application handle, held until the association is up.
    handle: Option<Association>,
    phase: Phase,
    wire: Option<CommonHeader>,
    readable: BTreeSet<u16>,
    send_streams: BTreeSet<u16>,
    /// Payload bytes handed to sctp-proto so far, and the charges to refund once the
    /// cumulative acknowledged amount reaches each message's end.
    written_total: u64,
    charges: VecDeque<(u64, u32)>,
    liveness: Liveness,
    closing_locally: bool,
    /// We ended it with an ABORT (closed before it was established).
    aborted_locally: bool,
    /// Messages sctp-proto refused (e.g. after the peer's SHUTDOWN, RFC 9260
    /// 9.2: no new data): the first is logged at warn, the rest at debug and
    /// summed up when the association ends, so a sender that keeps going
    /// cannot flood the log.
    refused_sends: u64,
}

/// The last events of a finished association, kept until the application takes them.
struct DrainingOutbox {
    events: mpsc::Sender<Event>,
    outbox: VecDeque<Event>,
    shared: Arc<Shared>,
}

struct Driver {
    config: Config,
    socket: UdpSocket,
    udp_state: UdpSocketState,
    /// Where runs of packets are put together for one GSO send.
    gso_buffer: Vec<u8>,
    local_addr: SocketAddr,
    endpoint: sctp_proto::Endpoint,
    weak_commands: mpsc::WeakUnboundedSender<Command>,
    accept_tx: Option<mpsc::Sender<Association>>,
    entries: HashMap<AssociationHandle, Entry>,
    routes: HashMap<AppId, AssociationHandle>,
    /// Finished associations whose last events the application has not taken yet.
    draining_outboxes: HashMap<AppId, DrainingOutbox>,
    dirty: BTreeSet<AssociationHandle>,
    outgoing: Vec<(Bytes, SocketAddr)>,
    next_app_id: AppId,
    /// Replies to out-of-the-blue packets in the current second, and when it began: at
    /// most [`OUT_OF_THE_BLUE_REPLIES_PER_SECOND`], so a flood of stray packets cannot
    /// turn us into a reflector.
    out_of_the_blue_replies: (Instant, u32),
}

/// Bound on ABORTs (and SHUTDOWN COMPLETEs) sent per second in answer to out-of-the-blue
/// packets (RFC 9260 section 8.4 asks for such a limit).
const OUT_OF_THE_BLUE_REPLIES_PER_SECOND: u32 = 100;

impl Driver {
    fn new(
        config: Config,
        socket: UdpSocket,
        udp_state: UdpSocketState,
        local_addr: SocketAddr,
        weak_commands: mpsc::WeakUnboundedSender<Command>,
        accept_tx: Option<mpsc::Sender<Association>>,
    ) -> Self {
        let mut endpoint_config = EndpointConfig::new();
        // sctp-proto derives its packet size from this: DATA payload per packet, i.e. the
        // packet size less the common header (12) and the DATA chunk header (16).
        let packet_size = config.max_sctp_packet_size.clamp(512, MAX_DATAGRAM) as u32;
        endpoint_config.max_payload_size(packet_size - 28);
        let server_config = accept_tx.as_ref().map(|_| {
            let mut server = ServerConfig::new();
            server.transport = Arc::new(transport_config(&config, 0, 0));
            Arc::new(server)
        });
        let endpoint = sctp_proto::Endpoint::new(Arc::new(endpoint_config), server_config);
        Driver {
            config,
            socket,
            udp_state,
            gso_buffer: Vec::new(),
            local_addr,
            endpoint,
            weak_commands,
            accept_tx,
            entries: HashMap::new(),
            routes: HashMap::new(),
            draining_outboxes: HashMap::new(),
            dirty: BTreeSet::new(),
            outgoing: Vec::new(),
            next_app_id: 1,
            out_of_the_blue_replies: (Instant::now(), 0),
        }
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut buffers = ReceiveBuffers::new();
        let mut commands_open = true;
        let mut linger_until: Option<Instant> = None;
        loop {
            if !commands_open {
                let until = *linger_until.get_or_insert_with(|| Instant::now() + LINGER);
                if self.entries.is_empty() || Instant::now() >= until {
                    break;
                }
            }
            let deadline = self.next_deadline();
            let sleep_until =
                deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                ready = self.socket.ready(Interest::READABLE | Interest::ERROR) => match ready {
                    Ok(ready) => {
                        if ready.is_error() {
                            self.drain_icmp_errors();
                        }
                        self.drain_socket(&mut buffers);
                    }
                    Err(error) => debug!("UDP receive error: {error}"),
                },
                command = commands.recv(), if commands_open => match command {
                    Some(command) => {
                        self.on_command(command);
                        for _ in 1..BATCH {
                            match commands.try_recv() {
                                Ok(command) => self.on_command(command),
                                Err(_) => break,
                            }
                        }
                    }
                    None => commands_open = false,
                },
                _ = tokio::time::sleep_until(sleep_until.into()) => {}
            }
            // `select!` picks among ready branches at random: after a late wake-up (a loaded
            // machine) the timer branch can win while the peer's SACKs already wait in the
            // socket. Read them before judging timers, or a T3-rtx expires, and counts as an
            // error, against a peer that has in fact answered.
            self.drain_socket(&mut buffers);
            self.on_timers(Instant::now());
            self.process_dirty();
            self.send_outgoing().await;
        }
        debug!("SCTP/UDP driver on {} stopped", self.local_addr);
    }

    /// Handles about one batch of datagrams that are already waiting, without blocking.
    fn drain_socket(&mut self, buffers: &mut ReceiveBuffers) {
        let mut handled = 0;
        while handled < BATCH {
            let ReceiveBuffers { data, meta } = buffers;
            let mut slices: [IoSliceMut<'_>; RECV_BUFFERS] = data
                .each_mut()
                .map(|buffer| IoSliceMut::new(&mut buffer[..]));
            let received = self.socket.try_io(Interest::READABLE, || {
                self.udp_state
                    .recv((&self.socket).into(), &mut slices, meta)
            });
            let count = match received {
                Ok(count) => count,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                // ICMP port unreachable surfaces here on Linux; path supervision
                // decides about the peer, so just go on.
                Err(error) => {
                    debug!("UDP receive error: {error}");
                    break;
                }
            };
            for (buffer, meta) in data.iter().zip(meta.iter()).take(count) {
                // With GRO, `len` bytes are packets of `stride` bytes (the last may be
                // shorter), each one UDP datagram as sent.
                let stride = if meta.stride == 0 {
                    meta.len
                } else {
                    meta.stride
                };
                for datagram in buffer[..meta.len].chunks(stride.max(1)) {
                    self.on_datagram(datagram, meta.addr);
                    handled += 1;
                }
            }
            if count == 0 {
                break;
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut deadline: Option<Instant> = None;
        let mut consider = |candidate: Option<Instant>| {
            if let Some(candidate) = candidate {
                deadline = Some(deadline.map_or(candidate, |d| d.min(candidate)));
            }
        };
        for entry in self.entries.values() {
            consider(entry.proto.poll_timeout());
            match &entry.phase {
                Phase::Handshaking { deadline, .. } => consider(Some(*deadline)),
                Phase::Up if entry.wire.is_some() => consider(Some(
                    entry
                        .liveness
                        .outstanding
                        .map_or(entry.liveness.next_heartbeat, |hb| hb.due),
                )),
                Phase::Up => {}
            }
        }
        deadline
    }

    fn on_datagram(&mut self, datagram: &[u8], remote: SocketAddr) {
        let filtered = sctp_wire::filter_inbound(datagram);
        for nonce in filtered.heartbeat_acks {
            self.on_heartbeat_ack(nonce);
        }
        let packet = match filtered.verdict {
            InboundVerdict::PassUnchanged => Bytes::copy_from_slice(datagram),
            InboundVerdict::PassRewritten(rewritten) => Bytes::from(rewritten),
            InboundVerdict::Consumed => return,
        };
        let now = Instant::now();
        match self.endpoint.handle(now, remote, None, None, packet) {
            Some((handle, DatagramEvent::AssociationEvent(event))) => {
                if let Some(entry) = self.entries.get_mut(&handle) {
                    entry.proto.handle_event(event);
                    entry.heard_from_peer(now, &self.config);
                    entry.learn_encapsulation_port(datagram, remote);
                    self.dirty.insert(handle);
                }
            }
            Some((handle, DatagramEvent::NewAssociation(proto))) => {
                let deadline = now + self.config.connect_timeout;
                self.insert_entry(handle, proto, remote, None, deadline);
                self.dirty.insert(handle);
            }
            None => self.on_out_of_the_blue(datagram, remote, now),
        }
    }

    /// A packet no association claims (RFC 9260 section 8.4). Its sender holds an
    /// association we do not have, typically with our previous incarnation: an ABORT with
    /// the T bit ends it at once, where its timers would take up to minutes (a restarted
    /// registrar's peers and pool elements kept writing into the void for ~45 s). And a
    /// reflected ABORT from a peer that lost its side ends ours the same way.
    fn on_out_of_the_blue(&mut self, datagram: &[u8], remote: SocketAddr, now: Instant) {
        match sctp_wire::out_of_the_blue(datagram) {
            sctp_wire::OutOfTheBlue::Reply(reply) => {
                let (since, sent) = &mut self.out_of_the_blue_replies;
                if now.duration_since(*since) >= Duration::from_secs(1) {
                    *since = now;
                    *sent = 0;
                }
                if *sent < OUT_OF_THE_BLUE_REPLIES_PER_SECOND {
                    *sent += 1;
                    debug!("out-of-the-blue packet from {remote}: answered with ABORT");
                    self.outgoing.push((Bytes::from(reply), remote));
                }
            }
            sctp_wire::OutOfTheBlue::ReflectedAbort(header) => {
                let ours = self.entries.iter().find_map(|(&handle, entry)| {
                    let wire = entry.wire?;
                    (entry.remote == remote
                        && wire.verification_tag == header.verification_tag
                        && header.source_port == wire.destination_port
                        && header.destination_port == wire.source_port)
                        .then_some(handle)
                });
                if let Some(handle) = ours {
                    debug!("peer {remote} has no association with us (reflected ABORT)");
                    self.finish(handle, Event::Down(DownReason::Aborted));
                }
            }
            sctp_wire::OutOfTheBlue::Discard => {}
        }
    }

    /// Reads the ICMP errors queued for the socket (see [`icmp_errors`]); a port
    /// unreachable about a packet of one of our associations, with its verification tag,
    /// ends that association: nothing listens at the peer's port any more.
    fn drain_icmp_errors(&mut self) {
        for _ in 0..BATCH {
            let received = self
                .socket
                .try_io(Interest::ERROR, || icmp_errors::receive(&self.socket));
            match received {
                Ok(error) => self.on_icmp_error(error),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(error) => {
                    debug!("reading the socket's error queue: {error}");
                    return;
                }
            }
        }
    }

    fn on_icmp_error(&mut self, error: icmp_errors::QueuedIcmpError) {
        if !error.port_unreachable {
            // Host or network unreachable can be a passing routing state; the timers judge.
            return;
        }
        let Some(header) = sctp_wire::parse_common_header(&error.packet) else {
            return;
        };
        let ours = self.entries.iter().find_map(|(&handle, entry)| {
            let wire = entry.wire?;
            (entry.remote == error.destination && wire == header).then_some(handle)
        });
        // Not one of ours, or not with the tag we send: RFC 6951 section 5.5 says discard
        // it silently.
        if let Some(handle) = ours {
            debug!(
                "ICMP port unreachable from {} (verification tag checked): the peer's port \
                 is closed",
                error.destination
            );
            self.finish(handle, Event::Failed(FailureReason::PortUnreachable));
        }
    }

    fn on_heartbeat_ack(&mut self, nonce: u64) {
        let now = Instant::now();
        for entry in self.entries.values_mut() {
            if let Some(heartbeat) = entry.liveness.outstanding
                && heartbeat.nonce == nonce
            {
                entry.liveness.measure_rtt(now - heartbeat.sent_at);
                entry.heard_from_peer(now, &self.config);
                return;
            }
        }
    }

    fn insert_entry(
        &mut self,
        handle: AssociationHandle,
        proto: sctp_proto::Association,
        remote: SocketAddr,
        reply: Option<oneshot::Sender<Result<Association, TransportError>>>,
        deadline: Instant,
    ) {
        let Some(commands) = self.weak_commands.upgrade() else {
            return;
        };
        let id = self.next_app_id;
        self.next_app_id += 1;
        let shared = Arc::new(Shared {
            id,
            send_budget: Semaphore::new(self.config.send_buffer_bytes),
            closed: AtomicBool::new(false),
            receive_stalled: AtomicBool::new(false),
            acknowledged: AtomicU64::new(0),
        });
        let (events_tx, events_rx) = mpsc::channel(self.config.receive_queue_len.max(1));
        let app_handle = Association {
            remote,
            events: events_rx,
            sender: AssociationSender {
                inner: SenderInner::SctpOverUdp(SctpSender {
                    shared: shared.clone(),
                    commands,
                    max_message_size: self.config.max_message_size,
                    send_buffer_bytes: self.config.send_buffer_bytes,
                }),
            },
        };
        let now = Instant::now();
        self.routes.insert(id, handle);
        self.entries.insert(
            handle,
            Entry {
                proto,
                shared,
                remote,
                events: events_tx,
                outbox: VecDeque::new(),
                handle: Some(app_handle),
                phase: Phase::Handshaking { reply, deadline },
                wire: None,
                readable: BTreeSet::new(),
                send_streams: BTreeSet::new(),
                written_total: 0,
                charges: VecDeque::new(),
                liveness: Liveness {
                    next_heartbeat: now + self.config.heartbeat_interval,
                    outstanding: None,
                    heartbeat_misses: 0,
                    smoothed_rtt: None,
                },
                closing_locally: false,
                aborted_locally: false,
                refused_sends: 0,
            },
        );
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Connect {
                remote,
                remote_sctp_port,
                reply,
            } => self.connect(remote, remote_sctp_port, reply),
            Command::Send {
                id,
                message,
                charged,
            } => {
                let Some(&handle) = self.routes.get(&id) else {
                    return;
                };
                let Some(entry) = self.entries.get_mut(&handle) else {
                    return;
                };
                if let Err(error) = entry.write(message, charged) {
                    entry.refused_sends += 1;
                    if entry.refused_sends == 1 {
                        warn!(
                            "SCTP send on association {id} failed: {error} (further refusals \
                             on this association are logged at debug)"
                        );
                    } else {
                        debug!("SCTP send on association {id} failed: {error}");
                    }
                    entry.shared.send_budget.add_permits(charged as usize);
                }
                self.dirty.insert(handle);
            }
            Command::Close { id } => {
                let Some(&handle) = self.routes.get(&id) else {
                    return;
                };
                if let Some(entry) = self.entries.get_mut(&handle) {
                    // `close()` and dropping the handle both send Close. A second Close used
                    // to find the association past ESTABLISHED, so `shutdown()` failed and the
                    // fallback `close()` discarded it before the SHUTDOWN went out: the peer
                    // heard nothing and only path supervision (30 s and more on RFC timers)
                    // ended its side. Once a graceful shutdown runs, whoever started it, it
                    // needs no help.
                    if entry.closing_locally || entry.proto.is_closing() {
                        entry.closing_locally = true;
                        return;
                    }
                    entry.closing_locally = true;
                    if entry.proto.shutdown().is_err() {
                        // Not established and not shutting down: nothing graceful is
                        // possible; tell the peer instead of vanishing silently.
                        if let Some(wire) = entry.wire {
                            self.outgoing
                                .push((Bytes::from(sctp_wire::abort_packet(&wire)), entry.remote));
                        }
                        entry.aborted_locally = true;
                        let _ = entry.proto.close();
                    }
                    self.dirty.insert(handle);
                }
            }
            Command::Abort { id } => {
                let Some(&handle) = self.routes.get(&id) else {
                    return;
                };
                if let Some(entry) = self.entries.get_mut(&handle) {
                    // RFC 9260 section 9.1: the peer learns at once that the association
                    // is gone; nothing queued is delivered. Without a verification tag
                    // yet (no handshake answer) there is nobody to tell.
                    if let Some(wire) = entry.wire {
                        self.outgoing
                            .push((Bytes::from(sctp_wire::abort_packet(&wire)), entry.remote));
                    }
                    entry.aborted_locally = true;
                    self.finish(handle, Event::Down(DownReason::Local));
                }
            }
            Command::ResumeReceive { id } => {
                if let Some(&handle) = self.routes.get(&id) {
                    self.dirty.insert(handle);
                } else if let Some(mut draining) = self.draining_outboxes.remove(&id) {
                    if flush_outbox(&draining.events, &mut draining.outbox, &draining.shared) {
                        self.draining_outboxes.insert(id, draining);
                    }
                }
            }
        }
    }

    fn connect(
        &mut self,
        remote: SocketAddr,
        remote_sctp_port: Option<u16>,
        reply: oneshot::Sender<Result<Association, TransportError>>,
    ) {
        if self.entries.values().any(|entry| entry.remote == remote) {
            let _ = reply.send(Err(TransportError::ConnectFailed(format!(
                "this endpoint already has an association with {remote}"
            ))));
            return;
        }
        // Our SCTP source port is our UDP port: a listening endpoint's outbound associations
        // carry the port it listens (and is advertised) on.
        let transport = transport_config(
            &self.config,
            self.local_addr.port(),
            remote_sctp_port.unwrap_or(self.config.sctp_port),
        );
        let mut client = ClientConfig::new();
        client.transport = Arc::new(transport);
        match self.endpoint.connect(client, remote) {
            Ok((handle, proto)) => {
                let deadline = Instant::now() + self.config.connect_timeout;
                self.insert_entry(handle, proto, remote, Some(reply), deadline);
                self.dirty.insert(handle);
            }
            Err(error) => {
                let _ = reply.send(Err(TransportError::ConnectFailed(error.to_string())));
            }
        }
    }

    fn on_timers(&mut self, now: Instant) {
        let mut failed = Vec::new();
        for (&handle, entry) in self.entries.iter_mut() {
            if entry.proto.poll_timeout().is_some_and(|due| due <= now) {
                entry.proto.handle_timeout(now);
                self.dirty.insert(handle);
            }
            match &entry.phase {
                Phase::Handshaking { deadline, .. } if *deadline <= now => {
                    failed.push((handle, FailureReason::HandshakeFailed("timed out".into())));
                    continue;
                }
                Phase::Handshaking { .. } => continue,
                Phase::Up => {}
            }
            let Some(wire) = entry.wire else { continue };
            if entry.supervise(now, &self.config) {
                failed.push((handle, FailureReason::PeerUnreachable));
                self.outgoing
                    .push((Bytes::from(sctp_wire::abort_packet(&wire)), entry.remote));
                continue;
            }
            if let Some(nonce) = entry.take_heartbeat_to_send(&self.config) {
                self.outgoing.push((
                    Bytes::from(sctp_wire::heartbeat_packet(&wire, nonce)),
                    entry.remote,
                ));
            }
        }
        for (handle, reason) in failed {
            self.finish(handle, Event::Failed(reason));
        }
    }

    /// Runs sctp-proto's outputs for every association touched since the last call.
    fn process_dirty(&mut self) {
        let now = Instant::now();
        while let Some(handle) = self.dirty.pop_first() {
            let Some(entry) = self.entries.get_mut(&handle) else {
                continue;
            };
            let mut ended: Option<Event> = None;
            let mut became_up = false;
            // Transmitting can change state (SHUTDOWN COMPLETE closes), so alternate until
            // neither side has anything left.
            loop {
                let mut progressed = false;
                while let Some(event) = entry.proto.poll() {
                    progressed = true;
                    match event {
                        sctp_proto::Event::Connected => became_up = true,
                        sctp_proto::Event::Stream(
                            StreamEvent::Readable { id } | StreamEvent::Opened { id },
                        ) => {
                            entry.readable.insert(id);
                        }
                        sctp_proto::Event::AssociationLost { reason } => {
                            ended = Some(entry.loss_event(reason));
                        }
                        sctp_proto::Event::HandshakeFailed { reason } => {
                            ended = Some(Event::Failed(FailureReason::HandshakeFailed(
                                reason.to_string(),
                            )));
                        }
                        _ => {}
                    }
                }
                while entry.proto.accept_stream().is_some() {}
                // We remove associations from the sctp-proto endpoint ourselves (see
                // `finish`): its `shutdown()` asks for removal at once, which would strand
                // the peer's SHUTDOWN ACK.
                while entry.proto.poll_endpoint_event().is_some() {}
                while let Some(transmit) = entry.proto.poll_transmit(now) {
                    progressed = true;
                    if let Payload::RawEncode(datagrams) = transmit.payload {
                        for datagram in datagrams {
                            if sctp_wire::carries_peer_tag(&datagram) {
                                entry.wire = sctp_wire::parse_common_header(&datagram);
                            }
                            // To the peer's encapsulation port as last learnt
                            // (sctp-proto keeps the first one).
                            self.outgoing.push((datagram, entry.remote));
                        }
                    }
                }
                if !progressed {
                    break;
                }
            }
            entry.refund_acknowledged();
            if became_up {
                self.on_up(handle);
            }
            if let Some(event) = ended {
                self.finish(handle, event);
                continue;
            }
            if let Some(entry) = self.entries.get_mut(&handle) {
                entry.deliver_readable();
            }
        }
    }

    fn on_up(&mut self, handle: AssociationHandle) {
        let Some(entry) = self.entries.get_mut(&handle) else {
            return;
        };
        let Phase::Handshaking { reply, .. } = std::mem::replace(&mut entry.phase, Phase::Up)
        else {
            return;
        };
        entry.liveness.next_heartbeat = Instant::now() + self.config.heartbeat_interval;
        let app_handle = entry.handle.take();
        let remote = entry.remote;
        let peer_port = entry.wire.map(|w| w.destination_port);
        entry.deliver(Event::Up);
        let Some(app_handle) = app_handle else { return };
        if let Some(reply) = reply {
            if let Err(Ok(unwanted)) = reply.send(Ok(app_handle)) {
                // The caller gave up waiting: dropping the handle shuts the association down.
                drop(unwanted);
            }
            return;
        }
        // Server side. A new association from the transport address of an existing one is
        // that peer restarted (RFC 9260 section 5.2.4.1): keep the application's handle.
        let restarted_from = self.entries.iter().find_map(|(&other, e)| {
            (other != handle
                && matches!(e.phase, Phase::Up)
                && e.remote == remote
                && e.wire.map(|w| w.destination_port) == peer_port)
                .then_some(other)
        });
        if let Some(old_handle) = restarted_from {
            self.adopt_restart(old_handle, handle);
            return;
        }
        let rejected = match &self.accept_tx {
            Some(accept_tx) => accept_tx.try_send(app_handle).err().map(|e| match e {
                mpsc::error::TrySendError::Full(h) | mpsc::error::TrySendError::Closed(h) => h,
            }),
            None => Some(app_handle),
        };
        if let Some(rejected) = rejected {
            warn!(
                "dropping association from {remote}: nobody accepts (queue full or endpoint gone)"
            );
            drop(rejected);
        }
    }

    /// Moves the application's view of `old_handle` onto the new association `new_handle`.
    fn adopt_restart(&mut self, old_handle: AssociationHandle, new_handle: AssociationHandle) {
        let Some(mut old) = self.entries.remove(&old_handle) else {
            return;
        };
        // What the old incarnation received is acknowledged: the application still gets it.
        old.keep_received_for_application();
        self.endpoint
            .handle_event(old_handle, EndpointEvent::drained());
        let Some(new) = self.entries.get_mut(&new_handle) else {
            return;
        };
        self.routes.remove(&new.shared.id);
        // The new entry's own handle was never given out; its Up event is discarded with it.
        new.shared = old.shared;
        new.events = old.events;
        new.outbox = old.outbox;
        new.shared
            .send_budget
            .add_permits(old.charges.iter().map(|&(_, c)| c as usize).sum());
        self.routes.insert(new.shared.id, new_handle);
        debug!("peer {} restarted", new.remote);
        new.deliver(Event::Restarted);
    }

    /// Removes an association and reports its last event.
    fn finish(&mut self, handle: AssociationHandle, last_event: Event) {
        let Some(mut entry) = self.entries.remove(&handle) else {
            return;
        };
        if entry.refused_sends > 1 {
            warn!(
                "SCTP association {} ended; {} sends on it were refused",
                entry.shared.id, entry.refused_sends
            );
        }
        self.endpoint.handle_event(handle, EndpointEvent::drained());
        if self.routes.get(&entry.shared.id) == Some(&handle) {
            self.routes.remove(&entry.shared.id);
        }
        entry.shared.closed.store(true, Ordering::Release);
        entry.shared.send_budget.close();
        if let Phase::Handshaking {
            reply: Some(reply), ..
        } = entry.phase
        {
            let error = match last_event {
                Event::Failed(FailureReason::HandshakeFailed(reason)) if reason == "timed out" => {
                    TransportError::ConnectTimeout(self.config.connect_timeout)
                }
                other => TransportError::ConnectFailed(format!("{other:?}")),
            };
            let _ = reply.send(Err(error));
            return;
        }
        if entry.handle.is_some() {
            // Never handed out (handshake of an incoming association failed).
            return;
        }
        let kept = entry.keep_received_for_application();
        if kept > 0 {
            debug!(
                "association {} with {} ended with {kept} received messages not yet read by \
                 the application: kept for it",
                entry.shared.id, entry.remote
            );
        }
        entry.deliver(last_event);
        if !entry.outbox.is_empty() {
            self.draining_outboxes.insert(
                entry.shared.id,
                DrainingOutbox {
                    events: entry.events,
                    outbox: entry.outbox,
                    shared: entry.shared,
                },
            );
        }
    }

    /// Sends what is queued, in order. A run of packets to one peer that are all of one size
    /// (the last may be shorter) goes out with one `sendmsg` (UDP GSO) where the kernel
    /// supports it.
    async fn send_outgoing(&mut self) {
        let outgoing = std::mem::take(&mut self.outgoing);
        let max_segments = if self.config.udp_segmentation_offload
            && outgoing.len() > 1
            && self.udp_state.max_gso_segments() > 1
            && !kernel_sctp_udp_encapsulation_enabled()
        {
            self.udp_state.max_gso_segments()
        } else {
            1
        };
        let mut at = 0;
        while at < outgoing.len() {
            let (first, remote) = &outgoing[at];
            let segment = first.len();
            let mut end = at + 1;
            let mut total = segment;
            while end < outgoing.len()
                && end - at < max_segments
                && outgoing[end].1 == *remote
                && outgoing[end - 1].0.len() == segment
                && outgoing[end].0.len() <= segment
                && total + outgoing[end].0.len() <= MAX_GSO_BYTES
            {
                total += outgoing[end].0.len();
                end += 1;
            }
            if end - at == 1 {
                self.send_datagram(first, None, *remote).await;
            } else {
                let mut batch = std::mem::take(&mut self.gso_buffer);
                batch.clear();
                for (datagram, _) in &outgoing[at..end] {
                    batch.extend_from_slice(datagram);
                }
                if !self.send_datagram(&batch, Some(segment), *remote).await
                    && self.udp_state.max_gso_segments() == 1
                {
                    // The kernel or the device refused segmentation offload (quinn-udp then
                    // turns it off for good): send the run one by one.
                    for (datagram, _) in &outgoing[at..end] {
                        self.send_datagram(datagram, None, *remote).await;
                    }
                }
                self.gso_buffer = batch;
            }
            at = end;
        }
        self.outgoing = outgoing;
        self.outgoing.clear();
    }

    /// One `sendmsg`, waiting while the socket buffer is full; false when it failed.
    async fn send_datagram(
        &self,
        contents: &[u8],
        segment_size: Option<usize>,
        remote: SocketAddr,
    ) -> bool {
        let transmit = Transmit {
            destination: remote,
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        };
        let mut retry = true;
        loop {
            let sent = self.socket.try_io(Interest::WRITABLE, || {
                self.udp_state.try_send((&self.socket).into(), &transmit)
            });
            match sent {
                Ok(()) => return true,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    if let Err(error) = self.socket.writable().await {
                        debug!("UDP send to {remote} failed: {error}");
                        return false;
                    }
                }
                // An ICMP error about another peer is reported once, by whichever call
                // comes next (IP_RECVERR): it is not this datagram's fault, so try again.
                Err(error) if error.raw_os_error() == Some(libc::ECONNREFUSED) && retry => {
                    retry = false;
                }
                Err(error) => {
                    debug!("UDP send to {remote} failed: {error}");
                    return false;
                }
            }
        }
    }
}

/// Whether this network namespace's kernel runs SCTP over UDP (`net.sctp.udp_port` set).
///
/// Linux delivers a UDP GSO packet sent to a local address as one buffer; one that lands in
/// the kernel's own SCTP-over-UDP socket crashes Debian 12's kernel (6.1: `kernel BUG at
/// mm/slub.c`, a double free from `sctp_rcv`; `tests/kernel-vm/run.sh` found it). Without
/// the sysctl (the default, 0) or without the sctp module there is no such socket here, so
/// GSO is safe for local peers. Read before every send that could batch, so that enabling it
/// takes effect at once; it costs one `open`/`read` per batch of packets.
fn kernel_sctp_udp_encapsulation_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/net/sctp/udp_port").is_ok_and(|port| port.trim() != "0")
}

/// `recvmmsg` buffers, allocated once per driver.
struct ReceiveBuffers {
    data: [Box<[u8]>; RECV_BUFFERS],
    meta: [RecvMeta; RECV_BUFFERS],
}

impl ReceiveBuffers {
    fn new() -> Self {
        ReceiveBuffers {
            data: std::array::from_fn(|_| vec![0u8; MAX_DATAGRAM].into_boxed_slice()),
            meta: [RecvMeta::default(); RECV_BUFFERS],
        }
    }
}

impl Liveness {
    /// RFC 9260 section 6.3.1, C2 and C3 (alpha 1/8, beta 1/4).
    fn measure_rtt(&mut self, rtt: Duration) {
        self.smoothed_rtt = Some(match self.smoothed_rtt {
            None => (rtt, rtt / 2),
            Some((srtt, rttvar)) => {
                let deviation = srtt.abs_diff(rtt);
                (srtt * 7 / 8 + rtt / 8, rttvar * 3 / 4 + deviation / 4)
            }
        });
    }
}

impl Entry {
    /// RFC 6951 section 5.4: the UDP source port of a packet of this association is the
    /// peer's encapsulation port from now on (a NAT rebinding, a peer restarting its UDP
    /// socket), for the peer's address only: a packet from another address does not move the
    /// association (we are single-homed; RFC 6951 keeps one port per address). The packet
    /// carried our verification tag (the endpoint routed it by that tag); an INIT, whose tag
    /// is 0, teaches nothing.
    fn learn_encapsulation_port(&mut self, datagram: &[u8], from: SocketAddr) {
        if from == self.remote || from.ip() != self.remote.ip() {
            return;
        }
        if sctp_wire::parse_common_header(datagram).is_none_or(|h| h.verification_tag == 0) {
            return;
        }
        debug!(
            "association {}: peer {} now sends from UDP port {}: replies go there (RFC 6951 \
             section 5.4)",
            self.shared.id,
            self.remote,
            from.port()
        );
        self.remote = from;
    }

    fn heard_from_peer(&mut self, now: Instant, config: &Config) {
        let liveness = &mut self.liveness;
        liveness.heartbeat_misses = 0;
        liveness.outstanding = None;
        liveness.next_heartbeat = now + config.heartbeat_interval;
    }

    /// Advances path supervision; returns true when the peer is to be given up.
    fn supervise(&mut self, now: Instant, config: &Config) -> bool {
        let limit = config
            .max_path_retransmissions
            .min(config.max_association_retransmissions);
        let liveness = &mut self.liveness;
        if let Some(heartbeat) = liveness.outstanding
            && heartbeat.due <= now
        {
            liveness.heartbeat_misses += 1;
            liveness.outstanding = None;
            // Retry at once: the interval already passed without news from the peer.
            liveness.next_heartbeat = now;
        }
        self.error_count() > limit
    }

    /// RFC 9260 section 8.1's association error counter (we are single-homed, so it is
    /// also the path's).
    fn error_count(&self) -> u32 {
        let data_timeouts =
            u32::try_from(self.proto.consecutive_data_timeouts()).unwrap_or(u32::MAX);
        self.liveness.heartbeat_misses.saturating_add(data_timeouts)
    }

    /// A nonce when a HEARTBEAT is due now; records it as outstanding.
    fn take_heartbeat_to_send(&mut self, config: &Config) -> Option<u64> {
        let now = Instant::now();
        let error_count = self.error_count();
        let liveness = &mut self.liveness;
        if liveness.outstanding.is_some() || liveness.next_heartbeat > now {
            return None;
        }
        let rto = match liveness.smoothed_rtt {
            Some((srtt, rttvar)) => (srtt + rttvar * 4).clamp(config.rto_min, config.rto_max),
            None => self.proto.rtt(),
        };
        // RFC 9260 section 6.3.3: the RTO doubles with each consecutive miss, up to RTO.Max.
        let backed_off = rto
            .saturating_mul(1 << error_count.min(16))
            .min(config.rto_max)
            .max(Duration::from_millis(1));
        let nonce = rand::random::<u64>();
        liveness.outstanding = Some(OutstandingHeartbeat {
            nonce,
            sent_at: now,
            due: now + backed_off,
        });
        Some(nonce)
    }

    /// What sctp-proto's end of the association means to the application. With the vendored
    /// patches `ApplicationClosed` is only a completed SHUTDOWN sequence (every DATA chunk
    /// acknowledged both ways), and `AssociationClosed` an ABORT (or a protocol error): an
    /// ABORT in the middle of our own close is not a clean close, whoever started it.
    fn loss_event(&self, reason: AssociationError) -> Event {
        match reason {
            AssociationError::ApplicationClosed if self.closing_locally => {
                Event::Down(DownReason::Local)
            }
            AssociationError::ApplicationClosed => Event::Down(DownReason::Shutdown),
            // Our own ABORT of an association that never got established.
            AssociationError::AssociationClosed if self.aborted_locally => {
                Event::Down(DownReason::Local)
            }
            AssociationError::AssociationClosed | AssociationError::Reset => {
                Event::Down(DownReason::Aborted)
            }
            AssociationError::LocallyClosed => Event::Down(DownReason::Local),
            AssociationError::TimedOut => Event::Failed(FailureReason::PeerUnreachable),
            other => Event::Failed(FailureReason::Error(other.to_string())),
        }
    }

    fn write(&mut self, message: Message, charged: u32) -> Result<(), sctp_proto::Error> {
        let ppi = PayloadProtocolIdentifier::from(message.ppid);
        let mut stream = match self.proto.stream(message.stream) {
            Ok(stream) => stream,
            Err(_) => self.proto.open_stream(message.stream, ppi)?,
        };
        let (kind, value) = match message.reliability {
            Reliability::Reliable => (ReliabilityType::Reliable, 0),
            Reliability::LimitedRetransmissions(n) => (ReliabilityType::Rexmit, n),
            Reliability::Lifetime(lifetime) => (
                ReliabilityType::Timed,
                u32::try_from(lifetime.as_millis()).unwrap_or(u32::MAX),
            ),
        };
        // sctp-proto keeps these per stream but snapshots them into each message it accepts,
        // so setting them before every write makes them per message.
        stream.set_reliability_params(message.unordered, kind, value)?;
        stream.write_sctp(&message.payload, ppi)?;
        self.send_streams.insert(message.stream);
        self.written_total += message.payload.len() as u64;
        self.charges.push_back((self.written_total, charged));
        Ok(())
    }

    /// Returns send budget for every message sctp-proto no longer buffers (acknowledged or
    /// abandoned under PR-SCTP).
    fn refund_acknowledged(&mut self) {
        if self.charges.is_empty() {
            return;
        }
        let mut buffered = 0u64;
        for &stream_id in &self.send_streams {
            match self.proto.stream(stream_id) {
                Ok(stream) => buffered += stream.buffered_amount().unwrap_or(0) as u64,
                // Closed: sctp-proto forgot its streams, and with them what is still
                // unacknowledged. Counting that as released would report lost messages as
                // delivered; the budget no longer matters once the association is gone.
                Err(_) => return,
            }
        }
        let released = self.written_total.saturating_sub(buffered);
        let mut refund = 0usize;
        let mut messages = 0u64;
        while let Some(&(end, charged)) = self.charges.front() {
            if end > released {
                break;
            }
            refund += charged as usize;
            messages += 1;
            self.charges.pop_front();
        }
        if refund > 0 {
            self.shared.send_budget.add_permits(refund);
            self.shared
                .acknowledged
                .fetch_add(messages, Ordering::AcqRel);
        }
    }

    /// Queues an event for the application, in order behind anything not yet taken.
    fn deliver(&mut self, event: Event) {
        self.outbox.push_back(event);
        flush_outbox(&self.events, &mut self.outbox, &self.shared);
    }

    /// Moves every complete message sctp-proto still holds into the outbox, however full the
    /// application's queue is; returns how many. Called when the association ends: the
    /// peer counts these as delivered (we acknowledged them), so they must reach the
    /// application even though its queue was full and back-pressure kept them in sctp-proto.
    /// Memory stays bounded by the receive window they were accepted into.
    fn keep_received_for_application(&mut self) -> usize {
        let mut kept = 0;
        // Still open when the driver itself gives up on the peer (path failure, restart).
        let mut streams = self.proto.stream_ids();
        streams.sort_unstable();
        for stream_id in streams {
            while let Ok(Some(chunks)) =
                self.proto.stream(stream_id).and_then(|mut s| s.read_sctp())
            {
                self.outbox.push_back(message_event(stream_id, &chunks));
                kept += 1;
            }
        }
        // Closed by sctp-proto (SHUTDOWN COMPLETE, ABORT): it set them aside at the close.
        while let Some((stream_id, chunks)) = self.proto.poll_undelivered() {
            self.outbox.push_back(message_event(stream_id, &chunks));
            kept += 1;
        }
        self.readable.clear();
        kept
    }

    /// Moves complete messages from sctp-proto to the application while it has room; what
    /// stays unread keeps sctp-proto's receive window closed.
    fn deliver_readable(&mut self) {
        flush_outbox(&self.events, &mut self.outbox, &self.shared);
        if !self.outbox.is_empty() || self.events.capacity() == 0 {
            return;
        }
        let streams: Vec<u16> = self.readable.iter().copied().collect();
        for stream_id in streams {
            loop {
                if !self.outbox.is_empty() {
                    return;
                }
                let chunks = match self.proto.stream(stream_id).and_then(|mut s| s.read_sctp()) {
                    Ok(Some(chunks)) => chunks,
                    Ok(None) | Err(_) => {
                        self.readable.remove(&stream_id);
                        break;
                    }
                };
                self.deliver(message_event(stream_id, &chunks));
            }
        }
    }
}

fn message_event(stream: u16, chunks: &sctp_proto::Chunks) -> Event {
    Event::Message(Message {
        stream,
        ppid: u32::from(chunks.ppi),
        unordered: chunks.is_unordered(),
        reliability: Reliability::Reliable,
        payload: chunks.to_bytes(),
    })
}

/// Pushes queued events into the application's channel; true while some remain.
fn flush_outbox(
    events: &mpsc::Sender<Event>,
    outbox: &mut VecDeque<Event>,
    shared: &Shared,
) -> bool {
    while let Some(event) = outbox.pop_front() {
        match events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => {
                outbox.clear();
                return false;
            }
            Err(mpsc::error::TrySendError::Full(event)) => {
                shared.receive_stalled.store(true, Ordering::Release);
                match events.try_send(event) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        outbox.clear();
                        return false;
                    }
                    Err(mpsc::error::TrySendError::Full(event)) => {
                        outbox.push_front(event);
                        return true;
                    }
                }
            }
        }
    }
    false
}

fn transport_config(config: &Config, local_port: u16, remote_port: u16) -> TransportConfig {
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
    let message_size = u32::try_from(config.max_message_size).unwrap_or(u32::MAX);
    let mut transport = TransportConfig::default()
        .with_max_send_message_size(message_size)
        .with_max_receive_message_size(message_size)
        // Room for a few maximum-size messages in reassembly at once.
        .with_max_receive_buffer_size(message_size.saturating_mul(4).max(1024 * 1024))
        .with_max_init_retransmits(Some(config.max_init_retransmissions as usize))
        // Data retransmissions are counted by our path supervision, which fails the
        // association; sctp-proto itself would only stop retransmitting.
        .with_max_data_retransmits(None)
        .with_rto_initial_ms(millis(config.rto_initial))
        .with_rto_min_ms(millis(config.rto_min))
        .with_rto_max_ms(millis(config.rto_max));
    if local_port != 0 {
        transport = transport.with_local_port(local_port);
    }
    if remote_port != 0 {
        transport = transport.with_remote_port(remote_port);
    }
    transport
}
