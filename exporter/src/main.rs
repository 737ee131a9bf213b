//! `exporter`: send IPFIX to a collector.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use exporter::config::StreamConfig;
use exporter::generate::{GenerateConfig, GenerateTransport, generate};
use exporter::pool_user::Notice;
use exporter::record_queue::{RecordSender, TrySendError, record_queue};
use exporter::relay::RelayOptions;
use exporter::replay::RecordBytes;
use exporter::stream::{InputRecord, Progress, RecordClass};
use protocol::ipfix::flow::{FLOW_TEMPLATE_ID, FlowRecord, flow_template};

/// poolflow exporter: sends IPFIX flow records to collectors.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send synthetic flow records (standard IPFIX, 11 fields) at a given rate.
    Generate(GenerateArgs),
    /// Stream synthetic flow records to a collector pool as an RSerPool pool
    /// user: resolve the pool at the registrars, select by policy, fail over
    /// and fail back without loss (billing cookies, replay).
    Stream(StreamArgs),
    /// Relay routers into the pool: listen for IPFIX and NetFlow v9 over
    /// UDP and TCP (the config file's [relay] section) and stream every
    /// record to the collector pool as `stream` does (billing sequences,
    /// cookies, replay, failover). Runs until SIGTERM/SIGINT, then drains.
    Relay(RelayArgs),
    /// Print the effective configuration (defaults + file + flags) as TOML.
    ShowConfig(ConfigArgs),
}

/// How long `stream` and `relay` wait for the last cookies before exiting.
#[derive(Args)]
struct ExitDrainArgs {
    /// Longest wait for the cookies of the records sent before exiting
    /// ("30s", "2m"; then exit non-zero, unacknowledged records reported).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = daemon_common::duration::parse)]
    exit_drain_timeout: Duration,
    /// Deprecated: --exit-drain-timeout in seconds.
    #[arg(long, hide = true, conflicts_with = "exit_drain_timeout")]
    exit_drain_timeout_secs: Option<u64>,
}

impl ExitDrainArgs {
    fn timeout(&self) -> Duration {
        match self.exit_drain_timeout_secs {
            Some(secs) => {
                tracing::warn!(
                    "--exit-drain-timeout-secs is deprecated: use --exit-drain-timeout {secs}s"
                );
                Duration::from_secs(secs)
            }
            None => self.exit_drain_timeout,
        }
    }
}

/// The configuration options `stream`, `relay` and `show-config` share.
#[derive(Args)]
struct ConfigArgs {
    /// TOML configuration file (see exporter/exporter.toml.example).
    /// Required: the exporter id, pool handle, registrars and state file
    /// have no defaults.
    #[arg(short, long, value_name = "FILE", env = "POOLFLOW_EXPORTER_CONFIG")]
    config: PathBuf,
    /// Log format (`RUST_LOG` sets the level, default info); overrides the
    /// file's `log_format`.
    #[arg(long, value_enum)]
    log_format: Option<daemon_common::LogFormat>,
}

impl ConfigArgs {
    /// The file, then the flags.
    fn effective_config(&self) -> Result<StreamConfig> {
        let mut config = StreamConfig::load(&self.config)?;
        if let Some(format) = self.log_format {
            config.log_format = format;
        }
        Ok(config)
    }
}

#[derive(Args)]
struct RelayArgs {
    /// The configuration, with a [relay] section.
    #[command(flatten)]
    config: ConfigArgs,
    /// After a stop signal: longest wait for the last cookies, e.g. "30s"
    /// (unacknowledged records stay in the spill for the next run).
    #[command(flatten)]
    exit_drain: ExitDrainArgs,
}

#[derive(Args)]
struct StreamArgs {
    /// The configuration.
    #[command(flatten)]
    config: ConfigArgs,
    /// Records to send (then wait for their cookies and exit).
    #[arg(long, default_value_t = 100_000)]
    records: u64,
    /// Records per second (default: as fast as the pool takes them).
    #[arg(long)]
    rate: Option<u64>,
    /// Number of the first synthetic record (FlowRecord::synthetic).
    #[arg(long, default_value_t = 0)]
    first_record: u64,
    /// After the last record or a stop signal: longest wait for the
    /// cookies.
    #[command(flatten)]
    exit_drain: ExitDrainArgs,
    /// Also send this many best-effort records (PR-SCTP, not acknowledged
    /// or replayed), interleaved with the billing ones, in the first of
    /// `[best_effort] domains`; they count toward `--rate`.
    #[arg(long, default_value_t = 0)]
    best_effort_records: u64,
}

#[derive(Args)]
struct GenerateArgs {
    /// Collector address, e.g. 127.0.0.1:4739.
    #[arg(long)]
    to: SocketAddr,
    /// Transport to the collector.
    #[arg(long, value_enum, default_value = "udp")]
    transport: GenerateTransport,
    /// Records to send.
    #[arg(long, default_value_t = 100_000)]
    records: u64,
    /// Records per second (default: as fast as possible).
    #[arg(long)]
    rate: Option<u64>,
    /// Observation domain id.
    #[arg(long, default_value_t = 1)]
    domain: u32,
    /// Largest IPFIX message in bytes.
    #[arg(long, default_value_t = 1400)]
    message_size: usize,
    /// UDP template refresh interval ("10s").
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = daemon_common::duration::parse)]
    template_refresh: Duration,
    /// Deprecated: --template-refresh in seconds.
    #[arg(long, hide = true, conflicts_with = "template_refresh")]
    template_refresh_secs: Option<u64>,
    /// Number of the first synthetic record.
    #[arg(long, default_value_t = 0)]
    first_record: u64,
    /// `--transport tls`: PEM file of the CA that signed the collector's
    /// certificate (the only CA trusted).
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// `--transport tls`: our certificate (PEM) for a collector that asks
    /// for one (`client_ca_file`); needs --client-key.
    #[arg(long, value_name = "FILE", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// `--transport tls`: the private key (PEM, mode 600) of --client-cert.
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// `--transport tls`: the name the collector's certificate must carry
    /// (default: the IP address of --to).
    #[arg(long)]
    server_name: Option<String>,
    /// `--transport sctp`: send runs of packets with one system call (UDP
    /// GSO), as the exporter's `udp_segmentation_offload`.
    #[arg(long)]
    udp_segmentation_offload: bool,
    /// Log format (`RUST_LOG` sets the level, default info).
    #[arg(long, value_enum, default_value = "text")]
    log_format: daemon_common::LogFormat,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Stream(a) => stream(a),
        Command::Relay(a) => relay(a),
        Command::ShowConfig(a) => {
            let config = a.effective_config()?;
            for warning in &config.deprecated_keys {
                eprintln!("warning: {warning}");
            }
            print!("{}", toml::to_string_pretty(&config)?);
            Ok(())
        }
        Command::Generate(a) => {
            daemon_common::init_logging(a.log_format, "info")?;
            let config = GenerateConfig {
                target: a.to,
                transport: a.transport,
                records: a.records,
                rate: a.rate,
                observation_domain: a.domain,
                message_size: a.message_size,
                template_refresh: match a.template_refresh_secs {
                    Some(secs) => {
                        tracing::warn!(
                            "--template-refresh-secs is deprecated: use --template-refresh {secs}s"
                        );
                        Duration::from_secs(secs)
                    }
                    None => a.template_refresh,
                },
                first_record: a.first_record,
                tls: generate_tls(&a)?,
                udp_segmentation_offload: a.udp_segmentation_offload,
            };
            let report = generate(&config, |sent| {
                // Handed to the transport, not yet acknowledged: the final
                // line counts what the collector acknowledged.
                eprintln!("queued {sent} of {} records", config.records)
            })?;
            println!(
                "sent {} records in {} messages ({} bytes) in {:.3} s: {:.0} records/s",
                report.records,
                report.messages,
                report.bytes,
                report.elapsed.as_secs_f64(),
                report.records_per_sec()
            );
            Ok(())
        }
    }
}

/// The TLS settings of `generate`: `--ca-file` is required with
/// `--transport tls` and meaningless without it.
fn generate_tls(a: &GenerateArgs) -> Result<Option<exporter::generate::GenerateTls>> {
    let tls_flag_given = a.ca_file.is_some() || a.client_cert.is_some() || a.server_name.is_some();
    if a.transport != GenerateTransport::Tls {
        anyhow::ensure!(
            !tls_flag_given,
            "--ca-file, --client-cert, --client-key and --server-name need --transport tls"
        );
        return Ok(None);
    }
    let ca_file = a
        .ca_file
        .clone()
        .context("--transport tls needs --ca-file (the CA of the collector's certificate)")?;
    Ok(Some(exporter::generate::GenerateTls {
        files: transport::tls::ClientTlsFiles {
            ca_file,
            identity: a.client_cert.clone().zip(a.client_key.clone()),
        },
        server_name: a.server_name.clone(),
    }))
}

fn stream(args: StreamArgs) -> Result<()> {
    let config = args.config.effective_config()?;
    daemon_common::init_logging(config.log_format, "info")?;
    for warning in &config.deprecated_keys {
        tracing::warn!("{warning}");
    }
    let runtime = tokio::runtime::Runtime::new().context("starting tokio")?;
    runtime.block_on(async move {
        // Installed before anything starts so an early SIGHUP cannot kill
        // the process; SIGTERM and SIGINT stop as Ctrl-C always did (the
        // unsent records keep their reserved sequences, the state is saved).
        let mut signals =
            daemon_common::Signals::install().context("installing signal handlers")?;
        if let Some(listen) = config.metrics_listen {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .with_http_listener(listen)
                .install()
                .with_context(|| format!("metrics endpoint on {listen}"))?;
        }
        let settings = config.stream_settings(
            vec![flow_template()],
            args.exit_drain.timeout(),
        )?;
        let best_effort = match (args.best_effort_records, config.best_effort.domains.first()) {
            (0, _) => None,
            (count, Some(&domain)) => Some((domain, count)),
            (_, None) => anyhow::bail!(
                "--best-effort-records needs a domain in `[best_effort] domains` of the config"
            ),
        };
        anyhow::ensure!(
            best_effort.is_none_or(|(domain, _)| domain != config.observation_domain),
            "`observation_domain` is a billing domain: it cannot be in `[best_effort] domains`"
        );
        let (input_tx, input) = record_queue(SYNTHETIC_QUEUE_RECORDS);
        // First SIGTERM/SIGINT: the input ends, the sent records drain (up
        // to --exit-drain-timeout-secs) and the state is saved, as at the
        // end of the records; a second one stops at once (state saved,
        // unacknowledged records reported). The same as `relay`.
        let (stop_input_tx, stop_input) = tokio::sync::watch::channel(false);
        let (second_signal_tx, second_signal) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            signals.stop().await;
            eprintln!("stopping: no more records, waiting for the cookies of those sent");
            let _ = stop_input_tx.send(true);
            signals.stop().await;
            eprintln!("second signal: stopping without waiting for cookies");
            let _ = second_signal_tx.send(());
        });
        tokio::spawn(synthetic_input(
            input_tx,
            stop_input,
            SyntheticInput {
                domain: config.observation_domain,
                first: args.first_record,
                count: args.records,
                best_effort,
                rate: args.rate,
            },
        ));
        let shutdown = async move {
            let _ = second_signal.await;
        };
        let report = exporter::stream::run(settings, input, shutdown, |progress| match progress {
            Progress::Status {
                records_in,
                records_sent,
                buffered,
                pe,
            } => eprintln!(
                "records in {records_in}, sent {records_sent}, awaiting cookie {buffered}, collector {}",
                pe.map_or("none".to_string(), |pe| format!("{pe:#010x}"))
            ),
            Progress::Notice(Notice::FailoverStarted { pe_id, cause }) => {
                eprintln!("FAILOVER from {pe_id:#010x}: {cause:?}")
            }
            Progress::Notice(Notice::DrainStarted { from, to }) => {
                eprintln!("FAILBACK: draining {from:#010x}, then {to:#010x}")
            }
            Progress::Notice(Notice::Streaming {
                pe_id,
                reason,
                pending,
            }) => eprintln!("streaming to {pe_id:#010x} ({reason:?}), {pending} records pending"),
            Progress::Notice(Notice::CookieRejected {
                pe_id,
                reason,
                detail,
            }) => eprintln!(
                "COOKIE REFUSED from {}: {} ({detail}); nothing released, collector avoided",
                pe_id.map_or("none".to_string(), |pe| format!("{pe:#010x}")),
                reason.label()
            ),
            Progress::Notice(_) => {}
        })
        .await?;
        println!(
            "{} records in, {} sent, {} failovers, {} failbacks, {} in {:.3} s",
            report.records_in,
            report.counters.records_sent,
            report.counters.failovers,
            report.counters.failbacks,
            if report.drained {
                "all acknowledged"
            } else {
                "NOT all acknowledged (only spilled records survive to the next run)"
            },
            report.elapsed.as_secs_f64()
        );
        if report.counters.declared_not_sent > 0 {
            println!(
                "declared never to be sent at this start: {} record sequences \
                 (lost with the previous run's memory or reserved and unused)",
                report.counters.declared_not_sent
            );
        }
        if best_effort.is_some() {
            println!(
                "best effort: {} sent, {} dropped from a full queue",
                report.counters.best_effort_sent, report.counters.best_effort_dropped
            );
        }
        anyhow::ensure!(report.drained, "records left unacknowledged");
        Ok(())
    })
}

fn relay(args: RelayArgs) -> Result<()> {
    let config = args.config.effective_config()?;
    daemon_common::init_logging(config.log_format, "info")?;
    for warning in &config.deprecated_keys {
        tracing::warn!("{warning}");
    }
    let runtime = tokio::runtime::Runtime::new().context("starting tokio")?;
    runtime.block_on(async move {
        if let Some(listen) = config.metrics_listen {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .with_http_listener(listen)
                .install()
                .with_context(|| format!("metrics endpoint on {listen}"))?;
        }
        let options = RelayOptions {
            exit_drain_timeout: args.exit_drain.timeout(),
        };
        let report = exporter::relay::run(config, options).await?;
        println!(
            "relay: {} records in, {} sent, {} failovers, {} failbacks, {} in {:.3} s",
            report.records_in,
            report.counters.records_sent,
            report.counters.failovers,
            report.counters.failbacks,
            if report.drained {
                "all acknowledged"
            } else {
                "NOT all acknowledged (spilled records are replayed by the next run)"
            },
            report.elapsed.as_secs_f64()
        );
        anyhow::ensure!(report.drained, "records left unacknowledged");
        Ok(())
    })
}

/// What [`synthetic_input`] generates.
struct SyntheticInput {
    /// Billing domain, first synthetic record number and count.
    domain: u32,
    first: u64,
    count: u64,
    /// Best-effort domain and count, spread evenly among the billing ones.
    best_effort: Option<(u32, u64)>,
    /// Records (of both kinds) per second; `None`: as fast as taken.
    rate: Option<u64>,
}

/// Records the synthetic input may queue ahead of the pool user.
const SYNTHETIC_QUEUE_RECORDS: usize = 16_384;
/// Records the synthetic input hands over together.
const SYNTHETIC_BATCH: usize = 256;

/// Synthetic records at a rate; the queue's capacity passes the exporter's
/// back-pressure on to this generator.
async fn synthetic_input(
    tx: RecordSender,
    mut stop: tokio::sync::watch::Receiver<bool>,
    input: SyntheticInput,
) {
    let base_millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let (best_effort_domain, best_effort_count) = input.best_effort.unwrap_or((0, 0));
    let total = input.count + best_effort_count;
    let started = Instant::now();
    let (mut billing_sent, mut best_effort_sent) = (0u64, 0u64);
    let mut batch = Vec::with_capacity(SYNTHETIC_BATCH);
    for i in 0..total {
        // An atomic version check per record; the value is read only once
        // it changed.
        if stop.has_changed().unwrap_or(false) && *stop.borrow() {
            return;
        }
        if let Some(rate) = input.rate.filter(|&r| r > 0) {
            let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
            if due > Instant::now() {
                // What is made goes before the wait: a rate never holds
                // records back in a half-full batch.
                if !hand_over(&tx, &mut stop, &mut batch).await {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep_until(due.into()) => {}
                    _ = stop.changed() => return,
                }
            }
        }
        // Best-effort records at evenly spaced positions (integer
        // Bresenham: exactly `best_effort_count` of `total`).
        let best_effort = (i + 1) * best_effort_count / total > i * best_effort_count / total;
        let (domain, number, class) = if best_effort {
            best_effort_sent += 1;
            (
                best_effort_domain,
                best_effort_sent - 1,
                RecordClass::BestEffort,
            )
        } else {
            billing_sent += 1;
            (
                input.domain,
                input.first + billing_sent - 1,
                RecordClass::Billing,
            )
        };
        batch.push(InputRecord {
            domain,
            template_id: FLOW_TEMPLATE_ID,
            bytes: RecordBytes::from_slice(&FlowRecord::synthetic(number, base_millis).to_bytes()),
            class,
        });
        if batch.len() == SYNTHETIC_BATCH && !hand_over(&tx, &mut stop, &mut batch).await {
            return;
        }
    }
    hand_over(&tx, &mut stop, &mut batch).await;
}

/// Queues `batch` (leaving it empty); false when the input must end (the
/// pool user is gone, or a stop signal came while the queue was full).
async fn hand_over(
    tx: &RecordSender,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    batch: &mut Vec<InputRecord>,
) -> bool {
    if batch.is_empty() {
        return true;
    }
    let records = std::mem::replace(batch, Vec::with_capacity(SYNTHETIC_BATCH));
    // While the queue has room a batch goes in at once, without a future
    // and a waker. A full queue waits, and a stop signal must end the input
    // even while the pool holds it back (no collector reachable).
    let records = match tx.try_send(records) {
        Ok(()) => return true,
        Err(TrySendError::Closed(_)) => return false,
        Err(TrySendError::Full(records)) => records,
    };
    tokio::select! {
        sent = tx.send(records) => sent.is_ok(),
        _ = stop.changed() => false,
    }
}
