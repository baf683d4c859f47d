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
    let report = spooler::inspect::examine(&dir, quarantine)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(command: SpoolCommand) -> SpoolArgs {
        SpoolArgs { command }
    }

    #[test]
    fn verify_fails_on_damage_and_quarantines_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let pos = {
            let spool = spooler::Spool::open(dir.path(), spooler::Config::default()).unwrap();
            spool
                .append(&[b"one".as_slice(), b"two", b"three"])
                .unwrap()
        };
        let path = dir.path().to_path_buf();
        run(args(SpoolCommand::Verify {
            dir: path.clone(),
            quarantine: false,
        }))
        .unwrap();
        let seg = std::fs::read_dir(dir.path().join("segments"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[pos[1].offset as usize + 12] ^= 0xFF;
        std::fs::write(&seg, bytes).unwrap();
        run(args(SpoolCommand::Inspect { dir: path.clone() })).unwrap();
        let e = run(args(SpoolCommand::Verify {
            dir: path.clone(),
            quarantine: false,
        }))
        .unwrap_err();
        assert!(e.to_string().contains("damaged: 1 problem"), "{e}");
        assert_eq!(
            std::fs::read_dir(dir.path().join("quarantine"))
                .unwrap()
                .count(),
            0
        );
        run(args(SpoolCommand::Verify {
            dir: path,
            quarantine: true,
        }))
        .unwrap_err();
        assert_eq!(
            std::fs::read_dir(dir.path().join("quarantine"))
                .unwrap()
                .count(),
            1
        );
    }

    #[test]
    fn a_directory_that_is_not_a_spool_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = run(args(SpoolCommand::Inspect {
            dir: dir.path().to_path_buf(),
        }))
        .unwrap_err();
        assert!(format!("{e:#}").contains("not a spool"), "{e:#}");
    }
}
