//! The shipper against real ClickHouse (with ZooKeeper) and Redis from the
//! launcher: exactly once in effect, newest state wins, each guard against
//! duplicates on its own, outages of every server, and a blocked batch that
//! is never skipped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dc_config::event::{ValidEvent, Value};
use dc_config::record::Record;
use dc_config::schema::user::WRITER_USER;
use dc_config::services::ShipperConfig;
use launcher::{LaunchOptions, LocalCluster};
use shipper::{Guards, Health, Metrics, Shipper};
use spooler::{Config, Durability, Spool};

const T0: u64 = 1_764_028_800_000;

fn launch() -> LocalCluster {
    LocalCluster::start(&dc_config::examples::declared(), LaunchOptions::default()).unwrap()
}

fn event(name: &str, time_ms: u64, attrs: &[(&str, Value)]) -> Vec<u8> {
    Record {
        event: ValidEvent {
            event: name.into(),
            time_ms,
            attrs: attrs
                .iter()
                .map(|(n, v)| (n.to_string(), v.clone()))
                .collect(),
        },
        inbox: None,
    }
    .encode()
    .unwrap()
}

fn vote(i: u64) -> Vec<u8> {
    vote_at(i, T0 + i)
}

/// Vote `i` (as [`vote`]) at `time_ms`.
fn vote_at(i: u64, time_ms: u64) -> Vec<u8> {
    event(
        "vote",
        time_ms,
        &[
            ("user_id", Value::UInt(i % 977)),
            ("target_user_id", Value::UInt(i)),
            (
                "vote",
                Value::Str(if i.is_multiple_of(3) { "no" } else { "yes" }.into()),
            ),
            ("country_id", Value::UInt(i % 50)),
        ],
    )
}

fn progress(user: u64, video: u64, time_ms: u64, video_time: u64) -> Vec<u8> {
    event(
        "watch_progress",
        time_ms,
        &[
            ("user_id", Value::UInt(user)),
            ("video_id", Value::UInt(video)),
            ("video_time", Value::UInt(video_time)),
        ],
    )
}

/// A shipper running on its own thread; stopped and joined on drop.
struct Running {
    shutdown: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<shipper::Result<()>>>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    _rt: tokio::runtime::Runtime,
}

impl Running {
    fn start(config: ShipperConfig, guards: Guards) -> Self {
        Self::start_with(config, guards, dc_config::examples::declared().registry)
    }

    fn start_with(
        config: ShipperConfig,
        guards: Guards,
        event_registry: dc_config::registry::Registry,
    ) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Arc::new(Metrics::register(&mut registry));
        let health = Arc::new(Health::default());
        let shutdown = Arc::new(AtomicBool::new(false));
        let shipper = Arc::new(Shipper::new(
            config,
            event_registry,
            metrics.clone(),
            health.clone(),
            guards,
            shutdown.clone(),
        ));
        let handle = rt.handle().clone();
        let thread = std::thread::spawn(move || shipper.run(handle));
        Self {
            shutdown,
            thread: Some(thread),
            health,
            metrics,
            _rt: rt,
        }
    }

    /// Batches the ClickHouse pipeline has committed.
    fn clickhouse_batches(&self) -> u64 {
        self.metrics
            .batches
            .get_or_create(&shipper::metrics::label("sink", "clickhouse"))
            .get()
    }

    fn stop(mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap().unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn config(cluster: &LocalCluster, dc: &str) -> ShipperConfig {
    let t = cluster.topology();
    let mut c = ShipperConfig::for_dc(t, t.dc(dc).unwrap());
    c.limits.batch_rows_max = 500;
    c.limits.batch_age_ms = 100;
    c.limits.retry_max_ms = 500;
    c.limits.blocked_retry_ms = 500;
    c.limits.clickhouse_timeout_ms = 5_000;
    c.limits.redis_timeout_ms = 1_000;
    c
}

fn open_spool(c: &ShipperConfig) -> Spool {
    Spool::open(
        &c.spool_dir,
        Config {
            durability: Durability::Always,
            ..Config::default()
        },
    )
    .unwrap()
}

/// (rows, distinct spool positions) of `host` through the global table.
fn counts(cluster: &LocalCluster, host: &str) -> (u64, u64) {
    let r = cluster
        .clickhouse("dc2-s1-r1")
        .unwrap()
        .query(&format!(
            "SELECT count(), uniqExact(dc, host, spool_segment, spool_offset) FROM spoolhouse.events_all WHERE host = '{host}' FORMAT TSV"
        ))
        .unwrap();
    let mut it = r.trim().split('\t').map(|x| x.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

fn wait_for(what: &str, limit: Duration, ok: impl FnMut() -> bool) {
    if let Err(e) = launcher::wait::until(what, limit, ok) {
        panic!("timed out waiting for {what} ({e})");
    }
}

fn redis_state(cluster: &LocalCluster, user: u64, video: u64) -> Option<(u64, String)> {
    let addr = cluster.topology().dc("dc1").unwrap().redis.nodes[0];
    let key =
        dc_config::state_key::redis_key("watch_progress", &[user.to_string(), video.to_string()]);
    let r = launcher::probe::redis_command(addr, &["HMGET", &key, "t", "v"]).unwrap();
    // *2 $len t $len v, or *2 $-1 $-1
    let lines: Vec<&str> = r.split("\r\n").collect();
    if lines.get(1) == Some(&"$-1") {
        return None;
    }
    Some((lines[2].parse().unwrap(), lines[4].to_string()))
}

#[test]
fn ships_every_event_once_and_keeps_the_newest_state() {
    let cluster = launch();
    let cfg = config(&cluster, "dc1");
    let spool = open_spool(&cfg);
    let n = 3_000u64;
    for chunk in (0..n).collect::<Vec<_>>().chunks(250) {
        let frames: Vec<Vec<u8>> = chunk.iter().map(|&i| vote(i)).collect();
        spool.append(&frames).unwrap();
    }
    // Out of order: the newest event (video_time 300) arrives between two older ones.
    spool
        .append(&[
            progress(7, 42, T0 + 1_000, 100),
            progress(7, 42, T0 + 3_000, 300),
            progress(7, 42, T0 + 2_000, 200),
            progress(8, 42, T0 + 5_000, 50),
        ])
        .unwrap();
    let running = Running::start(cfg, Guards::default());
    wait_for("all rows", Duration::from_secs(60), || {
        counts(&cluster, "dc1-app1").0 >= n + 4
    });
    wait_for("redis state", Duration::from_secs(30), || {
        redis_state(&cluster, 8, 42).is_some()
    });
    assert_eq!(counts(&cluster, "dc1-app1"), (n + 4, n + 4));
    assert_eq!(
        redis_state(&cluster, 7, 42),
        Some((T0 + 3_000, "300".into()))
    );
    assert_eq!(
        redis_state(&cluster, 8, 42),
        Some((T0 + 5_000, "50".into()))
    );
    // Rows went to both of dc1's shards, and none to dc2's.
    for server in ["dc1-s1-r1", "dc1-s2-r1"] {
        let c = cluster
            .clickhouse(server)
            .unwrap()
            .query("SELECT count() FROM spoolhouse.events_local")
            .unwrap();
        assert!(c.trim().parse::<u64>().unwrap() > 0, "{server} got no rows");
    }
    let dc2 = cluster
        .clickhouse("dc2-s1-r1")
        .unwrap()
        .query("SELECT count() FROM spoolhouse.events_local")
        .unwrap();
    assert_eq!(dc2.trim(), "0");
    // The keyed-state table, what a Redis miss reads, has the newest state
    // of each key too (fed from what the shipper inserts). Its view runs
    // after the events table's within the same INSERT, so the events can be
    // visible a moment before it: waited for, with a bound.
    let key = dc_config::state_key::table_key(&["7", "42"]);
    let keyed = || {
        cluster
            .clickhouse("dc1-s1-r1")
            .unwrap()
            .query(&format!(
                "SELECT argMax(value, time_ms), max(time_ms) FROM spoolhouse.keyed_state_dc \
                 WHERE event = 'watch_progress' AND key = {} FORMAT TSV",
                dc_config::sql::quote_str(&key)
            ))
            .unwrap()
            .trim()
            .to_string()
    };
    let newest = format!("300\t{}", T0 + 3_000);
    wait_for(
        "the keyed state of (7, 42)",
        Duration::from_secs(30),
        || keyed() == newest,
    );
    assert_eq!(keyed(), newest);
    let health = running.health.to_json();
    assert_eq!(health["ok"], true, "{health}");
    assert_eq!(health["clickhouse"]["state"], "ok", "{health}");
    running.stop();
}

/// Ships everything, then makes the shipper believe its last batch was not
/// acknowledged (the checkpoint is gone, the intent is still there): the
/// state a crash between insert and commit leaves.
fn replay_once(cluster: &LocalCluster, host: &str, guards: Guards) -> (u64, u64) {
    let mut cfg = config(cluster, "dc1");
    cfg.host = host.to_string();
    cfg.spool_dir = cfg.spool_dir.with_file_name(format!("spool-{host}"));
    cfg.state_dir = cfg.state_dir.with_file_name(format!("shipper-{host}"));
    cfg.limits.batch_rows_max = 10_000;
    cfg.limits.batch_age_ms = 2_000;
    let spool = open_spool(&cfg);
    let frames: Vec<Vec<u8>> = (0..1_000u64).map(vote).collect();
    spool.append(&frames).unwrap();
    let running = Running::start(cfg.clone(), guards.clone());
    wait_for("first shipment", Duration::from_secs(30), || {
        counts(cluster, host).0 >= 1_000
    });
    running.stop();
    assert!(cfg.state_dir.join("clickhouse.intent").is_file());
    std::fs::remove_file(cfg.spool_dir.join("readers/clickhouse.ckpt")).unwrap();
    let running = Running::start(cfg, guards);
    wait_for("the replay", Duration::from_secs(30), || {
        running.clickhouse_batches() >= 1
    });
    let skipped = running.metrics.replay_rows_skipped.get();
    running.stop();
    let (rows, unique) = counts(cluster, host);
    assert_eq!(unique, 1_000);
    (rows, skipped)
}

#[test]
fn each_guard_alone_keeps_a_replayed_batch_single() {
    let cluster = launch();
    // Position check only: ClickHouse would take the block again.
    let (rows, skipped) = replay_once(
        &cluster,
        "h-verify",
        Guards {
            verify_positions: true,
            deduplicate: false,
        },
    );
    assert_eq!((rows, skipped), (1_000, 1_000));
    // Block deduplication only: the same block is dropped by ClickHouse.
    let (rows, skipped) = replay_once(
        &cluster,
        "h-dedup",
        Guards {
            verify_positions: false,
            deduplicate: true,
        },
    );
    assert_eq!((rows, skipped), (1_000, 0));
    // Neither: the replay doubles every row — the two guards are what prevents it.
    let (rows, _) = replay_once(
        &cluster,
        "h-none",
        Guards {
            verify_positions: false,
            deduplicate: false,
        },
    );
    assert_eq!(rows, 2_000);
}

#[test]
fn outages_of_clickhouse_redis_and_zookeeper_lose_and_double_nothing() {
    let mut cluster = launch();
    let cfg = config(&cluster, "dc1");
    let spool = open_spool(&cfg);
    let running = Running::start(cfg, Guards::default());
    let mut sent = 0u64;
    let mut send = |spool: &Spool, n: u64| {
        let frames: Vec<Vec<u8>> = (sent..sent + n).map(vote).collect();
        spool.append(&frames).unwrap();
        sent += n;
        sent
    };
    let total = send(&spool, 500);
    wait_for("first rows", Duration::from_secs(30), || {
        counts(&cluster, "dc1-app1").0 == total
    });

    // Both of dc1's ClickHouse servers down: events keep being spooled.
    cluster.kill("dc1-s1-r1").unwrap();
    cluster.kill("dc1-s2-r1").unwrap();
    let total = send(&spool, 700);
    wait_for("the shipper to notice", Duration::from_secs(30), || {
        matches!(
            *running.health.clickhouse.lock().unwrap(),
            shipper::metrics::SinkHealth::Retrying(_)
        )
    });
    cluster.restart("dc1-s1-r1").unwrap();
    cluster.restart("dc1-s2-r1").unwrap();
    wait_for("catch-up after ClickHouse", Duration::from_secs(60), || {
        counts(&cluster, "dc1-app1").0 >= total
    });

    // Redis down: ClickHouse shipping goes on; Redis catches up when back.
    cluster.kill("dc1-redis1").unwrap();
    let total = send(&spool, 300);
    spool.append(&[progress(1, 2, T0 + 10, 99)]).unwrap();
    let total = total + 1;
    wait_for(
        "ClickHouse while Redis is down",
        Duration::from_secs(30),
        || counts(&cluster, "dc1-app1").0 >= total,
    );
    cluster.restart("dc1-redis1").unwrap();
    wait_for("Redis catch-up", Duration::from_secs(30), || {
        redis_state(&cluster, 1, 2).is_some()
    });
    assert_eq!(redis_state(&cluster, 1, 2), Some((T0 + 10, "99".into())));

    // ZooKeeper down: replicated tables turn read-only, inserts fail and retry.
    cluster.kill("dc1-zk1").unwrap();
    let total = send(&spool, 400) + 1;
    std::thread::sleep(Duration::from_secs(2));
    cluster.restart("dc1-zk1").unwrap();
    wait_for("catch-up after ZooKeeper", Duration::from_secs(90), || {
        counts(&cluster, "dc1-app1").0 >= total
    });

    assert_eq!(counts(&cluster, "dc1-app1"), (total, total));
    assert!(
        running
            .metrics
            .errors
            .get_or_create(&shipper::metrics::label("kind", "network"))
            .get()
            > 0
    );
    running.stop();
}

#[test]
fn a_missing_table_blocks_the_batch_and_loses_nothing() {
    let cluster = launch();
    let cfg = config(&cluster, "dc1");
    let spool = open_spool(&cfg);
    for s in ["dc1-s1-r1", "dc1-s2-r1"] {
        cluster
            .clickhouse(s)
            .unwrap()
            .query("DROP TABLE spoolhouse.events_local")
            .unwrap();
    }
    let frames: Vec<Vec<u8>> = (0..200u64).map(vote).collect();
    spool.append(&frames).unwrap();
    let running = Running::start(cfg, Guards::default());
    wait_for("the batch to be blocked", Duration::from_secs(30), || {
        running.metrics.blocked.get() == 1
    });
    let health = running.health.to_json();
    assert_eq!(health["ok"], false, "{health}");
    assert_eq!(health["clickhouse"]["state"], "blocked", "{health}");
    let err = health["clickhouse"]["error"].as_str().unwrap().to_string();
    assert!(err.contains("Code: 60"), "{err}");
    assert!(
        !health["schema_problems"].as_array().unwrap().is_empty(),
        "{health}"
    );
    assert!(
        running
            .metrics
            .errors
            .get_or_create(&shipper::metrics::label("kind", "schema"))
            .get()
            > 0
    );
    // The operator restores the table: the same batch goes in, once.
    let dc = cluster.topology().dc("dc1").unwrap();
    for r in dc.replicas() {
        for stmt in
            dc_config::render::ddl::statements(cluster.topology(), dc, &cluster.declared().registry)
        {
            cluster.clickhouse(&r.name()).unwrap().query(&stmt).unwrap();
        }
    }
    wait_for("the unblocked batch", Duration::from_secs(30), || {
        counts(&cluster, "dc1-app1").0 >= 200
    });
    assert_eq!(counts(&cluster, "dc1-app1"), (200, 200));
    assert_eq!(running.metrics.blocked.get(), 0);
    // The schema is checked again: the problems leave `/healthz`.
    wait_for(
        "the schema problems cleared",
        Duration::from_secs(30),
        || {
            running.health.to_json()["schema_problems"]
                .as_array()
                .unwrap()
                .is_empty()
        },
    );
    assert!(running.health.ok(), "{}", running.health.to_json());
    running.stop();
}

#[test]
fn a_shipper_started_while_clickhouse_is_down_is_not_a_schema_problem() {
    let mut cluster = launch();
    let cfg = config(&cluster, "dc1");
    let spool = open_spool(&cfg);
    spool
        .append(&(0..100u64).map(vote).collect::<Vec<_>>())
        .unwrap();
    cluster.stop("dc1-s1-r1").unwrap();
    let running = Running::start(cfg, Guards::default());
    // The replica gives no answer: not a problem with its tables, and no
    // reason for `/healthz` to fail once it is back.
    std::thread::sleep(Duration::from_secs(2));
    let health = running.health.to_json();
    assert!(
        health["schema_problems"].as_array().unwrap().is_empty(),
        "{health}"
    );
    cluster.restart("dc1-s1-r1").unwrap();
    wait_for("every event shipped", Duration::from_secs(60), || {
        counts(&cluster, "dc1-app1").0 >= 100
    });
    assert_eq!(counts(&cluster, "dc1-app1"), (100, 100));
    assert!(running.health.ok(), "{}", running.health.to_json());
    running.stop();
}

#[test]
fn minutes_are_aggregated_once_closed_and_again_after_a_late_event() {
    let cluster = launch();
    let mut cfg = config(&cluster, "dc1");
    cfg.limits.aggregation_grace_ms = 1_000;
    let spool = open_spool(&cfg);
    let frames: Vec<Vec<u8>> = (0..600u64).map(vote).collect(); // T0 + 0..600 ms: one minute
    spool.append(&frames).unwrap();
    // 50 countries, 12 votes each: ten kept (a tie: the smallest as
    // text, "0", "1", "10" … "17"), forty folded into `other`.
    let mut events = dc_config::examples::declared().registry;
    events.event["vote"].fields["country_id"].max_values_per_minute = Some(10);
    let running = Running::start_with(cfg, Guards::default(), events);
    let ch = cluster.clickhouse("dc1-s1-r1").unwrap();
    let state_count = |metric: &str| -> String {
        ch.query(&format!(
            "SELECT countMerge(count_state) FROM spoolhouse.metric_states_all FINAL WHERE metric = '{metric}' AND minute = toDateTime({})",
            T0 / 1000
        ))
        .unwrap()
        .trim()
        .to_string()
    };
    wait_for("the minute's states", Duration::from_secs(60), || {
        running.metrics.aggregation_rounds.get() >= 1 && state_count("vote.count()") == "600"
    });
    let yes = (0..600u64).filter(|i| !i.is_multiple_of(3)).count();
    assert_eq!(state_count("vote.count(){vote=yes}"), yes.to_string());
    assert!(running.metrics.series_points.get() > 0);
    assert_eq!(state_count("vote.count(){country_id=other}"), "480");
    assert_eq!(state_count("vote.count(){country_id=17}"), "12");
    let folded = |m: &Metrics| {
        m.dimension_values_folded
            .get_or_create(&vec![
                ("event".into(), "vote".into()),
                ("dimension".into(), "country_id".into()),
            ])
            .get()
    };
    assert_eq!(folded(&running.metrics), 40);
    // A late event for the same minute: the minute is aggregated again and
    // replaced, not added to.
    spool.append(&[vote(30_000)]).unwrap();
    wait_for("the re-aggregated minute", Duration::from_secs(60), || {
        state_count("vote.count()") == "601"
    });
    // The series view writes after the states table: a moment later.
    let series = || {
        ch.query(&format!(
            "SELECT sum(value) FROM spoolhouse.series_all FINAL WHERE metric_hash = cityHash64('vote.count()') AND time = toDateTime({})",
            T0 / 1000
        ))
        .unwrap()
        .trim()
        .to_string()
    };
    wait_for(
        "the re-aggregated series point",
        Duration::from_secs(30),
        || series() == "601",
    );
    let health = running.health.to_json();
    assert_eq!(health["aggregation"]["state"], "ok", "{health}");
    running.stop();
}

/// Regression: the reader had moved on to the next, empty segment after the
/// last frames of a sealed one, the checkpoint stayed at the end of those
/// frames, and the watermark waited for a commit that only new events
/// would bring: the last minute before a quiet spell was never aggregated.
#[test]
fn a_minute_is_aggregated_when_the_spool_rolled_on_to_an_empty_segment() {
    let cluster = launch();
    let mut cfg = config(&cluster, "dc1");
    cfg.limits.aggregation_grace_ms = 0;
    let spool = open_spool(&cfg);
    spool
        .append(&(0..100u64).map(vote).collect::<Vec<_>>())
        .unwrap();
    spool.rotate().unwrap();
    let running = Running::start(cfg, Guards::default());
    wait_for("the minute aggregated", Duration::from_secs(60), || {
        running.metrics.aggregation_rounds.get() >= 1
    });
    assert_eq!(counts(&cluster, "dc1-app1"), (100, 100));
    running.stop();
}

#[test]
fn an_operator_can_reaggregate_a_range() {
    let cluster = launch();
    let cfg = config(&cluster, "dc1");
    let spool = open_spool(&cfg);
    let frames: Vec<Vec<u8>> = (0..100u64).map(vote).collect();
    spool.append(&frames).unwrap();
    let running = Running::start(cfg.clone(), Guards::default());
    wait_for("the first round", Duration::from_secs(60), || {
        running.metrics.aggregation_rounds.get() >= 1
    });
    running.stop();
    // The states of the minute are lost (say, a metric was added later).
    let ch = cluster.clickhouse("dc1-s1-r1").unwrap();
    for s in ["dc1-s1-r1", "dc1-s2-r1"] {
        cluster
            .clickhouse(s)
            .unwrap()
            .query("TRUNCATE TABLE spoolhouse.metric_states_local")
            .unwrap();
    }
    let count = || {
        ch.query("SELECT countMerge(count_state) FROM spoolhouse.metric_states_all FINAL WHERE metric = 'vote.count()'").unwrap().trim().to_string()
    };
    assert_eq!(count(), "0");
    let dummy = Arc::new(AtomicBool::new(false));
    let mut prom = prometheus_client::registry::Registry::default();
    let marker = Shipper::new(
        cfg.clone(),
        dc_config::examples::declared().registry,
        Arc::new(Metrics::register(&mut prom)),
        Arc::new(Health::default()),
        Guards::default(),
        dummy,
    );
    let from = (T0 / 1000) as u32;
    assert_eq!(marker.reaggregate(from, from + 120).unwrap(), 2);
    assert!(marker.reaggregate(from + 10, from).is_err());
    let running = Running::start(cfg, Guards::default());
    wait_for("the re-aggregated range", Duration::from_secs(60), || {
        count() == "100"
    });
    running.stop();
}

#[test]
fn a_shipper_started_before_the_spool_exists_waits_for_it() {
    let cluster = launch();
    let cfg = config(&cluster, "dc1");
    assert!(!cfg.spool_dir.exists());
    let running = Running::start(cfg.clone(), Guards::default());
    std::thread::sleep(Duration::from_millis(500));
    let spool = open_spool(&cfg);
    let frames: Vec<Vec<u8>> = (0..50u64).map(vote).collect();
    spool.append(&frames).unwrap();
    wait_for("rows from the late spool", Duration::from_secs(30), || {
        counts(&cluster, "dc1-app1").0 == 50
    });
    running.stop();
}

#[test]
fn state_goes_to_a_redis_cluster_split_by_slot() {
    let cluster = LocalCluster::start(
        &dc_config::examples::one_dc_clustered(),
        LaunchOptions::default(),
    )
    .unwrap();
    let mut cfg = config(&cluster, "solo");
    cfg.limits.redis_batch_max = 1_000;
    let spool = open_spool(&cfg);
    // Many keys: they spread over the three masters' slots.
    let mut frames = Vec::new();
    for user in 0..200u64 {
        frames.push(progress(user, 1, T0 + 2, 20));
        frames.push(progress(user, 1, T0 + 1, 10));
    }
    spool.append(&frames).unwrap();
    let running = Running::start(cfg, Guards::default());
    let outcome = |name: &str| {
        // One statement per lookup: a Family's read guard must be gone
        // before the next get_or_create may need its write lock.
        let n = running
            .metrics
            .redis_states
            .get_or_create(&shipper::metrics::label("outcome", name))
            .get();
        n
    };
    let written = || outcome("written") + outcome("kept");
    wait_for("every state write", Duration::from_secs(30), || {
        written() >= 400
    });
    assert_eq!(outcome("written"), 200);
    // Read back through a cluster client: the newest value everywhere.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut store = dc_config::state_store::StateStore::connect(
            &cluster.topology().datacenter[0].redis,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        for user in [0u64, 77, 199] {
            let key = dc_config::state_key::redis_key(
                "watch_progress",
                &[user.to_string(), "1".to_string()],
            );
            assert_eq!(
                store.get(&key).await.unwrap(),
                Some((T0 + 2, "20".to_string())),
                "user {user}"
            );
        }
    });
    running.stop();
}

/// The writer's password of `cfg`, as the shipper reads it.
fn writer_password(cfg: &ShipperConfig) -> String {
    dc_config::credentials::read_password(&cfg.clickhouse_password_file).unwrap()
}

/// Server `url` asked as the writer of `cfg`.
fn writer(cfg: &ShipperConfig, url: &str) -> launcher::probe::ClickHouseHttp {
    launcher::probe::ClickHouseHttp::new(url, Duration::from_secs(10))
        .with_login(WRITER_USER, &writer_password(cfg))
}

/// An insert a killed shipper left behind, played by the test over raw
/// HTTP: the request as the shipper sends it (`events_ingest`, chunked
/// RowBinary, an older epoch), held at a chosen point.
struct Orphan {
    stream: std::net::TcpStream,
    body: Vec<u8>,
}

impl Orphan {
    /// Sends the request head; with `with_body`, also the whole body except
    /// the chunked encoding's last chunk, so the server runs the insert and
    /// waits for the rest. (ClickHouse 18.16 starts an insert once it has
    /// read 1 MiB of the body, or all of it: a smaller body of a killed
    /// shipper starts only when the connection closes.)
    fn start(
        replica_url: &str,
        password: &str,
        rows: &[u8],
        query_id: &str,
        with_body: bool,
    ) -> Self {
        use std::io::Write;
        let addr = replica_url
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        let query = format!(
            "INSERT INTO spoolhouse.events_ingest ({}) FORMAT RowBinary",
            dc_config::schema::column::INGEST_COLUMNS
        );
        let enc: String = query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        write!(
            stream,
            "POST /?query={enc}&insert_deduplicate=0&query_id={query_id} HTTP/1.1\r\nHost: {addr}\r\nX-ClickHouse-User: {WRITER_USER}\r\nX-ClickHouse-Key: {password}\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .unwrap();
        let body = format!("{:x}\r\n", rows.len()).into_bytes();
        let mut o = Self {
            stream,
            body: [body, rows.to_vec(), b"\r\n".to_vec()].concat(),
        };
        if with_body {
            o.stream.write_all(&o.body).unwrap();
            o.body.clear();
        }
        o
    }

    /// Sends the rest and the end of the body; returns the status line.
    fn finish(mut self) -> String {
        use std::io::{Read, Write};
        self.stream.write_all(&self.body).unwrap();
        self.stream.write_all(b"0\r\n\r\n").unwrap();
        let mut buf = [0u8; 4096];
        let n = self.stream.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    }
}

/// `records` as a shipper of `cfg` with `epoch` sends them to
/// `events_ingest` (RowBinary, the epoch after each row).
fn ingest_rows(cfg: &ShipperConfig, records: &[spooler::Frame], epoch: u64) -> Vec<u8> {
    let mut rows = Vec::new();
    for r in records {
        let ev = Record::decode(&r.payload).unwrap().event;
        let pos = dc_config::row::SpoolPosition {
            segment: r.position.segment,
            offset: r.position.offset,
        };
        dc_config::row::EventRow::new(&ev, &cfg.dc, &cfg.host, pos).write_row_binary(&mut rows);
        rows.extend_from_slice(&epoch.to_le_bytes());
    }
    rows
}

/// The spool of `cfg` with `n` votes, and the state a shipper killed
/// while inserting all of them as one batch leaves: its intent (replica 1 of
/// the batch's shard), no checkpoint. Returns the replica's URL and the
/// batch's rows with `epoch` after each, as that shipper sent them.
fn killed_mid_insert(cfg: &ShipperConfig, epoch: u64, n: u64) -> (String, Vec<u8>) {
    let spool = open_spool(cfg);
    let frames: Vec<Vec<u8>> = (0..n).map(vote).collect();
    spool.append(&frames).unwrap();
    let mut reader = spooler::Reader::open(&cfg.spool_dir, "test-probe").unwrap();
    let mut records = Vec::new();
    while (records.len() as u64) < n {
        records.extend(reader.next(n as usize, usize::MAX).unwrap());
    }
    let intent = shipper::intent::Intent {
        start: records[0].position,
        end: records.last().unwrap().next,
        frames: n as u32,
        replicas: 1,
    };
    std::fs::create_dir_all(&cfg.state_dir).unwrap();
    intent
        .save(&cfg.state_dir, shipper::ship::CLICKHOUSE_READER)
        .unwrap();
    let rows = ingest_rows(cfg, &records, epoch);
    let sink = shipper::sink::Sink::new(cfg).unwrap();
    let shard = sink.shard_for(intent.start);
    (sink.url(shard, 0).to_string(), rows)
}

/// The control of the late-orphan cases: `n` rows of `cfg`'s host sent
/// late with the epoch its shipper holds now are stored, doubling the `n`
/// it has: it is the fence that drops an older epoch's.
fn late_insert_with_the_current_epoch_doubles(
    cluster: &LocalCluster,
    cfg: &ShipperConfig,
    url: &str,
    n: u64,
) {
    let epoch: u64 = std::fs::read_to_string(cfg.state_dir.join("clickhouse.epoch"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (_, current) = {
        let mut c = cfg.clone();
        c.spool_dir = c
            .spool_dir
            .with_file_name(format!("spool-{}-control", c.host));
        c.state_dir = c
            .state_dir
            .with_file_name(format!("state-{}-control", c.host));
        killed_mid_insert(&c, epoch, n)
    };
    let control = Orphan::start(url, &writer_password(cfg), &current, "control", true).finish();
    assert!(control.contains("200"), "{control}");
    assert_eq!(counts(cluster, &cfg.host).0, 2 * n);
}

/// When a killed writer's insert of `cfg`'s host reaches ClickHouse.
#[derive(Clone, Copy, PartialEq)]
enum OrphanTiming {
    /// Only the request head is on the server while the restarted shipper
    /// checks; the body comes after (the fence drops it).
    Late,
    /// The insert runs on the server, waiting for the rest of its body
    /// (over 1 MiB), while the shipper starts: the check waits for it to
    /// end, then finds its rows held.
    Running,
}

/// One orphan case, direct or relay mode as `cfg` says: a killed writer's
/// insert of the rows the spool holds (1 000 late, 15 000 running) with an
/// old epoch, under `query_id`, against `cfg`'s shipper started with
/// `guards`. Every row ends up in ClickHouse once; the late case's
/// control shows it is the fence that dropped the orphan. `hold`: how long
/// the running case checks that nothing was shipped meanwhile. Returns the
/// shipper, still running.
fn orphan_case(
    cluster: &LocalCluster,
    cfg: &ShipperConfig,
    guards: Guards,
    timing: OrphanTiming,
    query_id: &str,
    hold: Duration,
) -> Running {
    let n = match timing {
        OrphanTiming::Late => 1_000,
        OrphanTiming::Running => 15_000,
    };
    let (url, rows) = killed_mid_insert(cfg, 1, n);
    let orphan = Orphan::start(
        &url,
        &writer_password(cfg),
        &rows,
        query_id,
        timing == OrphanTiming::Running,
    );
    let mut orphan = Some(orphan);
    let running = if timing == OrphanTiming::Running {
        assert!(rows.len() > 1 << 20);
        let server = writer(cfg, &url);
        wait_for("the insert to run", Duration::from_secs(10), || {
            server
                .query(&format!(
                    "SELECT count() FROM system.processes WHERE query_id = '{query_id}' FORMAT TSV"
                ))
                .unwrap()
                .trim()
                == "1"
        });
        let running = Running::start(cfg.clone(), guards);
        std::thread::sleep(hold);
        assert_eq!(
            counts(cluster, &cfg.host),
            (0, 0),
            "the check waits while the earlier insert runs"
        );
        let status = orphan.take().expect("not finished").finish();
        assert!(status.contains("200"), "{status}");
        running
    } else {
        Running::start(cfg.clone(), guards)
    };
    wait_for("every row", Duration::from_secs(120), || {
        counts(cluster, &cfg.host).0 >= n
    });
    if let Some(orphan) = orphan {
        let status = orphan.finish();
        assert!(
            status.contains("200"),
            "the late insert was taken: {status}"
        );
        assert_eq!(counts(cluster, &cfg.host), (n, n));
        late_insert_with_the_current_epoch_doubles(cluster, cfg, &url, n);
    } else {
        assert_eq!(counts(cluster, &cfg.host), (n, n));
    }
    running
}

/// The root of the duplicates the crash campaign found with the position
/// check alone: a killed shipper's insert that ClickHouse runs after the
/// restarted shipper asked which positions it holds. Both timings: the
/// insert reaches the server only after the replay (a request still in
/// flight), and the insert is running on the server while the replay starts.
#[test]
fn an_insert_of_a_killed_shipper_never_lands_beside_its_replay() {
    let cluster = launch();
    let only_positions = Guards {
        verify_positions: true,
        deduplicate: false,
    };
    let host_config = |host: &str| {
        let mut cfg = config(&cluster, "dc1");
        cfg.host = host.to_string();
        cfg.spool_dir = cfg.spool_dir.with_file_name(format!("spool-{host}"));
        cfg.state_dir = cfg.state_dir.with_file_name(format!("shipper-{host}"));
        cfg.limits.clickhouse_timeout_ms = 3_000;
        cfg
    };
    orphan_case(
        &cluster,
        &host_config("h-orphan-late"),
        only_positions.clone(),
        OrphanTiming::Late,
        "spoolhouse/insert/dc1/h-orphan-late/1/x",
        Duration::ZERO,
    )
    .stop();
    let running = orphan_case(
        &cluster,
        &host_config("h-orphan-running"),
        only_positions,
        OrphanTiming::Running,
        "spoolhouse/insert/dc1/h-orphan-running/1/x",
        Duration::from_secs(1),
    );
    assert!(running.metrics.fences.get() >= 1);
    running.stop();
}

/// Fills the file system of `dir` with `dir/filler` until it is full.
fn fill(dir: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let block = vec![0u8; 4096];
    loop {
        match f.write_all(&block).and_then(|_| f.sync_all()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => return,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
}

/// A full disk under the shipper's state and checkpoints is weather: the
/// shipper waits (log, metric, `/healthz`), never exits, and ships
/// everything exactly once when space returns.
#[test]
fn a_full_state_disk_makes_the_shipper_wait_not_exit() {
    let cluster = launch();
    let host = "h-full-disk";
    let root = tempfile::tempdir().unwrap();
    let disk = root.path().join("disk");
    let _tmpfs = launcher::tmpfs::Tmpfs::mount(&disk, 512 << 10).unwrap();
    let mut cfg = config(&cluster, "dc1");
    cfg.host = host.into();
    cfg.spool_dir = disk.join("spool");
    cfg.state_dir = disk.join("shipper");
    let spool = Spool::open(
        &cfg.spool_dir,
        Config {
            durability: Durability::Always,
            segment_bytes: 128 << 10,
            ..Config::default()
        },
    )
    .unwrap();
    let frames: Vec<Vec<u8>> = (0..500u64).map(vote).collect();
    spool.append(&frames).unwrap();
    fill(&disk);
    let running = Running::start(cfg.clone(), Guards::default());
    wait_for(
        "the shipper to report the full disk",
        Duration::from_secs(30),
        || running.health.state_disk.lock().unwrap().is_some(),
    );
    assert_eq!(running.metrics.state_disk_full.get(), 1);
    let health = running.health.to_json();
    assert_eq!(health["state_disk"]["state"], "full", "{health}");
    assert_eq!(health["ok"], false, "{health}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !running.thread.as_ref().unwrap().is_finished(),
        "the shipper must not exit on a full disk"
    );
    assert_eq!(counts(&cluster, host).0, 0);
    std::fs::remove_file(disk.join("filler")).unwrap();
    wait_for(
        "everything shipped once space returned",
        Duration::from_secs(60),
        || counts(&cluster, host).0 >= 500,
    );
    wait_for("the shipper healthy again", Duration::from_secs(30), || {
        running.health.state_disk.lock().unwrap().is_none()
    });
    assert_eq!(running.metrics.state_disk_full.get(), 0);
    assert!(running.metrics.state_disk_full_waits.get() >= 1);
    running.stop();
    assert_eq!(counts(&cluster, host), (500, 500));
}

/// Regression (1 000 rounds of the crash campaign, position check alone:
/// 1 200 rows twice): when the checkpoint is the end of a sealed segment,
/// the batch in flight starts at the first frame of the next segment, not
/// at the checkpoint; the replay looked for a recorded batch starting at the
/// checkpoint, found none, and sent that range again unchecked.
#[test]
fn a_batch_in_flight_across_a_segment_boundary_is_checked_before_it_is_sent_again() {
    let cluster = launch();
    let host = "h-boundary";
    let mut cfg = config(&cluster, "dc1");
    cfg.host = host.into();
    cfg.spool_dir = cfg.spool_dir.with_file_name(format!("spool-{host}"));
    cfg.state_dir = cfg.state_dir.with_file_name(format!("shipper-{host}"));
    let spool = Spool::open(
        &cfg.spool_dir,
        Config {
            durability: Durability::Always,
            segment_bytes: 4096,
            ..Config::default()
        },
    )
    .unwrap();
    for i in 0..100u64 {
        spool.append(&[vote(i)]).unwrap();
    }
    // Everything of the first segment is shipped and committed.
    let mut reader =
        spooler::Reader::open(&cfg.spool_dir, shipper::ship::CLICKHOUSE_READER).unwrap();
    let mut records = Vec::new();
    while records.len() < 100 {
        records.extend(reader.next(100, usize::MAX).unwrap());
    }
    let first_segment = records[0].position.segment;
    let split = records
        .iter()
        .position(|r| r.position.segment != first_segment)
        .expect("more than one segment");
    let sink = shipper::sink::Sink::new(&cfg).unwrap();
    // Rows as a shipper of an earlier epoch inserted them.
    let insert = |recs: &[spooler::Frame]| {
        let shard = sink.shard_for(recs[0].position);
        let rows = ingest_rows(&cfg, recs, 1);
        writer(&cfg, sink.url(shard, 0))
            .insert(
                &format!(
                    "INSERT INTO spoolhouse.events_ingest ({}) FORMAT RowBinary",
                    dc_config::schema::column::INGEST_COLUMNS
                ),
                &rows,
            )
            .unwrap();
    };
    insert(&records[..split]);
    reader.commit(records[split - 1].next).unwrap();
    drop(reader);
    // The next batch, the first 20 frames of the next segment, was sent by
    // a shipper killed before it committed: its rows landed.
    let batch = &records[split..split + 20];
    assert_ne!(batch[0].position, records[split - 1].next);
    insert(batch);
    std::fs::create_dir_all(&cfg.state_dir).unwrap();
    shipper::intent::Intent {
        start: batch[0].position,
        end: batch[19].next,
        frames: 20,
        replicas: 1,
    }
    .save(&cfg.state_dir, shipper::ship::CLICKHOUSE_READER)
    .unwrap();
    let running = Running::start(
        cfg.clone(),
        Guards {
            verify_positions: true,
            deduplicate: false,
        },
    );
    wait_for("the rest shipped", Duration::from_secs(30), || {
        counts(&cluster, host).1 >= 100
    });
    running.stop();
    assert_eq!(counts(&cluster, host), (100, 100));
}

/// A dc1 shipper's config with `minutes` of vote history from T0 (20 votes
/// a minute) already in its spool. The history is over a year old: the
/// backfill bound reaches back to it.
fn history_config(cluster: &LocalCluster, minutes: u64) -> ShipperConfig {
    let mut cfg = config(cluster, "dc1");
    cfg.limits.aggregation_grace_ms = 1_000;
    cfg.limits.rollup_backfill_days = 800;
    let frames: Vec<Vec<u8>> = (0..minutes * 20)
        .map(|i| vote_at(i, T0 + (i / 20) * 60_000 + (i % 20) * 1_000))
        .collect();
    open_spool(&cfg).append(&frames).unwrap();
    cfg
}

#[test]
fn a_backlog_of_minutes_is_caught_up_many_minutes_per_statement() {
    let cluster = launch();
    // An hour of history, spooled before the shipper starts (as after an
    // outage): 60 minutes to aggregate at once.
    const MINUTES: u64 = 60;
    let cfg = history_config(&cluster, MINUTES);
    let running = Running::start(cfg, Guards::default());
    let ch = cluster.clickhouse("dc2-s1-r1").unwrap();
    let per_minute = || {
        ch.query("SELECT n, count() FROM (SELECT minute, countMerge(count_state) AS n FROM spoolhouse.metric_states_all FINAL WHERE metric = 'vote.count()' GROUP BY minute) GROUP BY n FORMAT TSV")
            .unwrap()
    };
    wait_for("every minute aggregated", Duration::from_secs(120), || {
        per_minute().trim() == format!("20\t{MINUTES}")
    });
    // Each statement has its own version: far fewer than one per minute
    // (a round's minutes go per shard, a round per batch at most here).
    let versions: u64 = ch
        .query("SELECT uniqExact(version) FROM spoolhouse.metric_states_all WHERE metric = 'vote.count()'")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        versions < MINUTES / 3,
        "{versions} aggregation statements for {MINUTES} minutes"
    );
    // Counted as aggregated once a round's statements all returned.
    wait_for("every minute counted", Duration::from_secs(30), || {
        running.metrics.aggregation_rounds.get() >= MINUTES
    });
    // Its hour and its day built from the minutes (ADR 0016), and marked.
    let t0_s = T0 / 1000;
    for table in ["metric_states_hour_all", "metric_states_day_all"] {
        wait_for(table, Duration::from_secs(60), || {
            ch.query(&format!("SELECT countMerge(count_state) FROM spoolhouse.{table} FINAL WHERE metric = 'vote.count()' AND minute = toDateTime({t0_s}) FORMAT TSV"))
                .unwrap()
                .trim()
                == (MINUTES * 20).to_string()
        });
    }
    // Marked after they are built, both in one insert.
    wait_for("hours and days marked", Duration::from_secs(30), || {
        ch.query("SELECT step, from_s <= 1764028800, through_s > 1764028800 + 86400 FROM spoolhouse.rollup_marks_all FINAL WHERE dc = 'dc1' ORDER BY step FORMAT TSV")
            .unwrap()
            == "3600\t1\t1\n86400\t1\t1\n"
    });
    running.stop();
}

#[test]
fn a_new_metric_backfills_its_history_and_touches_no_other_series() {
    let cluster = launch();
    const MINUTES: u64 = 30;
    let cfg = history_config(&cluster, MINUTES);
    // First without `vote.uniq(user_id)`: everything else aggregated,
    // hours and days built.
    let full = dc_config::examples::declared().registry;
    let mut before = full.clone();
    before
        .event
        .get_mut("vote")
        .unwrap()
        .metric
        .retain(|m| m.field.is_none());
    let ch = cluster.clickhouse("dc1-s1-r1").unwrap();
    let t0_s = T0 / 1000;
    let hour_count = |metric: &str, merge: &str| -> String {
        ch.query(&format!(
            "SELECT {merge} FROM spoolhouse.metric_states_hour_dc FINAL WHERE metric = '{metric}' AND minute = toDateTime({t0_s}) FORMAT TSV"
        ))
        .unwrap()
        .trim()
        .to_string()
    };
    let running = Running::start_with(cfg.clone(), Guards::default(), before);
    wait_for(
        "the hour built without the new metric",
        Duration::from_secs(120),
        || hour_count("vote.count()", "countMerge(count_state)") == (MINUTES * 20).to_string(),
    );
    // Every minute dropped from the host's pending set, the day built.
    wait_for("the first run settled", Duration::from_secs(60), || {
        running.metrics.aggregations_pending.get() == 0
            && ch
                .query(&format!("SELECT count() FROM spoolhouse.metric_states_day_dc WHERE minute = toDateTime({t0_s}) FORMAT TSV"))
                .unwrap()
                .trim()
                != "0"
    });
    // The versions every other series holds, minute, hour and day.
    let versions = || {
        ch.query(
            "SELECT (SELECT max(version) FROM spoolhouse.metric_states_dc WHERE event = 'vote'), \
             (SELECT max(version) FROM spoolhouse.metric_states_hour_dc WHERE event = 'vote'), \
             (SELECT max(version) FROM spoolhouse.metric_states_day_dc WHERE event = 'vote') FORMAT TSV",
        )
        .unwrap()
    };
    let untouched = versions();
    running.stop();
    assert_eq!(hour_count("vote.uniq(user_id)", "count()"), "0");

    // Then with it: its history is backfilled, minutes and hour, and no
    // other series gets a new version.
    let running = Running::start_with(cfg, Guards::default(), full);
    let users: std::collections::HashSet<u64> = (0..MINUTES * 20).map(|i| i % 977).collect();
    wait_for(
        "the new metric's hour backfilled",
        Duration::from_secs(120),
        || hour_count("vote.uniq(user_id)", "uniqMerge(uniq_state)") == users.len().to_string(),
    );
    let minutes: u64 = ch
        .query("SELECT uniqExact(minute) FROM spoolhouse.metric_states_dc WHERE metric = 'vote.uniq(user_id)'")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(minutes, MINUTES);
    let other = ch
        .query(
            "SELECT (SELECT max(version) FROM spoolhouse.metric_states_dc WHERE event = 'vote' AND metric NOT LIKE 'vote.uniq(%'), \
             (SELECT max(version) FROM spoolhouse.metric_states_hour_dc WHERE event = 'vote' AND metric NOT LIKE 'vote.uniq(%'), \
             (SELECT max(version) FROM spoolhouse.metric_states_day_dc WHERE event = 'vote' AND metric NOT LIKE 'vote.uniq(%') FORMAT TSV",
        )
        .unwrap();
    assert_eq!(other, untouched);
    wait_for("the backfill counted", Duration::from_secs(30), || {
        running.metrics.backfill_aggregations.get() > 0
    });
    running.stop();
}

// ---- Relay mode (docs/adr/0017-relay-tier.md) --------------------------------

/// A relay on its own runtime and thread; `kill` drops it abruptly (its
/// connections and any insert in flight cut mid-way, nothing flushed).
struct RunningRelay {
    rt: Option<tokio::runtime::Runtime>,
    shutdown: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    metrics: Arc<shipper::relay::RelayMetrics>,
}

impl RunningRelay {
    fn start(config: dc_config::services::RelayConfig) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Arc::new(shipper::relay::RelayMetrics::register(&mut registry));
        let shutdown = Arc::new(AtomicBool::new(false));
        let relay = Arc::new(
            shipper::relay::Relay::open(config.clone(), metrics.clone(), shutdown.clone()).unwrap(),
        );
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(config.listen))
            .unwrap();
        let handle = rt.handle().clone();
        let thread = std::thread::spawn(move || {
            // A killed relay's loop may find its runtime gone mid-insert.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _ = relay.run_on(listener, handle);
            }));
        });
        Self {
            rt: Some(rt),
            shutdown,
            thread: Some(thread),
            metrics,
        }
    }

    fn kill(mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        self.rt.take().unwrap().shutdown_background();
        let _ = self.thread.take().unwrap().join();
    }
}

impl Drop for RunningRelay {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn secret_file(dir: &std::path::Path, name: &str, secret: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, secret).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn relay_config(
    cluster: &LocalCluster,
    name: &str,
    port: u16,
    dir: &std::path::Path,
    secret: &std::path::Path,
) -> dc_config::services::RelayConfig {
    let base = config(cluster, "dc1");
    let mut limits = base.limits.clone();
    limits.batch_rows_max = 20_000;
    limits.batch_age_ms = 200;
    dc_config::services::RelayConfig {
        dc: "dc1".into(),
        name: name.into(),
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        spool_dir: dir.join(name),
        spool_quota_bytes: 1 << 30,
        database: base.database.clone(),
        shards: base.shards.clone(),
        clickhouse_password_file: base.clickhouse_password_file.clone(),
        secret_file: secret.to_path_buf(),
        compression: base.compression,
        limits,
    }
}

fn forwarder_config(
    cluster: &LocalCluster,
    host: &str,
    dir: &std::path::Path,
    relays: &[u16],
    secret: &std::path::Path,
) -> ShipperConfig {
    let mut c = config(cluster, "dc1");
    c.host = host.into();
    c.spool_dir = dir.join(host).join("spool");
    c.state_dir = dir.join(host).join("state");
    c.aggregator = false;
    c.relay = Some(dc_config::services::RelayUse {
        relays: relays
            .iter()
            .map(|p| dc_config::services::RelayTarget {
                addr: format!("127.0.0.1:{p}"),
                weight: 1,
            })
            .collect(),
        secret_file: secret.to_path_buf(),
        timeout_ms: 1_000,
        visible_timeout_ms: 30_000,
        home_check_ms: 2_000,
    });
    c
}

/// Two relays of dc1 in `dir` on free ports with one secret: the secret's
/// file, the ports, and relay `i`'s config (`relay1`, `relay2`).
fn two_relays<'a>(
    cluster: &'a LocalCluster,
    dir: &'a std::path::Path,
) -> (
    std::path::PathBuf,
    [u16; 2],
    impl Fn(usize) -> dc_config::services::RelayConfig + 'a,
) {
    let secret = secret_file(dir, "relay.secret", "dc1-relay-secret");
    let ports = [free_port(), free_port()];
    let s = secret.clone();
    let config =
        move |i: usize| relay_config(cluster, &format!("relay{}", i + 1), ports[i], dir, &s);
    (secret, ports, config)
}

#[test]
fn relay_mode_ships_every_host_once_across_relay_kills_and_failover() {
    let cluster = launch();
    let dir = tempfile::tempdir().unwrap();
    let (secret, ports, relay_cfg) = two_relays(&cluster, dir.path());
    let mut relays: Vec<Option<RunningRelay>> = (0..2)
        .map(|i| Some(RunningRelay::start(relay_cfg(i))))
        .collect();
    let hosts: Vec<String> = (1..=4).map(|i| format!("dc1-fwd{i}")).collect();
    let configs: Vec<ShipperConfig> = hosts
        .iter()
        .map(|h| forwarder_config(&cluster, h, dir.path(), &ports, &secret))
        .collect();
    let spools: Vec<Spool> = configs.iter().map(open_spool).collect();
    let running: Vec<Running> = configs
        .iter()
        .map(|c| Running::start(c.clone(), Guards::default()))
        .collect();
    // Live traffic (bounded: 60 chunks of 100 votes per host, a chunk every
    // 50 ms) while the relays are killed in turn and restarted on the same
    // spool and port: kills land mid-batch and mid-insert.
    let (chunks, chunk) = (60u64, 100u64);
    let traffic = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            for c in 0..chunks {
                for (h, spool) in spools.iter().enumerate() {
                    let votes: Vec<Vec<u8>> = (0..chunk)
                        .map(|i| vote(1_000_000 * h as u64 + c * chunk + i))
                        .collect();
                    spool.append(&votes).unwrap();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let (mut kills, mut skipped, mut takeovers) = (0u64, 0u64, 0u64);
        while !writer.is_finished() || kills < 4 {
            std::thread::sleep(Duration::from_millis(700));
            let victim = (kills % 2) as usize;
            let r = relays[victim].take().unwrap();
            skipped += r.metrics.skipped_rows.get();
            takeovers += r.metrics.takeovers.get();
            r.kill();
            kills += 1;
            relays[victim] = Some(RunningRelay::start(relay_cfg(victim)));
        }
        (kills, skipped, takeovers)
    });
    let want = chunks * chunk;
    for h in &hosts {
        wait_for(
            &format!("{h}'s rows through the relays"),
            Duration::from_secs(90),
            || counts(&cluster, h).0 >= want,
        );
    }
    // Settled: nothing more lands late.
    std::thread::sleep(Duration::from_secs(2));
    for (i, h) in hosts.iter().enumerate() {
        assert_eq!(
            counts(&cluster, h),
            (want, want),
            "{h}: rows, distinct positions"
        );
        // And the rows are the events: each vote's own four attributes.
        let got = cluster
            .clickhouse("dc1-s1-r1")
            .unwrap()
            .query(&format!(
                "SELECT countIf(length(attr_names) != 4), \
                 sum(toUInt64(attr_values[indexOf(attr_names, 'target_user_id')])) \
                 FROM spoolhouse.events_all WHERE host = '{h}' FORMAT TSV"
            ))
            .unwrap();
        let first = 1_000_000 * i as u64;
        let sum: u64 = (first..first + want).sum();
        assert_eq!(got.trim(), format!("0\t{sum}"), "{h}: attributes");
    }
    let (kills, skipped, takeovers) = traffic;
    let takeovers = takeovers
        + relays
            .iter()
            .map(|r| r.as_ref().unwrap().metrics.takeovers.get())
            .sum::<u64>();
    eprintln!(
        "relay kills {kills}, takeovers {takeovers}, rows skipped as their session ended {skipped}"
    );
    assert!(
        takeovers > hosts.len() as u64,
        "hosts took over again after kills: {takeovers}"
    );
    for r in &running {
        assert!(r.health.ok(), "{}", r.health.to_json());
    }
    drop(running);
}

#[test]
fn a_relay_refuses_a_forwarder_without_the_dcs_secret() {
    let cluster = launch();
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), "relay.secret", "the-right-one");
    let wrong = secret_file(dir.path(), "wrong.secret", "a-wrong-one");
    let port = free_port();
    let relay = RunningRelay::start(relay_config(&cluster, "relay1", port, dir.path(), &secret));
    let c = forwarder_config(&cluster, "dc1-intruder", dir.path(), &[port], &wrong);
    let spool = open_spool(&c);
    spool.append(&[vote(1), vote(2)]).unwrap();
    let running = Running::start(c, Guards::default());
    wait_for("the refusal", Duration::from_secs(20), || {
        relay
            .metrics
            .refused
            .get_or_create(&shipper::metrics::label("reason", "auth"))
            .get()
            >= 2
    });
    assert!(!running.health.ok(), "the forwarder reports the refusal");
    assert!(
        running.health.to_json().to_string().contains("secret"),
        "{}",
        running.health.to_json()
    );
    assert_eq!(counts(&cluster, "dc1-intruder"), (0, 0));
    drop(running);
}

/// The takeover's guard against the relay-mode twin of the orphan above:
/// an insert of a host's rows by a relay that was killed (or that the
/// forwarder gave up on) reaching ClickHouse after the host took over at
/// another relay. Both timings, as for the direct shipper: only the head
/// on the server when the takeover runs (the fence drops it), and the
/// insert running (the takeover waits for it, then finds the rows held).
#[test]
fn a_relays_orphan_insert_never_lands_beside_the_takeover() {
    let cluster = launch();
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), "relay.secret", "dc1-relay-secret");
    let port = free_port();
    let _relay = RunningRelay::start(relay_config(&cluster, "relay1", port, dir.path(), &secret));
    orphan_case(
        &cluster,
        &forwarder_config(&cluster, "h-relay-late", dir.path(), &[port], &secret),
        Guards::default(),
        OrphanTiming::Late,
        "spoolhouse/insert/dc1/relay-gone/0/1:32",
        Duration::ZERO,
    )
    .stop();
    // Long enough for the forwarder to start, connect and (were the
    // takeover not waiting) have its batch inserted. Relay mode plans the
    // recorded range afresh (it may span more than a batch), each batch
    // checked by a takeover of its own.
    orphan_case(
        &cluster,
        &forwarder_config(&cluster, "h-relay-running", dir.path(), &[port], &secret),
        Guards::default(),
        OrphanTiming::Running,
        "spoolhouse/insert/dc1/relay-gone/0/1:64",
        Duration::from_secs(4),
    )
    .stop();
}

/// A host whose own relay went down ships through the next one, and goes
/// back once a health check finds its own serving again (hosts stay
/// spread by weight); nothing is lost or doubled on the way.
#[test]
fn a_host_goes_back_to_its_own_relay_once_it_serves_again() {
    let cluster = launch();
    let dir = tempfile::tempdir().unwrap();
    let (secret, ports, relay_cfg) = two_relays(&cluster, dir.path());
    // A host whose own relay (by weight, from its name) is the first.
    let host = (0..)
        .map(|i| format!("dc1-home{i}"))
        .find(|h| shipper::forward::first_relay(h, &[1, 1]) == 0)
        .unwrap();
    let own = RunningRelay::start(relay_cfg(0));
    let other = RunningRelay::start(relay_cfg(1));
    let cfg = forwarder_config(&cluster, &host, dir.path(), &ports, &secret);
    let spool = open_spool(&cfg);
    let running = Running::start(cfg.clone(), Guards::default());
    let send = |from: u64| {
        let votes: Vec<Vec<u8>> = (from..from + 300).map(vote).collect();
        spool.append(&votes).unwrap();
        wait_for("the votes through a relay", Duration::from_secs(60), || {
            counts(&cluster, &host).0 >= from + 300
        });
    };
    send(0);
    assert_eq!(own.metrics.sessions.get(), 1, "on its own relay first");
    own.kill();
    send(300);
    assert_eq!(other.metrics.sessions.get(), 1, "on the next relay");
    let own = RunningRelay::start(relay_cfg(0));
    // Checked every 2 s (home_check_ms) while nothing is in flight; the
    // next batch takes a session there.
    wait_for(
        "a health check of its own relay",
        Duration::from_secs(20),
        || own.metrics.probes.get() >= 1,
    );
    let n = counts(&cluster, &host).0;
    send(n);
    assert_eq!(own.metrics.sessions.get(), 1, "back on its own relay");
    running.stop();
    assert_eq!(counts(&cluster, &host), (n + 300, n + 300));
}

/// A relay whose spool is full refuses batches (it ends the session; the
/// forwarder keeps its frames and takes the next relay), drains as it ships,
/// and nothing is lost or doubled.
#[test]
fn a_relay_with_a_full_spool_sends_its_forwarders_elsewhere_and_loses_nothing() {
    let cluster = launch();
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), "relay.secret", "dc1-relay-secret");
    let ports = [free_port(), free_port()];
    let mut small = relay_config(&cluster, "relay-full", ports[0], dir.path(), &secret);
    small.spool_quota_bytes = 1 << 20;
    let full = RunningRelay::start(small);
    let _other = RunningRelay::start(relay_config(
        &cluster,
        "relay2",
        ports[1],
        dir.path(),
        &secret,
    ));
    let hosts: Vec<String> = (1..=3).map(|i| format!("dc1-full{i}")).collect();
    let configs: Vec<ShipperConfig> = hosts
        .iter()
        .map(|h| {
            // Batches of 5 000 votes: the small relay's 1 MiB spool (128 KiB
            // segments) fills with two or three of them.
            let mut c = forwarder_config(&cluster, h, dir.path(), &ports, &secret);
            c.limits.batch_rows_max = 5_000;
            c
        })
        .collect();
    let spools: Vec<Spool> = configs.iter().map(open_spool).collect();
    let want = 20_000u64;
    for (h, spool) in spools.iter().enumerate() {
        let votes: Vec<Vec<u8>> = (0..want).map(|i| vote(1_000_000 * h as u64 + i)).collect();
        for chunk in votes.chunks(1_000) {
            spool.append(chunk).unwrap();
        }
    }
    let running: Vec<Running> = configs
        .iter()
        .map(|c| Running::start(c.clone(), Guards::default()))
        .collect();
    for h in &hosts {
        wait_for(&format!("{h}'s rows"), Duration::from_secs(90), || {
            counts(&cluster, h).0 >= want
        });
    }
    std::thread::sleep(Duration::from_secs(2));
    for h in &hosts {
        assert_eq!(counts(&cluster, h), (want, want), "{h}");
    }
    let refused = full
        .metrics
        .ended
        .get_or_create(&shipper::metrics::label("reason", "spool"))
        .get();
    assert!(refused > 0, "the small relay's spool refused batches");
    drop(running);
}

/// A relay cut off from its forwarders (its link down, every connection
/// dropped, new ones refused) while traffic flows: the forwarders take the
/// other relay over, the cut relay's unshipped rows are skipped or fenced,
/// and after the link heals every host's votes are in ClickHouse once.
#[test]
fn a_relay_cut_off_mid_traffic_loses_and_doubles_nothing() {
    let cluster = launch();
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), "relay.secret", "dc1-relay-secret");
    let ports = [free_port(), free_port()];
    let _r1 = RunningRelay::start(relay_config(
        &cluster,
        "relay-cut",
        ports[0],
        dir.path(),
        &secret,
    ));
    let _r2 = RunningRelay::start(relay_config(
        &cluster,
        "relay2",
        ports[1],
        dir.path(),
        &secret,
    ));
    let links = dir.path().join("links");
    std::fs::create_dir_all(&links).unwrap();
    // The forwarders reach relay-cut through a link that can be cut.
    let link = launcher::link::Relay::start(
        "apps",
        "relay-cut",
        std::net::Ipv4Addr::LOCALHOST.into(),
        format!("127.0.0.1:{}", ports[0]).parse().unwrap(),
        Duration::ZERO,
        &links,
    )
    .unwrap();
    let hosts: Vec<String> = (1..=3).map(|i| format!("dc1-cut{i}")).collect();
    let configs: Vec<ShipperConfig> = hosts
        .iter()
        .map(|h| {
            let mut c = forwarder_config(&cluster, h, dir.path(), &ports, &secret);
            c.relay.as_mut().unwrap().relays[0].addr = link.listen().to_string();
            c
        })
        .collect();
    let spools: Vec<Spool> = configs.iter().map(open_spool).collect();
    let running: Vec<Running> = configs
        .iter()
        .map(|c| Running::start(c.clone(), Guards::default()))
        .collect();
    let (chunks, chunk) = (40u64, 200u64);
    for c in 0..chunks {
        for (h, spool) in spools.iter().enumerate() {
            let votes: Vec<Vec<u8>> = (0..chunk)
                .map(|i| vote(1_000_000 * h as u64 + c * chunk + i))
                .collect();
            spool.append(&votes).unwrap();
        }
        if c == 10 {
            launcher::link::cut(&links, "relay-cut").unwrap();
        }
        if c == 30 {
            launcher::link::heal(&links, "relay-cut").unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let want = chunks * chunk;
    for h in &hosts {
        wait_for(&format!("{h}'s rows"), Duration::from_secs(90), || {
            counts(&cluster, h).0 >= want
        });
    }
    std::thread::sleep(Duration::from_secs(2));
    for h in &hosts {
        assert_eq!(counts(&cluster, h), (want, want), "{h}");
    }
    let failovers: u64 = running
        .iter()
        .map(|r| {
            r.metrics
                .errors
                .get_or_create(&shipper::metrics::label("kind", "relay"))
                .get()
        })
        .sum();
    assert!(failovers > 0, "the cut reached some forwarder");
    drop(running);
}

/// Hostile input to a relay: a message of absurd length, bytes that are no
/// message, a batch before any hello, silence. Each connection is refused
/// and counted, the relay stays up and still answers a proper challenge.
/// (No ClickHouse needed: nothing gets as far as a takeover.)
#[test]
fn a_relay_refuses_hostile_connections_and_keeps_serving() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), "relay.secret", "s3cret");
    let password = secret_file(dir.path(), "writer.password", "pw");
    let port = free_port();
    let relay = RunningRelay::start(dc_config::services::RelayConfig {
        dc: "dc1".into(),
        name: "relay1".into(),
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        spool_dir: dir.path().join("spool"),
        spool_quota_bytes: 1 << 30,
        database: "spoolhouse".into(),
        shards: vec![dc_config::services::ShardTarget {
            weight: 1,
            replicas: vec!["http://127.0.0.1:9".into()],
        }],
        clickhouse_password_file: password,
        secret_file: secret,
        compression: Default::default(),
        limits: Default::default(),
    });
    let connect = || {
        let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        c
    };
    let challenge_len = 4 + 1 + 32;
    let mut attempts: Vec<Vec<u8>> = vec![
        u32::MAX.to_le_bytes().to_vec(),
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        shipper::wire::Message::Batch {
            seq: 1,
            more: false,
            frames: vec![],
        }
        .encode(),
    ];
    // And one that says nothing at all (the hello timeout ends it).
    attempts.push(Vec::new());
    for bytes in &attempts {
        let mut c = connect();
        let mut challenge = vec![0u8; challenge_len];
        c.read_exact(&mut challenge).unwrap();
        let _ = c.write_all(bytes);
        // The relay closes the connection (after a refusal, if it could say one).
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
    }
    let refused = relay
        .metrics
        .refused
        .get_or_create(&shipper::metrics::label("reason", "protocol"))
        .get();
    assert_eq!(refused, attempts.len() as u64);
    let mut c = connect();
    let mut challenge = vec![0u8; challenge_len];
    c.read_exact(&mut challenge).unwrap();
    assert_eq!(challenge[4], 1, "still answering with a challenge");
}
