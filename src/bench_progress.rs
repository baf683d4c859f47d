//! `spoolhouse bench progress`: the KION watch-progress load on one
//! datacenter: real ZooKeeper, ClickHouse and Redis from the launcher; the
//! collector, shipper and query service as child processes, as the demo
//! runs them.
//!
//! Phase 1: `--write-rate` writes/s through the collector (users advancing
//! `video_time` on a few videos each) and `--read-rate` reads/s through the
//! query service over keep-alive HTTP (mostly keys recently written; some
//! only ClickHouse holds, as after a Redis expiry; some never written), for
//! `--seconds`. A sample of writes is polled right after its ack until a
//! read returns it: the read-your-write lag. `redis-benchmark -t get`
//! against the same Redis, under the same write load, is the reference.
//! Phase 2: the same writes, reads of recently written keys stepped up
//! until p99 reaches 5 ms or a rate is not achieved.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use collector::{Client, ClientConfig, Endpoint, LineOutcome};
use dc_config::event::{now_ms, ValidEvent, Value};
use hdrhistogram::Histogram;
use httpd::client::Conn;
use httpd::exposition::{label_value, samples};
use launcher::{LaunchOptions, LocalCluster};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Arguments of `spoolhouse bench progress`.
#[derive(Debug, Args)]
pub struct ProgressBench {
    /// Seconds of the KION load (phase 1).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    seconds: u64,
    /// Watch-progress writes per second through the collector.
    #[arg(long, default_value_t = 8_000, value_parser = clap::value_parser!(u64).range(1..=200_000))]
    write_rate: u64,
    /// Progress reads per second through the query service in phase 1.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    read_rate: u64,
    /// Percent of phase-1 reads for keys Redis does not hold: half for
    /// progress only ClickHouse has (its Redis entry expired), half for
    /// keys never written.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=100))]
    cold_percent: u64,
    /// Read rates of phase 2 (recently written keys), tried in order until
    /// p99 reaches 5 ms or a rate is not achieved.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "250,1000,2000,4000,8000,16000"
    )]
    steps: Vec<u64>,
    /// Seconds of each phase-2 step.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    step_seconds: u64,
    /// Writes per second whose read-your-write lag is measured in phase 1
    /// (each polled about every millisecond on its own connection; these
    /// polls are not counted as reads).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=1_000))]
    lag_samples: u64,
    /// Progress rows loaded into ClickHouse before the run, 40 days old, as
    /// if their Redis entries had expired.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    expired_keys: u64,
}

/// Collector connections the writes are spread over (app servers).
const WRITERS: u64 = 4;
/// How often a writer sends what is due: a player's report waits at most this.
const WRITE_TICK: Duration = Duration::from_millis(5);
/// Most lines in one collector batch (bounds a catch-up after a stall).
const WRITE_BATCH_MAX: u64 = 2_000;
/// Users per write/s: at 8 000 writes/s, 80 000 users with 1–3 videos
/// each, so a session is reported about every 20 s, as players do.
const USERS_PER_WRITE_RATE: u64 = 10;
/// Video catalogue size.
const VIDEOS: u64 = 20_000;
/// Recently written keys the hot reads draw from (~25 s of writes at 8 000/s).
const HOT_KEYS_MAX: usize = 200_000;
/// User ids of the expired keys start here, of never-written keys there.
const EXPIRED_USER_BASE: u64 = 10_000_000;
const NEVER_USER_BASE: u64 = 20_000_000;
/// Reads in flight at most (below the query service's 256): beyond it a
/// read is not sent and counted as `client_saturated`.
const READS_IN_FLIGHT_MAX: u32 = 128;
/// One read's time limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A write sampled for lag is polled at most this long after its ack.
const LAG_POLL_MAX: Duration = Duration::from_secs(5);
/// A hot key not found this long after its ack is an error, not lag.
const VISIBLE_AFTER: Duration = Duration::from_secs(2);
/// Phase 2 stops at this p99 …
const STEP_P99_MAX_MS: f64 = 5.0;
/// … or when a step achieves less than this share of its target rate.
const STEP_RATE_MIN: f64 = 0.95;
/// Longest wait for the first write to reach Redis before reads begin.
const WARM_UP_MAX: Duration = Duration::from_secs(60);
/// Sequential ClickHouse lookups timed alone after phase 1.
const COLD_LOOKUPS: u64 = 5;
/// GETs of the redis-benchmark reference.
const REDIS_BENCH_REQUESTS: u64 = 20_000;

fn histogram() -> Histogram<u64> {
    // 1 µs … 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).max(1));
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, kind: &str, n: u64) {
    *map.lock()
        .expect("stats lock")
        .entry(kind.to_string())
        .or_default() += n;
}

/// One user's progress on one video, owned by one writer.
struct Session {
    user: u64,
    video: u64,
    video_time: u32,
    time_ms: u64,
    acked_at: Option<Instant>,
}

/// Recently acknowledged keys, a ring the hot reads draw from.
struct HotKeys {
    keys: Vec<(u64, u64, Instant)>,
    next: usize,
}

impl HotKeys {
    fn push(&mut self, k: (u64, u64, Instant)) {
        if self.keys.len() < HOT_KEYS_MAX {
            self.keys.push(k);
        } else {
            self.keys[self.next] = k;
            self.next = (self.next + 1) % HOT_KEYS_MAX;
        }
    }
}

/// What the load shares: where to send, and what was measured.
struct Ctx {
    query: SocketAddr,
    socket: PathBuf,
    hot: Mutex<HotKeys>,
    acked: AtomicU64,
    ack_latency: Mutex<Histogram<u64>>,
    write_errors: Mutex<BTreeMap<String, u64>>,
    /// Whether writes are sampled for lag (phase 1).
    sampling: AtomicBool,
    lag: Mutex<Histogram<u64>>,
    /// Lag samples whose first read already returned the write.
    lag_first_read: AtomicU64,
    lag_polls: AtomicU64,
    /// Open connections for the lag polls, so none waits for a connect.
    lag_pool: Mutex<Vec<Conn>>,
    lag_errors: Mutex<BTreeMap<String, u64>>,
    stop_writes: AtomicBool,
}

/// Which kind of key a read asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Recently written through the collector (acknowledged at that instant).
    Hot(Instant),
    /// Only in ClickHouse, as after a Redis expiry.
    Expired,
    /// Never written.
    Never,
}

/// What one read phase measured.
struct Reads {
    target: u64,
    secs: f64,
    answered: u64,
    all: Histogram<u64>,
    /// By the answer's `source`, and `not_found` for 404 answers.
    by_source: BTreeMap<String, Histogram<u64>>,
    hot_answers: u64,
    hot_redis: u64,
    /// Hot keys not found shortly after their ack (lag, not an error).
    not_yet_visible: u64,
    errors: BTreeMap<String, u64>,
}

impl Reads {
    fn new(target: u64) -> Self {
        Self {
            target,
            secs: 0.0,
            answered: 0,
            all: histogram(),
            by_source: BTreeMap::new(),
            hot_answers: 0,
            hot_redis: 0,
            not_yet_visible: 0,
            errors: BTreeMap::new(),
        }
    }

    fn rate(&self) -> f64 {
        self.answered as f64 / self.secs
    }

    fn redis_hits(&self) -> u64 {
        self.by_source.get("redis").map_or(0, |h| h.len())
    }

    fn answer(&mut self, source: &str, took: Duration) {
        self.answered += 1;
        record(&mut self.all, took);
        record(
            self.by_source
                .entry(source.to_string())
                .or_insert_with(histogram),
            took,
        );
    }

    fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_string()).or_default() += 1;
    }

    /// Files one response.
    fn outcome(&mut self, class: Class, got: Result<(u16, Bytes, Duration), &'static str>) {
        let (status, body, took) = match got {
            Ok(g) => g,
            Err(kind) => return self.error(kind),
        };
        match (status, class) {
            (200, _) => {
                let v: serde_json::Value = match serde_json::from_slice(&body) {
                    Ok(v) => v,
                    Err(_) => return self.error("bad_answer"),
                };
                let source = v["source"].as_str().unwrap_or("unknown").to_string();
                if class == Class::Never {
                    return self.error("never_written_key_found");
                }
                if let Class::Hot(_) = class {
                    self.hot_answers += 1;
                    self.hot_redis += u64::from(source == "redis");
                }
                self.answer(&source, took);
            }
            (404, Class::Never) => self.answer("not_found", took),
            (404, Class::Expired) => self.error("expired_key_not_found"),
            (404, Class::Hot(acked)) => {
                if acked.elapsed() > VISIBLE_AFTER {
                    self.error("acked_write_not_found_after_2s");
                } else {
                    self.hot_answers += 1;
                    self.not_yet_visible += 1;
                    self.answer("not_found", took);
                }
            }
            (s, _) => self.error(&format!("http_{s}")),
        }
    }
}

/// The largest answer a bench GET reads (`/metrics` is the largest).
const ANSWER_MAX_BYTES: usize = 4 << 20;

async fn connect(addr: SocketAddr) -> anyhow::Result<Conn> {
    Ok(Conn::connect(addr).await?)
}

/// One GET on a keep-alive connection: status and body.
async fn get(conn: &mut Conn, path: &str) -> Result<(u16, Bytes), &'static str> {
    match tokio::time::timeout(
        REQUEST_TIMEOUT,
        conn.get("localhost", path, ANSWER_MAX_BYTES),
    )
    .await
    {
        Err(_) => Err("timeout"),
        Ok(Err(_)) => Err("http_connection"),
        Ok(Ok(r)) => Ok(r),
    }
}

/// A GET on a pooled connection (opened if none is idle); the time from
/// sending to the whole body, connecting excluded.
async fn pooled_get(
    pool: &Mutex<Vec<Conn>>,
    addr: SocketAddr,
    path: &str,
) -> Result<(u16, Bytes, Duration), &'static str> {
    let idle = {
        let mut p = pool.lock().expect("pool lock");
        std::iter::from_fn(|| p.pop()).find(|c| !c.is_closed())
    };
    let mut conn = match idle {
        Some(c) => c,
        None => connect(addr).await.map_err(|_| "connect")?,
    };
    let started = Instant::now();
    let (status, body) = get(&mut conn, path).await?;
    let took = started.elapsed();
    pool.lock().expect("pool lock").push(conn);
    Ok((status, body, took))
}

fn pick(ctx: &Ctx, rng: &mut StdRng, cold_percent: u64, expired_keys: u64) -> (Class, String) {
    let roll = rng.random_range(0..200);
    if roll < cold_percent {
        let i = rng.random_range(0..expired_keys);
        return (
            Class::Expired,
            format!("/v1/progress/{}/{}", EXPIRED_USER_BASE + i, 1 + i % VIDEOS),
        );
    }
    if roll < 2 * cold_percent {
        let u = NEVER_USER_BASE + rng.random_range(0..10_000_000u64);
        let v = 1 + rng.random_range(0..VIDEOS);
        return (Class::Never, format!("/v1/progress/{u}/{v}"));
    }
    let hot = ctx.hot.lock().expect("hot keys lock");
    match hot.keys.len() {
        0 => {
            drop(hot);
            let u = NEVER_USER_BASE + rng.random_range(0..10_000_000u64);
            (Class::Never, format!("/v1/progress/{u}/1"))
        }
        n => {
            let (u, v, acked) = hot.keys[rng.random_range(0..n)];
            (Class::Hot(acked), format!("/v1/progress/{u}/{v}"))
        }
    }
}

/// `rate` reads/s for `duration`, open loop: each read is sent at its time
/// whatever the ones before it are doing (up to [`READS_IN_FLIGHT_MAX`]).
async fn read_load(
    ctx: &Arc<Ctx>,
    rate: u64,
    duration: Duration,
    cold_percent: u64,
    expired_keys: u64,
    seed: u64,
) -> Reads {
    let stats = Arc::new(Mutex::new(Reads::new(rate)));
    let pool = Arc::new(Mutex::new(Vec::<Conn>::new()));
    let permits = Arc::new(tokio::sync::Semaphore::new(READS_IN_FLIGHT_MAX as usize));
    let mut rng = StdRng::seed_from_u64(seed);
    let total = rate * duration.as_secs().max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let start = Instant::now();
    let mut issued = 0u64;
    // Bounded by the count and by the time.
    while issued < total && start.elapsed() < duration + Duration::from_secs(5) {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while issued < due {
            issued += 1;
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                stats.lock().expect("stats lock").error("client_saturated");
                continue;
            };
            let (class, path) = pick(ctx, &mut rng, cold_percent, expired_keys);
            let (stats, pool, addr) = (stats.clone(), pool.clone(), ctx.query);
            tokio::spawn(async move {
                let got = pooled_get(&pool, addr, &path).await;
                stats.lock().expect("stats lock").outcome(class, got);
                drop(permit);
            });
        }
    }
    let secs = start.elapsed().as_secs_f64();
    // Every read in flight ends within its timeout.
    let _ = tokio::time::timeout(
        REQUEST_TIMEOUT + Duration::from_secs(1),
        permits.acquire_many(READS_IN_FLIGHT_MAX),
    )
    .await;
    let mut r = std::mem::replace(&mut *stats.lock().expect("stats lock"), Reads::new(rate));
    r.secs = secs;
    r
}

/// Polls one written key until a read returns that write: the lag from
/// the collector's ack.
async fn poll_lag(ctx: Arc<Ctx>, user: u64, video: u64, time_ms: u64, acked: Instant) {
    let path = format!("/v1/progress/{user}/{video}");
    // Bounded by time and by a count far above it.
    for poll in 0..100_000 {
        match pooled_get(&ctx.lag_pool, ctx.query, &path).await {
            Ok((200, body, _)) => {
                let newest = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["event_time_ms"].as_u64());
                if newest.is_some_and(|t| t >= time_ms) {
                    record(&mut ctx.lag.lock().expect("lag lock"), acked.elapsed());
                    if poll == 0 {
                        ctx.lag_first_read.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
            }
            Ok((404, _, _)) => {}
            Ok((s, _, _)) => return bump(&ctx.lag_errors, &format!("http_{s}"), 1),
            Err(kind) => return bump(&ctx.lag_errors, kind, 1),
        }
        ctx.lag_polls.fetch_add(1, Ordering::Relaxed);
        if acked.elapsed() > LAG_POLL_MAX {
            return bump(&ctx.lag_errors, "not_visible_within_5s", 1);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// One collector connection writing `rate` progress reports/s for its
/// sessions until told to stop or `deadline`.
async fn writer(
    ctx: Arc<Ctx>,
    mut sessions: Vec<Session>,
    rate: f64,
    lag_every: Option<Duration>,
    seed: u64,
    deadline: Instant,
) -> anyhow::Result<()> {
    let mut client = Client::connect(Endpoint::Unix(ctx.socket.clone()), ClientConfig::default())
        .await
        .context("connecting to the collector")?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tick = tokio::time::interval(WRITE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let start = Instant::now();
    let mut next_sample = start;
    let mut sent = 0u64;
    while !ctx.stop_writes.load(Ordering::Relaxed) && Instant::now() < deadline {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        let n = due.saturating_sub(sent).min(WRITE_BATCH_MAX);
        if n == 0 {
            continue;
        }
        sent = due;
        let wall = now_ms();
        let mut picked = Vec::with_capacity(n as usize);
        let mut lines = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let i = rng.random_range(0..sessions.len());
            let s = &mut sessions[i];
            s.video_time += rng.random_range(5..=30);
            s.time_ms = wall.max(s.time_ms + 1);
            lines.push(format!(
                r#"{{"event":"watch_progress","time":{},"attrs":{{"user_id":{},"video_id":{},"video_time":{}}}}}"#,
                s.time_ms, s.user, s.video, s.video_time
            ));
            picked.push(i);
        }
        let sending = Instant::now();
        let outcomes = match client.send_batch(&lines).await {
            Ok(o) => o,
            Err(_) => {
                bump(&ctx.write_errors, "collector_client", n);
                continue;
            }
        };
        let acked_at = Instant::now();
        record(
            &mut ctx.ack_latency.lock().expect("ack lock"),
            acked_at - sending,
        );
        let mut hot = Vec::with_capacity(outcomes.len());
        for (i, o) in picked.into_iter().zip(outcomes) {
            match o {
                LineOutcome::Acked => {
                    let s = &mut sessions[i];
                    let before = s.acked_at.replace(acked_at);
                    hot.push((s.user, s.video, acked_at));
                    // Only keys Redis already holds an older value of, so
                    // the polls are Redis hits until the new value lands.
                    let sample = lag_every.is_some()
                        && ctx.sampling.load(Ordering::Relaxed)
                        && acked_at >= next_sample
                        && before.is_some_and(|b| acked_at - b > Duration::from_secs(1));
                    if sample {
                        next_sample = acked_at + lag_every.expect("checked");
                        tokio::spawn(poll_lag(ctx.clone(), s.user, s.video, s.time_ms, acked_at));
                    }
                }
                LineOutcome::Rejected { rule, .. } => {
                    bump(&ctx.write_errors, &format!("rejected_{rule}"), 1)
                }
                LineOutcome::Unsent { .. } => bump(&ctx.write_errors, "unsent", 1),
            }
        }
        ctx.acked.fetch_add(hot.len() as u64, Ordering::Relaxed);
        let mut ring = ctx.hot.lock().expect("hot keys lock");
        for k in hot {
            ring.push(k);
        }
    }
    Ok(())
}

/// Waits (bounded) until a written key is answered from Redis, and opens
/// the lag polls' connections.
async fn warm_up(ctx: &Arc<Ctx>, lag_samples: u64) -> anyhow::Result<()> {
    let until = Instant::now() + WARM_UP_MAX;
    let mut conn = connect(ctx.query).await?;
    loop {
        let first = ctx.hot.lock().expect("hot keys lock").keys.first().copied();
        if let Some((u, v, _)) = first {
            if let Ok((200, body)) = get(&mut conn, &format!("/v1/progress/{u}/{v}")).await {
                if serde_json::from_slice::<serde_json::Value>(&body)
                    .is_ok_and(|a| a["source"] == "redis")
                {
                    break;
                }
            }
        }
        if Instant::now() > until {
            bail!("no write reached Redis within {} s", WARM_UP_MAX.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A lag poll holds one connection for about a millisecond per read.
    for _ in 0..lag_samples.clamp(1, 16) {
        let c = connect(ctx.query).await?;
        ctx.lag_pool.lock().expect("pool lock").push(c);
    }
    Ok(())
}

/// Every user's sessions, dealt to the writers by user.
fn sessions(write_rate: u64) -> Vec<Vec<Session>> {
    let users = (write_rate * USERS_PER_WRITE_RATE).max(100);
    let mut out: Vec<Vec<Session>> = (0..WRITERS).map(|_| Vec::new()).collect();
    for user in 1..=users {
        for j in 0..1 + user % 3 {
            out[(user % WRITERS) as usize].push(Session {
                user,
                video: 1 + (user.wrapping_mul(2_654_435_761) + j * 7_919) % VIDEOS,
                video_time: 0,
                time_ms: 0,
                acked_at: None,
            });
        }
    }
    out
}

/// Progress rows only ClickHouse holds: 40 days old, past the registry's
/// 30-day Redis TTL.
fn seed_expired(ch: &launcher::probe::ClickHouseHttp, n: u64) -> anyhow::Result<()> {
    let old = now_ms() - 40 * 86_400_000;
    let events = (0..n).map(|i| ValidEvent {
        event: "watch_progress".into(),
        time_ms: old + i,
        attrs: vec![
            ("user_id".into(), Value::UInt(EXPIRED_USER_BASE + i)),
            ("video_id".into(), Value::UInt(1 + i % VIDEOS)),
            ("video_time".into(), Value::UInt(60 + i % 3_000)),
        ],
    });
    ch.insert_events("spoolhouse", "dc2", "archive", 0, events)?;
    Ok(())
}

/// The query service's count of progress answers by source.
async fn service_sources(addr: SocketAddr) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(mut conn) = connect(addr).await else {
        return out;
    };
    if let Ok((200, body)) = get(&mut conn, "/metrics").await {
        let text = String::from_utf8_lossy(&body);
        for (name, labels, value) in samples(&text) {
            if name != query::metrics::names::PROGRESS_SOURCE_TOTAL {
                continue;
            }
            if let Some(source) = label_value(labels, "source") {
                *out.entry(source.to_string()).or_default() += value as u64;
            }
        }
    }
    out
}

/// redis-benchmark's figures for GET.
struct RedisBench {
    rps: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// `redis-benchmark -t get -c 1` against `addr`: one request at a time, as
/// the query service reads Redis for one progress request.
fn redis_benchmark(addr: SocketAddr) -> anyhow::Result<RedisBench> {
    let out = std::process::Command::new("redis-benchmark")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-t", "get", "-c", "1", "--csv", "-n"])
        .arg(REDIS_BENCH_REQUESTS.to_string())
        .output()
        .context("running redis-benchmark (apt-get install -y redis-server)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    let f: Vec<f64> = text
        .lines()
        .find(|l| l.starts_with("\"GET\""))
        .with_context(|| format!("no GET line in redis-benchmark's output: {text}"))?
        .split(',')
        .skip(1)
        .map(|x| x.trim_matches('"').parse().unwrap_or(f64::NAN))
        .collect();
    if f.len() < 7 {
        bail!("unexpected redis-benchmark output: {text}");
    }
    Ok(RedisBench {
        rps: f[0],
        p50_ms: f[3],
        p95_ms: f[4],
        p99_ms: f[5],
        max_ms: f[6],
    })
}

fn errors_text(e: &BTreeMap<String, u64>) -> String {
    if e.is_empty() {
        return "0".into();
    }
    e.iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn latency_row(label: &str, h: &Histogram<u64>) {
    if h.is_empty() {
        return println!("| {label} | 0 | | | | |");
    }
    println!(
        "| {label} | {} | {:.3} | {:.3} | {:.3} | {:.3} |",
        h.len(),
        ms(h, 0.5),
        ms(h, 0.99),
        ms(h, 0.999),
        h.max() as f64 / 1000.0
    );
}

/// What phase 1 measured: the KION load, then Redis and one ClickHouse
/// lookup alone.
struct Phase1 {
    reads: Reads,
    write_secs: f64,
    writes: u64,
    ack: Histogram<u64>,
    write_errors: BTreeMap<String, u64>,
    lag: Histogram<u64>,
    lag_errors: BTreeMap<String, u64>,
    sources_before: BTreeMap<String, u64>,
    sources_after: BTreeMap<String, u64>,
    cpu_before: Vec<Option<u64>>,
    cpu_after: Vec<Option<u64>>,
    load_after: String,
    bench: anyhow::Result<RedisBench>,
    progress_rows: String,
    lookups: Histogram<u64>,
}

/// Phase 1: `args.seconds` of reads at `args.read_rate` beside the writes,
/// each process's CPU time around it; then `redis-benchmark` and the cost
/// of one ClickHouse lookup, with the reads paused.
fn measure_phase1(
    rt: &tokio::runtime::Runtime,
    ctx: &Arc<Ctx>,
    args: &ProgressBench,
    procs: &[(String, u32)],
    ch: &launcher::probe::ClickHouseHttp,
    redis: SocketAddr,
) -> anyhow::Result<Phase1> {
    let sources_before = rt.block_on(service_sources(ctx.query));
    let cpu_before: Vec<Option<u64>> = procs
        .iter()
        .map(|(_, p)| crate::machine::cpu_ticks(*p))
        .collect();
    let acked_before = ctx.acked.load(Ordering::Relaxed);
    *ctx.ack_latency.lock().expect("ack lock") = histogram();
    ctx.sampling.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let phase1 = rt.block_on(read_load(
        ctx,
        args.read_rate,
        Duration::from_secs(args.seconds),
        args.cold_percent,
        args.expired_keys,
        1,
    ));
    let write_secs = started.elapsed().as_secs_f64();
    let writes = ctx.acked.load(Ordering::Relaxed) - acked_before;
    ctx.sampling.store(false, Ordering::Relaxed);
    let cpu_after: Vec<Option<u64>> = procs
        .iter()
        .map(|(_, p)| crate::machine::cpu_ticks(*p))
        .collect();
    let load_after = crate::machine::load_average();
    let ack = ctx.ack_latency.lock().expect("ack lock").clone();
    let write_errors = ctx.write_errors.lock().expect("errors lock").clone();
    // Lag polls still running end within LAG_POLL_MAX.
    std::thread::sleep(LAG_POLL_MAX.min(Duration::from_secs(args.seconds)));
    let sources_after = rt.block_on(service_sources(ctx.query));
    let lag = ctx.lag.lock().expect("lag lock").clone();
    let lag_errors = ctx.lag_errors.lock().expect("lag lock").clone();

    let bench = redis_benchmark(redis);
    // What one ClickHouse lookup costs alone (the reads paused, the writes
    // going on): keys of the expired range the reads are unlikely to have drawn.
    let progress_rows = ch
        .query("SELECT count() FROM spoolhouse.events_local WHERE event = 'watch_progress'")?
        .trim()
        .to_string();
    let lookups = rt.block_on(async {
        let mut h = histogram();
        let mut conn = connect(ctx.query).await?;
        for i in 0..COLD_LOOKUPS.min(args.expired_keys) {
            let k = args.expired_keys - 1 - i;
            let path = format!("/v1/progress/{}/{}", EXPIRED_USER_BASE + k, 1 + k % VIDEOS);
            let started = Instant::now();
            if let Ok((200, _)) = get(&mut conn, &path).await {
                record(&mut h, started.elapsed());
            }
        }
        anyhow::Ok(h)
    })?;

    Ok(Phase1 {
        reads: phase1,
        write_secs,
        writes,
        ack,
        write_errors,
        lag,
        lag_errors,
        sources_before,
        sources_after,
        cpu_before,
        cpu_after,
        load_after,
        bench,
        progress_rows,
        lookups,
    })
}

/// Prints phase 1's tables and figures, and whether the targets were met.
fn print_phase1(args: &ProgressBench, ctx: &Ctx, p1: &Phase1, procs: &[(String, u32)]) {
    let Phase1 {
        reads: phase1,
        write_secs,
        writes,
        ack,
        write_errors,
        lag,
        lag_errors,
        sources_before,
        sources_after,
        cpu_before,
        cpu_after,
        load_after,
        bench,
        progress_rows,
        lookups,
    } = p1;
    let (write_secs, writes) = (*write_secs, *writes);
    println!(
        "\nphase 1, the KION load for {} s: writes through the collector ({WRITERS} Unix-socket connections, {} users with 1-3 videos each), reads through the query service (keep-alive HTTP, open loop; {:.1} % of keys only in ClickHouse as after a Redis expiry, {:.1} % never written, the rest drawn from the last {HOT_KEYS_MAX} acknowledged writes)",
        args.seconds,
        args.write_rate * USERS_PER_WRITE_RATE,
        args.cold_percent as f64 / 2.0,
        args.cold_percent as f64 / 2.0,
    );
    println!("| | target/s | achieved/s | count | errors |");
    println!("|---|---|---|---|---|");
    println!(
        "| writes (acked) | {} | {:.0} | {writes} | {} |",
        args.write_rate,
        writes as f64 / write_secs,
        errors_text(write_errors)
    );
    println!(
        "| reads (answered) | {} | {:.0} | {} | {} |",
        args.read_rate,
        phase1.rate(),
        phase1.answered,
        errors_text(&phase1.errors)
    );
    println!(
        "\n| get latency, ms (client side, send to whole body) | count | p50 | p99 | p99.9 | max |"
    );
    println!("|---|---|---|---|---|---|");
    latency_row("all answers", &phase1.all);
    for (source, h) in &phase1.by_source {
        latency_row(source, h);
    }
    let hits = phase1
        .by_source
        .get("redis")
        .cloned()
        .unwrap_or_else(histogram);
    let delta = |s: &str| {
        sources_after.get(s).copied().unwrap_or(0) - sources_before.get(s).copied().unwrap_or(0)
    };
    let service_total: u64 = ["redis", "clickhouse_dc", "clickhouse_global"]
        .iter()
        .map(|s| delta(s))
        .sum();
    println!(
        "\nRedis hit ratio: {:.1} % of answers ({} of {}); {:.2} % of reads of recently written keys; the query service's metrics: {} of {} progress answers from Redis (lag polls included)",
        100.0 * phase1.redis_hits() as f64 / phase1.answered.max(1) as f64,
        phase1.redis_hits(),
        phase1.answered,
        100.0 * phase1.hot_redis as f64 / phase1.hot_answers.max(1) as f64,
        delta("redis"),
        service_total
    );
    if phase1.not_yet_visible > 0 {
        println!(
            "recently written keys read before they reached Redis (404 within {} s of the ack, not errors): {}",
            VISIBLE_AFTER.as_secs(),
            phase1.not_yet_visible
        );
    }
    println!(
        "collector ack latency (batch sent to acked, fsync policy group): p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
        ms(ack, 0.5),
        ms(ack, 0.99),
        ms(ack, 0.999)
    );
    if lag.is_empty() {
        println!(
            "read-your-write lag: no samples ({})",
            errors_text(lag_errors)
        );
    } else {
        println!(
            "read-your-write lag (collector ack to the first read returning the write; {} samples, each read at once and then every ~1 ms; {} returned by the first read, {} reads returned an older value): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; errors {}",
            lag.len(),
            ctx.lag_first_read.load(Ordering::Relaxed),
            ctx.lag_polls.load(Ordering::Relaxed),
            ms(lag, 0.5),
            ms(lag, 0.99),
            lag.max() as f64 / 1000.0,
            errors_text(lag_errors)
        );
    }
    match &bench {
        Ok(b) => println!(
            "redis-benchmark -t get -c 1 -n {REDIS_BENCH_REQUESTS}, same Redis, under the same write load: {:.0} GET/s, p50 {:.3} ms, p95 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            b.rps, b.p50_ms, b.p95_ms, b.p99_ms, b.max_ms
        ),
        Err(e) => println!("redis-benchmark: {e:#}"),
    }
    println!(
        "one ClickHouse lookup alone (reads paused, writes on; {} lookups of expired keys, {progress_rows} watch_progress rows in ClickHouse): p50 {:.1} ms, max {:.1} ms",
        lookups.len(),
        ms(lookups, 0.5),
        lookups.max() as f64 / 1000.0
    );
    let p99_hit = ms(&hits, 0.99);
    let errors = phase1.errors.values().sum::<u64>()
        + write_errors.values().sum::<u64>()
        + lag_errors.values().sum::<u64>();
    println!(
        "targets: p99 get on a Redis hit < 1 ms: {p99_hit:.3} ms, {}; errors 0: {errors}, {}",
        if !hits.is_empty() && p99_hit < 1.0 {
            "met"
        } else {
            "MISSED"
        },
        if errors == 0 { "met" } else { "MISSED" }
    );
    println!(
        "CPU during phase 1, % of one core ({} cores; load average {load_after} at its end):",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let shares: Vec<String> = procs
        .iter()
        .zip(cpu_before.iter().zip(cpu_after.iter()))
        .filter_map(|((name, _), (b, a))| {
            let used = a.as_ref()? - b.as_ref()?;
            Some(format!("{name} {:.0} %", used as f64 / write_secs))
        })
        .collect();
    println!("  {}", shares.join(", "));
}

/// Phase 2: reads of recently written keys stepped up through
/// `args.steps`, until p99 or the achieved rate gives out.
fn run_phase2(rt: &tokio::runtime::Runtime, ctx: &Arc<Ctx>, args: &ProgressBench) {
    println!(
        "\nphase 2, reads of recently written keys stepped up under the same write load, {} s per step (stops at p99 >= {STEP_P99_MAX_MS} ms or < {:.0} % of the rate):",
        args.step_seconds,
        100.0 * STEP_RATE_MIN
    );
    println!("| target reads/s | achieved/s | p50 ms | p99 ms | p99.9 ms | Redis hits | errors |");
    println!("|---|---|---|---|---|---|---|");
    let mut best = None;
    for (i, &rate) in args.steps.iter().enumerate() {
        let r = rt.block_on(read_load(
            ctx,
            rate,
            Duration::from_secs(args.step_seconds),
            0,
            args.expired_keys,
            100 + i as u64,
        ));
        let p99 = ms(&r.all, 0.99);
        println!(
            "| {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.1} % | {} |",
            r.target,
            r.rate(),
            ms(&r.all, 0.5),
            p99,
            ms(&r.all, 0.999),
            100.0 * r.redis_hits() as f64 / r.answered.max(1) as f64,
            errors_text(&r.errors)
        );
        if r.all.is_empty() || p99 >= STEP_P99_MAX_MS || r.rate() < STEP_RATE_MIN * rate as f64 {
            break;
        }
        best = Some(rate);
    }
    match best {
        Some(b) => println!("highest sustained read rate with p99 < {STEP_P99_MAX_MS} ms: {b} reads/s (of the steps tried)"),
        None => println!("no step sustained its rate with p99 < {STEP_P99_MAX_MS} ms"),
    }
}

/// Runs `spoolhouse bench progress`.
pub fn run(args: ProgressBench) -> anyhow::Result<()> {
    let load_before = crate::machine::load_average();
    let mut cluster = LocalCluster::start(
        &crate::bench_shipper::one_shard_dc(),
        LaunchOptions::default(),
    )
    .context("starting ClickHouse, ZooKeeper and Redis for the benchmark")?;
    let dc = cluster.topology().datacenter[0].clone();
    let ch = cluster.clickhouse(&dc.replicas().next().expect("one replica").name())?;
    seed_expired(&ch, args.expired_keys).context("loading the expired keys into ClickHouse")?;
    let services = crate::cmd_local::start_services(
        &cluster,
        &dc.name,
        dc_config::services::ShipperLimits::default(),
    )?;
    crate::cmd_local::wait_ready(&services, &dc.name)?;
    let redis = dc.redis.nodes[0];

    let mut procs: Vec<(String, u32)> = vec![("bench load generator".into(), std::process::id())];
    for p in &services.procs {
        if let Some(pid) = p.pid() {
            procs.push((p.name.clone(), pid));
        }
    }
    procs.extend(cluster.servers().into_iter().zip(cluster.pids()));

    println!(
        "machine: {} cores, load average {load_before} before the run; one DC ({}): ClickHouse 18.16 (1 shard x 1 replica), ZooKeeper, Redis on loopback; collector, shipper (default limits), query service as child processes",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        dc.name
    );

    let ctx = Arc::new(Ctx {
        query: services.query,
        socket: services.first().socket.clone(),
        hot: Mutex::new(HotKeys {
            keys: Vec::new(),
            next: 0,
        }),
        acked: AtomicU64::new(0),
        ack_latency: Mutex::new(histogram()),
        write_errors: Mutex::new(BTreeMap::new()),
        sampling: AtomicBool::new(false),
        lag: Mutex::new(histogram()),
        lag_first_read: AtomicU64::new(0),
        lag_polls: AtomicU64::new(0),
        lag_pool: Mutex::new(Vec::new()),
        lag_errors: Mutex::new(BTreeMap::new()),
        stop_writes: AtomicBool::new(false),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let total =
        Duration::from_secs(args.seconds + args.steps.len() as u64 * args.step_seconds + 120);
    let deadline = Instant::now() + total;
    let lag_every = (args.lag_samples > 0)
        .then(|| Duration::from_secs_f64(WRITERS as f64 / args.lag_samples as f64));
    let writers: Vec<_> = sessions(args.write_rate)
        .into_iter()
        .enumerate()
        .map(|(w, s)| {
            rt.spawn(writer(
                ctx.clone(),
                s,
                args.write_rate as f64 / WRITERS as f64,
                lag_every,
                w as u64,
                deadline,
            ))
        })
        .collect();

    // Warm-up: reads begin once the first reports are in Redis.
    rt.block_on(warm_up(&ctx, args.lag_samples))
        .with_context(|| format!("shipper log:\n{}", services.procs[1].log_tail(20)))?;
    let p1 = measure_phase1(&rt, &ctx, &args, &procs, &ch, redis)?;
    print_phase1(&args, &ctx, &p1, &procs);
    if !args.steps.is_empty() {
        run_phase2(&rt, &ctx, &args);
    }

    ctx.stop_writes.store(true, Ordering::Relaxed);
    for w in writers {
        rt.block_on(w).context("writer task")??;
    }
    drop(services);
    Ok(())
}
