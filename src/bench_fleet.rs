//! `spoolhouse bench fleet`: what a datacenter's fleet size costs at the
//! same total event rate. For each host count, a fresh DC (dc1 of the
//! example topology: ZooKeeper, Redis, ClickHouse 2 shards x 1 replica)
//! with that many app hosts, each a collector and a shipper as child
//! processes; the demo's event mix at `--rate` events/s over the whole DC,
//! dealt equally over the hosts, for `--minutes` whole minutes; then the
//! wait until every host has shipped and every minute is aggregated.
//!
//! Measured per DC-minute of traffic: aggregation rounds (every shipper's
//! count; one aggregator per DC, docs/adr/0014), the seconds those rounds
//! took, ClickHouse's CPU seconds (its servers' own, from /proc: inserts,
//! merges and aggregation together), the fleet's CPU seconds; per second
//! of traffic: INSERT statements each shard received (ClickHouse's own
//! `InsertQuery` count), ZooKeeper write transactions (its zxid) and
//! packets. The 1-host case is the same-run reference: the goal is the same
//! aggregation work with 32 hosts as with 1. `--relays 0,2` runs every host
//! count direct and through 2 relays (relay mode, docs/adr/0017): inserts
//! per shard and the send-to-visible lag, direct against relay.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Args;
use collector::{Client, ClientConfig, Endpoint, LineOutcome};
use dc_config::event::now_ms;
use httpd::exposition::{label_value, samples};
use launcher::services::Services;
use launcher::{LaunchOptions, LocalCluster};
use shipper::metrics::names;

use crate::cmd_local::NetworkArg;
use crate::demo_traffic::Mix;
use crate::machine::{cpu_ticks, load_average};

/// Arguments of `spoolhouse bench fleet`.
#[derive(Debug, Args)]
pub struct FleetBench {
    /// App hosts of the DC, one case each.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32", value_parser = clap::value_parser!(u32).range(1..=64))]
    hosts: Vec<u32>,
    /// Events per second over the whole DC, dealt equally over its hosts.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    rate: u64,
    /// Whole minutes of traffic per case (it starts on a minute boundary).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=60))]
    minutes: u32,
    /// Runs of every case; the table gives each run and the median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=9))]
    runs: u32,
    /// Relays of the DC, one case each with every host count: 0 ships
    /// directly (each host's shipper inserts), N > 0 through N relays
    /// (relay mode, docs/adr/0017).
    #[arg(long, value_delimiter = ',', default_value = "0", value_parser = clap::value_parser!(u32).range(0..=8))]
    relays: Vec<u32>,
    /// Where the datacenter runs (as `spoolhouse local up --network`).
    #[arg(long, value_enum, default_value_t = NetworkArg::Loopback)]
    network: NetworkArg,
}

/// How often the visibility lag is sampled.
const LAG_SAMPLE: Duration = Duration::from_millis(500);
/// How often a host's sender sends what is due.
const TICK: Duration = Duration::from_millis(100);
/// Shortest idle reference before the traffic.
const IDLE_MIN: Duration = Duration::from_secs(20);
/// Longest wait, after the traffic, for every host to ship and every
/// minute to be aggregated.
const SETTLE_MAX: Duration = Duration::from_secs(600);

/// What one case measured.
#[derive(Debug, Clone, Default)]
struct Case {
    hosts: u32,
    relays: u32,
    /// Visibility lag samples, ms: every [`LAG_SAMPLE`] during the traffic,
    /// per host, now minus the newest event time ClickHouse holds of it.
    lag_ms: Vec<f64>,
    acked: u64,
    unsent: u64,
    rows: u64,
    rounds: f64,
    round_secs: f64,
    /// Series points (state rows) the aggregation wrote.
    points: f64,
    /// Rounds whose versions ClickHouse kept, per minute (the most of one minute).
    kept_max: u64,
    clickhouse_cpu_s: f64,
    fleet_cpu_s: f64,
    /// CPU seconds per minute with no traffic (the idle reference).
    clickhouse_idle_s: f64,
    fleet_idle_s: f64,
    shipper_batches: f64,
    /// INSERT statements each shard received during the traffic.
    shard_inserts: Vec<u64>,
    zk_writes: u64,
    zk_packets: u64,
    settle_s: f64,
    load: String,
}

/// Runs `spoolhouse bench fleet`.
pub fn run(args: FleetBench) -> anyhow::Result<()> {
    println!(
        "fleet bench: {} cores, load average {} before; one DC (dc1 of the example topology: ClickHouse 18.16 2 shards x 1 replica, ZooKeeper, Redis, {:?} network); {} events/s of the demo's mix over the DC for {} whole minutes per case; default shipper limits; {} run(s) of {:?} hosts",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
        args.network,
        args.rate,
        args.minutes,
        args.runs,
        args.hosts
    );
    let mut cases: Vec<Case> = Vec::new();
    for run in 1..=args.runs {
        for &r in &args.relays {
            for &n in &args.hosts {
                let c = case(&args, n, r)
                    .with_context(|| format!("run {run}, {n} hosts, {r} relays"))?;
                print_case(run, &c, args.minutes);
                cases.push(c);
            }
        }
    }
    println!(
        "\nmedians over {} run(s), per DC-minute of traffic unless said otherwise:",
        args.runs
    );
    println!("| hosts | relays | rounds | round s | points | points/s in rounds | ClickHouse CPU s (idle) | ClickHouse CPU s per 1 M events | fleet CPU s (idle) | shipper inserts/s | inserts/s per shard | visible lag p50 / p99 ms | ZK writes/s | ZK packets/s | settle s |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let m = f64::from(args.minutes);
    let traffic_s = m * 60.0;
    for (&r, &n) in args
        .relays
        .iter()
        .flat_map(|r| args.hosts.iter().map(move |n| (r, n)))
    {
        let of: Vec<&Case> = cases
            .iter()
            .filter(|c| c.hosts == n && c.relays == r)
            .collect();
        let med = |f: &dyn Fn(&Case) -> f64| {
            let mut v: Vec<f64> = of.iter().map(|c| f(c)).collect();
            query::stats::median(&mut v).unwrap_or(f64::NAN)
        };
        let shards = of.first().map_or(0, |c| c.shard_inserts.len());
        let per_shard: Vec<String> = (0..shards)
            .map(|s| format!("{:.1}", med(&|c| c.shard_inserts[s] as f64 / traffic_s)))
            .collect();
        println!(
            "| {n} | {r} | {:.2} | {:.2} | {:.0} | {:.0} | {:.2} ({:.2}) | {:.2} | {:.2} ({:.2}) | {:.1} | {} | {:.0} / {:.0} | {:.1} | {:.1} | {:.1} |",
            med(&|c| c.rounds / m),
            med(&|c| c.round_secs / m),
            med(&|c| c.points / m),
            med(&|c| c.points / c.round_secs.max(1e-9)),
            med(&|c| c.clickhouse_cpu_s / m),
            med(&|c| c.clickhouse_idle_s),
            med(&|c| per_million(c, m)),
            med(&|c| c.fleet_cpu_s / m),
            med(&|c| c.fleet_idle_s),
            med(&|c| c.shipper_batches / traffic_s),
            per_shard.join(" / "),
            med(&|c| quantile(&c.lag_ms, 0.5)),
            med(&|c| quantile(&c.lag_ms, 0.99)),
            med(&|c| c.zk_writes as f64 / traffic_s),
            med(&|c| c.zk_packets as f64 / traffic_s),
            med(&|c| c.settle_s),
        );
    }
    println!("rounds: aggregation rounds every shipper did (one per minute aggregated; a minute touched again while aggregated counts again); round s: their wall time (ClickHouse answering the aggregation statements); points: series points (state rows) they wrote; points/s in rounds: points over round s, what the aggregation turns out while it runs; ClickHouse CPU s per 1 M events: its CPU above idle over the events acknowledged; ClickHouse CPU s: the DC's servers' user+system CPU from the first event until every minute was aggregated (inserts, merges, aggregation), in brackets the same per minute with every service up and no traffic just before; fleet CPU s: every collector's and shipper's, likewise; shipper inserts/s: batches the shippers committed into ClickHouse (in relay mode: batches the relays made visible); inserts/s per shard: INSERT statements each shard's server counted (system.events InsertQuery: the shippers' or relays' batches, the aggregation's INSERT … SELECT, the relays' fence rows); visible lag: every 0.5 s of the traffic, per host, now minus the newest event time ClickHouse holds of that host (events are stamped when sent, so this is the send-to-visible delay of the freshest visible event, the sender's 100 ms tick included); ZK writes/s: ZooKeeper transactions (zxid), packets/s: requests it received; settle s: from the end of the traffic until every host shipped and every minute was aggregated");
    Ok(())
}

/// The `q` quantile of `v` (0 when empty).
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * q).round() as usize]
}

/// ClickHouse's CPU seconds above its idle reference per million events
/// acknowledged (the idle reference is per minute of the whole case's
/// span, taken as the traffic's minutes plus the settling).
fn per_million(c: &Case, minutes: f64) -> f64 {
    let span_min = minutes + c.settle_s / 60.0;
    let busy = (c.clickhouse_cpu_s - c.clickhouse_idle_s * span_min).max(0.0);
    busy / (c.acked.max(1) as f64) * 1e6
}

fn print_case(run: u32, c: &Case, minutes: u32) {
    let m = f64::from(minutes);
    println!(
        "run {run}, {} hosts, {} relays: {} events acknowledged ({} unsent), {} rows in ClickHouse; per DC-minute: {:.2} rounds ({} at most kept for one minute), {:.2} s in rounds, {:.0} series points, ClickHouse CPU {:.2} s (idle {:.2} s; {:.2} s above idle per 1 M events), fleet CPU {:.2} s (idle {:.2} s); {} shipper inserts, INSERTs per shard {:?}, visible lag p50 {:.0} ms p99 {:.0} ms, ZooKeeper {} writes, {} packets; settled {:.1} s after the traffic; load {}",
        c.hosts,
        c.relays,
        c.acked,
        c.unsent,
        c.rows,
        c.rounds / m,
        c.kept_max,
        c.round_secs / m,
        c.points / m,
        c.clickhouse_cpu_s / m,
        c.clickhouse_idle_s,
        per_million(c, m),
        c.fleet_cpu_s / m,
        c.fleet_idle_s,
        c.shipper_batches,
        c.shard_inserts,
        quantile(&c.lag_ms, 0.5),
        quantile(&c.lag_ms, 0.99),
        c.zk_writes,
        c.zk_packets,
        c.settle_s,
        c.load
    );
}

/// One case: a fresh DC of `n` hosts and `relays` relays (0: direct), the
/// traffic, the settling, the figures.
fn case(args: &FleetBench, n: u32, relays: u32) -> anyhow::Result<Case> {
    let mut declared = dc_config::examples::declared();
    declared.topology.datacenter.retain(|dc| dc.name == "dc1");
    declared.topology = launcher::with_app_hosts(&declared.topology, n as usize);
    if relays > 0 {
        declared.topology = launcher::with_relays(&declared.topology, "dc1", relays as usize);
    }
    let mut cluster = LocalCluster::start(
        &declared,
        LaunchOptions {
            network: args.network.into(),
            ..LaunchOptions::default()
        },
    )
    .context("starting ClickHouse, ZooKeeper and Redis")?;
    let dc = cluster.topology().datacenter[0].clone();
    let services = crate::cmd_local::start_services(
        &cluster,
        &dc.name,
        dc_config::services::ShipperLimits::default(),
    )?;
    crate::cmd_local::wait_ready(&services, &dc.name)?;
    let servers: Vec<(usize, String)> = dc.replicas().map(|r| (r.shard - 1, r.name())).collect();
    let shards = dc.clickhouse.shard.len();
    let zk = zookeeper_addr(&dc)?;
    let fleet_pids: Vec<u32> = services
        .hosts
        .iter()
        .flat_map(|h| h.procs)
        .chain(services.relays.iter().map(|(_, _, p)| *p))
        .filter_map(|i| services.procs[i].pid())
        .collect();

    let ch_pids: Vec<u32> = servers.iter().filter_map(|(_, s)| cluster.pid(s)).collect();
    let cpu = |pids: &[u32]| pids.iter().filter_map(|p| cpu_ticks(*p)).sum::<u64>();
    // The idle reference: every server and service up, no traffic, while
    // waiting for a minute boundary at least IDLE_MIN away (the traffic
    // fills whole minutes).
    let idle_started = Instant::now();
    let (ch_idle0, fleet_idle0) = (cpu(&ch_pids), cpu(&fleet_pids));
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let mut wait = Duration::from_secs(60)
        - Duration::from_secs(now.as_secs() % 60)
        - Duration::from_nanos(u64::from(now.subsec_nanos()));
    if wait < IDLE_MIN {
        wait += Duration::from_secs(60);
    }
    std::thread::sleep(wait);
    let per_minute = 60.0 / idle_started.elapsed().as_secs_f64();
    let clickhouse_idle_s = (cpu(&ch_pids) - ch_idle0) as f64 / 100.0 * per_minute;
    let fleet_idle_s = (cpu(&fleet_pids) - fleet_idle0) as f64 / 100.0 * per_minute;
    let (ch_cpu0, fleet_cpu0) = (cpu(&ch_pids), cpu(&fleet_pids));
    let inserts0 = shard_inserts(&cluster, &servers, shards)?;
    let zk0 = zookeeper_counts(zk)?;

    let traffic = Duration::from_secs(u64::from(args.minutes) * 60);
    let senders = send(&services, args.rate, traffic);
    // The visibility lag, sampled while the traffic runs.
    let mut lag_ms = Vec::new();
    {
        let ch = cluster.clickhouse(&servers[0].1)?;
        let sql = format!(
            "SELECT host, max(time_ms) FROM {}.events_dc WHERE time >= now() - 300 GROUP BY host FORMAT TSV",
            cluster.topology().database
        );
        let sampling = Instant::now();
        while sampling.elapsed() + LAG_SAMPLE < traffic {
            std::thread::sleep(LAG_SAMPLE);
            let now = now_ms();
            if let Ok(text) = ch.query(&sql) {
                lag_ms.extend(
                    text.lines()
                        .filter_map(|l| l.split('\t').nth(1)?.parse::<u64>().ok())
                        .map(|t| now.saturating_sub(t) as f64),
                );
            }
        }
    }
    let (acked, unsent) = senders.join()?;
    let traffic_end = Instant::now();
    let inserts1 = shard_inserts(&cluster, &servers, shards)?;
    let zk1 = zookeeper_counts(zk)?;

    // Every acknowledged event shipped, every minute aggregated.
    let ch = cluster.clickhouse(&servers[0].1)?;
    let rows = || -> anyhow::Result<u64> {
        Ok(ch
            .query(&format!(
                "SELECT count() FROM {}.events_dc",
                cluster.topology().database
            ))?
            .trim()
            .parse()?)
    };
    loop {
        let pending: usize = services
            .hosts
            .iter()
            .map(|h| {
                shipper::aggregate::Pending::load(&h.shipper_state)
                    .map_or(usize::MAX, |p| p.minutes.len())
            })
            .sum();
        if pending == 0 && rows()? >= acked {
            break;
        }
        if traffic_end.elapsed() > SETTLE_MAX {
            bail!(
                "{n} hosts: not everything shipped and aggregated {} s after the traffic ({pending} minutes pending):\n{}",
                SETTLE_MAX.as_secs(),
                services.log_tails(10)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let settle_s = traffic_end.elapsed().as_secs_f64();
    let clickhouse_cpu_s = (cpu(&ch_pids) - ch_cpu0) as f64 / 100.0;
    let fleet_cpu_s = (cpu(&fleet_pids) - fleet_cpu0) as f64 / 100.0;
    let load = load_average();
    let (mut rounds, mut round_secs, mut shipper_batches, mut points) = (0.0, 0.0, 0.0, 0.0);
    let round_secs_sum = format!("{}_sum", names::AGGREGATION_SECONDS);
    for h in &services.hosts {
        let text = httpd::client::get_blocking(h.shipper_admin, "/metrics", Duration::from_secs(5))
            .map(|(_, b)| b)
            .with_context(|| format!("reading {}'s shipper metrics", h.name))?;
        for (name, labels, value) in samples(&text) {
            match name {
                names::AGGREGATION_ROUNDS_TOTAL => rounds += value,
                names::SERIES_POINTS_TOTAL => points += value,
                n if n == round_secs_sum => round_secs += value,
                names::BATCHES_TOTAL if label_value(labels, "sink") == Some("clickhouse") => {
                    shipper_batches += value
                }
                _ => {}
            }
        }
    }
    let kept_max = ch
        .query(&format!(
            "SELECT max(v) FROM (SELECT minute, uniqExact(version) AS v FROM {}.metric_states_dc GROUP BY minute)",
            cluster.topology().database
        ))?
        .trim()
        .parse()
        .unwrap_or(0);
    let rows = rows()?;
    drop(services);
    Ok(Case {
        hosts: n,
        relays,
        lag_ms,
        acked,
        unsent,
        rows,
        rounds,
        round_secs,
        points,
        kept_max,
        clickhouse_cpu_s,
        fleet_cpu_s,
        clickhouse_idle_s,
        fleet_idle_s,
        shipper_batches,
        shard_inserts: inserts1.iter().zip(&inserts0).map(|(a, b)| a - b).collect(),
        zk_writes: zk1.0 - zk0.0,
        zk_packets: zk1.1 - zk0.1,
        settle_s,
        load,
    })
}

/// INSERT statements each shard's servers counted so far; `servers` are
/// (0-based shard, server name).
fn shard_inserts(
    cluster: &LocalCluster,
    servers: &[(usize, String)],
    shards: usize,
) -> anyhow::Result<Vec<u64>> {
    let mut out = vec![0; shards];
    for (shard, name) in servers {
        out[*shard] += cluster
            .clickhouse(name)?
            .query("SELECT value FROM system.events WHERE event = 'InsertQuery'")?
            .trim()
            .parse::<u64>()
            .unwrap_or(0);
    }
    Ok(out)
}

fn zookeeper_addr(dc: &dc_config::topology::Datacenter) -> anyhow::Result<SocketAddr> {
    let z = dc.zookeeper.first().context("a DC without ZooKeeper")?;
    (z.host.as_str(), z.port)
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("resolving ZooKeeper {}:{}", z.host, z.port))
}

/// ZooKeeper's transactions (its zxid) and packets received so far.
fn zookeeper_counts(addr: SocketAddr) -> anyhow::Result<(u64, u64)> {
    let stats = launcher::probe::zookeeper_srvr(addr)
        .with_context(|| format!("asking ZooKeeper {addr} for srvr"))?;
    let get = |k: &str| {
        stats
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let zxid = get("Zxid")
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        .context("no Zxid in ZooKeeper's srvr")?;
    let received = get("Received")
        .and_then(|v| v.parse().ok())
        .context("no Received in ZooKeeper's srvr")?;
    Ok((zxid, received))
}

/// The traffic's senders, one thread per app host.
struct Senders {
    threads: Vec<std::thread::JoinHandle<anyhow::Result<()>>>,
    acked: Arc<AtomicU64>,
    unsent: Arc<AtomicU64>,
}

impl Senders {
    /// Waits for every sender; events acknowledged and left unsent.
    fn join(self) -> anyhow::Result<(u64, u64)> {
        for t in self.threads {
            t.join()
                .map_err(|_| anyhow::anyhow!("a sender panicked"))??;
        }
        Ok((
            self.acked.load(Ordering::SeqCst),
            self.unsent.load(Ordering::SeqCst),
        ))
    }
}

/// Sends `rate` events/s of the demo's mix for `traffic`, dealt equally over
/// the hosts' collectors (each on its Unix socket, a batch every [`TICK`]).
fn send(services: &Services, rate: u64, traffic: Duration) -> Senders {
    let acked = Arc::new(AtomicU64::new(0));
    let unsent = Arc::new(AtomicU64::new(0));
    let n = services.hosts.len() as u64;
    let started = Instant::now();
    // The first event's minute: the traffic starts on its boundary.
    let started_ms = now_ms() / 60_000 * 60_000;
    let threads = services
        .hosts
        .iter()
        .enumerate()
        .map(|(k, h)| {
            // Host k's share: rate / n, the remainder to the first hosts.
            let share = rate / n + u64::from((k as u64) < rate % n);
            let socket = h.socket.clone();
            let (acked, unsent) = (acked.clone(), unsent.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let mut client =
                        Client::connect(Endpoint::Unix(socket), ClientConfig::default()).await?;
                    let mut mix = Mix::new(k as u64 + 1);
                    let mut sent = 0u64;
                    // Events are stamped with the clock: none past the
                    // traffic's last minute.
                    let end_ms = started_ms + traffic.as_millis() as u64;
                    while now_ms() < end_ms {
                        let due = (started.elapsed().as_secs_f64() * share as f64) as u64;
                        let lines: Vec<String> = (sent..due)
                            .filter_map(|_| Some(now_ms()).filter(|t| *t < end_ms))
                            .filter_map(|t| mix.event(t, 1.0))
                            .collect();
                        sent = due;
                        for o in client.send_batch(&lines).await? {
                            match o {
                                LineOutcome::Acked => acked.fetch_add(1, Ordering::Relaxed),
                                _ => unsent.fetch_add(1, Ordering::Relaxed),
                            };
                        }
                        tokio::time::sleep(TICK).await;
                    }
                    anyhow::Ok(())
                })
            })
        })
        .collect();
    Senders {
        threads,
        acked,
        unsent,
    }
}
