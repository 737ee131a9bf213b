//! NetFlow version 9 (RFC 3954) decoding, sans-IO: feed complete export
//! packets (one UDP datagram each) to a [`Session`] and get data records laid
//! out by IPFIX [`Template`]s, so the rest of the collector handles NetFlow
//! v9 and IPFIX input alike.
//!
//! Wire format (RFC 3954 sections 5 and 6):
//! - Packet header, 20 bytes: version (9), count, sysUpTime (ms), UNIX
//!   seconds, sequence number, source id. The header has no length: the
//!   packet is the datagram. `count` is the number of records of all kinds
//!   (template, options template and data records) in the packet. Unlike
//!   IPFIX, the sequence number counts export *packets*, not data records.
//! - FlowSets: id (2 bytes), length (2 bytes, including this header and the
//!   padding to a 4-byte boundary). Id 0 holds Template records, id 1
//!   Options Template records, ids 2-255 are reserved and ids >= 256 are Data
//!   FlowSets of the template with that id.
//! - A Template record: template id, field count, then (type, length) pairs.
//!   An Options Template record: template id, option scope length, option
//!   length — both in BYTES of (type, length) pairs, where IPFIX counts
//!   fields — then the scope pairs and the option pairs.
//!
//! Mapping to IPFIX templates:
//! - Field types share their numbers with IANA Information Elements: RFC
//!   7012 section 4 keeps ids 1-127 compatible with NetFlow v9, and the ids
//!   Cisco assigned above 127 were registered with IANA under the same
//!   numbers. Every (type, length) becomes `FieldSpecifier::iana(type,
//!   length)`.
//! - Scope field types are a separate number space in v9 (1 System,
//!   2 Interface, 3 Line Card, 4 Cache, 5 Template) that collides with field
//!   types 1-5, so each is mapped to the IPFIX element that names the same
//!   thing (see [`scope_element`]): System to exporterIPv4Address (length
//!   4), exporterIPv6Address (length 16) or otherwise exportingProcessId;
//!   Interface to ingressInterface; Line Card to lineCardId; Cache to
//!   meteringProcessId (a NetFlow cache is the metering process's flow
//!   cache); Template to templateId. The original scope types stay available
//!   in [`V9Template::scope_fields`].
//! - v9 has no variable-length fields: a field length of 65535 (the IPFIX
//!   variable-length marker) is refused rather than misread.
//!
//! Errors never stop the decoding of what can still be located: a bad
//! template record is skipped when its length is known, a FlowSet of an
//! unknown template is skipped, and only a FlowSet whose length is wrong
//! ends the packet (nothing after it can be found). Records before any error
//! are always delivered.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use nom::IResult;
use nom::Parser;
use nom::number::complete::{be_u16, be_u32};

use crate::ipfix::message::record_fields;
use crate::ipfix::registry::ids;
use crate::ipfix::template::{FieldSpecifier, Template, VARIABLE_LENGTH};

/// NetFlow version number in the packet header.
pub const VERSION: u16 = 9;
/// Packet header length in bytes.
pub const HEADER_LEN: usize = 20;
/// FlowSet header length in bytes.
pub const FLOWSET_HEADER_LEN: usize = 4;
/// FlowSet id of Template FlowSets.
pub const TEMPLATE_FLOWSET_ID: u16 = 0;
/// FlowSet id of Options Template FlowSets.
pub const OPTIONS_TEMPLATE_FLOWSET_ID: u16 = 1;
/// Smallest Data FlowSet id, and smallest template id.
pub const MIN_DATA_FLOWSET_ID: u16 = 256;
/// Longest record any packet can carry: the largest datagram payload minus
/// the packet and FlowSet headers. A template with longer records is bogus.
pub const MAX_RECORD_LEN: usize = u16::MAX as usize - HEADER_LEN - FLOWSET_HEADER_LEN;

/// Everything that can be wrong with NetFlow v9 input. Each variant names a
/// reason an operator can act on; count them by [`Self::reason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The datagram is shorter than the 20-byte packet header (RFC 3954
    /// §5.1). The whole packet is lost.
    #[error("packet truncated: {have} bytes, the header needs {HEADER_LEN}")]
    TruncatedHeader {
        /// Bytes the datagram had.
        have: usize,
    },
    /// The Version field is not 9 (RFC 3954 §5.1): NetFlow v5 or IPFIX
    /// (10) sent to the v9 port. Carries the version found. The whole
    /// packet is lost.
    #[error("wrong version {0}, expected {VERSION}")]
    WrongVersion(u16),
    /// 1 to 3 bytes, not all zero, follow the last FlowSet: too few for a
    /// FlowSet header (RFC 3954 §5.2). Zeros there are taken as padding
    /// and not reported.
    #[error("{remaining} stray bytes at offset {offset}, too few for a flowset header")]
    FlowSetHeaderTruncated {
        /// Offset of the stray bytes from the start of the packet.
        offset: usize,
        /// How many there are.
        remaining: usize,
    },
    /// A FlowSet declares a length below its own 4-byte header (RFC 3954
    /// §5.2). Nothing after it can be located: the rest of the packet is
    /// lost.
    #[error("flowset at offset {offset} declares length {length}, below the flowset header size")]
    FlowSetTooShort {
        /// Offset of the FlowSet from the start of the packet, bytes.
        offset: usize,
        /// The FlowSet's Length field, octets.
        length: u16,
    },
    /// A FlowSet declares more bytes than the datagram has left. The rest
    /// of the packet is lost.
    #[error(
        "flowset {flowset_id} at offset {offset} declares length {length}, only {remaining} bytes remain"
    )]
    FlowSetOverrun {
        /// Offset of the FlowSet from the start of the packet, bytes.
        offset: usize,
        /// The FlowSet ID of its header.
        flowset_id: u16,
        /// The FlowSet's Length field, octets.
        length: u16,
        /// Bytes of the datagram from the FlowSet's start to its end.
        remaining: usize,
    },
    /// A FlowSet ID of 2 to 255, reserved by RFC 3954 §5.2. Only this
    /// FlowSet is skipped: its length is valid, so later ones decode.
    #[error("flowset id {flowset_id} at offset {offset} is reserved")]
    ReservedFlowSetId {
        /// Offset of the FlowSet from the start of the packet, bytes.
        offset: usize,
        /// The reserved FlowSet ID.
        flowset_id: u16,
    },
    /// A (Options) Template record runs past the end of its FlowSet
    /// (RFC 3954 §5.2, §6.1): the rest of the FlowSet is lost.
    #[error("template record truncated in flowset {flowset_id}")]
    TemplateTruncated {
        /// The FlowSet ID: 0 (Template) or 1 (Options Template).
        flowset_id: u16,
    },
    /// A template defines an ID below 256 (RFC 3954 §5.2 numbers templates
    /// from 256; lower values are the FlowSet IDs of Template, Options and
    /// reserved FlowSets). Carries the ID. Only this record is skipped.
    #[error("template id {0} is below {MIN_DATA_FLOWSET_ID}")]
    TemplateIdReserved(u16),
    /// A Template record with a Field Count of 0, or an Options Template
    /// with neither scope nor option fields. v9 has no withdrawals, so
    /// such a record describes nothing; it is skipped.
    #[error("template {template_id} has zero fields")]
    TemplateWithoutFields {
        /// The template's ID.
        template_id: u16,
    },
    /// An Options Template whose Option Scope Length or Option Length
    /// (bytes of (type, length) pairs, RFC 3954 §6.1) is not a multiple of
    /// 4. The next record cannot be trusted to start after it: the rest of
    /// the FlowSet is lost.
    #[error(
        "options template {template_id}: scope length {scope_length} and option length {option_length} must be multiples of 4"
    )]
    BadOptionsLengths {
        /// The template's ID.
        template_id: u16,
        /// Option Scope Length, bytes.
        scope_length: u16,
        /// Option Length, bytes.
        option_length: u16,
    },
    /// An Options Template with option fields but no scope field: its
    /// records would not say what they describe, and its IPFIX equivalent
    /// would be an ordinary template (RFC 7011 §3.4.2.2 requires a scope
    /// field in Options Templates). The record is skipped.
    #[error("options template {template_id} has no scope field")]
    OptionsWithoutScope {
        /// The template's ID.
        template_id: u16,
    },
    /// An Options Template scope type outside 1 to 5 (System, Interface,
    /// Line Card, Cache, Template; RFC 3954 §6.1). The record is skipped.
    #[error("options template {template_id} uses unknown scope type {scope_type}")]
    UnknownScopeType {
        /// The template's ID.
        template_id: u16,
        /// The scope field type found.
        scope_type: u16,
    },
    /// A field of length 65535, the IPFIX variable-length marker, which
    /// v9 does not have (its fields are fixed-length): refused rather than
    /// misread. The record is skipped.
    #[error("template {template_id}: field type {field_type} has invalid length {length}")]
    InvalidFieldLength {
        /// The template's ID.
        template_id: u16,
        /// The field type; for a scope field, the scope type (1 to 5), which
        /// shares its numbers with field types.
        field_type: u16,
        /// The field length, bytes.
        length: u16,
    },
    /// The template's records would be longer than [`MAX_RECORD_LEN`], so
    /// no datagram could carry one. The record is skipped.
    #[error("template {template_id} describes {length}-byte records, longer than any packet")]
    RecordTooLong {
        /// The template's ID.
        template_id: u16,
        /// Bytes of one record.
        length: usize,
    },
    /// Every field of the template has length 0: its records would take no
    /// bytes and a Data FlowSet could hold any number of them.
    #[error("template {template_id} describes records of zero bytes")]
    EmptyRecord {
        /// The template's ID.
        template_id: u16,
    },
    /// A new template is refused: its source holds
    /// [`SessionConfig::max_templates_per_source`] or the session
    /// [`SessionConfig::max_templates`]. Data FlowSets of it then fail as
    /// [`Self::UnknownTemplate`].
    #[error("template limit of {limit} reached, template {template_id} dropped")]
    TemplateLimit {
        /// The refused template's ID.
        template_id: u16,
        /// The limit that was reached, templates.
        limit: usize,
    },
    /// A new (exporter, source id) would exceed
    /// [`SessionConfig::max_sources`]: its templates are refused and its
    /// sequence numbers not checked.
    #[error("limit of {limit} tracked sources reached, source id {source_id} not tracked")]
    SourceLimit {
        /// The packet header's Source ID.
        source_id: u32,
        /// The configured limit, sources.
        limit: usize,
    },
    /// A Data FlowSet whose template is not in force for (exporter, source
    /// id): not received yet (v9 exporters resend templates only every few
    /// minutes or packets), expired, or refused. Its records are lost.
    #[error("data flowset for unknown template {template_id} of source id {source_id}")]
    UnknownTemplate {
        /// The packet header's Source ID.
        source_id: u32,
        /// The FlowSet ID, i.e. the template ID it needs.
        template_id: u16,
    },
    /// A Data FlowSet ends with bytes that are neither a whole record nor
    /// padding (up to 3 bytes, or all zeros; RFC 3954 §5.3): the template
    /// and the data disagree. The whole records before them were delivered.
    #[error("data flowset of template {template_id} ends with {length} bytes that are no record")]
    TrailingBytes {
        /// The template ID of the FlowSet.
        template_id: u16,
        /// Bytes left over.
        length: usize,
    },
}

impl DecodeError {
    /// A short stable label, used as the metrics label and in logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TruncatedHeader { .. } => "truncated_header",
            Self::WrongVersion(_) => "wrong_version",
            Self::FlowSetHeaderTruncated { .. } => "flowset_header_truncated",
            Self::FlowSetTooShort { .. } => "flowset_too_short",
            Self::FlowSetOverrun { .. } => "flowset_overrun",
            Self::ReservedFlowSetId { .. } => "reserved_flowset_id",
            Self::TemplateTruncated { .. } => "template_truncated",
            Self::TemplateIdReserved(_) => "template_id_reserved",
            Self::TemplateWithoutFields { .. } => "template_without_fields",
            Self::BadOptionsLengths { .. } => "bad_options_lengths",
            Self::OptionsWithoutScope { .. } => "options_without_scope",
            Self::UnknownScopeType { .. } => "unknown_scope_type",
            Self::InvalidFieldLength { .. } => "invalid_field_length",
            Self::RecordTooLong { .. } => "record_too_long",
            Self::EmptyRecord { .. } => "empty_record",
            Self::TemplateLimit { .. } => "template_limit",
            Self::SourceLimit { .. } => "source_limit",
            Self::UnknownTemplate { .. } => "unknown_template",
            Self::TrailingBytes { .. } => "trailing_bytes",
        }
    }
}

type NomResult<'a, T> = IResult<&'a [u8], T, nom::error::Error<&'a [u8]>>;

/// The NetFlow v9 packet header (RFC 3954 section 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketHeader {
    /// Version: always [`VERSION`] (9) in a header that parsed.
    pub version: u16,
    /// Records of all kinds in the packet, as the exporter claims.
    pub count: u16,
    /// Milliseconds since the exporting device booted, when the packet left.
    pub sys_uptime_ms: u32,
    /// Seconds since the UNIX epoch when the packet left.
    pub unix_secs: u32,
    /// Export packets sent before this one by this source id (it counts
    /// packets, where IPFIX counts data records).
    pub sequence_number: u32,
    /// The exporter's observation domain; templates are scoped to it.
    pub source_id: u32,
}

impl PacketHeader {
    /// UNIX milliseconds of a sysUpTime timestamp of this packet's exporter
    /// (flowStartSysUpTime / flowEndSysUpTime, v9 FIRST_SWITCHED /
    /// LAST_SWITCHED): the export time minus how long before it the
    /// timestamp was taken. Uptime wraps every 2^32 ms (49.7 days); a
    /// timestamp up to 2^31 ms "after" the header's is taken as slightly in
    /// the future rather than 49 days in the past. The header has second
    /// resolution only, so the result is exact to the second.
    pub fn uptime_to_unix_millis(&self, uptime_ms: u32) -> i64 {
        let before_export = self.sys_uptime_ms.wrapping_sub(uptime_ms) as i32;
        i64::from(self.unix_secs) * 1000 - i64::from(before_export)
    }
}

fn packet_header(input: &[u8]) -> NomResult<'_, PacketHeader> {
    let (rest, (version, count, sys_uptime_ms, unix_secs, sequence_number, source_id)) =
        (be_u16, be_u16, be_u32, be_u32, be_u32, be_u32).parse(input)?;
    Ok((
        rest,
        PacketHeader {
            version,
            count,
            sys_uptime_ms,
            unix_secs,
            sequence_number,
            source_id,
        },
    ))
}

/// One NetFlow v9 export packet: its header and its undecoded FlowSets.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    /// The decoded and checked packet header.
    pub header: PacketHeader,
    flowsets: &'a [u8],
}

impl<'a> Packet<'a> {
    /// Decodes the header of one complete packet (one datagram).
    pub fn parse(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let (flowsets, header) =
            packet_header(buf).map_err(|_| DecodeError::TruncatedHeader { have: buf.len() })?;
        if header.version != VERSION {
            return Err(DecodeError::WrongVersion(header.version));
        }
        Ok(Self { header, flowsets })
    }

    /// The FlowSets in order. After a FlowSet whose length is wrong nothing
    /// more can be located, so the iterator yields that error and ends.
    pub fn flowsets(&self) -> FlowSetIter<'a> {
        FlowSetIter {
            buf: self.flowsets,
            offset: HEADER_LEN,
            failed: false,
        }
    }
}

/// What a FlowSet holds, by its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowSetKind {
    /// FlowSet ID 0: Template records (RFC 3954 §5.2).
    Template,
    /// FlowSet ID 1: Options Template records (RFC 3954 §6.1).
    OptionsTemplate,
    /// FlowSet ID 256 or above: a Data FlowSet (RFC 3954 §5.3).
    Data {
        /// The FlowSet ID, which is the template ID of the records.
        template_id: u16,
    },
}

/// One FlowSet: its kind, where it starts in the packet, and its body
/// (without the FlowSet header, with any padding).
#[derive(Debug, Clone, Copy)]
pub struct FlowSet<'a> {
    /// What the FlowSet ID says it holds.
    pub kind: FlowSetKind,
    /// Offset of the FlowSet header from the start of the packet, bytes.
    pub offset: usize,
    /// Content after the 4-byte FlowSet header, padding included.
    pub body: &'a [u8],
}

impl<'a> FlowSet<'a> {
    /// The FlowSet ID as on the wire: 0, 1, or a Data FlowSet's template
    /// ID.
    pub fn id(&self) -> u16 {
        match self.kind {
            FlowSetKind::Template => TEMPLATE_FLOWSET_ID,
            FlowSetKind::OptionsTemplate => OPTIONS_TEMPLATE_FLOWSET_ID,
            FlowSetKind::Data { template_id } => template_id,
        }
    }

    /// Template records of a (Options) Template FlowSet; empty for data.
    pub fn templates(&self) -> TemplateRecordIter<'a> {
        TemplateRecordIter {
            flowset_id: self.id(),
            options: self.kind == FlowSetKind::OptionsTemplate,
            buf: match self.kind {
                FlowSetKind::Data { .. } => &[],
                _ => self.body,
            },
            failed: false,
        }
    }
}

/// Iterator over the FlowSets of a packet.
pub struct FlowSetIter<'a> {
    buf: &'a [u8],
    offset: usize,
    failed: bool,
}

impl<'a> Iterator for FlowSetIter<'a> {
    type Item = Result<FlowSet<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.buf.is_empty() {
            return None;
        }
        let offset = self.offset;
        let header: NomResult<'_, (u16, u16)> = (be_u16, be_u16).parse(self.buf);
        let Ok((_, (flowset_id, length))) = header else {
            self.failed = true;
            // A few zero bytes at the very end are padding of the datagram.
            if self.buf.iter().all(|&b| b == 0) {
                return None;
            }
            return Some(Err(DecodeError::FlowSetHeaderTruncated {
                offset,
                remaining: self.buf.len(),
            }));
        };
        let length_usize = length as usize;
        if length_usize < FLOWSET_HEADER_LEN {
            self.failed = true;
            return Some(Err(DecodeError::FlowSetTooShort { offset, length }));
        }
        if length_usize > self.buf.len() {
            self.failed = true;
            return Some(Err(DecodeError::FlowSetOverrun {
                offset,
                flowset_id,
                length,
                remaining: self.buf.len(),
            }));
        }
        let body = &self.buf[FLOWSET_HEADER_LEN..length_usize];
        self.buf = &self.buf[length_usize..];
        self.offset += length_usize;
        let kind = match flowset_id {
            TEMPLATE_FLOWSET_ID => FlowSetKind::Template,
            OPTIONS_TEMPLATE_FLOWSET_ID => FlowSetKind::OptionsTemplate,
            id if id >= MIN_DATA_FLOWSET_ID => FlowSetKind::Data { template_id: id },
            // Its length is trustworthy, so the FlowSets after it still decode.
            id => {
                return Some(Err(DecodeError::ReservedFlowSetId {
                    offset,
                    flowset_id: id,
                }));
            }
        };
        Some(Ok(FlowSet { kind, offset, body }))
    }
}

/// Scope field types of Options Templates (RFC 3954 section 6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScopeType {
    /// 1: the exporting device as a whole (its address or an id).
    System,
    /// 2: an interface, by SNMP ifIndex.
    Interface,
    /// 3: a line card of the device.
    LineCard,
    /// 4: the NetFlow cache.
    Cache,
    /// 5: a template, by its ID.
    Template,
}

impl ScopeType {
    /// The scope type of a wire value; `None` outside 1 to 5.
    pub fn from_wire(value: u16) -> Option<Self> {
        Some(match value {
            1 => Self::System,
            2 => Self::Interface,
            3 => Self::LineCard,
            4 => Self::Cache,
            5 => Self::Template,
            _ => return None,
        })
    }

    /// The scope field type as sent on the wire, 1 to 5.
    pub fn to_wire(self) -> u16 {
        match self {
            Self::System => 1,
            Self::Interface => 2,
            Self::LineCard => 3,
            Self::Cache => 4,
            Self::Template => 5,
        }
    }
}

/// The IANA Information Element an options scope field becomes in the IPFIX
/// template (see the module documentation for why these).
pub fn scope_element(scope: ScopeType, length: u16) -> u16 {
    match scope {
        ScopeType::System => match length {
            4 => ids::EXPORTER_IPV4_ADDRESS,
            16 => ids::EXPORTER_IPV6_ADDRESS,
            _ => ids::EXPORTING_PROCESS_ID,
        },
        ScopeType::Interface => ids::INGRESS_INTERFACE,
        ScopeType::LineCard => ids::LINE_CARD_ID,
        ScopeType::Cache => ids::METERING_PROCESS_ID,
        ScopeType::Template => ids::TEMPLATE_ID,
    }
}

/// A scope field of an Options Template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScopeField {
    /// What the scope value identifies.
    pub scope: ScopeType,
    /// Bytes of the scope value in each record.
    pub length: u16,
}

/// A field of a template: a field type (an IANA element id) and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct V9Field {
    /// Field type (RFC 3954 §8), the same number as the IANA Information
    /// Element id.
    pub field_type: u16,
    /// Bytes of the value in each record; never 65535 once validated.
    pub length: u16,
}

/// A validated Template or Options Template record as NetFlow v9 sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V9Template {
    /// Template ID, 256 or above once validated.
    pub id: u16,
    /// Empty for an ordinary template; at least one for an options template.
    pub scope_fields: Vec<ScopeField>,
    /// The (option) fields, after the scope fields in each record.
    pub fields: Vec<V9Field>,
}

impl V9Template {
    /// Whether this came as an Options Template (it has scope fields).
    pub fn is_options(&self) -> bool {
        !self.scope_fields.is_empty()
    }

    /// Bytes of one data record: scope fields first, then the fields.
    pub fn record_len(&self) -> usize {
        let scope: usize = self.scope_fields.iter().map(|s| s.length as usize).sum();
        let fields: usize = self.fields.iter().map(|f| f.length as usize).sum();
        scope + fields
    }

    /// The equivalent IPFIX template: scope fields mapped by
    /// [`scope_element`] come first, as in the data records.
    pub fn to_ipfix(&self) -> Template {
        let specifiers = self
            .scope_fields
            .iter()
            .map(|s| FieldSpecifier::iana(scope_element(s.scope, s.length), s.length))
            .chain(
                self.fields
                    .iter()
                    .map(|f| FieldSpecifier::iana(f.field_type, f.length)),
            )
            .collect();
        Template::new(self.id, self.scope_fields.len() as u16, specifiers)
    }

    /// Checks what a record of this template must satisfy to be decodable.
    fn validate(&self) -> Result<(), DecodeError> {
        let template_id = self.id;
        if template_id < MIN_DATA_FLOWSET_ID {
            return Err(DecodeError::TemplateIdReserved(template_id));
        }
        if self.fields.is_empty() && self.scope_fields.is_empty() {
            return Err(DecodeError::TemplateWithoutFields { template_id });
        }
        if let Some(field) = self.fields.iter().find(|f| f.length == VARIABLE_LENGTH) {
            return Err(DecodeError::InvalidFieldLength {
                template_id,
                field_type: field.field_type,
                length: field.length,
            });
        }
        if let Some(scope) = self
            .scope_fields
            .iter()
            .find(|s| s.length == VARIABLE_LENGTH)
        {
            return Err(DecodeError::InvalidFieldLength {
                template_id,
                field_type: scope.scope.to_wire(),
                length: scope.length,
            });
        }
        match self.record_len() {
            0 => Err(DecodeError::EmptyRecord { template_id }),
            length if length > MAX_RECORD_LEN => Err(DecodeError::RecordTooLong {
                template_id,
                length,
            }),
            _ => Ok(()),
        }
    }
}

/// Iterator over the records of a (Options) Template FlowSet.
pub struct TemplateRecordIter<'a> {
    flowset_id: u16,
    options: bool,
    buf: &'a [u8],
    failed: bool,
}

/// Reads `count` (type, length) pairs.
fn field_pairs(mut input: &[u8], count: usize) -> NomResult<'_, Vec<(u16, u16)>> {
    // Never trust `count` for the allocation beyond what the input can hold.
    let mut pairs = Vec::with_capacity(count.min(input.len() / 4));
    for _ in 0..count {
        let (rest, pair) = (be_u16, be_u16).parse(input)?;
        pairs.push(pair);
        input = rest;
    }
    Ok((input, pairs))
}

impl TemplateRecordIter<'_> {
    fn truncated(&self) -> DecodeError {
        DecodeError::TemplateTruncated {
            flowset_id: self.flowset_id,
        }
    }

    fn next_template(&mut self) -> Result<V9Template, DecodeError> {
        let template = if self.options {
            self.next_options_template()?
        } else {
            let (rest, (id, field_count)) = (be_u16, be_u16)
                .parse(self.buf)
                .map_err(|_: nom::Err<nom::error::Error<&[u8]>>| self.truncated())?;
            let (rest, pairs) =
                field_pairs(rest, field_count as usize).map_err(|_| self.truncated())?;
            self.buf = rest;
            V9Template {
                id,
                scope_fields: Vec::new(),
                fields: to_fields(pairs),
            }
        };
        template.validate()?;
        Ok(template)
    }

    fn next_options_template(&mut self) -> Result<V9Template, DecodeError> {
        let (rest, (id, scope_length, option_length)) = (be_u16, be_u16, be_u16)
            .parse(self.buf)
            .map_err(|_: nom::Err<nom::error::Error<&[u8]>>| self.truncated())?;
        if scope_length % 4 != 0 || option_length % 4 != 0 {
            // Lengths that are not whole (type, length) pairs are not
            // trusted to find the next record: stop this flowset here.
            self.failed = true;
            return Err(DecodeError::BadOptionsLengths {
                template_id: id,
                scope_length,
                option_length,
            });
        }
        let (rest, scope_pairs) =
            field_pairs(rest, scope_length as usize / 4).map_err(|_| self.truncated())?;
        let (rest, option_pairs) =
            field_pairs(rest, option_length as usize / 4).map_err(|_| self.truncated())?;
        // The record is consumed whatever its content, so the next one can
        // still be decoded after a validation error.
        self.buf = rest;
        if scope_pairs.is_empty() {
            if option_pairs.is_empty() {
                return Err(DecodeError::TemplateWithoutFields { template_id: id });
            }
            return Err(DecodeError::OptionsWithoutScope { template_id: id });
        }
        let mut scope_fields = Vec::with_capacity(scope_pairs.len());
        for (scope_type, length) in scope_pairs {
            let scope = ScopeType::from_wire(scope_type).ok_or(DecodeError::UnknownScopeType {
                template_id: id,
                scope_type,
            })?;
            scope_fields.push(ScopeField { scope, length });
        }
        Ok(V9Template {
            id,
            scope_fields,
            fields: to_fields(option_pairs),
        })
    }
}

fn to_fields(pairs: Vec<(u16, u16)>) -> Vec<V9Field> {
    pairs
        .into_iter()
        .map(|(field_type, length)| V9Field { field_type, length })
        .collect()
}

impl Iterator for TemplateRecordIter<'_> {
    type Item = Result<V9Template, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        // What is left after the last record is padding to a 4-byte
        // boundary (RFC 3954 section 5.2): shorter than a record header, or
        // zeros.
        let header_len = if self.options { 6 } else { 4 };
        if self.failed || self.buf.len() < header_len || self.buf.iter().all(|&b| b == 0) {
            return None;
        }
        let result = self.next_template();
        if matches!(result, Err(DecodeError::TemplateTruncated { .. })) {
            self.failed = true;
        }
        Some(result)
    }
}

/// Splits a Data FlowSet body into records of `record_len` bytes. What
/// remains is padding if it is shorter than 4 bytes or all zeros; otherwise
/// the `Err` carries its length.
///
/// Padding (RFC 3954 section 5.3: up to 3 bytes, zeros) can hold whole
/// records when records are shorter than 4 bytes. Such trailing records
/// that are all zeros and fit in those last 3 bytes are taken as padding:
/// tiny all-zero records are far less likely than the padding the RFC asks
/// exporters to add.
fn split_records(
    body: &[u8],
    record_len: usize,
) -> (std::slice::ChunksExact<'_, u8>, Result<(), usize>) {
    let record_len = record_len.max(1);
    let mut records = body.len() / record_len;
    while records > 0 {
        let last_start = (records - 1) * record_len;
        let tail = &body[last_start..];
        if tail.len() >= 4 || tail.iter().any(|&b| b != 0) {
            break;
        }
        records -= 1;
    }
    let (whole, rest) = body.split_at(records * record_len);
    let padding = rest.len() < 4 || rest.iter().all(|&b| b == 0);
    (
        whole.chunks_exact(record_len),
        if padding { Ok(()) } else { Err(rest.len()) },
    )
}

/// Limits and timers of a [`Session`].
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Templates held across all exporters and source ids; more are refused
    /// so that no exporter can exhaust the collector's memory.
    pub max_templates: usize,
    /// Templates one (exporter, source id) may define.
    pub max_templates_per_source: usize,
    /// (exporter, source id) pairs tracked for templates and sequence
    /// numbers.
    pub max_sources: usize,
    /// A template not refreshed for this many seconds is forgotten (v9 runs
    /// over UDP, where exporters resend templates periodically); `None`
    /// keeps templates until the exporter is forgotten.
    pub template_lifetime_secs: Option<u64>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_templates: 4096,
            max_templates_per_source: 1024,
            max_sources: 1024,
            template_lifetime_secs: Some(1800),
        }
    }
}

/// A template in force: as sent, and as the IPFIX template records are
/// decoded with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionTemplate {
    /// The template as the exporter sent it.
    pub v9: V9Template,
    /// Its IPFIX equivalent ([`V9Template::to_ipfix`]), used to split and
    /// decode the records.
    pub ipfix: Template,
}

/// One data record handed to the caller.
#[derive(Debug, Clone, Copy)]
pub struct DataRecord<'a> {
    /// Header of the packet the record came in.
    pub header: &'a PacketHeader,
    /// The layout of [`Self::bytes`]; an options template if
    /// `template.is_options()`.
    pub template: &'a Template,
    /// The same template as the exporter sent it (original scope types).
    pub v9_template: &'a V9Template,
    /// The record's bytes: [`V9Template::record_len`] of them.
    pub bytes: &'a [u8],
    /// Position among the packet's data records, from 0.
    pub index_in_packet: u32,
}

impl<'a> DataRecord<'a> {
    /// Each field specifier with its bytes, in template order.
    pub fn fields(&self) -> impl Iterator<Item = (&'a FieldSpecifier, &'a [u8])> + use<'a> {
        record_fields(self.template, self.bytes)
    }
}

/// How a packet's sequence number relates to the previous packet of the
/// same (exporter, source id). NetFlow v9 numbers packets, so a gap is a
/// number of lost packets, not records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// First packet seen from this source.
    First,
    /// The sequence number is the previous packet's plus one.
    InOrder,
    /// `lost_packets` export packets were never received.
    Gap {
        /// Export packets missing between the previous packet and this one.
        lost_packets: u32,
    },
    /// Arrived after later packets (reordering) or the exporter restarted
    /// its counter; `packets` before the expected number.
    Behind {
        /// How many packets the sequence number is below the expected one.
        packets: u32,
    },
    /// The source limit was reached: this source is not tracked.
    Untracked,
}

/// What processing one packet did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketReport {
    /// Header of the processed packet.
    pub header: PacketHeader,
    /// Data records handed to the callback.
    pub data_records: u32,
    /// Template and Options Template records accepted, refreshes and
    /// redefinitions included.
    pub templates_defined: u32,
    /// Template, options template and data records found. Equal to
    /// `header.count` for a well-formed packet whose templates were all
    /// known.
    pub records_seen: u32,
    /// How the packet's sequence number fits the previous packet of its
    /// (exporter, source id).
    pub sequence: SequenceCheck,
    /// Problems that did not stop the rest of the packet from being used.
    pub errors: Vec<DecodeError>,
}

impl PacketReport {
    /// Whether the header's record count matches what the packet held.
    pub fn count_matches(&self) -> bool {
        u32::from(self.header.count) == self.records_seen
    }
}

#[derive(Debug)]
struct TemplateEntry {
    template: Arc<SessionTemplate>,
    last_seen_secs: u64,
}

#[derive(Debug, Default)]
struct SourceState {
    templates: HashMap<u16, TemplateEntry>,
    /// Sequence number the next packet should carry.
    expected_sequence: Option<u32>,
}

/// Templates and sequence state of NetFlow v9 exporters, keyed by an
/// exporter key the caller chooses (typically the exporter's socket address)
/// and the packet's source id.
#[derive(Debug)]
pub struct Session<K> {
    config: SessionConfig,
    exporters: HashMap<K, HashMap<u32, SourceState>>,
    template_count: usize,
    source_count: usize,
}

impl<K: Eq + Hash + Clone> Session<K> {
    /// A session that knows no exporter yet.
    pub fn new(config: SessionConfig) -> Self {
        Self {
            config,
            exporters: HashMap::new(),
            template_count: 0,
            source_count: 0,
        }
    }

    /// The limits and timers the session was made with.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Templates held, all exporters together.
    pub fn template_count(&self) -> usize {
        self.template_count
    }

    /// The template in force for an exporter's source id, if any.
    pub fn template(
        &self,
        exporter: &K,
        source_id: u32,
        template_id: u16,
    ) -> Option<&Arc<SessionTemplate>> {
        self.exporters
            .get(exporter)?
            .get(&source_id)?
            .templates
            .get(&template_id)
            .map(|entry| &entry.template)
    }

    /// Drops everything known about an exporter (it restarted or left).
    pub fn forget_exporter(&mut self, exporter: &K) {
        if let Some(sources) = self.exporters.remove(exporter) {
            self.source_count -= sources.len();
            self.template_count -= sources.values().map(|s| s.templates.len()).sum::<usize>();
        }
    }

    /// Forgets templates not refreshed within their lifetime; returns how
    /// many. Lookups also expire lazily; call this periodically to release
    /// memory.
    pub fn expire_templates(&mut self, now_secs: u64) -> usize {
        let Some(lifetime) = self.config.template_lifetime_secs else {
            return 0;
        };
        let mut expired = 0;
        for sources in self.exporters.values_mut() {
            for source in sources.values_mut() {
                let before = source.templates.len();
                source
                    .templates
                    .retain(|_, e| now_secs.saturating_sub(e.last_seen_secs) <= lifetime);
                expired += before - source.templates.len();
            }
        }
        self.template_count -= expired;
        expired
    }

    /// Processes one complete export packet from `exporter`. Data records go
    /// to `on_record` in order.
    ///
    /// An `Err` means the packet as a whole is unusable (bad header); errors
    /// inside it are listed in the report while the rest is still used.
    pub fn process(
        &mut self,
        exporter: &K,
        bytes: &[u8],
        now_secs: u64,
        mut on_record: impl FnMut(DataRecord<'_>),
    ) -> Result<PacketReport, DecodeError> {
        let packet = Packet::parse(bytes)?;
        let header = packet.header;
        let mut report = PacketReport {
            header,
            data_records: 0,
            templates_defined: 0,
            records_seen: 0,
            sequence: SequenceCheck::Untracked,
            errors: Vec::new(),
        };
        for flowset in packet.flowsets() {
            let flowset = match flowset {
                Ok(flowset) => flowset,
                Err(err) => {
                    report.errors.push(err);
                    continue;
                }
            };
            match flowset.kind {
                FlowSetKind::Template | FlowSetKind::OptionsTemplate => {
                    for template in flowset.templates() {
                        report.records_seen += 1;
                        match template
                            .and_then(|t| self.define(exporter, header.source_id, t, now_secs))
                        {
                            Ok(()) => report.templates_defined += 1,
                            Err(err) => report.errors.push(err),
                        }
                    }
                }
                FlowSetKind::Data { template_id } => {
                    let Some(template) =
                        self.live_template(exporter, header.source_id, template_id, now_secs)
                    else {
                        report.errors.push(DecodeError::UnknownTemplate {
                            source_id: header.source_id,
                            template_id,
                        });
                        continue;
                    };
                    let (records, rest) = split_records(flowset.body, template.v9.record_len());
                    for record in records {
                        on_record(DataRecord {
                            header: &header,
                            template: &template.ipfix,
                            v9_template: &template.v9,
                            bytes: record,
                            index_in_packet: report.data_records,
                        });
                        report.data_records += 1;
                        report.records_seen += 1;
                    }
                    if let Err(length) = rest {
                        report.errors.push(DecodeError::TrailingBytes {
                            template_id,
                            length,
                        });
                    }
                }
            }
        }
        report.sequence = self.check_sequence(exporter, header.source_id, header.sequence_number);
        Ok(report)
    }

    /// The template in force for a data flowset; a template past its
    /// lifetime is forgotten here.
    fn live_template(
        &mut self,
        exporter: &K,
        source_id: u32,
        template_id: u16,
        now_secs: u64,
    ) -> Option<Arc<SessionTemplate>> {
        let source = self.exporters.get_mut(exporter)?.get_mut(&source_id)?;
        let entry = source.templates.get(&template_id)?;
        let stale = self
            .config
            .template_lifetime_secs
            .is_some_and(|lifetime| now_secs.saturating_sub(entry.last_seen_secs) > lifetime);
        if stale {
            source.templates.remove(&template_id);
            self.template_count -= 1;
            return None;
        }
        Some(Arc::clone(&entry.template))
    }

    /// The state of (exporter, source id), created if the source limit
    /// allows.
    fn source_mut(&mut self, exporter: &K, source_id: u32) -> Option<&mut SourceState> {
        let known = self
            .exporters
            .get(exporter)
            .is_some_and(|sources| sources.contains_key(&source_id));
        if !known {
            if self.source_count >= self.config.max_sources {
                return None;
            }
            self.source_count += 1;
        }
        Some(
            self.exporters
                .entry(exporter.clone())
                .or_default()
                .entry(source_id)
                .or_default(),
        )
    }

    fn define(
        &mut self,
        exporter: &K,
        source_id: u32,
        template: V9Template,
        now_secs: u64,
    ) -> Result<(), DecodeError> {
        let template_id = template.id;
        let at_total_limit = self.template_count >= self.config.max_templates;
        let per_source_limit = self.config.max_templates_per_source;
        let Some(source) = self.source_mut(exporter, source_id) else {
            return Err(DecodeError::SourceLimit {
                source_id,
                limit: self.config.max_sources,
            });
        };
        if let Some(entry) = source.templates.get_mut(&template_id) {
            // A refresh, or a redefinition: over UDP the newest definition
            // wins (exporters change templates without withdrawing them).
            if entry.template.v9 != template {
                entry.template = Arc::new(SessionTemplate {
                    ipfix: template.to_ipfix(),
                    v9: template,
                });
            }
            entry.last_seen_secs = now_secs;
            return Ok(());
        }
        if source.templates.len() >= per_source_limit {
            return Err(DecodeError::TemplateLimit {
                template_id,
                limit: per_source_limit,
            });
        }
        if at_total_limit {
            return Err(DecodeError::TemplateLimit {
                template_id,
                limit: self.config.max_templates,
            });
        }
        source.templates.insert(
            template_id,
            TemplateEntry {
                template: Arc::new(SessionTemplate {
                    ipfix: template.to_ipfix(),
                    v9: template,
                }),
                last_seen_secs: now_secs,
            },
        );
        self.template_count += 1;
        Ok(())
    }

    fn check_sequence(&mut self, exporter: &K, source_id: u32, sequence: u32) -> SequenceCheck {
        let Some(source) = self.source_mut(exporter, source_id) else {
            return SequenceCheck::Untracked;
        };
        let Some(expected) = source.expected_sequence else {
            source.expected_sequence = Some(sequence.wrapping_add(1));
            return SequenceCheck::First;
        };
        // Sequence numbers wrap at 2^32: a difference in the lower half of
        // the circle is a gap, in the upper half a late packet.
        let ahead = sequence.wrapping_sub(expected);
        if ahead == 0 {
            source.expected_sequence = Some(sequence.wrapping_add(1));
            SequenceCheck::InOrder
        } else if ahead < 1 << 31 {
            source.expected_sequence = Some(sequence.wrapping_add(1));
            SequenceCheck::Gap {
                lost_packets: ahead,
            }
        } else {
            // A late packet must not move the expectation backwards.
            SequenceCheck::Behind {
                packets: expected.wrapping_sub(sequence),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(body: &[u8], record_len: usize) -> (Vec<&[u8]>, Result<(), usize>) {
        let (records, rest) = split_records(body, record_len);
        (records.collect(), rest)
    }

    #[test]
    fn split_records_strips_padding_but_keeps_real_records() {
        // 5-byte records, 3 bytes of zero padding.
        let (records, rest) = split(&[1, 2, 3, 4, 5, 0, 0, 0], 5);
        assert_eq!(records, vec![&[1, 2, 3, 4, 5][..]]);
        assert_eq!(rest, Ok(()));
        // 2-byte records: the trailing zero pair fits in the padding.
        let (records, _) = split(&[0, 53, 0, 0], 2);
        assert_eq!(records, vec![&[0, 53][..]]);
        // A non-zero trailing record is real even when tiny.
        let (records, _) = split(&[0, 53, 0, 1], 2);
        assert_eq!(records.len(), 2);
        // A zero 4-byte record cannot be padding.
        let (records, _) = split(&[0, 0, 0, 0], 4);
        assert_eq!(records.len(), 1);
        // Junk of 4 bytes or more after the records is reported.
        let (records, rest) = split(&[9; 13], 3);
        assert_eq!((records.len(), rest), (4, Ok(())));
        let (records, rest) = split(&[9; 13], 7);
        assert_eq!((records.len(), rest), (1, Err(6)));
    }

    #[test]
    fn scope_types_round_trip_through_the_wire_value() {
        for wire in 1..=5 {
            assert_eq!(
                ScopeType::from_wire(wire).map(ScopeType::to_wire),
                Some(wire)
            );
        }
        assert_eq!(ScopeType::from_wire(0), None);
        assert_eq!(ScopeType::from_wire(6), None);
    }

    #[test]
    fn every_error_has_a_distinct_reason() {
        let errors = [
            DecodeError::TruncatedHeader { have: 0 },
            DecodeError::WrongVersion(5),
            DecodeError::FlowSetHeaderTruncated {
                offset: 0,
                remaining: 1,
            },
            DecodeError::FlowSetTooShort {
                offset: 0,
                length: 0,
            },
            DecodeError::FlowSetOverrun {
                offset: 0,
                flowset_id: 0,
                length: 0,
                remaining: 0,
            },
            DecodeError::ReservedFlowSetId {
                offset: 0,
                flowset_id: 2,
            },
            DecodeError::TemplateTruncated { flowset_id: 0 },
            DecodeError::TemplateIdReserved(1),
            DecodeError::TemplateWithoutFields { template_id: 256 },
            DecodeError::BadOptionsLengths {
                template_id: 256,
                scope_length: 1,
                option_length: 0,
            },
            DecodeError::OptionsWithoutScope { template_id: 256 },
            DecodeError::UnknownScopeType {
                template_id: 256,
                scope_type: 9,
            },
            DecodeError::InvalidFieldLength {
                template_id: 256,
                field_type: 1,
                length: 65535,
            },
            DecodeError::RecordTooLong {
                template_id: 256,
                length: 70000,
            },
            DecodeError::EmptyRecord { template_id: 256 },
            DecodeError::TemplateLimit {
                template_id: 256,
                limit: 1,
            },
            DecodeError::SourceLimit {
                source_id: 1,
                limit: 1,
            },
            DecodeError::UnknownTemplate {
                source_id: 1,
                template_id: 256,
            },
            DecodeError::TrailingBytes {
                template_id: 256,
                length: 5,
            },
        ];
        let reasons: std::collections::HashSet<_> = errors.iter().map(|e| e.reason()).collect();
        assert_eq!(reasons.len(), errors.len());
        assert!(errors.iter().all(|e| !e.to_string().is_empty()));
    }
}
