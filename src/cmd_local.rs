//! `spoolhouse local` and `spoolhouse demo`: real servers for a topology on
//! this machine, through the launcher in `dc_config::local`.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use dc_config::local::{LaunchOptions, LocalCluster, INTERRUPTED};
use dc_config::render::ddl::table;
use dc_config::Declared;
use rand::{Rng, SeedableRng};

/// Arguments of `spoolhouse local`.
#[derive(Debug, Args)]
pub struct LocalArgs {
    #[command(subcommand)]
    command: LocalCommand,
}

#[derive(Debug, Subcommand)]
enum LocalCommand {
    /// Start every server of the topology on free loopback ports, apply the
    /// schema, print where each listens, and run until Ctrl-C.
    Up {
        #[command(flatten)]
        files: Files,
        /// Keep state (data, logs, rendered configs) here across runs; by
        /// default a temporary directory, removed on exit.
        #[arg(long)]
        state: Option<PathBuf>,
        #[command(flatten)]
        link: LinkArgs,
    },
}

#[derive(Debug, Args)]
struct LinkArgs {
    /// Delay each way between datacenters, added by a relay on every
    /// cross-DC path (cut and heal a DC with `spoolhouse dc cut|heal`);
    /// 0: servers dial each other directly.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=5_000))]
    cross_dc_delay_ms: u64,
}

impl LinkArgs {
    fn delay(&self) -> Option<Duration> {
        (self.cross_dc_delay_ms > 0).then(|| Duration::from_millis(self.cross_dc_delay_ms))
    }
}

#[derive(Debug, Args)]
struct Files {
    /// Topology file (TOML).
    #[arg(default_value = "examples/two-dc.toml")]
    topology: PathBuf,
    /// Event registry file (TOML).
    #[arg(default_value = "examples/events.toml")]
    registry: PathBuf,
}

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
}

fn install_ctrlc() -> anyhow::Result<()> {
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")
}

fn launch(files: &Files, state: Option<PathBuf>, link: &LinkArgs) -> anyhow::Result<LocalCluster> {
    let declared = Declared::load(&files.topology, &files.registry)?;
    let started = Instant::now();
    let opts = LaunchOptions {
        state_dir: state,
        cross_dc_delay: link.delay(),
        ..LaunchOptions::default()
    };
    let cluster = LocalCluster::start(&declared, opts).context("starting the local servers")?;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        state_dir = %cluster.state_dir().display(),
        "local servers ready, schema applied"
    );
    Ok(cluster)
}

fn print_endpoints(cluster: &LocalCluster) {
    for dc in &cluster.topology().datacenter {
        println!("{}:", dc.name);
        for z in &dc.zookeeper {
            println!("  zookeeper   {}:{}", z.host, z.port);
        }
        for r in dc.replicas() {
            println!(
                "  clickhouse  {}  http {}  tcp {}",
                r.name(),
                r.http_url(),
                r.replica.tcp_port
            );
        }
        for n in &dc.redis.nodes {
            println!("  redis       {n}");
        }
    }
    println!("state: {}", cluster.state_dir().display());
}

/// Runs `spoolhouse local …`.
pub fn run(args: LocalArgs) -> anyhow::Result<()> {
    install_ctrlc()?;
    match args.command {
        LocalCommand::Up { files, state, link } => {
            let cluster = launch(&files, state, &link)?;
            print_endpoints(&cluster);
            if let Some(d) = link.delay() {
                println!(
                    "cross-DC links: {} ms each way; `spoolhouse dc cut DC --state {}` cuts one",
                    d.as_millis(),
                    cluster.state_dir().display()
                );
            }
            println!("running; Ctrl-C stops every server");
            while !INTERRUPTED.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
            }
            drop(cluster);
            Ok(())
        }
    }
}

/// Sample traffic of the registry's demo types as wire lines: registrations,
/// votes, screen views and watch progress over the last `minutes` minutes,
/// users drawn from a range both datacenters share.
/// Minutes (counted back from the current one) of the injected drop: iOS
/// screen views fall by 80 % in minutes now-4, now-3 and now-2, for the
/// drop detection to find.
const DROP_MINUTES: std::ops::Range<u64> = 2..5;

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

/// One datacenter's Spoolhouse services, run as child processes of the demo
/// or a benchmark (they die with it, like the servers).
pub(crate) struct Services {
    /// Collector, shipper and query service, in that order.
    pub(crate) procs: Vec<dc_config::local::process::Proc>,
    pub(crate) socket: PathBuf,
    pub(crate) query: std::net::SocketAddr,
    shipper_state: PathBuf,
}

/// Starts `dc_name`'s collector, shipper (with `shipper_limits`) and query
/// service as child processes, from configs rendered for the cluster.
pub(crate) fn start_services(
    cluster: &LocalCluster,
    dc_name: &str,
    shipper_limits: dc_config::services::ShipperLimits,
) -> anyhow::Result<Services> {
    use dc_config::local::process::{Proc, Spec};
    use dc_config::services::{CollectorConfig, QueryConfig, ShipperConfig};
    let t = cluster.topology();
    let dc = t.dc(dc_name).expect("a DC of this topology");
    let dir = cluster.state_dir().join("services").join(dc_name);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("events.toml"), &cluster.declared().registry_text)?;
    let mut shipper = ShipperConfig::for_dc(t, dc);
    shipper.limits = shipper_limits;
    let configs = [
        ("collector", toml::to_string(&CollectorConfig::for_dc(dc))?),
        ("shipper", toml::to_string(&shipper)?),
        ("query", toml::to_string(&QueryConfig::for_dc(t, dc))?),
    ];
    let exe = std::env::current_exe().context("finding the spoolhouse binary")?;
    let mut procs = Vec::new();
    for (name, text) in configs {
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(&cfg, text)?;
        let spec = Spec {
            program: exe.clone(),
            args: vec![name.into(), "--config".into(), cfg.display().to_string()],
            cwd: dir.clone(),
            log: dir.join(format!("{name}.log")),
        };
        procs.push(
            Proc::spawn(format!("{dc_name} {name}"), spec)
                .with_context(|| format!("starting the {name} of {dc_name}"))?,
        );
    }
    Ok(Services {
        procs,
        socket: dc.collector.socket.clone(),
        query: dc.query.listen,
        shipper_state: shipper.state_dir.clone(),
    })
}

impl Services {
    /// Waits until the collector's socket exists and the query service is healthy.
    pub(crate) fn wait_ready(&self, dc_name: &str) -> anyhow::Result<()> {
        wait_until(
            &format!("{dc_name}'s collector socket"),
            Duration::from_secs(30),
            || self.socket.exists(),
        )?;
        wait_until(
            &format!("{dc_name}'s query service"),
            Duration::from_secs(30),
            || query_get(self.query, "/healthz").is_ok_and(|v| v["ok"] == true),
        )
    }
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> anyhow::Result<()> {
    let until = Instant::now() + limit;
    while !ok() {
        if INTERRUPTED.load(Ordering::SeqCst) {
            anyhow::bail!("interrupted");
        }
        if Instant::now() > until {
            anyhow::bail!(
                "{what} did not happen within {} s; logs are under the state directory",
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A GET to a query service; the body as JSON.
pub(crate) fn query_get(
    addr: std::net::SocketAddr,
    path: &str,
) -> anyhow::Result<serde_json::Value> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).with_context(|| format!("answer of {path}: {out}"))
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
        for server in cluster
            .topology()
            .dc(&last)
            .expect("checked")
            .replicas()
            .map(|r| r.name())
            .collect::<Vec<_>>()
        {
            cluster.kill(&server)?;
        }
        format!("{last}'s ClickHouse down")
    };
    let v = query_get(q, &report)?;
    println!("\nWith {how}, asked again:");
    print_report(&v);
    println!(
        "\nDone in {:.1} s; stopping every service and server.",
        started.elapsed().as_secs_f64()
    );
    Ok(())
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
