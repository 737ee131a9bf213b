//! Replay buffer (memory window, spill requests, back-pressure), the
//! driver's spill store performing those requests on files, and the state
//! file.

use std::collections::VecDeque;
use std::path::Path;

use exporter::replay::{BufferedRecord, PushError, ReplayBuffer, ReplayLimits, SpillRequest};
use exporter::sequence::{DomainState, ExporterState};
use exporter::spill::SpillStore;
use exporter::state_file::StateFile;
use protocol::billing::BillingCookie;

fn record(sequence: u64) -> BufferedRecord {
    BufferedRecord {
        sequence,
        template_id: 256,
        // Variable sizes so that offsets matter.
        bytes: vec![sequence as u8; 1 + (sequence % 7) as usize].into(),
    }
}

fn limits(dir: &Path) -> ReplayLimits {
    ReplayLimits {
        memory_records: 10,
        max_records: 100,
        spill_dir: Some(dir.to_path_buf()),
        segment_records: 8,
    }
}

fn memory_sequences(buffer: &ReplayBuffer) -> Vec<u64> {
    buffer.in_memory_from(0).map(|r| r.sequence).collect()
}

/// A replay buffer and the spill store its requests go to, as the
/// exporter's driver pairs them.
struct Spilled {
    buffer: ReplayBuffer,
    store: SpillStore,
    requests: VecDeque<SpillRequest>,
}

impl Spilled {
    /// Opens `domain`'s buffer over the spill files in `dir`.
    fn open(dir: &Path, domain: u32, acknowledged: Option<u64>) -> Self {
        let (store, mut recovered) = SpillStore::open(dir, 8).unwrap();
        let recovered = recovered.remove(&domain).unwrap_or_default();
        let mut requests = VecDeque::new();
        let buffer = ReplayBuffer::new(
            domain,
            limits(dir),
            acknowledged,
            recovered.len(),
            &mut requests,
        );
        let mut spilled = Self {
            buffer,
            store,
            requests,
        };
        spilled.perform();
        spilled
    }

    /// Performs every request, answering reads.
    fn perform(&mut self) {
        while let Some(request) = self.requests.pop_front() {
            if let Some(records) = self.store.perform(request).unwrap() {
                self.buffer.unspilled(records, &mut self.requests);
            }
        }
    }

    fn push(&mut self, sequence: u64) -> Result<(), PushError> {
        let result = self.buffer.push(record(sequence), &mut self.requests);
        self.perform();
        result
    }

    fn acknowledge(&mut self, sequence: u64) {
        self.buffer.acknowledge(sequence, &mut self.requests);
        self.perform();
    }

    fn persist_for_restart(&mut self) -> usize {
        let count = self.buffer.persist_for_restart(&mut self.requests);
        self.perform();
        count
    }
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[test]
fn memory_only_buffer_applies_back_pressure_at_its_size() {
    let mut requests = VecDeque::new();
    let mut buffer = ReplayBuffer::new(1, ReplayLimits::memory(3), None, 0, &mut requests);
    for s in 0..3 {
        buffer.push(record(s), &mut requests).unwrap();
    }
    assert!(buffer.is_full());
    assert!(matches!(
        buffer.push(record(3), &mut requests),
        Err(PushError::Full)
    ));
    assert_eq!(buffer.acknowledge(0, &mut requests), 1);
    assert!(!buffer.is_full());
    buffer.push(record(3), &mut requests).unwrap();
    assert_eq!(memory_sequences(&buffer), vec![1, 2, 3]);
    assert!(requests.is_empty(), "no spill, no requests");
}

/// The core alone: what goes past the window is asked of the spill as
/// requests, and what a read hands back is sent in order. Any store will
/// do; here a queue in memory.
#[test]
fn the_buffer_asks_the_spill_in_requests_and_refills_in_order() {
    let mut limits = limits(Path::new("unused"));
    limits.memory_records = 4;
    let mut requests = VecDeque::new();
    let mut buffer = ReplayBuffer::new(5, limits, None, 0, &mut requests);
    let mut store: VecDeque<BufferedRecord> = VecDeque::new();
    for s in 0..10 {
        buffer.push(record(s), &mut requests).unwrap();
    }
    assert_eq!(memory_sequences(&buffer), vec![0, 1, 2, 3]);
    assert_eq!(buffer.spilled_len(), 6);
    let appended: Vec<u64> = requests
        .drain(..)
        .map(|request| match request {
            SpillRequest::Append { domain: 5, record } => {
                let sequence = record.sequence;
                store.push_back(record);
                sequence
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(appended, (4..10).collect::<Vec<_>>());
    // A cookie through 1 frees two places: one read of two.
    buffer.acknowledge(1, &mut requests);
    assert_eq!(
        requests.pop_front(),
        Some(SpillRequest::Read {
            domain: 5,
            count: 2
        })
    );
    assert!(requests.is_empty(), "one read out at a time");
    // A record pushed while the read is out goes behind the spill.
    buffer.push(record(10), &mut requests).unwrap();
    assert!(matches!(
        requests.pop_front(),
        Some(SpillRequest::Append { .. })
    ));
    store.push_back(record(10));
    buffer.unspilled(store.drain(..2).collect(), &mut requests);
    assert_eq!(memory_sequences(&buffer), vec![2, 3, 4, 5]);
    assert_eq!(buffer.len(), 9);
    assert!(requests.is_empty(), "the window is full again");
    // An empty answer (a read that failed) is not asked again at once.
    buffer.acknowledge(2, &mut requests);
    assert!(matches!(
        requests.pop_front(),
        Some(SpillRequest::Read { count: 1, .. })
    ));
    buffer.unspilled(Vec::new(), &mut requests);
    assert!(requests.is_empty());
    assert_eq!(buffer.len(), 8, "the records are still in the spill");
    buffer.acknowledge(3, &mut requests);
    assert!(matches!(
        requests.pop_front(),
        Some(SpillRequest::Read { count: 2, .. })
    ));
    // A clean stop hands the window to the spill, in front.
    buffer.unspilled(store.drain(..2).collect(), &mut requests);
    assert_eq!(memory_sequences(&buffer), vec![4, 5, 6, 7]);
    assert_eq!(buffer.persist_for_restart(&mut requests), 4);
    assert!(matches!(
        requests.pop_front(),
        Some(SpillRequest::Prepend { domain: 5, records }) if records.len() == 4
    ));
    assert_eq!(buffer.memory_len(), 0);
}

#[test]
fn spills_beyond_memory_and_refills_in_order_on_acknowledgement() {
    let dir = tempfile::tempdir().unwrap();
    let mut spilled = Spilled::open(dir.path(), 1, None);
    for s in 0..35 {
        spilled.push(s).unwrap();
    }
    assert_eq!(spilled.buffer.memory_len(), 10);
    assert_eq!(spilled.buffer.spilled_len(), 25);
    assert_eq!(spilled.store.len(1), 25);
    assert_eq!(spilled.buffer.len(), 35);
    assert!(files_in(dir.path()) >= 3, "25 records in segments of 8");
    assert_eq!(
        memory_sequences(&spilled.buffer),
        (0..10).collect::<Vec<_>>()
    );
    // Records pushed while some are on disk go to disk too (order).
    spilled.acknowledge(6);
    assert_eq!(
        memory_sequences(&spilled.buffer),
        (7..17).collect::<Vec<_>>()
    );
    let mut seen = Vec::new();
    let mut pushed = Vec::new();
    let mut acked = 6;
    while !spilled.buffer.is_empty() {
        for r in spilled.buffer.in_memory_from(acked + 1) {
            assert_eq!(r, &record(r.sequence), "content survives the disk");
            seen.push(r.sequence);
        }
        acked = seen.last().copied().unwrap();
        spilled.acknowledge(acked);
        // Interleave new pushes with reading back.
        if acked < 30 {
            spilled.push(35 + acked).unwrap();
            pushed.push(35 + acked);
        }
    }
    let mut expected: Vec<u64> = (7..35).collect();
    expected.extend(&pushed);
    assert_eq!(seen, expected, "every record once, in order");
    assert_eq!(files_in(dir.path()), 0, "segments deleted once read");
}

#[test]
fn full_with_spill_at_max_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut spilled = Spilled::open(dir.path(), 1, None);
    for s in 0..100 {
        spilled.push(s).unwrap();
    }
    assert!(spilled.buffer.is_full());
    assert!(matches!(spilled.push(100), Err(PushError::Full)));
    spilled.acknowledge(4);
    assert_eq!(spilled.buffer.len(), 95);
    spilled.push(100).unwrap();
}

#[test]
fn persist_for_restart_keeps_every_unacknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut spilled = Spilled::open(dir.path(), 3, None);
        for s in 0..30 {
            spilled.push(s).unwrap();
        }
        // Read part of the spill into memory, so the first segment is
        // partly read when we persist.
        spilled.acknowledge(12);
        assert_eq!(spilled.persist_for_restart(), 10);
    }
    // Restart; the cookie covered through 14 in the meantime.
    let mut spilled = Spilled::open(dir.path(), 3, Some(14));
    let mut seen: Vec<u64> = Vec::new();
    while !spilled.buffer.is_empty() {
        let batch = memory_sequences(&spilled.buffer);
        assert!(!batch.is_empty());
        seen.extend(&batch);
        spilled.acknowledge(*batch.last().unwrap());
    }
    assert_eq!(seen, (15..30).collect::<Vec<_>>());
    // Other domains' spills are not picked up.
    let other = Spilled::open(dir.path(), 4, None);
    assert!(other.buffer.is_empty());
}

#[test]
fn recovery_reports_the_sequences_each_domain_holds() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut spilled = Spilled::open(dir.path(), 2, None);
        for s in (0..20).chain(25..30) {
            spilled.push(s).unwrap();
        }
        spilled.persist_for_restart();
    }
    let (_, recovered) = SpillStore::open(dir.path(), 8).unwrap();
    let domain = &recovered[&2];
    assert_eq!(domain.len(), 25);
    assert_eq!(domain.held_from(0), 25);
    assert_eq!(domain.held_from(18), 7, "18, 19 and 25..30");
    assert_eq!(domain.held_from(22), 5, "the gap holds nothing");
    assert_eq!(domain.held_from(30), 0);
    assert!(!recovered.contains_key(&3));
}

#[test]
fn torn_spill_tail_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut spilled = Spilled::open(dir.path(), 1, None);
        for s in 0..14 {
            spilled.push(s).unwrap();
        }
        spilled.persist_for_restart();
    }
    // Simulate a crash mid-write: append half a record to the last segment.
    let mut files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    use std::io::Write;
    let mut last = std::fs::OpenOptions::new()
        .append(true)
        .open(files.last().unwrap())
        .unwrap();
    last.write_all(&[0, 0, 0, 0, 0, 0, 0, 99, 1, 0]).unwrap();
    drop(last);
    let spilled = Spilled::open(dir.path(), 1, None);
    assert_eq!(spilled.buffer.len(), 14);
    assert_eq!(
        memory_sequences(&spilled.buffer),
        (0..10).collect::<Vec<_>>()
    );
}

#[test]
fn state_file_round_trips_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("exporter.state");
    let file = StateFile::new(&path);
    let fresh = file.load(9).unwrap();
    assert_eq!(fresh, ExporterState::new(9));
    let mut state = ExporterState::new(9);
    let cookie = BillingCookie::sign(b"k", 9, 2, 1234, 0xb, 99);
    state.domains.insert(
        2,
        DomainState {
            next_sequence: 5000,
            last_cookie: Some(cookie),
            ..DomainState::default()
        },
    );
    state.domains.insert(
        3,
        DomainState {
            next_sequence: 7,
            last_cookie: None,
            ..DomainState::default()
        },
    );
    file.store(&state).unwrap();
    assert_eq!(file.load(9).unwrap(), state);
    assert!(!dir.path().join("exporter.state.tmp").exists());
    // A state file of another exporter is refused.
    assert!(file.load(10).is_err());
    // Overwrite.
    state.domains.get_mut(&3).unwrap().next_sequence = 8;
    file.store(&state).unwrap();
    assert_eq!(file.load(9).unwrap().domains[&3].next_sequence, 8);
}

#[test]
fn corrupt_state_file_is_an_error_not_a_fresh_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("exporter.state");
    std::fs::write(&path, "version = 1\nexporter_id = 9\n[[domains]]\ndomain = 1\nnext_sequence = 5\nlast_cookie = \"zz\"\n").unwrap();
    assert!(StateFile::new(&path).load(9).is_err());
}
