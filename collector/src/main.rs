//! `collector`: run the IPFIX collecting process, or query its store.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use collector::aggregate::{self, TopBy, TopOrder};
use collector::config::{CollectorConfig, LogFormat};
use collector::prefix::IpPrefix;
use collector::query::{self, Filter, Format};
use collector::sql::SqlFormat;
use collector::store::Store;

/// poolflow collector: an IPFIX collecting process (RFC 7011) that stores
/// every data record durably in SQLite.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Receive IPFIX over UDP and TCP and store it (SIGTERM or SIGINT stops
    /// it gracefully; SIGHUP reloads the pool policy parameters).
    Run(RunArgs),
    /// Print the effective configuration (defaults + file + flags) as TOML.
    ShowConfig(RunArgs),
    /// Print stored records as JSON lines or CSV, filtered (exporter,
    /// domain, time, address or prefix, port, protocol), or their top-N by
    /// a field or sums per time bin.
    Query(QueryArgs),
    /// Run one SQL statement over a store (read-only); the table `flows`
    /// holds every stored record decoded, with typed columns.
    Sql(SqlArgs),
    /// Per exporter and observation domain: records stored and lost.
    Stats(StatsArgs),
    /// Prove billing record continuity across every collector's store: gaps,
    /// duplicates, conflicts, handovers; or of the PostgreSQL shared tier
    /// (--postgres). Exit 0: no gap, no conflict; 1:
    /// gaps, conflicts or unreadable blocks; 2: usage or I/O error.
    Audit(AuditArgs),
}

#[derive(Args)]
struct AuditArgs {
    /// SQLite store of one collector (repeat for every collector of the pool).
    #[arg(
        long = "database",
        value_name = "FILE",
        required_unless_present = "postgres",
        conflicts_with = "postgres"
    )]
    databases: Vec<PathBuf>,
    /// Audit the PostgreSQL shared tier instead (docs/postgres.md): every
    /// collector that shipped there is one store.
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Only this billing exporter id.
    #[arg(long, value_name = "ID")]
    exporter: Option<u32>,
    /// Only this observation domain.
    #[arg(long, value_name = "D")]
    domain: Option<u32>,
    /// List at most this many gap ranges, duplicate ranges and conflicts per
    /// exporter/domain (all are counted); 0 lists all.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    list_limit: usize,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
    /// Records the exporter declared lost (not sent after its restart)
    /// fail the audit too; by default they are listed apart and pass.
    #[arg(long)]
    fail_on_declared_loss: bool,
    /// An exporter's state file (repeatable): its next sequence per domain
    /// must be accounted for by the stores (a tail stored elsewhere, or
    /// nowhere, is a gap). Exact after the exporter's clean stop.
    #[arg(long = "exporter-state", value_name = "FILE")]
    exporter_states: Vec<PathBuf>,
}

#[derive(Args)]
struct StatsArgs {
    /// SQLite database file written by `collector run`.
    #[arg(long)]
    database: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct RunArgs {
    /// TOML configuration file (see deploy/collector.toml); flags override
    /// it. Optional: without it the defaults apply (UDP and TCP on port
    /// 4739, SCTP over UDP on 9899, store collector.sqlite, no pool;
    /// `show-config` prints them).
    #[arg(short, long, value_name = "FILE", env = "POOLFLOW_COLLECTOR_CONFIG")]
    config: Option<PathBuf>,
    /// SQLite database file.
    #[arg(long)]
    database: Option<PathBuf>,
    /// UDP address to receive on (repeatable; replaces the file's list).
    #[arg(long = "udp", value_name = "ADDR")]
    udp_listen: Vec<SocketAddr>,
    /// TCP address to accept on (repeatable; replaces the file's list).
    #[arg(long = "tcp", value_name = "ADDR")]
    tcp_listen: Vec<SocketAddr>,
    /// TCP address for IPFIX over TLS (repeatable; replaces the file's list;
    /// needs `[tls]` in the file).
    #[arg(long = "tls", value_name = "ADDR")]
    tls_listen: Vec<SocketAddr>,
    /// UDP address for IPFIX over SCTP over UDP (repeatable; replaces the file's list).
    #[arg(long = "sctp", value_name = "ADDR")]
    sctp_listen: Vec<SocketAddr>,
    /// TCP address for pool users with stream/PPID framing (repeatable;
    /// replaces the file's list).
    #[arg(long = "framed-tcp", value_name = "ADDR")]
    framed_tcp_listen: Vec<SocketAddr>,
    /// Do not accept SCTP over UDP at all.
    #[arg(long)]
    no_sctp: bool,
    /// Do not listen on UDP at all.
    #[arg(long)]
    no_udp: bool,
    /// Do not listen on TCP at all.
    #[arg(long)]
    no_tcp: bool,
    /// Prometheus scrape address (serves /metrics).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// UDP template lifetime without refresh ("30m"; whole seconds).
    #[arg(long, value_name = "DURATION", value_parser = daemon_common::duration::parse)]
    template_lifetime: Option<std::time::Duration>,
    /// Deprecated: --template-lifetime in seconds.
    #[arg(long, hide = true, conflicts_with = "template_lifetime")]
    template_lifetime_secs: Option<u64>,
    /// Log format (`RUST_LOG` sets the level, default info).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

#[derive(Args)]
struct QueryArgs {
    /// SQLite database file written by `collector run`.
    #[arg(long)]
    database: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "json")]
    format: Format,
    /// Only this exporter: "ip" (any port) or "ip:port".
    #[arg(long)]
    exporter: Option<String>,
    /// Only this observation domain.
    #[arg(long)]
    domain: Option<u32>,
    /// Export time at or after: unix seconds or RFC 3339 (2026-11-21T10:00:00Z).
    #[arg(long, value_parser = parse_time)]
    since: Option<i64>,
    /// Export time before: unix seconds or RFC 3339.
    #[arg(long, value_parser = parse_time)]
    until: Option<i64>,
    /// At most this many records.
    #[arg(long)]
    limit: Option<u64>,
    /// Source address in this prefix (192.0.2.0/24, 2001:db8::/32, or one address).
    #[arg(long, value_name = "PREFIX")]
    src: Option<IpPrefix>,
    /// Destination address in this prefix.
    #[arg(long, value_name = "PREFIX")]
    dst: Option<IpPrefix>,
    /// Source or destination address in this prefix.
    #[arg(long, value_name = "PREFIX")]
    addr: Option<IpPrefix>,
    /// Source port.
    #[arg(long, value_name = "PORT")]
    src_port: Option<u16>,
    /// Destination port.
    #[arg(long, value_name = "PORT")]
    dst_port: Option<u16>,
    /// Source or destination port.
    #[arg(long, value_name = "PORT")]
    port: Option<u16>,
    /// IP protocol: tcp, udp, icmp, ipv6-icmp, sctp, gre, esp or a number.
    #[arg(long, value_name = "PROTO", value_parser = query::parse_protocol)]
    protocol: Option<u8>,
    /// Print the N groups of records with the most --order, grouped --by a
    /// field, instead of records.
    #[arg(long, value_name = "N", requires = "by", conflicts_with_all = ["bin", "limit"])]
    top: Option<usize>,
    /// The field --top groups by.
    #[arg(long, value_enum, requires = "top")]
    by: Option<TopBy>,
    /// What --top ranks by.
    #[arg(long, value_enum, default_value = "bytes", requires = "top")]
    order: TopOrder,
    /// Print records, packets and octets per time bin of this width (1m,
    /// 5m, 1h; by flow start, else export time) instead of records.
    #[arg(long, value_name = "DURATION", value_parser = daemon_common::duration::parse,
          conflicts_with = "limit")]
    bin: Option<std::time::Duration>,
}

#[derive(Args)]
struct SqlArgs {
    /// SQLite database file written by `collector run`.
    #[arg(long)]
    database: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: SqlFormat,
    /// One SQL statement, e.g. "SELECT src_addr, sum(octets) FROM flows GROUP BY 1".
    statement: String,
}

fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(secs) = s.parse::<i64>() {
        return Ok(secs);
    }
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("`{s}` is neither unix seconds nor RFC 3339: {e}"))?
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .map_err(|_| format!("`{s}` is before 1970"))
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(args),
        Command::ShowConfig(args) => {
            let mut config = args.effective_config()?;
            // A secret must not end up in a terminal scrollback or a ticket.
            if let Some(pool) = &mut config.pool
                && pool.cookie_key.is_some()
            {
                pool.cookie_key = Some("<redacted>".to_string());
            }
            if let Some(postgres) = &mut config.postgres {
                postgres.url = collector::postgres::redact(&postgres.url);
            }
            for warning in &config.deprecated_keys {
                eprintln!("warning: {warning}");
            }
            print!("{}", toml::to_string_pretty(&config)?);
            Ok(())
        }
        Command::Query(args) => query(args),
        Command::Sql(args) => sql(args),
        Command::Stats(args) => stats(args),
        Command::Audit(args) => audit(args),
    }
}

impl RunArgs {
    /// Defaults, then the file, then the flags.
    fn effective_config(&self) -> Result<CollectorConfig> {
        let args = self.clone();
        let mut config = match &args.config {
            Some(path) => CollectorConfig::from_file(path)?,
            None => CollectorConfig::default(),
        };
        if let Some(db) = args.database {
            config.database = db;
        }
        if !args.udp_listen.is_empty() {
            config.udp_listen = args.udp_listen;
        }
        if !args.tcp_listen.is_empty() {
            config.tcp_listen = args.tcp_listen;
        }
        if !args.tls_listen.is_empty() {
            config.tls_listen = args.tls_listen;
        }
        if !args.sctp_listen.is_empty() {
            config.sctp_listen = args.sctp_listen;
        }
        if !args.framed_tcp_listen.is_empty() {
            config.framed_tcp_listen = args.framed_tcp_listen;
        }
        if args.no_sctp {
            config.sctp_listen.clear();
        }
        if args.no_udp {
            config.udp_listen.clear();
        }
        if args.no_tcp {
            config.tcp_listen.clear();
        }
        if args.metrics.is_some() {
            config.metrics_listen = args.metrics;
        }
        if let Some(lifetime) = args.template_lifetime {
            config.template_lifetime = lifetime;
        }
        if let Some(secs) = args.template_lifetime_secs {
            config.template_lifetime = std::time::Duration::from_secs(secs);
            config.deprecated_keys.push(format!(
                "--template-lifetime-secs is deprecated: use --template-lifetime {secs}s"
            ));
        }
        if let Some(format) = args.log_format {
            config.log_format = format;
        }
        config.validate()?;
        Ok(config)
    }
}

fn run(args: RunArgs) -> Result<()> {
    let config = args.effective_config()?;
    daemon_common::init_logging(config.log_format, "info")?;
    for warning in &config.deprecated_keys {
        tracing::warn!("{warning}");
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        // Installed before anything starts so an early SIGHUP cannot kill
        // the process.
        let mut signals =
            daemon_common::Signals::install().context("installing signal handlers")?;
        if let Some(addr) = config.metrics_listen {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .with_http_listener(addr)
                .install()
                .with_context(|| format!("starting the metrics endpoint on {addr}"))?;
        }
        let collector = collector::start(&config).await?;
        // Printed on stdout so scripts can learn ports chosen by the kernel.
        for addr in &collector.udp_addrs {
            println!("listening udp {addr}");
        }
        for addr in &collector.tcp_addrs {
            println!("listening tcp {addr}");
        }
        for addr in &collector.tls_addrs {
            println!("listening tls {addr}");
        }
        for addr in &collector.sctp_addrs {
            println!("listening sctp-over-udp {addr}");
        }
        std::io::stdout().flush()?;
        serve_until_termination(&mut signals, &collector, args.config.as_deref(), &config).await;
        tracing::info!("stopping: committing received records");
        collector.shutdown().await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Runs until SIGTERM or SIGINT. SIGHUP reloads the configuration file:
/// what can change without a restart (the pool policy parameters:
/// priority, weight, load) is registered at once; anything else is
/// reported as needing a restart.
async fn serve_until_termination(
    signals: &mut daemon_common::Signals,
    collector: &collector::RunningCollector,
    config_path: Option<&std::path::Path>,
    running: &CollectorConfig,
) {
    loop {
        match signals.next().await {
            daemon_common::DaemonSignal::Stop => return,
            daemon_common::DaemonSignal::Reload => {
                let Some(path) = config_path else {
                    tracing::warn!("SIGHUP: no --config file to reload");
                    continue;
                };
                match CollectorConfig::from_file(path) {
                    Ok(new) => match collector.reload_pool(running, &new) {
                        Ok(summary) => {
                            tracing::info!(config = %path.display(), "SIGHUP: {summary}")
                        }
                        Err(error) => {
                            tracing::error!(config = %path.display(), "SIGHUP: not reloaded: {error:#}")
                        }
                    },
                    Err(error) => {
                        tracing::error!(config = %path.display(), "SIGHUP: not reloaded: {error:#}")
                    }
                }
            }
        }
    }
}

fn query(args: QueryArgs) -> Result<()> {
    let conn = Store::open_read_only(&args.database)?;
    let filter = Filter {
        exporter: args.exporter,
        domain: args.domain,
        since: args.since,
        until: args.until,
        limit: args.limit,
        src: args.src,
        dst: args.dst,
        addr: args.addr,
        src_port: args.src_port,
        dst_port: args.dst_port,
        port: args.port,
        protocol: args.protocol,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match (args.top, args.by, args.bin) {
        (Some(n), Some(by), _) => {
            let rows = aggregate::top(&conn, &filter, by, args.order, n)?;
            aggregate::write_top(&rows, by, args.format, &mut out)?;
        }
        (_, _, Some(width)) => {
            let rows = aggregate::bins(&conn, &filter, width)?;
            aggregate::write_bins(&rows, args.format, &mut out)?;
        }
        _ => {
            query::run(&conn, &filter, args.format, &mut out)?;
        }
    }
    out.flush()?;
    Ok(())
}

fn sql(args: SqlArgs) -> Result<()> {
    let conn = collector::sql::open(&args.database)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    collector::sql::run(&conn, &args.statement, args.format, &mut out)?;
    out.flush()?;
    Ok(())
}

fn stats(args: StatsArgs) -> Result<()> {
    let conn = Store::open_read_only(&args.database)?;
    let summaries = query::domain_summaries(&conn)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summaries)?);
        return Ok(());
    }
    println!(
        "{:<24} {:<9} {:>10} {:>12} {:>12} {:>9}",
        "exporter", "transport", "domain", "records", "lost", "anomalies"
    );
    for s in summaries {
        println!(
            "{:<24} {:<9} {:>10} {:>12} {:>12} {:>9}",
            s.exporter, s.transport, s.domain, s.records, s.lost_records, s.sequence_events
        );
    }
    Ok(())
}

/// Exits with the audit's verdict rather than returning: 1 means "records
/// lost or conflicting", so an I/O error must not exit 1 too (it exits 2,
/// like clap's usage errors).
fn audit(args: AuditArgs) -> Result<()> {
    let options = collector::audit::AuditOptions {
        databases: args.databases,
        postgres: args.postgres,
        exporter: args.exporter,
        domain: args.domain,
        list_limit: args.list_limit,
        progress: !args.quiet,
        fail_on_declared_loss: args.fail_on_declared_loss,
        exporter_states: args.exporter_states,
    };
    let report = match collector::audit::run(&options) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("collector audit: {e:#}");
            std::process::exit(2);
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &report)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        report.write_text(&mut out)
    };
    if let Err(e) = written.and_then(|()| out.flush()) {
        eprintln!("collector audit: writing the report: {e}");
        std::process::exit(2);
    }
    std::process::exit(if report.passed() { 0 } else { 1 });
}
