//! One exporter association (SCTP, or the transport crate's framed TCP) as
//! a sans-IO state machine: the collector's half of failover.
//!
//! The driver (`sctp.rs`) owns the socket, the writer channel, the clock
//! and the ledger lock. It feeds [`CollectorSession::handle`] with what
//! happened ([`Input`]) and the time ([`Now`]), performs the [`Output`]s
//! in order, and wakes the session at [`CollectorSession::poll_timeout`].
//! The session decides:
//!
//! - IPFIX messages: decoded ([`SessionDecoder`]) into a batch, billing
//!   blocks tagged with their record sequences ([`AssociationBilling`]);
//!   a batch goes to the writer when full or [`SESSION_FLUSH_DELAY`] after
//!   its first record;
//! - Cookie Echo: the signature is checked by protocol code
//!   (`protocol::billing::CookieKeys`), the session decides: a handover is
//!   recorded and the cookies the ledger already allows are sent, or the
//!   echo is refused, counted and the association closed;
//! - cookies only after commits: a cookie names a record sequence only once
//!   the ledger (what the store holds durably) covers it, and never beyond
//!   what this association received;
//! - graceful stop: a plain exporter's data in flight is taken in until it
//!   falls quiet ([`STOP_DRAIN_QUIET`], at most [`STOP_DRAIN_LIMIT`]); a
//!   billing exporter is let go at once. Then, with a pool key, the batch
//!   is flushed, the session waits (at most [`FINAL_COOKIE_WAIT`]) for the
//!   commits and sends the final cookies, and closes.
//!
//! The replay rule (which records of a billing block the store already
//! holds) is [`crate::ledger::take_new`], applied by the store in the
//! commit's transaction.
//!
//! No tokio, no file IO, no clock reads: time comes in as an argument, so
//! the tests below run without sockets or sleeps. Decode errors are logged
//! by the decoder and counted in its [`DecodeCounts`], which the driver
//! takes ([`CollectorSession::take_decode_counts`]) and publishes.
//!
//! Dependencies: `batch`, `billing`, `decoder`, `ledger` (none of which
//! depends on this module or on a driver).

use std::time::{Duration, Instant};

use protocol::billing::BILLING_STREAM;
use protocol::ipfix::SessionConfig;

use crate::batch::{Batch, Handover};
use crate::billing::{AssociationBilling, CookieSigner};
use crate::decode_counts::DecodeCounts;
use crate::decoder::SessionDecoder;
use crate::ledger::Ledger;

/// Records collected before a session hands a batch to the writer.
pub const SESSION_BATCH_RECORDS: usize = 2048;
/// Longest a decoded record waits in a session before going to the writer.
pub const SESSION_FLUSH_DELAY: Duration = Duration::from_millis(20);
/// A stopping session keeps receiving until its peer has been quiet this
/// long (generous: on a loaded host a session may wait its turn for the CPU
/// with data ready) ...
pub const STOP_DRAIN_QUIET: Duration = Duration::from_millis(300);
/// ... or for at most this long, so a peer that keeps sending cannot hold
/// the stop up (well inside systemd's default stop timeout of 90 s).
pub const STOP_DRAIN_LIMIT: Duration = Duration::from_secs(3);
/// Longest a stopping collector waits to acknowledge what it received.
pub const FINAL_COOKIE_WAIT: Duration = Duration::from_secs(3);

/// The time, given by the driver: monotonic for timers, wall clock (unix
/// milliseconds) for what is stored and signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time; [`CollectorSession::poll_timeout`] is in this clock.
    pub instant: Instant,
    /// Wall clock, unix milliseconds: receive times and cookie timestamps.
    pub unix_ms: i64,
}

/// What happened to the association, as the driver tells the session.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// An IPFIX message received on `stream`.
    Message {
        /// SCTP stream (framed TCP carries it too).
        stream: u16,
        /// The IPFIX message.
        payload: &'a [u8],
    },
    /// An ASAP message (PPID 11) from the exporter: a Cookie Echo.
    Asap {
        /// The ASAP message.
        payload: &'a [u8],
        /// The ledger now; `None` when the collector has no pool key.
        ledger: Option<&'a Ledger>,
    },
    /// The writer committed a transaction; the ledger as it is now.
    Committed {
        /// The ledger after the commit.
        ledger: &'a Ledger,
    },
    /// The instant of [`CollectorSession::poll_timeout`] has come.
    Timeout {
        /// The ledger now; `None` when the collector has no pool key.
        ledger: Option<&'a Ledger>,
    },
    /// The collector is stopping (graceful stop).
    StopRequested,
    /// The peer restarted its SCTP endpoint: a new transport session.
    PeerRestarted,
}

/// What the driver must do, in order.
#[derive(Debug)]
pub enum Output {
    /// Hand this batch to the writer.
    Store(Batch),
    /// Send this ASAP Cookie (PPID 11, stream 0).
    SendCookie(Vec<u8>),
    /// Close the association (graceful); the session is over, ended by us,
    /// for this reason.
    Close(String),
    /// Something to log and count.
    Event(SessionEvent),
}

/// Log and counter events of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// A Cookie Echo was accepted: the exporter arrived (failover,
    /// failback or introduction).
    HandedOver(Handover),
    /// A Cookie Echo was refused (the association is closed next).
    CookieRefused {
        /// Metric label of the refusal (`EchoError::reason`).
        reason: &'static str,
        /// The refusal, for the log.
        error: String,
    },
    /// An ASAP message arrived, but the collector has no pool key.
    AsapWithoutPoolKey,
    /// The peer restarted: templates and sequence state were reset.
    PeerRestarted,
    /// Reliability statistics on the billing stream that name another
    /// exporter than the Cookie Echo: kept as plain reports, never
    /// reconciled (this many).
    StatisticsRefused(u64),
}

/// What one session counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCounters {
    /// Cookie Echoes accepted.
    pub handovers: u64,
    /// Cookie Echoes refused.
    pub cookie_echoes_refused: u64,
    /// Cookies sent.
    pub cookies_sent: u64,
    /// Batches handed to the writer.
    pub batches_stored: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Receiving and acknowledging.
    Receiving,
    /// Stopping: still receiving until the peer is quiet or `until`.
    Draining {
        until: Instant,
        quiet_until: Instant,
    },
    /// Stopping, everything flushed: waiting for the commits to send the
    /// final cookies, until `until`. Nothing more is received.
    Acknowledging { until: Instant },
    /// Over: the driver stops feeding the session.
    Closed,
}

/// The collector's state of one exporter association.
pub struct CollectorSession {
    peer: String,
    config: SessionConfig,
    decoder: SessionDecoder,
    batch: Batch,
    cookies: AssociationBilling,
    /// `None` without a pool key: no cookie protocol.
    signer: Option<CookieSigner>,
    /// When the oldest unflushed record must go to the writer.
    flush_at: Option<Instant>,
    stage: Stage,
    counters: SessionCounters,
}

/// Reason of a close by a stopping collector.
const SHUTTING_DOWN: &str = "collector shutting down";

impl CollectorSession {
    /// A session for the exporter at `peer` ("ip:port"); `signer` when the
    /// collector takes part in the cookie protocol (a pool key).
    pub fn new(peer: String, config: SessionConfig, signer: Option<CookieSigner>) -> Self {
        Self {
            decoder: SessionDecoder::new(peer.clone(), config.clone()),
            peer,
            config,
            batch: Batch::default(),
            cookies: AssociationBilling::default(),
            signer,
            flush_at: None,
            stage: Stage::Receiving,
            counters: SessionCounters::default(),
        }
    }

    /// Whether the driver should read the association: not once the final
    /// acknowledgement began (nor after the close).
    pub fn is_receiving(&self) -> bool {
        matches!(self.stage, Stage::Receiving | Stage::Draining { .. })
    }

    /// Whether the driver should tell the session about commits
    /// ([`Input::Committed`]): when it owes the exporter cookies.
    pub fn wants_commits(&self) -> bool {
        self.signer.is_some()
            && match self.stage {
                Stage::Receiving | Stage::Draining { .. } => self.cookies.exporter_id().is_some(),
                Stage::Acknowledging { .. } => true,
                Stage::Closed => false,
            }
    }

    /// Whether the stop's final acknowledgement began: the driver then
    /// ignores a writer that is gone and ends quietly when a cookie cannot
    /// be sent.
    pub fn is_acknowledging(&self) -> bool {
        matches!(self.stage, Stage::Acknowledging { .. })
    }

    /// Whether the session is over.
    pub fn is_closed(&self) -> bool {
        self.stage == Stage::Closed
    }

    /// What the session counted so far.
    pub fn counters(&self) -> SessionCounters {
        self.counters
    }

    /// What the decoder counted since the last call (messages, records,
    /// malformed messages, sequence losses): the driver publishes it.
    pub fn take_decode_counts(&mut self) -> DecodeCounts {
        self.decoder.take_counts()
    }

    /// The next instant the driver must pass [`Input::Timeout`] at (or
    /// after); `None`: no timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.stage {
            Stage::Receiving => self.flush_at,
            Stage::Draining { until, quiet_until } => {
                let drain = until.min(quiet_until);
                Some(self.flush_at.map_or(drain, |f| f.min(drain)))
            }
            Stage::Acknowledging { until } => Some(until),
            Stage::Closed => None,
        }
    }

    /// Handles one input at `now`; returns what the driver must do, in
    /// order.
    pub fn handle(&mut self, now: Now, input: Input<'_>) -> Vec<Output> {
        let mut out = Vec::new();
        if self.stage == Stage::Closed {
            return out;
        }
        match input {
            Input::Message { stream, payload } => self.on_message(now, stream, payload, &mut out),
            Input::Asap { payload, ledger } => self.on_asap(now, payload, ledger, &mut out),
            Input::Committed { ledger } => {
                self.send_cookies(now, ledger, &mut out);
                if self.is_acknowledging() && self.cookies.all_acknowledged() {
                    self.close(SHUTTING_DOWN.to_owned(), &mut out);
                }
            }
            Input::Timeout { ledger } => self.on_timeout(now, ledger, &mut out),
            Input::StopRequested => {
                if self.stage == Stage::Receiving {
                    // A plain exporter never sends again what its SCTP
                    // stack already had acknowledged: take in what is in
                    // our receive queue first. A billing pool user replays
                    // all that no cookie covers, and it must learn at once
                    // that we are leaving, so it moves to another collector
                    // instead of feeding a departing one (which, with a
                    // steady sender, would never fall quiet): acknowledge
                    // and close now.
                    let owes_cookies =
                        self.signer.is_some() && self.cookies.exporter_id().is_some();
                    let until = if owes_cookies {
                        now.instant
                    } else {
                        now.instant + STOP_DRAIN_LIMIT
                    };
                    self.stage = Stage::Draining {
                        until,
                        quiet_until: now.instant,
                    };
                }
            }
            Input::PeerRestarted => {
                self.store(&mut out);
                self.decoder = SessionDecoder::new(self.peer.clone(), self.config.clone());
                out.push(Output::Event(SessionEvent::PeerRestarted));
            }
        }
        // Every input restarts the stop's quiet period.
        if let Stage::Draining { quiet_until, .. } = &mut self.stage {
            *quiet_until = now.instant + STOP_DRAIN_QUIET;
        }
        out
    }

    /// The batch still held when the driver ends the session (the
    /// association went down): it goes to the writer.
    pub fn finish(&mut self) -> Option<Batch> {
        self.stage = Stage::Closed;
        self.flush_at = None;
        (!self.batch.is_empty()).then(|| std::mem::take(&mut self.batch))
    }

    fn on_message(&mut self, now: Now, stream: u16, payload: &[u8], out: &mut Vec<Output>) {
        let first_new = self.batch.blocks.len();
        let first_totals = self.batch.totals.len();
        self.decoder
            .handle(payload, stream, now.unix_ms, &mut self.batch);
        // Only the billing stream's sequence numbers are record sequences;
        // other streams carry best-effort records (PR-SCTP), stored
        // untagged and covered by no cookie.
        if stream == BILLING_STREAM {
            let refused = self
                .cookies
                .attach_statistics(&mut self.batch.totals[first_totals..]);
            if refused > 0 {
                out.push(Output::Event(SessionEvent::StatisticsRefused(refused)));
            }
            self.cookies.tag_blocks(&mut self.batch.blocks[first_new..]);
        }
        if self.batch.len() >= SESSION_BATCH_RECORDS {
            self.store(out);
        } else if !self.batch.is_empty() && self.flush_at.is_none() {
            self.flush_at = Some(now.instant + SESSION_FLUSH_DELAY);
        }
    }

    fn on_asap(
        &mut self,
        now: Now,
        payload: &[u8],
        ledger: Option<&Ledger>,
        out: &mut Vec<Output>,
    ) {
        let Some(signer) = &self.signer else {
            out.push(Output::Event(SessionEvent::AsapWithoutPoolKey));
            return;
        };
        match self
            .cookies
            .on_cookie_echo(payload, signer, &self.peer, now.unix_ms)
        {
            Ok(handover) => {
                self.counters.handovers += 1;
                out.push(Output::Event(SessionEvent::HandedOver(handover.clone())));
                self.batch.handovers.push(handover);
                self.decoder.set_billing();
                // The handover is stored promptly.
                if self.flush_at.is_none() {
                    self.flush_at = Some(now.instant);
                }
                // Records this store already holds past the echoed cookie
                // are acknowledged at once.
                if let Some(ledger) = ledger {
                    self.send_cookies(now, ledger, out);
                }
            }
            Err(err) => {
                self.counters.cookie_echoes_refused += 1;
                out.push(Output::Event(SessionEvent::CookieRefused {
                    reason: err.reason(),
                    error: err.to_string(),
                }));
                self.close(format!("Cookie Echo refused: {err}"), out);
            }
        }
    }

    fn on_timeout(&mut self, now: Now, ledger: Option<&Ledger>, out: &mut Vec<Output>) {
        let drain_over = matches!(self.stage,
            Stage::Draining { until, quiet_until } if now.instant >= until.min(quiet_until));
        if self.flush_at.is_some_and(|at| now.instant >= at) {
            self.store(out);
        }
        if drain_over {
            self.final_acknowledgement(now, ledger, out);
        } else if let Stage::Acknowledging { until } = self.stage
            && now.instant >= until
        {
            self.close(SHUTTING_DOWN.to_owned(), out);
        }
    }

    /// The drain is over. With a pool key: commit what arrived and
    /// acknowledge it, so the exporter does not replay it elsewhere.
    fn final_acknowledgement(&mut self, now: Now, ledger: Option<&Ledger>, out: &mut Vec<Output>) {
        if self.signer.is_none() {
            self.close(SHUTTING_DOWN.to_owned(), out);
            return;
        }
        self.store(out);
        self.stage = Stage::Acknowledging {
            until: now.instant + FINAL_COOKIE_WAIT,
        };
        if let Some(ledger) = ledger {
            self.send_cookies(now, ledger, out);
        }
        if self.cookies.all_acknowledged() {
            self.close(SHUTTING_DOWN.to_owned(), out);
        }
    }

    /// The cookies the ledger now allows.
    fn send_cookies(&mut self, now: Now, ledger: &Ledger, out: &mut Vec<Output>) {
        let Some(signer) = &self.signer else {
            return;
        };
        for cookie in self.cookies.cookies_due(ledger, signer, now.unix_ms) {
            self.counters.cookies_sent += 1;
            out.push(Output::SendCookie(cookie));
        }
    }

    fn store(&mut self, out: &mut Vec<Output>) {
        self.flush_at = None;
        if self.batch.is_empty() {
            return;
        }
        let fresh = Batch::with_capacity(SESSION_BATCH_RECORDS + 64, 48);
        self.counters.batches_stored += 1;
        out.push(Output::Store(std::mem::replace(&mut self.batch, fresh)));
    }

    fn close(&mut self, reason: String, out: &mut Vec<Output>) {
        self.stage = Stage::Closed;
        self.flush_at = None;
        out.push(Output::Close(reason));
    }
}

#[cfg(test)]
mod tests {
    use protocol::billing::{BillingCookie, cookie_from_asap_bytes};
    use protocol::ipfix::TransportKind;
    use protocol::ipfix::flow::synthetic_message;

    use super::*;
    use crate::ledger::take_new;

    const KEY: &[u8] = b"pool key";
    const EXPORTER: u32 = 42;
    const DOMAIN: u32 = 1;

    fn signer() -> CookieSigner {
        CookieSigner::hmac(KEY.to_vec(), 7)
    }

    fn session(signer: Option<CookieSigner>) -> CollectorSession {
        CollectorSession::new(
            "192.0.2.1:4739".into(),
            SessionConfig::new(TransportKind::Sctp),
            signer,
        )
    }

    /// A test clock: `at(ms)` is `ms` after the start.
    struct Clock(Instant);

    impl Clock {
        fn new() -> Self {
            // The one clock read: the tests' origin, never the session's.
            Self(Instant::now())
        }
        fn at(&self, ms: u64) -> Now {
            Now {
                instant: self.0 + Duration::from_millis(ms),
                unix_ms: 1_700_000_000_000 + ms as i64,
            }
        }
    }

    /// A flow message of `DOMAIN` whose header carries `sequence`.
    fn message(sequence: u32, records: u64) -> Vec<u8> {
        synthetic_message(DOMAIN, sequence, records)
    }

    fn data(payload: &[u8]) -> Input<'_> {
        Input::Message {
            stream: BILLING_STREAM,
            payload,
        }
    }

    fn introduction() -> Vec<u8> {
        BillingCookie::introduction(EXPORTER, DOMAIN).cookie_echo_message_bytes()
    }

    /// The record sequences the cookies among `outputs` vouch for.
    fn cookies(outputs: &[Output]) -> Vec<u64> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::SendCookie(bytes) => {
                    let (_, cookie) = cookie_from_asap_bytes(bytes).expect("a cookie");
                    cookie.verify(KEY).expect("signed with the pool key");
                    assert_eq!((cookie.exporter_id, cookie.domain), (EXPORTER, DOMAIN));
                    Some(cookie.last_record_sequence)
                }
                _ => None,
            })
            .collect()
    }

    fn stored(outputs: Vec<Output>) -> Vec<Batch> {
        outputs
            .into_iter()
            .filter_map(|o| match o {
                Output::Store(batch) => Some(batch),
                _ => None,
            })
            .collect()
    }

    /// What the store does with a batch's billing blocks, in memory: the
    /// replay rule against the ledger. Returns the records kept.
    fn commit(ledger: &mut Ledger, batch: &Batch) -> Vec<(u64, u64)> {
        let mut kept = Vec::new();
        for block in &batch.blocks {
            let tag = block.billing.expect("a billing block");
            let held = ledger
                .stored
                .entry((tag.exporter_id, block.domain))
                .or_default();
            kept.extend(take_new(
                held,
                tag.first_record_sequence,
                block.record_count.into(),
            ));
        }
        kept
    }

    #[test]
    fn cookies_only_after_the_commit() {
        let clock = Clock::new();
        let mut s = session(Some(signer()));
        let mut ledger = Ledger::default();
        let out = s.handle(
            clock.at(0),
            Input::Asap {
                payload: &introduction(),
                ledger: Some(&ledger),
            },
        );
        assert!(
            matches!(&out[..], [Output::Event(SessionEvent::HandedOver(h))] if h.exporter_id == EXPORTER)
        );
        assert!(s.wants_commits());
        let out = s.handle(clock.at(1), data(&message(0, 5)));
        assert!(out.is_empty(), "held for the flush delay: {out:?}");
        // The flush timer sends the records (and the handover) to the
        // writer, and no cookie: nothing is committed yet.
        let at = s.poll_timeout().expect("flush timer");
        assert_eq!(at, clock.at(0).instant, "the handover goes at once");
        let out = s.handle(
            clock.at(0),
            Input::Timeout {
                ledger: Some(&ledger),
            },
        );
        assert!(cookies(&out).is_empty());
        let batches = stored(out);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].handovers.len(), 1);
        assert_eq!(batches[0].len(), 5);
        // A commit of something else: still no cookie.
        let out = s.handle(clock.at(2), Input::Committed { ledger: &ledger });
        assert!(cookies(&out).is_empty(), "{out:?}");
        // Committed: one cookie through the last record, then none.
        assert_eq!(commit(&mut ledger, &batches[0]), vec![(0, 4)]);
        let out = s.handle(clock.at(3), Input::Committed { ledger: &ledger });
        assert_eq!(cookies(&out), vec![4]);
        let out = s.handle(clock.at(4), Input::Committed { ledger: &ledger });
        assert!(cookies(&out).is_empty(), "no progress, no cookie");
        assert_eq!(s.counters().cookies_sent, 1);
    }

    #[test]
    fn replayed_records_below_the_ledger_mark_are_dropped() {
        let clock = Clock::new();
        let mut s = session(Some(signer()));
        // This store holds 0..=149 from an earlier association; the
        // exporter fails back with a cookie another PE signed at 99 and
        // replays 100..=149 before sending 150..=159.
        let mut ledger = Ledger::default();
        ledger
            .stored
            .entry((EXPORTER, DOMAIN))
            .or_default()
            .insert(0, 149);
        let echo = BillingCookie::sign(KEY, EXPORTER, DOMAIN, 99, 3, 1).cookie_echo_message_bytes();
        let out = s.handle(
            clock.at(0),
            Input::Asap {
                payload: &echo,
                ledger: Some(&ledger),
            },
        );
        assert!(cookies(&out).is_empty(), "nothing received here yet");
        // The message sequence is the low 32 bits of the record sequence.
        s.handle(clock.at(1), data(&message(100, 50)));
        s.handle(clock.at(2), data(&message(150, 10)));
        let out = s.handle(
            clock.at(20),
            Input::Timeout {
                ledger: Some(&ledger),
            },
        );
        let batches = stored(out);
        assert_eq!(batches.len(), 1);
        let firsts: Vec<_> = batches[0]
            .blocks
            .iter()
            .map(|b| b.billing.expect("tagged").first_record_sequence)
            .collect();
        assert_eq!(firsts, [100, 150]);
        assert_eq!(
            commit(&mut ledger, &batches[0]),
            vec![(150, 159)],
            "the replay is dropped"
        );
        let out = s.handle(clock.at(21), Input::Committed { ledger: &ledger });
        assert_eq!(cookies(&out), vec![159]);
    }

    #[test]
    fn graceful_stop_flushes_then_sends_the_final_cookie_then_closes() {
        let clock = Clock::new();
        let mut s = session(Some(signer()));
        let mut ledger = Ledger::default();
        s.handle(
            clock.at(0),
            Input::Asap {
                payload: &introduction(),
                ledger: Some(&ledger),
            },
        );
        s.handle(
            clock.at(0),
            Input::Timeout {
                ledger: Some(&ledger),
            },
        );
        s.handle(clock.at(1), data(&message(0, 10)));
        // A billing exporter is let go at once: no drain.
        assert!(s.handle(clock.at(2), Input::StopRequested).is_empty());
        assert_eq!(s.poll_timeout(), Some(clock.at(2).instant));
        let out = s.handle(
            clock.at(2),
            Input::Timeout {
                ledger: Some(&ledger),
            },
        );
        let [Output::Store(batch)] = &out[..] else {
            panic!("the batch first, nothing else yet: {out:?}");
        };
        assert_eq!(batch.len(), 10);
        assert!(!s.is_receiving(), "nothing more is taken in");
        assert!(s.wants_commits());
        assert_eq!(
            s.poll_timeout(),
            Some(clock.at(2).instant + FINAL_COOKIE_WAIT)
        );
        // The commit: the final cookie, then the close.
        commit(&mut ledger, batch);
        let out = s.handle(clock.at(30), Input::Committed { ledger: &ledger });
        assert_eq!(cookies(&out), vec![9]);
        assert!(
            matches!(&out[..], [Output::SendCookie(_), Output::Close(reason)] if reason == SHUTTING_DOWN),
            "{out:?}"
        );
        assert!(s.is_closed());
        assert_eq!(s.poll_timeout(), None);
        assert!(s.finish().is_none(), "everything went to the writer");
    }

    #[test]
    fn the_final_cookie_wait_is_bounded() {
        let clock = Clock::new();
        let mut s = session(Some(signer()));
        let ledger = Ledger::default();
        s.handle(
            clock.at(0),
            Input::Asap {
                payload: &introduction(),
                ledger: Some(&ledger),
            },
        );
        s.handle(clock.at(1), data(&message(0, 3)));
        s.handle(clock.at(2), Input::StopRequested);
        s.handle(
            clock.at(2),
            Input::Timeout {
                ledger: Some(&ledger),
            },
        );
        // The writer never commits.
        let until = s.poll_timeout().expect("the wait's deadline");
        let early = Now {
            instant: until - Duration::from_millis(1),
            ..clock.at(2)
        };
        assert!(
            s.handle(
                early,
                Input::Timeout {
                    ledger: Some(&ledger)
                }
            )
            .is_empty()
        );
        let late = Now {
            instant: until,
            ..clock.at(3002)
        };
        let out = s.handle(
            late,
            Input::Timeout {
                ledger: Some(&ledger),
            },
        );
        assert!(matches!(&out[..], [Output::Close(_)]), "{out:?}");
    }

    #[test]
    fn a_plain_exporter_is_drained_until_quiet_or_the_limit() {
        let clock = Clock::new();
        // Without a pool key: no cookies, the stop drains.
        let mut s = session(None);
        s.handle(clock.at(0), Input::StopRequested);
        let quiet = STOP_DRAIN_QUIET.as_millis() as u64;
        assert_eq!(s.poll_timeout(), Some(clock.at(quiet).instant));
        // A peer sending every 200 ms keeps it open until the limit.
        let mut records = 0;
        let mut closed_at = None;
        'peer: for t in (200..).step_by(200) {
            while let Some(due) = s.poll_timeout().filter(|d| *d <= clock.at(t).instant) {
                let now = Now {
                    instant: due,
                    ..clock.at(t)
                };
                let out = s.handle(now, Input::Timeout { ledger: None });
                let close = matches!(out.last(), Some(Output::Close(r)) if r == SHUTTING_DOWN);
                records += stored(out).iter().map(Batch::len).sum::<usize>();
                if close {
                    closed_at = Some(due);
                    break 'peer;
                }
            }
            assert!(s.is_receiving());
            s.handle(clock.at(t), data(&message(t as u32, 1)));
        }
        let limit = STOP_DRAIN_LIMIT.as_millis() as u64;
        assert_eq!(
            closed_at,
            Some(clock.at(limit).instant),
            "closed at the limit"
        );
        assert_eq!(records, 14, "every record taken in went to the writer");
        // Quiet: closed after the quiet period.
        let mut s = session(None);
        s.handle(clock.at(0), Input::StopRequested);
        s.handle(clock.at(100), data(&message(0, 1)));
        assert_eq!(s.poll_timeout(), Some(clock.at(120).instant), "the flush");
        let out = s.handle(clock.at(120), Input::Timeout { ledger: None });
        assert_eq!(stored(out).len(), 1);
        assert_eq!(s.poll_timeout(), Some(clock.at(120 + quiet).instant));
        let out = s.handle(clock.at(120 + quiet), Input::Timeout { ledger: None });
        assert!(matches!(&out[..], [Output::Close(_)]), "{out:?}");
    }

    #[test]
    fn a_forged_cookie_echo_is_refused_counted_and_closes() {
        let clock = Clock::new();
        let mut s = session(Some(signer()));
        let ledger = Ledger::default();
        s.handle(clock.at(0), data(&message(0, 2)));
        let forged = BillingCookie::sign(b"not the pool key", EXPORTER, DOMAIN, 5, 3, 1)
            .cookie_echo_message_bytes();
        let out = s.handle(
            clock.at(1),
            Input::Asap {
                payload: &forged,
                ledger: Some(&ledger),
            },
        );
        assert!(
            matches!(&out[..], [
                Output::Event(SessionEvent::CookieRefused { reason: "cookie_bad_hmac", .. }),
                Output::Close(reason),
            ] if reason.starts_with("Cookie Echo refused")),
            "{out:?}"
        );
        assert_eq!(s.counters().cookie_echoes_refused, 1);
        assert_eq!(s.counters().handovers, 0);
        assert!(s.is_closed() && !s.is_receiving() && !s.wants_commits());
        assert_eq!(s.poll_timeout(), None);
        assert!(s.handle(clock.at(2), data(&message(2, 1))).is_empty());
        // What came before the echo still goes to the writer, untagged.
        let batch = s.finish().expect("the records before the echo");
        assert_eq!(batch.len(), 2);
        assert!(batch.blocks.iter().all(|b| b.billing.is_none()));
    }

    #[test]
    fn timers_come_from_poll_timeout() {
        let clock = Clock::new();
        let mut s = session(None);
        assert_eq!(s.poll_timeout(), None, "nothing to wait for");
        s.handle(clock.at(5), data(&message(0, 3)));
        let flush = clock.at(5).instant + SESSION_FLUSH_DELAY;
        assert_eq!(s.poll_timeout(), Some(flush));
        // A later message does not push the flush back.
        s.handle(clock.at(10), data(&message(3, 3)));
        assert_eq!(s.poll_timeout(), Some(flush));
        assert!(
            s.handle(clock.at(24), Input::Timeout { ledger: None })
                .is_empty(),
            "early"
        );
        let out = s.handle(clock.at(25), Input::Timeout { ledger: None });
        assert_eq!(stored(out)[0].len(), 6);
        assert_eq!(s.poll_timeout(), None);
        // A full batch goes at once, without a timer.
        let big: Vec<Vec<u8>> = (0..(SESSION_BATCH_RECORDS / 20) as u32 + 1)
            .map(|i| message(6 + i * 20, 20))
            .collect();
        let mut sent = 0;
        for m in &big {
            sent += stored(s.handle(clock.at(30), data(m))).len();
        }
        assert_eq!(sent, 1);
    }

    #[test]
    fn asap_without_a_pool_key_is_ignored() {
        let clock = Clock::new();
        let mut s = session(None);
        let out = s.handle(
            clock.at(0),
            Input::Asap {
                payload: &introduction(),
                ledger: None,
            },
        );
        assert!(matches!(
            &out[..],
            [Output::Event(SessionEvent::AsapWithoutPoolKey)]
        ));
        assert!(!s.is_closed() && !s.wants_commits());
    }
}
