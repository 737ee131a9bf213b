//! Routers, templates and messages the relay's tests share.

use std::net::{IpAddr, Ipv4Addr};

use protocol::ipfix::registry::ids;
use protocol::ipfix::{FieldSpecifier, MessageWriter, Template};

use super::session::SessionLimits;

pub(super) const ROUTER_A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
/// A domain configured best effort in [`limits`].
pub(super) const BEST_EFFORT_DOMAIN: u32 = 77;
pub(super) const ROUTER_B: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));

pub(super) fn limits() -> SessionLimits {
    SessionLimits {
        max_templates: 16,
        max_domains: 16,
        template_lifetime_secs: 1800,
        message_size: 1400,
        best_effort_domains: vec![BEST_EFFORT_DOMAIN],
    }
}

/// src addr, dst addr, packets, octets.
pub(super) fn router_template(id: u16) -> Template {
    Template::new(
        id,
        0,
        vec![
            FieldSpecifier::iana(ids::SOURCE_IPV4_ADDRESS, 4),
            FieldSpecifier::iana(ids::DESTINATION_IPV4_ADDRESS, 4),
            FieldSpecifier::iana(2, 4),
            FieldSpecifier::iana(1, 4),
        ],
    )
}

pub(super) fn ipfix_message(domain: u32, template: &Template, records: &[[u8; 16]]) -> Vec<u8> {
    let mut writer = MessageWriter::new(1400);
    writer.start(domain, 1_763_700_000, 0);
    writer.add_template(template).unwrap();
    for record in records {
        writer.add_record(template.id, record).unwrap();
    }
    writer.finish().to_vec()
}

pub(super) fn record(n: u8) -> [u8; 16] {
    [10, 0, 0, n, 192, 0, 2, 10, 0, 0, 0, 3, 0, 0, 1, 44]
}

/// A NetFlow v9 packet: one template (id 300) with the v9 field types
/// IN_BYTES 1, IN_PKTS 2, IPV4_SRC_ADDR 8, LAST_SWITCHED 21,
/// FIRST_SWITCHED 22, and one data record.
pub(super) fn v9_packet() -> Vec<u8> {
    let mut p = Vec::new();
    let header = |p: &mut Vec<u8>| {
        p.extend_from_slice(&9u16.to_be_bytes());
        p.extend_from_slice(&2u16.to_be_bytes()); // count
        p.extend_from_slice(&60_000u32.to_be_bytes()); // sysUpTime
        p.extend_from_slice(&1_763_700_000u32.to_be_bytes()); // unix secs
        p.extend_from_slice(&0u32.to_be_bytes()); // sequence
        p.extend_from_slice(&42u32.to_be_bytes()); // source id
    };
    header(&mut p);
    let fields: [(u16, u16); 5] = [(1, 4), (2, 4), (8, 4), (21, 4), (22, 4)];
    p.extend_from_slice(&0u16.to_be_bytes());
    p.extend_from_slice(&(4 + 4 + 4 * fields.len() as u16).to_be_bytes());
    p.extend_from_slice(&300u16.to_be_bytes());
    p.extend_from_slice(&(fields.len() as u16).to_be_bytes());
    for (t, l) in fields {
        p.extend_from_slice(&t.to_be_bytes());
        p.extend_from_slice(&l.to_be_bytes());
    }
    p.extend_from_slice(&300u16.to_be_bytes());
    p.extend_from_slice(&(4 + 20u16).to_be_bytes());
    for v in [
        1000u32,
        3,
        u32::from_be_bytes([10, 0, 0, 7]),
        59_000,
        58_000,
    ] {
        p.extend_from_slice(&v.to_be_bytes());
    }
    p
}
