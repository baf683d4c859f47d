//! `spoolhouse bench series`: the time-series reads the talk quotes (20
//! series × 2 weeks, out of a table of a thousand series; and 200 series ×
//! 90 days) through the query service's SQL, at minute, hour and day steps,
//! from minute states and from the hour and day states built from them
//! (ADR 0016); and the write side (series points per second produced from
//! 1 M events with 4 dimensions, minute by minute and as a backlog caught
//! up a round's minutes per statement), beside ClickHouse's own `GROUP BY`
//! over the same raw events, in the same run.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use dc_config::event::{ValidEvent, Value};
use dc_config::registry::MetricKind;
use dc_config::registry::Registry;
use dc_config::rollup::{aggregate_minutes_sql, rollups};
use dc_config::steps::{self, build_sql, Built, Coarse};
use launcher::probe::ClickHouseHttp;
use launcher::{LaunchOptions, LocalCluster};
use rand::{Rng, SeedableRng};
use shipper::fleet::ROUND_MINUTES_MAX;

/// Arguments of `spoolhouse bench series`.
#[derive(Debug, Args)]
pub struct SeriesBench {
    /// Series in the table for the read test (200 of them over 90 days).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(220..=100_000))]
    series: u32,
    /// Days of 1-minute points per series.
    #[arg(long, default_value_t = 14, value_parser = clap::value_parser!(u32).range(1..=60))]
    days: u32,
    /// Days of 1-minute states of the 200 long series (the 200 series x
    /// 90 days read).
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=400))]
    long_days: u32,
    /// Read queries timed (each 20 random series over the whole range).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(5..=10_000))]
    reads: u32,
    /// Only the write test (e.g. a day of backlog: `--minutes 1440`).
    #[arg(long)]
    write_only: bool,
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
    if !args.write_only {
        read_test(&ch, &args)?;
    }
    write_test(&ch, &args)?;
    Ok(())
}

/// Loads `count` series (`bench.sum(v){n=K}`, K from `first`) of 1-minute
/// sum states over `days` days into the minute states table, 100 series
/// per statement; values with a daily shape and noise.
fn load_minute_states(
    ch: &ClickHouseHttp,
    first: u32,
    count: u32,
    days: u32,
) -> anyhow::Result<()> {
    let per_series = u64::from(days) * 1440;
    for chunk in (first..first + count).step_by(100) {
        let n = (first + count - chunk).min(100);
        ch.query(&format!(
            "INSERT INTO spoolhouse.metric_states_local (date, minute, dc, event, metric, kind, version, sum_state) \
             SELECT toDate(t), t, 'dc2', 'bench', concat('bench.sum(v){{n=', toString(s), '}}'), 'sum', 1, \
             arrayReduce('sumState', [v]) \
             FROM (SELECT {chunk} + intDiv(number, {per_series}) AS s, \
             toDateTime({T0} + 60 * (number % {per_series})) AS t, \
             1000 + 500 * sin(toFloat64(toUInt32(t) % 86400) / 13751) + toFloat64(cityHash64(number) % 100) AS v \
             FROM system.numbers LIMIT {})",
            u64::from(n) * per_series
        ))?;
    }
    Ok(())
}

/// Bytes stored per row of `table` (compressed, active parts).
fn bytes_per_row(ch: &ClickHouseHttp, table: &str) -> anyhow::Result<f64> {
    let got = ch.query(&format!(
        "SELECT sum(data_compressed_bytes) / sum(rows) FROM system.parts \
         WHERE database = 'spoolhouse' AND table = '{table}' AND active FORMAT TSV"
    ))?;
    Ok(got.trim().parse()?)
}

fn read_test(ch: &ClickHouseHttp, args: &SeriesBench) -> anyhow::Result<()> {
    // The 200 long series (90 days) and the rest (args.days).
    const LONG: u32 = 200;
    let long_days = args.long_days;
    let started = Instant::now();
    load_minute_states(ch, 0, LONG, long_days)?;
    load_minute_states(ch, LONG, args.series.saturating_sub(LONG), args.days)?;
    ch.query("OPTIMIZE TABLE spoolhouse.metric_states_local FINAL")?;
    let rows = u64::from(LONG) * u64::from(long_days) * 1440
        + u64::from(args.series.saturating_sub(LONG)) * u64::from(args.days) * 1440;
    println!(
        "\nseries read: {} series of 1-minute states ({LONG} over {long_days} days, the rest over {} days) = {rows} rows, loaded and merged in {:.1} s",
        args.series,
        args.days,
        started.elapsed().as_secs_f64()
    );
    // Hours and days built as the aggregator builds them (ADR 0016).
    let to_long = T0 + long_days * 86_400;
    let hours: Vec<u32> = (T0..to_long).step_by(3_600).collect();
    let days: Vec<u32> = (T0..to_long).step_by(86_400).collect();
    let mut built = [None, None];
    for (i, (coarse, periods)) in [(Coarse::Hour, &hours), (Coarse::Day, &days)]
        .into_iter()
        .enumerate()
    {
        let started = Instant::now();
        if let Some(sql) = build_sql("spoolhouse", "dc2", coarse, periods, 1, None) {
            ch.query(&sql)?;
        }
        let took = started.elapsed();
        let b = Built {
            from_s: T0,
            through_s: to_long,
        };
        built[i] = Some(b);
        let table = coarse.local_table();
        let n: u64 = ch
            .query(&format!(
                "SELECT count() FROM spoolhouse.{table} FORMAT TSV"
            ))?
            .trim()
            .parse()?;
        println!(
            "  {} states built: {n} rows from the finer states in {:.1} s",
            coarse.name(),
            took.as_secs_f64()
        );
    }
    if let Some(sql) = steps::marks_insert_sql("spoolhouse", "dc2", &built, 1) {
        ch.query(&sql)?;
    }
    ch.query("OPTIMIZE TABLE spoolhouse.metric_states_hour_local FINAL")?;
    ch.query("OPTIMIZE TABLE spoolhouse.metric_states_day_local FINAL")?;
    let per_row = [
        bytes_per_row(ch, "metric_states_local")?,
        bytes_per_row(ch, "metric_states_hour_local")?,
        bytes_per_row(ch, "metric_states_day_local")?,
    ];
    println!(
        "  stored bytes per row (compressed): minute {:.1}, hour {:.1}, day {:.1}",
        per_row[0], per_row[1], per_row[2]
    );

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    // `n` distinct series of the `count` from `first`.
    let mut pick = |n: usize, first: u32, count: u32| -> Vec<String> {
        rand::seq::index::sample(&mut rng, count as usize, n.min(count as usize))
            .into_iter()
            .map(|i| format!("bench.sum(v){{n={}}}", first + i as u32))
            .collect()
    };
    // (label, series, first series, of how many, days, step, coarse states)
    let (short, long) = (
        format!("20 series x {} days", args.days),
        format!("200 series x {long_days} days"),
    );
    let cases: [(String, usize, u32, u32, u32, u32, bool); 5] = [
        (
            format!("{short}, minute step"),
            20,
            LONG,
            args.series - LONG,
            args.days,
            60,
            false,
        ),
        (
            format!("{short}, hour step, merged from minutes"),
            20,
            LONG,
            args.series - LONG,
            args.days,
            3_600,
            false,
        ),
        (
            format!("{short}, hour step, from hours"),
            20,
            LONG,
            args.series - LONG,
            args.days,
            3_600,
            true,
        ),
        (
            format!("{long}, hour step, from hours"),
            200,
            0,
            LONG,
            long_days,
            3_600,
            true,
        ),
        (
            format!("{long}, day step, from days"),
            200,
            0,
            LONG,
            long_days,
            86_400,
            true,
        ),
    ];
    println!(
        "  reads (the query service's SQL, answer as TSV), {} each:",
        args.reads
    );
    for (label, n, first, count, days, step, coarse) in cases {
        let to_s = T0 + days * 86_400;
        let b = if coarse { built } else { [None, None] };
        let parts = steps::parts(T0, to_s, step, b);
        let rows_per_point: f64 = match parts.first().and_then(|p| p.coarse) {
            None => f64::from(step) / 60.0,
            Some(c) => f64::from(step / c.seconds()),
        };
        let bytes = per_row[match parts.first().and_then(|p| p.coarse) {
            None => 0,
            Some(Coarse::Hour) => 1,
            Some(Coarse::Day) => 2,
        }] * rows_per_point;
        let mut took = Vec::new();
        let mut points = 0;
        for _ in 0..args.reads {
            let names = pick(n, first, count);
            let sql = steps::read_sql(
                "spoolhouse",
                steps::DC_TABLES,
                MetricKind::Sum,
                &names,
                &parts,
                step,
                false,
            )
            .context("a read with names and parts")?;
            let t = Instant::now();
            let body = ch.query_bytes(&format!("{sql} FORMAT TSV"))?;
            took.push(t.elapsed());
            points = body
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .count();
        }
        took.sort();
        println!(
            "    {label:<52} p50 {:>7.1} ms, p99 {:>7.1} ms  ({points} points, {rows_per_point:.0} stored rows and ~{bytes:.0} bytes per point)",
            percentile_ms(&took, 0.5),
            percentile_ms(&took, 0.99)
        );
    }
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
    // roll-up of both metrics, minute by minute (round 1); only for a
    // backlog short enough to be one round, since a day of it would be
    // 1 440 statements.
    let minutes: Vec<u32> = (0..args.minutes).map(|m| T0 + 60 * m).collect();
    let per_minute = minutes.len() <= ROUND_MINUTES_MAX;
    let started = Instant::now();
    if per_minute {
        for m in &minutes {
            if let Some(sql) =
                aggregate_minutes_sql("spoolhouse", "dc2", "bench_view", ev, &[*m], 1)
            {
                ch.query(&sql)?;
            }
        }
    }
    let agg_took = started.elapsed();
    // A backlog's catch-up, as the DC's aggregator takes it: a round's
    // minutes (at most ROUND_MINUTES_MAX) in one statement (round 2).
    let started = Instant::now();
    for round in minutes.chunks(ROUND_MINUTES_MAX) {
        if let Some(sql) = aggregate_minutes_sql("spoolhouse", "dc2", "bench_view", ev, round, 2) {
            ch.query(&sql)?;
        }
    }
    let range_took = started.elapsed();
    let points_of = |version: u32| -> anyhow::Result<u64> {
        Ok(ch
            .query(&format!("SELECT count() FROM spoolhouse.metric_states_local WHERE event = 'bench_view' AND version = {version}"))?
            .trim()
            .parse()?)
    };
    let points = points_of(2)?;
    if per_minute && points_of(1)? != points {
        bail!(
            "the catch-up wrote {points} state rows, minute by minute {}",
            points_of(1)?
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
    if per_minute {
        println!(
            "  per-minute aggregation into states  {:>9.0} points/s  ({points} points in {:.2} s, serialized states stored, series view fed)",
            rate(points, agg_took),
            agg_took.as_secs_f64()
        );
    }
    println!(
        "  ClickHouse GROUP BY, results only    {:>9.0} points/s  ({} points in {:.2} s)",
        rate(reference_points * 2, ref_took),
        reference_points * 2,
        ref_took.as_secs_f64()
    );
    if per_minute {
        println!(
            "  ratio = {:.0} %",
            100.0 * rate(points, agg_took) / rate(reference_points * 2, ref_took)
        );
    }
    println!(
        "  catch-up, the {} minutes in {} statement(s) of at most {ROUND_MINUTES_MAX} minutes  {:>9.0} points/s  ({points} points in {:.2} s): {:.0} % of the reference",
        args.minutes,
        minutes.len().div_ceil(ROUND_MINUTES_MAX),
        rate(points, range_took),
        range_took.as_secs_f64(),
        100.0 * rate(points, range_took) / rate(reference_points * 2, ref_took)
    );
    Ok(())
}
