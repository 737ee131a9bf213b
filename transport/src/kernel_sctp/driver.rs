//! The tokio side of kernel SCTP: one task per one-to-many socket (the [`Driver`]), fed
//! by commands from the association handles ([`KernelSender`]) and by socket readiness. It
//! keeps the associations, the pending connects, the send queue with each message's share
//! of the send budget, and the events the application has not taken yet (while any wait,
//! it stops reading, so a slow application slows its peers through SCTP flow control).
//! The system calls and byte layouts it uses are in [`super::sys`].

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use libc::c_int;
use tokio::io::unix::AsyncFd;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{debug, warn};

use super::sys::{
    Notification, Outgoing, ReceiveInfo, Received, SCTP_CANT_STR_ASSOC, SCTP_COMM_LOST,
    SCTP_COMM_UP, SCTP_RESTART, SCTP_SHUTDOWN_COMP, bind, configure, endpoint_socket, listen,
    local_address, parse_notification, receive_one, same_peer, send_one, start_connect,
};
use crate::{
    Association, AssociationSender, Config, DownReason, Event, FailureReason, Message, Reliability,
    SenderInner, TransportError,
};

const LISTEN_BACKLOG: c_int = 128;
const ACCEPT_QUEUE: usize = 1024;
/// Messages or commands handled per wake-up before the other side gets its turn.
const BATCH: usize = 64;
/// How long the driver keeps flushing queued messages after the last handle is gone.
const LINGER: Duration = Duration::from_secs(2);

enum Command {
    Connect {
        remote: SocketAddr,
        reply: oneshot::Sender<Result<Association, TransportError>>,
    },
    Send {
        assoc_id: i32,
        message: Message,
        charged: u32,
    },
    Close {
        assoc_id: i32,
    },
    ResumeReceive,
}

/// State shared between an application handle and the driver.
struct Shared {
    assoc_id: i32,
    /// Bytes the application may queue in the driver; returned once the kernel takes them.
    send_budget: Semaphore,
    closed: AtomicBool,
    /// Set by the driver when the application's event queue was full; the next `recv`
    /// asks it to go on reading.
    receive_stalled: AtomicBool,
}

#[derive(Clone)]
pub(crate) struct KernelSender {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    max_message_size: usize,
    send_buffer_bytes: usize,
}

impl KernelSender {
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
                assoc_id: self.shared.assoc_id,
                message,
                charged,
            })
            .map_err(|_| TransportError::Closed)
    }

    pub(crate) fn close(&self) {
        let _ = self.commands.send(Command::Close {
            assoc_id: self.shared.assoc_id,
        });
    }

    pub(crate) fn after_receive(&self) {
        if self.shared.receive_stalled.swap(false, Ordering::AcqRel) {
            let _ = self.commands.send(Command::ResumeReceive);
        }
    }
}

pub(crate) struct KernelSctpEndpoint {
    local_addr: SocketAddr,
    connect_timeout: Duration,
    commands: mpsc::UnboundedSender<Command>,
    accepted: mpsc::Receiver<Association>,
}

impl KernelSctpEndpoint {
    /// Creates the one-to-many socket (listening when `accept_incoming`) and its driver.
    pub(crate) fn bind(
        config: Config,
        local: SocketAddr,
        accept_incoming: bool,
    ) -> Result<Self, TransportError> {
        let family = if local.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let socket = endpoint_socket(family)?;
        let fd = socket.as_raw_fd();
        configure(fd, &config)?;
        bind(fd, &local)?;
        if accept_incoming {
            listen(fd, LISTEN_BACKLOG)?;
        }
        let local_addr = local_address(fd)?;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (accept_tx, accepted) = mpsc::channel(ACCEPT_QUEUE);
        let connect_timeout = config.connect_timeout;
        let driver = Driver {
            // SAFETY: the OwnedFd is moved into the AsyncFd and stays open, with the same
            // descriptor, until the AsyncFd is dropped.
            socket: Arc::new(
                unsafe { AsyncFd::register(socket) }.map_err(|error| error.into_parts().1)?,
            ),
            weak_commands: commands.downgrade(),
            accept_tx: accept_incoming.then_some(accept_tx),
            entries: HashMap::new(),
            pending_connects: Vec::new(),
            send_queue: VecDeque::new(),
            config,
        };
        tokio::spawn(driver.run(command_rx));
        Ok(KernelSctpEndpoint {
            local_addr,
            connect_timeout,
            commands,
            accepted,
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub(crate) async fn accept(&mut self) -> Option<Association> {
        self.accepted.recv().await
    }

    pub(crate) async fn connect(&self, remote: SocketAddr) -> Result<Association, TransportError> {
        connect_on(&self.commands, self.connect_timeout, remote).await
    }

    /// Opens associations from this endpoint's socket (so from its port) while another
    /// task accepts on it. It holds the socket's driver: the socket stays open while a
    /// connector exists, even after the endpoint is dropped.
    pub(crate) fn connector(&self) -> KernelSctpConnector {
        KernelSctpConnector {
            commands: self.commands.clone(),
            connect_timeout: self.connect_timeout,
        }
    }
}

/// See [`KernelSctpEndpoint::connector`].
#[derive(Clone)]
pub(crate) struct KernelSctpConnector {
    commands: mpsc::UnboundedSender<Command>,
    connect_timeout: Duration,
}

impl KernelSctpConnector {
    pub(crate) async fn connect(&self, remote: SocketAddr) -> Result<Association, TransportError> {
        connect_on(&self.commands, self.connect_timeout, remote).await
    }
}

/// An association from the one-to-many socket whose driver takes `commands`.
async fn connect_on(
    commands: &mpsc::UnboundedSender<Command>,
    connect_timeout: Duration,
    remote: SocketAddr,
) -> Result<Association, TransportError> {
    let (reply, reply_rx) = oneshot::channel();
    commands
        .send(Command::Connect { remote, reply })
        .map_err(|_| TransportError::Closed)?;
    // The driver enforces the deadline itself; this only guards against a lost reply.
    match tokio::time::timeout(connect_timeout * 2, reply_rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(TransportError::Closed),
        Err(_) => Err(TransportError::ConnectTimeout(connect_timeout)),
    }
}

/// Opens an association to `remote` from a fresh socket.
pub(crate) async fn connect(
    config: Config,
    remote: SocketAddr,
) -> Result<Association, TransportError> {
    let local: SocketAddr = if remote.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    KernelSctpEndpoint::bind(config, local, false)?
        .connect(remote)
        .await
}

struct PendingConnect {
    remote: SocketAddr,
    reply: oneshot::Sender<Result<Association, TransportError>>,
    deadline: Instant,
}

struct Entry {
    shared: Arc<Shared>,
    events: mpsc::Sender<Event>,
    /// Events the application has not had room for yet; while any exist we stop reading.
    outbox: VecDeque<Event>,
    /// A message arriving in pieces (larger than one `recvmsg`), until MSG_EOR.
    partial: BytesMut,
    closing_locally: bool,
}

struct Driver {
    socket: Arc<AsyncFd<OwnedFd>>,
    weak_commands: mpsc::WeakUnboundedSender<Command>,
    accept_tx: Option<mpsc::Sender<Association>>,
    entries: HashMap<i32, Entry>,
    pending_connects: Vec<PendingConnect>,
    /// Messages (with the budget they hold) and shutdown requests not yet taken by the
    /// kernel, oldest first.
    send_queue: VecDeque<(i32, Outgoing, Bytes, u32)>,
    config: Config,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let socket = self.socket.clone();
        let mut buffer = vec![0u8; self.config.max_message_size.clamp(64 * 1024, 1 << 20)];
        let mut commands_open = true;
        let mut linger_until: Option<Instant> = None;
        loop {
            if !commands_open {
                let until = *linger_until.get_or_insert_with(|| Instant::now() + LINGER);
                if self.send_queue.is_empty() || Instant::now() >= until {
                    // Closing the socket shuts the remaining associations down gracefully.
                    break;
                }
            }
            let read_allowed = self.entries.values().all(|e| e.outbox.is_empty());
            let next_deadline = self.pending_connects.iter().map(|p| p.deadline).min();
            let sleep_until = next_deadline
                .or(linger_until)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                guard = socket.readable(), if read_allowed => match guard {
                    Ok(mut guard) => {
                        for _ in 0..BATCH {
                            match self.receive(&mut buffer) {
                                Ok(()) => {}
                                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                                    guard.clear_ready();
                                    break;
                                }
                                Err(error) => {
                                    debug!("kernel SCTP recvmsg failed: {error}");
                                    break;
                                }
                            }
                            if self.entries.values().any(|e| !e.outbox.is_empty()) {
                                break;
                            }
                        }
                    }
                    Err(error) => {
                        warn!("kernel SCTP socket failed: {error}");
                        break;
                    }
                },
                guard = socket.writable(), if !self.send_queue.is_empty() => {
                    if let Ok(mut guard) = guard
                        && self.flush_sends()
                    {
                        guard.clear_ready();
                    }
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
            self.expire_connects(Instant::now());
            self.flush_sends();
        }
        debug!("kernel SCTP driver stopped");
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Connect { remote, reply } => self.connect(remote, reply),
            Command::Send {
                assoc_id,
                message,
                charged,
            } => {
                let outgoing = Outgoing::Data {
                    stream: message.stream,
                    ppid: message.ppid,
                    unordered: message.unordered,
                    reliability: message.reliability,
                };
                self.send_queue
                    .push_back((assoc_id, outgoing, message.payload, charged));
            }
            Command::Close { assoc_id } => {
                if let Some(entry) = self.entries.get_mut(&assoc_id)
                    && !entry.closing_locally
                {
                    entry.closing_locally = true;
                    // Queued behind the association's messages, so they still go out.
                    self.send_queue
                        .push_back((assoc_id, Outgoing::Eof, Bytes::new(), 0));
                }
            }
            Command::ResumeReceive => {
                for entry in self.entries.values_mut() {
                    flush_outbox(entry);
                }
            }
        }
    }

    fn connect(
        &mut self,
        remote: SocketAddr,
        reply: oneshot::Sender<Result<Association, TransportError>>,
    ) {
        let fd = self.socket.get_ref().as_raw_fd();
        if let Err(error) = start_connect(fd, &remote) {
            let _ = reply.send(Err(TransportError::ConnectFailed(format!(
                "connect to {remote}: {error}"
            ))));
            return;
        }
        // COMM_UP (or CANT_STR_ASSOC) arrives as a notification.
        self.pending_connects.push(PendingConnect {
            remote,
            reply,
            deadline: Instant::now() + self.config.connect_timeout,
        });
    }

    fn expire_connects(&mut self, now: Instant) {
        if self.pending_connects.iter().all(|p| p.deadline > now) {
            return;
        }
        let (expired, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_connects)
            .into_iter()
            .partition(|p| p.deadline <= now);
        self.pending_connects = waiting;
        for pending in expired {
            let _ = pending.reply.send(Err(TransportError::ConnectTimeout(
                self.config.connect_timeout,
            )));
        }
    }

    /// Hands queued messages to the kernel; true when it would block.
    fn flush_sends(&mut self) -> bool {
        let fd = self.socket.get_ref().as_raw_fd();
        while let Some((assoc_id, outgoing, payload, charged)) = self.send_queue.pop_front() {
            match send_one(fd, assoc_id, outgoing, &payload) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    self.send_queue
                        .push_front((assoc_id, outgoing, payload, charged));
                    return true;
                }
                Err(error) => {
                    // The association ended under us (EPIPE, EINVAL): its end is reported
                    // by its notification.
                    debug!("kernel SCTP send on association {assoc_id} failed: {error}");
                }
            }
            if charged > 0
                && let Some(entry) = self.entries.get(&assoc_id)
            {
                entry.shared.send_budget.add_permits(charged as usize);
            }
        }
        false
    }

    fn receive(&mut self, buffer: &mut [u8]) -> std::io::Result<()> {
        let fd = self.socket.get_ref().as_raw_fd();
        match receive_one(fd, buffer)? {
            Received::Notification { from, len } => {
                match parse_notification(&buffer[..len]) {
                    Ok(Notification::AssocChange {
                        state,
                        error,
                        assoc_id,
                    }) => self.on_assoc_change(state, error, assoc_id, from),
                    Ok(Notification::Other(kind)) => {
                        debug!("kernel SCTP notification {kind:#06x} ignored")
                    }
                    Err(reason) => warn!("kernel SCTP: malformed notification: {reason}"),
                }
                Ok(())
            }
            Received::Data {
                info,
                end_of_record,
                len,
            } => {
                let Some(info) = info else {
                    warn!("kernel SCTP: message without SCTP_RCVINFO dropped");
                    return Ok(());
                };
                self.on_data(info, end_of_record, &buffer[..len]);
                Ok(())
            }
        }
    }

    fn on_data(&mut self, info: ReceiveInfo, end_of_record: bool, data: &[u8]) {
        let max = self.config.max_message_size;
        let Some(entry) = self.entries.get_mut(&info.assoc_id) else {
            debug!(
                "kernel SCTP: data for unknown association {}",
                info.assoc_id
            );
            return;
        };
        if entry.partial.len() + data.len() > max {
            warn!(
                "kernel SCTP: message above {max} bytes on association {}; aborting it",
                info.assoc_id
            );
            entry.partial.clear();
            entry.closing_locally = true;
            self.send_queue
                .push_front((info.assoc_id, Outgoing::Abort, Bytes::new(), 0));
            self.finish(
                info.assoc_id,
                Event::Failed(FailureReason::Error(format!(
                    "received a message larger than {max} bytes"
                ))),
            );
            return;
        }
        entry.partial.extend_from_slice(data);
        if !end_of_record {
            return;
        }
        let payload = entry.partial.split().freeze();
        entry.outbox.push_back(Event::Message(Message {
            stream: info.stream,
            ppid: info.ppid,
            unordered: info.unordered,
            reliability: Reliability::Reliable,
            payload,
        }));
        flush_outbox(entry);
    }

    fn on_assoc_change(&mut self, state: u16, error: u16, assoc_id: i32, from: Option<SocketAddr>) {
        match state {
            SCTP_COMM_UP => self.on_up(assoc_id, from),
            SCTP_RESTART => {
                if let Some(entry) = self.entries.get_mut(&assoc_id) {
                    entry.outbox.push_back(Event::Restarted);
                    flush_outbox(entry);
                }
            }
            SCTP_SHUTDOWN_COMP => {
                let local = self
                    .entries
                    .get(&assoc_id)
                    .is_some_and(|e| e.closing_locally);
                let reason = if local {
                    DownReason::Local
                } else {
                    DownReason::Shutdown
                };
                self.finish(assoc_id, Event::Down(reason));
            }
            SCTP_COMM_LOST => {
                let local = self
                    .entries
                    .get(&assoc_id)
                    .is_some_and(|e| e.closing_locally);
                let event = if local {
                    Event::Down(DownReason::Local)
                } else if error != 0 {
                    Event::Down(DownReason::Aborted)
                } else {
                    Event::Failed(FailureReason::PeerUnreachable)
                };
                self.finish(assoc_id, event);
            }
            SCTP_CANT_STR_ASSOC => {
                if let Some(pending) = self.take_pending_connect(from) {
                    let _ = pending
                        .reply
                        .send(Err(TransportError::ConnectFailed(format!(
                            "association with {} could not be established (error {error})",
                            pending.remote
                        ))));
                }
            }
            other => debug!("kernel SCTP: association state {other} ignored"),
        }
    }

    fn on_up(&mut self, assoc_id: i32, from: Option<SocketAddr>) {
        let Some(commands) = self.weak_commands.upgrade() else {
            return;
        };
        let remote = from.unwrap_or_else(|| (Ipv4Addr::UNSPECIFIED, 0).into());
        let pending = self.take_pending_connect(from);
        if pending.is_none() && self.accept_tx.is_none() {
            // A connect that timed out came up late, or an INIT reached a client socket.
            self.send_queue
                .push_front((assoc_id, Outgoing::Abort, Bytes::new(), 0));
            return;
        }
        let shared = Arc::new(Shared {
            assoc_id,
            send_budget: Semaphore::new(self.config.send_buffer_bytes),
            closed: AtomicBool::new(false),
            receive_stalled: AtomicBool::new(false),
        });
        let (events_tx, events_rx) = mpsc::channel(self.config.receive_queue_len.max(1));
        let handle = Association {
            remote: pending.as_ref().map_or(remote, |p| p.remote),
            events: events_rx,
            sender: AssociationSender {
                inner: SenderInner::KernelSctp(KernelSender {
                    shared: shared.clone(),
                    commands,
                    max_message_size: self.config.max_message_size,
                    send_buffer_bytes: self.config.send_buffer_bytes,
                }),
            },
        };
        let mut entry = Entry {
            shared,
            events: events_tx,
            outbox: VecDeque::new(),
            partial: BytesMut::new(),
            closing_locally: false,
        };
        entry.outbox.push_back(Event::Up);
        flush_outbox(&mut entry);
        self.entries.insert(assoc_id, entry);
        if let Some(pending) = pending {
            // A caller that gave up waiting drops the handle, which closes the association.
            let _ = pending.reply.send(Ok(handle));
            return;
        }
        if let Some(accept_tx) = &self.accept_tx
            && accept_tx.try_send(handle).is_err()
        {
            warn!("dropping kernel SCTP association from {remote}: nobody accepts");
        }
    }

    /// The pending connect a notification is about: by the peer address the kernel puts in
    /// `msg_name`; without one, the only pending connect (a client socket has one).
    fn take_pending_connect(&mut self, from: Option<SocketAddr>) -> Option<PendingConnect> {
        let index = match from {
            Some(from) => self
                .pending_connects
                .iter()
                .position(|p| same_peer(p.remote, from)),
            None if self.pending_connects.len() == 1 => Some(0),
            None => None,
        }?;
        Some(self.pending_connects.remove(index))
    }

    /// Reports the last event of an association and forgets it.
    fn finish(&mut self, assoc_id: i32, last_event: Event) {
        let Some(mut entry) = self.entries.remove(&assoc_id) else {
            return;
        };
        entry.shared.closed.store(true, Ordering::Release);
        entry.shared.send_budget.close();
        entry.outbox.push_back(last_event);
        // The application may be behind; the rest goes out as it reads, from its own task,
        // because the driver no longer tracks this association.
        if !flush_outbox(&mut entry) {
            return;
        }
        tokio::spawn(async move {
            while let Some(event) = entry.outbox.pop_front() {
                if entry.events.send(event).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Moves queued events into the application's channel; true while some remain.
fn flush_outbox(entry: &mut Entry) -> bool {
    while let Some(event) = entry.outbox.pop_front() {
        match entry.events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => {
                entry.outbox.clear();
                return false;
            }
            Err(mpsc::error::TrySendError::Full(event)) => {
                entry.outbox.push_front(event);
                entry.shared.receive_stalled.store(true, Ordering::Release);
                // The application may have taken an event in between: try once more, so
                // that a wake-up request cannot be lost.
                if let Some(event) = entry.outbox.pop_front() {
                    match entry.events.try_send(event) {
                        Ok(()) => continue,
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            entry.outbox.clear();
                            return false;
                        }
                        Err(mpsc::error::TrySendError::Full(event)) => {
                            entry.outbox.push_front(event)
                        }
                    }
                }
                return true;
            }
        }
    }
    false
}
