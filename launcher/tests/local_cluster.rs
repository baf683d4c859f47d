//! The launcher against the real servers: two datacenters from the example
//! topology, the schema on every server, inserts in each DC read through the
//! global table, a DC going down under `skip_unavailable_shards`, and no
//! server process left behind, even when a test fails.

use std::time::{Duration, Instant};

use launcher::probe::HttpError;
use launcher::{LaunchOptions, LocalCluster};

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

const TABLES: &[&str] = &[
    "dc_marker",
    "dc_marker_all",
    "events_all",
    "events_dc",
    "events_ingest",
    "events_ingest_mv",
    "events_local",
    "keyed_state_all",
    "keyed_state_dc",
    "keyed_state_ingest_mv",
    "keyed_state_local",
    "keyed_state_mv",
    "metric_states_all",
    "metric_states_day_all",
    "metric_states_day_dc",
    "metric_states_day_local",
    "metric_states_dc",
    "metric_states_hour_all",
    "metric_states_hour_dc",
    "metric_states_hour_local",
    "metric_states_local",
    "rollup_marks_all",
    "rollup_marks_dc",
    "rollup_marks_local",
    "series_all",
    "series_dc",
    "series_local",
    "series_mv",
    "shipper_fences",
];

fn insert_rows(cluster: &LocalCluster, server: &str, dc: &str, n: usize, first_offset: usize) {
    let mut sql = String::from("INSERT INTO spoolhouse.events_local (event, date, time, time_ms, dc, host, attr_names, attr_values, spool_segment, spool_offset) VALUES ");
    for i in 0..n {
        let off = first_offset + i;
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(&format!(
            "('vote', '2026-11-25', 1764028800, 1764028800123, '{dc}', '{dc}-app1', ['user_id'], ['{off}'], 1, {off})"
        ));
    }
    cluster.clickhouse(server).unwrap().query(&sql).unwrap();
}

fn count_by_dc(
    cluster: &LocalCluster,
    server: &str,
    settings: &[(&str, &str)],
) -> Result<String, HttpError> {
    cluster.clickhouse(server).unwrap().query_with(
        "SELECT dc, count() FROM spoolhouse.events_all GROUP BY dc ORDER BY dc FORMAT TSV",
        settings,
    )
}

#[test]
fn two_datacenters_schema_global_reads_and_a_lost_datacenter() {
    let mut cluster =
        LocalCluster::start(&dc_config::examples::declared(), LaunchOptions::default()).unwrap();
    assert_eq!(
        cluster.servers(),
        [
            "dc1-zk1",
            "dc1-redis1",
            "dc2-zk1",
            "dc2-redis1",
            "dc1-s1-r1",
            "dc1-s2-r1",
            "dc2-s1-r1"
        ]
    );

    // The schema is on every server.
    for server in ["dc1-s1-r1", "dc1-s2-r1", "dc2-s1-r1"] {
        let tables = cluster
            .clickhouse(server)
            .unwrap()
            .query("SELECT name FROM system.tables WHERE database = 'spoolhouse' ORDER BY name FORMAT TSV")
            .unwrap();
        assert_eq!(tables.lines().collect::<Vec<_>>(), TABLES, "on {server}");
    }

    // However often a host's fence is raised, merges keep one row per host,
    // its highest (docs/adr/0009-fenced-inserts.md).
    let ch = cluster.clickhouse("dc1-s1-r1").unwrap();
    for (host, below) in [("a", 5), ("a", 9), ("a", 7), ("b", 3)] {
        ch.query(&format!(
            "INSERT INTO spoolhouse.shipper_fences (dc, host, below) VALUES ('dc1', '{host}', {below})"
        ))
        .unwrap();
    }
    ch.query("OPTIMIZE TABLE spoolhouse.shipper_fences FINAL")
        .unwrap();
    assert_eq!(
        ch.query("SELECT host, below FROM spoolhouse.shipper_fences ORDER BY host FORMAT TSV")
            .unwrap(),
        "a\t9\nb\t3\n"
    );

    insert_rows(&cluster, "dc1-s1-r1", "dc1", 3, 0);
    insert_rows(&cluster, "dc1-s2-r1", "dc1", 2, 100);
    insert_rows(&cluster, "dc2-s1-r1", "dc2", 4, 0);
    // The global table answers with both DCs' rows, asked of either DC.
    for server in ["dc1-s1-r1", "dc2-s1-r1"] {
        assert_eq!(
            count_by_dc(&cluster, server, &[]).unwrap(),
            "dc1\t5\ndc2\t4\n",
            "asked of {server}"
        );
    }
    // Every user logs in with its password, and only the writer writes:
    // the read-only users, the servers' own cluster user, a wrong password
    // and a client naming no user are refused.
    use dc_config::schema::user::{CLUSTER_USER, QUERY_USER, SQL_USER, WRITER_USER};
    use launcher::probe::{ClickHouseHttp, HttpError};
    let url = cluster.clickhouse("dc1-s1-r1").unwrap().url().to_string();
    let write = "INSERT INTO spoolhouse.shipper_fences (dc, host, below) VALUES ('dc1', 'x', 1)";
    let refused = |ch: &ClickHouseHttp, sql: &str| match ch.query(sql) {
        Err(HttpError::Refused { body, .. }) => body,
        other => panic!("{sql} as {ch:?}: {other:?}"),
    };
    for user in [QUERY_USER, SQL_USER, CLUSTER_USER] {
        let ch = cluster.clickhouse_as("dc1-s1-r1", user).unwrap();
        assert_eq!(ch.query("SELECT 1").unwrap().trim(), "1", "{user}");
        let why = refused(&ch, write);
        assert!(why.contains("readonly mode"), "{user}: {why}");
    }
    let nobody = ClickHouseHttp::new(url.clone(), std::time::Duration::from_secs(5));
    let why = refused(&nobody, "SELECT 1");
    assert!(why.contains("Unknown user default"), "{why}");
    let guess = nobody.clone().with_login(WRITER_USER, "guess");
    let why = refused(&guess, "SELECT 1");
    assert!(why.contains("Wrong password"), "{why}");
    let secrets = &cluster.topology().secrets_dir;
    let mode = |user: &str| {
        use std::os::unix::fs::PermissionsExt;
        let file = dc_config::credentials::password_file(secrets, user);
        std::fs::metadata(file).unwrap().permissions().mode() & 0o777
    };
    for user in [WRITER_USER, QUERY_USER, SQL_USER, CLUSTER_USER] {
        assert_eq!(mode(user), 0o600, "{user}");
    }

    // The per-DC table stays in its DC.
    let local = cluster
        .clickhouse("dc1-s2-r1")
        .unwrap()
        .query("SELECT count() FROM spoolhouse.events_dc")
        .unwrap();
    assert_eq!(local.trim(), "5");

    // A row written by the shipper's RowBinary encoder reads back column for column.
    let ev = dc_config::event::ValidEvent {
        event: "screen_view".into(),
        time_ms: 1_764_028_800_999,
        attrs: vec![
            (
                "screen".into(),
                dc_config::event::Value::Str("home\t\"'".into()),
            ),
            (
                "is_first_launch".into(),
                dc_config::event::Value::Bool(true),
            ),
        ],
    };
    let pos = dc_config::row::SpoolPosition {
        segment: 9,
        offset: 4242,
    };
    let mut body = Vec::new();
    dc_config::row::EventRow::new(&ev, "dc2", "dc2-app1", pos).write_row_binary(&mut body);
    let ch2 = cluster.clickhouse("dc2-s1-r1").unwrap();
    ch2.query("CREATE TABLE default.rowbinary_check AS spoolhouse.events_local ENGINE = Memory")
        .unwrap();
    ch2.insert(
        &format!(
            "INSERT INTO default.rowbinary_check ({}) FORMAT RowBinary",
            dc_config::schema::column::EVENT_COLUMNS
        ),
        &body,
    )
    .unwrap();
    let back = ch2
        .query("SELECT event, date, time, time_ms, dc, host, attr_names, attr_values, spool_segment, spool_offset FROM default.rowbinary_check FORMAT TSV")
        .unwrap();
    assert_eq!(
        back,
        "screen_view\t2025-11-25\t2025-11-25 00:00:00\t1764028800999\tdc2\tdc2-app1\t['screen','is_first_launch']\t['home\\t\"\\'','1']\t9\t4242\n"
    );

    // Replicated block deduplication: the same block again adds nothing.
    insert_rows(&cluster, "dc2-s1-r1", "dc2", 4, 0);
    assert_eq!(
        count_by_dc(&cluster, "dc2-s1-r1", &[]).unwrap(),
        "dc1\t5\ndc2\t4\n"
    );

    // Aggregate states feed the series table through the materialized view.
    let ch = cluster.clickhouse("dc1-s1-r1").unwrap();
    ch.query(
        "INSERT INTO spoolhouse.metric_states_local (date, minute, dc, event, metric, kind, version, count_state, uniq_state, sum_state, min_state, max_state) \
         SELECT date, toStartOfMinute(time), dc, event, 'vote.uniq(user_id)', 'uniq', 1, countState(), \
         uniqState(attr_values[indexOf(attr_names, 'user_id')]), sumState(toFloat64(0)), minState(toFloat64(0)), maxState(toFloat64(0)) \
         FROM spoolhouse.events_local GROUP BY date, toStartOfMinute(time), dc, event",
    )
    .unwrap();
    let series = ch
        .query("SELECT value, metric_hash = cityHash64('vote.uniq(user_id)') FROM spoolhouse.series_local FORMAT TSV")
        .unwrap();
    assert_eq!(series, "3\t1\n");
    let merged = ch
        .query("SELECT uniqMerge(uniq_state) FROM spoolhouse.metric_states_all WHERE metric = 'vote.uniq(user_id)'")
        .unwrap();
    assert_eq!(merged.trim(), "3");

    // dc2's only ClickHouse goes down: a plain global read fails, one with
    // skip_unavailable_shards still answers with dc1's rows.
    cluster.kill("dc2-s1-r1").unwrap();
    let err = count_by_dc(&cluster, "dc1-s1-r1", &[]).unwrap_err();
    assert!(matches!(err, HttpError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("Connection refused"), "{err}");
    let partial = count_by_dc(&cluster, "dc1-s1-r1", &[("skip_unavailable_shards", "1")]).unwrap();
    assert_eq!(partial, "dc1\t5\n");
    // The DC markers say which DCs, and how many of their shards, answered.
    let answered = cluster
        .clickhouse("dc1-s1-r1")
        .unwrap()
        .query_with(
            "SELECT dc, count() FROM spoolhouse.dc_marker_all GROUP BY dc ORDER BY dc FORMAT TSV",
            &[("skip_unavailable_shards", "1")],
        )
        .unwrap();
    assert_eq!(answered, "dc1\t2\n");

    // It comes back with its data, and the global read is whole again.
    cluster.restart("dc2-s1-r1").unwrap();
    assert_eq!(
        count_by_dc(&cluster, "dc1-s1-r1", &[]).unwrap(),
        "dc1\t5\ndc2\t4\n"
    );

    let pids = cluster.pids();
    assert_eq!(pids.len(), 7);
    drop(cluster);
    for pid in pids {
        assert!(!alive(pid), "server pid {pid} survived the cluster");
    }
}

#[test]
fn no_server_survives_a_failing_test() {
    let pids = std::sync::Mutex::new(Vec::new());
    let state = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let mut cluster =
            LocalCluster::start(&dc_config::examples::declared(), LaunchOptions::default())
                .unwrap();
        *pids.lock().unwrap() = cluster.pids();
        *state.lock().unwrap() = Some(cluster.state_dir().to_path_buf());
        panic!("a test failing while its servers run");
    });
    assert!(result.is_err());
    let pids = pids.into_inner().unwrap();
    assert_eq!(pids.len(), 7);
    for pid in pids {
        assert!(!alive(pid), "server pid {pid} survived a failing test");
    }
    let state = state.into_inner().unwrap().unwrap();
    assert!(
        !state.exists(),
        "temporary state {} was left behind",
        state.display()
    );
}

#[test]
fn a_kept_state_directory_survives_a_stop_and_start() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LaunchOptions {
        state_dir: Some(dir.path().to_path_buf()),
        ..LaunchOptions::default()
    };
    let cluster = LocalCluster::start(&dc_config::examples::declared(), opts.clone()).unwrap();
    insert_rows(&cluster, "dc2-s1-r1", "dc2", 2, 0);
    drop(cluster);
    assert!(dir
        .path()
        .join("dc2/ch-s1-r1/log/clickhouse-server.log")
        .is_file());
    assert!(dir.path().join("rendered/ddl/dc1.sql").is_file());
    // Started again on the same state (new ports): the rows are still there,
    // and applying the schema again changes nothing.
    let cluster = LocalCluster::start(&dc_config::examples::declared(), opts).unwrap();
    assert_eq!(count_by_dc(&cluster, "dc1-s1-r1", &[]).unwrap(), "dc2\t2\n");
}

/// A ClickHouse server that cannot start says why: its own error log (where
/// ClickHouse writes the reason, not to its output) is in the error.
#[test]
fn a_server_that_cannot_start_says_why() {
    use launcher::LaunchError;
    let mut cluster =
        LocalCluster::start(&dc_config::examples::declared(), LaunchOptions::default()).unwrap();
    let port = cluster
        .topology()
        .replicas()
        .find(|r| r.name() == "dc2-s1-r1")
        .unwrap()
        .replica
        .tcp_port;
    cluster.kill("dc2-s1-r1").unwrap();
    // Its port taken meanwhile (by this test, on every address it may use).
    let _taken = std::net::TcpListener::bind(("0.0.0.0", port)).unwrap();
    match cluster.restart("dc2-s1-r1") {
        Err(LaunchError::Exited { tail, .. }) => assert!(
            tail.contains("Address already in use"),
            "the reason is missing from:\n{tail}"
        ),
        other => panic!("{other:?}"),
    }
}

/// One DC with a three-node ZooKeeper ensemble and a three-master Redis
/// Cluster: the launcher forms both and the schema still applies.
#[test]
fn zookeeper_ensemble_and_redis_cluster() {
    let declared = dc_config::examples::one_dc_clustered();
    let cluster = LocalCluster::start(&declared, LaunchOptions::default()).unwrap();
    let dc = &cluster.topology().datacenter[0];
    for z in &dc.zookeeper {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], z.port));
        assert!(launcher::probe::zookeeper_serving(addr));
    }
    for n in &dc.redis.nodes {
        let info = launcher::probe::redis_command(*n, &["CLUSTER", "INFO"]).unwrap();
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_known_nodes:3"), "{info}");
    }
    let tables = cluster
        .clickhouse("solo-s1-r1")
        .unwrap()
        .query("SELECT count() FROM system.tables WHERE database = 'spoolhouse'")
        .unwrap();
    assert_eq!(tables.trim(), TABLES.len().to_string());
}

#[test]
fn cross_dc_reads_cross_a_delaying_link_that_can_be_cut_and_healed() {
    let opts = LaunchOptions {
        cross_dc_delay: Some(Duration::from_millis(100)),
        ..LaunchOptions::default()
    };
    let cluster = LocalCluster::start(&dc_config::examples::declared(), opts).unwrap();
    insert_rows(&cluster, "dc1-s1-r1", "dc1", 3, 0);
    insert_rows(&cluster, "dc2-s1-r1", "dc2", 4, 0);
    // dc1's servers dial dc2's through a relay, never directly.
    let config = std::fs::read_to_string(
        cluster
            .state_dir()
            .join("rendered/clickhouse/dc1-s1-r1/config.xml"),
    )
    .unwrap();
    let dc2_port = cluster.topology().dc("dc2").unwrap().clickhouse.shard[0].replica[0].tcp_port;
    assert!(
        !config.contains(&format!("<port>{dc2_port}</port>")),
        "{config}"
    );

    // A global read from dc1 waits for dc2 across the link: at least one
    // round trip of 2 x 100 ms.
    let started = Instant::now();
    assert_eq!(
        count_by_dc(&cluster, "dc1-s1-r1", &[]).unwrap(),
        "dc1\t3\ndc2\t4\n"
    );
    assert!(started.elapsed() >= Duration::from_millis(200));

    // Cut dc2: dc1 answers alone with skip_unavailable_shards, dc2 too from
    // its side; each still has its own data.
    cluster.cut("dc2").unwrap();
    let skip = [("skip_unavailable_shards", "1")];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = count_by_dc(&cluster, "dc1-s1-r1", &skip);
        if r.as_deref().ok() == Some("dc1\t3\n") {
            break;
        }
        assert!(Instant::now() < deadline, "dc2 still answers: {r:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        count_by_dc(&cluster, "dc2-s1-r1", &skip).unwrap(),
        "dc2\t4\n"
    );
    assert!(count_by_dc(&cluster, "dc1-s1-r1", &[]).is_err());

    cluster.heal("dc2").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = count_by_dc(&cluster, "dc1-s1-r1", &[]);
        if r.as_deref().ok() == Some("dc1\t3\ndc2\t4\n") {
            break;
        }
        assert!(Instant::now() < deadline, "not healed: {r:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(matches!(
        cluster.cut("dc9"),
        Err(launcher::LaunchError::UnknownDatacenter(_))
    ));
}
