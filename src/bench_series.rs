//! `spoolhouse bench series`: the time-series read the talk quotes (20
//! series × 2 weeks at 1-minute resolution, out of a table of thousands of
//! series) and the write side (series points per second produced by the
//! per-minute aggregation from 1 M events with 4 dimensions), beside
//! ClickHouse's own `GROUP BY` over the same raw events, in the same run.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use dc_config::event::{ValidEvent, Value};
use dc_config::registry::Registry;
use dc_config::rollup::{aggregate_minutes_sql, decode_points, rollups, series_points_sql};
use launcher::probe::ClickHouseHttp;
use launcher::{LaunchOptions, LocalCluster};
use rand::{Rng, SeedableRng};

/// Arguments of `spoolhouse bench series`.
#[derive(Debug, Args)]
pub struct SeriesBench {
    /// Series in the table for the read test.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(20..=100_000))]
    series: u32,
    /// Days of 1-minute points per series.
    #[arg(long, default_value_t = 14, value_parser = clap::value_parser!(u32).range(1..=60))]
    days: u32,
    /// Read queries timed (each 20 random series over the whole range).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(5..=10_000))]
    reads: u32,
    /// Raw events for the write test.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(10_000..=20_000_000))]
    events: u64,
    /// Minutes the write test's events spread over.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1_440))]
    minutes: u32,
}

/// A registry with one event of 4 dimensions, for the write test.
const BENCH_REGISTRY: &str = r#"
[event.bench_view]
fields.user_id = { type = "u64" }
fields.platform = { type = "enum", values = ["web", "ios", "android"] }
fields.country = { type = "enum", values = ["ru", "de", "br", "us", "in"] }
fields.gender = { type = "enum", values = ["male", "female", "unknown"] }
fields.app_version = { type = "enum", values = ["1", "2", "3", "4"] }
metric = [
  { kind = "count", dimensions = ["platform", "country", "gender", "app_version"] },
  { kind = "uniq", field = "user_id", dimensions = ["platform", "country", "gender", "app_version"] },
]
"#;

const T0: u32 = 1_763_424_000; // 2025-11-18 00:00:00 UTC

/// The `p` quantile of `sorted` durations, in milliseconds.
pub(crate) fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0
}

/// Runs `spoolhouse bench series`.
pub fn run(args: SeriesBench) -> anyhow::Result<()> {
    let mut declared = dc_config::examples::declared();
    declared.topology.datacenter.retain(|dc| dc.name == "dc2");
    let cluster = LocalCluster::start(&declared, LaunchOptions::default())
        .context("starting ClickHouse, ZooKeeper and Redis for the benchmark")?;
    let ch = cluster.clickhouse("dc2-s1-r1")?;
    println!(
        "machine: {} cores; ClickHouse 18.16 on loopback, 1 shard x 1 replica",
        std::thread::available_parallelism()
            .map(|p| p.get())
            .unwrap_or(0)
    );
    read_test(&ch, &args)?;
    write_test(&ch, &args)?;
    Ok(())
}

fn read_test(ch: &ClickHouseHttp, args: &SeriesBench) -> anyhow::Result<()> {
    let points_per_series = u64::from(args.days) * 1440;
    let total = u64::from(args.series) * points_per_series;
    let started = Instant::now();
    // Series named like real ones; values with a daily shape and noise.
    ch.query(&format!(
        "INSERT INTO spoolhouse.series_local (date, metric_hash, time, dc, value, version) \
         SELECT toDate(t), cityHash64(concat('bench.count(){{n=', toString(s), '}}')), t, 'dc2', \
         1000 + 500 * sin(toFloat64(toSecond(t) + 60 * toMinute(t) + 3600 * toHour(t)) / 13751) + (cityHash64(number) % 100), 1 \
         FROM (SELECT number, intDiv(number, {points_per_series}) AS s, \
         toDateTime({T0} + 60 * (number % {points_per_series})) AS t FROM system.numbers LIMIT {total})"
    ))?;
    ch.query("OPTIMIZE TABLE spoolhouse.series_local FINAL")?;
    println!(
        "\nseries read: {} series x {} days at 1-minute points = {} rows, loaded and merged in {:.1} s",
        args.series,
        args.days,
        total,
        started.elapsed().as_secs_f64()
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (mut final_took, mut fast_took) = (Vec::new(), Vec::new());
    let mut points = 0usize;
    let to_s = T0 + args.days * 86_400;
    for _ in 0..args.reads {
        let names: Vec<String> = (0..20)
            .map(|_| format!("bench.count(){{n={}}}", rng.random_range(0..args.series)))
            .collect();
        // The query service's read: no FINAL, the latest version kept here.
        let t = Instant::now();
        let body = ch.query_bytes(&series_points_sql(
            "spoolhouse",
            "series_local",
            &names,
            T0,
            to_s,
        ))?;
        let got = decode_points(&body).context("decoding the series answer")?;
        fast_took.push(t.elapsed());
        points = got.points.len();
        // The same with FINAL and ORDER BY in ClickHouse, for comparison.
        let hashes: Vec<String> = names.iter().map(|n| format!("cityHash64('{n}')")).collect();
        let t = Instant::now();
        ch.query_bytes(&format!(
            "SELECT metric_hash, time, dc, value FROM spoolhouse.series_local FINAL \
             WHERE metric_hash IN ({}) AND time >= toDateTime({T0}) AND time < toDateTime({to_s}) \
             ORDER BY metric_hash, time FORMAT RowBinary",
            hashes.join(", ")
        ))?;
        final_took.push(t.elapsed());
    }
    fast_took.sort();
    final_took.sort();
    println!(
        "  20 series x {} days ({points} points per read), {} reads:",
        args.days, args.reads
    );
    println!(
        "    latest version kept by the client (the query service's read)  p50 {:.1} ms, p99 {:.1} ms   (talk: 20-80 ms; target <= 20 ms p50)",
        percentile_ms(&fast_took, 0.5),
        percentile_ms(&fast_took, 0.99)
    );
    println!(
        "    FINAL + ORDER BY in ClickHouse                                  p50 {:.1} ms, p99 {:.1} ms",
        percentile_ms(&final_took, 0.5),
        percentile_ms(&final_took, 0.99)
    );
    Ok(())
}

fn write_test(ch: &ClickHouseHttp, args: &SeriesBench) -> anyhow::Result<()> {
    let registry = Registry::parse(Path::new("bench.toml"), BENCH_REGISTRY)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let ev = &registry.event["bench_view"];
    let platforms = ["web", "ios", "android"];
    let countries = ["ru", "de", "br", "us", "in"];
    let genders = ["male", "female", "unknown"];
    let versions = ["1", "2", "3", "4"];
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let events = (0..args.events).map(|_| ValidEvent {
        event: "bench_view".into(),
        time_ms: u64::from(T0) * 1000 + rng.random_range(0..u64::from(args.minutes) * 60_000),
        attrs: vec![
            ("user_id".into(), Value::UInt(rng.random_range(0..200_000))),
            (
                "platform".into(),
                Value::Str(platforms[rng.random_range(0..3)].into()),
            ),
            (
                "country".into(),
                Value::Str(countries[rng.random_range(0..5)].into()),
            ),
            (
                "gender".into(),
                Value::Str(genders[rng.random_range(0..3)].into()),
            ),
            (
                "app_version".into(),
                Value::Str(versions[rng.random_range(0..4)].into()),
            ),
        ],
    });
    ch.insert_events("spoolhouse", "dc2", "bench", 0, events)?;
    ch.query("OPTIMIZE TABLE spoolhouse.events_local FINAL")?;

    // The aggregation, as the shipper runs it as minutes close: every
    // roll-up of both metrics, minute by minute (round 1).
    let minutes: Vec<u32> = (0..args.minutes).map(|m| T0 + 60 * m).collect();
    let started = Instant::now();
    for m in &minutes {
        if let Some(sql) = aggregate_minutes_sql("spoolhouse", "dc2", "bench_view", ev, &[*m], 1) {
            ch.query(&sql)?;
        }
    }
    let agg_took = started.elapsed();
    // A backlog's catch-up: the same minutes in one statement (round 2).
    let started = Instant::now();
    if let Some(sql) = aggregate_minutes_sql("spoolhouse", "dc2", "bench_view", ev, &minutes, 2) {
        ch.query(&sql)?;
    }
    let range_took = started.elapsed();
    let points_of = |version: u32| -> anyhow::Result<u64> {
        Ok(ch
            .query(&format!("SELECT count() FROM spoolhouse.metric_states_local WHERE event = 'bench_view' AND version = {version}"))?
            .trim()
            .parse()?)
    };
    let points = points_of(1)?;
    if points_of(2)? != points {
        bail!(
            "the catch-up wrote {} state rows, minute by minute {points}",
            points_of(2)?
        );
    }

    // ClickHouse's own GROUP BY over the same events: the same figures
    // (count and uniq per roll-up and minute), results only, nothing stored.
    let started = Instant::now();
    let mut reference_points = 0u64;
    for r in rollups("bench_view", &ev.metric[0]) {
        let dims: Vec<String> = r
            .dims
            .iter()
            .map(|d| format!("attr_values[indexOf(attr_names, '{d}')]"))
            .collect();
        let keys = std::iter::once("toStartOfMinute(time)".to_string())
            .chain(dims)
            .collect::<Vec<_>>()
            .join(", ");
        let got = ch.query(&format!(
            "SELECT count() FROM (SELECT {keys}, count(), uniq(attr_values[indexOf(attr_names, 'user_id')]) \
             FROM spoolhouse.events_dc WHERE event = 'bench_view' GROUP BY {keys})"
        ))?;
        reference_points += got.trim().parse::<u64>()?;
    }
    let ref_took = started.elapsed();
    if reference_points * 2 != points {
        bail!("aggregation wrote {points} state rows, the reference found {reference_points} groups per metric");
    }
    let rate = |n: u64, d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "\nseries write: {} events over {} minutes, 4 dimensions (16 roll-ups) x 2 metrics (count, uniq):",
        args.events, args.minutes
    );
    println!(
        "  per-minute aggregation into states  {:>9.0} points/s  ({points} points in {:.2} s, serialized states stored, series view fed)",
        rate(points, agg_took),
        agg_took.as_secs_f64()
    );
    println!(
        "  ClickHouse GROUP BY, results only    {:>9.0} points/s  ({} points in {:.2} s)",
        rate(reference_points * 2, ref_took),
        reference_points * 2,
        ref_took.as_secs_f64()
    );
    println!(
        "  ratio = {:.0} %",
        100.0 * rate(points, agg_took) / rate(reference_points * 2, ref_took)
    );
    println!(
        "  catch-up, the {} minutes in one statement  {:>9.0} points/s  ({points} points in {:.2} s): {:.0} % of the reference",
        args.minutes,
        rate(points, range_took),
        range_took.as_secs_f64(),
        100.0 * rate(points, range_took) / rate(reference_points * 2, ref_took)
    );
    Ok(())
}
