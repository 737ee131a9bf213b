//! A router's record in forwarded form: the relay template it goes out
//! under, the fields the relay appends, and its class (billing or best
//! effort).
//!
//! Which router a record came from: every forwarded layout ends with
//! originalExporterIPv4Address (IE 403) or originalExporterIPv6Address
//! (IE 404) holding the router's source address as the relay saw it, and
//! the record keeps the router's observation domain (v9: source id). These
//! elements were made for exactly this (RFC 7119 section 4.1: the address
//! of an Original Exporter as seen by an IPFIX Mediator), where
//! exporterIPv4Address (130) names the Exporting Process of the message
//! (here the relay) and may already be in a router's template (a v9 System
//! scope becomes 130). A per-record element survives everything downstream
//! (queries, audits, a replay to another collector); an observation-domain
//! renumbering per router would have needed its own persisted table and
//! would have broken the routers' own domain numbering. The domain stays
//! the router's, so billing sequences are per (relay, router domain).
//! NetFlow v9 records with sysUpTime times (FIRST_SWITCHED 22,
//! LAST_SWITCHED 21) also gain systemInitTimeMilliseconds (IE 160) from
//! the packet header (UNIX seconds x 1000 - sysUpTime), which IPFIX needs
//! to make those times absolute and which the v9 header would otherwise
//! take with it.

use std::collections::HashMap;
use std::net::IpAddr;

use protocol::ipfix::registry::ids;
use protocol::ipfix::{FieldSpecifier, IANA_ENTERPRISE, Template};

use super::session::{InputProtocol, InputReport, SessionLimits};
use super::templates::{RegistryError, SharedRegistry};
use crate::replay::RecordBytes;
use crate::stream::{InputRecord, RecordClass};

/// IPFIX message and set headers around a record in a forwarded message.
const MESSAGE_OVERHEAD: usize = 16 + 4;

/// The forwarded layout of a router's template (already in IPFIX form; for
/// NetFlow v9 that is `V9Template::to_ipfix`, whose field types 1..127 are
/// the IANA element ids): the router's fields, then
/// systemInitTimeMilliseconds if `with_init_time`, then the router address.
pub fn forwarded_layout(
    router_template: &Template,
    router: IpAddr,
    with_init_time: bool,
) -> (u16, Vec<FieldSpecifier>) {
    let mut fields = router_template.fields.clone();
    if with_init_time {
        fields.push(FieldSpecifier::iana(ids::SYSTEM_INIT_TIME_MILLISECONDS, 8));
    }
    fields.push(match router {
        IpAddr::V4(_) => FieldSpecifier::iana(ids::ORIGINAL_EXPORTER_IPV4_ADDRESS, 4),
        IpAddr::V6(_) => FieldSpecifier::iana(ids::ORIGINAL_EXPORTER_IPV6_ADDRESS, 16),
    });
    (router_template.scope_field_count, fields)
}

/// Whether NetFlow v9 records of this template carry sysUpTime-relative
/// times that need systemInitTimeMilliseconds.
fn has_uptime_times(template: &Template) -> bool {
    template.fields.iter().any(|f| {
        f.enterprise == IANA_ENTERPRISE
            && (f.id == ids::FLOW_START_SYS_UP_TIME || f.id == ids::FLOW_END_SYS_UP_TIME)
    })
}

/// Appends the relay's fields to a router's record bytes.
fn forwarded_record(router_bytes: &[u8], init_ms: Option<u64>, router: IpAddr) -> RecordBytes {
    let mut bytes = RecordBytes::with_capacity(router_bytes.len() + 8 + 16);
    bytes.extend_from_slice(router_bytes);
    if let Some(init_ms) = init_ms {
        bytes.extend_from_slice(&init_ms.to_be_bytes());
    }
    match router {
        IpAddr::V4(a) => bytes.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => bytes.extend_from_slice(&a.octets()),
    }
    bytes
}

#[derive(Debug)]
pub(super) struct Mapping {
    /// The router's template (IPFIX form) the mapping was made for: a
    /// redefinition of the id shows as a different template here.
    pub(super) router_template: Template,
    pub(super) with_init_time: bool,
    pub(super) relay_id: Result<u16, &'static str>,
}

/// Maps and copies decoded records (the borrow-split part of a session).
pub(super) struct Forwarder<'a> {
    router: IpAddr,
    message_size: usize,
    best_effort_domains: &'a [u32],
    mappings: &'a mut HashMap<(InputProtocol, u32, u16), Mapping>,
    registry: &'a SharedRegistry,
    out: &'a mut Vec<InputRecord>,
    report: &'a mut InputReport,
}

impl<'a> Forwarder<'a> {
    /// Forwards the records of one message of `router`'s session into
    /// `out`, accounting in `report`.
    pub(super) fn new(
        router: IpAddr,
        limits: &'a SessionLimits,
        mappings: &'a mut HashMap<(InputProtocol, u32, u16), Mapping>,
        registry: &'a SharedRegistry,
        out: &'a mut Vec<InputRecord>,
        report: &'a mut InputReport,
    ) -> Self {
        Self {
            router,
            message_size: limits.message_size,
            best_effort_domains: &limits.best_effort_domains,
            mappings,
            registry,
            out,
            report,
        }
    }

    /// `init_ms`: NetFlow v9's boot time from the packet header, used when
    /// the template has sysUpTime times.
    pub(super) fn record(
        &mut self,
        protocol: InputProtocol,
        domain: u32,
        template: &Template,
        bytes: &[u8],
        init_ms: Option<u64>,
    ) {
        self.report.records += 1;
        let key = (protocol, domain, template.id);
        let current = self.mappings.get(&key).is_some_and(|m| {
            m.router_template.scope_field_count == template.scope_field_count
                && m.router_template.fields == template.fields
        });
        if !current {
            let with_init_time = init_ms.is_some() && has_uptime_times(template);
            let (scope, fields) = forwarded_layout(template, self.router, with_init_time);
            let relay_id = match self.registry.lock().relay_id(scope, &fields) {
                Ok(id) => Ok(id),
                Err(RegistryError::Limit(limit)) => {
                    self.report.error(
                        "template_limit",
                        format!("relay template limit {limit}: template {} of domain {domain} not forwarded", template.id),
                    );
                    Err("template_limit")
                }
            };
            self.mappings.insert(
                key,
                Mapping {
                    router_template: template.clone(),
                    with_init_time,
                    relay_id,
                },
            );
        }
        let mapping = &self.mappings[&key];
        let relay_id = match mapping.relay_id {
            Ok(id) => id,
            Err(reason) => {
                self.report.drop_records(reason, 1);
                return;
            }
        };
        let init_ms = init_ms.filter(|_| mapping.with_init_time);
        let record = forwarded_record(bytes, init_ms, self.router);
        if record.len() + MESSAGE_OVERHEAD > self.message_size {
            self.report.drop_records("record_too_long", 1);
            return;
        }
        if domain == protocol::ipfix::reliability::STATISTICS_DOMAIN {
            // Reserved for the exporter's own reliability statistics: its
            // sequence numbers count those, not billing records.
            self.report.drop_records("reserved_domain", 1);
            return;
        }
        let class = if self.best_effort_domains.contains(&domain) {
            RecordClass::BestEffort
        } else {
            RecordClass::Billing
        };
        self.out.push(InputRecord {
            domain,
            template_id: relay_id,
            bytes: record,
            class,
        });
        self.report.forwarded += 1;
    }
}
