//! The Ansible inventory: one group per role per datacenter, a group per
//! datacenter holding them, and a group per role across datacenters, with
//! every address, port and path as host variables (an app host's as its
//! group's variables, overridden per host where the topology does). The playbooks in
//! `ansible/` target the role groups and are limited to one DC with
//! `--limit <dc>`; they find the rest of the rendered folder beside this file.

use std::fmt::Write;

use crate::app_hosts::{AppHost, HOST_PLACEHOLDER};
use crate::services::ShipperConfig;
use crate::topology::{Datacenter, Topology};

/// `inventory.ini` for `topology`.
pub fn inventory(topology: &Topology) -> String {
    let mut s = String::from(
        "# Rendered by `spoolhouse config render` from the topology.\n\
         # Groups: <dc>_zookeeper, <dc>_clickhouse, <dc>_redis, <dc>_app (collector and\n\
         # shipper), <dc>_relay (relay mode), <dc>_query; <dc>_spoolhouse holds <dc>_relay,\n\
         # <dc>_app and <dc>_query, <dc> all; zookeeper, clickhouse, redis, relay, app,\n\
         # query, spoolhouse hold that role of every DC.\n\n",
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
        // Relays (docs/adr/0017), reached by their names as app hosts are.
        let _ = writeln!(s, "\n[{d}_relay]");
        for r in &dc.relay {
            let _ = writeln!(
                s,
                "{} relay_listen={} relay_admin={} relay_spool_dir={}",
                r.name,
                r.listen,
                r.admin,
                r.spool_dir.display()
            );
        }
        app_hosts(&mut s, topology, dc);
        let query_host = dc
            .query
            .host
            .clone()
            .or_else(|| dc.first_app_host().map(|h| h.name))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "\n[{d}_query]\n{query_host} query_listen={}\n",
            dc.query.listen
        );
        let _ = writeln!(
            s,
            "[{d}_spoolhouse:children]\n{d}_relay\n{d}_app\n{d}_query\n\n[{d}:children]\n{d}_zookeeper\n{d}_clickhouse\n{d}_redis\n{d}_spoolhouse\n\n[{d}:vars]\ndc={d}\nrelay_mode={}\n",
            !dc.relay.is_empty()
        );
    }
    for role in [
        "zookeeper",
        "clickhouse",
        "redis",
        "relay",
        "app",
        "query",
        "spoolhouse",
    ] {
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

/// The app-host group of `dc`: one line per host (with host variables only
/// where an override differs from the defaults) and the defaults as group
/// variables, so 400 hosts take 400 short lines. `{host}` in a default path
/// becomes Ansible's `{{ inventory_hostname }}`.
fn app_hosts(s: &mut String, topology: &Topology, dc: &Datacenter) {
    let d = &dc.name;
    let vars = |h: &AppHost| -> Vec<(&'static str, String)> {
        let shipper = ShipperConfig::for_host(topology, dc, h);
        vec![
            ("spool_dir", h.spool.dir.display().to_string()),
            ("spool_quota_bytes", h.spool.quota_bytes.to_string()),
            ("shipper_state_dir", shipper.state_dir.display().to_string()),
            ("collector_tcp", h.collector.tcp.to_string()),
            ("collector_socket", h.collector.socket.display().to_string()),
            ("collector_inbox", h.collector.inbox.display().to_string()),
            ("collector_admin", h.collector.admin.to_string()),
            ("shipper_admin", h.shipper.admin.to_string()),
        ]
    };
    let group = vars(&dc.host_defaults());
    // No ansible_host: the collector listens on loopback by design, so an
    // app host is reached by its name, the inventory name.
    let _ = writeln!(s, "\n[{d}_app]");
    for h in dc.app_hosts() {
        let _ = write!(s, "{}", h.name);
        if h.overridden.is_some() {
            for ((key, value), (_, default)) in vars(&h).into_iter().zip(&group) {
                // A path the defaults derive from the name is the same
                // value; only what the override changed is written.
                if value != default.replace(HOST_PLACEHOLDER, &h.name) {
                    let _ = write!(s, " {key}={value}");
                }
            }
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "\n[{d}_app:vars]");
    for (key, value) in group {
        let _ = writeln!(
            s,
            "{key}={}",
            value.replace(HOST_PLACEHOLDER, "{{ inventory_hostname }}")
        );
    }
}
