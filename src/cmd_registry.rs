//! `spoolhouse registry`: what a registry change does before it ships.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Subcommand};
use dc_config::registry::Registry;
use dc_config::registry_diff::{self, Verdict};

/// Arguments of `spoolhouse registry`.
#[derive(Debug, Args)]
pub struct RegistryArgs {
    #[command(subcommand)]
    command: RegistryCommand,
}

#[derive(Debug, Subcommand)]
enum RegistryCommand {
    /// Compare two registries: each change is safe (old senders, stored
    /// history and series unaffected) or breaking, with what it breaks
    /// (senders, history, series, state). Exits 1 on a breaking change
    /// unless --allow-breaking; 0 otherwise.
    Diff {
        /// The registry in service (events.toml).
        old: PathBuf,
        /// The registry about to ship.
        new: PathBuf,
        /// Report breaking changes but exit 0 (a deliberate change).
        #[arg(long)]
        allow_breaking: bool,
    },
}

/// Runs `spoolhouse registry`.
pub fn run(args: RegistryArgs) -> anyhow::Result<()> {
    match args.command {
        RegistryCommand::Diff {
            old,
            new,
            allow_breaking,
        } => {
            let (old, new) = (Registry::load(&old)?, Registry::load(&new)?);
            let changes = registry_diff::diff(&old, &new);
            for c in &changes {
                println!("{c}");
            }
            let breaking = changes
                .iter()
                .filter(|c| c.verdict == Verdict::Breaking)
                .count();
            println!("{} change(s), {breaking} breaking", changes.len());
            if breaking > 0 && !allow_breaking {
                bail!("{breaking} breaking change(s): ship them deliberately with --allow-breaking, or make them safe (optional fields, new values and metrics instead of changed ones)");
            }
            Ok(())
        }
    }
}
