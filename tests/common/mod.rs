//! Helpers the root crate's process tests share.

// Each test binary uses a different subset of these.
#![allow(dead_code)]

use std::time::Duration;

/// A GET on loopback (the workspace's one client, `httpd::client`):
/// status and body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    httpd::client::get_blocking(addr, path, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// The value of the samples called `name` in a `/metrics` text, summed
/// over their labels; `None` when there is none.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    httpd::exposition::sum(&httpd::exposition::samples(text), name, "")
}

/// How to run `spoolhouse ARGS`, its output into `log`.
fn spoolhouse(args: &[&str], log: &std::path::Path) -> launcher::process::Spec {
    launcher::process::Spec {
        program: env!("CARGO_BIN_EXE_spoolhouse").into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        cwd: log.parent().unwrap().to_path_buf(),
        log: log.to_path_buf(),
    }
}

/// Runs `spoolhouse ARGS` as a child process, its output into `log`: the
/// launcher's own process type, so it dies with the test (and on drop) and
/// can be stopped with SIGTERM and started again.
pub fn spawn(args: &[&str], log: &std::path::Path) -> launcher::process::Proc {
    launcher::process::Proc::spawn(args.join(" "), spoolhouse(args, log)).unwrap()
}

/// Polls `ok` every 100 ms until it holds; fails the test after `limit`.
pub fn wait_for(what: &str, limit: Duration, ok: impl FnMut() -> bool) {
    wait_for_or_show(what, limit, ok, String::new);
}

/// [`wait_for`], whose failure also shows what `show` gives then (e.g. the
/// services' log tails).
pub fn wait_for_or_show(
    what: &str,
    limit: Duration,
    ok: impl FnMut() -> bool,
    show: impl Fn() -> String,
) {
    if let Err(e) = launcher::wait::until(what, limit, ok) {
        panic!("timed out waiting for {what} ({e})\n{}", show());
    }
}

/// `n` vote records (spool frames) numbered from `from`: vote `i` at
/// 6 ms steps from a fixed moment (spread over minutes, so aggregation
/// rounds run all along), user `i % 1000`, target `target_base + i`.
/// What the crash campaigns spool themselves.
pub fn vote_records(from: u64, n: u64, target_base: u64) -> Vec<Vec<u8>> {
    use dc_config::event::{ValidEvent, Value};
    (from..from + n)
        .map(|i| {
            dc_config::record::Record {
                event: ValidEvent {
                    event: "vote".into(),
                    time_ms: 1_764_028_800_000 + i * 6,
                    attrs: vec![
                        ("user_id".into(), Value::UInt(i % 1000)),
                        ("target_user_id".into(), Value::UInt(target_base + i)),
                        ("vote".into(), Value::Str("yes".into())),
                        ("country_id".into(), Value::UInt(i % 40)),
                    ],
                },
                inbox: None,
            }
            .encode()
            .unwrap()
        })
        .collect()
}

/// Bound of every wait in the process tests.
pub const LIMIT: Duration = Duration::from_secs(60);
/// Events per batch and pause between batches of each DC's sender:
/// ≈ 1 000 events/s per DC.
const BATCH: u64 = 50;
const PAUSE: Duration = Duration::from_millis(50);
/// No sender runs longer than this, whatever the test does.
const LOAD_MAX: Duration = Duration::from_secs(300);

pub use dc_config::event::now_ms;

/// The example topology's two DCs, every cross-DC path through a relay
/// adding `delay` each way, so a DC can be cut (`LocalCluster::cut`).
pub fn linked_cluster(delay: Duration) -> launcher::LocalCluster {
    start_linked(delay, launcher::Network::Loopback)
}

/// The two DCs as hosts, as the main job runs them: each in a network
/// namespace of its own, 100 ms apart through the relays. Needs root, as
/// CI runs; fails saying why otherwise.
pub fn hosts_cluster() -> launcher::LocalCluster {
    start_linked(Duration::from_millis(100), launcher::Network::Namespaces)
}

fn start_linked(delay: Duration, network: launcher::Network) -> launcher::LocalCluster {
    launcher::LocalCluster::start(
        &dc_config::examples::declared(),
        launcher::LaunchOptions {
            cross_dc_delay: Some(delay),
            network,
            ..launcher::LaunchOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Writes `dc`'s collector, shipper and query configs into `dir`, starts
/// the three services (in that order) and waits until they serve.
pub fn start_dc(
    cluster: &launcher::LocalCluster,
    dc_name: &str,
    dir: &std::path::Path,
) -> Vec<launcher::process::Proc> {
    start_dc_with(cluster, dc_name, dir, |_| {})
}

/// [`start_dc`] with the collector's config changed by `edit` first.
pub fn start_dc_with(
    cluster: &launcher::LocalCluster,
    dc_name: &str,
    dir: &std::path::Path,
    edit: impl FnMut(&mut dc_config::services::CollectorConfig),
) -> Vec<launcher::process::Proc> {
    let mut configs = launcher::services::Configs::for_dc(cluster, dc_name).unwrap();
    configs.collectors().for_each(edit);
    for s in configs.shippers() {
        s.limits.batch_age_ms = 200;
        s.limits.aggregation_grace_ms = 500;
    }
    configs.query.timeout_ms = 3_000;
    let program = std::path::Path::new(env!("CARGO_BIN_EXE_spoolhouse"));
    let services = launcher::services::start(cluster, dc_name, program, dir, configs)
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for_or_show(
        &format!("{dc_name}'s services serving"),
        LIMIT,
        || services.ready(),
        || services.log_tails(20),
    );
    services.procs
}

/// Waits until `dc_name`'s collector socket exists and its shipper and
/// query service answer `/healthz` with 200 (after a restart).
pub fn wait_serving(cluster: &launcher::LocalCluster, dc_name: &str) {
    let dc = cluster.topology().dc(dc_name).unwrap();
    wait_for(&format!("{dc_name}'s services serving"), LIMIT, || {
        launcher::services::serving(dc)
    });
}

/// Status and JSON body of a GET.
pub fn get_json(addr: std::net::SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = http_get(addr, path);
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// `count()` and distinct spool positions of `server`'s DC.
pub fn count(cluster: &launcher::LocalCluster, server: &str) -> (u64, u64) {
    let r = cluster
        .clickhouse(server)
        .unwrap()
        .query("SELECT count(), uniqExact(dc, host, spool_segment, spool_offset) FROM spoolhouse.events_dc FORMAT TSV")
        .unwrap();
    let mut it = r.trim().split('\t').map(|x| x.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

/// Votes sent to each DC's collector socket from a thread per DC, until
/// [`Load::stop`]: acknowledged counts and per-batch ack latencies.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: Vec<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    unsent: Vec<Unsent>,
    latencies: std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, Duration)>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Starts one sender per socket; DC `i`'s users are `(i + 1) * 10^9 + n`.
    /// Every line must be acknowledged (the client retries refusals): a line
    /// left unsent fails the test.
    pub fn start(sockets: Vec<std::path::PathBuf>) -> Self {
        Self::start_with(sockets, collector::client::ClientConfig::default(), false)
    }

    /// [`Load::start`] with its own client retries; with `allow_unsent`,
    /// lines the collector still refused after them are counted (see
    /// [`Load::unsent`]) instead of failing the test, and the sender goes on.
    pub fn start_with(
        sockets: Vec<std::path::PathBuf>,
        client: collector::client::ClientConfig,
        allow_unsent: bool,
    ) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicU64};
        use std::sync::{Arc, Mutex};
        let stop = Arc::new(AtomicBool::new(false));
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let mut acked = Vec::new();
        let mut unsent = Vec::new();
        let mut threads = Vec::new();
        for (i, socket) in sockets.into_iter().enumerate() {
            let a = Arc::new(AtomicU64::new(0));
            acked.push(a.clone());
            let u = Unsent::default();
            unsent.push(u.clone());
            let (stop, lat) = (stop.clone(), latencies.clone());
            let sender = Sender {
                socket,
                dc: i as u64 + 1,
                client: client.clone(),
                unsent: allow_unsent.then_some(u),
            };
            threads.push(std::thread::spawn(move || sender.run(stop, a, lat)));
        }
        Self {
            stop,
            acked,
            unsent,
            latencies,
            threads,
        }
    }

    /// Events DC `i`'s collector acknowledged so far.
    pub fn acked(&self, i: usize) -> u64 {
        self.acked[i].load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Lines DC `i`'s sender gave up on after its retries, and the
    /// collector's last reason (only counted with `allow_unsent`).
    pub fn unsent(&self, i: usize) -> (u64, Option<String>) {
        let u = &self.unsent[i];
        (
            u.count.load(std::sync::atomic::Ordering::SeqCst),
            u.reason.lock().unwrap().clone(),
        )
    }

    /// Ack latencies of batches sent at or after `since`, sorted.
    pub fn latencies_since(&self, since: std::time::Instant) -> Vec<Duration> {
        let mut v: Vec<Duration> = self
            .latencies
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at >= since)
            .map(|(_, d)| *d)
            .collect();
        v.sort();
        v
    }

    /// Stops the senders and waits for their last batches.
    pub fn stop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Lines a sender gave up on, and why.
#[derive(Clone, Default)]
struct Unsent {
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
    reason: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

/// One DC's vote sender.
struct Sender {
    socket: std::path::PathBuf,
    dc: u64,
    client: collector::client::ClientConfig,
    /// Where to count lines left unsent; `None`: they fail the test.
    unsent: Option<Unsent>,
}

impl Sender {
    fn run(
        self,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
        acked: std::sync::Arc<std::sync::atomic::AtomicU64>,
        latencies: std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, Duration)>>>,
    ) {
        use collector::client::{Client, Endpoint, LineOutcome};
        use std::sync::atomic::Ordering;
        let dc = self.dc;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut client = Client::connect(Endpoint::Unix(self.socket), self.client)
                .await
                .unwrap();
            let mut seq = 0u64;
            let started = std::time::Instant::now();
            while !stop.load(Ordering::SeqCst) && started.elapsed() < LOAD_MAX {
                let lines: Vec<String> = (0..BATCH)
                    .map(|i| {
                        let user = dc * 1_000_000_000 + seq + i;
                        format!(
                            "{{\"event\":\"vote\",\"time\":{},\"attrs\":{{\"user_id\":{user},\"target_user_id\":1,\"vote\":\"yes\",\"country_id\":{dc}}}}}",
                            now_ms(),
                        )
                    })
                    .collect();
                seq += BATCH;
                let sent = std::time::Instant::now();
                let outcomes = client.send_batch(&lines).await.unwrap();
                latencies.lock().unwrap().push((sent, sent.elapsed()));
                let mut ok = 0;
                for o in &outcomes {
                    match (o, &self.unsent) {
                        (LineOutcome::Acked, _) => ok += 1,
                        (LineOutcome::Unsent { reason }, Some(u)) => {
                            u.count.fetch_add(1, Ordering::SeqCst);
                            *u.reason.lock().unwrap() = Some(reason.clone());
                        }
                        _ => panic!("{o:?}"),
                    }
                }
                acked.fetch_add(ok, Ordering::SeqCst);
                tokio::time::sleep(PAUSE).await;
            }
        });
    }
}

/// Asserts each event a DC's collector acknowledged under `load` (DC `i`
/// is the `i`-th of the example topology) is in its ClickHouse exactly once,
/// in two steps so a failure says which guarantee broke:
/// 1. within [`LIMIT`], every acknowledged position is on some replica of
///    the DC (what the shipper owes: it reads every server's own rows);
/// 2. once replication settled (`SYSTEM SYNC REPLICA` on each replica),
///    `events_dc` holds each of them once. Settling is ClickHouse's work and
///    is waited for apart: a replica whose fetches failed while its peer
///    restarted backs off its queue for tens of seconds.
///
/// A failed wait shows every replica's own count and `services`' log tails
/// (the shippers' say what they wait for).
pub fn assert_shipped_once(
    cluster: &launcher::LocalCluster,
    load: &Load,
    services: &[&[launcher::process::Proc]],
) {
    let show = || {
        let mut out = replica_counts(cluster);
        for p in services.iter().flat_map(|s| s.iter()) {
            out += &format!("\n{}:\n{}", p.name, p.log_tail(20));
        }
        out
    };
    for (i, dc) in cluster.topology().datacenter.iter().enumerate() {
        let sent = load.acked(i);
        wait_for_or_show(
            &format!(
                "every acknowledged event of {} ({sent}) on some replica",
                dc.name
            ),
            LIMIT,
            || stored_positions(cluster, dc) >= sent,
            show,
        );
        settle(cluster, dc, show);
        let server = dc.replicas().next().unwrap().name();
        assert_eq!(
            count(cluster, &server),
            (sent, sent),
            "{server}\n{}",
            show()
        );
    }
}

/// Distinct spool positions stored on any of `dc`'s servers: each server's
/// own `events_local`, so replication lag does not hide a row.
pub fn stored_positions(
    cluster: &launcher::LocalCluster,
    dc: &dc_config::topology::Datacenter,
) -> u64 {
    let all: Vec<String> = dc
        .replicas()
        .map(|r| format!("{}:{}", r.replica.host, r.replica.tcp_port))
        .collect();
    // remote() logs in as a user it is given: the servers' own.
    let sql = format!(
        "SELECT uniqExact(dc, host, spool_segment, spool_offset) \
         FROM remote('{}', spoolhouse.events_local, {}, {}) FORMAT TSV",
        all.join(","),
        dc_config::sql::quote_str(dc_config::schema::user::CLUSTER_USER),
        dc_config::sql::quote_str(&cluster.credentials().cluster),
    );
    let first = dc.replicas().next().unwrap().name();
    match cluster.clickhouse(&first).unwrap().query(&sql) {
        Ok(text) => text.trim().parse().unwrap_or(0),
        // A server still starting: not there yet.
        Err(_) => 0,
    }
}

/// Waits (at most 3 × [`LIMIT`]) until every replica of `dc`'s shards has
/// fetched what its peers hold.
pub fn settle(
    cluster: &launcher::LocalCluster,
    dc: &dc_config::topology::Datacenter,
    show: impl Fn() -> String,
) {
    for r in dc.replicas() {
        let name = r.name();
        let ch = cluster.clickhouse(&name).unwrap();
        wait_for_or_show(
            &format!("{name} to catch up with its replicas"),
            3 * LIMIT,
            // Each try waits up to the client's timeout; one that runs out
            // is tried again.
            || {
                ch.query("SYSTEM SYNC REPLICA spoolhouse.events_local")
                    .is_ok()
            },
            &show,
        );
    }
}

/// Each ClickHouse server's own `events_local` rows and replication queue
/// length, one line each (or what answered instead).
pub fn replica_counts(cluster: &launcher::LocalCluster) -> String {
    let sql = "SELECT (SELECT count() FROM spoolhouse.events_local), \
               (SELECT count() FROM system.replication_queue), \
               (SELECT sum(is_readonly) FROM system.replicas) FORMAT TSV";
    let mut out = String::from("server\tevents_local\treplication_queue\treadonly_tables");
    for dc in &cluster.topology().datacenter {
        for r in dc.replicas() {
            let name = r.name();
            let answer = match cluster.clickhouse(&name).map(|c| c.query(sql)) {
                Ok(Ok(text)) => text.trim().to_string(),
                Ok(Err(e)) => format!("{e}"),
                Err(e) => format!("{e}"),
            };
            out += &format!("\n{name}\t{answer}");
        }
    }
    out
}

/// A CPU hog beside a timing-sensitive test: one thread per core spinning
/// at normal priority until dropped (at most `limit`), because timings that
/// only fail on a busy host are the ones a quiet test misses.
pub struct CpuHog {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuHog {
    pub fn start(limit: Duration) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..cores)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let until = std::time::Instant::now() + limit;
                    let mut x: u64 = 1;
                    while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < until {
                        for _ in 0..100_000 {
                            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                        }
                        std::hint::black_box(x);
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
