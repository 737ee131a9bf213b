//! The exporter's state file ([`ExporterState`] as TOML, the driver's
//! side): replaced atomically, written to `FILE.tmp`, fsynced, renamed over
//! `FILE`, and the directory fsynced, so a crash leaves either the old or
//! the new state, never a torn one.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::sequence::ExporterState;

/// The state file on disk.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// A state file at `path` (not touched until load or store).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the state; a missing file is a fresh start for `exporter_id`.
    /// A file of another exporter id is an error (a copied configuration).
    pub fn load(&self, exporter_id: u32) -> anyhow::Result<ExporterState> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Ok(ExporterState::new(exporter_id));
            }
            Err(error) => {
                return Err(error).with_context(|| format!("reading {}", self.path.display()));
            }
        };
        let state = ExporterState::from_toml(&text)
            .with_context(|| format!("parsing {}", self.path.display()))?;
        if state.exporter_id != exporter_id {
            bail!(
                "{} belongs to exporter id {}, not {}",
                self.path.display(),
                state.exporter_id,
                exporter_id
            );
        }
        Ok(state)
    }

    /// Replaces the file atomically and durably (tmp, fsync, rename, fsync
    /// of the directory).
    pub fn store(&self, state: &ExporterState) -> io::Result<()> {
        let mut tmp_name = self.path.as_os_str().to_owned();
        tmp_name.push(".tmp");
        let tmp = PathBuf::from(tmp_name);
        {
            let mut file = File::create(&tmp)?;
            file.write_all(state.to_toml().as_bytes())?;
            file.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()
    }
}
