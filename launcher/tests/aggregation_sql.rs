//! The per-minute aggregation SQL on ClickHouse 18.16: states per roll-up
//! equal figures computed here from the events themselves; series names
//! written by ClickHouse equal the names Rust computes (escaping included);
//! a re-aggregation with a later version replaces the minute; the series
//! table follows; uniques merge across datacenters with overlapping users.

use std::collections::{BTreeMap, HashSet};

use dc_config::event::{ValidEvent, Value};
use dc_config::rollup::{aggregate_minutes_sql, folded_values_sql, rollups, series_name};
use launcher::{LaunchOptions, LocalCluster};

const MINUTE: u32 = 1_764_028_800; // 2025-11-25 00:00:00 UTC

fn screen_view(user: u64, screen: &str, platform: &str, load_ms: u64, second: u32) -> ValidEvent {
    ValidEvent {
        event: "screen_view".into(),
        time_ms: u64::from(MINUTE + second) * 1000 + 123,
        attrs: vec![
            ("user_id".into(), Value::UInt(user)),
            ("screen".into(), Value::Str(screen.into())),
            ("platform".into(), Value::Str(platform.into())),
            ("load_ms".into(), Value::UInt(load_ms)),
        ],
    }
}

fn registration(user: u64, gender: &str, country: u64) -> ValidEvent {
    ValidEvent {
        event: "registration".into(),
        time_ms: u64::from(MINUTE) * 1000 + user % 60_000,
        attrs: vec![
            ("user_id".into(), Value::UInt(user)),
            ("gender".into(), Value::Str(gender.into())),
            ("country_id".into(), Value::UInt(country)),
        ],
    }
}

fn insert(
    cluster: &LocalCluster,
    server: &str,
    dc: &str,
    events: &[ValidEvent],
    first_offset: u64,
) {
    cluster
        .clickhouse(server)
        .unwrap()
        .insert_events(
            "spoolhouse",
            dc,
            &format!("{dc}-app1"),
            first_offset,
            events,
        )
        .unwrap();
}

fn aggregate(cluster: &LocalCluster, server: &str, dc: &str, event: &str, version: u64) {
    let reg = &cluster.declared().registry;
    if let Some(sql) = aggregate_minutes_sql(
        "spoolhouse",
        dc,
        event,
        &reg.event[event],
        &[MINUTE],
        version,
    ) {
        cluster.clickhouse(server).unwrap().query(&sql).unwrap();
    }
}

/// metric name → value, from the states of one DC (latest version per key).
fn states(
    cluster: &LocalCluster,
    server: &str,
    table: &str,
    merge: &str,
) -> BTreeMap<String, String> {
    let body = cluster
        .clickhouse(server)
        .unwrap()
        .query(&format!(
            "SELECT metric, {merge} FROM spoolhouse.{table} FINAL WHERE minute = toDateTime({MINUTE}) GROUP BY metric ORDER BY metric FORMAT TSV"
        ))
        .unwrap();
    body.lines()
        .map(|l| {
            let (k, v) = l.split_once('\t').unwrap();
            // TSV escapes backslashes; undo it to compare with Rust's names.
            (k.replace("\\\\", "\\"), v.to_string())
        })
        .collect()
}

#[test]
fn minute_states_match_the_events_and_merge_across_datacenters() {
    let cluster =
        LocalCluster::start(&dc_config::examples::declared(), LaunchOptions::default()).unwrap();
    let reg = cluster.declared().registry.clone();
    let screens = ["home", "odd,screen=x{y}\\"];
    let platforms = ["web", "ios", "android"];
    let mut views = Vec::new();
    for i in 0..300u64 {
        views.push(screen_view(
            i % 37,
            screens[(i % 2) as usize],
            platforms[(i % 3) as usize],
            10 + i,
            (i % 60) as u32,
        ));
    }
    // dc1 has two shards: the Distributed read must see both halves.
    insert(&cluster, "dc1-s1-r1", "dc1", &views[..150], 0);
    insert(&cluster, "dc1-s2-r1", "dc1", &views[150..], 150);
    aggregate(&cluster, "dc1-s1-r1", "dc1", "screen_view", 1);

    // Expected figures, computed here from the events.
    let ev = &reg.event["screen_view"];
    let mut expected_count: BTreeMap<String, u64> = BTreeMap::new();
    let mut expected_sum: BTreeMap<String, u64> = BTreeMap::new();
    let mut expected_max: BTreeMap<String, u64> = BTreeMap::new();
    for m in &ev.metric {
        for r in rollups("screen_view", m) {
            for v in &views {
                let values: Vec<String> = r
                    .dims
                    .iter()
                    .map(|d| v.attr(d).unwrap().to_column_text())
                    .collect();
                let name = series_name(&r, &values);
                let load = match v.attr("load_ms").unwrap() {
                    Value::UInt(x) => *x,
                    _ => unreachable!(),
                };
                match m.kind.name() {
                    "count" => *expected_count.entry(name).or_default() += 1,
                    "sum" => *expected_sum.entry(name).or_default() += load,
                    "max" => {
                        let e = expected_max.entry(name).or_default();
                        *e = (*e).max(load);
                    }
                    _ => {}
                }
            }
        }
    }
    let count = states(
        &cluster,
        "dc1-s2-r1",
        "metric_states_dc",
        "countMerge(count_state)",
    );
    let got_count: BTreeMap<String, u64> = count
        .iter()
        .filter(|(k, _)| k.starts_with("screen_view.count()"))
        .map(|(k, v)| (k.clone(), v.parse().unwrap()))
        .collect();
    assert_eq!(got_count, expected_count);
    assert!(
        got_count
            .contains_key("screen_view.count(){screen=odd\\,screen\\=x\\{y\\}\\\\,platform=ios}"),
        "{got_count:?}"
    );
    let sums = states(
        &cluster,
        "dc1-s2-r1",
        "metric_states_dc",
        "sumMerge(sum_state)",
    );
    let got_sum: BTreeMap<String, u64> = sums
        .iter()
        .filter(|(k, _)| k.starts_with("screen_view.sum("))
        .map(|(k, v)| (k.clone(), v.parse::<f64>().unwrap() as u64))
        .collect();
    assert_eq!(got_sum, expected_sum);
    let maxes = states(
        &cluster,
        "dc1-s2-r1",
        "metric_states_dc",
        "maxMerge(max_state)",
    );
    let got_max: BTreeMap<String, u64> = maxes
        .iter()
        .filter(|(k, _)| k.starts_with("screen_view.max("))
        .map(|(k, v)| (k.clone(), v.parse::<f64>().unwrap() as u64))
        .collect();
    assert_eq!(got_max, expected_max);

    // The series table follows through the materialized view.
    let series = cluster
        .clickhouse("dc1-s1-r1")
        .unwrap()
        .query(&format!(
            "SELECT value FROM spoolhouse.series_dc FINAL WHERE metric_hash = cityHash64('screen_view.count()') AND time = toDateTime({MINUTE}) FORMAT TSV"
        ))
        .unwrap();
    assert_eq!(series.trim(), "300");

    // A late event, then a re-aggregation with a later version: the minute
    // is replaced, not added to.
    insert(
        &cluster,
        "dc1-s1-r1",
        "dc1",
        &[screen_view(1, "home", "web", 5, 59)],
        1_000,
    );
    aggregate(&cluster, "dc1-s1-r1", "dc1", "screen_view", 2);
    let count = states(
        &cluster,
        "dc1-s1-r1",
        "metric_states_dc",
        "countMerge(count_state)",
    );
    assert_eq!(count["screen_view.count()"], "301");
    let series = cluster
        .clickhouse("dc1-s1-r1")
        .unwrap()
        .query(&format!(
            "SELECT value FROM spoolhouse.series_dc FINAL WHERE metric_hash = cityHash64('screen_view.count()') AND time = toDateTime({MINUTE}) FORMAT TSV"
        ))
        .unwrap();
    assert_eq!(series.trim(), "301");
    // The fast read (no FINAL; the client keeps the latest version) agrees.
    let names = vec![
        "screen_view.count()".to_string(),
        "screen_view.count(){platform=ios}".to_string(),
    ];
    let ch = cluster.clickhouse("dc1-s1-r1").unwrap();
    let raw = ch
        .query_bytes(&dc_config::rollup::series_points_sql(
            "spoolhouse",
            "series_all",
            &names,
            MINUTE,
            MINUTE + 60,
        ))
        .unwrap();
    let points = dc_config::rollup::decode_points(&raw).unwrap().points;
    let hashes = ch
        .query(&dc_config::rollup::series_hashes_sql(&names))
        .unwrap();
    let hash_of = |name: &str| -> u64 {
        hashes
            .lines()
            .find_map(|l| {
                l.split_once('\t')
                    .filter(|(_, n)| *n == name)
                    .map(|(h, _)| h.parse().unwrap())
            })
            .unwrap()
    };
    let value_of = |name: &str| {
        points
            .iter()
            .find(|p| p.metric_hash == hash_of(name))
            .unwrap()
            .value
    };
    assert_eq!(points.len(), 2, "{points:?}");
    assert_eq!(value_of("screen_view.count()"), 301.0);
    assert_eq!(
        value_of("screen_view.count(){platform=ios}"),
        (expected_count["screen_view.count(){platform=ios}"]) as f64
    );

    // Uniques across two DCs with overlapping users: merged states, not sums.
    let dc1_regs: Vec<ValidEvent> = (0..400u64)
        .map(|u| registration(u, if u % 2 == 0 { "male" } else { "female" }, u % 5))
        .collect();
    let dc2_regs: Vec<ValidEvent> = (300..700u64)
        .map(|u| registration(u, if u % 2 == 0 { "male" } else { "female" }, u % 5))
        .collect();
    insert(&cluster, "dc1-s2-r1", "dc1", &dc1_regs, 10_000);
    insert(&cluster, "dc2-s1-r1", "dc2", &dc2_regs, 10_000);
    aggregate(&cluster, "dc1-s2-r1", "dc1", "registration", 1);
    aggregate(&cluster, "dc2-s1-r1", "dc2", "registration", 1);
    let global = states(
        &cluster,
        "dc2-s1-r1",
        "metric_states_all",
        "uniqMerge(uniq_state)",
    );
    let all: HashSet<u64> = (0..700).collect();
    assert_eq!(global["registration.uniq(user_id)"], all.len().to_string());
    let males = all.iter().filter(|u| *u % 2 == 0).count();
    assert_eq!(
        global["registration.uniq(user_id){gender=male}"],
        males.to_string()
    );
    let dc_only = states(
        &cluster,
        "dc2-s1-r1",
        "metric_states_dc",
        "uniqMerge(uniq_state)",
    );
    assert_eq!(dc_only["registration.uniq(user_id)"], "400");
}

/// A dimension over its `max_values_per_minute` keeps its most frequent
/// values (ties: the smaller) and counts the rest under `other`; the top
/// values are the DC's, not each shard's, and every roll-up agrees.
#[test]
fn a_dimension_over_its_bound_folds_the_rest_into_other() {
    let cluster =
        LocalCluster::start(&dc_config::examples::declared(), LaunchOptions::default()).unwrap();
    let mut ev = cluster.declared().registry.event["screen_view"].clone();
    ev.fields["screen"].max_values_per_minute = Some(2);
    // a: 5, b: 3, c: 3 (ties with b, larger), d: 1, e: 1, and one real
    // value "other" (folded with the rest: it is not among the top two).
    let screens: Vec<&str> = [
        ("a", 5),
        ("b", 3),
        ("c", 3),
        ("d", 1),
        ("e", 1),
        ("other", 1),
    ]
    .iter()
    .flat_map(|&(s, n)| std::iter::repeat_n(s, n))
    .collect();
    let platforms = ["web", "ios"];
    let views: Vec<ValidEvent> = screens
        .iter()
        .enumerate()
        .map(|(i, s)| screen_view(i as u64, s, platforms[i % 2], 10, i as u32))
        .collect();
    // Each shard alone would rank differently: the first holds a, b and
    // c's first two; the second c's third, d, e and other.
    insert(&cluster, "dc1-s1-r1", "dc1", &views[..10], 0);
    insert(&cluster, "dc1-s2-r1", "dc1", &views[10..], 10);
    if let Some(sql) = aggregate_minutes_sql("spoolhouse", "dc1", "screen_view", &ev, &[MINUTE], 1)
    {
        cluster
            .clickhouse("dc1-s1-r1")
            .unwrap()
            .query(&sql)
            .unwrap();
    }
    let kept = |s: &str| {
        if ["a", "b"].contains(&s) {
            s.to_string()
        } else {
            "other".to_string()
        }
    };
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let count = ev.metric.iter().find(|m| m.field.is_none()).unwrap();
    for r in rollups("screen_view", count) {
        for v in &views {
            let values: Vec<String> = r
                .dims
                .iter()
                .map(|d| match (*d, v.attr(d).unwrap()) {
                    ("screen", Value::Str(s)) => kept(s),
                    (_, value) => value.to_column_text(),
                })
                .collect();
            *expected.entry(series_name(&r, &values)).or_default() += 1;
        }
    }
    let got: BTreeMap<String, u64> = states(
        &cluster,
        "dc1-s2-r1",
        "metric_states_dc",
        "countMerge(count_state)",
    )
    .into_iter()
    .filter(|(k, _)| k.starts_with("screen_view.count()"))
    .map(|(k, v)| (k, v.parse().unwrap()))
    .collect();
    assert_eq!(got, expected);
    assert_eq!(got["screen_view.count(){screen=other}"], 6, "{got:?}");
    assert_eq!(got["screen_view.count()"], 14, "{got:?}");
    // What the shipper counts: c, d, e and other folded.
    let folded = folded_values_sql("spoolhouse", "screen_view", &ev, &[MINUTE]);
    assert_eq!(folded.len(), 1, "{folded:?}");
    assert_eq!(folded[0].0, "screen");
    let ch = cluster.clickhouse("dc1-s2-r1").unwrap();
    assert_eq!(ch.query(&folded[0].1).unwrap().trim(), "4");
}

#[test]
fn a_metric_over_an_optional_field_counts_only_the_events_that_carry_it() {
    let cluster =
        LocalCluster::start(&dc_config::examples::declared(), LaunchOptions::default()).unwrap();
    let mut ev = cluster.declared().registry.event["screen_view"].clone();
    ev.fields["load_ms"].required = false;
    // web: load times 10 and 30 and one view without; ios: none carries
    // one. The one scan serves the count (every view) and the load-time
    // metrics (only the views with a load time) alike.
    let mut views = [
        screen_view(1, "home", "web", 10, 1),
        screen_view(2, "home", "web", 30, 2),
        screen_view(3, "home", "web", 0, 3),
        screen_view(4, "home", "ios", 0, 4),
        screen_view(5, "chat", "ios", 0, 5),
    ];
    for v in &mut views[2..] {
        v.attrs.retain(|(k, _)| k != "load_ms");
    }
    insert(&cluster, "dc1-s1-r1", "dc1", &views[..2], 0);
    insert(&cluster, "dc1-s2-r1", "dc1", &views[2..], 2);
    let sql = aggregate_minutes_sql("spoolhouse", "dc1", "screen_view", &ev, &[MINUTE], 1).unwrap();
    cluster
        .clickhouse("dc1-s1-r1")
        .unwrap()
        .query(&sql)
        .unwrap();
    let merged = |merge: &str, prefix: &str| -> BTreeMap<String, String> {
        states(&cluster, "dc1-s2-r1", "metric_states_dc", merge)
            .into_iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .collect()
    };
    let counts = merged("countMerge(count_state)", "screen_view.count()");
    assert_eq!(counts["screen_view.count()"], "5", "{counts:?}");
    assert_eq!(
        counts["screen_view.count(){platform=ios}"], "2",
        "{counts:?}"
    );
    assert_eq!(
        counts["screen_view.count(){screen=home,platform=web}"], "3",
        "{counts:?}"
    );
    let sums = merged("sumMerge(sum_state)", "screen_view.sum(load_ms)");
    let want: BTreeMap<String, String> = [
        ("screen_view.sum(load_ms)", "40"),
        ("screen_view.sum(load_ms){platform=web}", "40"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    // No series for iOS: none of its views carried a load time.
    assert_eq!(sums, want);
    let mins = merged("minMerge(min_state)", "screen_view.min(load_ms)");
    assert_eq!(
        mins["screen_view.min(load_ms){platform=web}"], "10",
        "{mins:?}"
    );
    assert_eq!(mins.len(), 2, "{mins:?}");
}

#[test]
fn a_backlog_aggregated_in_one_statement_equals_minute_by_minute() {
    let cluster =
        LocalCluster::start(&dc_config::examples::declared(), LaunchOptions::default()).unwrap();
    let mut ev = cluster.declared().registry.event["screen_view"].clone();
    ev.fields["screen"].max_values_per_minute = Some(2);
    // Four minutes, each with its own most frequent screens (so each
    // minute folds its own way); the third is another shard's minute,
    // left out of the backlog statement (a gap in its minutes).
    let minutes = [MINUTE, MINUTE + 60, MINUTE + 120, MINUTE + 180];
    let screens = ["a", "b", "c", "d", "e"];
    let mut views = Vec::new();
    for (k, m) in minutes.iter().enumerate() {
        for i in 0..40u64 {
            // Minute k favours screens k and k + 1.
            let s = if i % 4 == 0 {
                screens[(i as usize / 4) % 5]
            } else {
                screens[(k + (i % 2) as usize) % 5]
            };
            let mut v = screen_view(i, s, ["web", "ios", "android"][(i % 3) as usize], 10 + i, 0);
            v.time_ms = u64::from(*m) * 1000 + i * 1000;
            views.push(v);
        }
    }
    insert(&cluster, "dc1-s1-r1", "dc1", &views[..80], 0);
    insert(&cluster, "dc1-s2-r1", "dc1", &views[80..], 80);
    let ch = cluster.clickhouse("dc1-s1-r1").unwrap();
    let backlog = [minutes[0], minutes[1], minutes[3]];
    // Round 1: minute by minute, as minutes close; round 2: the backlog at once.
    for m in backlog {
        let sql = aggregate_minutes_sql("spoolhouse", "dc1", "screen_view", &ev, &[m], 1).unwrap();
        ch.query(&sql).unwrap();
    }
    let sql = aggregate_minutes_sql("spoolhouse", "dc1", "screen_view", &ev, &backlog, 2).unwrap();
    ch.query(&sql).unwrap();
    let round = |version: u32| {
        ch.query(&format!(
            "SELECT toUInt32(minute), metric, kind, toString(countMerge(count_state)), \
             toString(sumMerge(sum_state)), toString(minMerge(min_state)), toString(maxMerge(max_state)) \
             FROM spoolhouse.metric_states_local WHERE version = {version} \
             GROUP BY minute, metric, kind ORDER BY minute, metric FORMAT TSV"
        ))
        .unwrap()
    };
    let (one_by_one, at_once) = (round(1), round(2));
    assert_eq!(one_by_one, at_once);
    // Every minute of the backlog, and not the one left out.
    let got: HashSet<u32> = at_once
        .lines()
        .map(|l| l.split('\t').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(got, backlog.into_iter().collect::<HashSet<u32>>());
    // Each minute folded its own way: its two most frequent screens kept.
    assert!(at_once.contains("screen_view.count(){screen=other}"));
    assert!(at_once.contains(&format!("{}\tscreen_view.count(){{screen=a}}", minutes[0])));
    assert!(at_once.contains(&format!("{}\tscreen_view.count(){{screen=e}}", minutes[3])));
    assert!(!at_once.contains(&format!("{}\tscreen_view.count(){{screen=e}}", minutes[0])));
}

/// The series a read through [`dc_config::steps::read_sql`] answers, as
/// sorted `metric t v` lines.
fn stepped(
    ch: &launcher::probe::ClickHouseHttp,
    tables: dc_config::steps::ScopeTables,
    names: &[String],
    parts: &[dc_config::steps::Part],
    step_s: u32,
) -> Vec<String> {
    use dc_config::registry::MetricKind;
    let reg = dc_config::examples::declared().registry;
    let mut out = Vec::new();
    for kind in [MetricKind::Count, MetricKind::Uniq, MetricKind::Max] {
        let of_kind: Vec<String> = names
            .iter()
            .filter(|n| {
                dc_config::rollup::parse_name(&reg, n)
                    .unwrap()
                    .rollup
                    .metric
                    .kind
                    == kind
            })
            .cloned()
            .collect();
        if let Some(sql) =
            dc_config::steps::read_sql("spoolhouse", tables, kind, &of_kind, parts, step_s, false)
        {
            out.extend(
                ch.query(&format!("{sql} FORMAT TSV"))
                    .unwrap()
                    .lines()
                    .map(str::to_string),
            );
        }
    }
    out.sort();
    out
}

#[test]
fn hours_and_days_built_from_minutes_read_as_the_minutes_do() {
    use dc_config::steps::{
        build_sql, marks_insert_sql, marks_sql, parse_marks, parts, Built, Coarse,
    };
    const H: u32 = 3_600;
    let cluster =
        LocalCluster::start(&dc_config::examples::declared(), LaunchOptions::default()).unwrap();
    let reg = cluster.declared().registry.clone();
    // Two days and three hours of registrations every 7 minutes in both
    // DCs, users overlapping across minutes, hours and DCs.
    let from = MINUTE;
    let to = MINUTE + 2 * 86_400 + 3 * H;
    let mut by_dc: BTreeMap<&str, Vec<ValidEvent>> = BTreeMap::new();
    for (k, m) in (from..to).step_by(7 * 60).enumerate() {
        for (d, dc) in ["dc1", "dc2"].into_iter().enumerate() {
            for i in 0..3u64 {
                let user = (k as u64 * 3 + i + d as u64 * 50) % 400;
                let mut e = registration(user, ["male", "female"][(i % 2) as usize], i);
                e.time_ms = u64::from(m) * 1000 + i * 1000;
                by_dc.entry(dc).or_default().push(e);
            }
        }
    }
    let servers = [("dc1", "dc1-s1-r1"), ("dc2", "dc2-s1-r1")];
    let minutes = |events: &[ValidEvent]| -> Vec<u32> {
        let set: std::collections::BTreeSet<u32> = events
            .iter()
            .map(|e| (e.time_ms / 60_000 * 60) as u32)
            .collect();
        set.into_iter().collect()
    };
    let ev = &reg.event["registration"];
    let build = |dc: &str, server: &str, hours: &[u32], days: &[u32], version: u64| {
        let ch = cluster.clickhouse(server).unwrap();
        for (coarse, periods) in [(Coarse::Hour, hours), (Coarse::Day, days)] {
            if let Some(sql) = build_sql("spoolhouse", dc, coarse, periods, version, None) {
                ch.query(&sql).unwrap();
            }
        }
    };
    let first_day = MINUTE; // a day start
    let hours: Vec<u32> = (from..to).step_by(H as usize).collect();
    let days = [first_day, first_day + 86_400];
    for (dc, server) in servers {
        insert(&cluster, server, dc, &by_dc[dc], 0);
        let sql = aggregate_minutes_sql(
            "spoolhouse",
            dc,
            "registration",
            ev,
            &minutes(&by_dc[dc]),
            1,
        )
        .unwrap();
        cluster.clickhouse(server).unwrap().query(&sql).unwrap();
        build(dc, server, &hours, &days, 1);
        let built = [
            Some(Built {
                from_s: from,
                through_s: to,
            }),
            Some(Built {
                from_s: first_day,
                through_s: first_day + 2 * 86_400,
            }),
        ];
        let sql = marks_insert_sql("spoolhouse", dc, &built, 1).unwrap();
        cluster.clickhouse(server).unwrap().query(&sql).unwrap();
    }
    let ch = cluster.clickhouse("dc1-s2-r1").unwrap();
    let marks = parse_marks(
        &ch.query(&marks_sql("spoolhouse", "rollup_marks_all"))
            .unwrap(),
    );
    let built = dc_config::steps::built_in_all(&marks, &["dc1", "dc2"]);
    assert_eq!(
        built,
        [
            Some(Built {
                from_s: from,
                through_s: to
            }),
            Some(Built {
                from_s: first_day,
                through_s: first_day + 2 * 86_400
            })
        ]
    );
    let names: Vec<String> = [
        "registration.count()",
        "registration.count(){gender=male}",
        "registration.uniq(user_id)",
        "registration.uniq(user_id){gender=female}",
    ]
    .map(str::to_string)
    .to_vec();
    let compare = |step: u32, range: (u32, u32), coarse_parts: usize| {
        for tables in [dc_config::steps::ALL_TABLES, dc_config::steps::DC_TABLES] {
            let p = parts(range.0, range.1, step, built);
            assert_eq!(
                p.iter().filter(|p| p.coarse.is_some()).count(),
                coarse_parts,
                "{p:?}"
            );
            let minutes_only = parts(range.0, range.1, step, [None, None]);
            let got = stepped(&ch, tables, &names, &p, step);
            assert!(!got.is_empty());
            assert_eq!(got, stepped(&ch, tables, &names, &minutes_only, step));
        }
    };
    // Days (two from days, the last three hours from hours), hours, and a
    // range ending inside an hour.
    compare(86_400, (from, to + 1_800), 2);
    compare(H, (from + 5 * H, to), 1);
    compare(H, (from + H, from + 30 * H + 600), 1);

    // A late event in an old hour: its minute re-aggregated, its hour and
    // day rebuilt with a later version; every step still reads the same.
    let mut late = registration(999, "female", 1);
    let at = from + 20 * H + 7 * 60;
    late.time_ms = u64::from(at) * 1000 + 5;
    insert(&cluster, "dc1-s1-r1", "dc1", &[late], 100_000);
    let ch1 = cluster.clickhouse("dc1-s1-r1").unwrap();
    ch1.query(&aggregate_minutes_sql("spoolhouse", "dc1", "registration", ev, &[at], 2).unwrap())
        .unwrap();
    build("dc1", "dc1-s1-r1", &[from + 20 * H], &[first_day], 2);
    compare(86_400, (from, to), 2);
    compare(H, (from, to), 1);
    let total = |step: u32| -> f64 {
        stepped(
            &ch,
            dc_config::steps::ALL_TABLES,
            &names[..1],
            &parts(from, to, step, built),
            step,
        )
        .iter()
        .map(|l| l.rsplit('\t').next().unwrap().parse::<f64>().unwrap())
        .sum()
    };
    let events: usize = by_dc.values().map(Vec::len).sum();
    assert_eq!(total(86_400), (events + 1) as f64);
    assert_eq!(total(H), (events + 1) as f64);
}
