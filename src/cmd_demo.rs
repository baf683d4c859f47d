//! `spoolhouse demo`, the main job: two datacenters from the launcher, each
//! with its collector, shipper and query service, sample traffic into each,
//! then global figures, the injected drop found, a global report, and the
//! same report partial with one DC cut off.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;
use dc_config::local::{LocalCluster, INTERRUPTED};
use dc_config::render::ddl::table;
use rand::{Rng, SeedableRng};

use crate::cmd_local::{
    install_ctrlc, launch, query_get, start_services, wait_until, Files, LinkArgs, Services,
};

/// Arguments of `spoolhouse demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    files: Files,
    /// Events sent to each datacenter's collector.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    events_per_dc: u64,
    #[command(flatten)]
    link: LinkArgs,
    /// After the report, bring the cut datacenter back and keep every
    /// server and service running until Ctrl-C, printing the address of
    /// each datacenter's web console.
    #[arg(long)]
    stay: bool,
}

/// Minutes (counted back from the current one) of the injected drop: iOS
/// screen views fall by 80 % in minutes now-4, now-3 and now-2, for the
/// drop detection to find.
const DROP_MINUTES: std::ops::Range<u64> = 2..5;

/// Sample traffic of the registry's demo types as wire lines: registrations,
/// votes, screen views and watch progress over the last `minutes` minutes,
/// users drawn from a range both datacenters share.
fn sample_lines(n: usize, seed: u64, now_ms: u64, minutes: u64) -> Vec<String> {
    let now_minute = now_ms / 60_000;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let genders = ["male", "female", "unknown"];
    let platforms = ["web", "ios", "android"];
    let screens = ["home", "search", "profile", "chat", "settings"];
    (0..n)
        .map(|_| {
            let time = now_ms - rng.random_range(60_000..minutes * 60_000);
            let user = rng.random_range(1..5_000u64);
            let line = match rng.random_range(0..4) {
                0 => serde_json::json!({"event": "registration", "time": time, "attrs": {
                    "user_id": user, "gender": genders[rng.random_range(0..3)],
                    "country_id": rng.random_range(1..60u16)}}),
                1 => serde_json::json!({"event": "watch_progress", "time": time, "attrs": {
                    "user_id": user, "video_id": rng.random_range(1..300u64),
                    "video_time": rng.random_range(0..7200u32)}}),
                2 => serde_json::json!({"event": "vote", "time": time, "attrs": {
                    "user_id": user, "target_user_id": rng.random_range(1..5_000u64),
                    "vote": if rng.random_bool(0.6) { "yes" } else { "no" },
                    "country_id": rng.random_range(1..60u16)}}),
                _ => {
                    let mut platform = platforms[rng.random_range(0..3)];
                    let ago = now_minute - time / 60_000;
                    if platform == "ios" && DROP_MINUTES.contains(&ago) && rng.random_bool(0.8) {
                        platform = "android";
                    }
                    serde_json::json!({"event": "screen_view", "time": time, "attrs": {
                        "user_id": user, "screen": screens[rng.random_range(0..5)],
                        "platform": platform,
                        "load_ms": rng.random_range(20..2_000u32)}})
                }
            };
            line.to_string()
        })
        .collect()
}

fn pending_minutes(state_dir: &std::path::Path) -> usize {
    std::fs::read_to_string(state_dir.join("aggregation.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["minutes"].as_object().map(|m| m.len()))
        .unwrap_or(usize::MAX)
}

/// Runs the main job: two DCs, each with its collector, shipper and query
/// service; sample traffic into each DC's collector; then a global report.
pub fn demo(args: DemoArgs) -> anyhow::Result<()> {
    install_ctrlc()?;
    let started = Instant::now();
    let mut cluster = launch(&args.files, None, &args.link)?;
    println!(
        "{} datacenters up in {:.1} s: {} servers, schema applied; {}",
        cluster.topology().datacenter.len(),
        started.elapsed().as_secs_f64(),
        cluster.servers().len(),
        match args.link.delay() {
            Some(d) => format!("{} ms each way between datacenters", d.as_millis()),
            None => "datacenters linked directly".to_string(),
        }
    );
    let names: Vec<String> = cluster
        .topology()
        .datacenter
        .iter()
        .map(|d| d.name.clone())
        .collect();
    // Short waits: the demo's minutes are in the past, and it wants them aggregated now.
    let shipper_limits = dc_config::services::ShipperLimits {
        batch_age_ms: 200,
        aggregation_grace_ms: 500,
        ..Default::default()
    };
    let services: Vec<Services> = names
        .iter()
        .map(|n| start_services(&cluster, n, shipper_limits.clone()))
        .collect::<anyhow::Result<_>>()?;
    for (n, s) in names.iter().zip(&services) {
        s.wait_ready(n)?;
    }
    println!("collector, shipper and query service running in each datacenter");

    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let minutes = 10;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut acked_total = 0u64;
    for (d, (n, s)) in names.iter().zip(&services).enumerate() {
        let lines = sample_lines(args.events_per_dc as usize, d as u64 + 1, now_ms, minutes);
        let sending = Instant::now();
        let outcomes = rt.block_on(async {
            let endpoint = collector::Endpoint::Unix(s.socket.clone());
            let mut client =
                collector::Client::connect(endpoint, collector::ClientConfig::default()).await?;
            let mut all = Vec::with_capacity(lines.len());
            for chunk in lines.chunks(1_000) {
                all.extend(client.send_batch(chunk).await?);
            }
            Ok::<_, collector::ClientError>(all)
        })?;
        let acked = outcomes
            .iter()
            .filter(|o| matches!(o, collector::LineOutcome::Acked))
            .count();
        acked_total += acked as u64;
        println!(
            "{n}: {} events sent to the collector over its Unix socket, {acked} acknowledged, in {:.2} s",
            lines.len(),
            sending.elapsed().as_secs_f64()
        );
    }
    let db = cluster.topology().database.clone();
    let first = cluster.topology().datacenter[0]
        .replicas()
        .next()
        .expect("checked")
        .name();
    let ch = cluster.clickhouse(&first)?;
    let shipped = || -> u64 {
        ch.query(&format!("SELECT count() FROM {db}.{}", table::EVENTS_ALL))
            .ok()
            .and_then(|b| b.trim().parse().ok())
            .unwrap_or(0)
    };
    wait_until(
        "shipping every acknowledged event",
        Duration::from_secs(120),
        || shipped() >= acked_total,
    )?;
    wait_until("aggregating every minute", Duration::from_secs(120), || {
        services
            .iter()
            .all(|s| pending_minutes(&s.shipper_state) == 0)
    })?;
    println!(
        "all {acked_total} acknowledged events shipped (exactly once: {}), every minute aggregated",
        {
            let r = ch.query(&format!(
                "SELECT count() = uniqExact(dc, host, spool_segment, spool_offset) FROM {db}.{}",
                table::EVENTS_ALL
            ))?;
            if r.trim() == "1" {
                "yes"
            } else {
                "NO"
            }
        }
    );

    let report = format!(
        "SELECT dc, event, count() AS events, \
         uniqExact(attr_values[indexOf(attr_names, 'user_id')]) AS users \
         FROM {db}.{} GROUP BY dc, event ORDER BY dc, event FORMAT PrettyCompactNoEscapes",
        table::EVENTS_ALL
    );
    println!(
        "\nRaw events through {db}.{} (asked of {first}):",
        table::EVENTS_ALL
    );
    print!("{}", ch.query(&report)?);

    let q = services[0].query;
    let from = (now_ms / 1000 - minutes * 60) as u32;
    let from = from - from % 3600;
    let to = (now_ms / 1000) as u32 + 60;
    println!("\nGlobal figures from the query service of {} (aggregate states merged across datacenters):", names[0]);
    for (metric, label) in [
        ("registration.uniq(user_id)", "distinct registering users"),
        (
            "registration.count(){gender=female}",
            "registrations, female",
        ),
        ("vote.count(){vote=yes}", "yes votes"),
        (
            "screen_view.max(load_ms){platform=ios}",
            "slowest iOS screen load, ms",
        ),
    ] {
        // Per hour: a sum or a maximum over several hours would be wrong
        // for uniques and maxima, so each hour is shown.
        let path = format!(
            "/v1/series?metric={}&from={from}&to={to}&step=hour",
            encode(metric)
        );
        let v = query_get(q, &path)?;
        println!(
            "  {label:<30} {:<30} ({metric}, partial: {})",
            hourly(&v),
            v["partial"]
        );
    }
    let v = query_get(
        q,
        &format!(
            "/v1/series?metric={}&from={}&to={to}&step=minute",
            encode("vote.count()"),
            to - 60 * (minutes as u32 + 1)
        ),
    )?;
    let points = v["series"][0]["points"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    println!(
        "  votes per minute, both datacenters: {}",
        points
            .iter()
            .map(|p| p[1].to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );

    // The injected drop, drawn and then found.
    let now_minute = (now_ms / 60_000) as u32;
    let (drop_from, drop_to) = (
        (now_minute - DROP_MINUTES.end as u32 + 1) * 60,
        (now_minute - DROP_MINUTES.start as u32 + 1) * 60,
    );
    let ios = "screen_view.count(){platform=ios}";
    let v = query_get(
        q,
        &format!(
            "/v1/series?metric={}&from={}&to={drop_to}&step=minute",
            encode(ios),
            drop_to - 60 * (minutes as u32 - 1)
        ),
    )?;
    let values: Vec<f64> = v["series"][0]["points"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p[1].as_f64())
        .collect();
    println!(
        "\n{ios} per minute: {}  ({})",
        sparkline(&values),
        values
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let path = format!(
        "/v1/drops?event=screen_view&from={drop_from}&to={drop_to}&reference=previous&direction=down&limit=3"
    );
    let v = query_get(q, &path)?;
    println!(
        "Top drops of screen_view, its last 3 closed minutes against the 3 before (GET {path}):"
    );
    for c in v["changes"].as_array().into_iter().flatten() {
        println!(
            "  {:<50} {:>6} -> {:<6} {:>+4.0} %  score {:.1}",
            c["series"].as_str().unwrap_or(""),
            number(&c["reference"]),
            number(&c["current"]),
            c["change"].as_f64().unwrap_or(0.0) * 100.0,
            c["score"].as_f64().unwrap_or(0.0)
        );
    }

    let report = format!(
        "/v1/report?event=registration&group_by=gender&from={from}&to={}",
        to - to % 60
    );
    let started_report = Instant::now();
    let v = query_get(q, &report)?;
    println!(
        "\nGlobal report, registrations by gender over the range (GET {report}, {:.0} ms):",
        started_report.elapsed().as_secs_f64() * 1000.0
    );
    print_report(&v);

    // A datacenter cut off: global answers go on, and say what they miss.
    let last = names.last().expect("checked").clone();
    let how = if args.link.delay().is_some() {
        cluster.cut(&last)?;
        // The relays look at the cut flag every few tens of milliseconds.
        std::thread::sleep(dc_config::local::link::CUT_POLL * 3);
        format!("{last} cut off (its links dropped)")
    } else {
        for server in clickhouse_servers(&cluster, &last) {
            cluster.kill(&server)?;
        }
        format!("{last}'s ClickHouse down")
    };
    let v = query_get(q, &report)?;
    println!("\nWith {how}, asked again:");
    print_report(&v);
    if args.stay {
        if args.link.delay().is_some() {
            cluster.heal(&last)?;
        } else {
            for server in clickhouse_servers(&cluster, &last) {
                cluster.restart(&server)?;
            }
        }
        println!("\n{last} is back. The web console of each datacenter:");
        for s in &services {
            println!("  http://{}/console/", s.query);
        }
        println!("running; Ctrl-C stops every service and server");
        while !INTERRUPTED.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!(
        "\nDone in {:.1} s; stopping every service and server.",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The ClickHouse servers of datacenter `dc`, by launcher name.
fn clickhouse_servers(cluster: &LocalCluster, dc: &str) -> Vec<String> {
    cluster
        .topology()
        .dc(dc)
        .expect("a DC of this topology")
        .replicas()
        .map(|r| r.name())
        .collect()
}

/// A figure as text; counts and uniques are whole numbers, printed so.
fn number(v: &serde_json::Value) -> String {
    match v.as_f64() {
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{}", x as i64),
        _ => v.to_string(),
    }
}

/// `values` as a one-line bar chart, scaled to their maximum.
fn sparkline(values: &[f64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    values
        .iter()
        .map(|v| {
            if max <= 0.0 {
                BARS[0]
            } else {
                BARS[((v / max) * 7.0).round().clamp(0.0, 7.0) as usize]
            }
        })
        .collect()
}

/// A `/v1/report` answer as a small table, with what it covered.
fn print_report(v: &serde_json::Value) {
    let strings = |key: &str| -> Vec<String> {
        v[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(String::from))
            .collect()
    };
    let (metrics, groups) = (strings("metrics"), strings("group_by"));
    println!(
        "  {:<12} {}",
        groups.join(","),
        metrics
            .iter()
            .map(|m| format!("{m:>16}"))
            .collect::<String>()
    );
    for row in v["rows"].as_array().into_iter().flatten() {
        let dims: Vec<&str> = groups
            .iter()
            .map(|g| row["dimensions"][g].as_str().unwrap_or(""))
            .collect();
        let values: String = metrics
            .iter()
            .map(|m| format!("{:>16}", number(&row["values"][m])))
            .collect();
        println!("  {:<12} {values}", dims.join(","));
    }
    println!("  partial: {}, missing: {}", v["partial"], v["missing"]);
}

/// The first series of a `/v1/series` answer as `HH:00 UTC: value` per hour.
fn hourly(v: &serde_json::Value) -> String {
    v["series"][0]["points"]
        .as_array()
        .map(|p| {
            p.iter()
                .map(|x| {
                    format!(
                        "{:02}:00 UTC: {}",
                        (x[0].as_u64().unwrap_or(0) / 3600) % 24,
                        x[1]
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// Percent-encodes a query value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b'(' | b')' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
