//! The pipeline end to end, as processes: `spoolhouse collector` and
//! `spoolhouse shipper` of dc1 from rendered configs, events sent with
//! `spoolhouse send`; every acknowledged event reaches ClickHouse exactly
//! once, the newest watch progress (sent out of order) is what Redis holds,
//! and the shipper's per-minute states match the events.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{spawn, wait_for};

use dc_config::services::{CollectorConfig, ShipperConfig};
use launcher::{LaunchOptions, LocalCluster};

/// The start of the minute before this one: inside the collector's
/// accepted window, and already closed for aggregation.
fn previous_minute_ms() -> u64 {
    let now = common::now_ms();
    now - now % 60_000 - 60_000
}

#[test]
fn events_sent_to_the_collector_reach_clickhouse_once_and_redis_newest() {
    let cluster =
        LocalCluster::start(&dc_config::examples::declared(), LaunchOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let t = cluster.topology().clone();
    let dc = t.dc("dc1").unwrap();
    std::fs::write(
        dir.path().join("events.toml"),
        dc_config::examples::REGISTRY,
    )
    .unwrap();
    let collector_cfg = CollectorConfig::for_dc(dc);
    let mut shipper_cfg = ShipperConfig::for_dc(&t, dc);
    shipper_cfg.limits.batch_age_ms = 200;
    shipper_cfg.limits.aggregation_grace_ms = 500;
    std::fs::write(
        dir.path().join("collector.toml"),
        toml::to_string(&collector_cfg).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("shipper.toml"),
        toml::to_string(&shipper_cfg).unwrap(),
    )
    .unwrap();
    let c = dir.path().join("collector.toml");
    let s = dir.path().join("shipper.toml");
    let _collector = spawn(
        &["collector", "--config", c.to_str().unwrap()],
        &dir.path().join("collector.log"),
    );
    let socket = collector_cfg.socket.clone();
    wait_for("the collector's socket", Duration::from_secs(30), || {
        socket.exists()
    });
    let _shipper = spawn(
        &["shipper", "--config", s.to_str().unwrap()],
        &dir.path().join("shipper.log"),
    );

    // 2 000 votes, two bad lines, and watch progress for one key out of order.
    let t = previous_minute_ms();
    let mut lines = String::new();
    for i in 0..2_000u64 {
        lines.push_str(&format!(
            "{{\"event\":\"vote\",\"time\":{},\"attrs\":{{\"user_id\":{},\"target_user_id\":{i},\"vote\":\"{}\",\"country_id\":{}}}}}\n",
            t + i,
            i % 300,
            if i % 4 == 0 { "no" } else { "yes" },
            i % 20
        ));
    }
    lines.push_str("{\"event\":\"vote\",\"time\":1}\n");
    lines.push_str("not json\n");
    for (time, video_time) in [(t + 1_000, 100), (t + 3_000, 300), (t + 2_000, 200)] {
        lines.push_str(&format!(
            "{{\"event\":\"watch_progress\",\"time\":{time},\"attrs\":{{\"user_id\":7,\"video_id\":42,\"video_time\":{video_time}}}}}\n"
        ));
    }
    let input = dir.path().join("events.jsonl");
    std::fs::write(&input, lines).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_spoolhouse"))
        .args([
            "send",
            input.to_str().unwrap(),
            "--to",
            &format!("unix:{}", socket.display()),
        ])
        .output()
        .unwrap();
    let summary =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.starts_with("sent 2005, acked 2003, rejected 2"),
        "{summary}"
    );

    let ch = cluster.clickhouse("dc1-s1-r1").unwrap();
    let counts = || -> (u64, u64) {
        let r = ch
            .query("SELECT count(), uniqExact(dc, host, spool_segment, spool_offset) FROM spoolhouse.events_dc FORMAT TSV")
            .unwrap();
        let mut it = r.trim().split('\t').map(|x| x.parse::<u64>().unwrap());
        (it.next().unwrap(), it.next().unwrap())
    };
    wait_for(
        "every acknowledged event in ClickHouse",
        Duration::from_secs(60),
        || counts().0 >= 2_003,
    );
    assert_eq!(counts(), (2_003, 2_003));

    let redis = dc.redis.nodes[0];
    let key = dc_config::state_key::redis_key("watch_progress", &["7", "42"]);
    wait_for(
        "the newest progress in Redis",
        Duration::from_secs(30),
        || {
            launcher::probe::redis_command(redis, &["HGET", &key, "v"])
                .is_ok_and(|r| r.contains("300"))
        },
    );

    // The shipper aggregated the votes' minute: states equal the events.
    let state = || {
        ch.query("SELECT countMerge(count_state) FROM spoolhouse.metric_states_dc FINAL WHERE metric = 'vote.count(){vote=no}'")
            .unwrap()
            .trim()
            .to_string()
    };
    wait_for("the minute's states", Duration::from_secs(60), || {
        state() == "500"
    });

    // The collector's admin port serves the spool's own figures too,
    // among them how far behind each reader is.
    let (_, metrics) = common::http_get(collector_cfg.admin, "/metrics");
    for line in [
        "spoolhouse_collector_events_accepted_total{",
        "spoolhouse_spooler_appended_frames_total ",
        "spoolhouse_spooler_fsync_duration_seconds_bucket{le=\"+Inf\"}",
        "spoolhouse_spooler_reader_lag_bytes{reader=\"clickhouse\"}",
    ] {
        assert!(metrics.contains(line), "{line:?} missing from\n{metrics}");
    }
    // The round that wrote the states counts itself just after.
    let value = |name: &str| -> f64 {
        let (_, metrics) = common::http_get(shipper_cfg.admin, "/metrics");
        common::metric(&metrics, name).unwrap_or_else(|| panic!("{name} missing from\n{metrics}"))
    };
    wait_for("the aggregation metrics", Duration::from_secs(30), || {
        value("spoolhouse_shipper_aggregation_rounds_total") >= 1.0
    });
    assert!(value("spoolhouse_shipper_series_points_total") >= 1.0);
    assert!(value("spoolhouse_shipper_rows_total") >= 2_003.0);
    let (_, metrics) = common::http_get(shipper_cfg.admin, "/metrics");
    for family in [
        "# TYPE spoolhouse_shipper_aggregation_seconds histogram",
        "# TYPE spoolhouse_shipper_watermark_delay_seconds gauge",
        "# TYPE spoolhouse_shipper_aggregations_pending gauge",
    ] {
        assert!(metrics.contains(family), "{family:?} missing");
    }
}
