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
    /// The input is shorter than the 16-byte Message Header (RFC 7011
    /// §3.1): a cut datagram or a framing bug. The whole message is lost.
    #[error("message truncated: {have} bytes, header needs {HEADER_LEN}")]
    TruncatedHeader {
        /// Bytes the input had.
        have: usize,
    },
    /// The Version field is not 10 (RFC 7011 §3.1): typically NetFlow v5
    /// or v9 sent to the IPFIX port. Carries the version found. The whole
    /// message is lost, and on a stream nothing after it can be framed.
    #[error("wrong version {0}, expected {VERSION}")]
    WrongVersion(u16),
    /// The header's Length field (the whole message in octets, header
    /// included, RFC 7011 §3.1) does not match the bytes received (a
    /// truncated datagram), or is below the header size. The whole message
    /// is lost.
    #[error("message length field {declared} does not match {have} bytes received")]
    LengthMismatch {
        /// The Length field, octets.
        declared: u16,
        /// Bytes received. From [`peek_message_length`], the bytes buffered
        /// so far, which may be less than one message.
        have: usize,
    },
    /// A Set Header declares a length below its own 4 bytes (RFC 7011
    /// §3.3.2). No Set after it can be located: the rest of the message is
    /// lost.
    #[error("set at offset {offset} declares length {length}, below the set header size")]
    SetTooShort {
        /// Offset of the Set from the start of the message, bytes.
        offset: usize,
        /// The Set's Length field, octets.
        length: u16,
    },
    /// A Set declares more bytes than the message has left (RFC 7011
    /// §3.3.2), or 1 to 3 stray bytes follow the last Set (then `set_id`
    /// and `length` are 0). The rest of the message is lost.
    #[error(
        "set {set_id} at offset {offset} declares length {length}, only {remaining} bytes remain"
    )]
    SetOverrun {
        /// Offset of the Set from the start of the message, bytes.
        offset: usize,
        /// The Set ID of the header (0 if not even a header was there).
        set_id: u16,
        /// The Set's Length field, octets (0 if no header was there).
        length: u16,
        /// Bytes of the message from the Set's start to its end.
        remaining: usize,
    },
    /// A Set ID of 0, 1 or 4 to 255, which RFC 7011 §3.3.2 leaves unused
    /// (0 and 1 were NetFlow v9's) or reserved. Carries the Set ID. Only
    /// this Set is skipped: its length is valid, so later Sets decode.
    #[error("set id {0} is reserved")]
    ReservedSetId(u16),
    /// A Template Record runs past the end of its Set (RFC 7011 §3.4.1,
    /// §3.4.2.2): the rest of the Set cannot be located and is lost.
    #[error("template record truncated in set {set_id}")]
    TemplateTruncated {
        /// The Set ID: 2 (Template Set) or 3 (Options Template Set).
        set_id: u16,
    },
    /// A Template Record defines or withdraws a Template ID below 256
    /// (RFC 7011 §3.4.1: IDs 0 to 255 are reserved; 2 and 3 only name a
    /// withdraw-all, §8.1). Carries the ID. Only this record is skipped.
    #[error("template id {0} is below {MIN_DATA_SET_ID}")]
    TemplateIdReserved(u16),
    /// A Template Record with no Field Specifiers that cannot be a
    /// withdrawal: the session reports it for a withdraw-all record (Template
    /// ID 2 or 3, field count 0, RFC 7011 §8.1) that arrived over UDP, where
    /// withdrawals do not exist (§8.4).
    #[error("template {template_id} has zero fields")]
    TemplateWithoutFields {
        /// The Template ID of the record (the session always reports 2).
        template_id: u16,
    },
    /// An Options Template Record whose Scope Field Count is 0 or larger
    /// than its Field Count (RFC 7011 §3.4.2.2: at least one scope field,
    /// and scope fields are a prefix of the fields). The record is skipped.
    #[error("options template {template_id} has scope field count {scope} of {fields} fields")]
    BadScopeCount {
        /// The Template ID of the record.
        template_id: u16,
        /// The Scope Field Count.
        scope: u16,
        /// The Field Count.
        fields: u16,
    },
    /// A Template Withdrawal (zero fields, RFC 7011 §8.1) for one Template
    /// ID arrived over UDP, where withdrawals must not be sent (§8.4). The
    /// template stays in force until it expires.
    #[error("template withdrawal for {template_id} is not allowed over UDP")]
    WithdrawalOverUdp {
        /// The Template ID the record tried to withdraw.
        template_id: u16,
    },
    /// Over SCTP or TCP, a Template ID was defined again with a different
    /// layout without a withdrawal first, which RFC 7011 §8.1 forbids. The
    /// session still adopts the new layout (losing the records that follow
    /// would be worse for billing) and reports this error.
    #[error("template {template_id} redefined without withdrawal")]
    TemplateRedefined {
        /// The redefined Template ID.
        template_id: u16,
    },
    /// The session already holds [`SessionConfig::max_templates`]
    /// templates: the new one is dropped, so one exporter cannot exhaust
    /// the collector's memory. Data Sets of it then fail as
    /// [`Self::UnknownTemplate`].
    ///
    /// [`SessionConfig::max_templates`]: super::SessionConfig::max_templates
    #[error("template limit of {limit} per session reached, template {template_id} dropped")]
    TemplateLimit {
        /// The Template ID that was dropped.
        template_id: u16,
        /// The configured limit, templates per session.
        limit: usize,
    },
    /// A Data Set whose Template ID has no template in force for (session,
    /// domain): never received, withdrawn, expired over UDP (RFC 7011
    /// §8.4), or refused by a limit. Its records cannot be decoded and are
    /// lost; the next sequence check of the domain cannot count them.
    #[error("data set for unknown template {template_id} in domain {domain}")]
    UnknownTemplate {
        /// The Observation Domain ID of the message.
        domain: u32,
        /// The Set ID of the Data Set, i.e. the Template ID it needs.
        template_id: u16,
    },
    /// A Data Record with variable-length fields runs past the end of its
    /// Set: a length prefix (RFC 7011 §7) points beyond it. The rest of the
    /// Set is lost.
    #[error("data record of template {template_id} truncated")]
    RecordTruncated {
        /// The Template ID of the Data Set.
        template_id: u16,
    },
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
    /// Version Number: always [`VERSION`] (10) in a header that parsed.
    pub version: u16,
    /// Total length of the message in octets, this header and all Sets
    /// included.
    pub length: u16,
    /// Seconds since the UNIX epoch when the message left the exporter.
    pub export_time: u32,
    /// Data Records sent before this message in this domain (and stream).
    pub sequence_number: u32,
    /// Observation Domain ID: the exporter's scope of templates and
    /// sequence numbers, unique within its Exporting Process; 0 means no
    /// particular domain.
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
    /// The decoded and checked Message Header.
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
    /// Set ID 2: a Template Set of Template Records (RFC 7011 §3.4.1).
    Template,
    /// Set ID 3: an Options Template Set of Options Template Records
    /// (RFC 7011 §3.4.2).
    OptionsTemplate,
    /// Set ID 256 or above: a Data Set of Data Records (RFC 7011 §3.4.3).
    Data {
        /// The Set ID, which is the Template ID describing the records.
        template_id: u16,
    },
}

/// One Set: its kind and its body (without the Set header).
#[derive(Debug, Clone, Copy)]
pub struct Set<'a> {
    /// What the Set ID says the Set holds.
    pub kind: SetKind,
    /// The Set's content after its 4-byte header, padding included
    /// (RFC 7011 §3.3.1).
    pub body: &'a [u8],
}

impl<'a> Set<'a> {
    /// The Set ID as on the wire: 2, 3, or the Template ID of a Data Set.
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
    /// A Template Record (RFC 7011 §3.4.1) or an Options Template Record
    /// (§3.4.2.2, then [`Template::is_options`]) defining a Template ID.
    Definition(Template),
    /// Withdrawal of one Template ID: a record with Field Count 0
    /// (RFC 7011 §8.1).
    Withdrawal {
        /// The Template ID withdrawn, 256 or above.
        template_id: u16,
    },
    /// Withdrawal of all Templates (Template ID 2) or all Options Templates
    /// (Template ID 3) of the domain.
    WithdrawAll {
        /// `true` for Template ID 3 (all Options Templates), `false` for 2
        /// (all Templates). Decided by the ID, not by the Set it came in.
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
    /// Iterates the Data Records of a Data Set's `body` (the Set header
    /// removed) laid out by `template`. Trailing bytes too few for one more
    /// record are taken as padding (RFC 7011 §3.3.1).
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
