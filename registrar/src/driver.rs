//! The thin tokio driver around the sans-IO [`Server`]: listeners, one task
//! per association, one core task that owns the server (so the handlespace
//! needs no lock), the Server Announce socket and the HTTP status endpoint.
//!
//! Framing note: over TCP the transport crate wraps every ASAP message in its
//! own 12-byte frame header (length, stream, flags, PPID). Wireshark's ASAP
//! dissector on TCP 3863 expects bare ASAP messages, so it will not decode
//! this stream; over SCTP-over-UDP (`tshark -d udp.port==3863,sctp`) the
//! messages are plain SCTP DATA with PPID 11 and decode as ASAP.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use protocol::rserpool::{
    ASAP_SCTP_PPID, ENRP_PORT, ENRP_SCTP_PPID, PoolHandle, TransportAddress,
    TransportKind as AsapTransportKind, TransportUse,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use transport::{Association, Endpoint, Event, TransportKind};

use crate::config::RegistrarConfig;
use crate::enrp::{Enrp, HomeKeepAlive, Outgoing};
use crate::handlespace::AssocId;
use crate::server::{Action, Server, Status};

/// Messages queued for one association's writer before it counts as stuck.
const OUTBOUND_QUEUE: usize = 1024;
/// Largest HTTP request head the status endpoint reads.
const MAX_HTTP_REQUEST: usize = 8 * 1024;
/// ENRP messages queued for one peer; beyond that they are dropped (ENRP
/// is soft state: the next Presence and the audit repair any loss).
const ENRP_PEER_QUEUE: usize = 1024;

enum Input {
    Up {
        assoc: AssocId,
        remote: SocketAddr,
        outbound: mpsc::Sender<Vec<u8>>,
    },
    Message {
        assoc: AssocId,
        message: transport::Message,
    },
    Down {
        assoc: AssocId,
    },
    /// We opened an ASAP association to a PE we adopted in a takeover;
    /// `keep_alive` (Endpoint Keep Alive, H=1) is to go out on it.
    AdoptedPeReached {
        assoc: AssocId,
        pool_handle: PoolHandle,
        pe_identifier: u32,
        keep_alive: Vec<u8>,
    },
    /// An ENRP message from a peer registrar.
    Enrp {
        from: SocketAddr,
        payload: Vec<u8>,
    },
    /// A datagram from the ENRP announce group.
    EnrpMulticast {
        from: SocketAddr,
        payload: Vec<u8>,
    },
    Status(oneshot::Sender<Status>),
}

/// A running registrar.
pub struct Registrar {
    /// Bound TCP listener, if enabled.
    pub tcp_addr: Option<SocketAddr>,
    /// Bound SCTP-over-UDP socket, if enabled.
    pub sctp_over_udp_addr: Option<SocketAddr>,
    /// Bound kernel SCTP socket, if enabled.
    pub kernel_sctp_addr: Option<SocketAddr>,
    /// Bound HTTP status endpoint, if enabled.
    pub status_addr: Option<SocketAddr>,
    /// Bound ENRP listener, if ENRP is enabled.
    pub enrp_addr: Option<SocketAddr>,
    /// The server identifier in use.
    pub server_id: u32,
    inputs: mpsc::Sender<Input>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Registrar {
    /// Binds every configured listener and starts serving. `metrics` is the
    /// Prometheus handle whose rendering `/metrics` serves (the binary
    /// installs the recorder; in-process tests pass `None`).
    pub async fn start(
        config: RegistrarConfig,
        metrics: Option<PrometheusHandle>,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        let server_id = match config.server_id {
            0 => rand::random::<u32>().max(1),
            id => id,
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (inputs, inputs_rx) = mpsc::channel::<Input>(4096);
        let next_assoc = Arc::new(AtomicU64::new(1));
        let mut tasks = Vec::new();

        let mut transport_config = if config.transport.fast_failure_detection {
            transport::Config::fast_failure_detection(TransportKind::Tcp)
        } else {
            transport::Config {
                heartbeat_interval: config.transport.heartbeat_interval,
                ..if config.transport.lan_retransmission {
                    transport::Config::lan_retransmission(TransportKind::Tcp)
                } else {
                    transport::Config::default()
                }
            }
        };
        transport_config.sctp_port = config.listen.sctp_port;

        let mut tcp_addr = None;
        if !config.listen.tcp.is_empty() {
            let local: SocketAddr = config.listen.tcp.parse()?;
            let endpoint = Endpoint::bind(
                transport::Config {
                    transport: TransportKind::Tcp,
                    ..transport_config.clone()
                },
                local,
            )
            .await
            .with_context(|| format!("binding ASAP/TCP on {local}"))?;
            tcp_addr = Some(endpoint.local_addr());
            tasks.push(tokio::spawn(accept_loop(
                endpoint,
                inputs.clone(),
                next_assoc.clone(),
                shutdown_rx.clone(),
            )));
        }
        let mut sctp_over_udp_addr = None;
        if !config.listen.sctp_over_udp.is_empty() {
            let local: SocketAddr = config.listen.sctp_over_udp.parse()?;
            let endpoint = Endpoint::bind(
                transport::Config {
                    transport: TransportKind::SctpOverUdp,
                    ..transport_config.clone()
                },
                local,
            )
            .await
            .with_context(|| format!("binding ASAP/SCTP-over-UDP on {local}"))?;
            sctp_over_udp_addr = Some(endpoint.local_addr());
            tasks.push(tokio::spawn(accept_loop(
                endpoint,
                inputs.clone(),
                next_assoc.clone(),
                shutdown_rx.clone(),
            )));
        }
        let mut kernel_sctp_addr = None;
        if !config.listen.kernel_sctp.is_empty() {
            let local: SocketAddr = config.listen.kernel_sctp.parse()?;
            let endpoint = Endpoint::bind(
                transport::Config {
                    transport: TransportKind::KernelSctp,
                    ..transport_config.clone()
                },
                local,
            )
            .await
            .with_context(|| format!("binding ASAP/kernel SCTP on {local}"))?;
            kernel_sctp_addr = Some(endpoint.local_addr());
            tasks.push(tokio::spawn(accept_loop(
                endpoint,
                inputs.clone(),
                next_assoc.clone(),
                shutdown_rx.clone(),
            )));
        }
        let mut status_addr = None;
        if !config.listen.status.is_empty() {
            let local: SocketAddr = config.listen.status.parse()?;
            let listener = TcpListener::bind(local)
                .await
                .with_context(|| format!("binding the status endpoint on {local}"))?;
            status_addr = Some(listener.local_addr()?);
            tasks.push(tokio::spawn(serve_status(
                listener,
                inputs.clone(),
                metrics,
                shutdown_rx.clone(),
            )));
        }

        let mut enrp_addr = None;
        let mut enrp = None;
        if config.enrp.enabled {
            let local: SocketAddr = config.enrp.listen.parse()?;
            let kind = match config.enrp.transport.as_str() {
                "tcp" => TransportKind::Tcp,
                "kernel-sctp" => TransportKind::KernelSctp,
                _ => TransportKind::SctpOverUdp,
            };
            let enrp_transport = transport::Config {
                transport: kind,
                sctp_port: if local.port() == 0 {
                    ENRP_PORT
                } else {
                    local.port()
                },
                ..enrp_transport_config(&transport_config, &config.enrp)
            };
            let endpoint = Endpoint::bind(enrp_transport.clone(), local)
                .await
                .with_context(|| format!("binding ENRP on {local}"))?;
            let bound = endpoint.local_addr();
            enrp_addr = Some(bound);
            // Outbound ENRP associations leave from the ENRP port itself: RSPLIB takes a
            // peer's addresses from its Presence and refuses one whose association comes
            // from elsewhere ("no usable ENRP endpoint addresses").
            let connector = config
                .enrp
                .connect_from_listen_port
                .then(|| endpoint.connector(&enrp_transport));
            let inbound: InboundEnrp = Arc::default();
            tasks.push(tokio::spawn(enrp_accept_loop(
                endpoint,
                inputs.clone(),
                inbound.clone(),
                shutdown_rx.clone(),
            )));
            let advertised: SocketAddr = if config.enrp.advertise.is_empty() {
                bound
            } else {
                config.enrp.advertise.parse()?
            };
            let server_limits = config.server_config(server_id)?.decode_limits;
            let mut enrp_config = config.enrp.enrp_config(server_id, server_limits)?;
            enrp_config.advertised = Some(crate::enrp::transport_of(advertised));
            match &enrp_config.auth {
                None => tracing::warn!(
                    "ENRP without authentication: any host that reaches the ENRP port can \
                     change the handlespace or take PEs over (RFC 5355); set \
                     enrp.auth_key_file (docs/enrp-security.md)"
                ),
                Some(auth) if auth.accept_unsigned => tracing::warn!(
                    "enrp.auth_accept_unsigned is on: unsigned ENRP is accepted (migration only)"
                ),
                Some(auth) => tracing::info!(
                    key_id = auth.key_id,
                    accepted_keys = auth.accepted_keys.len(),
                    "ENRP messages are signed and checked"
                ),
            }
            let links = PeerLinks {
                connector,
                transport: enrp_transport,
                inbound,
                connect_timeout: enrp_config.max_time_no_response,
                links: HashMap::new(),
                inputs: inputs.clone(),
                shutdown: shutdown_rx.clone(),
                asap_transport: transport_config.clone(),
                // A registrar that speaks ASAP over kernel SCTP only (next to RSPLIB
                // built on the kernel) reaches adopted SCTP PEs the same way.
                adopted_sctp: if config.listen.sctp_over_udp.is_empty()
                    && !config.listen.kernel_sctp.is_empty()
                {
                    TransportKind::KernelSctp
                } else {
                    TransportKind::SctpOverUdp
                },
                next_assoc: next_assoc.clone(),
            };
            enrp = Some((Enrp::new(enrp_config, std::time::Instant::now()), links));
        }
        let enrp_multicast = if config.enrp.enabled && config.enrp.multicast {
            let group: SocketAddr = config.enrp.multicast_address.parse()?;
            let receiver = transport::multicast::bind_receiver(group)
                .with_context(|| format!("enrp.multicast_address {group}"))?;
            let sender = transport::multicast::bind_sender(group, config.enrp.multicast_ttl)
                .await
                .with_context(|| format!("enrp.multicast_address {group}"))?;
            tasks.push(tokio::spawn(enrp_multicast_receive_loop(
                receiver,
                inputs.clone(),
                shutdown_rx.clone(),
            )));
            tracing::info!(%group, "ENRP: Presence on the announce group, peers learnt from it");
            Some(EnrpMulticast {
                group,
                socket: sender,
                interval: config.enrp.peer_heartbeat_cycle,
            })
        } else {
            None
        };

        let mut server_config = config.server_config(server_id)?;
        server_config.announce_transports = announce_transports(&config, tcp_addr)?;
        let announcer = if config.announce.enabled {
            Some(Announcer::new(&config).await?)
        } else {
            None
        };
        let mut server = Server::new(server_config, std::time::Instant::now());
        if enrp.is_some() {
            server.track_home_changes();
        }
        tasks.push(tokio::spawn(core_loop(
            server,
            enrp,
            enrp_multicast,
            inputs_rx,
            announcer,
            shutdown_rx,
        )));
        tracing::info!(
            server_id = format_args!("{server_id:#010x}"),
            ?tcp_addr,
            ?sctp_over_udp_addr,
            ?kernel_sctp_addr,
            ?status_addr,
            ?enrp_addr,
            "registrar running"
        );
        Ok(Self {
            tcp_addr,
            sctp_over_udp_addr,
            kernel_sctp_addr,
            status_addr,
            enrp_addr,
            server_id,
            inputs,
            shutdown,
            tasks,
        })
    }

    /// A snapshot of the handlespace.
    pub async fn status(&self) -> anyhow::Result<Status> {
        let (reply, answer) = oneshot::channel();
        self.inputs
            .send(Input::Status(reply))
            .await
            .map_err(|_| anyhow::anyhow!("registrar stopped"))?;
        Ok(answer.await?)
    }

    /// Stops listening, closes every association and waits for the tasks.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

async fn accept_loop(
    mut endpoint: Endpoint,
    inputs: mpsc::Sender<Input>,
    next_assoc: Arc<AtomicU64>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = endpoint.accept() => {
                let Some(association) = accepted else { break };
                let assoc = next_assoc.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(run_association(assoc, association, inputs.clone(), shutdown.clone()));
            }
            _ = shutdown.changed() => break,
        }
    }
}

/// Pumps one association: its messages into the core, the core's messages out.
async fn run_association(
    assoc: AssocId,
    association: Association,
    inputs: mpsc::Sender<Input>,
    shutdown: watch::Receiver<bool>,
) {
    let (outbound, outbound_rx) = mpsc::channel::<Vec<u8>>(OUTBOUND_QUEUE);
    let remote = association.remote_addr();
    tracing::debug!(assoc, %remote, "association up");
    if inputs
        .send(Input::Up {
            assoc,
            remote,
            outbound,
        })
        .await
        .is_err()
    {
        return;
    }
    pump_association(assoc, association, outbound_rx, inputs, shutdown).await;
}

/// Opens an ASAP association to a PE we adopted in a takeover and sends it
/// the Endpoint Keep Alive with the Home flag (RFC 5353 takeover procedure); from then on
/// the PE lives on that association like one that registered with us. If
/// it cannot be reached, nothing happens: the adoption grace applies.
async fn reach_adopted_pe(
    assoc: AssocId,
    home_keep_alive: HomeKeepAlive,
    config: transport::Config,
    sctp: TransportKind,
    inputs: mpsc::Sender<Input>,
    shutdown: watch::Receiver<bool>,
) {
    let HomeKeepAlive {
        pool_handle,
        pe_identifier,
        asap_transport,
        payload,
    } = home_keep_alive;
    let Some(transport) = asap_transport else {
        return;
    };
    let kind = match transport.kind {
        AsapTransportKind::Sctp(_) => sctp,
        AsapTransportKind::Tcp(_) => TransportKind::Tcp,
        _ => {
            tracing::info!(
                pe = format_args!("{pe_identifier:#010x}"),
                "adopted PE's ASAP transport is neither SCTP nor TCP: not reachable"
            );
            return;
        }
    };
    let Some(&ip) = transport.addresses.first() else {
        return;
    };
    let to = SocketAddr::new(ip, transport.port);
    let config = transport::Config {
        transport: kind,
        sctp_port: transport.port,
        ..config
    };
    let connect_timeout = config.connect_timeout;
    let association =
        match tokio::time::timeout(connect_timeout, transport::connect(config, to)).await {
            Ok(Ok(association)) => association,
            Ok(Err(error)) => {
                tracing::info!(
                    pe = format_args!("{pe_identifier:#010x}"),
                    %to,
                    %error,
                    "adopted PE unreachable for the Home Keep Alive"
                );
                return;
            }
            Err(_) => {
                tracing::info!(
                    pe = format_args!("{pe_identifier:#010x}"),
                    %to,
                    "connecting to an adopted PE timed out"
                );
                return;
            }
        };
    let (outbound, outbound_rx) = mpsc::channel::<Vec<u8>>(OUTBOUND_QUEUE);
    let up = Input::Up {
        assoc,
        remote: to,
        outbound,
    };
    let reached = Input::AdoptedPeReached {
        assoc,
        pool_handle,
        pe_identifier,
        keep_alive: payload,
    };
    if inputs.send(up).await.is_err() || inputs.send(reached).await.is_err() {
        return;
    }
    pump_association(assoc, association, outbound_rx, inputs, shutdown).await;
}

/// Carries one ASAP association's messages both ways until it ends.
async fn pump_association(
    assoc: AssocId,
    mut association: Association,
    mut outbound_rx: mpsc::Receiver<Vec<u8>>,
    inputs: mpsc::Sender<Input>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            event = association.recv() => match event {
                Some(Event::Message(message)) => {
                    // ENRP or other protocols do not belong on the ASAP port.
                    if message.ppid != ASAP_SCTP_PPID && message.ppid != 0 {
                        tracing::debug!(assoc, ppid = message.ppid, "dropping non-ASAP message");
                        continue;
                    }
                    if inputs.send(Input::Message { assoc, message }).await.is_err() {
                        break;
                    }
                }
                Some(Event::Up | Event::Restarted) => {}
                Some(Event::Down(reason)) => {
                    tracing::debug!(assoc, ?reason, "association down");
                    break;
                }
                Some(Event::Failed(reason)) => {
                    tracing::info!(assoc, ?reason, "association failed");
                    break;
                }
                None => break,
            },
            payload = outbound_rx.recv() => {
                // `None`: the core dropped our sender, i.e. asked us to close:
                // a misbehaving peer, or a PE dropped on a keep-alive timeout.
                // ABORT, not SHUTDOWN: a PE that is alive after all (a lossy
                // path delayed its Keep Alive Ack) learns now that it must
                // register again, where a graceful close can hang on the very
                // messages in flight and leave it out of the handlespace until
                // its next re-registration (nemesis seed 11: 24 s).
                let Some(payload) = payload else {
                    association.sender().abort();
                    break;
                };
                let message = transport::Message::new(0, ASAP_SCTP_PPID, payload);
                if association.send(message).await.is_err() {
                    break;
                }
            }
            _ = shutdown.changed() => {
                // Our own shutdown is no reason to delete the PE: with ENRP
                // that would be announced to the peers, which are meant to
                // take the PEs over instead.
                association.close();
                return;
            }
        }
    }
    association.close();
    let _ = inputs.send(Input::Down { assoc }).await;
}

async fn core_loop(
    mut server: Server,
    mut enrp: Option<(Enrp, PeerLinks)>,
    enrp_multicast: Option<EnrpMulticast>,
    mut inputs: mpsc::Receiver<Input>,
    announcer: Option<Announcer>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut outbound: HashMap<AssocId, mpsc::Sender<Vec<u8>>> = HashMap::new();
    // The first multicast Presence goes out at once.
    let mut next_multicast_presence = enrp_multicast.as_ref().map(|_| std::time::Instant::now());
    loop {
        let mut next = server.next_deadline();
        if let Some((peering, _)) = &enrp {
            let at = peering.next_deadline();
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        if let Some(at) = next_multicast_presence {
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        let deadline = next
            .map(Instant::from_std)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let mut enrp_out: Vec<Outgoing> = Vec::new();
        let actions = tokio::select! {
            input = inputs.recv() => {
                let Some(input) = input else { break };
                let now = std::time::Instant::now();
                // Membership proofs (closed pools) are checked in Unix time.
                server.set_wall_clock(now, std::time::Duration::from_micros(unix_us()));
                match input {
                    Input::Up { assoc, remote, outbound: sender } => {
                        outbound.insert(assoc, sender);
                        server.on_association_up(now, assoc, Some(remote));
                        Vec::new()
                    }
                    Input::Message { assoc, message } => {
                        server.on_message(now, assoc, &message.payload)
                    }
                    Input::Down { assoc } => {
                        outbound.remove(&assoc);
                        server.on_association_down(assoc);
                        Vec::new()
                    }
                    Input::AdoptedPeReached { assoc, pool_handle, pe_identifier, keep_alive } => {
                        if server.attach_adopted_element(now, &pool_handle, pe_identifier, assoc) {
                            vec![Action::Send { assoc, payload: keep_alive }]
                        } else {
                            // Re-registered somewhere meanwhile: not ours to supervise.
                            vec![Action::Close { assoc }]
                        }
                    }
                    Input::Enrp { from, payload } => {
                        if let Some((peering, _)) = &mut enrp {
                            peering.set_wall_clock(now, unix_us());
                            enrp_out = peering.on_message(now, from, &payload, &mut server);
                        }
                        Vec::new()
                    }
                    Input::EnrpMulticast { from, payload } => {
                        if let Some((peering, _)) = &mut enrp {
                            peering.set_wall_clock(now, unix_us());
                            enrp_out = peering.on_multicast(now, from, &payload, &mut server);
                        }
                        Vec::new()
                    }
                    Input::Status(reply) => {
                        let mut status = server.status(now);
                        status.enrp = enrp.as_ref().map(|(peering, _)| peering.status(now, &server));
                        let _ = reply.send(status);
                        Vec::new()
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                let now = std::time::Instant::now();
                server.set_wall_clock(now, std::time::Duration::from_micros(unix_us()));
                let actions = server.on_timer(now);
                if let Some((peering, _)) = &mut enrp {
                    peering.set_wall_clock(now, unix_us());
                    enrp_out = peering.on_timer(now, &mut server);
                    if let (Some(at), Some(multicast)) = (next_multicast_presence, &enrp_multicast)
                        && now >= at
                    {
                        let presence = peering.multicast_presence(now, multicast.group, &server);
                        if let Some(payload) = presence {
                            multicast.send(&payload).await;
                        }
                        next_multicast_presence = Some(now + multicast.interval);
                    }
                }
                actions
            }
            _ = shutdown.changed() => break,
        };
        if let Some((peering, links)) = &mut enrp {
            let changes = server.take_home_changes();
            if !changes.is_empty() {
                // Handle Updates are signed with the time they leave.
                peering.set_wall_clock(std::time::Instant::now(), unix_us());
                enrp_out.extend(peering.on_home_changes(changes));
            }
            for message in enrp_out {
                links.send(message);
            }
            for home_keep_alive in peering.take_home_keep_alives() {
                links.reach_adopted(home_keep_alive);
            }
        }
        for action in actions {
            match action {
                Action::Send { assoc, payload } => {
                    let Some(sender) = outbound.get(&assoc) else {
                        continue;
                    };
                    if sender.try_send(payload).is_err() {
                        // A peer that does not read its messages gets cut off
                        // rather than stalling the whole registrar.
                        tracing::warn!(assoc, "outbound queue full: closing association");
                        outbound.remove(&assoc);
                    }
                }
                Action::Close { assoc } => {
                    outbound.remove(&assoc);
                }
                Action::Announce { payload } => {
                    if let Some(announcer) = &announcer {
                        announcer.send(&payload).await;
                    }
                }
            }
        }
    }
}

/// The wall clock for ENRP signatures: microseconds since the Unix epoch.
fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
        })
}

/// Accepts ENRP associations from peer registrars; their messages go to the
/// core tagged with the sending socket (replies go to the peer's advertised
/// address over our own link, see [`PeerLinks`]).
async fn enrp_accept_loop(
    mut endpoint: Endpoint,
    inputs: mpsc::Sender<Input>,
    inbound: InboundEnrp,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = endpoint.accept() => {
                let Some(association) = accepted else { break };
                tokio::spawn(run_enrp_association(
                    association,
                    inputs.clone(),
                    inbound.clone(),
                    shutdown.clone(),
                ));
            }
            _ = shutdown.changed() => break,
        }
    }
}

async fn run_enrp_association(
    mut association: Association,
    inputs: mpsc::Sender<Input>,
    inbound: InboundEnrp,
    mut shutdown: watch::Receiver<bool>,
) {
    let from = association.remote_addr();
    let (own, mut replies) = mpsc::channel(ENRP_PEER_QUEUE);
    inbound
        .lock()
        .expect("inbound ENRP map")
        .insert(from, own.clone());
    tracing::debug!(%from, "ENRP association up");
    loop {
        tokio::select! {
            payload = replies.recv() => {
                let Some(payload) = payload else { break };
                let message = transport::Message::new(0, ENRP_SCTP_PPID, payload);
                if association.send(message).await.is_err() {
                    tracing::debug!(%from, "ENRP reply on the peer's association failed");
                    break;
                }
            }
            event = association.recv() => match event {
                Some(Event::Message(message)) => {
                    if !forward_enrp(&inputs, from, message).await {
                        break;
                    }
                }
                Some(Event::Up | Event::Restarted) => {}
                Some(Event::Down(_) | Event::Failed(_)) | None => break,
            },
            _ = shutdown.changed() => break,
        }
    }
    {
        let mut inbound = inbound.lock().expect("inbound ENRP map");
        // A newer association from the same address may have replaced ours.
        if inbound
            .get(&from)
            .is_some_and(|sender| sender.same_channel(&own))
        {
            inbound.remove(&from);
        }
    }
    association.close();
}

/// The queues of the ENRP associations peers opened to us, by remote address: replies
/// to their requests, and anything else for that address, go back on them.
type InboundEnrp = Arc<std::sync::Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>;

/// Hands one ENRP message to the core; `false` once the core is gone.
async fn forward_enrp(
    inputs: &mpsc::Sender<Input>,
    from: SocketAddr,
    message: transport::Message,
) -> bool {
    if message.ppid != ENRP_SCTP_PPID && message.ppid != 0 {
        tracing::debug!(%from, ppid = message.ppid, "dropping non-ENRP message on the ENRP port");
        return true;
    }
    inputs
        .send(Input::Enrp {
            from,
            payload: message.payload.to_vec(),
        })
        .await
        .is_ok()
}

/// The transport settings of ENRP associations: the ASAP ones, with path
/// supervision on the ENRP timers. A peer registrar that restarted never
/// answers our old association to it (its new endpoint drops the
/// out-of-the-blue packets), and with the ASAP settings (RTO.Max 60 s) that
/// association would take minutes to fail while our Presences go into it
/// and the restarted peer never hears from us. Bounded by
/// PEER-HEARTBEAT-CYCLE and MAX-TIME-NO-RESPONSE, it fails within a few
/// times MAX-TIME-NO-RESPONSE and the next message opens a new one.
fn enrp_transport_config(
    asap: &transport::Config,
    enrp: &crate::config::EnrpSettings,
) -> transport::Config {
    let no_response = enrp.max_time_no_response;
    transport::Config {
        heartbeat_interval: asap.heartbeat_interval.min(enrp.peer_heartbeat_cycle),
        rto_initial: asap.rto_initial.min(no_response),
        rto_min: asap.rto_min.min(no_response),
        rto_max: asap.rto_max.min(no_response),
        max_association_retransmissions: asap.max_association_retransmissions.min(4),
        max_path_retransmissions: asap.max_path_retransmissions.min(2),
        ..asap.clone()
    }
}

/// Our outgoing ENRP associations, one per peer address, each run by a
/// task that connects on demand and reconnects after a failure.
struct PeerLinks {
    /// Opens associations from the ENRP listener's socket (its port is the one we
    /// advertise).
    /// `enrp.connect_from_listen_port`; `None`: a fresh socket per peer link.
    connector: Option<transport::Connector>,
    transport: transport::Config,
    inbound: InboundEnrp,
    connect_timeout: Duration,
    links: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    inputs: mpsc::Sender<Input>,
    shutdown: watch::Receiver<bool>,
    /// ASAP transport settings for reaching adopted PEs.
    asap_transport: transport::Config,
    /// How to reach an adopted PE whose ASAP transport is SCTP: kernel SCTP when
    /// the registrar's only SCTP listener is the kernel's, else SCTP over UDP.
    adopted_sctp: TransportKind,
    /// Association ids are shared with the ASAP listeners.
    next_assoc: Arc<AtomicU64>,
}

impl PeerLinks {
    /// Sends the Home Keep Alive of a takeover to an adopted PE that gave
    /// an ASAP transport (in its own task: connecting may take a while).
    fn reach_adopted(&self, home_keep_alive: HomeKeepAlive) {
        if home_keep_alive.asap_transport.is_none() {
            return;
        }
        let assoc = self.next_assoc.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(reach_adopted_pe(
            assoc,
            home_keep_alive,
            self.asap_transport.clone(),
            self.adopted_sctp,
            self.inputs.clone(),
            self.shutdown.clone(),
        ));
    }

    fn send(&mut self, message: Outgoing) {
        // A peer's own association first: a reply goes back where the request came from,
        // and we never open a second association to an address that has one to us (one
        // socket cannot tell two associations with one remote address apart).
        if !message.reconnect {
            let inbound = self.inbound.lock().expect("inbound ENRP map");
            let queue = message
                .reply_on
                .and_then(|from| inbound.get(&from))
                .or_else(|| inbound.get(&message.to))
                .filter(|queue| !queue.is_closed());
            if let Some(queue) = queue {
                if queue.try_send(message.payload).is_err() {
                    tracing::debug!(to = %message.to, "ENRP queue to peer full: message dropped");
                }
                return;
            }
        }
        if message.reconnect && self.links.remove(&message.to).is_some() {
            // Dropping the queue's sender ends the old link's task, which
            // closes its association.
            tracing::debug!(to = %message.to, "ENRP peer was dead: new association");
        }
        let link = self.links.entry(message.to).or_insert_with(|| {
            let (sender, queue) = mpsc::channel(ENRP_PEER_QUEUE);
            tokio::spawn(run_peer_link(
                message.to,
                self.connector.clone(),
                transport::Config {
                    // Convention: the peer's SCTP port is its UDP port.
                    sctp_port: message.to.port(),
                    ..self.transport.clone()
                },
                self.connect_timeout,
                queue,
                self.inputs.clone(),
                self.shutdown.clone(),
            ));
            sender
        });
        if link.try_send(message.payload).is_err() {
            tracing::debug!(to = %message.to, "ENRP queue to peer full: message dropped");
        }
    }
}

async fn run_peer_link(
    to: SocketAddr,
    connector: Option<transport::Connector>,
    config: transport::Config,
    connect_timeout: Duration,
    mut queue: mpsc::Receiver<Vec<u8>>,
    inputs: mpsc::Sender<Input>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut association: Option<Association> = None;
    loop {
        tokio::select! {
            payload = queue.recv() => {
                let Some(payload) = payload else { break };
                if association.is_none() {
                    match tokio::time::timeout(connect_timeout, connect_link(connector.as_ref(), &config, to)).await {
                        Ok(Ok(connected)) => {
                            tracing::debug!(%to, "ENRP link up");
                            association = Some(connected);
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%to, %error, "ENRP peer unreachable: message dropped");
                            continue;
                        }
                        Err(_) => {
                            tracing::debug!(%to, "ENRP connect timed out: message dropped");
                            continue;
                        }
                    }
                }
                let message = transport::Message::new(0, ENRP_SCTP_PPID, payload);
                if let Some(link) = &association
                    && link.send(message).await.is_err()
                {
                    tracing::debug!(%to, "ENRP link failed");
                    association = None;
                }
            }
            event = next_event(&mut association) => match event {
                Some(Event::Message(message)) => {
                    if !forward_enrp(&inputs, to, message).await {
                        break;
                    }
                }
                Some(Event::Up | Event::Restarted) => {}
                Some(Event::Down(_) | Event::Failed(_)) | None => association = None,
            },
            _ = shutdown.changed() => break,
        }
    }
    if let Some(link) = association {
        link.close();
    }
}

/// Opens a peer link: from the ENRP listener's socket, or from a fresh one.
async fn connect_link(
    connector: Option<&transport::Connector>,
    config: &transport::Config,
    to: SocketAddr,
) -> Result<Association, transport::TransportError> {
    match connector {
        // Convention: the peer's SCTP port is its UDP port.
        Some(connector) => connector.connect_to_port(to, to.port()).await,
        None => transport::connect(config.clone(), to).await,
    }
}

/// The next event of an association, or never if there is none.
async fn next_event(association: &mut Option<Association>) -> Option<Event> {
    match association {
        Some(link) => link.recv().await,
        None => std::future::pending().await,
    }
}

/// Our side of the ENRP announce group: where and how often our Presence
/// goes (the receiving socket has its own task).
struct EnrpMulticast {
    group: SocketAddr,
    socket: UdpSocket,
    interval: Duration,
}

impl EnrpMulticast {
    async fn send(&self, payload: &[u8]) {
        if let Err(error) = self.socket.send_to(payload, self.group).await {
            tracing::debug!(group = %self.group, %error, "multicast ENRP Presence not sent");
        }
    }
}

/// Hands every datagram of the ENRP announce group to the core.
async fn enrp_multicast_receive_loop(
    socket: UdpSocket,
    inputs: mpsc::Sender<Input>,
    mut shutdown: watch::Receiver<bool>,
) {
    // A Presence is small; a longer datagram is cut and then refused as
    // malformed by the core.
    let mut buffer = vec![0; 65_536];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buffer) => match received {
                Ok((len, from)) => {
                    let input = Input::EnrpMulticast { from, payload: buffer[..len].to_vec() };
                    if inputs.send(input).await.is_err() {
                        break;
                    }
                }
                Err(error) => tracing::warn!(%error, "ENRP announce group: receive failed"),
            },
            _ = shutdown.changed() => break,
        }
    }
}

/// Sends Server Announces over UDP (multicast or unicast).
struct Announcer {
    socket: UdpSocket,
    destinations: Vec<SocketAddr>,
}

impl Announcer {
    async fn new(config: &RegistrarConfig) -> anyhow::Result<Self> {
        let destinations = config
            .announce
            .addresses
            .iter()
            .map(|a| {
                a.parse::<SocketAddr>()
                    .with_context(|| format!("announce address {a:?}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let ipv6 = destinations.first().is_some_and(SocketAddr::is_ipv6);
        let socket = UdpSocket::bind(if ipv6 { "[::]:0" } else { "0.0.0.0:0" }).await?;
        if !ipv6 {
            socket.set_multicast_ttl_v4(config.announce.multicast_ttl)?;
        }
        Ok(Self {
            socket,
            destinations,
        })
    }

    async fn send(&self, payload: &[u8]) {
        for destination in &self.destinations {
            if let Err(error) = self.socket.send_to(payload, destination).await {
                tracing::debug!(%destination, %error, "server announce not sent");
            }
        }
    }
}

/// Transports advertised in Server Announces: the configured ones, else the
/// TCP listener if it has a specific address (a wildcard address tells a
/// pool user nothing; the announce's source address then does).
fn announce_transports(
    config: &RegistrarConfig,
    tcp_addr: Option<SocketAddr>,
) -> anyhow::Result<Vec<TransportAddress>> {
    if config.announce.transports.is_empty() {
        return Ok(tcp_addr
            .filter(|addr| !addr.ip().is_unspecified())
            .map(|addr| TransportAddress {
                kind: AsapTransportKind::Tcp(TransportUse::DataPlusControl),
                port: addr.port(),
                addresses: vec![addr.ip()],
            })
            .into_iter()
            .collect());
    }
    config
        .announce
        .transports
        .iter()
        .map(|text| parse_transport(text))
        .collect()
}

/// Parses "tcp:ADDRESS:PORT" or "sctp:ADDRESS:PORT".
fn parse_transport(text: &str) -> anyhow::Result<TransportAddress> {
    let (protocol, address) = text
        .split_once(':')
        .with_context(|| format!("announce transport {text:?} is not PROTOCOL:ADDRESS:PORT"))?;
    let address: SocketAddr = address
        .parse()
        .with_context(|| format!("announce transport {text:?}: bad address"))?;
    let kind = match protocol {
        "tcp" => AsapTransportKind::Tcp(TransportUse::DataPlusControl),
        "sctp" => AsapTransportKind::Sctp(TransportUse::DataPlusControl),
        other => anyhow::bail!("announce transport protocol {other:?} is not tcp or sctp"),
    };
    Ok(TransportAddress {
        kind,
        port: address.port(),
        addresses: vec![address.ip()],
    })
}

async fn serve_status(
    listener: TcpListener,
    inputs: mpsc::Sender<Input>,
    metrics: Option<PrometheusHandle>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let inputs = inputs.clone();
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        status_response(request, inputs.clone(), metrics.clone())
                    });
                    // hyper parses the request (its head is bounded by
                    // MAX_HTTP_REQUEST); a slow or idle client is cut off.
                    let connection = hyper::server::conn::http1::Builder::new()
                        .max_buf_size(MAX_HTTP_REQUEST)
                        .keep_alive(false)
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    match tokio::time::timeout(Duration::from_secs(10), connection).await {
                        Ok(Err(error)) => tracing::debug!(%error, "status request failed"),
                        Err(_) => tracing::debug!("status request timed out"),
                        Ok(Ok(())) => {}
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
}

/// `GET /status` (JSON), `GET /metrics` (Prometheus text), anything else 404.
async fn status_response(
    request: hyper::Request<hyper::body::Incoming>,
    inputs: mpsc::Sender<Input>,
    metrics: Option<PrometheusHandle>,
) -> anyhow::Result<hyper::Response<http_body_util::Full<bytes::Bytes>>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&hyper::Method::GET, "/" | "/status") => {
            let (reply, answer) = oneshot::channel();
            inputs
                .send(Input::Status(reply))
                .await
                .map_err(|_| anyhow::anyhow!("registrar stopped"))?;
            let body = serde_json::to_vec_pretty(&answer.await?)?;
            (hyper::StatusCode::OK, "application/json", body)
        }
        (&hyper::Method::GET, "/metrics") => match &metrics {
            Some(handle) => (
                hyper::StatusCode::OK,
                "text/plain; version=0.0.4",
                handle.render().into_bytes(),
            ),
            None => (
                hyper::StatusCode::NOT_FOUND,
                "text/plain",
                b"metrics not enabled\n".to_vec(),
            ),
        },
        _ => (
            hyper::StatusCode::NOT_FOUND,
            "text/plain",
            b"try /status or /metrics\n".to_vec(),
        ),
    };
    Ok(hyper::Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))?)
}

/// Fetches `/status` from a running registrar (what `registrar dump` does).
pub async fn fetch_status(address: SocketAddr) -> anyhow::Result<Status> {
    let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(address))
        .await
        .context("connecting to the status endpoint timed out")?
        .with_context(|| format!("connecting to {address}"))?;
    stream
        .write_all(b"GET /status HTTP/1.0\r\nHost: registrar\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
        .await
        .context("reading the status timed out")??;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("malformed HTTP response")?;
    let head = String::from_utf8_lossy(&response[..split]);
    anyhow::ensure!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "status endpoint answered: {}",
        head.lines().next().unwrap_or("")
    );
    Ok(serde_json::from_slice(&response[split + 4..])?)
}

/// The IP a wildcard listener is reachable on from this host, for tests and
/// examples (`0.0.0.0` → `127.0.0.1`).
pub fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], addr.port())),
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EnrpSettings;

    /// ENRP associations are supervised on the ENRP timers, so a link to a
    /// restarted peer fails within a few MAX-TIME-NO-RESPONSE, not after
    /// the ASAP settings' minutes (the multi-host nemesis saw a restarted
    /// registrar wait 45 s to rejoin).
    #[test]
    fn enrp_links_are_supervised_on_the_enrp_timers() {
        let asap = transport::Config::default();
        let enrp = EnrpSettings::default();
        let config = enrp_transport_config(&asap, &enrp);
        assert!(config.rto_max <= enrp.max_time_no_response);
        assert!(config.rto_min <= config.rto_max);
        assert!(config.rto_initial <= config.rto_max);
        assert!(config.heartbeat_interval <= enrp.peer_heartbeat_cycle);
        let retransmissions = config
            .max_association_retransmissions
            .min(config.max_path_retransmissions);
        assert!(
            config.rto_max * (retransmissions + 1) <= 3 * enrp.max_time_no_response,
            "a dead link fails within three MAX-TIME-NO-RESPONSE"
        );
        // Sub-second ENRP timers make sub-second supervision.
        let fast = EnrpSettings {
            peer_heartbeat_cycle: Duration::from_millis(300),
            max_time_no_response: Duration::from_millis(500),
            ..EnrpSettings::default()
        };
        let config = enrp_transport_config(&asap, &fast);
        assert_eq!(config.rto_max, Duration::from_millis(500));
        assert_eq!(config.heartbeat_interval, Duration::from_millis(300));
        // The ASAP side keeps its own settings.
        assert_eq!(asap.rto_max, Duration::from_secs(60));
    }
}
