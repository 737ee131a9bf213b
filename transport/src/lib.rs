//! Message transports for poolflow behind one interface.
//!
//! * [`TransportKind::SctpOverUdp`]: user-space SCTP (vendored `sctp-proto`, see
//!   `vendor/sctp-proto/POOLFLOW-PATCHES.md`) encapsulated in UDP as RFC 6951 describes: the SCTP
//!   packet is the UDP payload, one UDP socket carries any number of associations, default UDP
//!   port [`DEFAULT_UDP_ENCAPS_PORT`]. Streams, PPIDs, unordered delivery and PR-SCTP
//!   (RFC 3758: limited retransmissions or lifetime) are supported. Path supervision
//!   (HEARTBEAT, error counters, failure) is done by this crate, see `sctp_udp`.
//! * [`TransportKind::Tcp`]: length-prefixed frames on TCP, see [`tcp`] for the frame layout.
//!   Reliability options are accepted and ignored (TCP is always reliable and ordered).
//! * [`TransportKind::KernelSctp`]: native (Linux kernel) SCTP, one one-to-many socket per
//!   endpoint, see [`kernel_sctp`]. On a host without it (no `sctp` module, most containers)
//!   asking for it yields [`TransportError::KernelSctpUnavailable`] with the OS reason.
//!
//! Beside the message interface, [`udp_listener`] is the receive loop of datagram protocols
//! with a session per sender (IPFIX and NetFlow v9 over UDP), shared by the collector's
//! receiver and the exporter's relay.
//!
//! Usage: [`Endpoint::bind`] + [`Endpoint::accept`] on the server side, [`connect`] (or
//! [`Endpoint::connect`] to reuse the socket) on the client side. Both yield an
//! [`Association`] whose first event is [`Event::Up`].

#![warn(missing_docs)]

mod icmp_errors;
pub mod kernel_sctp;
pub mod multicast;
mod sctp_udp;
mod sctp_wire;
mod sockaddr;
pub mod tcp;
pub mod tls;
pub mod udp_listener;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

/// RFC 6951 section 5.1: the registered UDP port for SCTP over UDP.
pub const DEFAULT_UDP_ENCAPS_PORT: u16 = 9899;

/// Which transport an [`Endpoint`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// User-space SCTP encapsulated in UDP (RFC 6951).
    SctpOverUdp,
    /// TCP with stream/PPID framing (see the `tcp` module).
    Tcp,
    /// The kernel's SCTP stack (Linux), one-to-one sockets.
    KernelSctp,
}

/// Settings shared by all transports; SCTP-only fields are ignored by TCP.
///
/// Defaults are RFC 9260 section 16 values. Failure of a silent peer is declared after about
/// [`Config::failure_detection_bound`].
#[derive(Debug, Clone)]
pub struct Config {
    /// The transport to use.
    pub transport: TransportKind,
    /// SCTP port of the listening side (the destination SCTP port of our INITs, and the
    /// source port of an `Endpoint`'s own packets). When connecting, our source SCTP port is
    /// the local UDP port, so that two clients on one host never share a transport address.
    pub sctp_port: u16,
    /// HB.interval: a HEARTBEAT goes out after this long without hearing from the peer.
    pub heartbeat_interval: Duration,
    /// RTO.Initial: retransmission timeout before any RTT is measured.
    pub rto_initial: Duration,
    /// RTO.Min: lower bound of the computed retransmission timeout.
    pub rto_min: Duration,
    /// RTO.Max: upper bound of the retransmission timeout (after backoff).
    pub rto_max: Duration,
    /// Association.Max.Retrans: consecutive unanswered retransmissions (DATA timeouts and
    /// heartbeats) before the association fails.
    pub max_association_retransmissions: u32,
    /// Path.Max.Retrans: consecutive unanswered heartbeats before the (only) path, and so the
    /// association, fails. We are single-homed, so the smaller of the two limits wins.
    pub max_path_retransmissions: u32,
    /// Max.Init.Retransmits for INIT and COOKIE ECHO.
    pub max_init_retransmissions: u32,
    /// Largest message accepted for sending and receiving.
    pub max_message_size: usize,
    /// Largest SCTP packet we send (the UDP payload, RFC 6951 section 5.6). The default, 1452,
    /// fits a 1500-byte Ethernet MTU under IPv6 (40) + UDP (8) headers, and so IPv4 too.
    pub max_sctp_packet_size: usize,
    /// Bytes an association may buffer for sending before [`Association::send`] waits.
    pub send_buffer_bytes: usize,
    /// Events (mostly messages) queued for the application per association; when full we
    /// stop reading, so SCTP's receive window (or TCP's) pushes back on the sender.
    pub receive_queue_len: usize,
    /// Give up establishing an association after this long.
    pub connect_timeout: Duration,
    /// SCTP over UDP: hand runs of equal-size packets for one peer to the kernel in one
    /// `sendmsg` (UDP GSO, Linux) instead of one system call each. **Off by default.** The
    /// kernel is meant to cut such a batch into one UDP datagram per SCTP packet, but a
    /// batch that crosses loopback or a `veth` can reach the peer (or a capture) still whole:
    /// RSPLIB's sctplib then checks the CRC over the whole buffer and drops every packet in
    /// it, and tshark shows a malformed packet; Linux 6.1's own SCTP over UDP can crash
    /// (double free in `sctp_udp_rcv`; the kernel-VM test crashed the guest in 2 of 8 boots
    /// with GSO on, 0 of 14 with it off). RFC 6951 wants one SCTP packet per datagram, and a
    /// peer cannot tell us whether it copes, so turn this on only where every peer is this
    /// stack and reads with `recvmmsg`/GRO splitting (it saves system calls on bulk sends).
    /// The driver still skips GSO while `net.sctp.udp_port` is set in this namespace.
    pub udp_segmentation_offload: bool,
    /// TCP only: TLS around the framed stream (RFC 7011 section 11), see
    /// [`tls::StreamTls`]. Other transports refuse to bind or connect with it.
    pub tls: Option<tls::StreamTls>,
    /// SCTP over UDP, [`connect`] only: the local UDP port (the RFC 6951 encapsulation port)
    /// an outbound association leaves from, and so the port the peer's replies must reach.
    /// 0 (the default) picks an ephemeral port. Stacks that answer to a fixed port whatever
    /// the source port was (RSPLIB's sctplib answers to 9899) need this set to that port;
    /// where it is taken (another association of this process, a collector listening on it)
    /// the association falls back to an ephemeral port with a warning. An [`Endpoint`] that
    /// listens uses its listening port for [`Endpoint::connect`] and ignores this.
    pub local_udp_port: u16,
    /// SCTP over UDP: read the ICMP errors the kernel queues for the socket, and end an
    /// association at once ([`FailureReason::PortUnreachable`]) when the peer's host says
    /// its UDP port is closed, checking the verification tag in the quoted packet (RFC 6951
    /// section 5.5; RFC 9260 appendix C lets an unreachable protocol count as an ABORT).
    /// A collector that dies on a live host is then known within a round trip; a host
    /// that dies sends nothing, and path supervision (the timers) still decides. On by
    /// default; off, only the timers decide.
    pub icmp_port_unreachable: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            transport: TransportKind::SctpOverUdp,
            sctp_port: DEFAULT_UDP_ENCAPS_PORT,
            heartbeat_interval: Duration::from_secs(30),
            rto_initial: Duration::from_secs(1),
            rto_min: Duration::from_secs(1),
            rto_max: Duration::from_secs(60),
            max_association_retransmissions: 10,
            max_path_retransmissions: 5,
            max_init_retransmissions: 8,
            max_message_size: 256 * 1024,
            max_sctp_packet_size: 1452,
            send_buffer_bytes: 4 * 1024 * 1024,
            receive_queue_len: 4096,
            connect_timeout: Duration::from_secs(10),
            udp_segmentation_offload: false,
            tls: None,
            local_udp_port: 0,
            icmp_port_unreachable: true,
        }
    }
}

impl Config {
    /// TLS is offered on TCP only (DTLS for SCTP is not implemented).
    fn check_tls(&self) -> Result<(), TransportError> {
        if self.tls.is_some() && self.transport != TransportKind::Tcp {
            return Err(TransportError::Unsupported("TLS is offered on TCP only"));
        }
        Ok(())
    }

    /// Settings for failover on a LAN or loopback: fast when the peer is dead, quiet when
    /// it is only busy. A peer *process* that dies on a live host is known within a round
    /// trip from its host's ICMP port unreachable ([`Config::icmp_port_unreachable`]), so
    /// the timers only have to catch dead hosts and cut paths: they give up after about
    /// 0.75 s without any acknowledgement of outstanding data (RTO 50, 100, 200, 400 ms)
    /// and at most [`Self::failure_detection_bound`] (1.8 s) of silence. A live peer
    /// starved of CPU for less than that (a parallel build, a busy disk) is not failed
    /// over from; the earlier preset (RTO 20–100 ms, 2 retransmissions) did that in a
    /// soak beside two busy loops (BENCHMARKS.md).
    pub fn fast_failure_detection(transport: TransportKind) -> Self {
        Config {
            heartbeat_interval: Duration::from_millis(200),
            max_association_retransmissions: 6,
            max_path_retransmissions: 3,
            max_init_retransmissions: 4,
            connect_timeout: Duration::from_secs(2),
            ..Config::lan_retransmission(transport)
        }
    }

    /// RTO bounds for a LAN (50 ms to 400 ms, first 100 ms) with RFC 9260's patience
    /// otherwise: a lost packet is resent within 400 ms instead of RTO.Min's 1 s, but the
    /// peer gets as many retransmissions and as long a heartbeat interval as on the
    /// Internet before it is given up. For the side that only has to deliver promptly,
    /// not to judge the peer dead quickly: the collector, whose billing cookies must
    /// reach an exporter well inside the exporter's cookie timeout on a lossy path (the
    /// exporter, which decides failover, uses [`Self::fast_failure_detection`]).
    pub fn lan_retransmission(transport: TransportKind) -> Self {
        Config {
            transport,
            rto_initial: Duration::from_millis(100),
            rto_min: Duration::from_millis(50),
            rto_max: Duration::from_millis(400),
            ..Config::default()
        }
    }

    /// Upper bound of the time between a peer going silent and [`Event::Failed`]: one
    /// heartbeat interval plus one RTO (at most `rto_max`) per allowed retransmission and one
    /// for the last try.
    pub fn failure_detection_bound(&self) -> Duration {
        let tries = self
            .max_path_retransmissions
            .min(self.max_association_retransmissions)
            + 1;
        self.heartbeat_interval + self.rto_max * tries
    }
}

/// Delivery guarantee of one message (RFC 3758 PR-SCTP policies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reliability {
    /// Retransmitted until acknowledged or the association fails.
    #[default]
    Reliable,
    /// "rtx": give up after this many retransmissions.
    LimitedRetransmissions(u32),
    /// "ttl": give up once the message is older than this.
    Lifetime(Duration),
}

/// One application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// SCTP stream number (carried in the TCP framing too).
    pub stream: u16,
    /// Payload Protocol Identifier (e.g. 11 ASAP, 12 ENRP), carried verbatim.
    pub ppid: u32,
    /// Delivered as soon as it arrives, not in stream order.
    pub unordered: bool,
    /// Ignored on receive (the wire does not carry it) and by TCP.
    pub reliability: Reliability,
    /// The message itself.
    pub payload: Bytes,
}

impl Message {
    /// A reliable, ordered message.
    pub fn new(stream: u16, ppid: u32, payload: impl Into<Bytes>) -> Self {
        Message {
            stream,
            ppid,
            unordered: false,
            reliability: Reliability::Reliable,
            payload: payload.into(),
        }
    }

    /// The same message, unordered.
    pub fn unordered(mut self) -> Self {
        self.unordered = true;
        self
    }

    /// The same message with a PR-SCTP policy.
    pub fn with_reliability(mut self, reliability: Reliability) -> Self {
        self.reliability = reliability;
        self
    }
}

/// Why an association ended in an orderly way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownReason {
    /// Graceful shutdown (SCTP SHUTDOWN sequence, TCP end of stream).
    Shutdown,
    /// The peer aborted (SCTP ABORT, TCP reset).
    Aborted,
    /// We closed it.
    Local,
}

/// Why an association failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureReason {
    /// The peer stopped answering: heartbeats or retransmissions exhausted.
    PeerUnreachable,
    /// SCTP over UDP: the peer's host answered our packet with an ICMP port unreachable
    /// whose quoted packet carries this association's verification tag: the peer process
    /// is gone (see [`Config::icmp_port_unreachable`]).
    PortUnreachable,
    /// INIT / COOKIE exchange did not complete.
    HandshakeFailed(String),
    /// Protocol violation, receive buffer exhaustion, I/O error.
    Error(String),
}

/// What an [`Association`] reports, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Established; always the first event.
    Up,
    /// A message from the peer.
    Message(Message),
    /// The peer restarted (same address and port, new incarnation): the association goes on
    /// with it, but messages in flight at the restart may be lost.
    Restarted,
    /// Ended in an orderly way; no more events follow.
    Down(DownReason),
    /// Ended by failure detection or error; no more events follow.
    Failed(FailureReason),
}

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A socket call failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The handshake was refused or failed.
    #[error("could not establish association: {0}")]
    ConnectFailed(String),
    /// No handshake answer within the connect timeout.
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// Sending on an association that has ended.
    #[error("association is closed")]
    Closed,
    /// A message above the transport's maximum message size.
    #[error("message of {size} bytes exceeds the maximum of {max}")]
    MessageTooLarge {
        /// The message's size, bytes.
        size: usize,
        /// The largest accepted, bytes.
        max: usize,
    },
    /// No SCTP in this kernel (module not loaded, or not Linux).
    #[error("kernel SCTP unavailable on this host: {0}")]
    KernelSctpUnavailable(String),
    /// The operation does not exist on this transport.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// The SCTP stack reported an error.
    #[error("SCTP error: {0}")]
    Sctp(String),
}

/// Accepts associations and opens new ones from one local socket.
pub struct Endpoint {
    inner: EndpointInner,
}

enum EndpointInner {
    SctpOverUdp(sctp_udp::SctpUdpEndpoint),
    Tcp(tcp::TcpEndpoint),
    KernelSctp(kernel_sctp::KernelSctpEndpoint),
}

impl Endpoint {
    /// Listens on `local` (port 0 picks a free port) for the configured transport.
    pub async fn bind(config: Config, local: SocketAddr) -> Result<Endpoint, TransportError> {
        config.check_tls()?;
        let inner = match config.transport {
            TransportKind::SctpOverUdp => {
                EndpointInner::SctpOverUdp(sctp_udp::SctpUdpEndpoint::bind(config, local, true)?)
            }
            TransportKind::Tcp => EndpointInner::Tcp(tcp::TcpEndpoint::bind(config, local).await?),
            TransportKind::KernelSctp => EndpointInner::KernelSctp(
                kernel_sctp::KernelSctpEndpoint::bind(config, local, true)?,
            ),
        };
        Ok(Endpoint { inner })
    }

    /// The bound address (UDP for SCTP over UDP), with the port the
    /// kernel chose for port 0.
    pub fn local_addr(&self) -> SocketAddr {
        match &self.inner {
            EndpointInner::SctpOverUdp(endpoint) => endpoint.local_addr(),
            EndpointInner::Tcp(endpoint) => endpoint.local_addr(),
            EndpointInner::KernelSctp(endpoint) => endpoint.local_addr(),
        }
    }

    /// Next established incoming association; `None` once the endpoint is shut down.
    pub async fn accept(&mut self) -> Option<Association> {
        match &mut self.inner {
            EndpointInner::SctpOverUdp(endpoint) => endpoint.accept().await,
            EndpointInner::Tcp(endpoint) => endpoint.accept().await,
            EndpointInner::KernelSctp(endpoint) => endpoint.accept().await,
        }
    }

    /// Opens an association from this endpoint's socket (SCTP over UDP shares the socket;
    /// TCP opens a new connection). SCTP over UDP: the peer's SCTP port is the configured
    /// `sctp_port`; see [`Endpoint::connect_to_port`].
    pub async fn connect(&self, remote: SocketAddr) -> Result<Association, TransportError> {
        match &self.inner {
            EndpointInner::SctpOverUdp(endpoint) => endpoint.connect(remote, None).await,
            EndpointInner::Tcp(endpoint) => endpoint.connect(remote).await,
            EndpointInner::KernelSctp(endpoint) => endpoint.connect(remote).await,
        }
    }

    /// A cloneable handle that opens associations from this endpoint's socket.
    pub fn connector(&self, config: &Config) -> Connector {
        let inner = match &self.inner {
            EndpointInner::SctpOverUdp(endpoint) => {
                ConnectorInner::SctpOverUdp(endpoint.connector())
            }
            EndpointInner::KernelSctp(endpoint) => ConnectorInner::KernelSctp(endpoint.connector()),
            EndpointInner::Tcp(_) => ConnectorInner::Fresh(Box::new(config.clone())),
        };
        Connector { inner }
    }

    /// As [`Endpoint::connect`], naming the peer's SCTP port (SCTP over UDP: `remote` is the
    /// peer's UDP encapsulation address, `sctp_port` the port in the SCTP common header; the
    /// other transports have one port and ignore it). The association leaves from this
    /// endpoint's UDP port and SCTP port, so a peer that answers to the port it knows from
    /// our advertisements (RFC 5353 ENRP, RFC 6951 section 5.4) reaches it.
    pub async fn connect_to_port(
        &self,
        remote: SocketAddr,
        sctp_port: u16,
    ) -> Result<Association, TransportError> {
        match &self.inner {
            EndpointInner::SctpOverUdp(endpoint) => endpoint.connect(remote, Some(sctp_port)).await,
            EndpointInner::Tcp(endpoint) => endpoint.connect(remote).await,
            EndpointInner::KernelSctp(endpoint) => endpoint.connect(remote).await,
        }
    }
}

/// Opens associations from an [`Endpoint`]'s socket while another task accepts on it (SCTP
/// over UDP and kernel SCTP; TCP opens a new socket per connection, as [`connect`] does).
#[derive(Clone)]
pub struct Connector {
    inner: ConnectorInner,
}

#[derive(Clone)]
enum ConnectorInner {
    SctpOverUdp(sctp_udp::SctpUdpConnector),
    KernelSctp(kernel_sctp::KernelSctpConnector),
    Fresh(Box<Config>),
}

impl Connector {
    /// See [`Endpoint::connect_to_port`].
    pub async fn connect_to_port(
        &self,
        remote: SocketAddr,
        sctp_port: u16,
    ) -> Result<Association, TransportError> {
        match &self.inner {
            ConnectorInner::SctpOverUdp(connector) => {
                connector.connect(remote, Some(sctp_port)).await
            }
            ConnectorInner::KernelSctp(connector) => connector.connect(remote).await,
            ConnectorInner::Fresh(config) => connect((**config).clone(), remote).await,
        }
    }
}

/// Opens an association to `remote` from a fresh socket (ephemeral unless
/// `Config::local_udp_port` is set).
pub async fn connect(config: Config, remote: SocketAddr) -> Result<Association, TransportError> {
    config.check_tls()?;
    match config.transport {
        TransportKind::SctpOverUdp => {
            let unspecified: std::net::IpAddr = if remote.is_ipv4() {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            };
            let endpoint = if config.local_udp_port == 0 {
                sctp_udp::SctpUdpEndpoint::bind(config, SocketAddr::new(unspecified, 0), false)?
            } else {
                let wanted = SocketAddr::new(unspecified, config.local_udp_port);
                match sctp_udp::SctpUdpEndpoint::bind(config.clone(), wanted, false) {
                    Ok(endpoint) => endpoint,
                    Err(error) => {
                        tracing::warn!(
                            %remote,
                            %error,
                            port = config.local_udp_port,
                            "local UDP encapsulation port unavailable: this association \
                             leaves from an ephemeral port, and a peer that answers to the \
                             fixed port will not be heard"
                        );
                        sctp_udp::SctpUdpEndpoint::bind(
                            config,
                            SocketAddr::new(unspecified, 0),
                            false,
                        )?
                    }
                }
            };
            endpoint.connect(remote, None).await
        }
        TransportKind::Tcp => tcp::connect(&config, remote).await,
        TransportKind::KernelSctp => kernel_sctp::connect(config, remote).await,
    }
}

/// Handle of one established association: send with [`Association::send`] (or a cloned
/// [`AssociationSender`]), receive with [`Association::recv`]. Dropping it shuts the
/// association down gracefully.
pub struct Association {
    remote: SocketAddr,
    events: mpsc::Receiver<Event>,
    sender: AssociationSender,
}

impl Association {
    /// The peer's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    /// Queues a message for the peer (waits while the send queue is full).
    pub async fn send(&self, message: Message) -> Result<(), TransportError> {
        self.sender.send(message).await
    }

    /// Next event; `None` after [`Event::Down`] / [`Event::Failed`] has been returned.
    pub async fn recv(&mut self) -> Option<Event> {
        let event = self.events.recv().await;
        self.sender.after_receive();
        event
    }

    /// A cloneable sending half, for sending from other tasks while this one receives.
    pub fn sender(&self) -> AssociationSender {
        self.sender.clone()
    }

    /// See [`AssociationSender::acknowledged_messages`].
    pub fn acknowledged_messages(&self) -> Option<u64> {
        self.sender.acknowledged_messages()
    }

    /// Graceful shutdown: queued messages are still delivered, then [`Event::Down`] follows.
    pub fn close(&self) {
        self.sender.close();
    }
}

impl Drop for Association {
    fn drop(&mut self) {
        self.sender.close();
    }
}

/// Sending half of an [`Association`].
#[derive(Clone)]
pub struct AssociationSender {
    inner: SenderInner,
}

#[derive(Clone)]
enum SenderInner {
    SctpOverUdp(sctp_udp::SctpSender),
    Tcp(tcp::TcpSender),
    KernelSctp(kernel_sctp::KernelSender),
}

impl AssociationSender {
    /// Queues one message; waits while the association's send buffer is full.
    pub async fn send(&self, message: Message) -> Result<(), TransportError> {
        match &self.inner {
            SenderInner::SctpOverUdp(sender) => sender.send(message).await,
            SenderInner::Tcp(sender) => sender.send(message).await,
            SenderInner::KernelSctp(sender) => sender.send(message).await,
        }
    }

    /// Starts a graceful close (SCTP SHUTDOWN, TCP FIN) after what is queued.
    pub fn close(&self) {
        match &self.inner {
            SenderInner::SctpOverUdp(sender) => sender.close(),
            SenderInner::Tcp(sender) => sender.close(),
            SenderInner::KernelSctp(sender) => sender.close(),
        }
    }

    /// Ends the association at once (SCTP ABORT, RFC 9260 section 9.1): nothing queued or
    /// unacknowledged is delivered, and the peer learns immediately that the association is
    /// gone, where a graceful close waits for every outstanding message both ways. For a peer
    /// that must act now, e.g. a pool element its registrar has just dropped, which would
    /// otherwise sit on a half-closed association until its next re-registration. SCTP over
    /// UDP only; TCP and kernel SCTP close gracefully.
    pub fn abort(&self) {
        match &self.inner {
            SenderInner::SctpOverUdp(sender) => sender.abort(),
            SenderInner::Tcp(sender) => sender.close(),
            SenderInner::KernelSctp(sender) => sender.close(),
        }
    }

    /// Messages sent on this association that the peer has acknowledged, counted from the
    /// first, in sending order: after [`Event::Down`] it tells how many of them the peer
    /// holds. SCTP over UDP counts SACKed DATA (a message abandoned under PR-SCTP counts
    /// too); plain TCP counts the frames its peer's TCP has acknowledged (Linux `TCP_INFO`);
    /// `None` where the transport cannot tell (TCP under TLS, kernel SCTP).
    pub fn acknowledged_messages(&self) -> Option<u64> {
        match &self.inner {
            SenderInner::SctpOverUdp(sender) => Some(sender.acknowledged_messages()),
            SenderInner::Tcp(sender) => sender.acknowledged_messages(),
            SenderInner::KernelSctp(_) => None,
        }
    }

    fn after_receive(&self) {
        match &self.inner {
            SenderInner::SctpOverUdp(sender) => sender.after_receive(),
            SenderInner::KernelSctp(sender) => sender.after_receive(),
            SenderInner::Tcp(_) => {}
        }
    }
}

/// What every SCTP sender checks before queueing a message: its size (not
/// above `max_message_size`, not empty: RFC 9260 section 6.2 forbids a DATA
/// chunk without user data), that the association is open, and room in the
/// send buffer, waited for (the bytes charged are returned to `budget` when
/// the message leaves the buffer). Returns the bytes charged.
pub(crate) async fn admit_message(
    message: &Message,
    max_message_size: usize,
    send_buffer_bytes: usize,
    closed: &std::sync::atomic::AtomicBool,
    budget: &tokio::sync::Semaphore,
) -> Result<u32, TransportError> {
    let size = message.payload.len();
    if size > max_message_size {
        return Err(TransportError::MessageTooLarge {
            size,
            max: max_message_size,
        });
    }
    if size == 0 {
        return Err(TransportError::Unsupported("empty SCTP messages"));
    }
    if closed.load(std::sync::atomic::Ordering::Acquire) {
        return Err(TransportError::Closed);
    }
    let charged = size.min(send_buffer_bytes) as u32;
    budget
        .acquire_many(charged)
        .await
        .map_err(|_| TransportError::Closed)?
        .forget();
    Ok(charged)
}
