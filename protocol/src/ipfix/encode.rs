//! IPFIX Message encoding (RFC 7011 section 3): an append-only writer that
//! builds one message at a time into a reusable buffer, so an exporter can
//! fill messages up to the path MTU without allocating per record.

use super::message::{
    HEADER_LEN, OPTIONS_TEMPLATE_SET_ID, SET_HEADER_LEN, TEMPLATE_SET_ID, VERSION,
};
use super::template::{IANA_ENTERPRISE, Template};

/// The message would exceed its size limit; nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("IPFIX message full")]
pub struct MessageFull;

/// Builds IPFIX messages. Call [`Self::start`], add sets, then
/// [`Self::finish`] to patch the lengths and take the bytes.
#[derive(Debug)]
pub struct MessageWriter {
    buf: Vec<u8>,
    max_len: usize,
    /// Offset of the open set's header, if a set is open.
    open_set: Option<(usize, u16)>,
    data_records: u32,
}

impl MessageWriter {
    /// `max_len` bounds each message (at most 65535, the length field's
    /// range; exporters use the path MTU minus headers for UDP).
    pub fn new(max_len: usize) -> Self {
        Self {
            buf: Vec::with_capacity(max_len.min(u16::MAX as usize)),
            max_len: max_len.clamp(HEADER_LEN + SET_HEADER_LEN, u16::MAX as usize),
            open_set: None,
            data_records: 0,
        }
    }

    /// Begins a message; anything unfinished is discarded.
    pub fn start(&mut self, observation_domain_id: u32, export_time: u32, sequence_number: u32) {
        self.buf.clear();
        self.open_set = None;
        self.data_records = 0;
        self.buf.extend_from_slice(&VERSION.to_be_bytes());
        self.buf.extend_from_slice(&0u16.to_be_bytes());
        self.buf.extend_from_slice(&export_time.to_be_bytes());
        self.buf.extend_from_slice(&sequence_number.to_be_bytes());
        self.buf
            .extend_from_slice(&observation_domain_id.to_be_bytes());
    }

    /// Bytes written so far, the 16-byte message header included (0 before
    /// the first [`Self::start`]).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether the message holds no Set yet (only its header, or nothing
    /// before the first [`Self::start`]). Unlike a collection's, this is
    /// `true` while [`Self::len`] is 16: "empty" means nothing worth
    /// sending.
    pub fn is_empty(&self) -> bool {
        self.buf.len() <= HEADER_LEN
    }

    /// Data records written since [`Self::start`].
    pub fn data_records(&self) -> u32 {
        self.data_records
    }

    /// Bytes still free in this message for a record of the open set (or for
    /// a new set, which needs its header too).
    pub fn remaining(&self) -> usize {
        self.max_len.saturating_sub(self.buf.len())
    }

    fn close_set(&mut self) {
        if let Some((start, _)) = self.open_set.take() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
        }
    }

    fn open(&mut self, set_id: u16, first_len: usize) -> Result<(), MessageFull> {
        if self.open_set.map(|(_, id)| id) == Some(set_id) {
            if first_len > self.remaining() {
                return Err(MessageFull);
            }
            return Ok(());
        }
        if SET_HEADER_LEN + first_len > self.remaining() {
            return Err(MessageFull);
        }
        self.close_set();
        self.open_set = Some((self.buf.len(), set_id));
        self.buf.extend_from_slice(&set_id.to_be_bytes());
        self.buf.extend_from_slice(&0u16.to_be_bytes());
        Ok(())
    }

    /// Adds one Template (or Options Template) record, in a Template Set or
    /// an Options Template Set as the template requires.
    pub fn add_template(&mut self, template: &Template) -> Result<(), MessageFull> {
        let set_id = if template.is_options() {
            OPTIONS_TEMPLATE_SET_ID
        } else {
            TEMPLATE_SET_ID
        };
        let len = template_record_len(template);
        self.open(set_id, len)?;
        self.buf.extend_from_slice(&template.id.to_be_bytes());
        self.buf
            .extend_from_slice(&(template.fields.len() as u16).to_be_bytes());
        if template.is_options() {
            self.buf
                .extend_from_slice(&template.scope_field_count.to_be_bytes());
        }
        for field in &template.fields {
            if field.enterprise == IANA_ENTERPRISE {
                self.buf.extend_from_slice(&field.id.to_be_bytes());
                self.buf.extend_from_slice(&field.length.to_be_bytes());
            } else {
                self.buf
                    .extend_from_slice(&(field.id | 0x8000).to_be_bytes());
                self.buf.extend_from_slice(&field.length.to_be_bytes());
                self.buf.extend_from_slice(&field.enterprise.to_be_bytes());
            }
        }
        Ok(())
    }

    /// Adds a Template Withdrawal (RFC 7011 section 8.1; SCTP and TCP only).
    pub fn add_withdrawal(&mut self, template_id: u16, options: bool) -> Result<(), MessageFull> {
        let set_id = if options {
            OPTIONS_TEMPLATE_SET_ID
        } else {
            TEMPLATE_SET_ID
        };
        self.open(set_id, 4)?;
        self.buf.extend_from_slice(&template_id.to_be_bytes());
        self.buf.extend_from_slice(&0u16.to_be_bytes());
        Ok(())
    }

    /// Appends one Data Record, already encoded per its template, to the
    /// Data Set of `template_id` (opening it if needed).
    pub fn add_record(&mut self, template_id: u16, record: &[u8]) -> Result<(), MessageFull> {
        self.open(template_id, record.len())?;
        self.buf.extend_from_slice(record);
        self.data_records += 1;
        Ok(())
    }

    /// Appends a Data Record produced in place by `write`, which must append
    /// exactly `len` bytes. Avoids building the record in a separate buffer.
    pub fn add_record_with(
        &mut self,
        template_id: u16,
        len: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), MessageFull> {
        self.open(template_id, len)?;
        let before = self.buf.len();
        write(&mut self.buf);
        debug_assert_eq!(
            self.buf.len() - before,
            len,
            "record writer wrote a wrong length"
        );
        self.data_records += 1;
        Ok(())
    }

    /// Closes the message and returns its bytes (valid until the next start).
    pub fn finish(&mut self) -> &[u8] {
        self.close_set();
        let len = self.buf.len() as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
        &self.buf
    }
}

/// Bytes a template record takes inside its set.
pub fn template_record_len(template: &Template) -> usize {
    let header = if template.is_options() { 6 } else { 4 };
    header
        + template
            .fields
            .iter()
            .map(|f| f.encoded_len())
            .sum::<usize>()
}

/// Appends a variable-length field value with its length prefix (RFC 7011
/// section 7): one byte below 255, else 255 and two bytes.
pub fn put_variable_length(out: &mut Vec<u8>, value: &[u8]) {
    let len = value.len().min(u16::MAX as usize);
    if len < 255 {
        out.push(len as u8);
    } else {
        out.push(255);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    }
    out.extend_from_slice(&value[..len]);
}

/// Encoded size of a variable-length value including its prefix.
pub fn variable_length_size(value_len: usize) -> usize {
    if value_len < 255 {
        1 + value_len
    } else {
        3 + value_len.min(u16::MAX as usize)
    }
}
