//! One datacenter's Spoolhouse services — each app host's collector and
//! shipper, and the query service — as child processes of a launch, in the DC's network namespace
//! when it has one. The one way the main job, the benches and the process
//! tests start them (docs/adr/0013-launcher-crate.md): each caller says
//! which program runs them and with which configs, then waits on
//! [`Services::ready`] in its own way (a test fails with the log tails, the
//! demo stops on Ctrl-C).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dc_config::services::{CollectorConfig, QueryConfig, RelayConfig, ShipperConfig};

use crate::process::{Proc, Spec};
use crate::{LaunchError, LocalCluster};

/// One app host's collector and shipper configs.
#[derive(Debug, Clone)]
pub struct HostConfigs {
    /// The collector's.
    pub collector: CollectorConfig,
    /// The shipper's.
    pub shipper: ShipperConfig,
}

/// One DC's services' configs: every app host's, its relays' and the
/// query service's.
#[derive(Debug, Clone)]
pub struct Configs {
    /// Each app host's, in the topology's order.
    pub hosts: Vec<HostConfigs>,
    /// Each relay's (relay mode, docs/adr/0017; none in direct mode).
    pub relays: Vec<RelayConfig>,
    /// The query service's.
    pub query: QueryConfig,
}

impl Configs {
    /// The configs the topology gives `dc_name` (`None` if it has no such DC).
    pub fn for_dc(cluster: &LocalCluster, dc_name: &str) -> Option<Self> {
        let t = cluster.topology();
        let dc = t.dc(dc_name)?;
        Some(Self {
            hosts: dc
                .app_hosts()
                .iter()
                .map(|h| HostConfigs {
                    collector: CollectorConfig::for_host(dc, h),
                    shipper: ShipperConfig::for_host(t, dc, h),
                })
                .collect(),
            relays: dc
                .relay
                .iter()
                .map(|r| RelayConfig::for_relay(t, dc, r))
                .collect(),
            query: QueryConfig::for_dc(t, dc),
        })
    }

    /// Every shipper's config, to change them alike.
    pub fn shippers(&mut self) -> impl Iterator<Item = &mut ShipperConfig> {
        self.hosts.iter_mut().map(|h| &mut h.shipper)
    }

    /// Every collector's config, to change them alike.
    pub fn collectors(&mut self) -> impl Iterator<Item = &mut CollectorConfig> {
        self.hosts.iter_mut().map(|h| &mut h.collector)
    }
}

/// One app host's running collector and shipper.
#[derive(Debug, Clone)]
pub struct HostServices {
    /// The host's name.
    pub name: String,
    /// Its collector's Unix socket.
    pub socket: PathBuf,
    /// Its collector's admin port.
    pub collector_admin: SocketAddr,
    /// Its shipper's admin port.
    pub shipper_admin: SocketAddr,
    /// Its shipper's state folder.
    pub shipper_state: PathBuf,
    /// Its collector's and shipper's places in [`Services::procs`].
    pub procs: [usize; 2],
}

/// One DC's running services; each dies with its [`Proc`].
pub struct Services {
    /// Each app host's collector and shipper, in that order, then the
    /// query service (one host: collector, shipper, query).
    pub procs: Vec<Proc>,
    /// The app hosts, in the topology's order.
    pub hosts: Vec<HostServices>,
    /// Each relay's name, admin port and place in [`Services::procs`].
    pub relays: Vec<(String, SocketAddr, usize)>,
    /// The query service.
    pub query: SocketAddr,
}

/// Writes `configs` and the cluster's registry into `dir` and starts
/// `dc_name`'s services as `program <service> --config <file>`: its relays
/// (each in `dir/<relay>/`), each app
/// host's collector and shipper (its files and logs in `dir/<host>/`, or
/// in `dir` itself for the first host), then the query service (`dir`).
/// Returns at once: see [`Services::ready`].
pub fn start(
    cluster: &LocalCluster,
    dc_name: &str,
    program: &Path,
    dir: &Path,
    configs: Configs,
) -> Result<Services, LaunchError> {
    if cluster.topology().dc(dc_name).is_none() {
        return Err(LaunchError::UnknownDatacenter(dc_name.to_string()));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LaunchError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let registry = dir.join("events.toml");
    std::fs::write(&registry, &cluster.declared().registry_text).map_err(io(&registry))?;
    let mut procs = Vec::new();
    let mut spawn =
        |service: &str, who: &str, text: Result<String, toml::ser::Error>, at: &Path| {
            let text = text.map_err(|e| LaunchError::ServiceConfig {
                service: service.to_string(),
                reason: e.to_string(),
            })?;
            let path = at.join(format!("{service}.toml"));
            std::fs::write(&path, text).map_err(io(&path))?;
            let spec = Spec {
                program: program.to_path_buf(),
                args: vec![
                    service.to_string(),
                    "--config".to_string(),
                    path.display().to_string(),
                ],
                cwd: at.to_path_buf(),
                log: at.join(format!("{service}.log")),
            };
            procs.push(cluster.spawn_in(dc_name, format!("{who} {service}"), spec)?);
            Ok::<usize, LaunchError>(procs.len() - 1)
        };
    // Relays first: the app hosts' forwarders connect to them.
    let mut relays = Vec::new();
    for r in &configs.relays {
        let at = dir.join(&r.name);
        std::fs::create_dir_all(&at).map_err(io(&at))?;
        let p = spawn("relay", &r.name, toml::to_string(r), &at)?;
        relays.push((r.name.clone(), r.admin, p));
    }
    let mut hosts = Vec::new();
    for (i, h) in configs.hosts.into_iter().enumerate() {
        let (mut collector, mut shipper) = (h.collector, h.shipper);
        let at = if i == 0 {
            dir.to_path_buf()
        } else {
            dir.join(&collector.host)
        };
        std::fs::create_dir_all(&at).map_err(io(&at))?;
        if i > 0 {
            collector.registry = Path::new("..").join("events.toml");
            shipper.registry = Path::new("..").join("events.toml");
        }
        let who = if i == 0 {
            dc_name.to_string()
        } else {
            collector.host.clone()
        };
        let c = spawn("collector", &who, toml::to_string(&collector), &at)?;
        let s = spawn("shipper", &who, toml::to_string(&shipper), &at)?;
        hosts.push(HostServices {
            name: collector.host.clone(),
            socket: collector.socket.clone(),
            collector_admin: collector.admin,
            shipper_admin: shipper.admin,
            shipper_state: shipper.state_dir.clone(),
            procs: [c, s],
        });
    }
    spawn("query", dc_name, toml::to_string(&configs.query), dir)?;
    Ok(Services {
        procs,
        hosts,
        relays,
        query: configs.query.listen,
    })
}

/// How long one readiness probe of [`Services::ready`] may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// True once the collector's `socket` exists and the shipper (its admin
/// port) answers `/healthz` with 200.
pub fn host_serving(socket: &Path, shipper_admin: SocketAddr) -> bool {
    socket.exists() && healthy(shipper_admin)
}

/// True once `addr` answers `/healthz` with 200.
pub fn healthy(addr: SocketAddr) -> bool {
    matches!(
        httpd::client::get_blocking(addr, "/healthz", PROBE_TIMEOUT),
        Ok((200, _))
    )
}

/// True once every app host of `dc` serves ([`host_serving`]) and its
/// query service answers `/healthz` with 200.
pub fn serving(dc: &dc_config::topology::Datacenter) -> bool {
    dc.app_hosts()
        .iter()
        .all(|h| host_serving(&h.collector.socket, h.shipper.admin))
        && dc.relay.iter().all(|r| healthy(r.admin))
        && healthy(dc.query.listen)
}

impl Services {
    /// Every app host's collector socket exists and its shipper is
    /// healthy, and so is the query service.
    pub fn ready(&self) -> bool {
        self.hosts
            .iter()
            .all(|h| host_serving(&h.socket, h.shipper_admin))
            && self.relays.iter().all(|(_, admin, _)| healthy(*admin))
            && healthy(self.query)
    }

    /// What keeps [`Services::ready`] false, one line per service that is
    /// not serving (empty when ready): for a wait that timed out to say
    /// which host, and why.
    pub fn unready(&self) -> Vec<String> {
        let probe =
            |addr: SocketAddr| match httpd::client::get_blocking(addr, "/healthz", PROBE_TIMEOUT) {
                Ok((200, _)) => None,
                Ok((status, body)) => Some(format!("/healthz answered {status}: {body}")),
                Err(e) => Some(format!("/healthz failed: {e}")),
            };
        let mut out = Vec::new();
        for h in &self.hosts {
            if !h.socket.exists() {
                out.push(format!(
                    "{}: no collector socket at {}",
                    h.name,
                    h.socket.display()
                ));
            }
            if let Some(why) = probe(h.shipper_admin) {
                out.push(format!("{} shipper ({}): {why}", h.name, h.shipper_admin));
            }
        }
        for (name, admin, _) in &self.relays {
            if let Some(why) = probe(*admin) {
                out.push(format!("relay {name} ({admin}): {why}"));
            }
        }
        if let Some(why) = probe(self.query) {
            out.push(format!("query service ({}): {why}", self.query));
        }
        out
    }

    /// The first app host: a DC of one host, as most tests run.
    pub fn first(&self) -> &HostServices {
        &self.hosts[0]
    }

    /// The last `n` lines of each service's log, headed by its name.
    pub fn log_tails(&self, n: usize) -> String {
        self.procs
            .iter()
            .map(|p| {
                format!(
                    "--- {} ({}):\n{}",
                    p.name,
                    p.spec.log.display(),
                    p.log_tail(n)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
