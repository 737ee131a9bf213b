//! Durable intake: the intake journal of one observation domain.
//!
//! Without it a record the exporter has taken in lives in memory until a
//! collector's cookie covers it, and a crash of the exporter loses what no
//! cookie covered yet (declared on restart as not sent,
//! docs/billing-continuity.md). With `[buffer] durable = true` a record
//! counts as taken in only once it is in this journal and the journal has
//! been fsynced: the driver appends a batch, syncs once (group commit), and
//! only then hands the records to the pool-user core, which sends them. So
//! every record a collector ever saw is either covered by a cookie or in the
//! journal, and a restart replays the journal after the last cookie, with
//! the same record sequences: nothing is lost and no number is skipped.
//!
//! Segment files `intake-<domain>-<index>.journal` hold records in the
//! replay spill's format (sequence, template id, length, bytes); a segment
//! is deleted once a cookie covers its last record. A torn last record (a
//! crash in the middle of a write) is cut off on open: it was never synced,
//! so it never counted as taken in and was never sent.

use crate::record_file::{read_record, scan_and_repair, write_record};
use crate::replay::BufferedRecord;
use crate::sequence::ExporterState;
use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

/// The intake journal of one domain.
#[derive(Debug)]
pub struct IntakeJournal {
    dir: PathBuf,
    domain: u32,
    segment_records: usize,
    segments: VecDeque<JournalSegment>,
    writer: Option<BufWriter<File>>,
    /// A segment was created since the last sync: the directory entry must
    /// be synced too.
    new_segment: bool,
    /// Records appended since the last sync.
    unsynced: usize,
}

#[derive(Debug)]
struct JournalSegment {
    index: u64,
    path: PathBuf,
    /// Sequence of its last record.
    last: u64,
    records: usize,
}

impl IntakeJournal {
    /// Opens the journal of `domain` in `dir` and returns, in order, every
    /// record a previous run left whose sequence is after `acknowledged`
    /// (the last cookie's sequence, `None` when nothing was acknowledged).
    /// Segments wholly covered by `acknowledged` are deleted.
    pub fn open(
        dir: &Path,
        domain: u32,
        segment_records: usize,
        acknowledged: Option<u64>,
    ) -> io::Result<(Self, Vec<BufferedRecord>)> {
        fs::create_dir_all(dir)?;
        let prefix = format!("intake-{domain}-");
        let mut found = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(index) = name
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .and_then(|rest| rest.strip_suffix(".journal"))
                .and_then(|index| index.parse::<u64>().ok())
            else {
                continue;
            };
            found.push((index, entry.path()));
        }
        found.sort();
        let mut journal = Self {
            dir: dir.to_path_buf(),
            domain,
            segment_records: segment_records.max(1),
            segments: VecDeque::new(),
            writer: None,
            new_segment: false,
            unsynced: 0,
        };
        let mut pending = Vec::new();
        let mut segments = Vec::new();
        for (index, path) in found {
            let count = scan_and_repair(&path, |_| {})?;
            let mut reader = BufReader::new(File::open(&path)?);
            let mut last = None;
            for _ in 0..count {
                let (record, _) = read_record(&mut reader)?;
                last = Some(record.sequence);
                if acknowledged.is_none_or(|a| record.sequence > a) {
                    pending.push(record);
                }
            }
            match last {
                Some(last) => segments.push(JournalSegment {
                    index,
                    path,
                    last,
                    records: count,
                }),
                // Empty: its only record was torn, so it never counted.
                None => fs::remove_file(&path)?,
            }
        }
        // Wholly acknowledged segments are deleted, except the newest one:
        // it is how the journal knows the last sequence ever assigned, so a
        // restart continues right after it instead of declaring the unused
        // rest of the state file's reserved block as lost.
        let newest = segments.len().saturating_sub(1);
        for (position, segment) in segments.into_iter().enumerate() {
            if position == newest || acknowledged.is_none_or(|a| segment.last > a) {
                journal.segments.push_back(segment);
            } else {
                fs::remove_file(&segment.path)?;
            }
        }
        Ok((journal, pending))
    }

    /// Sequence of the newest record in the journal.
    pub fn last_sequence(&self) -> Option<u64> {
        self.segments.back().map(|s| s.last)
    }

    /// Records appended and not yet synced.
    pub fn unsynced(&self) -> usize {
        self.unsynced
    }

    /// Appends a record (buffered: it counts only after [`Self::sync`]).
    /// Sequences must grow.
    pub fn append(&mut self, record: &BufferedRecord) -> io::Result<()> {
        debug_assert!(self.last_sequence().is_none_or(|l| record.sequence > l));
        let need_new = match (self.segments.back(), &self.writer) {
            (Some(last), Some(_)) => last.records >= self.segment_records,
            // Segments of a previous run are never appended to.
            _ => true,
        };
        if need_new {
            if let Some(mut writer) = self.writer.take() {
                writer.flush()?;
                writer.get_ref().sync_data()?;
            }
            let index = self.segments.back().map_or(0, |s| s.index + 1);
            let path = self
                .dir
                .join(format!("intake-{}-{index:020}.journal", self.domain));
            let file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)?;
            self.writer = Some(BufWriter::with_capacity(1 << 16, file));
            self.segments.push_back(JournalSegment {
                index,
                path,
                last: record.sequence,
                records: 0,
            });
            self.new_segment = true;
        }
        write_record(self.writer.as_mut().expect("opened above"), record)?;
        let segment = self.segments.back_mut().expect("exists");
        segment.records += 1;
        segment.last = record.sequence;
        self.unsynced += 1;
        Ok(())
    }

    /// Makes every appended record durable: flush, fdatasync, and the
    /// directory when a segment was created.
    pub fn sync(&mut self) -> io::Result<()> {
        if let Some(writer) = &mut self.writer {
            writer.flush()?;
            writer.get_ref().sync_data()?;
        }
        if self.new_segment {
            File::open(&self.dir)?.sync_all()?;
            self.new_segment = false;
        }
        self.unsynced = 0;
        Ok(())
    }

    /// A cookie covers everything through `sequence`: deletes the segments
    /// it wholly covers, never the newest (it is being written, or it holds
    /// the last sequence assigned: see [`Self::open`]). Returns how many.
    pub fn release_through(&mut self, sequence: u64) -> io::Result<usize> {
        let mut released = 0;
        while self.segments.len() > 1 {
            let front = self.segments.front().expect("not empty");
            if front.last > sequence {
                break;
            }
            let done = self.segments.pop_front().expect("not empty");
            fs::remove_file(&done.path)?;
            released += 1;
        }
        Ok(released)
    }

    /// Segment files held.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

/// Where and how an exporter keeps its intake journals.
#[derive(Debug, Clone)]
pub struct DurableSettings {
    /// Directory of the journal segment files (one set per domain).
    pub dir: PathBuf,
    /// Records per segment file.
    pub segment_records: usize,
}

/// The intake journals of every domain of one exporter, and the records a
/// previous run left to replay.
#[derive(Debug)]
pub struct DurableIntake {
    settings: DurableSettings,
    journals: BTreeMap<u32, IntakeJournal>,
}

impl DurableIntake {
    /// Opens the journals in `settings.dir`. For every domain a previous
    /// run journaled, `state` is set to go on right after the last cookie
    /// (every record a collector may have seen beyond it is in the
    /// journal, since nothing is sent before it is journaled), and the
    /// journaled records after the cookie are returned, oldest first, to be
    /// pushed again with their own sequences. Replay spill segments of
    /// those domains are removed: the journal holds the same records.
    pub fn open(
        settings: DurableSettings,
        spill_dir: Option<&Path>,
        state: &mut ExporterState,
    ) -> io::Result<(Self, Vec<(u32, BufferedRecord)>)> {
        fs::create_dir_all(&settings.dir)?;
        let mut domains = Vec::new();
        for entry in fs::read_dir(&settings.dir)? {
            let name = entry?.file_name();
            let Some(domain) = name
                .to_str()
                .and_then(|n| n.strip_prefix("intake-"))
                .and_then(|rest| rest.split('-').next())
                .and_then(|d| d.parse::<u32>().ok())
            else {
                continue;
            };
            if !domains.contains(&domain) {
                domains.push(domain);
            }
        }
        domains.sort_unstable();
        let mut intake = Self {
            settings,
            journals: BTreeMap::new(),
        };
        let mut pending = Vec::new();
        for domain in domains {
            let entry = state.domains.entry(domain).or_default();
            let after_cookie = entry.last_cookie.map_or(0, |c| c.next_record_sequence());
            let acknowledged = after_cookie.checked_sub(1);
            let (journal, records) = IntakeJournal::open(
                &intake.settings.dir,
                domain,
                intake.settings.segment_records,
                acknowledged,
            )?;
            // Never below what an earlier run (without durable intake)
            // declared never to be sent.
            let floor = entry.declared_until;
            let records: Vec<BufferedRecord> = records
                .into_iter()
                .filter(|r| r.sequence >= floor)
                .collect();
            entry.next_sequence = match records.first() {
                Some(first) => first.sequence,
                None => after_cookie
                    .max(journal.last_sequence().map_or(0, |l| l + 1))
                    .max(floor),
            };
            if let Some(dir) = spill_dir {
                remove_spill_segments(dir, domain)?;
            }
            pending.extend(records.into_iter().map(|r| (domain, r)));
            intake.journals.insert(domain, journal);
        }
        Ok((intake, pending))
    }

    /// Appends a record of `domain` (durable after [`Self::sync`]).
    pub fn append(&mut self, domain: u32, record: &BufferedRecord) -> io::Result<()> {
        let journal = match self.journals.entry(domain) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let (journal, _) = IntakeJournal::open(
                    &self.settings.dir,
                    domain,
                    self.settings.segment_records,
                    None,
                )?;
                e.insert(journal)
            }
        };
        journal.append(record)
    }

    /// Syncs every journal with unsynced records: one fsync per domain
    /// per batch (group commit).
    pub fn sync(&mut self) -> io::Result<()> {
        for journal in self.journals.values_mut() {
            if journal.unsynced() > 0 {
                journal.sync()?;
            }
        }
        Ok(())
    }

    /// Releases, per domain, every segment the cookie of `persisted` (the
    /// state file as last written) covers. A restart starts from the state
    /// file's cookie and takes in again what the journal holds after it,
    /// so the journal must never give up a record the state file's cookie
    /// does not cover: releasing on a newer cookie the state file has not
    /// got yet (it is written at most every `state_sync_interval`) would
    /// leave a hole between them that a crash turns into records declared
    /// never sent although a collector stored them.
    pub fn release_persisted(&mut self, persisted: &ExporterState) -> io::Result<usize> {
        let mut released = 0;
        for (domain, journal) in &mut self.journals {
            let cookie = persisted
                .domains
                .get(domain)
                .and_then(|d| d.last_cookie)
                .filter(|c| !c.introduction);
            if let Some(cookie) = cookie {
                released += journal.release_through(cookie.last_record_sequence)?;
            }
        }
        Ok(released)
    }
}

/// Removes the replay spill's segment files of `domain` (see
/// [`crate::replay`] for their names).
fn remove_spill_segments(dir: &Path, domain: u32) -> io::Result<()> {
    let prefix = format!("domain-{domain}-");
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(()); // No spill yet.
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if name
            .to_str()
            .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".spill"))
        {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::RecordBytes;

    fn record(sequence: u64) -> BufferedRecord {
        BufferedRecord {
            sequence,
            template_id: 256,
            bytes: RecordBytes::from_slice(&sequence.to_be_bytes()),
        }
    }

    /// A cookie of exporter 9, domain 1, covering records through `last`.
    fn cookie_through(last: u64) -> protocol::billing::BillingCookie {
        protocol::billing::BillingCookie {
            version: 2,
            introduction: false,
            exporter_id: 9,
            domain: 1,
            last_record_sequence: last,
            pe_identifier: 1,
            signed_at_ms: 0,
            seal: protocol::billing::CookieSeal::None,
        }
    }

    /// An exporter state of domain 1 with that cookie and a reservation
    /// reaching `next_sequence`.
    fn state_with_cookie(last: u64, next_sequence: u64) -> ExporterState {
        let mut state = ExporterState::new(9);
        state.domains.insert(
            1,
            crate::sequence::DomainState {
                next_sequence,
                last_cookie: Some(cookie_through(last)),
                not_sent: 0,
                declared_until: 0,
            },
        );
        state
    }

    fn sequences(records: &[BufferedRecord]) -> Vec<u64> {
        records.iter().map(|r| r.sequence).collect()
    }

    #[test]
    fn a_restart_gets_back_every_synced_record_after_the_cookie() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, pending) = IntakeJournal::open(dir.path(), 7, 4, None).unwrap();
        assert!(pending.is_empty());
        for s in 0..10 {
            journal.append(&record(s)).unwrap();
        }
        journal.sync().unwrap();
        assert_eq!(journal.segment_count(), 3);
        // A cookie through 5 frees the first segment (0..=3) only.
        assert_eq!(journal.release_through(5).unwrap(), 1);
        drop(journal); // a crash: nothing more is written

        let (journal, pending) = IntakeJournal::open(dir.path(), 7, 4, Some(5)).unwrap();
        assert_eq!(sequences(&pending), vec![6, 7, 8, 9]);
        assert_eq!(pending[2].bytes[..], 8u64.to_be_bytes());
        assert_eq!(journal.last_sequence(), Some(9));
        // Another domain's journal in the same directory is separate.
        let (_, other) = IntakeJournal::open(dir.path(), 8, 4, None).unwrap();
        assert!(other.is_empty());
    }

    #[test]
    fn a_torn_last_record_is_cut_off_and_appending_goes_on_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = IntakeJournal::open(dir.path(), 1, 100, None).unwrap();
        for s in 0..3 {
            journal.append(&record(s)).unwrap();
        }
        journal.sync().unwrap();
        let path = journal.segments.back().unwrap().path.clone();
        drop(journal);
        // Half of a fourth record reached the file before the crash.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[0, 0, 0, 0, 0, 0, 0, 3, 1, 0]).unwrap();
        drop(file);

        let (mut journal, pending) = IntakeJournal::open(dir.path(), 1, 100, None).unwrap();
        assert_eq!(sequences(&pending), vec![0, 1, 2]);
        journal.append(&record(3)).unwrap();
        journal.sync().unwrap();
        drop(journal);
        let (_, pending) = IntakeJournal::open(dir.path(), 1, 100, Some(1)).unwrap();
        assert_eq!(sequences(&pending), vec![2, 3]);
    }

    #[test]
    fn fully_acknowledged_segments_of_a_previous_run_are_deleted_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = IntakeJournal::open(dir.path(), 1, 2, None).unwrap();
        for s in 0..6 {
            journal.append(&record(s)).unwrap();
        }
        journal.sync().unwrap();
        drop(journal);
        let (journal, pending) = IntakeJournal::open(dir.path(), 1, 2, Some(3)).unwrap();
        assert_eq!(sequences(&pending), vec![4, 5]);
        assert_eq!(journal.segment_count(), 1);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_wholly_acknowledged_journal_still_knows_its_last_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = IntakeJournal::open(dir.path(), 1, 2, None).unwrap();
        for s in 0..5 {
            journal.append(&record(s)).unwrap();
        }
        journal.sync().unwrap();
        drop(journal);
        // Everything acknowledged: only the newest segment (4) stays, for
        // its last sequence, and no record is pending.
        let (mut journal, pending) = IntakeJournal::open(dir.path(), 1, 2, Some(4)).unwrap();
        assert!(pending.is_empty());
        assert_eq!(journal.last_sequence(), Some(4));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        // A cookie after a restart that appended nothing releases nothing.
        assert_eq!(journal.release_through(4).unwrap(), 0);
        drop(journal);
        let (journal, pending) = IntakeJournal::open(dir.path(), 1, 2, Some(4)).unwrap();
        assert!(pending.is_empty());
        assert_eq!(journal.last_sequence(), Some(4));
    }

    /// The relay case the nemesis found: every journaled record is
    /// acknowledged, the state file holds a reserved block far beyond them.
    /// The restart goes on right after the last journaled record, so
    /// nothing is declared lost.
    #[test]
    fn a_restart_after_everything_was_acknowledged_continues_after_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let settings = DurableSettings {
            dir: dir.path().to_path_buf(),
            segment_records: 4,
        };
        let mut state = ExporterState::new(9);
        let (mut intake, _) = DurableIntake::open(settings.clone(), None, &mut state).unwrap();
        for s in 0..10 {
            intake.append(1, &record(s)).unwrap();
        }
        intake.sync().unwrap();
        let mut state = state_with_cookie(9, 100_010);
        intake.release_persisted(&state).unwrap();
        drop(intake);
        for run in 0..2 {
            // Each run reserved a block beyond what it assigned.
            state.domains.get_mut(&1).unwrap().next_sequence = 100_010;
            let (intake, pending) =
                DurableIntake::open(settings.clone(), None, &mut state).unwrap();
            assert!(pending.is_empty(), "run {run}");
            assert_eq!(state.domains[&1].next_sequence, 10, "run {run}");
            drop(intake);
        }
    }

    /// Found by the whole-pool simulation (seed 35 of the mixed test): the
    /// driver released segments on the core's newest cookie while the
    /// state file still held an older one; a crash in between made the
    /// restart declare the stored records in between as never sent.
    #[test]
    fn segments_are_released_only_through_the_state_files_cookie() {
        use crate::pool_user::{Exporter, ExporterConfig};
        let dir = tempfile::tempdir().unwrap();
        let settings = DurableSettings {
            dir: dir.path().to_path_buf(),
            segment_records: 4,
        };
        let mut state = ExporterState::new(9);
        let (mut intake, _) = DurableIntake::open(settings.clone(), None, &mut state).unwrap();
        for s in 0..20 {
            intake.append(1, &record(s)).unwrap();
        }
        intake.sync().unwrap();
        // The core holds a cookie through 15; the state file, written
        // earlier, one through 5 (and a reservation far beyond).
        let persisted = state_with_cookie(5, 1000);
        assert_eq!(intake.release_persisted(&persisted).unwrap(), 1);
        drop(intake); // the crash, before the state file got cookie 15

        let mut state = persisted.clone();
        let (_, pending) = DurableIntake::open(settings, None, &mut state).unwrap();
        let pending: Vec<u64> = pending.iter().map(|(_, r)| r.sequence).collect();
        assert_eq!(pending, (6..20).collect::<Vec<_>>());
        assert_eq!(state.domains[&1].next_sequence, 6);
        let core = Exporter::new(
            ExporterConfig::new(9),
            state,
            Vec::new(),
            std::time::Instant::now(),
            0,
            Default::default(),
        );
        assert_eq!(core.counters().declared_not_sent, 0);
    }

    #[test]
    fn the_segment_being_written_is_never_released() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = IntakeJournal::open(dir.path(), 1, 100, None).unwrap();
        for s in 0..5 {
            journal.append(&record(s)).unwrap();
        }
        journal.sync().unwrap();
        assert_eq!(journal.release_through(10).unwrap(), 0);
        journal.append(&record(5)).unwrap();
        journal.sync().unwrap();
        drop(journal);
        let (_, pending) = IntakeJournal::open(dir.path(), 1, 100, Some(4)).unwrap();
        assert_eq!(sequences(&pending), vec![5]);
    }
}
