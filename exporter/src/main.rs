use clap::Parser;

/// poolflow exporter (placeholder until its issue lands).
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
