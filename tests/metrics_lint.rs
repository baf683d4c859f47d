//! Every service's `/metrics` passes `promtool check metrics` (Debian's
//! `prometheus` package, installed by `scripts/setup.sh`) with no error and
//! no warning: what a Prometheus server and its users read is well formed,
//! every metric has its help text, and counts are in base units. And the
//! names the query service's pipeline health reads from the other services
//! are theirs, and served.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use query::pipeline::reads;
use shipper::metrics::names::ROWS_TOTAL;

/// The query service cannot link the collector or the shipper: its copies
/// of their metric names are held equal to theirs here.
#[test]
fn pipeline_health_reads_the_other_services_names() {
    use collector::metrics::names as collector;
    use shipper::metrics::names as shipper;
    assert_eq!(
        reads::COLLECTOR_EVENTS_ACCEPTED_TOTAL,
        collector::EVENTS_ACCEPTED_TOTAL
    );
    assert_eq!(reads::COLLECTOR_SPOOL_BYTES, collector::SPOOL_BYTES);
    assert_eq!(
        reads::COLLECTOR_QUARANTINED_LINES_TOTAL,
        collector::QUARANTINED_LINES_TOTAL
    );
    assert_eq!(reads::SHIPPER_LAG_SECONDS, shipper::LAG_SECONDS);
    assert_eq!(reads::SHIPPER_ROWS_TOTAL, shipper::ROWS_TOTAL);
    assert_eq!(reads::SHIPPER_AGGREGATOR, shipper::AGGREGATOR);
    assert_eq!(reads::SHIPPER_FLEET_HOSTS, shipper::FLEET_HOSTS);
    use ::shipper::relay::names as relay;
    assert_eq!(reads::RELAY_SESSIONS, relay::SESSIONS);
    assert_eq!(reads::RELAY_INFLOW_FRAMES_TOTAL, relay::INFLOW_FRAMES_TOTAL);
    assert_eq!(reads::RELAY_SPOOL_BYTES, relay::SPOOL_BYTES);
    assert_eq!(reads::RELAY_ROWS_TOTAL, relay::ROWS_TOTAL);
}

/// `promtool check metrics` on `text`: its exit status and what it said.
fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus; scripts/setup.sh does)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The body of a GET (headers dropped).
fn body(addr: std::net::SocketAddr, path: &str) -> String {
    http_get(addr, path).1
}

#[test]
fn every_services_metrics_pass_promtool() {
    let cluster = launcher::LocalCluster::start(
        &dc_config::examples::declared(),
        launcher::LaunchOptions::default(),
    )
    .unwrap();
    let dir = cluster.state_dir().join("services-dc1");
    let _procs = start_dc(&cluster, "dc1", &dir);
    let dc = cluster.topology().dc("dc1").unwrap().clone();
    // Some traffic, so counters with labels have series: events through
    // the collector and the shipper, requests to the query service.
    let mut load = Load::start(vec![dc.collector.socket.clone()]);
    wait_for("events acknowledged", Duration::from_secs(60), || {
        load.acked(0) >= 200
    });
    load.stop();
    let _ = body(dc.query.listen, "/v1/registry");
    let _ = body(dc.query.listen, "/v1/nothing");
    wait_for("rows shipped", Duration::from_secs(60), || {
        metric(&body(dc.shipper.admin, "/metrics"), ROWS_TOTAL).unwrap_or(0.0) >= 1.0
    });
    // What pipeline health reads is served under these names.
    for (addr, name) in [
        (dc.collector.admin, reads::COLLECTOR_EVENTS_ACCEPTED_TOTAL),
        (dc.collector.admin, reads::COLLECTOR_SPOOL_BYTES),
        (dc.shipper.admin, reads::SHIPPER_LAG_SECONDS),
        (dc.shipper.admin, reads::SHIPPER_ROWS_TOTAL),
    ] {
        let text = body(addr, "/metrics");
        assert!(metric(&text, name).is_some(), "{name} not in:\n{text}");
    }
    let mut problems = String::new();
    for (service, addr) in [
        ("collector", dc.collector.admin),
        ("shipper", dc.shipper.admin),
        ("query service", dc.query.listen),
    ] {
        let text = body(addr, "/metrics");
        assert!(text.contains("# HELP"), "{service}: {text:.300}");
        let (ok, said) = promtool(&text);
        if !ok || !said.trim().is_empty() {
            problems.push_str(&format!("promtool on the {service}'s /metrics:\n{said}\n"));
        }
    }
    assert!(problems.is_empty(), "{problems}");
}

/// The relay's metrics (relay mode, docs/adr/0017), every family with a
/// sample, through promtool as served.
#[test]
fn the_relays_metrics_pass_promtool() {
    use shipper::metrics::label;
    let mut registry = prometheus_client::registry::Registry::default();
    let m = shipper::relay::RelayMetrics::register(&mut registry);
    m.refused.get_or_create(&label("reason", "auth")).inc();
    m.ended.get_or_create(&label("reason", "replaced")).inc();
    m.inserts.get_or_create(&label("shard", "1")).inc();
    m.errors.get_or_create(&label("kind", "network")).inc();
    m.insert_seconds.observe(0.2);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    // As the admin server serves it.
    let text = httpd::exposition::from_openmetrics(&text);
    assert!(text.contains("spoolhouse_relay_takeovers_total"), "{text}");
    for name in [
        shipper::relay::names::SESSIONS,
        shipper::relay::names::INFLOW_FRAMES_TOTAL,
        shipper::relay::names::SPOOL_BYTES,
        shipper::relay::names::ROWS_TOTAL,
    ] {
        assert!(
            common::metric(&text, name).is_some(),
            "{name} not in:\n{text}"
        );
    }
    let (ok, said) = promtool(&text);
    assert!(
        ok && said.trim().is_empty(),
        "promtool on the relay's /metrics:\n{said}"
    );
}
