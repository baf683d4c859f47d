//! The topology file: datacenters, their ClickHouse shards × replicas,
//! ZooKeeper, Redis, and where the Spoolhouse services listen.
//!
//! ```toml
//! database = "spoolhouse"       # default
//! global_cluster = "global"     # default: the cluster over every DC
//!
//! [[datacenter]]
//! name = "dc1"
//! host = "dc1-app1"             # the app host, recorded in each event's `host` column;
//!                               # a fleet: `hosts = ["dc1-app[001:400]"]` (see crate::app_hosts)
//! zookeeper = [{ host = "127.0.0.1", port = 2181, data_path = "/var/lib/spoolhouse/dc1/zk1" }]
//! redis = { mode = "single", nodes = ["127.0.0.1:6379"] }
//! # every app host's collector, spool and shipper (per-host overrides: [[datacenter.app_host]])
//! collector = { tcp = "127.0.0.1:7101", socket = "/run/spoolhouse/dc1.sock", inbox = "/var/lib/spoolhouse/dc1/inbox", admin = "127.0.0.1:7102" }
//! spool = { dir = "/var/lib/spoolhouse/dc1/spool", quota_bytes = 10737418240 }
//! shipper = { admin = "127.0.0.1:7103" }
//! query = { listen = "127.0.0.1:7104" }
//! [[datacenter.clickhouse.shard]]
//! weight = 1
//! replica = [{ host = "127.0.0.1", tcp_port = 9000, http_port = 8123, interserver_port = 9009, data_path = "/var/lib/spoolhouse/dc1/ch-s1-r1" }]
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::check::{self, Checker, IDENTIFIER_RULE};
use crate::error::{ConfigErrors, LoadError};
use crate::locate::KeyPath;

/// Default ClickHouse database holding every Spoolhouse table.
pub const DEFAULT_DATABASE: &str = "spoolhouse";
/// Default name of the ClickHouse cluster spanning every datacenter.
pub const DEFAULT_GLOBAL_CLUSTER: &str = "global";
/// Default Unix socket mode: owner and group may write, others may not.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;
/// The smallest spool quota accepted: below this a single maximal batch
/// could not fit, and the collector would refuse everything.
pub const MIN_SPOOL_QUOTA_BYTES: u64 = 64 * 1024 * 1024;

/// A checked topology: every rule in this module holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// ClickHouse database for all Spoolhouse tables.
    #[serde(default = "default_database")]
    pub database: String,
    /// Name of the ClickHouse cluster over every datacenter.
    #[serde(default = "default_global_cluster")]
    pub global_cluster: String,
    /// Limits of analysts' SQL, which ClickHouse enforces (`[sql]`;
    /// every one has a default).
    #[serde(default)]
    pub sql: crate::services::SqlLimits,
    /// Folder of the ClickHouse users' password files on every host that
    /// needs one (default `/etc/spoolhouse/secrets`): the shipper and the
    /// query service read theirs from here at start. `config render` puts
    /// them in its `secrets/` folder and Ansible copies them here, mode
    /// 0600 ([`crate::credentials`]).
    #[serde(default = "default_secrets_dir")]
    pub secrets_dir: PathBuf,
    /// The datacenters, in declaration order.
    pub datacenter: Vec<Datacenter>,
    /// How one DC reaches another DC's servers when not directly:
    /// `(viewing DC, remote ClickHouse's host:tcp_port or remote service's
    /// address)` → the address to dial instead. Never declared (empty in a
    /// topology file); the local launcher fills it to put a delaying,
    /// cuttable relay on every cross-DC path.
    #[serde(skip)]
    pub cross_dc_routes: std::collections::BTreeMap<(String, String), SocketAddr>,
    /// Addresses besides loopback and the topology's own servers that
    /// ClickHouse accepts its users from. Never declared; the local launcher
    /// adds its bridge's address when each DC runs in a network namespace,
    /// since the host's connections into a DC (relays, launcher, tests)
    /// come from it.
    #[serde(skip)]
    pub client_hosts: Vec<std::net::IpAddr>,
}

/// One datacenter: its own ClickHouse cluster, ZooKeeper, Redis and services.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Datacenter {
    /// Datacenter name; also its ClickHouse cluster name and `{dc}` macro.
    pub name: String,
    /// The one app host of a DC that has one (the form before fleets);
    /// give `hosts` instead for several ([`crate::app_hosts`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The app hosts, each running a collector and a shipper over its own
    /// spool: names and ranges (`dc1-app[001:400]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// ZooKeeper ensemble used by this DC's replicated tables.
    pub zookeeper: Vec<ZkNode>,
    /// This DC's ClickHouse cluster.
    pub clickhouse: ClickHouse,
    /// This DC's Redis, for the latest keyed state.
    pub redis: Redis,
    /// Where each app host's collector listens (the defaults; a host's
    /// own values come from [`Datacenter::app_hosts`]).
    pub collector: Collector,
    /// Each app host's spool (the defaults).
    pub spool: Spool,
    /// Where each app host's shipper serves its admin endpoints (the
    /// defaults).
    pub shipper: Shipper,
    /// Per-host overrides of the three defaults above.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub app_host: Vec<crate::app_hosts::HostOverride>,
    /// Where the query service listens.
    pub query: Query,
    /// The DC's relays (docs/adr/0017-relay-tier.md). With any, the DC runs
    /// in relay mode: every app host's shipper forwards its batches to
    /// them instead of inserting into ClickHouse itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relay: Vec<Relay>,
}

/// One relay of a DC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relay {
    /// Its name, unique in the topology: the machine it runs on (an
    /// inventory name) and its inserts' `query_id` prefix.
    pub name: String,
    /// Where forwarders connect.
    pub listen: SocketAddr,
    /// Admin HTTP (`/metrics`, `/healthz`).
    pub admin: SocketAddr,
    /// Its spool.
    pub spool_dir: PathBuf,
    /// Relative share of the DC's app hosts (default 1).
    #[serde(default = "one")]
    pub weight: u32,
}

/// One ZooKeeper server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZkNode {
    /// Host name or IP address.
    pub host: String,
    /// Client port.
    pub port: u16,
    /// Data directory (snapshots and transaction log).
    pub data_path: PathBuf,
}

/// A DC's ClickHouse cluster: shards, each with replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouse {
    /// Shards, in order; shard numbers are 1-based positions here.
    pub shard: Vec<Shard>,
}

/// One shard of a DC's cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    /// Relative share of inserts and of Distributed writes (default 1).
    #[serde(default = "one")]
    pub weight: u32,
    /// Replicas holding the same data.
    pub replica: Vec<Replica>,
}

/// One ClickHouse server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replica {
    /// Host name or IP address the server listens on.
    pub host: String,
    /// Native protocol port (Distributed queries, clickhouse-client).
    pub tcp_port: u16,
    /// HTTP port (inserts and queries from Spoolhouse).
    pub http_port: u16,
    /// Replication port (replicas fetch parts from each other).
    pub interserver_port: u16,
    /// Data directory of this server.
    pub data_path: PathBuf,
}

/// A Redis Cluster node also listens on its port + this (its cluster bus).
pub const REDIS_CLUSTER_BUS_OFFSET: u16 = 10000;

/// How a DC's Redis is deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One server.
    Single,
    /// Redis Cluster: keys spread over masters by hash slot.
    Cluster,
}

/// A DC's Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redis {
    /// Single node or cluster.
    pub mode: RedisMode,
    /// `host:port` of each node (one for `single`, the masters for `cluster`).
    pub nodes: Vec<SocketAddr>,
}

/// Where the collector listens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Collector {
    /// Loopback TCP listener for JSON lines.
    pub tcp: SocketAddr,
    /// Unix socket for JSON lines.
    pub socket: PathBuf,
    /// Mode of the Unix socket file (default 0o660).
    #[serde(default = "default_socket_mode")]
    pub socket_mode: u32,
    /// LSD-style inbox directory apps append lines to.
    pub inbox: PathBuf,
    /// Admin HTTP (`/metrics`, `/healthz`).
    pub admin: SocketAddr,
}

/// The local spool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spool {
    /// Directory of segment files.
    pub dir: PathBuf,
    /// Total bytes the spool may hold before the collector pushes back.
    pub quota_bytes: u64,
}

/// Where the shipper serves its admin endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shipper {
    /// Admin HTTP (`/metrics`, `/healthz`).
    pub admin: SocketAddr,
}

/// Where the query service listens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    /// HTTP API, `/metrics` and `/healthz`.
    pub listen: SocketAddr,
    /// The machine it runs on (an inventory name; default: the DC's first
    /// app host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

fn default_database() -> String {
    DEFAULT_DATABASE.to_string()
}
fn default_secrets_dir() -> PathBuf {
    PathBuf::from("/etc/spoolhouse/secrets")
}

fn default_global_cluster() -> String {
    DEFAULT_GLOBAL_CLUSTER.to_string()
}
fn default_socket_mode() -> u32 {
    DEFAULT_SOCKET_MODE
}
fn one() -> u32 {
    1
}

/// A ClickHouse server with its place in the topology.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaRef<'a> {
    /// The datacenter.
    pub dc: &'a Datacenter,
    /// 1-based shard number within the DC.
    pub shard: usize,
    /// 1-based replica number within the shard.
    pub replica_no: usize,
    /// The server.
    pub replica: &'a Replica,
}

impl ReplicaRef<'_> {
    /// Stable replica name, e.g. `dc1-s2-r1`: the `{replica}` macro.
    pub fn name(&self) -> String {
        format!("{}-s{}-r{}", self.dc.name, self.shard, self.replica_no)
    }

    /// Base URL of the server's HTTP interface.
    pub fn http_url(&self) -> String {
        format!("http://{}:{}", self.replica.host, self.replica.http_port)
    }
}

impl Datacenter {
    /// Every ClickHouse server of this DC, in shard then replica order.
    pub fn replicas(&self) -> impl Iterator<Item = ReplicaRef<'_>> {
        self.clickhouse
            .shard
            .iter()
            .enumerate()
            .flat_map(move |(s, shard)| {
                shard
                    .replica
                    .iter()
                    .enumerate()
                    .map(move |(r, replica)| ReplicaRef {
                        dc: self,
                        shard: s + 1,
                        replica_no: r + 1,
                        replica,
                    })
            })
    }
}

impl Topology {
    /// Reads and checks a topology file.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        check::load_checked(path)
    }

    /// Parses and checks the text of a topology file named `file`.
    pub fn parse(file: &Path, src: &str) -> Result<Self, ConfigErrors> {
        check::parse_checked(file, src)
    }

    /// The datacenter called `name`.
    pub fn dc(&self, name: &str) -> Option<&Datacenter> {
        self.datacenter.iter().find(|d| d.name == name)
    }

    /// Every ClickHouse server of every DC.
    pub fn replicas(&self) -> impl Iterator<Item = ReplicaRef<'_>> {
        self.datacenter.iter().flat_map(|d| d.replicas())
    }
}

impl check::Declaration for Topology {
    fn check(&self, c: &mut Checker) {
        let root = KeyPath::root();
        self.sql.check(c, &root.key("sql"));
        c.require(
            check::is_identifier(&self.database),
            &root.key("database"),
            IDENTIFIER_RULE,
        );
        c.require(
            check::is_identifier(&self.global_cluster),
            &root.key("global_cluster"),
            IDENTIFIER_RULE,
        );
        require_absolute(c, &self.secrets_dir, &root.key("secrets_dir"));
        c.require(
            !self.datacenter.is_empty(),
            &root.key("datacenter"),
            "declare at least one [[datacenter]]",
        );
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut host_names: HashMap<String, KeyPath> = HashMap::new();
        let mut ports = PortBook::default();
        for (i, dc) in self.datacenter.iter().enumerate() {
            let at = root.key("datacenter").index(i);
            for (j, r) in dc.relay.iter().enumerate() {
                let at = at.key("relay").index(j);
                c.require(
                    !r.name.is_empty() && r.name.len() <= 255 && !r.name.contains('/'),
                    &at.key("name"),
                    "must be 1 to 255 bytes without `/`",
                );
                c.require(
                    dc.relay.iter().filter(|o| o.name == r.name).count() == 1,
                    &at.key("name"),
                    "relay names must be unique in a datacenter",
                );
                c.require(r.weight >= 1, &at.key("weight"), "must be at least 1");
                require_absolute(c, &r.spool_dir, &at.key("spool_dir"));
            }
            if !check::is_identifier(&dc.name) {
                c.fail(&at.key("name"), IDENTIFIER_RULE);
            }
            if dc.name == self.global_cluster {
                c.fail(
                    &at.key("name"),
                    format!(
                        "`{}` is the global cluster's name; rename the DC or set `global_cluster`",
                        dc.name
                    ),
                );
            }
            if let Some(first) = names.insert(&dc.name, i) {
                c.fail(
                    &at.key("name"),
                    format!("duplicate datacenter name: also datacenter[{first}]"),
                );
            }
            dc.check_zookeeper(c, &at, &mut ports);
            dc.check_clickhouse(c, &at, &mut ports);
            dc.check_redis(c, &at, &mut ports);
            ports.claim_addr(c, dc.query.listen, at.key("query").key("listen"));
            dc.check_app_hosts(c, &at, &mut host_names, &mut ports);
        }
        self.check_paths(c, &root);
    }
}

/// Who may share a listener or a path with whom. Servers and the query
/// service are [`Scope::Shared`]: their addresses name their machine, so
/// each must be unique across the topology. An app host's listeners and
/// paths are its own machine's ([`Scope::AppHost`]): every host of a fleet
/// may use the same ones, but not one host twice, nor one a server uses.
#[derive(Clone, PartialEq, Eq)]
enum Scope {
    /// A server's or the query service's: unique across the topology.
    Shared,
    /// A server's data path on machine `host`: two servers on one machine
    /// need two folders; two machines may use the same path. A loopback
    /// machine is the one the app hosts run on too (all on one host).
    Machine(String),
    /// What the hosts of a DC left to its defaults use.
    Defaults(String),
    /// One overridden app host's.
    AppHost(String),
}

impl Scope {
    fn clashes(&self, other: &Scope) -> bool {
        match (self, other) {
            (Scope::Shared, _) | (_, Scope::Shared) => true,
            (Scope::Machine(a), Scope::Machine(b)) => a == b,
            (Scope::Machine(m), _) | (_, Scope::Machine(m)) => is_loopback_host(m),
            (Scope::Defaults(a), Scope::Defaults(b)) | (Scope::AppHost(a), Scope::AppHost(b)) => {
                a == b
            }
            _ => false,
        }
    }

    /// Words naming the scope in an error (empty for a shared one).
    fn on(&self) -> String {
        match self {
            Scope::Shared => String::new(),
            Scope::Machine(m) => format!(" on {m}"),
            Scope::Defaults(dc) => format!(" on {dc}'s app hosts"),
            Scope::AppHost(h) => format!(" on app host `{h}`"),
        }
    }
}

/// Every claimed key (a listener's `(host, port)` or a path) with its
/// scope and where it was declared: two services on one port, or two
/// servers on one data directory, fail only at start-up.
struct Book<K>(HashMap<K, Vec<(Scope, KeyPath)>>);

impl<K> Default for Book<K> {
    fn default() -> Self {
        Self(HashMap::new())
    }
}

impl<K: std::hash::Hash + Eq> Book<K> {
    /// Takes `key` for `path` in `scope`; where it was first taken, if it
    /// was already, in a scope that clashes.
    fn take(&mut self, key: K, scope: Scope, path: KeyPath) -> Option<KeyPath> {
        let owners = self.0.entry(key).or_default();
        if let Some((_, first)) = owners.iter().find(|(s, _)| s.clashes(&scope)) {
            return Some(first.clone());
        }
        owners.push((scope, path));
        None
    }
}

/// The topology's listeners ([`Book`] of `(host, port)`).
#[derive(Default)]
struct PortBook(Book<(String, u16)>);

impl PortBook {
    /// Takes `host:port` for `path`, or fails `path` if it is taken or 0.
    fn claim_in(&mut self, c: &mut Checker, scope: Scope, host: &str, port: u16, path: KeyPath) {
        if port == 0 {
            c.fail(
                &path,
                "port 0 is not a fixed port; choose one from 1 to 65535",
            );
            return;
        }
        let host = normalise_host(host);
        let on = scope.on();
        if let Some(first) = self.0.take((host.clone(), port), scope, path.clone()) {
            c.fail(
                &path,
                format!("duplicate port{on}: {host}:{port} is already used by `{first}`"),
            );
        }
    }

    /// [`PortBook::claim_in`] for a server's listener.
    fn claim(&mut self, c: &mut Checker, host: &str, port: u16, path: KeyPath) {
        self.claim_in(c, Scope::Shared, host, port, path);
    }

    /// [`PortBook::claim`] for a socket address.
    fn claim_addr(&mut self, c: &mut Checker, addr: SocketAddr, path: KeyPath) {
        self.claim(c, &addr.ip().to_string(), addr.port(), path);
    }
}

impl Datacenter {
    fn check_zookeeper(&self, c: &mut Checker, at: &KeyPath, ports: &mut PortBook) {
        c.require(
            !self.zookeeper.is_empty(),
            &at.key("zookeeper"),
            "declare at least one ZooKeeper node: replicated tables need one",
        );
        let ensemble = self.zookeeper.len() > 1;
        for (z, node) in self.zookeeper.iter().enumerate() {
            let zp = at.key("zookeeper").index(z);
            ports.claim(c, &node.host, node.port, zp.key("port"));
            // An ensemble member also listens on its quorum and election ports.
            if ensemble {
                let off = crate::render::zookeeper::PEER_PORT_OFFSET;
                for (k, name) in [(1, "port + 1000 (quorum)"), (2, "port + 2000 (election)")] {
                    match node.port.checked_add(k * off) {
                        Some(p) => ports.claim(c, &node.host, p, zp.key(name)),
                        None => c.fail(
                            &zp.key("port"),
                            format!("{name} is above 65535; choose a lower port"),
                        ),
                    }
                }
            }
            require_absolute(c, &node.data_path, &zp.key("data_path"));
        }
    }

    fn check_clickhouse(&self, c: &mut Checker, at: &KeyPath, ports: &mut PortBook) {
        let ch = at.key("clickhouse");
        c.require(
            !self.clickhouse.shard.is_empty(),
            &ch.key("shard"),
            "declare at least one [[datacenter.clickhouse.shard]]",
        );
        for (s, shard) in self.clickhouse.shard.iter().enumerate() {
            let sp = ch.key("shard").index(s);
            c.require(
                shard.weight > 0,
                &sp.key("weight"),
                "must be at least 1: a shard of weight 0 would never receive data",
            );
            c.require(
                !shard.replica.is_empty(),
                &sp.key("replica"),
                "declare at least one replica",
            );
            for (r, rep) in shard.replica.iter().enumerate() {
                let rp = sp.key("replica").index(r);
                ports.claim(c, &rep.host, rep.tcp_port, rp.key("tcp_port"));
                ports.claim(c, &rep.host, rep.http_port, rp.key("http_port"));
                ports.claim(
                    c,
                    &rep.host,
                    rep.interserver_port,
                    rp.key("interserver_port"),
                );
                require_absolute(c, &rep.data_path, &rp.key("data_path"));
            }
        }
    }

    fn check_redis(&self, c: &mut Checker, at: &KeyPath, ports: &mut PortBook) {
        let rp = at.key("redis").key("nodes");
        match self.redis.mode {
            RedisMode::Single => c.require(
                self.redis.nodes.len() == 1,
                &rp,
                "mode `single` takes exactly one node",
            ),
            RedisMode::Cluster => c.require(
                !self.redis.nodes.is_empty(),
                &rp,
                "mode `cluster` takes at least one node (its masters)",
            ),
        }
        for (n, node) in self.redis.nodes.iter().enumerate() {
            ports.claim_addr(c, *node, rp.index(n));
            if self.redis.mode == RedisMode::Cluster {
                let bus = rp.index(n).key("port + 10000 (cluster bus)");
                match node.port().checked_add(REDIS_CLUSTER_BUS_OFFSET) {
                    Some(p) => ports.claim(c, &node.ip().to_string(), p, bus),
                    None => c.fail(&rp.index(n), "its cluster bus port (port + 10000) is above 65535; choose a port below 55536"),
                }
            }
        }
    }

    /// The app hosts: names (each once in the topology), overrides, and
    /// each host's listeners and paths. Hosts left to the defaults share
    /// them, so the defaults are checked once, located at the DC's own
    /// `collector`, `spool` and `shipper`; an overridden host is checked
    /// again with its own values, located at its `app_host` entry.
    fn check_app_hosts(
        &self,
        c: &mut Checker,
        at: &KeyPath,
        seen: &mut HashMap<String, KeyPath>,
        ports: &mut PortBook,
    ) {
        let mut entries: Vec<(KeyPath, String)> = Vec::new();
        if let Some(h) = &self.host {
            entries.push((at.key("host"), h.clone()));
        }
        for (i, e) in self.hosts.iter().enumerate() {
            for name in crate::app_hosts::expand(e).unwrap_or_default() {
                entries.push((at.key("hosts").index(i), name));
            }
        }
        c.require(
            self.host.is_some() || !self.hosts.is_empty(),
            &at.key("hosts"),
            "declare the DC's app hosts, e.g. `hosts = [\"dc1-app[001:400]\"]` (or `host = \"dc1-app1\"` for one)",
        );
        c.require(
            entries.len() <= crate::app_hosts::MAX_APP_HOSTS,
            &at.key("hosts"),
            format!(
                "at most {} app hosts per datacenter; this one has {}",
                crate::app_hosts::MAX_APP_HOSTS,
                entries.len()
            ),
        );
        for (path, name) in &entries {
            if !crate::app_hosts::is_host_name(name) {
                c.fail(
                    path,
                    format!("app host `{name}`: a host name is 1 to 255 letters, digits, `.`, `-` or `_`"),
                );
            } else if let Some(first) = seen.get(name) {
                c.fail(
                    path,
                    format!("app host `{name}` is already declared by `{first}`: a host belongs to one datacenter, once"),
                );
            } else {
                seen.insert(name.clone(), path.clone());
            }
        }
        let (hosts, problems) = self.resolve_app_hosts();
        for p in problems {
            let mut path = at.clone();
            for seg in &p.at {
                path = match seg.parse::<usize>() {
                    Ok(n) => path.index(n),
                    Err(_) => path.key(seg),
                };
            }
            c.fail(&path, p.rule);
        }
        let defaults = self.host_defaults();
        check_host(c, at, Scope::Defaults(self.name.clone()), &defaults, ports);
        for h in hosts.iter().filter(|h| h.overridden.is_some()) {
            let o = h.overridden.unwrap_or(0);
            let ap = at.key("app_host").index(o);
            let own = &self.app_host[o];
            // A key the override leaves alone is located at the default.
            let loc =
                |section: &str, key: &str| own.sets(section, key).then(|| ap.key(section).key(key));
            let mut sub = Checker::default();
            check_host(&mut sub, at, Scope::AppHost(h.name.clone()), h, ports);
            for (path, rule) in sub.into_found() {
                let (section, key) = section_key(&path, at);
                match loc(&section, &key) {
                    Some(p) => c.fail(&p, format!("app host `{}`: {rule}", h.name)),
                    // A clash of two default values on this host (say, an
                    // overridden port now used by a default one) is still this host's.
                    None if rule.starts_with("duplicate") => {
                        c.fail(&ap.key("name"), format!("app host `{}`: {rule}", h.name))
                    }
                    None => {}
                }
            }
        }
    }

    /// The paths this DC's servers and app hosts own, each with its scope
    /// and where it is declared.
    fn owned_paths(&self, at: &KeyPath) -> Vec<(PathBuf, Scope, KeyPath)> {
        let mut owned = Vec::new();
        for (z, node) in self.zookeeper.iter().enumerate() {
            owned.push((
                node.data_path.clone(),
                Scope::Machine(normalise_host(&node.host)),
                at.key("zookeeper").index(z).key("data_path"),
            ));
        }
        for (s, shard) in self.clickhouse.shard.iter().enumerate() {
            for (r, rep) in shard.replica.iter().enumerate() {
                owned.push((
                    rep.data_path.clone(),
                    Scope::Machine(normalise_host(&rep.host)),
                    at.key("clickhouse")
                        .key("shard")
                        .index(s)
                        .key("replica")
                        .index(r)
                        .key("data_path"),
                ));
            }
        }
        let host_paths = |h: &crate::app_hosts::AppHost| {
            [
                (h.spool.dir.clone(), "spool", "dir"),
                (h.collector.socket.clone(), "collector", "socket"),
                (h.collector.inbox.clone(), "collector", "inbox"),
            ]
        };
        let defaults = self.host_defaults();
        for (p, section, key) in host_paths(&defaults) {
            owned.push((
                p,
                Scope::Defaults(self.name.clone()),
                at.key(section).key(key),
            ));
        }
        for h in self.app_hosts() {
            let Some(o) = h.overridden else { continue };
            let ap = at.key("app_host").index(o);
            for (p, section, key) in host_paths(&h) {
                let path = if self.app_host[o].sets(section, key) {
                    ap.key(section).key(key)
                } else {
                    ap.key("name")
                };
                owned.push((p, Scope::AppHost(h.name.clone()), path));
            }
        }
        owned
    }
}

/// One app host's listeners and paths (or the defaults, in
/// [`Scope::Defaults`]), located at the DC's `collector`, `spool` and
/// `shipper` under `at`.
fn check_host(
    c: &mut Checker,
    at: &KeyPath,
    scope: Scope,
    h: &crate::app_hosts::AppHost,
    ports: &mut PortBook,
) {
    let col = at.key("collector");
    let addr = |a: SocketAddr| a.ip().to_string();
    ports.claim_in(
        c,
        scope.clone(),
        &addr(h.collector.tcp),
        h.collector.tcp.port(),
        col.key("tcp"),
    );
    c.require(
        h.collector.tcp.ip().is_loopback(),
        &col.key("tcp"),
        "the collector's TCP listener must be on loopback (127.0.0.0/8 or ::1): apps hand events to their own host",
    );
    ports.claim_in(
        c,
        scope.clone(),
        &addr(h.collector.admin),
        h.collector.admin.port(),
        col.key("admin"),
    );
    require_absolute(c, &h.collector.socket, &col.key("socket"));
    require_absolute(c, &h.collector.inbox, &col.key("inbox"));
    c.require(
        h.collector.socket_mode <= 0o777,
        &col.key("socket_mode"),
        "must be a file mode of at most 0o777 (write it as 0o660)",
    );
    let admin = h.shipper.admin;
    ports.claim_in(
        c,
        scope,
        &addr(admin),
        admin.port(),
        at.key("shipper").key("admin"),
    );
    require_absolute(c, &h.spool.dir, &at.key("spool").key("dir"));
    c.require(
        h.spool.quota_bytes >= MIN_SPOOL_QUOTA_BYTES,
        &at.key("spool").key("quota_bytes"),
        format!("must be at least {MIN_SPOOL_QUOTA_BYTES} (64 MiB)"),
    );
}

/// The `(section, key)` of a path `at.section.key` that [`check_host`] reported.
fn section_key(path: &KeyPath, at: &KeyPath) -> (String, String) {
    let rest = &path.0[at.0.len().min(path.0.len())..];
    let name = |i: usize| match rest.get(i) {
        Some(crate::locate::Seg::Key(k)) => k.clone(),
        _ => String::new(),
    };
    (name(0), name(1))
}

impl Topology {
    /// Paths must not collide either: two servers on one data directory
    /// corrupt each other.
    fn check_paths(&self, c: &mut Checker, root: &KeyPath) {
        let mut paths: Book<PathBuf> = Book::default();
        for (i, dc) in self.datacenter.iter().enumerate() {
            for (p, scope, key) in dc.owned_paths(&root.key("datacenter").index(i)) {
                let on = scope.on();
                if let Some(first) = paths.take(p.clone(), scope, key.clone()) {
                    c.fail(
                        &key,
                        format!(
                            "duplicate path {}{on}: already used by `{first}`",
                            p.display()
                        ),
                    );
                }
            }
        }
    }
}

fn require_absolute(c: &mut Checker, p: &Path, key: &KeyPath) {
    c.require(
        p.is_absolute(),
        key,
        format!("must be an absolute path (got `{}`)", p.display()),
    );
}

/// A host (as [`normalise_host`] gives it) that is the local machine.
fn is_loopback_host(h: &str) -> bool {
    h.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// `localhost` and `127.0.0.1` name the same listener for port clashes.
fn normalise_host(h: &str) -> String {
    match h {
        "localhost" => "127.0.0.1".to_string(),
        other => other.to_string(),
    }
}
