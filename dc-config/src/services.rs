//! Configuration of the Spoolhouse services, derived from the topology: the
//! collector, shipper and query service of a datacenter read these types,
//! so what `config render` writes is exactly what they accept.
//!
//! Each file names the registry by a path relative to the file itself
//! (`events.toml` beside it by default), so a rendered folder can be moved.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
    /// LSD-style inbox directory.
    pub inbox: PathBuf,
    /// Admin HTTP (`/metrics`, `/healthz`).
    pub admin: SocketAddr,
    /// Spool directory.
    pub spool_dir: PathBuf,
    /// Spool quota in bytes.
    pub spool_quota_bytes: u64,
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
    /// Every datacenter's name, for partial answers.
    pub datacenters: Vec<String>,
    /// This DC's Redis.
    pub redis: Redis,
}

impl CollectorConfig {
    /// The collector config of `dc`.
    pub fn for_dc(dc: &Datacenter) -> Self {
        Self {
            dc: dc.name.clone(),
            host: dc.host.clone(),
            registry: REGISTRY_FILE.into(),
            tcp: dc.collector.tcp,
            socket: dc.collector.socket.clone(),
            socket_mode: dc.collector.socket_mode,
            inbox: dc.collector.inbox.clone(),
            admin: dc.collector.admin,
            spool_dir: dc.spool.dir.clone(),
            spool_quota_bytes: dc.spool.quota_bytes,
        }
    }
}

impl ShipperConfig {
    /// The shipper config of `dc`.
    pub fn for_dc(topology: &Topology, dc: &Datacenter) -> Self {
        Self {
            dc: dc.name.clone(),
            host: dc.host.clone(),
            registry: REGISTRY_FILE.into(),
            spool_dir: dc.spool.dir.clone(),
            admin: dc.shipper.admin,
            database: topology.database.clone(),
            shards: dc
                .clickhouse
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
                .collect(),
            redis: dc.redis.clone(),
        }
    }
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
            datacenters: topology.datacenter.iter().map(|d| d.name.clone()).collect(),
            redis: dc.redis.clone(),
        }
    }
}
