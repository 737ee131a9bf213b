//! The thin tokio driver around the sans-IO [`Server`] and [`Enrp`] cores:
//! this module binds the listeners and runs the core task, which owns both
//! (so the handlespace needs no lock) and carries out their actions. The IO
//! around it, one concern a file:
//!
//! - `asap_links`: ASAP associations with PEs and PUs (RFC 5352), one task
//!   each, and those we open to PEs adopted in a takeover;
//! - `enrp_links`: ENRP associations with peer registrars (RFC 5353), ours
//!   and theirs, and the ENRP announce group;
//! - `announce`: Server Announces to PEs and PUs;
//! - `http`: the `/status` and `/metrics` endpoint and its client;
//! - `metrics`: the cores' counters published to Prometheus at each scrape.
//!
//! Framing note: over TCP the transport crate wraps every ASAP message in its
//! own 12-byte frame header (length, stream, flags, PPID). Wireshark's ASAP
//! dissector on TCP 3863 expects bare ASAP messages, so it will not decode
//! this stream; over SCTP-over-UDP (`tshark -d udp.port==3863,sctp`) the
//! messages are plain SCTP DATA with PPID 11 and decode as ASAP.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use protocol::rserpool::{ENRP_PORT, PoolHandle};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use transport::{Endpoint, TransportKind};

use crate::config::RegistrarConfig;
use crate::enrp::{Enrp, Outgoing};
use crate::handlespace::AssocId;
use crate::server::{Action, Server, Status};

mod announce;
mod asap_links;
mod enrp_links;
mod http;
mod metrics;

use announce::{Announcer, announce_transports};
use asap_links::accept_loop;
use enrp_links::{
    EnrpMulticast, InboundEnrp, PeerLinks, enrp_accept_loop, enrp_multicast_receive_loop,
    enrp_transport_config,
};
pub use http::fetch_status;
use http::serve_status;

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
                udp_ports: config.enrp.peer_udp_ports()?,
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
