//! A throw-away PostgreSQL server for process-level tests, started and
//! stopped by tests/postgres/start.sh and stop.sh (loopback, trust auth,
//! data in a temporary directory). Stopping and starting it again keeps
//! the data: that is the outage the shipping tests put collectors through.

use std::path::PathBuf;
use std::process::Command;

use crate::free_tcp_port;

/// A running (or stopped) test server.
pub struct PostgresServer {
    dir: tempfile::TempDir,
    port: u16,
    /// `postgresql://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("postgres")
        .join(name)
}

impl PostgresServer {
    /// Starts a server. `None` (after printing SKIPPED) when PostgreSQL is
    /// not installed and cannot be; in CI (`CI` set) that panics instead,
    /// since CI must run these tests.
    pub fn start() -> Option<Self> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_tcp_port();
        let out = Command::new("bash")
            .arg(script("start.sh"))
            .arg(dir.path().join("pg"))
            .arg(port.to_string())
            .output()
            .expect("running tests/postgres/start.sh");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(3) {
            if std::env::var_os("CI").is_some() {
                panic!("PostgreSQL is not available, but CI must have it: {stderr}");
            }
            eprintln!("SKIPPED: PostgreSQL is not installed ({})", stderr.trim());
            return None;
        }
        assert!(
            out.status.success(),
            "tests/postgres/start.sh failed: {stderr}"
        );
        let url = String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_owned();
        Some(Self { dir, port, url })
    }

    /// Stops the server (fast shutdown); its data stays.
    pub fn stop(&self) {
        let status = Command::new("bash")
            .arg(script("stop.sh"))
            .arg(self.dir.path().join("pg"))
            .status()
            .expect("running tests/postgres/stop.sh");
        assert!(status.success(), "tests/postgres/stop.sh failed");
    }

    /// Starts the stopped server again, same port, same data.
    pub fn restart(&self) {
        let out = Command::new("bash")
            .arg(script("start.sh"))
            .arg(self.dir.path().join("pg"))
            .arg(self.port.to_string())
            .output()
            .expect("running tests/postgres/start.sh");
        assert!(
            out.status.success(),
            "restarting PostgreSQL failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script("stop.sh"))
            .arg(self.dir.path().join("pg"))
            .status();
    }
}
