//! ASAP associations with pool elements and users: accepting them, one
//! task per association pumping messages between the transport and the
//! core, and the associations we open to PEs adopted in a takeover.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use protocol::rserpool::{ASAP_SCTP_PPID, TransportKind as AsapTransportKind};
use tokio::sync::{mpsc, watch};
use transport::{Association, Endpoint, Event, TransportKind};

use crate::enrp::HomeKeepAlive;
use crate::handlespace::AssocId;

use super::Input;

/// Messages queued for one association's writer before it counts as stuck.
const OUTBOUND_QUEUE: usize = 1024;

pub(super) async fn accept_loop(
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
pub(super) async fn run_association(
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
pub(super) async fn reach_adopted_pe(
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
pub(super) async fn pump_association(
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
