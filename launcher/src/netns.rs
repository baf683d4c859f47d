//! Datacenters as hosts: each datacenter of a launch in a Linux network
//! namespace of its own, joined to the host by a veth pair into a bridge
//! (ADR 0006).
//!
//! A launch takes one *slot* `N` (0–255) and with it the subnet
//! `10.231.N.0/24`: the bridge `sphbrN` holds `10.231.N.1` in the host's
//! namespace; datacenter `i` lives in the namespace `spoolhouse-N-<dc>`, whose
//! `eth0` (the far end of the veth `sphNd<i>`) holds `10.231.N.<i + 2>`, with
//! `lo` up. Every name carries the slot, so whatever a launch made is found
//! again from `ip netns list` and `ip link` alone.
//!
//! A slot belongs to the launch holding an exclusive `flock` on
//! `/run/spoolhouse-netns/N.lock`. The kernel drops that lock when its holder
//! dies, even by `kill -9`, so the objects of a slot whose lock nobody holds
//! are leftovers: every new fabric removes them before it takes a slot, and
//! removes its own the same way when dropped. Concurrent launches (tests run
//! in parallel, in one process or many) never share a slot: `flock` locks
//! taken through separate opens exclude each other even within one process.
//!
//! Everything is done with the `ip` command of iproute2, as root (it needs
//! `CAP_NET_ADMIN` and `CAP_SYS_ADMIN`).

use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the slots' lock files live (a tmpfs: emptied at boot, like the
/// namespaces themselves).
pub const LOCK_DIR: &str = "/run/spoolhouse-netns";
/// First two octets of every address the fabric hands out; a slot is the third.
pub const SUBNET_PREFIX: [u8; 2] = [10, 231];
/// Prefix of every namespace the fabric creates.
pub const NETNS_PREFIX: &str = "spoolhouse-";
/// Prefix of the bridge (`sphbrN`) and of the host ends of the veths (`sphNdI`).
pub const LINK_PREFIX: &str = "sph";
/// Datacenters per launch: host addresses .2 to .254 of the /24.
pub const DATACENTERS_MAX: usize = 253;

/// Why the namespaces of a launch could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// iproute2's `ip` is not installed.
    #[error("`ip` (iproute2) not found in PATH, /usr/sbin or /sbin; install it with `apt-get install -y iproute2`")]
    NoIp,
    /// An `ip` command failed, typically for want of root.
    #[error("`{command}` failed: {output} (network namespaces need root: CAP_NET_ADMIN and CAP_SYS_ADMIN)")]
    Command {
        /// The command line.
        command: String,
        /// What it printed, or why it did not run.
        output: String,
    },
    /// The slots' lock directory or a lock file could not be used.
    #[error("cannot use {path}: {source} (network namespaces need root)")]
    Lock {
        /// The directory or file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Every slot is held by a running launch or its subnet is routed elsewhere.
    #[error("no free subnet in 10.231.0.0/16: every /24 is used by a running launch or routed elsewhere on this host; stop a launch and retry")]
    NoSlot,
    /// More datacenters than addresses in a /24.
    #[error("{0} datacenters do not fit one /24; at most {DATACENTERS_MAX}")]
    TooManyDatacenters(usize),
}

/// One datacenter's place in the fabric.
#[derive(Debug, Clone)]
pub struct DcNet {
    /// Datacenter name.
    pub dc: String,
    /// Its network namespace (`ip netns exec` takes this).
    pub netns: String,
    /// The host end of its veth, a port of the bridge.
    pub veth: String,
    /// Its address inside the namespace.
    pub addr: Ipv4Addr,
}

/// The namespaces, veths and bridge of one launch; dropping it removes them.
#[derive(Debug)]
pub struct Fabric {
    ip: PathBuf,
    slot: u8,
    /// Held for the fabric's life: the slot is ours while this lock is.
    _lock: File,
    dcs: Vec<DcNet>,
}

/// iproute2's `ip`.
pub fn ip_program() -> Result<PathBuf, NetnsError> {
    super::find_program("ip").map_err(|_| NetnsError::NoIp)
}

/// Runs `ip ARGS`; its standard output.
fn ip(program: &Path, args: &[&str]) -> Result<String, NetnsError> {
    let command = format!("ip {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| NetnsError::Command {
            command: command.clone(),
            output: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            command,
            output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn bridge_name(slot: u8) -> String {
    format!("{LINK_PREFIX}br{slot}")
}

fn subnet_addr(slot: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(SUBNET_PREFIX[0], SUBNET_PREFIX[1], slot, host)
}

/// The slot of a namespace name `spoolhouse-N-<dc>`.
fn netns_slot(name: &str) -> Option<u8> {
    let (slot, dc) = name.strip_prefix(NETNS_PREFIX)?.split_once('-')?;
    (!dc.is_empty()).then_some(())?;
    slot.parse().ok()
}

/// The slot of a link name `sphbrN` or `sphNdI`.
fn link_slot(name: &str) -> Option<u8> {
    let rest = name.strip_prefix(LINK_PREFIX)?;
    if let Some(slot) = rest.strip_prefix("br") {
        return slot.parse().ok();
    }
    let (slot, index) = rest.split_once('d')?;
    index.parse::<u16>().ok()?;
    slot.parse().ok()
}

/// A namespace or link the fabric made, by kind.
#[derive(Debug, PartialEq, Eq)]
enum Object {
    Netns(String),
    Link(String),
}

/// Every namespace and link named like the fabric's, with its slot.
fn list_objects(program: &Path) -> Result<Vec<(u8, Object)>, NetnsError> {
    let mut found = Vec::new();
    for line in ip(program, &["netns", "list"])?.lines() {
        // `NAME` or `NAME (id: 3)`.
        let name = line.split_whitespace().next().unwrap_or("");
        if let Some(slot) = netns_slot(name) {
            found.push((slot, Object::Netns(name.to_string())));
        }
    }
    for line in ip(program, &["-o", "link", "show"])?.lines() {
        // `12: sph3d0@if2: <BROADCAST,…`.
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if let Some(slot) = link_slot(name) {
            found.push((slot, Object::Link(name.to_string())));
        }
    }
    Ok(found)
}

/// Removes every object of `slot`, whose lock the caller holds: namespaces
/// first (their servers are gone), then the veths, the bridge last. Lists
/// them afresh, under the lock: a listing taken before it may name objects
/// another launch has removed since. Returns their names.
fn clean_slot(program: &Path, slot: u8) -> Result<Vec<String>, NetnsError> {
    let mine = list_objects(program)?
        .into_iter()
        .filter(|(s, _)| *s == slot)
        .map(|(_, o)| o);
    let (mut ordered, mut links): (Vec<Object>, Vec<Object>) =
        mine.partition(|o| matches!(o, Object::Netns(_)));
    // The bridge sorts before its veths by name; it goes last.
    links.sort_by_key(|o| matches!(o, Object::Link(n) if *n == bridge_name(slot)));
    ordered.append(&mut links);
    let mut removed = Vec::new();
    // Goes on past a failure, so one stuck object does not keep the rest.
    let mut first_error = None;
    for o in ordered {
        let (r, name) = match o {
            Object::Netns(n) => (ip(program, &["netns", "delete", &n]), n),
            Object::Link(n) => (ip(program, &["link", "delete", &n]), n),
        };
        match r {
            // Deleting a namespace may take its veth along before we get to it.
            Err(NetnsError::Command { output, .. }) if output.contains("Cannot find device") => {}
            Err(e) => {
                first_error.get_or_insert(e);
                continue;
            }
            Ok(_) => {}
        }
        removed.push(name);
    }
    first_error.map_or(Ok(removed), Err)
}

/// The lock of `slot`, if no one else holds it.
fn try_lock(slot: u8) -> Result<Option<File>, NetnsError> {
    let path = Path::new(LOCK_DIR).join(format!("{slot}.lock"));
    let lock_err = |source| NetnsError::Lock {
        path: path.clone(),
        source,
    };
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(lock_err)?;
    // SAFETY: flock(2) on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => Ok(None),
            _ => Err(lock_err(e)),
        };
    }
    Ok(Some(file))
}

/// Removes what launches that died (even by `kill -9`) left behind: the
/// objects of every slot whose lock no one holds. Returns their names.
pub fn remove_leftovers() -> Result<Vec<String>, NetnsError> {
    let program = ip_program()?;
    std::fs::create_dir_all(LOCK_DIR).map_err(|source| NetnsError::Lock {
        path: LOCK_DIR.into(),
        source,
    })?;
    let mut slots: Vec<u8> = list_objects(&program)?
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    slots.sort_unstable();
    slots.dedup();
    let mut removed = Vec::new();
    for slot in slots {
        if let Some(_lock) = try_lock(slot)? {
            removed.extend(clean_slot(&program, slot)?);
        }
    }
    Ok(removed)
}

impl Fabric {
    /// Takes a free slot and puts each of `dcs` in a namespace of its own,
    /// joined by the slot's bridge; removes leftovers of dead launches first.
    /// On any error, removes whatever it had made.
    pub fn create(dcs: &[String]) -> Result<Self, NetnsError> {
        if dcs.len() > DATACENTERS_MAX {
            return Err(NetnsError::TooManyDatacenters(dcs.len()));
        }
        let program = ip_program()?;
        remove_leftovers()?;
        for slot in 0..=u8::MAX {
            let Some(mut lock) = try_lock(slot)? else {
                continue;
            };
            // A launch may have died on this slot since the sweep above.
            clean_slot(&program, slot)?;
            let subnet = format!("{}/24", subnet_addr(slot, 0));
            if !ip(&program, &["-o", "-4", "route", "show", "root", &subnet])?
                .trim()
                .is_empty()
            {
                continue;
            }
            // For a person looking at the lock files; the lock is what counts.
            let _ = lock.set_len(0);
            let _ = writeln!(lock, "{}", std::process::id());
            let mut fabric = Self {
                ip: program,
                slot,
                _lock: lock,
                dcs: Vec::new(),
            };
            fabric.build(dcs)?;
            return Ok(fabric);
        }
        Err(NetnsError::NoSlot)
    }

    fn build(&mut self, dcs: &[String]) -> Result<(), NetnsError> {
        let bridge = bridge_name(self.slot);
        let gateway = format!("{}/24", self.bridge_addr());
        for args in [
            vec!["link", "add", &bridge, "type", "bridge"],
            vec!["addr", "add", &gateway, "dev", &bridge],
            vec!["link", "set", &bridge, "up"],
        ] {
            ip(&self.ip, &args)?;
        }
        for (i, dc) in dcs.iter().enumerate() {
            let net = DcNet {
                dc: dc.clone(),
                netns: format!("{NETNS_PREFIX}{}-{dc}", self.slot),
                veth: format!("{LINK_PREFIX}{}d{i}", self.slot),
                addr: subnet_addr(self.slot, i as u8 + 2),
            };
            let (ns, veth) = (net.netns.as_str(), net.veth.as_str());
            let addr = format!("{}/24", net.addr);
            for args in [
                vec!["netns", "add", ns],
                vec![
                    "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
                ],
                vec!["link", "set", veth, "master", &bridge, "up"],
                vec!["-n", ns, "addr", "add", &addr, "dev", "eth0"],
                vec!["-n", ns, "link", "set", "eth0", "up"],
                vec!["-n", ns, "link", "set", "lo", "up"],
            ] {
                ip(&self.ip, &args)?;
            }
            self.dcs.push(net);
        }
        Ok(())
    }

    /// The bridge's address: how every namespace reaches the host, and the
    /// address the host's connections into a namespace come from.
    pub fn bridge_addr(&self) -> Ipv4Addr {
        subnet_addr(self.slot, 1)
    }

    /// The bridge's name.
    pub fn bridge(&self) -> String {
        bridge_name(self.slot)
    }

    /// Every datacenter's namespace and address, in launch order.
    pub fn datacenters(&self) -> &[DcNet] {
        &self.dcs
    }

    /// Datacenter `dc`'s place, if it has one.
    pub fn dc(&self, dc: &str) -> Option<&DcNet> {
        self.dcs.iter().find(|d| d.dc == dc)
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        // The same removal a later launch would do, while the slot is still ours.
        if let Err(e) = clean_slot(&self.ip, self.slot) {
            eprintln!(
                "spoolhouse: removing the network namespaces of slot {} failed: {e}; the next launch removes them",
                self.slot
            );
        }
    }
}

impl std::fmt::Display for Fabric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a network namespace per datacenter (")?;
        for (i, d) in self.dcs.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{} in {} at {}", d.dc, d.netns, d.addr)?;
        }
        write!(f, "), bridge {} at {}", self.bridge(), self.bridge_addr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_give_back_their_slot_and_nothing_else_matches() {
        assert_eq!(netns_slot("spoolhouse-7-dc1"), Some(7));
        assert_eq!(netns_slot("spoolhouse-255-east_2"), Some(255));
        assert_eq!(netns_slot("spoolhouse-256-dc1"), None);
        assert_eq!(netns_slot("spoolhouse-7-"), None);
        assert_eq!(netns_slot("spoolhouse-local-x"), None);
        assert_eq!(netns_slot("other-7-dc1"), None);
        assert_eq!(link_slot(&bridge_name(12)), Some(12));
        assert_eq!(link_slot("sph12d0"), Some(12));
        assert_eq!(link_slot("sph3d252"), Some(3));
        assert_eq!(link_slot("sph3d"), None);
        assert_eq!(link_slot("sphx"), None);
        assert_eq!(link_slot("eth0"), None);
        assert_eq!(link_slot("sphbr"), None);
    }
}
