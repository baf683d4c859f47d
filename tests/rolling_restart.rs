//! A rolling restart of every service of both datacenters under load, as
//! processes: each DC's collector, shipper and query service in turn (SIGTERM
//! drains, start, wait until healthy), then every ClickHouse, Redis and
//! ZooKeeper server one at a time. Each DC runs in a network namespace of its
//! own, 100 ms from the other (needs root, as CI runs it). No acknowledged
//! event is lost or doubled; the ack latency the apps saw during the
//! restarts is printed.

mod common;

use std::time::{Duration, Instant};

use common::{count, hosts_cluster, start_dc, wait_for, wait_serving, Load, LIMIT};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[test]
fn a_rolling_restart_under_load_loses_and_doubles_nothing() {
    let mut cluster = hosts_cluster();
    let dir = tempfile::tempdir().unwrap();
    let names = ["dc1", "dc2"];
    let mut services: Vec<_> = names
        .iter()
        .map(|dc| start_dc(&cluster, dc, &dir.path().join(dc)))
        .collect();
    let t = cluster.topology().clone();
    let mut load = Load::start(
        names
            .iter()
            .map(|dc| t.dc(dc).unwrap().collector.socket.clone())
            .collect(),
    );
    wait_for("both DCs' events in ClickHouse", LIMIT, || {
        count(&cluster, "dc1-s1-r1").0 > 0 && count(&cluster, "dc2-s1-r1").0 > 0
    });

    let started = Instant::now();
    for (d, dc) in names.iter().enumerate() {
        for p in services[d].iter_mut() {
            p.stop();
            p.start().unwrap();
            wait_serving(&cluster, dc);
        }
    }
    let services_done = Instant::now();
    for server in cluster.servers() {
        cluster.stop(&server).unwrap();
        cluster.restart(&server).unwrap();
    }
    let before = (load.acked(0), load.acked(1));
    wait_for("acks in both DCs after the restarts", LIMIT, || {
        load.acked(0) > before.0 + 500 && load.acked(1) > before.1 + 500
    });
    let during = load.latencies_since(started);
    load.stop();

    common::assert_shipped_once(&cluster, &load, &[&services[0], &services[1]]);
    eprintln!(
        "rolling restart: 6 services in {:.1} s, then {} servers; {} + {} events acknowledged, each in ClickHouse once; \
         ack latency over {} batches during the restarts: p50 {:?}, p99 {:?}, max {:?}",
        (services_done - started).as_secs_f64(),
        cluster.servers().len(),
        load.acked(0),
        load.acked(1),
        during.len(),
        percentile(&during, 0.50),
        percentile(&during, 0.99),
        during.last().copied().unwrap_or_default(),
    );
}
