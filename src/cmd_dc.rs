//! `spoolhouse dc cut|heal|status`: cut a local datacenter off from the
//! others and heal it, on a cluster that `spoolhouse local up` or the demo
//! started with cross-DC links (another process owns the relays; the cut is a
//! flag file they watch).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use launcher::{link, LINKS_DIR};

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
    /// and by the demo as `state:`); by default the one cluster that a
    /// running `spoolhouse local up` or `spoolhouse demo` on this machine runs.
    #[arg(long)]
    state: Option<PathBuf>,
}

impl State {
    /// The state directory given, or else the one running cluster's.
    fn dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(d) = &self.state {
            return Ok(d.clone());
        }
        let mut found = running();
        match found.len() {
            1 => Ok(found.remove(0).1),
            0 => bail!(
                "no running `spoolhouse local up` or `spoolhouse demo` found on this machine; start one, or name a cluster's state directory with --state DIR"
            ),
            _ => bail!(
                "several local clusters are running; name one with --state DIR:\n{}",
                found
                    .iter()
                    .map(|(pid, d)| format!("  {} (process {pid})", d.display()))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
    }
}

/// Where `spoolhouse local up` and the demo note the state directory of
/// the cluster they run, a file per process, so that `spoolhouse dc` finds
/// it without `--state`. `SPOOLHOUSE_RUN_DIR` moves it (tests do).
fn running_dir() -> PathBuf {
    std::env::var_os("SPOOLHOUSE_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("spoolhouse-running"))
}

/// Notes that this process runs the local cluster whose state is in
/// `state`. Best effort: without the note `--state` still works.
pub(crate) fn note_running(state: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let dir = running_dir();
    let note = dir.join(std::process::id().to_string());
    if let Err(e) = std::fs::create_dir_all(&dir)
        .and_then(|_| std::fs::write(&note, state.as_os_str().as_bytes()))
    {
        tracing::warn!(error = %e, note = %note.display(), "cannot note the running cluster; `spoolhouse dc` will need --state");
    }
}

/// The running local clusters, (process, state directory); notes of
/// processes that are gone (or are not Spoolhouse: a reused process id),
/// or whose state is gone, are removed.
fn running() -> Vec<(u32, PathBuf)> {
    use std::os::unix::ffi::OsStrExt;
    let Ok(entries) = std::fs::read_dir(running_dir()) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let state = std::fs::read(e.path())
            .map(|b| PathBuf::from(std::ffi::OsStr::from_bytes(&b)))
            .ok();
        let ours = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim() == "spoolhouse");
        match state {
            Some(s) if ours && s.join(LINKS_DIR).is_dir() => found.push((pid, s)),
            _ => {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    found.sort();
    found
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
    let state = t.state.dir()?;
    let dcs = datacenters(&state)?;
    if !dcs.contains(&t.dc) {
        bail!(
            "no datacenter `{}` in {}; it has: {}",
            t.dc,
            state.display(),
            dcs.join(", ")
        );
    }
    Ok(state.join(LINKS_DIR))
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
            let state = s.dir()?;
            let dir = state.join(LINKS_DIR);
            for dc in datacenters(&state)? {
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
