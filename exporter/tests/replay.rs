//! Replay buffer (memory window + disk spill, back-pressure) and the state
//! file.

use exporter::replay::{BufferedRecord, PushError, ReplayBuffer, ReplayLimits};
use exporter::sequence::{DomainState, ExporterState, StateFile};
use protocol::billing::BillingCookie;

fn record(sequence: u64) -> BufferedRecord {
    BufferedRecord {
        sequence,
        template_id: 256,
        // Variable sizes so that offsets matter.
        bytes: vec![sequence as u8; 1 + (sequence % 7) as usize],
    }
}

fn limits(dir: &std::path::Path) -> ReplayLimits {
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

#[test]
fn memory_only_buffer_applies_back_pressure_at_its_size() {
    let mut buffer = ReplayBuffer::open(1, ReplayLimits::memory(3), None).unwrap();
    for s in 0..3 {
        buffer.push(record(s)).unwrap();
    }
    assert!(buffer.is_full());
    assert!(matches!(buffer.push(record(3)), Err(PushError::Full)));
    assert_eq!(buffer.acknowledge(0).unwrap(), 1);
    assert!(!buffer.is_full());
    buffer.push(record(3)).unwrap();
    assert_eq!(memory_sequences(&buffer), vec![1, 2, 3]);
}

#[test]
fn spills_beyond_memory_and_refills_in_order_on_acknowledgement() {
    let dir = tempfile::tempdir().unwrap();
    let mut buffer = ReplayBuffer::open(1, limits(dir.path()), None).unwrap();
    for s in 0..35 {
        buffer.push(record(s)).unwrap();
    }
    assert_eq!(buffer.memory_len(), 10);
    assert_eq!(buffer.spilled_len(), 25);
    assert_eq!(buffer.len(), 35);
    assert!(
        std::fs::read_dir(dir.path()).unwrap().count() >= 3,
        "25 records in segments of 8"
    );
    assert_eq!(memory_sequences(&buffer), (0..10).collect::<Vec<_>>());
    // Records pushed while some are on disk go to disk too (order).
    buffer.acknowledge(6).unwrap();
    assert_eq!(memory_sequences(&buffer), (7..17).collect::<Vec<_>>());
    let mut seen = Vec::new();
    let mut pushed = Vec::new();
    let mut acked = 6;
    while !buffer.is_empty() {
        for r in buffer.in_memory_from(acked + 1) {
            assert_eq!(r, &record(r.sequence), "content survives the disk");
            seen.push(r.sequence);
        }
        acked = seen.last().copied().unwrap();
        buffer.acknowledge(acked).unwrap();
        // Interleave new pushes with reading back.
        if acked < 30 {
            buffer.push(record(35 + acked)).unwrap();
            pushed.push(35 + acked);
        }
    }
    let mut expected: Vec<u64> = (7..35).collect();
    expected.extend(&pushed);
    assert_eq!(seen, expected, "every record once, in order");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "segments deleted once read"
    );
}

#[test]
fn full_with_spill_at_max_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut buffer = ReplayBuffer::open(1, limits(dir.path()), None).unwrap();
    for s in 0..100 {
        buffer.push(record(s)).unwrap();
    }
    assert!(buffer.is_full());
    assert!(matches!(buffer.push(record(100)), Err(PushError::Full)));
    buffer.acknowledge(4).unwrap();
    assert_eq!(buffer.len(), 95);
    buffer.push(record(100)).unwrap();
}

#[test]
fn persist_for_restart_keeps_every_unacknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut buffer = ReplayBuffer::open(3, limits(dir.path()), None).unwrap();
        for s in 0..30 {
            buffer.push(record(s)).unwrap();
        }
        // Read part of the spill into memory, so the first segment is
        // partly read when we persist.
        buffer.acknowledge(12).unwrap();
        assert_eq!(buffer.persist_for_restart().unwrap(), 10);
    }
    // Restart; the cookie covered through 14 in the meantime.
    let mut buffer = ReplayBuffer::open(3, limits(dir.path()), Some(14)).unwrap();
    let mut seen: Vec<u64> = Vec::new();
    while !buffer.is_empty() {
        let batch: Vec<u64> = buffer.in_memory_from(0).map(|r| r.sequence).collect();
        assert!(!batch.is_empty());
        seen.extend(&batch);
        buffer.acknowledge(*batch.last().unwrap()).unwrap();
    }
    assert_eq!(seen, (15..30).collect::<Vec<_>>());
    // Other domains' spills are not picked up.
    let other = ReplayBuffer::open(4, limits(dir.path()), None).unwrap();
    assert!(other.is_empty());
}

#[test]
fn torn_spill_tail_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut buffer = ReplayBuffer::open(1, limits(dir.path()), None).unwrap();
        for s in 0..14 {
            buffer.push(record(s)).unwrap();
        }
        buffer.persist_for_restart().unwrap();
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
    let buffer = ReplayBuffer::open(1, limits(dir.path()), None).unwrap();
    assert_eq!(buffer.len(), 14);
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
