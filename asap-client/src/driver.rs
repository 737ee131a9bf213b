//! Thin tokio drivers: run [`PoolElement`] and [`PoolUser`] over the
//! `transport` crate.
//!
//! Each driver is one task that owns its state machine and feeds it three
//! things: association events from the registrars, commands from its handle,
//! and its timer. Every association gets a reader task that forwards events
//! tagged with the registrar index and a generation number, so events of an
//! association the state machine already gave up on are dropped.
//!
//! With [`AnnounceListenConfig`] the driver also owns a UDP socket on the
//! Server Announce address (RSPLIB's 239.0.0.50:3863 by default) and feeds
//! its datagrams to a [`ServerTable`]; the registrars learnt there join the
//! state machine's hunt through `Input::Registrars`.
//!
//! ASAP messages travel on stream 0 with PPID
//! [`protocol::rserpool::ASAP_SCTP_PPID`] (11); over TCP the transport's
//! framing carries the PPID too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{Context, anyhow};
use policies::{PeId, PolicyParams};
use protocol::rserpool::{ASAP_SCTP_PPID, PoolHandle};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use transport::{AssociationSender, Event, TransportKind};

use crate::RegistrarIndex;
use crate::clock::{self, sleep_until};
use crate::pool_element::{Input as PeInput, Output as PeOutput, RegistrationFailure};
use crate::pool_element::{MemberCredentials, PeState, PoolElement, PoolElementConfig};
use crate::pool_user::{CacheMiss, PoolElementInfo, PoolUser, PoolUserConfig};
use crate::pool_user::{Input as PuInput, Output as PuOutput, ResolutionError};
use crate::server_table::{AnnounceOutcome, ServerTable, ServerTableConfig};

/// How to reach a registrar. UDP is never used towards registrars (working
/// group decision): SCTP (over UDP, RFC 6951, or the kernel's) or TCP only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrarTransport {
    /// SCTP over UDP: `addr` is the registrar's UDP socket, `sctp_port` the
    /// SCTP port inside (its listening SCTP port).
    SctpOverUdp {
        /// Destination SCTP port.
        sctp_port: u16,
    },
    /// Length-framed messages over TCP.
    Tcp,
    /// The kernel's own SCTP (Linux `sctp` module): what RSPLIB's
    /// registrar speaks where it is built on the kernel (Debian's
    /// `rsplib-registrar`). Fails at connect time on a host without it.
    KernelSctp,
}

/// One entry of the static registrar list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrarAddress {
    /// Socket address (UDP for SCTP over UDP, TCP otherwise).
    pub addr: SocketAddr,
    /// Transport and its parameters.
    pub transport: RegistrarTransport,
}

/// "tcp:HOST:PORT", "sctp:HOST:PORT" (SCTP over UDP, SCTP port = UDP
/// port), "sctp:HOST:SCTP_PORT/udp=UDP_PORT" (SCTP over UDP with the two
/// ports apart, e.g. RSPLIB's sctplib registrar: SCTP port 3863 inside UDP
/// 9899) or "kernel-sctp:HOST:PORT" (the host kernel's SCTP): the notation
/// of every registrar list in poolflow's configs.
impl std::str::FromStr for RegistrarAddress {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        const FORMS: &str = "tcp:HOST:PORT, sctp:HOST:PORT, sctp:HOST:SCTP_PORT/udp=UDP_PORT or kernel-sctp:HOST:PORT";
        let (kind, rest) = text
            .split_once(':')
            .ok_or_else(|| anyhow!("`{text}`: expected {FORMS}"))?;
        let (addr, udp_port) = match rest.split_once('/') {
            None => (rest, None),
            Some((addr, option)) => {
                let port = option
                    .strip_prefix("udp=")
                    .ok_or_else(|| anyhow!("`{text}`: `/{option}` is not `/udp=PORT`"))?;
                let port: u16 = port
                    .parse()
                    .map_err(|e| anyhow!("`{text}`: UDP port `{port}` ({e})"))?;
                anyhow::ensure!(
                    kind == "sctp",
                    "`{text}`: `/udp=` is for SCTP over UDP (sctp:) only"
                );
                (addr, Some(port))
            }
        };
        let addr: SocketAddr = addr
            .parse()
            .map_err(|e| anyhow!("`{text}`: `{addr}` is not an address:port ({e})"))?;
        match kind {
            "tcp" => Ok(Self::tcp(addr)),
            "sctp" => Ok(match udp_port {
                None => Self::sctp_over_udp(addr),
                Some(udp_port) => Self {
                    addr: SocketAddr::new(addr.ip(), udp_port),
                    transport: RegistrarTransport::SctpOverUdp {
                        sctp_port: addr.port(),
                    },
                },
            }),
            "kernel-sctp" => Ok(Self::kernel_sctp(addr)),
            other => Err(anyhow!(
                "`{text}`: transport `{other}` is none of tcp, sctp, kernel-sctp"
            )),
        }
    }
}

impl RegistrarAddress {
    /// A registrar reached over TCP.
    pub fn tcp(addr: SocketAddr) -> Self {
        Self {
            addr,
            transport: RegistrarTransport::Tcp,
        }
    }

    /// A registrar reached over SCTP over UDP whose SCTP port equals its UDP
    /// port (poolflow's convention: both 3863 for ASAP by default).
    pub fn sctp_over_udp(addr: SocketAddr) -> Self {
        Self {
            addr,
            transport: RegistrarTransport::SctpOverUdp {
                sctp_port: addr.port(),
            },
        }
    }

    /// A registrar reached over the kernel's SCTP (no UDP encapsulation).
    pub fn kernel_sctp(addr: SocketAddr) -> Self {
        Self {
            addr,
            transport: RegistrarTransport::KernelSctp,
        }
    }

    pub(crate) fn transport_config(&self, base: &transport::Config) -> transport::Config {
        let mut config = base.clone();
        match self.transport {
            RegistrarTransport::SctpOverUdp { sctp_port } => {
                config.transport = TransportKind::SctpOverUdp;
                config.sctp_port = sctp_port;
            }
            RegistrarTransport::Tcp => config.transport = TransportKind::Tcp,
            RegistrarTransport::KernelSctp => config.transport = TransportKind::KernelSctp,
        }
        config
    }
}

/// An association event tagged with its registrar and generation.
enum LinkEvent {
    Up(RegistrarIndex, u64, AssociationSender),
    Message(RegistrarIndex, u64, Vec<u8>),
    Down(RegistrarIndex, u64),
}

/// What a current-generation [`LinkEvent`] means to a state machine.
enum LinkInput {
    Up(RegistrarIndex),
    Message(RegistrarIndex, Vec<u8>),
    Down(RegistrarIndex),
}

/// The associations to the registrars of the server table, by slot.
struct Links {
    registrars: Vec<RegistrarAddress>,
    transport: transport::Config,
    senders: Vec<Option<AssociationSender>>,
    generations: Vec<u64>,
    events_tx: mpsc::Sender<LinkEvent>,
}

impl Links {
    fn new(
        registrars: Vec<RegistrarAddress>,
        transport: transport::Config,
    ) -> (Self, mpsc::Receiver<LinkEvent>) {
        let (events_tx, events_rx) = mpsc::channel(256);
        let count = registrars.len();
        let links = Self {
            registrars,
            transport,
            senders: vec![None; count],
            generations: vec![0; count],
            events_tx,
        };
        (links, events_rx)
    }

    /// Points `slot` at `address`: a new slot (the next one) for a newly
    /// announced registrar, or an expired one the table reused. A reused
    /// slot's association, if any, is closed and reported down like any
    /// other, so a state machine still using it hunts instead of talking
    /// to a registrar that is no longer there.
    fn set_address(&mut self, slot: RegistrarIndex, address: RegistrarAddress) {
        if slot == self.registrars.len() {
            self.registrars.push(address);
            self.senders.push(None);
            self.generations.push(0);
        } else {
            self.close(slot);
            self.registrars[slot] = address;
            let _ = self
                .events_tx
                .try_send(LinkEvent::Down(slot, self.generations[slot]));
        }
    }

    fn connect(&mut self, registrar: RegistrarIndex) {
        self.close(registrar);
        let generation = self.generations[registrar];
        let address = self.registrars[registrar];
        let config = address.transport_config(&self.transport);
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            let mut association = match transport::connect(config, address.addr).await {
                Ok(association) => association,
                Err(error) => {
                    tracing::info!(registrar, addr = %address.addr, %error, "ASAP: connect failed");
                    let _ = events.send(LinkEvent::Down(registrar, generation)).await;
                    return;
                }
            };
            loop {
                let event = match association.recv().await {
                    Some(Event::Up) => LinkEvent::Up(registrar, generation, association.sender()),
                    Some(Event::Message(message)) if message.ppid == ASAP_SCTP_PPID => {
                        LinkEvent::Message(registrar, generation, message.payload.to_vec())
                    }
                    Some(Event::Message(message)) => {
                        tracing::debug!(ppid = message.ppid, "ASAP: non-ASAP message dropped");
                        continue;
                    }
                    Some(Event::Restarted) => continue,
                    Some(Event::Down(_)) | Some(Event::Failed(_)) | None => {
                        let _ = events.send(LinkEvent::Down(registrar, generation)).await;
                        return;
                    }
                };
                if events.send(event).await.is_err() {
                    return; // Driver gone; dropping the association closes it.
                }
            }
        });
    }

    fn close(&mut self, registrar: RegistrarIndex) {
        self.generations[registrar] += 1;
        if let Some(sender) = self.senders[registrar].take() {
            sender.close();
        }
    }

    async fn send(&self, registrar: RegistrarIndex, bytes: Vec<u8>) {
        let Some(sender) = &self.senders[registrar] else {
            tracing::warn!(registrar, "ASAP: send without an association, dropped");
            return;
        };
        let message = transport::Message::new(0, ASAP_SCTP_PPID, bytes);
        if let Err(error) = sender.send(message).await {
            // The reader task reports the association's end on its own.
            tracing::info!(registrar, %error, "ASAP: send failed");
        }
    }

    /// Filters out events of closed generations; keeps the sender of a
    /// fresh association.
    fn accept(&mut self, event: LinkEvent) -> Option<LinkInput> {
        match event {
            LinkEvent::Up(registrar, generation, sender) => {
                if generation != self.generations[registrar] {
                    sender.close();
                    return None;
                }
                self.senders[registrar] = Some(sender);
                Some(LinkInput::Up(registrar))
            }
            LinkEvent::Message(registrar, generation, bytes) => (generation
                == self.generations[registrar])
                .then_some(LinkInput::Message(registrar, bytes)),
            LinkEvent::Down(registrar, generation) => {
                if generation != self.generations[registrar] {
                    return None;
                }
                self.senders[registrar] = None;
                // A later Down of this generation must not count again.
                self.generations[registrar] += 1;
                Some(LinkInput::Down(registrar))
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Server Announces
// ---------------------------------------------------------------------------

/// Where and how a PE or PU listens for ASAP Server Announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceListenConfig {
    /// A multicast group and port (joined on the interface the kernel's
    /// route to the group picks), or a unicast address to bind.
    pub address: SocketAddr,
    /// What the server table accepts from announces.
    pub table: ServerTableConfig,
}

impl AnnounceListenConfig {
    /// The default of the daemons' `announce_sctp` key.
    pub fn default_sctp() -> String {
        "sctp".into()
    }

    /// The default of the daemons' `announce_lifetime` key: five of the
    /// registrars' default announce intervals.
    pub fn default_lifetime() -> std::time::Duration {
        std::time::Duration::from_secs(5)
    }

    /// From the daemons' config keys, the same in the collector's `[pool]`
    /// and the exporter's stream config: `announce_listen` ("239.0.0.50:3863";
    /// `None`: no listener), `announce_sctp` (how announced SCTP transports
    /// are reached: "sctp" for SCTP over UDP, "kernel-sctp", or "none" to
    /// skip them) and `announce_lifetime` (how long an announced registrar
    /// stays a candidate without a new announce).
    pub fn from_keys(
        announce_listen: Option<&str>,
        announce_sctp: &str,
        announce_lifetime: std::time::Duration,
    ) -> anyhow::Result<Option<Self>> {
        announce_listen
            .map(|address| Self::parse(address, announce_sctp, announce_lifetime))
            .transpose()
            .context("in `announce_listen` / `announce_sctp` / `announce_lifetime`")
    }

    fn parse(
        address: &str,
        sctp: &str,
        entry_lifetime: std::time::Duration,
    ) -> anyhow::Result<Self> {
        let address: SocketAddr = address
            .parse()
            .map_err(|e| anyhow!("`{address}` is not an address:port ({e})"))?;
        let sctp = match sctp {
            "sctp" => Some(crate::server_table::AnnouncedSctp::OverUdp),
            "kernel-sctp" => Some(crate::server_table::AnnouncedSctp::Kernel),
            "none" => None,
            other => anyhow::bail!("`{other}` is none of sctp, kernel-sctp, none"),
        };
        anyhow::ensure!(
            !entry_lifetime.is_zero(),
            "the announced registrars' lifetime must be positive"
        );
        Ok(Self {
            address,
            table: ServerTableConfig {
                entry_lifetime,
                sctp,
                ..ServerTableConfig::default()
            },
        })
    }
}

/// The announce socket and the table it feeds.
struct Announces {
    socket: tokio::net::UdpSocket,
    table: ServerTable,
    buffer: Vec<u8>,
}

impl Announces {
    fn bind(
        config: Option<AnnounceListenConfig>,
        static_count: usize,
    ) -> anyhow::Result<Option<Self>> {
        let Some(config) = config else {
            return Ok(None);
        };
        let socket = transport::multicast::bind_receiver(config.address)
            .with_context(|| format!("listening for Server Announces on {}", config.address))?;
        tracing::info!(address = %config.address, "ASAP: listening for Server Announces");
        Ok(Some(Self {
            socket,
            table: ServerTable::new(config.table, static_count),
            // Larger than any announce worth reading; longer ones are cut
            // and then refused as malformed.
            buffer: vec![0; 65_536],
        }))
    }

    /// Handles one datagram; the new candidate list if it changed.
    fn on_datagram(
        &mut self,
        len: usize,
        source: SocketAddr,
        links: &mut Links,
    ) -> Option<Vec<bool>> {
        let now = clock::now();
        match self.table.on_announce(now, &self.buffer[..len], source) {
            Ok(outcome) => {
                metrics::counter!("poolflow_asap_server_announces_total", "outcome" => "accepted")
                    .increment(1);
                let slot = outcome.slot();
                let registrar = *self.table.announced(slot)?;
                if matches!(outcome, AnnounceOutcome::Learned(_)) {
                    links.set_address(slot, registrar.address);
                }
                if !outcome.changes_candidates() {
                    return None;
                }
                tracing::info!(
                    slot,
                    %source,
                    server_identifier = format_args!("{:#010x}", registrar.server_identifier),
                    addr = %registrar.address.addr,
                    transport = ?registrar.address.transport,
                    from_source_address = registrar.from_source_address,
                    "ASAP: registrar learnt from its Server Announce"
                );
                Some(self.table.availability(now))
            }
            Err(error) => {
                metrics::counter!("poolflow_asap_server_announces_total", "outcome" => error.reason())
                    .increment(1);
                tracing::warn!(%source, reason = error.reason(), %error, "ASAP: Server Announce refused");
                None
            }
        }
    }
}

/// Receives the next announce datagram; never returns without a socket.
async fn next_announce(announces: &mut Option<Announces>) -> std::io::Result<(usize, SocketAddr)> {
    match announces {
        Some(announces) => announces.socket.recv_from(&mut announces.buffer).await,
        None => std::future::pending().await,
    }
}

/// What a received announce datagram (or a socket error) changes: the new
/// availability of the registrar slots, if the candidates changed.
fn on_announce_received(
    announces: &mut Option<Announces>,
    received: std::io::Result<(usize, SocketAddr)>,
    links: &mut Links,
) -> Option<Vec<bool>> {
    let table = announces.as_mut()?;
    match received {
        Ok((len, source)) => table.on_datagram(len, source, links),
        Err(error) => {
            tracing::warn!(%error, "ASAP: Server Announce socket error");
            None
        }
    }
}

/// When the next announced registrar expires, if any.
fn announce_expiry(announces: &Option<Announces>) -> Option<Instant> {
    announces
        .as_ref()
        .and_then(|a| a.table.poll_timeout(clock::now()))
}

// ---------------------------------------------------------------------------
// Pool element
// ---------------------------------------------------------------------------

/// What [`spawn_pool_element`] needs.
#[derive(Debug, Clone)]
pub struct PoolElementDriverConfig {
    /// The PE; its `registrar_count` is set from `registrars`.
    pub pool_element: PoolElementConfig,
    /// The static registrar list, in hunt order.
    pub registrars: Vec<RegistrarAddress>,
    /// Transport settings (timers); kind and SCTP port come per registrar.
    pub transport: transport::Config,
    /// Also learn registrars from Server Announces.
    pub announce_listen: Option<AnnounceListenConfig>,
}

/// Registration status of a running PE, as [`PoolElementHandle`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeStatus {
    /// Connecting / registering / hunting for a registrar.
    Registering,
    /// Registered; this registrar is home.
    Registered {
        /// Home registrar.
        registrar: RegistrarIndex,
    },
    /// The registration was rejected; the driver stopped.
    Rejected(RegistrationFailure),
    /// Deregistered (or never registered) at shutdown; the driver stopped.
    Deregistered {
        /// The registrar confirmed the deregistration.
        confirmed: bool,
    },
}

/// Handle of a running PE driver. Dropping it deregisters too, but only
/// [`PoolElementHandle::shutdown`] waits for that.
pub struct PoolElementHandle {
    shutdown_tx: Option<oneshot::Sender<()>>,
    /// Policy and membership updates (PE inputs from the daemon).
    policy_tx: mpsc::UnboundedSender<PeInput>,
    status: watch::Receiver<PeStatus>,
    task: JoinHandle<PeStatus>,
}

impl PoolElementHandle {
    /// Current status.
    pub fn status(&self) -> PeStatus {
        self.status.borrow().clone()
    }

    /// A receiver of status changes (e.g. for metrics or readiness).
    pub fn subscribe(&self) -> watch::Receiver<PeStatus> {
        self.status.clone()
    }

    /// Waits until registered (returns the home registrar) or rejected.
    pub async fn wait_registered(&mut self) -> anyhow::Result<RegistrarIndex> {
        let status = self
            .status
            .wait_for(|s| !matches!(s, PeStatus::Registering))
            .await
            .map_err(|_| anyhow!("pool element driver stopped"))?
            .clone();
        match status {
            PeStatus::Registered { registrar } => Ok(registrar),
            PeStatus::Rejected(failure) => Err(failure.into()),
            other => Err(anyhow!("pool element not registered: {other:?}")),
        }
    }

    /// Registers new policy parameters (same policy type) at once, e.g. a
    /// lower priority so pool users drain away before maintenance.
    pub fn update_policy(&self, policy: PolicyParams) {
        let _ = self.policy_tx.send(PeInput::UpdatePolicy(policy));
    }

    /// Attaches new membership credentials (a reissued certificate) and
    /// re-registers with them at once when registered.
    pub fn update_membership(&self, membership: Option<MemberCredentials>) {
        let _ = self
            .policy_tx
            .send(PeInput::UpdateMembership(membership.map(Box::new)));
    }

    /// Deregisters (bounded by the T3-deregistration timeout), closes the
    /// association and returns the final status.
    pub async fn shutdown(mut self) -> anyhow::Result<PeStatus> {
        if let Some(tx) = self.shutdown_tx.take() {
            let _ = tx.send(());
        }
        (&mut self.task)
            .await
            .context("pool element driver task failed")
    }
}

/// Starts a PE driver: connects to the first registrar and registers.
/// Fails on a configuration the PE cannot run with
/// ([`ConfigError`](crate::pool_element::ConfigError)) or an
/// announce address it cannot listen on. Must run inside a tokio runtime.
pub fn spawn_pool_element(config: PoolElementDriverConfig) -> anyhow::Result<PoolElementHandle> {
    let mut pe_config = config.pool_element;
    pe_config.registrar_count = config.registrars.len();
    pe_config.registrars_announced = config.announce_listen.is_some();
    let pool_element = PoolElement::new(pe_config)?;
    let announces = Announces::bind(config.announce_listen, config.registrars.len())?;
    let (links, events) = Links::new(config.registrars, config.transport);
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let (policy_tx, policy_rx) = mpsc::unbounded_channel();
    let (status_tx, status) = watch::channel(PeStatus::Registering);
    let task = tokio::spawn(run_pool_element(
        pool_element,
        links,
        announces,
        events,
        shutdown_rx,
        policy_rx,
        status_tx,
    ));
    Ok(PoolElementHandle {
        shutdown_tx: Some(shutdown_tx),
        policy_tx,
        status,
        task,
    })
}

async fn run_pool_element(
    mut pe: PoolElement,
    mut links: Links,
    mut announces: Option<Announces>,
    mut events: mpsc::Receiver<LinkEvent>,
    mut shutdown_rx: oneshot::Receiver<()>,
    mut policy_rx: mpsc::UnboundedReceiver<PeInput>,
    status_tx: watch::Sender<PeStatus>,
) -> PeStatus {
    if let Some(last) = step_pool_element(&mut pe, &mut links, &status_tx, PeInput::Start).await {
        return last;
    }
    let mut shutdown_requested = false;
    loop {
        let expiry = announce_expiry(&announces);
        let input = tokio::select! {
            event = events.recv() => {
                // `links` holds a sender, so the channel never closes.
                let Some(event) = event else { continue };
                match links.accept(event) {
                    Some(LinkInput::Up(r)) => PeInput::AssociationUp(r),
                    Some(LinkInput::Message(r, bytes)) => PeInput::Message(r, bytes),
                    Some(LinkInput::Down(r)) => PeInput::AssociationDown(r),
                    None => continue,
                }
            }
            // A dropped handle (Err) also means: leave the pool.
            _ = &mut shutdown_rx, if !shutdown_requested => {
                shutdown_requested = true;
                PeInput::Shutdown
            }
            Some(update) = policy_rx.recv() => update,
            () = sleep_until(pe.poll_timeout()) => PeInput::Timer,
            received = next_announce(&mut announces) => {
                match on_announce_received(&mut announces, received, &mut links) {
                    Some(available) => PeInput::Registrars(available),
                    None => continue,
                }
            }
            () = sleep_until(expiry) => {
                let Some(table) = announces.as_ref() else { continue };
                PeInput::Registrars(table.table.availability(clock::now()))
            }
        };
        if let Some(last) = step_pool_element(&mut pe, &mut links, &status_tx, input).await {
            return last;
        }
    }
}

/// Feeds one input and carries out the outputs; `Some(final status)` once
/// the PE has stopped.
async fn step_pool_element(
    pe: &mut PoolElement,
    links: &mut Links,
    status_tx: &watch::Sender<PeStatus>,
    input: PeInput,
) -> Option<PeStatus> {
    let now = clock::now();
    // Membership proofs are stamped with Unix time; a clock before 1970 is
    // taken as 1970 (the registrar then refuses the stale proof).
    pe.set_wall_clock(
        now,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    for output in pe.on_event(now, input) {
        match output {
            PeOutput::Connect { registrar } => links.connect(registrar),
            PeOutput::Send { registrar, bytes } => links.send(registrar, bytes).await,
            PeOutput::Close { registrar } => links.close(registrar),
            PeOutput::Registered { registrar } => {
                tracing::info!(registrar, "ASAP PE registered");
                status_tx.send_replace(PeStatus::Registered { registrar });
            }
            PeOutput::RegistrationFailed { cause } => {
                tracing::error!(%cause, "ASAP PE registration rejected");
                status_tx.send_replace(PeStatus::Rejected(cause.clone()));
                return Some(PeStatus::Rejected(cause));
            }
            PeOutput::Deregistered { confirmed } => {
                tracing::info!(confirmed, "ASAP PE deregistered");
                let status = PeStatus::Deregistered { confirmed };
                status_tx.send_replace(status.clone());
                return Some(status);
            }
        }
    }
    if !matches!(
        pe.state(),
        PeState::Registered { .. } | PeState::Deregistering { .. }
    ) {
        // Lost the registrar: hunting until registered again.
        status_tx.send_if_modified(|status| {
            let changed = matches!(status, PeStatus::Registered { .. });
            if changed {
                *status = PeStatus::Registering;
            }
            changed
        });
    }
    None
}

// ---------------------------------------------------------------------------
// Pool user
// ---------------------------------------------------------------------------

/// What [`PoolUserClient::new`] needs.
#[derive(Debug, Clone)]
pub struct PoolUserDriverConfig {
    /// The PU; its `registrar_count` is set from `registrars`.
    pub pool_user: PoolUserConfig,
    /// The static registrar list, in hunt order.
    pub registrars: Vec<RegistrarAddress>,
    /// Transport settings (timers); kind and SCTP port come per registrar.
    pub transport: transport::Config,
    /// Also learn registrars from Server Announces.
    pub announce_listen: Option<AnnounceListenConfig>,
}

type Reply<T> = oneshot::Sender<T>;

enum PuCommand {
    Resolve(
        PoolHandle,
        Reply<Result<Vec<PoolElementInfo>, ResolutionError>>,
    ),
    Refresh(PoolHandle),
    Report(PoolHandle, PeId),
    Select(
        PoolHandle,
        usize,
        Reply<Result<Vec<PoolElementInfo>, CacheMiss>>,
    ),
    FailBack(PoolHandle, PeId, Reply<Option<PeId>>),
}

/// Client of a PU driver task. Cheap to clone; the task ends when the last
/// clone is dropped.
#[derive(Clone)]
pub struct PoolUserClient {
    commands: mpsc::Sender<PuCommand>,
}

impl PoolUserClient {
    /// Starts the PU driver task. Registrars are connected on first use.
    pub fn new(config: PoolUserDriverConfig) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !config.registrars.is_empty() || config.announce_listen.is_some(),
            "no registrars configured and none to be learnt from Server Announces"
        );
        let mut pu_config = config.pool_user;
        pu_config.registrar_count = config.registrars.len();
        pu_config.registrars_announced = config.announce_listen.is_some();
        let pool_user = PoolUser::new(pu_config);
        let announces = Announces::bind(config.announce_listen, config.registrars.len())?;
        let (links, events) = Links::new(config.registrars, config.transport);
        let (commands, commands_rx) = mpsc::channel(64);
        tokio::spawn(run_pool_user(
            pool_user,
            links,
            announces,
            events,
            commands_rx,
        ));
        Ok(Self { commands })
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> PuCommand) -> anyhow::Result<T> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| anyhow!("pool user driver stopped"))?;
        rx.await.map_err(|_| anyhow!("pool user driver stopped"))
    }

    /// The PEs of a pool: from the PU cache while fresh, else from a
    /// registrar (with server hunt).
    pub async fn resolve(
        &mut self,
        pool_handle: &PoolHandle,
    ) -> anyhow::Result<Vec<PoolElementInfo>> {
        let handle = pool_handle.clone();
        Ok(self
            .call(|reply| PuCommand::Resolve(handle, reply))
            .await??)
    }

    /// Like [`resolve`](Self::resolve) but always asks a registrar (for the
    /// failback poll while not on the top-priority PE).
    pub async fn refresh(
        &mut self,
        pool_handle: &PoolHandle,
    ) -> anyhow::Result<Vec<PoolElementInfo>> {
        self.commands
            .send(PuCommand::Refresh(pool_handle.clone()))
            .await
            .map_err(|_| anyhow!("pool user driver stopped"))?;
        self.resolve(pool_handle).await
    }

    /// Drops the PE from the cache and sends Endpoint Unreachable to the
    /// registrar (queued until an association is up; fire and forget).
    pub async fn report_unreachable(
        &mut self,
        pool_handle: &PoolHandle,
        pe_id: PeId,
    ) -> anyhow::Result<()> {
        self.commands
            .send(PuCommand::Report(pool_handle.clone(), pe_id))
            .await
            .map_err(|_| anyhow!("pool user driver stopped"))
    }

    /// Selects up to `max` PEs by the pool's policy, resolving first when
    /// the cache entry is missing or stale.
    pub async fn select(
        &mut self,
        pool_handle: &PoolHandle,
        max: usize,
    ) -> anyhow::Result<Vec<PoolElementInfo>> {
        let handle = pool_handle.clone();
        match self
            .call(|reply| PuCommand::Select(handle.clone(), max, reply))
            .await?
        {
            Ok(chosen) => return Ok(chosen),
            Err(CacheMiss::Empty) => {
                // Every cached PE was reported dead: ask again.
                self.refresh(pool_handle).await?;
            }
            Err(CacheMiss::NotCached | CacheMiss::Stale) => {
                self.resolve(pool_handle).await?;
            }
        }
        Ok(self
            .call(|reply| PuCommand::Select(handle, max, reply))
            .await??)
    }

    /// Preferred Primary failback check on the cached list.
    pub async fn should_fail_back(
        &mut self,
        pool_handle: &PoolHandle,
        current_pe: PeId,
    ) -> anyhow::Result<Option<PeId>> {
        let handle = pool_handle.clone();
        self.call(|reply| PuCommand::FailBack(handle, current_pe, reply))
            .await
    }
}

type ResolveWaiters =
    HashMap<PoolHandle, Vec<Reply<Result<Vec<PoolElementInfo>, ResolutionError>>>>;

async fn run_pool_user(
    mut pu: PoolUser,
    mut links: Links,
    mut announces: Option<Announces>,
    mut events: mpsc::Receiver<LinkEvent>,
    mut commands: mpsc::Receiver<PuCommand>,
) {
    let mut waiters: ResolveWaiters = HashMap::new();
    loop {
        let expiry = announce_expiry(&announces);
        let input = tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { return };
                match command {
                    PuCommand::Resolve(handle, reply) => {
                        waiters.entry(handle.clone()).or_default().push(reply);
                        PuInput::Resolve(handle)
                    }
                    PuCommand::Refresh(handle) => {
                        pu.invalidate(clock::now(), &handle);
                        continue;
                    }
                    PuCommand::Report(pool_handle, pe_id) => {
                        PuInput::ReportUnreachable { pool_handle, pe_id }
                    }
                    PuCommand::Select(handle, max, reply) => {
                        let _ = reply.send(pu.select(clock::now(), &handle, max));
                        continue;
                    }
                    PuCommand::FailBack(handle, current, reply) => {
                        let _ = reply.send(pu.should_fail_back(&handle, current));
                        continue;
                    }
                }
            }
            event = events.recv() => {
                let Some(event) = event else { continue };
                match links.accept(event) {
                    Some(LinkInput::Up(r)) => PuInput::AssociationUp(r),
                    Some(LinkInput::Message(r, bytes)) => PuInput::Message(r, bytes),
                    Some(LinkInput::Down(r)) => PuInput::AssociationDown(r),
                    None => continue,
                }
            }
            () = sleep_until(pu.poll_timeout()) => PuInput::Timer,
            received = next_announce(&mut announces) => {
                match on_announce_received(&mut announces, received, &mut links) {
                    Some(available) => PuInput::Registrars(available),
                    None => continue,
                }
            }
            () = sleep_until(expiry) => {
                let Some(table) = announces.as_ref() else { continue };
                PuInput::Registrars(table.table.availability(clock::now()))
            }
        };
        for output in pu.on_event(clock::now(), input) {
            match output {
                PuOutput::Connect { registrar } => links.connect(registrar),
                PuOutput::Send { registrar, bytes } => links.send(registrar, bytes).await,
                PuOutput::Close { registrar } => links.close(registrar),
                PuOutput::Resolved {
                    pool_handle,
                    pool_elements,
                    ..
                } => {
                    for reply in waiters.remove(&pool_handle).unwrap_or_default() {
                        let _ = reply.send(Ok(pool_elements.clone()));
                    }
                }
                PuOutput::ResolutionFailed { pool_handle, error } => {
                    for reply in waiters.remove(&pool_handle).unwrap_or_default() {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrar_addresses_name_their_transport() {
        let addr: SocketAddr = "192.0.2.2:3863".parse().unwrap();
        assert_eq!(
            "sctp:192.0.2.2:3863".parse::<RegistrarAddress>().unwrap(),
            RegistrarAddress::sctp_over_udp(addr)
        );
        assert_eq!(
            "tcp:192.0.2.2:3863".parse::<RegistrarAddress>().unwrap(),
            RegistrarAddress::tcp(addr)
        );
        let kernel = "kernel-sctp:192.0.2.2:3863"
            .parse::<RegistrarAddress>()
            .unwrap();
        assert_eq!(kernel, RegistrarAddress::kernel_sctp(addr));
        let config = kernel.transport_config(&transport::Config::default());
        assert_eq!(config.transport, TransportKind::KernelSctp);
        // SCTP port and UDP encapsulation port apart (RSPLIB's sctplib).
        let split = "sctp:192.0.2.2:3863/udp=9899"
            .parse::<RegistrarAddress>()
            .unwrap();
        assert_eq!(split.addr, "192.0.2.2:9899".parse().unwrap());
        assert_eq!(
            split.transport,
            RegistrarTransport::SctpOverUdp { sctp_port: 3863 }
        );
        let config = split.transport_config(&transport::Config::default());
        assert_eq!(config.sctp_port, 3863);
        assert!(
            "sctp:192.0.2.2:3863/udp="
                .parse::<RegistrarAddress>()
                .is_err()
        );
        assert!(
            "sctp:192.0.2.2:3863/tcp=1"
                .parse::<RegistrarAddress>()
                .is_err()
        );
        assert!(
            "tcp:192.0.2.2:3863/udp=9899"
                .parse::<RegistrarAddress>()
                .is_err()
        );
        assert!(
            "sctp:192.0.2.2:3863/udp=70000"
                .parse::<RegistrarAddress>()
                .is_err()
        );
        assert!("udp:192.0.2.2:3863".parse::<RegistrarAddress>().is_err());
        assert!("kernel:192.0.2.2:3863".parse::<RegistrarAddress>().is_err());
    }
}
