//! Support for the workspace-level integration tests in `tests/tests/`:
//! writing pcap files that third-party tools (tshark, softflowd) read, and
//! finding those tools.

pub mod collector_config;
pub mod pcap;
pub mod pool;
pub mod postgres;

use std::path::PathBuf;
use std::process::Command;

/// Locates an external program. Outside CI a missing tool skips the test
/// with a printed reason; in CI (`CI` set) it fails the test, because CI
/// installs every tool and a skip there would hide a broken install step.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("{name} is not installed, but CI must have it (.ci/run installs it)");
        }
        eprintln!("SKIPPED: {name} is not installed (apt-get install it to run this test)");
    }
    found
}

/// Runs a command, returning stdout; panics with stderr on failure.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// A binary of this workspace. `cargo test --workspace` builds every
/// package's binaries next to the test executables (the parent of `deps/`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory")
        .join(name);
    assert!(
        bin.exists(),
        "{} missing: run the tests with `cargo test --workspace` (tests/run.sh)",
        bin.display()
    );
    bin
}

/// A UDP port free on loopback right now (for SCTP over UDP listeners,
/// whose SCTP port equals their UDP port, so port 0 will not do).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP port free on loopback right now.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Where a daemon under test logs: the test's stderr with
/// `POOLFLOW_TEST_LOGS` set, else nowhere.
pub fn child_log() -> std::process::Stdio {
    if std::env::var_os("POOLFLOW_TEST_LOGS").is_some() {
        std::process::Stdio::inherit()
    } else {
        std::process::Stdio::null()
    }
}

/// Drives a started `softflowd -r PCAP -c CTL` to its end and returns its
/// log, asserting it exported `flows` flows. softflowd either processes the
/// pcap at once and exits, or waits on its control socket: there a
/// "statistics" request starts it and "shutdown" expires, exports and
/// exits; both are handled. Blocking (polls every 50 ms, at most 30 s):
/// call it from async tests through `spawn_blocking`.
pub fn finish_softflowd(
    mut softflowd: std::process::Child,
    softflowctl: &std::path::Path,
    ctl: &std::path::Path,
    flows: usize,
) -> String {
    use std::time::{Duration, Instant};
    let ctl_command = |cmd: &str| {
        Command::new(softflowctl)
            .arg("-c")
            .arg(ctl)
            .arg(cmd)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut started = false;
    let mut shutdown_at = None;
    let exit = loop {
        if let Some(status) = softflowd.try_wait().unwrap() {
            break status;
        }
        if ctl.exists() && !started && ctl_command("statistics") {
            started = true;
            shutdown_at = Some(Instant::now() + Duration::from_millis(500));
        }
        if shutdown_at.is_some_and(|t| Instant::now() >= t) && ctl_command("shutdown") {
            shutdown_at = None;
        }
        assert!(Instant::now() < deadline, "softflowd did not finish");
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = softflowd.wait_with_output().unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(exit.success(), "softflowd exited with {exit}: {log}");
    assert!(
        log.contains(&format!("Flows exported: {flows}")),
        "softflowd did not export every flow: {log}"
    );
    log
}
