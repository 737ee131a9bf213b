//! `exporter`: send IPFIX to a collector.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use exporter::generate::{GenerateConfig, GenerateTransport, generate};

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
    /// UDP template refresh interval, seconds.
    #[arg(long, default_value_t = 10)]
    template_refresh_secs: u64,
    /// Number of the first synthetic record.
    #[arg(long, default_value_t = 0)]
    first_record: u64,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Generate(a) => {
            let config = GenerateConfig {
                target: a.to,
                transport: a.transport,
                records: a.records,
                rate: a.rate,
                observation_domain: a.domain,
                message_size: a.message_size,
                template_refresh: Duration::from_secs(a.template_refresh_secs),
                first_record: a.first_record,
            };
            let report = generate(&config, |sent| {
                eprintln!("sent {sent} of {} records", config.records)
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
