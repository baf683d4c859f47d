//! `spoolhouse spool`: look into a spool directory and check it (an fsck).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

/// Arguments of `spoolhouse spool`.
#[derive(Debug, Args)]
pub struct SpoolArgs {
    #[command(subcommand)]
    command: SpoolCommand,
}

#[derive(Debug, Subcommand)]
enum SpoolCommand {
    /// List segments (state, sizes, frames), readers with their lag, and the quarantine.
    Inspect {
        /// The spool directory (holds segments/, readers/, quarantine/).
        dir: PathBuf,
    },
    /// Check every frame, header and checkpoint; exit non-zero if anything is damaged.
    Verify {
        /// The spool directory.
        dir: PathBuf,
        /// Copy every damaged byte range into DIR/quarantine/ as well.
        #[arg(long)]
        quarantine: bool,
    },
}

/// Runs `spoolhouse spool …`.
pub fn run(args: SpoolArgs) -> anyhow::Result<()> {
    let (dir, quarantine, verify) = match args.command {
        SpoolCommand::Inspect { dir } => (dir, false, false),
        SpoolCommand::Verify { dir, quarantine } => (dir, quarantine, true),
    };
    let report = spooler::tools::examine(&dir, quarantine)
        .with_context(|| format!("examining spool {}", dir.display()))?;
    let mut out = std::io::stdout().lock();
    write!(out, "{report}")?;
    out.flush()?;
    if verify && !report.is_clean() {
        let n = report.problems.iter().filter(|p| p.is_damage()).count();
        let hint = if quarantine {
            "damaged bytes were copied to the quarantine directory; readers skip them and count them"
        } else {
            "rerun with --quarantine to copy the damaged bytes aside; readers skip them and count them"
        };
        anyhow::bail!("spool {} is damaged: {n} problem(s); {hint}", dir.display());
    }
    Ok(())
}
