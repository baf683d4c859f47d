//! The progress endpoints against real Redis and ClickHouse in two DCs:
//! Redis hit; miss → this DC's ClickHouse → refill → hit; a value only
//! another DC has comes through the global table; that DC down gives a
//! partial answer naming it, within the timeout; bad and hostile
//! parameters get a 400 naming the parameter.

mod common;

use std::time::{Duration, Instant};

use common::{get, Harness};
use dc_config::event::{ValidEvent, Value};
use launcher::{LaunchOptions, LocalCluster};

const T: u64 = 1_764_028_800_000;

fn progress(user: u64, video: u64, time_ms: u64, video_time: u64) -> ValidEvent {
    ValidEvent {
        event: "watch_progress".into(),
        time_ms,
        attrs: vec![
            ("user_id".into(), Value::UInt(user)),
            ("video_id".into(), Value::UInt(video)),
            ("video_time".into(), Value::UInt(video_time)),
        ],
    }
}

#[test]
fn progress_reads_redis_then_clickhouse_then_every_dc() {
    let cluster =
        LocalCluster::start(&dc_config::examples::declared(), LaunchOptions::default()).unwrap();
    // dc1 knows (7, 42) twice, out of order; only dc2 knows (8, 99).
    cluster
        .load_events(
            "dc1-s1-r1",
            "dc1",
            &[
                progress(7, 42, T + 2_000, 200),
                progress(7, 42, T + 1_000, 100),
            ],
        )
        .unwrap();
    cluster
        .load_events("dc2-s1-r1", "dc2", &[progress(8, 99, T, 55)])
        .unwrap();

    let mut h = Harness::serve(cluster, Duration::from_secs(5), |_| {});
    let base = h.base.clone();

    let (s, v) = get(&base, "/v1/progress/7/42");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["source"], "clickhouse_dc");
    assert_eq!(v["value"], 200);
    assert_eq!(v["event_time_ms"], T + 2_000);
    // Refilled: the next read is a Redis hit.
    let (s, v) = get(&base, "/v1/progress/7/42");
    assert_eq!((s, v["source"].clone()), (200, "redis".into()), "{v}");
    assert_eq!(v["value"], 200);

    // Only dc2 has it: the global table, a whole answer.
    let (s, v) = get(&base, "/v1/progress/8/99");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["source"], "clickhouse_global");
    assert_eq!(v["partial"], false);
    assert_eq!(v["value"], 55);

    // Batch form.
    let (s, v) = get(&base, "/v1/progress/7?videos=42,43");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["items"].as_array().unwrap().len(), 1);

    // Bad and hostile parameters.
    let (s, v) = get(&base, "/v1/progress/seven/42");
    assert_eq!(s, 400);
    assert_eq!(v["parameter"], "user_id");
    assert_eq!(v["allowed"], "an integer from 0 to 18446744073709551615");
    let (s, v) = get(&base, "/v1/progress/7/42%27%20OR%201=1");
    assert_eq!((s, v["parameter"].clone()), (400, "video_id".into()), "{v}");
    let (s, _) = get(&base, "/v1/progress/7?videos=");
    assert_eq!(s, 400);
    let (s, v) = get(&base, "/v1/nothing");
    assert_eq!(s, 404, "{v}");

    // dc2 down: a key nobody has is a 404 that names the missing DC, in time.
    h.cluster.kill("dc2-s1-r1").unwrap();
    let started = Instant::now();
    let (s, v) = get(&base, "/v1/progress/9/9");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(s, 404, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("not answering: dc2"),
        "{v}"
    );

    let (s, v) = get(&base, "/healthz");
    assert_eq!((s, v["ok"].clone()), (200, true.into()), "{v}");
    let (s, m) = get(&base, "/metrics");
    assert_eq!(s, 200);
    let m = m.as_str().unwrap().to_string();
    // Hits: the second read of (7, 42) and its batch read.
    assert!(
        m.contains("spoolhouse_query_progress_source_total{source=\"redis\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("spoolhouse_query_requests_total{endpoint=\"other\",status=\"404\"} 1"),
        "{m}"
    );
    assert!(m.contains("spoolhouse_query_request_seconds_bucket"), "{m}");
}

/// The gauge of misses looking in ClickHouse, from `/metrics`.
fn lookups_in_flight(base: &str) -> u64 {
    let (_, m) = get(base, "/metrics");
    let m = m.as_str().unwrap_or_default().to_string();
    httpd::exposition::sum(
        &httpd::exposition::samples(&m),
        "spoolhouse_query_progress_lookups",
        "",
    )
    .unwrap_or_else(|| panic!("no lookups gauge in {m}")) as u64
}

fn source_count(base: &str, source: &str) -> u64 {
    let (_, m) = get(base, "/metrics");
    let m = m.as_str().unwrap_or_default().to_string();
    let prefix = format!("spoolhouse_query_progress_source_total{{source=\"{source}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// Issue 8: hits in parallel; one lookup in ClickHouse at a time, the next
/// miss a 503 to retry while it runs (a slow cross-DC link keeps it
/// running); a key nobody has is then answered from the negative cache, but
/// a later write of it through the shipper's newer-wins script is seen.
#[test]
fn progress_misses_are_bounded_and_cached_without_hiding_writes() {
    let cluster = LocalCluster::start(
        &dc_config::examples::declared(),
        LaunchOptions {
            // Each global lookup pays several cross-DC round trips: seconds.
            cross_dc_delay: Some(Duration::from_millis(400)),
            ..LaunchOptions::default()
        },
    )
    .unwrap();
    cluster
        .load_events("dc1-s1-r1", "dc1", &[progress(7, 42, T, 300)])
        .unwrap();
    let h = Harness::serve(cluster, Duration::from_secs(15), |c| {
        c.progress_lookups_max = 1;
    });
    let base = h.base.clone();

    // Refill (7, 42), then many hits at once, all from Redis.
    let (s, v) = get(&base, "/v1/progress/7/42");
    assert_eq!(
        (s, v["source"].clone()),
        (200, "clickhouse_dc".into()),
        "{v}"
    );
    let hits: Vec<_> = (0..16)
        .map(|_| {
            let base = base.clone();
            std::thread::spawn(move || {
                (0..10)
                    .map(|_| get(&base, "/v1/progress/7/42"))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for h in hits {
        for (s, v) in h.join().unwrap() {
            assert_eq!((s, v["source"].clone()), (200, "redis".into()), "{v}");
            assert_eq!(v["value"], 300);
        }
    }
    assert_eq!(source_count(&base, "redis"), 160);

    // A key nobody has: one slow global lookup holds the only permit.
    let slow = {
        let base = base.clone();
        std::thread::spawn(move || get(&base, "/v1/progress/5/5"))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while lookups_in_flight(&base) == 0 {
        assert!(Instant::now() < deadline, "the lookup never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (s, v) = get(&base, "/v1/progress/6/6");
    assert_eq!(s, 503, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains("retry") && e.contains("1 progress lookups"),
        "{v}"
    );
    // Hits go on meanwhile.
    let (s, v) = get(&base, "/v1/progress/7/42");
    assert_eq!((s, v["source"].clone()), (200, "redis".into()), "{v}");
    let (s, v) = slow.join().unwrap();
    assert_eq!(s, 404, "{v}");
    assert_eq!(lookups_in_flight(&base), 0);

    // Asked again: the negative cache, no lookup (a full bound would 503).
    let (s, v) = get(&base, "/v1/progress/5/5");
    assert_eq!(s, 404, "{v}");
    assert_eq!(source_count(&base, "negative_cache"), 1);
    assert_eq!(source_count(&base, "clickhouse_global"), 1);

    // The shipper writes it: the real key wins over the negative cache.
    let store_write = async {
        let mut store = dc_config::state_store::StateStore::connect(
            &h.cluster.topology().dc("dc1").unwrap().redis,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let w = dc_config::state_store::state_write(
            &h.cluster.declared().registry,
            &progress(5, 5, T + 9_000, 77),
        )
        .unwrap();
        store.apply(&[w]).await.unwrap()
    };
    assert_eq!(h.block_on(store_write), 1);
    let (s, v) = get(&base, "/v1/progress/5/5");
    assert_eq!((s, v["source"].clone()), (200, "redis".into()), "{v}");
    assert_eq!(
        (v["value"].clone(), v["event_time_ms"].clone()),
        (77.into(), (T + 9_000).into())
    );

    // A partial "no" is not cached: with dc2 cut, ask twice, scan twice.
    h.cluster.cut("dc2").unwrap();
    for _ in 0..2 {
        let (s, v) = get(&base, "/v1/progress/4/4");
        assert_eq!(s, 404, "{v}");
        assert!(
            v["error"].as_str().unwrap().contains("not answering: dc2"),
            "{v}"
        );
    }
    assert_eq!(source_count(&base, "clickhouse_global"), 3);
    assert_eq!(source_count(&base, "negative_cache"), 1);
}
