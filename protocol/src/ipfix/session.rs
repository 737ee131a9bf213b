//! The Collecting Process side of one IPFIX Transport Session (RFC 7011
//! sections 8 and 10), as a sans-IO state machine: feed it complete messages
//! and the current time, get Data Records and a report of what happened.
//!
//! Templates are scoped to (this transport session, observation domain). Over
//! UDP they expire unless refreshed (section 8.4) and may be redefined; over
//! SCTP and TCP they live until withdrawn (section 8.1). Sequence numbers are
//! tracked per observation domain (and per SCTP stream), counting data
//! records as the RFC defines, so a gap is a number of lost records.

use std::collections::HashMap;
use std::sync::Arc;

use super::message::{
    DataRecordIter, DecodeError, Message, MessageHeader, SetKind, TemplateRecord,
};
use super::template::Template;

/// The transport a session runs over: it decides the template rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// UDP (RFC 7011 §10.3): templates expire unless resent within their
    /// lifetime (§8.4), a new definition replaces the old one, and
    /// withdrawals are an error.
    Udp,
    /// TCP (RFC 7011 §10.4): templates live until withdrawn (§8.1) or the
    /// connection ends; redefining one without withdrawal is an error.
    Tcp,
    /// SCTP (RFC 7011 §10.2, the transport every implementation must
    /// support): template rules as for TCP; sequence numbers are tracked
    /// per stream.
    Sctp,
}

impl TransportKind {
    /// Lower-case name (`"udp"`, `"tcp"`, `"sctp"`) for metrics labels,
    /// logs and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Sctp => "sctp",
        }
    }
}

/// Limits and timers of one session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The transport the session runs over; it decides the template rules.
    pub transport: TransportKind,
    /// UDP only: a template not refreshed for this many seconds is forgotten
    /// (RFC 7011 section 8.4 leaves the value to configuration; 30 minutes
    /// is the common default of collectors).
    pub template_lifetime_secs: u64,
    /// Templates one session may define across all its domains; more are
    /// refused, so one exporter cannot exhaust the collector's memory.
    pub max_templates: usize,
    /// Observation domains (x SCTP streams) tracked for sequence numbers.
    pub max_sequence_scopes: usize,
}

impl SessionConfig {
    /// The defaults for `transport`: UDP templates live 1800 s (30
    /// minutes, a common collector default), at most 4096 templates and
    /// 1024 sequence scopes per session.
    pub fn new(transport: TransportKind) -> Self {
        Self {
            transport,
            template_lifetime_secs: 1800,
            max_templates: 4096,
            max_sequence_scopes: 1024,
        }
    }
}

/// How a message's sequence number relates to what came before in its
/// domain (and stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// First message seen in this domain.
    First,
    /// The sequence number is the previous message's plus the data records
    /// it held (RFC 7011 §3.1): nothing was lost in between.
    InOrder,
    /// `lost` data records were never received (RFC 7011 section 3.1).
    Gap {
        /// Data records missing between the previous message and this one.
        lost: u64,
    },
    /// The message arrived after later ones (UDP reordering) or the
    /// exporter restarted its counter; `behind` records before expectation.
    Behind {
        /// How many data records the sequence number is below the
        /// expected one.
        behind: u64,
    },
    /// The previous message held data sets we could not count (unknown
    /// template), so no expectation was possible.
    Resync,
}

/// One Data Record handed to the caller.
#[derive(Debug, Clone, Copy)]
pub struct DataRecord<'a> {
    /// Header of the message the record came in: export time, sequence
    /// number, observation domain.
    pub header: &'a MessageHeader,
    /// The Template the record is laid out by.
    pub template: &'a Template,
    /// The record's bytes, to be split with [`super::message::record_fields`].
    pub bytes: &'a [u8],
    /// Position of the record among the message's data records, from 0.
    pub index_in_message: u32,
}

/// What processing one message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageReport {
    /// Header of the processed message.
    pub header: MessageHeader,
    /// Data Records handed to the callback.
    pub data_records: u32,
    /// Template records accepted: new definitions, unchanged refreshes and
    /// UDP redefinitions (a TCP/SCTP redefinition is adopted too, but
    /// counted in `errors` as [`DecodeError::TemplateRedefined`]).
    pub templates_defined: u32,
    /// Withdrawal records applied; a withdraw-all counts once.
    pub templates_withdrawn: u32,
    /// How the message's sequence number fits the count of its domain (and
    /// SCTP stream).
    pub sequence: SequenceCheck,
    /// Problems inside the message that did not stop it from being used.
    pub errors: Vec<DecodeError>,
}

#[derive(Debug)]
struct TemplateEntry {
    template: Arc<Template>,
    last_seen_secs: u64,
}

#[derive(Debug, Clone, Copy)]
struct SequenceState {
    expected_next: u32,
    /// The last message could not be counted fully.
    uncounted: bool,
}

/// State of one transport session.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    templates: HashMap<(u32, u16), TemplateEntry>,
    sequences: HashMap<(u32, u16), SequenceState>,
}

impl Session {
    /// A session without templates or sequence state, for one Transport
    /// Session (RFC 7011 §2): one SCTP association, one TCP connection, or
    /// the datagrams of one UDP exporter address and port.
    pub fn new(config: SessionConfig) -> Self {
        Self {
            config,
            templates: HashMap::new(),
            sequences: HashMap::new(),
        }
    }

    /// The limits and timers the session was made with.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Number of templates currently defined in this session.
    pub fn template_count(&self) -> usize {
        self.templates.len()
    }

    /// The template in force for a domain, if any.
    pub fn template(&self, domain: u32, template_id: u16) -> Option<&Arc<Template>> {
        self.templates
            .get(&(domain, template_id))
            .map(|e| &e.template)
    }

    /// Forgets UDP templates not refreshed within their lifetime. Also done
    /// lazily on lookup; call this periodically to release memory.
    pub fn expire_templates(&mut self, now_secs: u64) -> usize {
        if self.config.transport != TransportKind::Udp {
            return 0;
        }
        let lifetime = self.config.template_lifetime_secs;
        let before = self.templates.len();
        self.templates
            .retain(|_, e| now_secs.saturating_sub(e.last_seen_secs) <= lifetime);
        before - self.templates.len()
    }

    /// Processes one complete IPFIX message. `stream` is the SCTP stream id
    /// (0 for UDP and TCP). Data Records go to `on_record` in order.
    ///
    /// An `Err` means the message as a whole is unusable (bad header); errors
    /// inside it are listed in the report while the rest is still used.
    pub fn process(
        &mut self,
        bytes: &[u8],
        stream: u16,
        now_secs: u64,
        mut on_record: impl FnMut(DataRecord<'_>),
    ) -> Result<MessageReport, DecodeError> {
        let message = Message::parse(bytes)?;
        let header = message.header;
        let domain = header.observation_domain_id;
        let mut report = MessageReport {
            header,
            data_records: 0,
            templates_defined: 0,
            templates_withdrawn: 0,
            sequence: SequenceCheck::First,
            errors: Vec::new(),
        };
        // Data records that could not be counted make the next sequence
        // expectation unknowable.
        let mut uncounted = false;
        for set in message.sets() {
            let set = match set {
                Ok(set) => set,
                Err(err) => {
                    if !matches!(err, DecodeError::ReservedSetId(_)) {
                        uncounted = true;
                    }
                    report.errors.push(err);
                    continue;
                }
            };
            match set.kind {
                SetKind::Template | SetKind::OptionsTemplate => {
                    for record in set.template_records() {
                        match record.and_then(|r| self.apply_template(domain, r, now_secs)) {
                            Ok(TemplateChange::Defined) => report.templates_defined += 1,
                            Ok(TemplateChange::Withdrawn) => report.templates_withdrawn += 1,
                            Err(err) => report.errors.push(err),
                        }
                    }
                }
                SetKind::Data { template_id } => {
                    let Some(template) = self.live_template(domain, template_id, now_secs) else {
                        uncounted = true;
                        report.errors.push(DecodeError::UnknownTemplate {
                            domain,
                            template_id,
                        });
                        continue;
                    };
                    for record in DataRecordIter::new(&template, set.body) {
                        match record {
                            Ok(bytes) => {
                                on_record(DataRecord {
                                    header: &header,
                                    template: &template,
                                    bytes,
                                    index_in_message: report.data_records,
                                });
                                report.data_records += 1;
                            }
                            Err(err) => {
                                uncounted = true;
                                report.errors.push(err);
                            }
                        }
                    }
                }
            }
        }
        report.sequence = self.check_sequence(
            domain,
            stream,
            header.sequence_number,
            report.data_records,
            uncounted,
        );
        Ok(report)
    }

    fn live_template(
        &mut self,
        domain: u32,
        template_id: u16,
        now_secs: u64,
    ) -> Option<Arc<Template>> {
        let key = (domain, template_id);
        let entry = self.templates.get(&key)?;
        if self.config.transport == TransportKind::Udp
            && now_secs.saturating_sub(entry.last_seen_secs) > self.config.template_lifetime_secs
        {
            self.templates.remove(&key);
            return None;
        }
        Some(Arc::clone(&entry.template))
    }

    fn apply_template(
        &mut self,
        domain: u32,
        record: TemplateRecord,
        now_secs: u64,
    ) -> Result<TemplateChange, DecodeError> {
        let udp = self.config.transport == TransportKind::Udp;
        match record {
            TemplateRecord::Definition(template) => {
                let key = (domain, template.id);
                match self.templates.get_mut(&key) {
                    Some(entry) if *entry.template == template => {
                        entry.last_seen_secs = now_secs;
                        Ok(TemplateChange::Defined)
                    }
                    Some(entry) => {
                        // Over UDP a redefinition simply replaces (8.4). Over
                        // SCTP/TCP it is a protocol error (8.1); we still use
                        // the new definition, because the exporter will send
                        // data for it and losing billing records is worse.
                        entry.template = Arc::new(template);
                        entry.last_seen_secs = now_secs;
                        if udp {
                            Ok(TemplateChange::Defined)
                        } else {
                            Err(DecodeError::TemplateRedefined { template_id: key.1 })
                        }
                    }
                    None => {
                        if self.templates.len() >= self.config.max_templates {
                            return Err(DecodeError::TemplateLimit {
                                template_id: key.1,
                                limit: self.config.max_templates,
                            });
                        }
                        self.templates.insert(
                            key,
                            TemplateEntry {
                                template: Arc::new(template),
                                last_seen_secs: now_secs,
                            },
                        );
                        Ok(TemplateChange::Defined)
                    }
                }
            }
            // Withdrawals are not allowed over UDP (8.1): a zero-field
            // template there is malformed.
            TemplateRecord::Withdrawal { template_id } if udp => {
                Err(DecodeError::WithdrawalOverUdp { template_id })
            }
            TemplateRecord::WithdrawAll { .. } if udp => {
                Err(DecodeError::TemplateWithoutFields { template_id: 2 })
            }
            TemplateRecord::Withdrawal { template_id } => {
                self.templates.remove(&(domain, template_id));
                Ok(TemplateChange::Withdrawn)
            }
            TemplateRecord::WithdrawAll { options } => {
                self.templates
                    .retain(|&(d, _), e| d != domain || e.template.is_options() != options);
                Ok(TemplateChange::Withdrawn)
            }
        }
    }

    /// Reconciles a domain's sequence state with the exporter's own count of
    /// data records sent (exportedFlowRecordTotalCount of its reliability
    /// statistics, RFC 7011 4.3): records the exporter sent after the last
    /// message we saw never arrived (a lost tail, which sequence numbers
    /// alone cannot show). Returns how many, and moves the expectation past
    /// them so the next message is in order and they are counted once.
    /// `None` when the domain was never seen on `stream` or its last
    /// message could not be counted.
    pub fn reconcile_exported_total(
        &mut self,
        domain: u32,
        stream: u16,
        exported_records: u64,
    ) -> Option<u64> {
        let state = self.sequences.get_mut(&(domain, stream))?;
        if state.uncounted {
            return None;
        }
        // Sequence numbers are the record count modulo 2^32 (RFC 7011 3.1).
        let ahead = (exported_records as u32).wrapping_sub(state.expected_next);
        if ahead == 0 || ahead >= 1 << 31 {
            // In step, or the statistics are older than what arrived since.
            return Some(0);
        }
        state.expected_next = exported_records as u32;
        Some(ahead as u64)
    }

    fn check_sequence(
        &mut self,
        domain: u32,
        stream: u16,
        sequence_number: u32,
        records: u32,
        uncounted: bool,
    ) -> SequenceCheck {
        let key = (domain, stream);
        let next = sequence_number.wrapping_add(records);
        let Some(state) = self.sequences.get_mut(&key) else {
            if self.sequences.len() < self.config.max_sequence_scopes {
                self.sequences.insert(
                    key,
                    SequenceState {
                        expected_next: next,
                        uncounted,
                    },
                );
            }
            return SequenceCheck::First;
        };
        let check = if state.uncounted {
            SequenceCheck::Resync
        } else {
            // Sequence numbers wrap at 2^32 (RFC 7011 3.1): a difference in
            // the lower half of the circle is a gap, the upper half a late
            // message.
            let ahead = sequence_number.wrapping_sub(state.expected_next);
            if ahead == 0 {
                SequenceCheck::InOrder
            } else if ahead < 1 << 31 {
                SequenceCheck::Gap { lost: ahead as u64 }
            } else {
                SequenceCheck::Behind {
                    behind: state.expected_next.wrapping_sub(sequence_number) as u64,
                }
            }
        };
        // A late message must not move the expectation backwards.
        if !matches!(check, SequenceCheck::Behind { .. }) || state.uncounted {
            state.expected_next = next;
        }
        state.uncounted = uncounted;
        check
    }
}

enum TemplateChange {
    Defined,
    Withdrawn,
}

#[cfg(test)]
mod reconcile_tests {
    use super::*;
    use crate::ipfix::MessageWriter;
    use crate::ipfix::flow::{FlowRecord, flow_template};

    #[test]
    fn exported_total_beyond_the_last_message_is_a_lost_tail() {
        let mut session = Session::new(SessionConfig::new(TransportKind::Tcp));
        let mut w = MessageWriter::new(1400);
        w.start(9, 0, 0);
        w.add_template(&flow_template()).unwrap();
        for n in 0..10 {
            FlowRecord::synthetic(n, 1_000).write_to(&mut w).unwrap();
        }
        let report = session.process(w.finish(), 0, 0, |_| {}).unwrap();
        assert_eq!(report.data_records, 10);
        assert_eq!(session.reconcile_exported_total(9, 0, 10), Some(0));
        assert_eq!(session.reconcile_exported_total(9, 0, 25), Some(15));
        // Counted once: the same total again loses nothing more.
        assert_eq!(session.reconcile_exported_total(9, 0, 25), Some(0));
        // Older statistics (behind what arrived) lose nothing.
        assert_eq!(session.reconcile_exported_total(9, 0, 20), Some(0));
        assert_eq!(
            session.reconcile_exported_total(8, 0, 5),
            None,
            "unseen domain"
        );
    }
}
