//! A full spool on one datacenter's collector, as processes, both DCs under
//! load, twice: dc2's collector with a 1 MiB spool quota, and with its
//! spool on a real 1 MiB disk (a tmpfs; the quota far above it). Its
//! shipper is stopped, so nothing drains the spool. dc2's collector then
//! refuses with a clear "spool full … retry later" and reports it on
//! `/healthz` and `/metrics`, while dc1 goes on unaffected; when the shipper
//! comes back it ships the spool (checkpointing on the full disk),
//! retention frees the space and dc2 accepts again; every event either DC
//! acknowledged is in ClickHouse exactly once.
//!
//! Each DC runs in a network namespace of its own, 100 ms from the other.
//! Mounting the tmpfs and making the namespaces need root, as the README's
//! test command runs.

mod common;

use std::time::Duration;

use collector::client::ClientConfig;
use common::{
    count, get_json, hosts_cluster, http_get, start_dc, start_dc_with, wait_for, wait_for_or_show,
    Load, LIMIT,
};

/// Small enough that ≈ 1 000 votes/s fill it in seconds, twice the segment
/// size as the collector requires (only sealed segments can be freed).
const QUOTA: u64 = 1 << 20;
const SEGMENT: u64 = 128 << 10;

/// What fills up.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Limit {
    /// The collector's spool quota.
    Quota,
    /// The disk the spool is on.
    Disk,
}

// One test, the cases in turn: each starts two DCs of servers, and a
// shared 2-core host runs one such pair at a time more evenly. Once in CI;
// `SPOOLHOUSE_FULL_DISK_RUNS=20` runs both cases 20 times in a row.
#[test]
fn a_full_spool_refuses_clearly_loses_nothing_and_recovers() {
    let runs: usize = std::env::var("SPOOLHOUSE_FULL_DISK_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    for i in 0..runs {
        eprintln!("full-disk run {} of {runs}", i + 1);
        run(Limit::Quota);
        run(Limit::Disk);
    }
}

fn run(limit: Limit) {
    let cluster = hosts_cluster();
    let dir = tempfile::tempdir().unwrap();
    let _dc1 = start_dc(&cluster, "dc1", &dir.path().join("dc1"));
    // Declared before dc2's services, so it is unmounted after they stop.
    let _disk = (limit == Limit::Disk).then(|| {
        launcher::tmpfs::Tmpfs::mount(&cluster.topology().dc("dc2").unwrap().spool.dir, QUOTA)
            .unwrap_or_else(|e| panic!("{e}"))
    });
    let mut dc2 = start_dc_with(&cluster, "dc2", &dir.path().join("dc2"), |c| {
        if limit == Limit::Quota {
            c.spool_quota_bytes = QUOTA;
        }
        c.limits.spool_segment_bytes = SEGMENT;
        // Uncompressed, so the quota fills at the rate events arrive.
        c.limits.spool_zstd_level = 0;
        // Retention may free a segment only once the inbox reader has
        // checkpointed past it too.
        c.limits.inbox_checkpoint_ms = 200;
    });
    let t = cluster.topology().clone();
    let admin2 = t.dc("dc2").unwrap().collector.admin;
    let shipper2 = &mut dc2[1];
    shipper2.stop();

    // Few, quick retries: a refusal reaches the sender within a second
    // instead of after the default's minute of backoff.
    let client = ClientConfig {
        retries_max: 2,
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        ..ClientConfig::default()
    };
    let mut load = Load::start_with(
        vec![
            t.dc("dc1").unwrap().collector.socket.clone(),
            t.dc("dc2").unwrap().collector.socket.clone(),
        ],
        client,
        true,
    );
    wait_for("dc2's collector refusing", LIMIT, || load.unsent(1).0 > 0);
    let (_, reason) = load.unsent(1);
    let reason = reason.unwrap();
    let expected_end = match limit {
        Limit::Quota => format!(" of {QUOTA} bytes, retry later"),
        Limit::Disk => "no space left on the spool's disk, retry later".to_string(),
    };
    assert!(
        reason.starts_with("spool full: ") && reason.ends_with(&expected_end),
        "{reason}"
    );
    let (status, health) = get_json(admin2, "/healthz");
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["spool_full"], true, "{health}");
    let (_, metrics) = http_get(admin2, "/metrics");
    let (counter, label) = match limit {
        Limit::Quota => ("spoolhouse_collector_quota_refusals_total", ""),
        Limit::Disk => (
            "spoolhouse_collector_events_refused_total",
            "reason=\"disk_full\"",
        ),
    };
    assert!(
        httpd::exposition::sum(&httpd::exposition::samples(&metrics), counter, label)
            .is_some_and(|n| n > 0.0),
        "{metrics}"
    );
    // dc1 is not affected: it keeps acknowledging everything.
    let dc1_before = load.acked(0);
    wait_for("dc1 acknowledging while dc2 is full", LIMIT, || {
        load.acked(0) > dc1_before + 500
    });
    assert_eq!(load.unsent(0).0, 0, "{:?}", load.unsent(0));
    let refused_while_full = load.unsent(1).0;

    // Space returns: the shipper drains the spool, retention deletes the
    // shipped segments, dc2 acknowledges again.
    let shipper2 = &mut dc2[1];
    shipper2.start().unwrap();
    let dc2_before = load.acked(1);
    // What dc2's services said, shown if a wait below runs out.
    let logs = || {
        format!(
            "{limit:?} case; dc2 collector log:\n{}\ndc2 shipper log:\n{}",
            dc2[0].log_tail(30),
            dc2[1].log_tail(30)
        )
    };
    wait_for_or_show(
        "dc2 acknowledging again",
        LIMIT,
        || load.acked(1) > dc2_before + 2_000,
        logs,
    );
    wait_for_or_show(
        "dc2's collector healthy again",
        LIMIT,
        || get_json(admin2, "/healthz").1["ok"] == true,
        logs,
    );
    load.stop();

    for (i, server) in ["dc1-s1-r1", "dc2-s1-r1"].iter().enumerate() {
        let acked = load.acked(i);
        wait_for_or_show(
            "every acknowledged event in ClickHouse",
            LIMIT,
            || count(&cluster, server).0 >= acked,
            logs,
        );
        assert_eq!(count(&cluster, server), (acked, acked), "{server}");
    }
    eprintln!(
        "full {limit:?}: dc1 acked {} (0 refused); dc2 acked {}, {} lines refused while full (\"{reason}\"), {} in all",
        load.acked(0),
        load.acked(1),
        refused_while_full,
        load.unsent(1).0,
    );
}
