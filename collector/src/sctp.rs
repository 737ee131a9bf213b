//! IPFIX over SCTP (RFC 7011 section 10.2), here carried in UDP (RFC 6951)
//! by the `transport` crate. The same sessions serve the transport crate's
//! framed TCP (stream and PPID in every frame) for pool users without SCTP.
//! Each association is one transport session; a message's SCTP stream
//! scopes its sequence numbers (RFC 7011 section 3.1), templates are shared
//! by the association's streams of a domain.
//!
//! This is the driver only: a select loop per association that feeds the
//! sans-IO [`CollectorSession`] (`session.rs`: cookies, replay, graceful
//! stop) and performs its outputs (socket, writer channel, logs, metrics).

use std::sync::Arc;

use protocol::ipfix::SessionConfig;
use protocol::rserpool::ASAP_SCTP_PPID;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn};
use transport::{Association, DownReason, Endpoint, Event};

use crate::batch::Batch;
use crate::billing::{CookieSigner, SharedLedger};
use crate::decode_counts::DecodeMetrics;
use crate::ingest::now_ms;
use crate::listeners::stopped;
use crate::session::{CollectorSession, Input, Now, Output, SessionEvent};

/// Settings of the SCTP listener.
#[derive(Debug, Clone)]
pub struct SctpSettings {
    /// "sctp" or "framed-tcp": the label of logs and metrics.
    pub transport: &'static str,
    /// IPFIX session settings of each association.
    pub session: SessionConfig,
    /// Associations served at once; more are refused.
    pub max_sessions: usize,
    /// Cookie protocol (docs/billing-continuity.md); `None` without a pool key.
    pub billing: Option<BillingContext>,
}

/// What a session needs to take part in the cookie protocol.
#[derive(Debug, Clone)]
pub struct BillingContext {
    /// Signs cookies and checks Cookie Echoes.
    pub signer: CookieSigner,
    /// What the store holds (cookies are issued from it).
    pub ledger: SharedLedger,
    /// Changes after every commit.
    pub committed: watch::Receiver<u64>,
}

/// Accepts associations until `shutdown` turns true, then waits for every
/// session to hand over what it decoded.
pub async fn serve_sctp(
    mut endpoint: Endpoint,
    settings: SctpSettings,
    tx: mpsc::Sender<Batch>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(settings.max_sessions));
    let mut sessions = JoinSet::new();
    loop {
        let association = tokio::select! {
            a = endpoint.accept() => match a {
                Some(a) => a,
                None => break,
            },
            _ = stopped(&mut shutdown) => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
        };
        let peer = association.remote_addr();
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            let transport = settings.transport;
            warn!(%peer, transport, limit = settings.max_sessions, "session limit reached, refusing");
            association.close();
            continue;
        };
        let tx = tx.clone();
        let config = settings.session.clone();
        let billing = settings.billing.clone();
        let shutdown = shutdown.clone();
        let transport = settings.transport;
        sessions.spawn(async move {
            let gauge =
                metrics::gauge!("poolflow_collector_sessions_active", "transport" => transport);
            gauge.increment(1.0);
            info!(%peer, transport, "association (IPFIX transport session) opened");
            let (how, reason) = sctp_session(association, config, billing, tx, shutdown).await;
            metrics::counter!("poolflow_collector_associations_ended_total",
                              "transport" => transport, "how" => how.label())
            .increment(1);
            match how {
                // RFC 9260 9.2: a completed SHUTDOWN delivered everything the
                // peer had sent, and our own close is counted where we decide it.
                Ended::Shutdown | Ended::Local => {
                    info!(%peer, transport, how = how.label(), "association closed: {reason}")
                }
                // An ABORT or a failure can cut off records in flight; whether
                // any were lost only the exporter (or a sequence gap) can tell.
                Ended::Abort | Ended::Failure => warn!(
                    %peer, transport, how = how.label(),
                    "association ended by {}, records in flight may be lost: {reason}",
                    how.label()
                ),
            }
            gauge.decrement(1.0);
            drop(permit);
        });
    }
    while sessions.join_next().await.is_some() {}
}

/// How an association ended: the `how` label of
/// `poolflow_collector_associations_ended_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The peer's graceful SHUTDOWN (TCP: end of stream) completed.
    Shutdown,
    /// The peer (or its stack) sent ABORT (TCP: reset).
    Abort,
    /// Path failure, protocol error or the transport gone.
    Failure,
    /// We closed it (collector stopping, cookie refused, our ABORT).
    Local,
}

impl Ended {
    fn label(self) -> &'static str {
        match self {
            Ended::Shutdown => "shutdown",
            Ended::Abort => "abort",
            Ended::Failure => "failure",
            Ended::Local => "local",
        }
    }
}

/// What woke the driver.
enum Wake {
    Transport(Option<Event>),
    /// A commit (`false`: the writer is gone).
    Committed(bool),
    Timeout,
    Stop,
}

/// The driver of one association: a select loop that feeds the
/// [`CollectorSession`] and performs its outputs.
async fn sctp_session(
    mut association: Association,
    config: SessionConfig,
    mut billing: Option<BillingContext>,
    tx: mpsc::Sender<Batch>,
    mut shutdown: watch::Receiver<bool>,
) -> (Ended, String) {
    let peer = association.remote_addr();
    let signer = billing.as_ref().map(|ctx| ctx.signer.clone());
    let metrics = DecodeMetrics::new(config.transport.as_str());
    let mut session = CollectorSession::new(peer.to_string(), config, signer);
    let mut stop_seen = false;
    let reason = loop {
        let timeout = session.poll_timeout().map(Instant::from_std);
        let wake = tokio::select! {
            event = association.recv(), if session.is_receiving() => Wake::Transport(event),
            changed = async { billing.as_mut().expect("guarded").committed.changed().await },
                if billing.is_some() && session.wants_commits() => Wake::Committed(changed.is_ok()),
            _ = tokio::time::sleep_until(timeout.unwrap_or_else(Instant::now)), if timeout.is_some() => Wake::Timeout,
            _ = stopped(&mut shutdown), if !stop_seen => Wake::Stop,
        };
        let now = Now {
            instant: Instant::now().into_std(),
            unix_ms: now_ms(),
        };
        let ledger = billing.as_ref().map(|ctx| &ctx.ledger);
        let outputs = match wake {
            Wake::Transport(Some(Event::Message(message))) if message.ppid == ASAP_SCTP_PPID => {
                let guard = ledger.map(|l| l.lock().expect("ledger lock"));
                session.handle(
                    now,
                    Input::Asap {
                        payload: &message.payload,
                        ledger: guard.as_deref(),
                    },
                )
            }
            Wake::Transport(Some(Event::Message(message))) => session.handle(
                now,
                Input::Message {
                    stream: message.stream,
                    payload: &message.payload,
                },
            ),
            Wake::Transport(Some(Event::Up)) => continue,
            Wake::Transport(Some(Event::Restarted)) => session.handle(now, Input::PeerRestarted),
            Wake::Transport(Some(Event::Down(reason))) => {
                let how = match reason {
                    DownReason::Shutdown => Ended::Shutdown,
                    DownReason::Aborted => Ended::Abort,
                    DownReason::Local => Ended::Local,
                };
                break (how, format!("down: {reason:?}"));
            }
            Wake::Transport(Some(Event::Failed(reason))) => {
                break (Ended::Failure, format!("failed: {reason:?}"));
            }
            Wake::Transport(None) => break (Ended::Failure, "association gone".to_owned()),
            Wake::Committed(false) => break (Ended::Local, "collector shutting down".to_owned()),
            Wake::Committed(true) => {
                let ledger = ledger.expect("guarded").lock().expect("ledger lock");
                session.handle(now, Input::Committed { ledger: &ledger })
            }
            Wake::Timeout => {
                let guard = ledger.map(|l| l.lock().expect("ledger lock"));
                session.handle(
                    now,
                    Input::Timeout {
                        ledger: guard.as_deref(),
                    },
                )
            }
            Wake::Stop => {
                stop_seen = true;
                session.handle(now, Input::StopRequested)
            }
        };
        metrics.publish(&session.take_decode_counts());
        if let Err(end) = perform(&association, &tx, &session, outputs).await {
            break end;
        }
    };
    metrics.publish(&session.take_decode_counts());
    if let Some(batch) = session.finish() {
        let _ = tx.send(batch).await;
    }
    reason
}

/// Performs a session's outputs in order; `Err` ends the association.
async fn perform(
    association: &Association,
    tx: &mpsc::Sender<Batch>,
    session: &CollectorSession,
    outputs: Vec<Output>,
) -> Result<(), (Ended, String)> {
    let peer = association.remote_addr();
    for output in outputs {
        match output {
            Output::Store(batch) => {
                // While acknowledging before the close, what is committed
                // already is still acknowledged.
                if tx.send(batch).await.is_err() && !session.is_acknowledging() {
                    return Err((Ended::Local, "collector shutting down".to_owned()));
                }
            }
            Output::SendCookie(cookie) => {
                let message = transport::Message::new(0, ASAP_SCTP_PPID, cookie);
                if association.send(message).await.is_err() {
                    let reason = if session.is_acknowledging() {
                        "collector shutting down"
                    } else {
                        "cookie send failed"
                    };
                    return Err((Ended::Local, reason.to_owned()));
                }
            }
            Output::Close(reason) => {
                association.close();
                return Err((Ended::Local, reason));
            }
            Output::Event(SessionEvent::HandedOver(handover)) => {
                info!(%peer, exporter = handover.exporter_id, domain = handover.domain,
                      from_pe = ?handover.from_pe, record_sequence = ?handover.record_sequence,
                      "exporter handed over (Cookie Echo)");
                metrics::counter!("poolflow_collector_handovers_total").increment(1);
            }
            Output::Event(SessionEvent::CookieRefused { reason, error }) => {
                metrics::counter!("poolflow_collector_cookie_rejected_total", "reason" => reason)
                    .increment(1);
                warn!(%peer, reason, "Cookie Echo refused, closing the association: {error}");
            }
            Output::Event(SessionEvent::AsapWithoutPoolKey) => {
                warn!(%peer, "ASAP message on an IPFIX association, but no pool key is configured: ignored");
            }
            Output::Event(SessionEvent::PeerRestarted) => {
                info!(%peer, "SCTP peer restarted; session state reset");
            }
            Output::Event(SessionEvent::StatisticsRefused(count)) => {
                metrics::counter!("poolflow_collector_statistics_refused_total", "reason" => "other_exporter")
                    .increment(count);
            }
        }
    }
    Ok(())
}
