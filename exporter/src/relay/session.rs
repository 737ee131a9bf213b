//! One router transport session, sans-IO: [`RouterSession::handle`] takes
//! a message's bytes and the time and returns what the message did
//! ([`InputReport`]), appending its records in forwarded form.
//!
//! Decoding (sans-IO, [`RouterSession`]):
//! - The version field tells IPFIX (10) from NetFlow v9 (9). Templates are
//!   scoped as RFC 7011 section 8 asks: one session per transport session
//!   (UDP: the router's address and port; TCP: the connection), and inside
//!   it per observation domain (v9: source id), by
//!   `protocol::ipfix::Session` and `protocol::netflow_v9::Session`. Both
//!   carry the per-session limits (templates, domains); the listeners add
//!   the limits on UDP sessions and TCP connections.
//! - NetFlow v9 over TCP is refused (counted, connection closed): a v9
//!   header has no length, so a byte stream of v9 packets cannot be framed.
//! - Bad input is counted by reason (`poolflow_relay_decode_errors_total`),
//!   logged with the peer (rate limited), and never ends a UDP session; a
//!   TCP connection whose framing is lost is closed (RFC 7011 10.4).

use std::collections::HashMap;
use std::net::IpAddr;

use protocol::ipfix::{self, TransportKind};
use protocol::netflow_v9;

use super::rewrite::{Forwarder, Mapping};
use super::templates::SharedRegistry;
use crate::config::RelayConfig;
use crate::stream::InputRecord;

/// The input protocol, by the version field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputProtocol {
    /// IPFIX (version 10, RFC 7011).
    Ipfix,
    /// NetFlow version 9 (RFC 3954).
    NetflowV9,
}

impl InputProtocol {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ipfix => "ipfix",
            Self::NetflowV9 => "netflow_v9",
        }
    }
}

/// Limits of one router session.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Templates the session may define (all domains).
    pub max_templates: usize,
    /// Observation domains (v9 source ids) tracked.
    pub max_domains: usize,
    /// UDP template lifetime, seconds.
    pub template_lifetime_secs: u64,
    /// Largest forwarded IPFIX message (the pool user's `message_size`):
    /// a record that cannot fit is dropped here, not stalled later.
    pub message_size: usize,
    /// Observation domains whose records are forwarded best effort
    /// (`[best_effort] domains`), not as billing records.
    pub best_effort_domains: Vec<u32>,
}

impl SessionLimits {
    /// The `[relay]` limits, with the pool user's message size and
    /// best-effort domains.
    pub fn new(config: &RelayConfig, message_size: usize, best_effort_domains: &[u32]) -> Self {
        Self {
            max_templates: config.max_templates_per_session,
            max_domains: config.max_domains_per_session,
            template_lifetime_secs: config.template_lifetime.as_secs(),
            message_size,
            best_effort_domains: best_effort_domains.to_vec(),
        }
    }
}

/// One problem with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    /// Stable label (metrics).
    pub reason: &'static str,
    /// For the log line.
    pub detail: String,
}

/// What one message from a router did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InputReport {
    /// `None` when the version was not recognised.
    pub protocol: Option<InputProtocol>,
    /// Data records decoded.
    pub records: u64,
    /// Data records handed on (into `out`).
    pub forwarded: u64,
    /// Records not handed on, by reason.
    pub dropped: Vec<(&'static str, u64)>,
    /// Malformed input.
    pub errors: Vec<InputError>,
    /// IPFIX: data records lost between router and relay (sequence gap).
    pub lost_records: u64,
    /// NetFlow v9: export packets lost (v9 numbers packets).
    pub lost_packets: u64,
    /// The stream cannot be continued (TCP: framing lost or v9).
    pub fatal: bool,
}

impl InputReport {
    pub(super) fn drop_records(&mut self, reason: &'static str, count: u64) {
        match self.dropped.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += count,
            None => self.dropped.push((reason, count)),
        }
    }

    pub(super) fn error(&mut self, reason: &'static str, detail: impl ToString) {
        self.errors.push(InputError {
            reason,
            detail: detail.to_string(),
        });
    }
}

/// One router transport session (UDP: address and port; TCP: one
/// connection): its template state and its template mappings.
#[derive(Debug)]
pub struct RouterSession {
    router: IpAddr,
    transport: TransportKind,
    limits: SessionLimits,
    ipfix: Option<ipfix::Session>,
    v9: Option<netflow_v9::Session<()>>,
    mappings: HashMap<(InputProtocol, u32, u16), Mapping>,
}

impl RouterSession {
    /// A new session of `router` over `transport`, nothing learned yet.
    pub fn new(router: IpAddr, transport: TransportKind, limits: SessionLimits) -> Self {
        Self {
            // A v4 router on a dual-stack socket shows as ::ffff:a.b.c.d.
            router: router.to_canonical(),
            transport,
            limits,
            ipfix: None,
            v9: None,
            mappings: HashMap::new(),
        }
    }

    /// Templates the session holds.
    pub fn template_count(&self) -> usize {
        self.ipfix.as_ref().map_or(0, |s| s.template_count())
            + self.v9.as_ref().map_or(0, |s| s.template_count())
    }

    /// Forgets UDP templates past their lifetime.
    pub fn expire_templates(&mut self, now_secs: u64) {
        if let Some(s) = &mut self.ipfix {
            s.expire_templates(now_secs);
        }
        if let Some(s) = &mut self.v9 {
            s.expire_templates(now_secs);
        }
    }

    /// Decodes one message (a UDP datagram or a framed TCP message) and
    /// appends its records, in forwarded form, to `out`.
    pub fn handle(
        &mut self,
        bytes: &[u8],
        now_secs: u64,
        registry: &SharedRegistry,
        out: &mut Vec<InputRecord>,
    ) -> InputReport {
        let mut report = InputReport::default();
        let Some(version) = bytes.get(..2).map(|v| u16::from_be_bytes([v[0], v[1]])) else {
            report.error("truncated_header", format!("{} bytes", bytes.len()));
            report.fatal = true;
            return report;
        };
        match version {
            ipfix::message::VERSION => {
                self.handle_ipfix(bytes, now_secs, registry, out, &mut report)
            }
            netflow_v9::VERSION if self.transport == TransportKind::Udp => {
                self.handle_v9(bytes, now_secs, registry, out, &mut report)
            }
            netflow_v9::VERSION => {
                report.protocol = Some(InputProtocol::NetflowV9);
                report.error(
                    "netflow_v9_over_tcp",
                    "NetFlow v9 has no message length: it cannot be framed on TCP",
                );
                report.fatal = true;
            }
            other => {
                report.error("unknown_version", format!("version {other}"));
                report.fatal = true;
            }
        }
        if self.mappings.len() > 4 * self.limits.max_templates.max(1) {
            // Withdrawn and redefined ids leave stale mappings behind.
            self.mappings.clear();
        }
        report
    }

    fn handle_ipfix(
        &mut self,
        bytes: &[u8],
        now_secs: u64,
        registry: &SharedRegistry,
        out: &mut Vec<InputRecord>,
        report: &mut InputReport,
    ) {
        report.protocol = Some(InputProtocol::Ipfix);
        let limits = &self.limits;
        let session = self.ipfix.get_or_insert_with(|| {
            let mut config = ipfix::SessionConfig::new(self.transport);
            config.max_templates = limits.max_templates;
            config.max_sequence_scopes = limits.max_domains;
            config.template_lifetime_secs = limits.template_lifetime_secs;
            ipfix::Session::new(config)
        });
        let mut forward = Forwarder::new(
            self.router,
            limits,
            &mut self.mappings,
            registry,
            out,
            &mut *report,
        );
        let result = session.process(bytes, 0, now_secs, |record| {
            forward.record(
                InputProtocol::Ipfix,
                record.header.observation_domain_id,
                record.template,
                record.bytes,
                None,
            );
        });
        match result {
            Ok(message) => {
                for error in message.errors {
                    report.error(error.reason(), &error);
                }
                if let ipfix::SequenceCheck::Gap { lost } = message.sequence {
                    report.lost_records += lost;
                }
            }
            Err(error) => {
                report.error(error.reason(), &error);
                // Over TCP the next message cannot be found any more.
                report.fatal = true;
            }
        }
    }

    fn handle_v9(
        &mut self,
        bytes: &[u8],
        now_secs: u64,
        registry: &SharedRegistry,
        out: &mut Vec<InputRecord>,
        report: &mut InputReport,
    ) {
        report.protocol = Some(InputProtocol::NetflowV9);
        let limits = &self.limits;
        let session = self.v9.get_or_insert_with(|| {
            netflow_v9::Session::new(netflow_v9::SessionConfig {
                max_templates: limits.max_templates,
                max_templates_per_source: limits.max_templates,
                max_sources: limits.max_domains,
                template_lifetime_secs: Some(limits.template_lifetime_secs),
            })
        });
        let mut forward = Forwarder::new(
            self.router,
            limits,
            &mut self.mappings,
            registry,
            out,
            &mut *report,
        );
        let result = session.process(&(), bytes, now_secs, |record| {
            let header = record.header;
            // The v9 header's clock pair, turned into the boot time that
            // IPFIX sysUpTime elements are relative to.
            let init_ms = (u64::from(header.unix_secs) * 1000)
                .saturating_sub(u64::from(header.sys_uptime_ms));
            forward.record(
                InputProtocol::NetflowV9,
                header.source_id,
                record.template,
                record.bytes,
                Some(init_ms),
            );
        });
        match result {
            Ok(packet) => {
                for error in packet.errors {
                    report.error(error.reason(), &error);
                }
                if let netflow_v9::SequenceCheck::Gap { lost_packets } = packet.sequence {
                    report.lost_packets += u64::from(lost_packets);
                }
            }
            Err(error) => report.error(error.reason(), &error),
        }
    }
}

#[cfg(test)]
mod tests {
    use protocol::ipfix::registry::ids;
    use protocol::ipfix::{IANA_ENTERPRISE, MessageWriter, Template};
    use std::net::Ipv4Addr;

    use super::*;
    use crate::relay::fixtures::{
        BEST_EFFORT_DOMAIN, ROUTER_A, ROUTER_B, ipfix_message, limits, record, router_template,
        v9_packet,
    };
    use crate::relay::templates::TemplateRegistry;
    use crate::stream::{RecordClass, TemplateSource};

    #[test]
    fn routers_template_ids_are_remapped_without_collision() {
        let registry = SharedRegistry::new(TemplateRegistry::in_memory(64));
        let mut a = RouterSession::new(ROUTER_A, TransportKind::Udp, limits());
        let mut b = RouterSession::new(ROUTER_B, TransportKind::Udp, limits());
        // Both routers use id 256, for different layouts.
        let layout_a = router_template(256);
        let mut layout_b = router_template(256);
        layout_b.fields.swap(0, 1);
        let layout_b = Template::new(256, 0, layout_b.fields);
        let mut out = Vec::new();
        let report = a.handle(
            &ipfix_message(5, &layout_a, &[record(1)]),
            0,
            &registry,
            &mut out,
        );
        assert_eq!((report.records, report.forwarded), (1, 1), "{report:?}");
        b.handle(
            &ipfix_message(5, &layout_b, &[record(2)]),
            0,
            &registry,
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert_ne!(out[0].template_id, out[1].template_id, "no collision");
        assert_eq!(out[0].domain, 5, "the router's domain is kept");

        // Each forwarded record decodes with its relay template and ends
        // with its router's address.
        for (record, router) in out.iter().zip([ROUTER_A, ROUTER_B]) {
            let template = registry.template(record.template_id).unwrap();
            let last = ipfix::record_fields(&template, &record.bytes)
                .last()
                .unwrap();
            assert_eq!(last.0.id, ids::ORIGINAL_EXPORTER_IPV4_ADDRESS);
            let IpAddr::V4(v4) = router else {
                unreachable!()
            };
            assert_eq!(last.1, v4.octets());
        }

        // A third router with router A's layout under another id shares A's
        // relay template: ids follow layouts, not routers.
        let mut c = RouterSession::new(
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3)),
            TransportKind::Udp,
            limits(),
        );
        c.handle(
            &ipfix_message(9, &router_template(300), &[record(3)]),
            0,
            &registry,
            &mut out,
        );
        assert_eq!(out[2].template_id, out[0].template_id);
        assert_eq!(registry.lock().templates().len(), 2);
    }

    #[test]
    fn records_of_best_effort_domains_are_forwarded_best_effort() {
        let registry = SharedRegistry::new(TemplateRegistry::in_memory(64));
        let mut router = RouterSession::new(ROUTER_A, TransportKind::Udp, limits());
        let template = router_template(256);
        let mut out = Vec::new();
        for domain in [5, BEST_EFFORT_DOMAIN, 6] {
            router.handle(
                &ipfix_message(domain, &template, &[record(1), record(2)]),
                0,
                &registry,
                &mut out,
            );
        }
        let classes: Vec<(u32, RecordClass)> = out.iter().map(|r| (r.domain, r.class)).collect();
        assert_eq!(
            classes,
            [
                (5, RecordClass::Billing),
                (5, RecordClass::Billing),
                (BEST_EFFORT_DOMAIN, RecordClass::BestEffort),
                (BEST_EFFORT_DOMAIN, RecordClass::BestEffort),
                (6, RecordClass::Billing),
                (6, RecordClass::Billing),
            ]
        );
    }

    #[test]
    fn template_limit_drops_and_counts() {
        let registry = SharedRegistry::new(TemplateRegistry::in_memory(1));
        let mut a = RouterSession::new(ROUTER_A, TransportKind::Udp, limits());
        let mut out = Vec::new();
        a.handle(
            &ipfix_message(1, &router_template(256), &[record(1)]),
            0,
            &registry,
            &mut out,
        );
        let mut other = router_template(257);
        other.fields.pop();
        let other = Template::new(257, 0, other.fields);
        let mut writer = MessageWriter::new(1400);
        writer.start(1, 0, 1);
        writer.add_template(&other).unwrap();
        writer.add_record(257, &record(2)[..12]).unwrap();
        writer.add_record(257, &record(3)[..12]).unwrap();
        let report = a.handle(writer.finish(), 0, &registry, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(report.dropped, vec![("template_limit", 2)]);
        assert_eq!(report.errors[0].reason, "template_limit");
    }

    #[test]
    fn netflow_v9_template_becomes_an_ipfix_template_with_the_same_elements() {
        let registry = SharedRegistry::new(TemplateRegistry::in_memory(8));
        let mut session = RouterSession::new(ROUTER_A, TransportKind::Udp, limits());
        let mut out = Vec::new();
        let report = session.handle(&v9_packet(), 0, &registry, &mut out);
        assert_eq!(report.protocol, Some(InputProtocol::NetflowV9));
        assert!(report.errors.is_empty(), "{report:?}");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].domain, 42, "source id becomes the domain");
        let template = registry.template(out[0].template_id).unwrap();
        let elements: Vec<(u16, u16)> = template.fields.iter().map(|f| (f.id, f.length)).collect();
        assert_eq!(
            elements,
            [(1, 4), (2, 4), (8, 4), (21, 4), (22, 4), (160, 8), (403, 4)],
            "v9 types are IANA ids; init time and router appended"
        );
        assert!(
            template
                .fields
                .iter()
                .all(|f| f.enterprise == IANA_ENTERPRISE)
        );
        let values: Vec<&[u8]> = ipfix::record_fields(&template, &out[0].bytes)
            .map(|(_, v)| v)
            .collect();
        assert_eq!(values[2], [10, 0, 0, 7]);
        // Boot time = export time - uptime: 1_763_700_000_000 - 60_000 ms.
        assert_eq!(values[5], (1_763_699_940_000u64).to_be_bytes());
        assert_eq!(values[6], [192, 0, 2, 1]);

        // The IPFIX template goes out through the pool user's encoder and
        // decodes again unchanged.
        let mut writer = MessageWriter::new(1400);
        writer.start(42, 0, 0);
        writer.add_template(&template).unwrap();
        writer.add_record(template.id, &out[0].bytes).unwrap();
        let mut collector = ipfix::Session::new(ipfix::SessionConfig::new(TransportKind::Tcp));
        let mut seen = 0;
        collector
            .process(writer.finish(), 0, 0, |r| {
                assert_eq!(*r.template, template);
                seen += 1;
            })
            .unwrap();
        assert_eq!(seen, 1);
    }

    #[test]
    fn malformed_input_is_counted_and_the_session_goes_on() {
        let registry = SharedRegistry::new(TemplateRegistry::in_memory(8));
        let mut session = RouterSession::new(ROUTER_A, TransportKind::Udp, limits());
        let mut out = Vec::new();
        let report = session.handle(&[0, 5, 1, 2, 3], 0, &registry, &mut out);
        assert_eq!(report.errors[0].reason, "unknown_version");
        let report = session.handle(&[0], 0, &registry, &mut out);
        assert_eq!(report.errors[0].reason, "truncated_header");
        let mut bad = ipfix_message(1, &router_template(256), &[record(1)]);
        bad[3] ^= 0x40; // length field
        let report = session.handle(&bad, 0, &registry, &mut out);
        assert!(!report.errors.is_empty());
        let mut truncated_v9 = v9_packet();
        truncated_v9.truncate(30);
        let report = session.handle(&truncated_v9, 0, &registry, &mut out);
        assert_eq!(report.errors[0].reason, "flowset_overrun", "{report:?}");
        assert!(out.is_empty());
        let report = session.handle(&v9_packet(), 0, &registry, &mut out);
        assert_eq!(report.forwarded, 1, "the session still works");
        let report = session.handle(
            &ipfix_message(1, &router_template(256), &[record(1), record(2)]),
            0,
            &registry,
            &mut out,
        );
        assert_eq!(report.forwarded, 2);
    }

    #[test]
    fn netflow_v9_over_tcp_is_refused() {
        let registry = SharedRegistry::new(TemplateRegistry::in_memory(8));
        let mut session = RouterSession::new(ROUTER_A, TransportKind::Tcp, limits());
        let mut out = Vec::new();
        let report = session.handle(&v9_packet(), 0, &registry, &mut out);
        assert!(report.fatal);
        assert_eq!(report.errors[0].reason, "netflow_v9_over_tcp");
        assert!(out.is_empty());
    }

    #[test]
    fn redefined_router_template_gets_the_new_layouts_id() {
        let registry = SharedRegistry::new(TemplateRegistry::in_memory(8));
        let mut session = RouterSession::new(ROUTER_A, TransportKind::Udp, limits());
        let mut out = Vec::new();
        session.handle(
            &ipfix_message(1, &router_template(256), &[record(1)]),
            0,
            &registry,
            &mut out,
        );
        let mut fields = router_template(256).fields;
        fields.reverse();
        let redefined = Template::new(256, 0, fields);
        session.handle(
            &ipfix_message(1, &redefined, &[record(2)]),
            1,
            &registry,
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert_ne!(out[0].template_id, out[1].template_id);
    }
}
