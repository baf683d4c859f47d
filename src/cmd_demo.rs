//! `spoolhouse demo`, the main job: two datacenters from the launcher, each
//! with its collector, shipper and query service; four days of history and
//! about a minute of live traffic through each DC's collector, with a live
//! progress line; then, once everything acknowledged is shipped and
//! aggregated, what the query service makes of it: a daily curve, the
//! injected drop and anomaly found first, a global report, the same report
//! partial with one DC cut off, and the URLs to try.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use collector::{Client, ClientConfig, Endpoint, LineOutcome};
use dc_config::schema::table;
use launcher::{LocalCluster, INTERRUPTED};

use crate::cmd_local::{
    http_get, install_ctrlc, launch, query_get, start_services, wait_ready, wait_until, Files,
    LinkArgs,
};
use crate::demo_traffic::{self as traffic, Mix, Plan};
use dc_config::event::now_ms;
use launcher::services::Services;

/// Arguments of `spoolhouse demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    files: Files,
    /// Seconds of live traffic, after the history is sent.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    seconds: u64,
    /// Live events per second sent to each datacenter's collector.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    rate: u64,
    #[command(flatten)]
    link: LinkArgs,
    /// App hosts per datacenter, each with its own collector, shipper and
    /// spool; the traffic is spread over them, and one host of the first
    /// DC is killed (SIGKILL) and restarted during the live traffic.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=16))]
    hosts: u64,
    /// The datacenter whose app hosts ship through a relay (relay mode,
    /// docs/adr/0017): `<dc>-relay1`, one per DC; the others insert
    /// directly. `--relay-dc none`: every DC direct.
    #[arg(long, default_value = "dc1")]
    relay_dc: String,
    /// After the summary, with the cut datacenter back, keep every server
    /// and service running until Ctrl-C, so the printed URLs and each
    /// datacenter's web console can be tried.
    #[arg(long)]
    stay: bool,
}

/// Lines per collector batch: large enough to pipeline, small enough that
/// one batch's acknowledgement comes back within milliseconds.
const BATCH_LINES: usize = 1_000;
/// How often the live load sends what is due.
const LIVE_TICK: Duration = Duration::from_millis(50);
/// Most lines one live tick sends: a collector that fell behind is caught
/// up on in bounded steps, never with one huge batch.
const LIVE_BATCH_MAX: u64 = 5_000;
/// Longest wait for shipping or aggregation after the load: the backfill
/// ships in seconds on an idle machine; a shared one is slower.
const DRAIN_LIMIT: Duration = Duration::from_secs(300);
/// How often the progress line is redrawn on a terminal, and how often a
/// new one is printed when stdout is not a terminal (a log, a test).
const PROGRESS_TTY: Duration = Duration::from_secs(1);
const PROGRESS_LOG: Duration = Duration::from_secs(5);

/// What the load did on one app host, shared with the progress line.
#[derive(Debug, Default)]
struct Load {
    /// Set to hold this host's live traffic (its host is about to go down):
    /// an app keeps its events while its collector is away.
    hold: AtomicBool,
    /// Set by the sender once it holds, with no batch in flight.
    held: AtomicBool,
    sent: AtomicU64,
    acked: AtomicU64,
    /// Acknowledged events of the history and recent minutes.
    backfill_acked: AtomicU64,
    /// Rejected by the collector, or not stored after every retry.
    refused: AtomicU64,
    /// Why the first refused event was refused.
    first_refusal: Mutex<Option<String>>,
    /// The newest acknowledged watch progress (user, video), to read back.
    last_watch: Mutex<Option<(u64, u64)>>,
}

impl Load {
    fn record(&self, lines: &[String], outcomes: &[LineOutcome]) -> u64 {
        let acked = outcomes
            .iter()
            .filter(|o| matches!(o, LineOutcome::Acked))
            .count() as u64;
        self.sent.fetch_add(lines.len() as u64, Ordering::Relaxed);
        self.acked.fetch_add(acked, Ordering::Relaxed);
        self.refused
            .fetch_add(lines.len() as u64 - acked, Ordering::Relaxed);
        let refusal = outcomes.iter().find_map(|o| match o {
            LineOutcome::Acked => None,
            LineOutcome::Rejected { error, .. } => Some(format!("rejected: {error}")),
            LineOutcome::Unsent { reason } => Some(format!("not stored: {reason}")),
        });
        if let Some(r) = refusal {
            self.first_refusal
                .lock()
                .expect("load lock")
                .get_or_insert(r);
        }
        let watch = lines
            .iter()
            .zip(outcomes)
            .rev()
            .find(|(l, o)| matches!(o, LineOutcome::Acked) && l.contains("\"watch_progress\""));
        if let Some(v) = watch.and_then(|(l, _)| serde_json::from_str::<serde_json::Value>(l).ok())
        {
            let key = (
                v["attrs"]["user_id"].as_u64(),
                v["attrs"]["video_id"].as_u64(),
            );
            if let (Some(u), Some(v)) = key {
                *self.last_watch.lock().expect("load lock") = Some((u, v));
            }
        }
        acked
    }
}

async fn connect(socket: &std::path::Path) -> anyhow::Result<Client> {
    Client::connect(
        Endpoint::Unix(socket.to_path_buf()),
        ClientConfig::default(),
    )
    .await
    .with_context(|| format!("connecting to the collector at {}", socket.display()))
}

/// Sends the history and recent minutes through the collector.
async fn send_backfill(
    socket: std::path::PathBuf,
    lines: Vec<String>,
    load: Arc<Load>,
) -> anyhow::Result<()> {
    let mut client = connect(&socket).await?;
    for chunk in lines.chunks(BATCH_LINES) {
        if INTERRUPTED.load(Ordering::SeqCst) {
            break;
        }
        let outcomes = client.send_batch(chunk).await?;
        let acked = load.record(chunk, &outcomes);
        load.backfill_acked.fetch_add(acked, Ordering::Relaxed);
    }
    Ok(())
}

/// Sends `rate` events a second, stamped with the current time, for
/// `seconds` (or until Ctrl-C).
async fn send_live(
    socket: std::path::PathBuf,
    load: Arc<Load>,
    rate: u64,
    seconds: u64,
    seed: u64,
) -> anyhow::Result<()> {
    let mut client = connect(&socket).await?;
    let mut mix = Mix::new(seed);
    let mut tick = tokio::time::interval(LIVE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let mut done = 0u64;
    while Instant::now() < until && !INTERRUPTED.load(Ordering::SeqCst) {
        tick.tick().await;
        if load.hold.load(Ordering::SeqCst) {
            load.held.store(true, Ordering::SeqCst);
            continue;
        }
        load.held.store(false, Ordering::SeqCst);
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        let n = due.saturating_sub(done).min(LIVE_BATCH_MAX);
        if n == 0 {
            continue;
        }
        done += n;
        let t = now_ms();
        let lines: Vec<String> = (0..n).filter_map(|_| mix.event(t, 1.0)).collect();
        let outcomes = client.send_batch(&lines).await?;
        load.record(&lines, &outcomes);
    }
    Ok(())
}

/// One datacenter as the demo watches it.
struct Dc {
    name: String,
    services: Services,
    /// One per app host, in `services.hosts` order.
    loads: Vec<Arc<Load>>,
}

impl Dc {
    /// `f` summed over the app hosts' loads.
    fn sum(&self, f: impl Fn(&Load) -> &AtomicU64) -> u64 {
        self.loads
            .iter()
            .map(|l| f(l).load(Ordering::Relaxed))
            .sum()
    }
}

/// The shipper's own view, from its `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
struct ShipperView {
    /// Age of the oldest event not yet in ClickHouse, seconds (a gauge:
    /// unlike a row count it means the same after a restart).
    lag_s: f64,
    /// Minute aggregation rounds done; the pending gauge moves only
    /// between rounds, and one round can take all the history's minutes.
    minutes_aggregated: u64,
}

fn shipper_view(admin: SocketAddr) -> Option<ShipperView> {
    let (status, text) = http_get(admin, "/metrics").ok()?;
    if status != 200 {
        return None;
    }
    let samples = httpd::exposition::samples(&text);
    let value = |name: &str| httpd::exposition::sum(&samples, name, "").map(|v| v as u64);
    Some(ShipperView {
        lag_s: httpd::exposition::sum(
            &samples,
            shipper::metrics::names::LAG_SECONDS,
            "sink=\"clickhouse\"",
        )?,
        minutes_aggregated: value(shipper::metrics::names::AGGREGATION_ROUNDS_TOTAL)?,
    })
}

/// The live progress line: redrawn in place on a terminal, a new line now
/// and then otherwise.
struct ProgressLine {
    tty: bool,
    /// On a terminal, the line drawn in place and cut to the terminal's
    /// width (a wrapped line could not be redrawn in place).
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    printed: Option<Instant>,
    /// (when, sent, acked) at the last rate sample.
    sample: (Instant, u64, u64),
    rates: (f64, f64),
}

impl ProgressLine {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            tty: std::io::stdout().is_terminal(),
            bar: None,
            started: now,
            printed: None,
            sample: (now, 0, 0),
            rates: (0.0, 0.0),
        }
    }

    fn restart(&mut self, dcs: &[Dc]) {
        let (sent, acked) = totals(dcs);
        self.started = Instant::now();
        self.sample = (self.started, sent, acked);
        self.rates = (0.0, 0.0);
    }

    /// Prints the line if it is due; `phase` says what is going on.
    fn tick(&mut self, phase: &str, dcs: &[Dc]) {
        self.tick_noting(phase, "", dcs);
    }

    /// As `tick`, with `note` after the phase's time.
    fn tick_noting(&mut self, phase: &str, note: &str, dcs: &[Dc]) {
        let every = if self.tty { PROGRESS_TTY } else { PROGRESS_LOG };
        if self.printed.is_some_and(|p| p.elapsed() < every) {
            return;
        }
        self.printed = Some(Instant::now());
        let (sent, acked) = totals(dcs);
        let (at, s0, a0) = self.sample;
        let dt = at.elapsed().as_secs_f64();
        if dt >= 0.5 {
            self.rates = ((sent - s0) as f64 / dt, (acked - a0) as f64 / dt);
            self.sample = (Instant::now(), sent, acked);
        }
        let per_dc: Vec<String> = dcs
            .iter()
            .map(|d| {
                let views: Vec<ShipperView> = d
                    .services
                    .hosts
                    .iter()
                    .filter_map(|h| shipper_view(h.shipper_admin))
                    .collect();
                let lag = views.iter().map(|v| v.lag_s).fold(0.0, f64::max);
                let rounds: u64 = views.iter().map(|v| v.minutes_aggregated).sum();
                let down = d.services.hosts.len() - views.len();
                format!(
                    "{} shipper lag {lag:.1} s, {rounds} min aggregated{}",
                    d.name,
                    if down > 0 {
                        format!(", {down} shipper(s) not answering")
                    } else {
                        String::new()
                    }
                )
            })
            .collect();
        let line = format!(
            "{phase} {:>3} s{note} | both DCs sent {:>4.0}/s, acked {:>4.0}/s | {}",
            self.started.elapsed().as_secs(),
            self.rates.0,
            self.rates.1,
            per_dc.join(" | ")
        );
        if self.tty {
            self.bar
                .get_or_insert_with(|| {
                    let bar = indicatif::ProgressBar::with_draw_target(
                        None,
                        indicatif::ProgressDrawTarget::stdout(),
                    );
                    bar.set_style(
                        indicatif::ProgressStyle::with_template("{wide_msg}")
                            .expect("static template"),
                    );
                    bar
                })
                .set_message(line);
        } else {
            println!("{line}");
        }
    }

    /// Leaves the line as it last was, so what follows starts on a new one.
    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
            // The bar leaves the cursor at the end of its line.
            println!();
        }
        self.printed = None;
    }
}

fn totals(dcs: &[Dc]) -> (u64, u64) {
    dcs.iter().fold((0, 0), |(s, a), d| {
        (s + d.sum(|l| &l.sent), a + d.sum(|l| &l.acked))
    })
}

fn pending_minutes(state_dir: &std::path::Path) -> usize {
    std::fs::read_to_string(state_dir.join("aggregation.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["minutes"].as_object().map(|m| m.len()))
        .unwrap_or(usize::MAX)
}

/// Starts each DC's collector, shipper (with `shipper_limits`) and query
/// service, and waits until every one serves.
fn start_dcs(
    cluster: &LocalCluster,
    shipper_limits: &dc_config::services::ShipperLimits,
) -> anyhow::Result<Vec<Dc>> {
    let mut dcs = Vec::new();
    for dc in cluster.topology().datacenter.clone() {
        let services = start_services(cluster, &dc.name, shipper_limits.clone())?;
        dcs.push(Dc {
            name: dc.name.clone(),
            loads: services.hosts.iter().map(|_| Arc::default()).collect(),
            services,
        });
    }
    for d in &dcs {
        wait_ready(&d.services, &d.name)?;
    }
    Ok(dcs)
}

/// Sends each DC's history, then `args.seconds` of live traffic, into its
/// collector, the progress line ticking.
fn send_traffic(
    rt: &tokio::runtime::Runtime,
    dcs: &mut [Dc],
    plan: &Plan,
    args: &DemoArgs,
    progress: &mut ProgressLine,
) -> anyhow::Result<()> {
    let sending = Instant::now();
    // Each DC's history dealt out over its app hosts, batch by batch, as
    // its apps would spread over a fleet.
    let sends: Vec<_> = dcs
        .iter()
        .enumerate()
        .flat_map(|(i, d)| {
            let lines = traffic::backfill(plan, i);
            let n = d.services.hosts.len();
            let mut shares: Vec<Vec<String>> = vec![Vec::new(); n];
            for (b, chunk) in lines.chunks(BATCH_LINES).enumerate() {
                shares[b % n].extend_from_slice(chunk);
            }
            d.services
                .hosts
                .iter()
                .zip(&d.loads)
                .zip(shares)
                .map(|((h, load), share)| {
                    rt.spawn(send_backfill(h.socket.clone(), share, load.clone()))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    run_with_progress(rt, sends, progress, "history", dcs, None).context("sending the history")?;
    for d in dcs.iter() {
        println!(
            "{}: {} events of history sent to its {} app hosts' collectors over their Unix sockets, {} acknowledged ({} h of a daily curve in every minute, then the last {} minutes denser), in {:.1} s",
            d.name,
            d.sum(|l| &l.sent),
            d.services.hosts.len(),
            d.sum(|l| &l.backfill_acked),
            traffic::HISTORY_HOURS,
            traffic::RECENT_MINUTES,
            sending.elapsed().as_secs_f64()
        );
    }
    println!(
        "live traffic: {} events/s into each datacenter, spread over its app hosts, for {} s (registrations, votes, screen views, watch progress)",
        args.rate, args.seconds
    );
    progress.restart(dcs);
    let live: Vec<_> = dcs
        .iter()
        .enumerate()
        .flat_map(|(i, d)| {
            let n = d.loads.len() as u64;
            d.services
                .hosts
                .iter()
                .zip(&d.loads)
                .enumerate()
                .map(|(k, (h, load))| {
                    // The DC's rate split evenly, the remainder on the first hosts.
                    let rate = args.rate / n + u64::from((k as u64) < args.rate % n);
                    rt.spawn(send_live(
                        h.socket.clone(),
                        load.clone(),
                        rate.max(1),
                        args.seconds,
                        0x11fe + (i * 64 + k) as u64,
                    ))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let crash = (dcs[0].services.hosts.len() > 1).then(|| HostCrash::new(args.seconds));
    run_with_progress(rt, live, progress, "live", dcs, crash).context("sending live traffic")?;
    Ok(())
}

/// Waits until every acknowledged event is in ClickHouse and every minute
/// is aggregated, then prints, per DC and per app host, what was
/// acknowledged and what ClickHouse holds; true when every host's events
/// are there exactly once.
fn drain_and_count(
    ch: &launcher::probe::ClickHouseHttp,
    db: &str,
    dcs: &[Dc],
    progress: &mut ProgressLine,
    last_minute_closes_ms: u64,
) -> anyhow::Result<bool> {
    // (dc, host) -> [rows, distinct spool positions]
    let per_host = || -> BTreeMap<(String, String), Vec<u64>> {
        let sql = format!(
            "SELECT dc, host, count(), uniqExact(spool_segment, spool_offset) FROM {db}.{} GROUP BY dc, host FORMAT TSV",
            table::EVENTS_ALL
        );
        ch.query(&sql)
            .map(|t| {
                t.lines()
                    .filter_map(|l| {
                        let mut f = l.split('\t');
                        let key = (f.next()?.to_string(), f.next()?.to_string());
                        Some((key, f.filter_map(|x| x.parse().ok()).collect()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let hosts = |d: &Dc| {
        d.services
            .hosts
            .iter()
            .zip(&d.loads)
            .map(|(h, l)| (h.name.clone(), l.clone()))
            .collect::<Vec<_>>()
    };
    progress.restart(dcs);
    wait_until("shipping every acknowledged event", DRAIN_LIMIT, || {
        progress.tick("shipping", dcs);
        let shipped = per_host();
        dcs.iter().all(|d| {
            hosts(d).iter().all(|(h, load)| {
                let rows = shipped
                    .get(&(d.name.clone(), h.clone()))
                    .and_then(|v| v.first())
                    .copied()
                    .unwrap_or(0);
                rows >= load.acked.load(Ordering::Relaxed)
            })
        })
    })?;
    wait_until("aggregating every minute", DRAIN_LIMIT, || {
        let left_s = last_minute_closes_ms
            .saturating_sub(now_ms())
            .div_ceil(1000);
        let note = if left_s > 0 {
            format!(" (the last live minute ends in {left_s} s)")
        } else {
            String::new()
        };
        progress.tick_noting("aggregating", &note, dcs);
        dcs.iter().all(|d| {
            d.services
                .hosts
                .iter()
                .all(|h| pending_minutes(&h.shipper_state) == 0)
        })
    })?;
    progress.finish();
    let shipped = per_host();
    let mut all_once = true;
    for d in dcs {
        let acked = d.sum(|l| &l.acked);
        let backfill = d.sum(|l| &l.backfill_acked);
        println!(
            "{}: {acked} acknowledged ({backfill} history, {} live; {} refused) over {} app hosts:",
            d.name,
            acked - backfill,
            d.sum(|l| &l.refused),
            d.loads.len()
        );
        for (h, load) in hosts(d) {
            let acked = load.acked.load(Ordering::Relaxed);
            let (rows, distinct) =
                match shipped.get(&(d.name.clone(), h.clone())).map(Vec::as_slice) {
                    Some([rows, distinct, ..]) => (*rows, *distinct),
                    _ => (0, 0),
                };
            let once = rows == acked && distinct == rows;
            all_once &= once;
            println!(
                "  {h}: {acked} acknowledged, {rows} in ClickHouse, {distinct} distinct spool positions: exactly once: {}",
                if once { "yes" } else { "NO" }
            );
            if let Some(why) = load.first_refusal.lock().expect("load lock").as_ref() {
                println!("    the first refused event was {why}");
            }
        }
    }
    Ok(all_once)
}

/// Watch progress written in the last DC, read in the first: Redis there
/// has never seen it, so the answer comes from across the link. Returns
/// the (user, video) read, if the live traffic wrote one.
fn print_watch_progress(dcs: &[Dc]) -> anyhow::Result<Option<(u64, u64)>> {
    let watched = dcs.last().and_then(|d| {
        d.loads
            .iter()
            .rev()
            .find_map(|l| *l.last_watch.lock().expect("load lock"))
    });
    if let Some((user, video)) = watched {
        let path = format!("/v1/progress/{user}/{video}");
        let v = query_get(dcs[0].services.query, &path)?;
        println!(
            "\nWatch progress written in {}, read in {} (GET {path}): {} s into video {video}, from {}",
            dcs.last().expect("checked").name,
            dcs[0].name,
            v["value"],
            v["source"].as_str().unwrap_or("?")
        );
    }
    Ok(watched)
}

/// Cuts DC `last` off (its links dropped) or, with no links to cut, stops
/// its ClickHouse; says which.
fn take_down(cluster: &mut LocalCluster, last: &str, args: &DemoArgs) -> anyhow::Result<String> {
    if args.link.delay().is_some() {
        cluster.cut(last)?;
        // The relays look at the cut flag every few tens of milliseconds.
        std::thread::sleep(launcher::link::CUT_POLL * 3);
        Ok(format!("{last} cut off (its links dropped)"))
    } else {
        for server in clickhouse_servers(cluster, last) {
            cluster.kill(&server)?;
        }
        Ok(format!("{last}'s ClickHouse down"))
    }
}

/// Undoes [`take_down`].
fn bring_back(cluster: &mut LocalCluster, last: &str, args: &DemoArgs) -> anyhow::Result<()> {
    if args.link.delay().is_some() {
        cluster.heal(last)?;
    } else {
        for server in clickhouse_servers(cluster, last) {
            cluster.restart(&server)?;
        }
    }
    Ok(())
}

/// Runs the main job.
pub fn demo(args: DemoArgs) -> anyhow::Result<()> {
    install_ctrlc()?;
    let started = Instant::now();
    let relay_dc = (args.relay_dc != "none").then_some(args.relay_dc.as_str());
    let mut cluster = launch(
        &args.files,
        None,
        &args.link,
        Some(args.hosts as usize),
        relay_dc,
    )?;
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
    // Short waits: the history's minutes are long closed, and the demo
    // wants them aggregated now.
    let shipper_limits = dc_config::services::ShipperLimits {
        batch_age_ms: 200,
        aggregation_grace_ms: 500,
        ..Default::default()
    };
    let mut dcs = start_dcs(&cluster, &shipper_limits)?;
    println!(
        "{} app hosts per datacenter, each with its collector and shipper; a query service per datacenter",
        dcs[0].services.hosts.len()
    );
    for d in &dcs {
        let relays: Vec<&str> = d
            .services
            .relays
            .iter()
            .map(|(n, _, _)| n.as_str())
            .collect();
        println!(
            "  {}: {}",
            d.name,
            if relays.is_empty() {
                "direct: each app host's shipper inserts into ClickHouse".to_string()
            } else {
                format!(
                    "relay mode: the app hosts' shippers forward their batches to {}, which inserts them (ADR 0017)",
                    relays.join(", ")
                )
            }
        );
    }

    let plan = Plan::new((now_ms() / 1000) as u32);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut progress = ProgressLine::new();
    send_traffic(&rt, &mut dcs, &plan, &args, &mut progress)?;
    if INTERRUPTED.load(Ordering::SeqCst) {
        anyhow::bail!("interrupted");
    }
    // A minute is aggregated once it is over (and the grace has passed):
    // the last live minute keeps the demo waiting until then.
    let last_minute_closes_ms =
        (now_ms() / 60_000 + 1) * 60_000 + shipper_limits.aggregation_grace_ms;

    let db = cluster.topology().database.clone();
    let first = cluster.topology().datacenter[0]
        .replicas()
        .next()
        .expect("checked")
        .name();
    let ch = cluster.clickhouse(&first)?;
    let all_once = drain_and_count(&ch, &db, &dcs, &mut progress, last_minute_closes_ms)?;
    println!(
        "every acknowledged event shipped exactly once: {}; every minute aggregated",
        if all_once { "yes" } else { "NO" }
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

    let q = dcs[0].services.query;
    let end_s = (now_ms() / 60_000 + 1) as u32 * 60;
    print_daily_curve(q, &plan)?;
    let drop_first = print_drops(q, &plan)?;
    let anomaly_first = print_anomalies(q, &plan)?;

    let report = format!(
        "/v1/report?event=registration&group_by=gender&from={}&to={end_s}",
        plan.history_from_s
    );
    let started_report = Instant::now();
    let v = query_get(q, &report)?;
    println!(
        "\nGlobal report, registrations by gender, history and live (GET {report}, {:.0} ms):",
        started_report.elapsed().as_secs_f64() * 1000.0
    );
    print_report(&v);

    let watched = print_watch_progress(&dcs)?;

    // A datacenter cut off: global answers go on, and say what they miss.
    let last = dcs.last().expect("checked").name.clone();
    let how = take_down(&mut cluster, &last, &args)?;
    let v = query_get(q, &report)?;
    println!("\nWith {how}, asked again:");
    print_report(&v);

    print_urls(&dcs, &plan, end_s, watched);
    if args.stay {
        bring_back(&mut cluster, &last, &args)?;
        println!(
            "\n{last} is back; everything keeps running (state under {}); Ctrl-C stops every service and server.",
            cluster.state_dir().display()
        );
        while !INTERRUPTED.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!(
        "\nDone in {:.1} s; stopping every service and server.",
        started.elapsed().as_secs_f64()
    );
    let failed: Vec<&str> = [
        (!all_once).then_some("every acknowledged event in ClickHouse exactly once"),
        (!drop_first).then_some("the injected drop ranked first"),
        (!anomaly_first).then_some("the injected anomaly ranked first"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !failed.is_empty() {
        anyhow::bail!(
            "the main job's checks failed: {} (see above); run it again with --stay to keep the servers, the services and their logs for a look",
            failed.join(", ")
        );
    }
    Ok(())
}

/// Waits for `tasks` (each bounded in time), the progress line ticking.
fn run_with_progress(
    rt: &tokio::runtime::Runtime,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    progress: &mut ProgressLine,
    phase: &str,
    dcs: &mut [Dc],
    mut crash: Option<HostCrash>,
) -> anyhow::Result<()> {
    while !tasks.iter().all(|t| t.is_finished()) {
        progress.tick(phase, dcs);
        if let Some(c) = crash.as_mut() {
            c.step(dcs)?;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    progress.finish();
    for t in tasks {
        rt.block_on(t)??;
    }
    if let Some(c) = crash {
        c.finish(dcs)?;
    }
    Ok(())
}

/// The app host of the first DC that goes down during the live traffic:
/// its second.
const CRASH_HOST: usize = 1;
/// How long the crashed host stays down before it is started again.
const CRASH_DOWN: Duration = Duration::from_secs(2);

/// One app host's collector and shipper killed with SIGKILL halfway
/// through the live traffic and started again, while the DC's other hosts
/// go on taking theirs. The host's sender holds its events meanwhile, as
/// an app does while its collector is away: a batch in flight at the kill
/// could have been spooled with its acknowledgement lost, and resent
/// (the collector promises clients at least once; its own crash campaign
/// counts spool frames for that), which would blur the exact count this
/// job prints per host.
struct HostCrash {
    at: Instant,
    live_started: Instant,
    step: CrashStep,
    report: Option<String>,
}

#[derive(Debug, Clone, Copy)]
enum CrashStep {
    Waiting,
    Holding(Instant),
    Down(Instant),
    Restarting(Instant, Instant),
    Done,
}

impl HostCrash {
    fn new(live_seconds: u64) -> Self {
        let now = Instant::now();
        Self {
            at: now + Duration::from_secs(live_seconds) / 2,
            live_started: now,
            step: CrashStep::Waiting,
            report: None,
        }
    }

    /// Moves on when it is time to; bounded waits, each failing loudly.
    fn step(&mut self, dcs: &mut [Dc]) -> anyhow::Result<()> {
        let d = &mut dcs[0];
        let (host, load) = (&d.services.hosts[CRASH_HOST], &d.loads[CRASH_HOST]);
        let now = Instant::now();
        self.step = match self.step {
            CrashStep::Waiting if now >= self.at => {
                load.hold.store(true, Ordering::SeqCst);
                CrashStep::Holding(now)
            }
            // A sender that already finished holds nothing in flight either.
            CrashStep::Holding(since)
                if load.held.load(Ordering::SeqCst) || now >= since + Duration::from_secs(10) =>
            {
                for p in host.procs {
                    d.services.procs[p].kill();
                }
                CrashStep::Down(now)
            }
            CrashStep::Down(since) if now >= since + CRASH_DOWN => {
                for p in host.procs {
                    d.services.procs[p]
                        .start()
                        .with_context(|| format!("restarting {}", d.services.procs[p].name))?;
                }
                CrashStep::Restarting(since, now)
            }
            CrashStep::Restarting(killed, started) => {
                if launcher::services::host_serving(&host.socket, host.shipper_admin) {
                    load.hold.store(false, Ordering::SeqCst);
                    self.report = Some(format!(
                        "{}: collector and shipper killed (SIGKILL) {:.1} s into the live traffic, started again {:.1} s later, serving after {:.1} s more; the other hosts kept taking traffic, this host's sender held its events meanwhile",
                        host.name,
                        (killed - self.live_started).as_secs_f64(),
                        (started - killed).as_secs_f64(),
                        started.elapsed().as_secs_f64(),
                    ));
                    CrashStep::Done
                } else if started.elapsed() > Duration::from_secs(60) {
                    anyhow::bail!(
                        "{} did not serve again within 60 s of its restart:\n{}",
                        host.name,
                        d.services.log_tails(20)
                    );
                } else {
                    self.step
                }
            }
            other => other,
        };
        Ok(())
    }

    /// After the live traffic: a host still down is started and waited
    /// for (the traffic may have ended first); prints what happened.
    fn finish(mut self, dcs: &mut [Dc]) -> anyhow::Result<()> {
        let limit = Instant::now() + Duration::from_secs(90);
        while !matches!(self.step, CrashStep::Done | CrashStep::Waiting) {
            anyhow::ensure!(Instant::now() < limit, "the crashed host did not come back");
            self.step(dcs)?;
            std::thread::sleep(Duration::from_millis(100));
        }
        dcs[0].loads[CRASH_HOST].hold.store(false, Ordering::SeqCst);
        match self.report {
            Some(r) => println!("{r}"),
            None => println!(
                "(the live traffic ended before a host could be taken down: no crash this run)"
            ),
        }
        Ok(())
    }
}

/// The daily curve of the busiest series over the last three days of
/// history, drawn as a terminal chart.
fn print_daily_curve(q: SocketAddr, plan: &Plan) -> anyhow::Result<()> {
    let metric = "screen_view.count()";
    let from = plan.history_to_s - 3 * 86_400;
    let path = format!(
        "/v1/series?metric={}&from={from}&to={}&step=hour",
        encode(metric),
        plan.history_to_s - 1
    );
    let v = query_get(q, &path)?;
    let values = values_by_step(&v, from, plan.history_to_s, 3600);
    let max = values.iter().copied().fold(0.0, f64::max);
    println!(
        "\n{metric} per hour, both datacenters, the last 3 days of history (GET {path}; peak {max:.0}):"
    );
    for row in chart(&values, 6) {
        println!("  {row}");
    }
    let axis: String = (0..values.len() as u32)
        .map(|i| match (from + i * 3600) % 86_400 {
            0 => '|',
            s if s % (6 * 3600) == 0 => '\'',
            _ => ' ',
        })
        .collect();
    println!("  {axis}  (| 00:00 UTC, ' every 6 h)");
    Ok(())
}

/// The injected drop, drawn minute by minute, then the top drops found.
/// Whether the injected drop ranks first.
fn print_drops(q: SocketAddr, plan: &Plan) -> anyhow::Result<bool> {
    let ios = "screen_view.count(){platform=ios}";
    let path = format!(
        "/v1/series?metric={}&from={}&to={}&step=minute",
        encode(ios),
        plan.recent_from_s,
        plan.start_s - 1
    );
    let v = query_get(q, &path)?;
    let values = values_by_step(&v, plan.recent_from_s, plan.start_s, 60);
    println!(
        "\n{ios} per minute, the {} minutes before the live traffic: {}  ({})",
        traffic::RECENT_MINUTES,
        chart(&values, 1).concat(),
        values
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let path = format!(
        "/v1/drops?event=screen_view&from={}&to={}&reference=previous&direction=down&limit=3",
        plan.drop_from_s, plan.drop_to_s
    );
    let v = query_get(q, &path)?;
    println!(
        "Top drops of screen_view, 3 minutes against the 3 before (GET {path}; injected: iOS -80 %):"
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
    let first = v["changes"][0]["series"] == ios;
    println!(
        "the injected drop ranks first: {}",
        if first { "yes" } else { "NO" }
    );
    Ok(first)
}

/// The top anomalies of the votes over the last hours of history, where
/// one hour carries the injected vote farm.
/// Whether the injected anomaly ranks first.
fn print_anomalies(q: SocketAddr, plan: &Plan) -> anyhow::Result<bool> {
    let from = plan.history_to_s - traffic::ANOMALY_WINDOW_HOURS * 3600;
    let path = format!(
        "/v1/anomalies?event=vote&from={from}&to={}&step=hour&limit=3",
        plan.history_to_s
    );
    let v = query_get(q, &path)?;
    println!(
        "\nTop anomalies of vote, the last {} hours of history against the same hours of the days before (GET {path}; injected: yes-votes from {} accounts in country {} at {:02}:00 UTC, in dc1):",
        traffic::ANOMALY_WINDOW_HOURS,
        traffic::SPIKE_ACCOUNTS,
        traffic::SPIKE_COUNTRY,
        plan.spike_hour_s % 86_400 / 3600
    );
    let found = v["anomalies"].as_array().cloned().unwrap_or_default();
    if found.is_empty() {
        println!("  none found ({} series evaluated)", v["series_evaluated"]);
    }
    let injected = |a: &serde_json::Value| {
        a["series"] == traffic::SPIKE_SERIES && a["time"] == u64::from(plan.spike_hour_s)
    };
    for a in &found {
        let t = a["time"].as_u64().unwrap_or(0);
        println!(
            "  {:<40} {:02}:00 UTC: {:>5} against {} predicted ({}, band {}..{}), weight {:.0}, stands for {} more series{}",
            a["series"].as_str().unwrap_or(""),
            t % 86_400 / 3600,
            number(&a["actual"]),
            number(&a["prediction"]),
            a["method"].as_str().unwrap_or("?"),
            number_rounded(&a["low"]),
            number_rounded(&a["high"]),
            a["weight"].as_f64().unwrap_or(0.0),
            a["suppressed"].as_array().map_or(0, Vec::len),
            if injected(a) {
                "  <- the injected one"
            } else {
                ""
            }
        );
    }
    let first = found.first().is_some_and(injected);
    println!(
        "the injected anomaly ranks first: {}",
        if first { "yes" } else { "NO" }
    );
    Ok(first)
}

/// How to try it: each DC's query service and a few routes.
fn print_urls(dcs: &[Dc], plan: &Plan, end_s: u32, watched: Option<(u64, u64)>) {
    println!("\nTry it (with --stay, while it runs):");
    for d in dcs {
        println!(
            "  {}: Q=http://{}   web console http://{}/console/",
            d.name, d.services.query, d.services.query,
        );
        for h in &d.services.hosts {
            println!(
                "    app host {}: collector admin http://{}/metrics   shipper admin http://{}/metrics",
                h.name, h.collector_admin, h.shipper_admin
            );
        }
    }
    let (u, v) = watched.unwrap_or((7, 42));
    for route in [
        format!(
            "/v1/report?event=vote&group_by=vote&from={}&to={end_s}",
            plan.history_from_s
        ),
        format!(
            "/v1/series?metric={}&from={}&to={}&step=hour",
            encode("screen_view.count(){platform=ios}"),
            plan.history_to_s - 86_400,
            plan.history_to_s
        ),
        format!(
            "/v1/drops?event=screen_view&from={}&to={}&direction=down&limit=5",
            plan.drop_from_s, plan.drop_to_s
        ),
        format!(
            "/v1/anomalies?event=vote&from={}&to={}&step=hour",
            plan.history_to_s - traffic::ANOMALY_WINDOW_HOURS * 3600,
            plan.history_to_s
        ),
        format!("/v1/progress/{u}/{v}"),
        "/healthz".to_string(),
    ] {
        println!("  curl -s \"$Q{route}\"");
    }
    println!(
        "  curl -s \"$Q/v1/sql\" -H 'Content-Type: application/json' --data-binary '{{\"sql\": \"SELECT dc, event, count() FROM spoolhouse.events_all GROUP BY dc, event ORDER BY dc, event\"}}'"
    );
    println!("  (add &scope=dc for one datacenter's own figures; docs/api.md has every route)");
}

/// The first series of a `/v1/series` answer as one value per step from
/// `from` to `to`, 0 where it has no point.
fn values_by_step(v: &serde_json::Value, from: u32, to: u32, step: u32) -> Vec<f64> {
    let mut values = vec![0.0; ((to - from) / step) as usize];
    for p in v["series"][0]["points"].as_array().into_iter().flatten() {
        let (Some(t), Some(x)) = (p[0].as_u64(), p[1].as_f64()) else {
            continue;
        };
        if let Some(slot) = (t as u32)
            .checked_sub(from)
            .map(|d| (d / step) as usize)
            .and_then(|i| values.get_mut(i))
        {
            *slot = x;
        }
    }
    values
}

/// A figure as text; counts and uniques are whole numbers, printed so.
fn number(v: &serde_json::Value) -> String {
    match v.as_f64() {
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{}", x as i64),
        _ => v.to_string(),
    }
}

fn number_rounded(v: &serde_json::Value) -> String {
    v.as_f64()
        .map_or_else(|| v.to_string(), |x| format!("{x:.0}"))
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

/// `values` as a bar chart `rows` characters high, one column per value,
/// scaled to their maximum, top row first.
fn chart(values: &[f64], rows: usize) -> Vec<String> {
    const EIGHTHS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    (0..rows)
        .rev()
        .map(|row| {
            values
                .iter()
                .map(|v| {
                    let level = if max > 0.0 {
                        v / max * (rows * 8) as f64
                    } else {
                        0.0
                    };
                    EIGHTHS[(level - (row * 8) as f64).round().clamp(0.0, 8.0) as usize]
                })
                .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_scale_to_the_maximum() {
        assert_eq!(chart(&[0.0, 4.0, 8.0], 1), vec![" ▄█".to_string()]);
        assert_eq!(
            chart(&[0.0, 8.0, 16.0], 2),
            vec!["  █".to_string(), " ██".to_string()]
        );
        assert_eq!(chart(&[0.0, 0.0], 1), vec!["  ".to_string()]);
    }

    #[test]
    fn series_points_land_in_their_steps() {
        let v = serde_json::json!({"series": [{"points": [[120, 5.0], [240, 7.0], [9999, 1.0]]}]});
        assert_eq!(values_by_step(&v, 60, 300, 60), vec![0.0, 5.0, 0.0, 7.0]);
    }
}
