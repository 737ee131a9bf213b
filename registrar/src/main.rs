//! `registrar`: the poolflow ASAP registrar daemon and its inspection command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use registrar::server::Status;
use registrar::{Registrar, RegistrarConfig};

/// poolflow registrar: ASAP server (RFC 5352) for the IPFIX collector pool.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registrar daemon (SIGTERM or SIGINT stops it gracefully;
    /// SIGHUP is logged and ignored: no reload).
    Run(RunArgs),
    /// Print the pools and pool elements of a running registrar (like RSPLIB's hsdump).
    Dump(DumpArgs),
    /// Print the effective configuration (defaults + file + flags) as TOML.
    ShowConfig(RunArgs),
    /// Issue a pool membership certificate (docs/security.md): the pool's
    /// authority key signs a PE's public key for a pool; prints the
    /// certificate (the collector's `[pool] member_certificate_file`).
    IssueMember(IssueMemberArgs),
}

#[derive(Args)]
struct IssueMemberArgs {
    /// The pool's membership authority private key (PKCS#8 PEM,
    /// `openssl genpkey -algorithm ed25519`; readable by its owner only).
    #[arg(long)]
    authority_key: PathBuf,
    /// Pool handle the member may join.
    #[arg(long)]
    pool: String,
    /// The member's public key (PEM, `openssl pkey -in pe.pem -pubout`).
    #[arg(long)]
    member_key: PathBuf,
    /// Validity in days from now (or from --not-before).
    #[arg(long, default_value_t = 365)]
    days: u64,
    /// Start of validity, Unix seconds (default: now minus 5 minutes, for
    /// clock skew between the hosts).
    #[arg(long)]
    not_before: Option<u64>,
}

fn issue_member(args: &IssueMemberArgs) -> anyhow::Result<String> {
    use protocol::rserpool::PoolHandle;
    use protocol::rserpool::membership::MemberCertificate;
    use protocol::signing;
    use std::os::unix::fs::MetadataExt;
    let mode = std::fs::metadata(&args.authority_key)
        .with_context(|| format!("{}", args.authority_key.display()))?
        .mode();
    signing::check_private_key_mode(mode)
        .with_context(|| format!("{}", args.authority_key.display()))?;
    let authority = signing::signing_key_from_pem(
        &std::fs::read_to_string(&args.authority_key)
            .with_context(|| format!("reading {}", args.authority_key.display()))?,
    )?;
    let member = signing::verifying_key_from_pem(
        &std::fs::read_to_string(&args.member_key)
            .with_context(|| format!("reading {}", args.member_key.display()))?,
    )?;
    anyhow::ensure!(
        !args.pool.is_empty() && args.pool.len() <= 32,
        "--pool must be 1 to 32 bytes (RSPLIB's handle limit)"
    );
    anyhow::ensure!(args.days > 0, "--days must be > 0");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let not_before = args.not_before.unwrap_or(now.saturating_sub(300));
    let not_after = not_before.saturating_add(args.days.saturating_mul(86_400));
    let certificate = MemberCertificate::issue(
        &authority,
        &PoolHandle::from(args.pool.as_str()),
        &member,
        not_before,
        not_after,
    );
    Ok(certificate.to_text())
}

#[derive(Args)]
struct RunArgs {
    /// TOML configuration file (see deploy/registrar.toml); flags override
    /// it. Optional: without it the defaults apply (ASAP on TCP and SCTP over
    /// UDP port 3863, status on 127.0.0.1:3864, open pools; `show-config`
    /// prints them).
    #[arg(short, long, value_name = "FILE", env = "POOLFLOW_REGISTRAR_CONFIG")]
    config: Option<PathBuf>,
    /// Server identifier (0: random).
    #[arg(long)]
    server_id: Option<u32>,
    /// ASAP over TCP listen address ("" disables, as --no-tcp).
    #[arg(long)]
    tcp: Option<String>,
    /// Do not listen for ASAP over TCP.
    #[arg(long, conflicts_with = "tcp")]
    no_tcp: bool,
    /// ASAP over SCTP-over-UDP: UDP listen address ("" disables, as
    /// --no-sctp-over-udp).
    #[arg(long)]
    sctp_over_udp: Option<String>,
    /// Do not listen for ASAP over SCTP over UDP.
    #[arg(long, conflicts_with = "sctp_over_udp")]
    no_sctp_over_udp: bool,
    /// SCTP port inside the UDP encapsulation.
    #[arg(long)]
    sctp_port: Option<u16>,
    /// ASAP over the kernel's SCTP: listen address, e.g. 0.0.0.0:3863 (off
    /// by default; needs the Linux `sctp` module). RSPLIB PEs and PUs built
    /// on the kernel (Debian's packages) speak this.
    #[arg(long)]
    kernel_sctp: Option<String>,
    /// HTTP status/metrics listen address ("" disables, as --no-status).
    #[arg(long)]
    status: Option<String>,
    /// No HTTP status/metrics endpoint.
    #[arg(long, conflicts_with = "status")]
    no_status: bool,
    /// Keep-alive transmission interval ("5s", "200ms").
    #[arg(long, value_name = "DURATION", value_parser = daemon_common::duration::parse)]
    keep_alive_period: Option<Duration>,
    /// Deprecated: --keep-alive-period in milliseconds.
    #[arg(long, hide = true, conflicts_with = "keep_alive_period")]
    keep_alive_period_ms: Option<u64>,
    /// Keep-alive ack timeout ("5s", "200ms").
    #[arg(long, value_name = "DURATION", value_parser = daemon_common::duration::parse)]
    keep_alive_timeout: Option<Duration>,
    /// Deprecated: --keep-alive-timeout in milliseconds.
    #[arg(long, hide = true, conflicts_with = "keep_alive_timeout")]
    keep_alive_timeout_ms: Option<u64>,
    /// Endpoint Unreachable reports that remove a PE (MAX-BAD-PE-REPORT).
    #[arg(long)]
    max_bad_pe_reports: Option<u32>,
    /// Send Server Announces to the configured announce addresses.
    #[arg(long)]
    announce: bool,
    /// Server Announce interval ("1s").
    #[arg(long, value_name = "DURATION", value_parser = daemon_common::duration::parse)]
    server_announce_interval: Option<Duration>,
    /// Deprecated: --server-announce-interval in milliseconds.
    #[arg(long, hide = true, conflicts_with = "server_announce_interval")]
    server_announce_interval_ms: Option<u64>,
    /// Use sub-second transport failure detection.
    #[arg(long)]
    fast_failure_detection: bool,
    /// Enable ENRP peering (RFC 5353) with the configured peers.
    #[arg(long)]
    enrp: bool,
    /// ENRP listen address (implies --enrp).
    #[arg(long)]
    enrp_listen: Option<String>,
    /// ENRP address peers reach us on, sent in Presence (implies --enrp).
    #[arg(long)]
    enrp_advertise: Option<String>,
    /// ENRP transport: sctp-over-udp, tcp or kernel-sctp.
    #[arg(long)]
    enrp_transport: Option<String>,
    /// ENRP address of a peer registrar; repeat for each (implies --enrp;
    /// replaces the file's enrp.peers).
    #[arg(long = "enrp-peer")]
    enrp_peers: Vec<String>,
    /// Log format (`RUST_LOG` sets the level, over the file's `log.filter`).
    #[arg(long, value_enum)]
    log_format: Option<daemon_common::LogFormat>,
}

#[derive(Args)]
struct DumpArgs {
    /// Status endpoint of the registrar (listen.status).
    #[arg(long, default_value = "127.0.0.1:3864")]
    status: SocketAddr,
    /// Print the raw JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl RunArgs {
    fn effective_config(&self) -> anyhow::Result<RegistrarConfig> {
        let mut config = match &self.config {
            Some(path) => RegistrarConfig::load(path)?,
            None => RegistrarConfig::default(),
        };
        if let Some(id) = self.server_id {
            config.server_id = id;
        }
        if let Some(tcp) = &self.tcp {
            config.listen.tcp = tcp.clone();
        }
        if let Some(udp) = &self.sctp_over_udp {
            config.listen.sctp_over_udp = udp.clone();
        }
        if let Some(kernel) = &self.kernel_sctp {
            config.listen.kernel_sctp = kernel.clone();
        }
        if self.no_tcp {
            config.listen.tcp.clear();
        }
        if self.no_sctp_over_udp {
            config.listen.sctp_over_udp.clear();
        }
        if self.no_status {
            config.listen.status.clear();
        }
        if let Some(port) = self.sctp_port {
            config.listen.sctp_port = port;
        }
        if let Some(status) = &self.status {
            config.listen.status = status.clone();
        }
        // The `-ms` flags are the old spelling: still honoured, with a
        // warning naming the flag with a unit, as the file's `_ms` keys.
        let mut legacy_ms = |flag: &str, ms: Option<u64>| {
            ms.map(|ms| {
                config
                    .deprecated_keys
                    .push(format!("--{flag}-ms is deprecated: use --{flag} {ms}ms"));
                Duration::from_millis(ms)
            })
        };
        let keep_alive_period_ms = legacy_ms("keep-alive-period", self.keep_alive_period_ms);
        let keep_alive_timeout_ms = legacy_ms("keep-alive-timeout", self.keep_alive_timeout_ms);
        let server_announce_interval_ms =
            legacy_ms("server-announce-interval", self.server_announce_interval_ms);
        if let Some(period) = self.keep_alive_period.or(keep_alive_period_ms) {
            config.timers.keep_alive_period = period;
        }
        if let Some(timeout) = self.keep_alive_timeout.or(keep_alive_timeout_ms) {
            config.timers.keep_alive_timeout = timeout;
        }
        if let Some(n) = self.max_bad_pe_reports {
            config.timers.max_bad_pe_reports = n;
        }
        if self.announce {
            config.announce.enabled = true;
        }
        if let Some(interval) = self
            .server_announce_interval
            .or(server_announce_interval_ms)
        {
            config.timers.server_announce_interval = interval;
        }
        if self.fast_failure_detection {
            config.transport.fast_failure_detection = true;
        }
        if self.enrp {
            config.enrp.enabled = true;
        }
        if let Some(listen) = &self.enrp_listen {
            config.enrp.enabled = true;
            config.enrp.listen = listen.clone();
        }
        if let Some(advertise) = &self.enrp_advertise {
            config.enrp.enabled = true;
            config.enrp.advertise = advertise.clone();
        }
        if let Some(transport) = &self.enrp_transport {
            config.enrp.transport = transport.clone();
        }
        if !self.enrp_peers.is_empty() {
            config.enrp.enabled = true;
            config.enrp.peers = self.enrp_peers.clone();
        }
        if let Some(format) = self.log_format {
            config.log.format = format;
        }
        config.validate()?;
        Ok(config)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Run(args) => {
            let config = args.effective_config()?;
            init_logging(&config)?;
            for warning in &config.deprecated_keys {
                tracing::warn!("{warning}");
            }
            runtime.block_on(run(config))
        }
        Command::ShowConfig(args) => {
            let config = args.effective_config()?;
            for warning in &config.deprecated_keys {
                eprintln!("warning: {warning}");
            }
            print!("{}", toml::to_string_pretty(&config)?);
            Ok(())
        }
        Command::IssueMember(args) => {
            print!("{}", issue_member(&args)?);
            Ok(())
        }
        Command::Dump(args) => {
            let status = runtime.block_on(registrar::driver::fetch_status(args.status))?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(())
        }
    }
}

fn init_logging(config: &RegistrarConfig) -> anyhow::Result<()> {
    daemon_common::init_logging(config.log.format, &config.log.filter).context("log.filter")
}

async fn run(config: RegistrarConfig) -> anyhow::Result<()> {
    // Installed first so an early SIGHUP cannot kill the process.
    let mut signals = daemon_common::Signals::install().context("installing signal handlers")?;
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the Prometheus recorder")?;
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    if config.access.registration_networks.is_empty() {
        tracing::warn!(
            "`access.registration_networks` is empty: any host that reaches this registrar \
             may register pool elements (RFC 5355); list the PEs' networks"
        );
    }
    let closed: Vec<&String> = config.membership.authority_key_files.keys().collect();
    if closed.is_empty() {
        tracing::warn!(
            "no pool is closed (`membership.authority_key_files` is empty): any PE that reaches \
             this registrar may join any pool (RFC 5355 §2.2); give each billing pool a \
             membership authority (docs/security.md)"
        );
    } else {
        tracing::info!(pools = ?closed, "closed pools: PEs must prove membership; other pools are open");
    }
    let registrar = Registrar::start(config, Some(metrics)).await?;
    signals.stop().await;
    tracing::info!("stopping: closing associations");
    registrar.stop().await;
    tracing::info!("stopped");
    Ok(())
}

fn print_status(status: &Status) {
    println!(
        "registrar {:#010x}: {} pool(s), {} pool element(s), {} association(s)",
        status.server_id, status.pool_count, status.element_count, status.associations
    );
    for pool in &status.pools {
        println!(
            "\npool {:?} (0x{}) policy {} ({:#010x}), {} PE(s)",
            pool.handle,
            pool.handle_hex,
            pool.policy,
            pool.policy_type,
            pool.elements.len()
        );
        for pe in &pool.elements {
            println!(
                "  PE {:#010x}  {:<28} {:<36} assoc={} home={:#010x} life={}ms heard={}ms ago{} ur={}",
                pe.id,
                pe.user_transport,
                pe.policy,
                pe.owner_association,
                pe.home_registrar,
                pe.registration_life_ms,
                pe.last_heard_ms_ago,
                if pe.awaiting_keep_alive_ack {
                    " (keep-alive pending)"
                } else {
                    ""
                },
                pe.unreachable_reports
            );
            if let (Some(authority), Some(not_after)) =
                (pe.membership_authority, pe.membership_not_after)
            {
                println!(
                    "      member: authority key {authority:#010x}, certificate valid until {not_after} (Unix s)"
                );
            }
        }
    }
    let counters = &status.counters;
    println!(
        "\ncounters: registrations={} reregistrations={} deregistrations={} resolutions={} \
         keep_alives_sent={} keep_alive_failures={} expiries={} unreachable_removals={} unreachable_probes={} unreachable_refuted={} rate_limited={}",
        counters.registrations,
        counters.reregistrations,
        counters.deregistrations,
        counters.handle_resolutions,
        counters.keep_alives_sent,
        counters.keep_alive_failures,
        counters.expiries,
        counters.unreachable_removals,
        counters.unreachable_probes,
        counters.unreachable_refuted,
        counters.rate_limited
    );
    if !counters.registration_rejects.is_empty() {
        println!("registration rejects: {:?}", counters.registration_rejects);
    }
    if !counters.malformed.is_empty() {
        println!("malformed: {:?}", counters.malformed);
    }
    if !counters.deregistration_rejects.is_empty() {
        println!(
            "deregistration rejects: {:?}",
            counters.deregistration_rejects
        );
    }
    if !counters.peer_membership_rejects.is_empty() {
        println!(
            "PEs from peers refused (membership): {:?}",
            counters.peer_membership_rejects
        );
    }
    if let Some(enrp) = &status.enrp {
        println!(
            "\nENRP: own PE checksum {:#06x}, handlespace checksum {:#06x}, takeovers {}, adopted PEs {}, audit mismatches {}",
            enrp.own_checksum,
            enrp.handlespace_checksum,
            enrp.counters.takeovers,
            enrp.counters.adopted_pes,
            enrp.counters.audit_mismatches
        );
        for peer in &enrp.peers {
            println!(
                "  peer {:#010x} {:<22} {:<8} heard {}ms ago, {} home PE(s), checksum theirs {} ours {:#06x}",
                peer.server_id,
                peer.address.as_deref().unwrap_or("?"),
                peer.state,
                peer.last_heard_ms_ago,
                peer.home_elements,
                peer.remote_checksum
                    .map_or("?".to_string(), |c| format!("{c:#06x}")),
                peer.local_checksum
            );
        }
        if enrp.counters.multicast_presences_heard > 0 {
            println!(
                "  ENRP multicast: {} Presence(s) heard, {} peer(s) learnt from them",
                enrp.counters.multicast_presences_heard, enrp.counters.multicast_peers_learned
            );
        }
        if !enrp.counters.malformed.is_empty() {
            println!("  ENRP malformed/refused: {:?}", enrp.counters.malformed);
        }
    }
}
