//! The verdict on one finished run: the real audit (`collector::audit`)
//! over the simulated collectors' SQLite files and the exporters' final
//! state files, then the same continuity rule checked directly against
//! the stores' ledgers, then what the scenario must have shown.

use std::collections::BTreeMap;

use collector::audit::{self, AuditOptions};
use collector::ledger::Ledger;
use collector::ledger::RangeSet;
use rusqlite::{Connection, OpenFlags};

use crate::scenario::{Kind, Scenario};
use crate::world::RunOutcome;

/// PE identifier of the primary (collector 0); see `world.rs`.
const PRIMARY_PE_ID: u32 = 0x5e00;

/// Checks `outcome`; `Err` says what is broken.
pub fn judge(scenario: &Scenario, outcome: &RunOutcome) -> Result<(), String> {
    run_audit(outcome)?;
    check_ledgers(outcome)?;
    check_scenario(scenario, outcome)
}

fn run_audit(outcome: &RunOutcome) -> Result<(), String> {
    let options = AuditOptions {
        databases: outcome.databases.clone(),
        exporter_states: outcome.exporter_states.clone(),
        list_limit: 20,
        ..AuditOptions::default()
    };
    let report = audit::run(&options).map_err(|e| format!("audit error: {e:#}"))?;
    if !report.passed() {
        return Err(format!("audit FAILED:\n{}", audit::report_text(&report)));
    }
    Ok(())
}

/// Every record sequence an exporter numbered is stored in some store or
/// declared never to be sent; an exporter that never crashed declared
/// nothing and numbered exactly what it took in.
fn check_ledgers(outcome: &RunOutcome) -> Result<(), String> {
    let mut stored: BTreeMap<(u32, u32), RangeSet> = BTreeMap::new();
    let mut declared: BTreeMap<(u32, u32), RangeSet> = BTreeMap::new();
    for path in &outcome.databases {
        let ledger = read_ledger(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        for (key, set) in &ledger.stored {
            for (first, last) in set.ranges() {
                stored.entry(*key).or_default().insert(first, last);
            }
        }
        for (key, set) in &ledger.declared {
            for (first, last) in set.ranges() {
                declared.entry(*key).or_default().insert(first, last);
            }
        }
    }
    for exporter in &outcome.exporters {
        let mut numbered = 0;
        for (&domain, state) in &exporter.state.domains {
            let key = (exporter.exporter_id, domain);
            numbered += state.next_sequence;
            if state.next_sequence == 0 {
                continue;
            }
            let last = state.next_sequence - 1;
            let none = RangeSet::default();
            let missing = stored.get(&key).unwrap_or(&none).missing(0, last);
            let declared_here = declared.get(&key).unwrap_or(&none);
            let unexplained: Vec<(u64, u64)> = missing
                .iter()
                .flat_map(|&(a, b)| declared_here.missing(a, b))
                .collect();
            if !unexplained.is_empty() {
                return Err(format!(
                    "exporter {} domain {domain}: sequences neither stored nor declared lost: {unexplained:?}",
                    exporter.exporter_id
                ));
            }
            // Nothing may be lost without a crash, nor with a crash when the
            // intake was journaled.
            let may_lose = exporter.crashed && !exporter.durable_intake;
            if !may_lose && (!missing.is_empty() || state.not_sent != 0) {
                return Err(format!(
                    "exporter {} domain {domain} (crashed: {}, durable intake: {}) lost {missing:?} (declared {})",
                    exporter.exporter_id, exporter.crashed, exporter.durable_intake, state.not_sent
                ));
            }
            let cookie = state.last_cookie.map(|c| c.next_record_sequence());
            if cookie != Some(state.next_sequence) {
                return Err(format!(
                    "exporter {} domain {domain}: final cookie covers up to {cookie:?}, numbered {}",
                    exporter.exporter_id, state.next_sequence
                ));
            }
        }
        if (!exporter.crashed || exporter.durable_intake) && numbered != exporter.taken_in {
            return Err(format!(
                "exporter {} took in {} records but numbered {numbered}",
                exporter.exporter_id, exporter.taken_in
            ));
        }
    }
    Ok(())
}

fn check_scenario(scenario: &Scenario, outcome: &RunOutcome) -> Result<(), String> {
    if scenario.kind == Kind::PrimaryKilled {
        if outcome.stats.failovers == 0 {
            return Err("the primary died but the exporter never failed over".to_owned());
        }
        let exporter = &outcome.exporters[0];
        if exporter.final_pe != Some(PRIMARY_PE_ID) {
            return Err(format!(
                "no failback: the exporter ends on {:?}, not on the primary {PRIMARY_PE_ID:#x}",
                exporter.final_pe
            ));
        }
    }
    Ok(())
}

/// The ledger tables of a store, read the way any SQL client would (not
/// through `Store`, whose ledger the sessions used).
fn read_ledger(path: &std::path::Path) -> rusqlite::Result<Ledger> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut ledger = Ledger::default();
    for (table, sets) in [
        ("billing_ranges", &mut ledger.stored),
        ("declared_losses", &mut ledger.declared),
    ] {
        let mut statement = conn.prepare(&format!(
            "SELECT billing_exporter, domain, first, last FROM {table}"
        ))?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let key: (u32, u32) = (row.get(0)?, row.get(1)?);
            let (first, last): (i64, i64) = (row.get(2)?, row.get(3)?);
            sets.entry(key)
                .or_default()
                .insert(first as u64, last as u64);
        }
    }
    Ok(ledger)
}
