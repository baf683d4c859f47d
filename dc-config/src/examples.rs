//! The example declared files (`examples/` at the workspace root), built in,
//! so every crate's tests and the demo start from the same topology and
//! registry without caring about the working directory.

use std::path::Path;

use crate::check::parse_checked;
use crate::Declared;

/// `examples/two-dc.toml`: two datacenters on loopback.
pub const TOPOLOGY: &str = include_str!("../../examples/two-dc.toml");
/// `examples/events.toml`: registration, watch_progress, vote, screen_view.
pub const REGISTRY: &str = include_str!("../../examples/events.toml");

/// Both example files, checked.
pub fn declared() -> Declared {
    Declared {
        topology: parse_checked(Path::new("examples/two-dc.toml"), TOPOLOGY)
            .expect("the example topology is valid (tested)"),
        registry: parse_checked(Path::new("examples/events.toml"), REGISTRY)
            .expect("the example registry is valid (tested)"),
        registry_path: "examples/events.toml".into(),
        registry_text: REGISTRY.to_string(),
    }
}

/// One datacenter with a three-node ZooKeeper ensemble and a three-master
/// Redis Cluster (ports and paths are placeholders the launcher replaces).
pub const ONE_DC_CLUSTERED: &str = r#"
[[datacenter]]
name = "solo"
host = "solo-app1"
zookeeper = [
  { host = "127.0.0.1", port = 1, data_path = "/z1" },
  { host = "127.0.0.1", port = 2, data_path = "/z2" },
  { host = "127.0.0.1", port = 3, data_path = "/z3" },
]
redis = { mode = "cluster", nodes = ["127.0.0.1:4", "127.0.0.1:5", "127.0.0.1:6"] }
collector = { tcp = "127.0.0.1:7", socket = "/s", inbox = "/i", admin = "127.0.0.1:8" }
spool = { dir = "/sp", quota_bytes = 1_000_000_000 }
shipper = { admin = "127.0.0.1:9" }
query = { listen = "127.0.0.1:10" }
[[datacenter.clickhouse.shard]]
replica = [{ host = "127.0.0.1", tcp_port = 11, http_port = 12, interserver_port = 13, data_path = "/c" }]
"#;

/// [`ONE_DC_CLUSTERED`] with the example registry, checked.
pub fn one_dc_clustered() -> Declared {
    Declared {
        topology: parse_checked(Path::new("one-dc-clustered.toml"), ONE_DC_CLUSTERED)
            .expect("the clustered example topology is valid (tested)"),
        ..declared()
    }
}
