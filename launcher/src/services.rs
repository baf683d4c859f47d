//! One datacenter's Spoolhouse services — collector, shipper and query
//! service — as child processes of a launch, in the DC's network namespace
//! when it has one. The one way the main job, the benches and the process
//! tests start them (docs/adr/0013-launcher-crate.md): each caller says
//! which program runs them and with which configs, then waits on
//! [`Services::ready`] in its own way (a test fails with the log tails, the
//! demo stops on Ctrl-C).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dc_config::services::{CollectorConfig, QueryConfig, ShipperConfig};

use crate::process::{Proc, Spec};
use crate::{LaunchError, LocalCluster};

/// The three services' configs for one DC.
#[derive(Debug, Clone)]
pub struct Configs {
    /// The collector's.
    pub collector: CollectorConfig,
    /// The shipper's.
    pub shipper: ShipperConfig,
    /// The query service's.
    pub query: QueryConfig,
}

impl Configs {
    /// The configs the topology gives `dc_name` (`None` if it has no such DC).
    pub fn for_dc(cluster: &LocalCluster, dc_name: &str) -> Option<Self> {
        let t = cluster.topology();
        let dc = t.dc(dc_name)?;
        Some(Self {
            collector: CollectorConfig::for_dc(dc),
            shipper: ShipperConfig::for_dc(t, dc),
            query: QueryConfig::for_dc(t, dc),
        })
    }
}

/// One DC's running services; each dies with its [`Proc`].
pub struct Services {
    /// Collector, shipper and query service, in that order.
    pub procs: Vec<Proc>,
    /// The collector's Unix socket.
    pub socket: PathBuf,
    /// The collector's admin port.
    pub collector_admin: SocketAddr,
    /// The shipper's admin port.
    pub shipper_admin: SocketAddr,
    /// The query service.
    pub query: SocketAddr,
    /// The shipper's state folder.
    pub shipper_state: PathBuf,
}

/// Writes `configs` and the cluster's registry into `dir` and starts
/// `dc_name`'s collector, shipper and query service (in that order) as
/// `program <service> --config <dir>/<service>.toml`, each logging to
/// `<dir>/<service>.log`. Returns at once: see [`Services::ready`].
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
    let texts = [
        ("collector", toml::to_string(&configs.collector)),
        ("shipper", toml::to_string(&configs.shipper)),
        ("query", toml::to_string(&configs.query)),
    ];
    let mut procs = Vec::new();
    for (service, text) in texts {
        let text = text.map_err(|e| LaunchError::ServiceConfig {
            service: service.to_string(),
            reason: e.to_string(),
        })?;
        let path = dir.join(format!("{service}.toml"));
        std::fs::write(&path, text).map_err(io(&path))?;
        let args = vec![
            service.to_string(),
            "--config".to_string(),
            path.display().to_string(),
        ];
        let spec = Spec {
            program: program.to_path_buf(),
            args,
            cwd: dir.to_path_buf(),
            log: dir.join(format!("{service}.log")),
        };
        procs.push(cluster.spawn_in(dc_name, format!("{dc_name} {service}"), spec)?);
    }
    Ok(Services {
        procs,
        socket: configs.collector.socket.clone(),
        collector_admin: configs.collector.admin,
        shipper_admin: configs.shipper.admin,
        query: configs.query.listen,
        shipper_state: configs.shipper.state_dir,
    })
}

/// How long one readiness probe of [`Services::ready`] may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// True once the collector's `socket` exists and the shipper (its admin
/// port) and the query service answer `/healthz` with 200.
pub fn serving(socket: &Path, shipper_admin: SocketAddr, query: SocketAddr) -> bool {
    let healthy = |addr| {
        matches!(
            httpd::client::get_blocking(addr, "/healthz", PROBE_TIMEOUT),
            Ok((200, _))
        )
    };
    socket.exists() && healthy(shipper_admin) && healthy(query)
}

impl Services {
    /// [`serving`]: the collector's socket exists, the shipper and the
    /// query service are healthy.
    pub fn ready(&self) -> bool {
        serving(&self.socket, self.shipper_admin, self.query)
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
