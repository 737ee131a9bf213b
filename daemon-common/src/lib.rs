//! What the three poolflow daemons (registrar, collector, exporter) share on
//! the command line, so an operator learns one style: the log format
//! (`--log-format text|json`, `RUST_LOG` for the level), logging setup, and
//! the signal convention (SIGTERM and SIGINT stop gracefully, SIGHUP reloads
//! where a daemon supports it and is logged and ignored elsewhere), and the
//! rate limit of log lines that bad input causes ([`log_limit`]).
//!
//! A crate of its own because no existing crate fits: `protocol` is IO-free,
//! `asap-client` is not a dependency of the registrar, and `transport` is
//! about sockets, not processes.

#![warn(missing_docs)]

pub mod duration;
pub mod log_limit;

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// For a config key holding one listen address where an empty value turns
/// the listener off: accepts `"ADDR"`, `""`, `[]` (off, as in the daemons'
/// list-valued listen keys) and `["ADDR"]`, so `[]` turns a listener off in
/// every poolflow config file. Use with `#[serde(deserialize_with)]`.
pub fn single_listen_address<'de, D>(deserializer: D) -> Result<String, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrList {
        One(String),
        List(Vec<String>),
    }
    match OneOrList::deserialize(deserializer)? {
        OneOrList::One(address) => Ok(address),
        OneOrList::List(list) => match <[String; 1]>::try_from(list) {
            Ok([address]) => Ok(address),
            Err(list) if list.is_empty() => Ok(String::new()),
            Err(_) => Err(serde::de::Error::custom(
                "this listener takes one address (or [] to turn it off)",
            )),
        },
    }
}

/// Log line format, the same key (`log_format` / `[log] format`) and flag
/// (`--log-format`) in every daemon.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the global tracing subscriber writing to stderr (stdout is kept
/// for machine-readable output such as bound addresses and reports).
/// `RUST_LOG` wins over `default_filter` (a tracing filter such as "info").
pub fn init_logging(format: LogFormat, default_filter: &str) -> anyhow::Result<()> {
    let filter = match EnvFilter::try_from_default_env() {
        Ok(filter) => filter,
        Err(_) => EnvFilter::try_new(default_filter)
            .map_err(|e| anyhow::anyhow!("log filter {default_filter:?}: {e}"))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// A signal the daemons act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonSignal {
    /// SIGTERM or SIGINT (Ctrl-C): stop gracefully.
    Stop,
    /// SIGHUP: reload the configuration where supported.
    Reload,
}

/// The daemons' signal handlers, installed once at start so a signal that
/// arrives early is not lost to the default action (SIGHUP's kills the
/// process).
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs handlers for SIGTERM, SIGINT and SIGHUP (inside a tokio
    /// runtime).
    pub fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal, for a daemon that reloads on SIGHUP.
    pub async fn next(&mut self) -> DaemonSignal {
        tokio::select! {
            _ = self.term.recv() => DaemonSignal::Stop,
            _ = self.int.recv() => DaemonSignal::Stop,
            _ = self.hup.recv() => DaemonSignal::Reload,
        }
    }

    /// Waits for SIGTERM or SIGINT, for a daemon without reload: SIGHUP is
    /// logged as not supported and ignored (never the default action, which
    /// would kill the process).
    pub async fn stop(&mut self) {
        while self.next().await == DaemonSignal::Reload {
            tracing::warn!("SIGHUP: reload is not supported by this command, ignored");
        }
        tracing::info!("stop signal received");
    }
}

/// Installs the handlers and waits for a stop signal (see [`Signals::stop`]);
/// if the handlers cannot be installed, logs why and never returns
/// (the process then stops on the default action of the signal).
pub async fn stop_signal() {
    match Signals::install() {
        Ok(mut signals) => signals.stop().await,
        Err(error) => {
            tracing::error!("installing signal handlers: {error}");
            std::future::pending::<()>().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_format_spelling_is_the_same_in_files_and_flags() {
        #[derive(Deserialize, Serialize)]
        struct File {
            format: LogFormat,
        }
        let file: File = toml_like("json");
        assert_eq!(file.format, LogFormat::Json);
        use clap::ValueEnum;
        assert_eq!(LogFormat::from_str("text", false), Ok(LogFormat::Text));
        assert!(LogFormat::from_str("xml", false).is_err());
    }

    #[test]
    fn a_single_listener_is_off_with_an_empty_list_or_string() {
        #[derive(Deserialize)]
        struct Listen {
            #[serde(deserialize_with = "single_listen_address")]
            tcp: String,
        }
        let parse = |text: &str| toml::from_str::<Listen>(text).map(|l| l.tcp);
        assert_eq!(parse("tcp = []").unwrap(), "");
        assert_eq!(parse("tcp = \"\"").unwrap(), "");
        assert_eq!(parse("tcp = [\"127.0.0.1:1\"]").unwrap(), "127.0.0.1:1");
        assert_eq!(parse("tcp = \"127.0.0.1:1\"").unwrap(), "127.0.0.1:1");
        assert!(parse("tcp = [\"a:1\", \"b:2\"]").is_err());
    }

    fn toml_like<T: for<'de> Deserialize<'de>>(format: &str) -> T {
        use serde::de::IntoDeserializer;
        use serde::de::value::{Error, MapDeserializer};
        let map = MapDeserializer::<_, Error>::new(
            [("format", format)]
                .into_iter()
                .map(|(k, v)| (k.into_deserializer(), v.into_deserializer())),
        );
        T::deserialize(map).expect("deserialize")
    }

    #[tokio::test]
    async fn sighup_does_not_stop_and_sigterm_does() {
        let mut signals = Signals::install().expect("handlers");
        let pid = std::process::id() as i32;
        // Signals to this test process itself: its handlers are installed.
        send(pid, "HUP");
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), signals.next())
            .await
            .expect("SIGHUP delivered");
        assert_eq!(next, DaemonSignal::Reload);
        send(pid, "TERM");
        tokio::time::timeout(std::time::Duration::from_secs(10), signals.stop())
            .await
            .expect("SIGTERM stops");
    }

    fn send(pid: i32, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("kill(1)");
        assert!(status.success());
    }
}
