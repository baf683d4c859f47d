//! The Ansible inventory: one group per role per datacenter, a group per
//! datacenter holding them, and a group per role across datacenters, with
//! every address, port and path as host variables. The playbooks in
//! `ansible/` target the role groups and are limited to one DC with
//! `--limit <dc>`; they find the rest of the rendered folder beside this file.

use std::fmt::Write;

use crate::services::ShipperConfig;
use crate::topology::Topology;

/// `inventory.ini` for `topology`.
pub fn inventory(topology: &Topology) -> String {
    let mut s = String::from(
        "# Rendered by `spoolhouse config render` from the topology.\n\
         # Groups: <dc>_zookeeper, <dc>_clickhouse, <dc>_redis, <dc>_spoolhouse; <dc> holds all four;\n\
         # zookeeper, clickhouse, redis, spoolhouse hold that role of every DC.\n\n",
    );
    for dc in &topology.datacenter {
        let d = &dc.name;
        let _ = writeln!(s, "[{d}_zookeeper]");
        for (i, z) in dc.zookeeper.iter().enumerate() {
            let _ = writeln!(
                s,
                "{d}-zk{} ansible_host={} zk_id={} zk_host={} zk_port={} zk_data_path={}",
                i + 1,
                z.host,
                i + 1,
                z.host,
                z.port,
                z.data_path.display()
            );
        }
        let _ = writeln!(s, "\n[{d}_clickhouse]");
        for r in dc.replicas() {
            let _ = writeln!(
                s,
                "{} ansible_host={} ch_shard={} ch_replica={} ch_host={} ch_tcp_port={} ch_http_port={} ch_interserver_port={} ch_data_path={}",
                r.name(),
                r.replica.host,
                r.shard,
                r.replica_no,
                r.replica.host,
                r.replica.tcp_port,
                r.replica.http_port,
                r.replica.interserver_port,
                r.replica.data_path.display()
            );
        }
        let _ = writeln!(s, "\n[{d}_redis]");
        for (i, n) in dc.redis.nodes.iter().enumerate() {
            let _ = writeln!(
                s,
                "{d}-redis{} ansible_host={} redis_host={} redis_port={} redis_mode={}",
                i + 1,
                n.ip(),
                n.ip(),
                n.port(),
                match dc.redis.mode {
                    crate::topology::RedisMode::Single => "single",
                    crate::topology::RedisMode::Cluster => "cluster",
                }
            );
        }
        // No ansible_host: the collector listens on loopback by design, so
        // the app host is reached by its name, the inventory name.
        let _ = writeln!(s, "\n[{d}_spoolhouse]");
        let _ = writeln!(
            s,
            "{} spool_dir={} spool_quota_bytes={} shipper_state_dir={} collector_tcp={} collector_socket={} collector_inbox={} collector_admin={} shipper_admin={} query_listen={}",
            dc.host,
            dc.spool.dir.display(),
            dc.spool.quota_bytes,
            ShipperConfig::for_dc(topology, dc).state_dir.display(),
            dc.collector.tcp,
            dc.collector.socket.display(),
            dc.collector.inbox.display(),
            dc.collector.admin,
            dc.shipper.admin,
            dc.query.listen
        );
        let _ = writeln!(
            s,
            "\n[{d}:children]\n{d}_zookeeper\n{d}_clickhouse\n{d}_redis\n{d}_spoolhouse\n\n[{d}:vars]\ndc={d}\n"
        );
    }
    for role in ["zookeeper", "clickhouse", "redis", "spoolhouse"] {
        let _ = writeln!(s, "[{role}:children]");
        for dc in &topology.datacenter {
            let _ = writeln!(s, "{}_{role}", dc.name);
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "[all:vars]\nspoolhouse_database={}\nspoolhouse_global_cluster={}\nspoolhouse_secrets_dir={}",
        topology.database,
        topology.global_cluster,
        topology.secrets_dir.display()
    );
    s
}
