//! `exporter stream --config FILE`: the TOML configuration (annotated in
//! `exporter/exporter.toml.example`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use asap_client::{AnnounceListenConfig, RegistrarAddress};
use serde::Deserialize;

use crate::pool_user::ExporterConfig;
use crate::replay::ReplayLimits;

/// The whole file.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// 32-bit exporter id, unique in the pool.
    pub exporter_id: u32,
    /// The collector pool's handle.
    pub pool_handle: String,
    /// Static registrar list, "tcp:ADDR" or "sctp:ADDR" (SCTP over UDP,
    /// SCTP port = UDP port), in hunt order. May be empty with
    /// `announce_listen`.
    #[serde(default)]
    pub registrars: Vec<String>,
    /// Also find registrars from their ASAP Server Announces (RFC 5352
    /// §3.6): the UDP address to listen on, a multicast group and port
    /// (RSPLIB's and poolflow's default "239.0.0.50:3863") or a unicast
    /// address. Tried after the static registrars, while they announce.
    /// Off unless set.
    #[serde(default)]
    pub announce_listen: Option<String>,
    /// How an announced SCTP transport is reached: "sctp" (SCTP over UDP),
    /// "kernel-sctp" or "none" (announced TCP only).
    #[serde(default = "AnnounceListenConfig::default_sctp")]
    pub announce_sctp: String,
    /// An announced registrar is dropped this long after its last announce.
    #[serde(
        default = "AnnounceListenConfig::default_lifetime",
        with = "daemon_common::duration::serde"
    )]
    pub announce_lifetime: Duration,
    /// The state file (next record sequence and last cookie per domain).
    pub state_file: PathBuf,
    /// IPFIX observation domain of the synthetic input.
    #[serde(default = "default_domain")]
    pub observation_domain: u32,
    /// Largest IPFIX message, bytes.
    #[serde(default = "default_message_size")]
    pub message_size: usize,
    /// Sequence numbers reserved per state-file write.
    #[serde(default = "default_reservation")]
    pub sequence_reservation: u64,
    /// Prometheus endpoint, e.g. "127.0.0.1:9466"; none if absent.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// SCTP over UDP: the local UDP port (RFC 6951 encapsulation port) our
    /// associations leave from; 0 picks an ephemeral port. RSPLIB's sctplib
    /// answers to UDP 9899 whatever port an INIT came from, so a pool user
    /// of an sctplib registrar sets 9899 (one association of the process
    /// can hold it; the others fall back to an ephemeral port, with a
    /// warning).
    #[serde(default)]
    pub local_udp_port: u16,
    /// SCTP over UDP to the collectors: hand a run of equal-size packets to
    /// the kernel in one `sendmsg` (UDP GSO) instead of one system call
    /// each. Off by default: a batch that crosses loopback or a `veth` can
    /// reach the peer still whole, which a poolflow collector splits (it
    /// reads with UDP GRO) but RSPLIB's sctplib and a capture on this host
    /// cannot. Never used on the registrar associations, nor while this
    /// host's kernel runs SCTP over UDP itself.
    #[serde(default)]
    pub udp_segmentation_offload: bool,
    /// The pool's cookie public keys (PEM, `openssl pkey -pubout`): every
    /// cookie must be signed (version 2) by one of them, or it is refused
    /// and its collector avoided. Empty: cookies are trusted unchecked.
    #[serde(default)]
    pub cookie_public_key_files: Vec<PathBuf>,
    /// `text` or `json` logs (`--log-format` overrides; `RUST_LOG` sets the
    /// level).
    #[serde(default)]
    pub log_format: daemon_common::LogFormat,
    /// Replay buffer.
    #[serde(default)]
    pub buffer: BufferConfig,
    /// Timers.
    #[serde(default)]
    pub timers: TimersConfig,
    /// `exporter relay`: the routers' side.
    #[serde(default)]
    pub relay: RelayConfig,
    /// Records nobody bills from: PR-SCTP instead of cookies and replay.
    #[serde(default)]
    pub best_effort: BestEffortConfig,
    /// TLS to the collectors (framed TCP only): when set, every data
    /// connection is TLS and collectors advertising SCTP are not used.
    #[serde(default)]
    pub tls: Option<DataTlsConfig>,
    /// Legacy keys the file used (`cookie_timeout_ms`, ...), one warning
    /// each, logged once logging is set up.
    #[serde(skip)]
    pub deprecated_keys: Vec<String>,
}

/// `[tls]`: the pool users' side of TLS on framed TCP (docs/tls.md).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DataTlsConfig {
    /// The CA that signed the collectors' certificates (the only one trusted).
    pub ca_file: PathBuf,
    /// Our certificate, for collectors with `client_ca_file`; needs
    /// `private_key_file`.
    pub certificate_file: Option<PathBuf>,
    /// Its key (refused when group or others may read it).
    pub private_key_file: Option<PathBuf>,
    /// The name every collector's certificate carries; absent: each
    /// collector's advertised IP address (as an IP subjectAltName).
    pub server_name: Option<String>,
}

impl DataTlsConfig {
    /// The connecting side of TLS on framed TCP, from these files.
    pub fn stream_tls(&self) -> anyhow::Result<transport::tls::StreamTls> {
        let identity = match (&self.certificate_file, &self.private_key_file) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => bail!("`tls.certificate_file` and `tls.private_key_file` go together"),
        };
        let files = transport::tls::ClientTlsFiles {
            ca_file: self.ca_file.clone(),
            identity,
        };
        Ok(transport::tls::StreamTls::client(
            &files,
            self.server_name.as_deref(),
        )?)
    }
}

/// `[best_effort]`: which records are not billing records and how they go
/// out (PR-SCTP on their own stream, RFC 3758 "ttl" policy).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BestEffortConfig {
    /// Observation domains whose records are best effort (the relay: the
    /// routers' domains or v9 source ids; `stream`: where
    /// `--best-effort-records` go, the first one).
    pub domains: Vec<u32>,
    /// A best-effort message not delivered within this long is abandoned
    /// (never retransmitted after).
    #[serde(with = "daemon_common::duration::serde")]
    pub lifetime: Duration,
    /// Best-effort records queued per domain while no collector takes
    /// them; beyond this the oldest are dropped and counted.
    pub queue_records: usize,
}

impl Default for BestEffortConfig {
    fn default() -> Self {
        Self {
            domains: Vec::new(),
            lifetime: Duration::from_secs(1),
            queue_records: 10_000,
        }
    }
}

/// `[relay]`: listeners for routers' IPFIX and NetFlow v9, and the limits
/// that keep one router from exhausting the relay (as the collector has).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// UDP addresses for IPFIX and NetFlow v9 (told apart by version).
    pub udp_listen: Vec<SocketAddr>,
    /// TCP addresses for IPFIX (RFC 7011 section 10.4).
    pub tcp_listen: Vec<SocketAddr>,
    /// The relay's template table (router templates → relay template
    /// ids); default: the state file's path with `.templates` appended.
    pub template_file: Option<PathBuf>,
    /// Distinct forwarded templates the relay defines in all; records of
    /// further templates are dropped and counted. At most the collectors'
    /// `max_templates_per_session`.
    pub max_templates: usize,
    /// Templates one router session may define.
    pub max_templates_per_session: usize,
    /// Observation domains (NetFlow v9 source ids) tracked per session.
    pub max_domains_per_session: usize,
    /// UDP routers (address and port) tracked at once; the idlest is
    /// dropped to admit a new one.
    pub max_udp_sessions: usize,
    /// A silent UDP router session is forgotten after this long.
    #[serde(with = "daemon_common::duration::serde")]
    pub udp_idle_timeout: Duration,
    /// UDP template lifetime without refresh (RFC 7011 8.4; whole seconds).
    #[serde(with = "daemon_common::duration::serde")]
    pub template_lifetime: Duration,
    /// Concurrent TCP connections.
    pub max_tcp_connections: usize,
    /// Kernel receive buffer of each UDP socket, bytes.
    pub udp_receive_buffer_bytes: usize,
    /// Records queued between the listeners and the pool user. When full,
    /// UDP input is dropped and counted, TCP input waits.
    pub queue_records: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            udp_listen: Vec::new(),
            tcp_listen: Vec::new(),
            template_file: None,
            max_templates: 1024,
            max_templates_per_session: 4096,
            max_domains_per_session: 1024,
            max_udp_sessions: 4096,
            udp_idle_timeout: Duration::from_secs(3600),
            template_lifetime: Duration::from_secs(1800),
            max_tcp_connections: 256,
            udp_receive_buffer_bytes: 32 * 1024 * 1024,
            queue_records: 65_536,
        }
    }
}

impl RelayConfig {
    /// Checks what `exporter relay` needs beyond the file's syntax.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.udp_listen.is_empty() && self.tcp_listen.is_empty() {
            bail!("`relay.udp_listen` and `relay.tcp_listen` are both empty");
        }
        for (key, value) in [
            ("relay.max_templates", self.max_templates),
            (
                "relay.max_templates_per_session",
                self.max_templates_per_session,
            ),
            (
                "relay.max_domains_per_session",
                self.max_domains_per_session,
            ),
            ("relay.max_udp_sessions", self.max_udp_sessions),
            ("relay.max_tcp_connections", self.max_tcp_connections),
            ("relay.queue_records", self.queue_records),
        ] {
            if value == 0 {
                bail!("`{key}` must be at least 1");
            }
        }
        // Relay template ids are 256..=65535.
        if self.max_templates > usize::from(u16::MAX - 255) {
            bail!("`relay.max_templates` is above {}", u16::MAX - 255);
        }
        Ok(())
    }
}

/// `[buffer]`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// Records per domain kept in memory (the send window).
    pub memory_records: usize,
    /// Records per domain in total; beyond it the input waits.
    pub max_records: usize,
    /// Spill directory; without one the buffer ends at `memory_records`.
    pub spill_dir: Option<PathBuf>,
    /// Records per spill segment file.
    pub spill_segment_records: usize,
    /// Durable intake: a record counts as taken in only once it is in the
    /// fsynced intake journal (`journal_dir`), so an exporter or relay
    /// crash loses nothing; a restart replays the journal after the last
    /// cookie. Costs an fsync per input batch.
    pub durable: bool,
    /// Directory of the intake journal (required with `durable`).
    pub journal_dir: Option<PathBuf>,
    /// Records per journal segment file.
    pub journal_segment_records: usize,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            memory_records: 200_000,
            max_records: 10_000_000,
            spill_dir: None,
            spill_segment_records: 100_000,
            durable: false,
            journal_dir: None,
            journal_segment_records: 100_000,
        }
    }
}

/// `[timers]`: durations with units ("5s", "200ms"); the legacy `_ms` keys
/// are accepted with a warning (`daemon_common::duration`).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimersConfig {
    /// No cookie progress for this long with records outstanding: failover.
    #[serde(with = "daemon_common::duration::serde")]
    pub cookie_timeout: Duration,
    /// Longest wait for cookie progress while the collector's association
    /// keeps acknowledging data (SCTP over UDP): it reads, only commits
    /// slowly. At least `cookie_timeout`.
    #[serde(with = "daemon_common::duration::serde")]
    pub cookie_stall_timeout: Duration,
    /// While not on the top Priority PE: failback poll period.
    #[serde(with = "daemon_common::duration::serde")]
    pub failback_check: Duration,
    /// The failback poll period for a minute after a failover away from a
    /// better-priority collector (a collector restarted on the spot is
    /// back within seconds; each period adds to the time spent on the
    /// backup). At most `failback_check`.
    #[serde(with = "daemon_common::duration::serde")]
    pub failback_check_after_failover: Duration,
    /// Longest drain before a failback (then: failover).
    #[serde(with = "daemon_common::duration::serde")]
    pub drain_timeout: Duration,
    /// No PE reachable: re-resolve after this long.
    #[serde(with = "daemon_common::duration::serde")]
    pub retry_interval: Duration,
    /// No failback to a PE within this long of its failure (a registrar
    /// may list a dead PE until its keep-alive timeout).
    #[serde(with = "daemon_common::duration::serde")]
    pub failback_holdoff: Duration,
    /// Persist cookies at most this often.
    #[serde(with = "daemon_common::duration::serde")]
    pub state_sync_interval: Duration,
    /// Give up connecting to a collector after this long.
    #[serde(with = "daemon_common::duration::serde")]
    pub connect_timeout: Duration,
    /// PU cache lifetime (`stale.cache.value`, RFC 5352 §5).
    #[serde(with = "daemon_common::duration::serde")]
    pub cache_lifetime: Duration,
    /// T1-ENRPrequest: wait for a registrar's answer.
    #[serde(with = "daemon_common::duration::serde")]
    pub registrar_request_timeout: Duration,
    /// Use the transport's LAN failure detection on the data association
    /// (heartbeat 200 ms, RTO 50–400 ms, 3 path retransmissions; a dead
    /// collector process is known at once from ICMP) instead of RFC 9260
    /// defaults.
    pub fast_failure_detection: bool,
    /// A collector whose cookie was refused is not used again for this long.
    #[serde(with = "daemon_common::duration::serde")]
    pub untrusted_pe: Duration,
}

impl Default for TimersConfig {
    fn default() -> Self {
        Self {
            cookie_timeout: Duration::from_millis(5_000),
            cookie_stall_timeout: Duration::from_secs(6),
            failback_check: Duration::from_millis(500),
            failback_check_after_failover: Duration::from_millis(50),
            drain_timeout: Duration::from_millis(5_000),
            retry_interval: Duration::from_millis(1_000),
            failback_holdoff: Duration::from_millis(1_000),
            state_sync_interval: Duration::from_millis(100),
            connect_timeout: Duration::from_millis(2_000),
            cache_lifetime: Duration::from_millis(30_000),
            registrar_request_timeout: Duration::from_millis(2_000),
            fast_failure_detection: true,
            untrusted_pe: Duration::from_secs(86_400),
        }
    }
}

fn default_domain() -> u32 {
    1
}

fn default_message_size() -> usize {
    1400
}

fn default_reservation() -> u64 {
    100_000
}

impl StreamConfig {
    /// Reads and checks a file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Parses and checks TOML text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut table: toml::Table = toml::from_str(text)?;
        let deprecated_keys = daemon_common::duration::upgrade_legacy_keys(&mut table, "")?;
        let mut config: Self = table.try_into()?;
        config.deprecated_keys = deprecated_keys;
        config.announce_listen_config()?;
        if config.registrars.is_empty() && config.announce_listen.is_none() {
            bail!("`registrars` is empty and `announce_listen` unset");
        }
        if config.pool_handle.is_empty() {
            bail!("`pool_handle` is empty");
        }
        if config.buffer.memory_records == 0 {
            bail!("`buffer.memory_records` must be at least 1");
        }
        if config.buffer.durable && config.buffer.journal_dir.is_none() {
            bail!("`buffer.durable = true` needs `buffer.journal_dir`");
        }
        if config.buffer.journal_segment_records == 0 {
            bail!("`buffer.journal_segment_records` must be at least 1");
        }
        if config.observation_domain == protocol::ipfix::reliability::STATISTICS_DOMAIN {
            bail!(
                "`observation_domain` {} is reserved for the reliability statistics",
                config.observation_domain
            );
        }
        config.registrar_addresses()?;
        Ok(config)
    }

    /// The Server Announce listener, if `announce_listen` is set.
    pub fn announce_listen_config(&self) -> anyhow::Result<Option<AnnounceListenConfig>> {
        AnnounceListenConfig::from_keys(
            self.announce_listen.as_deref(),
            &self.announce_sctp,
            self.announce_lifetime,
        )
    }

    /// The registrar list as `asap_client` wants it.
    pub fn registrar_addresses(&self) -> anyhow::Result<Vec<RegistrarAddress>> {
        self.registrars
            .iter()
            .map(|text| parse_registrar(text))
            .collect()
    }

    /// Where the relay keeps its template table.
    pub fn relay_template_file(&self) -> PathBuf {
        self.relay.template_file.clone().unwrap_or_else(|| {
            let mut name = self.state_file.clone().into_os_string();
            name.push(".templates");
            PathBuf::from(name)
        })
    }

    /// Everything `stream::run` needs, with the input's `templates`.
    pub fn stream_settings(
        &self,
        templates: Vec<protocol::ipfix::Template>,
        exit_drain_timeout: Duration,
    ) -> anyhow::Result<crate::stream::StreamSettings> {
        let t = &self.timers;
        let mut transport = if t.fast_failure_detection {
            transport::Config::fast_failure_detection(transport::TransportKind::SctpOverUdp)
        } else {
            transport::Config::default()
        };
        transport.connect_timeout = t.connect_timeout;
        transport.local_udp_port = self.local_udp_port;
        let mut exporter = self.exporter_config();
        exporter.cookie_keys = self.cookie_keys()?;
        Ok(crate::stream::StreamSettings {
            exporter,
            templates,
            pool_handle: protocol::rserpool::PoolHandle(self.pool_handle.as_bytes().to_vec()),
            registrars: self.registrar_addresses()?,
            announce_listen: self.announce_listen_config()?,
            state_file: crate::state_file::StateFile::new(&self.state_file),
            transport,
            data_udp_segmentation_offload: self.udp_segmentation_offload,
            data_tls: self
                .tls
                .as_ref()
                .map(DataTlsConfig::stream_tls)
                .transpose()
                .context("[tls]")?,
            cache_lifetime: t.cache_lifetime,
            registrar_request_timeout: t.registrar_request_timeout,
            exit_drain_timeout,
            durable: self.durable_settings(),
        })
    }

    /// Durable intake, when configured.
    pub fn durable_settings(&self) -> Option<crate::journal::DurableSettings> {
        let dir = self.buffer.journal_dir.clone()?;
        self.buffer
            .durable
            .then_some(crate::journal::DurableSettings {
                dir,
                segment_records: self.buffer.journal_segment_records,
            })
    }

    /// The core's settings.
    pub fn exporter_config(&self) -> ExporterConfig {
        let t = &self.timers;
        ExporterConfig {
            exporter_id: self.exporter_id,
            message_size: self.message_size,
            cookie_timeout: t.cookie_timeout,
            cookie_stall_timeout: t.cookie_stall_timeout,
            failback_check: t.failback_check,
            failback_check_after_failover: t.failback_check_after_failover,
            drain_timeout: t.drain_timeout,
            retry_interval: t.retry_interval,
            failback_holdoff: t.failback_holdoff,
            state_sync_interval: t.state_sync_interval,
            sequence_reservation: self.sequence_reservation,
            replay: ReplayLimits {
                memory_records: self.buffer.memory_records,
                max_records: self.buffer.max_records.max(self.buffer.memory_records),
                spill_dir: self.buffer.spill_dir.clone(),
                segment_records: self.buffer.spill_segment_records,
            },
            best_effort_lifetime: self.best_effort.lifetime,
            best_effort_queue: self.best_effort.queue_records,
            cookie_keys: None,
            untrusted_for: t.untrusted_pe,
            // Not a config key: once a second keeps the audit's view of a
            // stream at most a second behind at a few bytes a second.
            statistics_interval: Duration::from_secs(1),
        }
    }

    /// The public keys of `cookie_public_key_files`, read and parsed;
    /// `None` when the list is empty.
    pub fn cookie_keys(&self) -> anyhow::Result<Option<protocol::billing::CookieKeys>> {
        if self.cookie_public_key_files.is_empty() {
            return Ok(None);
        }
        let mut keys = protocol::billing::CookieKeys::default();
        for path in &self.cookie_public_key_files {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading `cookie_public_key_files` {}", path.display()))?;
            keys.add_public_key(
                protocol::signing::verifying_key_from_pem(&pem)
                    .with_context(|| format!("in `cookie_public_key_files` {}", path.display()))?,
            );
        }
        Ok(Some(keys))
    }
}

/// "tcp:HOST:PORT", "sctp:HOST:PORT" or "kernel-sctp:HOST:PORT".
pub fn parse_registrar(text: &str) -> anyhow::Result<RegistrarAddress> {
    text.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_annotated_example_parses() {
        let text = include_str!("../exporter.toml.example");
        let config = StreamConfig::parse(text).unwrap();
        assert_eq!(config.exporter_id, 1);
        assert_eq!(config.registrar_addresses().unwrap().len(), 2);
        let core = config.exporter_config();
        assert_eq!(core.cookie_timeout, Duration::from_secs(5));
        assert_eq!(core.replay.memory_records, 200_000);
        assert!(core.replay.spill_dir.is_some());
        assert_eq!(config.cookie_public_key_files.len(), 2);
        assert_eq!(core.untrusted_for, Duration::from_secs(86_400));
        assert_eq!(config.relay.udp_listen.len(), 2);
        assert_eq!(config.relay.tcp_listen.len(), 1);
        config.relay.check().unwrap();
        assert_eq!(
            config.relay_template_file(),
            PathBuf::from("/var/lib/poolflow/exporter.templates")
        );
    }

    /// `local_udp_port` reaches the transport of every association (0, an
    /// ephemeral port, unless set: 9899 for RSPLIB's sctplib).
    #[test]
    fn local_udp_port_reaches_the_transport() {
        let port = |text: &str| {
            let mut config = StreamConfig::parse(text).unwrap();
            // The example's key files are not on this machine.
            config.cookie_public_key_files.clear();
            let settings = config.stream_settings(Vec::new(), Duration::ZERO).unwrap();
            settings.transport.local_udp_port
        };
        let text = include_str!("../exporter.toml.example");
        assert_eq!(port(text), 0);
        assert_eq!(
            port(&text.replace("local_udp_port = 0", "local_udp_port = 9899")),
            9899
        );
    }

    /// `udp_segmentation_offload` reaches the data associations to the
    /// collectors only: the registrar associations (maybe RSPLIB's sctplib,
    /// which cannot split a GSO batch) keep one packet per datagram.
    #[test]
    fn segmentation_offload_is_for_the_collectors_only() {
        let settings = |text: &str| {
            let mut config = StreamConfig::parse(text).unwrap();
            config.cookie_public_key_files.clear();
            config.stream_settings(Vec::new(), Duration::ZERO).unwrap()
        };
        let text = include_str!("../exporter.toml.example");
        let off = settings(text);
        assert!(!off.data_udp_segmentation_offload);
        let on = settings(&text.replace(
            "udp_segmentation_offload = false",
            "udp_segmentation_offload = true",
        ));
        assert!(on.data_udp_segmentation_offload);
        assert!(!on.transport.udp_segmentation_offload);
    }

    /// The commented-out `[tls]` keys of the example are the code's keys.
    #[test]
    fn the_example_tls_section_parses_when_uncommented() {
        let text = include_str!("../exporter.toml.example");
        let mut enabled = String::new();
        let mut in_tls = false;
        for line in text.lines() {
            if line == "# [tls]" {
                in_tls = true;
            }
            if line.starts_with('[') {
                in_tls = false;
            }
            let key = line.trim_start_matches("# ");
            let is_key = in_tls && (key == "[tls]" || key.contains(" = "));
            enabled.push_str(if is_key { key } else { line });
            enabled.push('\n');
        }
        let config = StreamConfig::parse(&enabled).unwrap();
        let tls = config.tls.expect("[tls] parsed");
        assert_eq!(
            tls.ca_file,
            PathBuf::from("/etc/poolflow/collectors-ca.pem")
        );
        assert!(tls.certificate_file.is_some() && tls.private_key_file.is_some());
        assert_eq!(
            tls.server_name.as_deref(),
            Some("collectors.billing.example")
        );
        // Reading the files is where a missing one is named.
        let err = tls.stream_tls().unwrap_err();
        assert!(format!("{err:#}").contains("collectors-ca.pem"), "{err:#}");
        let half = DataTlsConfig {
            private_key_file: None,
            ..tls
        };
        assert!(half.stream_tls().is_err());
    }

    #[test]
    fn relay_section_defaults_and_checks() {
        let minimal = r#"
            exporter_id = 7
            pool_handle = "p"
            registrars = ["tcp:127.0.0.1:3863"]
            state_file = "/x/s"
        "#;
        let config = StreamConfig::parse(minimal).unwrap();
        assert!(config.relay.check().is_err(), "a relay needs a listener");
        assert_eq!(
            config.relay_template_file(),
            PathBuf::from("/x/s.templates")
        );
        let with = format!("{minimal}\n[relay]\nudp_listen = [\"127.0.0.1:4739\"]\n");
        let config = StreamConfig::parse(&with).unwrap();
        config.relay.check().unwrap();
        assert_eq!(config.relay.max_templates, 1024);
        let zero = format!("{with}max_tcp_connections = 0\n");
        let err = StreamConfig::parse(&zero)
            .unwrap()
            .relay
            .check()
            .unwrap_err();
        assert!(
            err.to_string().contains("relay.max_tcp_connections"),
            "{err}"
        );
        assert!(StreamConfig::parse(&format!("{with}udp_listn = []\n")).is_err());
    }

    #[test]
    fn minimal_config_takes_defaults_and_unknown_keys_are_errors() {
        let minimal = r#"
            exporter_id = 7
            pool_handle = "p"
            registrars = ["tcp:127.0.0.1:3863"]
            state_file = "s"
        "#;
        let config = StreamConfig::parse(minimal).unwrap();
        assert_eq!(config.observation_domain, 1);
        assert_eq!(config.timers.failback_check, Duration::from_millis(500));
        assert!(StreamConfig::parse(&format!("{minimal}\ncookie_timeout = 1")).is_err());
        let udp = minimal.replace("tcp:", "udp:");
        assert!(StreamConfig::parse(&udp).is_err(), "no UDP to registrars");
    }

    /// Registrars from Server Announces may replace the static list; the
    /// example's commented `announce_listen` parses when switched on.
    #[test]
    fn announce_listen_may_replace_the_static_list() {
        let announced_only = r#"
            exporter_id = 7
            pool_handle = "p"
            registrars = []
            announce_listen = "239.0.0.50:3863"
            announce_sctp = "kernel-sctp"
            state_file = "s"
        "#;
        let config = StreamConfig::parse(announced_only).unwrap();
        let listen = config.announce_listen_config().unwrap().unwrap();
        assert_eq!(listen.address, "239.0.0.50:3863".parse().unwrap());
        assert_eq!(listen.table.sctp, Some(asap_client::AnnouncedSctp::Kernel));
        assert_eq!(listen.table.entry_lifetime, Duration::from_secs(5));
        let neither = announced_only.replace("announce_listen = \"239.0.0.50:3863\"", "");
        assert!(StreamConfig::parse(&neither).is_err());
        let bad = announced_only.replace("kernel-sctp", "udp");
        assert!(StreamConfig::parse(&bad).is_err());
        let example = include_str!("../exporter.toml.example")
            .replace("# announce_listen = ", "announce_listen = ");
        let config = StreamConfig::parse(&example).unwrap();
        let listen = config.announce_listen_config().unwrap().unwrap();
        assert_eq!(listen.table.sctp, Some(asap_client::AnnouncedSctp::OverUdp));
    }

    #[test]
    fn cookie_public_keys_are_read_from_pem_files() {
        use protocol::signing::{SigningKey, key_id, pkcs8_public_pem};
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        let mut ids = Vec::new();
        for seed in [1u8, 2] {
            let key = SigningKey::from_bytes(&[seed; 32]).verifying_key();
            let path = dir.path().join(format!("c{seed}.pub"));
            std::fs::write(&path, pkcs8_public_pem(&key)).unwrap();
            files.push(format!("{path:?}"));
            ids.push(key_id(&key));
        }
        ids.sort();
        let minimal = r#"
            exporter_id = 7
            pool_handle = "p"
            registrars = ["tcp:127.0.0.1:3863"]
            state_file = "s"
        "#;
        assert!(
            StreamConfig::parse(minimal)
                .unwrap()
                .cookie_keys()
                .unwrap()
                .is_none()
        );
        let with = format!(
            "cookie_public_key_files = [{}]\n{minimal}",
            files.join(", ")
        );
        let keys = StreamConfig::parse(&with)
            .unwrap()
            .cookie_keys()
            .unwrap()
            .unwrap();
        assert_eq!(keys.public_key_ids(), ids);
        assert!(!keys.has_hmac_key());
        let garbage = dir.path().join("garbage.pub");
        std::fs::write(&garbage, "not a key").unwrap();
        let bad = format!("cookie_public_key_files = [{garbage:?}]\n{minimal}");
        let err = StreamConfig::parse(&bad)
            .unwrap()
            .cookie_keys()
            .unwrap_err();
        assert!(format!("{err:#}").contains("garbage.pub"), "{err:#}");
    }
}
