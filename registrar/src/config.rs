//! The registrar's TOML configuration (see `deploy/registrar.toml` for
//! every key with its default and meaning). Durations carry their unit
//! (`keep_alive_period = "5s"`, `"200ms"`), as in the collector's and
//! exporter's files; the older `_ms` keys (`keep_alive_period_ms = 5000`)
//! are still read, each with a warning naming the new spelling.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use protocol::rserpool::PoolHandle;
use protocol::signing::{self, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::handlespace::HandlespaceLimits;
use crate::server::ServerConfig;

/// Whole configuration file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrarConfig {
    /// Server identifier; 0 picks a random non-zero one at start.
    pub server_id: u32,
    /// Listening sockets.
    pub listen: ListenConfig,
    /// Protocol timers.
    pub timers: TimerConfig,
    /// Capacity and flood limits.
    pub limits: LimitConfig,
    /// Server Announce.
    pub announce: AnnounceConfig,
    /// Transport (SCTP) tuning.
    pub transport: TransportTuning,
    /// ENRP peering with other registrars (RFC 5353).
    pub enrp: EnrpSettings,
    /// Who may register pool elements (RFC 5355 threats).
    pub access: AccessConfig,
    /// Closed pools: PEs must prove membership (RFC 5352 §6, RFC 5355 §2.2).
    pub membership: MembershipConfig,
    /// Logging.
    pub log: LogConfig,
    /// Legacy `_ms` keys the file used, one warning each naming the new
    /// key, logged once logging is set up.
    #[serde(skip)]
    pub deprecated_keys: Vec<String>,
}

/// Who may register pool elements. RFC 5355 (threats): a registrar accepting
/// any registration lets anyone add a rogue collector to a billing pool
/// (records then go to the attacker) or replace a real PE's transport.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    /// Networks whose addresses may register and deregister PEs, e.g.
    /// ["10.1.0.0/16", "127.0.0.0/8"]. Empty: any address (warned at start).
    /// Handle resolution stays open to every pool user.
    pub registration_networks: Vec<ipnet::IpNet>,
}

/// Pool membership (docs/security.md): a pool listed here is closed, and a
/// PE registers (or deregisters) in it only with a certificate signed by one
/// of the pool's authority keys and a fresh signature over its message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MembershipConfig {
    /// Pool handle → files of the membership authority's Ed25519 public
    /// keys (PEM, `openssl pkey -pubout`); several during a key rotation.
    pub authority_key_files: BTreeMap<String, Vec<String>>,
    /// A proof whose timestamp is further than this from our clock is
    /// refused (replay window; covers PE/registrar clock skew).
    #[serde(with = "daemon_common::duration::serde")]
    pub max_clock_skew: Duration,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self {
            authority_key_files: BTreeMap::new(),
            max_clock_skew: Duration::from_secs(60),
        }
    }
}

impl MembershipConfig {
    /// Reads the authority keys: pool handle → keys.
    pub fn authorities(&self) -> anyhow::Result<BTreeMap<PoolHandle, Vec<VerifyingKey>>> {
        let mut out = BTreeMap::new();
        for (handle, files) in &self.authority_key_files {
            anyhow::ensure!(
                !files.is_empty(),
                "membership.authority_key_files: pool {handle:?} lists no key file"
            );
            let keys = files
                .iter()
                .map(|path| {
                    let pem = std::fs::read_to_string(path).with_context(|| {
                        format!("reading the membership authority key {path:?}")
                    })?;
                    signing::verifying_key_from_pem(&pem)
                        .with_context(|| format!("membership authority key {path:?}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            out.insert(PoolHandle::from(handle.as_str()), keys);
        }
        Ok(out)
    }
}

/// Where the registrar listens. An empty list `[]` (or an empty string)
/// turns a listener off, as in the other daemons' files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// ASAP over TCP (transport crate framing), default 0.0.0.0:3863.
    #[serde(deserialize_with = "daemon_common::single_listen_address")]
    pub tcp: String,
    /// UDP socket of ASAP over SCTP-over-UDP (RFC 6951), default 0.0.0.0:3863
    /// (UDP port = SCTP port, poolflow's convention; 9899 stays free for a
    /// collector on the same host).
    #[serde(deserialize_with = "daemon_common::single_listen_address")]
    pub sctp_over_udp: String,
    /// SCTP port inside the UDP encapsulation, default 3863 (ASAP's port).
    pub sctp_port: u16,
    /// ASAP over the kernel's own SCTP (Linux `sctp` module), e.g.
    /// "0.0.0.0:3863": what RSPLIB PEs and PUs built on the kernel (Debian's
    /// packages) speak. Default off ("" or []): most containers have no SCTP.
    #[serde(deserialize_with = "daemon_common::single_listen_address")]
    pub kernel_sctp: String,
    /// HTTP status endpoint (`/status` JSON, `/metrics` Prometheus), default 127.0.0.1:3864.
    #[serde(deserialize_with = "daemon_common::single_listen_address")]
    pub status: String,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            tcp: format!("0.0.0.0:{}", protocol::rserpool::ASAP_PORT),
            sctp_over_udp: format!("0.0.0.0:{}", protocol::rserpool::ASAP_PORT),
            sctp_port: protocol::rserpool::ASAP_PORT,
            kernel_sctp: String::new(),
            status: "127.0.0.1:3864".to_string(),
        }
    }
}

/// RFC 5352 §5 timers and counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimerConfig {
    /// Keep-alive transmission interval.
    #[serde(with = "daemon_common::duration::serde")]
    pub keep_alive_period: Duration,
    /// Keep-alive ack timeout.
    #[serde(with = "daemon_common::duration::serde")]
    pub keep_alive_timeout: Duration,
    /// MAX-BAD-PE-REPORT.
    pub max_bad_pe_reports: u32,
    /// Server Announce interval.
    #[serde(with = "daemon_common::duration::serde")]
    pub server_announce_interval: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        Self {
            keep_alive_period: Duration::from_secs(5),
            keep_alive_timeout: Duration::from_secs(5),
            max_bad_pe_reports: 3,
            server_announce_interval: Duration::from_secs(1),
        }
    }
}

/// Capacity and flood limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitConfig {
    /// Most pools.
    pub max_pools: usize,
    /// Most PEs per pool.
    pub max_pool_elements_per_pool: usize,
    /// Most PEs in total.
    pub max_pool_elements: usize,
    /// Most PEs registered over one association.
    pub max_pool_elements_per_association: usize,
    /// Longest pool handle in bytes.
    pub max_pool_handle_len: usize,
    /// Largest ASAP message accepted, bytes.
    pub max_message_size: usize,
    /// Most parameters in one message.
    pub max_parameters: usize,
    /// Sustained registrations/s per association.
    pub registrations_per_second: f64,
    /// Registration burst per association.
    pub registration_burst: u32,
    /// Malformed messages after which an association is closed.
    pub max_malformed_per_association: u32,
    /// PEs returned by default in a Handle Resolution Response.
    pub default_resolution_items: usize,
    /// Most PEs in a Handle Resolution Response.
    pub max_resolution_items: usize,
}

impl Default for LimitConfig {
    fn default() -> Self {
        let server = ServerConfig::default();
        let limits = HandlespaceLimits::default();
        Self {
            max_pools: limits.max_pools,
            max_pool_elements_per_pool: limits.max_pool_elements_per_pool,
            max_pool_elements: limits.max_pool_elements,
            max_pool_elements_per_association: limits.max_pool_elements_per_association,
            max_pool_handle_len: limits.max_pool_handle_len,
            max_message_size: server.decode_limits.max_message_size,
            max_parameters: server.decode_limits.max_parameters,
            registrations_per_second: server.registrations_per_second,
            registration_burst: server.registration_burst,
            max_malformed_per_association: server.max_malformed_per_association,
            default_resolution_items: server.default_resolution_items,
            max_resolution_items: server.max_resolution_items,
        }
    }
}

/// Server Announce (RFC 5352 §3.6): UDP datagrams to these addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnnounceConfig {
    /// Send announces at all.
    pub enabled: bool,
    /// Destinations (multicast or unicast), default RSPLIB's 239.0.0.50:3863.
    pub addresses: Vec<String>,
    /// Multicast TTL.
    pub multicast_ttl: u32,
    /// Transports to advertise, e.g. "tcp:192.0.2.1:3863"; empty: every
    /// listener with a specific (non-wildcard) address.
    pub transports: Vec<String>,
}

impl Default for AnnounceConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            addresses: vec![format!(
                "{}:{}",
                protocol::rserpool::ASAP_ANNOUNCE_MULTICAST,
                protocol::rserpool::ASAP_PORT
            )],
            multicast_ttl: 1,
            transports: Vec::new(),
        }
    }
}

/// SCTP-over-UDP / TCP association tuning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportTuning {
    /// Use the transport crate's sub-second failure detection settings.
    pub fast_failure_detection: bool,
    /// SCTP heartbeat interval (ignored with fast_failure_detection).
    #[serde(with = "daemon_common::duration::serde")]
    pub heartbeat_interval: Duration,
    /// Without fast_failure_detection: bound the SCTP RTO to 50-400 ms
    /// (`transport::Config::lan_retransmission`), so a Keep Alive or its Ack
    /// lost once is resent well inside `timers.keep_alive_timeout` instead
    /// of after RFC 9260's RTO.Min of 1 s, which a sub-second keep-alive
    /// timeout would take for a dead PE. false: RFC timers, for PEs across a
    /// WAN whose round trip nears 400 ms.
    pub lan_retransmission: bool,
}

impl Default for TransportTuning {
    fn default() -> Self {
        Self {
            fast_failure_detection: false,
            heartbeat_interval: Duration::from_secs(30),
            lan_retransmission: true,
        }
    }
}

/// ENRP (RFC 5353): the registrar pool. Timers default to RSPLIB's
/// registrar (RFC 5353 leaves them to the implementation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnrpSettings {
    /// Take part in a registrar pool at all.
    pub enabled: bool,
    /// ENRP listen address, default 0.0.0.0:9901.
    pub listen: String,
    /// "sctp-over-udp" (SCTP port = UDP port), "tcp" or "kernel-sctp" (the
    /// host kernel's SCTP, as RSPLIB built on the kernel speaks it).
    pub transport: String,
    /// Address peers reach us on (sent in Presence); "" = the listen
    /// address, which then must not be a wildcard.
    pub advertise: String,
    /// ENRP addresses of the peer registrars (static mesh): "HOST:PORT", or
    /// with `transport = "sctp-over-udp"` "HOST:SCTP_PORT/udp=UDP_PORT" for
    /// a peer whose encapsulation port is not its SCTP port (RSPLIB on its
    /// user-space sctplib: SCTP 9901 inside UDP 9899).
    pub peers: Vec<String>,
    /// Accept ENRP only from these server ids; empty accepts any.
    pub allowed_server_ids: Vec<u32>,
    /// PEER-HEARTBEAT-CYCLE.
    #[serde(with = "daemon_common::duration::serde")]
    pub peer_heartbeat_cycle: Duration,
    /// MAX-TIME-LAST-HEARD.
    #[serde(with = "daemon_common::duration::serde")]
    pub max_time_last_heard: Duration,
    /// MAX-TIME-NO-RESPONSE.
    #[serde(with = "daemon_common::duration::serde")]
    pub max_time_no_response: Duration,
    /// TAKEOVER-EXPIRY.
    #[serde(with = "daemon_common::duration::serde")]
    pub takeover_expiry: Duration,
    /// How long adopted PEs stay without re-registering.
    #[serde(with = "daemon_common::duration::serde")]
    pub adopted_pe_grace: Duration,
    /// PEs per Handle Table Response page.
    pub max_elements_per_table_response: usize,
    /// File holding the pool's shared ENRP key (its bytes, a trailing
    /// newline dropped; at least 16 bytes). Set: every ENRP message is
    /// signed (HMAC-SHA-256) and unsigned or badly signed ones are dropped
    /// (docs/enrp-security.md). "" and no `auth_key`: no authentication.
    pub auth_key_file: String,
    /// The key inline instead of in a file (keep the config file private).
    pub auth_key: String,
    /// Identifier of that key, sent with every signature.
    pub auth_key_id: u32,
    /// Further keys accepted but not used for signing, as "ID:FILE", for a
    /// rolling key change.
    pub auth_accept_key_files: Vec<String>,
    /// Largest difference between a signed message's sending time and our
    /// clock; older (or future) messages are refused as replays.
    #[serde(with = "daemon_common::duration::serde")]
    pub auth_max_clock_skew: Duration,
    /// Migration only: accept unsigned ENRP (bad signatures still refused).
    pub auth_accept_unsigned: bool,
    /// Open outbound ENRP associations from the ENRP listen port (UDP and SCTP source
    /// port = the port we advertise), as RFC 5353 peers expect: RSPLIB's registrar
    /// refuses a Presence whose association comes from another port. Off: each peer
    /// link gets its own ephemeral socket (two poolflow registrars connecting to each
    /// other at once then never collide on one socket).
    pub connect_from_listen_port: bool,
    /// Announce ourselves with a Presence on the ENRP announce group every
    /// `peer_heartbeat_cycle`, and peer with the registrars whose Presence
    /// arrives there (RFC 5353; RSPLIB's `-enrpannounce=`). Static `peers`
    /// still work alongside. Off by default: multicast needs a network that
    /// carries it, and a registrar joining any pool it hears is a choice
    /// (restrict it with `allowed_server_ids` or ENRP authentication).
    pub multicast: bool,
    /// The ENRP announce group and port, default RSPLIB's 239.0.0.51:9901.
    pub multicast_address: String,
    /// Multicast TTL (hop limit) of our Presence.
    pub multicast_ttl: u32,
}

impl Default for EnrpSettings {
    fn default() -> Self {
        let core = crate::enrp::EnrpConfig::default();
        Self {
            enabled: false,
            listen: format!("0.0.0.0:{}", protocol::rserpool::ENRP_PORT),
            transport: "sctp-over-udp".to_string(),
            advertise: String::new(),
            peers: Vec::new(),
            allowed_server_ids: Vec::new(),
            peer_heartbeat_cycle: core.heartbeat_cycle,
            max_time_last_heard: core.max_time_last_heard,
            max_time_no_response: core.max_time_no_response,
            takeover_expiry: core.takeover_expiry,
            adopted_pe_grace: core.adopted_pe_grace,
            max_elements_per_table_response: core.max_elements_per_table_response,
            auth_key_file: String::new(),
            auth_key: String::new(),
            auth_key_id: 1,
            auth_accept_key_files: Vec::new(),
            auth_max_clock_skew: Duration::from_secs(30),
            auth_accept_unsigned: false,
            connect_from_listen_port: false,
            multicast: false,
            multicast_address: format!(
                "{}:{}",
                protocol::rserpool::ENRP_ANNOUNCE_MULTICAST,
                protocol::rserpool::ENRP_PORT
            ),
            multicast_ttl: 1,
        }
    }
}

/// Shortest ENRP key accepted: 128 bits, as RFC 2104 recommends at least
/// the hash output's half.
const MIN_ENRP_KEY_LEN: usize = 16;

fn read_enrp_key(path: &str) -> anyhow::Result<Vec<u8>> {
    let mut key =
        std::fs::read(path).with_context(|| format!("reading the ENRP key file {path:?}"))?;
    while key.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        key.pop();
    }
    anyhow::ensure!(
        key.len() >= MIN_ENRP_KEY_LEN,
        "ENRP key in {path:?} is shorter than {MIN_ENRP_KEY_LEN} bytes"
    );
    Ok(key)
}

/// One `enrp.peers` entry: the peer's ENRP address (its SCTP port, what ENRP
/// itself names) and, where given with `/udp=`, its UDP encapsulation port.
pub fn parse_enrp_peer(text: &str) -> anyhow::Result<(SocketAddr, Option<u16>)> {
    let (address, udp) = match text.split_once('/') {
        Some((address, option)) => {
            let port = option
                .strip_prefix("udp=")
                .with_context(|| format!("enrp.peers: {text:?}: `/{option}` is not `/udp=PORT`"))?
                .parse::<u16>()
                .ok()
                .filter(|&port| port != 0)
                .with_context(|| format!("enrp.peers: {text:?}: bad UDP port"))?;
            (address, Some(port))
        }
        None => (text, None),
    };
    let address = address.parse::<SocketAddr>().with_context(|| {
        format!("enrp.peers: {text:?} is not ADDRESS:PORT or ADDRESS:SCTP_PORT/udp=UDP_PORT")
    })?;
    Ok((address, udp))
}

impl EnrpSettings {
    /// The UDP encapsulation ports of the static peers that gave one
    /// (`/udp=`), by their ENRP address.
    pub fn peer_udp_ports(&self) -> anyhow::Result<HashMap<SocketAddr, u16>> {
        let mut ports = HashMap::new();
        for peer in &self.peers {
            if let (address, Some(udp)) = parse_enrp_peer(peer)? {
                ports.insert(address, udp);
            }
        }
        Ok(ports)
    }

    /// The sans-IO ENRP settings (`advertised` is filled in by the driver
    /// once the listener is bound).
    pub fn enrp_config(
        &self,
        server_id: u32,
        decode_limits: protocol::rserpool::Limits,
    ) -> anyhow::Result<crate::enrp::EnrpConfig> {
        let static_peers = self
            .peers
            .iter()
            .map(|peer| parse_enrp_peer(peer).map(|(sctp, _)| sctp))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(crate::enrp::EnrpConfig {
            server_id,
            advertised: None,
            static_peers,
            allowed_server_ids: self.allowed_server_ids.clone(),
            heartbeat_cycle: self.peer_heartbeat_cycle,
            max_time_last_heard: self.max_time_last_heard,
            max_time_no_response: self.max_time_no_response,
            takeover_expiry: self.takeover_expiry,
            adopted_pe_grace: self.adopted_pe_grace,
            max_elements_per_table_response: self.max_elements_per_table_response,
            decode_limits,
            auth: self.auth()?,
        })
    }

    /// The authentication settings, reading the key files.
    fn auth(&self) -> anyhow::Result<Option<crate::enrp::EnrpAuth>> {
        let key = match (self.auth_key_file.is_empty(), self.auth_key.is_empty()) {
            (true, true) => {
                anyhow::ensure!(
                    self.auth_accept_key_files.is_empty(),
                    "enrp.auth_accept_key_files needs enrp.auth_key_file or enrp.auth_key"
                );
                return Ok(None);
            }
            (false, true) => read_enrp_key(&self.auth_key_file)?,
            (true, false) => {
                anyhow::ensure!(
                    self.auth_key.len() >= MIN_ENRP_KEY_LEN,
                    "enrp.auth_key is shorter than {MIN_ENRP_KEY_LEN} bytes"
                );
                self.auth_key.as_bytes().to_vec()
            }
            (false, false) => anyhow::bail!("set enrp.auth_key_file or enrp.auth_key, not both"),
        };
        let accepted_keys = self
            .auth_accept_key_files
            .iter()
            .map(|entry| {
                let (id, path) = entry.split_once(':').with_context(|| {
                    format!("enrp.auth_accept_key_files: {entry:?} is not ID:FILE")
                })?;
                let id: u32 = id.parse().with_context(|| {
                    format!("enrp.auth_accept_key_files: {entry:?}: bad key id")
                })?;
                anyhow::ensure!(
                    id != self.auth_key_id,
                    "enrp.auth_accept_key_files: key id {id} is the signing key's"
                );
                Ok((id, read_enrp_key(path)?))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(
            !self.auth_max_clock_skew.is_zero(),
            "enrp.auth_max_clock_skew must be > 0"
        );
        Ok(Some(crate::enrp::EnrpAuth {
            key_id: self.auth_key_id,
            key,
            accepted_keys,
            max_clock_skew: self.auth_max_clock_skew,
            accept_unsigned: self.auth_accept_unsigned,
        }))
    }

    fn validate(&self) -> anyhow::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let listen: SocketAddr = self
            .listen
            .parse()
            .with_context(|| format!("enrp.listen = {:?} is not ADDRESS:PORT", self.listen))?;
        if self.advertise.is_empty() {
            anyhow::ensure!(
                !listen.ip().is_unspecified(),
                "enrp.advertise is needed when enrp.listen is a wildcard address"
            );
        } else {
            self.advertise.parse::<SocketAddr>().with_context(|| {
                format!("enrp.advertise = {:?} is not ADDRESS:PORT", self.advertise)
            })?;
        }
        anyhow::ensure!(
            matches!(
                self.transport.as_str(),
                "sctp-over-udp" | "tcp" | "kernel-sctp"
            ),
            "enrp.transport must be \"sctp-over-udp\", \"tcp\" or \"kernel-sctp\""
        );
        let udp_ports = self.peer_udp_ports()?;
        anyhow::ensure!(
            udp_ports.is_empty() || self.transport == "sctp-over-udp",
            "enrp.peers: `/udp=` is for enrp.transport = \"sctp-over-udp\" only"
        );
        for (name, value) in [
            ("peer_heartbeat_cycle", self.peer_heartbeat_cycle),
            ("max_time_last_heard", self.max_time_last_heard),
            ("max_time_no_response", self.max_time_no_response),
            ("takeover_expiry", self.takeover_expiry),
            ("adopted_pe_grace", self.adopted_pe_grace),
        ] {
            anyhow::ensure!(!value.is_zero(), "enrp.{name} must be > 0");
        }
        anyhow::ensure!(
            self.max_elements_per_table_response > 0,
            "enrp.max_elements_per_table_response must be > 0"
        );
        self.enrp_config(1, protocol::rserpool::Limits::default())?;
        if self.multicast {
            self.multicast_address
                .parse::<SocketAddr>()
                .with_context(|| {
                    format!(
                        "enrp.multicast_address = {:?} is not ADDRESS:PORT",
                        self.multicast_address
                    )
                })?;
        }
        Ok(())
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json` (the same spelling in every poolflow daemon).
    pub format: daemon_common::LogFormat,
    /// tracing filter, e.g. "info" or "registrar=debug"; RUST_LOG wins.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: daemon_common::LogFormat::Text,
            filter: "info".to_string(),
        }
    }
}

impl RegistrarConfig {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("in config {}", path.display()))
    }

    /// Parses and validates a file's text. Legacy `_ms` keys are rewritten
    /// to the keys with a unit first (one warning each in
    /// `deprecated_keys`); a file with both spellings of a key is refused.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let mut table: toml::Table = toml::from_str(text)?;
        let deprecated_keys = daemon_common::duration::upgrade_legacy_keys(&mut table, "")?;
        let mut config: Self = table.try_into()?;
        config.deprecated_keys = deprecated_keys;
        config.validate()?;
        Ok(config)
    }

    /// Rejects values that cannot work.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.timers.keep_alive_period.is_zero(),
            "timers.keep_alive_period must be > 0"
        );
        anyhow::ensure!(
            !self.timers.keep_alive_timeout.is_zero(),
            "timers.keep_alive_timeout must be > 0"
        );
        anyhow::ensure!(
            self.timers.max_bad_pe_reports > 0,
            "timers.max_bad_pe_reports must be > 0"
        );
        anyhow::ensure!(
            !self.announce.enabled || !self.timers.server_announce_interval.is_zero(),
            "timers.server_announce_interval must be > 0 when announces are enabled"
        );
        anyhow::ensure!(
            self.limits.registrations_per_second > 0.0 && self.limits.registration_burst > 0,
            "limits.registrations_per_second and registration_burst must be > 0"
        );
        anyhow::ensure!(
            self.limits.max_message_size <= 65_535,
            "limits.max_message_size cannot exceed 65535 (16-bit ASAP length)"
        );
        for (name, value) in [
            ("listen.tcp", &self.listen.tcp),
            ("listen.sctp_over_udp", &self.listen.sctp_over_udp),
            ("listen.status", &self.listen.status),
        ] {
            if !value.is_empty() {
                value
                    .parse::<SocketAddr>()
                    .with_context(|| format!("{name} = {value:?} is not ADDRESS:PORT"))?;
            }
        }
        anyhow::ensure!(
            !self.listen.tcp.is_empty()
                || !self.listen.sctp_over_udp.is_empty()
                || !self.listen.kernel_sctp.is_empty(),
            "at least one of listen.tcp, listen.sctp_over_udp and listen.kernel_sctp is needed"
        );
        self.enrp.validate()?;
        anyhow::ensure!(
            !self.membership.max_clock_skew.is_zero(),
            "membership.max_clock_skew must be > 0"
        );
        self.membership.authorities()?;
        Ok(())
    }

    /// The sans-IO server settings this file describes (announce transports
    /// are filled in by the driver once the listeners are bound), reading
    /// the membership authority key files.
    pub fn server_config(&self, server_id: u32) -> anyhow::Result<ServerConfig> {
        let limits = &self.limits;
        Ok(ServerConfig {
            server_id,
            keep_alive_period: self.timers.keep_alive_period,
            keep_alive_timeout: self.timers.keep_alive_timeout,
            max_bad_pe_reports: self.timers.max_bad_pe_reports,
            server_announce_interval: self.timers.server_announce_interval,
            announce: self.announce.enabled,
            announce_transports: Vec::new(),
            default_resolution_items: limits.default_resolution_items,
            max_resolution_items: limits.max_resolution_items,
            registrations_per_second: limits.registrations_per_second,
            registration_burst: limits.registration_burst,
            max_malformed_per_association: limits.max_malformed_per_association,
            limits: HandlespaceLimits {
                max_pools: limits.max_pools,
                max_pool_elements_per_pool: limits.max_pool_elements_per_pool,
                max_pool_elements: limits.max_pool_elements,
                max_pool_elements_per_association: limits.max_pool_elements_per_association,
                max_pool_handle_len: limits.max_pool_handle_len,
            },
            decode_limits: protocol::rserpool::Limits {
                max_message_size: limits.max_message_size,
                max_parameters: limits.max_parameters,
                max_pool_handle_len: limits.max_pool_handle_len,
            },
            seed: rand::random(),
            registration_networks: self.access.registration_networks.clone(),
            membership_authorities: self.membership.authorities()?,
            membership_max_clock_skew: self.membership.max_clock_skew,
        })
    }
}
