//! Append-only segment files: the record bytes of stored blocks.
//!
//! SQLite in WAL mode writes every byte twice (into the WAL, then into the
//! database at a checkpoint) and checksums it on the way; for the record
//! bytes, which are written once and never changed, that was most of the
//! writer's cost (BENCHMARKS.md, "Where the writer's time went"). Since
//! schema 6 a block's bytes go once, sequentially, into a segment file, and
//! its `record_blocks` row (the index and ledger, still in SQLite) says
//! where: `segment`, `segment_offset`, `segment_length`.
//!
//! Durability: the writer stages a commit's bytes, writes them with one
//! system call and syncs the file (`fdatasync`) *before* the SQLite
//! transaction that points at them commits. A crash in between leaves bytes
//! no row points at (the next commit appends after them): harmless. Bytes
//! are never rewritten, so readers (query, audit, the PostgreSQL shipper)
//! read a committed block's bytes while the writer appends.
//!
//! Layout: `<database>.segments/<id, 10 digits>.seg`, a new segment when the
//! current one passes [`SEGMENT_BYTES`] at the start of a commit. A store
//! must be copied or backed up with its segments directory; a block whose
//! segment is missing is reported by the audit as unreadable.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A segment is closed for appending once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 1 << 30;

/// Where one block's record bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Segment id (file `<id>.seg`).
    pub segment: i64,
    /// Byte offset in the segment.
    pub offset: u64,
    /// Byte length.
    pub length: u64,
}

/// The segments directory of the database at `database`.
pub fn directory(database: &Path) -> PathBuf {
    let mut name = database.file_name().unwrap_or_default().to_os_string();
    name.push(".segments");
    database.with_file_name(name)
}

/// The directory holding `path`: `.` for a bare file name (a database given
/// as `collector.sqlite`, relative to the working directory, as the
/// packaged systemd unit does), whose `parent()` is the empty path.
fn parent_directory(path: &Path) -> &Path {
    path.parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn segment_path(dir: &Path, id: i64) -> PathBuf {
    dir.join(format!("{id:010}.seg"))
}

/// The writer's side: stages a commit's bytes, then writes and syncs them.
pub struct SegmentWriter {
    dir: PathBuf,
    id: i64,
    file: File,
    /// Bytes in the file (what the next offset is).
    length: u64,
    /// This commit's bytes, not yet written.
    staged: Vec<u8>,
}

impl SegmentWriter {
    /// Opens the newest segment of `database` for appending (creating the
    /// directory and the first segment if needed).
    pub fn open(database: &Path) -> Result<Self> {
        let dir = directory(database);
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating segments directory {}", dir.display()))?;
            sync_directory(parent_directory(&dir))?;
        }
        let mut newest = 0;
        for entry in std::fs::read_dir(&dir)
            .with_context(|| format!("reading segments directory {}", dir.display()))?
        {
            let name = entry?.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<i64>().ok())
            else {
                continue;
            };
            newest = newest.max(id);
        }
        let id = newest.max(1);
        let (file, length) = open_append(&dir, id)?;
        Ok(Self {
            dir,
            id,
            file,
            length,
            staged: Vec::new(),
        })
    }

    /// Starts a commit, discarding what an unfinished one staged: moves to
    /// a new segment when the current one is full.
    pub fn begin(&mut self) -> Result<()> {
        self.staged.clear();
        if self.length >= SEGMENT_BYTES {
            let (file, length) = open_append(&self.dir, self.id + 1)?;
            self.id += 1;
            self.file = file;
            self.length = length;
        }
        Ok(())
    }

    /// Stages `bytes` for this commit; returns where they will be.
    pub fn stage(&mut self, bytes: &[u8]) -> Location {
        let location = Location {
            segment: self.id,
            offset: self.length + self.staged.len() as u64,
            length: bytes.len() as u64,
        };
        self.staged.extend_from_slice(bytes);
        location
    }

    /// Writes the staged bytes and waits until they are on disk: call
    /// before the SQLite transaction that points at them commits.
    pub fn sync(&mut self) -> Result<()> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let written = self
            .file
            .write_all(&self.staged)
            .and_then(|()| self.file.sync_data());
        if let Err(err) = written {
            // Part of it may be in the file: continue after whatever is.
            self.length = self.file.metadata().map_or(self.length, |m| m.len());
            self.staged.clear();
            return Err(err).with_context(|| {
                format!(
                    "writing segment {}",
                    segment_path(&self.dir, self.id).display()
                )
            });
        }
        self.length += self.staged.len() as u64;
        self.staged.clear();
        Ok(())
    }
}

fn open_append(dir: &Path, id: i64) -> Result<(File, u64)> {
    let path = segment_path(dir, id);
    let existed = path.exists();
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening segment {}", path.display()))?;
    if !existed {
        // The new name must survive a crash as well as the bytes in it.
        sync_directory(dir)?;
    }
    let length = file.metadata()?.len();
    Ok((file, length))
}

fn sync_directory(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// The readers' side: positioned reads of blocks' bytes, a file handle per
/// segment kept open.
#[derive(Debug)]
pub struct SegmentReader {
    dir: Option<PathBuf>,
    files: HashMap<i64, File>,
    buffer: Vec<u8>,
}

impl SegmentReader {
    /// A reader of the segments of the database at `database`.
    pub fn for_database(database: &Path) -> Self {
        Self::in_directory(Some(directory(database)))
    }

    /// A reader of the segments of the database `conn` has open (none for
    /// an in-memory database).
    pub fn for_connection(conn: &rusqlite::Connection) -> Self {
        Self::in_directory(
            conn.path()
                .filter(|p| !p.is_empty())
                .map(|p| directory(Path::new(p))),
        )
    }

    fn in_directory(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            files: HashMap::new(),
            buffer: Vec::new(),
        }
    }

    /// The bytes at `location`.
    pub fn read(&mut self, location: Location) -> std::io::Result<&[u8]> {
        let Some(dir) = &self.dir else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the database has no segments directory",
            ));
        };
        let file = match self.files.entry(location.segment) {
            std::collections::hash_map::Entry::Occupied(f) => f.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(File::open(segment_path(dir, location.segment))?)
            }
        };
        let length = usize::try_from(location.length)
            .map_err(|_| std::io::Error::other("block length beyond memory"))?;
        self.buffer.resize(length, 0);
        file.read_exact_at(&mut self.buffer, location.offset)?;
        Ok(&self.buffer)
    }

    /// The record bytes of a row: the `records` blob at `blob_column`, or,
    /// when the three columns after it (`segment`, `segment_offset`,
    /// `segment_length`) are set, the segment's bytes they point at.
    pub fn row_bytes<'a>(
        &'a mut self,
        row: &'a rusqlite::Row<'_>,
        blob_column: usize,
    ) -> Result<&'a [u8]> {
        match row_location(row, blob_column + 1)? {
            None => Ok(row.get_ref(blob_column)?.as_blob()?),
            Some(location) => self.read(location).with_context(|| {
                format!(
                    "reading {} bytes at {} of segment {}",
                    location.length, location.offset, location.segment
                )
            }),
        }
    }
}

/// The three location columns of `record_blocks` (table alias `alias`, may
/// be empty) for a SELECT: `segment, segment_offset, segment_length`, or
/// three NULLs on a store written before schema 6, which read-only readers
/// (the audit) do not migrate.
pub fn location_columns(conn: &rusqlite::Connection, alias: &str) -> rusqlite::Result<String> {
    let has_segments = has_location_columns(conn)?;
    let prefix = if alias.is_empty() {
        String::new()
    } else {
        format!("{alias}.")
    };
    Ok(if has_segments {
        format!("{prefix}segment, {prefix}segment_offset, {prefix}segment_length")
    } else {
        "NULL, NULL, NULL".to_owned()
    })
}

/// Whether `record_blocks` has the location columns (schema 6, or a store
/// the collector has migrated).
pub fn has_location_columns(conn: &rusqlite::Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('record_blocks') WHERE name = 'segment'",
        [],
        |r| r.get(0),
    )
}

/// The [`Location`] in the columns `segment`, `segment_offset`,
/// `segment_length` starting at `first`; `None` when the bytes are in the
/// row (stores written before schema 6).
fn row_location(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Option<Location>> {
    let Some(segment) = row.get::<_, Option<i64>>(first)? else {
        return Ok(None);
    };
    Ok(Some(Location {
        segment,
        offset: row.get::<_, i64>(first + 1)? as u64,
        length: row.get::<_, i64>(first + 2)? as u64,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_bytes_are_read_back_after_sync_and_a_reopen_appends() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("store.sqlite");
        let mut writer = SegmentWriter::open(&db).unwrap();
        writer.begin().unwrap();
        let a = writer.stage(b"first block");
        let b = writer.stage(b"second");
        writer.sync().unwrap();
        assert_eq!((a.offset, b.offset), (0, 11));
        drop(writer);
        // A commit staged but never synced (a crash, or a failed
        // transaction) leaves nothing behind: the next one starts over.
        let mut writer = SegmentWriter::open(&db).unwrap();
        writer.begin().unwrap();
        writer.stage(b"never committed");
        writer.begin().unwrap();
        let c = writer.stage(b"third");
        writer.sync().unwrap();
        assert_eq!((c.segment, c.offset), (1, 17));

        let mut reader = SegmentReader::for_database(&db);
        assert_eq!(reader.read(a).unwrap(), b"first block");
        assert_eq!(reader.read(b).unwrap(), b"second");
        assert_eq!(reader.read(c).unwrap(), b"third");
        // A segment that is not there is an error, not a panic.
        let gone = Location {
            segment: 9,
            offset: 0,
            length: 1,
        };
        assert!(reader.read(gone).is_err());
    }

    #[test]
    fn a_relative_database_has_its_segments_beside_it() {
        let bare = Path::new("collector.sqlite");
        assert_eq!(directory(bare), Path::new("collector.sqlite.segments"));
        assert_eq!(parent_directory(&directory(bare)), Path::new("."));
        let nested = Path::new("data/collector.sqlite");
        assert_eq!(parent_directory(&directory(nested)), Path::new("data"));
        assert_eq!(
            parent_directory(Path::new("/var/lib/poolflow/c.sqlite.segments")),
            Path::new("/var/lib/poolflow")
        );
    }

    #[test]
    fn a_full_segment_is_left_for_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("store.sqlite");
        let mut writer = SegmentWriter::open(&db).unwrap();
        writer.begin().unwrap();
        writer.length = SEGMENT_BYTES; // as if full
        writer.begin().unwrap();
        let a = writer.stage(b"in the second segment");
        writer.sync().unwrap();
        assert_eq!((a.segment, a.offset), (2, 0));
        let reopened = SegmentWriter::open(&db).unwrap();
        assert_eq!((reopened.id, reopened.length), (2, 21));
    }
}
