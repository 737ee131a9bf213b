//! From a decoded IPFIX Data Record to the row the store keeps: the common
//! flow fields in typed columns, every other field in a compact `extra` blob.
//!
//! `extra` encoding (documented in README.md): a sequence of fields, each
//! `enterprise` (LEB128 varint, 0 = IANA), `element id` (2 bytes, big
//! endian), `length` (LEB128 varint), then `length` value bytes exactly as
//! received (network byte order, reduced-size encodings kept).

use std::net::IpAddr;

use protocol::ipfix::{DataRecord, IANA_ENTERPRISE, record_fields};

/// Seconds between the NTP epoch (1900) and the UNIX epoch (1970).
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

/// The flow fields with typed columns. `None` where the template lacks them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowFields {
    /// sourceIPv4Address or sourceIPv6Address (IE 8, 27).
    pub src_addr: Option<IpAddr>,
    /// destinationIPv4Address or destinationIPv6Address (IE 12, 28).
    pub dst_addr: Option<IpAddr>,
    /// sourceTransportPort (IE 7).
    pub src_port: Option<u16>,
    /// destinationTransportPort (IE 11).
    pub dst_port: Option<u16>,
    /// protocolIdentifier (IE 4).
    pub protocol: Option<u8>,
    /// tcpControlBits (IE 6).
    pub tcp_flags: Option<u16>,
    /// ipClassOfService (IE 5).
    pub tos: Option<u8>,
    /// octetDeltaCount or octetTotalCount (IE 1, 85).
    pub octets: Option<u64>,
    /// packetDeltaCount or packetTotalCount (IE 2, 86).
    pub packets: Option<u64>,
    /// Flow start, unix milliseconds (from any of its IPFIX encodings).
    pub flow_start_ms: Option<i64>,
    /// Flow end, unix milliseconds (from any of its IPFIX encodings).
    pub flow_end_ms: Option<i64>,
    /// ingressInterface (IE 10).
    pub ingress_if: Option<u32>,
    /// egressInterface (IE 14).
    pub egress_if: Option<u32>,
}

/// One record as it goes into the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// "ip:port" of the exporting process.
    pub exporter: String,
    /// Transport label: udp, tcp, sctp.
    pub transport: &'static str,
    /// Observation domain id.
    pub domain: u32,
    /// Template id the record follows.
    pub template_id: u16,
    /// Export time of the message, unix seconds.
    pub export_time: u32,
    /// Sequence number of the message header.
    pub message_sequence: u32,
    /// Position of the record among the message's data records.
    pub record_index: u32,
    /// When the message arrived, unix milliseconds.
    pub received_ms: i64,
    /// The fields with typed columns.
    pub fields: FlowFields,
    /// The other fields, encoded as stored (`extra_fields` reads them).
    pub extra: Vec<u8>,
}

/// What a sequence-number anomaly was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceEventKind {
    /// Records were never received (RFC 7011 section 3.1).
    Gap,
    /// A message arrived after later ones, or the exporter restarted its
    /// counter.
    Behind,
    /// No expectation was possible (the previous message held data sets of
    /// an unknown template).
    Resync,
}

impl SequenceEventKind {
    /// The stored name: gap, behind, resync.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gap => "gap",
            Self::Behind => "behind",
            Self::Resync => "resync",
        }
    }
}

/// A sequence-number anomaly, kept in the store next to the records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceEvent {
    /// "ip:port" of the exporting process.
    pub exporter: String,
    /// Transport label: udp, tcp, sctp.
    pub transport: &'static str,
    /// Observation domain id.
    pub domain: u32,
    /// SCTP stream (0 for other transports).
    pub stream: u16,
    /// When it was seen, unix milliseconds.
    pub at_ms: i64,
    /// What it was.
    pub kind: SequenceEventKind,
    /// Sequence number of the message that showed it.
    pub sequence: u32,
    /// Records lost (gap) or behind (late).
    pub records: u64,
}

/// 64-bit hash of a record's bytes, by which the audit tells identical
/// copies of a record sequence from conflicting ones; the PostgreSQL tier
/// keeps it per record (`flows.record_hash`) for the same purpose, so it
/// must never change between builds: SipHash-1-3 with zero keys, from the
/// `siphasher` crate by the algorithm's specification (std's `DefaultHasher`
/// computes the same today but promises no algorithm across Rust releases).
/// Two different records colliding is a 2^-64 event per comparison.
pub fn record_hash(bytes: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut hasher = siphasher::sip::SipHasher13::new_with_keys(0, 0);
    hasher.write(bytes);
    hasher.finish()
}

/// Reads an unsigned integer of 1 to 8 bytes (reduced-size encoding, RFC
/// 7011 section 6.2).
fn unsigned(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > 8 {
        return None;
    }
    Some(bytes.iter().fold(0u64, |acc, b| (acc << 8) | *b as u64))
}

fn ntp_to_unix_ms(bytes: &[u8]) -> Option<i64> {
    let raw: [u8; 8] = bytes.try_into().ok()?;
    let seconds = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]) as u64;
    let fraction = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]) as u64;
    let millis = (fraction * 1000) >> 32;
    Some((seconds as i64 - NTP_UNIX_OFFSET_SECS as i64) * 1000 + millis as i64)
}

fn address(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn get_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Appends one field to an `extra` blob.
pub fn put_extra(out: &mut Vec<u8>, enterprise: u32, id: u16, value: &[u8]) {
    put_varint(out, enterprise as u64);
    out.extend_from_slice(&id.to_be_bytes());
    put_varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

/// Splits an `extra` blob into (enterprise, element id, value) triples.
/// Stops at the first malformed entry (a damaged blob cannot be resynced).
pub fn extra_fields(blob: &[u8]) -> impl Iterator<Item = (u32, u16, &[u8])> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        if pos >= blob.len() {
            return None;
        }
        let enterprise = u32::try_from(get_varint(blob, &mut pos)?).ok()?;
        let id = u16::from_be_bytes(blob.get(pos..pos + 2)?.try_into().ok()?);
        pos += 2;
        let len = get_varint(blob, &mut pos)? as usize;
        let value = blob.get(pos..pos.checked_add(len)?)?;
        pos += len;
        Some((enterprise, id, value))
    })
}

/// Splits a data record into typed columns and `extra`.
pub fn flow_fields(record: &DataRecord<'_>) -> (FlowFields, Vec<u8>) {
    let mut f = FlowFields::default();
    let mut extra = Vec::new();
    // sysUpTime-relative times need systemInitTimeMilliseconds, which may come
    // after them in the record.
    let mut start_uptime = None;
    let mut end_uptime = None;
    let mut init_ms = None;
    for (spec, value) in record_fields(record.template, record.bytes) {
        let used = spec.enterprise == IANA_ENTERPRISE
            && match spec.id {
                8 | 27 if f.src_addr.is_none() => set(&mut f.src_addr, address(value)),
                12 | 28 if f.dst_addr.is_none() => set(&mut f.dst_addr, address(value)),
                7 if f.src_port.is_none() => set(&mut f.src_port, narrow(value)),
                11 if f.dst_port.is_none() => set(&mut f.dst_port, narrow(value)),
                4 if f.protocol.is_none() => set(&mut f.protocol, narrow(value)),
                6 if f.tcp_flags.is_none() => set(&mut f.tcp_flags, narrow(value)),
                5 if f.tos.is_none() => set(&mut f.tos, narrow(value)),
                1 | 85 if f.octets.is_none() => set(&mut f.octets, unsigned(value)),
                2 | 86 if f.packets.is_none() => set(&mut f.packets, unsigned(value)),
                10 if f.ingress_if.is_none() => set(&mut f.ingress_if, narrow(value)),
                14 if f.egress_if.is_none() => set(&mut f.egress_if, narrow(value)),
                150 if f.flow_start_ms.is_none() => set(
                    &mut f.flow_start_ms,
                    unsigned(value).map(|s| s as i64 * 1000),
                ),
                151 if f.flow_end_ms.is_none() => {
                    set(&mut f.flow_end_ms, unsigned(value).map(|s| s as i64 * 1000))
                }
                152 if f.flow_start_ms.is_none() => {
                    set(&mut f.flow_start_ms, unsigned(value).map(|v| v as i64))
                }
                153 if f.flow_end_ms.is_none() => {
                    set(&mut f.flow_end_ms, unsigned(value).map(|v| v as i64))
                }
                154 | 156 if f.flow_start_ms.is_none() => {
                    set(&mut f.flow_start_ms, ntp_to_unix_ms(value))
                }
                155 | 157 if f.flow_end_ms.is_none() => {
                    set(&mut f.flow_end_ms, ntp_to_unix_ms(value))
                }
                _ => false,
            };
        if !used {
            // The uptime fields stay in `extra` too: they are the raw truth.
            if spec.enterprise == IANA_ENTERPRISE {
                match spec.id {
                    22 => start_uptime = unsigned(value),
                    21 => end_uptime = unsigned(value),
                    160 => init_ms = unsigned(value),
                    _ => {}
                }
            }
            put_extra(&mut extra, spec.enterprise, spec.id, value);
        }
    }
    if let Some(init) = init_ms {
        if f.flow_start_ms.is_none() {
            f.flow_start_ms = start_uptime.map(|u| (init + u) as i64);
        }
        if f.flow_end_ms.is_none() {
            f.flow_end_ms = end_uptime.map(|u| (init + u) as i64);
        }
    }
    (f, extra)
}

fn set<T>(slot: &mut Option<T>, value: Option<T>) -> bool {
    let ok = value.is_some();
    if ok {
        *slot = value;
    }
    ok
}

fn narrow<T: TryFrom<u64>>(bytes: &[u8]) -> Option<T> {
    unsigned(bytes).and_then(|v| T::try_from(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ipfix::flow::{FlowRecord, flow_template};
    use protocol::ipfix::{FieldSpecifier, MessageHeader, Template, VARIABLE_LENGTH};

    /// The values stores and the PostgreSQL tier already hold (computed by
    /// the std `DefaultHasher` this replaced): a change here would make the
    /// audit call every stored record a conflict.
    #[test]
    fn record_hash_is_pinned_across_builds() {
        assert_eq!(record_hash(b""), 0xd1fb_a762_150c_532c);
        assert_eq!(record_hash(b"poolflow"), 0x608b_30ff_f97a_6510);
        let counting: Vec<u8> = (0..15).collect();
        assert_eq!(record_hash(&counting), 0xf30e_b725_bb91_c9ea);
    }

    fn header() -> MessageHeader {
        MessageHeader {
            version: 10,
            length: 0,
            export_time: 0,
            sequence_number: 0,
            observation_domain_id: 0,
        }
    }

    #[test]
    fn flow_template_fills_typed_columns() {
        let flow = FlowRecord::synthetic(12345, 1_700_000_000_000);
        let mut bytes = Vec::new();
        flow.encode(&mut bytes);
        let template = flow_template();
        let h = header();
        let (f, extra) = flow_fields(&DataRecord {
            header: &h,
            template: &template,
            bytes: &bytes,
            index_in_message: 0,
        });
        assert!(extra.is_empty(), "every field has a column");
        assert_eq!(f.src_addr, Some(IpAddr::V4(flow.source)));
        assert_eq!(f.dst_addr, Some(IpAddr::V4(flow.destination)));
        assert_eq!(f.src_port, Some(flow.source_port));
        assert_eq!(f.dst_port, Some(flow.destination_port));
        assert_eq!(f.protocol, Some(flow.protocol));
        assert_eq!(f.tcp_flags, Some(flow.tcp_flags as u16));
        assert_eq!(f.octets, Some(flow.octets));
        assert_eq!(f.packets, Some(flow.packets));
        assert_eq!(f.flow_start_ms, Some(flow.start_millis as i64));
        assert_eq!(f.flow_end_ms, Some(flow.end_millis as i64));
    }

    #[test]
    fn other_fields_go_to_extra_and_come_back() {
        let template = Template::new(
            300,
            0,
            vec![
                FieldSpecifier::iana(8, 4),
                FieldSpecifier::iana(82, VARIABLE_LENGTH),
                FieldSpecifier::enterprise(29305, 7, 2),
                FieldSpecifier::iana(22, 4),
                FieldSpecifier::iana(160, 8),
                FieldSpecifier::iana(2, 4), // reduced-size packetDeltaCount
            ],
        );
        let mut bytes = vec![192, 0, 2, 1, 4, b'e', b't', b'h', b'0', 0xab, 0xcd];
        bytes.extend_from_slice(&500u32.to_be_bytes());
        bytes.extend_from_slice(&1_000_000u64.to_be_bytes());
        bytes.extend_from_slice(&77u32.to_be_bytes());
        let h = header();
        let (f, extra) = flow_fields(&DataRecord {
            header: &h,
            template: &template,
            bytes: &bytes,
            index_in_message: 0,
        });
        assert_eq!(f.src_addr, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(f.packets, Some(77));
        assert_eq!(f.flow_start_ms, Some(1_000_500), "init time + uptime");
        let fields: Vec<_> = extra_fields(&extra).collect();
        assert_eq!(
            fields,
            vec![
                (0, 82, &b"eth0"[..]),
                (29305, 7, &[0xab, 0xcd][..]),
                (0, 22, &500u32.to_be_bytes()[..]),
                (0, 160, &1_000_000u64.to_be_bytes()[..]),
            ]
        );
    }

    #[test]
    fn ntp_timestamps_convert_to_unix_millis() {
        let mut ntp = Vec::new();
        ntp.extend_from_slice(&((NTP_UNIX_OFFSET_SECS + 10) as u32).to_be_bytes());
        ntp.extend_from_slice(&(1u32 << 31).to_be_bytes()); // half a second
        assert_eq!(ntp_to_unix_ms(&ntp), Some(10_500));
    }

    #[test]
    fn damaged_extra_blob_stops_cleanly() {
        let mut blob = Vec::new();
        put_extra(&mut blob, 0, 82, b"abc");
        blob.extend_from_slice(&[0, 0, 5, 200]); // length 200, nothing follows
        assert_eq!(extra_fields(&blob).count(), 1);
    }
}
