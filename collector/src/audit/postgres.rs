//! The audit's inputs read from the PostgreSQL shared tier instead of a
//! SQLite file: each collector that shipped there is one store, read into
//! the same entries, handovers, anomalies and accounts as a SQLite store,
//! so the one audit logic above gives the same verdicts and figures.
//!
//! Each reader runs in its own thread (as for SQLite) with a current-thread
//! runtime for the client, inside one REPEATABLE READ transaction: a
//! consistent snapshot while shippers keep writing.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;

use anyhow::{Context, Result};
use futures_util::{StreamExt, pin_mut};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, IsolationLevel};

use super::read::{BlockAnomaly, GroupReader, HandoverRow, StoreReadout};
use super::report::StoreSummary;
use super::{DeclarationRow, ExporterAccount, GroupFilter, GroupKey, ReadProgress, RecordEntry};

/// Runs `future` to completion on a runtime of its own, in a thread of its
/// own: the audit is synchronous and may be called from inside another
/// runtime (a test, a daemon), where blocking that runtime's thread on a
/// second one is refused.
fn block_on<T: Send>(future: impl Future<Output = Result<T>> + Send) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("starting a runtime for the PostgreSQL client")?
                    .block_on(future)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the PostgreSQL audit reader panicked"))?
    })
}

/// Every collector with rows in the shared tier, sorted.
pub(super) fn collectors(url: &str) -> Result<Vec<String>> {
    block_on(async {
        let client = crate::postgres::connect(url).await?;
        check_schema(&client).await?;
        let rows = client
            .query(
                "SELECT collector FROM shipped_blocks
                 UNION SELECT collector FROM billing_handovers
                 UNION SELECT collector FROM declared_losses
                 UNION SELECT collector FROM exporter_totals
                 ORDER BY 1",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    })
}

async fn check_schema(client: &Client) -> Result<()> {
    let found: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_tables
             WHERE tablename IN ('shipped_blocks', 'flows', 'billing_handovers',
                                 'declared_losses', 'exporter_totals')",
            &[],
        )
        .await?
        .get(0);
    // flows is partitioned: pg_tables lists it (relkind 'p') since
    // PostgreSQL 10, so all five must be there.
    anyhow::ensure!(
        found >= 5,
        "no poolflow shared tier in this database (tables shipped_blocks, flows, \
         billing_handovers, declared_losses, exporter_totals; a collector with `[postgres]` \
         creates them)"
    );
    Ok(())
}

/// The exporters' statistics and declared losses shipped by `collector`,
/// as `super::read::read_accounts` reads them from SQLite.
pub(super) fn read_accounts(
    url: &str,
    collector: &str,
    store: &str,
    filter: GroupFilter,
    accounts: &mut BTreeMap<GroupKey, ExporterAccount>,
) -> Result<()> {
    block_on(async {
        let client = crate::postgres::connect(url).await?;
        for row in client
            .query(
                "SELECT billing_exporter, domain, MAX(exported_records + not_sent_records)
                 FROM exporter_totals WHERE collector = $1 AND billing_exporter IS NOT NULL
                 GROUP BY billing_exporter, domain",
                &[&collector],
            )
            .await?
        {
            let Some(key) = filter.key(row.get(0), row.get(1)) else {
                continue;
            };
            let accounted = row.get::<_, i64>(2).max(0) as u64;
            accounts.entry(key).or_default().account(accounted);
        }
        for row in client
            .query(
                "SELECT billing_exporter, domain, first, last, system_init_ms, peer
                 FROM declared_losses WHERE collector = $1 ORDER BY first, id",
                &[&collector],
            )
            .await?
        {
            let Some(key) = filter.key(row.get(0), row.get(1)) else {
                continue;
            };
            let (first, last) = (row.get::<_, i64>(2) as u64, row.get::<_, i64>(3) as u64);
            if first > last {
                continue;
            }
            accounts.entry(key).or_default().declare(DeclarationRow {
                first,
                last,
                system_init_ms: row.get(4),
                store: store.to_owned(),
                peer: row.get(5),
            });
        }
        Ok(())
    })
}

/// Streams `collector`'s billing records in (exporter, domain, sequence)
/// order, as `super::read::read_store` does for a SQLite file.
pub(super) fn read_store(
    url: &str,
    collector: &str,
    filter: GroupFilter,
    sender: &SyncSender<Vec<RecordEntry>>,
    progress: &ReadProgress,
) -> Result<StoreReadout> {
    block_on(async {
        let mut client = crate::postgres::connect(url).await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let mut summary = StoreSummary::default();
        let non_billing = tx
            .query_one(
                "SELECT count(*), COALESCE(SUM(record_count), 0)::bigint FROM shipped_blocks
                 WHERE collector = $1 AND billing_exporter IS NULL",
                &[&collector],
            )
            .await?;
        summary.non_billing_blocks = non_billing.get::<_, i64>(0) as u64;
        summary.non_billing_records_skipped = non_billing.get::<_, i64>(1) as u64;

        let mut handovers = Vec::new();
        for row in tx
            .query(
                "SELECT at_ms, billing_exporter, domain, peer, from_pe, to_pe, record_sequence
                 FROM billing_handovers WHERE collector = $1 ORDER BY at_ms, id",
                &[&collector],
            )
            .await?
        {
            let Some(key) = filter.key(row.get(1), row.get(2)) else {
                continue;
            };
            handovers.push(HandoverRow {
                key,
                at_ms: row.get(0),
                peer: row.get(3),
                from_pe: row.get(4),
                to_pe: row.get(5),
                record_sequence: row.get::<_, Option<i64>>(6).map(|s| s as u64),
            });
        }
        summary.handovers = handovers.len() as u64;

        let mut keys: Vec<GroupKey> = tx
            .query(
                "SELECT DISTINCT billing_exporter, domain FROM shipped_blocks
                 WHERE collector = $1 AND billing_exporter IS NOT NULL",
                &[&collector],
            )
            .await?
            .iter()
            .filter_map(|row| filter.key(row.get(0), row.get(1)))
            .collect();
        // Every reader must produce groups in the same order for the merge.
        keys.sort_unstable();

        let mut reader = GroupReader::new(sender);
        for &key in &keys {
            read_group(&tx, collector, key, &mut reader, &mut summary, progress).await?;
        }
        reader.flush()?;
        tx.commit().await?;
        Ok(StoreReadout {
            summary,
            handovers,
            anomalies: reader.anomalies,
        })
    })
}

async fn read_group(
    tx: &tokio_postgres::Transaction<'_>,
    collector: &str,
    key: GroupKey,
    reader: &mut GroupReader<'_>,
    summary: &mut StoreSummary,
    progress: &ReadProgress,
) -> Result<()> {
    // The blocks' own account of their records: a block whose records are
    // not all in flows (its template was damaged when shipped) is an
    // anomaly, as an unreadable block is in SQLite.
    let mut expected: HashMap<i64, (i64, i64)> = HashMap::new();
    for row in tx
        .query(
            "SELECT block_id, record_count, first_record_sequence FROM shipped_blocks
             WHERE collector = $1 AND billing_exporter = $2 AND domain = $3",
            &[&collector, &key.billing_exporter, &key.domain],
        )
        .await?
    {
        let block_id: i64 = row.get(0);
        let record_count: i64 = i64::from(row.get::<_, i32>(1));
        match row.get::<_, Option<i64>>(2) {
            None => reader.anomalies.push(BlockAnomaly {
                key,
                block_id,
                problem: format!(
                    "billing block without first_record_sequence: {record_count} records unplaceable"
                ),
            }),
            Some(_) => {
                expected.insert(block_id, (record_count, 0));
            }
        }
    }
    progress
        .blocks_total
        .fetch_add(expected.len() as u64, Ordering::Relaxed);
    summary.billing_blocks += expected.len() as u64;

    // Sequences are the i64 bit pattern of the u64: the non-negative half
    // first, then the negative half, gives unsigned order from the index.
    let statement = tx
        .prepare(
            "SELECT record_sequence, record_hash, block_id FROM flows
             WHERE collector = $1 AND billing_exporter = $2 AND domain = $3
               AND record_sequence BETWEEN $4 AND $5
             ORDER BY record_sequence",
        )
        .await?;
    let mut run: Vec<RecordEntry> = Vec::new();
    for (low, high) in [(0, i64::MAX), (i64::MIN, -1)] {
        let params: [&(dyn ToSql + Sync); 5] =
            [&collector, &key.billing_exporter, &key.domain, &low, &high];
        let rows = tx.query_raw(&statement, params).await?;
        pin_mut!(rows);
        while let Some(row) = rows.next().await {
            let row = row?;
            let entry = RecordEntry {
                key,
                sequence: row.get::<_, i64>(0) as u64,
                hash: row.get::<_, i64>(1) as u64,
                block_id: row.get(2),
            };
            if let Some(count) = expected.get_mut(&entry.block_id) {
                count.1 += 1;
            }
            // Copies of one sequence go to the merge in entry order, as the
            // SQLite reader sorts overlapping blocks.
            if run
                .first()
                .is_some_and(|first| first.sequence != entry.sequence)
            {
                release(&mut run, reader)?;
            }
            run.push(entry);
        }
    }
    release(&mut run, reader)?;
    let mut blocks: Vec<(&i64, &(i64, i64))> = expected.iter().collect();
    blocks.sort_unstable();
    for (block_id, (record_count, found)) in blocks {
        summary.billing_records += *found as u64;
        progress
            .records_read
            .fetch_add(*found as u64, Ordering::Relaxed);
        progress.blocks_read.fetch_add(1, Ordering::Relaxed);
        if found != record_count {
            reader.anomalies.push(BlockAnomaly {
                key,
                block_id: *block_id,
                problem: format!("record_count is {record_count} but flows holds {found}"),
            });
        }
    }
    reader.release_below(None)
}

fn release(run: &mut Vec<RecordEntry>, reader: &mut GroupReader<'_>) -> Result<()> {
    run.sort_unstable();
    reader.pending.extend(run.drain(..));
    reader.release_below(None)
}
