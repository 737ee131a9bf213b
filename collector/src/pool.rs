//! The collector as an RSerPool Pool Element (RFC 5352): the `[pool]`
//! section of the config, turned into an ASAP registration that the
//! `asap-client` driver keeps alive (registration, keep-alive answers,
//! re-registration, registrar hunt) and withdraws at shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use asap_client::asap_endpoint::AsapEndpoint;
use asap_client::driver::{
    AnnounceListenConfig, PoolElementDriverConfig, PoolElementHandle, RegistrarAddress,
    RegistrarTransport, spawn_pool_element,
};
use asap_client::pool_element::{MemberCredentials, PoolElementConfig};
use policies::PolicyParams;
use protocol::billing::CookieKeys;
use protocol::rserpool::membership::MemberCertificate;
use protocol::rserpool::params::{PoolHandle, TransportAddress, TransportKind, TransportUse};
use protocol::signing::{self, SigningKey};

use crate::billing::CookieSigner;
use serde::Deserialize;

/// `[pool]`: register this collector under a pool handle.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Pool handle to join, e.g. "billing-collectors" (at most 32 bytes).
    pub handle: String,
    /// Registrars, tried in order: "tcp:HOST:PORT", "sctp:HOST:PORT"
    /// (SCTP over UDP; the SCTP port equals the UDP port) or
    /// "kernel-sctp:HOST:PORT" (the host kernel's SCTP, e.g. toward RSPLIB's
    /// `rspregistrar`). May be empty with `announce_listen`.
    #[serde(default)]
    pub registrars: Vec<String>,
    /// Also find registrars from their ASAP Server Announces (RFC 5352
    /// §3.6): the UDP address to listen on, a multicast group and port
    /// (RSPLIB's and poolflow's default is "239.0.0.50:3863") or a unicast
    /// address. Announced registrars are tried after the static ones, and
    /// only while they keep announcing. Off unless set.
    #[serde(default)]
    pub announce_listen: Option<String>,
    /// How an announced SCTP transport is reached: "sctp" (SCTP over UDP,
    /// poolflow's registrar), "kernel-sctp" (the kernel's SCTP, e.g.
    /// Debian's `rspregistrar`) or "none" (use announced TCP only).
    #[serde(default = "AnnounceListenConfig::default_sctp")]
    pub announce_sctp: String,
    /// An announced registrar stops being tried this long after its last
    /// announce (registrars announce every second by default).
    #[serde(
        default = "AnnounceListenConfig::default_lifetime",
        with = "daemon_common::duration::serde"
    )]
    pub announce_lifetime: Duration,
    /// The transport pool users reach this collector on, in the same
    /// notation ("tcp:" means the framed TCP of `framed_tcp_listen`).
    /// Default: the first SCTP listener, else the first framed-TCP one,
    /// when it is bound to a specific address.
    #[serde(default)]
    pub advertise: Option<String>,
    /// Selection policy of the pool (all PEs of a pool use the same one):
    /// priority, round-robin, weighted-round-robin, random,
    /// weighted-random, least-used, least-used-degradation,
    /// priority-least-used, randomized-least-used.
    #[serde(default = "default_policy")]
    pub policy: String,
    /// Priority (policy "priority": the highest available PE is preferred;
    /// exporters fail back to it when it returns).
    #[serde(default)]
    pub priority: u32,
    /// Weight (weighted policies).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Load, 0 to 0xffffffff (least-used family).
    #[serde(default)]
    pub load: u32,
    /// Load degradation or increment (least-used-degradation,
    /// priority-least-used).
    #[serde(default)]
    pub load_increment: u32,
    /// PE identifier; 0 picks a random one and keeps it in
    /// `<database>.pe-id` so a restarted collector replaces its own
    /// registration instead of adding a second one.
    #[serde(default)]
    pub pe_identifier: u32,
    /// Registration life told to the registrar (milliseconds on the wire).
    #[serde(default = "default_lifetime", with = "daemon_common::duration::serde")]
    pub registration_lifetime: Duration,
    /// Re-registration interval (at most 2/3 of the life).
    #[serde(
        default = "default_reregistration",
        with = "daemon_common::duration::serde"
    )]
    pub reregistration_interval: Duration,
    /// Longest wait for the Deregistration Response at a graceful stop
    /// (T3-deregistration), milliseconds. A stop never waits longer for a
    /// registrar that is gone: the registration then ends by keep-alive
    /// timeout at the registrar.
    #[serde(
        default = "default_deregistration_timeout",
        with = "daemon_common::duration::serde"
    )]
    pub deregistration_timeout: Duration,
    /// SCTP over UDP to the registrars: the local UDP port (RFC 6951
    /// encapsulation port) the ASAP association leaves from; 0 picks an
    /// ephemeral port. RSPLIB's sctplib answers to UDP 9899 whatever port an
    /// INIT came from: with an sctplib registrar, set 9899.
    #[serde(default)]
    pub local_udp_port: u16,
    /// File holding the pool's shared cookie key (the HMAC key every
    /// collector of the pool uses to sign and check billing cookies). With
    /// no key the collector takes part in no cookie protocol.
    #[serde(default)]
    pub cookie_key_file: Option<PathBuf>,
    /// The key inline (prefer `cookie_key_file`: config files get copied).
    #[serde(default)]
    pub cookie_key: Option<String>,
    /// This collector's Ed25519 private key (PKCS#8 PEM, `openssl genpkey
    /// -algorithm ed25519`; refused if group or others may read it). Set:
    /// cookies are version 2, which exporters holding the public key check
    /// and cannot forge; the HMAC key then only checks old echoes.
    #[serde(default)]
    pub cookie_signing_key_file: Option<PathBuf>,
    /// Public keys (PEM) of the pool's collectors: a Cookie Echo signed by
    /// any of them (or by this collector's own key) is a valid handover.
    /// Rotation: add the new key everywhere first, remove the old one last.
    #[serde(default)]
    pub cookie_verify_key_files: Vec<PathBuf>,
    /// UNSAFE, for tests only: accept every well-formed Cookie Echo without
    /// checking its HMAC or signature, as a hostile or misconfigured pool
    /// element would. Never set it in a real pool.
    #[serde(default)]
    pub trust_any_cookie_echo: bool,
    /// This collector's own ASAP endpoint, "sctp:ADDR" or "tcp:ADDR" (port
    /// 0 picks one), registered as the ASAP transport (RFC 5354 §3.10):
    /// when its home registrar dies, the ENRP peer that takes it over sends
    /// the Home keep-alive here and supervises it here, so the registration
    /// survives even when no listed registrar is left to re-register with.
    /// Unset: no listener; an adopted registration then lasts the new
    /// home's adoption grace unless the collector re-registers.
    #[serde(default)]
    pub asap_listen: Option<String>,
    /// This collector's own Ed25519 private key (PKCS#8 PEM, `openssl
    /// genpkey -algorithm ed25519`), readable by the collector's user only:
    /// signs every Registration and Deregistration for a closed pool
    /// (docs/security.md). Set together with `member_certificate_file`.
    #[serde(default)]
    pub member_key_file: Option<PathBuf>,
    /// The pool membership authority's certificate for that key
    /// (`registrar issue-member`). Reloaded on SIGHUP, so a reissued
    /// certificate takes effect without a restart.
    #[serde(default)]
    pub member_certificate_file: Option<PathBuf>,
}

/// The Server Announce listener of `pool`, if `announce_listen` is set.
fn announce_listen(pool: &PoolConfig) -> Result<Option<AnnounceListenConfig>> {
    AnnounceListenConfig::from_keys(
        pool.announce_listen.as_deref(),
        &pool.announce_sctp,
        pool.announce_lifetime,
    )
    .context("in [pool]")
}

fn default_policy() -> String {
    "priority".into()
}

fn default_weight() -> u32 {
    1
}

fn default_lifetime() -> Duration {
    Duration::from_secs(300)
}

fn default_reregistration() -> Duration {
    Duration::from_secs(200)
}

/// Transport settings of the ASAP associations to the registrars.
fn registrar_transport(pool: &PoolConfig) -> transport::Config {
    transport::Config {
        local_udp_port: pool.local_udp_port,
        ..transport::Config::default()
    }
}

fn default_deregistration_timeout() -> Duration {
    Duration::from_secs(2)
}

/// A parsed "tcp:ADDR" / "sctp:ADDR".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// A framed-TCP (or TCP) transport address.
    Tcp(SocketAddr),
    /// An SCTP transport address.
    Sctp(SocketAddr),
}

impl Endpoint {
    /// Same notation as registrar lists (one parser for both).
    pub fn parse(text: &str) -> Result<Self> {
        let address: RegistrarAddress = text.parse()?;
        Ok(match address.transport {
            RegistrarTransport::Tcp => Self::Tcp(address.addr),
            RegistrarTransport::SctpOverUdp { .. } => Self::Sctp(address.addr),
            // Toward registrars only (RSPLIB built on the kernel's SCTP): the
            // collector's own listeners are SCTP over UDP or TCP.
            RegistrarTransport::KernelSctp => bail!(
                "`{text}`: kernel-sctp is for registrar lists only; a collector listens on sctp: (SCTP over UDP) or tcp:"
            ),
        })
    }

    /// The address.
    pub fn addr(self) -> SocketAddr {
        match self {
            Self::Tcp(addr) | Self::Sctp(addr) => addr,
        }
    }

    /// The ASAP user transport parameter (RFC 5354 3.4/3.5): data and
    /// control, because cookies travel on the data association.
    fn user_transport(self) -> TransportAddress {
        let (kind, addr) = match self {
            Self::Tcp(addr) => (TransportKind::Tcp(TransportUse::DataPlusControl), addr),
            Self::Sctp(addr) => (TransportKind::Sctp(TransportUse::DataPlusControl), addr),
        };
        TransportAddress {
            kind,
            port: addr.port(),
            addresses: vec![addr.ip()],
        }
    }
}

impl PoolConfig {
    /// The pool member selection policy and its parameters.
    pub fn policy_params(&self) -> Result<PolicyParams> {
        Ok(match self.policy.as_str() {
            "priority" => PolicyParams::Priority {
                priority: self.priority,
            },
            "round-robin" => PolicyParams::RoundRobin,
            "weighted-round-robin" => PolicyParams::WeightedRoundRobin {
                weight: self.weight,
            },
            "random" => PolicyParams::Random,
            "weighted-random" => PolicyParams::WeightedRandom {
                weight: self.weight,
            },
            "least-used" => PolicyParams::LeastUsed { load: self.load },
            "least-used-degradation" => PolicyParams::LeastUsedDegradation {
                load: self.load,
                load_degradation: self.load_increment,
            },
            "priority-least-used" => PolicyParams::PriorityLeastUsed {
                load: self.load,
                load_increment: self.load_increment,
            },
            "randomized-least-used" => PolicyParams::RandomizedLeastUsed { load: self.load },
            other => bail!("`pool.policy`: unknown policy `{other}`"),
        })
    }

    /// Checks what serde cannot: handle length, registrars, key and
    /// certificate settings, timers.
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            !self.handle.is_empty() && self.handle.len() <= 32,
            "`pool.handle` must be 1 to 32 bytes"
        );
        anyhow::ensure!(
            !self.registrars.is_empty() || self.announce_listen.is_some(),
            "`pool.registrars` is empty and `pool.announce_listen` unset: no registrar to register with"
        );
        announce_listen(self)?;
        for r in &self.registrars {
            r.parse::<RegistrarAddress>()
                .context("in `pool.registrars`")?;
        }
        if let Some(a) = &self.advertise {
            Endpoint::parse(a).context("in `pool.advertise`")?;
        }
        if let Some(a) = &self.asap_listen {
            Endpoint::parse(a).context("in `pool.asap_listen`")?;
        }
        self.policy_params()?;
        anyhow::ensure!(
            !(self.cookie_key.is_some() && self.cookie_key_file.is_some()),
            "set `pool.cookie_key` or `pool.cookie_key_file`, not both"
        );
        anyhow::ensure!(
            self.member_key_file.is_some() == self.member_certificate_file.is_some(),
            "set both `pool.member_key_file` and `pool.member_certificate_file`, or neither"
        );
        anyhow::ensure!(
            !self.registration_lifetime.is_zero() && !self.reregistration_interval.is_zero(),
            "`pool.registration_lifetime` and `pool.reregistration_interval` must be positive"
        );
        Ok(())
    }
}

/// What users should connect to: the configured `advertise`, else the first
/// bound SCTP, then framed-TCP, listener with a specific (non-wildcard)
/// address. Never the plain RFC 7011 TCP listener: a pool user speaks the
/// framed protocol (IPFIX and ASAP cookies on one connection).
pub fn advertised_endpoint(
    pool: &PoolConfig,
    sctp: &[SocketAddr],
    framed_tcp: &[SocketAddr],
) -> Result<Endpoint> {
    if let Some(text) = &pool.advertise {
        return Endpoint::parse(text);
    }
    let specific = |a: &&SocketAddr| !a.ip().is_unspecified();
    if let Some(a) = sctp.iter().find(specific) {
        return Ok(Endpoint::Sctp(*a));
    }
    if let Some(a) = framed_tcp.iter().find(specific) {
        return Ok(Endpoint::Tcp(*a));
    }
    bail!(
        "`pool.advertise` is not set and no SCTP or framed-TCP listener has a specific address: \
         tell pool users where to connect, e.g. advertise = \"sctp:192.0.2.10:9899\""
    )
}

/// The pool's cookie key, if configured.
pub fn cookie_key(pool: &PoolConfig) -> Result<Option<Vec<u8>>> {
    let key = match (&pool.cookie_key, &pool.cookie_key_file) {
        (Some(key), _) => key.as_bytes().to_vec(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("reading `pool.cookie_key_file` {}", path.display()))?
            .trim()
            .as_bytes()
            .to_vec(),
        (None, None) => return Ok(None),
    };
    anyhow::ensure!(
        key.len() >= 16,
        "the pool cookie key must be at least 16 bytes"
    );
    Ok(Some(key))
}

/// Signs and checks billing cookies as `[pool]` says: version 2 (Ed25519)
/// with `cookie_signing_key_file`, else version 1 with the HMAC key; echoes
/// signed by the HMAC key (migration) or any `cookie_verify_key_files` key
/// are accepted. `None`: no key at all, no cookie protocol.
pub fn cookie_signer(pool: &PoolConfig, pe_identifier: u32) -> Result<Option<CookieSigner>> {
    let hmac_key = cookie_key(pool)?;
    let mut trusted = CookieKeys::default();
    if let Some(key) = &hmac_key {
        trusted = trusted.with_hmac_key(key.clone());
    }
    for path in &pool.cookie_verify_key_files {
        let pem = std::fs::read_to_string(path).with_context(|| {
            format!("reading `pool.cookie_verify_key_files` {}", path.display())
        })?;
        let key = signing::verifying_key_from_pem(&pem)
            .with_context(|| format!("in `pool.cookie_verify_key_files` {}", path.display()))?;
        trusted.add_public_key(key);
    }
    let mut signer = match (&pool.cookie_signing_key_file, hmac_key) {
        (Some(path), _) => {
            let key = read_private_key(path)
                .with_context(|| format!("`pool.cookie_signing_key_file` {}", path.display()))?;
            CookieSigner::ed25519(key, trusted, pe_identifier)
        }
        (None, Some(key)) => {
            let mut signer = CookieSigner::hmac(key, pe_identifier);
            // Not rolled to a signing key yet, but peers may be: their
            // version 2 cookies are valid handovers here too.
            signer.trusted = trusted;
            signer
        }
        (None, None) => {
            anyhow::ensure!(
                !trusted.has_public_keys(),
                "`pool.cookie_verify_key_files` is set but neither `cookie_signing_key_file` nor \
                 `cookie_key(_file)`: this collector could check cookies but never sign one"
            );
            return Ok(None);
        }
    };
    signer.trust_any_echo = pool.trust_any_cookie_echo;
    Ok(Some(signer))
}

/// Reads an Ed25519 private key file, refusing one others may read.
fn read_private_key(path: &Path) -> Result<SigningKey> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .permissions()
        .mode();
    signing::check_private_key_mode(mode)?;
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(signing::signing_key_from_pem(&pem)?)
}

/// The PE identifier: configured, or persisted beside the database.
/// Reads the membership key and certificate (`None` without them): the key
/// must be private to the collector's user, and the certificate must be
/// for this key and this pool.
pub fn member_credentials(pool: &PoolConfig) -> Result<Option<MemberCredentials>> {
    use std::os::unix::fs::MetadataExt;
    let (Some(key_path), Some(cert_path)) = (&pool.member_key_file, &pool.member_certificate_file)
    else {
        return Ok(None);
    };
    let mode = std::fs::metadata(key_path)
        .with_context(|| format!("`pool.member_key_file` {}", key_path.display()))?
        .mode();
    signing::check_private_key_mode(mode)
        .with_context(|| format!("`pool.member_key_file` {}", key_path.display()))?;
    let key = signing::signing_key_from_pem(
        &std::fs::read_to_string(key_path)
            .with_context(|| format!("reading `pool.member_key_file` {}", key_path.display()))?,
    )
    .with_context(|| format!("`pool.member_key_file` {}", key_path.display()))?;
    let text = std::fs::read_to_string(cert_path).with_context(|| {
        format!(
            "reading `pool.member_certificate_file` {}",
            cert_path.display()
        )
    })?;
    let certificate = MemberCertificate::from_text(&text, 32).map_err(|e| {
        anyhow::anyhow!(
            "`pool.member_certificate_file` {}: {e}",
            cert_path.display()
        )
    })?;
    anyhow::ensure!(
        certificate.member_key == key.verifying_key().to_bytes(),
        "`pool.member_certificate_file` {} certifies another key than `pool.member_key_file`",
        cert_path.display()
    );
    anyhow::ensure!(
        certificate.pool_handle.as_bytes() == pool.handle.as_bytes(),
        "`pool.member_certificate_file` {} is for pool {:?}, not {:?}",
        cert_path.display(),
        certificate.pool_handle.to_string(),
        pool.handle
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    if now >= certificate.not_after || now < certificate.not_before {
        // Still used: the registrar decides, and says so in its refusal.
        tracing::error!(
            certificate = %cert_path.display(),
            not_before = certificate.not_before,
            not_after = certificate.not_after,
            "pool membership certificate is not valid now: registrars will refuse this collector"
        );
    } else if certificate.not_after - now < 14 * 86_400 {
        tracing::warn!(
            certificate = %cert_path.display(),
            days_left = (certificate.not_after - now) / 86_400,
            "pool membership certificate expires soon: reissue it and send SIGHUP"
        );
    }
    Ok(Some(MemberCredentials { key, certificate }))
}

/// The PE identifier: the configured one, else the one saved beside the
/// database, else a new random one, saved there.
pub fn pe_identifier(pool: &PoolConfig, database: &Path) -> Result<u32> {
    if pool.pe_identifier != 0 {
        return Ok(pool.pe_identifier);
    }
    let path = pe_id_path(database);
    if let Ok(text) = std::fs::read_to_string(&path) {
        return text
            .trim()
            .parse()
            .with_context(|| format!("{} does not hold a PE identifier", path.display()));
    }
    let id = loop {
        let id: u32 = rand::random();
        if id != 0 {
            break id;
        }
    };
    std::fs::write(&path, format!("{id}\n"))
        .with_context(|| format!("saving the PE identifier to {}", path.display()))?;
    Ok(id)
}

fn pe_id_path(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(".pe-id");
    PathBuf::from(name)
}

/// A registration and, with `asap_listen`, the ASAP endpoint registered
/// with it (drop it only after the deregistration).
pub struct Membership {
    /// The pool element (registration, keep-alives, deregistration).
    pub element: PoolElementHandle,
    /// The collector's own ASAP endpoint, when `asap_listen` is set.
    pub asap_endpoint: Option<AsapEndpoint>,
}

/// Starts registering; the handle deregisters on `shutdown`.
pub async fn register(
    pool: &PoolConfig,
    pe_identifier: u32,
    advertised: Endpoint,
) -> Result<Membership> {
    let registrars: Vec<RegistrarAddress> = pool
        .registrars
        .iter()
        .map(|r| r.parse::<RegistrarAddress>())
        .collect::<Result<_>>()?;
    let mut pe = PoolElementConfig::new(
        PoolHandle(pool.handle.as_bytes().to_vec()),
        pe_identifier,
        advertised.user_transport(),
        pool.policy_params()?,
        registrars.len(),
    );
    pe.registration_lifetime = Some(pool.registration_lifetime);
    pe.reregistration_interval = pool.reregistration_interval;
    pe.deregistration_timeout = pool.deregistration_timeout;
    pe.membership = member_credentials(pool)?;
    let asap_endpoint = match &pool.asap_listen {
        Some(listen) => {
            let endpoint = AsapEndpoint::bind(
                listen.parse()?,
                &transport::Config::default(),
                pe.pool_handle.clone(),
                pe_identifier,
            )
            .await
            .with_context(|| format!("`pool.asap_listen` {listen}"))?;
            pe.asap_transport = Some(endpoint.asap_transport(advertised.addr().ip()));
            Some(endpoint)
        }
        None => None,
    };
    tracing::info!(handle = %pool.handle, pe_id = format_args!("{:#010x}", pe.pe_identifier),
        advertised = ?advertised, "registering as pool element");
    let element = spawn_pool_element(PoolElementDriverConfig {
        pool_element: pe,
        registrars,
        transport: registrar_transport(pool),
        announce_listen: announce_listen(pool)?,
    })
    .map_err(|e| anyhow::anyhow!("pool element: {e:#}"))?;
    Ok(Membership {
        element,
        asap_endpoint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(extra: &str) -> PoolConfig {
        toml::from_str(&format!(
            "handle = \"billing-collectors\"\nregistrars = [\"tcp:127.0.0.1:3863\"]\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn endpoints_parse_with_their_transport() {
        assert_eq!(
            Endpoint::parse("sctp:192.0.2.1:9899").unwrap(),
            Endpoint::Sctp("192.0.2.1:9899".parse().unwrap())
        );
        assert!(Endpoint::parse("udp:192.0.2.1:4739").is_err());
        assert!(Endpoint::parse("tcp:nonsense").is_err());
        // Kernel SCTP is for reaching registrars (RSPLIB's), not for listening.
        assert!(Endpoint::parse("kernel-sctp:192.0.2.1:3863").is_err());
    }

    /// `[pool] local_udp_port` reaches the ASAP associations' transport.
    /// `announce_listen` may stand in for the static list; its companion
    /// keys are checked when the config is, not when registering starts.
    #[test]
    fn announced_registrars_may_replace_the_static_list() {
        let only_announced: PoolConfig = toml::from_str(
            "handle = \"h\"\nregistrars = []\nannounce_listen = \"239.0.0.50:3863\"\nannounce_sctp = \"kernel-sctp\"\nannounce_lifetime = \"3s\"",
        )
        .unwrap();
        only_announced.validate().unwrap();
        let listen = announce_listen(&only_announced).unwrap().unwrap();
        assert_eq!(listen.address, "239.0.0.50:3863".parse().unwrap());
        assert_eq!(listen.table.sctp, Some(asap_client::AnnouncedSctp::Kernel));
        assert_eq!(listen.table.entry_lifetime, Duration::from_secs(3));
        // Defaults: off; when on, SCTP over UDP and 5 s.
        assert_eq!(announce_listen(&pool("")).unwrap(), None);
        let defaults = announce_listen(&pool("announce_listen = \"239.0.0.50:3863\""))
            .unwrap()
            .unwrap();
        assert_eq!(
            defaults.table.sctp,
            Some(asap_client::AnnouncedSctp::OverUdp)
        );
        assert_eq!(defaults.table.entry_lifetime, Duration::from_secs(5));
        let neither: PoolConfig = toml::from_str("handle = \"h\"\nregistrars = []").unwrap();
        assert!(neither.validate().is_err());
        for bad in [
            "announce_listen = \"239.0.0.50\"",
            "announce_listen = \"239.0.0.50:3863\"\nannounce_sctp = \"udp\"",
            "announce_listen = \"239.0.0.50:3863\"\nannounce_lifetime = \"0s\"",
        ] {
            assert!(pool(bad).validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn local_udp_port_reaches_the_registrar_transport() {
        assert_eq!(registrar_transport(&pool("")).local_udp_port, 0);
        let set = pool("local_udp_port = 9899");
        assert_eq!(registrar_transport(&set).local_udp_port, 9899);
        assert!(toml::from_str::<PoolConfig>("local_udp_port = 70000").is_err());
    }

    #[test]
    fn registrars_may_be_reached_over_kernel_sctp() {
        let mut config = pool("");
        config.registrars = vec!["kernel-sctp:192.0.2.2:3863".into()];
        config.validate().unwrap();
        config.registrars = vec!["kernel:192.0.2.2:3863".into()];
        assert!(config.validate().is_err());
    }

    #[test]
    fn policy_keys_build_policy_parameters() {
        assert_eq!(
            pool("priority = 7").policy_params().unwrap(),
            PolicyParams::Priority { priority: 7 }
        );
        assert_eq!(
            pool("policy = \"weighted-random\"\nweight = 3")
                .policy_params()
                .unwrap(),
            PolicyParams::WeightedRandom { weight: 3 }
        );
        assert!(pool("policy = \"fastest\"").validate().is_err());
    }

    #[test]
    fn advertised_endpoint_prefers_specific_sctp_then_framed_tcp() {
        let p = pool("");
        let wildcard: SocketAddr = "0.0.0.0:9899".parse().unwrap();
        let tcp: SocketAddr = "127.0.0.1:4739".parse().unwrap();
        assert_eq!(
            advertised_endpoint(&p, &[wildcard], &[tcp]).unwrap(),
            Endpoint::Tcp(tcp)
        );
        assert!(advertised_endpoint(&p, &[wildcard], &[]).is_err());
        let explicit = pool("advertise = \"sctp:192.0.2.9:9899\"");
        assert_eq!(
            advertised_endpoint(&explicit, &[wildcard], &[]).unwrap(),
            Endpoint::Sctp("192.0.2.9:9899".parse().unwrap())
        );
    }

    #[test]
    fn pe_identifier_is_persisted_beside_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("c.sqlite");
        let first = pe_identifier(&pool(""), &db).unwrap();
        assert_ne!(first, 0);
        assert_eq!(pe_identifier(&pool(""), &db).unwrap(), first);
        assert_eq!(pe_identifier(&pool("pe_identifier = 42"), &db).unwrap(), 42);
    }

    #[test]
    fn long_handle_is_rejected() {
        let mut p = pool("");
        p.handle = "x".repeat(33);
        assert!(p.validate().is_err());
    }

    #[test]
    fn cookie_keys_from_files_private_key_mode_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let own = SigningKey::from_bytes(&[1; 32]);
        let peer = SigningKey::from_bytes(&[2; 32]);
        let private = dir.path().join("own.pem");
        std::fs::write(&private, signing::pkcs8_private_pem(&own)).unwrap();
        let public = dir.path().join("peer.pub");
        std::fs::write(&public, signing::pkcs8_public_pem(&peer.verifying_key())).unwrap();
        let keys = format!(
            "cookie_signing_key_file = {:?}\ncookie_verify_key_files = [{:?}]\ncookie_key = \"0123456789abcdef\"",
            private, public
        );
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = cookie_signer(&pool(&keys), 7).unwrap_err();
        assert!(format!("{err:#}").contains("chmod 600"), "{err:#}");
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
        let signer = cookie_signer(&pool(&keys), 7).unwrap().expect("a signer");
        assert!(!signer.trust_any_echo);
        assert!(
            signer.trusted.has_hmac_key(),
            "old echoes during the migration"
        );
        let mut ids = vec![
            signing::key_id(&own.verifying_key()),
            signing::key_id(&peer.verifying_key()),
        ];
        ids.sort();
        assert_eq!(signer.trusted.public_key_ids(), ids);
        let cookie = signer.sign(42, 1, 9, 1);
        assert_eq!(
            cookie.key_id(),
            Some(
                ids.iter()
                    .copied()
                    .find(|&id| id == signing::key_id(&own.verifying_key()))
                    .unwrap()
            )
        );
        // Public keys alone cannot sign.
        let verify_only = format!("cookie_verify_key_files = [{public:?}]");
        assert!(cookie_signer(&pool(&verify_only), 7).is_err());
        assert!(cookie_signer(&pool(""), 7).unwrap().is_none());
        let hostile = pool(&format!("{keys}\ntrust_any_cookie_echo = true"));
        assert!(cookie_signer(&hostile, 7).unwrap().unwrap().trust_any_echo);
    }

    #[test]
    fn member_credentials_are_checked_before_use() {
        use protocol::signing::{SigningKey, pkcs8_private_pem};
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let authority = SigningKey::from_bytes(&[1; 32]);
        let member = SigningKey::from_bytes(&[2; 32]);
        let key_path = dir.path().join("member.key");
        std::fs::write(&key_path, pkcs8_private_pem(&member)).unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let write_cert = |name: &str, pool: &str, key: &SigningKey| {
            let cert = MemberCertificate::issue(
                &authority,
                &PoolHandle::from(pool),
                &key.verifying_key(),
                0,
                u64::MAX,
            );
            let path = dir.path().join(name);
            std::fs::write(&path, cert.to_text()).unwrap();
            path
        };
        let config = |cert: &Path| {
            pool(&format!(
                "member_key_file = {:?}\nmember_certificate_file = {:?}",
                key_path.display().to_string(),
                cert.display().to_string()
            ))
        };
        let good = write_cert("good.cert", "billing-collectors", &member);
        let credentials = member_credentials(&config(&good)).unwrap().unwrap();
        assert_eq!(credentials.key.verifying_key(), member.verifying_key());
        assert!(member_credentials(&pool("")).unwrap().is_none());

        let other_pool = write_cert("other.cert", "other-pool", &member);
        assert!(member_credentials(&config(&other_pool)).is_err());
        let other_key = write_cert("key.cert", "billing-collectors", &authority);
        assert!(member_credentials(&config(&other_key)).is_err());
        // Group-readable private key: refused.
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let error = member_credentials(&config(&good)).unwrap_err();
        assert!(format!("{error:#}").contains("chmod 600"), "{error:#}");
        // Only one of the two files: a configuration error.
        let mut half = config(&good);
        half.member_certificate_file = None;
        assert!(half.validate().is_err());
    }
}
