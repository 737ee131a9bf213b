//! Selections per second of `PoolSelector` for pools of 10 to 100,000 PEs,
//! three PEs per answer (RSPLIB's default for a handle resolution).
//!
//! Run: `cargo bench -p policies --bench selection`
//! (`POLICIES_BENCH_SECONDS=2` for steadier numbers; default 0.5 s per line).
//!
//! Paths measured for each policy and pool size:
//! * `select (same list)`: the whole-list API with an unchanged list, as the
//!   registrar calls it before adopting the incremental API.
//! * `select_top`: the incremental API (`insert` once, then `select_top`).
//! * `insert + select_top`: one PE re-registers with new parameters before
//!   every selection (churn), incremental API.
//! * `select (1 changed)`: the same churn through the whole-list API, which
//!   then re-synchronises the list with one hash lookup per PE.
//!
//! A harness-less bench rather than criterion: it keeps the crate free of a
//! large dev-dependency tree, and a rate per line is what the registrar goal
//! (≥ 50,000 resolutions/s) is stated in.

use std::hint::black_box;
use std::time::{Duration, Instant};

use policies::{Member, PeId, PolicyParams, PoolSelector, policy_type};

const ANSWER_SIZE: usize = 3;
const POOL_SIZES: [u32; 4] = [10, 1_000, 10_000, 100_000];

struct Policy {
    name: &'static str,
    policy_type: u32,
    params_of: fn(PeId, u32) -> PolicyParams,
}

/// The same parameter spreads as registrar/benches/resolution.rs; `round`
/// varies them for the churn paths.
const POLICIES: [Policy; 4] = [
    Policy {
        name: "Round Robin",
        policy_type: policy_type::ROUND_ROBIN,
        params_of: |_, _| PolicyParams::RoundRobin,
    },
    Policy {
        name: "Priority",
        policy_type: policy_type::PRIORITY,
        params_of: |id, round| PolicyParams::Priority {
            priority: (id + round) % 7,
        },
    },
    Policy {
        name: "Least Used",
        policy_type: policy_type::LEAST_USED,
        params_of: |id, round| PolicyParams::LeastUsed {
            load: (id + round).wrapping_mul(7919),
        },
    },
    Policy {
        name: "Weighted Random",
        policy_type: policy_type::WEIGHTED_RANDOM,
        params_of: |id, round| PolicyParams::WeightedRandom {
            weight: 1 + (id + round) % 5,
        },
    },
];

fn measure_seconds() -> Duration {
    let seconds = std::env::var("POLICIES_BENCH_SECONDS")
        .ok()
        .and_then(|value| value.parse::<f64>().ok())
        .unwrap_or(0.5);
    Duration::from_secs_f64(seconds)
}

/// Calls `select` until `budget` has passed (at least 10 times) and prints
/// the rate.
fn report(policy: &str, pool_size: u32, path: &str, budget: Duration, mut select: impl FnMut(u32)) {
    for round in 0..3 {
        select(round);
    }
    let started = Instant::now();
    let mut count = 0u32;
    while count < 10 || started.elapsed() < budget {
        select(count);
        count += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rate = f64::from(count) / elapsed;
    let nanos = elapsed * 1e9 / f64::from(count);
    println!("{policy:<16} {pool_size:>7} {path:<22} {rate:>14.0} selections/s {nanos:>12.0} ns");
}

fn main() {
    // `cargo test --benches` runs bench targets too; stay quiet there.
    if std::env::args().any(|arg| arg == "--list" || arg == "--test") {
        return;
    }
    let budget = measure_seconds();
    println!("PoolSelector, {ANSWER_SIZE} PEs per answer");
    for policy in &POLICIES {
        for pool_size in POOL_SIZES {
            let members: Vec<Member> = (0..pool_size)
                .map(|id| Member {
                    id,
                    params: (policy.params_of)(id, 0),
                })
                .collect();

            let mut selector = PoolSelector::new(policy.policy_type, 1).unwrap();
            report(policy.name, pool_size, "select (same list)", budget, |_| {
                black_box(selector.select(black_box(&members), ANSWER_SIZE));
            });

            let mut selector = PoolSelector::new(policy.policy_type, 1).unwrap();
            for &member in &members {
                selector.insert(member);
            }
            report(policy.name, pool_size, "select_top", budget, |_| {
                black_box(selector.select_top(ANSWER_SIZE));
            });
            report(
                policy.name,
                pool_size,
                "insert + select_top",
                budget,
                |round| {
                    let id = round % pool_size;
                    selector.insert(Member {
                        id,
                        params: (policy.params_of)(id, round),
                    });
                    black_box(selector.select_top(ANSWER_SIZE));
                },
            );

            let mut changing = members.clone();
            let mut selector = PoolSelector::new(policy.policy_type, 1).unwrap();
            report(
                policy.name,
                pool_size,
                "select (1 changed)",
                budget,
                |round| {
                    let id = round % pool_size;
                    changing[id as usize].params = (policy.params_of)(id, round);
                    black_box(selector.select(black_box(&changing), ANSWER_SIZE));
                },
            );
        }
    }
}
