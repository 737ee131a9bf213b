//! IPFIX over SCTP (RFC 7011 section 10.2), here carried in UDP (RFC 6951)
//! by the `transport` crate. The same sessions serve the transport crate's
//! framed TCP (stream and PPID in every frame) for pool users without SCTP. Each association is one transport session; a
//! message's SCTP stream scopes its sequence numbers (RFC 7011 section 3.1),
//! templates are shared by the association's streams of a domain.

use std::sync::Arc;
use std::time::Duration;

use protocol::billing::BILLING_STREAM;
use protocol::ipfix::SessionConfig;
use protocol::rserpool::ASAP_SCTP_PPID;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn};
use transport::{Association, DownReason, Endpoint, Event};

use crate::billing::{AssociationBilling, CookieSigner, SharedLedger};
use crate::ingest::{Batch, SessionDecoder, now_ms};
use crate::listeners::{flush, stop_drain_deadline, stop_drain_wait, stopped};

/// Records collected before a session hands a batch to the writer.
const SESSION_BATCH_RECORDS: usize = 2048;
/// Longest a decoded record waits in a session before going to the writer.
const SESSION_FLUSH_DELAY: Duration = Duration::from_millis(20);

/// Settings of the SCTP listener.
#[derive(Debug, Clone)]
pub struct SctpSettings {
    /// "sctp" or "framed-tcp": the label of logs and metrics.
    pub transport: &'static str,
    pub session: SessionConfig,
    pub max_sessions: usize,
    /// Cookie protocol (docs/billing-continuity.md); `None` without a pool key.
    pub billing: Option<BillingContext>,
}

/// What a session needs to take part in the cookie protocol.
#[derive(Debug, Clone)]
pub struct BillingContext {
    pub signer: CookieSigner,
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

async fn sctp_session(
    mut association: Association,
    config: SessionConfig,
    mut billing: Option<BillingContext>,
    tx: mpsc::Sender<Batch>,
    mut shutdown: watch::Receiver<bool>,
) -> (Ended, String) {
    let peer = association.remote_addr();
    let mut decoder = SessionDecoder::new(peer.to_string(), config.clone());
    let mut batch = Batch::default();
    let mut cookies = AssociationBilling::default();
    // When the oldest unflushed record must go to the writer.
    let mut flush_at: Option<Instant> = None;
    // Set once the collector stops: the last moment to drain the queue.
    let mut drain_until: Option<Instant> = None;
    let reason = loop {
        let owes_cookies = billing.is_some() && cookies.exporter_id().is_some();
        let event = tokio::select! {
            event = association.recv() => event,
            changed = async { billing.as_mut().expect("guarded").committed.changed().await },
                if owes_cookies => {
                if changed.is_err() {
                    break (Ended::Local, "collector shutting down".to_owned());
                }
                let ctx = billing.as_ref().expect("guarded");
                if send_cookies(&association, &mut cookies, ctx).await.is_err() {
                    break (Ended::Local, "cookie send failed".to_owned());
                }
                continue;
            }
            _ = tokio::time::sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => {
                if flush(&tx, &mut batch).await.is_err() {
                    break (Ended::Local, "collector shutting down".to_owned());
                }
                flush_at = None;
                continue;
            }
            _ = stopped(&mut shutdown), if drain_until.is_none() => {
                // Graceful stop. A plain exporter never sends again what its
                // SCTP stack already had acknowledged: take in what is in
                // our receive queue first. A billing pool user replays all
                // that no cookie covers, and it must learn at once that we
                // are leaving, so it moves to another collector instead of
                // feeding a departing one (which, with a steady sender,
                // would never fall quiet): acknowledge and close now.
                drain_until = Some(if owes_cookies {
                    Instant::now()
                } else {
                    stop_drain_deadline()
                });
                continue;
            }
            _ = tokio::time::sleep(stop_drain_wait(drain_until)), if drain_until.is_some() => {
                if let Some(ctx) = billing.as_mut() {
                    // Commit what arrived and acknowledge it, so the
                    // exporter does not replay it elsewhere.
                    let _ = flush(&tx, &mut batch).await;
                    acknowledge_before_close(&association, &mut cookies, ctx).await;
                }
                break (Ended::Local, "collector shutting down".to_owned());
            }
        };
        match event {
            Some(Event::Message(message)) if message.ppid == ASAP_SCTP_PPID => {
                let Some(ctx) = billing.as_ref() else {
                    warn!(%peer, "ASAP message on an IPFIX association, but no pool key is configured: ignored");
                    continue;
                };
                match cookies.on_cookie_echo(
                    &message.payload,
                    &ctx.signer,
                    &peer.to_string(),
                    now_ms(),
                ) {
                    Ok(handover) => {
                        info!(%peer, exporter = handover.exporter_id, domain = handover.domain,
                              from_pe = ?handover.from_pe, record_sequence = ?handover.record_sequence,
                              "exporter handed over (Cookie Echo)");
                        metrics::counter!("poolflow_collector_handovers_total").increment(1);
                        batch.handovers.push(handover);
                        decoder.set_billing();
                        if flush_at.is_none() {
                            flush_at = Some(Instant::now());
                        }
                        // Records this store already holds past the echoed
                        // cookie are acknowledged at once.
                        if send_cookies(&association, &mut cookies, ctx).await.is_err() {
                            break (Ended::Local, "cookie send failed".to_owned());
                        }
                    }
                    Err(err) => {
                        metrics::counter!("poolflow_collector_cookie_rejected_total", "reason" => err.reason())
                            .increment(1);
                        warn!(%peer, reason = err.reason(), "Cookie Echo refused, closing the association: {err}");
                        association.close();
                        break (Ended::Local, format!("Cookie Echo refused: {err}"));
                    }
                }
            }
            Some(Event::Message(message)) => {
                let first_new = batch.blocks.len();
                let first_totals = batch.totals.len();
                decoder.handle(&message.payload, message.stream, now_ms(), &mut batch);
                if message.stream == BILLING_STREAM {
                    cookies.attach_statistics(&mut batch.totals[first_totals..]);
                }
                // Only the billing stream's sequence numbers are record
                // sequences; other streams carry best-effort records
                // (PR-SCTP), stored untagged and covered by no cookie.
                if message.stream == BILLING_STREAM {
                    cookies.tag_blocks(&mut batch.blocks[first_new..]);
                }
                if batch.len() >= SESSION_BATCH_RECORDS {
                    if flush(&tx, &mut batch).await.is_err() {
                        break (Ended::Local, "collector shutting down".to_owned());
                    }
                    flush_at = None;
                } else if !batch.is_empty() && flush_at.is_none() {
                    flush_at = Some(Instant::now() + SESSION_FLUSH_DELAY);
                }
            }
            Some(Event::Up) => {}
            Some(Event::Restarted) => {
                // The peer restarted its SCTP endpoint: a new transport
                // session, so its templates and sequence state are gone.
                let _ = flush(&tx, &mut batch).await;
                decoder = SessionDecoder::new(peer.to_string(), config.clone());
                info!(%peer, "SCTP peer restarted; session state reset");
            }
            Some(Event::Down(reason)) => {
                let how = match reason {
                    DownReason::Shutdown => Ended::Shutdown,
                    DownReason::Aborted => Ended::Abort,
                    DownReason::Local => Ended::Local,
                };
                break (how, format!("down: {reason:?}"));
            }
            Some(Event::Failed(reason)) => break (Ended::Failure, format!("failed: {reason:?}")),
            None => break (Ended::Failure, "association gone".to_owned()),
        }
    };
    let _ = flush(&tx, &mut batch).await;
    reason
}

/// Longest a stopping collector waits to acknowledge what it received.
const FINAL_COOKIE_WAIT: Duration = Duration::from_secs(3);

/// Waits (bounded) until every received record is committed and
/// acknowledged by a cookie.
async fn acknowledge_before_close(
    association: &Association,
    cookies: &mut AssociationBilling,
    ctx: &mut BillingContext,
) {
    let deadline = Instant::now() + FINAL_COOKIE_WAIT;
    loop {
        if send_cookies(association, cookies, ctx).await.is_err() || cookies.all_acknowledged() {
            return;
        }
        match tokio::time::timeout_at(deadline, ctx.committed.changed()).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

/// Sends the cookies the ledger now allows (ASAP, PPID 11, stream 0).
async fn send_cookies(
    association: &Association,
    cookies: &mut AssociationBilling,
    ctx: &BillingContext,
) -> Result<(), transport::TransportError> {
    let due = {
        let ledger = ctx.ledger.lock().expect("ledger lock");
        cookies.cookies_due(&ledger, &ctx.signer, now_ms())
    };
    for cookie in due {
        association
            .send(transport::Message::new(0, ASAP_SCTP_PPID, cookie))
            .await?;
    }
    Ok(())
}
