//! Every service's `/metrics` passes `promtool check metrics` (Debian's
//! `prometheus` package, installed by `scripts/setup.sh`) with no error and
//! no warning: what a Prometheus server and its users read is well formed,
//! every metric has its help text, and counts are in base units.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

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
    let text = http_get(addr, path);
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
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
