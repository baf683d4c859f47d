//! `spoolhouse local` and `spoolhouse demo`: real servers for a topology on
//! this machine, through the launcher in `dc_config::local`.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use dc_config::event::{validate, Event};
use dc_config::local::{LaunchOptions, LocalCluster, INTERRUPTED};
use dc_config::render::ddl::table;
use dc_config::row::{EventRow, SpoolPosition, EVENT_COLUMNS};
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
    },
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
    /// Events written into each datacenter.
    #[arg(long, default_value_t = 1000)]
    events_per_dc: usize,
}

fn install_ctrlc() -> anyhow::Result<()> {
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")
}

fn launch(files: &Files, state: Option<PathBuf>) -> anyhow::Result<LocalCluster> {
    let declared = Declared::load(&files.topology, &files.registry)?;
    let started = Instant::now();
    let opts = LaunchOptions {
        state_dir: state,
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
        LocalCommand::Up { files, state } => {
            let cluster = launch(&files, state)?;
            print_endpoints(&cluster);
            println!("running; Ctrl-C stops every server");
            while !INTERRUPTED.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
            }
            drop(cluster);
            Ok(())
        }
    }
}

/// Sample events of the registry's demo types, validated like any other.
fn sample_events(
    declared: &Declared,
    n: usize,
    seed: u64,
    now_ms: u64,
) -> anyhow::Result<Vec<Event>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let genders = ["male", "female", "unknown"];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let time = now_ms - rng.random_range(0..3_600_000);
        let user = rng.random_range(1..5_000u64);
        let line = match rng.random_range(0..3) {
            0 => serde_json::json!({"event": "registration", "time": time, "attrs": {
                "user_id": user, "gender": genders[rng.random_range(0..3)],
                "country_id": rng.random_range(1..60u16)}}),
            1 => serde_json::json!({"event": "watch_progress", "time": time, "attrs": {
                "user_id": user, "video_id": rng.random_range(1..300u64),
                "video_time": rng.random_range(0..7200u32)}}),
            _ => serde_json::json!({"event": "vote", "time": time, "attrs": {
                "user_id": user, "target_user_id": rng.random_range(1..5_000u64),
                "vote": if rng.random_bool(0.6) { "yes" } else { "no" },
                "country_id": rng.random_range(1..60u16)}}),
        };
        let ev = Event::from_json(line)?;
        validate(&ev, &declared.registry)
            .with_context(|| format!("demo event {:?} does not fit the registry", ev.event))?;
        out.push(ev);
    }
    Ok(out)
}

/// Runs the main job.
pub fn demo(args: DemoArgs) -> anyhow::Result<()> {
    install_ctrlc()?;
    let started = Instant::now();
    let cluster = launch(&args.files, None)?;
    println!(
        "{} datacenters up in {:.1} s: {} servers, schema applied",
        cluster.topology().datacenter.len(),
        started.elapsed().as_secs_f64(),
        cluster.servers().len()
    );
    let declared = cluster.declared().clone();
    let db = &declared.topology.database;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    for (d, dc) in declared.topology.datacenter.iter().enumerate() {
        let events = sample_events(&declared, args.events_per_dc, d as u64 + 1, now_ms)?;
        // Each shard of the DC gets an equal slice, inserted into its own
        // events_local as the shipper will.
        let shards = dc.clickhouse.shard.len();
        for s in 0..shards {
            let server = dc
                .replicas()
                .find(|r| r.shard == s + 1)
                .expect("checked: every shard has a replica");
            let mut body = Vec::new();
            for (i, ev) in events.iter().enumerate().filter(|(i, _)| i % shards == s) {
                let valid = validate(ev, &declared.registry)?;
                let pos = SpoolPosition {
                    segment: 0,
                    offset: i as u64,
                };
                EventRow::new(&valid, &dc.name, &dc.host, pos).write_row_binary(&mut body);
            }
            let sql = format!(
                "INSERT INTO {db}.{} ({EVENT_COLUMNS}) FORMAT RowBinary",
                table::EVENTS_LOCAL
            );
            cluster.clickhouse(&server.name())?.insert(&sql, &body)?;
        }
        println!(
            "{}: wrote {} events into {} shard(s)",
            dc.name,
            events.len(),
            shards
        );
    }
    let first = declared.topology.datacenter[0]
        .replicas()
        .next()
        .expect("checked")
        .name();
    let report = format!(
        "SELECT dc, event, count() AS events, \
         uniqExact(attr_values[indexOf(attr_names, 'user_id')]) AS users \
         FROM {db}.{} GROUP BY dc, event ORDER BY dc, event FORMAT PrettyCompactNoEscapes",
        table::EVENTS_ALL
    );
    println!(
        "\nGlobal report through {db}.{} (asked of {first}):",
        table::EVENTS_ALL
    );
    print!("{}", cluster.clickhouse(&first)?.query(&report)?);
    let total = cluster.clickhouse(&first)?.query(&format!(
        "SELECT count(), uniqExact(dc) FROM {db}.{}",
        table::EVENTS_ALL
    ))?;
    println!(
        "total (events, datacenters): {}",
        total.trim().replace('\t', ", ")
    );
    Ok(())
}
