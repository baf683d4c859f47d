//! Hostile clients against a collector process: clients that send tiny bad
//! lines and never read their answers, and clients that send one long
//! unfinished line and then nothing, while an app keeps sending. The app's
//! every line is acknowledged and spooled once, the collector stays up, its
//! memory high-water mark stays under the per-connection bound, and the
//! hostile connections are closed once idle.
//!
//! `SPOOLHOUSE_HOSTILE_CONNECTIONS=N` (default 40; the note's figure used
//! 1 000) sets how many hostile connections, half of each kind.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use common::process::{self, CollectorProcess};
use common::*;
use dc_config::services::CollectorLimits;

#[test]
#[ignore = "the collector process of the tests that need one; they start it with --ignored"]
fn collector_process() {
    process::child_main();
}

/// A field of `/proc/PID/status` in KiB (`VmHWM`, `VmRSS`).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn metric(c: &CollectorProcess, name: &str) -> u64 {
    metric_value(&c.metrics(), name)
}

#[test]
fn hostile_clients_cost_bounded_memory_and_lose_no_accepted_event() {
    let n: usize = std::env::var("SPOOLHOUSE_HOSTILE_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let limits = CollectorLimits {
        idle_timeout_ms: 3_000,
        max_connections: n + 8,
        max_tcp_connections: n + 8,
        ..fast_limits()
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let c = CollectorProcess::start_with(dir, &limits);
    let socket = dir.join("collector.sock");
    let until = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < until, "no socket; log:\n{}", c.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let before_kib = status_kib(c.pid(), "VmRSS");

    // Half never read: tiny bad lines until the answers fill the socket.
    let junk = "x\n".repeat(32 << 10);
    let mut hostile = Vec::new();
    for _ in 0..n / 2 {
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        s.set_write_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        for _ in 0..64 {
            if s.write_all(junk.as_bytes()).is_err() {
                break;
            }
        }
        hostile.push(s);
    }
    // Half send most of a maximal line, then nothing.
    let long = vec![b'y'; limits.line_bytes_max - 1];
    let mut slow = Vec::new();
    for _ in 0..n - n / 2 {
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = s.write_all(&long);
        slow.push(s);
    }

    // The app, meanwhile: one line at a time, each acknowledged.
    let mut app = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    app.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answers = BufReader::new(app.try_clone().unwrap());
    for id in 1..=50u64 {
        app.write_all(format!("{}\n", vote(id)).as_bytes()).unwrap();
        let mut line = String::new();
        answers.read_line(&mut line).unwrap();
        assert!(
            line.contains(&format!("\"ack\":{id}")),
            "line {id}: {line:?}"
        );
    }
    let high_kib = status_kib(c.pid(), "VmHWM");
    // Per connection: a read buffer and at most one partial line, plus the
    // answers to one batch (at most 256 rejections).
    let per_connection = (limits.read_buffer_bytes + limits.line_bytes_max) as u64 / 1024 + 64;
    let bound_kib = before_kib + n as u64 * per_connection;

    // Idle for idle_timeout_ms, every hostile connection is closed.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let closed = metric(&c, "spoolhouse_collector_write_timeouts_total")
            + metric(&c, "spoolhouse_collector_idle_timeouts_total");
        if closed >= n as u64 {
            break;
        }
        assert!(
            Instant::now() < until,
            "{closed} of {n} hostile connections closed; metrics:\n{}",
            c.metrics()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let rss_after_kib = status_kib(c.pid(), "VmRSS");
    drop((hostile, slow, app));
    let pid = c.pid();
    c.stop();
    let ids = user_ids(&read_spool_of_other_process(&dir.join("spool")));
    assert_eq!(ids, (1..=50).collect::<Vec<u64>>());
    eprintln!(
        "hostile clients: {n} connections ({} never reading, {} with a {} B unfinished line), collector pid {pid}: \
         RSS {before_kib} KiB before, high-water {high_kib} KiB (bound {bound_kib} KiB), RSS {rss_after_kib} KiB once they were closed; \
         50 of 50 app lines acknowledged and spooled once",
        n / 2,
        n - n / 2,
        limits.line_bytes_max - 1
    );
    assert!(
        high_kib <= bound_kib,
        "high-water {high_kib} KiB over the bound {bound_kib} KiB"
    );
}
