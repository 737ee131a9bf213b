//! Multicast discovery with the real daemons (RFC 5352 §3.6): a registrar
//! sends ASAP Server Announces to 239.0.0.50:3863, and a collector and an
//! exporter configured with no registrar at all, only `announce_listen`,
//! find it there, register, resolve and stream.
//!
//! Multicast needs a route and a multicast-capable interface, which a test
//! host's loopback usually lacks; so the test makes its own network
//! namespace (`ip netns add`), turns multicast on on its `lo` and routes
//! 224.0.0.0/4 there, and runs every daemon inside it with `ip netns exec`.
//! That needs root: outside CI a host where that fails skips with the
//! reason; in CI (`CI` set) it fails, like a missing tool.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use poolflow_tests::pool::terminate;
use poolflow_tests::{child_log, require_tool, workspace_bin};

/// A network namespace deleted on drop (with whatever still runs in it
/// killed first by the test's own cleanup).
struct Namespace {
    name: String,
}

impl Namespace {
    /// `None` (skip) when namespaces cannot be made here, outside CI.
    fn create() -> Option<Self> {
        require_tool("ip")?;
        // Tests of this file run in parallel: one namespace each.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!(
            "pf-mcast-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let made = Command::new("ip")
            .args(["netns", "add", &name])
            .stderr(Stdio::piped())
            .output()
            .expect("run ip netns add");
        if !made.status.success() {
            let reason = String::from_utf8_lossy(&made.stderr).trim().to_string();
            assert!(
                std::env::var_os("CI").is_none(),
                "ip netns add failed in CI (the tests run as root there): {reason}"
            );
            eprintln!("SKIPPED: cannot make a network namespace here (needs root): {reason}");
            return None;
        }
        let namespace = Self { name };
        namespace.ip(&["link", "set", "lo", "up", "multicast", "on"]);
        // `src`: without it a datagram to the group leaves `lo` with no
        // source address (127.0.0.1 has host scope, the route link scope).
        namespace.ip(&[
            "route",
            "add",
            "224.0.0.0/4",
            "dev",
            "lo",
            "src",
            "127.0.0.1",
        ]);
        Some(namespace)
    }

    fn ip(&self, args: &[&str]) {
        let status = Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .status()
            .expect("run ip");
        assert!(status.success(), "ip -n {} {args:?} failed", self.name);
    }

    /// A workspace binary run inside the namespace.
    fn command(&self, binary: &str) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name])
            .arg(workspace_bin(binary))
            .env_remove("RUST_LOG");
        command
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// Children stopped (SIGTERM, then reaped) on drop, so a failing assertion
/// leaves no daemon behind in the namespace.
struct Daemons(Vec<Child>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for child in &mut self.0 {
            terminate(child);
            let _ = child.wait();
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Polls `check` every 100 ms until it holds, for at most `within`.
fn wait_until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn collector_and_exporter_find_the_registrar_from_its_announces() {
    let Some(namespace) = Namespace::create() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Ports are the namespace's own: the defaults cannot collide with the host.
    let registrar_config = write(
        dir.path(),
        "registrar.toml",
        r#"
server_id = 0x0a0b0c0d
[listen]
tcp = "127.0.0.1:3863"
sctp_over_udp = []
status = "127.0.0.1:3864"
[announce]
enabled = true
addresses = ["239.0.0.50:3863"]
transports = ["tcp:127.0.0.1:3863"]
"#,
    );
    let mut daemons = Daemons(Vec::new());
    daemons.0.push(
        namespace
            .command("registrar")
            .args(["run", "--config"])
            .arg(&registrar_config)
            .stderr(child_log())
            .spawn()
            .unwrap(),
    );
    let dump = || {
        namespace
            .command("registrar")
            .args(["dump", "--status", "127.0.0.1:3864"])
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    wait_until("registrar status answers", Duration::from_secs(20), || {
        dump().is_some()
    });

    let collector_config = write(
        dir.path(),
        "collector.toml",
        &format!(
            r#"
database = "{}"
udp_listen = []
tcp_listen = []
sctp_listen = []
framed_tcp_listen = ["127.0.0.1:4741"]
[pool]
handle = "discovered"
registrars = []
announce_listen = "239.0.0.50:3863"
pe_identifier = 0x0000beef
cookie_key = "a pool key for the multicast test"
"#,
            dir.path().join("c.sqlite").display()
        ),
    );
    daemons.0.push(
        namespace
            .command("collector")
            .args(["run", "--config"])
            .arg(&collector_config)
            .stderr(child_log())
            .spawn()
            .unwrap(),
    );
    wait_until(
        "the collector, told of no registrar, registered at the announced one",
        Duration::from_secs(30),
        || dump().is_some_and(|text| text.contains("PE 0x0000beef")),
    );

    let exporter_config = write(
        dir.path(),
        "exporter.toml",
        &format!(
            r#"
exporter_id = 21
pool_handle = "discovered"
registrars = []
announce_listen = "239.0.0.50:3863"
announce_sctp = "none"
state_file = "{}"
[timers]
retry_interval = "200ms"
connect_timeout = "1s"
registrar_request_timeout = "2s"
"#,
            dir.path().join("exporter.state").display()
        ),
    );
    let stream = namespace
        .command("exporter")
        .args(["stream", "--config"])
        .arg(&exporter_config)
        .args([
            "--records",
            "300",
            "--rate",
            "3000",
            "--exit-drain-timeout",
            "30s",
        ])
        .stdout(Stdio::piped())
        .stderr(child_log())
        .spawn()
        .unwrap();
    let (status, report) = poolflow_tests::pool::wait_output(stream, Duration::from_secs(60));
    assert!(
        status.success(),
        "exporter stream failed: {status}\n{report}"
    );
    assert!(
        report.contains("300 records in") && report.contains("all acknowledged"),
        "{report}"
    );
}

/// `[enrp] multicast`: two registrars told of no peer find each other from
/// the Presence each sends to 239.0.0.51:9901 and peer as if configured.
#[test]
fn registrars_peer_from_their_multicast_presence() {
    let Some(namespace) = Namespace::create() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut daemons = Daemons(Vec::new());
    // Two hosts' worth of addresses on the namespace's `lo`.
    for (index, address) in ["127.0.0.1", "127.0.0.2"].iter().enumerate() {
        let config = write(
            dir.path(),
            &format!("registrar{index}.toml"),
            &format!(
                r#"
server_id = {}
[listen]
tcp = "{address}:3863"
sctp_over_udp = []
status = "{address}:3864"
[enrp]
enabled = true
transport = "tcp"
listen = "{address}:9901"
peers = []
multicast = true
"#,
                0x0100 + index
            ),
        );
        daemons.0.push(
            namespace
                .command("registrar")
                .args(["run", "--config"])
                .arg(&config)
                .stderr(child_log())
                .spawn()
                .unwrap(),
        );
    }
    let dump = |address: &str| {
        namespace
            .command("registrar")
            .args(["dump", "--status", &format!("{address}:3864")])
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default()
    };
    for (address, other) in [("127.0.0.1", "0x00000101"), ("127.0.0.2", "0x00000100")] {
        wait_until(
            &format!("registrar at {address} peers with {other}, heard on the group"),
            Duration::from_secs(30),
            || {
                let text = dump(address);
                text.lines()
                    .any(|line| line.contains(&format!("peer {other}")) && line.contains("alive"))
                    && text.contains("ENRP multicast:")
            },
        );
    }
}
