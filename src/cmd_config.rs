//! `spoolhouse config`: validate the declared files, render from them.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use dc_config::{render, Declared};

/// Arguments of `spoolhouse config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check a topology and a registry; print every problem with file, line, key and rule.
    Validate(Files),
    /// Render ClickHouse and ZooKeeper configs, the schema, service configs,
    /// the ClickHouse users' password files and the Ansible inventory into
    /// a folder. Passwords are made once: those already in the secrets
    /// folder are kept, missing ones are generated (mode 0600).
    Render {
        #[command(flatten)]
        files: Files,
        /// Output folder (created; files in it are replaced).
        #[arg(long)]
        out: PathBuf,
        /// Folder of the ClickHouse users' password files, one
        /// `clickhouse-<user>.password` each (default: OUT/secrets). Keep
        /// it between renders: a new password needs every server and
        /// service redeployed.
        #[arg(long)]
        secrets: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct Files {
    /// Topology file (TOML): datacenters, servers, ports, paths.
    topology: PathBuf,
    /// Event registry file (TOML): event types, fields, state, metrics.
    registry: PathBuf,
}

fn load(f: &Files) -> anyhow::Result<Declared> {
    Ok(Declared::load(&f.topology, &f.registry)?)
}

/// Runs `spoolhouse config …`.
pub fn run(args: ConfigArgs) -> anyhow::Result<()> {
    match args.command {
        ConfigCommand::Validate(files) => {
            let d = load(&files)?;
            let servers = d.topology.replicas().count();
            let hosts: usize = d
                .topology
                .datacenter
                .iter()
                .map(|dc| dc.app_hosts().len())
                .sum();
            let metrics: usize = d.registry.event.values().map(|e| e.metric.len()).sum();
            println!(
                "ok: {} datacenter(s), {hosts} app host(s), {servers} ClickHouse server(s); {} event type(s), {metrics} metric(s)",
                d.topology.datacenter.len(),
                d.registry.event.len(),
            );
            Ok(())
        }
        ConfigCommand::Render {
            files,
            out,
            secrets,
        } => {
            let d = load(&files)?;
            let secrets = secrets.unwrap_or_else(|| out.join("secrets"));
            let credentials = dc_config::credentials::Credentials::load_or_create(&secrets)?;
            for dc in d
                .topology
                .datacenter
                .iter()
                .filter(|dc| !dc.relay.is_empty())
            {
                dc_config::credentials::relay_secret_load_or_create(&secrets, &dc.name)?;
            }
            let rendered = render::render(&d.topology, &d.registry, &d.registry_text, &credentials);
            render::write_all(&out, &rendered)
                .with_context(|| format!("writing rendered files into {}", out.display()))?;
            for f in &rendered {
                println!("{}", out.join(&f.path).display());
            }
            Ok(())
        }
    }
}
