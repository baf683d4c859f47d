//! `spoolhouse`: the one binary, a thin command-line front over the crates.

use clap::{Parser, Subcommand};

/// Spoolhouse: a multi-datacenter event pipeline.
#[derive(Parser, Debug)]
#[command(name = "spoolhouse", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {}
}
