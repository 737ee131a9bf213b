//! ENRP with peer registrars (RFC 5353): the associations peers open to
//! us, our own links to each peer (connected on demand, reconnected after a
//! failure, supervised on the ENRP timers) and the ENRP announce group.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use protocol::rserpool::ENRP_SCTP_PPID;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use transport::{Association, Endpoint, Event, TransportKind};

use crate::enrp::{HomeKeepAlive, Outgoing};

use super::Input;
use super::asap_links::reach_adopted_pe;

/// ENRP messages queued for one peer; beyond that they are dropped (ENRP
/// is soft state: the next Presence and the audit repair any loss).
const ENRP_PEER_QUEUE: usize = 1024;

/// Accepts ENRP associations from peer registrars; their messages go to the
/// core tagged with the sending socket (replies go to the peer's advertised
/// address over our own link, see [`PeerLinks`]).
pub(super) async fn enrp_accept_loop(
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

pub(super) async fn run_enrp_association(
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
pub(super) type InboundEnrp = Arc<std::sync::Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>;

/// Hands one ENRP message to the core; `false` once the core is gone.
pub(super) async fn forward_enrp(
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
pub(super) fn enrp_transport_config(
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
pub(super) struct PeerLinks {
    /// Opens associations from the ENRP listener's socket (its port is the one we
    /// advertise).
    /// `enrp.connect_from_listen_port`; `None`: a fresh socket per peer link.
    pub(super) connector: Option<transport::Connector>,
    pub(super) transport: transport::Config,
    pub(super) inbound: InboundEnrp,
    pub(super) connect_timeout: Duration,
    pub(super) links: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    pub(super) inputs: mpsc::Sender<Input>,
    pub(super) shutdown: watch::Receiver<bool>,
    /// ASAP transport settings for reaching adopted PEs.
    pub(super) asap_transport: transport::Config,
    /// How to reach an adopted PE whose ASAP transport is SCTP: kernel SCTP when
    /// the registrar's only SCTP listener is the kernel's, else SCTP over UDP.
    pub(super) adopted_sctp: TransportKind,
    /// Association ids are shared with the ASAP listeners.
    pub(super) next_assoc: Arc<AtomicU64>,
    /// SCTP over UDP: peers whose UDP encapsulation port is not their SCTP
    /// port (`enrp.peers` with `/udp=`), by ENRP address. Any other peer is
    /// reached at UDP port = SCTP port.
    pub(super) udp_ports: HashMap<SocketAddr, u16>,
}

impl PeerLinks {
    /// Sends the Home Keep Alive of a takeover to an adopted PE that gave
    /// an ASAP transport (in its own task: connecting may take a while).
    pub(super) fn reach_adopted(&self, home_keep_alive: HomeKeepAlive) {
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

    pub(super) fn send(&mut self, message: Outgoing) {
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
            // SCTP over UDP: the datagrams go to the peer's encapsulation
            // port, by convention its SCTP port unless configured apart
            // (the config allows `/udp=` over SCTP over UDP only).
            let udp_port = self.udp_ports.get(&message.to).copied();
            let reach = SocketAddr::new(message.to.ip(), udp_port.unwrap_or(message.to.port()));
            tokio::spawn(run_peer_link(
                message.to,
                reach,
                self.connector.clone(),
                transport::Config {
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

/// One peer's link: `to` is the peer's ENRP address (what the core names),
/// `reach` where its packets go (differs in the UDP port for SCTP over UDP
/// peers configured with `/udp=`).
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_peer_link(
    to: SocketAddr,
    reach: SocketAddr,
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
                    match tokio::time::timeout(connect_timeout, connect_link(connector.as_ref(), &config, reach)).await {
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

/// Opens a peer link to `reach` (SCTP port `config.sctp_port`): from the
/// ENRP listener's socket, or from a fresh one.
pub(super) async fn connect_link(
    connector: Option<&transport::Connector>,
    config: &transport::Config,
    reach: SocketAddr,
) -> Result<Association, transport::TransportError> {
    match connector {
        Some(connector) => connector.connect_to_port(reach, config.sctp_port).await,
        None => transport::connect(config.clone(), reach).await,
    }
}

/// The next event of an association, or never if there is none.
pub(super) async fn next_event(association: &mut Option<Association>) -> Option<Event> {
    match association {
        Some(link) => link.recv().await,
        None => std::future::pending().await,
    }
}

/// Our side of the ENRP announce group: where and how often our Presence
/// goes (the receiving socket has its own task).
pub(super) struct EnrpMulticast {
    pub(super) group: SocketAddr,
    pub(super) socket: UdpSocket,
    pub(super) interval: Duration,
}

impl EnrpMulticast {
    pub(super) async fn send(&self, payload: &[u8]) {
        if let Err(error) = self.socket.send_to(payload, self.group).await {
            tracing::debug!(group = %self.group, %error, "multicast ENRP Presence not sent");
        }
    }
}

/// Hands every datagram of the ENRP announce group to the core.
pub(super) async fn enrp_multicast_receive_loop(
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
