//! Hostile clients against a query service process: clients that send half
//! a request head and wait, clients that announce a large POST body and
//! send a little of it, and clients that pipeline requests for the
//! console's largest asset and never read the answers. Meanwhile an honest
//! client is answered, the service's memory high-water mark stays under a
//! per-connection bound, and the slow senders are cut off by the header
//! and body timeouts.
//!
//! `SPOOLHOUSE_HOSTILE_CONNECTIONS=N` (default 60; the note's figure used
//! 900, under the listener's 1 024 connections) sets how many hostile
//! connections, a third of each kind.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// A field of `/proc/PID/status` in KiB (`VmHWM`, `VmRSS`).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// What one hostile connection may cost the service at most: its header
/// buffer, a whole body (`MAX_BODY_BYTES`), one answer in flight and the
/// task's own state, with room to spare.
const PER_CONNECTION_KIB: u64 = 1024;

#[test]
fn hostile_clients_cost_bounded_memory_and_do_not_stop_answers() {
    let n: usize = std::env::var("SPOOLHOUSE_HOSTILE_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    assert!(
        n + 16 <= query::api::LIMITS.connections,
        "at most {} hostile connections: beyond, the listener refuses them at accept",
        query::api::LIMITS.connections - 16
    );
    let cluster = launcher::LocalCluster::start(
        &dc_config::examples::declared(),
        launcher::LaunchOptions::default(),
    )
    .unwrap();
    let dir = cluster.state_dir().join("services-dc1");
    let procs = start_dc(&cluster, "dc1", &dir);
    let query = procs[2].pid().unwrap();
    let addr = cluster.topology().dc("dc1").unwrap().query.listen;
    let log_tail = || procs[2].log_tail(30);
    let asset = "/console/uPlot.iife.min.js";
    let honest = |path: &str| http_get(addr, path);
    // Warm up every path the attack takes, so the baseline holds what
    // serving it costs once.
    assert_eq!(honest(asset).0, 200, "{}", log_tail());
    assert_eq!(honest("/healthz").0, 200);
    std::thread::sleep(Duration::from_millis(500));
    let before_kib = status_kib(query, "VmRSS");

    let started = Instant::now();
    let mut hostile = Vec::new();
    for i in 0..n {
        let mut s = TcpStream::connect(addr).unwrap();
        let head = match i % 3 {
            // Half a request head, then nothing.
            0 => "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".to_string(),
            // A large body announced, a little of it sent.
            1 => format!(
                "POST /v1/sql HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{{\"sql\": \"SELECT '{}",
                query::api::MAX_BODY_BYTES,
                "x".repeat(30_000)
            ),
            // Requests pipelined for the largest asset, answers never read.
            _ => format!("GET {asset} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").repeat(64),
        };
        // A non-reader's pipeline may block once the service stops
        // reading it: the write is bounded.
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = s.write_all(head.as_bytes());
        hostile.push(s);
    }
    // While they hold: an honest client is answered.
    for path in ["/healthz", "/v1/registry", asset] {
        let (status, answer) = honest(path);
        assert_eq!(status, 200, "{path}: {answer:.200}");
    }
    let high_kib = status_kib(query, "VmHWM");
    let bound_kib = before_kib + n as u64 * PER_CONNECTION_KIB;

    // The slow senders are cut off by the header and body timeouts (10 s):
    // a slow-header connection sees its end, a slow body a 408.
    let mut closed = 0;
    for (i, s) in hostile.iter_mut().enumerate().filter(|(i, _)| i % 3 != 2) {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        if i % 3 == 1 {
            assert!(
                text.starts_with("HTTP/1.1 408"),
                "slow body {i}: {text:.200}"
            );
        }
        closed += 1;
    }
    let cut_after = started.elapsed();
    drop(hostile);
    let (_, metrics) = honest("/metrics");
    let samples = httpd::exposition::samples(&metrics);
    let timeouts = |phase: &str| -> u64 {
        samples
            .iter()
            .filter(|(name, labels, _)| {
                *name == "spoolhouse_http_timeouts_total"
                    && httpd::exposition::label_value(labels, "listener") == Some("query")
                    && httpd::exposition::label_value(labels, "phase") == Some(phase)
            })
            .map(|(_, _, v)| *v as u64)
            .sum()
    };
    println!(
        "{n} hostile connections ({} slow headers, {} slow bodies, {} non-readers): \
         query service RSS {before_kib} KiB before, high-water {high_kib} KiB \
         (bound {bound_kib} KiB = before + {PER_CONNECTION_KIB} KiB each); \
         {closed} slow senders cut off within {:.1} s ({} by the body timeout)",
        n.div_ceil(3),
        (n + 1) / 3,
        n / 3,
        cut_after.as_secs_f64(),
        timeouts("body"),
    );
    assert!(
        high_kib <= bound_kib,
        "high-water {high_kib} KiB over the bound {bound_kib} KiB\n{}",
        log_tail()
    );
    assert!(timeouts("body") >= (n / 3) as u64, "{metrics}");
    assert_eq!(honest("/healthz").0, 200);
}
