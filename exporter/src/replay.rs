//! The replay buffer of one observation domain: every record not yet covered
//! by a cookie, oldest first (docs/billing-continuity.md).
//!
//! It is also the send queue. The oldest records live in memory (up to
//! [`ReplayLimits::memory_records`]); this window holds both the records sent
//! and waiting for a cookie and the next ones to send, so the exporter only
//! ever sends from memory. Records beyond the window go to an append-only
//! spill on disk (segment files) and move into memory, in order, as cookies
//! free the window. Beyond [`ReplayLimits::max_records`] in total the buffer
//! is full and the input must wait (back-pressure, never loss).
//!
//! Spill files survive a restart: [`ReplayBuffer::open`] picks up the
//! segments of its domain, and [`ReplayBuffer::persist_for_restart`] writes
//! the memory window in front of them at shutdown, so a clean stop loses
//! nothing that was not acknowledged.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// One buffered data record, already encoded for its template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferedRecord {
    /// Its record sequence.
    pub sequence: u64,
    /// The template it is encoded for.
    pub template_id: u16,
    /// The encoded record (no set header).
    pub bytes: Vec<u8>,
}

/// Size limits of a [`ReplayBuffer`].
#[derive(Debug, Clone)]
pub struct ReplayLimits {
    /// Records kept in memory (the send window).
    pub memory_records: usize,
    /// Records in total (memory + spill); beyond it the input waits.
    pub max_records: usize,
    /// Directory of spill files; `None` = no spill (then the buffer is full
    /// at `memory_records`).
    pub spill_dir: Option<PathBuf>,
    /// Records per spill segment file; a segment is deleted once read.
    pub segment_records: usize,
}

impl ReplayLimits {
    /// Memory only.
    pub fn memory(records: usize) -> Self {
        Self {
            memory_records: records,
            max_records: records,
            spill_dir: None,
            segment_records: 65_536,
        }
    }
}

/// Why a record was not taken.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The buffer holds `max_records`: wait for a cookie.
    #[error("replay buffer full")]
    Full,
    /// The spill file could not be written.
    #[error("replay spill: {0}")]
    Io(#[from] io::Error),
}

/// Replay buffer of one domain.
#[derive(Debug)]
pub struct ReplayBuffer {
    limits: ReplayLimits,
    memory: VecDeque<BufferedRecord>,
    spill: Option<Spill>,
    /// Everything through this sequence is acknowledged (dropped on sight).
    acknowledged_through: Option<u64>,
}

impl ReplayBuffer {
    /// Opens the buffer of `domain`, taking over spill segments a previous
    /// run left, minus what `acknowledged_through` already covers.
    pub fn open(
        domain: u32,
        limits: ReplayLimits,
        acknowledged_through: Option<u64>,
    ) -> io::Result<Self> {
        let spill = match &limits.spill_dir {
            Some(dir) => Some(Spill::open(dir, domain, limits.segment_records)?),
            None => None,
        };
        let mut buffer = Self {
            limits,
            memory: VecDeque::new(),
            spill,
            acknowledged_through,
        };
        buffer.refill()?;
        Ok(buffer)
    }

    /// Records held (memory + spill).
    pub fn len(&self) -> usize {
        self.memory.len() + self.spilled_len()
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records in memory.
    pub fn memory_len(&self) -> usize {
        self.memory.len()
    }

    /// Records on disk (recovered ones already acknowledged included until
    /// they are read and dropped).
    pub fn spilled_len(&self) -> usize {
        self.spill.as_ref().map_or(0, |s| s.len)
    }

    /// No more records fit: the input must wait for a cookie.
    pub fn is_full(&self) -> bool {
        let max = if self.spill.is_some() {
            self.limits.max_records
        } else {
            self.limits.memory_records
        };
        self.len() >= max.max(1)
    }

    /// Sequence of the oldest record held in memory.
    pub fn first_in_memory(&self) -> Option<u64> {
        self.memory.front().map(|r| r.sequence)
    }

    /// Appends a record (its sequence larger than every one held).
    pub fn push(&mut self, record: BufferedRecord) -> Result<(), PushError> {
        if self.is_full() {
            return Err(PushError::Full);
        }
        match &mut self.spill {
            // Order: nothing may overtake what is already on disk.
            Some(spill) if spill.len > 0 || self.memory.len() >= self.limits.memory_records => {
                spill.append(&record)?
            }
            _ => self.memory.push_back(record),
        }
        Ok(())
    }

    /// Drops every record through `sequence` and refills the memory window
    /// from the spill. Returns the number of records dropped from memory.
    pub fn acknowledge(&mut self, sequence: u64) -> io::Result<usize> {
        if self.acknowledged_through.is_some_and(|a| a >= sequence) {
            return Ok(0);
        }
        self.acknowledged_through = Some(sequence);
        let before = self.memory.len();
        while self.memory.front().is_some_and(|r| r.sequence <= sequence) {
            self.memory.pop_front();
        }
        let dropped = before - self.memory.len();
        self.refill()?;
        Ok(dropped)
    }

    /// Records in memory with a sequence of at least `sequence`, in order.
    pub fn in_memory_from(&self, sequence: u64) -> impl Iterator<Item = &BufferedRecord> {
        let start = self.memory.partition_point(|r| r.sequence < sequence);
        self.memory.range(start..)
    }

    /// Moves spilled records into the memory window while it has room.
    fn refill(&mut self) -> io::Result<()> {
        let Some(spill) = &mut self.spill else {
            return Ok(());
        };
        while self.memory.len() < self.limits.memory_records {
            let Some(record) = spill.pop_front()? else {
                break;
            };
            if self
                .acknowledged_through
                .is_some_and(|a| record.sequence <= a)
            {
                continue; // Recovered from a previous run, already stored.
            }
            self.memory.push_back(record);
        }
        Ok(())
    }

    /// At shutdown: writes the memory window to disk in front of the spill
    /// (when spilling is configured) and syncs, so a restart replays it.
    /// Returns the number of records written.
    pub fn persist_for_restart(&mut self) -> io::Result<usize> {
        let Some(spill) = &mut self.spill else {
            return Ok(0);
        };
        let records: Vec<BufferedRecord> = self.memory.drain(..).collect();
        spill.prepend(&records)?;
        spill.sync()?;
        Ok(records.len())
    }
}

/// Segment files `domain-<domain>-<index>.spill`; each record is
/// `sequence u64, template id u16, length u16, bytes`, big-endian.
#[derive(Debug)]
struct Spill {
    dir: PathBuf,
    domain: u32,
    segment_records: usize,
    segments: VecDeque<Segment>,
    /// Writer of the last segment.
    writer: Option<BufWriter<File>>,
    /// Reader of the first segment.
    reader: Option<BufReader<File>>,
    /// Unread records over all segments.
    len: usize,
}

#[derive(Debug)]
struct Segment {
    index: u64,
    path: PathBuf,
    written: usize,
    read: usize,
}

const RECORD_HEADER_LEN: usize = 12;
/// First segment index of an empty spill: room below it for
/// [`Spill::prepend`].
const FIRST_SEGMENT_INDEX: u64 = 1 << 32;

impl Spill {
    fn open(dir: &Path, domain: u32, segment_records: usize) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let prefix = format!("domain-{domain}-");
        let mut found = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(index) = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(".spill"))
                .and_then(|index| index.parse::<u64>().ok())
            else {
                continue;
            };
            found.push((index, entry.path()));
        }
        found.sort();
        let mut segments = VecDeque::new();
        let mut len = 0;
        for (index, path) in found {
            let written = count_and_repair(&path)?;
            len += written;
            segments.push_back(Segment {
                index,
                path,
                written,
                read: 0,
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            domain,
            segment_records: segment_records.max(1),
            segments,
            writer: None,
            reader: None,
            len,
        })
    }

    fn segment_path(&self, index: u64) -> PathBuf {
        self.dir
            .join(format!("domain-{}-{index:020}.spill", self.domain))
    }

    fn append(&mut self, record: &BufferedRecord) -> io::Result<()> {
        let need_new = match (self.segments.back(), &self.writer) {
            (Some(last), Some(_)) => last.written >= self.segment_records,
            // Segments recovered from disk are not appended to: a new one
            // keeps the recovered files untouched until read.
            _ => true,
        };
        if need_new {
            if let Some(mut writer) = self.writer.take() {
                writer.flush()?;
            }
            let index = self
                .segments
                .back()
                .map_or(FIRST_SEGMENT_INDEX, |s| s.index + 1);
            let path = self.segment_path(index);
            let file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)?;
            self.writer = Some(BufWriter::new(file));
            self.segments.push_back(Segment {
                index,
                path,
                written: 0,
                read: 0,
            });
        }
        let writer = self.writer.as_mut().expect("writer opened above");
        write_record(writer, record)?;
        self.segments.back_mut().expect("segment exists").written += 1;
        self.len += 1;
        Ok(())
    }

    fn pop_front(&mut self) -> io::Result<Option<BufferedRecord>> {
        loop {
            let Some(front) = self.segments.front() else {
                return Ok(None);
            };
            let is_last = self.segments.len() == 1;
            if front.read == front.written {
                // Fully read, even the one being written: delete it, the
                // next spilled record starts a new segment.
                let done = self.segments.pop_front().expect("front exists");
                self.reader = None;
                if is_last {
                    self.writer = None;
                }
                fs::remove_file(&done.path)?;
                continue;
            }
            if is_last && let Some(writer) = &mut self.writer {
                // Records still in the write buffer must reach the file
                // before they can be read back.
                writer.flush()?;
            }
            if self.reader.is_none() {
                let mut file = File::open(&front.path)?;
                let mut skip = 0u64;
                // A segment partly read before a prepend cannot happen (the
                // reader only starts at 0 or continues), so only skip what
                // this run has read.
                if front.read > 0 {
                    let mut reader = BufReader::new(&mut file);
                    for _ in 0..front.read {
                        skip += read_record(&mut reader)?.1 as u64;
                    }
                }
                file.seek(SeekFrom::Start(skip))?;
                self.reader = Some(BufReader::new(file));
            }
            let reader = self.reader.as_mut().expect("reader opened above");
            let (record, _) = read_record(reader)?;
            self.segments.front_mut().expect("front exists").read += 1;
            self.len -= 1;
            return Ok(Some(record));
        }
    }

    /// Writes `records` (older than everything spilled) as a new first
    /// segment.
    fn prepend(&mut self, records: &[BufferedRecord]) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut all = records.to_vec();
        if let Some(front) = self.segments.front()
            && front.read > 0
        {
            // Its read part is in `records` (or acknowledged) but still in
            // its file: move the unread rest into the new segment and drop
            // the file, so a restart reads every record exactly once.
            for _ in 0..front.written - front.read {
                all.push(self.pop_front()?.expect("unread record counted"));
            }
            let done = self.segments.pop_front().expect("front exists");
            self.reader = None;
            if self.segments.is_empty() {
                self.writer = None;
            }
            fs::remove_file(&done.path)?;
        }
        let index = self
            .segments
            .front()
            .map_or(FIRST_SEGMENT_INDEX, |s| s.index - 1);
        let path = self.segment_path(index);
        let mut writer = BufWriter::new(File::create(&path)?);
        for record in &all {
            write_record(&mut writer, record)?;
        }
        writer.flush()?;
        writer.get_ref().sync_all()?;
        self.segments.push_front(Segment {
            index,
            path,
            written: all.len(),
            read: 0,
        });
        self.reader = None;
        self.len += all.len();
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        if let Some(writer) = &mut self.writer {
            writer.flush()?;
            writer.get_ref().sync_all()?;
        }
        File::open(&self.dir)?.sync_all()
    }
}

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
    let mut bytes = vec![0; len];
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

/// Counts the complete records of a segment and cuts off a torn last one
/// (a crash in the middle of a write).
pub(crate) fn count_and_repair(path: &Path) -> io::Result<usize> {
    let data = fs::read(path)?;
    let mut offset = 0;
    let mut count = 0;
    while data.len() - offset >= RECORD_HEADER_LEN {
        let len = usize::from(u16::from_be_bytes([data[offset + 10], data[offset + 11]]));
        if data.len() - offset < RECORD_HEADER_LEN + len {
            break;
        }
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
