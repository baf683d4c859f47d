//! `kill -9` the shipper process at random moments while events keep being
//! spooled; afterwards ClickHouse holds every event exactly once:
//! `count() = uniqExact(dc, host, spool_segment, spool_offset)` = events spooled.
//!
//! The per-minute aggregation runs all along, killed with the rest; after
//! each campaign the DC's aggregate states equal the raw events per minute:
//! no minute skipped, none counted twice.
//!
//! Rounds: 5 by default (CI), `SPOOLHOUSE_CRASH_ROUNDS=30` (or more) for the
//! full campaign. Each guard against duplicates is also run alone.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::http_get;
use dc_config::event::{ValidEvent, Value};
use dc_config::local::{LaunchOptions, LocalCluster};
use dc_config::record::Record;
use dc_config::services::ShipperConfig;
use rand::Rng;

fn rounds() -> usize {
    std::env::var("SPOOLHOUSE_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

/// A shipper child process, killed if the test fails.
struct Child9(Child);

impl Drop for Child9 {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(config: &Path, log: &Path, extra: &[&str]) -> Child9 {
    let log = std::fs::File::create(log).unwrap();
    Child9(
        Command::new(env!("CARGO_BIN_EXE_spoolhouse"))
            .args(["shipper", "--config", config.to_str().unwrap()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// Minutes the shipper still has to aggregate, from its state file.
fn pending_minutes(state_dir: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(state_dir.join("aggregation.json")) else {
        return vec!["(no aggregation state yet)".into()];
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["minutes"].as_object().unwrap().keys().cloned().collect()
}

fn count(cluster: &LocalCluster, host: &str) -> (u64, u64) {
    let r = cluster
        .clickhouse("dc1-s1-r1")
        .unwrap()
        .query(&format!(
            "SELECT count(), uniqExact(dc, host, spool_segment, spool_offset) FROM spoolhouse.events_dc WHERE host = '{host}' FORMAT TSV"
        ))
        .unwrap();
    let mut it = r.trim().split('\t').map(|x| x.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

fn campaign(cluster: &LocalCluster, host: &str, extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let t = cluster.topology();
    let mut cfg = ShipperConfig::for_dc(t, t.dc("dc1").unwrap());
    cfg.host = host.into();
    cfg.spool_dir = dir.path().join("spool");
    cfg.state_dir = dir.path().join("shipper");
    cfg.admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    cfg.limits.batch_rows_max = 300;
    cfg.limits.batch_age_ms = 30;
    cfg.limits.retry_max_ms = 300;
    let config_path = dir.path().join("shipper.toml");
    std::fs::write(&config_path, toml::to_string(&cfg).unwrap()).unwrap();
    std::fs::write(
        dir.path().join("events.toml"),
        dc_config::examples::REGISTRY,
    )
    .unwrap();

    // The test is the collector: it appends events all along.
    let spool = Arc::new(
        spooler::Spool::open(
            &cfg.spool_dir,
            spooler::Config {
                durability: spooler::Durability::Group,
                ..spooler::Config::default()
            },
        )
        .unwrap(),
    );
    let appended = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (spool, appended, stop) = (spool.clone(), appended.clone(), stop.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            // Bounded in count and time.
            while !stop.load(Ordering::SeqCst)
                && appended.load(Ordering::SeqCst) < 200_000
                && started.elapsed() < Duration::from_secs(300)
            {
                let base = appended.load(Ordering::SeqCst);
                let frames: Vec<Vec<u8>> = (base..base + 50)
                    .map(|i| {
                        Record {
                            event: ValidEvent {
                                event: "vote".into(),
                                time_ms: 1_764_028_800_000 + i,
                                attrs: vec![
                                    ("user_id".into(), Value::UInt(i % 1000)),
                                    ("target_user_id".into(), Value::UInt(i)),
                                    ("vote".into(), Value::Str("yes".into())),
                                    ("country_id".into(), Value::UInt(i % 40)),
                                ],
                            },
                            inbox: None,
                        }
                        .encode()
                        .unwrap()
                    })
                    .collect();
                spool.append(&frames).unwrap();
                appended.fetch_add(50, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    let mut rng = rand::rng();
    let mut replays = 0;
    let logs: PathBuf = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    for round in 0..rounds() {
        let log = logs.join(format!("round-{round}.log"));
        let child = spawn(&config_path, &log, extra);
        std::thread::sleep(Duration::from_millis(rng.random_range(150..900)));
        drop(child); // SIGKILL
        let mut text = String::new();
        std::fs::File::open(&log)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        if text.contains("replaying the batch in flight") {
            replays += 1;
        }
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let total = appended.load(Ordering::SeqCst);
    // One last, undisturbed run ships the rest.
    let last = spawn(&config_path, &logs.join("final.log"), extra);
    let until = Instant::now() + Duration::from_secs(120);
    while count(cluster, host).1 < total {
        assert!(
            Instant::now() < until,
            "shipping the rest timed out at {:?} of {total}",
            count(cluster, host)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The admin endpoint of the running shipper proves what it did.
    let metrics = http_get(cfg.admin, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains("spoolhouse_shipper_rows_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("spoolhouse_shipper_insert_seconds_bucket"),
        "{metrics}"
    );
    let health = http_get(cfg.admin, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(
        health.contains(r#""clickhouse":{"state":"ok"}"#),
        "{health}"
    );
    // Aggregation catches up too: no minute left pending, and the states of
    // the DC equal what the raw events give, minute by minute.
    let until = Instant::now() + Duration::from_secs(120);
    while !pending_minutes(&cfg.state_dir).is_empty() {
        assert!(
            Instant::now() < until,
            "minutes still pending: {:?}",
            pending_minutes(&cfg.state_dir)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for (metric, state, raw) in [
        ("vote.count()", "countMerge(count_state)", "count()"),
        (
            "vote.count(){vote=yes}",
            "countMerge(count_state)",
            "countIf(attr_values[indexOf(attr_names, 'vote')] = 'yes')",
        ),
        (
            "vote.uniq(user_id)",
            "uniqMerge(uniq_state)",
            "uniqExact(attr_values[indexOf(attr_names, 'user_id')])",
        ),
    ] {
        let ch = cluster.clickhouse("dc1-s1-r1").unwrap();
        let states = ch
            .query(&format!(
                "SELECT minute, {state} FROM spoolhouse.metric_states_dc FINAL WHERE metric = '{metric}' GROUP BY minute ORDER BY minute FORMAT TSV"
            ))
            .unwrap();
        let direct = ch
            .query(&format!(
                "SELECT toStartOfMinute(time) AS m, {raw} FROM spoolhouse.events_dc WHERE event = 'vote' GROUP BY m ORDER BY m FORMAT TSV"
            ))
            .unwrap();
        assert_eq!(
            states, direct,
            "{host}: {metric} per minute, states vs raw events"
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    drop(last);
    let (rows, unique) = count(cluster, host);
    eprintln!("{host}: {} kill -9 rounds, {replays} replayed an in-flight batch; {total} events, {rows} rows, {unique} distinct", rounds());
    assert_eq!(
        (rows, unique),
        (total, total),
        "{host}: duplicates or losses"
    );
}

#[test]
fn kill_9_rounds_leave_no_gap_and_no_duplicate() {
    let cluster =
        LocalCluster::start(&dc_config::examples::declared(), LaunchOptions::default()).unwrap();
    campaign(&cluster, "both-guards", &[]);
    campaign(&cluster, "position-check-only", &["--no-deduplicate"]);
    campaign(&cluster, "dedup-only", &["--no-verify-positions"]);
}
