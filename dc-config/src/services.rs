//! Configuration of the Spoolhouse services, derived from the topology: the
//! collector, shipper and query service of a datacenter read these types,
//! so what `config render` writes is exactly what they accept.
//!
//! Each file names the registry by a path relative to the file itself
//! (`events.toml` beside it by default), so a rendered folder can be moved.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::app_hosts::AppHost;
use crate::topology::{Datacenter, Redis, Topology};

/// File name of the registry copied beside the service configs.
pub const REGISTRY_FILE: &str = "events.toml";

/// The collector of one DC's app host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// Datacenter name.
    pub dc: String,
    /// App host name, recorded with each event.
    pub host: String,
    /// Registry file, relative to this file.
    pub registry: PathBuf,
    /// Loopback TCP listener.
    pub tcp: SocketAddr,
    /// Unix socket path.
    pub socket: PathBuf,
    /// Unix socket mode.
    pub socket_mode: u32,
    /// Group to own the Unix socket, by name or number (default: the
    /// collector's own group); with mode 0660 its members may send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
    /// LSD-style inbox directory.
    pub inbox: PathBuf,
    /// Admin HTTP (`/metrics`, `/healthz`).
    pub admin: SocketAddr,
    /// Spool directory.
    pub spool_dir: PathBuf,
    /// Spool quota in bytes.
    pub spool_quota_bytes: u64,
    /// Where invalid inbox lines are kept, as JSON lines with the rule they
    /// broke (default: `SPOOL_DIR/quarantine`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<PathBuf>,
    /// Bounds, timeouts and the fsync policy (every field has a default).
    #[serde(default)]
    pub limits: CollectorLimits,
}

impl CollectorConfig {
    /// The quarantine folder: `quarantine`, or `SPOOL_DIR/quarantine`.
    pub fn quarantine_dir(&self) -> PathBuf {
        self.quarantine
            .clone()
            .unwrap_or_else(|| self.spool_dir.join("quarantine"))
    }
}

/// When the collector's spool appends count as durable, i.e. when it acknowledges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// fdatasync per batch before its acknowledgement.
    Always,
    /// Group commit: concurrent batches share one fdatasync; same promise as
    /// `always` (the default: nothing acknowledged is lost on power failure).
    #[default]
    Group,
    /// Acknowledge once written; a background sync every `fsync_interval_ms`
    /// bounds the loss on power failure (not on a process crash) to that window.
    Interval,
}

/// Every bound of the collector, with its default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorLimits {
    /// Most connections on the Unix socket served at once (default 1 024):
    /// each holds at most one read buffer, so this bounds memory at about
    /// `max_connections * read_buffer_bytes`.
    pub max_connections: usize,
    /// Most loopback TCP connections served at once (default 256), counted
    /// apart from the socket's: any local user can connect over TCP, only
    /// the apps the socket's mode admits can use the socket, and TCP
    /// clients must not be able to lock them out.
    pub max_tcp_connections: usize,
    /// Accept events up to this many seconds old whatever the registry's
    /// `accept_past_s` says (default 0: the registry's window): raised on
    /// purpose, for the time of a load of older history.
    pub history_s: u64,
    /// Longest line accepted, newline excluded (default 1 048 576): far above
    /// any event the registry allows, small enough to bound a buffer.
    pub line_bytes_max: usize,
    /// Bytes read from a connection or inbox file per batch (default
    /// 262 144): about 2 500 events of 100 B per spool append, enough to
    /// amortise the append and its sync, small enough for ~1 ms batches.
    pub read_buffer_bytes: usize,
    /// A connection with nothing to read for this long is closed (default
    /// 60 000 ms), so forgotten clients do not hold connection slots; so is
    /// one whose client reads none of its answers for this long.
    pub idle_timeout_ms: u64,
    /// On SIGTERM, how long in-flight batches may take to finish before the
    /// collector exits anyway (default 10 000 ms); unfinished ones were never acknowledged.
    pub shutdown_grace_ms: u64,
    /// When an append counts as durable (default `group`).
    pub fsync: FsyncPolicy,
    /// Sync interval of the `interval` policy (default 200 ms: the loss
    /// window on power failure).
    pub fsync_interval_ms: u64,
    /// Rescan of the inbox directory when no file notification arrives
    /// (default 1 000 ms): notifications can be dropped under load.
    pub inbox_poll_ms: u64,
    /// How often the inbox resume state is checkpointed (default 5 000 ms):
    /// a restart re-reads the spool only from the last checkpoint.
    pub inbox_checkpoint_ms: u64,
    /// Most inbox files tracked at once (default 10 000); more wait, with
    /// one log line and a gauge, until some are rotated away.
    pub inbox_files_max: usize,
    /// A `.log` inbox file fully spooled, held open by no process and not
    /// modified for this long is rotated by the collector itself (renamed
    /// to `NAME.log.TIMESTAMP.old`, then deleted as any rotated file), as
    /// LSD does, so the inbox never grows without bound (default 300 000 ms;
    /// 0 never rotates: the app must).
    pub inbox_rotate_idle_ms: u64,
    /// Only files at least this large are rotated that way (default 0: any).
    pub inbox_rotate_min_bytes: u64,
    /// Largest quarantine file of invalid inbox lines before it is rotated
    /// (one older file kept; default 64 MiB).
    pub quarantine_bytes_max: u64,
    /// Spool segment size at which the active segment rotates (default
    /// 64 MiB, the spooler's own default); the quota must be at least twice this.
    pub spool_segment_bytes: u64,
    /// zstd level for sealed spool segments, 0 to leave them raw (default 3,
    /// zstd's own default, as the spooler's). Sealing runs in the background
    /// but takes CPU from ingest on a small host (see BENCHMARKS.md).
    pub spool_zstd_level: i32,
}

impl Default for CollectorLimits {
    fn default() -> Self {
        Self {
            max_connections: 1_024,
            max_tcp_connections: 256,
            history_s: 0,
            line_bytes_max: 1 << 20,
            read_buffer_bytes: 256 << 10,
            idle_timeout_ms: 60_000,
            shutdown_grace_ms: 10_000,
            fsync: FsyncPolicy::Group,
            fsync_interval_ms: 200,
            inbox_poll_ms: 1_000,
            inbox_checkpoint_ms: 5_000,
            inbox_files_max: 10_000,
            inbox_rotate_idle_ms: 300_000,
            inbox_rotate_min_bytes: 0,
            quarantine_bytes_max: 64 << 20,
            spool_segment_bytes: 64 << 20,
            spool_zstd_level: 3,
        }
    }
}

/// One shard the shipper may insert into.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardTarget {
    /// Relative share of batches.
    pub weight: u32,
    /// HTTP base URLs of the shard's replicas, in preference order.
    pub replicas: Vec<String>,
}

/// The shipper of one DC's app host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShipperConfig {
    /// Datacenter name.
    pub dc: String,
    /// App host name, recorded with each event.
    pub host: String,
    /// Registry file, relative to this file.
    pub registry: PathBuf,
    /// Spool directory to read.
    pub spool_dir: PathBuf,
    /// Admin HTTP (`/metrics`, `/healthz`).
    pub admin: SocketAddr,
    /// ClickHouse database.
    pub database: String,
    /// This DC's shards.
    pub shards: Vec<ShardTarget>,
    /// This DC's Redis.
    pub redis: Redis,
    /// This DC's ZooKeeper ensemble, `host:port` each: where the shipper
    /// publishes its watermark and pending minutes, and where the DC's one
    /// aggregator is elected among the shippers (docs/adr/0014).
    pub zookeeper: Vec<String>,
    /// Whether this shipper may become its DC's aggregator (default true).
    #[serde(default = "yes")]
    pub aggregator: bool,
    /// The shipper's own durable state: batch intents, dead letters.
    pub state_dir: PathBuf,
    /// File holding the password of ClickHouse's writer user
    /// (`spoolhouse_shipper`), mode 0600, read at start.
    pub clickhouse_password_file: PathBuf,
    /// Compression of insert bodies sent to ClickHouse (default `none`: the
    /// shipper runs on app hosts, where CPU is scarcer than bandwidth to a
    /// ClickHouse in the same datacenter; `lz4` for thin links).
    #[serde(default)]
    pub compression: InsertCompression,
    /// Bounds on batches, retries and timeouts.
    #[serde(default)]
    pub limits: ShipperLimits,
    /// Relay mode (docs/adr/0017-relay-tier.md): batches go to one of the
    /// DC's relays instead of straight into ClickHouse. Absent: direct.
    #[serde(default)]
    pub relay: Option<RelayUse>,
}

/// How an app host's shipper forwards its batches to its DC's relays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayUse {
    /// The DC's relays, `host:port` each, with weights: a host picks by
    /// weight from a hash of its name, and takes the next on failure.
    pub relays: Vec<RelayTarget>,
    /// File holding the DC's relay secret, mode 0600.
    pub secret_file: PathBuf,
    /// Longest wait for a relay to connect, answer the hello or take a
    /// batch into its spool before the next relay is tried (default 5 000 ms).
    #[serde(default = "relay_timeout_ms")]
    pub timeout_ms: u64,
    /// Longest wait for a batch the relay took to become visible in
    /// ClickHouse before the next relay is tried (default 60 000 ms).
    #[serde(default = "relay_visible_timeout_ms")]
    pub visible_timeout_ms: u64,
    /// While away from its own relay (the first by weight), how often the
    /// host checks whether it serves again, to go back (default 30 000 ms).
    #[serde(default = "relay_home_check_ms")]
    pub home_check_ms: u64,
}

fn relay_timeout_ms() -> u64 {
    5_000
}

fn relay_visible_timeout_ms() -> u64 {
    60_000
}

fn relay_home_check_ms() -> u64 {
    30_000
}

/// One relay as a forwarder reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayTarget {
    /// `host:port` of its forwarder listener.
    pub addr: String,
    /// Relative share of the DC's hosts (default 1).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// A relay of one DC (docs/adr/0017-relay-tier.md): takes forwarded
/// batches into its spool and ships them into the DC's ClickHouse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Datacenter name: only this DC's hosts may push.
    pub dc: String,
    /// The relay's name, unique in the DC: its inserts' `query_id` prefix.
    pub name: String,
    /// Forwarder listener.
    pub listen: SocketAddr,
    /// Admin HTTP (`/metrics`, `/healthz`).
    pub admin: SocketAddr,
    /// The relay's spool directory.
    pub spool_dir: PathBuf,
    /// Bound of the relay's spool segment files (default 10 GiB): past it
    /// new batches are refused (the forwarders keep them) until shipping
    /// frees space.
    #[serde(default = "relay_quota_bytes")]
    pub spool_quota_bytes: u64,
    /// ClickHouse database.
    pub database: String,
    /// This DC's shards.
    pub shards: Vec<ShardTarget>,
    /// File holding the password of ClickHouse's writer user, mode 0600.
    pub clickhouse_password_file: PathBuf,
    /// File holding the DC's relay secret, mode 0600.
    pub secret_file: PathBuf,
    /// Compression of insert bodies (default `none`).
    #[serde(default)]
    pub compression: InsertCompression,
    /// Bounds on batches, retries and timeouts (the shipper's, with larger
    /// batches: a relay ships many hosts' rows per insert).
    #[serde(default = "relay_limits")]
    pub limits: ShipperLimits,
}

fn relay_quota_bytes() -> u64 {
    10 << 30
}

fn relay_limits() -> ShipperLimits {
    ShipperLimits {
        batch_rows_max: 500_000,
        batch_bytes_max: 256 << 20,
        ..ShipperLimits::default()
    }
}

impl crate::check::Declaration for RelayConfig {
    fn check(&self, c: &mut crate::check::Checker) {
        let root = crate::locate::KeyPath::root();
        for (key, v) in [("dc", &self.dc), ("name", &self.name)] {
            c.require(
                !v.is_empty() && v.len() <= 255 && !v.contains('/'),
                &root.key(key),
                "must be 1 to 255 bytes without `/`",
            );
        }
        c.require(
            !self.shards.is_empty()
                && self
                    .shards
                    .iter()
                    .all(|s| !s.replicas.is_empty() && s.weight >= 1),
            &root.key("shards"),
            "list the DC's shards, each with a weight of at least 1 and its replicas' URLs",
        );
        c.require(
            (1..=1_048_576).contains(&self.limits.batch_rows_max),
            &root.key("limits").key("batch_rows_max"),
            "must be from 1 to 1048576 (ClickHouse's max_insert_block_size): a batch must stay one insert block",
        );
        c.require(
            self.spool_quota_bytes >= 1 << 26,
            &root.key("spool_quota_bytes"),
            "must be at least 67108864 (64 MiB)",
        );
    }
}

/// Compression of the shipper's insert bodies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InsertCompression {
    /// Plain RowBinary.
    #[default]
    None,
    /// ClickHouse's LZ4 framing (`decompress=1`).
    Lz4,
}

/// Every bound of the shipper, with its default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShipperLimits {
    /// Most rows in one insert (default 100 000): large enough that an
    /// insert costs ClickHouse one part per second or less under load, small
    /// enough to stay far below `max_insert_block_size` (1 048 576), so a
    /// batch is one block and one deduplication unit per partition.
    pub batch_rows_max: usize,
    /// Most RowBinary bytes in one insert (default 64 MiB).
    pub batch_bytes_max: usize,
    /// Longest a partial batch waits for more data before it is shipped (default 1000 ms).
    pub batch_age_ms: u64,
    /// First retry delay after a transient error (default 100 ms); doubles per try.
    pub retry_initial_ms: u64,
    /// Cap of the retry delay (default 10 000 ms); each delay gets ±25 % jitter.
    pub retry_max_ms: u64,
    /// Delay between tries of a batch blocked by a non-retriable error such as
    /// a missing table (default 30 000 ms): the batch is never skipped.
    pub blocked_retry_ms: u64,
    /// Timeout of one ClickHouse request (default 60 000 ms).
    pub clickhouse_timeout_ms: u64,
    /// Most events per Redis pipeline round (default 5 000).
    pub redis_batch_max: usize,
    /// Timeout of one Redis round (default 5 000 ms).
    pub redis_timeout_ms: u64,
    /// How long after a minute ends its events may still arrive before the
    /// minute is aggregated (default 5 000 ms); later ones re-aggregate it.
    pub aggregation_grace_ms: u64,
    /// How often the shipper rewrites its watermark and pending minutes in
    /// ZooKeeper, at the least (default 1 000 ms): its heartbeat.
    pub publish_interval_ms: u64,
    /// A host whose record has not changed for this long is silent: the
    /// aggregator leaves it out of the DC's watermark (default 60 000 ms),
    /// so a dead host does not stop every minute from closing; what it
    /// ships when it is back is aggregated again.
    pub host_silent_ms: u64,
    /// How many days before the first settled hour the DC's first build of
    /// hour and day states reaches back (default 31; 0: from then on).
    /// Older periods stay unbuilt and are read from minutes
    /// (docs/adr/0016-pre-merged-hours-and-days.md).
    pub rollup_backfill_days: u32,
}

impl Default for ShipperLimits {
    fn default() -> Self {
        Self {
            batch_rows_max: 100_000,
            batch_bytes_max: 64 << 20,
            batch_age_ms: 1_000,
            retry_initial_ms: 100,
            retry_max_ms: 10_000,
            blocked_retry_ms: 30_000,
            clickhouse_timeout_ms: 60_000,
            redis_batch_max: 5_000,
            redis_timeout_ms: 5_000,
            aggregation_grace_ms: 5_000,
            publish_interval_ms: 1_000,
            host_silent_ms: 60_000,
            rollup_backfill_days: 31,
        }
    }
}

/// A datacenter as the query service sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryDatacenter {
    /// Name.
    pub name: String,
    /// Shards of its ClickHouse cluster: a global read is whole only when
    /// every one of them answered.
    pub shards: usize,
    /// Its app hosts, each with its collector's and shipper's admin
    /// addresses as this DC reaches them.
    pub hosts: Vec<QueryHost>,
    /// Its relays (relay mode, docs/adr/0017), each with its admin address
    /// as this DC reaches it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relays: Vec<QueryRelay>,
    /// Its query service's address (`/metrics`), as this DC reaches it.
    pub query: SocketAddr,
}

/// One relay as the query service reaches it for pipeline health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRelay {
    /// Relay name.
    pub name: String,
    /// Its admin address, `host:port`.
    pub admin: String,
}

/// One app host as the query service reaches it for pipeline health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryHost {
    /// Host name.
    pub name: String,
    /// Its collector's admin address, `host:port` (a name or an IP).
    pub collector_admin: String,
    /// Its shipper's admin address, `host:port`.
    pub shipper_admin: String,
}

/// Where another machine reaches a listener on app host `host`: the
/// declared address, or the host's name when it listens on every address
/// (`0.0.0.0:7102` on `dc1-app007` is reached at `dc1-app007:7102`), the
/// form a fleet's defaults take.
pub fn reach(host: &str, listen: SocketAddr) -> String {
    if listen.ip().is_unspecified() {
        format!("{host}:{}", listen.port())
    } else {
        listen.to_string()
    }
}

/// The query service of one DC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryConfig {
    /// Datacenter name.
    pub dc: String,
    /// Registry file, relative to this file.
    pub registry: PathBuf,
    /// HTTP listener.
    pub listen: SocketAddr,
    /// ClickHouse database.
    pub database: String,
    /// HTTP base URLs of this DC's servers, any of which can run a
    /// Distributed query, in preference order.
    pub clickhouse: Vec<String>,
    /// File holding the password of the service's ClickHouse user
    /// (`spoolhouse_query`), mode 0600, read at start.
    pub clickhouse_password_file: PathBuf,
    /// File holding the password of the analysts' ClickHouse user
    /// (`spoolhouse_sql`, `POST /v1/sql`), mode 0600, read at start.
    pub sql_password_file: PathBuf,
    /// Every datacenter and its number of shards, for partial answers.
    pub datacenters: Vec<QueryDatacenter>,
    /// This DC's Redis.
    pub redis: Redis,
    /// Threshold rules of `GET /v1/anomalies` (`[[rule]]`; none by default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rule: Vec<ThresholdRule>,
    /// Longest a ClickHouse or Redis request of the query service may take
    /// (default 5 000 ms): a slow or cut datacenter is bounded by it.
    #[serde(default = "default_query_timeout_ms")]
    pub timeout_ms: u64,
    /// Most watch-progress Redis misses looking in ClickHouse at once
    /// (default 4, from 1 to 1024). Each is a scan of the progress rows
    /// (57–108 ms at 620 k rows, issue 8); beyond the bound a miss gets a
    /// 503 to retry at once, so misses never queue and never starve the
    /// Redis hits of CPU. Four scans already keep two cores busy.
    #[serde(default = "default_progress_lookups_max")]
    pub progress_lookups_max: usize,
    /// Host names (without port) requests may name in `Host` besides IP
    /// addresses and `localhost` (default none). Any other name is refused
    /// (403): a page that rebinds its own name to this address must not
    /// read answers in a browser.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Limits of analysts' read-only SQL (`POST /v1/sql`): the topology's,
    /// which ClickHouse enforces (see [`SqlLimits`]).
    #[serde(default)]
    pub sql: SqlLimits,
}

/// Limits of analysts' SQL (`POST /v1/sql`), declared once in the topology
/// (`[sql]`) and enforced by ClickHouse itself: they are the settings of
/// the analysts' user's profile, which is `readonly = 1`, so no statement
/// text can lift them (no SETTINGS, no table functions), and a statement
/// over one fails with ClickHouse's reason instead of a silently cut answer
/// (`*_overflow_mode = throw`). The query service reads them from its
/// config to say what they are and how long to wait.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqlLimits {
    /// Most rows in an answer (default 10 000): enough to read, small
    /// enough to hold in the service's memory as JSON.
    pub max_result_rows: u64,
    /// Most bytes of an answer, uncompressed in ClickHouse's blocks
    /// (default 16 MiB).
    pub max_result_bytes: u64,
    /// Longest a statement may run (default 10 s); the service waits this
    /// plus `timeout_ms` for ClickHouse's answer.
    pub max_execution_time_s: u64,
    /// Most rows a statement may read from tables (default 100 000 000,
    /// about a second of scanning): bounds the load one analyst can put on
    /// the cluster.
    pub max_rows_to_read: u64,
    /// Most memory one statement may use on a server (default 2 GiB).
    pub max_memory_usage_bytes: u64,
    /// Most analysts' statements running at once, per query service and
    /// per ClickHouse server (default 4): the analysts' own pool, apart from
    /// the shipper's inserts and the service's own reads.
    pub max_concurrent: u64,
    /// Most analysts' statements per hour, per server (default 3 600).
    pub queries_per_hour: u64,
    /// Most rows analysts' statements read per hour, per server (default
    /// 10 000 000 000: a hundred statements at the read limit).
    pub read_rows_per_hour: u64,
}

impl Default for SqlLimits {
    fn default() -> Self {
        Self {
            max_result_rows: 10_000,
            max_result_bytes: 16 << 20,
            max_execution_time_s: 10,
            max_rows_to_read: 100_000_000,
            max_memory_usage_bytes: 2 << 30,
            max_concurrent: 4,
            queries_per_hour: 3_600,
            read_rows_per_hour: 10_000_000_000,
        }
    }
}

impl SqlLimits {
    /// Checks each limit's range; `at` is where they are declared.
    pub fn check(&self, c: &mut crate::check::Checker, at: &crate::locate::KeyPath) {
        c.require(
            (1..=10_000_000).contains(&self.max_result_rows),
            &at.key("max_result_rows"),
            "must be from 1 to 10000000",
        );
        c.require(
            (1..=1 << 30).contains(&self.max_result_bytes),
            &at.key("max_result_bytes"),
            "must be from 1 to 1073741824 (1 GiB): the answer is held in memory",
        );
        c.require(
            (1..=3_600).contains(&self.max_execution_time_s),
            &at.key("max_execution_time_s"),
            "must be from 1 to 3600",
        );
        for (key, v) in [
            ("max_rows_to_read", self.max_rows_to_read),
            ("queries_per_hour", self.queries_per_hour),
            ("read_rows_per_hour", self.read_rows_per_hour),
        ] {
            c.require(v >= 1, &at.key(key), "must be at least 1");
        }
        c.require(
            self.max_memory_usage_bytes >= 1 << 20,
            &at.key("max_memory_usage_bytes"),
            "must be at least 1048576 (1 MiB)",
        );
        c.require(
            (1..=100).contains(&self.max_concurrent),
            &at.key("max_concurrent"),
            "must be from 1 to 100 (ClickHouse's own bound on queries at once)",
        );
    }
}

/// A threshold rule of `GET /v1/anomalies` (ADR 0004): a series, or every
/// series a pattern matches, is flagged at each step whose figure breaks a
/// condition. At least one condition; several fire on any of them.
///
/// ```toml
/// [[rule]]
/// series = "vote.count()"               # fewer than 1000 votes a step
/// below = 1000
///
/// [[rule]]
/// series = "vote.count(){country_id=*}" # `*` in a value matches any text
/// nonzero = true
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdRule {
    /// A series name (see `dc_config::rollup`); `*` in a dimension value
    /// matches any text. The event, metric and dimensions must exist.
    pub series: String,
    /// Fires when a figure is below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    /// Fires when a figure is above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    /// Fires when a figure is not zero (an event that should never happen).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nonzero: bool,
}

impl ThresholdRule {
    /// True when `v` breaks the rule.
    pub fn fires(&self, v: f64) -> bool {
        self.below.is_some_and(|b| v < b)
            || self.above.is_some_and(|a| v > a)
            || (self.nonzero && v != 0.0)
    }

    /// The conditions in words, e.g. `below 1000`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(b) = self.below {
            parts.push(format!("below {b}"));
        }
        if let Some(a) = self.above {
            parts.push(format!("above {a}"));
        }
        if self.nonzero {
            parts.push("nonzero".to_string());
        }
        parts.join(" or ")
    }

    /// True when the series called `name` is one the rule names: `*` in
    /// the rule's series matches any run of characters.
    pub fn matches(&self, name: &str) -> bool {
        fn glob(p: &[u8], s: &[u8]) -> bool {
            // Iterative wildcard matching: remember the last `*` and retry
            // it one character further on a mismatch (linear in practice).
            let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
            while si < s.len() {
                if pi < p.len() && p[pi] == b'*' {
                    star = Some(pi);
                    mark = si;
                    pi += 1;
                } else if pi < p.len() && p[pi] == s[si] {
                    pi += 1;
                    si += 1;
                } else if let Some(st) = star {
                    pi = st + 1;
                    mark += 1;
                    si = mark;
                } else {
                    return false;
                }
            }
            p[pi..].iter().all(|&c| c == b'*')
        }
        glob(self.series.as_bytes(), name.as_bytes())
    }
}

impl QueryConfig {
    /// Checks the threshold rules against `registry`: each names an event,
    /// metric and dimensions it declares. One message per broken rule,
    /// naming it (`rule[2].series`); empty when all hold. Run at start.
    pub fn check_rules(&self, registry: &crate::registry::Registry) -> Vec<String> {
        self.rule
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                crate::rollup::parse_name(registry, &r.series)
                    .err()
                    .map(|e| format!("rule[{i}].series: {e}"))
            })
            .collect()
    }
}

fn yes() -> bool {
    true
}

fn default_query_timeout_ms() -> u64 {
    5_000
}

fn default_progress_lookups_max() -> usize {
    4
}

impl CollectorConfig {
    /// The collector config of app host `host` of `dc`.
    pub fn for_host(dc: &Datacenter, host: &AppHost) -> Self {
        Self {
            dc: dc.name.clone(),
            host: host.name.clone(),
            registry: REGISTRY_FILE.into(),
            tcp: host.collector.tcp,
            socket: host.collector.socket.clone(),
            socket_mode: host.collector.socket_mode,
            socket_group: None,
            quarantine: None,
            inbox: host.collector.inbox.clone(),
            admin: host.collector.admin,
            spool_dir: host.spool.dir.clone(),
            spool_quota_bytes: host.spool.quota_bytes,
            limits: CollectorLimits::default(),
        }
    }

    /// [`CollectorConfig::for_host`] of the DC's first app host: a DC of
    /// one host, as the tests and benches run.
    pub fn for_dc(dc: &Datacenter) -> Self {
        Self::for_host(dc, &first_host(dc))
    }
}

/// The first app host of a checked DC (which has at least one).
fn first_host(dc: &Datacenter) -> AppHost {
    dc.first_app_host().unwrap_or_else(|| {
        panic!(
            "datacenter {} has no app host: check the topology first",
            dc.name
        )
    })
}

impl crate::check::Declaration for CollectorConfig {
    fn check(&self, c: &mut crate::check::Checker) {
        let l = &self.limits;
        let at = crate::locate::KeyPath::root().key("limits");
        c.require(
            l.max_connections >= 1,
            &at.key("max_connections"),
            "must be at least 1",
        );
        c.require(
            l.max_tcp_connections >= 1,
            &at.key("max_tcp_connections"),
            "must be at least 1",
        );
        c.require(
            (64..=16 << 20).contains(&l.line_bytes_max),
            &at.key("line_bytes_max"),
            "must be from 64 to 16777216 (the spool's frame limit)",
        );
        c.require(
            l.read_buffer_bytes >= 4096,
            &at.key("read_buffer_bytes"),
            "must be at least 4096",
        );
        c.require(
            l.quarantine_bytes_max >= 1 << 20,
            &at.key("quarantine_bytes_max"),
            "must be at least 1048576 (1 MiB: an entry keeps up to 64 KiB of its line)",
        );
        for (key, v) in [
            ("idle_timeout_ms", l.idle_timeout_ms),
            ("shutdown_grace_ms", l.shutdown_grace_ms),
            ("fsync_interval_ms", l.fsync_interval_ms),
            ("inbox_poll_ms", l.inbox_poll_ms),
            ("inbox_checkpoint_ms", l.inbox_checkpoint_ms),
        ] {
            c.require(v >= 1, &at.key(key), "must be at least 1");
        }
        c.require(
            l.inbox_files_max >= 1,
            &at.key("inbox_files_max"),
            "must be at least 1",
        );
        c.require(
            l.spool_segment_bytes >= 4096 && self.spool_quota_bytes >= 2 * l.spool_segment_bytes,
            &at.key("spool_segment_bytes"),
            "must be at least 4096, and spool_quota_bytes at least twice it (a full segment must be able to rotate)",
        );
        c.require(
            (0..=22).contains(&l.spool_zstd_level),
            &at.key("spool_zstd_level"),
            "must be from 0 (raw) to 22",
        );
        c.require(
            self.socket_mode <= 0o777,
            &crate::locate::KeyPath::root().key("socket_mode"),
            "must be a permission mode from 0 to 0o777",
        );
    }
}

impl ShipperConfig {
    /// [`ShipperConfig::for_host`] of the DC's first app host.
    pub fn for_dc(topology: &Topology, dc: &Datacenter) -> Self {
        Self::for_host(topology, dc, &first_host(dc))
    }

    /// The shipper config of app host `host` of `dc`.
    pub fn for_host(topology: &Topology, dc: &Datacenter, host: &AppHost) -> Self {
        Self {
            dc: dc.name.clone(),
            host: host.name.clone(),
            registry: REGISTRY_FILE.into(),
            spool_dir: host.spool.dir.clone(),
            admin: host.shipper.admin,
            database: topology.database.clone(),
            shards: shard_targets(dc),
            redis: dc.redis.clone(),
            zookeeper: dc
                .zookeeper
                .iter()
                .map(|z| format!("{}:{}", z.host, z.port))
                .collect(),
            aggregator: true,
            state_dir: shipper_state_dir(&host.spool.dir),
            clickhouse_password_file: crate::credentials::password_file(
                &topology.secrets_dir,
                crate::schema::user::WRITER_USER,
            ),
            compression: InsertCompression::default(),
            limits: ShipperLimits::default(),
            relay: (!dc.relay.is_empty()).then(|| RelayUse {
                relays: dc
                    .relay
                    .iter()
                    .map(|r| RelayTarget {
                        addr: reach(&r.name, r.listen),
                        weight: r.weight,
                    })
                    .collect(),
                secret_file: crate::credentials::relay_secret_file(&topology.secrets_dir, &dc.name),
                timeout_ms: relay_timeout_ms(),
                visible_timeout_ms: relay_visible_timeout_ms(),
                home_check_ms: relay_home_check_ms(),
            }),
        }
    }
}

impl RelayConfig {
    /// The config of `relay` of `dc`.
    pub fn for_relay(topology: &Topology, dc: &Datacenter, relay: &crate::topology::Relay) -> Self {
        Self {
            dc: dc.name.clone(),
            name: relay.name.clone(),
            listen: relay.listen,
            admin: relay.admin,
            spool_dir: relay.spool_dir.clone(),
            spool_quota_bytes: relay_quota_bytes(),
            database: topology.database.clone(),
            shards: shard_targets(dc),
            clickhouse_password_file: crate::credentials::password_file(
                &topology.secrets_dir,
                crate::schema::user::WRITER_USER,
            ),
            secret_file: crate::credentials::relay_secret_file(&topology.secrets_dir, &dc.name),
            compression: InsertCompression::default(),
            limits: relay_limits(),
        }
    }
}

/// `dc`'s shards as its writers reach them.
fn shard_targets(dc: &Datacenter) -> Vec<ShardTarget> {
    dc.clickhouse
        .shard
        .iter()
        .enumerate()
        .map(|(i, s)| ShardTarget {
            weight: s.weight,
            replicas: dc
                .replicas()
                .filter(|r| r.shard == i + 1)
                .map(|r| r.http_url())
                .collect(),
        })
        .collect()
}

impl crate::check::Declaration for ShipperConfig {
    fn check(&self, c: &mut crate::check::Checker) {
        let l = &self.limits;
        let at = crate::locate::KeyPath::root().key("limits");
        c.require(
            (1..=1_048_576).contains(&l.batch_rows_max),
            &at.key("batch_rows_max"),
            "must be from 1 to 1048576 (ClickHouse's max_insert_block_size): a batch must stay one insert block",
        );
        c.require(
            l.batch_bytes_max >= 1 << 16,
            &at.key("batch_bytes_max"),
            "must be at least 65536",
        );
        c.require(
            l.retry_initial_ms >= 1 && l.retry_initial_ms <= l.retry_max_ms,
            &at.key("retry_initial_ms"),
            "must be at least 1 and at most retry_max_ms",
        );
        for (key, v) in [
            ("blocked_retry_ms", l.blocked_retry_ms),
            ("clickhouse_timeout_ms", l.clickhouse_timeout_ms),
            ("redis_timeout_ms", l.redis_timeout_ms),
        ] {
            c.require(v >= 1, &at.key(key), "must be at least 1");
        }
        c.require(
            l.redis_batch_max >= 1,
            &at.key("redis_batch_max"),
            "must be at least 1",
        );
        c.require(
            (100..=60_000).contains(&l.publish_interval_ms),
            &at.key("publish_interval_ms"),
            "must be from 100 to 60000",
        );
        c.require(
            l.rollup_backfill_days <= 3_660,
            &at.key("rollup_backfill_days"),
            "must be from 0 to 3660: the first build of hours and days reads that many days of minute states in one round",
        );
        c.require(
            l.host_silent_ms >= 3 * l.publish_interval_ms,
            &at.key("host_silent_ms"),
            "must be at least three publish intervals: a live host would otherwise look silent between two heartbeats",
        );
        if let Some(r) = &self.relay {
            let at = crate::locate::KeyPath::root().key("relay");
            c.require(
                !r.relays.is_empty()
                    && r.relays.iter().all(|t| t.weight >= 1 && !t.addr.is_empty()),
                &at.key("relays"),
                "list the DC's relays (`host:port`), each with a weight of at least 1",
            );
            c.require(
                r.timeout_ms >= 100 && r.visible_timeout_ms >= r.timeout_ms,
                &at.key("timeout_ms"),
                "must be at least 100, and visible_timeout_ms at least timeout_ms",
            );
            c.require(
                r.home_check_ms >= 1_000,
                &at.key("home_check_ms"),
                "must be at least 1000: each check is a connection to the relay",
            );
            c.require(
                l.batch_bytes_max <= 64 << 20,
                &crate::locate::KeyPath::root()
                    .key("limits")
                    .key("batch_bytes_max"),
                "must be at most 67108864 (64 MiB) in relay mode: a relay refuses larger batches",
            );
        }
        c.require(
            !self.zookeeper.is_empty(),
            &crate::locate::KeyPath::root().key("zookeeper"),
            "list the DC's ZooKeeper nodes (`host:port`): the shipper publishes its watermark there and the DC's aggregator is elected there",
        );
        c.require(
            !self.shards.is_empty()
                && self
                    .shards
                    .iter()
                    .all(|s| s.weight > 0 && !s.replicas.is_empty()),
            &crate::locate::KeyPath::root().key("shards"),
            "declare at least one shard, each of weight >= 1 with at least one replica URL",
        );
        require_absolute(
            c,
            &self.clickhouse_password_file,
            "clickhouse_password_file",
        );
    }
}

/// `host:port` naming a machine and a port to connect to.
fn is_reachable(addr: &str) -> bool {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return a.port() != 0 && !a.ip().is_unspecified();
    }
    match addr.rsplit_once(':') {
        Some((host, port)) => {
            crate::app_hosts::is_host_name(host) && port.parse::<u16>().is_ok_and(|p| p != 0)
        }
        None => false,
    }
}

/// A config's path to a secret must not depend on the working directory.
fn require_absolute(c: &mut crate::check::Checker, path: &std::path::Path, key: &str) {
    c.require(
        path.is_absolute(),
        &crate::locate::KeyPath::root().key(key),
        format!(
            "must be an absolute path to a file of mode 0600 (got `{}`)",
            path.display()
        ),
    );
}

/// The shipper's state folder: `shipper` beside the spool folder.
fn shipper_state_dir(spool_dir: &std::path::Path) -> PathBuf {
    spool_dir.with_file_name("shipper")
}

impl QueryConfig {
    /// The query service config of `dc`.
    pub fn for_dc(topology: &Topology, dc: &Datacenter) -> Self {
        Self {
            dc: dc.name.clone(),
            registry: REGISTRY_FILE.into(),
            listen: dc.query.listen,
            database: topology.database.clone(),
            clickhouse: dc.replicas().map(|r| r.http_url()).collect(),
            clickhouse_password_file: crate::credentials::password_file(
                &topology.secrets_dir,
                crate::schema::user::QUERY_USER,
            ),
            sql_password_file: crate::credentials::password_file(
                &topology.secrets_dir,
                crate::schema::user::SQL_USER,
            ),
            datacenters: topology
                .datacenter
                .iter()
                .map(|d| {
                    // Another DC's services are reached the way its
                    // ClickHouse is: through the launcher's relay when
                    // there is one, so a cut DC stops answering here too.
                    let route = |addr: String| {
                        topology
                            .cross_dc_routes
                            .get(&(dc.name.clone(), addr.clone()))
                            .filter(|_| d.name != dc.name)
                            .map_or(addr, |r| r.to_string())
                    };
                    let query = route(d.query.listen.to_string())
                        .parse()
                        .unwrap_or(d.query.listen);
                    QueryDatacenter {
                        name: d.name.clone(),
                        shards: d.clickhouse.shard.len(),
                        hosts: d
                            .app_hosts()
                            .into_iter()
                            .map(|h| QueryHost {
                                collector_admin: route(reach(&h.name, h.collector.admin)),
                                shipper_admin: route(reach(&h.name, h.shipper.admin)),
                                name: h.name,
                            })
                            .collect(),
                        relays: d
                            .relay
                            .iter()
                            .map(|r| QueryRelay {
                                name: r.name.clone(),
                                admin: route(reach(&r.name, r.admin)),
                            })
                            .collect(),
                        query,
                    }
                })
                .collect(),
            redis: dc.redis.clone(),
            rule: Vec::new(),
            timeout_ms: default_query_timeout_ms(),
            progress_lookups_max: default_progress_lookups_max(),
            allowed_hosts: Vec::new(),
            sql: topology.sql.clone(),
        }
    }
}

impl crate::check::Declaration for QueryConfig {
    fn check(&self, c: &mut crate::check::Checker) {
        let root = crate::locate::KeyPath::root();
        c.require(
            !self.clickhouse.is_empty(),
            &root.key("clickhouse"),
            "list at least one ClickHouse server URL of this DC",
        );
        require_absolute(
            c,
            &self.clickhouse_password_file,
            "clickhouse_password_file",
        );
        require_absolute(c, &self.sql_password_file, "sql_password_file");
        c.require(
            (1..=300_000).contains(&self.timeout_ms),
            &root.key("timeout_ms"),
            "must be from 1 to 300000",
        );
        c.require(
            (1..=1024).contains(&self.progress_lookups_max),
            &root.key("progress_lookups_max"),
            "must be from 1 to 1024",
        );
        c.require(
            self.datacenters.iter().any(|d| d.name == self.dc),
            &root.key("datacenters"),
            "must include this DC (`dc`)",
        );
        for (i, d) in self.datacenters.iter().enumerate() {
            let at = root.key("datacenters").index(i);
            c.require(
                self.datacenters.iter().filter(|o| o.name == d.name).count() == 1,
                &at.key("name"),
                "must name each datacenter once",
            );
            const REACHABLE: &str = "must be an address to connect to (no port 0, no 0.0.0.0 or ::): GET /v1/pipeline reads /metrics there; declare the service's address in the topology as other DCs reach it";
            c.require(
                d.query.port() != 0 && !d.query.ip().is_unspecified(),
                &at.key("query"),
                REACHABLE,
            );
            for (h, host) in d.hosts.iter().enumerate() {
                for (key, addr) in [
                    ("collector_admin", &host.collector_admin),
                    ("shipper_admin", &host.shipper_admin),
                ] {
                    c.require(
                        is_reachable(addr),
                        &at.key("hosts").index(h).key(key),
                        REACHABLE,
                    );
                }
            }
        }
        for (i, r) in self.rule.iter().enumerate() {
            let at = root.key("rule").index(i);
            c.require(
                r.below.is_some() || r.above.is_some() || r.nonzero,
                &at,
                "give at least one condition: below = N, above = N or nonzero = true",
            );
            for (key, v) in [("below", r.below), ("above", r.above)] {
                c.require(
                    v.is_none_or(f64::is_finite),
                    &at.key(key),
                    "must be a finite number",
                );
            }
            c.require(
                !matches!((r.below, r.above), (Some(b), Some(a)) if b > a),
                &at.key("below"),
                "must not exceed `above`: the rule would fire on every figure",
            );
        }
        self.sql.check(c, &root.key("sql"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{Checker, Declaration};

    fn rule(series: &str, below: Option<f64>, above: Option<f64>, nonzero: bool) -> ThresholdRule {
        ThresholdRule {
            series: series.into(),
            below,
            above,
            nonzero,
        }
    }

    fn config(rules: Vec<ThresholdRule>) -> QueryConfig {
        let d = crate::examples::declared();
        let mut c = QueryConfig::for_dc(&d.topology, &d.topology.datacenter[0]);
        c.rule = rules;
        c
    }

    #[test]
    fn rules_fire_match_and_read_from_toml() {
        let r = rule(
            "vote.count(){country_id=*}",
            Some(1000.0),
            Some(5000.0),
            false,
        );
        assert!(r.fires(999.0) && r.fires(5001.0) && !r.fires(1000.0));
        assert_eq!(r.describe(), "below 1000 or above 5000");
        assert!(r.matches("vote.count(){country_id=3}"));
        assert!(r.matches("vote.count(){country_id=}"));
        assert!(!r.matches("vote.count(){vote=yes,country_id=3}"));
        assert!(!r.matches("vote.count()"));
        let nz = rule("vote.count()", None, None, true);
        assert!(nz.fires(1.0) && !nz.fires(0.0));
        assert!(nz.matches("vote.count()") && !nz.matches("vote.count(){vote=yes}"));
        let mut c = config(vec![r, nz]);
        let text = toml::to_string(&c).unwrap();
        assert!(text.contains("[[rule]]"), "{text}");
        let back: QueryConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
        c.rule.clear();
        assert!(!toml::to_string(&c).unwrap().contains("rule"));
    }

    #[test]
    fn rules_are_checked_alone_and_against_the_registry() {
        let mut ch = Checker::default();
        config(vec![
            rule("vote.count()", None, None, false),
            rule("vote.count()", Some(f64::NAN), None, false),
            rule("vote.count()", Some(10.0), Some(5.0), false),
            rule("vote.count()", Some(5.0), Some(10.0), false),
        ])
        .check(&mut ch);
        let mut no_lookups = config(vec![]);
        no_lookups.progress_lookups_max = 0;
        no_lookups.check(&mut ch);
        let errors = ch.into_errors(std::path::Path::new("query.toml"), "");
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "rule[0]",
                "rule[1].below",
                "rule[2].below",
                "progress_lookups_max"
            ],
            "{errors:?}"
        );

        let reg = crate::examples::declared().registry;
        let c = config(vec![
            rule("vote.count(){country_id=*}", Some(1.0), None, false),
            rule("login.count()", Some(1.0), None, false),
            rule("vote.sum(user_id)", Some(1.0), None, false),
            rule("vote.count(){city=*}", Some(1.0), None, false),
        ]);
        let problems = c.check_rules(&reg);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].starts_with("rule[1].series:")
                && problems[0].contains("no event type `login`")
        );
        assert!(problems[1].contains("has no metric sum(user_id)"));
        assert!(problems[2].contains("`city` is not a dimension"));
    }

    #[test]
    fn every_datacenter_has_addresses_to_scrape() {
        let mut c = config(vec![]);
        assert_ne!(c.datacenters[1].query, c.datacenters[0].query);
        c.datacenters[1].hosts[0].shipper_admin = "0.0.0.0:7203".into();
        c.datacenters[0].hosts[0].collector_admin = "127.0.0.1:0".into();
        let mut ch = Checker::default();
        c.check(&mut ch);
        let errors = ch.into_errors(std::path::Path::new("query.toml"), "");
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "datacenters[0].hosts[0].collector_admin",
                "datacenters[1].hosts[0].shipper_admin"
            ],
            "{errors:?}"
        );
    }
}
