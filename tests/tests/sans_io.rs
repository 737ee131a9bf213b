//! The sans-IO cores stay sans-IO: a guard over their sources. Each core
//! takes bytes, events and time as arguments and returns bytes and actions;
//! its driver (a thin tokio task) does the IO. A core that reads the clock,
//! opens a socket, spawns a thread or a task, or sleeps could no longer be
//! run by the tests with a fake clock (`exporter/tests/pool_user.rs`,
//! `registrar/tests/enrp_core.rs`) nor by the whole-pool simulation
//! (`tests/tests/simulation/`), so this fails the build's tests instead.
//!
//! No exceptions: the exporter's replay spill, the last one, is requests
//! the core hands its driver (`exporter/src/replay.rs` → `spill.rs`).

use std::path::Path;

/// The cores, from the workspace root. None does IO or reads a clock, and
/// none calls the global `metrics` registry: their drivers publish the
/// cores' own counters.
const CORES: &[&str] = &[
    "asap-client/src/pool_element.rs",
    "asap-client/src/pool_user.rs",
    "collector/src/batch.rs",
    "collector/src/billing.rs",
    "collector/src/decoder.rs",
    "collector/src/ledger.rs",
    "collector/src/session.rs",
    "exporter/src/pool_user.rs",
    "exporter/src/relay/rewrite.rs",
    "exporter/src/relay/session.rs",
    "exporter/src/replay.rs",
    "exporter/src/sequence.rs",
    "policies/src/lib.rs",
    "policies/src/preferred_primary.rs",
    "policies/src/selector.rs",
    "registrar/src/enrp/auth.rs",
    "registrar/src/enrp/config.rs",
    "registrar/src/enrp/mod.rs",
    "registrar/src/enrp/multicast.rs",
    "registrar/src/enrp/status.rs",
    "registrar/src/enrp/table_sync.rs",
    "registrar/src/enrp/takeover.rs",
    "registrar/src/handlespace.rs",
    "registrar/src/server.rs",
];

/// What a core must not use, and why.
const FORBIDDEN: &[(&str, &str)] = &[
    ("tokio::", "an async runtime (the driver's business)"),
    ("Instant::now()", "the clock (time comes in as an argument)"),
    (
        "SystemTime::now()",
        "the wall clock (comes in as an argument)",
    ),
    ("std::net::UdpSocket", "a socket"),
    ("std::net::TcpStream", "a socket"),
    ("std::net::TcpListener", "a socket"),
    ("std::thread", "threads or sleeping"),
    (
        "std::fs",
        "files (storage is the driver's: requests out, answers in)",
    ),
    (
        "File::",
        "files (storage is the driver's: requests out, answers in)",
    ),
    // The transport crate's data types (Reliability) are fine; its
    // associations and endpoints are IO.
    ("transport::connect", "an association (IO)"),
    ("transport::Endpoint", "an endpoint (IO)"),
    ("transport::Association", "an association (IO)"),
];

/// The source without its `#[cfg(test)]` module (tests may use a clock).
fn production_part(source: &str) -> &str {
    source
        .find("#[cfg(test)]\nmod tests")
        .map_or(source, |at| &source[..at])
}

/// Every line of the production part of `files` (from the workspace root)
/// that uses one of `patterns`, as "file:line: pattern: why".
fn violations(files: &[&str], patterns: &[(&str, &str)]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = Vec::new();
    for file in files {
        let source = std::fs::read_to_string(root.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e} (moved? update the list)"));
        for (number, line) in production_part(&source).lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for (pattern, why) in patterns {
                if code.contains(pattern) {
                    found.push(format!("{file}:{}: {pattern}: {why}", number + 1));
                }
            }
        }
    }
    found
}

#[test]
fn the_protocol_cores_do_no_io_and_read_no_clock() {
    let found = violations(CORES, FORBIDDEN);
    assert!(
        found.is_empty(),
        "sans-IO cores doing IO:\n{}",
        found.join("\n")
    );
}

#[test]
fn cores_count_in_their_own_counters_not_in_global_metrics() {
    let why = "the global metrics registry (the driver publishes the core's counters)";
    let patterns = ["counter!(", "gauge!(", "histogram!(", "metrics::"].map(|p| (p, why));
    let found = violations(CORES, &patterns);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// The guard itself can fail: each pattern is caught in code, and not in a
/// comment or in the test module.
#[test]
fn the_guard_catches_what_it_names() {
    for (pattern, _) in FORBIDDEN {
        let code = format!("fn f() {{ let x = {pattern}; }}");
        assert!(production_part(&code).contains(pattern));
        let commented = format!("// {pattern}");
        assert!(!commented.split("//").next().unwrap().contains(pattern));
    }
    let with_tests = "fn core() {}\n#[cfg(test)]\nmod tests { Instant::now() }";
    assert!(!production_part(with_tests).contains("Instant::now()"));
}
