//! IPFIX Message decoding (RFC 7011 section 3): the message header, the Sets
//! it carries, the Template Records of (Options) Template Sets and the Data
//! Records of Data Sets.
//!
//! Decoding borrows from the input buffer and allocates only for templates,
//! which are rare; Data Records are handed out as slices. Fixed-size
//! structures are parsed with nom; the per-record hot path walks the template
//! directly because it runs millions of times per second.

use nom::IResult;
use nom::Parser;
use nom::number::complete::{be_u16, be_u32};

use super::template::{FieldSpecifier, Template, VARIABLE_LENGTH};

/// IPFIX version number (RFC 7011 section 3.1).
pub const VERSION: u16 = 10;
/// Message header length in bytes.
pub const HEADER_LEN: usize = 16;
/// Set header length in bytes.
pub const SET_HEADER_LEN: usize = 4;
/// Set ID of Template Sets.
pub const TEMPLATE_SET_ID: u16 = 2;
/// Set ID of Options Template Sets.
pub const OPTIONS_TEMPLATE_SET_ID: u16 = 3;
/// Smallest Set ID of a Data Set, and smallest Template ID.
pub const MIN_DATA_SET_ID: u16 = 256;
/// Bit in a Field Specifier's Information Element id that marks an
/// enterprise-specific element followed by a 4-byte enterprise number.
const ENTERPRISE_BIT: u16 = 0x8000;

/// Everything that can be wrong with IPFIX input. Each variant names a
/// reason an operator can act on; the collector counts them by [`Self::reason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message truncated: {have} bytes, header needs {HEADER_LEN}")]
    TruncatedHeader { have: usize },
    #[error("wrong version {0}, expected {VERSION}")]
    WrongVersion(u16),
    #[error("message length field {declared} does not match {have} bytes received")]
    LengthMismatch { declared: u16, have: usize },
    #[error("set at offset {offset} declares length {length}, below the set header size")]
    SetTooShort { offset: usize, length: u16 },
    #[error(
        "set {set_id} at offset {offset} declares length {length}, only {remaining} bytes remain"
    )]
    SetOverrun {
        offset: usize,
        set_id: u16,
        length: u16,
        remaining: usize,
    },
    #[error("set id {0} is reserved")]
    ReservedSetId(u16),
    #[error("template record truncated in set {set_id}")]
    TemplateTruncated { set_id: u16 },
    #[error("template id {0} is below {MIN_DATA_SET_ID}")]
    TemplateIdReserved(u16),
    #[error("template {template_id} has zero fields")]
    TemplateWithoutFields { template_id: u16 },
    #[error("options template {template_id} has scope field count {scope} of {fields} fields")]
    BadScopeCount {
        template_id: u16,
        scope: u16,
        fields: u16,
    },
    #[error("template withdrawal for {template_id} is not allowed over UDP")]
    WithdrawalOverUdp { template_id: u16 },
    #[error("template {template_id} redefined without withdrawal")]
    TemplateRedefined { template_id: u16 },
    #[error("template limit of {limit} per session reached, template {template_id} dropped")]
    TemplateLimit { template_id: u16, limit: usize },
    #[error("data set for unknown template {template_id} in domain {domain}")]
    UnknownTemplate { domain: u32, template_id: u16 },
    #[error("data record of template {template_id} truncated")]
    RecordTruncated { template_id: u16 },
}

impl DecodeError {
    /// A short stable label, used as the metrics label and in logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TruncatedHeader { .. } => "truncated_header",
            Self::WrongVersion(_) => "wrong_version",
            Self::LengthMismatch { .. } => "length_mismatch",
            Self::SetTooShort { .. } => "set_too_short",
            Self::SetOverrun { .. } => "set_overrun",
            Self::ReservedSetId(_) => "reserved_set_id",
            Self::TemplateTruncated { .. } => "template_truncated",
            Self::TemplateIdReserved(_) => "template_id_reserved",
            Self::TemplateWithoutFields { .. } => "template_without_fields",
            Self::BadScopeCount { .. } => "bad_scope_count",
            Self::WithdrawalOverUdp { .. } => "withdrawal_over_udp",
            Self::TemplateRedefined { .. } => "template_redefined",
            Self::TemplateLimit { .. } => "template_limit",
            Self::UnknownTemplate { .. } => "unknown_template",
            Self::RecordTruncated { .. } => "record_truncated",
        }
    }
}

/// IPFIX Message Header (RFC 7011 section 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageHeader {
    pub version: u16,
    pub length: u16,
    /// Seconds since the UNIX epoch when the message left the exporter.
    pub export_time: u32,
    /// Data Records sent before this message in this domain (and stream).
    pub sequence_number: u32,
    pub observation_domain_id: u32,
}

type NomResult<'a, T> = IResult<&'a [u8], T, nom::error::Error<&'a [u8]>>;

fn header(input: &[u8]) -> NomResult<'_, MessageHeader> {
    let (rest, (version, length, export_time, sequence_number, observation_domain_id)) =
        (be_u16, be_u16, be_u32, be_u32, be_u32).parse(input)?;
    Ok((
        rest,
        MessageHeader {
            version,
            length,
            export_time,
            sequence_number,
            observation_domain_id,
        },
    ))
}

/// Reads the first four bytes of a buffer as a message header prefix: used by
/// stream transports to learn how many bytes the next message takes.
pub fn peek_message_length(buf: &[u8]) -> Option<Result<u16, DecodeError>> {
    if buf.len() < 4 {
        return None;
    }
    let version = u16::from_be_bytes([buf[0], buf[1]]);
    let length = u16::from_be_bytes([buf[2], buf[3]]);
    Some(if version != VERSION {
        Err(DecodeError::WrongVersion(version))
    } else if (length as usize) < HEADER_LEN {
        Err(DecodeError::LengthMismatch {
            declared: length,
            have: buf.len(),
        })
    } else {
        Ok(length)
    })
}

/// One decoded IPFIX Message: its header and the undecoded Sets.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub header: MessageHeader,
    sets: &'a [u8],
}

impl<'a> Message<'a> {
    /// Decodes the header of a complete message. The buffer must hold exactly
    /// one message (a UDP datagram, an SCTP message, or one framed TCP
    /// message).
    pub fn parse(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let (sets, header) =
            header(buf).map_err(|_| DecodeError::TruncatedHeader { have: buf.len() })?;
        if header.version != VERSION {
            return Err(DecodeError::WrongVersion(header.version));
        }
        if header.length as usize != buf.len() {
            return Err(DecodeError::LengthMismatch {
                declared: header.length,
                have: buf.len(),
            });
        }
        Ok(Self { header, sets })
    }

    /// The Sets of the message, in order. After a Set whose length is wrong
    /// nothing more can be located, so the iterator yields that error and
    /// ends.
    pub fn sets(&self) -> SetIter<'a> {
        SetIter {
            buf: self.sets,
            offset: HEADER_LEN,
            failed: false,
        }
    }
}

/// What a Set holds, by its Set ID (RFC 7011 section 3.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetKind {
    Template,
    OptionsTemplate,
    Data { template_id: u16 },
}

/// One Set: its kind and its body (without the Set header).
#[derive(Debug, Clone, Copy)]
pub struct Set<'a> {
    pub kind: SetKind,
    pub body: &'a [u8],
}

impl<'a> Set<'a> {
    pub fn id(&self) -> u16 {
        match self.kind {
            SetKind::Template => TEMPLATE_SET_ID,
            SetKind::OptionsTemplate => OPTIONS_TEMPLATE_SET_ID,
            SetKind::Data { template_id } => template_id,
        }
    }

    /// Template Records of an (Options) Template Set. Empty for Data Sets.
    pub fn template_records(&self) -> TemplateRecordIter<'a> {
        TemplateRecordIter {
            set_id: self.id(),
            options: self.kind == SetKind::OptionsTemplate,
            buf: if matches!(self.kind, SetKind::Data { .. }) {
                &[]
            } else {
                self.body
            },
            failed: false,
        }
    }
}

/// Iterator over the Sets of a message.
pub struct SetIter<'a> {
    buf: &'a [u8],
    offset: usize,
    failed: bool,
}

impl<'a> Iterator for SetIter<'a> {
    type Item = Result<Set<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.buf.is_empty() {
            return None;
        }
        let offset = self.offset;
        let Ok((_, (set_id, length))) = (be_u16, be_u16).parse(self.buf) as NomResult<'_, _> else {
            self.failed = true;
            return Some(Err(DecodeError::SetOverrun {
                offset,
                set_id: 0,
                length: 0,
                remaining: self.buf.len(),
            }));
        };
        if (length as usize) < SET_HEADER_LEN {
            self.failed = true;
            return Some(Err(DecodeError::SetTooShort { offset, length }));
        }
        if length as usize > self.buf.len() {
            self.failed = true;
            return Some(Err(DecodeError::SetOverrun {
                offset,
                set_id,
                length,
                remaining: self.buf.len(),
            }));
        }
        let body = &self.buf[SET_HEADER_LEN..length as usize];
        self.buf = &self.buf[length as usize..];
        self.offset += length as usize;
        let kind = match set_id {
            TEMPLATE_SET_ID => SetKind::Template,
            OPTIONS_TEMPLATE_SET_ID => SetKind::OptionsTemplate,
            id if id >= MIN_DATA_SET_ID => SetKind::Data { template_id: id },
            // A reserved Set ID is skipped (its length is trustworthy), so the
            // Sets after it still decode.
            id => return Some(Err(DecodeError::ReservedSetId(id))),
        };
        Some(Ok(Set { kind, body }))
    }
}

/// One record of an (Options) Template Set (RFC 7011 sections 3.4.1, 3.4.2, 8.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateRecord {
    Definition(Template),
    /// Withdrawal of one Template ID.
    Withdrawal {
        template_id: u16,
    },
    /// Withdrawal of all Templates (Template ID 2) or all Options Templates
    /// (Template ID 3) of the domain.
    WithdrawAll {
        options: bool,
    },
}

/// Iterator over the records of an (Options) Template Set.
pub struct TemplateRecordIter<'a> {
    set_id: u16,
    options: bool,
    buf: &'a [u8],
    failed: bool,
}

impl TemplateRecordIter<'_> {
    fn next_record(&mut self) -> Result<TemplateRecord, DecodeError> {
        let truncated = DecodeError::TemplateTruncated {
            set_id: self.set_id,
        };
        let (rest, (template_id, field_count)) = (be_u16, be_u16)
            .parse(self.buf)
            .map_err(|_: nom::Err<nom::error::Error<&[u8]>>| truncated.clone())?;
        if field_count == 0 {
            // Withdrawals carry no scope count, even in Options Template Sets.
            self.buf = rest;
            return Ok(match template_id {
                TEMPLATE_SET_ID | OPTIONS_TEMPLATE_SET_ID => TemplateRecord::WithdrawAll {
                    options: template_id == OPTIONS_TEMPLATE_SET_ID,
                },
                id if id < MIN_DATA_SET_ID => return Err(DecodeError::TemplateIdReserved(id)),
                id => TemplateRecord::Withdrawal { template_id: id },
            });
        }
        let (rest, scope_field_count) = if self.options {
            be_u16
                .parse(rest)
                .map_err(|_: nom::Err<nom::error::Error<&[u8]>>| truncated.clone())?
        } else {
            (rest, 0)
        };
        let (rest, fields) = field_specifiers(rest, field_count).map_err(|_| truncated)?;
        self.buf = rest;
        if template_id < MIN_DATA_SET_ID {
            return Err(DecodeError::TemplateIdReserved(template_id));
        }
        if self.options && (scope_field_count == 0 || scope_field_count > field_count) {
            return Err(DecodeError::BadScopeCount {
                template_id,
                scope: scope_field_count,
                fields: field_count,
            });
        }
        Ok(TemplateRecord::Definition(Template::new(
            template_id,
            scope_field_count,
            fields,
        )))
    }
}

fn field_specifiers(mut input: &[u8], count: u16) -> NomResult<'_, Vec<FieldSpecifier>> {
    // Each specifier takes at least 4 bytes: never trust `count` for the
    // allocation size beyond what the buffer can hold.
    let mut fields = Vec::with_capacity((count as usize).min(input.len() / 4));
    for _ in 0..count {
        let (rest, (raw_id, length)) = (be_u16, be_u16).parse(input)?;
        let (rest, enterprise) = if raw_id & ENTERPRISE_BIT != 0 {
            be_u32(rest)?
        } else {
            (rest, 0)
        };
        fields.push(FieldSpecifier {
            enterprise,
            id: raw_id & !ENTERPRISE_BIT,
            length,
        });
        input = rest;
    }
    Ok((input, fields))
}

impl Iterator for TemplateRecordIter<'_> {
    type Item = Result<TemplateRecord, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        // Fewer than 4 bytes left is set padding (RFC 7011 section 3.3.1).
        if self.failed || self.buf.len() < 4 {
            return None;
        }
        let result = self.next_record();
        // A truncated record leaves no way to find the next one; other errors
        // consumed exactly their record, so decoding continues.
        if matches!(result, Err(DecodeError::TemplateTruncated { .. })) {
            self.failed = true;
        }
        Some(result)
    }
}

/// Iterator over the Data Records of one Data Set, given its Template.
pub struct DataRecordIter<'a, 't> {
    template: &'t Template,
    buf: &'a [u8],
    failed: bool,
}

impl<'a, 't> DataRecordIter<'a, 't> {
    pub fn new(template: &'t Template, body: &'a [u8]) -> Self {
        Self {
            template,
            buf: body,
            failed: false,
        }
    }
}

impl<'a> Iterator for DataRecordIter<'a, '_> {
    type Item = Result<&'a [u8], DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        // Bytes too few for one more record are padding (RFC 7011 3.3.1).
        // A template whose records take zero bytes would loop forever; it
        // cannot be built (templates have at least one field and a zero
        // length field gives min_record_len 0), so guard anyway.
        let min = self.template.min_record_len();
        if self.failed || self.buf.len() < min.max(1) {
            return None;
        }
        let len = match self.template.fixed_record_len() {
            Some(len) => len,
            None => match variable_record_len(self.template, self.buf) {
                Some(len) => len,
                None => {
                    self.failed = true;
                    return Some(Err(DecodeError::RecordTruncated {
                        template_id: self.template.id,
                    }));
                }
            },
        };
        if len == 0 {
            return None;
        }
        let (record, rest) = self.buf.split_at(len);
        self.buf = rest;
        Some(Ok(record))
    }
}

/// Reads a variable-length field's length prefix (RFC 7011 section 7): one
/// byte, or 255 followed by two bytes. Returns (prefix length, value length).
fn variable_length_prefix(buf: &[u8]) -> Option<(usize, usize)> {
    match *buf.first()? {
        255 => {
            let bytes = buf.get(1..3)?;
            Some((3, u16::from_be_bytes([bytes[0], bytes[1]]) as usize))
        }
        short => Some((1, short as usize)),
    }
}

fn variable_record_len(template: &Template, buf: &[u8]) -> Option<usize> {
    let mut pos = 0usize;
    for field in &template.fields {
        if field.length == VARIABLE_LENGTH {
            let (prefix, len) = variable_length_prefix(buf.get(pos..)?)?;
            pos += prefix + len;
        } else {
            pos += field.length as usize;
        }
        if pos > buf.len() {
            return None;
        }
    }
    Some(pos)
}

/// The fields of one Data Record: each Field Specifier with its value bytes
/// (without the variable-length prefix). The record must come from
/// [`DataRecordIter`] with the same template, which checked its length.
pub fn record_fields<'a, 't>(
    template: &'t Template,
    record: &'a [u8],
) -> impl Iterator<Item = (&'t FieldSpecifier, &'a [u8])> {
    let mut pos = 0usize;
    template.fields.iter().map_while(move |field| {
        let value = if field.length == VARIABLE_LENGTH {
            let (prefix, len) = variable_length_prefix(record.get(pos..)?)?;
            let value = record.get(pos + prefix..pos + prefix + len)?;
            pos += prefix + len;
            value
        } else {
            let value = record.get(pos..pos + field.length as usize)?;
            pos += field.length as usize;
            value
        };
        Some((field, value))
    })
}
