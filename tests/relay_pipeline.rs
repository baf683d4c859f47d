//! Relay mode as deployed (docs/adr/0017): dc1 of the example with its
//! app hosts in relay mode through one relay, every service a process
//! started from the topology by the launcher (relay, collectors, shippers
//! forwarding, query service). Events sent to the collectors reach
//! ClickHouse exactly once through the relay, and the query service's
//! pipeline health shows the relay, its sessions and its rows.

mod common;

use std::time::Duration;

use common::{get_json, start_dc, wait_for, Load};
use launcher::{LaunchOptions, LocalCluster};

#[test]
fn a_dc_in_relay_mode_ships_once_and_pipeline_health_shows_its_relay() {
    let mut declared = dc_config::examples::declared();
    declared.topology = launcher::with_app_hosts(&declared.topology, 2);
    declared.topology = launcher::with_relays(&declared.topology, "dc1", 1);
    let cluster = LocalCluster::start(&declared, LaunchOptions::default()).unwrap();
    let dir = cluster.state_dir().join("services-dc1");
    let _procs = start_dc(&cluster, "dc1", &dir);
    let dc = cluster.topology().dc("dc1").unwrap().clone();
    let sockets = dc
        .app_hosts()
        .iter()
        .map(|h| h.collector.socket.clone())
        .collect();
    let mut load = Load::start(sockets);
    wait_for("events acknowledged", Duration::from_secs(60), || {
        load.acked(0) + load.acked(1) >= 2_000
    });
    load.stop();
    let sent = load.acked(0) + load.acked(1);
    let server = dc.replicas().next().unwrap().name();
    wait_for(
        "every event through the relay",
        Duration::from_secs(60),
        || common::count(&cluster, &server).0 >= sent,
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(common::count(&cluster, &server), (sent, sent));

    let (status, p) = get_json(dc.query.listen, "/v1/pipeline");
    assert_eq!(status, 200, "{p}");
    let dc1 = p["datacenters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "dc1")
        .unwrap()
        .clone();
    let relays = dc1["relays"].as_array().unwrap();
    assert_eq!(relays.len(), 1, "{dc1}");
    let r = &relays[0];
    assert_eq!(r["name"], "dc1-relay1", "{r}");
    assert_eq!(r["up"], true, "{r}");
    assert_eq!(
        r["sessions"].as_f64(),
        Some(2.0),
        "both hosts' forwarders: {r}"
    );
    assert_eq!(
        r["clickhouse_rows_total"].as_f64(),
        Some(sent as f64),
        "{r}"
    );
    // The shippers count what became visible through the relay.
    assert_eq!(
        dc1["clickhouse_rows_total"].as_f64(),
        Some(sent as f64),
        "{dc1}"
    );
}
