//! A full spool on one datacenter's collector, as processes, both DCs under
//! load: dc2's collector runs with a 1 MiB spool quota and its shipper is
//! stopped, so nothing drains the spool. dc2's collector then refuses with
//! a clear "spool full … retry later" and reports it on `/healthz` and
//! `/metrics`, while dc1 goes on unaffected; when the shipper comes back it
//! ships the spool, retention frees the space and dc2 accepts again; every
//! event either DC acknowledged is in ClickHouse exactly once.

mod common;

use std::time::Duration;

use collector::client::ClientConfig;
use common::{count, get_json, http_get, start_dc, start_dc_with, wait_for, Load, LIMIT};
use dc_config::local::{LaunchOptions, LocalCluster};

/// Small enough that ≈ 1 000 votes/s fill it in seconds, twice the segment
/// size as the collector requires (only sealed segments can be freed).
const QUOTA: u64 = 1 << 20;
const SEGMENT: u64 = 128 << 10;

#[test]
fn a_full_spool_refuses_clearly_loses_nothing_and_recovers_when_space_returns() {
    let cluster =
        LocalCluster::start(&dc_config::examples::declared(), LaunchOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _dc1 = start_dc(&cluster, "dc1", &dir.path().join("dc1"));
    let mut dc2 = start_dc_with(&cluster, "dc2", &dir.path().join("dc2"), |c| {
        c.spool_quota_bytes = QUOTA;
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
    assert!(
        reason.starts_with("spool full: ")
            && reason.ends_with(&format!(" of {QUOTA} bytes, retry later")),
        "{reason}"
    );
    let (status, health) = get_json(admin2, "/healthz");
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["spool_full"], true, "{health}");
    let metrics = http_get(admin2, "/metrics");
    assert!(
        metrics.lines().any(
            |l| l.starts_with("spoolhouse_collector_quota_refusals_total ") && !l.ends_with(" 0")
        ),
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
    wait_for("dc2 acknowledging again", LIMIT, || {
        load.acked(1) > dc2_before + 2_000
    });
    wait_for("dc2's collector healthy again", LIMIT, || {
        get_json(admin2, "/healthz").1["ok"] == true
    });
    load.stop();

    for (i, server) in ["dc1-s1-r1", "dc2-s1-r1"].iter().enumerate() {
        let acked = load.acked(i);
        wait_for("every acknowledged event in ClickHouse", LIMIT, || {
            count(&cluster, server).0 >= acked
        });
        assert_eq!(count(&cluster, server), (acked, acked), "{server}");
    }
    eprintln!(
        "full disk: dc1 acked {} (0 refused); dc2 acked {}, {} lines refused while full (\"{reason}\"), {} in all",
        load.acked(0),
        load.acked(1),
        refused_while_full,
        load.unsent(1).0,
    );
}
