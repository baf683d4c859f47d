//! `spoolhouse dc cut|heal|status`: cut a local datacenter off from the
//! others and heal it, on a cluster that `spoolhouse local up` or the demo
//! started with cross-DC links (another process owns the relays; the cut is a
//! flag file they watch).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use dc_config::local::{link, LINKS_DIR};

/// Arguments of `spoolhouse dc`.
#[derive(Debug, Args)]
pub struct DcArgs {
    #[command(subcommand)]
    command: DcCommand,
}

#[derive(Debug, Subcommand)]
enum DcCommand {
    /// Cut a datacenter off: ClickHouse reads between it and every other DC
    /// fail at once (global answers turn partial) until `heal`. Each DC keeps
    /// collecting, shipping and answering local reads.
    Cut(Target),
    /// Heal a cut datacenter's links.
    Heal(Target),
    /// Show each datacenter and whether it is cut.
    Status(State),
}

#[derive(Debug, Args)]
struct Target {
    /// Datacenter name, as in the topology.
    dc: String,
    #[command(flatten)]
    state: State,
}

#[derive(Debug, Args)]
struct State {
    /// The local cluster's state directory (printed by `spoolhouse local up`
    /// and by the demo as `state:`).
    #[arg(long)]
    state: PathBuf,
}

/// Datacenters of the local cluster in `state`, from its rendered service configs.
fn datacenters(state: &Path) -> anyhow::Result<Vec<String>> {
    let links = state.join(LINKS_DIR);
    if !links.is_dir() {
        bail!(
            "{} has no cross-DC links: is it the state directory of a local cluster started with a cross-DC delay (`spoolhouse local up --cross-dc-delay-ms N`)?",
            state.display()
        );
    }
    let services = state.join("rendered").join("services");
    let mut dcs = Vec::new();
    for e in std::fs::read_dir(&services)
        .with_context(|| format!("listing datacenters in {}", services.display()))?
    {
        let e = e.with_context(|| format!("listing {}", services.display()))?;
        if e.path().is_dir() {
            dcs.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    dcs.sort();
    Ok(dcs)
}

fn checked(t: &Target) -> anyhow::Result<PathBuf> {
    let dcs = datacenters(&t.state.state)?;
    if !dcs.contains(&t.dc) {
        bail!(
            "no datacenter `{}` in {}; it has: {}",
            t.dc,
            t.state.state.display(),
            dcs.join(", ")
        );
    }
    Ok(t.state.state.join(LINKS_DIR))
}

/// Runs `spoolhouse dc …`.
pub fn run(args: DcArgs) -> anyhow::Result<()> {
    match args.command {
        DcCommand::Cut(t) => {
            let dir = checked(&t)?;
            link::cut(&dir, &t.dc).with_context(|| format!("cutting {}", t.dc))?;
            println!(
                "{} cut: its links to every other datacenter drop within {} ms",
                t.dc,
                link::CUT_POLL.as_millis()
            );
        }
        DcCommand::Heal(t) => {
            let dir = checked(&t)?;
            link::heal(&dir, &t.dc).with_context(|| format!("healing {}", t.dc))?;
            println!("{} healed", t.dc);
        }
        DcCommand::Status(s) => {
            let dir = s.state.join(LINKS_DIR);
            for dc in datacenters(&s.state)? {
                let state = if link::is_cut(&dir, &dc) {
                    "cut"
                } else {
                    "linked"
                };
                println!("{dc}\t{state}");
            }
        }
    }
    Ok(())
}
