//! The collecting pipeline: transport sessions decode messages into batches
//! of [`RecordBlock`]s, one writer thread commits them to SQLite.
//!
//! ```text
//!  UDP thread ─┐
//!  TCP tasks  ─┼─ bounded channel of Batch ─► writer thread ─► SQLite (WAL)
//!  (SCTP)     ─┘
//! ```
//! The channel is bounded: when SQLite falls behind, receivers block, TCP
//! pushes back on the exporter and UDP datagrams queue in the kernel socket
//! buffer (and beyond it are lost, which the sequence numbers then show).
//!
//! Hot path: a message's records are validated by the session and copied,
//! as received, into the batch's one byte buffer; the records of a message
//! that share a template become one [`RecordBlock`] (one SQLite row). No
//! allocation per record, none per message once the buffers have grown;
//! decoding into flow fields happens at query time ([`crate::store`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use protocol::ipfix::{SessionConfig, TransportKind};
use tokio::sync::mpsc;
use tracing::error;

use crate::store::Store;
// Re-exported where they lived before `batch` and `decoder` were split off.
pub use crate::batch::{Batch, RecordBlock, TotalsReport};
pub use crate::decoder::SessionDecoder;

/// The wall clock in unix milliseconds: read by drivers (and the writer),
/// never by the sans-IO parts, which are given the time.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Limits of the writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Largest transaction; under load batches grow up to this.
    pub max_batch_records: usize,
    /// Shortest time between the ends of two commits while batches keep
    /// coming (`commit_interval` of the configuration): bounds the device
    /// flushes per second without delaying a commit after a quiet spell.
    /// What it adds to the time to a cookie is at most this.
    pub commit_interval: Duration,
}

/// What the writer has made durable so far, readable from any thread.
#[derive(Debug)]
pub struct Progress {
    /// Records committed so far.
    pub committed_records: AtomicU64,
    /// Transactions committed so far.
    pub commits: AtomicU64,
    /// Bumped after every commit: sessions owing cookies wait on it.
    pub committed: tokio::sync::watch::Sender<u64>,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            committed_records: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            committed: tokio::sync::watch::Sender::new(0),
        }
    }
}

/// Starts the writer thread. It ends, after a last commit, when every sender
/// of `rx` is dropped; its result tells whether SQLite failed.
pub fn spawn_writer(
    mut store: Store,
    mut rx: mpsc::Receiver<Batch>,
    config: WriterConfig,
    progress: Arc<Progress>,
) -> JoinHandle<Result<()>> {
    std::thread::Builder::new()
        .name("sqlite-writer".into())
        .spawn(move || {
            let mut pending: Vec<Batch> = Vec::new();
            let mut last_commit: Option<std::time::Instant> = None;
            while let Some(batch) = rx.blocking_recv() {
                let mut records = batch.len();
                pending.push(batch);
                // Take whatever else is already queued: big transactions
                // under load, small and prompt ones when idle. Batches are
                // committed as they are, not merged: no copying. Under
                // load, commits are at least `commit_interval` apart:
                // each costs two device flushes (segment, WAL) whatever its
                // size, so more records share them.
                let max = config.max_batch_records;
                take_queued(&mut rx, &mut pending, &mut records, max);
                let interval = config.commit_interval;
                let since = last_commit.map_or(interval, |t| t.elapsed());
                if records < max && since < interval {
                    std::thread::sleep(interval - since);
                    take_queued(&mut rx, &mut pending, &mut records, max);
                }
                let n = records as u64;
                let commit_started = std::time::Instant::now();
                if let Err(err) = store.commit(&pending, now_ms()) {
                    error!("SQLite commit of {n} records failed: {err:#}");
                    return Err(err);
                }
                progress.committed_records.fetch_add(n, Ordering::Release);
                let commits = progress.commits.fetch_add(1, Ordering::Release) + 1;
                progress.committed.send_replace(commits);
                metrics::counter!("poolflow_collector_records_stored_total").increment(n);
                // Commit latency bounds how soon cookies go out (cookie lag).
                metrics::histogram!("poolflow_collector_commit_seconds")
                    .record(commit_started.elapsed().as_secs_f64());
                pending.clear();
                last_commit = Some(std::time::Instant::now());
            }
            Ok(())
        })
        .expect("spawning the writer thread")
}

/// Moves the batches already queued into `pending` while it holds fewer
/// than `max` records (`records` counts them).
fn take_queued(
    rx: &mut mpsc::Receiver<Batch>,
    pending: &mut Vec<Batch>,
    records: &mut usize,
    max: usize,
) {
    while *records < max {
        let Ok(batch) = rx.try_recv() else { break };
        *records += batch.len();
        pending.push(batch);
    }
}

/// How long a UDP receive waits before flushing a partial batch.
pub const UDP_FLUSH_INTERVAL: Duration = Duration::from_millis(50);

/// Default session configuration for a transport from the collector config.
pub fn session_config(
    transport: TransportKind,
    template_lifetime_secs: u64,
    max_templates: usize,
) -> SessionConfig {
    let mut c = SessionConfig::new(transport);
    c.template_lifetime_secs = template_lifetime_secs;
    c.max_templates = max_templates;
    c
}
