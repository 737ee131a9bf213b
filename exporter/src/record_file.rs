//! The on-disk record format the replay spill (`crate::spill`) and the
//! intake journal (`crate::journal`) share: each record is
//! `sequence u64, template id u16, length u16, bytes`, big-endian, one
//! after another in append-only segment files.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

use crate::replay::{BufferedRecord, RecordBytes};

/// Bytes before a record's own bytes.
const RECORD_HEADER_LEN: usize = 12;

/// Writes one record.
pub(crate) fn write_record(out: &mut impl Write, record: &BufferedRecord) -> io::Result<()> {
    let len = u16::try_from(record.bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record over 65535 bytes"))?;
    let mut header = [0u8; RECORD_HEADER_LEN];
    header[..8].copy_from_slice(&record.sequence.to_be_bytes());
    header[8..10].copy_from_slice(&record.template_id.to_be_bytes());
    header[10..12].copy_from_slice(&len.to_be_bytes());
    out.write_all(&header)?;
    out.write_all(&record.bytes)
}

/// One record and its encoded size.
pub(crate) fn read_record(input: &mut impl Read) -> io::Result<(BufferedRecord, usize)> {
    let mut header = [0u8; RECORD_HEADER_LEN];
    input.read_exact(&mut header)?;
    let sequence = u64::from_be_bytes(header[..8].try_into().expect("8 bytes"));
    let template_id = u16::from_be_bytes([header[8], header[9]]);
    let len = usize::from(u16::from_be_bytes([header[10], header[11]]));
    let mut bytes = RecordBytes::from_elem(0, len);
    input.read_exact(&mut bytes)?;
    Ok((
        BufferedRecord {
            sequence,
            template_id,
            bytes,
        },
        RECORD_HEADER_LEN + len,
    ))
}

/// Counts the complete records of a segment, calling `each` with every
/// one's sequence, and cuts off a torn last one (a crash in the middle of a
/// write).
pub(crate) fn scan_and_repair(path: &Path, mut each: impl FnMut(u64)) -> io::Result<usize> {
    let data = fs::read(path)?;
    let mut offset = 0;
    let mut count = 0;
    while data.len() - offset >= RECORD_HEADER_LEN {
        let len = usize::from(u16::from_be_bytes([data[offset + 10], data[offset + 11]]));
        if data.len() - offset < RECORD_HEADER_LEN + len {
            break;
        }
        each(u64::from_be_bytes(
            data[offset..offset + 8].try_into().expect("8 bytes"),
        ));
        offset += RECORD_HEADER_LEN + len;
        count += 1;
    }
    if offset < data.len() {
        OpenOptions::new()
            .write(true)
            .open(path)?
            .set_len(offset as u64)?;
    }
    Ok(count)
}
