//! The collector of a test pool: its config file (one listener for billing
//! streams, a `[pool]` section) and its process. Every process-level test
//! writes the same shape of config; the parts that differ between tests
//! (which registrars, how cookies are sealed, membership proofs) are
//! parameters.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::{child_log, workspace_bin};

/// Where a test collector takes billing streams, on 127.0.0.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// SCTP over UDP on this port (0: any).
    Sctp(u16),
    /// Framed TCP (RFC 5352-style length prefix) on this port.
    FramedTcp(u16),
}

/// How a test pool's exporters reach its collectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamTransport {
    /// SCTP over UDP (RFC 6951), the default.
    Sctp,
    /// The transport crate's framed TCP (`framed_tcp_listen`), for pool
    /// users without SCTP.
    FramedTcp,
}

impl StreamTransport {
    /// The listener on `port`.
    pub fn listener(self, port: u16) -> Listener {
        match self {
            Self::Sctp => Listener::Sctp(port),
            Self::FramedTcp => Listener::FramedTcp(port),
        }
    }
}

/// A collector registering in the test pool.
#[derive(Debug, Clone)]
pub struct PoolCollector<'a> {
    /// The pool handle it registers under.
    pub handle: &'a str,
    /// Its SQLite store.
    pub database: &'a Path,
    /// Where exporters reach it.
    pub listener: Listener,
    /// Registrar addresses as the config writes them, e.g.
    /// `sctp:127.0.0.1:3863`, in the order it tries them.
    pub registrars: &'a [String],
    /// Its pool policy priority.
    pub priority: u32,
    /// More `[pool]` keys: how it seals cookies (`cookie_key = "…"` or
    /// signing key files), membership proofs, a PE identifier.
    pub pool_keys: &'a str,
}

impl PoolCollector<'_> {
    /// The config file's text.
    pub fn toml(&self) -> String {
        let (sctp, framed) = match self.listener {
            Listener::Sctp(port) => (format!("[\"127.0.0.1:{port}\"]"), "[]".to_string()),
            Listener::FramedTcp(port) => ("[]".to_string(), format!("[\"127.0.0.1:{port}\"]")),
        };
        let registrars: Vec<String> = self.registrars.iter().map(|r| format!("{r:?}")).collect();
        format!(
            "database = {database:?}\nudp_listen = []\ntcp_listen = []\n\
             sctp_listen = {sctp}\nframed_tcp_listen = {framed}\n\
             [pool]\nhandle = {handle:?}\nregistrars = [{registrars}]\npriority = {priority}\n\
             {keys}\n",
            database = self.database,
            handle = self.handle,
            registrars = registrars.join(", "),
            priority = self.priority,
            keys = self.pool_keys,
        )
    }

    /// Writes the config to `path` and starts `collector run` with it.
    pub fn start(&self, path: &Path) -> Child {
        std::fs::write(path, self.toml()).unwrap();
        spawn_collector(path)
    }
}

/// `collector run --config PATH`, its log where [`child_log`] says.
pub fn spawn_collector(config: &Path) -> Child {
    Command::new(workspace_bin("collector"))
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(child_log())
        .spawn()
        .unwrap()
}
