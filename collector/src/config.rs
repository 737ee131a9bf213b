//! Collector configuration: a TOML file (every key optional, unknown keys
//! rejected by name) with command-line flags on top. The annotated example is
//! `deploy/collector.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub use daemon_common::LogFormat;

/// IANA port for IPFIX over UDP, TCP and SCTP (RFC 7011 section 10).
pub const IPFIX_PORT: u16 = 4739;

/// The collector's configuration file (TOML); every key has a default.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// SQLite database file the records go to.
    pub database: PathBuf,
    /// UDP addresses to receive IPFIX on.
    pub udp_listen: Vec<SocketAddr>,
    /// TCP addresses to accept IPFIX connections on.
    pub tcp_listen: Vec<SocketAddr>,
    /// TCP addresses to accept IPFIX over TLS on (RFC 7011 section 11; IANA
    /// port 4740, `ipfixs`). Needs `[tls]`.
    pub tls_listen: Vec<SocketAddr>,
    /// Certificate and key of the TLS listeners; `client_ca_file` turns on
    /// mutual authentication.
    pub tls: Option<TlsConfig>,
    /// UDP addresses carrying IPFIX over SCTP (SCTP over UDP, RFC 6951).
    /// The SCTP port inside equals the UDP port (poolflow's convention, so
    /// one address names the endpoint in ASAP transport parameters).
    pub sctp_listen: Vec<SocketAddr>,
    /// TCP addresses for pool users that cannot use SCTP: each frame carries
    /// stream and PPID (the `transport` crate's TCP framing), so IPFIX and
    /// the ASAP cookies of docs/billing-continuity.md share the connection.
    /// Not RFC 7011 TCP: plain IPFIX exporters use `tcp_listen`.
    pub framed_tcp_listen: Vec<SocketAddr>,
    /// TLS (the `[tls]` certificate, key and `client_ca_file`) on every
    /// `framed_tcp_listen` address. ASAP cannot advertise TLS (RFC 5354's
    /// TCP transport parameter has no such field): the pool users know
    /// from their own `[tls]` section.
    pub framed_tcp_tls: bool,
    /// Retransmission timeout bounds of the `sctp_listen` and
    /// `framed_tcp_listen` associations: `true` (default) bounds the SCTP
    /// RTO to 50-400 ms (`transport::Config::lan_retransmission`), so a
    /// billing cookie lost on the way to the exporter is resent well inside
    /// the exporter's cookie timeout; `false` keeps RFC 9260's 1-60 s, for
    /// exporters across a WAN whose round trips approach 400 ms.
    pub lan_retransmission: bool,
    /// Prometheus scrape endpoint (`/metrics`), off when absent.
    pub metrics_listen: Option<SocketAddr>,
    /// UDP template lifetime without refresh (RFC 7011 8.4; whole seconds).
    #[serde(with = "daemon_common::duration::serde")]
    pub template_lifetime: Duration,
    /// Templates one transport session may define.
    pub max_templates_per_session: usize,
    /// UDP exporters (address and port) tracked at once.
    pub max_udp_sessions: usize,
    /// A silent UDP session is forgotten after this long (whole seconds).
    #[serde(with = "daemon_common::duration::serde")]
    pub udp_idle_timeout: Duration,
    /// Kernel receive buffer for each UDP socket, bytes.
    pub udp_receive_buffer_bytes: usize,
    /// Ask for the buffer with SO_RCVBUFFORCE (past `net.core.rmem_max`
    /// when privileged) as well as SO_RCVBUF. Off, only the capped
    /// SO_RCVBUF is used, as other collectors do: the benchmark turns it
    /// off so every collector gets its buffer by the same means.
    pub udp_receive_buffer_force: bool,
    /// Receive threads per UDP address, each with its own socket
    /// (SO_REUSEPORT): the kernel keeps each exporter on one of them and
    /// spreads exporters over them. One (the default) suits up to about
    /// 4 cores; docs/architecture.md, "Using more cores", sizes it.
    pub udp_receive_threads: usize,
    /// Concurrent TCP connections.
    pub max_tcp_sessions: usize,
    /// Concurrent SCTP associations.
    pub max_sctp_sessions: usize,
    /// Largest SQLite transaction, records.
    pub max_batch_records: usize,
    /// Shortest time between two commits while batches keep coming
    /// (`"20ms"`): each commit costs two device flushes (segment, SQLite
    /// WAL) whatever its size, so a longer interval is cheaper per record
    /// under load and delays cookies (and a failback's drain) by up to
    /// that much. A commit after a quiet spell is never delayed.
    #[serde(with = "daemon_common::duration::serde")]
    pub commit_interval: Duration,
    /// Batches queued between receivers and the SQLite writer; bounds memory.
    pub queue_batches: usize,
    /// `text` or `json` logs.
    pub log_format: LogFormat,
    /// Legacy keys the file used (`template_lifetime_secs`, ...), one
    /// warning each, logged once logging is set up.
    #[serde(skip)]
    pub deprecated_keys: Vec<String>,
    /// Register as a pool element (RFC 5352); absent: a standalone collector.
    pub pool: Option<crate::pool::PoolConfig>,
    /// Ship committed records to PostgreSQL, the shared store tier
    /// (docs/postgres.md); absent: records stay in the SQLite file only.
    pub postgres: Option<PostgresConfig>,
}

/// `[postgres]`: where and how the shipper sends committed records.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// libpq-style connection string or URL
    /// (`postgresql://poolflow@127.0.0.1:5432/flows`); no TLS (docs/postgres.md).
    pub url: String,
    /// This collector's name in the shared tier (`flows.collector`): unique
    /// in the pool, stable across restarts, tied to this SQLite file.
    pub collector_name: String,
    /// Record blocks per PostgreSQL transaction.
    #[serde(default = "PostgresConfig::default_batch_blocks")]
    pub batch_blocks: usize,
    /// Connections, each with one transaction in flight: the shipper's
    /// pipeline (docs/postgres.md).
    #[serde(default = "PostgresConfig::default_connections")]
    pub connections: usize,
    /// Pause between shipping rounds once caught up.
    #[serde(
        default = "PostgresConfig::default_interval",
        with = "daemon_common::duration::serde"
    )]
    pub interval: Duration,
    /// Unshipped records in SQLite above which the backlog alarm is raised
    /// (error log, `poolflow_collector_shipping_backlog_exceeded` = 1).
    /// Nothing is deleted: the records stay until shipped.
    #[serde(default = "PostgresConfig::default_max_backlog_records")]
    pub max_backlog_records: u64,
}

impl PostgresConfig {
    fn default_batch_blocks() -> usize {
        1000
    }

    fn default_connections() -> usize {
        2
    }

    fn default_interval() -> Duration {
        Duration::from_millis(200)
    }

    fn default_max_backlog_records() -> u64 {
        50_000_000
    }

    /// Checks the values serde accepts but the shipper cannot use.
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            !self.url.trim().is_empty(),
            "`postgres.url` must not be empty"
        );
        anyhow::ensure!(
            !self.collector_name.trim().is_empty(),
            "`postgres.collector_name` must not be empty"
        );
        anyhow::ensure!(
            self.batch_blocks > 0,
            "`postgres.batch_blocks` must be at least 1"
        );
        anyhow::ensure!(
            (1..=16).contains(&self.connections),
            "`postgres.connections` must be 1 to 16"
        );
        anyhow::ensure!(
            self.max_backlog_records > 0,
            "`postgres.max_backlog_records` must be at least 1"
        );
        Ok(())
    }
}

/// `[tls]`: PEM files made as docs/tls.md shows.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The collector's certificate (chain, leaf first).
    pub certificate_file: PathBuf,
    /// Its private key; refused when group or others may read it.
    pub private_key_file: PathBuf,
    /// When set, a client must present a certificate signed by this CA.
    pub client_ca_file: Option<PathBuf>,
}

impl TlsConfig {
    /// The certificate, key and client CA files, for the transport crate.
    pub fn files(&self) -> transport::tls::ServerTlsFiles {
        transport::tls::ServerTlsFiles {
            certificate_file: self.certificate_file.clone(),
            private_key_file: self.private_key_file.clone(),
            client_ca_file: self.client_ca_file.clone(),
        }
    }
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            database: PathBuf::from("collector.sqlite"),
            udp_listen: vec![SocketAddr::from(([0, 0, 0, 0], IPFIX_PORT))],
            tcp_listen: vec![SocketAddr::from(([0, 0, 0, 0], IPFIX_PORT))],
            tls_listen: Vec::new(),
            tls: None,
            sctp_listen: vec![SocketAddr::from((
                [0, 0, 0, 0],
                transport::DEFAULT_UDP_ENCAPS_PORT,
            ))],
            framed_tcp_listen: Vec::new(),
            framed_tcp_tls: false,
            lan_retransmission: true,
            metrics_listen: None,
            template_lifetime: Duration::from_secs(1800),
            max_templates_per_session: 4096,
            max_udp_sessions: 4096,
            udp_idle_timeout: Duration::from_secs(3600),
            udp_receive_buffer_bytes: 32 * 1024 * 1024,
            udp_receive_buffer_force: true,
            udp_receive_threads: 1,
            max_tcp_sessions: 256,
            max_sctp_sessions: 256,
            max_batch_records: 100_000,
            commit_interval: Duration::from_millis(20),
            queue_batches: 256,
            log_format: LogFormat::Text,
            deprecated_keys: Vec::new(),
            pool: None,
            postgres: None,
        }
    }
}

impl CollectorConfig {
    /// Transport settings of the `sctp_listen` (SCTP over UDP) and
    /// `framed_tcp_listen` (TCP) associations before their port and TLS.
    pub fn association_transport(&self, kind: transport::TransportKind) -> transport::Config {
        if self.lan_retransmission {
            transport::Config::lan_retransmission(kind)
        } else {
            transport::Config {
                transport: kind,
                ..transport::Config::default()
            }
        }
    }

    /// Reads a TOML file; the error names the file, line and key at fault.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("in config {}", path.display()))
    }

    /// Parses a configuration (legacy duration keys upgraded and noted)
    /// and validates it.
    pub fn from_toml(text: &str) -> Result<Self> {
        let mut table: toml::Table = toml::from_str(text)?;
        let deprecated_keys = daemon_common::duration::upgrade_legacy_keys(&mut table, "")?;
        let mut config: Self = table.try_into()?;
        config.deprecated_keys = deprecated_keys;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: limits that must be positive, TLS
    /// listeners without `[tls]`, no listener at all.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("max_templates_per_session", self.max_templates_per_session),
            ("max_udp_sessions", self.max_udp_sessions),
            ("udp_receive_threads", self.udp_receive_threads),
            ("max_tcp_sessions", self.max_tcp_sessions),
            ("max_sctp_sessions", self.max_sctp_sessions),
            ("max_batch_records", self.max_batch_records),
            ("queue_batches", self.queue_batches),
        ];
        for (key, value) in positive {
            anyhow::ensure!(value > 0, "`{key}` must be at least 1");
        }
        if let Some(pool) = &self.pool {
            pool.validate()?;
        }
        if let Some(postgres) = &self.postgres {
            postgres.validate()?;
        }
        anyhow::ensure!(
            !self.framed_tcp_tls || self.tls.is_some(),
            "`framed_tcp_tls` needs a `[tls]` section with `certificate_file` and `private_key_file`"
        );
        anyhow::ensure!(
            self.tls_listen.is_empty() || self.tls.is_some(),
            "`tls_listen` needs a `[tls]` section with `certificate_file` and `private_key_file`"
        );
        anyhow::ensure!(
            !self.udp_listen.is_empty()
                || !self.tcp_listen.is_empty()
                || !self.tls_listen.is_empty()
                || !self.sctp_listen.is_empty()
                || !self.framed_tcp_listen.is_empty(),
            "`udp_listen`, `tcp_listen`, `tls_listen`, `sctp_listen` and `framed_tcp_listen` are \
             all empty: nothing to receive on"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn associations_resend_within_400_ms_unless_told_otherwise() {
        use std::time::Duration;
        use transport::TransportKind::{SctpOverUdp, Tcp};
        let lan = CollectorConfig::default();
        for kind in [SctpOverUdp, Tcp] {
            let config = lan.association_transport(kind);
            assert_eq!(config.transport, kind);
            assert_eq!(config.rto_max, Duration::from_millis(400));
            // Patient as RFC 9260 about giving the exporter up.
            assert_eq!(
                config.max_path_retransmissions,
                transport::Config::default().max_path_retransmissions
            );
        }
        let wan = CollectorConfig::from_toml("lan_retransmission = false").unwrap();
        for kind in [SctpOverUdp, Tcp] {
            let config = wan.association_transport(kind);
            assert_eq!(config.transport, kind);
            assert_eq!(config.rto_min, Duration::from_secs(1));
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let err = CollectorConfig::from_toml("databse = \"x\"").unwrap_err();
        assert!(format!("{err:#}").contains("databse"), "{err:#}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = CollectorConfig::from_toml("max_tcp_sessions = \"many\"").unwrap_err();
        assert!(format!("{err:#}").contains("max_tcp_sessions"), "{err:#}");
    }

    #[test]
    fn zero_limit_is_rejected_by_key() {
        let err = CollectorConfig::from_toml("queue_batches = 0").unwrap_err();
        assert!(format!("{err:#}").contains("queue_batches"), "{err:#}");
    }

    #[test]
    fn tls_listen_without_tls_section_is_refused_by_key() {
        let err = CollectorConfig::from_toml("tls_listen = [\"127.0.0.1:4740\"]").unwrap_err();
        assert!(format!("{err:#}").contains("[tls]"), "{err:#}");
        let ok = CollectorConfig::from_toml(
            "tls_listen = [\"127.0.0.1:4740\"]\n[tls]\ncertificate_file = \"c.pem\"\nprivate_key_file = \"k.pem\"",
        )
        .unwrap();
        assert_eq!(ok.tls.unwrap().client_ca_file, None);
        let err =
            CollectorConfig::from_toml("[tls]\ncertificate_file = \"c.pem\"\nprivate_key = \"k\"")
                .unwrap_err();
        assert!(format!("{err:#}").contains("private_key"), "{err:#}");
    }

    /// The commented-out TLS keys of the shipped example are the keys the
    /// code reads: switched on, the example still parses and means them.
    #[test]
    fn shipped_example_tls_keys_parse_when_uncommented() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/collector.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let mut enabled = String::new();
        for line in text.lines() {
            let key = line.trim_start_matches("# ");
            let tls_line = [
                "tls_listen =",
                "[tls]",
                "certificate_file =",
                "private_key_file =",
                "client_ca_file =",
            ]
            .iter()
            .any(|k| key.starts_with(k));
            enabled.push_str(if tls_line { key } else { line });
            enabled.push('\n');
        }
        let config = CollectorConfig::from_toml(&enabled).unwrap();
        assert_eq!(config.tls_listen, vec!["0.0.0.0:4740".parse().unwrap()]);
        let tls = config.tls.expect("[tls] parsed");
        assert_eq!(
            tls.private_key_file,
            Path::new("/etc/poolflow/collector.key")
        );
        assert!(tls.client_ca_file.is_some());
    }

    /// SO_RCVBUFFORCE is the default; the key turns it off (the benchmark
    /// does, to ask for its buffer the way the other collectors do).
    #[test]
    fn receive_buffer_force_defaults_on_and_can_be_turned_off() {
        assert!(CollectorConfig::default().udp_receive_buffer_force);
        let c = CollectorConfig::from_toml("udp_receive_buffer_force = false").unwrap();
        assert!(!c.udp_receive_buffer_force);
    }

    #[test]
    fn udp_receive_threads_default_to_one_and_must_be_positive() {
        assert_eq!(CollectorConfig::default().udp_receive_threads, 1);
        let c = CollectorConfig::from_toml("udp_receive_threads = 4").unwrap();
        assert_eq!(c.udp_receive_threads, 4);
        let error = CollectorConfig::from_toml("udp_receive_threads = 0").unwrap_err();
        assert!(error.to_string().contains("udp_receive_threads"), "{error}");
    }

    #[test]
    fn commit_interval_takes_a_duration_with_units() {
        assert_eq!(
            CollectorConfig::default().commit_interval,
            std::time::Duration::from_millis(20)
        );
        let c = CollectorConfig::from_toml("commit_interval = \"50ms\"").unwrap();
        assert_eq!(c.commit_interval, std::time::Duration::from_millis(50));
        assert!(CollectorConfig::from_toml("commit_interval = 50").is_err());
    }

    #[test]
    fn shipped_example_parses_and_differs_from_nothing_unexpected() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/collector.toml");
        let config = CollectorConfig::from_file(&path).unwrap();
        assert_eq!(config.udp_listen, vec!["0.0.0.0:4739".parse().unwrap()]);
        assert_eq!(config.template_lifetime, Duration::from_secs(1800));
    }

    /// The commented-out `[pool]` example names only keys that exist: its
    /// `# key = value` lines, uncommented, parse (unknown keys are errors).
    #[test]
    fn commented_pool_example_uses_real_keys() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/collector.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let section = text
            .split("# [pool]\n")
            .nth(1)
            .expect("deploy/collector.toml has a commented [pool] section");
        // The section ends where the next commented table begins.
        let section = section.split("\n# [postgres]").next().unwrap_or(section);
        let mut pool = String::from("[pool]\n");
        let mut keys = Vec::new();
        for line in section.lines() {
            let Some(rest) = line.strip_prefix("# ") else {
                continue;
            };
            let key: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !key.is_empty() && rest[key.len()..].starts_with(" = ") {
                pool.push_str(rest);
                pool.push('\n');
                keys.push(key);
            }
        }
        for key in ["handle", "member_key_file", "member_certificate_file"] {
            assert!(keys.iter().any(|k| k == key), "{key} not documented");
        }
        let config: CollectorConfig = toml::from_str(&pool).unwrap();
        let pool = config.pool.expect("[pool] parsed");
        assert!(pool.member_key_file.is_some() && pool.member_certificate_file.is_some());
    }

    /// The commented-out `[postgres]` example parses when uncommented, and
    /// its values are the defaults the code applies.
    #[test]
    fn commented_postgres_example_uses_real_keys_and_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/collector.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let section = text
            .split("# [postgres]\n")
            .nth(1)
            .expect("deploy/collector.toml has a commented [postgres] section");
        let mut table = String::from("[postgres]\n");
        for line in section.lines() {
            let Some(rest) = line.strip_prefix("# ") else {
                continue;
            };
            if rest.split_once(" = ").is_some_and(|(key, _)| {
                !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            }) {
                table.push_str(rest);
                table.push('\n');
            }
        }
        let config = CollectorConfig::from_toml(&table).unwrap();
        let pg = config.postgres.expect("[postgres] parsed");
        assert_eq!(pg.collector_name, "collector-1");
        assert_eq!(pg.batch_blocks, PostgresConfig::default_batch_blocks());
        assert_eq!(pg.connections, PostgresConfig::default_connections());
        assert_eq!(pg.interval, PostgresConfig::default_interval());
        assert_eq!(
            pg.max_backlog_records,
            PostgresConfig::default_max_backlog_records()
        );
    }

    #[test]
    fn postgres_section_needs_url_and_name_and_positive_batches() {
        let err =
            CollectorConfig::from_toml("[postgres]\nurl = \"postgresql://x@h/db\"").unwrap_err();
        assert!(format!("{err:#}").contains("collector_name"), "{err:#}");
        let err = CollectorConfig::from_toml(
            "[postgres]\nurl = \"postgresql://x@h/db\"\ncollector_name = \"\"",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("collector_name"), "{err:#}");
        let err = CollectorConfig::from_toml(
            "[postgres]\nurl = \"u\"\ncollector_name = \"c\"\nbatch_blocks = 0",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("batch_blocks"), "{err:#}");
        let ok = CollectorConfig::from_toml(
            "[postgres]\nurl = \"u\"\ncollector_name = \"c\"\ninterval = \"1s\"",
        )
        .unwrap();
        assert_eq!(ok.postgres.unwrap().interval, Duration::from_secs(1));
    }
}
