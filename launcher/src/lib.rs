//! The local launcher: real ZooKeeper, ClickHouse and Redis servers for any
//! topology, as child processes of this process, on free ports, in a state
//! directory of their own. The main job and every integration test use this
//! one piece of code; [`services`] starts Spoolhouse's own services beside
//! them. A client of `dc-config`, never the reverse
//! (docs/adr/0013-launcher-crate.md, amending
//! docs/adr/0001-local-launcher-in-dc-config.md).
//!
//! Where the servers listen is [`LaunchOptions::network`]: all on
//! 127.0.0.1 ([`Network::Loopback`]), or each datacenter as a host of its
//! own, in a Linux network namespace with its own address
//! ([`Network::Namespaces`], see [`netns`]); [`Network::Auto`] takes
//! namespaces when they can be made and says why not otherwise. Processes of
//! a datacenter (its servers, and its services through
//! [`LocalCluster::spawn_in`]) run inside its namespace; this process, in
//! the host's, reaches every datacenter through the bridge.
//!
//! ```no_run
//! use launcher::{LaunchOptions, LocalCluster};
//! use dc_config::Declared;
//! let declared = Declared::load("examples/two-dc.toml".as_ref(), "examples/events.toml".as_ref())?;
//! let cluster = LocalCluster::start(&declared, LaunchOptions::default())?;
//! let rows = cluster.clickhouse("dc1-s1-r1")?.query("SELECT count() FROM spoolhouse.events_all")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Start order follows the servers' own rules: ZooKeeper first (a ClickHouse
//! with replicated tables exits when ZooKeeper is down), readiness by `srvr`
//! reporting a mode (ZooKeeper answers `ruok` before it serves), Redis by
//! `PING`, ClickHouse by `SELECT 1`; then the schema of each DC is applied on
//! each of its servers. Nothing here installs anything or touches the
//! packaged system services.

pub mod link;
pub mod netns;
pub mod ports;
pub mod probe;
pub mod process;
pub mod services;
pub mod tmpfs;
pub mod wait;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dc_config::check::Declaration;
use dc_config::declared::Declared;
use dc_config::error::ConfigErrors;
use dc_config::render;
use dc_config::schema::user::WRITER_USER;
use dc_config::topology::{RedisMode, Topology};
use ports::PortBook;
use probe::{ClickHouseHttp, HttpError};
use process::{Proc, Spec};

/// Set by a binary's Ctrl-C handler; launcher waits give up when it is set.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Default time each server gets to become ready.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of one ClickHouse HTTP request made by the launcher.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Subdirectory of the state directory holding the links' cut flags.
pub const LINKS_DIR: &str = "links";
/// Start attempts when a freshly chosen port was taken by someone else
/// between choosing it and the server binding it.
const PORT_RACE_ATTEMPTS: usize = 3;

/// Jars ZooKeeper runs from, as Debian's `zookeeper` package installs them.
const ZOOKEEPER_CLASSPATH: &[&str] = &[
    "/usr/share/java/zookeeper.jar",
    "/usr/share/java/zookeeper-jute.jar",
    "/usr/share/java/slf4j-api.jar",
    "/usr/share/java/slf4j-simple.jar",
    "/usr/share/java/netty-handler.jar",
    "/usr/share/java/netty-common.jar",
    "/usr/share/java/netty-buffer.jar",
    "/usr/share/java/netty-transport.jar",
    "/usr/share/java/netty-codec.jar",
    "/usr/share/java/netty-resolver.jar",
    "/usr/share/java/netty-transport-native-epoll.jar",
    "/usr/share/java/netty-transport-native-unix-common.jar",
];

/// The apt packages that provide every server the launcher runs.
pub const APT_PACKAGES: &str = "clickhouse-server clickhouse-client zookeeper redis-server";

/// Why a local cluster could not be started or driven.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A server program is not installed.
    #[error("{what} not found (looked in {looked}); install it with `apt-get install -y {APT_PACKAGES}`")]
    Missing {
        /// The program or file.
        what: String,
        /// Where it was looked for.
        looked: String,
    },
    /// A file or folder of the state directory could not be prepared.
    #[error("cannot prepare {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A server exited while starting.
    #[error("{name} exited during start-up ({status}); last lines of {log}:\n{tail}")]
    Exited {
        /// The server.
        name: String,
        /// How it exited.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        tail: String,
    },
    /// A server did not become ready in time.
    #[error("{name} did not become ready within {secs} s; last lines of {log}:\n{tail}")]
    NotReady {
        /// The server.
        name: String,
        /// The timeout.
        secs: u64,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        tail: String,
    },
    /// A setup command (e.g. `redis-cli --cluster create`) failed.
    #[error("{command} failed: {output}")]
    Setup {
        /// The command.
        command: String,
        /// What it printed.
        output: String,
    },
    /// ClickHouse refused a schema statement.
    #[error("applying the schema on {server} failed: {source}")]
    Schema {
        /// The server.
        server: String,
        /// The error.
        source: HttpError,
    },
    /// A read the launcher makes for its caller failed.
    #[error("reading from {server} failed: {source}")]
    Read {
        /// The server.
        server: String,
        /// The error.
        source: HttpError,
    },
    /// ClickHouse refused events or their aggregation loaded by
    /// [`LocalCluster::load_events`] or [`LocalCluster::aggregate_minutes`].
    #[error("loading events into {server} failed: {source}")]
    Load {
        /// The server.
        server: String,
        /// The error.
        source: HttpError,
    },
    /// The topology with local ports and paths broke a rule: a launcher bug.
    #[error("the localized topology is invalid (a launcher bug): {0}")]
    Localize(ConfigErrors),
    /// A service's config could not be written as TOML (a bug).
    #[error("the {service}'s config cannot be written as TOML: {reason}")]
    ServiceConfig {
        /// The service.
        service: String,
        /// What the TOML writer said.
        reason: String,
    },
    /// Ctrl-C arrived while waiting.
    #[error("interrupted")]
    Interrupted,
    /// No server of that name.
    #[error("no server called `{0}` in this local cluster")]
    UnknownServer(String),
    /// No ClickHouse user of that name.
    #[error("no ClickHouse user called `{0}` in this local cluster")]
    UnknownUser(String),
    /// The users' password files could not be made or read.
    #[error("{0}")]
    Credentials(dc_config::credentials::CredentialError),
    /// No datacenter of that name.
    #[error("no datacenter called `{0}` in this local cluster")]
    UnknownDatacenter(String),
    /// Network namespaces were asked for and could not be made.
    #[error("cannot put the datacenters in network namespaces: {0}; or launch them on loopback (`--network loopback`)")]
    Namespaces(netns::NetnsError),
    /// A cut or heal on a cluster launched without relays.
    #[error("this local cluster was launched without cross-DC relays (cross_dc_delay); there is no link to cut or heal")]
    NoLinks,
}

/// How to launch.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// Keep state here (and stop servers gracefully); `None`: a temporary
    /// directory, removed when the cluster is dropped.
    pub state_dir: Option<PathBuf>,
    /// Time each server gets to become ready.
    pub ready_timeout: Duration,
    /// Put a relay on every cross-DC path (see [`link`]) adding this delay
    /// each way, cuttable per DC; `None`: servers dial each other directly.
    pub cross_dc_delay: Option<Duration>,
    /// Where the datacenters' servers listen.
    pub network: Network,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        Self {
            state_dir: None,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            cross_dc_delay: None,
            network: Network::Loopback,
        }
    }
}

/// Where a launch puts its datacenters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// Every server on 127.0.0.1, in this process's network namespace.
    #[default]
    Loopback,
    /// Each datacenter in a network namespace of its own (see [`netns`]);
    /// failing to make them fails the launch.
    Namespaces,
    /// Namespaces when they can be made, else loopback, saying why
    /// ([`Placement::Loopback`]).
    Auto,
}

/// Where a launched cluster's datacenters are.
#[derive(Debug)]
pub enum Placement {
    /// Every server on 127.0.0.1.
    Loopback {
        /// Why not in namespaces, when [`Network::Auto`] wanted them.
        why_not_namespaces: Option<String>,
    },
    /// Each datacenter in a namespace of its own; removed on drop.
    Namespaces(netns::Fabric),
}

impl Placement {
    fn new(network: Network, dcs: &[String]) -> Result<Self, LaunchError> {
        let namespaces = || netns::Fabric::create(dcs).map(Placement::Namespaces);
        match network {
            Network::Loopback => Ok(Placement::Loopback {
                why_not_namespaces: None,
            }),
            Network::Namespaces => namespaces().map_err(LaunchError::Namespaces),
            Network::Auto => Ok(namespaces().unwrap_or_else(|e| Placement::Loopback {
                why_not_namespaces: Some(e.to_string()),
            })),
        }
    }

    /// The address datacenter `dc`'s servers listen on.
    fn addr(&self, dc: &str) -> IpAddr {
        match self {
            Placement::Namespaces(f) => f.dc(dc).expect("a namespace per DC").addr.into(),
            Placement::Loopback { .. } => Ipv4Addr::LOCALHOST.into(),
        }
    }

    /// Where the host listens for the datacenters (the relays).
    pub fn host_addr(&self) -> IpAddr {
        match self {
            Placement::Namespaces(f) => f.bridge_addr().into(),
            Placement::Loopback { .. } => Ipv4Addr::LOCALHOST.into(),
        }
    }

    /// Datacenter `dc`'s network namespace, if it has one.
    pub fn netns(&self, dc: &str) -> Option<&str> {
        match self {
            Placement::Namespaces(f) => f.dc(dc).map(|d| d.netns.as_str()),
            Placement::Loopback { .. } => None,
        }
    }
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Placement::Namespaces(fabric) => write!(f, "{fabric}"),
            Placement::Loopback {
                why_not_namespaces: None,
            } => write!(f, "loopback (every server on 127.0.0.1)"),
            Placement::Loopback {
                why_not_namespaces: Some(why),
            } => write!(
                f,
                "loopback (every server on 127.0.0.1), not network namespaces: {why}"
            ),
        }
    }
}

/// The programs the launcher runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `clickhouse-server`.
    pub clickhouse_server: PathBuf,
    /// `java`, for ZooKeeper.
    pub java: PathBuf,
    /// ZooKeeper's class path.
    pub zookeeper_classpath: String,
    /// `redis-server`.
    pub redis_server: PathBuf,
    /// `redis-cli`, needed for Redis Cluster only.
    pub redis_cli: Option<PathBuf>,
}

pub(crate) fn find_program(name: &str) -> Result<PathBuf, LaunchError> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from));
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| LaunchError::Missing {
            what: name.to_string(),
            looked: "PATH, /usr/sbin, /usr/bin".to_string(),
        })
}

impl Binaries {
    /// Finds every program, or says which package to install.
    pub fn find() -> Result<Self, LaunchError> {
        for jar in &ZOOKEEPER_CLASSPATH[..2] {
            if !Path::new(jar).is_file() {
                return Err(LaunchError::Missing {
                    what: "ZooKeeper".to_string(),
                    looked: jar.to_string(),
                });
            }
        }
        Ok(Self {
            clickhouse_server: find_program("clickhouse-server")?,
            java: find_program("java")?,
            zookeeper_classpath: ZOOKEEPER_CLASSPATH
                .iter()
                .filter(|j| Path::new(j).is_file())
                .copied()
                .collect::<Vec<_>>()
                .join(":"),
            redis_server: find_program("redis-server")?,
            redis_cli: find_program("redis-cli").ok(),
        })
    }
}

/// What a member of the cluster is, and how to tell it serves.
#[derive(Debug, Clone)]
enum Kind {
    ZooKeeper(SocketAddr),
    Redis(SocketAddr),
    ClickHouse(ClickHouseHttp),
}

#[derive(Debug)]
struct Member {
    proc: Proc,
    kind: Kind,
}

impl Member {
    /// The end of the server's output and, where it says it logs errors to
    /// a file of its own (ClickHouse does), the end of that file: the reason
    /// a server exited (e.g. "Address already in use") is only there.
    fn log_tail(&self) -> String {
        let out = self.proc.log_tail(20);
        let errors = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("Logging errors to "))
            .map(|path| process::tail(Path::new(path.trim()), 20));
        match errors {
            Some(e) if !e.trim().is_empty() => format!("{out}\n{e}"),
            _ => out,
        }
    }

    fn ready(&self) -> bool {
        match &self.kind {
            Kind::ZooKeeper(a) => probe::zookeeper_serving(*a),
            Kind::Redis(a) => probe::redis_ready(*a),
            Kind::ClickHouse(c) => c.ready() && c.replicas_writable(),
        }
    }
}

/// A running set of servers for a topology; dropping it stops them all.
#[derive(Debug)]
pub struct LocalCluster {
    declared: Declared,
    /// The ClickHouse users' passwords, in the localized `secrets_dir`.
    credentials: dc_config::credentials::Credentials,
    members: Vec<Member>,
    state_dir: PathBuf,
    temp: Option<tempfile::TempDir>,
    opts: LaunchOptions,
    binaries: Binaries,
    /// Declared after `members`, so relays outlive the servers using them.
    links: Vec<link::Relay>,
    /// The launch's ports stay reserved until its servers are stopped.
    _ports: PortBook,
    /// Declared last: namespaces go once every process in them is stopped.
    placement: Placement,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LaunchError + '_ {
    move |source| LaunchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `topology` with each datacenter's app hosts named `<dc>-app1` …
/// `<dc>-app<n>` (their overrides dropped: [`localize`] gives each its
/// own ports and folders).
pub fn with_app_hosts(topology: &Topology, n: usize) -> Topology {
    let mut t = topology.clone();
    for dc in &mut t.datacenter {
        dc.host = None;
        dc.hosts = vec![format!("{}-app[1:{}]", dc.name, n.max(1))];
        dc.app_host.clear();
    }
    t
}

/// `topology` with `dc_name` in relay mode through `n` relays
/// (docs/adr/0017), `<dc>-relay1` … (their ports and folders are the
/// launcher's, as everything's).
pub fn with_relays(topology: &Topology, dc_name: &str, n: usize) -> Topology {
    let mut t = topology.clone();
    for dc in t.datacenter.iter_mut().filter(|dc| dc.name == dc_name) {
        dc.relay = (1..=n)
            .map(|i| dc_config::topology::Relay {
                name: format!("{}-relay{i}", dc.name),
                listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 17188 + 2 * i as u16)),
                admin: SocketAddr::from((Ipv4Addr::LOCALHOST, 17189 + 2 * i as u16)),
                spool_dir: PathBuf::from(format!("/var/lib/spoolhouse/{}/relay{i}", dc.name)),
                weight: 1,
            })
            .collect();
    }
    t
}

/// `topology` with every server on a free loopback port and every path
/// inside `state`: what the launcher runs, and what the Ansible test
/// (`tests/ansible.rs`) deploys into a prefix.
pub fn localize(topology: &Topology, state: &Path) -> std::io::Result<Topology> {
    localize_on(topology, state, |_| Ipv4Addr::LOCALHOST.into()).map(|(t, _)| t)
}

/// [`localize`], each datacenter's servers on `addr(dc)`, every port from
/// one [`PortBook`] (returned: its reservations hold while it lives). The
/// collector's TCP listener stays on loopback, inside its datacenter, as the
/// topology's rules want it.
fn localize_on(
    topology: &Topology,
    state: &Path,
    addr: impl Fn(&str) -> IpAddr,
) -> std::io::Result<(Topology, PortBook)> {
    let mut t = topology.clone();
    let mut book = PortBook::new();
    for dc in &mut t.datacenter {
        let ip = addr(&dc.name);
        let at = |p: u16| SocketAddr::new(ip, p);
        let dir = state.join(&dc.name);
        // An ensemble's members also listen on their quorum and election
        // ports; a Redis Cluster node on its bus port.
        let off = render::zookeeper::PEER_PORT_OFFSET;
        let zk_offsets: &[u16] = if dc.zookeeper.len() > 1 {
            &[off, 2 * off]
        } else {
            &[]
        };
        let redis_offsets: &[u16] = match dc.redis.mode {
            dc_config::topology::RedisMode::Cluster => {
                &[dc_config::topology::REDIS_CLUSTER_BUS_OFFSET]
            }
            dc_config::topology::RedisMode::Single => &[],
        };
        for (i, z) in dc.zookeeper.iter_mut().enumerate() {
            z.host = ip.to_string();
            z.port = book.take(zk_offsets)?;
            z.data_path = dir.join(format!("zk{}", i + 1));
        }
        for n in &mut dc.redis.nodes {
            *n = at(book.take(redis_offsets)?);
        }
        for (s, shard) in dc.clickhouse.shard.iter_mut().enumerate() {
            for (r, rep) in shard.replica.iter_mut().enumerate() {
                rep.host = ip.to_string();
                rep.tcp_port = book.take(&[])?;
                rep.http_port = book.take(&[])?;
                rep.interserver_port = book.take(&[])?;
                rep.data_path = dir.join(format!("ch-s{}-r{}", s + 1, r + 1));
            }
        }
        dc.query.listen = at(book.take(&[])?);
        for r in &mut dc.relay {
            r.listen = at(book.take(&[])?);
            r.admin = at(book.take(&[])?);
            r.spool_dir = dir.join(&r.name).join("spool");
        }
        // Every app host on this machine: the first takes the defaults (the
        // DC's folder, as a DC of one host always had), each other one its
        // own ports and a folder named after it, as overrides.
        dc.app_host.clear();
        let (names, _) = dc.host_names();
        for (i, name) in names.iter().enumerate() {
            let tcp = SocketAddr::from((Ipv4Addr::LOCALHOST, book.take(&[])?));
            let (admin, shipper_admin) = (at(book.take(&[])?), at(book.take(&[])?));
            if i == 0 {
                dc.collector.tcp = tcp;
                dc.collector.admin = admin;
                dc.shipper.admin = shipper_admin;
                dc.collector.socket = dir.join("collector.sock");
                dc.collector.inbox = dir.join("inbox");
                dc.spool.dir = dir.join("spool");
                continue;
            }
            let own = dir.join(name);
            let text = |p: PathBuf| toml::Value::String(p.display().to_string());
            let addr = |a: SocketAddr| toml::Value::String(a.to_string());
            let table = |kv: Vec<(&str, toml::Value)>| {
                kv.into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect::<toml::Table>()
            };
            dc.app_host.push(dc_config::app_hosts::HostOverride {
                name: name.clone(),
                collector: Some(table(vec![
                    ("tcp", addr(tcp)),
                    ("admin", addr(admin)),
                    ("socket", text(own.join("collector.sock"))),
                    ("inbox", text(own.join("inbox"))),
                ])),
                spool: Some(table(vec![("dir", text(own.join("spool")))])),
                shipper: Some(table(vec![("admin", addr(shipper_admin))])),
            });
        }
    }
    t.secrets_dir = state.join("secrets");
    Ok((t, book))
}

/// The error of a refused load on server `name`.
fn load_failed(name: &str) -> impl Fn(HttpError) -> LaunchError + '_ {
    move |source| LaunchError::Load {
        server: name.to_string(),
        source,
    }
}

impl LocalCluster {
    /// Starts every server of `declared`'s topology, waits until each
    /// serves, and applies each DC's schema.
    pub fn start(declared: &Declared, opts: LaunchOptions) -> Result<Self, LaunchError> {
        let binaries = Binaries::find()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(declared, opts.clone(), binaries.clone()) {
                Err(e) if attempt < PORT_RACE_ATTEMPTS && is_port_race(&e) => continue,
                other => return other,
            }
        }
    }

    fn start_once(
        declared: &Declared,
        opts: LaunchOptions,
        binaries: Binaries,
    ) -> Result<Self, LaunchError> {
        let (state_dir, temp) = match &opts.state_dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(io_err(d))?;
                (d.canonicalize().map_err(io_err(d))?, None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("spoolhouse-local-")
                    .tempdir()
                    .map_err(io_err(Path::new("/tmp")))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let names: Vec<String> = declared
            .topology
            .datacenter
            .iter()
            .map(|d| d.name.clone())
            .collect();
        let placement = Placement::new(opts.network, &names)?;
        let (mut topology, ports) =
            localize_on(&declared.topology, &state_dir, |dc| placement.addr(dc))
                .map_err(io_err(&state_dir))?;
        if let Placement::Namespaces(f) = &placement {
            topology.client_hosts.push(f.bridge_addr().into());
        }
        let mut c = dc_config::check::Checker::default();
        topology.check(&mut c);
        if !c.is_clean() {
            let errors = c.into_errors(Path::new("<localized topology>"), "");
            return Err(LaunchError::Localize(ConfigErrors(errors)));
        }
        let mut links = Vec::new();
        let mut routes = Vec::new();
        if let Some(delay) = opts.cross_dc_delay {
            let links_dir = state_dir.join(LINKS_DIR);
            std::fs::create_dir_all(&links_dir).map_err(io_err(&links_dir))?;
            for viewer in &topology.datacenter {
                for r in topology.replicas().filter(|r| r.dc.name != viewer.name) {
                    let direct = format!("{}:{}", r.replica.host, r.replica.tcp_port);
                    let target = SocketAddr::new(placement.addr(&r.dc.name), r.replica.tcp_port);
                    let relay = link::Relay::start(
                        &viewer.name,
                        &r.dc.name,
                        placement.host_addr(),
                        target,
                        delay,
                        &links_dir,
                    )
                    .map_err(io_err(&links_dir))?;
                    routes.push(((viewer.name.clone(), direct), relay.listen()));
                    links.push(relay);
                }
                // The other DCs' service addresses too: the query
                // service reads their /metrics (GET /v1/pipeline) across
                // the same link, so a cut DC stops answering there as well.
                for d in topology.datacenter.iter().filter(|d| d.name != viewer.name) {
                    let admins = d
                        .app_hosts()
                        .into_iter()
                        .flat_map(|h| [h.collector.admin, h.shipper.admin]);
                    for target in admins.chain([d.query.listen]) {
                        let relay = link::Relay::start(
                            &viewer.name,
                            &d.name,
                            placement.host_addr(),
                            target,
                            delay,
                            &links_dir,
                        )
                        .map_err(io_err(&links_dir))?;
                        routes.push(((viewer.name.clone(), target.to_string()), relay.listen()));
                        links.push(relay);
                    }
                }
            }
        }
        topology.cross_dc_routes.extend(routes);
        let declared = Declared {
            topology,
            ..declared.clone()
        };
        let secrets = &declared.topology.secrets_dir;
        let credentials = dc_config::credentials::Credentials::load_or_create(secrets)
            .map_err(LaunchError::Credentials)?;
        for dc in declared
            .topology
            .datacenter
            .iter()
            .filter(|dc| !dc.relay.is_empty())
        {
            dc_config::credentials::relay_secret_load_or_create(secrets, &dc.name)
                .map_err(LaunchError::Credentials)?;
        }
        let files = render::render(
            &declared.topology,
            &declared.registry,
            &declared.registry_text,
            &credentials,
        );
        let rendered = state_dir.join("rendered");
        render::write_all(&rendered, &files).map_err(io_err(&rendered))?;
        let mut cluster = Self {
            declared,
            credentials,
            members: Vec::new(),
            state_dir,
            temp,
            opts,
            binaries,
            links,
            _ports: ports,
            placement,
        };
        cluster.spawn_all()?;
        Ok(cluster)
    }

    fn spawn_all(&mut self) -> Result<(), LaunchError> {
        let t = self.declared.topology.clone();
        let rendered = self.state_dir.join("rendered");
        let mut first_wave = Vec::new();
        for dc in &t.datacenter {
            for (i, z) in dc.zookeeper.iter().enumerate() {
                std::fs::create_dir_all(&z.data_path).map_err(io_err(&z.data_path))?;
                let myid = z.data_path.join("myid");
                std::fs::write(&myid, format!("{}\n", i + 1)).map_err(io_err(&myid))?;
                let name = render::zookeeper::node_name(dc, i);
                let cfg = rendered.join("zookeeper").join(&name).join("zoo.cfg");
                let spec = Spec {
                    program: self.binaries.java.clone(),
                    args: vec![
                        "-Xms32m".into(),
                        "-Xmx256m".into(),
                        "-XX:+UseSerialGC".into(),
                        "-XX:TieredStopAtLevel=1".into(),
                        "-Dzookeeper.admin.enableServer=false".into(),
                        "-cp".into(),
                        self.binaries.zookeeper_classpath.clone(),
                        "org.apache.zookeeper.server.quorum.QuorumPeerMain".into(),
                        cfg.display().to_string(),
                    ],
                    cwd: z.data_path.clone(),
                    log: z.data_path.join("zookeeper.log"),
                };
                let addr = SocketAddr::new(self.placement.addr(&dc.name), z.port);
                first_wave.push(self.spawn(&dc.name, name, spec, Kind::ZooKeeper(addr))?);
            }
            for (i, addr) in dc.redis.nodes.iter().enumerate() {
                let name = format!("{}-redis{}", dc.name, i + 1);
                let dir = self.state_dir.join(&dc.name).join(&name);
                std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                // Protected mode refuses every client off loopback when
                // there is no password, and in a namespace the host's
                // clients come from the bridge: the bind alone limits who
                // can reach it.
                let mut args = vec![
                    "--port".to_string(),
                    addr.port().to_string(),
                    "--bind".into(),
                    addr.ip().to_string(),
                    "--protected-mode".into(),
                    "no".into(),
                    "--save".into(),
                    String::new(),
                    "--appendonly".into(),
                    "no".into(),
                    "--dir".into(),
                    dir.display().to_string(),
                    "--daemonize".into(),
                    "no".into(),
                ];
                if dc.redis.mode == RedisMode::Cluster {
                    args.extend(
                        [
                            "--cluster-enabled",
                            "yes",
                            "--cluster-config-file",
                            "nodes.conf",
                            "--cluster-node-timeout",
                            "2000",
                        ]
                        .map(String::from),
                    );
                }
                let spec = Spec {
                    program: self.binaries.redis_server.clone(),
                    args,
                    cwd: dir.clone(),
                    log: dir.join("redis.log"),
                };
                first_wave.push(self.spawn(&dc.name, name, spec, Kind::Redis(*addr))?);
            }
        }
        self.wait_ready(&first_wave)?;
        for dc in &t.datacenter {
            if dc.redis.mode == RedisMode::Cluster {
                self.create_redis_cluster(&dc.redis.nodes)?;
            }
        }
        let mut second_wave = Vec::new();
        for r in t.replicas() {
            let dir = &r.replica.data_path;
            for sub in ["", "log", "tmp", "user_files", "format_schemas"] {
                let d = dir.join(sub);
                std::fs::create_dir_all(&d).map_err(io_err(&d))?;
            }
            let cfg_dir = rendered.join("clickhouse").join(r.name());
            let spec = Spec {
                program: self.binaries.clickhouse_server.clone(),
                args: vec![format!(
                    "--config-file={}",
                    cfg_dir.join("config.xml").display()
                )],
                cwd: dir.clone(),
                log: dir.join("log").join("stdout.log"),
            };
            let http = ClickHouseHttp::new(r.http_url(), HTTP_TIMEOUT)
                .with_login(WRITER_USER, &self.credentials.writer);
            second_wave.push(self.spawn(&r.dc.name, r.name(), spec, Kind::ClickHouse(http))?);
        }
        self.wait_ready(&second_wave)?;
        for dc in &t.datacenter {
            let statements = render::ddl::statements(&t, dc, &self.declared.registry);
            for r in dc.replicas() {
                let ch = self.clickhouse(&r.name())?;
                for s in &statements {
                    ch.query(s).map_err(|source| LaunchError::Schema {
                        server: r.name(),
                        source,
                    })?;
                }
            }
        }
        Ok(())
    }

    fn spawn(
        &mut self,
        dc: &str,
        name: String,
        spec: Spec,
        kind: Kind,
    ) -> Result<usize, LaunchError> {
        let proc = self.spawn_in(dc, name, spec)?;
        self.members.push(Member { proc, kind });
        Ok(self.members.len() - 1)
    }

    /// Starts `spec` as a process of datacenter `dc`: inside its network
    /// namespace when it has one, dying with this process like the servers.
    /// The one way every process of a DC is started (servers, and the
    /// collector, shipper and query service of the demo and the tests).
    pub fn spawn_in(&self, dc: &str, name: String, spec: Spec) -> Result<Proc, LaunchError> {
        if self.declared.topology.dc(dc).is_none() {
            return Err(LaunchError::UnknownDatacenter(dc.to_string()));
        }
        let log = spec.log.clone();
        let netns = self.placement.netns(dc).map(String::from);
        Proc::spawn_in(name, spec, netns).map_err(io_err(&log))
    }

    /// Where the datacenters are: loopback or namespaces (and why not).
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// Waits until every listed member serves, failing fast if one exits.
    fn wait_ready(&mut self, idxs: &[usize]) -> Result<(), LaunchError> {
        let deadline = Instant::now() + self.opts.ready_timeout;
        let mut pending: Vec<usize> = idxs.to_vec();
        while !pending.is_empty() {
            if INTERRUPTED.load(Ordering::Relaxed) {
                return Err(LaunchError::Interrupted);
            }
            let mut still = Vec::new();
            for &i in &pending {
                let m = &mut self.members[i];
                if let Some(status) = m.proc.exited() {
                    return Err(LaunchError::Exited {
                        name: m.proc.name.clone(),
                        status: status.to_string(),
                        log: m.proc.spec.log.clone(),
                        tail: m.log_tail(),
                    });
                }
                if !m.ready() {
                    still.push(i);
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                let m = &self.members[pending[0]];
                return Err(LaunchError::NotReady {
                    name: m.proc.name.clone(),
                    secs: self.opts.ready_timeout.as_secs(),
                    log: m.proc.spec.log.clone(),
                    tail: m.log_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn create_redis_cluster(&self, nodes: &[SocketAddr]) -> Result<(), LaunchError> {
        let cli = self
            .binaries
            .redis_cli
            .clone()
            .ok_or(LaunchError::Missing {
                what: "redis-cli (needed for Redis Cluster)".into(),
                looked: "PATH, /usr/sbin, /usr/bin".into(),
            })?;
        let mut cmd = std::process::Command::new(&cli);
        cmd.arg("--cluster").arg("create");
        for n in nodes {
            cmd.arg(n.to_string());
        }
        cmd.args(["--cluster-replicas", "0", "--cluster-yes"]);
        let command = format!("{cmd:?}");
        let out = cmd.output().map_err(io_err(&cli))?;
        if !out.status.success() {
            return Err(LaunchError::Setup {
                command,
                output: String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr),
            });
        }
        let deadline = Instant::now() + self.opts.ready_timeout;
        for n in nodes {
            while !probe::redis_command(*n, &["CLUSTER", "INFO"])
                .is_ok_and(|r| r.contains("cluster_state:ok"))
            {
                if Instant::now() > deadline {
                    return Err(LaunchError::Setup {
                        command: format!("CLUSTER INFO on {n}"),
                        output: "cluster_state never became ok".into(),
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// The topology as launched: real ports and paths.
    pub fn topology(&self) -> &Topology {
        &self.declared.topology
    }

    /// The declared files, with the launched topology.
    pub fn declared(&self) -> &Declared {
        &self.declared
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Names of every server, in start order (`dc1-zk1`, `dc1-redis1`, `dc1-s1-r1`, …).
    pub fn servers(&self) -> Vec<String> {
        self.members.iter().map(|m| m.proc.name.clone()).collect()
    }

    /// Process ids of every running server.
    pub fn pids(&mut self) -> Vec<u32> {
        self.members
            .iter_mut()
            .filter_map(|m| if m.proc.running() { m.proc.pid() } else { None })
            .collect()
    }

    /// Process id of server `name` while it runs.
    pub fn pid(&mut self, name: &str) -> Option<u32> {
        let m = self.member(name).ok()?;
        if m.proc.running() {
            m.proc.pid()
        } else {
            None
        }
    }

    fn member(&mut self, name: &str) -> Result<&mut Member, LaunchError> {
        self.members
            .iter_mut()
            .find(|m| m.proc.name == name)
            .ok_or_else(|| LaunchError::UnknownServer(name.to_string()))
    }

    /// The ClickHouse users' passwords of this cluster.
    pub fn credentials(&self) -> &dc_config::credentials::Credentials {
        &self.credentials
    }

    /// Server `name`'s HTTP interface, asked as `user` (one of the users
    /// of [`dc_config::render::clickhouse`]) instead of the writer.
    pub fn clickhouse_as(&self, name: &str, user: &str) -> Result<ClickHouseHttp, LaunchError> {
        let password = self
            .credentials
            .users()
            .into_iter()
            .find(|(u, _)| *u == user)
            .map(|(_, p)| p.to_string())
            .ok_or_else(|| LaunchError::UnknownUser(user.to_string()))?;
        Ok(self.clickhouse(name)?.with_login(user, &password))
    }

    /// An HTTP client for the ClickHouse server `name` (e.g. `dc1-s1-r1`),
    /// logged in as the writer.
    pub fn clickhouse(&self, name: &str) -> Result<ClickHouseHttp, LaunchError> {
        self.members
            .iter()
            .find_map(|m| match &m.kind {
                Kind::ClickHouse(c) if m.proc.name == name => Some(c.clone()),
                _ => None,
            })
            .ok_or_else(|| LaunchError::UnknownServer(name.to_string()))
    }

    /// Inserts `events` of datacenter `dc` straight into ClickHouse server
    /// `name`'s `events_local`, as a shipper of host `h` would (spool
    /// positions segment 1, offsets 0…): history for tests without a
    /// collector and days of waiting.
    pub fn load_events(
        &self,
        name: &str,
        dc: &str,
        events: &[dc_config::event::ValidEvent],
    ) -> Result<(), LaunchError> {
        let db = &self.declared.topology.database;
        self.clickhouse(name)?
            .insert_events(db, dc, "h", 0, events)
            .map(|_| ())
            .map_err(load_failed(name))
    }

    /// Aggregates, once for datacenter `dc` (on ClickHouse server `name`,
    /// reading the whole DC), every minute `events` fall in, as its shipper
    /// would after [`Self::load_events`]: one statement per event type, as a
    /// backlog's catch-up.
    pub fn aggregate_minutes(
        &self,
        name: &str,
        dc: &str,
        events: &[dc_config::event::ValidEvent],
    ) -> Result<(), LaunchError> {
        let ch = self.clickhouse(name)?;
        let load = load_failed(name);
        let reg = &self.declared.registry;
        // Per event type, its minutes (sorted, once each): one statement.
        let mut minutes: std::collections::BTreeMap<&str, std::collections::BTreeSet<u32>> =
            std::collections::BTreeMap::new();
        for e in events {
            minutes
                .entry(e.event.as_str())
                .or_default()
                .insert((e.time_ms / 60_000 * 60) as u32);
        }
        for (event, minutes) in minutes {
            let minutes: Vec<u32> = minutes.into_iter().collect();
            if let Some(sql) = dc_config::rollup::aggregate_minutes_sql(
                &self.declared.topology.database,
                dc,
                event,
                &reg.event[event],
                &minutes,
                1,
            ) {
                ch.query(&sql).map_err(&load)?;
            }
        }
        Ok(())
    }

    /// Stops server `name` gracefully (SIGTERM, then SIGKILL after a grace period).
    pub fn stop(&mut self, name: &str) -> Result<(), LaunchError> {
        self.member(name)?.proc.stop();
        Ok(())
    }

    /// Kills server `name` at once, as a crash would.
    pub fn kill(&mut self, name: &str) -> Result<(), LaunchError> {
        self.member(name)?.proc.kill();
        Ok(())
    }

    /// Starts a stopped server `name` again and waits until it serves.
    pub fn restart(&mut self, name: &str) -> Result<(), LaunchError> {
        let i = self
            .members
            .iter()
            .position(|m| m.proc.name == name)
            .ok_or_else(|| LaunchError::UnknownServer(name.to_string()))?;
        let m = &mut self.members[i];
        if !m.proc.running() {
            m.proc.kill();
            let log = m.proc.spec.log.clone();
            m.proc.start().map_err(io_err(&log))?;
        }
        self.wait_ready(&[i])?;
        // The ClickHouse servers using a restarted ZooKeeper keep their
        // replicated tables read-only until they have a session again.
        if matches!(self.members[i].kind, Kind::ZooKeeper(_)) {
            let clickhouse: Vec<usize> = (0..self.members.len())
                .filter(|&j| matches!(self.members[j].kind, Kind::ClickHouse(_)))
                .collect();
            self.wait_ready(&clickhouse)?;
        }
        Ok(())
    }

    /// The datacenters a global read from ClickHouse server `server`
    /// reaches now, by name: every DC's marker row through the global table,
    /// skipping the shards it cannot reach (as a partial answer does).
    pub fn datacenters_answering(&self, server: &str) -> Result<Vec<String>, LaunchError> {
        let sql = format!(
            "SELECT dc FROM {}.{} GROUP BY dc ORDER BY dc FORMAT TSV",
            self.declared.topology.database,
            dc_config::schema::table::DC_MARKER_ALL
        );
        let rows = self
            .clickhouse(server)?
            .query_with(&sql, &[("skip_unavailable_shards", "1")])
            .map_err(|source| LaunchError::Read {
                server: server.to_string(),
                source,
            })?;
        Ok(rows.lines().map(String::from).collect())
    }

    /// Where the cut flags of the cross-DC links live (see [`link`]).
    pub fn links_dir(&self) -> PathBuf {
        self.state_dir.join(LINKS_DIR)
    }

    /// Cuts datacenter `dc` off from the others: every relay to or from it
    /// drops its connections and refuses new ones until [`Self::heal`].
    /// Without `cross_dc_delay` there are no relays to cut: an error.
    pub fn cut(&self, dc: &str) -> Result<(), LaunchError> {
        self.link_flag(dc, true)
    }

    /// Heals datacenter `dc`'s links.
    pub fn heal(&self, dc: &str) -> Result<(), LaunchError> {
        self.link_flag(dc, false)
    }

    fn link_flag(&self, dc: &str, cut: bool) -> Result<(), LaunchError> {
        if self.declared.topology.dc(dc).is_none() {
            return Err(LaunchError::UnknownDatacenter(dc.to_string()));
        }
        if self.links.is_empty() {
            return Err(LaunchError::NoLinks);
        }
        let dir = self.links_dir();
        let r = if cut {
            link::cut(&dir, dc)
        } else {
            link::heal(&dir, dc)
        };
        r.map_err(io_err(&dir))
    }

    /// Stops every server: ClickHouse first, ZooKeeper last, so no server
    /// loses a dependency while it shuts down. Gracefully for a kept state
    /// directory; at once for a temporary one, which is deleted anyway.
    pub fn shutdown(&mut self) {
        let graceful = self.temp.is_none();
        for m in self.members.iter_mut().rev() {
            if graceful {
                m.proc.stop();
            } else {
                m.proc.kill();
            }
        }
        self.members.clear();
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn is_port_race(e: &LaunchError) -> bool {
    match e {
        LaunchError::Exited { tail, .. } | LaunchError::NotReady { tail, .. } => {
            tail.contains("Address already in use") || tail.contains("BindException")
        }
        _ => false,
    }
}
