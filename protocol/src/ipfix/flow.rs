//! A standard 11-field IPv4 flow record: the template every load generator,
//! benchmark and test of this project sends, so that third-party collectors
//! (nfcapd, nfacctd) accept the same load as ours.

use std::net::Ipv4Addr;

use super::encode::{MessageFull, MessageWriter};
use super::template::{FieldSpecifier, Template};

/// Template ID used for [`FlowRecord`]s.
pub const FLOW_TEMPLATE_ID: u16 = 256;
/// Encoded size of one [`FlowRecord`].
pub const FLOW_RECORD_LEN: usize = 47;

/// One IPFIX message of `domain` whose header carries `sequence` (export
/// time 1,700,000,000): the flow template, then `records` synthetic records
/// ([`FlowRecord::synthetic`] 0.., base 0). The test message of the
/// decoders' and sessions' tests.
pub fn synthetic_message(domain: u32, sequence: u32, records: u64) -> Vec<u8> {
    let mut writer = MessageWriter::new(65_000);
    writer.start(domain, 1_700_000_000, sequence);
    writer
        .add_template(&flow_template())
        .expect("a template fits an empty message");
    for n in 0..records {
        FlowRecord::synthetic(n, 0)
            .write_to(&mut writer)
            .expect("records fit a 65,000-byte message");
    }
    writer.finish().to_vec()
}

/// The template of [`FlowRecord`], IANA elements only.
pub fn flow_template() -> Template {
    Template::new(
        FLOW_TEMPLATE_ID,
        0,
        vec![
            FieldSpecifier::iana(8, 4),   // sourceIPv4Address
            FieldSpecifier::iana(12, 4),  // destinationIPv4Address
            FieldSpecifier::iana(7, 2),   // sourceTransportPort
            FieldSpecifier::iana(11, 2),  // destinationTransportPort
            FieldSpecifier::iana(4, 1),   // protocolIdentifier
            FieldSpecifier::iana(6, 1),   // tcpControlBits (reduced size)
            FieldSpecifier::iana(5, 1),   // ipClassOfService
            FieldSpecifier::iana(1, 8),   // octetDeltaCount
            FieldSpecifier::iana(2, 8),   // packetDeltaCount
            FieldSpecifier::iana(152, 8), // flowStartMilliseconds
            FieldSpecifier::iana(153, 8), // flowEndMilliseconds
        ],
    )
}

/// One IPv4 flow as the exporter and the generators build it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowRecord {
    /// sourceIPv4Address (IE 8).
    pub source: Ipv4Addr,
    /// destinationIPv4Address (IE 12).
    pub destination: Ipv4Addr,
    /// sourceTransportPort (IE 7); 0 for protocols without ports.
    pub source_port: u16,
    /// destinationTransportPort (IE 11).
    pub destination_port: u16,
    /// protocolIdentifier (IE 4): the IP protocol number (6 TCP, 17 UDP).
    pub protocol: u8,
    /// tcpControlBits (IE 6): the TCP flags seen in the flow (FIN 0x01 to
    /// URG 0x20), sent in 1 byte, a reduced-size encoding of the registry's
    /// unsigned16 (RFC 7011 §6.2).
    pub tcp_flags: u8,
    /// ipClassOfService (IE 5): the IPv4 TOS byte (DSCP and ECN).
    pub tos: u8,
    /// octetDeltaCount (IE 1): bytes of the flow's packets, IP headers
    /// included, in octets. What billing charges for.
    pub octets: u64,
    /// packetDeltaCount (IE 2): packets of the flow.
    pub packets: u64,
    /// flowStartMilliseconds (IE 152): first packet, milliseconds since the
    /// UNIX epoch.
    pub start_millis: u64,
    /// flowEndMilliseconds (IE 153): last packet, milliseconds since the
    /// UNIX epoch.
    pub end_millis: u64,
}

impl FlowRecord {
    /// Appends the record in the layout of [`flow_template`].
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bytes());
    }

    /// The encoded record, in the template's field order, without a heap
    /// allocation.
    pub fn to_bytes(&self) -> [u8; FLOW_RECORD_LEN] {
        let mut out = [0u8; FLOW_RECORD_LEN];
        let mut at = 0;
        let mut put = |field: &[u8]| {
            out[at..at + field.len()].copy_from_slice(field);
            at += field.len();
        };
        put(&self.source.octets());
        put(&self.destination.octets());
        put(&self.source_port.to_be_bytes());
        put(&self.destination_port.to_be_bytes());
        put(&[self.protocol, self.tcp_flags, self.tos]);
        put(&self.octets.to_be_bytes());
        put(&self.packets.to_be_bytes());
        put(&self.start_millis.to_be_bytes());
        put(&self.end_millis.to_be_bytes());
        debug_assert_eq!(at, FLOW_RECORD_LEN);
        out
    }

    /// Writes the record into the message's data set for [`FLOW_TEMPLATE_ID`].
    pub fn write_to(&self, writer: &mut MessageWriter) -> Result<(), MessageFull> {
        writer.add_record_with(FLOW_TEMPLATE_ID, FLOW_RECORD_LEN, |out| self.encode(out))
    }

    /// A deterministic synthetic flow, different for every `n`: generators
    /// and tests can recompute what they sent.
    pub fn synthetic(n: u64, base_millis: u64) -> Self {
        let host = (n % 65_000) as u32;
        Self {
            source: Ipv4Addr::from(0x0a00_0000 | host),
            destination: Ipv4Addr::from(0xc0a8_0000 | ((n / 7) % 65_000) as u32),
            source_port: 1024 + (n % 60_000) as u16,
            destination_port: [80, 443, 53, 123, 22][(n % 5) as usize],
            protocol: if n % 3 == 0 { 17 } else { 6 },
            tcp_flags: (n % 64) as u8,
            tos: 0,
            octets: 40 + n % 1500 * 10,
            packets: 1 + n % 10,
            start_millis: base_millis + n,
            end_millis: base_millis + n + 1000,
        }
    }
}
