//! `spoolhouse`: the one binary, a thin command-line front over the crates.

mod admin;
#[cfg(feature = "lab")]
mod bench_clients;
#[cfg(feature = "lab")]
mod bench_fleet;
#[cfg(feature = "lab")]
mod bench_progress;
#[cfg(feature = "lab")]
mod bench_report;
#[cfg(feature = "lab")]
mod bench_series;
#[cfg(feature = "lab")]
mod bench_shipper;
#[cfg(feature = "lab")]
mod cmd_bench;
mod cmd_codegen;
mod cmd_collector;
mod cmd_config;
#[cfg(feature = "lab")]
mod cmd_dc;
#[cfg(feature = "lab")]
mod cmd_demo;
#[cfg(feature = "lab")]
mod cmd_local;
mod cmd_query;
mod cmd_registry;
mod cmd_relay;
mod cmd_send;
mod cmd_shipper;
mod cmd_spool;
#[cfg(feature = "lab")]
mod demo_traffic;
mod logging;
#[cfg(feature = "lab")]
mod machine;

use clap::{Parser, Subcommand};

/// Spoolhouse: a multi-datacenter event pipeline.
///
/// Apps hand events to a collector on their own host; it appends them to a
/// local spool; a shipper streams the spool into the datacenter's ClickHouse
/// and keeps the latest keyed state in Redis; a query service reads both,
/// across datacenters for global answers. Operators declare every
/// datacenter (the topology file) and every event type (the registry) once.
#[derive(Parser, Debug)]
#[command(name = "spoolhouse", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    log: logging::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check the topology and registry, and render everything from them.
    Config(cmd_config::ConfigArgs),
    /// Run real ZooKeeper, ClickHouse and Redis servers for a topology on this machine.
    #[cfg(feature = "lab")]
    Local(cmd_local::LocalArgs),
    /// The main job: two datacenters, history and a minute of live traffic, then what the query services find.
    #[cfg(feature = "lab")]
    Demo(cmd_demo::DemoArgs),
    /// Serve a datacenter's HTTP API: watch progress (Redis, then ClickHouse).
    Query(cmd_query::QueryArgs),
    /// Ship a host's spool into its datacenter's ClickHouse and Redis.
    Shipper(cmd_shipper::ShipperArgs),
    /// Take the batches of a datacenter's app hosts (relay mode) and ship them into its ClickHouse in large inserts.
    Relay(cmd_relay::RelayArgs),
    /// Inspect or verify (fsck) a spool directory.
    Spool(cmd_spool::SpoolArgs),
    /// Benchmarks measured beside a reference on the same machine.
    #[cfg(feature = "lab")]
    Bench(cmd_bench::BenchArgs),
    /// Take events from apps (Unix socket, loopback TCP, inbox files) into the spool.
    Collector(cmd_collector::CollectorArgs),
    /// Send JSON lines from a file or stdin to a collector; print what was acked and rejected.
    Send(cmd_send::SendArgs),
    /// Typed clients generated from the registry (one type per event type, the collector's rules checked on the client).
    Codegen(cmd_codegen::CodegenArgs),
    /// What a registry change does: safe or breaking, and what it breaks.
    Registry(cmd_registry::RegistryArgs),
    /// Cut a local datacenter's links to the others, or heal them.
    #[cfg(feature = "lab")]
    Dc(cmd_dc::DcArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init(&cli.log);
    let result = match cli.command {
        Command::Config(a) => cmd_config::run(a),
        #[cfg(feature = "lab")]
        Command::Local(a) => cmd_local::run(a),
        #[cfg(feature = "lab")]
        Command::Demo(a) => cmd_demo::demo(a),
        Command::Query(a) => cmd_query::run(a),
        Command::Shipper(a) => cmd_shipper::run(a),
        Command::Relay(a) => cmd_relay::run(a),
        Command::Spool(a) => cmd_spool::run(a),
        #[cfg(feature = "lab")]
        Command::Bench(a) => cmd_bench::run(a),
        Command::Collector(a) => cmd_collector::run(a),
        Command::Send(a) => cmd_send::run(a),
        Command::Registry(a) => cmd_registry::run(a),
        Command::Codegen(a) => cmd_codegen::run(a),
        #[cfg(feature = "lab")]
        Command::Dc(a) => cmd_dc::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // A closed pipe (`spoolhouse … | head`) is the reader's choice, not an error.
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return std::process::ExitCode::SUCCESS;
            }
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
