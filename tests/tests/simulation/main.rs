//! A deterministic simulation of the whole pool (issue 17 item 3;
//! docs/simulation.md): the real exporter core and collector sessions with
//! real SQLite stores, over a simulated network with seeded delay, loss,
//! partitions and crashes, in virtual time. The audit is the oracle.
//!
//! Each test runs its scenario for many seeds. Environment:
//! - `POOLFLOW_SIM_SEEDS=N`: seeds per test (default [`DEFAULT_SEEDS`]);
//! - `POOLFLOW_SIM_FIRST_SEED=S`: the first seed (default 0);
//! - `POOLFLOW_SIM_SEED=S`: only seed S, with its trace printed.
//!
//! A failing seed prints the one-line command that runs it again.

mod oracle;
mod scenario;
mod world;

use std::path::PathBuf;
use std::time::Instant;

use scenario::{Kind, Scenario};
use world::World;

/// Seeds per test in a plain `cargo test`: four tests, 1,000 seeds.
const DEFAULT_SEEDS: u64 = 250;

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a number")),
    )
}

/// Where the runs' SQLite files go: memory-backed when the host has it
/// (the stores still fsync, only faster).
fn scratch_root() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

/// What one passing seed did, and where its (real) time went.
#[derive(Debug)]
struct SeedReport {
    stats: world::RunStats,
    simulated: std::time::Duration,
    judged: std::time::Duration,
}

/// Runs one seed; `Err` holds the failure report.
fn run_seed(kind: Kind, seed: u64, verbose: bool) -> Result<SeedReport, String> {
    let scenario = Scenario::generate(kind, seed);
    if verbose {
        println!("{scenario:#?}");
    }
    let dir = tempfile::Builder::new()
        .prefix("poolflow-sim-")
        .tempdir_in(scratch_root())
        .map_err(|e| format!("scratch directory: {e}"))?;
    let started = Instant::now();
    let outcome = World::new(scenario.clone(), dir.path(), verbose)
        .run()
        .map_err(|failure| {
            format!(
                "{}\n--- last events ---\n{}",
                failure.reason,
                failure.trace.join("\n")
            )
        })?;
    let simulated = started.elapsed();
    oracle::judge(&scenario, &outcome)?;
    Ok(SeedReport {
        stats: outcome.stats,
        simulated,
        judged: started.elapsed() - simulated,
    })
}

fn simulate(kind: Kind) {
    let reproduce = |seed: u64| {
        format!(
            "POOLFLOW_SIM_SEED={seed} cargo test -p poolflow-tests --test simulation -- {} --nocapture",
            kind.test_name()
        )
    };
    if let Some(seed) = env_u64("POOLFLOW_SIM_SEED") {
        match run_seed(kind, seed, true) {
            Ok(report) => println!("seed {seed} passed: {report:?}"),
            Err(report) => panic!(
                "seed {seed} FAILED: {report}\nreproduce: {}",
                reproduce(seed)
            ),
        }
        return;
    }
    let count = env_u64("POOLFLOW_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let first = env_u64("POOLFLOW_SIM_FIRST_SEED").unwrap_or(0);
    let started = Instant::now();
    let mut failovers = 0;
    let mut failbacks = 0;
    let mut refused = 0;
    let mut failed_associations = 0;
    let mut simulated = std::time::Duration::ZERO;
    let mut judged = std::time::Duration::ZERO;
    let mut failed = Vec::new();
    for seed in first..first + count {
        match run_seed(kind, seed, false) {
            Ok(report) => {
                failovers += report.stats.failovers;
                failbacks += report.stats.failbacks;
                refused += report.stats.echoes_refused;
                failed_associations += report.stats.associations_failed;
                simulated += report.simulated;
                judged += report.judged;
            }
            Err(report) => {
                eprintln!(
                    "seed {seed} FAILED: {report}\nreproduce: {}\n",
                    reproduce(seed)
                );
                failed.push(seed);
                if failed.len() >= 3 {
                    break; // Enough to go on; the rest would only repeat.
                }
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "{}: {count} seeds from {first} in {elapsed:.1} s ({:.0} seeds/s; simulation {:.1} s, \
         oracle {:.1} s), {failovers} failovers, {failbacks} failbacks, \
         {failed_associations} associations failed, {refused} Cookie Echoes refused",
        kind.test_name(),
        count as f64 / elapsed,
        simulated.as_secs_f64(),
        judged.as_secs_f64(),
    );
    assert!(
        failed.is_empty(),
        "failing seeds {failed:?}; first: {}",
        reproduce(failed[0])
    );
    // A simulation that never exercises failover proves nothing.
    if kind != Kind::Partitions {
        assert!(failovers > 0, "no failover in {count} seeds");
    }
}

#[test]
fn primary_killed_fails_over_and_back() {
    simulate(Kind::PrimaryKilled);
}

#[test]
fn collectors_killed_repeatedly() {
    simulate(Kind::CollectorsKilledRepeatedly);
}

#[test]
fn partitions_between_exporter_and_collectors() {
    simulate(Kind::Partitions);
}

#[test]
fn mixed_faults_with_exporter_crashes() {
    simulate(Kind::Mixed);
}

/// The oracle is not a rubber stamp: a run that passes fails once one
/// record is deleted from every store that holds it.
#[test]
fn the_oracle_fails_a_run_whose_stores_lost_a_record() {
    let scenario = Scenario::generate(Kind::PrimaryKilled, 7);
    let dir = tempfile::Builder::new()
        .prefix("poolflow-sim-")
        .tempdir_in(scratch_root())
        .expect("scratch directory");
    let outcome = World::new(scenario.clone(), dir.path(), false)
        .run()
        .unwrap_or_else(|failure| panic!("seed 7 must run: {}", failure.reason));
    oracle::judge(&scenario, &outcome).expect("the untouched run passes");
    let lost_sequence = 100;
    let mut deleted = 0;
    for path in &outcome.databases {
        let connection = rusqlite::Connection::open(path).expect("open a store");
        deleted += connection
            .execute(
                "DELETE FROM record_blocks WHERE billing_exporter IS NOT NULL
                   AND first_record_sequence <= ?1
                   AND first_record_sequence + record_count > ?1",
                [lost_sequence],
            )
            .expect("delete the block holding the record");
    }
    assert!(deleted > 0, "some store held record {lost_sequence}");
    let verdict = oracle::judge(&scenario, &outcome);
    assert!(
        verdict.as_ref().is_err_and(|e| e.contains("audit FAILED")),
        "the audit must see the lost record: {verdict:?}"
    );
}
