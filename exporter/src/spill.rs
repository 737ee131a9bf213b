//! The replay buffer's spill store: the driver's side of
//! [`crate::replay::SpillRequest`]. Records past a domain's memory window go
//! to append-only segment files `domain-<domain>-<index>.spill` in the
//! spill directory (format: `crate::record_file`), are read back in order
//! as cookies free the window, and a segment is deleted once read. At a
//! clean stop the memory window is written in front and everything synced;
//! at start the files of a previous run are recovered (a torn last record
//! cut off). [`MemorySpill`] does the same in memory, for tests and the
//! simulation.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::pool_user::Exporter;
use crate::record_file::{read_record, scan_and_repair, write_record};
use crate::replay::{BufferedRecord, RecoveredSpill, SpillRequest};

/// The spill files of every domain in one directory.
#[derive(Debug)]
pub struct SpillStore {
    dir: PathBuf,
    segment_records: usize,
    domains: BTreeMap<u32, DomainSpill>,
}

impl SpillStore {
    /// Opens `dir` (created if missing) and recovers the spill files a
    /// previous run left, returning what each domain's spill holds.
    pub fn open(
        dir: &Path,
        segment_records: usize,
    ) -> io::Result<(Self, BTreeMap<u32, RecoveredSpill>)> {
        fs::create_dir_all(dir)?;
        let mut found: BTreeMap<u32, Vec<(u64, PathBuf)>> = BTreeMap::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some((domain, index)) = name.to_str().and_then(parse_segment_name) else {
                continue;
            };
            found.entry(domain).or_default().push((index, entry.path()));
        }
        let mut store = Self {
            dir: dir.to_path_buf(),
            segment_records: segment_records.max(1),
            domains: BTreeMap::new(),
        };
        let mut recovered = BTreeMap::new();
        for (domain, mut files) in found {
            files.sort();
            let mut sequences = RecoveredSpill::default();
            let mut spill = DomainSpill::default();
            for (index, path) in files {
                let written = scan_and_repair(&path, |sequence| sequences.push(sequence))?;
                spill.len += written;
                spill.segments.push_back(Segment {
                    index,
                    path,
                    written,
                    read: 0,
                });
            }
            store.domains.insert(domain, spill);
            recovered.insert(domain, sequences);
        }
        Ok((store, recovered))
    }

    /// Performs one request; a [`SpillRequest::Read`] returns the records
    /// to hand back to the core.
    pub fn perform(&mut self, request: SpillRequest) -> io::Result<Option<Vec<BufferedRecord>>> {
        match request {
            SpillRequest::Append { domain, record } => {
                let (dir, segment_records) = (&self.dir, self.segment_records);
                self.domains.entry(domain).or_default().append(
                    dir,
                    domain,
                    segment_records,
                    &record,
                )?;
                Ok(None)
            }
            SpillRequest::Read { domain, count } => {
                let mut records = Vec::new();
                if let Some(spill) = self.domains.get_mut(&domain) {
                    while records.len() < count {
                        match spill.pop_front()? {
                            Some(record) => records.push(record),
                            None => break,
                        }
                    }
                }
                Ok(Some(records))
            }
            SpillRequest::Prepend { domain, records } => {
                let dir = &self.dir;
                let spill = self.domains.entry(domain).or_default();
                spill.prepend(dir, domain, &records)?;
                spill.sync()?;
                File::open(dir)?.sync_all()?;
                Ok(None)
            }
        }
    }

    /// Records spilled for `domain` and not read back.
    pub fn len(&self, domain: u32) -> usize {
        self.domains.get(&domain).map_or(0, |spill| spill.len)
    }
}

/// `domain-<domain>-<index>.spill` → (domain, index).
fn parse_segment_name(name: &str) -> Option<(u32, u64)> {
    let (domain, index) = name
        .strip_prefix("domain-")?
        .strip_suffix(".spill")?
        .split_once('-')?;
    Some((domain.parse().ok()?, index.parse().ok()?))
}

fn segment_path(dir: &Path, domain: u32, index: u64) -> PathBuf {
    dir.join(format!("domain-{domain}-{index:020}.spill"))
}

/// One domain's segments, oldest first.
#[derive(Debug, Default)]
struct DomainSpill {
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

/// First segment index of an empty spill: room below it for
/// [`DomainSpill::prepend`].
const FIRST_SEGMENT_INDEX: u64 = 1 << 32;

impl DomainSpill {
    fn append(
        &mut self,
        dir: &Path,
        domain: u32,
        segment_records: usize,
        record: &BufferedRecord,
    ) -> io::Result<()> {
        let need_new = match (self.segments.back(), &self.writer) {
            (Some(last), Some(_)) => last.written >= segment_records,
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
            let path = segment_path(dir, domain, index);
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
    fn prepend(&mut self, dir: &Path, domain: u32, records: &[BufferedRecord]) -> io::Result<()> {
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
        let path = segment_path(dir, domain, index);
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
        Ok(())
    }
}

/// A spill kept in memory, for tests and the whole-pool simulation: the
/// same requests as [`SpillStore`], on a queue per domain. Its records are
/// public, so a simulated crash can cut off what a real store would not
/// have flushed yet.
#[derive(Debug, Default)]
pub struct MemorySpill {
    /// Each domain's spilled records, oldest first.
    pub domains: BTreeMap<u32, VecDeque<BufferedRecord>>,
}

impl MemorySpill {
    /// Performs every request `core` has, in order, answering reads.
    pub fn perform(&mut self, core: &mut Exporter) {
        while let Some(request) = core.poll_spill() {
            match request {
                SpillRequest::Append { domain, record } => {
                    self.domains.entry(domain).or_default().push_back(record)
                }
                SpillRequest::Read { domain, count } => {
                    let records = self.domains.entry(domain).or_default();
                    let read = records.drain(..count.min(records.len())).collect();
                    core.handle_unspilled(domain, read);
                }
                SpillRequest::Prepend { domain, records } => {
                    let spilled = self.domains.entry(domain).or_default();
                    for record in records.into_iter().rev() {
                        spilled.push_front(record);
                    }
                }
            }
        }
    }

    /// What a restarted core is told the spill holds
    /// ([`SpillStore::open`]'s answer).
    pub fn recovered(&self) -> BTreeMap<u32, RecoveredSpill> {
        self.domains
            .iter()
            .map(|(&domain, records)| {
                let mut held = RecoveredSpill::default();
                records.iter().for_each(|r| held.push(r.sequence));
                (domain, held)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_parse_and_others_are_ignored() {
        assert_eq!(
            parse_segment_name("domain-7-00000000004294967296.spill"),
            Some((7, 1 << 32))
        );
        assert_eq!(parse_segment_name("intake-7-1.journal"), None);
        assert_eq!(parse_segment_name("domain-x-1.spill"), None);
        assert_eq!(parse_segment_name("domain-7-1.spill.tmp"), None);
    }
}
